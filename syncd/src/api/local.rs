//! The local API's transport: the daemon serves `Request`s on a Unix socket (HTTP/1.1, JSON),
//! and `Handle` lets `carnet` call the daemon when one runs, or the store directly when none
//! does — the same `Service::execute` either way.
//!
//! Routes: `POST /v1/call` with a JSON `Request` answers `{"ok": Response}` or
//! `{"error": WireError}` (status 200, or 400 invalid, 403 denied, 404 not found, 409 a
//! conflict with another host daemon, 500 integrity or storage, 502 the sync layer's network or
//! files failing); `GET /v1/health` answers the replica's role, site id and name. A body larger
//! than `MAX_REQUEST` is refused unread.
//!
//! Invariants: the socket is mode 0600 before the first connection can be accepted (it is
//! bound inside a 0700 folder made for it, then moved into place); a stale socket left by a
//! killed daemon is replaced, a live one is never taken over.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use carnet_store::replica::{KeySource, Replica};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::{Request, Response, Service, WireError, socket_path};
use crate::error::{Error, Result};

/// Largest request body accepted (a document travels base64-encoded inside it).
pub const MAX_REQUEST: usize = 128 << 20;

/// What `POST /v1/call` answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call succeeded.
    Ok(Response),
    /// It failed; nothing changed.
    Error(WireError),
}

/// A replica as `carnet` reaches it: through its running daemon, or opened in this process.
#[derive(Debug)]
pub enum Handle {
    /// No daemon runs: the store is opened here.
    InProcess(Arc<Service>),
    /// The daemon owns the store; calls go through its socket.
    Daemon(Client),
}

impl Handle {
    /// Reaches the replica in `dir`: through its daemon if one answers on the socket, else by
    /// opening the store with `key`.
    pub fn open(dir: &Path, key: &KeySource) -> Result<Handle> {
        if daemon_answers(dir) {
            return Ok(Handle::Daemon(Client {
                socket: socket_path(dir),
            }));
        }
        let storage = crate::config::Config::storage_of(dir)?;
        let replica = Replica::open_on(
            dir,
            &storage,
            key,
            carnet_store::replica::system_clock(),
            carnet_store::replica::DEFAULT_CACHE_MIB,
        )?;
        carnet_store::replica::check_high_water_from_env(&replica)?;
        Ok(Handle::InProcess(Arc::new(Service::new(Arc::new(replica)))))
    }

    /// What opening the store here tightened in a data folder others could read (empty
    /// through a daemon: it reported them in its log when it opened the store).
    pub fn folder_fixes(&self) -> Vec<String> {
        match self {
            Handle::Daemon(_) => Vec::new(),
            Handle::InProcess(service) => service.replica.folder_fixes().to_vec(),
        }
    }

    /// True when calls go through a daemon.
    pub fn via_daemon(&self) -> bool {
        matches!(self, Handle::Daemon(_))
    }

    /// Runs one request.
    pub fn call(&self, request: Request) -> Result<Response> {
        match self {
            Handle::Daemon(client) => client.call(&request),
            Handle::InProcess(service) => match request {
                Request::SyncNow | Request::Handover { .. } => {
                    runtime()?.block_on(service.run(request))
                }
                other => service.execute(other),
            },
        }
    }
}

/// True when a daemon answers on the socket of the replica in `dir`.
pub fn daemon_answers(dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(dir)).is_ok()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A caller of the daemon's socket.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Client { socket }
    }

    /// Sends one request and waits for its answer.
    pub fn call(&self, request: &Request) -> Result<Response> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.call_async(request))
    }

    async fn call_async(&self, request: &Request) -> Result<Response> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::Io(std::io::Error::other(format!(
                "the daemon at {} did not answer: {e}",
                self.socket.display()
            )))
        };
        let body =
            serde_json::to_vec(request).map_err(|e| Error::Invalid(format!("request: {e}")))?;
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let http_request = hyper::Request::post("/v1/call")
            .header(HOST, "carnet")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Invalid(format!("request: {e}")))?;
        let answer = sender
            .send_request(http_request)
            .await
            .map_err(|e| unreachable(&e))?;
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        match serde_json::from_slice::<Outcome>(&bytes) {
            Ok(Outcome::Ok(response)) => Ok(response),
            Ok(Outcome::Error(e)) => Err(e.into()),
            Err(e) => Err(Error::Invalid(format!(
                "the daemon's answer is not understood ({e}): is carnet-syncd the same version as carnet?"
            ))),
        }
    }
}

/// Binds the daemon's socket in `dir`, mode 0600. Refuses if another daemon answers there.
pub fn bind(dir: &Path) -> Result<tokio::net::UnixListener> {
    let socket = socket_path(dir);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(Error::Invalid(format!(
            "another daemon already serves {}",
            socket.display()
        )));
    }
    // Left by a daemon that did not stop cleanly: nobody answers on it.
    let _ = std::fs::remove_file(&socket);
    // Bound in a private folder first, so the socket is never reachable with wider modes.
    let staging = dir.join(".carnet.sock.new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    let staged = staging.join(super::SOCKET_FILE);
    let listener = std::os::unix::net::UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staged, &socket)?;
    let _ = std::fs::remove_dir(&staging);
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// Serves the local API until the task is dropped. Connections are not counted: the socket
/// is mode 0600, so only the replica's owner reaches it; each request body is read up to
/// `MAX_REQUEST` bytes, and a larger one is refused unread.
pub async fn serve(listener: tokio::net::UnixListener, service: Arc<Service>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "local API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| answer(req, service.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler)
                .await
            {
                tracing::debug!(error = %e, "local API: connection ended");
            }
        });
    }
}

