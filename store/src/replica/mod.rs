//! The replica: one redb file holding a site's (or the host's) encrypted copy of the dossiers
//! it serves, their traces, and the queue of local changes for the host.
//!
//! Invariants:
//! - One write transaction per logical change: the sealed document, its version vector, its
//!   outbox entry and its trace entry commit together or not at all.
//! - An audited read returns data only after its trace entry is durable (group commit into the
//!   trace journal, see `journal`).
//! - Lock order: the trace chain, then the redb write transaction (`Writer`).
//! - Every access decision, allowed or denied, is traced.
//! - Nothing in the file is patient data in clear (see `tables`).
//! - The stored format version is checked on open; a newer or older one is refused.
//!
//! Submodules: `tables` (layout), `documents` (document actions), `authority_ops` (host
//! records, import/export, closure and purge), `sync` (outbox and `apply_remote`), `cache`
//! (decoded registry rows), `journal` (the trace journal).

mod announcements;
mod authority_ops;
mod backend;
pub mod backup;
mod bodies;
mod cache;
mod changes;
mod conflicts;
pub mod daemons;
pub mod doc_map;
mod documents;
mod dossier_reads;
mod emergencies;
mod emergency_fetch;
mod grants;
mod handover;
mod high_water;
mod host_sync;
mod journal;
mod local_dossiers;
mod notifications;
mod pending_grants;
mod push_check;
mod quarantine;
pub mod refusal;
mod refused_certificates;
pub mod rekey;
mod representatives;
mod restored;
mod returns;
mod roles;
mod row_digest;
mod site_access;
mod site_traces;
mod site_view;
mod sync;
pub mod tables;
/// A read snapshot of the replica's tables; while it lives, the body segments it may name
/// are kept (`segments::Reader`), even once a compaction has moved their records.
pub(crate) struct Snapshot {
    txn: ReadTransaction,
    _reader: Option<crate::segments::Reader>,
}

impl Snapshot {
    /// A snapshot registered as no reader of segments (tests of the read view).
    #[cfg(test)]
    pub(crate) fn bare(txn: ReadTransaction) -> Snapshot {
        Snapshot { txn, _reader: None }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = ReadTransaction;

    fn deref(&self) -> &ReadTransaction {
        &self.txn
    }
}

#[cfg(test)]
mod tests;
mod view;
mod withdrawal;
mod withheld;

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::kv::{Database, ReadTransaction, ReadableTable, WriteTransaction};
use crate::segments::{SegmentFiles, Segments};
use ed25519_dalek::{SigningKey, VerifyingKey};
use redb::StorageBackend;

use serde::{Deserialize, Serialize};
pub use sync::LinkPath;
pub use tables::PurgeReceipt;
use zeroize::Zeroizing;

pub use announcements::AnnouncementPass;
pub use authority_ops::{DossierInfo, ImportReport, Lease, NewDossier};
pub use backend::Durable;
pub use changes::{ChangeEntry, Changed, ChangesPage, MAX_CHANGES};
pub use conflicts::{Branch, Conflict};
pub use documents::{DossierExport, ExportedDocument, NewDocument, ReadOutcome};
pub use dossier_reads::Reader;
pub use emergencies::{Emergency, Review};
pub use emergency_fetch::EMERGENCY_VALID;
pub use handover::{
    ASK_CARE_WINDOW, HANDOVER_FORMAT, HANDOVER_REASON_MAX, Handover, HandoverReport,
};
pub use high_water::{HIGH_WATER_ENV, check_high_water_from_env, reset_high_water_from_env};
pub use host_sync::{PullItem, PullPage, PullReport};
pub use local_dossiers::{LocalDossierState, Proposal};
pub use notifications::{Notification, NotificationKind, Recipient};
pub use quarantine::{QuarantineEntry, QuarantineState, Quarantined, Refiling};
pub use representatives::NewRepresentative;
pub use restored::RestoreMark;
pub use returns::{REASON_MAX, Returned};
pub use roles::{
    Host, HostAuthority, HostOversight, HostReplica, HostSync, Opened, Site, SiteLocal,
    SiteReplica, SiteSync,
};
pub use site_access::{RequestKind, SiteRequest};
pub use site_traces::{SignedTraceHead, TraceHeadEvidence};
pub use sync::{Act, Applied, BodyPiece, Change, PushApplied};
pub use withheld::HeldChange;

use crate::audit::{AuditEntry, ChainedEntry, GroupCommit, TraceAction, TraceActor};
use crate::authority::{AuthorityRecord, Verified};
use crate::crypto::{KdfCost, Key, aad};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, SiteId};
use crate::model::{AccessMode, Actor, HabilitationMatrix, Professional};
use crate::policy::Who;
use crate::time::Millis;
use journal::{JournalRecord, SealedEpoch, TraceChain};
use tables::*;

/// File name of the database inside the data folder.
pub const DB_FILE: &str = "carnet.redb";
/// The database's page cache unless `carnet.toml` says otherwise (`cache_mib`), in MiB: what
/// the replica keeps of its file in memory, so its memory does not grow with what it stores.
pub const DEFAULT_CACHE_MIB: usize = 64;
/// Where a replica's tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `carnet.redb` in the data folder (every site; the host by default).
    File,
    /// A PostgreSQL database (`[host] storage` in `carnet.toml`): the host only. The data
    /// folder keeps the key, the trace journal and `POSTGRES_MARK`.
    Postgres(Postgres),
}

impl Storage {
    /// The PostgreSQL database at `url`, with the default bound on read connections.
    pub fn postgres(url: impl Into<String>) -> Storage {
        Storage::Postgres(Postgres {
            url: url.into(),
            read_connections: crate::kv::pg::READERS_MAX,
        })
    }
}

/// A PostgreSQL database holding the host's tables, and how much of it this process may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    /// `postgres://user@host:port/db` (may carry a password: never said in an error).
    pub url: String,
    /// Snapshots this process keeps open at once, each on a connection of its own
    /// (`[host] read_connections`; the write transaction takes one more).
    pub read_connections: usize,
}

/// Tests only: `postgres` makes the test suites' hosts keep their tables in PostgreSQL (the
/// suites' second run in `.ci/run`); anything else, or unset, in their folder.
pub const HOST_STORAGE_ENV: &str = "CARNET_TEST_HOST_STORAGE";

/// File in the data folder of a host whose tables are in PostgreSQL: says so to whoever opens
/// the folder without the database's address, instead of "no replica here".
pub const POSTGRES_MARK: &str = "carnet.postgres";

/// Writes `POSTGRES_MARK` into `dir`.
fn write_postgres_mark(dir: &Path) -> Result<()> {
    crate::files::write_private(
        &dir.join(POSTGRES_MARK),
        b"This host's tables are in PostgreSQL: its address is [host] storage in carnet.toml.\n",
    )?;
    Ok(())
}

/// File name of the master key inside the data folder (mode 0600).
pub const KEY_FILE: &str = "master.key";
/// The files a replica keeps in its data folder.
pub const DATA_FILES: [&str; 3] = [DB_FILE, KEY_FILE, journal::JOURNAL_FILE];

/// Removes the files of `fresh` that exist now: what a failed creation wrote (they did not
/// exist before it), so that it leaves nothing that blocks the next attempt. Best effort: the
/// caller reports the failure that brought it here.
pub fn remove_created(fresh: &[std::path::PathBuf]) {
    for path in fresh.iter().filter(|p| p.exists()) {
        let _ = std::fs::remove_file(path);
    }
}
const KEY_FILE_NEW: &str = "master.key.new";
const KEY_CHECK: &[u8] = b"carnet master key check";
/// Associated data of the key check of a replica whose `meta` table is authenticated
/// (`STATE_MAC`); a check sealed under the older `b"check"` marks a replica made before, which
/// gets its authentication at its next open.
const CHECK_STATE: &[u8] = b"check-state";
/// The `meta` row holding the keyed hash of every other `meta` row (`state_mac`).
const STATE_MAC: &str = "state_mac";
/// Associated data of the trace chain key wrapped in `meta` (`meta_key::CHAIN_KEY`).
const CHAIN_KEY_AAD: &[u8] = b"chain";

/// The replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The national host: authoritative for dossiers, grants and closures.
    Host,
    /// A clinic, pharmacy or mobile unit.
    Site,
}

impl Role {
    /// `host` or `site`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Site => "site",
        }
    }
}

/// Settings fixed at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaConfig {
    /// Host or site.
    pub role: Role,
    /// Site id (host = 0).
    pub site_id: SiteId,
    /// Human name of the site.
    pub name: String,
    /// Creation time.
    pub created_at: Millis,
    /// How long a site may make normal reads from its authority cache without news from the
    /// host (DOMAIN §5); `None` on the host.
    pub lease_ms: Option<Millis>,
}

/// Where the master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The key file `master.key` in the data folder (created by `init`, mode 0600).
    File,
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum KeyKind {
    File,
    /// Made before the Argon2id cost was stored: `KdfCost::LEGACY`.
    Passphrase {
        salt: [u8; 16],
    },
    /// A passphrase stretched at `cost` (new ones at `KdfCost::RECOMMENDED`).
    PassphraseAt {
        salt: [u8; 16],
        cost: KdfCost,
    },
}

impl KeyKind {
    /// A fresh salt, and the master key `passphrase` gives with it at today's cost.
    fn new_passphrase(passphrase: &str) -> Result<(Key, KeyKind)> {
        let mut salt = [0u8; 16];
        crate::crypto::random_bytes(&mut salt)?;
        let cost = KdfCost::RECOMMENDED;
        Ok((
            Key::from_passphrase(passphrase, &salt, cost)?,
            KeyKind::PassphraseAt { salt, cost },
        ))
    }
}

/// Replica keys wrapped by the master key; rotation re-wraps them and the dossier keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Keyring {
    kind: KeyKind,
    #[serde(with = "serde_bytes")]
    check: Vec<u8>,
    #[serde(with = "serde_bytes")]
    index: Vec<u8>,
    #[serde(with = "serde_bytes")]
    registry: Vec<u8>,
    #[serde(with = "serde_bytes")]
    audit: Vec<u8>,
    /// Host only: the Ed25519 signing key, wrapped.
    signing: Option<serde_bytes::ByteBuf>,
    /// The host's public key this replica trusts.
    host_key: Option<[u8; 32]>,
}

struct Keys {
    /// Behind a lock so a running daemon can rotate it. Lock order: a redb write transaction
    /// first, then this lock.
    master: RwLock<MasterKeys>,
    index: Key,
    /// How document ids are stored in the tables (derived from `index`, see `doc_map`).
    docs: doc_map::DocMap,
    registry: Key,
    audit: Key,
    /// Keys the trace chain hashes: derived from `audit`, or after a full rotation
    /// (`rekey`) its own key, wrapped in `meta` (`CHAIN_KEY`), since the host holds it.
    chain: Key,
    /// Keys `STATE_MAC`, the hash that authenticates the `meta` table (derived from
    /// `registry`).
    state: Key,
    /// Keys the row digests of the guarded tables (`row_digest`, derived from `registry`).
    rows: Key,
}

/// The master key, and the one it replaced while this process runs: a read snapshot taken
/// before a rotation committed still holds data keys wrapped under the previous key.
struct MasterKeys {
    current: Key,
    previous: Option<Key>,
}

impl MasterKeys {
    fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<Key> {
        match (self.current.unwrap_key(aad, wrapped), &self.previous) {
            (Err(_), Some(previous)) => previous.unwrap_key(aad, wrapped),
            (result, _) => result,
        }
    }
}

/// Options for `Replica::init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Host or site.
    pub role: Role,
    /// Human name.
    pub name: String,
    /// Site id; `None` draws a random non-zero id for a site, 0 for the host.
    pub site_id: Option<SiteId>,
    /// Where the master key comes from.
    pub key: KeySource,
    /// For a site: the host's public key to trust (else pinned at the first authority import).
    pub host_key: Option<[u8; 32]>,
    /// For a site: the lease in hours (`DEFAULT_LEASE_HOURS` when absent).
    pub lease_hours: Option<u32>,
}

