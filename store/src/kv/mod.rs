//! Where a replica's tables live: a redb file, or (for the national host) a PostgreSQL
//! database, behind one set of types with redb's shape.
//!
//! The replica code is written against redb's API: typed tables (`TableDefinition<K, V>`),
//! read and write transactions, `get`/`insert`/`remove`/`range`/`retain_in`, access guards.
//! This module gives the same names and signatures over two backends, so the code does not
//! know which one holds its rows:
//!
//! - `Redb`: the types wrap redb's own, and the file is what it always was (a site's replica
//!   never changes format for this).
//! - `Pg`: every table is the set of rows `(tbl, k, v)` of one PostgreSQL table (`pg`), `k` the
//!   key in an order-preserving encoding (`Ordered`) and `v` the value as redb encodes it. A
//!   range of keys is a range of `k` in byte order, which is redb's order for every key type
//!   the replica uses.
//!
//! Invariants:
//! - Both backends give the same answer to the same operations (the `kv` tests run random
//!   sequences of operations on both and compare every answer).
//! - The backend sees exactly the bytes the replica writes: stored ids, blind indexes and
//!   sealed values. Nothing is decoded, and nothing in clear is added, on the way.
//! - Errors keep redb's types (`StorageError`, `TableError`, …), so a caller handles a failure
//!   of either backend the same way; a PostgreSQL failure is a `StorageError::Io` whose message
//!   begins with `PostgreSQL`.
//! - A row PostgreSQL returns that is not of its table's types (a key or value of another
//!   width than a fixed-width type's, a string that is not UTF-8) is a
//!   `StorageError::Corrupted` to whoever reads, removes or retains it, never a panic in
//!   redb's decoding (`decodable`).

pub mod pg;

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::ops::RangeBounds;

pub use redb::{
    CommitError, Durability, Key, SetDurabilityError, StorageError, TableDefinition, TableError,
    TableHandle, TransactionError, Value,
};

/// A result with redb's storage error.
pub type Result<T = (), E = StorageError> = std::result::Result<T, E>;

/// A key type whose redb encoding has an order-preserving form: comparing two keys' ordered
/// forms byte by byte gives redb's order (`Key::compare`).
pub trait Ordered: Key + 'static {
    /// The ordered form of redb's encoding `stored`.
    fn ordered(stored: &[u8]) -> Vec<u8> {
        stored.to_vec()
    }
    /// redb's encoding of the ordered form `ordered` (the inverse of `ordered`).
    fn stored(ordered: &[u8]) -> Vec<u8> {
        ordered.to_vec()
    }
}

/// Byte strings compare byte by byte in redb: their encoding is ordered already.
impl Ordered for &'static [u8] {}
impl Ordered for &'static str {}
impl<const N: usize> Ordered for &'static [u8; N] {}

/// Reverses each of the little-endian integers of `widths`, one after the other in `bytes`:
/// little-endian to big-endian and back (unsigned integers compare as their big-endian bytes).
fn reverse_each(bytes: &[u8], widths: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    for &width in widths {
        let (int, tail) = rest.split_at(width.min(rest.len()));
        out.extend(int.iter().rev());
        rest = tail;
    }
    out.extend_from_slice(rest);
    out
}

impl Ordered for u32 {
    fn ordered(stored: &[u8]) -> Vec<u8> {
        reverse_each(stored, &[4])
    }
    fn stored(ordered: &[u8]) -> Vec<u8> {
        reverse_each(ordered, &[4])
    }
}

impl Ordered for u64 {
    fn ordered(stored: &[u8]) -> Vec<u8> {
        reverse_each(stored, &[8])
    }
    fn stored(ordered: &[u8]) -> Vec<u8> {
        reverse_each(ordered, &[8])
    }
}

/// redb writes a tuple of fixed-width members as their encodings end to end.
impl Ordered for (u32, u64) {
    fn ordered(stored: &[u8]) -> Vec<u8> {
        reverse_each(stored, &[4, 8])
    }
    fn stored(ordered: &[u8]) -> Vec<u8> {
        reverse_each(ordered, &[4, 8])
    }
}

/// The ordered form of a key given as redb's `SelfType`.
fn ordered_key<'a, K: Ordered>(key: impl Borrow<K::SelfType<'a>>) -> Vec<u8> {
    K::ordered(K::as_bytes(key.borrow()).as_ref())
}

