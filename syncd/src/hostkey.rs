//! The host's TLS key over time: a signed hand-over to a new key, and revocation of a key at
//! the sites (issue 18, point 9).
//!
//! Two statements, each with a version and signed over bytes that begin with a domain
//! separation string (PROTOCOL.md, "Host key hand-over and revocation"):
//! - `HandOver`, by the host's current TLS key: "the next key is this one". `pki renew-host
//!   --new-key` prepares the next key and certificate without serving them; the host carries
//!   the statement in every `Welcome` until `pki renew-host --switch` serves the new key.
//! - `HostRevocation`, by the national CA's key: "this host key is revoked"
//!   (`pki revoke-host`). The host carries the revocations it holds in every `Welcome`; a site
//!   also installs one from a file (`pki install`).
//!
//! Invariants: a site takes a hand-over only on a connection whose host certificate is for
//! the statement's current key and signed by it, and never names a revoked key as next; it
//! holds two pins at most (`HostPins`: the current and the next); its first round on the next
//! key drops the old pin. A revocation is admitted only if the site's CA signed it; the pin
//! is removed and refused at the TLS layer from then on (`transport::client_config`), pinned
//! or not. Pins and revocations live in the site's sealed TLS identity (a `meta` row under
//! `state_mac`), written together in one transaction: what a Welcome brings is checked whole
//! before anything is stored, so a refused statement changes nothing.

use carnet_store::replica::{Replica, Role};
use serde::{Deserialize, Serialize};

use crate::enrol::{self, HostPins};
use crate::error::{Error, Result};
use crate::pki::{self, Identity};

/// Version of both statements.
pub const STATEMENT_VERSION: u8 = 1;
/// The context of a hand-over's signed bytes.
const HAND_OVER_CONTEXT: &[u8] = b"carnet host hand-over v1\0";
/// The context of a revocation's signed bytes.
const REVOCATION_CONTEXT: &[u8] = b"carnet host revocation v1\0";
/// Most revocations a host holds and carries in a `Welcome` (a site refuses a longer list).
pub const REVOCATIONS_MAX: usize = 64;
/// Magic prefix of a revocation file.
const REVOCATION_MAGIC: &[u8; 8] = b"CARNETHR";
/// Name of the host's prepared next key and revocations in the replica (`HostKeys`).
const HOST_KEYS: &str = "host-keys";
/// Format of the stored `HostKeys`.
const HOST_KEYS_FORMAT: u8 = 1;

/// A pin as the operator reads it: lowercase hex.
pub fn pin_hex(pin: &[u8; 32]) -> String {
    pin.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pin from its hex form (64 digits); anything else is a clear error.
pub fn parse_pin(text: &str) -> Result<[u8; 32]> {
    let bad = || Error::Invalid(format!("'{text}' is not a host key pin (64 hex digits)"));
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(pin)
}

/// The host's current TLS key names its next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOver {
    /// `STATEMENT_VERSION`.
    pub version: u8,
    /// The pin of the key that signs (the key the host serves now).
    pub current: [u8; 32],
    /// The pin of the key the host will serve next.
    pub next: [u8; 32],
    /// `HandOver::message` signed by the current key (ECDSA P-256, SHA-256, ASN.1 DER).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl HandOver {
    /// The signed bytes: the context, then the current and the next pin.
    pub fn message(current: &[u8; 32], next: &[u8; 32]) -> Vec<u8> {
        let mut out = HAND_OVER_CONTEXT.to_vec();
        out.extend_from_slice(current);
        out.extend_from_slice(next);
        out
    }

    /// `current` (the host's identity now) names the key of the certificate `next_cert`.
    pub fn sign(current: &Identity, next_cert: &[u8]) -> Result<HandOver> {
        let (current_pin, next) = (pki::key_pin(&current.cert_der)?, pki::key_pin(next_cert)?);
        Ok(HandOver {
            version: STATEMENT_VERSION,
            current: current_pin,
            next,
            signature: pki::sign(current, &HandOver::message(&current_pin, &next))?,
        })
    }

    /// Checks the statement was made by the key of `host_cert` (the certificate of the
    /// connection it came on), for that key, naming another.
    pub fn verify(&self, host_cert: &[u8]) -> Result<()> {
        let refused = |why: &str| Err(Error::Invalid(format!("host key hand-over refused: {why}")));
        if self.version != STATEMENT_VERSION {
            return refused(&format!("version {} is not supported", self.version));
        }
        if self.current != pki::key_pin(host_cert)? {
            return refused("it names another current key than the one this connection is on");
        }
        if self.next == self.current {
            return refused("it names the current key as the next");
        }
        pki::verify(
            host_cert,
            &HandOver::message(&self.current, &self.next),
            &self.signature,
        )
        .or_else(|_| refused("it is not signed by the host key of this connection"))
    }
}

