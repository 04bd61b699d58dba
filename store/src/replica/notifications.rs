//! The host's notifications (DOMAIN §4, §6): the holder — or, while the dossier has
//! representatives in force, those representatives — is told of a break-glass or centre 15
//! access (and so is the médecin traitant, when one is designated), of the first access by a
//! professional to the dossier, and of a document that was hidden from them and is announced.
//! `notifications list` reads them, the host daemon spools them for a messaging gateway, and
//! the holder's export carries them.
//!
//! Invariants:
//! - host only; a notification is created in the write transaction that admits its event (a
//!   site's trace entry stored for the first time, the host's own entry, the announcement
//!   timer's release), so an entry sent twice, a round retried or a restart never makes two;
//! - a professional's first access is the first allowed access by that professional to that
//!   dossier that the host learns of, from any site or its own trace: a blind index of (dossier,
//!   professional) pairs (`FIRST_ACCESSES`) makes it one lookup; only a professional's entries
//!   count (never the holder's, a representative's or the system's), and from a site only one
//!   the host binds to that site;
//! - a site's entry about a dossier outside its scope is held (`HELD_NOTIFICATIONS`) and
//!   becomes a notification only if the dossier enters that site's scope (a mobile unit's
//!   dossier merged at the host: its trace arrives before its push); so a site cannot notify
//!   about a dossier it never held;
//! - rows are sealed under the audit key, bound to their id (held ones to their key), and
//!   carry in clear only the dossier's blind index, so a purge drops them.

use crate::kv::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Replica, Role};
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::authority::AuthorityRecord;
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, RepresentativeId, Rpps, SiteId};
use crate::model::{AccessMode, Grant, HolderKind};
use crate::policy::Who;
use crate::time::Millis;

/// What a notification tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotificationKind {
    /// A break-glass or centre 15 access, as `audit emergencies` lists it under `emergency`.
    EmergencyAccess {
        /// Break-glass or centre 15.
        mode: AccessMode,
        /// Its id in the host's emergency index.
        emergency: u64,
    },
    /// A professional's first access to the dossier.
    FirstAccess {
        /// The professional.
        rpps: Rpps,
    },
    /// A document hidden from the holder became visible to them.
    DocumentAnnounced {
        /// The document.
        doc: DocId,
    },
}

impl NotificationKind {
    /// Its name in the CLI and the spool.
    pub fn name(&self) -> &'static str {
        match self {
            NotificationKind::EmergencyAccess { .. } => "emergency_access",
            NotificationKind::FirstAccess { .. } => "first_access",
            NotificationKind::DocumentAnnounced { .. } => "document_announced",
        }
    }
}

/// Who is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recipient {
    /// The holder.
    Holder,
    /// A legal representative in force.
    Representative(RepresentativeId),
    /// The dossier's médecin traitant.
    MedecinTraitant(Rpps),
}

/// A notification as the host keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Its id, in the order created.
    pub id: u64,
    /// What it tells.
    pub kind: NotificationKind,
    /// The dossier.
    pub ins: Ins,
    /// Who is told.
    pub recipients: Vec<Recipient>,
    /// The host's time of creation.
    pub at: Millis,
    /// The site the event came from (the host's own id for its own).
    pub site: SiteId,
    /// The document it is about, if any: it is not shown to a person it is hidden from.
    pub doc: Option<DocId>,
}

impl Notification {
    /// What the holder or a representative reads: short, in French and English, with no
    /// document title and no professional's name.
    pub fn patient_text(&self) -> String {
        match &self.kind {
            NotificationKind::EmergencyAccess {
                mode: AccessMode::Centre15,
                ..
            } => "Votre dossier médical a été consulté en urgence par un médecin régulateur du \
                  centre 15. / Your medical record was accessed in an emergency by a centre 15 \
                  regulating doctor."
                .into(),
            NotificationKind::EmergencyAccess { .. } => {
                "Votre dossier médical a été consulté en urgence (bris de glace). / Your medical \
                 record was accessed in an emergency (break-glass)."
                    .into()
            }
            NotificationKind::FirstAccess { rpps } => format!(
                "Un professionnel de santé (RPPS {}) a accédé à votre dossier médical pour la \
                 première fois. / A health professional (RPPS {}) accessed your medical record \
                 for the first time.",
                rpps.as_str(),
                rpps.as_str()
            ),
            NotificationKind::DocumentAnnounced { .. } => {
                "Un document de votre dossier médical vous est désormais visible. / A document \
                 in your medical record is now visible to you."
                    .into()
            }
        }
    }
}

