//! The access decision table (DOMAIN §4) end to end: each decision through the real binary, its
//! exit code, the row it names, and the trace entry it leaves.

use base64::Engine;
use serde_json::Value;

use crate::support::*;

/// A dossier with the standard grants, a consultation report, a prescription and a masked lab
/// report, all by the médecin traitant.
struct Setup {
    k: Clinic,
    masked: String,
}

const LAB_BODY: &[u8] = b"Serologie: resultat confidentiel (synthetic)";

fn setup() -> Setup {
    let k = clinic();
    let masked = k
        .host
        .add_doc(&k.ins, DOCTOR, "10", LAB_REPORT, "CR de biologie", LAB_BODY);
    k.host.ok(&["doc", "mask", &masked, "--as", DOCTOR]);
    Setup { k, masked }
}

/// The last trace entry about `doc` for `action`.
fn last_trace(c: &Carnet, ins: &str, action: &str, doc: &str) -> Value {
    c.audit(ins)
        .into_iter()
        .rev()
        .find(|e| e["action"] == action && e["doc"] == doc)
        .unwrap_or_else(|| panic!("no {action} trace for {doc}"))
}

/// A read request: who reads which document (whose body is known), in which mode, and why.
#[derive(Debug, Clone, Copy)]
struct Read<'a> {
    who: &'a str,
    doc: &'a str,
    body: &'a [u8],
    mode: &'a str,
    reason: Option<&'a str>,
}

/// A read in `mode`, with `reason`.
fn read<'a>(
    who: &'a str,
    doc: &'a str,
    body: &'a [u8],
    mode: &'a str,
    reason: Option<&'a str>,
) -> Read<'a> {
    Read {
        who,
        doc,
        body,
        mode,
        reason,
    }
}

/// A normal-mode read.
fn normal<'a>(who: &'a str, doc: &'a str, body: &'a [u8]) -> Read<'a> {
    read(who, doc, body, "normal", None)
}

/// The decision expected: allowed or not, and the row of the table that decides.
type Expect = (bool, u64);

