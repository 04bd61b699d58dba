//! How a document id is stored in this replica's tables: AES-256 of the 16-byte id (one block,
//! a keyed permutation) under a key derived from the replica's index key.
//!
//! A document id is global (every replica holding the document knows it) and starts with its
//! creation time in milliseconds (`DocId::mint`). Stored in clear, it would let two replicas'
//! folders be joined on it (linking one dossier's blind indexes across replicas) and would show
//! when each document was written. Its stored form is neither: without the key it is a random
//! block, different in each replica, and the map is reversible, so a table keyed by it can still
//! be listed and each row's document named (`DocMap::id`).
//!
//! Invariants:
//! - Every table key or clear value that names a document holds `DocMap::stored` of its id,
//!   never the id itself; sealed values may hold the id (they do not open without the key), and
//!   associated data binds the id itself, so a re-keying (`DocMap::remap`) rewrites keys only.
//! - The stored form says nothing of time: tables keyed by it are in no useful order, and code
//!   that needs an order sorts the ids it decoded (see `Replica::dossier_doc_ids`).

use aes::Aes256;
use aes::cipher::{Block, BlockDecrypt, BlockEncrypt, KeyInit};

use crate::crypto::Key;
use crate::ids::DocId;

/// Derivation context of the map's key from the index key.
const CONTEXT: &str = "carnet 2026-12 stored document ids";

/// The per-replica map between document ids and their stored form.
pub struct DocMap {
    cipher: Aes256,
}

impl std::fmt::Debug for DocMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("DocMap")
    }
}

impl DocMap {
    /// The map keyed from the replica's index key (`Keys::index`).
    pub fn new(index: &Key) -> DocMap {
        let key = index.derive(CONTEXT);
        DocMap {
            cipher: Aes256::new(key.expose().into()),
        }
    }

    /// The stored form of `id`.
    pub fn stored(&self, id: &DocId) -> [u8; 16] {
        let mut block = Block::<Aes256>::from(id.0);
        self.cipher.encrypt_block(&mut block);
        block.into()
    }

    /// The document id whose stored form is `stored`.
    pub fn id(&self, stored: &[u8; 16]) -> DocId {
        let mut block = Block::<Aes256>::from(*stored);
        self.cipher.decrypt_block(&mut block);
        DocId(block.into())
    }

    /// The stored form under `to` of the id stored as `stored` under `from`: what a re-keying
    /// of the index key writes in place of each stored id.
    pub fn remap(stored: &[u8; 16], from: &DocMap, to: &DocMap) -> [u8; 16] {
        to.stored(&from.id(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DocId {
        let mut b = [0u8; 16];
        b[0] = 1;
        b[15] = n;
        DocId(b)
    }

    #[test]
    fn stored_ids_round_trip_and_differ_per_key() {
        let (a, b) = (
            DocMap::new(&Key::random().expect("key")),
            DocMap::new(&Key::random().expect("key")),
        );
        for n in 0..=255 {
            let doc = id(n);
            let stored = a.stored(&doc);
            assert_eq!(a.id(&stored), doc);
            assert_ne!(stored, doc.0, "not the id itself");
            assert_ne!(stored[..6], doc.0[..6], "not its time");
            assert_ne!(
                stored,
                b.stored(&doc),
                "another replica stores it otherwise"
            );
            assert_eq!(DocMap::remap(&stored, &a, &b), b.stored(&doc));
        }
        // Ids one apart share nothing visible once stored.
        assert_ne!(a.stored(&id(1))[..6], a.stored(&id(2))[..6]);
    }

    #[test]
    fn the_map_is_fixed_by_the_index_key() {
        let index = Key::random().expect("key");
        let doc = id(7);
        assert_eq!(
            DocMap::new(&index).stored(&doc),
            DocMap::new(&index).stored(&doc)
        );
    }
}
