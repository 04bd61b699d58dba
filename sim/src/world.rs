//! A simulated world: one host and 2–8 sites, driven by one seed on virtual time.
//!
//! Each step advances time and does one thing the seed picks: an operation at a node (a
//! document written, read, masked or replaced at a site or the host; a dossier opened at a
//! site, for a new patient or one the host has, its identity qualified now or later; a pair
//! dropped into a site's inbox, now and then twice, and the inbox scanned; a grant, a
//! revocation or a closure at the host), a message delivered on a round in flight, a round started, a node
//! crashed (between rounds or in the middle of one) or its power cut, a disk fault armed
//! (ENOSPC, EIO, a power cut at a coming write), a duplicated delivery, a site cut off from
//! the host or brought back. Sites run their rounds as the daemon does: after a change here
//! (after a short pause), every `EVERY` otherwise, and after a failure with a doubling
//! backoff.
//!
//! Then the world heals (every partition removed, no more faults, every node up), the sites
//! run rounds until nothing moves, and `check` verifies the invariants.
//!
//! The model (`Model`) records what the world did: the documents each node was told were
//! written, the revocations and where each sits in each site's log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use carnet_store::ids::{DocId, Ins, InsKind, Rpps, SiteId};
use carnet_store::model::{
    AccessMode, Actor, DocClass, GrantBasis, GrantState, HolderKind, Identity, IdentityStatus,
    Profession, Professional, Sex,
};
use carnet_store::policy::Action;
use carnet_store::replica::{InitOptions, KeySource, NewDocument, NewDossier, Replica, Role};
use carnet_syncd::schedule::{self, Next, RoundTimer};

use crate::disk::Fault;
use crate::link::{Flight, Side, Step};
use crate::node::Node;
use crate::rng::Rng;

/// 2026-12-01T00:00:00Z, in Unix milliseconds: where virtual time starts.
pub const EPOCH: u64 = 1_796_083_200_000;
/// A site's regular round (the daemon's `sync_every`, 10 s).
pub const EVERY: u64 = 10_000;
/// A round that has not ended after this long is given up (the driver's idle timeout).
pub const IDLE_TIMEOUT: u64 = schedule::IDLE_TIMEOUT.as_millis() as u64;
/// Marks every synthetic value the simulation writes (titles, bodies, names): none may be
/// found in clear in any file or disk of the world.
pub const MARKERS: [&str; 3] = ["SIMTITLE", "SIMBODY", "SIMNAME"];

/// How big a world is.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Steps before healing.
    pub steps: usize,
    /// Professionals registered everywhere.
    pub professionals: usize,
    /// Dossiers created at the host.
    pub dossiers: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            steps: 160,
            professionals: 5,
            dossiers: 4,
        }
    }
}

/// A document the world wrote, as the node that wrote it acknowledged it.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: DocId,
    /// The dossier (index into `Model::dossiers`).
    pub dossier: usize,
    /// The node that wrote it (0: the host, `i`: site `i`).
    pub node: usize,
    /// Its author (index into `Model::professionals`).
    pub author: usize,
}

/// What the world did, to check against.
#[derive(Debug, Default)]
pub struct Model {
    pub dossiers: Vec<Ins>,
    pub professionals: Vec<Rpps>,
    /// The professionals the host binds to each site (by node index; 0 unused).
    pub bound: Vec<Vec<usize>>,
    /// Documents acknowledged as written.
    pub written: Vec<Written>,
    /// Revocations in force, by (dossier, professional).
    pub revoked: BTreeMap<(usize, usize), Revocation>,
    /// Consent given in person at a site (a pending grant, made when a professional opens a
    /// dossier there): (site, dossier, professional) → when, by the site's clock. It is
    /// usable there over a revocation the host signed before it (DOMAIN §5).
    pub consented: BTreeMap<(usize, usize, usize), u64>,
    /// Dossiers closed at the host.
    pub closed: BTreeSet<usize>,
    /// (node, dossier): the node changed a document of the dossier (wrote, replaced or masked
    /// one): a site keeps such a dossier in its scope, with what it may still hold.
    pub changed: BTreeSet<(usize, usize)>,
    /// (node, dossier): dossiers opened at a site (`open_dossier_here`).
    pub opened: BTreeSet<(usize, usize)>,
    /// Of those, the ones whose identity is still provisional (held at the site), with the
    /// professional who opened it.
    pub provisional: BTreeMap<(usize, usize), usize>,
    /// Pairs dropped into a site's inbox.
    pub dropped: Vec<Dropped>,
}

/// A revocation in force.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// When the host signed it, by its clock.
    pub signed_at: u64,
    /// Per site, the sequence of that site's host log at which the revocation was there.
    pub in_log: Vec<(usize, u64)>,
}

/// A document and its sidecar dropped into a site's inbox by the clinic's software.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// The site.
    pub node: usize,
    /// The dossier the sidecar names.
    pub dossier: usize,
    /// The professional the sidecar names.
    pub author: usize,
    /// The producer's unique id.
    pub unique_id: String,
}

/// Counts of what happened, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub rounds_ok: u64,
    pub rounds_failed: u64,
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub power_cuts: u64,
    pub disk_faults: u64,
    pub writes: u64,
    pub reads: u64,
    pub refused_after_revocation: u64,
    /// Messages a round in flight sent for what its site wrote meanwhile (`Flight::news`).
    pub news_sent: u64,
    /// Rounds that sent their pushes behind their `Hello` (`Flight::pushed_behind_hello`).
    pub pushed_behind_hello: u64,
    /// Body segments a running node's compaction retired (`Replica::compact_bodies`).
    pub segments_retired: u64,
}

