//! Drives sessions over QUIC: the host serves one session per stream of an authenticated
//! connection; a site runs its rounds on a `Link`, one connection kept open between rounds
//! (the live phase), where the host `Live` registry pokes it when the site's log grows. The
//! link dials the host's daemons at `host_address` (`carnet.toml`), failing over between them.
//!
//! Invariants: the host learns the site from the peer's certificate (its fingerprint in the
//! register), never from what the peer says; a revoked site's connection is closed; a wait for
//! the peer's next message on a session stream fails after `IDLE_TIMEOUT` in which no data
//! moved between the two applications (`data_moving`: a body crossing a slow line leaves the
//! session stream quiet for minutes) and, on the host, it owed the site no answer
//! (`Answering`); every other read fails after `IDLE_TIMEOUT`, and so does every write that
//! makes no progress; a malformed frame or a protocol error ends that session with an `Error`
//! message, not the server; store calls, which may sync to disk, run on the runtime's blocking
//! side.
//!
//! Bounds: what a peer sends or fails to read cannot grow a daemon's memory without limit.
//! - Reads: a stream's decoder holds at most one frame (`frame::FRAME_MAX`) and one read
//!   (`READ_CHUNK`), and the host's decoders of one connection `DECODE_BUDGET` together, with
//!   the messages they decoded until those are applied (a stream past it is refused); quinn
//!   holds at most a stream's receive window per stream (`transport::STREAM_WINDOW`) and
//!   `transport::CONNECTION_WINDOW` on all the streams of a connection; a peer may open at most
//!   quinn's `max_concurrent_bidi_streams` (100) two-way streams at once per connection, and no
//!   one-way stream to the listening end.
//! - Host: a stream's messages are read ahead of the ones being applied, into a channel of
//!   `PUSH_WINDOW` messages, and the stream reads no more while it is full (a stream holds at
//!   most twice `PUSH_WINDOW` decoded messages and one more: the channel's, the one waiting to
//!   enter it, the batch being applied); its replies wait in a channel of `PUSH_WINDOW`
//!   batches. A write the site does not take for
//!   `IDLE_TIMEOUT` ends the stream, so a stuck site pins nothing for long. A site has at most
//!   `CONNECTIONS_PER_SITE` connections (a newer one closes the oldest), and at most one poke
//!   in flight on each.
//! - Site: the body pieces of a round's fetches wait in a channel of `FETCH_WINDOW` pieces;
//!   a fetch whose piece does not fit stops reading its stream, so QUIC's flow control stops
//!   the host (at most `FETCH_WINDOW` pieces queued, plus one held by each of the
//!   `FETCH_WINDOW` fetches, `CHUNK_MAX` bytes each).
//! - Not bounded here: the host answers a `GetBody` from the whole body in memory
//!   (`HostSession`, up to `BODY_MAX`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use carnet_store::ids::SiteId;
use carnet_store::replica::{HostReplica, SiteReplica};
use rustls_pki_types::CertificateDer;

use crate::congestion::{self, Remembered};
use crate::enrol;
use crate::error::{Error, Result};
use crate::fleet::{Fleet, error_kind};
use crate::frame::{self, FrameDecoder};
use crate::pki::{HOST_NAME, Identity};
use crate::schedule::IDLE_TIMEOUT;
use crate::session::{HostHeld, HostSession, Msg, RoundReport, SiteSession};
use crate::tail::TailProbes;
use crate::transport::{HostServer, Revoked};

const READ_CHUNK: usize = 64 * 1024;
/// Connections one site may hold open at the host: one is the rule (a site's daemon keeps one
/// link), a few more cover a reconnection while the old connection has not timed out yet.
pub const CONNECTIONS_PER_SITE: usize = 4;

pub(crate) fn net_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// A wait on the peer that ran out: a network failure (counted as such, `fleet::error_kind`).
pub(crate) fn timed_out(what: &str) -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Reads the next message, or `None` at the end of the stream; fails when the peer sends
/// nothing for `IDLE_TIMEOUT`.
pub(crate) async fn next_message<M: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<M>> {
    read_message(recv, decoder, Some(IDLE_TIMEOUT)).await
}

/// `next_message`, waiting `within` for each read (`None`: the caller bounds the wait).
async fn read_message<M: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    within: Option<Duration>,
) -> Result<Option<M>> {
    read_with(recv, decoder, within, FrameDecoder::next_message).await
}

/// Reads until `decoder` gives what `take` takes from it (`None` at the end of the stream),
/// waiting `within` for each read.
async fn read_with<T>(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    within: Option<Duration>,
    mut take: impl FnMut(&mut FrameDecoder) -> std::result::Result<Option<T>, frame::FrameError>,
) -> Result<Option<T>> {
    loop {
        if let Some(taken) = take(decoder).map_err(|e| Error::Invalid(e.to_string()))? {
            return Ok(Some(taken));
        }
        let read = recv.read_chunk(READ_CHUNK, true);
        let chunk = match within {
            Some(within) => tokio::time::timeout(within, read)
                .await
                .map_err(|_| timed_out("the peer went silent"))?,
            None => read.await,
        }
        .map_err(net_err)?;
        match chunk {
            Some(c) => decoder.push(&c.bytes),
            None if decoder.buffered() == 0 => return Ok(None),
            None => return Err(Error::Invalid("the stream ended inside a frame".into())),
        }
    }
}

/// Writes `msgs` on a stream of `link`, compressed when the link is slow enough for that to
/// pay (`frame::Compression::for_link`, from its congestion window and round trip as they are
/// now); fails if the peer takes no byte for `IDLE_TIMEOUT` (a peer that stops reading keeps
/// its connection alive with keep-alives, and would otherwise hold the stream, and what waits
/// to be sent on it, for as long as it likes).
pub(crate) async fn send<M: serde::Serialize>(
    stream: &mut quinn::SendStream,
    link: &quinn::Connection,
    msgs: &[M],
) -> Result<u64> {
    let mut sent = 0;
    for m in msgs {
        let compression = frame::Compression::for_link(link.stats().path.cwnd, link.rtt());
        // Handed to quinn as it is, not copied into its buffers (a push carries half a
        // megabyte of bodies); a write that moves nothing for `IDLE_TIMEOUT` ends the session.
        let mut frame = bytes::Bytes::from(
            frame::encode_with(m, compression).map_err(|e| Error::Invalid(e.to_string()))?,
        );
        sent += frame.len() as u64;
        while !frame.is_empty() {
            tokio::time::timeout(
                IDLE_TIMEOUT,
                stream.write_chunks(std::slice::from_mut(&mut frame)),
            )
            .await
            .map_err(|_| timed_out("the peer stopped reading"))?
            .map_err(net_err)?;
        }
    }
    Ok(sent)
}

/// The host's open connections to sites (the live phase). A connection stays open between a
/// site's rounds; when that site's log grows, the host pokes it on a stream of its own, and
/// the site runs a round at once: changes reach a connected site as they happen.
///
/// Invariant: a connection of a revoked site is closed at the next pass (and refused any new
/// round before that).
#[derive(Debug)]
pub struct Live {
    sites: std::sync::Mutex<std::collections::HashMap<usize, LiveSite>>,
    changed: Arc<tokio::sync::Notify>,
    revoked: Arc<Revoked>,
    /// What the host saw of each site, for the operator (`fleet`).
    fleet: Arc<Fleet>,
    /// How long a site's stream may wait for its next message while the site's connection
    /// moves no data (`IDLE_TIMEOUT`; shortened by tests).
    quiet: Duration,
}

#[derive(Debug)]
struct LiveSite {
    site: SiteId,
    fingerprint: [u8; 32],
    conn: quinn::Connection,
    /// The log head this site was last told of (or had at connection).
    told: u64,
    /// When it joined (the oldest of a site's connections goes first).
    since: std::time::Instant,
    /// A poke is on its way: no other is sent until it is done (a site that does not take its
    /// pokes does not collect tasks at the host).
    poking: Arc<std::sync::atomic::AtomicBool>,
}

impl Live {
    /// The live registry; a pass runs each time `changed` is notified (after each request that
    /// may change the store, and each session message applied).
    pub fn new(changed: Arc<tokio::sync::Notify>, revoked: Arc<Revoked>) -> Arc<Self> {
        Arc::new(Live {
            sites: std::sync::Mutex::new(std::collections::HashMap::new()),
            changed,
            revoked,
            fleet: Arc::default(),
            quiet: IDLE_TIMEOUT,
        })
    }

