//! The host's custody of each site's trace: the entries arrive in chain order and are checked as
//! a chain on arrival, under the key the site chains them with (its *chain key*, which a site
//! gives the host over the authenticated link, so that the host, and only it, can verify what
//! the hashes stored at the site hide from someone holding the data folder).
//!
//! Invariants: a site's chain key, once held, never changes (a different key is an integrity
//! failure, traced: a site cannot restart its history); an entry is stored only if its chain
//! hash follows the entry before it under that key; an entry sent again is compared with the
//! one held, and a difference (a rewritten history) is refused and traced, never skipped; the
//! stored entries of a site verify from 1 to its head (`verify_audit`).
//!
//! Every batch of entries comes with the site's signature over its last entry
//! (`SignedTraceHead`: the site id, that entry's sequence and chain hash), made with the key of
//! the site's certificate. The sync layer checks the signature against the certificate of the
//! connection; the store takes a batch only with a signed head naming its last entry, and
//! keeps the newest signed head of each site with the certificate that signed it
//! (`TraceHeadEvidence`), so the host's copy of a site's trace is vouched for by the site
//! itself, not only by the host.

use crate::kv::ReadableTable;
use zeroize::Zeroizing;

use super::tables::*;
use super::{Replica, Role, TraceRecord, trace_aad};
use crate::crypto::{Key, aad};
use crate::error::{Error, Result};
use crate::ids::SiteId;

/// A site's signature over the head of its trace: the last entry of a batch it sends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedTraceHead {
    /// Sequence of the entry signed.
    pub seq: u64,
    /// Its chain hash.
    pub hash: [u8; 32],
    /// The signature of `SignedTraceHead::message` by the site's certificate key (ECDSA P-256,
    /// ASN.1 DER).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedTraceHead {
    /// The bytes a site signs: a context label, its site id, the sequence and the chain hash.
    pub fn message(site: SiteId, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
        let mut out = b"carnet trace head v1\0".to_vec();
        out.extend_from_slice(&site.0.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(hash);
        out
    }
}

/// What the host keeps of a site's newest signed head: the signature and the certificate
/// (DER) whose key made it, so the head can be checked again later, by anyone holding the CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceHeadEvidence {
    /// The signed head.
    pub head: SignedTraceHead,
    /// The certificate that signed it.
    #[serde(with = "serde_bytes")]
    pub signer: Vec<u8>,
}

/// Associated data of a site's chain key, sealed at the host: bound to the site.
pub(super) fn chain_key_aad(site: SiteId) -> Vec<u8> {
    aad(&[b"site-chain-key", &site.0.to_be_bytes()])
}

impl Replica {
    /// Site: the key this site chains its trace with, for the host to verify it (sent over the
    /// mutually authenticated link only).
    pub(crate) fn trace_chain_key(&self) -> [u8; 32] {
        *self.keys.chain.expose()
    }

    /// Host: the chain key of `site`, if it gave one.
    fn site_chain_key(&self, txn: &impl ChainKeys, site: SiteId) -> Result<Option<Key>> {
        let Some(sealed) = txn.sealed_chain_key(site)? else {
            return Ok(None);
        };
        let plain = self
            .keys
            .audit
            .open(&chain_key_aad(site), &sealed)
            .map_err(|_| {
                Error::integrity(format!("the chain key held for site {site} was altered"))
            })?;
        Ok(Some(Key::from_bytes(&plain)?))
    }

    /// Host: records the chain key `site` presents, or checks it against the one held. A
    /// different key is refused, and the refusal traced.
    pub(crate) fn admit_chain_key(&self, site: SiteId, key: &[u8; 32]) -> Result<()> {
        if self.config.role != super::Role::Host {
            return Err(Error::invalid("only the host keeps the sites' traces"));
        }
        {
            let txn = self.begin_read()?;
            if let Some(held) = self.site_chain_key(&*txn, site)? {
                if held.expose() == key {
                    return Ok(());
                }
                drop(txn);
                self.trace_refusal(site, "trace-key-mismatch")?;
                return Err(Error::integrity(format!(
                    "site {site} presented another trace chain key than the one the host holds: \
                     its trace history cannot be checked; re-enrol the site or investigate"
                )));
            }
        }
        let txn = self.begin_write()?;
        // Another session of the same site may have stored it meanwhile: the first one stands.
        if self.site_chain_key(&*txn, site)?.is_none() {
            let sealed = self.keys.audit.seal(&chain_key_aad(site), key)?;
            self.digested(&txn, SITE_CHAIN_KEYS)?
                .insert(site.0, sealed.as_slice())?;
        }
        txn.commit()
    }

