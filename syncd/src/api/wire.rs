//! The local API's JSON contract: the shapes `POST /v1/call` takes and answers, owned here and
//! converted explicitly from and into the store's types, so that a change to a stored struct
//! never changes the API silently (the golden test `wire_golden` fails first).
//!
//! Conventions, for callers in any language:
//! - a document id is 32 lower-case hex digits, a key pin or content hash 64; an INS is its
//!   15-character matricule, an RPPS its 11 digits, a representative `R1`, `R2`, …; a site is
//!   named by its number, always in a field `site_id` (or `…_site_id`);
//! - a time is an RFC 3339 string in UTC with milliseconds (`2026-12-05T06:00:00.000Z`); any
//!   RFC 3339 offset is accepted on input; a duration is a number with its unit in its name
//!   (`lease_ms`, `days`);
//! - an enum is a lower-case string, the word the CLI takes and prints (`"medecin"`,
//!   `"care-team"`, `"bris_de_glace"`); a record with variants carries a `"kind"`;
//! - bytes (document bodies, bundles, files) are standard base64;
//! - one name per concept, the CLI's `--json` included: `type_code`, `created_at`,
//!   `site_id`, `link`.
//!
//! Invariant: decoding checks every id, time and word as the command line does; a bad one is
//! an error naming it (status 400), never a panic.

use std::collections::BTreeMap;
use std::path::PathBuf;

use carnet_store::audit::{AuditEntry, ChainedEntry, TraceAction, TraceActor};
use carnet_store::clock::VersionVector;
use carnet_store::ids::{self, InsKind, RepresentativeId, SiteId};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{
    self, AccessMode, Availability, DocClass, DocState, DocumentFacts, DossierHead, DossierStatus,
    GrantBasis, GrantState, HolderKind, IdentityStatus, Profession, Sex,
};
use carnet_store::policy::Action;
use carnet_store::replica::{self as store, Role};
use carnet_store::time::{Millis, format_rfc3339, parse_rfc3339};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::{Request as Call, Response as Answer};

type StoreResult<T> = carnet_store::Result<T>;

fn invalid(message: impl Into<String>) -> carnet_store::Error {
    carnet_store::Error::Invalid(message.into())
}

/// A value written as text on the wire, parsed back with the check its type makes.
macro_rules! text_scalar {
    ($(#[$m:meta])* $name:ident($inner:ty), $show:expr, $parse:expr, $schema:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub $inner);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let show: fn(&$inner) -> String = $show;
                s.serialize_str(&show(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let parse: fn(&str) -> StoreResult<$inner> = $parse;
                let text = String::deserialize(d)?;
                parse(&text).map($name).map_err(D::Error::custom)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                schema($schema)
            }
        }
    };
}

/// A JSON Schema written as JSON.
fn schema(value: serde_json::Value) -> Schema {
    match value {
        serde_json::Value::Object(map) => Schema::from(map),
        _ => Schema::from(true),
    }
}

text_scalar!(
    /// A document id: 32 lower-case hex digits.
    DocId(ids::DocId),
    |d| d.to_string(),
    ids::DocId::parse,
    serde_json::json!({"type": "string", "pattern": "^[0-9a-fA-F]{32}$",
        "description": "A document id: 32 hex digits (written lower-case)."})
);
text_scalar!(
    /// An INS: the 15-character matricule (patient data).
    Ins(ids::Ins),
    |i| i.matricule().to_string(),
    ids::Ins::parse,
    serde_json::json!({"type": "string", "pattern": "^[0-9]{6}[0-9ABab][0-9]{8}$",
        "description": "An INS: the 15-character matricule, its key checked (patient data)."})
);
text_scalar!(
    /// An RPPS: 11 digits.
    Rpps(ids::Rpps),
    |r| r.as_str().to_string(),
    ids::Rpps::parse,
    serde_json::json!({"type": "string", "pattern": "^[0-9]{11}$",
        "description": "An RPPS: 11 digits."})
);
text_scalar!(
    /// A legal representative of a dossier: `R1`, `R2`, …
    RepId(RepresentativeId),
    |r| r.to_string(),
    RepresentativeId::parse,
    serde_json::json!({"type": "string", "pattern": "^[Rr][0-9]{1,5}$",
        "description": "A legal representative of a dossier: R1, R2, …"})
);
text_scalar!(
    /// An instant: RFC 3339, written in UTC with milliseconds.
    Time(Millis),
    |t| format_rfc3339(*t),
    parse_rfc3339,
    serde_json::json!({"type": "string", "format": "date-time",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$",
        "description": "An instant, RFC 3339; written in UTC with milliseconds."})
);
text_scalar!(
    /// 32 bytes (a key pin, a hash): 64 lower-case hex digits.
    Hex32([u8; 32]),
    |b| hex(b),
    parse_hex32,
    serde_json::json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
        "description": "32 bytes (a key pin, a hash): 64 hex digits (written lower-case)."})
);

/// `value` as JSON (`carnet --json` prints the API's shapes with it).
pub fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> StoreResult<[u8; 32]> {
    let t = text.trim();
    let bad = || invalid(format!("'{t}' is not 64 hex digits"));
    if t.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(t.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// An enum the wire writes as its word.
pub trait Word: Sized + Copy {
    /// The word.
    fn word(self) -> &'static str;
    /// The value a word names, or an error listing the words.
    fn from_word(text: &str) -> StoreResult<Self>;
    /// Every value.
    fn all() -> Vec<Self>;
}

macro_rules! words {
    ($($t:ty),*) => {$(
        impl Word for $t {
            fn word(self) -> &'static str {
                self.as_str()
            }
            fn from_word(text: &str) -> StoreResult<Self> {
                <$t>::parse(text)
            }
            fn all() -> Vec<Self> {
                <$t>::ALL.to_vec()
            }
        }
    )*};
}

words!(
    Profession,
    Sex,
    IdentityStatus,
    HolderKind,
    DossierStatus,
    GrantState,
    GrantBasis,
    Availability,
    AccessMode
);

impl Word for InsKind {
    fn word(self) -> &'static str {
        self.as_str()
    }
    fn from_word(text: &str) -> StoreResult<Self> {
        InsKind::parse(text)
    }
    fn all() -> Vec<Self> {
        vec![
            InsKind::Nir,
            InsKind::Nia,
            InsKind::TestNir,
            InsKind::DemoNir,
        ]
    }
}

/// Every action, for parsing its word.
const ACTIONS: [Action; 12] = [
    Action::Read,
    Action::List,
    Action::Write,
    Action::Replace,
    Action::Mask,
    Action::Unmask,
    Action::HideFromPatient,
    Action::HideFromRepresentatives,
    Action::Delete,
    Action::Export,
    Action::ShowDossier,
    Action::ReadTrace,
];

impl Word for Action {
    fn word(self) -> &'static str {
        self.as_str()
    }
    fn all() -> Vec<Self> {
        ACTIONS.to_vec()
    }
    fn from_word(text: &str) -> StoreResult<Self> {
        ACTIONS
            .into_iter()
            .find(|a| a.as_str() == text.trim())
            .ok_or_else(|| {
                let all: Vec<&str> = ACTIONS.iter().map(|a| a.as_str()).collect();
                invalid(format!(
                    "unknown action '{}': expected one of {}",
                    text.trim(),
                    all.join(", ")
                ))
            })
    }
}

impl Word for Role {
    fn word(self) -> &'static str {
        self.as_str()
    }
    fn all() -> Vec<Self> {
        vec![Role::Host, Role::Site]
    }
    fn from_word(text: &str) -> StoreResult<Self> {
        match text.trim() {
            "host" => Ok(Role::Host),
            "site" => Ok(Role::Site),
            other => Err(invalid(format!(
                "unknown role '{other}': expected host or site"
            ))),
        }
    }
}

/// An enum as its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name<T>(pub T);

impl<T: Word> Serialize for Name<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.word())
    }
}

impl<'de, T: Word> Deserialize<'de> for Name<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        T::from_word(&text).map(Name).map_err(D::Error::custom)
    }
}

impl<T: Word> JsonSchema for Name<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        std::any::type_name::<T>().into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let words: Vec<&str> = T::all().into_iter().map(Word::word).collect();
        schema(serde_json::json!({"type": "string", "enum": words}))
    }
}

/// Bytes as standard base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base64(#[serde(with = "carnet_store::codec::bytes")] pub Vec<u8>);

impl JsonSchema for Base64 {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Base64".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schema(
            serde_json::json!({"type": "string", "contentEncoding": "base64",
            "description": "Bytes, standard base64."}),
        )
    }
}

/// Secret bytes (a document body) as standard base64, wiped on drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBase64(
    #[serde(with = "carnet_store::codec::secret_bytes")] pub Zeroizing<Vec<u8>>,
);

impl JsonSchema for SecretBase64 {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Base64".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        Base64::json_schema(generator)
    }
}

fn ins(i: &ids::Ins) -> Ins {
    Ins(i.clone())
}

fn time_opt(t: Option<Millis>) -> Option<Time> {
    t.map(Time)
}

fn untime(t: Option<Time>) -> Option<Millis> {
    t.map(|t| t.0)
}

// ---- Who acts ----------------------------------------------------------------------------

/// Who acts: a professional, the holder, one of their legal representatives, or the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// A professional, by RPPS.
    Professional { rpps: Rpps },
    /// The dossier's holder.
    Holder,
    /// A legal representative of the holder.
    Representative { id: RepId },
    /// The system itself.
    System,
}

impl From<&model::Actor> for Actor {
    fn from(a: &model::Actor) -> Self {
        match a {
            model::Actor::Professional(r) => Actor::Professional {
                rpps: Rpps(r.clone()),
            },
            model::Actor::Holder => Actor::Holder,
            model::Actor::Representative(id) => Actor::Representative { id: RepId(*id) },
            model::Actor::System => Actor::System,
        }
    }
}

impl From<Actor> for model::Actor {
    fn from(a: Actor) -> Self {
        match a {
            Actor::Professional { rpps } => model::Actor::Professional(rpps.0),
            Actor::Holder => model::Actor::Holder,
            Actor::Representative { id } => model::Actor::Representative(id.0),
            Actor::System => model::Actor::System,
        }
    }
}

fn actor_opt(a: &Option<model::Actor>) -> Option<Actor> {
    a.as_ref().map(Actor::from)
}

/// Who wrote a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Author {
    /// A professional.
    Professional {
        rpps: Rpps,
        profession: Name<Profession>,
    },
    /// The holder.
    Holder,
    /// A legal representative of the holder.
    Representative { id: RepId },
}

impl From<&model::Author> for Author {
    fn from(a: &model::Author) -> Self {
        match a {
            model::Author::Professional { rpps, profession } => Author::Professional {
                rpps: Rpps(rpps.clone()),
                profession: Name(*profession),
            },
            model::Author::Holder => Author::Holder,
            model::Author::Representative(id) => Author::Representative { id: RepId(*id) },
        }
    }
}

impl From<Author> for model::Author {
    fn from(a: Author) -> Self {
        match a {
            Author::Professional { rpps, profession } => model::Author::Professional {
                rpps: rpps.0,
                profession: profession.0,
            },
            Author::Holder => model::Author::Holder,
            Author::Representative { id } => model::Author::Representative(id.0),
        }
    }
}

/// A professional registered at a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Professional {
    pub rpps: Rpps,
    pub profession: Name<Profession>,
    #[serde(default)]
    pub specialty: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl From<&model::Professional> for Professional {
    fn from(p: &model::Professional) -> Self {
        Professional {
            rpps: Rpps(p.rpps.clone()),
            profession: Name(p.profession),
            specialty: p.specialty.clone(),
            name: p.name.clone(),
        }
    }
}

impl From<Professional> for model::Professional {
    fn from(p: Professional) -> Self {
        model::Professional {
            rpps: p.rpps.0,
            profession: p.profession.0,
            specialty: p.specialty,
            name: p.name,
        }
    }
}

// ---- Dossiers ----------------------------------------------------------------------------

/// The holder's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub birth_name: String,
    pub first_names: String,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    pub sex: Name<Sex>,
    #[serde(default)]
    pub birthplace: Option<String>,
    pub status: Name<IdentityStatus>,
}

impl From<&model::Identity> for Identity {
    fn from(i: &model::Identity) -> Self {
        Identity {
            birth_name: i.birth_name.clone(),
            first_names: i.first_names.clone(),
            birth_date: i.birth_date.clone(),
            sex: Name(i.sex),
            birthplace: i.birthplace.clone(),
            status: Name(i.status),
        }
    }
}

impl From<Identity> for model::Identity {
    fn from(i: Identity) -> Self {
        model::Identity {
            birth_name: i.birth_name,
            first_names: i.first_names,
            birth_date: i.birth_date,
            sex: i.sex.0,
            birthplace: i.birthplace,
            status: i.status.0,
        }
    }
}

/// A legal representative to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRepresentative {
    pub name: String,
    pub relationship: String,
}

impl From<&store::NewRepresentative> for NewRepresentative {
    fn from(r: &store::NewRepresentative) -> Self {
        NewRepresentative {
            name: r.name.clone(),
            relationship: r.relationship.clone(),
        }
    }
}

impl From<NewRepresentative> for store::NewRepresentative {
    fn from(r: NewRepresentative) -> Self {
        store::NewRepresentative {
            name: r.name,
            relationship: r.relationship,
        }
    }
}

/// A dossier to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDossier {
    pub ins: Ins,
    pub ins_kind: Name<InsKind>,
    pub identity: Identity,
    pub holder: Name<HolderKind>,
    #[serde(default)]
    pub representatives: Vec<NewRepresentative>,
    #[serde(default)]
    pub mask_new_by_default: bool,
}

impl From<&store::NewDossier> for NewDossier {
    fn from(d: &store::NewDossier) -> Self {
        NewDossier {
            ins: ins(&d.ins),
            ins_kind: Name(d.ins_kind),
            identity: (&d.identity).into(),
            holder: Name(d.holder),
            representatives: d.representatives.iter().map(Into::into).collect(),
            mask_new_by_default: d.mask_new_by_default,
        }
    }
}

impl From<NewDossier> for store::NewDossier {
    fn from(d: NewDossier) -> Self {
        store::NewDossier {
            ins: d.ins.0,
            ins_kind: d.ins_kind.0,
            identity: d.identity.into(),
            holder: d.holder.0,
            representatives: d.representatives.into_iter().map(Into::into).collect(),
            mask_new_by_default: d.mask_new_by_default,
        }
    }
}

/// A legal representative as the dossier's head records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Representative {
    pub id: RepId,
    pub name: String,
    pub relationship: String,
    pub since: Time,
    pub ended: Option<Time>,
}

/// A closed dossier's closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Closure {
    pub at: Time,
    pub reason: String,
    /// When the holder asked its deletion, if they did.
    pub deletion_requested: Option<Time>,
}