/// Runs `r` on dossier `ins` and checks the decision against `(allowed, rule)`: the exit code,
/// the row named, the body when allowed, and the trace entry either way.
fn check(c: &Carnet, ins: &str, r: Read<'_>, (allowed, rule): Expect) {
    let Read {
        who,
        doc,
        body,
        mode,
        reason,
    } = r;
    let mut args = vec!["--json", "doc", "get", doc, "--as", who, "--mode", mode];
    if let Some(r) = reason {
        args.extend(["--reason", r]);
    }
    let case = format!("{who} reads {doc} in mode {mode} with reason {reason:?}");
    let o = c.run(&args);
    let j = o.json();
    if allowed {
        assert_eq!(o.code, 0, "{case}: {}", o.stderr);
        assert_eq!(j["rule"], rule, "{case}: {j}");
        let got = base64::engine::general_purpose::STANDARD
            .decode(j["body_base64"].as_str().expect("body"))
            .expect("base64");
        assert_eq!(got, body, "{case}");
    } else {
        assert_eq!(o.code, 3, "{case}: {}", o.stderr);
        assert_eq!(j["error"]["kind"], "denied", "{case}");
        let msg = j["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("(rule {rule})")), "{case}: {msg}");
        assert!(o.stderr.contains("access denied"), "{case}: {}", o.stderr);
    }
    let t = last_trace(c, ins, "read", doc);
    assert_eq!(t["allowed"], allowed, "{case}: {t}");
    assert_eq!(t["rule"], rule, "{case}: {t}");
    let trace_mode = match mode {
        "break-glass" => "bris_de_glace",
        "centre-15" => "centre_15",
        m => m,
    };
    assert_eq!(t["mode"], trace_mode, "{case}: {t}");
    let who_prefix = if who.chars().all(|c| c.is_ascii_digit()) {
        who
    } else {
        "patient"
    };
    if who.starts_with("representative:") {
        assert_eq!(
            t["who"].as_str(),
            Some(who.replace(':', " ").as_str()),
            "{case}: {t}"
        );
    } else {
        assert!(
            t["who"].as_str().is_some_and(|a| a.starts_with(who_prefix)),
            "{case}: {t}"
        );
    }
    let r = reason.filter(|r| !r.trim().is_empty());
    assert_eq!(t["stated_reason"].as_str(), r, "{case}: {t}");
}

#[test]
fn decision_table_for_reads() {
    let s = setup();
    let c = &s.k.host;
    let ins = s.k.ins.as_str();
    let (consult, prescription, masked) = (
        s.k.consult.as_str(),
        s.k.prescription.as_str(),
        s.masked.as_str(),
    );
    let why = Some("patient unconscious, suspected sepsis");
    #[rustfmt::skip]
    let cases: &[(Read<'_>, Expect)] = &[
        // who, document, body, mode, reason; allowed, row
        (read(DOCTOR, consult, CONSULT_BODY, "normal", None), (true, 4)),
        (read(DOCTOR, masked, LAB_BODY, "normal", None), (true, 4)),
        (read(SPECIALIST, consult, CONSULT_BODY, "normal", None), (true, 6)),
        (read(SPECIALIST, masked, LAB_BODY, "normal", None), (false, 6)),
        (read(PHARMACIST, prescription, PRESCRIPTION_BODY, "normal", None), (true, 6)),
        (read(PHARMACIST, consult, CONSULT_BODY, "normal", None), (false, 6)),
        (read(PHARMACIST, masked, LAB_BODY, "normal", None), (false, 6)),
        (read(NURSE, consult, CONSULT_BODY, "normal", None), (true, 6)),
        (read(ER_DOCTOR, consult, CONSULT_BODY, "normal", None), (false, 11)),
        (read(ER_DOCTOR, consult, CONSULT_BODY, "break-glass", None), (false, 7)),
        (read(ER_DOCTOR, consult, CONSULT_BODY, "break-glass", Some("   ")), (false, 7)),
        (read(ER_DOCTOR, consult, CONSULT_BODY, "break-glass", why), (true, 7)),
        (read(ER_DOCTOR, masked, LAB_BODY, "break-glass", why), (false, 7)),
        (read(PHARMACIST, consult, CONSULT_BODY, "break-glass", why), (false, 7)),
        (read(ER_DOCTOR, consult, CONSULT_BODY, "centre-15", why), (true, 8)),
        (read(ER_DOCTOR, consult, CONSULT_BODY, "centre-15", None), (false, 8)),
        (read(NURSE, prescription, PRESCRIPTION_BODY, "centre-15", why), (false, 8)),
        (read(STRANGER, prescription, PRESCRIPTION_BODY, "normal", None), (false, 12)),
        (read(STRANGER, prescription, PRESCRIPTION_BODY, "break-glass", why), (false, 12)),
        (read(INSURER_DOCTOR, prescription, PRESCRIPTION_BODY, "normal", None), (false, 2)),
        (read(INSURER_DOCTOR, prescription, PRESCRIPTION_BODY, "break-glass", why), (false, 2)),
        (read("patient", masked, LAB_BODY, "normal", None), (true, 9)),
        (read("patient", consult, CONSULT_BODY, "break-glass", why), (false, 9)),
        (read("representative:R1", consult, CONSULT_BODY, "normal", None), (false, 12)),
    ];
    for &(r, expect) in cases {
        check(c, ins, r, expect);
    }
    assert_eq!(c.json(&["audit", "verify"])["ok"], true);
}

#[test]
fn denied_reads_exit_3_and_are_traced() {
    let s = setup();
    let c = &s.k.host;
    let reads_before = c
        .audit(&s.k.ins)
        .iter()
        .filter(|e| e["action"] == "read")
        .count();
    let o = c.run(&["doc", "get", &s.masked, "--as", PHARMACIST]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.raw.is_empty(), "a denied read prints no body");
    assert!(
        o.stderr
            .contains("access denied (rule 6): the document is masked from professionals"),
        "{}",
        o.stderr
    );
    let entries = c.audit(&s.k.ins);
    let reads: Vec<&Value> = entries.iter().filter(|e| e["action"] == "read").collect();
    assert_eq!(
        reads.len(),
        reads_before + 1,
        "exactly one trace entry per decision"
    );
    let t = reads.last().expect("the denial");
    assert_eq!(t["allowed"], false);
    assert_eq!(t["doc"], s.masked.as_str());
    assert_eq!(
        t["outcome_reason"],
        "the document is masked from professionals"
    );
    assert_eq!(t["who"], format!("{PHARMACIST} (pharmacien)"));
    let human = c.ok(&["audit", "show", "--dossier", &s.k.ins]).stdout;
    assert!(
        human
            .lines()
            .any(|l| l.contains(PHARMACIST) && l.contains("DENY") && l.contains(&s.masked)),
        "{human}"
    );
    // A denied listing is traced too.
    c.fails_once(
        3,
        &["doc", "list", "--dossier", &s.k.ins, "--as", ER_DOCTOR],
    );
    let t = c
        .audit(&s.k.ins)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "list")
        .expect("list trace");
    assert_eq!(t["allowed"], false);
    assert_eq!(t["rule"], 11);
}

#[test]
fn break_glass_needs_a_reason_and_is_traced() {
    let s = setup();
    let c = &s.k.host;
    let o = c.fails_once(
        3,
        &[
            "doc",
            "get",
            &s.k.consult,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
        ],
    );
    assert!(
        o.stderr.contains("break-glass needs a reason"),
        "{}",
        o.stderr
    );
    let t = last_trace(c, &s.k.ins, "read", &s.k.consult);
    assert_eq!(
        (t["allowed"].clone(), t["mode"].clone()),
        (false.into(), "bris_de_glace".into())
    );

    let o = c.ok(&[
        "doc",
        "get",
        &s.k.consult,
        "--as",
        ER_DOCTOR,
        "--mode",
        "break-glass",
        "--reason",
        "inconscient aux urgences",
    ]);
    assert_eq!(o.raw, CONSULT_BODY);
    let t = last_trace(c, &s.k.ins, "read", &s.k.consult);
    assert_eq!(t["allowed"], true);
    assert_eq!(t["mode"], "bris_de_glace");
    // Both attempts are listed for notifying the holder and the médecin traitant.
    let emergencies = c.json(&["audit", "emergencies"]);
    let list = emergencies.as_array().expect("a list");
    assert_eq!(list.len(), 2, "{emergencies}");
    assert_eq!(list[1]["stated_reason"], "inconscient aux urgences");
    assert_eq!(list[1]["allowed"], true);
    assert!(
        c.ok(&["audit", "emergencies"])
            .stdout
            .contains("bris_de_glace")
    );
    assert_eq!(t["rule"], 7);
    assert_eq!(t["stated_reason"], "inconscient aux urgences");
    let human = c.ok(&["audit", "show", "--dossier", &s.k.ins]).stdout;
    assert!(
        human.lines().any(|l| l.contains("bris_de_glace")
            && l.contains("ALLOW")
            && l.contains("reason: \"inconscient aux urgences\"")),
        "{human}"
    );

    // Masked documents open in an emergency only if the holder allowed it.
    c.fails_once(
        3,
        &[
            "doc",
            "get",
            &s.masked,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "r",
        ],
    );
    c.ok(&[
        "emergency",
        "set",
        "--dossier",
        &s.k.ins,
        "--masked",
        "allow",
    ]);
    assert_eq!(
        c.ok(&[
            "doc",
            "get",
            &s.masked,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "r"
        ])
        .raw,
        LAB_BODY
    );
    // The holder may oppose break-glass, and centre 15 separately.
    c.ok(&["emergency", "set", "--dossier", &s.k.ins, "--btg", "oppose"]);
    let o = c.fails_once(
        3,
        &[
            "doc",
            "get",
            &s.k.consult,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "r",
        ],
    );
    assert!(o.stderr.contains("opposed break-glass"), "{}", o.stderr);
    assert_eq!(
        c.ok(&[
            "doc",
            "get",
            &s.k.consult,
            "--as",
            ER_DOCTOR,
            "--mode",
            "centre-15",
            "--reason",
            "r"
        ])
        .raw,
        CONSULT_BODY
    );
    c.ok(&[
        "emergency",
        "set",
        "--dossier",
        &s.k.ins,
        "--samu",
        "oppose",
    ]);
    let o = c.fails_once(
        3,
        &[
            "doc",
            "get",
            &s.k.consult,
            "--as",
            ER_DOCTOR,
            "--mode",
            "centre-15",
            "--reason",
            "r",
        ],
    );
    assert!(o.stderr.contains("opposed centre 15"), "{}", o.stderr);
}

#[test]
fn a_blocked_professional_is_denied_even_with_break_glass() {
    let s = setup();
    let c = &s.k.host;
    assert_eq!(c.body(&s.k.consult, SPECIALIST), CONSULT_BODY);
    c.ok(&[
        "grant",
        "block",
        "--dossier",
        &s.k.ins,
        "--rpps",
        SPECIALIST,
    ]);
    for (mode, reason) in [
        ("normal", None),
        ("break-glass", Some("urgence vitale")),
        ("centre-15", Some("regulation")),
    ] {
        let mut args = vec![
            "doc",
            "get",
            &s.k.consult,
            "--as",
            SPECIALIST,
            "--mode",
            mode,
        ];
        if let Some(r) = reason {
            args.extend(["--reason", r]);
        }
        let o = c.fails_once(3, &args);
        assert!(
            o.stderr.contains("(rule 3)") && o.stderr.contains("blocked"),
            "{mode}: {}",
            o.stderr
        );
        let t = last_trace(c, &s.k.ins, "read", &s.k.consult);
        assert_eq!(
            (t["allowed"].clone(), t["rule"].clone()),
            (false.into(), 3.into()),
            "{mode}"
        );
    }
    // Nor write, nor list.
    let f = c.write("n.txt", b"note");
    let o = c.fails(
        3,
        &[
            "doc",
            "add",
            "--dossier",
            &s.k.ins,
            "--as",
            SPECIALIST,
            "--mode",
            "break-glass",
            "--reason",
            "r",
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "t",
            &f,
        ],
    );
    assert!(o.stderr.contains("(rule 3)"), "{}", o.stderr);
    c.fails(
        3,
        &["doc", "list", "--dossier", &s.k.ins, "--as", SPECIALIST],
    );
    // Another professional is unaffected.
    assert_eq!(c.body(&s.k.consult, NURSE), CONSULT_BODY);
}

#[test]
fn a_revoked_grant_reads_nothing_but_may_still_feed() {
    let s = setup();
    let c = &s.k.host;
    assert_eq!(c.body(&s.k.prescription, PHARMACIST), PRESCRIPTION_BODY);
    c.ok(&[
        "grant",
        "revoke",
        "--dossier",
        &s.k.ins,
        "--rpps",
        PHARMACIST,
    ]);
    let o = c.fails(3, &["doc", "get", &s.k.prescription, "--as", PHARMACIST]);
    assert!(o.stderr.contains("(rule 11)"), "{}", o.stderr);
    // Feeding the dossier needs no consent (row 11), and the author reads own documents (row 5).
    let id = c.add_doc(
        &s.k.ins,
        PHARMACIST,
        "43",
        "60593-1",
        "Dispensation",
        b"delivre (synthetic)",
    );
    assert_eq!(c.json(&["doc", "get", &id, "--as", PHARMACIST])["rule"], 5);
    let listed = c.json(&["doc", "list", "--dossier", &s.k.ins, "--as", PHARMACIST]);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "own documents only");
}

