//! The domain records of DOMAIN.md: dossiers, professionals, grants, emergency preferences,
//! the habilitation matrix and document metadata.
//!
//! Invariants: these are plain values (no I/O). Every field that can hold patient data is only
//! ever written to disk sealed (see `crypto`). Immutable document facts never change after
//! creation; the mutable part of a document lives in `merge::DocumentMeta`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clock::{Causality, VersionVector};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, InsKind, RepresentativeId, Rpps, SiteId};
use crate::time::Millis;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used on the command line and in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the name `as_str` gives.
            pub fn parse(text: &str) -> Result<Self> {
                match text.trim() {
                    $($text => Ok($name::$variant),)+
                    other => Err(Error::invalid(format!(
                        concat!("unknown ", stringify!($name), " '{}': expected one of {}"),
                        other,
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
    };
}

named_enum!(
    /// A health profession (DOMAIN §1). The last two are barred from the DMP by law (row 2).
    Profession {
        /// Physician.
        Medecin = "medecin",
        /// Pharmacist.
        Pharmacien = "pharmacien",
        /// Nurse.
        Infirmier = "infirmier",
        /// Midwife.
        SageFemme = "sage-femme",
        /// Dentist.
        ChirurgienDentiste = "chirurgien-dentiste",
        /// Physiotherapist.
        MasseurKinesitherapeute = "masseur-kinesitherapeute",
        /// An insurer's medical adviser: acts for an insurer, never allowed (DOMAIN §4 row 2).
        MedecinConseil = "medecin-conseil",
        /// An occupational physician: acts for an employer, never allowed (row 2).
        MedecinDuTravail = "medecin-du-travail",
    }
);

impl Profession {
    /// True for professions acting for an insurer or an employer (row 2 of the table).
    pub fn acts_for_insurer_or_employer(self) -> bool {
        matches!(
            self,
            Profession::MedecinConseil | Profession::MedecinDuTravail
        )
    }
}

/// A health professional registered at this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Professional {
    /// RPPS number.
    pub rpps: Rpps,
    /// Profession.
    pub profession: Profession,
    /// Specialty, for doctors (free text, e.g. "medecine-generale").
    pub specialty: Option<String>,
    /// Display name.
    pub name: Option<String>,
}

named_enum!(
    /// Administrative sex of the identity traits.
    Sex { Female = "F", Male = "M" }
);

named_enum!(
    /// Whether the identity was checked against an ID document and INSi.
    IdentityStatus { Provisional = "provisional", Qualified = "qualified" }
);

named_enum!(
    /// Who holds the dossier; minors and protected adults have legal representatives.
    HolderKind { Adult = "adult", Minor = "minor", ProtectedAdult = "protected-adult" }
);

named_enum!(
    /// Lifecycle of a dossier. Only `Active` allows any access (row 1).
    DossierStatus {
        /// Open and usable.
        Active = "active",
        /// Closed by the holder: archived on the host, purged on sites.
        Closed = "closed",
        /// Destroyed (retention ended, or purged on a site): only a tombstone is left.
        Purged = "purged",
    }
);

/// The five INS identity traits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Birth name.
    pub birth_name: String,
    /// First names, space-separated as on the ID document.
    pub first_names: String,
    /// Birth date, `YYYY-MM-DD`.
    pub birth_date: String,
    /// Sex.
    pub sex: Sex,
    /// INSEE code of the birthplace (5 characters), when known.
    pub birthplace: Option<String>,
    /// Provisional until checked.
    pub status: IdentityStatus,
}

/// Longest name (birth name, first names, a professional's name), in characters.
pub const NAME_CHARS_MAX: usize = 200;

impl Identity {
    /// Refuses traits no one has: a name empty, too long or with formatting characters
    /// (`text`), a birth date not a date Carnet takes, a birthplace not a 5-character code.
    pub fn check(&self) -> Result<()> {
        crate::time::parse_date(&self.birth_date)?;
        crate::text::required_line(&self.birth_name, "the birth name", NAME_CHARS_MAX)?;
        crate::text::required_line(&self.first_names, "the first names", NAME_CHARS_MAX)?;
        if let Some(place) = &self.birthplace {
            crate::text::code(place, "the birthplace (INSEE code)", 5)?;
        }
        Ok(())
    }
}

impl Professional {
    /// Refuses a name or specialty too long or with formatting characters (`text`); the RPPS
    /// was parsed when the value was made.
    pub fn check(&self) -> Result<()> {
        if let Some(name) = &self.name {
            crate::text::line(name, "the professional's name", NAME_CHARS_MAX)?;
        }
        if let Some(specialty) = &self.specialty {
            crate::text::line(specialty, "the specialty", NAME_CHARS_MAX)?;
        }
        Ok(())
    }
}

/// Emergency preferences of the holder (DOMAIN §4 rows 7–8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyPrefs {
    /// A centre 15 regulating doctor may read (`samu` not opposed).
    pub samu_allowed: bool,
    /// Break-glass is allowed (`btg` not opposed).
    pub btg_allowed: bool,
    /// Masked documents are readable in an emergency.
    pub masked_in_emergency: bool,
}