/// The prefix of the unique id a document gets when its producer gave none.
const OWN_UNIQUE_ID: &str = "urn:carnet:";

/// True when `unique_id` is the one `id` gets when its producer gave none (such ids are not
/// indexed: see `Replica::unique_owner`).
fn is_own_unique_id(id: &DocId, unique_id: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    unique_id.strip_prefix(OWN_UNIQUE_ID).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .as_bytes()
                .chunks(2)
                .zip(id.0)
                .all(|(pair, b)| pair == [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
    })
}

/// DOMAIN §5's default lease: 72 hours.
pub const DEFAULT_LEASE_HOURS: u32 = 72;

/// How far the clock moves before a commit records it (`meta_key::CLOCK_SEEN`), in ms.
const CLOCK_STEP: u64 = 60_000;

/// Counters read from one snapshot: they key the registry cache and stamp traces.
#[derive(Debug, Clone, Copy)]
struct Generation {
    /// Bumped by every registry change (see `cache`).
    registry: u64,
    /// Highest host record sequence admitted.
    authority_version: u64,
    /// Time of the latest host heartbeat verified.
    authority_as_of: Millis,
    /// The latest local time a commit saw (`meta_key::CLOCK_SEEN`).
    clock_seen: Millis,
}

/// A source of the current time, injected so tests and simulations control it.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    })
}