/// A dossier's signed head: who the holder is and the dossier's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Head {
    pub ins: Ins,
    pub ins_kind: Name<InsKind>,
    pub identity: Identity,
    pub holder: Name<HolderKind>,
    pub representatives: Vec<Representative>,
    pub status: Name<DossierStatus>,
    pub mask_new_by_default: bool,
    pub created_at: Time,
    pub closure: Option<Closure>,
}

impl From<&DossierHead> for Head {
    fn from(h: &DossierHead) -> Self {
        Head {
            ins: ins(&h.ins),
            ins_kind: Name(h.ins_kind),
            identity: (&h.identity).into(),
            holder: Name(h.holder),
            representatives: h
                .representatives
                .iter()
                .map(|r| Representative {
                    id: RepId(r.id),
                    name: r.name.clone(),
                    relationship: r.relationship.clone(),
                    since: Time(r.since),
                    ended: time_opt(r.ended),
                })
                .collect(),
            status: Name(h.status),
            mask_new_by_default: h.mask_new_by_default,
            created_at: Time(h.created_at),
            closure: h.closure.as_ref().map(|c| Closure {
                at: Time(c.at),
                reason: c.reason.clone(),
                deletion_requested: time_opt(c.deletion_requested),
            }),
        }
    }
}

impl From<Head> for DossierHead {
    fn from(h: Head) -> Self {
        DossierHead {
            ins: h.ins.0,
            ins_kind: h.ins_kind.0,
            identity: h.identity.into(),
            holder: h.holder.0,
            representatives: h
                .representatives
                .into_iter()
                .map(|r| model::Representative {
                    id: r.id.0,
                    name: r.name,
                    relationship: r.relationship,
                    since: r.since.0,
                    ended: untime(r.ended),
                })
                .collect(),
            status: h.status.0,
            mask_new_by_default: h.mask_new_by_default,
            created_at: h.created_at.0,
            closure: h.closure.map(|c| model::Closure {
                at: c.at.0,
                reason: c.reason,
                deletion_requested: untime(c.deletion_requested),
            }),
        }
    }
}

/// A dossier's emergency preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmergencyPrefs {
    pub samu_allowed: bool,
    pub btg_allowed: bool,
    pub masked_in_emergency: bool,
}

impl From<model::EmergencyPrefs> for EmergencyPrefs {
    fn from(e: model::EmergencyPrefs) -> Self {
        EmergencyPrefs {
            samu_allowed: e.samu_allowed,
            btg_allowed: e.btg_allowed,
            masked_in_emergency: e.masked_in_emergency,
        }
    }
}

impl From<EmergencyPrefs> for model::EmergencyPrefs {
    fn from(e: EmergencyPrefs) -> Self {
        model::EmergencyPrefs {
            samu_allowed: e.samu_allowed,
            btg_allowed: e.btg_allowed,
            masked_in_emergency: e.masked_in_emergency,
        }
    }
}

/// A grant, a revocation or a block, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Grant {
    pub ins: Ins,
    pub rpps: Rpps,
    pub state: Name<GrantState>,
    pub basis: Name<GrantBasis>,
    pub issued_at: Time,
    /// When it ends, if it does.
    pub until: Option<Time>,
}

impl From<&model::Grant> for Grant {
    fn from(g: &model::Grant) -> Self {
        Grant {
            ins: ins(&g.ins),
            rpps: Rpps(g.rpps.clone()),
            state: Name(g.state),
            basis: Name(g.basis),
            issued_at: Time(g.issued_at),
            until: time_opt(g.until),
        }
    }
}

impl From<Grant> for model::Grant {
    fn from(g: Grant) -> Self {
        model::Grant {
            ins: g.ins.0,
            rpps: g.rpps.0,
            state: g.state.0,
            basis: g.basis.0,
            issued_at: g.issued_at.0,
            until: untime(g.until),
        }
    }
}

/// A site's receipt of a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PurgeReceipt {
    pub site_id: u32,
    pub at: Time,
    pub cause_seq: u64,
}

/// A dossier opened at this site, as it stands here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalDossier {
    pub creator: Actor,
    /// Changes held back until the identity is qualified.
    pub held: usize,
}

/// One dossier as the caller may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Dossier {
    /// The signed head's fields (`ins`, `identity`, `status`, `closure`…), inline.
    #[serde(flatten)]
    pub head: Head,
    pub head_seq: u64,
    pub emergency: EmergencyPrefs,
    pub grants: Vec<Grant>,
    /// How many documents it holds.
    pub documents: usize,
    pub purge_receipts: Vec<PurgeReceipt>,
    pub local: Option<LocalDossier>,
}

impl From<&store::DossierInfo> for Dossier {
    fn from(d: &store::DossierInfo) -> Self {
        Dossier {
            head: (&d.head).into(),
            head_seq: d.head_seq,
            emergency: d.emergency.into(),
            grants: d.grants.iter().map(Into::into).collect(),
            documents: d.documents,
            purge_receipts: d
                .purge_receipts
                .iter()
                .map(|(site, r)| PurgeReceipt {
                    site_id: site.0,
                    at: Time(r.at),
                    cause_seq: r.cause_seq,
                })
                .collect(),
            local: d.local.as_ref().map(|l| LocalDossier {
                creator: (&l.creator).into(),
                held: l.held,
            }),
        }
    }
}

impl From<Dossier> for store::DossierInfo {
    fn from(d: Dossier) -> Self {
        store::DossierInfo {
            head: d.head.into(),
            head_seq: d.head_seq,
            emergency: d.emergency.into(),
            grants: d.grants.into_iter().map(Into::into).collect(),
            documents: d.documents,
            purge_receipts: d
                .purge_receipts
                .into_iter()
                .map(|r| {
                    (
                        SiteId(r.site_id),
                        store::PurgeReceipt {
                            at: r.at.0,
                            cause_seq: r.cause_seq,
                        },
                    )
                })
                .collect(),
            local: d.local.map(|l| store::LocalDossierState {
                creator: l.creator.into(),
                held: l.held,
            }),
        }
    }
}

// ---- Documents ---------------------------------------------------------------------------

/// A document to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDocument {
    /// The class code (`10`, `11`, … `95`).
    pub class: u8,
    pub type_code: String,
    pub title: String,
    pub format: String,
    /// The body, when it travels inside the call (empty with `upload`).
    #[serde(default)]
    pub body: Base64,
    /// Instead of `body`: the token `POST /v1/bodies` answered for it (a body of any size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    #[serde(default)]
    pub unique_id: Option<String>,
    #[serde(default)]
    pub service_start: Option<Time>,
    #[serde(default)]
    pub service_end: Option<Time>,
}

impl From<&store::NewDocument> for NewDocument {
    fn from(d: &store::NewDocument) -> Self {
        NewDocument {
            class: d.class.code(),
            type_code: d.type_code.clone(),
            title: d.title.clone(),
            format: d.format.clone(),
            body: Base64(d.body.clone()),
            upload: None,
            unique_id: d.unique_id.clone(),
            service_start: time_opt(d.service_start),
            service_end: time_opt(d.service_end),
        }
    }
}

impl TryFrom<NewDocument> for store::NewDocument {
    type Error = carnet_store::Error;

    fn try_from(d: NewDocument) -> StoreResult<Self> {
        if let Some(token) = d.upload {
            return Err(not_held(&token));
        }
        Ok(store::NewDocument {
            class: DocClass::parse(&d.class.to_string())?,
            type_code: d.type_code,
            title: d.title,
            format: d.format,
            body: d.body.0,
            unique_id: d.unique_id,
            service_start: untime(d.service_start),
            service_end: untime(d.service_end),
        })
    }
}

/// A document's confidentiality flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Flags {
    pub masque_ps: bool,
    pub invisible_patient: bool,
    pub invisible_representatives: bool,
}

/// A replacement, or a resolution of concurrent ones, and the version vector it was recorded
/// at (site id → counter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Successor {
    pub id: DocId,
    pub clock: BTreeMap<u32, u64>,
}

/// One version of a document's state, for replicas that merge them: the fields of `Document`
/// above `versions` are their join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Version {
    /// Site id → counter.
    pub clock: BTreeMap<u32, u64>,
    pub flags: Flags,
    pub availability: Option<Name<Availability>>,
    pub successors: Vec<Successor>,
    pub resolutions: Vec<Successor>,
}

fn clock(v: &VersionVector) -> BTreeMap<u32, u64> {
    v.iter().map(|(s, n)| (s.0, n)).collect()
}

fn unclock(c: BTreeMap<u32, u64>) -> VersionVector {
    c.into_iter().map(|(s, n)| (SiteId(s), n)).collect()
}

fn successors(m: &BTreeMap<ids::DocId, VersionVector>) -> Vec<Successor> {
    m.iter()
        .map(|(id, v)| Successor {
            id: DocId(*id),
            clock: clock(v),
        })
        .collect()
}

fn unsuccessors(list: Vec<Successor>) -> StoreResult<BTreeMap<ids::DocId, VersionVector>> {
    let mut map = BTreeMap::new();
    for s in list {
        if map.insert(s.id.0, unclock(s.clock)).is_some() {
            return Err(invalid(format!("document {} listed twice", s.id.0)));
        }
    }
    Ok(map)
}

/// A document's metadata: its facts, its state as users see it, and its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Document {
    pub id: DocId,
    pub unique_id: String,
    pub ins: Ins,
    /// The class code.
    pub class: u8,
    pub type_code: String,
    pub format: String,
    pub title: String,
    pub author: Author,
    /// The site it was written at.
    pub site_id: u32,
    pub created_at: Time,
    pub service_start: Time,
    pub service_end: Option<Time>,
    pub content_hash: Hex32,
    pub size: u64,
    pub replaces: Option<DocId>,
    /// Confidentiality codes (`MASQUE_PS`, `INVISIBLE_PATIENT`,
    /// `INVISIBLE_REPRESENTANTS_LEGAUX`).
    pub confidentiality: Vec<String>,
    pub availability: Name<Availability>,
    pub replaced_by: Vec<DocId>,
    /// Concurrent replacements, none kept yet.
    pub conflict: bool,
    /// The replacement a resolution kept.
    pub kept: Option<DocId>,
    /// The replacements resolutions kept, each once.
    pub resolutions: Vec<DocId>,
    pub versions: Vec<Version>,
}

impl From<&DocumentMeta> for Document {
    fn from(m: &DocumentMeta) -> Self {
        let f = &m.facts;
        let s = m.state();
        Document {
            id: DocId(f.id),
            unique_id: f.unique_id.clone(),
            ins: ins(&f.ins),
            class: f.class.code(),
            type_code: f.type_code.clone(),
            format: f.format.clone(),
            title: f.title.clone(),
            author: (&f.author).into(),
            site_id: f.author_site.0,
            created_at: Time(f.created_at),
            service_start: Time(f.service_start),
            service_end: time_opt(f.service_end),
            content_hash: Hex32(f.content_hash),
            size: f.size,
            replaces: f.replaces.map(DocId),
            confidentiality: s.flags.codes().into_iter().map(String::from).collect(),
            availability: Name(s.availability()),
            replaced_by: s.successors.keys().copied().map(DocId).collect(),
            conflict: m.has_replacement_conflict(),
            kept: s.kept().map(DocId),
            resolutions: s.resolutions.keys().copied().map(DocId).collect(),
            versions: m
                .versions()
                .iter()
                .map(|(v, st)| Version {
                    clock: clock(v),
                    flags: Flags {
                        masque_ps: st.flags.masque_ps,
                        invisible_patient: st.flags.invisible_patient,
                        invisible_representatives: st.flags.invisible_representatives,
                    },
                    availability: st.availability.map(Name),
                    successors: successors(&st.successors),
                    resolutions: successors(&st.resolutions),
                })
                .collect(),
        }
    }
}

impl TryFrom<Document> for DocumentMeta {
    type Error = carnet_store::Error;

    fn try_from(d: Document) -> StoreResult<Self> {
        let facts = DocumentFacts {
            id: d.id.0,
            unique_id: d.unique_id,
            ins: d.ins.0,
            class: DocClass::parse(&d.class.to_string())?,
            type_code: d.type_code,
            format: d.format,
            title: d.title,
            author: d.author.into(),
            author_site: SiteId(d.site_id),
            created_at: d.created_at.0,
            service_start: d.service_start.0,
            service_end: untime(d.service_end),
            content_hash: d.content_hash.0,
            size: d.size,
            replaces: d.replaces.map(|r| r.0),
        };
        let versions = d
            .versions
            .into_iter()
            .map(|v| {
                Ok((
                    unclock(v.clock),
                    DocState {
                        flags: model::Flags {
                            masque_ps: v.flags.masque_ps,
                            invisible_patient: v.flags.invisible_patient,
                            invisible_representatives: v.flags.invisible_representatives,
                        },
                        availability: v.availability.map(|a| a.0),
                        successors: unsuccessors(v.successors)?,
                        resolutions: unsuccessors(v.resolutions)?,
                    },
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        DocumentMeta::from_versions(facts, versions).ok_or_else(|| {
            invalid("a document needs at least one version, each with plausible counters")
        })
    }
}

/// An audited read: the document, its body, and the rule that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Read {
    pub document: Document,
    pub body: SecretBase64,
    pub rule: u8,
}

/// A document with its body, in the holder's copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExportedDocument {
    pub document: Document,
    pub body: SecretBase64,
}

// ---- Traces ------------------------------------------------------------------------------

/// Who a trace entry names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceWho {
    Professional {
        rpps: Rpps,
        profession: Option<Name<Profession>>,
    },
    Holder,
    Representative {
        id: RepId,
    },
    System,
}

/// What kind of act a trace entry records: an access decision (`action` is its word), an
/// administrative act (`action` says which), or a dossier handed over to another site
/// (`action` is `handover-sent`, `to_site_id` the receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Access,
    Admin,
    Handover,
}

/// One trace entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TraceEntry {
    pub at: Time,
    /// The site that decided.
    pub site_id: u32,
    pub actor: TraceWho,
    /// The act: an access's word (`read`, `list`, …), an administrative act's name
    /// (`dossier-close`, …) or `handover-sent`.
    pub action: String,
    pub action_kind: ActionKind,
    /// The site a dossier was handed over to (`action_kind` `handover`).
    pub to_site_id: Option<u32>,
    pub ins: Option<String>,
    pub doc: Option<DocId>,
    pub mode: Name<AccessMode>,
    pub allowed: bool,
    pub rule: u8,
    pub outcome_reason: String,
    pub stated_reason: Option<String>,
    pub decided_offline: bool,
    pub authority_version: u64,
}

