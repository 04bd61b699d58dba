//! The national PKI of Carnet: one CA, the host's certificate, one certificate per site.
//!
//! Invariants: certificates are issued only by the CA key; a host certificate carries the name
//! `HOST_NAME` and the server-auth usage, a site certificate the client-auth usage and the
//! site id in its common name. Every certificate has a real lifetime (`CA_DAYS`, `HOST_DAYS`,
//! `SITE_DAYS`) starting `SKEW_SECS` before it is issued, and never outlives the CA. Keys
//! travel as PKCS#8 DER and are never logged. A certificate's key also signs what its holder
//! vouches for (`sign`, `verify`: ECDSA P-256, the only key type Carnet issues).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The name every site expects in the host's certificate.
pub const HOST_NAME: &str = "carnet-host";

/// Lifetime of the national CA, in days (10 years).
pub const CA_DAYS: i64 = 3_652;
/// Lifetime of the host's certificate, in days (2 years).
pub const HOST_DAYS: i64 = 730;
/// Lifetime of a site's certificate, in days (1 year).
pub const SITE_DAYS: i64 = 365;
/// A certificate is valid from this many seconds before it is issued, so a peer whose clock
/// is a little behind accepts it.
pub const SKEW_SECS: i64 = 300;
/// A certificate with less than this many days left is reported (`pki list`, `sync status`,
/// the daemon's log): renew it.
pub const RENEW_WITHIN_DAYS: i64 = 30;

const DAY_SECS: i64 = 86_400;

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

fn datetime(secs: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| Error::Pki(format!("time {secs} is out of range")))
}

/// Sets the validity of `params`: from `now - SKEW_SECS` for `days`, but never past `cap`.
fn set_validity(
    params: &mut CertificateParams,
    now: i64,
    days: i64,
    cap: Option<i64>,
) -> Result<()> {
    let end = now.saturating_add(days.saturating_mul(DAY_SECS));
    let end = cap.map_or(end, |c| end.min(c));
    if end <= now {
        return Err(Error::Invalid(
            "the national CA has expired: no certificate can be issued under it".into(),
        ));
    }
    params.not_before = datetime(now - SKEW_SECS)?;
    params.not_after = datetime(end)?;
    Ok(())
}

