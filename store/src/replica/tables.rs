//! The redb tables of a replica and the stored-row encodings.
//!
//! Invariant: no table holds an INS, an RPPS, a document id, a name or a title in clear. Dossiers
//! are keyed by a keyed BLAKE3 blind index of the INS, professionals by `rpps_index` (the same
//! under a tag), documents by their stored id (`doc_map`: a keyed permutation of the id);
//! bodies and document metadata are padded to size buckets (`padding`) before sealing; every
//! value with patient data is sealed (see `crypto`), with
//! associated data naming the table and the row, so a sealed value moved to another row fails
//! to open.

use crate::kv::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::ids::SiteId;

/// Settings and key material: format version, config, keyring, counters.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Signed host records by subject key (see `subject_key`: a grant's names its professional by
/// `rpps_index`), sealed with the registry key.
pub const AUTHORITY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("authority");
/// Each dossier's data key, wrapped by the master key, by blind index.
pub const DOSSIER_KEYS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("dossier_keys");
/// Purge receipts of dossiers purged here, by blind index (`Tombstone`).
pub const TOMBSTONES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tombstones");
/// Document metadata (`StoredDoc`), by stored document id (`doc_map`).
pub const DOCS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("docs");
/// Index of a dossier's documents: blind index ‖ stored document id (in no useful order: a
/// listing sorts what it decoded).
pub const DOSSIER_DOCS: TableDefinition<&[u8], ()> = TableDefinition::new("dossier_docs");
/// Producers' unique ids: blind index ‖ keyed hash of the unique id → stored document id, so a
/// document sent twice is recognised (and a dossier's entries go with it at purge).
pub const UNIQUE_IDS: TableDefinition<&[u8], &[u8; 16]> = TableDefinition::new("unique_ids");
/// Body chunks, sealed with the dossier key, cut as `body_chunk_plan` says (those a key
/// rotation sealed again from segments keep their cut, `segment_chunk_plan`): the chunk's
/// place (`ChunkPlace::kind`) ‖ stored document id ‖ chunk number (big-endian u32); see
/// `body_key`.
pub const BODIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bodies");
/// Where body chunks kept in the segment files are (`bodies`): the chunk's key as in `BODIES`
/// → its `segments::Location` (16 bytes). A chunk is here or in `BODIES`, never in both.
pub const BODY_PLACES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("body_places");
/// Professionals registered at this site, sealed with the registry key, by `rpps_index`.
pub const PROS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("professionals");
/// Trace entries (`StoredTrace`) by (origin site, sequence).
pub const AUDIT: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("audit");
/// Head of each origin's trace chain: postcard `(last seq, last hash)`.
pub const AUDIT_HEADS: TableDefinition<u32, &[u8]> = TableDefinition::new("audit_heads");
/// Host on PostgreSQL: the daemons added to the first one (`daemons`), number → the time it
/// joined (ms, little-endian).
pub const HOST_DAEMONS: TableDefinition<u32, u64> = TableDefinition::new("host_daemons");
/// Local changes not yet acknowledged by the host, in order (`OutboxItem`).
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Host: the professionals the host binds to each site (never a site's say-so): site (u32 BE) ‖
/// `rpps_index`.
pub const SITE_PROS: TableDefinition<&[u8], ()> = TableDefinition::new("site_pros");
/// Host: the same pairs, professional first: `rpps_index` ‖ site (u32 BE).
pub const PRO_SITES: TableDefinition<&[u8], ()> = TableDefinition::new("pro_sites");
/// Host: each site's scope: site (u32 BE) ‖ blind index → why (`scope_bit`).
pub const SCOPE: TableDefinition<&[u8], u8> = TableDefinition::new("scope");
/// Host: the sites whose scope holds a dossier: blind index ‖ site (u32 BE).
pub const SCOPE_SITES: TableDefinition<&[u8], ()> = TableDefinition::new("scope_sites");
/// Host: each site's change log (fan-out on write): (site, seq) → `LogItem`, sealed with the
/// registry key and bound to its site and sequence (`site_log_aad`), so the log says how many
/// entries a site got, not which dossiers or documents.
pub const SITE_LOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("site_log");
/// Host: what was returned to a site, repeated at each of its `Welcome`s so a lost
/// acknowledgement cannot lose it: a document (site u32 BE ‖ stored document id → why, in
/// words), or a dossier the site opened (site u32 BE ‖ blind index → its INS and why, sealed
/// with the registry key and bound to the key).
pub const RETURNED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("returned");
/// Host: purge receipts returned by sites: blind index ‖ site (u32 BE) → `PurgeReceipt`.
pub const SITE_RECEIPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("site_receipts");
/// Site: dossiers to purge after leaving the scope, recorded with the pull that said so and
/// cleared by the purge (resumed at open): blind index → sealed INS.
pub const PENDING_PURGES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("pending_purges");
/// Site: documents the host will not take, kept (sealed with the quarantine key) by stored
/// document id.
pub const QUARANTINE: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("quarantine");
/// Pieces of bodies still arriving from a peer: `stored document id ‖ offset (u64 BE)` → the piece,
/// sealed under the dossier key. Moved into `BODIES` once the body is complete and checked.
pub const PARTIAL_BODIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("partial_bodies");
/// Host: bodies a site owes (it pushed the document, the body has not come in whole yet):
/// `stored document id ‖ site (u32 BE)`. Told to the site at each `Welcome`, so a body survives any
/// broken round; dropped once the body is stored.
pub const OWED_BODIES: TableDefinition<&[u8], ()> = TableDefinition::new("owed_bodies");
/// Documents whose metadata is here and whose body is not yet (the bodies a round fetches),
/// kept with the metadata so that finding them costs nothing when there are none; by stored
/// document id.
pub const MISSING_BODIES: TableDefinition<&[u8; 16], ()> = TableDefinition::new("missing_bodies");
/// Site: pending grants (consent given in person), `blind index ‖ rpps_index` → when.
pub const PENDING_GRANTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending_grants");
/// Host: documents hidden from the patient whose patient was told (stored document id → when).
pub const ANNOUNCEMENTS: TableDefinition<&[u8; 16], i64> = TableDefinition::new("announcements");
/// Host: the documents hidden from the patient (`INVISIBLE_PATIENT`), stored document id → when
/// filed: the announcement timer's queue, kept by every metadata write (`Replica::put_meta`) and
/// by `forget_document`, so a pass opens only the documents due, never the whole store. A
/// document leaves it at its release, so it holds about a month of filings. Guarded (a removed
/// row would keep a document from its patient); the timer still decides on the sealed metadata.
pub const HIDDEN_DOCS: TableDefinition<&[u8; 16], i64> = TableDefinition::new("hidden_docs");
/// Documents whose replacements conflict (`DocState::has_replacement_conflict`), by stored
/// document id: kept by every metadata write (`Replica::put_meta`), so counting and listing
/// them (`sync status`, every `Hello`) opens no sealed row.
pub const CONFLICTS: TableDefinition<&[u8; 16], ()> = TableDefinition::new("conflicts");
/// Bytes received so far of each body in `PARTIAL_BODIES`, by stored document id.
pub const PARTIAL_PROGRESS: TableDefinition<&[u8; 16], u64> =
    TableDefinition::new("partial_progress");
/// Host: what sites asked for and the host has not decided yet (`site_access`): a pin
/// (`1 ‖ blind index ‖ site`) or consent given in person (`2 ‖ blind index ‖ rpps_index ‖
/// site`) →
/// sealed `SiteRequest` (registry key, bound to its row).
pub const SITE_REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("site_requests");
/// Host: the key each site chains its trace with (`site_traces`), sealed with the audit key and
/// bound to the site.
pub const SITE_CHAIN_KEYS: TableDefinition<u32, &[u8]> = TableDefinition::new("site_chain_keys");
/// Host: the newest trace head each site signed (`site_traces::TraceHeadEvidence`, postcard):
/// site id → the head, its signature and the signing certificate. In clear: it holds no
/// patient data, and its signature is what makes it evidence.
pub const SITE_SIGNED_HEADS: TableDefinition<u32, &[u8]> =
    TableDefinition::new("site_signed_heads");
/// Host: until when a dossier stays in a site's scope for an emergency fetch the host allowed:
/// `site (u32 BE) ‖ blind index` → Unix milliseconds.
pub const EMERGENCY_SCOPES: TableDefinition<&[u8], i64> = TableDefinition::new("emergency_scopes");
/// Host: the flags the host itself cleared on a document (an unmask, the announcement timer's
/// release): stored document id → sealed `[u64; 3]` (registry key, bound to the id), for
/// `MASQUE_PS`, `INVISIBLE_PATIENT` and `INVISIBLE_REPRESENTANTS_LEGAUX`, the host's own clock
/// counter on the document at its latest clear of that flag (0: never cleared). A site's
/// version that has not seen that clear and carries the flag again is decided as a mask or a
/// hiding by the actors its push names (`push_check`).
pub const HOST_CLEARS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("host_clears");
/// Host: the path to each site as the host's connections last measured it sending (postcard
/// `LinkPath`), by site (u32 BE; bytes, so a malformed key is a row skipped, not a panic): where
/// its next connection to the site starts (a hint, as a site's own `link_path`; not guarded: a
/// row put back or altered only changes how fast one connection to that site starts, within
/// `carnet_syncd::congestion`'s bounds).
pub const SITE_LINK_PATHS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("site_link_paths");
/// Site: dossiers opened here that the host has not answered yet (`local_dossiers`): blind
/// index → sealed `LocalDossier` (registry key, bound to the blind index).
pub const LOCAL_DOSSIERS: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("local_dossiers");
/// Site: changes of a dossier whose identity is still provisional, held back from the outbox
/// until it is qualified (`local_dossiers`): `blind index ‖ counter (u64 BE)` → sealed `Held`
/// (registry key, bound to its row).
pub const HELD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("held");
/// Host: the dossier heads, grants and emergency preferences it issued, each kept with the
/// host's time of issue (`emergencies`): `subject key ‖ seq (u64 BE)` → sealed
/// `(time, record)` (registry key, bound to the row's key).
pub const AUTHORITY_HISTORY: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("authority_history");
/// Host: the emergencies it judged (`emergencies::IndexRow`, postcard): id → the dossier's
/// blind index and the review flag in clear, the rest sealed with the audit key, bound to the id.
pub const EMERGENCIES: TableDefinition<u64, &[u8]> = TableDefinition::new("emergencies");
/// Host: the emergencies not reviewed yet (`EMERGENCIES` id → ()), so the review list opens only
/// those (`audit emergencies --pending`), however many were reviewed before.
pub const PENDING_EMERGENCIES: TableDefinition<u64, ()> =
    TableDefinition::new("pending_emergencies");
/// Host: the emergencies of each dossier (blind index ‖ id, big-endian → ()), so a purge drops
/// its own without reading the others'.
pub const DOSSIER_EMERGENCIES: TableDefinition<&[u8], ()> =
    TableDefinition::new("dossier_emergencies");
/// Host: per site, its last contact whose trace the host held whole (postcard: trace head and
/// host time). In clear: no patient data.
pub const TRACE_CONTACTS: TableDefinition<u32, &[u8]> = TableDefinition::new("trace_contacts");
/// Host: its notifications (`notifications::NotificationRow`, postcard): id → the dossier's
/// blind index in clear, the rest sealed with the audit key, bound to the id.
pub const NOTIFICATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("notifications");
/// Host: events a site traced about a dossier outside its scope, waiting for it to enter:
/// `blind index ‖ site (u32 BE) ‖ counter (u64 BE)` → sealed event (audit key, bound to the
/// key).
pub const HELD_NOTIFICATIONS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("held_notifications");
/// Host: the professionals whose access to a dossier it learnt of (their first was notified):
/// `blind index ‖ rpps_index`.
pub const FIRST_ACCESSES: TableDefinition<&[u8], ()> = TableDefinition::new("first_accesses");
/// Site: the outbox entries it could not read, held back (`withheld`): sequence →
/// `withheld::HeldChange` (postcard). In clear: why (a message about a field, never its value)
/// and the entry as it was in `OUTBOX`, whose own seals and blind indexes stay as they were.
pub const OUTBOX_HELD: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_held");
/// Site: the heartbeats peers relayed with a handover (`handover`): blind index → the
/// heartbeat's time (Unix ms). Each renews the lease of that dossier only, up to its own time.
pub const RELAYED_LEASES: TableDefinition<&[u8; 32], i64> = TableDefinition::new("relayed_leases");
/// Site: the trace entries peers handed over with a dossier (`handover`: each the sender's
/// own, about that dossier): `(origin site, sequence)` → `StoredTrace` (audit key, bound to the
/// origin like `AUDIT`'s). Kept apart from `AUDIT`: they are parts of the sender's chain, not a
/// chain this replica holds whole.
pub const RELAYED_TRACES: TableDefinition<(u32, u64), &[u8]> =
    TableDefinition::new("relayed_traces");
/// Per origin site, the highest change sequence applied here (exactly-once).
pub const APPLIED: TableDefinition<u32, u64> = TableDefinition::new("applied");
/// The change feed (`changes`): sequence → the dossier's blind index in clear, the change
/// sealed under the registry key and bound to its sequence.
pub const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

/// META keys.
pub mod meta_key {
    /// Format version of the tables (u32 LE).
    pub const FORMAT: &str = "format";
    /// `ReplicaConfig`, postcard.
    pub const CONFIG: &str = "config";
    /// `Keyring`, postcard.
    pub const KEYRING: &str = "keyring";
    /// Highest host record sequence admitted (u64 LE).
    pub const AUTHORITY_VERSION: &str = "authority_version";
    /// Last sequence the host signed (host only, u64 LE).
    pub const AUTHORITY_SEQ: &str = "authority_seq";
    /// Registry generation (u64 LE): bumped by every change to AUTHORITY, PROS or DOSSIER_KEYS.
    pub const REGISTRY_GEN: &str = "registry_gen";
    /// Time of the latest host heartbeat verified (i64 LE as u64): the age of the authority
    /// cache, checked against the site's lease.
    pub const AUTHORITY_AS_OF: &str = "authority_as_of";
    /// Site: the host change-log sequence applied up to (u64 LE).
    pub const PULL_CURSOR: &str = "pull_cursor";
    /// Epoch of the trace journal's live frames (u64 LE); see `journal`.
    pub const JOURNAL_EPOCH: &str = "journal_epoch";
    /// Present (one byte, 1) once the guarded tables' digests are kept (`row_digest`): each in
    /// `row_digest:<table>`, 32 bytes.
    pub const ROW_DIGESTS: &str = "row_digests";
    /// The open epoch (u64 LE), raised at each open and clean close checked against a
    /// high-water mark (`high_water`).
    pub const OPEN_EPOCH: &str = "open_epoch";
    /// Highest outbox sequence acknowledged (u64 LE): with the last queued entry, where the
    /// next sequence starts, so sequence numbers are never reused.
    pub const OUTBOX_ACKED: &str = "outbox_acked";
    /// The latest local time a commit saw (i64 LE as u64), raised in steps of `CLOCK_STEP`: a
    /// clock set back behind it by more than the skew ends the lease (`Replica::lease_expired`).
    pub const CLOCK_SEEN: &str = "clock_seen";
    /// The key the local trace chain is hashed with, wrapped by the master key; written by a
    /// full rotation (`rekey`), before which the chain key is derived from the audit key.
    pub const CHAIN_KEY: &str = "chain_key";
    /// Host: the highest notification id written to the spool (u64 LE).
    pub const NOTIFICATIONS_SPOOLED: &str = "notifications_spooled";
    /// Host: which daemon writes the spool, and until when (u32 LE daemon number, i64 LE
    /// millis; `Replica::take_spool_turn`).
    pub const SPOOL_TURN: &str = "spool_turn";
    /// This replica's own trace head (postcard `(sequence, chain hash)`) as of the last move of
    /// its entries into `AUDIT`, written with `AUDIT_HEADS` (`Replica::set_own_trace_head`):
    /// `meta` is authenticated, so a trace removed whole, rows and head, is seen at open
    /// (`Replica::check_trace_anchor`).
    pub const TRACE_ANCHOR: &str = "trace_anchor";
    /// Site: the latest heartbeat that renewed its lease through a pull (postcard
    /// `SignedRecord`, in clear: it names the site and a log head, no patient data), relayed
    /// with a handover (`handover`).
    pub const RELAYABLE_HEARTBEAT: &str = "relayable_heartbeat";
    /// The change feed's cursor below which its entries are gone (u64 LE; `changes`).
    pub const CHANGES_FLOOR: &str = "changes_floor";
    /// Site: the host's marks of this site (its last change and trace entry held there) at the
    /// end of the last sync round that ended well, postcard `(u64, u64)`; removed when a round
    /// fails (`Replica::host_marks`).
    pub const HOST_MARKS: &str = "host_marks";
    /// Site: the path to the host as the last connection that measured it left it (postcard
    /// `LinkPath`: a rate, a round trip, when; no patient data), for the next connection to
    /// start at (`Replica::link_path`).
    pub const LINK_PATH: &str = "link_path";
}

/// The format this build writes. A newer stored format is refused, and so is one older than
/// `FORMAT_OLDEST`: the project had no deployed replica before format 9, and format 4 changed
/// how every row naming a document is keyed, formats 5 and 6 how a document's replacements and
/// their resolutions are recorded, format 7 how a representative is named and how grants are
/// signed, and format 9 where the bodies are kept: no migration rewrites any of that.
///
/// - 1: bodies in `BODIES` only, in chunks of `CHUNK_PLAIN`.
/// - 2: bodies are cut as `body_chunk_plan` says, a small last chunk kept as a tail.
/// - 3: bodies padded to their size bucket before they are cut, sealed metadata padded
///   (`padding`).
/// - 4: document ids stored only in their keyed form (`doc_map`) in every key and clear value;
///   body chunk keys start with their place (`body_key`); `SITE_LOG` values sealed.
/// - 5: a document's successors carry the version vector of the change that recorded each
///   (`DocState::successors`), in sealed metadata and in the outbox's acts.
/// - 6: a document's state records the resolutions of its conflicts (`DocState::resolutions`).
/// - 7: a site keeps the dossiers it opened (`LOCAL_DOSSIERS`) and the changes it holds back
///   for a provisional identity (`HELD`); a legal representative is a recorded person with an
///   id (`Representative` in the dossier head); trace entries (`TraceActor`), document authors
///   (`Author`) and acts (`Actor`) name that id.
///   The signed records held are of record format 3: a grant carries its end
///   (`Grant::until`) and may designate the médecin traitant.
/// - 8: the signed records held are of record format 4 (`authority::RECORD_FORMAT`): a
///   closure records whether the holder asked the dossier's deletion
///   (`Closure::deletion_requested`); the host keeps why it returned each change to a site
///   (`RETURNED` rows carry the reason, and a refused dossier proposal has a row of its own);
///   the host keeps the notifications it makes (`NOTIFICATIONS`, `HELD_NOTIFICATIONS`,
///   `FIRST_ACCESSES`).
/// - 9: a replica in a redb file keeps the chunks of the bodies it stores in segment files
///   (`segments`), `BODY_PLACES` naming each; chunks a key rotation wrote stay in `BODIES`
///   (`bodies`).
/// - 10: in segments, a body is cut as `segment_chunk_plan` says (one record for a body of up
///   to 64 KiB, where format 9 cut as `body_chunk_plan`, often in two). This build reads both;
///   a replica in segments of format 9 is marked 10 when this build opens it
///   (`Replica::settle_format`).
pub const FORMAT_VERSION: u32 = 10;

/// The oldest format this build opens.
pub const FORMAT_OLDEST: u32 = 9;

/// Subject-key tags in `AUTHORITY`.
pub mod tag {
    /// Dossier head.
    pub const DOSSIER: u8 = 1;
    /// Grant (followed by blind index and `rpps_index`).
    pub const GRANT: u8 = 2;
    /// Emergency preferences.
    pub const EMERGENCY: u8 = 3;
    /// Habilitation matrix (no blind index).
    pub const MATRIX: u8 = 4;
    /// The host's latest heartbeat (no blind index).
    pub const HEARTBEAT: u8 = 5;
    /// The site certificates the host refuses (no blind index).
    pub const REFUSED_CERTIFICATES: u8 = 6;
}

/// A document's metadata row.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredDoc {
    /// Blind index of its dossier.
    pub dossier: [u8; 32],
    /// Row revision, bound into the associated data of `sealed`.
    pub rev: u64,
    /// `DocumentMeta`, postcard, sealed with the dossier key.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// A trace row.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredTrace {
    /// Chain hash.
    pub hash: [u8; 32],
    /// `AuditEntry`, postcard, sealed with the audit key.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// What an outbox entry refers to; the change itself is read from the store when sent, so the
/// latest merged state travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxItem {
    /// A document's metadata (and, when new, its body) changed, by its stored id (`doc_map`);
    /// written by builds before acts were recorded (no longer written: see `DocumentAct`). Sent
    /// as acted by the document's author (`Act::by_author`).
    Document([u8; 16]),
    /// A professional was registered at this site (by `rpps_index`: the record is in `PROS`).
    Professional([u8; 32]),
    /// The site purged a dossier (closure or scope exit); the INS is sealed (registry key).
    PurgeReceipt {
        /// `Ins` matricule, sealed.
        #[serde(with = "serde_bytes")]
        sealed_ins: Vec<u8>,
        /// The receipt.
        receipt: PurgeReceipt,
    },
    /// The site pins (or unpins) a dossier into its scope; the INS is sealed (registry key).
    Pin {
        /// `Ins` matricule, sealed.
        #[serde(with = "serde_bytes")]
        sealed_ins: Vec<u8>,
        /// Pin (true) or unpin.
        on: bool,
    },
    /// Consent given in person at this site, for the host to confirm or refuse; the INS is
    /// sealed (registry key).
    PendingGrant {
        /// `Ins` matricule, sealed.
        #[serde(with = "serde_bytes")]
        sealed_ins: Vec<u8>,
        /// The professional, by `rpps_index` (registered in `PROS`).
        pro: [u8; 32],
    },
    /// A document changed by an act at this site: who did what (`sync::Act`, postcard, sealed
    /// with the registry key and bound to the document and this entry's sequence).
    DocumentAct {
        /// The document, by its stored id (`doc_map`).
        id: [u8; 16],
        /// The act, sealed.
        #[serde(with = "serde_bytes")]
        sealed_act: Vec<u8>,
    },
    /// A break-glass or centre 15 fetch of a dossier this site does not hold, for the host to
    /// decide; the request (INS, professional, mode, reason) is sealed (registry key).
    EmergencyFetch {
        /// `EmergencyRequest`, postcard, sealed.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// A dossier opened at this site, proposed to the host (which adopts it, merges it into
    /// the one it has, or refuses it); the proposal (`local_dossiers::Proposal`) is sealed
    /// (registry key).
    DossierProposal {
        /// `Proposal`, postcard, sealed.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// An entry this site could not read, held back (`OUTBOX_HELD` keeps it with why); sent
    /// as `Change::Withheld`.
    Withheld,
    /// A document entry whose document went to the quarantine before it was sent (`QUARANTINE`
    /// keeps it); sent as `Change::Quarantined`.
    Quarantined,
}

/// Why a dossier is in a site's scope (bits of `SCOPE`).
pub mod scope_bit {
    /// One of the site's professionals holds an active grant.
    pub const GRANT: u8 = 1;
    /// The site wrote a document in it.
    pub const WROTE: u8 = 2;
    /// The host accepted the site's pin (e.g. tomorrow's patients of a mobile unit).
    pub const PINNED: u8 = 4;
    /// The host allowed an emergency fetch by one of the site's professionals, for a while
    /// (`EMERGENCY_SCOPES`).
    pub const EMERGENCY: u8 = 8;
}

/// An entry of a site's change log on the host; what it names is read when the site pulls, so
/// the current state travels. Stored sealed (`SITE_LOG`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogItem {
    /// A document changed.
    Document([u8; 16]),
    /// A signed record changed (subject key).
    Authority(Vec<u8>),
    /// A dossier entered the site's scope: send all of it.
    Enter([u8; 32]),
    /// A dossier left the site's scope: the site purges it.
    Leave([u8; 32]),
    /// A reason the site held a dossier's documents ended while the dossier stays in its scope:
    /// the site deletes the documents it may no longer hold (`withdrawal`).
    Withdraw([u8; 32]),
}

/// `site (u32 BE) ‖ rest`.
pub fn site_key(site: u32, rest: &[u8]) -> Vec<u8> {
    let mut k = site.to_be_bytes().to_vec();
    k.extend_from_slice(rest);
    k
}

/// `rpps_index ‖ site (u32 BE)`: a key of `PRO_SITES`.
pub fn pro_site_key(pro: &[u8; 32], site: SiteId) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(pro);
    k[32..].copy_from_slice(&site.0.to_be_bytes());
    k
}

