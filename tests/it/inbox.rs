//! The inbox as a clinic's IT staff meet it: `carnet inbox list` and `carnet inbox retry` with
//! and without the daemon, files alone past the grace period in `carnet sync status`, and a
//! refusal's fix followed to the end through a running daemon.

use std::fs;
use std::time::{Duration, SystemTime};

use crate::daemon::{enrolled_site, free_port, start_daemon, stop, sync_until_ok, wait_for_socket};
use crate::service::wait_for_status;
use crate::support::*;

/// A refused pair as the daemon leaves it in `rejected/`.
pub(crate) fn refused(site: &Carnet, name: &str) {
    let rejected = site.data.join("inbox/rejected");
    fs::create_dir_all(&rejected).expect("rejected");
    fs::write(rejected.join(name), "synthetic document").expect("doc");
    fs::write(rejected.join(format!("{name}.carnet.json")), "{}").expect("sidecar");
    fs::write(
        rejected.join(format!("{name}.error.txt")),
        format!("the sidecar is not valid: missing field `ins`\nfix: correct the sidecar (rejected/{name}.carnet.json, or in the software that wrote it), then `carnet inbox retry {name}`\n"),
    )
    .expect("error");
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn inbox_list_and_retry_without_a_daemon() {
    let site = Carnet::site(7, None);
    let empty = site.json(&["inbox", "list"]);
    assert_eq!(
        empty,
        serde_json::json!({"rejected": [], "orphans": [], "unclaimed": []})
    );
    assert!(
        site.ok(&["inbox", "list"])
            .stdout
            .contains("rejected: none")
    );

    refused(&site, "cr.pdf");
    let list = site.json(&["inbox", "list"]);
    let entry = &list["rejected"][0];
    assert_eq!(entry["name"], "cr.pdf", "{list}");
    assert_eq!(entry["sidecar"], true, "{list}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the sidecar is not valid")),
        "{list}"
    );
    assert!(
        entry["fix"]
            .as_str()
            .is_some_and(|f| f.ends_with("`carnet inbox retry cr.pdf`")),
        "{list}"
    );
    let human = site.ok(&["inbox", "list"]).stdout;
    assert!(
        human.contains("cr.pdf and its sidecar") && human.contains("fix: correct the sidecar"),
        "{human}"
    );

    // Refused, changing nothing: a path, an unknown name.
    let rejected = site.data.join("inbox/rejected");
    let before = names(&rejected);
    for bad in ["../cr.pdf", "rejected/cr.pdf", "..", ".cr.pdf"] {
        let o = site.fails(2, &["inbox", "retry", bad]);
        assert!(
            o.stderr.contains("not the name of a refused file"),
            "{bad}: {}",
            o.stderr
        );
    }
    let o = site.fails(4, &["inbox", "retry", "other.pdf"]);
    assert!(
        o.stderr.contains("`carnet inbox list` shows them"),
        "{}",
        o.stderr
    );
    assert_eq!(names(&rejected), before);

    let retried = site.json(&["inbox", "retry", "cr.pdf"]);
    assert_eq!(
        retried,
        serde_json::json!({"moved": ["cr.pdf", "cr.pdf.carnet.json"], "via_daemon": false})
    );
    assert!(names(&rejected).is_empty(), "its error file went too");
    assert_eq!(
        names(&site.data.join("inbox")),
        vec!["cr.pdf", "cr.pdf.carnet.json"]
    );
    assert_eq!(site.json(&["inbox", "list"]), empty);

    // The host has no inbox.
    let host = Carnet::host();
    let o = host.fails(2, &["inbox", "list"]);
    assert!(o.stderr.contains("the inbox is a site's"), "{}", o.stderr);
}

