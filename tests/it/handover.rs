//! Handover between two sites without the host, through real daemons on 127.0.0.1: the
//! mobile unit (SMUR) hands its patient's dossier to the clinic while the host is out of
//! reach; what the clinic admits it decides again; both converge with the host afterwards.

use std::time::Duration;

use crate::daemon::{Daemon, enrolled_site, free_port, start_daemon, sync_until_ok};
use crate::support::*;

/// A host with `DOCTOR` treating the dossier of `ins_a()`; the unit (DOCTOR bound, holding the
/// dossier) and the clinic (NURSE bound, holding nothing) enrolled and synced once; the
/// clinic accepting handovers from the unit. The host daemon is stopped: the valley.
struct Valley {
    host: Carnet,
    /// Where the clinic listens for peers.
    listen: String,
    ins: String,
    unit: Carnet,
    clinic: Carnet,
    clinic_daemon: Daemon,
}

/// Prepends `settings` to a replica's carnet.toml (top-level keys go before any table) and
/// appends `tables`.
fn configure(c: &Carnet, settings: &str, tables: &str) {
    let path = c.data.join("carnet.toml");
    let text = std::fs::read_to_string(&path).expect("carnet.toml");
    std::fs::write(&path, format!("{settings}\n{text}\n{tables}")).expect("carnet.toml");
}