impl Default for EmergencyPrefs {
    /// The law's default: no opposition, masked documents stay masked.
    fn default() -> Self {
        EmergencyPrefs {
            samu_allowed: true,
            btg_allowed: true,
            masked_in_emergency: false,
        }
    }
}

/// The host-authored head of a dossier. Closure is a new head with status `Closed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DossierHead {
    /// Holder's INS.
    pub ins: Ins,
    /// Kind of the INS.
    pub ins_kind: InsKind,
    /// Identity traits.
    pub identity: Identity,
    /// Holder kind.
    pub holder: HolderKind,
    /// The legal representatives (minor or protected adult) ever recorded, in the order of
    /// their ids; one removed stays, marked ended.
    pub representatives: Vec<Representative>,
    /// Lifecycle.
    pub status: DossierStatus,
    /// Holder chose "mask every new document by default".
    pub mask_new_by_default: bool,
    /// Creation time.
    pub created_at: Millis,
    /// Closure time and reason, when closed.
    pub closure: Option<Closure>,
}

/// The age at which a minor's legal representatives lose access (DOMAIN §1, §4 row 10).
pub const AGE_OF_MAJORITY: i64 = 18;

/// A legal representative, a person the host recorded in the signed dossier head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Representative {
    /// Their id in this dossier (`R1`, …), what `--as representative:ID` names.
    pub id: RepresentativeId,
    /// Name.
    pub name: String,
    /// Relationship to the holder (e.g. mother, guardian).
    pub relationship: String,
    /// When the host recorded them.
    pub since: Millis,
    /// When the host removed them; they have no access from then on.
    pub ended: Option<Millis>,
}

impl DossierHead {
    /// The holder's kind for access decisions at `now`: a minor is an adult from the start of
    /// their 18th birthday (UTC calendar, `time::years_completed`), decided from the birth date
    /// of this head alone, whether or not the host has signed a new head since. A birth date
    /// that cannot be read counts as an adult's: the restriction wins.
    pub fn holder_at(&self, now: Millis) -> HolderKind {
        match self.holder {
            HolderKind::Minor => {
                match crate::time::years_completed(&self.identity.birth_date, now) {
                    Ok(years) if years < AGE_OF_MAJORITY => HolderKind::Minor,
                    _ => HolderKind::Adult,
                }
            }
            kind => kind,
        }
    }

    /// The representative `id`, if recorded here and not ended.
    pub fn current_representative(&self, id: RepresentativeId) -> Option<&Representative> {
        self.representatives
            .iter()
            .find(|r| r.id == id && r.ended.is_none())
    }
}

/// Why and when a dossier was closed, and whether its holder asked that it be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// Time of the closure.
    pub at: Millis,
    /// Reason given by the holder or the host.
    pub reason: String,
    /// When the holder asked that the dossier be deleted rather than archived for
    /// `RETENTION_YEARS` (DOMAIN §6: an early deletion is carried out within three months);
    /// `None`: archived until the retention ends.
    pub deletion_requested: Option<Millis>,
}

/// How long the host keeps a closed dossier archived before it may be purged (DOMAIN §6).
pub const RETENTION_YEARS: i64 = 10;

impl Closure {
    /// When the retention of a dossier closed at `at` ends: the same instant, `RETENTION_YEARS`
    /// calendar years later (UTC).
    pub fn retention_ends(&self) -> Millis {
        crate::time::add_years(self.at, RETENTION_YEARS)
    }

    /// True when the host may purge the dossier at `now`: the holder asked its deletion, or
    /// the retention has ended.
    pub fn purge_allowed(&self, now: Millis) -> bool {
        self.deletion_requested.is_some() || now >= self.retention_ends()
    }
}

