//! The national PKI through the CLI: `pki init`, `pki enrol`, `pki list`, `pki revoke`, a
//! site created from its enrolment bundle; certificate lifetimes; renewal of a site's and of
//! the host's certificate over real daemons, and the host key pin; the hand-over to a new
//! host key and the revocation of a host key at the sites; the offline CA; a revoked site's
//! certificate in the list of refused certificates another site pulls.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::daemon::{enrolled_site_and_bundle, free_port, start_daemon, sync_until_ok};
use crate::support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn enrol_args<'a>(name: &'a str, bundle: &'a str) -> Vec<&'a str> {
    vec![
        "pki",
        "enrol",
        "--name",
        name,
        "--finess",
        "750000001",
        "--host-address",
        "127.0.0.1:4433",
        "-o",
        bundle,
    ]
}

#[test]
fn enrol_list_revoke_on_the_host() {
    let host = Carnet::host();
    let bundle = host.path("site.bundle").display().to_string();
    let enrol = [
        "pki",
        "enrol",
        "--name",
        "Maison de santé",
        "--finess",
        "750000001",
        "--host-address",
        "127.0.0.1:4433",
        "-o",
        &bundle,
    ];
    let o = host.fails(2, &enrol);
    assert!(o.stderr.contains("pki init"), "{}", o.stderr);
    // Where the CA key lives is a choice made out loud: neither option is refused, and
    // keeping it in the replica says what that means.
    let o = host.fails(2, &["pki", "init"]);
    assert!(o.stderr.contains("--ca-dir"), "{}", o.stderr);
    let o = host.fails(2, &enrol);
    assert!(
        o.stderr.contains("pki init"),
        "nothing was created: {}",
        o.stderr
    );
    let o = host.ok(&["pki", "init", "--ca-in-replica"]);
    assert!(o.stdout.contains("warning"), "{}", o.stdout);
    host.fails(2, &["pki", "init", "--ca-in-replica"]);
    let j = host.json(&enrol);
    assert_eq!(j["site_id"], 1);
    let mode = std::fs::metadata(&bundle)
        .expect("bundle")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the bundle holds a private key");
    let list = host.json(&["pki", "list"]);
    assert_eq!(list[0]["name"], "Maison de santé");
    assert_eq!(list[0]["revoked"], false);
    host.ok(&["pki", "revoke", "1"]);
    assert_eq!(host.json(&["pki", "list"])[0]["revoked"], true);
    host.fails(2, &["pki", "revoke", "99"]);
    // Bad input changes nothing.
    let mut bad = enrol;
    bad[5] = "75000000";
    host.fails(2, &bad);
    bad = enrol;
    bad[7] = "not-an-address";
    host.fails(2, &bad);
    assert_eq!(
        host.json(&["pki", "list"]).as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn a_site_is_created_from_its_bundle() {
    let host = Carnet::host();
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("site.bundle").display().to_string();
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Pharmacie du bourg",
        "--finess",
        "2A0000001",
        "--host-address",
        "127.0.0.1:4433",
        "-o",
        &bundle,
    ]);
    let site = Carnet::empty();
    let j = site.json(&["init", "--role", "site", "--enrol", &bundle]);
    assert_eq!(j["site_id"], 1);
    assert_eq!(j["enrolled"], true);
    assert_eq!(j["host_key"], host.host_key());
    // The pinned key is the host's: its records import.
    let records = host.export_authority("records").display().to_string();
    site.ok(&["authority", "import", &records]);
    // Sites have no PKI of their own.
    site.fails(2, &["pki", "init", "--ca-in-replica"]);
}

#[test]
fn a_damaged_bundle_creates_nothing() {
    let host = Carnet::host();
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("site.bundle");
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Unité mobile",
        "--finess",
        "750000002",
        "--host-address",
        "127.0.0.1:4433",
        "-o",
        &bundle.display().to_string(),
    ]);
    let mut bytes = std::fs::read(&bundle).expect("bundle");
    bytes.truncate(bytes.len() / 2);
    let cut = host.write("cut.bundle", &bytes);
    let site = Carnet::empty();
    let o = site.fails(2, &["init", "--role", "site", "--enrol", &cut]);
    assert!(o.stderr.contains("bundle"), "{}", o.stderr);
    assert!(!site.db_path().exists());
    let other = host.write("other.bundle", b"hello");
    site.fails(2, &["init", "--role", "site", "--enrol", &other]);
    site.fails(
        2,
        &[
            "init",
            "--role",
            "site",
            "--site-id",
            "3",
            "--enrol",
            &bundle.display().to_string(),
        ],
    );
    assert!(!site.db_path().exists());
}

