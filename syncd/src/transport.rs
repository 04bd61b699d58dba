//! QUIC endpoints with mutual TLS 1.3 against the national CA, ALPN `carnet/1` (DESIGN §3).
//!
//! Invariants: the host accepts only clients whose certificate chains to the CA, is in its
//! validity window and is not refused (revoked site, retired certificate); a site accepts only
//! a host whose certificate chains to the CA, is in its validity window, names `HOST_NAME`,
//! is not for a host key the CA revoked (`hostkey::HostRevocation`), and, once the site holds
//! pins (its bundle's, a hand-over's), is for one of the pinned TLS keys; only TLS 1.3 and
//! the `carnet/1` protocol are offered.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};
use crate::pki::Identity;

/// The application protocol.
pub const ALPN: &[u8] = b"carnet/1";
/// A connection silent this long is dead (a cut link is noticed, the round fails and the next
/// one resumes).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Keep-alives on a quiet link, well inside `IDLE_TIMEOUT` even with loss.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

/// Timeouts shared by both ends.
fn transport() -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(tls_err)?))
        .keep_alive_interval(Some(KEEP_ALIVE))
        // BBR paces by measured bandwidth and delay: random loss on a rural radio link does
        // not collapse the window as it does with loss-based control (NewReno, Cubic).
        .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Ok(Arc::new(t))
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(tls_err)?;
    Ok(Arc::new(roots))
}

fn chain_and_key(id: &Identity) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![CertificateDer::from(id.cert_der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
    )
}

/// The fingerprint (BLAKE3 of the DER) by which the host knows a site's certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    *blake3::hash(cert_der).as_bytes()
}

/// Certificates the host refuses although the CA issued them (revoked sites). Shared with
/// the server configuration: a revocation takes effect for the next handshake.
#[derive(Debug, Default)]
pub struct Revoked(RwLock<HashSet<[u8; 32]>>);

impl Revoked {
    /// Refuses the certificate with this fingerprint from now on.
    pub fn add(&self, fingerprint: [u8; 32]) {
        if let Ok(mut set) = self.0.write() {
            set.insert(fingerprint);
        }
    }

    /// True if the certificate with this fingerprint is refused.
    pub fn has(&self, fingerprint: &[u8; 32]) -> bool {
        // A poisoned lock refuses everyone rather than admitting a revoked site.
        self.0.read().map_or(true, |set| set.contains(fingerprint))
    }

    fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.has(&fingerprint(cert))
    }
}

/// The CA's verifier, plus the revocation list.
#[derive(Debug)]
struct SiteVerifier {
    ca: Arc<dyn ClientCertVerifier>,
    revoked: Arc<Revoked>,
}

impl ClientCertVerifier for SiteVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        if self.revoked.contains(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        self.ca.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// The host's QUIC server configuration: sites certified by the CA and not revoked.
pub fn server_config(
    ca_der: &[u8],
    host: &Identity,
    revoked: Arc<Revoked>,
) -> Result<quinn::ServerConfig> {
    let ca = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider())
        .build()
        .map_err(tls_err)?;
    let verifier = Arc::new(SiteVerifier { ca, revoked });
    let (chain, key) = chain_and_key(host);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport()?);
    Ok(config)
}

/// The CA's verifier, plus the pins of the host's TLS keys (`None`: a format 1 site, which
/// pins none) and the host keys the CA revoked: another certificate the CA issued for
/// `carnet-host` is refused, with an error that says why and what to do.
#[derive(Debug)]
struct PinnedHost {
    ca: Arc<WebPkiServerVerifier>,
    pins: Option<Vec<[u8; 32]>>,
    revoked: Vec<[u8; 32]>,
}

/// A refusal of the host's certificate that the site's operator reads (in `sync now`, the
/// daemon's log).
fn refused_host(why: String) -> rustls::Error {
    #[derive(Debug)]
    struct Why(String);
    impl std::fmt::Display for Why {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Why {}
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Why(why)),
    )))
}

