//! `carnet-bench link` (issue "Sync at the speed of the wire", §1): a host daemon and a site
//! across an emulated rural link, the test suite's UDP proxy (`fault_proxy`) between them on
//! 127.0.0.1 with a line rate, a bounded bottleneck queue, a one-way delay and random loss.
//!
//! For each link of the matrix (rates 64 kbit/s, 256 kbit/s, 2 Mbit/s, 20 Mbit/s; one-way
//! delays 25, 150, 300 ms; loss 0, 2, 5, 10 %) and each workload — `push`: 500 documents of 4 KiB
//! pushed by a site; `day`: a clinic's day, 50 documents of 40 KiB and one image of 5 MB;
//! `pull`: a mobile unit pulling the 200 dossiers of its scope, two documents of 4 KiB each
//! (and, only when asked for, `long-pull`: ten each, 8 MB, more than one `Pull`'s answer) —
//! it prints the time, the bytes on the wire and the share of the line rate (the documents'
//! bytes at the line rate, over the time taken), from a connection just opened (the handshake
//! counts, as for a daemon just started), and the same for a raw QUIC stream carrying the
//! same bytes over the same link: the floor. After each push, one more document written at the
//! site is synced on the connection the push left open (its round pushes behind its `Hello`),
//! then another on a connection just opened: the time and round trips of each. Each measurement has a host, a site and a link of
//! its own. Budget: ≥ 85 % of the line rate at ≤ 2 % loss, ≥ 65 % at 10 %.
//!
//! The whole matrix takes hours (a clinic's day at 64 kbit/s alone is 15 minutes); without
//! options it runs a part of it, and `--full`, `--rate`, `--delay`, `--loss` and `--workload`
//! choose.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carnet_store::ids::{Ins, SiteId};
use carnet_store::model::{AccessMode, Actor};
use carnet_store::replica::{Replica, Role, Storage, system_clock};

use crate::fault_proxy::{FaultProxy, Faults};
use crate::sync::{Daemon, Sender, free_port, raw_quic_via, write_host_settings};
use crate::{DOC_BYTES, Res, decides, doctor, doctor_professional, open_dossier, random_bytes};

/// A rural link: its rate, one-way delay and loss.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Bits per second.
    rate: u64,
    /// One way.
    delay_ms: u64,
    /// Percent of datagrams lost, each way.
    loss_pct: u64,
}

impl Link {
    /// The proxy's faults for this link: the bottleneck queue holds one bandwidth-delay product
    /// (at least 16 KiB).
    fn faults(&self, seed: u64) -> Faults {
        let bytes_per_s = self.rate / 8;
        Faults {
            seed,
            loss: self.loss_pct as f64 / 100.0,
            delay: Duration::from_millis(self.delay_ms),
            bandwidth: bytes_per_s,
            queue_bytes: (bytes_per_s * 2 * self.delay_ms / 1000).max(16 << 10),
            ..Faults::default()
        }
    }

    fn label(&self) -> String {
        let rate = if self.rate >= 1_000_000 {
            format!("{} Mbit/s", self.rate / 1_000_000)
        } else {
            format!("{} kbit/s", self.rate / 1000)
        };
        format!(
            "{rate}, {} ms RTT, {} % loss",
            2 * self.delay_ms,
            self.loss_pct
        )
    }
}

