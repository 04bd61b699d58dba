//! Keys and sealing: the only module that sees key material.
//!
//! Key hierarchy: a 32-byte master key (from the key file, or from a passphrase through
//! Argon2id) wraps a few replica keys (blind index, registry, audit) and one random data key per
//! dossier. Every record is sealed with XChaCha20-Poly1305 under a random 192-bit nonce, with
//! associated data that binds the ciphertext to what it is (its table, id and version), so a
//! ciphertext moved to another row fails to open. Invariants: key bytes live in `Zeroizing`
//! buffers and are wiped on drop; no plaintext key is ever written; a failed open is an
//! `Error::Integrity`, never a panic.
//!
//! XChaCha20-Poly1305 is built as its specification does (draft-irtf-cfrg-xchacha): HChaCha20
//! (from `chacha20`) derives a per-message key from the key and the nonce's first 16 bytes, and
//! ChaCha20-Poly1305 (from `ring`, whose assembly picks the CPU's vector unit at run time) seals
//! under it with the nonce's last 8 bytes. Audited reads open two records and seal one each, so
//! this is on their path; a test checks the output against the `chacha20poly1305` crate's.

use chacha20::cipher::consts::U10;
use chacha20::cipher::generic_array::GenericArray;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Bytes added by sealing: 24-byte nonce + 16-byte tag.
pub const SEAL_OVERHEAD: usize = 40;

/// The cost of an Argon2id derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfCost {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes (degree of parallelism).
    pub lanes: u32,
}

impl KdfCost {
    /// RFC 9106's second recommended option (for when 2 GiB cannot be spent): 64 MiB, 3
    /// passes, 4 lanes. What every new passphrase is stretched with.
    pub const RECOMMENDED: KdfCost = KdfCost {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 4,
    };
    /// The cost of replicas and rotations made before the cost was stored: 19 MiB, 2 passes,
    /// 1 lane (OWASP's minimum). Still opened; never used for a new passphrase.
    pub const LEGACY: KdfCost = KdfCost {
        memory_kib: 19 * 1024,
        passes: 2,
        lanes: 1,
    };
}

/// A 256-bit secret key, wiped from memory on drop.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

std::thread_local! {
    /// This thread's randomness, when a simulation seeded it (`seed_thread_for_simulation`).
    static SIMULATED: std::cell::RefCell<Option<rand::rngs::StdRng>> =
        const { std::cell::RefCell::new(None) };
}

/// Fills `buf` from this thread's seeded generator, if a simulation seeded it.
fn simulated(buf: &mut [u8]) -> bool {
    use rand::RngCore;
    SIMULATED.with(|s| {
        s.borrow_mut()
            .as_mut()
            .map(|rng| rng.fill_bytes(buf))
            .is_some()
    })
}

/// **For the simulator only** (`carnet-sim`): from now on, the randomness this thread draws
/// (keys, salts, nonces, document ids) comes from a generator seeded with `seed`, so that a
/// simulated world replays byte for byte; `None` gives the thread back to the OS. Keys drawn
/// so are predictable: nothing but a simulation may call this.
#[doc(hidden)]
pub fn seed_thread_for_simulation(seed: Option<u64>) {
    use rand::SeedableRng;
    SIMULATED.with(|s| *s.borrow_mut() = seed.map(rand::rngs::StdRng::seed_from_u64));
}

/// Fills `buf` from the OS random source (for keys and salts).
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    use rand::RngCore;
    if simulated(buf) {
        return Ok(());
    }
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| Error::Storage(format!("no OS randomness: {e}")))
}

/// Fills `buf` from the thread's CSPRNG (ChaCha, seeded and periodically reseeded from the OS):
/// for nonces and document ids, where a system call per value would dominate the cost.
pub fn fast_random_bytes(buf: &mut [u8]) {
    use rand::RngCore;
    if simulated(buf) {
        return;
    }
    rand::thread_rng().fill_bytes(buf);
}