/// A purge receipt, kept where a dossier was purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReceipt {
    /// When the purge completed.
    pub at: i64,
    /// Sequence of the host record that ended the dossier (its closure, or the host's
    /// `Purged` record for a site that missed the closure). Records of that dossier with a
    /// sequence at or below it are refused, so a replayed old bundle cannot bring it back.
    pub cause_seq: u64,
}

/// A `TOMBSTONES` row: the purge receipt, and the dossier's INS sealed with the registry key
/// (`tombstone_aad`), so that a full rotation (`rekey`) can compute the row's blind index under
/// the new index key: nothing else names a dossier purged at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The receipt.
    pub receipt: PurgeReceipt,
    /// `Ins` matricule, sealed.
    #[serde(with = "serde_bytes")]
    pub sealed_ins: Vec<u8>,
}

/// Associated data of a tombstone's sealed INS: bound to its table and blind index.
pub fn tombstone_aad(bi: &[u8]) -> Vec<u8> {
    crate::crypto::aad(&[b"tombstones", bi])
}

/// Plaintext bytes per body chunk: the sealed chunk (plus 40 bytes of nonce and tag), its
/// 21-byte key and its leaf's 12 bytes of header and lengths stay under 64 KiB, since redb rounds
/// a leaf up to a power of two.
pub const CHUNK_PLAIN: usize = 65_536 - 40 - 64;

