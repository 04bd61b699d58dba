//! `doc add/get/list/mask/unmask/hide-from-patient/hide-from-representatives/delete/replace`:
//! bodies come back byte for byte, metadata in human and JSON form, and the refusals.

use base64::Engine;

use crate::support::*;

/// A body with every byte value, long enough to span three stored chunks.
fn binary_body() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn add_and_get_exact_bytes() {
    let k = clinic();
    let c = &k.host;
    let body = binary_body();
    let file = c.write("scan.bin", &body);
    let o = c.ok(&[
        "doc",
        "add",
        "--dossier",
        &k.ins,
        "--as",
        DOCTOR,
        "--class",
        "31",
        "--type",
        "18748-4",
        "--title",
        "IRM genou",
        "--format",
        "application/dicom",
        "--unique-id",
        "1.2.3.4.5",
        "--service-start",
        "2024-02-29",
        &file,
    ]);
    let id = o.stdout.trim().to_string();
    assert_eq!(id.len(), 32, "the human output is the id: {}", o.stdout);

    // To stdout: the raw bytes, nothing else.
    assert_eq!(c.ok(&["doc", "get", &id, "--as", DOCTOR]).raw, body);
    // To a file: the exact bytes, and a human line on stdout.
    let out = c.path("out.bin");
    let o = c.ok(&[
        "doc",
        "get",
        &id,
        "--as",
        DOCTOR,
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(std::fs::read(&out).expect("output file"), body);
    assert!(
        o.stdout
            .contains(&format!("IRM genou ({} bytes) written to", body.len())),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("rule 4"), "{}", o.stdout);
    // JSON: metadata and the body in base64.
    let j = c.json(&["doc", "get", &id, "--as", DOCTOR]);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(j["body_base64"].as_str().expect("body_base64"))
        .expect("base64");
    assert_eq!(decoded, body);
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["unique_id"], "1.2.3.4.5");
    assert_eq!(j["ins"], k.ins.as_str());
    assert_eq!(j["class"], 31);
    assert_eq!(j["type_code"], "18748-4");
    assert_eq!(j["format"], "application/dicom");
    assert_eq!(j["title"], "IRM genou");
    assert_eq!(j["size"], body.len());
    assert_eq!(j["content_hash"].as_str().map(str::len), Some(64));
    assert_eq!(j["service_start"], "2024-02-29T00:00:00.000Z");
    assert_eq!(j["availability"], "approved");
    assert_eq!(j["confidentiality"], serde_json::json!([]));
    assert_eq!(j["rule"], 4);
    assert!(
        j["author"]["rpps"] == DOCTOR && j["author"]["profession"] == "medecin",
        "{j}"
    );
    // -o with --json: metadata only, the file holds the bytes.
    let out2 = c.path("out2.bin");
    let j = c.json(&[
        "doc",
        "get",
        &id,
        "--as",
        DOCTOR,
        "--output",
        &out2.display().to_string(),
    ]);
    assert!(j.get("body_base64").is_none(), "{j}");
    assert_eq!(std::fs::read(&out2).expect("output file"), body);

    // An empty body is a document too.
    let empty = c.add_doc(&k.ins, DOCTOR, "95", "DOCGEST", "vide", b"");
    assert_eq!(c.body(&empty, DOCTOR), b"");
    let j = c.json(&["doc", "get", &empty, "--as", DOCTOR]);
    assert_eq!(j["size"], 0);
}

#[test]
fn add_refusals() {
    let k = clinic();
    let c = &k.host;
    let file = c.write("x.txt", b"x");
    let add = |extra: &[&str]| {
        let mut a = vec!["doc", "add", "--dossier", &k.ins, "--as", DOCTOR];
        a.extend_from_slice(extra);
        c.fails(2, &a)
    };
    let o = add(&[
        "--class",
        "12",
        "--type",
        CONSULTATION,
        "--title",
        "t",
        &file,
    ]);
    assert!(o.stderr.contains("document class"), "{}", o.stderr);
    let o = add(&["--class", "10", "--type", " ", "--title", "t", &file]);
    assert!(o.stderr.contains("type code"), "{}", o.stderr);
    let o = add(&[
        "--class",
        "10",
        "--type",
        CONSULTATION,
        "--title",
        "",
        &file,
    ]);
    assert!(o.stderr.contains("title"), "{}", o.stderr);
    let missing = c.path("missing.txt").display().to_string();
    let o = add(&[
        "--class",
        "10",
        "--type",
        CONSULTATION,
        "--title",
        "t",
        &missing,
    ]);
    assert!(
        o.stderr.contains("cannot read") && o.stderr.contains("missing.txt"),
        "{}",
        o.stderr
    );
    let o = add(&[
        "--class",
        "10",
        "--type",
        CONSULTATION,
        "--title",
        "t",
        "--service-start",
        "2024-02-30",
        &file,
    ]);
    assert!(o.stderr.contains("invalid date"), "{}", o.stderr);
    let o = c.fails(
        2,
        &[
            "doc",
            "add",
            "--dossier",
            &k.ins,
            "--as",
            "docteur",
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "t",
            &file,
        ],
    );
    assert!(o.stderr.contains("--as"), "{}", o.stderr);
    let o = c.fails(
        4,
        &[
            "doc",
            "add",
            "--dossier",
            &ins_b(),
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "t",
            &file,
        ],
    );
    assert!(
        o.stderr.contains("no such dossier") && o.stderr.contains("carnet dossier create"),
        "the host's hint is its own: {}",
        o.stderr
    );
    let o = c.fails(
        2,
        &[
            "doc",
            "add",
            "--dossier",
            &wrong_key(&k.ins),
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "t",
            &file,
        ],
    );
    assert!(o.stderr.contains("invalid INS"), "{}", o.stderr);
    assert_eq!(
        c.json(&["dossier", "show", &k.ins])["documents"],
        2,
        "refusals wrote nothing"
    );

    c.fails(2, &["doc", "get", "not-an-id", "--as", DOCTOR]);
    let o = c.fails(4, &["doc", "get", &"0".repeat(32), "--as", DOCTOR]);
    assert!(o.stderr.contains("no document"), "{}", o.stderr);
    let unwritable = c.path("no/such/folder/out.bin").display().to_string();
    let o = c.fails(
        2,
        &["doc", "get", &k.consult, "--as", DOCTOR, "-o", &unwritable],
    );
    assert!(o.stderr.contains("cannot write"), "{}", o.stderr);
}

#[test]
fn list_human_and_json() {
    let k = clinic();
    let c = &k.host;
    let human = c
        .ok(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR])
        .stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 3, "{human}");
    assert!(lines[0].starts_with("ID"));
    assert!(
        lines[1].starts_with(&k.consult)
            && lines[1].contains(CONSULTATION)
            && lines[1].ends_with("CR de consultation"),
        "{human}"
    );
    assert!(
        lines[2].starts_with(&k.prescription)
            && lines[2].contains("approved")
            && lines[2].ends_with("Ordonnance"),
        "{human}"
    );

    let j = c.json(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]);
    let ids: Vec<&str> = j
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec![k.consult.as_str(), k.prescription.as_str()]);

    // The pharmacist sees the prescription only (matrix).
    let j = c.json(&["doc", "list", "--dossier", &k.ins, "--as", PHARMACIST]);
    let ids: Vec<&str> = j
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec![k.prescription.as_str()]);
    // A doctor without grant may not list.
    let o = c.fails(3, &["doc", "list", "--dossier", &k.ins, "--as", ER_DOCTOR]);
    assert!(o.stderr.contains("access denied"), "{}", o.stderr);
    // A fresh dossier lists nothing, said in words.
    let b = ins_b();
    c.dossier(&b, "MARTIN", "Louis");
    let o = c.ok(&["doc", "list", "--dossier", &b, "--as", "patient"]);
    assert_eq!(
        o.stdout.lines().last(),
        Some("(no document visible to you)")
    );
    c.fails(
        4,
        &[
            "doc",
            "list",
            "--dossier",
            &ins("1111111111111"),
            "--as",
            DOCTOR,
        ],
    );
}

