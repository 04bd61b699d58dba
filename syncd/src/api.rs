//! The local API: every operation `carnet` performs on a replica, as data, so that the same
//! call runs in-process (no daemon) or in the daemon that owns the store (a Unix socket,
//! HTTP/1.1 and JSON — see `local`, the JSON contract `wire`, its OpenAPI document `openapi`,
//! and README "Local API"). `Request` and `Response` here carry the store's types and have no
//! serde: only `wire` crosses the socket.
//!
//! Invariants: `execute` is the one place a `Request` meets the store, whichever side runs it;
//! a request changes nothing unless it succeeds as a whole (each store call is one
//! transaction); a malformed request is answered with an error, never a panic. The socket is
//! created mode 0600 in the data folder, so only the replica's owner can call it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use carnet_store::audit::ChainedEntry;
use carnet_store::authority::Bundle as AuthorityBundle;
use carnet_store::ids::{DocId, Ins, RepresentativeId, Rpps, SiteId};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{
    AccessMode, Actor, EmergencyPrefs, Grant, GrantBasis, GrantState, Professional,
};
use carnet_store::policy::Action;
use carnet_store::replica::backup::BackupInfo;
use carnet_store::replica::{
    Conflict, DossierExport, DossierInfo, Emergency, Host, ImportReport, KeySource, NewDocument,
    NewDossier, NewRepresentative, Notification, QuarantineEntry, ReadOutcome, Reader, Replica,
    ReplicaConfig, Site, SiteReplica, SiteRequest, refusal,
};
use carnet_store::time::Millis;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::enrol::{self, SiteRecord};
use crate::error::{Error, Result};
use crate::pki::Identity;
use crate::session::RoundReport;
use crate::transport::Revoked;

pub mod local;
pub mod openapi;
pub mod uploads;
pub mod wire;

/// File name of the daemon's socket inside the data folder.
pub const SOCKET_FILE: &str = "carnet.sock";

