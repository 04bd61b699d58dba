//! What the operators see (issue 19 §2–3): `carnet sites` at the host, through its daemon,
//! as sites connect, fall behind, disconnect and are revoked. Real daemons on 127.0.0.1,
//! every wait bounded.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{enrolled_site, free_port, start_daemon, stop, sync_until_ok, wait_for_socket};
use crate::support::*;

/// Waits (bounded) until `check` holds for the host's `sites --json`; answers that site's entry.
pub fn wait_for_site(
    host: &Carnet,
    site: u64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sites = host.json(&["sites"]);
        let entry = sites
            .as_array()
            .and_then(|s| s.iter().find(|s| s["site_id"] == site).cloned())
            .unwrap_or(Value::Null);
        if check(&entry) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "site {site} never {what}: {sites}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A host (its daemon not started) with the doctor's dossier, and a site bound to the doctor.
pub fn host_and_site() -> (Carnet, Carnet, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = host.doctor_dossier();
    host.pro(NURSE, "infirmier");
    let site = enrolled_site(&host, &address, &[DOCTOR]);
    site.pro(DOCTOR, "medecin");
    site.pro(NURSE, "infirmier");
    host.ok(&["pki", "bind", "--site", "1", "--rpps", NURSE]);
    (host, site, ins)
}

/// `carnet sites` follows a site through connection, lag while it is away, its return and its
/// revocation; its figures agree with the site's own `sync status`. Without a daemon, or at a
/// site, it says why it cannot answer.
#[test]
fn sites_follow_connect_disconnect_and_revocation() {
    let (host, site, ins) = host_and_site();
    let o = host.fails(2, &["sites"]);
    assert!(o.stderr.contains("no host daemon runs"), "{}", o.stderr);
    let o = site.fails(2, &["sites"]);
    assert!(o.stderr.contains("runs at the host"), "{}", o.stderr);

    let _host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let never = wait_for_site(&host, 1, "listed", |s| s.is_object());
    assert_eq!(never["connected"], false, "{never}");
    assert!(
        never["last_contact"].is_null() && never["version"].is_null(),
        "{never}"
    );
    assert_eq!(never["name"], "Clinique");

    let mut site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    wait_for_site(&host, 1, "connected", |s| s["connected"] == true);
    // Consent given in person at the site (once it holds the dossier): a request at the host.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = site.run(&["grant", "add", "--dossier", &ins, "--rpps", NURSE]);
        if o.code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no pending grant: {}", o.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = wait_for_site(&host, 1, "connected and current", |s| {
        s["connected"] == true && s["changes_not_pulled"] == 0 && s["pending_grants"] == 1
    });
    assert_eq!(up["version"], env!("CARGO_PKG_VERSION"), "{up}");
    assert!(up["rounds"].as_u64() >= Some(1), "{up}");
    assert!(up["bytes_received"].as_u64() > Some(0), "{up}");
    assert!(up["last_contact"].is_string(), "{up}");
    assert!(
        up["lease_until"].is_string(),
        "the lease the site reported: {up}"
    );
    let status = site.json(&["sync", "status"]);
    assert_eq!(
        up["quarantine"],
        status["quarantine"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(
        up["conflicts"],
        status["conflicts"].as_array().map_or(0, Vec::len),
        "{up} {status}"
    );
    assert_eq!(
        up["bodies_not_pulled"], status["missing_bodies"],
        "{up} {status}"
    );
    assert_eq!(up["traces_not_sent"], 0, "{up}");

    // Away: the host sees the disconnection, and its log for the site grows unread.
    assert_eq!(stop(&mut site_daemon), Some(0));
    let away = wait_for_site(&host, 1, "disconnected", |s| s["connected"] == false);
    assert!(away["last_contact"].is_string(), "{away}");
    host.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"while away (synthetic)",
    );
    let behind = wait_for_site(&host, 1, "behind", |s| {
        s["changes_not_pulled"].as_u64() >= Some(1)
    });
    assert_eq!(behind["connected"], false, "{behind}");
    let shown = host.ok(&["sites", "show", "1"]).stdout;
    assert!(shown.contains("connected: no"), "{shown}");
    assert!(
        shown.contains("pending grants (consent in person): 1"),
        "{shown}"
    );
    host.fails(4, &["sites", "show", "99"]);

    // Back: it catches up.
    let _site_daemon = start_daemon(&site);
    wait_for_site(&host, 1, "caught up", |s| {
        s["connected"] == true && s["changes_not_pulled"] == 0
    });

    // Revoked through the host's daemon: its connection goes, and the table says why.
    host.ok(&["pki", "revoke", "1"]);
    let revoked = wait_for_site(&host, 1, "revoked and disconnected", |s| {
        s["revoked"] == true && s["connected"] == false
    });
    assert_eq!(revoked["name"], "Clinique", "{revoked}");
}

