//! What a site holds follows its rights: when a reason a site held a dossier's documents ends
//! (its professional's grant revoked or blocked, the professional unbound from the site, a pin
//! or an emergency fetch ended) while the dossier stays in its scope for another reason (the
//! site wrote in it), the host withdraws the documents it may no longer hold, and the site
//! deletes them.
//!
//! Invariants:
//! - Only the host withdraws: a withdrawal is an item of the host's log for that site
//!   (`LogItem::Withdraw`, logged by `set_scope` whenever a reason bit other than "wrote" is
//!   cleared and the dossier stays), pulled as any other (`PullItem::Withdraw`), so the site's
//!   cursor acknowledges it. What is withdrawn is decided when the site pulls, with the same
//!   decision that chooses what a pull sends (`site_view`): every document of the dossier the
//!   site would not receive now. A right back by then withdraws nothing.
//! - A dossier that left the scope and came back before the site pulled (its rights ended,
//!   then the site wrote in it) is not purged at the site (`apply_pull` keeps a dossier whose
//!   `Leave` and re-entry arrive in one batch): the re-entry then carries a withdrawal too
//!   (`pull_in`), so the site keeps only what it may hold now.
//! - A site never deletes a document it wrote, nor one whose change still waits in its outbox
//!   (that change is pushed first; the host, finding the site no longer holds the document,
//!   logs the withdrawal again: `withdraw_after_push`), nor one of another dossier than the
//!   item names. It keeps its whole trace.
//! - Deletion goes through `forget_document`, the purge's own, plus the rows a purge drops by
//!   dossier (the document's unique id) or keeps (a quarantined copy); the withdrawal, its
//!   trace entry (one per dossier: ids and counts only) and the cursor commit together.
//! - A rogue site keeps what it already received: a withdrawal is an instruction to an honest
//!   site, not a way to take data back.

use std::collections::HashSet;

use crate::kv::{ReadTransaction, ReadableTable, WriteTransaction};

use super::site_view::SiteView;
use super::tables::*;
use super::{Generation, Replica, Writer};
use crate::error::Result;
use crate::ids::{DocId, Ins, SiteId};

impl Replica {
    /// Host: the documents of dossier `bi` that the site of `view` holds no right to now (in
    /// the snapshot `txn`): none when it receives the whole dossier, otherwise every document
    /// it did not write.
    pub(super) fn withdrawn_from(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        view: &mut SiteView,
        bi: &[u8; 32],
    ) -> Result<Vec<DocId>> {
        if self.site_receives_whole(txn, view, bi)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for id in self.dossier_doc_ids(txn, bi)? {
            let (_, _, meta) = self.load_doc(txn, generation, &id)?;
            if !self.site_sees_document(txn, view, bi, &meta)? {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Host: `origin` pushed a change of a document of `bi` written elsewhere while no reason
    /// but its own writing keeps the dossier in its scope: it still holds what it may no longer
    /// hold (a withdrawal it skipped while that change waited in its outbox), so the
    /// withdrawal is logged again, in `txn`.
    pub(super) fn withdraw_after_push(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        bi: &[u8; 32],
        author_site: SiteId,
    ) -> Result<()> {
        if author_site == origin {
            return Ok(());
        }
        let bits = txn
            .open_table(SCOPE)?
            .get(site_key(origin.0, bi).as_slice())?
            .map_or(0, |v| v.value());
        if bits == scope_bit::WROTE {
            self.log_withdrawal(txn, origin.0, bi)?;
        }
        Ok(())
    }

    /// Site: deletes the documents `docs` of the dossier `ins` the host withdrew, in `txn`,
    /// except those this site wrote and those with a change still in the outbox; traces it
    /// (one entry). Answers how many were deleted.
    pub(super) fn withdraw_documents(
        &self,
        txn: &Writer<'_>,
        ins: &Ins,
        docs: &[DocId],
    ) -> Result<usize> {
        let bi = self.blind(ins);
        let Some(key) = self.dossier_key(&txn.open_table(DOSSIER_KEYS)?, &bi)? else {
            // Not held here (purged, or never received): nothing to delete.
            return Ok(0);
        };
        let waiting = Self::documents_in_outbox(txn)?;
        let (mut deleted, mut kept) = (0, 0);
        for id in docs {
            let stored_id = self.stored_id(id);
            let stored: StoredDoc = match txn.open_table(DOCS)?.get(&stored_id)? {
                Some(row) => postcard::from_bytes(row.value())?,
                None => continue,
            };
            if stored.dossier != bi {
                continue;
            }
            let meta = self.open_meta(&key, &id.0, &stored)?;
            if meta.facts.author_site == self.config.site_id || waiting.contains(&stored_id) {
                kept += 1;
                continue;
            }
            if !super::is_own_unique_id(id, &meta.facts.unique_id) {
                let unique = self.unique_index(&bi, &meta.facts.unique_id);
                let mut uniques = txn.open_table(UNIQUE_IDS)?;
                if uniques
                    .get(unique.as_slice())?
                    .is_some_and(|v| v.value() == &stored_id)
                {
                    uniques.remove(unique.as_slice())?;
                }
            }
            self.forget_document(txn, ins, id)?;
            self.digested(txn, QUARANTINE)?.remove(&stored_id)?;
            deleted += 1;
        }
        txn.trace(vec![self.admin_entry(
            "documents-withdrawn",
            Some(ins),
            Some(&format!(
                "the host withdrew {} document(s) this site may no longer hold: {deleted} deleted, {kept} kept (written here, or a change waiting to be pushed)",
                docs.len()
            )),
        )]);
        Ok(deleted)
    }

    /// The documents with an entry in the outbox, by stored id.
    fn documents_in_outbox(txn: &WriteTransaction) -> Result<HashSet<[u8; 16]>> {
        Ok(super::withheld::queued_documents(&txn.open_table(OUTBOX)?)?
            .into_iter()
            .map(|(_, id)| id)
            .collect())
    }
}
