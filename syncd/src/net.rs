//! Drives sessions over QUIC: the host serves one session per stream of an authenticated
//! connection; a site runs one round against the host.
//!
//! Invariants: the host learns the site from the peer's certificate (its fingerprint in the
//! register), never from what the peer says; every read is bounded by `IDLE_TIMEOUT`; a
//! malformed frame or a protocol error ends that session with an `Error` message, not the
//! server; store calls, which may sync to disk, run on the runtime's blocking side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use carnet_store::ids::SiteId;
use carnet_store::replica::Replica;
use rustls_pki_types::CertificateDer;

use crate::enrol::{self, SiteTls};
use crate::error::{Error, Result};
use crate::frame::{self, FrameDecoder};
use crate::pki::HOST_NAME;
use crate::session::{HostSession, Msg, RoundReport, SiteSession};

/// Longest wait for the peer's next bytes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 64 * 1024;

fn net_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

/// Reads the next message, or `None` at the end of the stream.
async fn next_message(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<Msg>> {
    loop {
        if let Some(msg) = decoder
            .next_message::<Msg>()
            .map_err(|e| Error::Invalid(e.to_string()))?
        {
            return Ok(Some(msg));
        }
        let chunk = tokio::time::timeout(IDLE_TIMEOUT, recv.read_chunk(READ_CHUNK, true))
            .await
            .map_err(|_| Error::Invalid("the peer went silent".into()))?
            .map_err(net_err)?;
        match chunk {
            Some(c) => decoder.push(&c.bytes),
            None if decoder.buffered() == 0 => return Ok(None),
            None => return Err(Error::Invalid("the stream ended inside a frame".into())),
        }
    }
}

async fn send(stream: &mut quinn::SendStream, msgs: &[Msg]) -> Result<()> {
    for m in msgs {
        stream
            .write_all(&frame::encode(m).map_err(|e| Error::Invalid(e.to_string()))?)
            .await
            .map_err(net_err)?;
    }
    Ok(())
}

/// Host: serves connections on `endpoint` until it is closed.
pub async fn serve(endpoint: quinn::Endpoint, replica: Arc<Replica>) {
    while let Some(incoming) = endpoint.accept().await {
        let replica = replica.clone();
        tokio::spawn(async move {
            // A failed connection concerns that peer only.
            let _ = serve_connection(incoming, replica).await;
        });
    }
}

async fn serve_connection(incoming: quinn::Incoming, replica: Arc<Replica>) -> Result<()> {
    let conn = incoming.await.map_err(net_err)?;
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| Error::Invalid("the peer presented no certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Error::Invalid("empty certificate chain".into()))?;
    let fingerprint = crate::transport::fingerprint(leaf);
    let r = replica.clone();
    let site = tokio::task::spawn_blocking(move || enrol::site_of(&r, &fingerprint))
        .await
        .map_err(net_err)??;
    let Some(site) = site else {
        conn.close(1u32.into(), b"unknown or revoked site");
        return Err(Error::Invalid("unknown or revoked site".into()));
    };
    while let Ok((mut send_stream, mut recv)) = conn.accept_bi().await {
        let replica = replica.clone();
        tokio::spawn(async move {
            let _ = host_stream(&mut send_stream, &mut recv, replica, SiteId(site)).await;
        });
    }
    Ok(())
}

async fn host_stream(
    send_stream: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    replica: Arc<Replica>,
    site: SiteId,
) -> Result<()> {
    let mut decoder = FrameDecoder::new();
    let session = Arc::new(std::sync::Mutex::new(HostSession::new(site)));
    loop {
        let msg = match next_message(recv, &mut decoder).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                let _ = send(send_stream, &[Msg::Error(e.to_string())]).await;
                break;
            }
        };
        let bye = msg == Msg::Bye;
        let (r, s) = (replica.clone(), session.clone());
        let replies = tokio::task::spawn_blocking(move || {
            s.lock()
                .map_err(|_| Error::Invalid("session lock poisoned".into()))?
                .handle(&r, msg)
        })
        .await
        .map_err(net_err)?;
        match replies {
            Ok(replies) => {
                if let Err(e) = send(send_stream, &replies).await {
                    let _ = send(send_stream, &[Msg::Error(e.to_string())]).await;
                    break;
                }
            }
            Err(e) => {
                let _ = send(send_stream, &[Msg::Error(e.to_string())]).await;
                break;
            }
        }
        if bye {
            break;
        }
    }
    let _ = send_stream.finish();
    Ok(())
}