type HttpResponse = hyper::Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = hyper::Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(status: StatusCode, message: String) -> HttpResponse {
    json_response(status, &Outcome::Error(WireError::Sync(message)))
}

fn status_of(e: &WireError) -> StatusCode {
    use carnet_store::Error as S;
    match e {
        WireError::Store(S::Invalid(_) | S::Key(_))
        | WireError::Sync(_)
        | WireError::Tls(_)
        | WireError::Pki(_) => StatusCode::BAD_REQUEST,
        WireError::Io(_) => StatusCode::BAD_GATEWAY,
        WireError::Store(S::Denied { .. }) => StatusCode::FORBIDDEN,
        WireError::Store(S::NotFound(_)) => StatusCode::NOT_FOUND,
        WireError::Store(S::Integrity(_) | S::Storage(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        WireError::Store(S::Conflict(_)) => StatusCode::CONFLICT,
    }
}

async fn answer(
    req: hyper::Request<Incoming>,
    service: Arc<Service>,
) -> std::result::Result<HttpResponse, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/call") => {
            let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(failure(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request refused: {e} (at most {MAX_REQUEST} bytes)"),
                    ));
                }
            };
            let request: Request = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(failure(
                        StatusCode::BAD_REQUEST,
                        format!("malformed request: {e}"),
                    ));
                }
            };
            match service.run(request).await {
                Ok(response) => json_response(StatusCode::OK, &Outcome::Ok(response)),
                Err(e) => {
                    let e = WireError::from(e);
                    json_response(status_of(&e), &Outcome::Error(e))
                }
            }
        }
        (&Method::GET, "/v1/health") => {
            let c = service.replica.config();
            json_response(
                StatusCode::OK,
                &serde_json::json!({"role": c.role.as_str(), "site_id": c.site_id.0, "name": c.name}),
            )
        }
        _ => failure(
            StatusCode::NOT_FOUND,
            "unknown route: POST /v1/call or GET /v1/health".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Request;
    use carnet_store::replica::{InitOptions, Role};

    fn host(dir: &Path) -> Arc<Service> {
        let r = Replica::init(
            dir,
            InitOptions {
                role: Role::Host,
                name: "host".into(),
                site_id: None,
                key: KeySource::File,
                host_key: None,
                lease_hours: None,
            },
            carnet_store::replica::system_clock(),
        )
        .expect("init");
        Arc::new(Service::new(Arc::new(r)))
    }

    #[test]
    fn a_call_through_the_socket_matches_the_store_and_bad_input_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let service = host(tmp.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");
        let listener = rt.block_on(async { bind(tmp.path()) }).expect("bind");
        let mode = std::fs::metadata(socket_path(tmp.path()))
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = rt.spawn(serve(listener, service.clone()));
        // A second daemon on the same folder is refused while this one answers.
        assert!(rt.block_on(async { bind(tmp.path()) }).is_err());

        let client = Client::new(socket_path(tmp.path()));
        let pro = carnet_store::model::Professional {
            rpps: carnet_store::ids::Rpps::parse("10000000001").expect("rpps"),
            profession: carnet_store::model::Profession::parse("medecin").expect("p"),
            specialty: None,
            name: Some("Dr Synthétique".into()),
        };
        assert!(matches!(
            client.call(&Request::AddProfessional {
                professional: pro.clone()
            }),
            Ok(Response::Done)
        ));
        match client.call(&Request::Professionals) {
            Ok(Response::Professionals(list)) => assert_eq!(list, vec![pro]),
            other => panic!("unexpected {other:?}"),
        }
        // The store's own error kinds come back as they are.
        let ins = carnet_store::ids::Ins::from_body("2840575123456").expect("ins");
        match client.call(&Request::Dossier { ins, actor: None }) {
            Err(Error::Store(carnet_store::Error::NotFound(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
        // Garbage is answered with an error and the daemon goes on serving.
        let post = |body: &str| {
            use std::io::{Read, Write};
            let mut s =
                std::os::unix::net::UnixStream::connect(socket_path(tmp.path())).expect("connect");
            write!(
                s,
                "POST /v1/call HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).expect("read");
            String::from_utf8_lossy(&out).into_owned()
        };
        let raw = post("{\"op\":1");
        assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
        assert!(raw.contains("malformed request"), "{raw}");
        // Ids and text go through the same parsing types as on the command line: an RPPS that
        // is not 11 digits, a name that would rewrite a terminal.
        for (rpps, name) in [
            ("../\\u001b[2J", "null"),
            ("1000000000x", "null"),
            ("10000000002", "\"Dr \\u001b[31mRouge\""),
        ] {
            let raw = post(&format!(
                "{{\"op\":\"add_professional\",\"professional\":{{\"rpps\":\"{rpps}\",\"profession\":\"Medecin\",\"specialty\":null,\"name\":{name}}}}}"
            ));
            assert!(raw.starts_with("HTTP/1.1 4"), "{raw}");
            assert!(raw.contains("RPPS") || raw.contains("name"), "{raw}");
        }
        match client.call(&Request::Professionals) {
            Ok(Response::Professionals(list)) => assert_eq!(list.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
        server.abort();
    }
}