/// The national CA revokes a host TLS key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRevocation {
    /// `STATEMENT_VERSION`.
    pub version: u8,
    /// The pin of the revoked key.
    pub pin: [u8; 32],
    /// When the CA signed it (Unix seconds).
    pub revoked_at: i64,
    /// `HostRevocation::message` signed by the CA's key (ECDSA P-256, SHA-256, ASN.1 DER).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl HostRevocation {
    /// The signed bytes: the context, the pin, then the time (i64 big-endian).
    pub fn message(pin: &[u8; 32], revoked_at: i64) -> Vec<u8> {
        let mut out = REVOCATION_CONTEXT.to_vec();
        out.extend_from_slice(pin);
        out.extend_from_slice(&revoked_at.to_be_bytes());
        out
    }

    /// The CA revokes the host key `pin` at `revoked_at`.
    pub fn sign(ca: &Identity, pin: [u8; 32], revoked_at: i64) -> Result<HostRevocation> {
        Ok(HostRevocation {
            version: STATEMENT_VERSION,
            pin,
            revoked_at,
            signature: pki::sign(ca, &HostRevocation::message(&pin, revoked_at))?,
        })
    }

    /// Checks the CA certificate `ca_cert`'s key signed it.
    pub fn verify(&self, ca_cert: &[u8]) -> Result<()> {
        if self.version != STATEMENT_VERSION {
            return Err(Error::Invalid(format!(
                "host key revocation refused: version {} is not supported",
                self.version
            )));
        }
        pki::verify(
            ca_cert,
            &HostRevocation::message(&self.pin, self.revoked_at),
            &self.signature,
        )
        .map_err(|_| {
            Error::Invalid(
                "host key revocation refused: it is not signed by the national CA this site trusts"
                    .into(),
            )
        })
    }

    /// Encodes as a file: magic, then postcard.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = REVOCATION_MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).map_err(|e| Error::Invalid(e.to_string()))?);
        Ok(out)
    }

    /// True if `bytes` begin like a revocation file.
    pub fn is_file(bytes: &[u8]) -> bool {
        bytes.starts_with(REVOCATION_MAGIC)
    }

    /// Decodes a revocation file; anything else is a clear error.
    pub fn from_bytes(bytes: &[u8]) -> Result<HostRevocation> {
        bytes
            .strip_prefix(REVOCATION_MAGIC.as_slice())
            .and_then(|rest| postcard::from_bytes(rest).ok())
            .ok_or_else(|| Error::Invalid("not a Carnet host key revocation, or damaged".into()))
    }
}

/// The host's next key, prepared and announced, not served yet.
#[derive(Clone, Serialize, Deserialize)]
struct NextHostKey {
    identity: Identity,
    hand_over: HandOver,
}

/// What the host keeps besides its register: its next key and the revocations it carries.
#[derive(Clone, Default, Serialize, Deserialize)]
struct HostKeys {
    next: Option<NextHostKey>,
    revocations: Vec<HostRevocation>,
}