/// One operation on a replica.
#[derive(Debug)]
pub enum Request {
    /// Settings fixed at init.
    Config,
    /// Registers a professional at this site.
    AddProfessional { professional: Professional },
    /// The professionals registered here.
    Professionals,
    /// Creates a dossier: at the host directly (`creator` is `None`); at a site, opened there
    /// by `creator` (`Replica::open_dossier_here`).
    CreateDossier {
        dossier: NewDossier,
        creator: Option<Actor>,
    },
    /// Site: the identity of a dossier opened here was checked.
    QualifyDossier { ins: Ins, rpps: Rpps },
    /// One dossier.
    /// `actor` (`None`: the host's operator, traced; refused at a site) sees one dossier, as
    /// the access decision lets them (`Replica::show_dossier`).
    Dossier { ins: Ins, actor: Option<Actor> },
    /// The dossiers of this replica `actor` may see (`None`: the host's operator).
    Dossiers { actor: Option<Actor> },
    /// A dossier's grants, revocations and blocks as `actor` may see them (`grant list`;
    /// `None`: the host's operator, traced; refused at a site).
    Grants { ins: Ins, actor: Option<Actor> },
    /// Whether this replica holds dossier `ins` (its data key): says nothing of its content.
    HoldsDossier { ins: Ins },
    /// A dossier's trace as `actor` may read it (`None`: the host's operator).
    ReadTrace { ins: Ins, actor: Option<Actor> },
    /// Closes a dossier (host); `deletion_requested`: the holder asked its deletion rather
    /// than its archiving (`Replica::close_dossier`). Answers the dossier.
    CloseDossier {
        ins: Ins,
        reason: String,
        deletion_requested: bool,
    },
    /// The holder of a closed dossier asks its deletion (host): the closed head signed again
    /// with the request; answers the dossier.
    RequestDeletion { ins: Ins },
    /// Reopens a closed dossier (host): a new active head; answers the dossier.
    ReopenDossier { ins: Ins, reason: String },
    /// Records a legal representative of the holder (host): a new signed head.
    AddRepresentative {
        ins: Ins,
        representative: NewRepresentative,
    },
    /// Ends a legal representative (host): a new signed head.
    RemoveRepresentative { ins: Ins, id: RepresentativeId },
    /// Purges a closed dossier.
    PurgeDossier { ins: Ins },
    /// Sets a grant (host); answers it as now recorded.
    SetGrant {
        ins: Ins,
        rpps: Rpps,
        state: GrantState,
        /// `None` keeps the basis of the grant it changes (a revocation or block records the
        /// basis it ends).
        basis: Option<GrantBasis>,
        /// When the grant ends (`Grant::until`), if it does.
        until: Option<Millis>,
    },
    /// Records consent given in person (site): a pending grant, usable there for one encounter; a
    /// request at the host, never a grant by itself.
    PendingGrant { ins: Ins, rpps: Rpps },
    /// Changes emergency preferences (host); `None` keeps a setting.
    UpdateEmergency {
        ins: Ins,
        samu: Option<bool>,
        btg: Option<bool>,
        masked: Option<bool>,
    },
    /// Writes a document.
    PutDocument {
        actor: Actor,
        mode: AccessMode,
        reason: Option<String>,
        ins: Ins,
        document: NewDocument,
    },
    /// An audited read.
    ReadDocument {
        actor: Actor,
        id: DocId,
        mode: AccessMode,
        reason: Option<String>,
    },
    /// The documents of a dossier the actor may read.
    ListDocuments { actor: Actor, ins: Ins },
    /// The quarantined documents, with what became of each (no body opened).
    Quarantine,
    /// One quarantined document (no body opened).
    QuarantineShow { id: DocId },
    /// The body of a quarantined document, for its author or the host operator; traced.
    QuarantineBody { actor: Actor, id: DocId },
    /// Sends a quarantined document again into the dossier `ins`; answers the new id.
    QuarantineRefile { actor: Actor, id: DocId, ins: Ins },
    /// Keeps one branch of a document in conflict (`Replica::resolve_conflict`).
    ResolveConflict {
        actor: Actor,
        doc: DocId,
        keep: DocId,
    },
    /// Masks, unmasks, hides or deletes a document.
    UpdateDocument {
        actor: Actor,
        id: DocId,
        action: Action,
    },
    /// Files the documents of a FHIR R4 DocumentReference or Bundle (JSON), each as its author
    /// (`fhir::read`, then `fhir::import`); answers what became of each.
    ImportFhir { json: String },
    /// Replaces a document by a new version.
    ReplaceDocument {
        actor: Actor,
        id: DocId,
        document: NewDocument,
    },
    /// Trace entries, of one dossier or all.
    AuditEntries { ins: Option<Ins> },
    /// Checks every trace chain.
    VerifyAudit,
    /// Re-wraps every key under a new master key: a new key file, or this passphrase.
    RotateMasterKey { passphrase: Option<String> },
    /// The holder's full copy.
    ExportDossier { actor: Actor, ins: Ins },
    /// The host's signed records (host).
    ExportAuthority,
    /// Admits signed host records (site).
    ImportAuthority { bundle: AuthorityBundle },
    /// The host's public key this replica trusts.
    HostKey,
    /// At a site: asks the host to bring a dossier into this site's scope (or lets it go). At
    /// the host, with `site`: accepts that site's pin (an appointment with the holder's consent
    /// recorded), or refuses or ends it.
    Pin {
        ins: Ins,
        on: bool,
        site: Option<u32>,
    },
    /// Site: asks the host for a dossier this site does not hold, for a break-glass or
    /// centre 15 access by `rpps` (the host decides and traces it).
    EmergencyFetch {
        ins: Ins,
        rpps: Rpps,
        mode: AccessMode,
        reason: String,
    },
    /// Host: binds a professional (registered at the host) to a site, or unbinds them.
    BindProfessional { site: u32, rpps: Rpps, on: bool },
    /// Host: the professionals bound to a site.
    SiteProfessionals { site: u32 },
    /// Host: what sites asked for (pins, consent given in person), not decided yet.
    SiteRequests,
    /// The documents in conflict (of one dossier, if given), with their branches.
    Conflicts { dossier: Option<Ins> },
    /// Host: the emergencies it judged (`Replica::emergencies`); with `pending`, only those
    /// not reviewed.
    Emergencies { pending: bool },
    /// Host: records a review of emergency `id` by `by` (`operator:NAME` or `dpo:NAME`).
    ReviewEmergency { id: u64, by: String, note: String },
    /// Host: its notifications (of one dossier, if given); an operator read, traced.
    Notifications { dossier: Option<Ins> },
    /// Site: what in the inbox needs a person (`inbox::state`): refused files with their
    /// reason and fix, files alone past the grace period, files in clear left in `done/`.
    Inbox,
    /// Site: moves the refused file `name` (and its sidecar) from `rejected/` back into the
    /// inbox, to be tried again (`inbox::retry`); answers the files moved.
    InboxRetry { name: String },
    /// Where sync stands.
    SyncStatus,
    /// Runs a sync round now and waits for it (site).
    SyncNow,
    /// Site: hands dossier `ins` over to the `[[peer]]` named `peer`, by professional `by`
    /// (`peer::hand_over`), and waits for it.
    Handover {
        /// The peer's name in `carnet.toml`.
        peer: String,
        /// The dossier.
        ins: Ins,
        /// The professional handing it over (registered here).
        by: Rpps,
        /// Why.
        reason: Option<String>,
    },
    /// Site: asks the `[[peer]]` named `peer` to hand dossier `ins` over to this site, for
    /// professional `by` (registered here) (`peer::ask`), and waits for it.
    AskHandover {
        /// The peer's name in `carnet.toml`.
        peer: String,
        /// The dossier.
        ins: Ins,
        /// The professional asking (registered here).
        by: Rpps,
        /// Why.
        reason: Option<String>,
    },
    /// Creates the national CA and host certificate (host). With `offline_ca` (made and
    /// written to its offline folder by the caller), the replica keeps only its certificate;
    /// without it, `ca_in_replica` must say that the replica is to keep the CA key.
    PkiInit {
        offline_ca: Option<Identity>,
        ca_in_replica: bool,
    },
    /// Enrols a site (host); answers the bundle's bytes.
    PkiEnrol {
        name: String,
        finess: String,
        host_address: String,
        /// Professionals (registered at the host) bound to the new site.
        pros: Vec<Rpps>,
        /// The offline CA, when the replica does not keep its key.
        ca: Option<Identity>,
        /// The certificate's lifetime in days (default `pki::SITE_DAYS`).
        days: Option<i64>,
    },
    /// Issues a site a new certificate (host); answers the renewal bundle's bytes.
    PkiRenew {
        site: u32,
        host_address: Option<String>,
        /// Refuse the site's earlier certificates at once.
        retire_old: bool,
        ca: Option<Identity>,
    },
    /// Issues the host a new certificate (host) for the same TLS key; with `new_key`, prepares
    /// a new key and announces it to the sites without serving it (`hostkey::prepare_next`);
    /// with `switch`, serves the prepared key (`hostkey::switch`).
    PkiRenewHost {
        new_key: bool,
        switch: bool,
        ca: Option<Identity>,
    },
    /// Host: the CA revokes a host TLS key (by its pin); answers the revocation file's bytes.
    PkiRevokeHost { pin: [u8; 32], ca: Option<Identity> },
    /// Installs a renewal bundle, or a host key revocation file (site).
    PkiInstall { bundle: Vec<u8> },
    /// The host's CA and certificate: their expiry, and whether the CA key is offline.
    PkiHost,
    /// Revokes a site (host); a running daemon refuses it from the next connection.
    PkiRevoke { site: u32 },
    /// The sites known to the host.
    PkiSites,
    /// Host (daemon only): every enrolled site as the operator sees it, or only `site`
    /// (`carnet sites`).
    Fleet { site: Option<u32> },
    /// Writes a consistent copy of the replica (and its `carnet.toml`) to `path`, a file of
    /// the caller's (written by whoever runs the request: the daemon, when one runs).
    Backup { path: PathBuf },
    /// Host: the renewals sites asked for over sync and have not used yet (signed or
    /// waiting for the CA).
    PkiRenewals,
    /// Host: signs every renewal waiting for the CA; answers those signed.
    PkiSignPending {
        /// The offline CA, when the replica does not keep its key.
        ca: Option<Identity>,
    },
    /// Reads every stored body, opened and checked against its document's content hash
    /// (`Replica::damaged_bodies`): the documents whose body is damaged.
    CheckBodies,
}

impl Request {
    /// True if, run by a replica of `role`, the request may change what a sync round carries:
    /// any write, and at a site also what is only traced (a read's trace goes to the host); at
    /// the host a read's trace stays there, and only writes may grow the sites' logs.
    pub fn may_change_what_syncs(&self, role: carnet_store::replica::Role) -> bool {
        let looks = matches!(
            self,
            Request::Config
                | Request::Professionals
                | Request::HoldsDossier { .. }
                | Request::VerifyAudit
                | Request::CheckBodies
                | Request::AuditEntries { .. }
                | Request::ExportAuthority
                | Request::HostKey
                | Request::SyncStatus
                | Request::SyncNow
                // What it writes here is only traced: nothing new to push but the trace.
                | Request::Handover { .. }
                | Request::Inbox
                // Files moved, nothing stored: the scan it starts signals what it stores.
                | Request::InboxRetry { .. }
                | Request::PkiSites
                | Request::Fleet { .. }
                | Request::PkiRenewals
                | Request::PkiHost
                | Request::SiteProfessionals { .. }
                | Request::SiteRequests
                | Request::Conflicts { .. }
                | Request::Quarantine
                | Request::QuarantineShow { .. }
                | Request::Emergencies { .. }
                | Request::Backup { .. }
        );
        let traced_read = matches!(
            self,
            Request::Dossier { .. }
                | Request::Dossiers { .. }
                | Request::ReadTrace { .. }
                | Request::ReadDocument { .. }
                | Request::ListDocuments { .. }
                | Request::ExportDossier { .. }
                | Request::QuarantineBody { .. }
                | Request::Notifications { .. }
        );
        !looks && (!traced_read || role == carnet_store::replica::Role::Site)
    }
}

