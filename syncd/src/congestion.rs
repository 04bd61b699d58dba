//! The congestion window: quinn's BBR, never above what the path has been seen to deliver.
//!
//! quinn's BBR estimates the path's bandwidth from the time between two acknowledgements (or
//! two sends), one packet at a time, and keeps the largest estimate of the last ten round
//! trips: two acknowledgements arriving close together make a rate the path never had. On
//! the link bench (2 Mbit/s, 300 ms round trip, a queue of one bandwidth-delay product) a
//! site's push went out at twice the line rate, its window ending at 3.4 bandwidth-delay
//! products: the bottleneck queue was full for the whole transfer, a third of the datagrams
//! were dropped there and sent again (3.8 MiB on the wire for 2 MB of documents), and
//! whatever else the clinic sent on that line waited behind a full queue (benches/LOG.md,
//! 2026-12-06).
//!
//! [`Bounded`] keeps BBR for everything (start-up, recovery, probing) and bounds its window
//! by the path as measured: the delivery rate of each acknowledged packet over the interval
//! it took (the larger of its sending and acknowledging intervals, as BBR's specification
//! samples it, so acknowledgements bunched together cannot inflate it), the largest of the
//! last ten round trips (counted by delivery, so a pause or an outage counts as none), times
//! the smallest round trip of the last 10 s (a path that changed has its own), twice; plus the
//! largest burst of acknowledgements beyond that rate in the same ten round trips (a receiver
//! that acknowledges every few packets, or late, must not stall the sender).
//!
//! **The first flight.** quinn's BBR sends its first window (240 kB) at once, and lowers it to
//! about 100 kB on the first acknowledgements (their rate samples span the handshake's silence,
//! so the rate looks low), below what is still in flight: the sender then stays silent while
//! the rest of the flight drains. On the link bench (2 Mbit/s, 300 ms, a queue of one
//! bandwidth-delay product, which the flight overflows) the line stood idle 0.2–0.3 s once the
//! queue had emptied, before the flight's losses were found and sent again (benches/LOG.md,
//! 2026-12-07). [`FirstFlight`]: for the round trip in which the first flight's
//! acknowledgements return, each byte acknowledged lets one new byte go, less what is found
//! lost (RFC 6937's packet conservation): the line carries data all along at the rate the path
//! delivers, and the queue stays no fuller than the flight left it. Then, the path measured by
//! that round trip, the window is at least its bandwidth-delay product until BBR's bounded
//! window is as large, for two round trips at most: quinn's BBR, recovering from the flight's
//! losses, held it at under half the product for a round trip (the pull, 32 kB for 75).
//!
//! **Resuming at a remembered path** (careful resume, draft-ietf-tsvwg-careful-resume). quinn's
//! BBR starts with a window of 240 kB: on that link it sent three bandwidth-delay products in
//! its first round trip, the queue dropped a hundred datagrams, and the line then stood idle
//! while they were found lost (0.2–0.4 s of a 10 s push). Each end records the path as its
//! connections measure it while sending ([`measured`]: the largest delivery rate of a
//! transfer, the connection's smallest round trip, when) — a site in its replica, the host in
//! memory for each site — and starts the next connection, within [`REMEMBERED_FOR`] of that
//! measurement, from it: once the connection's smallest round trip so far (from the handshake
//! on) is between half and ten times the one remembered (else it is another path, and BBR
//! starts as it would), the window is the remembered bandwidth-delay product (at most
//! `RESUMED_WINDOW_MAX`), which quinn paces over the round trip — from the first flight after
//! the path is known (a site knows it before connecting, the host once the handshake names the
//! site, before the site's first request arrives); once a rate is measured, half
//! as much again (`VALIDATED_GAIN`), of the product measured if smaller after the first
//! `RESUMED_ROUNDS_UNMEASURED` round trips of data. The resumption ends when the bounded window
//! below is as large, when the connection has nothing more to send (the transfer it started
//! is over: a later one starts as any), or when more than one byte in sixteen of what it sent
//! in about two round trips is lost, or a congestion mark comes: then its window retreats to
//! half the jump's until the path is measured (a slower path than remembered, or a flow that
//! joined at the bottleneck, loses a window's excess at once; a radio link's random loss is a
//! few percent, and does not end it).
//!
//! Invariants: outside a resumption the window is never larger than BBR's own (the bound can
//! only make the connection gentler on the path), except in the first flight's round trip,
//! where it may be what was in flight before the last acknowledgements, less what was lost
//! since (no more goes out than the path delivered), and the two after, where it may be the
//! bandwidth-delay product measured (no queue); it is never smaller than four datagrams; it
//! is BBR's (or the first flight's) until the path is measured — a rate sampled while the
//! connection had more to send than it sent, once it delivered more than `START_BYTES` (a
//! handshake's few packets, even sent again on a lossy link, say nothing of the path); a
//! resumption only starts a connection (one whose path is measured never starts one, nor one
//! whose start saw persistent congestion or a congestion mark, nor the controller of a path
//! the connection migrated to; and one ends with its first transfer), and from its fourth
//! round trip of data it is never above the bound; the state kept is bounded
//! (`SENT_RECORDS_MAX` sends, one value per round trip of the window).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use carnet_store::replica::LinkPath;
use quinn::congestion::{Controller, ControllerFactory};

/// Sends remembered for rate samples; older ones are forgotten (their acknowledgement gives
/// no sample).
const SENT_RECORDS_MAX: usize = 16_384;

/// Round trips over which the largest rate and acknowledgement burst are kept (BBR's).
const WINDOW_ROUND_TRIPS: u64 = 10;

/// Builds [`Bounded`] controllers around quinn's BBR, for one connection (its transport
/// configuration is made for it: `transport`).
#[derive(Debug, Default)]
pub struct BoundedBbr {
    bbr: Arc<quinn::congestion::BbrConfig>,
    /// The path as an earlier connection measured it, if known (now or later).
    remembered: Arc<OnceLock<Remembered>>,
    /// The connection's first controller is built: a later one is for a path it migrated to
    /// (another address), which starts as any.
    built: AtomicBool,
}

impl BoundedBbr {
    /// Controllers that resume at the path `remembered` holds once it holds it (set before the
    /// connection's first acknowledgement, or before its path is measured).
    pub fn resuming(remembered: Arc<OnceLock<Remembered>>) -> Self {
        BoundedBbr {
            bbr: Arc::default(),
            remembered,
            built: AtomicBool::new(false),
        }
    }
}

impl ControllerFactory for BoundedBbr {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let first = !self.built.swap(true, Ordering::AcqRel);
        Box::new(Bounded {
            inner: self.bbr.clone().build(now, current_mtu),
            path: PathModel::new(now),
            mtu: u64::from(current_mtu),
            resume: if first {
                Resume::Waiting(self.remembered.clone())
            } else {
                Resume::Done
            },
            resumed: false,
            first_flight: FirstFlight::Before,
        })
    }
}

