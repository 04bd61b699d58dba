//! Grants through the `carnet` binary: the one médecin traitant of a dossier, and grants that
//! end (`grant add --until`), enforced at a site that no longer hears from the host.

use std::time::{Duration, Instant};

use crate::daemon::{host_and_two_sites, start_daemon, stop, sync_until_ok};
use crate::support::*;

/// The grant of `rpps` in `grant list --dossier ins`.
fn grant_of(c: &Carnet, ins: &str, rpps: &str) -> serde_json::Value {
    c.json(&["grant", "list", "--dossier", ins, "--as", "holder"])
        .as_array()
        .and_then(|l| l.iter().find(|g| g["rpps"] == rpps).cloned())
        .unwrap_or_default()
}

#[test]
fn the_medecin_traitant_is_one_and_stays_until_the_holder_designates_another() {
    let c = Carnet::host();
    c.standard_pros();
    let ins = c.doctor_dossier();
    assert_eq!(grant_of(&c, &ins, DOCTOR)["medecin_traitant"], true);
    // Neither revoked nor blocked, nor made an ordinary grant, while he is the one.
    for args in [
        vec!["grant", "revoke", "--dossier", &ins, "--rpps", DOCTOR],
        vec!["grant", "block", "--dossier", &ins, "--rpps", DOCTOR],
        vec!["grant", "add", "--dossier", &ins, "--rpps", DOCTOR],
        vec![
            "grant",
            "add",
            "--dossier",
            &ins,
            "--rpps",
            DOCTOR,
            "--treating",
        ],
    ] {
        let o = c.fails(3, &args);
        assert!(
            o.stderr
                .contains("the holder must designate another médecin traitant first"),
            "{}",
            o.stderr
        );
    }
    assert_eq!(grant_of(&c, &ins, DOCTOR)["medecin_traitant"], true);
    // The designation has no end.
    c.fails(
        2,
        &[
            "grant",
            "add",
            "--dossier",
            &ins,
            "--rpps",
            SPECIALIST,
            "--medecin-traitant",
            "--until",
            "2199-01-01",
        ],
    );
    // Another is designated: the former one keeps the same rights, and may now be revoked.
    let o = c.ok(&[
        "grant",
        "add",
        "--dossier",
        &ins,
        "--rpps",
        SPECIALIST,
        "--medecin-traitant",
    ]);
    assert!(o.stdout.contains("(médecin traitant)"), "{}", o.stdout);
    let former = grant_of(&c, &ins, DOCTOR);
    assert_eq!(
        (
            &former["state"],
            &former["basis"],
            &former["medecin_traitant"]
        ),
        (
            &"active".into(),
            &"treating".into(),
            &serde_json::Value::Bool(false)
        )
    );
    let list = c.json(&["grant", "list", "--dossier", &ins, "--as", "holder"]);
    let designated: Vec<_> = list
        .as_array()
        .expect("grants")
        .iter()
        .filter(|g| g["medecin_traitant"] == true)
        .map(|g| g["rpps"].clone())
        .collect();
    assert_eq!(designated, vec![serde_json::json!(SPECIALIST)]);
    let human = c
        .ok(&["grant", "list", "--dossier", &ins, "--as", "holder"])
        .stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with(SPECIALIST) && l.ends_with("médecin traitant")),
        "{human}"
    );
    let show = c.ok(&["dossier", "show", &ins]).stdout;
    assert!(
        show.contains(&format!("{SPECIALIST} active (médecin traitant)")),
        "{show}"
    );
    c.ok(&["grant", "revoke", "--dossier", &ins, "--rpps", DOCTOR]);
}

#[test]
fn an_end_is_parsed_strictly_and_never_in_the_past() {
    let c = Carnet::host();
    c.standard_pros();
    let ins = c.doctor_dossier();
    let add = |until: &str| {
        vec![
            "grant".to_string(),
            "add".into(),
            "--dossier".into(),
            ins.clone(),
            "--rpps".into(),
            NURSE.into(),
            "--until".into(),
            until.into(),
        ]
    };
    for (bad, says) in [
        ("2001-01-01", "not in the future"),
        ("2001-01-01T10:00:00Z", "not in the future"),
        ("2199-02-30", "invalid date"),
        ("2199-01-01T10:00", "invalid time"),
        ("tomorrow", "invalid time"),
        ("9999-01-01", "out of range"),
        ("2300-01-01T10:00:00Z", "out of range"),
    ] {
        let args = add(bad);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = c.fails(2, &args);
        assert!(o.stderr.contains(says), "{bad}: {}", o.stderr);
    }
    assert_eq!(grant_of(&c, &ins, NURSE), serde_json::Value::Null);
    // A date: the grant runs through that day (UTC).
    let args = add("2199-01-01");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ok(&args);
    assert_eq!(
        grant_of(&c, &ins, NURSE)["until"],
        "2199-01-02T00:00:00.000Z"
    );
    let human = c
        .ok(&["grant", "list", "--dossier", &ins, "--as", "holder"])
        .stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with(NURSE) && l.contains("2199-01-02T00:00:00.000Z")),
        "{human}"
    );
}

#[test]
fn a_site_cut_off_from_the_host_refuses_a_grant_past_its_end_and_break_glass_remains() {
    let (host, ins, [site, _]) = host_and_two_sites();
    host.pro(NURSE, "infirmier");
    let site_id = host.json(&["pki", "list"])[0]["site_id"].to_string();
    host.ok(&["pki", "bind", "--site", &site_id, "--rpps", NURSE]);
    site.pro(NURSE, "infirmier");
    let doc = host.add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", b"soins (synthetic)");
    // Long enough for the site to sync and read before it; the test waits for it after.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let end = carnet_store::time::format_rfc3339(now + 30_000);
    host.ok(&[
        "grant",
        "add",
        "--dossier",
        &ins,
        "--rpps",
        NURSE,
        "--basis",
        "care-team",
        "--until",
        &end,
    ]);
    let mut daemon = start_daemon(&host);
    sync_until_ok(&site, Duration::from_secs(30));
    assert_eq!(grant_of(&site, &ins, NURSE)["until"], end.as_str());
    assert_eq!(site.body(&doc, NURSE), b"soins (synthetic)");
    // The host goes away: the site decides alone, from the signed record and its clock.
    stop(&mut daemon);
    let deadline = Instant::now() + Duration::from_secs(90);
    let refused = loop {
        let o = site.run(&["doc", "get", &doc, "--as", NURSE]);
        if o.code != 0 {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "the grant never ended at the site"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("has ended"), "{}", refused.stderr);
    let traced = site.audit_as(&ins, NURSE);
    assert!(
        traced.iter().any(|e| e["allowed"] == false
            && e.to_string().contains(&format!("the grant ended on {end}"))),
        "{traced:?}"
    );
    // Break-glass is still possible.
    site.ok(&[
        "doc",
        "get",
        &doc,
        "--as",
        NURSE,
        "--mode",
        "break-glass",
        "--reason",
        "unconscious (synthetic)",
    ]);
}
