//! Both backends give the same answers: random sequences of operations run on a redb file and
//! on a PostgreSQL database, every answer compared; and what PostgreSQL adds (schema versions,
//! serialisation failures between processes, snapshots) tested on a real server.

use std::ops::Bound;
use std::time::Duration;

use proptest::prelude::*;

use super::pg::{PgStore, is_serialization_failure};
use super::*;

use carnet_testpg::database;

const NUMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("numbers");
const PAIRS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("pairs");
const BYTES: TableDefinition<&[u8], u64> = TableDefinition::new("bytes");
const IDS: TableDefinition<&[u8; 4], i64> = TableDefinition::new("ids");

fn redb_database(dir: &tempfile::TempDir) -> Database {
    Database::Redb(redb::Database::create(dir.path().join("kv.redb")).expect("create"))
}

fn pg_database() -> Database {
    Database::Pg(PgStore::open(&database()).expect("open PostgreSQL"))
}

/// One operation, on one of the tables (keys drawn small so they collide).
#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u8, Vec<u8>),
    /// An insert that does not read the old value (`Table::put`).
    Put(u8, u8, Vec<u8>),
    Remove(u8, u8),
    /// A remove that does not read the old value (`Table::delete`).
    Delete(u8, u8),
    /// Two keys read ahead (`Table::prefetch`).
    Prefetch(u8, u8, u8),
    Get(u8, u8),
    /// A range between two keys, read from the front, the back, or alternately.
    Range(u8, u8, u8, u8, u8),
    Ends,
    Len,
    /// Removes the keys of a range whose value's first byte is odd.
    RetainIn(u8, u8),
    Commit,
    Abort,
}

/// A key's number: most often one of a few, so that operations meet on the same rows.
fn key() -> impl Strategy<Value = u8> {
    prop_oneof![3 => 0..12u8, 1 => any::<u8>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u8, key(), proptest::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(t, k, v)| Op::Insert(t, k, v)),
        3 => (0..4u8, key(), proptest::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(t, k, v)| Op::Put(t, k, v)),
        1 => (0..4u8, key()).prop_map(|(t, k)| Op::Remove(t, k)),
        1 => (0..4u8, key()).prop_map(|(t, k)| Op::Delete(t, k)),
        1 => (0..4u8, key(), key()).prop_map(|(t, a, b)| Op::Prefetch(t, a, b)),
        2 => (0..4u8, key()).prop_map(|(t, k)| Op::Get(t, k)),
        2 => (0..4u8, any::<u8>(), any::<u8>(), 0..6u8, 0..3u8)
            .prop_map(|(t, a, b, bounds, way)| Op::Range(t, a, b, bounds, way)),
        1 => Just(Op::Ends),
        1 => Just(Op::Len),
        1 => (0..4u8, any::<u8>()).prop_map(|(t, a)| Op::RetainIn(t, a)),
        1 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ]
}

/// A key of each table from a small number, spread so that byte order and number order
/// differ (little-endian encodings would sort them wrongly).
fn number(k: u8) -> u64 {
    u64::from(k).rotate_left(k as u32 % 64) ^ (u64::from(k) << 8)
}
fn pair(k: u8) -> (u32, u64) {
    (u32::from(k % 3) << 9, number(k))
}
fn bytes(k: u8) -> Vec<u8> {
    vec![k % 7; usize::from(k % 4)]
}
fn id(k: u8) -> [u8; 4] {
    [k % 5, k, 0, k / 3]
}

