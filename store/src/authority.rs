//! Records only the national host may author: dossier heads (closure included), grants,
//! emergency preferences, the habilitation matrix and the site certificates the host refuses
//! (`RefusedCertificates`). Each is signed with the host's Ed25519 key; a site verifies the
//! signature before it stores or uses a record, so records stay trustworthy when relayed.
//!
//! Invariants: a `SignedRecord` is accepted only if its signature verifies under the host key
//! the replica pinned; records are versioned by the host's `seq` and a replica keeps, per
//! subject, only the highest `seq` it has verified, so an old record replayed cannot undo a
//! revocation. Once admitted, records are kept sealed; the AEAD keeps them from being altered
//! at rest, so they are not re-verified on every read.
//!
//! **Heartbeats and the lease (DOMAIN §5).** A site's authority cache is dated by the newest
//! heartbeat it admitted; past its lease, normal reads stop. A heartbeat therefore says what it
//! vouches for, and a site admits it only once it holds exactly that (`Covers`):
//! - in a bundle, the heartbeat (`Bundle::vouch`) covers a digest of every record of the bundle
//!   (`records_digest`): the bundle is signed as a whole, so a bundle with a record removed (a
//!   revocation withheld) does not import at all;
//! - in a sync session, the heartbeat names the site and the head of the site's change log on
//!   the host. The host logs every record that concerns a site in the transaction that changes
//!   it, and the site applies its log in order, each batch with its cursor in one transaction:
//!   a site whose cursor is that head holds every record the host meant for it as of the
//!   heartbeat, and one whose cursor is behind does not (it is not admitted). Naming the head
//!   costs the host one lookup, so a round with nothing new stays one small round trip. A
//!   digest of the records themselves cannot be checked that way: the log names things and
//!   what travels is their state at pull time, filtered by the site's scope then, so a site
//!   could not recompute it, and the host could only keep it for each site by redoing that
//!   filtering at every change. A running digest of the log would detect a host log rewritten
//!   at the same position (a host restored from a backup): that is rollback detection, left to
//!   issue 18 item 6.
//!
//! Heartbeats are not transferable: one names its site, and one in a bundle covers exactly
//! that bundle. Any signed time later than the local clock plus `MAX_SKEW` (a heartbeat, a
//! grant's issue, a closure) is refused, so a heartbeat dated ahead cannot keep a lease alive.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Ins, Rpps, SiteId};
use crate::model::{DossierHead, EmergencyPrefs, Grant, HabilitationMatrix};
use crate::time::Millis;

/// Format version of the signed body this build writes; another one is refused with a clear
/// error. 2 brought `AuthorityRecord::Heartbeat`, which says what it vouches for; 3 gives a
/// grant its end (`Grant::until`) and the basis `medecin-traitant`; 4 records in a closure
/// whether the holder asked the dossier's deletion (`Closure::deletion_requested`).
pub const RECORD_FORMAT: u8 = 4;
/// The oldest format still read. Older heads and grants do not decode as format 4 ones
/// (postcard is positional: a grant ends with `until`, a closure with `deletion_requested`),
/// and the project has no deployed replica: they are refused, and a site is provisioned again
/// from a host of this build.
pub const RECORD_FORMAT_MIN: u8 = 4;
/// Format of a bundle file this build writes and reads. 2: signed as a whole (`Bundle::vouch`).
/// A format 1 bundle (records signed one by one) is refused: any record could be removed.
pub const BUNDLE_FORMAT: u8 = 2;
/// How far ahead of the local clock a signed time may be (clocks differ a little).
pub const MAX_SKEW: Millis = 5 * 60 * 1000;