/// Creates the national CA, valid `CA_DAYS` from `now` (Unix seconds).
pub fn new_ca(now: i64) -> Result<Identity> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = ca_params()?;
    set_validity(&mut params, now, CA_DAYS, None)?;
    let cert = params.self_signed(&key).map_err(pki_err)?;
    Ok(Identity {
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

/// Signs `params` with the CA for `key` (a new key when `None`).
fn issue(
    ca: &Identity,
    params: CertificateParams,
    now: i64,
    days: i64,
    key: Option<&[u8]>,
) -> Result<Identity> {
    let key = match key {
        Some(der) => KeyPair::try_from(der).map_err(pki_err)?,
        None => KeyPair::generate().map_err(pki_err)?,
    };
    Ok(Identity {
        cert_der: certify(ca, params, now, days, &key)?,
        key_der: key.serialize_der(),
    })
}

/// Signs `params` with the CA for the public key `public`: the certificate, DER.
fn certify(
    ca: &Identity,
    mut params: CertificateParams,
    now: i64,
    days: i64,
    public: &impl rcgen::PublicKeyData,
) -> Result<Vec<u8>> {
    let ca_end = validity(&ca.cert_der)?.not_after;
    set_validity(&mut params, now, days, Some(ca_end))?;
    let ca_key = KeyPair::try_from(ca.key_der.as_slice()).map_err(pki_err)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let cert = params.signed_by(public, &issuer).map_err(pki_err)?;
    Ok(cert.der().to_vec())
}

/// Issues the host's certificate, valid `HOST_DAYS` from `now`; with `key` (PKCS#8 DER), for
/// that key (a renewal that keeps the key sites pinned), else for a new one.
pub fn issue_host(ca: &Identity, now: i64, key: Option<&[u8]>) -> Result<Identity> {
    let mut params = CertificateParams::new(vec![HOST_NAME.to_string()]).map_err(pki_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, HOST_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, params, now, HOST_DAYS, key)
}

/// A site certificate's parameters: its common name carries the site id.
fn site_params(site_id: u32) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("site-{site_id}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Issues a site's certificate, valid `SITE_DAYS` from `now`, for a new key.
pub fn issue_site(ca: &Identity, site_id: u32, now: i64) -> Result<Identity> {
    issue_site_lasting(ca, site_id, now, SITE_DAYS)
}

/// Issues a site's certificate, valid `days` (1 to `SITE_DAYS`) from `now`, for a new key.
pub fn issue_site_lasting(ca: &Identity, site_id: u32, now: i64, days: i64) -> Result<Identity> {
    if !(1..=SITE_DAYS).contains(&days) {
        return Err(Error::Invalid(format!(
            "a site certificate lasts 1 to {SITE_DAYS} days, not {days}"
        )));
    }
    issue(ca, site_params(site_id)?, now, days, None)
}

/// Issues a site's certificate, valid `SITE_DAYS` from `now`, for the public key `spki` (a
/// P-256 SubjectPublicKeyInfo, DER) whose private key only the site holds (a renewal over
/// the sync connection). Answers the certificate, DER.
pub fn issue_site_for_key(ca: &Identity, site_id: u32, now: i64, spki: &[u8]) -> Result<Vec<u8>> {
    let public = P256Public(p256_point(spki)?.to_vec());
    certify(ca, site_params(site_id)?, now, SITE_DAYS, &public)
}

/// A P-256 public key, as rcgen certifies it: the uncompressed point.
struct P256Public(Vec<u8>);

impl rcgen::PublicKeyData for P256Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A new P-256 key pair: its PKCS#8 DER (kept by the caller, sealed).
pub fn new_key() -> Result<Vec<u8>> {
    Ok(KeyPair::generate().map_err(pki_err)?.serialize_der())
}

/// The public key (SubjectPublicKeyInfo, DER) of a PKCS#8 key.
pub fn public_key_of(key_der: &[u8]) -> Result<Vec<u8>> {
    use rcgen::PublicKeyData;
    Ok(KeyPair::try_from(key_der)
        .map_err(pki_err)?
        .subject_public_key_info())
}

/// The public key (SubjectPublicKeyInfo, DER) a certificate names.
pub fn certificate_key(cert_der: &[u8]) -> Result<Vec<u8>> {
    Ok(tbs_fields(cert_der)?.spki.to_vec())
}

/// Signs `msg` with the key of `identity` (the key its certificate names).
pub fn sign(identity: &Identity, msg: &[u8]) -> Result<Vec<u8>> {
    sign_with_key(&identity.key_der, msg)
}

/// Signs `msg` with a PKCS#8 key.
pub fn sign_with_key(key_der: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
    use rcgen::SigningKey;
    let key = KeyPair::try_from(key_der).map_err(pki_err)?;
    key.sign(msg).map_err(pki_err)
}

/// Checks that `signature` is the signature of `msg` by the key of the certificate
/// `cert_der` (ECDSA P-256 with SHA-256, ASN.1 DER). Anything else is an error.
pub fn verify(cert_der: &[u8], msg: &[u8], signature: &[u8]) -> Result<()> {
    verify_by_key(tbs_fields(cert_der)?.spki, msg, signature)
}

/// Checks that `signature` is the signature of `msg` by the public key `spki`
/// (SubjectPublicKeyInfo, DER; P-256 only).
pub fn verify_by_key(spki: &[u8], msg: &[u8], signature: &[u8]) -> Result<()> {
    let point = p256_point(spki)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, signature)
        .map_err(|_| Error::Pki("the signature was not made by the certificate's key".into()))
}

/// Checks that the certificate `cert_der` was signed by the CA certificate `ca_der`'s key
/// (ECDSA P-256 with SHA-256, as every Carnet CA signs).
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> Result<()> {
    let (tag, _, fields, _) = der::element(cert_der)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    let (_, tbs, _, rest) = der::element(fields)?;
    let (_, _, _, rest) = der::element(rest)?; // signatureAlgorithm
    let (tag, _, bits, _) = der::element(rest)?;
    match bits.split_first() {
        Some((0, signature)) if tag == 0x03 => {
            verify_by_key(tbs_fields(ca_der)?.spki, tbs, signature)
                .map_err(|_| Error::Pki("the certificate was not issued by the national CA".into()))
        }
        _ => Err(der::malformed()),
    }
}

/// The AlgorithmIdentifier of a P-256 public key (id-ecPublicKey, prime256v1), DER.
const P256_ALGORITHM: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];

/// The uncompressed point of a P-256 SubjectPublicKeyInfo (its whole DER element).
fn p256_point(spki: &[u8]) -> Result<&[u8]> {
    let not_p256 = || Error::Pki("the key is not a P-256 public key".into());
    let (tag, _, fields, _) = der::element(spki)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    let (_, algorithm, _, rest) = der::element(fields)?;
    if algorithm != P256_ALGORITHM {
        return Err(not_p256());
    }
    let (tag, _, bits, rest) = der::element(rest)?;
    match bits.split_first() {
        Some((0, point))
            if tag == 0x03 && rest.is_empty() && point.len() == 65 && point[0] == 4 =>
        {
            Ok(point)
        }
        _ => Err(not_p256()),
    }
}

/// A certificate's validity window, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second of validity.
    pub not_before: i64,
    /// Last second of validity.
    pub not_after: i64,
}

