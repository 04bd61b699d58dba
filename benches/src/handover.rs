//! `carnet-bench handover [--reps N]` (issue 15 §3): a handover between two sites over
//! `carnet-peer/1` on 127.0.0.1, in this process, in a temporary folder.
//!
//! A host replica (in this process, serving on 127.0.0.1) enrols a sending site, which syncs
//! two dossiers and writes into them: 200 documents of 4 KiB in one, one image of 20 MiB in the
//! other. Each repetition hands one dossier over (`peer::hand_over`, its `[[peer]]` in the
//! sender's `carnet.toml`) to a new receiving site, enrolled and synced once, holding nothing
//! of it, that listens with `transport::peer_server_config` and `peer::serve`. Measured from
//! the sender's call to its return (the handover built, the handshake, the pieces, the
//! receiver's `Finished`, the connection closed): time, and the UDP bytes of the sender's
//! connection both ways; then the same handover again to the same receiver, which holds
//! everything (what is not the bodies). The floor: the same body bytes over a bare QUIC stream on loopback
//! (`sync::raw_quic`, handshake included), in the same run. Medians of N repetitions
//! (5 by default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use carnet_store::ids::Ins;
use carnet_store::model::{AccessMode, Actor, GrantBasis, GrantState, Professional};
use carnet_store::replica::{Replica, SiteReplica};
use carnet_syncd::config::{ConfigRole, PeerConfig};
use carnet_syncd::enrol::{self, site_tls};
use carnet_syncd::{net, peer, transport};

use crate::idle::{enrolled_site, settings};
use crate::{DOC_BYTES, Res};

/// Documents of the first workload.
const DOCS: usize = 200;
/// Bytes of the image of the second.
const IMAGE_BYTES: usize = 20 << 20;
/// The receiver's name in the sender's `carnet.toml`.
const RECEIVER: &str = "receiver";

/// The host (serving in this process) and the sending site, with the two dossiers.
struct Valley {
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
    host: Arc<Replica>,
    host_addr: SocketAddr,
    host_server: Arc<transport::HostServer>,
    pro: Professional,
    sender: Arc<Replica>,
    sender_site: u32,
    /// Receivers made so far.
    receivers: usize,
}

/// A receiving site listening for its peer, the sender; stopped and removed when dropped.
struct Receiver {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    site: u32,
    dir: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"bench over");
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One measured handover.
struct Run {
    seconds: f64,
    wire: u64,
    /// The same handover again, the receiver holding everything.
    again: f64,
}

impl Valley {
    fn new(dir: &Path) -> Res<Valley> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let host = crate::new_host(&dir.join("host"))?;
        enrol::init_host(&host)?;
        let pro = crate::doctor_professional()?;
        host.add_professional(&pro)?;
        // Served as a host daemon serves, on 127.0.0.1: the sites sync with it.
        let revoked = Arc::new(enrol::revoked(&host)?);
        let (ca, identity) = enrol::host_identity(&host)?;
        let server = transport::server_config(&ca, &identity, revoked.clone())?;
        let host_server = {
            let _guard = runtime.enter();
            transport::HostServer::bind(server, "127.0.0.1:0".parse()?)?
        };
        let host_addr = host_server.endpoint().local_addr()?;
        let host = Arc::new(host);
        runtime.spawn(net::serve(
            host_server.clone(),
            carnet_store::replica::HostReplica::new(host.clone())?,
            net::Live::new(Arc::new(tokio::sync::Notify::new()), revoked),
        ));
        let (sender_site, sender) = enrolled_site(&host, &dir.join("sender"), host_addr, &pro)?;
        Ok(Valley {
            dir: dir.to_path_buf(),
            runtime,
            host,
            host_addr,
            host_server,
            pro,
            sender: Arc::new(sender),
            sender_site,
            receivers: 0,
        })
    }

    /// A dossier the host opens for `ins`, treated by the bench's doctor.
    fn dossier(&self, ins: &str) -> Res<Ins> {
        let ins = crate::open_dossier(&self.host, Ins::from_body(ins)?)?;
        crate::decides(&self.host)?.set_grant(
            &ins,
            &self.pro.rpps,
            GrantState::Active,
            GrantBasis::Treating,
            None,
        )?;
        Ok(ins)
    }

    /// One round of `site` with the host.
    fn sync(&self, site: &Arc<Replica>) -> Res<()> {
        self.runtime.block_on(net::sync_round(
            SiteReplica::new(site.clone())?,
            vec![self.host_addr],
        ))?;
        Ok(())
    }

    /// A new site, enrolled and synced once, listening on 127.0.0.1 for the sender.
    fn receiver(&mut self) -> Res<Receiver> {
        self.receivers += 1;
        let dir = self.dir.join(format!("receiver-{}", self.receivers));
        let (site, replica) = enrolled_site(&self.host, &dir, self.host_addr, &self.pro)?;
        let replica = Arc::new(replica);
        self.sync(&replica)?;
        let replica = SiteReplica::new(replica)?;
        let mut config = settings(ConfigRole::Site, self.host_addr);
        config.peers = vec![PeerConfig {
            name: "sender".into(),
            address: "127.0.0.1:9".parse()?,
            site: self.sender_site,
        }];
        let tls = site_tls(&replica)?;
        let policy = peer::policy(&config, peer::revoked_list(&replica), None);
        let server = transport::peer_server_config(&tls.ca_cert_der, &tls.identity, policy)?;
        let _guard = self.runtime.enter();
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
        // The sender finds it as the `[[peer]]` of its carnet.toml.
        let mut sender = settings(ConfigRole::Site, self.host_addr);
        sender.log_level = "warn".into();
        sender.peers = vec![PeerConfig {
            name: RECEIVER.into(),
            address: endpoint.local_addr()?,
            site,
        }];
        let path = self.sender.dir().join(carnet_syncd::config::CONFIG_FILE);
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        sender.write_new(self.sender.dir())?;
        let task = self.runtime.spawn(peer::serve(
            endpoint.clone(),
            replica,
            Arc::new(tokio::sync::Notify::new()),
        ));
        Ok(Receiver {
            endpoint,
            task,
            site,
            dir,
        })
    }

    /// Hands `ins` over to a new receiver, then again to the same one: the time of the
    /// sender's call and its wire bytes, and the time of the second call (nothing to send);
    /// checks that `documents` documents and `body_bytes` went over the first time only.
    fn hand_over(&mut self, ins: &Ins, documents: usize, body_bytes: usize) -> Res<Run> {
        let receiver = self.receiver()?;
        let (seconds, first) = self.call(ins)?;
        let (again, second) = self.call(ins)?;
        if first.site != receiver.site
            || first.report.documents_new != documents
            || first.body_bytes_sent != body_bytes as u64
            || first.lacking != 0
            || second.report.documents_new + second.report.documents_merged != documents
            || second.body_bytes_sent != 0
        {
            return Err(format!(
                "the handover did not carry the dossier whole, once: {first:?}, then {second:?}"
            )
            .into());
        }
        Ok(Run {
            seconds,
            wire: first.wire_sent + first.wire_received,
            again,
        })
    }

    /// One `peer::hand_over` of `ins` to the receiver, as the daemon's local API makes it:
    /// its time and outcome.
    fn call(&self, ins: &Ins) -> Res<(f64, peer::HandoverOutcome)> {
        let sender = SiteReplica::new(self.sender.clone())?;
        let start = Instant::now();
        let revoked = peer::revoked_list(&sender);
        let outcome = self.runtime.block_on(peer::hand_over(
            sender,
            RECEIVER,
            ins.clone(),
            self.pro.rpps.clone(),
            Some("carnet-bench handover".into()),
            revoked,
            None,
        ))?;
        Ok((start.elapsed().as_secs_f64(), outcome))
    }
}