#[test]
fn init_writes_the_daemon_settings() {
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", "127.0.0.1:5999"]);
    let text = std::fs::read_to_string(host.data.join("carnet.toml")).expect("carnet.toml");
    assert!(text.contains("role = \"host\""), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:5999\""), "{text}");
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("b").display().to_string();
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Clinique",
        "--finess",
        "750000003",
        "--host-address",
        "127.0.0.1:5999",
        "-o",
        &bundle,
    ]);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    let text = std::fs::read_to_string(site.data.join("carnet.toml")).expect("carnet.toml");
    assert!(text.contains("host_address = \"127.0.0.1:5999\""), "{text}");
    let bad = Carnet::empty();
    bad.fails(2, &["init", "--role", "host", "--listen", "nowhere"]);
    bad.fails(2, &["init", "--role", "site", "--listen", "127.0.0.1:1"]);
    assert!(!bad.db_path().exists());
}

#[test]
fn certificates_have_real_lifetimes_shown_where_they_are_used() {
    let host = Carnet::host();
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("site.bundle").display().to_string();
    host.ok(&enrol_args("Clinique", &bundle));
    let list = host.json(&["pki", "list"]);
    let days = list[0]["days_left"].as_i64().expect("days_left");
    assert!((364..=365).contains(&days), "{list}");
    assert_eq!(list[0]["renew"], false);
    let human = host.ok(&["pki", "list"]).stdout;
    assert!(
        human.contains("CA valid until") && human.contains("host certificate until"),
        "{human}"
    );
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    let status = site.json(&["sync", "status"]);
    let days = status["certificate"]["days_left"].as_i64().expect("days");
    assert!((364..=365).contains(&days), "{status}");
    assert_eq!(status["certificate"]["host_pinned"], true);
    assert_eq!(status["certificate"]["renew"], false);
    let human = site.ok(&["sync", "status"]).stdout;
    assert!(human.contains("certificate: valid until"), "{human}");
    assert!(!human.contains("warning"), "{human}");
}

#[test]
fn old_foreign_and_misplaced_bundles_are_refused() {
    let host = Carnet::host();
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("one.bundle");
    let b = bundle.display().to_string();
    host.ok(&enrol_args("Clinique", &b));
    let other = host.path("two.bundle").display().to_string();
    host.ok(&enrol_args("Pharmacie", &other));
    // A format 1 bundle: refused with the way out.
    let mut bytes = std::fs::read(&bundle).expect("bundle");
    bytes[8] = 1;
    let v1 = host.write("v1.bundle", &bytes);
    let fresh = Carnet::empty();
    let o = fresh.fails(2, &["init", "--role", "site", "--enrol", &v1]);
    assert!(o.stderr.contains("pki renew"), "{}", o.stderr);
    assert!(!fresh.db_path().exists());
    // Installing: not at the host, not another site's, not garbage.
    host.fails(2, &["pki", "install", &b]);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &b]);
    let o = site.fails(2, &["pki", "install", &other]);
    assert!(o.stderr.contains("site"), "{}", o.stderr);
    site.fails(2, &["pki", "install", &v1]);
    let junk = host.write("junk.bundle", b"CARNETEN\x02garbage");
    site.fails(2, &["pki", "install", &junk]);
    // Renewing: an unknown site, a bad address, a revoked site.
    let out = host.path("r.bundle").display().to_string();
    host.fails(2, &["pki", "renew", "99", "-o", &out]);
    host.fails(
        2,
        &["pki", "renew", "1", "-o", &out, "--host-address", "nowhere"],
    );
    host.ok(&["pki", "revoke", "2"]);
    host.fails(2, &["pki", "renew", "2", "-o", &out]);
    assert!(!host.path("r.bundle").exists());
    // A site has no renewal of its own to issue.
    site.fails(2, &["pki", "renew", "1", "-o", &out]);
    site.fails(2, &["pki", "renew-host"]);
}

/// `sync now` fails (bounded retries are not wanted: the refusal is immediate).
fn sync_refused(site: &Carnet) -> String {
    let o = site.run(&["sync", "now"]);
    assert_ne!(o.code, 0, "the round was admitted: {}", o.stdout);
    o.stderr
}

