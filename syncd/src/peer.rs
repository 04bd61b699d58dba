//! Sessions between two sites (ALPN `carnet-peer/1`, `transport::peer_server_config`): a
//! handover without the host. The dialler hands a dossier over (`hand_over`); the listener
//! (`serve`, on `peer_listen`) admits it with the store's `admit_handover`, which decides
//! everything again, then takes the bodies it lacks. Or the dialler asks for a dossier
//! (`ask`, `PeerMsg::Ask`): the listener decides whether it qualifies (`handover_asked`) and,
//! on that stream, the roles below swap.
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
use crate::discovery::Discovery;
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
    /// Dialler: asks the listener to hand dossier `ins` over to it, for its professional
    /// `by`. The listener answers with a `Handover` (and the roles of steps 1–4 swap) or
    /// `Refused`.
    Ask {
        /// The dossier.
        ins: Ins,
        /// The asking site's professional, as it declares them.
        by: Rpps,
        /// Why, in their words.
        reason: Option<String>,
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

/// What a dossier asked for did at this site (`ask`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskOutcome {
    /// The peer's name (`[[peer]]`).
    pub peer: String,
    /// Its site id, as its certificate names it.
    pub site: u32,
    /// What this site admitted of the peer's handover.
    pub report: HandoverReport,
    /// Bodies still lacking here when it ended (0 when all came over).
    pub lacking: u64,
}

/// Who this site opens peer sessions with and accepts them from: the `[[peer]]` of `config`,
/// and the sites `discovered` on the local network (`discover = true`), not revoked per
/// `revoked`.
pub fn policy(
    config: &Config,
    revoked: Arc<Revoked>,
    discovered: Option<Arc<Discovery>>,
) -> Arc<PeerPolicy> {
    PeerPolicy::new(
        config.peers.iter().map(|p| p.site).collect(),
        revoked,
        discovered,
    )
}

/// The site certificates this site refuses in peer sessions: those the host's signed list
/// names, as this site holds it, read at each handshake (`transport::revoked_for_peers`).
pub fn revoked_list(replica: &SiteReplica) -> Arc<Revoked> {
    transport::revoked_for_peers(replica.arc().clone())
}

/// The peer named `name`, with the settings: the `[[peer]]` of that name in the site's
/// `carnet.toml`; or, with `discover = true`, the site announcing that name on the local
/// network, found by `discovered` (the daemon's), or by a discovery started here for the
/// session (returned, to be kept while it lasts: the peer admits this site while it sees it).
fn peer_named(
    replica: &SiteReplica,
    name: &str,
    discovered: Option<Arc<Discovery>>,
) -> Result<(Config, PeerConfig, Option<Arc<Discovery>>)> {
    let config = Config::load(&replica.dir().join(crate::config::CONFIG_FILE))?;
    if let Some(peer) = config.peer(name) {
        let peer = peer.clone();
        return Ok((config, peer, discovered));
    }
    if config.discover {
        let discovery = match discovered {
            Some(d) => d,
            None => Discovery::start(replica.config().site_id.0, &replica.config().name, None)?,
        };
        let found = discovery.find(name, crate::discovery::FIND_WAIT)?;
        let peer = PeerConfig {
            name: name.to_string(),
            address: found.address,
            site: found.site,
        };
        return Ok((config, peer, Some(discovery)));
    }
    let known: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
    Err(Error::Invalid(if known.is_empty() {
        format!(
            "no [[peer]] named '{name}': this site lists no peer in carnet.toml (name, address, site)"
        )
    } else {
        format!(
            "no [[peer]] named '{name}' in carnet.toml: the peers are {}",
            known.join(", ")
        )
    }))
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
    discovered: Option<Arc<Discovery>>,
) -> Result<HandoverOutcome> {
    let peers = (revoked, discovered);
    let (session, handover) = PeerSession::open(&replica, peer, peers, move |r, peer| {
        r.sync()
            .handover_out(&ins, &by, reason.as_deref(), SiteId(peer.site))
    })
    .await?;
    let outcome = async {
        let (tx, rx) = session.conn.open_bi().await.map_err(net_err)?;
        let to = (session.peer.name.as_str(), SiteId(session.peer.site));
        send_handover(
            &replica,
            tx,
            &session.conn,
            rx,
            FrameDecoder::new(),
            to,
            handover,
        )
        .await
    }
    .await;
    let (outcome, stats) = session.close(outcome).await;
    outcome.map(|o| HandoverOutcome {
        wire_sent: stats.udp_tx.bytes,
        wire_received: stats.udp_rx.bytes,
        ..o
    })
}

/// A session this site opened with a `[[peer]]`, or a site found on the local network.
struct PeerSession {
    peer: PeerConfig,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    /// The discovery that found the peer and announces this site, while the session lasts.
    _discovery: Option<Arc<Discovery>>,
}