impl Drop for Valley {
    fn drop(&mut self) {
        self.host_server
            .endpoint()
            .close(0u32.into(), b"bench over");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub fn run() -> Res<()> {
    let reps = crate::count_option("--reps", 5, "handover [--reps N]")?;
    let tmp = crate::tmp::tempdir()?;
    println!(
        "carnet-bench handover — two sites over carnet-peer/1 on 127.0.0.1, in-process, \
         median of {reps}\n"
    );
    let mut valley = Valley::new(tmp.path())?;
    let reports = valley.dossier("1840575123456")?;
    let imaging = valley.dossier("2840575123456")?;
    let sender = valley.sender.clone();
    valley.sync(&sender)?;
    let actor = Actor::Professional(valley.pro.rpps.clone());
    let batch = (0..DOCS)
        .map(|i| Ok((reports.clone(), crate::new_doc(i)?)))
        .collect::<Res<Vec<_>>>()?;
    sender.put_documents(&actor, AccessMode::Normal, None, batch)?;
    let mut image = crate::new_doc(DOCS)?;
    image.title = "imagerie".into();
    image.format = "application/dicom".into();
    image.body = crate::random_bytes(IMAGE_BYTES, 11);
    sender.put_document(&actor, AccessMode::Normal, None, &imaging, image)?;

    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>10} {:>6} {:>13}",
        "workload", "time", "wire", "floor", "floor wire", "share", "again (empty)"
    );
    let mut drains = Vec::new();
    for (name, ins, documents, body_bytes) in [
        ("200 documents of 4 KiB", &reports, DOCS, DOCS * DOC_BYTES),
        ("1 image of 20 MiB", &imaging, 1, IMAGE_BYTES),
    ] {
        let (mut times, mut wires, mut again) = (Vec::new(), Vec::new(), Vec::new());
        let (mut floors, mut floor_wires) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let run = valley.hand_over(ins, documents, body_bytes)?;
            times.push(run.seconds);
            wires.push(run.wire as f64);
            again.push(run.again);
            let floor = crate::sync::raw_quic(body_bytes)?;
            floors.push(floor.seconds);
            floor_wires.push(floor.wire as f64);
            drains.push(floor.drain);
        }
        let (time, floor) = (median(times), median(floors));
        println!(
            "{name:<24} {:>5.0} ms {:>10} {:>7.0} ms {:>10} {:>5.0}% {:>10.0} ms",
            time * 1000.0,
            crate::sync::mib(median(wires) as u64),
            floor * 1000.0,
            crate::sync::mib(median(floor_wires) as u64),
            100.0 * floor / time,
            median(again) * 1000.0,
        );
    }
    println!(
        "\ntime: from the sender's peer::hand_over call to its return, handshake and close \
         included; wire: UDP bytes both ways on the sender's connection; floor: the same body \
         bytes ({} and {}) over a bare QUIC stream on loopback, handshake included; share: \
         floor time / time; again: the same handover made again to the same receiver, which \
         holds everything (no body sent)",
        crate::sync::mib((DOCS * DOC_BYTES) as u64),
        crate::sync::mib(IMAGE_BYTES as u64)
    );
    println!(
        "the sender's time includes waiting for its closed connection to drain (quinn's \
         wait_idle, three probe timeouts): {:.0} ms after the floor's stream, not in the floor",
        median(drains) * 1000.0
    );
    Ok(())
}
