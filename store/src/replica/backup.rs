//! Backups: a consistent copy of what a replica's data folder holds sealed, taken while the
//! replica runs (`Replica::backup_to`), and brought back into a new folder (`restore`).
//!
//! The file (`BACKUP_FORMAT` 1), all integers little-endian:
//!
//! ```text
//! 0   8  magic "CARNETBK"
//! 8   4  format (u32)
//! 12  4  site id (u32)
//! 16  1  role (0 host, 1 site)
//! 17  8  taken at (i64, Unix ms)
//! 25  8  content length (u64)
//! 33  32 content hash: BLAKE3 of the content
//! 65  32 MAC: BLAKE3 keyed with a key derived from the replica's registry key, of bytes 0..65
//! 97  content: records, then a 0 byte
//!     table record: 1, name length (u16), name, rows (u64), then per row
//!                   key length (u32), key, value length (u32), value
//!     file record:  2, name length (u16), name, length (u64), bytes
//! ```
//!
//! Invariants:
//! - A backup is read from one redb read transaction, taken right after the trace journal moved
//!   into the database, so it holds one committed state: every table as of that commit. Every
//!   table the database holds is carried; one this build does not list makes the backup fail
//!   rather than leave it out.
//! - It holds what the data folder holds sealed (the database, whose keyring is wrapped by the
//!   master key, with the body chunks, wherever kept, as rows of `bodies`) and the settings
//!   files the caller names (`carnet.toml`: no key, no patient data). Never the master key: a
//!   restore takes it from the operator (the key file kept apart, or the passphrase).
//! - A restore checks the header, the length and the content hash before it writes anything;
//!   it builds the replica in a fresh folder beside the target, opens it with the key, checks
//!   the header's MAC and every trace chain, marks it restored (`Replica::mark_restored`), and
//!   only then moves it into place. A damaged, foreign or wrongly keyed file leaves nothing
//!   behind; a non-empty target folder is never touched.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::kv::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, Value};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Clock, DB_FILE, KEY_FILE, KeySource, Replica, Role};
use crate::crypto::Key as SecretKey;
use crate::error::{Error, Result};
use crate::ids::SiteId;
use crate::time::Millis;

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"CARNETBK";
/// The backup format this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;
/// Bytes before the content.
const HEADER_LEN: usize = 97;
/// Bytes the MAC covers.
const SIGNED_LEN: usize = 65;
const TABLE_RECORD: u8 = 1;
const FILE_RECORD: u8 = 2;
const END: u8 = 0;

/// What a backup holds, as its header and content say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The replica's site id (0: the host).
    pub site_id: SiteId,
    /// Host or site.
    pub role: Role,
    /// When the copy was taken.
    pub taken_at: Millis,
    /// Size of the file.
    pub bytes: u64,
    /// Tables carried.
    pub tables: usize,
    /// Rows carried, all tables together.
    pub rows: u64,
}

/// The fixed header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    format: u32,
    site_id: SiteId,
    role: Role,
    taken_at: Millis,
    content_len: u64,
    content_hash: [u8; 32],
}

