//! The replica's change feed (`GET /v1/changes`): what changed here, in commit order, so the
//! software around a replica follows it without reading everything again. An entry names what
//! changed — a document, a dossier's head (created, qualified, closed, reopened, purged), its
//! grants, a notification, the site's sync state — and never what it holds: whoever follows
//! the feed reads the thing itself through the operations, decided and traced as any read.
//!
//! Invariants:
//! - an entry is written in the transaction that makes its change (`note_change` stages it,
//!   `RawWrite::commit` numbers and writes what was staged), so the feed never names a change
//!   that did not commit and never misses one that did; sequences only grow;
//! - rows are sealed under the registry key and bound to their sequence; in clear they carry
//!   only the dossier's blind index, so a purge drops a dossier's entries (`forget_changes`)
//!   and leaves one: the purge itself;
//! - at most `MAX_CHANGES` rows are kept; `meta_key::CHANGES_FLOOR` is the cursor below which
//!   rows are gone (trimmed, or dropped by a full key rotation, which cannot name them under
//!   the new keys), and a cursor under it is refused (`ChangesPage::Gone`), never answered
//!   with a silent gap;
//! - committing wakes the waiters of this process (`change_watch`); a change committed by
//!   another process (a second host daemon on the same PostgreSQL database) is seen at the
//!   next read.
//!
//! Cost: one sealed row per change, appended at the end of one table. On a host of several
//! daemons sharing PostgreSQL, every commit that records a change takes that table's next
//! sequence, so two daemons' transactions doing so at once collide and one is run again
//! (`Replica::retrying`); a sequence per daemon, with a cursor naming each, would remove that
//! contention.

use crate::kv::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Replica, lock_err, read_u64};
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins};

/// Rows kept; older ones are trimmed as new ones are written.
pub const MAX_CHANGES: u64 = 100_000;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Changed {
    /// A document was stored, updated, merged, withdrawn or removed here.
    Document {
        /// Its dossier.
        ins: Ins,
        /// The document.
        id: DocId,
    },
    /// A dossier's head: created (here or by the host), qualified, closed, reopened, purged.
    Dossier {
        /// The dossier.
        ins: Ins,
    },
    /// A dossier's grants, revocations, blocks, emergency settings or consent given in person.
    Grants {
        /// The dossier.
        ins: Ins,
    },
    /// Host: a notification was created.
    Notification {
        /// Its id (`notifications list`).
        id: u64,
    },
    /// Site: the sync state moved (the link came up or went down, or a round moved changes).
    Sync,
}

impl Changed {
    /// The dossier the change is about, if any.
    pub fn ins(&self) -> Option<&Ins> {
        match self {
            Changed::Document { ins, .. } | Changed::Dossier { ins } | Changed::Grants { ins } => {
                Some(ins)
            }
            Changed::Notification { .. } | Changed::Sync => None,
        }
    }
}

/// One entry of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Its sequence: the cursor to follow from once it was read.
    pub seq: u64,
    /// What changed.
    pub change: Changed,
}

/// What a read of the feed answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesPage {
    /// The entries after the cursor (at most the limit asked), and the cursor to follow from.
    Entries {
        /// In sequence order.
        entries: Vec<ChangeEntry>,
        /// The last sequence read (the cursor given, when there was nothing).
        last_seq: u64,
    },
    /// The cursor is older than the oldest entry kept: read the state again, then follow
    /// from `last_seq`.
    Gone {
        /// The cursor below which entries are gone.
        floor: u64,
        /// The latest sequence.
        last_seq: u64,
    },
}

/// A row of `CHANGES`: the dossier's blind index in clear (for a purge), the change sealed.
#[derive(Serialize, Deserialize)]
struct ChangeRow {
    bi: Option<[u8; 32]>,
    sealed: Vec<u8>,
}

fn change_aad(seq: u64) -> Vec<u8> {
    aad(&[b"change", &seq.to_be_bytes()])
}

/// Changes whose room the staging list keeps between transactions.
const STAGED_KEPT: usize = 4096;

impl Replica {
    /// Stages `change` for the write transaction under way: written when it commits, dropped
    /// with it otherwise.
    pub(super) fn note_change(&self, change: Changed) -> Result<()> {
        let bi = change.ins().map(|ins| self.blind(ins));
        self.pending_changes
            .lock()
            .map_err(lock_err)?
            .push((bi, change));
        Ok(())
    }

    /// Drops what a dropped transaction staged (the write lock is held).
    pub(super) fn clear_pending_changes(&self) -> Result<()> {
        self.pending_changes.lock().map_err(lock_err)?.clear();
        Ok(())
    }

