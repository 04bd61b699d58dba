//! `keys rotate --full`: every key of a replica replaced, so that the old master key, with any
//! copy of the folder taken before, opens nothing in the rotated folder.
//!
//! A plain rotation (`Replica::rotate_master_key`) re-wraps the replica's keys under a new
//! master key: the index, registry, audit and dossier keys stay, so a leaked master key and an
//! older copy of the folder still open what is written afterwards. A full rotation draws new
//! index, registry and audit keys and a new data key for every dossier, seals every sealed value
//! again under the new keys (with the associated data its table gives it, naming the row under
//! its new key), computes every keyed table key again (blind indexes of INS, `rpps_index`,
//! stored document ids (`doc_map`), producers' unique ids), and writes `STATE_MAC`, the row
//! digests and the high-water mark again.
//!
//! Kept: the host's signing key and the pinned host key (wrapped again), the site's identity
//! (certificates and keys, sealed settings opened and sealed again), and the trace *chain key*:
//! the host checks this replica's chain under the key it was given, so the chain hashes and the
//! key stay; from the first full rotation the chain key is kept wrapped in `meta`
//! (`meta_key::CHAIN_KEY`) instead of being derived from the audit key.
//!
//! Crash safety: the re-keyed database is written into a fresh file beside the live one
//! (`REKEY_FILE`; the freed pages of the old file keep no old ciphertext in the live file), with
//! the new key file (`master.key.new`) and, when `CARNET_HIGH_WATER` names one, the new mark
//! (`high_water::rekeyed_mark`), each synced. Then the trace journal (all of it already in the
//! database) is removed and `REKEY_FILE` is renamed over `carnet.redb`: that rename is the
//! commit point. Before it, the old replica opens with the old key (`Replica::open` removes a
//! leftover `REKEY_FILE`); after it, the new one opens with the new key (`Replica::master_key`
//! finds `master.key.new`, `read_mark` the new mark, if their renames did not happen).
//!
//! Invariants:
//! - Every table is visited through `backup::each_table`, which lists them all; a table the
//!   database holds and the walk does not list, or a table or `meta` row without a rule here,
//!   refuses the rotation. One function per table says what its rows become.
//! - A row naming a dossier, professional or document this replica cannot name again (no INS,
//!   RPPS or id to compute its new index from) refuses the rotation, except in the host's
//!   change logs (see `site_log`). A refused rotation changes nothing.
//! - Refused while the replica is restoring (`restored`), and while another process holds it
//!   (the daemon: redb's lock).
//!
//! Cost: every sealed value is opened and sealed once, in one write transaction of a new file;
//! the maps of old to new indexes hold one entry per dossier, professional and document.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::kv::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, Value};
use serde::{Deserialize, Serialize};

use super::backup::{Tables, check_decodable, each_table};
use super::doc_map::DocMap;
use super::documents::{body_aad, meta_aad};
use super::high_water::{Mark, mark_aad, mark_from_env, mark_key, rekeyed_mark};
use super::local_dossiers::{held_aad, local_aad};
use super::quarantine::reseal_quarantine_row;
use super::site_traces::chain_key_aad;
use super::sync::{Queued, act_aad, outbox_aad, piece_aad};
use super::tables::*;
use super::{
    CHAIN_KEY_AAD, CHECK_STATE, Clock, DB_FILE, KEY_CHECK, KEY_FILE, KEY_FILE_NEW, KeyKind,
    KeySource, Keyring, Replica, STATE_MAC, ins_index, lock_err, open_database, pro_aad, rows_key,
    rpps_index_under, state_key, state_mac, sync_dir, trace_aad, unique_index_under,
    write_key_file,
};
use crate::crypto::{Key, aad};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, Rpps};

/// The re-keyed database while it is written, beside `carnet.redb`.
pub const REKEY_FILE: &str = "carnet.redb.rekey";

/// What a full rotation re-keyed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyReport {
    /// Dossiers given a new data key.
    pub dossiers: u64,
    /// Documents whose metadata was sealed again.
    pub documents: u64,
    /// Body chunks sealed again.
    pub body_chunks: u64,
    /// Signed host records sealed again.
    pub signed_records: u64,
    /// Professionals sealed again.
    pub professionals: u64,
    /// Trace entries sealed again (their chain hashes unchanged).
    pub traces: u64,
    /// Rows written, all tables together.
    pub rows: u64,
    /// Tables visited.
    pub tables: usize,
}

/// Opens the replica in `dir` with `source` (and the high-water mark `CARNET_HIGH_WATER`
/// names), then rotates it fully to `new_source` (`Replica::rotate_full`).
pub fn rotate_full(
    dir: &Path,
    source: &KeySource,
    new_source: &KeySource,
    clock: Clock,
) -> Result<RekeyReport> {
    let replica = Replica::open(dir, source, clock)?;
    super::check_high_water_from_env(&replica)?;
    let (_rotated, report) = replica.rotate_full(new_source)?;
    Ok(report)
}

/// The keys of the rotated replica.
struct NewKeys {
    master: Key,
    kind: KeyKind,
    index: Key,
    registry: Key,
    audit: Key,
    /// Stored document ids under the new index key.
    docs: DocMap,
}

/// What the rotation staged beside the live replica (module documentation).
pub(super) struct Staged {
    report: RekeyReport,
    mark: Option<PathBuf>,
}

impl Replica {
    /// Replaces every key of this replica (module documentation) and returns it opened with
    /// `new_source`. On an error before the commit point nothing changed and the old key still
    /// opens the replica.
    pub fn rotate_full(self, new_source: &KeySource) -> Result<(Replica, RekeyReport)> {
        let staged = self.stage_rekey(new_source)?;
        self.install_rekey(staged, new_source)
    }

