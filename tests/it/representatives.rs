//! Legal representatives are people the host records in the signed head (`R1`, `R2`, …):
//! `--as representative:ID` acts as one of them, an id the head does not record is anyone
//! else (row 12), traces name the id, and a minor's representatives lose access at the
//! holder's 18th birthday, decided by a site from the head it holds.

use std::sync::Arc;

use carnet_store::Error;
use carnet_store::ids::{Ins, RepresentativeId};
use carnet_store::model::Actor;
use carnet_store::replica::{Clock, KeySource, Replica};
use carnet_store::time::{format_date, parse_date};
use serde_json::Value;

use crate::support::*;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A birth date on which the holder turns 18 in one or two days from now (a day whose date
/// exists 18 years earlier).
fn turns_18_soon() -> String {
    (1..=2)
        .map(|days| format_date(now_ms() + days * DAY_MS))
        .map(|d| {
            format!(
                "{:04}{}",
                d[..4].parse::<i32>().expect("year") - 18,
                &d[4..]
            )
        })
        .find(|d| parse_date(d).is_ok())
        .expect("one of two days has a date 18 years back")
}

/// Creates a minor's dossier on `host`, born `birth_date`, with the representatives given.
fn minor(host: &Carnet, ins: &str, birth_date: &str, representatives: &[&str]) -> Value {
    let mut args = vec![
        "dossier",
        "create",
        "--ins",
        ins,
        "--birth-name",
        "EXEMPLE",
        "--first-names",
        "Louis",
        "--birth-date",
        birth_date,
        "--sex",
        "M",
        "--holder",
        "minor",
        "--qualified",
    ];
    for r in representatives {
        args.extend(["--representative", r]);
    }
    host.json(&args)
}

/// Checks the dossier's last trace entry of `action`: who, allowed or not, which row.
fn assert_last_trace(c: &Carnet, ins: &str, action: &str, expect: (&str, bool, u8)) {
    // The host's operator reads the whole trace; at a site, readers are persons: the holder.
    let o = c.run(&["--json", "audit", "show", "--dossier", ins]);
    let entries = if o.code == 0 {
        c.audit(ins)
    } else {
        c.audit_as(ins, "holder")
    };
    let t = entries
        .into_iter()
        .rev()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} trace"));
    let (actor, allowed, rule) = expect;
    assert_eq!(
        (&t["who"], &t["allowed"], &t["rule"]),
        (
            &Value::from(actor),
            &Value::from(allowed),
            &Value::from(rule)
        ),
        "{t}"
    );
}

#[test]
fn a_representative_acts_by_the_id_the_host_recorded() {
    let host = Carnet::host();
    host.pro(DOCTOR, "medecin");
    let ins = ins_a();
    let j = minor(
        &host,
        &ins,
        "2015-01-02",
        &["Mme EXEMPLE:mother", "M. EXEMPLE"],
    );
    let reps = j["representatives"].as_array().expect("representatives");
    assert_eq!(reps.len(), 2, "{j}");
    assert_eq!(reps[0]["id"], "R1");
    assert_eq!(reps[0]["name"], "Mme EXEMPLE");
    assert_eq!(reps[0]["relationship"], "mother");
    assert_eq!(reps[1]["id"], "R2");
    assert_eq!(reps[1]["relationship"], "legal representative");
    assert_eq!(reps[1]["ended"], Value::Null);
    let doc = host.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "Consultation",
        CONSULT_BODY,
    );

    // Row 10, traced with the id.
    assert_eq!(host.body(&doc, "representative:R1"), CONSULT_BODY);
    assert_last_trace(&host, &ins, "read", ("representative R1", true, 10));

    // An id the head does not record: row 12, denied and traced with the id claimed.
    let o = host.fails(3, &["doc", "get", &doc, "--as", "representative:R9"]);
    assert!(o.raw.is_empty(), "no body on a refusal");
    assert!(o.stderr.contains("rule 12"), "{}", o.stderr);
    assert_last_trace(&host, &ins, "read", ("representative R9", false, 12));

    // A bare `representative` names nobody: refused before anything is decided.
    // Each reading of the trace by the host's operator is traced itself: one more.
    let before = host.audit(&ins).len() + 1;
    for bad in [
        "representative",
        "representative:",
        "representative:X1",
        "representative:R0",
    ] {
        let o = host.fails(2, &["doc", "list", "--dossier", &ins, "--as", bad]);
        assert!(
            o.stderr.contains("representative:ID"),
            "{bad}: {}",
            o.stderr
        );
    }
    assert_eq!(
        host.audit(&ins).len(),
        before,
        "a usage error is not a decision"
    );

    // The host ends R2 and records a third; ids are never reused.
    host.ok(&["dossier", "representative", "remove", &ins, "R2"]);
    let o = host.fails(3, &["doc", "get", &doc, "--as", "representative:R2"]);
    assert!(o.stderr.contains("rule 12"), "{}", o.stderr);
    let j = host.json(&[
        "dossier",
        "representative",
        "add",
        &ins,
        "--name",
        "Mme TUTRICE",
        "--relationship",
        "guardian",
    ]);
    let reps = j["representatives"].as_array().expect("representatives");
    assert_eq!(reps.len(), 3, "{j}");
    assert_ne!(reps[1]["ended"], Value::Null, "R2 stays, ended");
    assert_eq!(reps[2]["id"], "R3");
    assert_eq!(host.body(&doc, "representative:R3"), CONSULT_BODY);
    host.fails(4, &["dossier", "representative", "remove", &ins, "R2"]);
    assert_eq!(host.json(&["audit", "verify"])["ok"], true);
}

