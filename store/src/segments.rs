//! Append-only segment files: where large values (document body chunks) can live outside
//! redb's B-tree, redb keeping in their place a 16-byte `Location`. A body is then written once,
//! sequentially, and made durable with one `fdatasync`, instead of being copied into B-tree
//! pages (issue "Sync at the speed of the wire", §3).
//!
//! Layout: a folder of files `00000001.seg`, `00000002.seg`, …, each a sequence of records
//! `len (u32 LE) ‖ check (16 bytes) ‖ bytes`, `check` the first 16 bytes of a BLAKE3 keyed by
//! `segment (u32 LE) ‖ offset (u64 LE)` (zeros to 32 bytes). Nothing reads a segment from its
//! start: a record is found by its location alone.
//!
//! Every record's bytes are sealed by their writer (a body chunk: `nonce ‖ ciphertext ‖ tag`,
//! `crypto::Key::seal`), and the seal authenticates them whole when they are opened. So the
//! check hashes only a record's ends, its first and last `ENDS` bytes (the nonce and the tag;
//! all of it when shorter than twice that), with `ENDED` set in `len`: what it catches is a
//! record cut short, overwritten or read at another place, and the seal the rest. Hashing the
//! whole record again cost the host and the site each some 3 % of an initial sync (BLAKE3 over
//! every body a second time). A record whose `len` lacks `ENDED` (written by an earlier build)
//! is checked whole.
//!
//! Invariants:
//! - A record, once appended, is never changed: a segment only grows, until it is removed
//!   whole (once nothing names it).
//! - Appends go to a segment this process created (the first append after `open` starts a new
//!   one): a tail a crash cut short is never written after.
//! - `sync` returns once every record appended before it, and the name of every segment
//!   created or removed before it, is on disk. The caller syncs before committing the index
//!   that names the records, so a durable index names only durable records. A sync started
//!   ahead (`start_sync`, on a thread of its own) changes only when the disk does the work:
//!   `sync` waits for it, and fails if it failed.
//! - Appended records wait in a buffer (`BUFFER_BYTES`) and go to their file in one write;
//!   `view` and `sync` write what waits first, so a view reads every record appended before it.
//! - A read checks the record's length and check against its location: a torn, overwritten or
//!   misplaced record is an `Integrity` error, never other bytes; bytes changed between its
//!   ends are the opening seal's to find (every record is sealed).
//! - A `View` reads the segments that existed when it was taken, even once removed (their
//!   files stay open): a read transaction's index may name a segment removed meanwhile.
//! - A segment `retire`d (compacted while the replica runs) is removed only once every
//!   `Reader` registered before it was retired has ended: a read snapshot taken before the
//!   compaction's commit, which names its records, reads them to its end.
//! - After a failed write or sync every later append and sync fails (what reached the disk is
//!   unknown until the segments are opened again), as the database file's backend does.
//! - A segment grows past `max_bytes` by at most one record; a record is at most `RECORD_MAX`.
//! - Every segment stays open (one file descriptor each): before a folder's segments are
//!   opened, the process's soft limit on open files is raised to its hard limit
//!   (`raise_open_files_limit`). systemd starts a service at 1,024, for programs that use
//!   `select()`, which Carnet does not: at 64 MiB a segment, 1,024 would stop a replica at some
//!   60 GiB of bodies. A segment that still cannot be opened for that says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use crate::error::{Error, Result};

/// Folder of the segments inside the data folder.
pub const SEGMENTS_DIR: &str = "segments";
/// Size past which appends go to a new segment.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest record.
pub const RECORD_MAX: usize = 64 << 20;
/// Records buffered before they are written to their segment's file.
const BUFFER_BYTES: usize = 1 << 20;
/// Bytes before a record's own: its length and its check.
const HEADER: usize = 4 + CHECK;
const CHECK: usize = 16;
/// Set in a record's `len` when its check covers its ends only (`check_ends`).
const ENDED: u32 = 1 << 31;
/// Bytes at each end of a record that its check covers.
const ENDS: usize = 32;

/// Where a record is: its segment, its offset there, its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// The segment's number.
    pub segment: u32,
    /// Where the record (its header) begins.
    pub offset: u64,
    /// The length of the record's bytes (without the header).
    pub len: u32,
}

impl Location {
    /// The length of `encode`'s bytes.
    pub const ENCODED: usize = 16;

