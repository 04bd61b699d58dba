//! Document actions: write, replace, read, list, mask/unmask/hide, delete, and the holder's
//! export. Each one decides with `policy::decide` and traces the decision.
//!
//! Invariants: a write commits its sealed metadata, sealed body chunks, dossier index row,
//! outbox entry and trace entry in one transaction; a denied request changes nothing but the
//! trace; a read returns the body only after its trace is durable and its content hash checked.

use std::sync::Arc;

use crate::kv::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use zeroize::Zeroizing;

use super::bodies::{Bodies, ChunkTable};
use super::changes::Changed;
use super::sync::Act;
use super::tables::*;
use super::{Generation, Replica, Role};
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::authority::{AuthorityRecord, Verified};
use crate::crypto::{Key, SEAL_OVERHEAD, aad};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins};
use crate::merge::DocumentMeta;
use crate::model::{
    AccessMode, Actor, Author, Availability, DocClass, DocState, DocumentFacts, DossierHead,
    EmergencyPrefs, Flags, GrantState,
};
use crate::padding::{pad_meta, padded_body_len};
use crate::policy::{self, Action, Decision, DocView, DossierView, Request, Who};
use crate::time::Millis;
use crate::{model, text};

/// A document to write.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewDocument {
    /// Class code.
    pub class: DocClass,
    /// Type code.
    pub type_code: String,
    /// Title.
    pub title: String,
    /// MIME type.
    pub format: String,
    /// Body.
    #[serde(with = "crate::codec::bytes")]
    pub body: Vec<u8>,
    /// Producer's unique id; a `urn:carnet:` id is made when absent.
    pub unique_id: Option<String>,
    /// Start of the act; now when absent.
    pub service_start: Option<Millis>,
    /// End of the act.
    pub service_end: Option<Millis>,
}

/// A document of the holder's copy.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedDocument {
    /// Metadata.
    pub meta: DocumentMeta,
    /// Body, wiped from memory on drop.
    #[serde(with = "crate::codec::secret_bytes")]
    pub body: Zeroizing<Vec<u8>>,
}

/// An allowed read.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReadOutcome {
    /// Metadata.
    pub meta: DocumentMeta,
    /// Body, wiped from memory on drop.
    #[serde(with = "crate::codec::secret_bytes")]
    pub body: Zeroizing<Vec<u8>>,
    /// Row of the table that allowed it.
    pub rule: u8,
}

/// A read decided and allowed, its body not yet opened.
struct AllowedRead {
    /// The snapshot the decision was made on.
    view: Arc<super::view::ReadView>,
    key: Key,
    meta: DocumentMeta,
    rule: u8,
}

/// The holder's full copy.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DossierExport {
    /// Dossier head.
    pub head: DossierHead,
    /// Documents visible to the requester, with bodies.
    pub documents: Vec<ExportedDocument>,
    /// Trace entries of the dossier.
    pub traces: Vec<AuditEntry>,
    /// The host's notifications to the requester (`notifications`); none at a site.
    #[serde(default)]
    pub notifications: Vec<super::Notification>,
}

/// What the policy needs to know about a dossier and the actor's rights on it.
pub(super) struct Context {
    /// The dossier head (shared with the cache, not copied).
    head: Arc<DossierHead>,
    emergency: EmergencyPrefs,
    grant: Option<(GrantState, bool)>,
    /// The actor's signed grant ended then (`Grant::until`, by this replica's clock).
    grant_ended: Option<Millis>,
    /// The grant in force is a pending one (consent given in person here).
    pending_grant: bool,
    authority_version: u64,
    lease_expired: bool,
}

impl Context {
    fn head(&self) -> &DossierHead {
        &self.head
    }
}