/// A database: a redb file, or a PostgreSQL database.
pub enum Database {
    Redb(redb::Database),
    Pg(pg::PgStore),
}

impl Database {
    /// A read snapshot.
    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        match self {
            Database::Redb(db) => {
                use redb::ReadableDatabase;
                Ok(ReadTransaction::Redb(db.begin_read()?))
            }
            Database::Pg(pg) => Ok(ReadTransaction::Pg(
                pg.begin_read().map_err(TransactionError::Storage)?,
            )),
        }
    }

    /// The write transaction (one at a time in this process; PostgreSQL transactions of other
    /// processes are serialised with it by the database).
    pub fn begin_write(&self) -> Result<WriteTransaction, TransactionError> {
        match self {
            Database::Redb(db) => Ok(WriteTransaction::Redb(db.begin_write()?)),
            Database::Pg(pg) => Ok(WriteTransaction::Pg(
                pg.begin_write().map_err(TransactionError::Storage)?,
            )),
        }
    }

    /// The redb database, for what only a file has (backups, compaction, its tables' list).
    pub fn as_redb(&self) -> Option<&redb::Database> {
        match self {
            Database::Redb(db) => Some(db),
            Database::Pg(_) => None,
        }
    }
}

impl From<redb::Database> for Database {
    fn from(db: redb::Database) -> Self {
        Database::Redb(db)
    }
}

/// A read snapshot.
pub enum ReadTransaction {
    Redb(redb::ReadTransaction),
    Pg(pg::PgRead),
}

impl ReadTransaction {
    /// Opens a table of the snapshot. A redb file without the table answers
    /// `TableDoesNotExist`; in PostgreSQL every table exists (a table never written is empty).
    pub fn open_table<K: Ordered, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, TableError> {
        match self {
            ReadTransaction::Redb(txn) => Ok(ReadOnlyTable::Redb(txn.open_table(definition)?)),
            ReadTransaction::Pg(txn) => Ok(ReadOnlyTable::Pg(pg::PgTable::new(
                txn.source(),
                definition.name(),
            ))),
        }
    }

    /// The redb transaction, for what only a file has.
    pub fn as_redb(&self) -> Option<&redb::ReadTransaction> {
        match self {
            ReadTransaction::Redb(txn) => Some(txn),
            ReadTransaction::Pg(_) => None,
        }
    }
}

/// The write transaction.
#[allow(clippy::large_enum_variant)] // one at a time, never moved in a hot loop
pub enum WriteTransaction {
    Redb(redb::WriteTransaction),
    Pg(pg::PgWrite),
}

impl WriteTransaction {
    /// Opens (creating it if needed) a table for writing.
    pub fn open_table<K: Ordered, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<Table<'_, K, V>, TableError> {
        match self {
            WriteTransaction::Redb(txn) => Ok(Table::Redb(txn.open_table(definition)?)),
            WriteTransaction::Pg(txn) => {
                Ok(Table::Pg(pg::PgTable::new(txn.source(), definition.name())))
            }
        }
    }

    /// redb: whether the commit waits for the disk. PostgreSQL: every commit is durable.
    pub fn set_durability(&mut self, durability: Durability) -> Result<(), SetDurabilityError> {
        match self {
            WriteTransaction::Redb(txn) => txn.set_durability(durability),
            WriteTransaction::Pg(_) => Ok(()),
        }
    }

    /// Commits.
    pub fn commit(self) -> Result<(), CommitError> {
        match self {
            WriteTransaction::Redb(txn) => txn.commit(),
            WriteTransaction::Pg(txn) => txn.commit().map_err(CommitError::Storage),
        }
    }

    /// Abandons every change of the transaction.
    pub fn abort(self) -> Result {
        match self {
            WriteTransaction::Redb(txn) => txn.abort(),
            WriteTransaction::Pg(txn) => txn.abort(),
        }
    }

    /// The redb transaction, for what only a file has.
    pub fn as_redb(&self) -> Option<&redb::WriteTransaction> {
        match self {
            WriteTransaction::Redb(txn) => Some(txn),
            WriteTransaction::Pg(_) => None,
        }
    }
}

