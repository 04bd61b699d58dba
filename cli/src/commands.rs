//! What each command does: opens the replica, calls the store, and shapes a `Reply` in both
//! human and JSON forms. No printing here (see `main`), so the demo can run commands in-process.
//!
//! Invariant: what the local API answers too (documents, dossiers, grants, traces, sync
//! status…) is printed by `--json` as the API writes it (`api::wire`), at most with derived
//! fields added, so a concept has one name in both.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use carnet_store::Error;
use carnet_store::audit::TraceActor;
use carnet_store::authority::Bundle;
use carnet_store::ids::{DocId, Ins, InsKind, RepresentativeId, Rpps, SiteId};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{
    AccessMode, Actor, Author, Closure, DocClass, GrantBasis, GrantState, HolderKind, Identity,
    IdentityStatus, Profession, Professional, Sex,
};
use carnet_store::policy::Action;
use carnet_store::replica::{
    DossierInfo, InitOptions, KeySource, NewDocument, NewDossier, NewRepresentative,
    NotificationKind, QuarantineEntry, QuarantineState, Recipient, Replica, Role, system_clock,
};
use carnet_store::time::{Millis, format_date, format_rfc3339, parse_date, parse_rfc3339};
use carnet_syncd::api::Response;
use carnet_syncd::api::local::Handle;
use carnet_syncd::api::wire;
use carnet_syncd::hostkey::pin_hex;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::args::*;
use crate::fhir;
use crate::progress::{self, Progress};
use crate::store::Store;

/// A command's result: a human text, a JSON value, and optionally raw bytes for stdout.
#[derive(Debug, Default)]
pub struct Reply {
    pub human: String,
    pub json: Value,
    pub raw_stdout: Option<Zeroizing<Vec<u8>>>,
}

impl Reply {
    pub fn new(human: impl Into<String>, json: Value) -> Self {
        Reply {
            human: human.into(),
            json,
            raw_stdout: None,
        }
    }
}

/// A failure, with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// From the store: the kind decides the exit code.
    Store(Error),
    /// Bad command-line input (exit 2).
    Usage(String),
    /// Reading or writing a user's file failed (exit 2: fix the path).
    File(String),
    /// From the sync layer.
    Sync(carnet_syncd::Error),
}

impl From<carnet_syncd::Error> for Failure {
    fn from(e: carnet_syncd::Error) -> Self {
        match e {
            carnet_syncd::Error::Store(e) => Failure::Store(e),
            other => Failure::Sync(other),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

impl Failure {
    /// 2 usage/invalid input, 3 denied, 4 not found, 5 integrity, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) | Failure::File(_) => 2,
            Failure::Sync(carnet_syncd::Error::Io(_)) => 1,
            Failure::Sync(_) => 2,
            Failure::Store(e) => match e {
                Error::Invalid(_) | Error::Key(_) => 2,
                Error::Denied { .. } => 3,
                Error::NotFound(_) => 4,
                Error::Integrity(_) => 5,
                Error::Storage(_) | Error::Conflict(_) => 1,
            },
        }
    }

    /// A stable word for scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Usage(_) | Failure::File(_) => "invalid",
            Failure::Sync(carnet_syncd::Error::Io(_)) => "storage",
            Failure::Sync(_) => "invalid",
            Failure::Store(e) => match e {
                Error::Invalid(_) => "invalid",
                Error::Key(_) => "key",
                Error::Denied { .. } => "denied",
                Error::NotFound(_) => "not_found",
                Error::Integrity(_) => "integrity",
                Error::Storage(_) => "storage",
                Error::Conflict(_) => "conflict",
            },
        }
    }

    /// The message for people.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(m) | Failure::File(m) => m.clone(),
            Failure::Sync(e) => e.to_string(),
            Failure::Store(e) => e.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn key_source() -> KeySource {
    match std::env::var("CARNET_PASSPHRASE") {
        Ok(p) if !p.is_empty() => KeySource::Passphrase(Zeroizing::new(p)),
        _ => KeySource::File,
    }
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    cli.data
        .clone()
        .ok_or_else(|| Failure::Usage("no data folder: pass --data DIR or set CARNET_DATA".into()))
}

/// Warnings for stderr, whatever the command's outcome (`main` prints them).
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The warnings gathered while running commands, for `main` to print.
pub fn take_warnings() -> Vec<String> {
    WARNINGS
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
}

fn warn(text: String) {
    if let Ok(mut w) = WARNINGS.lock() {
        w.push(text);
    }
}

/// The replica of `--data`: through its daemon when one runs, else opened here (a data
/// folder others could read is tightened, and said).
fn open(cli: &Cli) -> Result<Store> {
    let handle = Handle::open(&data_dir(cli)?, &key_source())?;
    for fix in handle.folder_fixes() {
        warn(fix);
    }
    Ok(Store(handle))
}

fn ins(text: &str) -> Result<Ins> {
    Ok(Ins::parse(text)?)
}

fn rpps(text: &str) -> Result<Rpps> {
    Ok(Rpps::parse(text)?)
}

/// The `--as` forms: an RPPS, `patient`, or `representative:ID` (the id the host recorded
/// in the dossier head, shown by `dossier show`).
fn actor(text: &str) -> Result<Actor> {
    const FORMS: &str = "expected an 11-digit RPPS, 'patient' or 'representative:ID' (the representative's id in the dossier, e.g. representative:R1; see `carnet dossier show`)";
    match text.trim() {
        "patient" | "holder" => Ok(Actor::Holder),
        "representative" => Err(Failure::Usage(format!(
            "--as representative: name which one, {FORMS}"
        ))),
        other => match other.strip_prefix("representative:") {
            Some(id) => RepresentativeId::parse(id)
                .map(Actor::Representative)
                .map_err(|e| Failure::Usage(format!("--as '{other}': {e}; {FORMS}"))),
            None => Rpps::parse(other)
                .map(Actor::Professional)
                .map_err(|_| Failure::Usage(format!("--as '{other}': {FORMS}"))),
        },
    }
}

/// `--representative NAME` or `NAME:RELATIONSHIP`.
fn new_representative(text: &str) -> NewRepresentative {
    let (name, relationship) = text
        .split_once(':')
        .unwrap_or((text, NewRepresentative::DEFAULT_RELATIONSHIP));
    NewRepresentative {
        name: name.to_string(),
        relationship: relationship.to_string(),
    }
}

fn mode(m: ModeArg) -> AccessMode {
    match m {
        ModeArg::Normal => AccessMode::Normal,
        ModeArg::BreakGlass => AccessMode::BreakGlass,
        ModeArg::Centre15 => AccessMode::Centre15,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Failure::File(format!("cannot read {}: {e}", path.display())))
}

/// Reads a file given to a command (a document's body, a bundle), with a bytes bar when it is
/// large and `show` (`progress::shown`).
fn read_file_shown(path: &Path, show: bool) -> Result<Vec<u8>> {
    use std::io::Read;
    let failed = |e: std::io::Error| Failure::File(format!("cannot read {}: {e}", path.display()));
    let mut file = fs::File::open(path).map_err(failed)?;
    let len = file.metadata().map_err(failed)?.len();
    if !show || len < progress::LARGE {
        return read_file(path);
    }
    let bar = Progress::bytes(true, "reading", len);
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut chunk = vec![0u8; progress::CHUNK];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        out.extend_from_slice(&chunk[..n]);
        bar.inc(n as u64);
    }
    Ok(out)
}

/// Set once a command wrote its data to stdout (`-o -`): `main` then says the rest on stderr.
static WROTE_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the command wrote its data to stdout (`-o -`).
pub fn wrote_stdout() -> bool {
    WROTE_STDOUT.load(std::sync::atomic::Ordering::SeqCst)
}

/// `--since`: an RFC 3339 time, or a date (its midnight UTC).
fn parse_since(text: &str) -> Result<i64> {
    if text.contains('T') || text.contains('t') {
        Ok(carnet_store::time::parse_rfc3339(text)?)
    } else {
        Ok(carnet_store::time::parse_date(text)?)
    }
}

/// Every file the CLI writes may hold patient data or keys: mode 0600, an existing file
/// included (`carnet_store::files::write_private`). `-` is stdout, as everywhere.
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if path == Path::new("-") {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        WROTE_STDOUT.store(true, std::sync::atomic::Ordering::SeqCst);
        return match out.write_all(bytes).and_then(|()| out.flush()) {
            // The reader went away (`| head`): nothing more to say.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.map_err(|e| Failure::File(format!("cannot write the output: {e}"))),
        };
    }
    carnet_store::files::write_private(path, bytes)
        .map_err(|e| Failure::File(format!("cannot write {}: {e}", path.display())))
}