fn site_ids(host: &Carnet) -> Vec<u64> {
    host.json(&["pki", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["site_id"].as_u64().expect("site id"))
        .collect()
}

fn valley() -> Valley {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    let unit = enrolled_site(&host, &address, &[DOCTOR]);
    unit.pro(DOCTOR, "medecin");
    // The nurse is bound to the clinic but holds no grant: the dossier is not in its scope,
    // and the host's signed lists reach it.
    host.pro(NURSE, "infirmier");
    let clinic = enrolled_site(&host, &address, &[NURSE]);
    clinic.pro(NURSE, "infirmier");
    let ids = site_ids(&host);
    let (unit_id, clinic_id) = (ids[0], ids[1]);
    {
        let _host_daemon = start_daemon(&host);
        sync_until_ok(&unit, Duration::from_secs(30));
        sync_until_ok(&clinic, Duration::from_secs(30));
    }
    let listen = format!("127.0.0.1:{}", free_port());
    configure(
        &clinic,
        &format!("peer_listen = \"{listen}\""),
        &format!("[[peer]]\nname = \"smur\"\naddress = \"127.0.0.1:9\"\nsite = {unit_id}\n"),
    );
    configure(
        &unit,
        "",
        &format!("[[peer]]\nname = \"clinique\"\naddress = \"{listen}\"\nsite = {clinic_id}\n"),
    );
    let clinic_daemon = start_daemon(&clinic);
    crate::daemon::wait_for_socket(&clinic);
    Valley {
        host,
        listen,
        ins,
        unit,
        clinic,
        clinic_daemon,
    }
}

/// `carnet handover` at the unit, tried again while the clinic's listener does not answer yet
/// (it binds as its daemon starts), bounded.
fn try_hand_over(v: &Valley, args: &[&str]) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut full = vec!["handover", "--to", "clinique", "--dossier", &v.ins];
    full.extend_from_slice(args);
    loop {
        let o = v.unit.run(&full);
        if o.code == 0
            || !o.stderr.contains("could not be reached")
            || std::time::Instant::now() > deadline
        {
            return o;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A handover by `DOCTOR` that must succeed; its JSON.
fn hand_over(v: &Valley, reason: &str) -> serde_json::Value {
    let o = try_hand_over(v, &["--json", "--as", DOCTOR, "--reason", reason]);
    assert_eq!(o.code, 0, "handover failed: {}", o.stderr);
    o.json()
}

/// The unit's handover is refused at the peer's handshake, and the clinic holds nothing.
fn refused_at_the_handshake(v: &Valley, admitted: &str) {
    let refused = try_hand_over(v, &["--as", DOCTOR]);
    assert_ne!(refused.code, 0, "{admitted}");
    assert!(refused.stderr.contains("refused"), "{}", refused.stderr);
    let shown = v.clinic.run(&["dossier", "show", &v.ins, "--as", NURSE]);
    assert_ne!(shown.code, 0, "the clinic holds the dossier");
}

#[test]
fn the_unit_hands_its_patient_to_the_clinic_in_the_valley_and_all_three_converge() {
    let v = valley();
    let (unit, clinic, ins) = (&v.unit, &v.clinic, &v.ins);
    // The unit reads the dossier by break-glass and writes its report, the host out of reach.
    let report = unit.add_doc(
        ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR SMUR",
        b"SMUR: stable (synthetic)",
    );
    assert!(clinic.run(&["dossier", "show", ins, "--as", NURSE]).code != 0);

    let out = hand_over(&v, "patient brought to the clinic");
    assert_eq!(out["documents_new"], 1, "{out}");
    assert_eq!(out["bodies_sent"], 1, "{out}");
    assert_eq!(out["lacking"], 0, "{out}");
    assert!(
        out["lease_from"].is_string(),
        "the unit's heartbeat went along: {out}"
    );

    // Data, not rights: the nurse reads nothing until the patient consents in person.
    clinic.fails(3, &["doc", "get", &report, "--as", NURSE]);
    let pending = clinic.json(&["grant", "add", "--dossier", ins, "--rpps", NURSE]);
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(clinic.body(&report, NURSE), b"SMUR: stable (synthetic)");

    // Traced at both sites: who, from which site, why.
    let received = clinic.audit_as(ins, "holder");
    let entry = received
        .iter()
        .find(|e| e["action"].to_string().contains("handover-received"))
        .unwrap_or_else(|| panic!("no handover traced at the clinic: {received:?}"));
    assert!(
        entry["reason"].to_string().contains("patient brought")
            && entry["outcome"].to_string().contains("from site"),
        "{entry}"
    );
    assert!(
        unit.audit_as(ins, "holder")
            .iter()
            .any(|e| e["action"].to_string().contains("handover-sent")),
        "the unit traces it too"
    );

    // Handed over again: nothing twice.
    let again = hand_over(&v, "second try");
    assert_eq!(
        (
            again["documents_new"].as_u64(),
            again["bodies_sent"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );

    // The host is back: each site's round; the document once everywhere.
    let _host_daemon = start_daemon(&v.host);
    sync_until_ok(unit, Duration::from_secs(30));
    sync_until_ok(clinic, Duration::from_secs(30));
    sync_until_ok(clinic, Duration::from_secs(30));
    let listed = |c: &Carnet, who: &str| {
        c.json(&["doc", "list", "--dossier", ins, "--as", who])
            .as_array()
            .map(|docs| docs.iter().filter(|d| d["id"] == report.as_str()).count())
    };
    assert_eq!(listed(&v.host, DOCTOR), Some(1));
    assert_eq!(listed(clinic, NURSE), Some(1));
    assert_eq!(v.host.body(&report, DOCTOR), b"SMUR: stable (synthetic)");
    // Each site's entries once (two handovers, each traced once at each end), chains intact.
    let at_host = v.host.audit(ins);
    for what in ["handover-sent", "handover-received"] {
        let n = at_host
            .iter()
            .filter(|e| e["action"].to_string().contains(what))
            .count();
        assert_eq!(n, 2, "{what} at the host: {at_host:?}");
    }
    v.host.ok(&["audit", "verify"]);
    // The host read the handover in the unit's trace: a block it issues reaches the clinic.
    v.host
        .ok(&["grant", "block", "--dossier", ins, "--rpps", NURSE]);
    sync_until_ok(clinic, Duration::from_secs(30));
    clinic.fails(3, &["doc", "get", &report, "--as", NURSE]);
    drop(v.clinic_daemon);
}

#[test]
fn a_site_not_listed_as_a_peer_is_refused_and_nothing_changes() {
    let mut v = valley();
    // The clinic forgets the unit: the unit's certificate is the national CA's, but the
    // clinic does not list it.
    let path = v.clinic.data.join("carnet.toml");
    let text = std::fs::read_to_string(&path).expect("toml");
    let cut = text.find("[[peer]]").expect("peer table");
    std::fs::write(&path, &text[..cut]).expect("toml");
    crate::daemon::stop(&mut v.clinic_daemon);
    v.clinic_daemon = start_daemon(&v.clinic);
    crate::daemon::wait_for_socket(&v.clinic);
    refused_at_the_handshake(&v, "a peer not listed was admitted");
    // An unknown peer name, and a professional not registered at the unit, are refused up
    // front with what to do.
    let o = v.unit.run(&[
        "handover",
        "--to",
        "nobody",
        "--dossier",
        &v.ins,
        "--as",
        DOCTOR,
    ]);
    assert!(o.code != 0 && o.stderr.contains("clinique"), "{}", o.stderr);
    let o = v.unit.run(&[
        "handover",
        "--to",
        "clinique",
        "--dossier",
        &v.ins,
        "--as",
        STRANGER,
    ]);
    assert!(o.code != 0, "{}", o.stderr);
}

#[test]
fn a_handover_cut_in_the_middle_of_a_20_mb_body_resumes_where_it_stopped() {
    let v = valley();
    let image: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let id = v
        .unit
        .add_doc(&v.ins, DOCTOR, "10", CONSULTATION, "imagerie", &image);
    // The unit reaches the clinic through a proxy that counts the bytes.
    let listen: std::net::SocketAddr = v.listen.parse().expect("address");
    let proxy =
        crate::fault_proxy::FaultProxy::start(listen, crate::fault_proxy::Faults::default());
    let path = v.unit.data.join("carnet.toml");
    let text = std::fs::read_to_string(&path).expect("toml");
    std::fs::write(&path, text.replace(&v.listen, &proxy.address.to_string())).expect("toml");
    // The first try is killed once most of the image went over (the clinic keeps what it
    // received every 4 MiB: what it took before the cut is not sent again).
    let mut first = std::process::Command::new(bin())
        .args([
            "--data",
            &v.unit.data.display().to_string(),
            "handover",
            "--to",
            "clinique",
        ])
        .args(["--dossier", &v.ins, "--as", DOCTOR])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("carnet runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.to_host_bytes() < 14 << 20 {
        assert!(
            std::time::Instant::now() < deadline && first.try_wait().expect("wait").is_none(),
            "the first handover ended before most of the image went: {} bytes",
            proxy.to_host_bytes()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("kill");
    first.wait().expect("reaped");
    // Again: the clinic names the bytes it kept, and only the rest travels.
    let out = hand_over(&v, "after the cut");
    let sent = out["body_bytes_sent"].as_u64().expect("bytes");
    assert_eq!(out["lacking"], 0, "{out}");
    assert!(
        sent > 0 && sent < image.len() as u64,
        "resumed from the bytes kept: {out}"
    );
    v.clinic
        .json(&["grant", "add", "--dossier", &v.ins, "--rpps", NURSE]);
    assert!(
        v.clinic.body(&id, NURSE) == image,
        "the image arrived whole"
    );
}

#[test]
fn a_peer_the_host_revoked_is_refused_by_a_clinic_that_holds_the_hosts_list() {
    let v = valley();
    let unit_id = site_ids(&v.host)[0].to_string();
    let _host_daemon = start_daemon(&v.host);
    crate::daemon::wait_for_socket(&v.host);
    v.host.ok(&["pki", "revoke", &unit_id]);
    // The clinic's next round brings the host's signed list; its listener reads it live.
    sync_until_ok(&v.clinic, Duration::from_secs(30));
    refused_at_the_handshake(&v, "a revoked peer was admitted");
}
