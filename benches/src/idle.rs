//! `carnet-bench idle [--seconds N]`: what daemons with nothing to do cost (issue 19: a service
//! that runs for months on a clinic PC). A host and two enrolled sites run as real
//! `carnet-syncd` daemons (built next to this binary) on 127.0.0.1, in a temporary folder, with
//! the settings `carnet init` writes (a round every 10 s, an inbox each). Once both sites are
//! connected, nothing is asked of them for N seconds (60 by default); then each daemon's CPU
//! time in that window and its peak resident memory (`VmHWM`, since it started) are printed,
//! against the budget: at most 0.6 CPU-seconds per daemon per minute.
//!
//! What an idle daemon still does: QUIC keep-alives every 4 s from each site, a site's
//! round every `sync_every` seconds, the host's storage check every second.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use carnet_store::replica::{InitOptions, KeySource, Replica, Role, system_clock};
use carnet_syncd::api::{Request, Response, local::Client};
use carnet_syncd::config::{Config, ConfigRole, DEFAULT_SYNC_EVERY};

use crate::Res;
use crate::sync::Daemon;

/// Budget: CPU-seconds per daemon per minute of idling.
const BUDGET_PER_MINUTE: f64 = 0.6;

/// The daemon settings `carnet init` writes for `role`, the host at `address`.
pub(crate) fn settings(role: ConfigRole, address: SocketAddr) -> Config {
    Config {
        role,
        listen: (role == ConfigRole::Host).then_some(address),
        host_address: (role == ConfigRole::Site).then(|| address.into()),
        inbox: "inbox".into(),
        log_level: "info".into(),
        log_format: Default::default(),
        sync_every: DEFAULT_SYNC_EVERY,
        lease_hours: None,
        notification_spool: None,
        cache_mib: carnet_store::replica::DEFAULT_CACHE_MIB,
        http: None,
        host: None,
        peer_listen: None,
        discover: false,
        peers: Vec::new(),
    }
}

/// A site the host `host` (at `address`) enrols, created in `dir` from its bundle, with the
/// professional `pro` registered there and bound to it by the host: its id and replica.
pub(crate) fn enrolled_site(
    host: &Replica,
    dir: &Path,
    address: SocketAddr,
    pro: &carnet_store::model::Professional,
) -> Res<(u32, Replica)> {
    let bundle = carnet_syncd::enrol::enrol(host, "Bench", "750000001", &address.to_string())?;
    let id = carnet_store::ids::SiteId(bundle.site_id);
    crate::decides(host)?.bind_professional(id, &pro.rpps, true)?;
    let site = Replica::init(
        dir,
        InitOptions {
            role: Role::Site,
            name: "bench".into(),
            site_id: Some(id),
            key: KeySource::File,
            host_key: Some(bundle.host_key),
            lease_hours: None,
        },
        system_clock(),
    )?;
    carnet_syncd::enrol::install_site(&site, &bundle)?;
    site.add_professional(pro)?;
    Ok((bundle.site_id, site))
}

/// A host and two sites enrolled by it, each with one professional, the host with a dossier
/// granted to them (so it is in both sites' scopes).
fn network(dir: &Path) -> Res<[std::path::PathBuf; 3]> {
    let address: SocketAddr = format!("127.0.0.1:{}", crate::sync::free_port()?).parse()?;
    let folders = [dir.join("host"), dir.join("site-1"), dir.join("site-2")];
    let options = |role, site_id, host_key| InitOptions {
        role,
        name: "idle bench".into(),
        site_id,
        key: KeySource::File,
        host_key,
        lease_hours: None,
    };
    let host = Replica::init(&folders[0], options(Role::Host, None, None), system_clock())?;
    carnet_syncd::enrol::init_host(&host)?;
    let pro = crate::doctor_professional()?;
    host.add_professional(&pro)?;
    let ins = crate::create_dossier(&host)?;
    crate::decides(&host)?.set_grant(
        &ins,
        &pro.rpps,
        carnet_store::model::GrantState::Active,
        carnet_store::model::GrantBasis::Treating,
        None,
    )?;
    settings(ConfigRole::Host, address).write_new(&folders[0])?;
    for site_dir in &folders[1..] {
        enrolled_site(&host, site_dir, address, &pro)?;
        settings(ConfigRole::Site, address).write_new(site_dir)?;
    }
    Ok(folders)
}

/// Waits (at most 60 s) until the site's daemon says it is connected to the host.
fn wait_connected(site_dir: &Path) -> Res<()> {
    let client = Client::new(carnet_syncd::api::socket_path(site_dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Response::SyncStatus(status)) = client.call(Request::SyncStatus)
            && status.link.is_some_and(|l| l.connected)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} never connected to the host", site_dir.display()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run() -> Res<()> {
    let seconds = crate::count_option("--seconds", 60, "idle [--seconds N]")?;
    let tmp = crate::tmp::tempdir()?;
    let folders = network(tmp.path())?;
    println!(
        "carnet-bench idle — a host and two enrolled sites as carnet-syncd daemons on 127.0.0.1, \
         left alone for {seconds} s\n"
    );
    let started = Instant::now();
    let daemons = folders
        .iter()
        .map(|dir| Daemon::start(dir))
        .collect::<Res<Vec<_>>>()?;
    for site_dir in &folders[1..] {
        wait_connected(site_dir)?;
    }
    let settle = started.elapsed().as_secs_f64();
    let before: Vec<f64> = daemons.iter().map(Daemon::cpu_seconds).collect();
    let window = Instant::now();
    // The measured window: nothing is asked of the daemons.
    std::thread::sleep(Duration::from_secs(seconds));
    let minutes = window.elapsed().as_secs_f64() / 60.0;
    let budget = BUDGET_PER_MINUTE * minutes;
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>10}  budget ≤ {BUDGET_PER_MINUTE} CPU-s per minute",
        "daemon", "start-up CPU", "idle CPU", "per minute", "peak RSS"
    );
    let mut all_met = true;
    for ((name, daemon), before) in ["host", "site 1", "site 2"]
        .iter()
        .zip(&daemons)
        .zip(before)
    {
        let used = daemon.cpu_seconds() - before;
        let met = used <= budget;
        all_met &= met;
        println!(
            "{name:<8} {:>12.2} s {:>12.2} s {:>12.2} s {:>7.1} MiB  {}",
            before,
            used,
            used / minutes,
            daemon.peak_mib(),
            if met { "met" } else { "NOT MET" }
        );
    }
    println!(
        "\nstart-up until both sites were connected: {settle:.1} s (CPU from spawn); \
         window {:.1} s",
        minutes * 60.0
    );
    if !all_met {
        return Err("a daemon is above the idle budget".into());
    }
    Ok(())
}