impl Stats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Stats) {
        self.rounds_ok += other.rounds_ok;
        self.rounds_failed += other.rounds_failed;
        self.messages += other.messages;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.crashes += other.crashes;
        self.power_cuts += other.power_cuts;
        self.disk_faults += other.disk_faults;
        self.writes += other.writes;
        self.reads += other.reads;
        self.news_sent += other.news_sent;
        self.pushed_behind_hello += other.pushed_behind_hello;
        self.segments_retired += other.segments_retired;
        self.refused_after_revocation += other.refused_after_revocation;
    }
}

/// The world.
#[derive(Debug)]
pub struct World {
    pub seed: u64,
    pub rng: Rng,
    /// Virtual time, in Unix milliseconds.
    pub now: u64,
    /// Node 0 is the host, then the sites.
    pub nodes: Vec<Node>,
    /// Each node's clock skew (added to world time).
    skew: Vec<u64>,
    /// Rounds in flight, at most one per site.
    flights: Vec<Flight>,
    /// Per site: when its next round starts, its timers (the daemon's), and whether its last
    /// round ended well (then a change or a poke starts a round early).
    next_round: Vec<u64>,
    timers: Vec<RoundTimer>,
    connected: Vec<bool>,
    /// Sites cut off from the host.
    partitioned: BTreeSet<usize>,
    /// Faults on (off once healing).
    faults: bool,
    /// The host's certificate (DER), which sites see at the handshake.
    host_certificate: Vec<u8>,
    pub model: Model,
    pub stats: Stats,
    /// The world's folder (removed on drop).
    root: PathBuf,
    opts: Options,
    /// `CARNET_SIM_TRACE` is set: say what happens.
    verbose: bool,
    /// The thread's randomness is the seed's while the world lives (dropped last).
    _seeded: SeededThread,
}

/// Seeds this thread's randomness (keys, nonces, document ids) while it lives, so that a seed
/// replays byte for byte (`carnet_store::crypto::seed_thread_for_simulation`).
#[derive(Debug)]
struct SeededThread;

impl SeededThread {
    fn new(seed: u64) -> SeededThread {
        carnet_store::crypto::seed_thread_for_simulation(Some(seed));
        SeededThread
    }
}

impl Drop for SeededThread {
    fn drop(&mut self) {
        carnet_store::crypto::seed_thread_for_simulation(None);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The replicas close before their folders go.
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The folder worlds are made in: a tmpfs when there is one (the journal and key files sync).
fn base_folder() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARNET_SIM_DIR") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn world_folder(seed: u64) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = base_folder().join(format!("carnet-sim-{}-{seed}-{n}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&path)
        .map_err(|e| format!("world folder {}: {e}", path.display()))?;
    Ok(path)
}

/// A synthetic INS for dossier `i` of world `seed`.
fn synthetic_ins(seed: u64, i: usize) -> Result<Ins, String> {
    let body = format!(
        "{}{:012}",
        1 + (i % 8),
        (seed.wrapping_mul(31) + i as u64) % 1_000_000_000_000
    );
    Ins::from_body(&body).map_err(|e| format!("ins {body}: {e}"))
}

/// Dossier `i` of the world, with a marked name.
fn new_dossier(ins: &Ins, i: usize, status: IdentityStatus) -> NewDossier {
    NewDossier {
        ins: ins.clone(),
        ins_kind: InsKind::TestNir,
        identity: Identity {
            birth_name: format!("SIMNAME{i}"),
            first_names: "Alex".into(),
            birth_date: "1984-05-07".into(),
            sex: Sex::Female,
            birthplace: None,
            status,
        },
        holder: HolderKind::Adult,
        representatives: vec![],
        mask_new_by_default: false,
    }
}

fn professional(i: usize) -> Result<Rpps, String> {
    Rpps::parse(&format!("1000000{:04}", i + 1)).map_err(|e| e.to_string())
}

/// The outcome of a store call the world makes: fine, refused as the product may refuse, or
/// a failure of the product (integrity) that ends the run.
fn expected(node: &str, what: &str, e: &carnet_store::Error) -> Result<(), String> {
    match e {
        carnet_store::Error::Integrity(_) => Err(format!("{node}: {what}: {e}")),
        _ => Ok(()),
    }
}