/// An open replica. Cheap to share across threads (`&Replica` is `Sync`).
pub struct Replica {
    /// The local trace chain and its journal; always locked before a redb write transaction.
    chain: Mutex<TraceChain>,
    /// Which of the host's daemons this process is (`daemons`): its chain is its own.
    daemon: daemons::Daemon,
    db: Database,
    /// The segment files holding body chunks (`bodies`): a replica in its redb file (or on a
    /// simulated disk given segments) only.
    segments: Option<Arc<Segments>>,
    /// Waits for the syncs that commits inside `deferring_syncs` left to finish behind them.
    durability: backend::Durability,
    dir: PathBuf,
    config: ReplicaConfig,
    keys: Keys,
    signing: Option<SigningKey>,
    host_key: RwLock<Option<VerifyingKey>>,
    matrix: RwLock<Arc<HabilitationMatrix>>,
    /// The site certificates the host refuses, as last admitted (`refused_certificates`).
    refused_certificates: RwLock<Arc<crate::authority::RefusedCertificates>>,
    clock: Clock,
    audit_commit: GroupCommit<PreparedTrace>,
    /// The thread moving sealed journal epochs into redb, while `run_trace_committer` runs.
    mover: Mutex<Option<std::thread::Thread>>,
    cache: cache::RegistryCache,
    /// The snapshot concurrent audited reads share until the next write commits.
    view: view::SharedView,
    /// Set once `meta` was found intact at open (`check_state`); until then no commit is made.
    state_verified: AtomicBool,
    /// Restored from a backup and not caught up with the host yet (`restored`): no trace entry
    /// is prepared, so nothing is recorded or read.
    restoring: AtomicBool,
    /// What the write transaction under way changed in the guarded tables (`row_digest`).
    pending_digests: row_digest::PendingDigests,
    /// The change feed's entries the write transaction under way staged (`changes`), with
    /// their dossier's blind index.
    pending_changes: Mutex<Vec<(Option<[u8; 32]>, changes::Changed)>>,
    /// The latest change sequence this process committed (`Replica::change_watch`).
    change_seq: tokio::sync::watch::Sender<u64>,
    /// How many entries the feed keeps (`changes::MAX_CHANGES`).
    change_cap: std::sync::atomic::AtomicU64,
    /// What `open` tightened in a data folder others could read (`files::tighten_folder`).
    folder_fixes: Vec<String>,
    /// The high-water mark checked at open, kept up with the trace head while running and
    /// raised again at a clean close (`high_water`).
    high_water: Mutex<Option<high_water::MarkState>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock_err<T>(_: T) -> Error {
    Error::Storage("internal lock poisoned".into())
}

fn read_u64(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn write_key_file(path: &Path, key: &Key) -> Result<()> {
    let mut f = crate::files::open_private(path, true)?;
    f.set_len(0)?;
    let hex: Zeroizing<String> =
        Zeroizing::new(key.expose().iter().map(|b| format!("{b:02x}")).collect());
    f.write_all(hex.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// The most a key file holds: 64 hex digits, a line end, and room for stray spaces.
const KEY_FILE_MAX: u64 = 256;

fn read_key_file(path: &Path) -> Result<Key> {
    let bytes = Zeroizing::new(crate::files::read_bounded(path, KEY_FILE_MAX).map_err(|e| {
        Error::Key(format!(
            "cannot read the key file {}: {e} (restore it from your backup, or set CARNET_PASSPHRASE if this replica uses a passphrase)",
            path.display()
        ))
    })?);
    let bad = || Error::Key(format!("the key file {} is malformed", path.display()));
    let t = std::str::from_utf8(&bytes).map_err(|_| bad())?.trim();
    if t.len() != 64 {
        return Err(bad());
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(t.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Key::from_bytes(raw.as_ref())
}

fn sync_dir(dir: &Path) {
    // Best effort: makes a rename durable on file systems that need it.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Replica {
    /// Creates a new replica in `dir` (created if missing). Fails if one exists there; a
    /// creation that fails midway (a full disk) removes the files it wrote.
    pub fn init(dir: &Path, opts: InitOptions, clock: Clock) -> Result<Replica> {
        let fresh: Vec<std::path::PathBuf> = DATA_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| !p.exists())
            .collect();
        Self::create(dir, Place::File, opts, clock).inspect_err(|_| remove_created(&fresh))
    }

    /// The refusal of an `init` into a PostgreSQL database that holds a replica already.
    fn database_occupied() -> Error {
        Error::invalid(
            "a replica already exists in this PostgreSQL database: give the new host an empty \
             database, or add this daemon to that host with --join (and its master.key); an \
             init cut short leaves its rows there: drop and create the database before trying \
             again",
        )
    }

    /// `init` with the tables on `storage`: PostgreSQL is for the host only, and its database
    /// must hold no replica yet.
    pub fn init_on(
        dir: &Path,
        storage: &Storage,
        opts: InitOptions,
        clock: Clock,
    ) -> Result<Replica> {
        let Storage::Postgres(pg) = storage else {
            return Self::init(dir, opts, clock);
        };
        if opts.role != Role::Host {
            return Err(Error::invalid(
                "a site keeps its replica in its own file: PostgreSQL storage is for the host",
            ));
        }
        let fresh: Vec<std::path::PathBuf> = [KEY_FILE, journal::JOURNAL_FILE, POSTGRES_MARK]
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| !p.exists())
            .collect();
        Self::create(dir, Place::Postgres(pg), opts, clock).inspect_err(|_| remove_created(&fresh))
    }

    /// `init` with the database on `backend` and the trace journal on `journal` (simulated
    /// disks: `carnet-sim`) instead of `carnet.redb` and `trace.journal`; the key file is still
    /// a file in `dir`; body chunks in `BODIES` rows. Fails if `backend` holds anything
    /// already. Each handle `backend` and `journal` clone to must reach the same storage.
    pub fn init_with_backend<B: StorageBackend + Clone>(
        dir: &Path,
        backend: B,
        journal: B,
        opts: InitOptions,
        clock: Clock,
    ) -> Result<Replica> {
        let handle =
            || -> Backends { (Box::new(backend.clone()), Box::new(journal.clone()), None) };
        Self::create_on_backends(dir, &handle, opts, clock)
    }

    /// `init_with_backend` with the body chunks in segments on `segments` (the simulator's
    /// folder), as a replica in its file keeps them; each clone of `segments` must reach the
    /// same files.
    pub fn init_with_backends<B: StorageBackend + Clone, S: SegmentFiles + Clone + 'static>(
        dir: &Path,
        backend: B,
        journal: B,
        segments: S,
        opts: InitOptions,
        clock: Clock,
    ) -> Result<Replica> {
        let handle = || -> Backends {
            (
                Box::new(backend.clone()),
                Box::new(journal.clone()),
                Some(Box::new(segments.clone())),
            )
        };
        Self::create_on_backends(dir, &handle, opts, clock)
    }

    /// `create` on the backends `handle` gives; what it made in `dir` goes if it fails.
    fn create_on_backends(
        dir: &Path,
        handle: &dyn Fn() -> Backends,
        opts: InitOptions,
        clock: Clock,
    ) -> Result<Replica> {
        let fresh: Vec<std::path::PathBuf> = [KEY_FILE, journal::JOURNAL_FILE]
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| !p.exists())
            .collect();
        Self::create(dir, Place::Backend(handle), opts, clock)
            .inspect_err(|_| remove_created(&fresh))
    }

    /// Creates the replica in `place` (with `Place::Backend`, its database and journal on new
    /// handles each time they are needed).
    fn create(dir: &Path, place: Place<'_>, opts: InitOptions, clock: Clock) -> Result<Replica> {
        // Check every input before anything is written.
        if let Some(k) = &opts.host_key {
            VerifyingKey::from_bytes(k).map_err(|_| {
                Error::invalid("--host-key is not an Ed25519 public key: copy the host key that `carnet authority key` prints on the host")
            })?;
        }
        if opts.role == Role::Host && opts.lease_hours.is_some() {
            return Err(Error::invalid("the lease is a site setting"));
        }
        if opts.lease_hours == Some(0) {
            return Err(Error::invalid("the lease must be at least one hour"));
        }
        if opts.role == Role::Site && opts.site_id == Some(SiteId::HOST) {
            return Err(Error::invalid("site id 0 is the host's"));
        }
        if let KeySource::Passphrase(p) = &opts.key
            && p.is_empty()
        {
            return Err(Error::Key("the passphrase is empty".into()));
        }
        // The data folder is the owner's only (0700); every file in it is 0600.
        crate::files::private_dir(dir)?;
        let db_path = dir.join(DB_FILE);
        let occupied = match place {
            Place::Backend(handle) => handle().0.len()? > 0,
            Place::File => db_path.exists(),
            Place::Postgres(pg) => {
                let db = Database::Pg(crate::kv::pg::PgStore::open(&pg.url)?);
                let txn = db.begin_read()?;
                if !crate::kv::ReadableTableMetadata::is_empty(&txn.open_table(META)?)? {
                    return Err(Self::database_occupied());
                }
                false
            }
        };
        if occupied {
            return Err(Error::invalid(format!(
                "a replica already exists in {}: use another --data folder",
                dir.display()
            )));
        }
        let (master, kind) = match &opts.key {
            KeySource::File => {
                let key = Key::random()?;
                write_key_file(&dir.join(KEY_FILE), &key)?;
                (key, KeyKind::File)
            }
            KeySource::Passphrase(p) => KeyKind::new_passphrase(p)?,
        };
        let site_id = match (opts.role, opts.site_id) {
            (Role::Host, _) => SiteId::HOST,
            (Role::Site, Some(id)) => id,
            (Role::Site, None) => {
                let mut b = [0u8; 4];
                crate::crypto::random_bytes(&mut b)?;
                SiteId(u32::from_le_bytes(b).max(1))
            }
        };
        let (index, registry, audit) = (Key::random()?, Key::random()?, Key::random()?);
        let signing = match opts.role {
            Role::Host => {
                let mut seed = Zeroizing::new([0u8; 32]);
                crate::crypto::random_bytes(seed.as_mut())?;
                Some(SigningKey::from_bytes(&seed))
            }
            Role::Site => None,
        };
        let host_key = match &signing {
            Some(s) => Some(s.verifying_key().to_bytes()),
            None => opts.host_key,
        };
        let keyring = Keyring {
            kind,
            check: master.seal(CHECK_STATE, KEY_CHECK)?,
            index: master.wrap(b"index", &index)?,
            registry: master.wrap(b"registry", &registry)?,
            audit: master.wrap(b"audit", &audit)?,
            signing: match &signing {
                Some(s) => Some(serde_bytes::ByteBuf::from(
                    master.wrap(b"signing", &Key::from_bytes(&s.to_bytes())?)?,
                )),
                None => None,
            },
            host_key,
        };
        let config = ReplicaConfig {
            role: opts.role,
            site_id,
            name: opts.name,
            created_at: clock(),
            lease_ms: match opts.role {
                Role::Host => None,
                Role::Site => {
                    Some(i64::from(opts.lease_hours.unwrap_or(DEFAULT_LEASE_HOURS)) * 3_600_000)
                }
            },
        };
        let store = match place {
            Place::Backend(handle) => DbStore::Backend(handle().0),
            Place::File => DbStore::File(db_path.clone()),
            Place::Postgres(pg) => {
                write_postgres_mark(dir)?;
                DbStore::Postgres(pg.clone())
            }
        };
        let (db, _) = open_database(store, true, DEFAULT_CACHE_MIB)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            // Checked again in the transaction that writes it: of two `init`s into one empty
            // PostgreSQL database at once, the second finds the first's rows, or collides with
            // them and is refused whole.
            if !crate::kv::ReadableTableMetadata::is_empty(&meta)? {
                return Err(Self::database_occupied());
            }
            meta.insert(meta_key::FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
            meta.insert(meta_key::CONFIG, postcard::to_stdvec(&config)?.as_slice())?;
            meta.insert(meta_key::KEYRING, postcard::to_stdvec(&keyring)?.as_slice())?;
            // Every guarded table is empty: its digest is zero (`row_digest`).
            meta.insert(meta_key::ROW_DIGESTS, [1u8].as_slice())?;
            let mac = state_mac(&state_key(&registry), &meta)?;
            meta.insert(STATE_MAC, mac.as_slice())?;
            // Create every table so read transactions never meet a missing one.
            txn.open_table(AUTHORITY)?;
            txn.open_table(DOSSIER_KEYS)?;
            txn.open_table(TOMBSTONES)?;
            txn.open_table(DOCS)?;
            txn.open_table(DOSSIER_DOCS)?;
            txn.open_table(UNIQUE_IDS)?;
            txn.open_table(SITE_PROS)?;
            txn.open_table(PRO_SITES)?;
            txn.open_table(SCOPE)?;
            txn.open_table(SCOPE_SITES)?;
            txn.open_table(SITE_LOG)?;
            txn.open_table(QUARANTINE)?;
            txn.open_table(PARTIAL_BODIES)?;
            txn.open_table(PARTIAL_PROGRESS)?;
            txn.open_table(OWED_BODIES)?;
            txn.open_table(ANNOUNCEMENTS)?;
            txn.open_table(HIDDEN_DOCS)?;
            txn.open_table(PENDING_EMERGENCIES)?;
            txn.open_table(DOSSIER_EMERGENCIES)?;
            txn.open_table(PENDING_GRANTS)?;
            txn.open_table(LOCAL_DOSSIERS)?;
            txn.open_table(HELD)?;
            txn.open_table(MISSING_BODIES)?;
            txn.open_table(CONFLICTS)?;
            txn.open_table(SITE_RECEIPTS)?;
            txn.open_table(RETURNED)?;
            txn.open_table(PENDING_PURGES)?;
            txn.open_table(BODIES)?;
            txn.open_table(BODY_PLACES)?;
            txn.open_table(PROS)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_HEADS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(OUTBOX_HELD)?;
            txn.open_table(RELAYED_LEASES)?;
            txn.open_table(RELAYED_TRACES)?;
            txn.open_table(APPLIED)?;
            txn.open_table(CHANGES)?;
        }
        txn.commit()?;
        drop(db);
        match place {
            Place::Backend(handle) => {
                let (db, journal, segments) = handle();
                Self::open_in(
                    dir,
                    DbStore::Backend(db),
                    Some(journal),
                    segments,
                    &opts.key,
                    clock,
                    DEFAULT_CACHE_MIB,
                )
            }
            Place::File => Replica::open(dir, &opts.key, clock),
            Place::Postgres(pg) => Self::open_in(
                dir,
                DbStore::Postgres(pg.clone()),
                None,
                None,
                &opts.key,
                clock,
                DEFAULT_CACHE_MIB,
            ),
        }
    }

    /// Opens the replica in `dir` with its master key, its page cache at `DEFAULT_CACHE_MIB`.
    pub fn open(dir: &Path, source: &KeySource, clock: Clock) -> Result<Replica> {
        Self::open_with_cache(dir, source, clock, DEFAULT_CACHE_MIB)
    }

    /// `open` with a page cache of `cache_mib` MiB (`cache_mib` in `carnet.toml`): with the
    /// trace journal's buffers, what bounds the replica's memory, whatever it stores.
    pub fn open_with_cache(
        dir: &Path,
        source: &KeySource,
        clock: Clock,
        cache_mib: usize,
    ) -> Result<Replica> {
        let db_path = dir.join(DB_FILE);
        if !db_path.exists() && dir.join(POSTGRES_MARK).exists() {
            return Err(Error::invalid(format!(
                "the host in {} keeps its tables in PostgreSQL: set its address as [host] storage in carnet.toml",
                dir.display()
            )));
        }
        if !db_path.exists() {
            return Err(Error::not_found(format!(
                "no replica in {}: run `carnet init` first, or point --data at the right folder",
                dir.display()
            )));
        }
        Self::open_in(
            dir,
            DbStore::File(db_path),
            None,
            None,
            source,
            clock,
            cache_mib,
        )
    }

    /// `open_with_cache` with the tables on `storage` (the page cache is redb's only).
    pub fn open_on(
        dir: &Path,
        storage: &Storage,
        source: &KeySource,
        clock: Clock,
        cache_mib: usize,
    ) -> Result<Replica> {
        match storage {
            Storage::File => Self::open_with_cache(dir, source, clock, cache_mib),
            Storage::Postgres(pg) => {
                if !dir.join(KEY_FILE).exists() && matches!(source, KeySource::File) {
                    return Err(Error::not_found(format!(
                        "no replica in {}: run `carnet init` first, or point --data at the right folder",
                        dir.display()
                    )));
                }
                Self::open_in(
                    dir,
                    DbStore::Postgres(pg.clone()),
                    None,
                    None,
                    source,
                    clock,
                    cache_mib,
                )
            }
        }
    }

    /// `open` with the database on `backend` and the trace journal on `journal` (see
    /// `init_with_backend`); the key file is read from `dir`. Backups and key rotations work
    /// on `carnet.redb` only.
    pub fn open_with_backend(
        dir: &Path,
        backend: impl StorageBackend,
        journal: impl StorageBackend,
        source: &KeySource,
        clock: Clock,
    ) -> Result<Replica> {
        Self::open_in(
            dir,
            DbStore::Backend(Box::new(backend)),
            Some(Box::new(journal)),
            None,
            source,
            clock,
            DEFAULT_CACHE_MIB,
        )
    }

    /// `open_with_backend` with the body segments on `segments` (see `init_with_backends`).
    pub fn open_with_backends(
        dir: &Path,
        backend: impl StorageBackend,
        journal: impl StorageBackend,
        segments: impl SegmentFiles + 'static,
        source: &KeySource,
        clock: Clock,
    ) -> Result<Replica> {
        Self::open_in(
            dir,
            DbStore::Backend(Box::new(backend)),
            Some(Box::new(journal)),
            Some(Box::new(segments)),
            source,
            clock,
            DEFAULT_CACHE_MIB,
        )
    }

    /// Opens the replica on `store`, its journal on `journal` or in `dir`, its body segments
    /// in `DIR/segments` for a file, on `segment_files` for a backend given them, none (bodies
    /// in `BODIES` rows) otherwise.
    #[allow(clippy::too_many_arguments)]
    fn open_in(
        dir: &Path,
        store: DbStore,
        journal: Option<Box<dyn StorageBackend>>,
        segment_files: Option<Box<dyn SegmentFiles>>,
        source: &KeySource,
        clock: Clock,
        cache_mib: usize,
    ) -> Result<Replica> {
        // The folder's files are its own: no link is followed out of it.
        crate::files::own_files(dir, &[DB_FILE, KEY_FILE, journal::JOURNAL_FILE])
            .map_err(|e| Error::integrity(e.to_string()))?;
        // A folder others can read is tightened before anything is read from it, and said.
        let folder_fixes = crate::files::tighten_folder(dir);
        let in_file = matches!(store, DbStore::File(_));
        let (db, durability) = open_database_checked(store, dir, cache_mib)?;
        // Holding the live database: no rotation runs, so a re-keyed file beside it is a
        // leftover of one that stopped before its commit point.
        rekey::remove_leftover(dir)?;
        let (format, config, keyring, wrapped_chain) = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let get = |k: &str| -> Result<Vec<u8>> {
                Ok(meta
                    .get(k)?
                    .ok_or_else(|| Error::integrity(format!("replica metadata '{k}' is missing")))?
                    .value()
                    .to_vec())
            };
            let format_bytes = get(meta_key::FORMAT)?;
            let format = u32::from_le_bytes(
                format_bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::integrity("replica format version is malformed"))?,
            );
            if format > FORMAT_VERSION {
                return Err(Error::invalid(format!(
                    "this replica was written by a newer Carnet (format {format}; this build reads up to {FORMAT_VERSION}): upgrade carnet"
                )));
            }
            if format < FORMAT_OLDEST {
                return Err(Error::invalid(format!(
                    "this replica was written by an earlier Carnet (format {format}; this build reads formats {FORMAT_OLDEST} to {FORMAT_VERSION}) and cannot be migrated: export its dossiers with that build and import them into a new replica"
                )));
            }
            let config: ReplicaConfig = postcard::from_bytes(&get(meta_key::CONFIG)?)?;
            let keyring: Keyring = postcard::from_bytes(&get(meta_key::KEYRING)?)?;
            let chain = meta.get(meta_key::CHAIN_KEY)?.map(|v| v.value().to_vec());
            (format, config, keyring, chain)
        };
        let master = Self::master_key(dir, source, &keyring)?;
        // A replica whose check says so has its `meta` authenticated; an older one gets it now.
        let state_authenticated = master.open(CHECK_STATE, &keyring.check).is_ok();
        let registry = master.unwrap_key(b"registry", &keyring.registry)?;
        let index = master.unwrap_key(b"index", &keyring.index)?;
        let audit = master.unwrap_key(b"audit", &keyring.audit)?;
        let keys = Keys {
            docs: doc_map::DocMap::new(&index),
            index,
            state: state_key(&registry),
            rows: rows_key(&registry),
            registry,
            // Derived from the audit key until a full rotation replaces that key; kept on its
            // own from then on, since the host checks this replica's chain under it.
            chain: match &wrapped_chain {
                Some(w) => master.unwrap_key(CHAIN_KEY_AAD, w)?,
                None => audit.derive("carnet 2026-11 trace chain hash"),
            },
            audit,
            master: RwLock::new(MasterKeys {
                current: master,
                previous: None,
            }),
        };
        let signing = match &keyring.signing {
            Some(w) => {
                let k = keys
                    .master
                    .read()
                    .map_err(lock_err)?
                    .unwrap_key(b"signing", w)?;
                Some(SigningKey::from_bytes(k.expose()))
            }
            None => None,
        };
        let host_key = match keyring.host_key {
            Some(b) => Some(
                VerifyingKey::from_bytes(&b)
                    .map_err(|_| Error::integrity("the pinned host key is malformed"))?,
            ),
            None => None,
        };
        let daemon = daemons::Daemon::of_folder(dir)?;
        if daemon.0 != 0 && (config.role != Role::Host || db.as_redb().is_some()) {
            return Err(Error::invalid(format!(
                "{} says this folder is one of several host daemons, which share a PostgreSQL database: this replica is not such a host",
                dir.join(daemons::DAEMON_FILE).display()
            )));
        }
        let head: (u64, [u8; 32]) = {
            let txn = db.begin_read()?;
            let heads = txn.open_table(AUDIT_HEADS)?;
            let row = heads.get(daemon.own_origin(&config).0)?;
            match row {
                Some(v) => postcard::from_bytes(v.value())?,
                None => (0, [0; 32]),
            }
        };
        let (epoch, restoring) = {
            let meta = db.begin_read()?.open_table(META)?;
            (journal_epoch(&meta, daemon)?, restored::is_marked(&meta)?)
        };
        let chain = Mutex::new(match journal {
            Some(on) => TraceChain::open_on(on, head, epoch)?,
            None => TraceChain::open(dir, head, epoch)?,
        });
        let view = if db.as_redb().is_some() {
            view::SharedView::default()
        } else {
            view::SharedView::per_read()
        };
        let segments = if in_file {
            let folder = dir.join(crate::segments::SEGMENTS_DIR);
            Some(Arc::new(Segments::in_folder(&folder)?))
        } else {
            match segment_files {
                Some(files) => {
                    let max_bytes = files.segment_bytes();
                    Some(Arc::new(Segments::open(files, max_bytes)?))
                }
                None => None,
            }
        };
        let replica = Replica {
            chain,
            daemon,
            db,
            segments,
            durability,
            dir: dir.to_path_buf(),
            config,
            keys,
            signing,
            host_key: RwLock::new(host_key),
            matrix: RwLock::new(Arc::new(HabilitationMatrix::default_matrix())),
            refused_certificates: RwLock::default(),
            clock,
            audit_commit: GroupCommit::default(),
            mover: Mutex::new(None),
            cache: cache::RegistryCache::default(),
            view,
            state_verified: AtomicBool::new(false),
            restoring: AtomicBool::new(restoring),
            pending_digests: row_digest::PendingDigests::default(),
            pending_changes: Mutex::default(),
            change_seq: tokio::sync::watch::Sender::new(0),
            change_cap: std::sync::atomic::AtomicU64::new(changes::MAX_CHANGES),
            folder_fixes,
            high_water: Mutex::new(None),
        };
        replica.check_state(state_authenticated)?;
        replica.check_rows()?;
        replica.reload_held()?;
        // Entries journaled before a stop or crash move into the table now; then the trace
        // must reach its anchor.
        replica.flush_traces()?;
        replica.check_trace_anchor()?;
        replica.tidy_segments()?;
        if !restoring {
            // A purge traces: a restored replica resumes them once it caught up.
            replica.resume_purges()?;
        }
        replica.index_missing_bodies()?;
        replica.settle_format(format)?;
        Ok(replica)
    }

