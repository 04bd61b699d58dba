//! `keys rotate`: every key is re-wrapped under a new master key; the old one stops opening
//! the replica, the new one opens everything. `keys rotate --full`: every key replaced, through
//! real daemons.

use std::time::{Duration, Instant};

use crate::daemon::{host_and_two_sites, start_daemon, stop, sync_until_ok, wait_for_socket};
use crate::support::*;

/// Everything a replica holds is still readable.
fn all_readable(c: &Carnet, k: &Clinic) {
    assert_eq!(c.body(&k.consult, DOCTOR), CONSULT_BODY);
    assert_eq!(c.body(&k.prescription, PHARMACIST), PRESCRIPTION_BODY);
    assert_eq!(
        c.json(&["dossier", "show", &k.ins])["identity"]["birth_name"],
        "DUPONT"
    );
    assert_eq!(c.json(&["pro", "list"]).as_array().map(Vec::len), Some(6));
    assert_eq!(c.json(&["audit", "verify"])["ok"], true);
    assert!(!c.audit(&k.ins).is_empty());
}

#[test]
fn rotate_the_key_file() {
    let k = clinic();
    let c = &k.host;
    let key_file = c.data.join("master.key");
    let old = std::fs::read(&key_file).expect("key file");
    let host_key = c.host_key();

    let o = c.ok(&["keys", "rotate"]);
    assert!(o.stdout.contains("master key rotated"), "{}", o.stdout);
    let new = std::fs::read(&key_file).expect("new key file");
    assert_ne!(new, old);
    assert_eq!(new.len(), 65, "64 hex digits and a newline");
    assert!(
        !c.data.join("master.key.new").exists(),
        "no half-finished rotation left"
    );
    all_readable(c, &k);
    assert_eq!(
        c.host_key(),
        host_key,
        "the signing key survives the rotation"
    );
    // The host can still sign.
    c.ok(&["grant", "add", "--dossier", &k.ins, "--rpps", ER_DOCTOR]);

    // The old key file no longer opens the replica.
    std::fs::write(&key_file, &old).expect("put the old key back");
    for args in [
        vec!["pro", "list"],
        vec!["doc", "get", &k.consult, "--as", DOCTOR],
    ] {
        let o = c.fails(2, &args);
        assert!(
            o.stderr.contains("does not open this replica"),
            "{}",
            o.stderr
        );
        let j = c.run(&[&["--json"][..], &args[..]].concat()).json();
        assert_eq!(j["error"]["kind"], "key");
    }
    // A damaged or missing key file says so.
    std::fs::write(&key_file, b"not a key\n").expect("write");
    let o = c.fails(2, &["pro", "list"]);
    assert!(o.stderr.contains("malformed"), "{}", o.stderr);
    std::fs::remove_file(&key_file).expect("remove");
    let o = c.fails(2, &["pro", "list"]);
    assert!(
        o.stderr.contains("cannot read the key file"),
        "{}",
        o.stderr
    );

    std::fs::write(&key_file, &new).expect("put the new key back");
    all_readable(c, &k);
    let j = c.json(&["keys", "rotate"]);
    assert_eq!(j, serde_json::json!({"rotated": true}));
    assert_ne!(std::fs::read(&key_file).expect("key file"), new);
    all_readable(c, &k);
}

// Each opening of a passphrase replica stretches the passphrase (Argon2id, about half a
// second in a debug build): these tests keep their command count low.

/// A passphrase replica holding one patient document; returns it and the document id.
fn passphrase_replica(passphrase: &str) -> (Carnet, String) {
    let mut c = Carnet::empty();
    c.set_env("CARNET_PASSPHRASE", passphrase);
    c.ok(&["init", "--role", "host"]);
    let a = ins_a();
    c.dossier(&a, "DUPONT", "Camille");
    let id = c.add_doc(
        &a,
        "patient",
        "90",
        "DOCPAT01",
        "Mes allergies",
        b"pollen (synthetic)",
    );
    (c, id)
}