impl World {
    /// Builds the world of `seed`: the host with its PKI, professionals and dossiers, and
    /// 2–8 enrolled sites, each with some professionals bound to it.
    pub fn new(seed: u64, opts: Options) -> Result<World, String> {
        let seeded = SeededThread::new(seed);
        let mut rng = Rng::new(seed);
        let root = world_folder(seed)?;
        let sites = rng.between(2, 8) as usize;
        let host = Node::init(
            "host".into(),
            root.join("host"),
            InitOptions {
                role: Role::Host,
                name: "host".into(),
                site_id: None,
                key: KeySource::File,
                host_key: None,
                lease_hours: None,
            },
            EPOCH,
        )?;
        let h = host.up()?;
        carnet_syncd::enrol::init_host(h).map_err(|e| format!("pki: {e}"))?;
        let host_certificate = carnet_syncd::enrol::host_identity(h)
            .map_err(|e| e.to_string())?
            .1
            .cert_der;
        let mut model = Model::default();
        for i in 0..opts.professionals {
            let rpps = professional(i)?;
            h.add_professional(&Professional {
                rpps: rpps.clone(),
                profession: Profession::Medecin,
                specialty: None,
                name: None,
            })
            .map_err(|e| format!("professional: {e}"))?;
            model.professionals.push(rpps);
        }
        for i in 0..opts.dossiers {
            let ins = synthetic_ins(seed, i)?;
            crate::node::as_host(h)
                .authority()
                .create_dossier(new_dossier(&ins, i, IdentityStatus::Qualified))
                .map_err(|e| format!("dossier: {e}"))?;
            model.dossiers.push(ins);
        }
        // Each dossier starts with some professionals granted.
        for d in 0..opts.dossiers {
            for p in 0..opts.professionals {
                if rng.chance(600) {
                    crate::node::as_host(h)
                        .authority()
                        .set_grant(
                            &model.dossiers[d],
                            &model.professionals[p],
                            GrantState::Active,
                            GrantBasis::Treating,
                            None,
                        )
                        .map_err(|e| format!("grant: {e}"))?;
                }
            }
        }
        let mut nodes = vec![host];
        model.bound.push(Vec::new());
        for i in 1..=sites {
            let h = nodes[0].up()?;
            let bundle = carnet_syncd::enrol::enrol(
                h,
                &format!("site {i}"),
                &format!("{:09}", 750_000_000 + i),
                "127.0.0.1:1",
            )
            .map_err(|e| format!("enrol: {e}"))?;
            let node = Node::init(
                format!("site {}", bundle.site_id),
                root.join(format!("site-{i}")),
                InitOptions {
                    role: Role::Site,
                    name: format!("site {i}"),
                    site_id: Some(SiteId(bundle.site_id)),
                    key: KeySource::File,
                    host_key: Some(bundle.host_key),
                    lease_hours: None,
                },
                EPOCH,
            )?;
            let s = node.up()?;
            carnet_syncd::enrol::install_site(s, &bundle).map_err(|e| format!("install: {e}"))?;
            let mut bound = Vec::new();
            for (p, rpps) in model.professionals.iter().enumerate() {
                s.add_professional(&Professional {
                    rpps: rpps.clone(),
                    profession: Profession::Medecin,
                    specialty: None,
                    name: None,
                })
                .map_err(|e| format!("professional: {e}"))?;
                if bound.is_empty() || rng.chance(400) {
                    crate::node::as_host(h)
                        .authority()
                        .bind_professional(node.site, rpps, true)
                        .map_err(|e| format!("bind: {e}"))?;
                    bound.push(p);
                }
            }
            model.bound.push(bound);
            nodes.push(node);
        }
        let skew = (0..nodes.len()).map(|_| rng.below(2_000)).collect();
        let world = World {
            seed,
            rng,
            now: EPOCH,
            nodes,
            skew,
            flights: Vec::new(),
            next_round: vec![EPOCH; sites + 1],
            timers: vec![RoundTimer::new(Duration::from_millis(EVERY)); sites + 1],
            connected: vec![false; sites + 1],
            partitioned: BTreeSet::new(),
            faults: true,
            host_certificate,
            model,
            stats: Stats::default(),
            root,
            opts,
            verbose: std::env::var_os("CARNET_SIM_TRACE").is_some(),
            _seeded: seeded,
        };
        world.set_clocks();
        Ok(world)
    }

    fn set_clocks(&self) {
        for (node, skew) in self.nodes.iter().zip(&self.skew) {
            node.set_time(self.now + skew);
        }
    }

    fn advance(&mut self, millis: u64) {
        self.now += millis;
        self.set_clocks();
    }

    /// The sites' node indices.
    fn sites(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.nodes.len() - 1
    }

    /// Runs the seeded steps, heals, converges and checks.
    pub fn run(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        for _ in 0..self.opts.steps {
            self.step()?;
        }
        let stepped = started.elapsed();
        self.heal()?;
        let healed = started.elapsed();
        let checked = crate::check::all(self);
        self.note(|| {
            format!(
                "steps {stepped:?}, healing {:?}, checks {:?}",
                healed - stepped,
                started.elapsed() - healed
            )
        });
        checked
    }

    /// One step: time passes, nodes due come back, then one thing happens.
    fn step(&mut self) -> Result<(), String> {
        let dt = self.rng.between(1, 1_500);
        self.advance(dt);
        self.restart_due()?;
        self.give_up_stale_rounds();
        match self.rng.below(100) {
            0..=24 => self.site_operation()?,
            25..=36 => self.host_operation()?,
            37..=79 => {
                for _ in 0..self.rng.between(1, 8) {
                    self.deliver()?;
                }
            }
            80..=92 => self.start_due_rounds()?,
            93..=94 => self.crash_someone(),
            95 => self.arm_disk_fault(),
            96..=97 => self.duplicate()?,
            98 => self.partition_or_heal(),
            _ => self.compact_someone()?,
        }
        self.stop_failed_disks();
        Ok(())
    }

    /// A running node compacts its body segments, as its daemon does every hour, between its
    /// other work (reads and rounds before and after it, crashes during it).
    fn compact_someone(&mut self) -> Result<(), String> {
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let Some(replica) = self.nodes[node].replica() else {
            return Ok(());
        };
        match replica.compact_bodies() {
            Ok(retired) => {
                self.stats.segments_retired += retired as u64;
                self.note(|| format!("{}: {retired} segments retired", self.nodes[node].name));
                Ok(())
            }
            Err(e) => expected(&self.nodes[node].name, "compact", &e),
        }
    }

