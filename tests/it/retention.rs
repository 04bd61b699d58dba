//! Retention and reopening through real daemons: a closed dossier is archived at the host ten
//! years (`dossier purge` refused before, exit 3) unless its holder asked its deletion; the
//! sites purge their copy and return a receipt; `dossier reopen` brings the archive back to the
//! host and to every site that held it, documents included.

use std::time::{Duration, Instant};

use crate::convergence::{consultation, network, sync_all};
use crate::daemon::sync_until_ok;
use crate::support::*;

/// Syncs `site` until `done` holds, bounded.
fn sync_until(site: &Carnet, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        sync_until_ok(site, Duration::from_secs(30));
    }
}

/// The sites that returned a purge receipt for `ins`, as the host shows them.
fn receipts(host: &Carnet, ins: &str) -> Vec<u64> {
    host.json(&["dossier", "show", ins])["purge_receipts"]
        .as_array()
        .expect("receipts")
        .iter()
        .filter_map(|r| r["site_id"].as_u64())
        .collect()
}

#[test]
fn a_reopened_dossier_comes_back_to_the_sites_that_purged_it() {
    let n = network();
    let ins = n.ins.clone();
    let site = &n.sites[0];
    let written_here = consultation(site, &ins, b"written at the site (synthetic)");
    let written_at_host = consultation(&n.host, &ins, b"written at the host (synthetic)");
    sync_all(&n);
    assert_eq!(
        site.body(&written_at_host, DOCTOR),
        b"written at the host (synthetic)"
    );

    // Closed without a deletion request: archived ten years at the host.
    let closed = n
        .host
        .json(&["dossier", "close", &ins, "--reason", "demande du titulaire"]);
    assert_eq!(closed["status"], "closed", "{closed}");
    assert_eq!(
        closed["closure"]["deletion_requested"],
        serde_json::Value::Null
    );
    let until = closed["closure"]["retention_ends"]
        .as_str()
        .and_then(|t| t.get(..10))
        .expect("retention end")
        .to_string();
    // Every site purges its copy and returns its receipt.
    for s in &n.sites {
        sync_until(s, "the site purged", || {
            s.run(&["dossier", "show", &ins, "--as", "holder"]).code == 4
        });
    }
    sync_all(&n);
    let mut sites = receipts(&n.host, &ins);
    sites.sort();
    assert_eq!(sites.len(), 2, "{sites:?}");
    site.fails(4, &["doc", "get", &written_here, "--as", DOCTOR]);

    // Purging before the ten years is refused, through the host's daemon, naming the date.
    let o = n.host.fails(3, &["dossier", "purge", &ins]);
    assert!(
        o.stderr.contains(&format!("archived until {until}")),
        "{}",
        o.stderr
    );
    n.host
        .fails(3, &["doc", "get", &written_here, "--as", DOCTOR]);

    // Reopened: the host's archive is back at once, and the sites receive it again.
    let reopened = n.host.json(&[
        "dossier",
        "reopen",
        &ins,
        "--reason",
        "le titulaire revient",
    ]);
    assert_eq!(reopened["status"], "active", "{reopened}");
    assert_eq!(reopened["closure"], serde_json::Value::Null);
    assert!(
        receipts(&n.host, &ins).is_empty(),
        "the receipts answered the closure"
    );
    assert_eq!(
        n.host.body(&written_here, DOCTOR),
        b"written at the site (synthetic)"
    );
    for s in &n.sites {
        sync_until(s, "the site holds the dossier again", || {
            s.run(&["doc", "get", &written_here, "--as", DOCTOR]).code == 0
        });
        assert_eq!(
            s.body(&written_here, DOCTOR),
            b"written at the site (synthetic)"
        );
        assert_eq!(
            s.body(&written_at_host, DOCTOR),
            b"written at the host (synthetic)"
        );
        let shown = s.json(&["dossier", "show", &ins, "--as", DOCTOR]);
        assert_eq!(shown["status"], "active", "{shown}");
        // Written after the reopening, it reaches the host as before.
        let later = consultation(s, &ins, b"after the reopening (synthetic)");
        sync_until_ok(s, Duration::from_secs(30));
        assert_eq!(
            n.host.body(&later, DOCTOR),
            b"after the reopening (synthetic)"
        );
    }
    // No stale receipt came back, and someone without a grant is still refused at a site.
    sync_all(&n);
    assert!(receipts(&n.host, &ins).is_empty());
    site.fails(3, &["doc", "get", &written_here, "--as", STRANGER]);
    let actions: Vec<String> = n
        .host
        .audit(&ins)
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect();
    for a in ["dossier-close", "dossier-purge-refused", "dossier-reopen"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }

    // Closed again at the holder's request for deletion: purged at once, everywhere, for good.
    n.host.ok(&[
        "dossier",
        "close",
        &ins,
        "--reason",
        "suppression demandee",
        "--deletion-requested",
    ]);
    let o = n.host.ok(&["dossier", "purge", &ins]);
    assert!(o.stdout.contains("key is destroyed"), "{}", o.stdout);
    for s in &n.sites {
        sync_until(s, "the site purged", || {
            s.run(&["dossier", "show", &ins, "--as", "holder"]).code == 4
        });
    }
    let o = n
        .host
        .fails(3, &["dossier", "reopen", &ins, "--reason", "trop tard"]);
    assert!(o.stderr.contains("was purged"), "{}", o.stderr);
}
