//! When a site runs its next round: the daemon's round timers as a pure state machine, with
//! the outcome of each round (and the jitter) given to it. The site daemon's loop (`main`)
//! sleeps for what it answers; the simulator (`carnet-sim`) advances virtual time by it.
//!
//! Invariants: after a round that ended well the next one is `every` later, or, while the host
//! did not hold bodies this site asked for yet, after a pause that starts at `BODY_RETRY` and
//! doubles up to `every`; after a failed round, after the backoff plus the jitter, the backoff
//! starting at `BACKOFF_FIRST` and doubling up to `BACKOFF_MAX`; a round that ends well resets
//! both. A change here or a poke from the host (while connected) starts a round after
//! `COALESCE`.
//!
//! The site's lease (DOMAIN §5) is watched the same way (`LeaseWatch`): given the time and
//! when the lease ends, it says once that the end is near (a sixth of the lease before: 12 h
//! of the default 72 h), once that it has come (normal reads refused), and once that a
//! heartbeat renewed it after either.

use std::time::Duration;

/// Longest wait for the peer's next bytes, or for it to take the next bytes written: `net`
/// bounds each read and write of a round by it, and the simulator gives up a quiet round
/// after it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A burst of changes (a clinic filing a batch) within this pause goes in one round.
pub const COALESCE: Duration = Duration::from_millis(20);
/// First pause before asking again for bodies the host did not hold yet (doubling).
pub const BODY_RETRY: Duration = Duration::from_millis(250);
/// First pause after a failed round (doubling).
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between attempts while the host is out of reach.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What a site's lease calls for, each said once as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease ends within a sixth of its length: in `left`, normal reads are refused
    /// unless the host is reached.
    Ending {
        /// Time left.
        left: Duration,
    },
    /// The lease has ended: normal reads are refused, break-glass only.
    Ended,
    /// A heartbeat from the host renewed the lease after it was ending or had ended.
    Renewed,
}

/// Watches a site's lease (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseWatch {
    /// How long before the end it is said to be near, in milliseconds.
    warning: i64,
    said: Option<LeaseEvent>,
}

impl LeaseWatch {
    /// A watch of a lease `lease_ms` long that has said nothing yet.
    pub fn new(lease_ms: i64) -> LeaseWatch {
        LeaseWatch {
            warning: lease_ms / 6,
            said: None,
        }
    }

    /// At `now` (Unix milliseconds), the lease ending at `ends_at` (`None`: no lease, or no
    /// heartbeat received yet): what is to be said now, if anything.
    pub fn observe(&mut self, now: i64, ends_at: Option<i64>) -> Option<LeaseEvent> {
        let ends_at = ends_at?;
        let left = ends_at.saturating_sub(now);
        let event = if left <= 0 {
            Some(LeaseEvent::Ended)
        } else if left <= self.warning {
            Some(LeaseEvent::Ending {
                left: Duration::from_millis(left.unsigned_abs()),
            })
        } else {
            None
        };
        let say = match (self.said, event) {
            (None, None) => None,
            (Some(LeaseEvent::Renewed), None) => None,
            (Some(_), None) => Some(LeaseEvent::Renewed),
            (Some(LeaseEvent::Ending { .. }), Some(LeaseEvent::Ending { .. })) => None,
            (Some(LeaseEvent::Ended), Some(LeaseEvent::Ended)) => None,
            (_, Some(e)) => Some(e),
        };
        if say.is_some() {
            self.said = say;
        }
        say
    }
}

/// What follows a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// The pause before the next round.
    pub pause: Duration,
    /// The pause is the regular interval (a new `every` replaces it).
    pub regular: bool,
    /// The round ended well: the link holds, and changes or pokes start a round early.
    pub connected: bool,
}

/// A site's round timers.
#[derive(Debug, Clone)]
pub struct RoundTimer {
    every: Duration,
    backoff: Duration,
    body_retry: Duration,
}