fn bounds<T: Clone>(a: T, b: T, which: u8) -> (Bound<T>, Bound<T>) {
    match which {
        0 => (Bound::Included(a), Bound::Included(b)),
        1 => (Bound::Included(a), Bound::Excluded(b)),
        2 => (Bound::Excluded(a), Bound::Unbounded),
        3 => (Bound::Unbounded, Bound::Included(b)),
        4 => (Bound::Excluded(a), Bound::Excluded(b)),
        _ => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// Reads a range the way `way` says: forwards, backwards, or one from each end in turn.
fn drain<I, T>(mut rows: I, way: u8) -> Vec<T>
where
    I: DoubleEndedIterator<Item = Result<T>>,
{
    let mut front = Vec::new();
    let mut back = Vec::new();
    let mut from_back = way == 1;
    loop {
        let row = if from_back {
            rows.next_back()
        } else {
            rows.next()
        };
        let Some(row) = row else { break };
        let row = row.expect("row");
        if from_back {
            back.push(row)
        } else {
            front.push(row)
        }
        if way == 2 {
            from_back = !from_back;
        }
    }
    front.extend(back.into_iter().rev());
    front
}

/// Runs `ops` on `db`, answering each one as text.
fn run(db: &Database, ops: &[Op]) -> Vec<String> {
    let mut answers = Vec::new();
    let mut txn = db.begin_write().expect("begin");
    for op in ops {
        let answer = match op.clone() {
            Op::Insert(t, k, v) => {
                let v0 = u64::from(v.first().copied().unwrap_or(0));
                match t {
                    0 => format!(
                        "{:?}",
                        txn.open_table(NUMBERS)
                            .expect("kv")
                            .insert(number(k), v.as_slice())
                            .expect("kv")
                            .map(|g| g.value().to_vec())
                    ),
                    1 => format!(
                        "{:?}",
                        txn.open_table(PAIRS)
                            .expect("kv")
                            .insert(pair(k), v.as_slice())
                            .expect("kv")
                            .map(|g| g.value().to_vec())
                    ),
                    2 => format!(
                        "{:?}",
                        txn.open_table(BYTES)
                            .expect("kv")
                            .insert(bytes(k).as_slice(), v0)
                            .expect("kv")
                            .map(|g| g.value())
                    ),
                    _ => format!(
                        "{:?}",
                        txn.open_table(IDS)
                            .expect("kv")
                            .insert(&id(k), -(v0 as i64))
                            .expect("kv")
                            .map(|g| g.value())
                    ),
                }
            }
            Op::Put(t, k, v) => {
                let v0 = u64::from(v.first().copied().unwrap_or(0));
                match t {
                    0 => txn
                        .open_table(NUMBERS)
                        .expect("kv")
                        .put(number(k), v.as_slice()),
                    1 => txn
                        .open_table(PAIRS)
                        .expect("kv")
                        .put(pair(k), v.as_slice()),
                    2 => txn
                        .open_table(BYTES)
                        .expect("kv")
                        .put(bytes(k).as_slice(), v0),
                    _ => txn.open_table(IDS).expect("kv").put(&id(k), -(v0 as i64)),
                }
                .expect("kv");
                "put".into()
            }
            Op::Delete(t, k) => {
                match t {
                    0 => txn.open_table(NUMBERS).expect("kv").delete(number(k)),
                    1 => txn.open_table(PAIRS).expect("kv").delete(pair(k)),
                    2 => txn
                        .open_table(BYTES)
                        .expect("kv")
                        .delete(bytes(k).as_slice()),
                    _ => txn.open_table(IDS).expect("kv").delete(&id(k)),
                }
                .expect("kv");
                "deleted".into()
            }
            Op::Prefetch(t, a, b) => {
                match t {
                    0 => txn
                        .open_table(NUMBERS)
                        .expect("kv")
                        .prefetch([number(a), number(b)]),
                    1 => txn
                        .open_table(PAIRS)
                        .expect("kv")
                        .prefetch([pair(a), pair(b)]),
                    2 => txn
                        .open_table(BYTES)
                        .expect("kv")
                        .prefetch([bytes(a).as_slice(), bytes(b).as_slice()]),
                    _ => txn.open_table(IDS).expect("kv").prefetch([&id(a), &id(b)]),
                }
                .expect("kv");
                "prefetched".into()
            }
            Op::Remove(t, k) => match t {
                0 => format!(
                    "{:?}",
                    txn.open_table(NUMBERS)
                        .expect("kv")
                        .remove(number(k))
                        .expect("kv")
                        .map(|g| g.value().to_vec())
                ),
                1 => format!(
                    "{:?}",
                    txn.open_table(PAIRS)
                        .expect("kv")
                        .remove(pair(k))
                        .expect("kv")
                        .map(|g| g.value().to_vec())
                ),
                2 => format!(
                    "{:?}",
                    txn.open_table(BYTES)
                        .expect("kv")
                        .remove(bytes(k).as_slice())
                        .expect("kv")
                        .map(|g| g.value())
                ),
                _ => format!(
                    "{:?}",
                    txn.open_table(IDS)
                        .expect("kv")
                        .remove(&id(k))
                        .expect("kv")
                        .map(|g| g.value())
                ),
            },
            Op::Get(t, k) => {
                // Read in the write transaction, and in a snapshot of what is committed.
                let read = db.begin_read().expect("read");
                match t {
                    0 => format!(
                        "{:?} {:?}",
                        txn.open_table(NUMBERS)
                            .expect("kv")
                            .get(number(k))
                            .expect("kv")
                            .map(|g| g.value().to_vec()),
                        read.open_table(NUMBERS)
                            .ok()
                            .map(|t| t.get(number(k)).expect("kv").map(|g| g.value().to_vec()))
                            .unwrap_or_default()
                    ),
                    1 => format!(
                        "{:?}",
                        txn.open_table(PAIRS)
                            .expect("kv")
                            .get(pair(k))
                            .expect("kv")
                            .map(|g| g.value().to_vec())
                    ),
                    2 => format!(
                        "{:?}",
                        txn.open_table(BYTES)
                            .expect("kv")
                            .get(bytes(k).as_slice())
                            .expect("kv")
                            .map(|g| g.value())
                    ),
                    _ => format!(
                        "{:?}",
                        txn.open_table(IDS)
                            .expect("kv")
                            .get(&id(k))
                            .expect("kv")
                            .map(|g| g.value())
                    ),
                }
            }
            Op::Range(t, a, b, which, way) => match t {
                0 => {
                    let table = txn.open_table(NUMBERS).expect("kv");
                    let rows = table.range(bounds(number(a), number(b), which));
                    // redb refuses a range whose start is after its end; so must PostgreSQL.
                    match rows {
                        Ok(rows) => format!(
                            "{:?}",
                            drain(rows, way)
                                .iter()
                                .map(|(k, v)| (k.value(), v.value().to_vec()))
                                .collect::<Vec<_>>()
                        ),
                        Err(e) => format!("refused: {e}"),
                    }
                }
                1 => {
                    let table = txn.open_table(PAIRS).expect("kv");
                    let rows = table.range(bounds(pair(a), pair(b), which)).expect("kv");
                    format!(
                        "{:?}",
                        drain(rows, way)
                            .iter()
                            .map(|(k, v)| (k.value(), v.value().to_vec()))
                            .collect::<Vec<_>>()
                    )
                }
                2 => {
                    let table = txn.open_table(BYTES).expect("kv");
                    let (a, b) = (bytes(a), bytes(b));
                    let rows = table
                        .range::<&[u8]>(bounds(a.as_slice(), b.as_slice(), which))
                        .expect("kv");
                    format!(
                        "{:?}",
                        drain(rows, way)
                            .iter()
                            .map(|(k, v)| (k.value().to_vec(), v.value()))
                            .collect::<Vec<_>>()
                    )
                }
                _ => {
                    let table = txn.open_table(IDS).expect("kv");
                    let (a, b) = (id(a), id(b));
                    let rows = table.range::<&[u8; 4]>(bounds(&a, &b, which)).expect("kv");
                    format!(
                        "{:?}",
                        drain(rows, way)
                            .iter()
                            .map(|(k, v)| (*k.value(), v.value()))
                            .collect::<Vec<_>>()
                    )
                }
            },
            Op::Ends => {
                let numbers = txn.open_table(NUMBERS).expect("kv");
                let pairs = txn.open_table(PAIRS).expect("kv");
                let end = |e: Option<Entry<'_, u64, &[u8]>>| {
                    e.map(|(k, v)| (k.value(), v.value().to_vec()))
                };
                let pend = |e: Option<Entry<'_, (u32, u64), &[u8]>>| e.map(|(k, _)| k.value());
                format!(
                    "{:?} {:?} {:?} {:?}",
                    end(numbers.first().expect("kv")),
                    end(numbers.last().expect("kv")),
                    pend(pairs.first().expect("kv")),
                    pend(pairs.last().expect("kv"))
                )
            }
            Op::Len => {
                let ids = txn.open_table(IDS).expect("kv");
                format!(
                    "{} {} {} {} {}",
                    txn.open_table(NUMBERS).expect("kv").len().expect("kv"),
                    txn.open_table(PAIRS).expect("kv").len().expect("kv"),
                    txn.open_table(BYTES).expect("kv").len().expect("kv"),
                    ids.len().expect("kv"),
                    ids.is_empty().expect("kv"),
                )
            }
            Op::RetainIn(t, a) => {
                match t % 2 {
                    0 => txn
                        .open_table(NUMBERS)
                        .expect("kv")
                        .retain_in(number(a)..=u64::MAX, |_, v| {
                            v.first().is_none_or(|b| b % 2 == 0)
                        })
                        .expect("kv"),
                    _ => txn
                        .open_table(PAIRS)
                        .expect("kv")
                        .retain(|k, v| k.0 > 600 || v.len() % 2 == 0)
                        .expect("kv"),
                }
                "retained".into()
            }
            Op::Commit => {
                txn.commit().expect("commit");
                txn = db.begin_write().expect("begin");
                "committed".into()
            }
            Op::Abort => {
                txn.abort().expect("abort");
                txn = db.begin_write().expect("begin");
                "aborted".into()
            }
        };
        answers.push(answer);
    }
    txn.commit().expect("commit");
    answers.push(committed(db));
    answers
}

/// Every committed row of the four tables, read in a new snapshot (a table redb never
/// created is empty, as in PostgreSQL).
fn committed(db: &Database) -> String {
    fn rows<K: Ordered, V: Value + 'static, T: std::fmt::Debug>(
        read: &ReadTransaction,
        definition: TableDefinition<K, V>,
        row: impl Fn(Entry<'_, K, V>) -> T,
    ) -> String {
        let Ok(table) = read.open_table(definition) else {
            return "[]".into();
        };
        let rows = table
            .range::<K::SelfType<'_>>(..)
            .expect("kv")
            .map(|entry| entry.map(&row))
            .collect::<Result<Vec<_>>>()
            .expect("kv");
        format!("{rows:?}")
    }
    let read = db.begin_read().expect("read");
    [
        rows(&read, NUMBERS, |(k, v)| (k.value(), v.value().to_vec())),
        rows(&read, PAIRS, |(k, v)| (k.value(), v.value().to_vec())),
        rows(&read, BYTES, |(k, v)| (k.value().to_vec(), v.value())),
        rows(&read, IDS, |(k, v)| (*k.value(), v.value())),
    ]
    .join(" ")
}

// The test server is shared by the cases: each case takes a database of its own.
proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn postgres_answers_every_operation_as_redb_does(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let redb = run(&redb_database(&dir), &ops);
        let pg = run(&pg_database(), &ops);
        for (i, (r, p)) in redb.iter().zip(&pg).enumerate() {
            prop_assert_eq!(r, p, "operation {} ({:?})", i, ops.get(i));
        }
    }
}