impl From<&AuditEntry> for TraceEntry {
    fn from(e: &AuditEntry) -> Self {
        TraceEntry {
            at: Time(e.at),
            site_id: e.origin.0,
            actor: trace_who(&e.actor),
            action: e.action.name(),
            action_kind: match &e.action {
                TraceAction::Access(_) => ActionKind::Access,
                TraceAction::Admin(_) => ActionKind::Admin,
                TraceAction::HandedOver { .. } => ActionKind::Handover,
            },
            to_site_id: match &e.action {
                TraceAction::HandedOver { to } => Some(to.0),
                _ => None,
            },
            ins: e.ins.clone(),
            doc: e.doc.map(DocId),
            mode: Name(e.mode),
            allowed: e.allowed,
            rule: e.rule,
            outcome_reason: e.outcome_reason.clone(),
            stated_reason: e.stated_reason.clone(),
            decided_offline: e.decided_offline,
            authority_version: e.authority_version,
        }
    }
}

impl TryFrom<TraceEntry> for AuditEntry {
    type Error = carnet_store::Error;

    fn try_from(e: TraceEntry) -> StoreResult<Self> {
        Ok(AuditEntry {
            at: e.at.0,
            origin: SiteId(e.site_id),
            actor: untrace_who(e.actor),
            action: match (e.action_kind, e.to_site_id) {
                (ActionKind::Access, _) => TraceAction::Access(Action::from_word(&e.action)?),
                (ActionKind::Admin, _) => TraceAction::Admin(e.action),
                (ActionKind::Handover, Some(to)) => TraceAction::HandedOver { to: SiteId(to) },
                (ActionKind::Handover, None) => {
                    return Err(invalid("a handover's trace entry names its to_site_id"));
                }
            },
            ins: e.ins,
            doc: e.doc.map(|d| d.0),
            mode: e.mode.0,
            allowed: e.allowed,
            rule: e.rule,
            outcome_reason: e.outcome_reason,
            stated_reason: e.stated_reason,
            decided_offline: e.decided_offline,
            authority_version: e.authority_version,
        })
    }
}

/// A trace entry in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChainedTrace {
    /// Its place in its site's chain.
    pub seq: u64,
    /// The chain's hash up to it.
    pub hash: Hex32,
    #[serde(flatten)]
    pub entry: TraceEntry,
}

impl From<&ChainedEntry> for ChainedTrace {
    fn from(c: &ChainedEntry) -> Self {
        ChainedTrace {
            seq: c.seq,
            hash: Hex32(c.hash),
            entry: (&c.entry).into(),
        }
    }
}

/// The holder's full copy of a dossier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Export {
    pub head: Head,
    pub documents: Vec<ExportedDocument>,
    pub traces: Vec<TraceEntry>,
    pub notifications: Vec<Notification>,
}

// ---- Settings, certificates, backups -----------------------------------------------------

/// Settings fixed at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    pub role: Name<Role>,
    pub site_id: u32,
    pub name: String,
    pub created_at: Time,
    pub lease_ms: Option<i64>,
}

/// A backup written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Backup {
    pub site_id: u32,
    pub role: Name<Role>,
    pub taken_at: Time,
    pub bytes: u64,
    pub tables: usize,
    pub rows: u64,
}

/// What admitting a bundle of host records did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImportReport {
    pub admitted: usize,
    pub unchanged: usize,
    pub purged: usize,
    pub lease_renewed: bool,
}

/// The offline CA: its certificate and key, DER, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ca {
    pub cert_der: Base64,
    pub key_der: Base64,
}

impl From<&crate::pki::Identity> for Ca {
    fn from(i: &crate::pki::Identity) -> Self {
        Ca {
            cert_der: Base64(i.cert_der.clone()),
            key_der: Base64(i.key_der.clone()),
        }
    }
}

impl From<Ca> for crate::pki::Identity {
    fn from(c: Ca) -> Self {
        crate::pki::Identity {
            cert_der: c.cert_der.0,
            key_der: c.key_der.0,
        }
    }
}

fn ca_opt(c: &Option<crate::pki::Identity>) -> Option<Ca> {
    c.as_ref().map(Ca::from)
}

fn unca(c: Option<Ca>) -> Option<crate::pki::Identity> {
    c.map(Into::into)
}

// ---- Requests ----------------------------------------------------------------------------

