//! The PostgreSQL backend of `kv`: every table of the replica is the rows of one SQL table,
//!
//! ```sql
//! carnet_kv (tbl text, k bytea, v bytea, primary key (tbl, k))
//! ```
//!
//! `tbl` the table's name, `k` the key's ordered form (`Ordered`), `v` the value as redb
//! encodes it: PostgreSQL holds what the redb file would hold, stored ids, blind indexes and
//! sealed values, and nothing else.
//!
//! The SQL is what PostgreSQL-compatible distributed engines (CockroachDB, YugabyteDB, Citus)
//! also accept: one table with a composite primary key, explicit `SERIALIZABLE` write
//! transactions and `REPEATABLE READ READ ONLY` snapshots, `INSERT … ON CONFLICT`, data-modifying
//! `WITH`, `DELETE … RETURNING`, keyset pagination in key order. No advisory lock, no
//! `LISTEN`/`NOTIFY`, no stored procedure, no sequence.
//!
//! Invariants:
//! - One write transaction at a time in this process (as with redb); transactions of other
//!   processes are serialised with it by the database, and one that would break that order
//!   fails (SQLSTATE 40001, `is_serialization_failure`): nothing of it is kept, and the caller
//!   may run it again.
//! - A write transaction is a few round trips, not one per row: it remembers the rows it read
//!   and wrote (`WriteSet`), answers them again without asking, and sends the rows written
//!   without reading what they replace (`put`, `delete`) in one statement, before any read of
//!   several keys and before its commit. What it answers is what the database would: its
//!   snapshot and its own writes.
//! - A transaction dropped without its commit is rolled back before its connection is used
//!   again; a connection whose rollback failed is closed, not reused.
//! - The schema's version is checked (and older schemas migrated, in order, in one
//!   transaction) before any other statement: a database of a newer Carnet is refused.
//! - The client's connections run on one thread of their own (`carnet-pg`); callers block on
//!   their answers, from any thread, inside an async runtime or not.
//! - At most `READERS_MAX` snapshots are open at once (a snapshot holds a connection, and
//!   PostgreSQL's memory grows with connections): one more waits for a snapshot to end, and
//!   after `READ_WAIT` fails with an error that says so. The write transaction does not count:
//!   a reader waiting to write never keeps the writer from a connection. So this process holds
//!   at most `READERS_MAX + 1` connections in use, and `IDLE_MAX` idle.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_executor::block_on;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::{AccessGuard, Entry, Ordered, Result, StorageError, Value};

/// The key and value types of a table, and the transaction it lives in.
type Types<'t, K, V> = PhantomData<(&'t (), fn() -> (K, V))>;

/// The bounds of a range of keys, in their ordered form.
pub type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The schema's migrations, in order: the schema is at version `n` once the first `n` ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE carnet_kv (
        tbl text NOT NULL,
        k bytea NOT NULL,
        v bytea NOT NULL,
        PRIMARY KEY (tbl, k)
    )"];

/// Rows a range fetches at a time.
const PAGE: i64 = 512;
/// Connections kept open while idle.
const IDLE_MAX: usize = 8;
/// Snapshots open at once in this process (see the module doc).
pub const READERS_MAX: usize = 32;
/// How long a snapshot waits for one of the `READERS_MAX` to end.
const READ_WAIT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of rows written a write transaction keeps before sending them (see `WriteSet`).
const WRITE_SET_MAX: usize = 4 << 20;
/// Bytes of rows read a write transaction remembers; beyond, it forgets them all.
const READ_SET_MAX: usize = 8 << 20;
/// Rows larger than this are not remembered once written (bodies' chunks are read once).
const REMEMBER_MAX: usize = 64 << 10;
/// How many times a start-up (schema check or migration) is tried when another process
/// starting at the same time makes it fail.
const STARTUP_TRIES: u32 = 5;