/// An event waiting for its dossier to enter a site's scope (`HELD_NOTIFICATIONS`).
#[derive(Serialize, Deserialize)]
struct Event {
    kind: NotificationKind,
    ins: Ins,
    site: SiteId,
    doc: Option<DocId>,
    /// The professional who accessed, recorded in `FIRST_ACCESSES` when it is created.
    pro: Option<Rpps>,
}

/// A row of `NOTIFICATIONS`: the dossier's blind index in clear, the rest sealed.
#[derive(Serialize, Deserialize)]
pub(super) struct NotificationRow {
    pub(super) bi: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub(super) sealed: Vec<u8>,
}

/// Associated data of a row of `NOTIFICATIONS`.
pub(super) fn notification_aad(id: u64) -> Vec<u8> {
    aad(&[b"notification", &id.to_be_bytes()])
}

/// Associated data of a held event, bound to its key.
pub(super) fn held_event_aad(key: &[u8]) -> Vec<u8> {
    aad(&[b"notification-held", key])
}

/// `blind index ‖ rpps_index`: a key of `FIRST_ACCESSES`.
fn pair_key(bi: &[u8; 32], pro: &[u8; 32]) -> Vec<u8> {
    let mut k = bi.to_vec();
    k.extend_from_slice(pro);
    k
}

/// The bounds of the keys that start with `prefix`, both included (no key here has more than
/// 32 bytes after a prefix).
fn prefixed(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    end.extend_from_slice(&[0xff; 32]);
    (prefix.to_vec(), end)
}

/// The professional of an allowed access to a dossier: the entries that may be a first access.
fn accessing_professional(e: &AuditEntry) -> Option<&Rpps> {
    match (&e.action, &e.actor, &e.ins) {
        (TraceAction::Access(_), TraceActor::Professional { rpps, .. }, Some(_)) if e.allowed => {
            Some(rpps)
        }
        _ => None,
    }
}

/// How long a daemon's turn at the notification spool lasts unless renewed (a pass renews it).
const SPOOL_TURN: Millis = 60_000;

/// The daemon holding the spool's turn and when it ends; `None` for a value of another shape
/// (the turn is then free).
fn spool_turn_of(bytes: &[u8]) -> Option<(u32, Millis)> {
    let daemon = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let until = Millis::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
    Some((daemon, until))
}

impl Replica {
    /// Host: the notification of an emergency access just indexed (allowed where it was
    /// decided: a refused one read nothing), in `txn`.
    pub(super) fn notify_emergency(
        &self,
        txn: &WriteTransaction,
        e: &super::Emergency,
    ) -> Result<()> {
        if !e.allowed {
            return Ok(());
        }
        let Ok(ins) = Ins::parse(&e.ins) else {
            return Ok(());
        };
        let pro = match &e.actor {
            TraceActor::Professional { rpps, .. } => Some(rpps.clone()),
            _ => None,
        };
        self.admit_event(
            txn,
            Event {
                kind: NotificationKind::EmergencyAccess {
                    mode: e.mode,
                    emergency: e.id,
                },
                ins,
                site: e.site,
                doc: e.doc,
                pro,
            },
        )
    }

