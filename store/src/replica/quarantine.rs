//! The quarantine: documents this site wrote that the host will not take (their dossier was
//! closed meanwhile, or is not held by the host), kept apart and never dropped (DOMAIN §5),
//! with a way out: the author reads one, or sends it again into an open dossier (*refiles*
//! it), where the decision table decides at the site and the host decides again on push.
//!
//! A quarantined document is named by its document id (the *quarantine id*): a row is keyed
//! by it and never removed. A document kept again (a return kept it, then its dossier is
//! purged with a later change of it still to send) takes that change, and keeps what became of
//! it (its refiling). Each row holds two seals under the quarantine key (derived from
//! the registry key, so it survives the dossier's purge, which destroys the dossier key): the
//! record (metadata, reason, time, what became of it) and the body, apart. Listing and showing
//! open only the records, never a body: the record is small, and a list made to decide what to
//! do next reveals no content; the body is opened for its author alone (`quarantined_body`).
//!
//! Invariants:
//! - a document is copied into the quarantine before anything that could destroy it: a purge
//!   first quarantines every document of the dossier still waiting in the outbox or held back
//!   for a provisional identity, and drops those entries only then, in the same transaction;
//! - only the author (a professional registered here, by the RPPS the document names) or the
//!   host operator (`Actor::System` at the host) reads or refiles a quarantined document; every
//!   attempt, allowed or denied, is traced. The entry names the document's original dossier,
//!   even once it is purged: traces are sealed under the replica's trace key, not the dossier
//!   key, so the entry outlives the dossier like the quarantine does, reaches the host with the
//!   site's trace, and tells the holder of that dossier who read their document (DOMAIN §6);
//! - a refiling is a new document (new id) of the target dossier written through
//!   `put_documents`, and the record notes it in the same transaction: a document is refiled
//!   at most once. What became of it is read, not stored: waiting while its change is in the
//!   outbox, taken once the host acknowledged it, returned when the host refused it (the
//!   refiled copy is then in quarantine itself, under its own id, noting what it refiles).

use crate::kv::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::tables::*;
use super::{Generation, NewDocument, Replica, Role};
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::crypto::{Key, aad};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins};
use crate::merge::DocumentMeta;
use crate::model::{AccessMode, Actor, Author};
use crate::policy::{Action, Who};
use crate::time::Millis;

/// What the quarantine keeps of a document besides its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Its metadata (its original dossier, author, class, type…).
    pub meta: DocumentMeta,
    /// Why it is here.
    pub reason: String,
    /// Since when.
    pub at: Millis,
    /// The quarantined document this one refiled, when the host refused the refiling.
    pub refile_of: Option<DocId>,
    /// How it was sent again, if it was.
    pub refiled: Option<Refiling>,
}

/// A quarantined document sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refiling {
    /// The new document.
    pub doc: DocId,
    /// The dossier it was written to.
    pub ins: Ins,
    /// When.
    pub at: Millis,
    /// By whom.
    pub by: TraceActor,
}

/// What became of a quarantined document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineState {
    /// Kept here, never refiled.
    Held,
    /// Refiled; the host has not taken the new document yet.
    Waiting,
    /// Refiled, and the host took the new document.
    Taken,
    /// Refiled, and the host refused the new document: it is in quarantine in turn.
    Returned,
}

impl QuarantineState {
    /// The name shown on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineState::Held => "held",
            QuarantineState::Waiting => "waiting",
            QuarantineState::Taken => "taken",
            QuarantineState::Returned => "returned",
        }
    }
}

/// A quarantined document as listed: its quarantine id, its record, what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// The quarantine id: the document's id.
    pub id: DocId,
    /// Its record.
    pub record: Quarantined,
    /// What became of it.
    pub state: QuarantineState,
}

/// The quarantined documents their refiled copies came from: the copy's id, the quarantine id
/// it refiles (`Quarantined::refile_of` of a refiled copy kept in quarantine itself).
#[derive(Debug)]
pub(super) struct Refilings {
    refiled_from: std::collections::HashMap<DocId, DocId>,
}

/// A stored row: the record and the body, sealed apart.
#[derive(Serialize, Deserialize)]
struct StoredQuarantine {
    #[serde(with = "serde_bytes")]
    record: Vec<u8>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

impl Replica {
    fn quarantine_key(&self) -> Key {
        quarantine_key(&self.keys.registry)
    }

