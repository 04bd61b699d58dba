//! What the host lets each site hold (the host trusts no site): the professionals it binds to
//! each site, and the requests sites make (a pin, consent given in person) until the host
//! decides them.
//!
//! Invariants: a site's say-so never widens what it receives. A professional practises at a
//! site only once the host binds them there (`bind_professional`, an operator's act at
//! enrolment or later); a professional a site declares itself changes nothing on the host. A pin
//! enters the site's scope only when the host accepts it (`decide_pin`: an appointment with the
//! patient's consent recorded); until then it is a request, traced. Consent given in person is
//! a request too: it becomes a grant only through the host's own `set_grant`, never by itself.
//! Every decision here is traced on the host.

use crate::kv::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Replica, Role, Writer};
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{Ins, Rpps, SiteId};
use crate::time::Millis;

/// What a site asked the host for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Bring a dossier into the site's scope (`carnet pin` at the site).
    Pin,
    /// The holder consented in person to a professional of the site (`grant add` at a site).
    Consent,
}

impl RequestKind {
    /// Name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Pin => "pin",
            RequestKind::Consent => "consent",
        }
    }

    fn tag(self) -> u8 {
        match self {
            RequestKind::Pin => 1,
            RequestKind::Consent => 2,
        }
    }
}

/// A request of a site, waiting for the host's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRequest {
    /// Pin or consent.
    pub kind: RequestKind,
    /// The site that asked.
    pub site: SiteId,
    /// The dossier.
    pub ins: Ins,
    /// The professional (consent only).
    pub rpps: Option<Rpps>,
    /// When the host received it.
    pub at: Millis,
}

/// `kind ‖ blind index ‖ [rpps_index] ‖ site`.
fn request_key(kind: RequestKind, bi: &[u8; 32], pro: Option<&[u8; 32]>, site: SiteId) -> Vec<u8> {
    let mut k = vec![kind.tag()];
    k.extend_from_slice(bi);
    if let Some(pro) = pro {
        k.extend_from_slice(pro);
    }
    k.extend_from_slice(&site.0.to_be_bytes());
    k
}

impl Replica {
    fn require_host_role(&self, what: &str) -> Result<()> {
        if self.config.role != Role::Host {
            return Err(super::refusal::decided_by_host(what));
        }
        Ok(())
    }

    /// Host: binds `rpps` (registered here) to `site`, or unbinds them. Bound, the dossiers
    /// where they hold an active grant enter the site's scope; unbound, the grant no longer
    /// keeps them there.
    pub(crate) fn bind_professional(&self, site: SiteId, rpps: &Rpps, on: bool) -> Result<()> {
        self.require_host_role("which professionals practise at a site")?;
        if site == self.config.site_id {
            return Err(Error::invalid("site 0 is the host itself"));
        }
        let txn = self.begin_write()?;
        self.who_is(&*self.begin_read()?, rpps)?;
        if on {
            self.register_site_professional(&txn, site, rpps)?;
        } else {
            self.unregister_site_professional(&txn, site, rpps)?;
        }
        txn.trace(vec![self.admin_entry(
            if on {
                "professional-bound"
            } else {
                "professional-unbound"
            },
            None,
            Some(&format!("site {site}")),
        )]);
        txn.commit()
    }

    /// Host: the professionals bound to `site`, by RPPS.
    pub(crate) fn site_professionals(&self, site: SiteId) -> Result<Vec<Rpps>> {
        let txn = self.begin_read()?;
        let registry = txn.open_table(PROS)?;
        let mut out = Vec::new();
        for pro in Self::bound_in(&txn, site)? {
            // Bound professionals are registered here (`bind_professional` checks it).
            let pro = self
                .registered(&registry, &pro)?
                .ok_or_else(|| Error::integrity("a bound professional is not registered"))?;
            out.push(pro.rpps);
        }
        out.sort();
        Ok(out)
    }