/// Plaintext chunk sizes that fill, sealed, a redb leaf page of 64, 32, 16, 8 and 4 KiB alone,
/// largest first (64 bytes left for the key and the leaf's own bytes, as in `CHUNK_PLAIN`).
pub const PAGE_FITS: [usize; 5] = [
    CHUNK_PLAIN,
    32_768 - 40 - 64,
    16_384 - 40 - 64,
    8_192 - 40 - 64,
    4_096 - 40 - 64,
];

/// Where a body chunk is stored in `BODIES`: its first key byte (`kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPlace {
    /// Among every document's chunks (keys starting with 0).
    Main,
    /// Among the tails (keys starting with 1).
    Tail,
}

impl ChunkPlace {
    /// The first byte of the keys of chunks stored here. Every chunk key sorts before every
    /// tail key, whatever the ids, so a tail never shares a leaf page with a page-sized chunk
    /// (redb would then round that leaf up to twice the page). Keys hold stored ids, which are
    /// keyed permutations of the ids (`doc_map`): the layout depends on nothing in them.
    pub fn kind(self) -> u8 {
        match self {
            ChunkPlace::Main => 0,
            ChunkPlace::Tail => 1,
        }
    }
}

/// How a body of `len` bytes is cut, chunk by chunk in order: `(plaintext bytes, place)`.
///
/// Each chunk takes the largest of `PAGE_FITS` that the rest still fills, so it fills its page;
/// the rest smaller than all of them is the last chunk. That last chunk is a tail when
/// page-sized chunks come before it (a 4 KiB body is 3,992 bytes in a 4 KiB page plus a
/// 104-byte tail, where one sealed chunk would take an 8 KiB page); a body smaller than every
/// fit is one chunk. An empty body has no chunk. `len` is the padded length
/// (`padding::padded_body_len`).
pub fn body_chunk_plan(len: usize) -> Vec<(usize, ChunkPlace)> {
    let mut plan = Vec::with_capacity(len / CHUNK_PLAIN + 2);
    let mut rest = len;
    while rest > 0 {
        let chunk = next_body_chunk(rest, plan.is_empty());
        plan.push(chunk);
        rest -= chunk.0;
    }
    plan
}

