//! Dossiers opened at a site (docs/DOMAIN.md §5, "dossier creation"): a pharmacist, a nurse, a
//! physician or the patient at the desk opens one, online or not; it is usable here at once and
//! proposed to the host, which adopts it, merges it into the dossier it already has for that
//! INS, or refuses it.
//!
//! A site signs nothing, so until the host answers, the dossier's head is a *local* one
//! (`LOCAL_DOSSIERS`, sealed under the registry key and bound to the blind index), used where a
//! signed head is missing (`Replica::head`, `Replica::context`). The host's answer is its signed
//! head for that INS, brought by the site's next pull: the local row is removed when that head
//! is admitted, in the same transaction, and the dossier goes on under the same INS, blind index
//! and data key, so no document and no trace entry moves. A creation the host refuses is
//! returned like a refused document: what the site wrote goes to its quarantine (a closed
//! dossier's signed head comes back as well, and the site purges its copy as for any closure).
//! A dossier opened here that the host ends or takes out of the site's scope before it heard of
//! it (a closure, or a `Leave` for the host's own dossier of that INS) is purged like any other;
//! what the site wrote and held back goes to the quarantine first, and the local head and held
//! changes go with the dossier.
//!
//! Invariants:
//! - Nothing naming a provisional identity leaves the site (only a qualified identity is shared):
//!   the proposal and every change of such a dossier (documents, consent given in person) are
//!   held (`HELD`) instead of queued, and enter the outbox in their order when
//!   `qualify_dossier` records the identity as verified, or when the host's signed head for the
//!   INS arrives (then without the proposal: the head answered it, and its traits were never
//!   checked). The site's trace is never held: it is the site's account of what it did.
//! - The site widens no access by itself: the creator reads what the site wrote through a
//!   pending grant, consent given in person for one encounter (`pending_grants`); the host
//!   decides again everything the proposal and the documents carry (`decide_proposal`,
//!   `push_check`).

use crate::kv::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::sync::{Act, Queued};
use super::tables::*;
use super::{Replica, Role, Writer};
use crate::authority::AuthorityRecord;
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, Rpps, SiteId};
use crate::model::{Actor, DossierHead, DossierStatus, IdentityStatus};

/// A dossier opened at a site, as proposed to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The head as the site opened it (status active, no closure).
    pub head: DossierHead,
    /// Who opened it: a professional registered at the site, or the holder.
    pub creator: Actor,
}

/// A change held back while its dossier's identity is provisional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Held {
    /// The dossier's proposal (read from `LOCAL_DOSSIERS` when released).
    Proposal,
    /// An act on one of its documents.
    DocumentAct {
        /// The document.
        id: DocId,
        /// Who did what.
        act: Act,
    },
    /// Consent given in person to a professional of this site.
    PendingGrant {
        /// The professional.
        rpps: Rpps,
    },
}

/// A dossier opened here, as `dossier show` and `sync status` tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDossierState {
    /// Who opened it.
    pub creator: Actor,
    /// Changes held back until the identity is qualified.
    pub held: usize,
}

pub(super) fn local_aad(bi: &[u8; 32]) -> Vec<u8> {
    aad(&[b"local-dossier", bi])
}

pub(super) fn held_aad(key: &[u8]) -> Vec<u8> {
    aad(&[b"held", key])
}

