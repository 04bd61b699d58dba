//! Where a replica keeps its documents' body chunks: in append-only segment files
//! (`crate::segments`), `BODY_PLACES` naming each chunk's record, for a replica in a redb file
//! (or on storage backends given segments: the simulator's); in `BODIES` rows for the
//! PostgreSQL host and a replica on backends given none. A chunk is sealed with its dossier's
//! key before it is stored, wherever it goes (a purge drops the key: crypto-shredding does not
//! depend on the place).
//!
//! Invariants:
//! - A chunk is under one key in one place: `BODY_PLACES` or `BODIES`, never both. A replica
//!   with segments writes every new chunk there (a restore too: `backup`); the chunks a full
//!   key rotation sealed again (`rekey` writes `BODIES`, so that no record under the old keys
//!   outlives it) stay in `BODIES` and are read from there.
//! - In segments a body is cut as `segment_chunk_plan` says (one record for a body of up to
//!   64 KiB), in `BODIES` as `body_chunk_plan` says (chunks filling a page, and a tail), but
//!   for the chunks a key rotation sealed again from segments, which keep their cut; a read
//!   walks either the same way (`documents::get_body`, `SEGMENT_CHUNK_PLAIN`), and so the
//!   page-filling cut a format 9 replica used in segments too.
//! - A commit syncs the segments before the database (`RawWrite::commit`): a durable location
//!   names a durable record. A record written by a transaction that did not commit is named
//!   by nothing. At open and from the daemon's timer (`compact_bodies`), segments nothing
//!   names are retired and the mostly dead or small ones compacted: their live records copied
//!   into the segment appends go to and repointed in one transaction, durable before the old
//!   segments are retired. A retired segment is removed once no read snapshot taken before
//!   its retirement lives (`Replica::begin_read` registers each one as a segments' reader).
//! - A record read is checked against its location (`segments`), then opened under its chunk's
//!   associated data (`documents::get_body`): a torn, moved or foreign record is an integrity
//!   error, never other bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ids::DocId;
use crate::kv::{
    AccessGuard, ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata as _, Table,
    TableDefinition, WriteTransaction,
};
use crate::segments::{Location, Segments};

use super::Replica;
use super::tables::{BODIES, BODY_PLACES, ChunkPlace, DOCS, body_key, first_body_key};

/// A table of chunks or places, as a transaction opened it.
pub(super) trait ChunkTable: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> ChunkTable for T {}

/// The body chunks of one transaction: `BODIES`, and with segments `BODY_PLACES`.
pub(super) struct Bodies<T> {
    rows: T,
    places: Option<(T, Arc<Segments>)>,
}

/// A sealed chunk as read: a row of `BODIES`, or a record of a segment.
pub(super) enum Chunk<'a> {
    Row(AccessGuard<'a, &'static [u8]>),
    Record(Vec<u8>),
}

impl Chunk<'_> {
    /// The sealed bytes.
    pub(super) fn sealed(&self) -> &[u8] {
        match self {
            Chunk::Row(guard) => guard.value(),
            Chunk::Record(bytes) => bytes,
        }
    }
}

#[cfg(test)]
impl<T> Bodies<T> {
    /// Chunks in `BODIES` rows only.
    pub(super) fn in_rows(rows: T) -> Bodies<T> {
        Bodies { rows, places: None }
    }
}

impl<T: ChunkTable> Bodies<T> {
    /// Whether new chunks go to segment files (`BODY_PLACES`), not `BODIES` rows.
    pub(super) fn in_segments(&self) -> bool {
        self.places.is_some()
    }

