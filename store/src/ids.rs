//! Identifiers: the patient's INS, professionals' RPPS, establishments' FINESS, sites and
//! documents.
//!
//! Invariants: a value of these types is always valid (constructed only through `parse` or,
//! for `DocId`, minted from a cryptographic random source). `Ins` never prints its matricule through
//! `Debug`, so it cannot leak into logs by accident.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kind of an INS, which decides its OID (DOMAIN §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InsKind {
    /// Numéro d'inscription au répertoire (NIR).
    Nir,
    /// Numéro d'identification d'attente, for people awaiting a NIR.
    Nia,
    /// A test NIR (used by test data).
    TestNir,
    /// A demonstration NIR (used by the demo).
    DemoNir,
}

impl InsKind {
    /// The OID that qualifies a matricule of this kind.
    pub fn oid(self) -> &'static str {
        match self {
            InsKind::Nir => "1.2.250.1.213.1.4.8",
            InsKind::Nia => "1.2.250.1.213.1.4.9",
            InsKind::TestNir => "1.2.250.1.213.1.4.10",
            InsKind::DemoNir => "1.2.250.1.213.1.4.11",
        }
    }

    /// Parses `nir`, `nia`, `test` or `demo`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nir" => Ok(InsKind::Nir),
            "nia" => Ok(InsKind::Nia),
            "test" => Ok(InsKind::TestNir),
            "demo" => Ok(InsKind::DemoNir),
            other => Err(Error::invalid(format!(
                "unknown INS kind '{other}': use nir, nia, test or demo"
            ))),
        }
    }

    /// The name `parse` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            InsKind::Nir => "nir",
            InsKind::Nia => "nia",
            InsKind::TestNir => "test",
            InsKind::DemoNir => "demo",
        }
    }
}

/// A patient's national health identifier: a 15-character matricule (13 + a 2-digit key).
/// Decoding one (the local API, a peer, a stored record) goes through `Ins::parse` too.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ins {
    matricule: String,
}

impl From<Ins> for String {
    fn from(ins: Ins) -> String {
        ins.matricule
    }
}

impl TryFrom<String> for Ins {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        Ins::parse(&text)
    }
}

impl Ins {
    /// Parses a matricule (spaces are ignored) and checks its key.
    ///
    /// The key is `97 - (first 13 characters mod 97)`, where the Corsican departments `2A` and
    /// `2B` (characters 6–7) count as 19 and 18.
    pub fn parse(text: &str) -> Result<Self> {
        let matricule: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if matricule.len() != 15 || !matricule.is_ascii() {
            return Err(Error::invalid(format!(
                "invalid INS: expected 15 characters (13 + a 2-digit key), got {}",
                matricule.chars().count()
            )));
        }
        let (body, key) = matricule.split_at(13);
        let expected = Self::key_of(body)?;
        // Two digits, nothing else (`u8::from_str` would take "+7" for 07: two matricules
        // for one patient).
        let given: u8 = key
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| key.parse().ok())
            .flatten()
            .ok_or_else(|| Error::invalid("invalid INS: the last two characters must be digits"))?;
        if given != expected {
            return Err(Error::invalid(format!(
                "invalid INS: wrong key {given:02} (check the number as written on the card)"
            )));
        }
        Ok(Ins { matricule })
    }

    /// The 2-digit key of the first 13 characters of a matricule.
    pub fn key_of(body: &str) -> Result<u8> {
        let bytes = body.as_bytes();
        if bytes.len() != 13 {
            return Err(Error::invalid(
                "invalid INS: the body must have 13 characters",
            ));
        }
        let first = bytes[0];
        if !(b'1'..=b'8').contains(&first) {
            return Err(Error::invalid(
                "invalid INS: the first digit must be 1 to 8",
            ));
        }
        let mut digits = String::with_capacity(13);
        for (i, &b) in bytes.iter().enumerate() {
            match (i, b) {
                (_, b'0'..=b'9') => digits.push(b as char),
                (6, b'A') if bytes[5] == b'2' => digits.push('9'),
                (6, b'B') if bytes[5] == b'2' => digits.push('8'),
                _ => {
                    return Err(Error::invalid(
                        "invalid INS: only digits are allowed, and 2A/2B as the department",
                    ));
                }
            }
        }
        // Corsica: "2A" counts as 19 and "2B" as 18: replace both department characters.
        if bytes[5] == b'2' && matches!(bytes[6], b'A' | b'B') {
            digits.replace_range(5..6, "1");
        }
        let number: u64 = digits
            .parse()
            .map_err(|_| Error::invalid("invalid INS: not a number"))?;
        Ok((97 - number % 97) as u8)
    }

    /// Builds a valid INS from its 13-character body by computing the key (for tests, demos
    /// and producers that only hold the body).
    pub fn from_body(body: &str) -> Result<Self> {
        let key = Self::key_of(body)?;
        Self::parse(&format!("{body}{key:02}"))
    }

    /// The 15-character matricule. Patient data: never log it.
    pub fn matricule(&self) -> &str {
        &self.matricule
    }
}

