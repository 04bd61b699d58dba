//! `carnet-syncd`: the sync daemon. `carnet-syncd --data DIR [--config FILE]`.
//!
//! The daemon owns the store and serves the local API on `DATA/carnet.sock` (mode 0600), so
//! `carnet` works through it while it runs. The host serves sync sessions on its `listen`
//! address, pokes the sites connected to it when their logs grow, and runs the announcement
//! timer hourly. A site ingests its inbox and keeps a connection to the host open (the live
//! phase), to one of the daemons its `host_address` lists (`net::Link`): it runs a round at once when something changes here or the host pokes it, and every
//! `sync_every` seconds otherwise; while the host is out of reach it backs off with jitter.
//! SIGTERM or Ctrl-C ends it after the round or transaction in flight, closes the connection,
//! and removes the socket. Under systemd (`Type=notify`) it says READY=1 once it serves,
//! STOPPING=1 at SIGTERM, and feeds the watchdog (`systemd`). SIGHUP reads `carnet.toml` again
//! and applies the log level, and on a site `sync_every`, the inbox and `[[peer]]`, with the connection
//! to the host left open (`Config::reload`; a file refused leaves the settings in force). Logs name sites, counts and
//! errors, never patient data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use carnet_store::replica::{HostReplica, KeySource, Opened, Replica, SiteReplica, system_clock};
use carnet_syncd::api::{LinkState, Service, local};
use carnet_syncd::config::{CONFIG_FILE, Config, ConfigRole, LogFormat};
use carnet_syncd::schedule::{self, LeaseEvent, LeaseWatch, Next, RoundTimer};
use carnet_syncd::systemd::{self, Notifier};
use carnet_syncd::{enrol, inbox, net, transport};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// mimalloc keeps the memory it has taken from the system between transactions, where glibc's
/// per-thread arenas gave it back and took it again for every page redb allocates: on the host,
/// growing the heap (mprotect and page faults) was a fifth of the time spent applying a push.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often the host runs the announcement timer.
const ANNOUNCEMENT_EVERY: Duration = Duration::from_secs(3600);
/// How often a running daemon compacts its body segments (`segment_compaction`).
const COMPACTION_EVERY: Duration = Duration::from_secs(3600);
/// How often the host looks for notifications to spool (`notification_spool`).
const SPOOL_EVERY: Duration = Duration::from_secs(1);
/// How often a site tidies its inbox's `done/` (`inbox::tidy`: clear pairs an older version
/// left, receipts past their keeping time).
const INBOX_TIDY_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How often the daemon logs certificates close to expiry.
const CERTIFICATE_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

struct Args {
    data: PathBuf,
    config: Option<PathBuf>,
}

/// The version line: the package version and the commit it was built from (`build.rs`).
fn version() -> String {
    format!(
        "carnet-syncd {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("CARNET_GIT_COMMIT")
    )
}

const USAGE: &str = "usage: carnet-syncd --data DIR [--config FILE]";

fn help() -> String {
    format!(
        "{version}\n\
         The Carnet sync daemon: owns the replica in DIR, serves `carnet` on DIR/carnet.sock, and\n\
         syncs with the national host (a site) or serves the sites (the host).\n\n\
         {USAGE}\n\n\
         Options:\n  \
           --data DIR       the replica's folder (or CARNET_DATA)\n  \
           --config FILE    the settings (default DIR/carnet.toml)\n  \
           -h, --help       this help\n  \
           -V, --version    the version and the commit it was built from\n\n\
         Environment: CARNET_DATA, CARNET_PASSPHRASE (a passphrase instead of DIR/master.key),\n\
         CARNET_HIGH_WATER (a high-water mark file outside DIR, checked at start);\n\
         under systemd (Type=notify), NOTIFY_SOCKET and WATCHDOG_USEC.\n\
         Signals: SIGTERM or SIGINT stops after the round in flight; SIGHUP reads carnet.toml\n\
         again (log_level, sync_every, inbox, [[peer]]; the connection to the host stays).\n\
         Exit status: 0 stopped cleanly, 1 failed (see the log), 2 bad arguments.\n",
        version = version()
    )
}

