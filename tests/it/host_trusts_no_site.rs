//! The host trusts no site: an attacker holding one enrolled site's valid certificate (a pharmacy
//! PC) tries to get a dossier, or more of one, than the host authorizes for that site — through
//! the real `carnet` at the site, or through the wire itself (`rogue`). Each attack runs against
//! a real host daemon, and each is followed by the legitimate way to the same data, so the test
//! shows the host's decision and not a broken sync.

use std::time::Duration;

use carnet_store::authority::AuthorityRecord;
use carnet_store::clock::VersionVector;
use carnet_store::ids::{DocId, Ins, RepresentativeId, Rpps, SiteId};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{
    Actor, Author, Availability, DocClass, DocState, DocumentFacts, Profession,
};
use carnet_store::policy::Action;
use carnet_store::replica::{Act, Change, PullItem, Returned};
use carnet_syncd::session::Msg;

use crate::daemon::{
    Daemon, enrolled_site_and_bundle, free_port, start_daemon, sync_until_ok, wait_for_socket,
};
use crate::rogue::{Rogue, pulled_items};
use crate::support::*;

/// A host daemon with the dossier of `ins_a()` (DOCTOR treating) holding one document the host
/// wrote; and a site enrolled with no professional: the attacker's.
struct World {
    host: Carnet,
    _daemon: Daemon,
    ins: String,
    /// The document written at the host.
    doc: String,
    site: Carnet,
    bundle: std::path::PathBuf,
    site_id: String,
    /// Where the host listens (to enrol more sites).
    address: String,
}

fn world() -> World {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let doc = host.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"written at the host (synthetic)",
    );
    let (site, bundle) = enrolled_site_and_bundle(&host, &address, &[]);
    let site_id = host.json(&["pki", "list"])[0]["site_id"].to_string();
    let daemon = start_daemon(&host);
    wait_for_socket(&host);
    World {
        host,
        _daemon: daemon,
        ins,
        doc,
        site,
        bundle,
        site_id,
        address,
    }
}

/// The key the site chains its trace with, read from its folder (no daemon may run on it).
fn site_chain_key(site: &Carnet) -> [u8; 32] {
    carnet_store::replica::Replica::open(
        &site.data,
        &carnet_store::replica::KeySource::File,
        carnet_store::replica::system_clock(),
    )
    .expect("open the site's replica")
    .as_site()
    .expect("a site")
    .sync()
    .trace_chain_key()
}

/// Registers NURSE at the host and binds her to `site_id`.
fn bind_nurse(host: &Carnet, site_id: &str) {
    host.pro(NURSE, "infirmier");
    host.ok(&["pki", "bind", "--site", site_id, "--rpps", NURSE]);
}

/// True when the site holds anything of the dossier `ins`.
fn holds(site: &Carnet, ins: &str) -> bool {
    site.run(&["dossier", "show", ins, "--as", "holder"]).code == 0
}

/// Trace entries of the dossier `ins` at the host that mention `what`.
fn host_traced(host: &Carnet, ins: &str, what: &str) -> usize {
    trace_entries(host.json(&["audit", "show", "--dossier", ins]))
        .iter()
        .filter(|e| e.to_string().contains(what))
        .count()
}

