//! The trace journal: where audited reads make their trace entries durable.
//!
//! A redb commit writes and syncs several pages; a read only needs its trace entry on disk. So
//! the group-commit leader appends the batch's sealed, chained entries to this file and syncs
//! it: one small `fdatasync` per batch. The file is preallocated (written with zeros once) and
//! frames overwrite it in place, so a sync never waits for a file-size change.
//!
//! The file has two regions; the frames of one *epoch* fill one region from its start. The
//! entries move into the `AUDIT` table by a transaction that also stores, in `META`, the oldest
//! epoch still live, retiring every frame of the epochs before it. Such a move happens at the
//! next write transaction (everything pending), at open, before the trace is read, or when the
//! active epoch fills: then the leader *seals* it and goes on in the other region with the next
//! epoch, and a mover thread (`Replica::run_trace_committer`) moves the sealed epoch into redb
//! off the leader's path. Without a mover, or while one is still moving, the leader moves
//! everything itself.
//!
//! Invariants: the chain head in memory (`TraceChain`) is the one authority on the next sequence
//! number; it moves only under its mutex and only once entries are durable (journal synced, or
//! redb committed). At most two epochs are live: the one stored in `META` and the next, each in
//! its own region, so recovery reads the frames of both, in epoch order. A frame is
//! `len (u32 LE) ‖ epoch (u32 LE) ‖ BLAKE3(epoch ‖ payload) ‖ payload`, `payload` being the
//! postcard of the batch's records. Recovery reads a region's frames from its start while they
//! check and share the first one's epoch: a frame cut short by a crash was never acknowledged.
//! Records already in `AUDIT` (sequence at or below its head) are skipped, so replaying a
//! journal is harmless; a move repeated by two writers inserts the same rows twice.
//!
//! The journal is read and written through a redb `StorageBackend`: the file itself
//! (`JournalFile`), or, in the simulator, a simulated disk that loses what was not synced at
//! a power cut and fails writes on demand (`TraceChain::open_on`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use redb::StorageBackend;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the journal inside the data folder.
pub const JOURNAL_FILE: &str = "trace.journal";
/// Size of one of the journal's two regions.
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

/// A full epoch, durable in its region, waiting to move into redb.
#[derive(Debug)]
pub struct SealedEpoch {
    /// Its epoch: the oldest live one, as stored in `META` until the move.
    pub epoch: u32,
    /// Its records, in chain order.
    pub records: Vec<JournalRecord>,
}

/// The local chain head and the journal file.
#[derive(Debug)]
pub struct TraceChain {
    /// Last sequence made durable (journal or redb).
    pub seq: u64,
    /// Its chain hash.
    pub prev: [u8; 32],
    /// Records of the active epoch, durable in the journal, not yet in redb.
    pub pending: Vec<JournalRecord>,
    /// The epoch before the active one, when it waits for the mover (its records precede
    /// `pending`).
    pub sealed: Option<std::sync::Arc<SealedEpoch>>,
    /// Epoch of the frames written now.
    pub epoch: u32,
    /// A write failed after it may have reached the file: its frame must be retired by the
    /// next move into redb (a new epoch), even if nothing is pending.
    pub stale_frame: bool,
    /// Pending entries that make the leader seal the epoch (`MERGE_AT`; lower in tests).
    pub merge_at: usize,
    /// Region of the active epoch (0 or 1).
    region: u64,
    /// Where the next frame goes in the region.
    offset: u64,
    file: Box<dyn StorageBackend>,
}

/// The journal file as a storage backend.
#[derive(Debug)]
struct JournalFile(File);

impl StorageBackend for JournalFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

