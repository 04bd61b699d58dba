//! Golden bytes of the wire messages: each message of `golden_messages`, built from fixed
//! synthetic values, is encoded as the wire does (`frame::encode`) and compared with the hex
//! block of PROTOCOL.md that bears its name (a fenced block opened by "```hex golden:NAME"),
//! then the block is decoded back (`frame::FrameDecoder`) and compared with the message, so
//! the document and the code cannot drift apart. `golden_values` does the same for values
//! that travel inside a message, encoded with postcard alone (no frame).

use carnet_store::audit::{AuditEntry, TraceAction, TraceActor};
use carnet_store::authority::{
    AuthorityRecord, Covers, Heartbeat, RECORD_FORMAT, RefusedCertificates, SignedRecord,
};
use carnet_store::ids::{DocId, SiteId};
use carnet_store::ids::{InsKind, RepresentativeId, Rpps};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{
    AccessMode, Actor, Author, Closure, DocClass, DocState, DocumentFacts, DossierHead,
    DossierStatus, EmergencyPrefs, Grant, GrantBasis, GrantState, HabilitationMatrix, HolderKind,
    Identity, IdentityStatus, Profession, Professional, Representative, Sex, TypeRule,
};
use carnet_store::policy::Action;
use carnet_store::replica::{
    Act, BodyPiece, Change, HANDOVER_FORMAT, Handover, HandoverReport, Proposal, PullItem,
    PurgeReceipt, Returned, SignedTraceHead, TraceRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::enrol::RenewalRequest;
use crate::frame::{self, FrameDecoder};
use crate::hostkey::{HandOver, HostRevocation};
use crate::peer::PeerMsg;
use crate::session::{Msg, SiteAbout};
use crate::testkit;

/// The document every example names: bytes 0x01 to 0x10.
fn doc() -> DocId {
    DocId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
}

/// Every message with golden bytes, by the name of its block in PROTOCOL.md.
fn golden_messages() -> Vec<(&'static str, Msg)> {
    vec![
        (
            "Hello",
            Msg::Hello {
                site: 7,
                cursor: 300,
                outbox_acked: 5,
                chain_key: [0xab; 32],
                about: SiteAbout {
                    version: "0.1.0".to_string(),
                    trace_head: 12,
                    pending: 2,
                    missing_bodies: 0,
                    quarantine: 0,
                    conflicts: 0,
                    lease_until: Some(1_700_000_000_000),
                },
                renewal: Some(RenewalRequest {
                    site: 7,
                    public_key: vec![0x30, 0x59, 0x30, 0x13],
                    proof: vec![0x30, 0x44, 0x02],
                }),
            },
        ),
        (
            "Welcome",
            Msg::Welcome {
                acked: 5,
                traces_acked: 12,
                traces_hash: [0x11; 32],
                returned: vec![Returned::Document {
                    id: doc(),
                    reason: "refused".to_string(),
                }],
                owed: vec![(doc(), 1024)],
                log_head: 300,
                current: Some(SignedRecord {
                    body: vec![0x04, 0x2a, 0x09],
                    signature: vec![0xee; 4],
                }),
                renewed: None,
                hand_over: Some(HandOver {
                    version: 1,
                    current: [0x22; 32],
                    next: [0x33; 32],
                    signature: vec![0x30, 0x44],
                }),
                host_revocations: vec![HostRevocation {
                    version: 1,
                    pin: [0x44; 32],
                    revoked_at: 1_700_000_000,
                    signature: vec![0x30, 0x45],
                }],
            },
        ),
        (
            "Traces",
            Msg::Traces {
                records: Vec::new(),
                head: Some(SignedTraceHead {
                    seq: 12,
                    hash: [0x11; 32],
                    signature: vec![0x30, 0x46],
                }),
            },
        ),
        ("TracesAck", Msg::TracesAck { upto: 12 }),
        (
            "Push",
            Msg::Push {
                changes: vec![(
                    6,
                    Change::Pin {
                        ins: testkit::ins(),
                        on: true,
                    },
                )],
                bodies: vec![BodyPiece {
                    doc: doc(),
                    offset: 0,
                    total: 5,
                    bytes: b"hello".to_vec(),
                }],
            },
        ),
        (
            "PushAck",
            Msg::PushAck {
                upto: 6,
                missing: vec![(doc(), 0)],
                returned: Vec::new(),
            },
        ),
        (
            "PutBodies",
            Msg::PutBodies(vec![BodyPiece {
                doc: doc(),
                offset: 5,
                total: 10,
                bytes: b"world".to_vec(),
            }]),
        ),
        ("BodyStored", Msg::BodyStored { doc: doc() }),
        ("Pull", Msg::Pull { after: 300 }),
        (
            "Pulled",
            Msg::Pulled {
                items: vec![
                    (
                        301,
                        PullItem::Authority(SignedRecord {
                            body: vec![0x04, 0x2a, 0x09],
                            signature: vec![0xee; 4],
                        }),
                    ),
                    (302, PullItem::Leave(testkit::ins())),
                ],
                more: false,
                bodies: Vec::new(),
                next: None,
            },
        ),
        (
            "GetBody",
            Msg::GetBody {
                doc: doc(),
                offset: 0,
            },
        ),
        (
            "Body",
            Msg::Body {
                doc: doc(),
                offset: 0,
                total: 5,
                bytes: b"hello".to_vec(),
            },
        ),
        ("NoBody", Msg::NoBody { doc: doc() }),
        ("Bye", Msg::Bye),
        ("Poke", Msg::Poke { log_head: 301 }),
        ("Error", Msg::Error("out of turn".to_string())),
        (
            "Restored",
            Msg::Restored {
                taken_at: 1_700_000_000_000,
                after: 12,
            },
        ),
        (
            "OwnTraces",
            Msg::OwnTraces {
                records: Vec::new(),
                more: false,
            },
        ),
    ]
}

/// Whether a golden block's bytes decode to the value it was made of.
type DecodesBack = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One golden block's subject: its name, its bytes as the code encodes them, and a check that
/// a block's bytes decode to the same value.
struct Golden {
    name: &'static str,
    encoded: Vec<u8>,
    decodes_back: DecodesBack,
}

/// A message, framed as it travels.
fn framed(name: &'static str, msg: Msg) -> Golden {
    assert_eq!(msg.kind(), name, "a message's golden block bears its name");
    framed_as(name, msg)
}

/// A message of either session (`Msg`, or `peer::PeerMsg` between two sites), framed as the
/// wire does.
fn framed_as<M>(name: &'static str, msg: M) -> Golden
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
{
    Golden {
        name,
        encoded: frame::encode(&msg).expect("encode"),
        decodes_back: Box::new(move |bytes| {
            let mut decoder = FrameDecoder::new();
            decoder.push(bytes);
            match decoder.next_message::<M>() {
                Ok(Some(decoded)) if decoded == msg && decoder.buffered() == 0 => Ok(()),
                other => Err(format!(
                    "decode to {other:?}, {} bytes left over",
                    decoder.buffered()
                )),
            }
        }),
    }
}

/// Every message of a session between two sites, with synthetic values.
fn golden_peer_messages() -> Vec<Golden> {
    vec![
        framed_as(
            "PeerHandover",
            PeerMsg::Handover(Box::new(Handover {
                format: HANDOVER_FORMAT,
                ins: testkit::ins(),
                by: testkit::doctor(),
                reason: Some("SMUR".to_string()),
                records: vec![SignedRecord {
                    body: vec![0x04, 0x2a, 0x09],
                    signature: vec![0xee; 4],
                }],
                heartbeat: None,
                documents: Vec::new(),
                traces: Vec::new(),
            })),
        ),
        framed_as(
            "PeerAdmitted",
            PeerMsg::Admitted(Box::new(HandoverReport {
                records_admitted: 3,
                records_unchanged: 1,
                documents_new: 2,
                documents_merged: 0,
                documents_refused: vec![(doc(), "blocked".to_string())],
                traces_kept: 4,
                lease_from: Some(1_700_000_000_000),
                lacking: vec![(doc(), 1024)],
            })),
        ),
        framed_as("PeerRefused", PeerMsg::Refused("no head".to_string())),
        framed_as(
            "PeerPiece",
            PeerMsg::Piece(BodyPiece {
                doc: doc(),
                offset: 1024,
                total: 1027,
                bytes: vec![0xaa, 0xbb, 0xcc],
            }),
        ),
        framed_as("PeerDone", PeerMsg::Done),
        framed_as("PeerFinished", PeerMsg::Finished { lacking: 0 }),
        framed_as(
            "PeerAsk",
            PeerMsg::Ask {
                ins: testkit::ins(),
                by: Rpps::parse("10000000002").expect("rpps"),
                reason: Some("arrived".to_string()),
            },
        ),
    ]
}

/// A value carried inside a message, postcard alone.
fn raw<T>(name: &'static str, value: T) -> Golden
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
{
    Golden {
        name,
        encoded: postcard::to_stdvec(&value).expect("encode"),
        decodes_back: Box::new(move |bytes| match postcard::take_from_bytes::<T>(bytes) {
            Ok((decoded, [])) if decoded == value => Ok(()),
            other => Err(format!("decode to {other:?}")),
        }),
    }
}

/// Values inside messages that have golden blocks of their own.
fn golden_values() -> Vec<Golden> {
    vec![
        raw(
            "ChangeDocument",
            Change::Document {
                meta: Box::new(DocumentMeta::new(
                    DocumentFacts {
                        id: doc(),
                        unique_id: "1.2.3".to_string(),
                        ins: testkit::ins(),
                        class: DocClass::PATIENT,
                        type_code: "X".to_string(),
                        format: "text/plain".to_string(),
                        title: "note".to_string(),
                        author: Author::Holder,
                        author_site: SiteId(7),
                        created_at: 1_700_000_000_000,
                        service_start: 1_700_000_000_000,
                        service_end: None,
                        content_hash: [0x55; 32],
                        size: 5,
                        replaces: None,
                    },
                    SiteId(7),
                    DocState::default(),
                )),
                acts: vec![Act {
                    actor: Actor::Holder,
                    action: Action::Write,
                }],
            },
        ),
        raw(
            "HeartbeatBody",
            (
                RECORD_FORMAT,
                301u64,
                AuthorityRecord::Heartbeat(Heartbeat {
                    at: 1_700_000_000_000,
                    covers: Covers::Log {
                        site: SiteId(7),
                        log_head: 301,
                    },
                }),
            ),
        ),
        raw(
            "GrantBody",
            (
                RECORD_FORMAT,
                303u64,
                AuthorityRecord::Grant(Grant {
                    ins: testkit::ins(),
                    rpps: testkit::doctor(),
                    state: GrantState::Active,
                    basis: GrantBasis::Consent,
                    issued_at: 1_700_000_000_000,
                    until: None,
                }),
            ),
        ),
        raw(
            "DossierBody",
            (
                RECORD_FORMAT,
                304u64,
                AuthorityRecord::Dossier(DossierHead {
                    ins: testkit::ins(),
                    ins_kind: InsKind::TestNir,
                    identity: Identity {
                        birth_name: "A".to_string(),
                        first_names: "B".to_string(),
                        birth_date: "1984-05-01".to_string(),
                        sex: Sex::Female,
                        birthplace: None,
                        status: IdentityStatus::Qualified,
                    },
                    holder: HolderKind::Adult,
                    representatives: vec![Representative {
                        id: RepresentativeId(1),
                        name: "C".to_string(),
                        relationship: "D".to_string(),
                        since: 1_700_000_000_000,
                        ended: None,
                    }],
                    status: DossierStatus::Closed,
                    mask_new_by_default: false,
                    created_at: 1_700_000_000_000,
                    closure: Some(Closure {
                        at: 1_700_000_000_000,
                        reason: "E".to_string(),
                        deletion_requested: None,
                    }),
                }),
            ),
        ),
        raw(
            "EmergencyBody",
            (
                RECORD_FORMAT,
                305u64,
                AuthorityRecord::Emergency {
                    ins: testkit::ins(),
                    prefs: EmergencyPrefs {
                        samu_allowed: true,
                        btg_allowed: false,
                        masked_in_emergency: true,
                    },
                },
            ),
        ),
        raw(
            "PurgedBody",
            (
                RECORD_FORMAT,
                306u64,
                AuthorityRecord::Purged {
                    ins: testkit::ins(),
                    at: 1_700_000_000_000,
                },
            ),
        ),
        raw(
            "RefusedCertificatesBody",
            (
                RECORD_FORMAT,
                307u64,
                AuthorityRecord::RefusedCertificates(RefusedCertificates {
                    at: 1_700_000_000_000,
                    fingerprints: vec![[0x11; 32], [0x22; 32]],
                }),
            ),
        ),
        raw(
            "MatrixBody",
            (
                RECORD_FORMAT,
                308u64,
                AuthorityRecord::Matrix(HabilitationMatrix {
                    version: 2,
                    rules: [
                        (
                            Profession::Medecin,
                            TypeRule::AllExcept(["X".to_string()].into()),
                        ),
                        (
                            Profession::Infirmier,
                            TypeRule::Only(["Y".to_string()].into()),
                        ),
                    ]
                    .into(),
                }),
            ),
        ),
        raw(
            "ChangePurgeReceipt",
            Change::PurgeReceipt {
                ins: testkit::ins(),
                receipt: PurgeReceipt {
                    at: 1_700_000_000_000,
                    cause_seq: 305,
                },
            },
        ),
        raw(
            "ChangeEmergencyFetch",
            Change::EmergencyFetch {
                ins: testkit::ins(),
                rpps: testkit::doctor(),
                mode: AccessMode::BreakGlass,
                reason: "R".to_string(),
            },
        ),
        raw(
            "ChangeDossierProposal",
            Change::DossierProposal(Box::new(Proposal {
                head: DossierHead {
                    ins: testkit::ins(),
                    ins_kind: InsKind::TestNir,
                    identity: Identity {
                        birth_name: "A".to_string(),
                        first_names: "B".to_string(),
                        birth_date: "1984-05-01".to_string(),
                        sex: Sex::Male,
                        birthplace: None,
                        status: IdentityStatus::Qualified,
                    },
                    holder: HolderKind::Adult,
                    representatives: Vec::new(),
                    status: DossierStatus::Active,
                    mask_new_by_default: false,
                    created_at: 1_700_000_000_000,
                    closure: None,
                },
                creator: Actor::Professional(testkit::doctor()),
            })),
        ),
        raw("ChangeWithheld", Change::Withheld),
        raw("ChangeQuarantined", Change::Quarantined),
        raw(
            "ChangeProfessional",
            Change::Professional(Professional {
                rpps: testkit::doctor(),
                profession: Profession::Medecin,
                specialty: None,
                name: Some("F".to_string()),
            }),
        ),
        raw(
            "ReturnedDossier",
            Returned::Dossier {
                ins: testkit::ins(),
                reason: "closed".to_string(),
            },
        ),
        raw(
            "ChangePendingGrant",
            Change::PendingGrant {
                ins: testkit::ins(),
                rpps: testkit::doctor(),
            },
        ),
        raw(
            "PullItemWithdraw",
            PullItem::Withdraw {
                ins: testkit::ins(),
                docs: vec![doc()],
            },
        ),
        raw(
            "TraceRecord",
            TraceRecord {
                seq: 12,
                hash: [0x11; 32],
                entry: AuditEntry {
                    at: 1_700_000_000_000,
                    origin: SiteId(7),
                    actor: TraceActor::Professional {
                        rpps: testkit::doctor(),
                        profession: Some(Profession::Medecin),
                    },
                    action: TraceAction::Access(Action::Read),
                    ins: Some(testkit::ins().matricule().to_string()),
                    doc: Some(doc()),
                    mode: AccessMode::Normal,
                    allowed: true,
                    rule: 3,
                    outcome_reason: "granted".to_string(),
                    stated_reason: None,
                    decided_offline: false,
                    authority_version: 42,
                },
            },
        ),
    ]
}

/// Signature test vectors (PROTOCOL.md, "Signature test vectors"): a P-256 key made for them
/// and signatures made with it by an independent implementation (Python's `cryptography`), which
/// this build must verify, over the bytes this build signs.
mod vectors {
    /// The test key's SubjectPublicKeyInfo (DER).
    pub const SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004f77f4c3c67be0834c8ba25d24157c68da61cb9aa1c4b634ceef8af33bf5063ad9923b66992f3f1aeb020dfe4376c9b0573779ed6caa2fc627d73c955fed2a7bb";
    /// Its signature of the trace head message.
    pub const TRACE_HEAD: &str = "304502201d5d4532454d742bbb9350c376c829ffa28ddfebea77e1dde26017df00a9765a022100951e50f58be5b30e7390a526ff533771fbb1eaff539ae1732af9b8f7de316a68";
    /// Of the renewal message (its own key renewed, for site 7).
    pub const RENEWAL: &str = "3045022025360b4b14b244872adeb286502c59bb98a3a56edb99ec1708b5830ef774ba1a0221009d90513c68708b5bf682fc337a98819e04fd17511c19986f6298d2321fa1c8f2";
    /// Of the host key hand-over message.
    pub const HAND_OVER: &str = "304602210084454d8a774446186a7f2c22d1b06c0ab1ab3e12670dcbf50b1325381a7b5064022100b1e970de28b7920ba69b43fae1e577109c6394243bd17152b94e05614ff5f5a8";
    /// Of the host key revocation message.
    pub const REVOCATION: &str = "3046022100e6a37b9b24c40b0b155962e1f9d58febf693041fc33748624d7cc88341d04a940221008079d5cd9f174c6c9af105d9f3d2f49d0d7406e1bb025aa97647b17cdbab5925";
}

/// The bytes of hex `digits` (a constant of `vectors`).
fn unhex(digits: &str) -> Vec<u8> {
    hex(digits).expect("hex constant")
}

/// Bytes this build signs with ECDSA P-256 (`message`), checked against PROTOCOL.md; the
/// signature of them in `vectors` must verify under the test key.
fn signed_message(name: &'static str, message: Vec<u8>, signature: &'static str) -> Golden {
    Golden {
        name,
        encoded: message,
        decodes_back: Box::new(move |bytes| {
            crate::pki::verify_by_key(&unhex(vectors::SPKI), bytes, &unhex(signature))
                .map_err(|e| format!("do not verify under the test key: {e}"))
        }),
    }
}

/// The signature test vectors: the host's Ed25519 signature of a record (deterministic: the
/// bytes themselves are the vector), the messages signed with ECDSA P-256 and their
/// signatures by an independent implementation, and the files that carry such statements.
fn golden_signatures() -> Vec<Golden> {
    use ed25519_dalek::SigningKey;
    let host = SigningKey::from_bytes(&[0x42; 32]);
    let public = host.verifying_key();
    let heartbeat = AuthorityRecord::Heartbeat(Heartbeat {
        at: 1_700_000_000_000,
        covers: Covers::Log {
            site: SiteId(7),
            log_head: 42,
        },
    });
    let signed = carnet_store::authority::sign(&host, 9, &heartbeat).expect("sign");
    let spki = unhex(vectors::SPKI);
    let revocation = HostRevocation {
        version: 1,
        pin: [0xcc; 32],
        revoked_at: 1_700_000_000,
        signature: unhex(vectors::REVOCATION),
    };
    let bundle = crate::enrol::Bundle::of_fields(
        7,
        "Clinique Test",
        "010000000",
        "127.0.0.1:4433",
        vec![0xca; 3],
        crate::pki::Identity {
            cert_der: vec![0xce; 3],
            key_der: vec![0x6b; 3],
        },
        public.to_bytes(),
        [0x99; 32],
    );
    vec![
        Golden {
            name: "HostPublicKey",
            encoded: public.to_bytes().to_vec(),
            decodes_back: Box::new(|_| Ok(())),
        },
        Golden {
            name: "SignedHeartbeat",
            encoded: postcard::to_stdvec(&signed).expect("encode"),
            decodes_back: Box::new(move |bytes| {
                let signed: SignedRecord =
                    postcard::from_bytes(bytes).map_err(|e| format!("decode: {e}"))?;
                match carnet_store::authority::verify(&public, &signed) {
                    Ok(v) if v.seq == 9 && v.record == heartbeat => Ok(()),
                    other => Err(format!("verify to {other:?}")),
                }
            }),
        },
        signed_message(
            "TraceHeadMessage",
            SignedTraceHead::message(SiteId(7), 42, &[0x11; 32]),
            vectors::TRACE_HEAD,
        ),
        signed_message(
            "RenewalMessage",
            RenewalRequest::message(7, &spki),
            vectors::RENEWAL,
        ),
        signed_message(
            "HandOverMessage",
            HandOver::message(&[0xaa; 32], &[0xbb; 32]),
            vectors::HAND_OVER,
        ),
        signed_message(
            "HostRevocationMessage",
            HostRevocation::message(&[0xcc; 32], 1_700_000_000),
            vectors::REVOCATION,
        ),
        Golden {
            name: "HostRevocationFile",
            encoded: revocation.to_bytes().expect("encode"),
            decodes_back: Box::new(move |bytes| {
                let r = HostRevocation::from_bytes(bytes).map_err(|e| e.to_string())?;
                crate::pki::verify_by_key(
                    &unhex(vectors::SPKI),
                    &HostRevocation::message(&r.pin, r.revoked_at),
                    &r.signature,
                )
                .map_err(|e| format!("its signature: {e}"))?;
                if r == revocation {
                    Ok(())
                } else {
                    Err(format!("decode to {r:?}"))
                }
            }),
        },
        Golden {
            name: "EnrolmentBundle",
            encoded: bundle.to_bytes().expect("encode"),
            decodes_back: Box::new(move |bytes| {
                let rest = bytes
                    .strip_prefix(b"CARNETEN".as_slice())
                    .ok_or("no CARNETEN magic")?;
                let decoded: crate::enrol::Bundle =
                    postcard::from_bytes(rest).map_err(|e| format!("decode: {e}"))?;
                match decoded.to_bytes() {
                    Ok(again) if again == bytes => Ok(()),
                    other => Err(format!("encode again to {other:?}")),
                }
            }),
        },
    ]
}

/// Every golden block's subject.
fn goldens() -> Vec<Golden> {
    let mut all: Vec<Golden> = golden_messages()
        .into_iter()
        .map(|(name, msg)| framed(name, msg))
        .collect();
    all.extend(golden_peer_messages());
    all.extend(golden_values());
    all.extend(golden_signatures());
    all
}

/// PROTOCOL.md, next to the workspace's manifest.
fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    std::fs::read_to_string(path).expect("PROTOCOL.md is readable")
}

/// The golden blocks of `text`, by name, in order: the hex digits of each (whitespace between
/// them ignored), or the reason the block is malformed.
fn golden_blocks(text: &str) -> Vec<(String, Result<Vec<u8>, String>)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("```hex golden:") else {
            continue;
        };
        let digits: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        blocks.push((name.trim().to_string(), hex(&digits)));
    }
    blocks
}

