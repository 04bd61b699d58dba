//! The host's view of each site, for the national operator (`carnet sites`, `/metrics`, the
//! status page): when it was last heard from, whether it is connected, how far behind it is,
//! its lease, quarantine, pending requests, Carnet version and last error; and the path to it
//! as the host's connections measured it, which the next one starts from.
//!
//! Two sources, joined in `overview`: what the replica knows durably (the register of sites,
//! each site's log head, the changes, trace entries and bodies the host holds from it, the
//! requests it has not decided) and what the running daemon saw (`Fleet`, in memory: connections,
//! rounds, bytes, errors, and the `SiteAbout` of the site's last `Hello`). After a restart of
//! the host's daemon the in-memory part is empty until each site's next round, but for the
//! path to each site: that is also kept in the host's replica (`HostSync::set_link_path`, when
//! worth a record: `congestion::Remembered::worth_recording`) and read back when the daemon
//! starts (`Fleet::remember`), so a restarted daemon's connections start from it too.
//!
//! Invariants: a site enters `Fleet` only once its certificate has been matched to the
//! register (`net`), or with a path recorded for it when it is enrolled and not revoked, so
//! its size is bounded by the number of enrolled sites; what a site says
//! of itself is only shown (it may lie about its own backlog), and its version string was
//! checked by the session (`SiteAbout::check`); nothing here names a patient: ids and counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use carnet_store::ids::SiteId;
use carnet_store::replica::{Host, LinkPath, RequestKind};
use carnet_store::time::Millis;
use serde::{Deserialize, Serialize};

use crate::congestion::{self, Remembered};
use crate::error::{Error, Result};
use crate::session::SiteAbout;

/// Most distinct error kinds counted per site (kinds are a fixed set; this only bounds it).
const ERROR_KINDS_MAX: usize = 16;

/// What the host's daemon saw of one site since it started.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// Connections open now.
    pub(crate) connections: u64,
    last_contact: Option<Millis>,
    /// The site's last `Hello`: what it said of itself, and the host's applied mark then.
    about: Option<(SiteAbout, u64)>,
    /// The site's position in its log: its last `Hello`, `Pull`, or the end of the last batch
    /// the host sent it.
    cursor: Option<u64>,
    rounds: u64,
    /// Streams served to their end (rounds, body transfers, and any other).
    pub(crate) streams: u64,
    bytes_received: u64,
    bytes_sent: u64,
    pub(crate) errors: BTreeMap<&'static str, u64>,
    last_error: Option<(Millis, String)>,
    /// The path to it as the host's connections measured it sending (`congestion::seen`), when,
    /// and when by the wall clock.
    path: Option<(Remembered, Instant, Millis)>,
    /// The path last recorded in the host's replica, and when it was measured.
    recorded: Option<(Remembered, Instant)>,
    /// Its last connection started at the path remembered (`None`: none since the daemon
    /// started).
    resumed: Option<bool>,
}

/// The host daemon's in-memory record of each site (see the module doc).
#[derive(Debug, Default)]
pub struct Fleet {
    sites: Mutex<HashMap<u32, Seen>>,
}

impl Fleet {
    fn with(&self, site: SiteId, now: Millis, f: impl FnOnce(&mut Seen)) {
        if let Ok(mut sites) = self.sites.lock() {
            let seen = sites.entry(site.0).or_default();
            seen.last_contact = Some(now);
            f(seen);
        }
    }

    /// A connection of `site` was admitted.
    pub fn connected(&self, site: SiteId, now: Millis) {
        self.with(site, now, |s| s.connections += 1);
    }

    /// A connection of `site` ended.
    pub fn disconnected(&self, site: SiteId, now: Millis) {
        self.with(site, now, |s| {
            s.connections = s.connections.saturating_sub(1)
        });
    }

    /// `site` began a round: what it said of itself, and the changes of it the host held then.
    pub fn hello(&self, site: SiteId, now: Millis, cursor: u64, about: SiteAbout, applied: u64) {
        self.with(site, now, |s| {
            s.cursor = Some(cursor);
            s.about = Some((about, applied));
        });
    }

    /// `site` is at `cursor` in its log (it asked to pull after it, or was sent up to it: a
    /// `Pull` sent ahead, or batches still on their way, put it ahead of what the site applied
    /// by at most two answers).
    pub fn cursor(&self, site: SiteId, now: Millis, cursor: u64) {
        self.with(site, now, |s| s.cursor = Some(cursor));
    }

    /// A stream of `site` ended: one more round if it began with a `Hello`, and its bytes.
    pub fn stream_ended(&self, site: SiteId, now: Millis, round: bool, received: u64, sent: u64) {
        self.with(site, now, |s| {
            s.streams += 1;
            s.rounds += u64::from(round);
            s.bytes_received += received;
            s.bytes_sent += sent;
        });
    }

