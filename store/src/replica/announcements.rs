//! The announcement timer of DOMAIN §3, owned by the host: a document hidden from the patient
//! (`INVISIBLE_PATIENT`) waits for an announcement consultation; two weeks after it was filed
//! the patient is told (a trace entry the notification service reads), and one month after it
//! becomes visible by itself.
//!
//! Invariants: only the host releases (a site keeps a document hidden until the host says
//! otherwise); each step happens once per document (`ANNOUNCEMENTS` remembers the telling; a
//! released document no longer carries the flag); a release is an ordinary metadata change,
//! traced and fanned out to the sites like any other; a pass costs the documents due, not the
//! store (`HIDDEN_DOCS`, kept by `put_meta`, is its queue; the sealed metadata decides).

use crate::kv::{ReadableTable, WriteTransaction};

use super::tables::*;
use super::{Replica, Role};
use crate::error::Result;
use crate::ids::DocId;
use crate::time::Millis;

/// After this, the patient is told a document is waiting for its announcement.
pub const TELL_AFTER: Millis = 14 * 24 * 3_600_000;
/// After this, the document becomes visible to the patient by itself.
pub const RELEASE_AFTER: Millis = 30 * 24 * 3_600_000;

/// What one pass of the timer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnouncementPass {
    /// Documents whose patient was told, this pass.
    pub told: usize,
    /// Documents made visible to the patient, this pass.
    pub released: usize,
}

impl Replica {
    /// Host: one pass of the announcement timer over the documents hidden from their patient
    /// (`HIDDEN_DOCS`): it opens only those due to be told or released. Runs at the daemon's
    /// start and every hour; a site answers an empty pass.
    pub(crate) fn run_announcement_timer(&self) -> Result<AnnouncementPass> {
        let mut pass = AnnouncementPass::default();
        if self.config.role != Role::Host {
            return Ok(pass);
        }
        let now = self.now();
        let due: Vec<(DocId, Millis)> = {
            let (txn, generation) = self.snapshot()?;
            let told = txn.open_table(ANNOUNCEMENTS)?;
            let mut due = Vec::new();
            // The queue names the documents to open; their sealed metadata decides.
            for row in txn.open_table(HIDDEN_DOCS)?.iter()? {
                let (stored, filed) = row?;
                let age = now - filed.value();
                let nothing_to_do = age < TELL_AFTER
                    || (age < RELEASE_AFTER && told.get(stored.value())?.is_some());
                if nothing_to_do {
                    continue;
                }
                let id = self.doc_id(stored.value());
                let Ok((_, _, meta)) = self.load_doc(&txn, generation, &id) else {
                    continue;
                };
                if meta.state().flags.invisible_patient && now - meta.facts.created_at >= TELL_AFTER
                {
                    due.push((id, meta.facts.created_at));
                }
            }
            // Oldest first (the queue is keyed by stored ids, in no useful order).
            due.sort_unstable();
            due
        };
        for (id, filed) in due {
            if now - filed >= RELEASE_AFTER {
                if self.release_announced(&id)? {
                    pass.released += 1;
                }
            } else if self.tell_patient(&id)? {
                pass.told += 1;
            }
        }
        Ok(pass)
    }

    /// Traces, once, that the patient is told of the hidden document `id`.
    fn tell_patient(&self, id: &DocId) -> Result<bool> {
        let txn = self.begin_write()?;
        if txn
            .open_table(ANNOUNCEMENTS)?
            .get(&self.stored_id(id))?
            .is_some()
        {
            return Ok(false);
        }
        let (snap, generation) = self.snapshot()?;
        let (_, _, meta) = self.load_doc(&snap, generation, id)?;
        txn.open_table(ANNOUNCEMENTS)?
            .insert(&self.stored_id(id), self.now())?;
        let mut entry = self.admin_entry("announcement-due", Some(&meta.facts.ins), None);
        entry.doc = Some(*id);
        entry.outcome_reason =
            "a document waits for its announcement consultation: the patient is told".into();
        txn.trace(vec![entry]);
        txn.commit()?;
        Ok(true)
    }

    /// Clears `INVISIBLE_PATIENT` on `id`, as the host, traced and fanned out.
    fn release_announced(&self, id: &DocId) -> Result<bool> {
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        let (stored, key, mut meta) = self.load_doc(&snap, generation, id)?;
        if !meta.state().flags.invisible_patient {
            return Ok(false);
        }
        let before = meta.state().flags;
        meta.update(self.config.site_id, |s| s.flags.invisible_patient = false);
        // The host's own change: stored and fanned out (no outbox, no act to decide).
        self.put_meta(
            &mut self.digested(&txn, DOCS)?,
            &key,
            &stored.dossier,
            stored.rev + 1,
            &meta,
        )?;
        self.host_document_changed(&txn, &stored.dossier, id, None)?;
        // A site's version that has not seen the release may carry the flag back.
        self.record_host_clears(&txn, before, &meta)?;
        txn.open_table(ANNOUNCEMENTS)?.remove(&self.stored_id(id))?;
        self.notify_announced(&txn, &meta.facts.ins, *id)?;
        let mut entry = self.admin_entry("announcement-released", Some(&meta.facts.ins), None);
        entry.doc = Some(*id);
        entry.outcome_reason =
            "one month after filing, the document becomes visible to the patient".into();
        txn.trace(vec![entry]);
        txn.commit()?;
        Ok(true)
    }

    /// At open, in `txn`: a host made before `HIDDEN_DOCS` existed gets it, filled by one pass
    /// over its documents (a site keeps it empty). Written directly: the caller sums the table.
    pub(super) fn fill_hidden_docs(&self, txn: &WriteTransaction) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        let (snap, generation) = self.snapshot()?;
        let mut hidden = txn.open_table(HIDDEN_DOCS)?;
        for row in snap.open_table(DOCS)?.iter()? {
            let id = self.doc_id(row?.0.value());
            // A document of a purged dossier has nothing to announce.
            let Ok((_, _, meta)) = self.load_doc(&snap, generation, &id) else {
                continue;
            };
            if meta.state().flags.invisible_patient {
                hidden.insert(&self.stored_id(&id), meta.facts.created_at)?;
            }
        }
        Ok(())
    }
}