/// Site: one sync round with the host named in its enrolment.
pub async fn sync_round(replica: Arc<Replica>) -> Result<RoundReport> {
    let r = replica.clone();
    let tls: SiteTls = tokio::task::spawn_blocking(move || enrol::site_tls(&r))
        .await
        .map_err(net_err)??;
    let host: SocketAddr = tls
        .host_address
        .parse()
        .map_err(|_| Error::Invalid(format!("bad host address '{}'", tls.host_address)))?;
    let bind: SocketAddr = if host.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(net_err)?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(crate::transport::client_config(
        &tls.ca_cert_der,
        &tls.identity,
    )?);
    let conn = tokio::time::timeout(
        IDLE_TIMEOUT,
        endpoint.connect(host, HOST_NAME).map_err(net_err)?,
    )
    .await
    .map_err(|_| Error::Invalid("the host did not answer".into()))?
    .map_err(net_err)?;
    let (mut send_stream, mut recv) = conn.open_bi().await.map_err(net_err)?;
    let session = Arc::new(std::sync::Mutex::new(SiteSession::new()));
    let (r, s) = (replica.clone(), session.clone());
    let hello = tokio::task::spawn_blocking(move || {
        s.lock()
            .map_err(|_| Error::Invalid("session lock poisoned".into()))?
            .start(&r)
    })
    .await
    .map_err(net_err)??;
    send(&mut send_stream, &[hello]).await?;
    // The handshake, and the Hello.
    let mut round_trips = 2;
    let mut decoder = FrameDecoder::new();
    let mut report = loop {
        let msg = next_message(&mut recv, &mut decoder)
            .await?
            .ok_or_else(|| Error::Invalid("the host closed the session early".into()))?;
        let (r, s) = (replica.clone(), session.clone());
        let (out, done, report) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut s = s
                .lock()
                .map_err(|_| Error::Invalid("session lock poisoned".into()))?;
            let out = s.handle(&r, msg)?;
            Ok((out, s.is_done(), s.report()))
        })
        .await
        .map_err(net_err)??;
        send(&mut send_stream, &out).await?;
        if done {
            break report;
        }
        if !out.is_empty() {
            round_trips += 1;
        }
    };
    let _ = send_stream.finish();
    conn.close(0u32.into(), b"bye");
    endpoint.wait_idle().await;
    let stats = conn.stats();
    report.wire_sent = stats.udp_tx.bytes;
    report.wire_received = stats.udp_rx.bytes;
    report.round_trips = round_trips;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{doctor, host_and_site, new_doc};
    use carnet_store::model::{AccessMode, Actor};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_site_syncs_with_the_host_over_quic() {
        let (tmp, host, site_draft, ins) = host_and_site();
        drop(site_draft);
        let host = Arc::new(host);
        enrol::init_host(&host).expect("pki");
        let (ca, host_id) = enrol::host_identity(&host).expect("identity");
        let revoked = Arc::new(enrol::revoked(&host).expect("revoked"));
        let config =
            crate::transport::server_config(&ca, &host_id, revoked.clone()).expect("server");
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        tokio::spawn(serve(endpoint.clone(), host.clone()));

        // The site, created from its enrolment bundle.
        let bundle =
            enrol::enrol(&host, "Clinique", "750000001", &addr.to_string()).expect("enrol");
        let site = crate::testkit::site_from_bundle(&tmp.path().join("enrolled"), &bundle);
        let site = Arc::new(site);
        let bounded = |f| tokio::time::timeout(Duration::from_secs(20), f);
        let first = bounded(sync_round(site.clone()))
            .await
            .expect("in time")
            .expect("round");
        assert!(first.pulled > 0, "{first:?}");
        let actor = Actor::Professional(doctor());
        let id = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("written at the site", b"body".to_vec()),
            )
            .expect("write");
        bounded(sync_round(site.clone()))
            .await
            .expect("in time")
            .expect("round");
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
            client.set_default_client_config(
                crate::transport::client_config(&bundle.ca_cert_der, &bundle.identity)
                    .expect("config"),
            );
            let conn = client
                .connect(addr, HOST_NAME)
                .expect("connect")
                .await
                .expect("handshake");
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
        bounded(sync_round(site.clone()))
            .await
            .expect("in time")
            .expect("round after garbage");

        // Revoked: the next round is refused.
        enrol::revoke(&host, bundle.site_id).expect("revoke");
        revoked.add(crate::transport::fingerprint(&bundle.identity.cert_der));
        let refused = bounded(sync_round(site.clone())).await.expect("in time");
        assert!(refused.is_err(), "a revoked site synced");
        endpoint.close(0u32.into(), b"done");
    }
}
