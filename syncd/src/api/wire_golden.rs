//! Golden JSON of the local API: representative requests and answers, byte for byte. A change
//! to a store struct that leaked into the API, or to a name, a time, an id or an enum's word,
//! fails here; a deliberate change of the contract updates these texts (and README "Local
//! API"). Each text also decodes back to the value it was made from.

use super::*;
use carnet_store::model::{Closure, Representative};

fn at(text: &str) -> Millis {
    parse_rfc3339(text).expect("time")
}

fn the_ins() -> ids::Ins {
    ids::Ins::from_body("2840575123456").expect("ins")
}

fn doctor() -> ids::Rpps {
    ids::Rpps::parse("10000000001").expect("rpps")
}

const DOC: ids::DocId = ids::DocId([
    0x01, 0x93, 0x8a, 0x2b, 0x4c, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
]);
const NEXT: ids::DocId = ids::DocId([0xff; 16]);

fn pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).expect("encode")
}

/// A document replaced once, at site 3 then at the host.
fn document() -> DocumentMeta {
    let facts = DocumentFacts {
        id: DOC,
        unique_id: "urn:oid:1.2.250.1.999.1".into(),
        ins: the_ins(),
        class: DocClass::parse("11").expect("class"),
        type_code: "11488-4".into(),
        format: "text/plain".into(),
        title: "Compte rendu synthétique".into(),
        author: model::Author::Professional {
            rpps: doctor(),
            profession: Profession::SageFemme,
        },
        author_site: SiteId(3),
        created_at: at("2026-12-05T06:00:00Z"),
        service_start: at("2026-12-04T00:00:00Z"),
        service_end: None,
        content_hash: [0xab; 32],
        size: 42,
        replaces: None,
    };
    let mut meta = DocumentMeta::new(facts, SiteId(3), DocState::default());
    meta.update(SiteId(1), |s| {
        s.flags.masque_ps = true;
        let mut clock = VersionVector::new();
        clock.bump(SiteId(1));
        s.successors.insert(NEXT, clock);
    });
    meta
}

const DOCUMENT: &str = r#"{
  "id": "01938a2b4c00deadbeef001122334455",
  "unique_id": "urn:oid:1.2.250.1.999.1",
  "ins": "284057512345672",
  "class": 11,
  "type_code": "11488-4",
  "format": "text/plain",
  "title": "Compte rendu synthétique",
  "author": {
    "kind": "professional",
    "rpps": "10000000001",
    "profession": "sage-femme"
  },
  "site_id": 3,
  "created_at": "2026-12-05T06:00:00.000Z",
  "service_start": "2026-12-04T00:00:00.000Z",
  "service_end": null,
  "content_hash": "abababababababababababababababababababababababababababababababab",
  "size": 42,
  "replaces": null,
  "confidentiality": [
    "MASQUE_PS"
  ],
  "availability": "approved",
  "replaced_by": [
    "ffffffffffffffffffffffffffffffff"
  ],
  "conflict": false,
  "kept": null,
  "resolutions": [],
  "versions": [
    {
      "clock": {
        "1": 1,
        "3": 1
      },
      "flags": {
        "masque_ps": true,
        "invisible_patient": false,
        "invisible_representatives": false
      },
      "availability": null,
      "successors": [
        {
          "id": "ffffffffffffffffffffffffffffffff",
          "clock": {
            "1": 1
          }
        }
      ],
      "resolutions": []
    }
  ]
}"#;

#[test]
fn a_document_has_its_golden_json_and_decodes_back() {
    let meta = document();
    let json = pretty(&Document::from(&meta));
    assert_eq!(json, DOCUMENT, "{json}");
    let back: Document = serde_json::from_str(DOCUMENT).expect("decode");
    assert_eq!(DocumentMeta::try_from(back).expect("convert"), meta);
}

fn dossier() -> store::DossierInfo {
    store::DossierInfo {
        head: DossierHead {
            ins: the_ins(),
            ins_kind: InsKind::TestNir,
            identity: model::Identity {
                birth_name: "TEST".into(),
                first_names: "Alex".into(),
                birth_date: "1984-05-07".into(),
                sex: Sex::Female,
                birthplace: None,
                status: IdentityStatus::Qualified,
            },
            holder: HolderKind::Minor,
            representatives: vec![Representative {
                id: RepresentativeId(1),
                name: "Camille TEST".into(),
                relationship: "mère".into(),
                since: at("2026-01-02T03:04:05.678Z"),
                ended: None,
            }],
            status: DossierStatus::Closed,
            mask_new_by_default: false,
            created_at: at("2026-01-02T03:04:05.678Z"),
            closure: Some(Closure {
                at: at("2026-12-05T07:00:00+01:00"),
                reason: "décès".into(),
                deletion_requested: None,
            }),
        },
        head_seq: 4,
        emergency: model::EmergencyPrefs::default(),
        grants: vec![model::Grant {
            ins: the_ins(),
            rpps: doctor(),
            state: GrantState::Active,
            basis: GrantBasis::MedecinTraitant,
            issued_at: at("2026-02-01T00:00:00Z"),
            until: Some(at("2027-02-01T00:00:00Z")),
        }],
        documents: 2,
        purge_receipts: vec![],
        local: None,
    }
}