    /// Writes, in `txn`, the changes staged for it; answers the last sequence written, if any.
    pub(super) fn commit_changes(&self, txn: &WriteTransaction) -> Result<Option<u64>> {
        // Drained, not taken: the staging list keeps its room for the next transaction (the
        // write lock is held, so nothing else stages meanwhile).
        let mut staged = self.pending_changes.lock().map_err(lock_err)?;
        if staged.is_empty() {
            return Ok(None);
        }
        let mut table = txn.open_table(CHANGES)?;
        let floor = {
            let meta = txn.open_table(META)?;
            read_u64(
                meta.get(meta_key::CHANGES_FLOOR)?
                    .as_ref()
                    .map(|v| v.value()),
            )
        };
        let mut seq = table.last()?.map_or(0, |(k, _)| k.value()).max(floor);
        for (bi, change) in staged.drain(..) {
            seq += 1;
            let sealed = self
                .keys
                .registry
                .seal(&change_aad(seq), &postcard::to_stdvec(&change)?)?;
            table.insert(
                seq,
                postcard::to_stdvec(&ChangeRow { bi, sealed })?.as_slice(),
            )?;
        }
        // Room for a usual transaction's changes is kept, not what one large import needed.
        staged.shrink_to(STAGED_KEPT);
        let first = table.first()?.map_or(seq, |(k, _)| k.value());
        let cap = self.change_cap.load(std::sync::atomic::Ordering::Relaxed);
        if seq - first >= cap {
            let new_floor = seq - cap;
            table.retain_in(..=new_floor, |_, _| false)?;
            txn.open_table(META)?
                .insert(meta_key::CHANGES_FLOOR, new_floor.to_le_bytes().as_slice())?;
        }
        Ok(Some(seq))
    }

    /// Keeps at most `cap` entries from the next commit on (tests; `MAX_CHANGES` otherwise).
    #[cfg(test)]
    pub(super) fn set_change_cap(&self, cap: u64) {
        self.change_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    /// Wakes this process's waiters once the changes up to `seq` committed.
    pub(super) fn changes_committed(&self, seq: u64) {
        self.change_seq.send_if_modified(|last| {
            let newer = seq > *last;
            *last = (*last).max(seq);
            newer
        });
    }

    /// Drops, in `txn`, the entries of dossier `bi`, written and staged (its purge).
    pub(super) fn forget_changes(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<()> {
        txn.open_table(CHANGES)?.retain(|_, v| {
            postcard::from_bytes::<ChangeRow>(v).map_or(true, |row| row.bi.as_ref() != Some(bi))
        })?;
        self.pending_changes
            .lock()
            .map_err(lock_err)?
            .retain(|(b, _)| b.as_ref() != Some(bi));
        Ok(())
    }

    /// The entries after `since`, at most `limit` of them.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<ChangesPage> {
        let txn = self.begin_read()?;
        let floor = floor_in(&txn)?;
        let last_seq = head_in(&txn)?;
        if since < floor {
            return Ok(ChangesPage::Gone { floor, last_seq });
        }
        if since > last_seq {
            return Err(Error::invalid(format!(
                "cursor {since} is ahead of this replica's feed (its latest is {last_seq}): \
                 was it read from another replica?"
            )));
        }
        let mut entries = Vec::new();
        if since < last_seq {
            for row in txn
                .open_table(CHANGES)?
                .range(since.saturating_add(1)..)?
                .take(limit)
            {
                let (k, v) = row?;
                let seq = k.value();
                let row: ChangeRow = postcard::from_bytes(v.value())?;
                let plain = self
                    .keys
                    .registry
                    .open(&change_aad(seq), &row.sealed)
                    .map_err(|_| Error::integrity("an entry of the change feed was altered"))?;
                entries.push(ChangeEntry {
                    seq,
                    change: postcard::from_bytes(&plain)?,
                });
            }
        }
        let last_seq = entries.last().map_or(since, |e| e.seq);
        Ok(ChangesPage::Entries { entries, last_seq })
    }

    /// The feed's latest cursor: following from it gives what changes next.
    pub fn changes_head(&self) -> Result<u64> {
        head_in(&*self.begin_read()?)
    }

    /// The latest sequence this process committed, changing as it commits more: what a long
    /// poll waits on.
    pub fn change_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.change_seq.subscribe()
    }

    /// Site: records that the sync state moved (the daemon calls it when the link comes up or
    /// goes down, or a round moved changes; an idle round writes nothing).
    pub fn note_sync_change(&self) -> Result<()> {
        let txn = self.begin_raw_write()?;
        self.note_change(Changed::Sync)?;
        txn.commit()
    }
}

/// The cursor below which the feed's entries are gone, in `txn`.
fn floor_in(txn: &crate::kv::ReadTransaction) -> Result<u64> {
    Ok(read_u64(
        txn.open_table(META)?
            .get(meta_key::CHANGES_FLOOR)?
            .as_ref()
            .map(|v| v.value()),
    ))
}

/// The feed's latest cursor in `txn`: its last entry's, or its floor when it holds none (a
/// replica made before the feed has no table until its first write). A full rotation makes it
/// the new floor: every row is dropped (they name dossiers by their old blind index), so every
/// older cursor is refused.
pub(super) fn head_in(txn: &crate::kv::ReadTransaction) -> Result<u64> {
    let last = match txn.open_table(CHANGES) {
        Ok(t) => t.last()?.map_or(0, |(k, _)| k.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(floor_in(txn)?.max(last))
}