/// Something the host decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthorityRecord {
    /// A dossier head; closure is a head with status `Closed`.
    Dossier(DossierHead),
    /// A grant, revocation or block.
    Grant(Grant),
    /// Emergency preferences of a dossier.
    Emergency {
        /// Dossier.
        ins: Ins,
        /// Preferences.
        prefs: EmergencyPrefs,
    },
    /// The habilitation matrix.
    Matrix(HabilitationMatrix),
    /// The format 1 heartbeat ("current as of `at`", of nothing in particular). Kept so that
    /// the variants after it keep their position; never signed by this build, and never
    /// admitted (it renews no lease).
    HeartbeatV1 {
        /// When the host issued it.
        at: Millis,
    },
    /// The host destroyed the dossier: it supersedes the head (same subject) and carries no
    /// identity, so sites that missed the closure still purge their copy.
    Purged {
        /// Dossier.
        ins: Ins,
        /// When the host purged it.
        at: Millis,
    },
    /// The host vouches that what it covers is current as of its time: a site's authority
    /// cache is as fresh as the latest heartbeat it admitted (DOMAIN §5 lease). Never stored.
    Heartbeat(Heartbeat),
    /// The site certificates the host refuses, for sites to refuse them in their sessions with
    /// each other (`transport::PeerPolicy` in carnet-syncd). One per host: the newest replaces
    /// the list whole.
    RefusedCertificates(RefusedCertificates),
}

/// The site certificates the host refuses although the national CA issued them: every
/// certificate of a site it revoked, and each certificate it retired (a renewal with
/// `--retire-old`, or the switch to a certificate renewed over sync).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedCertificates {
    /// When the host signed the list.
    pub at: Millis,
    /// The certificates' fingerprints (BLAKE3 of the DER), ascending, each once.
    pub fingerprints: Vec<[u8; 32]>,
}

impl RefusedCertificates {
    /// The list of `fingerprints` at `at`, put in order, each once.
    pub fn new(at: Millis, mut fingerprints: Vec<[u8; 32]>) -> RefusedCertificates {
        fingerprints.sort_unstable();
        fingerprints.dedup();
        RefusedCertificates { at, fingerprints }
    }
}

/// A heartbeat: when, and what it vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// When the host signed it.
    pub at: Millis,
    /// What a site must hold for it to date its cache.
    pub covers: Covers,
}

/// What a heartbeat vouches for (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Covers {
    /// Site `site`'s change log on the host, up to `log_head`: the site is current when its
    /// pull cursor is `log_head`.
    Log {
        /// The site it was signed for.
        site: SiteId,
        /// The last sequence of that site's log when it was signed.
        log_head: u64,
    },
    /// Exactly the records of a bundle: `count` records whose signed bytes, in order, digest to
    /// `digest` (`records_digest`).
    Records {
        /// Number of records.
        count: u64,
        /// `records_digest` of them.
        digest: [u8; 32],
    },
}

/// What a record is about: a newer record on the same subject supersedes an older one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A dossier's head.
    Dossier(Ins),
    /// A professional's grant on a dossier.
    Grant(Ins, Rpps),
    /// A dossier's emergency preferences.
    Emergency(Ins),
    /// The matrix.
    Matrix,
    /// The host's latest heartbeat.
    Heartbeat,
    /// The site certificates the host refuses.
    RefusedCertificates,
}

impl AuthorityRecord {
    /// The subject of this record.
    pub fn subject(&self) -> Subject {
        match self {
            AuthorityRecord::Dossier(h) => Subject::Dossier(h.ins.clone()),
            AuthorityRecord::Grant(g) => Subject::Grant(g.ins.clone(), g.rpps.clone()),
            AuthorityRecord::Emergency { ins, .. } => Subject::Emergency(ins.clone()),
            AuthorityRecord::Matrix(_) => Subject::Matrix,
            AuthorityRecord::HeartbeatV1 { .. } | AuthorityRecord::Heartbeat(_) => {
                Subject::Heartbeat
            }
            AuthorityRecord::Purged { ins, .. } => Subject::Dossier(ins.clone()),
            AuthorityRecord::RefusedCertificates(_) => Subject::RefusedCertificates,
        }
    }