/// Where sync stands, as `carnet sync status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncStatus {
    /// When the cached host records were last confirmed, and whether the lease is over.
    pub authority_as_of: Millis,
    /// The lease is over: normal reads refused, break-glass only.
    pub lease_expired: bool,
    /// Changes not yet acknowledged by the host.
    pub pending: u64,
    /// The same, by kind (`document`, `professional`, `purge-receipt`, `pin`).
    pub pending_by_kind: BTreeMap<String, u64>,
    /// Trace entries written here that the host had not acknowledged at the last round
    /// (known while a daemon runs).
    pub pending_traces: Option<u64>,
    /// Documents whose body has not arrived.
    pub missing_bodies: usize,
    /// Position in the host's log for this site.
    pub cursor: u64,
    /// Entries of the host's log for this site not pulled yet, as of the daemon's last round.
    pub cursor_lag: Option<u64>,
    /// Quarantined documents: id, since, why (bodies stay in the store).
    pub quarantine: Vec<(DocId, Millis, String)>,
    /// Documents with concurrent replacements, in id order (`Replica::conflicted`).
    pub conflicts: Vec<DocId>,
    /// Dossiers opened here whose changes are held back until their identity is qualified,
    /// with how many (`Replica::held_back`).
    #[serde(default)]
    pub held: Vec<(Ins, usize)>,
    /// Outbox entries this site could not read, held back and never sent: sequence, since,
    /// why (`Replica::withheld`).
    #[serde(default)]
    pub withheld: Vec<(u64, Millis, String)>,
    /// The daemon's view of the link; `None` when no daemon runs.
    pub link: Option<LinkState>,
    /// This site's certificate; `None` if it was not enrolled.
    #[serde(default)]
    pub certificate: Option<CertificateStatus>,
    /// Restored from a backup and not caught up with the host yet (it records and serves
    /// nothing until its next round).
    #[serde(default)]
    pub restored: Option<carnet_store::replica::RestoreMark>,
    /// Site: what in the inbox needs a person (`inbox::summary`); `None` at the host, or
    /// when the inbox cannot be read (`inbox_error` says why).
    #[serde(default)]
    pub inbox: Option<crate::inbox::InboxSummary>,
    /// Why the inbox could not be read, if it could not.
    #[serde(default)]
    pub inbox_error: Option<String>,
}

/// A site's certificate, as `sync status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// End of validity.
    pub not_after: Millis,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// The site accepts only the host TLS keys it pinned (false: enrolled with a format 1
    /// bundle; install a renewal bundle).
    pub host_pinned: bool,
    /// How many host keys it pins: 2 while it holds a hand-over to the host's next key, 0
    /// once the CA revoked the one it pinned (no sync until a renewal bundle is installed).
    #[serde(default)]
    pub host_pins: usize,
}

/// The host's CA and certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PkiHostStatus {
    /// End of the CA's validity.
    pub ca_not_after: Millis,
    /// End of the host certificate's validity.
    pub host_not_after: Millis,
    /// The CA key is kept offline (`pki init --ca-dir`).
    pub ca_offline: bool,
    /// The pin of the TLS key the host serves (`pki::key_pin`).
    #[serde(default)]
    pub host_pin: [u8; 32],
    /// The pin of the next key, prepared and announced, not served yet.
    #[serde(default)]
    pub next_pin: Option<[u8; 32]>,
    /// The host keys the CA revoked, carried to the sites.
    #[serde(default)]
    pub revoked_pins: Vec<[u8; 32]>,
}

/// The daemon's view of its link to the host, and the settings it runs with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinkState {
    /// Connected to the host: the last round succeeded and the connection is still open.
    pub connected: bool,
    /// End of the last successful round.
    pub last_sync: Option<Millis>,
    /// Why the last round failed, if it did.
    pub last_error: Option<String>,
    /// Trace entries the host held after the last successful round.
    pub traces_acked: u64,
    /// The last sequence of this site's log on the host, at the last round.
    pub log_head: u64,
    /// QUIC connections the daemon opened to the host since it started (one while the link
    /// holds; each reconnection adds one).
    #[serde(default)]
    pub connections: u64,
    /// The address (one of `host_address` in `carnet.toml`) of the host's daemon the site is
    /// connected to, while `connected`.
    #[serde(default)]
    pub host_address: Option<std::net::SocketAddr>,
    /// The settings in force: `carnet.toml` as the daemon loaded it, or reloaded it (SIGHUP).
    #[serde(default)]
    pub settings: Option<crate::config::Config>,
    /// Rounds that succeeded since the daemon started.
    #[serde(default)]
    pub rounds_ok: u64,
    /// Rounds that failed since then.
    #[serde(default)]
    pub rounds_failed: u64,
    /// UDP bytes sent to the host in successful rounds since then.
    #[serde(default)]
    pub bytes_sent: u64,
    /// UDP bytes received from the host in successful rounds since then.
    #[serde(default)]
    pub bytes_received: u64,
    /// Failed rounds by kind (`fleet::error_kind`).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// The last `RECENT_ERRORS` failures, oldest first: when, kind, message (ids only).
    #[serde(default)]
    pub recent_errors: Vec<(Millis, String, String)>,
}

/// Failures a site daemon keeps for its status page.
pub const RECENT_ERRORS: usize = 5;

