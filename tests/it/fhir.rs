//! FHIR R4 in and out: the export checked by an independent validator (`tests/fhir/`), a holder's
//! export imported into a fresh replica with and without a daemon, FHIR as other systems write
//! it, and what cannot be mapped refused whole.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use base64::Engine;
use serde_json::{Value, json};

use crate::daemon::{free_port, start_daemon, wait_for_socket};
use crate::support::*;

/// A dossier at a host with what an export must carry: a replacement, a masked document, a
/// document hidden from the representatives, a break-glass read, a refused read, a
/// patient's own upload.
fn rich_clinic() -> Clinic {
    let k = clinic();
    let c = &k.host;
    let masked = c.add_doc(
        &k.ins,
        DOCTOR,
        "10",
        LAB_REPORT,
        "Biologie",
        b"Hb 13 (synthetic)",
    );
    c.ok(&["doc", "mask", &masked, "--as", DOCTOR]);
    let private = c.add_doc(
        &k.ins,
        DOCTOR,
        "11",
        "60591-5",
        "Synthese",
        b"VMS (synthetic)",
    );
    c.ok(&["doc", "hide-from-representatives", &private, "--as", DOCTOR]);
    c.add_doc(
        &k.ins,
        "patient",
        "90",
        "DOCPAT01",
        "Mon document",
        b"(synthetic)",
    );
    c.replace_prescription(&k.prescription);
    crate::emergencies::break_glass(c, &k.consult, "coma");
    c.fails_once(3, &["doc", "get", &k.consult, "--as", PHARMACIST]);
    k
}

