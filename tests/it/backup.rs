//! `carnet backup` and `carnet restore`, through real daemons: a copy taken while a site's
//! daemon runs and documents are being written, restored into a new folder after the site went
//! on pushing, syncs on as if nothing happened — the host takes it for the same site, what the
//! site pushed after the backup comes back, its trace continues the chain the host holds, and
//! its new documents reach the host and the other site. A damaged, altered or foreign backup is
//! refused with a clear error and writes nothing.

use std::path::Path;
use std::time::Duration;

use crate::convergence::{consultation, start_site};
use crate::daemon::{host_and_two_sites, stop, sync_until_ok};
use crate::service::{start_logged, wait_for_log};
use crate::support::*;

/// The `pki list` of the host, by site id.
fn sites(host: &Carnet) -> Vec<u64> {
    host.json(&["pki", "list"])
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| s["site_id"].as_u64().expect("site id"))
        .collect()
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_site_restored_from_a_backup_syncs_on_as_if_nothing_happened() {
    let (host, ins, [a, b]) = host_and_two_sites();
    let (_host_daemon, host_log) = start_logged(&host, &[]);
    let mut a_daemon = start_site(&a);
    let _b_daemon = start_site(&b);
    for s in [&a, &b] {
        sync_until_ok(s, Duration::from_secs(20));
    }
    let enrolled = sites(&host);
    let before = consultation(&a, &ins, b"before the backup (synthetic)");

    // The backup is taken through A's daemon while documents are being written there.
    let backup = a.path("a.carnet-backup");
    let (during, a_id): (Vec<String>, _) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            (0..4)
                .map(|i| consultation(&a, &ins, format!("during {i} (synthetic)").as_bytes()))
                .collect()
        });
        let taken = a.json(&["backup", "-o", &text(&backup)]);
        assert!(
            enrolled.contains(&taken["site_id"].as_u64().expect("id")),
            "{taken}"
        );
        (writer.join().expect("writer"), taken["site_id"].clone())
    });
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&p.metadata().expect("meta").permissions()) & 0o777
    };
    assert_eq!(mode(&backup), 0o600);
    let bytes = std::fs::read(&backup).expect("backup");
    assert!(
        !contains(&bytes, b"during 0 (synthetic)"),
        "a body in clear"
    );
    assert!(!contains(&bytes, ins.as_bytes()), "an INS in clear");
    let key = std::fs::read(a.data.join("master.key")).expect("key");
    assert!(
        !contains(&bytes, &key[..64]),
        "the master key is in the backup"
    );

    // After the backup, A goes on: it writes, reads (a trace entry) and pushes.
    let after = consultation(&a, &ins, b"after the backup (synthetic)");
    assert_eq!(a.body(&before, DOCTOR), b"before the backup (synthetic)");
    sync_until_ok(&a, Duration::from_secs(20));
    // Then its disk dies.
    assert_eq!(stop(&mut a_daemon), Some(0));
    let key_file = a.path("kept-apart.key");
    std::fs::copy(a.data.join("master.key"), &key_file).expect("key kept apart");

    let restored = Carnet::empty();
    let out = restored.json(&["restore", &text(&backup), "--key-file", &text(&key_file)]);
    assert_eq!(out["site_id"], a_id, "{out}");
    assert_eq!(mode(&restored.data), 0o700);
    for f in files_under(&restored.data) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    restored.ok(&["audit", "verify"]);
    // Until it caught up, it records nothing: its next change would reuse what the host holds.
    let refused = restored.fails_once(2, &["doc", "list", "--dossier", &ins, "--as", DOCTOR]);
    assert!(
        refused.stderr.contains("restored from a backup"),
        "{}",
        refused.stderr
    );

    let waiting = restored.json(&["sync", "status"]);
    assert!(waiting["restored"]["taken_at"].is_string(), "{waiting}");
    let _restored_daemon = start_site(&restored);
    sync_until_ok(&restored, Duration::from_secs(30));
    wait_for_log(&host_log, "the restore", |lines| {
        lines
            .iter()
            .any(|l| l.contains("site restored from a backup"))
    });
    // The same site, not a new one.
    assert_eq!(sites(&host), enrolled);
    let status = restored.json(&["sync", "status"]);
    assert_eq!(status["pending"], 0, "{status}");
    assert!(status["restored"].is_null(), "{status}");
    // What it pushed after the backup came back, with what was written during it.
    assert_eq!(
        restored.body(&after, DOCTOR),
        b"after the backup (synthetic)"
    );
    for (i, id) in during.iter().enumerate() {
        assert_eq!(
            restored.body(id, DOCTOR),
            format!("during {i} (synthetic)").as_bytes()
        );
    }
    // Its trace holds the entries the host kept, and continues the chain.
    let verified = restored.json(&["audit", "verify"]);
    assert_eq!(verified["ok"], true, "{verified}");

    // A new document reaches the host and the other site.
    let new = consultation(&restored, &ins, b"after the restore (synthetic)");
    sync_until_ok(&restored, Duration::from_secs(20));
    assert_eq!(host.body(&new, DOCTOR), b"after the restore (synthetic)");
    sync_until_ok(&b, Duration::from_secs(20));
    assert_eq!(b.body(&new, DOCTOR), b"after the restore (synthetic)");
    assert_eq!(b.body(&after, DOCTOR), b"after the backup (synthetic)");
    // Every chain verifies at the host: the site's, across the restore, and the host's own.
    let at_host = host.json(&["audit", "verify"]);
    assert_eq!(at_host["ok"], true, "{at_host}");
    assert!(at_host["chains"].as_u64() >= Some(3), "{at_host}");
    assert_eq!(sites(&host), enrolled);
}