/// A range longer than a page, read from both ends until they meet.
#[test]
fn a_range_of_many_pages_meets_itself_from_both_ends() {
    let db = pg_database();
    let txn = db.begin_write().expect("begin");
    {
        let mut table = txn.open_table(NUMBERS).expect("table");
        for n in 0..1500u64 {
            table.insert(n * 3, [n as u8].as_slice()).expect("insert");
        }
    }
    txn.commit().expect("commit");
    let read = db.begin_read().expect("read");
    let table = read.open_table(NUMBERS).expect("table");
    let all: Vec<u64> = drain(table.range(10..4000).expect("range"), 2)
        .iter()
        .map(|(k, _)| k.value())
        .collect();
    let expected: Vec<u64> = (0..1500u64)
        .map(|n| n * 3)
        .filter(|k| (10..4000).contains(k))
        .collect();
    assert_eq!(all, expected);
    assert_eq!(table.iter().expect("iter").rev().count(), 1500);
}

/// A write transaction larger than its write set and its read set (rows sent before the
/// commit, large rows and then all clean rows forgotten) still reads its own writes and
/// commits every one of them; a dropped one keeps none, even those already sent.
#[test]
fn a_write_transaction_larger_than_its_write_set_keeps_every_row() {
    let db = pg_database();
    let value = |n: u64| -> Vec<u8> {
        let len = if n.is_multiple_of(50) {
            100 << 10
        } else {
            32 << 10
        };
        vec![(n % 251) as u8; len]
    };
    let write = |commit: bool, from: u64| {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(NUMBERS).expect("kv");
            for n in from..from + 300 {
                table.put(n, value(n).as_slice()).expect("put");
            }
            for n in (from..from + 300).filter(|n| n.is_multiple_of(7)) {
                table.delete(n).expect("delete");
            }
            for n in from..from + 300 {
                let got = table.get(n).expect("get").map(|v| summary(v.value()));
                let expected = (!n.is_multiple_of(7)).then(|| summary(&value(n)));
                assert_eq!(got, expected, "row {n} in its transaction");
            }
            // Rewritten after all were read: the rows known must not hide these.
            for n in (from..from + 300).filter(|n| n.is_multiple_of(10)) {
                let old = table.insert(n, [9u8].as_slice()).expect("insert");
                let expected = (!n.is_multiple_of(7)).then(|| summary(&value(n)));
                assert_eq!(
                    old.map(|v| summary(v.value())),
                    expected,
                    "row {n} replaced"
                );
            }
        }
        if commit {
            txn.commit().expect("commit");
        } else {
            drop(txn);
        }
    };
    let expected = |n: u64| -> Option<(usize, u8, u8)> {
        if n.is_multiple_of(10) {
            Some(summary(&[9]))
        } else {
            (!n.is_multiple_of(7)).then(|| summary(&value(n)))
        }
    };
    write(true, 0);
    write(false, 1000);
    let read = db.begin_read().expect("read");
    let table = read.open_table(NUMBERS).expect("kv");
    for n in 0..300 {
        let got = table.get(n).expect("get").map(|v| summary(v.value()));
        assert_eq!(got, expected(n), "row {n} after the commit");
    }
    assert_eq!(
        table.range(1000..).expect("range").count(),
        0,
        "the dropped transaction kept rows"
    );
    drop((table, read));
    // Rows written, then more rows read than the read set keeps: the written ones stay.
    let txn = db.begin_write().expect("begin");
    for n in 3000..3300 {
        let mut table = txn.open_table(NUMBERS).expect("kv");
        table.put(n, vec![1u8; 32 << 10].as_slice()).expect("put");
    }
    txn.commit().expect("commit");
    let txn = db.begin_write().expect("begin");
    {
        let mut table = txn.open_table(NUMBERS).expect("kv");
        for n in 2000..2010 {
            table.put(n, [7u8].as_slice()).expect("put");
        }
        // A key asked for twice in one prefetch is found, not remembered absent.
        table.prefetch([3000u64, 3000, 3001]).expect("prefetch");
        assert!(table.get(3000).expect("get").is_some());
        for n in 3000..3300 {
            table.get(n).expect("get");
        }
    }
    txn.commit().expect("commit");
    let read = db.begin_read().expect("read");
    let table = read.open_table(NUMBERS).expect("kv");
    assert_eq!(table.range(2000..2010).expect("range").count(), 10);
}

