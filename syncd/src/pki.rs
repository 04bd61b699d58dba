//! The national PKI of Carnet: one CA, the host's certificate, one certificate per site.
//!
//! Invariants: certificates are issued only by the CA key; a host certificate carries the name
//! `HOST_NAME` and the server-auth usage, a site certificate the client-auth usage and the
//! site id in its common name. Keys travel as PKCS#8 DER and are never logged.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The name every site expects in the host's certificate.
pub const HOST_NAME: &str = "carnet-host";

/// A certificate and its private key, DER-encoded.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// X.509 certificate, DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<certificate and key>)")
    }
}

fn pki_err(e: rcgen::Error) -> Error {
    Error::Pki(e.to_string())
}

/// The CA's parameters: the same each time, so an issuer can be rebuilt from the stored key.
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Carnet national CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Creates the national CA.
pub fn new_ca() -> Result<Identity> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = ca_params()?.self_signed(&key).map_err(pki_err)?;
    Ok(Identity {
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

fn issue(ca: &Identity, params: CertificateParams) -> Result<Identity> {
    let ca_key = KeyPair::try_from(ca.key_der.as_slice()).map_err(pki_err)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    Ok(Identity {
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

/// Issues the host's certificate.
pub fn issue_host(ca: &Identity) -> Result<Identity> {
    let mut params = CertificateParams::new(vec![HOST_NAME.to_string()]).map_err(pki_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, HOST_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, params)
}

/// Issues a site's certificate; its common name carries the site id.
pub fn issue_site(ca: &Identity, site_id: u32) -> Result<Identity> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("site-{site_id}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, params)
}
