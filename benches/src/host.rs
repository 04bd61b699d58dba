//! `carnet-bench host [--sites N] [--seconds S] [--docs A,B,…] [--storage redb|postgres]`: the
//! national host as a fleet of sites sees it. A real host daemon (`carnet-syncd`, built next to
//! this binary) on 127.0.0.1, its tables in redb or in PostgreSQL (a server of the run's own
//! that syncs its commits to disk, `carnet_testpg::durable_database`), and `N` sites (1,000 by default) simulated in this process:
//! each enrolled by the host with a certificate of its own, each holding its own QUIC
//! connection, each running a round with nothing new (`Hello` → `Welcome` → `Bye`) every 10 s,
//! staggered over the 10 s.
//!
//! For each number of documents stored at the host (none, then 100,000 and 1,000,000 by
//! default, written at the host between two runs of the daemon, 4 KiB each, over 1,000
//! dossiers), prints: the rounds' latency as the sites see it (p50, p99, max; each site's
//! first round, which opens its connection, left out), the host's CPU per minute over the
//! window, and the host's peak memory (`VmHWM`) from its start (opening the store, its
//! start-up jobs, the sites' handshakes and rounds). Budget (issue "The national host", §5):
//! the peak with 100,000 and with 1,000,000 documents within 1.5× of each other, and under
//! 256 MiB with the default page cache (`DEFAULT_CACHE_MIB`). Then the initial sync of 10,000
//! documents from a new site, against the floors `carnet-bench sync` measures (budget 50 % of
//! the slower).
//!
//! A simulated site speaks the wire protocol itself (`session::Msg`, `frame`): it has no
//! replica (a thousand replicas would measure this process, not the host); its `Hello` names
//! the host's log head as its cursor once the first `Welcome` told it, as a site that is
//! current does.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use carnet_store::ids::Ins;
use carnet_store::model::{AccessMode, Actor};
use carnet_store::replica::{KeySource, Replica, Storage, system_clock};
use carnet_syncd::frame::{self, FrameDecoder};
use carnet_syncd::pki::HOST_NAME;
use carnet_syncd::session::{Msg, SiteAbout};

use crate::sync::{Daemon, free_port};
use crate::{Res, doctor, new_doc, random_bytes};

/// How often each site runs a round while nothing happens (the daemon's `sync_every`).
const EVERY: Duration = Duration::from_secs(10);
/// Dossiers the host's documents are spread over.
const DOSSIERS: usize = 1_000;
/// Documents per write transaction at the host.
const BATCH: usize = 1_000;

/// What the command line asks for.
struct Plan {
    sites: usize,
    window: Duration,
    documents: Vec<usize>,
    /// The host's tables in PostgreSQL (`--storage postgres`) rather than redb.
    postgres: bool,
}

fn plan() -> Res<Plan> {
    let mut plan = Plan {
        sites: 1_000,
        window: Duration::from_secs(60),
        documents: vec![0, 100_000, 1_000_000],
        postgres: false,
    };
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).ok_or("an option needs a value")?;
        match args[i].as_str() {
            "--sites" => plan.sites = value.parse()?,
            "--seconds" => plan.window = Duration::from_secs(value.parse()?),
            "--storage" => {
                plan.postgres = match value.as_str() {
                    "redb" => false,
                    "postgres" => true,
                    other => return Err(format!("--storage redb|postgres, not {other}").into()),
                }
            }
            "--docs" => {
                plan.documents = value
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<_, _>>()?;
                plan.documents.sort_unstable();
            }
            other => return Err(format!("unknown option {other}").into()),
        }
        i += 2;
    }
    if plan.sites == 0 || plan.window < EVERY * 2 {
        return Err("at least one site, and a window of at least 20 s".into());
    }
    Ok(plan)
}

/// A site of the fleet: its id and its TLS client configuration (its own certificate).
struct FleetSite {
    id: u32,
    tls: quinn::ClientConfig,
}

/// The host, its dossiers, and the fleet it enrolled.
struct Host {
    dir: std::path::PathBuf,
    storage: Storage,
    listen: SocketAddr,
    dossiers: Vec<Ins>,
    fleet: Vec<FleetSite>,
}

