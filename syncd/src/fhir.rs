//! FHIR R4 in: a `DocumentReference`, or a `Bundle` holding them, read into documents to file
//! (`read`), then filed as their authors would file them (`import`). `carnet import FILE` (through
//! `Request::ImportFhir`) and the inbox (`NAME.fhir.json`) both come here, so they agree.
//!
//! What is read, per DocumentReference (README, "FHIR"): the patient's INS (an identifier of
//! `subject`, or of the Patient it references: contained, or in the Bundle by `fullUrl` or
//! `Patient/ID`), the author's RPPS (an identifier of `author`, or of the Practitioner, or of a
//! PractitionerRole's practitioner, it references; or the patient: the holder), class
//! (`category`), type (`type`, LOINC or the DMP's codes), title, format, body (inline `data`, or
//! a `Binary` in the Bundle or contained), the producer's unique id (`masterIdentifier`, else the
//! first `identifier`), dates (`context.period`), masking flags (`securityLabel`), status and
//! the document it replaces (`relatesTo`). Anything else is ignored; what is there and cannot be
//! mapped refuses the whole file, naming the field and why, before anything is stored.
//!
//! *Invariant:* reading is pure and never panics on input; errors name fields, never values
//! from the file (they may be patient data).

use std::collections::BTreeSet;

use base64::Engine;
use carnet_store::ids::{DocId, Ins, InsKind, RepresentativeId, Rpps};
use carnet_store::model::{AccessMode, Actor, DocClass};
use carnet_store::policy::Action;
use carnet_store::replica::{NewDocument, Replica};
use carnet_store::time::{Millis, parse_date, parse_rfc3339};
use carnet_store::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The RPPS (and IdNat_PS, `8` + RPPS) identifier system.
pub const RPPS_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";
/// The document classes (JDV_J57, XDS classCode).
pub const CLASS_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.1.4.1";
/// LOINC.
pub const LOINC_SYSTEM: &str = "http://loinc.org";
/// LOINC by its OID, as some producers write it.
const LOINC_OID: &str = "urn:oid:2.16.840.1.113883.6.1";
/// The DMP's own type codes (`REMB`, `EXPPAT_3`, `DOCPAT01`, Carnet's `CERT_RESIDENCE`).
pub const DMP_TYPE_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.1.4.12";
/// The DMP's confidentiality codes (JDV_J58): the masking flags.
pub const FLAG_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.1.4.13";
/// A legal representative of the holder, by their id in the dossier head (`R1`…): Carnet's own.
pub const REPRESENTATIVE_SYSTEM: &str = "urn:carnet:representative";
/// HL7's confidentiality codes, of which the unrestricted ones (N, L, M) are accepted.
pub const V3_CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// The kinds of INS, each qualified by its OID.
const INS_KINDS: [InsKind; 4] = [
    InsKind::Nir,
    InsKind::Nia,
    InsKind::TestNir,
    InsKind::DemoNir,
];

/// The `urn:oid:` system of an INS of `kind`.
pub fn ins_system(kind: InsKind) -> String {
    format!("urn:oid:{}", kind.oid())
}

/// A deterministic RFC 4122 UUID (version 5, SHA-1, in the URL namespace) for `name`, as
/// `urn:uuid:…`: the same name always gives the same full URL.
pub fn urn_uuid(name: &str) -> String {
    // RFC 4122 appendix C, the URL namespace.
    const URL_NAMESPACE: [u8; 16] = [
        0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30,
        0xc8,
    ];
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&URL_NAMESPACE);
    ctx.update(name.as_bytes());
    let digest = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// One document read from FHIR, ready to file.