    /// What the host saw of each site since it started.
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }

    /// Something may have changed: a pass follows.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    fn join(&self, site: SiteId, fingerprint: [u8; 32], conn: &quinn::Connection, head: u64) {
        if let Ok(mut sites) = self.sites.lock() {
            // At most `CONNECTIONS_PER_SITE`: the oldest of this site's goes.
            let mut mine: Vec<(std::time::Instant, usize)> = sites
                .iter()
                .filter(|(_, l)| l.site == site)
                .map(|(id, l)| (l.since, *id))
                .collect();
            mine.sort();
            let excess = (mine.len() + 1).saturating_sub(CONNECTIONS_PER_SITE);
            for (_, id) in mine.into_iter().take(excess) {
                if let Some(old) = sites.remove(&id) {
                    tracing::info!(site = %site, "an older connection of the site closed");
                    old.conn
                        .close(2u32.into(), b"replaced by a newer connection");
                }
            }
            sites.insert(
                conn.stable_id(),
                LiveSite {
                    site,
                    fingerprint,
                    conn: conn.clone(),
                    told: head,
                    since: std::time::Instant::now(),
                    poking: Arc::default(),
                },
            );
        }
    }

    fn leave(&self, conn: &quinn::Connection) {
        if let Ok(mut sites) = self.sites.lock() {
            sites.remove(&conn.stable_id());
        }
    }

    /// Pokes every live site whose log grew since it was last told, and closes the
    /// connections of revoked sites; one pass each time `changed` is notified.
    pub async fn run(self: Arc<Self>, replica: HostReplica) {
        loop {
            self.changed.notified().await;
            let sites: Vec<(usize, SiteId, [u8; 32], u64)> = match self.sites.lock() {
                Ok(mut s) => {
                    // Revoked sites first, before anything that may fail.
                    s.retain(|_, l| {
                        let revoked = self.revoked.has(&l.fingerprint);
                        if revoked {
                            l.conn.close(1u32.into(), b"site revoked");
                        }
                        !revoked
                    });
                    s.iter()
                        .map(|(id, l)| (*id, l.site, l.fingerprint, l.told))
                        .collect()
                }
                Err(_) => return,
            };
            let r = replica.clone();
            let heads = tokio::task::spawn_blocking(move || {
                sites
                    .into_iter()
                    .map(|(id, site, fp, told)| {
                        (id, fp, told, r.sync().log_head(site).unwrap_or(told))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (id, _, told, head) in heads {
                let (conn, poking) = match self.sites.lock() {
                    Ok(mut s) => match s.get_mut(&id) {
                        // (A poke still on its way: a later pass tells this head, or the site's
                        // next regular round finds it.)
                        Some(l) if head > told && !l.poking.swap(true, Ordering::AcqRel) => {
                            l.told = head;
                            (l.conn.clone(), l.poking.clone())
                        }
                        _ => continue,
                    },
                    Err(_) => return,
                };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IDLE_TIMEOUT, poke(&conn, head)).await;
                    poking.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Sends `Poke` on a new unidirectional stream.
async fn poke(conn: &quinn::Connection, log_head: u64) -> Result<()> {
    let mut stream = conn.open_uni().await.map_err(net_err)?;
    send(&mut stream, conn, &[Msg::Poke { log_head }]).await?;
    stream.finish().map_err(net_err)
}

/// Host: serves connections on `server`'s endpoint until it is closed.
pub async fn serve(server: Arc<HostServer>, replica: HostReplica, live: Arc<Live>) {
    tokio::spawn(live.clone().run(replica.clone()));
    while let Some(incoming) = server.endpoint().accept().await {
        let (replica, live) = (replica.clone(), live.clone());
        let remote = incoming.remote_address();
        let accepted = server.accept(incoming);
        tokio::spawn(async move {
            // A failed connection concerns that peer only.
            let _ = match accepted {
                Ok((connecting, path)) => {
                    serve_connection(connecting, path, remote, replica, live).await
                }
                Err(e) => {
                    tracing::info!(%remote, error = %e, "handshake failed");
                    Err(e)
                }
            };
        });
    }
}

/// Serves the connection `connecting` from `remote`; `path` is told the path to the site once
/// the handshake names it (its controller resumes there).
async fn serve_connection(
    connecting: quinn::Connecting,
    path: Arc<std::sync::OnceLock<crate::congestion::Remembered>>,
    remote: std::net::SocketAddr,
    replica: HostReplica,
    live: Arc<Live>,
) -> Result<()> {
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            // A certificate the CA did not issue, or a revoked one, is refused here, by TLS
            // (an alert about the certificate); a handshake that timed out ends here too.
            if refused_certificate(&e) {
                tracing::warn!(%remote, reason = %e, "certificate refused");
            } else {
                tracing::info!(%remote, error = %e, "handshake failed");
            }
            return Err(net_err(e));
        }
    };
    let leaf = peer_certificate(&conn)?;
    let fingerprint = crate::transport::fingerprint(&leaf);
    let r = replica.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<_> {
        Ok(match enrol::site_of(&r, &fingerprint)? {
            // A certificate renewed over sync, used for the first time: the site's earlier
            // ones are retired.
            Some(site) => Some((
                site,
                r.sync().log_head(SiteId(site))?,
                enrol::first_use(&r, site, &fingerprint)?,
            )),
            None => None,
        })
    })
    .await
    .map_err(net_err)??;
    let Some((site, head, retired)) = found else {
        // (The first bytes of the fingerprint name the certificate; nothing else is known.)
        let certificate: String = fingerprint[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        tracing::warn!(
            %remote,
            certificate,
            reason = "not in the register of sites, or revoked",
            "certificate refused"
        );
        conn.close(1u32.into(), b"unknown or revoked site");
        return Err(Error::Invalid("unknown or revoked site".into()));
    };
    if !retired.is_empty() {
        tracing::info!(
            site,
            retired = retired.len(),
            "site switched to its renewed certificate"
        );
    }
    for f in retired {
        live.revoked.add(f);
    }
    if let Some(remembered) = live.fleet.path(SiteId(site)) {
        let _ = path.set(remembered);
    }
    live.join(SiteId(site), fingerprint, &conn, head);
    live.fleet.connected(SiteId(site), replica.now());
    // The certificate the site's trace heads must be signed with (`HostSession`).
    let certificate: Arc<[u8]> = Arc::from(leaf.as_ref());
    let since = std::time::Instant::now();
    let probes = TailProbes::start(&conn);
    let budget = crate::frame::Budget::new(DECODE_BUDGET);
    tracing::info!(site, %remote, "site connected");
    let mut streams = 0u64;
    while let Ok((mut send_stream, mut recv)) = conn.accept_bi().await {
        if live.revoked.has(&fingerprint) {
            tracing::warn!(site, "site revoked: connection closed");
            conn.close(1u32.into(), b"site revoked");
            break;
        }
        streams += 1;
        let (replica, live, certificate) = (replica.clone(), live.clone(), certificate.clone());
        let (conn, probes, budget) = (conn.clone(), probes.clone(), budget.clone());
        tokio::spawn(async move {
            let site = Peer {
                conn,
                site: SiteId(site),
                fingerprint,
                certificate,
                probes,
                budget,
            };
            let _ = host_stream(&mut send_stream, &mut recv, replica, site, &live).await;
        });
    }
    live.leave(&conn);
    live.fleet.disconnected(SiteId(site), replica.now());
    note_link(&live, &replica, SiteId(site), &conn).await;
    tracing::info!(
        site,
        %remote,
        reason = %conn.close_reason().map_or_else(|| "-".to_string(), |r| r.to_string()),
        streams,
        connected_s = since.elapsed().as_secs(),
        "site disconnected"
    );
    Ok(())
}

/// What the advice to a refused site says to do.
const ENROL_AGAIN: &str = "ask the national operator to enrol this site again (`carnet pki enrol` at the host) and set it up from the new bundle";

/// A security refusal in how a site's connection to the host ended, told as what happened and
/// what to do: the host refused this site's certificate (revoked, or not issued by the CA it
/// trusts), or this site refused the host's (not issued by the CA this site was enrolled
/// under). `None` for anything else (a network failure, retried as usual). The site's daemon
/// logs it at warn with every failed round.
fn refusal(e: &quinn::ConnectionError) -> Option<Error> {
    const TLS_ALERT: u64 = 0x100;
    let said = match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            match u64::from(c.error_code).checked_sub(TLS_ALERT) {
                Some(44) => format!(
                    "the host refused this site's certificate: the national host revoked this site; {ENROL_AGAIN}"
                ),
                Some(42 | 43 | 45 | 46 | 48 | 49 | 116) => format!(
                    "the host refused this site's certificate: it is not issued by the national CA the host trusts, or it expired; {ENROL_AGAIN}"
                ),
                _ => return None,
            }
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if [&b"unknown or revoked site"[..], b"site revoked"].contains(&c.reason.as_ref()) =>
        {
            format!(
                "the host refused this site: it is revoked, or not in the host's register of sites; {ENROL_AGAIN}"
            )
        }
        // (Another CA of the same name: the host's certificate names the issuer this site
        // knows, and its signature fails.)
        quinn::ConnectionError::TransportError(t)
            if ["UnknownIssuer", "BadSignature"]
                .iter()
                .any(|why| t.reason.contains(why)) =>
        {
            format!(
                "this site refused the host's certificate: the host at this address is not certified by the national CA this site was enrolled under; check `host_address` in carnet.toml, or {ENROL_AGAIN}"
            )
        }
        _ => return None,
    };
    Some(Error::Invalid(said))
}

/// The certificate (DER) the peer presented in the handshake, which the TLS layer checked.
fn peer_certificate(conn: &quinn::Connection) -> Result<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| Error::Invalid("the peer presented no certificate".into()))
}

/// How long a round that failed on a fresh connection waits for the host's reason to close
/// it: a refusal of this site's certificate comes right after the handshake, which the site
/// saw complete.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// The security refusal that closed `conn` (`refusal`), if any.
async fn refused(conn: &quinn::Connection, fresh: bool) -> Option<Error> {
    let reason = match conn.close_reason() {
        Some(reason) => reason,
        None if fresh => tokio::time::timeout(REFUSAL_WAIT, conn.closed())
            .await
            .ok()?,
        None => return None,
    };
    refusal(&reason)
}

/// True when the handshake failed on a TLS alert about a certificate: the peer's (bad,
/// revoked, expired, unknown, from an unknown CA, or missing), or this host's, refused by the
/// peer (a handshake failure, or a signature that does not verify under the peer's CA).
fn refused_certificate(e: &quinn::ConnectionError) -> bool {
    const TLS_ALERT: u64 = 0x100;
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return false,
    };
    matches!(code.checked_sub(TLS_ALERT), Some(40..=51 | 116))
}

/// How a site closes its connection after a round that went well (`Link::close`).
const CLOSED_AFTER_ROUND: u32 = 0;
/// How a site closes its connection after a round that failed (`Link::round_on_connection`).
const CLOSED_ON_FAILURE: u32 = 2;

/// True when the peer closed `conn` after a round that went well (`CLOSED_AFTER_ROUND`).
fn closed_after_its_round(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == CLOSED_AFTER_ROUND.into()
    )
}

/// What one host stream carried, for its log line: counts and bytes, never contents.
#[derive(Debug, Default)]
struct StreamLog {
    /// The stream began with a `Hello` (a round), else with a `GetBody` (a body stream).
    round: AtomicBool,
    changes_received: AtomicU64,
    traces_received: AtomicU64,
    bodies_received: AtomicU64,
    items_pulled: AtomicU64,
    bodies_sent: AtomicU64,
    returned: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
}

impl StreamLog {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn received(&self, msg: &Msg) {
        match msg {
            Msg::Hello { .. } => self.round.store(true, Ordering::Relaxed),
            Msg::Traces { records, .. } => Self::add(&self.traces_received, records.len()),
            Msg::Push { changes, bodies } => {
                Self::add(&self.changes_received, changes.len());
                Self::add(&self.bodies_received, bodies.len());
            }
            Msg::PutBodies(pieces) => Self::add(&self.bodies_received, pieces.len()),
            _ => {}
        }
    }

    fn sent(&self, msgs: &[Msg], bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        for msg in msgs {
            match msg {
                Msg::Pulled { items, bodies, .. } => {
                    Self::add(&self.items_pulled, items.len());
                    Self::add(&self.bodies_sent, bodies.len());
                }
                Msg::Body { .. } => Self::add(&self.bodies_sent, 1),
                Msg::PushAck { returned, .. } => Self::add(&self.returned, returned.len()),
                _ => {}
            }
        }
    }

    /// A round at info (the operator sees every site's rounds), a body stream at debug.
    fn log(&self, site: SiteId, took: Duration) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        if self.round.load(Ordering::Relaxed) {
            tracing::info!(
                site = site.0,
                changes_received = n(&self.changes_received),
                traces_received = n(&self.traces_received),
                bodies_received = n(&self.bodies_received),
                items_pulled = n(&self.items_pulled),
                bodies_sent = n(&self.bodies_sent),
                returned = n(&self.returned),
                bytes_received = n(&self.bytes_received),
                bytes_sent = n(&self.bytes_sent),
                duration_ms = took.as_millis() as u64,
                "round"
            );
        } else {
            tracing::debug!(
                site = site.0,
                pieces_sent = n(&self.bodies_sent),
                bytes_received = n(&self.bytes_received),
                bytes_sent = n(&self.bytes_sent),
                duration_ms = took.as_millis() as u64,
                "body stream"
            );
        }
    }
}

/// The site at the other end of a connection, as its certificate says.
struct Peer {
    /// The site's connection (how much data it moves: `data_moving`).
    conn: quinn::Connection,
    site: SiteId,
    /// The certificate's fingerprint (`transport::fingerprint`): revocation.
    fingerprint: [u8; 32],
    /// The certificate (DER): what the site signs is checked against its key.
    certificate: Arc<[u8]>,
    /// The connection's tail probes, run while a stream is served.
    probes: Arc<TailProbes>,
    /// What the decoders of the connection's streams may hold together.
    budget: Arc<crate::frame::Budget>,
}

/// Bytes of frames not yet whole, and of messages decoded and not yet applied, that one
/// connection of a site may make the host hold, on all its streams together (`frame::Budget`).
/// A round holds a few pushes (about a megabyte each) and a piece of a body at once; without
/// it, a site with a valid certificate could open a hundred streams and announce a frame of
/// `frame::FRAME_MAX` on each: 1.6 GiB for one connection.
pub(crate) const DECODE_BUDGET: usize = 4 * crate::frame::FRAME_MAX;

async fn host_stream(
    send_stream: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    replica: HostReplica,
    peer: Peer,
    live: &Live,
) -> Result<()> {
    let (site, link) = (peer.site, peer.conn.clone());
    let _underway = peer.probes.during();
    // The session's commits leave their syncs behind them (`Replica::deferring_syncs`): the
    // next messages are applied while the disk makes the last ones durable, and each reply
    // leaves, in order, once what was committed before it is on disk.
    let (replies, mut to_send) = tokio::sync::mpsc::channel(crate::session::PUSH_WINDOW);
    let started = std::time::Instant::now();
    let stats = StreamLog::default();
    let serve = serve_host_stream(recv, replica.clone(), peer, live, replies, &stats);
    let sender = async {
        while let Some(Reply {
            after,
            msgs,
            answer: _answer,
        }) = to_send.recv().await
        {
            let durable = match after {
                Some(point) if !replica.is_durable(point).unwrap_or(false) => {
                    let r = replica.clone();
                    match tokio::task::spawn_blocking(move || r.wait_durable(point)).await {
                        Ok(Ok(())) => Ok(()),
                        // The daemon sees the replica's failure and stops (`main`).
                        Ok(Err(e)) => Err(Error::from(e)),
                        Err(e) => Err(net_err(e)),
                    }
                }
                _ => Ok(()),
            };
            if msgs.iter().any(|m| matches!(m, Msg::Body { .. })) {
                // A body fetch: below the site's session, as the site's uploads are.
                let _ = send_stream.set_priority(BODY_PRIORITY);
            }
            let sent = match durable {
                Ok(()) => send(send_stream, &link, &msgs).await,
                Err(e) => Err(e),
            };
            if let Ok(bytes) = sent {
                stats.sent(&msgs, bytes);
            }
            if let Err(e) = sent {
                let _ = send(send_stream, &link, &[Msg::Error(e.to_string())]).await;
                break;
            }
        }
        drop(to_send);
        let _ = send_stream.finish();
    };
    tokio::pin!(serve, sender);
    let served = tokio::select! {
        served = &mut serve => {
            sender.await;
            served
        }
        // The sender stops first only on a failure, which it reported: the session ends.
        () = &mut sender => Ok(()),
    };
    stats.log(site, started.elapsed());
    live.fleet.stream_ended(
        site,
        replica.now(),
        stats.round.load(Ordering::Relaxed),
        stats.bytes_received.load(Ordering::Relaxed),
        stats.bytes_sent.load(Ordering::Relaxed),
    );
    // The path to the site, as the connection measured it by the end of this round: the
    // site's next connection starts from it.
    if stats.round.load(Ordering::Relaxed) {
        note_link(live, &replica, site, &link).await;
    }
    served
}