/// The path as a connection measured it: its delivery rate and smallest round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// Bytes per second.
    pub rate: u64,
    pub min_rtt: Duration,
}

/// How long an end starts its connections at the path a connection measured: a clinic's
/// daemon restarted for an update, a link that dropped, reconnect within it; a mobile unit
/// that moved since meets a path that its first round trip may not tell apart.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(3600);

/// A path measured the same again is recorded again once its record is this much older than
/// the measurement (`REMEMBERED_FOR` counts from the measurement recorded).
pub const PATH_REFRESHED: Duration = Duration::from_secs(600);

impl Remembered {
    /// The path `record` holds, if measured within `REMEMBERED_FOR` before `now_ms` (ms since
    /// the Unix epoch; a record from the future, a clock set back, is not used) and its round
    /// trip is at most `REMEMBERED_RTT_MAX`.
    pub fn from_record(record: &LinkPath, now_ms: u64) -> Option<Remembered> {
        let age = now_ms.checked_sub(record.measured_at)?;
        let path = Remembered {
            rate: record.rate,
            min_rtt: Duration::from_micros(record.min_rtt_micros),
        };
        (Duration::from_millis(age) <= REMEMBERED_FOR && path.usable()).then_some(path)
    }

    /// A path a resumption may start from: a rate, and a round trip of at most
    /// `REMEMBERED_RTT_MAX`.
    pub fn usable(&self) -> bool {
        self.rate > 0 && !self.min_rtt.is_zero() && self.min_rtt <= REMEMBERED_RTT_MAX
    }

    /// The record of this path, measured at `now_ms`.
    pub fn record(&self, now_ms: u64) -> LinkPath {
        LinkPath {
            rate: self.rate,
            min_rtt_micros: u64::try_from(self.min_rtt.as_micros()).unwrap_or(u64::MAX),
            measured_at: now_ms,
        }
    }

    /// This path is not `before` within an eighth, either way.
    fn differs_from(&self, before: &Remembered) -> bool {
        let apart = |a: u128, b: u128| a.abs_diff(b) * 8 > b;
        apart(self.rate.into(), before.rate.into())
            || apart(self.min_rtt.as_nanos(), before.min_rtt.as_nanos())
    }

    /// This path, measured at `at`, is worth recording over `before`, the last record and when
    /// its measurement was made (if any): it is a later measurement, and the path differs by
    /// more than an eighth or the record is `PATH_REFRESHED` older. A link that measures the
    /// same path all day writes it once every ten minutes.
    pub fn worth_recording(&self, at: Instant, before: Option<(Remembered, Instant)>) -> bool {
        before.is_none_or(|(before, recorded)| {
            at > recorded
                && (self.differs_from(&before) || at.duration_since(recorded) >= PATH_REFRESHED)
        })
    }
}

/// What a connection's controller saw of its path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Its delivery rate (the largest of its last ten round trips that carried data) and the
    /// smallest round trip of the connection, and when it last measured a rate; `None` before
    /// its path is measured (`PathModel::past_start`: a handshake and trickles say nothing of
    /// the path).
    pub measured: Option<(Remembered, Instant)>,
    /// It resumed at a remembered path (it may have left it since).
    pub resumed: bool,
}

/// What `conn`'s controller saw of its path (a copy of the controller's state: once per round,
/// not per packet).
pub fn seen(conn: &quinn::Connection) -> Seen {
    let Ok(state) = conn.congestion_state().into_any().downcast::<Bounded>() else {
        return Seen::default();
    };
    let (path, rate) = (&state.path, state.path.rate.get());
    let measured = match (path.past_start(), path.lowest_rtt, path.measured_at) {
        (true, Some(min_rtt), Some(at)) if rate > 0 && !min_rtt.is_zero() => {
            Some((Remembered { rate, min_rtt }, at))
        }
        _ => None,
    };
    Seen {
        measured,
        resumed: state.resumed,
    }
}

/// The largest window a resumption starts with: a remembered rate is what acknowledgements
/// said, which a peer controls (bounded by what this end sent, not by the round trip).
const RESUMED_WINDOW_MAX: u64 = 4 << 20;

/// The longest remembered round trip a resumption starts from (a geostationary satellite hop
/// and a slow cell behind it are under 1.5 s).
const REMEMBERED_RTT_MAX: Duration = Duration::from_secs(3);

/// Bytes a connection delivers before it is past its start: its handshake's flights, and
/// their retransmissions on a lossy link, are a few kilobytes (the host learns the site's path
/// only once the handshake is over, and may have sampled a rate from it by then).
const START_BYTES: u64 = 32 << 10;

/// The share of a resumption's bytes it may lose and go on, over about two round trips: a
/// radio link loses a few percent at random, a path slower than remembered (or a flow that
/// joined at the bottleneck) loses a window's excess at once.
const LOST_MAX: Fraction = Fraction(1, 16);

/// A resumption's window once its first round trip has measured the path: the remembered
/// bandwidth-delay product and half of it again, which quinn's pacing (a quarter above the
/// window per round trip) keeps as a half-product backlog at the bottleneck, for the line to
/// carry while lost datagrams are found and sent again.
const VALIDATED_GAIN: Fraction = Fraction(3, 2);

/// Round trips of data after which a resumption's window follows the product measured, if
/// smaller than the remembered one (the first ones' rate samples are taken as it ramps up).
const RESUMED_ROUNDS_UNMEASURED: u64 = 3;

/// `self.0 / self.1`.
#[derive(Debug, Clone, Copy)]
struct Fraction(u64, u64);

impl Fraction {
    fn of(self, bytes: u64) -> u64 {
        bytes / self.1 * self.0
    }
}

/// A resumption's progress (module doc).
#[derive(Debug, Clone)]
enum Resume {
    /// For the path remembered, and for the first acknowledgement once it is known.
    Waiting(Arc<OnceLock<Remembered>>),
    /// From delivery round `round` on: the window is `window` until a rate is measured, then
    /// at least `floor`; losses count in `acked` and `lost` from zero every two windows.
    Jumped {
        window: u64,
        round: u64,
        acked: u64,
        lost: u64,
    },
    /// Left on losses: the window at most `window` until the path bounds it.
    Retreated {
        window: u64,
    },
    Done,
}

impl Resume {
    /// The window a resumption at `remembered` jumps to, if the connection's smallest round
    /// trip so far, `round_trip`, says it is the same path (careful resume's check): the
    /// remembered bandwidth-delay product, at most `RESUMED_WINDOW_MAX`.
    fn jump(remembered: &Remembered, round_trip: Duration) -> Option<u64> {
        let r = remembered;
        let same = round_trip >= r.min_rtt / 2 && round_trip <= r.min_rtt.saturating_mul(10);
        same.then(|| bytes_at(r.rate, r.min_rtt).min(RESUMED_WINDOW_MAX))
    }

