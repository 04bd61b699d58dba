//! `GET /metrics`: the daemon's figures in the Prometheus text exposition format (version
//! 0.0.4), rendered from the same values `carnet sync status` (a site) and `carnet sites` (the
//! host) show, so the three never disagree.
//!
//! Invariants: every family has one `# HELP` and one `# TYPE` line before its samples; label
//! values are site ids and fixed words (error kinds, outcomes), never patient data, and are
//! escaped anyway; a figure the daemon does not know yet (a site not heard from since the host
//! started) is left out rather than shown as 0.

use std::fmt::Write;

use carnet_store::time::Millis;

use crate::api::SyncStatus;
use crate::fleet::SiteOverview;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition being written: families in order, each with its samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

/// One sample: its labels (name, value) and its value.
type Sample<'a> = (Vec<(&'a str, String)>, f64);

/// A figure of one site, if known.
type SiteFigure<'a> = &'a dyn Fn(&SiteOverview) -> Option<f64>;

/// A per-site family: name, type, help, and the figure.
type SiteFamily<'a> = (&'a str, &'a str, &'a str, SiteFigure<'a>);

impl Exposition {
    /// A family and its samples; nothing when there is no sample.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: Vec<Sample<'_>>) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(self.out, "{name}{labels} {value}");
        }
    }

    /// One unlabelled sample, if known.
    fn gauge(&mut self, name: &str, help: &str, value: Option<f64>) {
        self.family(
            name,
            "gauge",
            help,
            value.map(|v| (Vec::new(), v)).into_iter().collect(),
        );
    }
}

/// Escapes a label value as the format asks (backslash, double quote, line feed).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(ms: Millis) -> f64 {
    ms as f64 / 1000.0
}

/// A site's metrics, from its `sync status` (with the daemon's link) at `now`; `lease_ms` is
/// the site's lease.
pub fn site(status: &SyncStatus, lease_ms: Option<Millis>, now: Millis) -> String {
    let mut e = Exposition::default();
    let link = status.link.clone().unwrap_or_default();
    e.gauge(
        "carnet_connected",
        "1 while the site's connection to the host holds.",
        Some(f64::from(u8::from(link.connected))),
    );
    e.gauge(
        "carnet_last_sync_timestamp_seconds",
        "End of the last successful round (Unix time).",
        link.last_sync.map(seconds),
    );
    e.family(
        "carnet_rounds_total",
        "counter",
        "Sync rounds since the daemon started, by outcome.",
        vec![
            (vec![("outcome", "ok".into())], link.rounds_ok as f64),
            (
                vec![("outcome", "failed".into())],
                link.rounds_failed as f64,
            ),
        ],
    );
    e.family(
        "carnet_bytes_total",
        "counter",
        "UDP bytes of successful rounds since the daemon started, by direction.",
        vec![
            (vec![("direction", "sent".into())], link.bytes_sent as f64),
            (
                vec![("direction", "received".into())],
                link.bytes_received as f64,
            ),
        ],
    );
    e.family(
        "carnet_errors_total",
        "counter",
        "Failed rounds since the daemon started, by kind.",
        link.errors
            .iter()
            .map(|(kind, n)| (vec![("kind", kind.clone())], *n as f64))
            .collect(),
    );
    e.gauge(
        "carnet_pending_changes",
        "Changes made here that the host has not acknowledged.",
        Some(status.pending as f64),
    );
    e.gauge(
        "carnet_pending_traces",
        "Trace entries written here that the host had not acknowledged at the last round.",
        status.pending_traces.map(|n| n as f64),
    );
    e.gauge(
        "carnet_inbox_rejected",
        "Files the inbox refused, waiting in rejected/ for a person (`carnet inbox list`).",
        status.inbox.as_ref().map(|i| i.rejected as f64),
    );
    e.gauge(
        "carnet_inbox_orphans",
        "Files of the inbox without the other half of their pair for 10 minutes or more.",
        status.inbox.as_ref().map(|i| i.orphans.len() as f64),
    );
    e.gauge(
        "carnet_missing_bodies",
        "Documents whose body has not arrived.",
        Some(status.missing_bodies as f64),
    );
    e.gauge(
        "carnet_cursor_lag",
        "Entries of the host's log for this site not pulled yet, as of the last round.",
        status.cursor_lag.map(|n| n as f64),
    );
    e.gauge(
        "carnet_lease_remaining_seconds",
        "Seconds until the lease runs out (negative once over: break-glass only).",
        lease_ms
            .filter(|_| status.authority_as_of > 0)
            .map(|lease| seconds(status.authority_as_of + lease - now)),
    );
    e.gauge(
        "carnet_conflicts",
        "Documents with concurrent replacements.",
        Some(status.conflicts.len() as f64),
    );
    e.gauge(
        "carnet_quarantine",
        "Documents in quarantine (returned by the host).",
        Some(status.quarantine.len() as f64),
    );
    e.out
}

