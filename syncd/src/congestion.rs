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
//! last ten round trips, times the smallest round trip seen, twice, plus the largest burst of
//! acknowledgements beyond that rate in the same ten round trips (a receiver that
//! acknowledges every few packets, or late, must not stall the sender).
//!
//! Invariants: the window is never larger than BBR's own (the bound can only make the
//! connection gentler on the path); until a rate is measured with the sender not limited by
//! what it had to send it is BBR's (a handshake's few packets say nothing of the path); it never
//! falls below four datagrams; the state kept is bounded (`SENT_RECORDS_MAX` sends).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory};

/// Sends remembered for rate samples; older ones are forgotten (their acknowledgement gives
/// no sample).
const SENT_RECORDS_MAX: usize = 16_384;

/// Round trips over which the largest rate and acknowledgement burst are kept (BBR's).
const WINDOW_ROUND_TRIPS: u32 = 10;

/// Builds [`Bounded`] controllers around quinn's BBR.
#[derive(Debug, Default)]
pub struct BoundedBbr {
    bbr: Arc<quinn::congestion::BbrConfig>,
}

impl ControllerFactory for BoundedBbr {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bounded {
            inner: self.bbr.clone().build(now, current_mtu),
            path: PathModel::new(now),
            mtu: u64::from(current_mtu),
        })
    }
}

