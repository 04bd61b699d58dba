//! The holder's full copy as a FHIR R4 Bundle (type `collection`): one Patient, one
//! DocumentReference per document with its body as a base64 attachment, one AuditEvent per
//! trace entry, one Communication per notification the host sent the requester.
//!
//! Invariant: this is a pure function of a `DossierExport`; the store decided what is in it.

use base64::Engine;
use carnet_store::audit::{AuditEntry, TraceActor};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{Author, Availability, Sex};
use carnet_store::replica::{DossierExport, Notification};
use carnet_store::time::format_rfc3339;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Builds the Bundle.
pub fn bundle(e: &DossierExport) -> Value {
    let h = &e.head;
    let patient_id = "patient";
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{patient_id}"),
        "resource": {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{
                "system": format!("urn:oid:{}", h.ins_kind.oid()),
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
        entries.push(document_reference(&d.meta, &d.body, patient_id));
    }
    for (n, t) in e.traces.iter().enumerate() {
        entries.push(audit_event(n, t, patient_id));
    }
    for n in &e.notifications {
        entries.push(communication(n, patient_id));
    }
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": e.traces.last().map(|t| format_rfc3339(t.at)),
        "entry": entries,
    })
}

fn document_reference(m: &DocumentMeta, body: &[u8], patient: &str) -> Value {
    let f = &m.facts;
    let s = m.state();
    let status = match s.availability() {
        Availability::Approved | Availability::Archived => "current",
        Availability::Deprecated => "superseded",
        Availability::Deleted => "entered-in-error",
    };
    let author = match &f.author {
        Author::Professional { rpps, profession } => json!({
            "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": format!("8{rpps}")},
            "display": format!("{} ({rpps})", profession.as_str()),
        }),
        Author::Holder => json!({"reference": format!("urn:uuid:{patient}")}),
        Author::Representative(id) => json!({
            "identifier": {"value": id.to_string()},
            "display": format!("legal representative {id}"),
        }),
    };
    json!({
        "fullUrl": format!("urn:uuid:doc-{}", f.id),
        "resource": {
            "resourceType": "DocumentReference",
            "id": f.id.to_string(),
            "masterIdentifier": {"value": f.unique_id},
            "status": status,
            "type": {"coding": [{"code": f.type_code}]},
            "category": [{"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": f.class.code().to_string(), "display": f.class.label()}]}],
            "subject": {"reference": format!("urn:uuid:{patient}")},
            "date": format_rfc3339(f.created_at),
            "author": [author],
            "securityLabel": s.flags.codes().iter().map(|c| json!({"coding": [{"code": c}]})).collect::<Vec<_>>(),
            "relatesTo": f.replaces.map(|r| vec![json!({"code": "replaces", "target": {"reference": format!("urn:uuid:doc-{r}")}})]).unwrap_or_default(),
            "content": [{"attachment": {
                "contentType": f.format,
                "data": B64.encode(body),
                "size": f.size,
                "title": f.title,
                "creation": format_rfc3339(f.created_at),
            }}],
            "context": {"period": {"start": format_rfc3339(f.service_start)}},
        }
    })
}

/// A notification as sent: to the patient, about the patient, its text as the payload.
fn communication(n: &Notification, patient: &str) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:notification-{}", n.id),
        "resource": {
            "resourceType": "Communication",
            "id": format!("notification-{}", n.id),
            "status": "completed",
            "category": [{"coding": [{"system": "urn:carnet:notification", "code": n.kind.name()}]}],
            "subject": {"reference": format!("urn:uuid:{patient}")},
            "sent": format_rfc3339(n.at),
            "payload": [{"contentString": n.patient_text()}],
        }
    })
}

fn audit_event(n: usize, t: &AuditEntry, patient: &str) -> Value {
    let who = match &t.actor {
        TraceActor::Professional { rpps, profession } => json!({
            "identifier": {"value": rpps.as_str()},
            "display": profession.map(|p| p.as_str()).unwrap_or("professional"),
        }),
        TraceActor::Holder => json!({"reference": format!("urn:uuid:{patient}")}),
        TraceActor::Representative(id) => json!({
            "identifier": {"value": id.to_string()},
            "display": format!("legal representative {id}"),
        }),
        TraceActor::System => json!({"display": "system"}),
    };
    let mut entity = vec![json!({"what": {"reference": format!("urn:uuid:{patient}")}})];
    if let Some(d) = t.doc {
        entity.push(json!({"what": {"reference": format!("urn:uuid:doc-{d}")}}));
    }
    json!({
        "fullUrl": format!("urn:uuid:audit-{}-{n}", t.origin),
        "resource": {
            "resourceType": "AuditEvent",
            "type": {"code": t.action.name()},
            "subtype": [{"code": t.mode.as_str()}],
            "recorded": format_rfc3339(t.at),
            "outcome": if t.allowed { "0" } else { "4" },
            "outcomeDesc": t.outcome_reason,
            "purposeOfEvent": t.stated_reason.as_ref().map(|r| vec![json!({"text": r})]).unwrap_or_default(),
            "agent": [{"who": who, "requestor": true}],
            "source": {"observer": {"display": format!("carnet site {}", t.origin)}},
            "entity": entity,
        }
    })
}