#[test]
fn mask_and_unmask() {
    let k = clinic();
    let c = &k.host;
    // A granted specialist reads the report until the médecin traitant masks it.
    assert_eq!(c.body(&k.consult, SPECIALIST), CONSULT_BODY);
    let o = c.ok(&["doc", "mask", &k.consult, "--as", DOCTOR]);
    assert_eq!(
        o.stdout.trim(),
        format!("{}: masked from professionals", k.consult)
    );
    let j = c.json(&["doc", "get", &k.consult, "--as", DOCTOR]);
    assert_eq!(j["confidentiality"], serde_json::json!(["MASQUE_PS"]));
    let o = c.fails(3, &["doc", "get", &k.consult, "--as", SPECIALIST]);
    assert!(o.stderr.contains("masked"), "{}", o.stderr);
    let human = c
        .ok(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR])
        .stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with(&k.consult) && l.contains("MASQUE_PS")),
        "{human}"
    );
    // The patient still sees it.
    assert_eq!(c.body(&k.consult, "patient"), CONSULT_BODY);

    // A granted professional may mask, not unmask; the médecin traitant unmasks (host).
    let o = c.fails(3, &["doc", "unmask", &k.consult, "--as", SPECIALIST]);
    assert!(o.stderr.contains("rule 6"), "{}", o.stderr);
    let j = c.json(&["doc", "unmask", &k.consult, "--as", DOCTOR]);
    assert_eq!(j["confidentiality"], serde_json::json!([]));
    assert_eq!(c.body(&k.consult, SPECIALIST), CONSULT_BODY);
    c.ok(&["doc", "mask", &k.prescription, "--as", SPECIALIST]);
    c.fails(3, &["doc", "get", &k.prescription, "--as", PHARMACIST]);
    // The holder masks and unmasks too.
    c.ok(&["doc", "unmask", &k.prescription, "--as", "patient"]);
    assert_eq!(c.body(&k.prescription, PHARMACIST), PRESCRIPTION_BODY);
    // Someone without a grant may not mask.
    c.fails(3, &["doc", "mask", &k.prescription, "--as", ER_DOCTOR]);
    c.fails(4, &["doc", "mask", &"0".repeat(32), "--as", DOCTOR]);
}