    /// Host: a trace entry of the host that says a site's trace was refused (`what`: a short
    /// reason; ids only).
    pub(crate) fn trace_refusal(&self, site: SiteId, what: &str) -> Result<()> {
        let txn = self.begin_write()?;
        txn.trace(vec![self.admin_entry(
            what,
            None,
            Some(&format!("site {site}")),
        )]);
        txn.commit()
    }

    /// Host: stores another site's trace entries, in order and exactly once, each checked as
    /// the next link of the site's chain under its chain key; an entry already held is compared
    /// with the one sent. `signed` is the site's signed head of the last entry (its signature
    /// checked by the caller against `signed.signer`): required with any entry, kept when it is
    /// newer than the one held. Returns the new mark. A refusal changes nothing but the host's
    /// trace.
    pub(crate) fn apply_remote_traces(
        &self,
        origin: SiteId,
        records: &[TraceRecord],
        signed: Option<&TraceHeadEvidence>,
    ) -> Result<u64> {
        if origin == self.config.site_id
            || (self.config.role == Role::Host && super::daemons::is_daemon_origin(origin))
        {
            return Err(Error::invalid("a replica does not apply its own trace"));
        }
        match self.store_remote_traces(origin, records, signed) {
            Err(Error::Integrity(why)) => {
                self.trace_refusal(origin, "trace-refused")?;
                Err(Error::Integrity(why))
            }
            other => other,
        }
    }

