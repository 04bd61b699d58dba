//! Enrolment: the host's register of sites and their certificates, and the bundle that
//! carries a site's identity to it (at enrolment, and at each renewal).
//!
//! Invariants: only a host replica with a PKI (`pki init`) enrols; site ids are assigned by the
//! host, never reused; a revoked site stays revoked, and so does a retired certificate. The
//! register and a site's TLS identity are stored sealed in the replica (`Replica::put_sealed`),
//! each beginning with its format byte. A bundle holds a private key: it is written with mode
//! 0600 and is for the site's installer only. It pins the host's TLS key: a site accepts only
//! a host certificate for that key, or for a next key the host handed over to (`hostkey`),
//! chaining to the CA and not revoked by it. A site installs a renewal bundle
//! only for its own site id, host signing key and CA, and never an older certificate over a
//! newer one. When the CA key is kept offline (`pki init --ca-dir`), the register holds only
//! the CA certificate and every issuing takes the offline CA (`Ca`).

use std::collections::BTreeMap;
use std::path::Path;

use carnet_store::replica::{HostSync, Replica, Role};
use carnet_store::time::Millis;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pki::{self, Identity};

/// Name of the host's register in the replica.
const HOST_PKI: &str = "host-pki";
/// Name of a site's TLS identity in the replica (with its host pins and revoked host keys).
pub(crate) const SITE_TLS: &str = "site-tls";
/// Magic prefix of a bundle file.
const BUNDLE_MAGIC: &[u8; 8] = b"CARNETEN";
/// Format version of bundles and of the host's register: 2 brought certificate lifetimes,
/// renewal, the host key pin and the offline CA. A format 1 register is read and upgraded; a
/// format 1 bundle is refused (its certificate has no real lifetime and it pins no host key).
const FORMAT: u8 = 2;
/// Format of a site's stored TLS identity: 3 holds two host pins (current and next, a
/// hand-over) and the revoked host keys; 2 held one pin (format 1 had no format byte: it
/// began with the CA certificate's length, a varint of at least two bytes whose first is
/// ≥ 0x80). Formats 1 and 2 are read.
const SITE_TLS_FORMAT: u8 = 3;
/// Format 2 of a site's stored TLS identity.
const SITE_TLS_FORMAT_2: u8 = 2;
/// Name of the host's renewals asked for over sync (`Renewal`, postcard after a format byte).
const HOST_RENEWALS: &str = "host-renewals";
/// Format of the stored renewals.
const RENEWALS_FORMAT: u8 = 1;
/// Name of a site's next private key (PKCS#8): a renewal it asked for and has not installed
/// yet; empty when none.
const SITE_NEXT_KEY: &str = "site-tls-next";
/// The files of an offline CA folder (`pki init --ca-dir`).
const CA_CERT_FILE: &str = "ca.cert.der";
const CA_KEY_FILE: &str = "ca.key.der";

fn ms(secs: i64) -> Millis {
    secs.saturating_mul(1000)
}

/// One certificate issued to a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCert {
    /// Its fingerprint (`transport::fingerprint`).
    pub fingerprint: [u8; 32],
    /// Start of validity (Unix milliseconds).
    pub not_before: Millis,
    /// End of validity (Unix milliseconds).
    pub not_after: Millis,
    /// Refused although unexpired (`pki renew --retire-old`).
    pub retired: bool,
}

/// A site known to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Human name.
    pub name: String,
    /// FINESS of the establishment.
    pub finess: String,
    /// Revoked: all its certificates are refused.
    pub revoked: bool,
    /// Its certificates, oldest first; each valid until it expires, is retired or the site is
    /// revoked, so a site switches to a renewed one without a gap.
    pub certs: Vec<SiteCert>,
    /// Where the site reaches the host (from its enrolment; `None` for a site enrolled by a
    /// format 1 register).
    pub host_address: Option<String>,
}

impl SiteRecord {
    /// The newest certificate.
    pub fn current(&self) -> Option<&SiteCert> {
        self.certs.last()
    }

    /// The fingerprints the host refuses: all of a revoked site, else the retired ones.
    pub fn refused(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.certs
            .iter()
            .filter(move |c| self.revoked || c.retired)
            .map(|c| c.fingerprint)
    }
}

/// Format 1 of a site record: one certificate, no lifetime recorded (rcgen's defaults, 1975 to
/// 4096).
#[derive(Deserialize)]
struct SiteRecordV1 {
    name: String,
    finess: String,
    revoked: bool,
    fingerprint: [u8; 32],
}

/// The host's PKI register.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct HostPki {
    format: u8,
    /// The national CA certificate (DER).
    ca_cert: Vec<u8>,
    /// The CA's private key (PKCS#8 DER), unless kept offline.
    ca_key: Option<Vec<u8>>,
    /// The certificate and key the host serves.
    pub(crate) host: Identity,
    next_site: u32,
    sites: BTreeMap<u32, SiteRecord>,
}

#[derive(Deserialize)]
struct HostPkiV1 {
    _format: u8,
    ca: Identity,
    host: Identity,
    next_site: u32,
    sites: BTreeMap<u32, SiteRecordV1>,
}

/// 1975-01-01 and 4096-01-01, the window rcgen gave certificates issued by format 1.
const V1_NOT_BEFORE: i64 = 157_766_400;
const V1_NOT_AFTER: i64 = 67_090_118_400;

impl HostPki {
    fn decode(raw: &[u8]) -> Result<HostPki> {
        let damaged = || Error::Invalid("the stored PKI register is damaged".into());
        match raw.first() {
            Some(&FORMAT) => postcard::from_bytes(raw).map_err(|_| damaged()),
            Some(1) => {
                let v1: HostPkiV1 = postcard::from_bytes(raw).map_err(|_| damaged())?;
                Ok(HostPki {
                    format: FORMAT,
                    ca_cert: v1.ca.cert_der,
                    ca_key: Some(v1.ca.key_der),
                    host: v1.host,
                    next_site: v1.next_site,
                    sites: v1
                        .sites
                        .into_iter()
                        .map(|(id, s)| {
                            let cert = SiteCert {
                                fingerprint: s.fingerprint,
                                not_before: ms(V1_NOT_BEFORE),
                                not_after: ms(V1_NOT_AFTER),
                                retired: false,
                            };
                            let record = SiteRecord {
                                name: s.name,
                                finess: s.finess,
                                revoked: s.revoked,
                                certs: vec![cert],
                                host_address: None,
                            };
                            (id, record)
                        })
                        .collect(),
                })
            }
            Some(f) => Err(Error::Invalid(format!(
                "the stored PKI register has format {f}, newer than this build reads ({FORMAT}): upgrade carnet"
            ))),
            None => Err(damaged()),
        }
    }

    /// The CA to issue with: the register's, or the offline one, which must be the same CA.
    pub(crate) fn ca(&self, offline: Option<&Identity>) -> Result<Identity> {
        match (&self.ca_key, offline) {
            (Some(key), None) => Ok(Identity {
                cert_der: self.ca_cert.clone(),
                key_der: key.clone(),
            }),
            (None, Some(ca)) | (Some(_), Some(ca)) if ca.cert_der == self.ca_cert => Ok(ca.clone()),
            (_, Some(_)) => Err(Error::Invalid(
                "the CA in --ca-dir is not this host's national CA".into(),
            )),
            (None, None) => Err(Error::Invalid(
                "this host keeps its CA key offline: pass --ca-dir DIR (the folder `pki init --ca-dir` wrote)".into(),
            )),
        }
    }
}

/// What a site needs to join or renew: its identity, the CA, the host's keys and address.
#[derive(Clone, Serialize, Deserialize)]
pub struct Bundle {
    format: u8,
    /// Site id assigned by the host.
    pub site_id: u32,
    /// Site name.
    pub name: String,
    /// FINESS.
    pub finess: String,
    /// Where the host listens (`IP:PORT`): a site created from the bundle writes it to its
    /// `carnet.toml` (`host_address`).
    pub host_address: String,
    /// The national CA certificate (DER).
    pub ca_cert_der: Vec<u8>,
    /// The site's certificate and key.
    pub identity: Identity,
    /// The host's Ed25519 public key (signed records).
    pub host_key: [u8; 32],
    /// The pin of the host's TLS key (`pki::key_pin`): the only host certificates the site
    /// accepts are the CA's for this key (and for a next key the host hands over to).
    pub host_tls_pin: [u8; 32],
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bundle(site {})", self.site_id)
    }
}