/// Plaintext bytes per body chunk in segment files (`segment_chunk_plan`): 64 KiB, so a body
/// of up to 64 KiB is one record, and past it the rest is a multiple of its padding step (8 KiB
/// and more), which `body_chunk_plan`'s walk places under `Main` as this cut does: a read
/// (`documents::get_body`) walks either cut the same way.
pub const SEGMENT_CHUNK_PLAIN: usize = 64 * 1024;

/// How a body of `len` bytes is cut when its chunks go to segment files (`segments`), chunk by
/// chunk in order: chunks of `SEGMENT_CHUNK_PLAIN` bytes, the last one the rest, every one
/// `Main`. A record's length costs nothing there (no page to fill), so a body of up to 64 KiB is
/// one record and one place row, where `body_chunk_plan` would often cut it in two. `len` is the
/// padded length.
pub fn segment_chunk_plan(len: usize) -> Vec<(usize, ChunkPlace)> {
    let mut plan = Vec::with_capacity(len / SEGMENT_CHUNK_PLAIN + 1);
    let mut rest = len;
    while rest > 0 {
        let chunk = rest.min(SEGMENT_CHUNK_PLAIN);
        plan.push((chunk, ChunkPlace::Main));
        rest -= chunk;
    }
    plan
}

/// The next chunk of `body_chunk_plan` when `rest` bytes (more than 0) remain, `first` when no
/// chunk came before; so a reader can walk a body without building its plan.
pub fn next_body_chunk(rest: usize, first: bool) -> (usize, ChunkPlace) {
    match PAGE_FITS.iter().find(|&&fit| fit <= rest) {
        Some(&fit) => (fit, ChunkPlace::Main),
        None if first => (rest, ChunkPlace::Main),
        None => (rest, ChunkPlace::Tail),
    }
}