    /// After an acknowledgement of `bytes` (`round_trip`: the connection's smallest so far,
    /// this one's included; `app_limited`: the connection had nothing more to send).
    fn on_ack(
        &mut self,
        bytes: u64,
        round_trip: Duration,
        app_limited: bool,
        path: &PathModel,
        bounded: u64,
    ) {
        match self {
            // A connection whose path is measured is past its start.
            Resume::Waiting(_) if path.past_start() => *self = Resume::Done,
            Resume::Waiting(remembered) => {
                let Some(r) = remembered.get() else {
                    return;
                };
                *self = match Resume::jump(r, round_trip) {
                    Some(window) => Resume::Jumped {
                        window,
                        round: path.round,
                        acked: 0,
                        lost: 0,
                    },
                    None => Resume::Done,
                };
            }
            Resume::Jumped {
                window,
                round,
                acked,
                lost,
            } => {
                *acked = acked.saturating_add(bytes);
                // Losses count over the last two windows acknowledged or so.
                if *acked >= window.saturating_mul(2) {
                    (*acked, *lost) = (0, 0);
                }
                // The transfer it started is over (or none came after the handshake): a
                // later one starts from BBR and the path as measured by then.
                let over = app_limited && path.round > round.saturating_add(1);
                if over || (path.past_start() && bounded >= self.floor(path)) {
                    *self = Resume::Done;
                }
            }
            Resume::Retreated { .. } if path.bound().is_some() => *self = Resume::Done,
            Resume::Retreated { .. } | Resume::Done => {}
        }
    }

    /// After `bytes` were lost (`persistent`: all a while's packets; none: a congestion mark).
    fn on_loss(&mut self, bytes: u64, persistent: bool) {
        // Congestion before the jump: the path is not the one remembered (careful resume's
        // reconnaissance). A few handshake packets lost at random on a radio link are not it.
        if matches!(self, Resume::Waiting(_)) && (persistent || bytes == 0) {
            *self = Resume::Done;
        }
        if let Resume::Jumped {
            window,
            acked,
            lost,
            ..
        } = self
        {
            *lost = lost.saturating_add(bytes);
            if persistent || bytes == 0 || *lost > LOST_MAX.of(acked.saturating_add(*window)) {
                // Careful resume's safe retreat: half the window it jumped to.
                *self = Resume::Retreated {
                    window: *window / 2,
                };
            }
        }
    }

    /// While jumped and the path measured (`PathModel::past_start`): `VALIDATED_GAIN` of the
    /// window jumped to, or, after `RESUMED_ROUNDS_UNMEASURED` round trips of data, of the
    /// product measured if smaller.
    fn floor(&self, path: &PathModel) -> u64 {
        let Resume::Jumped { window, round, .. } = *self else {
            return 0;
        };
        let settled = path.round > round.saturating_add(RESUMED_ROUNDS_UNMEASURED);
        let product = match path.bdp() {
            Some(measured) if settled => window.min(measured),
            _ => window,
        };
        VALIDATED_GAIN.of(product)
    }

    /// The window, given the bounded one.
    fn window(&self, path: &PathModel, bounded: u64) -> u64 {
        match *self {
            // The path became known since the last acknowledgement (the host's, once the
            // handshake names the site): the first flight after it goes at the jump already.
            Resume::Waiting(ref remembered) if !path.past_start() => remembered
                .get()
                .zip(path.lowest_rtt)
                .and_then(|(r, round_trip)| Resume::jump(r, round_trip))
                .unwrap_or(bounded),
            Resume::Jumped { .. } if path.past_start() => bounded.max(self.floor(path)),
            Resume::Jumped { window, .. } => window,
            Resume::Retreated { window } => bounded.min(window),
            _ => bounded,
        }
    }
}

/// BBR with its window bounded by the path's measured delivery rate (module doc).
pub(crate) struct Bounded {
    inner: Box<dyn Controller>,
    path: PathModel,
    mtu: u64,
    resume: Resume,
    /// It jumped to a remembered path.
    resumed: bool,
    first_flight: FirstFlight,
}

impl Controller for Bounded {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.path.on_sent(now);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.path.on_ack(now, sent, bytes, app_limited);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        let bounded = self.bounded();
        let round_trip = now.saturating_duration_since(sent);
        self.resume.on_ack(
            bytes,
            self.path
                .lowest_rtt
                .map_or(round_trip, |l| l.min(round_trip)),
            app_limited,
            &self.path,
            bounded,
        );
        self.resumed |= matches!(self.resume, Resume::Jumped { .. });
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        let acked = self.path.acked_since_end;
        let bounded = self.bounded();
        self.first_flight.on_end_acks(
            &self.path,
            in_flight,
            acked,
            app_limited,
            self.resumed,
            bounded,
        );
        self.path.on_end_acks(now);
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.resume.on_loss(lost_bytes, is_persistent_congestion);
        self.first_flight
            .on_loss(lost_bytes, is_persistent_congestion);
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.resume
            .window(&self.path, self.bounded())
            .max(self.first_flight.window(&self.path))
            .max(4 * self.mtu)
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Bounded {
            inner: self.inner.clone_box(),
            path: self.path.clone(),
            mtu: self.mtu,
            resume: self.resume.clone(),
            resumed: self.resumed,
            first_flight: self.first_flight,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

impl Bounded {
    /// BBR's window, bounded by the path (module doc).
    fn bounded(&self) -> u64 {
        let bbr = self.inner.window();
        match self.path.bound() {
            Some(bound) => bbr.min(bound.max(4 * self.mtu)),
            None => bbr,
        }
    }
}

/// The round trip in which a new connection's first flight drains (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstFlight {
    /// No acknowledgement has yet found the connection with more to send than it sent.
    Before,
    /// The first flight's acknowledgements are coming back, in delivery round `round`: the
    /// window is at least `window`, what was in flight before the last acknowledgements, less
    /// what was found lost since.
    Draining {
        round: u64,
        window: u64,
    },
    /// The flight is over and the path measured: the window is at least the path's
    /// bandwidth-delay product until BBR's bounded window is as large, through delivery round
    /// `until_round` at most. quinn's BBR, recovering from the flight's losses, holds its
    /// window for a round trip at a fraction of the product (the link bench's pull: 32 kB,
    /// where the product is 75 kB), and the line would carry under half its rate.
    Settling {
        until_round: u64,
    },
    Over,
}

/// Round trips the window may stay at the path's product after the first flight
/// (`FirstFlight::Settling`).
const SETTLING_ROUNDS: u64 = 2;

impl FirstFlight {
    /// At the end of acknowledgements of `acked` bytes (`in_flight`: what stays in flight;
    /// `app_limited`: the connection had nothing more to send; `resumed`: it jumped to a
    /// remembered path, which sets its own window; `bounded`: BBR's window, bounded).
    fn on_end_acks(
        &mut self,
        path: &PathModel,
        in_flight: u64,
        acked: u64,
        app_limited: bool,
        resumed: bool,
        bounded: u64,
    ) {
        let before = in_flight.saturating_add(acked);
        *self = match *self {
            // A resumption, or a connection that measured its path before it ever had more
            // to send than its window (a trickle, then a transfer): BBR's window is its path's.
            _ if resumed => FirstFlight::Over,
            FirstFlight::Before if path.past_start() => FirstFlight::Over,
            FirstFlight::Before if !app_limited && in_flight > 0 => FirstFlight::Draining {
                round: path.round,
                window: before,
            },
            // A packet sent after the first acknowledgements came back is acknowledged: the
            // flight is over, and the path measured by its delivery.
            FirstFlight::Draining { round, .. } if path.round > round => match path.bdp() {
                Some(product) if bounded < product => FirstFlight::Settling {
                    until_round: path.round.saturating_add(SETTLING_ROUNDS),
                },
                _ => FirstFlight::Over,
            },
            FirstFlight::Draining { round, .. } => FirstFlight::Draining {
                round,
                window: before,
            },
            FirstFlight::Settling { until_round }
                if path.round > until_round || path.bdp().is_none_or(|p| bounded >= p) =>
            {
                FirstFlight::Over
            }
            other => other,
        };
    }