impl Bundle {
    /// A bundle of this build's format from its fields, for the golden bytes of PROTOCOL.md
    /// (the material is not checked: `from_bytes` checks it).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of_fields(
        site_id: u32,
        name: &str,
        finess: &str,
        host_address: &str,
        ca_cert_der: Vec<u8>,
        identity: Identity,
        host_key: [u8; 32],
        host_tls_pin: [u8; 32],
    ) -> Bundle {
        Bundle {
            format: FORMAT,
            site_id,
            name: name.into(),
            finess: finess.into(),
            host_address: host_address.into(),
            ca_cert_der,
            identity,
            host_key,
            host_tls_pin,
        }
    }

    /// Encodes as a file: magic, then postcard.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = BUNDLE_MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).map_err(|e| Error::Invalid(e.to_string()))?);
        Ok(out)
    }

    /// Decodes a bundle file; anything else is a clear error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle> {
        let rest = bytes
            .strip_prefix(BUNDLE_MAGIC.as_slice())
            .ok_or_else(|| Error::Invalid("not a Carnet enrolment bundle".into()))?;
        match rest.first() {
            Some(&FORMAT) => {}
            Some(1) => {
                return Err(Error::Invalid(
                    "this enrolment bundle has format 1 (a certificate without a real lifetime, no host key pin): ask the host for a new one (`carnet pki renew SITE`, or `pki enrol` for a new site)".into(),
                ));
            }
            Some(f) => {
                return Err(Error::Invalid(format!(
                    "enrolment bundle format {f} is not supported (expects {FORMAT}): upgrade carnet"
                )));
            }
            None => {
                return Err(Error::Invalid(
                    "the enrolment bundle is truncated or damaged".into(),
                ));
            }
        }
        let b: Bundle = postcard::from_bytes(rest)
            .map_err(|_| Error::Invalid("the enrolment bundle is truncated or damaged".into()))?;
        // The material must at least make a TLS configuration, and its certificate be readable.
        b.client_config()?;
        pki::validity(&b.identity.cert_der)?;
        Ok(b)
    }

    /// The site's QUIC client configuration from this bundle.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        crate::transport::client_config(
            &self.ca_cert_der,
            &self.identity,
            Some(&[self.host_tls_pin]),
            &[],
        )
    }
}

/// The host TLS keys a site accepts: the one it pinned, and the next one the host handed over
/// to (`hostkey::HandOver`). Both `None` (the pinned key revoked, no hand-over taken): the
/// site accepts no host until it installs a renewal bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPins {
    /// The key pinned at enrolment (or by the last bundle, or the last hand-over completed).
    pub current: Option<[u8; 32]>,
    /// The key the host announced it will serve next.
    pub next: Option<[u8; 32]>,
}

impl HostPins {
    /// Pins `pin` alone.
    pub fn only(pin: [u8; 32]) -> HostPins {
        HostPins {
            current: Some(pin),
            next: None,
        }
    }

    /// The pins held, current first.
    pub fn list(&self) -> Vec<[u8; 32]> {
        self.current
            .iter()
            .chain(self.next.iter())
            .copied()
            .collect()
    }

    /// True when no pin is left.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.next.is_none()
    }

    /// Drops `pin` wherever it is held.
    pub fn remove(&mut self, pin: &[u8; 32]) {
        if self.current.as_ref() == Some(pin) {
            self.current = None;
        }
        if self.next.as_ref() == Some(pin) {
            self.next = None;
        }
    }
}

/// A site's TLS identity, as installed from its bundle, with the host keys it trusts and
/// those it refuses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteTls {
    /// The national CA certificate.
    pub ca_cert_der: Vec<u8>,
    /// The site's certificate and key.
    pub identity: Identity,
    /// The host address the bundle named, kept as the stored format holds it. Not dialed:
    /// `carnet init --enrol` writes it to `carnet.toml`, whose `host_address` the site dials.
    pub host_address: String,
    /// The pins of the host's TLS keys; `None` for a site enrolled with a format 1 bundle,
    /// which accepts any certificate of the CA for `carnet-host` until it installs a renewal.
    pub host_pins: Option<HostPins>,
    /// Host keys the national CA revoked (`hostkey::HostRevocation`, checked when admitted):
    /// refused at the handshake, pinned or not.
    pub revoked_host_pins: Vec<[u8; 32]>,
}

impl SiteTls {
    /// The identity `bundle` brings, pinning its host key. With `kept` (the identity installed
    /// before): a hand-over it took to another key stays, and so do its revoked host keys.
    fn from_bundle(bundle: &Bundle, kept: Option<SiteTls>) -> SiteTls {
        let pin = bundle.host_tls_pin;
        let (next, revoked_host_pins) = kept.map_or((None, Vec::new()), |k| {
            let next = k.host_pins.and_then(|p| p.next).filter(|n| *n != pin);
            (next, k.revoked_host_pins)
        });
        SiteTls {
            ca_cert_der: bundle.ca_cert_der.clone(),
            identity: bundle.identity.clone(),
            host_address: bundle.host_address.clone(),
            host_pins: Some(HostPins {
                current: Some(pin),
                next,
            }),
            revoked_host_pins,
        }
    }

    /// The QUIC client configuration.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        let pins = self.host_pins.map(|p| p.list());
        crate::transport::client_config(
            &self.ca_cert_der,
            &self.identity,
            pins.as_deref(),
            &self.revoked_host_pins,
        )
    }
}

/// Format 1 of the stored identity.
#[derive(Deserialize)]
struct SiteTlsV1 {
    ca_cert_der: Vec<u8>,
    identity: Identity,
    host_address: String,
}

/// Format 2 as stored, after its format byte.
#[derive(Deserialize)]
struct SiteTlsV2 {
    ca_cert_der: Vec<u8>,
    identity: Identity,
    host_address: String,
    host_tls_pin: Option<[u8; 32]>,
}

pub(crate) fn load_host_pki(replica: &Replica) -> Result<HostPki> {
    let raw = replica.get_sealed(HOST_PKI)?.ok_or_else(|| {
        Error::Invalid("this host has no PKI yet: run `carnet pki init` first".into())
    })?;
    HostPki::decode(&raw)
}

/// Stores the register and, in the same commit, when the certificates it refuses changed (a
/// site revoked, a certificate retired or forgotten), the host's signed list of them
/// (`AuthorityRecord::RefusedCertificates`), which every site receives and refuses them by in
/// its sessions with other sites (`transport::revoked_for_peers`).
pub(crate) fn save_host_pki(replica: &Replica, pki: &HostPki) -> Result<()> {
    let bytes = zeroize::Zeroizing::new(
        postcard::to_stdvec(pki).map_err(|e| Error::Invalid(e.to_string()))?,
    );
    let host = replica
        .as_host()
        .ok_or_else(|| Error::Invalid("the PKI lives on the national host".into()))?;
    let refused: Vec<[u8; 32]> = pki.sites.values().flat_map(SiteRecord::refused).collect();
    host.authority()
        .put_sealed_refusing(HOST_PKI, &bytes, &refused)?;
    Ok(())
}

/// Now, in Unix seconds, by the replica's clock.
pub(crate) fn now_secs(replica: &Replica) -> i64 {
    replica.now().div_euclid(1000)
}

/// Host: creates the national CA and the host's certificate (once), the CA key kept in the
/// replica.
pub fn init_host(replica: &Replica) -> Result<()> {
    let ca = pki::new_ca(now_secs(replica))?;
    init_host_with(replica, &ca, true)
}

/// Host: sets up the PKI with `ca` (made by `pki::new_ca`): its key is kept in the replica if
/// `keep_key`, else only its certificate (the key stays in the offline folder the caller
/// wrote first).
pub fn init_host_with(replica: &Replica, ca: &Identity, keep_key: bool) -> Result<()> {
    if replica.config().role != Role::Host {
        return Err(Error::Invalid("the PKI lives on the national host".into()));
    }
    if replica.get_sealed(HOST_PKI)?.is_some() {
        return Err(Error::Invalid("this host already has a PKI".into()));
    }
    let host = pki::issue_host(ca, now_secs(replica), None)?;
    save_host_pki(
        replica,
        &HostPki {
            format: FORMAT,
            ca_cert: ca.cert_der.clone(),
            ca_key: keep_key.then(|| ca.key_der.clone()),
            host,
            next_site: 1,
            sites: BTreeMap::new(),
        },
    )
}

