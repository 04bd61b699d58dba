//! Sessions between two sites (ALPN `carnet-peer/1`, `transport::peer_server_config`): a
//! handover without the host. The dialler hands a dossier over (`hand_over`); the listener
//! (`serve`, on `peer_listen`) admits it with the store's `admit_handover`, which decides
//! everything again, then takes the bodies it lacks.
//!
//! One stream per handover:
//! 1. dialler → `Handover` (records, heartbeat, documents' metadata, its trace entries);
//! 2. listener → `Admitted` (what it admitted, and each body it lacks with the bytes it kept
//!    of it; the dialler then traces the handover) or `Refused` (why; nothing changed);
//! 3. dialler → `Piece`s of those bodies, from the bytes kept, then `Done`;
//! 4. listener → `Finished` (the bodies still lacking).
//!
//! Invariants: the listener knows the peer by the site id its certificate names, never by
//! what it says; it takes pieces only of the bodies its own `Admitted` named, kept durably
//! every `KEEP_EVERY` bytes and at the end (`receive_body_pieces`, one commit for many small
//! bodies), so a handover cut in the middle of a body resumes from the bytes kept when it is
//! made again; every read and write is bounded by
//! `IDLE_TIMEOUT` (`net::next_message`, `net::send`), and a listener holds at most
//! `SESSIONS_MAX` sessions; the dialler sends only bodies of the documents it handed over,
//! each once; store calls run on the blocking side.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use carnet_store::ids::{DocId, Ins, Rpps, SiteId};
use carnet_store::replica::{BodyPiece, Handover, HandoverReport, SiteReplica};
use serde::{Deserialize, Serialize};

use crate::config::{Config, PeerConfig};
use crate::error::{Error, Result};
use crate::frame::FrameDecoder;
use crate::net::{net_err, next_message, send, timed_out};
use crate::schedule::IDLE_TIMEOUT;
use crate::transport::{self, PeerPolicy, Revoked};

/// Bytes of a body in one `Piece`.
pub const PIECE_MAX: usize = 512 * 1024;
/// Peer sessions (of listed, admitted peers) a listener holds at once; one more is closed at
/// once until one ends.
pub const SESSIONS_MAX: usize = 8;
/// The listener keeps the pieces it received in one durable commit each time they reach this
/// many bytes, and at `Done`: a cut handover loses at most this much of what was sent.
pub const KEEP_EVERY: usize = 4 << 20;

/// A message of a peer session (see the module documentation).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Dialler: the handover.
    Handover(Box<Handover>),
    /// Listener: what it admitted, and the bodies it lacks.
    Admitted(Box<HandoverReport>),
    /// Listener: the handover is refused, and why (nothing changed).
    Refused(String),
    /// Dialler: a piece of a body the listener lacks.
    Piece(BodyPiece),
    /// Dialler: no more pieces.
    Done,
    /// Listener: the handover is over; the bodies it still lacks.
    Finished {
        /// Bodies of the handover still lacking at the listener.
        lacking: u64,
    },
}

/// What a handover did, as the sending site reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverOutcome {
    /// The peer's name (`[[peer]]`).
    pub peer: String,
    /// Its site id, as its certificate names it.
    pub site: u32,
    /// What the peer admitted.
    pub report: HandoverReport,
    /// Bodies sent (whole or their rest).
    pub bodies_sent: u64,
    /// Body bytes sent.
    pub body_bytes_sent: u64,
    /// Bodies still lacking at the peer when it ended (0 when all went over).
    pub lacking: u64,
    /// UDP bytes this site sent on the session's connection, handshake and close included.
    #[serde(default)]
    pub wire_sent: u64,
    /// UDP bytes this site received on it.
    #[serde(default)]
    pub wire_received: u64,
}

/// Who this site opens peer sessions with and accepts them from: the `[[peer]]` of `config`,
/// not revoked per `revoked`.
pub fn policy(config: &Config, revoked: Arc<Revoked>) -> Arc<PeerPolicy> {
    Arc::new(PeerPolicy {
        sites: config.peers.iter().map(|p| p.site).collect(),
        revoked,
    })
}

