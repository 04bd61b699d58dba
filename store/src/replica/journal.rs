//! The trace journal: where audited reads make their trace entries durable.
//!
//! A redb commit writes and syncs several pages; a read only needs its trace entry on disk. So
//! the group-commit leader appends the batch's sealed, chained entries to this file and syncs
//! it: one small `fdatasync` per batch. The file is preallocated (written with zeros once) and
//! frames overwrite it in place, so a sync never waits for a file-size change. The entries move
//! into the `AUDIT` table at the next write transaction (or when the journal fills, at open, and
//! before the trace is read); that transaction also advances the journal *epoch* stored in
//! `META`, which retires every frame written before it.
//!
//! Invariants: the chain head in memory (`TraceChain`) is the one authority on the next sequence
//! number; it moves only under its mutex and only once entries are durable (journal synced, or
//! redb committed). A frame is `len (u32 LE) ‖ epoch (u32 LE) ‖ BLAKE3(epoch ‖ payload) ‖
//! payload`, `payload` being the postcard of the batch's records. Recovery reads frames of the
//! current epoch from the start and stops at the first that does not check: a frame cut short by
//! a crash was never acknowledged. Records already in `AUDIT` (sequence at or below its head)
//! are skipped, so replaying a journal is harmless.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the journal inside the data folder.
pub const JOURNAL_FILE: &str = "trace.journal";
/// Size of the preallocated journal.
pub const JOURNAL_BYTES: u64 = 8 << 20;
/// Pending entries that trigger a move into redb.
pub const MERGE_AT: usize = 8192;
const HEADER: usize = 40;

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
    /// Epoch of the frames written now (as stored in `META`).
    pub epoch: u32,
    /// A write failed after it may have reached the file: its frame must be retired by the
    /// next move into redb (a new epoch), even if nothing is pending.
    pub stale_frame: bool,
    offset: u64,
    file: File,
}

fn frame_hash(epoch: u32, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

impl TraceChain {
    /// Opens (creating and preallocating if needed) the journal and recovers the records of
    /// `epoch` above `head`.
    pub fn open(dir: &Path, head: (u64, [u8; 32]), epoch: u32) -> Result<TraceChain> {
        let path = dir.join(JOURNAL_FILE);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if (bytes.len() as u64) < JOURNAL_BYTES {
            // Real zeros, not a sparse file: later in-place writes change no metadata.
            let zeros = vec![0u8; (JOURNAL_BYTES - bytes.len() as u64) as usize];
            file.write_all(&zeros)?;
            file.sync_all()?;
        }
        let (records, offset) = decode_frames(&bytes, epoch);
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
            epoch,
            stale_frame: false,
            offset: offset as u64,
            file,
        })
    }

    /// True when a batch of `payload_len` bytes still fits after the frames written.
    pub fn fits(&self, records: &[JournalRecord]) -> bool {
        let len: usize = records.iter().map(|r| r.sealed.len() + 48).sum();
        self.offset + (HEADER + len) as u64 <= JOURNAL_BYTES
    }

    /// Writes a batch as one frame and syncs it. On error nothing is acknowledged; a partial
    /// frame fails its check at recovery.
    pub fn append(&mut self, records: &[JournalRecord]) -> Result<()> {
        let payload = postcard::to_stdvec(records)?;
        let mut frame = Vec::with_capacity(payload.len() + HEADER);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&self.epoch.to_le_bytes());
        frame.extend_from_slice(&frame_hash(self.epoch, &payload));
        frame.extend_from_slice(&payload);
        if self.offset + frame.len() as u64 > JOURNAL_BYTES {
            return Err(Error::Storage("the trace journal is full".into()));
        }
        let written = self
            .file
            .write_all_at(&frame, self.offset)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.stale_frame = true;
            return Err(e.into());
        }
        self.offset += frame.len() as u64;
        Ok(())
    }

    /// Starts a new epoch once the pending records are committed in redb with `epoch` stored:
    /// older frames are retired without touching the file.
    pub fn restart(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.offset = 0;
        self.pending.clear();
        self.stale_frame = false;
    }
}

/// Decodes the frames of `epoch` from the start; returns the records and where they end.
fn decode_frames(bytes: &[u8], epoch: u32) -> (Vec<JournalRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + HEADER) else {
            return (records, at);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let frame_epoch = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (records, at);
        };
        if frame_epoch != epoch || frame_hash(epoch, payload)[..] != header[8..HEADER] {
            return (records, at);
        }
        match postcard::from_bytes::<Vec<JournalRecord>>(payload) {
            Ok(batch) => records.extend(batch),
            Err(_) => return (records, at),
        }
        at += HEADER + len;
    }
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

    fn seqs(c: &TraceChain) -> Vec<u64> {
        c.pending.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn recovers_batches_and_drops_a_torn_frame() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32]), 1).expect("open");
        c.append(&[rec(1), rec(2)]).expect("append");
        c.append(&[rec(3)]).expect("append");
        let torn_at = c.offset;
        drop(c);
        assert_eq!(
            std::fs::metadata(dir.path().join(JOURNAL_FILE))
                .expect("meta")
                .len(),
            JOURNAL_BYTES
        );
        // A crash in the middle of the next frame: a header whose payload never landed.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(JOURNAL_FILE))
            .expect("file");
        f.write_all_at(&[200, 0, 0, 0, 1, 0, 0, 0, 9, 9], torn_at)
            .expect("torn");
        drop(f);
        let c = TraceChain::open(dir.path(), (0, [0; 32]), 1).expect("reopen");
        assert_eq!(seqs(&c), vec![1, 2, 3]);
        assert_eq!((c.seq, c.offset), (3, torn_at));
        drop(c);
        // Records already in redb are skipped; another epoch's frames are retired.
        let c = TraceChain::open(dir.path(), (2, [2; 32]), 1).expect("reopen");
        assert_eq!(seqs(&c), vec![3]);
        drop(c);
        let c = TraceChain::open(dir.path(), (3, [3; 32]), 2).expect("new epoch");
        assert!(c.pending.is_empty());
    }

    #[test]
    fn a_new_epoch_overwrites_from_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32]), 1).expect("open");
        c.append(&[rec(1), rec(2), rec(3)]).expect("append");
        c.restart(2);
        c.append(&[rec(4)]).expect("append");
        drop(c);
        let c = TraceChain::open(dir.path(), (3, [3; 32]), 2).expect("reopen");
        assert_eq!(seqs(&c), vec![4]);
    }

    #[test]
    fn a_gap_in_the_chain_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32]), 1).expect("open");
        c.append(&[rec(1), rec(3)]).expect("append");
        drop(c);
        assert!(matches!(
            TraceChain::open(dir.path(), (0, [0; 32]), 1),
            Err(Error::Integrity(_))
        ));
    }
}