/// True if this host has a PKI whose CA key is kept offline.
pub fn ca_is_offline(replica: &Replica) -> Result<bool> {
    Ok(load_host_pki(replica)?.ca_key.is_none())
}

fn check_address(host_address: &str) -> Result<()> {
    if host_address.parse::<std::net::SocketAddr>().is_err() {
        return Err(Error::Invalid(format!(
            "'{host_address}' is not a host address (IP:PORT)"
        )));
    }
    Ok(())
}

fn host_signing_key(replica: &Replica) -> Result<[u8; 32]> {
    replica
        .host_key()?
        .ok_or_else(|| Error::Invalid("this replica has no host signing key".into()))
}

fn site_cert(identity: &Identity) -> Result<SiteCert> {
    site_cert_of(&identity.cert_der)
}

fn site_cert_of(cert_der: &[u8]) -> Result<SiteCert> {
    let v = pki::validity(cert_der)?;
    Ok(SiteCert {
        fingerprint: crate::transport::fingerprint(cert_der),
        not_before: ms(v.not_before),
        not_after: ms(v.not_after),
        retired: false,
    })
}

/// Host: enrols a new site and returns its bundle (CA key in the replica).
pub fn enrol(replica: &Replica, name: &str, finess: &str, host_address: &str) -> Result<Bundle> {
    enrol_with(replica, name, finess, host_address, None, None)
}

/// Host: enrols a new site and returns its bundle; `ca` is the offline CA, if its key is not
/// in the replica; `days`, the certificate's lifetime (`pki::SITE_DAYS` by default).
pub fn enrol_with(
    replica: &Replica,
    name: &str,
    finess: &str,
    host_address: &str,
    ca: Option<&Identity>,
    days: Option<i64>,
) -> Result<Bundle> {
    let finess = carnet_store::ids::Finess::parse(finess)?;
    if name.trim().is_empty() {
        return Err(Error::Invalid("a site needs a name (--name)".into()));
    }
    check_address(host_address)?;
    let host_key = host_signing_key(replica)?;
    let mut reg = load_host_pki(replica)?;
    let ca = reg.ca(ca)?;
    let site_id = reg.next_site;
    if site_id >= carnet_store::replica::daemons::FIRST_DAEMON_ORIGIN {
        // From there on, ids are the host daemons' trace origins.
        return Err(Error::Invalid("no site id left".into()));
    }
    let identity = pki::issue_site_lasting(
        &ca,
        site_id,
        now_secs(replica),
        days.unwrap_or(pki::SITE_DAYS),
    )?;
    reg.next_site = site_id
        .checked_add(1)
        .ok_or_else(|| Error::Invalid("no site id left".into()))?;
    reg.sites.insert(
        site_id,
        SiteRecord {
            name: name.trim().to_string(),
            finess: finess.to_string(),
            revoked: false,
            certs: vec![site_cert(&identity)?],
            host_address: Some(host_address.to_string()),
        },
    );
    save_host_pki(replica, &reg)?;
    Ok(Bundle {
        format: FORMAT,
        site_id,
        name: name.trim().to_string(),
        finess: finess.to_string(),
        host_address: host_address.to_string(),
        ca_cert_der: reg.ca_cert.clone(),
        identity,
        host_key,
        host_tls_pin: pki::key_pin(&reg.host.cert_der)?,
    })
}

/// Host: issues a site a new certificate (same site id, new key) and returns it in a fresh
/// bundle. Its earlier certificates stay valid until they expire, unless `retire_old`: then
/// they are refused from now on. The bundle goes to `host_address`, or where the site was told
/// at its enrolment.
pub fn renew(
    replica: &Replica,
    site_id: u32,
    host_address: Option<&str>,
    retire_old: bool,
    ca: Option<&Identity>,
) -> Result<Bundle> {
    if let Some(a) = host_address {
        check_address(a)?;
    }
    let host_key = host_signing_key(replica)?;
    let mut reg = load_host_pki(replica)?;
    let ca = reg.ca(ca)?;
    let now = now_secs(replica);
    let site = reg
        .sites
        .get_mut(&site_id)
        .ok_or_else(|| Error::Invalid(format!("no enrolled site {site_id}")))?;
    if site.revoked {
        return Err(Error::Invalid(format!(
            "site {site_id} is revoked: enrol it again (`pki enrol`) if it is to come back"
        )));
    }
    let host_address = match (host_address, &site.host_address) {
        (Some(a), _) => a.to_string(),
        (None, Some(a)) => a.clone(),
        (None, None) => {
            return Err(Error::Invalid(format!(
                "site {site_id} was enrolled before host addresses were recorded: pass --host-address IP:PORT"
            )));
        }
    };
    let identity = pki::issue_site(&ca, site_id, now)?;
    // Expired certificates are forgotten (the handshake refuses them anyway).
    site.certs.retain(|c| c.not_after >= ms(now));
    if retire_old {
        for c in &mut site.certs {
            c.retired = true;
        }
    }
    site.certs.push(site_cert(&identity)?);
    site.host_address = Some(host_address.clone());
    let bundle = Bundle {
        format: FORMAT,
        site_id,
        name: site.name.clone(),
        finess: site.finess.clone(),
        host_address,
        ca_cert_der: reg.ca_cert.clone(),
        identity,
        host_key,
        host_tls_pin: pki::key_pin(&reg.host.cert_der)?,
    };
    save_host_pki(replica, &reg)?;
    Ok(bundle)
}

/// A site's request, in its `Hello`, for a certificate for a new key pair it generated: the
/// public key, and a signature by that key over the site id and the key (a proof that the
/// site holds the private key, which never leaves it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRequest {
    /// The site the certificate is for (must be the one the connection's certificate names).
    pub site: u32,
    /// The new public key (P-256 SubjectPublicKeyInfo, DER).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// `RenewalRequest::message` signed with the new key.
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
}

impl std::fmt::Debug for RenewalRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RenewalRequest(site {})", self.site)
    }
}

impl RenewalRequest {
    /// The bytes the new key signs: a context label, the site id, the public key.
    pub fn message(site: u32, public_key: &[u8]) -> Vec<u8> {
        let mut out = b"carnet renewal v1\0".to_vec();
        out.extend_from_slice(&site.to_be_bytes());
        out.extend_from_slice(public_key);
        out
    }
}

/// A renewal a site asked for over sync, as the host keeps it until the site first connects
/// with the certificate issued for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The site.
    pub site: u32,
    /// The new public key (SubjectPublicKeyInfo, DER).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// When it was asked for (Unix milliseconds).
    pub requested_at: Millis,
    /// The certificate the CA issued for it (DER), once signed: handed to the site in its next
    /// `Welcome`.
    pub issued: Option<Vec<u8>>,
}

fn load_renewals(replica: &Replica) -> Result<Vec<Renewal>> {
    match replica.get_sealed(HOST_RENEWALS)? {
        None => Ok(Vec::new()),
        Some(raw) => match raw.split_first() {
            Some((&RENEWALS_FORMAT, rest)) => postcard::from_bytes(rest)
                .map_err(|_| Error::Invalid("the stored renewals are damaged".into())),
            _ => Err(Error::Invalid("the stored renewals are damaged".into())),
        },
    }
}

