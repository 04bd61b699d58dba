//! `export`: the holder's full copy as a FHIR R4 Bundle, and who may take it.

use base64::Engine;
use serde_json::Value;

use crate::support::*;

pub(crate) fn resources<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == kind)
        .collect()
}

fn attachment_bytes(doc_ref: &Value) -> Vec<u8> {
    let data = doc_ref["content"][0]["attachment"]["data"]
        .as_str()
        .expect("attachment data");
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64")
}

#[test]
fn the_holder_exports_a_fhir_bundle() {
    let k = clinic();
    let c = &k.host;
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let scan = c.add_doc(&k.ins, DOCTOR, "31", "18748-4", "Radio", &binary);
    let hidden = c.add_doc(
        &k.ins,
        DOCTOR,
        "10",
        LAB_REPORT,
        "Resultat a annoncer",
        b"hidden (synthetic)",
    );
    c.ok(&["doc", "hide-from-patient", &hidden, "--as", DOCTOR]);
    let v2 = c.replace_prescription(&k.prescription);
    crate::emergencies::break_glass(c, &k.consult, "coma");
    c.fails_once(3, &["doc", "get", &k.consult, "--as", PHARMACIST]);

    let out = c.path("export.json");
    let j = c.json(&[
        "export",
        "--dossier",
        &k.ins,
        "--as",
        "patient",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(j["documents"], 4, "every document but the hidden one: {j}");
    assert_eq!(j["output"], out.display().to_string());
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("export file")).expect("JSON");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");

    let patients = resources(&bundle, "Patient");
    assert_eq!(patients.len(), 1);
    let p = patients[0];
    assert_eq!(p["identifier"][0]["system"], "urn:oid:1.2.250.1.213.1.4.8");
    assert_eq!(p["identifier"][0]["value"], k.ins.as_str());
    assert_eq!(p["name"][0]["family"], "DUPONT");
    assert_eq!(
        p["name"][0]["given"],
        serde_json::json!(["Camille", "Marie"])
    );
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1984-05-07");

    let docs = resources(&bundle, "DocumentReference");
    assert_eq!(docs.len(), 4);
    let by_id = |id: &str| {
        *docs
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{id} not exported"))
    };
    assert!(
        docs.iter().all(|d| d["id"] != hidden.as_str()),
        "a document hidden from the patient is not in the copy"
    );
    assert_eq!(attachment_bytes(by_id(&k.consult)), CONSULT_BODY);
    assert_eq!(attachment_bytes(by_id(&scan)), binary);
    assert_eq!(attachment_bytes(by_id(&v2)), b"Ordonnance v2 (synthetic)");
    assert_eq!(attachment_bytes(by_id(&k.prescription)), PRESCRIPTION_BODY);
    let consult = by_id(&k.consult);
    assert_eq!(consult["type"]["coding"][0]["code"], CONSULTATION);
    assert_eq!(consult["category"][0]["coding"][0]["code"], "10");
    assert_eq!(
        consult["content"][0]["attachment"]["size"],
        CONSULT_BODY.len()
    );
    assert_eq!(
        consult["content"][0]["attachment"]["title"],
        "CR de consultation"
    );
    assert_eq!(
        consult["content"][0]["attachment"]["contentType"],
        "text/plain"
    );
    let full_url = |r: &Value| {
        bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["resource"] == *r)
            .and_then(|e| e["fullUrl"].as_str())
            .expect("full URL")
            .to_string()
    };
    assert_eq!(consult["subject"]["reference"], full_url(p));
    assert_eq!(consult["status"], "current");
    assert_eq!(by_id(&k.prescription)["status"], "superseded");
    assert_eq!(
        by_id(&v2)["relatesTo"][0]["target"]["reference"],
        full_url(by_id(&k.prescription))
    );

    let events = resources(&bundle, "AuditEvent");
    // The operator's reading of the trace, here, is traced after the export.
    let all: Vec<_> = c
        .audit(&k.ins)
        .into_iter()
        .filter(|e| !e["action"].as_str().unwrap_or("").starts_with("operator-"))
        .collect();
    let about_hidden = all.iter().filter(|e| e["doc"] == hidden.as_str()).count();
    assert!(
        about_hidden > 0,
        "the hidden document was written and hidden"
    );
    assert_eq!(j["traces"], events.len());
    assert_eq!(
        events.len(),
        all.len() - about_hidden,
        "every trace entry but those about the document hidden from the patient, the export's own included"
    );
    assert!(
        !serde_json::to_string(&bundle)
            .expect("json")
            .contains(hidden.as_str()),
        "nothing in the copy names the hidden document"
    );
    assert!(
        events
            .iter()
            .any(|e| e["subtype"][0]["code"] == "bris_de_glace"
                && e["purposeOfEvent"][0]["text"] == "coma"
                && e["outcome"] == "0"),
        "the break-glass read is in the copy"
    );
    assert!(
        events.iter().any(|e| e["outcome"] == "4"
            && e["agent"][0]["who"]["identifier"]["value"] == format!("8{PHARMACIST}")),
        "the denial is in the copy"
    );

    // The export itself is traced.
    let last = c
        .audit(&k.ins)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "export")
        .expect("export traced");
    assert_eq!(last["allowed"], true);
    assert_eq!(last["who"], "patient");

    // Human output.
    let out2 = c.path("export2.json");
    let o = c.ok(&[
        "export",
        "--dossier",
        &k.ins,
        "--as",
        "holder",
        "-o",
        &out2.display().to_string(),
    ]);
    assert!(
        o.stdout.contains("FHIR R4 Bundle with 4 document(s)"),
        "{}",
        o.stdout
    );
}

