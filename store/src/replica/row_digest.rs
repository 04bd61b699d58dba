//! Row rollback detection: a keyed multiset digest of each guarded table, kept in the
//! authenticated `meta`.
//!
//! A sealed row opens only in its own table and row (its associated data names them), but an
//! older sealed value of the *same* row still opens: a grant before its revocation, a dossier
//! head before its closure, a document's metadata at an older revision. Someone with write
//! access to the data folder (not the key) could put it back. So, for each table of
//! `GUARDED`, the replica keeps the digest
//!
//! ```text
//! D(table) = Σ over its rows of  BLAKE3_keyed(k, len‖table ‖ len‖key ‖ len‖value)   (mod 2^256)
//! ```
//!
//! under a key `k` derived from the master key (through the registry key), in `meta` row
//! `row_digest:<table>`, which `STATE_MAC` authenticates. The sum is a multiset hash: adding a
//! row adds its hash, removing one subtracts it, so a write costs one hash of the new row and
//! one of the row it replaced (redb's `insert` and `remove` return it) and nothing else. Without
//! `k` no one can compute a row's hash, so no change of rows (put back, removed, added, moved)
//! keeps the sum, except with negligible probability.
//!
//! Invariants:
//! - Every write to a guarded table goes through `Digested` (`Replica::digested`), whose
//!   pending change is added to the stored digest by the commit (`RawWrite::commit`), in the
//!   same transaction. Builds with debug assertions recompute every guarded table at each
//!   commit and panic on a write that bypassed it.
//! - At open (`Replica::check_rows`) every guarded table is summed again and compared with its
//!   stored digest; a mismatch is `Error::Integrity` naming the table, and nothing is written.
//! - Reads cost nothing: no digest is touched on a read.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Mutex;

use crate::kv::{
    ReadTransaction, ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction,
};

use super::tables::*;
use super::{Replica, lock_err};
use crate::crypto::Key;
use crate::error::{Error, Result};

/// The tables whose rows are guarded against being put back: the signed records and the keys,
/// tombstones and professionals that decide access, the documents' metadata, the sealed rows
/// of requests, purges, cleared flags, chain keys and quarantine, and at the host what decides
/// what each site receives (the professionals bound to it, its scope and emergency fetches, the
/// purge receipts it returned). `all_digests` lists the same tables.
pub(super) const GUARDED: [&str; 22] = [
    "authority",
    "dossier_keys",
    "tombstones",
    "professionals",
    "docs",
    "pending_grants",
    "pending_purges",
    "host_clears",
    "site_requests",
    "site_chain_keys",
    "quarantine",
    "site_pros",
    "pro_sites",
    "scope",
    "scope_sites",
    "emergency_scopes",
    "site_receipts",
    "local_dossiers",
    "hidden_docs",
    "emergencies",
    "pending_emergencies",
    "dossier_emergencies",
];

/// `meta` key of a guarded table's digest.
pub(super) fn meta_row(table: &str) -> String {
    format!("row_digest:{table}")
}

/// A transaction that can sum a guarded table (read or write).
pub(super) trait Sums {
    /// The digest of every row of `table` (an empty digest for a table not created yet).
    fn digest_of<K: crate::kv::Ordered, V: redb::Value + 'static>(
        &self,
        key: &Key,
        table: TableDefinition<'static, K, V>,
    ) -> Result<RowDigest>;
}