    /// Marks a replica in segments of an earlier format this build reads (`FORMAT_OLDEST`) as
    /// of this build's, last at open (a replica refused at open is left as it was), before this
    /// build writes a body in its own cut: an earlier build then refuses the replica ("written
    /// by a newer Carnet") instead of finding bodies damaged. Format 10 changed only the cut in
    /// segments: a replica without them (a host on PostgreSQL, whose daemons may not all be
    /// upgraded at once) keeps its mark.
    fn settle_format(&self, stored: u32) -> Result<()> {
        if stored == FORMAT_VERSION || self.segments.is_none() {
            return Ok(());
        }
        let txn = self.begin_raw_write()?;
        txn.open_table(META)?
            .insert(meta_key::FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
        txn.commit()
    }

    /// What opening tightened in a data folder that others could read (modes set to 0700 and
    /// 0600), one sentence each, for the caller to report; empty for a private folder.
    pub fn folder_fixes(&self) -> &[String] {
        &self.folder_fixes
    }

    /// At open: the `meta` table (settings, keyring and pinned host key, lease, authority
    /// versions, cursors, marks) must be what this replica last wrote: `STATE_MAC` is a hash of
    /// every other row keyed under the master key, so a value changed or put back by someone
    /// without the key is an integrity failure. A replica made before the authentication
    /// (`authenticated` false) gets it here, its key check resealed to say so.
    fn check_state(&self, authenticated: bool) -> Result<()> {
        let stored_and_computed = {
            let txn = self.begin_read()?;
            let meta = txn.open_table(META)?;
            let stored = meta.get(STATE_MAC)?.map(|v| v.value().to_vec());
            (stored, state_mac(&self.keys.state, &meta)?)
        };
        match stored_and_computed {
            (Some(stored), computed) if stored == computed => {
                self.state_verified.store(true, Ordering::SeqCst);
                return Ok(());
            }
            (Some(_), _) | (None, _) if authenticated => {
                let (place, restore) = self.where_tables_are();
                return Err(Error::integrity(format!(
                    "the replica's settings, keyring or counters ({place}, table meta) were changed outside Carnet: {restore}",
                )));
            }
            _ => {}
        }
        // A replica made before: seal its check anew (the commit writes its first STATE_MAC).
        self.state_verified.store(true, Ordering::SeqCst);
        let txn = self.begin_raw_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut keyring: Keyring = postcard::from_bytes(
                meta.get(meta_key::KEYRING)?
                    .ok_or_else(|| Error::integrity("keyring missing"))?
                    .value(),
            )?;
            let master = self.keys.master.read().map_err(lock_err)?;
            keyring.check = master.current.seal(CHECK_STATE, KEY_CHECK)?;
            meta.insert(meta_key::KEYRING, postcard::to_stdvec(&keyring)?.as_slice())?;
        }
        txn.commit()
    }

    /// At open: the rows of every guarded table (`row_digest::GUARDED`) must be those this
    /// replica last wrote: each table is summed again and compared with its digest in `meta`
    /// (authenticated by `check_state`). A replica made before the digests gets them here.
    /// Where the tables are, and what restores them, for an integrity error.
    fn where_tables_are(&self) -> (&'static str, &'static str) {
        match self.db {
            Database::Redb(_) => ("carnet.redb", "restore the data folder from a backup"),
            Database::Pg(_) => (
                "the host's PostgreSQL database",
                "restore the database and the data folder from a backup taken together",
            ),
        }
    }

    fn check_rows(&self) -> Result<()> {
        let (marked, stored, computed) = {
            let txn = self.begin_read()?;
            let meta = txn.open_table(META)?;
            let marked = meta.get(meta_key::ROW_DIGESTS)?.is_some();
            let mut stored = Vec::with_capacity(row_digest::GUARDED.len());
            for name in row_digest::GUARDED {
                // No digest row at all: a table guarded since this replica last wrote (a row
                // removed from `meta` would not have passed `check_state`).
                let row = meta.get(row_digest::meta_row(name).as_str())?;
                stored.push(match row {
                    Some(v) => Some(row_digest::RowDigest::from_bytes(Some(v.value()))?),
                    None => None,
                });
            }
            (
                marked,
                stored,
                row_digest::all_digests(&self.keys.rows, &*txn)?,
            )
        };
        let newly_guarded = stored.iter().any(Option::is_none);
        if marked {
            for ((name, computed), stored) in computed.iter().zip(&stored) {
                if stored.is_some_and(|s| s != *computed) {
                    // Nothing is written over it (the drop of the refused replica commits).
                    self.state_verified.store(false, Ordering::SeqCst);
                    let (place, restore) = self.where_tables_are();
                    return Err(Error::integrity(format!(
                        "the rows of table {name} ({place}) are not the ones this replica last wrote: a row was put back, removed or added outside Carnet; {restore}"
                    )));
                }
            }
            if !newly_guarded {
                return Ok(());
            }
        }
        let txn = self.begin_raw_write()?;
        {
            // An index guarded since this replica last wrote was made by this build: filled
            // now, from what it indexes, in the transaction that stores its first digest.
            let newly = |table: &str| {
                computed
                    .iter()
                    .zip(&stored)
                    .any(|((name, _), stored)| *name == table && stored.is_none())
            };
            if newly("hidden_docs") {
                self.fill_hidden_docs(&txn)?;
            }
            if newly("pending_emergencies") {
                self.fill_emergency_indexes(&txn)?;
            }
            let computed = row_digest::all_digests(&self.keys.rows, &*txn)?;
            let mut meta = txn.open_table(META)?;
            for (name, digest) in computed {
                meta.insert(
                    row_digest::meta_row(name).as_str(),
                    digest.to_bytes().as_slice(),
                )?;
            }
            meta.insert(meta_key::ROW_DIGESTS, [1u8].as_slice())?;
        }
        txn.commit()
    }

    fn master_key(dir: &Path, source: &KeySource, keyring: &Keyring) -> Result<Key> {
        let opens = |k: &Key| {
            k.open(CHECK_STATE, &keyring.check).is_ok() || k.open(b"check", &keyring.check).is_ok()
        };
        match (&keyring.kind, source) {
            (KeyKind::File, _) => {
                let current = read_key_file(&dir.join(KEY_FILE));
                if let Ok(key) = &current
                    && opens(key)
                {
                    return current;
                }
                // A rotation that committed but did not finish renaming the new key file (from
                // a passphrase, there was no key file before).
                let new_path = dir.join(KEY_FILE_NEW);
                if let Ok(new) = read_key_file(&new_path)
                    && opens(&new)
                {
                    fs::rename(&new_path, dir.join(KEY_FILE))?;
                    sync_dir(dir);
                    return Ok(new);
                }
                current?;
                Err(Error::Key(format!(
                    "the key file {} does not open this replica (wrong or damaged key file)",
                    dir.join(KEY_FILE).display()
                )))
            }
            (
                KeyKind::Passphrase { salt } | KeyKind::PassphraseAt { salt, .. },
                KeySource::Passphrase(p),
            ) => {
                let cost = match &keyring.kind {
                    KeyKind::PassphraseAt { cost, .. } => *cost,
                    _ => KdfCost::LEGACY,
                };
                let key = Key::from_passphrase(p, salt, cost)?;
                if opens(&key) {
                    Ok(key)
                } else {
                    Err(Error::Key(
                        "wrong passphrase: CARNET_PASSPHRASE does not open this replica".into(),
                    ))
                }
            }
            (KeyKind::Passphrase { .. } | KeyKind::PassphraseAt { .. }, KeySource::File) => {
                Err(Error::Key(
                    "this replica is protected by a passphrase: set CARNET_PASSPHRASE".into(),
                ))
            }
        }
    }