impl fmt::Debug for Ins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ins(<redacted>)")
    }
}

macro_rules! digit_id {
    ($name:ident, $len:expr, $what:expr) => {
        #[doc = concat!("A ", $what, " (", stringify!($len), " characters).")]
        #[doc = ""]
        #[doc = "Decoding one (the local API, an inbox sidecar, a peer, a bundle, a stored record) goes through `parse` too."]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;

            fn try_from(text: String) -> Result<Self> {
                let parsed = $name::parse(&text)?;
                // Only the exact form `parse` gives: what was signed or sealed stays the same
                // bytes when decoded and encoded again.
                if parsed.0 != text {
                    return Err(Error::invalid(format!(
                        concat!("invalid ", $what, ": written with spaces or in lower case")
                    )));
                }
                Ok(parsed)
            }
        }

        impl $name {
            /// Returns the identifier as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

digit_id!(Rpps, 11, "professional's RPPS number");
digit_id!(Finess, 9, "establishment's FINESS number");

impl Rpps {
    /// Parses exactly 11 digits.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.len() == 11 && t.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Rpps(t.to_string()))
        } else {
            Err(Error::invalid(format!(
                "invalid RPPS '{t}': expected 11 digits"
            )))
        }
    }
}

impl Finess {
    /// Parses 9 characters: digits, with `2A`/`2B` allowed as the department.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_uppercase();
        let b = t.as_bytes();
        let ok = b.len() == 9
            && b.iter().enumerate().all(|(i, c)| {
                c.is_ascii_digit() || (i == 1 && b[0] == b'2' && matches!(c, b'A' | b'B'))
            });
        if ok {
            Ok(Finess(t))
        } else {
            Err(Error::invalid(format!(
                "invalid FINESS '{t}': expected 9 digits (2A/2B allowed as department)"
            )))
        }
    }
}

/// A legal representative of one dossier, as the host recorded them in its signed head:
/// `R1`, `R2`, … in the order recorded. Unique within the dossier and never reused there (a
/// representative removed keeps their id, marked ended), so a trace entry naming one stays
/// true.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RepresentativeId(pub u16);

impl RepresentativeId {
    /// Parses `R` (or `r`) followed by a number from 1 to 65535, as `Display` writes it.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let err = || {
            Error::invalid(format!(
                "invalid representative id '{t}': expected R followed by a number, e.g. R1"
            ))
        };
        let digits = t
            .strip_prefix('R')
            .or_else(|| t.strip_prefix('r'))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(err)?;
        match digits.parse::<u16>() {
            Ok(n) if n > 0 => Ok(RepresentativeId(n)),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for RepresentativeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R{}", self.0)
    }
}

impl fmt::Debug for RepresentativeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepresentativeId(R{})", self.0)
    }
}

/// A replica's identity in version vectors and trace chains. The host is site 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct SiteId(pub u32);

impl SiteId {
    /// The national host.
    pub const HOST: SiteId = SiteId(0);
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A document identifier minted offline, unique without coordination: 6 bytes of the minting
/// time (Unix milliseconds, big-endian) then 10 random bytes, so 2^80 ids per millisecond
/// (ULID-like), so ids sort in the order they were minted. Replicas never store an id in clear
/// (`replica::doc_map` keys it), so their tables keep neither that order nor the time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocId(pub [u8; 16]);

impl DocId {
    /// Mints a fresh identifier at time `now_ms`.
    pub fn mint(now_ms: i64) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        crate::crypto::fast_random_bytes(&mut b[6..]);
        DocId(b)
    }