/// What `conn` measured of the path to `site`: in the host's replica when worth a record,
/// where a restarted daemon finds it (a hint: a failure is logged, and the next measurement
/// tries again), then in the daemon's memory (`Fleet::link`, what `carnet sites` shows).
async fn note_link(live: &Live, replica: &HostReplica, site: SiteId, conn: &quinn::Connection) {
    let seen = congestion::seen(conn);
    let mut recorded = false;
    if let Some(record) = live.fleet.worth_recording(site, replica.now(), &seen) {
        let r = replica.clone();
        match tokio::task::spawn_blocking(move || r.sync().set_link_path(site, record)).await {
            Ok(Ok(())) => recorded = true,
            Ok(Err(e)) => {
                tracing::warn!(%site, error = %e, "could not record the path to the site")
            }
            Err(e) => tracing::warn!(%site, error = %e, "could not record the path to the site"),
        }
    }
    live.fleet.link(site, replica.now(), seen, recorded);
}

/// Replies to send, once everything up to `after` is on disk; the batch they answer is
/// answered once they are sent.
struct Reply {
    after: Option<carnet_store::replica::Durable>,
    msgs: Vec<Msg>,
    answer: Option<Answer>,
}

/// Reads and applies a stream's messages, handing the replies to `replies` in order; ends at
/// the end of the stream, a `Bye`, an error (its reply queued last), or when the sender stops.
/// The stream is read ahead while the messages before are applied (`read_ahead`): the next
/// pushes are decoded on the runtime while the blocking side applies the last ones.
async fn serve_host_stream(
    recv: &mut quinn::RecvStream,
    replica: HostReplica,
    peer: Peer,
    live: &Live,
    replies: tokio::sync::mpsc::Sender<Reply>,
    stats: &StreamLog,
) -> Result<()> {
    let answering = Arc::new(Answering::default());
    let (ahead, arrived) = tokio::sync::mpsc::channel(crate::session::PUSH_WINDOW);
    let (conn, decoder) = (peer.conn.clone(), FrameDecoder::within(peer.budget.clone()));
    let reading = read_ahead(&conn, recv, decoder, live.quiet, &answering, ahead, stats);
    let applied = apply_in_turn(arrived, replica, peer, live, replies, stats, &answering);
    tokio::pin!(applied);
    tokio::select! {
        served = &mut applied => served,
        // The stream ended or failed: what was read before is applied, then the failure reported.
        () = reading => applied.await,
    }
}

/// A message read ahead of its turn, with its hold on the connection's decode budget, or the
/// failure that ended the reading.
type Ahead = Result<(Msg, frame::Hold)>;