impl Key {
    /// A fresh random key.
    pub fn random() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        random_bytes(k.as_mut())?;
        Ok(Key(k))
    }

    /// Wraps raw bytes (the buffer passed in is not wiped by this call).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Key("a key must be 32 bytes".into()))?;
        Ok(Key(Zeroizing::new(arr)))
    }

    /// The raw bytes, for wrapping and for writing the key file.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives a key from a passphrase with Argon2id at `cost` (stored with the salt, so a
    /// replica opens at the cost it was made with).
    pub fn from_passphrase(passphrase: &str, salt: &[u8; 16], cost: KdfCost) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::Key("the passphrase is empty".into()));
        }
        let params = argon2::Params::new(cost.memory_kib, cost.passes, cost.lanes, Some(32))
            .map_err(|e| Error::Key(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
            .map_err(|e| Error::Key(format!("argon2: {e}")))?;
        Ok(Key(out))
    }

    /// Seals `plaintext` under this key: `nonce || ciphertext+tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0; SEAL_OVERHEAD + plaintext.len()];
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// `seal`, into `out`, exactly `SEAL_OVERHEAD` bytes longer than `plaintext` (space reserved
    /// in storage, so the sealed bytes are written once, where they stay).
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) -> Result<()> {
        if out.len() != SEAL_OVERHEAD + plaintext.len() {
            return Err(Error::Storage(
                "sealing into a buffer of the wrong size".into(),
            ));
        }
        let (nonce, rest) = out.split_at_mut(24);
        fast_random_bytes(nonce);
        let (key, nonce) = self.message_key(nonce)?;
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        // Encrypted where it lies: no copy of the ciphertext. `out` may be storage space: the
        // plaintext never stays there, even if sealing fails.
        body.copy_from_slice(plaintext);
        match key.seal_in_place_separate_tag(nonce, Aad::from(aad), body) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                body.zeroize();
                Err(Error::Storage("encryption failed".into()))
            }
        }
    }

    /// Opens what `seal` produced with the same associated data.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(Vec::new());
        self.open_into(aad, sealed, &mut out)?;
        Ok(out)
    }

    /// `open`, appending the plaintext to `out` (decrypted where it lands: no intermediate
    /// buffer). On failure `out` is left as it was.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::integrity("sealed record too short"));
        }
        let (nonce, rest) = sealed.split_at(24);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let tag = Tag::try_from(tag).map_err(|_| Error::integrity("sealed record too short"))?;
        let (key, nonce) = self.message_key(nonce)?;
        let start = out.len();
        out.extend_from_slice(ct);
        let opened =
            key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, &mut out[start..], 0..);
        if opened.is_err() {
            out[start..].zeroize();
            out.truncate(start);
            return Err(Error::integrity(
                "a sealed record does not authenticate (tampered or corrupted)",
            ));
        }
        Ok(())
    }

    /// The ChaCha20-Poly1305 key and nonce of one XChaCha20-Poly1305 message under the 24-byte
    /// `nonce`: HChaCha20(key, nonce[..16]), and 4 zero bytes followed by nonce[16..].
    fn message_key(&self, nonce: &[u8]) -> Result<(LessSafeKey, Nonce)> {
        let (head, tail) = nonce.split_at(16);
        let mut subkey = chacha20::hchacha::<U10>(
            GenericArray::from_slice(self.0.as_ref()),
            GenericArray::from_slice(head),
        );
        let key = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice());
        subkey.as_mut_slice().zeroize();
        let key = key.map_err(|_| Error::Storage("encryption key rejected".into()))?;
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(tail);
        Ok((LessSafeKey::new(key), Nonce::assume_unique_for_key(short)))
    }

    /// Wraps another key under this one.
    pub fn wrap(&self, aad: &[u8], key: &Key) -> Result<Vec<u8>> {
        self.seal(aad, key.expose())
    }

    /// Unwraps a key wrapped by `wrap`.
    pub fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<Key> {
        let raw = self.open(aad, wrapped)?;
        Key::from_bytes(&raw)
    }

    /// A key for another purpose, derived from this one (BLAKE3 key derivation).
    pub fn derive(&self, context: &str) -> Key {
        Key(Zeroizing::new(blake3::derive_key(context, self.0.as_ref())))
    }

    /// Keyed BLAKE3 of `data`: a blind index that reveals nothing without the key.
    pub fn blind_index(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }

    /// `blind_index` of `tag ‖ data`, without building the concatenation: indexes of different
    /// kinds of values under one key, kept apart by prefix-free tags.
    pub fn tagged_index(&self, tag: &[u8], data: &[u8]) -> [u8; 32] {
        *blake3::Hasher::new_keyed(&self.0)
            .update(tag)
            .update(data)
            .finalize()
            .as_bytes()
    }
}

