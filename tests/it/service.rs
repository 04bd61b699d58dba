//! `carnet-syncd` as a service (issue 19 §1): its command line, systemd's notify protocol and
//! watchdog, SIGHUP reloading `carnet.toml`, JSON logs and the host's per-site events. Real
//! daemons on 127.0.0.1, every wait bounded.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, enrolled_site, free_port, stop, syncd_bin};
use crate::support::*;

/// Starts `carnet-syncd` on a replica with `env` added (stopped when dropped).
fn start_daemon_with(replica: &Carnet, env: &[(&str, &str)]) -> Daemon {
    let child = Command::new(syncd_bin())
        .arg("--data")
        .arg(&replica.data)
        .env_remove("CARNET_PASSPHRASE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("carnet-syncd starts");
    Daemon(child)
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
    host.ok(&["pki", "init"]);
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