fn frame_hash(epoch: u32, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// What recovery found in one region.
struct Region {
    index: u64,
    epoch: u32,
    records: Vec<JournalRecord>,
    end: usize,
}

impl TraceChain {
    /// Opens (creating and preallocating if needed) the journal and recovers the records of
    /// the live epochs, `epoch` and the next, above `head`.
    pub fn open(dir: &Path, head: (u64, [u8; 32]), epoch: u32) -> Result<TraceChain> {
        let path = dir.join(JOURNAL_FILE);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Never a link out of the data folder (`files::own_files` says so at open too).
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = opts.open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(Error::integrity(format!(
                "the trace journal {} is not a file: restore the data folder from your last backup",
                path.display(),
            )));
        }
        lock_journal(&file, dir)?;
        Self::open_on(Box::new(JournalFile(file)), head, epoch).map_err(|e| match e {
            Error::Integrity(why) => Error::integrity(format!("{why} ({})", path.display())),
            e => e,
        })
    }

    /// `open`, on `file`: the journal file, or a simulated disk.
    pub fn open_on(
        file: Box<dyn StorageBackend>,
        head: (u64, [u8; 32]),
        epoch: u32,
    ) -> Result<TraceChain> {
        let len = file.len()?;
        if len > 2 * JOURNAL_BYTES {
            return Err(Error::integrity(format!(
                "the trace journal is not the file Carnet wrote ({len} bytes; at most {}): restore the data folder from your last backup",
                2 * JOURNAL_BYTES
            )));
        }
        let mut bytes = vec![0u8; len as usize];
        file.read(0, &mut bytes)?;
        if len < 2 * JOURNAL_BYTES {
            // Real zeros, not a sparse file: later in-place writes change no metadata. (A
            // journal of one region, from an earlier version, grows its second here.)
            let zeros = vec![0u8; (2 * JOURNAL_BYTES - len) as usize];
            file.set_len(2 * JOURNAL_BYTES)?;
            file.write(len, &zeros)?;
            file.sync_data()?;
        }
        let live = |e: u32| e == epoch || e == epoch.wrapping_add(1);
        let mut regions: Vec<Region> = (0..2u64)
            .filter_map(|index| {
                let from = (index * JOURNAL_BYTES) as usize;
                let to = (from + JOURNAL_BYTES as usize).min(bytes.len());
                let (frame_epoch, records, end) = decode_frames(bytes.get(from..to)?)?;
                live(frame_epoch).then_some(Region {
                    index,
                    epoch: frame_epoch,
                    records,
                    end,
                })
            })
            .collect();
        regions.sort_by_key(|r| r.epoch != epoch);
        let (mut seq, mut prev) = head;
        let mut pending = Vec::new();
        for r in regions.iter_mut().flat_map(|r| r.records.drain(..)) {
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
        // Frames go on after the newest live epoch found (all of it moves at open anyway).
        let (epoch, region, offset) = regions
            .last()
            .map_or((epoch, 0, 0), |r| (r.epoch, r.index, r.end as u64));
        Ok(TraceChain {
            seq,
            prev,
            pending,
            sealed: None,
            epoch,
            stale_frame: false,
            merge_at: MERGE_AT,
            region,
            offset,
            file,
        })
    }

    /// True when a batch of `payload_len` bytes still fits after the frames written.
    pub fn fits(&self, records: &[JournalRecord]) -> bool {
        let len: usize = records.iter().map(|r| r.sealed.len() + 48).sum();
        self.offset + (HEADER + len) as u64 <= JOURNAL_BYTES
    }

    /// True when the active epoch should end before `records` are written.
    pub fn is_due(&self, records: &[JournalRecord]) -> bool {
        !self.fits(records) || self.pending.len() >= self.merge_at
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
            .write(self.region * JOURNAL_BYTES + self.offset, &frame)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.stale_frame = true;
            return Err(e.into());
        }
        self.offset += frame.len() as u64;
        Ok(())
    }

    /// Seals the active epoch for the mover and goes on with the next one in the other region,
    /// whose frames belong to a retired epoch. `None` (nothing changes) if an epoch already
    /// waits, or a failed write left a frame to retire: the caller then moves everything.
    pub fn seal(&mut self) -> Option<std::sync::Arc<SealedEpoch>> {
        if self.sealed.is_some() || self.stale_frame {
            return None;
        }
        let sealed = std::sync::Arc::new(SealedEpoch {
            epoch: self.epoch,
            records: std::mem::take(&mut self.pending),
        });
        self.sealed = Some(sealed.clone());
        self.epoch = self.epoch.wrapping_add(1);
        self.region ^= 1;
        self.offset = 0;
        Some(sealed)
    }

    /// Forgets the sealed epoch `epoch` once a move committed it with `epoch + 1` stored.
    pub fn sealed_moved(&mut self, epoch: u32) {
        if self.sealed.as_ref().is_some_and(|s| s.epoch == epoch) {
            self.sealed = None;
        }
    }

    /// Starts a new epoch once every journaled record is committed in redb with `epoch`
    /// stored, and that commit is on disk: older frames are retired without touching the file
    /// (the next frames overwrite them).
    pub fn restart(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.region ^= 1;
        self.offset = 0;
        self.pending.clear();
        self.sealed = None;
        self.stale_frame = false;
    }

    /// Every record journaled and not yet in redb, in chain order.
    pub fn journaled(&self) -> impl Iterator<Item = &JournalRecord> {
        self.sealed
            .iter()
            .flat_map(|s| s.records.iter())
            .chain(self.pending.iter())
    }
}

/// Decodes a region's frames from its start, while they check and share the first one's
/// epoch: that epoch, the records and where they end. `None` if the first frame does not check.
fn decode_frames(bytes: &[u8]) -> Option<(u32, Vec<JournalRecord>, usize)> {
    let mut records = Vec::new();
    let mut epoch = None;
    let mut at = 0;
    loop {
        let Some(frame) = check_frame(bytes, at, epoch) else {
            return epoch.map(|e| (e, records, at));
        };
        let (frame_epoch, batch, len) = frame;
        epoch = Some(frame_epoch);
        records.extend(batch);
        at += len;
    }
}

