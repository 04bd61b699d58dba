//! The trace journal: where audited reads make their trace entries durable.
//!
//! A redb commit writes and syncs several pages; a read only needs its trace entry on disk. So
//! the group-commit leader appends the batch's sealed, chained entries to this append-only file
//! and syncs it: one small `fdatasync` per batch. The entries move into the `AUDIT` table at the
//! next write transaction (or every `MERGE_AT` entries, at open, and before the trace is read),
//! and the journal is then emptied.
//!
//! Invariants: the chain head in memory (`TraceChain`) is the one authority on the next sequence
//! number; it is changed only under its mutex and only after the entries are durable (journal
//! synced, or redb committed). A batch is one frame: `len (u32 LE) ‖ BLAKE3(payload) ‖ payload`,
//! with `payload` the postcard of the batch's records. At recovery a bad frame at the end of the
//! file is a write that was cut short (never acknowledged) and is dropped; a bad frame followed
//! by more bytes is damage, refused as an integrity failure. Records already in `AUDIT` (sequence
//! at or below its head) are skipped, so replaying a journal twice is harmless.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the journal inside the data folder.
pub const JOURNAL_FILE: &str = "trace.journal";
/// Pending entries that trigger a move into redb.
pub const MERGE_AT: usize = 8192;
/// Largest frame accepted at recovery (a batch holds at most `GROUP_COMMIT_MAX` entries).
const FRAME_MAX: usize = 64 << 20;

/// One chained trace entry, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Sequence in the local chain.
    pub seq: u64,
    /// Chain hash.
    pub hash: [u8; 32],
    /// The sealed entry.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// The local chain head and the journal file.
#[derive(Debug)]
pub struct TraceChain {
    /// Last sequence made durable (journal or redb).
    pub seq: u64,
    /// Its chain hash.
    pub prev: [u8; 32],
    /// Records durable in the journal, not yet in redb.
    pub pending: Vec<JournalRecord>,
    file: File,
}

impl TraceChain {
    /// Opens (creating if needed) the journal and recovers its records above `head`.
    pub fn open(dir: &Path, head: (u64, [u8; 32])) -> Result<TraceChain> {
        let path = dir.join(JOURNAL_FILE);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good_len) = decode_frames(&bytes)?;
        if good_len < bytes.len() {
            file.set_len(good_len as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        let (mut seq, mut prev) = head;
        let mut pending = Vec::new();
        for r in records {
            if r.seq <= head.0 {
                continue;
            }
            if r.seq != seq + 1 {
                return Err(Error::integrity(format!(
                    "trace journal: entry {} follows entry {seq}",
                    r.seq
                )));
            }
            seq = r.seq;
            prev = r.hash;
            pending.push(r);
        }
        Ok(TraceChain {
            seq,
            prev,
            pending,
            file,
        })
    }

    /// Appends a batch as one frame and syncs it. On error nothing is acknowledged; the file may
    /// hold a partial frame, which recovery drops.
    pub fn append(&mut self, records: &[JournalRecord]) -> Result<()> {
        let payload = postcard::to_stdvec(records)?;
        let mut frame = Vec::with_capacity(payload.len() + 36);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(blake3::hash(&payload).as_bytes());
        frame.extend_from_slice(&payload);
        self.file.write_all(&frame)?;
        self.file.sync_data()?;
        Ok(())
    }

    /// Empties the journal once its records are committed in redb.
    pub fn truncate(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// Decodes frames; returns the records and the length of the well-formed prefix.
fn decode_frames(bytes: &[u8]) -> Result<(Vec<JournalRecord>, usize)> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header_end = at + 36;
        let frame = (header_end <= bytes.len())
            .then(|| {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().ok()?) as usize;
                let end = header_end.checked_add(len)?;
                (len <= FRAME_MAX && end <= bytes.len()).then_some((len, end))
            })
            .flatten();
        let Some((_, end)) = frame else {
            // Cut short by a crash: the header or payload runs past the end of the file.
            return Ok((records, at));
        };
        let payload = &bytes[header_end..end];
        let decoded: Option<Vec<JournalRecord>> = (blake3::hash(payload).as_bytes()[..]
            == bytes[at + 4..header_end])
            .then(|| postcard::from_bytes(payload).ok())
            .flatten();
        match decoded {
            Some(batch) => records.extend(batch),
            None if end == bytes.len() => return Ok((records, at)),
            None => {
                return Err(Error::integrity(format!(
                    "the trace journal is damaged at byte {at} (not at its end): restore the data folder from a backup"
                )));
            }
        }
        at = end;
    }
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> JournalRecord {
        JournalRecord {
            seq,
            hash: [seq as u8; 32],
            sealed: vec![seq as u8; 50],
        }
    }

    #[test]
    fn recovers_appended_batches_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32])).expect("open");
        c.append(&[rec(1), rec(2)]).expect("append");
        c.append(&[rec(3)]).expect("append");
        drop(c);
        // A crash in the middle of the next append.
        let path = dir.path().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("file");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("torn");
        drop(f);
        let c = TraceChain::open(dir.path(), (0, [0; 32])).expect("reopen");
        assert_eq!(
            c.pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(c.seq, 3);
        // Records already in redb are skipped.
        drop(c);
        let c = TraceChain::open(dir.path(), (2, [2; 32])).expect("reopen");
        assert_eq!(c.pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32])).expect("open");
        c.append(&[rec(1)]).expect("append");
        c.append(&[rec(2)]).expect("append");
        drop(c);
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[40] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            TraceChain::open(dir.path(), (0, [0; 32])),
            Err(Error::Integrity(_))
        ));
    }
}