    /// The dossier concerned, if any.
    pub fn ins(&self) -> Option<&Ins> {
        match self {
            AuthorityRecord::Dossier(h) => Some(&h.ins),
            AuthorityRecord::Grant(g) => Some(&g.ins),
            AuthorityRecord::Emergency { ins, .. } => Some(ins),
            AuthorityRecord::Matrix(_)
            | AuthorityRecord::HeartbeatV1 { .. }
            | AuthorityRecord::Heartbeat(_)
            | AuthorityRecord::RefusedCertificates(_) => None,
            AuthorityRecord::Purged { ins, .. } => Some(ins),
        }
    }

    /// True for a heartbeat, of either format.
    pub fn is_heartbeat(&self) -> bool {
        matches!(
            self,
            AuthorityRecord::HeartbeatV1 { .. } | AuthorityRecord::Heartbeat(_)
        )
    }

    /// The latest time the record states (an issue, a creation, a closure, a purge, a
    /// heartbeat), if any.
    pub fn latest_time(&self) -> Option<Millis> {
        match self {
            AuthorityRecord::Dossier(h) => Some(
                h.closure
                    .as_ref()
                    .map_or(h.created_at, |c| c.at.max(h.created_at)),
            ),
            AuthorityRecord::Grant(g) => Some(g.issued_at),
            AuthorityRecord::Emergency { .. } | AuthorityRecord::Matrix(_) => None,
            AuthorityRecord::HeartbeatV1 { at } | AuthorityRecord::Purged { at, .. } => Some(*at),
            AuthorityRecord::Heartbeat(h) => Some(h.at),
            AuthorityRecord::RefusedCertificates(r) => Some(r.at),
        }
    }
}

/// Refuses a record that states a time later than `now` plus `MAX_SKEW`: a clock ahead (the
/// host's) or behind (this replica's) must not date a cache in the future, where its lease
/// would not run.
pub fn check_not_ahead(v: &Verified, now: Millis) -> Result<()> {
    match v.record.latest_time() {
        Some(t) if t > now.saturating_add(MAX_SKEW) => Err(Error::invalid(format!(
            "a record signed by the host (sequence {}) is dated {} s ahead of this replica's clock, more than the {} s allowed: check the clocks of this replica and of the host; nothing was changed",
            v.seq,
            t.saturating_sub(now) / 1000,
            MAX_SKEW / 1000
        ))),
        _ => Ok(()),
    }
}

/// The digest a bundle's heartbeat covers: BLAKE3 (derived key) over each record's signed body
/// and signature, length-prefixed, in order.
pub fn records_digest(records: &[SignedRecord]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("carnet authority bundle records 2");
    for r in records {
        for part in [&r.body, &r.signature] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    *h.finalize().as_bytes()
}

/// A record as signed by the host: `body` is the postcard encoding of
/// `(format, seq, record)`, and `signature` signs `body`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// Signed bytes.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Ed25519 signature of `body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A verified record and its host sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Host sequence number: higher supersedes lower on the same subject.
    pub seq: u64,
    /// The record.
    pub record: AuthorityRecord,
}

/// Signs a record with the host key.
pub fn sign(key: &SigningKey, seq: u64, record: &AuthorityRecord) -> Result<SignedRecord> {
    let body = postcard::to_stdvec(&(RECORD_FORMAT, seq, record))
        .map_err(|e| Error::Storage(format!("encoding a record: {e}")))?;
    let signature = key.sign(&body).to_bytes().to_vec();
    Ok(SignedRecord { body, signature })
}

/// Verifies a signed record under the host's public key and decodes it.
pub fn verify(host: &VerifyingKey, signed: &SignedRecord) -> Result<Verified> {
    let sig = Signature::from_slice(&signed.signature)
        .map_err(|_| Error::integrity("a signed record has a malformed signature"))?;
    host.verify(&signed.body, &sig)
        .map_err(|_| Error::integrity("a signed record does not verify under the host key"))?;
    decode(signed)
}

