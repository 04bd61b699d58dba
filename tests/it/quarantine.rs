//! The quarantine with a way out, through the real binaries and daemons: a document a site
//! wrote for a dossier the host closed meanwhile is kept, listed with its reason, read by its
//! author alone (every attempt traced), and refiled into an open dossier, which the host takes;
//! refiled into a dossier closed meanwhile, it comes back to quarantine, nothing lost.

use crate::convergence::{consultation, network, start_site, sync_all};
use crate::daemon::{stop, sync_until_ok};
use crate::support::*;

use serde_json::Value;
use std::time::{Duration, Instant};

/// The quarantine as `quarantine list --json` shows it, by id.
fn listed(site: &Carnet) -> std::collections::BTreeMap<String, Value> {
    site.json(&["quarantine", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|q| (q["id"].as_str().expect("id").to_string(), q.clone()))
        .collect()
}

/// Syncs `site` until `state` is the quarantine state of `id`, bounded.
fn sync_until_state(site: &Carnet, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = site.json(&["quarantine", "show", id]);
        if shown["state"] == state {
            return shown;
        }
        assert!(Instant::now() < deadline, "never {state}: {shown}");
        sync_until_ok(site, Duration::from_secs(30));
    }
}

/// Creates a dossier at the host with `DOCTOR` treating it (so it is in the sites' scope).
fn treated_dossier(host: &Carnet, ins: &str, name: &str) {
    host.dossier(ins, name, "Alix");
    host.ok(&[
        "grant",
        "add",
        "--dossier",
        ins,
        "--rpps",
        DOCTOR,
        "--treating",
    ]);
}

