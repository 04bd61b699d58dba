//! `carnet-syncd` as a service (issue 19 §1): its command line, systemd's notify protocol and
//! watchdog, SIGHUP reloading `carnet.toml`, JSON logs and the host's per-site events. Real
//! daemons on 127.0.0.1, every wait bounded.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{
    Daemon, enrolled_site, free_port, stop, sync_until_ok, syncd_bin, wait_for_socket,
};
use crate::support::*;

/// Starts `carnet-syncd` on a replica with `env` added and its stderr to `stderr` (stopped
/// when dropped).
fn spawn_daemon(replica: &Carnet, env: &[(&str, &str)], stderr: Stdio) -> Daemon {
    let child = Command::new(syncd_bin())
        .arg("--data")
        .arg(&replica.data)
        .env_remove("CARNET_PASSPHRASE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("carnet-syncd starts");
    Daemon(child)
}

/// Starts `carnet-syncd` on a replica with `env` added, its stderr discarded.
fn start_daemon_with(replica: &Carnet, env: &[(&str, &str)]) -> Daemon {
    spawn_daemon(replica, env, Stdio::null())
}

/// `--version` and `--help` answer on stdout with status 0 (they were "unknown argument", 2):
/// the version names the commit the binary was built from.
#[test]
fn syncd_answers_version_and_help() {
    let run = |args: &[&str]| {
        let out = Command::new(syncd_bin())
            .args(args)
            .env_remove("CARNET_DATA")
            .output()
            .expect("carnet-syncd runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for flag in ["--version", "-V"] {
        let (code, stdout, stderr) = run(&[flag]);
        assert_eq!(code, Some(0), "{flag}: {stderr}");
        let line = stdout.trim();
        let prefix = format!("carnet-syncd {} (commit ", env!("CARGO_PKG_VERSION"));
        let commit = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{flag}: '{line}'"));
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{flag}: commit '{commit}'"
        );
    }
    for flag in ["--help", "-h"] {
        let (code, stdout, stderr) = run(&[flag]);
        assert_eq!(code, Some(0), "{flag}: {stderr}");
        for expected in [
            "usage: carnet-syncd --data DIR",
            "--config FILE",
            "--version",
            "(commit ",
        ] {
            assert!(
                stdout.contains(expected),
                "{flag}: no '{expected}' in\n{stdout}"
            );
        }
    }
    // Mistakes stay usage errors (2), said on stderr.
    let (code, _, stderr) = run(&["--verbose"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown argument '--verbose'"), "{stderr}");
    let (code, _, stderr) = run(&["--data"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--data needs a value"), "{stderr}");
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no data folder"), "{stderr}");
}

/// Datagrams a daemon sends to the `NOTIFY_SOCKET` a test bound, each as its lines.
struct Notifications {
    socket: UnixDatagram,
    path: String,
}

impl Notifications {
    fn bind(replica: &Carnet) -> Notifications {
        let path = replica.path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Notifications {
            socket,
            path: path.display().to_string(),
        }
    }

    /// The next datagram, within `within`.
    fn next(&self, what: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 1024];
        loop {
            assert!(Instant::now() < deadline, "no {what} in {within:?}");
            if let Ok(n) = self.socket.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string)
                    .collect();
            }
        }
    }
}

/// Under systemd (`Type=notify`): `READY=1` once the daemon serves (its socket answers then),
/// `WATCHDOG=1` at half of `WATCHDOG_USEC`, and `STOPPING=1` at SIGTERM, on the datagram
/// socket `NOTIFY_SOCKET` names — for a host and for a site.
#[test]
fn syncd_speaks_systemds_notify_protocol_and_feeds_the_watchdog() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let site = enrolled_site(&host, &address, &[]);
    let mut running = Vec::new();
    for replica in [&host, &site] {
        let notify = Notifications::bind(replica);
        let daemon = start_daemon_with(
            replica,
            &[("NOTIFY_SOCKET", &notify.path), ("WATCHDOG_USEC", "200000")],
        );
        let ready = notify.next("READY=1", Duration::from_secs(20));
        assert_eq!(ready[0], "READY=1", "{ready:?}");
        assert!(ready.iter().any(|l| l.starts_with("STATUS=")), "{ready:?}");
        // Ready means serving: the local socket answers at once.
        assert!(
            std::os::unix::net::UnixStream::connect(replica.data.join("carnet.sock")).is_ok(),
            "READY=1 before the socket"
        );
        // Pings every 100 ms: two in a row, well inside a few seconds even on busy cores.
        for _ in 0..2 {
            assert_eq!(
                notify.next("WATCHDOG=1", Duration::from_secs(5)),
                ["WATCHDOG=1"]
            );
        }
        running.push((daemon, notify));
    }
    // The site, then the host.
    while let Some((mut daemon, notify)) = running.pop() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(daemon.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let lines = notify.next("STOPPING=1", Duration::from_secs(15));
            if lines.iter().any(|l| l == "STOPPING=1") {
                break;
            }
            assert_eq!(lines, ["WATCHDOG=1"], "only pings before STOPPING=1");
            assert!(Instant::now() < deadline, "no STOPPING=1");
        }
        assert_eq!(stop(&mut daemon), Some(0), "a clean stop");
    }
}

