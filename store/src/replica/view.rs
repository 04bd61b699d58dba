//! The read view shared by concurrent audited reads: one redb snapshot, its generation counters
//! and its `docs` and `bodies` tables already open, so a read neither begins a transaction nor
//! opens tables of its own (together about a fifth of an audited read's CPU).
//!
//! Invariants: every write transaction of the replica commits through `RawWrite::commit` (a
//! `Writer` holds one), which *retires* the view right after the commit, so a read that starts
//! once a write has returned sees that write: a revocation is never missed by a later read. A
//! view built from a snapshot taken before a commit is never kept past that commit's retirement:
//! each retirement moves the slot's epoch, and a new view is kept only if the epoch it read
//! before taking its snapshot is still the current one. Between two writes the slot holds the
//! latest snapshot only, so it pins no page a later write frees for longer than the reads in
//! flight.
//!
//! On PostgreSQL other host daemons commit too, and no retirement here hears of it: there the
//! slot keeps nothing and each read takes its own snapshot (`SharedView::per_read`), so a
//! revocation committed by another daemon is seen by every read that starts after it.

use std::sync::{Arc, PoisonError, RwLock};

use crate::kv::ReadOnlyTable;

use super::Generation;
use crate::error::{Error, Result};

/// One snapshot, read by as many reads as start before the next write commits.
pub(super) struct ReadView {
    pub(super) txn: super::Snapshot,
    pub(super) generation: Generation,
    pub(super) docs: ReadOnlyTable<&'static [u8; 16], &'static [u8]>,
    pub(super) bodies: super::bodies::Bodies<ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

#[derive(Default)]
struct Slot {
    /// Moved by every retirement.
    epoch: u64,
    view: Option<Arc<ReadView>>,
}

/// See the module doc.
pub(super) struct SharedView {
    slot: RwLock<Slot>,
    /// False when other processes commit to the same database: no view outlives its read.
    keep: bool,
}

impl Default for SharedView {
    fn default() -> Self {
        SharedView {
            slot: RwLock::default(),
            keep: true,
        }
    }
}

impl std::fmt::Debug for SharedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedView")
    }
}

fn lock_err<T>(_: T) -> Error {
    Error::Storage("read view lock poisoned".into())
}

impl SharedView {
    /// A slot that keeps nothing: every read takes a snapshot of its own.
    pub(super) fn per_read() -> Self {
        SharedView {
            slot: RwLock::default(),
            keep: false,
        }
    }

    /// The current view, or a new one that `make` builds from a snapshot it takes now.
    pub(super) fn get_or_make(
        &self,
        make: impl FnOnce() -> Result<ReadView>,
    ) -> Result<Arc<ReadView>> {
        if !self.keep {
            return Ok(Arc::new(make()?));
        }
        let epoch = {
            let slot = self.slot.read().map_err(lock_err)?;
            if let Some(view) = &slot.view {
                return Ok(view.clone());
            }
            slot.epoch
        };
        let view = Arc::new(make()?);
        let mut slot = self.slot.write().map_err(lock_err)?;
        // A write retired the slot since: this snapshot may predate it, serve this read only.
        if slot.epoch == epoch {
            slot.view = Some(view.clone());
        }
        Ok(view)
    }

    /// A write committed: the next read takes a new snapshot. Never fails (a poisoned lock is
    /// still retired).
    pub(super) fn retire(&self) {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.view = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Database;
    use crate::replica::tables::{BODIES, DOCS};
    use std::cell::Cell;

    fn database(dir: &tempfile::TempDir) -> Database {
        let db = Database::Redb(redb::Database::create(dir.path().join("view.redb")).expect("db"));
        let txn = db.begin_write().expect("write");
        txn.open_table(DOCS).expect("docs");
        txn.open_table(BODIES).expect("bodies");
        txn.commit().expect("commit");
        db
    }

    fn view_of(db: &Database, made: &Cell<usize>) -> Result<ReadView> {
        made.set(made.get() + 1);
        let txn = db.begin_read()?;
        Ok(ReadView {
            docs: txn.open_table(DOCS)?,
            bodies: crate::replica::bodies::Bodies::in_rows(txn.open_table(BODIES)?),
            txn: crate::replica::Snapshot::bare(txn),
            generation: Generation {
                registry: 0,
                authority_version: 0,
                authority_as_of: 0,
                clock_seen: 0,
            },
        })
    }

    #[test]
    fn reads_share_a_view_until_a_write_retires_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = database(&dir);
        let (shared, made) = (SharedView::default(), Cell::new(0));
        let first = shared.get_or_make(|| view_of(&db, &made)).expect("view");
        let again = shared.get_or_make(|| view_of(&db, &made)).expect("view");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(made.get(), 1, "one snapshot for both");
        shared.retire();
        let after = shared.get_or_make(|| view_of(&db, &made)).expect("view");
        assert!(!Arc::ptr_eq(&first, &after));
        assert_eq!(made.get(), 2);
    }

    #[test]
    fn a_view_whose_snapshot_may_predate_a_retirement_serves_only_its_own_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = database(&dir);
        let (shared, made) = (SharedView::default(), Cell::new(0));
        // A write commits and retires while this read takes its snapshot.
        let raced = shared
            .get_or_make(|| {
                let view = view_of(&db, &made);
                shared.retire();
                view
            })
            .expect("view");
        let next = shared.get_or_make(|| view_of(&db, &made)).expect("view");
        assert!(!Arc::ptr_eq(&raced, &next), "never kept for later reads");
        assert_eq!(made.get(), 2);
    }
}