/// Reads `recv`'s messages into `ahead` (a channel of `PUSH_WINDOW`: no more are read while it
/// is full), until the end of the stream or a failure, passed on last.
async fn read_ahead(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    mut decoder: FrameDecoder,
    quiet: Duration,
    answering: &Answering,
    ahead: tokio::sync::mpsc::Sender<Ahead>,
    stats: &StreamLog,
) {
    loop {
        // A session stream stays quiet while the site's bodies go up or come down on streams
        // of their own: it is given up only when the whole connection moves nothing.
        let read = read_while_moving(conn, recv, &mut decoder, quiet, answering).await;
        stats
            .bytes_received
            .store(decoder.received(), Ordering::Relaxed);
        let (item, last) = match read {
            Ok(Some(msg)) => (Ok(msg), false),
            Ok(None) => return,
            Err(e) => (Err(e), true),
        };
        if ahead.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Applies the messages `arrived` in the order read, the pushes at hand together (up to
/// `PUSH_WINDOW`, in one transaction), handing each batch's replies to `replies`.
async fn apply_in_turn(
    mut arrived: tokio::sync::mpsc::Receiver<Ahead>,
    replica: HostReplica,
    peer: Peer,
    live: &Live,
    replies: tokio::sync::mpsc::Sender<Reply>,
    stats: &StreamLog,
    answering: &Arc<Answering>,
) -> Result<()> {
    let (site, fingerprint) = (peer.site, peer.fingerprint);
    let session = Arc::new(std::sync::Mutex::new(HostSession::new(
        site,
        peer.certificate.to_vec(),
    )));
    let error = |e: String| Reply {
        after: None,
        msgs: vec![Msg::Error(e)],
        answer: None,
    };
    // A failure met while gathering pushes: the next turn's, once the batch is answered.
    let mut taken: Option<Ahead> = None;
    loop {
        let next = match taken.take() {
            Some(next) => next,
            None => match arrived.recv().await {
                Some(next) => next,
                None => break,
            },
        };
        let (msg, hold) = match next {
            Ok(next) => next,
            // The site closed its connection after a round that went well (the close may
            // overtake its `Bye`, or find a stream of body fetches open): nothing failed.
            Err(Error::Io(_)) if closed_after_its_round(&peer.conn) => break,
            Err(e) => {
                live.fleet
                    .error(site, replica.now(), error_kind(&e), e.to_string());
                let _ = replies.send(error(e.to_string())).await;
                break;
            }
        };
        if live.revoked.has(&fingerprint) {
            // Revoked while this session ran: nothing more for it.
            let _ = replies.send(error("this site is revoked".into())).await;
            break;
        }
        // The messages' holds on the decode budget last until they are applied.
        let (mut msgs, mut holds) = (vec![msg], vec![hold]);
        if is_push(&msgs[0]) {
            taken = more_pushes_at_hand(&mut arrived, &mut msgs, &mut holds);
        }
        msgs.iter().for_each(|m| stats.received(m));
        let bye = msgs.contains(&Msg::Bye);
        // For the operator's view: where the site says it stands (kept once the session took it).
        let hello = msgs.iter().find_map(|m| match m {
            Msg::Hello { cursor, about, .. } => Some((*cursor, about.clone())),
            _ => None,
        });
        let pull_after = msgs.iter().find_map(|m| match m {
            Msg::Pull { after } => Some(*after),
            _ => None,
        });
        // A push may grow other sites' logs: they are poked.
        let pushed = msgs.iter().any(|m| matches!(m, Msg::Push { .. }));
        let (r, s, changed) = (replica.clone(), session.clone(), live.changed.clone());
        let greeted = hello.is_some();
        let answer = answering.take();
        let handled = tokio::task::spawn_blocking(move || {
            let handled = r.deferring_syncs(|| {
                s.lock()
                    .map_err(|_| Error::Invalid("session lock poisoned".into()))?
                    .handle_all(r.sync(), msgs)
            });
            // Here, not after the await: this runs to the end even if the session is dropped.
            if pushed {
                changed.notify_one();
            }
            let applied = greeted.then(|| r.sync().applied_mark(site).unwrap_or(0));
            handled.map(|msgs| {
                (
                    Reply {
                        after: Some(r.durable_point()),
                        msgs,
                        answer: Some(answer),
                    },
                    applied,
                )
            })
        })
        .await
        .map_err(net_err);
        drop(holds);
        let now = replica.now();
        let (reply, failed) = match handled? {
            Ok((reply, applied)) => {
                if let (Some((cursor, about)), Some(applied)) = (hello, applied) {
                    live.fleet.hello(site, now, cursor, about, applied);
                }
                if let Some(after) = pull_after {
                    live.fleet.cursor(site, now, after);
                }
                // The end of the last batch sent: the site's cursor once it applies it.
                if let Some(to) = reply.msgs.iter().rev().find_map(|m| match m {
                    Msg::Pulled { items, .. } => items.last().map(|(seq, _)| *seq),
                    _ => None,
                }) {
                    live.fleet.cursor(site, now, to);
                }
                (reply, false)
            }
            Err(e) => {
                // The operator sees every refusal (errors carry ids, never patient data).
                tracing::warn!(site = %site, error = %e, "session refused");
                live.fleet.error(site, now, error_kind(&e), e.to_string());
                (error(e.to_string()), true)
            }
        };
        if replies.send(reply).await.is_err() || failed || bye {
            break;
        }
    }
    Ok(())
}

/// A message the site pushes in a window: a trace batch or a Push.
fn is_push(msg: &Msg) -> bool {
    matches!(msg, Msg::Push { .. } | Msg::Traces { .. })
}

/// Adds to `msgs` (their holds to `holds`) the pushes already read after them, up to
/// `PUSH_WINDOW` messages in all, and the message that follows them if it is not one; a
/// failure read is not waited for but returned, for the next turn.
fn more_pushes_at_hand(
    arrived: &mut tokio::sync::mpsc::Receiver<Ahead>,
    msgs: &mut Vec<Msg>,
    holds: &mut Vec<frame::Hold>,
) -> Option<Ahead> {
    while msgs.len() < crate::session::PUSH_WINDOW {
        match arrived.try_recv() {
            Ok(Ok((msg, hold))) => {
                let push = is_push(&msg);
                msgs.push(msg);
                holds.push(hold);
                if !push {
                    return None;
                }
            }
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => return None,
        }
    }
    None
}

/// How long a site waits for the handshake with one of the host's addresses while others
/// remain to be tried in the round. Without an answer quinn sends its first handshake packet
/// again after about 1 s (its initial RTT estimate, 333 ms, plus four times the variance), then
/// 2 s later: 4 s let the first flight and two retransmissions through, which a live daemon
/// answers even on a lossy rural link (200 ms, 10 % loss: PROTOCOL.md), while a dead address
/// listed first costs a round 4 s instead of the 10 s of QUIC's idle timeout. The last address
/// tried in a round — the only one, when `carnet.toml` names one — gets `IDLE_TIMEOUT`, as
/// every handshake always has: a slow link still reaches some daemon of the host.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// Where a site's link finds the host's addresses.
#[derive(Debug)]
enum Hosts {
    /// `host_address` as the daemon loaded it from its `carnet.toml`.
    Listed(Vec<SocketAddr>),
    /// `host_address` read from `carnet.toml` in the replica's folder at each connection
    /// (`carnet sync now` with no daemon running).
    Settings,
}

/// Where the next connection starts in the list of the host's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// With this address: its daemon answered last.
    At(SocketAddr),
    /// With the address after this one: its connection failed on the network.
    After(SocketAddr),
}

/// `hosts` in the order a connection tries them: from `start` on, wrapping around.
fn dial_order(hosts: &[SocketAddr], start: Option<Start>) -> Vec<SocketAddr> {
    let position = |a: SocketAddr| hosts.iter().position(|h| *h == a);
    let from = match start {
        Some(Start::At(a)) => position(a).unwrap_or(0),
        Some(Start::After(a)) => position(a).map_or(0, |i| i + 1),
        None => 0,
    };
    let n = hosts.len();
    (0..n).map(|i| hosts[(from + i) % n]).collect()
}

/// An open connection to one of the host's daemons.
#[derive(Debug)]
struct Open {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    probes: Arc<TailProbes>,
    /// The identity (certificate and key) it was made with.
    identity: Identity,
    /// The daemon's address.
    address: SocketAddr,
}

/// A site's link to the host: one QUIC connection, opened at the first round and kept open
/// between rounds (the live phase); the host pokes it there when this site's log grows, and
/// `wake` is notified. A failed round closes it; the next round connects again.
///
/// The host may run as several daemons (one database, one certificate), each at an address of
/// `host_address`: a connection tries them in order, starting with the one that answered
/// last, and moves on to the next within the same round when one fails or does not answer in
/// `CONNECT_TIMEOUT`. A connection that fails on the network (at the handshake, in a round,
/// or closed between rounds) makes the next one start with the address after its own. A
/// security refusal (a revoked or unknown certificate, either way) is never failed over: every
/// daemon presents and checks the same certificates, so it is reported as it is.
#[derive(Debug)]
pub struct Link {
    replica: SiteReplica,
    hosts: Hosts,
    start: Option<Start>,
    open: Option<Open>,
    wake: Arc<tokio::sync::Notify>,
    /// The host may have news for this site: no round has ended well on this link yet, the
    /// last one failed, or the host poked since. The next round then sends its `Pull` with
    /// its `Hello` (`SiteSession::opening`); a round with nothing new stays a `Hello` alone.
    news: Arc<std::sync::atomic::AtomicBool>,
    /// Connections opened so far.
    opened: u64,
    /// How long a round waits for the host's next message while the host moves no data
    /// (`IDLE_TIMEOUT`; shortened by tests).
    quiet: Duration,
    /// The path to the host as last recorded in the replica by this link, and when it was
    /// measured.
    path_recorded: Option<(Remembered, std::time::Instant)>,
}

/// A connection for a round.
struct Connected {
    conn: quinn::Connection,
    probes: Arc<TailProbes>,
    identity: Identity,
    /// Opened for this round (else kept from an earlier one).
    fresh: bool,
    address: SocketAddr,
}

impl Link {
    /// A link to the host's daemons at `hosts` (`host_address` in `carnet.toml`, in order),
    /// not connected yet; `wake` is notified when the host pokes.
    pub fn new(
        replica: SiteReplica,
        hosts: Vec<SocketAddr>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Link::with(replica, Hosts::Listed(hosts), wake)
    }

    /// A link that reads the host's addresses from `carnet.toml` in the replica's folder each
    /// time it connects (`carnet` with no daemon running).
    pub fn from_settings(replica: SiteReplica, wake: Arc<tokio::sync::Notify>) -> Self {
        Link::with(replica, Hosts::Settings, wake)
    }

    fn with(replica: SiteReplica, hosts: Hosts, wake: Arc<tokio::sync::Notify>) -> Self {
        Link {
            replica,
            hosts,
            start: None,
            open: None,
            wake,
            news: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            opened: 0,
            quiet: IDLE_TIMEOUT,
            path_recorded: None,
        }
    }

    /// True while the connection is open.
    pub fn is_open(&self) -> bool {
        self.address().is_some()
    }

    /// The address of the host's daemon the open connection goes to.
    pub fn address(&self) -> Option<SocketAddr> {
        self.open
            .as_ref()
            .filter(|o| o.conn.close_reason().is_none())
            .map(|o| o.address)
    }

    /// Connections this link opened to the host so far (one while it holds; a reconnection
    /// adds one).
    pub fn connections(&self) -> u64 {
        self.opened
    }

    /// UDP bytes sent and received on the open connection so far (handshake included).
    pub fn wire_bytes(&self) -> (u64, u64) {
        self.open.as_ref().map_or((0, 0), |o| {
            let s = o.conn.stats();
            (s.udp_tx.bytes, s.udp_rx.bytes)
        })
    }

    /// The open connection, or a new one to the first of the host's addresses that answers.
    async fn connection(&mut self) -> Result<Connected> {
        if let Some(o) = &self.open {
            match o.conn.close_reason() {
                None => {
                    return Ok(Connected {
                        conn: o.conn.clone(),
                        probes: o.probes.clone(),
                        identity: o.identity.clone(),
                        fresh: false,
                        address: o.address,
                    });
                }
                // Closed since the last round: the daemon there stopped, or went silent.
                Some(reason) => {
                    tracing::info!(address = %o.address, %reason, "the connection to the host closed since the last round");
                    self.start = Some(Start::After(o.address));
                }
            }
        }
        self.close().await;
        let r = self.replica.clone();
        let listed = match &self.hosts {
            Hosts::Listed(list) => Some(list.clone()),
            Hosts::Settings => None,
        };
        let (tls, hosts, path) = tokio::task::spawn_blocking(move || -> Result<_> {
            let hosts = match listed {
                Some(list) => list,
                None => settings_hosts(&r)?,
            };
            // A hint: unreadable, the connection starts as a first one would.
            let path = r.sync().link_path().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read the path to the host");
                None
            });
            Ok((enrol::site_tls(&r)?, hosts, path))
        })
        .await
        .map_err(net_err)??;
        let order = dial_order(&hosts, self.start);
        let config = tls.client_config()?;
        let remembered = path.and_then(|p| Remembered::from_record(&p, unix_millis()));
        let mut failure = Error::Invalid(
            "this site has no host address: set `host_address` in carnet.toml".into(),
        );
        for (i, &address) in order.iter().enumerate() {
            let next = order.get(i + 1);
            let wait = if next.is_some() {
                CONNECT_TIMEOUT
            } else {
                IDLE_TIMEOUT
            };
            // A configuration for each connection: its controller resumes on its first path.
            let mut config = config.clone();
            crate::transport::resuming(&mut config, remembered)?;
            match connect(address, config, wait).await {
                Ok((endpoint, conn)) => {
                    tracing::info!(%address, "connected to the host");
                    let probes = TailProbes::start(&conn);
                    tokio::spawn(listen_for_pokes(
                        conn.clone(),
                        self.wake.clone(),
                        self.news.clone(),
                    ));
                    self.open = Some(Open {
                        endpoint,
                        conn: conn.clone(),
                        probes: probes.clone(),
                        identity: tls.identity.clone(),
                        address,
                    });
                    self.start = Some(Start::At(address));
                    self.opened += 1;
                    return Ok(Connected {
                        conn,
                        probes,
                        identity: tls.identity,
                        fresh: true,
                        address,
                    });
                }
                // A security refusal: the same at every daemon of the host.
                Err(DialFailure {
                    error,
                    refused: true,
                }) => return Err(error),
                // A network failure: the next address, if any.
                Err(DialFailure { error, .. }) => {
                    self.start = Some(Start::After(address));
                    match next {
                        Some(next) => {
                            tracing::warn!(%address, %next, %error, "the host did not answer at this address: trying the next")
                        }
                        None if order.len() > 1 => {
                            tracing::warn!(%address, %error, "the host did not answer at this address, the last to try in this round")
                        }
                        None => {}
                    }
                    failure = error;
                }
            }
        }
        Err(failure)
    }

    /// One sync round on the link (connecting first if needed). The connection stays open.
    /// A round that fails on the network over a connection opened earlier is tried once more
    /// on a new one, from the host's next address: that daemon may have stopped, or restarted
    /// and forgotten the connection (a round is safe to repeat: what was applied is applied
    /// once).
    pub async fn round(&mut self) -> Result<RoundReport> {
        match self.round_once().await {
            (Err(Error::Io(e)), Some(address)) => {
                tracing::warn!(%address, error = %e, "the connection to the host broke: reconnecting, from the next address");
                self.round_once().await.0
            }
            (outcome, _) => outcome,
        }
    }

    /// One round, and the address of the connection it ran on when that was opened earlier.
    async fn round_once(&mut self) -> (Result<RoundReport>, Option<SocketAddr>) {
        let connected = match self.connection().await {
            Ok(c) => c,
            Err(e) => return (Err(e), None),
        };
        let kept = (!connected.fresh).then_some(connected.address);
        (self.round_on_connection(connected).await, kept)
    }

    async fn round_on_connection(&mut self, c: Connected) -> Result<RoundReport> {
        let before = if c.fresh { (0, 0) } else { self.wire_bytes() };
        let news = self.news.swap(false, Ordering::Relaxed);
        let underway = c.probes.during();
        let outcome = round_on(&c.conn, &self.replica, c.identity, news, self.quiet).await;
        drop(underway);
        self.record_path(&c.conn).await;
        if outcome.is_err() {
            self.news.store(true, Ordering::Relaxed);
            // The next round waits for the host's `Welcome` before it pushes.
            let r = self.replica.clone();
            let forgot = tokio::task::spawn_blocking(move || r.sync().set_host_marks(None)).await;
            if let Ok(Err(e)) = forgot {
                tracing::warn!(error = %e, "could not forget the host's marks after a failed round");
            }
        }
        match outcome {
            Ok(mut report) => {
                let after = self.wire_bytes();
                report.wire_sent = after.0 - before.0;
                report.wire_received = after.1 - before.1;
                // The handshake is one more wait.
                report.round_trips += u64::from(c.fresh);
                report.resumed = c.fresh && congestion::seen(&c.conn).resumed;
                if report.renewed {
                    // The next round connects with the certificate just installed.
                    self.close().await;
                }
                Ok(report)
            }
            Err(e) => {
                // A connection the host closed on a security refusal: said as such (and, not
                // being a network failure, neither retried nor failed over).
                let e = refused(&c.conn, c.fresh).await.unwrap_or(e);
                if matches!(e, Error::Io(_)) {
                    self.start = Some(Start::After(c.address));
                }
                self.close_with(CLOSED_ON_FAILURE, b"round failed").await;
                Err(e)
            }
        }
    }

    /// Records the path to the host as `conn` measured it, for the connections after it (a
    /// restarted daemon's too), when worth it (`Remembered::worth_recording`). An idle link
    /// measures nothing, and writes nothing.
    async fn record_path(&mut self, conn: &quinn::Connection) {
        let Some((now, at)) = congestion::seen(conn).measured else {
            return;
        };
        if !now.worth_recording(at, self.path_recorded) {
            return;
        }
        let r = self.replica.clone();
        let measured_ms = unix_millis()
            .saturating_sub(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX));
        let record = now.record(measured_ms);
        match tokio::task::spawn_blocking(move || r.sync().set_link_path(record)).await {
            Ok(Ok(())) => self.path_recorded = Some((now, at)),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the path to the host"),
            Err(e) => tracing::warn!(error = %e, "could not record the path to the host"),
        }
    }

    /// Closes the connection cleanly, if open (`CLOSED_AFTER_ROUND`: the host counts no
    /// failure for a stream the close cuts short).
    pub async fn close(&mut self) {
        self.close_with(CLOSED_AFTER_ROUND, b"bye").await;
    }

    async fn close_with(&mut self, code: u32, reason: &[u8]) {
        if let Some(o) = self.open.take() {
            o.conn.close(code.into(), reason);
            let _ = tokio::time::timeout(Duration::from_secs(1), o.endpoint.wait_idle()).await;
        }
    }
}

/// Milliseconds since the Unix epoch (0 on a clock set before it).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `host_address` in `carnet.toml` in the site's folder.
fn settings_hosts(replica: &SiteReplica) -> Result<Vec<SocketAddr>> {
    let path = replica.dir().join(crate::config::CONFIG_FILE);
    let config = crate::config::Config::load(&path)?;
    Ok(config
        .host_address
        .map(|a| a.list().to_vec())
        .unwrap_or_default())
}

/// A connection attempt that failed: `refused` when on a security refusal (a certificate
/// refused, by either side), which every daemon of the host would repeat.
struct DialFailure {
    error: Error,
    refused: bool,
}

impl DialFailure {
    fn network(error: Error) -> Self {
        DialFailure {
            error,
            refused: false,
        }
    }
}

/// A connection to the host's daemon at `address`, if its handshake completes within `wait`.
/// The error says what happened as a failed round says it (`refusal`).
async fn connect(
    address: SocketAddr,
    config: quinn::ClientConfig,
    wait: Duration,
) -> std::result::Result<(quinn::Endpoint, quinn::Connection), DialFailure> {
    let bind: SocketAddr = if address.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| DialFailure::network(net_err(e)))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| DialFailure::network(e.into()))?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(address, HOST_NAME)
        .map_err(|e| DialFailure::network(net_err(e)))?;
    let conn = tokio::time::timeout(wait, connecting)
        .await
        .map_err(|_| DialFailure::network(timed_out("the host did not answer")))?
        .map_err(|e| DialFailure {
            refused: refused_certificate(&e) || refusal(&e).is_some(),
            error: refusal(&e).unwrap_or_else(|| net_err(e)),
        })?;
    Ok((endpoint, conn))
}