/// Decodes a record already verified (stored sealed after verification).
pub fn decode(signed: &SignedRecord) -> Result<Verified> {
    let format = signed.body.first().copied().unwrap_or(0);
    if !(RECORD_FORMAT_MIN..=RECORD_FORMAT).contains(&format) {
        return Err(Error::invalid(format!(
            "signed record format {format} is not supported by this version (expects {RECORD_FORMAT_MIN} to {RECORD_FORMAT}): upgrade carnet"
        )));
    }
    let (_, seq, record): (u8, u64, AuthorityRecord) = postcard::from_bytes(&signed.body)?;
    Ok(Verified { seq, record })
}

/// A file of signed records, for provisioning a site before sync exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// Format version of the bundle (`BUNDLE_FORMAT`).
    pub format: u8,
    /// The host's Ed25519 public key.
    pub host_key: [u8; 32],
    /// Records, any order; never a heartbeat.
    pub records: Vec<SignedRecord>,
    /// The host's heartbeat covering exactly `records` (`Covers::Records`): the bundle signed
    /// as a whole. `None` in a bundle a site exported: it relays records and renews no lease.
    pub vouch: Option<SignedRecord>,
}

/// Magic prefix of a bundle file.
pub const BUNDLE_MAGIC: &[u8; 8] = b"CARNETAB";

/// A bundle verified under the host key: its records, and the heartbeat that vouches for them
/// all (if the host signed the bundle whole).
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// Every record, verified, in the bundle's order.
    pub records: Vec<Verified>,
    /// The vouching heartbeat (its record, for its sequence, and the heartbeat itself).
    pub vouch: Option<(Verified, Heartbeat)>,
}

