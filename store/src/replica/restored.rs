//! A site restored from a backup (`backup::restore`): the sanctioned rollback, and how its
//! first round with the host brings it back to where the host knows it.
//!
//! A restored site is behind what the host holds of it: trace entries, outbox sequence numbers
//! and documents it pushed after the backup are at the host, not in the restored folder. Used
//! as they are, its next trace entry would take a position of its chain the host already holds
//! (refused as a rewritten history), its next change a sequence number the host already applied
//! (skipped as a replay: lost), and an edit would start from an older version than its own
//! latest.
//!
//! So `mark_restored` — the one place where a replica's state is accepted as rolled back —
//! records the restore in `meta` (authenticated by `STATE_MAC`: only the key holder sets it)
//! and stops the replica preparing trace entries of its own: since every change and every read
//! is traced, it queues no change and serves no read. Its first round then (syncd's session, PROTOCOL.md "Restored sites"): the host's
//! `Welcome` says how far it holds the site's changes and trace; the outbox acknowledges up to
//! there, so its next sequence follows; the site tells the host it was restored, and the host
//! records it, enters every dossier of the site's scope in its log again (its documents written
//! after the backup come back with the pull) and sends the trace entries it holds after the
//! site's head; `restore_own_traces` stores them, each checked as the next link of the chain
//! under the site's own chain key (the host cannot slip in an entry the site did not chain);
//! `finish_restore` checks the chain now ends where the host said, jumps the outbox mark past
//! the host's, traces `restored-from-backup`, clears the mark and thaws the chain, in one
//! transaction.
//!
//! Invariants: while the mark is there no trace entry of this replica is prepared
//! (`refuse_while_restoring`, in `prepare_trace`, which every entry goes through); the mark is
//! set at restore, read at open, and cleared by `finish_restore` only; entries stored from the
//! host extend the local chain link by link, never replace one.

use crate::kv::ReadableTable;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use std::sync::atomic::Ordering;

use super::tables::*;
use super::{Replica, Role, TraceRecord, TracesWritten, lock_err, stored_trace_row, trace_aad};
use crate::error::{Error, Result};
use crate::time::Millis;

/// The `meta` row that marks a replica restored from a backup (postcard `RestoreMark`).
const RESTORED: &str = "restored";

/// A restore not caught up yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreMark {
    /// When the backup was taken.
    pub taken_at: Millis,
    /// When it was restored.
    pub restored_at: Millis,
}

