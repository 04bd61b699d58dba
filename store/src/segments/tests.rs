//! The segments on a simulated disk that loses, at a power cut, what was not synced, and in
//! a folder on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use super::*;

/// A file's bytes as written and as synced.
type Bytes = (Vec<u8>, Vec<u8>);

/// A disk in memory: each file's bytes, and the names of the files as they are and as synced.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    files: BTreeMap<u32, Arc<Mutex<Bytes>>>,
    names: BTreeSet<u32>,
    synced_names: BTreeSet<u32>,
    /// Writes and syncs fail from now on.
    pub(crate) broken: bool,
    /// Syncs (only) fail from now on.
    syncs_fail: bool,
    /// Segments may sync ahead (`SegmentFiles::sync_ahead`).
    sync_ahead: bool,
    /// The thread of each file sync, in order.
    synced_on: Vec<std::thread::ThreadId>,
}

/// Segment files on a `Disk` (the replica's tests put a replica's segments there too).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemFiles(Arc<Mutex<Disk>>);

impl MemFiles {
    /// Changes on disk (as written) the record at `at`, its header included.
    fn on_disk(&self, at: Location, change: impl FnOnce(&mut [u8])) {
        let d = self.disk();
        let mut file = d
            .files
            .get(&at.segment)
            .expect("file")
            .lock()
            .expect("file");
        let start = at.offset as usize;
        let end = start + HEADER + at.len as usize;
        change(&mut file.0[start..end]);
    }

    pub(crate) fn disk(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().expect("disk")
    }

    /// What a power cut leaves: the synced bytes of the files whose names were synced.
    fn power_cut(&self) {
        self.power_cut_keeping(0);
    }

    /// A power cut that leaves, of each file, its synced bytes and the first `torn` bytes
    /// written after them (the disk had written some of them: a record may be cut anywhere).
    fn power_cut_keeping(&self, torn: usize) {
        let mut disk = self.disk();
        disk.names = disk.synced_names.clone();
        let names = disk.names.clone();
        disk.files.retain(|n, _| names.contains(n));
        for file in disk.files.values() {
            let mut file = file.lock().expect("file");
            let (written, synced) = &mut *file;
            let kept = written.len().min(synced.len() + torn);
            let mut left = synced.clone();
            left.resize(kept, 0);
            left[synced.len().min(kept)..kept]
                .copy_from_slice(&written[synced.len().min(kept)..kept]);
            *written = left;
        }
    }

    fn segments(&self, max_bytes: u64) -> Segments {
        Segments::open(Box::new(self.clone()), max_bytes).expect("open")
    }
}

impl SegmentFiles for MemFiles {
    fn list(&self) -> io::Result<Vec<u32>> {
        Ok(self.disk().names.iter().copied().collect())
    }

    fn open(&self, n: u32, create: bool) -> io::Result<Box<dyn StorageBackend>> {
        let mut disk = self.disk();
        match (disk.names.contains(&n), create) {
            (true, true) => return Err(io::ErrorKind::AlreadyExists.into()),
            (false, false) => return Err(io::ErrorKind::NotFound.into()),
            (false, true) => {
                disk.names.insert(n);
                disk.files.insert(n, Default::default());
            }
            (true, false) => {}
        }
        let bytes = disk.files.get(&n).cloned().ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(MemFile {
            disk: self.clone(),
            bytes,
        }))
    }

    fn remove(&self, n: u32) -> io::Result<()> {
        // The file goes once its name's removal is synced (or a power cut keeps it).
        self.disk().names.remove(&n);
        Ok(())
    }

    fn sync_names(&self) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.broken {
            return Err(io::Error::other("the disk is broken"));
        }
        disk.synced_names = disk.names.clone();
        let names = disk.names.clone();
        disk.files.retain(|n, _| names.contains(n));
        Ok(())
    }

    fn sync_ahead(&self) -> bool {
        self.disk().sync_ahead
    }
}

/// One file of a `MemFiles` disk (still readable once removed, as an open file is).
#[derive(Debug)]
struct MemFile {
    disk: MemFiles,
    bytes: Arc<Mutex<Bytes>>,
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut Bytes, bool) -> io::Result<T>) -> io::Result<T> {
        let broken = self.disk.disk().broken;
        f(&mut self.bytes.lock().expect("file"), broken)
    }
}