/// One operation, as `POST /v1/call` takes it: `{"op": NAME, …fields}`; a field an operation
/// with fields does not know is refused, so a misspelt optional field is never ignored (an
/// operation without fields ignores any). See `api::Request` for what each does.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Settings fixed at init.
    Config,
    /// Registers a professional here.
    AddProfessional { professional: Professional },
    /// The professionals registered here.
    Professionals,
    /// Creates a dossier: at the host (no `creator`), or opened at a site by `creator`.
    CreateDossier {
        dossier: NewDossier,
        #[serde(default)]
        creator: Option<Actor>,
    },
    /// Site: the identity of a dossier opened here was checked by `rpps`.
    QualifyDossier { ins: Ins, rpps: Rpps },
    /// One dossier as `actor` may see it (none: the host's operator, traced).
    Dossier {
        ins: Ins,
        #[serde(default)]
        actor: Option<Actor>,
    },
    /// The dossiers `actor` may see (none: the host's operator).
    Dossiers {
        #[serde(default)]
        actor: Option<Actor>,
    },
    /// A dossier's grants, revocations and blocks as `actor` may see them.
    Grants {
        ins: Ins,
        #[serde(default)]
        actor: Option<Actor>,
    },
    /// Whether this replica holds the dossier: nothing of its content.
    HoldsDossier { ins: Ins },
    /// A dossier's trace as `actor` may read it (none: the host's operator).
    ReadTrace {
        ins: Ins,
        #[serde(default)]
        actor: Option<Actor>,
    },
    /// Host: closes a dossier (archived, or deleted when the holder asked it); answers it.
    CloseDossier {
        ins: Ins,
        reason: String,
        #[serde(default)]
        deletion_requested: bool,
    },
    /// Host: the holder of a closed dossier asks its deletion; answers the dossier.
    RequestDeletion { ins: Ins },
    /// Host: reopens a closed dossier; answers it.
    ReopenDossier { ins: Ins, reason: String },
    /// Host: records a legal representative of the holder.
    AddRepresentative {
        ins: Ins,
        representative: NewRepresentative,
    },
    /// Host: ends a legal representative.
    RemoveRepresentative { ins: Ins, id: RepId },
    /// Purges a closed dossier.
    PurgeDossier { ins: Ins },
    /// Host: sets a grant (`basis` null keeps the one it changes); answers it as recorded.
    SetGrant {
        ins: Ins,
        rpps: Rpps,
        state: Name<GrantState>,
        #[serde(default)]
        basis: Option<Name<GrantBasis>>,
        #[serde(default)]
        until: Option<Time>,
    },
    /// Site: consent given in person, usable here for one encounter; a request at the host.
    PendingGrant { ins: Ins, rpps: Rpps },
    /// `null` (or absent) keeps a setting.
    UpdateEmergency {
        ins: Ins,
        #[serde(default)]
        samu_allowed: Option<bool>,
        #[serde(default)]
        btg_allowed: Option<bool>,
        #[serde(default)]
        masked_in_emergency: Option<bool>,
    },
    /// Writes a document; answers its id.
    PutDocument {
        actor: Actor,
        mode: Name<AccessMode>,
        #[serde(default)]
        reason: Option<String>,
        ins: Ins,
        document: NewDocument,
    },
    /// An audited read: the document's metadata, its body and the rule that allowed it.
    ReadDocument {
        actor: Actor,
        id: DocId,
        mode: Name<AccessMode>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// The documents of a dossier the actor may read.
    ListDocuments { actor: Actor, ins: Ins },
    /// The quarantined documents, with what became of each.
    Quarantine,
    /// One quarantined document.
    QuarantineShow { id: DocId },
    /// The body of a quarantined document, for its author or the host's operator; traced.
    QuarantineBody { actor: Actor, id: DocId },
    /// Sends a quarantined document again into dossier `ins`; answers the new id.
    QuarantineRefile { actor: Actor, id: DocId, ins: Ins },
    /// Keeps one replacement (`keep`) of a document in conflict (`id`).
    ResolveConflict {
        actor: Actor,
        /// The document in conflict.
        id: DocId,
        /// The replacement to keep.
        keep: DocId,
    },
    /// Masks, unmasks, hides or deletes a document; answers its metadata.
    UpdateDocument {
        actor: Actor,
        id: DocId,
        action: Name<Action>,
    },
    /// Files the documents of a FHIR R4 DocumentReference or Bundle (JSON text).
    ImportFhir {
        /// The JSON text (empty with `upload`).
        #[serde(default)]
        json: String,
        /// Instead of `json`: the token `POST /v1/bodies` answered for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload: Option<String>,
    },
    /// Replaces a document by a new version; answers the new id.
    ReplaceDocument {
        actor: Actor,
        id: DocId,
        document: NewDocument,
    },
    /// Trace entries, of one dossier or all.
    AuditEntries {
        #[serde(default)]
        ins: Option<Ins>,
    },
    /// Checks every trace chain.
    VerifyAudit,
    /// Re-wraps every key under a new master key: a new key file, or this passphrase.
    RotateMasterKey {
        #[serde(default)]
        passphrase: Option<String>,
    },
    /// The holder's full copy of a dossier.
    ExportDossier { actor: Actor, ins: Ins },
    /// Host: its signed records, as a bundle file.
    ExportAuthority,
    /// Site: admits signed host records.
    ImportAuthority {
        /// The bundle file (`carnet authority export`), base64.
        bundle: Base64,
    },
    /// The host's public key this replica trusts.
    HostKey,
    /// Site: asks the host to bring a dossier into its scope (or lets it go); host, with `site_id`: accepts or ends that site's pin.
    Pin {
        ins: Ins,
        on: bool,
        #[serde(default)]
        site_id: Option<u32>,
    },
    /// Site: asks the host for a dossier it does not hold, for a break-glass or centre 15 access.
    EmergencyFetch {
        ins: Ins,
        rpps: Rpps,
        mode: Name<AccessMode>,
        reason: String,
    },
    /// Host: binds a professional to a site, or unbinds them.
    BindProfessional { site_id: u32, rpps: Rpps, on: bool },
    /// Host: the professionals bound to a site.
    SiteProfessionals { site_id: u32 },
    /// Host: what sites asked for and the host has not decided.
    SiteRequests,
    /// The documents in conflict (of one dossier, if given), with their branches.
    Conflicts {
        #[serde(default)]
        ins: Option<Ins>,
    },
    /// Host: the emergencies it judged (`pending`: only those not reviewed).
    Emergencies {
        #[serde(default)]
        pending: bool,
    },
    /// Host: records a review of emergency `id` by `by` (`operator:NAME` or `dpo:NAME`).
    ReviewEmergency { id: u64, by: String, note: String },
    /// Host: its notifications (of one dossier, if given); an operator read, traced.
    Notifications {
        #[serde(default)]
        ins: Option<Ins>,
    },
    /// Site: what in the inbox needs a person.
    Inbox,
    /// Site: moves a refused file (and its sidecar) back into the inbox; answers the files moved.
    InboxRetry { name: String },
    /// Where sync stands.
    SyncStatus,
    /// Site: runs a sync round now and waits for it.
    SyncNow,
    /// Site: hands a dossier over to the `[[peer]]` named `peer`, by professional `by`.
    Handover {
        peer: String,
        ins: Ins,
        by: Rpps,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Site: asks the `[[peer]]` named `peer` to hand a dossier over to this site, for
    /// professional `by` (registered here).
    AskHandover {
        peer: String,
        ins: Ins,
        by: Rpps,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Host: creates the national CA and the host certificate.
    PkiInit {
        #[serde(default)]
        offline_ca: Option<Ca>,
        #[serde(default)]
        ca_in_replica: bool,
    },
    /// Host: enrols a site; answers the enrolment bundle.
    PkiEnrol {
        name: String,
        finess: String,
        host_address: String,
        #[serde(default)]
        pros: Vec<Rpps>,
        #[serde(default)]
        ca: Option<Ca>,
        #[serde(default)]
        days: Option<i64>,
    },
    /// Host: issues a site a new certificate; answers the renewal bundle.
    PkiRenew {
        site_id: u32,
        #[serde(default)]
        host_address: Option<String>,
        #[serde(default)]
        retire_old: bool,
        #[serde(default)]
        ca: Option<Ca>,
    },
    /// Host: a new certificate for the same key; `new_key` prepares a new key, `switch` serves it.
    PkiRenewHost {
        #[serde(default)]
        new_key: bool,
        #[serde(default)]
        switch: bool,
        #[serde(default)]
        ca: Option<Ca>,
    },
    /// Host: the CA revokes a host TLS key by its pin; answers the revocation file.
    PkiRevokeHost {
        pin: Hex32,
        #[serde(default)]
        ca: Option<Ca>,
    },
    /// Site: installs a renewal bundle or a host key revocation file.
    PkiInstall { bundle: Base64 },
    /// Host: its CA and certificate.
    PkiHost,
    /// Host: revokes a site.
    PkiRevoke { site_id: u32 },
    /// Host: the enrolled sites.
    PkiSites,
    /// Host, daemon only: every site as the operator sees it, or one.
    Fleet {
        #[serde(default)]
        site_id: Option<u32>,
    },
    /// Writes a consistent copy of the replica to `path` (absolute; written by the daemon).
    Backup { path: PathBuf },
    /// Host: the renewals sites asked for over sync and have not used yet.
    PkiRenewals,
    /// Host: signs every renewal waiting for the CA; answers those signed.
    PkiSignPending {
        #[serde(default)]
        ca: Option<Ca>,
    },
    /// Reads every stored body and checks it against its document: the damaged ones.
    CheckBodies,
}

fn rpps(r: &ids::Rpps) -> Rpps {
    Rpps(r.clone())
}

impl From<&Call> for Request {
    fn from(c: &Call) -> Self {
        match c {
            Call::Config => Request::Config,
            Call::AddProfessional { professional } => Request::AddProfessional {
                professional: professional.into(),
            },
            Call::Professionals => Request::Professionals,
            Call::CreateDossier { dossier, creator } => Request::CreateDossier {
                dossier: dossier.into(),
                creator: actor_opt(creator),
            },
            Call::QualifyDossier { ins: i, rpps: r } => Request::QualifyDossier {
                ins: ins(i),
                rpps: rpps(r),
            },
            Call::Dossier { ins: i, actor } => Request::Dossier {
                ins: ins(i),
                actor: actor_opt(actor),
            },
            Call::Dossiers { actor } => Request::Dossiers {
                actor: actor_opt(actor),
            },
            Call::Grants { ins: i, actor } => Request::Grants {
                ins: ins(i),
                actor: actor_opt(actor),
            },
            Call::HoldsDossier { ins: i } => Request::HoldsDossier { ins: ins(i) },
            Call::ReadTrace { ins: i, actor } => Request::ReadTrace {
                ins: ins(i),
                actor: actor_opt(actor),
            },
            Call::CloseDossier {
                ins: i,
                reason,
                deletion_requested,
            } => Request::CloseDossier {
                ins: ins(i),
                reason: reason.clone(),
                deletion_requested: *deletion_requested,
            },
            Call::RequestDeletion { ins: i } => Request::RequestDeletion { ins: ins(i) },
            Call::ReopenDossier { ins: i, reason } => Request::ReopenDossier {
                ins: ins(i),
                reason: reason.clone(),
            },
            Call::AddRepresentative {
                ins: i,
                representative,
            } => Request::AddRepresentative {
                ins: ins(i),
                representative: representative.into(),
            },
            Call::RemoveRepresentative { ins: i, id } => Request::RemoveRepresentative {
                ins: ins(i),
                id: RepId(*id),
            },
            Call::PurgeDossier { ins: i } => Request::PurgeDossier { ins: ins(i) },
            Call::SetGrant {
                ins: i,
                rpps: r,
                state,
                basis,
                until,
            } => Request::SetGrant {
                ins: ins(i),
                rpps: rpps(r),
                state: Name(*state),
                basis: basis.map(Name),
                until: time_opt(*until),
            },
            Call::PendingGrant { ins: i, rpps: r } => Request::PendingGrant {
                ins: ins(i),
                rpps: rpps(r),
            },
            Call::UpdateEmergency {
                ins: i,
                samu,
                btg,
                masked,
            } => Request::UpdateEmergency {
                ins: ins(i),
                samu_allowed: *samu,
                btg_allowed: *btg,
                masked_in_emergency: *masked,
            },
            Call::PutDocument {
                actor,
                mode,
                reason,
                ins: i,
                document,
            } => Request::PutDocument {
                actor: actor.into(),
                mode: Name(*mode),
                reason: reason.clone(),
                ins: ins(i),
                document: document.into(),
            },
            Call::ReadDocument {
                actor,
                id,
                mode,
                reason,
            } => Request::ReadDocument {
                actor: actor.into(),
                id: DocId(*id),
                mode: Name(*mode),
                reason: reason.clone(),
            },
            Call::ListDocuments { actor, ins: i } => Request::ListDocuments {
                actor: actor.into(),
                ins: ins(i),
            },
            Call::Quarantine => Request::Quarantine,
            Call::QuarantineShow { id } => Request::QuarantineShow { id: DocId(*id) },
            Call::QuarantineBody { actor, id } => Request::QuarantineBody {
                actor: actor.into(),
                id: DocId(*id),
            },
            Call::QuarantineRefile { actor, id, ins: i } => Request::QuarantineRefile {
                actor: actor.into(),
                id: DocId(*id),
                ins: ins(i),
            },
            Call::ResolveConflict { actor, doc, keep } => Request::ResolveConflict {
                actor: actor.into(),
                id: DocId(*doc),
                keep: DocId(*keep),
            },
            Call::UpdateDocument { actor, id, action } => Request::UpdateDocument {
                actor: actor.into(),
                id: DocId(*id),
                action: Name(*action),
            },
            Call::ImportFhir { json } => Request::ImportFhir {
                json: json.clone(),
                upload: None,
            },
            Call::ReplaceDocument {
                actor,
                id,
                document,
            } => Request::ReplaceDocument {
                actor: actor.into(),
                id: DocId(*id),
                document: document.into(),
            },
            Call::AuditEntries { ins: i } => Request::AuditEntries {
                ins: i.as_ref().map(ins),
            },
            Call::VerifyAudit => Request::VerifyAudit,
            Call::RotateMasterKey { passphrase } => Request::RotateMasterKey {
                passphrase: passphrase.clone(),
            },
            Call::ExportDossier { actor, ins: i } => Request::ExportDossier {
                actor: actor.into(),
                ins: ins(i),
            },
            Call::ExportAuthority => Request::ExportAuthority,
            Call::ImportAuthority { bundle } => Request::ImportAuthority {
                // A bundle that does not encode has no file form: sent empty, refused there.
                bundle: Base64(bundle.to_bytes().unwrap_or_default()),
            },
            Call::HostKey => Request::HostKey,
            Call::Pin { ins: i, on, site } => Request::Pin {
                ins: ins(i),
                on: *on,
                site_id: *site,
            },
            Call::EmergencyFetch {
                ins: i,
                rpps: r,
                mode,
                reason,
            } => Request::EmergencyFetch {
                ins: ins(i),
                rpps: rpps(r),
                mode: Name(*mode),
                reason: reason.clone(),
            },
            Call::BindProfessional { site, rpps: r, on } => Request::BindProfessional {
                site_id: *site,
                rpps: rpps(r),
                on: *on,
            },
            Call::SiteProfessionals { site } => Request::SiteProfessionals { site_id: *site },
            Call::SiteRequests => Request::SiteRequests,
            Call::Conflicts { dossier } => Request::Conflicts {
                ins: dossier.as_ref().map(ins),
            },
            Call::Emergencies { pending } => Request::Emergencies { pending: *pending },
            Call::ReviewEmergency { id, by, note } => Request::ReviewEmergency {
                id: *id,
                by: by.clone(),
                note: note.clone(),
            },
            Call::Notifications { dossier } => Request::Notifications {
                ins: dossier.as_ref().map(ins),
            },
            Call::Inbox => Request::Inbox,
            Call::InboxRetry { name } => Request::InboxRetry { name: name.clone() },
            Call::SyncStatus => Request::SyncStatus,
            Call::SyncNow => Request::SyncNow,
            Call::Handover {
                peer,
                ins: i,
                by,
                reason,
            } => Request::Handover {
                peer: peer.clone(),
                ins: ins(i),
                by: rpps(by),
                reason: reason.clone(),
            },
            Call::AskHandover {
                peer,
                ins: i,
                by,
                reason,
            } => Request::AskHandover {
                peer: peer.clone(),
                ins: ins(i),
                by: rpps(by),
                reason: reason.clone(),
            },
            Call::PkiInit {
                offline_ca,
                ca_in_replica,
            } => Request::PkiInit {
                offline_ca: ca_opt(offline_ca),
                ca_in_replica: *ca_in_replica,
            },
            Call::PkiEnrol {
                name,
                finess,
                host_address,
                pros,
                ca,
                days,
            } => Request::PkiEnrol {
                name: name.clone(),
                finess: finess.clone(),
                host_address: host_address.clone(),
                pros: pros.iter().map(rpps).collect(),
                ca: ca_opt(ca),
                days: *days,
            },
            Call::PkiRenew {
                site,
                host_address,
                retire_old,
                ca,
            } => Request::PkiRenew {
                site_id: *site,
                host_address: host_address.clone(),
                retire_old: *retire_old,
                ca: ca_opt(ca),
            },
            Call::PkiRenewHost {
                new_key,
                switch,
                ca,
            } => Request::PkiRenewHost {
                new_key: *new_key,
                switch: *switch,
                ca: ca_opt(ca),
            },
            Call::PkiRevokeHost { pin, ca } => Request::PkiRevokeHost {
                pin: Hex32(*pin),
                ca: ca_opt(ca),
            },
            Call::PkiInstall { bundle } => Request::PkiInstall {
                bundle: Base64(bundle.clone()),
            },
            Call::PkiHost => Request::PkiHost,
            Call::PkiRevoke { site } => Request::PkiRevoke { site_id: *site },
            Call::PkiSites => Request::PkiSites,
            Call::Fleet { site } => Request::Fleet { site_id: *site },
            Call::Backup { path } => Request::Backup { path: path.clone() },
            Call::PkiRenewals => Request::PkiRenewals,
            Call::PkiSignPending { ca } => Request::PkiSignPending { ca: ca_opt(ca) },
            Call::CheckBodies => Request::CheckBodies,
        }
    }
}

impl TryFrom<Request> for Call {
    type Error = carnet_store::Error;

    fn try_from(r: Request) -> StoreResult<Self> {
        Ok(match r {
            Request::Config => Call::Config,
            Request::AddProfessional { professional } => Call::AddProfessional {
                professional: professional.into(),
            },
            Request::Professionals => Call::Professionals,
            Request::CreateDossier { dossier, creator } => Call::CreateDossier {
                dossier: dossier.into(),
                creator: creator.map(Into::into),
            },
            Request::QualifyDossier { ins, rpps } => Call::QualifyDossier {
                ins: ins.0,
                rpps: rpps.0,
            },
            Request::Dossier { ins, actor } => Call::Dossier {
                ins: ins.0,
                actor: actor.map(Into::into),
            },
            Request::Dossiers { actor } => Call::Dossiers {
                actor: actor.map(Into::into),
            },
            Request::Grants { ins, actor } => Call::Grants {
                ins: ins.0,
                actor: actor.map(Into::into),
            },
            Request::HoldsDossier { ins } => Call::HoldsDossier { ins: ins.0 },
            Request::ReadTrace { ins, actor } => Call::ReadTrace {
                ins: ins.0,
                actor: actor.map(Into::into),
            },
            Request::CloseDossier {
                ins,
                reason,
                deletion_requested,
            } => Call::CloseDossier {
                ins: ins.0,
                reason,
                deletion_requested,
            },
            Request::RequestDeletion { ins } => Call::RequestDeletion { ins: ins.0 },
            Request::ReopenDossier { ins, reason } => Call::ReopenDossier { ins: ins.0, reason },
            Request::AddRepresentative {
                ins,
                representative,
            } => Call::AddRepresentative {
                ins: ins.0,
                representative: representative.into(),
            },
            Request::RemoveRepresentative { ins, id } => Call::RemoveRepresentative {
                ins: ins.0,
                id: id.0,
            },
            Request::PurgeDossier { ins } => Call::PurgeDossier { ins: ins.0 },
            Request::SetGrant {
                ins,
                rpps,
                state,
                basis,
                until,
            } => Call::SetGrant {
                ins: ins.0,
                rpps: rpps.0,
                state: state.0,
                basis: basis.map(|b| b.0),
                until: untime(until),
            },
            Request::PendingGrant { ins, rpps } => Call::PendingGrant {
                ins: ins.0,
                rpps: rpps.0,
            },
            Request::UpdateEmergency {
                ins,
                samu_allowed,
                btg_allowed,
                masked_in_emergency,
            } => Call::UpdateEmergency {
                ins: ins.0,
                samu: samu_allowed,
                btg: btg_allowed,
                masked: masked_in_emergency,
            },
            Request::PutDocument {
                actor,
                mode,
                reason,
                ins,
                document,
            } => Call::PutDocument {
                actor: actor.into(),
                mode: mode.0,
                reason,
                ins: ins.0,
                document: document.try_into()?,
            },
            Request::ReadDocument {
                actor,
                id,
                mode,
                reason,
            } => Call::ReadDocument {
                actor: actor.into(),
                id: id.0,
                mode: mode.0,
                reason,
            },
            Request::ListDocuments { actor, ins } => Call::ListDocuments {
                actor: actor.into(),
                ins: ins.0,
            },
            Request::Quarantine => Call::Quarantine,
            Request::QuarantineShow { id } => Call::QuarantineShow { id: id.0 },
            Request::QuarantineBody { actor, id } => Call::QuarantineBody {
                actor: actor.into(),
                id: id.0,
            },
            Request::QuarantineRefile { actor, id, ins } => Call::QuarantineRefile {
                actor: actor.into(),
                id: id.0,
                ins: ins.0,
            },
            Request::ResolveConflict { actor, id, keep } => Call::ResolveConflict {
                actor: actor.into(),
                doc: id.0,
                keep: keep.0,
            },
            Request::UpdateDocument { actor, id, action } => Call::UpdateDocument {
                actor: actor.into(),
                id: id.0,
                action: action.0,
            },
            Request::ImportFhir {
                upload: Some(token),
                ..
            } => {
                return Err(not_held(&token));
            }
            Request::ImportFhir { json, upload: None } => Call::ImportFhir { json },
            Request::ReplaceDocument {
                actor,
                id,
                document,
            } => Call::ReplaceDocument {
                actor: actor.into(),
                id: id.0,
                document: document.try_into()?,
            },
            Request::AuditEntries { ins } => Call::AuditEntries {
                ins: ins.map(|i| i.0),
            },
            Request::VerifyAudit => Call::VerifyAudit,
            Request::RotateMasterKey { passphrase } => Call::RotateMasterKey { passphrase },
            Request::ExportDossier { actor, ins } => Call::ExportDossier {
                actor: actor.into(),
                ins: ins.0,
            },
            Request::ExportAuthority => Call::ExportAuthority,
            Request::ImportAuthority { bundle } => Call::ImportAuthority {
                bundle: carnet_store::authority::Bundle::from_bytes(&bundle.0)?,
            },
            Request::HostKey => Call::HostKey,
            Request::Pin { ins, on, site_id } => Call::Pin {
                ins: ins.0,
                on,
                site: site_id,
            },
            Request::EmergencyFetch {
                ins,
                rpps,
                mode,
                reason,
            } => Call::EmergencyFetch {
                ins: ins.0,
                rpps: rpps.0,
                mode: mode.0,
                reason,
            },
            Request::BindProfessional { site_id, rpps, on } => Call::BindProfessional {
                site: site_id,
                rpps: rpps.0,
                on,
            },
            Request::SiteProfessionals { site_id } => Call::SiteProfessionals { site: site_id },
            Request::SiteRequests => Call::SiteRequests,
            Request::Conflicts { ins } => Call::Conflicts {
                dossier: ins.map(|i| i.0),
            },
            Request::Emergencies { pending } => Call::Emergencies { pending },
            Request::ReviewEmergency { id, by, note } => Call::ReviewEmergency { id, by, note },
            Request::Notifications { ins } => Call::Notifications {
                dossier: ins.map(|i| i.0),
            },
            Request::Inbox => Call::Inbox,
            Request::InboxRetry { name } => Call::InboxRetry { name },
            Request::SyncStatus => Call::SyncStatus,
            Request::SyncNow => Call::SyncNow,
            Request::Handover {
                peer,
                ins,
                by,
                reason,
            } => Call::Handover {
                peer,
                ins: ins.0,
                by: by.0,
                reason,
            },
            Request::AskHandover {
                peer,
                ins,
                by,
                reason,
            } => Call::AskHandover {
                peer,
                ins: ins.0,
                by: by.0,
                reason,
            },
            Request::PkiInit {
                offline_ca,
                ca_in_replica,
            } => Call::PkiInit {
                offline_ca: unca(offline_ca),
                ca_in_replica,
            },
            Request::PkiEnrol {
                name,
                finess,
                host_address,
                pros,
                ca,
                days,
            } => Call::PkiEnrol {
                name,
                finess,
                host_address,
                pros: pros.into_iter().map(|p| p.0).collect(),
                ca: unca(ca),
                days,
            },
            Request::PkiRenew {
                site_id,
                host_address,
                retire_old,
                ca,
            } => Call::PkiRenew {
                site: site_id,
                host_address,
                retire_old,
                ca: unca(ca),
            },
            Request::PkiRenewHost {
                new_key,
                switch,
                ca,
            } => Call::PkiRenewHost {
                new_key,
                switch,
                ca: unca(ca),
            },
            Request::PkiRevokeHost { pin, ca } => Call::PkiRevokeHost {
                pin: pin.0,
                ca: unca(ca),
            },
            Request::PkiInstall { bundle } => Call::PkiInstall { bundle: bundle.0 },
            Request::PkiHost => Call::PkiHost,
            Request::PkiRevoke { site_id } => Call::PkiRevoke { site: site_id },
            Request::PkiSites => Call::PkiSites,
            Request::Fleet { site_id } => Call::Fleet { site: site_id },
            Request::Backup { path } => Call::Backup { path },
            Request::PkiRenewals => Call::PkiRenewals,
            Request::PkiSignPending { ca } => Call::PkiSignPending { ca: unca(ca) },
            Request::CheckBodies => Call::CheckBodies,
        })
    }
}

// ---- Answers -----------------------------------------------------------------------------

/// The answer to a request: `{"kind": K, "value": V}`. See `api::Response` for what each
/// means.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Response {
    /// Done, nothing to return.
    Done,
    /// Settings.
    Config(Config),
    /// Professionals.
    Professionals(Vec<Professional>),
    /// One dossier.
    Dossier(Box<Dossier>),
    /// Dossiers.
    Dossiers(Vec<Dossier>),
    /// A dossier's grants.
    Grants(Vec<Grant>),
    /// Whether a dossier is held here.
    Holds(bool),
    /// Emergency preferences now in force.
    Emergency(EmergencyPrefs),
    /// A new document's id.
    DocId(DocId),
    /// A read.
    Read(Box<Read>),
    /// Documents' metadata.
    Documents(Vec<Document>),
    /// One document's metadata.
    Document(Box<Document>),
    /// Trace entries.
    Audit(Vec<ChainedTrace>),
    /// Chains and entries checked.
    Verified { chains: usize, entries: u64 },
    /// The holder's copy.
    Export(Box<Export>),
    /// The bundle file, base64.
    Authority(Base64),
    /// What admitting host records did.
    Imported(ImportReport),
    /// The trusted host key.
    HostKey(Option<Hex32>),
    /// Where sync stands.
    SyncStatus(Box<SyncStatus>),
    /// What in the inbox needs a person.
    Inbox(Box<InboxState>),
    /// The files moved back into the inbox.
    InboxRetried(Vec<String>),
    /// What a FHIR import did, document by document, in the order filed.
    FhirImported(Vec<Imported>),
    /// What a round did.
    Synced(Round),
    /// What a handover did.
    HandedOver(Box<Handover>),
    /// What a dossier asked of a peer did here.
    Asked(Box<Asked>),
    /// An enrolment or renewal bundle (base64) for a site.
    Enrolled {
        site_id: u32,
        name: String,
        bundle: Base64,
    },
    /// The sites of the host's register.
    Sites(Vec<Site>),
    /// Sites as the operator sees them.
    Fleet(Vec<SiteOverview>),
    /// Renewals asked for over sync.
    Renewals(Vec<Renewal>),
    /// A certificate issued or installed: its end; from a renewal bundle, the host address it names.
    Certificate {
        not_after: Time,
        #[serde(default)]
        bundle_host_address: Option<String>,
    },
    /// A new host key prepared and announced, not served yet.
    HostKeyPrepared { not_after: Time, pin: Hex32 },
    /// The host serves its new key: the old and new pins.
    HostKeySwitched {
        old: Hex32,
        new: Hex32,
        not_after: Time,
    },
    /// A host key revoked by the CA: the revocation file, base64.
    HostKeyRevoked { pin: Hex32, file: Base64 },
    /// A site installed a host key revocation (`already`: it held it; `no_pin_left`: no sync until a renewal bundle).
    RevocationInstalled {
        pin: Hex32,
        already: bool,
        no_pin_left: bool,
    },
    /// The host's CA and certificate.
    PkiHost(PkiHost),
    /// Professionals bound to a site.
    Bound(Vec<Rpps>),
    /// Sites' requests waiting for the host.
    SiteRequests(Vec<SiteRequest>),
    /// Documents in conflict.
    Conflicts(Vec<Conflict>),
    /// Quarantined documents.
    Quarantine(Vec<QuarantineEntry>),
    /// One quarantined document.
    Quarantined(Box<QuarantineEntry>),
    /// A quarantined document's body.
    QuarantinedBody { body: SecretBase64 },
    /// Emergencies as the host judged them.
    Emergencies(Vec<Emergency>),
    /// The host's notifications.
    Notifications(Vec<Notification>),
    /// A backup written.
    Backup(Backup),
    /// The documents whose stored body is damaged: read, opened or matched against its
    /// content hash, it failed (empty: every body is intact).
    DamagedBodies(Vec<DocId>),
}

impl TryFrom<Answer> for Response {
    type Error = carnet_store::Error;

    /// Fails only when a bundle does not encode (`Authority`).
    fn try_from(a: Answer) -> StoreResult<Self> {
        Ok(match a {
            Answer::Done => Response::Done,
            Answer::Config(c) => Response::Config(Config {
                role: Name(c.role),
                site_id: c.site_id.0,
                name: c.name,
                created_at: Time(c.created_at),
                lease_ms: c.lease_ms,
            }),
            Answer::Professionals(list) => {
                Response::Professionals(list.iter().map(Into::into).collect())
            }
            Answer::Dossier(d) => Response::Dossier(Box::new((&*d).into())),
            Answer::Dossiers(list) => Response::Dossiers(list.iter().map(Into::into).collect()),
            Answer::Grants(list) => Response::Grants(list.iter().map(Into::into).collect()),
            Answer::Holds(b) => Response::Holds(b),
            Answer::Emergency(e) => Response::Emergency(e.into()),
            Answer::DocId(id) => Response::DocId(DocId(id)),
            Answer::Read(r) => Response::Read(Box::new(Read {
                document: (&r.meta).into(),
                body: SecretBase64(r.body),
                rule: r.rule,
            })),
            Answer::Documents(list) => Response::Documents(list.iter().map(Into::into).collect()),
            Answer::Document(m) => Response::Document(Box::new((&*m).into())),
            Answer::Audit(list) => Response::Audit(list.iter().map(Into::into).collect()),
            Answer::Verified { chains, entries } => Response::Verified { chains, entries },
            Answer::Export(e) => {
                let e = *e;
                Response::Export(Box::new(Export {
                    head: (&e.head).into(),
                    documents: e
                        .documents
                        .into_iter()
                        .map(|d| ExportedDocument {
                            document: (&d.meta).into(),
                            body: SecretBase64(d.body),
                        })
                        .collect(),
                    traces: e.traces.iter().map(Into::into).collect(),
                    notifications: e.notifications.iter().map(Into::into).collect(),
                }))
            }
            Answer::Authority(b) => Response::Authority(Base64(b.to_bytes()?)),
            Answer::Imported(r) => Response::Imported(ImportReport {
                admitted: r.admitted,
                unchanged: r.unchanged,
                purged: r.purged,
                lease_renewed: r.lease_renewed,
            }),
            Answer::HostKey(k) => Response::HostKey(k.map(Hex32)),
            Answer::SyncStatus(s) => Response::SyncStatus(Box::new((&*s).into())),
            Answer::Inbox(i) => Response::Inbox(Box::new((&*i).into())),
            Answer::InboxRetried(v) => Response::InboxRetried(v),
            Answer::FhirImported(v) => Response::FhirImported(
                v.iter()
                    .map(|i| Imported {
                        id: DocId(i.id),
                        already_stored: i.already_stored,
                    })
                    .collect(),
            ),
            Answer::Synced(r) => Response::Synced((&r).into()),
            Answer::HandedOver(h) => Response::HandedOver(Box::new((&*h).into())),
            Answer::Asked(a) => Response::Asked(Box::new((&*a).into())),
            Answer::Enrolled {
                site_id,
                name,
                bundle,
            } => Response::Enrolled {
                site_id,
                name,
                bundle: Base64(bundle),
            },
            Answer::Sites(s) => Response::Sites(s.iter().map(|(id, s)| site(*id, s)).collect()),
            Answer::Fleet(f) => Response::Fleet(f.iter().map(Into::into).collect()),
            Answer::Renewals(r) => Response::Renewals(r.iter().map(Into::into).collect()),
            Answer::Certificate {
                not_after,
                bundle_host_address,
            } => Response::Certificate {
                not_after: Time(not_after),
                bundle_host_address,
            },
            Answer::HostKeyPrepared { not_after, pin } => Response::HostKeyPrepared {
                not_after: Time(not_after),
                pin: Hex32(pin),
            },
            Answer::HostKeySwitched {
                old,
                new,
                not_after,
            } => Response::HostKeySwitched {
                old: Hex32(old),
                new: Hex32(new),
                not_after: Time(not_after),
            },
            Answer::HostKeyRevoked { pin, file } => Response::HostKeyRevoked {
                pin: Hex32(pin),
                file: Base64(file),
            },
            Answer::RevocationInstalled {
                pin,
                already,
                no_pin_left,
            } => Response::RevocationInstalled {
                pin: Hex32(pin),
                already,
                no_pin_left,
            },
            Answer::PkiHost(p) => Response::PkiHost(PkiHost {
                ca_not_after: Time(p.ca_not_after),
                host_not_after: Time(p.host_not_after),
                ca_offline: p.ca_offline,
                host_pin: Hex32(p.host_pin),
                next_pin: p.next_pin.map(Hex32),
                revoked_pins: p.revoked_pins.into_iter().map(Hex32).collect(),
            }),
            Answer::Bound(list) => Response::Bound(list.iter().map(rpps).collect()),
            Answer::SiteRequests(v) => Response::SiteRequests(v.iter().map(Into::into).collect()),
            Answer::Conflicts(v) => Response::Conflicts(v.iter().map(Into::into).collect()),
            Answer::Quarantine(v) => Response::Quarantine(v.iter().map(Into::into).collect()),
            Answer::Quarantined(q) => Response::Quarantined(Box::new((&*q).into())),
            Answer::QuarantinedBody { body } => Response::QuarantinedBody {
                body: SecretBase64(body),
            },
            Answer::Emergencies(v) => Response::Emergencies(v.iter().map(Into::into).collect()),
            Answer::Notifications(v) => Response::Notifications(v.iter().map(Into::into).collect()),
            Answer::Backup(b) => Response::Backup(Backup {
                site_id: b.site_id.0,
                role: Name(b.role),
                taken_at: Time(b.taken_at),
                bytes: b.bytes,
                tables: b.tables,
                rows: b.rows,
            }),
            Answer::DamagedBodies(ids) => {
                Response::DamagedBodies(ids.into_iter().map(DocId).collect())
            }
        })
    }
}

impl TryFrom<Response> for Answer {
    type Error = carnet_store::Error;

    fn try_from(r: Response) -> StoreResult<Self> {
        Ok(match r {
            Response::Done => Answer::Done,
            Response::Config(c) => Answer::Config(store::ReplicaConfig {
                role: c.role.0,
                site_id: SiteId(c.site_id),
                name: c.name,
                created_at: c.created_at.0,
                lease_ms: c.lease_ms,
            }),
            Response::Professionals(list) => {
                Answer::Professionals(list.into_iter().map(Into::into).collect())
            }
            Response::Dossier(d) => Answer::Dossier(Box::new((*d).into())),
            Response::Dossiers(list) => {
                Answer::Dossiers(list.into_iter().map(Into::into).collect())
            }
            Response::Grants(list) => Answer::Grants(list.into_iter().map(Into::into).collect()),
            Response::Holds(b) => Answer::Holds(b),
            Response::Emergency(e) => Answer::Emergency(e.into()),
            Response::DocId(id) => Answer::DocId(id.0),
            Response::Read(r) => {
                let r = *r;
                Answer::Read(Box::new(store::ReadOutcome {
                    meta: r.document.try_into()?,
                    body: r.body.0,
                    rule: r.rule,
                }))
            }
            Response::Documents(list) => Answer::Documents(
                list.into_iter()
                    .map(TryInto::try_into)
                    .collect::<StoreResult<_>>()?,
            ),
            Response::Document(d) => Answer::Document(Box::new((*d).try_into()?)),
            Response::Audit(list) => Answer::Audit(
                list.into_iter()
                    .map(|c| {
                        Ok(ChainedEntry {
                            seq: c.seq,
                            hash: c.hash.0,
                            entry: c.entry.try_into()?,
                        })
                    })
                    .collect::<StoreResult<_>>()?,
            ),
            Response::Verified { chains, entries } => Answer::Verified { chains, entries },
            Response::Export(e) => {
                let e = *e;
                Answer::Export(Box::new(store::DossierExport {
                    head: e.head.into(),
                    documents: e
                        .documents
                        .into_iter()
                        .map(|d| {
                            Ok(store::ExportedDocument {
                                meta: d.document.try_into()?,
                                body: d.body.0,
                            })
                        })
                        .collect::<StoreResult<_>>()?,
                    traces: e
                        .traces
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<StoreResult<_>>()?,
                    notifications: e
                        .notifications
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<StoreResult<_>>()?,
                }))
            }
            Response::Authority(b) => {
                Answer::Authority(carnet_store::authority::Bundle::from_bytes(&b.0)?)
            }
            Response::Imported(r) => Answer::Imported(store::ImportReport {
                admitted: r.admitted,
                unchanged: r.unchanged,
                purged: r.purged,
                lease_renewed: r.lease_renewed,
            }),
            Response::HostKey(k) => Answer::HostKey(k.map(|k| k.0)),
            Response::SyncStatus(s) => Answer::SyncStatus(Box::new((*s).into())),
            Response::Inbox(i) => Answer::Inbox(Box::new((*i).into())),
            Response::InboxRetried(v) => Answer::InboxRetried(v),
            Response::FhirImported(v) => Answer::FhirImported(
                v.into_iter()
                    .map(|i| crate::fhir::Imported {
                        id: i.id.0,
                        already_stored: i.already_stored,
                    })
                    .collect(),
            ),
            Response::Synced(r) => Answer::Synced(r.into()),
            Response::HandedOver(h) => Answer::HandedOver(Box::new((*h).into())),
            Response::Asked(a) => Answer::Asked(Box::new((*a).into())),
            Response::Enrolled {
                site_id,
                name,
                bundle,
            } => Answer::Enrolled {
                site_id,
                name,
                bundle: bundle.0,
            },
            Response::Sites(s) => Answer::Sites(s.into_iter().map(unsite).collect()),
            Response::Fleet(f) => Answer::Fleet(f.into_iter().map(Into::into).collect()),
            Response::Renewals(r) => Answer::Renewals(
                r.into_iter()
                    .map(|r| crate::enrol::Renewal {
                        site: r.site_id,
                        public_key: r.public_key.0,
                        requested_at: r.requested_at.0,
                        issued: r.issued.map(|b| b.0),
                    })
                    .collect(),
            ),
            Response::Certificate {
                not_after,
                bundle_host_address,
            } => Answer::Certificate {
                not_after: not_after.0,
                bundle_host_address,
            },
            Response::HostKeyPrepared { not_after, pin } => Answer::HostKeyPrepared {
                not_after: not_after.0,
                pin: pin.0,
            },
            Response::HostKeySwitched {
                old,
                new,
                not_after,
            } => Answer::HostKeySwitched {
                old: old.0,
                new: new.0,
                not_after: not_after.0,
            },
            Response::HostKeyRevoked { pin, file } => Answer::HostKeyRevoked {
                pin: pin.0,
                file: file.0,
            },
            Response::RevocationInstalled {
                pin,
                already,
                no_pin_left,
            } => Answer::RevocationInstalled {
                pin: pin.0,
                already,
                no_pin_left,
            },
            Response::PkiHost(p) => Answer::PkiHost(super::PkiHostStatus {
                ca_not_after: p.ca_not_after.0,
                host_not_after: p.host_not_after.0,
                ca_offline: p.ca_offline,
                host_pin: p.host_pin.0,
                next_pin: p.next_pin.map(|p| p.0),
                revoked_pins: p.revoked_pins.into_iter().map(|p| p.0).collect(),
            }),
            Response::Bound(list) => Answer::Bound(list.into_iter().map(|r| r.0).collect()),
            Response::SiteRequests(v) => Answer::SiteRequests(
                v.into_iter()
                    .map(|r| store::SiteRequest {
                        kind: r.kind.0,
                        site: SiteId(r.site_id),
                        ins: r.ins.0,
                        rpps: r.rpps.map(|r| r.0),
                        at: r.at.0,
                    })
                    .collect(),
            ),
            Response::Conflicts(v) => Answer::Conflicts(v.into_iter().map(Into::into).collect()),
            Response::Quarantine(v) => Answer::Quarantine(
                v.into_iter()
                    .map(TryInto::try_into)
                    .collect::<StoreResult<_>>()?,
            ),
            Response::Quarantined(q) => Answer::Quarantined(Box::new((*q).try_into()?)),
            Response::QuarantinedBody { body } => Answer::QuarantinedBody { body: body.0 },
            Response::Emergencies(v) => {
                Answer::Emergencies(v.into_iter().map(Into::into).collect())
            }
            Response::Notifications(v) => Answer::Notifications(
                v.into_iter()
                    .map(TryInto::try_into)
                    .collect::<StoreResult<_>>()?,
            ),
            Response::Backup(b) => Answer::Backup(store::backup::BackupInfo {
                site_id: SiteId(b.site_id),
                role: b.role.0,
                taken_at: b.taken_at.0,
                bytes: b.bytes,
                tables: b.tables,
                rows: b.rows,
            }),
            Response::DamagedBodies(ids) => {
                Answer::DamagedBodies(ids.into_iter().map(|id| id.0).collect())
            }
        })
    }
}

// ---- Errors ------------------------------------------------------------------------------

/// An error as `POST /v1/call` answers it: `{"error": {"kind": K, "message": M}}` (and the
/// rule for `denied`). The store's kinds: `invalid`, `denied`, `not_found`, `integrity`,
/// `key`, `storage`, `conflict`; the sync layer's: `refused`, `io`, `tls`, `pki`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Error {
    Invalid { message: String },
    Denied { rule: u8, message: String },
    NotFound { message: String },
    Integrity { message: String },
    Key { message: String },
    Storage { message: String },
    Conflict { message: String },
    Refused { message: String },
    Io { message: String },
    Tls { message: String },
    Pki { message: String },
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        use carnet_store::Error as S;
        match e {
            crate::Error::Store(e) => match e {
                S::Invalid(message) => Error::Invalid { message },
                S::Denied { rule, reason } => Error::Denied {
                    rule,
                    message: reason,
                },
                S::NotFound(message) => Error::NotFound { message },
                S::Integrity(message) => Error::Integrity { message },
                S::Key(message) => Error::Key { message },
                S::Storage(message) => Error::Storage { message },
                S::Conflict(message) => Error::Conflict { message },
            },
            crate::Error::Io(e) => Error::Io {
                message: e.to_string(),
            },
            crate::Error::Tls(message) => Error::Tls { message },
            crate::Error::Pki(message) => Error::Pki { message },
            crate::Error::Invalid(message) => Error::Refused { message },
        }
    }
}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        use carnet_store::Error as S;
        match e {
            Error::Invalid { message } => S::Invalid(message).into(),
            Error::Denied { rule, message } => S::Denied {
                rule,
                reason: message,
            }
            .into(),
            Error::NotFound { message } => S::NotFound(message).into(),
            Error::Integrity { message } => S::Integrity(message).into(),
            Error::Key { message } => S::Key(message).into(),
            Error::Storage { message } => S::Storage(message).into(),
            Error::Conflict { message } => S::Conflict(message).into(),
            Error::Refused { message } => crate::Error::Invalid(message),
            Error::Io { message } => crate::Error::Io(std::io::Error::other(message)),
            Error::Tls { message } => crate::Error::Tls(message),
            Error::Pki { message } => crate::Error::Pki(message),
        }
    }
}

