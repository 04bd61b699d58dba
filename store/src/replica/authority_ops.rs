//! Host records on a replica: issuing them (host), admitting verified ones (site import),
//! exporting a bundle, reading dossier heads and grants, closure and purge.
//!
//! Invariants: a record is admitted only if its `seq` is higher than the one stored for its
//! subject; a heartbeat moves the lease (`authority_as_of`) only when this replica holds what it
//! covers (`admit_heartbeat`, see `authority`), and no signed time later than the local clock
//! plus `MAX_SKEW` is admitted; a purge destroys the dossier's data key in its own durable
//! commit before any row is deleted (crypto-shredding), then leaves a tombstone and a purge
//! receipt.

use crate::kv::{ReadableTable, WriteTransaction};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::changes::Changed;
use super::representatives::NewRepresentative;
use super::sync::Queued;
use super::tables::*;
use super::{Replica, Role, lock_err};
use crate::authority::{self, AuthorityRecord, Bundle, Covers, Heartbeat, SignedRecord, Verified};
use crate::crypto::{Key, aad};
use crate::error::{Error, Result};
use crate::ids::{Ins, InsKind, SiteId};
use crate::model::{
    Closure, DossierHead, DossierStatus, EmergencyPrefs, Grant, HabilitationMatrix, HolderKind,
    Identity,
};

/// What `import_authority` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Records newer than what this replica held, now in force.
    pub admitted: usize,
    /// Records this replica already had, or older ones.
    pub unchanged: usize,
    /// Dossiers purged because the host closed them.
    pub purged: usize,
    /// The bundle's heartbeat dates this replica's authority cache (its lease) from now on: the
    /// host signed the bundle whole, and this replica holds every record of it. False for a
    /// bundle a site exported (it vouches for nothing), or one older than the last heartbeat.
    pub lease_renewed: bool,
}

/// What a heartbeat did to the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// It vouches for what this replica holds and is newer: the cache is current as of it.
    Renewed,
    /// It vouches for what this replica holds, and the cache was dated as late already.
    Unchanged,
    /// It vouches for something this replica does not hold (another site, a log head not
    /// reached, records missing), or for nothing (a format 1 heartbeat): not admitted.
    NotVouched,
}

/// What a heartbeat is checked against: where the site's pull stands, or a bundle's records.
pub(super) enum Holding<'a> {
    /// The site's pull cursor once the batch carrying the heartbeat is applied.
    Cursor(u64),
    /// The records of the bundle the heartbeat vouches for, admitted in this transaction.
    Records(&'a [Verified]),
}

/// A dossier as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DossierInfo {
    /// The signed head (or, for a dossier opened here that the host has not answered yet,
    /// the head this site gave it: see `local`).
    pub head: DossierHead,
    /// Host sequence of the head (0 for a dossier opened here, not yet answered).
    pub head_seq: u64,
    /// Emergency preferences (defaults when the host issued none).
    pub emergency: EmergencyPrefs,
    /// Grants, blocks and revocations.
    pub grants: Vec<Grant>,
    /// Number of documents held here.
    pub documents: usize,
    /// Host: the sites that purged their copy, with their receipts.
    pub purge_receipts: Vec<(SiteId, super::PurgeReceipt)>,
    /// Site: the dossier was opened here and the host has not answered yet.
    #[serde(default)]
    pub local: Option<super::LocalDossierState>,
}

/// What `create_dossier` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDossier {
    /// INS.
    pub ins: Ins,
    /// Kind of INS.
    pub ins_kind: InsKind,
    /// Identity traits.
    pub identity: Identity,
    /// Holder kind.
    pub holder: HolderKind,
    /// Legal representatives; the host gives them their ids (`R1`, …).
    pub representatives: Vec<NewRepresentative>,
    /// Mask every new document by default.
    pub mask_new_by_default: bool,
}

impl Replica {
    /// Reads and decodes the record stored under `subject`.
    pub(super) fn authority_get(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        subject: &[u8],
    ) -> Result<Option<Verified>> {
        match table.get(subject)? {
            Some(v) => {
                let signed = self.open_signed(subject, v.value())?;
                Ok(Some(authority::decode(&signed)?))
            }
            None => Ok(None),
        }
    }

    pub(super) fn open_signed(&self, subject: &[u8], sealed: &[u8]) -> Result<SignedRecord> {
        let plain = self
            .keys
            .registry
            .open(&aad(&[b"authority", subject]), sealed)
            .map_err(|_| Error::integrity("a stored signed record was altered"))?;
        Ok(postcard::from_bytes(&plain)?)
    }