/// A value's length, first and last bytes: enough to tell the values of a test apart.
fn summary(value: &[u8]) -> (usize, u8, u8) {
    (
        value.len(),
        value.first().copied().unwrap_or(0),
        value.last().copied().unwrap_or(0),
    )
}

/// A snapshot does not see what commits after it began; a dropped write keeps nothing.
#[test]
fn a_snapshot_is_stable_and_a_dropped_write_keeps_nothing() {
    let db = pg_database();
    let before = db.begin_read().expect("read");
    let txn = db.begin_write().expect("begin");
    txn.open_table(NUMBERS)
        .expect("kv")
        .insert(1, [1u8].as_slice())
        .expect("kv");
    txn.commit().expect("commit");
    assert!(
        before
            .open_table(NUMBERS)
            .expect("kv")
            .get(1)
            .expect("kv")
            .is_none()
    );
    let txn = db.begin_write().expect("begin");
    txn.open_table(NUMBERS)
        .expect("kv")
        .insert(2, [2u8].as_slice())
        .expect("kv");
    drop(txn);
    let after = db.begin_read().expect("read");
    let table = after.open_table(NUMBERS).expect("kv");
    assert_eq!(
        table.get(1).expect("kv").map(|g| g.value().to_vec()),
        Some(vec![1])
    );
    assert!(
        table.get(2).expect("kv").is_none(),
        "a dropped transaction kept its write"
    );
}