impl Error {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid { .. }
            | Error::Key { .. }
            | Error::Refused { .. }
            | Error::Tls { .. }
            | Error::Pki { .. } => 400,
            Error::Denied { .. } => 403,
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } => 409,
            Error::Integrity { .. } | Error::Storage { .. } => 500,
            Error::Io { .. } => 502,
        }
    }
}

// ---- Sync status -------------------------------------------------------------------------

/// A quarantined document, as `sync_status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuarantineItem {
    pub id: DocId,
    pub since: Time,
    pub reason: String,
}

/// A dossier opened here whose changes wait for its identity to be qualified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Held {
    pub ins: Ins,
    pub changes: usize,
}

/// An outbox entry this site could not read, never sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Withheld {
    /// Its sequence in the outbox.
    pub change: u64,
    pub since: Time,
    pub reason: String,
}

/// A failure of a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecentError {
    pub at: Time,
    pub kind: String,
    pub message: String,
}

/// The daemon's view of its link to the host, and the settings it runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Link {
    pub connected: bool,
    pub last_sync: Option<Time>,
    pub last_error: Option<String>,
    pub traces_acked: u64,
    pub log_head: u64,
    pub connections: u64,
    pub host_address: Option<std::net::SocketAddr>,
    /// `carnet.toml` as the daemon loaded it, in the file's own names.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub settings: Option<crate::config::Config>,
    pub rounds_ok: u64,
    pub rounds_failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: BTreeMap<String, u64>,
    pub recent_errors: Vec<RecentError>,
}