/// The answer to a `Request`.
#[derive(Debug)]
pub enum Response {
    /// Done, nothing to return.
    Done,
    /// Settings.
    Config(ReplicaConfig),
    /// Professionals.
    Professionals(Vec<Professional>),
    /// One dossier.
    Dossier(Box<DossierInfo>),
    /// Dossiers.
    Dossiers(Vec<DossierInfo>),
    /// A dossier's grants.
    Grants(Vec<Grant>),
    /// Whether a dossier is held here.
    Holds(bool),
    /// Emergency preferences now in force.
    Emergency(EmergencyPrefs),
    /// A new document's id.
    DocId(DocId),
    /// A read.
    Read(Box<ReadOutcome>),
    /// Document metadata.
    Documents(Vec<DocumentMeta>),
    /// One document's metadata.
    Document(Box<DocumentMeta>),
    /// Trace entries.
    Audit(Vec<ChainedEntry>),
    /// Chains and entries checked.
    Verified { chains: usize, entries: u64 },
    /// The holder's copy.
    Export(Box<DossierExport>),
    /// Signed host records.
    Authority(AuthorityBundle),
    /// What an import did.
    Imported(ImportReport),
    /// The trusted host key.
    HostKey(Option<[u8; 32]>),
    /// Sync state.
    SyncStatus(Box<SyncStatus>),
    /// What in the inbox needs a person.
    Inbox(Box<crate::inbox::InboxState>),
    /// The files moved back into the inbox.
    InboxRetried(Vec<String>),
    /// What a FHIR import did, document by document, in the order filed.
    FhirImported(Vec<crate::fhir::Imported>),
    /// What a round did.
    Synced(RoundReport),
    /// What a handover did (`Request::Handover`).
    HandedOver(Box<crate::peer::HandoverOutcome>),
    /// What a dossier asked for did here (`Request::AskHandover`).
    Asked(Box<crate::peer::AskOutcome>),
    /// An enrolment bundle.
    Enrolled {
        site_id: u32,
        name: String,
        bundle: Vec<u8>,
    },
    /// Sites known to the host.
    Sites(BTreeMap<u32, SiteRecord>),
    /// Sites as the operator sees them.
    Fleet(Vec<crate::fleet::SiteOverview>),
    /// Renewals asked for over sync.
    Renewals(Vec<enrol::Renewal>),
    /// A certificate issued or installed: the end of its validity; installed from a renewal
    /// bundle, the host address the bundle names (the site dials `host_address` in its
    /// `carnet.toml`, which the bundle does not change).
    Certificate {
        not_after: Millis,
        bundle_host_address: Option<String>,
    },
    /// A new host key prepared and announced, not served yet: its certificate's end and pin.
    HostKeyPrepared { not_after: Millis, pin: [u8; 32] },
    /// The host serves its new key: the pins of the old and the new, the certificate's end.
    HostKeySwitched {
        old: [u8; 32],
        new: [u8; 32],
        not_after: Millis,
    },
    /// A host key revoked by the CA: the revocation file's bytes.
    HostKeyRevoked { pin: [u8; 32], file: Vec<u8> },
    /// A site installed a host key revocation.
    RevocationInstalled {
        pin: [u8; 32],
        /// It held it already: nothing changed.
        already: bool,
        /// No host key is pinned any more: no sync until a renewal bundle is installed.
        no_pin_left: bool,
    },
    /// The host's PKI.
    PkiHost(PkiHostStatus),
    /// Professionals bound to a site, by RPPS.
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
    QuarantinedBody { body: Zeroizing<Vec<u8>> },
    /// Emergencies as the host judged them.
    Emergencies(Vec<Emergency>),
    /// The host's notifications.
    Notifications(Vec<Notification>),
    /// A backup written.
    Backup(BackupInfo),
    /// The documents whose stored body is damaged (none: every body read whole and matched).
    DamagedBodies(Vec<DocId>),
}

/// Largest body a read decrypts on the runtime's own threads; a larger one is read on the
/// blocking side, so sessions and keep-alives never wait behind it.
const ASYNC_READ_MAX: u64 = 1 << 20;

/// A replica and what a running daemon adds to it: the live revocation list, the link state,
/// the site's connection to the host (which also keeps one sync round at a time), and the
/// signal that the store changed.
#[derive(Debug)]
pub struct Service {
    /// The store.
    pub replica: Arc<Replica>,
    /// The host's live revocation list (daemon only).
    pub revoked: Option<Arc<Revoked>>,
    /// The link as the daemon last saw it (daemon only).
    pub link: Option<Mutex<LinkState>>,
    /// Site: the connection to the host, kept open between rounds; one round at a time
    /// (`None` at the host, which serves rounds).
    pub connection: Option<tokio::sync::Mutex<crate::net::Link>>,
    /// Notified after each request that may change the store, and (site) when the host pokes:
    /// the daemon then pokes live sites (host) or runs a round (site).
    pub changed: Arc<tokio::sync::Notify>,
    /// The host's QUIC endpoint (daemon only): a renewed host certificate is served at once.
    pub server: Option<Arc<crate::transport::HostServer>>,
    /// Host: what the daemon saw of each site (daemon only).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Site: its presence on the local network, with `discover = true` (daemon only).
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// Site: where the last round left the sync state (`SyncMark`), so only a round that moved
    /// it writes an entry in the change feed.
    sync_mark: Mutex<Option<SyncMark>>,
}

/// What of a round's outcome the change feed follows: whether it succeeded, and what the host
/// holds and sent. Two idle rounds, or two failures, leave the same mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SyncMark {
    ok: bool,
    pushed: u64,
    traces: u64,
    log_head: u64,
    moved: usize,
}

impl SyncMark {
    fn of(result: &Result<RoundReport>) -> Self {
        match result {
            Ok(r) => SyncMark {
                ok: true,
                pushed: r.pushed,
                traces: r.traces,
                log_head: r.log_head,
                moved: r.pulled + r.bodies + r.returned + r.purged + r.withdrawn,
            },
            Err(_) => SyncMark {
                ok: false,
                pushed: 0,
                traces: 0,
                log_head: 0,
                moved: 0,
            },
        }
    }
}

impl Service {
    /// A service for `replica` with no daemon state (a site's rounds dial the host addresses
    /// of `carnet.toml` in its folder; a daemon gives its link the ones it loaded).
    pub fn new(replica: Arc<Replica>) -> Self {
        let changed = Arc::new(tokio::sync::Notify::new());
        Service {
            connection: SiteReplica::new(replica.clone()).ok().map(|site| {
                tokio::sync::Mutex::new(crate::net::Link::from_settings(site, changed.clone()))
            }),
            replica,
            revoked: None,
            link: None,
            changed,
            server: None,
            fleet: None,
            discovery: None,
            sync_mark: Mutex::new(None),
        }
    }

    /// Site: closes the connection to the host, if open (the daemon stopping).
    pub async fn close_connection(&self) {
        if let Some(connection) = &self.connection {
            connection.lock().await.close().await;
        }
    }

