//! The host tells the patient (issue 12 §4): a break-glass read decided offline at a site
//! reaches the host as one notification to the holder and the médecin traitant, listed by
//! `notifications list`, written once to the spool for a messaging gateway, and carried in the
//! holder's export as a FHIR `Communication`; a rogue site can neither make one about a
//! dossier outside its scope nor keep the host from making one it decides itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carnet_store::audit::{AuditEntry, TraceAction, TraceActor, chain_hash};
use carnet_store::ids::{Ins, Rpps, SiteId};
use carnet_store::model::{AccessMode, Profession};
use carnet_store::policy::Action;
use carnet_store::replica::{Change, TraceRecord};
use carnet_syncd::session::Msg;
use serde_json::Value;

use crate::daemon::{start_daemon, stop, sync_until_ok, wait_for_socket};
use crate::emergencies::{break_glass, host_and_site};
use crate::export::resources;
use crate::host_trusts_no_site::push;
use crate::rogue::{ROGUE_CHAIN_KEY, Rogue};
use crate::support::*;

/// The host's notifications (of `ins`), as `notifications list --json` shows them.
fn notifications(host: &Carnet, ins: &str) -> Vec<Value> {
    host.json(&["notifications", "list", "--dossier", ins])
        .as_array()
        .expect("a list")
        .clone()
}

fn of_kind<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|n| n["kind"] == kind).collect()
}

/// Sets `notification_spool` in the host's `carnet.toml` (a root key: written first).
fn set_spool(host: &Carnet, dir: &Path) {
    let toml = host.data.join("carnet.toml");
    let text = std::fs::read_to_string(&toml).expect("carnet.toml");
    let text = format!("notification_spool = \"{}\"\n{text}", dir.display());
    std::fs::write(&toml, text).expect("carnet.toml");
}

/// Waits (bounded) until `path` exists.
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never came", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spool_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(carnet_syncd::spool::file_name(id))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn an_offline_break_glass_read_is_told_once_spooled_once_and_exported() {
    let (host, _address, ins, doc, site, _bundle) = host_and_site();
    let spool = host.path("gateway").join("outgoing");
    set_spool(&host, &spool);
    let mut host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let _site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    sync_until_ok(&site, Duration::from_secs(30));

    // Offline (the host is down), the emergency doctor reads by break-glass.
    assert_eq!(stop(&mut host_daemon), Some(0), "the host daemon stops");
    break_glass(&site, &doc, "unconscious, synthetic");
    site.fails(2, &["notifications", "list"]);

    // Back in reach: the trace reaches the host, which tells the holder and the médecin
    // traitant, once.
    let _host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let deadline = Instant::now() + Duration::from_secs(60);
    let told = loop {
        sync_until_ok(&site, Duration::from_secs(30));
        let list = notifications(&host, &ins);
        let told: Vec<Value> = of_kind(&list, "emergency_access")
            .into_iter()
            .cloned()
            .collect();
        if !told.is_empty() || Instant::now() > deadline {
            break told;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    sync_until_ok(&site, Duration::from_secs(30));
    assert_eq!(
        of_kind(&notifications(&host, &ins), "emergency_access").len(),
        1,
        "one notification for one access"
    );
    let n = &told[0];
    assert_eq!(n["mode"], "bris_de_glace", "{n}");
    assert_eq!(n["ins"], ins.as_str());
    assert_eq!(
        n["recipients"],
        serde_json::json!([
            {"role": "holder"},
            {"role": "medecin_traitant", "rpps": DOCTOR},
        ])
    );
    let emergency = &host.json(&["audit", "emergencies"])[0];
    assert_eq!(n["emergency"], emergency["id"]);
    assert!(
        host.ok(&["notifications", "list"])
            .stdout
            .contains(&format!("médecin traitant {DOCTOR}")),
        "the human listing names the recipients"
    );
    assert!(
        host.audit(&ins)
            .iter()
            .any(|e| e["action"] == "operator-notifications-list"),
        "listing is traced as the operator's read"
    );

    // The daemon spooled it: one file, 0600, in a folder it made 0700.
    let id = n["id"].as_u64().expect("id");
    let file = spool_file(&spool, id);
    wait_for_file(&file);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&spool), 0o700);
    let spooled: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("JSON");
    assert_eq!(spooled, *n, "the spool holds what the list shows");
    let text = spooled["text"].as_str().expect("text");
    assert!(
        text.contains("bris de glace") && text.contains("break-glass"),
        "{text}"
    );
    assert!(!text.contains("CR"), "no document title: {text}");

    // The gateway takes it; later notifications are spooled, that one never again.
    std::fs::remove_file(&file).expect("the gateway takes the file");
    sync_until_ok(&site, Duration::from_secs(30));
    host.pro(NURSE, "infirmier");
    host.add_doc(
        &ins,
        NURSE,
        "10",
        CONSULTATION,
        "Soins",
        b"soins (synthetic)",
    );
    let last = notifications(&host, &ins)
        .iter()
        .filter_map(|n| n["id"].as_u64())
        .max()
        .expect("ids");
    assert!(last > id);
    wait_for_file(&spool_file(&spool, last));
    assert!(
        !file.exists(),
        "a file the gateway removed is not written again"
    );

    // The holder's export carries it as a FHIR Communication.
    let out = host.path("export.json");
    host.ok(&[
        "export",
        "--dossier",
        &ins,
        "--as",
        "patient",
        "-o",
        &out.display().to_string(),
    ]);
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("export")).expect("JSON");
    let communications = resources(&bundle, "Communication");
    let about_emergency: Vec<&&Value> = communications
        .iter()
        .filter(|c| c["category"][0]["coding"][0]["code"] == "emergency_access")
        .collect();
    assert_eq!(about_emergency.len(), 1, "{communications:?}");
    let c = about_emergency[0];
    assert_eq!(c["status"], "completed");
    let patient = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .expect("the Patient");
    assert_eq!(c["subject"]["reference"], patient["fullUrl"]);
    assert_eq!(c["sent"], n["at"]);
    assert_eq!(c["payload"][0]["contentString"], text);
}