    /// `segment (u32 LE) ‖ offset (u64 LE) ‖ len (u32 LE)`.
    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        out[..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The bytes the record takes in its segment, its header included.
    pub fn stored_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }

    /// The location `encode` wrote into `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Location> {
        let bytes: &[u8; Self::ENCODED] = bytes.try_into().map_err(|_| {
            Error::integrity(format!(
                "a segment location of {} bytes (16 expected)",
                bytes.len()
            ))
        })?;
        let (mut segment, mut offset, mut len) = ([0u8; 4], [0u8; 8], [0u8; 4]);
        segment.copy_from_slice(&bytes[..4]);
        offset.copy_from_slice(&bytes[4..12]);
        len.copy_from_slice(&bytes[12..]);
        Ok(Location {
            segment: u32::from_le_bytes(segment),
            offset: u64::from_le_bytes(offset),
            len: u32::from_le_bytes(len),
        })
    }
}

/// Where the segment files are: a folder (`Folder`), or, in tests and the simulator, a
/// simulated disk that loses at a power cut what was not synced.
pub trait SegmentFiles: Send + Sync + std::fmt::Debug {
    /// The segments present, in any order.
    fn list(&self) -> io::Result<Vec<u32>>;
    /// Segment `n`, created empty when `create` (and it does not exist).
    fn open(&self, n: u32, create: bool) -> io::Result<Box<dyn StorageBackend>>;
    /// Removes segment `n`.
    fn remove(&self, n: u32) -> io::Result<()>;
    /// Makes the names of the segments created and removed so far durable.
    fn sync_names(&self) -> io::Result<()>;
    /// Whether a segment syncs as well from another thread, so that `Segments::start_sync`
    /// may sync ahead (a folder on disk: the kernel syncs the file whoever asks). No by
    /// default: a simulated disk's faults and power cuts follow the order of its operations,
    /// which a thread of its own would make vary from one run to the next.
    fn sync_ahead(&self) -> bool {
        false
    }
    /// Size past which a replica's appends go to a new segment (`SEGMENT_BYTES`; the
    /// simulator's are small, so that its nodes fill and compact many).
    fn segment_bytes(&self) -> u64 {
        SEGMENT_BYTES
    }
}

/// Segment files in a folder on disk.
#[derive(Debug)]
pub struct Folder {
    path: PathBuf,
}

impl Folder {
    /// The segments in `path`, created (owner only, its name synced in the folder above)
    /// when missing; a link there is refused.
    pub fn new(path: &Path) -> io::Result<Folder> {
        match std::fs::symlink_metadata(path) {
            Ok(found) if found.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a folder", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().mode(0o700).create(path)?;
                let above = path.parent().filter(|p| !p.as_os_str().is_empty());
                std::fs::File::open(above.unwrap_or(Path::new(".")))?.sync_all()?;
            }
            Err(e) => return Err(e),
        }
        Ok(Folder {
            path: path.to_path_buf(),
        })
    }

    fn file(&self, n: u32) -> PathBuf {
        self.path.join(format!("{n:08}.seg"))
    }
}

impl SegmentFiles for Folder {
    fn list(&self) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .filter(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok());
            out.extend(number);
        }
        Ok(out)
    }

    fn open(&self, n: u32, create: bool) -> io::Result<Box<dyn StorageBackend>> {
        let path = self.file(n);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            // Never a link out of the data folder.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a file", path.display()),
            ));
        }
        Ok(Box::new(SegmentFile(file)))
    }

    fn remove(&self, n: u32) -> io::Result<()> {
        std::fs::remove_file(self.file(n))
    }

    fn sync_names(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }

    fn sync_ahead(&self) -> bool {
        true
    }
}

/// A segment file as a storage backend.
#[derive(Debug)]
struct SegmentFile(std::fs::File);

impl StorageBackend for SegmentFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

/// The open segments, by number.
type Open = BTreeMap<u32, Arc<dyn StorageBackend>>;