/// Builds associated data from labelled parts (length-prefixed so parts cannot run together).
pub fn aad(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = Key::random().expect("key");
        let sealed = k.seal(b"doc1", b"secret body").expect("seal");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert_eq!(&k.open(b"doc1", &sealed).expect("open")[..], b"secret body");
        assert!(
            k.open(b"doc2", &sealed).is_err(),
            "bound to its associated data"
        );
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(matches!(k.open(b"doc1", &bad), Err(Error::Integrity(_))));
        assert!(k.open(b"doc1", &sealed[..10]).is_err());
        let other = Key::random().expect("key");
        assert!(other.open(b"doc1", &sealed).is_err());
        // Into a buffer: of exactly the sealed size only.
        let mut slot = vec![0; 11 + SEAL_OVERHEAD];
        k.seal_into(b"doc1", b"secret body", &mut slot)
            .expect("seal");
        assert_eq!(&k.open(b"doc1", &slot).expect("open")[..], b"secret body");
        assert!(
            k.seal_into(b"doc1", b"secret body", &mut slot[1..])
                .is_err()
        );
    }

    #[test]
    fn the_same_xchacha20_poly1305_as_the_reference_crate() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let k = Key::random().expect("key");
        let reference = XChaCha20Poly1305::new(k.expose().into());
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 300, 4096, 5000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let aad = [len as u8, 1, 2, 3];
            // Ours, opened by the reference.
            let sealed = k.seal(&aad, &plain).expect("seal");
            let (nonce, ct) = sealed.split_at(24);
            let opened = reference
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .expect("the reference opens ours");
            assert_eq!(opened, plain, "{len} bytes");
            // The reference's, opened by ours.
            let nonce = [len as u8 ^ 0x5a; 24];
            let mut theirs = nonce.to_vec();
            theirs.extend(
                reference
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &plain,
                            aad: &aad,
                        },
                    )
                    .expect("reference seal"),
            );
            assert_eq!(
                &k.open(&aad, &theirs).expect("ours opens theirs")[..],
                &plain[..]
            );
            theirs[24] ^= 1;
            assert!(k.open(&aad, &theirs).is_err());
        }
    }

    #[test]
    fn wrap_and_passphrase() {
        let salt = [9u8; 16];
        let cost = KdfCost::RECOMMENDED;
        let a = Key::from_passphrase("correct horse", &salt, cost).expect("argon2");
        let b = Key::from_passphrase("correct horse", &salt, cost).expect("argon2");
        let c = Key::from_passphrase("wrong horse", &salt, cost).expect("argon2");
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
        // The cost is part of the derivation: a replica opens only at the cost it stored.
        let legacy = Key::from_passphrase("correct horse", &salt, KdfCost::LEGACY).expect("argon2");
        assert_ne!(a.expose(), legacy.expose());
        // The legacy cost is exactly the parameters older replicas were made with.
        let mut old = [0u8; 32];
        argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(19 * 1024, 2, 1, Some(32)).expect("params"),
        )
        .hash_password_into(b"correct horse", &salt, &mut old)
        .expect("argon2");
        assert_eq!(legacy.expose(), &old);
        let data = Key::random().expect("key");
        let w = a.wrap(b"d", &data).expect("wrap");
        assert_eq!(
            a.unwrap_key(b"d", &w).expect("unwrap").expose(),
            data.expose()
        );
        assert!(c.unwrap_key(b"d", &w).is_err());
        assert_ne!(a.blind_index(b"x"), c.blind_index(b"x"));
        assert_ne!(aad(&[b"ab", b"c"]), aad(&[b"a", b"bc"]));
    }
}