/// `write_private_file`, with a bytes bar when `bytes` is large and `show`: the file is then
/// opened once with mode 0600 (`carnet_store::files::open_private`, which sets an existing file
/// to 0600 before anything is written) and written piece by piece.
fn write_private_file_shown(path: &Path, bytes: &[u8], show: bool) -> Result<()> {
    use std::io::Write;
    if !show || (bytes.len() as u64) < progress::LARGE || path == Path::new("-") {
        return write_private_file(path, bytes);
    }
    let failed = |e: std::io::Error| Failure::File(format!("cannot write {}: {e}", path.display()));
    let bar = Progress::bytes(true, "writing", bytes.len() as u64);
    let mut file = carnet_store::files::open_private(path, true).map_err(failed)?;
    if file.metadata().map_err(failed)?.is_file() {
        file.set_len(0).map_err(failed)?;
    }
    for piece in bytes.chunks(progress::CHUNK) {
        file.write_all(piece).map_err(failed)?;
        bar.inc(piece.len() as u64);
    }
    file.flush().map_err(failed)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Result<[u8; 32]> {
    let t = text.trim();
    let bad = || Failure::Usage(format!("'{t}' is not 64 hex digits"));
    if t.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(t.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Runs one parsed command.
pub fn run(cli: &Cli) -> Result<Reply> {
    match &cli.command {
        Command::Init(a) => init(cli, a),
        Command::Pro(c) => pro(cli, c),
        Command::Dossier(c) => dossier(cli, c),
        Command::Grant(c) => grant(cli, c),
        Command::Emergency(c) => emergency(cli, c),
        Command::Doc(c) => doc(cli, c),
        Command::Audit(c) => audit(cli, c),
        Command::Keys(KeysCmd::Rotate { full: false }) => rotate(cli),
        Command::Keys(KeysCmd::Rotate { full: true }) => rotate_full(cli),
        Command::Export(a) => export(cli, a),
        Command::Import { file } => import(cli, file),
        Command::Authority(c) => authority(cli, c),
        Command::Pki(c) => pki(cli, c),
        Command::Sync(c) => sync(cli, c),
        Command::Pin { ins: text, site } => pin(cli, text, true, *site),
        Command::Unpin { ins: text, site } => pin(cli, text, false, *site),
        Command::Requests => requests(cli),
        Command::Handover {
            to,
            from,
            dossier,
            actor: by,
            reason,
        } => match (to, from) {
            (Some(to), None) => handover(cli, to, dossier, by, reason.as_deref()),
            (None, Some(from)) => ask_handover(cli, from, dossier, by, reason.as_deref()),
            _ => Err(Error::Invalid(
                "handover: give --to PEER (hand it over) or --from PEER (ask for it)".into(),
            )
            .into()),
        },
        Command::Conflicts(ConflictsCmd::List { dossier }) => conflicts(cli, dossier.as_deref()),
        Command::Quarantine(c) => quarantine(cli, c),
        Command::Inbox(c) => inbox(cli, c),
        Command::Notifications(NotificationsCmd::List { dossier }) => {
            notifications(cli, dossier.as_deref())
        }
        Command::Conflicts(ConflictsCmd::Resolve {
            doc,
            keep,
            actor: by,
        }) => {
            let r = open(cli)?;
            let (doc, keep) = (DocId::parse(doc)?, DocId::parse(keep)?);
            r.resolve_conflict(&actor(by)?, &doc, &keep)?;
            Ok(Reply::new(
                format!(
                    "{doc}: {keep} kept; the choice reaches the other replicas with the next sync"
                ),
                json!({"doc": doc.to_string(), "kept": keep.to_string()}),
            ))
        }
        Command::Sites { show } => sites(cli, show.as_ref()),
        Command::Ui => ui(cli),
        Command::Backup { output } => backup(cli, output),
        Command::Restore { file, key_file } => restore(cli, file, key_file.as_deref()),
        Command::Demo(a) => crate::demo::run(a),
        Command::Completions { shell } => Ok(completions(*shell)),
        Command::Man { dir } => man_pages(dir),
    }
}

/// The completion script for `shell`, on stdout as it is.
fn completions(shell: crate::args::CompletionShell) -> Reply {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        crate::args::CompletionShell::Bash => Shell::Bash,
        crate::args::CompletionShell::Zsh => Shell::Zsh,
        crate::args::CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "carnet", &mut script);
    let mut reply = Reply::new("", json!({}));
    reply.raw_stdout = Some(Zeroizing::new(script));
    reply
}

/// Writes `carnet.1` and one page per command (`carnet-doc.1`, `carnet-doc-add.1`…) into `dir`.
fn man_pages(dir: &Path) -> Result<Reply> {
    use clap::CommandFactory;
    let failed =
        |e: std::io::Error| Failure::File(format!("cannot write into {}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(failed)?;
    let mut written = 0usize;
    let mut pending = vec![(String::from("carnet"), Cli::command())];
    while let Some((name, command)) = pending.pop() {
        let command = command
            .display_name(name.clone())
            .bin_name(name.replace('-', " "));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .title(name.to_uppercase())
            .render(&mut page)
            .map_err(failed)?;
        fs::write(dir.join(format!("{name}.1")), page).map_err(failed)?;
        written += 1;
        for sub in command.get_subcommands() {
            if sub.get_name() != "help" {
                pending.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
    }
    Ok(Reply::new(
        format!("{written} manual pages written into {}", dir.display()),
        json!({"pages": written, "dir": dir.display().to_string()}),
    ))
}

fn backup(cli: &Cli, output: &Path) -> Result<Reply> {
    if output == Path::new("-") {
        return Err(Failure::Usage(
            "a backup is written to a file, replaced only once the new copy is complete: name one (-o FILE)".into(),
        ));
    }
    let r = open(cli)?;
    // The daemon, when one runs, writes the file: it gets a path that means the same there.
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty());
    let folder = match dir {
        Some(d) => fs::canonicalize(d)
            .map_err(|e| Failure::File(format!("cannot write {}: {e}", output.display())))?,
        None => std::env::current_dir().map_err(|e| Failure::File(e.to_string()))?,
    };
    let name = output
        .file_name()
        .ok_or_else(|| Failure::Usage(format!("{} is not a file name", output.display())))?;
    let path = folder.join(name);
    let info = r.backup(path.clone())?;
    Ok(Reply::new(
        format!(
            "backup of {} {} taken at {}: {} bytes, {} tables, {} rows, written to {}\n\
             The master key is not in it: keep master.key (or the passphrase) apart, you need it to restore.",
            info.role.as_str(),
            info.site_id,
            format_rfc3339(info.taken_at),
            info.bytes,
            info.tables,
            info.rows,
            path.display()
        ),
        json!({
            "site_id": info.site_id.0,
            "role": info.role.as_str(),
            "taken_at": format_rfc3339(info.taken_at),
            "bytes": info.bytes,
            "tables": info.tables,
            "rows": info.rows,
            "output": path.display().to_string(),
        }),
    ))
}

fn restore(cli: &Cli, file: &Path, key_file: Option<&Path>) -> Result<Reply> {
    let dir = data_dir(cli)?;
    let info = carnet_store::replica::backup::restore(
        file,
        &dir,
        &key_source(),
        key_file,
        system_clock(),
    )?;
    let next = match info.role {
        Role::Site => {
            "start carnet-syncd (or run `carnet sync now`): its first round takes back what the host holds of this site; until then it records and serves nothing"
        }
        Role::Host => {
            "a host restored from a backup is behind its sites: see the README (Operations)"
        }
    };
    Ok(Reply::new(
        format!(
            "restored {} {} from the backup taken at {} into {} ({} tables, {} rows); trace verified.\n{next}",
            info.role.as_str(),
            info.site_id,
            format_rfc3339(info.taken_at),
            dir.display(),
            info.tables,
            info.rows
        ),
        json!({
            "site_id": info.site_id.0,
            "role": info.role.as_str(),
            "taken_at": format_rfc3339(info.taken_at),
            "tables": info.tables,
            "rows": info.rows,
            "data": dir.display().to_string(),
        }),
    ))
}

fn init(cli: &Cli, a: &InitArgs) -> Result<Reply> {
    let dir = data_dir(cli)?;
    let role = match a.role {
        RoleArg::Host => Role::Host,
        RoleArg::Site => Role::Site,
    };
    if role == Role::Host
        && (a.site_id.is_some()
            || a.host_key.is_some()
            || a.lease_hours.is_some()
            || a.enrol.is_some())
    {
        return Err(Failure::Usage(
            "--site-id, --host-key, --lease-hours and --enrol are for sites".into(),
        ));
    }
    if role == Role::Site && a.listen.is_some() {
        return Err(Failure::Usage("--listen is for the host".into()));
    }
    let listen = match (role, &a.listen) {
        (Role::Host, Some(text)) => Some(
            text.parse::<std::net::SocketAddr>()
                .map_err(|_| Failure::Usage(format!("--listen '{text}': expected IP:PORT")))?,
        ),
        (Role::Host, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 4433))),
        (Role::Site, _) => None,
    };
    let bundle = match &a.enrol {
        Some(path) => {
            if a.site_id.is_some() || a.host_key.is_some() {
                return Err(Failure::Usage(
                    "--enrol gives the site id and the host key: drop --site-id and --host-key"
                        .into(),
                ));
            }
            Some(carnet_syncd::enrol::Bundle::from_bytes(&read_file(path)?)?)
        }
        None => None,
    };
    let host_key = match &bundle {
        Some(b) => Some(b.host_key),
        None => a.host_key.as_deref().map(parse_hex32).transpose()?,
    };
    let source = key_source();
    let key_desc = match source {
        KeySource::File => format!(
            "key file {} (mode 0600): back it up",
            dir.join("master.key").display()
        ),
        KeySource::Passphrase(_) => "passphrase from CARNET_PASSPHRASE".to_string(),
    };
    // Everything this init writes goes again if a step fails (a full disk): nothing is left
    // that would block the next `init`.
    let fresh: Vec<PathBuf> = carnet_store::replica::DATA_FILES
        .iter()
        .chain([&carnet_syncd::config::CONFIG_FILE])
        .map(|f| dir.join(f))
        .filter(|p| !p.exists())
        .collect();
    let made = init_in(&dir, a, role, listen, bundle.as_ref(), host_key, source);
    let (r, config_path) = made.inspect_err(|_| carnet_store::replica::remove_created(&fresh))?;
    let c = r.config();
    let host_key = r.host_key()?.map(|k| hex(&k));
    Ok(Reply::new(
        format!(
            "initialised {} replica '{}' (site id {}{}) in {}\nmaster key: {key_desc}\ndaemon settings: {}{}{}",
            c.role.as_str(),
            c.name,
            c.site_id,
            match r.daemon_number() {
                0 => String::new(),
                n => format!(", daemon {n} of the host in PostgreSQL"),
            },
            dir.display(),
            config_path.display(),
            host_key
                .as_ref()
                .map(|k| format!("\nhost key: {k}"))
                .unwrap_or_default(),
            bundle
                .as_ref()
                .map(|b| format!(
                    "\nenrolled: certificate installed, host at {} (`host_address` in carnet.toml)",
                    b.host_address
                ))
                .unwrap_or_default()
        ),
        json!({"role": c.role.as_str(), "name": c.name, "site_id": c.site_id.0,
               "data": dir.display().to_string(), "host_key": host_key,
               "enrolled": bundle.is_some()}),
    ))
}

/// The writing part of `init`: the replica, the site's enrolment, `carnet.toml`.
fn init_in(
    dir: &Path,
    a: &InitArgs,
    role: Role,
    listen: Option<std::net::SocketAddr>,
    bundle: Option<&carnet_syncd::enrol::Bundle>,
    host_key: Option<[u8; 32]>,
    source: KeySource,
) -> Result<(Replica, PathBuf)> {
    let storage = match &a.storage {
        Some(url) if role == Role::Host => carnet_store::replica::Storage::postgres(url.clone()),
        Some(_) => {
            return Err(Error::Invalid(
                "--storage is for the host: a site keeps its replica in carnet.redb".into(),
            )
            .into());
        }
        None => carnet_store::replica::Storage::File,
    };
    let r = if a.join {
        if role != Role::Host || a.name.is_some() {
            return Err(Failure::Usage(
                "--join adds a daemon to a host: it takes --role host, --storage and --listen"
                    .into(),
            ));
        }
        Replica::join_on(
            dir,
            &storage,
            &source,
            system_clock(),
            carnet_store::replica::DEFAULT_CACHE_MIB,
        )?
    } else {
        Replica::init_on(
            dir,
            &storage,
            InitOptions {
                role,
                name: bundle
                    .map(|b| b.name.clone())
                    .or_else(|| a.name.clone())
                    .unwrap_or_else(|| role.as_str().to_string()),
                site_id: bundle.map(|b| SiteId(b.site_id)).or(a.site_id.map(SiteId)),
                key: source,
                host_key,
                lease_hours: a.lease_hours,
            },
            system_clock(),
        )?
    };
    if let Some(b) = bundle {
        carnet_syncd::enrol::install_site(&r, b)?;
    }
    let config = carnet_syncd::config::Config {
        role: match role {
            Role::Host => carnet_syncd::config::ConfigRole::Host,
            Role::Site => carnet_syncd::config::ConfigRole::Site,
        },
        listen,
        // What the site dials from now on (`carnet.toml`, where more daemons of the host may
        // be listed): the bundle's address to begin with.
        host_address: bundle
            .and_then(|b| b.host_address.parse::<std::net::SocketAddr>().ok())
            .map(Into::into),
        inbox: "inbox".into(),
        log_level: "info".into(),
        log_format: Default::default(),
        sync_every: carnet_syncd::config::DEFAULT_SYNC_EVERY,
        cache_mib: carnet_store::replica::DEFAULT_CACHE_MIB,
        lease_hours: match role {
            Role::Site => Some(
                a.lease_hours
                    .unwrap_or(carnet_store::replica::DEFAULT_LEASE_HOURS),
            ),
            Role::Host => None,
        },
        notification_spool: None,
        http: None,
        host: a
            .storage
            .clone()
            .map(|url| carnet_syncd::config::HostSettings {
                storage: Some(url),
                read_connections: None,
            }),
        peer_listen: None,
        discover: false,
        peers: Vec::new(),
    };
    let config_path = config.write_new(dir)?;
    Ok((r, config_path))
}

/// How often the bar of `sync now` asks the replica where the round is.
const SYNC_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs a round; when `show`, a bar counts the changes pushed (against those waiting when it
/// began) and says how many bodies are still to receive, from the replica's sync status read
/// beside the round (through the daemon when one runs: a read it serves while the round goes
/// on). With nothing to push, a spinner says the bodies alone.
fn sync_round(r: &Store, show: bool) -> Result<carnet_syncd::session::RoundReport> {
    let syncing = if r.via_daemon() {
        "syncing with the host (through the daemon)…"
    } else {
        "syncing with the host…"
    };
    let before = if show { r.sync_status().ok() } else { None };
    let Some(before) = before else {
        let _spinner = Progress::spinner(show, syncing);
        return r.sync_now();
    };
    let pending = before.pending;
    let describe = move |missing_bodies: usize| match (pending, missing_bodies) {
        (0, 0) => syncing.to_string(),
        (0, n) => format!("{syncing} {n} body(ies) to receive"),
        (_, 0) => "change(s) pushed".to_string(),
        (_, n) => format!("change(s) pushed, {n} body(ies) to receive"),
    };
    let bar = if pending == 0 {
        Progress::spinner(true, describe(before.missing_bodies))
    } else {
        Progress::counts(true, describe(before.missing_bodies), pending)
    };
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let bar = &bar;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Until the round ends (the sender dropped), every half second.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                finished.recv_timeout(SYNC_PROGRESS_EVERY)
            {
                if let Ok(now) = r.sync_status() {
                    bar.set_position(pending.saturating_sub(now.pending));
                    bar.set_message(describe(now.missing_bodies));
                }
            }
        });
        let report = r.sync_now();
        drop(done);
        report
    })
}