impl From<&super::LinkState> for Link {
    fn from(l: &super::LinkState) -> Self {
        Link {
            connected: l.connected,
            last_sync: time_opt(l.last_sync),
            last_error: l.last_error.clone(),
            traces_acked: l.traces_acked,
            log_head: l.log_head,
            connections: l.connections,
            host_address: l.host_address,
            settings: l.settings.clone(),
            rounds_ok: l.rounds_ok,
            rounds_failed: l.rounds_failed,
            bytes_sent: l.bytes_sent,
            bytes_received: l.bytes_received,
            errors: l.errors.clone(),
            recent_errors: l
                .recent_errors
                .iter()
                .map(|(at, kind, message)| RecentError {
                    at: Time(*at),
                    kind: kind.clone(),
                    message: message.clone(),
                })
                .collect(),
        }
    }
}

impl From<Link> for super::LinkState {
    fn from(l: Link) -> Self {
        super::LinkState {
            connected: l.connected,
            last_sync: untime(l.last_sync),
            last_error: l.last_error,
            traces_acked: l.traces_acked,
            log_head: l.log_head,
            connections: l.connections,
            host_address: l.host_address,
            settings: l.settings,
            rounds_ok: l.rounds_ok,
            rounds_failed: l.rounds_failed,
            bytes_sent: l.bytes_sent,
            bytes_received: l.bytes_received,
            errors: l.errors,
            recent_errors: l
                .recent_errors
                .into_iter()
                .map(|e| (e.at.0, e.kind, e.message))
                .collect(),
        }
    }
}

/// A site's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Certificate {
    pub not_after: Time,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    pub host_pinned: bool,
    pub host_pins: usize,
}

/// A restore not caught up with the host yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Restored {
    pub taken_at: Time,
    pub restored_at: Time,
}

/// A file alone in the inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Orphan {
    pub name: String,
    pub since: Time,
    /// What it waits for.
    pub missing: String,
}

fn orphans(list: &[crate::inbox::Orphan]) -> Vec<Orphan> {
    list.iter()
        .map(|o| Orphan {
            name: o.name.clone(),
            since: Time(o.since),
            missing: o.missing.clone(),
        })
        .collect()
}

fn unorphans(list: Vec<Orphan>) -> Vec<crate::inbox::Orphan> {
    list.into_iter()
        .map(|o| crate::inbox::Orphan {
            name: o.name,
            since: o.since.0,
            missing: o.missing,
        })
        .collect()
}

/// What in the inbox needs a person, counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboxSummary {
    /// Refused files.
    pub rejected: usize,
    pub orphans: Vec<Orphan>,
    /// Files in clear left in `done/`.
    pub unclaimed: Vec<String>,
}

/// Where sync stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SyncStatus {
    /// When the host's records were last confirmed; `null` if never.
    pub authority_as_of: Option<Time>,
    pub lease_expired: bool,
    pub pending: u64,
    pub pending_by_kind: BTreeMap<String, u64>,
    pub pending_traces: Option<u64>,
    pub missing_bodies: usize,
    pub cursor: u64,
    pub cursor_lag: Option<u64>,
    pub quarantine: Vec<QuarantineItem>,
    pub conflicts: Vec<DocId>,
    pub held: Vec<Held>,
    pub withheld: Vec<Withheld>,
    /// The daemon's link; `null` when no daemon runs.
    pub link: Option<Link>,
    pub certificate: Option<Certificate>,
    pub restored: Option<Restored>,
    pub inbox: Option<InboxSummary>,
    pub inbox_error: Option<String>,
}

impl From<&super::SyncStatus> for SyncStatus {
    fn from(s: &super::SyncStatus) -> Self {
        SyncStatus {
            authority_as_of: (s.authority_as_of > 0).then_some(Time(s.authority_as_of)),
            lease_expired: s.lease_expired,
            pending: s.pending,
            pending_by_kind: s.pending_by_kind.clone(),
            pending_traces: s.pending_traces,
            missing_bodies: s.missing_bodies,
            cursor: s.cursor,
            cursor_lag: s.cursor_lag,
            quarantine: s
                .quarantine
                .iter()
                .map(|(id, at, reason)| QuarantineItem {
                    id: DocId(*id),
                    since: Time(*at),
                    reason: reason.clone(),
                })
                .collect(),
            conflicts: s.conflicts.iter().copied().map(DocId).collect(),
            held: s
                .held
                .iter()
                .map(|(i, n)| Held {
                    ins: ins(i),
                    changes: *n,
                })
                .collect(),
            withheld: s
                .withheld
                .iter()
                .map(|(seq, at, reason)| Withheld {
                    change: *seq,
                    since: Time(*at),
                    reason: reason.clone(),
                })
                .collect(),
            link: s.link.as_ref().map(Into::into),
            certificate: s.certificate.as_ref().map(|c| Certificate {
                not_after: Time(c.not_after),
                days_left: c.days_left,
                host_pinned: c.host_pinned,
                host_pins: c.host_pins,
            }),
            restored: s.restored.as_ref().map(|m| Restored {
                taken_at: Time(m.taken_at),
                restored_at: Time(m.restored_at),
            }),
            inbox: s.inbox.as_ref().map(|i| InboxSummary {
                rejected: i.rejected,
                orphans: orphans(&i.orphans),
                unclaimed: i.unclaimed.clone(),
            }),
            inbox_error: s.inbox_error.clone(),
        }
    }
}

impl From<SyncStatus> for super::SyncStatus {
    fn from(s: SyncStatus) -> Self {
        super::SyncStatus {
            authority_as_of: s.authority_as_of.map_or(0, |t| t.0),
            lease_expired: s.lease_expired,
            pending: s.pending,
            pending_by_kind: s.pending_by_kind,
            pending_traces: s.pending_traces,
            missing_bodies: s.missing_bodies,
            cursor: s.cursor,
            cursor_lag: s.cursor_lag,
            quarantine: s
                .quarantine
                .into_iter()
                .map(|q| (q.id.0, q.since.0, q.reason))
                .collect(),
            conflicts: s.conflicts.into_iter().map(|d| d.0).collect(),
            held: s.held.into_iter().map(|h| (h.ins.0, h.changes)).collect(),
            withheld: s
                .withheld
                .into_iter()
                .map(|w| (w.change, w.since.0, w.reason))
                .collect(),
            link: s.link.map(Into::into),
            certificate: s.certificate.map(|c| super::CertificateStatus {
                not_after: c.not_after.0,
                days_left: c.days_left,
                host_pinned: c.host_pinned,
                host_pins: c.host_pins,
            }),
            restored: s.restored.map(|m| store::RestoreMark {
                taken_at: m.taken_at.0,
                restored_at: m.restored_at.0,
            }),
            inbox: s.inbox.map(|i| crate::inbox::InboxSummary {
                rejected: i.rejected,
                orphans: unorphans(i.orphans),
                unclaimed: i.unclaimed,
            }),
            inbox_error: s.inbox_error,
        }
    }
}

// ---- Inbox, imports, rounds, handovers ---------------------------------------------------

/// A file the inbox refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejected {
    pub name: String,
    pub at: Time,
    /// It came with a sidecar.
    pub sidecar: bool,
    pub reason: String,
    /// The command that helps now, if one does.
    pub fix: Option<String>,
}

/// What in the inbox needs a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboxState {
    pub rejected: Vec<Rejected>,
    pub orphans: Vec<Orphan>,
    pub unclaimed: Vec<String>,
}

impl From<&crate::inbox::InboxState> for InboxState {
    fn from(s: &crate::inbox::InboxState) -> Self {
        InboxState {
            rejected: s
                .rejected
                .iter()
                .map(|r| Rejected {
                    name: r.name.clone(),
                    at: Time(r.at),
                    sidecar: r.sidecar,
                    reason: r.reason.clone(),
                    fix: r.fix.clone(),
                })
                .collect(),
            orphans: orphans(&s.orphans),
            unclaimed: s.unclaimed.clone(),
        }
    }
}

impl From<InboxState> for crate::inbox::InboxState {
    fn from(s: InboxState) -> Self {
        crate::inbox::InboxState {
            rejected: s
                .rejected
                .into_iter()
                .map(|r| crate::inbox::Rejected {
                    name: r.name,
                    at: r.at.0,
                    sidecar: r.sidecar,
                    reason: r.reason,
                    fix: r.fix,
                })
                .collect(),
            orphans: unorphans(s.orphans),
            unclaimed: s.unclaimed,
        }
    }
}