    /// Host: the first accesses among `origin`'s entries just stored, in `txn`. An emergency
    /// access is told as such (`notify_emergency`), not twice.
    pub(super) fn notify_first_accesses<'e>(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        entries: impl Iterator<Item = &'e AuditEntry>,
    ) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        // The tables are opened once for the whole batch (a push's trace batch holds
        // thousands of entries), at its first access by a professional, and a (dossier,
        // professional) pair is looked at once: an entry after the first of its pair would
        // find it recorded, or held as the first was.
        let mut events = Vec::new();
        {
            let mut tables = None;
            let mut seen = std::collections::HashSet::new();
            for e in entries {
                let Some(rpps) = accessing_professional(e) else {
                    continue;
                };
                if super::emergencies::is_emergency(e) {
                    continue;
                }
                let Some(Ok(ins)) = e.ins.as_deref().map(Ins::parse) else {
                    continue;
                };
                let pro = self.rpps_index(rpps);
                let pair = pair_key(&self.blind(&ins), &pro);
                if !seen.insert(pair.clone()) {
                    continue;
                }
                let (firsts, bound_pros) = match tables {
                    Some(ref opened) => opened,
                    None => tables.insert((
                        txn.open_table(FIRST_ACCESSES)?,
                        if origin == self.config.site_id {
                            None
                        } else {
                            Some(txn.open_table(SITE_PROS)?)
                        },
                    )),
                };
                let known = firsts.get(pair.as_slice())?.is_some();
                let bound = match &bound_pros {
                    None => true,
                    Some(pros) => pros.get(site_key(origin.0, &pro).as_slice())?.is_some(),
                };
                if known || !bound {
                    continue;
                }
                events.push(Event {
                    kind: NotificationKind::FirstAccess { rpps: rpps.clone() },
                    ins,
                    site: origin,
                    doc: e.doc,
                    pro: Some(rpps.clone()),
                });
            }
        }
        for event in events {
            self.admit_event(txn, event)?;
        }
        Ok(())
    }

    /// Host: true when a professional's access in `e` may be a first access not yet recorded
    /// (checked before opening a write transaction for the host's own reads).
    pub(super) fn may_be_first_access(&self, e: &AuditEntry) -> Result<bool> {
        let (Some(rpps), Some(Ok(ins))) =
            (accessing_professional(e), e.ins.as_deref().map(Ins::parse))
        else {
            return Ok(false);
        };
        let txn = self.begin_read()?;
        let table = match txn.open_table(FIRST_ACCESSES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        let key = pair_key(&self.blind(&ins), &self.rpps_index(rpps));
        Ok(table.get(key.as_slice())?.is_none())
    }

    /// Host: the notification that document `doc` of `ins`, hidden from the holder, is
    /// announced to them, in `txn`.
    pub(super) fn notify_announced(
        &self,
        txn: &WriteTransaction,
        ins: &Ins,
        doc: DocId,
    ) -> Result<()> {
        self.admit_event(
            txn,
            Event {
                kind: NotificationKind::DocumentAnnounced { doc },
                ins: ins.clone(),
                site: self.config.site_id,
                doc: Some(doc),
                pro: None,
            },
        )
    }

    /// Creates the notification of `event` now, or holds it while its dossier is outside the
    /// scope of the site it came from.
    fn admit_event(&self, txn: &WriteTransaction, event: Event) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        let bi = self.blind(&event.ins);
        let in_scope = event.site == self.config.site_id
            || txn
                .open_table(SCOPE)?
                .get(site_key(event.site.0, &bi).as_slice())?
                .is_some_and(|v| v.value() != 0);
        if in_scope {
            return self.create_notification(txn, &bi, event);
        }
        let mut held = txn.open_table(HELD_NOTIFICATIONS)?;
        let prefix = site_key_after(&bi, event.site.0);
        let (low, high) = prefixed(&prefix);
        let counter = match held.range(low.as_slice()..=high.as_slice())?.next_back() {
            Some(row) => {
                let key = row?.0.value().to_vec();
                u64::from_be_bytes(
                    key[36..44]
                        .try_into()
                        .map_err(|_| Error::integrity("a held notification's key is malformed"))?,
                ) + 1
            }
            None => 1,
        };
        let mut key = prefix;
        key.extend_from_slice(&counter.to_be_bytes());
        let sealed = self
            .keys
            .audit
            .seal(&held_event_aad(&key), &postcard::to_stdvec(&event)?)?;
        held.insert(key.as_slice(), sealed.as_slice())?;
        Ok(())
    }

    /// Host: `bi` entered `site`'s scope: what the site traced about it before becomes
    /// notifications, in `txn`.
    pub(super) fn release_held_notifications(
        &self,
        txn: &WriteTransaction,
        site: u32,
        bi: &[u8; 32],
    ) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        let (low, high) = prefixed(&site_key_after(bi, site));
        let mut events = Vec::new();
        {
            let mut held = txn.open_table(HELD_NOTIFICATIONS)?;
            for row in held.range(low.as_slice()..=high.as_slice())? {
                let (k, v) = row?;
                let plain = self
                    .keys
                    .audit
                    .open(&held_event_aad(k.value()), v.value())
                    .map_err(|_| Error::integrity("a held notification was altered"))?;
                events.push(postcard::from_bytes::<Event>(&plain)?);
            }
            held.retain_in(low.as_slice()..=high.as_slice(), |_, _| false)?;
        }
        for event in events {
            self.create_notification(txn, bi, event)?;
        }
        Ok(())
    }

    /// Stores the notification of `event` about the dossier `bi`, to the recipients its signed
    /// head and grants name; nothing when the host holds no such dossier, or when a first access
    /// is already recorded.
    fn create_notification(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        event: Event,
    ) -> Result<()> {
        if let Some(rpps) = &event.pro {
            let key = pair_key(bi, &self.rpps_index(rpps));
            let mut pairs = txn.open_table(FIRST_ACCESSES)?;
            let known = pairs.insert(key.as_slice(), ())?.is_some();
            if known && matches!(event.kind, NotificationKind::FirstAccess { .. }) {
                return Ok(());
            }
        }
        let (head, grants) = {
            let authority = txn.open_table(AUTHORITY)?;
            let head = match self.dossier_record(&authority, bi)? {
                Some(AuthorityRecord::Dossier(h)) => h,
                _ => return Ok(()),
            };
            (head, self.grants_in(&authority, bi)?)
        };
        let now = self.now();
        let representatives: Vec<Recipient> = match head.holder_at(now) {
            HolderKind::Adult => Vec::new(),
            _ => head
                .representatives
                .iter()
                .filter(|r| r.ended.is_none())
                .map(|r| Recipient::Representative(r.id))
                .collect(),
        };
        let mut recipients = if representatives.is_empty() {
            vec![Recipient::Holder]
        } else {
            representatives
        };
        if let NotificationKind::EmergencyAccess { .. } = event.kind
            && let Some(g) = grants.iter().find(|g| Grant::medecin_traitant(g))
        {
            recipients.push(Recipient::MedecinTraitant(g.rpps.clone()));
        }
        let mut table = txn.open_table(NOTIFICATIONS)?;
        let id = match table.last()? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        let n = Notification {
            id,
            kind: event.kind,
            ins: event.ins,
            recipients,
            at: now,
            site: event.site,
            doc: event.doc,
        };
        let sealed = self
            .keys
            .audit
            .seal(&notification_aad(id), &postcard::to_stdvec(&n)?)?;
        let row = postcard::to_stdvec(&NotificationRow { bi: *bi, sealed })?;
        table.insert(id, row.as_slice())?;
        self.note_change(super::changes::Changed::Notification { id })?;
        Ok(())
    }

    fn open_notification(&self, id: u64, row: &NotificationRow) -> Result<Notification> {
        let altered = || Error::integrity(format!("notification {id} was altered"));
        let plain = self
            .keys
            .audit
            .open(&notification_aad(id), &row.sealed)
            .map_err(|_| altered())?;
        let n: Notification = postcard::from_bytes(&plain)?;
        if n.id != id || self.blind(&n.ins) != row.bi {
            return Err(altered());
        }
        Ok(n)
    }

    /// The notifications with an id above `after` (of the dossier `bi` only, if given), in
    /// id order; the others are not opened.
    fn stored_notifications(
        &self,
        txn: &crate::kv::ReadTransaction,
        after: u64,
        bi: Option<&[u8; 32]>,
    ) -> Result<Vec<Notification>> {
        let table = match txn.open_table(NOTIFICATIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.range(after.saturating_add(1)..)? {
            let (k, v) = row?;
            let row: NotificationRow = postcard::from_bytes(v.value())?;
            if bi.is_none_or(|bi| *bi == row.bi) {
                out.push(self.open_notification(k.value(), &row)?);
            }
        }
        Ok(out)
    }

    fn host_only(&self) -> Result<()> {
        if self.config.role != Role::Host {
            return Err(super::refusal::notifications_at_site());
        }
        Ok(())
    }

    /// Host: the notifications (of one dossier, if given), in id order. An operator read,
    /// traced (`operator-notifications-list`).
    pub(crate) fn notifications(&self, dossier: Option<&Ins>) -> Result<Vec<Notification>> {
        self.host_only()?;
        self.operator_reads("notifications list", dossier)?;
        let txn = self.begin_read()?;
        self.stored_notifications(&txn, 0, dossier.map(|i| self.blind(i)).as_ref())
    }

    /// Host: the notifications not yet spooled (ids above the spool's mark), for this daemon
    /// to hand to the messaging gateway: none while another daemon of this host holds the
    /// spool's turn (`take_spool_turn`, taken here only when there is something to spool, so
    /// an idle host writes nothing).
    pub(crate) fn notifications_to_spool(&self) -> Result<Vec<Notification>> {
        self.host_only()?;
        let unspooled = || -> Result<Vec<Notification>> {
            let txn = self.begin_read()?;
            let mark = super::read_u64(
                txn.open_table(META)?
                    .get(meta_key::NOTIFICATIONS_SPOOLED)?
                    .as_ref()
                    .map(|v| v.value()),
            );
            self.stored_notifications(&txn, mark, None)
        };
        if unspooled()?.is_empty() || !self.take_spool_turn()? {
            return Ok(Vec::new());
        }
        // Read again under the turn: another daemon may have spooled some before it.
        unspooled()
    }

    /// Host: takes (or keeps) the turn to write the notification spool for `SPOOL_TURN` from
    /// now, unless another daemon of this host holds it: true if this daemon holds it now.
    /// Several daemons over one database thus spool each notification once, as long as none
    /// stalls longer than its turn in the middle of a pass; the transaction is serialised with
    /// theirs, so two never take the turn at once.
    pub(crate) fn take_spool_turn(&self) -> Result<bool> {
        self.host_only()?;
        let now = self.now();
        let me = self.daemon_number();
        let txn = self.begin_write()?;
        let free = {
            let mut meta = txn.open_table(META)?;
            let held = meta
                .get(meta_key::SPOOL_TURN)?
                .and_then(|v| spool_turn_of(v.value()));
            let free = held.is_none_or(|(daemon, until)| daemon == me || until <= now);
            if free {
                let mut turn = me.to_le_bytes().to_vec();
                turn.extend_from_slice(&now.saturating_add(SPOOL_TURN).to_le_bytes());
                meta.insert(meta_key::SPOOL_TURN, turn.as_slice())?;
            }
            free
        };
        if free {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(free)
    }

    /// Host: records that notifications up to `id` are spooled (never lowered).
    pub(crate) fn mark_notifications_spooled(&self, id: u64) -> Result<()> {
        self.host_only()?;
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mark = super::read_u64(
                meta.get(meta_key::NOTIFICATIONS_SPOOLED)?
                    .as_ref()
                    .map(|v| v.value()),
            );
            if id > mark {
                meta.insert(meta_key::NOTIFICATIONS_SPOOLED, id.to_le_bytes().as_slice())?;
            }
        }
        txn.commit()
    }

    /// The notifications of dossier `bi` addressed to `who` (the holder or a representative),
    /// none about a document in `hidden`: what their export carries.
    pub(super) fn notifications_for(
        &self,
        txn: &crate::kv::ReadTransaction,
        bi: &[u8; 32],
        who: &Who,
        hidden: &std::collections::HashSet<DocId>,
    ) -> Result<Vec<Notification>> {
        let wanted = match who {
            Who::Holder => Recipient::Holder,
            Who::Representative(id) => Recipient::Representative(*id),
            _ => return Ok(Vec::new()),
        };
        Ok(self
            .stored_notifications(txn, 0, Some(bi))?
            .into_iter()
            .filter(|n| n.recipients.contains(&wanted))
            .filter(|n| n.doc.is_none_or(|d| !hidden.contains(&d)))
            .collect())
    }

    /// Host: drops, in `txn`, the notifications of dossier `bi`, those held, and its first
    /// accesses (its purge).
    pub(super) fn forget_notifications(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<()> {
        txn.open_table(NOTIFICATIONS)?.retain(|_, v| {
            postcard::from_bytes::<NotificationRow>(v).map_or(true, |row| row.bi != *bi)
        })?;
        let (low, high) = prefixed(bi);
        txn.open_table(HELD_NOTIFICATIONS)?
            .retain_in(low.as_slice()..=high.as_slice(), |_, _| false)?;
        txn.open_table(FIRST_ACCESSES)?
            .retain_in(low.as_slice()..=high.as_slice(), |_, _| false)?;
        Ok(())
    }
}

/// `blind index ‖ site (u32 BE)`: the prefix of a dossier's held events from one site.
fn site_key_after(bi: &[u8; 32], site: u32) -> Vec<u8> {
    let mut k = bi.to_vec();
    k.extend_from_slice(&site.to_be_bytes());
    k
}