    /// Re-wraps every data key and replica key under a new master key (the old one stops
    /// working). Documents are not re-encrypted: only keys are (`rekey` replaces them all).
    pub fn rotate_master_key(&self, new_source: &KeySource) -> Result<()> {
        let (new_master, kind) = match new_source {
            KeySource::File => (Key::random()?, KeyKind::File),
            KeySource::Passphrase(p) => KeyKind::new_passphrase(p)?,
        };
        if matches!(kind, KeyKind::File) {
            // Written before the commit: if we crash after it, `open` finds the new key here.
            write_key_file(&self.dir.join(KEY_FILE_NEW), &new_master)?;
        }
        let txn = self.begin_write()?;
        // Held from here to the swap: no writer wraps a key under the old master after this
        // transaction commits (writers take the redb lock first, then this one).
        let mut master = self.keys.master.write().map_err(lock_err)?;
        let old = &master.current;
        {
            let mut meta = txn.open_table(META)?;
            let mut keyring: Keyring = postcard::from_bytes(
                meta.get(meta_key::KEYRING)?
                    .ok_or_else(|| Error::integrity("keyring missing"))?
                    .value(),
            )?;
            keyring.kind = kind;
            keyring.check = new_master.seal(CHECK_STATE, KEY_CHECK)?;
            keyring.index = new_master.wrap(b"index", &self.keys.index)?;
            keyring.registry = new_master.wrap(b"registry", &self.keys.registry)?;
            keyring.audit = new_master.wrap(b"audit", &self.keys.audit)?;
            if let Some(w) = &keyring.signing {
                let k = old.unwrap_key(b"signing", w)?;
                keyring.signing =
                    Some(serde_bytes::ByteBuf::from(new_master.wrap(b"signing", &k)?));
            }
            meta.insert(meta_key::KEYRING, postcard::to_stdvec(&keyring)?.as_slice())?;
            if meta.get(meta_key::CHAIN_KEY)?.is_some() {
                let wrapped = new_master.wrap(CHAIN_KEY_AAD, &self.keys.chain)?;
                meta.insert(meta_key::CHAIN_KEY, wrapped.as_slice())?;
            }
            let mut dk = self.digested(&txn, DOSSIER_KEYS)?;
            let rows: Vec<([u8; 32], Vec<u8>)> = dk
                .iter()?
                .map(|r| r.map(|(k, v)| (*k.value(), v.value().to_vec())))
                .collect::<std::result::Result<_, _>>()?;
            for (bi, wrapped) in rows {
                let a = aad(&[b"dossier-key", &bi]);
                let key = old.unwrap_key(&a, &wrapped)?;
                dk.insert(&bi, new_master.wrap(&a, &key)?.as_slice())?;
            }
        }
        txn.commit()?;
        match new_source {
            KeySource::File => {
                fs::rename(self.dir.join(KEY_FILE_NEW), self.dir.join(KEY_FILE))?;
                sync_dir(&self.dir);
            }
            KeySource::Passphrase(_) => {
                // A passphrase replica has no key file; remove a stale one if it was a file.
                let _ = fs::remove_file(self.dir.join(KEY_FILE));
            }
        }
        let old = std::mem::replace(&mut master.current, new_master);
        master.previous = Some(old);
        Ok(())
    }

    /// Settings fixed at init.
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// Site: sets the authority lease (DOMAIN §5) to `hours`, durably (the daemon applies
    /// `lease_hours` from carnet.toml this way when it starts).
    pub fn set_lease_hours(&mut self, hours: u32) -> Result<()> {
        if self.config.role != Role::Site {
            return Err(Error::invalid("only a site has a lease"));
        }
        if hours == 0 {
            return Err(Error::invalid(
                "a lease of 0 hours would refuse every normal read",
            ));
        }
        let mut config = self.config.clone();
        config.lease_ms = Some(i64::from(hours) * 3_600_000);
        let txn = self.begin_raw_write()?;
        txn.open_table(META)?
            .insert(meta_key::CONFIG, postcard::to_stdvec(&config)?.as_slice())?;
        txn.commit()?;
        self.config = config;
        Ok(())
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when this site's authority cache is older than its lease, or when the clock reads
    /// earlier than a time this replica already saw (beyond the skew allowed to heartbeats): a
    /// clock set back would otherwise keep an old heartbeat young.
    fn lease_expired(&self, generation: Generation) -> bool {
        self.config.lease_ms.is_some_and(|lease| {
            let now = self.now();
            now < generation
                .clock_seen
                .saturating_sub(crate::authority::MAX_SKEW)
                || now.saturating_sub(generation.authority_as_of) > lease
        })
    }

    /// Current time from the injected clock.
    pub fn now(&self) -> Millis {
        (self.clock)()
    }

    /// Stores `value` sealed under `name` (the sync layer's keys and certificates): replaced if
    /// present.
    pub fn put_sealed(&self, name: &str, value: &[u8]) -> Result<()> {
        let txn = self.begin_write()?;
        self.put_sealed_in(&txn, name, value)?;
        txn.commit()
    }

    /// `put_sealed`, inside `txn`.
    fn put_sealed_in(&self, txn: &WriteTransaction, name: &str, value: &[u8]) -> Result<()> {
        let sealed = self
            .keys
            .registry
            .seal(&aad(&[b"sealed", name.as_bytes()]), value)?;
        txn.open_table(META)?
            .insert(format!("sealed:{name}").as_str(), sealed.as_slice())?;
        Ok(())
    }

    /// The value stored by `put_sealed` under `name`, if any.
    pub fn get_sealed(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let row = meta.get(format!("sealed:{name}").as_str())?;
        match row {
            Some(v) => Ok(Some(
                self.keys
                    .registry
                    .open(&aad(&[b"sealed", name.as_bytes()]), v.value())
                    .map_err(|_| Error::integrity(format!("the stored '{name}' was altered")))?,
            )),
            None => Ok(None),
        }
    }

    /// The host public key this replica trusts, if pinned.
    pub fn host_key(&self) -> Result<Option<[u8; 32]>> {
        Ok(self
            .host_key
            .read()
            .map_err(lock_err)?
            .map(|k| k.to_bytes()))
    }

    fn blind(&self, ins: &Ins) -> [u8; 32] {
        ins_index(&self.keys.index, ins)
    }

    /// How a professional appears in table keys (`PROS`, grants' subject keys, the host's
    /// site–professional tables, pending grants and requests): a keyed BLAKE3 of the RPPS under
    /// the blind index key, tagged apart from INS and unique ids, so the file names no
    /// professional in clear and two replicas' keys for one professional differ.
    fn rpps_index(&self, rpps: &crate::ids::Rpps) -> [u8; 32] {
        rpps_index_under(&self.keys.index, rpps)
    }

    /// How a document appears in this replica's tables (`doc_map`): never its id in clear. Public
    /// for tools and tests that read the tables without the replica.
    pub fn stored_id(&self, id: &DocId) -> [u8; 16] {
        self.keys.docs.stored(id)
    }

    /// The document whose stored form (`stored_id`) is `stored`.
    fn doc_id(&self, stored: &[u8; 16]) -> DocId {
        self.keys.docs.id(stored)
    }

    /// The document `unique_id` names in dossier `bi` (whose key is `key`, if held), if any. A
    /// document's own id (`urn:carnet:` and its document id, made when the producer gave none)
    /// is not indexed: the document id is unique already, so it names its document through
    /// `docs`, if that document carries it indeed (one filed with a producer's id does not).
    /// Any other unique id goes through `UNIQUE_IDS`.
    fn unique_owner(
        &self,
        docs: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        uniques: &impl ReadableTable<&'static [u8], &'static [u8; 16]>,
        (bi, key): (&[u8; 32], Option<&Key>),
        unique_id: &str,
    ) -> Result<Option<DocId>> {
        if let Some(id) = unique_id
            .strip_prefix(OWN_UNIQUE_ID)
            .and_then(|hex| DocId::parse(hex).ok())
            .filter(|id| is_own_unique_id(id, unique_id))
            && let Some(key) = key
            && let Some(row) = docs.get(&self.stored_id(&id))?
        {
            let stored: StoredDoc = postcard::from_bytes(row.value())?;
            if stored.dossier == *bi
                && self.open_meta(key, &id.0, &stored)?.facts.unique_id == unique_id
            {
                return Ok(Some(id));
            }
        }
        let k = self.unique_index(bi, unique_id);
        Ok(uniques.get(k.as_slice())?.map(|v| self.doc_id(v.value())))
    }

    /// The `UNIQUE_IDS` key of a producer's unique id in a dossier.
    fn unique_index(&self, bi: &[u8; 32], unique_id: &str) -> [u8; 64] {
        unique_index_under(&self.keys.index, bi, unique_id)
    }

    /// Highest host record sequence this replica has admitted (its authority cache version).
    pub fn authority_version(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(meta_key::AUTHORITY_VERSION)?;
        Ok(read_u64(v.as_ref().map(|g| g.value())))
    }

    /// When the host last vouched this replica's authority cache was current (0: never), and
    /// whether the site's lease has run out since.
    pub fn authority_freshness(&self) -> Result<(Millis, bool)> {
        let (_, generation) = self.snapshot()?;
        Ok((generation.authority_as_of, self.lease_expired(generation)))
    }

    fn bump_meta_u64(txn: &WriteTransaction, key: &str, at_least: Option<u64>) -> Result<u64> {
        let mut meta = txn.open_table(META)?;
        let cur = read_u64(meta.get(key)?.as_ref().map(|g| g.value()));
        let next = match at_least {
            Some(v) => cur.max(v),
            None => cur + 1,
        };
        meta.insert(key, next.to_le_bytes().as_slice())?;
        Ok(next)
    }

    // ---- professionals ----

    /// Registers (or updates) a professional at this site.
    pub fn add_professional(&self, p: &Professional) -> Result<()> {
        p.check()?;
        let txn = self.begin_write()?;
        {
            let mut pros = self.digested(&txn, PROS)?;
            let pro = self.rpps_index(&p.rpps);
            let sealed = self
                .keys
                .registry
                .seal(&pro_aad(&pro), &postcard::to_stdvec(p)?)?;
            pros.insert(&pro, sealed.as_slice())?;
            Self::registry_changed(&txn)?;
            drop(pros);
            if self.config.role == Role::Site {
                self.push_outbox(&txn, |_| Ok(OutboxItem::Professional(pro)))?;
            }
            txn.trace(vec![self.admin_entry(
                "professional-registered",
                None,
                None,
            )]);
        }
        txn.commit()?;
        Ok(())
    }

    /// A professional registered here (for sending to the host).
    fn who_is(&self, txn: &ReadTransaction, rpps: &crate::ids::Rpps) -> Result<Professional> {
        self.registered(&txn.open_table(PROS)?, &self.rpps_index(rpps))?
            .ok_or_else(|| Error::not_found(format!("professional {rpps} is not registered here")))
    }

    /// The professional registered here under `rpps_index` `pro`, if any.
    fn registered(
        &self,
        pros: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
        pro: &[u8; 32],
    ) -> Result<Option<Professional>> {
        match pros.get(pro)? {
            Some(v) => Ok(Some(self.open_professional(pro, v.value())?)),
            None => Ok(None),
        }
    }

    /// The professionals registered here, by RPPS.
    pub fn professionals(&self) -> Result<Vec<Professional>> {
        let txn = self.begin_read()?;
        let pros = txn.open_table(PROS)?;
        let mut out = Vec::new();
        for row in pros.iter()? {
            let (k, v) = row?;
            out.push(self.open_professional(k.value(), v.value())?);
        }
        out.sort_by(|a: &Professional, b| a.rpps.cmp(&b.rpps));
        Ok(out)
    }

    fn open_professional(&self, pro: &[u8; 32], sealed: &[u8]) -> Result<Professional> {
        let plain = self.keys.registry.open(&pro_aad(pro), sealed)?;
        Ok(postcard::from_bytes(&plain)?)
    }

    /// The read view shared by audited reads (see `view`): the current one, or a new snapshot.
    fn shared_view(&self) -> Result<Arc<view::ReadView>> {
        self.view.get_or_make(|| {
            let (txn, generation) = self.snapshot()?;
            Ok(view::ReadView {
                docs: txn.open_table(DOCS)?,
                bodies: self.bodies_read(&txn)?,
                txn,
                generation,
            })
        })
    }

    /// A read transaction of what is on disk: it waits for the syncs that commits before it
    /// left to finish behind them (`deferring_syncs`). Every read of a live replica begins
    /// here, so nothing read from it, nor sent from it, can be lost by a crash.
    fn begin_read(&self) -> Result<Snapshot> {
        // Registered before the snapshot is taken: the segments it may name stay until it ends.
        let reader = self.segments.as_ref().map(|s| s.reader());
        let txn = self.db.begin_read()?;
        // The snapshot holds nothing committed after this point was issued.
        self.durability.wait(self.durability.issued())?;
        Ok(Snapshot {
            txn,
            _reader: reader,
        })
    }

    /// Runs `work` with the syncs of the commits it makes on this thread, in this replica,
    /// left to finish behind them (see `backend`): the next transaction begins while the disk
    /// works. What those commits did must not be acknowledged to anyone before
    /// `wait_durable(durable_point())` returns; reads wait for it themselves.
    pub fn deferring_syncs<T>(&self, work: impl FnOnce() -> T) -> T {
        struct Restore(usize);
        impl Drop for Restore {
            fn drop(&mut self) {
                DEFERRING.set(self.0);
            }
        }
        let _restore = Restore(DEFERRING.replace(self.durability.id()));
        work()
    }

    /// Where the file's operations issued so far end: every commit made before is on disk
    /// once `wait_durable` returns for this point.
    pub fn durable_point(&self) -> Durable {
        self.durability.issued()
    }

    /// The failure of a write or sync of the database file or of the body segments, if one
    /// failed: nothing more can be made durable until the replica is opened again (redb then
    /// recovers the file; the segments start a new one).
    pub fn storage_failure(&self) -> Option<String> {
        self.durability.failure().or_else(|| {
            self.segments
                .as_ref()
                .and_then(|s| s.failure())
                .map(|why| format!("the body segments failed: {why}"))
        })
    }

    /// Whether everything up to `point` is on disk already (`wait_durable` would not wait).
    pub fn is_durable(&self, point: Durable) -> Result<bool> {
        Ok(self.durability.reached(point)?)
    }

    /// Waits until everything up to `point` is on disk. An error means a write or a sync of
    /// the database file failed: what came after the last durable point is not on disk, and
    /// the replica must be opened again.
    pub fn wait_durable(&self, point: Durable) -> Result<()> {
        Ok(self.durability.wait(point)?)
    }

    /// A write transaction without the trace chain; its commit retires the shared read view.
    /// Every write of the replica begins here (or in `begin_write`, which holds one).
    fn begin_raw_write(&self) -> Result<RawWrite<'_>> {
        let txn = self.db.begin_write()?;
        // The write lock is held: what is pending was left by a transaction that was dropped.
        self.pending_digests.clear()?;
        self.clear_pending_changes()?;
        Ok(RawWrite { replica: self, txn })
    }