impl Validity {
    /// Whole days left at `now` (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(DAY_SECS)
    }
}

/// Reads the validity window of a DER certificate. Anything malformed is an error.
pub fn validity(cert_der: &[u8]) -> Result<Validity> {
    let tbs = tbs_fields(cert_der)?;
    let (tag, _, window, _) = der::element(tbs.validity)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    let (t1, _, nb, rest) = der::element(window)?;
    let (t2, _, na, _) = der::element(rest)?;
    Ok(Validity {
        not_before: der::time(t1, nb)?,
        not_after: der::time(t2, na)?,
    })
}

/// The pin of a certificate's public key: BLAKE3 of its DER SubjectPublicKeyInfo. A new
/// certificate for the same key has the same pin.
pub fn key_pin(cert_der: &[u8]) -> Result<[u8; 32]> {
    Ok(*blake3::hash(tbs_fields(cert_der)?.spki).as_bytes())
}

/// The site id a site certificate names in its common name (`site-N`, as `issue_site` writes
/// it). A certificate without one (the host's, the CA's) or with anything else there is an
/// error: a peer is known by this id, never by the address it comes from.
pub fn site_id_of(cert_der: &[u8]) -> Result<u32> {
    const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    let no_site = || Error::Pki("the certificate names no site (common name site-N)".into());
    let subject = tbs_fields(cert_der)?.subject;
    let (tag, _, mut rdns, _) = der::element(subject)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    let mut common_names = Vec::new();
    while !rdns.is_empty() {
        let (_, _, mut set, after) = der::element(rdns)?;
        rdns = after;
        while !set.is_empty() {
            let (_, _, attribute, after) = der::element(set)?;
            set = after;
            let (_, oid, _, value) = der::element(attribute)?;
            if oid == COMMON_NAME {
                let (tag, _, text, _) = der::element(value)?;
                if tag != UTF8_STRING && tag != PRINTABLE_STRING {
                    return Err(no_site());
                }
                common_names.push(text);
            }
        }
    }
    let [name] = common_names[..] else {
        return Err(no_site());
    };
    let id = std::str::from_utf8(name)
        .ok()
        .and_then(|n| n.strip_prefix("site-"))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(no_site)?;
    // `site-07` or `site-+7` is not how a site certificate is written.
    if name != format!("site-{id}").as_bytes() || id == 0 {
        return Err(no_site());
    }
    Ok(id)
}

/// The TBS fields Carnet reads: the validity element, the subject and the whole
/// SubjectPublicKeyInfo.
struct Tbs<'a> {
    validity: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
}

fn tbs_fields(cert_der: &[u8]) -> Result<Tbs<'_>> {
    let (tag, _, cert, _) = der::element(cert_der)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    let (tag, _, tbs, _) = der::element(cert)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    let mut rest = tbs;
    let (tag, _, _, after) = der::element(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = der::element(rest)?.3;
    }
    let (_, validity, _, after) = der::element(rest)?;
    let (_, subject, _, after_subject) = der::element(after)?;
    let (tag, spki, _, _) = der::element(after_subject)?;
    if tag != der::SEQUENCE {
        return Err(der::malformed());
    }
    Ok(Tbs {
        validity,
        subject,
        spki,
    })
}

/// Just enough DER to read a certificate's validity and public key.
mod der {
    use crate::error::{Error, Result};

    pub const SEQUENCE: u8 = 0x30;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    pub fn malformed() -> Error {
        Error::Pki("the certificate is malformed".into())
    }

