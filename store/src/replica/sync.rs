//! What sync builds on: the outbox of local changes, and `apply_remote` to merge a change from
//! another replica exactly once.
//!
//! Invariants: outbox sequence numbers are never reused (acknowledged entries are deleted, the
//! counter stays); an outbox entry names a document and the change sent is its current merged
//! metadata; `apply_remote` applies the change with sequence `n` from an origin only when `n`
//! is exactly one more than the last applied from that origin, so a replay is a no-op and a gap
//! is refused, and the merge and the new high-water mark commit together.

use crate::kv::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Replica;
use super::bodies::{Bodies, ChunkTable};
use super::tables::*;
use crate::authority::{AuthorityRecord, Verified};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, SiteId};
use crate::merge::DocumentMeta;
use crate::model::{Actor, Author, DossierStatus};
use crate::policy::Action;

/// Who did what to a document at the site that pushes it: the host decides it again with its
/// own registry and records (DOMAIN §4; `push_check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    /// Who acted, as the site declared them (`--as`).
    pub actor: Actor,
    /// What they did: `Write`, `Replace`, `Mask`, `HideFromPatient`,
    /// `HideFromRepresentatives` or `Delete`.
    pub action: Action,
}

impl Act {
    /// The acts a change recorded without them (an outbox entry of an earlier build, or a
    /// `Change::LegacyDocument`) is taken for: the document's author, doing any of what a site
    /// may do to a document. The host decides each one as it would the same act named
    /// explicitly, so this grants nothing a site could not claim.
    pub fn by_author(meta: &DocumentMeta) -> Vec<Act> {
        let actor = match &meta.facts.author {
            Author::Professional { rpps, .. } => Actor::Professional(rpps.clone()),
            Author::Holder => Actor::Holder,
            Author::Representative(id) => Actor::Representative(*id),
        };
        [
            Action::Replace,
            Action::Mask,
            Action::HideFromPatient,
            Action::HideFromRepresentatives,
            Action::Delete,
        ]
        .into_iter()
        .map(|action| Act {
            actor: actor.clone(),
            action,
        })
        .collect()
    }
}

/// A change as it travels between replicas.
///
/// Variants are only ever added at the end (postcard names them by position): a host decodes
/// what sites of an earlier build send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A document's metadata without its acts, as sites of an earlier build send it: the host
    /// takes it as acted by the document's author (`Act::by_author`). This build sends
    /// `Document`.
    LegacyDocument(Box<DocumentMeta>),
    /// A professional registered at the sending site (it shapes the site's scope on the host).
    Professional(crate::model::Professional),
    /// The site purged a dossier and says so.
    PurgeReceipt {
        /// The dossier.
        ins: crate::ids::Ins,
        /// The receipt.
        receipt: super::PurgeReceipt,
    },
    /// The site asks for a dossier in its scope (a request the host decides), or lets it go.
    Pin {
        /// The dossier.
        ins: crate::ids::Ins,
        /// Pin or unpin.
        on: bool,
    },
    /// Consent given in person at the sending site: a request the host records, never a grant
    /// by itself.
    PendingGrant {
        /// The dossier.
        ins: crate::ids::Ins,
        /// The professional.
        rpps: crate::ids::Rpps,
    },
    /// A document's metadata (all of it: merge makes repeats harmless), with the acts that made
    /// what it carries: every act queued at the site for this document from this change on
    /// (several local changes travel as one merged metadata). The host requires each change
    /// of state it brings to be made by one of them, as the host decides it (`push_check`).
    Document {
        /// The metadata.
        meta: Box<DocumentMeta>,
        /// Who did what, oldest first, without repeats.
        acts: Vec<Act>,
    },
    /// A break-glass or centre 15 fetch of a dossier the site does not hold: the host decides
    /// it for the professional it binds to that site, and traces it.
    EmergencyFetch {
        /// The dossier.
        ins: crate::ids::Ins,
        /// The professional.
        rpps: crate::ids::Rpps,
        /// Break-glass or centre 15.
        mode: crate::model::AccessMode,
        /// The reason the professional stated.
        reason: String,
    },
    /// A dossier opened at the sending site, with a qualified identity: the host adopts it,
    /// merges it into the dossier it has for that INS, or refuses it (`local_dossiers`).
    DossierProposal(Box<super::local_dossiers::Proposal>),
    /// The site held back the change it queued under this sequence: it could not read it
    /// (`withheld`). Nothing to apply; it keeps the sequence numbers contiguous.
    Withheld,
    /// The site put the document it queued under this sequence in its quarantine before
    /// sending it (its dossier was closed or refused meanwhile). Nothing to apply; it keeps the
    /// sequence numbers contiguous.
    Quarantined,
}

/// A result, or the outbox entry that could not be read and why.
type Unreadable<T> = std::result::Result<T, (u64, Error)>;

impl Change {
    /// The document this change carries, if it is one.
    pub fn document(&self) -> Option<&DocumentMeta> {
        match self {
            Change::Document { meta, .. } | Change::LegacyDocument(meta) => Some(meta),
            _ => None,
        }
    }
}

/// The result of `apply_remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Merged now.
    Applied,
    /// Already applied earlier: nothing changed.
    Duplicate,
    /// Refused for good (the dossier is closed, purged or not held here): recorded as handled
    /// so the stream goes on; the sender keeps the change in quarantine, never drops it.
    Returned,
}

/// What `apply_pushed` did with a site's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushApplied {
    /// The origin's mark (last change applied) before the batch.
    pub mark_before: u64,
    /// One outcome per change, in order.
    pub outcomes: Vec<Applied>,
    /// The batch's documents (applied or duplicate, with a body) whose body is not stored
    /// here, with the bytes of it kept so far.
    pub lacking: Vec<(DocId, u64)>,
    /// What the host returned among the batch's changes: the change's index, and why.
    pub returned: Vec<(usize, super::Returned)>,
}

/// A site's path to the host as a connection measured it: what the next connection starts
/// at (`carnet_syncd::congestion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPath {
    /// Bytes per second the path delivered.
    pub rate: u64,
    /// Its smallest round trip, in microseconds.
    pub min_rtt_micros: u64,
    /// When it was measured, in milliseconds since the Unix epoch.
    pub measured_at: u64,
}

impl Replica {
    /// Local changes after `after`, in order, at most `limit`. A document's change carries its
    /// current merged metadata and every act queued for it from that entry on, including those
    /// queued after the `limit` entries returned (they are in the metadata too).
    ///
    /// An entry that cannot be read (a value stored by an earlier build that this one refuses,
    /// a damaged row) never stops sync: it is held back (`withheld`) with why, and a
    /// `Change::Withheld` travels in its place.
    pub(crate) fn outbox(&self, after: u64, limit: usize) -> Result<Vec<(u64, Change)>> {
        loop {
            match self.outbox_window(after, limit)? {
                Ok(window) => return Ok(window),
                Err((seq, why)) => self.withhold(seq, why)?,
            }
        }
    }