    /// After `bytes` were lost (`persistent`: all a while's packets; none: a congestion mark):
    /// they are not sent again beyond what acknowledgements let go; persistent congestion or
    /// a mark ends the conservation, leaving the window to BBR.
    fn on_loss(&mut self, bytes: u64, persistent: bool) {
        if let FirstFlight::Draining { window, .. } = self {
            *window = window.saturating_sub(bytes);
        }
        if persistent || bytes == 0 {
            *self = FirstFlight::Over;
        }
    }

    /// The least window it asks for (none once the flight is over and the path's product is
    /// in BBR's window).
    fn window(&self, path: &PathModel) -> u64 {
        match *self {
            FirstFlight::Draining { window, .. } => window,
            FirstFlight::Settling { .. } => path.bdp().unwrap_or(0),
            _ => 0,
        }
    }
}

/// A send, as the rate sample of its acknowledgement needs it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    /// Bytes acknowledged on the connection when it was sent.
    delivered: u64,
    /// When the last of those was acknowledged.
    delivered_at: Instant,
    /// When the packet last acknowledged before this send was itself sent.
    first_sent_at: Instant,
}

/// The path as measured from acknowledgements: its delivery rate and round trip.
#[derive(Debug, Clone)]
struct PathModel {
    sent: VecDeque<Sent>,
    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    /// Round trips counted by delivery (BBR's): one ends when a packet sent after it began is
    /// acknowledged, so a pause or an outage counts as none.
    round: u64,
    next_round_delivered: u64,
    /// Bytes per second, the largest of the last `WINDOW_ROUND_TRIPS`.
    rate: WindowedMax,
    /// A rate was sampled while the connection had more to send than it could: the path's
    /// own (a trickle's says only how little was sent), once past the start (`past_start`).
    measured: bool,
    /// Bytes acknowledged beyond what `rate` explains, in one burst.
    extra_acked: WindowedMax,
    epoch_start: Option<Instant>,
    epoch_acked: u64,
    acked_since_end: u64,
    min_rtt: MinRtt,
    /// The smallest round trip of the connection (what a record of the path keeps: on an idle
    /// link `min_rtt` becomes a keep-alive's, its acknowledgement delayed).
    lowest_rtt: Option<Duration>,
    /// When a rate was last sampled while the connection had more to send than it sent.
    measured_at: Option<Instant>,
}

impl PathModel {
    fn new(now: Instant) -> Self {
        PathModel {
            sent: VecDeque::new(),
            delivered: 0,
            delivered_at: now,
            first_sent_at: now,
            round: 0,
            next_round_delivered: 0,
            rate: WindowedMax::default(),
            measured: false,
            extra_acked: WindowedMax::default(),
            epoch_start: None,
            epoch_acked: 0,
            acked_since_end: 0,
            min_rtt: MinRtt::default(),
            lowest_rtt: None,
            measured_at: None,
        }
    }

    fn on_sent(&mut self, now: Instant) {
        if self.sent.back().is_some_and(|s| s.at == now) {
            return;
        }
        if self.sent.len() == SENT_RECORDS_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            at: now,
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            first_sent_at: self.first_sent_at,
        });
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        self.delivered = self.delivered.saturating_add(bytes);
        self.delivered_at = now;
        self.acked_since_end = self.acked_since_end.saturating_add(bytes);
        let round_trip = now.saturating_duration_since(sent);
        self.min_rtt.update(now, round_trip);
        self.lowest_rtt = Some(self.lowest_rtt.map_or(round_trip, |l| l.min(round_trip)));
        let at = self.sent.partition_point(|s| s.at < sent);
        let Some(record) = self.sent.get(at).filter(|s| s.at == sent).copied() else {
            return;
        };
        // Sends before this one are acknowledged or lost by now.
        self.sent.drain(..at);
        if record.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.delivered;
            self.round += 1;
        }
        self.first_sent_at = record.at;
        let interval = record
            .at
            .saturating_duration_since(record.first_sent_at)
            .max(now.saturating_duration_since(record.delivered_at));
        let Some(rate) = rate(self.delivered - record.delivered, interval) else {
            return;
        };
        if !app_limited || rate > self.rate.get() {
            self.rate.update(self.round, rate);
        }
        if !app_limited {
            self.measured = true;
            self.measured_at = Some(now);
        }
    }

    fn on_end_acks(&mut self, now: Instant) {
        let acked = std::mem::take(&mut self.acked_since_end);
        if acked == 0 {
            return;
        }
        // BBR's `extra_acked`: acknowledgements beyond the rate since the epoch began.
        let expected = |start: Option<Instant>| {
            start.map_or(0, |s| {
                bytes_at(self.rate.get(), now.saturating_duration_since(s))
            })
        };
        if self.epoch_start.is_none() || self.epoch_acked <= expected(self.epoch_start) {
            (self.epoch_start, self.epoch_acked) = (Some(now), 0);
        }
        self.epoch_acked = self.epoch_acked.saturating_add(acked);
        let extra = self.epoch_acked.saturating_sub(expected(self.epoch_start));
        self.extra_acked.update(self.round, extra);
    }

    /// The connection measured its path over more than its start (`START_BYTES`): a
    /// resumption no longer begins.
    fn past_start(&self) -> bool {
        self.measured && self.delivered > START_BYTES
    }

    /// The bandwidth-delay product: the largest rate times the smallest round trip of the last
    /// 10 s; `None` before the path is measured (`past_start`).
    fn bdp(&self) -> Option<u64> {
        let (rate, min_rtt) = (self.rate.get(), self.min_rtt.get()?);
        if !self.past_start() || rate == 0 || min_rtt.is_zero() {
            return None;
        }
        Some(bytes_at(rate, min_rtt))
    }

    /// The bound on the window: twice the bandwidth-delay product, plus the largest burst of
    /// acknowledgements; `None` before the path's rate and round trip are measured.
    fn bound(&self) -> Option<u64> {
        Some(
            self.bdp()?
                .saturating_mul(2)
                .saturating_add(self.extra_acked.get()),
        )
    }
}

