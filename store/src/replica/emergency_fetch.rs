//! Emergencies without prefetching everything (DOMAIN §4 rows 7–8, §5): a break-glass or
//! centre 15 access to a dossier a site does not hold is an on-demand fetch, decided and traced
//! at the host. The site queues the request with the professional, the mode and the stated
//! reason; the host decides it with the same table for the professional it binds to that site,
//! traces the decision in the dossier's trace (so `audit emergencies` shows it for notifying the
//! holder and the médecin traitant), and, when it allows it, brings the dossier into the site's
//! scope for `EMERGENCY_VALID`. The site then reads it by break-glass like any dossier it holds,
//! each read decided and traced again there.
//!
//! Invariants: nothing of a dossier reaches a site for an emergency unless the host allowed the
//! request; offline, a site can only break glass on what it already holds; the emergency reason
//! of a dossier's scope ends by itself (`expire_emergency_access`), and the dossier then leaves
//! the site unless another reason keeps it; when only the site's own writing keeps it, the
//! documents the emergency brought are withdrawn (`withdrawal`).

use crate::kv::ReadableTable;
use serde::{Deserialize, Serialize};

use super::sync::Queued;
use super::tables::*;
use super::{Replica, Role, Writer};
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::authority::{AuthorityRecord, Verified};
use crate::error::{Error, Result};
use crate::ids::{Ins, Rpps, SiteId};
use crate::model::{AccessMode, EmergencyPrefs};
use crate::policy::{self, Action, DossierView, Request, Who};
use crate::time::Millis;

/// How long a dossier fetched for an emergency stays in the site's scope.
pub const EMERGENCY_VALID: Millis = 24 * 3_600_000;

/// What a site asks for, sealed in its outbox (registry key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EmergencyRequest {
    pub(super) ins: Ins,
    pub(super) rpps: Rpps,
    pub(super) mode: AccessMode,
    pub(super) reason: String,
}

