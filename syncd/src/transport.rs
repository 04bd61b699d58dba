//! QUIC endpoints with mutual TLS 1.3 against the national CA, ALPN `carnet/1` (DESIGN §3).
//!
//! Invariants: the host accepts only clients whose certificate chains to the CA, is in its
//! validity window and is not refused (revoked site, retired certificate); a site accepts only
//! a host whose certificate chains to the CA, is in its validity window, names `HOST_NAME`,
//! is not for a host key the CA revoked (`hostkey::HostRevocation`), and, once the site holds
//! pins (its bundle's, a hand-over's), is for one of the pinned TLS keys; only TLS 1.3 and
//! the `carnet/1` protocol are offered. No TLS session is resumed: a resumed handshake shows
//! no certificate, so every handshake is a full one and its certificates are decided again.
//!
//! Between two sites (`carnet-peer/1`, a handover without the host), each end admits the
//! other only if its certificate chains to the CA as a site's (client-auth usage, `site-N`),
//! is in its validity window, is not among the site certificates the host refuses (its signed
//! list, as the site's replica holds it at that handshake: `revoked_for_peers`), and names a
//! site listed as `[[peer]]` (`PeerPolicy`); the dialler also requires the site it dialled. A
//! peer is known by the site id in its certificate, never by its address.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, RwLock};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use carnet_store::replica::Replica;

use crate::congestion::{BoundedBbr, Remembered};
use crate::error::{Error, Result};
use crate::pki::Identity;

/// The application protocol.
pub const ALPN: &[u8] = b"carnet/1";
/// A connection silent this long is dead (a cut link is noticed, the round fails and the next
/// one resumes).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Keep-alives on a quiet link, sent by the connecting end only (the site, behind its NAT:
/// its own datagrams keep the NAT's binding, and their acknowledgements keep both ends from
/// `IDLE_TIMEOUT`): two of them, and their retransmissions, fit in `IDLE_TIMEOUT`. An idle
/// site's link carries about a third fewer bytes than with keep-alives every 2 s from both
/// ends (benches/LOG.md, 2026-12-06).
pub(crate) const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(4);

/// The largest QUIC DATAGRAM frame an end lets its peer send, and the bytes of them it holds
/// unread (quinn 0.11.19 counts each at its payload and 32 bytes more, drops the oldest past
/// this, and ends the connection on one whose payload alone passes it). The only datagrams are
/// the empty tail probes (`tail`), which each end reads only to drop.
pub(crate) const DATAGRAMS_HELD: usize = 128;

/// Bytes a peer may send on one stream beyond what this end has read of it. A host's session
/// stream is read between transactions: while one applies, the site's next pushes wait here.
/// With quinn's 1.25 MB a site stopped after about 300 documents of 4 KiB and the host's
/// transactions stayed that small; with 8 MiB (room for a full `PUSH_WINDOW` of pushes, each
/// `CHUNK_MAX` of bodies and their metadata) the initial sync of 10,000 documents took 41 host
/// transactions instead of 50 and 0.51 s instead of 0.585 (medians of eight runs,
/// benches/LOG.md, 2026-12-07).
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;

/// Bytes a peer may send on all streams of a connection beyond what this end has read: what
/// quinn holds unread for one connection (what the streams' readers hold is bounded apart,
/// `net`). quinn's default sets no such bound (each of a hundred streams could hold its own
/// window). A site's round fills at most a session stream's window of pushes and a
/// `SEND_WINDOW` of bodies on the streams of its uploads: 16 MiB.
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

/// Which end of a connection a transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Accepts connections (the host, a site's `peer_listen`).
    Listening,
    /// Opens them (a site): it sends the keep-alives.
    Connecting,
}

/// A site's client configuration made to start its next connection (one: its controller
/// resumes only on the first path it builds) at `remembered`, the path to the host as an
/// earlier connection measured it (`congestion`, careful resume): the round trip checks it is
/// the same path before the window jumps to it.
pub fn resuming(config: &mut quinn::ClientConfig, remembered: Option<Remembered>) -> Result<()> {
    let cell = Arc::new(OnceLock::new());
    if let Some(r) = remembered {
        let _ = cell.set(r);
    }
    config.transport_config(transport(End::Connecting, cell)?);
    Ok(())
}