fn export(c: &Carnet, ins: &str) -> PathBuf {
    let out = c.path(&format!("export-{}.json", unique()));
    c.ok(&[
        "export",
        "--dossier",
        ins,
        "--as",
        "patient",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    out
}

/// The python of the independent validator (`tests/fhir/install.sh`, which installs it when
/// absent), or why there is none.
fn validator() -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("tests/fhir/install.sh"))
        .output()
        .map_err(|e| format!("cannot run tests/fhir/install.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tests/fhir/install.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs the validator on `file`: `Ok(report)` when valid, `Err(report)` otherwise.
fn validate(python: &PathBuf, file: &std::path::Path) -> Result<String, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fhir/validate.py");
    let out = Command::new(python)
        .arg(script)
        .arg(file)
        .output()
        .expect("the validator runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

#[test]
fn the_export_is_valid_r4_to_an_independent_validator() {
    let python = match validator() {
        Ok(p) => p,
        Err(why) => {
            eprintln!(
                "SKIPPED the_export_is_valid_r4_to_an_independent_validator: no FHIR validator: {why}"
            );
            return;
        }
    };
    let k = rich_clinic();
    let out = export(&k.host, &k.ins);
    let started = Instant::now();
    let report = validate(&python, &out).unwrap_or_else(|r| panic!("invalid R4:\n{r}"));
    eprintln!("validated in {:?}: {report}", started.elapsed());
    // The validator itself refuses what R4 refuses (it would pass anything otherwise).
    let mut bundle: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("export")).expect("JSON");
    let broken = k.host.path("broken.json");
    for (what, edit) in [
        ("an empty array", json!([])),
        (
            "a coding without system",
            json!({"coding": [{"code": "x"}]}),
        ),
    ] {
        let saved = bundle["entry"][1]["resource"]["type"].clone();
        bundle["entry"][1]["resource"]["type"] = edit;
        std::fs::write(&broken, serde_json::to_vec(&bundle).expect("JSON")).expect("write");
        assert!(validate(&python, &broken).is_err(), "{what} passed");
        bundle["entry"][1]["resource"]["type"] = saved;
    }
    bundle["entry"][0]["fullUrl"] = json!("urn:uuid:patient");
    std::fs::write(&broken, serde_json::to_vec(&bundle).expect("JSON")).expect("write");
    assert!(
        validate(&python, &broken).is_err(),
        "urn:uuid:patient passed"
    );
}

/// The documents of `ins` as DOCTOR (the médecin traitant: every one) sees them, by unique id,
/// with what must survive a round trip, and each body.
fn documents(c: &Carnet, ins: &str) -> Vec<(String, Value, Vec<u8>)> {
    let list = c.json(&["doc", "list", "--dossier", ins, "--as", DOCTOR]);
    let mut out: Vec<(String, Value, Vec<u8>)> = list
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| {
            let kept = json!({
                "class": d["class"], "type_code": d["type_code"], "format": d["format"],
                "title": d["title"], "author": d["author"],
                "service_start": d["service_start"], "service_end": d["service_end"],
                "size": d["size"], "content_hash": d["content_hash"],
                "confidentiality": d["confidentiality"], "availability": d["availability"],
                "replaces": d["replaces"].is_string(),
            });
            let id = d["id"].as_str().expect("id");
            (
                d["unique_id"].as_str().expect("unique id").to_string(),
                kept,
                c.body(id, DOCTOR),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A fresh host holding the dossier `ins` (same identity) with the standard cast and grants;
/// `served`: a daemon may run on it (its listening address and PKI set).
fn fresh_host(ins: &str, served: bool) -> Carnet {
    let c = if served {
        let c = Carnet::empty();
        let address = format!("127.0.0.1:{}", free_port());
        c.ok(&["init", "--role", "host", "--listen", &address]);
        c.ok(&["pki", "init", "--ca-in-replica"]);
        c
    } else {
        Carnet::host()
    };
    c.standard_pros();
    c.dossier(ins, "DUPONT", "Camille Marie");
    c.standard_grants(ins);
    c
}

#[test]
fn an_exported_dossier_imports_into_a_fresh_replica_equal_with_or_without_a_daemon() {
    let k = rich_clinic();
    let out = export(&k.host, &k.ins);
    let file = out.to_str().expect("utf-8");
    // The hidden-from-representatives document is the holder's: in the copy.
    let expected = documents(&k.host, &k.ins);
    assert_eq!(expected.len(), 6, "{expected:?}");

    let alone = fresh_host(&k.ins, false);
    let j = alone.json(&["import", file]);
    assert_eq!(
        j["documents"].as_array().expect("documents").len(),
        6,
        "{j}"
    );
    assert_eq!(documents(&alone, &k.ins), expected);
    // Again: nothing new.
    let again = alone.json(&["import", file]);
    assert!(
        again["documents"]
            .as_array()
            .expect("documents")
            .iter()
            .all(|d| d["already_stored"] == true),
        "{again}"
    );
    assert_eq!(documents(&alone, &k.ins), expected);

    let served = fresh_host(&k.ins, true);
    let _daemon = start_daemon(&served);
    wait_for_socket(&served);
    served.json(&["import", file]);
    assert_eq!(documents(&served, &k.ins), expected);
}

const RPPS_OID: &str = "urn:oid:1.2.250.1.71.4.2.1";

/// A Bundle as a French hospital's software writes one (FR Core style): the Patient and a
/// PractitionerRole in the Bundle under server URLs, referenced as `Patient/123`, the body in a
/// Binary, extensions, narrative and profiles everywhere.
fn hospital_bundle(ins: &str, body: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    json!({
        "resourceType": "Bundle",
        "id": "b-42",
        "meta": {"profile": ["https://example.org/StructureDefinition/cr-bundle"]},
        "type": "transaction",
        "entry": [
            {"fullUrl": "https://fhir.example-chu.fr/Patient/123", "resource": {
                "resourceType": "Patient", "id": "123",
                "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins"]},
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">…</div>"},
                "extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability", "extension": []}],
                "identifier": [
                    {"use": "usual", "system": "urn:oid:1.2.250.1.71.4.2.7", "value": "IPP-778899"},
                    {"use": "official", "type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "INS-NIR"}]},
                     "system": "urn:oid:1.2.250.1.213.1.4.8", "value": ins}
                ],
                "name": [{"family": "DUPONT", "given": ["Camille"]}]
            }, "request": {"method": "PUT", "url": "Patient/123"}},
            {"fullUrl": "https://fhir.example-chu.fr/Practitioner/p7", "resource": {
                "resourceType": "Practitioner", "id": "p7",
                "identifier": [{"type": {"coding": [{"system": "http://interopsante.org/fhir/CodeSystem/fr-v2-0203", "code": "IDNPS"}]},
                                "system": RPPS_OID, "value": format!("8{SPECIALIST}")}]
            }},
            {"fullUrl": "https://fhir.example-chu.fr/PractitionerRole/r7", "resource": {
                "resourceType": "PractitionerRole", "id": "r7",
                "practitioner": {"reference": "Practitioner/p7"}
            }},
            {"fullUrl": "urn:uuid:0b7f0c35-6f0e-4d0c-9b7a-0f3c2c4b9e11", "resource": {
                "resourceType": "Binary", "contentType": "application/pdf", "data": b64
            }},
            {"fullUrl": "https://fhir.example-chu.fr/DocumentReference/d1", "resource": {
                "resourceType": "DocumentReference", "id": "d1",
                "extension": [{"url": "https://example.org/ext", "valueString": "ignored"}],
                "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.999.1.2.3.4"},
                "status": "current",
                "docStatus": "final",
                "type": {"coding": [{"system": "http://loinc.org", "code": "11490-0", "display": "Lettre de liaison de sortie"}]},
                "category": [{"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": "10", "display": "Compte rendu"}]}],
                "subject": {"reference": "Patient/123"},
                "date": "2026-03-02T10:15:00+01:00",
                "author": [{"reference": "Organization/o1"}, {"reference": "PractitionerRole/r7"}],
                "securityLabel": [
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
                    {"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.13", "code": "MASQUE_PS"}]}
                ],
                "content": [{"attachment": {"contentType": "application/pdf",
                    "url": "urn:uuid:0b7f0c35-6f0e-4d0c-9b7a-0f3c2c4b9e11",
                    "title": "Lettre de liaison"},
                    "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode", "code": "urn:ihe:iti:xds-sd:pdf:2008"}}],
                "context": {"period": {"start": "2026-02-27", "end": "2026-03-02T09:00:00+01:00"},
                            "facilityType": {"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.9", "code": "SA01"}]}}
            }, "request": {"method": "POST", "url": "DocumentReference"}}
        ]
    })
}