#[test]
fn renewals_over_real_daemons_without_a_gap_and_the_host_key_pinned() {
    let (host, address) = listening_host();
    let (site, _) = enrolled_site_and_bundle(&host, &address, &[]);
    let _host_daemon = start_daemon(&host);
    sync_until_ok(&site, Duration::from_secs(20));

    // A renewal: the current certificate keeps working until the new one is installed.
    let r1 = host.path("r1.bundle").display().to_string();
    host.ok(&["pki", "renew", "1", "-o", &r1]);
    assert_eq!(mode(std::path::Path::new(&r1)), 0o600);
    sync_until_ok(&site, Duration::from_secs(5));
    site.ok(&["pki", "install", &r1]);
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(host.json(&["pki", "list"])[0]["certificates"], 2);

    // A renewal that retires the earlier certificates: refused at once, until installed. It is
    // issued in a later second than the last (certificate times count seconds).
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        <= issued
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let r2 = host.path("r2.bundle").display().to_string();
    host.ok(&["pki", "renew", "1", "-o", &r2, "--retire-old"]);
    sync_refused(&site);
    site.ok(&["pki", "install", &r2]);
    sync_until_ok(&site, Duration::from_secs(5));
    // An older bundle does not go back over it.
    let o = site.fails(2, &["pki", "install", &r1]);
    assert!(o.stderr.contains("older"), "{}", o.stderr);
    sync_until_ok(&site, Duration::from_secs(5));

    // The host's certificate renewed for the same key: sites go on as they are.
    host.ok(&["pki", "renew-host"]);
    sync_until_ok(&site, Duration::from_secs(5));
}

/// A number `sync status` says of the site's certificate (`days_left`, `host_pins`).
fn certificate(site: &Carnet, field: &str) -> i64 {
    site.json(&["sync", "status"])["certificate"][field]
        .as_i64()
        .expect("a certificate")
}

/// How many host keys the site pins.
fn host_pins(site: &Carnet) -> i64 {
    certificate(site, "host_pins")
}

/// A host replica with a PKI (its CA key kept) that listens on a free port, and the address.
fn listening_host() -> (Carnet, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    (host, address)
}

#[test]
fn a_new_host_key_is_handed_over_to_the_sites_that_sync_before_the_switch() {
    let (host, address) = listening_host();
    let (site, _) = enrolled_site_and_bundle(&host, &address, &[]);
    let (late, _) = enrolled_site_and_bundle(&host, &address, &[]);
    let _host_daemon = start_daemon(&host);
    sync_until_ok(&site, Duration::from_secs(20));
    sync_until_ok(&late, Duration::from_secs(5));
    assert_eq!(host_pins(&site), 1);

    // The host prepares a new key and announces it, signed by the key it still serves.
    let prepared = host.json(&["pki", "renew-host", "--new-key"]);
    let next = prepared["next_pin"].as_str().expect("next pin").to_string();
    assert_eq!(prepared["switched"], false);
    assert!(
        host.ok(&["pki", "list"]).stdout.contains(&next),
        "pki list shows the announced key"
    );
    // The site syncs during the announcement: it pins the next key beside the current one.
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(host_pins(&site), 2);
    // `late` does not sync now.

    // The switch: the running host serves the new key at once.
    let switched = host.json(&["pki", "renew-host", "--switch"]);
    assert_eq!(switched["pin"], next.as_str());
    // The site goes on without any bundle, and its first round on the new key drops the old
    // pin.
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(host_pins(&site), 1);
    sync_until_ok(&site, Duration::from_secs(5));
    // The site that missed the announcement is refused, and told to install a bundle.
    let e = sync_refused(&late);
    assert!(
        e.contains("does not pin") && e.contains("pki install"),
        "{e}"
    );
    let bundle = host.path("late.bundle").display().to_string();
    host.ok(&["pki", "renew", "2", "-o", &bundle]);
    late.ok(&["pki", "install", &bundle]);
    sync_until_ok(&late, Duration::from_secs(5));
    // Nothing prepared now: a second switch is refused.
    let o = host.fails(2, &["pki", "renew-host", "--switch"]);
    assert!(o.stderr.contains("--new-key"), "{}", o.stderr);
}