/// The segments of one data folder: appends, syncs, views, removal.
#[derive(Debug)]
pub struct Segments {
    files: Box<dyn SegmentFiles>,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Every segment, for the views (replaced, never changed, when one is added or removed).
    open: Arc<Open>,
    /// The segment appends go to, and its end (what is buffered included).
    current: Option<(u32, u64)>,
    /// The last records appended to `current`, not written to its file yet (`BUFFER_BYTES`
    /// at most, but for one record): one write for many small records.
    buffered: Vec<u8>,
    /// The number of the next segment created.
    next: u32,
    /// Segments appended to since the last sync.
    unsynced: BTreeSet<u32>,
    /// A segment was created or removed since the last sync.
    names_changed: bool,
    /// The sync `start_sync` left running on a thread of its own, if any: `sync` waits for
    /// it (and fails with it) before it answers.
    ahead: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// What failed, once a write or a sync did.
    failed: Option<String>,
    /// Counts the retirements: a reader registered at era `e` may name the segments retired
    /// at any era after `e`.
    era: u64,
    /// Readers alive, by the era they registered at.
    readers: BTreeMap<u64, usize>,
    /// Segments retired and not removed yet, with the era of their retirement.
    retired: Vec<(u64, u32)>,
}

/// A reader of the segments (a read snapshot of the index that names them), registered
/// before its snapshot was taken: the segments retired after that are kept until it ends.
#[derive(Debug)]
pub struct Reader {
    segments: Arc<Segments>,
    era: u64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.segments.state();
        if let Some(count) = state.readers.get_mut(&self.era) {
            *count -= 1;
            if *count == 0 {
                state.readers.remove(&self.era);
            }
        }
    }
}

/// The segments that existed when it was taken, to read records from.
#[derive(Debug, Clone)]
pub struct View {
    open: Arc<Open>,
}

impl Segments {
    /// The segments in the folder `path` (created when missing), the process's open-files
    /// limit raised first (`raise_open_files_limit`).
    pub fn in_folder(path: &Path) -> Result<Segments> {
        raise_open_files_limit();
        Segments::open(Box::new(Folder::new(path)?), SEGMENT_BYTES)
    }

    /// The segments of `files`; appends go to new segments of about `max_bytes`.
    pub fn open(files: Box<dyn SegmentFiles>, max_bytes: u64) -> Result<Segments> {
        let mut open = Open::new();
        for n in files.list()? {
            let file = files.open(n, false).map_err(|e| {
                let hint = match e.raw_os_error() {
                    Some(libc::EMFILE) => format!(
                        " (this process may keep {} files open, and every segment stays open: \
                         raise its limit, LimitNOFILE= in the systemd unit)",
                        open_files_limit().map_or("only so many".into(), |n| n.to_string())
                    ),
                    _ => String::new(),
                };
                Error::Storage(format!("segment {n}: {e}{hint}"))
            })?;
            open.insert(n, Arc::from(file));
        }
        let next = open.keys().next_back().map_or(1, |n| n.saturating_add(1));
        Ok(Segments {
            files,
            max_bytes,
            state: Mutex::new(State {
                open: Arc::new(open),
                current: None,
                buffered: Vec::new(),
                next,
                unsynced: BTreeSet::new(),
                names_changed: false,
                ahead: None,
                failed: None,
                era: 0,
                readers: BTreeMap::new(),
                retired: Vec::new(),
            }),
        })
    }