impl Header {
    /// Bytes 0..65, the part the MAC covers.
    fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[..8].copy_from_slice(BACKUP_MAGIC);
        b[8..12].copy_from_slice(&self.format.to_le_bytes());
        b[12..16].copy_from_slice(&self.site_id.0.to_le_bytes());
        b[16] = match self.role {
            Role::Host => 0,
            Role::Site => 1,
        };
        b[17..25].copy_from_slice(&self.taken_at.to_le_bytes());
        b[25..33].copy_from_slice(&self.content_len.to_le_bytes());
        b[33..65].copy_from_slice(&self.content_hash);
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Result<(Header, [u8; 32])> {
        if &b[..8] != BACKUP_MAGIC {
            return Err(Error::invalid(
                "this file is not a Carnet backup (made by `carnet backup`)",
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let format = u32_at(8);
        if format != BACKUP_FORMAT {
            return Err(Error::invalid(format!(
                "this backup is in format {format}; this build reads format {BACKUP_FORMAT}{}",
                if format > BACKUP_FORMAT {
                    ": upgrade carnet"
                } else {
                    ""
                }
            )));
        }
        let role = match b[16] {
            0 => Role::Host,
            1 => Role::Site,
            _ => return Err(Error::integrity("the backup header is damaged (role)")),
        };
        let mut content_hash = [0u8; 32];
        content_hash.copy_from_slice(&b[33..65]);
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[65..97]);
        Ok((
            Header {
                format,
                site_id: SiteId(u32_at(12)),
                role,
                taken_at: u64_at(17) as Millis,
                content_len: u64_at(25),
                content_hash,
            },
            mac,
        ))
    }
}

/// Visits every table of the database, each with its types (redb opens a table only with the
/// types it was created with). *Invariant:* lists every `TableDefinition` of `tables`; a
/// backup checks the database holds no other.
pub(super) trait Tables {
    fn table<K: crate::kv::Ordered, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> Result<()>;
}

pub(super) fn each_table(v: &mut impl Tables) -> Result<()> {
    v.table(META)?;
    v.table(AUTHORITY)?;
    v.table(DOSSIER_KEYS)?;
    v.table(TOMBSTONES)?;
    v.table(DOCS)?;
    v.table(DOSSIER_DOCS)?;
    v.table(UNIQUE_IDS)?;
    v.table(BODIES)?;
    v.table(BODY_PLACES)?;
    v.table(PROS)?;
    v.table(AUDIT)?;
    v.table(AUDIT_HEADS)?;
    v.table(OUTBOX)?;
    v.table(SITE_PROS)?;
    v.table(PRO_SITES)?;
    v.table(SCOPE)?;
    v.table(SCOPE_SITES)?;
    v.table(SITE_LOG)?;
    v.table(RETURNED)?;
    v.table(SITE_RECEIPTS)?;
    v.table(PENDING_PURGES)?;
    v.table(LOCAL_DOSSIERS)?;
    v.table(HELD)?;
    v.table(QUARANTINE)?;
    v.table(PARTIAL_BODIES)?;
    v.table(OWED_BODIES)?;
    v.table(MISSING_BODIES)?;
    v.table(CONFLICTS)?;
    v.table(PENDING_GRANTS)?;
    v.table(ANNOUNCEMENTS)?;
    v.table(HIDDEN_DOCS)?;
    v.table(PARTIAL_PROGRESS)?;
    v.table(SITE_REQUESTS)?;
    v.table(SITE_CHAIN_KEYS)?;
    v.table(SITE_SIGNED_HEADS)?;
    v.table(EMERGENCY_SCOPES)?;
    v.table(HOST_CLEARS)?;
    v.table(APPLIED)?;
    v.table(AUTHORITY_HISTORY)?;
    v.table(EMERGENCIES)?;
    v.table(PENDING_EMERGENCIES)?;
    v.table(DOSSIER_EMERGENCIES)?;
    v.table(TRACE_CONTACTS)?;
    v.table(NOTIFICATIONS)?;
    v.table(HELD_NOTIFICATIONS)?;
    v.table(FIRST_ACCESSES)?;
    v.table(OUTBOX_HELD)?;
    v.table(RELAYED_LEASES)?;
    v.table(RELAYED_TRACES)?;
    v.table(CHANGES)?;
    v.table(SITE_LINK_PATHS)?;
    Ok(())
}

/// The content's writer: counts and hashes what it writes.
struct Content<W: Write> {
    out: W,
    hash: blake3::Hasher,
    len: u64,
}

impl<W: Write> Content<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn name(&mut self, tag: u8, name: &str) -> Result<()> {
        let len = u16::try_from(name.len()).map_err(|_| Error::invalid("name too long"))?;
        self.put(&[tag])?;
        self.put(&len.to_le_bytes())?;
        self.put(name.as_bytes())
    }

    fn blob(&mut self, bytes: &[u8]) -> Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| Error::Storage("a row larger than 4 GiB".into()))?;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)
    }
}