/// The site certificates this site refuses in peer sessions: those the host's signed list
/// names, as this site holds it, read at each handshake (`transport::revoked_for_peers`).
pub fn revoked_list(replica: &SiteReplica) -> Arc<Revoked> {
    transport::revoked_for_peers(replica.arc().clone())
}

/// The `[[peer]]` named `name` in the site's `carnet.toml`, with the settings.
fn peer_named(replica: &SiteReplica, name: &str) -> Result<(Config, PeerConfig)> {
    let config = Config::load(&replica.dir().join(crate::config::CONFIG_FILE))?;
    let peer = config.peer(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
        Error::Invalid(if known.is_empty() {
            format!("no [[peer]] named '{name}': this site lists no peer in carnet.toml (name, address, site)")
        } else {
            format!(
                "no [[peer]] named '{name}' in carnet.toml: the peers are {}",
                known.join(", ")
            )
        })
    })?;
    Ok((config, peer))
}

/// Sender: hands dossier `ins` over to the peer named `peer` in `carnet.toml`, by professional
/// `by` (registered here), traced here; then sends the bodies the peer lacks.
pub async fn hand_over(
    replica: SiteReplica,
    peer: &str,
    ins: Ins,
    by: Rpps,
    reason: Option<String>,
    revoked: Arc<Revoked>,
) -> Result<HandoverOutcome> {
    let r = replica.clone();
    let name = peer.to_string();
    let (config, peer, tls, handover) = tokio::task::spawn_blocking(move || -> Result<_> {
        let (config, peer) = peer_named(&r, &name)?;
        let tls = crate::enrol::site_tls(&r)?;
        let handover = r
            .sync()
            .handover_out(&ins, &by, reason.as_deref(), SiteId(peer.site))?;
        Ok((config, peer, tls, handover))
    })
    .await
    .map_err(net_err)??;
    let client = transport::peer_client_config(
        &tls.ca_cert_der,
        &tls.identity,
        peer.site,
        policy(&config, revoked),
    )?;
    let (endpoint, conn) = dial(peer.address, client).await?;
    let outcome = handover_on(&replica, &conn, &peer, handover)
        .await
        .map_err(|e| refused_by_peer(&conn, &peer).unwrap_or(e));
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    let stats = conn.stats();
    outcome.map(|o| HandoverOutcome {
        wire_sent: stats.udp_tx.bytes,
        wire_received: stats.udp_rx.bytes,
        ..o
    })
}

/// A connection to a peer's `peer_listen`, within `IDLE_TIMEOUT`.
async fn dial(
    address: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let bind: SocketAddr = if address.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(net_err)?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(address, transport::PEER_SERVER_NAME)
        .map_err(net_err)?;
    let conn = tokio::time::timeout(IDLE_TIMEOUT, connecting)
        .await
        .map_err(|_| timed_out("the peer did not answer"))?
        .map_err(|e| match e {
            quinn::ConnectionError::TransportError(_)
            | quinn::ConnectionError::ConnectionClosed(_) => Error::Invalid(format!(
                "the peer at {address} refused the session, or this site refused it: {e}"
            )),
            e => net_err(format!("the peer at {address} could not be reached: {e}")),
        })?;
    Ok((endpoint, conn))
}

