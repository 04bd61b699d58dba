//! Serde helpers for byte fields of types that cross the local API as JSON.
//!
//! Invariant: a human-readable format (JSON) carries bytes as one standard base64 string; a
//! binary format (postcard) carries them as plain bytes, so stored encodings do not change.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};
use zeroize::Zeroizing;

/// `#[serde(with = "carnet_store::codec::bytes")]` for `Vec<u8>`.
pub mod bytes {
    use super::*;

    /// Serializes as base64 (human-readable) or bytes.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(v))
        } else {
            serde_bytes::serialize(v, s)
        }
    }

    /// Deserializes from base64 (human-readable) or bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            STANDARD
                .decode(text.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("bad base64: {e}")))
        } else {
            serde_bytes::deserialize(d)
        }
    }
}

/// `#[serde(with = "carnet_store::codec::secret_bytes")]` for `Zeroizing<Vec<u8>>`.
pub mod secret_bytes {
    use super::*;

    /// Serializes as `bytes` does.
    pub fn serialize<S: Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        bytes::serialize(v.as_slice(), s)
    }

    /// Deserializes as `bytes` does, into a buffer wiped on drop.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        bytes::deserialize(d).map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        #[serde(with = "super::bytes")]
        body: Vec<u8>,
    }

    #[test]
    fn json_carries_base64_and_postcard_plain_bytes() {
        let d = Doc {
            body: b"hello".to_vec(),
        };
        let json = serde_json::to_string(&d).expect("json");
        assert_eq!(json, r#"{"body":"aGVsbG8="}"#);
        assert_eq!(serde_json::from_str::<Doc>(&json).expect("json"), d);
        let bin = postcard::to_stdvec(&d).expect("postcard");
        assert_eq!(bin, [5, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(postcard::from_bytes::<Doc>(&bin).expect("postcard"), d);
        assert!(serde_json::from_str::<Doc>(r#"{"body":"@@"}"#).is_err());
    }
}