#[derive(Debug)]
pub struct FhirDocument {
    /// The holder's dossier.
    pub ins: Ins,
    /// The kind of INS the identifier's system names (NIR, NIA, test, demo): it must be the
    /// dossier's.
    pub ins_kind: InsKind,
    /// Who files it: the author (a professional by RPPS, or the holder).
    pub author: Actor,
    /// The document (its `unique_id` always set).
    pub document: NewDocument,
    /// What is done to it once stored, as its author: its flags, then its deletion.
    pub actions: Vec<Action>,
    /// The unique id of the document it replaces, if any.
    pub replaces: Option<String>,
}

/// What `import` did with one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// Its id in this replica.
    pub id: DocId,
    /// The replica held it already (same unique id in the dossier): nothing stored again.
    pub already_stored: bool,
}

fn refuse(field: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{field}: {why}"))
}

/// Reads a FHIR R4 `DocumentReference` or `Bundle` (JSON). Refuses, naming the field and the
/// reason, a file that is not one, a Bundle without a DocumentReference, and any
/// DocumentReference that cannot be mapped whole. Answers the documents in an order where each
/// comes after the one it replaces, when both are in the file.
pub fn read(json: &[u8]) -> Result<Vec<FhirDocument>> {
    let root: Value =
        serde_json::from_slice(json).map_err(|e| Error::Invalid(format!("not FHIR JSON: {e}")))?;
    let kind = root["resourceType"].as_str().unwrap_or_default();
    let docs = match kind {
        "DocumentReference" => vec![document(&root, &[], "DocumentReference")?],
        "Bundle" => {
            let entries: Vec<(&str, &Value)> = root["entry"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| (e["fullUrl"].as_str().unwrap_or_default(), &e["resource"]))
                        .collect()
                })
                .unwrap_or_default();
            let mut docs = Vec::new();
            for (n, (_, r)) in entries.iter().enumerate() {
                if r["resourceType"] == "DocumentReference" {
                    let at = format!("Bundle.entry[{n}].resource(DocumentReference)");
                    docs.push(document(r, &entries, &at)?);
                }
            }
            if docs.is_empty() {
                return Err(refuse("Bundle.entry", "no DocumentReference in the Bundle"));
            }
            docs
        }
        "" => return Err(refuse("resourceType", "missing: not a FHIR resource")),
        _ => {
            return Err(refuse(
                "resourceType",
                "only a DocumentReference or a Bundle of them is imported",
            ));
        }
    };
    in_replacement_order(docs)
}

/// `docs` reordered so that a document comes after the one it replaces when both are there.
fn in_replacement_order(mut docs: Vec<FhirDocument>) -> Result<Vec<FhirDocument>> {
    let mut out: Vec<FhirDocument> = Vec::with_capacity(docs.len());
    let uid = |d: &FhirDocument| d.document.unique_id.clone().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for d in &docs {
        if !seen.insert((d.ins.matricule().to_string(), uid(d))) {
            return Err(refuse(
                "DocumentReference.masterIdentifier",
                "two DocumentReferences of one patient have the same unique id",
            ));
        }
    }
    while !docs.is_empty() {
        let waiting = |d: &FhirDocument| {
            d.replaces
                .as_ref()
                .is_some_and(|r| docs.iter().any(|o| uid(o) == *r && o.ins == d.ins))
        };
        let Some(at) = docs.iter().position(|d| !waiting(d)) else {
            return Err(refuse(
                "DocumentReference.relatesTo",
                "the replacements form a cycle",
            ));
        };
        out.push(docs.remove(at));
    }
    Ok(out)
}

/// A resource `reference` points to: contained (`#id`), or in the Bundle by its full URL or by
/// `Type/id` (relative, or the end of an absolute URL, with or without `_history`).
fn resolve<'a>(
    reference: &str,
    doc: &'a Value,
    entries: &[(&str, &'a Value)],
) -> Option<&'a Value> {
    if let Some(id) = reference.strip_prefix('#') {
        return doc["contained"]
            .as_array()?
            .iter()
            .find(|c| c["id"].as_str() == Some(id));
    }
    if let Some((_, r)) = entries
        .iter()
        .find(|(url, _)| !url.is_empty() && *url == reference)
    {
        return Some(r);
    }
    let path = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = path.rsplit('/');
    let (id, kind) = (parts.next()?, parts.next()?);
    entries
        .iter()
        .map(|(_, r)| *r)
        .find(|r| r["resourceType"] == kind && r["id"].as_str() == Some(id))
}