pub fn run() -> Res<()> {
    let plan = plan()?;
    let tmp = crate::tmp::tempdir()?;
    // PostgreSQL: a server of this run's own on 127.0.0.1 that syncs its commits to disk, as
    // redb does (Debian's postgresql, through carnet-testpg), a new database for each host.
    let storage = |dir: &str| -> Storage {
        if plan.postgres {
            let url = carnet_testpg::durable_database();
            eprintln!(
                "({dir}: PostgreSQL database {})",
                url.rsplit('/').next().unwrap_or("")
            );
            Storage::postgres(url)
        } else {
            Storage::File
        }
    };
    let backend = if plan.postgres { "PostgreSQL" } else { "redb" };
    println!(
        "carnet-bench host — a host daemon ({backend}) on 127.0.0.1 and {} simulated sites, each \
         with its own certificate and QUIC connection, a round with nothing new every {} s \
         each; {} s per row\n",
        plan.sites,
        EVERY.as_secs(),
        plan.window.as_secs()
    );
    let started = Instant::now();
    let host = setup(&tmp.path().join("host"), plan.sites, storage("host"))?;
    println!(
        "(enrolled {} sites and opened {DOSSIERS} dossiers in {:.0} s)\n",
        plan.sites,
        started.elapsed().as_secs_f64()
    );
    println!(
        "| documents stored | rounds | round p50 | round p99 | round max | host CPU per minute | host peak memory |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut stored = 0;
    let mut peaks = Vec::new();
    for &target in &plan.documents {
        let write = Instant::now();
        fill(&host, stored, target)?;
        let wrote = write.elapsed();
        stored = target;
        let row = serve_window(&host, plan.window)?;
        println!(
            "| {stored} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} s | {:.0} MiB |",
            row.rounds,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
            row.max.as_secs_f64() * 1e3,
            row.cpu_per_minute,
            row.peak_mib
        );
        if target > 0 {
            peaks.push((stored, row.peak_mib));
            eprintln!(
                "(wrote up to {stored} documents at the host in {:.0} s)",
                wrote.as_secs_f64()
            );
        }
    }
    // The initial sync through this host's backend, against the floors `carnet-bench sync`
    // measures.
    let ((quic, _), redb) = crate::sync::floors(&tmp.path().join("raw"))?;
    let (initial, round_trips, peak) =
        crate::sync::initial_sync(&tmp.path().join("initial"), &storage("initial"))?;
    let ratio = quic.max(redb) / initial;
    println!(
        "\ninitial sync of {} documents, site -> host ({backend}): {initial:.2} s, {round_trips} round \
         trips, host peak {peak:.0} MiB; floors: raw QUIC {quic:.2} s, raw redb {redb:.2} s: {:.0} % \
         of the slower ({})",
        crate::sync::INITIAL,
        ratio * 100.0,
        crate::verdict(ratio >= 0.5)
    );
    if let (Some(&(low_n, low)), Some(&(high_n, high))) = (peaks.first(), peaks.last())
        && high_n > low_n
    {
        let ratio = high / low.max(1.0);
        println!(
            "\nhost peak memory, {high_n} against {low_n} documents: {ratio:.2}× (budget 1.5×: {}); \
             the largest {high:.0} MiB (budget 256 MiB with the default page cache: {})",
            crate::verdict(ratio <= 1.5),
            crate::verdict(high <= 256.0)
        );
    }
    Ok(())
}

/// A host replica enrolled with `sites` sites, `DOSSIERS` dossiers granted to the doctor, and
/// its daemon settings (those `carnet init` writes). The doctor practises at none of the sites:
/// the documents stay at the host (bound at every site, each would be copied into every
/// site's log, a fan-out no real dossier has).
fn setup(dir: &Path, sites: usize, storage: Storage) -> Res<Host> {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let host = crate::new_host_on(dir, &storage)?;
    carnet_syncd::enrol::init_host(&host)?;
    let pro = crate::doctor_professional()?;
    host.add_professional(&pro)?;
    let mut dossiers = Vec::with_capacity(DOSSIERS);
    for i in 0..DOSSIERS {
        let ins = Ins::from_body(&format!("1840575{:03}{:03}", 101 + i / 999, 1 + i % 999))?;
        crate::open_dossier(&host, ins.clone())?;
        crate::treats(&host, &ins, &pro.rpps)?;
        dossiers.push(ins);
    }
    let mut fleet = Vec::with_capacity(sites);
    for i in 0..sites {
        let bundle = carnet_syncd::enrol::enrol(
            &host,
            &format!("Bench site {i}"),
            "750000001",
            &listen.to_string(),
        )?;
        fleet.push(FleetSite {
            id: bundle.site_id,
            tls: carnet_syncd::transport::client_config(
                &bundle.ca_cert_der,
                &bundle.identity,
                Some(&[bundle.host_tls_pin]),
                &[],
            )?,
        });
    }
    drop(host);
    crate::sync::write_host_settings(dir, listen, &storage)?;
    Ok(Host {
        dir: dir.to_path_buf(),
        storage,
        listen,
        dossiers,
        fleet,
    })
}

/// Writes documents `from..to` at the host (its daemon stopped), spread over its dossiers.
fn fill(host: &Host, from: usize, to: usize) -> Res<()> {
    if to <= from {
        return Ok(());
    }
    let replica = Replica::open_on(
        &host.dir,
        &host.storage,
        &KeySource::File,
        system_clock(),
        carnet_store::replica::DEFAULT_CACHE_MIB,
    )?;
    let actor = Actor::Professional(doctor()?);
    for start in (from..to).step_by(BATCH) {
        let batch = (start..to.min(start + BATCH))
            .map(|i| Ok((host.dossiers[i % DOSSIERS].clone(), new_doc(i)?)))
            .collect::<Res<Vec<_>>>()?;
        replica.put_documents(&actor, AccessMode::Normal, None, batch)?;
    }
    Ok(())
}

/// What one window of the fleet measured.
struct Window {
    rounds: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    cpu_per_minute: f64,
    peak_mib: f64,
}

/// Starts the host's daemon, lets the fleet connect and run its rounds for `window`, and
/// stops the daemon.
fn serve_window(host: &Host, window: Duration) -> Res<Window> {
    let daemon = Daemon::start(&host.dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (latencies, cpu) = runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let begin = tokio::time::Instant::now();
        let until = begin + window;
        let step = EVERY / host.fleet.len() as u32;
        // The host's CPU counts from when every site had its first round.
        let settled = begin + EVERY;
        let tasks: Vec<_> = host
            .fleet
            .iter()
            .enumerate()
            .map(|(i, site)| {
                let start = begin + step * i as u32;
                tokio::spawn(site_rounds(
                    endpoint.clone(),
                    site.tls.clone(),
                    host.listen,
                    site.id,
                    start,
                    until,
                ))
            })
            .collect();
        tokio::time::sleep_until(settled).await;
        let cpu_start = daemon.cpu_seconds();
        tokio::time::sleep_until(until).await;
        let cpu = daemon.cpu_seconds() - cpu_start;
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.map_err(|e| e.to_string())??);
        }
        endpoint.wait_idle().await;
        Ok::<_, Box<dyn std::error::Error>>((latencies, cpu))
    })?;
    let peak_mib = daemon.peak_mib();
    drop(daemon);
    let mut sorted = latencies;
    sorted.sort_unstable();
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let measured = window.saturating_sub(EVERY).as_secs_f64().max(1.0);
    Ok(Window {
        rounds: sorted.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: sorted.last().copied().unwrap_or_default(),
        cpu_per_minute: cpu * 60.0 / measured,
        peak_mib,
    })
}

