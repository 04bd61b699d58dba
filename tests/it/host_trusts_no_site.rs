//! The host trusts no site: an attacker holding one enrolled site's valid certificate (a pharmacy
//! PC) tries to get a dossier, or more of one, than the host authorizes for that site — through
//! the real `carnet` at the site, or through the wire itself (`rogue`). Each attack runs against
//! a real host daemon, and each is followed by the legitimate way to the same data, so the test
//! shows the host's decision and not a broken sync.

use std::time::Duration;

use carnet_store::authority::AuthorityRecord;
use carnet_store::ids::{DocId, Ins, Rpps, SiteId};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{Author, DocClass, DocState, DocumentFacts, Profession};
use carnet_store::replica::{Change, PullItem};
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
}

fn world() -> World {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init"]);
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
    }
}

/// True when the site holds anything of the dossier `ins`.
fn holds(site: &Carnet, ins: &str) -> bool {
    site.run(&["dossier", "show", ins]).code == 0
}

/// Trace entries of the dossier `ins` at the host that mention `what`.
fn host_traced(host: &Carnet, ins: &str, what: &str) -> usize {
    host.json(&["audit", "show", "--dossier", ins])
        .as_array()
        .expect("entries")
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

/// True when a pulled item carries something of the dossier `ins`.
fn about_dossier(item: &PullItem, ins: &Ins) -> bool {
    match item {
        PullItem::Document(m) => &m.facts.ins == ins,
        PullItem::Authority(s) => {
            carnet_store::authority::decode(s).is_ok_and(|v| v.record.ins() == Some(ins))
        }
        PullItem::Leave(_) => false,
    }
}

/// A new document of `ins` written at `site` by `author`, as a rogue would forge it.
fn forged_document(ins: &str, site: u32, author: &str, body: &[u8]) -> DocumentMeta {
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
                profession: Profession::Medecin,
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
    w.host.pro(NURSE, "infirmier");
    w.host
        .ok(&["pki", "bind", "--site", &w.site_id, "--rpps", NURSE]);
    let rogue = Rogue::connect(&w.bundle);
    let body = b"a note (synthetic)";
    let meta = forged_document(&w.ins, rogue.site, NURSE, body);
    let own = meta.facts.id;
    let replies = rogue.session(vec![
        rogue.hello(0, 0),
        Msg::Push {
            changes: vec![(1, Change::Document(Box::new(meta)))],
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

#[test]
fn a_site_can_neither_rewrite_nor_restart_its_trace_at_the_host() {
    let w = world();
    // A traced request: the site's trace has entries to push.
    w.site.ok(&["pin", &w.ins]);
    sync_until_ok(&w.site, Duration::from_secs(30));
    // The attacker holds the site's folder and key, and its certificate.
    let (key, mut records) = {
        let site = carnet_store::replica::Replica::open(
            &w.site.data,
            &carnet_store::replica::KeySource::File,
            carnet_store::replica::system_clock(),
        )
        .expect("open the site's replica");
        (
            site.trace_chain_key(),
            site.traces_after(0, 100).expect("traces"),
        )
    };
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
        Msg::Traces(vec![records[0].clone()]),
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
        .filter(|e| e["site"] == 0 && e["ins"] == w.ins.as_str())
        .map(|e| e["allowed"].clone())
        .collect();
    assert_eq!(at_host, [false, true], "{emergencies}");
}
