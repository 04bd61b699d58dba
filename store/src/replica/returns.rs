//! What the host returns to a site, and why (docs/DOMAIN.md §5): a document change its decision
//! refused, or a dossier the site opened that it did not adopt. The host remembers each return
//! with its reason (`RETURNED`) until the site says it holds it in quarantine, and repeats it at
//! each `Welcome` meanwhile; the site keeps what was returned in its quarantine under that
//! reason, and a refused dossier stops being one: everything written in it goes to the
//! quarantine and its local head, key and rows go.
//!
//! Invariants:
//! - A return is recorded in the transaction that refuses the change, with the refusal traced.
//! - Reasons are words the host writes (rules, ids of professionals and sites), never a name,
//!   an INS or a title: they travel to the site and are shown there. A dossier's INS is kept
//!   sealed under the registry key, bound to its row.
//! - At the site nothing returned is lost: a document is kept in quarantine before the outbox
//!   lets go of it, and quarantining is idempotent (a return repeated changes nothing).
//! - A site drops only a dossier that is still its own (a local head and no signed head): a
//!   return can never take away a dossier the host signed.

use crate::kv::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::push_check::Refusal;
use super::tables::*;
use super::{Applied, Replica, Role, Writer};
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, SiteId};
use crate::merge::DocumentMeta;

/// Longest reason a site takes from the host (longer ones are cut).
pub const REASON_MAX: usize = 400;

/// Something the host returned to a site, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Returned {
    /// A document change the host refused: the site keeps the document in quarantine.
    Document {
        /// The document.
        id: DocId,
        /// Why, in the host's words.
        reason: String,
    },
    /// A dossier the site opened that the host refused: what the site wrote in it goes to the
    /// quarantine and the dossier is dropped there.
    Dossier {
        /// The dossier's INS.
        ins: Ins,
        /// Why, in the host's words.
        reason: String,
    },
}

/// A returned dossier's row: its INS and why.
#[derive(Serialize, Deserialize)]
struct DossierRow {
    ins: String,
    reason: String,
}

fn dossier_row_aad(key: &[u8]) -> Vec<u8> {
    aad(&[b"returned-dossier", key])
}

/// The length of a document row's key (site ‖ stored id); a dossier's is site ‖ blind index.
const DOCUMENT_KEY_LEN: usize = 4 + 16;

impl Replica {
    /// Host: refuses a document change `origin` pushed, in `txn`: traced with `refusal`, and
    /// remembered with its reason until the site holds it in quarantine.
    pub(super) fn return_document(
        &self,
        txn: &Writer<'_>,
        origin: SiteId,
        meta: &DocumentMeta,
        refusal: Refusal,
    ) -> Result<Applied> {
        let reason = refusal.reason.clone();
        txn.trace(vec![self.returned_entry(txn, origin, meta, refusal)?]);
        txn.open_table(RETURNED)?.insert(
            site_key(origin.0, &self.stored_id(&meta.facts.id)).as_slice(),
            reason.as_bytes(),
        )?;
        Ok(Applied::Returned)
    }

    /// Host: refuses a dossier `origin` opened, in `txn` (the caller traces the refusal).
    pub(super) fn return_dossier(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        ins: &Ins,
        reason: &str,
    ) -> Result<Applied> {
        let key = site_key(origin.0, &self.blind(ins));
        let row = DossierRow {
            ins: ins.matricule().to_string(),
            reason: reason.to_string(),
        };
        let sealed = self
            .keys
            .registry
            .seal(&dossier_row_aad(&key), &postcard::to_stdvec(&row)?)?;
        txn.open_table(RETURNED)?
            .insert(key.as_slice(), sealed.as_slice())?;
        Ok(Applied::Returned)
    }

    /// Host: `origin`'s dossier `bi` was taken (adopted or merged): a refusal of an earlier
    /// proposal of it from there, still told until the site acknowledges it, is not told
    /// again (the site would take it for a refusal of the dossier it opened since).
    pub(super) fn forget_dossier_return(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        bi: &[u8; 32],
    ) -> Result<()> {
        txn.open_table(RETURNED)?
            .remove(site_key(origin.0, bi).as_slice())?;
        Ok(())
    }

    /// Host: the return recorded in `txn` for `origin`'s change `change`, if any.
    pub(super) fn returned_for(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        change: &super::Change,
    ) -> Result<Option<Returned>> {
        let key = match change {
            super::Change::DossierProposal(p) => site_key(origin.0, &self.blind(&p.head.ins)),
            _ => match change.document() {
                Some(meta) => site_key(origin.0, &self.stored_id(&meta.facts.id)),
                None => return Ok(None),
            },
        };
        let table = txn.open_table(RETURNED)?;
        let row = table.get(key.as_slice())?;
        row.map(|v| self.decode_returned(&key, v.value()))
            .transpose()
    }

    fn decode_returned(&self, key: &[u8], value: &[u8]) -> Result<Returned> {
        if key.len() == DOCUMENT_KEY_LEN {
            let stored: [u8; 16] = key[4..]
                .try_into()
                .map_err(|_| Error::integrity("returned key"))?;
            return Ok(Returned::Document {
                id: self.doc_id(&stored),
                reason: String::from_utf8_lossy(value).into_owned(),
            });
        }
        let plain = self
            .keys
            .registry
            .open(&dossier_row_aad(key), value)
            .map_err(|_| Error::integrity("a returned dossier's row was altered"))?;
        let row: DossierRow = postcard::from_bytes(&plain)?;
        Ok(Returned::Dossier {
            ins: Ins::parse(&row.ins)?,
            reason: row.reason,
        })
    }