/// Site: notifies `wake` for each `Poke` the host sends on the connection, until it closes,
/// and marks that the host has news.
async fn listen_for_pokes(
    conn: quinn::Connection,
    wake: Arc<tokio::sync::Notify>,
    news: Arc<std::sync::atomic::AtomicBool>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let mut decoder = FrameDecoder::new();
        if let Ok(Some(Msg::Poke { .. })) = next_message(&mut recv, &mut decoder).await {
            news.store(true, Ordering::Relaxed);
            wake.notify_one();
        }
    }
}

/// Site: one sync round with the host's daemons at `hosts` (tried in order), on a connection
/// of its own, closed after it.
pub async fn sync_round(replica: SiteReplica, hosts: Vec<SocketAddr>) -> Result<RoundReport> {
    let mut link = Link::new(replica, hosts, Arc::new(tokio::sync::Notify::new()));
    let report = link.round().await;
    link.close().await;
    report
}

/// One round on a new stream of `conn`; each body the round fetches comes on a stream of its
/// own (`fetch_body`), so bodies travel side by side and none waits behind a large one.
///
/// The round opens from what the host held of this site at the end of the last round that
/// ended well (`SiteSync::host_marks`, kept in the replica, so on a new connection and after a
/// restart as well): what the site wrote since goes behind the `Hello`
/// (`SiteSession::opening`). A round that ends well records what the host holds now; the
/// driver forgets it when a round fails. `expect_news`: the host may have news for this site.
async fn round_on(
    conn: &quinn::Connection,
    replica: &SiteReplica,
    identity: Identity,
    expect_news: bool,
    quiet: Duration,
) -> Result<RoundReport> {
    let (mut send_stream, mut recv) = conn.open_bi().await.map_err(net_err)?;
    let host_certificate = peer_certificate(conn)?.to_vec();
    let session = Arc::new(std::sync::Mutex::new(SiteSession::new(
        identity,
        host_certificate,
    )));
    let (r, s) = (replica.clone(), session.clone());
    let opening = tokio::task::spawn_blocking(move || {
        let held = r
            .sync()
            .host_marks()?
            .map(|(changes, traces)| HostHeld { changes, traces });
        s.lock()
            .map_err(|_| Error::Invalid("session lock poisoned".into()))?
            .opening(r.sync(), expect_news, held)
    })
    .await
    .map_err(net_err)??;
    send(&mut send_stream, conn, &opening).await?;
    // What the body streams receive, in the order each receives it. Bounded: the round has at
    // most `FETCH_WINDOW` fetches in flight, so this many pieces let each have one waiting
    // while the session stores another; a fetch that finds it full stops reading its stream,
    // and QUIC's flow control stops the host (a disk slower than the link grows nothing).
    let (from_bodies, mut body_news) = tokio::sync::mpsc::channel::<Result<Msg>>(PIECES_QUEUED);
    // The bodies this site sends, on a stream of their own (opened with the first).
    let mut upload: Option<Upload> = None;
    // What this process commits to the replica while the round runs (`SiteSession::news`).
    let mut commits = replica.change_watch();
    commits.mark_unchanged();
    // The Hello.
    let mut round_trips = 1;
    let mut decoder = FrameDecoder::new();
    let mut heard = std::time::Instant::now();
    let mut progress = data_moving(conn);
    let mut report = loop {
        // The host must say something within `quiet`, or data must move (an image takes
        // minutes to go up or come down a slow line, with no whole message meanwhile).
        let event = tokio::select! {
            msg = read_message(&mut recv, &mut decoder, None) => Some(msg?
                .ok_or_else(|| Error::Invalid("the host closed the session early".into()))?),
            Some(piece) = body_news.recv() => Some(piece?),
            Ok(()) = commits.changed() => None,
            () = tokio::time::sleep_until((heard + quiet).into()) => {
                let now = data_moving(conn);
                if now == progress {
                    return Err(timed_out("the host went silent"));
                }
                (heard, progress) = (std::time::Instant::now(), now);
                continue;
            }
        };
        let answered = event.is_some();
        if answered {
            (heard, progress) = (std::time::Instant::now(), data_moving(conn));
        }
        let (r, s) = (replica.clone(), session.clone());
        let (out, done, report) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut s = s
                .lock()
                .map_err(|_| Error::Invalid("session lock poisoned".into()))?;
            let out = match event {
                Some(msg) => s.handle(r.sync(), msg)?,
                None => s.news(r.sync())?,
            };
            Ok((out, s.is_done(), s.report()))
        })
        .await
        .map_err(net_err)??;
        if answered && !out.is_empty() {
            round_trips += u64::from(!done);
        }
        let mut rest = Vec::new();
        let mut puts = Vec::new();
        for m in out {
            match m {
                Msg::GetBody { .. } => {
                    tokio::spawn(fetch_body(conn.clone(), m, from_bodies.clone()));
                }
                Msg::PutBodies(_) => puts.push(m),
                _ => rest.push(m),
            }
        }
        if !puts.is_empty() {
            upload
                .get_or_insert_with(|| Upload::start(conn.clone(), from_bodies.clone()))
                .send(puts);
        }
        send(&mut send_stream, conn, &rest).await?;
        if done {
            break report;
        }
    };
    let _ = send_stream.finish();
    report.round_trips = round_trips;
    let held = session
        .lock()
        .map_err(|_| Error::Invalid("session lock poisoned".into()))?
        .host_held();
    let r = replica.clone();
    tokio::task::spawn_blocking(move || {
        r.sync().set_host_marks(held.map(|h| (h.changes, h.traces)))
    })
    .await
    .map_err(net_err)??;
    Ok(report)
}

/// A count that grows while data moves between the two applications on the connection: the
/// stream frames the peer sends, the flow-control credit (`MAX_DATA`, `MAX_STREAM_DATA`) its
/// QUIC stack grants as its application reads (about every eighth of a window: 1 MiB of a
/// stream's, 2 MiB of the connection's, `transport`), and the stream frames this end sends
/// (within the windows the peer's application keeps open by reading: a peer that stops
/// reading stops them within one window per open stream and `transport::CONNECTION_WINDOW` in
/// all, and their retransmissions). Keep-alives and acknowledgements leave it as it is; the
/// host's pokes (a stream each) count, and so would a peer that sends frames again and again
/// to keep a wait going (it holds only its own session).
fn data_moving(conn: &quinn::Connection) -> u64 {
    let stats = conn.stats();
    let (received, sent) = (stats.frame_rx, stats.frame_tx);
    received.stream + received.max_data + received.max_stream_data + sent.stream
}

/// Reads the next message of `recv` (`None` at the end of the stream), with its `Hold` on the
/// connection's decode budget, waiting as long as data moves on `conn` (`data_moving`), the
/// host answers the stream's messages before it, or it still owes an answer (`answering`):
/// fails once `quiet` passes with none of them.
async fn read_while_moving(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    quiet: Duration,
    answering: &Answering,
) -> Result<Option<(Msg, frame::Hold)>> {
    loop {
        let progress = (data_moving(conn), answering.progress());
        let read = read_with(recv, decoder, None, FrameDecoder::next_held);
        if let Ok(read) = tokio::time::timeout(quiet, read).await {
            return read;
        }
        if (data_moving(conn), answering.progress()) == progress && !answering.owing() {
            return Err(timed_out("the peer went silent"));
        }
    }
}

/// Counts the batches of a session stream taken and answered (applied, made durable, their
/// reply sent): the wait for the site's next message runs meanwhile, but runs out only while the
/// host owes the site nothing.
#[derive(Debug, Default)]
struct Answering {
    taken: AtomicU64,
    answered: AtomicU64,
}

impl Answering {
    /// A batch taken: answered when the `Answer` is dropped, once its reply is sent.
    fn take(self: &Arc<Self>) -> Answer {
        self.taken.fetch_add(1, Ordering::Relaxed);
        Answer(self.clone())
    }

    fn owing(&self) -> bool {
        self.taken.load(Ordering::Relaxed) != self.answered.load(Ordering::Relaxed)
    }