const GET: &str = "SELECT v FROM carnet_kv WHERE tbl = $1 AND k = $2";
const PUT: &str = "WITH old AS (SELECT v FROM carnet_kv WHERE tbl = $1 AND k = $2), \
     up AS (INSERT INTO carnet_kv (tbl, k, v) VALUES ($1, $2, $3) \
            ON CONFLICT (tbl, k) DO UPDATE SET v = excluded.v RETURNING 1) \
     SELECT v FROM old";
const GET_MANY: &str = "SELECT k, v FROM carnet_kv WHERE tbl = $1 AND k = ANY($2)";
const DELETE: &str = "DELETE FROM carnet_kv WHERE tbl = $1 AND k = $2 RETURNING v";
const DELETE_MANY: &str = "DELETE FROM carnet_kv WHERE tbl = $1 AND k = ANY($2)";
/// The write set's rows written, in one statement (arrays of the same length).
const PUT_ALL: &str = "INSERT INTO carnet_kv (tbl, k, v) \
     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
     ON CONFLICT (tbl, k) DO UPDATE SET v = excluded.v";
/// The write set's rows removed, in one statement.
const DELETE_ALL: &str = "DELETE FROM carnet_kv WHERE (tbl, k) IN \
     (SELECT * FROM unnest($1::text[], $2::bytea[]))";
const COUNT: &str = "SELECT count(*) FROM carnet_kv WHERE tbl = $1";

/// A PostgreSQL failure, as the storage error the replica handles.
fn failure(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(io::Error::other(format!("PostgreSQL: {context}: {e}")))
}

fn pg_failure(context: &str, e: tokio_postgres::Error) -> StorageError {
    let serialization = e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE);
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The client's error names the step; its sources say why (refused, timed out…).
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            message
        }
    };
    let kind = if serialization {
        io::ErrorKind::WouldBlock
    } else {
        io::ErrorKind::Other
    };
    StorageError::Io(io::Error::new(
        kind,
        format!("PostgreSQL: {context}: {message}"),
    ))
}

/// Whether `e` is a transaction PostgreSQL refused to serialise with another (SQLSTATE
/// 40001): nothing of it was kept, and running it again may succeed.
pub fn is_serialization_failure(e: &StorageError) -> bool {
    matches!(e, StorageError::Io(io) if io.kind() == io::ErrorKind::WouldBlock
        && io.to_string().starts_with("PostgreSQL"))
}

/// The thread the connections run on.
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    fn start() -> Result<Runtime> {
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("carnet-pg".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = ready.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })
            .map_err(StorageError::Io)?;
        let handle = handle
            .recv()
            .map_err(|e| failure("starting its thread", e))?
            .map_err(StorageError::Io)?;
        Ok(Runtime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: Mutex<HashMap<String, Statement>>,
}

impl Conn {
    fn statement(&self, sql: &str) -> Result<Statement> {
        let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(statement) = prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = block_on(self.client.prepare(sql)).map_err(|e| pg_failure("prepare", e))?;
        prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(
        &self,
        context: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let statement = self.statement(sql)?;
        block_on(self.client.query(&statement, params)).map_err(|e| pg_failure(context, e))
    }

    fn execute(&self, context: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.statement(sql)?;
        block_on(self.client.execute(&statement, params)).map_err(|e| pg_failure(context, e))
    }

    fn batch(&self, context: &str, sql: &str) -> Result {
        block_on(self.client.batch_execute(sql)).map_err(|e| pg_failure(context, e))
    }
}

/// What the store's handles share.
struct Shared {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    /// Whether this process's write transaction is under way, and the wait for its end.
    writing: Mutex<bool>,
    write_done: Condvar,
    /// Snapshots open, at most `readers_max`, and the wait for one to end.
    readers: Mutex<usize>,
    reader_done: Condvar,
    readers_max: usize,
    read_wait: Duration,
    // Last: the connections' thread stops once the connections are gone.
    runtime: Runtime,
}

impl Shared {
    fn connect(&self) -> Result<Conn> {
        let config = self.config.clone();
        let task = self.runtime.handle.spawn(async move {
            let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
                .await
                .map_err(|_| failure("connect", "no answer within 10 s"))?
                .map_err(|e| pg_failure("connect", e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok::<_, StorageError>(client)
        });
        let client = block_on(task).map_err(|e| failure("connect", e))??;
        Ok(Conn {
            client,
            prepared: Mutex::new(HashMap::new()),
        })
    }

    fn checkout(&self) -> Result<Conn> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) if !conn.client.is_closed() => Ok(conn),
            _ => self.connect(),
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_MAX && !conn.client.is_closed() {
            idle.push(conn);
        }
    }

