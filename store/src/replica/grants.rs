//! Grants as the host issues them (DOMAIN §4 rows 3–6, §5): who may act on a dossier, the one
//! médecin traitant, and grants that end.
//!
//! Invariants, held by the host because it alone signs grant records (a site only verifies
//! them, and a pending grant — consent given in person — is a request, never a grant):
//! - a dossier has at most one médecin traitant, an active grant with basis
//!   `medecin-traitant`; designating another one re-issues the previous one's grant, in the
//!   same transaction, with basis `treating` (the same rights: they lose the title, not their
//!   access; the holder may then revoke them like any other grant);
//! - the médecin traitant's grant changes only by designating another: revoking, blocking or
//!   re-basing it is refused (exit 3, traced), so a block never leaves a dossier without one
//!   behind the holder's back;
//! - an end (`until`) belongs to an active grant, is after the host's clock when issued, and
//!   never to the médecin traitant's designation. It is enforced by every replica's decision
//!   from the signed record (`Grant::for_decision`), by that replica's clock.

use crate::kv::ReadableTable;

use super::Replica;
use super::tables::*;
use crate::authority::{self, AuthorityRecord};
use crate::error::{Error, Result};
use crate::ids::{Ins, Rpps};
use crate::model::{DossierStatus, Grant, GrantBasis, GrantState};
use crate::time::{Millis, format_rfc3339};

/// The refusal of a change that would leave the dossier without its médecin traitant.
pub const MEDECIN_TRAITANT_STAYS: &str = "this professional is the dossier's médecin traitant: the holder must designate another médecin traitant first (grant add --medecin-traitant)";

impl Replica {
    /// Every grant record of dossier `bi` in `table` (active, revoked or blocked).
    pub(super) fn grants_in(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        bi: &[u8; 32],
    ) -> Result<Vec<Grant>> {
        let prefix = subject_key(tag::GRANT, Some(bi), None);
        let mut grants = Vec::new();
        for row in table.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let signed = self.open_signed(k.value(), v.value())?;
            if let AuthorityRecord::Grant(g) = authority::decode(&signed)?.record {
                grants.push(g);
            }
        }
        Ok(grants)
    }

    /// The médecin traitant of dossier `ins`, as this replica's signed records say: the one
    /// active grant with basis `medecin-traitant`, if the holder designated one.
    pub fn medecin_traitant(&self, ins: &Ins) -> Result<Option<Grant>> {
        self.head(ins)?;
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHORITY)?;
        Ok(self
            .grants_in(&table, &self.blind(ins))?
            .into_iter()
            .find(Grant::medecin_traitant))
    }

    /// Host: sets a professional's grant on a dossier: `state` with `basis`, ending at `until`
    /// if given. With basis `medecin-traitant` and state active, designates the médecin traitant
    /// (see the module's invariants).
    pub(crate) fn set_grant(
        &self,
        ins: &Ins,
        rpps: &Rpps,
        state: GrantState,
        basis: GrantBasis,
        until: Option<Millis>,
    ) -> Result<()> {
        self.signing_key()?;
        let (head, _) = self.head(ins)?;
        if head.status != DossierStatus::Active {
            return Err(Error::invalid(
                "the dossier is closed: grants cannot change",
            ));
        }
        let now = self.now();
        let designates = basis == GrantBasis::MedecinTraitant && state == GrantState::Active;
        if let Some(until) = until {
            crate::time::check_plausible(until, "the end of the grant")?;
            if state != GrantState::Active {
                return Err(Error::invalid("only an active grant has an end (--until)"));
            }
            if basis == GrantBasis::MedecinTraitant {
                return Err(Error::invalid(
                    "the médecin traitant's designation has no end: it ends when the holder designates another",
                ));
            }
            if until <= now {
                return Err(Error::invalid(format!(
                    "the end of the grant ({}) is not in the future (now {})",
                    format_rfc3339(until),
                    format_rfc3339(now)
                )));
            }
        }
        let bi = self.blind(ins);
        let txn = self.begin_write()?;
        let current = self
            .grants_in(&txn.open_table(AUTHORITY)?, &bi)?
            .into_iter()
            .find(Grant::medecin_traitant);
        let mut traces = Vec::new();
        match current {
            Some(mt) if mt.rpps == *rpps && !designates => {
                let mut refused = self.admin_entry("grant-refused", Some(ins), None);
                refused.allowed = false;
                refused.rule = 4;
                refused.outcome_reason = MEDECIN_TRAITANT_STAYS.to_string();
                txn.trace(vec![refused]);
                txn.commit()?;
                return Err(Error::Denied {
                    rule: 4,
                    reason: MEDECIN_TRAITANT_STAYS.to_string(),
                });
            }
            Some(previous) if designates && previous.rpps != *rpps => {
                self.issue_in(
                    &txn,
                    AuthorityRecord::Grant(Grant {
                        basis: GrantBasis::Treating,
                        issued_at: now,
                        until: None,
                        ..previous
                    }),
                )?;
                traces.push(self.admin_entry("medecin-traitant-replaced", Some(ins), None));
            }
            _ if basis == GrantBasis::MedecinTraitant && !designates => {
                return Err(Error::invalid(
                    "medecin-traitant is the basis of an active grant only",
                ));
            }
            _ => {}
        }
        self.issue_in(
            &txn,
            AuthorityRecord::Grant(Grant {
                ins: ins.clone(),
                rpps: rpps.clone(),
                state,
                basis,
                issued_at: now,
                until,
            }),
        )?;
        traces.push(self.admin_entry(
            &if designates {
                "medecin-traitant-designated".to_string()
            } else {
                format!("grant-{}", state.as_str())
            },
            Some(ins),
            None,
        ));
        txn.trace(traces);
        txn.commit()?;
        Ok(())
    }
}