/// What travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// 500 documents of 4 KiB pushed by a site.
    Push,
    /// A clinic's day: 50 documents of 40 KiB and one image of 5 MB, pushed.
    Day,
    /// A mobile unit pulling the 200 dossiers of its scope, two documents of 4 KiB each.
    Pull,
    /// A mobile unit taking over a large caseload: 200 dossiers, ten documents of 4 KiB each
    /// (8 MB, more than one `Pull`'s four batches). Only when asked for.
    LongPull,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Push => "push",
            Workload::Day => "day",
            Workload::Pull => "pull",
            Workload::LongPull => "long-pull",
        }
    }

    /// The site pulls the documents, from the host.
    fn pulls(self) -> bool {
        matches!(self, Workload::Pull | Workload::LongPull)
    }

    /// The documents' bodies, in bytes, each.
    fn bodies(self) -> Vec<usize> {
        match self {
            Workload::Push => vec![DOC_BYTES; 500],
            Workload::Day => {
                let mut b = vec![40 << 10; 50];
                b.push(5_000_000);
                b
            }
            Workload::Pull => vec![DOC_BYTES; 400],
            Workload::LongPull => vec![DOC_BYTES; 2_000],
        }
    }

    fn payload(self) -> usize {
        self.bodies().iter().sum()
    }
}

/// One measurement: seconds, UDP bytes the site's connection sent and received (both ways,
/// what the link dropped included), and the datagrams the bottleneck queue dropped.
struct Measured {
    seconds: f64,
    wire: u64,
    overflowed: u64,
    /// After a push: one more document, synced on the connection the push left open, then
    /// another on a connection just opened (`one_more_document`).
    one_more: Option<[Round; 2]>,
    /// After a push or a pull: the same again from a daemon restarted, and its floor
    /// (`push_restarted`, `pull_restarted`).
    restarted: Option<[Timed; 2]>,
}

impl Measured {
    fn timed(&self) -> Timed {
        Timed {
            seconds: self.seconds,
            wire: self.wire,
            overflowed: self.overflowed,
        }
    }
}

/// Seconds, bytes on the wire and queue drops of a transfer.
#[derive(Debug, Clone, Copy)]
struct Timed {
    seconds: f64,
    wire: u64,
    overflowed: u64,
}

/// A round's time and round trips.
#[derive(Debug, Clone, Copy)]
struct Round {
    seconds: f64,
    round_trips: u64,
}

/// A host daemon reached through a link, and a site of it (in this process), with the
/// workload's documents written where they start: at the site (push, day) or at the host
/// (pull, in the scope of the site's professional).
struct Setup {
    site: Arc<Replica>,
    proxy: FaultProxy,
    /// The host daemon's data folder (its local API's socket).
    host_dir: std::path::PathBuf,
    _host: Daemon,
}

fn setup(dir: &Path, link: Link, workload: Workload) -> Res<Setup> {
    let (host_dir, site_dir) = (dir.join("host"), dir.join("site"));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let host = Replica::init(
        &host_dir,
        crate::bench_options(Role::Host, None, None),
        system_clock(),
    )?;
    carnet_syncd::enrol::init_host(&host)?;
    let pro = doctor_professional()?;
    host.add_professional(&pro)?;
    let dossiers = if workload.pulls() { 200 } else { 1 };
    let mut all = Vec::with_capacity(dossiers);
    for i in 0..dossiers {
        let ins = open_dossier(
            &host,
            Ins::from_body(&format!("1840575{:06}", 100_000 + i))?,
        )?;
        crate::treats(&host, &ins, &pro.rpps)?;
        all.push(ins);
    }
    let actor = Actor::Professional(doctor()?);
    if workload.pulls() {
        host.put_documents(
            &actor,
            AccessMode::Normal,
            None,
            documents(workload.bodies(), &all, 0)?,
        )?;
    }
    let bundle = carnet_syncd::enrol::enrol(&host, "Bench", "750000001", &listen.to_string())?;
    decides(&host)?.bind_professional(SiteId(bundle.site_id), &pro.rpps, true)?;
    drop(host);
    write_host_settings(&host_dir, listen, &Storage::File)?;
    let site = Replica::init(
        &site_dir,
        crate::bench_options(
            Role::Site,
            Some(SiteId(bundle.site_id)),
            Some(bundle.host_key),
        ),
        system_clock(),
    )?;
    carnet_syncd::enrol::install_site(&site, &bundle)?;
    site.add_professional(&pro)?;
    let host = Daemon::start(&host_dir)?;
    let site = Arc::new(site);
    if !workload.pulls() {
        // The site holds its dossier (one round straight to the host, not measured), then
        // writes the documents it pushes.
        let mut first = sync_link(&site, listen)?;
        runtime()?.block_on(first.round())?;
        site.put_documents(
            &actor,
            AccessMode::Normal,
            None,
            documents(workload.bodies(), &all, 0)?,
        )?;
    }
    Ok(Setup {
        site,
        proxy: FaultProxy::start(listen, link.faults(7)),
        host_dir,
        _host: host,
    })
}

