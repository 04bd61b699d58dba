//! The holder's full copy as a FHIR R4 Bundle (type `collection`): one Patient, one
//! DocumentReference per document with its body as a base64 attachment, one AuditEvent per
//! trace entry, one Communication per notification the host sent the requester.
//!
//! Valid R4 (checked by an independent validator, `tests/fhir/validate.py`): full URLs are
//! `urn:uuid:` UUIDs derived from the records' ids, every coding has a system, nothing is empty.
//! `carnet import` reads it back (`carnet_syncd::fhir`).
//!
//! Invariant: this is a pure function of a `DossierExport`; the store decided what is in it.

use base64::Engine;
use carnet_store::audit::{AuditEntry, TraceAction, TraceActor};
use carnet_store::ids::{InsKind, Rpps};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{Author, Availability, Sex};
use carnet_store::policy::Action;
use carnet_store::replica::{DossierExport, Notification};
use carnet_store::time::format_rfc3339;
use carnet_syncd::fhir::{
    CLASS_SYSTEM, DMP_TYPE_SYSTEM, FLAG_SYSTEM, LOINC_SYSTEM, REPRESENTATIVE_SYSTEM, RPPS_SYSTEM,
    ins_system, urn_uuid,
};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// FR Core's identifier types (the INS kinds among them).
const FR_CORE_V2_0203: &str = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203";
/// DICOM's audit event types.
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Carnet's own codes: the trace's actions, access modes and notification kinds.
const CARNET_ACTION: &str = "urn:carnet:trace-action";
const CARNET_MODE: &str = "urn:carnet:access-mode";
const CARNET_NOTIFICATION: &str = "urn:carnet:notification";

/// Builds the Bundle: every full URL a `urn:uuid:` derived from the dossier's and the records'
/// ids, and no empty value (`prune`).
pub fn bundle(e: &DossierExport) -> Value {
    let h = &e.head;
    let patient = Ref::new(&format!("carnet:patient:{}", h.ins.matricule()));
    let mut entries = vec![json!({
        "fullUrl": patient.url,
        "resource": {
            "resourceType": "Patient",
            "id": patient.id,
            "identifier": [{
                "use": "official",
                "type": {"coding": [{"system": FR_CORE_V2_0203, "code": ins_type(h.ins_kind)}]},
                "system": ins_system(h.ins_kind),
                "value": h.ins.matricule(),
            }],
            "name": [{
                "use": "official",
                "family": h.identity.birth_name,
                "given": h.identity.first_names.split_whitespace().collect::<Vec<_>>(),
            }],
            "gender": match h.identity.sex { Sex::Female => "female", Sex::Male => "male" },
            "birthDate": h.identity.birth_date,
        }
    })];
    for d in &e.documents {
        entries.push(document_reference(e, &d.meta, &d.body, &patient));
    }
    for (n, t) in e.traces.iter().enumerate() {
        entries.push(audit_event(n, t, &patient));
    }
    for n in &e.notifications {
        entries.push(communication(n, &patient));
    }
    prune(json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": e.traces.last().map(|t| format_rfc3339(t.at)),
        "entry": entries,
    }))
}

/// A resource's id and its full URL, from a name unique in the export.
struct Ref {
    url: String,
    id: String,
}

impl Ref {
    fn new(name: &str) -> Ref {
        let url = urn_uuid(name);
        let id = url.trim_start_matches("urn:uuid:").to_string();
        Ref { url, id }
    }

    fn document(id: impl std::fmt::Display) -> Ref {
        Ref::new(&format!("carnet:document:{id}"))
    }
}

/// FR Core's code for an identifier of an INS of `kind`.
fn ins_type(kind: InsKind) -> &'static str {
    match kind {
        InsKind::Nir => "INS-NIR",
        InsKind::Nia => "INS-NIA",
        InsKind::TestNir => "INS-NIR-TEST",
        InsKind::DemoNir => "INS-NIR-DEMO",
    }
}

/// A professional's identifier: the IdNat_PS, `8` + RPPS.
fn professional(rpps: &Rpps) -> Value {
    json!({"system": RPPS_SYSTEM, "value": format!("8{rpps}")})
}

