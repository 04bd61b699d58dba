//! A host and two sites as real daemons: what both sides write offline converges; restrictive
//! changes win; concurrent replacements are both kept and reported; revocation, block and
//! closure at the host reach the sites within one sync; while connected, changes reach the
//! other replicas as they happen, with nobody asking for a sync.

use crate::daemon::{
    Daemon, host_and_two_sites, start_daemon, stop, sync_until_ok, wait_for_socket,
};
use crate::support::*;

use std::time::Duration;

/// The host (daemon running), its address, and two enrolled sites with their daemons, each
/// with `DOCTOR` registered and synced once: the dossier of `ins` is in both scopes.
pub(crate) struct Network {
    pub(crate) host: Carnet,
    pub(crate) host_daemon: Daemon,
    pub(crate) sites: [Carnet; 2],
    pub(crate) site_daemons: [Daemon; 2],
    pub(crate) ins: String,
}

/// The sites' rounds while nothing happens: far apart, so only the live phase (or `sync now`)
/// moves anything during a test.
const QUIET_ROUNDS: &str = "sync_every = 600";

/// Starts a site's daemon with `QUIET_ROUNDS`.
pub(crate) fn start_site(site: &Carnet) -> Daemon {
    let toml = site.data.join("carnet.toml");
    let text = std::fs::read_to_string(&toml).expect("carnet.toml");
    let text = text.replace("sync_every = 10", QUIET_ROUNDS);
    assert!(text.contains(QUIET_ROUNDS), "{text}");
    std::fs::write(&toml, text).expect("carnet.toml");
    let daemon = start_daemon(site);
    wait_for_socket(site);
    daemon
}

pub(crate) fn network() -> Network {
    let (host, ins, sites) = host_and_two_sites();
    let host_daemon = start_daemon(&host);
    let site_daemons = [start_site(&sites[0]), start_site(&sites[1])];
    for s in &sites {
        sync_until_ok(s, Duration::from_secs(20));
        assert!(
            s.json(&["dossier", "show", &ins, "--as", "holder"])["head"].is_object()
                || s.ok(&["dossier", "show", &ins, "--as", "holder"]).code == 0
        );
    }
    Network {
        host,
        host_daemon,
        sites,
        site_daemons,
        ins,
    }
}

/// Files a consultation report as `DOCTOR`; answers its id.
pub(crate) fn consultation(at: &Carnet, ins: &str, text: &[u8]) -> String {
    at.add_doc(ins, DOCTOR, "10", CONSULTATION, "CR", text)
}

/// Syncs both sites twice (each sees what the other pushed).
pub(crate) fn sync_all(n: &Network) {
    for _ in 0..2 {
        for s in &n.sites {
            sync_until_ok(s, Duration::from_secs(30));
        }
    }
}

/// The documents of the dossier as `DOCTOR` lists them, by id.
fn docs(c: &Carnet, ins: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    c.json(&["doc", "list", "--dossier", ins, "--as", DOCTOR])
        .as_array()
        .expect("list")
        .iter()
        .map(|d| (d["id"].as_str().expect("id").to_string(), d.clone()))
        .collect()
}