/// Documents of `bodies` bytes in the dossiers `ins` (in turn), numbered from `first`.
fn documents(
    bodies: Vec<usize>,
    ins: &[Ins],
    first: usize,
) -> Res<Vec<(Ins, carnet_store::replica::NewDocument)>> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let mut doc = crate::new_doc(first + i)?;
            doc.body = random_bytes(size, (first + i) as u64 + 7);
            Ok((ins[i % ins.len()].clone(), doc))
        })
        .collect()
}

/// The site's link to the host at `address`, as its daemon opens it.
fn sync_link(site: &Arc<Replica>, address: SocketAddr) -> Res<carnet_syncd::net::Link> {
    Ok(carnet_syncd::net::Link::new(
        carnet_store::replica::SiteReplica::new(site.clone())?,
        vec![address],
        Arc::new(tokio::sync::Notify::new()),
    ))
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The workload's sync over a connection just opened: rounds until the site has pushed
/// everything (push, day) or holds every body of its scope (pull).
fn carnet(dir: &Path, link: Link, workload: Workload) -> Res<Measured> {
    let s = setup(dir, link, workload)?;
    let runtime = runtime()?;
    let mut sync = sync_link(&s.site, s.proxy.address)?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let start = Instant::now();
    let mut wire = 0;
    loop {
        let report = runtime.block_on(sync.round())?;
        wire += report.wire_sent + report.wire_received;
        let done = match workload {
            Workload::Pull | Workload::LongPull => {
                let held: usize = s.site.dossiers()?.iter().map(|d| d.documents).sum();
                held == workload.bodies().len() && s.site.missing_bodies()?.is_empty()
            }
            _ => s.site.outbox_len()? == 0,
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} over {} did not end in an hour",
                workload.name(),
                link.label()
            )
            .into());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let overflowed = s.proxy.overflowed();
    let (one_more, restarted) = if workload == Workload::Push {
        let one_more = one_more_document(&runtime, &s.site, &mut sync, s.proxy.address)?;
        runtime.block_on(sync.close());
        (
            Some(one_more),
            Some(push_restarted(&runtime, &s, link, workload)?),
        )
    } else if workload.pulls() {
        runtime.block_on(sync.close());
        (None, Some(pull_restarted(&runtime, &s, link, workload)?))
    } else {
        (None, None)
    };
    Ok(Measured {
        seconds,
        wire,
        overflowed,
        one_more,
        restarted,
    })
}

/// The push again, of as many new documents, from a daemon restarted (a new link, reading
/// the path to the host its last connection measured from the replica), and the floor from
/// a client that resumes at that same path.
fn push_restarted(
    runtime: &tokio::runtime::Runtime,
    s: &Setup,
    link: Link,
    workload: Workload,
) -> Res<[Timed; 2]> {
    let ins = s
        .site
        .dossiers()?
        .first()
        .map(|d| d.head.ins.clone())
        .ok_or("the site holds no dossier")?;
    s.site.put_documents(
        &Actor::Professional(doctor()?),
        AccessMode::Normal,
        None,
        documents(workload.bodies(), &[ins], 2_000_000)?,
    )?;
    let remembered = carnet_store::replica::SiteReplica::new(s.site.clone())?
        .sync()
        .link_path()?
        .ok_or("the push's connection recorded no path")?;
    let carnet = rounds_until(runtime, s, link, "the push again", || {
        Ok(s.site.outbox_len()? == 0)
    })?;
    let floor = floor_resuming(
        link,
        workload,
        carnet_syncd::congestion::Remembered::from_record(&remembered, crate::unix_millis()?),
    )?;
    Ok([carnet, floor.timed()])
}