    /// The sealed chunk at `key` (`body_key`), if stored.
    pub(super) fn chunk(&self, key: &[u8]) -> Result<Option<Chunk<'_>>> {
        if let Some((places, segments)) = &self.places
            && let Some(at) = places.get(key)?
        {
            let at = Location::decode(at.value())?;
            return Ok(Some(Chunk::Record(segments.view()?.read(at)?)));
        }
        Ok(self.rows.get(key)?.map(Chunk::Row))
    }

    /// Whether the body of the document stored as `stored` is here (its first chunk is).
    pub(super) fn holds(&self, stored: &[u8; 16]) -> Result<bool> {
        let first = first_body_key(stored);
        if let Some((places, _)) = &self.places
            && places.get(first.as_slice())?.is_some()
        {
            return Ok(true);
        }
        Ok(self.rows.get(first.as_slice())?.is_some())
    }
}

impl Bodies<Table<'_, &'static [u8], &'static [u8]>> {
    /// Stores at `key` a sealed chunk of `len` bytes that `fill` writes, straight into the
    /// space it goes to (a segment's buffer, or the row redb reserves). An error from `fill`
    /// stores nothing, and leaves the transaction to be dropped.
    pub(super) fn put_chunk(
        &mut self,
        key: &[u8],
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        match &mut self.places {
            Some((places, segments)) => {
                let at = segments.append_with(len, fill)?;
                places.put(key, at.encode().as_slice())?;
                Ok(())
            }
            None => self.rows.insert_with(key, len, fill),
        }
    }

    /// Removes every chunk of the document stored as `stored`, its tail included: the keys of
    /// each place that start with its place and stored id (`body_key`), nothing else. The
    /// records they named in segments are left to compaction.
    pub(super) fn remove(&mut self, stored: &[u8; 16]) -> Result<()> {
        for place in [ChunkPlace::Main, ChunkPlace::Tail] {
            let (first, last) = (
                body_key(stored, place, 0),
                body_key(stored, place, u32::MAX),
            );
            let range = first.as_slice()..=last.as_slice();
            self.rows.retain_in(range.clone(), |_, _| false)?;
            if let Some((places, _)) = &mut self.places {
                places.retain_in(range, |_, _| false)?;
            }
        }
        Ok(())
    }
}