    fn lock_writing(&self) -> MutexGuard<'_, bool> {
        self.writing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One of the `readers_max` snapshot places, waiting at most `read_wait` for one.
    fn reader_slot(self: &Arc<Self>) -> Result<ReaderSlot> {
        let deadline = std::time::Instant::now() + self.read_wait;
        let mut open = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        while *open >= self.readers_max {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(failure(
                    "begin",
                    format!(
                        "all {} read connections stayed busy for {} s: the host is overloaded, or reads wait on each other",
                        self.readers_max,
                        self.read_wait.as_secs()
                    ),
                ));
            }
            open = self
                .reader_done
                .wait_timeout(open, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *open += 1;
        Ok(ReaderSlot(self.clone()))
    }
}

/// A snapshot's place among the `readers_max`, given back at its drop.
struct ReaderSlot(Arc<Shared>);

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        let mut open = self
            .0
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *open = open.saturating_sub(1);
        self.0.reader_done.notify_one();
    }
}

/// A PostgreSQL database holding a replica's tables.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database of `url` (`postgres://user@host:port/db`, or libpq's
    /// `key=value` form), checks its schema and migrates an older one.
    pub fn open(url: &str) -> Result<PgStore> {
        Self::open_with(url, READERS_MAX)
    }

    /// `open`, with at most `readers_max` snapshots at once (at least one).
    pub fn open_with(url: &str, readers_max: usize) -> Result<PgStore> {
        Self::open_bounded(url, readers_max.max(1), READ_WAIT)
    }

    /// `open`, with at most `readers_max` snapshots at once, one more waiting `read_wait`.
    pub(super) fn open_bounded(
        url: &str,
        readers_max: usize,
        read_wait: Duration,
    ) -> Result<PgStore> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| failure("the storage address is not a PostgreSQL address", e))?;
        let store = PgStore {
            shared: Arc::new(Shared {
                config,
                idle: Mutex::new(Vec::new()),
                writing: Mutex::new(false),
                write_done: Condvar::new(),
                readers: Mutex::new(0),
                reader_done: Condvar::new(),
                readers_max,
                read_wait,
                runtime: Runtime::start()?,
            }),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match store.migrate() {
                Ok(()) => return Ok(store),
                // Another process creating the schema at the same time: its transaction wins,
                // this one reads what it made on the next try.
                Err(e) if tries < STARTUP_TRIES && is_retryable_at_start(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The schema's version, and the migrations it lacks.
    fn migrate(&self) -> Result {
        let conn = self.shared.checkout()?;
        conn.batch(
            "schema",
            "CREATE TABLE IF NOT EXISTS carnet_schema \
             (id smallint PRIMARY KEY, version integer NOT NULL)",
        )?;
        conn.batch("schema", "BEGIN ISOLATION LEVEL SERIALIZABLE")?;
        let migrated = (|| {
            let rows = conn.query(
                "schema",
                "SELECT version FROM carnet_schema WHERE id = 1",
                &[],
            )?;
            let version = rows.first().map(|row| row.get::<_, i32>(0)).unwrap_or(0);
            let known = MIGRATIONS.len();
            let version = usize::try_from(version).map_err(|_| failure("schema", "bad version"))?;
            if version > known {
                return Err(failure(
                    "schema",
                    format!(
                        "the database is at schema version {version}, made by a newer Carnet \
                         (this one knows {known}): upgrade this daemon"
                    ),
                ));
            }
            for sql in &MIGRATIONS[version..] {
                conn.batch("migration", sql)?;
            }
            let known = i32::try_from(known).map_err(|_| failure("schema", "bad version"))?;
            conn.execute(
                "schema",
                "INSERT INTO carnet_schema (id, version) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                &[&known],
            )?;
            conn.batch("schema", "COMMIT")
        })();
        match migrated {
            Ok(()) => {
                self.shared.give_back(conn);
                Ok(())
            }
            Err(e) => {
                // A failed rollback closes the connection: it is not given back.
                if conn.batch("schema", "ROLLBACK").is_ok() {
                    self.shared.give_back(conn);
                }
                Err(e)
            }
        }
    }

    /// A snapshot of the database.
    pub fn begin_read(&self) -> Result<PgRead> {
        let slot = self.shared.reader_slot()?;
        let conn = self.shared.checkout()?;
        // The snapshot is taken at the first statement, not at BEGIN: take it now.
        conn.batch(
            "begin",
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1",
        )?;
        let mut source = Source::new(&self.shared, conn);
        source.slot = Some(slot);
        Ok(PgRead {
            source: Arc::new(source),
        })
    }

    /// The write transaction: waits for this process's one under way to end.
    pub fn begin_write(&self) -> Result<PgWrite> {
        {
            let mut writing = self.shared.lock_writing();
            while *writing {
                writing = self
                    .shared
                    .write_done
                    .wait(writing)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *writing = true;
        }
        let permit = WritePermit {
            shared: self.shared.clone(),
        };
        let conn = self.shared.checkout()?;
        conn.batch("begin", "BEGIN ISOLATION LEVEL SERIALIZABLE")?;
        let mut source = Source::new(&self.shared, conn);
        source.rows = Some(Mutex::new(WriteSet::default()));
        Ok(PgWrite {
            source: Arc::new(source),
            _permit: permit,
        })
    }
}

/// The failures of a start-up that another process starting at the same time causes.
fn is_retryable_at_start(e: &StorageError) -> bool {
    is_serialization_failure(e)
        || matches!(e, StorageError::Io(io) if io.to_string().contains("(23505)")
            || io.to_string().contains("(42P07)"))
}

/// This process's write transaction under way; its drop lets the next one begin.
struct WritePermit {
    shared: Arc<Shared>,
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        *self.shared.lock_writing() = false;
        self.shared.write_done.notify_one();
    }
}

/// A transaction's connection, shared by its tables; rolled back at its drop unless it ended.
#[allow(missing_debug_implementations)] // holds a connection: nothing to print
pub struct Source {
    shared: Arc<Shared>,
    conn: Option<Conn>,
    ended: Mutex<bool>,
    /// A snapshot's place (`READERS_MAX`), given back after its connection.
    slot: Option<ReaderSlot>,
    /// A write transaction's rows read and written (`None` in a snapshot).
    rows: Option<Mutex<WriteSet>>,
}

impl Source {
    fn new(shared: &Arc<Shared>, conn: Conn) -> Source {
        Source {
            shared: shared.clone(),
            conn: Some(conn),
            ended: Mutex::new(false),
            slot: None,
            rows: None,
        }
    }

    fn rows(&self) -> Option<MutexGuard<'_, WriteSet>> {
        self.rows
            .as_ref()
            .map(|rows| rows.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends the rows written and not sent yet: before a statement that reads more than one
    /// key, and at the commit.
    fn flush(&self) -> Result {
        let Some(mut rows) = self.rows() else {
            return Ok(());
        };
        rows.flush(self.conn()?)
    }

    fn conn(&self) -> Result<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| failure("transaction", "already ended"))
    }

    /// Ends the transaction with `sql` (`COMMIT` or `ROLLBACK`).
    fn end(&self, sql: &str) -> Result {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        if *ended {
            return Err(failure("transaction", "already ended"));
        }
        *ended = true;
        self.conn()?.batch(&sql.to_lowercase(), sql)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let ended = *self.ended.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = self.conn.take()
            && (ended || conn.batch("rollback", "ROLLBACK").is_ok())
        {
            self.shared.give_back(conn);
        }
        drop(self.slot.take());
    }
}

/// What a write transaction knows of the rows it read and wrote, so that a row is a round
/// trip to the database at most once per transaction, and rows written without reading what
/// they replace (`PgTable::put`, `delete`) go in one statement with others.
///
/// Invariants: a row `dirty` is written here and not yet in the database; every other row
/// known holds what the database holds for this transaction (its snapshot and its own
/// writes: nothing else writes inside a transaction). The dirty rows are sent before any
/// statement that reads more than one key (ranges, counts, `retain`), and before the commit.
/// Known rows are forgotten, never wrong: the clean ones all at once when they outgrow
/// `READ_SET_MAX`.
#[derive(Default)]
struct WriteSet {
    rows: BTreeMap<(Arc<str>, Vec<u8>), Known>,
    /// Rows dirty, and the bytes of their keys and values.
    dirty: usize,
    dirty_bytes: usize,
    /// Bytes of the keys and values of the clean rows.
    clean_bytes: usize,
}

/// A row's value as this transaction sees it (`None`: no row).
struct Known {
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// The bytes a row takes here.
fn size(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

impl WriteSet {
    /// The value of `key` if this transaction knows it (`Some(None)`: known absent).
    fn known(&self, table: &Arc<str>, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.rows
            .get(&(table.clone(), key.to_vec()))
            .map(|known| known.value.clone())
    }

    /// Takes `row` out of the accounts; answers what it was.
    fn take(&mut self, row: &(Arc<str>, Vec<u8>)) -> Option<Known> {
        let old = self.rows.remove(row)?;
        let bytes = size(&row.1, &old.value);
        if old.dirty {
            self.dirty -= 1;
            self.dirty_bytes -= bytes;
        } else {
            self.clean_bytes -= bytes;
        }
        Some(old)
    }

    /// Remembers what the database answered (or now holds) for `key`.
    fn remember(&mut self, table: &Arc<str>, key: Vec<u8>, value: Option<Vec<u8>>) {
        let row = (table.clone(), key);
        if self.rows.get(&row).is_some_and(|known| known.dirty) {
            // Not sent yet: what the database answered is older than what is to be written.
            return;
        }
        self.take(&row);
        let bytes = size(&row.1, &value);
        if bytes > REMEMBER_MAX {
            return;
        }
        self.rows.insert(
            row,
            Known {
                value,
                dirty: false,
            },
        );
        self.clean_bytes += bytes;
        if self.clean_bytes > READ_SET_MAX {
            self.forget_clean();
        }
    }

    fn forget_clean(&mut self) {
        self.rows.retain(|_, known| known.dirty);
        self.clean_bytes = 0;
    }

    /// Writes `value` at `key` (`None` removes it) here; sends the dirty rows once they
    /// outgrow `WRITE_SET_MAX`.
    fn stage(
        &mut self,
        table: &Arc<str>,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        conn: &Conn,
    ) -> Result {
        let row = (table.clone(), key);
        self.take(&row);
        self.dirty += 1;
        self.dirty_bytes += size(&row.1, &value);
        self.rows.insert(row, Known { value, dirty: true });
        if self.dirty_bytes > WRITE_SET_MAX {
            self.flush(conn)?;
        }
        Ok(())
    }

    /// Sends the dirty rows: one statement for those written, one for those removed. Rows
    /// larger than `REMEMBER_MAX` are forgotten once sent.
    fn flush(&mut self, conn: &Conn) -> Result {
        if self.dirty == 0 {
            return Ok(());
        }
        let (mut put_tables, mut put_keys, mut put_values) = (Vec::new(), Vec::new(), Vec::new());
        let (mut gone_tables, mut gone_keys) = (Vec::new(), Vec::new());
        for ((table, key), known) in &self.rows {
            match (&known.value, known.dirty) {
                (_, false) => {}
                (Some(value), true) => {
                    put_tables.push(&**table);
                    put_keys.push(key.as_slice());
                    put_values.push(value.as_slice());
                }
                (None, true) => {
                    gone_tables.push(&**table);
                    gone_keys.push(key.as_slice());
                }
            }
        }
        if !put_keys.is_empty() {
            conn.execute("write", PUT_ALL, &[&put_tables, &put_keys, &put_values])?;
        }
        if !gone_keys.is_empty() {
            conn.execute("write", DELETE_ALL, &[&gone_tables, &gone_keys])?;
        }
        let mut clean_bytes = self.clean_bytes;
        self.rows.retain(|(_, key), known| {
            if !known.dirty {
                return true;
            }
            known.dirty = false;
            let bytes = size(key, &known.value);
            clean_bytes += bytes;
            bytes <= REMEMBER_MAX || {
                clean_bytes -= bytes;
                false
            }
        });
        self.dirty = 0;
        self.dirty_bytes = 0;
        self.clean_bytes = clean_bytes;
        if self.clean_bytes > READ_SET_MAX {
            self.forget_clean();
        }
        Ok(())
    }
}

/// A read snapshot (`REPEATABLE READ READ ONLY`).
#[allow(missing_debug_implementations)] // holds a connection: nothing to print
pub struct PgRead {
    source: Arc<Source>,
}

impl PgRead {
    pub(super) fn source(&self) -> Arc<Source> {
        self.source.clone()
    }
}

/// The write transaction (`SERIALIZABLE`).
#[allow(missing_debug_implementations)] // holds a connection: nothing to print
pub struct PgWrite {
    source: Arc<Source>,
    _permit: WritePermit,
}

impl PgWrite {
    pub(super) fn source(&self) -> Arc<Source> {
        self.source.clone()
    }

    /// Commits: a serialisation failure (`is_serialization_failure`) keeps nothing.
    pub fn commit(self) -> Result {
        self.source.flush()?;
        self.source.end("COMMIT")
    }

    /// Rolls back.
    pub fn abort(self) -> Result {
        self.source.end("ROLLBACK")
    }
}

/// One table of a transaction.
#[allow(missing_debug_implementations)] // holds a connection: nothing to print
pub struct PgTable<'t, K, V> {
    source: Arc<Source>,
    name: Arc<str>,
    _types: Types<'t, K, V>,
}

impl<'t, K: Ordered, V: Value + 'static> PgTable<'t, K, V> {
    pub(super) fn new(source: Arc<Source>, name: &str) -> Self {
        PgTable {
            source,
            name: name.into(),
            _types: PhantomData,
        }
    }

    /// The table's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        if let Some(known) = self
            .source
            .rows()
            .and_then(|rows| rows.known(&self.name, &key))
        {
            return Ok(known);
        }
        let rows = self
            .source
            .conn()?
            .query("get", GET, &[&&*self.name, &key])?;
        let value: Option<Vec<u8>> = rows.first().map(|row| row.get(0));
        if let Some(mut rows) = self.source.rows() {
            rows.remember(&self.name, key, value.clone());
        }
        Ok(value)
    }

    /// Reads `keys` in one statement into the write transaction's known rows (those it knows
    /// already are not read again); nothing in a snapshot.
    pub(super) fn prefetch(&self, keys: Vec<Vec<u8>>) -> Result {
        let mut keys: Vec<Vec<u8>> = match self.source.rows() {
            Some(rows) => keys
                .into_iter()
                .filter(|key| rows.known(&self.name, key).is_none())
                .collect(),
            None => return Ok(()),
        };
        // Each key once: a second copy would find its row taken and be remembered absent.
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        let found = self
            .source
            .conn()?
            .query("prefetch", GET_MANY, &[&&*self.name, &keys])?;
        let mut found: HashMap<Vec<u8>, Vec<u8>> = found
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        if let Some(mut rows) = self.source.rows() {
            for key in keys {
                let value = found.remove(&key);
                rows.remember(&self.name, key, value);
            }
        }
        Ok(())
    }

    pub(super) fn insert(&mut self, key: Vec<u8>, value: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(mut rows) = self.source.rows()
            && let Some(old) = rows.known(&self.name, &key)
        {
            rows.stage(&self.name, key, Some(value.to_vec()), self.source.conn()?)?;
            return Ok(old);
        }
        let rows = self
            .source
            .conn()?
            .query("insert", PUT, &[&&*self.name, &key, &value])?;
        let old = rows.first().map(|row| row.get(0));
        if let Some(mut rows) = self.source.rows() {
            rows.remember(&self.name, key, Some(value.to_vec()));
        }
        Ok(old)
    }

    /// Writes `value` at `key` without reading what it replaces: in a write transaction, kept
    /// in its write set and sent with others.
    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result {
        match self.source.rows() {
            Some(mut rows) => rows.stage(&self.name, key, Some(value), self.source.conn()?),
            None => Err(failure("insert", "a read snapshot does not write")),
        }
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        if let Some(mut rows) = self.source.rows()
            && let Some(old) = rows.known(&self.name, &key)
        {
            rows.stage(&self.name, key, None, self.source.conn()?)?;
            return Ok(old);
        }
        let rows = self
            .source
            .conn()?
            .query("remove", DELETE, &[&&*self.name, &key])?;
        let old = rows.first().map(|row| row.get(0));
        if let Some(mut rows) = self.source.rows() {
            rows.remember(&self.name, key, None);
        }
        Ok(old)
    }

    /// Removes `key` without reading what it held (see `put`).
    pub(super) fn delete(&mut self, key: Vec<u8>) -> Result {
        match self.source.rows() {
            Some(mut rows) => rows.stage(&self.name, key, None, self.source.conn()?),
            None => Err(failure("remove", "a read snapshot does not write")),
        }
    }

    pub(super) fn len(&self) -> Result<u64> {
        self.source.flush()?;
        let rows = self.source.conn()?.query("count", COUNT, &[&&*self.name])?;
        let count: i64 = rows.first().map(|row| row.get(0)).unwrap_or(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub(super) fn end<'r>(&self, last: bool) -> Result<Option<Entry<'r, K, V>>> {
        let rows = page(
            &self.source,
            &self.name,
            &(Bound::Unbounded, Bound::Unbounded),
            last,
            1,
        )?;
        rows.into_iter()
            .next()
            .map(|row| entry::<K, V>(&self.name, row))
            .transpose()
    }

    pub(super) fn range<'r>(&self, bounds: Bounds) -> PgRange<'r, K, V> {
        PgRange {
            source: self.source.clone(),
            name: self.name.clone(),
            bounds,
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
            _types: PhantomData,
        }
    }

    pub(super) fn retain_in<F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool>(
        &mut self,
        bounds: Bounds,
        mut predicate: F,
    ) -> Result {
        let mut bounds = bounds;
        loop {
            let rows = page(&self.source, &self.name, &bounds, false, PAGE)?;
            let Some((last, _)) = rows.last() else {
                return Ok(());
            };
            bounds.0 = Bound::Excluded(last.clone());
            let mut doomed: Vec<Vec<u8>> = Vec::new();
            for (k, v) in rows {
                let (key, value) = entry::<K, V>(&self.name, (k.clone(), v))?;
                if !predicate(key.value(), value.value()) {
                    doomed.push(k);
                }
            }
            if !doomed.is_empty() {
                self.source
                    .conn()?
                    .execute("retain", DELETE_MANY, &[&&*self.name, &doomed])?;
                if let Some(mut rows) = self.source.rows() {
                    for key in doomed {
                        rows.remember(&self.name, key, None);
                    }
                }
            }
        }
    }
}

/// A row as the replica reads it: the key back in redb's encoding (a row that is not of the
/// table's types is an error, never a panic).
fn entry<'a, K: Ordered, V: Value + 'static>(
    table: &str,
    (k, v): (Vec<u8>, Vec<u8>),
) -> Result<Entry<'a, K, V>> {
    Ok((
        AccessGuard::owned(K::stored(&k), table)?,
        AccessGuard::owned(v, table)?,
    ))
}

/// Up to `limit` rows of `bounds`, from the smallest key (or from the largest, `descending`).
fn page(
    source: &Source,
    name: &str,
    bounds: &Bounds,
    descending: bool,
    limit: i64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    // The rows written and not sent yet are in the database before it is read in key order.
    source.flush()?;
    let mut sql = String::from("SELECT k, v FROM carnet_kv WHERE tbl = $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&name];
    let lower = match &bounds.0 {
        Bound::Included(key) => Some((">=", key)),
        Bound::Excluded(key) => Some((">", key)),
        Bound::Unbounded => None,
    };
    let upper = match &bounds.1 {
        Bound::Included(key) => Some(("<=", key)),
        Bound::Excluded(key) => Some(("<", key)),
        Bound::Unbounded => None,
    };
    for (op, key) in lower.iter().chain(upper.iter()) {
        params.push(*key);
        sql.push_str(&format!(" AND k {op} ${}", params.len()));
    }
    params.push(&limit);
    sql.push_str(&format!(
        " ORDER BY k {} LIMIT ${}",
        if descending { "DESC" } else { "ASC" },
        params.len()
    ));
    let rows = source.conn()?.query("range", &sql, &params)?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// The rows of a range, fetched a page at a time from either end. The keys not fetched yet
/// are those inside `bounds`; `front` holds fetched rows ascending, `back` descending.
#[allow(missing_debug_implementations)] // holds a connection: nothing to print
pub struct PgRange<'a, K, V> {
    source: Arc<Source>,
    name: Arc<str>,
    bounds: Bounds,
    front: VecDeque<(Vec<u8>, Vec<u8>)>,
    back: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// No key is left inside `bounds` (or a fetch failed).
    exhausted: bool,
    _types: Types<'a, K, V>,
}

impl<K, V> PgRange<'_, K, V> {
    /// Fetches the next page from the front (or the back); false once nothing is left.
    fn fetch(&mut self, from_back: bool) -> Result<bool> {
        if self.exhausted {
            return Ok(false);
        }
        let rows = match page(&self.source, &self.name, &self.bounds, from_back, PAGE) {
            Ok(rows) => rows,
            Err(e) => {
                self.exhausted = true;
                return Err(e);
            }
        };
        let Some((edge, _)) = rows.last() else {
            self.exhausted = true;
            return Ok(false);
        };
        if from_back {
            self.bounds.1 = Bound::Excluded(edge.clone());
            self.back.extend(rows);
        } else {
            self.bounds.0 = Bound::Excluded(edge.clone());
            self.front.extend(rows);
        }
        Ok(true)
    }
}

impl<'a, K: Ordered, V: Value + 'static> Iterator for PgRange<'a, K, V> {
    type Item = Result<Entry<'a, K, V>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty()
            && let Err(e) = self.fetch(false)
        {
            return Some(Err(e));
        }
        let row = self.front.pop_front().or_else(|| self.back.pop_back())?;
        Some(entry::<K, V>(&self.name, row))
    }
}

impl<K: Ordered, V: Value + 'static> DoubleEndedIterator for PgRange<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty()
            && let Err(e) = self.fetch(true)
        {
            return Some(Err(e));
        }
        let row = self.back.pop_front().or_else(|| self.front.pop_back())?;
        Some(entry::<K, V>(&self.name, row))
    }
}