impl ServerCertVerifier for PinnedHost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let pin = crate::pki::key_pin(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let short = &crate::hostkey::pin_hex(&pin)[..16];
        if self.revoked.contains(&pin) {
            return Err(refused_host(format!(
                "the host's TLS key {short} was revoked by the national CA: refused at the handshake, even from a valid certificate; this site syncs again once the host serves a key it pins, or after it installs a renewal bundle (`carnet pki install BUNDLE`)"
            )));
        }
        let verified = self.ca.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match &self.pins {
            None => Ok(verified),
            Some(pins) if pins.contains(&pin) => Ok(verified),
            Some(pins) if pins.is_empty() => Err(refused_host(format!(
                "this site pins no host key (the national CA revoked the one it pinned) and refuses the host's key {short}: install a renewal bundle from the host (`carnet pki renew SITE` there, `carnet pki install BUNDLE` here)"
            ))),
            Some(_) => Err(refused_host(format!(
                "the host presents a TLS key this site does not pin ({short}): if the host switched to a new key while this site was not syncing, install a renewal bundle from the host (`carnet pki renew SITE` there, `carnet pki install BUNDLE` here)"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// A site's QUIC client configuration: a host certified by the CA, not for a key in
/// `revoked_pins`, and, with `host_pins`, for one of those TLS keys only (`pki::key_pin`; an
/// empty list accepts no host).
pub fn client_config(
    ca_der: &[u8],
    site: &Identity,
    host_pins: Option<&[[u8; 32]]>,
    revoked_pins: &[[u8; 32]],
) -> Result<quinn::ClientConfig> {
    let (chain, key) = chain_and_key(site);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let ca = WebPkiServerVerifier::builder_with_provider(roots(ca_der)?, provider())
        .build()
        .map_err(tls_err)?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedHost {
            ca,
            pins: host_pins.map(<[_]>::to_vec),
            revoked: revoked_pins.to_vec(),
        }));
    let mut tls = builder.with_client_auth_cert(chain, key).map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport()?);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{HOST_NAME, issue_host, issue_site, new_ca};
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::testkit::now_secs as now;

    /// A host endpoint on 127.0.0.1 that echoes one message per accepted connection.
    fn echo_host(config: quinn::ServerConfig) -> (quinn::Endpoint, SocketAddr) {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let endpoint = quinn::Endpoint::server(config, addr).expect("bind");
        let local = endpoint.local_addr().expect("local");
        let server = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let got = recv.read_to_end(1024).await.unwrap_or_default();
                        let _ = send.write_all(&got).await;
                        let _ = send.finish();
                        let _ = conn.closed().await;
                    }
                });
            }
        });
        (endpoint, local)
    }

    async fn exchange(
        client: quinn::ClientConfig,
        host: SocketAddr,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
            .map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(host, HOST_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"hello").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        Ok(reply)
    }

    #[tokio::test]
    async fn mutual_tls_admits_enrolled_sites_only() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let revoked = Arc::new(Revoked::default());
        let (_endpoint, addr) =
            echo_host(server_config(&ca.cert_der, &host, revoked.clone()).expect("server"));
        let bounded = |f| tokio::time::timeout(Duration::from_secs(5), f);

        // A site enrolled by the national CA gets through.
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let pin = [crate::pki::key_pin(&host.cert_der).expect("pin")];
        let pin = Some(&pin[..]);
        let reply = bounded(exchange(
            client_config(&ca.cert_der, &site, pin, &[]).expect("client"),
            addr,
        ))
        .await
        .expect("in time");
        assert_eq!(reply.as_deref(), Ok(&b"hello"[..]));

        // A certificate from another CA is refused, whichever side it is on.
        let rogue_ca = new_ca(now()).expect("ca");
        let rogue = issue_site(&rogue_ca, 7, now()).expect("rogue cert");
        let refused = bounded(exchange(
            client_config(&ca.cert_der, &rogue, pin, &[]).expect("client"),
            addr,
        ))
        .await
        .expect("in time");
        assert!(refused.is_err(), "a rogue site was admitted");
        let wrong_trust = bounded(exchange(
            client_config(&rogue_ca.cert_der, &rogue, None, &[]).expect("client"),
            addr,
        ))
        .await
        .expect("in time");
        assert!(
            wrong_trust.is_err(),
            "a site trusted a host its CA did not certify"
        );
    }

    #[test]
    fn bad_material_is_a_clear_error() {
        let ca = new_ca(now()).expect("ca");
        let mut host = issue_host(&ca, now(), None).expect("host");
        host.key_der = vec![1, 2, 3];
        let revoked = Arc::new(Revoked::default());
        assert!(matches!(
            server_config(&ca.cert_der, &host, revoked.clone()),
            Err(Error::Tls(_))
        ));
        assert!(matches!(
            server_config(b"not a certificate", &host, revoked),
            Err(Error::Tls(_))
        ));
    }

    #[tokio::test]
    async fn a_site_refuses_another_host_certificate_of_the_ca() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let pin = crate::pki::key_pin(&host.cert_der).expect("pin");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let bounded = |f| tokio::time::timeout(Duration::from_secs(5), f);
        // A second certificate the CA issued for `carnet-host`, for another key.
        let impostor = issue_host(&ca, now(), None).expect("impostor");
        let (_e1, fake) =
            echo_host(server_config(&ca.cert_der, &impostor, Arc::default()).expect("server"));
        let refused = bounded(exchange(
            client_config(&ca.cert_der, &site, Some(&[pin]), &[]).expect("client"),
            fake,
        ))
        .await
        .expect("in time");
        assert!(refused.is_err(), "a pinned site accepted another host key");
        // Without a pin (a site enrolled by a format 1 bundle), the CA alone decided.
        let unpinned = bounded(exchange(
            client_config(&ca.cert_der, &site, None, &[]).expect("client"),
            fake,
        ))
        .await
        .expect("in time");
        assert!(unpinned.is_ok(), "{unpinned:?}");
        // The real host, and its renewal for the same key, are accepted.
        let renewed = issue_host(&ca, now(), Some(&host.key_der)).expect("renewed");
        for h in [&host, &renewed] {
            let (_e, addr) =
                echo_host(server_config(&ca.cert_der, h, Arc::default()).expect("server"));
            let ok = bounded(exchange(
                client_config(&ca.cert_der, &site, Some(&[pin]), &[]).expect("client"),
                addr,
            ))
            .await
            .expect("in time");
            assert_eq!(ok.as_deref(), Ok(&b"hello"[..]));
        }
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused_on_either_side() {
        const DAY: i64 = 86_400;
        let bounded = |f| tokio::time::timeout(Duration::from_secs(5), f);
        // A CA made 800 days ago; a host certificate and a site certificate issued since.
        let ca = new_ca(now() - 800 * DAY).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host");
        let pin = [crate::pki::key_pin(&host.cert_der).expect("pin")];
        let pin = Some(&pin[..]);
        let site = issue_site(&ca, 7, now()).expect("site");
        let (_e1, addr) =
            echo_host(server_config(&ca.cert_der, &host, Arc::default()).expect("server"));
        let ok = bounded(exchange(
            client_config(&ca.cert_der, &site, pin, &[]).expect("client"),
            addr,
        ))
        .await
        .expect("in time");
        assert!(ok.is_ok(), "{ok:?}");
        // A site certificate issued 367 days ago expired yesterday: the host refuses it.
        let stale_site = issue_site(&ca, 7, now() - 367 * DAY).expect("stale site");
        let refused = bounded(exchange(
            client_config(&ca.cert_der, &stale_site, pin, &[]).expect("client"),
            addr,
        ))
        .await
        .expect("in time");
        assert!(refused.is_err(), "an expired site certificate was admitted");
        // A host certificate issued 731 days ago expired yesterday: the site refuses it,
        // although it is for the pinned key.
        let stale_host = issue_host(&ca, now() - 731 * DAY, Some(&host.key_der)).expect("stale");
        let (_e2, stale) =
            echo_host(server_config(&ca.cert_der, &stale_host, Arc::default()).expect("server"));
        let refused = bounded(exchange(
            client_config(&ca.cert_der, &site, pin, &[]).expect("client"),
            stale,
        ))
        .await
        .expect("in time");
        assert!(
            refused.is_err(),
            "a site accepted an expired host certificate"
        );
    }

    #[tokio::test]
    async fn a_site_accepts_either_pin_and_refuses_a_revoked_host_key_clearly() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host");
        let next = issue_host(&ca, now(), None).expect("next");
        let pin = crate::pki::key_pin(&host.cert_der).expect("pin");
        let next_pin = crate::pki::key_pin(&next.cert_der).expect("pin");
        let site = issue_site(&ca, 7, now()).expect("site");
        let (_e1, old_addr) =
            echo_host(server_config(&ca.cert_der, &host, Arc::default()).expect("server"));
        let (_e2, new_addr) =
            echo_host(server_config(&ca.cert_der, &next, Arc::default()).expect("server"));
        // One exchange with the host at `addr`, as a site pinning `pins` and refusing `revoked`.
        let reach = |addr, pins: Option<&[[u8; 32]]>, revoked: &[[u8; 32]]| {
            let client = client_config(&ca.cert_der, &site, pins, revoked).expect("client");
            tokio::time::timeout(Duration::from_secs(5), exchange(client, addr))
        };
        // Holding both pins (a hand-over taken): either key is accepted.
        for addr in [old_addr, new_addr] {
            let ok = reach(addr, Some(&[pin, next_pin]), &[])
                .await
                .expect("in time");
            assert_eq!(ok.as_deref(), Ok(&b"hello"[..]));
        }
        // The old key revoked: refused although pinned, CA-issued and unexpired, and the
        // error says so; the next key still works.
        let refused = reach(old_addr, Some(&[pin, next_pin]), &[pin]).await;
        let e = refused
            .expect("in time")
            .expect_err("a revoked key was accepted");
        assert!(e.contains("revoked by the national CA"), "{e}");
        let ok = reach(new_addr, Some(&[next_pin]), &[pin]).await;
        assert!(ok.expect("in time").is_ok());
        // Revoked applies to a site that pins nothing (format 1) too.
        let refused = reach(old_addr, None, &[pin]).await.expect("in time");
        assert!(refused.is_err(), "an unpinned site accepted a revoked key");
        // A key not pinned: refused, and told to install a renewal bundle; no pin left:
        // nothing is accepted.
        let e = reach(new_addr, Some(&[pin]), &[]).await.expect("in time");
        let e = e.expect_err("refused");
        assert!(
            e.contains("does not pin") && e.contains("pki install"),
            "{e}"
        );
        let e = reach(new_addr, Some(&[]), &[pin]).await.expect("in time");
        assert!(e.expect_err("refused").contains("pins no host key"));
    }
}
