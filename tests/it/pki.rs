//! The national PKI through the CLI: `pki init`, `pki enrol`, `pki list`, `pki revoke`, and a
//! site created from its enrolment bundle.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

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
    host.ok(&["pki", "init"]);
    host.fails(2, &["pki", "init"]);
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
    host.ok(&["pki", "init"]);
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
    site.fails(2, &["pki", "init"]);
}

#[test]
fn a_damaged_bundle_creates_nothing() {
    let host = Carnet::host();
    host.ok(&["pki", "init"]);
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
    host.ok(&["pki", "init"]);
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
