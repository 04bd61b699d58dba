//! The host's review of emergencies (issue 12 §4): a break-glass read decided offline at a site
//! reaches the host with the site's trace, is judged again against what was in force at the
//! time of the access, listed by `audit emergencies [--pending]` and cleared by `audit review`;
//! a rogue site cannot make a non-conforming one look conforming by dating it back.

use std::time::Duration;

use carnet_store::audit::{AuditEntry, TraceAction, TraceActor, chain_hash};
use carnet_store::ids::{DocId, Rpps, SiteId};
use carnet_store::model::{AccessMode, Profession};
use carnet_store::policy::Action;
use carnet_store::replica::TraceRecord;
use carnet_syncd::session::Msg;
use serde_json::Value;

use crate::daemon::{
    enrolled_site_and_bundle, free_port, start_daemon, stop, sync_until_ok, wait_for_socket,
};
use crate::rogue::{ROGUE_CHAIN_KEY, Rogue};
use crate::support::*;

/// A host listening on 127.0.0.1 (not started) with `DOCTOR` treating the dossier of `ins_a()`
/// and a consultation in it; a site enrolled with `DOCTOR` and `ER_DOCTOR` bound and
/// registered. Answers (host, address, INS, document, site, its enrolment bundle).
pub(crate) fn host_and_site() -> (Carnet, String, String, String, Carnet, std::path::PathBuf) {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    host.pro(ER_DOCTOR, "medecin");
    let doc = host.add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", CONSULT_BODY);
    let (site, bundle) = enrolled_site_and_bundle(&host, &address, &[DOCTOR, ER_DOCTOR]);
    site.pro(DOCTOR, "medecin");
    site.pro(ER_DOCTOR, "medecin");
    (host, address, ins, doc, site, bundle)
}

/// The emergencies the host lists (`--pending`: only those not reviewed) that `site` decided.
fn emergencies_of(host: &Carnet, site: u64, pending: bool) -> Vec<Value> {
    let mut args = vec!["audit", "emergencies"];
    if pending {
        args.push("--pending");
    }
    host.json(&args)
        .as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["site_id"] == site)
        .cloned()
        .collect()
}

pub(crate) fn break_glass(site: &Carnet, doc: &str, reason: &str) -> Vec<u8> {
    site.ok(&[
        "doc",
        "get",
        doc,
        "--as",
        ER_DOCTOR,
        "--mode",
        "break-glass",
        "--reason",
        reason,
    ])
    .raw
}

