//! A site's round with the host as message exchanges over a simulated link.
//!
//! As on QUIC (`carnet_syncd::net`): a round is one stream carrying the session, plus one
//! stream per body fetch (`GetBody`) and one for the bodies the site sends (`PutBodies`),
//! each served by a host session of its own. What the site writes during its round reaches the
//! session as the driver's `SiteSession::news` does (`Flight::news`); a round after one that
//! ended well pushes behind its `Hello` as the driver does (`HostHeld`, kept in the site's
//! replica, `SiteSync::host_marks`, through crashes and power cuts, and forgotten when a
//! round fails). A stream delivers in order; streams interleave in any order (the simulator picks), and every message
//! arrives after a delay. A message lost on the way breaks the connection: the round fails
//! there, as the real driver's read times out, and the site retries later. Every message goes
//! through the frame codec, as on the wire.
//!
//! The host side mirrors `net::host_stream`: consecutive pushes and trace batches already
//! arrived are handled together, inside `Replica::deferring_syncs`, and the replies leave once
//! what they acknowledge is durable (`wait_durable`).

use std::collections::VecDeque;

use carnet_store::replica::Replica;
use carnet_syncd::frame::{self, FrameDecoder};
use carnet_syncd::session::{HostHeld, HostSession, Msg, RoundReport, SiteSession};

/// A message in flight: when it arrives, and what it is.
type Packet = (u64, Msg);

/// One stream of a round.
#[derive(Debug)]
struct Stream {
    host: HostSession,
    /// Site to host.
    up: VecDeque<Packet>,
    /// Host to site.
    down: VecDeque<Packet>,
    /// Everything the site sent on it, for a duplicated delivery (`Flight::replay`).
    sent: Vec<Msg>,
    /// The host ended it (an error, or the end of a body).
    closed: bool,
}

impl Stream {
    fn new(host: HostSession) -> Stream {
        Stream {
            host,
            up: VecDeque::new(),
            down: VecDeque::new(),
            sent: Vec::new(),
            closed: false,
        }
    }
}

/// What a delivery step did.
#[derive(Debug)]
pub enum Step {
    /// Nothing was due.
    Idle,
    /// A message went through; the round goes on.
    Moved,
    /// The round ended: its report.
    Done(RoundReport),
    /// The round failed (the site's session refused something or the host ended it).
    Failed(String),
    /// The host's storage failed: the host daemon stops.
    HostFailed(String),
}

/// Which side of the link a delivery reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A message to the host.
    Host,
    /// A message to the site.
    Site,
}

/// A round in flight between one site and the host.
#[derive(Debug)]
pub struct Flight {
    /// The site's index in the world.
    pub site: usize,
    session: SiteSession,
    /// The site's certificate (DER): each host session is bound to it.
    certificate: Vec<u8>,
    streams: Vec<Stream>,
    /// The stream carrying the site's `PutBodies`, once it sent one.
    uploads: Option<usize>,
    /// When the round began.
    pub started: u64,
}

/// A message as the peer decodes it from the wire.
pub fn wire(m: &Msg) -> Result<Msg, String> {
    let bytes = frame::encode(m).map_err(|e| format!("encode {}: {e}", m.kind()))?;
    let mut d = FrameDecoder::new();
    d.push(&bytes);
    d.next_message()
        .map_err(|e| format!("decode {}: {e}", m.kind()))?
        .ok_or_else(|| format!("decode {}: no message", m.kind()))
}

impl Flight {
    /// Starts a round of `site`: its `Hello` (and its `Pull`, when it expects news and has
    /// nothing to push; its pushes, when `held` says what the host held at the end of its
    /// last round: `SiteSession::opening`) leaves at `now`, arriving after `delay`. The inner
    /// error: the round failed as it opened (the site's storage failed).
    pub fn start(
        site_index: usize,
        site: &Replica,
        host_certificate: Vec<u8>,
        now: u64,
        delay: u64,
        expect_news: bool,
        held: Option<HostHeld>,
    ) -> Result<Result<Flight, String>, String> {
        let tls = carnet_syncd::enrol::site_tls(site).map_err(|e| e.to_string())?;
        let mut session = SiteSession::new(tls.identity.clone(), host_certificate);
        // The site's storage may fail as it reads what it opens with (a fault armed on its
        // disk): the round fails, as the driver's would.
        let opening = match session.opening(crate::node::as_site(site).sync(), expect_news, held) {
            Ok(opening) => opening,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut main = Stream::new(HostSession::new(
            site.config().site_id,
            tls.identity.cert_der.clone(),
        ));
        for m in opening {
            main.up.push_back((now + delay, wire(&m)?));
            main.sent.push(m);
        }
        Ok(Ok(Flight {
            site: site_index,
            session,
            certificate: tls.identity.cert_der,
            streams: vec![main],
            uploads: None,
            started: now,
        }))
    }

    /// The deliveries due at `now`: (stream, side), in a fixed order.
    pub fn due(&self, now: u64) -> Vec<(usize, Side)> {
        let mut out = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            if s.up.front().is_some_and(|(at, _)| *at <= now) {
                out.push((i, Side::Host));
            }
            if s.down.front().is_some_and(|(at, _)| *at <= now) {
                out.push((i, Side::Site));
            }
        }
        out
    }