#[test]
fn an_adults_head_records_no_representative() {
    let host = Carnet::host();
    let ins = ins_a();
    host.dossier(&ins, "EXEMPLE", "Camille");
    let o = host.fails(
        2,
        &[
            "dossier",
            "representative",
            "add",
            &ins,
            "--name",
            "Someone",
        ],
    );
    assert!(o.stderr.contains("adult"), "{}", o.stderr);
    // A "minor" already 18 by the birth date is refused too: the record would be dead.
    let o = host.fails(
        2,
        &[
            "dossier",
            "create",
            "--ins",
            &ins_b(),
            "--birth-name",
            "EXEMPLE",
            "--first-names",
            "Louis",
            "--birth-date",
            "2001-01-01",
            "--sex",
            "M",
            "--holder",
            "minor",
            "--representative",
            "Mme EXEMPLE",
        ],
    );
    assert!(o.stderr.contains("18"), "{}", o.stderr);
}

/// A minor's representatives lose access at the 18th birthday at a site that has heard
/// nothing new from the host: the site decides from the birth date of the head it holds.
#[test]
fn a_minors_representatives_lose_access_at_18_at_a_site_offline() {
    let host = Carnet::host();
    let ins = ins_a();
    minor(&host, &ins, &turns_18_soon(), &["Mme EXEMPLE:mother"]);
    let site = Carnet::site(41, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("records").display().to_string(),
    ]);
    let out = site.path("copy.json").display().to_string();
    // Today the holder is a minor: the representative has the full copy (row 10).
    site.ok(&[
        "export",
        "--dossier",
        &ins,
        "--as",
        "representative:R1",
        "-o",
        &out,
    ]);

    // Two days on, within the site's 72 h lease: the holder is 18, and the site decides so by
    // itself.
    let later: Clock = Arc::new(|| now_ms() + 2 * DAY_MS);
    let replica = Replica::open(&site.data, &KeySource::File, later).expect("open the site");
    let holder = Ins::parse(&ins).expect("ins");
    let r1 = Actor::Representative(RepresentativeId(1));
    match replica.export_dossier(&r1, &holder) {
        Err(Error::Denied { rule: 12, reason }) => {
            assert!(reason.contains("adult"), "{reason}")
        }
        other => panic!("expected a row 12 refusal, got {other:?}"),
    }
    // Read in-process: the site's clock has moved on, and a person's read there would stop at
    // the lease (the clock now reads earlier than it did).
    let traced = replica.audit_entries(Some(&holder)).expect("trace");
    let last = &traced
        .iter()
        .rev()
        .find(|c| c.entry.action.name() == "export")
        .expect("the refusal is traced")
        .entry;
    assert_eq!((last.allowed, last.rule), (false, 12));
    assert!(matches!(
        last.actor,
        carnet_store::audit::TraceActor::Representative(RepresentativeId(1))
    ));
    // The signed head still says minor: nothing new came from the host.
    assert_eq!(
        replica.dossier(&holder).expect("dossier").head.holder,
        carnet_store::model::HolderKind::Minor
    );
}