/// The host's metrics, one sample per site (label `site`, its id), at `now`.
pub fn host(sites: &[SiteOverview], now: Millis) -> String {
    let mut e = Exposition::default();
    e.gauge(
        "carnet_sites",
        "Sites enrolled (revoked ones included).",
        Some(sites.len() as f64),
    );
    e.gauge(
        "carnet_sites_connected",
        "Sites with a connection open now.",
        Some(sites.iter().filter(|s| s.connected).count() as f64),
    );
    let per_site = |value: SiteFigure<'_>| -> Vec<Sample<'static>> {
        sites
            .iter()
            .filter_map(|s| value(s).map(|v| (vec![("site", s.site.to_string())], v)))
            .collect()
    };
    let bool = |b: bool| Some(f64::from(u8::from(b)));
    let count = |n: Option<u64>| n.map(|n| n as f64);
    let families: [SiteFamily<'_>; 17] = [
        (
            "carnet_site_connected",
            "gauge",
            "1 while the site has a connection open.",
            &|s| bool(s.connected),
        ),
        (
            "carnet_site_revoked",
            "gauge",
            "1 once the site is revoked.",
            &|s| bool(s.revoked),
        ),
        (
            "carnet_site_last_contact_timestamp_seconds",
            "gauge",
            "The last time the host heard from the site (Unix time).",
            &|s| s.last_contact.map(seconds),
        ),
        (
            "carnet_site_rounds_total",
            "counter",
            "Rounds served to the site since the host's daemon started.",
            &|s| Some(s.rounds as f64),
        ),
        (
            "carnet_site_bytes_received_total",
            "counter",
            "Bytes received from the site on its streams since the host's daemon started.",
            &|s| Some(s.bytes_received as f64),
        ),
        (
            "carnet_site_bytes_sent_total",
            "counter",
            "Bytes sent to the site on its streams since the host's daemon started.",
            &|s| Some(s.bytes_sent as f64),
        ),
        (
            "carnet_site_changes_not_pulled",
            "gauge",
            "Entries of the site's log it has not pulled.",
            &|s| count(s.changes_not_pulled),
        ),
        (
            "carnet_site_changes_not_pushed",
            "gauge",
            "The site's changes the host has not received (as the site last said).",
            &|s| count(s.changes_not_pushed),
        ),
        (
            "carnet_site_traces_not_sent",
            "gauge",
            "The site's trace entries the host does not hold (as far as the host can tell).",
            &|s| count(s.traces_not_sent),
        ),
        (
            "carnet_site_bodies_not_pulled",
            "gauge",
            "Documents whose body the site lacks (as the site last said).",
            &|s| count(s.bodies_not_pulled),
        ),
        (
            "carnet_site_bodies_owed",
            "gauge",
            "Bodies of the site's documents the host does not hold whole yet.",
            &|s| Some(s.bodies_owed as f64),
        ),
        (
            "carnet_site_lease_remaining_seconds",
            "gauge",
            "Seconds until the site's lease runs out (as the site last said; negative once over).",
            &|s| s.lease_until.map(|t| seconds(t - now)),
        ),
        (
            "carnet_site_quarantine",
            "gauge",
            "Documents in the site's quarantine (as the site last said).",
            &|s| count(s.quarantine),
        ),
        (
            "carnet_site_returned",
            "gauge",
            "Documents the host returned to the site, not yet confirmed.",
            &|s| Some(s.returned as f64),
        ),
        (
            "carnet_site_conflicts",
            "gauge",
            "Documents with concurrent replacements at the site (as the site last said).",
            &|s| count(s.conflicts),
        ),
        (
            "carnet_site_pending_grants",
            "gauge",
            "Consent given in person at the site, waiting for the host's decision.",
            &|s| Some(s.pending_grants as f64),
        ),
        (
            "carnet_site_pending_pins",
            "gauge",
            "Pins the site asked for, waiting for the host's decision.",
            &|s| Some(s.pending_pins as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        e.family(name, kind, help, per_site(value));
    }
    e.family(
        "carnet_site_errors_total",
        "counter",
        "Errors met with the site since the host's daemon started, by kind.",
        sites
            .iter()
            .flat_map(|s| {
                s.errors.iter().map(|(kind, n)| {
                    (
                        vec![("site", s.site.to_string()), ("kind", kind.clone())],
                        *n as f64,
                    )
                })
            })
            .collect(),
    );
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_announced_once_and_labels_escaped() {
        let mut e = Exposition::default();
        e.family(
            "x_total",
            "counter",
            "h",
            vec![
                (vec![("kind", "a\"b\\c\nd".into())], 1.0),
                (vec![("kind", "e".into())], 2.0),
            ],
        );
        e.gauge("y", "unknown", None);
        assert_eq!(
            e.out,
            "# HELP x_total h\n# TYPE x_total counter\nx_total{kind=\"a\\\"b\\\\c\\nd\"} 1\nx_total{kind=\"e\"} 2\n"
        );
    }
}