/// A document a FHIR import filed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Imported {
    pub id: DocId,
    pub already_stored: bool,
}

/// What a sync round did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Round {
    pub pushed: u64,
    pub traces: u64,
    pub pulled: usize,
    pub purged: usize,
    pub withdrawn: usize,
    pub bodies: usize,
    pub bodies_waiting: usize,
    pub returned: usize,
    pub log_head: u64,
    pub wire_sent: u64,
    pub wire_received: u64,
    pub round_trips: u64,
    pub renewed: bool,
    /// The round's connection started at the path the last one measured.
    #[serde(default)]
    pub resumed: bool,
}

impl From<&crate::session::RoundReport> for Round {
    fn from(r: &crate::session::RoundReport) -> Self {
        Round {
            pushed: r.pushed,
            traces: r.traces,
            pulled: r.pulled,
            purged: r.purged,
            withdrawn: r.withdrawn,
            bodies: r.bodies,
            bodies_waiting: r.bodies_waiting,
            returned: r.returned,
            log_head: r.log_head,
            wire_sent: r.wire_sent,
            wire_received: r.wire_received,
            round_trips: r.round_trips,
            renewed: r.renewed,
            resumed: r.resumed,
        }
    }
}

impl From<Round> for crate::session::RoundReport {
    fn from(r: Round) -> Self {
        crate::session::RoundReport {
            pushed: r.pushed,
            traces: r.traces,
            pulled: r.pulled,
            purged: r.purged,
            withdrawn: r.withdrawn,
            bodies: r.bodies,
            bodies_waiting: r.bodies_waiting,
            returned: r.returned,
            log_head: r.log_head,
            wire_sent: r.wire_sent,
            wire_received: r.wire_received,
            round_trips: r.round_trips,
            renewed: r.renewed,
            resumed: r.resumed,
        }
    }
}

/// A document with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DocReason {
    pub doc: DocId,
    pub reason: String,
}

/// A body the receiver lacked, and the bytes of it it kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Lacking {
    pub doc: DocId,
    pub kept: u64,
}

/// What a handover to a peer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Handover {
    pub peer: String,
    /// The receiving site.
    pub site_id: u32,
    pub records_admitted: usize,
    pub records_unchanged: usize,
    pub documents_new: usize,
    pub documents_merged: usize,
    pub documents_refused: Vec<DocReason>,
    pub traces_kept: usize,
    pub lease_from: Option<Time>,
    pub lacking_bodies: Vec<Lacking>,
    pub bodies_sent: u64,
    pub body_bytes_sent: u64,
    /// Bodies the receiver lacked.
    pub lacking: u64,
    pub wire_sent: u64,
    pub wire_received: u64,
}

/// The documents a handover's receiver refused, and why.
fn doc_reasons(refused: &[(carnet_store::ids::DocId, String)]) -> Vec<DocReason> {
    refused
        .iter()
        .map(|(doc, reason)| DocReason {
            doc: DocId(*doc),
            reason: reason.clone(),
        })
        .collect()
}

/// `doc_reasons`, back.
fn from_doc_reasons(refused: Vec<DocReason>) -> Vec<(carnet_store::ids::DocId, String)> {
    refused.into_iter().map(|d| (d.doc.0, d.reason)).collect()
}

/// What a dossier asked of a peer did at the asking site: what it admitted of the peer's
/// handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Asked {
    pub peer: String,
    /// The site that handed the dossier over.
    pub site_id: u32,
    pub records_admitted: usize,
    pub records_unchanged: usize,
    pub documents_new: usize,
    pub documents_merged: usize,
    pub documents_refused: Vec<DocReason>,
    pub traces_kept: usize,
    pub lease_from: Option<Time>,
    /// Bodies still lacking here.
    pub lacking: u64,
}

impl From<&crate::peer::AskOutcome> for Asked {
    fn from(o: &crate::peer::AskOutcome) -> Self {
        let r = &o.report;
        Asked {
            peer: o.peer.clone(),
            site_id: o.site,
            records_admitted: r.records_admitted,
            records_unchanged: r.records_unchanged,
            documents_new: r.documents_new,
            documents_merged: r.documents_merged,
            documents_refused: doc_reasons(&r.documents_refused),
            traces_kept: r.traces_kept,
            lease_from: time_opt(r.lease_from),
            lacking: o.lacking,
        }
    }
}

impl From<Asked> for crate::peer::AskOutcome {
    fn from(a: Asked) -> Self {
        crate::peer::AskOutcome {
            peer: a.peer,
            site: a.site_id,
            report: store::HandoverReport {
                records_admitted: a.records_admitted,
                records_unchanged: a.records_unchanged,
                documents_new: a.documents_new,
                documents_merged: a.documents_merged,
                documents_refused: from_doc_reasons(a.documents_refused),
                traces_kept: a.traces_kept,
                lease_from: untime(a.lease_from),
                lacking: Vec::new(),
            },
            lacking: a.lacking,
        }
    }
}

impl From<&crate::peer::HandoverOutcome> for Handover {
    fn from(o: &crate::peer::HandoverOutcome) -> Self {
        let r = &o.report;
        Handover {
            peer: o.peer.clone(),
            site_id: o.site,
            records_admitted: r.records_admitted,
            records_unchanged: r.records_unchanged,
            documents_new: r.documents_new,
            documents_merged: r.documents_merged,
            documents_refused: doc_reasons(&r.documents_refused),
            traces_kept: r.traces_kept,
            lease_from: time_opt(r.lease_from),
            lacking_bodies: r
                .lacking
                .iter()
                .map(|(doc, kept)| Lacking {
                    doc: DocId(*doc),
                    kept: *kept,
                })
                .collect(),
            bodies_sent: o.bodies_sent,
            body_bytes_sent: o.body_bytes_sent,
            lacking: o.lacking,
            wire_sent: o.wire_sent,
            wire_received: o.wire_received,
        }
    }
}

impl From<Handover> for crate::peer::HandoverOutcome {
    fn from(h: Handover) -> Self {
        crate::peer::HandoverOutcome {
            peer: h.peer,
            site: h.site_id,
            report: store::HandoverReport {
                records_admitted: h.records_admitted,
                records_unchanged: h.records_unchanged,
                documents_new: h.documents_new,
                documents_merged: h.documents_merged,
                documents_refused: from_doc_reasons(h.documents_refused),
                traces_kept: h.traces_kept,
                lease_from: untime(h.lease_from),
                lacking: h
                    .lacking_bodies
                    .into_iter()
                    .map(|l| (l.doc.0, l.kept))
                    .collect(),
            },
            bodies_sent: h.bodies_sent,
            body_bytes_sent: h.body_bytes_sent,
            lacking: h.lacking,
            wire_sent: h.wire_sent,
            wire_received: h.wire_received,
        }
    }
}

// ---- The host's register, fleet and PKI --------------------------------------------------

/// A certificate of an enrolled site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SiteCert {
    pub fingerprint: Hex32,
    pub not_before: Time,
    pub not_after: Time,
    pub retired: bool,
}

/// An enrolled site, as the host's register holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Site {
    pub site_id: u32,
    pub name: String,
    pub finess: String,
    pub revoked: bool,
    pub certs: Vec<SiteCert>,
    pub host_address: Option<String>,
}

/// Site `id` as the register holds it.
pub fn site(id: u32, s: &crate::enrol::SiteRecord) -> Site {
    Site {
        site_id: id,
        name: s.name.clone(),
        finess: s.finess.clone(),
        revoked: s.revoked,
        certs: s
            .certs
            .iter()
            .map(|c| SiteCert {
                fingerprint: Hex32(c.fingerprint),
                not_before: Time(c.not_before),
                not_after: Time(c.not_after),
                retired: c.retired,
            })
            .collect(),
        host_address: s.host_address.clone(),
    }
}

fn unsite(s: Site) -> (u32, crate::enrol::SiteRecord) {
    (
        s.site_id,
        crate::enrol::SiteRecord {
            name: s.name,
            finess: s.finess,
            revoked: s.revoked,
            certs: s
                .certs
                .into_iter()
                .map(|c| crate::enrol::SiteCert {
                    fingerprint: c.fingerprint.0,
                    not_before: c.not_before.0,
                    not_after: c.not_after.0,
                    retired: c.retired,
                })
                .collect(),
            host_address: s.host_address,
        },
    )
}

/// A renewal a site asked for over sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Renewal {
    pub site_id: u32,
    /// The new public key, DER, base64.
    pub public_key: Base64,
    pub requested_at: Time,
    /// The certificate issued, DER, base64; `null` while it waits for the CA.
    pub issued: Option<Base64>,
}

impl From<&crate::enrol::Renewal> for Renewal {
    fn from(r: &crate::enrol::Renewal) -> Self {
        Renewal {
            site_id: r.site,
            public_key: Base64(r.public_key.clone()),
            requested_at: Time(r.requested_at),
            issued: r.issued.clone().map(Base64),
        }
    }
}

/// The last failure seen of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LastError {
    pub at: Time,
    pub message: String,
}

/// A site as the host's operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SiteOverview {
    pub site_id: u32,
    pub name: String,
    pub finess: String,
    pub revoked: bool,
    pub connected: bool,
    pub last_contact: Option<Time>,
    pub version: Option<String>,
    pub log_head: u64,
    pub changes_not_pulled: Option<u64>,
    pub bodies_not_pulled: Option<u64>,
    pub changes_not_pushed: Option<u64>,
    pub traces_not_sent: Option<u64>,
    pub bodies_owed: u64,
    pub returned: u64,
    pub lease_until: Option<Time>,
    pub quarantine: Option<u64>,
    pub conflicts: Option<u64>,
    pub pending_grants: u64,
    pub pending_pins: u64,
    pub rounds: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub errors: BTreeMap<String, u64>,
    pub last_error: Option<LastError>,
    /// The path from the host to the site as the host last measured it sending (its next
    /// connection starts from it within the hour); absent until measured (since the host's
    /// daemon started, or within the hour before).
    #[serde(default)]
    pub link: Option<LinkMeasured>,
}

/// The path from the host to a site, as a connection measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LinkMeasured {
    /// Delivery rate, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Smallest round trip, microseconds.
    pub min_rtt_micros: u64,
    pub measured_at: Time,
    /// The site's last connection since the host's daemon started began at the path measured
    /// before it; absent (null) when the site has not connected since (the path was read
    /// from the host's replica).
    #[serde(default)]
    pub last_connection_resumed: Option<bool>,
}

impl From<&crate::fleet::LinkSeen> for LinkMeasured {
    fn from(l: &crate::fleet::LinkSeen) -> Self {
        LinkMeasured {
            rate_bytes_per_s: l.rate,
            min_rtt_micros: l.min_rtt_micros,
            measured_at: Time(l.measured_at),
            last_connection_resumed: l.last_connection_resumed,
        }
    }
}

impl From<LinkMeasured> for crate::fleet::LinkSeen {
    fn from(l: LinkMeasured) -> Self {
        crate::fleet::LinkSeen {
            rate: l.rate_bytes_per_s,
            min_rtt_micros: l.min_rtt_micros,
            measured_at: l.measured_at.0,
            last_connection_resumed: l.last_connection_resumed,
        }
    }
}

impl From<&crate::fleet::SiteOverview> for SiteOverview {
    fn from(s: &crate::fleet::SiteOverview) -> Self {
        SiteOverview {
            site_id: s.site,
            name: s.name.clone(),
            finess: s.finess.clone(),
            revoked: s.revoked,
            connected: s.connected,
            last_contact: time_opt(s.last_contact),
            version: s.version.clone(),
            log_head: s.log_head,
            changes_not_pulled: s.changes_not_pulled,
            bodies_not_pulled: s.bodies_not_pulled,
            changes_not_pushed: s.changes_not_pushed,
            traces_not_sent: s.traces_not_sent,
            bodies_owed: s.bodies_owed,
            returned: s.returned,
            lease_until: time_opt(s.lease_until),
            quarantine: s.quarantine,
            conflicts: s.conflicts,
            pending_grants: s.pending_grants,
            pending_pins: s.pending_pins,
            rounds: s.rounds,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            errors: s.errors.clone(),
            last_error: s.last_error.as_ref().map(|(at, message)| LastError {
                at: Time(*at),
                message: message.clone(),
            }),
            link: s.link.as_ref().map(Into::into),
        }
    }
}

impl From<SiteOverview> for crate::fleet::SiteOverview {
    fn from(s: SiteOverview) -> Self {
        crate::fleet::SiteOverview {
            site: s.site_id,
            name: s.name,
            finess: s.finess,
            revoked: s.revoked,
            connected: s.connected,
            last_contact: untime(s.last_contact),
            version: s.version,
            log_head: s.log_head,
            changes_not_pulled: s.changes_not_pulled,
            bodies_not_pulled: s.bodies_not_pulled,
            changes_not_pushed: s.changes_not_pushed,
            traces_not_sent: s.traces_not_sent,
            bodies_owed: s.bodies_owed,
            returned: s.returned,
            lease_until: untime(s.lease_until),
            quarantine: s.quarantine,
            conflicts: s.conflicts,
            pending_grants: s.pending_grants,
            pending_pins: s.pending_pins,
            rounds: s.rounds,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            errors: s.errors,
            last_error: s.last_error.map(|e| (e.at.0, e.message)),
            link: s.link.map(Into::into),
        }
    }
}

/// The host's CA and certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PkiHost {
    pub ca_not_after: Time,
    pub host_not_after: Time,
    pub ca_offline: bool,
    pub host_pin: Hex32,
    pub next_pin: Option<Hex32>,
    pub revoked_pins: Vec<Hex32>,
}

// ---- Host oversight: requests, conflicts, quarantine, emergencies, notifications ---------

impl Word for store::RequestKind {
    fn word(self) -> &'static str {
        self.as_str()
    }
    fn all() -> Vec<Self> {
        vec![store::RequestKind::Pin, store::RequestKind::Consent]
    }
    fn from_word(text: &str) -> StoreResult<Self> {
        match text.trim() {
            "pin" => Ok(store::RequestKind::Pin),
            "consent" => Ok(store::RequestKind::Consent),
            other => Err(invalid(format!(
                "unknown request kind '{other}': expected pin or consent"
            ))),
        }
    }
}

impl Word for store::QuarantineState {
    fn word(self) -> &'static str {
        self.as_str()
    }
    fn all() -> Vec<Self> {
        use store::QuarantineState as Q;
        vec![Q::Held, Q::Waiting, Q::Taken, Q::Returned]
    }
    fn from_word(text: &str) -> StoreResult<Self> {
        Self::all()
            .into_iter()
            .find(|q| q.as_str() == text.trim())
            .ok_or_else(|| {
                invalid(format!(
                    "unknown quarantine state '{}': expected held, waiting, taken or returned",
                    text.trim()
                ))
            })
    }
}