/// Adds `[http] listen = "127.0.0.1:PORT"` to a replica's `carnet.toml`; answers the address.
pub fn serve_http(replica: &Carnet) -> String {
    let address = format!("127.0.0.1:{}", free_tcp_port());
    let toml = replica.data.join("carnet.toml");
    let mut text = std::fs::read_to_string(&toml).expect("carnet.toml");
    text += &format!("\n[http]\nlisten = \"{address}\"\n");
    std::fs::write(&toml, text).expect("carnet.toml");
    address
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on `address` (HTTP/1.1, one request); answers the status code and the body,
/// waiting (bounded) for the listener to be up.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match std::net::TcpStream::connect(address) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "nothing listens on {address}: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    // (hyper sends a whole body with Content-Length: no chunking to undo.)
    (code, body.to_string())
}

/// One sample of a Prometheus text exposition: its metric name and labels.
type SampleKey = (String, Vec<(String, String)>);

/// A strict reader of the Prometheus text format (0.0.4) for what the daemon writes: `# HELP`
/// and `# TYPE` once per family and before its samples, a known type, valid metric and label
/// names, quoted and escaped label values, a float value, no sample twice. Panics at the
/// first line that breaks a rule; answers the samples.
pub fn parse_exposition(text: &str) -> std::collections::BTreeMap<SampleKey, f64> {
    use std::collections::{BTreeMap, BTreeSet};
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut helped = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name text");
            assert!(name_ok(name) && helped.insert(name.to_string()), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(name_ok(name) && typed.insert(name.to_string()), "{line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: '{line}'"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of '{line}'")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let mut rest = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = Vec::new();
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(name_ok(label), "label name in '{line}'");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c @ ('\\' | '"'))) => value.push(c),
                                other => panic!("bad escape {other:?} in '{line}'"),
                            },
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label value in '{line}'"),
                        }
                    };
                    labels.push((label.to_string(), value));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        assert!(name_ok(name), "metric name in '{line}'");
        assert!(
            typed.contains(name) && helped.contains(name),
            "{name}: a sample before its # HELP and # TYPE"
        );
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "the same sample twice: '{line}'"
        );
    }
    samples
}

