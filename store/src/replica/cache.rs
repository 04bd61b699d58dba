//! A cache of decoded registry rows (signed host records, professionals, unwrapped dossier
//! keys), so a read does not re-open and re-decode them every time.
//!
//! Invariant: every transaction that changes `AUTHORITY`, `PROS` or `DOSSIER_KEYS` bumps the
//! registry generation stored in `META`, in the same transaction. A reader passes the
//! generation it read in its own snapshot: the cache answers only for that exact generation,
//! and an older snapshot never fills it, so a cached value is always the committed value of
//! the snapshot asking. Bounded: cleared when it holds `MAX_ENTRIES`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use crate::authority::Verified;
use crate::crypto::Key;
use crate::error::Result;
use crate::model::{DossierHead, Professional};

const MAX_ENTRIES: usize = 50_000;

#[derive(Default)]
struct Maps {
    generation: u64,
    records: HashMap<Vec<u8>, Option<Arc<Verified>>>,
    heads: HashMap<Vec<u8>, Option<Arc<DossierHead>>>,
    professionals: HashMap<String, Option<Arc<Professional>>>,
    keys: HashMap<[u8; 32], Option<Key>>,
}

impl Maps {
    fn len(&self) -> usize {
        self.records.len() + self.heads.len() + self.professionals.len() + self.keys.len()
    }
}

/// See the module doc.
#[derive(Default)]
pub struct RegistryCache(RwLock<Maps>);

impl std::fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCache")
    }
}

impl RegistryCache {
    fn get_or_load<K, Q, V>(
        &self,
        generation: u64,
        map: fn(&Maps) -> &HashMap<K, V>,
        map_mut: fn(&mut Maps) -> &mut HashMap<K, V>,
        key: &Q,
        load: impl FnOnce() -> Result<V>,
    ) -> Result<V>
    where
        K: Hash + Eq + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        V: Clone,
    {
        if let Ok(m) = self.0.read()
            && m.generation == generation
            && let Some(v) = map(&m).get(key)
        {
            return Ok(v.clone());
        }
        let value = load()?;
        if let Ok(mut m) = self.0.write() {
            if generation > m.generation || m.len() >= MAX_ENTRIES {
                *m = Maps {
                    generation: generation.max(m.generation),
                    ..Maps::default()
                };
            }
            if m.generation == generation {
                map_mut(&mut m).insert(key.to_owned(), value.clone());
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
            |m| &m.records,
            |m| &mut m.records,
            subject,
            || Ok(load()?.map(Arc::new)),
        )
    }

    /// A dossier head by subject key (`None` when the subject holds no live head).
    pub fn head(
        &self,
        generation: u64,
        subject: &[u8],
        load: impl FnOnce() -> Result<Option<DossierHead>>,
    ) -> Result<Option<Arc<DossierHead>>> {
        self.get_or_load(
            generation,
            |m| &m.heads,
            |m| &mut m.heads,
            subject,
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
            |m| &m.professionals,
            |m| &mut m.professionals,
            rpps,
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
        self.get_or_load(generation, |m| &m.keys, |m| &mut m.keys, bi, load)
    }
}