impl PeerSession {
    /// Opens a session with the peer named `name` (`peer_named`), admitted per the revoked
    /// certificates and discovery of `peers`, once `prepare` (run on the blocking side, before
    /// anything is sent) succeeded; with what it prepared.
    async fn open<P, F>(
        replica: &SiteReplica,
        name: &str,
        peers: (Arc<Revoked>, Option<Arc<Discovery>>),
        prepare: F,
    ) -> Result<(PeerSession, P)>
    where
        P: Send + 'static,
        F: FnOnce(&SiteReplica, &PeerConfig) -> carnet_store::Result<P> + Send + 'static,
    {
        let (r, name) = (replica.clone(), name.to_string());
        let (revoked, discovered) = peers;
        let (config, peer, discovery, tls, prepared) =
            tokio::task::spawn_blocking(move || -> Result<_> {
                let (config, peer, discovery) = peer_named(&r, &name, discovered)?;
                let tls = crate::enrol::site_tls(&r)?;
                let prepared = prepare(&r, &peer)?;
                Ok((config, peer, discovery, tls, prepared))
            })
            .await
            .map_err(net_err)??;
        let client = transport::peer_client_config(
            &tls.ca_cert_der,
            &tls.identity,
            peer.site,
            policy(&config, revoked, discovery.clone()),
        )?;
        let (endpoint, conn) = dial(peer.address, client).await?;
        Ok((
            PeerSession {
                peer,
                endpoint,
                conn,
                _discovery: discovery,
            },
            prepared,
        ))
    }

    /// Closes the session after `outcome` (an error read as the peer's refusal at the
    /// handshake when that is what closed it); with the connection's counts.
    async fn close<T>(self, outcome: Result<T>) -> (Result<T>, quinn::ConnectionStats) {
        let outcome = outcome.map_err(|e| refused_by_peer(&self.conn, &self.peer).unwrap_or(e));
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
        (outcome, self.conn.stats())
    }
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

/// Asker: asks the peer named `peer` in `carnet.toml` to hand dossier `ins` over to this site,
/// for professional `by` (registered here); admits what it sends as `serve` would, then takes
/// the bodies it lacks. The peer decides whether the dossier qualifies
/// (`SiteReplica::handover_asked`).
pub async fn ask(
    replica: SiteReplica,
    peer: &str,
    ins: Ins,
    by: Rpps,
    reason: Option<String>,
    revoked: Arc<Revoked>,
    discovered: Option<Arc<Discovery>>,
) -> Result<AskOutcome> {
    let asker = by.clone();
    let peers = (revoked, discovered);
    let (session, ()) = PeerSession::open(&replica, peer, peers, move |r, _| {
        if r.professionals()?.iter().any(|p| p.rpps == asker) {
            Ok(())
        } else {
            Err(carnet_store::Error::Invalid(format!(
                "{asker} is not registered at this site: a dossier is asked for by a professional of the site"
            )))
        }
    })
    .await?;
    let (conn, peer) = (&session.conn, &session.peer);
    let outcome = async {
        let from = SiteId(transport::peer_site(conn)?);
        let (mut tx, mut rx) = conn.open_bi().await.map_err(net_err)?;
        let mut decoder = FrameDecoder::new();
        send(&mut tx, conn, &[PeerMsg::Ask { ins, by, reason }]).await?;
        let handover = match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
            Some(PeerMsg::Handover(h)) => h,
            Some(PeerMsg::Refused(why)) => {
                return Err(Error::Invalid(format!(
                    "peer {} did not hand the dossier over: {why}",
                    peer.name
                )));
            }
            other => return Err(unexpected(&other)),
        };
        match receive_handover(&replica, from, tx, conn, rx, decoder, handover).await? {
            Some((report, lacking)) => Ok(AskOutcome {
                peer: peer.name.clone(),
                site: peer.site,
                report,
                lacking,
            }),
            None => Err(Error::Invalid(format!(
                "the handover peer {} sent was refused here; this site's trace says why",
                peer.name
            ))),
        }
    }
    .await;
    session.close(outcome).await.0
}