impl StorageBackend for MemFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|(written, _), _| Ok(written.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|(written, _), _| {
            let from = usize::try_from(offset).map_err(io::Error::other)?;
            let bytes = written
                .get(from..from + out.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            out.copy_from_slice(bytes);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|(written, _), _| {
            written.resize(len as usize, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let syncs_fail = {
            let mut disk = self.disk.disk();
            disk.synced_on.push(std::thread::current().id());
            disk.syncs_fail
        };
        self.with(|(written, synced), broken| {
            if broken || syncs_fail {
                return Err(io::Error::other("the disk is broken"));
            }
            *synced = written.clone();
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|(written, _), broken| {
            if broken {
                return Err(io::Error::other("the disk is broken"));
            }
            let from = offset as usize;
            if written.len() < from + data.len() {
                written.resize(from + data.len(), 0);
            }
            written[from..from + data.len()].copy_from_slice(data);
            Ok(())
        })
    }
}

/// Distinct bytes of `len` for record `i`.
fn bytes(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn is_integrity(r: Result<Vec<u8>>) -> bool {
    matches!(r, Err(Error::Integrity(_)))
}

#[test]
fn records_read_back_across_segments_and_after_opening_again() {
    let disk = MemFiles::default();
    let segments = disk.segments(100);
    let sizes = [0, 1, 40, 150, 3, 99, 100, 7];
    let at: Vec<Location> = sizes
        .iter()
        .enumerate()
        .map(|(i, len)| segments.append(&bytes(i, *len)).expect("append"))
        .collect();
    let view = segments.view().expect("view");
    for (i, (len, at)) in sizes.iter().zip(&at).enumerate() {
        assert_eq!(view.read(*at).expect("read"), bytes(i, *len), "record {i}");
        assert_eq!(Location::decode(&at.encode()).expect("decode"), *at);
    }
    let used: BTreeSet<u32> = at.iter().map(|a| a.segment).collect();
    assert!(
        used.len() > 2,
        "100-byte segments were not rotated: {used:?}"
    );
    for (n, size) in segments.sizes().expect("sizes") {
        assert!(size < 100 + 150 + 20, "segment {n} grew to {size}");
    }
    segments.sync().expect("sync");
    drop(segments);

    let again = disk.segments(100);
    let view = again.view().expect("view");
    for (i, (len, at)) in sizes.iter().zip(&at).enumerate() {
        assert_eq!(view.read(*at).expect("read"), bytes(i, *len), "record {i}");
    }
    let next = again.append(b"after opening again").expect("append");
    assert!(
        next.segment > *used.last().expect("used"),
        "an append went to a segment written before opening: {next:?}"
    );
}

#[test]
fn a_record_filled_in_place_reads_back_and_a_failed_fill_appends_nothing() {
    let disk = MemFiles::default();
    let segments = disk.segments(1 << 20);
    let failed = segments.append_with(64, |slot: &mut [u8]| {
        slot[0] = 1;
        Err(Error::invalid("sealing failed"))
    });
    assert!(matches!(failed, Err(Error::Invalid(_))), "{failed:?}");
    let at = segments
        .append_with(64, |slot: &mut [u8]| {
            slot.copy_from_slice(&bytes(1, 64));
            Ok::<(), Error>(())
        })
        .expect("append");
    assert_eq!(at.offset, 0, "the failed fill took room");
    segments.sync().expect("sync");
    let view = disk.segments(1 << 20).view().expect("view");
    assert_eq!(view.read(at).expect("read"), bytes(1, 64));
    assert_eq!(
        segments.sizes().expect("sizes"),
        vec![(at.segment, (HEADER + 64) as u64)]
    );
}

#[test]
fn records_past_the_buffer_read_back_and_the_buffer_never_grows_past_it() {
    let disk = MemFiles::default();
    let segments = disk.segments(64 << 20);
    // Five records of 300 KiB and small ones between: the buffer fills past 1 MiB twice.
    let k300 = 300 << 10;
    let sizes = [k300, 10, k300, k300, 20, k300, k300, 5];
    let at: Vec<Location> = sizes
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let at = segments.append(&bytes(i, *len)).expect("append");
            let capacity = segments.state().buffered.capacity();
            assert!(capacity <= BUFFER_BYTES, "record {i}: capacity {capacity}");
            at
        })
        .collect();
    let view = segments.view().expect("view");
    for (i, (len, at)) in sizes.iter().zip(&at).enumerate() {
        assert_eq!(view.read(*at).expect("read"), bytes(i, *len), "record {i}");
    }
    segments.sync().expect("sync");
    let view = disk.segments(64 << 20).view().expect("view");
    for (i, (len, at)) in sizes.iter().zip(&at).enumerate() {
        assert_eq!(view.read(*at).expect("read"), bytes(i, *len), "record {i}");
    }
}

#[test]
fn a_damaged_or_misplaced_record_is_an_integrity_error() {
    let disk = MemFiles::default();
    let segments = disk.segments(1 << 20);
    let first = segments.append(&bytes(1, 64)).expect("append");
    let second = segments.append(&bytes(2, 64)).expect("append");
    let view = segments.view().expect("view");
    // Another length, another offset, another segment, past the end.
    for wrong in [
        Location { len: 63, ..first },
        Location {
            offset: first.offset + 1,
            ..first
        },
        Location {
            segment: first.segment + 1,
            ..first
        },
        Location {
            offset: second.offset + 60,
            ..second
        },
        Location {
            len: 1 << 20,
            ..second
        },
        // Read from a damaged index: nothing is allocated for them.
        Location {
            len: u32::MAX,
            ..second
        },
        Location {
            offset: u64::MAX - 8,
            ..second
        },
    ] {
        assert!(is_integrity(view.read(wrong)), "{wrong:?} was read");
    }
    // One byte of the first record changed on disk.
    disk.on_disk(first, |record| record[HEADER + 10] ^= 1);
    assert!(is_integrity(view.read(first)), "a changed record was read");
    assert_eq!(view.read(second).expect("read"), bytes(2, 64));
    assert!(matches!(
        Location::decode(&[0u8; 15]),
        Err(Error::Integrity(_))
    ));
}

/// A record's check covers its ends (its seal's nonce and tag): a byte changed in either is
/// an integrity error at the read; between them, the record's seal finds it when it is opened
/// (`replica`'s test `a_body_damaged_between_its_records_ends_is_refused_by_its_seal`).
#[test]
fn a_records_check_covers_its_ends_and_a_record_checked_whole_still_reads() {
    let disk = MemFiles::default();
    let segments = disk.segments(1 << 20);
    let len = 4096;
    let at = segments.append(&bytes(1, len)).expect("append");
    let view = segments.view().expect("view");
    let change = |i: usize| disk.on_disk(at, |record| record[HEADER + i] ^= 1);
    for i in [0, ENDS - 1, len - ENDS, len - 1] {
        change(i);
        assert!(is_integrity(view.read(at)), "byte {i} changed was read");
        change(i);
    }
    change(len / 2);
    assert_eq!(
        view.read(at).expect("read").len(),
        len,
        "the middle is the seal's"
    );
    change(len / 2);

    // A record an earlier build wrote: its length without `ENDED`, its check over all of it.
    let whole = check_whole(at.segment, at.offset, &bytes(1, len));
    disk.on_disk(at, |record| {
        record[..4].copy_from_slice(&at.len.to_le_bytes());
        record[4..HEADER].copy_from_slice(&whole);
    });
    assert_eq!(view.read(at).expect("read"), bytes(1, len));
    change(len / 2);
    assert!(
        is_integrity(view.read(at)),
        "checked whole: a change anywhere is found"
    );
}

#[test]
fn a_power_cut_keeps_what_was_synced_and_nothing_else_reads_as_a_record() {
    let disk = MemFiles::default();
    let segments = disk.segments(1 << 20);
    let kept = segments.append(&bytes(1, 500)).expect("append");
    segments.sync().expect("sync");
    let lost = segments.append(&bytes(2, 500)).expect("append");
    disk.power_cut();
    drop(segments);
    let again = disk.segments(1 << 20);
    let view = again.view().expect("view");
    assert_eq!(view.read(kept).expect("read"), bytes(1, 500));
    assert!(is_integrity(view.read(lost)), "an unsynced record survived");

    // A segment created and written since the last sync goes whole, name and all; synced,
    // it stays.
    let unsynced = again.append(&bytes(3, 10)).expect("append");
    disk.power_cut();
    assert!(!disk.list().expect("list").contains(&unsynced.segment));
    let again = disk.segments(1 << 20);
    let synced = again.append(&bytes(4, 10)).expect("append");
    again.sync().expect("sync");
    disk.power_cut();
    let view = disk.segments(1 << 20).view().expect("view");
    assert_eq!(view.read(synced).expect("read"), bytes(4, 10));
    assert_eq!(view.read(kept).expect("read"), bytes(1, 500));
}

/// Wherever a power cut cuts what was written and not synced, each record reads back whole
/// or is an integrity error: never other bytes.
#[test]
fn a_record_cut_anywhere_by_a_power_cut_reads_whole_or_not_at_all() {
    let sizes = [10, 0, 300, 41, 1000, 7];
    let total: usize = sizes.iter().map(|len| HEADER + len).sum();
    for torn in (0..=total).step_by(13).chain([HEADER, HEADER + 9, total]) {
        let disk = MemFiles::default();
        let segments = disk.segments(1 << 20);
        let synced = segments.append(&bytes(99, 50)).expect("append");
        segments.sync().expect("sync");
        let at: Vec<Location> = sizes
            .iter()
            .enumerate()
            .map(|(i, len)| segments.append(&bytes(i, *len)).expect("append"))
            .collect();
        // Written (the view writes what waits), not synced.
        segments.view().expect("view");
        disk.power_cut_keeping(torn);
        let view = disk.segments(1 << 20).view().expect("view");
        assert_eq!(view.read(synced).expect("read"), bytes(99, 50));
        let mut whole = 0;
        for (i, (len, at)) in sizes.iter().zip(&at).enumerate() {
            match view.read(*at) {
                Ok(read) => {
                    assert_eq!(read, bytes(i, *len), "record {i}, {torn} bytes kept");
                    whole += 1;
                }
                Err(Error::Integrity(_)) => {}
                Err(e) => panic!("record {i}, {torn} bytes kept: {e}"),
            }
        }
        if torn == total {
            assert_eq!(whole, sizes.len(), "everything was kept");
        }
    }
}

#[test]
fn a_view_reads_a_segment_removed_after_it_was_taken() {
    let disk = MemFiles::default();
    let segments = disk.segments(10);
    let old = segments.append(&bytes(1, 30)).expect("append");
    let new = segments.append(&bytes(2, 30)).expect("append");
    assert_ne!(old.segment, new.segment);
    let before = segments.view().expect("view");
    segments.remove(old.segment).expect("remove");
    segments.sync().expect("sync");
    assert_eq!(before.read(old).expect("read"), bytes(1, 30));
    assert!(
        is_integrity(segments.view().expect("view").read(old)),
        "a removed segment was read"
    );
    assert!(matches!(
        segments.remove(old.segment),
        Err(Error::NotFound(_))
    ));
    // Removing the segment appends go to: the next append starts another. Not synced, the
    // removal does not outlive a power cut; the synced one does.
    segments.remove(new.segment).expect("remove");
    let next = segments.append(&bytes(3, 5)).expect("append");
    assert!(next.segment > new.segment);
    disk.power_cut();
    let view = disk.segments(10).view().expect("view");
    assert!(is_integrity(view.read(old)), "a removed segment came back");
    assert_eq!(view.read(new).expect("read"), bytes(2, 30));
}

#[test]
fn after_a_failed_sync_every_append_and_sync_fails_until_opened_again() {
    let disk = MemFiles::default();
    let segments = disk.segments(1 << 20);
    let first = segments.append(&bytes(1, 10)).expect("append");
    segments.sync().expect("sync");
    segments.append(&bytes(2, 10)).expect("append");
    assert_eq!(segments.failure(), None);
    disk.disk().broken = true;
    assert!(matches!(segments.sync(), Err(Error::Storage(_))));
    let failure = segments.failure();
    assert!(
        failure.as_ref().is_some_and(|why| why.contains("broken")),
        "{failure:?}"
    );
    disk.disk().broken = false;
    assert!(
        matches!(segments.sync(), Err(Error::Storage(_))),
        "a sync after a failed one succeeded"
    );
    assert!(matches!(segments.append(b"more"), Err(Error::Storage(_))));
    let view = segments.view().expect("view");
    assert_eq!(view.read(first).expect("read"), bytes(1, 10));
    let again = disk.segments(1 << 20);
    let at = again.append(b"more").expect("append");
    again.sync().expect("sync");
    assert_eq!(again.view().expect("view").read(at).expect("read"), b"more");
}

#[test]
fn a_sync_started_ahead_runs_on_a_thread_of_its_own_and_sync_waits_for_it() {
    let disk = MemFiles::default();
    disk.disk().sync_ahead = true;
    let segments = disk.segments(1 << 20);
    let first = segments.append(&bytes(1, 500)).expect("append");
    segments.start_sync().expect("start");
    let second = segments.append(&bytes(2, 500)).expect("append");
    segments.sync().expect("sync");
    let here = std::thread::current().id();
    let synced_on = disk.disk().synced_on.clone();
    assert_eq!(synced_on.len(), 2, "{synced_on:?}");
    assert_ne!(
        synced_on[0], here,
        "the first records synced ahead, elsewhere"
    );
    assert_eq!(synced_on[1], here, "the later ones by `sync`");
    disk.power_cut();
    drop(segments);
    let view = disk.segments(1 << 20).view().expect("view");
    assert_eq!(view.read(first).expect("read"), bytes(1, 500));
    assert_eq!(view.read(second).expect("read"), bytes(2, 500));

    // Files that may not sync ahead (a simulated disk) are synced by `sync` alone.
    disk.disk().sync_ahead = false;
    let segments = disk.segments(1 << 20);
    segments.append(&bytes(3, 10)).expect("append");
    segments.start_sync().expect("start");
    assert_eq!(disk.disk().synced_on.len(), 2, "nothing synced ahead");
    segments.sync().expect("sync");
    assert_eq!(disk.disk().synced_on.last(), Some(&here));
}

#[test]
fn a_sync_ahead_that_failed_fails_the_sync_waiting_for_it_and_every_later_one() {
    let disk = MemFiles::default();
    disk.disk().sync_ahead = true;
    let segments = disk.segments(1 << 20);
    segments.append(&bytes(1, 10)).expect("append");
    disk.disk().syncs_fail = true;
    segments.start_sync().expect("start");
    // What `start_sync` took is synced ahead only: `sync` has nothing of its own to sync.
    let failed = segments.sync();
    assert!(
        matches!(&failed, Err(Error::Storage(why)) if why.contains("broken")),
        "{failed:?}"
    );
    disk.disk().syncs_fail = false;
    assert!(matches!(segments.sync(), Err(Error::Storage(_))));
    assert!(matches!(segments.append(b"more"), Err(Error::Storage(_))));
}

#[test]
fn after_a_fill_that_panicked_every_append_fails_and_nothing_is_written_over() {
    let disk = MemFiles::default();
    let segments = disk.segments(1 << 20);
    let kept = segments.append(&bytes(1, 100)).expect("append");
    segments.sync().expect("sync");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        segments.append_with(50, |_: &mut [u8]| -> Result<()> {
            panic!("sealing panicked")
        })
    }));
    assert!(panicked.is_err());
    assert!(matches!(segments.append(b"more"), Err(Error::Storage(_))));
    assert!(matches!(segments.sync(), Err(Error::Storage(_))));
    let view = disk.segments(1 << 20).view().expect("view");
    assert_eq!(view.read(kept).expect("read"), bytes(1, 100));
}

#[test]
fn in_a_folder_segments_are_files_of_their_own_and_links_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(SEGMENTS_DIR);
    let segments = Segments::in_folder(&path).expect("open");
    let at = segments.append(&bytes(1, 4096)).expect("append");
    segments.sync().expect("sync");
    drop(segments);
    std::fs::write(path.join("notes.txt"), b"not a segment").expect("write");
    let again = Segments::in_folder(&path).expect("open");
    assert_eq!(
        again.view().expect("view").read(at).expect("read"),
        bytes(1, 4096)
    );
    assert_eq!(
        again.sizes().expect("sizes"),
        vec![(at.segment, (HEADER + 4096) as u64)]
    );
    drop(again);
    // A segment's name on a link out of the folder: a clear error, nothing read through it.
    std::fs::write(dir.path().join("elsewhere"), b"outside").expect("write");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), path.join("00000009.seg"))
        .expect("link");
    assert!(matches!(Segments::in_folder(&path), Err(Error::Storage(_))));
    // The folder itself on a link: refused as well.
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(&path, &linked).expect("link");
    assert!(matches!(
        Segments::in_folder(&linked),
        Err(Error::Storage(_))
    ));
}
