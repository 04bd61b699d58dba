//! Real daemons on 127.0.0.1: a host `carnet-syncd` serving, a site syncing with `carnet sync
//! now`; a revoked site refused. (`cargo build --workspace --bins` builds `carnet-syncd` beside `carnet`.)

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The daemon binary, built next to `carnet`.
pub fn syncd_bin() -> std::path::PathBuf {
    let p = std::path::Path::new(bin()).with_file_name("carnet-syncd");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (README)",
        p.display()
    );
    p
}

/// A free UDP port on 127.0.0.1.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Stops the daemon when the test ends, whatever happens.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `carnet-syncd` on a replica (stopped when the returned value is dropped).
pub fn start_daemon(replica: &Carnet) -> Daemon {
    spawn_daemon(replica, Stdio::null())
}

/// `start_daemon`, with what it logs (stderr) written to `log`.
pub fn start_daemon_logging(replica: &Carnet, log: &std::path::Path) -> Daemon {
    spawn_daemon(
        replica,
        std::fs::File::create(log).expect("log file").into(),
    )
}

fn spawn_daemon(replica: &Carnet, stderr: Stdio) -> Daemon {
    let child = Command::new(syncd_bin())
        .arg("--data")
        .arg(&replica.data)
        .env_remove("CARNET_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("carnet-syncd starts");
    Daemon(child)
}

/// The warnings in the log at `log` that say `what`, waiting (bounded) for `at_least` of them.
fn warnings(log: &std::path::Path, what: &str, at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found: Vec<String> = text
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .map(str::to_string)
            .collect();
        if found.len() >= at_least || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_security_refusal_is_logged_at_the_host_and_explained_to_the_site_with_what_to_do() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    // Site 1, revoked; site 2, in good standing; a site of another national CA, told this
    // host's address.
    let (revoked, _) = enrolled_site_and_bundle(&host, &address, &[]);
    host.ok(&["pki", "revoke", "1"]);
    let (honest, honest_bundle) = enrolled_site_and_bundle(&host, &address, &[]);
    let other = Carnet::empty();
    other.ok(&[
        "init",
        "--role",
        "host",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    other.ok(&["pki", "init", "--ca-in-replica"]);
    let (foreign, _) = enrolled_site_and_bundle(&other, &address, &[]);
    let log = host.path("syncd.log");
    let _daemon = start_daemon_logging(&host, &log);
    sync_until_ok(&honest, Duration::from_secs(20));

    let o = revoked.run(&["sync", "now"]);
    assert_ne!(o.code, 0, "a revoked site synced");
    assert!(o.stderr.contains("revoked"), "{}", o.stderr);
    assert!(o.stderr.contains("enrol"), "{}", o.stderr);
    assert!(!warnings(&log, "certificate refused", 1).is_empty());

    let o = foreign.run(&["sync", "now"]);
    assert_ne!(o.code, 0, "a site of another CA synced");
    assert!(o.stderr.contains("national CA"), "{}", o.stderr);
    assert!(o.stderr.contains("enrol"), "{}", o.stderr);
    assert!(
        warnings(&log, "certificate refused", 2).len() >= 2,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // A Hello that claims another site's id, with this site's valid certificate.
    let rogue = crate::rogue::Rogue::connect(&honest_bundle);
    let mut hello = rogue.hello(0, 0);
    if let carnet_syncd::session::Msg::Hello { site, .. } = &mut hello {
        *site = 1;
    }
    let replies = rogue.session(vec![hello]);
    assert!(
        replies.iter().any(
            |m| matches!(m, carnet_syncd::session::Msg::Error(e) if e.contains("claims site 1"))
        ),
        "{replies:?}"
    );
    assert!(!warnings(&log, "claims site 1", 1).is_empty());
}

#[test]
fn an_enrolled_site_syncs_with_a_host_daemon_and_a_revoked_one_is_refused() {
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let body = host.write("report.txt", b"written at the host (synthetic)");
    let id = host
        .ok(&[
            "doc",
            "add",
            "--dossier",
            &ins,
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            "11488-4",
            "--title",
            "CR",
            "--format",
            "text/plain",
            &body,
        ])
        .stdout
        .trim()
        .to_string();
    // Site 1 is enrolled then revoked (before the daemon starts: once it runs it owns the
    // replica); site 2 is enrolled.
    let enrol = |name: &str, out: &str| {
        host.ok(&[
            "pki",
            "enrol",
            "--name",
            name,
            "--finess",
            "750000001",
            "--host-address",
            &address,
            "-o",
            out,
            "--pro",
            DOCTOR,
        ]);
    };
    let revoked_bundle = host.path("revoked.bundle").display().to_string();
    enrol("Ancienne", &revoked_bundle);
    host.ok(&["pki", "revoke", "1"]);
    let bundle = host.path("site.bundle").display().to_string();
    enrol("Clinique", &bundle);
    let revoked_site = Carnet::empty();
    revoked_site.ok(&["init", "--role", "site", "--enrol", &revoked_bundle]);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    site.ok(&["pro", "add", "--rpps", DOCTOR, "--profession", "medecin"]);

    let _daemon = start_daemon(&host);
    // The daemon needs a moment to bind; retry the round for a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let synced = loop {
        let o = site.run(&["--json", "sync", "now"]);
        if o.code == 0 {
            break o.json();
        }
        assert!(
            Instant::now() < deadline,
            "no sync in time (is carnet-syncd up to date? `cargo build --workspace --bins`): {}",
            o.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(synced["bodies"], 1, "{synced}");
    let got = site.ok(&["doc", "get", &id, "--as", DOCTOR]);
    assert_eq!(got.raw, b"written at the host (synthetic)");
    let status = site.json(&["sync", "status"]);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["lease_expired"], false);

    // The revoked site is refused by the running host.
    let refused = revoked_site.run(&["sync", "now"]);
    assert_ne!(refused.code, 0, "a revoked site synced");
}

/// A host made with `--storage postgres://…` keeps its tables in PostgreSQL, not in its folder;
/// `carnet` (alone and through the daemon) and `carnet-syncd` find them through carnet.toml,
/// and a site enrolled there syncs both ways through the host daemon. Restarted, the daemon
/// serves what it stored. A site's init refuses the option.
#[test]
fn a_host_daemon_on_postgres_serves_a_site() {
    let url = carnet_testpg::database();
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    let made = host.ok(&[
        "init",
        "--role",
        "host",
        "--listen",
        &address,
        "--storage",
        &url,
    ]);
    assert!(
        !made.stdout.contains(&url) && !made.stderr.contains(&url),
        "the address is not said"
    );
    assert!(!host.db_path().exists(), "no carnet.redb beside PostgreSQL");
    let toml = std::fs::read_to_string(host.path("data/carnet.toml")).expect("carnet.toml");
    assert!(toml.contains("[host]") && toml.contains(&url), "{toml}");
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let id = host.add_doc(
        &ins,
        DOCTOR,
        "10",
        "11488-4",
        "CR",
        b"written at the host (synthetic)",
    );
    let site = enrolled_site(&host, &address, &[DOCTOR]);
    site.ok(&["pro", "add", "--rpps", DOCTOR, "--profession", "medecin"]);
    let mut daemon = start_daemon(&host);
    let synced = sync_until_ok(&site, Duration::from_secs(30));
    assert_eq!(synced["bodies"], 1, "{synced}");
    assert_eq!(
        site.ok(&["doc", "get", &id, "--as", DOCTOR]).raw,
        b"written at the host (synthetic)"
    );
    // The site writes; the host daemon stores it in PostgreSQL.
    let from_site = site.add_doc(
        &ins,
        DOCTOR,
        "10",
        "11488-4",
        "Note",
        b"written at the site (synthetic)",
    );
    sync_until_ok(&site, Duration::from_secs(30));
    assert_eq!(stop(&mut daemon), Some(0), "a clean stop");
    assert!(!host.db_path().exists(), "still no carnet.redb");
    // Without the daemon, carnet opens the host's tables in PostgreSQL itself.
    assert_eq!(
        host.ok(&["doc", "get", &from_site, "--as", DOCTOR]).raw,
        b"written at the site (synthetic)"
    );
    // Restarted, the daemon serves it again.
    let _daemon = start_daemon(&host);
    wait_for_socket(&host);
    assert_eq!(
        host.ok(&["doc", "get", &from_site, "--as", DOCTOR]).raw,
        b"written at the site (synthetic)"
    );
    let other = Carnet::empty();
    let refused = other.fails(
        2,
        &[
            "init",
            "--role",
            "site",
            "--site-id",
            "9",
            "--storage",
            &url,
        ],
    );
    assert!(
        refused.stderr.contains("for the host"),
        "{}",
        refused.stderr
    );
}

/// Enrols a site at `host` (through its daemon if one runs), with `pros` (registered at the
/// host) bound to it, and creates it from the bundle.
pub fn enrolled_site(host: &Carnet, address: &str, pros: &[&str]) -> Carnet {
    enrolled_site_and_bundle(host, address, pros).0
}

/// `enrolled_site`, answering the bundle's path as well (it holds the site's certificate).
pub fn enrolled_site_and_bundle(
    host: &Carnet,
    address: &str,
    pros: &[&str],
) -> (Carnet, std::path::PathBuf) {
    let path = host.path(&format!("site-{}.bundle", unique()));
    let bundle = path.display().to_string();
    let mut args = vec![
        "pki",
        "enrol",
        "--name",
        "Clinique",
        "--finess",
        "750000001",
        "--host-address",
        address,
        "-o",
        &bundle,
    ];
    for p in pros {
        args.extend(["--pro", p]);
    }
    host.ok(&args);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    (site, path)
}

/// A host on 127.0.0.1 (not started) with `DOCTOR` treating the dossier of `ins_a()`, and two
/// sites enrolled with `DOCTOR` bound and registered. Answers (host, INS, sites).
pub fn host_and_two_sites() -> (Carnet, String, [Carnet; 2]) {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let sites = [
        enrolled_site(&host, &address, &[DOCTOR]),
        enrolled_site(&host, &address, &[DOCTOR]),
    ];
    for s in &sites {
        s.pro(DOCTOR, "medecin");
    }
    (host, ins, sites)
}

/// `sync now` until it succeeds (the host daemon may still be binding), bounded.
pub fn sync_until_ok(site: &Carnet, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let o = site.run(&["--json", "sync", "now"]);
        if o.code == 0 {
            return o.json();
        }
        assert!(Instant::now() < deadline, "no sync: {}", o.stderr);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM and waits (bounded) for the daemon to exit; answers its exit code.
pub fn stop(daemon: &mut Daemon) -> Option<i32> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.0.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Waits (bounded) until the daemon answers on its socket.
pub fn wait_for_socket(replica: &Carnet) {
    let socket = replica.data.join("carnet.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon never opened {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn while_the_daemon_runs_carnet_works_through_its_socket() {
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let mut daemon = start_daemon(&host);
    wait_for_socket(&host);
    let socket = host.data.join("carnet.sock");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the socket is open to others");
    }

    // Every kind of command, while the daemon holds the store.
    let ins = host.doctor_dossier();
    let id = host.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"through the daemon (synthetic)",
    );
    assert_eq!(host.body(&id, DOCTOR), b"through the daemon (synthetic)");
    let listed = host.json(&["doc", "list", "--dossier", &ins, "--as", DOCTOR]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // Errors keep their exit codes: denied (3), not found (4).
    host.fails(3, &["doc", "get", &id, "--as", STRANGER]);
    host.fails(4, &["dossier", "show", &ins_b()]);
    host.ok(&["keys", "rotate"]);
    assert_eq!(host.body(&id, DOCTOR), b"through the daemon (synthetic)");
    let site = enrolled_site(&host, &address, &[]);
    site.ok(&["sync", "now"]);
    // A revocation through the running daemon is refused from the next connection.
    host.ok(&["pki", "revoke", "1"]);
    let sites = host.json(&["pki", "list"]);
    assert_eq!(sites[0]["revoked"], true, "{sites}");
    let refused = site.run(&["sync", "now"]);
    assert_ne!(
        refused.code, 0,
        "a site revoked through the daemon still synced"
    );

    // SIGTERM: a clean stop that takes the socket away; carnet then opens the store itself
    // (with the rotated key) and finds everything done through the daemon, traced.
    assert_eq!(
        stop(&mut daemon),
        Some(0),
        "the daemon did not stop cleanly"
    );
    assert!(!socket.exists(), "the socket outlived the daemon");
    assert_eq!(host.body(&id, DOCTOR), b"through the daemon (synthetic)");
    host.ok(&["audit", "verify"]);
    let reads = host
        .audit(&ins)
        .into_iter()
        .filter(|e| e["action"] == "read")
        .count();
    assert_eq!(
        reads, 5,
        "three allowed reads, one denied, one after the stop"
    );
}

#[test]
fn a_site_daemon_reports_its_link_in_sync_status() {
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let site = enrolled_site(&host, &address, &[]);
    // Without a daemon, status says so.
    assert!(site.json(&["sync", "status"])["link"].is_null());
    let _host_daemon = start_daemon(&host);
    let mut site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    // `sync now` through the site's daemon runs a round there and reports it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = site.run(&["--json", "sync", "now"]);
        if o.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no round through the daemon: {}",
            o.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = site.json(&["sync", "status"]);
    assert_eq!(status["link"]["connected"], true, "{status}");
    assert!(status["link"]["last_sync"].is_string(), "{status}");
    assert_eq!(status["pending_traces"], 0, "{status}");
    assert_eq!(status["cursor_lag"], 0, "{status}");
    // A change waiting for the next round is counted by kind (the daemon stopped first: a
    // running one pushes it at once).
    assert_eq!(stop(&mut site_daemon), Some(0));
    site.pro(NURSE, "infirmier");
    let status = site.json(&["sync", "status"]);
    assert_eq!(status["pending_by_kind"]["professional"], 1, "{status}");
}

/// CPU time (user + system) process `pid` used so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name ends at the last ')'; utime and stime are the 12th and 13th fields
    // after it, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).expect("stat fields");
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse::<u64>().expect("ticks"))
        .sum();
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Issue 19: an idle site daemon used 85–92 % of a core, its inbox scan's own access to the
/// folder starting the next scan. Once a host and a site daemon are up and synced, each uses
/// a small share of a core over a few seconds of wall time: keep-alives and a round every
/// `sync_every` seconds. The limit is far above that and far below a loop (which still gets
/// most of a core when both cores are busy).
#[test]
fn idle_host_and_site_daemons_use_almost_no_cpu() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let site = enrolled_site(&host, &address, &[]);
    let host_daemon = start_daemon(&host);
    let site_daemon = start_daemon(&site);
    wait_for_socket(&host);
    wait_for_socket(&site);
    // Settled: a round through the site's daemon succeeded and its status answers.
    sync_until_ok(&site, Duration::from_secs(20));
    assert_eq!(site.json(&["sync", "status"])["link"]["connected"], true);
    let daemons = [("host", &host_daemon), ("site", &site_daemon)];
    let before: Vec<Duration> = daemons.iter().map(|(_, d)| cpu_time(d.0.id())).collect();
    let start = Instant::now();
    // The measured window (nothing is awaited: the daemons are left alone).
    std::thread::sleep(Duration::from_secs(3));
    let wall = start.elapsed();
    let used: Vec<(&str, Duration)> = daemons
        .iter()
        .zip(before)
        .map(|((name, daemon), before)| (*name, cpu_time(daemon.0.id()) - before))
        .collect();
    let share = |used: &Duration| used.as_secs_f64() / wall.as_secs_f64();
    let report: Vec<String> = used
        .iter()
        .map(|(name, used)| format!("{name}: {:.1} % of a core ({used:?})", share(used) * 100.0))
        .collect();
    assert!(
        used.iter().all(|(_, used)| share(used) < 0.10),
        "idle daemons over {wall:?}: {}",
        report.join(", ")
    );
}

#[test]
fn the_demo_runs_host_and_two_site_daemons_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = run_raw(&[("TMPDIR", &tmp.path().display().to_string())], &["demo"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for expected in [
        "carnet-syncd --data clinic &",
        "The prescription is gone from the pharmacy",
        "no document",
        "bris_de_glace ALLOW",
        "dossier-proposal-merged",
        "(decided offline)",
        "carnet.toml: peer_listen = \"127.0.0.1:",
        "handed over to clinique",
        "access denied (rule 11): no grant for this dossier",
        "pending grant of 10000000003",
        "handover-received",
        "The host holds the unit's report once",
        "searched every file of the four replicas",
        "none found",
        "daemons stopped and temporary data removed",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing '{expected}':\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.lines().any(|l| l.contains("handover-received")
            && l.contains("from site")
            && l.contains("reason:")),
        "the clinic's trace does not show who handed over, from where, why:\n{}",
        out.stdout
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

/// `carnet` answers the same whether it opens the store or calls the daemon: a host out of
/// reach fails with the same exit code and the same error kind, and a body of 100 MiB goes in
/// and comes back whole.
#[test]
fn carnet_answers_the_same_with_or_without_its_daemon() {
    use serde_json::Value;
    let host = Carnet::empty();
    let address = format!("127.0.0.1:{}", free_port());
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    // The host daemon is not started yet: nothing listens at its address.
    let site = enrolled_site(&host, &address, &[]);
    let alone = site.run(&["--json", "sync", "now"]);
    assert_ne!(alone.code, 0, "a sync with no host succeeded");
    let mut site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    let through = site.run(&["--json", "sync", "now"]);
    assert_eq!(
        through.code, alone.code,
        "alone: {}\nthrough the daemon: {}",
        alone.stderr, through.stderr
    );
    let kind = |o: &Output| -> Value {
        serde_json::from_str::<Value>(o.stderr.trim())
            .or_else(|_| serde_json::from_str::<Value>(o.stdout.trim()))
            .map(|v| v["error"]["kind"].clone())
            .unwrap_or(Value::Null)
    };
    assert_ne!(kind(&alone), Value::Null, "{}", alone.stderr);
    assert_eq!(
        kind(&through),
        kind(&alone),
        "{}\n{}",
        alone.stderr,
        through.stderr
    );
    assert_eq!(stop(&mut site_daemon), Some(0));

    let big: Vec<u8> = (0..(100u32 << 20) + 1).map(|i| (i % 253) as u8).collect();
    let digest = |bytes: &[u8]| blake3::hash(bytes).to_hex().to_string();
    let mut host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let id = host.add_doc(&ins, DOCTOR, "10", CONSULTATION, "Imagerie", &big);
    assert_eq!(digest(&host.body(&id, DOCTOR)), digest(&big));
    let listed = host.json(&["doc", "list", "--dossier", &ins, "--as", DOCTOR]);
    assert_eq!(listed[0]["size"], big.len(), "{listed}");
    assert_eq!(stop(&mut host_daemon), Some(0));
    // The body stored through the daemon reads the same without it.
    assert_eq!(digest(&host.body(&id, DOCTOR)), digest(&big));
}
