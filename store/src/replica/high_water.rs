//! A high-water mark outside the data folder, so a whole older folder put back is seen at open.
//!
//! The row digests (`row_digest`) and `STATE_MAC` catch a row or a setting put back alone, but
//! a whole older copy of the folder is consistent with itself. So the replica keeps a counter,
//! the *open epoch*, in `meta` (authenticated), and the operator may name a mark file outside
//! the data folder (`CARNET_HIGH_WATER`, e.g. beside a key kept off the data disk) holding the
//! highest epoch this replica reached, sealed under a key derived from the master key and
//! bound to the replica (its site id and creation time).
//!
//! - At open (`check_high_water`): a mark above the folder's epoch means the folder is older
//!   than one this replica already was: `Error::Integrity`, nothing written. Otherwise the
//!   epoch is raised above both, committed, then the mark is written (in that order: a crash
//!   between leaves the folder ahead of the mark, which is accepted).
//! - At a clean close the epoch is raised once more, so a copy taken while the replica ran is
//!   behind the mark once it closed.
//! - A sanctioned rollback (a restore from a backup) calls `reset_high_water`, which sets the
//!   mark to the restored folder's epoch raised by one.
//!
//! Limits: a mark file deleted (or never configured) checks nothing, and cannot be told apart
//! from a first use; a copy put back after a crash of the process that made it (no clean close)
//! is not seen if nothing opened the replica since.

use std::path::{Path, PathBuf};

use redb::ReadableTable;

use super::tables::*;
use super::{Replica, lock_err, read_u64};
use crate::crypto::{Key, aad};
use crate::error::{Error, Result};

impl Replica {
    fn mark_key(&self) -> Key {
        mark_key(&self.keys.registry)
    }

    fn mark_aad(&self) -> Vec<u8> {
        mark_aad(&self.config)
    }

    /// The folder's open epoch (`meta`).
    pub fn open_epoch(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(meta_key::OPEN_EPOCH)?;
        Ok(read_u64(v.as_ref().map(|g| g.value())))
    }

    /// The epoch in the mark file at `mark`, if there is one. A mark this replica's key does
    /// not open may be the one a full rotation (`rekey`) replaced: its successor, written
    /// beside it (`rekeyed_mark`) before the new database moved into place, is taken instead.
    fn read_mark(&self, mark: &Path) -> Result<Option<u64>> {
        let sealed = match std::fs::read(mark) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let next = rekeyed_mark(mark);
        if self.mark_key().open(&self.mark_aad(), &sealed).is_err()
            && let Ok(successor) = std::fs::read(&next)
            && self.mark_key().open(&self.mark_aad(), &successor).is_ok()
        {
            std::fs::rename(&next, mark)?;
            if let Some(dir) = mark.parent() {
                super::sync_dir(dir);
            }
            return self.read_mark(mark);
        }
        let plain = self
            .mark_key()
            .open(&self.mark_aad(), &sealed)
            .map_err(|_| {
                Error::integrity(format!(
                    "the high-water mark {} is not this replica's or was altered",
                    mark.display()
                ))
            })?;
        let bytes: [u8; 8] = plain
            .as_slice()
            .try_into()
            .map_err(|_| Error::integrity("the high-water mark is malformed"))?;
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    /// Raises the folder's epoch to at least `at_least` and one above what it was, then writes
    /// the mark (atomically: a new file renamed over the old).
    fn raise(&self, mark: &Path, at_least: u64) -> Result<u64> {
        let txn = self.begin_raw_write()?;
        let current = {
            let meta = txn.open_table(META)?;
            let v = meta.get(meta_key::OPEN_EPOCH)?;
            read_u64(v.as_ref().map(|g| g.value()))
        };
        let next = current.max(at_least) + 1;
        Self::bump_meta_u64(&txn, meta_key::OPEN_EPOCH, Some(next))?;
        txn.commit()?;
        self.durability.wait(self.durability.issued())?;
        let sealed = self
            .mark_key()
            .seal(&self.mark_aad(), &next.to_le_bytes())?;
        let tmp = mark.with_extension("new");
        crate::files::write_private(&tmp, &sealed)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, mark)?;
        if let Some(dir) = mark.parent() {
            super::sync_dir(dir);
        }
        Ok(next)
    }

    /// At open: refuses a folder older than the mark at `mark`, then raises both (see the
    /// module). Remembered, so a clean close raises them again.
    pub fn check_high_water(&self, mark: &Path) -> Result<()> {
        let folder = self.open_epoch()?;
        let marked = self.read_mark(mark)?;
        if let Some(m) = marked
            && m > folder
        {
            return Err(Error::integrity(format!(
                "this data folder is older than the replica was (epoch {folder}, the high-water mark {} says {m}): it was put back from an older copy; restore it with `carnet restore` if that was meant",
                mark.display()
            )));
        }
        self.raise(mark, marked.unwrap_or(0))?;
        *self.high_water.lock().map_err(lock_err)? = Some(mark.to_path_buf());
        Ok(())
    }

    /// A sanctioned rollback (a restore from a backup): the mark at `mark` is set to this
    /// folder's epoch, raised by one, whatever it said before. Returns the new epoch.
    pub fn reset_high_water(&self, mark: &Path) -> Result<u64> {
        let next = self.raise(mark, 0)?;
        *self.high_water.lock().map_err(lock_err)? = Some(mark.to_path_buf());
        Ok(next)
    }

    /// At a clean close: raises the epoch and the mark once more (best effort).
    pub(super) fn raise_high_water_on_close(&self) {
        let mark: Option<PathBuf> = self.high_water.lock().ok().and_then(|m| m.clone());
        if let Some(mark) = mark {
            let _ = self.raise(&mark, 0);
        }
    }
}

/// The key a replica's mark is sealed with, derived from its registry key.
pub(super) fn mark_key(registry: &Key) -> Key {
    registry.derive("carnet 2026-12 high-water mark")
}

/// The associated data of a replica's mark: bound to the replica.
pub(super) fn mark_aad(config: &super::ReplicaConfig) -> Vec<u8> {
    aad(&[
        b"high-water",
        &config.site_id.0.to_le_bytes(),
        &config.created_at.to_le_bytes(),
    ])
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