    /// The state; after a panic under its lock (in an `append_with`'s `fill`), what is
    /// buffered may be half written: it is dropped, and every later append and sync fails.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.failed = Some("a write panicked".into());
            state.current = None;
            state.buffered.clear();
            state
        })
    }

    /// Appends `bytes` as a new record; durable once `sync` returns. `bytes` are sealed (the
    /// check covers their ends only: the module's doc).
    pub fn append(&self, bytes: &[u8]) -> Result<Location> {
        self.append_with(bytes.len(), |slot| {
            slot.copy_from_slice(bytes);
            Ok(())
        })
    }

    /// Appends a sealed record of `len` bytes that `fill` writes, straight into the buffer of
    /// what waits to be written (a body chunk is sealed there, not copied); durable once
    /// `sync` returns. An error from `fill` appends nothing. `fill` runs under the segments'
    /// lock: it must not call them.
    pub fn append_with<E: From<Error>>(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<Location, E> {
        let record_len = u32::try_from(len)
            .ok()
            .filter(|_| len <= RECORD_MAX)
            .ok_or_else(|| {
                Error::invalid(format!("a record of {len} bytes (at most {RECORD_MAX})"))
            })?;
        let mut state = self.state();
        check_failed(&state)?;
        let (segment, offset) = match state.current {
            Some((segment, end)) if end < self.max_bytes => (segment, end),
            _ => {
                write_buffered(&mut state)?;
                let n = state.next;
                let next = n.checked_add(1).ok_or_else(|| {
                    Error::Storage("no segment number is left: compact the segments".into())
                })?;
                let created = self.files.open(n, true);
                let file = fail_on_error(&mut state, created, "creating segment")?;
                state.next = next;
                Arc::make_mut(&mut state.open).insert(n, Arc::from(file));
                state.names_changed = true;
                state.current = Some((n, 0));
                (n, 0)
            }
        };
        // What waits is written before a record that would take the buffer past
        // `BUFFER_BYTES`, and the buffer is allocated once at that size: it is never grown
        // (copied) and shrunk back at each write, only for a record larger by itself.
        if !state.buffered.is_empty() && state.buffered.len() + HEADER + len > BUFFER_BYTES {
            write_buffered(&mut state)?;
        }
        let start = state.buffered.len();
        let end = start + HEADER + len;
        if end > state.buffered.capacity() {
            state.buffered.reserve_exact(end.max(BUFFER_BYTES) - start);
        }
        state.buffered.resize(end, 0);
        let record = &mut state.buffered[start..];
        let (header, bytes) = record.split_at_mut(HEADER);
        if let Err(e) = fill(bytes) {
            state.buffered.truncate(start);
            return Err(e);
        }
        header[..4].copy_from_slice(&(record_len | ENDED).to_le_bytes());
        header[4..].copy_from_slice(&check_ends(segment, offset, bytes));
        state.current = Some((segment, offset + (HEADER + len) as u64));
        state.unsynced.insert(segment);
        if state.buffered.len() >= BUFFER_BYTES {
            write_buffered(&mut state)?;
        }
        Ok(Location {
            segment,
            offset,
            len: record_len,
        })
    }

    /// Registers a reader: call it before taking the snapshot of the index it reads with.
    pub fn reader(self: &Arc<Self>) -> Reader {
        let mut state = self.state();
        let era = state.era;
        *state.readers.entry(era).or_default() += 1;
        Reader {
            segments: self.clone(),
            era,
        }
    }

    /// The segment appends go to now, if any. Only it can receive records: the others only
    /// lose them (to removals and compaction).
    pub fn current(&self) -> Option<u32> {
        self.state().current.map(|(n, _)| n)
    }

    /// Retires `segment` (the index no longer names it, durably): it is removed once every
    /// reader registered before now has ended (at once when none is), at the next `retire`
    /// or `sync`. Its name's removal is durable once a `sync` after it returns. The segment
    /// appends go to, one unknown, or one retired already, is left as it is.
    pub fn retire(&self, segment: u32) -> Result<()> {
        let mut state = self.state();
        let appending = state.current.is_some_and(|(n, _)| n == segment);
        let known = state.open.contains_key(&segment);
        if appending || !known || state.retired.iter().any(|&(_, n)| n == segment) {
            return Ok(());
        }
        state.era += 1;
        let era = state.era;
        state.retired.push((era, segment));
        self.remove_retired(&mut state);
        Ok(())
    }

    /// Segments retired and not removed yet (readers from before their retirement run).
    pub fn retired(&self) -> Vec<u32> {
        self.state().retired.iter().map(|&(_, n)| n).collect()
    }

    /// Removes the retired segments no reader alive may still read. A file that cannot be
    /// removed is logged and left (nothing names it: the next open's compaction retires it
    /// again); it fails nothing, as it costs no record its durability.
    fn remove_retired(&self, state: &mut State) {
        let oldest = state.readers.keys().next().copied().unwrap_or(u64::MAX);
        let (free, kept): (Vec<_>, Vec<_>) =
            state.retired.iter().partition(|&&(era, _)| era <= oldest);
        state.retired = kept;
        for (_, segment) in free {
            if Arc::make_mut(&mut state.open).remove(&segment).is_none() {
                continue;
            }
            state.unsynced.remove(&segment);
            match self.files.remove(segment) {
                Ok(()) => state.names_changed = true,
                Err(e) => tracing::warn!(segment, error = %e, "a retired body segment stays"),
            }
        }
    }

    /// Starts making the records appended so far durable, on a thread of its own, while the
    /// caller goes on (with the rest of the transaction that names them): the next `sync`
    /// waits for it, and syncs only what was appended after. Nothing is started for files
    /// that would not sync the same from another thread (`SegmentFiles::sync_ahead`), when
    /// nothing waits for a sync, or while one started earlier still runs.
    pub fn start_sync(&self) -> Result<()> {
        let mut state = self.state();
        check_failed(&state)?;
        if !self.files.sync_ahead() || state.ahead.is_some() || state.unsynced.is_empty() {
            return Ok(());
        }
        write_buffered(&mut state)?;
        let segments = std::mem::take(&mut state.unsynced);
        let files: Vec<Arc<dyn StorageBackend>> = segments
            .iter()
            .filter_map(|n| state.open.get(n).cloned())
            .collect();
        let started = std::thread::Builder::new()
            .name("carnet-segsync".into())
            .spawn(move || files.iter().try_for_each(|file| file.sync_data()));
        match started {
            Ok(ahead) => state.ahead = Some(ahead),
            // No thread to spare: `sync` does it all.
            Err(_) => state.unsynced = segments,
        }
        Ok(())
    }

    /// Makes every record appended so far, and every segment created or removed, durable.
    /// Removes first the retired segments no reader needs any more.
    pub fn sync(&self) -> Result<()> {
        let mut state = self.state();
        check_failed(&state)?;
        if let Some(ahead) = state.ahead.take() {
            let synced = ahead
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a segment's sync panicked")));
            fail_on_error(&mut state, synced, "syncing a segment")?;
        }
        self.remove_retired(&mut state);
        write_buffered(&mut state)?;
        let unsynced = std::mem::take(&mut state.unsynced);
        for n in unsynced {
            if let Some(file) = state.open.get(&n).cloned() {
                let synced = file.sync_data();
                fail_on_error(&mut state, synced, "syncing a segment")?;
            }
        }
        if state.names_changed {
            let synced = self.files.sync_names();
            fail_on_error(&mut state, synced, "syncing the segments folder")?;
            state.names_changed = false;
        }
        Ok(())
    }

    /// What failed, once a write or a sync did: from then on every append and sync fails
    /// until the segments are opened again.
    pub fn failure(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// The segments as they are now, to read from (every record appended so far included).
    pub fn view(&self) -> Result<View> {
        let mut state = self.state();
        if !state.buffered.is_empty() {
            check_failed(&state)?;
            write_buffered(&mut state)?;
        }
        Ok(View {
            open: state.open.clone(),
        })
    }

    /// Each segment not retired, and its length in bytes.
    pub fn sizes(&self) -> Result<Vec<(u32, u64)>> {
        let view = self.view()?;
        let retired: BTreeSet<u32> = self.state().retired.iter().map(|&(_, n)| n).collect();
        view.open
            .iter()
            .filter(|(n, _)| !retired.contains(n))
            .map(|(n, file)| Ok((*n, file.len()?)))
            .collect()
    }

    /// Removes segment `segment` (nothing may name it any more); views taken before still
    /// read it. Durable once `sync` returns. The segment appends go to is not removed: the
    /// next append starts a new one.
    pub fn remove(&self, segment: u32) -> Result<()> {
        let mut state = self.state();
        check_failed(&state)?;
        if state.current.is_some_and(|(n, _)| n == segment) {
            state.current = None;
            state.buffered.clear();
        }
        if Arc::make_mut(&mut state.open).remove(&segment).is_none() {
            return Err(Error::not_found(format!("no segment {segment}")));
        }
        state.unsynced.remove(&segment);
        let removed = self.files.remove(segment);
        fail_on_error(&mut state, removed, "removing a segment")?;
        state.names_changed = true;
        Ok(())
    }
}

impl View {
    /// The bytes of the record at `at`.
    pub fn read(&self, at: Location) -> Result<Vec<u8>> {
        let damaged = |why: &str| {
            Error::integrity(format!(
                "the record at {}:{} ({} bytes) {why}: restore the data folder from your last backup",
                at.segment, at.offset, at.len
            ))
        };
        let file = self
            .open
            .get(&at.segment)
            .ok_or_else(|| damaged("is in a segment that is missing"))?;
        // A location read from a damaged index allocates at most `RECORD_MAX` (no length
        // lookup per read: the read itself finds a record past the segment's end).
        let fits = at.len as usize <= RECORD_MAX
            && at
                .offset
                .checked_add((HEADER as u64) + u64::from(at.len))
                .is_some();
        if !fits {
            return Err(damaged("ends past its segment's end"));
        }
        let mut record = vec![0u8; HEADER + at.len as usize];
        file.read(at.offset, &mut record).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                damaged("ends past its segment's end")
            } else {
                Error::Storage(format!("reading segment {}: {e}", at.segment))
            }
        })?;
        let bytes = record.split_off(HEADER);
        let mut len = [0u8; 4];
        len.copy_from_slice(&record[..4]);
        let len = u32::from_le_bytes(len);
        let expected = if len == at.len | ENDED {
            check_ends(at.segment, at.offset, &bytes)
        } else if len == at.len {
            check_whole(at.segment, at.offset, &bytes)
        } else {
            return Err(damaged("is not the one written there"));
        };
        if record[4..] != expected {
            return Err(damaged("is not the one written there"));
        }
        Ok(bytes)
    }
}