async fn handover_on(
    replica: &SiteReplica,
    conn: &quinn::Connection,
    peer: &PeerConfig,
    handover: Handover,
) -> Result<HandoverOutcome> {
    let (mut tx, mut rx) = conn.open_bi().await.map_err(net_err)?;
    let mut decoder = FrameDecoder::new();
    let (ins, by, reason) = (
        handover.ins.clone(),
        handover.by.clone(),
        handover.reason.clone(),
    );
    // The peer may ask only for the bodies of the documents handed over, each once.
    let mut offered: std::collections::HashMap<DocId, u64> = handover
        .documents
        .iter()
        .map(|d| (d.facts.id, d.facts.size))
        .collect();
    send(&mut tx, &[PeerMsg::Handover(Box::new(handover))]).await?;
    let report = match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
        Some(PeerMsg::Admitted(report)) => *report,
        Some(PeerMsg::Refused(why)) => {
            return Err(Error::Invalid(format!(
                "peer {} refused the handover: {why}",
                peer.name
            )));
        }
        other => return Err(unexpected(&other)),
    };
    // Admitted: traced here now (a handover the peer refused, or never received, is not).
    let (r, to) = (replica.clone(), SiteId(peer.site));
    tokio::task::spawn_blocking(move || r.sync().record_handover(&ins, &by, reason.as_deref(), to))
        .await
        .map_err(net_err)??;
    let (mut bodies_sent, mut body_bytes_sent) = (0, 0);
    for (id, kept) in &report.lacking {
        let Some(size) = offered.remove(id) else {
            return Err(Error::Invalid(format!(
                "peer {} asked for a body that was not handed over (document {id}, or twice)",
                peer.name
            )));
        };
        let kept = (*kept).min(size);
        let r = replica.clone();
        let id = *id;
        let body = tokio::task::spawn_blocking(move || r.sync().body_for_sync(&id))
            .await
            .map_err(net_err)?;
        let Ok(body) = body else {
            // Not held whole here either (still arriving from the host): nothing to send.
            continue;
        };
        let total = body.len() as u64;
        let from = usize::try_from(kept).unwrap_or(usize::MAX).min(body.len());
        for (i, chunk) in body[from..].chunks(PIECE_MAX).enumerate() {
            let piece = BodyPiece {
                doc: id,
                offset: (from + i * PIECE_MAX) as u64,
                total,
                bytes: chunk.to_vec(),
            };
            send(&mut tx, &[PeerMsg::Piece(piece)]).await?;
            body_bytes_sent += chunk.len() as u64;
        }
        bodies_sent += 1;
    }
    send(&mut tx, &[PeerMsg::Done]).await?;
    let lacking = match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
        Some(PeerMsg::Finished { lacking }) => lacking,
        Some(PeerMsg::Refused(why)) => {
            return Err(Error::Invalid(format!(
                "peer {} refused the bodies: {why}",
                peer.name
            )));
        }
        other => return Err(unexpected(&other)),
    };
    let _ = tx.finish();
    Ok(HandoverOutcome {
        peer: peer.name.clone(),
        site: peer.site,
        report,
        bodies_sent,
        body_bytes_sent,
        lacking,
        wire_sent: 0,
        wire_received: 0,
    })
}

/// The peer's refusal of this site at the handshake, if that is what closed the connection
/// (TLS 1.3: a client learns its certificate was refused once its handshake is over).
fn refused_by_peer(conn: &quinn::Connection, peer: &PeerConfig) -> Option<Error> {
    const TLS_ALERT: u64 = 0x100;
    let quinn::ConnectionError::ConnectionClosed(c) = conn.close_reason()? else {
        return None;
    };
    let alert = u64::from(c.error_code).checked_sub(TLS_ALERT)?;
    Some(Error::Invalid(format!(
        "peer {} (site {}) refused this site's certificate (TLS alert {alert}): it must list this site as a [[peer]] with this site's id, and the national host must not have revoked it; its log says which",
        peer.name, peer.site
    )))
}

fn unexpected(msg: &Option<PeerMsg>) -> Error {
    match msg {
        None => Error::Invalid("the peer ended the session early".into()),
        Some(m) => Error::Invalid(format!(
            "the peer sent {} out of turn",
            match m {
                PeerMsg::Handover(_) => "a handover",
                PeerMsg::Admitted(_) => "an admission",
                PeerMsg::Refused(_) => "a refusal",
                PeerMsg::Piece(_) => "a body piece",
                PeerMsg::Done => "an end of pieces",
                PeerMsg::Finished { .. } => "an end of handover",
            }
        )),
    }
}