/// The value of `name` with `labels` in parsed samples.
fn sample(
    samples: &std::collections::BTreeMap<SampleKey, f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

/// `GET /metrics` on a site and on the host, read by a strict Prometheus text parser: the
/// figures are those of `sync status` and `carnet sites --json`.
#[test]
fn metrics_parse_as_prometheus_text_and_match_status_and_sites() {
    let (host, site, _ins) = host_and_site();
    let host_http = serve_http(&host);
    let site_http = serve_http(&site);
    let _host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let _site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    wait_for_site(&host, 1, "connected", |s| s["connected"] == true);
    // A round through the site's daemon: its Hello says its lease, confirmed by the first.
    sync_until_ok(&site, Duration::from_secs(20));
    wait_for_site(&host, 1, "current, its lease known", |s| {
        s["changes_not_pulled"] == 0 && s["lease_until"].is_string()
    });
    let before = site.json(&["sync", "status"]);
    let (code, text) = http_get(&site_http, "/metrics");
    assert_eq!(code, 200, "{text}");
    let at_site = parse_exposition(&text);
    let status = site.json(&["sync", "status"]);
    // Counters: between the status read before and the one after (a round may run between).
    for (name, labels, key) in [
        ("carnet_rounds_total", [("outcome", "ok")], "rounds_ok"),
        (
            "carnet_rounds_total",
            [("outcome", "failed")],
            "rounds_failed",
        ),
        ("carnet_bytes_total", [("direction", "sent")], "bytes_sent"),
        (
            "carnet_bytes_total",
            [("direction", "received")],
            "bytes_received",
        ),
    ] {
        let value = sample(&at_site, name, &labels).expect(name);
        let (low, high) = (
            before["link"][key].as_f64().expect(key),
            status["link"][key].as_f64().expect(key),
        );
        assert!(
            low <= value && value <= high,
            "{name}{labels:?}: {low} <= {value} <= {high}"
        );
    }
    let figure = |name: &str| sample(&at_site, name, &[]);
    assert_eq!(figure("carnet_connected"), Some(1.0), "{text}");
    assert_eq!(
        figure("carnet_pending_changes"),
        status["pending"].as_f64(),
        "{text}"
    );
    assert_eq!(
        figure("carnet_conflicts"),
        status["conflicts"].as_array().map(|a| a.len() as f64)
    );
    assert_eq!(
        figure("carnet_missing_bodies"),
        status["missing_bodies"].as_f64()
    );
    assert_eq!(
        figure("carnet_quarantine"),
        status["quarantine"].as_array().map(|q| q.len() as f64)
    );
    assert_eq!(
        figure("carnet_inbox_rejected"),
        status["inbox"]["rejected"].as_f64(),
        "{text}"
    );
    assert_eq!(
        figure("carnet_inbox_orphans"),
        status["inbox"]["orphans"]
            .as_array()
            .map(|o| o.len() as f64),
        "{text}"
    );
    assert_eq!(
        figure("carnet_cursor_lag"),
        status["cursor_lag"].as_f64(),
        "{text}"
    );
    assert!(sample(&at_site, "carnet_rounds_total", &[("outcome", "ok")]) >= Some(1.0));
    let lease = figure("carnet_lease_remaining_seconds").expect("lease remaining");
    assert!(lease > 0.0 && lease <= 72.0 * 3600.0, "{lease}");
    assert!(!text.contains(&host.json(&["dossier", "list"])[0]["ins"].to_string()));

    let (code, text) = http_get(&host_http, "/metrics");
    assert_eq!(code, 200, "{text}");
    let at_host = parse_exposition(&text);
    let sites = host.json(&["sites"]);
    let one = &sites[0];
    let per_site = |name: &str| sample(&at_host, name, &[("site", "1")]);
    assert_eq!(sample(&at_host, "carnet_sites", &[]), Some(1.0));
    assert_eq!(per_site("carnet_site_connected"), Some(1.0), "{text}");
    assert_eq!(per_site("carnet_site_revoked"), Some(0.0));
    assert_eq!(
        per_site("carnet_site_changes_not_pulled"),
        one["changes_not_pulled"].as_f64(),
        "{text} {sites}"
    );
    assert_eq!(
        per_site("carnet_site_traces_not_sent"),
        one["traces_not_sent"].as_f64()
    );
    assert_eq!(
        per_site("carnet_site_quarantine"),
        one["quarantine"].as_f64()
    );
    assert_eq!(
        per_site("carnet_site_pending_grants"),
        one["pending_grants"].as_f64()
    );
    assert!(per_site("carnet_site_rounds_total") >= Some(1.0), "{text}");
    assert!(
        per_site("carnet_site_lease_remaining_seconds") > Some(0.0),
        "{text}"
    );

    // The page asks for its token; /metrics does not; nothing else is served.
    let url = site.json(&["ui"])["url"].as_str().expect("url").to_string();
    let token = url.split("token=").nth(1).expect("token");
    assert_eq!(http_get(&site_http, "/").0, 401);
    assert_eq!(http_get(&site_http, "/?token=0000").0, 401);
    let (code, page) = http_get(&site_http, &format!("/?token={token}"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Connecté au serveur national"), "{page}");
    assert_eq!(http_get(&site_http, "/other").0, 404);
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(site.data.join("ui.token"))
            .expect("token file")
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o777, 0o600);
}

/// Runs Debian's `chromium` headless with `args` (bounded); answers its stdout. Fails, saying
/// how to install it, when it is missing: the page is checked in a real browser or not at all.
fn chromium(profile: &std::path::Path, args: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "chromium could not run ({e}): the status page is tested in Debian's headless \
                 chromium; install it with `apt-get install -y chromium` (.ci/run does when it is absent)"
            )
        });
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "chromium {args:?}: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("stdout read")
}