/// Two processes' write transactions, each reading the row the other writes (write skew):
/// PostgreSQL keeps one, refuses the other as a serialisation failure, and running it again
/// succeeds.
#[test]
fn concurrent_writers_of_two_processes_are_serialised() {
    let url = database();
    let first = Database::Pg(PgStore::open(&url).expect("open"));
    let second = Database::Pg(PgStore::open(&url).expect("open"));
    // Writes into `to` one more than `from` holds.
    let copy = |txn: &WriteTransaction, from: &[u8], to: &[u8]| {
        let mut table = txn.open_table(BYTES).expect("kv");
        let n = table.get(from).expect("kv").map(|g| g.value()).unwrap_or(0);
        table.insert(to, n + 1).expect("kv");
    };
    let a = first.begin_write().expect("begin");
    let b = second.begin_write().expect("begin");
    copy(&a, b"y", b"x");
    copy(&b, b"x", b"y");
    a.commit().expect("the first commit");
    let refused = b
        .commit()
        .expect_err("each read what the other wrote: one must be refused");
    let CommitError::Storage(refused) = refused else {
        panic!("{refused}")
    };
    assert!(is_serialization_failure(&refused), "{refused}");
    let again = second.begin_write().expect("begin");
    copy(&again, b"x", b"y");
    again.commit().expect("run again");
    let read = first.begin_read().expect("kv");
    let table = read.open_table(BYTES).expect("kv");
    let value = |k: &[u8]| table.get(k).expect("kv").map(|g| g.value());
    assert_eq!((value(b"x"), value(b"y")), (Some(1), Some(2)));
}