#[test]
fn offline_break_glass_reads_are_judged_at_the_host_as_of_their_time_and_reviewed() {
    let (host, _address, ins, doc, site, _bundle) = host_and_site();
    let site_no = host.json(&["pki", "list"])[0]["site_id"]
        .as_u64()
        .expect("site id");
    let mut host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let _site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    sync_until_ok(&site, Duration::from_secs(30));

    // The site goes offline (the host is down); a break-glass read there, allowed by the
    // preferences in force.
    assert_eq!(stop(&mut host_daemon), Some(0), "the host daemon stops");
    assert_eq!(
        break_glass(&site, &doc, "unconscious, synthetic"),
        CONSULT_BODY
    );
    // Then the holder opposes break-glass at the host; the site does not know yet and lets a
    // second one through.
    host.ok(&["emergency", "set", "--dossier", &ins, "--btg", "oppose"]);
    assert_eq!(
        break_glass(&site, &doc, "still unconscious, synthetic"),
        CONSULT_BODY
    );

    // The site reconnects: both reach the host and are judged there.
    let _host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let pending = loop {
        sync_until_ok(&site, Duration::from_secs(30));
        let pending = emergencies_of(&host, site_no, true);
        if pending.len() >= 2 || std::time::Instant::now() > deadline {
            break pending;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(pending.len(), 2, "{pending:?}");
    let (before, after) = (&pending[0], &pending[1]);
    for e in [before, after] {
        assert_eq!(e["mode"], "bris_de_glace", "{e}");
        assert_eq!(who(&e["actor"]), format!("{ER_DOCTOR} (medecin)"), "{e}");
        assert_eq!(e["ins"], ins.as_str(), "{e}");
        assert_eq!(e["doc"], doc.as_str(), "{e}");
        assert_eq!(e["allowed"], true, "{e}");
        assert_eq!(e["decided_offline"], true, "{e}");
        assert_eq!(e["reviewed"], false, "{e}");
    }
    assert_eq!(before["stated_reason"], "unconscious, synthetic");
    assert_eq!(before["conforming"], true, "{before}");
    assert_eq!(after["conforming"], false, "{after}");
    assert_eq!(after["rule"], 7, "{after}");
    assert!(
        after["finding"]
            .as_str()
            .is_some_and(|f| f.contains("opposed break-glass")),
        "{after}"
    );
    let human = host.ok(&["audit", "emergencies", "--pending"]).stdout;
    assert!(human.contains("NOT conforming"), "{human}");
    assert!(human.contains("pending review"), "{human}");

    // The data protection officer reviews the first: it leaves the pending list, traced.
    let id = before["id"].as_u64().expect("an id").to_string();
    host.fails(
        2,
        &["audit", "review", &id, "--note", "checked", "--as", DOCTOR],
    );
    let reviewed = host.json(&[
        "audit",
        "review",
        &id,
        "--note",
        "called the ER: justified (synthetic)",
        "--as",
        "dpo:Martin",
    ]);
    assert_eq!(reviewed["reviewed"], true, "{reviewed}");
    assert_eq!(reviewed["review"]["by"], "dpo:Martin");
    let pending = emergencies_of(&host, site_no, true);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["id"], after["id"]);
    let all = emergencies_of(&host, site_no, false);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[0]["review"]["note"],
        "called the ER: justified (synthetic)"
    );
    // A review is not rewritten.
    host.fails(
        2,
        &[
            "audit",
            "review",
            &id,
            "--note",
            "again",
            "--as",
            "operator:Lee",
        ],
    );
    assert_eq!(
        host_traced_review(&host, &ins),
        1,
        "the review is in the dossier's trace at the host"
    );
}

/// Trace entries of the dossier `ins` at the host recording a review.
fn host_traced_review(host: &Carnet, ins: &str) -> usize {
    host.json(&["audit", "show", "--dossier", ins])
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "emergency-reviewed")
        .count()
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[test]
fn a_rogue_site_cannot_date_a_break_glass_back_to_before_the_holders_opposition() {
    let (host, _address, ins, doc, _site, bundle) = host_and_site();
    // A time when the dossier existed and break-glass was allowed.
    let allowed_then = now_millis();
    let _daemon = start_daemon(&host);
    wait_for_socket(&host);
    host.ok(&["emergency", "set", "--dossier", &ins, "--btg", "oppose"]);

    // The rogue reads by break-glass now, and says it did so before the opposition, with an
    // authority version of its own.
    let rogue = Rogue::connect(&bundle);
    let entry = AuditEntry {
        at: allowed_then,
        origin: SiteId(rogue.site),
        actor: TraceActor::Professional {
            rpps: Rpps::parse(ER_DOCTOR).expect("rpps"),
            profession: Some(Profession::Medecin),
        },
        action: TraceAction::Access(Action::Read),
        ins: Some(ins.clone()),
        doc: Some(DocId::parse(&doc).expect("doc id")),
        mode: AccessMode::BreakGlass,
        allowed: true,
        rule: 7,
        outcome_reason: "break-glass".into(),
        stated_reason: Some("unconscious, synthetic".into()),
        decided_offline: true,
        authority_version: 1,
    };
    let bytes = postcard::to_stdvec(&entry).expect("encode");
    let record = TraceRecord {
        seq: 1,
        hash: chain_hash(&ROGUE_CHAIN_KEY, &bytes, &[0; 32]),
        entry,
    };
    let replies = rogue.session(vec![rogue.hello(0, 0), rogue.traces(vec![record])]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::TracesAck { upto: 1 })),
        "the host took the entry: {replies:?}"
    );

    let list = emergencies_of(&host, u64::from(rogue.site), true);
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(e["allowed"], true, "{e}");
    assert_eq!(e["conforming"], false, "{e}");
    assert_eq!(e["rule"], 7, "{e}");
    assert_ne!(e["judged_at"], e["at"], "{e}");
}