#[test]
fn pharmacist_reads_prescriptions_not_consultation_reports() {
    let s = setup();
    let c = &s.k.host;
    check(
        c,
        &s.k.ins,
        normal(PHARMACIST, &s.k.consult, CONSULT_BODY),
        (false, 6),
    );
    check(
        c,
        &s.k.ins,
        normal(PHARMACIST, &s.k.prescription, PRESCRIPTION_BODY),
        (true, 6),
    );
    let o = c.fails_once(3, &["doc", "get", &s.k.consult, "--as", PHARMACIST]);
    assert!(o.stderr.contains("may not read this type"), "{}", o.stderr);
}

#[test]
fn patient_cannot_see_a_document_hidden_from_them() {
    let s = setup();
    let c = &s.k.host;
    check(
        c,
        &s.k.ins,
        normal("patient", &s.k.consult, CONSULT_BODY),
        (true, 9),
    );
    c.ok(&["doc", "hide-from-patient", &s.k.consult, "--as", DOCTOR]);
    check(
        c,
        &s.k.ins,
        normal("patient", &s.k.consult, CONSULT_BODY),
        (false, 9),
    );
    let listed = c.json(&["doc", "list", "--dossier", &s.k.ins, "--as", "patient"]);
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .all(|d| d["id"] != s.k.consult.as_str()),
        "{listed}"
    );
    // The professionals who could read it still do.
    check(
        c,
        &s.k.ins,
        normal(SPECIALIST, &s.k.consult, CONSULT_BODY),
        (true, 6),
    );
}