#[test]
fn hide_from_patient_and_representatives() {
    let k = clinic();
    let c = &k.host;
    let o = c.ok(&["doc", "hide-from-patient", &k.consult, "--as", DOCTOR]);
    assert!(o.stdout.contains("hidden from the patient"), "{}", o.stdout);
    let o = c.fails(3, &["doc", "get", &k.consult, "--as", "patient"]);
    assert!(o.stderr.contains("announcement"), "{}", o.stderr);
    let j = c.json(&["doc", "list", "--dossier", &k.ins, "--as", "patient"]);
    let ids: Vec<&str> = j
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec![k.prescription.as_str()]);
    assert_eq!(
        c.body(&k.consult, DOCTOR),
        CONSULT_BODY,
        "professionals still read it"
    );
    // Only professionals hide documents from the patient.
    c.fails(
        3,
        &[
            "doc",
            "hide-from-patient",
            &k.prescription,
            "--as",
            "patient",
        ],
    );

    // A minor's act hidden from the legal representatives.
    let b = ins_b();
    c.ok(&[
        "dossier",
        "create",
        "--ins",
        &b,
        "--birth-name",
        "MARTIN",
        "--first-names",
        "Lea",
        "--birth-date",
        "2015-03-04",
        "--sex",
        "F",
        "--holder",
        "minor",
        "--representative",
        "M. MARTIN",
    ]);
    c.ok(&[
        "grant",
        "add",
        "--dossier",
        &b,
        "--rpps",
        DOCTOR,
        "--treating",
    ]);
    let act = c.add_doc(
        &b,
        DOCTOR,
        "10",
        CONSULTATION,
        "Consultation",
        b"contraception (synthetic)",
    );
    let other = c.add_doc(
        &b,
        DOCTOR,
        "42",
        PRESCRIPTION,
        "Ordonnance",
        b"vaccin (synthetic)",
    );
    assert_eq!(
        c.body(&act, "representative:R1"),
        b"contraception (synthetic)"
    );
    let j = c.json(&["doc", "hide-from-representatives", &act, "--as", DOCTOR]);
    assert_eq!(
        j["confidentiality"],
        serde_json::json!(["INVISIBLE_REPRESENTANTS_LEGAUX"])
    );
    c.fails(3, &["doc", "get", &act, "--as", "representative:R1"]);
    assert_eq!(c.body(&other, "representative:R1"), b"vaccin (synthetic)");
    assert_eq!(
        c.body(&act, "patient"),
        b"contraception (synthetic)",
        "the minor herself still sees it"
    );
    // An adult's dossier has no representative.
    c.fails(
        3,
        &["doc", "get", &k.prescription, "--as", "representative:R1"],
    );
}