/// What the command line asks for.
enum Invocation {
    Run(Args),
    /// Print this on stdout and exit 0.
    Print(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Invocation, String> {
    let mut data = std::env::var_os("CARNET_DATA").map(PathBuf::from);
    let mut config = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value: {USAGE}"))
        };
        match flag.as_str() {
            "--data" => data = Some(value("--data")?),
            "--config" => config = Some(value("--config")?),
            "-h" | "--help" => return Ok(Invocation::Print(help())),
            "-V" | "--version" => return Ok(Invocation::Print(version() + "\n")),
            other => return Err(format!("unknown argument '{other}': {USAGE}")),
        }
    }
    let data = data.ok_or("no data folder: pass --data DIR or set CARNET_DATA")?;
    Ok(Invocation::Run(Args { data, config }))
}

fn main() -> ExitCode {
    let small_pages = carnet_syncd::memory::use_small_pages();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Invocation::Run(a)) => a,
        Ok(Invocation::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("carnet-syncd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, small_pages) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            eprintln!("carnet-syncd: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The log filter for `level` (the daemon's and the store's events; not its dependencies').
fn log_filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("carnet_syncd={level},carnet_store={level}"))
}

/// The logs on stderr; their level changes on a reload.
struct Logs {
    level: reload::Handle<EnvFilter, Registry>,
}

impl Logs {
    /// Logs carry site ids, counts and errors; never names, INS or titles. As text, or one
    /// JSON object per line (`log_format`): `timestamp`, `level`, `message`, the event's fields
    /// (`site`, counts…) at the top level, and `target`.
    fn init(config: &Config) -> Logs {
        let (filter, level) = reload::Layer::new(log_filter(&config.log_level));
        let logs = tracing_subscriber::registry().with(filter);
        match config.log_format {
            LogFormat::Text => logs
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .init(),
            LogFormat::Json => logs
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_span_list(false)
                        .with_writer(std::io::stderr),
                )
                .init(),
        }
        Logs { level }
    }

    fn set_level(&self, level: &str) {
        if let Err(e) = self.level.reload(log_filter(level)) {
            tracing::warn!(error = %e, "the log level could not change");
        }
    }
}

/// The settings in force and where they come from; SIGHUP reads them again.
struct Settings {
    path: PathBuf,
    config: Config,
    logs: Logs,
    /// SIGHUP, caught from the start (uncaught, it would end the daemon).
    hup: Signal,
}

impl Settings {
    /// Waits for SIGHUP, reads `carnet.toml` again and applies the log level; answers the
    /// settings now in force, which the caller applies further (a site's `sync_every` and
    /// inbox). A file refused leaves every setting as it was, with a warning; systemd hears
    /// RELOADING=1 then READY=1 either way.
    async fn reloaded(&mut self, notifier: &Notifier) -> Option<Config> {
        self.hup.recv().await;
        notifier.notify("RELOADING=1");
        let outcome = match self.config.reload(&self.path) {
            Ok((config, restart)) => {
                self.logs.set_level(&config.log_level);
                for setting in restart {
                    tracing::warn!(setting, "carnet.toml: this change needs a restart");
                }
                tracing::info!(
                    log_level = %config.log_level,
                    sync_every = config.sync_every,
                    inbox = %config.inbox.display(),
                    "carnet.toml reloaded"
                );
                self.config = config.clone();
                Some(config)
            }
            Err(e) => {
                tracing::warn!(error = %e, "carnet.toml refused: the settings in force stay");
                None
            }
        };
        notifier.notify("READY=1");
        outcome
    }
}