    /// Writes the re-keyed database, the new key file and the new mark beside the live files;
    /// on failure removes them again. The live replica is unchanged.
    pub(super) fn stage_rekey(&self, new_source: &KeySource) -> Result<Staged> {
        if self.db.as_redb().is_none() {
            return Err(Error::invalid(
                "this host keeps its tables in PostgreSQL, which a full key rotation does not \
                 re-key yet: nothing was changed",
            ));
        }
        if self.restoring.load(Ordering::SeqCst) {
            return Err(Error::invalid(
                "this replica is restoring from a backup: let its first round with the host finish (carnet sync now), then rotate",
            ));
        }
        // A mark the environment names is checked (and so kept) even by a caller that opened
        // the replica without it: the rotation must write its successor.
        let unchecked = self.high_water.lock().map_err(lock_err)?.is_none();
        if unchecked && let Some(path) = mark_from_env() {
            self.check_high_water(&path)?;
        }
        self.flush_traces()?;
        let (master, kind) = match new_source {
            KeySource::File => (Key::random()?, KeyKind::File),
            KeySource::Passphrase(p) => KeyKind::new_passphrase(p)?,
        };
        let index = Key::random()?;
        let new = NewKeys {
            master,
            kind,
            docs: DocMap::new(&index),
            index,
            registry: Key::random()?,
            audit: Key::random()?,
        };
        let mark = self
            .high_water
            .lock()
            .map_err(lock_err)?
            .as_ref()
            .map(|m| m.path().to_path_buf());
        let path = self.dir.join(REKEY_FILE);
        let staged = (|| {
            remove_if_present(&path)?;
            let report = self.write_rekeyed(&path, &new)?;
            if matches!(new_source, KeySource::File) {
                write_key_file(&self.dir.join(KEY_FILE_NEW), &new.master)?;
            }
            if let Some(mark) = &mark {
                let next_mark = Mark {
                    epoch: self.open_epoch()? + 1,
                    trace_seq: self.trace_head_for_mark()?,
                };
                let sealed = mark_key(&new.registry).seal(
                    &mark_aad(&self.config, self.daemon_number()),
                    &next_mark.to_bytes(),
                )?;
                let next = rekeyed_mark(mark);
                crate::files::write_private(&next, &sealed)?;
                fs::File::open(&next)?.sync_all()?;
            }
            sync_dir(&self.dir);
            Ok(report)
        })();
        match staged {
            Ok(report) => Ok(Staged { report, mark }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(self.dir.join(KEY_FILE_NEW));
                if let Some(mark) = &mark {
                    let _ = fs::remove_file(rekeyed_mark(mark));
                }
                Err(e)
            }
        }
    }

    /// Moves the staged files into place (the database first: the commit point), closes this
    /// replica and opens the rotated one.
    fn install_rekey(
        self,
        staged: Staged,
        new_source: &KeySource,
    ) -> Result<(Replica, RekeyReport)> {
        let (dir, clock) = (self.dir.clone(), self.clock.clone());
        // This replica's close must not raise the old mark: the new one replaces it.
        self.high_water.lock().map_err(lock_err)?.take();
        // Every journaled entry is in the database (`stage_rekey` flushed them, and nothing
        // ran since: `self` is owned here); its frames are sealed under the old audit key.
        remove_if_present(&dir.join(super::journal::JOURNAL_FILE))?;
        fs::rename(dir.join(REKEY_FILE), dir.join(DB_FILE))?;
        sync_dir(&dir);
        match new_source {
            KeySource::File => fs::rename(dir.join(KEY_FILE_NEW), dir.join(KEY_FILE))?,
            KeySource::Passphrase(_) => remove_if_present(&dir.join(KEY_FILE))?,
        }
        sync_dir(&dir);
        drop(self);
        let replica = Replica::open(&dir, new_source, clock)?;
        if let Some(mark) = &staged.mark {
            // Takes the new mark (`read_mark`) and raises it past the rotated folder.
            replica.check_high_water(mark)?;
        }
        Ok((replica, staged.report))
    }

    /// Writes every table of one snapshot of this replica, re-keyed under `new`, into a new
    /// database at `path`, with its row digests and `STATE_MAC`, durably.
    fn write_rekeyed(&self, path: &Path, new: &NewKeys) -> Result<RekeyReport> {
        let src = self.begin_read()?;
        let maps = Maps::collect(self, &src, new)?;
        let (db, _) = open_database(
            super::DbStore::File(path.to_path_buf()),
            true,
            super::DEFAULT_CACHE_MIB,
        )?;
        let dst = db.begin_write()?;
        let mut walk = Rekey {
            old: self,
            new,
            maps: &maps,
            src: &src,
            dst: &dst,
            names: Vec::new(),
            report: RekeyReport::default(),
        };
        each_table(&mut walk)?;
        let redb = src
            .as_redb()
            .ok_or_else(|| Error::invalid("only a replica in a redb file has this"))?;
        for table in redb.list_tables()? {
            if !walk.names.iter().any(|n| n == table.name()) {
                return Err(Error::Storage(format!(
                    "the database holds a table this build does not re-key ({}): nothing was changed",
                    table.name()
                )));
            }
        }
        let mut report = walk.report;
        report.tables = walk.names.len();
        {
            let mut meta = dst.open_table(META)?;
            meta.insert(
                meta_key::CHANGES_FLOOR,
                super::changes::head_in(&src)?.to_le_bytes().as_slice(),
            )?;
            meta.insert(
                meta_key::KEYRING,
                postcard::to_stdvec(&self.rekeyed_keyring(&src, new)?)?.as_slice(),
            )?;
            meta.insert(
                meta_key::CHAIN_KEY,
                new.master.wrap(CHAIN_KEY_AAD, &self.keys.chain)?.as_slice(),
            )?;
        }
        let digests = super::row_digest::all_digests(&rows_key(&new.registry), &dst)?;
        {
            let mut meta = dst.open_table(META)?;
            for (name, digest) in digests {
                meta.insert(
                    super::row_digest::meta_row(name).as_str(),
                    digest.to_bytes().as_slice(),
                )?;
            }
            meta.insert(meta_key::ROW_DIGESTS, [1u8].as_slice())?;
            let mac = state_mac(&state_key(&new.registry), &meta)?;
            meta.insert(STATE_MAC, mac.as_slice())?;
        }
        dst.commit()?;
        Ok(report)
    }