    /// Parses the 32 hexadecimal characters `Display` prints.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let err = || Error::invalid(format!("invalid document id '{t}': expected 32 hex digits"));
        if t.len() != 32 {
            return Err(err());
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(t.get(2 * i..2 * i + 2).ok_or_else(err)?, 16)
                .map_err(|_| err())?;
        }
        Ok(DocId(b))
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representative_ids_parse_as_they_display() {
        for (text, n) in [("R1", 1), ("r7", 7), (" R12 ", 12), ("R65535", 65535)] {
            let id = RepresentativeId::parse(text).expect(text);
            assert_eq!(id, RepresentativeId(n));
            assert_eq!(RepresentativeId::parse(&id.to_string()).ok(), Some(id));
        }
        for text in [
            "",
            "R",
            "R0",
            "1",
            "R-1",
            "R1x",
            "RR1",
            "R65536",
            "representative",
        ] {
            assert!(RepresentativeId::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn ins_key_is_checked() {
        let ins = Ins::from_body("1840575123456").expect("valid body");
        let key = &ins.matricule()[13..];
        assert_eq!(key, format!("{:02}", 97 - 1840575123456u64 % 97));
        assert!(Ins::parse(ins.matricule()).is_ok());
        let mut wrong = ins.matricule().to_string();
        wrong.replace_range(13.., if key == "01" { "02" } else { "01" });
        assert!(Ins::parse(&wrong).is_err());
        assert!(Ins::parse("12345").is_err());
        assert!(Ins::parse("9840575123456 00").is_err());
        assert!(Ins::parse("1840575X23456 00").is_err());
    }

    #[test]
    fn corsica_departments_count_as_19_and_18() {
        let a = Ins::from_body("18405 2A 123456".replace(' ', "").as_str()).expect("2A");
        assert_eq!(
            Ins::key_of("184052A123456").ok(),
            Some((97 - 1840519123456u64 % 97) as u8)
        );
        let b = Ins::key_of("184052B123456").expect("2B");
        assert_eq!(b, (97 - 1840518123456u64 % 97) as u8);
        assert!(Ins::parse(&a.matricule().to_lowercase()).is_ok());
        assert!(Ins::key_of("184053A123456").is_err());
    }

    #[test]
    fn ins_debug_is_redacted() {
        let ins = Ins::from_body("2840575123456").expect("valid");
        assert!(!format!("{ins:?}").contains("2840575"));
    }

    #[test]
    fn rpps_finess_docid_parse() {
        assert!(Rpps::parse("10001234567").is_ok());
        assert!(Rpps::parse("1000123456").is_err());
        assert!(Rpps::parse("1000123456a").is_err());
        assert!(Finess::parse("750000001").is_ok());
        assert!(Finess::parse("2A0000001").is_ok());
        assert!(Finess::parse("75000000").is_err());
        let id = DocId::mint(1_700_000_000_000);
        assert!(DocId::mint(1_700_000_000_001) > id, "time-ordered");
        assert_ne!(DocId::mint(1_700_000_000_000), id);
        assert_eq!(DocId::parse(&id.to_string()).ok(), Some(id));
        assert!(DocId::parse("zz").is_err());
        assert!(DocId::parse(&"g".repeat(32)).is_err());
    }

    #[test]
    fn an_ins_key_is_two_digits_and_decoding_checks_it_too() {
        // A body whose key is below 10: "0K" could be written "+K".
        let good = (0..1000)
            .map(|n| Ins::from_body(&format!("2840575123{n:03}")).expect("ins"))
            .find(|i| i.matricule().as_bytes()[13] == b'0')
            .expect("a key below 10");
        let m = good.matricule().to_string();
        let plus = format!("{}+{}", &m[..13], &m[14..]);
        assert!(Ins::parse(&plus).is_err(), "{plus}");
        assert_eq!(Ins::parse(&m).expect("as written"), good);
        for bad in [
            "../../etc/passwd",
            "\u{1b}[2J284057512",
            &format!("{}00", &m[..13]),
        ] {
            let wire = postcard::to_stdvec(&bad.to_string()).expect("encode");
            assert!(postcard::from_bytes::<Ins>(&wire).is_err(), "{bad}");
        }
        let wire = postcard::to_stdvec(&good).expect("encode");
        assert_eq!(postcard::from_bytes::<Ins>(&wire).expect("decode"), good);
    }

    #[test]
    fn an_rpps_or_finess_decoded_from_json_or_postcard_is_parsed() {
        for bad in [
            "abc",
            "",
            "1234567890",
            "123456789012",
            "../\u{1b}[31m",
            " 10000000001",
        ] {
            let json = format!("\"{bad}\"");
            assert!(serde_json::from_str::<Rpps>(&json).is_err(), "{bad}");
            let wire = postcard::to_stdvec(&bad.to_string()).expect("encode");
            assert!(postcard::from_bytes::<Rpps>(&wire).is_err(), "{bad}");
        }
        let rpps = Rpps::parse("10000000001").expect("rpps");
        let json = serde_json::to_string(&rpps).expect("encode");
        assert_eq!(json, "\"10000000001\"");
        assert_eq!(serde_json::from_str::<Rpps>(&json).expect("decode"), rpps);
        let wire = postcard::to_stdvec(&rpps).expect("encode");
        assert_eq!(postcard::from_bytes::<Rpps>(&wire).expect("decode"), rpps);
        assert!(serde_json::from_str::<Finess>("\"2a0000001\"").is_err());
        assert!(serde_json::from_str::<Finess>("\"2A0000001\"").is_ok());
    }
}