/// Raises this process's soft limit on open files to its hard limit (idempotent; a limit
/// that cannot be raised is left as it is, and a segment that then cannot be opened says so).
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Linux caps it at `fs.nr_open`, 2^20 unless set otherwise, even under no hard limit.
    const NR_OPEN: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.map_or(NR_OPEN, |hard| hard.min(NR_OPEN));
    if limit.current.is_some_and(|soft| soft < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "the open-files limit could not be raised");
        }
    }
}

/// The process's soft limit on open files (`None`: unlimited).
fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The BLAKE3 hasher keyed by a record's place (`segment ‖ offset`, zeros after).
fn keyed_by_place(segment: u32, offset: u64) -> blake3::Hasher {
    let mut place = [0u8; 32];
    place[..4].copy_from_slice(&segment.to_le_bytes());
    place[4..12].copy_from_slice(&offset.to_le_bytes());
    blake3::Hasher::new_keyed(&place)
}

fn first_bytes(hasher: &blake3::Hasher) -> [u8; CHECK] {
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECK]);
    out
}

/// The check of a record written with `ENDED`: its first and last `ENDS` bytes (all of it when
/// shorter than `2 * ENDS`), keyed by its place.
fn check_ends(segment: u32, offset: u64, bytes: &[u8]) -> [u8; CHECK] {
    let mut hasher = keyed_by_place(segment, offset);
    match bytes.len().checked_sub(ENDS) {
        Some(last) if bytes.len() > 2 * ENDS => {
            hasher.update(&bytes[..ENDS]).update(&bytes[last..]);
        }
        _ => {
            hasher.update(bytes);
        }
    }
    first_bytes(&hasher)
}

