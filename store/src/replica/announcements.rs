//! The announcement timer of DOMAIN §3, owned by the host: a document hidden from the patient
//! (`INVISIBLE_PATIENT`) waits for an announcement consultation; two weeks after it was filed
//! the patient is told (a trace entry the notification service reads), and one month after it
//! becomes visible by itself.
//!
//! Invariants: only the host releases (a site keeps a document hidden until the host says
//! otherwise); each step happens once per document (`ANNOUNCEMENTS` remembers the telling; a
//! released document no longer carries the flag); a release is an ordinary metadata change,
//! traced and fanned out to the sites like any other.

use redb::ReadableTable;

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
    /// Host: one pass of the announcement timer over every hidden document. Runs at the
    /// daemon's start and every hour; a site answers an empty pass.
    pub fn run_announcement_timer(&self) -> Result<AnnouncementPass> {
        let mut pass = AnnouncementPass::default();
        if self.config.role != Role::Host {
            return Ok(pass);
        }
        let now = self.now();
        let due: Vec<(DocId, Millis)> = {
            let (txn, generation) = self.snapshot()?;
            let mut ids: Vec<DocId> = txn
                .open_table(DOCS)?
                .iter()?
                .map(|row| row.map(|(k, _)| self.doc_id(k.value())))
                .collect::<std::result::Result<_, _>>()?;
            // Oldest first (`DOCS` is keyed by stored ids, in no useful order).
            ids.sort_unstable();
            let mut due = Vec::new();
            for id in ids {
                let Ok((_, _, meta)) = self.load_doc(&txn, generation, &id) else {
                    continue;
                };
                if meta.state().flags.invisible_patient && now - meta.facts.created_at >= TELL_AFTER
                {
                    due.push((id, meta.facts.created_at));
                }
            }
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
}