/// Copies a stopped replica's data folder (a host's TLS key leaves with it).
fn copy_replica(from: &Carnet) -> Carnet {
    let to = Carnet::empty();
    std::fs::create_dir_all(&to.data).expect("data folder");
    for f in std::fs::read_dir(&from.data).expect("data folder") {
        let f = f.expect("entry");
        if f.file_type().expect("type").is_file() {
            std::fs::copy(f.path(), to.data.join(f.file_name())).expect("copy");
        }
    }
    to
}

#[test]
fn a_host_key_revoked_by_the_ca_is_refused_at_connect_even_pinned_and_unexpired() {
    let (host, address) = listening_host();
    let (site, _) = enrolled_site_and_bundle(&host, &address, &[]);
    let mut host_daemon = start_daemon(&host);
    sync_until_ok(&site, Duration::from_secs(20));
    // A new key prepared and taken by the site: it pins both.
    let next = host.json(&["pki", "renew-host", "--new-key"])["next_pin"]
        .as_str()
        .expect("pin")
        .to_string();
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(host_pins(&site), 2);
    // The next key leaks (here: a copy of the host's folder), and the thief serves it: a
    // certificate of the national CA, unexpired, for a key the site pinned.
    crate::daemon::stop(&mut host_daemon);
    let thief = copy_replica(&host);
    thief.ok(&["pki", "renew-host", "--switch"]);
    // The CA revokes it; the host carries the revocation in its next Welcome.
    let mut host_daemon = start_daemon(&host);
    crate::daemon::wait_for_socket(&host);
    host.ok(&["pki", "revoke-host", "--pin", &next]);
    let o = host.fails(2, &["pki", "revoke-host", "--pin", &"0".repeat(63)]);
    assert!(o.stderr.contains("pin"), "{}", o.stderr);
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(host_pins(&site), 1, "the revoked pin is gone");
    // The thief serves the revoked key: refused at the handshake, with the reason.
    crate::daemon::stop(&mut host_daemon);
    let _thief_daemon = start_daemon(&thief);
    crate::daemon::wait_for_socket(&thief);
    let e = sync_refused(&site);
    assert!(
        e.contains("revoked by the national CA") && e.contains("refused at the handshake"),
        "{e}"
    );
    drop(_thief_daemon);
    // The real host, on the key the site pins: syncing again.
    let _host_daemon = start_daemon(&host);
    sync_until_ok(&site, Duration::from_secs(20));
}

#[test]
fn a_revocation_file_installs_at_a_site_only_if_the_national_ca_signed_it() {
    let host = Carnet::host();
    let ca_dir = host.path("offline-ca").display().to_string();
    host.ok(&["pki", "init", "--ca-dir", &ca_dir]);
    let bundle = host.path("site.bundle").display().to_string();
    let mut args = enrol_args("Clinique", &bundle);
    args.extend(["--ca-dir", &ca_dir]);
    host.ok(&args);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    let list = host.ok(&["pki", "list"]).stdout;
    let pin = list
        .lines()
        .find_map(|l| l.strip_prefix("host key pin "))
        .expect("pki list shows the pin")
        .to_string();
    // The key the host serves is not revoked (switch first); the CA is offline.
    let file = host.path("revoked.hr").display().to_string();
    let revoke = [
        "pki",
        "revoke-host",
        "--pin",
        &pin,
        "-o",
        &file,
        "--ca-dir",
        &ca_dir,
    ];
    let o = host.fails(2, &revoke);
    assert!(o.stderr.contains("--switch"), "{}", o.stderr);
    // Another CA's revocation of this host's key (a stranger host signing it): refused at the
    // site, nothing changes.
    let stranger = Carnet::host();
    stranger.ok(&["pki", "init", "--ca-in-replica"]);
    let forged = stranger.path("forged.hr").display().to_string();
    stranger.ok(&["pki", "revoke-host", "--pin", &pin, "-o", &forged]);
    let o = site.fails(2, &["pki", "install", &forged]);
    assert!(o.stderr.contains("national CA"), "{}", o.stderr);
    assert_eq!(host_pins(&site), 1);
    // The host's CA revokes a key it no longer serves: after a hand-over and a switch.
    host.ok(&["pki", "renew-host", "--new-key", "--ca-dir", &ca_dir]);
    host.ok(&["pki", "renew-host", "--switch"]);
    let j = host.json(&revoke);
    assert_eq!(j["revoked"], true);
    assert_eq!(mode(std::path::Path::new(&file)), 0o600);
    assert!(
        host.ok(&["pki", "list"])
            .stdout
            .contains("revoked host key pin"),
        "listed"
    );
    // The site (which never synced: it pins the old key only) installs it by hand: it pins
    // nothing now, and is told so.
    let j = site.json(&["pki", "install", &file]);
    assert_eq!(j["no_pin_left"], true);
    let human = site.ok(&["pki", "install", &file]).stdout;
    assert!(human.contains("already"), "{human}");
    assert_eq!(host_pins(&site), 0);
    let status = site.ok(&["sync", "status"]).stdout;
    assert!(status.contains("pins no host key"), "{status}");
    // A bundle that pins the revoked key is refused; one issued after the switch installs.
    let o = site.fails(2, &["pki", "install", &bundle]);
    assert!(o.stderr.contains("revoked"), "{}", o.stderr);
    let r = host.path("r.bundle").display().to_string();
    host.ok(&["pki", "renew", "1", "-o", &r, "--ca-dir", &ca_dir]);
    site.ok(&["pki", "install", &r]);
    assert_eq!(host_pins(&site), 1);
    // Garbage is no revocation.
    let junk = host.write("junk.hr", b"CARNETHRgarbage");
    site.fails(2, &["pki", "install", &junk]);
    host.fails(2, &["pki", "install", &file]);
}