#[test]
fn delete_only_by_author() {
    let k = clinic();
    let c = &k.host;
    let mine = c.add_doc(
        &k.ins,
        SPECIALIST,
        "10",
        CONSULTATION,
        "Avis cardio",
        b"avis (synthetic)",
    );
    for who in [PHARMACIST, NURSE, ER_DOCTOR, "patient"] {
        let o = c.fails(3, &["doc", "delete", &mine, "--as", who]);
        assert!(o.stderr.contains("access denied"), "{who}: {}", o.stderr);
    }
    // Even the médecin traitant may not delete another's document.
    let o = c.fails(3, &["doc", "delete", &mine, "--as", DOCTOR]);
    assert!(o.stderr.contains("only the author"), "{}", o.stderr);
    assert_eq!(c.body(&mine, SPECIALIST), b"avis (synthetic)");
    let denials = c
        .audit(&k.ins)
        .into_iter()
        .filter(|e| e["action"] == "delete" && e["allowed"] == false && e["doc"] == mine.as_str())
        .count();
    assert_eq!(
        denials, 10,
        "each refused delete is traced (each ran twice)"
    );

    let o = c.ok(&["doc", "delete", &mine, "--as", SPECIALIST]);
    assert!(o.stdout.contains("deleted"), "{}", o.stdout);
    let o = c.fails(4, &["doc", "get", &mine, "--as", SPECIALIST]);
    assert!(o.stderr.contains("deleted"), "{}", o.stderr);
    let ids: Vec<String> = c
        .json(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR])
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    assert!(!ids.contains(&mine), "a deleted document is not listed");
    c.fails(2, &["doc", "delete", &mine, "--as", SPECIALIST]);

    // The holder deletes own uploads only.
    let upload = c.add_doc(
        &k.ins,
        "patient",
        "90",
        "DOCPAT01",
        "Mes allergies",
        b"pollen (synthetic)",
    );
    c.fails(3, &["doc", "delete", &k.consult, "--as", "patient"]);
    c.ok(&["doc", "delete", &upload, "--as", "patient"]);
    // And may only add patient documents.
    let f = c.write("p.txt", b"x");
    c.fails(
        3,
        &[
            "doc",
            "add",
            "--dossier",
            &k.ins,
            "--as",
            "patient",
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "t",
            &f,
        ],
    );
}

#[test]
fn replace_keeps_the_old_one_deprecated() {
    let k = clinic();
    let c = &k.host;
    let f = c.write("v2.txt", b"Amoxicilline 500 mg (corrected, synthetic)");
    let o = c.ok(&[
        "doc",
        "replace",
        &k.prescription,
        "--as",
        DOCTOR,
        "--class",
        "42",
        "--type",
        PRESCRIPTION,
        "--title",
        "Ordonnance v2",
        &f,
    ]);
    let new = o.stdout.trim().to_string();
    assert_eq!(new.len(), 32, "{}", o.stdout);
    assert_ne!(new, k.prescription);

    let old = c.json(&["doc", "get", &k.prescription, "--as", DOCTOR]);
    assert_eq!(old["availability"], "deprecated");
    assert_eq!(old["replaced_by"], serde_json::json!([new]));
    assert_eq!(old["conflict"], false);
    assert_eq!(
        c.body(&k.prescription, DOCTOR),
        PRESCRIPTION_BODY,
        "the old body is kept"
    );
    let nj = c.json(&["doc", "get", &new, "--as", DOCTOR]);
    assert_eq!(nj["replaces"], k.prescription.as_str());
    assert_eq!(nj["availability"], "approved");
    assert_eq!(nj["title"], "Ordonnance v2");
    assert_eq!(
        c.body(&new, PHARMACIST),
        b"Amoxicilline 500 mg (corrected, synthetic)"
    );
    let human = c
        .ok(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR])
        .stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with(&k.prescription) && l.contains("deprecated")),
        "{human}"
    );

    // A replacement keeps the confidentiality of what it replaces.
    c.ok(&["doc", "mask", &k.consult, "--as", DOCTOR]);
    let j = c.json(&[
        "doc",
        "replace",
        &k.consult,
        "--as",
        DOCTOR,
        "--class",
        "10",
        "--type",
        CONSULTATION,
        "--title",
        "CR v2",
        &f,
    ]);
    assert_eq!(j["replaces"], k.consult.as_str());
    let masked = j["id"].as_str().expect("id").to_string();
    assert_eq!(
        c.json(&["doc", "get", &masked, "--as", DOCTOR])["confidentiality"],
        serde_json::json!(["MASQUE_PS"])
    );
    c.fails(3, &["doc", "get", &masked, "--as", SPECIALIST]);

    // Replacing without a grant is refused (row 11 allows new documents only) and writes nothing.
    let before = c.json(&["dossier", "show", &k.ins])["documents"].clone();
    let o = c.fails(
        3,
        &[
            "doc",
            "replace",
            &new,
            "--as",
            ER_DOCTOR,
            "--class",
            "42",
            "--type",
            PRESCRIPTION,
            "--title",
            "x",
            &f,
        ],
    );
    assert!(o.stderr.contains("rule 11"), "{}", o.stderr);
    let o = c.fails(
        3,
        &[
            "doc",
            "replace",
            &new,
            "--as",
            STRANGER,
            "--class",
            "42",
            "--type",
            PRESCRIPTION,
            "--title",
            "x",
            &f,
        ],
    );
    assert!(o.stderr.contains("rule 12"), "{}", o.stderr);
    assert_eq!(c.json(&["dossier", "show", &k.ins])["documents"], before);
    assert_eq!(
        c.json(&["doc", "get", &new, "--as", DOCTOR])["replaced_by"],
        serde_json::json!([])
    );
    c.fails(
        4,
        &[
            "doc",
            "replace",
            &"0".repeat(32),
            "--as",
            DOCTOR,
            "--class",
            "42",
            "--type",
            PRESCRIPTION,
            "--title",
            "x",
            &f,
        ],
    );
}