    /// The host refused something of `site` (`kind`: a word for metrics; `message`: ids only).
    pub fn error(&self, site: SiteId, now: Millis, kind: &'static str, message: String) {
        self.with(site, now, |s| {
            if s.errors.len() < ERROR_KINDS_MAX || s.errors.contains_key(kind) {
                *s.errors.entry(kind).or_default() += 1;
            }
            s.last_error = Some((now, message));
        });
    }

    /// The record to write in the host's replica of what a connection of `site` measured of
    /// the path to it (`seen`), if worth it over the last one written
    /// (`Remembered::worth_recording`).
    pub fn worth_recording(
        &self,
        site: SiteId,
        now: Millis,
        seen: &congestion::Seen,
    ) -> Option<LinkPath> {
        let (path, at) = seen.measured?;
        let sites = self.sites.lock().ok()?;
        let recorded = sites.get(&site.0).and_then(|s| s.recorded);
        path.worth_recording(at, recorded)
            .then(|| path.record(u64::try_from(wall_clock(now, at)).unwrap_or(0)))
    }

    /// What a connection of `site` saw of the path to it (`seen`: kept if measured later than
    /// what is kept, as a site may hold several connections), whether it resumed at the path
    /// remembered, and whether its record was written (`worth_recording`).
    pub fn link(&self, site: SiteId, now: Millis, seen: congestion::Seen, recorded: bool) {
        self.with(site, now, |s| {
            s.resumed = Some(seen.resumed);
            if let Some((path, at)) = seen.measured
                && s.path.is_none_or(|(_, kept, _)| kept <= at)
            {
                s.path = Some((path, at, wall_clock(now, at)));
                if recorded {
                    s.recorded = Some((path, at));
                }
            }
        });
    }

    /// The paths the host's replica holds (`HostSync::link_paths`, recorded by earlier runs of
    /// the daemon) to the sites among `enrolled`, measured within `REMEMBERED_FOR` of `now`: a
    /// restarted daemon starts each site's next connection from them. Not a contact with the
    /// site; a site the daemon has seen since keeps what it saw.
    pub fn remember(
        &self,
        paths: Vec<(SiteId, LinkPath)>,
        enrolled: impl Fn(SiteId) -> bool,
        now: Millis,
    ) {
        let Ok(mut sites) = self.sites.lock() else {
            return;
        };
        let now_ms = u64::try_from(now).unwrap_or(0);
        for (site, record) in paths.into_iter().filter(|(site, _)| enrolled(*site)) {
            let Some(path) = Remembered::from_record(&record, now_ms) else {
                continue;
            };
            let age = std::time::Duration::from_millis(now_ms.saturating_sub(record.measured_at));
            let Some(at) = Instant::now().checked_sub(age) else {
                continue;
            };
            let seen = sites.entry(site.0).or_default();
            if seen.path.is_none() {
                seen.path = Some((path, at, Millis::try_from(record.measured_at).unwrap_or(0)));
                seen.recorded = Some((path, at));
            }
        }
    }

    /// The path to `site` a connection of the host measured within `REMEMBERED_FOR`, if a
    /// resumption may start from it (`Remembered::usable`): the site's next connection starts
    /// from it (`congestion`, careful resume).
    pub fn path(&self, site: SiteId) -> Option<Remembered> {
        let sites = self.sites.lock().ok()?;
        let (path, at, _) = sites.get(&site.0)?.path?;
        (at.elapsed() <= congestion::REMEMBERED_FOR && path.usable()).then_some(path)
    }