    fn subject_of(&self, record: &AuthorityRecord) -> Vec<u8> {
        match record {
            AuthorityRecord::Dossier(h) => {
                subject_key(tag::DOSSIER, Some(&self.blind(&h.ins)), None)
            }
            AuthorityRecord::Grant(g) => subject_key(
                tag::GRANT,
                Some(&self.blind(&g.ins)),
                Some(&self.rpps_index(&g.rpps)),
            ),
            AuthorityRecord::Emergency { ins, .. } => {
                subject_key(tag::EMERGENCY, Some(&self.blind(ins)), None)
            }
            AuthorityRecord::Matrix(_) => subject_key(tag::MATRIX, None, None),
            AuthorityRecord::HeartbeatV1 { .. } | AuthorityRecord::Heartbeat(_) => {
                subject_key(tag::HEARTBEAT, None, None)
            }
            AuthorityRecord::Purged { ins, .. } => {
                subject_key(tag::DOSSIER, Some(&self.blind(ins)), None)
            }
            AuthorityRecord::RefusedCertificates(_) => {
                subject_key(tag::REFUSED_CERTIFICATES, None, None)
            }
        }
    }

    /// Stores a verified record if it is newer than the one held, and newer than the record
    /// that ended the dossier here if it was purged (so a replayed old bundle cannot bring a
    /// purged dossier back). Returns whether it was admitted, and, on a site, the dossier to
    /// purge with the sequence of the record that ended it.
    pub(super) fn admit(
        &self,
        txn: &WriteTransaction,
        signed: &SignedRecord,
        v: &Verified,
    ) -> Result<(bool, Option<(Ins, u64)>)> {
        if v.record.is_heartbeat() {
            // A heartbeat is never stored: `admit_heartbeat` checks what it covers.
            return Ok((false, None));
        }
        if let Some(ins) = v.record.ins() {
            let tombstones = txn.open_table(TOMBSTONES)?;
            let row = tombstones.get(&self.blind(ins))?;
            if let Some(t) = row {
                let receipt = postcard::from_bytes::<Tombstone>(t.value())?.receipt;
                if receipt.cause_seq >= v.seq {
                    return Ok((false, None));
                }
            }
        }
        let subject = self.subject_of(&v.record);
        let mut table = self.digested(txn, AUTHORITY)?;
        if let Some(old) = self.authority_get(&*table, &subject)?
            && old.seq >= v.seq
        {
            return Ok((false, None));
        }
        let sealed = self.keys.registry.seal(
            &aad(&[b"authority", &subject]),
            &postcard::to_stdvec(signed)?,
        )?;
        table.insert(subject.as_slice(), sealed.as_slice())?;
        drop(table);
        Self::registry_changed(txn)?;
        match &v.record {
            AuthorityRecord::Dossier(h) => {
                self.note_change(Changed::Dossier { ins: h.ins.clone() })?
            }
            AuthorityRecord::Purged { ins, .. } => {
                self.note_change(Changed::Dossier { ins: ins.clone() })?
            }
            AuthorityRecord::Grant(g) => {
                self.note_change(Changed::Grants { ins: g.ins.clone() })?
            }
            AuthorityRecord::Emergency { ins, .. } => {
                self.note_change(Changed::Grants { ins: ins.clone() })?
            }
            AuthorityRecord::Matrix(_)
            | AuthorityRecord::HeartbeatV1 { .. }
            | AuthorityRecord::Heartbeat(_)
            | AuthorityRecord::RefusedCertificates(_) => {}
        }
        Self::bump_meta_u64(txn, meta_key::AUTHORITY_VERSION, Some(v.seq))?;
        let site = self.config.role == Role::Site;
        let mut purge = None;
        if let AuthorityRecord::Purged { ins, .. } = &v.record
            && site
        {
            purge = Some((ins.clone(), v.seq));
        }
        if let AuthorityRecord::Dossier(head) = &v.record {
            let bi = self.blind(&head.ins);
            // The host answered for a dossier this site opened (`local_dossiers`).
            self.host_answered(txn, &bi, &head.ins)?;
            match head.status {
                DossierStatus::Active => {
                    self.ensure_dossier_key(txn, &bi)?;
                    self.digested(txn, TOMBSTONES)?.remove(&bi)?;
                }
                DossierStatus::Closed | DossierStatus::Purged => {
                    if site {
                        purge = Some((head.ins.clone(), v.seq));
                    }
                }
            }
        }
        Ok((true, purge))
    }