/// The frame at `at` if it checks (and has epoch `expected`, if given): its epoch, records and
/// length.
fn check_frame(
    bytes: &[u8],
    at: usize,
    expected: Option<u32>,
) -> Option<(u32, Vec<JournalRecord>, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let epoch = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    if expected.is_some_and(|e| e != epoch) || frame_hash(epoch, payload)[..] != header[8..HEADER] {
        return None;
    }
    let batch = postcard::from_bytes::<Vec<JournalRecord>>(payload).ok()?;
    Some((epoch, batch, HEADER + len))
}

/// Locks the journal file for this process: one process per folder appends to its chain.
/// redb's file lock says so for a replica in its file, this lock for a host whose tables are
/// in PostgreSQL; released when the file closes. A child process forked by another thread
/// shares the lock until it runs its program (the file is close-on-exec), so a lock held is
/// tried again for up to `LOCK_PATIENCE` before it means another process.
fn lock_journal(file: &std::fs::File, dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Storage(format!(
                    "the replica in {} is in use by another process (its daemon runs: stop it, or use `carnet` while it runs)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// How long a journal lock held elsewhere is tried again (see `lock_journal`).
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

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
            2 * JOURNAL_BYTES
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
    /// Appends a batch as the leader does: durable, then pending.
    fn commit(c: &mut TraceChain, records: &[JournalRecord]) {
        c.append(records).expect("append");
        c.seq = records.last().expect("a batch").seq;
        c.pending.extend_from_slice(records);
    }

    #[test]
    fn a_sealed_epoch_and_the_next_are_both_recovered_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32]), 7).expect("open");
        commit(&mut c, &[rec(1), rec(2)]);
        let sealed = c.seal().expect("sealed");
        assert_eq!((sealed.epoch, c.epoch, c.region), (7, 8, 1));
        assert!(c.seal().is_none(), "one sealed epoch at a time");
        commit(&mut c, &[rec(3)]);
        assert_eq!(
            c.journaled().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        drop(c);
        // A crash before the mover committed: epoch 7 is still the oldest live.
        let c = TraceChain::open(dir.path(), (0, [0; 32]), 7).expect("reopen");
        assert_eq!(seqs(&c), vec![1, 2, 3]);
        assert_eq!((c.epoch, c.region), (8, 1), "frames go on after the newest");
        drop(c);
        // After the move (epoch 8 stored, head at 2), the sealed region is retired.
        let mut c = TraceChain::open(dir.path(), (2, [2; 32]), 8).expect("reopen");
        assert_eq!(seqs(&c), vec![3]);
        // The next epoch overwrites the retired region from its start.
        c.pending.clear();
        c.seq = 3;
        commit(&mut c, &[rec(4)]);
        let sealed = c.seal().expect("sealed");
        assert_eq!((sealed.epoch, c.epoch, c.region), (8, 9, 0));
        commit(&mut c, &[rec(5)]);
        drop(c);
        let c = TraceChain::open(dir.path(), (3, [3; 32]), 8).expect("reopen");
        assert_eq!(seqs(&c), vec![4, 5]);
    }

    #[test]
    fn a_failed_write_or_a_waiting_epoch_keeps_the_epoch_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32]), 1).expect("open");
        commit(&mut c, &[rec(1)]);
        c.stale_frame = true;
        assert!(c.seal().is_none());
        assert_eq!((c.epoch, seqs(&c)), (1, vec![1]), "nothing changed");
        c.restart(2);
        assert!(c.sealed.is_none() && !c.stale_frame && c.pending.is_empty());
        commit(&mut c, &[rec(2)]);
        c.seal().expect("sealed");
        c.sealed_moved(1);
        assert!(c.sealed.is_some(), "another epoch's move forgets nothing");
        c.sealed_moved(2);
        assert!(c.sealed.is_none());
    }

    #[test]
    fn a_journal_of_one_region_is_recovered_and_grows_a_second() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = TraceChain::open(dir.path(), (0, [0; 32]), 3).expect("open");
        // As an earlier version wrote it: epoch 3 at the start of an 8 MiB file.
        commit(&mut c, &[rec(1), rec(2)]);
        drop(c);
        let path = dir.path().join(JOURNAL_FILE);
        let f = OpenOptions::new().write(true).open(&path).expect("file");
        f.set_len(JOURNAL_BYTES).expect("truncate");
        drop(f);
        let c = TraceChain::open(dir.path(), (0, [0; 32]), 3).expect("reopen");
        assert_eq!(seqs(&c), vec![1, 2]);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            2 * JOURNAL_BYTES
        );
    }
}