/// Writes every table of one read transaction. The chunks kept in segments go with the
/// `bodies` table's rows, as the sealed bytes their locations name (`body_places` is written
/// without rows): a restore writes every one into the new folder's segments (`Load`).
struct Dump<'a, W: Write> {
    replica: &'a Replica,
    txn: &'a crate::kv::ReadTransaction,
    generation: super::Generation,
    out: &'a mut Content<W>,
    names: Vec<String>,
    rows: u64,
}

impl<W: Write> Tables for Dump<'_, W> {
    fn table<K: crate::kv::Ordered, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> Result<()> {
        self.names.push(def.name().to_string());
        if def.name() == BODY_PLACES.name() {
            // Its chunks travel as rows of `bodies`: the restored table is empty.
            self.out.name(TABLE_RECORD, def.name())?;
            return self.out.put(&0u64.to_le_bytes());
        }
        let table = match self.txn.open_table(def) {
            Ok(t) => t,
            // A table this replica never created (an older replica): nothing to carry.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let places = if def.name() == BODIES.name() {
            Some(self.txn.open_table(BODY_PLACES)?)
        } else {
            None
        };
        self.out.name(TABLE_RECORD, def.name())?;
        let rows = table.len()? + places.as_ref().map_or(Ok(0), |p| p.len())?;
        self.out.put(&rows.to_le_bytes())?;
        let mut written = 0u64;
        for row in table.iter()? {
            let (k, v) = row?;
            self.out.blob(K::as_bytes(&k.value()).as_ref())?;
            self.out.blob(V::as_bytes(&v.value()).as_ref())?;
            written += 1;
        }
        if let Some(places) = &places {
            // Each chunk opened: a record damaged between its ends never goes into a backup.
            let docs = self.txn.open_table(DOCS)?;
            for row in places.iter()? {
                let (k, at) = row?;
                let chunk = self.replica.opened_chunk_at(
                    self.txn,
                    self.generation,
                    &docs,
                    k.value(),
                    at.value(),
                )?;
                self.out.blob(k.value())?;
                self.out.blob(&chunk)?;
                written += 1;
            }
        }
        if written != rows {
            return Err(Error::Storage(format!(
                "table {} changed while it was copied",
                def.name()
            )));
        }
        self.rows += rows;
        Ok(())
    }
}