    /// A read snapshot and its generation counters (see `cache`).
    fn snapshot(&self) -> Result<(Snapshot, Generation)> {
        let txn = self.begin_read()?;
        let generation = {
            let meta = txn.open_table(META)?;
            let get =
                |k: &str| -> Result<u64> { Ok(read_u64(meta.get(k)?.as_ref().map(|g| g.value()))) };
            Generation {
                registry: get(meta_key::REGISTRY_GEN)?,
                authority_version: get(meta_key::AUTHORITY_VERSION)?,
                authority_as_of: get(meta_key::AUTHORITY_AS_OF)? as Millis,
                clock_seen: get(meta_key::CLOCK_SEEN)? as Millis,
            }
        };
        Ok((txn, generation))
    }

    /// Records, in `txn`, that the registry changed (invalidates cached rows).
    fn registry_changed(txn: &WriteTransaction) -> Result<()> {
        Self::bump_meta_u64(txn, meta_key::REGISTRY_GEN, None).map(|_| ())
    }

    /// Resolves an actor against the registry: an RPPS not registered here is unidentified.
    fn who(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        actor: &Actor,
    ) -> Result<(Who, TraceActor)> {
        Ok(match actor {
            Actor::Professional(rpps) => {
                let found = self
                    .cache
                    .professional(generation.registry, rpps.as_str(), || {
                        self.registered(&txn.open_table(PROS)?, &self.rpps_index(rpps))
                    })?;
                match found {
                    Some(p) => (
                        Who::Professional {
                            rpps: rpps.clone(),
                            profession: p.profession,
                        },
                        TraceActor::Professional {
                            rpps: rpps.clone(),
                            profession: Some(p.profession),
                        },
                    ),
                    None => (
                        Who::Unidentified,
                        TraceActor::Professional {
                            rpps: rpps.clone(),
                            profession: None,
                        },
                    ),
                }
            }
            Actor::Holder => (Who::Holder, TraceActor::Holder),
            Actor::Representative(id) => {
                (Who::Representative(*id), TraceActor::Representative(*id))
            }
            Actor::System => (Who::Unidentified, TraceActor::System),
        })
    }

    /// A dossier's data key, through the cache.
    fn key_for(
        &self,
        txn: &ReadTransaction,
        generation: Generation,
        bi: &[u8; 32],
    ) -> Result<Option<Key>> {
        self.cache.dossier_key(generation.registry, bi, || {
            self.dossier_key(&txn.open_table(DOSSIER_KEYS)?, bi)
        })
    }

    // ---- audit ----

    fn admin_entry(&self, what: &str, ins: Option<&Ins>, reason: Option<&str>) -> AuditEntry {
        AuditEntry {
            at: self.now(),
            origin: self.config.site_id,
            actor: TraceActor::System,
            action: TraceAction::Admin(what.to_string()),
            ins: ins.map(|i| i.matricule().to_string()),
            doc: None,
            mode: AccessMode::Normal,
            allowed: true,
            rule: 0,
            outcome_reason: String::new(),
            stated_reason: reason.map(str::to_string),
            decided_offline: false,
            authority_version: 0,
        }
    }