impl Replica {
    /// Site: opens a dossier here for `creator` (a professional registered here, or the
    /// holder). Usable at once; proposed to the host at the next sync when its identity is
    /// qualified, held here until `qualify_dossier` otherwise.
    pub(crate) fn open_dossier_here(
        &self,
        d: super::NewDossier,
        creator: &Actor,
    ) -> Result<DossierHead> {
        if self.config.role != Role::Site {
            return Err(super::refusal::open_here_at_host());
        }
        let head = self.new_head(d)?;
        let bi = self.blind(&head.ins);
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        if self
            .dossier_record(&snap.open_table(AUTHORITY)?, &bi)?
            .is_some()
            || txn.open_table(TOMBSTONES)?.get(&bi)?.is_some()
            || self.local_in(&*txn, &bi)?.is_some()
        {
            return Err(Error::invalid(
                "this site already holds a dossier for this INS (or held one that was purged here)",
            ));
        }
        let (_, tactor) = self.who(&snap, generation, creator)?;
        let rpps = match creator {
            Actor::Professional(rpps) => {
                self.who_is(&snap, rpps)?;
                Some(rpps.clone())
            }
            Actor::Holder => None,
            _ => {
                return Err(Error::invalid(
                    "a dossier is opened by a professional registered here (--as RPPS) or by the holder (--as holder)",
                ));
            }
        };
        drop(snap);
        self.ensure_dossier_key(&txn, &bi)?;
        let proposal = Proposal {
            head: head.clone(),
            creator: creator.clone(),
        };
        self.put_local(&txn, &bi, &proposal)?;
        self.queue_or_hold(&txn, &bi, &head.ins, Held::Proposal)?;
        if let Some(rpps) = rpps {
            // The creator reads what the site writes for this encounter, as with consent
            // given in person; the host confirms or refuses it.
            self.put_pending_grant(&txn, &head.ins, &rpps)?;
            self.queue_or_hold(&txn, &bi, &head.ins, Held::PendingGrant { rpps })?;
        }
        let mut entry = self.admin_entry(
            "dossier-opened-here",
            Some(&head.ins),
            Some(match head.identity.status {
                IdentityStatus::Qualified => "identity qualified: proposed to the host",
                IdentityStatus::Provisional => "identity provisional: held here until qualified",
            }),
        );
        entry.actor = tactor;
        txn.trace(vec![entry]);
        txn.commit()?;
        Ok(head)
    }

    /// Site: records that the identity of a dossier opened here was checked (ID document and
    /// INSi) by `rpps`; what was held for it enters the outbox.
    pub(crate) fn qualify_dossier(&self, ins: &Ins, rpps: &Rpps) -> Result<()> {
        let bi = self.blind(ins);
        let txn = self.begin_write()?;
        let mut proposal = self
            .local_in(&*txn, &bi)?
            .ok_or_else(super::refusal::not_opened_here)?;
        if proposal.head.identity.status == IdentityStatus::Qualified {
            return Err(Error::invalid(
                "this dossier's identity is qualified already",
            ));
        }
        let (snap, generation) = self.snapshot()?;
        let (_, tactor) = self.who(&snap, generation, &Actor::Professional(rpps.clone()))?;
        self.who_is(&snap, rpps)?;
        drop(snap);
        proposal.head.identity.status = IdentityStatus::Qualified;
        self.put_local(&txn, &bi, &proposal)?;
        let released = self.release_held(&txn, &bi, ins, true)?;
        let mut entry = self.admin_entry(
            "identity-qualified",
            Some(ins),
            Some(&format!(
                "identity checked against an ID document and INSi; {released} held changes queued for the host"
            )),
        );
        entry.actor = tactor;
        txn.trace(vec![entry]);
        txn.commit()
    }