#[test]
fn a_damaged_altered_or_foreign_backup_is_refused_and_writes_nothing() {
    let site = Carnet::site(7, None);
    site.pro(DOCTOR, "medecin");
    let backup = site.path("site.backup");
    site.ok(&["backup", "-o", &text(&backup)]);
    let good = std::fs::read(&backup).expect("backup");
    let key = text(&site.data.join("master.key"));
    let other = Carnet::site(8, None);
    let other_key = text(&other.data.join("master.key"));

    let cut = site.write("cut.backup", &good[..good.len() - 10]);
    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 0x40;
    let altered = site.write("altered.backup", &flipped);
    let not_one = site.write("not.backup", b"hello, this is no backup at all (synthetic)");
    let backup = text(&backup);
    let cases: [(&str, &str, i32, &str); 5] = [
        (&cut, &key, 5, "damaged"),
        (&altered, &key, 5, "damaged"),
        (&not_one, &key, 2, "not a Carnet backup"),
        (&backup, &other_key, 2, "does not open this replica"),
        (&backup, "", 2, "--key-file"),
    ];
    for (file, key_file, code, says) in cases {
        let target = Carnet::empty();
        let mut args = vec!["restore", file];
        if !key_file.is_empty() {
            args.extend(["--key-file", key_file]);
        }
        let o = target.fails_once(code, &args);
        assert!(o.stderr.contains(says), "{file}: {}", o.stderr);
        // Nothing written: no data folder, nothing left beside it.
        assert!(!target.data.exists(), "{file}: the data folder was written");
        let parent = target.data.parent().expect("parent");
        let left: Vec<_> = std::fs::read_dir(parent)
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains("restoring"))
            .collect();
        assert!(left.is_empty(), "{file}: {left:?}");
    }
    // A replica protected by a passphrase takes it back from CARNET_PASSPHRASE, and only it.
    let mut locked = Carnet::empty();
    locked.set_env("CARNET_PASSPHRASE", "correct horse battery (synthetic)");
    locked.ok(&["init", "--role", "site", "--site-id", "11"]);
    let locked_backup = text(&locked.path("locked.backup"));
    locked.ok(&["backup", "-o", &locked_backup]);
    let mut target = Carnet::empty();
    target.set_env("CARNET_PASSPHRASE", "wrong horse (synthetic)");
    let o = target.fails_once(2, &["restore", &locked_backup]);
    assert!(o.stderr.contains("wrong passphrase"), "{}", o.stderr);
    assert!(!target.data.exists());
    target.set_env("CARNET_PASSPHRASE", "correct horse battery (synthetic)");
    target.ok(&["restore", &locked_backup]);
    assert!(!target.data.join("master.key").exists());
    target.ok(&["audit", "verify"]);
    // A folder holding anything is never restored over.
    let busy = Carnet::site(9, None);
    let o = busy.fails_once(2, &["restore", &backup, "--key-file", &key]);
    assert!(o.stderr.contains("not empty"), "{}", o.stderr);
    busy.ok(&["audit", "verify"]);
    // The good one, into an empty folder, restores and verifies.
    let fresh = Carnet::empty();
    std::fs::create_dir(&fresh.data).expect("empty folder");
    fresh.ok(&["restore", &backup, "--key-file", &key]);
    fresh.ok(&["audit", "verify"]);
    assert_eq!(
        fresh.json(&["pro", "list"]).as_array().map(Vec::len),
        Some(1)
    );
}