impl Replica {
    /// The body chunks of the write transaction `txn`.
    pub(super) fn bodies<'t>(
        &self,
        txn: &'t WriteTransaction,
    ) -> Result<Bodies<Table<'t, &'static [u8], &'static [u8]>>> {
        self.body_tables(|def| Ok(txn.open_table(def)?))
    }

    /// The body chunks of the read snapshot `txn`.
    pub(super) fn bodies_read(
        &self,
        txn: &ReadTransaction,
    ) -> Result<Bodies<ReadOnlyTable<&'static [u8], &'static [u8]>>> {
        self.body_tables(|def| Ok(txn.open_table(def)?))
    }

    /// `BODIES`, and `BODY_PLACES` with the segments if this replica has them, as `open`
    /// opens a table.
    fn body_tables<T>(
        &self,
        open: impl Fn(TableDefinition<&'static [u8], &'static [u8]>) -> Result<T>,
    ) -> Result<Bodies<T>> {
        Ok(Bodies {
            rows: open(BODIES)?,
            places: match &self.segments {
                Some(segments) => Some((open(BODY_PLACES)?, segments.clone())),
                None => None,
            },
        })
    }

    /// Every stored body read, opened under its dossier's key and checked against its
    /// document's content hash, in one snapshot: the documents whose body fails (a record
    /// damaged or lost, a chunk missing, a key gone). A body not received yet is not checked.
    pub fn damaged_bodies(&self) -> Result<Vec<DocId>> {
        let (txn, generation) = self.snapshot()?;
        let bodies = self.bodies_read(&txn)?;
        let mut damaged = Vec::new();
        for row in txn.open_table(DOCS)?.iter()? {
            let (stored, _) = row?;
            let stored = *stored.value();
            if !bodies.holds(&stored)? {
                continue;
            }
            let id = self.doc_id(&stored);
            let intact = self
                .load_doc(&txn, generation, &id)
                .and_then(|(_, key, meta)| Ok((self.get_body(&bodies, &key, &meta)?, meta)))
                .is_ok_and(|(body, meta)| {
                    *blake3::hash(&body).as_bytes() == meta.facts.content_hash
                });
            if !intact {
                damaged.push(id);
            }
        }
        Ok(damaged)
    }

    /// The sealed chunk a row of `BODY_PLACES` names (backups and key rotations carry chunks,
    /// not locations).
    pub(super) fn chunk_at(&self, place: &[u8]) -> Result<Vec<u8>> {
        let segments = self.segments.as_ref().ok_or_else(|| {
            Error::integrity("a body chunk is named in a segment, and this replica has none")
        })?;
        let read = Location::decode(place).and_then(|at| segments.view()?.read(at));
        read.map_err(|e| match e {
            Error::Integrity(why) => Error::integrity(format!(
                "a body chunk kept in a segment (table body_places) is damaged: {why}"
            )),
            other => other,
        })
    }

    /// `chunk_at` for the row of `BODY_PLACES` keyed `key` (`body_key`), opened under its
    /// document's dossier key: a segment checks a record's ends only, and its seal the rest
    /// (`segments`), so a copy that would otherwise carry a record damaged between its ends
    /// (a backup) opens it. A chunk whose document or dossier key is not held here is answered
    /// unopened.
    pub(super) fn opened_chunk_at(
        &self,
        txn: &ReadTransaction,
        generation: super::Generation,
        docs: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        key: &[u8],
        place: &[u8],
    ) -> Result<Vec<u8>> {
        let sealed = self.chunk_at(place)?;
        let malformed = || Error::integrity("table body_places: a malformed key");
        let stored: [u8; 16] = key
            .get(1..17)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        let n = key
            .get(17..)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(malformed)?;
        let Some(row) = docs.get(&stored)? else {
            return Ok(sealed);
        };
        let doc: super::tables::StoredDoc = postcard::from_bytes(row.value())?;
        let Some(dossier_key) = self.key_for(txn, generation, &doc.dossier)? else {
            return Ok(sealed);
        };
        let id = self.doc_id(&stored);
        dossier_key
            .open(&super::documents::body_aad(&id.0, n), &sealed)
            .map_err(|_| {
                Error::integrity(format!(
                    "the body of document {id} is damaged (its chunk {n}, kept in a segment, does not open)"
                ))
            })?;
        Ok(sealed)
    }

    /// Starts syncing the records appended so far while the transaction that appended them
    /// goes on (`Segments::start_sync`); its commit waits for that sync (`sync_segments`).
    pub(super) fn start_syncing_segments(&self) -> Result<()> {
        match &self.segments {
            Some(segments) => segments.start_sync(),
            None => Ok(()),
        }
    }

    /// Syncs the records appended since the last sync (before a commit names them).
    pub(super) fn sync_segments(&self) -> Result<()> {
        match &self.segments {
            Some(segments) => segments.sync(),
            None => Ok(()),
        }
    }

    /// At open, before anything is appended: refuses a replica whose `BODY_PLACES` names
    /// chunks when it was opened without segments, then compacts them (`compact_bodies`).
    pub(super) fn tidy_segments(&self) -> Result<()> {
        if self.segments.is_none() {
            let txn = self.begin_read()?;
            if !txn.open_table(BODY_PLACES)?.is_empty()? {
                return Err(Error::invalid(
                    "this replica keeps bodies in segment files, and was opened without them",
                ));
            }
            return Ok(());
        }
        self.compact_bodies().map(|_| ())
    }

    /// Gives back the space of bodies purged, withdrawn or replaced: retires the segments no
    /// row of `BODY_PLACES` names (records of transactions that never committed; every record
    /// of a replica whose bodies a key rotation moved), and compacts the others that are
    /// mostly dead or too small to stay apart (`worth_compacting`): their live records copied
    /// into the segment appends go to and repointed in one transaction, durable before the
    /// old segments are retired. The segment appends go to is left alone. Runs at open and,
    /// while the daemon runs, from its timer; answers how many segments were retired.
    ///
    /// It looks first in a snapshot, without the write lock, and stops there when nothing
    /// is to be done. Otherwise it counts again under the write transaction, which it holds
    /// to its commit, so no record is appended meanwhile and the count of live bytes is
    /// exact (a snapshot's count is not: a transaction in flight may have appended records
    /// it does not name yet, even to a segment appends have left since). A read snapshot
    /// taken before the commit reads the old records to its end (`Segments::retire`).
    /// Passes are not meant to overlap (the daemon runs one at a time); one that does
    /// retires nothing twice. A crash before the commit leaves records nothing names, after
    /// it segments nothing names: the next pass retires either.
    ///
    /// A location that does not decode, or a live record that does not read back, is damage
    /// this replica's reads report document by document, not a failure of the pass: a
    /// location that does not decode stops it (logged, nothing retired); a record that does
    /// not read back leaves the segments to compact as they are (logged), the unnamed ones
    /// still retired. (A record damaged between its ends reads back, `segments` checking its
    /// ends only, and moves as it is: its seal still refuses it when it is opened.)
    pub fn compact_bodies(&self) -> Result<usize> {
        let Some(segments) = &self.segments else {
            return Ok(0);
        };
        // A look first, in a snapshot: most passes find nothing to do, and a large host's
        // scan of `BODY_PLACES` would otherwise hold its writes meanwhile.
        let found = {
            let snapshot = self.begin_read()?;
            segments_to_tidy(segments, &snapshot.open_table(BODY_PLACES)?)?
        };
        if found.is_none_or(|(unnamed, compacted)| unnamed.is_empty() && compacted.is_empty()) {
            // The segments retired before may be removable now.
            segments.sync()?;
            return Ok(0);
        }
        let txn = self.begin_raw_write()?;
        let Some((unnamed, mut compacted)) =
            segments_to_tidy(segments, &txn.open_table(BODY_PLACES)?)?
        else {
            return Ok(0);
        };
        let moved = if compacted.is_empty() {
            drop(txn);
            0
        } else {
            match self.move_records(segments, txn, &compacted) {
                Ok(moved) => moved,
                // Checked before anything was copied: nothing appended, nothing repointed.
                Err(Error::Integrity(_)) => {
                    tracing::warn!("a live body record does not read back: segments not compacted");
                    compacted.clear();
                    0
                }
                Err(e) => return Err(e),
            }
        };
        // What stopped naming the retired segments is durable before they go (a commit made
        // inside `deferring_syncs` may still be syncing).
        self.wait_durable(self.durable_point())?;
        let retired = unnamed.len() + compacted.len();
        for segment in unnamed.into_iter().chain(compacted.iter().copied()) {
            segments.retire(segment)?;
        }
        segments.sync()?;
        if retired > 0 {
            tracing::info!(
                retired,
                compacted = compacted.len(),
                live_bytes = moved,
                "body segments compacted"
            );
        }
        Ok(retired)
    }

    /// Copies the live records of `compacted` into the segment appends go to, repoints them in
    /// `txn` and commits it (the commit syncs the new records first): the bytes moved. Every
    /// record is read back first: one that does not (damage this replica's reads report
    /// document by document) stops it before anything is appended, so a compaction that
    /// cannot finish leaves nothing behind for the next one to find.
    fn move_records(
        &self,
        segments: &Segments,
        txn: super::RawWrite<'_>,
        compacted: &BTreeSet<u32>,
    ) -> Result<u64> {
        let mut moved = 0u64;
        {
            let mut places = txn.open_table(BODY_PLACES)?;
            let mut moving = Vec::new();
            for row in places.range::<&[u8]>(..)? {
                let (key, at) = row?;
                let at = Location::decode(at.value())?;
                if compacted.contains(&at.segment) {
                    moving.push((key.value().to_vec(), at));
                }
            }
            let view = segments.view()?;
            for (_, at) in &moving {
                view.read(*at)?;
            }
            for (key, at) in moving {
                let to = segments.append(&view.read(at)?)?;
                places.put(key.as_slice(), to.encode().as_slice())?;
                moved += at.stored_len();
            }
        }
        txn.commit()?;
        Ok(moved)
    }
}