/// Starts `carnet-syncd` on a replica with its stderr in `DATA/../NAME.log` (outside the data
/// folder: the daemon owns that one); answers the daemon and the log's path.
pub(crate) fn start_logged(replica: &Carnet, env: &[(&str, &str)]) -> (Daemon, std::path::PathBuf) {
    let log = replica.path(&format!("syncd-{}.log", unique()));
    let file = std::fs::File::create(&log).expect("log file");
    (spawn_daemon(replica, env, Stdio::from(file)), log)
}

/// Waits (bounded) until `check` holds for the log's lines; answers them.
pub(crate) fn wait_for_log(
    log: &std::path::Path,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines: Vec<String> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if check(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "the log never showed {what}:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the site daemon's `sync status` satisfies `check`; answers it.
pub(crate) fn wait_for_status(
    site: &Carnet,
    within: Duration,
    what: &str,
    mut check: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = site.json(&["sync", "status"]);
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never {what}: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(daemon: &Daemon, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(daemon.0.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{name}");
}

/// SIGHUP reloads `carnet.toml` — the log level, the interval between rounds, the inbox —
/// while the site stays connected to the host (the daemon opened one connection, and it holds);
/// a bad file is refused with a warning and the settings in force stay.
#[test]
fn sighup_reloads_the_settings_and_the_connection_holds() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let site = enrolled_site(&host, &address, &[]);
    let (_host_daemon, host_log) = start_logged(&host, &[]);
    let (mut site_daemon, log) = start_logged(&site, &[]);
    wait_for_socket(&site);
    sync_until_ok(&site, Duration::from_secs(20));
    let connected =
        |s: &serde_json::Value| s["link"]["connected"] == true && s["link"]["connections"] == 1;
    let status = wait_for_status(&site, Duration::from_secs(20), "connected", connected);
    let settings = &status["link"]["settings"];
    assert_eq!(settings["sync_every"], 10, "{status}");
    assert_eq!(settings["log_level"], "info", "{status}");
    let inbox = site.data.join("inbox").display().to_string();
    assert_eq!(settings["inbox"], inbox.as_str(), "{status}");

    // A round every second, debug logs, another inbox.
    let toml = site.data.join("carnet.toml");
    let text = std::fs::read_to_string(&toml).expect("carnet.toml");
    let edited = text
        .replace("sync_every = 10", "sync_every = 1")
        .replace("log_level = \"info\"", "log_level = \"debug\"")
        .replace("inbox = \"inbox\"", "inbox = \"arrivals\"");
    assert_ne!(edited, text, "carnet.toml as `carnet init` writes it");
    std::fs::write(&toml, &edited).expect("edit carnet.toml");
    signal(&site_daemon, "HUP");
    let status = wait_for_status(&site, Duration::from_secs(20), "the new settings", |s| {
        s["link"]["settings"]["sync_every"] == 1
    });
    let settings = &status["link"]["settings"];
    assert_eq!(settings["log_level"], "debug", "{status}");
    let arrivals = site.data.join("arrivals");
    assert_eq!(
        settings["inbox"],
        arrivals.display().to_string().as_str(),
        "{status}"
    );
    wait_for_log(&log, "the reload", |lines| {
        lines
            .iter()
            .any(|l| l.contains("carnet.toml reloaded") && l.contains("sync_every=1"))
    });
    // The new interval is kept at once (it was 10 s): two more rounds within 8 s.
    let mut seen = vec![status["link"]["last_sync"].clone()];
    wait_for_status(
        &site,
        Duration::from_secs(8),
        "two rounds at the new interval",
        |s| {
            let last = &s["link"]["last_sync"];
            if !seen.contains(last) {
                seen.push(last.clone());
            }
            seen.len() >= 3
        },
    );
    // The new inbox is watched: a pair dropped there is handled (here refused, with its
    // reason).
    std::fs::write(arrivals.join("note.txt"), b"synthetic").expect("document");
    std::fs::write(arrivals.join("note.txt.carnet.json"), b"not json").expect("sidecar");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !arrivals.join("rejected/note.txt.error.txt").exists() {
        assert!(Instant::now() < deadline, "the new inbox is not watched");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A bad file: refused, with a warning; the settings in force stay.
    std::fs::write(&toml, edited.replace("sync_every = 1", "sync_every = 0")).expect("edit");
    signal(&site_daemon, "HUP");
    wait_for_log(&log, "the refusal", |lines| {
        lines.iter().any(|l| {
            l.contains("WARN") && l.contains("carnet.toml refused") && l.contains("sync_every 0")
        })
    });
    let status = site.json(&["sync", "status"]);
    assert_eq!(status["link"]["settings"]["sync_every"], 1, "{status}");
    assert_eq!(status["link"]["settings"]["log_level"], "debug", "{status}");

    // All along, the one connection held: no reconnection, and the host saw none.
    let status = wait_for_status(&site, Duration::from_secs(20), "connected", connected);
    assert_eq!(status["link"]["connections"], 1, "{status}");
    let host_lines = std::fs::read_to_string(&host_log).expect("host log");
    assert_eq!(
        host_lines.matches("site connected").count(),
        1,
        "{host_lines}"
    );
    assert!(!host_lines.contains("site disconnected"), "{host_lines}");
    assert_eq!(
        stop(&mut site_daemon),
        Some(0),
        "SIGHUP did not end the daemon"
    );
}

/// `log_format = "json"`: every line the host writes is a JSON object, and the host logs each
/// site's connection, round (site id, counts, bytes, duration) and disconnection, and the
/// certificate it refuses — ids and counts, never patient data.
#[test]
fn the_host_logs_each_sites_connection_and_round_as_json() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let toml = host.data.join("carnet.toml");
    let text = std::fs::read_to_string(&toml).expect("carnet.toml");
    assert!(text.contains("log_format = \"text\""), "{text}");
    std::fs::write(
        &toml,
        text.replace("log_format = \"text\"", "log_format = \"json\""),
    )
    .expect("edit");
    let site = enrolled_site(&host, &address, &[DOCTOR]);
    let revoked = enrolled_site(&host, &address, &[]);
    host.ok(&["pki", "revoke", "2"]);
    let (_host_daemon, log) = start_logged(&host, &[]);
    // One round without a daemon at the site: a connection, a round, a disconnection.
    let synced = sync_until_ok(&site, Duration::from_secs(20));
    assert!(synced["pulled"].as_u64() > Some(0), "{synced}");
    let refused = revoked.run(&["sync", "now"]);
    assert_ne!(refused.code, 0, "a revoked site synced");

    let events = |lines: &[String]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let has = |lines: &[String], message: &str, site: Option<u64>| {
        events(lines)
            .iter()
            .any(|e| e["message"] == message && site.is_none_or(|s| e["site"].as_u64() == Some(s)))
    };
    let lines = wait_for_log(
        &log,
        "connect, round, disconnect and the refusal",
        |lines| {
            has(lines, "site connected", Some(1))
                && has(lines, "round", Some(1))
                && has(lines, "site disconnected", Some(1))
                && events(lines).iter().any(|e| e["level"] == "WARN")
        },
    );
    let events = events(&lines);
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
    }
    let round = events
        .iter()
        .find(|e| e["message"] == "round" && e["site"] == 1)
        .expect("a round");
    assert_eq!(round["level"], "INFO", "{round}");
    assert!(round["items_pulled"].as_u64() > Some(0), "{round}");
    assert!(round["bytes_received"].as_u64() > Some(0), "{round}");
    assert!(round["bytes_sent"].as_u64() > Some(0), "{round}");
    assert!(round["duration_ms"].is_u64(), "{round}");
    let connected = events
        .iter()
        .find(|e| e["message"] == "site connected")
        .expect("connected");
    assert!(
        connected["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{connected}"
    );
    let refusal = events
        .iter()
        .find(|e| e["level"] == "WARN")
        .expect("the refusal");
    assert_eq!(refusal["message"], "certificate refused", "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Revoked")),
        "{refusal}"
    );
    // Ids and counts only: no INS, name or title of the dossier.
    let all = lines.join("\n");
    for secret in [ins.as_str(), "EXEMPLE", "Camille"] {
        assert!(!all.contains(secret), "'{secret}' in the host's log");
    }
}

/// A daemon killed (no clean close) with trace entries in its journal only, whose journal is
/// then zeroed: with a high-water mark outside the folder, which the running daemon kept up
/// with its trace head, the replica is refused (exit 5) instead of opening without them.
#[test]
fn a_trace_journal_zeroed_after_a_kill_is_refused_with_a_high_water_mark() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    host.standard_pros();
    let ins = ins_a();
    host.dossier(&ins, "DUPONT", "Camille Marie");
    host.standard_grants(&ins);
    let id = host.add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", CONSULT_BODY);
    let mark = host.path("carnet.mark");
    let mark_arg = mark.display().to_string();
    let hw = [("CARNET_HIGH_WATER", mark_arg.as_str())];
    let daemon = start_daemon_with(&host, &hw);
    wait_for_socket(&host);
    let modified = || std::fs::metadata(&mark).and_then(|m| m.modified()).ok();
    let at_start = modified();
    assert!(at_start.is_some(), "the daemon wrote the mark at start");
    for _ in 0..3 {
        assert_eq!(host.body(&id, DOCTOR), CONSULT_BODY);
    }
    // The running daemon writes its trace head into the mark (at most once a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    while modified() == at_start {
        assert!(Instant::now() < deadline, "the mark never took the reads");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(daemon);
    let journal = host.data.join("trace.journal");
    let len = std::fs::metadata(&journal).expect("journal").len();
    std::fs::write(&journal, vec![0u8; len as usize]).expect("zero the journal");
    let o = host.run_env(&hw, &["dossier", "list"]);
    assert_eq!(o.code, 5, "{}", o.stderr);
    assert!(
        o.stderr.contains("trace entries were removed"),
        "{}",
        o.stderr
    );
}