/// The identifiers of `r`: its `identifier` as one object or an array.
fn identifiers(r: &Value) -> Vec<&Value> {
    match &r["identifier"] {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![&r["identifier"]],
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// The INS among `ids`, with the kind its system names: `Ok(None)` when there is none.
fn ins_among(ids: &[&Value], field: &str) -> Result<Option<(Ins, InsKind)>> {
    for i in ids {
        let system = i["system"].as_str().unwrap_or_default();
        if let Some(kind) = INS_KINDS.iter().find(|k| ins_system(**k) == system) {
            let value = text(&i["value"])
                .ok_or_else(|| refuse(field, "the INS identifier has no value"))?;
            return Ins::parse(value)
                .map(|ins| Some((ins, *kind)))
                .map_err(|e| refuse(field, format!("the INS identifier: {e}")));
        }
    }
    Ok(None)
}

/// The RPPS among `ids` (`8` + RPPS, the IdNat_PS, read as the RPPS): `Ok(None)` when none.
fn rpps_among(ids: &[&Value], field: &str) -> Result<Option<Rpps>> {
    for i in ids {
        if i["system"] == RPPS_SYSTEM {
            let value = text(&i["value"])
                .ok_or_else(|| refuse(field, "the RPPS identifier has no value"))?;
            let value = match value.strip_prefix('8') {
                Some(rest) if value.len() == 12 => rest,
                _ => value,
            };
            return Rpps::parse(value)
                .map(Some)
                .map_err(|e| refuse(field, format!("the RPPS identifier: {e}")));
        }
    }
    Ok(None)
}

/// The patient's INS and its kind: `subject`'s identifier, or that of the Patient it
/// references.
fn subject_ins(doc: &Value, entries: &[(&str, &Value)], at: &str) -> Result<(Ins, InsKind)> {
    let field = format!("{at}.subject");
    let subject = &doc["subject"];
    if subject.is_null() {
        return Err(refuse(&field, "missing: the patient is required"));
    }
    if let Some(ins) = ins_among(&identifiers(subject), &field)? {
        return Ok(ins);
    }
    if let Some(reference) = text(&subject["reference"]) {
        let patient = resolve(reference, doc, entries).ok_or_else(|| {
            refuse(
                &field,
                "the reference is to no resource contained or in this Bundle",
            )
        })?;
        if patient["resourceType"] != "Patient" {
            return Err(refuse(&field, "the reference is not to a Patient"));
        }
        if let Some(ins) = ins_among(&identifiers(patient), &field)? {
            return Ok(ins);
        }
    }
    Err(refuse(
        &field,
        "no INS identifier (urn:oid:1.2.250.1.213.1.4.8, .9, .10 or .11)",
    ))
}

/// Who filed it: the first author that is a professional with an RPPS, or the patient.
fn author(doc: &Value, entries: &[(&str, &Value)], ins: &Ins, at: &str) -> Result<Actor> {
    let field = format!("{at}.author");
    let authors: Vec<&Value> = match &doc["author"] {
        Value::Array(a) => a.iter().collect(),
        _ => Vec::new(),
    };
    for (n, a) in authors.iter().enumerate() {
        let field = format!("{field}[{n}]");
        if let Some(rpps) = rpps_among(&identifiers(a), &field)? {
            return Ok(Actor::Professional(rpps));
        }
        if let Some(id) = identifiers(a)
            .iter()
            .find(|i| i["system"] == REPRESENTATIVE_SYSTEM)
        {
            let id = RepresentativeId::parse(text(&id["value"]).unwrap_or_default())
                .map_err(|e| refuse(&field, e))?;
            return Ok(Actor::Representative(id));
        }
        let Some(reference) = text(&a["reference"]) else {
            continue;
        };
        let Some(mut r) = resolve(reference, doc, entries) else {
            continue;
        };
        if r["resourceType"] == "PractitionerRole" {
            match text(&r["practitioner"]["reference"]).and_then(|p| resolve(p, doc, entries)) {
                Some(p) => r = p,
                None => {
                    if let Some(rpps) = rpps_among(&identifiers(&r["practitioner"]), &field)? {
                        return Ok(Actor::Professional(rpps));
                    }
                    continue;
                }
            }
        }
        match r["resourceType"].as_str() {
            Some("Practitioner") => {
                if let Some(rpps) = rpps_among(&identifiers(r), &field)? {
                    return Ok(Actor::Professional(rpps));
                }
            }
            Some("Patient")
                if ins_among(&identifiers(r), &field)?.is_some_and(|(i, _)| i == *ins) =>
            {
                return Ok(Actor::Holder);
            }
            _ => {}
        }
    }
    Err(refuse(
        &field,
        format!(
            "no professional with an RPPS ({RPPS_SYSTEM}, on the author or the Practitioner it references), nor the patient, nor a legal representative ({REPRESENTATIVE_SYSTEM})"
        ),
    ))
}

/// The codings of a CodeableConcept.
fn codings(concept: &Value) -> Vec<&Value> {
    concept["coding"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn class(doc: &Value, at: &str) -> Result<DocClass> {
    let field = format!("{at}.category");
    let concepts: Vec<&Value> = doc["category"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for c in concepts.iter().flat_map(|c| codings(c)) {
        if c["system"] == CLASS_SYSTEM {
            let code = text(&c["code"]).unwrap_or_default();
            return DocClass::parse(code).map_err(|e| refuse(&field, e));
        }
    }
    Err(refuse(
        &field,
        format!("no class code ({CLASS_SYSTEM}: 10, 11, 31, 42, 43, 44, 45, 52, 60, 90 or 95)"),
    ))
}

fn type_code(doc: &Value, at: &str) -> Result<String> {
    for c in codings(&doc["type"]) {
        let system = c["system"].as_str().unwrap_or_default();
        if [LOINC_SYSTEM, LOINC_OID, DMP_TYPE_SYSTEM].contains(&system) {
            return text(&c["code"])
                .map(str::to_string)
                .ok_or_else(|| refuse(&format!("{at}.type"), "a coding without a code"));
        }
    }
    Err(refuse(
        &format!("{at}.type"),
        format!("no LOINC ({LOINC_SYSTEM}) or DMP ({DMP_TYPE_SYSTEM}) type code"),
    ))
}

/// A FHIR `date` or `dateTime` (with seconds and an offset, as R4 requires with a time).
fn instant(v: &Value, field: &str) -> Result<Option<Millis>> {
    let Some(t) = v.as_str() else {
        return match v {
            Value::Null => Ok(None),
            _ => Err(refuse(field, "not a date")),
        };
    };
    let parsed = if t.contains('T') {
        parse_rfc3339(t)
    } else {
        parse_date(t)
    };
    parsed.map(Some).map_err(|e| refuse(field, e))
}

/// The flags and deletion to apply once stored.
fn actions(doc: &Value, at: &str) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    let labels: Vec<&Value> = doc["securityLabel"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for (n, label) in labels.iter().enumerate() {
        for (m, c) in codings(label).iter().enumerate() {
            let field = format!("{at}.securityLabel[{n}].coding[{m}]");
            let system = c["system"].as_str().unwrap_or_default();
            let code = c["code"].as_str().unwrap_or_default();
            let action = match (system, code) {
                (FLAG_SYSTEM | "", "MASQUE_PS") => Action::Mask,
                (FLAG_SYSTEM | "", "INVISIBLE_PATIENT") => Action::HideFromPatient,
                (FLAG_SYSTEM | "", "INVISIBLE_REPRESENTANTS_LEGAUX") => {
                    Action::HideFromRepresentatives
                }
                (V3_CONFIDENTIALITY, "N" | "L" | "M") => continue,
                _ => {
                    return Err(refuse(
                        &field,
                        format!(
                            "not a masking flag ({FLAG_SYSTEM}: MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REPRESENTANTS_LEGAUX) nor an unrestricted confidentiality ({V3_CONFIDENTIALITY}: N, L, M): refused rather than dropped"
                        ),
                    ));
                }
            };
            if !out.contains(&action) {
                out.push(action);
            }
        }
    }
    match doc["status"].as_str() {
        Some("current" | "superseded") => {}
        Some("entered-in-error") => out.push(Action::Delete),
        _ => {
            return Err(refuse(
                &format!("{at}.status"),
                "current, superseded or entered-in-error is required",
            ));
        }
    }
    Ok(out)
}

/// The producer's unique id of a DocumentReference.
fn unique_id(doc: &Value) -> Option<String> {
    text(&doc["masterIdentifier"]["value"])
        .or_else(|| identifiers(doc).iter().find_map(|i| text(&i["value"])))
        .map(str::to_string)
}

/// The unique id of the document this one replaces, if it says.
fn replaces(doc: &Value, entries: &[(&str, &Value)], at: &str) -> Result<Option<String>> {
    let relations: Vec<&Value> = doc["relatesTo"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for (n, r) in relations.iter().enumerate() {
        if r["code"] != "replaces" {
            continue;
        }
        let field = format!("{at}.relatesTo[{n}].target");
        let target = &r["target"];
        let resolved = text(&target["reference"]).and_then(|t| resolve(t, doc, entries));
        let uid = match resolved {
            Some(t) if t["resourceType"] == "DocumentReference" => unique_id(t),
            Some(_) => return Err(refuse(&field, "not a DocumentReference")),
            None => text(&target["identifier"]["value"]).map(str::to_string),
        };
        return uid.map(Some).ok_or_else(|| {
            refuse(
                &field,
                "the replaced document is neither in this Bundle nor named by an identifier",
            )
        });
    }
    Ok(None)
}

/// The attachment's body and format: inline `data`, or the `Binary` its `url` names.
fn body(doc: &Value, entries: &[(&str, &Value)], at: &str) -> Result<(Vec<u8>, String)> {
    let field = format!("{at}.content[0].attachment");
    let a = &doc["content"][0]["attachment"];
    if !a.is_object() {
        return Err(refuse(&format!("{at}.content"), "no attachment"));
    }
    let (data, binary_type) = if let Some(d) = a["data"].as_str() {
        (d, None)
    } else if let Some(url) = text(&a["url"]) {
        let b = resolve(url, doc, entries)
            .filter(|b| b["resourceType"] == "Binary")
            .ok_or_else(|| {
                refuse(
                    &format!("{field}.url"),
                    "not a Binary in this Bundle or contained: only inline data or such a Binary is imported",
                )
            })?;
        let d = b["data"]
            .as_str()
            .ok_or_else(|| refuse(&format!("{field}.url"), "the Binary has no data"))?;
        (d, text(&b["contentType"]))
    } else {
        return Err(refuse(&field, "neither data nor url"));
    };
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| refuse(&format!("{field}.data"), format!("not base64: {e}")))?;
    if let Some(size) = a["size"].as_u64()
        && size != bytes.len() as u64
    {
        return Err(refuse(
            &format!("{field}.size"),
            format!("says {size} bytes, the data has {}", bytes.len()),
        ));
    }
    if let Some(hash) = text(&a["hash"]) {
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &bytes);
        if base64::engine::general_purpose::STANDARD.encode(sha1.as_ref()) != hash {
            return Err(refuse(
                &format!("{field}.hash"),
                "the data's SHA-1 is not the one given",
            ));
        }
    }
    let format = text(&a["contentType"])
        .or(binary_type)
        .ok_or_else(|| refuse(&format!("{field}.contentType"), "missing"))?;
    Ok((bytes, format.to_string()))
}

fn document(doc: &Value, entries: &[(&str, &Value)], at: &str) -> Result<FhirDocument> {
    let (ins, ins_kind) = subject_ins(doc, entries, at)?;
    let author = author(doc, entries, &ins, at)?;
    let class = class(doc, at)?;
    let type_code = type_code(doc, at)?;
    let (body, format) = body(doc, entries, at)?;
    let a = &doc["content"][0]["attachment"];
    let title = text(&a["title"])
        .or_else(|| text(&doc["description"]))
        .or_else(|| text(&doc["type"]["text"]))
        .or_else(|| {
            codings(&doc["type"])
                .iter()
                .find_map(|c| text(&c["display"]))
        })
        .ok_or_else(|| {
            refuse(
                &format!("{at}.content[0].attachment.title"),
                "no title (nor description, nor type text or display)",
            )
        })?
        .to_string();
    let unique_id = unique_id(doc).ok_or_else(|| {
        refuse(
            &format!("{at}.masterIdentifier"),
            "no unique id (masterIdentifier or identifier): it makes a second import harmless",
        )
    })?;
    let period = &doc["context"]["period"];
    let service_start = match instant(&period["start"], &format!("{at}.context.period.start"))? {
        Some(t) => Some(t),
        None => instant(
            &a["creation"],
            &format!("{at}.content[0].attachment.creation"),
        )?,
    };
    let service_end = instant(&period["end"], &format!("{at}.context.period.end"))?;
    let document = NewDocument {
        class,
        type_code,
        title,
        format,
        body,
        unique_id: Some(unique_id),
        service_start,
        service_end,
    };
    Ok(FhirDocument {
        ins,
        ins_kind,
        author,
        actions: actions(doc, at)?,
        replaces: replaces(doc, entries, at)?,
        document,
    })
}

/// Files `docs` in order, each as its author: a document the dossier holds already (same unique
/// id) is not stored again; one that replaces another replaces it (found by unique id in the
/// dossier); then its flags (and deletion) are applied, on a document stored before too (they
/// only restrict), so an import interrupted between the two is completed by the next.
///
/// Everything that can be checked before anything is stored is checked first, and a refusal
/// then stores nothing: each dossier is held here, under an INS of the kind the file names,
/// and each document replaced is in its dossier or earlier in the file. A refusal by the
/// decision table while filing (an author not allowed to write) stops at that document, the
/// ones before it filed; importing the file again completes it, nothing stored twice.
pub fn import(replica: &Replica, docs: Vec<FhirDocument>) -> Result<Vec<Imported>> {
    check_before_filing(replica, &docs)?;
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let uid = d.document.unique_id.clone().unwrap_or_default();
        let (id, already_stored) = match replica.find_by_unique_id(&d.ins, &uid)? {
            Some(id) => (id, true),
            None => match &d.replaces {
                Some(old) => {
                    let old = replica.find_by_unique_id(&d.ins, old)?.ok_or_else(|| {
                        refuse(
                            "DocumentReference.relatesTo",
                            "the replaced document is not in this dossier",
                        )
                    })?;
                    (
                        replica.replace_document(&d.author, &old, d.document)?,
                        false,
                    )
                }
                None => (
                    replica.put_document(
                        &d.author,
                        AccessMode::Normal,
                        None,
                        &d.ins,
                        d.document,
                    )?,
                    false,
                ),
            },
        };
        for action in &d.actions {
            replica.update_document(&d.author, &id, *action)?;
        }
        out.push(Imported { id, already_stored });
    }
    Ok(out)
}

/// The checks of `import` that need no write: dossiers held, INS kinds, documents replaced.
fn check_before_filing(replica: &Replica, docs: &[FhirDocument]) -> Result<()> {
    let mut kinds: std::collections::HashMap<&Ins, InsKind> = std::collections::HashMap::new();
    let mut in_file: std::collections::HashSet<(&Ins, &str)> = std::collections::HashSet::new();
    for d in docs {
        let held = match kinds.get(&d.ins) {
            Some(kind) => *kind,
            None => {
                let kind = replica.dossier(&d.ins)?.head.ins_kind;
                kinds.insert(&d.ins, kind);
                kind
            }
        };
        if held != d.ins_kind {
            return Err(refuse(
                "DocumentReference.subject",
                format!(
                    "the INS is given as a {} identifier ({}), but dossier {} holds a {} one: nothing was imported",
                    d.ins_kind.as_str(),
                    ins_system(d.ins_kind),
                    d.ins.matricule(),
                    held.as_str()
                ),
            ));
        }
        if let Some(old) = &d.replaces
            && !in_file.contains(&(&d.ins, old.as_str()))
            && replica.find_by_unique_id(&d.ins, old)?.is_none()
        {
            return Err(refuse(
                "DocumentReference.relatesTo",
                "the replaced document is not in this dossier: nothing was imported",
            ));
        }
        if let Some(uid) = &d.document.unique_id {
            in_file.insert((&d.ins, uid.as_str()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_ref(uid: &str, replaces: Option<&str>) -> Value {
        serde_json::json!({
            "resourceType": "DocumentReference", "status": "current",
            "masterIdentifier": {"value": uid},
            "subject": {"reference": "urn:uuid:p"},
            "author": [{"reference": "urn:uuid:p"}],
            "category": [{"coding": [{"system": CLASS_SYSTEM, "code": "90"}]}],
            "type": {"coding": [{"system": DMP_TYPE_SYSTEM, "code": "DOCPAT01"}]},
            "relatesTo": replaces.map(|r| vec![serde_json::json!({"code": "replaces", "target": {"identifier": {"value": r}}})]),
            "content": [{"attachment": {"contentType": "text/plain", "title": "t", "data": "eA==", "size": 1}}]
        })
    }

    fn bundle(docs: Vec<Value>) -> Vec<u8> {
        let mut entries = vec![serde_json::json!({"fullUrl": "urn:uuid:p", "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "284057512345672"}]}})];
        entries.extend(docs.into_iter().map(|d| serde_json::json!({"resource": d})));
        serde_json::to_vec(
            &serde_json::json!({"resourceType": "Bundle", "type": "collection", "entry": entries}),
        )
        .expect("JSON")
    }

    /// A replacement comes after what it replaces whatever the Bundle's order; a cycle, two
    /// documents with one unique id and a size that lies are refused.
    #[test]
    fn replacements_are_filed_after_what_they_replace() {
        let docs = read(&bundle(vec![
            doc_ref("c", Some("b")),
            doc_ref("b", Some("a")),
            doc_ref("a", None),
        ]))
        .expect("read");
        let order: Vec<_> = docs
            .iter()
            .map(|d| d.document.unique_id.clone().unwrap_or_default())
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert!(
            matches!(docs[0].author, Actor::Holder),
            "{:?}",
            docs[0].author
        );
        assert_eq!(docs[1].replaces.as_deref(), Some("a"));
        let mut by_representative = doc_ref("r", None);
        by_representative["author"] =
            serde_json::json!([{"identifier": {"system": REPRESENTATIVE_SYSTEM, "value": "R2"}}]);
        let docs = read(&bundle(vec![by_representative])).expect("read");
        assert!(
            matches!(docs[0].author, Actor::Representative(RepresentativeId(2))),
            "{:?}",
            docs[0].author
        );
        let cycle = read(&bundle(vec![
            doc_ref("a", Some("b")),
            doc_ref("b", Some("a")),
        ]));
        assert!(format!("{cycle:?}").contains("cycle"), "{cycle:?}");
        let twice = read(&bundle(vec![doc_ref("a", None), doc_ref("a", None)]));
        assert!(format!("{twice:?}").contains("same unique id"), "{twice:?}");
        let mut lying = doc_ref("a", None);
        lying["content"][0]["attachment"]["size"] = serde_json::json!(2);
        let lying = read(&bundle(vec![lying]));
        assert!(
            format!("{lying:?}").contains("attachment.size: says 2 bytes"),
            "{lying:?}"
        );
    }

    /// A file that cannot be filed whole stores nothing: an INS of another kind than the
    /// dossier's, a replacement of a document that is nowhere (after one that could be filed).
    #[test]
    fn a_file_that_cannot_be_filed_whole_stores_nothing() {
        let (_tmp, host, _site, ins) = crate::testkit::host_and_site();
        let held = || host.dossier(&ins).expect("dossier").documents;
        let before = held();
        let good = bundle(vec![doc_ref("a", None), doc_ref("b", Some("a"))]);
        let as_nir = String::from_utf8(good.clone())
            .expect("utf-8")
            .replace("1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.8");
        let err = import(&host, read(as_nir.as_bytes()).expect("read")).expect_err("a NIR");
        assert!(
            err.to_string().contains("given as a nir identifier"),
            "{err}"
        );
        assert_eq!(held(), before, "nothing imported");
        let nowhere = bundle(vec![doc_ref("a", None), doc_ref("c", Some("zz"))]);
        let err = import(&host, read(&nowhere).expect("read")).expect_err("replaces nothing");
        assert!(err.to_string().contains("relatesTo"), "{err}");
        assert_eq!(held(), before, "nothing imported");
        // The file as it should be: both filed (the second replacing the first), once.
        let filed = import(&host, read(&good).expect("read")).expect("import");
        assert!(filed.iter().all(|i| !i.already_stored), "{filed:?}");
        let again = import(&host, read(&good).expect("read")).expect("import again");
        assert!(again.iter().all(|i| i.already_stored), "{again:?}");
    }

    /// Replaces the `n`-th value of `v` (depth first, counting `v`) by `with`; answers how many
    /// values were passed.
    fn replace_nth(v: &mut Value, n: usize, with: &Value) -> usize {
        if n == 0 {
            *v = with.clone();
            return 1;
        }
        let mut seen = 1;
        let children: Vec<&mut Value> = match v {
            Value::Array(a) => a.iter_mut().collect(),
            Value::Object(o) => o.values_mut().collect(),
            _ => Vec::new(),
        };
        for c in children {
            if seen > n {
                break;
            }
            seen += replace_nth(c, n - seen, with);
        }
        seen
    }

    proptest::proptest! {
        /// Any value of a valid Bundle replaced by a value of another shape (or bytes cut
        /// anywhere) is read or refused, never a panic.
        #[test]
        fn a_damaged_file_is_refused_never_a_panic(
            n in 0usize..80,
            kind in 0usize..6,
            cut in proptest::option::of(0usize..2000),
        ) {
            let good = bundle(vec![doc_ref("b", Some("a")), doc_ref("a", None)]);
            let mut v: Value = serde_json::from_slice(&good).expect("JSON");
            let with = [
                Value::Null,
                serde_json::json!(-1),
                serde_json::json!("#x"),
                serde_json::json!([]),
                serde_json::json!({}),
                serde_json::json!([{"reference": "#", "value": "8"}]),
            ][kind].clone();
            replace_nth(&mut v, n, &with);
            let mut bytes = serde_json::to_vec(&v).expect("JSON");
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let _ = read(&bytes);
        }
    }

    #[test]
    fn uuids_are_rfc_4122_version_5_and_deterministic() {
        // Python: uuid.uuid5(uuid.NAMESPACE_URL, "http://python.org/")
        assert_eq!(
            urn_uuid("http://python.org/"),
            "urn:uuid:4c565f0d-3f5a-5890-b41b-20cf47701c5e"
        );
        assert_ne!(urn_uuid("a"), urn_uuid("b"));
    }
}