named_enum!(
    /// State of a grant: a professional's right on one dossier.
    GrantState {
        /// Usable.
        Active = "active",
        /// Withdrawn by the holder.
        Revoked = "revoked",
        /// The holder blocked this professional (row 3): denies everything, even break-glass.
        Blocked = "blocked",
    }
);

/// A professional's right on a dossier, authored and signed by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Dossier.
    pub ins: Ins,
    /// Professional.
    pub rpps: Rpps,
    /// Active, revoked or blocked.
    pub state: GrantState,
    /// Why the professional has access.
    pub basis: GrantBasis,
    /// When the host issued this state.
    pub issued_at: Millis,
    /// When an active grant ends (DOMAIN §5): from this instant on, by the clock of the replica
    /// deciding, it is no longer active. `None`: until revoked.
    pub until: Option<Millis>,
}

impl Grant {
    /// An active grant with the médecin traitant's rights (row 4): the médecin traitant, or a
    /// professional given the same rights. Its end is not looked at: see `state_at`.
    pub fn treating(&self) -> bool {
        self.state == GrantState::Active
            && matches!(
                self.basis,
                GrantBasis::MedecinTraitant | GrantBasis::Treating
            )
    }

    /// This grant designates the dossier's médecin traitant (at most one per dossier, and it
    /// has no end).
    pub fn medecin_traitant(&self) -> bool {
        self.state == GrantState::Active && self.basis == GrantBasis::MedecinTraitant
    }

    /// When this active grant ended, if `now` is past its end.
    pub fn ended(&self, now: Millis) -> Option<Millis> {
        self.until
            .filter(|until| self.state == GrantState::Active && now >= *until)
    }

    /// The state in force at `now`, and since when: an active grant whose end has passed is
    /// as if revoked at its end.
    pub fn state_at(&self, now: Millis) -> (GrantState, Millis) {
        match self.ended(now) {
            Some(until) => (GrantState::Revoked, until),
            None => (self.state, self.issued_at),
        }
    }

    /// What the access decision sees of this grant at `now` (`DossierView::grant`).
    pub fn for_decision(&self, now: Millis) -> (GrantState, bool) {
        match self.ended(now) {
            Some(_) => (GrantState::Revoked, false),
            None => (self.state, self.treating()),
        }
    }
}

named_enum!(
    /// The basis of a grant.
    GrantBasis {
        /// Given the same rights as the médecin traitant by the holder (row 4).
        Treating = "treating",
        /// Member of the care team (équipe de soins) around the holder.
        CareTeam = "care-team",
        /// The holder's consent to this professional.
        Consent = "consent",
        /// The médecin traitant the holder designated: one per dossier at most (row 4).
        MedecinTraitant = "medecin-traitant",
    }
);

/// A document class code (DOMAIN §2, JDV_J57).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocClass(u8);

impl DocClass {
    /// Documents filed by the patient.
    pub const PATIENT: DocClass = DocClass(90);
    const KNOWN: [(u8, &'static str); 11] = [
        (10, "compte rendu"),
        (11, "synthèse"),
        (31, "imagerie"),
        (42, "prescription"),
        (43, "dispensation"),
        (44, "plan/protocole de soins"),
        (45, "traitement administré"),
        (52, "certificat"),
        (60, "données de remboursement"),
        (90, "document déposé par le patient"),
        (95, "document de gestion"),
    ];

    /// Parses a known class code.
    pub fn parse(text: &str) -> Result<Self> {
        let code: u8 = text.trim().parse().map_err(|_| Self::unknown(text))?;
        Self::KNOWN
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, _)| DocClass(*c))
            .ok_or_else(|| Self::unknown(text))
    }

    fn unknown(text: &str) -> Error {
        let codes: Vec<String> = Self::KNOWN.iter().map(|(c, _)| c.to_string()).collect();
        Error::invalid(format!(
            "unknown document class '{}': expected one of {}",
            text.trim(),
            codes.join(", ")
        ))
    }

    /// The numeric code.
    pub fn code(self) -> u8 {
        self.0
    }

    /// The French label.
    pub fn label(self) -> &'static str {
        Self::KNOWN
            .iter()
            .find(|(c, _)| *c == self.0)
            .map_or("?", |(_, l)| l)
    }
}