impl Replica {
    /// Writes a consistent copy of this replica to `out` (mode 0600, written beside it and
    /// renamed into place once complete), with the settings files of the data folder named in
    /// `settings` (absent ones are skipped). Runs while the replica serves: one read
    /// transaction, taken once the trace journal moved into the database.
    pub fn backup_to(&self, out: &Path, settings: &[&str]) -> Result<BackupInfo> {
        if self.db.as_redb().is_none() {
            return Err(Error::invalid(
                "this host keeps its tables in PostgreSQL: back it up with the database's own \
                 tools (pg_dump, or the engine's backups) and keep a copy of its master.key; \
                 `carnet backup` copies a replica kept in its redb file",
            ));
        }
        let partial = sibling(out, "partial")?;
        let result = self.write_backup(&partial, settings);
        match result {
            Ok(info) => {
                fs::rename(&partial, out).map_err(|e| {
                    let _ = fs::remove_file(&partial);
                    Error::Storage(format!("cannot write {}: {e}", out.display()))
                })?;
                if let Some(parent) = out.parent() {
                    super::sync_dir(parent);
                }
                Ok(info)
            }
            Err(e) => {
                let _ = fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    fn write_backup(&self, path: &Path, settings: &[&str]) -> Result<BackupInfo> {
        let file = crate::files::open_private(path, true)
            .map_err(|e| Error::Storage(format!("cannot write {}: {e}", path.display())))?;
        file.set_len(0)?;
        let mut content = Content {
            out: BufWriter::new(file),
            hash: blake3::Hasher::new(),
            len: 0,
        };
        content.out.write_all(&[0u8; HEADER_LEN])?;
        // The journal's entries first, then one snapshot of everything.
        self.flush_traces()?;
        let taken_at = self.now();
        let (txn, generation) = self.snapshot()?;
        let mut dump = Dump {
            replica: self,
            txn: &txn,
            generation,
            out: &mut content,
            names: Vec::new(),
            rows: 0,
        };
        each_table(&mut dump)?;
        let (names, rows) = (dump.names, dump.rows);
        let redb = txn
            .as_redb()
            .ok_or_else(|| Error::invalid("only a replica in a redb file has this"))?;
        for table in redb.list_tables()? {
            if !names.iter().any(|n| n == table.name()) {
                return Err(Error::Storage(format!(
                    "the database holds a table this build does not back up ({}): nothing written",
                    table.name()
                )));
            }
        }
        drop(txn);
        for name in settings {
            match fs::read(self.dir.join(name)) {
                Ok(bytes) => {
                    content.name(FILE_RECORD, name)?;
                    content.put(&(bytes.len() as u64).to_le_bytes())?;
                    content.put(&bytes)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        content.put(&[END])?;
        let header = Header {
            format: BACKUP_FORMAT,
            site_id: self.config.site_id,
            role: self.config.role,
            taken_at,
            content_len: content.len,
            content_hash: *content.hash.finalize().as_bytes(),
        };
        let signed = header.signed_bytes();
        let mut file = content
            .out
            .into_inner()
            .map_err(|e| Error::Storage(e.to_string()))?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&signed)?;
        file.write_all(&self.backup_mac(&signed))?;
        file.sync_all()?;
        Ok(BackupInfo {
            site_id: header.site_id,
            role: header.role,
            taken_at,
            bytes: HEADER_LEN as u64 + header.content_len,
            tables: names.len(),
            rows,
        })
    }

    /// The MAC of a backup header, keyed under this replica's keys.
    fn backup_mac(&self, signed: &[u8]) -> [u8; 32] {
        let key = self.keys.registry.derive("carnet 2026-12 backup header");
        *blake3::keyed_hash(key.expose(), signed).as_bytes()
    }
}

/// A path beside `path`: `.NAME.WHAT-RANDOM`.
pub(super) fn sibling(path: &Path, what: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{} is not a file name", path.display())))?
        .to_string_lossy();
    let mut r = [0u8; 6];
    crate::crypto::random_bytes(&mut r)?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Ok(path.with_file_name(format!(".{name}.{what}-{hex}")))
}

/// Reads a backup's header and checks its length and content hash (nothing is written).
pub fn inspect(file: &Path) -> Result<BackupInfo> {
    Ok(check_file(file)?.0.info(0, 0))
}

impl Header {
    fn info(&self, tables: usize, rows: u64) -> BackupInfo {
        BackupInfo {
            site_id: self.site_id,
            role: self.role,
            taken_at: self.taken_at,
            bytes: HEADER_LEN as u64 + self.content_len,
            tables,
            rows,
        }
    }
}

fn open_backup(file: &Path) -> Result<File> {
    File::open(file).map_err(|e| Error::invalid(format!("cannot read {}: {e}", file.display())))
}

/// The header, its MAC and its signed bytes, once the file's length and content hash check.
fn check_file(file: &Path) -> Result<(Header, [u8; 32], [u8; SIGNED_LEN])> {
    let mut f = open_backup(file)?;
    let size = f.metadata()?.len();
    let mut raw = [0u8; HEADER_LEN];
    if size < HEADER_LEN as u64 {
        return Err(Error::invalid(format!(
            "{} is not a Carnet backup, or is cut short: {size} bytes",
            file.display()
        )));
    }
    f.read_exact(&mut raw)?;
    let (header, mac) = Header::decode(&raw)?;
    if size != HEADER_LEN as u64 + header.content_len {
        return Err(Error::integrity(format!(
            "the backup {} is damaged: {size} bytes where its header says {} (cut short or grown)",
            file.display(),
            HEADER_LEN as u64 + header.content_len
        )));
    }
    let mut hash = blake3::Hasher::new();
    std::io::copy(&mut BufReader::new(f), &mut hash)?;
    if *hash.finalize().as_bytes() != header.content_hash {
        return Err(Error::integrity(format!(
            "the backup {} is damaged: its content does not match its hash",
            file.display()
        )));
    }
    let signed = header.signed_bytes();
    Ok((header, mac, signed))
}

/// Reads the content, bounded by what the header says is left.
struct Records<R: Read> {
    input: R,
    left: u64,
}

impl<R: Read> Records<R> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > self.left {
            return Err(Error::integrity("the backup's content is malformed"));
        }
        self.left -= n;
        let mut b = vec![0u8; n as usize];
        self.input.read_exact(&mut b)?;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(&b);
        Ok(u64::from_le_bytes(x))
    }

    fn blob(&mut self) -> Result<Vec<u8>> {
        let b = self.bytes(4)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.bytes(u64::from(n))
    }

    fn name(&mut self) -> Result<String> {
        let b = self.bytes(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]);
        String::from_utf8(self.bytes(u64::from(n))?)
            .map_err(|_| Error::integrity("the backup's content is malformed"))
    }
}

/// Loads one table record into a write transaction, by its name; the rows of `bodies` go to
/// the new folder's segments, `BODY_PLACES` naming them, as a live replica keeps its bodies.
struct Load<'a, R: Read> {
    txn: &'a crate::kv::WriteTransaction,
    segments: &'a crate::segments::Segments,
    records: &'a mut Records<R>,
    name: String,
    found: bool,
    rows: u64,
}

impl<R: Read> Tables for Load<'_, R> {
    fn table<K: crate::kv::Ordered, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> Result<()> {
        if self.found || def.name() != self.name {
            return Ok(());
        }
        self.found = true;
        let rows = self.records.u64()?;
        if def.name() == BODIES.name() {
            self.txn.open_table(BODIES)?;
            let mut places = self.txn.open_table(BODY_PLACES)?;
            for _ in 0..rows {
                let (k, v) = (self.records.blob()?, self.records.blob()?);
                let at = self.segments.append(&v)?;
                places.insert(k.as_slice(), at.encode().as_slice())?;
            }
            self.rows += rows;
            return Ok(());
        }
        let mut table = self.txn.open_table(def)?;
        for _ in 0..rows {
            let k = self.records.blob()?;
            let v = self.records.blob()?;
            check_decodable::<K>(&k)?;
            check_decodable::<V>(&v)?;
            table.insert(K::from_bytes(&k), V::from_bytes(&v))?;
        }
        self.rows += rows;
        Ok(())
    }
}

