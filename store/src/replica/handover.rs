//! Handover between two sites without the host (DOMAIN §5, "Handover"): a mobile unit hands
//! a dossier to the clinic it brings the patient to, neither reaching the host.
//!
//! The sender builds a `Handover` (`handover_out`), and traces it once the peer admitted it
//! (`record_handover`): the host's signed records about the
//! dossier (its head, emergency preferences, grants), the matrix and the list of site
//! certificates the host refuses (so a revocation travels from site to site), the sender's latest
//! heartbeat, the metadata of every document of the dossier it holds, and its own trace
//! entries about it. Bodies travel after it, piece by piece (`receive_body_pieces`), so a cut
//! transfer resumes where it stopped.
//!
//! Invariants (the receiver trusts no peer: `admit_handover` decides everything again):
//! - a handover brings data, never rights: access at the receiver follows the same decision
//!   table, on the records it holds afterwards;
//! - every record must verify under the host key the receiver pinned, be about the dossier
//!   handed over (or be the matrix or the refused certificates), and state no time ahead of the receiver's clock; a record
//!   older than the one held is not admitted (a newer authority version wins); anything that
//!   does not verify refuses the whole handover and changes nothing;
//! - the relayed heartbeat must be one the host signed for the sending site (the peer's
//!   certificate names it). It renews the receiver's lease for that dossier only, up to the
//!   heartbeat's own time (`RELAYED_LEASES`): the lease still ends the lease's length after the
//!   host signed it, whoever carried it, and the receiver's cache of other dossiers is not
//!   vouched for by it;
//! - documents merge by version vector; a document of another dossier refuses the handover,
//!   and a version that would unmask, unhide or undelete what the receiver holds, or a new
//!   document by an author the holder blocked, is refused alone (the receiver keeps its own);
//! - the sender's trace entries (only its own, only about the dossier) are kept under the
//!   sender's origin in `RELAYED_TRACES`, apart from the receiver's trace (they are parts of a
//!   chain the receiver does not hold whole), and an entry held already must be the same one; the receiver traces the handover itself in its own chain (who, from which site,
//!   why), and so does the sender.

use serde::{Deserialize, Serialize};

use super::Replica;
use super::Role;
use super::TraceRecord;
use super::sync::{ActiveDossiers, widens};
use super::tables::*;
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::authority::{self, AuthorityRecord, Covers, SignedRecord, Verified};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, Rpps, SiteId};
use crate::kv::{ReadableTable, WriteTransaction};
use crate::merge::DocumentMeta;
use crate::model::{AccessMode, Actor, GrantState};
use crate::policy::Action;
use crate::time::Millis;

/// Format of a `Handover` this build writes and reads.
pub const HANDOVER_FORMAT: u8 = 1;
/// Longest reason a handover carries (characters).
pub const HANDOVER_REASON_MAX: usize = 500;
/// Largest body a peer may hand over (as the host takes from a site).
pub const HANDOVER_BODY_MAX: u64 = 1 << 30;
/// Most versions a handed-over document's metadata may carry (merging is quadratic in them).
pub const HANDOVER_VERSIONS_MAX: usize = 64;
/// A peer's ask for a dossier qualifies only when a professional of the holding site had an
/// access to it allowed this recently (`handover_asked`).
pub const ASK_CARE_WINDOW: Millis = 24 * 3_600_000;

/// What a site hands over to a peer about one dossier (bodies follow on their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// `HANDOVER_FORMAT`.
    pub format: u8,
    /// The dossier.
    pub ins: Ins,
    /// The professional who hands it over, as the sender declared them.
    pub by: Rpps,
    /// Why, in their words.
    pub reason: Option<String>,
    /// The host's signed records about the dossier, the matrix and the refused certificates.
    pub records: Vec<SignedRecord>,
    /// The sender's latest heartbeat (signed by the host for the sender), if it admitted one.
    pub heartbeat: Option<SignedRecord>,
    /// The metadata of each document of the dossier the sender holds.
    pub documents: Vec<DocumentMeta>,
    /// The sender's own trace entries about the dossier.
    pub traces: Vec<TraceRecord>,
}