/// Timeouts and congestion control (resuming at the path `remembered` holds, once it holds
/// it); the keep-alives on the connecting end.
fn transport(
    end: End,
    remembered: Arc<OnceLock<Remembered>>,
) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(tls_err)?))
        .keep_alive_interval((end == End::Connecting).then_some(KEEP_ALIVE))
        // BBR paces by measured bandwidth and delay: random loss on a rural radio link does
        // not collapse the window as it does with loss-based control (NewReno, Cubic: 51 s
        // where BBR takes 12 s for 500 documents at 2 Mbit/s and 2 % loss, benches/LOG.md).
        // Its window is bounded by the path's delivery rate as measured (`congestion`): with
        // quinn's own estimate a push went out at twice the line rate, the bottleneck queue
        // full all along.
        .congestion_controller_factory(Arc::new(BoundedBbr::resuming(remembered)))
        // The ACK frequency extension (each end tells the other how often to acknowledge): on
        // the link bench it cut the bytes on the wire for 500 documents at 2 % loss from 4.4
        // to 2.5 MiB (fewer datagrams overflowing the bottleneck queue) and gained 2 to 3
        // points of line rate (benches/LOG.md, 2026-12-05).
        .ack_frequency_config(Some(quinn::AckFrequencyConfig::default()))
        .mtu_discovery_config(Some(path_mtu_discovery()))
        // The peer's tail probes (`tail`): read only to drop, a few held.
        .datagram_receive_buffer_size(Some(DATAGRAMS_HELD))
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into());
    if end == End::Listening {
        // One-way streams go from the listening end only (the host's pokes): none is read
        // here, so a peer may open none.
        t.max_concurrent_uni_streams(0u8.into());
    }
    Ok(Arc::new(t))
}

/// How each end finds the largest datagram the path carries, from QUIC's 1,200 bytes up to
/// quinn's bound (1,452: an Ethernet path through IPv6). quinn's default search halves its
/// step until it is under 20 bytes: a new connection cost 15.5 KB on the wire, 11.3 KB of them
/// probes, more than the handshake itself. With steps of at least 100 bytes each end probes
/// 1,326 bytes, then the bound itself: a new connection costs 9.8 KB and still reaches 1,452
/// on such a path (1,326, or 1,200, on one that carries less: a few percent more headers on
/// a long transfer). A site on a flaky link reconnects often, each time for a round of a few
/// kilobytes.
fn path_mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.minimum_change(100);
    mtu
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

/// The handshake signature checks, which every verifier here leaves to the CA's verifier it
/// holds in `self.ca` (its own checks are on the certificate).
macro_rules! signatures_by_ca {
    () => {
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
    };
}

/// The fingerprint (BLAKE3 of the DER) by which the host knows a site's certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    *blake3::hash(cert_der).as_bytes()
}

/// Site certificates refused although the CA issued them. At the host, its own list (revoked
/// sites, retired certificates: `enrol::revoked`), shared with the server configuration: `add`
/// takes effect for the next handshake. At a site, for its peer sessions (`revoked_for_peers`),
/// the list the host signed as the site's replica holds it, read at each check: a list the site
/// admits while it runs applies to the next handshake.
#[derive(Debug, Default)]
pub struct Revoked {
    listed: RwLock<HashSet<[u8; 32]>>,
    held_by: Option<Arc<Replica>>,
}

impl Revoked {
    /// The site certificates the host refuses as `replica` holds them
    /// (`Replica::refused_certificates`, `AuthorityRecord::RefusedCertificates`), now and as it
    /// admits newer lists.
    pub fn held_by(replica: Arc<Replica>) -> Revoked {
        Revoked {
            listed: RwLock::default(),
            held_by: Some(replica),
        }
    }

    /// Refuses the certificate with this fingerprint from now on.
    pub fn add(&self, fingerprint: [u8; 32]) {
        if let Ok(mut set) = self.listed.write() {
            set.insert(fingerprint);
        }
    }

    /// True if the certificate with this fingerprint is refused.
    pub fn has(&self, fingerprint: &[u8; 32]) -> bool {
        // A poisoned lock refuses everyone rather than admitting a revoked site.
        self.listed
            .read()
            .map_or(true, |set| set.contains(fingerprint))
            || self
                .held_by
                .as_ref()
                .is_some_and(|r| r.refuses_certificate(fingerprint).unwrap_or(true))
    }

    fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.has(&fingerprint(cert))
    }
}

/// The revocation list of a site's `PeerPolicy`: the site certificates the host refuses, as the
/// site's `replica` holds them at each handshake. The host signs the list whenever its register
/// refuses another certificate (`enrol::revoke`, a retired certificate), and every site receives
/// it in its pull and in authority bundles; a list admitted while the daemon runs refuses its
/// certificates from the next handshake, without a restart.
pub fn revoked_for_peers(replica: Arc<Replica>) -> Arc<Revoked> {
    Arc::new(Revoked::held_by(replica))
}

/// The CA's verifier of site certificates, plus who of them is admitted.
#[derive(Debug)]
struct SiteVerifier {
    ca: Arc<dyn ClientCertVerifier>,
    admits: Admits,
}

/// Who of the sites the CA certified a server admits.
#[derive(Debug)]
enum Admits {
    /// The host: any site whose certificate is not in this list.
    NotRevoked(Arc<Revoked>),
    /// A site's `peer_listen`: the sites this policy admits.
    Peers(Arc<PeerPolicy>),
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
        match &self.admits {
            Admits::NotRevoked(revoked) => {
                if revoked.contains(end_entity) {
                    return Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Revoked,
                    ));
                }
                self.ca.verify_client_cert(end_entity, intermediates, now)
            }
            Admits::Peers(policy) => {
                let verdict = self.ca.verify_client_cert(end_entity, intermediates, now);
                let site = policy.admit(end_entity, verdict)?;
                if !policy.admits_site(site) {
                    return Err(not_a_peer(site));
                }
                Ok(ClientCertVerified::assertion())
            }
        }
    }

    signatures_by_ca!();
}

