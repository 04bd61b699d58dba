//! Bodies sent ahead of the call that files them: `POST /v1/bodies` takes a document's body (or
//! a FHIR import's text) as raw bytes (no JSON, no base64) and answers a token;
//! `put_document` and `replace_document` name it in `document.upload` instead of carrying
//! `document.body`, `import_fhir` in `upload` instead of `json` (`wire::Request::carried_mut`). So a body of any size
//! the store accepts (`BODY_BYTES_MAX`) reaches the daemon, where a JSON call is held to
//! `MAX_REQUEST`; `carnet` sends every body over `INLINE_BODY` this way.
//!
//! Invariants:
//! - a body is held in the daemon's memory (zeroed when dropped), never written to disk in
//!   clear; it is claimed once, by the first call that names its token, and dropped unclaimed
//!   after `UPLOAD_TTL`;
//! - the bodies held at once total at most `PENDING_BYTES_MAX`: an upload over it is refused
//!   before its bytes are read further;
//! - a token is 128 random bits: only the socket's owner, who sent the body, knows it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Bodies up to this size travel inside the JSON call; larger ones ahead of it.
pub const INLINE_BODY: usize = 4 << 20;
/// An unclaimed body is dropped after this.
pub const UPLOAD_TTL: Duration = Duration::from_secs(600);
/// The most the bodies held at once may total.
pub const PENDING_BYTES_MAX: u64 = 2 * carnet_store::model::BODY_BYTES_MAX;

/// A body held, by its token: when it arrived, and its bytes.
type Held = HashMap<String, (Instant, Zeroizing<Vec<u8>>)>;

/// The bodies sent and not claimed yet.
#[derive(Default)]
pub struct Uploads {
    pending: Mutex<Held>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Uploads")
    }
}

impl Uploads {
    /// Refuses an upload of `len` bytes that could not be held (too large, or too much held).
    pub fn room_for(&self, len: u64) -> Result<(), String> {
        if len > carnet_store::model::BODY_BYTES_MAX {
            return Err(format!(
                "the body is {len} bytes: a document holds at most {} GiB",
                carnet_store::model::BODY_BYTES_MAX >> 30
            ));
        }
        let held = self.held_bytes();
        if held + len > PENDING_BYTES_MAX {
            return Err(format!(
                "the daemon holds {held} bytes of bodies not filed yet: file them, or wait \
                 for them to expire ({} s), then send this one again",
                UPLOAD_TTL.as_secs()
            ));
        }
        Ok(())
    }

    /// Holds `body`; answers its token.
    pub fn put(&self, body: Zeroizing<Vec<u8>>) -> Result<String, String> {
        self.room_for(body.len() as u64)?;
        let mut token = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token)
            .map_err(|_| "no random source for an upload token".to_string())?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| "uploads: lock poisoned".to_string())?;
        pending.insert(token.clone(), (Instant::now(), body));
        Ok(token)
    }

    /// The body of `token`, taken: a second claim finds nothing.
    pub fn take(&self, token: &str) -> Option<Zeroizing<Vec<u8>>> {
        let mut pending = self.pending.lock().ok()?;
        Self::expire(&mut pending);
        pending.remove(token).map(|(_, body)| body)
    }

    fn held_bytes(&self) -> u64 {
        match self.pending.lock() {
            Ok(mut pending) => {
                Self::expire(&mut pending);
                pending.values().map(|(_, b)| b.len() as u64).sum()
            }
            Err(_) => u64::MAX / 4,
        }
    }

    fn expire(pending: &mut Held) {
        pending.retain(|_, (at, _)| at.elapsed() < UPLOAD_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_claimed_once_and_what_cannot_be_held_is_refused() {
        let uploads = Uploads::default();
        let token = uploads
            .put(Zeroizing::new(b"synthetic".to_vec()))
            .expect("put");
        assert_eq!(token.len(), 32);
        assert_eq!(
            uploads.take(&token).as_deref().map(Vec::as_slice),
            Some(&b"synthetic"[..])
        );
        assert!(uploads.take(&token).is_none(), "claimed twice");
        assert!(uploads.take("00").is_none());
        assert!(
            uploads
                .room_for(carnet_store::model::BODY_BYTES_MAX + 1)
                .is_err()
        );
        assert!(
            uploads
                .room_for(carnet_store::model::BODY_BYTES_MAX)
                .is_ok()
        );
    }
}