    /// What the quarantine says of refilings, read once for a transaction that keeps several
    /// documents (a purge keeps every pending document of its dossier): reading the whole
    /// quarantine for each document it keeps made a purge quadratic in it.
    pub(super) fn refilings(&self, txn: &WriteTransaction) -> Result<Refilings> {
        let mut refiled_from = std::collections::HashMap::new();
        for row in txn.open_table(QUARANTINE)?.iter()? {
            let (k, v) = row?;
            let (record, _) = self.open_quarantine_row(&self.doc_id(k.value()), v.value())?;
            if let Some(refiling) = record.refiled {
                refiled_from.insert(refiling.doc, record.meta.facts.id);
            }
        }
        Ok(Refilings { refiled_from })
    }

    /// Copies a document into the quarantine inside `txn`, reading it from `snap` (taken under
    /// the same write lock); `refilings` read from `txn` (`Replica::refilings`).
    pub(super) fn quarantine_in(
        &self,
        txn: &WriteTransaction,
        snap: &ReadTransaction,
        generation: Generation,
        refilings: &Refilings,
        id: &DocId,
        reason: &str,
    ) -> Result<()> {
        let (_, key, meta) = self.load_doc(snap, generation, id)?;
        let body = match self.get_body(&self.bodies_read(snap)?, &key, &meta) {
            Ok(body) => body.to_vec(),
            // A disk that fails now may read later: nothing is destroyed meanwhile.
            Err(e @ (Error::Storage(_) | Error::Conflict(_) | Error::Key(_))) => return Err(e),
            // Not received here yet (a document written elsewhere), or unreadable for good:
            // the record is kept without it.
            Err(_) => Vec::new(),
        };
        let stored = self.stored_id(id);
        let mut quarantine = self.digested(txn, QUARANTINE)?;
        // Kept before (a return) and kept again with what the site did since (its dossier
        // purged): what became of it stays, so it is refiled at most once. (A refiling it
        // holds is in `refilings` already.)
        let refiled = match quarantine.get(&stored)? {
            Some(row) => self.open_quarantine_row(id, row.value())?.0.refiled,
            None => None,
        };
        let record = Quarantined {
            meta,
            reason: reason.to_string(),
            at: self.now(),
            refile_of: refilings.refiled_from.get(id).copied(),
            refiled,
        };
        let key = self.quarantine_key();
        let row = StoredQuarantine {
            record: key.seal(&record_aad(id), &postcard::to_stdvec(&record)?)?,
            body: key.seal(&body_aad(id), &body)?,
        };
        quarantine.insert(&stored, postcard::to_stdvec(&row)?.as_slice())?;
        Ok(())
    }

    /// Documents of the dossier `bi` the host has not received go to the quarantine with
    /// `reason` (before a purge destroys them), inside `txn`: those waiting in the outbox, whose
    /// entries become `OutboxItem::Quarantined` (the host still receives every sequence
    /// number), and those held back for a provisional identity (`local_dossiers`). Answers how
    /// many.
    pub(super) fn quarantine_pending(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        reason: &str,
    ) -> Result<usize> {
        let (snap, generation) = self.snapshot()?;
        let mut pending = Vec::new();
        let docs = snap.open_table(DOCS)?;
        for (seq, stored) in super::withheld::queued_documents(&snap.open_table(OUTBOX)?)? {
            let in_dossier = docs
                .get(&stored)?
                .map(|row| postcard::from_bytes::<StoredDoc>(row.value()))
                .transpose()?
                .is_some_and(|stored| &stored.dossier == bi);
            if in_dossier {
                pending.push((seq, self.doc_id(&stored)));
            }
        }
        let mut ids: Vec<DocId> = pending.iter().map(|(_, id)| *id).collect();
        for id in self.held_documents(txn, bi)? {
            let in_dossier = docs
                .get(&self.stored_id(&id))?
                .map(|row| postcard::from_bytes::<StoredDoc>(row.value()))
                .transpose()?
                .is_some_and(|stored| &stored.dossier == bi);
            if in_dossier && !ids.contains(&id) {
                ids.push(id);
            }
        }
        let refilings = self.refilings(txn)?;
        for id in &ids {
            self.quarantine_in(txn, &snap, generation, &refilings, id, reason)?;
        }
        let mut outbox = txn.open_table(OUTBOX)?;
        let placeholder = postcard::to_stdvec(&OutboxItem::Quarantined)?;
        for (seq, _) in &pending {
            outbox.insert(*seq, placeholder.as_slice())?;
        }
        Ok(ids.len())
    }

    /// How many documents are in quarantine, for `carnet sync status` and each `Hello`: the
    /// table's length, nothing opened.
    pub fn quarantine_len(&self) -> Result<u64> {
        Ok(self.begin_read()?.open_table(QUARANTINE)?.len()?)
    }