    /// Begins a write transaction holding the trace chain (lock order: chain, then redb).
    fn begin_write(&self) -> Result<Writer<'_>> {
        let chain = self.chain.lock().map_err(lock_err)?;
        let txn = self.begin_raw_write()?;
        Ok(Writer {
            replica: self,
            chain,
            txn,
            staged: RefCell::new(Vec::new()),
        })
    }

    /// Encodes and seals an entry: the costly part, done by each caller in parallel. The
    /// sealed bytes are bound to the origin; their place in the chain is bound by the chain hash.
    fn prepare_trace(&self, entry: &AuditEntry) -> Result<PreparedTrace> {
        self.refuse_while_restoring()?;
        let bytes = Zeroizing::new(postcard::to_stdvec(entry)?);
        let sealed = self
            .keys
            .audit
            .seal(&trace_aad(self.trace_origin().0), &bytes)?;
        Ok(PreparedTrace { bytes, sealed })
    }

    /// Commits the trace entries of asynchronous reads (`read_document_async`) on the calling
    /// thread until `running` turns false, so the tasks that wait for them never block their
    /// runtime's threads on a sync; a second thread, scoped to this call, moves each full
    /// journal epoch into redb meanwhile (see `journal`). The daemon runs it on a thread of its
    /// own.
    pub fn run_trace_committer(&self, running: &AtomicBool) {
        std::thread::scope(|scope| {
            let mover = scope.spawn(|| self.run_trace_mover(running));
            self.audit_commit
                .run_committer(&|batch| self.commit_traces(batch), running);
            mover.thread().unpark();
        });
    }

    /// Moves sealed journal epochs into redb until `running` turns false.
    fn run_trace_mover(&self, running: &AtomicBool) {
        if let Ok(mut m) = self.mover.lock() {
            *m = Some(std::thread::current());
        }
        while running.load(Ordering::SeqCst) {
            let sealed = self.chain.lock().ok().and_then(|c| c.sealed.clone());
            match sealed {
                Some(sealed) => {
                    if self.move_sealed(&sealed).is_err() {
                        // The epoch stays durable in the journal. The next write transaction
                        // moves it, or the leader when the active epoch fills too: a failure
                        // that lasts then reaches the readers as their error.
                        std::thread::park_timeout(std::time::Duration::from_secs(1));
                    }
                }
                None => std::thread::park_timeout(std::time::Duration::from_millis(100)),
            }
            // A failure to write the mark leaves it behind, which is safe; tried again later.
            let _ = self.mark_trace_head(high_water::TRACE_MARK_EVERY);
        }
        if let Ok(mut m) = self.mover.lock() {
            *m = None;
        }
    }

    /// Moves a sealed epoch into the `AUDIT` table and stores the next epoch as the oldest live
    /// one. Takes no chain lock during the transaction, so the leader goes on syncing; redb
    /// orders it with the writers, and if one of them moved the epoch first (the stored epoch
    /// is no longer `sealed.epoch`) nothing is written.
    fn move_sealed(&self, sealed: &SealedEpoch) -> Result<()> {
        let txn = self.begin_raw_write()?;
        if journal_epoch(&txn.open_table(META)?, self.daemon)? == sealed.epoch {
            let origin = self.trace_origin().0;
            {
                let mut table = txn.open_table(AUDIT)?;
                for r in &sealed.records {
                    table.put((origin, r.seq), stored_trace_row(r)?.as_slice())?;
                }
            }
            if let Some(last) = sealed.records.last() {
                self.set_own_trace_head(&txn, (last.seq, last.hash))?;
            }
            // Even an empty epoch is retired, so the live ones stay the stored one and the next.
            set_journal_epoch(&txn, self.daemon, sealed.epoch.wrapping_add(1))?;
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        self.chain
            .lock()
            .map_err(lock_err)?
            .sealed_moved(sealed.epoch);
        Ok(())
    }

    /// Makes `entry` durable, sharing one journal sync with concurrent callers.
    /// At the host, an emergency access is then indexed for its review (`emergencies`), and a
    /// professional's first access to the dossier notified (`notifications`).
    fn trace_durably(&self, entry: AuditEntry) -> Result<()> {
        let prepared = self.prepare_trace(&entry)?;
        self.audit_commit
            .submit(prepared, &|batch| self.commit_traces(batch))?;
        self.index_host_entry(&entry)
    }

    /// At the host, indexes a durable trace entry of an emergency access for its review
    /// (`emergencies`) and notifies a first access (`notifications`); nothing otherwise (no
    /// write transaction for an access already known).
    fn index_host_entry(&self, entry: &AuditEntry) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        if emergencies::is_emergency(entry) || self.may_be_first_access(entry)? {
            let txn = self.begin_write()?;
            let entries = std::slice::from_ref(entry);
            self.index_own_emergencies(&txn, entries)?;
            self.notify_first_accesses(&txn, self.config.site_id, entries.iter())?;
            txn.commit()?;
        }
        Ok(())
    }

    /// The group commit of traces: chains the batch and makes it durable in the journal. When
    /// the active epoch is full it is sealed for the mover, or, if none runs or it is behind,
    /// everything journaled moves into redb here.
    fn commit_traces(&self, batch: Vec<PreparedTrace>) -> Result<()> {
        let mut chain = self.chain.lock().map_err(lock_err)?;
        let (mut seq, mut prev) = (chain.seq, chain.prev);
        let mut records = Vec::with_capacity(batch.len());
        for p in batch {
            seq += 1;
            let r = p.chain(self.keys.chain.expose(), seq, &prev);
            prev = r.hash;
            records.push(r);
        }
        if chain.is_due(&records) {
            let mover = self.mover.lock().ok().and_then(|m| m.clone());
            match mover.and_then(|m| chain.seal().map(|_| m)) {
                Some(mover) => mover.unpark(),
                None => {
                    // Lock order holds: the chain is locked, redb is locked next.
                    let txn = self.begin_raw_write()?;
                    let moved = self.write_traces(&txn, &chain, &[])?;
                    txn.commit()?;
                    moved.apply(&mut chain, &self.durability)?;
                }
            }
        }
        chain.append(&records)?;
        chain.seq = seq;
        chain.prev = prev;
        chain.pending.extend(records);
        Ok(())
    }

    /// Inserts, in `txn`, the journaled entries then `staged` ones, and advances the journal
    /// epoch when journaled entries moved. Nothing in memory changes until `apply` after commit.
    fn write_traces(
        &self,
        txn: &WriteTransaction,
        chain: &TraceChain,
        staged: &[AuditEntry],
    ) -> Result<TracesWritten> {
        let mut out = TracesWritten {
            seq: chain.seq,
            prev: chain.prev,
            new_epoch: None,
        };
        let journaled = !chain.pending.is_empty() || chain.sealed.is_some();
        if !journaled && staged.is_empty() && !chain.stale_frame {
            return Ok(out);
        }

        let origin = self.trace_origin().0;
        let mut table = txn.open_table(AUDIT)?;
        for r in chain.journaled() {
            table.put((origin, r.seq), stored_trace_row(r)?.as_slice())?;
        }
        for e in staged {
            out.seq += 1;
            let r = self
                .prepare_trace(e)?
                .chain(self.keys.chain.expose(), out.seq, &out.prev);
            out.prev = r.hash;
            table.put((origin, out.seq), stored_trace_row(&r)?.as_slice())?;
        }
        self.set_own_trace_head(txn, (out.seq, out.prev))?;
        if journaled || chain.stale_frame {
            let epoch = chain.epoch.wrapping_add(1);
            set_journal_epoch(txn, self.daemon, epoch)?;
            out.new_epoch = Some(epoch);
        }
        Ok(out)
    }

    /// The origin this replica's own trace chain is stored under: its site id, or at the host
    /// its daemon's (`daemons`).
    fn trace_origin(&self) -> SiteId {
        self.daemon.own_origin(&self.config)
    }

    /// Records this replica's own trace head in `AUDIT_HEADS` and, as its anchor, in `meta`
    /// (`meta_key::TRACE_ANCHOR`, the daemon's own row), which `STATE_MAC` authenticates.
    fn set_own_trace_head(&self, txn: &WriteTransaction, head: (u64, [u8; 32])) -> Result<()> {
        let bytes = postcard::to_stdvec(&head)?;
        txn.open_table(AUDIT_HEADS)?
            .insert(self.trace_origin().0, bytes.as_slice())?;
        txn.open_table(META)?.insert(
            self.daemon.meta_row(meta_key::TRACE_ANCHOR).as_str(),
            bytes.as_slice(),
        )?;
        Ok(())
    }

    /// This replica's own trace must still reach its anchor (`meta_key::TRACE_ANCHOR`): the
    /// entry the anchor names is there with the hash it names, so entries removed from the
    /// end, or the whole trace with its head, are an integrity failure rather than a chain
    /// that starts again at 1. A replica made before the anchor gets it here from its head.
    fn check_trace_anchor(&self) -> Result<()> {
        let own = self.trace_origin().0;
        let (anchor, head) = {
            let txn = self.begin_read()?;
            let anchor = txn
                .open_table(META)?
                .get(self.daemon.meta_row(meta_key::TRACE_ANCHOR).as_str())?;
            let anchor: Option<(u64, [u8; 32])> = anchor
                .map(|v| postcard::from_bytes(v.value()))
                .transpose()?;
            let head = txn.open_table(AUDIT_HEADS)?.get(own)?;
            let head: Option<(u64, [u8; 32])> =
                head.map(|v| postcard::from_bytes(v.value())).transpose()?;
            (anchor, head)
        };
        let Some((at, hash)) = anchor else {
            if let Some(head) = head {
                let txn = self.begin_raw_write()?;
                self.set_own_trace_head(&txn, head)?;
                txn.commit()?;
            }
            return Ok(());
        };
        let (last, last_hash) = head.unwrap_or((0, [0; 32]));
        let reaches = match last.cmp(&at) {
            std::cmp::Ordering::Equal => last_hash == hash,
            std::cmp::Ordering::Greater => self.own_trace_hash(at)? == Some(hash),
            std::cmp::Ordering::Less => false,
        };
        if reaches || at == 0 {
            return Ok(());
        }
        Err(Error::integrity(format!(
            "this replica's trace was cut or rewritten outside Carnet (carnet.redb, table audit): it had reached entry {at}, and {} — restore the data folder from your last backup",
            if last < at {
                format!("its last entry now is {last}")
            } else {
                format!("entry {at} is not the one it recorded")
            }
        )))
    }

    /// Moves journaled trace entries into the `AUDIT` table.
    fn flush_traces(&self) -> Result<()> {
        self.begin_write()?.commit()
    }

    /// Trace entries, decrypted, optionally only those of one dossier, in chain order per origin.
    pub fn audit_entries(&self, ins: Option<&Ins>) -> Result<Vec<ChainedEntry>> {
        self.flush_traces()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (origin, seq) = k.value();
            let e = self.open_trace(origin, seq, v.value())?;
            if ins.is_none_or(|i| e.entry.ins.as_deref() == Some(i.matricule())) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Opens a trace row: its chain hash and the entry's plaintext encoding.
    fn open_trace_row(
        &self,
        origin: u32,
        seq: u64,
        row: &[u8],
    ) -> Result<([u8; 32], Zeroizing<Vec<u8>>)> {
        let stored: StoredTrace = postcard::from_bytes(row)?;
        let plain = self
            .keys
            .audit
            .open(&trace_aad(origin), &stored.sealed)
            .map_err(|_| {
                Error::integrity(format!("trace entry {seq} of site {origin} was altered"))
            })?;
        Ok((stored.hash, plain))
    }

    fn open_trace(&self, origin: u32, seq: u64, row: &[u8]) -> Result<ChainedEntry> {
        let (hash, plain) = self.open_trace_row(origin, seq, row)?;
        Ok(ChainedEntry {
            seq,
            hash,
            entry: postcard::from_bytes(&plain)?,
        })
    }

    /// The last sequence of this replica's own trace chain.
    pub fn trace_head(&self) -> Result<u64> {
        Ok(self.chain.lock().map_err(lock_err)?.seq)
    }

    /// This site's trace entries after `after` (at most `limit`), for pushing to the host.
    pub(crate) fn traces_after(&self, after: u64, limit: usize) -> Result<Vec<TraceRecord>> {
        self.flush_traces()?;
        self.traces_of(self.config.site_id, after, limit)
    }

    /// Host: the entries of `origin`'s trace held here after `after` (at most `limit`), for a
    /// restored site taking its own trace back (`restored`).
    pub(crate) fn traces_of(
        &self,
        origin: SiteId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TraceRecord>> {
        let origin = origin.0;
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table
            .range((origin, after.saturating_add(1))..=(origin, u64::MAX))?
            .take(limit)
        {
            let (k, v) = row?;
            let c = self.open_trace(origin, k.value().1, v.value())?;
            out.push(TraceRecord {
                seq: c.seq,
                hash: c.hash,
                entry: c.entry,
            });
        }
        Ok(out)
    }

    /// Host: the last trace entry of `origin` held here.
    pub(crate) fn trace_mark(&self, origin: SiteId) -> Result<u64> {
        let txn = self.begin_read()?;
        let heads = txn.open_table(AUDIT_HEADS)?;
        let row = heads.get(origin.0)?;
        Ok(match row {
            Some(v) => postcard::from_bytes::<(u64, [u8; 32])>(v.value())?.0,
            None => 0,
        })
    }

    /// Verifies every origin's trace chain. Returns `(origins, entries)` checked.
    pub fn verify_audit(&self) -> Result<(usize, u64)> {
        self.flush_traces()?;
        self.check_trace_anchor()?;
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let heads = txn.open_table(AUDIT_HEADS)?;
        let mut origins: Vec<u32> = Vec::new();
        for row in heads.iter()? {
            origins.push(row?.0.value());
        }
        // Rows of an origin without a head are tampering too.
        for row in table.iter()? {
            let o = row?.0.value().0;
            if !origins.contains(&o) {
                return Err(Error::integrity(format!(
                    "trace entries of site {o} have no chain head"
                )));
            }
        }
        let mut total = 0;
        for &origin in &origins {
            let head: (u64, [u8; 32]) = postcard::from_bytes(
                heads
                    .get(origin)?
                    .ok_or_else(|| Error::integrity("trace head vanished"))?
                    .value(),
            )?;
            let mut decoded = Vec::new();
            for row in table.range((origin, 0)..=(origin, u64::MAX))? {
                let (k, v) = row?;
                let seq = k.value().1;
                let (hash, plain) = self.open_trace_row(origin, seq, v.value())?;
                decoded.push((seq, hash, plain));
            }
            let own = if self.config.role == Role::Host {
                daemons::is_daemon_origin(SiteId(origin))
            } else {
                origin == self.config.site_id.0
            };
            if own {
                total += crate::audit::verify_chain(
                    self.keys.chain.expose(),
                    SiteId(origin),
                    decoded.iter().map(|(s, h, b)| (*s, *h, b.as_slice())),
                    head,
                )?;
            } else if let Some(key) = self.chain_key_of(&txn, SiteId(origin))? {
                // The key the site gave with its trace: its chain verifies here too.
                total += crate::audit::verify_chain(
                    key.expose(),
                    SiteId(origin),
                    decoded.iter().map(|(s, h, b)| (*s, *h, b.as_slice())),
                    head,
                )?;
            } else {
                // A chain stored before its site gave its key: here, every entry opens (the
                // AEAD) and none is missing, from 1 to the head.
                for (n, (seq, _, _)) in (1u64..).zip(&decoded) {
                    if *seq != n {
                        return Err(Error::integrity(format!(
                            "trace of site {origin}: entry {n} is missing"
                        )));
                    }
                }
                if decoded
                    .last()
                    .map(|(s, h, _)| (*s, *h))
                    .unwrap_or((0, [0; 32]))
                    != head
                {
                    return Err(Error::integrity(format!(
                        "trace of site {origin}: the entries do not end at its head"
                    )));
                }
                total += decoded.len() as u64;
            }
        }
        Ok((origins.len(), total))
    }

    // ---- keys ----

    fn dossier_key(
        &self,
        keys: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
        bi: &[u8; 32],
    ) -> Result<Option<Key>> {
        match keys.get(bi)? {
            Some(w) => Ok(Some(
                self.keys
                    .master
                    .read()
                    .map_err(lock_err)?
                    .unwrap_key(&aad(&[b"dossier-key", bi]), w.value())?,
            )),
            None => Ok(None),
        }
    }

    /// Reads again the records kept in memory (the matrix, the refused site certificates),
    /// after a commit that may have admitted one.
    fn reload_held(&self) -> Result<()> {
        let txn = self.begin_read()?;
        let table = txn.open_table(AUTHORITY)?;
        if let Some(Verified {
            record: AuthorityRecord::Matrix(m),
            ..
        }) = self.authority_get(&table, &subject_key(tag::MATRIX, None, None))?
        {
            *self.matrix.write().map_err(lock_err)? = Arc::new(m);
        }
        if let Some(Verified {
            record: AuthorityRecord::RefusedCertificates(r),
            ..
        }) = self.authority_get(&table, &subject_key(tag::REFUSED_CERTIFICATES, None, None))?
        {
            *self.refused_certificates.write().map_err(lock_err)? = Arc::new(r);
        }
        Ok(())
    }

    fn matrix(&self) -> Result<Arc<HabilitationMatrix>> {
        Ok(self.matrix.read().map_err(lock_err)?.clone())
    }
}

/// Where `write_traces` left the chain, to apply once its transaction committed.
struct TracesWritten {
    seq: u64,
    prev: [u8; 32],
    new_epoch: Option<u32>,
}

impl TracesWritten {
    /// Moves the chain in memory after the commit, once that commit is on disk (it may have
    /// left its sync behind it, `deferring_syncs`) if the chain moved: the next entries are
    /// journaled on top of its head, and when journaled entries moved into redb, the journal
    /// region they were in is written again. Until then they exist only there.
    fn apply(self, chain: &mut TraceChain, durability: &backend::Durability) -> Result<()> {
        if self.seq != chain.seq || self.new_epoch.is_some() {
            durability.wait(durability.issued())?;
        }
        chain.seq = self.seq;
        chain.prev = self.prev;
        if let Some(epoch) = self.new_epoch {
            chain.restart(epoch);
        }
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Best effort: the journal is durable anyway and is replayed at the next open.
        let _ = self.flush_traces();
        self.raise_high_water_on_close();
        // The shared snapshot goes before the database it reads (fields drop after this).
        self.view.retire();
    }
}

/// A redb write transaction of the replica: committing it retires the shared read view (see
/// `view`), so no write can leave reads on an older snapshot. `WriteTransaction::commit` takes
/// the transaction by value, so it cannot be reached through `Deref`: this `commit` is the only
/// way to commit.
struct RawWrite<'a> {
    replica: &'a Replica,
    txn: WriteTransaction,
}