    /// The professionals bound to `site`, by `rpps_index`, in the snapshot `txn`.
    pub(super) fn bound_in(
        txn: &crate::kv::ReadTransaction,
        site: SiteId,
    ) -> Result<Vec<[u8; 32]>> {
        let prefix = site.0.to_be_bytes();
        let mut out = Vec::new();
        for row in txn.open_table(SITE_PROS)?.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            let Some(pro) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            out.push(pro.try_into().map_err(|_| Error::integrity("site key"))?);
        }
        Ok(out)
    }

    /// True when the host binds `rpps` to `site` (in `txn`).
    pub(super) fn is_bound(
        &self,
        txn: &WriteTransaction,
        site: SiteId,
        rpps: &Rpps,
    ) -> Result<bool> {
        Ok(txn
            .open_table(SITE_PROS)?
            .get(site_key(site.0, &self.rpps_index(rpps)).as_slice())?
            .is_some())
    }

    /// Host: records a pin (or its withdrawal) pushed by `site`. A pin is a request the host
    /// decides (`decide_pin`); a withdrawal narrows at once.
    pub(super) fn request_pin(
        &self,
        txn: &Writer<'_>,
        site: SiteId,
        ins: &Ins,
        on: bool,
    ) -> Result<super::Applied> {
        let bi = self.blind(ins);
        let known = txn
            .open_table(AUTHORITY)?
            .get(subject_key(tag::DOSSIER, Some(&bi), None).as_slice())?
            .is_some();
        if !known {
            return Ok(super::Applied::Returned);
        }
        let key = request_key(RequestKind::Pin, &bi, None, site);
        if on {
            let in_scope_already = txn
                .open_table(SCOPE)?
                .get(site_key(site.0, &bi).as_slice())?
                .is_some_and(|v| v.value() & scope_bit::PINNED != 0);
            if !in_scope_already {
                self.put_request(txn, &key, RequestKind::Pin, site, ins, None)?;
            }
        } else {
            self.digested(txn, SITE_REQUESTS)?.remove(key.as_slice())?;
            self.set_scope(txn, site.0, &bi, scope_bit::PINNED, false)?;
        }
        txn.trace(vec![self.admin_entry(
            if on { "pin-requested" } else { "pin-withdrawn" },
            Some(ins),
            Some(&format!("site {site}")),
        )]);
        Ok(super::Applied::Applied)
    }

    /// Host: records consent given in person at `site` to `rpps` as a request. Refused (and
    /// traced) when the professional is not bound to that site, is blocked, or the dossier is
    /// not active; a grant comes only from the host's own `set_grant`.
    pub(super) fn request_consent(
        &self,
        txn: &Writer<'_>,
        site: SiteId,
        ins: &Ins,
        rpps: &Rpps,
    ) -> Result<()> {
        use crate::authority::{AuthorityRecord, Verified};
        use crate::model::{DossierStatus, GrantState};
        let bi = self.blind(ins);
        let (head, current) = {
            let table = txn.open_table(AUTHORITY)?;
            let head = self.authority_get(&table, &subject_key(tag::DOSSIER, Some(&bi), None))?;
            let grant = self.authority_get(
                &table,
                &subject_key(tag::GRANT, Some(&bi), Some(&self.rpps_index(rpps))),
            )?;
            (head, grant)
        };
        let active = matches!(
            head.map(|v| v.record),
            Some(AuthorityRecord::Dossier(h)) if h.status == DossierStatus::Active
        );
        let state = match current {
            Some(Verified {
                record: AuthorityRecord::Grant(g),
                ..
            }) => Some(g.state),
            _ => None,
        };
        let refused = if !active {
            Some("the dossier is not active")
        } else if !self.is_bound(txn, site, rpps)? {
            Some("the professional does not practise at that site for the host")
        } else if state == Some(GrantState::Blocked) {
            Some("the professional is blocked by the holder")
        } else {
            None
        };
        let (what, why) = match (refused, state) {
            (Some(why), _) => ("consent-refused", why.to_string()),
            (None, Some(GrantState::Active)) => ("consent-received", "already granted".into()),
            (None, _) => {
                let key = request_key(
                    RequestKind::Consent,
                    &bi,
                    Some(&self.rpps_index(rpps)),
                    site,
                );
                self.put_request(txn, &key, RequestKind::Consent, site, ins, Some(rpps))?;
                (
                    "consent-requested",
                    "consent given in person at a site: to be confirmed at the host".into(),
                )
            }
        };
        txn.trace(vec![self.admin_entry(
            what,
            Some(ins),
            Some(&format!("site {site}: {why}")),
        )]);
        Ok(())
    }

    fn put_request(
        &self,
        txn: &WriteTransaction,
        key: &[u8],
        kind: RequestKind,
        site: SiteId,
        ins: &Ins,
        rpps: Option<&Rpps>,
    ) -> Result<()> {
        let request = SiteRequest {
            kind,
            site,
            ins: ins.clone(),
            rpps: rpps.cloned(),
            at: self.now(),
        };
        let sealed = self.keys.registry.seal(
            &aad(&[b"site-request", key]),
            &postcard::to_stdvec(&request)?,
        )?;
        self.digested(txn, SITE_REQUESTS)?
            .insert(key, sealed.as_slice())?;
        Ok(())
    }

    /// Host: the requests of every site still waiting for a decision.
    pub(crate) fn site_requests(&self) -> Result<Vec<SiteRequest>> {
        self.require_host_role("a site's request")?;
        let txn = self.begin_read()?;
        let table = match txn.open_table(SITE_REQUESTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let plain = self
                .keys
                .registry
                .open(&aad(&[b"site-request", k.value()]), v.value())
                .map_err(|_| Error::integrity("a site request was altered"))?;
            out.push(postcard::from_bytes(&plain)?);
        }
        out.sort_by_key(|r: &SiteRequest| r.at);
        Ok(out)
    }

    /// Host: accepts `site`'s pin of `ins` (the dossier enters its scope: an appointment with
    /// the holder's consent is recorded here), or refuses it / ends an accepted one.
    pub(crate) fn decide_pin(&self, site: SiteId, ins: &Ins, accept: bool) -> Result<()> {
        self.require_host_role("a pin")?;
        let (head, _) = self.head(ins)?;
        if accept && head.status != crate::model::DossierStatus::Active {
            return Err(Error::invalid("the dossier is closed: it enters no scope"));
        }
        let bi = self.blind(ins);
        let txn = self.begin_write()?;
        self.digested(&txn, SITE_REQUESTS)?
            .remove(request_key(RequestKind::Pin, &bi, None, site).as_slice())?;
        self.set_scope(&txn, site.0, &bi, scope_bit::PINNED, accept)?;
        txn.trace(vec![self.admin_entry(
            if accept {
                "pin-accepted"
            } else {
                "pin-refused"
            },
            Some(ins),
            Some(&format!("site {site}")),
        )]);
        txn.commit()
    }

    /// Host: a grant was issued for `rpps` on `bi`: the consent requests it answers are done.
    pub(super) fn consent_answered(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        rpps: &Rpps,
    ) -> Result<()> {
        let mut prefix = vec![RequestKind::Consent.tag()];
        prefix.extend_from_slice(bi);
        prefix.extend_from_slice(&self.rpps_index(rpps));
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 4]);
        self.digested(txn, SITE_REQUESTS)?
            .remove_in(&prefix, &end)?;
        Ok(())
    }
}