impl Replica {
    /// Site: asks the host for the dossier of `ins`, for `rpps` (registered here) reading it in
    /// an emergency `mode` with `reason`; sent at the next round (at once through the daemon).
    pub(crate) fn request_emergency_fetch(
        &self,
        ins: &Ins,
        rpps: &Rpps,
        mode: AccessMode,
        reason: &str,
    ) -> Result<()> {
        if self.config.role != Role::Site {
            return Err(super::refusal::fetch_at_host());
        }
        if mode == AccessMode::Normal {
            return Err(Error::invalid(
                "an emergency fetch is for break-glass or centre 15 (--mode)",
            ));
        }
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "an emergency access needs a reason (--reason)",
            ));
        }
        if self.has_dossier_key(ins)? {
            return Err(Error::invalid(
                "this site holds the dossier already: read it with doc list/get --mode",
            ));
        }
        self.who_is(&*self.begin_read()?, rpps)?;
        let request = EmergencyRequest {
            ins: ins.clone(),
            rpps: rpps.clone(),
            mode,
            reason: reason.to_string(),
        };
        let txn = self.begin_write()?;
        self.push_outbox(&txn, |seq| {
            Ok(OutboxItem::EmergencyFetch {
                sealed: self.seal_queued(
                    seq,
                    Queued::EmergencyFetch,
                    &[],
                    &postcard::to_stdvec(&request)?,
                )?,
            })
        })?;
        txn.trace(vec![AuditEntry {
            at: self.now(),
            origin: self.config.site_id,
            actor: TraceActor::Professional {
                rpps: rpps.clone(),
                profession: None,
            },
            action: TraceAction::Admin("emergency-fetch-requested".into()),
            ins: Some(ins.matricule().to_string()),
            doc: None,
            mode,
            allowed: true,
            rule: 0,
            outcome_reason: "asked of the host".into(),
            stated_reason: Some(reason.to_string()),
            decided_offline: false,
            authority_version: 0,
        }]);
        txn.commit()
    }

    /// Opens a queued emergency request.
    pub(super) fn open_emergency_request(
        &self,
        seq: u64,
        sealed: &[u8],
    ) -> Result<EmergencyRequest> {
        let plain = self.open_queued(seq, Queued::EmergencyFetch, &[], sealed)?;
        Ok(postcard::from_bytes(&plain)?)
    }

    /// Host: decides `site`'s emergency fetch in the push's transaction, traces the decision in
    /// the dossier's trace, and when it is allowed brings the dossier into the site's scope until
    /// `EMERGENCY_VALID` from now.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decide_emergency_fetch(
        &self,
        txn: &Writer<'_>,
        site: SiteId,
        ins: &Ins,
        rpps: &Rpps,
        mode: AccessMode,
        reason: &str,
    ) -> Result<()> {
        let bi = self.blind(ins);
        let (head, grant, emergency) = {
            let table = txn.open_table(AUTHORITY)?;
            let head =
                match self.authority_get(&table, &subject_key(tag::DOSSIER, Some(&bi), None))? {
                    Some(Verified {
                        record: AuthorityRecord::Dossier(h),
                        ..
                    }) => Some(h),
                    _ => None,
                };
            let grant = match self.authority_get(
                &table,
                &subject_key(tag::GRANT, Some(&bi), Some(&self.rpps_index(rpps))),
            )? {
                Some(Verified {
                    record: AuthorityRecord::Grant(g),
                    ..
                }) => Some(g.for_decision(self.now())),
                _ => None,
            };
            let emergency =
                match self.authority_get(&table, &subject_key(tag::EMERGENCY, Some(&bi), None))? {
                    Some(Verified {
                        record: AuthorityRecord::Emergency { prefs, .. },
                        ..
                    }) => prefs,
                    _ => EmergencyPrefs::default(),
                };
            (head, grant, emergency)
        };
        let Some(head) = head else {
            // No such dossier here: nothing to decide, nothing to trace in a dossier.
            return Ok(());
        };
        let profession = if self.is_bound(txn, site, rpps)? {
            self.registered(&txn.open_table(PROS)?, &self.rpps_index(rpps))?
                .map(|p| p.profession)
        } else {
            None
        };
        let matrix = self.matrix()?;
        let (known, decision) = match profession {
            Some(profession) => {
                let who = Who::Professional {
                    rpps: rpps.clone(),
                    profession,
                };
                let decision = policy::decide(
                    &Request {
                        who: &who,
                        action: Action::Read,
                        mode,
                        reason: Some(reason),
                        doc: None,
                        new_class: None,
                    },
                    &DossierView {
                        status: head.status,
                        holder: head.holder,
                        representatives: &head.representatives,
                        grant,
                        // An ended grant is given as revoked; only the wording of a refusal differs.
                        grant_ended: false,
                        emergency,
                        matrix: &matrix,
                        lease_expired: false,
                    },
                );
                (Some(profession), decision)
            }
            None => (
                None,
                policy::Decision {
                    allow: false,
                    rule: policy::Rule(12),
                    reason: "the professional does not practise at that site for the host",
                },
            ),
        };
        txn.trace(vec![AuditEntry {
            at: self.now(),
            origin: self.config.site_id,
            actor: TraceActor::Professional {
                rpps: rpps.clone(),
                profession: known,
            },
            action: TraceAction::Access(Action::List),
            ins: Some(ins.matricule().to_string()),
            doc: None,
            mode,
            allowed: decision.allow,
            rule: decision.rule.0,
            outcome_reason: format!(
                "emergency fetch for site {site}, decided at the host: {}",
                decision.reason
            ),
            stated_reason: Some(reason.to_string()),
            decided_offline: false,
            authority_version: 0,
        }]);
        if decision.allow {
            let key = site_key(site.0, &bi);
            self.digested(txn, EMERGENCY_SCOPES)?
                .insert(key.as_slice(), self.now() + EMERGENCY_VALID)?;
            self.set_scope(txn, site.0, &bi, scope_bit::EMERGENCY, true)?;
        }
        Ok(())
    }

    /// Host: ends the emergency reason of every scope whose time is over (the dossier leaves
    /// the site unless another reason keeps it). Answers how many ended.
    pub(crate) fn expire_emergency_access(&self) -> Result<usize> {
        if self.config.role != Role::Host {
            return Ok(0);
        }
        let now = self.now();
        let due: Vec<Vec<u8>> = {
            let txn = self.begin_read()?;
            let table = match txn.open_table(EMERGENCY_SCOPES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut due = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                if v.value() <= now {
                    due.push(k.value().to_vec());
                }
            }
            due
        };
        if due.is_empty() {
            return Ok(0);
        }
        let txn = self.begin_write()?;
        for key in &due {
            let (site, bi) = key.split_at(4);
            let site = u32::from_be_bytes(
                site.try_into()
                    .map_err(|_| Error::integrity("an emergency scope key is malformed"))?,
            );
            let bi: [u8; 32] = bi
                .try_into()
                .map_err(|_| Error::integrity("an emergency scope key is malformed"))?;
            self.digested(&txn, EMERGENCY_SCOPES)?
                .remove(key.as_slice())?;
            self.set_scope(&txn, site, &bi, scope_bit::EMERGENCY, false)?;
        }
        txn.trace(vec![self.admin_entry(
            "emergency-access-ended",
            None,
            Some(&format!("{} dossier(s) left their site's scope", due.len())),
        )]);
        txn.commit()?;
        Ok(due.len())
    }
}
