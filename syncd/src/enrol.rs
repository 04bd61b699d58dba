//! Enrolment: the host's register of sites and their certificates, and the bundle that
//! carries a new site's identity to it.
//!
//! Invariants: only a host replica with a PKI (`pki init`) enrols; site ids are assigned by the
//! host, never reused; a revoked site stays revoked. The register and a site's TLS identity are
//! stored sealed in the replica (`Replica::put_sealed`). A bundle holds a private key: it is
//! written with mode 0600 and is for the site's installer only.

use std::collections::BTreeMap;

use carnet_store::replica::{Replica, Role};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pki::{self, Identity};

/// Name of the host's register in the replica.
const HOST_PKI: &str = "host-pki";
/// Name of a site's TLS identity in the replica.
const SITE_TLS: &str = "site-tls";
/// Magic prefix of a bundle file.
const BUNDLE_MAGIC: &[u8; 8] = b"CARNETEN";
/// Format version of bundles and stored records.
const FORMAT: u8 = 1;

/// A site known to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Human name.
    pub name: String,
    /// FINESS of the establishment.
    pub finess: String,
    /// Revoked: its certificate is refused.
    pub revoked: bool,
    /// Fingerprint of its certificate (`transport::fingerprint`).
    pub fingerprint: [u8; 32],
}

/// The host's PKI register.
#[derive(Clone, Serialize, Deserialize)]
struct HostPki {
    format: u8,
    ca: Identity,
    host: Identity,
    next_site: u32,
    sites: BTreeMap<u32, SiteRecord>,
}

/// What a new site needs to join: its identity, the CA, the host's keys and address.
#[derive(Clone, Serialize, Deserialize)]
pub struct Bundle {
    format: u8,
    /// Site id assigned by the host.
    pub site_id: u32,
    /// Site name.
    pub name: String,
    /// FINESS.
    pub finess: String,
    /// Where the host listens (`host:port`).
    pub host_address: String,
    /// The national CA certificate (DER).
    pub ca_cert_der: Vec<u8>,
    /// The site's certificate and key.
    pub identity: Identity,
    /// The host's Ed25519 public key (signed records).
    pub host_key: [u8; 32],
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bundle(site {})", self.site_id)
    }
}

impl Bundle {
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
        let b: Bundle = postcard::from_bytes(rest)
            .map_err(|_| Error::Invalid("the enrolment bundle is truncated or damaged".into()))?;
        if b.format != FORMAT {
            return Err(Error::Invalid(format!(
                "enrolment bundle format {} is not supported (expects {FORMAT})",
                b.format
            )));
        }
        // The material must at least make a TLS configuration.
        crate::transport::client_config(&b.ca_cert_der, &b.identity)?;
        Ok(b)
    }
}

/// A site's TLS identity, as installed from its bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteTls {
    /// The national CA certificate.
    pub ca_cert_der: Vec<u8>,
    /// The site's certificate and key.
    pub identity: Identity,
    /// Where the host listens.
    pub host_address: String,
}

fn load_host_pki(replica: &Replica) -> Result<HostPki> {
    let raw = replica.get_sealed(HOST_PKI)?.ok_or_else(|| {
        Error::Invalid("this host has no PKI yet: run `carnet pki init` first".into())
    })?;
    postcard::from_bytes(&raw)
        .map_err(|_| Error::Invalid("the stored PKI register is damaged".into()))
}

fn save_host_pki(replica: &Replica, pki: &HostPki) -> Result<()> {
    let bytes = zeroize::Zeroizing::new(
        postcard::to_stdvec(pki).map_err(|e| Error::Invalid(e.to_string()))?,
    );
    Ok(replica.put_sealed(HOST_PKI, &bytes)?)
}

/// Host: creates the national CA and the host's certificate (once).
pub fn init_host(replica: &Replica) -> Result<()> {
    if replica.config().role != Role::Host {
        return Err(Error::Invalid("the PKI lives on the national host".into()));
    }
    if replica.get_sealed(HOST_PKI)?.is_some() {
        return Err(Error::Invalid("this host already has a PKI".into()));
    }
    let ca = pki::new_ca()?;
    let host = pki::issue_host(&ca)?;
    save_host_pki(
        replica,
        &HostPki {
            format: FORMAT,
            ca,
            host,
            next_site: 1,
            sites: BTreeMap::new(),
        },
    )
}