#[test]
fn only_the_holder_or_representatives_export() {
    let k = clinic();
    let c = &k.host;
    let out = c.path("export.json");
    let out_s = out.display().to_string();
    for pro in [DOCTOR, PHARMACIST, STRANGER] {
        let o = c.run(&["export", "--dossier", &k.ins, "--as", pro, "-o", &out_s]);
        assert!(o.code == 2 || o.code == 3, "{pro}: {} {}", o.code, o.stderr);
        assert!(
            o.stderr.contains("holder") || o.stderr.contains("patient"),
            "{}",
            o.stderr
        );
    }
    // An adult has no legal representative.
    c.fails_once(
        3,
        &[
            "export",
            "--dossier",
            &k.ins,
            "--as",
            "representative:R1",
            "-o",
            &out_s,
        ],
    );
    assert!(!out.exists(), "no copy written on a refusal");
    c.fails(
        4,
        &[
            "export",
            "--dossier",
            &ins_b(),
            "--as",
            "patient",
            "-o",
            &out_s,
        ],
    );
    c.fails(
        2,
        &[
            "export",
            "--dossier",
            &wrong_key(&k.ins),
            "--as",
            "patient",
            "-o",
            &out_s,
        ],
    );
    let o = c.fails(
        2,
        &[
            "export",
            "--dossier",
            &k.ins,
            "--as",
            "patient",
            "-o",
            &c.path("no/such/dir/e.json").display().to_string(),
        ],
    );
    assert!(o.stderr.contains("cannot write"), "{}", o.stderr);

    // A minor's representative does, minus what the minor hid from them.
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
    let open = c.add_doc(&b, DOCTOR, "42", PRESCRIPTION, "Vaccin", b"v");
    let private = c.add_doc(&b, DOCTOR, "10", CONSULTATION, "Consultation", b"p");
    c.ok(&["doc", "hide-from-representatives", &private, "--as", DOCTOR]);
    let j = c.json(&[
        "export",
        "--dossier",
        &b,
        "--as",
        "representative:R1",
        "-o",
        &out_s,
    ]);
    assert_eq!(j["documents"], 1);
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("export")).expect("JSON");
    let ids: Vec<&str> = resources(&bundle, "DocumentReference")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec![open.as_str()]);
}