/// A stored key or value: redb's guard, or the bytes PostgreSQL returned (in redb's encoding).
pub enum AccessGuard<'a, V: Value + 'static> {
    Redb(redb::AccessGuard<'a, V>),
    Owned(Vec<u8>, PhantomData<V>),
}

impl<'a, V: Value + 'static> AccessGuard<'a, V> {
    /// Bytes PostgreSQL returned from `table`, once they are a `V` redb can decode: a row of a
    /// width other than its type's, or a string that is not UTF-8 (which redb's `from_bytes`
    /// would panic on), is a corrupted row, named by its table (never by its bytes).
    fn owned(bytes: Vec<u8>, table: &str) -> Result<Self> {
        if !decodable::<V>(&bytes) {
            return Err(StorageError::Corrupted(format!(
                "table {table}: a stored {} of {} bytes that is not one",
                V::type_name().name(),
                bytes.len()
            )));
        }
        Ok(AccessGuard::Owned(bytes, PhantomData))
    }

    /// The decoded value.
    pub fn value(&self) -> V::SelfType<'_> {
        match self {
            AccessGuard::Redb(guard) => guard.value(),
            AccessGuard::Owned(bytes, _) => V::from_bytes(bytes),
        }
    }
}

impl<V: Value + 'static> std::fmt::Debug for AccessGuard<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value().fmt(f)
    }
}

/// Whether redb decodes `bytes` as a `T` without panicking: a fixed-width type needs its
/// width, a string valid UTF-8; any bytes are a byte string. These are every type of the
/// replica's tables (`replica::tables`); a table of another variable-width type (`String`, an
/// `Option`, a tuple with a variable-width member) needs its own rule here first.
pub(crate) fn decodable<T: Value>(bytes: &[u8]) -> bool {
    match T::fixed_width() {
        Some(width) => bytes.len() == width,
        None if T::type_name() == <&str as Value>::type_name() => {
            std::str::from_utf8(bytes).is_ok()
        }
        None => true,
    }
}

/// A key and its value.
pub type Entry<'a, K, V> = (AccessGuard<'a, K>, AccessGuard<'a, V>);

fn from_redb<'a, K: Key + 'static, V: Value + 'static>(
    (k, v): (redb::AccessGuard<'a, K>, redb::AccessGuard<'a, V>),
) -> Entry<'a, K, V> {
    (AccessGuard::Redb(k), AccessGuard::Redb(v))
}

/// The rows of a range of keys, in key order (or backwards, from its end).
pub enum Range<'a, K: Ordered, V: Value + 'static> {
    Redb(redb::Range<'a, K, V>),
    Pg(pg::PgRange<'a, K, V>),
}

impl<'a, K: Ordered, V: Value + 'static> Iterator for Range<'a, K, V> {
    type Item = Result<Entry<'a, K, V>>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Range::Redb(range) => range.next().map(|row| row.map(from_redb)),
            Range::Pg(range) => range.next(),
        }
    }
}

impl<K: Ordered, V: Value + 'static> DoubleEndedIterator for Range<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Range::Redb(range) => range.next_back().map(|row| row.map(from_redb)),
            Range::Pg(range) => range.next_back(),
        }
    }
}

/// How many rows a table holds.
pub trait ReadableTableMetadata {
    /// The number of rows.
    fn len(&self) -> Result<u64>;
    /// Whether there is none.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// What reads a table, in a read or a write transaction.
pub trait ReadableTable<K: Ordered, V: Value + 'static>: ReadableTableMetadata {
    /// The value of `key`.
    fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<AccessGuard<'_, V>>>;

    /// The rows whose key is in `range`.
    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'_, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a;

    /// The row of the smallest key.
    fn first(&self) -> Result<Option<Entry<'_, K, V>>>;

    /// The row of the largest key.
    fn last(&self) -> Result<Option<Entry<'_, K, V>>>;

    /// Every row, in key order.
    fn iter(&self) -> Result<Range<'_, K, V>> {
        self.range::<K::SelfType<'_>>(..)
    }
}