    /// Site: the dossiers opened here that the host has not answered yet.
    pub(crate) fn local_dossier_state(&self, ins: &Ins) -> Result<Option<LocalDossierState>> {
        let bi = self.blind(ins);
        let txn = self.begin_read()?;
        let Some(proposal) = self.local_in(&*txn, &bi)? else {
            return Ok(None);
        };
        let held = txn
            .open_table(HELD)?
            .range(bi.as_slice()..)?
            .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.value().starts_with(&bi)))
            .count();
        Ok(Some(LocalDossierState {
            creator: proposal.creator,
            held,
        }))
    }

    /// Site: the dossiers whose changes are held back (provisional identity), with how many.
    pub fn held_back(&self) -> Result<Vec<(Ins, usize)>> {
        let mut out = Vec::new();
        for ins in self.local_dossiers()? {
            if let Some(state) = self.local_dossier_state(&ins)?
                && state.held > 0
            {
                out.push((ins, state.held));
            }
        }
        Ok(out)
    }

    /// Site: the INS of every dossier opened here that the host has not answered yet.
    pub(crate) fn local_dossiers(&self) -> Result<Vec<Ins>> {
        let txn = self.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(LOCAL_DOSSIERS)?.iter()? {
            let (k, v) = row?;
            out.push(self.open_local(k.value(), v.value())?.head.ins);
        }
        Ok(out)
    }

    /// The local head of `bi`, if this site opened it and the host has not answered yet.
    pub(super) fn local_head(
        &self,
        txn: &impl LocalTables,
        bi: &[u8; 32],
    ) -> Result<Option<DossierHead>> {
        Ok(self.local_in(txn, bi)?.map(|p| p.head))
    }

    fn local_in(&self, txn: &impl LocalTables, bi: &[u8; 32]) -> Result<Option<Proposal>> {
        match txn.local_row(bi)? {
            Some(sealed) => Ok(Some(self.open_local(bi, &sealed)?)),
            None => Ok(None),
        }
    }

    fn open_local(&self, bi: &[u8; 32], sealed: &[u8]) -> Result<Proposal> {
        let plain = self
            .keys
            .registry
            .open(&local_aad(bi), sealed)
            .map_err(|_| Error::integrity("a dossier opened here was altered"))?;
        Ok(postcard::from_bytes(&plain)?)
    }

    fn put_local(&self, txn: &WriteTransaction, bi: &[u8; 32], p: &Proposal) -> Result<()> {
        let sealed = self
            .keys
            .registry
            .seal(&local_aad(bi), &postcard::to_stdvec(p)?)?;
        self.note_change(super::changes::Changed::Dossier {
            ins: p.head.ins.clone(),
        })?;
        self.digested(txn, LOCAL_DOSSIERS)?
            .insert(bi, sealed.as_slice())?;
        Ok(())
    }

    /// True when changes of `bi` are held back: a dossier opened here whose identity is still
    /// provisional.
    pub(super) fn holds_back(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<bool> {
        Ok(self
            .local_in(txn, bi)?
            .is_some_and(|p| p.head.identity.status == IdentityStatus::Provisional))
    }

    /// Site: queues `held` for the host, or holds it back while `bi`'s identity is provisional.
    pub(super) fn queue_or_hold(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        ins: &Ins,
        held: Held,
    ) -> Result<()> {
        if self.holds_back(txn, bi)? {
            return self.hold(txn, bi, &held);
        }
        self.push_outbox(txn, |seq| self.outbox_item(txn, seq, bi, ins, &held))
    }

    /// Site: queues (or holds back) an act on document `id` of dossier `bi`, at `seq` when it
    /// is queued. Answers whether it took the outbox entry `seq`.
    pub(super) fn queue_document_act(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        id: &DocId,
        act: &Act,
        outbox: &mut crate::kv::Table<u64, &[u8]>,
        seq: u64,
    ) -> Result<bool> {
        if self.holds_back(txn, bi)? {
            self.hold(
                txn,
                bi,
                &Held::DocumentAct {
                    id: *id,
                    act: act.clone(),
                },
            )?;
            return Ok(false);
        }
        let item = postcard::to_stdvec(&self.document_act_item(id, seq, act)?)?;
        outbox.insert(seq, item.as_slice())?;
        Ok(true)
    }

    fn hold(&self, txn: &WriteTransaction, bi: &[u8; 32], held: &Held) -> Result<()> {
        let mut table = txn.open_table(HELD)?;
        let next: u64 = table
            .range(bi.as_slice()..)?
            .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.value().starts_with(bi)))
            .last()
            .transpose()?
            .and_then(|(k, _)| k.value().get(32..).and_then(|c| c.try_into().ok()))
            .map_or(0, |c| u64::from_be_bytes(c).saturating_add(1));
        let mut key = bi.to_vec();
        key.extend_from_slice(&next.to_be_bytes());
        let sealed = self
            .keys
            .registry
            .seal(&held_aad(&key), &postcard::to_stdvec(held)?)?;
        table.insert(key.as_slice(), sealed.as_slice())?;
        Ok(())
    }

    /// Moves every change held for `bi` into the outbox, in order; answers how many. Without
    /// `proposal`, the held proposal is dropped instead (the host's signed head answered it).
    pub(super) fn release_held(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        ins: &Ins,
        proposal: bool,
    ) -> Result<usize> {
        let held = self.held_changes(txn, bi)?;
        for (key, change) in &held {
            if proposal || *change != Held::Proposal {
                self.push_outbox(txn, |seq| self.outbox_item(txn, seq, bi, ins, change))?;
            }
            txn.open_table(HELD)?.remove(key.as_slice())?;
        }
        Ok(held.len())
    }

    /// The documents whose acts are held back for `bi`, in the order they were held (a document
    /// acted on twice is named once). None of them has reached the host.
    pub(super) fn held_documents(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
    ) -> Result<Vec<DocId>> {
        let mut out: Vec<DocId> = Vec::new();
        for (_, change) in self.held_changes(txn, bi)? {
            if let Held::DocumentAct { id, .. } = change
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The changes held for `bi`, in order, each with its row's key; an altered row fails.
    fn held_changes(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<Vec<(Vec<u8>, Held)>> {
        let table = txn.open_table(HELD)?;
        let mut out = Vec::new();
        for row in table.range(bi.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(bi) {
                break;
            }
            let plain = self
                .keys
                .registry
                .open(&held_aad(k.value()), v.value())
                .map_err(|_| {
                    Error::integrity("a change held for a provisional identity was altered")
                })?;
            out.push((k.value().to_vec(), postcard::from_bytes(&plain)?));
        }
        Ok(out)
    }

    /// Site: whether the host has yet to decide the proposal of the dossier `bi` opened here:
    /// it is held back (its identity provisional), or queued after `applied`, the last of this
    /// site's changes the host had applied when it answered. A refusal of `bi` the host sends
    /// then is of an earlier dossier opened here for the same INS (repeated because the site's
    /// acknowledgement did not reach the host), not of this one.
    pub(super) fn proposal_undecided(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        applied: u64,
    ) -> Result<bool> {
        if self
            .held_changes(txn, bi)?
            .iter()
            .any(|(_, change)| matches!(change, Held::Proposal))
        {
            return Ok(true);
        }
        for row in txn.open_table(OUTBOX)?.range(applied.saturating_add(1)..)? {
            let (seq, v) = row?;
            // An entry that does not read is held back when its turn comes: not this one.
            if let Ok(OutboxItem::DossierProposal { sealed }) = postcard::from_bytes(v.value())
                && let Ok(proposal) = self.open_proposal(seq.value(), &sealed)
                && self.blind(&proposal.head.ins) == *bi
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Site: forgets, inside `txn`, what `bi` had as a dossier opened here: its local head, the
    /// changes held back for it and the pending grants on it. Called once what it held that the
    /// host never received is in the quarantine (`quarantine_pending`).
    pub(super) fn forget_local_dossier(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<()> {
        self.digested(txn, LOCAL_DOSSIERS)?.remove(bi)?;
        let mut after = bi.to_vec();
        after.extend([0xff; 64]);
        txn.open_table(HELD)?
            .retain_in(bi.as_slice()..after.as_slice(), |_, _| false)?;
        self.digested(txn, PENDING_GRANTS)?
            .remove_in(bi.as_slice(), &after)?;
        Ok(())
    }

    /// The outbox entry `held` becomes at `seq`.
    fn outbox_item(
        &self,
        txn: &WriteTransaction,
        seq: u64,
        bi: &[u8; 32],
        ins: &Ins,
        held: &Held,
    ) -> Result<OutboxItem> {
        Ok(match held {
            Held::Proposal => {
                let proposal = self
                    .local_in(txn, bi)?
                    .ok_or_else(|| Error::integrity("a held proposal has no dossier"))?;
                OutboxItem::DossierProposal {
                    sealed: self.seal_queued(
                        seq,
                        Queued::DossierProposal,
                        &[],
                        &postcard::to_stdvec(&proposal)?,
                    )?,
                }
            }
            Held::DocumentAct { id, act } => self.document_act_item(id, seq, act)?,
            Held::PendingGrant { rpps } => {
                let pro = self.rpps_index(rpps);
                OutboxItem::PendingGrant {
                    sealed_ins: self.seal_queued(
                        seq,
                        Queued::PendingGrant,
                        &pro,
                        ins.matricule().as_bytes(),
                    )?,
                    pro,
                }
            }
        })
    }

    /// Opens a queued proposal.
    pub(super) fn open_proposal(&self, seq: u64, sealed: &[u8]) -> Result<Proposal> {
        let plain = self.open_queued(seq, Queued::DossierProposal, &[], sealed)?;
        Ok(postcard::from_bytes(&plain)?)
    }

    /// Site: the host's signed head for `bi` was admitted: the dossier opened here is the
    /// national one from now on; whatever was held for it goes to the host, but a proposal
    /// still held (its identity provisional): the host's head answered it, and its traits,
    /// never checked, stay here.
    pub(super) fn host_answered(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        ins: &Ins,
    ) -> Result<()> {
        if self.config.role != Role::Site || txn.open_table(LOCAL_DOSSIERS)?.get(bi)?.is_none() {
            return Ok(());
        }
        self.release_held(txn, bi, ins, false)?;
        self.digested(txn, LOCAL_DOSSIERS)?.remove(bi)?;
        Ok(())
    }

    /// Host: decides a dossier `site` opened. Adopted when no dossier exists for its INS (the
    /// host signs the head); merged into the existing one when it is active; returned (what the
    /// site wrote goes to its quarantine) when it is closed or purged, or when the proposal
    /// does not hold. Adopted, merged or closed, the dossier enters the site's scope, so its
    /// signed head reaches the site at the next pull. Traced.
    pub(super) fn decide_proposal(
        &self,
        txn: &Writer<'_>,
        site: SiteId,
        proposal: &Proposal,
    ) -> Result<super::Applied> {
        let head = &proposal.head;
        let bi = self.blind(&head.ins);
        let refuse = |why: &str| -> Result<super::Applied> {
            txn.trace(vec![self.admin_entry(
                "dossier-proposal-refused",
                Some(&head.ins),
                Some(&format!("site {site}: {why}")),
            )]);
            self.return_dossier(
                txn,
                site,
                &head.ins,
                &format!("the host did not take the dossier opened here: {why}"),
            )
        };
        let fresh = match self.proposal_holds(txn, site, proposal) {
            Ok(fresh) => fresh,
            Err(why) => return refuse(&why),
        };
        let existing = self.dossier_record(&txn.open_table(AUTHORITY)?, &bi)?;
        let purged =
            txn.open_table(TOMBSTONES)?.get(&bi)?.is_some() || self.site_receipts_in(txn, &bi)?;
        match existing {
            Some(AuthorityRecord::Dossier(h)) if h.status == DossierStatus::Active => {
                self.set_scope(txn, site.0, &bi, scope_bit::WROTE, true)?;
                self.forget_dossier_return(txn, site, &bi)?;
                let same = h.identity == head.identity
                    && h.holder == head.holder
                    && h.ins_kind == head.ins_kind;
                txn.trace(vec![self.admin_entry(
                    "dossier-proposal-merged",
                    Some(&head.ins),
                    Some(&format!(
                        "site {site} opened a dossier for an INS the host holds: its documents join this one{}",
                        if same {
                            ""
                        } else {
                            " (its identity traits differ from the host's, which stand)"
                        }
                    )),
                )]);
                Ok(super::Applied::Applied)
            }
            Some(AuthorityRecord::Dossier(_)) => {
                // The site learns of the closure by its signed head, and purges its copy.
                self.set_scope(txn, site.0, &bi, scope_bit::WROTE, true)?;
                refuse("the dossier for this INS is closed")
            }
            Some(_) => refuse("the dossier for this INS was closed and purged"),
            None if purged => refuse("the dossier for this INS was closed and purged"),
            None => {
                // As the host would have created it, dated when the site opened it.
                let mut adopted = fresh;
                adopted.created_at = head.created_at.min(adopted.created_at);
                self.issue_in(txn, AuthorityRecord::Dossier(adopted))?;
                self.set_scope(txn, site.0, &bi, scope_bit::WROTE, true)?;
                self.forget_dossier_return(txn, site, &bi)?;
                txn.trace(vec![self.admin_entry(
                    "dossier-proposal-adopted",
                    Some(&head.ins),
                    Some(&format!("opened at site {site}; the host signs its head")),
                )]);
                Ok(super::Applied::Applied)
            }
        }
    }

    /// The head the host would create for a proposal, or why it cannot be taken: the host
    /// decides it again with its own registry (the host trusts no site).
    fn proposal_holds(
        &self,
        txn: &WriteTransaction,
        site: SiteId,
        proposal: &Proposal,
    ) -> std::result::Result<DossierHead, String> {
        let head = &proposal.head;
        match &proposal.creator {
            Actor::Professional(rpps) => match self.is_bound(txn, site, rpps) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "its creator {rpps} is not a professional the host binds to that site"
                    ));
                }
                Err(e) => return Err(e.to_string()),
            },
            Actor::Holder => {}
            _ => return Err("a dossier is opened by a professional or the holder".into()),
        }
        if head.identity.status != IdentityStatus::Qualified {
            return Err("its identity is provisional: only a qualified identity is shared".into());
        }
        if head.status != DossierStatus::Active || head.closure.is_some() {
            return Err("a site opens active dossiers only".into());
        }
        let fresh = super::NewDossier {
            ins: head.ins.clone(),
            ins_kind: head.ins_kind,
            identity: head.identity.clone(),
            holder: head.holder,
            representatives: head
                .representatives
                .iter()
                .filter(|r| r.ended.is_none())
                .map(|r| super::NewRepresentative {
                    name: r.name.clone(),
                    relationship: r.relationship.clone(),
                })
                .collect(),
            mask_new_by_default: head.mask_new_by_default,
        };
        self.new_head(fresh).map_err(|e| e.to_string())
    }

    /// Host: true when a site returned a purge receipt for `bi` (the host purged it).
    fn site_receipts_in(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<bool> {
        Ok(txn
            .open_table(SITE_RECEIPTS)?
            .range(bi.as_slice()..)?
            .next()
            .transpose()?
            .is_some_and(|(k, _)| k.value().starts_with(bi)))
    }
}

/// A transaction the local head can be read in (read or write).
pub(super) trait LocalTables {
    /// The sealed `LOCAL_DOSSIERS` row of `bi`, if any.
    fn local_row(&self, bi: &[u8; 32]) -> Result<Option<Vec<u8>>>;
}

impl LocalTables for crate::kv::ReadTransaction {
    fn local_row(&self, bi: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .open_table(LOCAL_DOSSIERS)?
            .get(bi)?
            .map(|v| v.value().to_vec()))
    }
}

impl LocalTables for WriteTransaction {
    fn local_row(&self, bi: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .open_table(LOCAL_DOSSIERS)?
            .get(bi)?
            .map(|v| v.value().to_vec()))
    }
}