/// One simulated site: connects at `start`, then runs a round every `EVERY` until `until`;
/// answers the latency of each round but the first.
async fn site_rounds(
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    host: SocketAddr,
    site: u32,
    start: tokio::time::Instant,
    until: tokio::time::Instant,
) -> Result<Vec<Duration>, String> {
    tokio::time::sleep_until(start).await;
    let conn = endpoint
        .connect_with(tls, host, HOST_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("site {site}: {e}"))?;
    let chain_key: [u8; 32] = random_bytes(32, u64::from(site) + 1)
        .try_into()
        .map_err(|_| "key")?;
    let mut cursor = 0;
    let mut latencies = Vec::new();
    let mut next = start;
    while next < until {
        tokio::time::sleep_until(next).await;
        let began = Instant::now();
        let head = round(&conn, site, cursor, chain_key)
            .await
            .map_err(|e| format!("site {site}: {e}"))?;
        if next > start {
            latencies.push(began.elapsed());
        }
        cursor = head;
        next += EVERY;
    }
    conn.close(0u32.into(), b"bye");
    Ok(latencies)
}

/// One round with nothing new: `Hello` at `cursor`, the `Welcome`, `Bye`. Answers the host's
/// log head for the site.
async fn round(conn: &quinn::Connection, site: u32, cursor: u64, chain_key: [u8; 32]) -> Res<u64> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Msg::Hello {
        site,
        cursor,
        outbox_acked: 0,
        chain_key,
        about: SiteAbout {
            version: env!("CARGO_PKG_VERSION").into(),
            ..SiteAbout::default()
        },
        renewal: None,
    };
    send.write_all(&frame::encode(&hello)?).await?;
    let mut decoder = FrameDecoder::new();
    let head = loop {
        if let Some(msg) = decoder.next_message::<Msg>()? {
            match msg {
                Msg::Welcome { log_head, .. } => break log_head,
                other => return Err(format!("the host answered {other:?}").into()),
            }
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => return Err("the host closed the session early".into()),
        }
    };
    send.write_all(&frame::encode(&Msg::Bye)?).await?;
    send.finish()?;
    Ok(head)
}