const DOSSIER: &str = r#"{
  "kind": "dossier",
  "value": {
    "ins": "284057512345672",
    "ins_kind": "test",
    "identity": {
      "birth_name": "TEST",
      "first_names": "Alex",
      "birth_date": "1984-05-07",
      "sex": "F",
      "birthplace": null,
      "status": "qualified"
    },
    "holder": "minor",
    "representatives": [
      {
        "id": "R1",
        "name": "Camille TEST",
        "relationship": "mère",
        "since": "2026-01-02T03:04:05.678Z",
        "ended": null
      }
    ],
    "status": "closed",
    "mask_new_by_default": false,
    "created_at": "2026-01-02T03:04:05.678Z",
    "closure": {
      "at": "2026-12-05T06:00:00.000Z",
      "reason": "décès",
      "deletion_requested": null
    },
    "head_seq": 4,
    "emergency": {
      "samu_allowed": true,
      "btg_allowed": true,
      "masked_in_emergency": false
    },
    "grants": [
      {
        "ins": "284057512345672",
        "rpps": "10000000001",
        "state": "active",
        "basis": "medecin-traitant",
        "issued_at": "2026-02-01T00:00:00.000Z",
        "until": "2027-02-01T00:00:00.000Z"
      }
    ],
    "documents": 2,
    "purge_receipts": [],
    "local": null
  }
}"#;

#[test]
fn a_dossier_answer_has_its_golden_json_and_decodes_back() {
    let answer = Response::try_from(Answer::Dossier(Box::new(dossier()))).expect("convert");
    let json = pretty(&answer);
    assert_eq!(json, DOSSIER, "{json}");
    let back: Response = serde_json::from_str(DOSSIER).expect("decode");
    match Answer::try_from(back).expect("convert") {
        Answer::Dossier(d) => assert_eq!(*d, dossier()),
        other => panic!("unexpected {other:?}"),
    }
}

/// Requests as a caller writes them, and the internal request each is.
fn requests() -> Vec<(&'static str, Call)> {
    vec![
        (
            r#"{"op":"read_document","actor":{"kind":"professional","rpps":"10000000001"},"id":"01938a2b4c00deadbeef001122334455","mode":"bris_de_glace","reason":"détresse respiratoire"}"#,
            Call::ReadDocument {
                actor: model::Actor::Professional(doctor()),
                id: DOC,
                mode: AccessMode::BreakGlass,
                reason: Some("détresse respiratoire".into()),
            },
        ),
        (
            r#"{"op":"set_grant","ins":"284057512345672","rpps":"10000000001","state":"active","basis":"care-team","until":"2027-02-01T00:00:00.000Z"}"#,
            Call::SetGrant {
                ins: the_ins(),
                rpps: doctor(),
                state: GrantState::Active,
                basis: Some(GrantBasis::CareTeam),
                until: Some(at("2027-02-01T00:00:00Z")),
            },
        ),
        (
            r#"{"op":"put_document","actor":{"kind":"representative","id":"R1"},"mode":"normal","reason":null,"ins":"284057512345672","document":{"class":90,"type_code":"DOCPAT01","title":"Carnet de vaccination","format":"text/plain","body":"c3ludGjDqXRpcXVl","unique_id":null,"service_start":"2026-12-04T00:00:00.000Z","service_end":null}}"#,
            Call::PutDocument {
                actor: model::Actor::Representative(RepresentativeId(1)),
                mode: AccessMode::Normal,
                reason: None,
                ins: the_ins(),
                document: store::NewDocument {
                    class: DocClass::PATIENT,
                    type_code: "DOCPAT01".into(),
                    title: "Carnet de vaccination".into(),
                    format: "text/plain".into(),
                    body: "synthétique".as_bytes().to_vec(),
                    unique_id: None,
                    service_start: Some(at("2026-12-04T00:00:00Z")),
                    service_end: None,
                },
            },
        ),
        (
            r#"{"op":"pin","ins":"284057512345672","on":true,"site_id":7}"#,
            Call::Pin {
                ins: the_ins(),
                on: true,
                site: Some(7),
            },
        ),
        (
            r#"{"op":"update_document","actor":{"kind":"holder"},"id":"ffffffffffffffffffffffffffffffff","action":"hide-from-representatives"}"#,
            Call::UpdateDocument {
                actor: model::Actor::Holder,
                id: NEXT,
                action: Action::HideFromRepresentatives,
            },
        ),
    ]
}

