//! The command line, as clap definitions. Parsing only: `commands` does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Carnet: an offline-first, encrypted replica of the shared medical record (DMP).
#[derive(Debug, Parser)]
#[command(name = "carnet", version, about, long_about = None)]
pub struct Cli {
    /// Data folder of the replica.
    #[arg(long, env = "CARNET_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// Machine-readable JSON output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new replica in the data folder.
    #[command(after_long_help = examples::INIT)]
    Init(InitArgs),
    /// Professionals registered at this site.
    #[command(subcommand)]
    Pro(ProCmd),
    /// Dossiers (creation and closure are the host's).
    #[command(subcommand)]
    Dossier(DossierCmd),
    /// Grants, revocations and blocks (host).
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Emergency preferences of a dossier (host).
    #[command(subcommand)]
    Emergency(EmergencyCmd),
    /// Documents.
    #[command(subcommand)]
    Doc(DocCmd),
    /// The trace.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Master key management.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The holder's full copy of a dossier, as a FHIR R4 Bundle.
    #[command(after_long_help = examples::EXPORT)]
    Export(ExportArgs),
    /// File documents from FHIR R4 JSON: a DocumentReference, or a Bundle of them (a holder's
    /// export too), each as its author (README, "FHIR"). What cannot be mapped refuses the whole
    /// file, naming the field and why; a document the dossier holds already (same unique id) is
    /// not filed twice.
    #[command(after_long_help = examples::IMPORT)]
    Import {
        /// The FHIR JSON file.
        file: PathBuf,
    },
    /// Signed host records: export (host) and import (site).
    #[command(subcommand)]
    Authority(AuthorityCmd),
    /// The national PKI: CA, site enrolment and revocation (host).
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Sync with the host (site).
    #[command(subcommand)]
    Sync(SyncCmd),
    /// Site: ask the host to bring a dossier into this site's scope (a request the host
    /// decides). Host, with --site: accept that site's pin (an appointment with the holder's
    /// consent is recorded).
    Pin {
        /// The dossier (INS).
        ins: String,
        /// Host: the site whose pin is accepted.
        #[arg(long)]
        site: Option<u32>,
    },
    /// Site: let a pinned dossier go at the next sync. Host, with --site: refuse that site's
    /// pin, or end an accepted one.
    Unpin {
        /// The dossier (INS).
        ins: String,
        /// Host: the site whose pin is refused or ended.
        #[arg(long)]
        site: Option<u32>,
    },
    /// Site: hand a dossier over to a peer site listed as `[[peer]]` in carnet.toml, without
    /// the host (a mobile unit bringing its patient to a clinic): the host's signed records,
    /// this site's latest heartbeat, the documents held here and this site's trace entries
    /// about it. The peer decides it all again; it brings data, not rights. With `--from`,
    /// ask a peer to hand a dossier over to this site: it does when one of its professionals
    /// cared for the patient in the last 24 hours.
    #[command(after_long_help = examples::HANDOVER)]
    Handover {
        /// The peer to hand the dossier over to (`[[peer]]` name in carnet.toml).
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        to: Option<String>,
        /// The peer to ask for the dossier (`[[peer]]` name in carnet.toml).
        #[arg(long)]
        from: Option<String>,
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// RPPS of the professional handing it over, or asking for it (registered here).
        #[arg(long = "as")]
        actor: String,
        /// Why, traced at both sites.
        #[arg(long)]
        reason: Option<String>,
    },
    /// What sites asked for and the host has not decided yet: pins and consent given in
    /// person (host).
    Requests,
    /// Documents replaced twice by changes that had not seen each other.
    #[command(subcommand)]
    Conflicts(ConflictsCmd),
    /// Host: what the holder (or representatives) and the médecin traitant are told: emergency
    /// accesses, a professional's first access, a document announced after being hidden.
    #[command(subcommand)]
    Notifications(NotificationsCmd),
    /// Documents written here that the host would not take, kept: see them, read them (their
    /// author), send them again into an open dossier.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// Site: the inbox's files that need a person: refused pairs (why, and the fix), files
    /// without the other half of their pair for 10 minutes, files left in clear in done/.
    #[command(subcommand)]
    Inbox(InboxCmd),
    /// Host: every enrolled site as the host's daemon sees it — connected, last contact, how far
    /// behind, lease, quarantine, pending requests, version, last error.
    Sites {
        /// `show SITE` for one site; without it, every site.
        #[command(subcommand)]
        show: Option<SitesCmd>,
    },
    /// The daemon's status page: prints its address, with the token that opens it
    /// (`[http] listen` in carnet.toml; the daemon must run).
    Ui,
    /// Write a consistent copy of the replica (and its carnet.toml) to a file, while it runs
    /// (through the daemon when one runs). The master key is not in it: keep it apart.
    #[command(after_long_help = examples::BACKUP)]
    Backup {
        /// The backup file (written 0600; replaced only once the new copy is complete).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Bring a backup back into a new or empty data folder (--data). A site then catches up
    /// with the host at its first sync before it records or serves anything.
    #[command(after_long_help = examples::RESTORE)]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The replica's master key file, kept apart from the data (not needed with
        /// CARNET_PASSPHRASE).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Run the demonstration scenario in a temporary folder.
    Demo(DemoArgs),
    /// Print the shell completion script for bash, zsh or fish on stdout.
    #[command(after_long_help = examples::COMPLETIONS)]
    Completions {
        /// The shell: bash, zsh or fish.
        shell: CompletionShell,
    },
    /// Write the manual pages (`carnet.1` and one per command) into a folder.
    #[command(after_long_help = examples::MAN)]
    Man {
        /// The folder the pages are written into (created when missing).
        dir: PathBuf,
    },
}

/// The shells `carnet completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsCmd {
    /// Each document in conflict with its branches: the replacing documents, who wrote each,
    /// at which site, when. Opens only those documents.
    List {
        /// Only the conflicts of this dossier (INS).
        #[arg(long)]
        dossier: Option<String>,
    },
    /// Keep one branch of a document in conflict: a choice decided as a replacement of that
    /// document, traced, and sent to the host; every replica converges to it.
    Resolve {
        /// The document in conflict.
        doc: String,
        /// The replacement to keep (one of its branches).
        #[arg(long)]
        keep: String,
        /// Who decides (RPPS).
        #[arg(long = "as")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotificationsCmd {
    /// Each notification: id, what, dossier, to whom, when, from which site (an operator read,
    /// traced).
    List {
        /// Only the notifications of this dossier (INS).
        #[arg(long)]
        dossier: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCmd {
    /// Each quarantined document: its quarantine id, dossier, author, class and type, since
    /// when, why, and what became of it. Opens no body.
    List,
    /// One quarantined document. Opens no body.
    Show {
        /// The quarantine id (`quarantine list`).
        id: String,
    },
    /// Writes a quarantined document's body: for its author (`--as RPPS`), or the host
    /// operator (no `--as`, at the host). Traced, allowed or not.
    Get {
        /// The quarantine id (`quarantine list`).
        id: String,
        /// Its author (RPPS); without it, the host's operator (at the host only).
        #[arg(long = "as")]
        actor: Option<String>,
        /// Write the body to this file (mode 0600; default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Sends a quarantined document again, as a new document of the open dossier INS, as its
    /// author: decided like any write here, and again by the host. Traced; the quarantined
    /// copy stays, showing what became of it.
    Refile {
        /// The quarantine id (`quarantine list`).
        id: String,
        /// The open dossier (INS) the document goes into.
        #[arg(long)]
        dossier: String,
        /// Its author (RPPS), who files it again.
        #[arg(long = "as")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum InboxCmd {
    /// Each refused file in rejected/ with why and what to do now; then the files waiting
    /// for the other half of their pair for 10 minutes or more, and the files in clear an
    /// older version left in done/.
    #[command(after_long_help = examples::INBOX_LIST)]
    List,
    /// Move a refused file (and its sidecar) from rejected/ back into the inbox, to be tried
    /// again: after the fix its error file names (a professional registered, a dossier
    /// brought here, the sidecar corrected in rejected/). The daemon takes it at once; without
    /// a daemon, at its next start.
    #[command(after_long_help = examples::INBOX_RETRY)]
    Retry {
        /// The file's name in rejected/, as `carnet inbox list` shows it.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SitesCmd {
    /// Everything the host's daemon knows of one site.
    Show {
        /// The site's id.
        site: u32,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// The national host: authoritative for dossiers, grants and closures.
    Host,
    /// A site (clinic, pharmacy, mobile unit) that syncs with the host.
    Site,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Host (national) or site (clinic, pharmacy, mobile unit).
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Name of the site.
    #[arg(long)]
    pub name: Option<String>,
    /// Site id (sites only; drawn at random when absent).
    #[arg(long)]
    pub site_id: Option<u32>,
    /// The host's public key to trust, 64 hex digits (sites; `carnet authority key` on the host).
    #[arg(long)]
    pub host_key: Option<String>,
    /// Hours a site may read normally from its cache without news from the host (default 72).
    #[arg(long)]
    pub lease_hours: Option<u32>,
    /// Create the site from its enrolment bundle (site id, host key, certificate).
    #[arg(long)]
    pub enrol: Option<PathBuf>,
    /// Host: the address sites connect to (default 127.0.0.1:4433).
    #[arg(long)]
    pub listen: Option<String>,
    /// Host: keep the tables in this PostgreSQL database, postgres://user@host:port/db
    /// (written to carnet.toml as [host] storage), instead of carnet.redb in the data folder.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Host: add a daemon to the host already in the --storage database (several daemons
    /// serve its sites). The data folder holds a copy of the first daemon's master.key, or
    /// CARNET_PASSPHRASE gives its passphrase.
    #[arg(long, requires = "storage")]
    pub join: bool,
}

#[derive(Debug, Subcommand)]
pub enum SyncCmd {
    /// Run one full round with the host now and wait for it (a progress line on a terminal).
    #[command(after_long_help = examples::SYNC_NOW)]
    Now,
    /// Pending changes, the pull cursor and the freshness of the host's records.
    #[command(after_long_help = examples::SYNC_STATUS)]
    Status,
}

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Create the national CA (10 years) and the host's certificate (2 years). Where the CA's
    /// private key lives is chosen here, once: `--ca-dir DIR` or `--ca-in-replica`.
    Init {
        /// Keep the CA's private key out of the host: write it (and the CA certificate) to
        /// this new folder (0700, files 0600), to be kept offline; `enrol`, `renew`,
        /// `renew-host` and `revoke-host` then need it.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Keep the CA's private key in the host replica, where the running host uses it to
        /// renew sites' certificates without a person: for a test or a demonstration, not for
        /// a national host.
        #[arg(long, conflicts_with = "ca_dir")]
        ca_in_replica: bool,
    },
    /// Enrol a site: writes its bundle (it holds a private key: hand it over securely).
    Enrol {
        /// The site's name.
        #[arg(long)]
        name: String,
        /// The site's FINESS number (9 digits).
        #[arg(long)]
        finess: String,
        /// Where sites reach the host, IP:PORT: `init --enrol` writes it to the site's
        /// carnet.toml (`host_address`), where the host's other daemons may be listed too.
        #[arg(long)]
        host_address: String,
        /// The file written (mode 0600); `-` writes to stdout.
        #[arg(short, long)]
        output: PathBuf,
        /// A professional (RPPS, registered at the host) who practises at the site; repeat for
        /// several. Only the host binds professionals to sites.
        #[arg(long = "pro")]
        pros: Vec<String>,
        /// The offline CA folder (`pki init --ca-dir`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// The certificate's lifetime in days (1 to 365, default 365); the site asks for a
        /// renewal over sync in the last third of it.
        #[arg(long)]
        days: Option<i64>,
    },
    /// Issue a site a new certificate (1 year, same site id, new key) in a renewal bundle;
    /// its current certificate stays valid until it expires, so the site switches without a
    /// gap (`pki install` at the site). With `--pending`: sign the renewals sites asked for
    /// over sync and that wait for the offline CA (`pki renewals`).
    Renew {
        /// The site's id (`pki list`).
        #[arg(required_unless_present = "pending", conflicts_with = "pending")]
        site: Option<u32>,
        /// The file written (mode 0600); `-` writes to stdout.
        #[arg(short, long, required_unless_present = "pending")]
        output: Option<PathBuf>,
        /// Sign every renewal waiting for the CA (sites receive them at their next round).
        #[arg(long)]
        pending: bool,
        /// The host address the bundle names, IP:PORT (default: as at its enrolment). A site
        /// created from the bundle writes it to its carnet.toml; one installing it keeps its
        /// carnet.toml's `host_address`.
        #[arg(long)]
        host_address: Option<String>,
        /// Refuse the site's earlier certificates at once (a key that may have leaked).
        #[arg(long)]
        retire_old: bool,
        /// The offline CA folder (`pki init --ca-dir`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// The renewals sites asked for over sync: waiting for the CA, or signed and not yet used.
    Renewals,
    /// Issue the host a new certificate (2 years) for the same TLS key, which sites pinned.
    /// With `--new-key`: prepare a new TLS key and announce it to the sites (signed by the
    /// current key) without serving it; with `--switch`: serve the prepared key.
    RenewHost {
        /// Prepare a new TLS key and its certificate; every site that syncs before the
        /// switch pins it beside the current one.
        #[arg(long, conflicts_with = "switch")]
        new_key: bool,
        /// Serve the key prepared by `--new-key`: sites that took the hand-over go on; the
        /// others need a renewal bundle (`pki renew SITE`, `pki install` at the site).
        #[arg(long)]
        switch: bool,
        /// The offline CA folder (`pki init --ca-dir`).
        #[arg(long, conflicts_with = "switch")]
        ca_dir: Option<PathBuf>,
    },
    /// Revoke a host TLS key (by its pin, `pki list`): the CA signs the revocation, the host
    /// carries it to every site at its next round, and the file (`-o`) installs at a site by
    /// hand (`pki install FILE`). Not the key the host serves: switch first.
    RevokeHost {
        /// The pin of the key to revoke (64 hex digits).
        #[arg(long)]
        pin: String,
        /// Also write the revocation to this file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The offline CA folder (`pki init --ca-dir`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// Site: install a renewal bundle (replaces this site's certificate and key: same site id,
    /// host key and CA required), or a host key revocation file (`pki revoke-host -o`).
    Install {
        /// The renewal bundle (`pki renew`) or revocation file (`pki revoke-host -o`).
        bundle: PathBuf,
    },
    /// Bind a professional (registered at the host) to a site: their grants bring dossiers
    /// into its scope.
    Bind {
        /// The site's id (`pki list`).
        #[arg(long)]
        site: u32,
        /// The professional's RPPS (registered at the host, `pro add`).
        #[arg(long)]
        rpps: String,
    },
    /// Unbind a professional from a site.
    Unbind {
        /// The site's id (`pki list`).
        #[arg(long)]
        site: u32,
        /// The professional's RPPS.
        #[arg(long)]
        rpps: String,
    },
    /// The professionals bound to a site.
    Pros {
        /// The site's id (`pki list`).
        #[arg(long)]
        site: u32,
    },
    /// Revoke a site: its certificates are refused from now on.
    Revoke {
        /// The site's id (`pki list`).
        site: u32,
    },
    /// List enrolled sites, with the expiry of each one's certificate.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ProCmd {
    /// Register a professional at this site.
    #[command(after_long_help = examples::PRO_ADD)]
    Add {
        /// The professional's RPPS number (11 digits).
        #[arg(long)]
        rpps: String,
        /// medecin, pharmacien, infirmier, sage-femme, chirurgien-dentiste, masseur-kinesitherapeute…
        #[arg(long)]
        profession: String,
        /// The specialty, e.g. medecine-generale, cardiologie (doctors).
        #[arg(long)]
        specialty: Option<String>,
        /// The professional's name, as shown in lists and traces.
        #[arg(long)]
        name: Option<String>,
    },
    /// List registered professionals.
    List,
}

#[derive(Debug, Subcommand)]
pub enum DossierCmd {
    /// Create a dossier: at the host; or at a site, opened there by a professional registered
    /// here or the holder (--as), usable at once and proposed to the host.
    #[command(after_long_help = examples::DOSSIER_CREATE)]
    Create(CreateDossierArgs),
    /// Site: the identity of a dossier opened here was checked against an ID document and
    /// INSi; what was held for it goes to the host.
    Qualify {
        /// The dossier (INS) opened here.
        ins: String,
        /// RPPS of the professional who checked it.
        #[arg(long = "as")]
        actor: String,
    },
    /// Show a dossier: identity, status, grants, emergency preferences (decided and traced).
    #[command(after_long_help = examples::DOSSIER_SHOW)]
    Show {
        /// The dossier (INS).
        ins: String,
        /// Who reads: an RPPS, `holder` or `representative`. Without it, the host's operator
        /// (at the host only).
        #[arg(long = "as")]
        actor: Option<String>,
    },
    /// List the dossiers held here (with --as: those that person may see).
    List {
        /// Who reads: an RPPS, `holder` or `representative`. Without it, the host's operator
        /// (at the host only).
        #[arg(long = "as")]
        actor: Option<String>,
    },
    /// Close a dossier at the holder's request (host): archived ten years, then purged.
    Close {
        /// The dossier (INS).
        ins: String,
        /// Why it is closed (recorded in the signed closure).
        #[arg(long)]
        reason: String,
        /// The holder asks that it be deleted rather than archived: it may be purged at once.
        #[arg(long)]
        deletion_requested: bool,
    },
    /// The holder of a closed dossier asks its deletion (host): it may then be purged at once.
    RequestDeletion {
        /// The closed dossier (INS).
        ins: String,
    },
    /// Reopen a closed dossier (host): the archive comes back, sites receive it again.
    Reopen {
        /// The closed dossier (INS).
        ins: String,
        /// Why it is reopened (recorded in the signed head).
        #[arg(long)]
        reason: String,
    },
    /// Destroy a closed dossier, its key first, then its rows (host): once its ten years of
    /// archiving are over, or the holder asked its deletion; refused before (exit 3).
    Purge {
        /// The closed dossier (INS).
        ins: String,
    },
    /// Record or end a legal representative of the holder (host).
    #[command(subcommand)]
    Representative(RepresentativeCmd),
}

#[derive(Debug, Subcommand)]
pub enum RepresentativeCmd {
    /// Record a legal representative; prints their id (R1, R2, …), what `--as
    /// representative:ID` names.
    Add {
        /// The dossier (INS).
        ins: String,
        /// The representative's name.
        #[arg(long)]
        name: String,
        /// Relationship to the holder (e.g. mother, guardian).
        #[arg(long, default_value = "legal representative")]
        relationship: String,
    },
    /// End a legal representative: from then on, their id has no access.
    Remove {
        /// The dossier (INS).
        ins: String,
        /// Their id, e.g. R1.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateDossierArgs {
    /// The patient's INS: 13 digits and a 2-digit key.
    #[arg(long)]
    pub ins: String,
    /// nir, nia, test or demo.
    #[arg(long, default_value = "nir")]
    pub ins_kind: String,
    /// Birth name (nom de naissance), as on the ID document.
    #[arg(long)]
    pub birth_name: String,
    /// First names, separated by spaces, as on the ID document.
    #[arg(long)]
    pub first_names: String,
    /// YYYY-MM-DD.
    #[arg(long)]
    pub birth_date: String,
    /// F or M.
    #[arg(long)]
    pub sex: String,
    /// INSEE code of the birthplace.
    #[arg(long)]
    pub birthplace: Option<String>,
    /// adult, minor or protected-adult.
    #[arg(long, default_value = "adult")]
    pub holder: String,
    /// A legal representative, `NAME` or `NAME:RELATIONSHIP` (repeatable); the host gives
    /// them ids R1, R2, … in this order.
    #[arg(long)]
    pub representative: Vec<String>,
    /// The identity was checked against an ID document and INSi.
    #[arg(long)]
    pub qualified: bool,
    /// Mask every new document by default.
    #[arg(long)]
    pub mask_new_by_default: bool,
    /// At a site: who opens it (an RPPS registered here, or 'holder').
    #[arg(long = "as")]
    pub actor: Option<String>,
}

#[derive(Debug, Args)]
pub struct GrantTarget {
    /// The dossier (INS).
    #[arg(long)]
    pub dossier: String,
    /// The professional's RPPS.
    #[arg(long)]
    pub rpps: String,
}

#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Grant access (host).
    #[command(after_long_help = examples::GRANT_ADD)]
    Add {
        #[command(flatten)]
        target: GrantTarget,
        /// Designate the dossier's médecin traitant (same as --basis medecin-traitant): one per
        /// dossier; the previous one keeps the same rights (basis treating).
        #[arg(long, conflicts_with = "treating")]
        medecin_traitant: bool,
        /// The same rights as the médecin traitant (same as --basis treating).
        #[arg(long)]
        treating: bool,
        /// medecin-traitant, treating, care-team or consent.
        #[arg(long, default_value = "consent")]
        basis: String,
        /// When the grant ends: a date YYYY-MM-DD (the grant runs through that day, UTC) or
        /// an RFC 3339 time. Refused in the past, and for the médecin traitant.
        #[arg(long)]
        until: Option<String>,
    },
    /// Revoke a grant (host).
    Revoke {
        #[command(flatten)]
        target: GrantTarget,
    },
    /// Block a professional from the dossier (host).
    Block {
        #[command(flatten)]
        target: GrantTarget,
    },
    /// List a dossier's grants, as a person may see them (decided and traced): the holder,
    /// representatives and the médecin traitant see all, a professional their own grant.
    List {
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// Who reads: an RPPS, `holder` or `representative:ID`. Without it, the host's
        /// operator (at the host only).
        #[arg(long = "as")]
        actor: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AllowOppose {
    /// The holder allows it.
    Allow,
    /// The holder opposes it.
    Oppose,
}

#[derive(Debug, Subcommand)]
pub enum EmergencyCmd {
    /// Site, online: fetch a dossier this site does not hold for a break-glass or centre 15
    /// access; the host decides and traces it, and the dossier stays here for 24 h.
    Fetch {
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// RPPS of the professional (bound to this site by the host).
        #[arg(long = "as")]
        actor: String,
        /// break-glass or centre-15.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Why the patient cannot consent, or the regulation call.
        #[arg(long)]
        reason: String,
    },
    /// Set emergency preferences (host); unspecified ones keep their value.
    Set {
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// Access by the SAMU's regulating doctor (centre 15).
        #[arg(long, value_enum)]
        samu: Option<AllowOppose>,
        /// Break-glass access by a professional without a grant.
        #[arg(long, value_enum)]
        btg: Option<AllowOppose>,
        /// Masked documents readable in an emergency.
        #[arg(long, value_enum)]
        masked: Option<AllowOppose>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// An ordinary access, under the actor's own rights.
    Normal,
    /// An emergency access without a grant (a reason is required; the host reviews it).
    BreakGlass,
    /// An access by the SAMU's regulating doctor (a reason is required; the host reviews it).
    #[value(name = "centre-15")]
    Centre15,
}

#[derive(Debug, Args)]
pub struct NewDocArgs {
    /// Class code (10, 11, 31, 42, 43, 44, 45, 52, 60, 90, 95).
    #[arg(long)]
    pub class: String,
    /// Type code (LOINC or French code).
    #[arg(long = "type")]
    pub type_code: String,
    /// The document's title, as shown in lists.
    #[arg(long)]
    pub title: String,
    /// MIME type of the body.
    #[arg(long, default_value = "application/pdf")]
    pub format: String,
    /// Producer-assigned unique id.
    #[arg(long)]
    pub unique_id: Option<String>,
    /// Start of the act, YYYY-MM-DD (default: now).
    #[arg(long)]
    pub service_start: Option<String>,
    /// The document's body.
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DocCmd {
    /// Add a document; prints its id.
    #[command(after_long_help = examples::DOC_ADD)]
    Add {
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// RPPS of a professional, `patient`, or `representative:ID` (e.g. `representative:R1`).
        #[arg(long = "as")]
        actor: String,
        /// How the actor writes: under their rights, or in an emergency.
        #[arg(long, value_enum, default_value = "normal")]
        mode: ModeArg,
        /// Why (required for break-glass and centre 15).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        doc: NewDocArgs,
    },
    /// Read a document (traced).
    #[command(after_long_help = examples::DOC_GET)]
    Get {
        /// The document's id (`doc list`).
        id: String,
        /// Who reads: an RPPS, `patient` or `representative:ID`.
        #[arg(long = "as")]
        actor: String,
        /// How the actor reads: under their rights, or in an emergency.
        #[arg(long, value_enum, default_value = "normal")]
        mode: ModeArg,
        /// Why (required for break-glass and centre 15).
        #[arg(long)]
        reason: Option<String>,
        /// Write the body to this file (mode 0600; default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the documents of a dossier the actor may read (traced).
    #[command(after_long_help = examples::DOC_LIST)]
    List {
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// Who reads: an RPPS, `patient` or `representative:ID`.
        #[arg(long = "as")]
        actor: String,
    },
    /// Mask from professionals.
    Mask(DocActionArgs),
    /// Unmask (host).
    Unmask(DocActionArgs),
    /// Hide from the patient until the announcement consultation.
    HideFromPatient(DocActionArgs),
    /// Hide from the legal representatives.
    HideFromRepresentatives(DocActionArgs),
    /// Delete logically (author only).
    Delete(DocActionArgs),
    /// Replace by a new document; the old one is kept, deprecated.
    Replace {
        /// The id of the document replaced.
        id: String,
        /// Who writes: an RPPS, `patient` or `representative:ID`.
        #[arg(long = "as")]
        actor: String,
        #[command(flatten)]
        doc: NewDocArgs,
    },
    /// Read every stored body and check it against its document (opened, whole, of its
    /// content hash); exit 5 naming the documents whose body is damaged. Shows no content
    /// to anyone (not traced).
    Check,
}

#[derive(Debug, Args)]
pub struct DocActionArgs {
    /// The document's id (`doc list`).
    pub id: String,
    /// Who acts: an RPPS, `patient` or `representative:ID`.
    #[arg(long = "as")]
    pub actor: String,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Show a dossier's trace: whole to the holder, representatives and the médecin traitant;
    /// their own entries to other professionals (decided and traced).
    #[command(after_long_help = examples::AUDIT_SHOW)]
    Show {
        /// The dossier (INS).
        #[arg(long)]
        dossier: String,
        /// Who reads: an RPPS, `holder` or `representative`. Without it, the host's operator
        /// (at the host only).
        #[arg(long = "as")]
        actor: Option<String>,
        /// Only the entries made at or after this time: RFC 3339 (`2026-12-01T08:00:00Z`) or a
        /// date (`2026-12-01`, from its midnight UTC).
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries, oldest first; the last line says how to see the next.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Verify every trace chain.
    Verify,
    /// Host: break-glass and centre 15 accesses from every site, each judged again by the host
    /// against what was in force at the time (conforming or not), and whether reviewed.
    Emergencies {
        /// Only those not reviewed yet.
        #[arg(long)]
        pending: bool,
    },
    /// Host: records the review of an emergency (`audit emergencies` gives its id), traced.
    Review {
        /// The emergency's id (`audit emergencies`).
        id: u64,
        /// What the review found.
        #[arg(long)]
        note: String,
        /// `operator:NAME` or `dpo:NAME`.
        #[arg(long = "as")]
        actor: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Re-wrap every key under a new master key (new key file, or CARNET_NEW_PASSPHRASE).
    Rotate {
        /// Replace every key, not only the master key: new index, registry, audit and dossier
        /// keys, every sealed value sealed again, in a new database file. After a leak: the old
        /// master key then opens nothing in this folder. The daemon must be stopped.
        #[arg(long)]
        full: bool,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The dossier (INS).
    #[arg(long)]
    pub dossier: String,
    /// `patient` or `representative:ID` (e.g. `representative:R1`).
    #[arg(long = "as")]
    pub actor: String,
    /// The file written (mode 0600); `-` writes to stdout.
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuthorityCmd {
    /// Write every signed record to a bundle file.
    #[command(after_long_help = examples::AUTHORITY_EXPORT)]
    Export {
        /// The file written (mode 0600); `-` writes to stdout.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Verify and import a bundle.
    #[command(after_long_help = examples::AUTHORITY_IMPORT)]
    Import {
        /// The bundle file (`authority export` at the host).
        file: PathBuf,
    },
    /// Print the host public key (to pin on sites with `init --host-key`).
    Key,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's data folder instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// The example sections of the main commands' long help (`--help`, and their manual pages).
/// Synthetic identities only: the INS, RPPS and names of the README's quick start.
mod examples {
    pub const INIT: &str = "Examples:
  # A national host (the master key goes to DIR/master.key, 0600):
  carnet init --role host --name \"Hôte national\"
  # A site from the enrolment bundle the host wrote for it (`carnet pki enrol`):
  carnet init --role site --enrol clinic.bundle
  # A site provisioned by hand, pinned to the host's key (`carnet authority key` there):
  carnet init --role site --name \"Maison de santé\" --host-key HEX";

    pub const PRO_ADD: &str = "Examples:
  carnet pro add --rpps 10000000001 --profession medecin --specialty medecine-generale --name \"Dr Martin\"
  carnet pro add --rpps 10000000002 --profession pharmacien";

    pub const DOSSIER_CREATE: &str = "Examples:
  # At the host, an identity checked against an ID document and INSi:
  carnet dossier create --ins 284057512345672 --ins-kind demo --birth-name EXEMPLE --first-names Camille --birth-date 1984-05-07 --sex F --qualified
  # At a site, opened by a doctor for a patient it does not know (held here until `dossier qualify`):
  carnet dossier create --ins 284057512345672 --ins-kind demo --birth-name EXEMPLE --first-names Camille --birth-date 1984-05-07 --sex F --as 10000000001";

    pub const DOSSIER_SHOW: &str = "Examples:
  carnet dossier show 284057512345672 --as 10000000001
  carnet dossier show 284057512345672 --as holder";

    pub const GRANT_ADD: &str = "Examples:
  # Designate the médecin traitant:
  carnet grant add --dossier 284057512345672 --rpps 10000000001 --medecin-traitant
  # A pharmacist, with the holder's consent, through the end of 2026:
  carnet grant add --dossier 284057512345672 --rpps 10000000002 --until 2026-12-31";

    pub const DOC_ADD: &str = "Examples:
  # A consultation report by Dr Martin (prints the new document's id):
  carnet doc add --dossier 284057512345672 --as 10000000001 --class 10 --type 11488-4 --title \"CR de consultation\" consultation.pdf
  # An emergency doctor without a grant (reviewed by the host):
  carnet doc add --dossier 284057512345672 --as 10000000003 --mode break-glass --reason \"patient inconscient\" --class 10 --type 11488-4 --title \"CR d'urgence\" urgence.pdf

A large body shows a progress bar on a terminal (not with --json, nor when stderr is not a terminal).";

    pub const DOC_GET: &str = "Examples:
  # ID as `carnet doc list` shows it; the body goes to a file written 0600:
  carnet doc get ID --as 10000000001 -o copy.pdf
  # To stdout, for another program:
  carnet doc get ID --as patient -o - | lpr";

    pub const DOC_LIST: &str = "Examples:
  carnet doc list --dossier 284057512345672 --as 10000000001
  carnet doc list --dossier 284057512345672 --as patient --json";

    pub const HANDOVER: &str = "Examples:
  # The mobile unit hands its patient's dossier to the clinic ([[peer]] name = \"clinique\"):
  carnet handover --to clinique --dossier 284057512345672 --as 10000000003 --reason \"patient amené aux urgences\"
  # The clinic asks the unit ([[peer]] name = \"smur\") for the dossier of the patient it brought:
  carnet handover --from smur --dossier 284057512345672 --as 10000000002";

    pub const EXPORT: &str = "Examples:
  # The holder's full copy (it holds their identity: the file is written 0600):
  carnet export --dossier 284057512345672 --as patient -o dossier.json
  # By a legal representative, by their id in the dossier:
  carnet export --dossier 284057512345672 --as representative:R1 -o dossier.json";

    pub const IMPORT: &str = "Examples:
  # A DocumentReference from a clinic's software, its body inline or in a Binary beside it:
  carnet import compte-rendu.fhir.json
  # A holder's export, into another replica holding the dossier and its authors:
  carnet import dossier.json";

    pub const AUDIT_SHOW: &str = "Examples:
  carnet audit show --dossier 284057512345672 --as holder
  # A page of 50 entries from 1 December 2026 (UTC); the last line names the next page:
  carnet audit show --dossier 284057512345672 --as holder --since 2026-12-01 --limit 50";

    pub const AUTHORITY_EXPORT: &str = "Examples:
  # Every signed record (it holds identities: written 0600, move it securely):
  carnet authority export -o bundle.carnet";

    pub const AUTHORITY_IMPORT: &str = "Examples:
  # At a site: verified against the pinned host key, refused whole if anything fails:
  carnet authority import bundle.carnet";

    pub const SYNC_NOW: &str = "Examples:
  carnet sync now
  carnet sync now --json";

    pub const SYNC_STATUS: &str = "Examples:
  carnet sync status
  carnet sync status --json";

    pub const INBOX_LIST: &str = "Examples:
  carnet inbox list
  carnet inbox list --json";

    pub const INBOX_RETRY: &str = "Examples:
  # After the fix its error file names (here `carnet pro add …`: the author was not registered):
  carnet inbox retry cr-consultation.pdf
  # A name with spaces, quoted:
  carnet inbox retry \"CR du 3 mars.pdf\"";

    pub const BACKUP: &str = "Examples:
  carnet backup -o /var/backups/carnet/clinic.backup";

    pub const RESTORE: &str = "Examples:
  carnet restore /var/backups/carnet/clinic.backup --data /var/lib/carnet --key-file /media/usb/master.key";

    pub const COMPLETIONS: &str = "Examples:
  carnet completions bash > /etc/bash_completion.d/carnet
  carnet completions zsh > ~/.zfunc/_carnet
  carnet completions fish > ~/.config/fish/completions/carnet.fish";

    pub const MAN: &str = "Examples:
  carnet man /usr/local/share/man/man1";
}