    fn progress(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

/// A batch taken and not yet answered (`Answering::take`).
#[derive(Debug)]
struct Answer(Arc<Answering>);

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Priority of the streams that carry bodies, below the session's (0): a push written while an
/// image goes up leaves before the image's bytes queued ahead of it.
const BODY_PRIORITY: i32 = -1;

/// The bodies a site's round sends, as `PutBodies`, on a stream of their own at
/// `BODY_PRIORITY`; the host's `BodyStored` for them go back to the session.
struct Upload {
    puts: tokio::sync::mpsc::UnboundedSender<Vec<Msg>>,
}

impl Upload {
    fn start(conn: quinn::Connection, to_session: tokio::sync::mpsc::Sender<Result<Msg>>) -> Self {
        let (puts, mut queued) = tokio::sync::mpsc::unbounded_channel::<Vec<Msg>>();
        let replies = to_session.clone();
        tokio::spawn(async move {
            let carried = async {
                let (mut send_stream, mut recv) = conn.open_bi().await.map_err(net_err)?;
                send_stream.set_priority(BODY_PRIORITY).map_err(net_err)?;
                let writing = async {
                    while let Some(msgs) = queued.recv().await {
                        send(&mut send_stream, &conn, &msgs).await?;
                    }
                    let _ = send_stream.finish();
                    Ok::<_, Error>(())
                };
                let reading = async {
                    let mut decoder = FrameDecoder::new();
                    while let Some(msg) = read_message(&mut recv, &mut decoder, None).await? {
                        if replies.send(Ok(msg)).await.is_err() {
                            break;
                        }
                    }
                    Ok::<_, Error>(())
                };
                tokio::try_join!(writing, reading).map(|_| ())
            };
            if let Err(e) = carried.await {
                let _ = to_session.send(Err(e)).await;
            }
        });
        Upload { puts }
    }

    /// Queues `puts` for the stream. A stream that failed has sent the round its error
    /// already (through the session's channel): the round ends with it there.
    fn send(&self, puts: Vec<Msg>) {
        let _ = self.puts.send(puts);
    }
}

/// Body pieces a site's round keeps waiting for its session (see `round_on`).
const PIECES_QUEUED: usize = crate::session::FETCH_WINDOW;

/// Sends one `GetBody` on a new stream and hands on what comes back (`Body` pieces to the end
/// of the body, or `NoBody`), then any error; reads no further while `to_session` is full.
async fn fetch_body(
    conn: quinn::Connection,
    get: Msg,
    to_session: tokio::sync::mpsc::Sender<Result<Msg>>,
) {
    let fetched = async {
        let (mut send_stream, mut recv) = conn.open_bi().await.map_err(net_err)?;
        send(&mut send_stream, &conn, &[get]).await?;
        let _ = send_stream.finish();
        let mut decoder = FrameDecoder::new();
        while let Some(msg) = next_message(&mut recv, &mut decoder).await? {
            let last = match &msg {
                Msg::Body {
                    offset,
                    total,
                    bytes,
                    ..
                } => offset + bytes.len() as u64 >= *total,
                _ => true,
            };
            if to_session.send(Ok(msg)).await.is_err() || last {
                return Ok(());
            }
        }
        Err(Error::Invalid("a body stream ended before the body".into()))
    };
    if let Err(e) = fetched.await {
        let _ = to_session.send(Err(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{TestDisk, doctor, host_and_site, new_doc};
    use carnet_store::model::{AccessMode, Actor};
    use carnet_store::replica::{Replica, Role};

    /// A host serving on 127.0.0.1 (its dossier `ins`), with its revocation list and the
    /// signal that its store changed.
    struct Served {
        tmp: tempfile::TempDir,
        host: Arc<Replica>,
        ins: carnet_store::ids::Ins,
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        revoked: Arc<Revoked>,
        changed: Arc<tokio::sync::Notify>,
        /// What the host's daemon shows its operator of each site.
        fleet: Arc<Fleet>,
    }

    fn serving_host() -> Served {
        serving_host_waiting(IDLE_TIMEOUT)
    }

    /// `serving_host`, its streams waiting `quiet` for a site's next message (`Live::quiet`).
    fn serving_host_waiting(quiet: Duration) -> Served {
        let (tmp, host, site_draft, ins) = host_and_site();
        serving(tmp, host, site_draft, ins, quiet)
    }

    /// `serving_host_waiting`, the host's database (and trace journal) on `disk`.
    fn serving_host_on(disk: TestDisk, quiet: Duration) -> Served {
        let tmp = tempfile::tempdir().expect("tmp");
        let options = carnet_store::replica::InitOptions {
            role: Role::Host,
            name: "host".into(),
            site_id: None,
            key: carnet_store::replica::KeySource::File,
            host_key: None,
            lease_hours: None,
        };
        let host = Replica::init_with_backend(
            &tmp.path().join("host"),
            disk,
            TestDisk::default(),
            options,
            crate::testkit::clock(),
        )
        .expect("host");
        let (host, site_draft, ins) = crate::testkit::host_and_site_with(tmp.path(), host);
        serving(tmp, host, site_draft, ins, quiet)
    }

    fn serving(
        tmp: tempfile::TempDir,
        host: Replica,
        site_draft: Replica,
        ins: carnet_store::ids::Ins,
        quiet: Duration,
    ) -> Served {
        drop(site_draft);
        let host = Arc::new(host);
        enrol::init_host(&host).expect("pki");
        let revoked = Arc::new(enrol::revoked(&host).expect("revoked"));
        let (endpoint, addr, changed, fleet) = serve_on_loopback(&host, &revoked, quiet);
        Served {
            tmp,
            host,
            ins,
            endpoint,
            addr,
            revoked,
            changed,
            fleet,
        }
    }

    /// A host daemon's endpoint on 127.0.0.1 serving `host` (one more for the same replica is
    /// one more daemon of the host, as over a shared database), with the signal that its
    /// store changed and its view of the sites.
    fn serve_on_loopback(
        host: &Arc<Replica>,
        revoked: &Arc<Revoked>,
        quiet: Duration,
    ) -> (
        quinn::Endpoint,
        SocketAddr,
        Arc<tokio::sync::Notify>,
        Arc<Fleet>,
    ) {
        let (ca, host_id) = enrol::host_identity(host).expect("identity");
        let config =
            crate::transport::server_config(&ca, &host_id, revoked.clone()).expect("server");
        let server = HostServer::bind(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let endpoint = server.endpoint().clone();
        let addr = endpoint.local_addr().expect("addr");
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut live = Live::new(changed.clone(), revoked.clone());
        Arc::get_mut(&mut live).expect("a new registry").quiet = quiet;
        let fleet = live.fleet();
        tokio::spawn(serve(
            server,
            HostReplica::new(host.clone()).expect("host"),
            live,
        ));
        (endpoint, addr, changed, fleet)
    }

    /// An enrolment bundle `served` issues, for a clinic.
    fn clinic_bundle(served: &Served) -> enrol::Bundle {
        enrol::enrol(
            &served.host,
            "Clinique",
            "750000001",
            &served.addr.to_string(),
        )
        .expect("enrol")
    }

    /// A site created from the enrolment bundle `served` issues it, the doctor bound there.
    fn enrolled_site(served: &Served) -> (enrol::Bundle, Arc<Replica>) {
        let bundle = clinic_bundle(served);
        crate::testkit::as_host(&served.host)
            .authority()
            .bind_professional(SiteId(bundle.site_id), &doctor(), true)
            .expect("bind");
        let site = crate::testkit::site_from_bundle(&served.tmp.path().join("enrolled"), &bundle);
        (bundle, Arc::new(site))
    }

    /// A site with a valid certificate that opens streams and announces a frame of
    /// `FRAME_MAX` on each, to make the host hold them all, is refused once they hold
    /// `DECODE_BUDGET` together.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_site_that_starts_large_frames_on_many_streams_is_refused_past_the_budget() {
        let served = serving_host();
        let (bundle, _site) = enrolled_site(&served);
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        client.set_default_client_config(bundle.client_config().expect("config"));
        let conn = dial_host(&client, served.addr).await;
        let max = crate::frame::FRAME_MAX;
        let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..DECODE_BUDGET / max + 2 {
            let (mut tx, mut rx) = conn.open_bi().await.expect("stream");
            // All of a frame but its last kilobyte: never whole, never decoded.
            let mut started = (max as u32).to_le_bytes().to_vec();
            started.resize(4 + max - 1024, 0);
            tokio::spawn(async move {
                let _ = tx.write_all(&started).await;
                // The stream stays open (a stream that ends inside a frame is refused for
                // that).
                std::future::pending::<()>().await;
                drop(tx);
            });
            let answers = answers.clone();
            tokio::spawn(async move {
                let _ = answers.send(rx.read_to_end(1 << 20).await);
            });
        }
        let reply = tokio::time::timeout(Duration::from_secs(20), answered.recv())
            .await
            .expect("the host refused a stream in time")
            .expect("an answer")
            .expect("the host's reply");
        let mut d = FrameDecoder::new();
        d.push(&reply);
        match d.next_message::<Msg>() {
            Ok(Some(Msg::Error(why))) => assert!(why.contains("not yet whole"), "{why}"),
            other => panic!("{other:?}"),
        }
        conn.close(0u32.into(), b"done");
        served.endpoint.close(0u32.into(), b"done");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_site_syncs_with_the_host_over_quic() {
        let served = serving_host();
        let (host, ins, addr) = (&served.host, &served.ins, served.addr);
        let (endpoint, revoked) = (&served.endpoint, &served.revoked);

        // The site, created from its enrolment bundle.
        let (bundle, site) = enrolled_site(&served);
        let round = || {
            tokio::time::timeout(
                Duration::from_secs(20),
                sync_round(SiteReplica::new(site.clone()).expect("site"), vec![addr]),
            )
        };
        let first = round().await.expect("in time").expect("round");
        assert!(first.pulled > 0, "{first:?}");
        let actor = Actor::Professional(doctor());
        let id = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                ins,
                new_doc("written at the site", b"body".to_vec()),
            )
            .expect("write");
        round().await.expect("in time").expect("round");
        assert_eq!(
            &host
                .read_document(&actor, &id, AccessMode::Normal, None)
                .expect("read")
                .body[..],
            b"body"
        );

        // A connected peer sending garbage ends only its own session, with an Error frame.
        for garbage in [
            b"\xde\xad\xbe\xef random bytes".to_vec(),
            ((crate::frame::FRAME_MAX as u32) + 1)
                .to_le_bytes()
                .to_vec(),
            vec![2, 0, 0, 0, 99, 0],
        ] {
            let mut client =
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
            client.set_default_client_config(bundle.client_config().expect("config"));
            let conn = dial_host(&client, addr).await;
            let (mut tx, mut rx) = conn.open_bi().await.expect("stream");
            tx.write_all(&garbage).await.expect("write");
            tx.finish().expect("finish");
            let reply = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(1 << 20))
                .await
                .expect("in time")
                .expect("reply");
            let mut d = FrameDecoder::new();
            d.push(&reply);
            assert!(
                matches!(d.next_message::<Msg>(), Ok(Some(Msg::Error(_)))),
                "garbage answered by an Error frame"
            );
            conn.close(0u32.into(), b"");
        }
        // …and the host goes on serving.
        round()
            .await
            .expect("in time")
            .expect("round after garbage");

        // Revoked: the next round is refused.
        enrol::revoke(host, bundle.site_id).expect("revoke");
        revoked.add(crate::transport::fingerprint(&bundle.identity.cert_der));
        let refused = round().await.expect("in time");
        assert!(refused.is_err(), "a revoked site synced");
        endpoint.close(0u32.into(), b"done");
    }

    /// A round after one that ended well sends what the site wrote since behind its `Hello`:
    /// a document written at the site is at the host in one round trip on an open connection,
    /// and in two on a new one (the handshake), a daemon just started included. When the host
    /// no longer holds what it held then (restored from a backup), the round fails, and the
    /// next waits for the `Welcome`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_round_that_ended_well_what_the_site_wrote_goes_with_the_hello() {
        let served = serving_host();
        let (site, mut link) = site_dialing(&served, vec![served.addr]);
        round_within(&mut link, Duration::from_secs(20))
            .await
            .expect("first round");
        let write = |title: &str| {
            site.put_document(
                &Actor::Professional(doctor()),
                AccessMode::Normal,
                None,
                &served.ins,
                new_doc(title, b"ordonnance".to_vec()),
            )
            .expect("write")
        };
        let id = write("behind the Hello");
        let report = round_within(&mut link, Duration::from_secs(20))
            .await
            .expect("round");
        assert_eq!(report.round_trips, 1, "{report:?}");
        assert!(served.host.has_body(&id).expect("body"));
        assert_eq!(link.connections(), 1);
        // A new connection, from a new link (a daemon just started): the handshake, then the
        // pushes behind the Hello.
        link.close().await;
        let mut link = Link::new(
            SiteReplica::new(site.clone()).expect("site"),
            vec![served.addr],
            Arc::new(tokio::sync::Notify::new()),
        );
        let id = write("on a new connection");
        let report = round_within(&mut link, Duration::from_secs(20))
            .await
            .expect("round");
        assert_eq!(report.round_trips, 2, "handshake, pushes: {report:?}");
        assert!(served.host.has_body(&id).expect("body"));
        // Marks the host no longer holds: the round fails and says so; the next one waits.
        link.close().await;
        let sync = crate::testkit::site_sync(&site);
        let (changes, traces) = sync.host_marks().expect("marks").expect("kept");
        sync.set_host_marks(Some((changes - 1, traces)))
            .expect("older marks");
        let first = write("behind marks the host does not hold");
        let failed = round_within(&mut link, Duration::from_secs(20))
            .await
            .expect_err("marks the host does not hold");
        assert!(
            failed.to_string().contains("the host holds changes up to"),
            "{failed}"
        );
        assert_eq!(sync.host_marks().expect("marks"), None);
        let second = write("after the Welcome");
        let report = round_within(&mut link, Duration::from_secs(20))
            .await
            .expect("round");
        assert_eq!(
            report.round_trips, 3,
            "handshake, Welcome, pushes: {report:?}"
        );
        for id in [first, second] {
            assert!(served.host.has_body(&id).expect("body"));
        }
        served.endpoint.close(0u32.into(), b"done");
    }

    /// `size` incompressible bytes (as a scan is), so that the frames carry all of them.
    fn noise(size: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// A body crossing a slow line for longer than either end waits for the other's next
    /// message (here 1.5 MiB at 160 KiB/s, against waits of 2 s: long enough that a busy
    /// machine's pauses between messages stay inside them), written at `at` (the site: it
    /// goes up; the host: it comes down): no whole message comes either way on the session
    /// stream meanwhile, yet the round goes on, for the body's stream moves; the body arrives
    /// whole.
    async fn a_body_longer_than_the_wait_for_a_message(at: Role) {
        let served = serving_host_waiting(Duration::from_secs(2));
        let relay = Relay::paced(Some(served.addr), Some(160 << 10)).await;
        let (site, mut link) = site_dialing(&served, vec![relay.addr]);
        link.quiet = Duration::from_secs(2);
        round_within(&mut link, Duration::from_secs(20))
            .await
            .expect("first round");
        let scan = noise(3 << 19);
        let written_at = match at {
            Role::Site => &site,
            Role::Host => &served.host,
        };
        let id = written_at
            .put_document(
                &Actor::Professional(doctor()),
                AccessMode::Normal,
                None,
                &served.ins,
                new_doc("scan", scan.clone()),
            )
            .expect("write");
        let started = std::time::Instant::now();
        round_within(&mut link, Duration::from_secs(60))
            .await
            .expect("the round carrying the scan");
        assert!(
            started.elapsed() > 4 * link.quiet,
            "the scan crossed too fast to test anything"
        );
        assert!(served.host.has_body(&id).expect("body"));
        assert!(site.has_body(&id).expect("body"));
        link.close().await;
        served.endpoint.close(0u32.into(), b"done");
    }

    /// The host reads a session stream ahead of the messages it applies, and the wait for the
    /// site's next message runs meanwhile: it does not run out while the host applies the
    /// pushes and makes them durable, however long its disk takes. The site sends nothing more
    /// until they are acknowledged (a body too large to travel inline goes up after them, then
    /// the `Pull`), and nothing else moves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_applied_for_longer_than_the_wait_for_a_message_keep_their_session() {
        let quiet = Duration::from_millis(300);
        let disk = TestDisk::default();
        let served = serving_host_on(disk.clone(), quiet);
        let (site, mut link) = site_dialing(&served, vec![served.addr]);
        round_within(&mut link, Duration::from_secs(20))
            .await
            .expect("first round");
        let written: Vec<_> = [b"synthetic".to_vec(), noise(100 << 10)]
            .into_iter()
            .map(|body| {
                site.put_document(
                    &Actor::Professional(doctor()),
                    AccessMode::Normal,
                    None,
                    &served.ins,
                    new_doc("note", body),
                )
                .expect("write")
            })
            .collect();
        disk.delay_ms.store(40, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let report = round_within(&mut link, Duration::from_secs(120))
            .await
            .expect("the round whose pushes the host applies slowly");
        let took = started.elapsed();
        disk.delay_ms.store(0, Ordering::SeqCst);
        assert!(
            took > 3 * quiet,
            "the host applied the pushes too fast to test anything ({took:?})"
        );
        assert!(report.pushed > 0, "{report:?}");
        for id in written {
            assert!(served.host.has_body(&id).expect("body"), "{id} at the host");
        }
        link.close().await;
        served.endpoint.close(0u32.into(), b"done");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_longer_than_the_wait_for_a_message_goes_on_while_the_host_reads_it() {
        a_body_longer_than_the_wait_for_a_message(Role::Site).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_longer_than_the_wait_for_a_message_goes_on_while_the_site_reads_it() {
        a_body_longer_than_the_wait_for_a_message(Role::Host).await;
    }

    /// Longer than the interval of the site's keep-alives, which the other end's QUIC stack
    /// acknowledges whatever its application does: a wait counting them would never end.
    fn longer_than_keep_alives() -> Duration {
        crate::transport::KEEP_ALIVE + Duration::from_secs(2)
    }

    /// A host whose application stopped (a stuck task, a disk that does not answer) while its
    /// QUIC stack still acknowledges the site's keep-alives: the round waits for the host's
    /// next message, sees no data move on the connection meanwhile (its own `Hello` may count
    /// for one wait), and fails; QUIC's own idle timeout would never end it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_on_a_host_that_stopped_reading_fails_when_nothing_moves() {
        let served = serving_host();
        let (ca, host_id) = enrol::host_identity(&served.host).expect("identity");
        let config =
            crate::transport::server_config(&ca, &host_id, served.revoked.clone()).expect("server");
        let stalled =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = stalled.local_addr().expect("addr");
        // Takes the connection and its session stream, then reads and writes nothing.
        let held = tokio::spawn({
            let stalled = stalled.clone();
            async move {
                let conn = stalled
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("handshake");
                let stream = conn.accept_bi().await.expect("stream");
                (conn, stream)
            }
        });
        let (_, mut link) = site_dialing(&served, vec![addr]);
        link.quiet = longer_than_keep_alives();
        let started = std::time::Instant::now();
        let outcome = round_within(&mut link, Duration::from_secs(60)).await;
        let waited = started.elapsed();
        assert!(
            matches!(&outcome, Err(Error::Io(e)) if e.to_string().contains("went silent")),
            "{outcome:?}"
        );
        assert!(
            waited >= link.quiet && waited < 4 * link.quiet,
            "failed after {waited:?}"
        );
        drop(held.await.expect("the stalled host held the session"));
        stalled.close(0u32.into(), b"done");
        served.endpoint.close(0u32.into(), b"done");
    }

    /// A site that opened a session and stopped (half a frame sent, nothing more) while its
    /// QUIC stack keeps the connection with keep-alives: the host waits for the rest, sees no
    /// data move, and ends the session with an `Error` saying so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_whose_site_stopped_sending_is_ended_when_nothing_moves() {
        let quiet = longer_than_keep_alives();
        let served = serving_host_waiting(quiet);
        let (bundle, _) = enrolled_site(&served);
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        client.set_default_client_config(bundle.client_config().expect("config"));
        let conn = dial_host(&client, served.addr).await;
        let (mut tx, mut rx) = conn.open_bi().await.expect("stream");
        // The first byte of a frame's length.
        tx.write_all(&[9]).await.expect("write");
        let started = std::time::Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(60), rx.read_to_end(1 << 16))
            .await
            .expect("the host ended the session in time")
            .expect("the host's reply");
        let waited = started.elapsed();
        let mut decoder = FrameDecoder::new();
        decoder.push(&reply);
        match decoder.next_message::<Msg>() {
            Ok(Some(Msg::Error(why))) => assert!(why.contains("went silent"), "{why}"),
            other => panic!("not an Error: {other:?}"),
        }
        assert!(
            waited >= quiet && waited < 4 * quiet,
            "ended after {waited:?}"
        );
        assert!(
            conn.close_reason().is_none(),
            "the connection itself was closed"
        );
        conn.close(0u32.into(), b"");
        served.endpoint.close(0u32.into(), b"done");
    }

    /// A site that closes its connection after a round that went well (`CLOSED_AFTER_ROUND`)
    /// while a stream of it waits for its next message (a `Bye` the close overtook, a fetch
    /// stream left open) is not a failure for the operator; a connection closed after a round
    /// that failed (`CLOSED_ON_FAILURE`) is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_site_closing_after_its_round_is_no_error_for_the_operator() {
        let served = serving_host();
        let (bundle, _) = enrolled_site(&served);
        let site = bundle.site_id;
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        client.set_default_client_config(bundle.client_config().expect("config"));
        let seen = |f: &Fleet| f.seen().get(&site).cloned().unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let wait_for = |what: &'static str, check: Box<dyn Fn(&crate::fleet::Seen) -> bool>| {
            let fleet = served.fleet.clone();
            async move {
                while !check(&seen(&fleet)) {
                    assert!(std::time::Instant::now() < deadline, "{what}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let mut errors = Vec::new();
        for code in [CLOSED_AFTER_ROUND, CLOSED_ON_FAILURE] {
            let conn = dial_host(&client, served.addr).await;
            let (mut tx, _rx) = conn.open_bi().await.expect("stream");
            // The first byte of a frame's length: the host's stream waits for the rest.
            tx.write_all(&[9]).await.expect("write");
            wait_for("never admitted", Box::new(|s| s.connections == 1)).await;
            let streams = seen(&served.fleet).streams;
            conn.close(code.into(), b"bye");
            // The stream's end is recorded after its error, if any.
            wait_for(
                "the stream never ended",
                Box::new(move |s| s.connections == 0 && s.streams > streams),
            )
            .await;
            errors.push(seen(&served.fleet).errors.get("network").copied());
        }
        assert_eq!(errors, [None, Some(1)]);
        served.endpoint.close(0u32.into(), b"done");
    }

    /// A site whose session does not take the pieces of a body (a slow disk, a stuck task)
    /// stops reading the body's stream, and QUIC's flow control stops the host: what it
    /// received stays within the stream's window and the pieces in hand (one in the channel,
    /// one waiting to enter it, one being read), with the datagrams' headers; once the pieces
    /// are taken, the rest comes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_nobody_drains_stops_the_host_then_resumes() {
        let served = serving_host();
        let (host, ins, addr) = (&served.host, &served.ins, served.addr);
        let (_, site) = enrolled_site(&served);
        let size = 24 << 20;
        let large = noise(size);
        let doc = host
            .put_document(
                &Actor::Professional(doctor()),
                AccessMode::Normal,
                None,
                ins,
                new_doc("large, at the host", large.clone()),
            )
            .expect("host writes");
        let mut link = Link::new(
            SiteReplica::new(site).expect("site"),
            vec![addr],
            Arc::new(tokio::sync::Notify::new()),
        );
        let conn = tokio::time::timeout(Duration::from_secs(20), link.connection())
            .await
            .expect("in time")
            .expect("connected")
            .conn;
        // Room for one piece, and nobody takes it.
        let (tx, mut pieces) = tokio::sync::mpsc::channel(1);
        tokio::spawn(fetch_body(
            conn.clone(),
            Msg::GetBody { doc, offset: 0 },
            tx,
        ));
        // Until the transfer has started, then stopped.
        let received = || conn.stats().udp_rx.bytes;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last = (received(), tokio::time::Instant::now());
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the transfer never settled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = received();
            if now != last.0 {
                last = (now, tokio::time::Instant::now());
            } else if now > 1 << 20 && last.1.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        let held =
            (crate::transport::STREAM_WINDOW as usize + 3 * crate::session::CHUNK_MAX) * 105 / 100;
        assert!(
            last.0 < held as u64 && held < size / 2,
            "{} of {size} bytes received with nobody taking them",
            last.0
        );
        // Taken: every piece arrives, in order.
        let mut got = Vec::with_capacity(size);
        while got.len() < size {
            let piece = tokio::time::timeout(Duration::from_secs(20), pieces.recv())
                .await
                .expect("in time")
                .expect("a piece")
                .expect("no error");
            let Msg::Body { offset, bytes, .. } = piece else {
                panic!("not a piece: {}", piece.kind());
            };
            assert_eq!(offset, got.len() as u64);
            got.extend_from_slice(&bytes);
        }
        assert!(got == large, "the body arrived whole");
        link.close().await;
        served.endpoint.close(0u32.into(), b"done");
    }

    /// A site (a valid certificate) opening connection after connection holds at most
    /// `CONNECTIONS_PER_SITE` at the host: each one more closes its oldest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_site_holds_a_bounded_number_of_connections() {
        let served = serving_host();
        let bundle = clinic_bundle(&served);
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        client.set_default_client_config(
            crate::transport::client_config(
                &bundle.ca_cert_der,
                &bundle.identity,
                Some(&[bundle.host_tls_pin]),
                &[],
            )
            .expect("config"),
        );
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS_PER_SITE + 2 {
            let conn = dial_host(&client, served.addr).await;
            // Admitted (among the live sites) once a stream of it is served, here a lone Bye.
            let (mut tx, mut rx) = conn.open_bi().await.expect("stream");
            send(&mut tx, &conn, &[Msg::Bye]).await.expect("send");
            tx.finish().expect("finish");
            let _ = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(1 << 20))
                .await
                .expect("in time");
            conns.push(conn);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while conns.iter().filter(|c| c.close_reason().is_some()).count() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "more than {CONNECTIONS_PER_SITE} connections held"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open: Vec<bool> = conns.iter().map(|c| c.close_reason().is_none()).collect();
        let mut expected = vec![false, false];
        expected.extend(vec![true; CONNECTIONS_PER_SITE]);
        assert_eq!(open, expected, "the oldest ones go");
        served.endpoint.close(0u32.into(), b"done");
    }

    /// A live link left quiet for longer than the idle timeout stays open on the site's
    /// keep-alives alone (the host sends none): the next round runs on the same connection.
    /// The wait is the behaviour under test (idleness), so it is a fixed one, bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_live_link_outlives_the_idle_timeout_on_the_sites_keep_alives() {
        let served = serving_host();
        let (_, site) = enrolled_site(&served);
        let mut link = Link::new(
            SiteReplica::new(site).expect("site"),
            vec![served.addr],
            Arc::new(tokio::sync::Notify::new()),
        );
        tokio::time::timeout(Duration::from_secs(20), link.round())
            .await
            .expect("in time")
            .expect("round");
        tokio::time::sleep(crate::transport::IDLE_TIMEOUT + Duration::from_secs(2)).await;
        assert!(link.is_open(), "the quiet connection was closed");
        let quiet = tokio::time::timeout(Duration::from_secs(20), link.round())
            .await
            .expect("in time")
            .expect("quiet round");
        assert_eq!(link.connections(), 1, "{quiet:?}");
        link.close().await;
        served.endpoint.close(0u32.into(), b"done");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_link_is_poked_syncs_quietly_in_one_round_trip_and_closes_on_revocation() {
        let served = serving_host();
        let (host, ins, addr) = (&served.host, &served.ins, served.addr);
        let (endpoint, revoked, changed) = (&served.endpoint, &served.revoked, &served.changed);
        let (bundle, site) = enrolled_site(&served);
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut link = Link::new(
            SiteReplica::new(site.clone()).expect("site"),
            vec![addr],
            wake.clone(),
        );
        let first = tokio::time::timeout(Duration::from_secs(20), link.round())
            .await
            .expect("in time")
            .expect("round");
        // A site just enrolled: the handshake, then its pushes and its pull behind its Hello
        // (the host holds nothing of it yet).
        assert!(first.pulled > 0 && first.round_trips == 2, "{first:?}");
        assert!(link.is_open(), "the connection stays open after the round");

        // Nothing new: one round trip on the open connection, under 1 KiB both ways.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let quiet = tokio::time::timeout(Duration::from_secs(20), link.round())
            .await
            .expect("in time")
            .expect("quiet");
        assert_eq!(quiet.round_trips, 1, "{quiet:?}");
        assert!(quiet.wire_sent + quiet.wire_received < 1024, "{quiet:?}");

        // A change at the host for this site's scope: the site is poked, with no round asked.
        // (A body too large to come inline: fetched on a stream of its own.)
        let actor = Actor::Professional(doctor());
        let large: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
        let id = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                ins,
                new_doc("at the host", large.clone()),
            )
            .expect("host writes");
        changed.notify_one();
        tokio::time::timeout(Duration::from_secs(20), wake.notified())
            .await
            .expect("poked");
        let report = tokio::time::timeout(Duration::from_secs(20), link.round())
            .await
            .expect("in time")
            .expect("round");
        assert!(report.pulled >= 2 && report.bodies == 1, "{report:?}");
        // Poked: the pull goes with the Hello (one round trip), then the fetch (another).
        assert_eq!(report.round_trips, 2, "a fetch after the pull: {report:?}");
        let read = site
            .read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read offline");
        assert_eq!(&read.body[..], &large[..]);

        // Revoked: the open connection is closed at the next pass.
        enrol::revoke(host, bundle.site_id).expect("revoke");
        revoked.add(crate::transport::fingerprint(&bundle.identity.cert_der));
        changed.notify_one();
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            while link.is_open() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "a revoked site kept its live connection");
        assert!(
            tokio::time::timeout(Duration::from_secs(20), link.round())
                .await
                .expect("in time")
                .is_err()
        );
        endpoint.close(0u32.into(), b"done");
    }

    #[test]
    fn a_connection_tries_the_addresses_from_the_one_that_answered_last() {
        let [a, b, c]: [SocketAddr; 3] =
            ["127.0.0.1:1", "127.0.0.1:2", "[::1]:3"].map(|t| t.parse().expect("addr"));
        let hosts = [a, b, c];
        assert_eq!(dial_order(&hosts, None), [a, b, c]);
        assert_eq!(dial_order(&hosts, Some(Start::At(b))), [b, c, a]);
        assert_eq!(dial_order(&hosts, Some(Start::After(b))), [c, a, b]);
        assert_eq!(dial_order(&hosts, Some(Start::After(c))), [a, b, c]);
        // An address no longer listed: from the first.
        let gone = "127.0.0.1:9".parse().expect("addr");
        assert_eq!(dial_order(&hosts, Some(Start::At(gone))), [a, b, c]);
        assert_eq!(dial_order(&hosts, Some(Start::After(gone))), [a, b, c]);
        // One address: always that one.
        assert_eq!(dial_order(&[a], Some(Start::After(a))), [a]);
        assert!(dial_order(&[], Some(Start::At(a))).is_empty());
    }

    /// The client's connection id in a QUIC Initial packet at the start of `datagram`: the
    /// same in every Initial packet of one connection attempt (the destination id changes once
    /// the server answers), another for the next attempt.
    fn initial_source_id(datagram: &[u8]) -> Option<Vec<u8>> {
        let (&first, rest) = datagram.split_first()?;
        // A long header (0x80), the fixed bit (0x40), the type Initial (0 in 0x30).
        if first & 0xf0 != 0xc0 {
            return None;
        }
        // The version (4 bytes), then each id after its length.
        let destination = usize::from(*rest.get(4)?);
        let at = 5 + destination;
        let len = usize::from(*rest.get(at)?);
        rest.get(at + 1..at + 1 + len).map(<[u8]>::to_vec)
    }

    /// A UDP socket on 127.0.0.1 in front of a host's endpoint (`to`), or of nothing: it
    /// relays both ways until silenced, then answers nothing, as a killed daemon's address;
    /// with nothing behind it, it is a dead address from the start. It counts the connections
    /// attempted through it (`initial_source_id`).
    struct Relay {
        addr: SocketAddr,
        silent: Arc<AtomicBool>,
        attempts: Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Relay {
        async fn start(to: Option<SocketAddr>) -> Relay {
            Relay::paced(to, None).await
        }

        /// `start`, passing at most `rate` bytes a second each way (a slow line).
        async fn paced(to: Option<SocketAddr>, rate: Option<u64>) -> Relay {
            let bind = || tokio::net::UdpSocket::bind("127.0.0.1:0");
            let front = Arc::new(bind().await.expect("bind"));
            let back = Arc::new(bind().await.expect("bind"));
            let addr = front.local_addr().expect("addr");
            let silent = Arc::new(AtomicBool::new(to.is_none()));
            let attempts = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
            let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
            let up = {
                let (front, back, silent, attempts, client) = (
                    front.clone(),
                    back.clone(),
                    silent.clone(),
                    attempts.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, from)) = front.recv_from(&mut buf).await {
                        if let Some(id) = initial_source_id(&buf[..n]) {
                            attempts.lock().expect("lock").insert(id);
                        }
                        if silent.load(Ordering::SeqCst) {
                            continue;
                        }
                        *client.lock().expect("lock") = Some(from);
                        if let Some(to) = to {
                            let _ = back.send_to(&buf[..n], to).await;
                        }
                        if let Some(rate) = rate {
                            let line = n as f64 / rate as f64;
                            tokio::time::sleep(Duration::from_secs_f64(line)).await;
                        }
                    }
                })
            };
            let down = {
                let silent = silent.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, _)) = back.recv_from(&mut buf).await {
                        let to = *client.lock().expect("lock");
                        if let (false, Some(to)) = (silent.load(Ordering::SeqCst), to) {
                            let _ = front.send_to(&buf[..n], to).await;
                        }
                        if let Some(rate) = rate {
                            let line = n as f64 / rate as f64;
                            tokio::time::sleep(Duration::from_secs_f64(line)).await;
                        }
                    }
                })
            };
            Relay {
                addr,
                silent,
                attempts,
                tasks: vec![up, down],
            }
        }

        /// From now on nothing goes through, either way.
        fn silence(&self) {
            self.silent.store(true, Ordering::SeqCst);
        }

        /// Connections attempted through this address so far.
        fn attempts(&self) -> usize {
            self.attempts.lock().expect("lock").len()
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }

    /// A site enrolled at `served` (the doctor bound there), whose link dials `hosts`.
    fn site_dialing(served: &Served, hosts: Vec<SocketAddr>) -> (Arc<Replica>, Link) {
        let (_, site) = enrolled_site(served);
        let link = Link::new(
            SiteReplica::new(site.clone()).expect("site"),
            hosts,
            Arc::new(tokio::sync::Notify::new()),
        );
        (site, link)
    }

    /// A connection of `client` to the host daemon at `addr`, its handshake bounded in time.
    async fn dial_host(client: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
        tokio::time::timeout(
            Duration::from_secs(20),
            client.connect(addr, HOST_NAME).expect("connect"),
        )
        .await
        .expect("in time")
        .expect("handshake")
    }

    /// A round, bounded in time.
    async fn round_within(link: &mut Link, within: Duration) -> Result<RoundReport> {
        tokio::time::timeout(within, link.round())
            .await
            .expect("the round ended in time")
    }

    /// A document the host writes into the dossier of the sites' doctor.
    fn host_writes(served: &Served, title: &str) -> carnet_store::ids::DocId {
        served
            .host
            .put_document(
                &Actor::Professional(doctor()),
                AccessMode::Normal,
                None,
                &served.ins,
                new_doc(title, b"at the host".to_vec()),
            )
            .expect("host writes")
    }

    /// The first address listed has nothing answering behind it: the round passes over it
    /// within `CONNECT_TIMEOUT` and completes on the second; the next connection goes straight
    /// to the address that answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_first_address_is_passed_over_and_the_next_connection_starts_at_the_live_one() {
        let served = serving_host();
        let dead = Relay::start(None).await;
        let (_site, mut link) = site_dialing(&served, vec![dead.addr, served.addr]);
        let first = round_within(&mut link, Duration::from_secs(30))
            .await
            .expect("the round completes on the second address");
        assert!(first.pulled > 0, "{first:?}");
        assert_eq!(link.address(), Some(served.addr));
        assert_eq!(dead.attempts(), 1, "the dead address was tried first");
        // A new connection (the daemon's link closed, say by a renewal): the live address
        // first, the dead one not tried again.
        link.close().await;
        host_writes(&served, "after the first round");
        let second = round_within(&mut link, Duration::from_secs(30))
            .await
            .expect("round");
        assert!(second.pulled > 0, "{second:?}");
        assert_eq!(link.address(), Some(served.addr));
        assert_eq!(link.connections(), 2);
        assert_eq!(dead.attempts(), 1, "the dead address was tried again");
        served.endpoint.close(0u32.into(), b"done");
    }

    /// Two daemons of one host: two endpoints over the same host replica, as two daemons over
    /// one database; the first behind a `Relay` (to stop or kill it), and a site whose link
    /// lists both, first then second, that synced once through the first.
    struct TwoDaemons {
        served: Served,
        second: quinn::Endpoint,
        second_addr: SocketAddr,
        first: Relay,
        site: Arc<Replica>,
        link: Link,
    }

    async fn two_daemons() -> TwoDaemons {
        let served = serving_host();
        let (second, second_addr, _, _) =
            serve_on_loopback(&served.host, &served.revoked, IDLE_TIMEOUT);
        let first = Relay::start(Some(served.addr)).await;
        let (site, mut link) = site_dialing(&served, vec![first.addr, second_addr]);
        round_within(&mut link, Duration::from_secs(30))
            .await
            .expect("round through the first daemon");
        assert_eq!(link.address(), Some(first.addr));
        TwoDaemons {
            served,
            second,
            second_addr,
            first,
            site,
            link,
        }
    }

    impl TwoDaemons {
        /// The first daemon gone, the host writes a document and the site runs one round (one
        /// call, within `within`): it completes on the second daemon, which it tried first,
        /// and brings the document.
        async fn next_round_goes_to_the_second(mut self, within: Duration) {
            let id = host_writes(&self.served, "while the first daemon is gone");
            let report = round_within(&mut self.link, within)
                .await
                .expect("the round completes on the second daemon");
            assert!(report.pulled > 0, "{report:?}");
            assert_eq!(self.link.address(), Some(self.second_addr));
            assert_eq!(self.link.connections(), 2);
            assert_eq!(
                self.first.attempts(),
                1,
                "the first daemon was tried again first"
            );
            let read = self.site.read_document(
                &Actor::Professional(doctor()),
                &id,
                AccessMode::Normal,
                None,
            );
            assert!(read.is_ok(), "pulled through the second daemon");
            self.second.close(0u32.into(), b"done");
            self.served.endpoint.close(0u32.into(), b"done");
        }
    }

    /// The daemon a site syncs with stops (its connections closed): the site's next round
    /// completes on the second, without trying the stopped one first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_the_daemon_a_site_syncs_with_stops_its_next_round_goes_to_the_next() {
        let two = two_daemons().await;
        two.served.endpoint.close(0u32.into(), b"host stopping");
        tokio::time::timeout(Duration::from_secs(20), async {
            while two.link.is_open() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the site saw the connection close");
        two.next_round_goes_to_the_second(Duration::from_secs(30))
            .await;
    }

    /// The daemon a site is connected to is killed (it answers nothing more, and says nothing):
    /// the next round fails on the open connection and is tried again at once on a new one,
    /// which starts with the next address, and completes there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_broken_by_a_killed_daemon_is_retried_on_the_next_address() {
        let two = two_daemons().await;
        two.first.silence();
        // The round on the dead connection fails (QUIC's idle timeout, 10 s), and the retry
        // completes on the second daemon, within the same call.
        two.next_round_goes_to_the_second(Duration::from_secs(60))
            .await;
    }

    /// A security refusal is said as it is, never failed over: the site refuses the
    /// certificate of a host of another CA listed first, and does not try the next address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_certificate_is_not_failed_over() {
        let served = serving_host();
        let foreign = serving_host();
        let next = Relay::start(None).await;
        let (_site, mut link) = site_dialing(&served, vec![foreign.addr, next.addr]);
        let refused = round_within(&mut link, Duration::from_secs(30))
            .await
            .expect_err("a host of another CA");
        assert!(refused.to_string().contains("national CA"), "{refused}");
        assert!(!link.is_open());
        assert_eq!(next.attempts(), 0, "the next address was tried");
        served.endpoint.close(0u32.into(), b"done");
        foreign.endpoint.close(0u32.into(), b"done");
    }
}