/// The pull again, of as many new documents written at the host (through its daemon), from
/// a site's daemon restarted: the host's connection starts at the path to the site it
/// measured sending the first pull (`carnet sites`); and the floor from a server that resumes
/// at that same path.
fn pull_restarted(
    runtime: &tokio::runtime::Runtime,
    s: &Setup,
    link: Link,
    workload: Workload,
) -> Res<[Timed; 2]> {
    use carnet_syncd::api::local::Client;
    use carnet_syncd::api::{Request, Response, socket_path};
    let host = Client::new(socket_path(&s.host_dir));
    let scope: Vec<Ins> = s
        .site
        .dossiers()?
        .iter()
        .map(|d| d.head.ins.clone())
        .collect();
    for (ins, document) in documents(workload.bodies(), &scope, 2_000_000)? {
        host.call(Request::PutDocument {
            actor: Actor::Professional(doctor()?),
            mode: AccessMode::Normal,
            reason: None,
            ins,
            document,
        })?;
    }
    // The host records the path as the site's connection ends, which may be just after the
    // site's close returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    let measured = loop {
        let Response::Fleet(sites) = host.call(Request::Fleet { site: None })? else {
            return Err("the host's daemon did not answer with its sites".into());
        };
        if let Some(link) = sites.first().and_then(|site| site.link) {
            break link;
        }
        if Instant::now() > deadline {
            return Err("the host measured no path to the site".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let remembered = carnet_syncd::congestion::Remembered {
        rate: measured.rate,
        min_rtt: Duration::from_micros(measured.min_rtt_micros),
    };
    let expected = 2 * workload.bodies().len();
    let carnet = rounds_until(runtime, s, link, "the pull again", || {
        let held: usize = s.site.dossiers()?.iter().map(|d| d.documents).sum();
        Ok(held == expected && s.site.missing_bodies()?.is_empty())
    })?;
    let floor = floor_resuming(link, workload, Some(remembered))?;
    Ok([carnet, floor.timed()])
}

/// Rounds of a site's daemon just started (a new link), until `done` holds after one: their
/// time, bytes on the wire and queue drops; the link closed after them.
fn rounds_until(
    runtime: &tokio::runtime::Runtime,
    s: &Setup,
    link: Link,
    what: &str,
    done: impl Fn() -> Res<bool>,
) -> Res<Timed> {
    let drops_before = s.proxy.overflowed();
    let mut sync = sync_link(&s.site, s.proxy.address)?;
    let start = Instant::now();
    let mut wire = 0;
    loop {
        let report = runtime.block_on(sync.round())?;
        wire += report.wire_sent + report.wire_received;
        if done()? {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            return Err(format!("{what} over {} did not end in an hour", link.label()).into());
        }
    }
    let timed = Timed {
        seconds: start.elapsed().as_secs_f64(),
        wire,
        overflowed: s.proxy.overflowed() - drops_before,
    };
    runtime.block_on(sync.close());
    Ok(timed)
}

/// A prescription written at the site once the push is done, synced on the connection the
/// push left open (a round after one that ended well sends it behind its `Hello`), then
/// another on a connection just opened (its round waits for the handshake and the
/// `Welcome`).
fn one_more_document(
    runtime: &tokio::runtime::Runtime,
    site: &Arc<Replica>,
    open: &mut carnet_syncd::net::Link,
    address: SocketAddr,
) -> Res<[Round; 2]> {
    let ins = site
        .dossiers()?
        .first()
        .map(|d| d.head.ins.clone())
        .ok_or("the site holds no dossier")?;
    let mut fresh = sync_link(site, address)?;
    let timed = |link: &mut carnet_syncd::net::Link, i: usize| -> Res<Round> {
        site.put_document(
            &Actor::Professional(doctor()?),
            AccessMode::Normal,
            None,
            &ins,
            crate::new_doc(i)?,
        )?;
        let start = Instant::now();
        let report = runtime.block_on(link.round())?;
        if site.outbox_len()? != 0 {
            return Err("the prescription did not reach the host in one round".into());
        }
        Ok(Round {
            seconds: start.elapsed().as_secs_f64(),
            round_trips: report.round_trips,
        })
    };
    Ok([timed(open, 1_000_001)?, timed(&mut fresh, 1_000_002)?])
}

/// A raw QUIC stream carrying the workload's bytes over the same link, the same way (the
/// client sends a push's, the server a pull's, once asked): the floor.
fn floor(link: Link, workload: Workload) -> Res<Measured> {
    floor_resuming(link, workload, None)
}

/// `floor`, its client starting at `remembered` (`carnet_syncd::congestion`).
fn floor_resuming(
    link: Link,
    workload: Workload,
    remembered: Option<carnet_syncd::congestion::Remembered>,
) -> Res<Measured> {
    let overflowed = std::rc::Rc::new(std::cell::Cell::new(0));
    let sender = match workload {
        Workload::Push | Workload::Day => Sender::Client,
        Workload::Pull | Workload::LongPull => Sender::Server,
    };
    let raw = raw_quic_via(workload.payload(), sender, remembered, |server| {
        Ok(Counted(
            FaultProxy::start(server, link.faults(7)),
            overflowed.clone(),
        ))
    })?;
    Ok(Measured {
        seconds: raw.seconds,
        wire: raw.wire,
        overflowed: overflowed.get(),
        one_more: None,
        restarted: None,
    })
}

/// A link that, once dropped, leaves the count of the datagrams its queue dropped.
struct Counted(FaultProxy, std::rc::Rc<std::cell::Cell<u64>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.set(self.0.overflowed());
    }
}

impl crate::sync::RouteTo for Counted {
    fn address(&self) -> SocketAddr {
        self.0.address
    }
}

/// A row's cells from Carnet's time to the budget: Carnet `c` and its floor `f`.
fn cells(link: Link, workload: Workload, c: Timed, f: Timed) -> String {
    let got = share(link, workload, c.seconds);
    let budget = if link.loss_pct <= 2 { 0.85 } else { 0.65 };
    format!(
        "{:.1} s | {} | {} | {:.0} % | {:.1} s | {} | {} | {:.0} % | {} (≥ {:.0} %)",
        c.seconds,
        crate::sync::mib(c.wire),
        c.overflowed,
        got * 100.0,
        f.seconds,
        crate::sync::mib(f.wire),
        f.overflowed,
        share(link, workload, f.seconds) * 100.0,
        crate::verdict(got >= budget),
        budget * 100.0
    )
}

/// The share of the line rate: the workload's bytes at the line rate, over `seconds`.
fn share(link: Link, workload: Workload, seconds: f64) -> f64 {
    workload.payload() as f64 * 8.0 / link.rate as f64 / seconds
}

const USAGE: &str = "link [--full] [--rate 64k|256k|2m|20m]… [--delay MS]… [--loss PCT]… [--workload push|day|pull|long-pull]…";

/// The links and workloads the options choose.
fn chosen() -> Res<(Vec<Link>, Vec<Workload>)> {
    let (mut rates, mut delays, mut losses, mut workloads) = (vec![], vec![], vec![], vec![]);
    let mut full = false;
    let mut args = std::env::args().skip(2);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{a} takes a value: {USAGE}"))
        };
        match a.as_str() {
            "--full" => full = true,
            "--rate" => rates.push(match value()?.as_str() {
                "64k" => 64_000,
                "256k" => 256_000,
                "2m" => 2_000_000,
                "20m" => 20_000_000,
                other => return Err(format!("--rate {other}: {USAGE}").into()),
            }),
            "--delay" => delays.push(
                value()?
                    .parse::<u64>()
                    .map_err(|e| format!("--delay: {e}"))?,
            ),
            "--loss" => losses.push(
                value()?
                    .parse::<u64>()
                    .ok()
                    .filter(|l| *l < 100)
                    .ok_or(format!("--loss takes a percent below 100: {USAGE}"))?,
            ),
            "--workload" => workloads.push(match value()?.as_str() {
                "push" => Workload::Push,
                "day" => Workload::Day,
                "pull" => Workload::Pull,
                "long-pull" => Workload::LongPull,
                other => return Err(format!("--workload {other}: {USAGE}").into()),
            }),
            other => return Err(format!("unknown argument '{other}': {USAGE}").into()),
        }
    }
    let or = |v: Vec<u64>, all: &[u64], part: &[u64]| {
        if !v.is_empty() {
            v
        } else if full {
            all.to_vec()
        } else {
            part.to_vec()
        }
    };
    let rates = or(
        rates,
        &[64_000, 256_000, 2_000_000, 20_000_000],
        &[2_000_000],
    );
    let delays = or(delays, &[25, 150, 300], &[150]);
    let losses = or(losses, &[0, 2, 5, 10], &[0, 2, 10]);
    if workloads.is_empty() {
        workloads = vec![Workload::Push, Workload::Day, Workload::Pull];
    }
    let mut links = Vec::new();
    for &rate in &rates {
        for &delay_ms in &delays {
            for &loss_pct in &losses {
                links.push(Link {
                    rate,
                    delay_ms,
                    loss_pct,
                });
            }
        }
    }
    Ok((links, workloads))
}