#[test]
fn dash_is_stdout_for_every_file_the_cli_writes() {
    let k = clinic();
    let c = &k.host;
    // The FHIR copy, the signed records and a body, each on stdout; what the command says of
    // it goes to stderr, so the data can be piped.
    let o = c.ok(&["export", "--dossier", &k.ins, "--as", "patient", "-o", "-"]);
    let bundle: Value = serde_json::from_slice(&o.raw).expect("the bundle alone on stdout");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert!(o.stderr.contains("FHIR R4 Bundle"), "{}", o.stderr);
    let o = c.ok(&["authority", "export", "-o", "-"]);
    let file = c.path("records.bundle");
    c.ok(&["authority", "export", "-o", file.to_str().expect("utf-8")]);
    let written = std::fs::read(&file).expect("bundle file");
    assert!(
        o.raw.len() > 64 && o.raw[..8] == written[..8],
        "the same bundle format"
    );
    let o = c.ok(&["doc", "get", &k.consult, "--as", DOCTOR, "-o", "-"]);
    assert_eq!(o.raw, c.body(&k.consult, DOCTOR));
    assert!(
        !std::path::Path::new("-").exists(),
        "no file named '-' was written"
    );
    // A backup is replaced only once whole: it needs a file.
    c.fails(2, &["backup", "-o", "-"]);
}

/// Runs `carnet --data DIR args…` with the umask at 000: a file created without an explicit
/// mode would then be readable and writable by everyone (0666).
fn run_with_open_umask(c: &Carnet, args: &[&str]) -> Output {
    let out = std::process::Command::new("sh")
        .args(["-c", r#"umask 000 && exec "$@""#, "sh", bin(), "--data"])
        .arg(&c.data)
        .args(args)
        .env_remove("CARNET_DATA")
        .env_remove("CARNET_PASSPHRASE")
        .output()
        .expect("sh runs carnet");
    let o = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        raw: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(o.code, 0, "carnet {args:?}:\n{}", o.stderr);
    o
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_holding_identities_are_written_0600_whatever_the_umask_or_the_file_there() {
    use std::os::unix::fs::PermissionsExt;
    let k = clinic();
    let c = &k.host;
    let fresh = c.path("fresh.json");
    // A file that was there, open to all and longer than what replaces it.
    let there = c.path("there.json");
    std::fs::write(&there, vec![b'x'; 1 << 20]).expect("write");
    std::fs::set_permissions(&there, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    for out in [&fresh, &there] {
        let text = out.display().to_string();
        let o = run_with_open_umask(
            c,
            &[
                "export",
                "--dossier",
                &k.ins,
                "--as",
                "patient",
                "-o",
                &text,
            ],
        );
        assert!(o.stdout.contains("FHIR R4 Bundle"), "{}", o.stdout);
        assert_eq!(mode(out), 0o600, "{}", out.display());
        let bundle: Value = serde_json::from_slice(&std::fs::read(out).expect("read"))
            .expect("the export alone, nothing of the file that was there");
        assert_eq!(resources(&bundle, "Patient").len(), 1);
    }
    // The other files that name patients: the signed records and a document's body.
    let records = c.path("records.carnet");
    let body = c.path("body.txt");
    run_with_open_umask(
        c,
        &["authority", "export", "-o", &records.display().to_string()],
    );
    run_with_open_umask(
        c,
        &[
            "doc",
            "get",
            &k.consult,
            "--as",
            DOCTOR,
            "-o",
            &body.display().to_string(),
        ],
    );
    for out in [&records, &body] {
        assert_eq!(mode(out), 0o600, "{}", out.display());
    }
    // The check itself: the same shell makes a plain file open to all.
    let plain = c.path("plain");
    std::process::Command::new("sh")
        .args(["-c", r#"umask 000 && : > "$0""#])
        .arg(&plain)
        .status()
        .expect("sh");
    assert_eq!(mode(&plain), 0o666, "the umask did not reach the command");
}
