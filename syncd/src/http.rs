//! The daemon's small HTTP listener (`[http] listen` in `carnet.toml`, off unless set): `GET
//! /metrics` in the Prometheus text format (`metrics`) and `GET /?token=…`, the status page for
//! the people in the clinic (`status_page`). HTTP/1.1 on TCP, hyper, no TLS.
//!
//! Invariants: it listens on a loopback address unless `carnet.toml` says `allow_remote`
//! (`Config::validate`, checked again here); the page answers only with the token of
//! `DATA/ui.token` (32 random bytes in hex, mode 0600, made by the daemon at its first start
//! with `[http]`; `carnet ui` prints the page's address with it), compared in constant time;
//! `/metrics` asks for no token and carries site ids and counts only; neither shows patient
//! data; no request body is ever read; at most `CONNECTIONS_MAX` connections are served at
//! once, each for at most `CONNECTION_MAX_TIME`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

use crate::api::Service;
use crate::config::HttpConfig;
use crate::error::{Error, Result};

/// The page's token, in the data folder.
pub const TOKEN_FILE: &str = "ui.token";
/// Connections served at once; more wait to be accepted.
pub const CONNECTIONS_MAX: usize = 16;
/// Longest a connection is served (a client that stalls holds nothing longer).
pub const CONNECTION_MAX_TIME: Duration = Duration::from_secs(30);

/// Where the token of the replica in `dir` is kept.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// The page's token: read from `DATA/ui.token`, or made there (mode 0600) if absent.
pub fn token(dir: &Path) -> Result<String> {
    let path = token_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() == 64 => return Ok(t.trim().to_string()),
        Ok(_) => {
            tracing::warn!(file = %path.display(), "the page's token was malformed: a new one is made")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(e)),
    }
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    carnet_store::files::write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Binds the listener of `config`: refused on an address others reach unless allowed.
pub async fn bind(config: &HttpConfig) -> Result<tokio::net::TcpListener> {
    if !config.listen.ip().is_loopback() && !config.allow_remote {
        return Err(Error::Invalid(format!(
            "[http] listen = \"{}\" is not a loopback address (allow_remote = true to allow it)",
            config.listen
        )));
    }
    tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Invalid(format!("[http] cannot listen on {}: {e}", config.listen)))
}

/// Serves `/metrics` and the page until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, service: Arc<Service>, token: String) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let token = Arc::new(token);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (service, token) = (service.clone(), token.clone());
        tokio::spawn(async move {
            let handler =
                hyper::service::service_fn(move |req| answer(req, service.clone(), token.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler);
            let _ = tokio::time::timeout(CONNECTION_MAX_TIME, connection).await;
            drop(permit);
        });
    }
}

type HttpResponse = hyper::Response<Full<Bytes>>;

fn response(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page loads nothing from anywhere, and tells nobody where it was.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: String) -> HttpResponse {
    response(status, "text/plain; charset=utf-8", body)
}

/// True when `given` is `expected`, in time independent of where they differ.
fn same_token(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The `token` parameter of a query string.
fn token_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

async fn answer(
    req: hyper::Request<Incoming>,
    service: Arc<Service>,
    token: Arc<String>,
) -> std::result::Result<HttpResponse, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics or GET /?token=… only\n".into(),
        ));
    }
    let path = req.uri().path().to_string();
    let given = token_of(req.uri().query()).map(str::to_string);
    let s = service.clone();
    let page = match path.as_str() {
        "/metrics" => Page::Metrics,
        "/" => match given {
            Some(t) if same_token(&t, &token) => Page::Status,
            _ => {
                return Ok(response(
                    StatusCode::UNAUTHORIZED,
                    "text/html; charset=utf-8",
                    crate::status_page::refused(),
                ));
            }
        },
        _ => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                "GET /metrics or GET /?token=… only\n".into(),
            ));
        }
    };
    let rendered = tokio::task::spawn_blocking(move || render(&s, page)).await;
    Ok(match rendered {
        Ok(Ok((content_type, body))) => response(StatusCode::OK, content_type, body),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    })
}

#[derive(Clone, Copy)]
enum Page {
    Metrics,
    Status,
}

/// What the replica's role shows: a site its own link, the host its sites.
fn render(service: &Service, page: Page) -> Result<(&'static str, String)> {
    let r = &service.replica;
    let now = r.now();
    Ok(match (r.config().role, page) {
        (carnet_store::replica::Role::Site, Page::Metrics) => (
            crate::metrics::CONTENT_TYPE,
            crate::metrics::site(&service.status()?, r.config().lease_ms, now),
        ),
        (carnet_store::replica::Role::Host, Page::Metrics) => (
            crate::metrics::CONTENT_TYPE,
            crate::metrics::host(&service.fleet(None)?, now),
        ),
        (carnet_store::replica::Role::Site, Page::Status) => (
            "text/html; charset=utf-8",
            crate::status_page::site(
                &r.config().name,
                &service.status()?,
                r.config().lease_ms,
                now,
            ),
        ),
        (carnet_store::replica::Role::Host, Page::Status) => (
            "text/html; charset=utf-8",
            crate::status_page::host(&r.config().name, &service.fleet(None)?, now),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_compared_whole_and_read_from_the_query() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("", "abc"));
        assert_eq!(token_of(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(token_of(Some("tokens=xyz")), None);
        assert_eq!(token_of(None), None);
    }

    #[test]
    fn the_token_file_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let first = token(dir.path()).expect("made");
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(token_path(dir.path()))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            token(dir.path()).expect("read"),
            first,
            "kept across starts"
        );
    }
}