/// `small_pages`: what `memory::use_small_pages` answered, for the log.
fn run(args: Args, small_pages: std::io::Result<()>) -> Result<(), Box<dyn std::error::Error>> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| args.data.join(CONFIG_FILE));
    let config = Config::load(&path)?;
    let logs = Logs::init(&config);
    if let Err(e) = small_pages {
        tracing::warn!(error = %e, "the kernel refused to keep transparent huge pages from this process: syncs may take more CPU");
    }
    let key = match std::env::var("CARNET_PASSPHRASE") {
        Ok(p) if !p.is_empty() => KeySource::Passphrase(zeroize::Zeroizing::new(p)),
        _ => KeySource::File,
    };
    let mut replica = Replica::open_on(
        &args.data,
        &config.storage(),
        &key,
        system_clock(),
        config.cache_mib,
    )?;
    carnet_store::replica::check_high_water_from_env(&replica)?;
    for fix in replica.folder_fixes() {
        tracing::warn!("{fix}");
    }
    if let Some(hours) = config.lease_hours
        && replica.config().lease_ms != Some(i64::from(hours) * 3_600_000)
    {
        replica.set_lease_hours(hours)?;
        tracing::info!(hours, "lease set from carnet.toml");
    }
    let replica = Arc::new(replica);
    // The trace committer: makes the trace entries of the reads served through the local API
    // durable, one journal sync for every batch of them.
    let committing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let committer = {
        let (r, running) = (replica.clone(), committing.clone());
        std::thread::Builder::new()
            .name("trace-committer".into())
            .spawn(move || r.run_trace_committer(&running))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let data = args.data.clone();
    // Under systemd (Type=notify): READY once serving, STOPPING at SIGTERM, and the watchdog.
    let notifier = Arc::new(Notifier::from_env());
    let result = runtime.block_on(async move {
        let stop = StopSignals::install()?;
        let settings = Settings {
            path,
            config,
            logs,
            hup: signal(SignalKind::hangup())?,
        };
        let listener = local::bind(&args.data)?;
        match (settings.config.role, Opened::of(replica)) {
            (ConfigRole::Host, Opened::Host(replica)) => {
                host(replica, settings, &args.data, listener, &notifier, stop).await
            }
            (ConfigRole::Site, Opened::Site(replica)) => {
                site(replica, settings, &args.data, listener, &notifier, stop).await
            }
            (ConfigRole::Host, Opened::Site(_)) => Err(format!(
                "{}: role = \"host\", but the replica in {} is a site's: correct the role in the file, or point --data at the host's folder",
                settings.path.display(),
                args.data.display()
            )
            .into()),
            (ConfigRole::Site, Opened::Host(_)) => Err(format!(
                "{}: role = \"site\", but the replica in {} is the national host's: correct the role in the file, or point --data at the site's folder",
                settings.path.display(),
                args.data.display()
            )
            .into()),
        }
    });
    committing.store(false, std::sync::atomic::Ordering::SeqCst);
    committer.thread().unpark();
    let _ = committer.join();
    // The socket goes with the daemon, so `carnet` opens the store directly again.
    let _ = std::fs::remove_file(carnet_syncd::api::socket_path(&data));
    result
}

/// How often the host checks that its database file still takes writes.
const STORAGE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Resolves once a write or sync of the replica's database file or body segments failed (a
/// deferred sync, seen by nobody waiting, included): nothing more can be made durable until
/// the daemon opens the replica again, when redb recovers the file.
async fn storage_failure(replica: &Replica) {
    loop {
        if let Some(failure) = replica.storage_failure() {
            tracing::error!(error = %failure, "the replica's storage failed: stopping");
            return;
        }
        tokio::time::sleep(STORAGE_CHECK_EVERY).await;
    }
}

/// Tells systemd the daemon serves (`READY=1`, with a status line), and from then on feeds its
/// watchdog if it asked for one.
fn ready(notifier: &Arc<Notifier>, status: &str) {
    notifier.notify(&format!("READY=1\nSTATUS={status}"));
    if let Some(every) = systemd::watchdog_interval().filter(|_| notifier.is_active()) {
        tokio::spawn(watchdog(notifier.clone(), every));
    }
}

/// Tells systemd the daemon is alive every `every` (half of `WATCHDOG_USEC`). It runs on the
/// runtime that serves everything else: if the runtime stops turning, systemd stops hearing
/// from it and restarts the service (`WatchdogSec` in the unit).
async fn watchdog(notifier: Arc<Notifier>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        notifier.notify("WATCHDOG=1");
    }
}