    /// The quarantined documents, in id order, with what became of each. Opens no body.
    pub fn quarantined(&self) -> Result<Vec<QuarantineEntry>> {
        let (txn, _) = self.snapshot()?;
        let table = txn.open_table(QUARANTINE)?;
        let in_outbox = self.outbox_documents(&txn)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (record, _) = self.open_quarantine_row(&self.doc_id(k.value()), v.value())?;
            out.push(self.entry_of(&table, &in_outbox, record)?);
        }
        out.sort_unstable_by_key(|q| q.id);
        Ok(out)
    }

    /// One quarantined document, with what became of it. Opens no body.
    pub fn quarantined_one(&self, id: &DocId) -> Result<QuarantineEntry> {
        let (txn, _) = self.snapshot()?;
        let table = txn.open_table(QUARANTINE)?;
        let (record, _) = self.quarantine_row(&table, id)?;
        self.entry_of(&table, &self.outbox_documents(&txn)?, record)
    }

    /// The body of a quarantined document, for its author or the host operator; every
    /// attempt is traced (durably, before the body is returned).
    pub(crate) fn quarantined_body(&self, actor: &Actor, id: &DocId) -> Result<Zeroizing<Vec<u8>>> {
        let (txn, generation) = self.snapshot()?;
        let (record, sealed_body) = self.quarantine_row(&txn.open_table(QUARANTINE)?, id)?;
        let (entry, allowed) =
            self.quarantine_decision(&txn, generation, actor, &record, Action::Read)?;
        self.trace_durably(entry)?;
        allowed?;
        self.open_quarantine_body(id, &sealed_body)
    }