#[test]
fn writes_follow_the_table() {
    let s = setup();
    let c = &s.k.host;
    let f = c.write("w.txt", b"note (synthetic)");
    let write = |who: &str, mode: &str, reason: Option<&str>| {
        let mut a = vec![
            "--json",
            "doc",
            "add",
            "--dossier",
            &s.k.ins,
            "--as",
            who,
            "--mode",
            mode,
        ];
        if let Some(r) = reason {
            a.extend(["--reason", r]);
        }
        a.extend([
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "Note",
            &f,
        ]);
        c.run(&a)
    };
    // Any identified professional feeds the dossier without a grant.
    assert_eq!(write(ER_DOCTOR, "normal", None).code, 0);
    assert_eq!(write(ER_DOCTOR, "break-glass", Some("r")).code, 0);
    for (who, mode, reason, rule) in [
        (STRANGER, "normal", None, 12),
        (INSURER_DOCTOR, "normal", None, 2),
        (ER_DOCTOR, "centre-15", Some("r"), 8),
        ("patient", "normal", None, 9),
    ] {
        let o = write(who, mode, reason);
        assert_eq!(o.code, 3, "{who} {mode}: {}", o.stderr);
        let t = c
            .audit(&s.k.ins)
            .into_iter()
            .rev()
            .find(|e| e["action"] == "write")
            .expect("write trace");
        assert_eq!(
            (t["allowed"].clone(), t["rule"].clone()),
            (false.into(), rule.into()),
            "{who} {mode}"
        );
    }
}

#[test]
fn mask_new_documents_by_default() {
    let c = Carnet::host();
    c.standard_pros();
    let b = ins_b();
    c.ok(&[
        "dossier",
        "create",
        "--ins",
        &b,
        "--birth-name",
        "MARTIN",
        "--first-names",
        "Louis",
        "--birth-date",
        "1970-01-01",
        "--sex",
        "M",
        "--mask-new-by-default",
    ]);
    c.standard_grants(&b);
    let id = c.add_doc(&b, DOCTOR, "42", PRESCRIPTION, "Ordonnance", b"x");
    assert_eq!(
        c.json(&["doc", "get", &id, "--as", DOCTOR])["confidentiality"],
        serde_json::json!(["MASQUE_PS"])
    );
    check(&c, &b, normal(PHARMACIST, &id, b"x"), (false, 6));
    check(&c, &b, normal("patient", &id, b"x"), (true, 9));
}
