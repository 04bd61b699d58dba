//! Dossiers opened at a site, through real daemons: a site cut off from the host opens a
//! dossier for a patient it does not hold, writes in it at once, holds everything back while
//! the identity is provisional, and after `dossier qualify` the host merges it into the dossier
//! it already has; two sites opening the same unknown INS converge to one dossier.

use crate::convergence::{consultation, network};
use crate::daemon::{start_daemon, stop, sync_until_ok, wait_for_socket};
use crate::support::*;

use std::time::Duration;

/// Opens the dossier of `ins` at `site` as `DOCTOR`, qualified or not; answers the JSON.
fn open_here(site: &Carnet, ins: &str, first_names: &str, qualified: bool) -> serde_json::Value {
    let mut args = vec![
        "dossier",
        "create",
        "--ins",
        ins,
        "--birth-name",
        "VALLEE",
        "--first-names",
        first_names,
        "--birth-date",
        "1990-01-01",
        "--sex",
        "M",
        "--as",
        DOCTOR,
    ];
    if qualified {
        args.push("--qualified");
    }
    site.json(&args)
}

fn host_documents(host: &Carnet, ins: &str) -> u64 {
    host.json(&["dossier", "show", ins])["documents"]
        .as_u64()
        .expect("documents")
}

#[test]
fn a_site_cut_off_opens_a_dossier_holds_it_until_qualified_and_the_host_merges_it() {
    let mut n = network();
    let site = &n.sites[0];
    // The host holds a dossier the site has never seen; the link is down.
    assert_eq!(stop(&mut n.host_daemon), Some(0));
    let b = ins_b();
    n.host.dossier(&b, "VALLEE", "Jean");
    let opened = open_here(site, &b, "Jean", false);
    assert_eq!(opened["identity"]["status"], "provisional");
    assert_eq!(opened["local"]["held"], 2, "{opened}");
    let note = consultation(site, &b, b"found in the valley (synthetic)");
    assert_eq!(site.body(&note, DOCTOR), b"found in the valley (synthetic)");
    let status = site.json(&["sync", "status"]);
    assert_eq!(status["held"][0]["ins"], b.as_str(), "{status}");
    assert_eq!(status["held"][0]["changes"], 3, "{status}");
    let human = site.ok(&["sync", "status"]).stdout;
    assert!(human.contains("dossier qualify"), "{human}");

    // The link returns: nothing of a provisional identity leaves.
    n.host_daemon = start_daemon(&n.host);
    wait_for_socket(&n.host);
    sync_until_ok(site, Duration::from_secs(30));
    assert_eq!(host_documents(&n.host, &b), 0);

    site.fails(2, &["dossier", "qualify", &b, "--as", "not-an-rpps"]);
    site.ok(&["dossier", "qualify", &b, "--as", DOCTOR]);
    sync_until_ok(site, Duration::from_secs(30));
    sync_until_ok(site, Duration::from_secs(30));
    assert_eq!(
        host_documents(&n.host, &b),
        1,
        "merged into the host's dossier"
    );
    let here = site.json(&["dossier", "show", &b, "--as", DOCTOR]);
    assert!(here["local"].is_null(), "{here}");
    assert!(here["head_seq"].as_u64() > Some(0), "{here}");
    assert_eq!(here["identity"]["first_names"], "Jean");
    assert_eq!(here["documents"], 1, "nothing lost, nothing doubled");
    assert_eq!(site.body(&note, DOCTOR), b"found in the valley (synthetic)");
    let at_host = n.host.audit(&b);
    for action in [
        "dossier-opened-here",
        "identity-qualified",
        "dossier-proposal-merged",
    ] {
        assert!(
            at_host.iter().any(|e| e["action"] == action),
            "{action} in the host's trace: {at_host:?}"
        );
    }
}

#[test]
fn two_sites_opening_the_same_unknown_ins_converge_to_one_dossier() {
    let n = network();
    let b = ins_b();
    open_here(&n.sites[0], &b, "Jean", true);
    open_here(&n.sites[1], &b, "Jean Paul", true);
    let x = consultation(&n.sites[0], &b, b"seen at A (synthetic)");
    let y = consultation(&n.sites[1], &b, b"seen at B (synthetic)");
    // Connected sites push as they write: whichever reaches the host first is adopted, the
    // other merged into it (the store's tests drive both orders).
    for s in [&n.sites[1], &n.sites[0], &n.sites[1]] {
        sync_until_ok(s, Duration::from_secs(30));
    }
    let host = n.host.json(&["dossier", "show", &b]);
    let adopted = host["identity"]["first_names"].clone();
    assert!(adopted == "Jean" || adopted == "Jean Paul", "{host}");
    assert_eq!(host["documents"], 2);
    assert_eq!(
        n.host
            .json(&["dossier", "list"])
            .as_array()
            .map(|a| a.iter().filter(|d| d["ins"] == b.as_str()).count()),
        Some(1)
    );
    for (site, own) in [(&n.sites[0], &x), (&n.sites[1], &y)] {
        let here = site.json(&["dossier", "show", &b, "--as", DOCTOR]);
        assert_eq!(
            here["identity"]["first_names"], adopted,
            "the host's head: {here}"
        );
        assert!(here["local"].is_null());
        assert!(!site.body(own, DOCTOR).is_empty());
    }
}

#[test]
fn a_dossier_the_host_refuses_leaves_its_site_and_what_was_written_waits_in_quarantine_with_why() {
    let mut n = network();
    let site = &n.sites[0];
    // Cut off, the site opens a dossier as DOCTOR, whom the host meanwhile unbinds.
    assert_eq!(stop(&mut n.host_daemon), Some(0));
    for enrolled in n.host.json(&["pki", "list"]).as_array().expect("sites") {
        let id = enrolled["site_id"].to_string();
        n.host
            .ok(&["pki", "unbind", "--site", &id, "--rpps", DOCTOR]);
    }
    let b = ins_b();
    open_here(site, &b, "Jean", true);
    let note = consultation(site, &b, b"written before the host answered (synthetic)");
    n.host_daemon = start_daemon(&n.host);
    wait_for_socket(&n.host);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while site.run(&["dossier", "show", &b, "--as", DOCTOR]).code == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the site still holds the refused dossier"
        );
        sync_until_ok(site, Duration::from_secs(30));
    }
    assert_ne!(
        n.host.run(&["dossier", "show", &b]).code,
        0,
        "nothing adopted"
    );
    let kept = site.json(&["quarantine", "show", &note]);
    let reason = kept["reason"].as_str().expect("reason");
    assert!(
        reason.contains("did not take the dossier opened here")
            && reason.contains("not a professional the host binds"),
        "{kept}"
    );
    assert!(
        site.json(&["sync", "status"])["held"]
            .as_array()
            .is_none_or(|h| h.is_empty())
    );
    // The site's own account of it reaches the host.
    sync_until_ok(site, Duration::from_secs(30));
    assert!(
        n.host
            .audit(&b)
            .iter()
            .any(|e| e["action"] == "dossier-refused-by-host"),
        "the site traced the drop"
    );
}