    /// One element: its tag, its whole encoding, its contents, and what follows it.
    pub type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// Reads the element at the start of `input`.
    pub fn element(input: &[u8]) -> Result<Element<'_>> {
        let (&tag, rest) = input.split_first().ok_or_else(malformed)?;
        if tag & 0x1f == 0x1f {
            return Err(malformed()); // high tag numbers: not in a certificate's fields read here
        }
        let (&first, rest) = rest.split_first().ok_or_else(malformed)?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(malformed());
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(malformed());
        }
        let header = input.len() - rest.len();
        Ok((tag, &input[..header + len], &rest[..len], &rest[len..]))
    }

    /// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), in
    /// Unix seconds.
    pub fn time(tag: u8, text: &[u8]) -> Result<i64> {
        let digits = |b: &[u8]| -> Result<i64> {
            if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
                return Err(malformed());
            }
            Ok(b.iter()
                .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0')))
        };
        let (year, rest) = match (tag, text.len()) {
            (UTC_TIME, 13) => {
                let yy = digits(&text[..2])?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
            }
            (GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
            _ => return Err(malformed()),
        };
        if rest[10] != b'Z' {
            return Err(malformed());
        }
        let date = format!(
            "{year:04}-{:02}-{:02}",
            digits(&rest[0..2])?,
            digits(&rest[2..4])?
        );
        let (h, m, s) = (
            digits(&rest[4..6])?,
            digits(&rest[6..8])?,
            digits(&rest[8..10])?,
        );
        if h > 23 || m > 59 || s > 60 {
            return Err(malformed());
        }
        let midnight =
            carnet_store::time::parse_calendar_date(&date).map_err(|_| malformed())? / 1000;
        Ok(midnight + h * 3600 + m * 60 + s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    /// 2026-11-23T10:00:00Z.
    const NOW: i64 = 1_795_428_000;

    /// The window as an independent parser reads it.
    fn window(der: &[u8]) -> (i64, i64) {
        let (_, cert) = X509Certificate::from_der(der).expect("x509");
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    }

    #[test]
    fn certificates_have_real_lifetimes() {
        let ca = new_ca(NOW).expect("ca");
        let host = issue_host(&ca, NOW, None).expect("host");
        let site = issue_site(&ca, 7, NOW).expect("site");
        for (der, days) in [
            (&ca.cert_der, CA_DAYS),
            (&host.cert_der, HOST_DAYS),
            (&site.cert_der, SITE_DAYS),
        ] {
            let (nb, na) = window(der);
            assert_eq!(nb, NOW - SKEW_SECS);
            assert_eq!(na, NOW + days * DAY_SECS);
            // Our reader agrees with x509-parser.
            assert_eq!(
                validity(der).expect("validity"),
                Validity {
                    not_before: nb,
                    not_after: na
                }
            );
        }
        assert_eq!(CA_DAYS / 365, 10);
        assert_eq!(HOST_DAYS / 365, 2);
        // Never past the CA: a site issued nine and a half years on ends with the CA.
        let late = NOW + (CA_DAYS - 180) * DAY_SECS;
        let site = issue_site(&ca, 8, late).expect("late site");
        assert_eq!(window(&site.cert_der).1, NOW + CA_DAYS * DAY_SECS);
        // None once the CA has expired.
        let after = NOW + (CA_DAYS + 1) * DAY_SECS;
        assert!(matches!(issue_site(&ca, 9, after), Err(Error::Invalid(_))));
        assert_eq!(validity(&site.cert_der).expect("v").days_left(late), 180);
    }

    #[test]
    fn a_renewed_host_certificate_keeps_its_key_pin() {
        let ca = new_ca(NOW).expect("ca");
        let host = issue_host(&ca, NOW, None).expect("host");
        let renewed = issue_host(&ca, NOW + 400 * DAY_SECS, Some(&host.key_der)).expect("renewed");
        assert_ne!(host.cert_der, renewed.cert_der);
        assert_eq!(
            key_pin(&host.cert_der).ok(),
            key_pin(&renewed.cert_der).ok()
        );
        let other = issue_host(&ca, NOW, None).expect("other");
        assert_ne!(key_pin(&host.cert_der).ok(), key_pin(&other.cert_der).ok());
        // The pin is the SubjectPublicKeyInfo x509-parser finds.
        let (_, cert) = X509Certificate::from_der(&host.cert_der).expect("x509");
        assert_eq!(
            key_pin(&host.cert_der).ok(),
            Some(*blake3::hash(cert.public_key().raw).as_bytes())
        );
    }

    #[test]
    fn a_certificate_key_signs_and_only_its_signatures_verify() {
        let ca = new_ca(NOW).expect("ca");
        let site = issue_site(&ca, 7, NOW).expect("site");
        let other = issue_site(&ca, 8, NOW).expect("other");
        let sig = sign(&site, b"head").expect("sign");
        verify(&site.cert_der, b"head", &sig).expect("verifies");
        assert!(
            verify(&site.cert_der, b"head!", &sig).is_err(),
            "another message"
        );
        assert!(
            verify(&other.cert_der, b"head", &sig).is_err(),
            "another key"
        );
        assert!(verify(&site.cert_der, b"head", &sig[1..]).is_err());
        assert!(verify(&site.cert_der, b"head", b"").is_err());
        // x509-parser reads the same point.
        let (_, cert) = X509Certificate::from_der(&site.cert_der).expect("x509");
        let spki = tbs_fields(&site.cert_der).expect("tbs").spki;
        assert_eq!(
            p256_point(spki).ok(),
            Some(cert.public_key().subject_public_key.data.as_ref())
        );
        for cut in 0..spki.len() {
            assert!(p256_point(&spki[..cut]).is_err());
        }
    }

    #[test]
    fn a_site_certificate_is_issued_for_a_public_key_alone() {
        let ca = new_ca(NOW).expect("ca");
        let key = new_key().expect("key");
        let spki = public_key_of(&key).expect("public");
        let cert = issue_site_for_key(&ca, 7, NOW, &spki).expect("issued");
        assert_eq!(certificate_key(&cert).ok(), Some(spki.clone()));
        assert_eq!(window(&cert), (NOW - SKEW_SECS, NOW + SITE_DAYS * DAY_SECS));
        let (_, parsed) = X509Certificate::from_der(&cert).expect("x509");
        assert_eq!(
            parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok()),
            Some("site-7")
        );
        // The key signs, the certificate verifies it.
        let sig = sign_with_key(&key, b"m").expect("sign");
        verify(&cert, b"m", &sig).expect("verifies");
        verify_by_key(&spki, b"m", &sig).expect("verifies");
        issued_by(&cert, &ca.cert_der).expect("by the CA");
        let other = new_ca(NOW).expect("other");
        assert!(issued_by(&cert, &other.cert_der).is_err());
        assert!(issue_site_for_key(&ca, 7, NOW, b"not a key").is_err());
        assert!(issue_site_lasting(&ca, 7, NOW, 0).is_err());
        assert!(issue_site_lasting(&ca, 7, NOW, SITE_DAYS + 1).is_err());
        let short = issue_site_lasting(&ca, 7, NOW, 20).expect("short");
        assert_eq!(window(&short.cert_der).1, NOW + 20 * DAY_SECS);
    }

    #[test]
    fn times_in_both_encodings() {
        assert_eq!(der::time(0x17, b"491231235959Z").ok(), Some(2_524_607_999));
        assert_eq!(der::time(0x17, b"500101000000Z").ok(), Some(-631_152_000));
        assert_eq!(
            der::time(0x18, b"40960101000000Z").ok(),
            Some(67_090_118_400)
        );
        for bad in [
            &b"4912312359Z"[..],
            b"491331000000Z",
            b"49123123595+Z",
            b"491231235959X",
        ] {
            assert!(der::time(0x17, bad).is_err(), "{bad:?}");
        }
        assert!(der::time(0x04, b"491231235959Z").is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let ca = new_ca(NOW).expect("ca");
        let der = &ca.cert_der;
        let site = issue_site(&ca, 7, NOW).expect("site");
        for der in [der, &site.cert_der] {
            for cut in 0..der.len() {
                let _ = validity(&der[..cut]);
                let _ = key_pin(&der[..cut]);
                assert!(site_id_of(&der[..cut]).is_err());
            }
            for i in 0..der.len() {
                let mut bad = der.clone();
                bad[i] ^= 0xff;
                let _ = validity(&bad);
                let _ = key_pin(&bad);
                let _ = site_id_of(&bad);
            }
        }
        assert!(validity(b"").is_err());
        assert!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    /// A site certificate names its site; the host's and the CA's name none, and a common
    /// name not written as `issue_site` writes it names none either.
    #[test]
    fn a_site_certificate_names_its_site_and_nothing_else_does() {
        let ca = new_ca(NOW).expect("ca");
        for id in [1, 7, 12, u32::MAX] {
            let site = issue_site(&ca, id, NOW).expect("site");
            assert_eq!(site_id_of(&site.cert_der).expect("id"), id);
            // As an independent parser reads the common name.
            let (_, cert) = X509Certificate::from_der(&site.cert_der).expect("x509");
            let cn = cert.subject().iter_common_name().next().expect("cn");
            assert_eq!(cn.as_str().expect("text"), format!("site-{id}"));
        }
        let host = issue_host(&ca, NOW, None).expect("host");
        for der in [&host.cert_der, &ca.cert_der] {
            let e = site_id_of(der).expect_err("no site").to_string();
            assert!(e.contains("names no site"), "{e}");
        }
        for name in [
            "site-07",
            "site-+7",
            "site-0",
            "site-",
            "site-7 ",
            "Site-7",
            "site-4294967296",
        ] {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            let odd = issue(&ca, params, NOW, 30, None).expect("issued");
            assert!(site_id_of(&odd.cert_der).is_err(), "{name}");
        }
    }
}