fn hex(digits: &str) -> Result<Vec<u8>, String> {
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".to_string());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("not hex at digit {i}"))
        })
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_message_encodes_to_its_golden_bytes_in_protocol_md() {
    let blocks = golden_blocks(&protocol_md());
    let mut failures = Vec::new();
    for golden in goldens() {
        let name = golden.name;
        let mut found = blocks.iter().filter(|(n, _)| n == name);
        match (found.next(), found.next()) {
            (None, _) => failures.push(format!(
                "{name}: no ```hex golden:{name} block in PROTOCOL.md (the code encodes {})",
                to_hex(&golden.encoded)
            )),
            (Some(_), Some(_)) => failures.push(format!("{name}: two golden blocks")),
            (Some((_, Err(e))), None) => failures.push(format!("{name}: block malformed: {e}")),
            (Some((_, Ok(bytes))), None) => {
                if *bytes != golden.encoded {
                    failures.push(format!(
                        "{name}: PROTOCOL.md has {}\n  the code encodes   {}",
                        to_hex(bytes),
                        to_hex(&golden.encoded)
                    ));
                }
                if let Err(e) = (golden.decodes_back)(bytes) {
                    failures.push(format!("{name}: the golden bytes {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_golden_block_in_protocol_md_names_a_tested_message() {
    let names: Vec<&str> = goldens().iter().map(|g| g.name).collect();
    let stale: Vec<String> = golden_blocks(&protocol_md())
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !names.contains(&n.as_str()))
        .collect();
    assert!(stale.is_empty(), "golden blocks no test checks: {stale:?}");
}
