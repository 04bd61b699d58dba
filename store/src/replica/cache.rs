//! A cache of decoded registry rows (signed host records, professionals, unwrapped dossier
//! keys), so a read does not re-open and re-decode them every time.
//!
//! Invariant: every transaction that changes `AUTHORITY`, `PROS` or `DOSSIER_KEYS` bumps the
//! registry generation stored in `META`, in the same transaction. A reader passes the
//! generation it read in its own snapshot: the cache answers only for that exact generation,
//! and an older snapshot never fills it, so a cached value is always the committed value of
//! the snapshot asking. Bounded: cleared when it holds `MAX_ENTRIES`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::authority::Verified;
use crate::crypto::Key;
use crate::error::Result;
use crate::model::Professional;

const MAX_ENTRIES: usize = 50_000;

#[derive(Default)]
struct Maps {
    generation: u64,
    records: HashMap<Vec<u8>, Option<Arc<Verified>>>,
    professionals: HashMap<String, Option<Arc<Professional>>>,
    keys: HashMap<[u8; 32], Option<Key>>,
}

impl Maps {
    fn len(&self) -> usize {
        self.records.len() + self.professionals.len() + self.keys.len()
    }
}

/// See the module doc.
#[derive(Default)]
pub struct RegistryCache(Mutex<Maps>);

impl std::fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCache")
    }
}

impl RegistryCache {
    fn get_or_load<K: Hash + Eq + Clone, V: Clone>(
        &self,
        generation: u64,
        map: fn(&mut Maps) -> &mut HashMap<K, V>,
        key: &K,
        load: impl FnOnce() -> Result<V>,
    ) -> Result<V> {
        if let Ok(mut m) = self.0.lock()
            && m.generation == generation
            && let Some(v) = map(&mut m).get(key)
        {
            return Ok(v.clone());
        }
        let value = load()?;
        if let Ok(mut m) = self.0.lock() {
            if generation > m.generation || m.len() >= MAX_ENTRIES {
                *m = Maps {
                    generation: generation.max(m.generation),
                    ..Maps::default()
                };
            }
            if m.generation == generation {
                map(&mut m).insert(key.clone(), value.clone());
            }
        }
        Ok(value)
    }

    /// A signed record by subject key.
    pub fn record(
        &self,
        generation: u64,
        subject: &[u8],
        load: impl FnOnce() -> Result<Option<Verified>>,
    ) -> Result<Option<Arc<Verified>>> {
        self.get_or_load(
            generation,
            |m| &mut m.records,
            &subject.to_vec(),
            || Ok(load()?.map(Arc::new)),
        )
    }

    /// A professional by RPPS.
    pub fn professional(
        &self,
        generation: u64,
        rpps: &str,
        load: impl FnOnce() -> Result<Option<Professional>>,
    ) -> Result<Option<Arc<Professional>>> {
        self.get_or_load(
            generation,
            |m| &mut m.professionals,
            &rpps.to_string(),
            || Ok(load()?.map(Arc::new)),
        )
    }

    /// A dossier's unwrapped data key by blind index.
    pub fn dossier_key(
        &self,
        generation: u64,
        bi: &[u8; 32],
        load: impl FnOnce() -> Result<Option<Key>>,
    ) -> Result<Option<Key>> {
        self.get_or_load(generation, |m| &mut m.keys, bi, load)
    }
}