/// A file alone for longer than the grace period is reported by `sync status` (its name and
/// what it waits for), one that just arrived is not; neither is logged anywhere else.
#[test]
fn sync_status_reports_files_alone_past_the_grace_period() {
    let site = Carnet::site(8, None);
    let inbox = site.data.join("inbox");
    fs::create_dir_all(&inbox).expect("inbox");
    let status = site.json(&["sync", "status"]);
    assert_eq!(
        status["inbox"],
        serde_json::json!({"rejected": 0, "orphans": [], "unclaimed": []}),
        "{status}"
    );
    let old = fs::File::create(inbox.join("lost.pdf")).expect("file");
    old.set_modified(SystemTime::now() - Duration::from_secs(11 * 60))
        .expect("mtime");
    fs::write(inbox.join("fresh.pdf"), "synthetic").expect("fresh");
    refused(&site, "cr.pdf");
    let status = site.json(&["sync", "status"]);
    let orphans = &status["inbox"]["orphans"];
    assert_eq!(orphans.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(orphans[0]["name"], "lost.pdf", "{status}");
    assert_eq!(orphans[0]["missing"], "sidecar", "{status}");
    assert_eq!(status["inbox"]["rejected"], 1, "{status}");
    let human = site.ok(&["sync", "status"]).stdout;
    assert!(
        human.contains("inbox: 1 file(s) without the other half of their pair for 10 minutes")
            && human.contains("lost.pdf since")
            && human.contains("its sidecar has not arrived")
            && human.contains("inbox: 1 refused file(s)")
            && !human.contains("fresh.pdf"),
        "{human}"
    );
}

/// Through a running daemon: a pair whose author is not registered here is refused with the
/// fix (`carnet pro add …`, then `carnet inbox retry NAME`); following it stores the document,
/// and only its receipt stays: nothing in clear in the inbox. A pair an older version left in
/// clear in `done/` becomes its receipt when the daemon starts.
#[test]
fn a_refusals_fix_followed_through_the_daemon_stores_the_pair() {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let site = enrolled_site(&host, &address, &[DOCTOR]);
    site.pro(DOCTOR, "medecin");
    let _host_daemon = start_daemon(&host);
    let mut site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    sync_until_ok(&site, Duration::from_secs(20));
    let inbox = site.data.join("inbox");
    let body = "synthetic report from the inbox";
    let sidecar = format!(
        r#"{{"ins": "{ins}", "author_rpps": "{PHARMACIST}", "class": "10", "type": "11488-4",
            "title": "CR synthétique", "unique_id": "urn:test:it-inbox", "format": "text/plain"}}"#
    );
    fs::write(inbox.join("cr.txt.carnet.json.part"), &sidecar).expect("sidecar");
    fs::write(inbox.join("cr.txt.part"), body).expect("doc");
    fs::rename(inbox.join("cr.txt.part"), inbox.join("cr.txt")).expect("doc");
    fs::rename(
        inbox.join("cr.txt.carnet.json.part"),
        inbox.join("cr.txt.carnet.json"),
    )
    .expect("sidecar");
    wait_for_status(&site, Duration::from_secs(20), "the refusal", |s| {
        s["inbox"]["rejected"] == 1
    });
    let list = site.json(&["inbox", "list"]);
    let fix = list["rejected"][0]["fix"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        fix.contains(&format!(
            "`carnet pro add --rpps {PHARMACIST} --profession PROFESSION`"
        )) && fix.ends_with("then `carnet inbox retry cr.txt`"),
        "{list}"
    );

    site.pro(PHARMACIST, "pharmacien");
    let retried = site.json(&["inbox", "retry", "cr.txt"]);
    assert_eq!(retried["via_daemon"], true, "{retried}");
    let receipt = inbox.join("done/cr.txt.receipt.json");
    wait_for_status(&site, Duration::from_secs(20), "the document stored", |s| {
        s["inbox"]["rejected"] == 0 && receipt.exists()
    });
    let receipt: serde_json::Value =
        serde_json::from_slice(&fs::read(&receipt).expect("receipt")).expect("json");
    let id = receipt["document"].as_str().expect("the document's id");
    assert_eq!(site.body(id, PHARMACIST), body.as_bytes());
    assert_eq!(
        names(&inbox),
        Vec::<String>::new(),
        "the pair left the inbox"
    );
    assert_eq!(names(&inbox.join("done")), vec!["cr.txt.receipt.json"]);
    assert!(names(&inbox.join("rejected")).is_empty());
    for f in files_under(&inbox) {
        let bytes = fs::read(&f).expect("read");
        for clear in [body, ins.as_str(), "CR synthétique", "urn:test:it-inbox"] {
            assert!(
                !contains(&bytes, clear.as_bytes()),
                "{clear} in clear in {}",
                f.display()
            );
        }
    }

    // What an older version left: the pair itself, in done/.
    assert_eq!(stop(&mut site_daemon), Some(0));
    fs::write(inbox.join("done/old.txt"), body).expect("doc");
    fs::write(inbox.join("done/old.txt.carnet.json"), &sidecar).expect("sidecar");
    let _site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    let receipt = inbox.join("done/old.txt.receipt.json");
    let left = inbox.join("done/old.txt.carnet.json");
    wait_for_status(&site, Duration::from_secs(20), "done/ tidied", |_| {
        receipt.exists() && !left.exists()
    });
    assert_eq!(
        names(&inbox.join("done")),
        vec!["cr.txt.receipt.json", "old.txt.receipt.json"]
    );
    let receipt: serde_json::Value =
        serde_json::from_slice(&fs::read(&receipt).expect("receipt")).expect("json");
    assert_eq!(receipt["document"], id, "{receipt}");
    assert_eq!(receipt["already_stored"], true, "{receipt}");
}
