//! Records only the national host may author: dossier heads (closure included), grants,
//! emergency preferences and the habilitation matrix. Each is signed with the host's Ed25519
//! key; a site verifies the signature before it stores or uses a record, so records stay
//! trustworthy when relayed.
//!
//! Invariants: a `SignedRecord` is accepted only if its signature verifies under the host key
//! the replica pinned; records are versioned by the host's `seq` and a replica keeps, per
//! subject, only the highest `seq` it has verified, so an old record replayed cannot undo a
//! revocation. Once admitted, records are kept sealed; the AEAD keeps them from being altered
//! at rest, so they are not re-verified on every read.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Ins, Rpps};
use crate::model::{DossierHead, EmergencyPrefs, Grant, HabilitationMatrix};

/// Format version of the signed body; a newer one is refused with a clear error.
pub const RECORD_FORMAT: u8 = 1;

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
    /// The host vouches that the records it sent are current as of `at`: a site's authority
    /// cache is as fresh as the latest heartbeat it verified (DOMAIN §5 lease).
    Heartbeat {
        /// When the host issued it.
        at: crate::time::Millis,
    },
    /// The host destroyed the dossier: it supersedes the head (same subject) and carries no
    /// identity, so sites that missed the closure still purge their copy.
    Purged {
        /// Dossier.
        ins: Ins,
        /// When the host purged it.
        at: crate::time::Millis,
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
}

impl AuthorityRecord {
    /// The subject of this record.
    pub fn subject(&self) -> Subject {
        match self {
            AuthorityRecord::Dossier(h) => Subject::Dossier(h.ins.clone()),
            AuthorityRecord::Grant(g) => Subject::Grant(g.ins.clone(), g.rpps.clone()),
            AuthorityRecord::Emergency { ins, .. } => Subject::Emergency(ins.clone()),
            AuthorityRecord::Matrix(_) => Subject::Matrix,
            AuthorityRecord::Heartbeat { .. } => Subject::Heartbeat,
            AuthorityRecord::Purged { ins, .. } => Subject::Dossier(ins.clone()),
        }
    }

    /// The dossier concerned, if any.
    pub fn ins(&self) -> Option<&Ins> {
        match self {
            AuthorityRecord::Dossier(h) => Some(&h.ins),
            AuthorityRecord::Grant(g) => Some(&g.ins),
            AuthorityRecord::Emergency { ins, .. } => Some(ins),
            AuthorityRecord::Matrix(_) | AuthorityRecord::Heartbeat { .. } => None,
            AuthorityRecord::Purged { ins, .. } => Some(ins),
        }
    }
}

/// A record as signed by the host: `body` is the postcard encoding of
/// `(RECORD_FORMAT, seq, record)`, and `signature` signs `body`.
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
    let (format, seq, record): (u8, u64, AuthorityRecord) = postcard::from_bytes(&signed.body)?;
    if format != RECORD_FORMAT {
        return Err(Error::invalid(format!(
            "signed record format {format} is not supported by this version (expects {RECORD_FORMAT}): upgrade carnet"
        )));
    }
    Ok(Verified { seq, record })
}

/// A file of signed records, for provisioning a site before sync exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// Format version of the bundle.
    pub format: u8,
    /// The host's Ed25519 public key.
    pub host_key: [u8; 32],
    /// Records, any order.
    pub records: Vec<SignedRecord>,
}

/// Magic prefix of a bundle file.
pub const BUNDLE_MAGIC: &[u8; 8] = b"CARNETAB";

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
        let b: Bundle = postcard::from_bytes(rest)
            .map_err(|_| Error::integrity("the authority bundle is truncated or corrupted"))?;
        if b.format != RECORD_FORMAT {
            return Err(Error::invalid(format!(
                "authority bundle format {} is not supported (expects {RECORD_FORMAT})",
                b.format
            )));
        }
        Ok(b)
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

    #[test]
    fn bundle_round_trip_and_garbage() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let rec = AuthorityRecord::Matrix(HabilitationMatrix::default_matrix());
        let b = Bundle {
            format: RECORD_FORMAT,
            host_key: key.verifying_key().to_bytes(),
            records: vec![sign(&key, 1, &rec).expect("sign")],
        };
        let bytes = b.to_bytes().expect("encode");
        assert_eq!(Bundle::from_bytes(&bytes).expect("decode").records.len(), 1);
        assert!(Bundle::from_bytes(b"hello").is_err());
        assert!(Bundle::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }
}