fn save_renewals(replica: &Replica, renewals: &[Renewal]) -> Result<()> {
    let mut bytes = vec![RENEWALS_FORMAT];
    bytes.extend(postcard::to_stdvec(renewals).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(replica.put_sealed(HOST_RENEWALS, &bytes)?)
}

/// Host: issues the certificate of `renewal` under `ca` and records it in the register (beside
/// the site's current one, which stays valid until the new one is first used).
fn issue_renewal(reg: &mut HostPki, ca: &Identity, renewal: &mut Renewal, now: i64) -> Result<()> {
    let site = reg
        .sites
        .get_mut(&renewal.site)
        .filter(|s| !s.revoked)
        .ok_or_else(|| Error::Invalid(format!("no active site {}", renewal.site)))?;
    let cert = pki::issue_site_for_key(ca, renewal.site, now, &renewal.public_key)?;
    site.certs.retain(|c| c.not_after >= ms(now));
    site.certs.push(site_cert_of(&cert)?);
    renewal.issued = Some(cert);
    Ok(())
}

/// Host: a renewal `site` asks for in its `Hello` (the session is bound to `site` by its
/// certificate, `presented`). Refused, and traced, unless the request is for `site`, signed by
/// the new key, and `presented` is within its renewal window (so a stolen certificate cannot
/// be stretched past its end by renewing it again and again). Answers the certificate for that key when the CA has signed it: at once when the CA
/// key is in the replica, else once the operator signs the waiting requests
/// (`sign_pending`); until then the request waits (a request with another key replaces it).
pub fn request_renewal(
    host: HostSync<'_>,
    site: u32,
    presented: &[u8],
    request: &RenewalRequest,
) -> Result<Option<Vec<u8>>> {
    let replica: &Replica = &host;
    let refused = if request.site != site {
        Some(format!(
            "a renewal for site {} asked with the certificate of site {site}",
            request.site
        ))
    } else if pki::verify_by_key(
        &request.public_key,
        &RenewalRequest::message(site, &request.public_key),
        &request.proof,
    )
    .is_err()
    {
        Some(format!(
            "a renewal for site {site} not signed by the key it names"
        ))
    } else if !in_renewal_window(pki::validity(presented)?, now_secs(replica)) {
        Some(format!(
            "a renewal for site {site} asked with a certificate not yet in its renewal window"
        ))
    } else {
        None
    };
    if let Some(why) = refused {
        host.trace_refusal(carnet_store::ids::SiteId(site), "renewal-refused")?;
        return Err(Error::Invalid(format!("{why}: refused")));
    }
    let mut renewals = load_renewals(replica)?;
    let i = match renewals.iter().position(|r| r.site == site) {
        Some(i) if renewals[i].public_key == request.public_key => i,
        found => {
            let renewal = Renewal {
                site,
                public_key: request.public_key.clone(),
                requested_at: replica.now(),
                issued: None,
            };
            match found {
                Some(i) => renewals[i] = renewal,
                None => renewals.push(renewal),
            }
            save_renewals(replica, &renewals)?;
            renewals.iter().position(|r| r.site == site).unwrap_or(0)
        }
    };
    if renewals[i].issued.is_none() {
        let mut reg = load_host_pki(replica)?;
        let Some(key) = reg.ca_key.clone() else {
            return Ok(None); // The CA is offline: the request waits for `sign_pending`.
        };
        let ca = Identity {
            cert_der: reg.ca_cert.clone(),
            key_der: key,
        };
        issue_renewal(&mut reg, &ca, &mut renewals[i], now_secs(replica))?;
        save_host_pki(replica, &reg)?;
        save_renewals(replica, &renewals)?;
    }
    Ok(renewals[i].issued.clone())
}

/// Host: the renewals asked for over sync and not yet used by their site (signed or waiting
/// for the CA).
pub fn renewals(replica: &Replica) -> Result<Vec<Renewal>> {
    load_renewals(replica)
}

/// Host: signs every renewal waiting for the CA (`ca`: the offline CA, if its key is not in
/// the replica); each site receives its certificate at its next round. Answers the renewals
/// signed.
pub fn sign_pending(replica: &Replica, ca: Option<&Identity>) -> Result<Vec<Renewal>> {
    let mut reg = load_host_pki(replica)?;
    let ca = reg.ca(ca)?;
    let mut renewals = load_renewals(replica)?;
    let now = now_secs(replica);
    let mut signed = Vec::new();
    for r in renewals.iter_mut().filter(|r| r.issued.is_none()) {
        if reg.sites.get(&r.site).is_some_and(|s| !s.revoked) {
            issue_renewal(&mut reg, &ca, r, now)?;
            signed.push(r.clone());
        }
    }
    // A revoked site's request is dropped.
    renewals.retain(|r| reg.sites.get(&r.site).is_some_and(|s| !s.revoked));
    save_host_pki(replica, &reg)?;
    save_renewals(replica, &renewals)?;
    Ok(signed)
}

/// Host: `site` connected with the certificate `fingerprint`. If that is the certificate a
/// renewal over sync issued, the site has switched to it: its earlier certificates are retired
/// and the renewal is done. Answers the fingerprints now refused (for the live list).
pub fn first_use(replica: &Replica, site: u32, fingerprint: &[u8; 32]) -> Result<Vec<[u8; 32]>> {
    let mut renewals = load_renewals(replica)?;
    let Some(i) = renewals.iter().position(|r| {
        r.site == site
            && r.issued
                .as_ref()
                .is_some_and(|c| crate::transport::fingerprint(c) == *fingerprint)
    }) else {
        return Ok(Vec::new());
    };
    let mut reg = load_host_pki(replica)?;
    let mut retired = Vec::new();
    if let Some(s) = reg.sites.get_mut(&site) {
        for c in s.certs.iter_mut().filter(|c| &c.fingerprint != fingerprint) {
            c.retired = true;
            retired.push(c.fingerprint);
        }
    }
    save_host_pki(replica, &reg)?;
    renewals.remove(i);
    save_renewals(replica, &renewals)?;
    Ok(retired)
}

/// Site: true when a certificate valid `v` is within its renewal window at `now`: less than
/// `pki::RENEW_WITHIN_DAYS` days or a third of its life left.
fn in_renewal_window(v: pki::Validity, now: i64) -> bool {
    let left = v.not_after - now;
    v.days_left(now) < pki::RENEW_WITHIN_DAYS || left.saturating_mul(3) < v.not_after - v.not_before
}

/// Site: the renewal to ask for in this round's `Hello`: `None` unless the installed
/// certificate is within its renewal window. The new key pair is made once and kept sealed
/// until its certificate is installed, so every round asks for the same key.
pub fn renewal_request(replica: &Replica) -> Result<Option<RenewalRequest>> {
    if replica.config().role != Role::Site || replica.get_sealed(SITE_TLS)?.is_none() {
        return Ok(None);
    }
    let tls = site_tls(replica)?;
    if !in_renewal_window(pki::validity(&tls.identity.cert_der)?, now_secs(replica)) {
        return Ok(None);
    }
    let current = pki::certificate_key(&tls.identity.cert_der)?;
    let key = match replica.get_sealed(SITE_NEXT_KEY)? {
        Some(k) if !k.is_empty() && pki::public_key_of(&k)? != current => k.to_vec(),
        _ => {
            let k = pki::new_key()?;
            replica.put_sealed(SITE_NEXT_KEY, &k)?;
            k
        }
    };
    let public_key = pki::public_key_of(&key)?;
    let site = replica.config().site_id.0;
    let proof = pki::sign_with_key(&key, &RenewalRequest::message(site, &public_key))?;
    Ok(Some(RenewalRequest {
        site,
        public_key,
        proof,
    }))
}

/// Site: installs the certificate the host issued for its renewal request, with the key kept
/// for it: refused unless the CA issued it, for that key, and it ends after the installed one.
/// The next connection uses it. Returns its validity.
pub fn install_renewed(replica: &Replica, cert_der: &[u8]) -> Result<pki::Validity> {
    let current = site_tls(replica)?;
    let key = replica
        .get_sealed(SITE_NEXT_KEY)?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            Error::Invalid("the host sent a certificate this site did not ask for".into())
        })?;
    pki::issued_by(cert_der, &current.ca_cert_der)?;
    if pki::certificate_key(cert_der)? != pki::public_key_of(&key)? {
        return Err(Error::Invalid(
            "the host sent a certificate for another key than the one this site asked for".into(),
        ));
    }
    let new = pki::validity(cert_der)?;
    if new.not_after <= pki::validity(&current.identity.cert_der)?.not_after {
        return Err(Error::Invalid(
            "the host sent a certificate no newer than the installed one".into(),
        ));
    }
    save_site_tls(
        replica,
        &SiteTls {
            identity: Identity {
                cert_der: cert_der.to_vec(),
                key_der: key.to_vec(),
            },
            ..current
        },
    )?;
    replica.put_sealed(SITE_NEXT_KEY, &[])?;
    Ok(new)
}