#[test]
fn the_ca_key_can_stay_offline() {
    let host = Carnet::host();
    let ca_dir = host.path("offline-ca");
    let dir = ca_dir.display().to_string();
    let j = host.json(&["pki", "init", "--ca-dir", &dir]);
    assert_eq!(j["ca_offline"], true);
    assert_eq!(mode(&ca_dir), 0o700);
    for f in std::fs::read_dir(&ca_dir).expect("ca dir") {
        let p = f.expect("entry").path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    // A second init changes nothing, and touches no folder.
    let again = host.path("again").display().to_string();
    host.fails(2, &["pki", "init", "--ca-dir", &again]);
    assert!(!host.path("again").exists());
    let bundle = host.path("site.bundle").display().to_string();
    let o = host.fails(2, &enrol_args("Clinique", &bundle));
    assert!(o.stderr.contains("--ca-dir"), "{}", o.stderr);
    let mut with_ca = enrol_args("Clinique", &bundle);
    with_ca.extend(["--ca-dir", &dir]);
    host.ok(&with_ca);
    assert!(host.ok(&["pki", "list"]).stdout.contains("key offline"));
    // Another CA's folder is not this host's CA.
    let stranger = Carnet::host();
    let other_dir = stranger.path("ca").display().to_string();
    stranger.ok(&["pki", "init", "--ca-dir", &other_dir]);
    let out = host.path("r.bundle").display().to_string();
    host.fails(
        2,
        &["pki", "renew", "1", "-o", &out, "--ca-dir", &other_dir],
    );
    host.fails(2, &["pki", "renew", "1", "-o", &out]);
    host.ok(&["pki", "renew", "1", "-o", &out, "--ca-dir", &dir]);
    host.fails(2, &["pki", "renew-host"]);
    host.ok(&["pki", "renew-host", "--ca-dir", &dir]);
    host.fails(
        2,
        &["pki", "renew-host", "--ca-dir", "/nonexistent/carnet-ca"],
    );
    // The site made from the bundle works as any other.
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    site.ok(&["pki", "install", &out]);
}

/// Days left on the site's certificate.
fn days_left(site: &Carnet) -> i64 {
    certificate(site, "days_left")
}

#[test]
fn a_site_renews_its_certificate_over_sync_signed_by_the_offline_ca() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    let ca_dir = host.path("offline-ca").display().to_string();
    host.ok(&["pki", "init", "--ca-dir", &ca_dir]);
    let bundle = host.path("site.bundle").display().to_string();
    // A certificate of 20 days: within its renewal window from the start.
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Antenne mobile",
        "--finess",
        "750000001",
        "--host-address",
        &address,
        "-o",
        &bundle,
        "--days",
        "20",
        "--ca-dir",
        &ca_dir,
    ]);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    assert!(days_left(&site) <= 20);
    let _host_daemon = start_daemon(&host);

    // The round asks; the CA is offline: the request waits, listed at the host.
    sync_until_ok(&site, Duration::from_secs(20));
    let waiting = host.json(&["pki", "renewals"]);
    assert_eq!(waiting[0]["site_id"], 1, "{waiting}");
    assert_eq!(waiting[0]["signed"], false, "{waiting}");
    assert!(days_left(&site) <= 20, "nothing installed yet");
    // Asked again at the next round, for the same key: still one request.
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(
        host.json(&["pki", "renewals"]).as_array().map(Vec::len),
        Some(1)
    );

    // The operator signs what waits, with the offline CA.
    host.fails(2, &["pki", "renew", "--pending"]);
    let signed = host.json(&["pki", "renew", "--pending", "--ca-dir", &ca_dir]);
    assert_eq!(signed["signed"], serde_json::json!([1]));
    assert_eq!(host.json(&["pki", "list"])[0]["certificates"], 2);

    // The next round brings the certificate; the site installs it (sealed) and the round
    // after connects with it: the old one is then retired.
    let report = sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(report["renewed"], true, "{report}");
    assert!(days_left(&site) >= 364);
    sync_until_ok(&site, Duration::from_secs(5));
    assert_eq!(host.json(&["pki", "list"])[0]["certificates"], 1);
    assert_eq!(host.json(&["pki", "renewals"]), serde_json::json!([]));
    // Whoever holds the old bundle is refused now.
    let old = Carnet::empty();
    old.ok(&["init", "--role", "site", "--enrol", &bundle]);
    sync_refused(&old);
    sync_until_ok(&site, Duration::from_secs(5));
}