/// What a pass over `segments` would do, as `places` (`BODY_PLACES`) names their records:
/// the segments it names none of, and those worth compacting (`worth_compacting`), the
/// segment appends go to and the retired ones left out. `None` when a location does not
/// decode (logged: the segments are left as they are).
fn segments_to_tidy(
    segments: &Segments,
    places: &impl ChunkTable,
) -> Result<Option<(Vec<u32>, BTreeSet<u32>)>> {
    let current = segments.current();
    let sizes: Vec<(u32, u64)> = segments
        .sizes()?
        .into_iter()
        .filter(|&(n, _)| Some(n) != current)
        .collect();
    if sizes.is_empty() {
        return Ok(Some((Vec::new(), BTreeSet::new())));
    }
    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    for row in places.range::<&[u8]>(..)? {
        let Ok(at) = Location::decode(row?.1.value()) else {
            tracing::warn!("a body chunk's location is damaged: segments left as they are");
            return Ok(None);
        };
        *live.entry(at.segment).or_default() += at.stored_len();
    }
    let unnamed: Vec<u32> = sizes
        .iter()
        .filter(|(n, _)| !live.contains_key(n))
        .map(|&(n, _)| n)
        .collect();
    let named: Vec<(u32, u64, u64)> = sizes
        .into_iter()
        .filter_map(|(n, size)| live.get(&n).map(|&l| (n, size, l)))
        .collect();
    Ok(Some((unnamed, worth_compacting(&named))))
}