    /// Sends a quarantined document again, as `actor` (its author), as a new document of the
    /// dossier `ins`: the decision table decides as for any write, and the quarantine records
    /// the refiling in the same transaction. Answers the new document's id.
    pub(crate) fn refile_quarantined(&self, actor: &Actor, id: &DocId, ins: &Ins) -> Result<DocId> {
        let (txn, generation) = self.snapshot()?;
        let (record, sealed_body) = self.quarantine_row(&txn.open_table(QUARANTINE)?, id)?;
        let (mut entry, allowed) =
            self.quarantine_decision(&txn, generation, actor, &record, Action::Write)?;
        entry.action = TraceAction::Admin("quarantine-refile".into());
        if let Err(denied) = allowed {
            self.trace_durably(entry)?;
            return Err(denied);
        }
        drop(txn);
        let facts = &record.meta.facts;
        let new = NewDocument {
            class: facts.class,
            type_code: facts.type_code.clone(),
            title: facts.title.clone(),
            format: facts.format.clone(),
            body: self.open_quarantine_body(id, &sealed_body)?.to_vec(),
            unique_id: (!super::is_own_unique_id(id, &facts.unique_id))
                .then(|| facts.unique_id.clone()),
            service_start: Some(facts.service_start),
            service_end: facts.service_end,
        };
        let ids = self.put_documents_then(
            actor,
            AccessMode::Normal,
            None,
            vec![(ins.clone(), new)],
            |txn, ids| {
                let new_id = *ids
                    .first()
                    .ok_or_else(|| Error::Storage("no id written".into()))?;
                // Read again under the write lock: a refiling that won a race is kept.
                let mut table = self.digested(txn, QUARANTINE)?;
                let stored = self.stored_id(id);
                let row = table
                    .get(&stored)?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| not_quarantined(id))?;
                let (mut record, _) = self.open_quarantine_row(id, &row)?;
                if let Some(done) = &record.refiled {
                    return Err(Error::invalid(format!(
                        "{id} was already refiled, as {}",
                        done.doc
                    )));
                }
                record.refiled = Some(Refiling {
                    doc: new_id,
                    ins: ins.clone(),
                    at: self.now(),
                    by: entry.actor.clone(),
                });
                let mut stored_row: StoredQuarantine = postcard::from_bytes(&row)?;
                stored_row.record = self
                    .quarantine_key()
                    .seal(&record_aad(id), &postcard::to_stdvec(&record)?)?;
                table.insert(&stored, postcard::to_stdvec(&stored_row)?.as_slice())?;
                entry.outcome_reason = format!("refiled as {new_id}");
                Ok(vec![entry])
            },
        )?;
        ids.first()
            .copied()
            .ok_or_else(|| Error::Storage("no id returned".into()))
    }

    /// The record and sealed body of a quarantined document.
    fn quarantine_row(
        &self,
        table: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        id: &DocId,
    ) -> Result<(Quarantined, Vec<u8>)> {
        let row = table
            .get(&self.stored_id(id))?
            .ok_or_else(|| not_quarantined(id))?;
        self.open_quarantine_row(id, row.value())
    }

    /// Opens a row's record; answers it with the body still sealed.
    fn open_quarantine_row(&self, id: &DocId, row: &[u8]) -> Result<(Quarantined, Vec<u8>)> {
        let altered = || Error::integrity("a quarantined document was altered");
        let stored: StoredQuarantine = postcard::from_bytes(row).map_err(|_| altered())?;
        let plain = self
            .quarantine_key()
            .open(&record_aad(id), &stored.record)
            .map_err(|_| altered())?;
        Ok((postcard::from_bytes(&plain)?, stored.body))
    }

    fn open_quarantine_body(&self, id: &DocId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.quarantine_key()
            .open(&body_aad(id), sealed)
            .map_err(|_| Error::integrity("a quarantined document was altered"))
    }

    /// Who may read or refile `record`: its author, a professional registered here, or the
    /// host operator. Answers the trace entry of the attempt and the decision.
    fn quarantine_decision(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        actor: &Actor,
        record: &Quarantined,
        action: Action,
    ) -> Result<(AuditEntry, Result<()>)> {
        let (who, tactor) = self.who(txn, generation, actor)?;
        let author = match (&who, &record.meta.facts.author) {
            (Who::Professional { rpps, .. }, Author::Professional { rpps: wrote, .. }) => {
                rpps == wrote
            }
            _ => false,
        };
        let operator = matches!(actor, Actor::System) && self.config.role == Role::Host;
        let reason = match (author, operator) {
            (true, _) => "quarantined document: its author",
            (_, true) => "quarantined document: the host operator",
            _ => "quarantined document: only its author or the host operator may have it",
        };
        let facts = &record.meta.facts;
        let mut entry = self.admin_entry("", Some(&facts.ins), None);
        entry.actor = tactor;
        entry.action = TraceAction::Access(action);
        entry.doc = Some(facts.id);
        entry.allowed = author || operator;
        entry.outcome_reason = reason.to_string();
        entry.decided_offline = self.config.role == Role::Site;
        entry.authority_version = self.authority_version()?;
        let decision = if entry.allowed {
            Ok(())
        } else {
            Err(Error::Denied {
                rule: 0,
                reason: reason.to_string(),
            })
        };
        Ok((entry, decision))
    }

    /// The stored ids of the documents whose changes wait in the outbox.
    fn outbox_documents(&self, txn: &ReadTransaction) -> Result<Vec<[u8; 16]>> {
        Ok(super::withheld::queued_documents(&txn.open_table(OUTBOX)?)?
            .into_iter()
            .map(|(_, stored)| stored)
            .collect())
    }

    fn entry_of(
        &self,
        table: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        in_outbox: &[[u8; 16]],
        record: Quarantined,
    ) -> Result<QuarantineEntry> {
        let state = match &record.refiled {
            None => QuarantineState::Held,
            Some(r) => {
                let stored = self.stored_id(&r.doc);
                if table.get(&stored)?.is_some() {
                    QuarantineState::Returned
                } else if in_outbox.contains(&stored) {
                    QuarantineState::Waiting
                } else {
                    QuarantineState::Taken
                }
            }
        };
        Ok(QuarantineEntry {
            id: record.meta.facts.id,
            record,
            state,
        })
    }
}

use super::refusal::not_quarantined;

fn record_aad(id: &DocId) -> Vec<u8> {
    aad(&[b"quarantine", &id.0])
}

fn body_aad(id: &DocId) -> Vec<u8> {
    aad(&[b"quarantine body", &id.0])
}

/// The key quarantined documents are sealed with, derived from the registry key.
pub(super) fn quarantine_key(registry: &Key) -> Key {
    registry.derive("carnet 2026-11 quarantine")
}

/// A quarantine row of document `id` sealed again, from the registry key `old` to `new` (a
/// rotation of the master key).
pub(super) fn reseal_quarantine_row(
    old: &Key,
    new: &Key,
    id: &DocId,
    row: &[u8],
) -> Result<Vec<u8>> {
    let altered = || Error::integrity("table quarantine: a sealed value was altered");
    let (old, new) = (quarantine_key(old), quarantine_key(new));
    let stored: StoredQuarantine = postcard::from_bytes(row).map_err(|_| altered())?;
    let reseal = |aad: &[u8], sealed: &[u8]| -> Result<Vec<u8>> {
        let plain = old.open(aad, sealed).map_err(|_| altered())?;
        new.seal(aad, &plain)
    };
    Ok(postcard::to_stdvec(&StoredQuarantine {
        record: reseal(&record_aad(id), &stored.record)?,
        body: reseal(&body_aad(id), &stored.body)?,
    })?)
}