/// True when `meta` holds a restore mark.
pub(super) fn is_marked(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<bool> {
    Ok(meta.get(RESTORED)?.is_some())
}

impl Replica {
    /// Refuses to prepare a trace entry of this replica while it is restoring (module
    /// documentation): every change and every read stops here.
    pub(super) fn refuse_while_restoring(&self) -> Result<()> {
        if self.restoring.load(Ordering::SeqCst) {
            return Err(Error::invalid(
                "this replica was restored from a backup and has not caught up with the host yet: \
                 start carnet-syncd (or run `carnet sync now`) so that its first round brings back \
                 what the host holds of it; until then it records nothing and serves no read",
            ));
        }
        Ok(())
    }

    /// Accepts this replica's state as restored from a backup taken at `taken_at`, and, on a
    /// site, freezes its chain until its first round caught up (module documentation). The one
    /// place a rollback is sanctioned: a detector of rolled-back state accepts the restored
    /// state here. On the host nothing is marked: no one above it holds what it lost.
    pub(super) fn mark_restored(&self, taken_at: Millis) -> Result<()> {
        if self.config.role != Role::Site {
            return Ok(());
        }
        let mark = RestoreMark {
            taken_at,
            restored_at: self.now(),
        };
        let txn = self.begin_raw_write()?;
        txn.open_table(META)?
            .insert(RESTORED, postcard::to_stdvec(&mark)?.as_slice())?;
        txn.commit()?;
        self.restoring.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The restore this replica has not caught up from yet, if any.
    pub fn restore_mark(&self) -> Result<Option<RestoreMark>> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let row = meta.get(RESTORED)?;
        Ok(match row {
            Some(v) => Some(postcard::from_bytes(v.value())?),
            None => None,
        })
    }

    /// Restored site: stores the host's copy of this site's own trace entries that follow its
    /// head, each checked as the next link of its chain under its own chain key. Answers the
    /// new head. Nothing is stored unless every entry checks.
    pub(crate) fn restore_own_traces(&self, records: &[TraceRecord]) -> Result<u64> {
        let origin = self.config.site_id;
        let mut chain = self.chain.lock().map_err(lock_err)?;
        if !self.restoring.load(Ordering::SeqCst) {
            return Err(Error::invalid(
                "trace entries from the host are taken only by a restored replica",
            ));
        }
        let txn = self.begin_raw_write()?;
        let written = self.write_traces(&txn, &chain, &[])?;
        let (mut seq, mut prev) = (written.seq, written.prev);
        {
            let mut table = txn.open_table(AUDIT)?;
            for r in records {
                let bytes = Zeroizing::new(postcard::to_stdvec(&r.entry)?);
                if r.seq != seq + 1
                    || r.entry.origin != origin
                    || crate::audit::chain_hash(self.keys.chain.expose(), &bytes, &prev) != r.hash
                {
                    return Err(Error::integrity(format!(
                        "the host sent entry {} of this site's trace, which does not follow entry \
                         {seq} of the chain here: nothing stored",
                        r.seq
                    )));
                }
                let row = super::journal::JournalRecord {
                    seq: r.seq,
                    hash: r.hash,
                    sealed: self.keys.audit.seal(&trace_aad(origin.0), &bytes)?,
                };
                table.put((origin.0, r.seq), stored_trace_row(&row)?.as_slice())?;
                (seq, prev) = (r.seq, r.hash);
            }
        }
        self.set_own_trace_head(&txn, (seq, prev))?;
        txn.commit()?;
        TracesWritten {
            seq,
            prev,
            new_epoch: written.new_epoch,
        }
        .apply(&mut chain, &self.durability)?;
        Ok(seq)
    }

    /// Restored site, once it holds every trace entry the host holds of it: checks its chain
    /// ends at the host's `(seq, hash)` (or holds it, when the host holds less), jumps the
    /// outbox mark to at least `host_changes` (the host's last applied change of this site:
    /// the next change takes the sequence after it, and queued entries up to it are done
    /// with), traces `restored-from-backup`, clears the mark and thaws the chain, in one
    /// transaction. Then it syncs on as any site.
    pub(crate) fn finish_restore(
        &self,
        host_changes: u64,
        host_traces: (u64, [u8; 32]),
    ) -> Result<()> {
        let Some(mark) = self.restore_mark()? else {
            return Ok(());
        };
        if host_traces.0 > 0 && self.own_trace_hash(host_traces.0)? != Some(host_traces.1) {
            return Err(Error::integrity(format!(
                "after the restore, this site's trace entry {} differs from the host's: ask the host operator before syncing",
                host_traces.0
            )));
        }
        let txn = self.begin_write()?;
        // The restore's own entry is the first one prepared again.
        self.restoring.store(false, Ordering::SeqCst);
        let done = (|| {
            txn.open_table(OUTBOX)?
                .retain_in(..=host_changes, |_, _| false)?;
            Self::bump_meta_u64(&txn, meta_key::OUTBOX_ACKED, Some(host_changes))?;
            txn.open_table(META)?.remove(RESTORED)?;
            txn.trace(vec![self.admin_entry(
                "restored-from-backup",
                None,
                Some(&format!(
                    "restored on {} from a backup taken on {}; the host held this site's changes up to {host_changes} and its trace up to {}",
                    crate::time::format_rfc3339(mark.restored_at),
                    crate::time::format_rfc3339(mark.taken_at),
                    host_traces.0
                )),
            )]);
            Ok::<(), Error>(())
        })();
        let committed = done.and_then(|()| txn.commit());
        if committed.is_err() {
            self.restoring.store(true, Ordering::SeqCst);
            return committed;
        }
        // Purges a closure left pending are traced: they resume now.
        self.resume_purges()
    }
}
