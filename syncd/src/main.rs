//! `carnet-syncd`: the sync daemon. `carnet-syncd --data DIR [--config FILE]`.
//!
//! The host serves sync sessions on its `listen` address; a site ingests its inbox and runs a
//! sync round with the host every `ROUND_EVERY`, backing off with jitter while the host is out
//! of reach. SIGTERM or Ctrl-C ends it after the round or transaction in flight. Logs name
//! sites, counts and errors, never patient data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use carnet_store::replica::{KeySource, Replica, system_clock};
use carnet_syncd::config::{CONFIG_FILE, Config, ConfigRole};
use carnet_syncd::{enrol, inbox, net, transport};

/// Pause between rounds while the link is up.
const ROUND_EVERY: Duration = Duration::from_secs(10);
/// Longest pause between attempts while the host is out of reach.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

fn log(line: &str) {
    eprintln!("carnet-syncd: {line}");
}

struct Args {
    data: PathBuf,
    config: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut data = std::env::var_os("CARNET_DATA").map(PathBuf::from);
    let mut config = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = it.next().map(PathBuf::from),
            "--config" => config = it.next().map(PathBuf::from),
            "-h" | "--help" => {
                return Err("usage: carnet-syncd --data DIR [--config FILE]".into());
            }
            other => {
                return Err(format!(
                    "unknown argument '{other}': carnet-syncd --data DIR [--config FILE]"
                ));
            }
        }
    }
    let data = data.ok_or("no data folder: pass --data DIR or set CARNET_DATA")?;
    Ok(Args { data, config })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            log(&e);
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(&args.config.unwrap_or_else(|| args.data.join(CONFIG_FILE)))?;
    let key = match std::env::var("CARNET_PASSPHRASE") {
        Ok(p) if !p.is_empty() => KeySource::Passphrase(zeroize::Zeroizing::new(p)),
        _ => KeySource::File,
    };
    let replica = Arc::new(Replica::open(&args.data, &key, system_clock())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match config.role {
            ConfigRole::Host => host(replica, &config).await,
            ConfigRole::Site => site(replica, &config, &args.data).await,
        }
    })
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn host(replica: Arc<Replica>, config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let listen = config.listen.ok_or("carnet.toml: a host needs `listen`")?;
    let (ca, identity) = enrol::host_identity(&replica)?;
    let revoked = Arc::new(enrol::revoked(&replica)?);
    let endpoint =
        quinn::Endpoint::server(transport::server_config(&ca, &identity, revoked)?, listen)?;
    log(&format!("host serving on {}", endpoint.local_addr()?));
    let server = tokio::spawn(net::serve(endpoint.clone(), replica));
    stop_signal().await;
    log("stopping");
    endpoint.close(0u32.into(), b"host stopping");
    endpoint.wait_idle().await;
    server.abort();
    Ok(())
}

async fn site(
    replica: Arc<Replica>,
    config: &Config,
    data: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let inbox_dir = config.inbox_dir(data);
    std::fs::create_dir_all(&inbox_dir)?;
    log(&format!(
        "site {} syncing with {:?}",
        replica.config().site_id,
        config.host_address
    ));
    let mut backoff = Duration::from_secs(1);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let r = replica.clone();
        let dir = inbox_dir.clone();
        match tokio::task::spawn_blocking(move || inbox::process(&r, &dir)).await {
            Ok(Ok(report)) if report != inbox::InboxReport::default() => log(&format!(
                "inbox: {} stored, {} already stored, {} rejected",
                report.stored.len(),
                report.duplicates.len(),
                report.rejected.len()
            )),
            Ok(Err(e)) => log(&format!("inbox: {e}")),
            _ => {}
        }
        let pause = match net::sync_round(replica.clone()).await {
            Ok(report) => {
                if report.pulled > 1 || report.bodies > 0 || report.purged > 0 {
                    log(&format!(
                        "synced: {} item(s) pulled, {} body(ies), {} purged",
                        report.pulled, report.bodies, report.purged
                    ));
                }
                backoff = Duration::from_secs(1);
                ROUND_EVERY
            }
            Err(e) => {
                log(&format!(
                    "sync failed, retrying in about {}s: {e}",
                    backoff.as_secs()
                ));
                let jitter = Duration::from_millis(u64::from(rand_jitter()) % 1000);
                let wait = backoff + jitter;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        tokio::select! {
            _ = &mut stop => {
                log("stopping");
                return Ok(());
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// A little jitter from the clock's low bits (spreads reconnects; not for security).
fn rand_jitter() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