/// A site's request waiting for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SiteRequest {
    pub kind: Name<store::RequestKind>,
    pub site_id: u32,
    pub ins: Ins,
    pub rpps: Option<Rpps>,
    pub at: Time,
}

impl From<&store::SiteRequest> for SiteRequest {
    fn from(r: &store::SiteRequest) -> Self {
        SiteRequest {
            kind: Name(r.kind),
            site_id: r.site.0,
            ins: ins(&r.ins),
            rpps: r.rpps.as_ref().map(rpps),
            at: Time(r.at),
        }
    }
}

/// Who wrote a replacing document, where and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Written {
    pub author: Author,
    pub site_id: u32,
    pub created_at: Time,
}

/// One branch of a conflict: a replacing document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Branch {
    pub doc: DocId,
    /// The version vector of the change that recorded the replacement (site id → counter).
    pub recorded_at: BTreeMap<u32, u64>,
    /// `null` when this replica does not hold the document (yet).
    pub written: Option<Written>,
}

/// A document with concurrent replacements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Conflict {
    pub doc: DocId,
    pub branches: Vec<Branch>,
}

impl From<&store::Conflict> for Conflict {
    fn from(c: &store::Conflict) -> Self {
        Conflict {
            doc: DocId(c.doc),
            branches: c
                .branches
                .iter()
                .map(|b| Branch {
                    doc: DocId(b.doc),
                    recorded_at: clock(&b.recorded_at),
                    written: b.written.as_ref().map(|(author, site, at)| Written {
                        author: author.into(),
                        site_id: site.0,
                        created_at: Time(*at),
                    }),
                })
                .collect(),
        }
    }
}

impl From<Conflict> for store::Conflict {
    fn from(c: Conflict) -> Self {
        store::Conflict {
            doc: c.doc.0,
            branches: c
                .branches
                .into_iter()
                .map(|b| store::Branch {
                    doc: b.doc.0,
                    recorded_at: unclock(b.recorded_at),
                    written: b
                        .written
                        .map(|w| (w.author.into(), SiteId(w.site_id), w.created_at.0)),
                })
                .collect(),
        }
    }
}

fn trace_who(a: &TraceActor) -> TraceWho {
    match a {
        TraceActor::Professional { rpps, profession } => TraceWho::Professional {
            rpps: Rpps(rpps.clone()),
            profession: profession.map(Name),
        },
        TraceActor::Holder => TraceWho::Holder,
        TraceActor::Representative(id) => TraceWho::Representative { id: RepId(*id) },
        TraceActor::System => TraceWho::System,
    }
}

fn untrace_who(a: TraceWho) -> TraceActor {
    match a {
        TraceWho::Professional { rpps, profession } => TraceActor::Professional {
            rpps: rpps.0,
            profession: profession.map(|p| p.0),
        },
        TraceWho::Holder => TraceActor::Holder,
        TraceWho::Representative { id } => TraceActor::Representative(id.0),
        TraceWho::System => TraceActor::System,
    }
}

/// A quarantined document filed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Refiling {
    /// The new document.
    pub doc: DocId,
    pub ins: Ins,
    pub at: Time,
    pub by: TraceWho,
}

/// A quarantined document: its metadata, why and since when, what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuarantineEntry {
    pub id: DocId,
    pub document: Document,
    pub reason: String,
    pub since: Time,
    /// The quarantined document this one refiles, if it does.
    pub refile_of: Option<DocId>,
    pub refiled: Option<Refiling>,
    pub state: Name<store::QuarantineState>,
}

impl From<&store::QuarantineEntry> for QuarantineEntry {
    fn from(q: &store::QuarantineEntry) -> Self {
        QuarantineEntry {
            id: DocId(q.id),
            document: (&q.record.meta).into(),
            reason: q.record.reason.clone(),
            since: Time(q.record.at),
            refile_of: q.record.refile_of.map(DocId),
            refiled: q.record.refiled.as_ref().map(|r| Refiling {
                doc: DocId(r.doc),
                ins: ins(&r.ins),
                at: Time(r.at),
                by: trace_who(&r.by),
            }),
            state: Name(q.state),
        }
    }
}

impl TryFrom<QuarantineEntry> for store::QuarantineEntry {
    type Error = carnet_store::Error;

    fn try_from(q: QuarantineEntry) -> StoreResult<Self> {
        Ok(store::QuarantineEntry {
            id: q.id.0,
            record: store::Quarantined {
                meta: q.document.try_into()?,
                reason: q.reason,
                at: q.since.0,
                refile_of: q.refile_of.map(|d| d.0),
                refiled: q.refiled.map(|r| store::Refiling {
                    doc: r.doc.0,
                    ins: r.ins.0,
                    at: r.at.0,
                    by: untrace_who(r.by),
                }),
            },
            state: q.state.0,
        })
    }
}

/// A review of an emergency access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Review {
    pub at: Time,
    pub by: String,
    pub note: String,
}

/// An emergency access as the host judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Emergency {
    pub id: u64,
    pub site_id: u32,
    pub trace_seq: Option<u64>,
    pub at: Time,
    pub judged_at: Time,
    pub actor: TraceWho,
    pub action: String,
    pub mode: Name<AccessMode>,
    pub ins: String,
    pub doc: Option<DocId>,
    pub stated_reason: Option<String>,
    pub decided_offline: bool,
    pub claimed_authority_version: u64,
    pub allowed: bool,
    pub conforming: bool,
    pub rule: u8,
    pub finding: String,
    pub review: Option<Review>,
}

impl From<&store::Emergency> for Emergency {
    fn from(e: &store::Emergency) -> Self {
        Emergency {
            id: e.id,
            site_id: e.site.0,
            trace_seq: e.trace_seq,
            at: Time(e.at),
            judged_at: Time(e.judged_at),
            actor: trace_who(&e.actor),
            action: e.action.clone(),
            mode: Name(e.mode),
            ins: e.ins.clone(),
            doc: e.doc.map(DocId),
            stated_reason: e.stated_reason.clone(),
            decided_offline: e.decided_offline,
            claimed_authority_version: e.claimed_authority_version,
            allowed: e.allowed,
            conforming: e.conforming,
            rule: e.rule,
            finding: e.finding.clone(),
            review: e.review.as_ref().map(|r| Review {
                at: Time(r.at),
                by: r.by.clone(),
                note: r.note.clone(),
            }),
        }
    }
}

impl From<Emergency> for store::Emergency {
    fn from(e: Emergency) -> Self {
        store::Emergency {
            id: e.id,
            site: SiteId(e.site_id),
            trace_seq: e.trace_seq,
            at: e.at.0,
            judged_at: e.judged_at.0,
            actor: untrace_who(e.actor),
            action: e.action,
            mode: e.mode.0,
            ins: e.ins,
            doc: e.doc.map(|d| d.0),
            stated_reason: e.stated_reason,
            decided_offline: e.decided_offline,
            claimed_authority_version: e.claimed_authority_version,
            allowed: e.allowed,
            conforming: e.conforming,
            rule: e.rule,
            finding: e.finding,
            review: e.review.map(|r| store::Review {
                at: r.at.0,
                by: r.by,
                note: r.note,
            }),
        }
    }
}

/// Who a notification is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Recipient {
    Holder,
    Representative { id: RepId },
    MedecinTraitant { rpps: Rpps },
}

/// What a notification tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotificationKind {
    /// A break-glass or centre 15 access (`emergency`: its id in `emergencies`).
    EmergencyAccess {
        mode: Name<AccessMode>,
        emergency: u64,
    },
    /// A professional's first access to the dossier.
    FirstAccess { rpps: Rpps },
    /// A document hidden from the holder is announced to them (`doc`).
    DocumentAnnounced,
}

/// A notification of the host, as the API answers it and the spool writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Notification {
    pub id: u64,
    #[serde(flatten)]
    pub kind: NotificationKind,
    pub ins: Ins,
    pub recipients: Vec<Recipient>,
    pub at: Time,
    /// The site the event came from.
    pub site_id: u32,
    pub doc: Option<DocId>,
    /// What the holder is told (French).
    pub text: String,
}

impl From<&store::Notification> for Notification {
    fn from(n: &store::Notification) -> Self {
        use store::NotificationKind as K;
        Notification {
            id: n.id,
            kind: match &n.kind {
                K::EmergencyAccess { mode, emergency } => NotificationKind::EmergencyAccess {
                    mode: Name(*mode),
                    emergency: *emergency,
                },
                K::FirstAccess { rpps } => NotificationKind::FirstAccess {
                    rpps: Rpps(rpps.clone()),
                },
                K::DocumentAnnounced { .. } => NotificationKind::DocumentAnnounced,
            },
            ins: ins(&n.ins),
            recipients: n
                .recipients
                .iter()
                .map(|r| match r {
                    store::Recipient::Holder => Recipient::Holder,
                    store::Recipient::Representative(id) => {
                        Recipient::Representative { id: RepId(*id) }
                    }
                    store::Recipient::MedecinTraitant(r) => Recipient::MedecinTraitant {
                        rpps: Rpps(r.clone()),
                    },
                })
                .collect(),
            at: Time(n.at),
            site_id: n.site.0,
            doc: n.doc.map(DocId),
            text: n.patient_text(),
        }
    }
}

impl TryFrom<Notification> for store::Notification {
    type Error = carnet_store::Error;

    fn try_from(n: Notification) -> StoreResult<Self> {
        use store::NotificationKind as K;
        let doc = n.doc.map(|d| d.0);
        Ok(store::Notification {
            id: n.id,
            kind: match n.kind {
                NotificationKind::EmergencyAccess { mode, emergency } => K::EmergencyAccess {
                    mode: mode.0,
                    emergency,
                },
                NotificationKind::FirstAccess { rpps } => K::FirstAccess { rpps: rpps.0 },
                NotificationKind::DocumentAnnounced => K::DocumentAnnounced {
                    doc: doc.ok_or_else(|| invalid("a document announced names its doc"))?,
                },
            },
            ins: n.ins.0,
            recipients: n
                .recipients
                .into_iter()
                .map(|r| match r {
                    Recipient::Holder => store::Recipient::Holder,
                    Recipient::Representative { id } => store::Recipient::Representative(id.0),
                    Recipient::MedecinTraitant { rpps } => {
                        store::Recipient::MedecinTraitant(rpps.0)
                    }
                })
                .collect(),
            at: n.at.0,
            site: SiteId(n.site_id),
            doc,
        })
    }
}

/// An upload named by a call and not held: the daemon claims uploads before it decodes a
/// call (`local::answer`), so one left is unknown, expired or claimed already.
fn not_held(token: &str) -> carnet_store::Error {
    invalid(format!(
        "upload {token:?} is not held here: send the body with POST /v1/bodies, then name the \
         token it answered within 10 minutes, once"
    ))
}

/// What a call carries that may be sent ahead of it (`POST /v1/bodies`).
#[derive(Debug)]
pub enum Carried<'a> {
    /// A document's body.
    Body(&'a mut Vec<u8>),
    /// A FHIR import's JSON text.
    Text(&'a mut String),
}

impl Carried<'_> {
    /// Its size.
    pub fn len(&self) -> usize {
        match self {
            Carried::Body(b) => b.len(),
            Carried::Text(t) => t.len(),
        }
    }

    /// True when it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes its bytes, leaving it empty.
    pub fn take(&mut self) -> Vec<u8> {
        match self {
            Carried::Body(b) => std::mem::take(*b),
            Carried::Text(t) => std::mem::take(*t).into_bytes(),
        }
    }

    /// Puts `bytes` in it (a text must be UTF-8).
    pub fn fill(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        match self {
            Carried::Body(b) => **b = bytes,
            Carried::Text(t) => {
                **t = String::from_utf8(bytes)
                    .map_err(|_| "the FHIR text sent ahead is not UTF-8".to_string())?
            }
        }
        Ok(())
    }
}

/// What `POST /v1/bodies` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Upload {
    /// Name it in `document.upload` of the call that files the body.
    pub upload: String,
    /// The bytes received.
    pub bytes: u64,
}

/// The answer of `POST /v1/bodies`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadOutcome {
    /// Held (status 200).
    Ok(Upload),
    /// Refused: too large (413), or the connection failed.
    Error(Error),
}

impl Request {
    /// What the call carries that may be sent ahead, with its `upload` field: a document's
    /// body (`put_document`, `replace_document`) or a FHIR import's text (`import_fhir`).
    pub fn carried_mut(&mut self) -> Option<(Carried<'_>, &mut Option<String>)> {
        match self {
            Request::PutDocument { document, .. } | Request::ReplaceDocument { document, .. } => {
                Some((Carried::Body(&mut document.body.0), &mut document.upload))
            }
            Request::ImportFhir { json, upload } => Some((Carried::Text(json), upload)),
            _ => None,
        }
    }
}

/// What changed, in the change feed (`GET /v1/changes`): ids only, never content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A document stored, updated, merged, withdrawn or removed: read it to know which.
    Document { ins: Ins, doc: DocId },
    /// A dossier's head: created, qualified, closed, reopened or purged.
    Dossier { ins: Ins },
    /// A dossier's grants, revocations, blocks, emergency settings or consent in person.
    Grants { ins: Ins },
    /// Host: a notification was created (`notifications`).
    Notification { id: u64 },
    /// Site: the sync state moved (`sync_status`).
    Sync,
}

impl From<&store::Changed> for Change {
    fn from(c: &store::Changed) -> Self {
        match c {
            store::Changed::Document { ins, id } => Change::Document {
                ins: Ins(ins.clone()),
                doc: DocId(*id),
            },
            store::Changed::Dossier { ins } => Change::Dossier {
                ins: Ins(ins.clone()),
            },
            store::Changed::Grants { ins } => Change::Grants {
                ins: Ins(ins.clone()),
            },
            store::Changed::Notification { id } => Change::Notification { id: *id },
            store::Changed::Sync => Change::Sync,
        }
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChangeEntry {
    /// Its place in the feed: follow from it once it was handled.
    pub seq: u64,
    #[serde(flatten)]
    pub change: Change,
}

/// The change feed's entries after a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Changes {
    /// In the order they committed (empty when the wait ended with nothing new).
    pub results: Vec<ChangeEntry>,
    /// The cursor to follow from (`since` of the next call).
    pub last_seq: u64,
}

/// The cursor is older than what the feed keeps: read the state again, then follow from
/// `last_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CursorGone {
    pub message: String,
    /// Cursors below it are refused.
    pub floor: u64,
    /// The latest entry's cursor.
    pub last_seq: u64,
}

/// What `GET /v1/changes` answers.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangesOutcome {
    /// The entries (status 200).
    Ok(Changes),
    /// The cursor is too old (status 410).
    Gone(CursorGone),
    /// A query that does not parse, or a cursor ahead of the feed (400), or the store failing.
    Error(Error),
}

#[cfg(test)]
#[path = "wire_golden.rs"]
mod golden;