#[test]
fn fhir_as_other_systems_write_it_is_imported_and_what_cannot_be_mapped_is_refused_whole() {
    let k = clinic();
    let c = &k.host;
    let body = b"%PDF-1.4 lettre de liaison (synthetic)";
    let bundle = hospital_bundle(&k.ins, body);
    let f = c.write("hospital.json", &serde_json::to_vec(&bundle).expect("JSON"));
    let j = c.json(&["import", &f]);
    let id = j["documents"][0]["id"].as_str().expect("id").to_string();
    let doc = c
        .json(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR])
        .as_array()
        .expect("documents")
        .iter()
        .find(|d| d["id"] == id.as_str())
        .cloned()
        .expect("the imported document is listed");
    assert_eq!(doc["unique_id"], "urn:oid:1.2.250.1.999.1.2.3.4");
    assert_eq!(doc["class"], 10);
    assert_eq!(doc["type_code"], "11490-0");
    assert_eq!(doc["title"], "Lettre de liaison");
    assert_eq!(doc["format"], "application/pdf");
    assert_eq!(
        who(&doc["author"]),
        format!("{SPECIALIST} (medecin)"),
        "{doc}"
    );
    assert_eq!(doc["service_start"], "2026-02-27T00:00:00.000Z");
    assert_eq!(doc["service_end"], "2026-03-02T08:00:00.000Z");
    assert_eq!(doc["confidentiality"], json!(["MASQUE_PS"]));
    assert_eq!(c.body(&id, SPECIALIST), body);

    // A standalone DocumentReference, its Patient and Practitioner contained, the body inline.
    let standalone = json!({
        "resourceType": "DocumentReference",
        "contained": [
            {"resourceType": "Patient", "id": "pat", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": k.ins}]},
            {"resourceType": "Practitioner", "id": "aut", "identifier": [{"system": RPPS_OID, "value": NURSE}]}
        ],
        "identifier": [{"value": "cabinet-IDE-0001"}],
        "status": "current",
        "type": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.1", "code": "11488-4"}]},
        "category": [{"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": "10"}]}],
        "subject": {"reference": "#pat"},
        "author": [{"reference": "#aut"}],
        "description": "Compte rendu de soins",
        "content": [{"attachment": {"contentType": "text/plain", "data": "U29pbnMgKHN5bnRoZXRpYyk=",
                     "creation": "2026-01-05T08:30:00Z"}}]
    });
    let f = c.write("ide.json", &serde_json::to_vec(&standalone).expect("JSON"));
    let id = c.json(&["import", &f])["documents"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(c.body(&id, NURSE), b"Soins (synthetic)");

    // Refused whole, naming the field and why: nothing is stored.
    let before = c.json(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]);
    let refused = |edit: &dyn Fn(&mut Value), field: &str, why: &str| {
        let mut b = hospital_bundle(&k.ins, b"other (synthetic)");
        b["entry"][4]["resource"]["masterIdentifier"]["value"] = json!("urn:uuid:another");
        edit(&mut b);
        let f = c.write("refused.json", &serde_json::to_vec(&b).expect("JSON"));
        let o = c.fails(2, &["import", &f]);
        assert!(
            o.stderr.contains(field) && o.stderr.contains(why),
            "expected {field}: {why} in\n{}",
            o.stderr
        );
        assert!(!o.stderr.contains(&k.ins), "the INS is in the error");
    };
    let doc = "Bundle.entry[4].resource(DocumentReference)";
    refused(
        &|b| b["entry"][0]["resource"]["identifier"][1]["system"] = json!("urn:oid:1.2.3"),
        &format!("{doc}.subject"),
        "no INS identifier (urn:oid:1.2.250.1.213.1.4.8",
    );
    refused(
        &|b| b["entry"][1]["resource"]["identifier"][0]["system"] = json!("urn:oid:1.2.3"),
        &format!("{doc}.author"),
        "no professional with an RPPS",
    );
    refused(
        &|b| b["entry"][4]["resource"]["category"][0]["coding"][0]["code"] = json!("99"),
        &format!("{doc}.category"),
        "",
    );
    refused(
        &|b| b["entry"][4]["resource"]["type"]["coding"][0]["system"] = json!("urn:x"),
        &format!("{doc}.type"),
        "no LOINC",
    );
    refused(
        &|b| b["entry"][4]["resource"]["securityLabel"][0]["coding"][0]["code"] = json!("R"),
        &format!("{doc}.securityLabel[0].coding[0]"),
        "refused rather than dropped",
    );
    refused(
        &|b| {
            b["entry"][4]["resource"]["content"][0]["attachment"]["url"] =
                json!("https://elsewhere.example/Binary/1")
        },
        &format!("{doc}.content[0].attachment.url"),
        "only inline data",
    );
    refused(
        &|b| b["entry"][3]["resource"]["data"] = json!("not base64!"),
        &format!("{doc}.content[0].attachment.data"),
        "not base64",
    );
    refused(
        &|b| b["entry"][4]["resource"]["status"] = json!("preliminary"),
        &format!("{doc}.status"),
        "required",
    );
    refused(
        &|b| b["entry"].as_array_mut().expect("entries").truncate(4),
        "Bundle.entry",
        "no DocumentReference",
    );
    let o = c.fails(
        2,
        &[
            "import",
            &c.write("x.json", b"{\"resourceType\":\"Patient\"}"),
        ],
    );
    assert!(o.stderr.contains("resourceType"), "{}", o.stderr);
    assert_eq!(
        c.json(&["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]),
        before,
        "a refused file stores nothing"
    );
}
