//! What the operators see (issue 19 §2–3): `carnet sites` at the host, through its daemon,
//! as sites connect, fall behind, disconnect and are revoked. Real daemons on 127.0.0.1,
//! every wait bounded.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{enrolled_site, free_port, start_daemon, stop, wait_for_socket};
use crate::support::*;

/// Waits (bounded) until `check` holds for the host's `sites --json`; answers that site's entry.
pub fn wait_for_site(
    host: &Carnet,
    site: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sites = host.json(&["sites"]);
        let entry = sites
            .as_array()
            .and_then(|s| s.iter().find(|s| s["site"] == site).cloned())
            .unwrap_or(Value::Null);
        if check(&entry) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "site {site} never {what}: {sites}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A host (its daemon not started) with the doctor's dossier, and a site bound to the doctor.
pub fn host_and_site() -> (Carnet, Carnet, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init"]);
    let ins = host.doctor_dossier();
    host.pro(NURSE, "infirmier");
    let site = enrolled_site(&host, &address, &[DOCTOR]);
    site.pro(DOCTOR, "medecin");
    site.pro(NURSE, "infirmier");
    host.ok(&["pki", "bind", "--site", "1", "--rpps", NURSE]);
    (host, site, ins)
}

/// `carnet sites` follows a site through connection, lag while it is away, its return and its
/// revocation; its figures agree with the site's own `sync status`. Without a daemon, or at a
/// site, it says why it cannot answer.
#[test]
fn sites_follow_connect_disconnect_and_revocation() {
    let (host, site, ins) = host_and_site();
    let o = host.fails(2, &["sites"]);
    assert!(o.stderr.contains("no host daemon runs"), "{}", o.stderr);
    let o = site.fails(2, &["sites"]);
    assert!(o.stderr.contains("runs at the host"), "{}", o.stderr);

    let _host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let never = wait_for_site(&host, 1, "listed", |s| s.is_object());
    assert_eq!(never["connected"], false, "{never}");
    assert!(
        never["last_contact"].is_null() && never["version"].is_null(),
        "{never}"
    );
    assert_eq!(never["name"], "Clinique");

    let mut site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    wait_for_site(&host, 1, "connected", |s| s["connected"] == true);
    // Consent given in person at the site (once it holds the dossier): a request at the host.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = site.run(&["grant", "add", "--dossier", &ins, "--rpps", NURSE]);
        if o.code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no pending grant: {}", o.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = wait_for_site(&host, 1, "connected and current", |s| {
        s["connected"] == true && s["changes_not_pulled"] == 0 && s["pending_grants"] == 1
    });
    assert_eq!(up["version"], env!("CARGO_PKG_VERSION"), "{up}");
    assert!(up["rounds"].as_u64() >= Some(1), "{up}");
    assert!(up["bytes_received"].as_u64() > Some(0), "{up}");
    assert!(up["last_contact"].is_string(), "{up}");
    assert!(
        up["lease_until"].is_string(),
        "the lease the site reported: {up}"
    );
    let status = site.json(&["sync", "status"]);
    assert_eq!(
        up["quarantine"],
        status["quarantine"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(up["conflicts"], status["conflicts"], "{up} {status}");
    assert_eq!(
        up["bodies_not_pulled"], status["missing_bodies"],
        "{up} {status}"
    );
    assert_eq!(up["traces_not_sent"], 0, "{up}");

    // Away: the host sees the disconnection, and its log for the site grows unread.
    assert_eq!(stop(&mut site_daemon), Some(0));
    let away = wait_for_site(&host, 1, "disconnected", |s| s["connected"] == false);
    assert!(away["last_contact"].is_string(), "{away}");
    host.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"while away (synthetic)",
    );
    let behind = wait_for_site(&host, 1, "behind", |s| {
        s["changes_not_pulled"].as_u64() >= Some(1)
    });
    assert_eq!(behind["connected"], false, "{behind}");
    let shown = host.ok(&["sites", "show", "1"]).stdout;
    assert!(shown.contains("connected: no"), "{shown}");
    assert!(
        shown.contains("pending grants (consent in person): 1"),
        "{shown}"
    );
    host.fails(4, &["sites", "show", "99"]);

    // Back: it catches up.
    let _site_daemon = start_daemon(&site);
    wait_for_site(&host, 1, "caught up", |s| {
        s["connected"] == true && s["changes_not_pulled"] == 0
    });

    // Revoked through the host's daemon: its connection goes, and the table says why.
    host.ok(&["pki", "revoke", "1"]);
    let revoked = wait_for_site(&host, 1, "revoked and disconnected", |s| {
        s["revoked"] == true && s["connected"] == false
    });
    assert_eq!(revoked["name"], "Clinique", "{revoked}");
}