impl Sums for ReadTransaction {
    fn digest_of<K: crate::kv::Ordered, V: redb::Value + 'static>(
        &self,
        key: &Key,
        table: TableDefinition<'static, K, V>,
    ) -> Result<RowDigest> {
        match self.open_table(table) {
            Ok(t) => RowDigest::of_table(key, table.name(), &t),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(RowDigest::default()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Sums for WriteTransaction {
    fn digest_of<K: crate::kv::Ordered, V: redb::Value + 'static>(
        &self,
        key: &Key,
        table: TableDefinition<'static, K, V>,
    ) -> Result<RowDigest> {
        RowDigest::of_table(key, table.name(), &self.open_table(table)?)
    }
}

/// The digest of every guarded table, as `txn` sees them, in the order of `GUARDED`.
pub(super) fn all_digests(key: &Key, txn: &impl Sums) -> Result<[(&'static str, RowDigest); 22]> {
    let sums = [
        txn.digest_of(key, AUTHORITY)?,
        txn.digest_of(key, DOSSIER_KEYS)?,
        txn.digest_of(key, TOMBSTONES)?,
        txn.digest_of(key, PROS)?,
        txn.digest_of(key, DOCS)?,
        txn.digest_of(key, PENDING_GRANTS)?,
        txn.digest_of(key, PENDING_PURGES)?,
        txn.digest_of(key, HOST_CLEARS)?,
        txn.digest_of(key, SITE_REQUESTS)?,
        txn.digest_of(key, SITE_CHAIN_KEYS)?,
        txn.digest_of(key, QUARANTINE)?,
        txn.digest_of(key, SITE_PROS)?,
        txn.digest_of(key, PRO_SITES)?,
        txn.digest_of(key, SCOPE)?,
        txn.digest_of(key, SCOPE_SITES)?,
        txn.digest_of(key, EMERGENCY_SCOPES)?,
        txn.digest_of(key, SITE_RECEIPTS)?,
        txn.digest_of(key, LOCAL_DOSSIERS)?,
        txn.digest_of(key, HIDDEN_DOCS)?,
        txn.digest_of(key, EMERGENCIES)?,
        txn.digest_of(key, PENDING_EMERGENCIES)?,
        txn.digest_of(key, DOSSIER_EMERGENCIES)?,
    ];
    let mut out = [("", RowDigest::default()); GUARDED.len()];
    for ((slot, name), sum) in out.iter_mut().zip(GUARDED).zip(sums) {
        *slot = (name, sum);
    }
    Ok(out)
}

/// A multiset digest: a 256-bit number, the sum of its rows' hashes modulo 2^256.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RowDigest([u64; 4]);

impl RowDigest {
    /// The digest stored in `bytes` (absent: an empty table).
    pub(super) fn from_bytes(bytes: Option<&[u8]>) -> Result<RowDigest> {
        let Some(bytes) = bytes else {
            return Ok(RowDigest::default());
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::integrity("a stored row digest is malformed"))?;
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            // chunks_exact(8) yields 8-byte slices only.
            *limb = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        }
        Ok(RowDigest(limbs))
    }

    /// Little-endian bytes.
    pub(super) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Adds `other` (mod 2^256).
    pub(super) fn add(&mut self, other: RowDigest) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (s, c1) = a.overflowing_add(b);
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *a = s;
            carry = c1 || c2;
        }
    }

    /// Subtracts `other` (mod 2^256).
    pub(super) fn sub(&mut self, other: RowDigest) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (d, b1) = a.overflowing_sub(b);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            *a = d;
            borrow = b1 || b2;
        }
    }

    /// One row's hash, as a digest.
    pub(super) fn row(key: &Key, table: &str, row_key: &[u8], value: &[u8]) -> RowDigest {
        let mut h = blake3::Hasher::new_keyed(key.expose());
        for part in [table.as_bytes(), row_key, value] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let mut d = RowDigest::default();
        d.add(RowDigest::from_bytes(Some(h.finalize().as_bytes())).unwrap_or_default());
        d
    }

    /// The digest of every row of `table`.
    pub(super) fn of_table<K: crate::kv::Ordered, V: redb::Value + 'static>(
        key: &Key,
        name: &str,
        table: &impl ReadableTable<K, V>,
    ) -> Result<RowDigest> {
        let mut d = RowDigest::default();
        for row in table.iter()? {
            let (k, v) = row?;
            d.add(RowDigest::row(
                key,
                name,
                K::as_bytes(&k.value()).as_ref(),
                V::as_bytes(&v.value()).as_ref(),
            ));
        }
        Ok(d)
    }
}

/// The changes a write transaction made to the guarded tables, waiting for its commit: per
/// table, what to add to its stored digest. Only the transaction holding redb's write lock
/// touches it.
#[derive(Debug, Default)]
pub(super) struct PendingDigests(Mutex<BTreeMap<String, RowDigest>>);

impl PendingDigests {
    /// Forgets what an abandoned transaction left.
    pub(super) fn clear(&self) -> Result<()> {
        self.0.lock().map_err(lock_err)?.clear();
        Ok(())
    }

    /// Takes the changes of the transaction being committed.
    pub(super) fn take(&self) -> Result<BTreeMap<String, RowDigest>> {
        Ok(std::mem::take(&mut *self.0.lock().map_err(lock_err)?))
    }