    pub(crate) fn seen(&self) -> HashMap<u32, Seen> {
        self.sites.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// When `at` was by the wall clock, `now` being now.
fn wall_clock(now: Millis, at: Instant) -> Millis {
    now.saturating_sub(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

/// One site as the operator sees it (`carnet sites`). `None`: not known since the host's
/// daemon started (the site has not connected since).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteOverview {
    /// Site id.
    pub site: u32,
    /// Name in the register.
    pub name: String,
    /// FINESS in the register.
    pub finess: String,
    /// Revoked: the host refuses it.
    pub revoked: bool,
    /// A connection of the site is open now.
    pub connected: bool,
    /// The last time the host heard from it.
    pub last_contact: Option<Millis>,
    /// Its Carnet version (its last `Hello`).
    pub version: Option<String>,
    /// The last sequence of its log at the host.
    pub log_head: u64,
    /// Entries of its log it has not pulled.
    pub changes_not_pulled: Option<u64>,
    /// Documents whose body it has not received (its last `Hello`).
    pub bodies_not_pulled: Option<u64>,
    /// Its changes the host has not received (its last `Hello`, less what the host applied
    /// since).
    pub changes_not_pushed: Option<u64>,
    /// Its trace entries the host does not hold (its trace head at its last `Hello`, less
    /// what the host holds now).
    pub traces_not_sent: Option<u64>,
    /// Bodies of its documents the host applied and does not hold whole yet.
    pub bodies_owed: u64,
    /// Documents the host returned to it, not yet confirmed in its quarantine.
    pub returned: u64,
    /// When its lease runs out (its last `Hello`).
    pub lease_until: Option<Millis>,
    /// Documents in its quarantine (its last `Hello`).
    pub quarantine: Option<u64>,
    /// Documents with concurrent replacements there (its last `Hello`).
    pub conflicts: Option<u64>,
    /// Consent given in person there, waiting for the host's decision.
    pub pending_grants: u64,
    /// Pins it asked for, waiting for the host's decision.
    pub pending_pins: u64,
    /// Rounds served since the host's daemon started.
    pub rounds: u64,
    /// Bytes received from it and sent to it on its streams since then.
    pub bytes_received: u64,
    /// See `bytes_received`.
    pub bytes_sent: u64,
    /// Errors by kind since then.
    pub errors: BTreeMap<String, u64>,
    /// The last one, and when.
    pub last_error: Option<(Millis, String)>,
    /// The path to it as the host last measured it sending (since the host's daemon started,
    /// or within the hour before, read from the host's replica).
    pub link: Option<LinkSeen>,
}

/// The path from the host to a site, as a connection measured it (no patient data: a rate
/// and a round trip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSeen {
    /// Delivery rate, bytes per second.
    pub rate: u64,
    /// Smallest round trip, microseconds.
    pub min_rtt_micros: u64,
    /// When it was measured.
    pub measured_at: Millis,
    /// The site's last connection since the host's daemon started began at the path measured
    /// before it; `None`: no connection since (the path was read from the host's replica).
    pub last_connection_resumed: Option<bool>,
}

/// Every enrolled site (or only `only`), from the register, the replica and `fleet`.
pub fn overview(host: Host<'_>, fleet: &Fleet, only: Option<u32>) -> Result<Vec<SiteOverview>> {
    let register = crate::enrol::sites(&host)?;
    let replica = host.sync();
    if let Some(site) = only
        && !register.contains_key(&site)
    {
        return Err(Error::Store(carnet_store::Error::NotFound(format!(
            "no enrolled site {site} (carnet pki list)"
        ))));
    }
    let seen = fleet.seen();
    let requests = host.authority().site_requests()?;
    let mut out = Vec::new();
    for (&id, record) in register
        .iter()
        .filter(|(id, _)| only.is_none_or(|o| o == **id))
    {
        let site = SiteId(id);
        let s = seen.get(&id).cloned().unwrap_or_default();
        let log_head = replica.log_head(site)?;
        let (traces_held, _) = replica.trace_head_held(site)?;
        let applied = replica.applied_mark(site)?;
        let about = s.about.as_ref();
        let pending = |kind: RequestKind| {
            requests
                .iter()
                .filter(|r| r.site == site && r.kind == kind)
                .count() as u64
        };
        out.push(SiteOverview {
            site: id,
            name: record.name.clone(),
            finess: record.finess.clone(),
            revoked: record.revoked,
            connected: s.connections > 0 && !record.revoked,
            last_contact: s.last_contact,
            version: about.map(|(a, _)| a.version.clone()),
            log_head,
            changes_not_pulled: s.cursor.map(|c| log_head.saturating_sub(c)),
            bodies_not_pulled: about.map(|(a, _)| a.missing_bodies),
            changes_not_pushed: about
                .map(|(a, then)| a.pending.saturating_sub(applied.saturating_sub(*then))),
            traces_not_sent: about.map(|(a, _)| a.trace_head.saturating_sub(traces_held)),
            bodies_owed: replica.bodies_owed_by(site)?.len() as u64,
            returned: replica.returned_to(site)?.len() as u64,
            lease_until: about.and_then(|(a, _)| a.lease_until),
            quarantine: about.map(|(a, _)| a.quarantine),
            conflicts: about.map(|(a, _)| a.conflicts),
            pending_grants: pending(RequestKind::Consent),
            pending_pins: pending(RequestKind::Pin),
            rounds: s.rounds,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            errors: s
                .errors
                .iter()
                .map(|(k, n)| ((*k).to_string(), *n))
                .collect(),
            last_error: s.last_error.clone(),
            link: s.path.map(|(path, _, measured_at)| LinkSeen {
                rate: path.rate,
                min_rtt_micros: u64::try_from(path.min_rtt.as_micros()).unwrap_or(u64::MAX),
                measured_at,
                last_connection_resumed: s.resumed,
            }),
        });
    }
    Ok(out)
}

/// A word for an error's kind, for counters: `network` (a socket or the peer went away),
/// `certificate` (PKI or TLS), `integrity` (the store found tampering), `store` (the store
/// refused or failed), `refused` (a protocol or policy refusal).
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io(_) => "network",
        Error::Pki(_) | Error::Tls(_) => "certificate",
        Error::Store(carnet_store::Error::Integrity(_)) => "integrity",
        Error::Store(_) => "store",
        Error::Invalid(_) => "refused",
    }
}
