//! A simulated folder of files for `carnet_store::segments`: each file a `SimDisk`, and the
//! folder's names (files created, files removed) durable only once the folder is synced.
//!
//! Invariants:
//! - A power cut (`power_cut`) puts back the names as last synced (a file created since goes,
//!   a file removed since comes back), then cuts each file as its `SimDisk` does.
//! - Handles are clones of one folder; a removed file stays readable through a handle opened
//!   before, as an open file does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use carnet_store::segments::SegmentFiles;

use crate::disk::SimDisk;
use crate::rng::Rng;

#[derive(Debug, Default)]
struct State {
    /// Every file not yet gone for good (a removal not synced may still be undone).
    files: BTreeMap<u32, SimDisk>,
    names: BTreeSet<u32>,
    durable_names: BTreeSet<u32>,
}

/// A simulated folder (see the module doc). Cheap to clone: clones share the folder.
#[derive(Debug, Clone, Default)]
pub struct SimFolder(Arc<Mutex<State>>);

impl SimFolder {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file named `n`, if any.
    pub fn file(&self, n: u32) -> Option<SimDisk> {
        let s = self.state();
        s.names
            .contains(&n)
            .then(|| s.files.get(&n).cloned())
            .flatten()
    }

    /// The bytes of every file present, one after the other (for the plaintext check).
    pub fn contents(&self) -> Vec<u8> {
        let s = self.state();
        s.names
            .iter()
            .filter_map(|n| s.files.get(n))
            .flat_map(|file| file.contents())
            .collect()
    }

    /// The process stopped: no file takes a write any more (`SimDisk::halt`).
    pub fn halt(&self) {
        for file in self.state().files.values() {
            file.halt();
        }
    }

    /// Writes are taken again, after a crash that kept everything written (names included:
    /// the kernel keeps them as it keeps the files' pages).
    pub fn restart(&self) {
        let mut s = self.state();
        s.durable_names = s.names.clone();
        let names = s.names.clone();
        s.files.retain(|n, _| names.contains(n));
        for file in s.files.values() {
            file.restart();
        }
    }

    /// A power cut: the names as last synced, each file as its disk keeps it.
    pub fn power_cut(&self, rng: &mut Rng) {
        let mut s = self.state();
        s.names = s.durable_names.clone();
        let names = s.names.clone();
        s.files.retain(|n, _| names.contains(n));
        for file in s.files.values() {
            file.power_cut(rng);
        }
    }
}

impl SegmentFiles for SimFolder {
    fn list(&self) -> io::Result<Vec<u32>> {
        Ok(self.state().names.iter().copied().collect())
    }

    fn open(&self, n: u32, create: bool) -> io::Result<Box<dyn redb::StorageBackend>> {
        let mut s = self.state();
        let present = s.names.contains(&n);
        if present == create {
            return Err(if create {
                io::ErrorKind::AlreadyExists
            } else {
                io::ErrorKind::NotFound
            }
            .into());
        }
        if create {
            s.names.insert(n);
            s.files.insert(n, SimDisk::new());
        }
        let file = s.files.get(&n).cloned().ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(file))
    }

    fn remove(&self, n: u32) -> io::Result<()> {
        if !self.state().names.remove(&n) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(())
    }

    /// 16 KiB: a node fills a segment in a few documents, so its runs leave many behind for
    /// compaction, at open and while it runs.
    fn segment_bytes(&self) -> u64 {
        16 << 10
    }

    fn sync_names(&self) -> io::Result<()> {
        let mut s = self.state();
        s.durable_names = s.names.clone();
        let names = s.names.clone();
        s.files.retain(|n, _| names.contains(n));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Fault;
    use carnet_store::Error;
    use carnet_store::segments::{Location, Segments};

    /// Distinct bytes for record `i` of `len`.
    fn bytes(i: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|j| (i.wrapping_mul(131) as usize + j * 7) as u8)
            .collect()
    }

    /// Segments on a simulated folder, 2,000 seeds: appends of random sizes, syncs, views
    /// and removals, a write that fails or a power cut at a random write, then the folder
    /// opened again. Every record appended before a sync that returned reads whole (unless
    /// its segment was removed); every other reads whole or is an integrity error.
    #[test]
    fn synced_records_survive_faults_and_power_cuts_and_no_record_reads_as_other_bytes() {
        let (mut cuts, mut synced_read, mut unsynced_lost) = (0, 0, 0);
        for seed in 0..2000 {
            let mut rng = Rng::new(seed);
            let folder = SimFolder::default();
            let segments =
                Segments::open(Box::new(folder.clone()), rng.between(200, 5000)).expect("open");
            let (mut records, mut synced, mut removed) = (Vec::new(), 0, BTreeSet::new());
            let fault_at = rng.below(40);
            for step in 0..rng.between(5, 60) {
                if step == fault_at {
                    // Armed on every file: the next write to any of them fails.
                    let fault = if rng.chance(500) {
                        Fault::PowerCut
                    } else {
                        Fault::Io
                    };
                    for n in folder.list().expect("list") {
                        if let Some(file) = folder.file(n) {
                            file.arm(0, fault);
                        }
                    }
                }
                match rng.below(10) {
                    0 | 1 => match segments.sync() {
                        Ok(()) => synced = records.len(),
                        Err(_) => break,
                    },
                    2 => {
                        if segments.view().is_err() {
                            break;
                        }
                    }
                    3 => {
                        let old = records
                            .get(..synced)
                            .and_then(|r: &[(Location, Vec<u8>)]| r.first())
                            .map(|(at, _)| at.segment);
                        if let Some(n) = old.filter(|n| !removed.contains(n))
                            && segments.remove(n).is_ok()
                        {
                            removed.insert(n);
                        }
                    }
                    _ => {
                        let len = rng.below(700) as usize;
                        let body = bytes(records.len() as u64 + seed * 1000, len);
                        match segments.append(&body) {
                            Ok(at) => records.push((at, body)),
                            Err(_) => break,
                        }
                    }
                }
            }
            drop(segments);
            if rng.chance(700) {
                cuts += 1;
                folder.power_cut(&mut rng);
            } else {
                for n in folder.list().expect("list") {
                    if let Some(file) = folder.file(n) {
                        file.restart();
                    }
                }
            }
            let again = Segments::open(Box::new(folder.clone()), 1000).expect("open again");
            let view = again.view().expect("view");
            for (i, (at, body)) in records.iter().enumerate() {
                let gone = removed.contains(&at.segment);
                match view.read(*at) {
                    Ok(read) => {
                        assert_eq!(&read, body, "seed {seed}: record {i} read other bytes");
                        synced_read += usize::from(i < synced);
                    }
                    Err(Error::Integrity(_)) if i >= synced || gone => {
                        unsynced_lost += usize::from(i >= synced);
                    }
                    Err(e) => panic!("seed {seed}: record {i} of {synced} synced: {e}"),
                }
            }
        }
        assert!(cuts > 1000, "{cuts} power cuts in 2,000 seeds");
        assert!(
            synced_read > 10_000 && unsynced_lost > 1000,
            "{synced_read} synced records read, {unsynced_lost} unsynced lost: the seeds test little"
        );
    }
}