    fn change(&self, table: &str, add: Option<RowDigest>, sub: Option<RowDigest>) -> Result<()> {
        if add.is_none() && sub.is_none() {
            // (A removal of a row that was not there: the common case of the indexes kept by
            // every metadata write.)
            return Ok(());
        }
        let mut pending = self.0.lock().map_err(lock_err)?;
        let d = pending.entry(table.to_string()).or_default();
        if let Some(a) = add {
            d.add(a);
        }
        if let Some(s) = sub {
            d.sub(s);
        }
        Ok(())
    }
}

/// A guarded table opened for writing: reads go to the redb table (`Deref`); writes go through
/// `insert` and `remove`, which keep the table's digest.
pub(super) struct Digested<'t, K: crate::kv::Ordered, V: redb::Value + 'static = &'static [u8]> {
    table: Table<'t, K, V>,
    name: &'static str,
    replica: &'t Replica,
    txn: &'t WriteTransaction,
}

impl<'t, K: crate::kv::Ordered, V: redb::Value + 'static> Digested<'t, K, V> {
    /// The write transaction the table was opened in, for the indexes kept beside it.
    pub(super) fn txn(&self) -> &'t WriteTransaction {
        self.txn
    }
}

impl<'t, K: crate::kv::Ordered, V: redb::Value + 'static> Deref for Digested<'t, K, V> {
    type Target = Table<'t, K, V>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl<K: crate::kv::Ordered, V: redb::Value + 'static> Digested<'_, K, V> {
    fn hash(&self, k: &K::SelfType<'_>, v: &[u8]) -> RowDigest {
        RowDigest::row(
            &self.replica.keys.rows,
            self.name,
            K::as_bytes(k).as_ref(),
            v,
        )
    }

    /// Inserts (or replaces) a row; true if it replaced one.
    pub(super) fn insert<'k, 'v>(
        &mut self,
        k: impl std::borrow::Borrow<K::SelfType<'k>>,
        v: V::SelfType<'v>,
    ) -> Result<bool> {
        let k = k.borrow();
        let added = self.hash(k, V::as_bytes(&v).as_ref());
        let old = self
            .table
            .insert(k, v)?
            .map(|g| V::as_bytes(&g.value()).as_ref().to_vec());
        let removed = old.map(|o| self.hash(k, &o));
        self.replica
            .pending_digests
            .change(self.name, Some(added), removed)?;
        Ok(removed.is_some())
    }

    /// Removes a row; true if there was one.
    pub(super) fn remove<'k>(
        &mut self,
        k: impl std::borrow::Borrow<K::SelfType<'k>>,
    ) -> Result<bool> {
        let k = k.borrow();
        let old = self
            .table
            .remove(k)?
            .map(|g| V::as_bytes(&g.value()).as_ref().to_vec());
        let removed = old.as_ref().map(|o| self.hash(k, o));
        self.replica
            .pending_digests
            .change(self.name, None, removed)?;
        Ok(old.is_some())
    }
}

impl<V: redb::Value + 'static> Digested<'_, &'static [u8], V> {
    /// Removes the rows whose key is in `first..=last`.
    pub(super) fn remove_in(&mut self, first: &[u8], last: &[u8]) -> Result<()> {
        let keys: Vec<Vec<u8>> = self
            .table
            .range(first..=last)?
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        for k in keys {
            self.remove(k.as_slice())?;
        }
        Ok(())
    }

    /// Keeps only the rows for which `keep` is true.
    pub(super) fn retain(
        &mut self,
        mut keep: impl FnMut(&[u8], V::SelfType<'_>) -> bool,
    ) -> Result<()> {
        let mut gone = Vec::new();
        for row in self.table.iter()? {
            let (k, v) = row?;
            if !keep(k.value(), v.value()) {
                gone.push(k.value().to_vec());
            }
        }
        for k in gone {
            self.remove(k.as_slice())?;
        }
        Ok(())
    }
}

impl Replica {
    /// Opens guarded `table` for writing in `txn` (the only way to write to it).
    pub(super) fn digested<'t, K: crate::kv::Ordered, V: redb::Value + 'static>(
        &'t self,
        txn: &'t WriteTransaction,
        table: TableDefinition<'static, K, V>,
    ) -> Result<Digested<'t, K, V>> {
        let name = GUARDED
            .iter()
            .copied()
            .find(|n| *n == table.name())
            .ok_or_else(|| Error::Storage(format!("table {} is not guarded", table.name())))?;
        Ok(Digested {
            table: txn.open_table(table)?,
            name,
            replica: self,
            txn,
        })
    }
}