/// Confidentiality flags (DOMAIN §3, JDV_J58). Any combination.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Flags {
    /// `MASQUE_PS`: masked from professionals but the author and the médecin traitant.
    pub masque_ps: bool,
    /// `INVISIBLE_PATIENT`: hidden from the holder until the announcement.
    pub invisible_patient: bool,
    /// `INVISIBLE_REPRESENTANTS_LEGAUX`: hidden from the legal representatives.
    pub invisible_representatives: bool,
}

impl Flags {
    /// Restrictive join: a flag set on either side stays set.
    pub fn join(self, other: Flags) -> Flags {
        Flags {
            masque_ps: self.masque_ps || other.masque_ps,
            invisible_patient: self.invisible_patient || other.invisible_patient,
            invisible_representatives: self.invisible_representatives
                || other.invisible_representatives,
        }
    }

    /// The JDV_J58 codes of the flags set.
    pub fn codes(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.masque_ps {
            v.push("MASQUE_PS");
        }
        if self.invisible_patient {
            v.push("INVISIBLE_PATIENT");
        }
        if self.invisible_representatives {
            v.push("INVISIBLE_REPRESENTANTS_LEGAUX");
        }
        v
    }
}

named_enum!(
    /// Availability, ordered: on concurrent updates the higher state wins.
    Availability {
        /// Current.
        Approved = "approved",
        /// Replaced by a newer document (both are kept).
        Deprecated = "deprecated",
        /// Archived by its owner.
        Archived = "archived",
        /// Logically deleted by its author.
        Deleted = "deleted",
    }
);

/// Who wrote a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Author {
    /// A professional.
    Professional {
        /// RPPS.
        rpps: Rpps,
        /// Profession at the time of writing.
        profession: Profession,
    },
    /// The holder (class 90 uploads).
    Holder,
    /// A legal representative acting as the holder, by their id in the dossier head.
    Representative(RepresentativeId),
}

/// The immutable facts of a document, fixed at creation (XDS.b metadata as used by the DMP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentFacts {
    /// Replica-independent identifier.
    pub id: DocId,
    /// Producer-assigned unique id; never changes.
    pub unique_id: String,
    /// Dossier it belongs to.
    pub ins: Ins,
    /// Class code.
    pub class: DocClass,
    /// Type code (LOINC or French code).
    pub type_code: String,
    /// MIME type of the body.
    pub format: String,
    /// Title.
    pub title: String,
    /// Author.
    pub author: Author,
    /// Site where it was written.
    pub author_site: SiteId,
    /// Creation time.
    pub created_at: Millis,
    /// Start of the act (required).
    pub service_start: Millis,
    /// End of the act.
    pub service_end: Option<Millis>,
    /// BLAKE3 of the body plaintext.
    pub content_hash: [u8; 32],
    /// Size of the body in bytes.
    pub size: u64,
    /// For a replacement, the document it replaces.
    pub replaces: Option<DocId>,
}

/// Longest title, in characters.
pub const TITLE_CHARS_MAX: usize = 512;
/// Largest body a document written here may have (2 GiB), whether `carnet` opens the store
/// or calls the daemon.
pub const BODY_BYTES_MAX: u64 = 2 << 30;
/// Longest type code, in bytes.
pub const TYPE_CODE_MAX: usize = 64;
/// Longest MIME type, in characters.
pub const FORMAT_CHARS_MAX: usize = 127;
/// Longest producer's unique id, in characters.
pub const UNIQUE_ID_CHARS_MAX: usize = 256;

impl DocumentFacts {
    /// Refuses facts no writer of Carnet makes, whoever sends them (`text`): a title, type,
    /// format or unique id empty, too long or with formatting characters, a date outside the
    /// years Carnet takes, an act ending before it starts.
    pub fn check(&self) -> Result<()> {
        crate::text::required_line(&self.title, "the title", TITLE_CHARS_MAX)?;
        crate::text::code(&self.type_code, "the type code", TYPE_CODE_MAX)?;
        crate::text::required_line(&self.format, "the format", FORMAT_CHARS_MAX)?;
        crate::text::required_line(&self.unique_id, "the unique id", UNIQUE_ID_CHARS_MAX)?;
        crate::time::check_plausible(self.created_at, "the creation time")?;
        crate::time::check_plausible(self.service_start, "the service start")?;
        if let Some(end) = self.service_end {
            crate::time::check_plausible(end, "the service end")?;
            if end < self.service_start {
                return Err(Error::invalid("the service end is before its start"));
            }
        }
        Ok(())
    }
}