    /// Runs one sync round, one at a time, recording the link state. Without a daemon the
    /// connection closes after the round; a daemon keeps it open (the live phase).
    pub async fn sync_round(&self) -> Result<RoundReport> {
        let Some(connection) = &self.connection else {
            return Err(sync_at_host());
        };
        let mut connection = connection.lock().await;
        let result = connection.round().await;
        if self.link.is_none() {
            connection.close().await;
        }
        if let Some(link) = &self.link
            && let Ok(mut l) = link.lock()
        {
            l.host_address = connection.address().filter(|_| result.is_ok());
            l.connected = l.host_address.is_some();
            l.connections = connection.connections();
            match &result {
                Ok(report) => {
                    l.traces_acked = report.traces;
                    l.log_head = report.log_head;
                    l.last_sync = Some(self.replica.now());
                    l.last_error = None;
                    l.rounds_ok += 1;
                    l.bytes_sent += report.wire_sent;
                    l.bytes_received += report.wire_received;
                }
                Err(e) => {
                    let kind = crate::fleet::error_kind(e);
                    l.last_error = Some(e.to_string());
                    l.rounds_failed += 1;
                    *l.errors.entry(kind.to_string()).or_default() += 1;
                    if l.recent_errors.len() == RECENT_ERRORS {
                        l.recent_errors.remove(0);
                    }
                    l.recent_errors
                        .push((self.replica.now(), kind.to_string(), e.to_string()));
                }
            }
        }
        let mark = SyncMark::of(&result);
        let moved = self
            .sync_mark
            .lock()
            .map(|mut last| last.replace(mark) != Some(mark) || mark.moved > 0)
            .unwrap_or(false);
        if moved && let Err(e) = self.replica.note_sync_change() {
            tracing::warn!(error = %e, "the change feed could not record the sync state");
        }
        result
    }