/// Host: issues itself a new certificate for the same TLS key (sites pinned it: nothing to do
/// at the sites). A new key goes through a hand-over (`hostkey::prepare_next`, then
/// `hostkey::switch`). Returns the new certificate's validity.
pub fn renew_host(replica: &Replica, ca: Option<&Identity>) -> Result<pki::Validity> {
    let mut reg = load_host_pki(replica)?;
    let ca = reg.ca(ca)?;
    let host = pki::issue_host(&ca, now_secs(replica), Some(&reg.host.key_der))?;
    let v = pki::validity(&host.cert_der)?;
    reg.host = host;
    save_host_pki(replica, &reg)?;
    Ok(v)
}

/// Host: revokes a site; its certificates are refused from now on.
pub fn revoke(replica: &Replica, site_id: u32) -> Result<()> {
    let mut pki = load_host_pki(replica)?;
    let site = pki
        .sites
        .get_mut(&site_id)
        .ok_or_else(|| Error::Invalid(format!("no enrolled site {site_id}")))?;
    site.revoked = true;
    save_host_pki(replica, &pki)
}

/// Host: the revocation list to give the server configuration (revoked sites, retired
/// certificates).
pub fn revoked(replica: &Replica) -> Result<crate::transport::Revoked> {
    let list = crate::transport::Revoked::default();
    for site in load_host_pki(replica)?.sites.values() {
        for f in site.refused() {
            list.add(f);
        }
    }
    Ok(list)
}

/// Host: the site a certificate fingerprint belongs to, if enrolled, not revoked and the
/// certificate not retired.
pub fn site_of(replica: &Replica, fingerprint: &[u8; 32]) -> Result<Option<u32>> {
    Ok(load_host_pki(replica)?
        .sites
        .iter()
        .find(|(_, s)| {
            !s.revoked
                && s.certs
                    .iter()
                    .any(|c| !c.retired && &c.fingerprint == fingerprint)
        })
        .map(|(id, _)| *id))
}

/// Host: its CA certificate and its own identity, for the server configuration.
pub fn host_identity(replica: &Replica) -> Result<(Vec<u8>, Identity)> {
    let pki = load_host_pki(replica)?;
    Ok((pki.ca_cert, pki.host))
}

/// Host: the enrolled sites.
pub fn sites(replica: &Replica) -> Result<BTreeMap<u32, SiteRecord>> {
    Ok(load_host_pki(replica)?.sites)
}

/// Host: its CA and certificate, for `pki list`.
pub fn host_status(replica: &Replica) -> Result<crate::api::PkiHostStatus> {
    let reg = load_host_pki(replica)?;
    let (next_pin, revoked_pins) = crate::hostkey::host_key_state(replica)?;
    Ok(crate::api::PkiHostStatus {
        ca_not_after: ms(pki::validity(&reg.ca_cert)?.not_after),
        host_not_after: ms(pki::validity(&reg.host.cert_der)?.not_after),
        ca_offline: reg.ca_key.is_none(),
        host_pin: pki::key_pin(&reg.host.cert_der)?,
        next_pin,
        revoked_pins,
    })
}

/// Site: its certificate's expiry and whether it pins the host's key; `None` if not enrolled
/// (or on the host).
pub fn site_certificate(replica: &Replica) -> Result<Option<crate::api::CertificateStatus>> {
    if replica.config().role != Role::Site || replica.get_sealed(SITE_TLS)?.is_none() {
        return Ok(None);
    }
    let tls = site_tls(replica)?;
    let v = pki::validity(&tls.identity.cert_der)?;
    Ok(Some(crate::api::CertificateStatus {
        not_after: ms(v.not_after),
        days_left: v.days_left(now_secs(replica)),
        host_pinned: tls.host_pins.is_some(),
        host_pins: tls.host_pins.map_or(0, |p| p.list().len()),
    }))
}

/// What the daemon should log about certificates: those with less than
/// `pki::RENEW_WITHIN_DAYS` left (host: the CA, its own, each active site's newest; site: its
/// own), and a site that pins no host key. One sentence each; empty when all is well.
pub fn certificate_warnings(replica: &Replica) -> Result<Vec<String>> {
    let now = now_secs(replica);
    let mut out = Vec::new();
    let mut check = |what: String, not_after_secs: i64, fix: &str| {
        let days = (not_after_secs - now).div_euclid(86_400);
        if days < 0 {
            out.push(format!(
                "{what} expired on {}: {fix}",
                carnet_store::time::format_date(ms(not_after_secs))
            ));
        } else if days < pki::RENEW_WITHIN_DAYS {
            out.push(format!(
                "{what} expires on {} ({days} day(s) left): {fix}",
                carnet_store::time::format_date(ms(not_after_secs))
            ));
        }
    };
    match replica.config().role {
        Role::Host => {
            let Some(raw) = replica.get_sealed(HOST_PKI)? else {
                return Ok(out);
            };
            let reg = HostPki::decode(&raw)?;
            check(
                "the national CA".into(),
                pki::validity(&reg.ca_cert)?.not_after,
                "a new CA means enrolling every site again",
            );
            check(
                "the host certificate".into(),
                pki::validity(&reg.host.cert_der)?.not_after,
                "run `carnet pki renew-host`",
            );
            for (id, site) in reg.sites.iter().filter(|(_, s)| !s.revoked) {
                if let Some(c) = site.current() {
                    check(
                        format!("the certificate of site {id} ({})", site.name),
                        c.not_after.div_euclid(1000),
                        &format!(
                            "the site asks for its renewal over sync (`carnet pki renewals`; with an offline CA, `pki renew --pending`), or run `carnet pki renew {id} -o BUNDLE` and install it at the site"
                        ),
                    );
                }
            }
        }
        Role::Site => {
            if replica.get_sealed(SITE_TLS)?.is_none() {
                return Ok(out);
            }
            let tls = site_tls(replica)?;
            check(
                "this site's certificate".into(),
                pki::validity(&tls.identity.cert_der)?.not_after,
                "it is renewed over sync at the next round with the host (`carnet pki renewals` there; with an offline CA, `pki renew --pending`); otherwise ask for a renewal bundle and install it (`carnet pki install BUNDLE`)",
            );
            match tls.host_pins {
                None => out.push("this site accepts any host certificate of the national CA (enrolled with a format 1 bundle): install a renewal bundle to pin the host's key".into()),
                Some(p) if p.is_empty() => out.push("this site pins no host key (the national CA revoked the one it pinned): it cannot sync until it installs a renewal bundle (`carnet pki install BUNDLE`)".into()),
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

/// Stores a site's TLS identity (format 3), pins and revoked host keys in one sealed `meta`
/// row: one write, authenticated with the rest of `meta`.
pub(crate) fn save_site_tls(replica: &Replica, tls: &SiteTls) -> Result<()> {
    let mut bytes = zeroize::Zeroizing::new(vec![SITE_TLS_FORMAT]);
    bytes.extend(postcard::to_stdvec(tls).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(replica.put_sealed(SITE_TLS, &bytes)?)
}

/// Site: stores the TLS identity of a bundle in a replica created from it.
pub fn install_site(replica: &Replica, bundle: &Bundle) -> Result<()> {
    if replica.config().site_id.0 != bundle.site_id {
        return Err(Error::Invalid("the bundle is for another site id".into()));
    }
    save_site_tls(replica, &SiteTls::from_bundle(bundle, None))?;
    // A site that never synced: the host holds nothing of it, so its first round may push
    // behind its `Hello` (PROTOCOL.md, "A round after one that ended well"); a `Welcome`
    // saying otherwise fails that round, and the next waits for its `Welcome`.
    if let Some(site) = replica.as_site() {
        let sync = site.sync();
        if sync.host_marks()?.is_none() && sync.outbox_acked()? == 0 && sync.pull_cursor()? == 0 {
            sync.set_host_marks(Some((0, 0)))?;
        }
    }
    Ok(())
}

/// Site: replaces its TLS identity with a renewal bundle's. Refused unless the bundle is for
/// this site id, this host signing key and this CA, and its certificate is not older than the
/// installed one. Returns the new certificate's validity.
pub fn install_renewal(replica: &Replica, bundle: &Bundle) -> Result<pki::Validity> {
    if replica.config().role != Role::Site {
        return Err(Error::Invalid(
            "a bundle is installed at a site (`carnet pki install` on the site)".into(),
        ));
    }
    let current = site_tls(replica)?;
    if replica.config().site_id.0 != bundle.site_id {
        return Err(Error::Invalid(format!(
            "the bundle is for site {}, this is site {}",
            bundle.site_id,
            replica.config().site_id
        )));
    }
    if replica.host_key()? != Some(bundle.host_key) {
        return Err(Error::Invalid(
            "the bundle names another host signing key than the one this site pinned".into(),
        ));
    }
    if bundle.ca_cert_der != current.ca_cert_der {
        return Err(Error::Invalid(
            "the bundle's CA is not the national CA this site trusts".into(),
        ));
    }
    let new = pki::validity(&bundle.identity.cert_der)?;
    let old = pki::validity(&current.identity.cert_der)?;
    if new.not_after < old.not_after {
        return Err(Error::Invalid(
            "the bundle's certificate is older than the one installed: nothing changed".into(),
        ));
    }
    if current.revoked_host_pins.contains(&bundle.host_tls_pin) {
        return Err(Error::Invalid(
            "the bundle pins a host key the national CA revoked: ask the host for a bundle issued after its switch to a new key".into(),
        ));
    }
    save_site_tls(replica, &SiteTls::from_bundle(bundle, Some(current)))?;
    Ok(new)
}

/// Site: its installed TLS identity.
pub fn site_tls(replica: &Replica) -> Result<SiteTls> {
    let raw = replica
        .get_sealed(SITE_TLS)?
        .ok_or_else(|| Error::Invalid("this site was not enrolled (init --enrol BUNDLE)".into()))?;
    let damaged = || Error::Invalid("the stored TLS identity is damaged".into());
    match raw.split_first() {
        Some((&SITE_TLS_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|_| damaged()),
        Some((&SITE_TLS_FORMAT_2, rest)) => {
            let v2: SiteTlsV2 = postcard::from_bytes(rest).map_err(|_| damaged())?;
            Ok(SiteTls {
                ca_cert_der: v2.ca_cert_der,
                identity: v2.identity,
                host_address: v2.host_address,
                host_pins: v2.host_tls_pin.map(HostPins::only),
                revoked_host_pins: Vec::new(),
            })
        }
        Some((&first, _)) if first >= 0x80 => {
            let v1: SiteTlsV1 = postcard::from_bytes(&raw).map_err(|_| damaged())?;
            Ok(SiteTls {
                ca_cert_der: v1.ca_cert_der,
                identity: v1.identity,
                host_address: v1.host_address,
                host_pins: None,
                revoked_host_pins: Vec::new(),
            })
        }
        _ => Err(damaged()),
    }
}

/// Writes an offline CA folder: the folder 0700, the certificate and key 0600. Refuses a
/// folder that already holds a CA key.
pub fn write_ca_dir(dir: &Path, ca: &Identity) -> Result<()> {
    if dir.join(CA_KEY_FILE).exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a CA key: choose an empty folder",
            dir.display()
        )));
    }
    carnet_store::files::private_dir(dir)?;
    carnet_store::files::write_private(&dir.join(CA_CERT_FILE), &ca.cert_der)?;
    carnet_store::files::write_private(&dir.join(CA_KEY_FILE), &ca.key_der)?;
    Ok(())
}

/// Removes what `write_ca_dir` wrote (the folder too, if nothing else is in it).
pub fn remove_ca_dir(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CA_KEY_FILE));
    let _ = std::fs::remove_file(dir.join(CA_CERT_FILE));
    let _ = std::fs::remove_dir(dir);
}