/// `blind index ‖ stored document id`.
pub fn dossier_doc_key(bi: &[u8; 32], stored: &[u8; 16]) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(bi);
    k[32..].copy_from_slice(stored);
    k
}

/// `blind index ‖ hash of the unique id`.
pub fn unique_key(bi: &[u8; 32], uid_hash: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(bi);
    k[32..].copy_from_slice(uid_hash);
    k
}

/// `place ‖ stored document id ‖ chunk` (big-endian, so a body's chunks sort in order): the key
/// of a body chunk. Every key of a place and document has the same 17-byte prefix, so a range
/// over one body's keys holds nothing else.
pub fn body_key(stored: &[u8; 16], place: ChunkPlace, chunk: u32) -> [u8; 21] {
    let mut k = [place.kind(); 21];
    k[1..17].copy_from_slice(stored);
    k[17..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// The key of a body's first chunk (always `Main`): present exactly when the body is stored.
pub fn first_body_key(stored: &[u8; 16]) -> [u8; 21] {
    body_key(stored, ChunkPlace::Main, 0)
}

/// `stored document id ‖ offset` (big-endian, so pieces sort in order).
pub fn piece_key(stored: &[u8; 16], offset: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(stored);
    k[16..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Associated data of a `SITE_LOG` row: bound to its table, site and sequence.
pub fn site_log_aad(site: u32, seq: u64) -> Vec<u8> {
    crate::crypto::aad(&[b"site_log", &site.to_le_bytes(), &seq.to_le_bytes()])
}

/// Associated data of a `PENDING_PURGES` row: bound to its table and blind index.
pub fn pending_purge_aad(bi: &[u8]) -> Vec<u8> {
    crate::crypto::aad(&[b"pending_purges", bi])
}

/// Subject key in `AUTHORITY`: tag, then blind index, then for grants the professional's
/// `rpps_index`.
pub fn subject_key(tag: u8, bi: Option<&[u8; 32]>, pro: Option<&[u8; 32]>) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 32 + 32);
    k.push(tag);
    if let Some(bi) = bi {
        k.extend_from_slice(bi);
    }
    if let Some(pro) = pro {
        k.extend_from_slice(pro);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_cut_into_page_sized_chunks_and_a_tail() {
        use ChunkPlace::{Main, Tail};
        let check = |len: usize, expect: &[(usize, ChunkPlace)]| {
            assert_eq!(body_chunk_plan(len), expect, "{len} bytes");
        };
        check(0, &[]);
        check(1, &[(1, Main)]);
        check(3_991, &[(3_991, Main)]);
        check(3_992, &[(3_992, Main)]);
        check(4_096, &[(3_992, Main), (104, Tail)]);
        check(9_000, &[(8_088, Main), (912, Tail)]);
        check(
            150_000,
            &[
                (65_432, Main),
                (65_432, Main),
                (16_280, Main),
                (2_856, Tail),
            ],
        );
        for len in (0..300_000).step_by(997).chain([65_431, 65_432, 65_433]) {
            let plan = body_chunk_plan(len);
            assert_eq!(plan.iter().map(|c| c.0).sum::<usize>(), len, "{len}");
            for (i, &(chunk, place)) in plan.iter().enumerate() {
                let last = i + 1 == plan.len();
                match place {
                    // Fills its page, or is the whole body.
                    Main => assert!(PAGE_FITS.contains(&chunk) || plan.len() == 1, "{len}"),
                    // Only last, after page-sized chunks, smaller than any of them.
                    Tail => assert!(last && i > 0 && chunk < PAGE_FITS[4], "{len}"),
                }
            }
        }
    }

    #[test]
    fn a_body_in_segments_is_cut_into_chunks_of_64_kib_and_the_rest() {
        use ChunkPlace::Main;
        let check = |len: usize, expect: &[(usize, ChunkPlace)]| {
            assert_eq!(segment_chunk_plan(len), expect, "{len} bytes");
        };
        check(0, &[]);
        check(4_096, &[(4_096, Main)]);
        check(65_536, &[(65_536, Main)]);
        check(65_537, &[(65_536, Main), (1, Main)]);
        check(163_840, &[(65_536, Main), (65_536, Main), (32_768, Main)]);
        for len in (0..300_000).step_by(997) {
            let plan = segment_chunk_plan(len);
            assert_eq!(plan.iter().map(|c| c.0).sum::<usize>(), len, "{len}");
            assert_eq!(plan.len(), len.div_ceil(SEGMENT_CHUNK_PLAIN), "{len}");
            assert!(
                plan.iter().all(|&(chunk, place)| chunk > 0
                    && chunk <= SEGMENT_CHUNK_PLAIN
                    && place == Main)
            );
        }
        // Of a padded body, every chunk is where `body_chunk_plan`'s walk looks
        // (`documents::get_body`), as a chunk of that cut would be.
        for len in (1..3_000_000).step_by(4_999) {
            let padded = crate::padding::padded_body_len(len);
            let mut done = 0;
            for (n, (chunk, _)) in segment_chunk_plan(padded).into_iter().enumerate() {
                assert_eq!(next_body_chunk(padded - done, n == 0).1, Main, "{len}");
                done += chunk;
            }
        }
    }
}
