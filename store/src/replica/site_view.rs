//! What of a dossier in its scope a site receives, decided on the host with the access table
//! (DOMAIN §4) for the professionals the host binds to that site (`site_access`).
//!
//! Invariants: a site receives the documents of a dossier only if one of its bound
//! professionals may read the dossier (the table's read column, asked for the dossier: an
//! active grant, not blocked, not acting for an insurer), or if the host pinned the dossier for
//! it (`decide_pin`) or allowed an emergency fetch (`emergency_fetch`); otherwise only the
//! documents it wrote itself. The site then enforces the
//! table document by document, as it does offline. A body travels only with a document the
//! site receives. It receives a grant record only when it names one of its bound professionals
//! (who treats the patient elsewhere is none of its business), and the dossier head and
//! emergency preferences of every dossier in its scope. Nothing here trusts what the site says
//! of itself.

use std::collections::HashMap;
use std::sync::Arc;

use crate::kv::ReadTransaction;

use super::Replica;
use super::tables::*;
use crate::authority::{AuthorityRecord, Verified};
use crate::error::Result;
use crate::ids::SiteId;
use crate::merge::DocumentMeta;
use crate::model::{AccessMode, EmergencyPrefs, HabilitationMatrix};
use crate::policy::{self, Action, DossierView, Request, Who};

/// One site, as the host sees it while it answers a pull: its bound professionals, and what
/// it has learned of each dossier so far.
pub(super) struct SiteView {
    site: SiteId,
    /// Bound professionals known to the host's registry, as the policy sees them, with their
    /// `rpps_index`.
    pros: Vec<(Who, [u8; 32])>,
    matrix: Arc<HabilitationMatrix>,
    /// Whether the site receives all of a dossier (one of its professionals may read it).
    readable: HashMap<[u8; 32], bool>,
}

impl Replica {
    /// The view of `site` on the snapshot `txn`.
    pub(super) fn site_view(&self, txn: &ReadTransaction, site: SiteId) -> Result<SiteView> {
        let registry = txn.open_table(PROS)?;
        let mut pros = Vec::new();
        for index in Self::bound_in(txn, site)? {
            // Bound professionals are registered here (`bind_professional` checks it).
            if let Some(pro) = self.registered(&registry, &index)? {
                let who = Who::Professional {
                    rpps: pro.rpps,
                    profession: pro.profession,
                };
                pros.push((who, index));
            }
        }
        Ok(SiteView {
            site,
            pros,
            matrix: self.matrix()?,
            readable: HashMap::new(),
        })
    }

    /// True when one of the site's professionals may read the dossier `bi`, or the host
    /// pinned it for the site or allowed an emergency fetch of it.
    fn site_reads_dossier(
        &self,
        txn: &ReadTransaction,
        view: &SiteView,
        bi: &[u8; 32],
    ) -> Result<bool> {
        let pinned_or_emergency = txn
            .open_table(SCOPE)?
            .get(site_key(view.site.0, bi).as_slice())?
            .is_some_and(|v| v.value() & (scope_bit::PINNED | scope_bit::EMERGENCY) != 0);
        if pinned_or_emergency {
            return Ok(true);
        }
        let authority = txn.open_table(AUTHORITY)?;
        let Some(Verified {
            record: AuthorityRecord::Dossier(head),
            ..
        }) = self.authority_get(&authority, &subject_key(tag::DOSSIER, Some(bi), None))?
        else {
            return Ok(false);
        };
        for (who, pro) in &view.pros {
            let grant = match self
                .authority_get(&authority, &subject_key(tag::GRANT, Some(bi), Some(pro)))?
            {
                Some(Verified {
                    record: AuthorityRecord::Grant(g),
                    ..
                }) => Some(g.for_decision(self.now())),
                _ => None,
            };
            let decision = policy::decide(
                &Request {
                    who,
                    action: Action::Read,
                    mode: AccessMode::Normal,
                    reason: None,
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
                    emergency: EmergencyPrefs::default(),
                    matrix: &view.matrix,
                    lease_expired: false,
                },
            );
            if decision.allow {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True when the site of `view` may receive `meta` (and its body).
    pub(super) fn site_sees_document(
        &self,
        txn: &ReadTransaction,
        view: &mut SiteView,
        bi: &[u8; 32],
        meta: &DocumentMeta,
    ) -> Result<bool> {
        if meta.facts.author_site == view.site {
            return Ok(true);
        }
        self.site_receives_whole(txn, view, bi)
    }

    /// True when the site of `view` receives every document of the dossier `bi`, not only
    /// those it wrote (`site_reads_dossier`, asked once per dossier and view).
    pub(super) fn site_receives_whole(
        &self,
        txn: &ReadTransaction,
        view: &mut SiteView,
        bi: &[u8; 32],
    ) -> Result<bool> {
        if let Some(&readable) = view.readable.get(bi) {
            return Ok(readable);
        }
        let readable = self.site_reads_dossier(txn, view, bi)?;
        view.readable.insert(*bi, readable);
        Ok(readable)
    }
}

impl SiteView {
    /// True when a grant to the professional of `rpps_index` `pro` concerns this site: one of
    /// its bound professionals.
    pub(super) fn sees_grant_of(&self, pro: &[u8; 32]) -> bool {
        self.pros.iter().any(|(_, p)| p == pro)
    }
}