/// Host: enrols a new site and returns its bundle.
pub fn enrol(replica: &Replica, name: &str, finess: &str, host_address: &str) -> Result<Bundle> {
    let finess = carnet_store::ids::Finess::parse(finess)?;
    if name.trim().is_empty() {
        return Err(Error::Invalid("a site needs a name (--name)".into()));
    }
    if host_address.parse::<std::net::SocketAddr>().is_err() {
        return Err(Error::Invalid(format!(
            "'{host_address}' is not a host address (IP:PORT)"
        )));
    }
    let host_key = replica
        .host_key()?
        .ok_or_else(|| Error::Invalid("this replica has no host signing key".into()))?;
    let mut pki = load_host_pki(replica)?;
    let site_id = pki.next_site;
    let identity = pki::issue_site(&pki.ca, site_id)?;
    pki.next_site = site_id
        .checked_add(1)
        .ok_or_else(|| Error::Invalid("no site id left".into()))?;
    pki.sites.insert(
        site_id,
        SiteRecord {
            name: name.trim().to_string(),
            finess: finess.to_string(),
            revoked: false,
            fingerprint: crate::transport::fingerprint(&identity.cert_der),
        },
    );
    save_host_pki(replica, &pki)?;
    Ok(Bundle {
        format: FORMAT,
        site_id,
        name: name.trim().to_string(),
        finess: finess.to_string(),
        host_address: host_address.to_string(),
        ca_cert_der: pki.ca.cert_der.clone(),
        identity,
        host_key,
    })
}

/// Host: revokes a site; its certificate is refused from now on.
pub fn revoke(replica: &Replica, site_id: u32) -> Result<()> {
    let mut pki = load_host_pki(replica)?;
    let site = pki
        .sites
        .get_mut(&site_id)
        .ok_or_else(|| Error::Invalid(format!("no enrolled site {site_id}")))?;
    site.revoked = true;
    save_host_pki(replica, &pki)
}

/// Host: the revocation list to give the server configuration.
pub fn revoked(replica: &Replica) -> Result<crate::transport::Revoked> {
    let list = crate::transport::Revoked::default();
    for site in load_host_pki(replica)?.sites.values().filter(|s| s.revoked) {
        list.add(site.fingerprint);
    }
    Ok(list)
}

/// Host: the site a certificate fingerprint belongs to, if enrolled and not revoked.
pub fn site_of(replica: &Replica, fingerprint: &[u8; 32]) -> Result<Option<u32>> {
    Ok(load_host_pki(replica)?
        .sites
        .iter()
        .find(|(_, s)| !s.revoked && &s.fingerprint == fingerprint)
        .map(|(id, _)| *id))
}

/// Host: its CA certificate and its own identity, for the server configuration.
pub fn host_identity(replica: &Replica) -> Result<(Vec<u8>, Identity)> {
    let pki = load_host_pki(replica)?;
    Ok((pki.ca.cert_der, pki.host))
}

/// Host: the enrolled sites.
pub fn sites(replica: &Replica) -> Result<BTreeMap<u32, SiteRecord>> {
    Ok(load_host_pki(replica)?.sites)
}

/// Site: stores the TLS identity of a bundle in a replica created from it.
pub fn install_site(replica: &Replica, bundle: &Bundle) -> Result<()> {
    if replica.config().site_id.0 != bundle.site_id {
        return Err(Error::Invalid("the bundle is for another site id".into()));
    }
    let tls = SiteTls {
        ca_cert_der: bundle.ca_cert_der.clone(),
        identity: bundle.identity.clone(),
        host_address: bundle.host_address.clone(),
    };
    let bytes = zeroize::Zeroizing::new(
        postcard::to_stdvec(&tls).map_err(|e| Error::Invalid(e.to_string()))?,
    );
    Ok(replica.put_sealed(SITE_TLS, &bytes)?)
}

/// Site: its installed TLS identity.
pub fn site_tls(replica: &Replica) -> Result<SiteTls> {
    let raw = replica
        .get_sealed(SITE_TLS)?
        .ok_or_else(|| Error::Invalid("this site was not enrolled (init --enrol BUNDLE)".into()))?;
    postcard::from_bytes(&raw)
        .map_err(|_| Error::Invalid("the stored TLS identity is damaged".into()))
}