    /// Runs `request` on the store. `SyncNow` is async: see `run`.
    pub fn execute(&self, request: Request) -> Result<Response> {
        let r = &*self.replica;
        Ok(match request {
            Request::Config => Response::Config(r.config().clone()),
            Request::AddProfessional { professional } => {
                r.add_professional(&professional)?;
                Response::Done
            }
            Request::Professionals => Response::Professionals(r.professionals()?),
            Request::CreateDossier { dossier, creator } => {
                let head = match creator {
                    Some(creator) => at_site(r, refusal::open_here_at_host)?
                        .local()
                        .open_dossier_here(dossier, &creator)?,
                    None => at_host(r, refusal::create_at_site)?
                        .authority()
                        .create_dossier(dossier)?,
                };
                Response::Dossier(Box::new(r.dossier(&head.ins)?))
            }
            Request::QualifyDossier { ins, rpps } => {
                at_site(r, refusal::not_opened_here)?
                    .local()
                    .qualify_dossier(&ins, &rpps)?;
                Response::Done
            }
            Request::Dossier { ins, actor } => {
                Response::Dossier(Box::new(r.show_dossier(reader(&actor), &ins)?))
            }
            Request::Dossiers { actor } => Response::Dossiers(r.list_dossiers(reader(&actor))?),
            Request::Grants { ins, actor } => {
                Response::Grants(r.list_grants(reader(&actor), &ins)?)
            }
            Request::HoldsDossier { ins } => Response::Holds(r.has_dossier_key(&ins)?),
            Request::ReadTrace { ins, actor } => {
                Response::Audit(r.read_trace(reader(&actor), &ins)?)
            }
            Request::CloseDossier {
                ins,
                reason,
                deletion_requested,
            } => {
                at_host(r, refusal::authority)?.authority().close_dossier(
                    &ins,
                    &reason,
                    deletion_requested,
                )?;
                Response::Dossier(Box::new(r.dossier(&ins)?))
            }
            Request::RequestDeletion { ins } => {
                at_host(r, refusal::authority)?
                    .authority()
                    .request_deletion(&ins)?;
                Response::Dossier(Box::new(r.dossier(&ins)?))
            }
            Request::ReopenDossier { ins, reason } => {
                at_host(r, refusal::authority)?
                    .authority()
                    .reopen_dossier(&ins, &reason)?;
                Response::Dossier(Box::new(r.dossier(&ins)?))
            }
            Request::AddRepresentative {
                ins,
                representative,
            } => {
                at_host(r, refusal::authority)?
                    .authority()
                    .add_representative(&ins, representative)?;
                Response::Dossier(Box::new(r.dossier(&ins)?))
            }
            Request::RemoveRepresentative { ins, id } => {
                at_host(r, refusal::authority)?
                    .authority()
                    .remove_representative(&ins, id)?;
                Response::Dossier(Box::new(r.dossier(&ins)?))
            }
            Request::PurgeDossier { ins } => {
                at_host(r, refusal::authority)?
                    .authority()
                    .purge_dossier(&ins)?;
                Response::Done
            }
            Request::SetGrant {
                ins,
                rpps,
                state,
                basis,
                until,
            } => {
                let held = |r: &Replica| -> carnet_store::Result<Option<Grant>> {
                    Ok(r.dossier(&ins)?.grants.into_iter().find(|g| g.rpps == rpps))
                };
                // A revocation or block keeps the basis it ends, for the record.
                let basis = match basis {
                    Some(b) => b,
                    None => held(r)?.map_or(GrantBasis::Consent, |g| g.basis),
                };
                at_host(r, refusal::authority)?
                    .authority()
                    .set_grant(&ins, &rpps, state, basis, until)?;
                let grant =
                    held(r)?.ok_or_else(|| carnet_store::Error::NotFound("grant".into()))?;
                Response::Grants(vec![grant])
            }
            Request::PendingGrant { ins, rpps } => {
                at_site(r, refusal::pending_grant_at_host)?
                    .local()
                    .record_pending_grant(&ins, &rpps)?;
                Response::Done
            }
            Request::UpdateEmergency {
                ins,
                samu,
                btg,
                masked,
            } => Response::Emergency(
                at_host(r, refusal::authority)?
                    .authority()
                    .update_emergency(&ins, |p| {
                        p.samu_allowed = samu.unwrap_or(p.samu_allowed);
                        p.btg_allowed = btg.unwrap_or(p.btg_allowed);
                        p.masked_in_emergency = masked.unwrap_or(p.masked_in_emergency);
                    })?,
            ),
            Request::PutDocument {
                actor,
                mode,
                reason,
                ins,
                document,
            } => {
                Response::DocId(r.put_document(&actor, mode, reason.as_deref(), &ins, document)?)
            }
            Request::ReadDocument {
                actor,
                id,
                mode,
                reason,
            } => Response::Read(Box::new(r.read_document(
                &actor,
                &id,
                mode,
                reason.as_deref(),
            )?)),
            Request::ListDocuments { actor, ins } => {
                Response::Documents(r.list_documents(&actor, &ins)?)
            }
            Request::Quarantine => Response::Quarantine(r.quarantined()?),
            Request::QuarantineShow { id } => {
                Response::Quarantined(Box::new(r.quarantined_one(&id)?))
            }
            Request::QuarantineBody { actor, id } => Response::QuarantinedBody {
                body: at_site(r, || refusal::not_quarantined(&id))?
                    .local()
                    .quarantined_body(&actor, &id)?,
            },
            Request::QuarantineRefile { actor, id, ins } => Response::DocId(
                at_site(r, || refusal::not_quarantined(&id))?
                    .local()
                    .refile_quarantined(&actor, &id, &ins)?,
            ),
            Request::ResolveConflict { actor, doc, keep } => {
                r.resolve_conflict(&actor, &doc, &keep)?;
                Response::Done
            }
            Request::UpdateDocument { actor, id, action } => {
                Response::Document(Box::new(r.update_document(&actor, &id, action)?))
            }
            Request::ImportFhir { json } => {
                Response::FhirImported(crate::fhir::import(r, crate::fhir::read(json.as_bytes())?)?)
            }
            Request::ReplaceDocument {
                actor,
                id,
                document,
            } => Response::DocId(r.replace_document(&actor, &id, document)?),
            Request::AuditEntries { ins } => Response::Audit(r.audit_entries(ins.as_ref())?),
            Request::VerifyAudit => {
                let (chains, entries) = r.verify_audit()?;
                Response::Verified { chains, entries }
            }
            Request::CheckBodies => Response::DamagedBodies(r.damaged_bodies()?),
            Request::RotateMasterKey { passphrase } => {
                let source = match passphrase {
                    Some(p) if !p.is_empty() => KeySource::Passphrase(Zeroizing::new(p)),
                    _ => KeySource::File,
                };
                r.rotate_master_key(&source)?;
                Response::Done
            }
            Request::ExportDossier { actor, ins } => {
                Response::Export(Box::new(r.export_dossier(&actor, &ins)?))
            }
            Request::ExportAuthority => Response::Authority(r.export_authority()?),
            Request::ImportAuthority { bundle } => Response::Imported(r.import_authority(&bundle)?),
            Request::HostKey => Response::HostKey(r.host_key()?),
            Request::Pin { ins, on, site } => {
                match (r.as_site(), r.as_host(), site) {
                    (Some(here), _, None) => here.local().pin(&ins, on)?,
                    (_, Some(host), Some(site)) => {
                        host.authority().decide_pin(SiteId(site), &ins, on)?
                    }
                    (Some(_), _, Some(_)) => {
                        return Err(Error::Invalid(
                            "--site is for the host: a site pins for itself".into(),
                        ));
                    }
                    _ => {
                        return Err(Error::Invalid(
                            "at the host, name the site whose pin is decided (--site N)".into(),
                        ));
                    }
                }
                Response::Done
            }
            Request::EmergencyFetch {
                ins,
                rpps,
                mode,
                reason,
            } => {
                at_site(r, refusal::fetch_at_host)?
                    .local()
                    .request_emergency_fetch(&ins, &rpps, mode, &reason)?;
                Response::Done
            }
            Request::BindProfessional { site, rpps, on } => {
                at_host(r, || {
                    refusal::decided_by_host("which professionals practise at a site")
                })?
                .authority()
                .bind_professional(SiteId(site), &rpps, on)?;
                Response::Done
            }
            Request::SiteProfessionals { site } => {
                // (A site binds no one: it answers the empty list it holds.)
                Response::Bound(match r.as_host() {
                    Some(host) => host.authority().site_professionals(SiteId(site))?,
                    None => Vec::new(),
                })
            }
            Request::SiteRequests => Response::SiteRequests(
                at_host(r, || refusal::decided_by_host("a site's request"))?
                    .authority()
                    .site_requests()?,
            ),
            Request::Conflicts { dossier } => {
                Response::Conflicts(r.conflict_branches(dossier.as_ref())?)
            }
            Request::Emergencies { pending } => Response::Emergencies(
                at_host(r, refusal::emergencies_at_site)?
                    .oversight()
                    .emergencies(pending)?,
            ),
            Request::ReviewEmergency { id, by, note } => Response::Emergencies(vec![
                at_host(r, refusal::emergencies_at_site)?
                    .oversight()
                    .review_emergency(id, &by, &note)?,
            ]),
            Request::Notifications { dossier } => Response::Notifications(
                at_host(r, refusal::notifications_at_site)?
                    .oversight()
                    .notifications(dossier.as_ref())?,
            ),
            Request::Backup { path } => {
                if !path.is_absolute() {
                    return Err(Error::Invalid(
                        "the backup path must be absolute (the daemon runs elsewhere)".into(),
                    ));
                }
                Response::Backup(r.backup_to(&path, &[crate::config::CONFIG_FILE])?)
            }
            Request::SyncStatus => Response::SyncStatus(Box::new(self.status()?)),
            Request::Inbox => {
                let dir = self.inbox_dir()?;
                Response::Inbox(Box::new(
                    crate::inbox::state(&dir, r.now()).map_err(|e| inbox_unreadable(&dir, e))?,
                ))
            }
            Request::InboxRetry { name } => {
                Response::InboxRetried(crate::inbox::retry(&self.inbox_dir()?, &name)?)
            }
            Request::SyncNow | Request::Handover { .. } | Request::AskHandover { .. } => {
                return Err(Error::Invalid(
                    "a sync round or a handover runs on the async side (Service::run)".into(),
                ));
            }
            Request::PkiInit {
                offline_ca,
                ca_in_replica,
            } => {
                match offline_ca {
                    Some(ca) => enrol::init_host_with(r, &ca, false)?,
                    None if ca_in_replica => enrol::init_host(r)?,
                    None => {
                        return Err(Error::Invalid(
                            "pki_init: give the offline CA (`offline_ca`), or say `ca_in_replica: true` to keep the CA key in this replica".into(),
                        ));
                    }
                }
                Response::Done
            }
            Request::PkiEnrol {
                name,
                finess,
                host_address,
                pros,
                ca,
                days,
            } => {
                // Every professional is checked before the site exists: all or nothing.
                let registered = r.professionals()?;
                if let Some(missing) = pros
                    .iter()
                    .find(|p| !registered.iter().any(|r| &r.rpps == *p))
                {
                    return Err(Error::Store(carnet_store::Error::NotFound(format!(
                        "professional {missing} is not registered at the host (carnet pro add)"
                    ))));
                }
                let b = enrol::enrol_with(r, &name, &finess, &host_address, ca.as_ref(), days)?;
                let host = at_host(r, || {
                    refusal::decided_by_host("which professionals practise at a site")
                })?;
                for rpps in &pros {
                    host.authority()
                        .bind_professional(SiteId(b.site_id), rpps, true)?;
                }
                Response::Enrolled {
                    site_id: b.site_id,
                    name: b.name.clone(),
                    bundle: b.to_bytes()?,
                }
            }
            Request::PkiRevoke { site } => {
                enrol::revoke(r, site)?;
                if let Some(revoked) = &self.revoked
                    && let Some(s) = enrol::sites(r)?.get(&site)
                {
                    for f in s.refused() {
                        revoked.add(f);
                    }
                }
                Response::Done
            }
            Request::PkiSites => Response::Sites(enrol::sites(r)?),
            Request::Fleet { site } => Response::Fleet(self.fleet(site)?),
            Request::PkiRenewals => Response::Renewals(enrol::renewals(r)?),
            Request::PkiSignPending { ca } => {
                Response::Renewals(enrol::sign_pending(r, ca.as_ref())?)
            }
            Request::PkiRenew {
                site,
                host_address,
                retire_old,
                ca,
            } => {
                let b = enrol::renew(r, site, host_address.as_deref(), retire_old, ca.as_ref())?;
                // Retired certificates are refused at once, live connections included.
                if let Some(revoked) = &self.revoked
                    && let Some(s) = enrol::sites(r)?.get(&site)
                {
                    for f in s.refused() {
                        revoked.add(f);
                    }
                }
                Response::Enrolled {
                    site_id: b.site_id,
                    name: b.name.clone(),
                    bundle: b.to_bytes()?,
                }
            }
            Request::PkiRenewHost {
                new_key: true,
                switch: true,
                ..
            } => {
                return Err(Error::Invalid(
                    "--new-key prepares a key, --switch serves the one prepared: one at a time"
                        .into(),
                ));
            }
            Request::PkiRenewHost {
                new_key: true, ca, ..
            } => {
                let (v, pin) = crate::hostkey::prepare_next(r, ca.as_ref())?;
                Response::HostKeyPrepared {
                    not_after: v.not_after.saturating_mul(1000),
                    pin,
                }
            }
            Request::PkiRenewHost { switch: true, .. } => {
                let done = crate::hostkey::switch(r)?;
                self.serve_host_identity()?;
                Response::HostKeySwitched {
                    old: done.old,
                    new: done.new,
                    not_after: done.validity.not_after.saturating_mul(1000),
                }
            }
            Request::PkiRenewHost { ca, .. } => {
                let v = enrol::renew_host(r, ca.as_ref())?;
                self.serve_host_identity()?;
                Response::Certificate {
                    not_after: v.not_after.saturating_mul(1000),
                    bundle_host_address: None,
                }
            }
            Request::PkiRevokeHost { pin, ca } => {
                let revocation = crate::hostkey::revoke(r, pin, ca.as_ref())?;
                Response::HostKeyRevoked {
                    pin,
                    file: revocation.to_bytes()?,
                }
            }
            Request::PkiInstall { bundle } if crate::hostkey::HostRevocation::is_file(&bundle) => {
                let done = crate::hostkey::install_revocation(r, &bundle)?;
                Response::RevocationInstalled {
                    pin: done.pin,
                    already: done.already,
                    no_pin_left: done.no_pin_left,
                }
            }
            Request::PkiInstall { bundle } => {
                let b = enrol::Bundle::from_bytes(&bundle)?;
                let v = enrol::install_renewal(r, &b)?;
                Response::Certificate {
                    not_after: v.not_after.saturating_mul(1000),
                    bundle_host_address: Some(b.host_address),
                }
            }
            Request::PkiHost => Response::PkiHost(enrol::host_status(r)?),
        })
    }