/// Receiver: serves peer sessions on `endpoint` (`peer_listen`) until it closes; `changed` is
/// notified after each handover admitted.
pub async fn serve(
    endpoint: quinn::Endpoint,
    replica: SiteReplica,
    changed: Arc<tokio::sync::Notify>,
) {
    let sessions = Arc::new(tokio::sync::Semaphore::new(SESSIONS_MAX));
    while let Some(incoming) = endpoint.accept().await {
        let replica = replica.clone();
        let changed = changed.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "a peer session was refused");
                    return;
                }
            };
            let site = match transport::peer_site(&conn) {
                Ok(site) => site,
                Err(e) => {
                    conn.close(1u32.into(), b"no certificate");
                    tracing::warn!(%remote, error = %e, "a peer session was refused");
                    return;
                }
            };
            // Counted once the peer is known: a stranger's handshake holds no session.
            let Ok(_permit) = sessions.try_acquire_owned() else {
                conn.close(2u32.into(), b"busy");
                tracing::warn!(%remote, peer = site, "a peer session was refused: {SESSIONS_MAX} are open");
                return;
            };
            tracing::info!(%remote, peer = site, "peer session opened");
            while let Ok((tx, rx)) = conn.accept_bi().await {
                match serve_handover(&replica, SiteId(site), tx, rx).await {
                    Ok(Some(report)) => {
                        changed.notify_one();
                        tracing::info!(
                            peer = site,
                            records = report.records_admitted,
                            documents_new = report.documents_new,
                            documents_merged = report.documents_merged,
                            documents_refused = report.documents_refused.len(),
                            "handover received"
                        );
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(peer = site, error = %e, "a handover failed"),
                }
            }
        });
    }
}

/// One handover on a stream: its report when admitted, `None` when refused (the peer was
/// told why).
async fn serve_handover(
    replica: &SiteReplica,
    from: SiteId,
    mut tx: quinn::SendStream,
    mut rx: quinn::RecvStream,
) -> Result<Option<HandoverReport>> {
    let mut decoder = FrameDecoder::new();
    let handover = match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
        Some(PeerMsg::Handover(h)) => h,
        None => return Ok(None),
        other => return Err(unexpected(&other)),
    };
    let r = replica.clone();
    let admitted = tokio::task::spawn_blocking(move || r.sync().admit_handover(from, &handover))
        .await
        .map_err(net_err)?;
    let report = match admitted {
        Ok(report) => report,
        Err(e) => {
            send(&mut tx, &[PeerMsg::Refused(e.to_string())]).await?;
            let _ = tx.finish();
            tracing::warn!(peer = %from, error = %e, "a handover was refused");
            return Ok(None);
        }
    };
    send(&mut tx, &[PeerMsg::Admitted(Box::new(report.clone()))]).await?;
    let named: HashSet<DocId> = report.lacking.iter().map(|(id, _)| *id).collect();
    let (mut batch, mut batch_bytes) = (Vec::new(), 0);
    loop {
        match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
            Some(PeerMsg::Piece(piece)) => {
                if !named.contains(&piece.doc) {
                    send(
                        &mut tx,
                        &[PeerMsg::Refused(format!(
                            "a piece of document {}, whose body this site did not ask for",
                            piece.doc
                        ))],
                    )
                    .await?;
                    return Err(Error::Invalid(format!(
                        "peer site {from} sent a body this site did not ask for"
                    )));
                }
                batch_bytes += piece.bytes.len();
                batch.push(piece);
                if batch_bytes >= KEEP_EVERY {
                    keep(replica, &mut batch).await?;
                    batch_bytes = 0;
                }
            }
            Some(PeerMsg::Done) => {
                keep(replica, &mut batch).await?;
                break;
            }
            other => return Err(unexpected(&other)),
        }
    }
    let r = replica.clone();
    let lacking = tokio::task::spawn_blocking(move || -> Result<u64> {
        let missing: HashSet<DocId> = r.missing_bodies()?.into_iter().collect();
        Ok(named.iter().filter(|id| missing.contains(id)).count() as u64)
    })
    .await
    .map_err(net_err)??;
    send(&mut tx, &[PeerMsg::Finished { lacking }]).await?;
    let _ = tx.finish();
    Ok(Some(report))
}

/// Keeps the pieces of `batch` durably, in one commit, and empties it.
async fn keep(replica: &SiteReplica, batch: &mut Vec<BodyPiece>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let pieces = std::mem::take(batch);
    let r = replica.clone();
    tokio::task::spawn_blocking(move || r.sync().receive_body_pieces(&pieces))
        .await
        .map_err(net_err)??;
    Ok(())
}