/// SIGTERM and SIGINT, caught from the start (before the first poll too: until a handler is
/// installed, SIGTERM kills the process outright).
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when SIGTERM or SIGINT arrives.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn host(
    replica: HostReplica,
    mut settings: Settings,
    data: &std::path::Path,
    listener: tokio::net::UnixListener,
    notifier: &Arc<Notifier>,
    mut stop: StopSignals,
) -> Result<(), Box<dyn std::error::Error>> {
    let listen = settings
        .config
        .listen
        .ok_or("carnet.toml: a host needs `listen`")?;
    let (ca, identity) = enrol::host_identity(&replica)?;
    let revoked = Arc::new(enrol::revoked(&replica)?);
    let server = transport::HostServer::bind(
        transport::server_config(&ca, &identity, revoked.clone())?,
        listen,
    )?;
    let endpoint = server.endpoint().clone();
    tracing::info!(address = %endpoint.local_addr()?, "host serving");
    let mut service = Service::new(replica.arc().clone());
    // `carnet pki revoke` through the daemon refuses the site at once, live connection included.
    service.revoked = Some(revoked.clone());
    // `carnet pki renew-host` through the daemon serves the new certificate at once.
    service.server = Some(server.clone());
    let live = net::Live::new(service.changed.clone(), revoked);
    // The paths to the sites an earlier run measured: each site's next connection starts there.
    match (
        replica
            .sync()
            .link_paths()
            .map_err(carnet_syncd::Error::from),
        enrol::sites(&replica),
    ) {
        (Ok(paths), Ok(register)) => live.fleet().remember(
            paths,
            |site| register.get(&site.0).is_some_and(|s| !s.revoked),
            replica.now(),
        ),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "could not read the paths to the sites")
        }
    }
    // `carnet sites`: what the daemon sees of each site.
    service.fleet = Some(live.fleet());
    let service = Arc::new(service);
    let api = tokio::spawn(local::serve(listener, service.clone()));
    let http = start_http(&settings.config, &service).await?;
    let timer = tokio::spawn(announcement_timer(replica.clone(), live.clone()));
    let certificates = tokio::spawn(certificate_watch(replica.arc().clone()));
    let compaction = tokio::spawn(segment_compaction(replica.arc().clone()));
    let spool = settings
        .config
        .spool_dir(data)
        .map(|dir| tokio::spawn(notification_spool(replica.clone(), dir)));
    let server = tokio::spawn(net::serve(server, replica.clone(), live));
    // The local socket and the QUIC endpoint are bound: `carnet` and the sites can reach us.
    ready(
        notifier,
        &format!("host serving sites on {}", endpoint.local_addr()?),
    );
    let storage_failed = loop {
        tokio::select! {
            () = stop.recv() => break false,
            () = storage_failure(&replica) => break true,
            // Only the log level matters to a host.
            _ = settings.reloaded(notifier) => {}
        }
    };
    notifier.notify("STOPPING=1");
    tracing::info!("stopping");
    endpoint.close(0u32.into(), b"host stopping");
    endpoint.wait_idle().await;
    server.abort();
    api.abort();
    if let Some(http) = http {
        http.abort();
    }
    timer.abort();
    certificates.abort();
    compaction.abort();
    if let Some(spool) = spool {
        spool.abort();
    }
    if storage_failed {
        // A non-zero exit: systemd starts the daemon again, and redb recovers the file.
        return Err("a write to the database file failed (see the log): restart the daemon".into());
    }
    Ok(())
}

