//! A simulated disk under a replica's database (a redb `StorageBackend`): what was written
//! since the last sync may be lost at a power cut, a write may be torn, and a write may fail
//! with ENOSPC or EIO.
//!
//! Invariants:
//! - Reads see every write made so far, as a file in the page cache does.
//! - A sync makes every earlier write and length change durable.
//! - A power cut (`power_cut`) keeps what was durable, then each later write or not (in
//!   issue order; the last one kept may be torn, only a prefix of it reaching the platter),
//!   as the seed decides; length changes are kept (they only change what is unwritten).
//! - Once a fault fired (a failed write, or the power gone at a write), every operation fails
//!   until the node restarts: the process would see its file in an unknown state.
//!
//! Handles are clones of one disk: the replica holds one, the simulator another.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::rng::Rng;

/// What the disk does at a chosen write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write fails: the disk is full.
    NoSpace,
    /// The write fails: an I/O error.
    Io,
    /// The power goes at this write (it does not happen): the node is down.
    PowerCut,
}

#[derive(Debug, Default)]
struct State {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Operations since the last sync, in order.
    unsynced: Vec<Unsynced>,
    /// Writes issued so far (faults are armed by their number).
    writes: u64,
    /// A fault armed for a write number.
    armed: Option<(u64, Fault)>,
    /// The fault that fired, until the node restarts.
    fired: Option<Fault>,
}

#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn write_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
}

/// A simulated disk (see the module doc). Cheap to clone: clones share the disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk(Arc<Mutex<State>>);

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms `fault` for the `after`-th write from now (0: the next one).
    pub fn arm(&self, after: u64, fault: Fault) {
        let mut s = self.state();
        let at = s.writes + after;
        s.armed = Some((at, fault));
    }

    /// No fault armed any more.
    pub fn disarm(&self) {
        self.state().armed = None;
    }

    /// The process stopped: the disk takes no more operations until a restart (what redb
    /// would write at a clean close never reaches it).
    pub fn halt(&self) {
        let mut s = self.state();
        s.fired.get_or_insert(Fault::PowerCut);
    }

    /// The fault that fired since the last restart, if any.
    pub fn fired(&self) -> Option<Fault> {
        self.state().fired
    }

    /// Writes issued so far.
    pub fn writes(&self) -> u64 {
        self.state().writes
    }

    /// A power cut: the disk keeps what the module doc says, chosen by `rng`; any armed fault
    /// is disarmed.
    pub fn power_cut(&self, rng: &mut Rng) {
        let mut s = self.state();
        let unsynced = std::mem::take(&mut s.unsynced);
        let mut disk = std::mem::take(&mut s.durable);
        for op in unsynced {
            match op {
                Unsynced::SetLen(len) => disk.resize(len as usize, 0),
                Unsynced::Write { offset, data } => match rng.below(4) {
                    0 => {}
                    // Torn: a prefix reached the disk.
                    1 => {
                        let cut = rng.below(data.len() as u64 + 1) as usize;
                        write_at(&mut disk, offset, &data[..cut]);
                    }
                    _ => write_at(&mut disk, offset, &data),
                },
            }
        }
        s.current = disk.clone();
        s.durable = disk;
        s.armed = None;
        s.fired = None;
    }

    /// A restart without a power cut (the process died, the kernel kept its page cache): every
    /// write survives.
    pub fn restart(&self) {
        let mut s = self.state();
        s.durable = s.current.clone();
        s.unsynced.clear();
        s.armed = None;
        s.fired = None;
    }

    /// Everything the disk holds now, as a thief of the disk would read it.
    pub fn contents(&self) -> Vec<u8> {
        self.state().current.clone()
    }

    fn check(s: &State) -> io::Result<()> {
        match s.fired {
            None => Ok(()),
            Some(f) => Err(io::Error::other(format!("simulated disk down after {f:?}"))),
        }
    }
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        let s = self.state();
        Self::check(&s)?;
        Ok(s.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.state();
        Self::check(&s)?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.saturating_add(out.len());
        if end > s.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the simulated disk",
            ));
        }
        out.copy_from_slice(&s.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state();
        Self::check(&s)?;
        s.current.resize(len as usize, 0);
        s.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state();
        Self::check(&s)?;
        // What was written since the last sync reaches the platter (not a copy of the whole
        // disk: a journal syncs each small frame of a 16 MiB file).
        let unsynced = std::mem::take(&mut s.unsynced);
        for op in unsynced {
            match op {
                Unsynced::SetLen(len) => s.durable.resize(len as usize, 0),
                Unsynced::Write { offset, data } => write_at(&mut s.durable, offset, &data),
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        Self::check(&s)?;
        let n = s.writes;
        s.writes += 1;
        if let Some((at, fault)) = s.armed
            && at == n
        {
            s.armed = None;
            s.fired = Some(fault);
            return Err(match fault {
                Fault::NoSpace => io::Error::from_raw_os_error(28),
                Fault::Io => io::Error::from_raw_os_error(5),
                Fault::PowerCut => io::Error::other("simulated power cut"),
            });
        }
        write_at(&mut s.current, offset, data);
        s.unsynced.push(Unsynced::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_power_cut_keeps_what_was_synced_and_a_fault_stops_the_disk_until_restart() {
        let disk = SimDisk::new();
        disk.write(0, b"synced").expect("write");
        disk.sync_data().expect("sync");
        disk.write(0, b"LATER!").expect("write");
        let mut buf = [0u8; 6];
        disk.read(0, &mut buf).expect("read");
        assert_eq!(&buf, b"LATER!");
        // Whatever the draws, the synced bytes or a prefix of the later write are there.
        for seed in 0..32 {
            let d = SimDisk::new();
            d.write(0, b"synced").expect("write");
            d.sync_data().expect("sync");
            d.write(0, b"LATER!").expect("write");
            d.power_cut(&mut Rng::new(seed));
            let got = d.contents();
            let n = got
                .iter()
                .zip(b"LATER!")
                .take_while(|(a, b)| a == b)
                .count();
            assert_eq!(&got[n..], &b"synced"[n..], "seed {seed}");
        }
        disk.arm(1, Fault::NoSpace);
        disk.write(8, b"x").expect("the next write is fine");
        let e = disk.write(9, b"y").expect_err("the armed one fails");
        assert_eq!(e.raw_os_error(), Some(28));
        assert!(disk.read(0, &mut buf).is_err(), "down until restart");
        disk.restart();
        disk.read(0, &mut buf).expect("back");
        assert_eq!(disk.fired(), None);
    }
}
