//! One simulated node: a replica (the host's or a site's) on a simulated disk, with its own
//! clock, that can crash, lose power and restart.
//!
//! What lives where: the database and the trace journal are each on a `SimDisk`, the body
//! segments in a `SimFolder` of them; the key file is a real file in the node's folder (a tmpfs
//! when there is one), written once at init and synced. A crash stops the process: the disks
//! take no more writes, then they keep everything written (the kernel's page cache survives the
//! process) or, at a power cut, only what the replica synced (`SimDisk`, `SimFolder`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use carnet_store::ids::SiteId;
use carnet_store::replica::{Clock, InitOptions, KeySource, Replica};

use crate::disk::SimDisk;
use crate::folder::SimFolder;
use crate::rng::Rng;

/// A node of the simulated world.
#[derive(Debug)]
pub struct Node {
    /// `host` or `site N`, for messages.
    pub name: String,
    /// The site id (0 for the host).
    pub site: SiteId,
    /// Its data folder (key file, trace journal).
    pub dir: PathBuf,
    /// Its database's disk.
    pub disk: SimDisk,
    /// Its trace journal's disk.
    pub journal: SimDisk,
    /// Its body segments' folder.
    pub segments: SimFolder,
    /// Its clock, in Unix milliseconds: the simulator advances it.
    pub clock: Arc<AtomicU64>,
    /// The open replica; `None` while the node is down.
    replica: Option<Replica>,
    /// When a node that is down comes back.
    pub up_at: u64,
    /// Crashes so far (power cuts included).
    pub crashes: u64,
    /// Power cuts so far.
    pub power_cuts: u64,
}

fn clock_of(time: &Arc<AtomicU64>) -> Clock {
    let time = time.clone();
    Arc::new(move || time.load(Ordering::SeqCst) as i64)
}

impl Node {
    /// A new replica in `dir` on a fresh disk.
    pub fn init(name: String, dir: PathBuf, opts: InitOptions, now: u64) -> Result<Node, String> {
        let (disk, journal, segments) = (SimDisk::new(), SimDisk::new(), SimFolder::default());
        let clock = Arc::new(AtomicU64::new(now));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{name}: folder: {e}"))?;
        let replica = Replica::init_with_backends(
            &dir,
            disk.clone(),
            journal.clone(),
            segments.clone(),
            opts,
            clock_of(&clock),
        )
        .map_err(|e| format!("{name}: init: {e}"))?;
        Ok(Node {
            name,
            site: replica.config().site_id,
            dir,
            disk,
            journal,
            segments,
            clock,
            replica: Some(replica),
            up_at: 0,
            crashes: 0,
            power_cuts: 0,
        })
    }

    /// The replica, if the node is up.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    /// The replica, or an error naming the node (for the checks, once every node is up).
    pub fn up(&self) -> Result<&Replica, String> {
        self.replica
            .as_ref()
            .ok_or_else(|| format!("{} is down", self.name))
    }

    /// Sets the node's clock: world time plus its skew.
    pub fn set_time(&self, millis: u64) {
        self.clock.store(millis, Ordering::SeqCst);
    }

    /// Stops the process at once (no clean close: the disk takes no more writes first); with
    /// `power`, the disk also loses what was not synced. The node comes back at `up_at`.
    pub fn crash(&mut self, power: bool, up_at: u64, rng: &mut Rng) {
        self.disk.halt();
        self.journal.halt();
        self.segments.halt();
        self.replica = None;
        if power {
            self.disk.power_cut(rng);
            self.journal.power_cut(rng);
            self.segments.power_cut(rng);
            self.power_cuts += 1;
        } else {
            self.disk.restart();
            self.journal.restart();
            self.segments.restart();
        }
        self.crashes += 1;
        self.up_at = up_at;
    }

    /// Opens the replica again from its folder and disk, if down.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.replica.is_some() {
            return Ok(());
        }
        let replica = Replica::open_with_backends(
            &self.dir,
            self.disk.clone(),
            self.journal.clone(),
            self.segments.clone(),
            &KeySource::File,
            clock_of(&self.clock),
        )
        .map_err(|e| format!("{} does not open after a crash: {e}", self.name))?;
        self.replica = Some(replica);
        Ok(())
    }

    /// True if the node is up and its disk failed under it: the daemon would stop on the
    /// storage failure.
    pub fn disk_failed(&self) -> bool {
        self.replica.is_some() && self.fault().is_some()
    }

    /// The fault that fired on either disk since the last restart, if any.
    pub fn fault(&self) -> Option<crate::disk::Fault> {
        self.disk.fired().or(self.journal.fired())
    }
}

/// The host's operations of `r`, the world's host (node 0 is the host by construction).
pub fn as_host(r: &Replica) -> carnet_store::replica::Host<'_> {
    r.as_host().expect("the world's node 0 is the host")
}

/// The site's operations of `r`, one of the world's sites (every node but 0).
pub fn as_site(r: &Replica) -> carnet_store::replica::Site<'_> {
    r.as_site().expect("the world's nodes after 0 are sites")
}