/// The check of a record an earlier build wrote: all its bytes, keyed by its place.
fn check_whole(segment: u32, offset: u64, bytes: &[u8]) -> [u8; CHECK] {
    let mut hasher = keyed_by_place(segment, offset);
    hasher.update(bytes);
    first_bytes(&hasher)
}

/// Writes the records buffered for the current segment to its file.
fn write_buffered(state: &mut State) -> Result<()> {
    let Some((segment, end)) = state.current.filter(|_| !state.buffered.is_empty()) else {
        return Ok(());
    };
    let file = state.open.get(&segment).cloned();
    let at = end - state.buffered.len() as u64;
    let written = match file {
        Some(file) => file.write(at, &state.buffered),
        None => Err(io::Error::other(format!("segment {segment} is not open"))),
    };
    fail_on_error(state, written, "appending to a segment")?;
    state.buffered.clear();
    // One large record leaves no large buffer behind.
    state.buffered.shrink_to(BUFFER_BYTES);
    Ok(())
}

fn check_failed(state: &State) -> Result<()> {
    match &state.failed {
        Some(why) => Err(Error::Storage(format!(
            "the segments failed earlier ({why}): open the replica again"
        ))),
        None => Ok(()),
    }
}

/// `outcome`, recording its failure in `state` (every later append and sync fails with it).
fn fail_on_error<T>(state: &mut State, outcome: io::Result<T>, doing: &str) -> Result<T> {
    outcome.map_err(|e| {
        let why = format!("{doing}: {e}");
        state.failed = Some(why.clone());
        state.current = None;
        state.buffered.clear();
        Error::Storage(why)
    })
}

#[cfg(test)]
pub(crate) mod tests;