async fn site(
    replica: SiteReplica,
    mut settings: Settings,
    data: &std::path::Path,
    listener: tokio::net::UnixListener,
    notifier: &Arc<Notifier>,
    mut stop: StopSignals,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = settings.config.clone();
    let mut inbox_dir = config.inbox_dir(data);
    // `sync status` shows the settings in force (the inbox resolved).
    let mut service = Service::new(replica.arc().clone());
    // The host's daemons this site dials, in order: `host_address` as loaded.
    let hosts = config
        .host_address
        .as_ref()
        .map(|a| a.list().to_vec())
        .ok_or("carnet.toml: a site needs `host_address`")?;
    service.connection = Some(tokio::sync::Mutex::new(net::Link::new(
        replica.clone(),
        hosts,
        service.changed.clone(),
    )));
    service.link = Some(std::sync::Mutex::new(LinkState {
        settings: Some(Config {
            inbox: inbox_dir.clone(),
            ..config.clone()
        }),
        ..LinkState::default()
    }));
    // `discover = true`: this site announces itself on the local network and finds the sites
    // there, admitted to peer sessions as listed ones are.
    if config.discover {
        let own = replica.config();
        service.discovery = Some(carnet_syncd::discovery::Discovery::start(
            own.site_id.0,
            &own.name,
            config.peer_listen,
        )?);
        tracing::info!("announcing this site and finding peers on the local network (mDNS)");
    }
    let service = Arc::new(service);
    let api = tokio::spawn(local::serve(listener, service.clone()));
    // Ends with the daemon (the runtime drops it).
    let _http = start_http(&config, &service).await?;
    let certificates = tokio::spawn(certificate_watch(replica.arc().clone()));
    let compaction = tokio::spawn(segment_compaction(replica.arc().clone()));
    let tidy = tokio::spawn(inbox_tidy(service.clone()));
    // `peer_listen`: handovers from the sites listed as `[[peer]]` (off unless set).
    // Its `[[peer]]` follow carnet.toml: SIGHUP replaces them (`PeerPolicy::set_sites`).
    let peer_policy = carnet_syncd::peer::policy(
        &config,
        carnet_syncd::peer::revoked_list(&replica),
        service.discovery.clone(),
    );
    let peers = match config.peer_listen {
        Some(address) => {
            let tls = enrol::site_tls(&replica)?;
            let endpoint = quinn::Endpoint::server(
                transport::peer_server_config(
                    &tls.ca_cert_der,
                    &tls.identity,
                    peer_policy.clone(),
                )?,
                address,
            )?;
            tracing::info!(address = %endpoint.local_addr()?, peers = config.peers.len(), "accepting handovers from peers");
            Some(tokio::spawn(carnet_syncd::peer::serve(
                endpoint,
                replica.clone(),
                service.changed.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(
        site = %replica.config().site_id,
        host_address = %config.host_address.as_ref().map_or_else(String::new, |a| a.to_string()),
        "site syncing"
    );
    // The inbox is scanned at start and whenever the file system reports a file that may
    // complete a pair (never for the scan's own reads and moves: `inbox::starts_scan`).
    let (mut _watcher, mut scans) = watch_inbox(&inbox_dir)?;
    // The local socket and the inbox watch are up; the host may be out of reach (a site works
    // offline), so readiness does not wait for it.
    ready(
        notifier,
        &format!(
            "site {} syncing with {}",
            replica.config().site_id,
            config
                .host_address
                .as_ref()
                .map_or_else(|| "no host".to_string(), |a| a.to_string())
        ),
    );
    let mut inbox_waiting = ingest(&service, &inbox_dir).await;
    // A restored replica takes nothing from its inbox until its first round caught up.
    let mut restoring = service.replica.restore_mark().ok().flatten().is_some();
    let mut timer = RoundTimer::new(Duration::from_secs(config.sync_every));
    let mut lease = LeaseWatch::new(replica.config().lease_ms.unwrap_or(0));
    loop {
        // SIGTERM during a round: systemd hears STOPPING=1 at once, the round ends, then the
        // daemon stops.
        let round = service.sync_round();
        tokio::pin!(round);
        let mut stopping = false;
        let outcome = tokio::select! {
            outcome = &mut round => outcome,
            () = stop.recv() => {
                notifier.notify("STOPPING=1");
                tracing::info!("stopping after the round in flight");
                stopping = true;
                round.await
            }
        };
        if stopping {
            api.abort();
            tidy.abort();
            if let Some(peers) = &peers {
                peers.abort();
            }
            service.close_connection().await;
            return Ok(());
        }
        let round_ended = tokio::time::Instant::now();
        watch_lease(&service.replica, &mut lease);
        if inbox_waiting {
            inbox_waiting = ingest(&service, &inbox_dir).await;
        }
        let Next {
            pause,
            regular,
            connected,
        } = match outcome {
            Ok(report) => {
                if report.pulled > 1
                    || report.bodies > 0
                    || report.purged > 0
                    || report.withdrawn > 0
                {
                    tracing::info!(
                        pulled = report.pulled,
                        bodies = report.bodies,
                        purged = report.purged,
                        withdrawn = report.withdrawn,
                        returned = report.returned,
                        "synced"
                    );
                }
                if restoring {
                    restoring = false;
                    inbox_waiting = ingest(&service, &inbox_dir).await;
                }
                timer.succeeded(report.bodies_waiting > 0)
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = timer.backoff().as_secs(), "sync failed");
                timer.failed(Duration::from_millis(u64::from(rand_jitter()) % 1000))
            }
        };
        let next_round = tokio::time::sleep(pause);
        tokio::pin!(next_round);
        loop {
            tokio::select! {
                () = stop.recv() => {
                    notifier.notify("STOPPING=1");
                    tracing::info!("stopping");
                    api.abort();
                    certificates.abort();
                    compaction.abort();
                    tidy.abort();
                    if let Some(peers) = &peers {
                        peers.abort();
                    }
                    service.close_connection().await;
                    return Ok(());
                }
                _ = &mut next_round => break,
                // A change here or a poke from the host, while connected (when the host is out
                // of reach, the backoff decides).
                _ = service.changed.notified(), if connected => {
                    tokio::time::sleep(schedule::COALESCE).await;
                    break;
                }
                // A burst of events is one signal (the channel holds one).
                Some(()) = scans.recv() => inbox_waiting = ingest(&service, &inbox_dir).await,
                // SIGHUP: the connection stays; the next regular round keeps to the new
                // interval, and a new inbox is watched (and scanned) from now on.
                Some(config) = settings.reloaded(notifier) => {
                    let new_dir = config.inbox_dir(data);
                    if new_dir != inbox_dir {
                        match watch_inbox(&new_dir) {
                            Ok((watcher, new_scans)) => {
                                (_watcher, scans, inbox_dir) = (watcher, new_scans, new_dir);
                                inbox_waiting = ingest(&service, &inbox_dir).await;
                            }
                            // The new folder cannot be watched: the old one stays.
                            Err(e) => tracing::warn!(
                                inbox = %new_dir.display(),
                                error = %e,
                                "inbox not changed"
                            ),
                        }
                    }
                    peer_policy.set_sites(config.peers.iter().map(|p| p.site).collect());
                    timer.set_every(Duration::from_secs(config.sync_every));
                    if regular {
                        next_round.as_mut().reset(round_ended + timer.every());
                    }
                    if let Some(link) = &service.link
                        && let Ok(mut l) = link.lock()
                    {
                        l.settings = Some(Config {
                            inbox: inbox_dir.clone(),
                            ..config
                        });
                    }
                }
            }
        }
    }
}

/// Starts the HTTP listener (`/metrics`, the status page) if `carnet.toml` has `[http]`; its
/// token is made in the data folder at the first start.
async fn start_http(
    config: &Config,
    service: &Arc<Service>,
) -> Result<Option<tokio::task::JoinHandle<()>>, Box<dyn std::error::Error>> {
    let Some(settings) = &config.http else {
        return Ok(None);
    };
    let token = carnet_syncd::http::token(service.replica.dir())?;
    let listener = carnet_syncd::http::bind(settings).await?;
    tracing::info!(address = %listener.local_addr()?, "status page and /metrics served");
    Ok(Some(tokio::spawn(carnet_syncd::http::serve(
        listener,
        service.clone(),
        token,
    ))))
}

/// Gives back, every `COMPACTION_EVERY`, the space of the bodies purged, withdrawn or
/// replaced since (`Replica::compact_bodies`, which also runs at each start): a daemon runs
/// for months between starts. One wake-up an hour; a storage failure stops the daemon
/// (`storage_failure`).
async fn segment_compaction(replica: Arc<Replica>) {
    let start = tokio::time::Instant::now() + COMPACTION_EVERY;
    let mut every = tokio::time::interval_at(start, COMPACTION_EVERY);
    // After a suspend, one pass, not one per hour missed.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let r = replica.clone();
        match tokio::task::spawn_blocking(move || r.compact_bodies()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "body segment compaction"),
            Err(e) => tracing::error!(error = %e, "body segment compaction stopped"),
        }
    }
}

/// Host: the announcement timer (DOMAIN §3), at start and every `ANNOUNCEMENT_EVERY`.
/// Logs, at start and twice a day, the certificates that expire within
/// `pki::RENEW_WITHIN_DAYS` (or have expired), and a site that pins no host key.
async fn certificate_watch(replica: Arc<Replica>) {
    let mut every = tokio::time::interval(CERTIFICATE_CHECK_EVERY);
    loop {
        every.tick().await;
        let r = replica.clone();
        match tokio::task::spawn_blocking(move || enrol::certificate_warnings(&r)).await {
            Ok(Ok(warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "certificate check"),
            Err(_) => {}
        }
    }
}

/// Host: writes new notifications to the spool folder every `SPOOL_EVERY`; a spool that cannot
/// be written is logged and tried again at the next pass (`spool`).
async fn notification_spool(replica: HostReplica, dir: std::path::PathBuf) {
    let mut every = tokio::time::interval(SPOOL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        every.tick().await;
        let (r, d) = (replica.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || {
            carnet_syncd::spool::spool_pass(r.oversight(), &d)
        })
        .await
        {
            Ok(Ok(written)) => {
                if written > 0 {
                    tracing::info!(written, "notifications spooled");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                // Once per outage, not every second.
                if !failing {
                    tracing::warn!(error = %e, "notification spool");
                }
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn announcement_timer(replica: HostReplica, live: Arc<net::Live>) {
    let mut every = tokio::time::interval(ANNOUNCEMENT_EVERY);
    loop {
        every.tick().await;
        let r = replica.clone();
        match tokio::task::spawn_blocking(move || r.oversight().run_announcement_timer()).await {
            Ok(Ok(pass)) if pass.told + pass.released > 0 => {
                tracing::info!(
                    told = pass.told,
                    released = pass.released,
                    "announcement timer"
                );
                live.changed();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "announcement timer"),
            _ => {}
        }
        // Dossiers fetched for an emergency leave their site's scope when their time is over.
        let r = replica.clone();
        match tokio::task::spawn_blocking(move || r.oversight().expire_emergency_access()).await {
            Ok(Ok(ended)) if ended > 0 => {
                tracing::info!(ended, "emergency access ended");
                live.changed();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "emergency access timer"),
            _ => {}
        }
    }
}

/// Creates the inbox folder if needed (the owner's only, like the data folder: documents
/// arrive there) and watches it.
fn watch_inbox(
    dir: &std::path::Path,
) -> std::io::Result<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    carnet_store::files::private_dir(dir)?;
    inbox::watch(dir).map_err(std::io::Error::other)
}

/// Says, once each, that the site's lease is ending, has ended, or was renewed after either
/// (`schedule::LeaseWatch`): in the log, for the site's IT staff.
fn watch_lease(replica: &Replica, watch: &mut LeaseWatch) {
    let Some(lease) = replica.config().lease_ms else {
        return;
    };
    let Ok((as_of, expired)) = replica.authority_freshness() else {
        return;
    };
    let now = replica.now();
    let ends_at = (as_of > 0).then(|| if expired { now } else { as_of + lease });
    match watch.observe(now, ends_at) {
        Some(LeaseEvent::Ending { left }) => tracing::warn!(
            left_h = left.as_secs() / 3600,
            "the lease ends soon: without news from the national host, normal reads will be refused (break-glass only); restore the link"
        ),
        Some(LeaseEvent::Ended) => tracing::error!(
            "the lease has ended: normal reads are refused, break-glass only (traced), until the national host is reached"
        ),
        Some(LeaseEvent::Renewed) => tracing::info!("the lease is renewed"),
        None => {}
    }
}

/// Site: tidies the inbox's `done/` at start and every `INBOX_TIDY_EVERY`, in the inbox in
/// force (SIGHUP may change it). Logs counts, never a file name.
async fn inbox_tidy(service: Arc<Service>) {
    let mut every = tokio::time::interval(INBOX_TIDY_EVERY);
    loop {
        every.tick().await;
        let dir = service.link.as_ref().and_then(|l| {
            l.lock()
                .ok()
                .and_then(|l| l.settings.as_ref().map(|c| c.inbox.clone()))
        });
        let Some(dir) = dir else {
            continue;
        };
        let r = service.replica.clone();
        match tokio::task::spawn_blocking(move || inbox::tidy(&r, &dir)).await {
            Ok(Ok(tidied)) if tidied != inbox::Tidied::default() => tracing::info!(
                finished = tidied.finished.len(),
                receipts_removed = tidied.receipts_removed,
                temporaries_removed = tidied.temporaries_removed,
                "inbox: done/ tidied"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "inbox: done/ not tidied"),
            _ => {}
        }
    }
}

/// One scan of the inbox, on the blocking side; what it stored starts a round. True when it
/// left pairs waiting (the replica's storage failed): the daemon scans again after the next
/// round.
async fn ingest(service: &Service, inbox_dir: &std::path::Path) -> bool {
    let (r, dir) = (service.replica.clone(), inbox_dir.to_path_buf());
    match tokio::task::spawn_blocking(move || inbox::process(&r, &dir)).await {
        Ok(Ok(report)) if report != inbox::InboxReport::default() => {
            tracing::info!(
                stored = report.stored.len(),
                duplicates = report.duplicates.len(),
                tidied = report.tidied.len(),
                rejected = report.rejected.len(),
                waiting = report.waiting.len(),
                "inbox"
            );
            // File names may name patients: only the reason is logged.
            for (_, why) in &report.waiting {
                tracing::warn!(error = %why, "inbox: a pair left in place, tried again after the next round");
            }
            if !report.stored.is_empty() {
                service.changed.notify_one();
            }
            !report.waiting.is_empty()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "inbox");
            false
        }
        _ => false,
    }
}

/// A little jitter from the clock's low bits (spreads reconnects; not for security).
fn rand_jitter() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