/// Sender: hands `handover` over to peer `to` (its name, and its site id as its certificate
/// names it) on a stream, traces it once admitted, then sends the bodies the peer lacks.
async fn send_handover(
    replica: &SiteReplica,
    mut tx: quinn::SendStream,
    link: &quinn::Connection,
    mut rx: quinn::RecvStream,
    mut decoder: FrameDecoder,
    to: (&str, SiteId),
    handover: Handover,
) -> Result<HandoverOutcome> {
    let (name, site) = to;
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
    send(&mut tx, link, &[PeerMsg::Handover(Box::new(handover))]).await?;
    let report = match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
        Some(PeerMsg::Admitted(report)) => *report,
        Some(PeerMsg::Refused(why)) => {
            return Err(Error::Invalid(format!(
                "peer {} refused the handover: {why}",
                name
            )));
        }
        other => return Err(unexpected(&other)),
    };
    // Admitted: traced here now (a handover the peer refused, or never received, is not).
    let r = replica.clone();
    tokio::task::spawn_blocking(move || {
        r.sync().record_handover(&ins, &by, reason.as_deref(), site)
    })
    .await
    .map_err(net_err)??;
    let (mut bodies_sent, mut body_bytes_sent) = (0, 0);
    for (id, kept) in &report.lacking {
        let Some(size) = offered.remove(id) else {
            return Err(Error::Invalid(format!(
                "peer {} asked for a body that was not handed over (document {id}, or twice)",
                name
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
            send(&mut tx, link, &[PeerMsg::Piece(piece)]).await?;
            body_bytes_sent += chunk.len() as u64;
        }
        bodies_sent += 1;
    }
    send(&mut tx, link, &[PeerMsg::Done]).await?;
    let lacking = match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
        Some(PeerMsg::Finished { lacking }) => lacking,
        Some(PeerMsg::Refused(why)) => {
            return Err(Error::Invalid(format!(
                "peer {} refused the bodies: {why}",
                name
            )));
        }
        other => return Err(unexpected(&other)),
    };
    let _ = tx.finish();
    Ok(HandoverOutcome {
        peer: name.to_string(),
        site: site.0,
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
                PeerMsg::Ask { .. } => "an ask for a dossier",
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
                match serve_stream(&replica, SiteId(site), tx, &conn, rx).await {
                    Ok(Served::Received(report)) => {
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
                    Ok(Served::Sent(outcome)) => {
                        // Traced here: the next round pushes the entry.
                        changed.notify_one();
                        tracing::info!(
                            peer = site,
                            bodies = outcome.bodies_sent,
                            "dossier handed over on the peer's ask"
                        );
                    }
                    Ok(Served::Refused) => {}
                    Err(e) => tracing::warn!(peer = site, error = %e, "a handover failed"),
                }
            }
        });
    }
}

/// What one stream of a peer session did at the listener.
enum Served {
    /// The peer handed a dossier over, admitted here.
    Received(HandoverReport),
    /// The peer asked for a dossier, and this site handed it over.
    Sent(HandoverOutcome),
    /// Refused, the peer told why (or it sent nothing).
    Refused,
}

/// One stream of a peer session: a handover to admit, or an ask to answer.
async fn serve_stream(
    replica: &SiteReplica,
    from: SiteId,
    mut tx: quinn::SendStream,
    link: &quinn::Connection,
    mut rx: quinn::RecvStream,
) -> Result<Served> {
    let mut decoder = FrameDecoder::new();
    match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
        Some(PeerMsg::Handover(h)) => Ok(
            match receive_handover(replica, from, tx, link, rx, decoder, h).await? {
                Some((report, _)) => Served::Received(report),
                None => Served::Refused,
            },
        ),
        Some(PeerMsg::Ask { ins, by, reason }) => {
            let r = replica.clone();
            let asked = tokio::task::spawn_blocking(move || {
                r.sync().handover_asked(&ins, from, &by, reason.as_deref())
            })
            .await
            .map_err(net_err)?;
            match asked {
                Ok(handover) => {
                    let to = (format!("site {from}"), from);
                    let outcome =
                        send_handover(replica, tx, link, rx, decoder, (&to.0, to.1), handover)
                            .await?;
                    Ok(Served::Sent(outcome))
                }
                Err(e) => {
                    send(&mut tx, link, &[PeerMsg::Refused(e.to_string())]).await?;
                    let _ = tx.finish();
                    tracing::warn!(peer = %from, error = %e, "a peer's ask was refused");
                    Ok(Served::Refused)
                }
            }
        }
        None => Ok(Served::Refused),
        other => Err(unexpected(&other)),
    }
}

/// Receiver: admits `handover` from peer site `from` on a stream, then takes the bodies it
/// lacks: what it admitted and the bodies still lacking, or `None` when refused (the peer was
/// told why).
async fn receive_handover(
    replica: &SiteReplica,
    from: SiteId,
    mut tx: quinn::SendStream,
    link: &quinn::Connection,
    mut rx: quinn::RecvStream,
    mut decoder: FrameDecoder,
    handover: Box<Handover>,
) -> Result<Option<(HandoverReport, u64)>> {
    let r = replica.clone();
    let admitted = tokio::task::spawn_blocking(move || r.sync().admit_handover(from, &handover))
        .await
        .map_err(net_err)?;
    let report = match admitted {
        Ok(report) => report,
        Err(e) => {
            send(&mut tx, link, &[PeerMsg::Refused(e.to_string())]).await?;
            let _ = tx.finish();
            tracing::warn!(peer = %from, error = %e, "a handover was refused");
            return Ok(None);
        }
    };
    send(
        &mut tx,
        link,
        &[PeerMsg::Admitted(Box::new(report.clone()))],
    )
    .await?;
    let named: HashSet<DocId> = report.lacking.iter().map(|(id, _)| *id).collect();
    let (mut batch, mut batch_bytes) = (Vec::new(), 0);
    loop {
        match next_message::<PeerMsg>(&mut rx, &mut decoder).await? {
            Some(PeerMsg::Piece(piece)) => {
                if !named.contains(&piece.doc) {
                    send(
                        &mut tx,
                        link,
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
    send(&mut tx, link, &[PeerMsg::Finished { lacking }]).await?;
    let _ = tx.finish();
    Ok(Some((report, lacking)))
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