impl Replica {
    pub(super) fn context(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        bi: &[u8; 32],
        who: &Who,
    ) -> Result<Context> {
        let get = |subject: Vec<u8>| {
            self.cache.record(generation.registry, &subject, || {
                self.authority_get(&txn.open_table(AUTHORITY)?, &subject)
            })
        };
        let head = self
            .cache
            .head(
                generation.registry,
                &subject_key(tag::DOSSIER, Some(bi), None),
                || {
                    let subject = subject_key(tag::DOSSIER, Some(bi), None);
                    Ok(
                        match self.authority_get(&txn.open_table(AUTHORITY)?, &subject)? {
                            Some(Verified {
                                record: AuthorityRecord::Dossier(h),
                                ..
                            }) => Some(h),
                            // A dossier opened here that the host has not answered yet.
                            _ => self.local_head(txn, bi)?,
                        },
                    )
                },
            )?
            .ok_or_else(|| self.no_dossier())?;
        let emergency = match get(subject_key(tag::EMERGENCY, Some(bi), None))?.as_deref() {
            Some(Verified {
                record: AuthorityRecord::Emergency { prefs, .. },
                ..
            }) => *prefs,
            _ => EmergencyPrefs::default(),
        };
        let (mut grant, mut pending_grant, mut grant_ended) = (None, false, None);
        if let Who::Professional { rpps, .. } = who {
            let now = self.now();
            let signed = match get(subject_key(
                tag::GRANT,
                Some(bi),
                Some(&self.rpps_index(rpps)),
            ))?
            .as_deref()
            {
                Some(Verified {
                    record: AuthorityRecord::Grant(g),
                    ..
                }) => Some((g.for_decision(now), g.state_at(now), g.ended(now))),
                _ => None,
            };
            grant = signed.map(|(decided, ..)| decided);
            grant_ended = signed.and_then(|(.., ended)| ended);
            if signed.is_none_or(|((state, _), ..)| state != GrantState::Active)
                && self.pending_grant_applies(
                    txn,
                    bi,
                    rpps,
                    signed.map(|(_, state_at, _)| state_at),
                )?
            {
                grant = Some((GrantState::Active, false));
                pending_grant = true;
                grant_ended = None;
            }
        }
        Ok(Context {
            head,
            emergency,
            grant,
            grant_ended,
            pending_grant,
            authority_version: generation.authority_version,
            lease_expired: self.lease_expired(generation)
                && !self.relayed_lease_holds(txn, generation, bi)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide(
        &self,
        ctx: &Context,
        who: &Who,
        actor: &TraceActor,
        action: Action,
        mode: AccessMode,
        reason: Option<&str>,
        doc: Option<&DocumentMeta>,
        new_class: Option<DocClass>,
    ) -> Result<(Decision, AuditEntry)> {
        let matrix = self.matrix()?;
        let state = doc.map(|d| d.state());
        let view = doc.zip(state.as_ref()).map(|(d, s)| DocView {
            author: &d.facts.author,
            flags: s.flags,
            type_code: &d.facts.type_code,
        });
        let decision = policy::decide(
            &Request {
                who,
                action,
                mode,
                reason,
                doc: view,
                new_class,
            },
            &DossierView {
                status: ctx.head().status,
                holder: ctx.head().holder_at(self.now()),
                representatives: &ctx.head().representatives,
                grant: ctx.grant,
                grant_ended: ctx.grant_ended.is_some(),
                emergency: ctx.emergency,
                matrix: &matrix,
                lease_expired: ctx.lease_expired,
            },
        );
        let entry = AuditEntry {
            at: self.now(),
            origin: self.config.site_id,
            actor: actor.clone(),
            action: TraceAction::Access(action),
            ins: Some(ctx.head().ins.matricule().to_string()),
            doc: doc.map(|d| d.facts.id),
            mode,
            allowed: decision.allow,
            rule: decision.rule.0,
            outcome_reason: match ctx.grant_ended {
                _ if ctx.pending_grant => format!(
                    "{} (on a pending grant: consent given in person, not yet confirmed by the host)",
                    decision.reason
                ),
                Some(until) if !decision.allow => format!(
                    "{} (the grant ended on {})",
                    decision.reason,
                    crate::time::format_rfc3339(until)
                ),
                _ => decision.reason.to_string(),
            },
            stated_reason: reason.filter(|r| !r.trim().is_empty()).map(str::to_string),
            decided_offline: self.config.role == Role::Site,
            authority_version: ctx.authority_version,
        };
        Ok((decision, entry))
    }

    pub(super) fn denied(d: &Decision) -> Error {
        Error::Denied {
            rule: d.rule.0,
            reason: d.reason.to_string(),
        }
    }

    pub(super) fn open_meta(
        &self,
        key: &Key,
        id: &[u8; 16],
        stored: &StoredDoc,
    ) -> Result<DocumentMeta> {
        let plain = key
            .open(&meta_aad(id, stored.rev), &stored.sealed)
            .map_err(|_| {
                Error::integrity(format!("metadata of document {} was altered", DocId(*id)))
            })?;
        let meta: DocumentMeta = postcard::from_bytes(&plain)?;
        if meta.facts.id.0 != *id {
            return Err(Error::integrity(
                "a document record carries another document's id",
            ));
        }
        Ok(meta)
    }

    /// Removes document `id` of dossier `bi` and every row indexed by its id, in `txn`: its
    /// metadata and place in the dossier index, its body (tail included), the pieces kept of
    /// a body still arriving and what was owed of it, its missing-body mark, and on the host
    /// its announcement, its place in the announcement queue and the flags the host cleared. Not its unique id (`UNIQUE_IDS` is
    /// keyed by the dossier: a purge drops the dossier's range, a withdrawal the one row) nor
    /// a quarantined copy. The one way a document leaves a replica: a purge and a withdrawal
    /// both go through it.
    pub(super) fn forget_document(
        &self,
        txn: &WriteTransaction,
        ins: &Ins,
        doc: &DocId,
    ) -> Result<()> {
        let bi = &self.blind(ins);
        let stored = self.stored_id(doc);
        self.note_change(Changed::Document {
            ins: ins.clone(),
            id: *doc,
        })?;
        txn.open_table(DOSSIER_DOCS)?
            .remove(dossier_doc_key(bi, &stored).as_slice())?;
        self.digested(txn, DOCS)?.remove(&stored)?;
        self.bodies(txn)?.remove(&stored)?;
        self.forget_partial_body(txn, doc)?;
        txn.open_table(MISSING_BODIES)?.remove(&stored)?;
        txn.open_table(CONFLICTS)?.remove(&stored)?;
        txn.open_table(ANNOUNCEMENTS)?.remove(&stored)?;
        self.digested(txn, HIDDEN_DOCS)?.remove(&stored)?;
        self.digested(txn, HOST_CLEARS)?.remove(&stored)?;
        Ok(())
    }

    /// The ids of a dossier's documents, from the dossier index, in id order (which is the
    /// order they were minted in: the index, keyed by stored ids, has no useful order).
    pub(super) fn dossier_doc_ids(
        &self,
        txn: &ReadTransaction,
        bi: &[u8; 32],
    ) -> Result<Vec<DocId>> {
        let mut ids = Vec::new();
        for row in txn.open_table(DOSSIER_DOCS)?.range(bi.as_slice()..)? {
            let (k, _) = row?;
            let Some(stored) = k.value().strip_prefix(bi.as_slice()) else {
                break;
            };
            ids.push(
                self.doc_id(
                    stored
                        .try_into()
                        .map_err(|_| Error::integrity("bad index key"))?,
                ),
            );
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Loads a document's row, its dossier key and its opened metadata.
    pub(super) fn load_doc(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        id: &DocId,
    ) -> Result<(StoredDoc, Key, DocumentMeta)> {
        self.load_doc_from(&txn.open_table(DOCS)?, txn, generation, id)
    }

    /// `load_doc`, from the `docs` table of `txn`, already open.
    pub(super) fn load_doc_from(
        &self,
        docs: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        txn: &ReadTransaction,
        generation: Generation,
        id: &DocId,
    ) -> Result<(StoredDoc, Key, DocumentMeta)> {
        let stored: StoredDoc = match docs.get(&self.stored_id(id))? {
            Some(v) => postcard::from_bytes(v.value())?,
            None => {
                return Err(Error::not_found(format!(
                    "no document {id} in this replica"
                )));
            }
        };
        let key = self
            .key_for(txn, generation, &stored.dossier)?
            .ok_or_else(|| {
                Error::not_found(format!("document {id} belongs to a purged dossier"))
            })?;
        let meta = self.open_meta(&key, &id.0, &stored)?;
        Ok((stored, key, meta))
    }

    /// Seals and stores a document's metadata at revision `rev`.
    pub(super) fn put_meta(
        &self,
        docs: &mut super::row_digest::Digested<'_, &'static [u8; 16]>,
        key: &Key,
        bi: &[u8; 32],
        rev: u64,
        meta: &DocumentMeta,
    ) -> Result<()> {
        let id = meta.facts.id.0;
        let sealed = key.seal(&meta_aad(&id, rev), &pad_meta(postcard::to_stdvec(meta)?))?;
        let row = postcard::to_stdvec(&StoredDoc {
            dossier: *bi,
            rev,
            sealed,
        })?;
        let stored = self.stored_id(&meta.facts.id);
        let replaced = docs.insert(&stored, row.as_slice())?;
        self.note_change(Changed::Document {
            ins: meta.facts.ins.clone(),
            id: meta.facts.id,
        })?;
        // Successors only grow: a document with fewer than two was never in the index.
        let state = meta.state();
        if state.has_replacement_conflict() {
            docs.txn().open_table(CONFLICTS)?.insert(&stored, ())?;
        } else if state.successors.len() > 1 {
            docs.txn().open_table(CONFLICTS)?.remove(&stored)?;
        }
        // The announcement timer's queue: the host's alone (a site never releases).
        if self.config.role == Role::Host {
            if state.flags.invisible_patient {
                self.digested(docs.txn(), HIDDEN_DOCS)?
                    .insert(&stored, meta.facts.created_at)?;
            } else if replaced {
                // A document new here has no row in the queue: it leaves the queue with its
                // metadata (`forget_document`), so only a stored one may be in it.
                self.digested(docs.txn(), HIDDEN_DOCS)?.remove(&stored)?;
            }
        }
        Ok(())
    }

    /// Seals and stores a body in chunks, padded with zero bytes to its size bucket
    /// (`padding::padded_body_len`) and cut as `segment_chunk_plan` says for segments, as
    /// `body_chunk_plan` says for `BODIES` rows.
    pub(super) fn put_body(
        &self,
        bodies: &mut Bodies<Table<'_, &'static [u8], &'static [u8]>>,
        key: &Key,
        id: &DocId,
        body: &[u8],
    ) -> Result<()> {
        let cut = if bodies.in_segments() {
            segment_chunk_plan
        } else {
            body_chunk_plan
        };
        self.put_body_cut(bodies, key, id, body, cut)
    }

    /// `put_body`, the padded body cut as `cut` says.
    pub(super) fn put_body_cut(
        &self,
        bodies: &mut Bodies<Table<'_, &'static [u8], &'static [u8]>>,
        key: &Key,
        id: &DocId,
        body: &[u8],
        cut: fn(usize) -> Vec<(usize, ChunkPlace)>,
    ) -> Result<()> {
        let stored = self.stored_id(id);
        let mut start = 0;
        for (i, (len, place)) in cut(padded_body_len(body.len())).into_iter().enumerate() {
            let n = u32::try_from(i).map_err(|_| Error::invalid("document too large"))?;
            let end = start + len;
            // Chunks of the body itself are sealed from it where it lies; only the chunk where
            // the body ends and those after it are copied, with their zero bytes of padding.
            let padded_chunk;
            let chunk = if end <= body.len() {
                &body[start..end]
            } else {
                let mut buf = Zeroizing::new(vec![0u8; len]);
                let held = body.get(start..).unwrap_or_default();
                buf[..held.len()].copy_from_slice(held);
                padded_chunk = buf;
                &padded_chunk[..]
            };
            start = end;
            // Sealed straight into the space it goes to (an error drops the transaction).
            let sealed_len = SEAL_OVERHEAD + chunk.len();
            bodies.put_chunk(body_key(&stored, place, n).as_slice(), sealed_len, |slot| {
                key.seal_into(&body_aad(&id.0, n), chunk, slot)
            })?;
        }
        Ok(())
    }

    /// Reads, opens and checks a body against its metadata.
    pub(super) fn get_body(
        &self,
        bodies: &Bodies<impl ChunkTable>,
        key: &Key,
        meta: &DocumentMeta,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let id = meta.facts.id;
        let stored = self.stored_id(&id);
        let size = usize::try_from(meta.facts.size).map_err(|_| Error::integrity("size"))?;
        // `size` comes from metadata that may have come from a peer: reserve only what the
        // chunks can bring, and let the vector grow with them.
        let padded = padded_body_len(size);
        let mut out = Zeroizing::new(Vec::with_capacity(padded.min(CHUNK_PLAIN * 16)));
        // Chunk by chunk, in the places `body_chunk_plan` gives the padded size (walked
        // without building the plan: the size may come from a peer). A body cut as
        // `segment_chunk_plan` cuts has its chunks there too (`SEGMENT_CHUNK_PLAIN`); the
        // chunks' lengths are their own, and what they add up to is checked below.
        let mut n = 0u32;
        while out.len() < padded {
            let (_, place) = next_body_chunk(padded - out.len(), n == 0);
            let sealed = bodies
                .chunk(body_key(&stored, place, n).as_slice())
                .map_err(|e| match e {
                    Error::Integrity(why) => {
                        Error::integrity(format!("body of document {id} was altered: {why}"))
                    }
                    other => other,
                })?;
            let Some(sealed) = sealed else {
                if n == 0 {
                    break;
                }
                return Err(Error::integrity(format!(
                    "body of document {id}: chunk {n} missing"
                )));
            };
            key.open_into(&body_aad(&id.0, n), sealed.sealed(), &mut out)
                .map_err(|_| Error::integrity(format!("body of document {id} was altered")))?;
            n = n.checked_add(1).ok_or_else(|| Error::integrity("size"))?;
        }
        if out.is_empty() && size > 0 {
            return Err(Error::not_found(format!(
                "the body of document {id} has not been received yet (sync with the host)"
            )));
        }
        // Each chunk authenticated under its document id and number, and the total size
        // matching, is the content: the content hash is checked where bodies arrive from
        // elsewhere (`receive_body_piece`), not again on every read.
        if out.len() != padded {
            return Err(Error::integrity(format!(
                "body of document {id} is truncated or padded"
            )));
        }
        out.truncate(size);
        Ok(out)
    }

    /// The next outbox sequence: after the last entry queued, or after the last one
    /// acknowledged when the outbox is empty (sequence numbers are never reused).
    fn next_outbox_seq(txn: &WriteTransaction) -> Result<u64> {
        let last_queued = txn.open_table(OUTBOX)?.last()?.map(|(k, _)| k.value());
        let acked = super::read_u64(
            txn.open_table(META)?
                .get(meta_key::OUTBOX_ACKED)?
                .as_ref()
                .map(|g| g.value()),
        );
        Ok(last_queued.unwrap_or(0).max(acked) + 1)
    }

    /// Stores `meta` as the next revision of the document `stored`, and records the change,
    /// made by `act` (outbox on a site, fan-out on the host), in `txn`.
    pub(super) fn store_new_state(
        &self,
        txn: &WriteTransaction,
        stored: &StoredDoc,
        key: &Key,
        meta: &DocumentMeta,
        act: &Act,
    ) -> Result<()> {
        self.put_meta(
            &mut self.digested(txn, DOCS)?,
            key,
            &stored.dossier,
            stored.rev + 1,
            meta,
        )?;
        self.record_change(txn, &stored.dossier, &meta.facts.id, act)
    }

    /// A document changed here by `act`: a site queues it, with the act, for the host (which
    /// decides the act again); the host logs it for the sites whose scope holds its dossier.
    fn record_change(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        id: &DocId,
        act: &Act,
    ) -> Result<()> {
        match self.config.role {
            Role::Site => {
                let seq = Self::next_outbox_seq(txn)?;
                let mut outbox = txn.open_table(OUTBOX)?;
                self.queue_document_act(txn, bi, id, act, &mut outbox, seq)?;
                Ok(())
            }
            Role::Host => self.host_document_changed(txn, bi, id, None),
        }
    }

    /// Queues the entry `make` builds for the next outbox sequence (which it is given, so what
    /// it seals is bound to that entry: see `seal_queued`).
    pub(super) fn push_outbox(
        &self,
        txn: &WriteTransaction,
        make: impl FnOnce(u64) -> Result<OutboxItem>,
    ) -> Result<()> {
        let seq = Self::next_outbox_seq(txn)?;
        let item = make(seq)?;
        txn.open_table(OUTBOX)?
            .insert(seq, postcard::to_stdvec(&item)?.as_slice())?;
        Ok(())
    }

    /// Commits denial traces in their own transaction, then returns the denial.
    pub(super) fn deny_with_trace(&self, entries: Vec<AuditEntry>, d: &Decision) -> Result<Error> {
        let txn = self.begin_write()?;
        txn.trace(entries);
        txn.commit()?;
        Ok(Self::denied(d))
    }

    /// Writes a document; returns its id.
    pub fn put_document(
        &self,
        actor: &Actor,
        mode: AccessMode,
        reason: Option<&str>,
        ins: &Ins,
        doc: NewDocument,
    ) -> Result<DocId> {
        let ids = self.put_documents(actor, mode, reason, vec![(ins.clone(), doc)])?;
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::Storage("no id returned".into()))
    }

    /// Writes documents in one transaction (one durable commit for the batch). If any is
    /// denied, none is written and the denials are traced.
    pub fn put_documents(
        &self,
        actor: &Actor,
        mode: AccessMode,
        reason: Option<&str>,
        new_docs: Vec<(Ins, NewDocument)>,
    ) -> Result<Vec<DocId>> {
        self.put_documents_then(actor, mode, reason, new_docs, |_, _| Ok(Vec::new()))
    }

    /// `put_documents`, running `then` in the same transaction once the documents are written
    /// (with their ids); the trace entries it answers are committed with the write, and its
    /// error aborts everything.
    pub(super) fn put_documents_then(
        &self,
        actor: &Actor,
        mode: AccessMode,
        reason: Option<&str>,
        new_docs: Vec<(Ins, NewDocument)>,
        then: impl FnOnce(&WriteTransaction, &[DocId]) -> Result<Vec<AuditEntry>>,
    ) -> Result<Vec<DocId>> {
        let txn = self.begin_write()?;
        // Holding the write lock, a snapshot taken now sees exactly what `txn` starts from.
        let (snap, generation) = self.snapshot()?;
        let (who, tactor) = self.who(&snap, generation, actor)?;
        let author = author_of(&who);
        let mut entries = Vec::with_capacity(new_docs.len());
        let mut denied = None;
        let mut plans = Vec::with_capacity(new_docs.len());
        {
            for (ins, d) in new_docs {
                validate_new(&d)?;
                let bi = self.blind(&ins);
                let ctx = self.context(&snap, generation, &bi, &who)?;
                let (decision, mut entry) = self.decide(
                    &ctx,
                    &who,
                    &tactor,
                    Action::Write,
                    mode,
                    reason,
                    None,
                    Some(d.class),
                )?;
                if !decision.allow {
                    denied.get_or_insert(decision);
                    entries.push(entry);
                    continue;
                }
                let key = self
                    .key_for(&snap, generation, &bi)?
                    .ok_or_else(|| self.no_dossier())?;
                if let Some(uid) = &d.unique_id {
                    let taken = self.unique_owner(
                        &snap.open_table(DOCS)?,
                        &snap.open_table(UNIQUE_IDS)?,
                        (&bi, Some(&key)),
                        uid,
                    )?;
                    if let Some(existing) = taken {
                        return Err(Error::invalid(format!(
                            "a document with unique id '{uid}' is already in this dossier ({existing})"
                        )));
                    }
                    if plans.iter().any(|p: &(_, _, _, _, Ins, NewDocument)| {
                        p.4 == ins && p.5.unique_id.as_deref() == Some(uid)
                    }) {
                        return Err(Error::invalid(format!(
                            "unique id '{uid}' appears twice in the batch"
                        )));
                    }
                }
                let id = DocId::mint(self.now());
                entry.doc = Some(id);
                entries.push(entry);
                plans.push((bi, key, id, ctx.head().mask_new_by_default, ins, d));
            }
        }
        if let Some(d) = denied {
            txn.abort()?;
            let only_denials = entries.into_iter().filter(|e| !e.allowed).collect();
            return Err(self.deny_with_trace(only_denials, &d)?);
        }
        let now = self.now();
        let mut ids = Vec::with_capacity(plans.len());
        {
            let mut docs = self.digested(&txn, DOCS)?;
            let mut index = txn.open_table(DOSSIER_DOCS)?;
            let mut bodies = self.bodies(&txn)?;
            let mut uniques = txn.open_table(UNIQUE_IDS)?;
            let mut next_seq = Self::next_outbox_seq(&txn)?;
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut fanout = Vec::new();
            for (bi, key, id, mask_default, ins, d) in plans {
                let meta = self.new_meta(id, &ins, &author, now, mask_default, None, &d);
                self.put_meta(&mut docs, &key, &bi, 1, &meta)?;
                self.put_body(&mut bodies, &key, &id, &d.body)?;
                index.insert(dossier_doc_key(&bi, &self.stored_id(&id)).as_slice(), ())?;
                if !super::is_own_unique_id(&id, &meta.facts.unique_id) {
                    uniques.insert(
                        self.unique_index(&bi, &meta.facts.unique_id).as_slice(),
                        &self.stored_id(&id),
                    )?;
                }
                if self.config.role == Role::Site {
                    let act = Act {
                        actor: actor.clone(),
                        action: Action::Write,
                    };
                    if self.queue_document_act(&txn, &bi, &id, &act, &mut outbox, next_seq)? {
                        next_seq += 1;
                    }
                } else {
                    fanout.push((bi, id));
                }
                ids.push(id);
            }
            drop((docs, index, bodies, uniques, outbox));
            for (bi, id) in &fanout {
                self.host_document_changed(&txn, bi, id, None)?;
            }
        }
        entries.extend(then(&txn, &ids)?);
        txn.trace(entries);
        txn.commit()?;
        Ok(ids)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_meta(
        &self,
        id: DocId,
        ins: &Ins,
        author: &Author,
        now: Millis,
        mask_default: bool,
        replaces: Option<DocId>,
        d: &NewDocument,
    ) -> DocumentMeta {
        let facts = DocumentFacts {
            id,
            unique_id: d
                .unique_id
                .clone()
                .unwrap_or_else(|| format!("{}{id}", super::OWN_UNIQUE_ID)),
            ins: ins.clone(),
            class: d.class,
            type_code: d.type_code.clone(),
            format: d.format.clone(),
            title: d.title.clone(),
            author: author.clone(),
            author_site: self.config.site_id,
            created_at: now,
            service_start: d.service_start.unwrap_or(now),
            service_end: d.service_end,
            content_hash: *blake3::hash(&d.body).as_bytes(),
            size: d.body.len() as u64,
            replaces,
        };
        let state = DocState {
            flags: Flags {
                masque_ps: mask_default,
                ..Flags::default()
            },
            ..DocState::default()
        };
        DocumentMeta::new(facts, self.config.site_id, state)
    }

    /// Reads a document: decides, traces durably, then returns the checked body.
    pub fn read_document(
        &self,
        actor: &Actor,
        id: &DocId,
        mode: AccessMode,
        reason: Option<&str>,
    ) -> Result<ReadOutcome> {
        let (trace, entry, allowed) = self.prepare_read(actor, id, mode, reason)?;
        let outcome = allowed.and_then(|a| self.open_read(a));
        self.audit_commit
            .submit(trace, &|batch| self.commit_traces(batch))?;
        self.index_host_entry(&entry)?;
        outcome
    }

    /// `read_document` for an asynchronous task (the daemon's local API): the same decision,
    /// trace and answer, and while the trace entry is made durable the task waits without
    /// holding a thread. The entry is queued before the body is opened, so it may join the
    /// commit under way while the body is decrypted.
    pub async fn read_document_async(
        &self,
        actor: &Actor,
        id: &DocId,
        mode: AccessMode,
        reason: Option<&str>,
    ) -> Result<ReadOutcome> {
        let (trace, entry, allowed) = self.prepare_read(actor, id, mode, reason)?;
        let commit = |batch| self.commit_traces(batch);
        let mut durable = self.audit_commit.submit_async(trace, &commit);
        durable.enqueue()?;
        let outcome = allowed.and_then(|a| self.open_read(a));
        durable.await?;
        self.index_host_entry(&entry)?;
        outcome
    }

    /// The size of a document's body, from its metadata (no access decision, no trace: it tells
    /// the daemon whether a read is long enough to run on its blocking side).
    pub fn body_size(&self, id: &DocId) -> Result<u64> {
        let view = self.shared_view()?;
        let (_, _, meta) = self.load_doc_from(&view.docs, &view.txn, view.generation, id)?;
        Ok(meta.facts.size)
    }

    /// Decides a read and prepares its trace entry; if allowed, what `open_read` turns into
    /// the answer, to give once the entry is durable (never before).
    fn prepare_read(
        &self,
        actor: &Actor,
        id: &DocId,
        mode: AccessMode,
        reason: Option<&str>,
    ) -> Result<(super::PreparedTrace, AuditEntry, Result<AllowedRead>)> {
        let view = self.shared_view()?;
        let (txn, generation) = (&view.txn, view.generation);
        let (who, tactor) = self.who(txn, generation, actor)?;
        let (stored, key, meta) = self.load_doc_from(&view.docs, txn, generation, id)?;
        if meta.state().availability() == Availability::Deleted {
            return Err(Error::not_found(format!(
                "document {id} was deleted by its author"
            )));
        }
        let ctx = self.context(txn, generation, &stored.dossier, &who)?;
        let (decision, entry) = self.decide(
            &ctx,
            &who,
            &tactor,
            Action::Read,
            mode,
            reason,
            Some(&meta),
            None,
        )?;
        let trace = self.prepare_trace(&entry)?;
        if !decision.allow {
            return Ok((trace, entry, Err(Self::denied(&decision))));
        }
        let allowed = AllowedRead {
            view,
            key,
            meta,
            rule: decision.rule.0,
        };
        Ok((trace, entry, Ok(allowed)))
    }

    /// Opens the body of an allowed read, from the snapshot it was decided on.
    fn open_read(&self, read: AllowedRead) -> Result<ReadOutcome> {
        let body = self.get_body(&read.view.bodies, &read.key, &read.meta)?;
        Ok(ReadOutcome {
            meta: read.meta,
            body,
            rule: read.rule,
        })
    }

    /// The dossier's documents that `who` may read in normal mode, deleted ones excluded.
    #[allow(clippy::too_many_arguments)]
    fn readable_docs(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        ctx: &Context,
        who: &Who,
        tactor: &TraceActor,
        bi: &[u8; 32],
    ) -> Result<Vec<(Key, DocumentMeta)>> {
        let mut out = Vec::new();
        for id in self.dossier_doc_ids(txn, bi)? {
            let (_, key, meta) = self.load_doc(txn, generation, &id)?;
            if meta.state().availability() == Availability::Deleted {
                continue;
            }
            let (d, _) = self.decide(
                ctx,
                who,
                tactor,
                Action::Read,
                AccessMode::Normal,
                None,
                Some(&meta),
                None,
            )?;
            if d.allow {
                out.push((key, meta));
            }
        }
        Ok(out)
    }

    /// Lists the documents of a dossier the actor may read (deleted ones excluded). The
    /// listing is traced; it is denied when the actor may read none of them.
    pub fn list_documents(&self, actor: &Actor, ins: &Ins) -> Result<Vec<DocumentMeta>> {
        let (txn, generation) = self.snapshot()?;
        let (who, tactor) = self.who(&txn, generation, actor)?;
        let bi = self.blind(ins);
        let ctx = self.context(&txn, generation, &bi, &who)?;
        let mut visible: Vec<DocumentMeta> = self
            .readable_docs(&txn, generation, &ctx, &who, &tactor, &bi)?
            .into_iter()
            .map(|(_, meta)| meta)
            .collect();
        let (mut decision, mut entry) = self.decide(
            &ctx,
            &who,
            &tactor,
            Action::List,
            AccessMode::Normal,
            None,
            None,
            None,
        )?;
        if !decision.allow && !visible.is_empty() {
            decision.allow = true;
            decision.reason = "own documents only";
            entry.allowed = true;
            entry.outcome_reason = decision.reason.to_string();
        }
        self.trace_durably(entry)?;
        if !decision.allow {
            return Err(Self::denied(&decision));
        }
        visible.sort_by_key(|m| (m.facts.created_at, m.facts.id));
        Ok(visible)
    }

    /// Masks, unmasks, hides or deletes a document.
    pub fn update_document(
        &self,
        actor: &Actor,
        id: &DocId,
        action: Action,
    ) -> Result<DocumentMeta> {
        let change: fn(&mut DocState) = match action {
            Action::Mask => |s| s.flags.masque_ps = true,
            Action::Unmask => |s| s.flags.masque_ps = false,
            Action::HideFromPatient => |s| s.flags.invisible_patient = true,
            Action::HideFromRepresentatives => |s| s.flags.invisible_representatives = true,
            Action::Delete => |s| s.availability = Some(Availability::Deleted),
            other => {
                return Err(Error::invalid(format!(
                    "'{}' is not a document update",
                    other.as_str()
                )));
            }
        };
        if action == Action::Unmask && self.config.role == Role::Site {
            return Err(Error::invalid(
                "unmasking widens access, so the national host decides it: unmask on the host (the site keeps it masked until then)",
            ));
        }
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        let (who, tactor) = self.who(&snap, generation, actor)?;
        let (stored, key, mut meta) = self.load_doc(&snap, generation, id)?;
        if meta.state().availability() == Availability::Deleted {
            return Err(Error::invalid(format!("document {id} is deleted")));
        }
        let ctx = self.context(&snap, generation, &stored.dossier, &who)?;
        let (decision, entry) = self.decide(
            &ctx,
            &who,
            &tactor,
            action,
            AccessMode::Normal,
            None,
            Some(&meta),
            None,
        )?;
        if !decision.allow {
            txn.abort()?;
            return Err(self.deny_with_trace(vec![entry], &decision)?);
        }
        let before = meta.state().flags;
        meta.update(self.config.site_id, change);
        let act = Act {
            actor: actor.clone(),
            action,
        };
        self.store_new_state(&txn, &stored, &key, &meta, &act)?;
        // An unmask at the host: a site's version that has not seen it may carry the mask back
        // without an act (`push_check`).
        self.record_host_clears(&txn, before, &meta)?;
        txn.trace(vec![entry]);
        txn.commit()?;
        Ok(meta)
    }

    /// Replaces a document by a new one; the old one becomes deprecated, both are kept.
    pub fn replace_document(
        &self,
        actor: &Actor,
        old_id: &DocId,
        doc: NewDocument,
    ) -> Result<DocId> {
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        let (who, tactor) = self.who(&snap, generation, actor)?;
        let (stored, key, mut old) = self.load_doc(&snap, generation, old_id)?;
        if old.state().availability() == Availability::Deleted {
            return Err(Error::invalid(format!("document {old_id} is deleted")));
        }
        validate_new(&doc)?;
        let ctx = self.context(&snap, generation, &stored.dossier, &who)?;
        let (decision, mut entry) = self.decide(
            &ctx,
            &who,
            &tactor,
            Action::Replace,
            AccessMode::Normal,
            None,
            Some(&old),
            Some(doc.class),
        )?;
        if !decision.allow {
            txn.abort()?;
            return Err(self.deny_with_trace(vec![entry], &decision)?);
        }
        let author = author_of(&who);
        let id = DocId::mint(self.now());
        let ins = old.facts.ins.clone();
        let mut new = self.new_meta(
            id,
            &ins,
            &author,
            self.now(),
            ctx.head().mask_new_by_default,
            Some(*old_id),
            &doc,
        );
        // A replacement keeps at least the confidentiality of what it replaces.
        let inherited = old.state().flags;
        new.update(self.config.site_id, |s| s.flags = s.flags.join(inherited));
        let recorded_at = old.next_clock(self.config.site_id);
        old.update(self.config.site_id, |s| {
            s.successors.insert(id, recorded_at);
            s.availability = s.availability.max(Some(Availability::Deprecated));
        });
        {
            let mut docs = self.digested(&txn, DOCS)?;
            self.put_meta(&mut docs, &key, &stored.dossier, stored.rev + 1, &old)?;
            self.put_meta(&mut docs, &key, &stored.dossier, 1, &new)?;
        }
        self.put_body(&mut self.bodies(&txn)?, &key, &id, &doc.body)?;
        txn.open_table(DOSSIER_DOCS)?.put(
            dossier_doc_key(&stored.dossier, &self.stored_id(&id)).as_slice(),
            (),
        )?;
        if !super::is_own_unique_id(&id, &new.facts.unique_id) {
            let mut uniques = txn.open_table(UNIQUE_IDS)?;
            let taken = self.unique_owner(
                &txn.open_table(DOCS)?,
                &uniques,
                (&stored.dossier, Some(&key)),
                &new.facts.unique_id,
            )?;
            if taken.is_some() {
                return Err(Error::invalid(format!(
                    "a document with unique id '{}' is already in this dossier",
                    new.facts.unique_id
                )));
            }
            let unique = self.unique_index(&stored.dossier, &new.facts.unique_id);
            uniques.insert(unique.as_slice(), &self.stored_id(&id))?;
        }
        let acted = |action| Act {
            actor: actor.clone(),
            action,
        };
        self.record_change(&txn, &stored.dossier, old_id, &acted(Action::Replace))?;
        self.record_change(&txn, &stored.dossier, &id, &acted(Action::Write))?;
        entry.doc = Some(*old_id);
        txn.trace(vec![entry]);
        txn.commit()?;
        Ok(id)
    }

    /// The document a producer's unique id names in a dossier, if this replica holds it: how
    /// ingestion recognises a document sent twice. An administrative lookup, not an access.
    pub fn find_by_unique_id(&self, ins: &Ins, unique_id: &str) -> Result<Option<DocId>> {
        let (txn, generation) = self.snapshot()?;
        let bi = self.blind(ins);
        // No key (the dossier is not held here): only the index can answer.
        let key = self.key_for(&txn, generation, &bi)?;
        self.unique_owner(
            &txn.open_table(DOCS)?,
            &txn.open_table(UNIQUE_IDS)?,
            (&bi, key.as_ref()),
            unique_id,
        )
    }

    /// The holder's (or a legal representative's) full copy of the dossier.
    ///
    /// It holds no document hidden from them and no trace entry about one (DOMAIN §3: until
    /// the announcement consultation releases it), whatever the entry says.
    pub fn export_dossier(&self, actor: &Actor, ins: &Ins) -> Result<DossierExport> {
        let (documents, head, hidden, notifications) = {
            let (txn, generation) = self.snapshot()?;
            let (who, tactor) = self.who(&txn, generation, actor)?;
            let bi = self.blind(ins);
            let ctx = self.context(&txn, generation, &bi, &who)?;
            let (decision, entry) = self.decide(
                &ctx,
                &who,
                &tactor,
                Action::Export,
                AccessMode::Normal,
                None,
                None,
                None,
            )?;
            self.trace_durably(entry)?;
            if !decision.allow {
                return Err(Self::denied(&decision));
            }
            let bodies = self.bodies_read(&txn)?;
            let mut out = Vec::new();
            for (key, meta) in self.readable_docs(&txn, generation, &ctx, &who, &tactor, &bi)? {
                let body = self.get_body(&bodies, &key, &meta)?;
                out.push(ExportedDocument { meta, body });
            }
            let hidden = self.hidden_from(&txn, generation, &bi, &who)?;
            let notifications = self.notifications_for(&txn, &bi, &who, &hidden)?;
            (out, ctx.head().clone(), hidden, notifications)
        };
        let traces = self
            .audit_entries(Some(ins))?
            .into_iter()
            .map(|c| c.entry)
            .filter(|e| e.doc.is_none_or(|d| !hidden.contains(&d)))
            .collect();
        Ok(DossierExport {
            head,
            documents,
            traces,
            notifications,
        })
    }
}

impl Replica {
    /// The documents of dossier `bi` hidden from `who` (DOMAIN §3): from the holder those
    /// `INVISIBLE_PATIENT`, from a representative those too and those
    /// `INVISIBLE_REPRESENTANTS_LEGAUX`; none from a professional. Neither they nor any trace
    /// entry about them may reach that person.
    pub(super) fn hidden_from(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        bi: &[u8; 32],
        who: &Who,
    ) -> Result<std::collections::HashSet<DocId>> {
        let mut hidden = std::collections::HashSet::new();
        if matches!(who, Who::Professional { .. } | Who::Unidentified) {
            return Ok(hidden);
        }
        for id in self.dossier_doc_ids(txn, bi)? {
            let flags = self.load_doc(txn, generation, &id)?.2.state().flags;
            let hides = match who {
                Who::Holder => flags.invisible_patient,
                Who::Representative(_) => {
                    flags.invisible_patient || flags.invisible_representatives
                }
                _ => false,
            };
            if hides {
                hidden.insert(id);
            }
        }
        Ok(hidden)
    }
}

/// The author recorded for a document written by `who`, once the table allowed it (row 12,
/// `Who::Unidentified`, never writes; it would be recorded as the holder's).
fn author_of(who: &Who) -> Author {
    match who {
        Who::Professional { rpps, profession } => Author::Professional {
            rpps: rpps.clone(),
            profession: *profession,
        },
        Who::Representative(id) => Author::Representative(*id),
        Who::Holder | Who::Unidentified => Author::Holder,
    }
}

fn validate_new(d: &NewDocument) -> Result<()> {
    if d.body.len() as u64 > model::BODY_BYTES_MAX {
        return Err(Error::invalid(format!(
            "the body is {} bytes: a document holds at most {} GiB",
            d.body.len(),
            model::BODY_BYTES_MAX >> 30
        )));
    }
    if d.title.trim().is_empty() {
        return Err(Error::invalid("a document needs a title (--title)"));
    }
    if d.type_code.trim().is_empty() {
        return Err(Error::invalid("a document needs a type code (--type)"));
    }
    // The rules `DocumentFacts::check` applies to what a site pushes.
    text::line(&d.title, "the title", model::TITLE_CHARS_MAX)?;
    text::code(&d.type_code, "the type code", model::TYPE_CODE_MAX)?;
    text::required_line(&d.format, "the format", model::FORMAT_CHARS_MAX)?;
    if let Some(unique_id) = &d.unique_id {
        text::required_line(unique_id, "the unique id", model::UNIQUE_ID_CHARS_MAX)?;
    }
    for (at, what) in [
        (d.service_start, "the service start"),
        (d.service_end, "the service end"),
    ] {
        if let Some(at) = at {
            crate::time::check_plausible(at, what)?;
        }
    }
    if let (Some(s), Some(e)) = (d.service_start, d.service_end)
        && e < s
    {
        return Err(Error::invalid("the service end is before its start"));
    }
    Ok(())
}

pub(super) fn meta_aad(id: &[u8; 16], rev: u64) -> Vec<u8> {
    aad(&[b"meta", id, &rev.to_le_bytes()])
}

pub(super) fn body_aad(id: &[u8; 16], chunk: u32) -> Vec<u8> {
    aad(&[b"body", id, &chunk.to_le_bytes()])
}