/// The ordered forms of a range's bounds.
fn ordered_bounds<'a, K: Ordered, KR: Borrow<K::SelfType<'a>> + 'a>(
    range: &(impl RangeBounds<KR> + 'a),
) -> pg::Bounds {
    use std::ops::Bound;
    let each = |bound: Bound<&KR>| match bound {
        Bound::Included(key) => Bound::Included(ordered_key::<K>(key.borrow())),
        Bound::Excluded(key) => Bound::Excluded(ordered_key::<K>(key.borrow())),
        Bound::Unbounded => Bound::Unbounded,
    };
    (each(range.start_bound()), each(range.end_bound()))
}

/// A table opened in a write transaction.
pub enum Table<'t, K: Ordered, V: Value + 'static> {
    Redb(redb::Table<'t, K, V>),
    Pg(pg::PgTable<'t, K, V>),
}

impl<K: Ordered, V: Value + 'static> Table<'_, K, V> {
    /// Writes `value` at `key`; answers the value it replaced.
    pub fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>> {
        match self {
            Table::Redb(table) => Ok(table.insert(key, value)?.map(AccessGuard::Redb)),
            Table::Pg(table) => Ok(table
                .insert(ordered_key::<K>(key), V::as_bytes(value.borrow()).as_ref())?
                .map(|bytes| AccessGuard::owned(bytes, table.name()))
                .transpose()?),
        }
    }

    /// Writes `value` at `key`, not reading what it replaces. On PostgreSQL the row joins the
    /// transaction's write set, sent with others before the next read of several keys or the
    /// commit; prefer it to `insert` where the old value does not matter.
    pub fn put<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result {
        match self {
            Table::Redb(table) => table.insert(key, value).map(drop),
            Table::Pg(table) => table.put(
                ordered_key::<K>(key),
                V::as_bytes(value.borrow()).as_ref().to_vec(),
            ),
        }
    }

    /// Reads the rows of `keys` ahead, in one statement on PostgreSQL, where the transaction
    /// then answers them without a round trip; nothing with redb, whose reads are local.
    pub fn prefetch<'k>(
        &self,
        keys: impl IntoIterator<Item = impl Borrow<K::SelfType<'k>>>,
    ) -> Result {
        match self {
            Table::Redb(_) => Ok(()),
            Table::Pg(table) => {
                table.prefetch(keys.into_iter().map(|key| ordered_key::<K>(key)).collect())
            }
        }
    }

    /// Removes `key`, not reading what it held (see `put`).
    pub fn delete<'a>(&mut self, key: impl Borrow<K::SelfType<'a>>) -> Result {
        match self {
            Table::Redb(table) => table.remove(key).map(drop),
            Table::Pg(table) => table.delete(ordered_key::<K>(key)),
        }
    }

    /// Removes `key`; answers the value it had.
    pub fn remove<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>> {
        match self {
            Table::Redb(table) => Ok(table.remove(key)?.map(AccessGuard::Redb)),
            Table::Pg(table) => table
                .remove(ordered_key::<K>(key))?
                .map(|bytes| AccessGuard::owned(bytes, table.name()))
                .transpose(),
        }
    }

    /// Keeps the rows for which `predicate` holds, removes the others.
    pub fn retain<F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool>(
        &mut self,
        predicate: F,
    ) -> Result {
        self.retain_in::<K::SelfType<'_>, F>(.., predicate)
    }

    /// Keeps the rows of `range` for which `predicate` holds, removes the others.
    pub fn retain_in<'a, KR, F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool>(
        &mut self,
        range: impl RangeBounds<KR> + 'a,
        predicate: F,
    ) -> Result
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        match self {
            Table::Redb(table) => table.retain_in(range, predicate),
            Table::Pg(table) => table.retain_in(ordered_bounds::<K, KR>(&range), predicate),
        }
    }
}

impl<K: Ordered> Table<'_, K, &'static [u8]> {
    /// Writes at `key` a value of `len` bytes that `fill` writes (with redb, straight into the
    /// space the file reserves for it). An error from `fill` leaves the transaction to be
    /// dropped.
    pub fn insert_with<'k, E: From<StorageError>>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Table::Redb(table) => {
                let mut slot = table.insert_reserve(key, len)?;
                fill(slot.as_mut())
            }
            Table::Pg(table) => {
                let mut value = vec![0u8; len];
                fill(&mut value)?;
                table.put(ordered_key::<K>(key), value)?;
                Ok(())
            }
        }
    }
}