impl RoundTimer {
    /// Timers for rounds every `every`.
    pub fn new(every: Duration) -> RoundTimer {
        RoundTimer {
            every,
            backoff: BACKOFF_FIRST,
            body_retry: BODY_RETRY,
        }
    }

    /// The regular interval.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Sets the regular interval (`sync_every`, reloaded).
    pub fn set_every(&mut self, every: Duration) {
        self.every = every;
    }

    /// After a round that ended well; `bodies_waiting`: the host did not hold some bodies
    /// this site asked for (their author is still sending them).
    pub fn succeeded(&mut self, bodies_waiting: bool) -> Next {
        self.backoff = BACKOFF_FIRST;
        if bodies_waiting {
            let pause = self.body_retry;
            self.body_retry = (self.body_retry * 2).min(self.every);
            Next {
                pause,
                regular: false,
                connected: true,
            }
        } else {
            self.body_retry = BODY_RETRY;
            Next {
                pause: self.every,
                regular: true,
                connected: true,
            }
        }
    }

    /// After a failed round, with `jitter` added to the backoff (so sites cut off together do
    /// not all come back at once).
    pub fn failed(&mut self, jitter: Duration) -> Next {
        let pause = self.backoff + jitter;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Next {
            pause,
            regular: false,
            connected: false,
        }
    }

    /// The backoff the next failure waits (before its jitter).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_to_the_cap_and_a_good_round_resets_it() {
        let mut t = RoundTimer::new(Duration::from_secs(10));
        let pauses: Vec<u64> = (0..8)
            .map(|_| t.failed(Duration::ZERO).pause.as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            t.failed(Duration::from_millis(300)).pause,
            Duration::from_millis(60_300)
        );
        let next = t.succeeded(false);
        assert_eq!(
            next,
            Next {
                pause: Duration::from_secs(10),
                regular: true,
                connected: true
            }
        );
        assert_eq!(t.failed(Duration::ZERO).pause, BACKOFF_FIRST);
    }

    #[test]
    fn the_lease_end_is_said_once_as_it_nears_once_as_it_comes_and_once_when_renewed() {
        const H: i64 = 3_600_000;
        let mut w = LeaseWatch::new(72 * H);
        let ends = Some(72 * H);
        assert_eq!(w.observe(0, None), None, "no heartbeat yet");
        assert_eq!(w.observe(0, ends), None, "72 h left");
        assert_eq!(
            w.observe(61 * H, ends),
            Some(LeaseEvent::Ending {
                left: Duration::from_secs(11 * 3600)
            })
        );
        assert_eq!(w.observe(62 * H, ends), None, "said once");
        assert_eq!(w.observe(72 * H, ends), Some(LeaseEvent::Ended));
        assert_eq!(w.observe(80 * H, ends), None, "said once");
        // A heartbeat at last: the lease runs 72 h from it.
        assert_eq!(w.observe(81 * H, Some(153 * H)), Some(LeaseEvent::Renewed));
        assert_eq!(w.observe(82 * H, Some(153 * H)), None);
        // Renewed while only ending.
        assert!(matches!(
            w.observe(142 * H, Some(153 * H)),
            Some(LeaseEvent::Ending { .. })
        ));
        assert_eq!(w.observe(143 * H, Some(215 * H)), Some(LeaseEvent::Renewed));
        // A one-hour lease is said to end ten minutes before.
        let mut short = LeaseWatch::new(H);
        assert_eq!(short.observe(0, Some(H)), None);
        assert!(matches!(
            short.observe(H - H / 6, Some(H)),
            Some(LeaseEvent::Ending { .. })
        ));
    }

    #[test]
    fn bodies_not_at_the_host_yet_are_asked_again_sooner_doubling_up_to_the_interval() {
        let mut t = RoundTimer::new(Duration::from_secs(1));
        let pauses: Vec<u64> = (0..4)
            .map(|_| t.succeeded(true).pause.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [250, 500, 1000, 1000]);
        assert!(!t.succeeded(true).regular);
        assert!(t.succeeded(false).regular);
        assert_eq!(t.succeeded(true).pause, BODY_RETRY);
    }
}