fn load_host_keys(replica: &Replica) -> Result<HostKeys> {
    let damaged = || Error::Invalid("the stored host keys are damaged".into());
    match replica.get_sealed(HOST_KEYS)? {
        None => Ok(HostKeys::default()),
        Some(raw) => match raw.split_first() {
            Some((&HOST_KEYS_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|_| damaged()),
            _ => Err(damaged()),
        },
    }
}

fn save_host_keys(replica: &Replica, keys: &HostKeys) -> Result<()> {
    let mut bytes = zeroize::Zeroizing::new(vec![HOST_KEYS_FORMAT]);
    bytes.extend(postcard::to_stdvec(keys).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(replica.put_sealed(HOST_KEYS, &bytes)?)
}

/// Host: what it carries in every `Welcome`: the hand-over to its next key (while one is
/// prepared) and the revocations it holds.
pub fn announced(replica: &Replica) -> Result<(Option<HandOver>, Vec<HostRevocation>)> {
    if replica.config().role != Role::Host {
        return Ok((None, Vec::new()));
    }
    let keys = load_host_keys(replica)?;
    Ok((keys.next.map(|n| n.hand_over), keys.revocations))
}

/// A host key's pin (`pki::key_pin`).
pub type Pin = [u8; 32];

/// Host: the pins of its next key (prepared, not served) and of the revoked keys, for
/// `pki list`.
pub fn host_key_state(replica: &Replica) -> Result<(Option<Pin>, Vec<Pin>)> {
    let keys = load_host_keys(replica)?;
    Ok((
        keys.next.map(|n| n.hand_over.next),
        keys.revocations.iter().map(|r| r.pin).collect(),
    ))
}

/// Host: prepares a new TLS key and its certificate under `ca` without serving them, and the
/// hand-over its current key signs (a prepared key not switched to yet is replaced). Answers
/// the new certificate's validity and its pin.
pub fn prepare_next(replica: &Replica, ca: Option<&Identity>) -> Result<(pki::Validity, [u8; 32])> {
    let reg = enrol::load_host_pki(replica)?;
    let ca = reg.ca(ca)?;
    let identity = pki::issue_host(&ca, enrol::now_secs(replica), None)?;
    let hand_over = HandOver::sign(&reg.host, &identity.cert_der)?;
    let v = pki::validity(&identity.cert_der)?;
    let pin = hand_over.next;
    let mut keys = load_host_keys(replica)?;
    keys.next = Some(NextHostKey {
        identity,
        hand_over,
    });
    save_host_keys(replica, &keys)?;
    Ok((v, pin))
}

/// What `switch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// The pin of the key the host served until now.
    pub old: [u8; 32],
    /// The pin of the key it serves from now on.
    pub new: [u8; 32],
    /// The new certificate's validity.
    pub validity: pki::Validity,
}

/// Host: serves the prepared next key from now on. Sites that took the hand-over go on; the
/// others need a renewal bundle. The announcement ends first (a host that stops between the
/// two writes keeps its old key and announces nothing, never a hand-over from a key it no
/// longer serves).
pub fn switch(replica: &Replica) -> Result<Switched> {
    let mut keys = load_host_keys(replica)?;
    let next = keys.next.take().ok_or_else(|| {
        Error::Invalid(
            "no new host key is prepared: run `carnet pki renew-host --new-key` first, let the sites sync, then switch".into(),
        )
    })?;
    let mut reg = enrol::load_host_pki(replica)?;
    let old = pki::key_pin(&reg.host.cert_der)?;
    if next.hand_over.current != old {
        return Err(Error::Invalid(
            "the prepared host key was announced by another key than the one served: prepare it again (`pki renew-host --new-key`)".into(),
        ));
    }
    save_host_keys(replica, &keys)?;
    let validity = pki::validity(&next.identity.cert_der)?;
    reg.host = next.identity;
    enrol::save_host_pki(replica, &reg)?;
    Ok(Switched {
        old,
        new: next.hand_over.next,
        validity,
    })
}

/// Host: the CA revokes the host key `pin` (`ca`: the offline CA, unless its key is in the
/// replica). Refused for the key the host serves (switch to a new one first). The host
/// carries the revocation to every site from its next round; a prepared next key with that
/// pin is dropped. Answers the statement (to hand to sites as a file, too).
pub fn revoke(replica: &Replica, pin: [u8; 32], ca: Option<&Identity>) -> Result<HostRevocation> {
    let reg = enrol::load_host_pki(replica)?;
    let ca = reg.ca(ca)?;
    if pki::key_pin(&reg.host.cert_der)? == pin {
        return Err(Error::Invalid(
            "this is the key the host serves now: prepare a new one (`pki renew-host --new-key`), switch to it (`--switch`), then revoke this one".into(),
        ));
    }
    let mut keys = load_host_keys(replica)?;
    if let Some(held) = keys.revocations.iter().find(|r| r.pin == pin) {
        return Ok(held.clone());
    }
    if keys.revocations.len() >= REVOCATIONS_MAX {
        return Err(Error::Invalid(format!(
            "this host already carries {REVOCATIONS_MAX} host key revocations"
        )));
    }
    let revocation = HostRevocation::sign(&ca, pin, enrol::now_secs(replica))?;
    keys.revocations.push(revocation.clone());
    if keys.next.as_ref().is_some_and(|n| n.hand_over.next == pin) {
        keys.next = None;
    }
    save_host_keys(replica, &keys)?;
    Ok(revocation)
}

/// Site: the refusal when the host's key `pin` is revoked.
fn revoked_error(pin: &[u8; 32]) -> Error {
    Error::Invalid(format!(
        "the host's TLS key {} was revoked by the national CA (after this connection was opened): the round stops, and the next connection refuses that key; this site syncs again once the host serves a key it pins, or after it installs a renewal bundle (`carnet pki install`)",
        &pin_hex(pin)[..16]
    ))
}

/// Site: admits `revocations` into `tls` (each checked against its CA first); answers
/// whether anything changed. Nothing is stored here.
fn admit_revocations(tls: &mut enrol::SiteTls, revocations: &[HostRevocation]) -> Result<bool> {
    if revocations.len() > REVOCATIONS_MAX {
        return Err(Error::Invalid(format!(
            "protocol: more than {REVOCATIONS_MAX} host key revocations"
        )));
    }
    let mut changed = false;
    for r in revocations {
        if tls.revoked_host_pins.contains(&r.pin) {
            continue;
        }
        r.verify(&tls.ca_cert_der)?;
        tls.revoked_host_pins.push(r.pin);
        if let Some(pins) = &mut tls.host_pins {
            pins.remove(&r.pin);
        }
        changed = true;
    }
    Ok(changed)
}

/// Site: what the host's `Welcome` says of its keys, on a connection to `host_cert`: the
/// revocations it carries (each signed by the CA), then the first round on the next key
/// (the old pin dropped), then the hand-over (signed by this connection's key). Checked
/// whole before anything is stored; any refusal changes nothing and ends the round.
pub fn on_welcome(
    replica: &Replica,
    host_cert: &[u8],
    hand_over: Option<&HandOver>,
    revocations: &[HostRevocation],
) -> Result<()> {
    if replica.config().role != Role::Site || replica.get_sealed(enrol::SITE_TLS)?.is_none() {
        return Ok(());
    }
    let mut tls = enrol::site_tls(replica)?;
    let taking_over = tls.host_pins.is_some_and(|p| p.next.is_some());
    if hand_over.is_none()
        && revocations.is_empty()
        && tls.revoked_host_pins.is_empty()
        && !taking_over
    {
        return Ok(()); // Nothing to check or to store: most rounds.
    }
    let pin = pki::key_pin(host_cert)?;
    let mut changed = admit_revocations(&mut tls, revocations)?;
    if tls.revoked_host_pins.contains(&pin) {
        if changed {
            enrol::save_site_tls(replica, &tls)?;
        }
        return Err(revoked_error(&pin));
    }
    if let Some(pins) = &mut tls.host_pins {
        if pins.next == Some(pin) {
            // The first round on the key handed over to: the old one is done with.
            *pins = HostPins {
                current: Some(pin),
                next: None,
            };
            changed = true;
        }
        if let Some(h) = hand_over {
            h.verify(host_cert)?;
            if tls.revoked_host_pins.contains(&h.next) {
                return Err(Error::Invalid(
                    "host key hand-over refused: it names a revoked key".into(),
                ));
            }
            if pins.next != Some(h.next) {
                pins.next = Some(h.next);
                changed = true;
            }
        }
    }
    if changed {
        enrol::save_site_tls(replica, &tls)?;
    }
    Ok(())
}

/// What a site did with a revocation file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationInstalled {
    /// The revoked pin.
    pub pin: [u8; 32],
    /// The site held it already: nothing changed.
    pub already: bool,
    /// The site pins no host key any more: it cannot sync until it installs a renewal bundle.
    pub no_pin_left: bool,
}