/// The host's QUIC server configuration: sites certified by the CA and not revoked.
pub fn server_config(
    ca_der: &[u8],
    host: &Identity,
    revoked: Arc<Revoked>,
) -> Result<quinn::ServerConfig> {
    let verifier = SiteVerifier {
        ca: site_certificates(ca_der)?,
        admits: Admits::NotRevoked(revoked),
    };
    quic_server(Arc::new(verifier), host, ALPN)
}

/// The host's QUIC endpoint and the server configuration it serves, which may be replaced
/// while it runs (`serve`: a renewed host certificate, from the next handshake on). Each
/// connection is accepted with a configuration of its own (`accept`), whose controller resumes
/// at the path the host remembers for the site once the handshake has named it
/// (`congestion`, careful resume: the host sends a pull's documents).
#[derive(Debug)]
pub struct HostServer {
    endpoint: quinn::Endpoint,
    config: RwLock<quinn::ServerConfig>,
}

impl HostServer {
    /// An endpoint bound to `listen`, serving `config`.
    pub fn bind(config: quinn::ServerConfig, listen: std::net::SocketAddr) -> Result<Arc<Self>> {
        let endpoint = quinn::Endpoint::server(config.clone(), listen)?;
        Ok(Arc::new(HostServer {
            endpoint,
            config: RwLock::new(config),
        }))
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Serves `config` from the next handshake on.
    pub fn serve(&self, config: quinn::ServerConfig) {
        // Both under the lock: two replacements at once leave the same one in both places.
        let mut current = self.config.write().unwrap_or_else(|p| p.into_inner());
        self.endpoint.set_server_config(Some(config.clone()));
        *current = config;
    }

    /// Accepts `incoming` with the configuration served, its controller resuming at the path
    /// the returned cell holds once it holds it (set when the handshake names the site).
    pub fn accept(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<(quinn::Connecting, Arc<OnceLock<Remembered>>)> {
        let remembered = Arc::new(OnceLock::new());
        let mut config = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        config.transport_config(transport(End::Listening, remembered.clone())?);
        let connecting = incoming
            .accept_with(Arc::new(config))
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        Ok((connecting, remembered))
    }
}

/// A QUIC server configuration: `server_tls`, no session resumed.
fn quic_server(
    verifier: Arc<dyn ClientCertVerifier>,
    id: &Identity,
    alpn: &[u8],
) -> Result<quinn::ServerConfig> {
    let mut tls = server_tls(verifier, id, alpn)?;
    // No session resumption: a resumed handshake shows no certificate, so `verifier` would not
    // run, and a client that kept its session (as any client may) would be admitted after its
    // certificate was revoked, expired, or its site left the `[[peer]]` list. Every handshake
    // is decided again, in full (docs/THREAT-MODEL.md). What it costs: the certificates and
    // their signatures, about 1 KB of a new connection's 9.8 KB. No tickets are sent either
    // (two, 166 bytes, that no client could use), and no session secret is kept.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    quinn_server(tls)
}

/// The TLS of a server: TLS 1.3 only, `id`'s certificate, clients judged by `verifier`, the
/// one protocol `alpn`.
fn server_tls(
    verifier: Arc<dyn ClientCertVerifier>,
    id: &Identity,
    alpn: &[u8],
) -> Result<rustls::ServerConfig> {
    let (chain, key) = chain_and_key(id);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// `tls` with the transport settings of a listening end.
fn quinn_server(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig> {
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(End::Listening, Arc::default())?);
    // A peer whose address changes (a NAT rebinding, a mobile unit moving from 4G to Wi-Fi)
    // keeps its connection: the new path is validated and the round goes on.
    config.migration(true);
    Ok(config)
}

/// The TLS of a client: TLS 1.3 only, `id`'s certificate, the server judged by `verifier`,
/// the one protocol `alpn`.
fn client_tls(
    verifier: Arc<dyn ServerCertVerifier>,
    id: &Identity,
    alpn: &[u8],
) -> Result<rustls::ClientConfig> {
    let (chain, key) = chain_and_key(id);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// A QUIC client configuration: `client_tls`, no session kept.
fn quic_client(
    verifier: Arc<dyn ServerCertVerifier>,
    id: &Identity,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    let mut tls = client_tls(verifier, id, alpn)?;
    // A resumed handshake would skip `verifier` (the host's pins and revoked keys, a peer's
    // list): no session is kept to offer (the servers resume none either: `quic_server`).
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(End::Connecting, Arc::default())?);
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

/// A refusal of a certificate that the site's operator reads (in `sync now`, the
/// daemon's log).
fn refused(why: String) -> rustls::Error {
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
            return Err(refused(format!(
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
            Some(pins) if pins.is_empty() => Err(refused(format!(
                "this site pins no host key (the national CA revoked the one it pinned) and refuses the host's key {short}: install a renewal bundle from the host (`carnet pki renew SITE` there, `carnet pki install BUNDLE` here)"
            ))),
            Some(_) => Err(refused(format!(
                "the host presents a TLS key this site does not pin ({short}): if the host switched to a new key while this site was not syncing, install a renewal bundle from the host (`carnet pki renew SITE` there, `carnet pki install BUNDLE` here)"
            ))),
        }
    }

    signatures_by_ca!();
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
    let ca = WebPkiServerVerifier::builder_with_provider(roots(ca_der)?, provider())
        .build()
        .map_err(tls_err)?;
    let verifier = Arc::new(PinnedHost {
        ca,
        pins: host_pins.map(<[_]>::to_vec),
        revoked: revoked_pins.to_vec(),
    });
    quic_client(verifier, site, ALPN)
}

/// The application protocol of a session between two sites (a handover without the host).
pub const PEER_ALPN: &[u8] = b"carnet-peer/1";

/// The name a dialling site gives the peer it dials: its verifier matches the peer by the site
/// id in its certificate, never by this name nor by address.
pub const PEER_SERVER_NAME: &str = "carnet-peer";

/// Who a site admits to a peer session, on either side: a certificate the national CA issued
/// for a site (client-auth usage, `site-N`), in its validity window, not revoked per the list
/// the site holds, and for one of `sites` (the site ids of `[[peer]]`).
#[derive(Debug)]
pub struct PeerPolicy {
    /// The site ids of the sites listed as `[[peer]]`, as `carnet.toml` says now (SIGHUP
    /// replaces them: `set_sites`).
    sites: RwLock<Vec<u32>>,
    /// The site certificates the host refuses, as this site holds them: `revoked_for_peers`.
    revoked: Arc<Revoked>,
    /// With `discover = true`: the sites found on the local network, admitted too.
    discovered: Option<Arc<crate::discovery::Discovery>>,
}

impl PeerPolicy {
    /// Admits the sites `sites` (listed as `[[peer]]`) and those `discovered`, not `revoked`.
    pub fn new(
        sites: Vec<u32>,
        revoked: Arc<Revoked>,
        discovered: Option<Arc<crate::discovery::Discovery>>,
    ) -> Arc<PeerPolicy> {
        Arc::new(PeerPolicy {
            sites: RwLock::new(sites),
            revoked,
            discovered,
        })
    }

    /// The sites listed as `[[peer]]` from now on (a reloaded `carnet.toml`): each handshake
    /// after it is decided on them; sessions open stay until they end.
    pub fn set_sites(&self, sites: Vec<u32>) {
        if let Ok(mut held) = self.sites.write() {
            *held = sites;
        }
    }

    /// True when site `site` is listed as `[[peer]]` or found on the local network now.
    pub fn admits_site(&self, site: u32) -> bool {
        self.sites.read().is_ok_and(|s| s.contains(&site))
            || self.discovered.as_ref().is_some_and(|d| d.admits(site))
    }

    /// Checks a peer's certificate: not revoked, the CA's `verdict` on it, and a site's:
    /// answers its site id or why it is refused.
    fn admit(
        &self,
        end_entity: &CertificateDer<'_>,
        verdict: std::result::Result<ClientCertVerified, rustls::Error>,
    ) -> std::result::Result<u32, rustls::Error> {
        if self.revoked.contains(end_entity) {
            return Err(refused(
                "the peer's certificate was revoked by the national host: no session".into(),
            ));
        }
        verdict?;
        crate::pki::site_id_of(end_entity)
            .map_err(|e| refused(format!("the peer's certificate is not a site's: {e}")))
    }
}

/// The refusal of a site not listed as `[[peer]]`.
fn not_a_peer(site: u32) -> rustls::Error {
    refused(format!(
        "site {site} is not a peer of this site (`[[peer]]` in carnet.toml, with its site id): no session"
    ))
}

/// A dialling site's verifier of the peer it dials: the same checks as its listener's (a
/// site's certificate carries the client-auth usage only, so the CA's client verifier judges
/// it), and the site id must be the one dialled.
#[derive(Debug)]
struct PeerListener {
    ca: Arc<dyn ClientCertVerifier>,
    policy: Arc<PeerPolicy>,
    site: u32,
}

impl ServerCertVerifier for PeerListener {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !self.policy.admits_site(self.site) {
            return Err(not_a_peer(self.site));
        }
        let verdict = self.ca.verify_client_cert(end_entity, intermediates, now);
        let site = self.policy.admit(end_entity, verdict)?;
        if site != self.site {
            return Err(refused(format!(
                "the peer dialled as site {} answers as site {site}: no session",
                self.site
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    signatures_by_ca!();
}

/// The CA's verifier of site certificates (client-auth usage).
fn site_certificates(ca_der: &[u8]) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider())
        .build()
        .map_err(tls_err)
}

/// A site's QUIC server configuration for `peer_listen`: it presents its own certificate and
/// admits the sites `policy` admits, ALPN `carnet-peer/1` only.
pub fn peer_server_config(
    ca_der: &[u8],
    site: &Identity,
    policy: Arc<PeerPolicy>,
) -> Result<quinn::ServerConfig> {
    let verifier = Arc::new(SiteVerifier {
        ca: site_certificates(ca_der)?,
        admits: Admits::Peers(policy),
    });
    quic_server(verifier, site, PEER_ALPN)
}

/// A site's QUIC client configuration to dial its peer `peer_site` (dial it with
/// `PEER_SERVER_NAME`): the listener must present a certificate `policy` admits, for that
/// site id.
pub fn peer_client_config(
    ca_der: &[u8],
    site: &Identity,
    peer_site: u32,
    policy: Arc<PeerPolicy>,
) -> Result<quinn::ClientConfig> {
    let verifier = Arc::new(PeerListener {
        ca: site_certificates(ca_der)?,
        policy,
        site: peer_site,
    });
    quic_client(verifier, site, PEER_ALPN)
}

/// The site id of the peer at the other end of an established peer session (its verifier
/// admitted it: this reads the id it checked).
pub fn peer_site(conn: &quinn::Connection) -> Result<u32> {
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| Error::Tls("the peer presented no certificate".into()))?;
    let cert = chain
        .first()
        .ok_or_else(|| Error::Tls("the peer presented no certificate".into()))?;
    crate::pki::site_id_of(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{HOST_NAME, issue_host, issue_site, new_ca};
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::testkit::{echo_host, now_secs as now};

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

    /// A connection from `site` to the host at `addr`, with its client endpoint.
    async fn dial(
        ca_der: &[u8],
        site: &Identity,
        addr: SocketAddr,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        endpoint.set_default_client_config(client_config(ca_der, site, None, &[]).expect("client"));
        let conn = within(endpoint.connect(addr, HOST_NAME).expect("connect"))
            .await
            .expect("handshake");
        (endpoint, conn)
    }

    /// A new connection: the site's end reaches the full datagram size (1,452 bytes) having
    /// sent, handshake and probes together, what it sends with two probes.
    #[tokio::test]
    async fn a_new_connection_finds_the_full_datagram_size_in_few_bytes() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let server = server_config(&ca.cert_der, &host, Arc::default()).expect("server");
        let (_endpoint, addr) = echo_host(server);
        let (_client, conn) = dial(&ca.cert_der, &site, addr).await;
        // The size moves to 1,452 once the probe of 1,452 bytes is acknowledged: every probe of
        // the search was sent by then.
        let reached = async {
            loop {
                let stats = conn.stats();
                if stats.path.current_mtu == 1452 {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let stats = within(reached).await;
        conn.close(0u32.into(), b"done");
        // The site's handshake (its Initial padded to 1,200 bytes, its certificate of about 350
        // bytes, acknowledgements) is about 2.6 KB; with two probes, 5.4 KB; with quinn's
        // default steps of 20 bytes, 8.3 KB. (A handshake datagram sent again on a busy
        // machine adds 1.2 KB.)
        let sent = stats.udp_tx.bytes;
        assert!(sent < 7_000, "{sent} bytes sent: {stats:?}");
    }

    /// A host that accepts one connection and reads nothing of it (the task answers its
    /// endpoint and the connection, to keep them open).
    fn silent_host(
        ca_der: &[u8],
        host: &Identity,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<(quinn::Endpoint, quinn::Connection)>,
    ) {
        let server = server_config(ca_der, host, Arc::default()).expect("server");
        let listener =
            quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = tokio::spawn(async move {
            let incoming = listener.accept().await.expect("incoming");
            let conn = incoming.await.expect("handshake");
            (listener, conn)
        });
        (addr, accepted)
    }

    /// A site with a valid certificate that opens streams and sends without waiting makes the
    /// host hold at most `CONNECTION_WINDOW` bytes it has not read, while one stream alone
    /// takes `STREAM_WINDOW`, room for a site's whole `PUSH_WINDOW` of pushes.
    #[tokio::test]
    async fn a_connection_holds_a_push_window_on_a_stream_and_no_more_than_its_window_in_all() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let (addr, accepted) = silent_host(&ca.cert_der, &host);
        // The site's own send buffer larger than anything the host may grant: a write waits
        // only for the host's credit, which it never extends (it reads nothing).
        let mut client = client_config(&ca.cert_der, &site, None, &[]).expect("client");
        let mut unbuffered = quinn::TransportConfig::default();
        unbuffered.send_window(64 << 20);
        client.transport_config(Arc::new(unbuffered));
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        endpoint.set_default_client_config(client);
        let conn = within(endpoint.connect(addr, HOST_NAME).expect("connect"))
            .await
            .expect("handshake");
        let _host = within(accepted).await.expect("accepted");
        // Each stream is written until a write waits for credit (a write with credit left
        // returns at once, whatever the machine's load).
        let piece = vec![7u8; 64 << 10];
        let mut taken = Vec::new();
        for _ in 0..4 {
            let (mut send, _recv) = conn.open_bi().await.expect("stream");
            let mut sent = 0usize;
            while sent <= STREAM_WINDOW as usize {
                match tokio::time::timeout(Duration::from_millis(300), send.write(&piece)).await {
                    Ok(Ok(n)) => sent += n,
                    Ok(Err(e)) => panic!("write: {e}"),
                    Err(_) => break,
                }
            }
            taken.push(sent);
        }
        conn.close(0u32.into(), b"done");
        let (stream, connection) = (STREAM_WINDOW as usize, CONNECTION_WINDOW as usize);
        assert!(stream >= crate::session::PUSH_WINDOW * crate::session::CHUNK_MAX);
        assert_eq!(taken, [stream, connection - stream, 0, 0]);
    }

    /// The host reads no one-way stream: a site may open none.
    #[tokio::test]
    async fn a_site_cannot_open_a_one_way_stream_to_the_host() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let (addr, accepted) = silent_host(&ca.cert_der, &host);
        let (_client, conn) = dial(&ca.cert_der, &site, addr).await;
        let _host = within(accepted).await.expect("accepted");
        // A stream the host allowed would open at once, from the limits of its handshake.
        let opened = tokio::time::timeout(Duration::from_millis(300), conn.open_uni()).await;
        assert!(opened.is_err(), "a one-way stream opened");
        assert!(
            within(conn.open_bi()).await.is_ok(),
            "two-way streams still open"
        );
        conn.close(0u32.into(), b"done");
    }

    /// A client as a rogue site may run it: its TLS sessions kept, to resume them.
    fn resuming(
        verifier: Arc<dyn ServerCertVerifier>,
        id: &Identity,
        alpn: &[u8],
    ) -> quinn::ClientConfig {
        let mut tls = client_tls(verifier, id, alpn).expect("tls");
        tls.resumption = rustls::client::Resumption::in_memory_sessions(8);
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("quic")))
    }

    /// A rogue site with a valid certificate keeps the TLS session of a handshake the host
    /// admitted, and offers it again once revoked: a resumed handshake shows no certificate,
    /// and the host resumes none, so it decides the certificate again and refuses it.
    #[tokio::test]
    async fn a_site_that_kept_its_tls_session_is_refused_once_revoked() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let revoked = Arc::new(Revoked::default());
        let (_endpoint, addr) =
            echo_host(server_config(&ca.cert_der, &host, revoked.clone()).expect("server"));
        let verifier = Arc::new(PinnedHost {
            ca: WebPkiServerVerifier::builder_with_provider(
                roots(&ca.cert_der).expect("roots"),
                provider(),
            )
            .build()
            .expect("verifier"),
            pins: None,
            revoked: vec![],
        });
        let client = resuming(verifier, &site, ALPN);
        let again = exchange_then_again_once_revoked(client, addr, &revoked, &site).await;
        assert!(again.is_err(), "a revoked site resumed its session");
    }

    /// One exchange of `client` with the host at `addr`, admitted; then `site` revoked there,
    /// the outcome of another exchange with the same configuration.
    async fn exchange_then_again_once_revoked(
        client: quinn::ClientConfig,
        addr: SocketAddr,
        revoked: &Revoked,
        site: &Identity,
    ) -> std::result::Result<Vec<u8>, String> {
        let ok = within(exchange(client.clone(), addr)).await;
        assert_eq!(ok.as_deref(), Ok(&b"hello"[..]));
        revoked.add(fingerprint(&site.cert_der));
        within(exchange(client, addr)).await
    }

    /// A site decides the host's certificate at every handshake: it keeps no session to offer
    /// a host that would resume one (a host here that resumes, and would admit through a
    /// resumed session the site it has revoked since: the site's second handshake is a full
    /// one, refused).
    #[tokio::test]
    async fn a_site_offers_no_tls_session_to_resume() {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let revoked = Arc::new(Revoked::default());
        let verifier = Arc::new(SiteVerifier {
            ca: site_certificates(&ca.cert_der).expect("ca"),
            admits: Admits::NotRevoked(revoked.clone()),
        });
        // rustls's defaults: two tickets per handshake, 256 sessions kept.
        let tls = server_tls(verifier, &host, ALPN).expect("tls");
        let (_endpoint, addr) = echo_host(quinn_server(tls).expect("server"));
        let client = client_config(&ca.cert_der, &site, None, &[]).expect("client");
        let again = exchange_then_again_once_revoked(client, addr, &revoked, &site).await;
        assert!(again.is_err(), "the site resumed a session");
    }

    /// The same at a peer listener: a site taken off its `[[peer]]` list offers the session of
    /// a handover session it had, and is refused.
    #[tokio::test]
    async fn a_peer_that_kept_its_tls_session_is_refused_once_unlisted() {
        let ca = new_ca(now()).expect("ca");
        let clinic = issue_site(&ca, 7, now()).expect("clinic");
        let unit = issue_site(&ca, 12, now()).expect("unit");
        let listed = policy(&[12], &[]);
        let server = peer_server_config(&ca.cert_der, &clinic, listed.clone()).expect("server");
        let (_e, addr, mut outcomes) = peer_listener(server);
        let verifier = Arc::new(PeerListener {
            ca: site_certificates(&ca.cert_der).expect("ca"),
            policy: policy(&[7], &[]),
            site: 7,
        });
        let client = resuming(verifier, &unit, PEER_ALPN);
        assert_eq!(within(dial_peer(client.clone(), addr)).await, Ok(7));
        assert_eq!(within(outcomes.recv()).await, Some(Ok(12)));
        listed.set_sites(vec![]);
        let again = within(dial_peer(client, addr)).await;
        assert!(again.is_err(), "an unlisted peer resumed its session");
        let refusal = within(outcomes.recv()).await.expect("an outcome");
        assert!(refusal.is_err(), "{refusal:?}");
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

    /// `f`, or a failure after 5 s (a handshake on 127.0.0.1 takes milliseconds).
    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("in time")
    }

    /// A site's peer listener on 127.0.0.1 that echoes one message per session; every
    /// handshake's outcome (the peer's site id, or the refusal) goes to the receiver.
    fn peer_listener(
        config: quinn::ServerConfig,
    ) -> (
        quinn::Endpoint,
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<std::result::Result<u32, String>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let local = endpoint.local_addr().expect("local");
        let server = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(peer_site(&conn).map_err(|e| e.to_string()));
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let got = recv.read_to_end(1024).await.unwrap_or_default();
                        let _ = send.write_all(&got).await;
                        let _ = send.finish();
                        let _ = conn.closed().await;
                    }
                });
            }
        });
        (endpoint, local, rx)
    }

    /// Dials a peer as `PEER_SERVER_NAME`, exchanges one message: answers the site id the
    /// dialler read from the listener's certificate.
    async fn dial_peer(
        client: quinn::ClientConfig,
        peer: SocketAddr,
    ) -> std::result::Result<u32, String> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
            .map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(client);
        let conn = endpoint
            .connect(peer, PEER_SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let site = peer_site(&conn).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"hello").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"done");
        assert_eq!(reply, b"hello");
        Ok(site)
    }

    fn policy(sites: &[u32], revoked: &[&Identity]) -> Arc<PeerPolicy> {
        let list = Arc::new(Revoked::default());
        for id in revoked {
            list.add(fingerprint(&id.cert_der));
        }
        PeerPolicy::new(sites.to_vec(), list, None)
    }

    /// The clinic (site 7) listens for the mobile unit (site 12): a session opens and each
    /// end knows the other by the site id in its certificate.
    #[tokio::test]
    async fn two_listed_sites_open_a_peer_session() {
        let ca = new_ca(now()).expect("ca");
        let clinic = issue_site(&ca, 7, now()).expect("clinic");
        let unit = issue_site(&ca, 12, now()).expect("unit");
        let server =
            peer_server_config(&ca.cert_der, &clinic, policy(&[12, 3], &[])).expect("server");
        let (_e, addr, mut outcomes) = peer_listener(server);
        let client = peer_client_config(&ca.cert_der, &unit, 7, policy(&[7], &[])).expect("client");
        let dialled = within(dial_peer(client, addr)).await;
        assert_eq!(dialled, Ok(7), "the unit reached the clinic");
        let accepted = within(outcomes.recv()).await;
        assert_eq!(accepted, Some(Ok(12)), "the clinic knows the unit");
    }

    /// A rogue site with a valid certificate of the national CA tries each refusal at the
    /// listener, whose reason the listener reads.
    #[tokio::test]
    async fn the_peer_listener_refuses_a_rogue_site_with_a_valid_certificate() {
        let ca = new_ca(now()).expect("ca");
        let clinic = issue_site(&ca, 7, now()).expect("clinic");
        let unit = issue_site(&ca, 12, now()).expect("unit");
        let stranger = issue_site(&ca, 13, now()).expect("stranger");
        let renewed_unit = issue_site(&ca, 12, now()).expect("unit's new certificate");
        let host = issue_host(&ca, now(), None).expect("host");
        let rogue_ca = new_ca(now()).expect("rogue ca");
        let forged_unit = issue_site(&rogue_ca, 12, now()).expect("forged");
        // The clinic lists the unit, and holds the host's revocation of the unit's first
        // certificate.
        let server =
            peer_server_config(&ca.cert_der, &clinic, policy(&[12], &[&unit])).expect("server");
        let (_e, addr, mut outcomes) = peer_listener(server);
        // Each dials trusting the national CA (its certificate is public), as the clinic's
        // listed peer would.
        let dial_as = |who: &Identity| {
            let client =
                peer_client_config(&ca.cert_der, who, 7, policy(&[7], &[])).expect("client");
            within(dial_peer(client, addr))
        };
        let cases = [
            (&unit, "revoked by the national host"),
            (&stranger, "site 13 is not a peer of this site"),
            (&host, "invalid peer certificate"),
            // The rogue CA names itself as the national CA does: its signature fails.
            (&forged_unit, "invalid peer certificate: BadSignature"),
        ];
        for (who, why) in cases {
            let dialled = dial_as(who).await;
            assert!(dialled.is_err(), "{why}: admitted");
            let refusal = within(outcomes.recv())
                .await
                .expect("an outcome")
                .expect_err(why);
            assert!(refusal.contains(why), "{why}: {refusal}");
        }
        // The unit's renewed certificate, not revoked, is admitted.
        let ok = dial_as(&renewed_unit).await;
        assert_eq!(ok, Ok(7));
        let accepted = within(outcomes.recv()).await;
        assert_eq!(accepted, Some(Ok(12)));
    }

    /// The clinic's list is the one its replica holds, read at each handshake: the host revokes
    /// the mobile unit, the clinic admits the host's signed list while its listener runs, and the
    /// unit's next session is refused on either side.
    #[tokio::test]
    async fn a_site_refuses_a_peer_the_host_revoked_from_the_list_it_holds() {
        let tmp = tempfile::tempdir().expect("tmp");
        let host = crate::testkit::init(
            &tmp.path().join("host"),
            carnet_store::replica::Role::Host,
            None,
            None,
        );
        crate::enrol::init_host(&host).expect("pki");
        let enrol = |name| crate::enrol::enrol(&host, name, "750000001", "127.0.0.1:4433");
        let clinic = enrol("Clinique").expect("clinic");
        let unit = enrol("Unité mobile").expect("unit");
        let (ca, c, u) = (&clinic.ca_cert_der, clinic.site_id, unit.site_id);
        let replica = Arc::new(crate::testkit::site_from_bundle(
            &tmp.path().join("clinic"),
            &clinic,
        ));
        let held = || PeerPolicy::new(vec![u], revoked_for_peers(replica.clone()), None);
        let server = peer_server_config(ca, &clinic.identity, held()).expect("server");
        let (_e1, clinic_addr, mut outcomes) = peer_listener(server);
        // The unit's own listener, which admits the clinic.
        let server = peer_server_config(ca, &unit.identity, policy(&[c], &[])).expect("server");
        let (_e2, unit_addr, _o2) = peer_listener(server);
        let unit_dials = || {
            let client =
                peer_client_config(ca, &unit.identity, c, policy(&[c], &[])).expect("client");
            within(dial_peer(client, clinic_addr))
        };
        let clinic_dials = || {
            let client = peer_client_config(ca, &clinic.identity, u, held()).expect("client");
            within(dial_peer(client, unit_addr))
        };
        assert_eq!(unit_dials().await, Ok(c));
        assert_eq!(within(outcomes.recv()).await, Some(Ok(u)));
        assert_eq!(clinic_dials().await, Ok(u));
        // Revoked at the host; the clinic receives the list (a bundle from the host here, its
        // pull in a round alike).
        crate::enrol::revoke(&host, u).expect("revoke");
        replica
            .import_authority(&host.export_authority().expect("export"))
            .expect("import");
        let why = "the peer's certificate was revoked by the national host";
        assert!(unit_dials().await.is_err(), "a revoked unit admitted");
        let refusal = within(outcomes.recv())
            .await
            .expect("an outcome")
            .expect_err("refused");
        assert!(refusal.contains(why), "{refusal}");
        let e = clinic_dials()
            .await
            .expect_err("a revoked listener admitted");
        assert!(e.contains(why), "{e}");
    }

    /// The dialler checks the same of the listener, and that it is the site dialled.
    #[tokio::test]
    async fn the_dialler_refuses_a_rogue_listener() {
        let ca = new_ca(now()).expect("ca");
        let clinic = issue_site(&ca, 7, now()).expect("clinic");
        let unit = issue_site(&ca, 12, now()).expect("unit");
        let impostor = issue_site(&ca, 9, now()).expect("impostor");
        // Listeners that would admit the unit: the clinic, and a site 9 that lists it too.
        let listen = |who: &Identity| {
            let server = peer_server_config(&ca.cert_der, who, policy(&[12], &[])).expect("server");
            peer_listener(server)
        };
        let (_e1, clinic_addr, _o1) = listen(&clinic);
        let (_e2, impostor_addr, _o2) = listen(&impostor);
        let dial = |peer_site: u32, sites: &[u32], revoked: &[&Identity], addr| {
            let client = peer_client_config(&ca.cert_der, &unit, peer_site, policy(sites, revoked))
                .expect("client");
            within(dial_peer(client, addr))
        };
        // Site 9 at the address where the unit expects the clinic.
        let e = dial(7, &[7, 9], &[], impostor_addr)
            .await
            .expect_err("another site admitted");
        assert!(e.contains("dialled as site 7 answers as site 9"), "{e}");
        // The clinic, revoked per the unit's list.
        let e = dial(7, &[7], &[&clinic], clinic_addr)
            .await
            .expect_err("a revoked peer admitted");
        assert!(e.contains("revoked by the national host"), "{e}");
        // The clinic, not listed as a peer.
        let e = dial(7, &[9], &[], clinic_addr)
            .await
            .expect_err("a site not listed admitted");
        assert!(e.contains("site 7 is not a peer of this site"), "{e}");
        // The host's own endpoint (`carnet/1`, a host certificate) is no peer.
        let host = issue_host(&ca, now(), None).expect("host");
        let (_e3, host_addr) =
            echo_host(server_config(&ca.cert_der, &host, Arc::default()).expect("server"));
        assert!(dial(7, &[7], &[], host_addr).await.is_err());
        // Listed, not revoked, the site dialled: admitted.
        assert_eq!(dial(7, &[7], &[], clinic_addr).await, Ok(7));
    }
}