fn sync(cli: &Cli, c: &SyncCmd) -> Result<Reply> {
    let r = open(cli)?;
    if r.config()?.role != Role::Site {
        return Err(Failure::Usage(
            "the host serves sync (carnet-syncd); `carnet sync` runs on a site".into(),
        ));
    }
    match c {
        SyncCmd::Now => {
            let report = sync_round(&r, progress::shown(cli.json))?;
            Ok(Reply::new(
                format!(
                    "synced: the host holds this site's changes up to #{} and {} of its trace entries; pulled {} item(s), {} body(ies) received, {} dossier(s) purged, {} document(s) withdrawn, {} document(s) returned to quarantine",
                    report.pushed,
                    report.traces,
                    report.pulled,
                    report.bodies,
                    report.purged,
                    report.withdrawn,
                    report.returned
                ) + if report.renewed {
                    "; a renewed certificate was installed: the next connection uses it"
                } else {
                    ""
                },
                wire::json(&wire::Round::from(&report)),
            ))
        }
        SyncCmd::Status => {
            let s = r.sync_status()?;
            let when = |t: i64| {
                if t == 0 {
                    "never".to_string()
                } else {
                    format_rfc3339(t)
                }
            };
            let link = match &s.link {
                None => "no daemon running (carnet-syncd syncs in the background)".to_string(),
                Some(l) => format!(
                    "{} at the daemon's last round; last successful sync: {}{}{}",
                    match (l.connected, l.host_address) {
                        (true, Some(a)) => format!("host reached at {a}"),
                        (true, None) => "host reached".to_string(),
                        (false, _) => "host not reached".to_string(),
                    },
                    l.last_sync
                        .map_or_else(|| "never".to_string(), format_rfc3339),
                    l.last_error
                        .as_ref()
                        .map(|e| format!(" (last attempt: {e})"))
                        .unwrap_or_default(),
                    l.settings
                        .as_ref()
                        .map(|c| format!(
                            "\ndaemon: {} connection(s) to the host since it started; a round every {} s, log level {}, inbox {}",
                            l.connections,
                            c.sync_every,
                            c.log_level,
                            c.inbox.display()
                        ))
                        .unwrap_or_default()
                ),
            };
            let mut human = format!(
                "link: {link}\npending changes: {}{}\npending trace entries: {}\nbodies not yet received: {}\npull cursor: {}{}\nconflicts (concurrent replacements): {}\nhost records current as of: {}{}\nquarantine: {}",
                s.pending,
                if s.pending_by_kind.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        s.pending_by_kind
                            .iter()
                            .map(|(k, n)| format!("{k}: {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                s.pending_traces.map_or_else(
                    || "unknown until the daemon syncs".to_string(),
                    |n| n.to_string()
                ),
                s.missing_bodies,
                s.cursor,
                s.cursor_lag
                    .map(|n| format!(" ({n} entries behind the host at the last round)"))
                    .unwrap_or_default(),
                if s.conflicts.is_empty() {
                    "none".to_string()
                } else {
                    s.conflicts
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                when(s.authority_as_of),
                if s.lease_expired {
                    " (lease over: normal reads refused, break-glass only; check the clock if the last heartbeat is recent)"
                } else {
                    ""
                },
                if s.quarantine.is_empty() {
                    "empty".to_string()
                } else {
                    format!("{} document(s)", s.quarantine.len())
                }
            );
            for (id, at, reason) in &s.quarantine {
                human += &format!("\n  {id} since {}: {reason}", format_rfc3339(*at));
            }
            for (ins, n) in &s.held {
                human += &format!(
                    "\nheld here: {n} change(s) of dossier {}: its identity is provisional (only a qualified identity is shared); check it, then `carnet dossier qualify {} --as RPPS`",
                    ins.matricule(),
                    ins.matricule()
                );
            }
            for (seq, at, reason) in &s.withheld {
                human += &format!(
                    "\nheld back since {}: change {seq} of this site could not be read and was not sent ({reason}); it is kept, and the rest syncs; register or write again what it was",
                    format_rfc3339(*at)
                );
            }
            if let Some(i) = &s.inbox {
                if i.rejected > 0 {
                    human += &format!(
                        "\ninbox: {} refused file(s) in rejected/ (`carnet inbox list` says why, and what to do)",
                        i.rejected
                    );
                }
                human += &orphans_human(&i.orphans, &i.unclaimed);
            }
            if let Some(e) = &s.inbox_error {
                human += &format!("\ninbox: {e}");
            }
            if let Some(m) = &s.restored {
                human += &format!(
                    "\nrestored on {} from a backup taken on {}: nothing is recorded or read until the next round with the host catches it up",
                    format_rfc3339(m.restored_at),
                    format_rfc3339(m.taken_at)
                );
            }
            if let Some(c) = &s.certificate {
                human += &format!(
                    "\ncertificate: valid until {}{}",
                    format_date(c.not_after),
                    if c.host_pinned {
                        ""
                    } else {
                        " (the host's key is not pinned: enrolled with an old bundle)"
                    }
                );
                if c.days_left < 0 {
                    human += "\nwarning: this site's certificate has EXPIRED: the host refuses it; ask the host for a renewal bundle (`carnet pki renew SITE -o BUNDLE`) and install it here (`carnet pki install BUNDLE`)";
                } else if c.days_left < carnet_syncd::pki::RENEW_WITHIN_DAYS {
                    human += &format!(
                        "\nwarning: this site's certificate expires in {} day(s): the daemon asks the host for a new one at each round (a host whose CA is kept offline signs it with `carnet pki renew --pending --ca-dir DIR`); without a link, install a renewal bundle (`carnet pki install BUNDLE`)",
                        c.days_left
                    );
                }
                if !c.host_pinned {
                    human += "\nwarning: install a renewal bundle to pin the host's key";
                } else if c.host_pins == 0 {
                    human += "\nwarning: this site pins no host key (the national CA revoked the one it pinned): it cannot sync until it installs a renewal bundle (`carnet pki install BUNDLE`)";
                } else if c.host_pins == 2 {
                    human += "\nhost key: the host announced its next key; this site accepts both until its first round on the new one";
                }
            }
            Ok(Reply::new(human, status_json(&s)))
        }
    }
}

/// `sync status --json`: the API's answer, and whether the certificate is due for renewal.
fn status_json(s: &carnet_syncd::api::SyncStatus) -> Value {
    let mut j = wire::json(&wire::SyncStatus::from(s));
    if let Some(c) = &s.certificate {
        j["certificate"]["renew"] = json!(c.days_left < carnet_syncd::pki::RENEW_WITHIN_DAYS);
    }
    j
}

/// The status page's address, with its token: the daemon serves it on `[http] listen`.
fn ui(cli: &Cli) -> Result<Reply> {
    let dir = data_dir(cli)?;
    let config = carnet_syncd::config::Config::load(&dir.join(carnet_syncd::config::CONFIG_FILE))?;
    let Some(http) = config.http else {
        return Err(Failure::Usage(format!(
            "no status page: add to {}:\n[http]\nlisten = \"127.0.0.1:8780\"\nthen restart the daemon (systemctl restart carnet-syncd)",
            dir.join(carnet_syncd::config::CONFIG_FILE).display()
        )));
    };
    if std::os::unix::net::UnixStream::connect(carnet_syncd::api::socket_path(&dir)).is_err() {
        return Err(Failure::Usage(
            "no daemon runs on this data folder: the page is served by carnet-syncd (systemctl start carnet-syncd)".into(),
        ));
    }
    let token = fs::read_to_string(carnet_syncd::http::token_path(&dir)).map_err(|e| {
        Failure::File(format!(
            "cannot read the page's token {}: {e} (the daemon makes it when it starts with [http]: restart it)",
            carnet_syncd::http::token_path(&dir).display()
        ))
    })?;
    let mut address = http.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{address}/?token={}", token.trim());
    Ok(Reply::new(
        format!(
            "{url}\n(open it in a browser on this computer; metrics: http://{address}/metrics)"
        ),
        json!({"url": url, "metrics": format!("http://{address}/metrics")}),
    ))
}

fn sites(cli: &Cli, show: Option<&SitesCmd>) -> Result<Reply> {
    let r = open(cli)?;
    let only = show.map(|SitesCmd::Show { site }| *site);
    let sites = r.fleet(only)?;
    let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
    let when = |t: Option<i64>| t.map_or_else(|| "-".to_string(), format_rfc3339);
    let human = match (only, sites.first()) {
        (Some(_), Some(s)) => format!(
            "site {} — {} (FINESS {}){}\nconnected: {}\nlast contact: {}\nversion: {}\nchanges not pulled: {} (log head {})\nbodies not pulled: {}\nchanges not pushed: {}\ntrace entries not sent: {}\nbodies owed to the host: {}\nreturned, not yet confirmed: {}\nlease until: {}\nquarantine: {}\nconflicts: {}\npending grants (consent in person): {}\npending pins: {}\nrounds: {}, bytes received {}, sent {}\nlink from the host: {}\nerrors: {}\nlast error: {}",
            s.site,
            s.name,
            s.finess,
            if s.revoked { " — REVOKED" } else { "" },
            if s.connected { "yes" } else { "no" },
            when(s.last_contact),
            s.version.as_deref().unwrap_or("?"),
            n(s.changes_not_pulled),
            s.log_head,
            n(s.bodies_not_pulled),
            n(s.changes_not_pushed),
            n(s.traces_not_sent),
            s.bodies_owed,
            s.returned,
            when(s.lease_until),
            n(s.quarantine),
            n(s.conflicts),
            s.pending_grants,
            s.pending_pins,
            s.rounds,
            s.bytes_received,
            s.bytes_sent,
            s.link.map_or_else(
                || "not measured within the hour".to_string(),
                |l| format!(
                    "{} kB/s, round trip {} ms (measured {}); {}",
                    l.rate / 1000,
                    l.min_rtt_micros / 1000,
                    format_rfc3339(l.measured_at),
                    match l.last_connection_resumed {
                        Some(true) => "its last connection started at that path",
                        Some(false) => "its last connection started afresh",
                        None => "no connection since the host's daemon started",
                    }
                )
            ),
            if s.errors.is_empty() {
                "none".to_string()
            } else {
                s.errors
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            s.last_error.as_ref().map_or_else(
                || "none".to_string(),
                |(at, e)| format!("{} {e}", format_rfc3339(*at))
            )
        ),
        _ => {
            let mut t = format!(
                "{:<6} {:<9} {:<24} {:<9} {:>7} {:>7} {:>7} {:<24} {:>5} {:>6} NAME\n",
                "SITE",
                "STATE",
                "LAST CONTACT",
                "VERSION",
                "PULL",
                "PUSH",
                "TRACES",
                "LEASE UNTIL",
                "QUAR",
                "ERRORS"
            );
            for s in &sites {
                t += &format!(
                    "{:<6} {:<9} {:<24} {:<9} {:>7} {:>7} {:>7} {:<24} {:>5} {:>6} {}\n",
                    s.site,
                    if s.revoked {
                        "revoked"
                    } else if s.connected {
                        "connected"
                    } else {
                        "offline"
                    },
                    when(s.last_contact),
                    s.version.as_deref().unwrap_or("?"),
                    n(s.changes_not_pulled),
                    n(s.changes_not_pushed),
                    n(s.traces_not_sent),
                    when(s.lease_until),
                    n(s.quarantine),
                    s.errors.values().sum::<u64>(),
                    s.name
                );
            }
            t.trim_end().to_string()
        }
    };
    let json = match only {
        Some(_) => sites
            .first()
            .map_or(Value::Null, |s| wire::json(&wire::SiteOverview::from(s))),
        None => Value::Array(
            sites
                .iter()
                .map(|s| wire::json(&wire::SiteOverview::from(s)))
                .collect(),
        ),
    };
    Ok(Reply::new(human, json))
}

fn pin(cli: &Cli, text: &str, on: bool, site: Option<u32>) -> Result<Reply> {
    let r = open(cli)?;
    let i = ins(text)?;
    r.pin(&i, on, site)?;
    let human = match (site, on) {
        (None, true) => format!(
            "pin of {} asked: the host decides at the next sync, and sends the dossier once it accepts",
            i.matricule()
        ),
        (None, false) => format!(
            "unpinned {}: the host takes it out of this site's scope at the next sync",
            i.matricule()
        ),
        (Some(s), true) => format!(
            "pin of {} accepted for site {s}: the dossier enters its scope",
            i.matricule()
        ),
        (Some(s), false) => format!("pin of {} refused or ended for site {s}", i.matricule()),
    };
    Ok(Reply::new(
        human,
        json!({"ins": i.matricule(), "pinned": on, "site_id": site}),
    ))
}

fn handover(cli: &Cli, to: &str, dossier: &str, by: &str, reason: Option<&str>) -> Result<Reply> {
    let r = open(cli)?;
    let i = ins(dossier)?;
    let o = r.handover(to, &i, &rpps(by)?, reason)?;
    let report = &o.report;
    let mut human = format!(
        "dossier {} handed over to {} (site {}): {} record(s) admitted there, {} document(s) new, {} merged, {} bod{} sent ({} bytes)",
        i.matricule(),
        o.peer,
        o.site,
        report.records_admitted,
        report.documents_new,
        report.documents_merged,
        o.bodies_sent,
        if o.bodies_sent == 1 { "y" } else { "ies" },
        o.body_bytes_sent,
    );
    human.push_str(&handover_details(report, o.lacking, true));
    Ok(Reply::new(human, {
        let mut j = wire::json(&wire::Handover::from(&o));
        j["ins"] = json!(i.matricule());
        j
    }))
}

/// The lines after a handover's summary: what the receiver refused, the bodies it still lacks
/// and its lease; `sent` at the sender, else at the receiver.
fn handover_details(
    report: &carnet_store::replica::HandoverReport,
    lacking: u64,
    sent: bool,
) -> String {
    let (there, again, lease) = if sent {
        (
            "there",
            "send the rest",
            "the peer's lease of this dossier now runs from {} (this site's last heartbeat from the host)",
        )
    } else {
        (
            "here",
            "receive the rest",
            "this site's lease of the dossier now runs from {} (the peer's last heartbeat from the host)",
        )
    };
    let mut out = String::new();
    for (id, why) in &report.documents_refused {
        out.push_str(&format!("\n  refused {there}: {id}: {why}"));
    }
    if lacking > 0 {
        out.push_str(&format!(
            "\n  {lacking} bod{} still lacking {there}: run the same command again to {again}",
            if lacking == 1 { "y" } else { "ies" }
        ));
    }
    if let Some(at) = report.lease_from {
        out.push_str("\n  ");
        out.push_str(&lease.replace("{}", &carnet_store::time::format_rfc3339(at)));
    }
    out
}

fn ask_handover(
    cli: &Cli,
    from: &str,
    dossier: &str,
    by: &str,
    reason: Option<&str>,
) -> Result<Reply> {
    let r = open(cli)?;
    let i = ins(dossier)?;
    let o = r.ask_handover(from, &i, &rpps(by)?, reason)?;
    let report = &o.report;
    let mut human = format!(
        "dossier {} handed over by {} (site {}): {} record(s) admitted here, {} document(s) new, {} merged",
        i.matricule(),
        o.peer,
        o.site,
        report.records_admitted,
        report.documents_new,
        report.documents_merged,
    );
    human.push_str(&handover_details(report, o.lacking, false));
    human.push_str("\n  it brings data, not rights: reads here follow this site's grants, consent given in person, or break-glass");
    Ok(Reply::new(human, {
        let mut j = wire::json(&wire::Asked::from(&o));
        j["ins"] = json!(i.matricule());
        j
    }))
}

fn requests(cli: &Cli) -> Result<Reply> {
    let r = open(cli)?;
    let list = r.site_requests()?;
    let mut human = format!(
        "{:<8} {:<8} {:<16} {:<12} RECEIVED\n",
        "KIND", "SITE", "INS", "RPPS"
    );
    for q in &list {
        human += &format!(
            "{:<8} {:<8} {:<16} {:<12} {}\n",
            q.kind.as_str(),
            q.site,
            q.ins.matricule(),
            q.rpps.as_ref().map_or("-", |r| r.as_str()),
            format_rfc3339(q.at)
        );
    }
    if list.is_empty() {
        human = "no request waits for the host".into();
    }
    let json = list.iter().map(|q| wire::json(&wire::SiteRequest::from(q)));
    Ok(Reply::new(human.trim_end(), Value::Array(json.collect())))
}

fn notifications(cli: &Cli, dossier: Option<&str>) -> Result<Reply> {
    let r = open(cli)?;
    let list = r.notifications(dossier.map(ins).transpose()?)?;
    let mut human = String::new();
    for n in &list {
        let what = match &n.kind {
            NotificationKind::EmergencyAccess { mode, emergency } => {
                format!("{} access (emergency #{emergency})", mode.as_str())
            }
            NotificationKind::FirstAccess { rpps } => {
                format!("first access by {}", rpps.as_str())
            }
            NotificationKind::DocumentAnnounced { doc } => format!("document {doc} announced"),
        };
        let to: Vec<String> = n
            .recipients
            .iter()
            .map(|r| match r {
                Recipient::Holder => "the holder".to_string(),
                Recipient::Representative(id) => format!("representative {id}"),
                Recipient::MedecinTraitant(rpps) => format!("médecin traitant {}", rpps.as_str()),
            })
            .collect();
        human += &format!(
            "#{} {} site {} dossier {} — {what} — to {}\n",
            n.id,
            format_rfc3339(n.at),
            n.site,
            n.ins.matricule(),
            to.join(", "),
        );
    }
    if list.is_empty() {
        human = "(no notification)".into();
    }
    let json = list
        .iter()
        .map(carnet_syncd::spool::notification_json)
        .collect();
    Ok(Reply::new(human.trim_end(), Value::Array(json)))
}

fn conflicts(cli: &Cli, dossier: Option<&str>) -> Result<Reply> {
    let r = open(cli)?;
    let list = r.conflicts(dossier.map(ins).transpose()?)?;
    let mut human = String::new();
    for c in &list {
        human += &format!("{} is replaced by {} documents:\n", c.doc, c.branches.len());
        for b in &c.branches {
            human += &match &b.written {
                Some((author, site, at)) => format!(
                    "  {}  by {} at site {}, {}\n",
                    b.doc,
                    author_str(author),
                    site.0,
                    format_rfc3339(*at)
                ),
                None => format!("  {}  (not held here yet)\n", b.doc),
            };
        }
    }
    if list.is_empty() {
        human = "no conflict".into();
    }
    let json = list.iter().map(|c| wire::json(&wire::Conflict::from(c)));
    Ok(Reply::new(human.trim_end(), Value::Array(json.collect())))
}

/// A body read: written to `output` (the reply names the document's `title` and adds `note`),
/// or to stdout, raw or in JSON.
fn body_reply(
    cli: &Cli,
    output: Option<&Path>,
    body: Zeroizing<Vec<u8>>,
    mut j: Value,
    (title, note): (&str, &str),
) -> Result<Reply> {
    match output {
        Some(path) => {
            write_private_file_shown(path, &body, progress::shown(cli.json))?;
            Ok(Reply::new(
                format!(
                    "{title} ({} bytes) written to {} — {note}",
                    body.len(),
                    path.display()
                ),
                j,
            ))
        }
        None if cli.json => {
            j["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&body));
            Ok(Reply::new(String::new(), j))
        }
        None => Ok(Reply {
            human: String::new(),
            json: j,
            raw_stdout: Some(body),
        }),
    }
}

fn inbox(cli: &Cli, c: &InboxCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        InboxCmd::List => {
            let s = r.inbox()?;
            let mut human = if s.rejected.is_empty() {
                "rejected: none".to_string()
            } else {
                format!("rejected: {} file(s)", s.rejected.len())
            };
            for x in &s.rejected {
                human += &format!(
                    "\n  {}{} (refused {}): {}",
                    x.name,
                    if x.sidecar { " and its sidecar" } else { "" },
                    format_rfc3339(x.at),
                    x.reason
                );
                if let Some(fix) = &x.fix {
                    human += &format!("\n    fix: {}", fix);
                }
            }
            human += &orphans_human(&s.orphans, &s.unclaimed);
            Ok(Reply::new(human, wire::json(&wire::InboxState::from(&s))))
        }
        InboxCmd::Retry { name } => {
            let moved = r.inbox_retry(name)?;
            let when = if r.via_daemon() {
                "the daemon tries it now: `carnet inbox list` shows it again if it is refused again"
            } else {
                "no daemon runs: carnet-syncd tries it when it starts"
            };
            Ok(Reply::new(
                format!("moved back into the inbox: {}; {when}", moved.join(", ")),
                json!({"moved": moved, "via_daemon": r.via_daemon()}),
            ))
        }
    }
}

/// The inbox's files alone past the grace period, and those left in clear in done/, for a
/// person (empty when there are none).
fn orphans_human(orphans: &[carnet_syncd::inbox::Orphan], unclaimed: &[String]) -> String {
    let mut human = String::new();
    if !orphans.is_empty() {
        human += &format!(
            "\ninbox: {} file(s) without the other half of their pair for {} minutes or more (a producer that failed or misnamed it: drop the missing file, or remove it)",
            orphans.len(),
            carnet_syncd::inbox::ORPHAN_AFTER_MS / 60_000
        );
    }
    for o in orphans {
        human += &format!(
            "\n  {} since {}: its {} has not arrived",
            o.name,
            format_rfc3339(o.since),
            o.missing
        );
    }
    if !unclaimed.is_empty() {
        human += &format!(
            "\ninbox: {} file(s) in clear in done/ (left by an older version) whose document this replica does not hold: check them, then move them back into the inbox or remove them",
            unclaimed.len()
        );
    }
    for name in unclaimed {
        human += &format!("\n  done/{}", name);
    }
    human
}

fn quarantine(cli: &Cli, c: &QuarantineCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        QuarantineCmd::List => {
            let list = r.quarantined()?;
            let human = if list.is_empty() {
                "no quarantined document".to_string()
            } else {
                list.iter()
                    .map(quarantine_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok(Reply::new(
                human,
                Value::Array(list.iter().map(quarantine_json).collect()),
            ))
        }
        QuarantineCmd::Show { id } => {
            let q = r.quarantined_one(&DocId::parse(id)?)?;
            let f = &q.record.meta.facts;
            let human = format!(
                "{}\ntitle: {}\nformat: {}, {} bytes\nwritten: {}",
                quarantine_line(&q),
                f.title,
                f.format,
                f.size,
                format_rfc3339(f.created_at)
            );
            Ok(Reply::new(human, quarantine_json(&q)))
        }
        QuarantineCmd::Get {
            id,
            actor: by,
            output,
        } => {
            let by = by
                .as_deref()
                .map(actor)
                .transpose()?
                .unwrap_or(Actor::System);
            let id = DocId::parse(id)?;
            let body = r.quarantined_body(&by, &id)?;
            let q = r.quarantined_one(&id)?;
            let title = q.record.meta.facts.title.clone();
            let j = quarantine_json(&q);
            body_reply(
                cli,
                output.as_deref(),
                body,
                j,
                (&title, "quarantined, traced"),
            )
        }
        QuarantineCmd::Refile {
            id,
            dossier,
            actor: by,
        } => {
            let id = DocId::parse(id)?;
            let new = r.refile_quarantined(&actor(by)?, &id, &ins(dossier)?)?;
            Ok(Reply::new(
                format!(
                    "{id} refiled as {new}: the host decides at the next sync; `carnet quarantine show {id}` follows it"
                ),
                json!({"id": id.to_string(), "refiled_as": new.to_string()}),
            ))
        }
    }
}

/// What a quarantined document became, in words.
fn quarantine_state_words(q: &QuarantineEntry) -> String {
    let refiled = q.record.refiled.as_ref();
    let doc = refiled.map(|r| r.doc.to_string()).unwrap_or_default();
    match q.state {
        QuarantineState::Held => "held".into(),
        QuarantineState::Waiting => format!("refiled as {doc}, waiting for the host"),
        QuarantineState::Taken => format!("refiled as {doc}, taken by the host"),
        QuarantineState::Returned => {
            format!("refiled as {doc}, refused by the host: {doc} is in quarantine")
        }
    }
}

fn quarantine_line(q: &QuarantineEntry) -> String {
    let f = &q.record.meta.facts;
    format!(
        "{}  dossier {}  by {}  class {} type {}  since {}\n  why: {}\n  state: {}{}",
        q.id,
        f.ins.matricule(),
        author_str(&f.author),
        f.class.code(),
        f.type_code,
        format_rfc3339(q.record.at),
        q.record.reason,
        quarantine_state_words(q),
        q.record
            .refile_of
            .map(|o| format!("\n  refiles {o}"))
            .unwrap_or_default()
    )
}

fn quarantine_json(q: &QuarantineEntry) -> Value {
    wire::json(&wire::QuarantineEntry::from(q))
}

fn now_millis() -> i64 {
    carnet_store::replica::system_clock()()
}

/// The offline CA of `--ca-dir`, if given.
fn offline_ca(dir: &Option<PathBuf>) -> Result<Option<carnet_syncd::pki::Identity>> {
    Ok(dir
        .as_deref()
        .map(carnet_syncd::enrol::read_ca_dir)
        .transpose()?)
}

fn pki(cli: &Cli, c: &PkiCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        PkiCmd::Init {
            ca_dir,
            ca_in_replica,
        } => {
            let Some(dir) = ca_dir else {
                if !*ca_in_replica {
                    return Err(Failure::Usage(
                        "say where the CA's private key is to live: `--ca-dir DIR`, a new folder to keep offline (a national host), or `--ca-in-replica`, kept in this replica where the running host renews sites' certificates without a person (tests, demonstrations)".into(),
                    ));
                }
                r.pki_init(None)?;
                return Ok(Reply::new(
                    "national CA (10 years) and host certificate (2 years) created; warning: the CA key is kept in this replica, where the running host signs renewals without a person (for a test or a demonstration: a national host uses `pki init --ca-dir`)",
                    json!({"pki": true, "ca_offline": false}),
                ));
            };
            if r.config()?.role != Role::Host {
                return Err(Failure::Usage("the PKI lives on the national host".into()));
            }
            if r.pki_host().is_ok() {
                return Err(Failure::Usage("this host already has a PKI".into()));
            }
            // The key is on disk in its folder before the host depends on it.
            let ca = carnet_syncd::pki::new_ca(now_millis().div_euclid(1000))?;
            carnet_syncd::enrol::write_ca_dir(dir, &ca)?;
            if let Err(e) = r.pki_init(Some(ca)) {
                // Nothing uses this CA: leave no stray key behind (and nothing else is touched).
                carnet_syncd::enrol::remove_ca_dir(dir);
                return Err(e);
            }
            Ok(Reply::new(
                format!(
                    "national CA (10 years) and host certificate (2 years) created; the CA key is in {} only: keep that folder offline (pki enrol, renew and renew-host need --ca-dir)",
                    dir.display()
                ),
                json!({"pki": true, "ca_offline": true, "ca_dir": dir.display().to_string()}),
            ))
        }
        PkiCmd::Enrol {
            name,
            finess,
            host_address,
            output,
            pros,
            ca_dir,
            days,
        } => {
            let pros = pros.iter().map(|p| rpps(p)).collect::<Result<Vec<_>>>()?;
            let (site_id, name, bundle) =
                r.pki_enrol(name, finess, host_address, pros, offline_ca(ca_dir)?, *days)?;
            write_private_file(output, &bundle)?;
            Ok(Reply::new(
                format!(
                    "enrolled site {site_id} '{name}': bundle written to {} (it holds the site's private key: hand it over securely, then delete it)",
                    output.display()
                ),
                json!({"site_id": site_id, "name": name, "output": output.display().to_string()}),
            ))
        }
        PkiCmd::Renew {
            pending: true,
            ca_dir,
            ..
        } => {
            let signed = r.pki_sign_pending(offline_ca(ca_dir)?)?;
            let sites: Vec<u32> = signed.iter().map(|s| s.site).collect();
            Ok(Reply::new(
                if sites.is_empty() {
                    "no renewal waits for the CA".to_string()
                } else {
                    format!(
                        "signed the renewal of site(s) {}: each receives its certificate at its next round",
                        sites
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                json!({"signed": sites}),
            ))
        }
        PkiCmd::Renewals => {
            let renewals = r.pki_renewals()?;
            let mut human = format!("{:<8} {:<26} {}\n", "SITE", "ASKED", "STATE");
            for n in &renewals {
                human += &format!(
                    "{:<8} {:<26} {}\n",
                    n.site,
                    format_rfc3339(n.requested_at),
                    if n.issued.is_some() {
                        "signed, not used yet"
                    } else {
                        "waiting for the CA (pki renew --pending)"
                    }
                );
            }
            let list = renewals.iter().map(|n| {
                json!({"site_id": n.site, "requested_at": format_rfc3339(n.requested_at),
                       "signed": n.issued.is_some()})
            });
            Ok(Reply::new(human.trim_end(), Value::Array(list.collect())))
        }
        PkiCmd::Renew {
            site,
            output,
            host_address,
            retire_old,
            ca_dir,
            pending: false,
        } => {
            let (Some(site), Some(output)) = (site, output) else {
                return Err(Failure::Usage(
                    "pki renew needs SITE and --output (or --pending)".into(),
                ));
            };
            let (site_id, name, bundle) = r.pki_renew(
                *site,
                host_address.clone(),
                *retire_old,
                offline_ca(ca_dir)?,
            )?;
            write_private_file(output, &bundle)?;
            Ok(Reply::new(
                format!(
                    "renewed the certificate of site {site_id} '{name}': bundle written to {} (it holds the site's new private key: hand it over securely; install it at the site with `carnet pki install`){}",
                    output.display(),
                    if *retire_old {
                        "; its earlier certificates are refused from now on"
                    } else {
                        "; its current certificate stays valid until it expires"
                    }
                ),
                json!({"site_id": site_id, "name": name, "output": output.display().to_string(),
                       "retired_old": retire_old}),
            ))
        }
        PkiCmd::RenewHost {
            new_key,
            switch,
            ca_dir,
        } => match r.pki_renew_host(*new_key, *switch, offline_ca(ca_dir)?)? {
            Response::HostKeyPrepared { not_after, pin } => Ok(Reply::new(
                format!(
                    "new host TLS key {} prepared (certificate valid until {}), not served yet: every Welcome announces it, signed by the current key, and each site that syncs now pins it beside the current one. Once the sites have synced (`carnet sites`), run `carnet pki renew-host --switch`; a site that does not sync before the switch is refused and needs a renewal bundle (`pki renew SITE`, then `pki install` at the site)",
                    pin_hex(&pin),
                    format_date(not_after)
                ),
                json!({"not_after": format_rfc3339(not_after), "new_key": true,
                       "next_pin": pin_hex(&pin), "switched": false}),
            )),
            Response::HostKeySwitched {
                old,
                new,
                not_after,
            } => Ok(Reply::new(
                format!(
                    "the host serves its new TLS key {} (certificate valid until {}): sites that took the hand-over go on, each dropping the old pin at its first round; a site that did not sync since `--new-key` is refused and needs a renewal bundle (`pki renew SITE`, then `pki install` at the site). To have the sites refuse the old key even from a valid certificate: `carnet pki revoke-host --pin {}`",
                    pin_hex(&new),
                    format_date(not_after),
                    pin_hex(&old)
                ),
                json!({"not_after": format_rfc3339(not_after), "switched": true,
                       "pin": pin_hex(&new), "old_pin": pin_hex(&old)}),
            )),
            Response::Certificate { not_after, .. } => Ok(Reply::new(
                format!(
                    "host certificate renewed, valid until {}, for the same TLS key: sites accept it as they are",
                    format_date(not_after)
                ),
                json!({"not_after": format_rfc3339(not_after), "new_key": false}),
            )),
            _ => Err(Failure::Usage("unexpected answer from the replica".into())),
        },
        PkiCmd::RevokeHost {
            pin,
            output,
            ca_dir,
        } => {
            let pin = carnet_syncd::hostkey::parse_pin(pin)?;
            let file = r.pki_revoke_host(pin, offline_ca(ca_dir)?)?;
            if let Some(path) = output {
                write_private_file(path, &file)?;
            }
            Ok(Reply::new(
                format!(
                    "host key {} revoked by the national CA: the host carries the revocation to every site at its next round, and each refuses that key from then on{}. A site that pinned only that key cannot sync until it installs a renewal bundle",
                    pin_hex(&pin),
                    output.as_ref().map_or(String::new(), |p| format!(
                        "; the revocation is also in {} (install it at a site with `carnet pki install`)",
                        p.display()
                    ))
                ),
                json!({"pin": pin_hex(&pin), "revoked": true,
                       "output": output.as_ref().map(|p| p.display().to_string())}),
            ))
        }
        PkiCmd::Install { bundle } => match r.pki_install(read_file(bundle)?)? {
            Response::RevocationInstalled {
                pin,
                already,
                no_pin_left,
            } => Ok(Reply::new(
                if already {
                    format!(
                        "host key {} was already revoked here: nothing changed",
                        pin_hex(&pin)
                    )
                } else if no_pin_left {
                    format!(
                        "host key {} revoked: this site refuses it from now on. It was the only host key this site pinned: it cannot sync until it installs a renewal bundle from the host (`carnet pki install BUNDLE`)",
                        pin_hex(&pin)
                    )
                } else {
                    format!(
                        "host key {} revoked: this site refuses it from now on",
                        pin_hex(&pin)
                    )
                },
                json!({"pin": pin_hex(&pin), "revoked": true, "already": already,
                       "no_pin_left": no_pin_left}),
            )),
            Response::Certificate {
                not_after,
                bundle_host_address,
            } => Ok(Reply::new(
                format!(
                    "renewal installed: this site's certificate is valid until {}; the next connection to the host uses it (delete the bundle file){}",
                    format_date(not_after),
                    bundle_host_address
                        .as_ref()
                        .map(|a| format!(
                            "\nthe bundle names the host at {a}: this site connects to the address(es) of `host_address` in its carnet.toml, which the bundle does not change (edit it if the host moved, then restart the daemon)"
                        ))
                        .unwrap_or_default()
                ),
                json!({"not_after": format_rfc3339(not_after),
                       "bundle_host_address": bundle_host_address}),
            )),
            _ => Err(Failure::Usage("unexpected answer from the replica".into())),
        },
        PkiCmd::Bind { site, rpps: text } | PkiCmd::Unbind { site, rpps: text } => {
            let on = matches!(c, PkiCmd::Bind { .. });
            let p = rpps(text)?;
            r.bind_professional(*site, &p, on)?;
            Ok(Reply::new(
                format!(
                    "professional {p} {} site {site}",
                    if on { "bound to" } else { "unbound from" }
                ),
                json!({"site_id": site, "rpps": p.as_str(), "bound": on}),
            ))
        }
        PkiCmd::Pros { site } => {
            let list = r.site_professionals(*site)?;
            let human = list
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Reply::new(
                if human.is_empty() {
                    format!("no professional is bound to site {site}")
                } else {
                    human
                },
                Value::Array(list.iter().map(|p| json!(p.as_str())).collect()),
            ))
        }
        PkiCmd::Revoke { site } => {
            r.pki_revoke(*site)?;
            Ok(Reply::new(
                format!("site {site} revoked: its certificate is refused from now on"),
                json!({"site_id": site, "revoked": true}),
            ))
        }
        PkiCmd::List => {
            let sites = r.pki_sites()?;
            let host = r.pki_host()?;
            let now = now_millis();
            let days = |t: i64| (t - now).div_euclid(86_400_000);
            let expiry = |t: i64| {
                let d = days(t);
                if d < 0 {
                    format!("{} (EXPIRED)", format_date(t))
                } else if d < carnet_syncd::pki::RENEW_WITHIN_DAYS {
                    format!("{} ({d} days left: RENEW)", format_date(t))
                } else {
                    format_date(t)
                }
            };
            let mut human = format!(
                "CA valid until {}{}; host certificate until {}\nhost key pin {}{}{}\n{:<8} {:<10} {:<8} {:<30} NAME\n",
                expiry(host.ca_not_after),
                if host.ca_offline {
                    " (key offline)"
                } else {
                    ""
                },
                expiry(host.host_not_after),
                pin_hex(&host.host_pin),
                host.next_pin.map_or(String::new(), |p| format!(
                    "\nnext host key pin {} (announced; `pki renew-host --switch` serves it)",
                    pin_hex(&p)
                )),
                host.revoked_pins
                    .iter()
                    .map(|p| format!("\nrevoked host key pin {}", pin_hex(p)))
                    .collect::<String>(),
                "SITE",
                "FINESS",
                "STATE",
                "CERTIFICATE UNTIL"
            );
            for (id, s) in &sites {
                human += &format!(
                    "{:<8} {:<10} {:<8} {:<30} {}\n",
                    id,
                    s.finess,
                    if s.revoked { "revoked" } else { "active" },
                    s.current()
                        .map_or_else(|| "-".to_string(), |c| expiry(c.not_after)),
                    s.name
                );
            }
            let list = sites.iter().map(|(id, s)| {
                let c = s.current();
                json!({"site_id": id, "name": s.name, "finess": s.finess, "revoked": s.revoked,
                       "certificate_not_after": c.map(|c| format_rfc3339(c.not_after)),
                       "days_left": c.map(|c| days(c.not_after)),
                       "renew": c.is_some_and(|c| !s.revoked && days(c.not_after) < carnet_syncd::pki::RENEW_WITHIN_DAYS),
                       "certificates": s.certs.iter().filter(|c| !c.retired).count()})
            });
            Ok(Reply::new(human.trim_end(), Value::Array(list.collect())))
        }
    }
}

fn pro_json(p: &Professional) -> Value {
    wire::json(&wire::Professional::from(p))
}

fn pro(cli: &Cli, c: &ProCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        ProCmd::Add {
            rpps: num,
            profession,
            specialty,
            name,
        } => {
            let p = Professional {
                rpps: rpps(num)?,
                profession: Profession::parse(profession)?,
                specialty: specialty.clone(),
                name: name.clone(),
            };
            r.add_professional(&p)?;
            Ok(Reply::new(
                format!("registered {} ({})", p.rpps, p.profession.as_str()),
                pro_json(&p),
            ))
        }
        ProCmd::List => {
            let pros = r.professionals()?;
            let mut human = format!(
                "{:<12} {:<26} {:<20} NAME\n",
                "RPPS", "PROFESSION", "SPECIALTY"
            );
            for p in &pros {
                human += &format!(
                    "{:<12} {:<26} {:<20} {}\n",
                    p.rpps,
                    p.profession.as_str(),
                    p.specialty.as_deref().unwrap_or("-"),
                    p.name.as_deref().unwrap_or("-")
                );
            }
            Ok(Reply::new(
                human.trim_end(),
                Value::Array(pros.iter().map(pro_json).collect()),
            ))
        }
    }
}

/// A dossier as the API answers it, each grant with what it makes of the professional, and a
/// closure with the end of the dossier's retention.
fn dossier_json(d: &DossierInfo) -> Value {
    let mut j = wire::json(&wire::Dossier::from(d));
    if let Some(c) = &d.head.closure {
        j["closure"]["retention_ends"] = json!(format_rfc3339(c.retention_ends()));
    }
    j["grants"] = Value::Array(d.grants.iter().map(grant_json).collect());
    j
}

/// What `dossier show` and `dossier close` say of a closure: when, why, and until when the
/// dossier is archived (or that its holder asked its deletion).
fn closure_words(c: Option<&Closure>) -> String {
    let Some(c) = c else {
        return String::new();
    };
    let keep = match c.deletion_requested {
        Some(at) => format!(
            "the holder asked its deletion on {}: it may be purged now",
            format_date(at)
        ),
        None => format!("archived until {}", format_date(c.retention_ends())),
    };
    format!(" on {} ({}; {keep})", format_date(c.at), c.reason)
}

/// How an actor is written on the command line (`--as`).
fn actor_name(a: &Actor) -> String {
    match a {
        Actor::Professional(rpps) => rpps.to_string(),
        Actor::Holder => "holder".into(),
        Actor::Representative(id) => format!("representative:{id}"),
        Actor::System => "system".into(),
    }
}

/// What `dossier show` and `dossier list` say of a dossier opened here that the host has not
/// answered yet.
fn opened_here(d: &DossierInfo) -> Option<String> {
    let l = d.local.as_ref()?;
    Some(if l.held > 0 {
        format!(
            "opened here by {}; identity provisional: {} change(s) held here until `carnet dossier qualify {} --as RPPS`",
            actor_name(&l.creator),
            l.held,
            d.head.ins.matricule()
        )
    } else {
        format!(
            "opened here by {}; proposed to the host, which has not answered yet",
            actor_name(&l.creator)
        )
    })
}

fn allow_word(b: bool) -> &'static str {
    if b { "allowed" } else { "opposed" }
}

fn dossier(cli: &Cli, c: &DossierCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        DossierCmd::Create(a) => {
            let d = NewDossier {
                ins: ins(&a.ins)?,
                ins_kind: InsKind::parse(&a.ins_kind)?,
                identity: Identity {
                    birth_name: a.birth_name.trim().to_string(),
                    first_names: a.first_names.trim().to_string(),
                    birth_date: format_date(parse_date(&a.birth_date)?),
                    sex: Sex::parse(&a.sex)?,
                    birthplace: a.birthplace.clone(),
                    status: if a.qualified {
                        IdentityStatus::Qualified
                    } else {
                        IdentityStatus::Provisional
                    },
                },
                holder: HolderKind::parse(&a.holder)?,
                representatives: a
                    .representative
                    .iter()
                    .map(|r| new_representative(r))
                    .collect(),
                mask_new_by_default: a.mask_new_by_default,
            };
            let creator = a.actor.as_deref().map(actor).transpose()?;
            let info = r.create_dossier(d, creator)?;
            let mut human = format!("created dossier {}", info.head.ins.matricule());
            if let Some(note) = opened_here(&info) {
                human += &format!(": {note}");
            }
            Ok(Reply::new(human, dossier_json(&info)))
        }
        DossierCmd::Qualify { ins: text, actor } => {
            let i = ins(text)?;
            r.qualify_dossier(&i, &rpps(actor)?)?;
            Ok(Reply::new(
                format!(
                    "identity of dossier {} qualified: what was held for it goes to the host at the next sync",
                    i.matricule()
                ),
                json!({"ins": i.matricule(), "identity": {"status": "qualified"}}),
            ))
        }
        DossierCmd::Show {
            ins: text,
            actor: who,
        } => {
            let d = r.show_dossier(&ins(text)?, who.as_deref().map(actor).transpose()?)?;
            let h = &d.head;
            let mut human = format!(
                "dossier {} ({})\n  identity: {} {}, born {}, sex {}{} [{}]\n  holder: {}{}\n  status: {}{}\n  emergency: centre 15 {}, break-glass {}, masked documents in emergency {}\n  documents here: {}\n  grants:",
                h.ins.matricule(),
                h.ins_kind.oid(),
                h.identity.birth_name,
                h.identity.first_names,
                h.identity.birth_date,
                h.identity.sex.as_str(),
                h.identity
                    .birthplace
                    .as_ref()
                    .map(|b| format!(", birthplace {b}"))
                    .unwrap_or_default(),
                h.identity.status.as_str(),
                h.holder.as_str(),
                if h.representatives.is_empty() {
                    String::new()
                } else {
                    let each: Vec<String> = h
                        .representatives
                        .iter()
                        .map(|r| {
                            format!(
                                "{} {} ({}{})",
                                r.id,
                                r.name,
                                r.relationship,
                                r.ended
                                    .map(|at| format!(", ended {}", format_date(at)))
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    format!(" (representatives: {})", each.join(", "))
                },
                h.status.as_str(),
                closure_words(h.closure.as_ref()),
                allow_word(d.emergency.samu_allowed),
                allow_word(d.emergency.btg_allowed),
                allow_word(d.emergency.masked_in_emergency),
                d.documents,
            );
            if d.grants.is_empty() {
                human += " none";
            }
            for g in &d.grants {
                human += &format!(
                    "\n    {} {} ({}){}",
                    g.rpps,
                    g.state.as_str(),
                    basis_words(g),
                    g.until
                        .map(|u| format!(" until {}", format_rfc3339(u)))
                        .unwrap_or_default()
                );
            }
            for (site, r) in &d.purge_receipts {
                human += &format!(
                    "\n  purged at site {site} on {} (receipt)",
                    format_rfc3339(r.at)
                );
            }
            if let Some(note) = opened_here(&d) {
                human += &format!("\n  {note}");
            }
            Ok(Reply::new(human, dossier_json(&d)))
        }
        DossierCmd::List { actor: who } => {
            let all = r.list_dossiers(who.as_deref().map(actor).transpose()?)?;
            let mut human = format!("{:<16} {:<8} {:<5} NAME\n", "INS", "STATUS", "DOCS");
            for d in &all {
                human += &format!(
                    "{:<16} {:<8} {:<5} {} {}{}\n",
                    d.head.ins.matricule(),
                    d.head.status.as_str(),
                    d.documents,
                    d.head.identity.birth_name,
                    d.head.identity.first_names,
                    match &d.local {
                        Some(l) if l.held > 0 => " (opened here, identity provisional: held)",
                        Some(_) => " (opened here, waiting for the host)",
                        None => "",
                    }
                );
            }
            Ok(Reply::new(
                human.trim_end(),
                Value::Array(all.iter().map(dossier_json).collect()),
            ))
        }
        DossierCmd::Representative(RepresentativeCmd::Add {
            ins: text,
            name,
            relationship,
        }) => {
            let info = r.add_representative(
                &ins(text)?,
                NewRepresentative {
                    name: name.clone(),
                    relationship: relationship.clone(),
                },
            )?;
            let id = info
                .head
                .representatives
                .last()
                .map(|r| r.id.to_string())
                .unwrap_or_default();
            Ok(Reply::new(
                format!(
                    "recorded legal representative {id} of dossier {} (act as --as representative:{id})",
                    info.head.ins.matricule()
                ),
                dossier_json(&info),
            ))
        }
        DossierCmd::Representative(RepresentativeCmd::Remove { ins: text, id }) => {
            let id = RepresentativeId::parse(id)?;
            let info = r.remove_representative(&ins(text)?, id)?;
            Ok(Reply::new(
                format!(
                    "ended legal representative {id} of dossier {}: no access from now on",
                    info.head.ins.matricule()
                ),
                dossier_json(&info),
            ))
        }
        DossierCmd::Close {
            ins: text,
            reason,
            deletion_requested,
        } => {
            let i = ins(text)?;
            let info = r.close_dossier(&i, reason, *deletion_requested)?;
            Ok(Reply::new(
                format!(
                    "closed dossier {}{}; sites purge their copy when they receive the closure",
                    i.matricule(),
                    closure_words(info.head.closure.as_ref())
                ),
                dossier_json(&info),
            ))
        }
        DossierCmd::RequestDeletion { ins: text } => {
            let info = r.request_deletion(&ins(text)?)?;
            Ok(Reply::new(
                format!(
                    "dossier {} closed{}",
                    info.head.ins.matricule(),
                    closure_words(info.head.closure.as_ref())
                ),
                dossier_json(&info),
            ))
        }
        DossierCmd::Reopen { ins: text, reason } => {
            let info = r.reopen_dossier(&ins(text)?, reason)?;
            Ok(Reply::new(
                format!(
                    "reopened dossier {}: active again with its documents and grants; sites that held it receive it again at their next sync",
                    info.head.ins.matricule()
                ),
                dossier_json(&info),
            ))
        }
        DossierCmd::Purge { ins: text } => {
            let i = ins(text)?;
            r.purge_dossier(&i)?;
            Ok(Reply::new(
                format!("purged dossier {}: its key is destroyed", i.matricule()),
                json!({"ins": i.matricule(), "status": "purged"}),
            ))
        }
    }
}

/// A grant as the API answers it, with whether it makes its professional treating, or the
/// holder's médecin traitant.
fn grant_json(g: &carnet_store::model::Grant) -> Value {
    let mut j = wire::json(&wire::Grant::from(g));
    j["treating"] = json!(g.treating());
    j["medecin_traitant"] = json!(g.medecin_traitant());
    j
}

/// How `grant list`, `grant add` and `dossier show` name a grant's basis.
fn basis_words(g: &carnet_store::model::Grant) -> &'static str {
    match g.basis {
        GrantBasis::MedecinTraitant => "médecin traitant",
        GrantBasis::Treating => "same rights as the médecin traitant",
        other => other.as_str(),
    }
}

/// `--until`: a date is the end of that day (UTC), i.e. the grant runs through it; otherwise an
/// RFC 3339 time.
fn grant_end(text: &str) -> Result<Millis> {
    const DAY: Millis = 86_400_000;
    if text.trim().len() == 10 {
        Ok(parse_date(text)? + DAY)
    } else {
        Ok(parse_rfc3339(text)?)
    }
}

fn grant(cli: &Cli, c: &GrantCmd) -> Result<Reply> {
    let r = open(cli)?;
    let (target, state, basis) = match c {
        GrantCmd::Add {
            target,
            medecin_traitant,
            treating,
            basis,
            until,
        } => {
            let basis = if *medecin_traitant {
                GrantBasis::MedecinTraitant
            } else if *treating {
                GrantBasis::Treating
            } else {
                GrantBasis::parse(basis)?
            };
            let until = until.as_deref().map(grant_end).transpose()?;
            (target, GrantState::Active, Some((basis, until)))
        }
        GrantCmd::Revoke { target } => (target, GrantState::Revoked, None),
        GrantCmd::Block { target } => (target, GrantState::Blocked, None),
        GrantCmd::List {
            dossier,
            actor: who,
        } => {
            let grants = r.grants(&ins(dossier)?, who.as_deref().map(actor).transpose()?)?;
            let mut human = format!("{:<12} {:<8} {:<25} BASIS\n", "RPPS", "STATE", "UNTIL");
            for g in &grants {
                human += &format!(
                    "{:<12} {:<8} {:<25} {}\n",
                    g.rpps,
                    g.state.as_str(),
                    g.until.map_or("-".to_string(), format_rfc3339),
                    basis_words(g)
                );
            }
            if grants.is_empty() {
                human += "(no grant)";
            }
            return Ok(Reply::new(
                human.trim_end(),
                Value::Array(grants.iter().map(grant_json).collect()),
            ));
        }
    };
    let (i, p) = (ins(&target.dossier)?, rpps(&target.rpps)?);
    if state == GrantState::Active && r.config()?.role == Role::Site {
        // At a site, consent given in person: usable now; at the host a request, never a grant by itself.
        if basis != Some((GrantBasis::Consent, None)) {
            return Err(Failure::Usage(
                "at a site, `grant add` records the consent given in person (a pending grant, with no end); the médecin traitant, other bases and ends (--until) are declared at the host".into(),
            ));
        }
        r.pending_grant(&i, &p)?;
        return Ok(Reply::new(
            format!(
                "pending grant of {p} on {}: usable here for this encounter (24 h); at the next sync it reaches the host as a request, which becomes a grant only once the holder's consent is confirmed there",
                i.matricule()
            ),
            json!({"ins": i.matricule(), "rpps": p.as_str(), "state": "pending"}),
        ));
    }
    // A revocation or block keeps the basis it ends (`None`), for the record.
    let (basis, until) = basis.map_or((None, None), |(b, until)| (Some(b), until));
    let g = r.set_grant(&i, &p, state, basis, until)?;
    Ok(Reply::new(
        format!(
            "grant of {p} on {}: {} ({}){}",
            i.matricule(),
            state.as_str(),
            basis_words(&g),
            g.until
                .map(|u| format!(", until {}", format_rfc3339(u)))
                .unwrap_or_default()
        ),
        grant_json(&g),
    ))
}

fn emergency(cli: &Cli, c: &EmergencyCmd) -> Result<Reply> {
    let r = open(cli)?;
    let (dossier, samu, btg, masked) = match c {
        EmergencyCmd::Fetch {
            dossier,
            actor,
            mode: m,
            reason,
        } => return emergency_fetch(&r, dossier, actor, mode(*m), reason),
        EmergencyCmd::Set {
            dossier,
            samu,
            btg,
            masked,
        } => (dossier, samu, btg, masked),
    };
    let i = ins(dossier)?;
    let allowed = |a: &Option<AllowOppose>| a.as_ref().map(|a| matches!(a, AllowOppose::Allow));
    let prefs = r.update_emergency(&i, allowed(samu), allowed(btg), allowed(masked))?;
    Ok(Reply::new(
        format!(
            "emergency preferences of {}: centre 15 {}, break-glass {}, masked documents in emergency {}",
            i.matricule(),
            allow_word(prefs.samu_allowed),
            allow_word(prefs.btg_allowed),
            allow_word(prefs.masked_in_emergency)
        ),
        {
            let mut j = wire::json(&wire::EmergencyPrefs::from(prefs));
            j["ins"] = json!(i.matricule());
            j
        },
    ))
}

/// Asks the host for a dossier for an emergency, syncs, and says whether it came.
fn emergency_fetch(
    r: &crate::store::Store,
    dossier: &str,
    actor: &str,
    mode: AccessMode,
    reason: &str,
) -> Result<Reply> {
    let i = ins(dossier)?;
    let p = rpps(actor)?;
    r.emergency_fetch(&i, &p, mode, reason)?;
    if let Err(e) = r.sync_now() {
        return Err(Failure::Usage(format!(
            "the host could not be reached ({}): the request waits and goes at the next sync; offline, an emergency access is possible only on what this site holds",
            match e {
                Failure::Store(e) => e.to_string(),
                Failure::Sync(e) => e.to_string(),
                Failure::Usage(e) | Failure::File(e) => e,
            }
        )));
    }
    if !r.holds_dossier(&i)? {
        return Err(Failure::Store(Error::Denied {
            rule: 0,
            reason: "the host refused the emergency fetch (its trace of the dossier says why)"
                .into(),
        }));
    }
    Ok(Reply::new(
        format!(
            "the host allowed the emergency fetch: the dossier of {} is here for 24 h; read it with doc list/get in the same --mode, with a reason",
            i.matricule()
        ),
        json!({"ins": i.matricule(), "fetched": true, "mode": mode.as_str()}),
    ))
}

fn author_str(a: &Author) -> String {
    match a {
        Author::Professional { rpps, profession } => format!("{rpps} ({})", profession.as_str()),
        Author::Holder => "patient".into(),
        Author::Representative(id) => format!("representative {id}"),
    }
}

/// A document's metadata as the API answers it.
pub fn doc_json(m: &DocumentMeta) -> Value {
    wire::json(&wire::Document::from(m))
}

/// The document `a` describes, its body read from its file (with a bar when `show`).
fn new_doc(a: &NewDocArgs, show: bool) -> Result<NewDocument> {
    Ok(NewDocument {
        class: DocClass::parse(&a.class)?,
        type_code: a.type_code.trim().to_string(),
        title: a.title.clone(),
        format: a.format.clone(),
        body: read_file_shown(&a.file, show)?,
        unique_id: a.unique_id.clone(),
        service_start: a.service_start.as_deref().map(parse_date).transpose()?,
        service_end: None,
    })
}

/// A spinner while the replica (or its daemon) encrypts, stores and traces a large body.
fn storing(show: bool, doc: &NewDocument) -> Progress {
    let len = doc.body.len() as u64;
    Progress::spinner(
        show && len >= progress::LARGE,
        format!("storing {} (encrypting, tracing)…", progress::size(len)),
    )
}

fn doc(cli: &Cli, c: &DocCmd) -> Result<Reply> {
    let r = open(cli)?;
    let show = progress::shown(cli.json);
    match c {
        DocCmd::Add {
            dossier,
            actor: who,
            mode: m,
            reason,
            doc,
        } => {
            let (who, dossier) = (actor(who)?, ins(dossier)?);
            let doc = new_doc(doc, show)?;
            let spinner = storing(show, &doc);
            let id = r.put_document(&who, mode(*m), reason.as_deref(), &dossier, doc)?;
            drop(spinner);
            Ok(Reply::new(id.to_string(), json!({"id": id.to_string()})))
        }
        DocCmd::Get {
            id,
            actor: who,
            mode: m,
            reason,
            output,
        } => {
            let (who, id) = (actor(who)?, DocId::parse(id)?);
            // The body's size is known once read: a spinner, for a body of any size.
            let spinner = Progress::spinner(show, "reading (decrypting, tracing)…");
            let out = r.read_document(&who, &id, mode(*m), reason.as_deref())?;
            drop(spinner);
            let mut j = doc_json(&out.meta);
            j["rule"] = json!(out.rule);
            let traced = format!("traced, rule {}", out.rule);
            let title = out.meta.facts.title.clone();
            body_reply(cli, output.as_deref(), out.body, j, (&title, &traced))
        }
        DocCmd::List {
            dossier,
            actor: who,
        } => {
            let docs = r.list_documents(&actor(who)?, &ins(dossier)?)?;
            let mut human = format!(
                "{:<32} {:<10} {:<5} {:<10} {:<11} {:<20} TITLE\n",
                "ID", "DATE", "CLASS", "TYPE", "STATE", "FLAGS"
            );
            for m in &docs {
                let s = m.state();
                let flags = s.flags.codes().join(",");
                human += &format!(
                    "{:<32} {:<10} {:<5} {:<10} {:<11} {:<20} {}{}\n",
                    m.facts.id,
                    format_date(m.facts.service_start),
                    m.facts.class.code(),
                    m.facts.type_code,
                    s.availability().as_str(),
                    if flags.is_empty() {
                        "-".to_string()
                    } else {
                        flags
                    },
                    m.facts.title,
                    if m.has_replacement_conflict() {
                        "  [CONFLICT: replaced twice]"
                    } else {
                        ""
                    }
                );
            }
            if docs.is_empty() {
                human += "(no document visible to you)";
            }
            Ok(Reply::new(
                human.trim_end(),
                Value::Array(docs.iter().map(doc_json).collect()),
            ))
        }
        DocCmd::Mask(a) => update(&r, a, Action::Mask, "masked from professionals"),
        DocCmd::Unmask(a) => update(&r, a, Action::Unmask, "unmasked"),
        DocCmd::HideFromPatient(a) => update(
            &r,
            a,
            Action::HideFromPatient,
            "hidden from the patient until the announcement",
        ),
        DocCmd::HideFromRepresentatives(a) => update(
            &r,
            a,
            Action::HideFromRepresentatives,
            "hidden from the legal representatives",
        ),
        DocCmd::Delete(a) => update(
            &r,
            a,
            Action::Delete,
            "deleted (logically; the trace keeps it)",
        ),
        DocCmd::Replace {
            id,
            actor: who,
            doc,
        } => {
            let old = DocId::parse(id)?;
            let who = actor(who)?;
            let doc = new_doc(doc, show)?;
            let spinner = storing(show, &doc);
            let new = r.replace_document(&who, &old, doc)?;
            drop(spinner);
            Ok(Reply::new(
                new.to_string(),
                json!({"id": new.to_string(), "replaces": old.to_string()}),
            ))
        }
        DocCmd::Check => {
            let damaged = r.damaged_bodies()?;
            if !damaged.is_empty() {
                let ids: Vec<String> = damaged.iter().map(ToString::to_string).collect();
                return Err(Error::Integrity(format!(
                    "{} stored bod{} damaged (altered, cut short or missing a part): {}; \
                     restore the data folder from a backup",
                    damaged.len(),
                    if damaged.len() == 1 {
                        "y is"
                    } else {
                        "ies are"
                    },
                    ids.join(", ")
                ))
                .into());
            }
            Ok(Reply::new(
                "every stored body is intact",
                json!({"ok": true, "damaged": []}),
            ))
        }
    }
}

fn update(r: &Store, a: &DocActionArgs, action: Action, done: &str) -> Result<Reply> {
    let id = DocId::parse(&a.id)?;
    let meta = r.update_document(&actor(&a.actor)?, &id, action)?;
    Ok(Reply::new(format!("{id}: {done}"), doc_json(&meta)))
}

fn trace_actor(a: &TraceActor) -> String {
    match a {
        TraceActor::Professional { rpps, profession } => {
            format!(
                "{rpps}{}",
                profession
                    .map(|p| format!(" ({})", p.as_str()))
                    .unwrap_or_else(|| " (unknown here)".into())
            )
        }
        TraceActor::Holder => "patient".into(),
        TraceActor::Representative(id) => format!("representative {id}"),
        TraceActor::System => "system".into(),
    }
}

/// An emergency as `audit emergencies --json` shows it.
fn emergency_json(e: &carnet_store::replica::Emergency) -> Value {
    let mut j = wire::json(&wire::Emergency::from(e));
    j["reviewed"] = json!(e.review.is_some());
    j
}

fn audit(cli: &Cli, c: &AuditCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        AuditCmd::Show {
            dossier,
            actor: who,
            since,
            limit,
        } => {
            let i = ins(dossier)?;
            let since = since.as_deref().map(parse_since).transpose()?;
            if *limit == Some(0) {
                return Err(Failure::Usage("--limit needs at least 1".into()));
            }
            let mut entries = r.read_trace(&i, who.as_deref().map(actor).transpose()?)?;
            // Oldest first, so a page ends where the next begins.
            entries.sort_by_key(|c| (c.entry.at, c.entry.origin.0, c.seq));
            entries.retain(|c| since.is_none_or(|t| c.entry.at >= t));
            let next = limit.and_then(|n| entries.get(n)).map(|c| c.entry.at);
            entries.truncate(limit.unwrap_or(usize::MAX));
            let mut human = String::new();
            let mut list = Vec::new();
            for c in &entries {
                let e = &c.entry;
                human += &format!(
                    "{} site {} #{:<4} {:<28} {:<26} {:<13} {:<7} {}{}{}\n",
                    format_rfc3339(e.at),
                    e.origin,
                    c.seq,
                    trace_actor(&e.actor),
                    e.action.name(),
                    e.mode.as_str(),
                    if e.allowed { "ALLOW" } else { "DENY" },
                    if e.rule > 0 {
                        format!("rule {}: {}", e.rule, e.outcome_reason)
                    } else {
                        e.outcome_reason.clone()
                    },
                    e.doc.map(|d| format!(" doc {d}")).unwrap_or_default(),
                    e.stated_reason
                        .as_ref()
                        .map(|s| format!(" reason: \"{s}\""))
                        .unwrap_or_default(),
                );
                list.push(wire::json(&wire::ChainedTrace::from(c)));
            }
            if entries.is_empty() {
                human = "(no trace entry for this dossier)".into();
            }
            if let Some(at) = next {
                // (Entries of that same millisecond already shown come again: none is skipped.)
                human += &format!(
                    "(more: add --since {} for the next entries)",
                    format_rfc3339(at)
                );
            }
            Ok(Reply::new(human.trim_end(), Value::Array(list)))
        }
        AuditCmd::Emergencies { pending } => {
            let list = r.emergencies(*pending)?;
            let mut human = String::new();
            for e in &list {
                human += &format!(
                    "#{} {} site {} {} {} {} dossier {}{}{} — {}{}\n",
                    e.id,
                    format_rfc3339(e.at),
                    e.site,
                    trace_actor(&e.actor),
                    e.mode.as_str(),
                    if e.allowed { "ALLOW" } else { "DENY" },
                    e.ins,
                    e.stated_reason
                        .as_ref()
                        .map(|s| format!(" reason: \"{s}\""))
                        .unwrap_or_default(),
                    if e.decided_offline {
                        " (decided offline)"
                    } else {
                        ""
                    },
                    e.finding,
                    match &e.review {
                        Some(r) => format!(" — reviewed by {}: \"{}\"", r.by, r.note),
                        None => " — pending review".into(),
                    },
                );
            }
            if list.is_empty() {
                human = if *pending {
                    "(no emergency access pending review)".into()
                } else {
                    "(no emergency access)".into()
                };
            }
            let json = list.iter().map(emergency_json).collect();
            Ok(Reply::new(human.trim_end(), Value::Array(json)))
        }
        AuditCmd::Review { id, note, actor } => {
            let e = r.review_emergency(*id, actor, note)?;
            Ok(Reply::new(
                format!("emergency #{} reviewed ({})", e.id, e.finding),
                emergency_json(&e),
            ))
        }
        AuditCmd::Verify => {
            let (origins, entries) = r.verify_audit()?;
            Ok(Reply::new(
                format!("trace intact: {entries} entries in {origins} chain(s)"),
                json!({"ok": true, "chains": origins, "entries": entries}),
            ))
        }
    }
}

/// The passphrase a rotation moves to (`CARNET_NEW_PASSPHRASE`), if set, and what the new key
/// is, for people.
fn new_passphrase() -> (Option<String>, &'static str) {
    let new = std::env::var("CARNET_NEW_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty());
    let desc = match new {
        None => "a new key file (back it up: the old one no longer opens this replica)",
        Some(_) => {
            "the passphrase in CARNET_NEW_PASSPHRASE (use it as CARNET_PASSPHRASE from now on)"
        }
    };
    (new, desc)
}

fn rotate(cli: &Cli) -> Result<Reply> {
    let r = open(cli)?;
    let (new, desc) = new_passphrase();
    r.rotate_master_key(new)?;
    Ok(Reply::new(
        format!("master key rotated: every data key re-wrapped under {desc}"),
        json!({"rotated": true}),
    ))
}

/// `keys rotate --full`: run here, never through the daemon, which holds the database file a
/// full rotation replaces.
fn rotate_full(cli: &Cli) -> Result<Reply> {
    let dir = data_dir(cli)?;
    if carnet_syncd::api::local::daemon_answers(&dir) {
        return Err(Failure::Usage(
            "carnet-syncd is running on this replica: stop it (e.g. systemctl stop carnet-syncd), run `carnet keys rotate --full`, then start it again".into(),
        ));
    }
    let (new, desc) = new_passphrase();
    let new_source = match new {
        Some(p) => KeySource::Passphrase(Zeroizing::new(p)),
        None => KeySource::File,
    };
    let report = carnet_store::replica::rekey::rotate_full(
        &dir,
        &key_source(),
        &new_source,
        system_clock(),
    )?;
    Ok(Reply::new(
        format!(
            "every key replaced: {} dossier key(s), {} document(s), {} body chunk(s), {} signed record(s), {} professional(s), {} trace entries sealed again ({} rows in {} tables, new index, registry and audit keys); the master key is now {desc}.\n\
             The trace chain key and the site's certificates are kept.\n\
             Copies and backups taken before still open with the old key: after a leak, take a new backup (carnet backup) and destroy the old ones.",
            report.dossiers,
            report.documents,
            report.body_chunks,
            report.signed_records,
            report.professionals,
            report.traces,
            report.rows,
            report.tables,
        ),
        json!({"rotated": true, "full": true, "report": report}),
    ))
}

fn export(cli: &Cli, a: &ExportArgs) -> Result<Reply> {
    let r = open(cli)?;
    let i = ins(&a.dossier)?;
    let who = actor(&a.actor)?;
    if matches!(who, Actor::Professional(_)) {
        return Err(Failure::Usage(
            "the full copy is the holder's: use --as patient (or representative:ID)".into(),
        ));
    }
    let show = progress::shown(cli.json);
    let spinner = Progress::spinner(show, "gathering the dossier (decrypting, tracing)…");
    let e = r.export_dossier(&who, &i)?;
    spinner.set_message(format!(
        "writing the FHIR bundle: {} document(s), {} trace entries…",
        e.documents.len(),
        e.traces.len()
    ));
    let bundle = fhir::bundle(&e);
    let text = serde_json::to_vec_pretty(&bundle).map_err(|e| Failure::File(e.to_string()))?;
    drop(spinner);
    write_private_file_shown(&a.output, &text, show)?;
    Ok(Reply::new(
        format!(
            "FHIR R4 Bundle with {} document(s) and {} trace entries written to {}",
            e.documents.len(),
            e.traces.len(),
            a.output.display()
        ),
        json!({"documents": e.documents.len(), "traces": e.traces.len(), "output": a.output.display().to_string()}),
    ))
}

fn import(cli: &Cli, file: &Path) -> Result<Reply> {
    let r = open(cli)?;
    let show = progress::shown(cli.json);
    let json = String::from_utf8(read_file_shown(file, show)?)
        .map_err(|_| Failure::File(format!("{}: not UTF-8, so not FHIR JSON", file.display())))?;
    let spinner = Progress::spinner(show, "filing (encrypting, tracing)…");
    let imported = r.import_fhir(json)?;
    drop(spinner);
    let new = imported.iter().filter(|i| !i.already_stored).count();
    let mut human = format!(
        "{} document(s) filed, {} already in the dossier",
        new,
        imported.len() - new
    );
    for i in &imported {
        human += &format!(
            "\n{}{}",
            i.id,
            if i.already_stored {
                "  (already stored)"
            } else {
                ""
            }
        );
    }
    Ok(Reply::new(
        human,
        json!({"documents": imported.iter().map(|i| json!({"id": i.id.to_string(), "already_stored": i.already_stored})).collect::<Vec<_>>()}),
    ))
}

fn authority(cli: &Cli, c: &AuthorityCmd) -> Result<Reply> {
    let r = open(cli)?;
    match c {
        AuthorityCmd::Export { output } => {
            let b = r.export_authority()?;
            write_private_file(output, &b.to_bytes()?)?;
            let vouched = b.vouch.is_some();
            Ok(Reply::new(
                format!(
                    "{} signed record(s) written to {}{} (contains identities: transfer it securely)",
                    b.records.len(),
                    output.display(),
                    if vouched {
                        ", signed whole by the host"
                    } else {
                        ", relayed: not signed whole, it renews no lease"
                    }
                ),
                json!({"records": b.records.len(), "signed_whole": vouched, "output": output.display().to_string()}),
            ))
        }
        AuthorityCmd::Import { file } => {
            let show = progress::shown(cli.json);
            let b = Bundle::from_bytes(&read_file_shown(file, show)?)?;
            let spinner = Progress::spinner(
                show,
                format!(
                    "verifying and importing {} signed record(s)…",
                    b.records.len()
                ),
            );
            let rep = r.import_authority(&b)?;
            drop(spinner);
            Ok(Reply::new(
                format!(
                    "imported: {} record(s) now in force, {} unchanged, {} dossier(s) purged after closure{}",
                    rep.admitted,
                    rep.unchanged,
                    rep.purged,
                    if b.vouch.is_none() {
                        "; the bundle is not signed whole by the host: the lease is not renewed"
                    } else {
                        ""
                    }
                ),
                json!({"admitted": rep.admitted, "unchanged": rep.unchanged, "purged": rep.purged, "lease_renewed": rep.lease_renewed}),
            ))
        }
        AuthorityCmd::Key => match r.host_key()? {
            Some(k) => Ok(Reply::new(hex(&k), json!({"host_key": hex(&k)}))),
            None => Err(Failure::Store(Error::NotFound(
                "this replica has no host key yet".into(),
            ))),
        },
    }
}