/// Snapshots are bounded: one past the bound waits for one to end, and fails with a clear
/// error if none does in time; the write transaction is not held back by them.
#[test]
fn snapshots_are_bounded_and_the_writer_is_not() {
    let url = database();
    let wait = Duration::from_millis(300);
    let db = Database::Pg(PgStore::open_bounded(&url, 2, wait).expect("open"));
    let first = db.begin_read().expect("first");
    let second = db.begin_read().expect("second");
    let started = std::time::Instant::now();
    let Err(busy) = db.begin_read() else {
        panic!("a third snapshot past the bound of two")
    };
    assert!(started.elapsed() >= wait, "it waited first");
    assert!(
        busy.to_string().contains("read connections stayed busy"),
        "{busy}"
    );
    // The writer goes on while both snapshots are open.
    let txn = db.begin_write().expect("write beside two snapshots");
    txn.open_table(BYTES)
        .expect("kv")
        .insert(&b"k"[..], 1)
        .expect("kv");
    txn.commit().expect("commit");
    // A snapshot waiting gets the place of one that ends.
    let patient =
        Database::Pg(PgStore::open_bounded(&url, 1, Duration::from_secs(60)).expect("open"));
    let held = patient.begin_read().expect("held");
    let asking = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            asking.store(true, std::sync::atomic::Ordering::SeqCst);
            patient.begin_read().map(|_| ())
        });
        while !asking.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        drop(held);
        waiting
            .join()
            .expect("thread")
            .expect("the place of the snapshot that ended");
    });
    drop((first, second));
    db.begin_read().expect("places given back");
}

/// The schema is made once, a second start finds it, and a newer schema is refused.
#[test]
fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let url = database();
    drop(PgStore::open(&url).expect("make the schema"));
    drop(PgStore::open(&url).expect("find it"));
    let db = PgStore::open(&url).expect("open");
    let txn = db.begin_write().expect("begin");
    drop(txn);
    // A newer Carnet moved the schema on.
    let mut psql = std::process::Command::new("psql");
    let status = psql
        .args([
            "-q",
            "-d",
            &url,
            "-c",
            "UPDATE carnet_schema SET version = version + 1",
        ])
        .status()
        .expect("psql");
    assert!(status.success());
    let refused = PgStore::open(&url).expect_err("a newer schema");
    assert!(refused.to_string().contains("newer Carnet"), "{refused}");
}