    /// Gives dossier `bi` a data key here, unless it has one.
    pub(super) fn ensure_dossier_key(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<()> {
        let mut keys = self.digested(txn, DOSSIER_KEYS)?;
        if keys.get(bi)?.is_none() {
            let k = Key::random()?;
            keys.insert(
                bi,
                self.keys
                    .master
                    .read()
                    .map_err(lock_err)?
                    .current
                    .wrap(&aad(&[b"dossier-key", bi]), &k)?
                    .as_slice(),
            )?;
        }
        Ok(())
    }

    /// Admits a heartbeat (DOMAIN §5 lease): refused with an error when it is dated later
    /// than the local clock plus `MAX_SKEW`; moves `authority_as_of` forward only when this
    /// replica holds what it covers (`holding`): a site's log up to the head it names (and
    /// this is that site), or every record of the bundle it vouches for.
    pub(super) fn admit_heartbeat(
        &self,
        txn: &WriteTransaction,
        v: &Verified,
        holding: Holding<'_>,
    ) -> Result<Lease> {
        authority::check_not_ahead(v, self.now())?;
        let AuthorityRecord::Heartbeat(Heartbeat { at, covers }) = &v.record else {
            // A format 1 heartbeat vouches for nothing.
            return Ok(Lease::NotVouched);
        };
        let holds = match (covers, holding) {
            (Covers::Log { site, log_head }, Holding::Cursor(cursor)) => {
                self.config.role == Role::Site
                    && *site == self.config.site_id
                    && *log_head == cursor
            }
            (Covers::Records { .. }, Holding::Records(records)) => self.holds_all(txn, records)?,
            _ => false,
        };
        if !holds {
            return Ok(Lease::NotVouched);
        }
        let at = (*at).max(0) as u64;
        let as_of = {
            let meta = txn.open_table(META)?;
            let v = meta.get(meta_key::AUTHORITY_AS_OF)?;
            super::read_u64(v.as_ref().map(|g| g.value()))
        };
        if at <= as_of {
            return Ok(Lease::Unchanged);
        }
        Self::bump_meta_u64(txn, meta_key::AUTHORITY_AS_OF, Some(at))?;
        // The host's time, signed, corrects a clock that once ran ahead (`lease_expired`).
        txn.open_table(META)?
            .insert(meta_key::CLOCK_SEEN, at.to_le_bytes().as_slice())?;
        Ok(Lease::Renewed)
    }

    /// True when every record of `records` is held in `txn` at its sequence or a later one, or
    /// was superseded here by the purge of its dossier (a tombstone at least as new).
    fn holds_all(&self, txn: &WriteTransaction, records: &[Verified]) -> Result<bool> {
        let table = txn.open_table(AUTHORITY)?;
        let tombstones = txn.open_table(TOMBSTONES)?;
        for v in records {
            if let Some(held) = self.authority_get(&table, &self.subject_of(&v.record))?
                && held.seq >= v.seq
            {
                continue;
            }
            let purged_since = match v.record.ins() {
                Some(ins) => match tombstones.get(&self.blind(ins))? {
                    Some(t) => {
                        postcard::from_bytes::<Tombstone>(t.value())?
                            .receipt
                            .cause_seq
                            >= v.seq
                    }
                    None => false,
                },
                None => false,
            };
            if !purged_since {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn signing_key(&self) -> Result<&ed25519_dalek::SigningKey> {
        self.signing.as_ref().ok_or_else(super::refusal::authority)
    }

    /// Host: signs a new record and puts it in force, with a trace entry.
    pub(super) fn issue(
        &self,
        record: AuthorityRecord,
        what: &str,
        reason: Option<&str>,
    ) -> Result<u64> {
        let txn = self.begin_write()?;
        let seq = self.issue_in(&txn, record.clone())?;
        txn.trace(vec![self.admin_entry(what, record.ins(), reason)]);
        txn.commit()?;
        if record.ins().is_none() {
            self.reload_held()?;
        }
        Ok(seq)
    }

    /// Host: a heartbeat at `at` covering `covers`, signed with the authority sequence read in
    /// `txn` (the snapshot what it covers was read from). Not stored: it only dates the
    /// receiving site's cache.
    pub(super) fn sign_heartbeat_in(
        &self,
        txn: &crate::kv::ReadTransaction,
        at: crate::time::Millis,
        covers: Covers,
    ) -> Result<SignedRecord> {
        let key = self.signing_key()?;
        let meta = txn.open_table(META)?;
        let seq = super::read_u64(
            meta.get(meta_key::AUTHORITY_SEQ)?
                .as_ref()
                .map(|g| g.value()),
        );
        authority::sign(
            key,
            seq,
            &AuthorityRecord::Heartbeat(Heartbeat { at, covers }),
        )
    }

    /// Host: signs a record with the next sequence and admits it, inside `txn`.
    pub(super) fn issue_in(&self, txn: &WriteTransaction, record: AuthorityRecord) -> Result<u64> {
        let key = self.signing_key()?;
        let seq = Self::bump_meta_u64(txn, meta_key::AUTHORITY_SEQ, None)?;
        let signed = authority::sign(key, seq, &record)?;
        let subject = self.subject_of(&record);
        self.admit(
            txn,
            &signed,
            &Verified {
                seq,
                record: record.clone(),
            },
        )?;
        self.keep_history(txn, &subject, seq, &record)?;
        self.host_authority_changed(txn, &record, &subject)?;
        Ok(seq)
    }

    pub(super) fn head(&self, ins: &Ins) -> Result<(DossierHead, u64)> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHORITY)?;
        match self.authority_get(
            &table,
            &subject_key(tag::DOSSIER, Some(&self.blind(ins)), None),
        )? {
            Some(Verified {
                seq,
                record: AuthorityRecord::Dossier(h),
            }) => Ok((h, seq)),
            Some(Verified {
                record: AuthorityRecord::Purged { .. },
                ..
            }) => Err(Error::not_found("this dossier was closed and purged")),
            Some(_) => Err(Error::integrity("a dossier record has the wrong kind")),
            None if txn.open_table(TOMBSTONES)?.get(&self.blind(ins))?.is_some() => {
                Err(Error::not_found("this dossier was closed and purged here"))
            }
            // A dossier opened here that the host has not answered yet.
            None => match self.local_head(&*txn, &self.blind(ins))? {
                Some(h) => Ok((h, 0)),
                None => Err(self.no_dossier()),
            },
        }
    }

    /// The refusal for a dossier this replica does not hold, with what helps here.
    pub(super) fn no_dossier(&self) -> Error {
        Error::not_found(match self.config.role {
            Role::Host => {
                "no such dossier (check the INS, or create it with `carnet dossier create`)"
            }
            Role::Site => {
                "no such dossier in this replica (check the INS; ask the host for it with \
                 `carnet pin INS`, open it here with `carnet dossier create … --as RPPS`, or \
                 import its records with `carnet authority import`)"
            }
        })
    }

    /// Host: creates a dossier. Refused if one exists for this INS.
    pub(crate) fn create_dossier(&self, d: NewDossier) -> Result<DossierHead> {
        if self.config.role == Role::Site {
            return Err(super::refusal::create_at_site());
        }
        self.signing_key()?;
        if self.head(&d.ins).is_ok() {
            return Err(Error::invalid("a dossier already exists for this INS"));
        }
        if self.purge_receipt(&d.ins)?.is_some() {
            return Err(Error::invalid(
                "this INS had a dossier that was closed and purged: creating a new one for it is not supported yet",
            ));
        }
        let head = self.new_head(d)?;
        self.issue(
            AuthorityRecord::Dossier(head.clone()),
            "dossier-create",
            None,
        )?;
        Ok(head)
    }

    /// The head of a new dossier, active from now, once what it says holds together.
    pub(super) fn new_head(&self, d: NewDossier) -> Result<DossierHead> {
        if d.identity.birth_name.trim().is_empty() || d.identity.first_names.trim().is_empty() {
            return Err(Error::invalid("birth name and first names are required"));
        }
        d.identity.check()?;
        let now = self.now();
        let mut head = DossierHead {
            ins: d.ins,
            ins_kind: d.ins_kind,
            identity: d.identity,
            holder: d.holder,
            representatives: Vec::new(),
            status: DossierStatus::Active,
            mask_new_by_default: d.mask_new_by_default,
            created_at: now,
            closure: None,
        };
        super::representatives::record(&mut head, &d.representatives, now)?;
        Ok(head)
    }

    /// The signed record under `bi`'s dossier subject in `table` (a head, or a `Purged`).
    pub(super) fn dossier_record(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        bi: &[u8; 32],
    ) -> Result<Option<AuthorityRecord>> {
        Ok(self
            .authority_get(table, &subject_key(tag::DOSSIER, Some(bi), None))?
            .map(|v| v.record))
    }

    /// Host: closes a dossier (the holder's request). Its documents are archived on the host
    /// and every access is refused; sites purge their copy when they receive the closure. With
    /// `deletion_requested`, the holder asked that it be deleted rather than archived: the host
    /// may purge it at once (`purge_dossier`).
    pub(crate) fn close_dossier(
        &self,
        ins: &Ins,
        reason: &str,
        deletion_requested: bool,
    ) -> Result<()> {
        self.signing_key()?;
        if reason.trim().is_empty() {
            return Err(Error::invalid("a closure needs a reason (--reason)"));
        }
        let (mut head, _) = self.head(ins)?;
        if head.status != DossierStatus::Active {
            return Err(Error::invalid("this dossier is already closed"));
        }
        let now = self.now();
        head.status = DossierStatus::Closed;
        head.closure = Some(Closure {
            at: now,
            reason: reason.to_string(),
            deletion_requested: deletion_requested.then_some(now),
        });
        self.issue(
            AuthorityRecord::Dossier(head),
            "dossier-close",
            Some(reason),
        )?;
        Ok(())
    }

    /// Host: the holder of a closed dossier asks that it be deleted rather than archived until
    /// its retention ends: the closed head is signed again with the time of the request, and the
    /// host may purge the dossier at once. Only while closed (not for an active dossier, nor a
    /// purged one); asking twice keeps the first request.
    pub(crate) fn request_deletion(&self, ins: &Ins) -> Result<Closure> {
        self.signing_key()?;
        let txn = self.begin_write()?;
        let mut head = self.ended_head(&txn, ins, "ask its deletion")?;
        let Some(closure) = head.closure.as_mut() else {
            return Err(Error::integrity("a closed dossier head has no closure"));
        };
        if closure.deletion_requested.is_some() {
            return Ok(closure.clone());
        }
        closure.deletion_requested = Some(self.now());
        let closure = closure.clone();
        self.issue_in(&txn, AuthorityRecord::Dossier(head))?;
        txn.trace(vec![self.admin_entry(
            "dossier-deletion-requested",
            Some(ins),
            None,
        )]);
        txn.commit()?;
        Ok(closure)
    }

    /// Host: reopens a closed dossier (DOMAIN §6: reopening brings the archive back). A new
    /// active head, with a higher sequence than the closure, is signed; the host kept the
    /// dossier's key, documents and grants while it was closed, and every site whose scope
    /// holds the dossier receives it again whole at its next pull (`LogItem::Enter`). The purge
    /// receipts sites returned for the closure are dropped with it: they answer a closure no
    /// longer in force. A purged dossier cannot be reopened: its key is destroyed.
    pub(crate) fn reopen_dossier(&self, ins: &Ins, reason: &str) -> Result<DossierHead> {
        self.signing_key()?;
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "reopening a dossier needs a reason (--reason)",
            ));
        }
        let txn = self.begin_write()?;
        let mut head = self.ended_head(&txn, ins, "reopen it")?;
        head.status = DossierStatus::Active;
        head.closure = None;
        let bi = self.blind(ins);
        self.issue_in(&txn, AuthorityRecord::Dossier(head.clone()))?;
        self.host_dossier_reopened(&txn, &bi)?;
        txn.trace(vec![self.admin_entry(
            "dossier-reopen",
            Some(ins),
            Some(reason),
        )]);
        txn.commit()?;
        Ok(head)
    }

    /// Host: the head of a closed dossier, for an act that needs one (`act`: what the caller
    /// does, for the message). An active dossier is refused as invalid input; a purged one as
    /// denied (DOMAIN §4 row 1: nothing is left of it to act on).
    fn ended_head(&self, txn: &WriteTransaction, ins: &Ins, act: &str) -> Result<DossierHead> {
        let purged = || Error::Denied {
            rule: 1,
            reason: format!(
                "dossier {} was purged: its key and documents are destroyed, so nobody can {act}",
                ins.matricule()
            ),
        };
        let bi = self.blind(ins);
        match self.dossier_record(&txn.open_table(AUTHORITY)?, &bi)? {
            Some(AuthorityRecord::Dossier(head)) => match head.status {
                DossierStatus::Closed => Ok(head),
                DossierStatus::Purged => Err(purged()),
                DossierStatus::Active => Err(Error::invalid(format!(
                    "dossier {} is not closed: only a closed dossier can {act}",
                    ins.matricule()
                ))),
            },
            Some(AuthorityRecord::Purged { .. }) => Err(purged()),
            Some(_) => Err(Error::integrity("a dossier record has the wrong kind")),
            None if txn.open_table(TOMBSTONES)?.get(&bi)?.is_some() => Err(purged()),
            None => Err(self.no_dossier()),
        }
    }

    /// Host: changes a dossier's emergency preferences; returns them as now in force.
    pub(crate) fn update_emergency(
        &self,
        ins: &Ins,
        change: impl FnOnce(&mut EmergencyPrefs),
    ) -> Result<EmergencyPrefs> {
        self.signing_key()?;
        let mut prefs = self.dossier(ins)?.emergency;
        change(&mut prefs);
        self.issue(
            AuthorityRecord::Emergency {
                ins: ins.clone(),
                prefs,
            },
            "emergency-preferences",
            None,
        )?;
        Ok(prefs)
    }

    /// Host: publishes a new habilitation matrix (its version must grow).
    pub(crate) fn set_matrix(&self, matrix: HabilitationMatrix) -> Result<()> {
        self.signing_key()?;
        if matrix.version <= self.matrix()?.version {
            return Err(Error::invalid("a new matrix must have a higher version"));
        }
        self.issue(AuthorityRecord::Matrix(matrix), "matrix", None)?;
        Ok(())
    }

    /// The dossier as held here.
    pub fn dossier(&self, ins: &Ins) -> Result<DossierInfo> {
        let (head, head_seq) = self.head(ins)?;
        let bi = self.blind(ins);
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHORITY)?;
        let emergency =
            match self.authority_get(&table, &subject_key(tag::EMERGENCY, Some(&bi), None))? {
                Some(Verified {
                    record: AuthorityRecord::Emergency { prefs, .. },
                    ..
                }) => prefs,
                _ => EmergencyPrefs::default(),
            };
        let grants = self.grants_in(&table, &bi)?;
        let documents = self.dossier_doc_ids(&txn, &bi)?.len();
        drop((table, txn));
        let purge_receipts = match self.config.role {
            Role::Host => self.site_purge_receipts(ins)?,
            Role::Site => Vec::new(),
        };
        let local = match self.config.role {
            Role::Site if head_seq == 0 => self.local_dossier_state(ins)?,
            _ => None,
        };
        Ok(DossierInfo {
            head,
            head_seq,
            emergency,
            grants,
            documents,
            purge_receipts,
            local,
        })
    }

    /// Every dossier head held here.
    pub fn dossiers(&self) -> Result<Vec<DossierInfo>> {
        let inses: Vec<Ins> = {
            let txn = self.begin_read()?;
            let table = txn.open_table(AUTHORITY)?;
            let mut out = Vec::new();
            for row in table.range([tag::DOSSIER].as_slice()..[tag::DOSSIER + 1].as_slice())? {
                let (k, v) = row?;
                if let AuthorityRecord::Dossier(h) =
                    authority::decode(&self.open_signed(k.value(), v.value())?)?.record
                {
                    out.push(h.ins);
                }
            }
            out
        };
        let local = match self.config.role {
            Role::Site => self.local_dossiers()?,
            Role::Host => Vec::new(),
        };
        inses
            .iter()
            .chain(&local)
            .map(|i| self.dossier(i))
            .collect()
    }

    /// Exports every record held as a bundle. On the host the bundle is signed whole: a
    /// heartbeat covering exactly these records, read in one snapshot (`Bundle::vouch`). A
    /// site's export relays the records it holds and vouches for nothing.
    pub fn export_authority(&self) -> Result<Bundle> {
        let host_key = self.host_key()?.ok_or_else(|| {
            Error::invalid("this replica has no host key: nothing signed to export")
        })?;
        // Read before the snapshot: everything committed before `at` is in it.
        let at = self.now();
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHORITY)?;
        let mut records = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            records.push(self.open_signed(k.value(), v.value())?);
        }
        let vouch = match self.signing {
            Some(_) => Some(self.sign_heartbeat_in(
                &txn,
                at,
                Covers::Records {
                    count: records.len() as u64,
                    digest: authority::records_digest(&records),
                },
            )?),
            None => None,
        };
        Ok(Bundle {
            format: authority::BUNDLE_FORMAT,
            host_key,
            records,
            vouch,
        })
    }

    /// Imports a bundle: every record must verify under the pinned host key (pinned from the
    /// bundle at the first import when none was given at init), and a bundle the host signed
    /// whole must hold exactly the records it signed. Any bad record, a record removed or
    /// added, or a signed time ahead of the local clock (`MAX_SKEW`) refuses the whole bundle
    /// and changes nothing. The bundle's heartbeat renews the lease once every record is held.
    pub fn import_authority(&self, bundle: &Bundle) -> Result<ImportReport> {
        let bundle_key = VerifyingKey::from_bytes(&bundle.host_key)
            .map_err(|_| Error::integrity("the bundle's host key is malformed"))?;
        // Imports are serialised by the write transaction; the pin is read under it.
        let txn = self.begin_write()?;
        let pinned = *self.host_key.read().map_err(lock_err)?;
        let key = match pinned {
            Some(k) if k != bundle_key => {
                return Err(Error::integrity(
                    "the bundle is signed by a different host than the one this replica trusts",
                ));
            }
            Some(k) => k,
            None => bundle_key,
        };
        let verified = bundle.verify(&key)?;
        let now = self.now();
        for v in verified
            .records
            .iter()
            .chain(verified.vouch.iter().map(|(v, _)| v))
        {
            authority::check_not_ahead(v, now)?;
        }
        let mut report = ImportReport::default();
        let mut purges = Vec::new();
        if pinned.is_none() {
            self.pin_host_key(&txn, key.to_bytes())?;
        }
        for (signed, v) in bundle.records.iter().zip(&verified.records) {
            let (admitted, purge) = self.admit(&txn, signed, v)?;
            if admitted {
                report.admitted += 1
            } else {
                report.unchanged += 1
            }
            purges.extend(purge);
        }
        if let Some((v, _)) = &verified.vouch {
            match self.admit_heartbeat(&txn, v, Holding::Records(&verified.records))? {
                Lease::Renewed => {
                    report.admitted += 1;
                    report.lease_renewed = true;
                }
                Lease::Unchanged | Lease::NotVouched => report.unchanged += 1,
            }
        }
        txn.trace(vec![self.admin_entry("authority-import", None, None)]);
        txn.commit()?;
        if pinned.is_none() {
            *self.host_key.write().map_err(lock_err)? = Some(key);
        }
        self.reload_held()?;
        for (ins, cause_seq) in purges {
            if self.purge_rows(&ins, cause_seq)? {
                report.purged += 1;
            }
        }
        Ok(report)
    }

    fn pin_host_key(&self, txn: &WriteTransaction, key: [u8; 32]) -> Result<()> {
        let mut meta = txn.open_table(META)?;
        let mut keyring: super::Keyring = postcard::from_bytes(
            meta.get(meta_key::KEYRING)?
                .ok_or_else(|| Error::integrity("keyring missing"))?
                .value(),
        )?;
        keyring.host_key = Some(key);
        meta.insert(meta_key::KEYRING, postcard::to_stdvec(&keyring)?.as_slice())?;
        Ok(())
    }

    /// Host: purges a closed dossier, then publishes a signed `Purged` record so that sites
    /// that missed the closure purge too. Only once the retention has ended (`RETENTION_YEARS`
    /// after the closure, by this replica's clock) or when the signed closure records the
    /// holder's deletion request (DOMAIN §6); before that it is refused (denied, traced) with
    /// the date the retention ends, and nothing changes.
    pub(crate) fn purge_dossier(&self, ins: &Ins) -> Result<()> {
        self.signing_key()?;
        let (head, seq) = self.head(ins)?;
        if head.status == DossierStatus::Active {
            return Err(Error::invalid("close the dossier before purging it"));
        }
        let closure = head
            .closure
            .as_ref()
            .ok_or_else(|| Error::integrity("a closed dossier head has no closure"))?;
        if !closure.purge_allowed(self.now()) {
            let reason = format!(
                "dossier {} was closed on {} and is archived until {} ({} years): it may be purged before then only if the holder asks its deletion (`carnet dossier request-deletion`)",
                ins.matricule(),
                crate::time::format_date(closure.at),
                crate::time::format_date(closure.retention_ends()),
                crate::model::RETENTION_YEARS,
            );
            let mut refused = self.admin_entry("dossier-purge-refused", Some(ins), None);
            refused.allowed = false;
            refused.outcome_reason = reason.clone();
            let txn = self.begin_write()?;
            txn.trace(vec![refused]);
            txn.commit()?;
            return Err(Error::Denied { rule: 0, reason });
        }
        self.purge_rows(ins, seq)?;
        Ok(())
    }

    /// Site: finishes purges an interrupted run left behind (a closed or purged head still
    /// held). Called at open; a no-op when there is none.
    pub(super) fn resume_purges(&self) -> Result<()> {
        if self.config.role != Role::Site {
            return Ok(());
        }
        let mut due = Vec::new();
        {
            let txn = self.begin_read()?;
            let table = txn.open_table(AUTHORITY)?;
            for row in table.range([tag::DOSSIER].as_slice()..[tag::DOSSIER + 1].as_slice())? {
                let (k, v) = row?;
                let verified = authority::decode(&self.open_signed(k.value(), v.value())?)?;
                match verified.record {
                    AuthorityRecord::Dossier(h) if h.status != DossierStatus::Active => {
                        due.push((h.ins, verified.seq));
                    }
                    AuthorityRecord::Purged { ins, .. } => due.push((ins, verified.seq)),
                    _ => {}
                }
            }
        }
        {
            let txn = self.begin_read()?;
            for row in txn.open_table(PENDING_PURGES)?.iter()? {
                let (k, v) = row?;
                let (k, v) = (k.value(), v.value());
                let plain = self
                    .keys
                    .registry
                    .open(&pending_purge_aad(k), v)
                    .map_err(|_| Error::integrity("a pending purge was altered"))?;
                let ins = Ins::parse(
                    std::str::from_utf8(&plain).map_err(|_| Error::integrity("pending purge"))?,
                )?;
                due.push((ins, 0));
            }
        }
        for (ins, seq) in due {
            self.purge_rows(&ins, seq)?;
        }
        Ok(())
    }

    /// Destroys the dossier's data key (own commit), then its rows; leaves a tombstone whose
    /// receipt names `cause_seq`, the host record that ended the dossier. Returns whether this
    /// replica held the dossier.
    pub(super) fn purge_rows(&self, ins: &Ins, cause_seq: u64) -> Result<bool> {
        let bi = self.blind(ins);
        let txn = self.begin_write()?;
        let held = txn.open_table(DOSSIER_KEYS)?.get(&bi)?.is_some();
        if held && self.config.role == Role::Site {
            // Never lose a document the user was told is stored: keep it before the key goes.
            let reason = if cause_seq == 0 {
                "the dossier left this site's scope before the host received it"
            } else {
                "the dossier was closed before the host received it"
            };
            self.quarantine_pending(&txn, &bi, reason)?;
        }
        self.digested(&txn, DOSSIER_KEYS)?.remove(&bi)?;
        Self::registry_changed(&txn)?;
        txn.trace(vec![self.admin_entry(
            "dossier-key-destroyed",
            Some(ins),
            None,
        )]);
        txn.commit()?;

        let txn = self.begin_write()?;
        // The write lock is held: this snapshot is what `txn` starts from.
        let ids = self.dossier_doc_ids(&*self.begin_read()?, &bi)?;
        {
            for doc in &ids {
                self.forget_document(&txn, ins, doc)?;
            }
            // The feed keeps one entry of a purged dossier: its purge (the host's, below,
            // through its `Purged` record).
            self.forget_changes(&txn, &bi)?;
            if self.signing.is_none() {
                self.note_change(Changed::Dossier { ins: ins.clone() })?;
            }
            txn.open_table(UNIQUE_IDS)?.retain_in(
                bi.as_slice()..=unique_key(&bi, &[0xff; 32]).as_slice(),
                |_, _| false,
            )?;
            let mut auth = self.digested(&txn, AUTHORITY)?;
            for t in [tag::DOSSIER, tag::GRANT, tag::EMERGENCY] {
                let prefix = subject_key(t, Some(&bi), None);
                let keys: Vec<Vec<u8>> = auth
                    .range(prefix.as_slice()..)?
                    .map(|r| r.map(|(k, _)| k.value().to_vec()))
                    .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
                    .collect::<std::result::Result<_, _>>()?;
                for k in keys {
                    auth.remove(k.as_slice())?;
                }
            }
            if self.config.role == Role::Host {
                self.forget_emergencies(&txn, &bi)?;
                self.forget_notifications(&txn, &bi)?;
            }
            if self.signing.is_some() {
                // The host replaces the head by a signed `Purged` record in the same commit, so
                // a site that missed the closure still learns of the purge.
                drop(auth);
                self.issue_in(
                    &txn,
                    AuthorityRecord::Purged {
                        ins: ins.clone(),
                        at: self.now(),
                    },
                )?;
            }
            Self::registry_changed(&txn)?;
            let receipt = PurgeReceipt {
                at: self.now(),
                cause_seq,
            };
            let tombstone = Tombstone {
                receipt,
                sealed_ins: self
                    .keys
                    .registry
                    .seal(&tombstone_aad(&bi), ins.matricule().as_bytes())?,
            };
            self.digested(&txn, TOMBSTONES)?
                .insert(&bi, postcard::to_stdvec(&tombstone)?.as_slice())?;
            if self.config.role == Role::Site && held {
                // The host records that this site no longer holds the dossier.
                self.push_outbox(&txn, |seq| {
                    Ok(OutboxItem::PurgeReceipt {
                        sealed_ins: self.seal_queued(
                            seq,
                            Queued::PurgeReceipt,
                            &postcard::to_stdvec(&receipt)?,
                            ins.matricule().as_bytes(),
                        )?,
                        receipt,
                    })
                })?;
            }
            if self.config.role == Role::Site {
                // A dossier opened here goes with its held changes (quarantined above).
                self.forget_local_dossier(&txn, &bi)?;
            }
            self.digested(&txn, PENDING_PURGES)?.remove(&bi)?;
            txn.open_table(RELAYED_LEASES)?.remove(&bi)?;
            txn.trace(vec![self.admin_entry("dossier-purged", Some(ins), None)]);
        }
        txn.commit()?;
        Ok(held)
    }

    /// Host: the purge receipts sites returned for a dossier.
    pub(crate) fn site_purge_receipts(&self, ins: &Ins) -> Result<Vec<(SiteId, PurgeReceipt)>> {
        let bi = self.blind(ins);
        let txn = self.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(SITE_RECEIPTS)?.range(bi.as_slice()..)? {
            let (k, v) = row?;
            let Some(site) = k.value().strip_prefix(bi.as_slice()) else {
                break;
            };
            let site: [u8; 4] = site
                .try_into()
                .map_err(|_| Error::integrity("receipt key"))?;
            out.push((
                SiteId(u32::from_be_bytes(site)),
                postcard::from_bytes(v.value())?,
            ));
        }
        Ok(out)
    }

    /// The purge receipt of a dossier purged here, if any.
    pub fn purge_receipt(&self, ins: &Ins) -> Result<Option<PurgeReceipt>> {
        let txn = self.begin_read()?;
        let t = txn.open_table(TOMBSTONES)?;
        let row = t.get(&self.blind(ins))?;
        match row {
            Some(v) => Ok(Some(postcard::from_bytes::<Tombstone>(v.value())?.receipt)),
            None => Ok(None),
        }
    }

    /// True when this replica still holds a data key for the dossier.
    pub fn has_dossier_key(&self, ins: &Ins) -> Result<bool> {
        let txn = self.begin_read()?;
        Ok(txn
            .open_table(DOSSIER_KEYS)?
            .get(&self.blind(ins))?
            .is_some())
    }
}