#[test]
fn offline_writes_converge_restrictions_win_and_double_replacements_are_reported() {
    let mut n = network();
    let ins = n.ins.clone();
    let d = consultation(&n.host, &ins, b"original (synthetic)");
    n.host.ok(&["doc", "mask", &d, "--as", DOCTOR]);
    sync_all(&n);

    // The link goes down; everyone goes on working.
    assert_eq!(stop(&mut n.host_daemon), Some(0));
    let x = consultation(&n.sites[0], &ins, b"written at A (synthetic)");
    let y = consultation(&n.sites[1], &ins, b"written at B (synthetic)");
    let replace = |site: &Carnet, text: &[u8]| -> String {
        let file = site.write(&format!("r-{}.txt", unique()), text);
        let args = ["doc", "replace", &d, "--as", DOCTOR, "--class", "10"];
        let more = ["--type", CONSULTATION, "--title", "CR v2", &file];
        let out = site.json(&[&args[..], &more[..]].concat());
        out["id"].as_str().expect("id").to_string()
    };
    let d1 = replace(&n.sites[0], b"replacement from A (synthetic)");
    let d2 = replace(&n.sites[1], b"replacement from B (synthetic)");
    // Concurrently: the host unmasks (no daemon: carnet opens its store), site A masks again.
    n.host.ok(&["doc", "unmask", &d, "--as", DOCTOR]);
    n.sites[0].ok(&["doc", "mask", &d, "--as", DOCTOR]);

    // The link returns.
    n.host_daemon = start_daemon(&n.host);
    wait_for_socket(&n.host);
    sync_all(&n);
    let at_host = docs(&n.host, &ins);
    for place in [&n.host, &n.sites[0], &n.sites[1]] {
        let seen = docs(place, &ins);
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            at_host.keys().collect::<Vec<_>>(),
            "every replica holds the same documents"
        );
        for id in [&d, &x, &y, &d1, &d2] {
            assert!(seen.contains_key(id.as_str()), "{id} missing");
        }
        let orig = &seen[d.as_str()];
        assert_eq!(
            orig["confidentiality"][0], "MASQUE_PS",
            "restrictive wins: {orig}"
        );
        assert_eq!(orig["conflict"], true, "two replacements reported: {orig}");
        assert_eq!(orig["availability"], "deprecated");
        assert_eq!(orig["replaced_by"].as_array().map(Vec::len), Some(2));
        assert_eq!(place.body(&d2, DOCTOR), b"replacement from B (synthetic)");
    }
    for s in &n.sites {
        let status = s.json(&["sync", "status"]);
        assert_eq!(
            status["conflicts"],
            serde_json::json!([d]),
            "named: {status}"
        );
        assert_eq!(status["pending"], 0, "{status}");
    }
    // Each replica shows the conflict's branches, who replaced it and where: through its
    // daemon at a site, the host with its daemon too.
    for place in [&n.host, &n.sites[0], &n.sites[1]] {
        let list = place.json(&["conflicts", "list", "--dossier", &ins]);
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list[0]["doc"], d.as_str());
        let branches = list[0]["branches"].as_array().expect("branches");
        let mut ids: Vec<&str> = branches
            .iter()
            .map(|b| b["doc"].as_str().expect("doc"))
            .collect();
        ids.sort();
        let mut expect = vec![d1.as_str(), d2.as_str()];
        expect.sort();
        assert_eq!(ids, expect, "{list}");
        assert!(
            branches
                .iter()
                .all(|b| b["written"]["author"]["rpps"] == DOCTOR),
            "{list}"
        );
        assert_ne!(
            branches[0]["written"]["site_id"], branches[1]["written"]["site_id"],
            "{list}"
        );
        let text = place.ok(&["conflicts", "list"]).stdout;
        assert!(
            text.contains(&d) && text.contains(&d1) && text.contains(&d2),
            "{text}"
        );
    }
    let other = n.sites[0].json(&["conflicts", "list", "--dossier", &ins_b()]);
    assert_eq!(other, serde_json::json!([]));

    // A doctor at site A keeps B's replacement (not a branch: refused); every replica follows.
    n.sites[0].fails(
        2,
        &["conflicts", "resolve", &d, "--keep", &x, "--as", DOCTOR],
    );
    n.sites[0].ok(&["conflicts", "resolve", &d, "--keep", &d2, "--as", DOCTOR]);
    sync_all(&n);
    for place in [&n.host, &n.sites[0], &n.sites[1]] {
        assert_eq!(
            place.json(&["conflicts", "list"]),
            serde_json::json!([]),
            "resolved everywhere"
        );
        let orig = &docs(place, &ins)[d.as_str()];
        assert_eq!(orig["kept"], d2.as_str(), "{orig}");
        assert_eq!(orig["conflict"], false, "{orig}");
    }
    let status = n.sites[1].json(&["sync", "status"]);
    assert_eq!(status["conflicts"], serde_json::json!([]), "{status}");
    n.sites[1].fails(
        2,
        &["conflicts", "resolve", &d, "--keep", &d1, "--as", DOCTOR],
    );
}

/// Polls `what` until it holds, for at most `within`.
fn eventually(within: Duration, what: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    what()
}

#[test]
fn changes_flow_to_connected_sites_as_they_happen() {
    let n = network();
    let ins = n.ins.clone();
    // Nobody runs `sync now`, and the sites' own rounds are ten minutes apart: what moves
    // below moves through the live connections (a push as the change is made, a poke from
    // the host to the other site).
    let at_a = consultation(&n.sites[0], &ins, b"written at A, live (synthetic)");
    let arrived = |c: &Carnet, id: &str, body: &[u8]| {
        let got = c.run(&["doc", "get", id, "--as", DOCTOR]);
        got.code == 0 && got.raw == body
    };
    assert!(
        eventually(Duration::from_secs(10), || arrived(
            &n.sites[1],
            &at_a,
            b"written at A, live (synthetic)"
        )),
        "site A's document never reached site B by itself"
    );
    assert_eq!(
        n.host.body(&at_a, DOCTOR),
        b"written at A, live (synthetic)"
    );
    let at_host = consultation(&n.host, &ins, b"written at the host, live (synthetic)");
    for s in &n.sites {
        assert!(
            eventually(Duration::from_secs(10), || arrived(
                s,
                &at_host,
                b"written at the host, live (synthetic)"
            )),
            "the host's document never reached a site by itself"
        );
    }
    let status = n.sites[0].json(&["sync", "status"]);
    assert_eq!(status["link"]["connected"], true, "{status}");
}