/// A table opened in a read snapshot.
pub enum ReadOnlyTable<K: Ordered, V: Value + 'static> {
    Redb(redb::ReadOnlyTable<K, V>),
    Pg(pg::PgTable<'static, K, V>),
}

impl<K: Ordered, V: Value + 'static> ReadOnlyTable<K, V> {
    /// The value of `key`, which may outlive the table (not the snapshot).
    pub fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'static, V>>> {
        match self {
            ReadOnlyTable::Redb(table) => Ok(table.get(key)?.map(AccessGuard::Redb)),
            ReadOnlyTable::Pg(table) => table
                .get(ordered_key::<K>(key))?
                .map(|bytes| AccessGuard::owned(bytes, table.name()))
                .transpose(),
        }
    }

    /// The rows whose key is in `range`, which may outlive the table (not the snapshot).
    pub fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'static, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        match self {
            ReadOnlyTable::Redb(table) => Ok(Range::Redb(table.range(range)?)),
            ReadOnlyTable::Pg(table) => Ok(Range::Pg(table.range(ordered_bounds::<K, KR>(&range)))),
        }
    }
}

macro_rules! readable {
    ($table:ident $(<$lt:lifetime>)?) => {
        impl<$($lt,)? K: Ordered, V: Value + 'static> ReadableTableMetadata
            for $table<$($lt,)? K, V>
        {
            fn len(&self) -> Result<u64> {
                use redb::ReadableTableMetadata as _;
                match self {
                    $table::Redb(table) => table.len(),
                    $table::Pg(table) => table.len(),
                }
            }
        }

        impl<$($lt,)? K: Ordered, V: Value + 'static> ReadableTable<K, V>
            for $table<$($lt,)? K, V>
        {
            fn get<'a>(
                &self,
                key: impl Borrow<K::SelfType<'a>>,
            ) -> Result<Option<AccessGuard<'_, V>>> {
                match self {
                    $table::Redb(table) => {
                        Ok(redb::ReadableTable::get(table, key)?.map(AccessGuard::Redb))
                    }
                    $table::Pg(table) => table
                        .get(ordered_key::<K>(key))?
                        .map(|bytes| AccessGuard::owned(bytes, table.name()))
                        .transpose(),
                }
            }

            fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'_, K, V>>
            where
                KR: Borrow<K::SelfType<'a>> + 'a,
            {
                match self {
                    $table::Redb(table) => {
                        Ok(Range::Redb(redb::ReadableTable::range(table, range)?))
                    }
                    $table::Pg(table) => {
                        Ok(Range::Pg(table.range(ordered_bounds::<K, KR>(&range))))
                    }
                }
            }

            fn first(&self) -> Result<Option<Entry<'_, K, V>>> {
                match self {
                    $table::Redb(table) => Ok(redb::ReadableTable::first(table)?.map(from_redb)),
                    $table::Pg(table) => table.end(false),
                }
            }

            fn last(&self) -> Result<Option<Entry<'_, K, V>>> {
                match self {
                    $table::Redb(table) => Ok(redb::ReadableTable::last(table)?.map(from_redb)),
                    $table::Pg(table) => table.end(true),
                }
            }
        }
    };
}

readable!(Table<'t>);
readable!(ReadOnlyTable);

/// Names the backend: the handles hold connections and file state, nothing worth printing.
macro_rules! backend_debug {
    ($name:literal, $($impl:tt)*) => {
        $($impl)* {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let backend = match self {
                    Self::Redb(_) => "redb",
                    Self::Pg(_) => "PostgreSQL",
                };
                write!(f, "{}({backend})", $name)
            }
        }
    };
}

backend_debug!("Database", impl std::fmt::Debug for Database);
backend_debug!("ReadTransaction", impl std::fmt::Debug for ReadTransaction);
backend_debug!("WriteTransaction", impl std::fmt::Debug for WriteTransaction);
backend_debug!("Range", impl<K: Ordered, V: Value + 'static> std::fmt::Debug for Range<'_, K, V>);
backend_debug!("Table", impl<K: Ordered, V: Value + 'static> std::fmt::Debug for Table<'_, K, V>);
backend_debug!(
    "ReadOnlyTable",
    impl<K: Ordered, V: Value + 'static> std::fmt::Debug for ReadOnlyTable<K, V>
);

#[cfg(test)]
mod tests;