/// How long a smallest round trip stands unless a round trip as small is seen again (BBR's):
/// a path that changed (a NAT rebinding, a mobile unit moving from 4G to Wi-Fi) has its own.
const MIN_RTT_KEPT: Duration = Duration::from_secs(10);

/// The smallest round trip of the last `MIN_RTT_KEPT`, as BBR keeps it: a window computed
/// from a shorter round trip than the path has would shrink at every round trip.
#[derive(Debug, Clone, Copy, Default)]
struct MinRtt {
    seen: Option<(Duration, Instant)>,
}

impl MinRtt {
    fn update(&mut self, now: Instant, rtt: Duration) {
        let stale = |&(min, at): &(Duration, Instant)| {
            rtt <= min || now.saturating_duration_since(at) > MIN_RTT_KEPT
        };
        if self.seen.as_ref().is_none_or(stale) {
            self.seen = Some((rtt, now));
        }
    }

    fn get(&self) -> Option<Duration> {
        self.seen.map(|(min, _)| min)
    }
}

/// Bytes per second for `bytes` over `interval` (`None` over no time).
fn rate(bytes: u64, interval: Duration) -> Option<u64> {
    let nanos = interval.as_nanos();
    (nanos > 0)
        .then(|| u64::try_from(u128::from(bytes) * 1_000_000_000 / nanos).unwrap_or(u64::MAX))
}

/// Bytes sent at `rate` (bytes per second) over `time`.
fn bytes_at(rate: u64, time: Duration) -> u64 {
    u64::try_from(u128::from(rate) * time.as_nanos() / 1_000_000_000).unwrap_or(u64::MAX)
}

/// The largest value of the last `WINDOW_ROUND_TRIPS` round trips.
#[derive(Debug, Clone, Default)]
struct WindowedMax {
    /// Decreasing values, each with the round trip it was seen in; the front is the largest.
    /// At most one per round trip of the window.
    seen: VecDeque<(u64, u64)>,
}

impl WindowedMax {
    fn update(&mut self, round: u64, value: u64) {
        while self.seen.back().is_some_and(|&(_, v)| v <= value) {
            self.seen.pop_back();
        }
        // Within a round trip only its largest value counts.
        if self.seen.back().is_none_or(|&(at, _)| at != round) {
            self.seen.push_back((round, value));
        }
        while self
            .seen
            .front()
            .is_some_and(|&(at, _)| round.saturating_sub(at) >= WINDOW_ROUND_TRIPS)
        {
            self.seen.pop_front();
        }
    }

    fn get(&self) -> u64 {
        self.seen.front().map_or(0, |&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A path of `rate` bytes per second behind a bottleneck and `rtt` of propagation, driven
    /// packet by packet: `count` packets of 1,000 bytes sent in bursts of `burst` (each burst
    /// when the last has left the bottleneck), each acknowledged as it leaves plus `rtt`;
    /// the acknowledgements of `every` packets go together, and reach the sender only at a
    /// multiple of `held` (a radio scheduler releasing them together; zero: as they come).
    struct Path {
        rate: u64,
        rtt: Duration,
        burst: u32,
        every: usize,
        held: Duration,
    }

    impl Path {
        fn slow(rtt_ms: u64) -> Self {
            Path {
                rate: 250_000,
                rtt: Duration::from_millis(rtt_ms),
                burst: 1,
                every: 1,
                held: Duration::ZERO,
            }
        }

        fn drive(&self, model: &mut PathModel, start: Instant, count: u32) {
            let spacing = Duration::from_nanos(1_000 * 1_000_000_000 / self.rate);
            let mut events: Vec<(Instant, Option<Instant>)> = Vec::new();
            let mut group = Vec::new();
            for i in 0..count {
                let sent = start + spacing * (i - i % self.burst);
                let left = start + spacing * (i + 1);
                events.push((sent, None));
                group.push(sent);
                if group.len() == self.every || i + 1 == count {
                    let mut acked = left + self.rtt;
                    if !self.held.is_zero() {
                        let since = acked.duration_since(start).as_nanos();
                        let held = self.held.as_nanos();
                        let released = since.div_ceil(held) * held;
                        acked =
                            start + Duration::from_nanos(u64::try_from(released).expect("nanos"));
                    }
                    events.extend(group.drain(..).map(|s| (acked, Some(s))));
                }
            }
            events.sort_by_key(|&(at, ack)| (at, ack.is_some(), ack));
            let mut last_ack = None;
            for (at, ack) in events {
                if last_ack.is_some_and(|l| l != at) {
                    model.on_end_acks(last_ack.expect("ack"));
                    last_ack = None;
                }
                match ack {
                    None => model.on_sent(at),
                    Some(sent) => {
                        model.on_ack(at, sent, 1_000, false);
                        last_ack = Some(at);
                    }
                }
            }
            if let Some(at) = last_ack {
                model.on_end_acks(at);
            }
        }
    }

    fn within(value: u64, expected: u64, percent: u64) -> bool {
        value.abs_diff(expected) * 100 <= expected * percent
    }

    #[test]
    fn the_rate_is_the_paths_with_bursts_sent_and_acknowledgements_released_together() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        // 250 kB/s (2 Mbit/s), 300 ms; bursts of 10 packets; an acknowledgement every 2,
        // released every 40 ms: two acknowledgements apart by nothing say 2 kB in no time.
        Path {
            burst: 10,
            every: 2,
            held: 40 * MS,
            ..Path::slow(300)
        }
        .drive(&mut model, start, 3_000);
        let rate = model.rate.get();
        assert!(
            within(rate, 250_000, 15),
            "measured {rate} B/s on a path of 250,000"
        );
        // Twice the bandwidth-delay product (75 kB), and a burst of acknowledgements.
        let bound = model.bound().expect("a bound");
        assert!((150_000..=200_000).contains(&bound), "{bound}");
    }

    #[test]
    fn acknowledgements_that_arrive_late_together_widen_the_bound_by_their_burst() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        // Acknowledged every 40 packets: 160 ms of sending acknowledged at once.
        Path {
            every: 40,
            ..Path::slow(300)
        }
        .drive(&mut model, start, 2_000);
        let bound = model.bound().expect("a bound");
        assert!(model.extra_acked.get() >= 30_000, "{model:?}");
        assert!(bound >= 180_000, "{bound}");
    }