#[test]
fn revocation_block_and_closure_reach_the_sites_within_one_sync() {
    let mut n = network();
    let ins = n.ins.clone();
    let d = consultation(&n.host, &ins, b"at the host (synthetic)");
    sync_all(&n);
    for s in &n.sites {
        assert_eq!(s.body(&d, DOCTOR), b"at the host (synthetic)");
    }
    // Site B goes offline.
    assert_eq!(stop(&mut n.site_daemons[1]), Some(0));
    // Blocked at the host (once another médecin traitant is designated): one sync (the live
    // one, or this) and site A purges and refuses.
    n.host.ok(&[
        "grant",
        "add",
        "--dossier",
        &ins,
        "--rpps",
        STRANGER,
        "--medecin-traitant",
    ]);
    n.host
        .ok(&["grant", "block", "--dossier", &ins, "--rpps", DOCTOR]);
    sync_until_ok(&n.sites[0], Duration::from_secs(30));
    let refused = n.sites[0].run(&["doc", "get", &d, "--as", DOCTOR]);
    assert!(refused.code == 3 || refused.code == 4, "{refused:?}");
    let shown = n.sites[0].run(&["dossier", "show", &ins, "--as", "holder"]);
    assert_eq!(shown.code, 4, "purged at A: {shown:?}");
    // Site B, offline, writes for the dossier; the host closes it; when B's link returns it
    // purges its copy (with a receipt) and its new document is kept in quarantine.
    let late = consultation(&n.sites[1], &ins, b"late (synthetic)");
    n.host
        .ok(&["dossier", "close", &ins, "--reason", "décès (synthetic)"]);
    n.site_daemons[1] = start_site(&n.sites[1]);
    sync_until_ok(&n.sites[1], Duration::from_secs(30));
    sync_until_ok(&n.sites[1], Duration::from_secs(30));
    let status = n.sites[1].json(&["sync", "status"]);
    let quarantined: Vec<&str> = status["quarantine"]
        .as_array()
        .expect("quarantine")
        .iter()
        .filter_map(|q| q["id"].as_str())
        .collect();
    assert_eq!(quarantined, vec![late.as_str()], "{status}");
    n.sites[1].fails(4, &["doc", "get", &d, "--as", DOCTOR]);
    // The host holds the receipt of B's purge.
    let shown = n.host.json(&["dossier", "show", &ins]);
    let receipts = shown["purge_receipts"].as_array().expect("receipts");
    assert!(receipts.iter().any(|r| r["site_id"] == 2), "{shown}");
}

#[test]
fn consent_given_in_person_at_a_site_works_at_once_and_becomes_a_grant_only_at_the_host() {
    let n = network();
    let ins = n.ins.clone();
    let site = &n.sites[0];
    let site_id = n.host.json(&["pki", "list"])[0]["site_id"].to_string();
    site.pro(NURSE, "infirmier");
    n.host.pro(NURSE, "infirmier");
    n.host
        .ok(&["pki", "bind", "--site", &site_id, "--rpps", NURSE]);
    let d = consultation(site, &ins, b"soins (synthetic)");
    site.fails(3, &["doc", "get", &d, "--as", NURSE]);
    // A site cannot declare a médecin traitant.
    site.fails(
        2,
        &[
            "grant",
            "add",
            "--dossier",
            &ins,
            "--rpps",
            NURSE,
            "--treating",
        ],
    );
    let pending = site.json(&["grant", "add", "--dossier", &ins, "--rpps", NURSE]);
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(site.body(&d, NURSE), b"soins (synthetic)");
    sync_until_ok(site, Duration::from_secs(30));
    let nurse_grant = |c: &Carnet| {
        let grants = c.json(&["grant", "list", "--dossier", &ins, "--as", "holder"]);
        grants
            .as_array()
            .and_then(|g| g.iter().find(|g| g["rpps"] == NURSE).cloned())
            .map(|g| (g["state"].clone(), g["basis"].clone()))
    };
    // At the host it is a request, never a grant by itself.
    assert_eq!(nurse_grant(&n.host), None);
    let requests = n.host.json(&["requests"]);
    assert_eq!(
        (requests[0]["kind"].clone(), requests[0]["rpps"].clone()),
        ("consent".into(), NURSE.into()),
        "{requests}"
    );
    // The holder's consent confirmed at the host becomes a signed grant at the site.
    n.host
        .ok(&["grant", "add", "--dossier", &ins, "--rpps", NURSE]);
    assert_eq!(n.host.json(&["requests"]), serde_json::json!([]));
    sync_until_ok(site, Duration::from_secs(30));
    assert_eq!(nurse_grant(site), Some(("active".into(), "consent".into())));
}

#[test]
fn after_the_host_restarts_the_first_sync_reconnects() {
    let mut n = network();
    for graceful in [true, false] {
        if graceful {
            assert_eq!(stop(&mut n.host_daemon), Some(0));
        } else {
            // A crash: the host says nothing to the sites.
            n.host_daemon.0.kill().expect("kill");
            n.host_daemon.0.wait().expect("wait");
        }
        n.host_daemon = start_daemon(&n.host);
        wait_for_socket(&n.host);
        // The host is up again: the sites' first `sync now` works, without a second try.
        for s in &n.sites {
            let o = s.run(&["--json", "sync", "now"]);
            assert_eq!(o.code, 0, "{}", o.stderr);
        }
    }
}