pub fn run() -> Res<()> {
    let (links, workloads) = chosen()?;
    let tmp = crate::tmp::tempdir()?;
    println!(
        "carnet-bench link — a host daemon and a site across an emulated link (127.0.0.1, a \
         line rate with a bottleneck queue of one bandwidth-delay product, one-way delay, loss \
         each way); time from a new connection\n"
    );
    println!(
        "| link | workload | Carnet | wire | queue drops | share of line rate | raw QUIC floor | its wire | its drops | floor's share | budget |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut n = 0;
    let mut one_more = Vec::new();
    let mut restarted = Vec::new();
    for link in &links {
        for &workload in &workloads {
            n += 1;
            let dir = tmp.path().join(format!("run{n}"));
            let c = carnet(&dir, *link, workload)?;
            let f = floor(*link, workload)?;
            println!(
                "| {} | {} | {} |",
                link.label(),
                workload.name(),
                cells(*link, workload, c.timed(), f.timed())
            );
            if let Some(rounds) = c.one_more {
                one_more.push((link.label(), rounds));
            }
            if let Some(again) = c.restarted {
                restarted.push((*link, workload, again));
            }
            std::fs::remove_dir_all(&dir)?;
        }
    }
    if !one_more.is_empty() {
        println!(
            "\nThen one document of 4 KiB written at the site, synced on the connection the push left open (pushed behind the Hello), then another on a connection just opened:\n"
        );
        println!("| link | open connection | round trips | new connection | round trips |");
        println!("|---|---:|---:|---:|---:|");
        for (label, [open, fresh]) in one_more {
            println!(
                "| {label} | {:.2} s | {} | {:.2} s | {} |",
                open.seconds, open.round_trips, fresh.seconds, fresh.round_trips
            );
        }
    }
    if !restarted.is_empty() {
        println!(
            "\nThen the same workload again, as many new documents, from a site's daemon restarted within the hour: the sending end's connection starts at the path its last one measured (its round trip checked first) — the site's for a push, the host's for a pull — and the floor's sending end likewise:\n"
        );
        println!(
            "| link | workload | Carnet | wire | queue drops | share of line rate | raw QUIC floor | its wire | its drops | floor's share | budget |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for (link, workload, [c, f]) in restarted {
            println!(
                "| {} | {} | {} |",
                link.label(),
                workload.name(),
                cells(link, workload, c, f)
            );
        }
    }
    Ok(())
}