    /// Starts the nodes due up. A start whose disk fails under it (a fault armed while the
    /// node was down fires as it opens) fails as the daemon would, and is tried again later,
    /// after a power cut if that was the fault; any other failure to open is a defect.
    fn restart_due(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.replica().is_some() || node.up_at > self.now {
                continue;
            }
            if let Err(e) = node.restart() {
                let Some(fault) = node.fault() else {
                    return Err(e);
                };
                self.note(|| format!("{e} (its disk failed: {fault:?})"));
                self.crash(i, fault == Fault::PowerCut);
            }
        }
        Ok(())
    }

    /// A node whose disk failed stops (the daemon exits on a storage failure) and is started
    /// again a little later: with the power gone if the fault was a power cut.
    fn stop_failed_disks(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].disk_failed() {
                let power = self.nodes[i].fault() == Some(Fault::PowerCut);
                self.note(|| {
                    let node = &self.nodes[i];
                    match node.journal.fired() {
                        Some(f) => format!("{}: its journal failed ({f:?})", node.name),
                        None => format!("{}: its database's disk failed", node.name),
                    }
                });
                self.crash(i, power);
            }
        }
    }

    fn crash(&mut self, node: usize, power: bool) {
        self.note(|| format!("{}: crash (power cut: {power})", self.nodes[node].name));
        let up_at = self.now + self.rng.between(100, 5_000);
        let mut rng = self.rng.fork();
        self.nodes[node].crash(power, up_at, &mut rng);
        self.stats.crashes += 1;
        self.stats.power_cuts += u64::from(power);
        // Its rounds are cut.
        let cut: Vec<usize> = self
            .flights
            .iter()
            .filter(|f| node == 0 || f.site == node)
            .map(|f| f.site)
            .collect();
        for site in cut {
            self.end_flight(site, Err("connection lost".into()));
        }
    }

    fn crash_someone(&mut self) {
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        if self.nodes[node].replica().is_some() {
            let power = self.rng.chance(500);
            self.crash(node, power);
        }
    }

    fn arm_disk_fault(&mut self) {
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let fault = match self.rng.below(3) {
            0 => Fault::NoSpace,
            1 => Fault::Io,
            _ => Fault::PowerCut,
        };
        let after = self.rng.below(40);
        // Mostly under the database; sometimes under the trace journal, at its next write (an
        // audited read's entry, written and synced before the read is answered: rarer).
        if self.rng.chance(400) {
            self.nodes[node].journal.arm(0, fault);
        } else {
            self.nodes[node].disk.arm(after, fault);
        }
        self.stats.disk_faults += 1;
    }

    fn partition_or_heal(&mut self) {
        let site = self.rng.between(1, self.nodes.len() as u64 - 1) as usize;
        if !self.partitioned.remove(&site) {
            self.partitioned.insert(site);
            self.end_flight(site, Err("cut off from the host".into()));
        }
    }

    /// A site acts: writes, reads, masks or replaces a document, as one of its professionals.
    fn site_operation(&mut self) -> Result<(), String> {
        let site = self.rng.between(1, self.nodes.len() as u64 - 1) as usize;
        if self.nodes[site].replica().is_none() {
            return Ok(());
        }
        let bound = self.model.bound[site].clone();
        let Some(p) = self.rng.index(bound.len()).map(|i| bound[i]) else {
            return Ok(());
        };
        match self.rng.below(16) {
            0 => self.open_here(site, p)?,
            1 => self.drop_in_inbox(site, p)?,
            2 => self.qualify_one(site)?,
            _ => self.act(site, p)?,
        }
        self.changed(site);
        self.news_to_flight(site)
    }

    /// What `site` wrote reaches its round in flight, if any, as the driver's watch on the
    /// replica's commits delivers it (`Flight::news`).
    fn news_to_flight(&mut self, site: usize) -> Result<(), String> {
        let Some(f) = self.flights.iter().position(|f| f.site == site) else {
            return Ok(());
        };
        let mut rng = self.rng.fork();
        let mut delay = || link_delay(&mut rng);
        let now = self.now;
        let Some(replica) = self.nodes[site].replica() else {
            return Ok(());
        };
        match self.flights[f].news(replica, now, &mut delay)? {
            Ok(sent) => self.stats.news_sent += sent as u64,
            Err(e) => self.end_flight(site, Err(e)),
        }
        Ok(())
    }

    /// Professional `p` opens a dossier at `site`: mostly for a patient the host has no
    /// dossier for, sometimes for one it has (the host merges the two, or returns what the
    /// site wrote if it closed its own); sometimes with an identity not checked yet (held at
    /// the site until qualified).
    fn open_here(&mut self, site: usize, p: usize) -> Result<(), String> {
        let known = self.model.dossiers.len();
        let d = if self.rng.chance(250) {
            self.rng.below(known as u64) as usize
        } else {
            known
        };
        let qualified = !self.rng.chance(250);
        let ins = match self.model.dossiers.get(d) {
            Some(ins) => ins.clone(),
            None => synthetic_ins(self.seed, d)?,
        };
        let status = if qualified {
            IdentityStatus::Qualified
        } else {
            IdentityStatus::Provisional
        };
        let actor = Actor::Professional(self.model.professionals[p].clone());
        let name = self.nodes[site].name.clone();
        let Some(replica) = self.nodes[site].replica() else {
            return Ok(());
        };
        match crate::node::as_site(replica)
            .local()
            .open_dossier_here(new_dossier(&ins, d, status), &actor)
        {
            Ok(_) => {
                self.note(|| {
                    format!(
                        "{name}: professional {p} opened dossier {d} here (qualified: {qualified})"
                    )
                });
                if d == known {
                    self.model.dossiers.push(ins);
                }
                self.model.opened.insert((site, d));
                let at = self.now + self.skew[site];
                self.model.consented.insert((site, d, p), at);
                self.model.changed.insert((site, d));
                if !qualified {
                    self.model.provisional.insert((site, d), p);
                }
                Ok(())
            }
            Err(e) => expected(&name, "open a dossier", &e),
        }
    }

    /// One dossier opened at `site` with a provisional identity has it checked now.
    fn qualify_one(&mut self, site: usize) -> Result<(), String> {
        let Some((&(_, d), &p)) = self
            .model
            .provisional
            .range((site, 0)..(site + 1, 0))
            .next()
        else {
            return Ok(());
        };
        self.qualify(site, d, p)
    }

    fn qualify(&mut self, site: usize, d: usize, p: usize) -> Result<(), String> {
        let name = self.nodes[site].name.clone();
        let Some(replica) = self.nodes[site].replica() else {
            return Ok(());
        };
        let (ins, rpps) = (&self.model.dossiers[d], &self.model.professionals[p]);
        match crate::node::as_site(replica)
            .local()
            .qualify_dossier(ins, rpps)
        {
            Ok(()) => {
                self.note(|| format!("{name}: dossier {d} qualified"));
                self.model.provisional.remove(&(site, d));
                Ok(())
            }
            // Dropped meanwhile (the host's answer came for that INS): nothing to qualify.
            Err(carnet_store::Error::NotFound(_)) | Err(carnet_store::Error::Invalid(_)) => {
                self.model.provisional.remove(&(site, d));
                Ok(())
            }
            Err(e) => expected(&name, "qualify", &e),
        }
    }

    /// The clinic's software drops a document and its sidecar into `site`'s inbox (now and
    /// then one dropped before, again), and the daemon scans it.
    fn drop_in_inbox(&mut self, site: usize, p: usize) -> Result<(), String> {
        let earlier = self.model.dropped.iter().rfind(|x| x.node == site).cloned();
        let again = earlier.is_some() && self.rng.chance(150);
        let pair = match earlier {
            Some(earlier) if again => earlier,
            _ => {
                let n = self.stats.writes;
                self.stats.writes += 1;
                Dropped {
                    node: site,
                    dossier: self.rng.below(self.model.dossiers.len() as u64) as usize,
                    author: p,
                    unique_id: format!("urn:sim:{}:{n}", self.seed),
                }
            }
        };
        let inbox = self.nodes[site].dir.join("inbox");
        let file = pair.unique_id.replace(':', "-");
        let sidecar = serde_json::json!({
            "ins": self.model.dossiers[pair.dossier].matricule(),
            "author_rpps": self.model.professionals[pair.author].as_str(),
            "class": "10",
            "type": "11488-4",
            "title": format!("SIMTITLE {}", pair.unique_id),
            "unique_id": pair.unique_id,
            "format": "text/plain",
        });
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&inbox)?;
            std::fs::write(inbox.join(&file), format!("SIMBODY {}", pair.unique_id))?;
            std::fs::write(
                inbox.join(format!("{file}{}", carnet_syncd::inbox::SIDECAR_SUFFIX)),
                sidecar.to_string(),
            )
        };
        write().map_err(|e| format!("inbox: {e}"))?;
        self.note(|| {
            format!(
                "{}: {} dropped in its inbox",
                self.nodes[site].name, pair.unique_id
            )
        });
        if !again {
            self.model.dropped.push(pair);
        }
        self.scan_inbox(site)
    }

    /// `site`'s daemon scans its inbox: what it stores is an acknowledged write.
    fn scan_inbox(&mut self, site: usize) -> Result<(), String> {
        let name = self.nodes[site].name.clone();
        let inbox = self.nodes[site].dir.join("inbox");
        let Some(replica) = self.nodes[site].replica() else {
            return Ok(());
        };
        if !inbox.is_dir() {
            return Ok(());
        }
        let report = carnet_syncd::inbox::process(replica, &inbox)
            .map_err(|e| format!("{name}: inbox: {e}"))?;
        for (_, reason) in &report.rejected {
            if reason.starts_with("storage error") {
                return Err(format!(
                    "{name}: the inbox rejected a pair for a failure of its own storage: {reason}"
                ));
            }
        }
        for (file, id) in report.stored {
            let Some(pair) = self
                .model
                .dropped
                .iter()
                .find(|x| x.node == site && x.unique_id.replace(':', "-") == file)
            else {
                return Err(format!("{name}: the inbox stored {file}, never dropped"));
            };
            self.note(|| format!("{name}: inbox stored {id} in dossier {}", pair.dossier));
            self.model.changed.insert((site, pair.dossier));
            self.model.written.push(Written {
                id,
                dossier: pair.dossier,
                node: site,
                author: pair.author,
            });
        }
        Ok(())
    }

    /// The host acts: a grant, a revocation, a closure, or a document written by a
    /// professional there.
    fn host_operation(&mut self) -> Result<(), String> {
        if self.nodes[0].replica().is_none() {
            return Ok(());
        }
        let d = self.rng.below(self.model.dossiers.len() as u64) as usize;
        let p = self.rng.below(self.model.professionals.len() as u64) as usize;
        match self.rng.below(20) {
            0..=6 => self.set_grant(d, p, GrantState::Active)?,
            7..=13 => self.set_grant(d, p, GrantState::Revoked)?,
            14 if self.model.closed.len() + 1 < self.model.dossiers.len() => {
                let host = self.nodes[0].up()?;
                let ins = &self.model.dossiers[d];
                match crate::node::as_host(host).authority().close_dossier(
                    ins,
                    "simulated closure",
                    false,
                ) {
                    Ok(()) => {
                        self.model.closed.insert(d);
                    }
                    Err(e) => expected("host", "close", &e)?,
                }
            }
            _ => self.act(0, p)?,
        }
        // The host pokes its connected sites.
        for site in self.sites() {
            if !self.partitioned.contains(&site) {
                self.changed(site);
            }
        }
        Ok(())
    }

    /// A change at `site`, or a poke from the host: a connected site runs a round soon.
    fn changed(&mut self, site: usize) {
        if self.connected[site] {
            let soon = self.now + schedule::COALESCE.as_millis() as u64;
            self.next_round[site] = self.next_round[site].min(soon);
        }
    }

    fn set_grant(&mut self, d: usize, p: usize, state: GrantState) -> Result<(), String> {
        let host = self.nodes[0].up()?;
        let (ins, rpps) = (&self.model.dossiers[d], &self.model.professionals[p]);
        if let Err(e) = crate::node::as_host(host).authority().set_grant(
            ins,
            rpps,
            state,
            GrantBasis::Treating,
            None,
        ) {
            return expected("host", "grant", &e);
        }
        self.note(|| {
            format!(
                "host: grant of professional {p} on dossier {d}: {}",
                state.as_str()
            )
        });
        if state == GrantState::Active {
            self.model.revoked.remove(&(d, p));
            return Ok(());
        }
        // Where the revocation stands in each site's log: a site whose cursor passed it has
        // it (the host's log holds it now, or the site does not hold the dossier).
        let mut at = Vec::new();
        for site in self.sites() {
            let seq = crate::node::as_host(host)
                .sync()
                .log_head(self.nodes[site].site)
                .map_err(|e| format!("log head: {e}"))?;
            at.push((site, seq));
        }
        let signed_at = self.now + self.skew[0];
        self.model.revoked.insert(
            (d, p),
            Revocation {
                signed_at,
                in_log: at,
            },
        );
        Ok(())
    }

    /// Node `node` acts as professional `p` on a document or a dossier the seed picks.
    fn act(&mut self, node: usize, p: usize) -> Result<(), String> {
        let actor = Actor::Professional(self.model.professionals[p].clone());
        let choice = self.rng.below(10);
        let known = self.model.written.len();
        let n = self.stats.writes;
        let Some(replica) = self.nodes[node].replica() else {
            return Ok(());
        };
        let name = self.nodes[node].name.clone();
        if choice < 4 || known == 0 {
            let d = self.rng.below(self.model.dossiers.len() as u64) as usize;
            let doc = synthetic_document(&mut self.rng, self.seed, n)?;
            self.stats.writes += 1;
            match replica.put_document(
                &actor,
                AccessMode::Normal,
                None,
                &self.model.dossiers[d],
                doc,
            ) {
                Ok(id) => {
                    self.note(|| format!("{name}: professional {p} wrote {id} in dossier {d}"));
                    self.model.changed.insert((node, d));
                    self.model.written.push(Written {
                        id,
                        dossier: d,
                        node,
                        author: p,
                    });
                }
                Err(e) => expected(&name, "write", &e)?,
            }
            return Ok(());
        }
        let w = self.model.written[self.rng.below(known as u64) as usize].clone();
        match choice {
            4..=7 => {
                self.stats.reads += 1;
                // A revocation that reached this site forbids the read (of a document the
                // professional did not write: an author keeps reading their own, DOMAIN §4
                // row 5), unless consent given in person here since outranks it (§5).
                let must_refuse = node != 0
                    && w.author != p
                    && match self.model.revoked.get(&(w.dossier, p)) {
                        Some(Revocation { signed_at, in_log }) => {
                            let cursor = replica
                                .pull_cursor()
                                .map_err(|e| format!("{name}: cursor: {e}"))?;
                            let consented_since = self
                                .model
                                .consented
                                .get(&(node, w.dossier, p))
                                .is_some_and(|when| signed_at < when);
                            !consented_since
                                && in_log.iter().any(|(s, seq)| *s == node && cursor >= *seq)
                        }
                        None => false,
                    };
                match replica.read_document(&actor, &w.id, AccessMode::Normal, None) {
                    Ok(_) if must_refuse => {
                        return Err(format!(
                            "{name}: professional {p} read a document of dossier {} after its revocation reached the site",
                            w.dossier
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.stats.refused_after_revocation += u64::from(must_refuse);
                        expected(&name, "read", &e)?;
                    }
                }
            }
            8 => match replica.update_document(&actor, &w.id, Action::Mask) {
                Ok(_) => {
                    self.note(|| format!("{name}: professional {p} masked {}", w.id));
                    self.model.changed.insert((node, w.dossier));
                }
                Err(e) => expected(&name, "mask", &e)?,
            },
            _ => {
                let doc = synthetic_document(&mut self.rng, self.seed, n)?;
                self.stats.writes += 1;
                match replica.replace_document(&actor, &w.id, doc) {
                    Ok(id) => {
                        self.note(|| format!("{name}: professional {p} replaced {} by {id}", w.id));
                        self.model.changed.insert((node, w.dossier));
                        self.model.written.push(Written {
                            id,
                            dossier: w.dossier,
                            node,
                            author: p,
                        });
                    }
                    Err(e) => expected(&name, "replace", &e)?,
                }
            }
        }
        Ok(())
    }

    /// Sites whose round is due start it (a site cut off from the host fails at once).
    fn start_due_rounds(&mut self) -> Result<(), String> {
        for site in self.sites() {
            if self.next_round[site] > self.now || self.flights.iter().any(|f| f.site == site) {
                continue;
            }
            if self.nodes[site].replica().is_none() {
                continue;
            }
            if self.partitioned.contains(&site) || self.nodes[0].replica().is_none() {
                self.round_failed(site);
                continue;
            }
            let delay = self.delay();
            let expect_news = self.rng.chance(500);
            let flight = Flight::start(
                site,
                self.nodes[site].up()?,
                self.host_certificate.clone(),
                self.now,
                delay,
                expect_news,
                self.host_marks(site)?,
            )?;
            match flight {
                Ok(flight) => {
                    self.stats.pushed_behind_hello += u64::from(flight.pushed_behind_hello());
                    self.flights.push(flight);
                }
                Err(e) => {
                    self.note(|| {
                        format!("{}: round failed as it opened: {e}", self.nodes[site].name)
                    });
                    self.round_failed(site);
                }
            }
        }
        Ok(())
    }

    fn delay(&mut self) -> u64 {
        link_delay(&mut self.rng)
    }

    /// What `site`'s replica says the host held at the end of its last round that ended well
    /// (`SiteSync::host_marks`), as its driver reads it when a round opens, on any connection.
    /// Marks its failing storage cannot read are none: the round waits for its `Welcome`.
    fn host_marks(&self, site: usize) -> Result<Option<carnet_syncd::session::HostHeld>, String> {
        let marks = match crate::node::as_site(self.nodes[site].up()?)
            .sync()
            .host_marks()
        {
            Ok(marks) => marks,
            Err(e) => {
                self.note(|| format!("{}: host marks not read: {e}", self.nodes[site].name));
                None
            }
        };
        Ok(marks.map(|(changes, traces)| carnet_syncd::session::HostHeld { changes, traces }))
    }

    /// Records (or forgets) what the host holds in `site`'s replica, as its driver does when a
    /// round ends. A storage failure leaves older marks, which the next `Welcome` contradicts
    /// (that round fails, and the next waits for its `Welcome`).
    fn set_host_marks(&mut self, site: usize, held: Option<carnet_syncd::session::HostHeld>) {
        let Some(replica) = self.nodes[site].replica() else {
            return;
        };
        let marks = held.map(|h| (h.changes, h.traces));
        if let Err(e) = crate::node::as_site(replica).sync().set_host_marks(marks) {
            self.note(|| format!("{}: host marks not recorded: {e}", self.nodes[site].name));
        }
    }

    fn round_failed(&mut self, site: usize) {
        self.note(|| format!("{}: round failed", self.nodes[site].name));
        self.stats.rounds_failed += 1;
        self.set_host_marks(site, None);
        let jitter = Duration::from_millis(self.rng.below(1_000));
        let next = self.timers[site].failed(jitter);
        self.schedule(site, next);
    }

    fn schedule(&mut self, site: usize, next: Next) {
        self.next_round[site] = self.now + next.pause.as_millis() as u64;
        self.connected[site] = next.connected;
    }

    /// Prints what happens when `CARNET_SIM_TRACE` is set (to follow a replayed seed).
    fn note(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[{:>9} ms] {}", self.now - EPOCH, what());
        }
    }

    /// Ends `site`'s round in flight, if any, with its outcome.
    fn end_flight(
        &mut self,
        site: usize,
        outcome: Result<carnet_syncd::session::RoundReport, String>,
    ) {
        let Some(i) = self.flights.iter().position(|f| f.site == site) else {
            return;
        };
        let flight = self.flights.swap_remove(i);
        if outcome.is_ok() {
            self.set_host_marks(site, flight.host_held());
        }
        self.note(|| format!("{}: round {outcome:?}", self.nodes[site].name));
        match outcome {
            Ok(report) => {
                self.stats.rounds_ok += 1;
                let next = self.timers[site].succeeded(report.bodies_waiting > 0);
                self.schedule(site, next);
            }
            Err(_) => self.round_failed(site),
        }
    }

    fn give_up_stale_rounds(&mut self) {
        let stale: Vec<usize> = self
            .flights
            .iter()
            .filter(|f| self.now > f.started + IDLE_TIMEOUT && f.next_arrival().is_none())
            .map(|f| f.site)
            .collect();
        for site in stale {
            self.end_flight(site, Err("idle timeout".into()));
        }
    }

    /// Delivers one message due on a round in flight (or loses it, cutting the round).
    fn deliver(&mut self) -> Result<(), String> {
        let due: Vec<(usize, usize, Side)> = self
            .flights
            .iter()
            .enumerate()
            .flat_map(|(f, flight)| {
                flight
                    .due(self.now)
                    .into_iter()
                    .map(move |(s, side)| (f, s, side))
            })
            .collect();
        let Some(pick) = self.rng.index(due.len()) else {
            return Ok(());
        };
        let (f, stream, side) = due[pick];
        let site = self.flights[f].site;
        if self.faults && self.rng.chance(15) {
            self.stats.lost += 1;
            self.end_flight(site, Err("message lost".into()));
            return Ok(());
        }
        self.stats.messages += 1;
        let mut rng = self.rng.fork();
        let mut delay = || link_delay(&mut rng);
        let (host, site_replica) = (self.nodes[0].up()?, self.nodes[site].up()?);
        let now = self.now;
        let step = self.flights[f].deliver(stream, side, host, site_replica, now, &mut delay)?;
        match step {
            Step::Idle | Step::Moved => {}
            Step::Done(report) => {
                self.flights[f].finish(host);
                self.end_flight(site, Ok(report));
            }
            Step::Failed(e) => self.end_flight(site, Err(e)),
            Step::HostFailed(_) => {
                // `stop_failed_disks` stops the host.
                self.end_flight(site, Err("host down".into()));
            }
        }
        Ok(())
    }

    /// The host receives a round's session stream a second time.
    fn duplicate(&mut self) -> Result<(), String> {
        let Some(f) = self.rng.index(self.flights.len()) else {
            return Ok(());
        };
        let site = self.flights[f].site;
        let host = self.nodes[0].up()?;
        self.stats.duplicated += 1;
        let _ = self.flights[f].replay(host, self.nodes[site].site);
        Ok(())
    }

    /// Heals the world: no more faults or partitions, every node up, and rounds until every
    /// site is caught up (each site's changes and trace acknowledged, its cursor at its log's
    /// head, every body it lacks fetched).
    fn heal(&mut self) -> Result<(), String> {
        self.faults = false;
        self.partitioned.clear();
        for node in &self.nodes {
            node.disk.disarm();
            node.journal.disarm();
        }
        self.stop_failed_disks();
        let sites: Vec<usize> = self.sites().collect();
        for site in sites.iter().copied() {
            self.end_flight(site, Err("healing".into()));
        }
        self.advance(IDLE_TIMEOUT);
        for node in &mut self.nodes {
            node.restart()?;
        }
        // Identities checked at last, and the inboxes scanned as each daemon does at start.
        let provisional: Vec<((usize, usize), usize)> = self
            .model
            .provisional
            .iter()
            .map(|(k, p)| (*k, *p))
            .collect();
        for ((site, d), p) in provisional {
            self.qualify(site, d, p)?;
        }
        for site in sites.iter().copied() {
            self.scan_inbox(site)?;
        }
        for pass in 0..12 {
            let mut behind = Vec::new();
            for site in sites.iter().copied() {
                self.advance(EVERY);
                let report = self.round_to_end(site);
                if let Err(e) = &report {
                    behind.push(format!("{}: {e}", self.nodes[site].name));
                } else if let Some(why) = self.behind(site)? {
                    behind.push(format!("{}: {why}", self.nodes[site].name));
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if pass == 11 {
                return Err(format!(
                    "no convergence after healing: {}",
                    behind.join("; ")
                ));
            }
        }
        Ok(())
    }

    /// One round of `site` with nothing lost, to its end.
    fn round_to_end(&mut self, site: usize) -> Result<carnet_syncd::session::RoundReport, String> {
        let delay = self.delay();
        let expect_news = self.rng.chance(500);
        let mut flight = Flight::start(
            site,
            self.nodes[site].up()?,
            self.host_certificate.clone(),
            self.now,
            delay,
            expect_news,
            self.host_marks(site)?,
        )??;
        self.set_host_marks(site, None);
        for _ in 0..100_000 {
            let Some(at) = flight.next_arrival() else {
                return Err("the round stalled".into());
            };
            if at > self.now {
                self.advance(at - self.now);
            }
            let due = flight.due(self.now);
            let (stream, side) = due[self.rng.below(due.len() as u64) as usize];
            let mut rng = self.rng.fork();
            let mut delay = || rng.between(1, 80);
            let (host, s) = (self.nodes[0].up()?, self.nodes[site].up()?);
            match flight.deliver(stream, side, host, s, self.now, &mut delay)? {
                Step::Idle | Step::Moved => {}
                Step::Done(report) => {
                    flight.finish(host);
                    self.stats.rounds_ok += 1;
                    self.set_host_marks(site, flight.host_held());
                    return Ok(report);
                }
                Step::Failed(e) | Step::HostFailed(e) => return Err(e),
            }
        }
        Err("the round did not end".into())
    }

    /// Why `site` is not caught up with the host, if it is not.
    fn behind(&self, site: usize) -> Result<Option<String>, String> {
        let (host, s) = (self.nodes[0].up()?, self.nodes[site].up()?);
        let id = self.nodes[site].site;
        let e = |e: carnet_store::Error| e.to_string();
        let (issued, acked) = (
            crate::node::as_site(s).sync().outbox_issued().map_err(e)?,
            crate::node::as_site(s).sync().outbox_acked().map_err(e)?,
        );
        if acked < issued {
            return Ok(Some(format!(
                "changes acknowledged up to {acked} of {issued}"
            )));
        }
        let (head, held) = (
            s.trace_head().map_err(e)?,
            crate::node::as_host(host)
                .sync()
                .trace_mark(id)
                .map_err(e)?,
        );
        if held != head {
            return Ok(Some(format!(
                "the host holds its trace to {held} of {head}"
            )));
        }
        let (cursor, log) = (
            s.pull_cursor().map_err(e)?,
            crate::node::as_host(host).sync().log_head(id).map_err(e)?,
        );
        if cursor != log {
            return Ok(Some(format!("its cursor is at {cursor} of {log}")));
        }
        let missing = s.missing_bodies().map_err(e)?;
        if !missing.is_empty() {
            let at_host: Vec<String> = missing
                .iter()
                .map(|id| match host.has_body(id) {
                    Ok(true) => format!("{id} (the host holds it)"),
                    Ok(false) => format!("{id} (the host lacks it too)"),
                    Err(err) => format!("{id} (at the host: {err})"),
                })
                .collect();
            return Ok(Some(format!(
                "{} bodies missing: {}",
                missing.len(),
                at_host.join(", ")
            )));
        }
        Ok(None)
    }

    /// The world's folder.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The replica of every node (all are up once healed).
    pub fn replicas(&self) -> Result<Vec<&Replica>, String> {
        self.nodes.iter().map(Node::up).collect()
    }
}

/// A document with a marked title and body: mostly small (travelling with its metadata),
/// sometimes larger than a message (travelling in pieces).
/// A message's delay on the link: mostly a LAN or a good line, sometimes a slow one.
fn link_delay(rng: &mut Rng) -> u64 {
    if rng.chance(100) {
        rng.between(200, 3_000)
    } else {
        rng.between(1, 80)
    }
}

fn synthetic_document(rng: &mut Rng, seed: u64, n: u64) -> Result<NewDocument, String> {
    let mut body = format!("SIMBODY {seed}/{n}: consultation, tension 13/8. ").into_bytes();
    let extra = if rng.chance(50) {
        rng.between(70_000, 700_000)
    } else {
        rng.below(2_000)
    };
    let mut x = rng.next_u64() | 1;
    body.extend((0..extra).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b'a' + (x % 26) as u8
    }));
    Ok(NewDocument {
        class: DocClass::parse("10").map_err(|e| e.to_string())?,
        type_code: "11488-4".into(),
        title: format!("SIMTITLE {seed}/{n}"),
        format: "text/plain".into(),
        body,
        unique_id: None,
        service_start: None,
        service_end: None,
    })
}