#[test]
fn a_site_daemon_renews_its_certificate_from_the_host_and_reconnects_with_it() {
    let (host, address) = listening_host();
    let bundle = host.path("site.bundle").display().to_string();
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Antenne mobile",
        "--finess",
        "750000001",
        "--host-address",
        &address,
        "-o",
        &bundle,
        "--days",
        "20",
    ]);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    let _host_daemon = start_daemon(&host);
    crate::daemon::wait_for_socket(&host);
    let _site_daemon = start_daemon(&site);
    crate::daemon::wait_for_socket(&site);
    // The CA key is at the host: signed in the first round, installed, and the daemon's next
    // connection uses it, which retires the old one.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let renewed = site.json(&["sync", "status"])["certificate"]["days_left"]
            .as_i64()
            .is_some_and(|d| d >= 364);
        let retired = host.json(&["pki", "list"])[0]["certificates"] == 1
            && host.json(&["pki", "renewals"]) == serde_json::json!([]);
        if renewed && retired {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not renewed: {} / {}",
            site.json(&["sync", "status"]),
            host.json(&["pki", "list"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The site goes on syncing with its new certificate.
    sync_until_ok(&site, Duration::from_secs(10));
}

/// The fingerprint of the certificate in the enrolment bundle at `path`.
fn bundle_fingerprint(path: &std::path::Path) -> [u8; 32] {
    let bundle = carnet_syncd::enrol::Bundle::from_bytes(&std::fs::read(path).expect("bundle"))
        .expect("a bundle");
    carnet_syncd::transport::fingerprint(&bundle.identity.cert_der)
}

#[test]
fn a_site_revoked_at_the_host_is_in_the_list_another_site_pulls() {
    let (host, address) = listening_host();
    host.pro(DOCTOR, "medecin");
    let (clinic, clinic_bundle) = enrolled_site_and_bundle(&host, &address, &[DOCTOR]);
    let (_unit, unit_bundle) = enrolled_site_and_bundle(&host, &address, &[]);
    let _host_daemon = start_daemon(&host);
    sync_until_ok(&clinic, Duration::from_secs(20));
    // The list the clinic holds, read from its replica (no daemon runs at the clinic).
    let refuses = |f: &[u8; 32]| {
        carnet_store::replica::Replica::open(
            &clinic.data,
            &carnet_store::replica::KeySource::File,
            std::sync::Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            }),
        )
        .expect("open the clinic's replica")
        .refuses_certificate(f)
        .expect("the list")
    };
    let unit = bundle_fingerprint(&unit_bundle);
    assert!(!refuses(&unit));
    // The host revokes the unit (site 2) while its daemon runs; the clinic's next round brings
    // the list.
    host.ok(&["pki", "revoke", "2"]);
    sync_until_ok(&clinic, Duration::from_secs(5));
    assert!(refuses(&unit), "the revoked unit's certificate");
    assert!(!refuses(&bundle_fingerprint(&clinic_bundle)));
}