/// Site: installs a revocation file's statement: refused unless its CA signed it.
pub fn install_revocation(replica: &Replica, bytes: &[u8]) -> Result<RevocationInstalled> {
    if replica.config().role != Role::Site {
        return Err(Error::Invalid(
            "a host key revocation is installed at a site (`carnet pki install` on the site)"
                .into(),
        ));
    }
    let revocation = HostRevocation::from_bytes(bytes)?;
    let mut tls = enrol::site_tls(replica)?;
    let changed = admit_revocations(&mut tls, std::slice::from_ref(&revocation))?;
    if changed {
        enrol::save_site_tls(replica, &tls)?;
    }
    Ok(RevocationInstalled {
        pin: revocation.pin,
        already: !changed,
        no_pin_left: tls.host_pins.is_some_and(|p| p.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, now_secs as now};

    #[test]
    fn a_hand_over_signs_exact_bytes_and_verifies_only_from_its_key() {
        let ca = pki::new_ca(now()).expect("ca");
        let host = pki::issue_host(&ca, now(), None).expect("host");
        let next = pki::issue_host(&ca, now(), None).expect("next");
        let h = HandOver::sign(&host, &next.cert_der).expect("sign");
        let (cur, nxt) = (
            pki::key_pin(&host.cert_der).expect("pin"),
            pki::key_pin(&next.cert_der).expect("pin"),
        );
        assert_eq!((h.current, h.next, h.version), (cur, nxt, 1));
        let mut expected = b"carnet host hand-over v1\0".to_vec();
        expected.extend_from_slice(&cur);
        expected.extend_from_slice(&nxt);
        assert_eq!(HandOver::message(&cur, &nxt), expected);
        pki::verify(&host.cert_der, &expected, &h.signature).expect("signed bytes");
        h.verify(&host.cert_der).expect("verifies");
        // On a connection to another key (the next one, a renewal of another key).
        assert!(h.verify(&next.cert_der).is_err());
        // Signed by another key for this one's pin.
        let site = pki::issue_site(&ca, 7, now()).expect("site");
        let forged = HandOver {
            signature: pki::sign(&site, &expected).expect("sign"),
            ..h.clone()
        };
        assert!(forged.verify(&host.cert_der).is_err());
        // Another version, a changed next pin, the current key as next.
        assert!(
            HandOver {
                version: 2,
                ..h.clone()
            }
            .verify(&host.cert_der)
            .is_err()
        );
        assert!(
            HandOver {
                next: [9; 32],
                ..h.clone()
            }
            .verify(&host.cert_der)
            .is_err()
        );
        let to_itself = HandOver::sign(&host, &host.cert_der).expect("sign");
        assert!(to_itself.verify(&host.cert_der).is_err());
        // Its wire encoding is stable: version, the two pins, the signature's length and bytes.
        let bytes = postcard::to_stdvec(&h).expect("encode");
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &cur);
        assert_eq!(&bytes[33..65], &nxt);
        assert_eq!(postcard::from_bytes::<HandOver>(&bytes).ok(), Some(h));
    }

    #[test]
    fn a_revocation_verifies_only_under_the_ca_and_its_file_round_trips() {
        let ca = pki::new_ca(now()).expect("ca");
        let r = HostRevocation::sign(&ca, [5; 32], 1_795_428_000).expect("sign");
        let mut expected = b"carnet host revocation v1\0".to_vec();
        expected.extend_from_slice(&[5; 32]);
        expected.extend_from_slice(&1_795_428_000i64.to_be_bytes());
        assert_eq!(HostRevocation::message(&[5; 32], 1_795_428_000), expected);
        r.verify(&ca.cert_der).expect("verifies");
        let other = pki::new_ca(now()).expect("other");
        assert!(r.verify(&other.cert_der).is_err());
        let host = pki::issue_host(&ca, now(), None).expect("host");
        let by_host = HostRevocation {
            signature: pki::sign(&host, &expected).expect("sign"),
            ..r.clone()
        };
        let e = by_host.verify(&ca.cert_der).expect_err("not the CA");
        assert!(e.to_string().contains("national CA"), "{e}");
        assert!(
            HostRevocation {
                pin: [6; 32],
                ..r.clone()
            }
            .verify(&ca.cert_der)
            .is_err()
        );
        let file = r.to_bytes().expect("file");
        assert!(HostRevocation::is_file(&file));
        assert_eq!(HostRevocation::from_bytes(&file).ok(), Some(r));
        for cut in 0..file.len() {
            assert!(HostRevocation::from_bytes(&file[..cut]).is_err());
        }
        assert_eq!(parse_pin(&pin_hex(&[0xab; 32])).ok(), Some([0xab; 32]));
        for bad in ["", "ab", &"g".repeat(64), &"é".repeat(32)] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
    }

    /// A host with a PKI and a site enrolled from its bundle; the host's certificate.
    fn enrolled() -> (tempfile::TempDir, Replica, Replica, Vec<u8>) {
        let tmp = tempfile::tempdir().expect("tmp");
        let host = testkit::init(&tmp.path().join("host"), Role::Host, None, None);
        enrol::init_host(&host).expect("pki");
        let b = enrol::enrol(&host, "Clinique", "750000001", "127.0.0.1:4433").expect("enrol");
        let site = testkit::site_from_bundle(&tmp.path().join("site"), &b);
        let cert = enrol::host_identity(&host).expect("identity").1.cert_der;
        (tmp, host, site, cert)
    }

    fn pins(site: &Replica) -> (Option<HostPins>, Vec<[u8; 32]>) {
        let tls = enrol::site_tls(site).expect("tls");
        (tls.host_pins, tls.revoked_host_pins)
    }

    #[test]
    fn a_site_takes_the_hand_over_then_drops_the_old_pin_on_the_new_key() {
        let (_tmp, host, site, old_cert) = enrolled();
        let old = pki::key_pin(&old_cert).expect("pin");
        assert_eq!(announced(&host).expect("announced"), (None, vec![]));
        let (_, next) = prepare_next(&host, None).expect("prepare");
        let (hand_over, revocations) = announced(&host).expect("announced");
        let hand_over = hand_over.expect("announced");
        assert_eq!(hand_over.next, next);
        // The host still serves the old key.
        assert_eq!(
            enrol::host_identity(&host).expect("id").1.cert_der,
            old_cert
        );
        on_welcome(&site, &old_cert, Some(&hand_over), &revocations).expect("taken");
        let both = HostPins {
            current: Some(old),
            next: Some(next),
        };
        assert_eq!(pins(&site).0, Some(both));
        // Again: nothing changes.
        on_welcome(&site, &old_cert, Some(&hand_over), &revocations).expect("again");
        assert_eq!(pins(&site).0, Some(both));
        let switched = switch(&host).expect("switch");
        assert_eq!((switched.old, switched.new), (old, next));
        assert!(switch(&host).is_err(), "nothing prepared now");
        let new_cert = enrol::host_identity(&host).expect("id").1.cert_der;
        assert_eq!(announced(&host).expect("announced"), (None, vec![]));
        on_welcome(&site, &new_cert, None, &[]).expect("first round on the new key");
        assert_eq!(
            pins(&site).0,
            Some(HostPins {
                current: Some(next),
                next: None
            })
        );
    }

    #[test]
    fn the_welcome_carries_the_hand_over_and_a_site_session_takes_it_only_from_its_host() {
        use crate::session::{HostSession, Msg, SiteSession};
        let (_tmp, host, site, host_cert) = enrolled();
        prepare_next(&host, None).expect("prepare");
        let welcome = |site_session: &mut SiteSession| {
            let hello = site_session
                .start(crate::testkit::site_sync(&site))
                .expect("hello");
            let mut h = HostSession::new(site.config().site_id, testkit::certificate(&site));
            let mut replies = h
                .handle(crate::testkit::host_sync(&host), hello)
                .expect("welcome");
            assert_eq!(replies.len(), 1);
            replies.remove(0)
        };
        let before = pins(&site);
        // The Welcome as the host sends it, but on a connection to another key (a certificate
        // the CA issued for `carnet-host`, which a site pinning both would admit): refused.
        let other = enrol::load_host_pki(&host)
            .expect("reg")
            .ca(None)
            .expect("ca");
        let other = pki::issue_host(&other, now(), None)
            .expect("other")
            .cert_der;
        let mut s = SiteSession::new(testkit::signer(&site), other);
        let msg = welcome(&mut s);
        assert!(matches!(
            &msg,
            Msg::Welcome {
                hand_over: Some(_),
                ..
            }
        ));
        let e = s
            .handle(crate::testkit::site_sync(&site), msg)
            .expect_err("refused");
        assert!(e.to_string().contains("hand-over refused"), "{e}");
        assert_eq!(pins(&site), before, "pins unchanged");
        // On the connection to the pinned key: taken.
        let mut s = SiteSession::new(testkit::signer(&site), host_cert);
        let msg = welcome(&mut s);
        s.handle(crate::testkit::site_sync(&site), msg)
            .expect("taken");
        assert_eq!(pins(&site).0.map(|p| p.list().len()), Some(2));
    }

    #[test]
    fn a_hand_over_not_signed_by_the_connection_key_changes_no_pin() {
        let (_tmp, host, site, host_cert) = enrolled();
        let host_id = enrol::host_identity(&host).expect("id").1;
        let before = pins(&site);
        let next = pki::new_key().expect("key");
        let next_pin = *blake3::hash(&pki::public_key_of(&next).expect("spki")).as_bytes();
        let message = HandOver::message(&before.0.expect("pinned").current.expect("c"), &next_pin);
        // Signed by the site's own certificate key, by a random key, or a stale statement
        // made by another host key for its own pin.
        let site_key = enrol::site_tls(&site).expect("tls").identity;
        let random = pki::new_key().expect("key");
        let other_host = {
            let tmp = tempfile::tempdir().expect("tmp");
            let h = testkit::init(&tmp.path().join("h"), Role::Host, None, None);
            enrol::init_host(&h).expect("pki");
            enrol::host_identity(&h).expect("id").1
        };
        let forged = [
            HandOver {
                version: 1,
                current: before.0.expect("p").current.expect("c"),
                next: next_pin,
                signature: pki::sign(&site_key, &message).expect("sign"),
            },
            HandOver {
                version: 1,
                current: before.0.expect("p").current.expect("c"),
                next: next_pin,
                signature: pki::sign_with_key(&random, &message).expect("sign"),
            },
            HandOver::sign(&other_host, &host_id.cert_der).expect("stale"),
        ];
        for h in &forged {
            let e = on_welcome(&site, &host_cert, Some(h), &[]).expect_err("refused");
            assert!(e.to_string().contains("hand-over refused"), "{e}");
            assert_eq!(pins(&site), before, "pins unchanged");
        }
    }

    #[test]
    fn a_revocation_removes_the_pin_and_one_not_from_the_ca_changes_nothing() {
        let (_tmp, host, site, host_cert) = enrolled();
        let current = pki::key_pin(&host_cert).expect("pin");
        let (_, next) = prepare_next(&host, None).expect("prepare");
        let (h, _) = announced(&host).expect("announced");
        on_welcome(&site, &host_cert, h.as_ref(), &[]).expect("hand-over");
        assert!(revoke(&host, current, None).is_err(), "the key it serves");
        let before = pins(&site);
        // Not signed by the CA: the host's own TLS key signing the same bytes.
        let host_id = enrol::host_identity(&host).expect("id").1;
        let forged = HostRevocation {
            version: 1,
            pin: next,
            revoked_at: now(),
            signature: pki::sign(&host_id, &HostRevocation::message(&next, now())).expect("sign"),
        };
        assert!(on_welcome(&site, &host_cert, None, std::slice::from_ref(&forged)).is_err());
        assert!(install_revocation(&site, &forged.to_bytes().expect("file")).is_err());
        assert_eq!(pins(&site), before, "nothing changed");
        // The CA's: the next pin goes, the host drops its prepared key.
        let r = revoke(&host, next, None).expect("revoke");
        assert_eq!(announced(&host).expect("a"), (None, vec![r.clone()]));
        on_welcome(&site, &host_cert, None, std::slice::from_ref(&r)).expect("admitted");
        assert_eq!(
            pins(&site),
            (
                Some(HostPins {
                    current: Some(current),
                    next: None
                }),
                vec![next]
            )
        );
        // From a file: the current pin goes too, and the site is told it pins nothing now.
        let ca = {
            // The CA key is in the replica here: the host signs with it.
            let reg = enrol::load_host_pki(&host).expect("reg");
            reg.ca(None).expect("ca")
        };
        let file = HostRevocation::sign(&ca, current, now())
            .expect("sign")
            .to_bytes()
            .expect("file");
        let done = install_revocation(&site, &file).expect("installed");
        assert!(done.no_pin_left && !done.already);
        assert!(install_revocation(&site, &file).expect("again").already);
        assert_eq!(pins(&site).1, vec![next, current]);
        let e = on_welcome(&site, &host_cert, None, &[]).expect_err("revoked");
        assert!(e.to_string().contains("revoked"), "{e}");
        assert!(install_revocation(&host, &file).is_err(), "not at the host");
    }

    #[test]
    fn pins_put_back_or_changed_without_the_key_refuse_the_replica() {
        let (tmp, host, site, _host_cert) = enrolled();
        let ca = enrol::load_host_pki(&host)
            .expect("reg")
            .ca(None)
            .expect("ca");
        let current = pins(&site).0.expect("pinned").current.expect("pin");
        use redb::ReadableDatabase as _;
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let row = format!("sealed:{}", enrol::SITE_TLS);
        let dir = tmp.path().join("site");
        let read = || {
            let db = redb::Database::open(dir.join("carnet.redb")).expect("open");
            let txn = db.begin_read().expect("read");
            let t = txn.open_table(meta).expect("meta");
            t.get(row.as_str())
                .expect("get")
                .expect("row")
                .value()
                .to_vec()
        };
        let write = |value: &[u8]| {
            let db = redb::Database::open(dir.join("carnet.redb")).expect("open");
            let txn = db.begin_write().expect("write");
            txn.open_table(meta)
                .expect("meta")
                .insert(row.as_str(), value)
                .expect("insert");
            txn.commit().expect("commit");
        };
        let open = || {
            carnet_store::replica::Replica::open(
                &dir,
                &carnet_store::replica::KeySource::File,
                carnet_store::replica::system_clock(),
            )
        };
        let file = HostRevocation::sign(&ca, current, now())
            .expect("sign")
            .to_bytes()
            .expect("file");
        install_revocation(&site, &file).expect("installed");
        drop(site);
        let revoked_row = read();
        // Someone with the folder but not the key puts back the row from before the
        // revocation (the pin trusted again): refused at open.
        drop(open().expect("opens as written"));
        let site = open().expect("open");
        let before = {
            // The row as it was before: a fresh enrolment's, rebuilt with the same identity.
            let mut tls = enrol::site_tls(&site).expect("tls");
            tls.revoked_host_pins.clear();
            tls.host_pins = Some(HostPins {
                current: Some(current),
                next: None,
            });
            enrol::save_site_tls(&site, &tls).expect("save");
            drop(site);
            read()
        };
        write(&revoked_row);
        assert!(open().is_err(), "an older pin row put back was accepted");
        write(&before);
        drop(open().expect("the row the replica last wrote"));
        let mut flipped = before.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        write(&flipped);
        assert!(open().is_err(), "a changed pin row was accepted");
    }
}
