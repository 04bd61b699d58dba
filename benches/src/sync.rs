//! `carnet-bench sync` (DESIGN §6): a real host daemon (`carnet-syncd`, built next to this
//! binary) on 127.0.0.1 and a site in this process, in a temporary folder.
//!
//! Prints: the initial sync of 10,000 documents of 4 KiB from the site to the host, against two
//! floors measured in the same run (a raw QUIC stream with the same TLS carrying the same
//! bytes, and raw batched redb inserts of the same bytes; its share of the slower one is
//! DESIGN §6's budget, of the QUIC one issue 17 §3's target), with the CPU each process took
//! and the CPU of the QUIC floor's two ends; a sync with nothing new (bytes on the wire and
//! round trips) at 1,000, 10,000 and 100,000 documents; an incremental sync after changing 1 %
//! of them; and the host's peak memory during each (its `VmHWM`, reset before each phase
//! through `/proc/PID/clear_refs`). `BENCH_CACHE_MIB=N` sets the host's page cache
//! (`cache_mib`; the default otherwise).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carnet_store::ids::Ins;
use carnet_store::model::{AccessMode, Actor};
use carnet_store::policy::Action;
use carnet_store::replica::{Replica, Role, Storage, system_clock};
use carnet_syncd::session::RoundReport;

use crate::{
    DOC_BYTES, Res, create_dossier, doctor, new_doc, random_bytes, raw_redb_batched_seconds,
};

/// A `carnet-syncd` daemon (the host here; `idle` runs sites too), stopped when dropped.
pub(crate) struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub(crate) fn start(dir: &Path) -> Res<Daemon> {
        let bin = std::env::current_exe()?.with_file_name("carnet-syncd");
        if !bin.exists() {
            return Err(format!(
                "{} is missing: build the daemon next to this binary (`cargo build --profile dist \
                 --workspace --bins` builds both in target/dist/, as the benchmarks run them)",
                bin.display()
            )
            .into());
        }
        let child = Command::new(bin)
            .arg("--data")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // The socket answers once the daemon owns the store.
        let socket = carnet_syncd::api::socket_path(dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the daemon of {} did not start", dir.display()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon { child })
    }

    /// CPU seconds the daemon used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        crate::cpu_seconds_of(&self.child.id().to_string())
    }

    /// Resets the peak resident size to the current one.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// Peak resident size since the last reset, in MiB.
    pub(crate) fn peak_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// A host (its daemon running) and a site of it, enrolled, with one dossier in the site's
/// scope.
struct Pair {
    site: Arc<Replica>,
    /// The site's connection to the host, kept open between rounds as the daemon keeps it.
    link: std::sync::Mutex<carnet_syncd::net::Link>,
    host: Daemon,
    ins: Ins,
    runtime: tokio::runtime::Runtime,
}