#[test]
fn rotate_a_passphrase() {
    let (mut c, id) = passphrase_replica("first passphrase");
    let o = c.run_env(
        &[("CARNET_NEW_PASSPHRASE", "second passphrase")],
        &["keys", "rotate"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("CARNET_NEW_PASSPHRASE"), "{}", o.stdout);
    let o = c.fails_once(2, &["pro", "list"]);
    assert!(o.stderr.contains("wrong passphrase"), "{}", o.stderr);
    c.set_env("CARNET_PASSPHRASE", "second passphrase");
    assert_eq!(c.body(&id, "patient"), b"pollen (synthetic)");
}

#[test]
fn rotate_from_a_passphrase_to_a_key_file() {
    let (mut c, id) = passphrase_replica("a passphrase");
    c.ok(&["keys", "rotate"]);
    assert!(c.data.join("master.key").is_file());
    c.unset_env("CARNET_PASSPHRASE");
    assert_eq!(c.body(&id, "patient"), b"pollen (synthetic)");
    assert_eq!(c.json(&["audit", "verify"])["ok"], true);
}

#[test]
fn rotate_from_a_key_file_to_a_passphrase() {
    let k = clinic();
    let mut c = k.host;
    let o = c.run_env(
        &[("CARNET_NEW_PASSPHRASE", "from now on")],
        &["keys", "rotate"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        !c.data.join("master.key").exists(),
        "the stale key file is removed"
    );
    let o = c.fails_once(2, &["pro", "list"]);
    assert!(o.stderr.contains("CARNET_PASSPHRASE"), "{}", o.stderr);
    c.set_env("CARNET_PASSPHRASE", "from now on");
    assert_eq!(c.body(&k.consult, DOCTOR), CONSULT_BODY);
    assert_eq!(c.json(&["audit", "verify"])["ok"], true);
}

/// Waits (bounded) until `check` holds, `what` naming it for the failure message.
fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ids of the documents of `ins` that `c` lists for `DOCTOR`.
fn doc_ids(c: &Carnet, ins: &str) -> Vec<String> {
    c.json(&["doc", "list", "--dossier", ins, "--as", DOCTOR])
        .as_array()
        .map(|docs| {
            docs.iter()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_full_rotation_between_two_runs_of_the_site_daemon() {
    let (host, ins, [site, other]) = host_and_two_sites();
    let _host_daemon = start_daemon(&host);
    sync_until_ok(&site, Duration::from_secs(20));

    // The site writes and syncs through its daemon; the other site receives the document.
    let mut daemon = start_daemon(&site);
    wait_for_socket(&site);
    let before = site.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"before (synthetic)",
    );
    until(
        "the other site receives it",
        Duration::from_secs(30),
        || {
            sync_until_ok(&other, Duration::from_secs(20));
            doc_ids(&other, &ins).contains(&before)
        },
    );

    // Refused while the daemon holds the replica, and nothing changes.
    let key_file = site.data.join("master.key");
    let old_key = std::fs::read(&key_file).expect("key file");
    let o = site.fails(2, &["keys", "rotate", "--full"]);
    assert!(o.stderr.contains("carnet-syncd is running"), "{}", o.stderr);
    assert_eq!(std::fs::read(&key_file).expect("key file"), old_key);
    assert!(!site.data.join("carnet.redb.rekey").exists());
    assert_eq!(site.body(&before, DOCTOR), b"before (synthetic)");

    assert_eq!(
        stop(&mut daemon),
        Some(0),
        "the site daemon stopped cleanly"
    );
    let o = site.ok(&["keys", "rotate", "--full"]);
    assert!(o.stdout.contains("every key replaced"), "{}", o.stdout);
    assert!(o.stdout.contains("take a new backup"), "{}", o.stdout);
    assert_ne!(std::fs::read(&key_file).expect("key file"), old_key);
    assert_eq!(site.body(&before, DOCTOR), b"before (synthetic)");
    assert_eq!(site.json(&["audit", "verify"])["ok"], true);

    // The daemon again: a new write reaches the host and the other site, and the host, which
    // keeps the site's chain key, takes and checks the site's chain after the rotation.
    let _daemon = start_daemon(&site);
    wait_for_socket(&site);
    let after = site.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR 2",
        b"after (synthetic)",
    );
    until(
        "the other site receives the new document",
        Duration::from_secs(30),
        || {
            sync_until_ok(&other, Duration::from_secs(20));
            doc_ids(&other, &ins).contains(&after)
        },
    );
    assert_eq!(other.body(&after, DOCTOR), b"after (synthetic)");
    until(
        "the host holds the site's trace of it",
        Duration::from_secs(30),
        || {
            host.audit(&ins)
                .iter()
                .any(|e| e["doc"] == after.as_str() && e["action"] == "write")
        },
    );
    assert_eq!(host.json(&["audit", "verify"])["ok"], true);
}
