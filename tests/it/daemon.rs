//! Real daemons on 127.0.0.1: a host `carnet-syncd` serving, a site syncing with `carnet sync
//! now`; a revoked site refused. (`cargo build --workspace --bins` builds `carnet-syncd` beside `carnet`.)

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The daemon binary, built next to `carnet`.
fn syncd_bin() -> std::path::PathBuf {
    let p = std::path::Path::new(bin()).with_file_name("carnet-syncd");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (README)",
        p.display()
    );
    p
}

/// A free UDP port on 127.0.0.1.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Stops the daemon when the test ends, whatever happens.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_host_daemon(host: &Carnet) -> Daemon {
    let child = Command::new(syncd_bin())
        .arg("--data")
        .arg(&host.data)
        .env_remove("CARNET_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("carnet-syncd starts");
    Daemon(child)
}

#[test]
fn an_enrolled_site_syncs_with_a_host_daemon_and_a_revoked_one_is_refused() {
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init"]);
    host.ok(&["pro", "add", "--rpps", DOCTOR, "--profession", "medecin"]);
    let ins = ins_a();
    host.ok(&[
        "dossier",
        "create",
        "--ins",
        &ins,
        "--birth-name",
        "EXEMPLE",
        "--first-names",
        "Camille",
        "--birth-date",
        "1984-05-07",
        "--sex",
        "F",
    ]);
    host.ok(&[
        "grant",
        "add",
        "--dossier",
        &ins,
        "--rpps",
        DOCTOR,
        "--treating",
    ]);
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

    let _daemon = start_host_daemon(&host);
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