    /// What a peer session of this site needs: the site, the certificates it refuses and its
    /// discovery (`discover = true`, daemon only). Refused at the host.
    #[allow(clippy::type_complexity)]
    fn peer_side(
        &self,
    ) -> Result<(
        SiteReplica,
        Arc<Revoked>,
        Option<Arc<crate::discovery::Discovery>>,
    )> {
        let site = SiteReplica::new(self.replica.clone()).map_err(|_| {
            Error::Invalid(
                "the host has no peers: a site hands dossiers over and asks for them".into(),
            )
        })?;
        let revoked = crate::peer::revoked_list(&site);
        Ok((site, revoked, self.discovery.clone()))
    }

    /// Runs `request`: a sync round, and a document read, on the async side; anything else on
    /// a blocking thread.
    pub async fn run(self: &Arc<Self>, request: Request) -> Result<Response> {
        if let Request::SyncNow = request {
            return self.sync_round().await.map(Response::Synced);
        }
        if let Request::Handover {
            peer,
            ins,
            by,
            reason,
        } = request
        {
            let (site, revoked, discovery) = self.peer_side()?;
            let outcome =
                crate::peer::hand_over(site, &peer, ins, by, reason, revoked, discovery).await;
            // The handover is traced here: the next round pushes the entry.
            self.changed.notify_one();
            return outcome.map(|o| Response::HandedOver(Box::new(o)));
        }
        if let Request::AskHandover {
            peer,
            ins,
            by,
            reason,
        } = request
        {
            let (site, revoked, discovery) = self.peer_side()?;
            let outcome = crate::peer::ask(site, &peer, ins, by, reason, revoked, discovery).await;
            self.changed.notify_one();
            return outcome.map(|o| Response::Asked(Box::new(o)));
        }
        if let Request::ReadDocument {
            actor,
            id,
            mode,
            reason,
        } = &request
            && self
                .replica
                .body_size(id)
                .is_ok_and(|n| n <= ASYNC_READ_MAX)
        {
            // While its trace entry is made durable, the read waits without holding a thread
            // (the daemon's committer thread syncs the journal for all of them).
            let read = self
                .replica
                .read_document_async(actor, id, *mode, reason.as_deref())
                .await;
            if request.may_change_what_syncs(self.replica.config().role) {
                self.changed.notify_one();
            }
            return Ok(Response::Read(Box::new(read?)));
        }
        // (A denied request is traced too: the signal goes either way.)
        let changes = request.may_change_what_syncs(self.replica.config().role);
        let service = self.clone();
        let result = tokio::task::spawn_blocking(move || service.execute(request))
            .await
            .map_err(|e| Error::Invalid(format!("the request failed: {e}")))?;
        if changes {
            self.changed.notify_one();
        }
        result
    }

    /// Host (daemon only): presents the host's certificate as the register holds it from the
    /// next handshake on (a renewal, a switch to a new key).
    fn serve_host_identity(&self) -> Result<()> {
        if let (Some(server), Some(revoked)) = (&self.server, &self.revoked) {
            let (ca, identity) = enrol::host_identity(&self.replica)?;
            server.serve(crate::transport::server_config(
                &ca,
                &identity,
                revoked.clone(),
            )?);
        }
        Ok(())
    }