/// The bytes must be a `T` redb decodes without panicking (`kv::decodable`: a fixed-width
/// type's width, a string's UTF-8).
pub(super) fn check_decodable<T: Value>(bytes: &[u8]) -> Result<()> {
    if crate::kv::decodable::<T>(bytes) {
        Ok(())
    } else {
        Err(Error::integrity("the backup's content is malformed"))
    }
}

/// Settings files a backup may bring back: plain names, none of the replica's own files.
fn settings_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && ![DB_FILE, KEY_FILE, super::journal::JOURNAL_FILE].contains(&name)
}

/// Brings the backup `file` back as a new replica in `dir`, which must not exist or be an empty
/// folder. The master key comes from `source`: with a key file, `key_file` is that file (kept
/// apart from the data, never in a backup), copied into the new folder; with a passphrase,
/// the passphrase. Checks everything before the folder appears (module documentation); a site
/// is marked restored, so its first round catches up with what the host holds of it.
pub fn restore(
    file: &Path,
    dir: &Path,
    source: &KeySource,
    key_file: Option<&Path>,
    clock: Clock,
) -> Result<BackupInfo> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::invalid(format!(
                    "{} is not empty: a restore goes into a new or empty folder, never over a replica",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::invalid(format!(
                "cannot use {} as the data folder: {e}",
                dir.display()
            )));
        }
    }
    if matches!(source, KeySource::File) && key_file.is_none() {
        return Err(Error::Key(
            "a restore needs the master key, which no backup holds: pass --key-file with the \
             master.key kept apart from the data (or set CARNET_PASSPHRASE for a replica \
             protected by a passphrase)"
                .into(),
        ));
    }
    let key = key_file
        .map(|path| {
            super::read_key_file(path).map_err(|_| {
                Error::Key(format!(
                    "{} is not a Carnet key file (64 hex digits, as `carnet init` writes master.key)",
                    path.display()
                ))
            })
        })
        .transpose()?;
    let (header, mac, signed) = check_file(file)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)?;
    let staging = sibling(dir, "restoring")?;
    crate::files::private_dir(&staging)?;
    let built = build(
        file,
        &staging,
        &header,
        (&mac, &signed),
        key.as_ref(),
        source,
        clock,
    );
    match built {
        Ok(info) => {
            if dir.exists() {
                fs::remove_dir(dir)?;
            }
            fs::rename(&staging, dir).inspect_err(|_| {
                let _ = fs::remove_dir_all(&staging);
            })?;
            super::sync_dir(&parent);
            Ok(info)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Builds the replica of `file` in `staging` and checks it (see `restore`).
fn build(
    file: &Path,
    staging: &Path,
    header: &Header,
    (mac, signed): (&[u8; 32], &[u8; SIGNED_LEN]),
    key: Option<&SecretKey>,
    source: &KeySource,
    clock: Clock,
) -> Result<BackupInfo> {
    let mut input = BufReader::new(open_backup(file)?);
    input.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    let mut records = Records {
        input,
        left: header.content_len,
    };
    let (mut tables, mut rows) = (0, 0);
    {
        let (db, _) = super::open_database(
            super::DbStore::File(staging.join(DB_FILE)),
            true,
            super::DEFAULT_CACHE_MIB,
        )?;
        let segments =
            crate::segments::Segments::in_folder(&staging.join(crate::segments::SEGMENTS_DIR))?;
        let txn = db.begin_write()?;
        loop {
            match records.u8()? {
                END => break,
                TABLE_RECORD => {
                    let mut load = Load {
                        txn: &txn,
                        segments: &segments,
                        name: records.name()?,
                        records: &mut records,
                        found: false,
                        rows: 0,
                    };
                    each_table(&mut load)?;
                    if !load.found {
                        return Err(Error::invalid(format!(
                            "the backup holds a table this build does not know ({}): restore it with the Carnet that took it, or a newer one",
                            load.name
                        )));
                    }
                    tables += 1;
                    rows += load.rows;
                }
                FILE_RECORD => {
                    let name = records.name()?;
                    let len = records.u64()?;
                    let bytes = records.bytes(len)?;
                    if !settings_name_ok(&name) {
                        return Err(Error::integrity("the backup's content is malformed"));
                    }
                    crate::files::write_private(&staging.join(&name), &bytes)?;
                }
                _ => return Err(Error::integrity("the backup's content is malformed")),
            }
        }
        if records.left != 0 {
            return Err(Error::integrity("the backup's content is malformed"));
        }
        // The body records before the locations naming them.
        segments.sync()?;
        txn.commit()?;
    }
    if let Some(key) = key {
        super::write_key_file(&staging.join(KEY_FILE), key)?;
    }
    let replica = Replica::open(staging, source, clock)?;
    if replica.backup_mac(signed) != *mac {
        return Err(Error::integrity(
            "the backup's header does not match its replica's keys: it was altered, or another replica's header was put on it",
        ));
    }
    if (replica.config.site_id, replica.config.role) != (header.site_id, header.role) {
        return Err(Error::integrity(
            "the backup's header names another replica than the one it holds",
        ));
    }
    replica.verify_audit()?;
    replica.mark_restored(header.taken_at)?;
    // The one sanctioned rollback: the high-water mark outside the folder (when
    // `CARNET_HIGH_WATER` names one) follows the restored replica.
    super::high_water::reset_high_water_from_env(&replica)?;
    Ok(header.info(tables, rows))
}