#[test]
fn requests_have_their_golden_json_both_ways() {
    for (json, call) in requests() {
        assert_eq!(
            serde_json::to_string(&Request::from(&call)).expect("encode"),
            json
        );
        let decoded: Request = serde_json::from_str(json).expect(json);
        let back = Call::try_from(decoded).expect(json);
        assert_eq!(format!("{back:?}"), format!("{call:?}"), "{json}");
    }
}

#[test]
fn a_trace_entry_and_an_error_have_their_golden_json() {
    let entry = ChainedEntry {
        seq: 9,
        hash: [0x0f; 32],
        entry: AuditEntry {
            at: at("2026-12-05T06:00:00Z"),
            origin: SiteId(3),
            actor: TraceActor::Representative(RepresentativeId(2)),
            action: TraceAction::Access(Action::Read),
            ins: Some(the_ins().matricule().to_string()),
            doc: Some(DOC),
            mode: AccessMode::Centre15,
            allowed: false,
            rule: 12,
            outcome_reason: "refusé".into(),
            stated_reason: None,
            decided_offline: true,
            authority_version: 5,
        },
    };
    let answer = Response::try_from(Answer::Audit(vec![entry.clone()])).expect("convert");
    let json = serde_json::to_string(&answer).expect("encode");
    let expected = r#"{"kind":"audit","value":[{"seq":9,"hash":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","at":"2026-12-05T06:00:00.000Z","site_id":3,"actor":{"kind":"representative","id":"R2"},"action":"read","action_kind":"access","to_site_id":null,"ins":"284057512345672","doc":"01938a2b4c00deadbeef001122334455","mode":"centre_15","allowed":false,"rule":12,"outcome_reason":"refusé","stated_reason":null,"decided_offline":true,"authority_version":5}]}"#;
    assert_eq!(json, expected);
    match Answer::try_from(serde_json::from_str::<Response>(expected).expect("decode")) {
        Ok(Answer::Audit(list)) => assert_eq!(list, vec![entry]),
        other => panic!("unexpected {other:?}"),
    }
    let denied = Error::from(crate::Error::Store(carnet_store::Error::Denied {
        rule: 7,
        reason: "no grant".into(),
    }));
    assert_eq!(
        serde_json::to_string(&denied).expect("encode"),
        r#"{"kind":"denied","rule":7,"message":"no grant"}"#
    );
    assert_eq!(denied.status(), 403);
}

/// Every id, time and word is checked as it is decoded, and the error names what is wrong.
#[test]
fn malformed_ids_times_and_words_are_refused_with_what_is_wrong() {
    let cases = [
        (
            r#"{"op":"read_document","actor":{"kind":"holder"},"id":"01938a2b4c00deadbeef00112233445z","mode":"normal"}"#,
            "invalid document id '01938a2b4c00deadbeef00112233445z': expected 32 hex digits",
        ),
        (
            // A document id as the store's own encoding writes it.
            r#"{"op":"quarantine_show","id":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}"#,
            "invalid type: sequence, expected a string",
        ),
        (r#"{"op":"holds_dossier","ins":"284057512345626"}"#, "INS"),
        (
            r#"{"op":"set_grant","ins":"284057512345672","rpps":"10000000001","state":"active","until":"tomorrow"}"#,
            "invalid time 'tomorrow': expected RFC 3339",
        ),
        (
            r#"{"op":"set_grant","ins":"284057512345672","rpps":"10000000001","state":"Active"}"#,
            "unknown GrantState 'Active': expected one of active, revoked, blocked",
        ),
        (
            r#"{"op":"read_document","actor":{"kind":"professional","rpps":"1"},"id":"01938a2b4c00deadbeef001122334455","mode":"normal"}"#,
            "RPPS",
        ),
        (
            r#"{"op":"pki_revoke_host","pin":"00"}"#,
            "'00' is not 64 hex digits",
        ),
        (
            // A misspelt optional field is refused, never ignored.
            r#"{"op":"pin","ins":"284057512345672","on":true,"site":7}"#,
            "unknown field `site`, expected one of `ins`, `on`, `site_id`",
        ),
    ];
    for (json, says) in cases {
        match serde_json::from_str::<Request>(json) {
            Err(e) => assert!(e.to_string().contains(says), "{json}: {e}"),
            Ok(other) => panic!("{json} decoded as {other:?}"),
        }
    }
    // A class code that is not one is refused when the request is converted.
    let json = r#"{"op":"put_document","actor":{"kind":"holder"},"mode":"normal","ins":"284057512345672","document":{"class":12,"type_code":"X","title":"t","format":"text/plain","body":""}}"#;
    let decoded: Request = serde_json::from_str(json).expect("decode");
    let e = Call::try_from(decoded).expect_err("class 12");
    assert!(e.to_string().contains("unknown document class '12'"), "{e}");
}