    /// The keyring of the rotated replica: the new keys wrapped under the new master key, the
    /// host's signing key and the pinned host key kept.
    fn rekeyed_keyring(&self, src: &ReadTransaction, new: &NewKeys) -> Result<Keyring> {
        let old: Keyring = postcard::from_bytes(
            src.open_table(META)?
                .get(meta_key::KEYRING)?
                .ok_or_else(|| Error::integrity("keyring missing"))?
                .value(),
        )?;
        let signing = match &old.signing {
            Some(w) => {
                let k = self
                    .keys
                    .master
                    .read()
                    .map_err(lock_err)?
                    .unwrap_key(b"signing", w)?;
                Some(serde_bytes::ByteBuf::from(new.master.wrap(b"signing", &k)?))
            }
            None => None,
        };
        Ok(Keyring {
            kind: new.kind.clone(),
            check: new.master.seal(CHECK_STATE, KEY_CHECK)?,
            index: new.master.wrap(b"index", &new.index)?,
            registry: new.master.wrap(b"registry", &new.registry)?,
            audit: new.master.wrap(b"audit", &new.audit)?,
            signing,
            host_key: old.host_key,
        })
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes a re-keyed database left by a rotation that stopped before its commit point (called
/// by `Replica::open` once it holds the live database, so never under a running rotation).
pub(super) fn remove_leftover(dir: &Path) -> Result<()> {
    remove_if_present(&dir.join(REKEY_FILE))
}

fn ins_from(plain: &[u8]) -> Result<Ins> {
    Ins::parse(std::str::from_utf8(plain).map_err(|_| Error::integrity("a sealed INS"))?)
}

/// Old keyed values and the new ones, gathered from one snapshot before any row is written.
#[derive(Default)]
struct Maps {
    /// Old blind index → new blind index.
    dossiers: HashMap<[u8; 32], [u8; 32]>,
    /// Old blind index → (old data key, new data key).
    data_keys: HashMap<[u8; 32], (Key, Key)>,
    /// Old `rpps_index` → new one.
    pros: HashMap<[u8; 32], [u8; 32]>,
    /// Document id → its dossier's old blind index.
    docs: HashMap<[u8; 16], [u8; 32]>,
}

impl Maps {
    /// Every INS, RPPS and document id the snapshot names, with their old and new indexes, and
    /// each dossier's data key with a new one drawn.
    fn collect(old: &Replica, src: &ReadTransaction, new: &NewKeys) -> Result<Maps> {
        let mut maps = Maps::default();
        let registry = &old.keys.registry;
        for row in src.open_table(AUTHORITY)?.iter()? {
            let (k, v) = row?;
            let signed = old.open_signed(k.value(), v.value())?;
            let record = crate::authority::decode(&signed)?.record;
            if let Some(ins) = record.ins() {
                maps.ins(old, new, ins);
            }
            if let crate::authority::AuthorityRecord::Grant(g) = &record {
                maps.rpps(old, new, &g.rpps);
            }
        }
        for row in src.open_table(PROS)?.iter()? {
            let (k, v) = row?;
            let p = old.open_professional(k.value(), v.value())?;
            maps.rpps(old, new, &p.rpps);
        }
        for row in src.open_table(TOMBSTONES)?.iter()? {
            let (k, v) = row?;
            let t: Tombstone = postcard::from_bytes(v.value())?;
            let plain = registry
                .open(&tombstone_aad(k.value()), &t.sealed_ins)
                .map_err(|_| Error::integrity("a tombstone was altered"))?;
            maps.ins(old, new, &ins_from(&plain)?);
        }
        for row in src.open_table(LOCAL_DOSSIERS)?.iter()? {
            let (k, v) = row?;
            let plain = registry
                .open(&local_aad(k.value()), v.value())
                .map_err(|_| Error::integrity("a dossier opened here was altered"))?;
            let proposal: super::Proposal = postcard::from_bytes(&plain)?;
            maps.ins(old, new, &proposal.head.ins);
        }
        for row in src.open_table(PENDING_PURGES)?.iter()? {
            let (k, v) = row?;
            let plain = registry
                .open(&pending_purge_aad(k.value()), v.value())
                .map_err(|_| Error::integrity("a pending purge was altered"))?;
            maps.ins(old, new, &ins_from(&plain)?);
        }
        match src.open_table(SITE_REQUESTS) {
            Ok(table) => {
                for row in table.iter()? {
                    let (k, v) = row?;
                    let plain = registry
                        .open(&aad(&[b"site-request", k.value()]), v.value())
                        .map_err(|_| Error::integrity("a site request was altered"))?;
                    let request: super::SiteRequest = postcard::from_bytes(&plain)?;
                    maps.ins(old, new, &request.ins);
                    if let Some(rpps) = &request.rpps {
                        maps.rpps(old, new, rpps);
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let master = old.keys.master.read().map_err(lock_err)?;
        for row in src.open_table(DOSSIER_KEYS)?.iter()? {
            let (k, v) = row?;
            let bi = *k.value();
            let key = master.unwrap_key(&aad(&[b"dossier-key", &bi]), v.value())?;
            maps.data_keys.insert(bi, (key, Key::random()?));
        }
        for row in src.open_table(DOCS)?.iter()? {
            let (k, v) = row?;
            let id = old.doc_id(k.value());
            let stored: StoredDoc = postcard::from_bytes(v.value())?;
            maps.docs.insert(id.0, stored.dossier);
        }
        Ok(maps)
    }

    fn ins(&mut self, old: &Replica, new: &NewKeys, ins: &Ins) {
        self.dossiers
            .insert(ins_index(&old.keys.index, ins), ins_index(&new.index, ins));
    }

    fn rpps(&mut self, old: &Replica, new: &NewKeys, rpps: &Rpps) {
        self.pros.insert(
            rpps_index_under(&old.keys.index, rpps),
            rpps_index_under(&new.index, rpps),
        );
    }
}

/// A part of a composite table key: bytes kept as they are, a blind index, an `rpps_index`, a
/// stored document id.
#[derive(Debug, Clone, Copy)]
enum Part {
    Same(usize),
    Dossier,
    Pro,
    Doc,
}

use Part::{Doc, Dossier, Pro, Same};

/// The walk over every table (`each_table`), writing each row re-keyed into `dst`.
struct Rekey<'a> {
    old: &'a Replica,
    new: &'a NewKeys,
    maps: &'a Maps,
    src: &'a ReadTransaction,
    dst: &'a crate::kv::WriteTransaction,
    names: Vec<String>,
    report: RekeyReport,
}

type Row = (Vec<u8>, Vec<u8>);

impl Tables for Rekey<'_> {
    fn table<K: crate::kv::Ordered, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> Result<()> {
        self.names.push(def.name().to_string());
        if def.name() == BODY_PLACES.name() {
            return self.body_places();
        }
        let mut dst = self.dst.open_table(def)?;
        let src = match self.src.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for row in src.iter()? {
            let (k, v) = row?;
            let k = K::as_bytes(&k.value()).as_ref().to_vec();
            let v = V::as_bytes(&v.value()).as_ref().to_vec();
            let Some((k, v)) = self.row(def.name(), &k, &v)? else {
                continue;
            };
            check_decodable::<K>(&k)?;
            check_decodable::<V>(&v)?;
            dst.insert(K::from_bytes(&k), V::from_bytes(&v))?;
            self.report.rows += 1;
        }
        Ok(())
    }
}

impl Rekey<'_> {
    /// The chunks kept in segments, read, sealed again and written as `bodies` rows: the
    /// rotated replica holds them in its database, and its open removes the segments nothing
    /// names any more (`bodies`).
    fn body_places(&mut self) -> Result<()> {
        self.dst.open_table(BODY_PLACES)?;
        let mut dst = self.dst.open_table(BODIES)?;
        let src = self.src.open_table(BODY_PLACES)?;
        for row in src.iter()? {
            let (k, at) = row?;
            let sealed = self.old.chunk_at(at.value())?;
            let (k, v) = self.bodies(k.value(), &sealed)?;
            dst.insert(k.as_slice(), v.as_slice())?;
            self.report.rows += 1;
        }
        Ok(())
    }

    /// What row `(k, v)` of `table` becomes (`None`: dropped, written again at the end).
    fn row(&mut self, table: &str, k: &[u8], v: &[u8]) -> Result<Option<Row>> {
        let row = match table {
            "meta" => return self.meta(k, v),
            "authority" => self.authority(k, v)?,
            "dossier_keys" => self.dossier_keys(k)?,
            "tombstones" => self.tombstones(k, v)?,
            "docs" => self.docs(k, v)?,
            "dossier_docs" => (self.remap(table, k, &[Dossier, Doc])?, v.to_vec()),
            "unique_ids" => self.unique_ids(k, v)?,
            "bodies" => self.bodies(k, v)?,
            "professionals" => self.professionals(k, v)?,
            "audit" | "relayed_traces" => self.audit(k, v)?,
            "outbox" => self.outbox(k, v)?,
            "site_pros" => (self.remap(table, k, &[Same(4), Pro])?, v.to_vec()),
            "pro_sites" => (self.remap(table, k, &[Pro, Same(4)])?, v.to_vec()),
            "scope" | "emergency_scopes" => {
                (self.remap(table, k, &[Same(4), Dossier])?, v.to_vec())
            }
            "scope_sites" | "site_receipts" => {
                (self.remap(table, k, &[Dossier, Same(4)])?, v.to_vec())
            }
            "site_log" => self.site_log(k, v)?,
            "pending_purges" => self.pending_purges(k, v)?,
            "local_dossiers" => self.local_dossiers(k, v)?,
            "held" => self.held(k, v)?,
            "quarantine" => self.quarantine(k, v)?,
            "partial_bodies" => self.partial_bodies(k, v)?,
            "pending_grants" => (self.remap(table, k, &[Dossier, Pro])?, v.to_vec()),
            "relayed_leases" => (self.remap(table, k, &[Dossier])?, v.to_vec()),
            "announcements" | "hidden_docs" | "missing_bodies" | "partial_progress"
            | "conflicts" => (self.remap(table, k, &[Doc])?, v.to_vec()),
            "returned" => (self.remap(table, k, &[Same(4), Doc])?, v.to_vec()),
            "owed_bodies" => (self.remap(table, k, &[Doc, Same(4)])?, v.to_vec()),
            "site_requests" => self.site_requests(k, v)?,
            "site_chain_keys" => self.site_chain_keys(k, v)?,
            "host_clears" => self.host_clears(k, v)?,
            "authority_history" => self.authority_history(k, v)?,
            "emergencies" => self.emergencies(k, v)?,
            "pending_emergencies" => (k.to_vec(), v.to_vec()),
            "dossier_emergencies" => (self.remap(table, k, &[Dossier, Same(8)])?, v.to_vec()),
            "notifications" => self.notifications(k, v)?,
            // The change feed names dossiers by their old blind index: its entries are
            // dropped and its floor raised over them (`changes::head_in`).
            "changes" => return Ok(None),
            "held_notifications" => self.held_notifications(k, v)?,
            "first_accesses" => (self.remap(table, k, &[Dossier, Pro])?, v.to_vec()),
            // Nothing keyed, nothing sealed: sequences, heads.
            "audit_heads" | "applied" | "site_signed_heads" | "trace_contacts"
            | "site_link_paths" => (k.to_vec(), v.to_vec()),
            // Entries held back because they could not be read: kept as they were, for
            // whoever investigates (their seals were the problem, or their values).
            "outbox_held" => (k.to_vec(), v.to_vec()),
            other => {
                return Err(Error::Storage(format!(
                    "table {other} has no re-keying rule in this build: nothing was changed"
                )));
            }
        };
        Ok(Some(row))
    }

    fn unknown(table: &str, what: &str) -> Error {
        Error::integrity(format!(
            "table {table}: a row names {what} this replica cannot name under the new keys: nothing was changed"
        ))
    }

    /// The new index of `old` in `map`, which names `what`.
    fn new_index(
        map: &HashMap<[u8; 32], [u8; 32]>,
        (table, what): (&str, &str),
        old: &[u8],
    ) -> Result<[u8; 32]> {
        <[u8; 32]>::try_from(old)
            .ok()
            .and_then(|old| map.get(&old).copied())
            .ok_or_else(|| Self::unknown(table, what))
    }

    fn dossier(&self, table: &str, old: &[u8]) -> Result<[u8; 32]> {
        Self::new_index(&self.maps.dossiers, (table, "a dossier"), old)
    }

    fn pro(&self, table: &str, old: &[u8]) -> Result<[u8; 32]> {
        Self::new_index(&self.maps.pros, (table, "a professional"), old)
    }

    /// (old data key, new data key) of the dossier `old_bi`.
    fn data_keys(&self, table: &str, old_bi: &[u8; 32]) -> Result<&(Key, Key)> {
        self.maps
            .data_keys
            .get(old_bi)
            .ok_or_else(|| Self::unknown(table, "a dossier without its data key"))
    }

    /// The data keys of document `id`'s dossier.
    fn doc_keys(&self, table: &str, id: &DocId) -> Result<&(Key, Key)> {
        let bi = self
            .maps
            .docs
            .get(&id.0)
            .ok_or_else(|| Self::unknown(table, "a document"))?;
        self.data_keys(table, bi)
    }

    /// The document stored as `old` (a stored id under the old index key), and its stored id
    /// under the new one.
    fn doc(&self, table: &str, old: &[u8]) -> Result<(DocId, [u8; 16])> {
        let old: &[u8; 16] = old
            .try_into()
            .map_err(|_| Error::integrity(format!("table {table}: a malformed document id")))?;
        let id = self.old.doc_id(old);
        Ok((id, self.new.docs.stored(&id)))
    }

    /// `key`, laid out as `layout` says, with its blind indexes and `rpps_index`es re-keyed.
    fn remap(&self, table: &str, key: &[u8], layout: &[Part]) -> Result<Vec<u8>> {
        let malformed = || Error::integrity(format!("table {table}: a malformed key"));
        let mut out = Vec::with_capacity(key.len());
        let mut rest = key;
        for part in layout {
            let n = match part {
                Same(n) => *n,
                Dossier | Pro => 32,
                Doc => 16,
            };
            if rest.len() < n {
                return Err(malformed());
            }
            let (head, tail) = rest.split_at(n);
            match part {
                Same(_) => out.extend_from_slice(head),
                Dossier => out.extend_from_slice(&self.dossier(table, head)?),
                Pro => out.extend_from_slice(&self.pro(table, head)?),
                Doc => out.extend_from_slice(&self.doc(table, head)?.1),
            }
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(malformed());
        }
        Ok(out)
    }

    /// A subject key of `AUTHORITY` (`subject_key`): a tag, then a blind index, then for a
    /// grant an `rpps_index`.
    fn subject(&self, table: &str, key: &[u8]) -> Result<Vec<u8>> {
        let layout: &[Part] = match key.len() {
            1 => &[Same(1)],
            33 => &[Same(1), Dossier],
            _ => &[Same(1), Dossier, Pro],
        };
        self.remap(table, key, layout)
    }

    /// `sealed`, opened under `old` with `old_aad`, sealed again under `new` with `new_aad`.
    fn reseal(
        table: &str,
        (old, old_aad): (&Key, &[u8]),
        (new, new_aad): (&Key, &[u8]),
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let plain = old
            .open(old_aad, sealed)
            .map_err(|_| Error::integrity(format!("table {table}: a sealed value was altered")))?;
        new.seal(new_aad, &plain)
    }

    /// `meta`: counters kept; the epochs moved on (the journal's old frames retired, the folder
    /// one open further); sealed settings sealed again; the keyring, the chain key, the row
    /// digests and `STATE_MAC` written at the end (`write_rekeyed`).
    fn meta(&mut self, k: &[u8], v: &[u8]) -> Result<Option<Row>> {
        let name = std::str::from_utf8(k).map_err(|_| Error::integrity("a meta row name"))?;
        let bumped = |by: u64| -> Result<Option<Row>> {
            let n = super::read_u64(Some(v)).wrapping_add(by);
            Ok(Some((k.to_vec(), n.to_le_bytes().to_vec())))
        };
        match name {
            meta_key::FORMAT
            | meta_key::CONFIG
            | meta_key::AUTHORITY_VERSION
            | meta_key::AUTHORITY_SEQ
            | meta_key::REGISTRY_GEN
            | meta_key::AUTHORITY_AS_OF
            | meta_key::PULL_CURSOR
            | meta_key::OUTBOX_ACKED
            | meta_key::CLOCK_SEEN
            | meta_key::NOTIFICATIONS_SPOOLED
            | meta_key::TRACE_ANCHOR
            // Two counters of the host's (`Replica::host_marks`).
            | meta_key::HOST_MARKS
            // A rate, a round trip and a time (`Replica::link_path`).
            | meta_key::LINK_PATH
            // A signed record in clear.
            | meta_key::RELAYABLE_HEARTBEAT => Ok(Some((k.to_vec(), v.to_vec()))),
            // The journal starts empty: its epoch moves past both live ones.
            meta_key::JOURNAL_EPOCH => bumped(2),
            meta_key::OPEN_EPOCH => bumped(1),
            // The spool's turn starts free.
            meta_key::KEYRING
            | meta_key::CHAIN_KEY
            | meta_key::ROW_DIGESTS
            | meta_key::SPOOL_TURN
            | meta_key::CHANGES_FLOOR
            | STATE_MAC => Ok(None),
            _ if name.starts_with("row_digest:") => Ok(None),
            _ if name.starts_with("sealed:") => {
                let setting = &name["sealed:".len()..];
                let a = aad(&[b"sealed", setting.as_bytes()]);
                let v = Self::reseal(
                    "meta",
                    (&self.old.keys.registry, &a),
                    (&self.new.registry, &a),
                    v,
                )?;
                Ok(Some((k.to_vec(), v)))
            }
            other => Err(Error::Storage(format!(
                "meta row {other} has no re-keying rule in this build: nothing was changed"
            ))),
        }
    }

    fn authority(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let subject = self.subject("authority", k)?;
        self.report.signed_records += 1;
        let v = Self::reseal(
            "authority",
            (&self.old.keys.registry, &aad(&[b"authority", k])),
            (&self.new.registry, &aad(&[b"authority", &subject])),
            v,
        )?;
        Ok((subject, v))
    }

    /// A new data key for the dossier, wrapped under the new master key.
    fn dossier_keys(&mut self, k: &[u8]) -> Result<Row> {
        let bi = self.dossier("dossier_keys", k)?;
        let old: [u8; 32] = k
            .try_into()
            .map_err(|_| Error::integrity("dossier_keys key"))?;
        self.report.dossiers += 1;
        let (_, key) = self.data_keys("dossier_keys", &old)?;
        let wrapped = self.new.master.wrap(&aad(&[b"dossier-key", &bi]), key)?;
        Ok((bi.to_vec(), wrapped))
    }

    fn tombstones(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let bi = self.dossier("tombstones", k)?;
        let t: Tombstone = postcard::from_bytes(v)?;
        let sealed_ins = Self::reseal(
            "tombstones",
            (&self.old.keys.registry, &tombstone_aad(k)),
            (&self.new.registry, &tombstone_aad(&bi)),
            &t.sealed_ins,
        )?;
        let t = Tombstone {
            receipt: t.receipt,
            sealed_ins,
        };
        Ok((bi.to_vec(), postcard::to_stdvec(&t)?))
    }

    fn docs(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let (id, key) = self.doc("docs", k)?;
        let stored: StoredDoc = postcard::from_bytes(v)?;
        let (old, new) = self.data_keys("docs", &stored.dossier)?;
        let a = meta_aad(&id.0, stored.rev);
        let row = StoredDoc {
            dossier: self.dossier("docs", &stored.dossier)?,
            rev: stored.rev,
            sealed: Self::reseal("docs", (old, &a), (new, &a), &stored.sealed)?,
        };
        self.report.documents += 1;
        Ok((key.to_vec(), postcard::to_stdvec(&row)?))
    }

    /// A producer's unique id is hashed under the index key: read again from its document.
    fn unique_ids(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "unique_ids";
        let (id, new_stored) = self.doc(table, v)?;
        let old_stored: [u8; 16] = v
            .try_into()
            .map_err(|_| Error::integrity("unique_ids value"))?;
        let old_bi: [u8; 32] = k
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::integrity("unique_ids key"))?;
        let docs = self.src.open_table(DOCS)?;
        let row = docs
            .get(&old_stored)?
            .ok_or_else(|| Self::unknown(table, "a document"))?;
        let stored: StoredDoc = postcard::from_bytes(row.value())?;
        let (old_key, _) = self.doc_keys(table, &id)?;
        let unique_id = self.old.open_meta(old_key, &id.0, &stored)?.facts.unique_id;
        if unique_index_under(&self.old.keys.index, &old_bi, &unique_id).as_slice() != k {
            return Err(Error::integrity(
                "table unique_ids: a row does not name its document's unique id",
            ));
        }
        let bi = self.dossier(table, &old_bi)?;
        let key = unique_index_under(&self.new.index, &bi, &unique_id);
        Ok((key.to_vec(), new_stored.to_vec()))
    }

    /// A chunk (`body_key`: place ‖ stored id ‖ number), sealed again under the new data key.
    fn bodies(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let key = self.remap("bodies", k, &[Same(1), Doc, Same(4)])?;
        let (id, _) = self.doc("bodies", &k[1..17])?;
        let chunk = u32::from_be_bytes(
            k[17..]
                .try_into()
                .map_err(|_| Error::integrity("table bodies: a malformed key"))?,
        );
        self.report.body_chunks += 1;
        let (old, new) = self.doc_keys("bodies", &id)?;
        let a = body_aad(&id.0, chunk);
        Ok((key, Self::reseal("bodies", (old, &a), (new, &a), v)?))
    }

    fn professionals(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let pro = self.pro("professionals", k)?;
        self.report.professionals += 1;
        let old: [u8; 32] = k
            .try_into()
            .map_err(|_| Error::integrity("professionals key"))?;
        let v = Self::reseal(
            "professionals",
            (&self.old.keys.registry, &pro_aad(&old)),
            (&self.new.registry, &pro_aad(&pro)),
            v,
        )?;
        Ok((pro.to_vec(), v))
    }

    /// A trace entry sealed again; its chain hash (under the kept chain key) unchanged.
    fn audit(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let (origin, _) = <(u32, u64) as Value>::from_bytes(k);
        let stored: StoredTrace = postcard::from_bytes(v)?;
        let a = trace_aad(origin);
        let row = StoredTrace {
            hash: stored.hash,
            sealed: Self::reseal(
                "audit",
                (&self.old.keys.audit, &a),
                (&self.new.audit, &a),
                &stored.sealed,
            )?,
        };
        self.report.traces += 1;
        Ok((k.to_vec(), postcard::to_stdvec(&row)?))
    }

    fn outbox(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let seq = super::read_u64(Some(k));
        let (old, new) = (&self.old.keys.registry, &self.new.registry);
        let queued = |kind: Queued, clear: &[u8], new_clear: &[u8], sealed: &[u8]| {
            Self::reseal(
                "outbox",
                (old, &outbox_aad(seq, kind, clear)),
                (new, &outbox_aad(seq, kind, new_clear)),
                sealed,
            )
        };
        let item = match postcard::from_bytes::<OutboxItem>(v)? {
            OutboxItem::Document(stored) => OutboxItem::Document(self.doc("outbox", &stored)?.1),
            OutboxItem::Professional(pro) => OutboxItem::Professional(self.pro("outbox", &pro)?),
            OutboxItem::PurgeReceipt {
                sealed_ins,
                receipt,
            } => {
                let clear = postcard::to_stdvec(&receipt)?;
                OutboxItem::PurgeReceipt {
                    sealed_ins: queued(Queued::PurgeReceipt, &clear, &clear, &sealed_ins)?,
                    receipt,
                }
            }
            OutboxItem::Pin { sealed_ins, on } => OutboxItem::Pin {
                sealed_ins: queued(Queued::Pin, &[u8::from(on)], &[u8::from(on)], &sealed_ins)?,
                on,
            },
            OutboxItem::PendingGrant { sealed_ins, pro } => {
                let new_pro = self.pro("outbox", &pro)?;
                OutboxItem::PendingGrant {
                    sealed_ins: queued(Queued::PendingGrant, &pro, &new_pro, &sealed_ins)?,
                    pro: new_pro,
                }
            }
            OutboxItem::DocumentAct { id, sealed_act } => {
                let (id, stored) = self.doc("outbox", &id)?;
                let a = act_aad(&id.0, seq);
                OutboxItem::DocumentAct {
                    id: stored,
                    sealed_act: Self::reseal("outbox", (old, &a), (new, &a), &sealed_act)?,
                }
            }
            OutboxItem::EmergencyFetch { sealed } => OutboxItem::EmergencyFetch {
                sealed: queued(Queued::EmergencyFetch, &[], &[], &sealed)?,
            },
            OutboxItem::DossierProposal { sealed } => OutboxItem::DossierProposal {
                sealed: queued(Queued::DossierProposal, &[], &[], &sealed)?,
            },
            OutboxItem::Withheld => OutboxItem::Withheld,
            OutboxItem::Quarantined => OutboxItem::Quarantined,
        };
        Ok((k.to_vec(), postcard::to_stdvec(&item)?))
    }

    /// The host's change logs are history: an entry naming what is gone (a grant of a purged
    /// dossier to a professional the host does not register) is kept naming nothing, under a
    /// value keyed with the new index key, as it named nothing before. Each entry is sealed
    /// (registry key, bound to its site and sequence) and holds document ids themselves.
    fn site_log(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let (site, seq) = <(u32, u64) as Value>::from_bytes(k);
        let a = site_log_aad(site, seq);
        let plain = self
            .old
            .keys
            .registry
            .open(&a, v)
            .map_err(|_| Error::integrity("table site_log: a sealed value was altered"))?;
        let gone = |old: &[u8]| -> Vec<u8> {
            let mut out = vec![old.first().copied().unwrap_or(0)];
            out.extend_from_slice(&self.new.index.tagged_index(b"gone:", old));
            out
        };
        let item = match postcard::from_bytes::<LogItem>(&plain)? {
            LogItem::Document(id) => LogItem::Document(id),
            LogItem::Authority(subject) => LogItem::Authority(
                self.subject("site_log", &subject)
                    .unwrap_or_else(|_| gone(&subject)),
            ),
            LogItem::Enter(bi) => LogItem::Enter(self.dossier("site_log", &bi)?),
            LogItem::Leave(bi) => LogItem::Leave(self.dossier("site_log", &bi)?),
            LogItem::Withdraw(bi) => LogItem::Withdraw(self.dossier("site_log", &bi)?),
        };
        let sealed = self.new.registry.seal(&a, &postcard::to_stdvec(&item)?)?;
        Ok((k.to_vec(), sealed))
    }

    fn pending_purges(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let bi = self.dossier("pending_purges", k)?;
        let v = Self::reseal(
            "pending_purges",
            (&self.old.keys.registry, &pending_purge_aad(k)),
            (&self.new.registry, &pending_purge_aad(&bi)),
            v,
        )?;
        Ok((bi.to_vec(), v))
    }

    fn local_dossiers(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let bi = self.dossier("local_dossiers", k)?;
        let old_bi: [u8; 32] = k
            .try_into()
            .map_err(|_| Error::integrity("table local_dossiers: a key"))?;
        let v = Self::reseal(
            "local_dossiers",
            (&self.old.keys.registry, &local_aad(&old_bi)),
            (&self.new.registry, &local_aad(&bi)),
            v,
        )?;
        Ok((bi.to_vec(), v))
    }

    /// `held`: keyed by dossier and counter, sealed bound to the key; what it holds (a
    /// document id, an act, an RPPS) names nothing by index.
    fn held(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let key = self.remap("held", k, &[Dossier, Same(8)])?;
        let v = Self::reseal(
            "held",
            (&self.old.keys.registry, &held_aad(k)),
            (&self.new.registry, &held_aad(&key)),
            v,
        )?;
        Ok((key, v))
    }

    fn quarantine(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let (id, key) = self.doc("quarantine", k)?;
        let v = reseal_quarantine_row(&self.old.keys.registry, &self.new.registry, &id, v)?;
        Ok((key.to_vec(), v))
    }

    fn partial_bodies(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "partial_bodies";
        let key = self.remap(table, k, &[Doc, Same(8)])?;
        let (id, _) = self.doc(table, &k[..16])?;
        let offset = u64::from_be_bytes(
            k[16..]
                .try_into()
                .map_err(|_| Error::integrity("table partial_bodies: a malformed key"))?,
        );
        let (old, new) = self.doc_keys(table, &id)?;
        let a = piece_aad(&id.0, offset);
        Ok((key, Self::reseal(table, (old, &a), (new, &a), v)?))
    }

    /// `kind ‖ blind index ‖ [rpps_index] ‖ site`, sealed bound to its key.
    fn site_requests(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "site_requests";
        let layout: &[Part] = match k.len() {
            37 => &[Same(1), Dossier, Same(4)],
            _ => &[Same(1), Dossier, Pro, Same(4)],
        };
        let key = self.remap(table, k, layout)?;
        let v = Self::reseal(
            table,
            (&self.old.keys.registry, &aad(&[b"site-request", k])),
            (&self.new.registry, &aad(&[b"site-request", &key])),
            v,
        )?;
        Ok((key, v))
    }

    fn site_chain_keys(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let site = crate::ids::SiteId(<u32 as Value>::from_bytes(k));
        let a = chain_key_aad(site);
        let v = Self::reseal(
            "site_chain_keys",
            (&self.old.keys.audit, &a),
            (&self.new.audit, &a),
            v,
        )?;
        Ok((k.to_vec(), v))
    }

    fn host_clears(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "host_clears";
        let (id, key) = self.doc(table, k)?;
        let a = aad(&[b"host-clears", &id.0]);
        let v = Self::reseal(
            table,
            (&self.old.keys.registry, &a),
            (&self.new.registry, &a),
            v,
        )?;
        Ok((key.to_vec(), v))
    }

    fn authority_history(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "authority_history";
        if k.len() < 9 {
            return Err(Error::integrity(format!("table {table}: a malformed key")));
        }
        let (subject, seq) = k.split_at(k.len() - 8);
        let mut key = self.subject(table, subject)?;
        key.extend_from_slice(seq);
        let v = Self::reseal(
            table,
            (&self.old.keys.registry, &super::emergencies::history_aad(k)),
            (&self.new.registry, &super::emergencies::history_aad(&key)),
            v,
        )?;
        Ok((key, v))
    }

    fn emergencies(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "emergencies";
        let id = <u64 as Value>::from_bytes(k);
        let mut row: super::emergencies::IndexRow = postcard::from_bytes(v)?;
        let a = super::emergencies::emergency_aad(id);
        self.blind_row(table, &a, &mut row.bi, &mut row.sealed)?;
        Ok((k.to_vec(), postcard::to_stdvec(&row)?))
    }

    /// A row keyed by id with a dossier's blind index in clear and a value sealed with the
    /// audit key under `a` (`emergencies`, `notifications`): both re-keyed in place.
    fn blind_row(
        &mut self,
        table: &str,
        a: &[u8],
        bi: &mut [u8; 32],
        sealed: &mut Vec<u8>,
    ) -> Result<()> {
        *bi = self.dossier(table, bi)?;
        *sealed = Self::reseal(
            table,
            (&self.old.keys.audit, a),
            (&self.new.audit, a),
            sealed,
        )?;
        Ok(())
    }

    fn notifications(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "notifications";
        let id = <u64 as Value>::from_bytes(k);
        let mut row: super::notifications::NotificationRow = postcard::from_bytes(v)?;
        let a = super::notifications::notification_aad(id);
        self.blind_row(table, &a, &mut row.bi, &mut row.sealed)?;
        Ok((k.to_vec(), postcard::to_stdvec(&row)?))
    }

    /// `held_notifications`: keyed by dossier, site and counter, sealed bound to the key.
    fn held_notifications(&mut self, k: &[u8], v: &[u8]) -> Result<Row> {
        let table = "held_notifications";
        let key = self.remap(table, k, &[Dossier, Same(12)])?;
        let v = Self::reseal(
            table,
            (
                &self.old.keys.audit,
                &super::notifications::held_event_aad(k),
            ),
            (&self.new.audit, &super::notifications::held_event_aad(&key)),
            v,
        )?;
        Ok((key, v))
    }
}