impl Deref for RawWrite<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl DerefMut for RawWrite<'_> {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.txn
    }
}

impl RawWrite<'_> {
    /// Commits, then retires the shared read view (even if the commit failed: what it left is
    /// read afresh).
    fn commit(self) -> Result<()> {
        let RawWrite { replica, txn } = self;
        if !replica.state_verified.load(Ordering::SeqCst) {
            // Never authenticate a state that was not found intact at open (the drop of a
            // replica refused at open would otherwise commit over the tampering).
            return Err(Error::integrity(
                "the replica's state was not verified: nothing is written",
            ));
        }
        // The change feed's entries, before `meta` is authenticated (a trim moves its floor).
        let last_change = replica.commit_changes(&txn)?;
        {
            // The guarded tables' digests take this transaction's changes (`row_digest`).
            let mut meta = txn.open_table(META)?;
            for (table, change) in replica.pending_digests.take()? {
                if change == row_digest::RowDigest::default() {
                    continue;
                }
                let row = row_digest::meta_row(&table);
                let mut digest = row_digest::RowDigest::from_bytes(
                    meta.get(row.as_str())?.as_ref().map(|v| v.value()),
                )?;
                digest.add(change);
                meta.insert(row.as_str(), digest.to_bytes().as_slice())?;
            }
            #[cfg(debug_assertions)]
            for (name, computed) in row_digest::all_digests(&replica.keys.rows, &txn)? {
                let stored = row_digest::RowDigest::from_bytes(
                    meta.get(row_digest::meta_row(name).as_str())?
                        .as_ref()
                        .map(|v| v.value()),
                )?;
                assert_eq!(
                    stored, computed,
                    "a write to table {name} bypassed its digest (use Replica::digested)"
                );
            }
            // The clock's progress, in coarse steps so most commits leave `meta` alone.
            let now = replica.now();
            let seen = read_u64(meta.get(meta_key::CLOCK_SEEN)?.as_ref().map(|v| v.value()));
            if replica.config.lease_ms.is_some()
                && now > 0
                && now as u64 >= seen.saturating_add(CLOCK_STEP)
            {
                meta.insert(meta_key::CLOCK_SEEN, (now as u64).to_le_bytes().as_slice())?;
            }
            // `meta` stays authenticated: its hash is written only when a row changed, so a
            // commit that left `meta` alone touches none of its pages.
            let mac = state_mac(&replica.keys.state, &meta)?;
            if meta
                .get(STATE_MAC)?
                .is_none_or(|v| v.value() != mac.as_slice())
            {
                meta.insert(STATE_MAC, mac.as_slice())?;
            }
        }
        // The records this transaction appended, before the index naming them.
        replica.sync_segments()?;
        let committed = if DEFERRING.get() == replica.durability.id() {
            replica.durability.deferring(|| txn.commit())
        } else {
            txn.commit()
        };
        replica.view.retire();
        committed?;
        if let Some(seq) = last_change {
            replica.changes_committed(seq);
        }
        Ok(())
    }

    /// Abandons the transaction.
    fn abort(self) -> Result<()> {
        self.txn.abort()?;
        Ok(())
    }
}

/// A write transaction holding the trace chain: trace entries staged with `trace` are chained
/// and committed with the transaction, after any journaled entries, so the chain stays in order.
struct Writer<'a> {
    replica: &'a Replica,
    chain: MutexGuard<'a, TraceChain>,
    txn: RawWrite<'a>,
    staged: RefCell<Vec<AuditEntry>>,
}

impl Deref for Writer<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl Writer<'_> {
    /// Stages trace entries to commit with this transaction.
    fn trace(&self, entries: Vec<AuditEntry>) {
        self.staged.borrow_mut().extend(entries);
    }

    /// Commits: journaled entries, then staged ones, then the transaction. The chain head in
    /// memory moves only once the commit succeeded.
    fn commit(self) -> Result<()> {
        let Writer {
            replica,
            mut chain,
            txn,
            staged,
        } = self;
        let staged = staged.into_inner();
        replica.index_own_emergencies(&txn, &staged)?;
        replica.notify_first_accesses(&txn, replica.config.site_id, staged.iter())?;
        let written = replica.write_traces(&txn, &chain, &staged)?;
        txn.commit()?;
        written.apply(&mut chain, &replica.durability)
    }

    /// Abandons the transaction and its staged entries.
    fn abort(self) -> Result<()> {
        self.txn.abort()?;
        Ok(())
    }
}

thread_local! {
    /// The replica (`Durability::id`) whose commits on this thread defer their syncs, or 0.
    static DEFERRING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A database and a trace journal on storage backends, and the body segments' files if not in
/// `BODIES` rows (`init_with_backend`, `init_with_backends`).
type Backends = (
    Box<dyn StorageBackend>,
    Box<dyn StorageBackend>,
    Option<Box<dyn SegmentFiles>>,
);

/// Where a replica's database lives.
enum DbStore {
    /// Its file (`carnet.redb` in the data folder, or a staging copy).
    File(PathBuf),
    /// Any redb backend (a simulated disk).
    Backend(Box<dyn StorageBackend>),
    /// A PostgreSQL database.
    Postgres(Postgres),
}

/// Where `create` makes a replica.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// `carnet.redb` and `trace.journal` in the data folder.
    File,
    /// New handles of simulated disks, each time they are needed.
    Backend(&'a dyn Fn() -> Backends),
    /// A PostgreSQL database.
    Postgres(&'a Postgres),
}

impl DbStore {
    fn describe(&self) -> String {
        match self {
            DbStore::File(path) => path.display().to_string(),
            DbStore::Backend(_) => "(on its storage backend)".into(),
            // The address may carry a password: never said.
            DbStore::Postgres(_) => "(in PostgreSQL)".into(),
        }
    }
}

/// Opens (or with `create`, creates) the database over the write-behind backend.
fn open_database(
    store: DbStore,
    create: bool,
    cache_mib: usize,
) -> std::result::Result<(Database, backend::Durability), redb::DatabaseError> {
    let file: Box<dyn StorageBackend> = match store {
        DbStore::Postgres(pg) => {
            let db = crate::kv::pg::PgStore::open_with(&pg.url, pg.read_connections)
                .map_err(redb::DatabaseError::Storage)?;
            return Ok((Database::Pg(db), backend::Durability::immediate()));
        }
        DbStore::File(path) => {
            let file = crate::files::open_private(&path, create)?;
            Box::new(redb::backends::FileBackend::new(file)?)
        }
        DbStore::Backend(b) => b,
    };
    let (backend, durability) = backend::WriteBehind::new(file)?;
    Ok((
        redb::Builder::new()
            .set_cache_size(cache_mib.saturating_mul(1 << 20))
            .create_with_backend(backend)?
            .into(),
        durability,
    ))
}

/// Opens an existing replica's database; a damaged file (truncated, pages altered) is an
/// integrity error saying what to do, never a panic: redb may panic on a file it did not write
/// that way, so the open runs under `catch_unwind`, with the panic message kept off the
/// terminal (the error says it all).
fn open_database_checked(
    store: DbStore,
    dir: &Path,
    cache_mib: usize,
) -> Result<(Database, backend::Durability)> {
    let described = store.describe();
    let damaged = |detail: &str| {
        Error::integrity(format!(
            "the replica's database {described} is damaged ({detail}): nothing was changed; restore the data folder from your last backup (`carnet restore BACKUP`), or ask the host operator to enrol this site again",
        ))
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        open_database(store, false, cache_mib)
    }));
    std::panic::set_hook(hook);
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(Error::Storage(format!(
            "the replica in {} is in use by another process (is carnet-syncd running?)",
            dir.display()
        ))),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)))) => {
            Err(damaged(&detail))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Err(damaged("it ends too early"))
        }
        Ok(Err(other)) => Err(Error::Storage(other.to_string())),
        Err(_) => Err(damaged("its pages do not hold together")),
    }
}

/// The oldest live epoch of `daemon`'s trace journal, as stored in `META`.
fn journal_epoch(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    daemon: daemons::Daemon,
) -> Result<u32> {
    let v = meta.get(daemon.meta_row(meta_key::JOURNAL_EPOCH).as_str())?;
    Ok(read_u64(v.as_ref().map(|g| g.value())) as u32)
}

/// Stores the oldest live epoch of `daemon`'s trace journal, retiring the frames of older ones.
fn set_journal_epoch(txn: &WriteTransaction, daemon: daemons::Daemon, epoch: u32) -> Result<()> {
    txn.open_table(META)?.insert(
        daemon.meta_row(meta_key::JOURNAL_EPOCH).as_str(),
        u64::from(epoch).to_le_bytes().as_slice(),
    )?;
    Ok(())
}

/// The `AUDIT` row of a journaled record.
fn stored_trace_row(r: &JournalRecord) -> Result<Vec<u8>> {
    Ok(postcard::to_stdvec(&StoredTrace {
        hash: r.hash,
        sealed: r.sealed.clone(),
    })?)
}

/// The key of `STATE_MAC`, derived from the registry key (itself wrapped by the master key).
fn state_key(registry: &Key) -> Key {
    registry.derive("carnet 2026-12 replica state")
}

/// The key of the row digests (`row_digest`), derived from the registry key.
fn rows_key(registry: &Key) -> Key {
    registry.derive("carnet 2026-12 row digests")
}

/// Keyed BLAKE3 of every `meta` row but `STATE_MAC`, in key order, each as its length-prefixed
/// key and value.
fn state_mac(
    key: &Key,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new_keyed(key.expose());
    for row in meta.iter()? {
        let (k, v) = row?;
        if k.value() == STATE_MAC {
            continue;
        }
        for part in [k.value().as_bytes(), v.value()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// The blind index of an INS under the index key `index` (`Replica::blind`).
fn ins_index(index: &Key, ins: &Ins) -> [u8; 32] {
    index.blind_index(ins.matricule().as_bytes())
}

/// `Replica::rpps_index` under the index key `index`.
fn rpps_index_under(index: &Key, rpps: &crate::ids::Rpps) -> [u8; 32] {
    index.tagged_index(b"rpps:", rpps.as_str().as_bytes())
}

/// `Replica::unique_index` under the index key `index`.
fn unique_index_under(index: &Key, bi: &[u8; 32], unique_id: &str) -> [u8; 64] {
    let mut tagged = b"unique-id:".to_vec();
    tagged.extend_from_slice(unique_id.as_bytes());
    unique_key(bi, &index.blind_index(&tagged))
}

fn trace_aad(origin: u32) -> Vec<u8> {
    aad(&[b"audit", &origin.to_le_bytes()])
}

/// A trace entry as it travels to the host: its place, its chain hash and the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Sequence in the origin's chain.
    pub seq: u64,
    /// Chain hash (keyed by the origin).
    pub hash: [u8; 32],
    /// The entry.
    pub entry: AuditEntry,
}

/// A trace entry encoded and sealed, waiting for its place in the chain.
struct PreparedTrace {
    bytes: Zeroizing<Vec<u8>>,
    sealed: Vec<u8>,
}

impl PreparedTrace {
    /// Places the entry at `seq` after `prev`.
    fn chain(self, key: &[u8; 32], seq: u64, prev: &[u8; 32]) -> JournalRecord {
        JournalRecord {
            seq,
            hash: crate::audit::chain_hash(key, &self.bytes, prev),
            sealed: self.sealed,
        }
    }
}

/// Associated data of a professional's row in `PROS`: its key.
fn pro_aad(pro: &[u8; 32]) -> Vec<u8> {
    aad(&[b"pro", pro])
}