#[test]
fn a_quarantined_document_is_read_by_its_author_alone_and_refiled_into_an_open_dossier() {
    let mut n = network();
    let closed = n.ins.clone();
    let (open, closing) = (ins_b(), ins("2991299123987"));
    treated_dossier(&n.host, &open, "OUVERT");
    treated_dossier(&n.host, &closing, "BIENTOTFERME");
    sync_all(&n);
    let site = &n.sites[1];
    site.pro(NURSE, "infirmier");
    for d in [&open, &closing] {
        site.ok(&["dossier", "show", d, "--as", DOCTOR]);
    }

    // Offline, the site writes two documents; the host closes their dossier meanwhile.
    assert_eq!(stop(&mut n.site_daemons[1]), Some(0));
    let late = consultation(site, &closed, b"late report (synthetic)");
    let later = consultation(site, &closed, b"later report (synthetic)");
    n.host
        .ok(&["dossier", "close", &closed, "--reason", "décès (synthetic)"]);
    n.site_daemons[1] = start_site(site);
    sync_until_ok(site, Duration::from_secs(30));
    sync_until_ok(site, Duration::from_secs(30));

    // Listed through the daemon, with dossier, author, class, type, reason and state.
    let q = listed(site);
    assert_eq!(
        q.keys().collect::<Vec<_>>(),
        {
            let mut ids = vec![&late, &later];
            ids.sort();
            ids
        },
        "{q:?}"
    );
    for entry in q.values() {
        assert_eq!(entry["document"]["ins"], closed.as_str(), "{entry}");
        assert_eq!(entry["document"]["author"]["rpps"], DOCTOR, "{entry}");
        assert_eq!(entry["document"]["class"], 10, "{entry}");
        assert_eq!(entry["document"]["type_code"], CONSULTATION, "{entry}");
        assert!(
            entry["reason"].as_str().is_some_and(|r| r.contains("host")),
            "{entry}"
        );
        assert_eq!(entry["state"], "held", "{entry}");
    }
    let text = site.ok(&["quarantine", "list"]).stdout;
    assert!(text.contains(&late) && text.contains("held"), "{text}");

    // Its author reads it; another professional of the site, an unknown RPPS and the site's
    // operator are refused (exit 3); every attempt is traced on the (purged) dossier.
    let out = site.path("late.txt");
    site.ok(&[
        "quarantine",
        "get",
        &late,
        "--as",
        DOCTOR,
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(
        std::fs::read(&out).expect("written"),
        b"late report (synthetic)"
    );
    for who in [NURSE, STRANGER] {
        let refused = site.fails(3, &["quarantine", "get", &late, "--as", who]);
        assert!(
            !contains(&refused.raw, b"late report"),
            "{}",
            refused.stdout
        );
    }
    site.fails(3, &["quarantine", "get", &late]);
    // The dossier is purged at the site: its trace is read at the host, once the site synced.
    sync_until_ok(site, Duration::from_secs(30));
    let reads: Vec<(String, bool)> = n
        .host
        .audit(&closed)
        .iter()
        .filter(|e| e["doc"] == late.as_str() && e["action"] == "read")
        .map(|e| {
            (
                e["who"].as_str().expect("actor").to_string(),
                e["allowed"].as_bool().expect("allowed"),
            )
        })
        .collect();
    // (`fails` runs each refused command twice: human and JSON output.)
    assert_eq!(reads.iter().filter(|(_, ok)| *ok).count(), 1, "{reads:?}");
    assert!(
        reads.iter().any(|(a, ok)| a.contains(DOCTOR) && *ok),
        "{reads:?}"
    );
    assert!(
        reads.iter().any(|(a, ok)| a.contains(NURSE) && !ok),
        "{reads:?}"
    );
    assert!(
        reads.iter().any(|(a, ok)| a.contains(STRANGER) && !ok),
        "{reads:?}"
    );

    // Only the author refiles. Refiled into the open dossier, the host takes it; the
    // quarantined copy stays, showing it taken; it cannot be refiled twice.
    site.fails(
        3,
        &[
            "quarantine",
            "refile",
            &late,
            "--dossier",
            &open,
            "--as",
            NURSE,
        ],
    );
    let refiled = site.json(&[
        "quarantine",
        "refile",
        &late,
        "--dossier",
        &open,
        "--as",
        DOCTOR,
    ]);
    let new = refiled["refiled_as"].as_str().expect("new id").to_string();
    assert_ne!(new, late);
    let shown = sync_until_state(site, &late, "taken");
    assert_eq!(shown["refiled"]["doc"], new.as_str(), "{shown}");
    assert_eq!(shown["refiled"]["ins"], open.as_str(), "{shown}");
    assert_eq!(n.host.body(&new, DOCTOR), b"late report (synthetic)");
    let at_host = n.host.json(&["doc", "get", &new, "--as", DOCTOR]);
    assert_eq!(at_host["ins"], open.as_str(), "{at_host}");
    site.fails(
        2,
        &[
            "quarantine",
            "refile",
            &late,
            "--dossier",
            &open,
            "--as",
            DOCTOR,
        ],
    );
    sync_until_ok(site, Duration::from_secs(30));
    assert!(
        n.host
            .audit(&closed)
            .iter()
            .any(|e| e["doc"] == late.as_str() && e["action"] == "quarantine-refile"),
        "the refiling is traced on the document's dossier"
    );

    // Offline again, the site refiles the other one into a dossier the host closed
    // meanwhile: the host refuses it, and it comes back to quarantine, nothing lost.
    assert_eq!(stop(&mut n.site_daemons[1]), Some(0));
    n.host.ok(&[
        "dossier",
        "close",
        &closing,
        "--reason",
        "fermeture (synthetic)",
    ]);
    let again = site.json(&[
        "quarantine",
        "refile",
        &later,
        "--dossier",
        &closing,
        "--as",
        DOCTOR,
    ]);
    let again = again["refiled_as"].as_str().expect("new id").to_string();
    assert_eq!(
        site.json(&["quarantine", "show", &later])["state"],
        "waiting"
    );
    n.site_daemons[1] = start_site(site);
    sync_until_state(site, &later, "returned");
    let q = listed(site);
    let back = &q[&again];
    assert_eq!(back["refile_of"], later.as_str(), "{back}");
    assert_eq!(back["document"]["ins"], closing.as_str(), "{back}");
    assert_eq!(back["state"], "held", "{back}");
    assert_eq!(q[&late]["state"], "taken");
    assert_eq!(
        site.ok(&["quarantine", "get", &again, "--as", DOCTOR]).raw,
        b"later report (synthetic)"
    );

    // Without the daemon, the same answers from the data folder.
    assert_eq!(stop(&mut n.site_daemons[1]), Some(0));
    let alone = listed(site);
    assert_eq!(
        alone.keys().collect::<Vec<_>>(),
        q.keys().collect::<Vec<_>>()
    );
    assert_eq!(alone[&later]["state"], "returned");
    assert_eq!(
        site.ok(&["quarantine", "get", &later, "--as", DOCTOR]).raw,
        b"later report (synthetic)"
    );
    site.fails(3, &["quarantine", "get", &later, "--as", NURSE]);
}