/// The text of the element carrying `data-figure="NAME"` in `dom` (the first one after
/// `after`, a marker), or its `data-value` when it has one.
fn figure(dom: &str, after: &str, name: &str) -> String {
    let start = dom
        .find(after)
        .unwrap_or_else(|| panic!("no {after} in the page"));
    let dom = &dom[start..];
    let at = dom
        .find(&format!("data-figure=\"{name}\""))
        .unwrap_or_else(|| panic!("no figure {name} in the page:\n{dom}"));
    let rest = &dom[at..];
    let tag_end = rest.find('>').expect("tag end");
    if let Some(v) = rest[..tag_end].split("data-value=\"").nth(1) {
        return v.split('"').next().unwrap_or_default().to_string();
    }
    let text = &rest[tag_end + 1..];
    text[..text.find('<').expect("element end")]
        .trim()
        .to_string()
}

/// Saves a screenshot of `url` at `path`; checks it is a PNG of some size.
fn screenshot(profile: &std::path::Path, url: &str, path: &std::path::Path) {
    chromium(profile, &[&format!("--screenshot={}", path.display()), url]);
    let png = std::fs::read(path).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );
}

/// The status page in headless Chromium, against real daemons: the host's sites table, then
/// a site's page once the host is out of reach, with changes waiting and its failures in
/// plain French; the figures are those of `carnet sites` and `sync status`. Screenshots go to
/// the target folder (`status-page-site.png`, `status-page-host.png`): the README shows one.
#[test]
fn the_status_page_in_chromium_shows_what_sync_status_says() {
    let (host, site, ins) = host_and_site();
    let host_http = serve_http(&host);
    serve_http(&site);
    let mut host_daemon = start_daemon(&host);
    wait_for_socket(&host);
    let _site_daemon = start_daemon(&site);
    wait_for_socket(&site);
    sync_until_ok(&site, Duration::from_secs(20));
    let up = wait_for_site(&host, 1, "current, its lease known", |s| {
        s["connected"] == true && s["changes_not_pulled"] == 0 && s["lease_until"].is_string()
    });
    let profile = tempfile::tempdir().expect("a browser profile");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));

    // The host: its sites table.
    let url = host.json(&["ui"])["url"].as_str().expect("url").to_string();
    assert!(
        url.starts_with(&format!("http://{host_http}/?token=")),
        "{url}"
    );
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    assert!(dom.contains("serveur national"), "{dom}");
    let row = "data-site=\"1\"";
    assert_eq!(figure(&dom, row, "state"), "connecté");
    assert_eq!(
        figure(&dom, row, "changes_not_pulled"),
        up["changes_not_pulled"].to_string()
    );
    assert_eq!(
        figure(&dom, row, "traces_not_sent"),
        up["traces_not_sent"].to_string()
    );
    assert_eq!(
        figure(&dom, row, "quarantine"),
        up["quarantine"].to_string()
    );
    assert_eq!(figure(&dom, "<body", "sites_connected"), "1");
    screenshot(profile.path(), &url, &shots.join("status-page-host.png"));

    // The site, the host gone: a round fails, and changes wait.
    assert_eq!(stop(&mut host_daemon), Some(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.run(&["sync", "now"]).code == 0 {
        assert!(
            Instant::now() < deadline,
            "the site still syncs with its host stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    site.pro(NURSE, "infirmier");
    site.pro(PHARMACIST, "pharmacien");
    let doc = site.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"offline (synthetic)",
    );
    crate::inbox::refused(&site, "cr.pdf");
    let status = site.json(&["sync", "status"]);
    assert_eq!(status["link"]["connected"], false, "{status}");
    let url = site.json(&["ui"])["url"].as_str().expect("url").to_string();
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let status = site.json(&["sync", "status"]);
    assert!(dom.contains("Hors ligne"), "{dom}");
    assert_eq!(figure(&dom, "<body", "connected"), "false");
    for name in ["pending", "missing_bodies", "pending_traces", "cursor_lag"] {
        assert_eq!(
            figure(&dom, "<body", name),
            status[name].to_string(),
            "{name}: {status}"
        );
    }
    assert!(status["pending"].as_u64() >= Some(3), "{status}");
    for name in ["quarantine", "conflicts"] {
        assert_eq!(
            figure(&dom, "<body", name),
            status[name].as_array().map_or(0, Vec::len).to_string(),
            "{name}: {status}"
        );
    }
    assert_eq!(status["inbox"]["rejected"], 1, "{status}");
    for (name, field) in [("inbox_rejected", "rejected"), ("inbox_orphans", "orphans")] {
        let value = &status["inbox"][field];
        let count = value
            .as_array()
            .map_or_else(|| value.to_string(), |a| a.len().to_string());
        assert_eq!(figure(&dom, "<body", name), count, "{name}: {status}");
    }
    let lease_s: i64 = figure(&dom, "<body", "lease_remaining_s")
        .parse()
        .expect("seconds");
    assert!(lease_s > 71 * 3600 && lease_s <= 72 * 3600, "{lease_s}");
    assert!(
        dom.contains("n'a pas pu être joint"),
        "the failure in plain French:\n{dom}"
    );
    // Counts only: no title, body or identity of a patient.
    for secret in ["offline (synthetic)", "EXEMPLE", "Camille", &ins, &doc] {
        assert!(!dom.contains(secret), "the page shows '{secret}'");
    }
    screenshot(profile.path(), &url, &shots.join("status-page-site.png"));
}

/// A rogue site (a valid certificate, speaking the wire itself) says its version is markup: the
/// host refuses its Hello, keeps no version for it, and counts the refusal against it; neither
/// `carnet sites`, `/metrics` nor the host's page carries what it sent.
#[test]
fn a_rogue_sites_version_never_reaches_the_operators_views() {
    use carnet_syncd::session::{Msg, SiteAbout};
    let address = format!("127.0.0.1:{}", free_port());
    let host = Carnet::empty();
    host.ok(&["init", "--role", "host", "--listen", &address]);
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let (_site, bundle) = crate::daemon::enrolled_site_and_bundle(&host, &address, &[]);
    let host_http = serve_http(&host);
    let _daemon = start_daemon(&host);
    wait_for_socket(&host);
    let rogue = crate::rogue::Rogue::connect(&bundle);
    let markup = "<script>alert(1)</script>";
    let hello = |version: &str| Msg::Hello {
        site: rogue.site,
        cursor: 0,
        outbox_acked: 0,
        chain_key: crate::rogue::ROGUE_CHAIN_KEY,
        about: SiteAbout {
            version: version.into(),
            quarantine: 7,
            ..SiteAbout::default()
        },
        renewal: None,
    };
    let replies = rogue.session(vec![hello(markup)]);
    assert!(
        matches!(&replies[..], [Msg::Error(e)] if e.contains("version")),
        "{replies:?}"
    );
    let seen = wait_for_site(&host, u64::from(rogue.site), "refused", |s| {
        s["errors"]["refused"] == 1
    });
    assert!(seen["version"].is_null(), "{seen}");
    assert!(
        seen["quarantine"].is_null(),
        "nothing of the refused Hello is kept: {seen}"
    );
    assert!(
        seen["last_error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("version") && !e.contains('<')),
        "{seen}"
    );
    let (_, metrics) = http_get(&host_http, "/metrics");
    let samples = parse_exposition(&metrics);
    assert_eq!(
        sample(
            &samples,
            "carnet_site_errors_total",
            &[("site", &rogue.site.to_string()), ("kind", "refused")]
        ),
        Some(1.0),
        "{metrics}"
    );
    let url = host.json(&["ui"])["url"].as_str().expect("url").to_string();
    let token = url.split("token=").nth(1).expect("token");
    let (_, page) = http_get(&host_http, &format!("/?token={token}"));
    assert!(
        !page.contains("<script") && !metrics.contains("<script"),
        "{page}"
    );
    // A plain version is taken.
    let replies = rogue.session(vec![hello("0.1.0")]);
    assert!(
        matches!(replies.first(), Some(Msg::Welcome { .. })),
        "{replies:?}"
    );
    let seen = wait_for_site(&host, u64::from(rogue.site), "heard", |s| {
        s["version"] == "0.1.0"
    });
    assert_eq!(seen["quarantine"], 7, "shown as the site says: {seen}");
}
