//! The host's review of emergencies (DOMAIN §4 rows 7–8): every break-glass or centre 15 access
//! a site traced, and every emergency fetch the host decided, is judged again at the host with
//! `policy::decide` against what was in force *at the time of the access*, and kept in a small
//! index (`EMERGENCIES`) that `audit emergencies` lists and `audit review` completes, so neither
//! decrypts the whole trace.
//!
//! **What was in force at a time.** The host keeps, beside the newest record of each subject
//! (`AUTHORITY`), the history of the dossier heads, grants (blocks included) and emergency
//! preferences it issued, each with the host's time of issue (`AUTHORITY_HISTORY`). The record
//! in force at `T` is the last one issued at or before `T`; before the first, the law's default
//! (no opposition, no grant).
//!
//! **The time of an access.** A site dates its entries with its own clock, which a rogue site
//! sets as it likes. The host bounds it from below: at each session the site says how long its
//! trace is (`Hello`), and once the host holds that much, it records the contact
//! (`TRACE_CONTACTS`: that head and the host's time of the hello). An entry after that head was
//! made after that time, so the host judges it at `max(the site's date, that time)`, and never
//! later than its own clock. A site cannot antedate an access to before its last contact with
//! the host; what it did between two contacts it can misdate within that window (THREAT-MODEL).
//!
//! Invariants: the judgement uses the host's records, registry and documents, never what the
//! entry claims of them (the site's mode, actor, reason and date are the request judged; its
//! outcome, rule and authority version are only shown); an entry is indexed in the transaction
//! that stores it, once; index rows are sealed under the audit key, bound to their id, and carry
//! in clear only the dossier's blind index (to drop them at purge) and whether they were
//! reviewed; a review is recorded once (a second is refused: the first reviewer's conclusion
//! stands, and is traced).

use crate::kv::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Generation, Replica, Role};
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::authority::AuthorityRecord;
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, SiteId};
use crate::model::{AccessMode, EmergencyPrefs};
use crate::policy::{self, Decision, DocView, DossierView, Request, Who};
use crate::time::Millis;

/// An emergency access as the host judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emergency {
    /// Its id in the index.
    pub id: u64,
    /// The site that decided it (the host for an emergency fetch).
    pub site: SiteId,
    /// For the site whose trace it came in: the entry's sequence there.
    pub trace_seq: Option<u64>,
    /// When, as the deciding replica dated it.
    pub at: Millis,
    /// The time the host judged it at (`at`, or later when the site dated it before its last
    /// contact with the host).
    pub judged_at: Millis,
    /// Who.
    pub actor: TraceActor,
    /// The action (`read`, `list`, `write`…).
    pub action: String,
    /// Break-glass or centre 15.
    pub mode: AccessMode,
    /// The dossier's matricule.
    pub ins: String,
    /// The document, for a document action.
    pub doc: Option<DocId>,
    /// The reason the professional gave.
    pub stated_reason: Option<String>,
    /// Decided by a site from its cached records (not by the host).
    pub decided_offline: bool,
    /// The authority version the site said it decided with (shown, not trusted).
    pub claimed_authority_version: u64,
    /// The deciding replica allowed it.
    pub allowed: bool,
    /// The host's judgement: allowed where allowed, or refused anyway.
    pub conforming: bool,
    /// The row of DOMAIN §4 that decided the host's judgement.
    pub rule: u8,
    /// The host's reason.
    pub finding: String,
    /// The review, once done.
    pub review: Option<Review>,
}

/// A person's review of an emergency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// When.
    pub at: Millis,
    /// Who reviewed (`operator:NAME` or `dpo:NAME`).
    pub by: String,
    /// Their note.
    pub note: String,
}

/// A row of `EMERGENCIES`: the dossier's blind index and the review flag in clear, the rest
/// sealed.
#[derive(Serialize, Deserialize)]
pub(super) struct IndexRow {
    pub(super) bi: [u8; 32],
    pub(super) reviewed: bool,
    #[serde(with = "serde_bytes")]
    pub(super) sealed: Vec<u8>,
}

/// A row of `AUTHORITY_HISTORY`, sealed: the host's time of issue and the record.
#[derive(Serialize, Deserialize)]
struct Issued {
    at: Millis,
    record: AuthorityRecord,
}

/// The last contact of a site whose trace the host then held whole (`TRACE_CONTACTS`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct TraceContact {
    /// The site's trace head at the contact.
    head: u64,
    /// The host's time of the contact.
    at: Millis,
}