/// The mutable state of a document: what masking, deletion and replacement change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocState {
    /// Confidentiality flags.
    pub flags: Flags,
    /// Availability.
    pub availability: Option<Availability>,
    /// Documents that replace this one, each with the version vector of the change that
    /// recorded it (`DocumentMeta::next_clock`). Two replacements are a conflict when neither
    /// change had seen the other (`has_replacement_conflict`); one made after another is not.
    /// Encoded as a list of pairs, so formats whose map keys are strings (JSON) carry it.
    #[serde(with = "successor_pairs")]
    pub successors: BTreeMap<DocId, VersionVector>,
    /// Resolutions of a conflict: the replacement a person chose to keep, with the version
    /// vector of the change that recorded the choice. A resolution ends the conflict between
    /// the replacements its change had seen; of concurrent resolutions, the one keeping the
    /// greatest id stands (`kept`), and all are shown.
    #[serde(with = "successor_pairs")]
    pub resolutions: BTreeMap<DocId, VersionVector>,
}

/// `DocState::successors` as a sequence of `(id, clock)` pairs.
mod successor_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::clock::VersionVector;
    use crate::ids::DocId;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<DocId, VersionVector>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<DocId, VersionVector>, D::Error> {
        let pairs = Vec::<(DocId, VersionVector)>::deserialize(deserializer)?;
        let mut map = BTreeMap::new();
        for (id, clock) in pairs {
            if map.insert(id, clock).is_some() {
                return Err(serde::de::Error::custom("a replacement listed twice"));
            }
        }
        Ok(map)
    }
}

impl DocState {
    /// Availability, `Approved` when never changed.
    pub fn availability(&self) -> Availability {
        self.availability.unwrap_or(Availability::Approved)
    }

    /// Join of two concurrent states: restrictive flags win, the higher availability wins,
    /// successors are united. Commutative, associative and idempotent.
    pub fn join(&self, other: &DocState) -> DocState {
        DocState {
            flags: self.flags.join(other.flags),
            availability: self.availability.max(other.availability),
            successors: join_successors(&self.successors, &other.successors),
            resolutions: join_successors(&self.resolutions, &other.resolutions),
        }
    }

    /// True when two of the replacements were recorded by changes that had not seen each
    /// other (concurrent version vectors, or a single one claimed for two): a conflict to show
    /// to people. Replacements made one after the other, wherever, are not.
    /// A resolution recorded after both replacements (`resolutions`) ends their conflict.
    pub fn has_replacement_conflict(&self) -> bool {
        let clocks: Vec<&VersionVector> = self.successors.values().collect();
        let resolved = |a: &VersionVector, b: &VersionVector| {
            self.resolutions
                .values()
                .any(|r| r.compare(a) == Causality::After && r.compare(b) == Causality::After)
        };
        clocks.iter().enumerate().any(|(i, a)| {
            clocks[i + 1..].iter().any(|b| {
                matches!(a.compare(b), Causality::Concurrent | Causality::Equal) && !resolved(a, b)
            })
        })
    }

    /// The replacement kept by the standing resolution: of the resolutions no other one was
    /// recorded after, the one keeping the greatest id (every replica picks the same).
    pub fn kept(&self) -> Option<DocId> {
        self.resolutions
            .iter()
            .filter(|(_, r)| {
                !self
                    .resolutions
                    .values()
                    .any(|o| o.compare(r) == Causality::After)
            })
            .map(|(id, _)| *id)
            .max()
    }
}

/// The union of two successor maps; a successor in both keeps the merge of its two clocks
/// (the same change everywhere, so the same clock, unless a peer forged one).
fn join_successors(
    a: &BTreeMap<DocId, VersionVector>,
    b: &BTreeMap<DocId, VersionVector>,
) -> BTreeMap<DocId, VersionVector> {
    let mut out = a.clone();
    for (id, clock) in b {
        out.entry(*id)
            .and_modify(|c| c.merge(clock))
            .or_insert_with(|| clock.clone());
    }
    out
}

/// Which type codes a profession may read (the habilitation matrix, DOMAIN §4), versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HabilitationMatrix {
    /// Version; a site keeps the highest it has verified.
    pub version: u32,
    /// Per profession, the rule. A profession absent from the map reads nothing.
    pub rules: BTreeMap<Profession, TypeRule>,
}