/// Reads an offline CA folder; a missing or damaged one is a clear error.
pub fn read_ca_dir(dir: &Path) -> Result<Identity> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| {
            Error::Invalid(format!(
                "cannot read the offline CA in {}: {e}",
                dir.join(name).display()
            ))
        })
    };
    let ca = Identity {
        cert_der: read(CA_CERT_FILE)?,
        key_der: read(CA_KEY_FILE)?,
    };
    pki::validity(&ca.cert_der)
        .map_err(|_| Error::Invalid(format!("{} is not a CA certificate", CA_CERT_FILE)))?;
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use crate::testkit::host_sync;

    fn host() -> (tempfile::TempDir, Replica) {
        let tmp = tempfile::tempdir().expect("tmp");
        let host = testkit::init(&tmp.path().join("host"), Role::Host, None, None);
        (tmp, host)
    }

    #[test]
    fn a_format_1_register_is_read_and_upgraded() {
        let (_tmp, host) = host();
        let ca = pki::new_ca(now_secs(&host)).expect("ca");
        let h = pki::issue_host(&ca, now_secs(&host), None).expect("host");
        #[derive(Serialize)]
        struct V1Site {
            name: String,
            finess: String,
            revoked: bool,
            fingerprint: [u8; 32],
        }
        #[derive(Serialize)]
        struct V1 {
            format: u8,
            ca: Identity,
            host: Identity,
            next_site: u32,
            sites: BTreeMap<u32, V1Site>,
        }
        let v1 = V1 {
            format: 1,
            ca,
            host: h,
            next_site: 2,
            sites: [(
                1,
                V1Site {
                    name: "Ancienne".into(),
                    finess: "750000001".into(),
                    revoked: false,
                    fingerprint: [7; 32],
                },
            )]
            .into(),
        };
        host.put_sealed(HOST_PKI, &postcard::to_stdvec(&v1).expect("v1"))
            .expect("put");
        let s = sites(&host).expect("sites");
        assert_eq!(s[&1].current().map(|c| c.not_after), Some(ms(V1_NOT_AFTER)));
        assert_eq!(site_of(&host, &[7; 32]).expect("of"), Some(1));
        // Renewal needs the address format 1 did not record.
        assert!(renew(&host, 1, None, false, None).is_err());
        let b = renew(&host, 1, Some("127.0.0.1:4433"), false, None).expect("renew");
        assert_eq!(b.site_id, 1);
        assert_eq!(sites(&host).expect("sites")[&1].certs.len(), 2);
        assert_eq!(site_of(&host, &[7; 32]).expect("of"), Some(1), "no gap");
        host.put_sealed(HOST_PKI, &[9, 1, 2]).expect("put");
        assert!(sites(&host).is_err());
    }

    #[test]
    fn renewal_keeps_the_old_certificate_unless_retired() {
        let (_tmp, host) = host();
        init_host(&host).expect("pki");
        let b1 = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let f1 = crate::transport::fingerprint(&b1.identity.cert_der);
        let b2 = renew(&host, b1.site_id, None, false, None).expect("renew");
        let f2 = crate::transport::fingerprint(&b2.identity.cert_der);
        assert_ne!(f1, f2);
        assert_ne!(b1.identity.key_der, b2.identity.key_der, "a new key");
        assert_eq!(b2.host_address, "127.0.0.1:4433");
        assert_eq!(site_of(&host, &f1).expect("of"), Some(b1.site_id));
        assert_eq!(site_of(&host, &f2).expect("of"), Some(b1.site_id));
        let b3 = renew(&host, b1.site_id, None, true, None).expect("renew");
        let f3 = crate::transport::fingerprint(&b3.identity.cert_der);
        assert_eq!(site_of(&host, &f1).expect("of"), None);
        assert_eq!(site_of(&host, &f2).expect("of"), None);
        assert_eq!(site_of(&host, &f3).expect("of"), Some(b1.site_id));
        let refused = revoked(&host).expect("revoked");
        assert!(refused.has(&f1) && refused.has(&f2) && !refused.has(&f3));
        assert!(renew(&host, 99, None, false, None).is_err());
        revoke(&host, b1.site_id).expect("revoke");
        assert!(revoked(&host).expect("revoked").has(&f3));
        assert!(renew(&host, b1.site_id, None, false, None).is_err());
    }

    /// Every change to what the register refuses is signed for the sites, in the same commit;
    /// enrolling or renewing without retiring signs nothing.
    #[test]
    fn what_the_register_refuses_is_signed_for_the_sites() {
        let (_tmp, host) = host();
        init_host(&host).expect("pki");
        let signed = |host: &Replica| {
            let mut list = host
                .refused_certificates()
                .expect("list")
                .fingerprints
                .clone();
            list.sort_unstable();
            list
        };
        let b1 = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let b2 = enrol(&host, "Unité mobile", "750000002", "127.0.0.1:4433").expect("enrol");
        renew(&host, b1.site_id, None, false, None).expect("renew");
        assert!(signed(&host).is_empty(), "nothing refused yet");
        let b3 = renew(&host, b1.site_id, None, true, None).expect("renew");
        let mut expected: Vec<[u8; 32]> = sites(&host).expect("sites")[&b1.site_id]
            .refused()
            .collect();
        expected.sort_unstable();
        assert_eq!(expected.len(), 2, "the first two certificates, retired");
        assert_eq!(signed(&host), expected);
        revoke(&host, b2.site_id).expect("revoke");
        let f2 = crate::transport::fingerprint(&b2.identity.cert_der);
        let f3 = crate::transport::fingerprint(&b3.identity.cert_der);
        assert!(
            signed(&host).contains(&f2),
            "the revoked site's certificate"
        );
        assert!(
            !signed(&host).contains(&f3),
            "the clinic's current certificate"
        );
        assert_eq!(signed(&host).len(), 3);
    }

    #[test]
    fn a_site_installs_only_its_own_newer_renewal() {
        let (tmp, host) = host();
        init_host(&host).expect("pki");
        let b1 = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let other = enrol(&host, "Autre", "750000002", "127.0.0.1:4433").expect("enrol");
        let site = testkit::site_from_bundle(&tmp.path().join("site"), &b1);
        // Certificate times are in seconds: the renewal ends a second later.
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let b2 = renew(&host, b1.site_id, Some("127.0.0.1:5555"), false, None).expect("renew");
        install_renewal(&site, &b2).expect("install");
        let tls = site_tls(&site).expect("tls");
        assert_eq!(tls.identity.cert_der, b2.identity.cert_der);
        assert_eq!(tls.host_address, "127.0.0.1:5555");
        // Another site's bundle, an older one, another host key or CA: refused, nothing changes.
        assert!(install_renewal(&site, &other).is_err());
        let mut older = b2.clone();
        older.identity = b1.identity.clone();
        assert!(install_renewal(&site, &older).is_err());
        let mut wrong_key = b2.clone();
        wrong_key.host_key = [3; 32];
        assert!(install_renewal(&site, &wrong_key).is_err());
        let mut wrong_ca = b2.clone();
        wrong_ca.ca_cert_der = pki::new_ca(now_secs(&host)).expect("ca").cert_der;
        assert!(install_renewal(&site, &wrong_ca).is_err());
        assert_eq!(
            site_tls(&site).expect("tls").identity.cert_der,
            b2.identity.cert_der
        );
        assert!(install_renewal(&host, &b2).is_err(), "not at the host");
    }

    /// A host with a PKI (its CA key kept, unless `offline`) and a site enrolled with a
    /// certificate of `days`, within its renewal window.
    fn host_and_short_lived_site(
        offline: Option<&Identity>,
    ) -> (tempfile::TempDir, Replica, Replica, Bundle) {
        let (tmp, host) = host();
        match offline {
            Some(ca) => init_host_with(&host, ca, false).expect("pki"),
            None => init_host(&host).expect("pki"),
        }
        let b = enrol_with(
            &host,
            "Clinique",
            "750000001",
            "127.0.0.1:4433",
            offline,
            Some(20),
        )
        .expect("enrol");
        let site = testkit::site_from_bundle(&tmp.path().join("site"), &b);
        (tmp, host, site, b)
    }

    #[test]
    fn a_site_renews_its_own_certificate_with_a_key_it_made() {
        let (_tmp, host, site, b) = host_and_short_lived_site(None);
        let old = crate::transport::fingerprint(&b.identity.cert_der);
        let request = renewal_request(&site)
            .expect("request")
            .expect("in its window");
        // Asked again before it is installed: the same key.
        let again = renewal_request(&site).expect("request").expect("again");
        assert_eq!(again.public_key, request.public_key);
        let cert = request_renewal(host_sync(&host), b.site_id, &b.identity.cert_der, &request)
            .expect("asked")
            .expect("signed at once: the CA key is here");
        // The host never saw the private key: the certificate is for the site's new key.
        assert_ne!(
            pki::certificate_key(&cert).ok(),
            pki::certificate_key(&b.identity.cert_der).ok()
        );
        let new = crate::transport::fingerprint(&cert);
        assert_eq!(site_of(&host, &new).expect("of"), Some(b.site_id));
        assert_eq!(site_of(&host, &old).expect("of"), Some(b.site_id), "no gap");
        let v = install_renewed(&site, &cert).expect("installed");
        assert!(v.days_left(now_secs(&site)) > 300);
        assert_eq!(site_tls(&site).expect("tls").identity.cert_der, cert);
        assert!(
            renewal_request(&site).expect("request").is_none(),
            "renewed"
        );
        assert!(
            install_renewed(&site, &cert).is_err(),
            "nothing asked for now"
        );
        // First used: the old certificate is retired.
        assert!(first_use(&host, b.site_id, &old).expect("old").is_empty());
        assert_eq!(first_use(&host, b.site_id, &new).expect("new"), vec![old]);
        assert_eq!(site_of(&host, &old).expect("of"), None);
        assert!(revoked(&host).expect("revoked").has(&old));
        assert!(renewals(&host).expect("renewals").is_empty());
    }

    #[test]
    fn with_the_ca_offline_a_renewal_waits_for_the_operator() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let ca = pki::new_ca(now).expect("ca");
        let (_tmp, host, site, b) = host_and_short_lived_site(Some(&ca));
        let request = renewal_request(&site)
            .expect("request")
            .expect("in its window");
        assert_eq!(
            request_renewal(host_sync(&host), b.site_id, &b.identity.cert_der, &request).ok(),
            Some(None)
        );
        let waiting = renewals(&host).expect("renewals");
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].issued.is_none());
        assert!(sign_pending(&host, None).is_err(), "the CA is offline");
        let other = pki::new_ca(now_secs(&host)).expect("other");
        assert!(sign_pending(&host, Some(&other)).is_err(), "another CA");
        let signed = sign_pending(&host, Some(&ca)).expect("signed");
        assert_eq!(signed.len(), 1);
        let cert = request_renewal(host_sync(&host), b.site_id, &b.identity.cert_der, &request)
            .expect("asked again")
            .expect("signed now");
        install_renewed(&site, &cert).expect("installed");
    }

    #[test]
    fn a_renewal_is_only_for_the_asking_site_and_its_own_new_key() {
        let (_tmp, host, site, b) = host_and_short_lived_site(None);
        let other = enrol(&host, "Autre", "750000002", "127.0.0.1:4433").expect("other");
        let request = renewal_request(&site)
            .expect("request")
            .expect("in its window");
        let before = sites(&host).expect("sites");
        // Asked with another site's certificate (the session is bound to that site).
        assert!(
            request_renewal(
                host_sync(&host),
                other.site_id,
                &other.identity.cert_der,
                &request
            )
            .is_err()
        );
        // Naming another site.
        let mut named = request.clone();
        named.site = other.site_id;
        assert!(
            request_renewal(host_sync(&host), b.site_id, &b.identity.cert_der, &named).is_err()
        );
        // A key the proof was not made with (a certificate for a key the site does not hold).
        let mut stolen = request.clone();
        stolen.public_key = pki::certificate_key(&other.identity.cert_der).expect("key");
        assert!(
            request_renewal(host_sync(&host), b.site_id, &b.identity.cert_der, &stolen).is_err()
        );
        assert_eq!(sites(&host).expect("sites"), before, "nothing issued");
        let refused = host
            .audit_entries(None)
            .expect("audit")
            .iter()
            .filter(|c| c.entry.action.name() == "renewal-refused")
            .count();
        assert_eq!(refused, 3);
        assert!(renewals(&host).expect("renewals").is_empty());
        // A certificate not yet in its renewal window (a year left) asks for nothing.
        let key = pki::new_key().expect("key");
        let public_key = pki::public_key_of(&key).expect("public");
        let early = RenewalRequest {
            site: other.site_id,
            proof: pki::sign_with_key(&key, &RenewalRequest::message(other.site_id, &public_key))
                .expect("proof"),
            public_key,
        };
        assert!(
            request_renewal(
                host_sync(&host),
                other.site_id,
                &other.identity.cert_der,
                &early
            )
            .is_err()
        );
        // A certificate the site did not ask for, or from another CA: not installed.
        let foreign = pki::new_ca(now_secs(&host)).expect("ca");
        let forged =
            pki::issue_site_for_key(&foreign, b.site_id, now_secs(&host), &request.public_key)
                .expect("forged");
        assert!(install_renewed(&site, &forged).is_err());
        let cert = request_renewal(host_sync(&host), b.site_id, &b.identity.cert_der, &request)
            .expect("ok")
            .expect("cert");
        install_renewed(&site, &cert).expect("installed");
    }

    #[test]
    fn a_format_1_site_identity_is_read_without_a_pin() {
        let (tmp, host) = host();
        init_host(&host).expect("pki");
        let b = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let site = testkit::site_from_bundle(&tmp.path().join("site"), &b);
        #[derive(Serialize)]
        struct V1<'a> {
            ca_cert_der: &'a [u8],
            identity: &'a Identity,
            host_address: &'a str,
        }
        let v1 = postcard::to_stdvec(&V1 {
            ca_cert_der: &b.ca_cert_der,
            identity: &b.identity,
            host_address: "127.0.0.1:4433",
        })
        .expect("v1");
        site.put_sealed(SITE_TLS, &v1).expect("put");
        let tls = site_tls(&site).expect("v1 reads");
        assert_eq!(tls.host_pins, None);
        assert_eq!(tls.identity.cert_der, b.identity.cert_der);
        // A renewal brings the pin.
        let b2 = renew(&host, b.site_id, None, false, None).expect("renew");
        install_renewal(&site, &b2).expect("install");
        assert_eq!(
            site_tls(&site).expect("tls").host_pins,
            Some(HostPins::only(b2.host_tls_pin))
        );
        // Format 2 (one pin) reads as that pin alone.
        #[derive(Serialize)]
        struct V2<'a> {
            ca_cert_der: &'a [u8],
            identity: &'a Identity,
            host_address: &'a str,
            host_tls_pin: Option<[u8; 32]>,
        }
        let mut v2 = vec![2u8];
        v2.extend(
            postcard::to_stdvec(&V2 {
                ca_cert_der: &b2.ca_cert_der,
                identity: &b2.identity,
                host_address: "127.0.0.1:4433",
                host_tls_pin: Some([4; 32]),
            })
            .expect("v2"),
        );
        site.put_sealed(SITE_TLS, &v2).expect("put");
        let tls = site_tls(&site).expect("v2 reads");
        assert_eq!(tls.host_pins, Some(HostPins::only([4; 32])));
        assert!(tls.revoked_host_pins.is_empty());
        for bad in [&[2u8, 0xff][..], &[3, 0xff]] {
            site.put_sealed(SITE_TLS, bad).expect("put");
            assert!(site_tls(&site).is_err());
        }
    }

    #[test]
    fn bundles_of_format_1_or_damaged_are_refused_clearly() {
        let (_tmp, host) = host();
        init_host(&host).expect("pki");
        let b = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let bytes = b.to_bytes().expect("bytes");
        assert!(Bundle::from_bytes(&bytes).is_ok());
        let mut v1 = bytes.clone();
        v1[BUNDLE_MAGIC.len()] = 1;
        let e = Bundle::from_bytes(&v1).expect_err("v1").to_string();
        assert!(e.contains("format 1") && e.contains("pki renew"), "{e}");
        let mut v3 = bytes.clone();
        v3[BUNDLE_MAGIC.len()] = 3;
        assert!(Bundle::from_bytes(&v3).is_err());
        for cut in 0..bytes.len() {
            assert!(Bundle::from_bytes(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn an_offline_ca_issues_and_the_replica_keeps_no_key() {
        let (tmp, host) = host();
        let ca = pki::new_ca(now_secs(&host)).expect("ca");
        let dir = tmp.path().join("ca");
        write_ca_dir(&dir, &ca).expect("write");
        assert!(write_ca_dir(&dir, &ca).is_err(), "never over a CA key");
        init_host_with(&host, &ca, false).expect("pki");
        assert!(ca_is_offline(&host).expect("offline"));
        let e = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect_err("no key");
        assert!(e.to_string().contains("--ca-dir"), "{e}");
        let offline = read_ca_dir(&dir).expect("read");
        let b = enrol_with(
            &host,
            "Clinique",
            "750000001",
            "127.0.0.1:4433",
            Some(&offline),
            None,
        )
        .expect("enrol");
        let other = pki::new_ca(now_secs(&host)).expect("other");
        assert!(renew(&host, b.site_id, None, false, Some(&other)).is_err());
        renew(&host, b.site_id, None, false, Some(&offline)).expect("renew");
        renew_host(&host, Some(&offline)).expect("renew host");
        assert!(read_ca_dir(&tmp.path().join("nowhere")).is_err());
        // The sealed register holds no private key of the CA.
        let raw = host.get_sealed(HOST_PKI).expect("get").expect("some");
        assert!(
            !raw.windows(offline.key_der.len())
                .any(|w| w == offline.key_der.as_slice())
        );
    }

    #[test]
    fn certificates_close_to_expiry_are_reported() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicI64, Ordering};
        const DAY_MS: i64 = 86_400_000;
        let tmp = tempfile::tempdir().expect("tmp");
        let offset = Arc::new(AtomicI64::new(0));
        let clock: carnet_store::replica::Clock = {
            let offset = offset.clone();
            let system = carnet_store::replica::system_clock();
            Arc::new(move || system() + offset.load(Ordering::SeqCst))
        };
        let init = |dir: &str, role: Role, site: Option<u32>, host_key: Option<[u8; 32]>| {
            Replica::init(
                &tmp.path().join(dir),
                carnet_store::replica::InitOptions {
                    role,
                    name: dir.into(),
                    site_id: site.map(carnet_store::ids::SiteId),
                    key: carnet_store::replica::KeySource::File,
                    host_key,
                    lease_hours: None,
                },
                clock.clone(),
            )
            .expect("init")
        };
        let host = init("host", Role::Host, None, None);
        init_host(&host).expect("pki");
        let b = enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let site = init("site", Role::Site, Some(b.site_id), Some(b.host_key));
        install_site(&site, &b).expect("install");
        assert!(certificate_warnings(&host).expect("host").is_empty());
        assert!(certificate_warnings(&site).expect("site").is_empty());
        let days = site_certificate(&site).expect("status").expect("enrolled");
        assert!((364..=365).contains(&days.days_left) && days.host_pinned);

        // 340 days on: the site's certificate has 25 days left, on both sides.
        offset.store(340 * DAY_MS, Ordering::SeqCst);
        let w = certificate_warnings(&host).expect("host");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("site 1") && w[0].contains("day(s) left"),
            "{w:?}"
        );
        let w = certificate_warnings(&site).expect("site");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("pki install"), "{w:?}");
        assert!(site_certificate(&site).expect("s").expect("e").days_left < pki::RENEW_WITHIN_DAYS);
        // Renewed and installed: quiet again.
        let r = renew(&host, b.site_id, None, false, None).expect("renew");
        install_renewal(&site, &r).expect("install");
        assert!(certificate_warnings(&host).expect("host").is_empty());
        assert!(certificate_warnings(&site).expect("site").is_empty());

        // 720 days on: the host's certificate warns; the renewed site's has expired.
        offset.store(720 * DAY_MS, Ordering::SeqCst);
        let w = certificate_warnings(&host).expect("host");
        assert!(
            w.iter()
                .any(|w| w.contains("host certificate") && w.contains("renew-host")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("site 1") && w.contains("expired")),
            "{w:?}"
        );
        renew_host(&host, None).expect("renew host");
        let w = certificate_warnings(&host).expect("host");
        assert!(!w.iter().any(|w| w.contains("host certificate")), "{w:?}");
        // A revoked site is not reported.
        revoke(&host, b.site_id).expect("revoke");
        assert!(certificate_warnings(&host).expect("host").is_empty());
    }
}