/// A trace entry of the rogue: `actor` did `action` on `ins` in `mode`, allowed.
fn rogue_entry(
    rogue: &Rogue,
    actor: TraceActor,
    action: Action,
    ins: &str,
    mode: AccessMode,
) -> AuditEntry {
    AuditEntry {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64,
        origin: SiteId(rogue.site),
        actor,
        action: TraceAction::Access(action),
        ins: Some(ins.to_string()),
        doc: None,
        mode,
        allowed: true,
        rule: 7,
        outcome_reason: "allowed".into(),
        stated_reason: Some("unconscious, synthetic".into()),
        decided_offline: true,
        authority_version: 1,
    }
}

/// Chains `entries` from the start of the rogue's trace.
fn chained(entries: Vec<AuditEntry>) -> Vec<TraceRecord> {
    let mut prev = [0; 32];
    entries
        .into_iter()
        .enumerate()
        .map(|(n, entry)| {
            let bytes = postcard::to_stdvec(&entry).expect("encode");
            let hash = chain_hash(&ROGUE_CHAIN_KEY, &bytes, &prev);
            prev = hash;
            TraceRecord {
                seq: n as u64 + 1,
                hash,
                entry,
            }
        })
        .collect()
}

#[test]
fn a_rogue_site_neither_makes_a_notification_outside_its_scope_nor_unmakes_the_hosts() {
    let (host, _address, _ins, _doc, _site, bundle) = host_and_site();
    // Two dossiers the site's professionals have no grant on: outside its scope.
    let (outside, fetched) = (ins_b(), ins("1840575123470"));
    host.dossier(&outside, "AUTRE", "Claude");
    host.dossier(&fetched, "RANDONNEUR", "Paul");
    host.ok(&[
        "grant",
        "add",
        "--dossier",
        &fetched,
        "--rpps",
        DOCTOR,
        "--medecin-traitant",
    ]);
    let _daemon = start_daemon(&host);
    wait_for_socket(&host);

    // The rogue says its emergency doctor read one by break-glass, and read it again normally,
    // and that the holder read the other: none of it is told.
    let rogue = Rogue::connect(&bundle);
    let er = || TraceActor::Professional {
        rpps: Rpps::parse(ER_DOCTOR).expect("rpps"),
        profession: Some(Profession::Medecin),
    };
    let records = chained(vec![
        rogue_entry(&rogue, er(), Action::Read, &outside, AccessMode::BreakGlass),
        rogue_entry(&rogue, er(), Action::Read, &outside, AccessMode::Normal),
        rogue_entry(
            &rogue,
            TraceActor::Holder,
            Action::Read,
            &fetched,
            AccessMode::Normal,
        ),
    ]);
    let replies = rogue.session(vec![rogue.hello(0, 0), rogue.traces(records)]);
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, Msg::TracesAck { upto: 3 })),
        "the host took the entries: {replies:?}"
    );
    assert!(
        notifications(&host, &outside).is_empty(),
        "nothing told about a dossier outside the site's scope"
    );
    assert_eq!(
        host.json(&["audit", "emergencies"])
            .as_array()
            .expect("list")
            .len(),
        1,
        "the claimed break-glass is still on the host's emergency list"
    );

    // It fetches the other for an emergency: the host decides that access itself and tells
    // the holder and the médecin traitant, whatever the rogue's trace says of it.
    let fetch = Change::EmergencyFetch {
        ins: Ins::parse(&fetched).expect("ins"),
        rpps: Rpps::parse(ER_DOCTOR).expect("rpps"),
        mode: AccessMode::BreakGlass,
        reason: "unconscious, synthetic".into(),
    };
    assert!(push(&rogue, 1, fetch).is_empty());
    let told = notifications(&host, &fetched);
    let emergencies = of_kind(&told, "emergency_access");
    assert_eq!(emergencies.len(), 1, "{told:?}");
    assert_eq!(emergencies[0]["site_id"], 0, "decided at the host");
    assert_eq!(
        emergencies[0]["recipients"][1],
        serde_json::json!({"role": "medecin_traitant", "rpps": DOCTOR})
    );
}