    /// Host: the sites as the operator sees them; refused at a site, and without a daemon
    /// (only a running daemon sees connections and rounds).
    pub fn fleet(&self, site: Option<u32>) -> Result<Vec<crate::fleet::SiteOverview>> {
        let host = self.replica.as_host().ok_or_else(|| {
            Error::Invalid(
                "`carnet sites` runs at the host: a site sees its own link with `carnet sync status`"
                    .into(),
            )
        })?;
        let fleet = self.fleet.as_ref().ok_or_else(|| {
            Error::Invalid(
                "no host daemon runs on this data folder: start carnet-syncd (only the daemon sees the sites connect); `carnet pki list` shows the register"
                    .into(),
            )
        })?;
        crate::fleet::overview(host, fleet, site)
    }

    /// Site: the inbox folder: the one the daemon watches (`carnet.toml` as it loaded it), or
    /// without a daemon the one `carnet.toml` in the data folder names.
    fn inbox_dir(&self) -> Result<PathBuf> {
        if self.replica.as_site().is_none() {
            return Err(Error::Invalid(
                "the inbox is a site's: the host has none".into(),
            ));
        }
        let watched = self.link.as_ref().and_then(|l| {
            l.lock()
                .ok()
                .and_then(|l| l.settings.as_ref().map(|c| c.inbox.clone()))
        });
        let dir = self.replica.dir();
        Ok(match watched {
            Some(inbox) => inbox,
            None => crate::config::Config::inbox_of(dir)?,
        })
    }

    /// Where sync stands (`carnet sync status`).
    pub fn status(&self) -> Result<SyncStatus> {
        let r = &*self.replica;
        let (authority_as_of, lease_expired) = r.authority_freshness()?;
        let mut link = self
            .link
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.clone()));
        if let (Some(l), Some(Ok(connection))) = (
            &mut link,
            self.connection.as_ref().map(tokio::sync::Mutex::try_lock),
        ) {
            // (During a round, the round's own outcome decides.)
            l.connected &= connection.is_open();
        }
        // The inbox is looked at, never a reason for the status to fail.
        let (inbox, inbox_error) = match r.as_site().map(|_| self.inbox_dir()) {
            None => (None, None),
            Some(Err(e)) => (None, Some(e.to_string())),
            Some(Ok(dir)) => match crate::inbox::summary(&dir, r.now()) {
                Ok(summary) => (Some(summary), None),
                Err(e) => (None, Some(inbox_unreadable(&dir, e).to_string())),
            },
        };
        Ok(SyncStatus {
            authority_as_of,
            lease_expired,
            pending: r.outbox_len()?,
            pending_by_kind: r
                .outbox_by_kind()?
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            pending_traces: match &link {
                Some(l) if l.last_sync.is_some() => {
                    Some(r.trace_head()?.saturating_sub(l.traces_acked))
                }
                _ => None,
            },
            missing_bodies: r.missing_bodies()?.len(),
            cursor: r.pull_cursor()?,
            cursor_lag: match &link {
                Some(l) if l.last_sync.is_some() => {
                    Some(l.log_head.saturating_sub(r.pull_cursor()?))
                }
                _ => None,
            },
            quarantine: r
                .quarantined()?
                .into_iter()
                .map(|q| (q.id, q.record.at, q.record.reason))
                .collect(),
            conflicts: r.conflicted()?,
            held: r.held_back()?,
            withheld: r
                .withheld()?
                .into_iter()
                .map(|(seq, h)| (seq, h.at, h.reason))
                .collect(),
            restored: r.restore_mark()?,
            inbox,
            inbox_error,
            link,
            certificate: enrol::site_certificate(r)?,
        })
    }
}

/// A request's actor as a reader: `None` is the host's operator.
fn reader(actor: &Option<Actor>) -> Reader<'_> {
    actor.as_ref().map_or(Reader::Operator, Reader::Person)
}

/// Where the daemon of the replica in `dir` listens.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// The inbox folder `dir` could not be read.
fn inbox_unreadable(dir: &Path, e: std::io::Error) -> Error {
    Error::Invalid(format!(
        "cannot read the inbox {}: {e} (the daemon's user must own it; `inbox` in carnet.toml names it)",
        dir.display()
    ))
}

/// `carnet sync now` asked of the host.
fn sync_at_host() -> Error {
    Error::Invalid("the host serves sync (carnet-syncd); `carnet sync now` runs on a site".into())
}

/// `r` as the host, or `refused` at a site.
fn at_host(
    r: &Replica,
    refused: impl FnOnce() -> carnet_store::Error,
) -> carnet_store::Result<Host<'_>> {
    r.as_host().ok_or_else(refused)
}

/// `r` as a site, or `refused` at the host.
fn at_site(
    r: &Replica,
    refused: impl FnOnce() -> carnet_store::Error,
) -> carnet_store::Result<Site<'_>> {
    r.as_site().ok_or_else(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carnet_store::replica::Role;

    /// An error of any kind crosses the socket as itself: `carnet` says the same and exits with
    /// the same code through the daemon as without it.
    #[test]
    fn a_sync_error_crosses_the_socket_with_its_kind() {
        let through = |e: Error| -> Error {
            let json = serde_json::to_string(&wire::Error::from(e)).expect("encode");
            serde_json::from_str::<wire::Error>(&json)
                .expect("decode")
                .into()
        };
        let io = through(Error::Io(std::io::Error::other("the host did not answer")));
        assert!(matches!(&io, Error::Io(_)), "{io:?}");
        assert_eq!(io.to_string(), "the host did not answer");
        for (e, text) in [
            (Error::Tls("t".into()), "TLS configuration: t"),
            (Error::Pki("p".into()), "certificate authority: p"),
            (Error::Invalid("i".into()), "i"),
        ] {
            let kind = std::mem::discriminant(&e);
            let back = through(e);
            assert_eq!(std::mem::discriminant(&back), kind, "{back:?}");
            assert_eq!(back.to_string(), text);
        }
    }

    #[test]
    fn reads_signal_a_round_at_a_site_and_never_wake_the_hosts_live_pass() {
        let read = Request::ReadDocument {
            actor: Actor::Holder,
            id: DocId([7; 16]),
            mode: AccessMode::Normal,
            reason: None,
        };
        assert!(
            read.may_change_what_syncs(Role::Site),
            "its trace goes to the host"
        );
        assert!(
            !read.may_change_what_syncs(Role::Host),
            "its trace stays at the host"
        );
        let pin = Request::Pin {
            ins: Ins::from_body("2840575123456").expect("ins"),
            on: true,
            site: None,
        };
        for role in [Role::Site, Role::Host] {
            assert!(pin.may_change_what_syncs(role));
            assert!(!Request::SyncStatus.may_change_what_syncs(role));
        }
    }
}
