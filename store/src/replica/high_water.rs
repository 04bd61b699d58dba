//! A high-water mark outside the data folder, so a whole older folder put back, or a trace cut
//! short, is seen at open.
//!
//! The row digests (`row_digest`) and `STATE_MAC` catch a row or a setting put back alone, but
//! a whole older copy of the folder is consistent with itself, and so is a trace whose newest
//! entries were removed (the unflushed tail of `trace.journal` zeroed, or rows cut from the
//! table with the head rewound). So the replica keeps a counter, the *open epoch*, in `meta`
//! (authenticated), and the operator may name a mark file outside the data folder
//! (`CARNET_HIGH_WATER`, e.g. beside a key kept off the data disk) holding the highest epoch this
//! replica reached and the last sequence of its own trace made durable, sealed under a key
//! derived from the master key and bound to the replica (its site id and creation time).
//!
//! - At open (`check_high_water`): a mark above the folder's epoch means the folder is older
//!   than one this replica already was, and a marked trace sequence above the trace's head
//!   means entries were removed: `Error::Integrity`, nothing written. Otherwise the epoch is
//!   raised above both, committed, then the mark is written (in that order: a crash between
//!   leaves the folder ahead of the mark, which is accepted).
//! - While the replica runs, the trace mover (`Replica::run_trace_committer`) writes the trace
//!   head into the mark when it moved, at most once every `TRACE_MARK_EVERY`.
//! - At a clean close the epoch is raised once more, so a copy taken while the replica ran is
//!   behind the mark once it closed; the mark takes the final trace head.
//! - A sanctioned rollback (a restore from a backup) calls `reset_high_water`, which sets the
//!   mark to the restored folder's epoch raised by one, and to its trace head.
//!
//! Limits: a mark file deleted (or never configured) checks nothing, and cannot be told apart
//! from a first use; a copy put back after a crash of the process that made it (no clean close)
//! is not seen if nothing opened the replica since; trace entries made in the last
//! `TRACE_MARK_EVERY` before the process stopped without a clean close are in no mark yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kv::ReadableTable;

use super::tables::*;
use super::{Replica, lock_err, read_u64};
use crate::crypto::{Key, aad};
use crate::error::{Error, Result};

/// How often, at most, a running replica writes its trace head into the mark.
pub const TRACE_MARK_EVERY: Duration = Duration::from_secs(1);

/// What a mark file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    /// The highest open epoch the replica reached.
    pub(super) epoch: u64,
    /// The last sequence of the replica's own trace made durable.
    pub(super) trace_seq: u64,
}

impl Mark {
    pub(super) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.epoch.to_le_bytes());
        b[8..].copy_from_slice(&self.trace_seq.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Mark> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (epoch, trace_seq) = b.split_at(8);
        Some(Mark {
            epoch: u64::from_le_bytes(epoch.try_into().ok()?),
            trace_seq: u64::from_le_bytes(trace_seq.try_into().ok()?),
        })
    }
}

/// The mark a replica keeps up to date while it runs (`Replica::high_water`).
#[derive(Debug)]
pub(super) struct MarkState {
    path: PathBuf,
    written: Mark,
    at: Instant,
}

impl MarkState {
    /// The mark file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Replica {
    fn mark_key(&self) -> Key {
        mark_key(&self.keys.registry)
    }

    fn mark_aad(&self) -> Vec<u8> {
        mark_aad(&self.config, self.daemon_number())
    }

    /// The last sequence of this replica's own trace made durable, for a mark written by a
    /// full rotation (`rekey`).
    pub(super) fn trace_head_for_mark(&self) -> Result<u64> {
        self.own_trace_head()
    }

    /// The folder's open epoch (`meta`).
    pub fn open_epoch(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(meta_key::OPEN_EPOCH)?;
        Ok(read_u64(v.as_ref().map(|g| g.value())))
    }