    /// Host: everything returned to `site` so far (repeated at each session's start):
    /// dossiers first, then documents in id order.
    pub(crate) fn returned_to(&self, site: SiteId) -> Result<Vec<Returned>> {
        let txn = self.begin_read()?;
        let prefix = site.0.to_be_bytes();
        let mut out = Vec::new();
        for row in txn.open_table(RETURNED)?.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(self.decode_returned(k.value(), v.value())?);
        }
        out.sort_by_key(|r| match r {
            Returned::Dossier { .. } => None,
            Returned::Document { id, .. } => Some(*id),
        });
        Ok(out)
    }

    /// Host: forgets what was returned to `site` once the site says it holds it in quarantine:
    /// it acknowledged its outbox up to `outbox_acked`, at or past every change the host
    /// applied from it (checked in the same transaction, so a push applied meanwhile keeps its
    /// returns). Writes only when there is something to forget.
    pub(crate) fn forget_returned(&self, site: SiteId, outbox_acked: u64) -> Result<()> {
        if self.returned_to(site)?.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        let applied = txn
            .open_table(APPLIED)?
            .get(site.0)?
            .map_or(0, |v| v.value());
        if outbox_acked < applied {
            return Ok(());
        }
        {
            let prefix = site.0.to_be_bytes();
            let mut table = txn.open_table(RETURNED)?;
            let keys: Vec<Vec<u8>> = table
                .range(prefix.as_slice()..)?
                .map(|row| row.map(|(k, _)| k.value().to_vec()))
                .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
                .collect::<std::result::Result<_, _>>()?;
            for k in keys {
                table.remove(k.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Site: keeps what the host returned when it had applied this site's changes up to
    /// `applied`. A refused dossier that is still this site's own, its proposal decided, is
    /// dropped first, everything written in it going to the quarantine under the host's
    /// reason; then each returned document not kept yet is. Idempotent.
    pub(crate) fn quarantine_returned(&self, returned: &[Returned], applied: u64) -> Result<()> {
        for r in returned {
            if let Returned::Dossier { ins, reason } = r {
                self.drop_refused_dossier(ins, &said_by_host(reason), applied)?;
            }
        }
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        let refilings = self.refilings(&txn)?;
        for r in returned {
            let Returned::Document { id, reason } = r else {
                continue;
            };
            let stored = self.stored_id(id);
            let kept = txn.open_table(QUARANTINE)?.get(&stored)?.is_some();
            let held = snap.open_table(DOCS)?.get(&stored)?.is_some();
            if !kept && held {
                let reason = said_by_host(reason);
                self.quarantine_in(&txn, &snap, generation, &refilings, id, &reason)?;
            }
        }
        txn.commit()
    }

    /// Site: the host refused the dossier `ins` opened here. When it is still this site's own
    /// (a local head, no signed head) and its proposal was among the changes the host had
    /// applied (`applied`; a dossier opened again since is decided on its own proposal), every
    /// document of it not in quarantine yet goes there with `reason` (its outbox entries
    /// become `Quarantined`), and the dossier goes: key, rows, local head, held changes and
    /// consent given in person.
    fn drop_refused_dossier(&self, ins: &Ins, reason: &str, applied: u64) -> Result<()> {
        if self.config.role != Role::Site {
            return Ok(());
        }
        let bi = self.blind(ins);
        {
            let snap = self.begin_read()?;
            let own = snap.open_table(LOCAL_DOSSIERS)?.get(&bi)?.is_some();
            let signed = snap
                .open_table(AUTHORITY)?
                .get(subject_key(tag::DOSSIER, Some(&bi), None).as_slice())?
                .is_some();
            if !own || signed {
                return Ok(());
            }
        }
        let txn = self.begin_write()?;
        if self.proposal_undecided(&txn, &bi, applied)? {
            return Ok(());
        }
        let (snap, generation) = self.snapshot()?;
        self.quarantine_pending(&txn, &bi, reason)?;
        let refilings = self.refilings(&txn)?;
        for id in self.dossier_doc_ids(&snap, &bi)? {
            let stored = self.stored_id(&id);
            if txn.open_table(QUARANTINE)?.get(&stored)?.is_none() {
                self.quarantine_in(&txn, &snap, generation, &refilings, &id, reason)?;
            }
        }
        self.digested(&txn, DOSSIER_KEYS)?.remove(&bi)?;
        for id in self.dossier_doc_ids(&snap, &bi)? {
            self.forget_document(&txn, ins, &id)?;
        }
        self.forget_local_dossier(&txn, &bi)?;
        Self::registry_changed(&txn)?;
        txn.trace(vec![self.admin_entry(
            "dossier-refused-by-host",
            Some(ins),
            Some(reason),
        )]);
        txn.commit()
    }
}

/// A reason the host gave, as the site keeps it (bounded, whatever the host sent).
fn said_by_host(reason: &str) -> String {
    let reason: String = reason.chars().take(REASON_MAX).collect();
    format!("returned by the host: {reason}")
}