/// What `admit_handover` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverReport {
    /// Records newer than those held, now in force.
    pub records_admitted: usize,
    /// Records held already, or older than those held.
    pub records_unchanged: usize,
    /// Documents new here.
    pub documents_new: usize,
    /// Documents held already, merged.
    pub documents_merged: usize,
    /// Documents refused, with why (the receiver keeps its own version).
    pub documents_refused: Vec<(DocId, String)>,
    /// Trace entries of the sender kept (new here).
    pub traces_kept: usize,
    /// The dossier's lease here now runs from this time (the relayed heartbeat's), if it
    /// renewed it.
    pub lease_from: Option<Millis>,
    /// The bodies still lacking here, with the bytes kept of each: the sender sends them from
    /// there.
    pub lacking: Vec<(DocId, u64)>,
}

impl Replica {
    /// Sender: builds the handover of dossier `ins` by professional `by` (registered here).
    /// Refused, traced, when the table refuses `by` a write on the dossier (it is not active,
    /// or the holder blocked them), and for a dossier this site opened that the host has not
    /// answered (no signed head a peer could verify). The handover itself is traced once the
    /// peer admitted it (`record_handover`).
    pub(crate) fn handover_out(
        &self,
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
        to: SiteId,
    ) -> Result<Handover> {
        self.site_only("hands a dossier over")?;
        let reason = check_reason(reason)?;
        let bi = self.blind(ins);
        let (txn, generation) = self.snapshot()?;
        // Decided (a refusal traced) before anything is read.
        self.handover_entry(&txn, generation, &bi, ins, by, reason.as_deref(), to)?;
        let auth = txn.open_table(AUTHORITY)?;
        let mut records = Vec::new();
        let mut push = |subject: Vec<u8>| -> Result<()> {
            if let Some(v) = auth.get(subject.as_slice())? {
                records.push(self.open_signed(&subject, v.value())?);
            }
            Ok(())
        };
        push(subject_key(tag::MATRIX, None, None))?;
        push(subject_key(tag::REFUSED_CERTIFICATES, None, None))?;
        push(subject_key(tag::DOSSIER, Some(&bi), None))?;
        push(subject_key(tag::EMERGENCY, Some(&bi), None))?;
        let grants = subject_key(tag::GRANT, Some(&bi), None);
        for row in auth.range(grants.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&grants) {
                break;
            }
            records.push(self.open_signed(k.value(), v.value())?);
        }
        // This site's own heartbeat vouches for its own log: not for a dossier a peer handed
        // over to it, which its log may never have held.
        let relayed_here = match txn.open_table(RELAYED_LEASES) {
            Ok(t) => t.get(&bi)?.is_some(),
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(e.into()),
        };
        let heartbeat = match txn.open_table(META)?.get(meta_key::RELAYABLE_HEARTBEAT)? {
            Some(v) if !relayed_here => Some(postcard::from_bytes(v.value())?),
            _ => None,
        };
        let mut documents = Vec::new();
        for id in self.dossier_doc_ids(&txn, &bi)? {
            documents.push(self.load_doc(&txn, generation, &id)?.2);
        }
        drop(auth);
        drop(txn);
        let own = self.config.site_id;
        let traces = self
            .audit_entries(Some(ins))?
            .into_iter()
            .filter(|c| c.entry.origin == own)
            .map(|c| TraceRecord {
                seq: c.seq,
                hash: c.hash,
                entry: c.entry,
            })
            .collect();
        Ok(Handover {
            format: HANDOVER_FORMAT,
            ins: ins.clone(),
            by: by.clone(),
            reason,
            records,
            heartbeat,
            documents,
            traces,
        })
    }

    /// Holder, on a peer's ask: builds the handover of dossier `ins` to peer site `from` (named
    /// by its certificate), which asked for it for its professional `asker` (as it declares
    /// them). The dossier qualifies only when a professional registered here had an access to it
    /// allowed here within `ASK_CARE_WINDOW`: this site is caring for the patient now, and a
    /// peer cannot draw other dossiers out of its cache. The handover is then the latest such
    /// professional's, judged as `handover_out` judges it. A dossier held here that does not
    /// qualify is refused, the ask traced (`handover-ask-refused`).
    pub(crate) fn handover_asked(
        &self,
        ins: &Ins,
        from: SiteId,
        asker: &Rpps,
        reason: Option<&str>,
    ) -> Result<Handover> {
        self.site_only("hands a dossier over")?;
        let asked = match check_reason(reason)? {
            Some(r) => format!("asked by site {from} for {asker}: {r}"),
            None => format!("asked by site {from} for {asker}"),
        };
        let asked: String = asked.chars().take(HANDOVER_REASON_MAX).collect();
        let (now, own) = (self.now(), self.config.site_id);
        let registered: std::collections::HashSet<Rpps> =
            self.professionals()?.into_iter().map(|p| p.rpps).collect();
        let carer = self
            .audit_entries(Some(ins))?
            .into_iter()
            .rev()
            .map(|c| c.entry)
            .filter(|e| e.origin == own && e.allowed && e.at <= now)
            .take_while(|e| now - e.at <= ASK_CARE_WINDOW)
            .find_map(|e| match (e.actor, e.action) {
                (TraceActor::Professional { rpps, .. }, TraceAction::Access(_))
                    if registered.contains(&rpps) =>
                {
                    Some(rpps)
                }
                _ => None,
            });
        match carer {
            Some(carer) => self.handover_out(ins, &carer, Some(&asked), from),
            None => Err(self.refuse_ask(ins, from, &asked)?),
        }
    }

    /// The refusal of a peer's ask for dossier `ins`, traced when the dossier is held here.
    fn refuse_ask(&self, ins: &Ins, from: SiteId, asked: &str) -> Result<Error> {
        let (txn, _) = self.snapshot()?;
        let held = txn
            .open_table(AUTHORITY)?
            .get(subject_key(tag::DOSSIER, Some(&self.blind(ins)), None).as_slice())?
            .is_some();
        drop(txn);
        if !held {
            return Ok(self.no_dossier());
        }
        let why = format!(
            "no professional of this site had an access to it in the last {} hours",
            ASK_CARE_WINDOW / 3_600_000
        );
        let mut refused = self.admin_entry("handover-ask-refused", Some(ins), Some(asked));
        refused.allowed = false;
        refused.outcome_reason = format!("site {from} asked for it: {why}");
        let writer = self.begin_write()?;
        writer.trace(vec![refused]);
        writer.commit()?;
        Ok(Error::invalid(format!(
            "dossier {} does not qualify for a handover to site {from}: {why}",
            ins.matricule()
        )))
    }

    /// Sender: traces the handover of dossier `ins` by `by` to site `to`, once the peer admitted
    /// it (`TraceAction::HandedOver`: the host reads the receiving site from it). Decided again
    /// as `handover_out` decides it.
    pub(crate) fn record_handover(
        &self,
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
        to: SiteId,
    ) -> Result<()> {
        self.site_only("hands a dossier over")?;
        let reason = check_reason(reason)?;
        let (txn, generation) = self.snapshot()?;
        let entry = self.handover_entry(
            &txn,
            generation,
            &self.blind(ins),
            ins,
            by,
            reason.as_deref(),
            to,
        )?;
        drop(txn);
        let writer = self.begin_write()?;
        writer.trace(vec![entry]);
        writer.commit()
    }

    /// The trace entry of a handover by `by`, judged as a write on the dossier: refused (the
    /// refusal traced) when the table refuses it, or when the dossier has no signed head.
    #[allow(clippy::too_many_arguments)]
    fn handover_entry(
        &self,
        txn: &crate::kv::ReadTransaction,
        generation: super::Generation,
        bi: &[u8; 32],
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
        to: SiteId,
    ) -> Result<AuditEntry> {
        let (who, actor) = self.who(txn, generation, &Actor::Professional(by.clone()))?;
        if self
            .authority_get(
                &txn.open_table(AUTHORITY)?,
                &subject_key(tag::DOSSIER, Some(bi), None),
            )?
            .is_none()
        {
            return Err(if self.local_head(txn, bi)?.is_some() {
                Error::invalid(format!(
                    "dossier {} was opened here and the host has not answered yet: it has no signed head a peer could check, so it cannot be handed over",
                    ins.matricule()
                ))
            } else {
                self.no_dossier()
            });
        }
        let ctx = self.context(txn, generation, bi, &who)?;
        let (decision, mut entry) = self.decide(
            &ctx,
            &who,
            &actor,
            Action::Write,
            AccessMode::Normal,
            reason,
            None,
            None,
        )?;
        if !decision.allow {
            return Err(self.deny_with_trace(vec![entry], &decision)?);
        }
        entry.action = TraceAction::HandedOver { to };
        entry.outcome_reason = format!("handed over to site {to}");
        Ok(entry)
    }

    /// Receiver: admits what peer site `from` (named by its certificate) handed over, decided
    /// again here (see the module documentation), in one transaction, and traces it. Anything
    /// that does not verify refuses it whole, traced, and changes nothing else.
    pub(crate) fn admit_handover(&self, from: SiteId, h: &Handover) -> Result<HandoverReport> {
        self.site_only("admits a handover")?;
        match self
            .check_handover(from, h)
            .and_then(|checked| self.apply_handover(from, h, checked))
        {
            Ok(report) => Ok(report),
            Err(e) => {
                let mut refused = self.admin_entry("handover-refused", Some(&h.ins), None);
                refused.allowed = false;
                refused.outcome_reason = format!("from site {from}: {e}");
                let txn = self.begin_write()?;
                txn.trace(vec![refused]);
                txn.commit()?;
                Err(e)
            }
        }
    }

    /// The verified records and heartbeat of a handover, or why it is refused whole.
    fn check_handover(&self, from: SiteId, h: &Handover) -> Result<Checked> {
        if h.format != HANDOVER_FORMAT {
            return Err(Error::invalid(format!(
                "a handover of format {} (this build reads {HANDOVER_FORMAT}): update the older site",
                h.format
            )));
        }
        if from == self.config.site_id {
            return Err(Error::invalid(
                "a site does not hand a dossier over to itself",
            ));
        }
        check_reason(h.reason.as_deref())?;
        let key = (*self.host_key.read().map_err(super::lock_err)?).ok_or_else(|| {
            Error::invalid("this site trusts no host key yet (enrol it): it can check no handover")
        })?;
        let now = self.now();
        let mut records = Vec::with_capacity(h.records.len());
        for signed in &h.records {
            let v = authority::verify(&key, signed).map_err(|e| {
                Error::integrity(format!("a record the peer relayed does not verify: {e}"))
            })?;
            authority::check_not_ahead(&v, now)?;
            let about_it = match &v.record {
                AuthorityRecord::Matrix(_) | AuthorityRecord::RefusedCertificates(_) => true,
                r if r.is_heartbeat() => false,
                r => r.ins() == Some(&h.ins),
            };
            if !about_it {
                return Err(Error::invalid(format!(
                    "the peer relayed a record (sequence {}) that is not about the dossier handed over",
                    v.seq
                )));
            }
            records.push(v);
        }
        if !records.iter().any(|v| {
            matches!(
                &v.record,
                AuthorityRecord::Dossier(_) | AuthorityRecord::Purged { .. }
            )
        }) {
            return Err(Error::invalid(
                "the handover carries no signed head of its dossier",
            ));
        }
        let heartbeat = match &h.heartbeat {
            None => None,
            Some(signed) => {
                let v = authority::verify(&key, signed).map_err(|e| {
                    Error::integrity(format!(
                        "the heartbeat the peer relayed does not verify: {e}"
                    ))
                })?;
                authority::check_not_ahead(&v, now)?;
                match &v.record {
                    AuthorityRecord::Heartbeat(hb) if matches!(hb.covers, Covers::Log { site, .. } if site == from) => {
                        Some(hb.at)
                    }
                    _ => {
                        return Err(Error::invalid(
                            "the peer relayed a heartbeat the host did not sign for it",
                        ));
                    }
                }
            }
        };
        for d in &h.documents {
            if d.facts.ins != h.ins {
                return Err(Error::invalid(format!(
                    "the peer handed over document {} of another dossier",
                    d.facts.id
                )));
            }
            if !d.is_sane() || d.versions().len() > HANDOVER_VERSIONS_MAX {
                return Err(Error::integrity(format!(
                    "document {} has an implausible version vector",
                    d.facts.id
                )));
            }
            d.facts.check()?;
            if d.facts.size > HANDOVER_BODY_MAX {
                return Err(Error::invalid(format!(
                    "document {} announces a body larger than {HANDOVER_BODY_MAX} bytes",
                    d.facts.id
                )));
            }
        }
        for t in &h.traces {
            if t.entry.origin != from || t.entry.ins.as_deref() != Some(h.ins.matricule()) {
                return Err(Error::invalid(format!(
                    "the peer handed over trace entry {} that is not its own about this dossier",
                    t.seq
                )));
            }
        }
        Ok(Checked { records, heartbeat })
    }

    fn apply_handover(
        &self,
        from: SiteId,
        h: &Handover,
        checked: Checked,
    ) -> Result<HandoverReport> {
        let bi = self.blind(&h.ins);
        let mut report = HandoverReport::default();
        let mut purges = Vec::new();
        let txn = self.begin_write()?;
        for (signed, v) in h.records.iter().zip(&checked.records) {
            let (admitted, purge) = self.admit(&txn, signed, v)?;
            if admitted {
                report.records_admitted += 1;
            } else {
                report.records_unchanged += 1;
            }
            purges.extend(purge);
        }
        if let Some(at) = checked.heartbeat {
            let at = at.max(0);
            let mut leases = txn.open_table(RELAYED_LEASES)?;
            let held = leases.get(&bi)?.map(|v| v.value());
            if held.is_none_or(|held| held < at) {
                leases.insert(&bi, at)?;
                drop(leases);
                Self::registry_changed(&txn)?;
                report.lease_from = Some(at);
            }
        }
        let mut dossiers = ActiveDossiers::default();
        for d in &h.documents {
            match self.peer_document_refusal(&txn, &bi, d)? {
                Some(why) => report.documents_refused.push((d.facts.id, why)),
                None => {
                    let held = txn
                        .open_table(DOCS)?
                        .get(&self.stored_id(&d.facts.id))?
                        .is_some();
                    match self.merge_remote_document(
                        &txn,
                        d,
                        None,
                        None,
                        &mut dossiers,
                        &mut super::sync::DocTables::new(self, &txn),
                    )? {
                        super::Applied::Returned => report.documents_refused.push((
                            d.facts.id,
                            "its dossier is not active here (closed, purged or not held)".into(),
                        )),
                        _ if held => report.documents_merged += 1,
                        _ => report.documents_new += 1,
                    }
                }
            }
        }
        report.traces_kept = self.keep_peer_traces(&txn, from, &h.traces)?;
        // Who handed it over is the sending site's word: named in the outcome, not as the actor.
        let mut entry = self.admin_entry("handover-received", Some(&h.ins), h.reason.as_deref());
        entry.outcome_reason = format!(
            "from site {from}, handed over by {} as that site declares: {} record(s) admitted, {} document(s) new, {} merged, {} refused",
            h.by.as_str(),
            report.records_admitted,
            report.documents_new,
            report.documents_merged,
            report.documents_refused.len()
        );
        entry.decided_offline = true;
        txn.trace(vec![entry]);
        txn.commit()?;
        self.reload_held()?;
        for (ins, cause) in purges {
            self.purge_rows(&ins, cause)?;
        }
        let txn = self.begin_read()?;
        let missing = txn.open_table(MISSING_BODIES)?;
        for d in &h.documents {
            let stored = self.stored_id(&d.facts.id);
            if missing.get(&stored)?.is_some() {
                report
                    .lacking
                    .push((d.facts.id, self.body_progress(&d.facts.id)?));
            }
        }
        Ok(report)
    }

    /// Why a peer's version of a document is refused here, if it is: it would widen access to
    /// what this site holds (only the host widens), or it is new and its author is blocked.
    fn peer_document_refusal(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        d: &DocumentMeta,
    ) -> Result<Option<String>> {
        let stored = self.stored_id(&d.facts.id);
        let row = txn
            .open_table(DOCS)?
            .get(&stored)?
            .map(|v| v.value().to_vec());
        if let Some(row) = row {
            let stored: StoredDoc = postcard::from_bytes(&row)?;
            if stored.dossier != *bi {
                return Ok(Some("it cannot be merged here".into()));
            }
            let Some(key) = self.dossier_key(&txn.open_table(DOSSIER_KEYS)?, bi)? else {
                return Ok(Some("its dossier is not held here".into()));
            };
            let before = self.open_meta(&key, &d.facts.id.0, &stored)?;
            let mut merged = before.clone();
            merged.merge(d)?;
            if widens(&before.state(), &merged.state()) {
                return Ok(Some(
                    "it would unmask, unhide or undelete a document, which only the host decides"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if let crate::model::Author::Professional { rpps, .. } = &d.facts.author {
            let grant = self.authority_get(
                &txn.open_table(AUTHORITY)?,
                &subject_key(tag::GRANT, Some(bi), Some(&self.rpps_index(rpps))),
            )?;
            if let Some(Verified {
                record: AuthorityRecord::Grant(g),
                ..
            }) = grant
                && g.state == GrantState::Blocked
            {
                return Ok(Some("its author is blocked by the holder".into()));
            }
        }
        Ok(None)
    }

    /// Keeps the sender's own trace entries under its origin in `RELAYED_TRACES`, apart from
    /// this site's trace: an entry held already must be the one sent. Returns how many are new.
    fn keep_peer_traces(
        &self,
        txn: &WriteTransaction,
        from: SiteId,
        traces: &[TraceRecord],
    ) -> Result<usize> {
        let mut table = txn.open_table(RELAYED_TRACES)?;
        let aad = super::trace_aad(from.0);
        let mut kept = 0;
        for t in traces {
            let bytes = zeroize::Zeroizing::new(postcard::to_stdvec(&t.entry)?);
            let held = table.get((from.0, t.seq))?.map(|v| v.value().to_vec());
            if let Some(held) = held {
                let (hash, plain) = self.open_trace_row(from.0, t.seq, &held)?;
                if hash != t.hash || *plain != *bytes {
                    return Err(Error::integrity(format!(
                        "site {from} handed over trace entry {} different from the one held here: its history was rewritten",
                        t.seq
                    )));
                }
                continue;
            }
            let row = StoredTrace {
                hash: t.hash,
                sealed: self.keys.audit.seal(&aad, &bytes)?,
            };
            table.insert((from.0, t.seq), postcard::to_stdvec(&row)?.as_slice())?;
            kept += 1;
        }
        Ok(kept)
    }

    /// True when a heartbeat a peer relayed (`admit_handover`) still vouches for dossier `bi`
    /// here: within the lease of its time, and the clock not set back behind what it saw.
    pub(super) fn relayed_lease_holds(
        &self,
        txn: &crate::kv::ReadTransaction,
        generation: super::Generation,
        bi: &[u8; 32],
    ) -> Result<bool> {
        let Some(lease) = self.config.lease_ms else {
            return Ok(true);
        };
        let at = match txn.open_table(RELAYED_LEASES) {
            Ok(t) => t.get(bi)?.map(|v| v.value()),
            // A replica created before handovers: none was relayed.
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let now = self.now();
        // A clock set back behind what this replica saw ends every lease, relayed ones too.
        let clock_ok = now >= generation.clock_seen.saturating_sub(authority::MAX_SKEW);
        Ok(clock_ok
            && at.is_some_and(|at| {
                now >= at.saturating_sub(authority::MAX_SKEW) && now.saturating_sub(at) <= lease
            }))
    }

    /// Keeps `signed`, a heartbeat this site admitted from its own log, to relay with a
    /// handover, unless the one kept is later.
    pub(super) fn keep_relayable_heartbeat(
        &self,
        txn: &WriteTransaction,
        signed: &SignedRecord,
        v: &Verified,
    ) -> Result<()> {
        let mut meta = txn.open_table(META)?;
        let kept = match meta.get(meta_key::RELAYABLE_HEARTBEAT)? {
            Some(row) => authority::decode(&postcard::from_bytes(row.value())?)?
                .record
                .latest_time(),
            None => None,
        };
        if kept.is_none_or(|kept| v.record.latest_time().is_some_and(|at| at >= kept)) {
            meta.insert(
                meta_key::RELAYABLE_HEARTBEAT,
                postcard::to_stdvec(signed)?.as_slice(),
            )?;
        }
        Ok(())
    }

    /// Host: for each handover among `origin`'s new trace entries (its signed trace, never the
    /// receiver's word), lets the receiving site hold the dossier for `EMERGENCY_VALID`, as an
    /// allowed emergency fetch does (`EMERGENCY_SCOPES`), so the host's closures and
    /// revocations reach it there: only when the dossier is active here, in `origin`'s scope,
    /// and handed over by a professional the host binds to `origin`. Each is traced here.
    pub(super) fn scope_handovers<'e>(
        &self,
        txn: &super::Writer<'_>,
        origin: SiteId,
        entries: impl Iterator<Item = &'e AuditEntry>,
    ) -> Result<()> {
        for e in entries {
            let TraceAction::HandedOver { to } = e.action else {
                continue;
            };
            let (TraceActor::Professional { rpps, .. }, Some(matricule), true) =
                (&e.actor, &e.ins, e.allowed)
            else {
                continue;
            };
            let Ok(ins) = Ins::parse(matricule) else {
                continue;
            };
            let bi = self.blind(&ins);
            let active = matches!(
                self.authority_get(
                    &txn.open_table(AUTHORITY)?,
                    &subject_key(tag::DOSSIER, Some(&bi), None),
                )?,
                Some(Verified {
                    record: AuthorityRecord::Dossier(h),
                    ..
                }) if h.status == crate::model::DossierStatus::Active
            );
            // Held for a reason of its own: not for a while only, as after a handover or an
            // emergency fetch (two sites handing a dossier to each other keep nothing).
            let held = txn
                .open_table(SCOPE)?
                .get(site_key(origin.0, &bi).as_slice())?
                .is_some_and(|v| v.value() & !scope_bit::EMERGENCY != 0);
            let blocked = matches!(
                self.authority_get(
                    &txn.open_table(AUTHORITY)?,
                    &subject_key(tag::GRANT, Some(&bi), Some(&self.rpps_index(rpps))),
                )?,
                Some(Verified {
                    record: AuthorityRecord::Grant(g),
                    ..
                }) if g.state == GrantState::Blocked
            );
            let mut entry = self.admin_entry("handover-scope", Some(&ins), None);
            if to == origin
                || to.0 == 0
                || super::daemons::is_daemon_origin(to)
                || !active
                || !held
                || blocked
                || !self.is_bound(txn, origin, rpps)?
            {
                entry.allowed = false;
                entry.outcome_reason = format!(
                    "site {origin} traced a handover to site {to} that the host does not follow: the dossier is not active, not in site {origin}'s scope for a reason of its own, or handed over by a professional the host blocks on it or does not bind to that site"
                );
                txn.trace(vec![entry]);
                continue;
            }
            let key = site_key(to.0, &bi);
            let until = self.now().saturating_add(super::EMERGENCY_VALID);
            let mut scopes = self.digested(txn, EMERGENCY_SCOPES)?;
            if scopes
                .get(key.as_slice())?
                .is_none_or(|held| held.value() < until)
            {
                scopes.insert(key.as_slice(), until)?;
            }
            drop(scopes);
            self.set_scope(txn, to.0, &bi, scope_bit::EMERGENCY, true)?;
            entry.outcome_reason = format!(
                "site {to} holds it for a while: site {origin} handed it over (closures and revocations reach it there)"
            );
            txn.trace(vec![entry]);
        }
        Ok(())
    }

    /// Site: the trace entries peers handed over about dossier `ins`, by origin and sequence.
    pub(crate) fn relayed_traces(&self, ins: &Ins) -> Result<Vec<TraceRecord>> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(RELAYED_TRACES) {
            Ok(t) => t,
            // A replica created before handovers: none was handed over.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (origin, seq) = k.value();
            let (hash, plain) = self.open_trace_row(origin, seq, v.value())?;
            let entry: crate::audit::AuditEntry = postcard::from_bytes(&plain)?;
            if entry.ins.as_deref() == Some(ins.matricule()) {
                out.push(TraceRecord { seq, hash, entry });
            }
        }
        Ok(out)
    }

    fn site_only(&self, what: &str) -> Result<()> {
        if self.config.role != Role::Site {
            return Err(Error::invalid(format!("only a site {what}")));
        }
        Ok(())
    }
}

/// A handover's records, verified in its order, and its heartbeat's time when it is one the
/// host signed for the sender.
struct Checked {
    records: Vec<Verified>,
    heartbeat: Option<Millis>,
}

fn check_reason(reason: Option<&str>) -> Result<Option<String>> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if let Some(r) = reason
        && (r.chars().count() > HANDOVER_REASON_MAX || r.chars().any(char::is_control))
    {
        return Err(Error::invalid(format!(
            "a handover's reason is at most {HANDOVER_REASON_MAX} characters on one line"
        )));
    }
    Ok(reason.map(str::to_string))
}