    /// The last sequence of this replica's own trace made durable (journal or table).
    fn own_trace_head(&self) -> Result<u64> {
        Ok(self.chain.lock().map_err(lock_err)?.seq)
    }

    /// The mark in the file at `path`, if there is one. A mark this replica's key does not
    /// open may be the one a full rotation (`rekey`) replaced: its successor, written beside it
    /// (`rekeyed_mark`) before the new database moved into place, is taken instead.
    fn read_mark(&self, path: &Path) -> Result<Option<Mark>> {
        let sealed = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let next = rekeyed_mark(path);
        if self.mark_key().open(&self.mark_aad(), &sealed).is_err()
            && let Ok(successor) = std::fs::read(&next)
            && self.mark_key().open(&self.mark_aad(), &successor).is_ok()
        {
            std::fs::rename(&next, path)?;
            if let Some(dir) = path.parent() {
                super::sync_dir(dir);
            }
            return self.read_mark(path);
        }
        let plain = self
            .mark_key()
            .open(&self.mark_aad(), &sealed)
            .map_err(|_| {
                Error::integrity(format!(
                    "the high-water mark {} is not this replica's or was altered",
                    path.display()
                ))
            })?;
        Mark::from_bytes(&plain)
            .map(Some)
            .ok_or_else(|| Error::integrity("the high-water mark is malformed"))
    }

    /// Writes `mark` into the file at `path` atomically (a new file synced, renamed over the old).
    fn write_mark(&self, path: &Path, mark: Mark) -> Result<()> {
        let sealed = self.mark_key().seal(&self.mark_aad(), &mark.to_bytes())?;
        let tmp = path.with_extension("new");
        crate::files::write_private(&tmp, &sealed)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            super::sync_dir(dir);
        }
        Ok(())
    }

    /// Raises the folder's epoch to at least `at_least` and one above what it was, then writes
    /// the mark with the trace head, and keeps it as the running mark.
    fn raise(&self, path: &Path, at_least: u64) -> Result<()> {
        // Read before the write transaction: writers take the chain first, then redb.
        let trace_seq = self.own_trace_head()?;
        let txn = self.begin_raw_write()?;
        let current = {
            let meta = txn.open_table(META)?;
            let v = meta.get(meta_key::OPEN_EPOCH)?;
            read_u64(v.as_ref().map(|g| g.value()))
        };
        let epoch = current.max(at_least) + 1;
        Self::bump_meta_u64(&txn, meta_key::OPEN_EPOCH, Some(epoch))?;
        txn.commit()?;
        self.durability.wait(self.durability.issued())?;
        let written = Mark { epoch, trace_seq };
        self.write_mark(path, written)?;
        *self.high_water.lock().map_err(lock_err)? = Some(MarkState {
            path: path.to_path_buf(),
            written,
            at: Instant::now(),
        });
        Ok(())
    }

    /// At open: refuses a folder older than the mark at `path`, or whose trace ends before the
    /// entry the mark names, then raises both (see the module). Remembered, so the trace mover
    /// and a clean close write it again.
    pub fn check_high_water(&self, path: &Path) -> Result<()> {
        let folder = self.open_epoch()?;
        let marked = self.read_mark(path)?;
        if let Some(m) = marked {
            if m.epoch > folder {
                return Err(Error::integrity(format!(
                    "this data folder is older than the replica was (epoch {folder}, the high-water mark {} says {}): it was put back from an older copy; restore it with `carnet restore` if that was meant",
                    path.display(),
                    m.epoch
                )));
            }
            let head = self.own_trace_head()?;
            if m.trace_seq > head {
                return Err(Error::integrity(format!(
                    "this replica's trace ends at entry {head}, but it had made entry {} durable (high-water mark {}): trace entries were removed from trace.journal or carnet.redb; restore the data folder from a backup",
                    m.trace_seq,
                    path.display()
                )));
            }
        }
        self.raise(path, marked.map_or(0, |m| m.epoch))
    }

    /// A sanctioned rollback (a restore from a backup): the mark at `path` is set to this
    /// folder's epoch, raised by one, and to its trace head, whatever it said before. Returns
    /// the new epoch.
    pub fn reset_high_water(&self, path: &Path) -> Result<u64> {
        self.raise(path, 0)?;
        self.open_epoch()
    }

    /// While running (the trace mover, with `TRACE_MARK_EVERY`): writes the trace head into
    /// the mark when it moved and `every` passed since the mark was last written. Failures are
    /// reported to the caller, which tries again later.
    pub(super) fn mark_trace_head(&self, every: Duration) -> Result<()> {
        let due = match &*self.high_water.lock().map_err(lock_err)? {
            Some(m) => m.at.elapsed() >= every,
            None => false,
        };
        if !due {
            return Ok(());
        }
        let head = self.own_trace_head()?;
        let mut state = self.high_water.lock().map_err(lock_err)?;
        let Some(m) = state.as_mut() else {
            return Ok(());
        };
        if head > m.written.trace_seq {
            let mark = Mark {
                epoch: m.written.epoch,
                trace_seq: head,
            };
            self.write_mark(&m.path, mark)?;
            m.written = mark;
        }
        m.at = Instant::now();
        Ok(())
    }

    /// At a clean close: raises the epoch and the mark once more (best effort).
    pub(super) fn raise_high_water_on_close(&self) {
        let path: Option<PathBuf> = self
            .high_water
            .lock()
            .ok()
            .and_then(|m| m.as_ref().map(|m| m.path.clone()));
        if let Some(path) = path {
            let _ = self.raise(&path, 0);
        }
    }
}