/// A profession's access to type codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeRule {
    /// Every type code except these.
    AllExcept(BTreeSet<String>),
    /// Only these type codes.
    Only(BTreeSet<String>),
}

/// Type code of the residence certificate, the one document doctors may not read.
pub const RESIDENCE_CERTIFICATE: &str = "CERT_RESIDENCE";

impl HabilitationMatrix {
    /// The documented defaults (README "Habilitation matrix"): doctors everything but the
    /// residence certificate; other professions the subsets their practice needs.
    pub fn default_matrix() -> Self {
        let set = |codes: &[&str]| codes.iter().map(|c| c.to_string()).collect::<BTreeSet<_>>();
        let mut rules = BTreeMap::new();
        rules.insert(
            Profession::Medecin,
            TypeRule::AllExcept(set(&[RESIDENCE_CERTIFICATE])),
        );
        // Pharmacists: what dispensing safely needs.
        rules.insert(
            Profession::Pharmacien,
            TypeRule::Only(set(&[
                "57833-6", "60593-1", "11369-6", "60591-5", "11502-2", "11490-0",
            ])),
        );
        // Nurses: care plans and their inputs.
        rules.insert(
            Profession::Infirmier,
            TypeRule::Only(set(&[
                "57833-6", "60593-1", "11369-6", "60591-5", "11502-2", "11490-0", "34112-3",
                "15507-7", "11488-4", "EXPPAT_3",
            ])),
        );
        // Midwives: pregnancy follow-up needs most clinical reports.
        rules.insert(
            Profession::SageFemme,
            TypeRule::Only(set(&[
                "57833-6", "60593-1", "11369-6", "60591-5", "11502-2", "11490-0", "34112-3",
                "15507-7", "11488-4", "18748-4", "EXPPAT_3",
            ])),
        );
        rules.insert(
            Profession::ChirurgienDentiste,
            TypeRule::Only(set(&[
                "57833-6", "60593-1", "11369-6", "60591-5", "11502-2", "18748-4",
            ])),
        );
        rules.insert(
            Profession::MasseurKinesitherapeute,
            TypeRule::Only(set(&["57833-6", "60591-5", "18748-4", "11490-0"])),
        );
        HabilitationMatrix { version: 1, rules }
    }

    /// True when `profession` may read documents of `type_code`.
    pub fn allows(&self, profession: Profession, type_code: &str) -> bool {
        match self.rules.get(&profession) {
            Some(TypeRule::AllExcept(except)) => !except.contains(type_code),
            Some(TypeRule::Only(only)) => only.contains(type_code),
            None => false,
        }
    }
}

/// A professional's or the holder's identity as an actor of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Actor {
    /// A professional, by RPPS (must be registered at this site to be identified).
    Professional(Rpps),
    /// The holder of the dossier.
    Holder,
    /// A legal representative of the holder, by their id in the dossier head.
    Representative(RepresentativeId),
    /// The replica itself or the host operator (administrative actions).
    System,
}

named_enum!(
    /// How a read is made (DOMAIN §6 access modes).
    AccessMode {
        /// Ordinary access.
        Normal = "normal",
        /// Break-glass: the patient cannot consent.
        BreakGlass = "bris_de_glace",
        /// Centre 15 regulating doctor.
        Centre15 = "centre_15",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_defaults() {
        let m = HabilitationMatrix::default_matrix();
        assert!(m.allows(Profession::Medecin, "11488-4"));
        assert!(!m.allows(Profession::Medecin, RESIDENCE_CERTIFICATE));
        assert!(m.allows(Profession::Pharmacien, "57833-6"));
        assert!(!m.allows(Profession::Pharmacien, "11488-4"));
        assert!(!m.allows(Profession::MedecinConseil, "57833-6"));
    }

    #[test]
    fn enums_parse_their_names() {
        for p in Profession::ALL {
            assert_eq!(Profession::parse(p.as_str()).ok(), Some(*p));
        }
        assert!(Profession::parse("astrologue").is_err());
        assert_eq!(DocClass::parse("90").ok(), Some(DocClass::PATIENT));
        assert!(DocClass::parse("12").is_err());
        assert!(Availability::Deleted > Availability::Approved);
    }
}