/// Rows PostgreSQL holds that are not of their table's types (a key or a value of another
/// width, a name that is not UTF-8: a database edited by hand, or damaged) are errors to
/// every read, to a remove and to a retain, never a panic; the rows beside them still read.
#[test]
fn a_row_not_of_its_tables_types_is_an_error_never_a_panic() {
    const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");
    let url = database();
    let db = Database::Pg(PgStore::open(&url).expect("open"));
    let txn = db.begin_write().expect("begin");
    txn.open_table(NUMBERS)
        .expect("kv")
        .insert(7, [7u8].as_slice())
        .expect("kv");
    txn.open_table(BYTES)
        .expect("kv")
        .insert(&b"ok"[..], 1)
        .expect("kv");
    txn.open_table(NAMES)
        .expect("kv")
        .insert("ok", [1u8].as_slice())
        .expect("kv");
    txn.commit().expect("commit");
    let status = std::process::Command::new("psql")
        .args([
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &url,
            "-c",
            "INSERT INTO carnet_kv (tbl, k, v) VALUES \
             ('numbers', '\\x0102', '\\x00'), \
             ('bytes', '\\x62', '\\x010203'), \
             ('names', '\\xff', '\\x00')",
        ])
        .status()
        .expect("psql");
    assert!(status.success());
    // Named by its table, for whoever must restore it.
    let corrupted = |table: &str, e: StorageError| {
        assert!(
            matches!(&e, StorageError::Corrupted(m) if m.starts_with(&format!("table {table}: "))),
            "{e}"
        );
    };
    let read = db.begin_read().expect("read");
    let numbers = read.open_table(NUMBERS).expect("kv");
    assert_eq!(
        numbers.get(7).expect("kv").map(|g| g.value().to_vec()),
        Some(vec![7])
    );
    let rows: Vec<_> = numbers.range::<u64>(..).expect("kv").collect();
    assert_eq!(
        rows.len(),
        2,
        "the row that reads, and the one that does not"
    );
    assert!(rows.iter().any(|r| r.is_ok()));
    rows.into_iter()
        .filter_map(|r| r.err())
        .for_each(|e| corrupted("numbers", e));
    let bytes = read.open_table(BYTES).expect("kv");
    corrupted(
        "bytes",
        bytes
            .get(&b"b"[..])
            .expect_err("a value of three bytes for a u64"),
    );
    assert_eq!(
        bytes.get(&b"ok"[..]).expect("kv").map(|g| g.value()),
        Some(1)
    );
    let names = read.open_table(NAMES).expect("kv");
    let rows: Vec<_> = names.range::<&str>(..).expect("kv").collect();
    assert!(rows.iter().any(|r| r.is_err()), "a name that is not UTF-8");
    drop((numbers, bytes, names, read));
    let txn = db.begin_write().expect("begin");
    {
        let mut bytes = txn.open_table(BYTES).expect("kv");
        corrupted("bytes", bytes.remove(&b"b"[..]).expect_err("its old value"));
        let mut numbers = txn.open_table(NUMBERS).expect("kv");
        corrupted(
            "numbers",
            numbers
                .retain_in::<u64, _>(.., |_, _| true)
                .expect_err("a key of two bytes for a u64"),
        );
    }
    drop(txn);
}

/// What redb decodes without panicking: a fixed-width type at its width only, a string only
/// when UTF-8, a byte string always (what a PostgreSQL row and a restored backup are held to).
#[test]
fn bytes_are_decodable_as_a_type_only_at_its_width_or_as_utf_8() {
    assert!(decodable::<u64>(&[0; 8]));
    assert!(!decodable::<u64>(&[0; 7]) && !decodable::<u64>(&[0; 9]));
    assert!(decodable::<(u32, u64)>(&[0; 12]) && !decodable::<(u32, u64)>(&[0; 8]));
    assert!(decodable::<&[u8; 16]>(&[0; 16]) && !decodable::<&[u8; 16]>(&[0; 15]));
    assert!(decodable::<()>(&[]) && !decodable::<()>(&[0]));
    assert!(decodable::<&str>("médecin".as_bytes()) && !decodable::<&str>(&[0xff, 0x41]));
    assert!(decodable::<&[u8]>(&[0xff, 0x41]) && decodable::<&[u8]>(&[]));
}