/// Segments below this size are small: a process that stored a body or two (each `carnet`
/// command appends to a segment of its own).
const SMALL_SEGMENT: u64 = 1 << 20;
/// Small segments are merged once there are more than this many.
const SMALL_SEGMENTS_KEPT: usize = 8;

/// Which of the segments `(number, size, live bytes)` to compact: those less than half live,
/// and every small one once there are more than `SMALL_SEGMENTS_KEPT` of them.
fn worth_compacting(segments: &[(u32, u64, u64)]) -> BTreeSet<u32> {
    let small: Vec<u32> = segments
        .iter()
        .filter(|(_, size, _)| *size < SMALL_SEGMENT)
        .map(|(n, _, _)| *n)
        .collect();
    let mut chosen: BTreeSet<u32> = segments
        .iter()
        .filter(|(_, size, live)| live.saturating_mul(2) < *size)
        .map(|(n, _, _)| *n)
        .collect();
    if small.len() > SMALL_SEGMENTS_KEPT {
        chosen.extend(small);
    }
    chosen
}

#[cfg(test)]
impl<T: ChunkTable> Bodies<T> {
    /// Every chunk whose key is in `range` (both places), as `(key, sealed)` in key order.
    pub(super) fn chunks_in(
        &self,
        range: std::ops::RangeInclusive<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut keys = Vec::new();
        let tables = std::iter::once(&self.rows).chain(self.places.as_ref().map(|(p, _)| p));
        for table in tables {
            for row in table.range(range.clone())? {
                keys.push(row?.0.value().to_vec());
            }
        }
        keys.sort();
        keys.into_iter()
            .map(|key| {
                let sealed = self.chunk(&key)?.expect("listed").sealed().to_vec();
                Ok((key, sealed))
            })
            .collect()
    }

    /// Every chunk of the document stored as `stored`, as `chunks_in`.
    pub(super) fn chunks_of(&self, stored: &[u8; 16]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut chunks = Vec::new();
        for place in [ChunkPlace::Main, ChunkPlace::Tail] {
            let (first, last) = (
                body_key(stored, place, 0),
                body_key(stored, place, u32::MAX),
            );
            chunks.extend(self.chunks_in(first.as_slice()..=last.as_slice())?);
        }
        Ok(chunks)
    }
}