    /// `outbox`, or the first entry of the window that cannot be read, and why.
    fn outbox_window(&self, after: u64, limit: usize) -> Result<Unreadable<Vec<(u64, Change)>>> {
        /// The entry at `seq` is unreadable when `$e` fails other than on storage.
        macro_rules! entry {
            ($seq:expr, $e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e @ Error::Storage(_)) => return Err(e),
                    Err(e) => return Ok(Err(($seq, e))),
                }
            };
        }
        let (txn, generation) = self.snapshot()?;
        let outbox = txn.open_table(OUTBOX)?;
        let mut rows = outbox.range(after.saturating_add(1)..)?;
        let mut window: Vec<(u64, OutboxItem)> = Vec::new();
        for row in rows.by_ref().take(limit) {
            let (k, v) = row?;
            let seq = k.value();
            window.push((
                seq,
                entry!(seq, postcard::from_bytes(v.value()).map_err(Error::from)),
            ));
        }
        // The documents of the window, and the acts queued for each after the window.
        // Sized for the window at once: grown by doubling, a window of 1,024 documents moved
        // its metadata three times into fresh pages (3 % of a site's initial sync).
        let mut metas: std::collections::HashMap<[u8; 16], DocumentMeta> =
            std::collections::HashMap::with_capacity(window.len());
        let docs = txn.open_table(DOCS)?;
        for (seq, item) in &window {
            if let OutboxItem::Document(id) | OutboxItem::DocumentAct { id, .. } = item
                && !metas.contains_key(id)
            {
                let (_, _, meta) = entry!(
                    *seq,
                    self.load_doc_from(&docs, &txn, generation, &self.doc_id(id))
                );
                metas.insert(*id, meta);
            }
        }
        let mut later: std::collections::HashMap<[u8; 16], Vec<Act>> =
            std::collections::HashMap::new();
        if !metas.is_empty() {
            // Only the ids are read here; an act is opened only for a document of the window.
            // An entry after the window that cannot be read is held back when the window
            // reaches it; until then its acts are not sent.
            for row in rows {
                let (k, v) = row?;
                let Ok(item) = postcard::from_bytes::<OutboxItem>(v.value()) else {
                    continue;
                };
                if let OutboxItem::Document(id) | OutboxItem::DocumentAct { id, .. } = &item
                    && let Some(meta) = metas.get(id)
                {
                    match self.queued_acts(k.value(), &item, meta) {
                        Ok(acts) => later.entry(*id).or_default().extend(acts),
                        Err(e @ Error::Storage(_)) => return Err(e),
                        Err(_) => {}
                    }
                }
            }
        }
        // From the last entry back: each document entry takes the acts queued from it on.
        let mut out = Vec::with_capacity(window.len());
        for (seq, item) in window.into_iter().rev() {
            match item {
                OutboxItem::Document(id) | OutboxItem::DocumentAct { id, .. } => {
                    let meta = metas.get(&id).ok_or_else(|| {
                        Error::integrity("an outbox entry's document was not loaded")
                    })?;
                    let mut acts = entry!(seq, self.queued_acts(seq, &item, meta));
                    let from_here = later.entry(id).or_default();
                    acts.append(from_here);
                    let mut unique: Vec<Act> = Vec::with_capacity(acts.len());
                    for act in acts {
                        if !unique.contains(&act) {
                            unique.push(act);
                        }
                    }
                    from_here.clone_from(&unique);
                    out.push((
                        seq,
                        Change::Document {
                            meta: Box::new(meta.clone()),
                            acts: unique,
                        },
                    ));
                }
                OutboxItem::PurgeReceipt {
                    sealed_ins,
                    receipt,
                } => {
                    let ins = entry!(
                        seq,
                        self.open_queued_ins(
                            seq,
                            Queued::PurgeReceipt,
                            &postcard::to_stdvec(&receipt)?,
                            &sealed_ins,
                        )
                    );
                    out.push((seq, Change::PurgeReceipt { ins, receipt }));
                }
                OutboxItem::Pin { sealed_ins, on } => {
                    let ins = entry!(
                        seq,
                        self.open_queued_ins(seq, Queued::Pin, &[u8::from(on)], &sealed_ins)
                    );
                    out.push((seq, Change::Pin { ins, on }));
                }
                OutboxItem::Professional(pro) => {
                    let pro = entry!(seq, self.queued_professional(&txn, &pro));
                    out.push((seq, Change::Professional(pro)));
                }
                OutboxItem::PendingGrant { sealed_ins, pro } => {
                    let ins = entry!(
                        seq,
                        self.open_queued_ins(seq, Queued::PendingGrant, &pro, &sealed_ins)
                    );
                    let rpps = entry!(seq, self.queued_professional(&txn, &pro)).rpps;
                    out.push((seq, Change::PendingGrant { ins, rpps }));
                }
                OutboxItem::DossierProposal { sealed } => {
                    let proposal = entry!(seq, self.open_proposal(seq, &sealed));
                    out.push((seq, Change::DossierProposal(Box::new(proposal))));
                }
                OutboxItem::EmergencyFetch { sealed } => {
                    let r = entry!(seq, self.open_emergency_request(seq, &sealed));
                    out.push((
                        seq,
                        Change::EmergencyFetch {
                            ins: r.ins,
                            rpps: r.rpps,
                            mode: r.mode,
                            reason: r.reason,
                        },
                    ));
                }
                OutboxItem::Withheld => out.push((seq, Change::Withheld)),
                OutboxItem::Quarantined => out.push((seq, Change::Quarantined)),
            }
        }
        out.reverse();
        Ok(Ok(out))
    }

    /// The acts an outbox entry of a document records: its own act, or for an entry of an
    /// earlier build, the author's (`Act::by_author`).
    fn queued_acts(&self, seq: u64, item: &OutboxItem, meta: &DocumentMeta) -> Result<Vec<Act>> {
        match item {
            OutboxItem::DocumentAct { id, sealed_act } => {
                let plain = self
                    .keys
                    .registry
                    .open(&act_aad(&self.doc_id(id).0, seq), sealed_act)
                    .map_err(|_| Error::integrity("a queued act was altered"))?;
                Ok(vec![postcard::from_bytes(&plain)?])
            }
            _ => Ok(Act::by_author(meta)),
        }
    }

    /// The outbox entry recording `act` on document `id`, to be queued at `seq`.
    pub(super) fn document_act_item(&self, id: &DocId, seq: u64, act: &Act) -> Result<OutboxItem> {
        let sealed_act = self
            .keys
            .registry
            .seal(&act_aad(&id.0, seq), &postcard::to_stdvec(act)?)?;
        Ok(OutboxItem::DocumentAct {
            id: self.stored_id(id),
            sealed_act,
        })
    }

    /// The highest change sequence applied here from `origin` (what a site resumes pushing
    /// after).
    pub(crate) fn applied_mark(&self, origin: SiteId) -> Result<u64> {
        let txn = self.begin_read()?;
        let mark = txn
            .open_table(APPLIED)?
            .get(origin.0)?
            .map_or(0, |v| v.value());
        Ok(mark)
    }

    /// Site: pins a dossier into this site's scope (or unpins it); the host brings it in at the
    /// next sync (e.g. tomorrow's patients of a mobile unit).
    pub(crate) fn pin(&self, ins: &crate::ids::Ins, on: bool) -> Result<()> {
        if self.config.role != super::Role::Site {
            return Err(Error::invalid(
                "pinning is for sites: the host holds every dossier",
            ));
        }
        let txn = self.begin_write()?;
        self.push_outbox(&txn, |seq| {
            Ok(OutboxItem::Pin {
                sealed_ins: self.seal_queued(
                    seq,
                    Queued::Pin,
                    &[u8::from(on)],
                    ins.matricule().as_bytes(),
                )?,
                on,
            })
        })?;
        txn.trace(vec![self.admin_entry(
            if on { "pin" } else { "unpin" },
            Some(ins),
            None,
        )]);
        txn.commit()
    }

    /// The professional an outbox entry names by `rpps_index` (registered here: entries are
    /// queued only for registered professionals, and none is ever removed).
    fn queued_professional(
        &self,
        txn: &crate::kv::ReadTransaction,
        pro: &[u8; 32],
    ) -> Result<crate::model::Professional> {
        self.registered(&txn.open_table(PROS)?, pro)?
            .ok_or_else(|| Error::integrity("a queued change names an unregistered professional"))
    }

    /// Seals `plain`, a part of the outbox entry queued at `seq`, bound to that entry: its
    /// sequence, its kind and `clear` (the entry's fields stored beside it in clear), so it opens
    /// in no other entry nor with other clear fields.
    pub(super) fn seal_queued(
        &self,
        seq: u64,
        kind: Queued,
        clear: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>> {
        self.keys
            .registry
            .seal(&outbox_aad(seq, kind, clear), plain)
    }

    /// Opens what `seal_queued` sealed for the entry at `seq`.
    pub(super) fn open_queued(
        &self,
        seq: u64,
        kind: Queued,
        clear: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        self.keys
            .registry
            .open(&outbox_aad(seq, kind, clear), sealed)
            .map_err(|_| Error::integrity(format!("a queued {} was altered", kind.label())))
    }

    /// Opens an INS sealed by `seal_queued`.
    fn open_queued_ins(
        &self,
        seq: u64,
        kind: Queued,
        clear: &[u8],
        sealed: &[u8],
    ) -> Result<crate::ids::Ins> {
        let plain = self.open_queued(seq, kind, clear, sealed)?;
        crate::ids::Ins::parse(
            std::str::from_utf8(&plain)
                .map_err(|_| Error::integrity(format!("a queued {} is malformed", kind.label())))?,
        )
    }

    /// The highest outbox sequence this replica ever issued.
    pub(crate) fn outbox_issued(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        let last = txn
            .open_table(OUTBOX)?
            .last()?
            .map_or(0, |(k, _)| k.value());
        Ok(last.max(Self::outbox_acked_in(&txn)?))
    }

    /// The outbox is acknowledged (by the host) up to here.
    pub(crate) fn outbox_acked(&self) -> Result<u64> {
        Self::outbox_acked_in(&*self.begin_read()?)
    }

    fn outbox_acked_in(txn: &crate::kv::ReadTransaction) -> Result<u64> {
        let meta = txn.open_table(META)?;
        let acked = meta.get(meta_key::OUTBOX_ACKED)?;
        Ok(super::read_u64(acked.as_ref().map(|g| g.value())))
    }

    /// Number of entries waiting in the outbox.
    /// Pending outbox entries by kind (`document`, `professional`, `purge-receipt`, `pin`).
    pub fn outbox_by_kind(&self) -> Result<std::collections::BTreeMap<&'static str, u64>> {
        let txn = self.begin_read()?;
        let mut out = std::collections::BTreeMap::new();
        for row in txn.open_table(OUTBOX)?.iter()? {
            let (_, v) = row?;
            let Ok(item) = postcard::from_bytes::<OutboxItem>(v.value()) else {
                // Held back when its turn to be sent comes (`withheld`).
                *out.entry("unreadable").or_insert(0) += 1;
                continue;
            };
            let kind = match item {
                OutboxItem::Document(_) | OutboxItem::DocumentAct { .. } => "document",
                OutboxItem::Professional(_) => "professional",
                OutboxItem::PurgeReceipt { .. } => "purge-receipt",
                OutboxItem::Pin { .. } => "pin",
                OutboxItem::PendingGrant { .. } => "pending-grant",
                OutboxItem::EmergencyFetch { .. } => "emergency-fetch",
                OutboxItem::DossierProposal { .. } => "dossier-proposal",
                OutboxItem::Withheld => "withheld",
                OutboxItem::Quarantined => "quarantined",
            };
            *out.entry(kind).or_insert(0) += 1;
        }
        Ok(out)
    }

    pub fn outbox_len(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Site: what the host held of this site (its last change, its last trace entry) when the
    /// last sync round that ended well ended, if no round failed since. A hint, never a
    /// decision: a round that pushes behind its `Hello` from these marks fails when the
    /// host's `Welcome` names others, and the round after it waits for the `Welcome`.
    pub(crate) fn host_marks(&self) -> Result<Option<(u64, u64)>> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let marks = meta.get(meta_key::HOST_MARKS)?;
        Ok(marks.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    /// Site: records `marks` as `host_marks` (`None`: forgets them), when they changed. Not
    /// waited for on disk, as `ack_outbox`: a crash that loses this write leaves the marks
    /// before it, which the next `Welcome` checks as it checks any.
    pub(crate) fn set_host_marks(&self, marks: Option<(u64, u64)>) -> Result<()> {
        if self.host_marks()? == marks {
            return Ok(());
        }
        let mut txn = self.begin_raw_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut meta = txn.open_table(META)?;
            match marks {
                Some(m) => {
                    meta.insert(meta_key::HOST_MARKS, postcard::to_stdvec(&m)?.as_slice())?;
                }
                None => {
                    meta.remove(meta_key::HOST_MARKS)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Site: the path to the host as the last connection that measured it left it, if any
    /// (an unreadable record counts as none: it is a hint).
    pub(crate) fn link_path(&self) -> Result<Option<LinkPath>> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let path = meta.get(meta_key::LINK_PATH)?;
        Ok(path.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    /// Site: records `path` as `link_path`. Not waited for on disk (a crash that loses it
    /// leaves the one before, or none: the next connection starts as a first one would).
    pub(crate) fn set_link_path(&self, path: LinkPath) -> Result<()> {
        let mut txn = self.begin_raw_write()?;
        txn.set_durability(redb::Durability::None)?;
        txn.open_table(META)?
            .insert(meta_key::LINK_PATH, postcard::to_stdvec(&path)?.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Host: the path to each site as the host's connections last measured it, by site (an
    /// unreadable row, key or value, counts as none: it is a hint).
    pub(crate) fn site_link_paths(&self) -> Result<Vec<(SiteId, LinkPath)>> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(SITE_LINK_PATHS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut paths = Vec::new();
        for row in table.iter()? {
            let (site, path) = row?;
            let site = <[u8; 4]>::try_from(site.value()).map(u32::from_be_bytes);
            if let (Ok(site), Ok(path)) = (site, postcard::from_bytes(path.value())) {
                paths.push((SiteId(site), path));
            }
        }
        Ok(paths)
    }

    /// Host: records `path` as the path to `site`. In a redb file, not waited for on disk, as a
    /// site's own (`set_link_path`); on PostgreSQL, a commit as any.
    pub(crate) fn set_site_link_path(&self, site: SiteId, path: LinkPath) -> Result<()> {
        let mut txn = self.begin_raw_write()?;
        txn.set_durability(redb::Durability::None)?;
        txn.open_table(SITE_LINK_PATHS)?.insert(
            site.0.to_be_bytes().as_slice(),
            postcard::to_stdvec(&path)?.as_slice(),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Drops outbox entries up to `upto`, acknowledged by the peer.
    ///
    /// The commit is not waited for on disk (redb `Durability::None`; the next durable commit
    /// carries it): the peer holds these entries durably already, so a crash that loses the
    /// acknowledgement only sends them again, the peer skips them as duplicates, and its next
    /// `Welcome` acknowledges them. No trace entry rides on this transaction (it is not a
    /// `Writer`), so none can be lost with it.
    pub(crate) fn ack_outbox(&self, upto: u64) -> Result<()> {
        let mut txn = self.begin_raw_write()?;
        txn.set_durability(redb::Durability::None)?;
        txn.open_table(OUTBOX)?.retain_in(..=upto, |_, _| false)?;
        Self::bump_meta_u64(&txn, meta_key::OUTBOX_ACKED, Some(upto))?;
        txn.commit()?;
        Ok(())
    }

    /// Merges change `seq` from `origin` exactly once.
    pub(crate) fn apply_remote(
        &self,
        origin: SiteId,
        seq: u64,
        change: &Change,
    ) -> Result<Applied> {
        let mut outcomes = self.apply_remote_batch(origin, &[(seq, change.clone())])?;
        Ok(outcomes.pop().unwrap_or(Applied::Duplicate))
    }

    /// Merges a batch of changes from `origin`, in order and each exactly once, in one
    /// transaction: all of them or none.
    pub(crate) fn apply_remote_batch(
        &self,
        origin: SiteId,
        changes: &[(u64, Change)],
    ) -> Result<Vec<Applied>> {
        self.apply_remote_batch_with_bodies(origin, changes, &[])
    }

    /// `apply_remote_batch`, with the whole bodies of some of the batch's new documents
    /// (`bodies`, offset 0): each is checked against its document's size and content hash and
    /// stored with the metadata, in the same transaction. A body that does not match is
    /// ignored (the document's body is then missing, and asked for as any other).
    pub(crate) fn apply_remote_batch_with_bodies(
        &self,
        origin: SiteId,
        changes: &[(u64, Change)],
        bodies: &[BodyPiece],
    ) -> Result<Vec<Applied>> {
        Ok(self.apply_pushed(origin, changes, bodies)?.outcomes)
    }

    /// `apply_remote_batch_with_bodies`, answering as well what the host tells the site that
    /// pushed the batch, read in the same transaction: the origin's mark before it, and the
    /// bodies of its documents still lacking here. Inside `deferring_syncs`, nothing after the
    /// commit waits for its sync.
    pub(crate) fn apply_pushed(
        &self,
        origin: SiteId,
        changes: &[(u64, Change)],
        bodies: &[BodyPiece],
    ) -> Result<PushApplied> {
        let inline = InlineBodies::new(bodies);
        if origin == self.config.site_id {
            return Err(Error::invalid("a replica does not apply its own changes"));
        }
        let txn = self.begin_write()?;
        let mark_before = txn
            .open_table(APPLIED)?
            .get(origin.0)?
            .map_or(0, |v| v.value());
        let mut last = mark_before;
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut dossiers = ActiveDossiers::default();
        // The stored rows of the batch's documents, read at once (on PostgreSQL one statement
        // rather than one per document).
        let stored: Vec<[u8; 16]> = changes
            .iter()
            .filter_map(|(_, change)| change.document())
            .map(|meta| self.stored_id(&meta.facts.id))
            .collect();
        txn.open_table(DOCS)?.prefetch(&stored)?;
        {
            let mut tables = DocTables::new(self, &txn);
            for (seq, change) in changes {
                let seq = *seq;
                if seq <= last {
                    outcomes.push(Applied::Duplicate);
                    continue;
                }
                if seq != last + 1 {
                    return Err(Error::invalid(format!(
                        "change {seq} from site {origin} arrived before change {}: resend from there",
                        last + 1
                    )));
                }
                outcomes.push(self.apply_one_in(
                    &txn,
                    origin,
                    change,
                    &inline,
                    &mut dossiers,
                    &mut tables,
                )?);
                last = seq;
            }
        }
        txn.open_table(APPLIED)?.insert(origin.0, last)?;
        // The batch's bodies are appended: their sync runs while the rest of the transaction
        // is written.
        self.start_syncing_segments()?;
        // A duplicate is answered as its first delivery was: a change the host returned then
        // (on a stale copy of the session, whose answer went nowhere) is returned again, or
        // the site would let go of it without keeping it.
        let mut returned = Vec::new();
        for (i, ((_, change), outcome)) in changes.iter().zip(&outcomes).enumerate() {
            if matches!(outcome, Applied::Returned | Applied::Duplicate)
                && let Some(r) = self.returned_for(&txn, origin, change)?
            {
                returned.push((i, r));
            }
        }
        let documents: Vec<DocId> = changes
            .iter()
            .zip(&outcomes)
            .filter_map(
                |((_, change), outcome)| match (change.document(), outcome) {
                    (Some(meta), Applied::Applied | Applied::Duplicate) if meta.facts.size > 0 => {
                        Some(meta.facts.id)
                    }
                    _ => None,
                },
            )
            .collect();
        let lacking = self.lacking_in(
            &txn.open_table(DOCS)?,
            &self.bodies(&txn)?,
            &txn.open_table(PARTIAL_PROGRESS)?,
            &documents,
        )?;
        txn.commit()?;
        Ok(PushApplied {
            mark_before,
            outcomes,
            lacking,
            returned,
        })
    }

    fn apply_one_in(
        &self,
        txn: &super::Writer<'_>,
        origin: SiteId,
        change: &Change,
        bodies: &InlineBodies<'_>,
        dossiers: &mut ActiveDossiers,
        tables: &mut DocTables<'_>,
    ) -> Result<Applied> {
        if change.document().is_none() {
            // It may change what is active here (a pending grant's decision) or a scope, and
            // write to the documents' tables itself.
            dossiers.clear();
            tables.close();
        }
        let outcome = match change {
            Change::Document { meta: remote, .. } | Change::LegacyDocument(remote) => {
                let legacy;
                let acts: &[Act] = match change {
                    Change::Document { acts, .. } => acts,
                    _ => {
                        legacy = Act::by_author(remote);
                        &legacy
                    }
                };
                let from_site = (self.config.role == super::Role::Host).then_some((origin, acts));
                let body = bodies.for_doc(remote);
                let outcome =
                    self.merge_remote_document(txn, remote, from_site, body, dossiers, tables)?;
                let stored = self.stored_id(&remote.facts.id);
                if from_site.is_some() {
                    let bi = self.blind(&remote.facts.ins);
                    self.withdraw_after_push(txn, origin, &bi, remote.facts.author_site)?;
                }
                if outcome == Applied::Applied && self.config.role == super::Role::Host {
                    let bi = self.blind(&remote.facts.ins);
                    self.host_pushed_document(
                        txn,
                        &bi,
                        &remote.facts.id,
                        origin,
                        &mut dossiers.holders,
                    )?;
                    if remote.facts.size > 0
                        && body.is_none()
                        && !tables.bodies()?.holds(&stored)?
                    {
                        // In the same transaction as the metadata: the body is asked for at
                        // every Welcome until it is stored, whatever happens to this round.
                        txn.open_table(OWED_BODIES)?
                            .insert(owed_key(&stored, origin.0).as_slice(), ())?;
                    }
                }
                outcome
            }
            Change::Professional(pro) => {
                if self.config.role == super::Role::Host {
                    // A site's say-so binds nobody (the host trusts no site): only the host
                    // binds professionals to sites (`bind_professional`).
                    let bound = self.is_bound(txn, origin, &pro.rpps)?;
                    txn.trace(vec![self.admin_entry(
                        "professional-declared",
                        None,
                        Some(&format!(
                            "site {origin} declared a professional{}",
                            if bound {
                                " the host binds to it"
                            } else {
                                " the host does not bind to it: ignored"
                            }
                        )),
                    )]);
                }
                Applied::Applied
            }
            Change::PurgeReceipt { ins, receipt } => {
                if self.config.role == super::Role::Host
                    && !self.receipt_outdated(txn, ins, receipt)?
                {
                    let mut key = self.blind(ins).to_vec();
                    key.extend_from_slice(&origin.0.to_be_bytes());
                    self.digested(txn, SITE_RECEIPTS)?
                        .insert(key.as_slice(), postcard::to_stdvec(receipt)?.as_slice())?;
                }
                Applied::Applied
            }
            Change::Pin { ins, on } => {
                if self.config.role == super::Role::Host {
                    self.request_pin(txn, origin, ins, *on)?
                } else {
                    Applied::Applied
                }
            }
            Change::PendingGrant { ins, rpps } => {
                if self.config.role == super::Role::Host {
                    self.request_consent(txn, origin, ins, rpps)?;
                }
                Applied::Applied
            }
            Change::EmergencyFetch {
                ins,
                rpps,
                mode,
                reason,
            } => {
                if self.config.role == super::Role::Host {
                    self.decide_emergency_fetch(txn, origin, ins, rpps, *mode, reason)?;
                }
                Applied::Applied
            }
            Change::DossierProposal(proposal) => match self.config.role {
                super::Role::Host => self.decide_proposal(txn, origin, proposal)?,
                // Only the host decides a dossier's existence.
                super::Role::Site => Applied::Returned,
            },
            Change::Withheld => {
                if self.config.role == super::Role::Host {
                    txn.trace(vec![self.admin_entry(
                        "change-withheld-by-site",
                        None,
                        Some(&format!(
                            "site {origin} held back a change it could not read: nothing applied"
                        )),
                    )]);
                }
                Applied::Applied
            }
            Change::Quarantined => {
                if self.config.role == super::Role::Host {
                    txn.trace(vec![self.admin_entry(
                        "change-quarantined-by-site",
                        None,
                        Some(&format!(
                            "site {origin} kept a document it had queued in its quarantine (its dossier was closed or refused before the host received it): nothing applied"
                        )),
                    )]);
                }
                Applied::Applied
            }
        };
        Ok(outcome)
    }

    /// Host: true when `receipt` answers a closure the host has since undone (the dossier was
    /// reopened after the record that caused the purge): the site receives the dossier again,
    /// and the receipt is not kept as if it had purged the reopened one.
    fn receipt_outdated(
        &self,
        txn: &WriteTransaction,
        ins: &Ins,
        receipt: &super::PurgeReceipt,
    ) -> Result<bool> {
        if receipt.cause_seq == 0 {
            // A scope exit: the dossier stays active at the host.
            return Ok(false);
        }
        let head = self.authority_get(
            &txn.open_table(AUTHORITY)?,
            &subject_key(tag::DOSSIER, Some(&self.blind(ins)), None),
        )?;
        Ok(matches!(
            head,
            Some(Verified { seq, record: AuthorityRecord::Dossier(h) })
                if h.status == DossierStatus::Active && seq > receipt.cause_seq
        ))
    }

    /// Merges a remote document's metadata in `txn`, or returns it when its dossier is not
    /// active here; `body`, checked against the metadata by the caller, is stored with it
    /// when this replica lacks it. On the host, `from_site` names the site that pushed it and
    /// the acts it recorded: the host decides the change again (`push_check`) and returns it,
    /// traced, unless every change it brings is allowed.
    pub(super) fn merge_remote_document(
        &self,
        txn: &super::Writer<'_>,
        remote: &DocumentMeta,
        from_site: Option<(SiteId, &[Act])>,
        body: Option<&[u8]>,
        dossiers: &mut ActiveDossiers,
        tables: &mut DocTables<'_>,
    ) -> Result<Applied> {
        if !remote.is_sane() {
            return Err(Error::integrity(
                "a received document has an implausible version vector",
            ));
        }
        let bi = self.blind(&remote.facts.ins);
        let key = match dossiers.keys.get(&bi) {
            Some(key) => key.clone(),
            None => {
                let head = self.authority_get(
                    &txn.open_table(AUTHORITY)?,
                    &subject_key(tag::DOSSIER, Some(&bi), None),
                )?;
                let active = matches!(
                    head.map(|v| v.record),
                    Some(AuthorityRecord::Dossier(h)) if h.status == DossierStatus::Active
                );
                let key = self
                    .dossier_key(&txn.open_table(DOSSIER_KEYS)?, &bi)?
                    .filter(|_| active);
                dossiers.keys.insert(bi, key.clone());
                key
            }
        };
        let Some(key) = key else {
            if let Some((origin, _)) = from_site {
                let refusal = super::push_check::Refusal {
                    actor: crate::audit::TraceActor::System,
                    action: None,
                    rule: 1,
                    reason: "its dossier is not active at the host (closed, purged or unknown)"
                        .into(),
                };
                return self.return_document(txn, origin, remote, refusal);
            }
            return Ok(Applied::Returned);
        };
        let id = remote.facts.id;
        let stored_id = self.stored_id(&id);
        let existing: Option<StoredDoc> = match tables.docs()?.get(&stored_id)? {
            Some(v) => Some(postcard::from_bytes(v.value())?),
            None => None,
        };
        match existing {
            Some(stored) => {
                if stored.dossier != bi {
                    return Err(Error::integrity("a document moved to another dossier"));
                }
                let before = self.open_meta(&key, &id.0, &stored)?;
                let mut mine = before.clone();
                mine.merge(remote)?;
                if let Some((origin, acts)) = from_site {
                    if widens(&before.state(), &mine.state()) {
                        // Unmasking, unhiding or undeleting is the host's decision (DOMAIN §5):
                        // a site's change that would do it is refused, and the host's state
                        // stays.
                        let refusal = super::push_check::Refusal {
                            actor: crate::audit::TraceActor::System,
                            action: None,
                            rule: 0,
                            reason: "it would unmask, unhide or undelete a document, which only the host decides".into(),
                        };
                        return self.return_document(txn, origin, remote, refusal);
                    }
                    if let Some(refusal) = self.judge_pushed_change(
                        txn,
                        origin,
                        &bi,
                        &before,
                        remote,
                        &mine,
                        acts,
                        &mut dossiers.judged,
                    )? {
                        return self.return_document(txn, origin, remote, refusal);
                    }
                }
                self.put_meta(tables.docs()?, &key, &bi, stored.rev + 1, &mine)?;
            }
            None => {
                if let Some((origin, acts)) = from_site {
                    if remote.facts.author_site != origin {
                        // A site writes in its own name only.
                        return Err(Error::invalid(
                            "a site sent a new document written in another site's name",
                        ));
                    }
                    if let Some(refusal) = self.judge_pushed_new(
                        txn,
                        &**tables.docs()?,
                        origin,
                        &bi,
                        remote,
                        acts,
                        &mut dossiers.judged,
                    )? {
                        return self.return_document(txn, origin, remote, refusal);
                    }
                }
                self.put_meta(tables.docs()?, &key, &bi, 1, remote)?;
                match body {
                    Some(body) => {
                        self.put_body(tables.bodies()?, &key, &id, body)?;
                    }
                    None if remote.facts.size > 0 => {
                        txn.open_table(MISSING_BODIES)?.insert(&stored_id, ())?;
                    }
                    None => {}
                }
                tables
                    .dossier_docs()?
                    .put(dossier_doc_key(&bi, &stored_id).as_slice(), ())?;
                // The first document that arrives with a unique id is the one it names here.
                if !super::is_own_unique_id(&id, &remote.facts.unique_id) {
                    let unique = self.unique_index(&bi, &remote.facts.unique_id);
                    let mut uniques = txn.open_table(UNIQUE_IDS)?;
                    if uniques.get(unique.as_slice())?.is_none() {
                        uniques.insert(unique.as_slice(), &stored_id)?;
                    }
                }
                return Ok(Applied::Applied);
            }
        }
        if let Some(body) = body {
            let bodies = tables.bodies()?;
            if !bodies.holds(&stored_id)? {
                self.put_body(bodies, &key, &id, body)?;
                tables.close();
                txn.open_table(MISSING_BODIES)?.remove(&stored_id)?;
                // Pieces kept of an earlier transfer, and what was owed, are done with.
                self.forget_partial_body(txn, &id)?;
            }
        }
        Ok(Applied::Applied)
    }

    /// A body in clear, for sending to another replica over the authenticated channel. Not an
    /// access decision: the body stays inside the system and is re-sealed by the receiver.
    pub(crate) fn body_for_sync(&self, id: &DocId) -> Result<Zeroizing<Vec<u8>>> {
        let (txn, generation) = self.snapshot()?;
        let (_, key, meta) = self.load_doc(&txn, generation, id)?;
        self.get_body(&self.bodies_read(&txn)?, &key, &meta)
    }

    /// The whole bodies of the documents of `metas`, in one snapshot, to travel with them:
    /// `None` for one this replica does not hold (any more), or whose key or stored body fails
    /// its checks (the peer then asks for it, and `body_for_sync` reports the error).
    pub(crate) fn bodies_for_sync(
        &self,
        metas: &[&DocumentMeta],
    ) -> Result<Vec<Option<Zeroizing<Vec<u8>>>>> {
        let (txn, generation) = self.snapshot()?;
        let bodies = self.bodies_read(&txn)?;
        Ok(metas
            .iter()
            .map(|meta| {
                let bi = self.blind(&meta.facts.ins);
                let key = self.key_for(&txn, generation, &bi).ok().flatten()?;
                self.get_body(&bodies, &key, meta).ok()
            })
            .collect())
    }

    /// Of `ids`, the documents held in `docs` whose body is not in `bodies`, with the bytes of
    /// each kept so far in `progress` (tables of one transaction). A document not held here
    /// (returned, or purged with its dossier) lacks nothing: its body would be refused.
    fn lacking_in(
        &self,
        docs: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        bodies: &Bodies<impl ChunkTable>,
        progress: &impl ReadableTable<&'static [u8; 16], u64>,
        ids: &[DocId],
    ) -> Result<Vec<(DocId, u64)>> {
        let mut out = Vec::new();
        for id in ids {
            let stored = self.stored_id(id);
            if docs.get(&stored)?.is_some() && !bodies.holds(&stored)? {
                let kept = progress.get(&stored)?.map_or(0, |v| v.value());
                out.push((*id, kept));
            }
        }
        Ok(out)
    }

    /// Bytes of `id`'s body received so far from a peer and durably kept (0 when none); a
    /// transfer cut short resumes from here.
    pub fn body_progress(&self, id: &DocId) -> Result<u64> {
        let txn = self.begin_read()?;
        match txn.open_table(PARTIAL_PROGRESS) {
            Ok(t) => Ok(t.get(&self.stored_id(id))?.map_or(0, |v| v.value())),
            // A replica created before resumable bodies: nothing is partial.
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Site: keeps one piece of a body arriving from the host, durably, so a cut transfer
    /// resumes where it stopped. A piece must start where the kept bytes end (one already kept is
    /// ignored); `total` must be the size in the metadata. Once the last piece is in, the body
    /// is checked against the content hash and stored, in the same transaction. Answers true
    /// when the body is complete (now or before).
    pub(crate) fn receive_body_piece(
        &self,
        id: &DocId,
        offset: u64,
        total: u64,
        bytes: &[u8],
    ) -> Result<bool> {
        let piece = BodyPiece {
            doc: *id,
            offset,
            total,
            bytes: bytes.to_vec(),
        };
        Ok(self
            .receive_body_pieces(std::slice::from_ref(&piece))?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Site: `receive_body_piece` for several pieces (of one body or of several) from the host,
    /// in one transaction: many small bodies cost one durable commit. A bad piece refuses the
    /// whole batch; a body whose hash does not match is dropped (the rest of the batch is kept)
    /// and reported as an error. The host takes pieces only from a site, with
    /// `receive_pieces_from`.
    pub(crate) fn receive_body_pieces(&self, pieces: &[BodyPiece]) -> Result<Vec<bool>> {
        if self.config.role == super::Role::Host {
            return Err(Error::invalid(
                "the host takes body pieces only from the site that owes the body (receive_pieces_from)",
            ));
        }
        self.receive_pieces(None, pieces)
    }

    /// Host: `receive_body_pieces` for pieces `site` sent. A piece is taken only for a body
    /// `site` owes: a document written in its name whose body the host recorded as owed by it
    /// when it applied the metadata (`OWED_BODIES`); any other piece refuses the whole batch
    /// and changes nothing (DOMAIN §5: the host trusts no site). A complete body that fails its
    /// content hash is dropped with its kept pieces, and stays owed: the owing site is asked for
    /// it again at its next `Welcome`, so a bogus body never cancels a debt.
    pub(crate) fn receive_pieces_from(
        &self,
        site: SiteId,
        pieces: &[BodyPiece],
    ) -> Result<Vec<bool>> {
        if self.config.role != super::Role::Host {
            return Err(Error::invalid(
                "only the host takes body pieces from a site",
            ));
        }
        self.receive_pieces(Some(site), pieces)
    }

    fn receive_pieces(&self, from: Option<SiteId>, pieces: &[BodyPiece]) -> Result<Vec<bool>> {
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        let mut complete = Vec::with_capacity(pieces.len());
        let mut corrupt = None;
        for p in pieces {
            match self.receive_piece_in(&txn, &snap, generation, from, p)? {
                Piece::Kept => complete.push(false),
                Piece::Complete => complete.push(true),
                Piece::Corrupt => {
                    complete.push(false);
                    corrupt = Some(p.doc);
                }
            }
        }
        txn.commit()?;
        match corrupt {
            Some(id) => Err(Error::integrity(format!(
                "the body received for document {id} does not match its content hash"
            ))),
            None => Ok(complete),
        }
    }

    fn receive_piece_in(
        &self,
        txn: &WriteTransaction,
        snap: &crate::kv::ReadTransaction,
        generation: super::Generation,
        from: Option<SiteId>,
        p: &BodyPiece,
    ) -> Result<Piece> {
        let (id, offset, total, bytes) = (&p.doc, p.offset, p.total, p.bytes.as_slice());
        let stored = self.stored_id(id);
        let (_, key, meta) = self.load_doc(snap, generation, id)?;
        if let Some(site) = from
            && meta.facts.author_site != site
        {
            // Only the site a document was written at holds its body first-hand.
            return Err(Self::owes_no_body(id));
        }
        if self.bodies(txn)?.holds(&stored)? {
            // Held already (another site sent it): nothing is owed or partial any more.
            self.forget_partial_body(txn, id)?;
            txn.open_table(MISSING_BODIES)?.remove(&stored)?;
            return Ok(Piece::Complete);
        }
        if let Some(site) = from
            && txn
                .open_table(OWED_BODIES)?
                .get(owed_key(&stored, site.0).as_slice())?
                .is_none()
        {
            return Err(Self::owes_no_body(id));
        }
        if total != meta.facts.size {
            return Err(Error::integrity(format!(
                "document {id}: a body of {total} bytes announced, its metadata says {}",
                meta.facts.size
            )));
        }
        let kept = txn
            .open_table(PARTIAL_PROGRESS)?
            .get(&stored)?
            .map_or(0, |v| v.value());
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|end| *end <= total)
            .ok_or_else(|| {
                Error::invalid(format!("document {id}: a body piece runs past its end"))
            })?;
        if end <= kept && offset < kept {
            // Sent again after a cut: already kept.
            return Ok(Piece::Kept);
        }
        if offset != kept {
            return Err(Error::invalid(format!(
                "document {id}: a body piece starts at {offset}, the next expected is {kept}"
            )));
        }
        if end < total {
            let sealed = key.seal(&piece_aad(&id.0, offset), bytes)?;
            txn.open_table(PARTIAL_BODIES)?
                .insert(piece_key(&stored, offset).as_slice(), sealed.as_slice())?;
            txn.open_table(PARTIAL_PROGRESS)?.insert(&stored, end)?;
            return Ok(Piece::Kept);
        }
        // The last piece: the kept ones, then this one, make the body.
        let mut body = Zeroizing::new(Vec::with_capacity(
            usize::try_from(total).unwrap_or(0).min(64 << 20),
        ));
        {
            let pieces = txn.open_table(PARTIAL_BODIES)?;
            let (first, last) = (piece_key(&stored, 0), piece_key(&stored, u64::MAX));
            for row in pieces.range(first.as_slice()..=last.as_slice())? {
                let (k, v) = row?;
                let at = k
                    .value()
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| Error::integrity("a body piece key is malformed"))?;
                if at != body.len() as u64 {
                    return Err(Error::integrity(format!(
                        "document {id}: a kept body piece is missing"
                    )));
                }
                let plain = key.open(&piece_aad(&id.0, at), v.value()).map_err(|_| {
                    Error::integrity(format!("document {id}: a kept body piece was altered"))
                })?;
                body.extend_from_slice(&plain);
            }
        }
        body.extend_from_slice(bytes);
        if body.len() as u64 != meta.facts.size
            || *blake3::hash(&body).as_bytes() != meta.facts.content_hash
        {
            // A corrupt transfer is dropped whole and the next one starts again from zero; the
            // body stays owed (host) or missing (site), so it is asked for again.
            self.reset_partial_body(txn, id)?;
            return Ok(Piece::Corrupt);
        }
        self.forget_partial_body(txn, id)?;
        self.put_body(&mut self.bodies(txn)?, &key, id, &body)?;
        txn.open_table(MISSING_BODIES)?.remove(&stored)?;
        Ok(Piece::Complete)
    }

    fn owes_no_body(id: &DocId) -> Error {
        Error::invalid(format!(
            "document {id}: this site owes no body for it (the host takes a body only from the site that wrote the document and has not sent it yet)"
        ))
    }

    /// Drops the kept pieces of `id`'s body, in `txn`; what is owed stays.
    fn reset_partial_body(&self, txn: &WriteTransaction, id: &DocId) -> Result<()> {
        let stored = self.stored_id(id);
        let (first, last) = (piece_key(&stored, 0), piece_key(&stored, u64::MAX));
        txn.open_table(PARTIAL_BODIES)?
            .retain_in(first.as_slice()..=last.as_slice(), |_, _| false)?;
        txn.open_table(PARTIAL_PROGRESS)?.remove(&stored)?;
        Ok(())
    }

    /// Drops the kept pieces of `id`'s body and every record of it being owed, in `txn`: the
    /// body is stored, or its document is gone.
    pub(super) fn forget_partial_body(&self, txn: &WriteTransaction, id: &DocId) -> Result<()> {
        self.reset_partial_body(txn, id)?;
        let stored = self.stored_id(id);
        let (first, last) = (owed_key(&stored, 0), owed_key(&stored, u32::MAX));
        txn.open_table(OWED_BODIES)?
            .retain_in(first.as_slice()..=last.as_slice(), |_, _| false)?;
        Ok(())
    }

    /// Host: the bodies `site` owes, with the bytes of each already kept here, in id order.
    pub(crate) fn bodies_owed_by(&self, site: SiteId) -> Result<Vec<(DocId, u64)>> {
        let txn = self.begin_read()?;
        let owed = match txn.open_table(OWED_BODIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let progress = txn.open_table(PARTIAL_PROGRESS)?;
        let mut out = Vec::new();
        for row in owed.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let (Some(stored), Some(by)) = (
                k.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                k.get(16..20)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes),
            ) else {
                return Err(Error::integrity("an owed-body key is malformed"));
            };
            if by == site.0 {
                let kept = progress.get(&stored)?.map_or(0, |v| v.value());
                out.push((self.doc_id(&stored), kept));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Documents whose metadata is here but whose body is not yet, in id order.
    pub fn missing_bodies(&self) -> Result<Vec<DocId>> {
        let txn = self.begin_read()?;
        let mut ids = txn
            .open_table(MISSING_BODIES)?
            .iter()?
            .map(|row| row.map(|(k, _)| self.doc_id(k.value())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// At open: a replica made before `MISSING_BODIES` existed gets it, filled by one scan.
    pub(super) fn index_missing_bodies(&self) -> Result<()> {
        {
            let txn = self.begin_read()?;
            match txn.open_table(MISSING_BODIES) {
                Ok(_) => return Ok(()),
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let txn = self.begin_raw_write()?;
        {
            let docs = txn.open_table(DOCS)?;
            let bodies = self.bodies(&txn)?;
            let mut missing = txn.open_table(MISSING_BODIES)?;
            for row in docs.iter()? {
                let (k, _) = row?;
                let stored = *k.value();
                if !bodies.holds(&stored)? {
                    missing.insert(&stored, ())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// A piece of a body, as it travels between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPiece {
    /// Document.
    pub doc: DocId,
    /// Where this piece starts.
    pub offset: u64,
    /// Total size of the body.
    pub total: u64,
    /// The piece.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// What became of one received piece.
enum Piece {
    Kept,
    Complete,
    Corrupt,
}

/// `stored document id ‖ site`.
fn owed_key(stored: &[u8; 16], site: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(stored);
    k[16..].copy_from_slice(&site.to_be_bytes());
    k
}

/// Associated data of a queued act: bound to its document (the id, not its stored form) and its
/// outbox entry.
pub(super) fn act_aad(id: &[u8; 16], seq: u64) -> Vec<u8> {
    crate::crypto::aad(&[b"outbox-act", id, &seq.to_le_bytes()])
}

/// The kinds of outbox entry with a sealed part (`Replica::seal_queued`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Queued {
    /// `OutboxItem::PurgeReceipt`: its INS, bound to the receipt.
    PurgeReceipt,
    /// `OutboxItem::Pin`: its INS, bound to pin or unpin.
    Pin,
    /// `OutboxItem::PendingGrant`: its INS, bound to the RPPS.
    PendingGrant,
    /// `OutboxItem::EmergencyFetch`: the whole request.
    EmergencyFetch,
    /// `OutboxItem::DossierProposal`: the whole proposal.
    DossierProposal,
}

impl Queued {
    fn label(self) -> &'static str {
        match self {
            Queued::PurgeReceipt => "purge receipt",
            Queued::Pin => "pin",
            Queued::PendingGrant => "pending grant",
            Queued::EmergencyFetch => "emergency request",
            Queued::DossierProposal => "dossier proposal",
        }
    }
}

/// Associated data of a sealed part of an outbox entry: the table, the entry's sequence, its
/// kind and its fields kept in clear.
pub(super) fn outbox_aad(seq: u64, kind: Queued, clear: &[u8]) -> Vec<u8> {
    crate::crypto::aad(&[
        b"outbox",
        &seq.to_le_bytes(),
        kind.label().as_bytes(),
        clear,
    ])
}

/// Associated data of a kept body piece: bound to its document (the id) and offset.
pub(super) fn piece_aad(id: &[u8; 16], offset: u64) -> Vec<u8> {
    crate::crypto::aad(&[b"partial-body", id, &offset.to_le_bytes()])
}

/// True when `after` grants more access than `before`: a flag cleared, or availability lowered.
pub(super) fn widens(before: &crate::model::DocState, after: &crate::model::DocState) -> bool {
    let (b, a) = (before.flags, after.flags);
    (b.masque_ps && !a.masque_ps)
        || (b.invisible_patient && !a.invisible_patient)
        || (b.invisible_representatives && !a.invisible_representatives)
        || after.availability() < before.availability()
}

/// What a batch looks up once per dossier: the data keys of the dossiers active here (`None`:
/// not held, or not active) and, on the host, the sites whose scope holds a dossier the batch's
/// origin wrote to. Cleared by any item of the batch that may change a dossier's status or a
/// scope.
#[derive(Default)]
pub(super) struct ActiveDossiers {
    /// Data keys by dossier (`None`: not held, or not active).
    keys: std::collections::HashMap<[u8; 32], Option<crate::crypto::Key>>,
    /// Host: the sites holding a dossier, once the batch's origin wrote to it.
    holders: std::collections::HashMap<[u8; 32], Vec<u32>>,
    /// Host: what deciding the origin's acts looked up (`push_check`).
    judged: super::push_check::Judged,
}

impl ActiveDossiers {
    /// Forgets everything (a record that may change a dossier's status was applied).
    pub(super) fn clear(&mut self) {
        self.keys.clear();
        self.holders.clear();
        self.judged.clear();
    }
}

/// The tables every merged document is written to (its metadata, its body, its dossier's
/// index), opened once for a batch rather than for each of its documents: a push brings
/// hundreds, and opening a table costs a lookup in the database's table of tables. While one
/// is open nothing else may open it: whatever may write them itself runs after `close`.
pub(super) struct DocTables<'t> {
    replica: &'t Replica,
    txn: &'t WriteTransaction,
    docs: Option<super::row_digest::Digested<'t, &'static [u8; 16]>>,
    bodies: Option<Bodies<crate::kv::Table<'t, &'static [u8], &'static [u8]>>>,
    dossier_docs: Option<crate::kv::Table<'t, &'static [u8], ()>>,
}

impl<'t> DocTables<'t> {
    /// None open yet: each opens when first used.
    pub(super) fn new(replica: &'t Replica, txn: &'t WriteTransaction) -> Self {
        DocTables {
            replica,
            txn,
            docs: None,
            bodies: None,
            dossier_docs: None,
        }
    }

    /// `DOCS`, through its row digest.
    pub(super) fn docs(
        &mut self,
    ) -> Result<&mut super::row_digest::Digested<'t, &'static [u8; 16]>> {
        let docs = match self.docs.take() {
            Some(docs) => docs,
            None => self.replica.digested(self.txn, DOCS)?,
        };
        Ok(self.docs.insert(docs))
    }

    /// The body chunks.
    pub(super) fn bodies(
        &mut self,
    ) -> Result<&mut Bodies<crate::kv::Table<'t, &'static [u8], &'static [u8]>>> {
        let bodies = match self.bodies.take() {
            Some(bodies) => bodies,
            None => self.replica.bodies(self.txn)?,
        };
        Ok(self.bodies.insert(bodies))
    }

    /// `DOSSIER_DOCS`.
    pub(super) fn dossier_docs(&mut self) -> Result<&mut crate::kv::Table<'t, &'static [u8], ()>> {
        let table = match self.dossier_docs.take() {
            Some(table) => table,
            None => self.txn.open_table(DOSSIER_DOCS)?,
        };
        Ok(self.dossier_docs.insert(table))
    }

    /// Closes them all (each opens again when next used).
    pub(super) fn close(&mut self) {
        self.docs = None;
        self.bodies = None;
        self.dossier_docs = None;
    }
}

/// Whole bodies that came with a batch of documents, by document.
pub(super) struct InlineBodies<'a>(std::collections::HashMap<DocId, &'a [u8]>);

impl<'a> InlineBodies<'a> {
    /// The whole bodies (offset 0, every byte) among `pieces`.
    pub(super) fn new(pieces: &'a [BodyPiece]) -> Self {
        InlineBodies(
            pieces
                .iter()
                .filter(|b| b.offset == 0 && b.bytes.len() as u64 == b.total)
                .map(|b| (b.doc, b.bytes.as_slice()))
                .collect(),
        )
    }

    /// `meta`'s body, if it came and is the one `meta` describes (size and content hash).
    pub(super) fn for_doc(&self, meta: &DocumentMeta) -> Option<&'a [u8]> {
        self.0.get(&meta.facts.id).copied().filter(|body| {
            body.len() as u64 == meta.facts.size
                && *blake3::hash(body).as_bytes() == meta.facts.content_hash
        })
    }
}
