//! Pending grants (DOMAIN §5): consent the patient gives in person at a site. The site records
//! it at once and uses it for that encounter (`PENDING_VALID`), traced; it is pushed to the
//! host, which records it as a request (`site_access::request_consent`) until the holder's
//! consent is confirmed there (`set_grant`).
//!
//! Invariants: a pending grant never outranks a block, nor any signed grant record issued after
//! it (a revocation made later wins); it widens access only at the site that recorded it, and
//! only for `PENDING_VALID`; it never becomes a national grant by itself.

use crate::kv::ReadTransaction;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Replica, Role};
use crate::error::{Error, Result};
use crate::ids::{Ins, Rpps};
use crate::model::{DossierStatus, GrantState};
use crate::time::Millis;

/// How long a pending grant is usable at its site: one encounter.
pub const PENDING_VALID: Millis = 24 * 3_600_000;

/// A pending grant as kept at its site.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Pending {
    at: Millis,
}

/// `blind index ‖ RPPS`.
/// `blind index ‖ rpps_index`.
fn pending_key(bi: &[u8; 32], pro: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(bi);
    k[32..].copy_from_slice(pro);
    k
}

impl Replica {
    /// Site: records the consent the patient of `ins` gave in person to `rpps`, usable here at
    /// once for `PENDING_VALID` and queued for the host to confirm or refuse.
    pub(crate) fn record_pending_grant(&self, ins: &Ins, rpps: &Rpps) -> Result<()> {
        if self.config.role != Role::Site {
            return Err(super::refusal::pending_grant_at_host());
        }
        let (head, _) = self.head(ins)?;
        if head.status != DossierStatus::Active {
            return Err(Error::invalid(
                "the dossier is closed: grants cannot change",
            ));
        }
        let bi = self.blind(ins);
        let txn = self.begin_write()?;
        self.who_is(&*self.begin_read()?, rpps)?;
        self.put_pending_grant(&txn, ins, rpps)?;
        self.queue_or_hold(
            &txn,
            &bi,
            ins,
            super::local_dossiers::Held::PendingGrant { rpps: rpps.clone() },
        )?;
        txn.trace(vec![self.admin_entry(
            "pending-grant",
            Some(ins),
            Some("consent given in person"),
        )]);
        txn.commit()
    }

    /// Site: records in `txn` that `rpps` holds a pending grant on dossier `ins` from now.
    pub(super) fn put_pending_grant(
        &self,
        txn: &crate::kv::WriteTransaction,
        ins: &Ins,
        rpps: &Rpps,
    ) -> Result<()> {
        let bi = &self.blind(ins);
        self.note_change(super::changes::Changed::Grants { ins: ins.clone() })?;
        let now = self.now();
        let mut table = self.digested(txn, PENDING_GRANTS)?;
        // Encounters that ended are forgotten.
        table.retain(|_, v| {
            postcard::from_bytes::<Pending>(v).is_ok_and(|p| now - p.at < PENDING_VALID)
        })?;
        table.insert(
            pending_key(bi, &self.rpps_index(rpps)).as_slice(),
            postcard::to_stdvec(&Pending { at: now })?.as_slice(),
        )?;
        Ok(())
    }

    /// Site: true when `rpps` holds a usable pending grant on dossier `bi`, given the signed
    /// grant record (its state and issue date) if there is one.
    pub(super) fn pending_grant_applies(
        &self,
        txn: &ReadTransaction,
        bi: &[u8; 32],
        rpps: &Rpps,
        signed: Option<(GrantState, Millis)>,
    ) -> Result<bool> {
        if self.config.role != Role::Site {
            return Ok(false);
        }
        let table = match txn.open_table(PENDING_GRANTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let Some(row) = table.get(pending_key(bi, &self.rpps_index(rpps)).as_slice())? else {
            return Ok(false);
        };
        let pending: Pending = postcard::from_bytes(row.value())?;
        let fresh = self.now() - pending.at < PENDING_VALID;
        Ok(fresh
            && match signed {
                None => true,
                Some((GrantState::Blocked, _)) => false,
                Some((_, issued_at)) => issued_at < pending.at,
            })
    }
}
