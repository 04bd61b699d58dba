//! The site certificates the host refuses although the national CA issued them (every
//! certificate of a site it revoked, each one it retired), relayed to the sites as a signed
//! record (`AuthorityRecord::RefusedCertificates`) so that a site refuses them too in its
//! sessions with other sites (carnet-syncd's `transport::PeerPolicy`).
//!
//! Invariants: the host signs a new list in the commit that stores the register change it
//! follows from (`put_sealed_refusing`), and only when the list differs from the one in force;
//! a list is whole (the newest replaces the one held), and reaches the sites as every record
//! that concerns them all (logged for each site, in a bundle), admitted only if it verifies under
//! the pinned host key and is newer than the one held. Each replica keeps the list in force in
//! memory, read again after each commit that may have admitted one (`reload_held`), so a check
//! reads no file.

use std::sync::Arc;

use super::tables::*;
use super::{Replica, lock_err};
use crate::authority::{AuthorityRecord, RefusedCertificates, Verified};
use crate::error::Result;

impl Replica {
    /// The site certificates the host refuses, as this replica holds them: the newest list it
    /// admitted (empty, dated 0, before any). From memory: cheap enough for every handshake.
    pub fn refused_certificates(&self) -> Result<Arc<RefusedCertificates>> {
        Ok(self.refused_certificates.read().map_err(lock_err)?.clone())
    }

    /// True when the host refuses the site certificate with this fingerprint (BLAKE3 of its
    /// DER), per the list this replica holds.
    pub fn refuses_certificate(&self, fingerprint: &[u8; 32]) -> Result<bool> {
        Ok(self
            .refused_certificates()?
            .fingerprints
            .contains(fingerprint))
    }

    /// Host: see `HostAuthority::put_sealed_refusing`.
    pub(crate) fn put_sealed_refusing(
        &self,
        name: &str,
        value: &[u8],
        refused: Vec<[u8; 32]>,
    ) -> Result<Option<u64>> {
        let txn = self.begin_write()?;
        self.put_sealed_in(&txn, name, value)?;
        let list = RefusedCertificates::new(self.now(), refused);
        let in_force = match self.authority_get(
            &txn.open_table(AUTHORITY)?,
            &subject_key(tag::REFUSED_CERTIFICATES, None, None),
        )? {
            Some(Verified {
                record: AuthorityRecord::RefusedCertificates(r),
                ..
            }) => r.fingerprints,
            _ => Vec::new(),
        };
        if in_force == list.fingerprints {
            txn.commit()?;
            return Ok(None);
        }
        let seq = self.issue_in(&txn, AuthorityRecord::RefusedCertificates(list))?;
        txn.trace(vec![self.admin_entry(
            "site-certificates-refused",
            None,
            None,
        )]);
        txn.commit()?;
        self.reload_held()?;
        Ok(Some(seq))
    }
}