/// Writes the settings `carnet init` would for a host listening on `listen`, its tables on
/// `storage` (logging warnings only).
pub(crate) fn write_host_settings(dir: &Path, listen: SocketAddr, storage: &Storage) -> Res<()> {
    carnet_syncd::config::Config {
        role: carnet_syncd::config::ConfigRole::Host,
        listen: Some(listen),
        host_address: None,
        inbox: "inbox".into(),
        log_level: "warn".into(),
        log_format: Default::default(),
        sync_every: carnet_syncd::config::DEFAULT_SYNC_EVERY,
        lease_hours: None,
        notification_spool: None,
        cache_mib: std::env::var("BENCH_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(carnet_store::replica::DEFAULT_CACHE_MIB),
        http: None,
        host: match storage {
            Storage::File => None,
            Storage::Postgres(pg) => Some(carnet_syncd::config::HostSettings {
                storage: Some(pg.url.clone()),
                read_connections: None,
            }),
        },
        peer_listen: None,
        discover: false,
        peers: Vec::new(),
    }
    .write_new(dir)?;
    Ok(())
}

pub(crate) fn free_port() -> Res<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn pair(dir: &Path, storage: &Storage) -> Res<Pair> {
    let (host_dir, site_dir) = (dir.join("host"), dir.join("site"));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let host = Replica::init_on(
        &host_dir,
        storage,
        crate::bench_options(Role::Host, None, None),
        system_clock(),
    )?;
    carnet_syncd::enrol::init_host(&host)?;
    let pro = crate::doctor_professional()?;
    host.add_professional(&pro)?;
    let ins = create_dossier(&host)?;
    crate::treats(&host, &ins, &pro.rpps)?;
    let bundle = carnet_syncd::enrol::enrol(&host, "Bench", "750000001", &listen.to_string())?;
    crate::decides(&host)?.bind_professional(
        carnet_store::ids::SiteId(bundle.site_id),
        &pro.rpps,
        true,
    )?;
    drop(host);
    write_host_settings(&host_dir, listen, storage)?;
    let site = Replica::init(
        &site_dir,
        crate::bench_options(
            Role::Site,
            Some(carnet_store::ids::SiteId(bundle.site_id)),
            Some(bundle.host_key),
        ),
        system_clock(),
    )?;
    carnet_syncd::enrol::install_site(&site, &bundle)?;
    site.add_professional(&pro)?;
    let site = Arc::new(site);
    let pair = Pair {
        link: std::sync::Mutex::new(carnet_syncd::net::Link::new(
            carnet_store::replica::SiteReplica::new(site.clone())?,
            vec![listen],
            Arc::new(tokio::sync::Notify::new()),
        )),
        site,
        host: Daemon::start(&host_dir)?,
        ins,
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    pair.round()?;
    Ok(pair)
}

impl Pair {
    fn round(&self) -> Res<RoundReport> {
        let mut link = self.link.lock().map_err(|_| "link lock")?;
        Ok(self.runtime.block_on(link.round())?)
    }

    /// Writes `n` documents of 4 KiB at the site, 1,000 per transaction.
    fn write(&self, n: usize, seed: usize) -> Res<Vec<carnet_store::ids::DocId>> {
        let actor = Actor::Professional(doctor()?);
        let mut ids = Vec::with_capacity(n);
        for start in (0..n).step_by(1000) {
            let batch = (start..n.min(start + 1000))
                .map(|i| Ok((self.ins.clone(), new_doc(seed * 1_000_000 + i)?)))
                .collect::<Res<Vec<_>>>()?;
            ids.extend(
                self.site
                    .put_documents(&actor, AccessMode::Normal, None, batch)?,
            );
        }
        Ok(ids)
    }

    /// Rounds until the site has nothing pending; answers the time, the sum of the reports and
    /// the host's peak memory.
    fn sync(&self) -> Res<(f64, RoundReport, f64)> {
        self.host.reset_peak();
        let start = Instant::now();
        let mut total = RoundReport::default();
        loop {
            let r = self.round()?;
            total.wire_sent += r.wire_sent;
            total.wire_received += r.wire_received;
            total.round_trips += r.round_trips;
            total.pushed = r.pushed;
            total.pulled += r.pulled;
            if self.site.outbox_len()? == 0 {
                break;
            }
        }
        Ok((start.elapsed().as_secs_f64(), total, self.host.peak_mib()))
    }
}

/// Seconds a raw QUIC stream (same TLS configuration, same loopback) takes to carry `bytes`.
/// The raw QUIC floor of the initial sync: seconds, and the CPU its two ends (this process)
/// took.
fn quic_floor() -> Res<(f64, f64)> {
    // The payload is made inside `raw_quic`: its CPU is measured apart and taken off.
    let cpu = crate::cpu_seconds();
    drop(random_bytes(INITIAL * DOC_BYTES, 9));
    let payload_cpu = crate::cpu_seconds() - cpu;
    let cpu = crate::cpu_seconds();
    let quic = raw_quic(INITIAL * DOC_BYTES)?;
    Ok((quic.seconds, crate::cpu_seconds() - cpu - payload_cpu))
}

/// A raw QUIC stream carrying some bytes (`raw_quic`).
pub(crate) struct RawQuic {
    /// From the dial to the receiver's answer, handshake included.
    pub seconds: f64,
    /// UDP bytes the client sent and received.
    pub wire: u64,
    /// Seconds the client's endpoint then took to drain the closed connection (`wait_idle`),
    /// not in `seconds`.
    pub drain: f64,
}

/// A raw QUIC stream (same TLS configuration, same loopback) carrying `bytes`.
pub(crate) fn raw_quic(bytes: usize) -> Res<RawQuic> {
    raw_quic_via(bytes, Sender::Client, None, Ok)
}

/// Which end of the raw stream sends the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// The client, as soon as its connection is open; the server answers one byte at the end.
    Client,
    /// The server, once the client's one-byte request has reached it: a site's pull.
    Server,
}

/// `raw_quic` from `sender`, through what `route` puts in front of the server's address (an
/// emulated link: it answers where the client dials, and is kept until the stream is over),
/// the client starting at the path `remembered` (`carnet_syncd::congestion`), if any.
pub(crate) fn raw_quic_via<R: RouteTo>(
    bytes: usize,
    sender: Sender,
    remembered: Option<carnet_syncd::congestion::Remembered>,
    route: impl FnOnce(SocketAddr) -> Res<R>,
) -> Res<RawQuic> {
    use carnet_syncd::{pki, transport};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let ca = pki::new_ca(now)?;
    let (host, site) = (
        pki::issue_host(&ca, now, None)?,
        pki::issue_site(&ca, 1, now)?,
    );
    let server = transport::server_config(&ca.cert_der, &host, Arc::default())?;
    let mut client = transport::client_config(&ca.cert_der, &site, None, &[])?;
    // The sending end resumes, as Carnet's would: a site pushing, the host answering a pull.
    transport::resuming(&mut client, remembered.filter(|_| sender == Sender::Client))?;
    runtime.block_on(async move {
        let host_server = transport::HostServer::bind(server, "127.0.0.1:0".parse()?)?;
        let addr = host_server.endpoint().local_addr()?;
        let payload = Arc::new(random_bytes(bytes, 9));
        let served = payload.clone();
        let server = tokio::spawn(async move {
            let incoming = host_server
                .endpoint()
                .accept()
                .await
                .ok_or("no connection")?;
            let (connecting, path) = host_server.accept(incoming)?;
            if let Some(r) = remembered.filter(|_| sender == Sender::Server) {
                let _ = path.set(r);
            }
            let conn = connecting.await?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            let got = match sender {
                Sender::Client => {
                    let got = received(&mut recv).await?;
                    send.write_all(&[1]).await?;
                    got
                }
                Sender::Server => {
                    recv.read_to_end(16).await?;
                    sent(&mut send, &served).await?;
                    0
                }
            };
            send.finish()?;
            let _ = conn.closed().await;
            SendRes::Ok(got)
        });
        let mut client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client_endpoint.set_default_client_config(client);
        let relay = route(addr)?;
        let start = Instant::now();
        let conn = client_endpoint
            .connect(relay.address(), pki::HOST_NAME)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let got_here = match sender {
            Sender::Client => {
                sent(&mut send, &payload).await.map_err(|e| e.to_string())?;
                send.finish()?;
                recv.read_to_end(16).await?;
                0
            }
            Sender::Server => {
                send.write_all(&[1]).await?;
                send.finish()?;
                received(&mut recv).await.map_err(|e| e.to_string())?
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        conn.close(0u32.into(), b"done");
        let got = got_here + server.await?.map_err(|e| e.to_string())?;
        if got != bytes {
            return Err(format!("the raw stream carried {got} of {bytes} bytes").into());
        }
        let closed = Instant::now();
        client_endpoint.wait_idle().await;
        let stats = conn.stats();
        Ok(RawQuic {
            seconds,
            wire: stats.udp_tx.bytes + stats.udp_rx.bytes,
            drain: closed.elapsed().as_secs_f64(),
        })
    })
}

/// A result whose error can cross tasks.
type SendRes<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Writes `payload` on `send`, in pieces of 512 KiB.
async fn sent(send: &mut quinn::SendStream, payload: &[u8]) -> SendRes<()> {
    for piece in payload.chunks(512 * 1024) {
        send.write_all(piece).await?;
    }
    Ok(())
}

/// Reads `recv` to its end: how many bytes it carried.
async fn received(recv: &mut quinn::RecvStream) -> SendRes<usize> {
    let mut got = 0usize;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
        got += chunk.bytes.len();
    }
    Ok(got)
}

/// Where a client dials to reach a server: its own address, or a relay's in front of it.
pub(crate) trait RouteTo {
    fn address(&self) -> SocketAddr;
}

impl RouteTo for SocketAddr {
    fn address(&self) -> SocketAddr {
        *self
    }
}

impl RouteTo for crate::fault_proxy::FaultProxy {
    fn address(&self) -> SocketAddr {
        self.address
    }
}

pub(crate) fn mib(bytes: u64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

/// Only the initial sync of 10,000 documents, for profiling it alone (`--storage postgres`:
/// the host's tables in a PostgreSQL server of this run's own).
pub fn initial_only() -> Res<()> {
    let storage = match std::env::args().skip(2).collect::<Vec<_>>().as_slice() {
        [] => Storage::File,
        [flag, name] if flag == "--storage" && name == "redb" => Storage::File,
        [flag, name] if flag == "--storage" && name == "postgres" => {
            Storage::postgres(carnet_testpg::durable_database())
        }
        other => {
            return Err(format!("sync-initial [--storage redb|postgres], not {other:?}").into());
        }
    };
    let tmp = crate::tmp::tempdir()?;
    let p = pair(&tmp.path().join("p10k"), &storage)?;
    p.write(10_000, 1)?;
    let (host_cpu, site_cpu) = (p.host.cpu_seconds(), crate::cpu_seconds());
    let (initial, report, peak) = p.sync()?;
    println!(
        "initial sync, 10,000 documents: {initial:.2} s, {} round trips, host peak {peak:.0} MiB, \
         CPU: host {:.2} s, site {:.2} s",
        report.round_trips,
        p.host.cpu_seconds() - host_cpu,
        crate::cpu_seconds() - site_cpu
    );
    Ok(())
}

/// Only the raw QUIC floor of the initial sync, and the CPU its two ends take.
pub fn quic_floor_only() -> Res<()> {
    let (seconds, cpu) = quic_floor()?;
    println!(
        "raw QUIC floor, {}: {seconds:.2} s, CPU (both ends) {cpu:.2} s",
        mib((INITIAL * DOC_BYTES) as u64),
    );
    Ok(())
}

/// Documents of the initial sync.
pub(crate) const INITIAL: usize = 10_000;

/// The floors of the initial sync: a raw QUIC stream carrying its bytes (seconds, and the CPU
/// of its two ends), and raw batched redb inserts of them (in `dir`; seconds).
pub(crate) fn floors(dir: &Path) -> Res<((f64, f64), f64)> {
    Ok((quic_floor()?, raw_redb_batched_seconds(dir, INITIAL)?))
}

/// The initial sync of `INITIAL` documents from a new site to a new host daemon (its tables
/// on `storage`), in `dir`: seconds, round trips, the host's peak memory.
pub(crate) fn initial_sync(dir: &Path, storage: &Storage) -> Res<(f64, u64, f64)> {
    let p = pair(dir, storage)?;
    p.write(INITIAL, 1)?;
    let (seconds, report, peak) = p.sync()?;
    Ok((seconds, report.round_trips, peak))
}

pub fn run() -> Res<()> {
    let tmp = crate::tmp::tempdir()?;
    println!("carnet-bench sync — a host daemon and a site on 127.0.0.1, 4 KiB documents\n");
    const N: usize = INITIAL;
    let bytes = N * DOC_BYTES;
    let ((quic, quic_cpu), redb) = floors(&tmp.path().join("raw"))?;
    let floor = quic.max(redb);

    let p = pair(&tmp.path().join("p10k"), &Storage::File)?;
    let ids = p.write(N, 1)?;
    let (host_cpu, site_cpu) = (p.host.cpu_seconds(), crate::cpu_seconds());
    let (initial, report, initial_peak) = p.sync()?;
    let (host_cpu, site_cpu) = (
        p.host.cpu_seconds() - host_cpu,
        crate::cpu_seconds() - site_cpu,
    );
    let (quiet_10k_t, quiet_10k, quiet_10k_peak) = p.sync_quiet()?;
    // Incremental: 1 % of the documents masked at the site.
    let actor = Actor::Professional(doctor()?);
    for id in ids.iter().step_by(100) {
        p.site.update_document(&actor, id, Action::Mask)?;
    }
    let (incr_t, incr, incr_peak) = p.sync()?;

    let small = pair(&tmp.path().join("p1k"), &Storage::File)?;
    small.write(1_000, 2)?;
    small.sync()?;
    let (quiet_1k_t, quiet_1k, quiet_1k_peak) = small.sync_quiet()?;
    drop(small);

    // 100,000: the 10,000 pair grows by 90,000.
    p.write(90_000, 3)?;
    let (grow_t, _, grow_peak) = p.sync()?;
    let (quiet_100k_t, quiet_100k, quiet_100k_peak) = p.sync_quiet()?;

    let row = |name: &str, value: String, note: String| {
        println!("{name:<58} {value:>14} {note}");
    };
    println!("{:<58} {:>14} note", "measure", "value");
    row(
        "floor: raw QUIC stream, same TLS, 40 MiB",
        format!("{quic:.2} s"),
        format!(
            "{:.0} MiB/s, CPU of its two ends {quic_cpu:.2} s",
            bytes as f64 / (1 << 20) as f64 / quic
        ),
    );
    row(
        "floor: raw redb inserts of the same bytes, 1000 per txn",
        format!("{redb:.2} s"),
        String::new(),
    );
    let ratio = floor / initial;
    row(
        "initial sync, 10,000 documents site -> host",
        format!("{initial:.2} s"),
        format!(
            "{:.0} docs/s, {:.0}% of the slower floor ({}), {:.0}% of the QUIC floor ({}), {} round trips, CPU: host {host_cpu:.2} s, site {site_cpu:.2} s, host peak {:.0} MiB",
            N as f64 / initial,
            ratio * 100.0,
            if ratio >= 0.5 {
                "ok"
            } else {
                "BELOW BUDGET 50%"
            },
            quic / initial * 100.0,
            if quic / initial >= 0.8 {
                "ok"
            } else {
                "BELOW TARGET 80%"
            },
            report.round_trips,
            initial_peak
        ),
    );
    for (n, t, r, peak) in [
        (1_000, quiet_1k_t, quiet_1k, quiet_1k_peak),
        (10_000, quiet_10k_t, quiet_10k, quiet_10k_peak),
        (100_000, quiet_100k_t, quiet_100k, quiet_100k_peak),
    ] {
        row(
            &format!("nothing new, {n} documents (open connection)"),
            format!("{:.0} ms", t * 1000.0),
            format!(
                "{} round trips, {} sent + {} received, host peak {:.0} MiB{}",
                r.round_trips,
                mib(r.wire_sent),
                mib(r.wire_received),
                peak,
                if r.round_trips <= 1 && r.wire_sent + r.wire_received < 1024 {
                    ""
                } else {
                    " (budget: 1 round trip, < 1 KiB: NOT MET)"
                }
            ),
        );
    }
    row(
        "incremental: 1% of 10,000 masked",
        format!("{:.0} ms", incr_t * 1000.0),
        format!(
            "{} round trips, {} sent, host peak {:.0} MiB",
            incr.round_trips,
            mib(incr.wire_sent),
            incr_peak
        ),
    );
    row(
        "growth: 90,000 more documents",
        format!("{grow_t:.1} s"),
        format!(
            "{:.0} docs/s, host peak {grow_peak:.0} MiB",
            90_000.0 / grow_t
        ),
    );
    Ok(())
}

impl Pair {
    /// One round with nothing new, on the open connection. Its bytes are counted on the
    /// connection 100 ms after the round, so the host's last acknowledgements are in.
    fn sync_quiet(&self) -> Res<(f64, RoundReport, f64)> {
        self.host.reset_peak();
        std::thread::sleep(Duration::from_millis(100));
        let before = self.link.lock().map_err(|_| "link lock")?.wire_bytes();
        let start = Instant::now();
        let mut r = self.round()?;
        let elapsed = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(100));
        let after = self.link.lock().map_err(|_| "link lock")?.wire_bytes();
        (r.wire_sent, r.wire_received) = (after.0 - before.0, after.1 - before.1);
        Ok((elapsed, r, self.host.peak_mib()))
    }
}