/// A `carnet.toml` whose role is not the replica's: the daemon refuses to start, says which
/// file and which folder disagree, and leaves the folder as the host's (each role's tasks take
/// that role's replica type, so a site loop never runs on the host's replica).
#[test]
fn a_daemon_whose_settings_name_the_other_role_refuses_to_start() {
    let host = Carnet::empty();
    host.ok(&[
        "init",
        "--role",
        "host",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let config = host.data.join("carnet.toml");
    let text = std::fs::read_to_string(&config).expect("carnet.toml");
    let site_text = text.replace("role = \"host\"", "role = \"site\"").replace(
        "# host_address: sites only",
        "host_address = \"127.0.0.1:9\"",
    );
    assert_ne!(site_text, text);
    std::fs::write(&config, site_text).expect("write");
    let child = Command::new(syncd_bin())
        .arg("--data")
        .arg(&host.data)
        .env_remove("CARNET_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("carnet-syncd runs");
    // Bounded: a daemon that started anyway is stopped and the test fails.
    let pid = child.id().to_string();
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let out = match exited.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg(&pid).status();
            panic!("the daemon started on the other role's replica");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("role = \"site\"") && stderr.contains("national host's"),
        "{stderr}"
    );
    assert!(
        !carnet_syncd::api::socket_path(&host.data).exists(),
        "no daemon answers there"
    );
    // The replica is still the host's, and answers as such.
    let list = host.ok(&["pki", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
}

/// A site's `carnet.toml` lists two daemons of the host, the first with nothing answering
/// behind it (a UDP port kept bound, silent): the site daemon passes over it and syncs with the
/// second, logs which address failed and which it tries next, and `sync status` says where it
/// is connected. With no daemon running, `carnet sync now` dials the same list.
#[test]
fn a_site_passes_over_a_dead_host_address_and_says_where_it_is_connected() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let site = enrolled_site(&host, &address, &[]);
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("a silent port");
    let dead_address = dead.local_addr().expect("address").to_string();
    let toml = site.data.join("carnet.toml");
    let text = std::fs::read_to_string(&toml).expect("carnet.toml");
    let listed = format!("host_address = [\"{dead_address}\", \"{address}\"]");
    let edited = text.replace(&format!("host_address = \"{address}\""), &listed);
    assert!(edited.contains(&listed), "{text}");
    std::fs::write(&toml, edited).expect("edit carnet.toml");
    let _host_daemon = start_daemon_with(&host, &[]);
    let (mut site_daemon, log) = start_logged(&site, &[]);
    wait_for_socket(&site);
    let status = wait_for_status(&site, Duration::from_secs(60), "connected", |s| {
        s["link"]["connected"] == true
    });
    assert_eq!(status["link"]["host_address"], address.as_str(), "{status}");
    assert_eq!(
        status["link"]["settings"]["host_address"],
        serde_json::json!([dead_address, address]),
        "{status}"
    );
    let said = site.ok(&["sync", "status"]).stdout;
    assert!(
        said.contains(&format!("host reached at {address}")),
        "{said}"
    );
    wait_for_log(&log, "the dead address passed over", |lines| {
        lines.iter().any(|l| {
            l.contains("WARN")
                && l.contains("did not answer")
                && l.contains(&format!("address={dead_address}"))
                && l.contains(&format!("next={address}"))
        })
    });
    assert_eq!(stop(&mut site_daemon), Some(0), "a clean stop");
    // `carnet` alone dials what carnet.toml says, read at each connection: nothing when the
    // file lists no address, the live daemon past the dead one when it lists both.
    let with_list = std::fs::read_to_string(&toml).expect("carnet.toml");
    std::fs::write(&toml, with_list.replace(&listed, "host_address = []")).expect("edit");
    let refused = site.run(&["sync", "now"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("host_address lists no address"),
        "{}",
        refused.stderr
    );
    std::fs::write(&toml, with_list).expect("edit");
    let synced = site.json(&["sync", "now"]);
    assert!(synced["pulled"].as_u64().is_some(), "{synced}");
}

/// A replica with more body segments than systemd's soft limit on open files (1,024 for a
/// service; 64 here): `carnet` and `carnet-syncd` raise the limit to the hard one before they
/// open every segment, and both serve. Without it they stopped at "Too many open files".
#[test]
fn a_replica_with_more_segments_than_the_soft_open_files_limit_opens() {
    const SOFT: u64 = 64;
    let host = Carnet::host();
    host.ok(&["pki", "init", "--ca-in-replica"]);
    // Nothing listens there: the site's daemon serves `carnet` all the same.
    let site = enrolled_site(&host, "127.0.0.1:9", &[]);
    let segments = site.data.join("segments");
    std::fs::create_dir_all(&segments).expect("segments");
    // Empty segments: valid, and each one more file kept open.
    for n in 1..=3 * SOFT {
        std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(segments.join(format!("{n:08}.seg")))
        .expect("a segment");
    }
    let under_the_limit = |program: &std::path::Path, args: &[&str]| {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("ulimit -Sn {SOFT} && exec \"$0\" \"$@\""))
            .arg(program)
            .arg("--data")
            .arg(&site.data)
            .args(args)
            .env_remove("CARNET_PASSPHRASE")
            .env_remove("CARNET_DATA");
        cmd
    };
    let hard = Command::new("bash")
        .args(["-c", "ulimit -Hn"])
        .output()
        .expect("bash");
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    assert!(
        hard == "unlimited" || hard.parse::<u64>().is_ok_and(|h| h > 4 * SOFT),
        "the hard limit on open files ({hard}) leaves nothing to raise the soft one to"
    );
    let listed = under_the_limit(std::path::Path::new(bin()), &["--json", "sync", "status"])
        .output()
        .expect("carnet runs");
    assert!(
        listed.status.success(),
        "carnet under a soft limit of {SOFT}: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let child = under_the_limit(&syncd_bin(), &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("carnet-syncd starts");
    let mut daemon = Daemon(child);
    wait_for_socket(&site);
    site.ok(&["sync", "status"]);
    assert_eq!(stop(&mut daemon), Some(0));
}