#[test]
fn unmask_is_the_hosts_decision() {
    let host = Carnet::host();
    host.standard_pros();
    let a = ins_a();
    host.dossier(&a, "DUPONT", "Camille");
    host.standard_grants(&a);
    let bundle = host.export_authority("bundle");
    let site = Carnet::site(12, Some(&host.host_key()));
    site.ok(&["authority", "import", &bundle.display().to_string()]);
    site.standard_pros();
    let id = site.add_doc(
        &a,
        DOCTOR,
        "10",
        LAB_REPORT,
        "Sérologie",
        b"result (synthetic)",
    );
    let j = site.json(&["doc", "mask", &id, "--as", DOCTOR]);
    assert_eq!(j["confidentiality"], serde_json::json!(["MASQUE_PS"]));
    let o = site.fails(2, &["doc", "unmask", &id, "--as", DOCTOR]);
    assert!(o.stderr.contains("host"), "{}", o.stderr);
    let o = site.fails(2, &["doc", "unmask", &id, "--as", "patient"]);
    assert!(o.stderr.contains("host"), "{}", o.stderr);
    assert_eq!(
        site.json(&["doc", "get", &id, "--as", DOCTOR])["confidentiality"],
        serde_json::json!(["MASQUE_PS"])
    );
    site.fails(3, &["doc", "get", &id, "--as", PHARMACIST]);
}

#[test]
fn titles_names_and_errors_reach_the_terminal_shown_not_obeyed() {
    let k = clinic();
    // Text that would rewrite the terminal is refused where it enters, and the error does not
    // repeat it.
    let title = "CR \u{1b}[2J\u{1b}]0;owned\u{7} \u{202e}fdp.exe";
    let file = k.host.write("body-escapes", b"synthetic");
    let o = k.host.fails(
        2,
        &[
            "doc",
            "add",
            "--dossier",
            &k.ins,
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            title,
            "--format",
            "text/plain",
            &file,
        ],
    );
    assert!(o.stderr.contains("the title holds control"), "{}", o.stderr);
    assert!(
        !o.stderr.contains('\u{1b}') && !o.stderr.contains('\u{202e}'),
        "{:?}",
        o.stderr
    );
    let listed = k
        .host
        .json(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]);
    assert!(!listed.to_string().contains("fdp.exe"), "{listed}");
    // So is a professional's name.
    let o = k.host.fails(
        2,
        &[
            "pro",
            "add",
            "--rpps",
            "10000000009",
            "--profession",
            "medecin",
            "--name",
            "Dr \u{1b}[31mRouge",
        ],
    );
    assert!(o.stderr.contains("name"), "{}", o.stderr);
    // An error quoting what the user typed is shown, not obeyed.
    let bad = k.host.fails(2, &["dossier", "show", "\u{1b}[31m12"]);
    assert!(!bad.stderr.contains('\u{1b}'), "{:?}", bad.stderr);
}