/// Key of `DOSSIER_EMERGENCIES`: the dossier's blind index, then the emergency's id.
fn dossier_emergency_key(bi: &[u8; 32], id: u64) -> Vec<u8> {
    let mut key = bi.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The emergency id at the end of a `DOSSIER_EMERGENCIES` key.
fn emergency_id_of(key: &[u8]) -> Result<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::integrity("a key of the emergencies' dossier index is cut short"))
}

/// Associated data of an index row.
pub(super) fn emergency_aad(id: u64) -> Vec<u8> {
    aad(&[b"emergency", &id.to_be_bytes()])
}

/// Associated data of a history row, bound to its key.
pub(super) fn history_aad(key: &[u8]) -> Vec<u8> {
    aad(&[b"authority-history", key])
}

/// `subject ‖ seq (u64 BE)`: a key of `AUTHORITY_HISTORY`.
fn history_key(subject: &[u8], seq: u64) -> Vec<u8> {
    let mut k = subject.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An entry the host reviews: an access in break-glass or centre 15 mode on a dossier.
pub(super) fn is_emergency(e: &AuditEntry) -> bool {
    e.mode != AccessMode::Normal && matches!(e.action, TraceAction::Access(_)) && e.ins.is_some()
}

/// A reviewer as `--as` names them: `operator:NAME` or `dpo:NAME`.
fn check_reviewer(by: &str) -> Result<()> {
    let name = by
        .strip_prefix("operator:")
        .or_else(|| by.strip_prefix("dpo:"));
    match name {
        Some(n) if !n.trim().is_empty() && n.len() <= 64 => Ok(()),
        _ => Err(Error::invalid(
            "a review is made by the host operator or the data protection officer: \
             --as operator:NAME or --as dpo:NAME",
        )),
    }
}

impl Replica {
    /// Host: keeps `record`, issued now with `seq`, in the history of its subject, when it is
    /// one an access is judged against later (a dossier head, a grant, emergency preferences).
    pub(super) fn keep_history(
        &self,
        txn: &WriteTransaction,
        subject: &[u8],
        seq: u64,
        record: &AuthorityRecord,
    ) -> Result<()> {
        if !matches!(
            record,
            AuthorityRecord::Dossier(_)
                | AuthorityRecord::Grant(_)
                | AuthorityRecord::Emergency { .. }
        ) {
            return Ok(());
        }
        let key = history_key(subject, seq);
        let plain = postcard::to_stdvec(&Issued {
            at: self.now(),
            record: record.clone(),
        })?;
        let sealed = self.keys.registry.seal(&history_aad(&key), &plain)?;
        txn.open_table(AUTHORITY_HISTORY)?
            .insert(key.as_slice(), sealed.as_slice())?;
        Ok(())
    }

    /// The record of `subject` in force at `at`: the last issued at or before it.
    fn in_force_at(
        &self,
        txn: &ReadTransaction,
        subject: &[u8],
        at: Millis,
    ) -> Result<Option<AuthorityRecord>> {
        let table = match txn.open_table(AUTHORITY_HISTORY) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (low, high) = (history_key(subject, 0), history_key(subject, u64::MAX));
        for row in table.range(low.as_slice()..=high.as_slice())?.rev() {
            let (k, v) = row?;
            let plain = self
                .keys
                .registry
                .open(&history_aad(k.value()), v.value())
                .map_err(|_| Error::integrity("a row of the authority history was altered"))?;
            let issued: Issued = postcard::from_bytes(&plain)?;
            if issued.at <= at {
                return Ok(Some(issued.record));
            }
        }
        Ok(None)
    }

    /// Host: records that `site`, at the host's time `at`, had a trace of `head` entries, all
    /// held here: its later entries were made after `at`.
    pub(crate) fn record_trace_contact(&self, site: SiteId, head: u64, at: Millis) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        let txn = self.begin_write()?;
        txn.open_table(TRACE_CONTACTS)?.insert(
            site.0,
            postcard::to_stdvec(&TraceContact { head, at })?.as_slice(),
        )?;
        txn.commit()
    }

    fn trace_contact(&self, txn: &ReadTransaction, site: SiteId) -> Result<TraceContact> {
        let table = match txn.open_table(TRACE_CONTACTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(TraceContact::default()),
            Err(e) => return Err(e.into()),
        };
        let row = table.get(site.0)?;
        Ok(match row {
            Some(v) => postcard::from_bytes(v.value())?,
            None => TraceContact::default(),
        })
    }

    /// Host: judges the emergencies among `origin`'s trace entries `(seq, entry)` (read before
    /// they are stored); `store_judged` indexes those the trace actually takes.
    pub(super) fn judge_site_emergencies<'e>(
        &self,
        origin: SiteId,
        entries: impl Iterator<Item = (u64, &'e AuditEntry)>,
    ) -> Result<Vec<Emergency>> {
        let mut out = Vec::new();
        let mut snapshot = None;
        for (seq, e) in entries.filter(|(_, e)| is_emergency(e)) {
            if snapshot.is_none() {
                snapshot = Some(self.snapshot()?);
            }
            let Some((txn, generation)) = snapshot.as_ref() else {
                continue;
            };
            let contact = self.trace_contact(txn, origin)?;
            let floor = if seq > contact.head { contact.at } else { 0 };
            let judged_at = e.at.max(floor).min(self.now());
            let d = self.judge(txn, *generation, origin, e, judged_at)?;
            let mut emergency = Self::emergency_of(
                origin,
                Some(seq),
                e,
                judged_at,
                (d.allow, d.rule.0, d.reason),
            );
            if judged_at != e.at {
                emergency.finding = format!(
                    "{} (judged at the host's time of the site's last contact: the site dated \
                     the access before it)",
                    emergency.finding
                );
            }
            out.push(emergency);
        }
        Ok(out)
    }

    /// The host's decision on `e` with what was in force at `at`.
    fn judge(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        origin: SiteId,
        e: &AuditEntry,
        at: Millis,
    ) -> Result<Decision> {
        let refused = |reason| Decision {
            allow: false,
            rule: policy::Rule(12),
            reason,
        };
        let (TraceAction::Access(action), Some(matricule)) = (&e.action, &e.ins) else {
            return Ok(refused("not an access to a dossier"));
        };
        let Ok(ins) = Ins::parse(matricule) else {
            return Ok(refused("the entry names no valid dossier"));
        };
        let bi = self.blind(&ins);
        let head = match self.in_force_at(txn, &subject_key(tag::DOSSIER, Some(&bi), None), at)? {
            Some(AuthorityRecord::Dossier(h)) => h,
            _ => return Ok(refused("the host held no such dossier at that time")),
        };
        let TraceActor::Professional { rpps, .. } = &e.actor else {
            return Ok(refused("an emergency access is made by a professional"));
        };
        let pro = self.rpps_index(rpps);
        let bound = txn
            .open_table(SITE_PROS)?
            .get(site_key(origin.0, &pro).as_slice())?
            .is_some();
        let registered = self.registered(&txn.open_table(PROS)?, &pro)?;
        let who = match registered {
            Some(p) if bound || origin == self.config.site_id => Who::Professional {
                rpps: rpps.clone(),
                profession: p.profession,
            },
            _ => Who::Unidentified,
        };
        let (grant, grant_ended) =
            match self.in_force_at(txn, &subject_key(tag::GRANT, Some(&bi), Some(&pro)), at)? {
                Some(AuthorityRecord::Grant(g)) => {
                    (Some(g.for_decision(at)), g.ended(at).is_some())
                }
                _ => (None, false),
            };
        let emergency =
            match self.in_force_at(txn, &subject_key(tag::EMERGENCY, Some(&bi), None), at)? {
                Some(AuthorityRecord::Emergency { prefs, .. }) => prefs,
                _ => EmergencyPrefs::default(),
            };
        let doc = match e.doc {
            Some(id) => self.load_doc(txn, generation, &id).ok().map(|(_, _, m)| m),
            None => None,
        };
        let state = doc.as_ref().map(|d| d.state());
        let view = doc.as_ref().zip(state.as_ref()).map(|(d, s)| DocView {
            author: &d.facts.author,
            flags: s.flags,
            type_code: &d.facts.type_code,
        });
        let matrix = self.matrix()?;
        Ok(policy::decide(
            &Request {
                who: &who,
                action: *action,
                mode: e.mode,
                reason: e.stated_reason.as_deref(),
                doc: view,
                new_class: None,
            },
            &DossierView {
                status: head.status,
                holder: head.holder_at(at),
                representatives: &head.representatives,
                grant,
                grant_ended,
                emergency,
                matrix: &matrix,
                lease_expired: false,
            },
        ))
    }

    /// What the index keeps of `e`, judged `(allowed, rule, reason)` at `judged_at`.
    fn emergency_of(
        site: SiteId,
        trace_seq: Option<u64>,
        e: &AuditEntry,
        judged_at: Millis,
        (allow, rule, reason): (bool, u8, &str),
    ) -> Emergency {
        // Refused where it was decided: nothing was read, whatever the host finds.
        let conforming = !e.allowed || allow;
        Emergency {
            id: 0,
            site,
            trace_seq,
            at: e.at,
            judged_at,
            actor: e.actor.clone(),
            action: e.action.name(),
            mode: e.mode,
            ins: e.ins.clone().unwrap_or_default(),
            doc: e.doc,
            stated_reason: e.stated_reason.clone(),
            decided_offline: e.decided_offline,
            claimed_authority_version: e.authority_version,
            allowed: e.allowed,
            conforming,
            rule,
            finding: format!(
                "{}: rule {rule}: {reason}",
                if conforming {
                    "conforming"
                } else {
                    "NOT conforming"
                },
            ),
            review: None,
        }
    }

    /// Host: indexes, in `txn`, the emergencies judged among entries now stored.
    pub(super) fn store_judged(
        &self,
        txn: &WriteTransaction,
        judged: Vec<Emergency>,
        stored: impl Fn(u64) -> bool,
    ) -> Result<()> {
        for e in judged {
            if e.trace_seq.is_some_and(&stored) {
                self.index_emergency(txn, e)?;
            }
        }
        Ok(())
    }

    /// Host: indexes, in `txn`, the emergencies among entries it decided itself (an emergency
    /// fetch, a break-glass read at the host): conforming by construction, recorded all the
    /// same, with the host's own decision.
    pub(super) fn index_own_emergencies(
        &self,
        txn: &WriteTransaction,
        entries: &[AuditEntry],
    ) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        for e in entries.iter().filter(|e| is_emergency(e)) {
            let judged = (e.allowed, e.rule, e.outcome_reason.as_str());
            self.index_emergency(txn, Self::emergency_of(e.origin, None, e, e.at, judged))?;
        }
        Ok(())
    }

    fn index_emergency(&self, txn: &WriteTransaction, mut e: Emergency) -> Result<()> {
        let mut table = self.digested(txn, EMERGENCIES)?;
        let id = match table.last()? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        e.id = id;
        let bi = Ins::parse(&e.ins).map(|i| self.blind(&i))?;
        let row = self.seal_emergency(&e, bi)?;
        table.insert(id, row.as_slice())?;
        drop(table);
        if e.review.is_none() {
            self.digested(txn, PENDING_EMERGENCIES)?.insert(id, ())?;
        }
        self.digested(txn, DOSSIER_EMERGENCIES)?
            .insert(dossier_emergency_key(&bi, id).as_slice(), ())?;
        self.notify_emergency(txn, &e)
    }

    fn seal_emergency(&self, e: &Emergency, bi: [u8; 32]) -> Result<Vec<u8>> {
        let sealed = self
            .keys
            .audit
            .seal(&emergency_aad(e.id), &postcard::to_stdvec(e)?)?;
        Ok(postcard::to_stdvec(&IndexRow {
            bi,
            reviewed: e.review.is_some(),
            sealed,
        })?)
    }

    fn open_emergency(&self, id: u64, row: &[u8]) -> Result<(IndexRow, Emergency)> {
        let row: IndexRow = postcard::from_bytes(row)?;
        let plain = self
            .keys
            .audit
            .open(&emergency_aad(id), &row.sealed)
            .map_err(|_| Error::integrity(format!("emergency {id} in the index was altered")))?;
        let e: Emergency = postcard::from_bytes(&plain)?;
        if e.id != id || e.review.is_some() != row.reviewed {
            return Err(Error::integrity(format!(
                "emergency {id} in the index was altered"
            )));
        }
        Ok((row, e))
    }

    /// Host: the emergencies judged here, in id order; with `pending`, only those not reviewed
    /// (the others are not opened).
    pub(crate) fn emergencies(&self, pending: bool) -> Result<Vec<Emergency>> {
        if self.config.role != Role::Host {
            return Err(super::refusal::emergencies_at_site());
        }
        let txn = self.begin_read()?;
        let table = match txn.open_table(EMERGENCIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        if pending {
            for row in txn.open_table(PENDING_EMERGENCIES)?.iter()? {
                let id = row?.0.value();
                let found = table.get(id)?.ok_or_else(|| {
                    Error::integrity(format!("emergency {id} is pending but not in the index"))
                })?;
                out.push(self.open_emergency(id, found.value())?.1);
            }
            return Ok(out);
        }
        for row in table.iter()? {
            let (k, v) = row?;
            out.push(self.open_emergency(k.value(), v.value())?.1);
        }
        Ok(out)
    }

    /// Host: records `by`'s review of emergency `id` with `note`, traced. A second review of
    /// the same emergency is refused.
    pub(crate) fn review_emergency(&self, id: u64, by: &str, note: &str) -> Result<Emergency> {
        if self.config.role != Role::Host {
            return Err(super::refusal::emergencies_at_site());
        }
        check_reviewer(by)?;
        if note.trim().is_empty() || note.len() > 4096 {
            return Err(Error::invalid(
                "a review needs a note (--note, at most 4096 bytes)",
            ));
        }
        let txn = self.begin_write()?;
        let (row, mut e) = {
            let table = txn.open_table(EMERGENCIES)?;
            let found = table.get(id)?;
            match found {
                Some(v) => self.open_emergency(id, v.value())?,
                None => return Err(Error::not_found(format!("no emergency {id} at this host"))),
            }
        };
        if let Some(r) = &e.review {
            return Err(Error::invalid(format!(
                "emergency {id} was already reviewed by {} : a review is not rewritten",
                r.by
            )));
        }
        e.review = Some(Review {
            at: self.now(),
            by: by.to_string(),
            note: note.to_string(),
        });
        let sealed = self.seal_emergency(&e, row.bi)?;
        self.digested(&txn, EMERGENCIES)?
            .insert(id, sealed.as_slice())?;
        self.digested(&txn, PENDING_EMERGENCIES)?.remove(id)?;
        let ins = Ins::parse(&e.ins).ok();
        txn.trace(vec![self.admin_entry(
            "emergency-reviewed",
            ins.as_ref(),
            Some(&format!("emergency {id} reviewed by {by}: {note}")),
        )]);
        txn.commit()?;
        Ok(e)
    }

    /// Host: drops, in `txn`, the authority history and the emergencies of the dossier `bi`
    /// (its purge).
    pub(super) fn forget_emergencies(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<()> {
        let mut history = txn.open_table(AUTHORITY_HISTORY)?;
        for t in [tag::DOSSIER, tag::GRANT, tag::EMERGENCY] {
            let prefix = subject_key(t, Some(bi), None);
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xff; 41]);
            history.retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)?;
        }
        let (first, last) = (
            dossier_emergency_key(bi, 0),
            dossier_emergency_key(bi, u64::MAX),
        );
        let ids: Vec<u64> = txn
            .open_table(DOSSIER_EMERGENCIES)?
            .range(first.as_slice()..=last.as_slice())?
            .map(|row| emergency_id_of(row?.0.value()))
            .collect::<Result<_>>()?;
        let (mut index, mut pending) = (
            self.digested(txn, EMERGENCIES)?,
            self.digested(txn, PENDING_EMERGENCIES)?,
        );
        for id in ids {
            index.remove(id)?;
            pending.remove(id)?;
        }
        self.digested(txn, DOSSIER_EMERGENCIES)?
            .remove_in(&first, &last)?;
        Ok(())
    }

    /// At open, in `txn`: a host made before `PENDING_EMERGENCIES` and `DOSSIER_EMERGENCIES`
    /// existed gets them, from the clear part of each index row (nothing is opened). Written
    /// directly: the caller sums the tables.
    pub(super) fn fill_emergency_indexes(&self, txn: &WriteTransaction) -> Result<()> {
        let rows: Vec<(u64, IndexRow)> = txn
            .open_table(EMERGENCIES)?
            .iter()?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value(), postcard::from_bytes::<IndexRow>(v.value())?))
            })
            .collect::<Result<_>>()?;
        let mut pending = txn.open_table(PENDING_EMERGENCIES)?;
        let mut by_dossier = txn.open_table(DOSSIER_EMERGENCIES)?;
        for (id, row) in rows {
            if !row.reviewed {
                pending.insert(id, ())?;
            }
            by_dossier.insert(dossier_emergency_key(&row.bi, id).as_slice(), ())?;
        }
        Ok(())
    }
}