    /// When the next message arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<u64> {
        self.streams
            .iter()
            .flat_map(|s| s.up.front().into_iter().chain(s.down.front()))
            .map(|(at, _)| *at)
            .min()
    }

    /// Delivers the next message of `stream` to `side`; replies leave at `now` and arrive
    /// after `delay()` each. `host` and `site` are the replicas.
    pub fn deliver(
        &mut self,
        stream: usize,
        side: Side,
        host: &Replica,
        site: &Replica,
        now: u64,
        delay: &mut dyn FnMut() -> u64,
    ) -> Result<Step, String> {
        match side {
            Side::Host => self.deliver_to_host(stream, host, now, delay),
            Side::Site => self.deliver_to_site(stream, site, now, delay),
        }
    }

    fn deliver_to_host(
        &mut self,
        stream: usize,
        host: &Replica,
        now: u64,
        delay: &mut dyn FnMut() -> u64,
    ) -> Result<Step, String> {
        let s = &mut self.streams[stream];
        let Some((_, first)) = s.up.pop_front() else {
            return Ok(Step::Idle);
        };
        if s.closed {
            return Ok(Step::Moved);
        }
        // Pushes and trace batches already arrived are applied together (`net`).
        let mut msgs = vec![first];
        if is_push(&msgs[0]) {
            while s.up.front().is_some_and(|(at, m)| *at <= now && is_push(m)) {
                if let Some((_, m)) = s.up.pop_front() {
                    msgs.push(m);
                }
            }
        }
        let handled =
            host.deferring_syncs(|| s.host.handle_all(crate::node::as_host(host).sync(), msgs));
        // The replies leave once what they acknowledge is on disk.
        if let Err(e) = host.wait_durable(host.durable_point()) {
            return Ok(Step::HostFailed(e.to_string()));
        }
        let replies = match handled {
            Ok(replies) => replies,
            Err(e) => {
                s.closed = true;
                vec![Msg::Error(e.to_string())]
            }
        };
        for r in replies {
            let r = wire(&r)?;
            s.down.push_back((now + delay(), r));
        }
        Ok(Step::Moved)
    }

    fn deliver_to_site(
        &mut self,
        stream: usize,
        site: &Replica,
        now: u64,
        delay: &mut dyn FnMut() -> u64,
    ) -> Result<Step, String> {
        let Some((_, msg)) = self.streams[stream].down.pop_front() else {
            return Ok(Step::Idle);
        };
        let out = match self.session.handle(crate::node::as_site(site).sync(), msg) {
            Ok(out) => out,
            Err(e) => return Ok(Step::Failed(e.to_string())),
        };
        self.send(out, site, now, delay)?;
        if self.session.is_done() {
            return Ok(Step::Done(self.session.report()));
        }
        Ok(Step::Moved)
    }

    /// The round sent its pushes behind its `Hello` (`SiteSession::pushed_behind_hello`).
    pub fn pushed_behind_hello(&self) -> bool {
        self.session.pushed_behind_hello()
    }

    /// Once the round is over: what the host holds of the site (`SiteSession::host_held`).
    pub fn host_held(&self) -> Option<HostHeld> {
        self.session.host_held()
    }

    /// The site wrote during its round (`SiteSession::news`): what the session sends for it
    /// leaves at `now`. Answers how many messages, or why the round failed.
    pub fn news(
        &mut self,
        site: &Replica,
        now: u64,
        delay: &mut dyn FnMut() -> u64,
    ) -> Result<Result<usize, String>, String> {
        match self.session.news(crate::node::as_site(site).sync()) {
            Ok(out) => {
                let sent = out.len();
                self.send(out, site, now, delay)?;
                Ok(Ok(sent))
            }
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Sends the site's messages, each on its stream, leaving at `now`.
    fn send(
        &mut self,
        out: Vec<Msg>,
        site: &Replica,
        now: u64,
        delay: &mut dyn FnMut() -> u64,
    ) -> Result<(), String> {
        for m in out {
            let at = now + delay();
            let m = wire(&m)?;
            let stream = match m {
                // A fetch goes on a stream of its own, the bodies sent on one of theirs.
                Msg::GetBody { .. } => None,
                Msg::PutBodies(_) => self.uploads,
                _ => Some(0),
            };
            let stream = match stream {
                Some(i) => i,
                None => {
                    self.streams.push(Stream::new(HostSession::new(
                        site.config().site_id,
                        self.certificate.clone(),
                    )));
                    let i = self.streams.len() - 1;
                    if matches!(m, Msg::PutBodies(_)) {
                        self.uploads = Some(i);
                    }
                    i
                }
            };
            self.streams[stream].sent.push(m.clone());
            self.streams[stream].up.push_back((at, m));
        }
        Ok(())
    }

    /// The host receives the session stream once more, whole, as a stale copy of it would
    /// arrive: on a session of its own, whose replies go nowhere. Answers the host's error,
    /// if it refused the copy (which is fine: it must only not change anything twice).
    pub fn replay(&self, host: &Replica, site_id: carnet_store::ids::SiteId) -> Option<String> {
        let mut stale = HostSession::new(site_id, self.certificate.clone());
        let msgs = self.streams[0].sent.clone();
        let handled =
            host.deferring_syncs(|| stale.handle_all(crate::node::as_host(host).sync(), msgs));
        if let Err(e) = host.wait_durable(host.durable_point()) {
            return Some(format!("host storage: {e}"));
        }
        handled.err().map(|e| e.to_string())
    }

    /// Delivers what the site sent after its round ended (its `Bye`) to the host.
    pub fn finish(&mut self, host: &Replica) {
        let s = &mut self.streams[0];
        let rest: Vec<Msg> = s.up.drain(..).map(|(_, m)| m).collect();
        if !s.closed && !rest.is_empty() {
            let _ =
                host.deferring_syncs(|| s.host.handle_all(crate::node::as_host(host).sync(), rest));
            let _ = host.wait_durable(host.durable_point());
        }
    }
}

/// A message the site sends in its push window.
fn is_push(m: &Msg) -> bool {
    matches!(m, Msg::Push { .. } | Msg::Traces { .. })
}