impl Bundle {
    /// Encodes as a file: magic, then postcard.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = BUNDLE_MAGIC.to_vec();
        out.extend(
            postcard::to_stdvec(self)
                .map_err(|e| Error::Storage(format!("encoding a bundle: {e}")))?,
        );
        Ok(out)
    }

    /// Decodes a bundle file; anything else is a clear error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let rest = bytes
            .strip_prefix(BUNDLE_MAGIC.as_slice())
            .ok_or_else(|| Error::invalid("not a Carnet authority bundle (bad magic)"))?;
        // The format comes first (a postcard u8 is one byte): checked before the rest, whose
        // layout depends on it.
        if let Some(&format) = rest.first() {
            Self::check_format(format)?;
        }
        postcard::from_bytes(rest)
            .map_err(|_| Error::integrity("the authority bundle is truncated or corrupted"))
    }

    fn check_format(format: u8) -> Result<()> {
        match format {
            BUNDLE_FORMAT => Ok(()),
            1 => Err(Error::invalid(
                "authority bundle format 1 is no longer accepted: its records are not signed as a whole, so one could have been removed; export a new bundle from the host",
            )),
            other => Err(Error::invalid(format!(
                "authority bundle format {other} is not supported (expects {BUNDLE_FORMAT}): upgrade carnet"
            ))),
        }
    }

    /// Verifies every record under `host`, and the vouch over exactly those records. Refuses
    /// the whole bundle when anything fails: a record that does not verify, a heartbeat among
    /// the records, a vouch that does not verify or covers other records (one removed, added or
    /// replaced).
    pub fn verify(&self, host: &VerifyingKey) -> Result<VerifiedBundle> {
        Self::check_format(self.format)?;
        let records: Vec<Verified> = self
            .records
            .iter()
            .map(|r| verify(host, r))
            .collect::<Result<_>>()?;
        if records.iter().any(|v| v.record.is_heartbeat()) {
            return Err(Error::integrity(
                "the authority bundle carries a heartbeat among its records (a heartbeat travels only as the bundle's vouch)",
            ));
        }
        let vouch = match &self.vouch {
            None => None,
            Some(signed) => {
                let v = verify(host, signed)?;
                let AuthorityRecord::Heartbeat(hb) = &v.record else {
                    return Err(Error::integrity(
                        "the authority bundle's vouch is not a heartbeat",
                    ));
                };
                let hb = hb.clone();
                match hb.covers {
                    Covers::Records { count, digest }
                        if count == self.records.len() as u64
                            && digest == records_digest(&self.records) => {}
                    _ => {
                        return Err(Error::integrity(
                            "the authority bundle is incomplete or altered: its records are not the ones the host signed (a record removed, added or replaced)",
                        ));
                    }
                }
                Some((v, hb))
            }
        };
        Ok(VerifiedBundle { records, vouch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse_forgery() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let rec = AuthorityRecord::Matrix(HabilitationMatrix::default_matrix());
        let signed = sign(&key, 5, &rec).expect("sign");
        let v = verify(&key.verifying_key(), &signed).expect("verify");
        assert_eq!((v.seq, v.record), (5, rec));
        let mut bad = signed.clone();
        let last = bad.body.len() - 1;
        bad.body[last] ^= 1;
        assert!(matches!(
            verify(&key.verifying_key(), &bad),
            Err(Error::Integrity(_))
        ));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(verify(&other.verifying_key(), &signed).is_err());
        bad = signed;
        bad.signature.truncate(3);
        assert!(verify(&key.verifying_key(), &bad).is_err());
    }

    /// A bundle of `records` signed whole by `key` at `at`.
    fn vouched(key: &SigningKey, records: Vec<SignedRecord>, at: Millis) -> Bundle {
        let vouch = sign(
            key,
            9,
            &AuthorityRecord::Heartbeat(Heartbeat {
                at,
                covers: Covers::Records {
                    count: records.len() as u64,
                    digest: records_digest(&records),
                },
            }),
        )
        .expect("sign");
        Bundle {
            format: BUNDLE_FORMAT,
            host_key: key.verifying_key().to_bytes(),
            records,
            vouch: Some(vouch),
        }
    }

    #[test]
    fn bundle_round_trip_and_garbage() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let rec = AuthorityRecord::Matrix(HabilitationMatrix::default_matrix());
        let b = vouched(&key, vec![sign(&key, 1, &rec).expect("sign")], 1);
        let bytes = b.to_bytes().expect("encode");
        let back = Bundle::from_bytes(&bytes).expect("decode");
        assert_eq!(back.records.len(), 1);
        let v = back.verify(&key.verifying_key()).expect("verify");
        assert_eq!(v.records.len(), 1);
        assert!(v.vouch.is_some());
        assert!(Bundle::from_bytes(b"hello").is_err());
        assert!(Bundle::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn a_bundle_is_signed_whole() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let host = key.verifying_key();
        let records: Vec<SignedRecord> = (1..=3)
            .map(|seq| {
                let mut m = HabilitationMatrix::default_matrix();
                m.version = seq as u32;
                sign(&key, seq, &AuthorityRecord::Matrix(m)).expect("sign")
            })
            .collect();
        let good = vouched(&key, records.clone(), 1);
        good.verify(&host).expect("whole");
        let says = |b: &Bundle| b.verify(&host).expect_err("refused").to_string();
        // A record removed (a revocation withheld), added, replaced or reordered.
        for altered in [
            vec![records[0].clone(), records[2].clone()],
            vec![
                records[0].clone(),
                records[1].clone(),
                records[2].clone(),
                records[2].clone(),
            ],
            vec![records[0].clone(), records[0].clone(), records[2].clone()],
            vec![records[2].clone(), records[1].clone(), records[0].clone()],
        ] {
            let mut b = good.clone();
            b.records = altered;
            assert!(says(&b).contains("incomplete or altered"), "{}", says(&b));
        }
        // A heartbeat smuggled among the records, even one the host signed.
        let mut b = vouched(&key, records.clone(), 1);
        b.records.push(good.vouch.clone().expect("vouch"));
        assert!(
            says(&b).contains("heartbeat among its records"),
            "{}",
            says(&b)
        );
        // A vouch that is not a heartbeat, or covers a site's log.
        let mut b = good.clone();
        b.vouch = Some(records[0].clone());
        assert!(says(&b).contains("not a heartbeat"));
        let mut b = good.clone();
        b.vouch = Some(
            sign(
                &key,
                9,
                &AuthorityRecord::Heartbeat(Heartbeat {
                    at: 1,
                    covers: Covers::Log {
                        site: SiteId(1),
                        log_head: 3,
                    },
                }),
            )
            .expect("sign"),
        );
        assert!(says(&b).contains("incomplete or altered"));
        // Another key's vouch.
        let mut b = good.clone();
        b.vouch = vouched(&SigningKey::from_bytes(&[8u8; 32]), records.clone(), 1).vouch;
        assert!(says(&b).contains("does not verify"));
        // Without a vouch (a site's export) the records verify, and nothing vouches for them.
        let mut b = good;
        b.vouch = None;
        assert!(b.verify(&host).expect("records").vouch.is_none());
    }

    #[test]
    fn old_formats_are_read_or_refused_clearly() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        // Format 1 to 3 records (grants without an end, closures without the deletion request)
        // are refused, as is a newer format: each with "upgrade".
        let signed_as = |format: u8, record: &AuthorityRecord| {
            let body = postcard::to_stdvec(&(format, 4u64, record)).expect("encode");
            let signature = key.sign(&body).to_bytes().to_vec();
            SignedRecord { body, signature }
        };
        let m = AuthorityRecord::Matrix(HabilitationMatrix::default_matrix());
        assert_eq!(
            verify(&key.verifying_key(), &signed_as(RECORD_FORMAT, &m))
                .expect("current")
                .record,
            m
        );
        for format in [1u8, 2, 3, 5] {
            let err = verify(&key.verifying_key(), &signed_as(format, &m)).expect_err("other");
            assert!(err.to_string().contains("upgrade carnet"), "{err}");
        }
        // A format 1 bundle is refused as such.
        let mut bytes = BUNDLE_MAGIC.to_vec();
        bytes.extend(
            postcard::to_stdvec(&(
                1u8,
                key.verifying_key().to_bytes(),
                Vec::<SignedRecord>::new(),
            ))
            .expect("encode"),
        );
        let err = Bundle::from_bytes(&bytes).expect_err("v1");
        assert!(
            err.to_string().contains("format 1 is no longer accepted"),
            "{err}"
        );
    }

    #[test]
    fn a_time_ahead_of_the_clock_is_refused() {
        let now = 1_700_000_000_000;
        let hb = |at| Verified {
            seq: 1,
            record: AuthorityRecord::Heartbeat(Heartbeat {
                at,
                covers: Covers::Log {
                    site: SiteId(1),
                    log_head: 0,
                },
            }),
        };
        check_not_ahead(&hb(now + MAX_SKEW), now).expect("within the skew");
        let err = check_not_ahead(&hb(now + MAX_SKEW + 1), now).expect_err("ahead");
        assert!(
            err.to_string().contains("ahead of this replica's clock"),
            "{err}"
        );
        let grant = |issued_at| Verified {
            seq: 2,
            record: AuthorityRecord::Grant(Grant {
                ins: Ins::from_body("1840575123456").expect("ins"),
                rpps: Rpps::parse("10000000001").expect("rpps"),
                state: crate::model::GrantState::Active,
                basis: crate::model::GrantBasis::Treating,
                issued_at,
                until: None,
            }),
        };
        check_not_ahead(&grant(now), now).expect("now");
        assert!(check_not_ahead(&grant(now + 3_600_000), now).is_err());
        let m = Verified {
            seq: 3,
            record: AuthorityRecord::Matrix(HabilitationMatrix::default_matrix()),
        };
        check_not_ahead(&m, now).expect("no time");
    }
}