#[test]
fn a_pin_is_a_request_the_host_decides() {
    let w = world();
    w.site.ok(&["pin", &w.ins]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(!holds(&w.site, &w.ins), "a pin alone brought the dossier");
    let requests = w.host.json(&["requests"]);
    assert_eq!(requests[0]["kind"], "pin", "{requests}");
    assert_eq!(requests[0]["ins"], w.ins.as_str(), "{requests}");
    assert!(host_traced(&w.host, &w.ins, "pin-requested") >= 1);
    // The host refuses it: nothing comes, and the request is gone.
    w.host.ok(&["unpin", &w.ins, "--site", &w.site_id]);
    assert_eq!(w.host.json(&["requests"]), serde_json::json!([]));
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(!holds(&w.site, &w.ins));
    // Asked again and accepted (an appointment with the holder's consent): the dossier comes.
    w.site.ok(&["pin", &w.ins]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    w.host.ok(&["pin", &w.ins, "--site", &w.site_id]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(holds(&w.site, &w.ins), "an accepted pin brings the dossier");
    // The host decides pins only with a site named; a site cannot decide its own.
    w.host.fails(2, &["pin", &w.ins]);
    w.site.fails(2, &["pin", &w.ins, "--site", &w.site_id]);
}

#[test]
fn claiming_a_doctors_rpps_brings_none_of_his_dossiers() {
    let w = world();
    w.site.pro(DOCTOR, "medecin");
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(
        !holds(&w.site, &w.ins),
        "a professional the site declared brought his dossiers"
    );
    assert_eq!(
        w.host.json(&["pki", "pros", "--site", &w.site_id]),
        serde_json::json!([])
    );
    // The host binds him to the site: his dossier comes, and he reads there.
    w.host
        .ok(&["pki", "bind", "--site", &w.site_id, "--rpps", DOCTOR]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert_eq!(
        w.site.body(&w.doc, DOCTOR),
        b"written at the host (synthetic)"
    );
    // Unbound, the dossier leaves the site's scope and is purged there.
    w.host
        .ok(&["pki", "unbind", "--site", &w.site_id, "--rpps", DOCTOR]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(!holds(&w.site, &w.ins), "unbound: purged");
    // The host binds only professionals it knows.
    w.host.fails(
        4,
        &["pki", "bind", "--site", &w.site_id, "--rpps", STRANGER],
    );
}

#[test]
fn a_pending_grant_never_becomes_a_national_grant_by_itself() {
    let w = world();
    let rogue = Rogue::connect(&w.bundle);
    let ins = Ins::parse(&w.ins).expect("ins");
    let replies = rogue.session(vec![
        rogue.hello(0, 0),
        Msg::Push {
            changes: vec![(
                1,
                Change::PendingGrant {
                    ins: ins.clone(),
                    rpps: Rpps::parse(STRANGER).expect("rpps"),
                },
            )],
            bodies: vec![],
        },
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::PushAck { upto: 1, .. })),
        "{replies:?}"
    );
    let grants = w.host.json(&["grant", "list", "--dossier", &w.ins]);
    assert!(
        !grants.to_string().contains(STRANGER),
        "an invented professional was granted: {grants}"
    );
    assert_eq!(w.host.json(&["requests"]), serde_json::json!([]));
    assert!(host_traced(&w.host, &w.ins, "consent-refused") >= 1);
    // Nothing of the dossier is sent to the site for it.
    let items = pulled_items(&rogue.pull_all());
    assert!(!items.iter().any(|i| about_dossier(i, &ins)), "{items:?}");
}

#[test]
fn consent_given_in_person_never_makes_nor_unmakes_the_medecin_traitant() {
    let w = world();
    bind_nurse(&w.host, &w.site_id);
    let rogue = Rogue::connect(&w.bundle);
    let ins = Ins::parse(&w.ins).expect("ins");
    // A pending grant for the médecin traitant himself, and one for the nurse.
    let replies = rogue.session(vec![
        rogue.hello(0, 0),
        Msg::Push {
            changes: vec![
                (
                    1,
                    Change::PendingGrant {
                        ins: ins.clone(),
                        rpps: Rpps::parse(DOCTOR).expect("rpps"),
                    },
                ),
                (
                    2,
                    Change::PendingGrant {
                        ins: ins.clone(),
                        rpps: Rpps::parse(NURSE).expect("rpps"),
                    },
                ),
            ],
            bodies: vec![],
        },
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::PushAck { upto: 2, .. })),
        "{replies:?}"
    );
    let medecin_traitant = || {
        w.host
            .json(&["grant", "list", "--dossier", &w.ins])
            .as_array()
            .expect("grants")
            .iter()
            .filter(|g| g["medecin_traitant"] == true)
            .map(|g| g["rpps"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(medecin_traitant(), vec![DOCTOR.to_string()]);
    // The nurse's consent confirmed at the host is a consent grant, never a designation.
    let nurse = w
        .host
        .json(&["grant", "add", "--dossier", &w.ins, "--rpps", NURSE]);
    assert_eq!(nurse["basis"], "consent", "{nurse}");
    // Confirming a consent for the médecin traitant would demote him: refused.
    w.host
        .fails(3, &["grant", "add", "--dossier", &w.ins, "--rpps", DOCTOR]);
    assert_eq!(medecin_traitant(), vec![DOCTOR.to_string()]);
    // Nothing the site pulls names another médecin traitant.
    let grants: Vec<_> =
        pulled_items(&rogue.pull_all())
            .into_iter()
            .filter_map(|i| match i {
                PullItem::Authority(signed) => carnet_store::authority::decode(&signed)
                    .ok()
                    .and_then(|v| match v.record {
                        carnet_store::authority::AuthorityRecord::Grant(g) => Some(g),
                        _ => None,
                    }),
                _ => None,
            })
            .filter(|g| g.medecin_traitant())
            .map(|g| g.rpps.as_str().to_string())
            .collect();
    assert!(grants.iter().all(|r| r == DOCTOR), "{grants:?}");
}

/// True when a pulled item carries something of the dossier `ins`.
fn about_dossier(item: &PullItem, ins: &Ins) -> bool {
    match item {
        PullItem::Document(m) => &m.facts.ins == ins,
        PullItem::Authority(s) => {
            carnet_store::authority::decode(s).is_ok_and(|v| v.record.ins() == Some(ins))
        }
        PullItem::Leave(_) => false,
        PullItem::Withdraw { ins: of, .. } => of == ins,
    }
}

/// A new document of `ins` written at `site` by `author` as a `profession`, as a rogue would
/// forge it.
fn forged_document(
    ins: &str,
    site: u32,
    author: &str,
    profession: Profession,
    body: &[u8],
) -> DocumentMeta {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let id = DocId::mint(now);
    DocumentMeta::new(
        DocumentFacts {
            id,
            unique_id: format!("urn:rogue:{id}"),
            ins: Ins::parse(ins).expect("ins"),
            class: DocClass::parse("10").expect("class"),
            type_code: CONSULTATION.into(),
            format: "text/plain".into(),
            title: "forged (synthetic)".into(),
            author: Author::Professional {
                rpps: Rpps::parse(author).expect("rpps"),
                profession,
            },
            author_site: SiteId(site),
            created_at: now,
            service_start: now,
            service_end: None,
            content_hash: *blake3::hash(body).as_bytes(),
            size: body.len() as u64,
            replaces: None,
        },
        SiteId(site),
        DocState::default(),
    )
}

#[test]
fn writing_into_a_dossier_does_not_bring_the_rest_of_it() {
    let w = world();
    // A professional of the site, bound by the host, with no grant on the dossier: he may feed
    // it (row 11), not read it.
    bind_nurse(&w.host, &w.site_id);
    let rogue = Rogue::connect(&w.bundle);
    let body = b"a note (synthetic)";
    let meta = forged_document(&w.ins, rogue.site, NURSE, Profession::Infirmier, body);
    let own = meta.facts.id;
    let replies = rogue.session(vec![
        rogue.hello(0, 0),
        Msg::Push {
            changes: vec![(1, written(meta))],
            bodies: vec![carnet_store::replica::BodyPiece {
                doc: own,
                offset: 0,
                total: body.len() as u64,
                bytes: body.to_vec(),
            }],
        },
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::PushAck { upto: 1, returned, .. } if returned.is_empty())),
        "{replies:?}"
    );
    let items = pulled_items(&rogue.pull_all());
    let host_doc = DocId::parse(&w.doc).expect("id");
    let documents: Vec<DocId> = items
        .iter()
        .filter_map(|i| match i {
            PullItem::Document(m) => Some(m.facts.id),
            _ => None,
        })
        .collect();
    assert!(
        !documents.contains(&host_doc),
        "writing one document brought the host's: {documents:?}"
    );
    let grants = items
        .iter()
        .filter(|i| {
            matches!(i, PullItem::Authority(s) if carnet_store::authority::decode(s)
                .is_ok_and(|v| matches!(v.record, AuthorityRecord::Grant(_))))
        })
        .count();
    assert_eq!(grants, 0, "grants of others were sent: {items:?}");
    // Nor does asking for the host's body by id.
    let fetched = rogue.session(vec![Msg::GetBody {
        doc: host_doc,
        offset: 0,
    }]);
    assert!(
        !fetched.iter().any(|m| matches!(m, Msg::Body { .. })),
        "{fetched:?}"
    );
    // Once the holder grants the nurse, the dossier comes whole (the legitimate way).
    w.host
        .ok(&["grant", "add", "--dossier", &w.ins, "--rpps", NURSE]);
    let items = pulled_items(&rogue.pull_all());
    assert!(
        items
            .iter()
            .any(|i| matches!(i, PullItem::Document(m) if m.facts.id == host_doc)),
        "{items:?}"
    );
}

/// One whole body as a single piece.
fn whole(doc: DocId, body: &[u8]) -> carnet_store::replica::BodyPiece {
    carnet_store::replica::BodyPiece {
        doc,
        offset: 0,
        total: body.len() as u64,
        bytes: body.to_vec(),
    }
}

/// What the host says a site owes, from its `Welcome`.
fn owed(site: &Rogue) -> Vec<(DocId, u64)> {
    site.session(vec![site.hello(0, 0)])
        .into_iter()
        .find_map(|m| match m {
            Msg::Welcome { owed, .. } => Some(owed),
            _ => None,
        })
        .expect("a Welcome")
}

#[test]
fn a_site_that_owes_no_body_cannot_send_one_nor_cancel_the_debt() {
    let w = world();
    // An honest site, enrolled and bound to a nurse by the host, pushes a note without its
    // body: the host records the body as owed by that site.
    let (_honest_site, honest_bundle) = enrolled_site_and_bundle(&w.host, &w.address, &[]);
    let honest_id = w.host.json(&["pki", "list"])[1]["site_id"].to_string();
    bind_nurse(&w.host, &honest_id);
    let honest = Rogue::connect(&honest_bundle);
    let body = b"the nurse's note, as written (synthetic)";
    let meta = forged_document(&w.ins, honest.site, NURSE, Profession::Infirmier, body);
    let doc = meta.facts.id;
    let replies = honest.session(vec![
        honest.hello(0, 0),
        Msg::Push {
            changes: vec![(1, written(meta))],
            bodies: vec![],
        },
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::PushAck { upto: 1, missing, .. } if missing == &[(doc, 0)])),
        "{replies:?}"
    );
    assert_eq!(owed(&honest), vec![(doc, 0)]);

    // The attacker's site owes nothing of it: a bogus complete body, or even the right bytes,
    // is refused, and the body stays owed by the honest site.
    let rogue = Rogue::connect(&w.bundle);
    for bytes in [&b"a forged body, as long as the real"[..], &body[..]] {
        let mut bytes = bytes.to_vec();
        bytes.resize(body.len(), b'!');
        let replies = rogue.session(vec![
            rogue.hello(0, 0),
            Msg::PutBodies(vec![whole(doc, &bytes)]),
        ]);
        assert!(
            !replies.iter().any(|m| matches!(m, Msg::BodyStored { .. })),
            "{replies:?}"
        );
        assert_eq!(owed(&honest), vec![(doc, 0)], "the debt was cancelled");
        assert!(
            replies
                .iter()
                .any(|m| matches!(m, Msg::Error(e) if e.contains("owes no body"))),
            "{replies:?}"
        );
    }
    w.host
        .fails(4, &["doc", "get", &doc.to_string(), "--as", DOCTOR]);

    // The owing site's own body fails its hash (damaged on the way): the pieces go, the debt
    // stays, and it is asked again.
    let replies = honest.session(vec![
        honest.hello(0, 1),
        Msg::PutBodies(vec![whole(doc, &vec![0; body.len()])]),
    ]);
    assert!(
        !replies.iter().any(|m| matches!(m, Msg::BodyStored { .. })),
        "{replies:?}"
    );
    assert_eq!(owed(&honest), vec![(doc, 0)]);

    // The real body from the site that owes it is taken, and the host serves it.
    let replies = honest.session(vec![
        honest.hello(0, 1),
        Msg::PutBodies(vec![whole(doc, body)]),
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::BodyStored { doc: d } if *d == doc)),
        "{replies:?}"
    );
    assert_eq!(owed(&honest), vec![]);
    assert_eq!(w.host.body(&doc.to_string(), DOCTOR), body);
}

#[test]
fn a_heartbeat_taken_off_the_wire_does_not_renew_a_stale_sites_lease() {
    let w = world();
    // The site's doctor is bound by the host: the dossier comes, and the lease is renewed.
    w.host
        .ok(&["pki", "bind", "--site", &w.site_id, "--rpps", DOCTOR]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(holds(&w.site, &w.ins));
    let renewed = w.site.json(&["sync", "status"])["authority_as_of"].clone();
    assert!(renewed.is_string(), "{renewed}");
    // The holder designates another médecin traitant and revokes him; the site does not sync
    // (its operator keeps it away from the host), so it does not learn of it.
    w.host.ok(&[
        "grant",
        "add",
        "--dossier",
        &w.ins,
        "--rpps",
        STRANGER,
        "--medecin-traitant",
    ]);
    w.host
        .ok(&["grant", "revoke", "--dossier", &w.ins, "--rpps", DOCTOR]);
    // With the site's certificate (and the trace chain key from its folder), a fresh heartbeat
    // is one Hello away: claim the log head.
    let key = site_chain_key(&w.site);
    let rogue = Rogue::connect(&w.bundle);
    let head = rogue
        .session(vec![rogue.hello_with_key(0, 0, key)])
        .into_iter()
        .find_map(|m| match m {
            Msg::Welcome { log_head, .. } => Some(log_head),
            _ => None,
        })
        .expect("a Welcome");
    let heartbeat = rogue
        .session(vec![rogue.hello_with_key(head, 0, key)])
        .into_iter()
        .find_map(|m| match m {
            Msg::Welcome { current, .. } => current,
            _ => None,
        })
        .expect("a heartbeat for a site at its log head");
    // Slipped into the stale site's replica as a bundle, in the old layout or the new one: the
    // bundle is refused, and the lease does not move.
    let host_key =
        carnet_syncd::enrol::Bundle::from_bytes(&std::fs::read(&w.bundle).expect("bundle"))
            .expect("enrolment bundle")
            .host_key;
    let layouts = [
        postcard::to_stdvec(&(1u8, host_key, vec![heartbeat.clone()])).expect("encode"),
        postcard::to_stdvec(&(
            2u8,
            host_key,
            vec![heartbeat.clone()],
            None::<carnet_store::authority::SignedRecord>,
        ))
        .expect("encode"),
    ];
    for (i, layout) in layouts.iter().enumerate() {
        let mut bytes = carnet_store::authority::BUNDLE_MAGIC.to_vec();
        bytes.extend_from_slice(layout);
        let file = w.site.write(&format!("heartbeat-{i}"), &bytes);
        let o = w.site.run(&["authority", "import", &file]);
        assert_ne!(o.code, 0, "layout {i} imported: {}", o.stdout);
        assert_eq!(
            w.site.json(&["sync", "status"])["authority_as_of"],
            renewed,
            "layout {i} renewed the lease"
        );
    }
    // Synced, the site learns of the revocation, purges the dossier, and is current again.
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(
        !holds(&w.site, &w.ins),
        "revoked: the dossier left the site"
    );
    assert_ne!(w.site.json(&["sync", "status"])["authority_as_of"], renewed);
}

#[test]
fn a_site_can_neither_rewrite_nor_restart_its_trace_at_the_host() {
    let w = world();
    // A traced request: the site's trace has entries to push.
    w.site.ok(&["pin", &w.ins]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    // The attacker holds the site's folder and key, and its certificate.
    let key = site_chain_key(&w.site);
    let mut records = carnet_store::replica::Replica::open(
        &w.site.data,
        &carnet_store::replica::KeySource::File,
        carnet_store::replica::system_clock(),
    )
    .expect("open the site's replica")
    .as_site()
    .expect("a site")
    .sync()
    .traces_after(0, 100)
    .expect("traces");
    assert!(!records.is_empty());
    let rogue = Rogue::connect(&w.bundle);
    // Another chain key: a history started again is refused.
    let replies = rogue.session(vec![rogue.hello(0, 0)]);
    assert!(
        matches!(replies.first(), Some(Msg::Error(e)) if e.contains("chain key")),
        "{replies:?}"
    );
    // The real key, and an entry the host holds sent again with another content.
    records[0].entry.allowed = !records[0].entry.allowed;
    let replies = rogue.session(vec![
        rogue.hello_with_key(0, 0, key),
        rogue.traces(vec![records[0].clone()]),
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::Error(e) if e.contains("rewritten"))),
        "{replies:?}"
    );
    // The honest site syncs on.
    sync_until_ok(&w.site, Duration::from_secs(30));
}

/// The trace entries of `site` not yet sent, and its chain key, read from its folder (no
/// daemon may run on it).
fn unsent_traces(site: &Carnet) -> (Vec<carnet_store::replica::TraceRecord>, [u8; 32]) {
    let replica = carnet_store::replica::Replica::open(
        &site.data,
        &carnet_store::replica::KeySource::File,
        carnet_store::replica::system_clock(),
    )
    .expect("open the site's replica");
    let records = replica
        .as_site()
        .expect("a site")
        .sync()
        .traces_after(0, 100)
        .expect("traces");
    (
        records,
        replica.as_site().expect("a site").sync().trace_chain_key(),
    )
}

#[test]
fn the_host_keeps_a_sites_trace_only_under_a_head_that_site_signed() {
    let mut w = world();
    // A traced request, not synced: the site's trace has entries the host does not hold.
    w.site.ok(&["pin", &w.ins]);
    let (records, key) = unsent_traces(&w.site);
    let last = records.last().map(|r| (r.seq, r.hash)).expect("an entry");
    let rogue = Rogue::connect(&w.bundle);
    let mut not_sent = last.1;
    not_sent[0] ^= 1;
    let attacks = [
        (
            "unsigned",
            Msg::Traces {
                records: records.clone(),
                head: None,
            },
        ),
        (
            "signed as another site",
            rogue.traces_signed(records.clone(), rogue.site + 1, last),
        ),
        (
            "a signed head that is not the entries sent",
            rogue.traces_signed(records.clone(), rogue.site, (last.0, not_sent)),
        ),
    ];
    let held = |rogue: &Rogue| match rogue.session(vec![rogue.hello_with_key(0, 0, key)]).first() {
        Some(Msg::Welcome { traces_acked, .. }) => *traces_acked,
        other => panic!("no Welcome: {other:?}"),
    };
    for (what, traces) in attacks {
        let replies = rogue.session(vec![rogue.hello_with_key(0, 0, key), traces]);
        assert!(
            replies
                .iter()
                .any(|m| matches!(m, Msg::Error(e) if e.contains("trace head"))),
            "{what}: {replies:?}"
        );
        assert_eq!(held(&rogue), 0, "{what}: nothing stored");
    }
    // Signed by the site's certificate key over the last entry: kept.
    let replies = rogue.session(vec![
        rogue.hello_with_key(0, 0, key),
        rogue.traces(records.clone()),
    ]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::TracesAck { upto } if *upto == last.0)),
        "{replies:?}"
    );
    // The honest site syncs on: the head the host holds is its own.
    sync_until_ok(&w.site, Duration::from_secs(30));
    // The host traced each refusal, and keeps the head the site signed with its certificate.
    drop(rogue);
    crate::daemon::stop(&mut w._daemon);
    let host = carnet_store::replica::Replica::open(
        &w.host.data,
        &carnet_store::replica::KeySource::File,
        carnet_store::replica::system_clock(),
    )
    .expect("open the host's replica");
    let refusals = host
        .audit_entries(None)
        .expect("audit")
        .iter()
        .filter(|c| c.entry.action.name() == "trace-head-refused")
        .count();
    assert_eq!(refusals, 3);
    let site = SiteId(w.site_id.parse().expect("site id"));
    let kept = host
        .as_host()
        .expect("the host")
        .sync()
        .signed_trace_head(site)
        .expect("read")
        .expect("a signed head");
    assert_eq!(
        (kept.head.seq, kept.head.hash),
        host.as_host()
            .expect("the host")
            .sync()
            .trace_head_held(site)
            .expect("head")
    );
    let bundle = carnet_syncd::enrol::Bundle::from_bytes(&std::fs::read(&w.bundle).expect("read"))
        .expect("bundle");
    assert_eq!(kept.signer, bundle.identity.cert_der);
}

#[test]
fn an_emergency_outside_the_scope_is_fetched_on_demand_decided_and_traced_at_the_host() {
    let w = world();
    w.host.pro(ER_DOCTOR, "medecin");
    w.site.pro(ER_DOCTOR, "medecin");
    let fetch = |reason: &str| {
        w.site.run(&[
            "emergency",
            "fetch",
            "--dossier",
            &w.ins,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            reason,
        ])
    };
    // Not bound to the site by the host: refused (exit 3), nothing comes.
    assert_eq!(fetch("unconscious (synthetic)").code, 3);
    assert!(!holds(&w.site, &w.ins));
    // Bound: the host decides it, traces it, and the dossier comes for the emergency.
    w.host
        .ok(&["pki", "bind", "--site", &w.site_id, "--rpps", ER_DOCTOR]);
    let o = fetch("unconscious (synthetic)");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let body = w.site.ok(&[
        "doc",
        "get",
        &w.doc,
        "--as",
        ER_DOCTOR,
        "--mode",
        "break-glass",
        "--reason",
        "unconscious (synthetic)",
    ]);
    assert_eq!(body.raw, b"written at the host (synthetic)");
    w.site.fails(3, &["doc", "get", &w.doc, "--as", ER_DOCTOR]);
    let emergencies = w.host.json(&["audit", "emergencies"]);
    let at_host: Vec<_> = emergencies
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["site_id"] == 0 && e["ins"] == w.ins.as_str())
        .map(|e| e["allowed"].clone())
        .collect();
    assert_eq!(at_host, [false, true], "{emergencies}");
}

/// A new document as a site pushes it: written by its author.
fn written(meta: DocumentMeta) -> Change {
    let actor = match &meta.facts.author {
        Author::Professional { rpps, .. } => Actor::Professional(rpps.clone()),
        Author::Holder => Actor::Holder,
        Author::Representative(id) => Actor::Representative(*id),
    };
    Change::Document {
        meta: Box::new(meta),
        acts: vec![Act {
            actor,
            action: Action::Write,
        }],
    }
}

/// A changed document as a site pushes it, with `rpps` as the one who did `action`.
fn acted(meta: DocumentMeta, rpps: &str, action: Action) -> Change {
    Change::Document {
        meta: Box::new(meta),
        acts: vec![Act {
            actor: Actor::Professional(Rpps::parse(rpps).expect("rpps")),
            action,
        }],
    }
}

/// `NURSE` registered at the host, bound to the world's site and granted on its dossier: the
/// site legitimately holds the host's document. Answers the rogue and that document as it
/// pulled it.
fn nurse_holding_the_hosts_document(w: &World) -> (Rogue, DocumentMeta) {
    bind_nurse(&w.host, &w.site_id);
    w.host
        .ok(&["grant", "add", "--dossier", &w.ins, "--rpps", NURSE]);
    let rogue = Rogue::connect(&w.bundle);
    let meta = pulled_host_document(w, &rogue);
    (rogue, meta)
}

/// Pushes `change` as the rogue's change `seq`; answers the documents the host returned.
pub(crate) fn push(rogue: &Rogue, seq: u64, change: Change) -> Vec<DocId> {
    let replies = rogue.session(vec![
        rogue.hello(0, seq - 1),
        Msg::Push {
            changes: vec![(seq, change)],
            bodies: vec![],
        },
    ]);
    replies
        .iter()
        .find_map(|m| match m {
            Msg::PushAck { upto, returned, .. } if *upto == seq => Some(
                returned
                    .iter()
                    .filter_map(|r| match r {
                        Returned::Document { id, reason } => {
                            assert!(!reason.is_empty(), "a return says why");
                            Some(*id)
                        }
                        Returned::Dossier { .. } => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no acknowledgement of change {seq}: {replies:?}"))
}

/// The host's document as `DOCTOR` lists it at the host (`None` when he does not see it).
fn at_host(w: &World, id: &str) -> Option<serde_json::Value> {
    w.host
        .json(&["doc", "list", "--dossier", &w.ins, "--as", DOCTOR])
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
}

#[test]
fn a_site_cannot_delete_a_document_its_professional_could_not() {
    let w = world();
    let (rogue, mut meta) = nurse_holding_the_hosts_document(&w);
    let id = meta.facts.id;
    meta.update(SiteId(rogue.site), |s| {
        s.availability = Some(Availability::Deleted)
    });
    // The nurse may read and mask it (an active grant), not delete it (only its author may).
    let returned = push(&rogue, 1, acted(meta.clone(), NURSE, Action::Delete));
    assert_eq!(returned, vec![id], "the deletion was not returned");
    // Nor is a deletion that names no act, or its author (who does not practise at that site).
    let mut bare = acted(meta.clone(), NURSE, Action::Delete);
    if let Change::Document { acts, .. } = &mut bare {
        acts.clear();
    }
    assert_eq!(push(&rogue, 2, bare), vec![id]);
    assert_eq!(
        push(&rogue, 3, acted(meta, DOCTOR, Action::Delete)),
        vec![id]
    );
    let shown = at_host(&w, &w.doc).expect("still listed at the host");
    assert_eq!(shown["availability"], "approved", "{shown}");
    assert_eq!(
        w.host.body(&w.doc, DOCTOR),
        b"written at the host (synthetic)"
    );
    assert!(host_traced(&w.host, &w.ins, "returned to site") >= 3);
}

#[test]
fn a_mask_in_the_name_of_a_professional_the_host_does_not_bind_there_is_returned() {
    let w = world();
    let (rogue, mut meta) = nurse_holding_the_hosts_document(&w);
    let id = meta.facts.id;
    meta.update(SiteId(rogue.site), |s| s.flags.masque_ps = true);
    // The médecin traitant may mask anything, but he does not practise at that site; the
    // stranger is nobody the host knows.
    assert_eq!(
        push(&rogue, 1, acted(meta.clone(), DOCTOR, Action::Mask)),
        vec![id]
    );
    assert_eq!(
        push(&rogue, 2, acted(meta.clone(), STRANGER, Action::Mask)),
        vec![id]
    );
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"], serde_json::json!([]), "{shown}");
    assert!(host_traced(&w.host, &w.ins, "does not practise at that site") >= 1);
    // The nurse the host binds there, granted, may mask it: that is merged.
    assert!(push(&rogue, 3, acted(meta, NURSE, Action::Mask)).is_empty());
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"][0], "MASQUE_PS", "{shown}");
}

#[test]
fn a_version_vector_that_advances_another_replicas_counter_is_refused() {
    let w = world();
    let (rogue, meta) = nurse_holding_the_hosts_document(&w);
    let id = meta.facts.id;
    // A mask the nurse may make, in a version claiming to have seen changes of the host, or
    // of another site, that the host never made or received.
    for (seq, other) in [(1, SiteId(0)), (2, SiteId(rogue.site + 1))] {
        let mut forged = meta.clone();
        forged.update(SiteId(rogue.site), |s| s.flags.masque_ps = true);
        for _ in 0..1000 {
            forged.update(other, |_| {});
        }
        assert_eq!(
            push(&rogue, seq, acted(forged, NURSE, Action::Mask)),
            vec![id]
        );
    }
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"], serde_json::json!([]), "{shown}");
    assert!(host_traced(&w.host, &w.ins, "version vector") >= 2);
    // The host's own later change still reaches the site.
    w.host
        .ok(&["doc", "hide-from-patient", &w.doc, "--as", DOCTOR]);
    let now = pulled_items(&rogue.pull_all())
        .into_iter()
        .find_map(|i| match i {
            PullItem::Document(m) if m.facts.id == id => Some(*m),
            _ => None,
        })
        .expect("the document");
    assert!(now.state().flags.invisible_patient, "{:?}", now.state());
    // And the same mask with an honest version vector is merged.
    let mut honest = now;
    honest.update(SiteId(rogue.site), |s| s.flags.masque_ps = true);
    assert!(push(&rogue, 3, acted(honest, NURSE, Action::Mask)).is_empty());
    let shown = at_host(&w, &w.doc).expect("listed");
    assert!(
        shown["confidentiality"]
            .as_array()
            .expect("flags")
            .contains(&"MASQUE_PS".into()),
        "{shown}"
    );
}

#[test]
fn a_site_can_neither_hide_nor_make_up_a_conflict_with_the_clocks_of_its_replacements() {
    let w = world();
    bind_nurse(&w.host, &w.site_id);
    let rogue = Rogue::connect(&w.bundle);
    let site = SiteId(rogue.site);
    let own = forged_document(&w.ins, rogue.site, NURSE, Profession::Infirmier, b"n");
    let id = own.facts.id;
    assert!(push(&rogue, 1, written(own.clone())).is_empty());
    let later = |n: u8| DocId([n; 16]);
    // The nurse replaces her own document (she may): recorded at a version vector her version
    // has not reached, or twice by one change.
    let replaced = |base: &DocumentMeta, successors: Vec<(DocId, VersionVector)>| {
        let mut m = base.clone();
        m.update(site, |s| {
            s.successors.extend(successors);
            s.availability = Some(Availability::Deprecated);
        });
        m
    };
    let at = own.next_clock(site);
    let mut ahead = at.clone();
    for _ in 0..5 {
        ahead.bump(site);
    }
    let forged = replaced(&own, vec![(later(1), ahead)]);
    assert_eq!(
        push(&rogue, 2, acted(forged, NURSE, Action::Replace)),
        vec![id]
    );
    let twice = replaced(&own, vec![(later(1), at.clone()), (later(2), at.clone())]);
    assert_eq!(
        push(&rogue, 3, acted(twice, NURSE, Action::Replace)),
        vec![id]
    );
    assert!(host_traced(&w.host, &w.ins, "is recorded at") >= 1);
    assert!(host_traced(&w.host, &w.ins, "by one change") >= 1);
    let shown = at_host(&w, &id.to_string()).expect("listed");
    assert_eq!(shown["replaced_by"], serde_json::json!([]), "{shown}");
    // Honest clocks are taken, and a replacement after another is no conflict.
    let first = replaced(&own, vec![(later(1), at)]);
    let second_at = first.next_clock(site);
    let second = replaced(&first, vec![(later(2), second_at)]);
    assert!(push(&rogue, 4, acted(first, NURSE, Action::Replace)).is_empty());
    assert!(push(&rogue, 5, acted(second.clone(), NURSE, Action::Replace)).is_empty());
    let shown = at_host(&w, &id.to_string()).expect("listed");
    assert_eq!(
        shown["replaced_by"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    assert_eq!(shown["conflict"], false, "{shown}");
    // A resolution keeps one of the document's replacements, or is returned.
    let at = second.next_clock(site);
    let mut bogus = second;
    bogus.update(site, |s| {
        s.resolutions.insert(later(9), at);
    });
    assert_eq!(
        push(&rogue, 6, acted(bogus, NURSE, Action::Replace)),
        vec![id]
    );
    assert!(host_traced(&w.host, &w.ins, "does not replace it") >= 1);
    let shown = at_host(&w, &id.to_string()).expect("listed");
    assert_eq!(shown["resolutions"], serde_json::json!([]), "{shown}");
}

/// The host's document as the rogue pulls it now.
fn pulled_host_document(w: &World, rogue: &Rogue) -> DocumentMeta {
    let id = DocId::parse(&w.doc).expect("id");
    pulled_items(&rogue.pull_all())
        .into_iter()
        .find_map(|i| match i {
            PullItem::Document(m) if m.facts.id == id => Some(*m),
            _ => None,
        })
        .expect("the host's document")
}

#[test]
fn a_mask_the_host_lifted_does_not_come_back_without_an_act_that_may_mask() {
    let w = world();
    let (rogue, _) = nurse_holding_the_hosts_document(&w);
    w.host.ok(&["doc", "mask", &w.doc, "--as", DOCTOR]);
    let masked = pulled_host_document(&w, &rogue);
    assert!(masked.state().flags.masque_ps);
    w.host.ok(&["doc", "unmask", &w.doc, "--as", DOCTOR]);
    // The rogue pushes a version that "has not seen" the unmask, still masked: with no act,
    // in the name of the doctor (who does not practise there) or of a stranger.
    let stale = || {
        let mut m = masked.clone();
        m.update(SiteId(rogue.site), |_| {});
        m
    };
    let mut bare = acted(stale(), NURSE, Action::HideFromPatient);
    if let Change::Document { acts, .. } = &mut bare {
        acts.clear();
    }
    let id = masked.facts.id;
    assert_eq!(push(&rogue, 1, bare), vec![id]);
    assert_eq!(
        push(&rogue, 2, acted(stale(), DOCTOR, Action::HideFromPatient)),
        vec![id]
    );
    assert_eq!(
        push(&rogue, 3, acted(stale(), STRANGER, Action::Mask)),
        vec![id]
    );
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"], serde_json::json!([]), "{shown}");
    assert!(host_traced(&w.host, &w.ins, "returned to site") >= 3);
    // The nurse, granted, may mask: the same version in her name is her mask, merged; and
    // after a second unmask, seen this time, her mask with its act is merged too.
    assert!(push(&rogue, 4, acted(stale(), NURSE, Action::HideFromPatient)).is_empty());
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"][0], "MASQUE_PS", "{shown}");
    w.host.ok(&["doc", "unmask", &w.doc, "--as", DOCTOR]);
    let mut seen = pulled_host_document(&w, &rogue);
    assert!(!seen.state().flags.masque_ps);
    seen.update(SiteId(rogue.site), |s| s.flags.masque_ps = true);
    assert!(push(&rogue, 5, acted(seen, NURSE, Action::Mask)).is_empty());
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"][0], "MASQUE_PS", "{shown}");
}

#[test]
fn a_new_document_is_taken_only_from_an_author_the_host_binds_there_as_the_host_knows_him() {
    let w = world();
    // The nurse is bound to the site: he may feed the dossier (row 11), as a nurse.
    bind_nurse(&w.host, &w.site_id);
    let rogue = Rogue::connect(&w.bundle);
    let body = b"a note (synthetic)";
    let cases = [
        // Nobody the host binds to the site.
        forged_document(&w.ins, rogue.site, STRANGER, Profession::Medecin, body),
        // A doctor of the dossier, who does not practise at that site.
        forged_document(&w.ins, rogue.site, DOCTOR, Profession::Medecin, body),
        // The nurse, claiming to be a doctor.
        forged_document(&w.ins, rogue.site, NURSE, Profession::Medecin, body),
    ];
    for (seq, meta) in (1..).zip(cases) {
        let id = meta.facts.id;
        assert_eq!(push(&rogue, seq, written(meta)), vec![id], "case {seq}");
        assert!(at_host(&w, &id.to_string()).is_none(), "case {seq}");
    }
    assert!(host_traced(&w.host, &w.ins, "returned to site") >= 3);
    // The nurse as a nurse: taken.
    let meta = forged_document(&w.ins, rogue.site, NURSE, Profession::Infirmier, body);
    let id = meta.facts.id;
    assert!(push(&rogue, 4, written(meta)).is_empty());
    assert!(at_host(&w, &id.to_string()).is_some());
}

#[test]
fn metadata_no_writer_of_carnet_makes_is_returned_whoever_the_author() {
    let w = world();
    bind_nurse(&w.host, &w.site_id);
    let rogue = Rogue::connect(&w.bundle);
    let body = b"a note (synthetic)";
    let cases: [fn(&mut DocumentFacts); 5] = [
        |f| f.service_start = 253_402_214_400_000, // 9999-12-31
        |f| f.created_at = -4_000_000_000_000,     // 1843
        |f| f.title = "Compte rendu \u{1b}]0;pwned\u{7}".into(),
        |f| f.type_code = "11488-4 \u{202e}".into(),
        |f| f.title = "x".repeat(10_000),
    ];
    for (seq, forge) in (1..).zip(cases) {
        let mut meta = forged_document(&w.ins, rogue.site, NURSE, Profession::Infirmier, body);
        forge(&mut meta.facts);
        let id = meta.facts.id;
        assert_eq!(push(&rogue, seq, written(meta)), vec![id], "case {seq}");
        assert!(at_host(&w, &id.to_string()).is_none(), "case {seq}");
    }
    assert!(host_traced(&w.host, &w.ins, "its metadata") >= 5);
    // The same author with plain metadata: taken.
    let meta = forged_document(&w.ins, rogue.site, NURSE, Profession::Infirmier, body);
    let id = meta.facts.id;
    assert!(push(&rogue, 6, written(meta)).is_empty());
    assert!(at_host(&w, &id.to_string()).is_some());
}

#[test]
fn a_document_in_the_name_of_a_representative_the_host_does_not_record_is_returned() {
    let w = world();
    // A minor's dossier the site may hold (the nurse it binds there is granted on it), with
    // one representative, R1.
    let minor = ins_b();
    w.host.ok(&[
        "dossier",
        "create",
        "--ins",
        &minor,
        "--birth-name",
        "EXEMPLE",
        "--first-names",
        "Louis",
        "--birth-date",
        "2015-03-04",
        "--sex",
        "M",
        "--holder",
        "minor",
        "--representative",
        "Mme EXEMPLE:mother",
        "--qualified",
    ]);
    bind_nurse(&w.host, &w.site_id);
    w.host
        .ok(&["grant", "add", "--dossier", &minor, "--rpps", NURSE]);
    let rogue = Rogue::connect(&w.bundle);
    let by = |n: u16| {
        let mut meta = forged_document(&minor, rogue.site, NURSE, Profession::Infirmier, b"x");
        meta.facts.author = Author::Representative(RepresentativeId(n));
        meta.facts.class = DocClass::PATIENT;
        meta.facts.type_code = "DOCPAT01".into();
        meta
    };
    let listed = |id: DocId| {
        w.host
            .json(&["doc", "list", "--dossier", &minor, "--as", "patient"])
            .as_array()
            .expect("list")
            .iter()
            .any(|d| d["id"] == id.to_string())
    };
    // R9 is nobody the host recorded: returned, and traced at the host with the id claimed.
    let forged = by(9);
    let id = forged.facts.id;
    assert_eq!(push(&rogue, 1, written(forged)), vec![id]);
    assert!(!listed(id));
    assert!(host_traced(&w.host, &minor, "representative R9") >= 1);
    // R1 is: a patient document in their name is taken (row 10).
    let recorded = by(1);
    let id = recorded.facts.id;
    assert!(push(&rogue, 2, written(recorded)).is_empty());
    assert!(listed(id));
}

/// `NURSE` bound to the world's site by the host, granted on its dossier and registered at the
/// site, whose daemon runs and has synced once. Answers the site's daemon.
fn nurse_at_a_running_site(w: &World) -> Daemon {
    bind_nurse(&w.host, &w.site_id);
    w.host
        .ok(&["grant", "add", "--dossier", &w.ins, "--rpps", NURSE]);
    w.site.pro(NURSE, "infirmier");
    let daemon = start_daemon(&w.site);
    wait_for_socket(&w.site);
    sync_until_ok(&w.site, Duration::from_secs(30));
    daemon
}

#[test]
fn a_mask_by_a_bound_and_granted_professional_at_a_real_site_reaches_the_host() {
    let w = world();
    let _site_daemon = nurse_at_a_running_site(&w);
    assert_eq!(
        w.site.body(&w.doc, NURSE),
        b"written at the host (synthetic)"
    );
    // She may mask it; deleting it is refused at the site already.
    w.site.ok(&["doc", "mask", &w.doc, "--as", NURSE]);
    w.site.fails(3, &["doc", "delete", &w.doc, "--as", NURSE]);
    let written_there = w
        .site
        .add_doc(&w.ins, NURSE, "10", CONSULTATION, "soins", b"n");
    sync_until_ok(&w.site, Duration::from_secs(30));
    let shown = at_host(&w, &w.doc).expect("listed");
    assert_eq!(shown["confidentiality"][0], "MASQUE_PS", "{shown}");
    assert!(at_host(&w, &written_there).is_some());
    let status = w.site.json(&["sync", "status"]);
    assert_eq!(status["quarantine"], serde_json::json!([]), "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(host_traced(&w.host, &w.ins, "returned to site"), 0);
}

#[test]
fn a_revoked_grant_takes_the_others_documents_back_from_a_site_that_wrote_in_the_dossier() {
    let w = world();
    let _site_daemon = nurse_at_a_running_site(&w);
    // A second document of the host's, whose body the site fetches on its own.
    let big = vec![b'x'; 200_000];
    let second = w
        .host
        .add_doc(&w.ins, DOCTOR, "10", CONSULTATION, "CR 2", &big);
    let own = w
        .site
        .add_doc(&w.ins, NURSE, "10", CONSULTATION, "soins", b"n (synthetic)");
    sync_until_ok(&w.site, Duration::from_secs(30));
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert_eq!(
        w.site.body(&w.doc, NURSE),
        b"written at the host (synthetic)"
    );
    assert_eq!(w.site.body(&second, NURSE), big);
    assert!(
        at_host(&w, &own).is_some(),
        "the site's own document reached the host"
    );
    // The grant ends; the site wrote in the dossier, so it stays in its scope.
    w.host
        .ok(&["grant", "revoke", "--dossier", &w.ins, "--rpps", NURSE]);
    let report = sync_until_ok(&w.site, Duration::from_secs(30));
    assert!(
        holds(&w.site, &w.ins),
        "the dossier stays: the site wrote in it"
    );
    for id in [&w.doc, &second] {
        let o = w.site.fails(4, &["doc", "get", id, "--as", NURSE]);
        assert!(o.stderr.contains("no document"), "{id}: {}", o.stderr);
    }
    assert_eq!(w.site.body(&own, NURSE), b"n (synthetic)");
    let traced = w.site.audit_as(&w.ins, "holder");
    assert!(
        traced
            .iter()
            .any(|e| e.to_string().contains("documents-withdrawn")),
        "{traced:?}; {report}"
    );
    assert_eq!(w.site.json(&["audit", "verify"])["ok"], true);
    assert_eq!(w.host.json(&["audit", "verify"])["ok"], true);
    // Granted again: the host's documents come back.
    w.host
        .ok(&["grant", "add", "--dossier", &w.ins, "--rpps", NURSE]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    sync_until_ok(&w.site, Duration::from_secs(30));
    assert_eq!(w.site.body(&second, NURSE), big);
}

#[test]
fn a_site_that_says_it_was_restored_gets_back_only_its_own_trace_and_its_scope() {
    let w = world();
    // An honest site, DOCTOR bound to it: its trace (a read of the dossier) reaches the host.
    let (honest, _) = enrolled_site_and_bundle(&w.host, &w.address, &[DOCTOR]);
    honest.pro(DOCTOR, "medecin");
    sync_until_ok(&honest, Duration::from_secs(20));
    assert_eq!(
        honest.body(&w.doc, DOCTOR),
        b"written at the host (synthetic)"
    );
    sync_until_ok(&honest, Duration::from_secs(20));

    // The attacker's site claims a restore: the host sends it the trace entries it holds of
    // that site (the session's, from its certificate), and its scope again — nothing else.
    let rogue = Rogue::connect(&w.bundle);
    let replies = rogue.session(vec![
        rogue.hello(0, 0),
        Msg::Restored {
            taken_at: 0,
            after: 0,
        },
        Msg::Pull { after: 0 },
    ]);
    let own: Vec<_> = replies
        .iter()
        .filter_map(|m| match m {
            Msg::OwnTraces { records, .. } => Some(records.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        replies.iter().any(|m| matches!(m, Msg::OwnTraces { .. })),
        "{replies:?}"
    );
    assert!(own.is_empty(), "another site's trace: {own:?}");
    assert!(
        !pulled_items(&replies)
            .iter()
            .any(|i| matches!(i, PullItem::Document(_))),
        "a document it may not hold"
    );
    assert!(!holds(&w.site, &w.ins));
    // The host traced the claim (ids only), and the honest site's chain still verifies there.
    let verified = w.host.json(&["audit", "verify"]);
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn a_site_may_renew_only_its_own_certificate_for_a_key_it_holds() {
    let w = world();
    let rogue = Rogue::connect(&w.bundle);
    let key = carnet_syncd::pki::new_key().expect("key");
    let public_key = carnet_syncd::pki::public_key_of(&key).expect("public key");
    let request =
        |site: u32, public_key: &[u8], signer: &[u8]| carnet_syncd::enrol::RenewalRequest {
            site,
            public_key: public_key.to_vec(),
            proof: carnet_syncd::pki::sign_with_key(
                signer,
                &carnet_syncd::enrol::RenewalRequest::message(site, public_key),
            )
            .expect("sign"),
        };
    let hello = |renewal| Msg::Hello {
        site: rogue.site,
        cursor: 0,
        outbox_acked: 0,
        chain_key: crate::rogue::ROGUE_CHAIN_KEY,
        about: carnet_syncd::session::SiteAbout::default(),
        renewal: Some(renewal),
    };
    // Another site's certificate, for a key the rogue holds; and a certificate for a key it
    // does not hold (another site's public key, with a proof by its own key).
    let victim = carnet_syncd::pki::public_key_of(
        &carnet_syncd::enrol::Bundle::from_bytes(&std::fs::read(&w.bundle).expect("bundle"))
            .expect("bundle")
            .identity
            .key_der,
    )
    .expect("key");
    for (what, renewal) in [
        ("another site", request(rogue.site + 1, &public_key, &key)),
        ("a key it does not hold", request(rogue.site, &victim, &key)),
        // Its own, for its own new key, but with a certificate a year from its end: a stolen
        // certificate is not stretched by renewing it.
        (
            "a certificate not in its renewal window",
            request(rogue.site, &public_key, &key),
        ),
    ] {
        let replies = rogue.session(vec![hello(renewal)]);
        assert!(
            matches!(replies.first(), Some(Msg::Error(e)) if e.contains("renewal")),
            "{what}: {replies:?}"
        );
    }
    assert_eq!(w.host.json(&["pki", "renewals"]), serde_json::json!([]));
    assert_eq!(w.host.json(&["pki", "list"])[0]["certificates"], 1);
}

/// A dossier for `ins_b()` as a site proposes one, with `status` identity, opened by `creator`.
fn proposal(
    creator: &str,
    status: carnet_store::model::IdentityStatus,
) -> carnet_store::replica::Proposal {
    use carnet_store::ids::InsKind;
    use carnet_store::model::{DossierHead, DossierStatus, HolderKind, Identity, Sex};
    carnet_store::replica::Proposal {
        head: DossierHead {
            ins: Ins::parse(&ins_b()).expect("ins"),
            ins_kind: InsKind::TestNir,
            identity: Identity {
                birth_name: "VALLEE".into(),
                first_names: "Jean".into(),
                birth_date: "1990-01-01".into(),
                sex: Sex::Male,
                birthplace: None,
                status,
            },
            holder: HolderKind::Adult,
            representatives: vec![],
            status: DossierStatus::Active,
            mask_new_by_default: false,
            created_at: 1_700_000_000_000,
            closure: None,
        },
        creator: Actor::Professional(Rpps::parse(creator).expect("rpps")),
    }
}

#[test]
fn a_site_opens_a_dossier_only_for_a_professional_the_host_binds_there_and_a_qualified_identity() {
    use carnet_store::model::IdentityStatus::{Provisional, Qualified};
    let w = world();
    bind_nurse(&w.host, &w.site_id);
    let rogue = Rogue::connect(&w.bundle);
    let b = ins_b();
    let cases = [
        // A doctor who does not practise at that site.
        proposal(DOCTOR, Qualified),
        // Someone the host does not know.
        proposal(STRANGER, Qualified),
        // The nurse, for an identity nobody checked.
        proposal(NURSE, Provisional),
    ];
    for (seq, p) in (1..).zip(cases) {
        push(&rogue, seq, Change::DossierProposal(Box::new(p)));
        assert_eq!(
            w.host.run(&["dossier", "show", &b]).code,
            4,
            "case {seq}: nothing adopted"
        );
    }
    assert_eq!(host_traced(&w.host, &b, "dossier-proposal-refused"), 3);
    // The nurse, bound there, for a qualified identity: adopted.
    push(
        &rogue,
        4,
        Change::DossierProposal(Box::new(proposal(NURSE, Qualified))),
    );
    let adopted = w.host.json(&["dossier", "show", &b]);
    assert_eq!(adopted["identity"]["first_names"], "Jean", "{adopted}");
}

#[test]
fn a_site_can_neither_reopen_a_closed_dossier_nor_write_into_it() {
    let w = world();
    bind_nurse(&w.host, &w.site_id);
    w.host.ok(&[
        "dossier",
        "close",
        &w.ins,
        "--reason",
        "demande du titulaire",
    ]);
    let closed = w.host.json(&["dossier", "show", &w.ins]);
    assert_eq!(closed["status"], "closed");
    let rogue = Rogue::connect(&w.bundle);
    // The dossier proposed again as an active one, by a professional the host binds there.
    let mut reopening = proposal(NURSE, carnet_store::model::IdentityStatus::Qualified);
    reopening.head.ins = Ins::parse(&w.ins).expect("ins");
    push(&rogue, 1, Change::DossierProposal(Box::new(reopening)));
    // A document written into it.
    let body = b"written into a closed dossier (synthetic)";
    let meta = forged_document(&w.ins, rogue.site, NURSE, Profession::Infirmier, body);
    let forged = meta.facts.id;
    assert_eq!(push(&rogue, 2, written(meta)), vec![forged], "not returned");
    let still = w.host.json(&["dossier", "show", &w.ins]);
    assert_eq!(still["status"], "closed", "{still}");
    assert_eq!(still["head_seq"], closed["head_seq"], "{still}");
    assert_eq!(still["documents"], closed["documents"], "{still}");
    assert_eq!(host_traced(&w.host, &w.ins, "dossier-proposal-refused"), 1);

    // The host reopens it (the legitimate way): the forged document is not in it, and the
    // site, in whose scope the refused proposal left the dossier, receives its closure undone
    // but nothing its professionals may not read.
    w.host.ok(&[
        "dossier",
        "reopen",
        &w.ins,
        "--reason",
        "demande du titulaire",
    ]);
    assert_eq!(at_host(&w, &forged.to_string()), None);
    assert_eq!(
        w.host.body(&w.doc, DOCTOR),
        b"written at the host (synthetic)"
    );
    let items = pulled_items(&rogue.pull_all());
    let host_doc = DocId::parse(&w.doc).expect("id");
    assert!(
        !items
            .iter()
            .any(|i| matches!(i, PullItem::Document(m) if m.facts.id == host_doc)),
        "reopening brought the host's document to a site with no grant: {items:?}"
    );
}
