//! Handover between two sites without the host, through real daemons on 127.0.0.1: the
//! mobile unit (SMUR) hands its patient's dossier to the clinic while the host is out of
//! reach; what the clinic admits it decides again; both converge with the host afterwards.

use std::time::Duration;

use carnet_store::ids::{Ins, Rpps, SiteId};
use carnet_store::replica::{Handover, KeySource, Replica, SiteReplica, system_clock};
use carnet_syncd::frame::{self, FrameDecoder};
use carnet_syncd::peer::PeerMsg;
use carnet_syncd::transport::PeerPolicy;

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
    let mut full = vec!["handover", "--to", "clinique", "--dossier", &v.ins];
    full.extend_from_slice(args);
    until_reached(&v.unit, &full)
}

/// `carnet ARGS` at `c`, a peer session, tried again while the peer's listener does not
/// answer yet (it binds as its daemon starts), for at most 30 s.
fn until_reached(c: &Carnet, args: &[&str]) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = c.run(args);
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
        entry["stated_reason"]
            .to_string()
            .contains("patient brought")
            && entry["outcome_reason"].to_string().contains("from site"),
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

    // The host is back. The clinic reaches it first: it sends its own entries and none of
    // the unit's, and the host holds no copy of the unit's document before the unit sends it.
    let _host_daemon = start_daemon(&v.host);
    sync_until_ok(clinic, Duration::from_secs(30));
    let listed = |c: &Carnet, who: &str| {
        c.json(&["doc", "list", "--dossier", ins, "--as", who])
            .as_array()
            .map(|docs| docs.iter().filter(|d| d["id"] == report.as_str()).count())
    };
    assert_eq!(
        listed(&v.host, DOCTOR),
        Some(0),
        "the unit's document came from the clinic"
    );
    let count = |what: &str| {
        v.host
            .audit(ins)
            .iter()
            .filter(|e| e["action"].to_string().contains(what))
            .count()
    };
    assert_eq!(
        (count("handover-received"), count("handover-sent")),
        (2, 0),
        "the clinic's entries only"
    );
    // Then the unit; then the clinic again: the document once everywhere.
    sync_until_ok(unit, Duration::from_secs(30));
    sync_until_ok(clinic, Duration::from_secs(30));
    assert_eq!(listed(&v.host, DOCTOR), Some(1));
    assert_eq!(listed(clinic, NURSE), Some(1));
    assert_eq!(v.host.body(&report, DOCTOR), b"SMUR: stable (synthetic)");
    // Each site's entries once (two handovers, each traced once at each end), chains intact.
    for what in ["handover-sent", "handover-received"] {
        assert_eq!(count(what), 2, "{what} at the host");
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
    // The clinic forgets the unit while its daemon runs: the unit's certificate is the
    // national CA's, but the clinic no longer lists it once it read carnet.toml again.
    crate::daemon::stop(&mut v.clinic_daemon);
    let log = v.clinic.data.join("daemon.log");
    v.clinic_daemon = crate::daemon::start_daemon_logging(&v.clinic, &log);
    crate::daemon::wait_for_socket(&v.clinic);
    let path = v.clinic.data.join("carnet.toml");
    let text = std::fs::read_to_string(&path).expect("toml");
    let cut = text.find("[[peer]]").expect("peer table");
    std::fs::write(&path, &text[..cut]).expect("toml");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &v.clinic_daemon.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("carnet.toml reloaded")
    {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    refused_at_the_handshake(&v, "a peer no longer listed was admitted");
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
    let image = crate::support::incompressible(20 << 20, 20);
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

#[test]
fn the_clinic_asks_the_unit_for_the_dossier_of_the_patient_it_brought() {
    let v = valley();
    // The unit listens for peers too, and the clinic lists it where it listens.
    let unit_listen = format!("127.0.0.1:{}", free_port());
    configure(&v.unit, &format!("peer_listen = \"{unit_listen}\""), "");
    let path = v.clinic.data.join("carnet.toml");
    let text = std::fs::read_to_string(&path).expect("toml");
    std::fs::write(&path, text.replace("127.0.0.1:9", &unit_listen)).expect("toml");
    let _unit_daemon = start_daemon(&v.unit);
    crate::daemon::wait_for_socket(&v.unit);
    let ask = |args: &[&str]| {
        let mut full = vec!["handover", "--from", "smur", "--dossier", &v.ins];
        full.extend_from_slice(args);
        until_reached(&v.clinic, &full)
    };

    // Nobody at the unit has cared for this patient: the unit does not hand the dossier over,
    // and traces the ask.
    let refused = ask(&["--as", NURSE]);
    assert_ne!(refused.code, 0, "handed over with no care at the unit");
    assert!(
        refused.stderr.contains("does not qualify"),
        "{}",
        refused.stderr
    );
    v.clinic
        .fails(4, &["dossier", "show", &v.ins, "--as", NURSE]);
    assert!(
        v.unit
            .audit_as(&v.ins, "holder")
            .iter()
            .any(|e| e["action"].to_string().contains("handover-ask-refused")),
        "the unit traces the refused ask"
    );
    // Only a professional registered at the clinic asks.
    let o = ask(&["--as", STRANGER]);
    assert!(
        o.code != 0 && o.stderr.contains("not registered"),
        "{}",
        o.stderr
    );

    // The doctor writes the intervention report: now the dossier qualifies.
    let report = v.unit.add_doc(
        &v.ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR SMUR",
        b"SMUR: stable (synthetic)",
    );
    let asked = ask(&["--as", NURSE, "--reason", "patient arrived", "--json"]);
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    let out = asked.json();
    assert_eq!(out["documents_new"], 1, "{out}");
    assert_eq!(out["lacking"], 0, "{out}");
    assert!(out["lease_from"].is_string(), "{out}");
    // Data, not rights, at the clinic as when the unit hands it over.
    v.clinic.fails(3, &["doc", "get", &report, "--as", NURSE]);
    v.clinic
        .json(&["grant", "add", "--dossier", &v.ins, "--rpps", NURSE]);
    assert_eq!(v.clinic.body(&report, NURSE), b"SMUR: stable (synthetic)");
    // The unit traces the handover as its doctor's, on the clinic's ask.
    let sent = v.unit.audit_as(&v.ins, "holder");
    let entry = sent
        .iter()
        .find(|e| e["action"].to_string().contains("handover-sent"))
        .unwrap_or_else(|| panic!("no handover traced at the unit: {sent:?}"));
    assert!(
        entry["stated_reason"].to_string().contains("asked by site"),
        "{entry}"
    );
}

/// A network namespace of this test's own (`ip netns`), its loopback up and carrying
/// multicast, so that mDNS between the daemons started in it stays inside it. Deleted when
/// dropped.
struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Namespace {
        let name = format!("carnet-it-{}-{tag}", std::process::id());
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("`ip` (iproute2) runs");
            assert!(
                status.success(),
                "ip {args:?} failed: this test makes a network namespace (root, iproute2)"
            );
        };
        ip(&["netns", "add", &name]);
        let ns = Namespace(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.0, "link", "set", "lo", "multicast", "on"]);
        ns
    }

    /// Starts `carnet-syncd` on `c` inside the namespace (its local socket is a file, so
    /// `carnet` reaches it from outside).
    fn daemon(&self, c: &Carnet) -> Daemon {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(crate::daemon::syncd_bin())
            .arg("--data")
            .arg(&c.data)
            .env_remove("CARNET_PASSPHRASE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("carnet-syncd starts");
        let daemon = Daemon(child);
        crate::daemon::wait_for_socket(c);
        daemon
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn with_discover_the_unit_finds_the_clinic_on_the_local_network_without_listing_it() {
    let mut v = valley();
    crate::daemon::stop(&mut v.clinic_daemon);
    let clinic_id = site_ids(&v.host)[1];
    // Neither lists the other: both discover, the clinic listens for peers.
    let unlisted = |c: &Carnet, settings: &str| {
        let path = c.data.join("carnet.toml");
        let text = std::fs::read_to_string(&path).expect("toml");
        let cut = text.find("[[peer]]").unwrap_or(text.len());
        let text = text[..cut].replace(&format!("peer_listen = \"{}\"\n", v.listen), "");
        std::fs::write(&path, format!("{settings}\n{text}")).expect("toml");
    };
    let ns = Namespace::new("mdns");
    unlisted(
        &v.clinic,
        &format!("discover = true\npeer_listen = \"{}\"", v.listen),
    );
    // First without discovering: the unit knows no peer of that name.
    unlisted(&v.unit, "");
    let to = format!("site-{clinic_id}");
    let args = ["handover", "--to", &to, "--dossier", &v.ins, "--as", DOCTOR];
    let o = v.unit.run(&args);
    assert!(
        o.code != 0 && o.stderr.contains("no [[peer]] named"),
        "{}",
        o.stderr
    );
    let _clinic = ns.daemon(&v.clinic);
    unlisted(&v.unit, "discover = true");
    let _unit = ns.daemon(&v.unit);
    v.unit.add_doc(
        &v.ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR SMUR",
        b"SMUR (synthetic)",
    );
    // The unit's daemon finds the clinic by its announced site id; the clinic admits the unit,
    // by its certificate, once it found the unit on its network too (tried again, bounded,
    // while the clinic has not heard the unit's announcement yet).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = until_reached(&v.unit, &[&args[..], &["--json"]].concat());
        if o.code == 0
            || !o.stderr.contains("refused this site's certificate")
            || std::time::Instant::now() > deadline
        {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out = o.json();
    assert_eq!(out["site_id"], clinic_id, "{out}");
    assert_eq!(out["documents_new"], 1, "{out}");
    // A name no site announces is not found.
    let o = v.unit.run(&[
        "handover",
        "--to",
        "nowhere",
        "--dossier",
        &v.ins,
        "--as",
        DOCTOR,
    ]);
    assert!(
        o.code != 0 && o.stderr.contains("found on the local network"),
        "{}",
        o.stderr
    );
}

/// The unit's handover of its dossier as its replica builds it now, taken straight from its
/// store (no daemon runs on it): what a rogue holding the unit's folder and certificate keeps.
fn built_at_the_unit(v: &Valley) -> Handover {
    let r = Replica::open(&v.unit.data, &KeySource::File, system_clock()).expect("open the unit");
    let site = SiteReplica::new(std::sync::Arc::new(r)).expect("a site");
    let clinic = SiteId(site_ids(&v.host)[1] as u32);
    site.sync()
        .handover_out(
            &Ins::parse(&v.ins).expect("ins"),
            &Rpps::parse(DOCTOR).expect("rpps"),
            None,
            clinic,
        )
        .expect("built")
}

/// A rogue unit: sends `handover` to the clinic's listener itself, with the unit's
/// certificate, and answers the clinic's first reply.
fn rogue_hands_over(v: &Valley, handover: Handover) -> PeerMsg {
    let r = Replica::open(&v.unit.data, &KeySource::File, system_clock()).expect("open the unit");
    let tls = carnet_syncd::enrol::site_tls(&r).expect("the unit's certificate");
    let clinic = site_ids(&v.host)[1] as u32;
    let policy = PeerPolicy::new(
        vec![clinic],
        carnet_syncd::transport::revoked_for_peers(std::sync::Arc::new(r)),
        None,
    );
    let client = carnet_syncd::transport::peer_client_config(
        &tls.ca_cert_der,
        &tls.identity,
        clinic,
        policy,
    )
    .expect("client config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(client);
        let listen = v.listen.parse().expect("address");
        let conn = tokio::time::timeout(
            Duration::from_secs(30),
            endpoint
                .connect(listen, carnet_syncd::transport::PEER_SERVER_NAME)
                .expect("connect"),
        )
        .await
        .expect("the clinic answered in time")
        .expect("admitted at the handshake");
        let (mut tx, mut rx) = conn.open_bi().await.expect("stream");
        let msg = PeerMsg::Handover(Box::new(handover));
        tx.write_all(&frame::encode(&msg).expect("encode"))
            .await
            .expect("send");
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(reply) = decoder.next_message::<PeerMsg>().expect("a valid frame") {
                return reply;
            }
            let n = tokio::time::timeout(Duration::from_secs(30), rx.read(&mut buf))
                .await
                .expect("the clinic replied in time")
                .expect("read")
                .expect("the clinic replied");
            decoder.push(&buf[..n]);
        }
    })
}

#[test]
fn a_peer_relaying_a_forged_or_stale_host_record_is_refused() {
    let v = valley();
    let (host, unit, clinic, ins) = (&v.host, &v.unit, &v.clinic, &v.ins);
    let report = unit.add_doc(
        ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR SMUR",
        b"SMUR (synthetic)",
    );
    // The host grants the nurse; the unit learns it.
    let host_daemon = start_daemon(host);
    crate::daemon::wait_for_socket(host);
    host.ok(&["grant", "add", "--dossier", ins, "--rpps", NURSE]);
    sync_until_ok(unit, Duration::from_secs(30));
    // What a rogue holding the unit's folder keeps: the handover with the nurse's grant.
    let stale = built_at_the_unit(&v);

    // Forged: one byte of a signature changed. Refused whole; the clinic holds nothing.
    let mut forged = stale.clone();
    let last = forged.records.len() - 1;
    forged.records[last].signature[0] ^= 1;
    match rogue_hands_over(&v, forged) {
        PeerMsg::Refused(why) => assert!(why.contains("does not verify"), "{why}"),
        other => panic!("a forged record was admitted: {other:?}"),
    }
    clinic.fails(4, &["dossier", "show", ins, "--as", NURSE]);

    // The host blocks the nurse; the unit learns it and hands the dossier over.
    host.ok(&["grant", "block", "--dossier", ins, "--rpps", NURSE]);
    sync_until_ok(unit, Duration::from_secs(30));
    drop(host_daemon);
    let out = hand_over(&v, "patient brought to the clinic");
    assert_eq!(out["documents_new"], 1, "{out}");
    clinic.fails(3, &["doc", "get", &report, "--as", NURSE]);

    // Stale: the rogue relays the grant the block replaced. Nothing of it is admitted, and
    // the block stands at the clinic.
    match rogue_hands_over(&v, stale) {
        PeerMsg::Admitted(r) => assert_eq!(r.records_admitted, 0, "{r:?}"),
        other => panic!("{other:?}"),
    }
    clinic.fails(3, &["doc", "get", &report, "--as", NURSE]);
}