/// Drops nulls, empty strings, empty arrays and empty objects, at every depth: FHIR allows none.
fn prune(v: Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.into_iter().map(prune).filter(|v| !empty(v)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| !empty(v))
                .collect(),
        ),
        other => other,
    }
}

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn document_reference(e: &DossierExport, m: &DocumentMeta, body: &[u8], patient: &Ref) -> Value {
    let f = &m.facts;
    let s = m.state();
    let me = Ref::document(f.id);
    let status = match s.availability() {
        Availability::Approved | Availability::Archived => "current",
        Availability::Deprecated => "superseded",
        Availability::Deleted => "entered-in-error",
    };
    let author = match &f.author {
        Author::Professional { rpps, profession } => json!({
            "identifier": professional(rpps),
            "display": format!("{} ({rpps})", profession.as_str()),
        }),
        Author::Holder => json!({"reference": patient.url}),
        Author::Representative(id) => json!({
            "identifier": {"system": REPRESENTATIVE_SYSTEM, "value": id.to_string()},
            "display": format!("legal representative {id}"),
        }),
    };
    // LOINC codes are digits, a dash and a check digit; the others are the DMP's own.
    let loinc = f.type_code.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.len() == 1
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    let replaced = f.replaces.map(|r| {
        let unique_id = e
            .documents
            .iter()
            .find(|d| d.meta.facts.id == r)
            .map(|d| d.meta.facts.unique_id.clone());
        vec![json!({"code": "replaces", "target": {
            "reference": Ref::document(r).url,
            "identifier": unique_id.map(|u| json!({"value": u})),
        }})]
    });
    json!({
        "fullUrl": me.url,
        "resource": {
            "resourceType": "DocumentReference",
            "id": f.id.to_string(),
            "masterIdentifier": {"value": f.unique_id},
            "status": status,
            "type": {"coding": [{"system": if loinc { LOINC_SYSTEM } else { DMP_TYPE_SYSTEM }, "code": f.type_code}]},
            "category": [{"coding": [{"system": CLASS_SYSTEM, "code": f.class.code().to_string(), "display": f.class.label()}]}],
            "subject": {"reference": patient.url},
            "date": format_rfc3339(f.created_at),
            "author": [author],
            "securityLabel": s.flags.codes().iter().map(|c| json!({"coding": [{"system": FLAG_SYSTEM, "code": c}]})).collect::<Vec<_>>(),
            "relatesTo": replaced,
            "content": [{"attachment": {
                "contentType": f.format,
                "data": B64.encode(body),
                "size": f.size,
                "title": f.title,
                "creation": format_rfc3339(f.created_at),
            }}],
            "context": {"period": {
                "start": format_rfc3339(f.service_start),
                "end": f.service_end.map(format_rfc3339),
            }},
        }
    })
}

/// A notification as sent: to the patient, about the patient, its text as the payload.
fn communication(n: &Notification, patient: &Ref) -> Value {
    let me = Ref::new(&format!("carnet:notification:{}", n.id));
    json!({
        "fullUrl": me.url,
        "resource": {
            "resourceType": "Communication",
            "id": me.id,
            "status": "completed",
            "category": [{"coding": [{"system": CARNET_NOTIFICATION, "code": n.kind.name()}]}],
            "subject": {"reference": patient.url},
            "recipient": [{"reference": patient.url}],
            "sent": format_rfc3339(n.at),
            "payload": [{"contentString": n.patient_text()}],
        }
    })
}

/// R4's AuditEvent.action of a trace entry: C, R, U, D or E.
fn audit_action(a: &TraceAction) -> &'static str {
    match a {
        TraceAction::Access(a) => match a {
            Action::Write => "C",
            Action::Read
            | Action::List
            | Action::Export
            | Action::ShowDossier
            | Action::ReadTrace => "R",
            Action::Replace
            | Action::Mask
            | Action::Unmask
            | Action::HideFromPatient
            | Action::HideFromRepresentatives => "U",
            Action::Delete => "D",
        },
        TraceAction::Admin(_) | TraceAction::HandedOver { .. } => "E",
    }
}

fn audit_event(n: usize, t: &AuditEntry, patient: &Ref) -> Value {
    let who = match &t.actor {
        TraceActor::Professional { rpps, profession } => json!({
            "identifier": professional(rpps),
            "display": profession.map(|p| p.as_str()).unwrap_or("professional"),
        }),
        TraceActor::Holder => json!({"reference": patient.url}),
        TraceActor::Representative(id) => json!({
            "identifier": {"system": REPRESENTATIVE_SYSTEM, "value": id.to_string()},
            "display": format!("legal representative {id}"),
        }),
        TraceActor::System => json!({"display": "system"}),
    };
    let mut entity = vec![json!({"what": {"reference": patient.url}})];
    if let Some(d) = t.doc {
        entity.push(json!({"what": {"reference": Ref::document(d).url}}));
    }
    let me = Ref::new(&format!("carnet:audit:{}:{n}:{}", t.origin, t.at));
    json!({
        "fullUrl": me.url,
        "resource": {
            "resourceType": "AuditEvent",
            "id": me.id,
            "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
            "subtype": [
                {"system": CARNET_MODE, "code": t.mode.as_str()},
                {"system": CARNET_ACTION, "code": t.action.name()},
            ],
            "action": audit_action(&t.action),
            "recorded": format_rfc3339(t.at),
            "outcome": if t.allowed { "0" } else { "4" },
            "outcomeDesc": t.outcome_reason,
            "purposeOfEvent": t.stated_reason.as_ref().map(|r| vec![json!({"text": r})]),
            "agent": [{"who": who, "requestor": true}],
            "source": {"observer": {"display": format!("carnet site {}", t.origin)}},
            "entity": entity,
        }
    })
}