    #[test]
    fn a_pause_is_not_a_slow_path() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        let path = Path::slow(300);
        path.drive(&mut model, start, 2_000);
        // A minute later, a flight of 20 packets: its samples, timed from the acknowledgements
        // before the pause, say 20 kB in a minute. The pause is one round trip, not 200.
        path.drive(&mut model, start + Duration::from_secs(60), 20);
        let rate = model.rate.get();
        assert!(within(rate, 250_000, 5), "{rate}");
        assert!(model.sent.len() < 100, "{}", model.sent.len());
    }

    #[test]
    fn a_handshake_alone_bounds_nothing() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        for i in 0..4u32 {
            let sent = start + 300 * MS * i;
            model.on_sent(sent);
            model.on_ack(sent + 300 * MS, sent, 1_200, true);
            model.on_end_acks(sent + 300 * MS);
        }
        assert!(model.rate.get() > 0);
        assert_eq!(model.bound(), None);
    }

    #[test]
    fn a_path_whose_round_trip_grows_is_measured_again_within_ten_seconds() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        Path::slow(50).drive(&mut model, start, 2_000);
        assert_eq!(model.min_rtt.get(), Some(54 * MS));
        // The unit moves to a cell with a 300 ms round trip: after 10 s, the bound is that
        // path's (a bound from 50 ms would shrink the window at every round trip).
        let moved = start + Duration::from_secs(8);
        Path::slow(300).drive(&mut model, moved, 3_000);
        assert!(
            model.min_rtt.get().is_some_and(|min| min >= 300 * MS),
            "{:?}",
            model.min_rtt
        );
        let bound = model.bound().expect("a bound");
        assert!(bound >= 150_000, "{bound}");
    }

    #[test]
    fn the_largest_rate_is_kept_ten_round_trips() {
        let mut max = WindowedMax::default();
        max.update(1, 500);
        max.update(2, 200);
        max.update(WINDOW_ROUND_TRIPS, 100);
        assert_eq!(max.get(), 500);
        max.update(WINDOW_ROUND_TRIPS + 1, 100);
        assert_eq!(max.get(), 200);
        // Smaller and smaller values in one round trip: one kept for it.
        for v in (1..100).rev() {
            max.update(WINDOW_ROUND_TRIPS + 2, v);
        }
        assert_eq!(max.get(), 100);
        assert_eq!(max.seen.len(), 2, "{max:?}");
    }

    #[test]
    fn a_new_connection_starts_with_bbrs_window() {
        let factory = Arc::new(BoundedBbr::default());
        let start = Instant::now();
        let bounded = factory.clone().build(start, 1_452);
        let bbr = Arc::new(quinn::congestion::BbrConfig::default()).build(start, 1_452);
        assert_eq!(bounded.window(), bbr.window());
    }

    /// 250 kB/s, 300 ms: a bandwidth-delay product of 75 kB.
    fn remembered() -> Arc<OnceLock<Remembered>> {
        let cell = Arc::new(OnceLock::new());
        cell.set(Remembered {
            rate: 250_000,
            min_rtt: 300 * MS,
        })
        .expect("set");
        cell
    }

    /// A resumption past its first acknowledgement, 310 ms after its send.
    fn jumped(path: &PathModel) -> Resume {
        let mut resume = Resume::Waiting(remembered());
        resume.on_ack(1_200, 310 * MS, true, path, BBR_START);
        resume
    }

    /// quinn's BBR's first window.
    const BBR_START: u64 = 240_000;

    #[test]
    fn a_resumption_starts_at_the_remembered_product_not_at_bbrs_window() {
        let path = PathModel::new(Instant::now());
        let resume = jumped(&path);
        // The remembered product (250 kB/s over 300 ms), where BBR would send 240 kB at once.
        assert_eq!(resume.window(&path, BBR_START), 75_000);
        // Nothing remembered: BBR's (bounded) window.
        let mut cold = Resume::Waiting(Arc::default());
        cold.on_ack(1_200, 310 * MS, true, &path, BBR_START);
        assert_eq!(cold.window(&path, BBR_START), BBR_START);
    }

    #[test]
    fn a_path_known_only_after_the_handshake_sets_the_next_flight_at_once() {
        // The host's side: the handshake's flight was acknowledged before it knew the site.
        let start = Instant::now();
        let mut path = PathModel::new(start);
        path.on_sent(start);
        path.on_ack(start + 310 * MS, start, 1_200, true);
        let cell = Arc::new(OnceLock::new());
        let mut resume = Resume::Waiting(cell.clone());
        resume.on_ack(1_200, 310 * MS, true, &path, BBR_START);
        assert_eq!(resume.window(&path, BBR_START), BBR_START);
        // The handshake named the site: its path sets the window before another
        // acknowledgement comes (the reply and the first batch go out at once).
        let site_path = *remembered().get().expect("remembered");
        cell.set(site_path).expect("set");
        assert_eq!(resume.window(&path, BBR_START), 75_000);
        resume.on_ack(1_200, 310 * MS, true, &path, BBR_START);
        assert!(matches!(resume, Resume::Jumped { .. }), "{resume:?}");
        // A path remembered with another round trip (30 ms) is not this one.
        let cell = Arc::new(OnceLock::new());
        let other = Resume::Waiting(cell.clone());
        cell.set(Remembered {
            min_rtt: 30 * MS,
            ..site_path
        })
        .expect("set");
        assert_eq!(other.window(&path, BBR_START), BBR_START);
    }

    #[test]
    fn a_round_trip_unlike_the_remembered_one_is_another_path() {
        let path = PathModel::new(Instant::now());
        // 127.0.0.1, a fibre line, a satellite hop behind a slow cell.
        for rtt in [
            Duration::from_micros(100),
            140 * MS,
            Duration::from_millis(3_100),
        ] {
            let mut resume = Resume::Waiting(remembered());
            resume.on_ack(1_200, rtt, true, &path, BBR_START);
            assert!(matches!(resume, Resume::Done), "{rtt:?}: {resume:?}");
            assert_eq!(resume.window(&path, BBR_START), BBR_START);
        }
        // Within half and ten times: the same path, its queue or its radio varying.
        for rtt in [150 * MS, Duration::from_millis(2_900)] {
            let mut resume = Resume::Waiting(remembered());
            resume.on_ack(1_200, rtt, true, &path, BBR_START);
            assert!(
                matches!(resume, Resume::Jumped { .. }),
                "{rtt:?}: {resume:?}"
            );
            assert_eq!(resume.window(&path, BBR_START), 75_000);
        }
    }

    #[test]
    fn a_connection_already_measuring_its_path_does_not_resume() {
        let start = Instant::now();
        let mut path = PathModel::new(start);
        Path::slow(300).drive(&mut path, start, 500);
        assert!(path.measured);
        let resume = jumped(&path);
        assert!(matches!(resume, Resume::Done), "{resume:?}");
    }

    #[test]
    fn a_rate_sampled_from_a_handshake_leaves_the_start_to_a_resumption() {
        let start = Instant::now();
        let mut path = PathModel::new(start);
        // A handshake's few kilobytes, sampled as the path's rate (a lossy link's
        // retransmissions kept the host from being app-limited).
        Path::slow(300).drive(&mut path, start, 8);
        assert!(path.measured);
        let mut resume = jumped(&path);
        assert!(matches!(resume, Resume::Jumped { .. }), "{resume:?}");
        // Nor does that sample validate the jump, bound the window, or describe the path.
        resume.on_ack(1_200, 310 * MS, false, &path, 22_000);
        assert_eq!(resume.window(&path, 22_000), 75_000);
        assert_eq!(path.bound(), None);
    }

    #[test]
    fn congestion_before_the_jump_leaves_the_start_to_bbr() {
        for (lost, persistent) in [(0, false), (1_200, true)] {
            let mut resume = Resume::Waiting(remembered());
            resume.on_loss(lost, persistent);
            assert!(matches!(resume, Resume::Done), "{resume:?}");
        }
        // A handshake packet lost at random is not congestion.
        let mut resume = Resume::Waiting(remembered());
        resume.on_loss(1_200, false);
        assert!(matches!(resume, Resume::Waiting(_)), "{resume:?}");
    }

    #[test]
    fn a_path_the_connection_migrated_to_starts_as_any() {
        let factory = Arc::new(BoundedBbr::resuming(remembered()));
        let resume_of = |c: Box<dyn Controller>| {
            c.into_any()
                .downcast::<Bounded>()
                .expect("a bounded controller")
                .resume
        };
        let first = resume_of(factory.clone().build(Instant::now(), 1_452));
        assert!(matches!(first, Resume::Waiting(_)), "{first:?}");
        // Another address of the peer (quinn builds a controller for the new path).
        let migrated = resume_of(factory.build(Instant::now(), 1_452));
        assert!(matches!(migrated, Resume::Done), "{migrated:?}");
    }

    #[test]
    fn random_loss_leaves_a_resumption_and_a_window_lost_halves_it() {
        let path = PathModel::new(Instant::now());
        let mut resume = jumped(&path);
        // A radio link's 2 %: 1.2 kB lost in every 60 kB acknowledged.
        for _ in 0..20 {
            for _ in 0..50 {
                resume.on_ack(1_200, 310 * MS, false, &path, BBR_START);
            }
            resume.on_loss(1_200, false);
        }
        assert!(matches!(resume, Resume::Jumped { .. }), "{resume:?}");
        // A path slower than remembered: half a window's excess lost at once. The window
        // retreats to half the jump's, under BBR's until the path bounds it.
        resume.on_loss(40_000, false);
        assert!(matches!(resume, Resume::Retreated { .. }), "{resume:?}");
        assert_eq!(resume.window(&path, BBR_START), 37_500);
        let start = Instant::now();
        let mut measured = PathModel::new(start);
        Path::slow(300).drive(&mut measured, start, 500);
        resume.on_ack(1_200, 310 * MS, false, &measured, 150_000);
        assert!(matches!(resume, Resume::Done), "{resume:?}");
        // A persistent congestion, or a congestion mark, ends one at once.
        for (lost, persistent) in [(1_200, true), (0, false)] {
            let mut resume = jumped(&path);
            resume.on_loss(lost, persistent);
            assert!(matches!(resume, Resume::Retreated { .. }), "{resume:?}");
        }
    }

    #[test]
    fn once_measured_a_resumption_keeps_a_backlog_until_the_bounded_window_is_as_large() {
        let start = Instant::now();
        let path = PathModel::new(start);
        let mut resume = jumped(&path);
        let mut measured = PathModel::new(start);
        Path::slow(300).drive(&mut measured, start, 500);
        // Half a product again, above a smaller bounded window.
        assert_eq!(resume.window(&measured, 50_000), 112_500);
        resume.on_ack(1_200, 310 * MS, false, &measured, 100_000);
        assert!(matches!(resume, Resume::Jumped { .. }), "{resume:?}");
        resume.on_ack(1_200, 310 * MS, false, &measured, 120_000);
        assert!(matches!(resume, Resume::Done), "{resume:?}");
        assert_eq!(resume.window(&measured, 120_000), 120_000);
    }

    #[test]
    fn a_resumption_follows_a_path_slower_than_remembered() {
        let start = Instant::now();
        let path = PathModel::new(start);
        let resume = jumped(&path);
        // Half the rate remembered, its round trips of data past the first three.
        let mut slower = PathModel::new(start);
        Path {
            rate: 125_000,
            ..Path::slow(300)
        }
        .drive(&mut slower, start, 500);
        let floor = resume.window(&slower, 10_000);
        assert!((55_000..=60_000).contains(&floor), "{floor}");
        // In its first round trips the measured rate is still ramping: the remembered one.
        slower.round = 2;
        assert_eq!(resume.window(&slower, 10_000), 112_500);
    }

    /// A new connection on a path of 250 kB/s and 300 ms: its handshake acknowledged at 300 ms,
    /// then BBR's first window sent at once at the instant returned.
    fn handshake_then_first_flight(start: Instant) -> (PathModel, Instant) {
        let mut path = PathModel::new(start);
        path.on_sent(start);
        path.on_ack(start + 300 * MS, start, 1_200, true);
        path.on_end_acks(start + 300 * MS);
        let flight = start + 301 * MS;
        path.on_sent(flight);
        (path, flight)
    }

    #[test]
    fn the_first_flight_drains_with_the_line_kept_busy() {
        let start = Instant::now();
        let (mut path, flight) = handshake_then_first_flight(start);
        let mut first = FirstFlight::Before;
        let mut in_flight = BBR_START;
        // Its acknowledgements come back at the line rate, a datagram every 4.8 ms, and the
        // sender sends what each lets go.
        let mut now = flight + 300 * MS;
        let first_sent_after = now;
        for _ in 0..50 {
            path.on_ack(now, flight, 1_200, false);
            in_flight -= 1_200;
            first.on_end_acks(&path, in_flight, 1_200, false, false, BBR_LOW);
            // One datagram may go for the one delivered, whatever BBR's window.
            assert_eq!(first.window(&path), in_flight + 1_200, "{first:?}");
            path.on_sent(now);
            in_flight += 1_200;
            now += Duration::from_micros(4_800);
        }
        // Twelve datagrams the queue dropped are found lost: they go again only as
        // acknowledgements let them, not on top.
        first.on_loss(12 * 1_200, false);
        in_flight -= 12 * 1_200;
        assert_eq!(first.window(&path), in_flight);
        // A datagram sent once the acknowledgements came back is acknowledged: the flight is
        // over and the path measured. BBR's window, recovering from the flight's losses, is
        // under the path's product: the window is the product.
        path.on_ack(now, first_sent_after, 1_200, false);
        first.on_end_acks(&path, in_flight - 1_200, 1_200, false, false, BBR_LOW);
        let product = path.bdp().expect("measured");
        assert!(product > BBR_LOW, "{product}");
        assert!(matches!(first, FirstFlight::Settling { .. }), "{first:?}");
        assert_eq!(first.window(&path), product);
        // Until BBR's window is as large...
        let mut settled = first;
        settled.on_end_acks(&path, 70_000, 1_200, false, false, product);
        assert_eq!(settled, FirstFlight::Over);
        assert_eq!(settled.window(&path), 0);
        // ...for two round trips at most.
        let mut sent = now;
        for _ in 0..SETTLING_ROUNDS + 1 {
            sent += 300 * MS;
            path.on_sent(sent);
            path.on_ack(sent + 300 * MS, sent, 1_200, false);
            assert!(matches!(first, FirstFlight::Settling { .. }), "{first:?}");
            first.on_end_acks(&path, 70_000, 1_200, false, false, BBR_LOW);
        }
        assert_eq!(first, FirstFlight::Over);
        // A flight whose end finds BBR's window as large as the path's product is over.
        let mut draining = FirstFlight::Draining {
            round: path.round - 1,
            window: BBR_START,
        };
        draining.on_end_acks(&path, 70_000, 1_200, false, false, product);
        assert_eq!(draining, FirstFlight::Over);
    }

    /// quinn's BBR's window on the link bench's pull once the first flight was over.
    const BBR_LOW: u64 = 32_000;

    #[test]
    fn only_a_new_connections_first_full_window_is_conserved() {
        let start = Instant::now();
        // The handshake's acknowledgements, with nothing more to send: no flight yet.
        let (path, flight) = handshake_then_first_flight(start);
        let mut first = FirstFlight::Before;
        first.on_end_acks(&path, 0, 1_200, true, false, BBR_START);
        assert_eq!(first, FirstFlight::Before);
        // A resumption sets its own window.
        let mut resumed = FirstFlight::Before;
        resumed.on_end_acks(&path, BBR_START, 1_200, false, true, BBR_START);
        assert_eq!(resumed, FirstFlight::Over);
        // A connection that measured its path before it ever filled its window (trickles,
        // then a transfer): BBR's window is the path's.
        let mut measured = PathModel::new(start);
        Path::slow(300).drive(&mut measured, start, 500);
        assert!(measured.past_start());
        let mut later = FirstFlight::Before;
        later.on_end_acks(&measured, BBR_START, 1_200, false, false, BBR_START);
        assert_eq!(later, FirstFlight::Over);
        // Persistent congestion, or a congestion mark, ends the conservation (and a start
        // that met either has none).
        let mut path = path;
        path.on_ack(flight + 300 * MS, flight, 1_200, false);
        for (lost, persistent) in [(1_200, true), (0, false)] {
            let mut draining = FirstFlight::Before;
            draining.on_end_acks(&path, BBR_START, 1_200, false, false, BBR_START);
            assert!(
                matches!(draining, FirstFlight::Draining { .. }),
                "{draining:?}"
            );
            draining.on_loss(lost, persistent);
            assert_eq!(draining, FirstFlight::Over, "{lost} {persistent}");
        }
    }

    #[test]
    fn a_resumption_ends_with_the_transfer_it_started() {
        let mut path = PathModel::new(Instant::now());
        let mut resume = jumped(&path);
        // The handshake's acknowledgements, and the next round trip's, are app-limited.
        path.round = 1;
        resume.on_ack(1_200, 310 * MS, true, &path, BBR_START);
        assert!(matches!(resume, Resume::Jumped { .. }), "{resume:?}");
        // Then nothing more to send: a later transfer starts from BBR.
        path.round = 2;
        resume.on_ack(1_200, 310 * MS, true, &path, BBR_START);
        assert!(matches!(resume, Resume::Done), "{resume:?}");
        assert_eq!(resume.window(&path, BBR_START), BBR_START);
    }

    #[test]
    fn a_path_is_remembered_for_an_hour_and_recorded_again_when_it_changes() {
        let path = Remembered {
            rate: 250_000,
            min_rtt: 300 * MS,
        };
        let at = 1_800_000_000_000;
        let record = path.record(at);
        assert_eq!(Remembered::from_record(&record, at + 60_000), Some(path));
        assert_eq!(Remembered::from_record(&record, at + 3_600_000), Some(path));
        assert_eq!(Remembered::from_record(&record, at + 3_600_001), None);
        // A clock set back since.
        assert_eq!(Remembered::from_record(&record, at - 1), None);
        // A round trip past any rural path's, or none.
        for micros in [3_000_001, 0] {
            let odd = LinkPath {
                min_rtt_micros: micros,
                ..record
            };
            assert_eq!(Remembered::from_record(&odd, at), None, "{micros}");
        }
        let close = Remembered {
            rate: 270_000,
            min_rtt: 320 * MS,
        };
        assert!(!close.differs_from(&path));
        let faster = Remembered {
            rate: 300_000,
            ..path
        };
        assert!(faster.differs_from(&path));
        let longer = Remembered {
            min_rtt: 400 * MS,
            ..path
        };
        assert!(longer.differs_from(&path));
        // Recorded: the first measurement; a later one of another path; the same path again
        // once the record is ten minutes older; never an earlier measurement.
        let start = Instant::now();
        let recorded = Some((path, start));
        assert!(close.worth_recording(start, None));
        assert!(faster.worth_recording(start + MS, recorded));
        assert!(!faster.worth_recording(start, recorded));
        assert!(!close.worth_recording(start + PATH_REFRESHED - MS, recorded));
        assert!(close.worth_recording(start + PATH_REFRESHED, recorded));
    }

    #[test]
    fn sends_remembered_are_bounded() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        for i in 0..(SENT_RECORDS_MAX as u32 + 10) {
            model.on_sent(start + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(model.sent.len(), SENT_RECORDS_MAX);
    }
}