    fn store_remote_traces(
        &self,
        origin: SiteId,
        records: &[TraceRecord],
        signed: Option<&TraceHeadEvidence>,
    ) -> Result<u64> {
        if let Some(last) = records.last() {
            match signed {
                None => {
                    return Err(Error::integrity(format!(
                        "site {origin} sent trace entries without signing their head: nothing \
                         stored"
                    )));
                }
                Some(s) if (s.head.seq, s.head.hash) != (last.seq, last.hash) => {
                    return Err(Error::integrity(format!(
                        "site {origin} signed another trace head than the entries it sent: \
                         nothing stored"
                    )));
                }
                Some(_) => {}
            }
        }
        // Emergencies among the new entries are judged on a snapshot first, then indexed in
        // the transaction that stores them (`emergencies`).
        let held = self.trace_head_held(origin)?.0;
        let judged = self.judge_site_emergencies(
            origin,
            records
                .iter()
                .filter(|r| r.seq > held && r.entry.origin == origin)
                .map(|r| (r.seq, &r.entry)),
        )?;
        let txn = self.begin_write()?;
        let key = self.site_chain_key(&*txn, origin)?.ok_or_else(|| {
            Error::invalid(format!(
                "site {origin} sent trace entries before its chain key: nothing stored"
            ))
        })?;
        let mut head: (u64, [u8; 32]) = match txn.open_table(AUDIT_HEADS)?.get(origin.0)? {
            Some(v) => postcard::from_bytes(v.value())?,
            None => (0, [0; 32]),
        };
        let held_before = head;
        {
            let mut table = txn.open_table(AUDIT)?;
            for r in records {
                let bytes = Zeroizing::new(postcard::to_stdvec(&r.entry)?);
                if r.seq <= head.0 {
                    // Sent again (a lost acknowledgement): it must be the entry held.
                    let held = table
                        .get((origin.0, r.seq))?
                        .ok_or_else(|| {
                            Error::integrity(format!(
                                "trace entry {} of site {origin} is missing here",
                                r.seq
                            ))
                        })?
                        .value()
                        .to_vec();
                    let (hash, plain) = self.open_trace_row(origin.0, r.seq, &held)?;
                    if hash != r.hash || *plain != *bytes {
                        return Err(Error::integrity(format!(
                            "site {origin} sent trace entry {} again, different from the one \
                             the host holds: its history was rewritten",
                            r.seq
                        )));
                    }
                    continue;
                }
                if r.seq != head.0 + 1 || r.entry.origin != origin {
                    return Err(Error::invalid(format!(
                        "trace entry {} of site {origin} does not follow entry {}",
                        r.seq, head.0
                    )));
                }
                if crate::audit::chain_hash(key.expose(), &bytes, &head.1) != r.hash {
                    return Err(Error::integrity(format!(
                        "trace entry {} of site {origin} does not chain to entry {}",
                        r.seq, head.0
                    )));
                }
                let sealed = self.keys.audit.seal(&trace_aad(origin.0), &bytes)?;
                let row = postcard::to_stdvec(&StoredTrace {
                    hash: r.hash,
                    sealed,
                })?;
                table.put((origin.0, r.seq), row.as_slice())?;
                head = (r.seq, r.hash);
            }
        }
        txn.open_table(AUDIT_HEADS)?
            .insert(origin.0, postcard::to_stdvec(&head)?.as_slice())?;
        let first = held_before.0;
        self.store_judged(&txn, judged, |seq| seq > first && seq <= head.0)?;
        let new_entries = || {
            records
                .iter()
                .filter(|r| r.seq > first && r.seq <= head.0)
                .map(|r| &r.entry)
        };
        self.notify_first_accesses(&txn, origin, new_entries())?;
        self.scope_handovers(&txn, origin, new_entries())?;
        if let Some(signed) = signed.filter(|s| s.head.seq == head.0) {
            let mut heads = txn.open_table(SITE_SIGNED_HEADS)?;
            let newer = match heads.get(origin.0)? {
                Some(v) => {
                    postcard::from_bytes::<TraceHeadEvidence>(v.value())?
                        .head
                        .seq
                        < head.0
                }
                None => true,
            };
            if newer {
                heads.insert(origin.0, postcard::to_stdvec(signed)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(head.0)
    }

    /// Host: the newest head of `origin`'s trace that the site signed, with the certificate
    /// that signed it (`None` before its first signed batch).
    pub(crate) fn signed_trace_head(&self, origin: SiteId) -> Result<Option<TraceHeadEvidence>> {
        let txn = self.begin_read()?;
        let heads = match txn.open_table(SITE_SIGNED_HEADS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let row = heads.get(origin.0)?;
        Ok(match row {
            Some(v) => Some(postcard::from_bytes(v.value())?),
            None => None,
        })
    }

    /// Host: the last entry of `origin`'s trace held here, and its chain hash (`(0, zeros)`
    /// when none): the site checks it against its own.
    pub(crate) fn trace_head_held(&self, origin: SiteId) -> Result<(u64, [u8; 32])> {
        let txn = self.begin_read()?;
        let heads = txn.open_table(AUDIT_HEADS)?;
        let row = heads.get(origin.0)?;
        Ok(match row {
            Some(v) => postcard::from_bytes(v.value())?,
            None => (0, [0; 32]),
        })
    }

    /// The chain hash of this replica's own trace entry `seq`, if it holds it in its table
    /// (at a site, an entry the host acknowledged was sent from there).
    pub(crate) fn own_trace_hash(&self, seq: u64) -> Result<Option<[u8; 32]>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let row = table.get((self.trace_origin().0, seq))?;
        Ok(match row {
            Some(v) => Some(postcard::from_bytes::<StoredTrace>(v.value())?.hash),
            None => None,
        })
    }

    /// Host: the chain key `origin` gave, to verify its stored chain (`verify_audit`).
    pub(super) fn chain_key_of(
        &self,
        txn: &crate::kv::ReadTransaction,
        origin: SiteId,
    ) -> Result<Option<Key>> {
        self.site_chain_key(txn, origin)
    }
}

/// Where a site's sealed chain key is read from: a read or a write transaction.
trait ChainKeys {
    fn sealed_chain_key(&self, site: SiteId) -> Result<Option<Vec<u8>>>;
}

impl ChainKeys for crate::kv::ReadTransaction {
    fn sealed_chain_key(&self, site: SiteId) -> Result<Option<Vec<u8>>> {
        match self.open_table(SITE_CHAIN_KEYS) {
            Ok(t) => Ok(t.get(site.0)?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl ChainKeys for crate::kv::WriteTransaction {
    fn sealed_chain_key(&self, site: SiteId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .open_table(SITE_CHAIN_KEYS)?
            .get(site.0)?
            .map(|v| v.value().to_vec()))
    }
}