/// The key a replica's mark is sealed with, derived from its registry key.
pub(super) fn mark_key(registry: &Key) -> Key {
    registry.derive("carnet 2026-12 high-water mark")
}

/// The associated data of a replica's mark: bound to the replica and, for the daemons a
/// host adds (`daemons`; each has a trace chain and a mark of its own), to the daemon, so one
/// daemon's mark does not open as another's.
pub(super) fn mark_aad(config: &super::ReplicaConfig, daemon: u32) -> Vec<u8> {
    let (site, created) = (
        config.site_id.0.to_le_bytes(),
        config.created_at.to_le_bytes(),
    );
    match daemon {
        0 => aad(&[b"high-water", &site, &created]),
        n => aad(&[b"high-water", &site, &created, &n.to_le_bytes()]),
    }
}

/// Where a full rotation writes the mark sealed under its new key, before the new database
/// moves into place (`read_mark` takes it once that key is the replica's).
pub(super) fn rekeyed_mark(mark: &Path) -> PathBuf {
    mark.with_extension("rekey")
}

/// The mark file `CARNET_HIGH_WATER` names, if set.
pub(super) fn mark_from_env() -> Option<PathBuf> {
    std::env::var_os(HIGH_WATER_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The environment variable naming the mark file (outside the data folder).
pub const HIGH_WATER_ENV: &str = "CARNET_HIGH_WATER";

/// At the edges (CLI, daemon): checks and raises the mark `CARNET_HIGH_WATER` names, if set.
pub fn check_high_water_from_env(replica: &Replica) -> Result<()> {
    match mark_from_env() {
        Some(p) => replica.check_high_water(&p),
        None => Ok(()),
    }
}

/// For a sanctioned restore: resets the mark `CARNET_HIGH_WATER` names, if set, to `replica`
/// (opened with `Replica::open`, not through `check_high_water_from_env`, which would refuse the
/// restored, older folder). Returns the new epoch, if a mark is kept.
pub fn reset_high_water_from_env(replica: &Replica) -> Result<Option<u64>> {
    match mark_from_env() {
        Some(p) => replica.reset_high_water(&p).map(Some),
        None => Ok(None),
    }
}