/// BBR with its window bounded by the path's measured delivery rate (module doc).
pub struct Bounded {
    inner: Box<dyn Controller>,
    path: PathModel,
    mtu: u64,
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
        self.path
            .on_ack(now, sent, bytes, app_limited, rtt.min(), rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.path.on_end_acks(now, in_flight);
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
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        let bbr = self.inner.window();
        match self.path.bound() {
            Some(bound) => bbr.min(bound.max(4 * self.mtu)),
            None => bbr,
        }
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Bounded {
            inner: self.inner.clone_box(),
            path: self.path.clone(),
            mtu: self.mtu,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
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
    /// Nothing in flight since the last acknowledgements: the next send starts the clocks
    /// again (an idle connection's pause is not a slow path).
    idle: bool,
    /// Bytes per second.
    rate: WindowedMax,
    /// A rate was sampled while the sender had more to send than it could: the path's own
    /// (a handshake's, or a trickle's, says only how little was sent).
    measured: bool,
    /// Bytes acknowledged beyond what `rate` explains, in one burst.
    extra_acked: WindowedMax,
    epoch_start: Option<Instant>,
    epoch_acked: u64,
    acked_since_end: u64,
    min_rtt: Duration,
    srtt: Duration,
}

impl PathModel {
    fn new(now: Instant) -> Self {
        PathModel {
            sent: VecDeque::new(),
            delivered: 0,
            delivered_at: now,
            first_sent_at: now,
            idle: true,
            rate: WindowedMax::default(),
            measured: false,
            extra_acked: WindowedMax::default(),
            epoch_start: None,
            epoch_acked: 0,
            acked_since_end: 0,
            min_rtt: Duration::ZERO,
            srtt: Duration::ZERO,
        }
    }

    fn on_sent(&mut self, now: Instant) {
        if self.idle {
            (self.delivered_at, self.first_sent_at) = (now, now);
            self.idle = false;
        }
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

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        min_rtt: Duration,
        srtt: Duration,
    ) {
        (self.min_rtt, self.srtt) = (min_rtt, srtt);
        self.delivered += bytes;
        self.delivered_at = now;
        self.acked_since_end += bytes;
        let at = self.sent.partition_point(|s| s.at < sent);
        let Some(record) = self.sent.get(at).filter(|s| s.at == sent).copied() else {
            return;
        };
        // Sends before this one are acknowledged or lost by now.
        self.sent.drain(..at);
        self.first_sent_at = record.at;
        let interval = (record.at - record.first_sent_at).max(now - record.delivered_at);
        let Some(rate) = rate(self.delivered - record.delivered, interval) else {
            return;
        };
        if !app_limited || rate > self.rate.get() {
            self.rate.update(now, rate, self.window());
        }
        self.measured |= !app_limited;
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64) {
        self.idle = in_flight == 0;
        let acked = std::mem::take(&mut self.acked_since_end);
        if acked == 0 {
            return;
        }
        // BBR's `extra_acked`: acknowledgements beyond the rate since the epoch began.
        let expected = self
            .epoch_start
            .map_or(0, |start| bytes_at(self.rate.get(), now - start));
        if self.epoch_start.is_none() || self.epoch_acked <= expected {
            (self.epoch_start, self.epoch_acked) = (Some(now), 0);
        }
        self.epoch_acked += acked;
        let expected = self
            .epoch_start
            .map_or(0, |start| bytes_at(self.rate.get(), now - start));
        let extra = self.epoch_acked.saturating_sub(expected);
        self.extra_acked.update(now, extra, self.window());
    }

    /// How long the largest values are kept.
    fn window(&self) -> Duration {
        self.srtt.max(self.min_rtt) * WINDOW_ROUND_TRIPS
    }

    /// The bound on the window: twice the bandwidth-delay product, plus the largest burst of
    /// acknowledgements; `None` before the path's rate and round trip are measured.
    fn bound(&self) -> Option<u64> {
        let rate = self.rate.get();
        if !self.measured || rate == 0 || self.min_rtt.is_zero() {
            return None;
        }
        Some(2 * bytes_at(rate, self.min_rtt) + self.extra_acked.get())
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

/// The largest value seen over a sliding window of time.
#[derive(Debug, Clone, Default)]
struct WindowedMax {
    /// Decreasing values, each with when it was seen; the front is the largest.
    seen: VecDeque<(Instant, u64)>,
}

impl WindowedMax {
    fn update(&mut self, now: Instant, value: u64, window: Duration) {
        while self.seen.back().is_some_and(|&(_, v)| v <= value) {
            self.seen.pop_back();
        }
        self.seen.push_back((now, value));
        while self
            .seen
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > window)
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

    /// A path of `rate` bytes per second and `rtt`, driven packet by packet: `count` packets
    /// of 1,000 bytes, each sent as soon as the last one left the bottleneck, and acknowledged
    /// one round trip after, acknowledgements `every` packets.
    fn drive(
        model: &mut PathModel,
        start: Instant,
        (rate, rtt): (u64, Duration),
        every: usize,
        count: u32,
    ) {
        let spacing = Duration::from_nanos(1_000 * 1_000_000_000 / rate);
        let packets: Vec<Instant> = (0..count).map(|i| start + spacing * i).collect();
        let mut pending = Vec::new();
        let mut events: Vec<(Instant, Option<Instant>)> = packets
            .iter()
            .map(|&at| (at, None))
            .chain(packets.iter().map(|&at| (at + rtt, Some(at))))
            .collect();
        events.sort_by_key(|&(at, ack)| (at, ack.is_some()));
        for (at, ack) in events {
            match ack {
                None => model.on_sent(at),
                Some(sent) => {
                    pending.push(sent);
                    if pending.len() == every {
                        for s in pending.drain(..) {
                            model.on_ack(at, s, 1_000, false, rtt, rtt);
                        }
                        model.on_end_acks(at, 1);
                    }
                }
            }
        }
    }

    #[test]
    fn the_rate_is_the_paths_not_that_of_acknowledgements_bunched_together() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        // 250 kB/s (2 Mbit/s), 300 ms, an acknowledgement every 4 packets.
        drive(&mut model, start, (250_000, 300 * MS), 4, 2_000);
        let rate = model.rate.get();
        assert!(
            (240_000..=265_000).contains(&rate),
            "measured {rate} B/s on a path of 250,000"
        );
        // Twice the bandwidth-delay product (75 kB), and a burst of four packets.
        let bound = model.bound().expect("a bound");
        assert!((150_000..=160_000).contains(&bound), "{bound}");
    }

    #[test]
    fn acknowledgements_that_arrive_late_together_widen_the_bound_by_their_burst() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        // Acknowledged every 40 packets: 160 ms of sending acknowledged at once.
        drive(&mut model, start, (250_000, 300 * MS), 40, 2_000);
        let bound = model.bound().expect("a bound");
        assert!(model.extra_acked.get() >= 30_000, "{model:?}");
        assert!(bound >= 180_000, "{bound}");
    }

    #[test]
    fn an_idle_pause_is_not_a_slow_path() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        drive(&mut model, start, (250_000, 300 * MS), 1, 2_000);
        model.on_end_acks(start + Duration::from_secs(9), 0);
        // A minute later, a flight of 20 packets (80 ms of sending): its last is acknowledged
        // 380 ms after the flight began, having delivered 20 kB. Timed from the last
        // acknowledgement before the pause, it would be 20 kB in a minute.
        let later = start + Duration::from_secs(60);
        drive(&mut model, later, (250_000, 300 * MS), 1, 20);
        let rate = model.rate.get();
        assert!((40_000..=60_000).contains(&rate), "{rate}");
    }

    #[test]
    fn a_handshake_alone_bounds_nothing() {
        let start = Instant::now();
        let mut model = PathModel::new(start);
        for i in 0..4u32 {
            let sent = start + 300 * MS * i;
            model.on_sent(sent);
            model.on_ack(sent + 300 * MS, sent, 1_200, true, 300 * MS, 300 * MS);
            model.on_end_acks(sent + 300 * MS, 0);
        }
        assert!(model.rate.get() > 0);
        assert_eq!(model.bound(), None);
    }

    #[test]
    fn the_largest_rate_is_forgotten_after_ten_round_trips() {
        let start = Instant::now();
        let mut max = WindowedMax::default();
        max.update(start, 500, 100 * MS);
        max.update(start + 50 * MS, 200, 100 * MS);
        assert_eq!(max.get(), 500);
        max.update(start + 120 * MS, 100, 100 * MS);
        assert_eq!(max.get(), 200);
    }

    #[test]
    fn until_a_rate_is_measured_the_window_is_bbrs() {
        let factory = Arc::new(BoundedBbr::default());
        let start = Instant::now();
        let bounded = factory.clone().build(start, 1_452);
        let bbr = Arc::new(quinn::congestion::BbrConfig::default()).build(start, 1_452);
        assert_eq!(bounded.window(), bbr.window());
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
