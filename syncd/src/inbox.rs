//! The inbox: clinic software drops a document and its sidecar into a folder; each complete
//! pair is stored once, then leaves only a receipt in `done/` (ids and a time), or goes to
//! `rejected/` with a `.error.txt` saying why and what to do now.
//!
//! A pair is `NAME` (the document) and `NAME.carnet.json` (its sidecar, format in README).
//! A FHIR R4 file, `NAME.fhir.json` (a DocumentReference or a Bundle of them, `crate::fhir`),
//! is a complete item on its own: it carries its metadata, so it takes no sidecar (one given it
//! is refused). It is stored, finished and refused like a pair, its receipt naming every
//! document it filed.
//! Producers write under a temporary name and rename when complete; names starting with `.` or
//! ending in `.tmp`, `.part` or `~` are ignored, and so is a sidecar whose document has not
//! arrived yet (and a document whose sidecar has not): once it has waited `ORPHAN_AFTER_MS`,
//! `carnet sync status` and `carnet inbox list` report it (`state`).
//!
//! *Invariant:* no document stays in clear in `done/`. A stored pair leaves
//! `done/NAME.receipt.json` (`Receipt`: the document id, a time, nothing about the patient),
//! written whole before the document, then its sidecar, are removed. A pair is stored before
//! anything is removed, and recognised by its producer's `unique_id` when seen again, so a
//! crash at any point, or the same pair dropped twice, stores it once and loses nothing: the
//! pair found again is known as stored and finished; a sidecar left alone by a crash between
//! the two removals is recognised by its receipt and removed (`leftover`). Clear files an
//! older version left in `done/` are finished the same way when the replica holds their
//! document (`tidy`, at the daemon's start and daily, which also removes receipts older than
//! `RECEIPT_KEEP_MS`); the others stay and are reported (`InboxState::unclaimed`).
//!
//! Bad input never panics: it lands in `rejected/` (0700, its files 0600) with the reason and
//! the fix that applies (`Refusal`); `retry` puts a pair back. A pair the replica cannot store
//! because its storage failed (a full disk) is not bad input: it stays where it is
//! (`InboxReport::waiting`) and the daemon tries it again after its next round.
//!
//! The daemon scans at start-up and when `watch` signals. *Invariant:* a scan causes no event
//! that signals another: only a file created, moved in, closed after writing or written to
//! under a name that is not temporary starts a scan (`starts_scan`), and a scan only opens and
//! reads (access events), removes files and moves pairs out (removal and moved-from events)
//! and creates `done/` and `rejected/` (folder creations; the watch is not recursive, so what
//! happens inside them is not seen). An idle inbox therefore costs nothing: no event, no scan.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use carnet_store::ids::{DocId, Ins, Rpps};
use carnet_store::model::{AccessMode, Actor, DocClass};
use carnet_store::replica::{NewDocument, Replica, Role};
use carnet_store::time::Millis;
use serde::{Deserialize, Serialize};

/// Suffix of a sidecar file.
pub const SIDECAR_SUFFIX: &str = ".carnet.json";
/// Suffix of a FHIR R4 file, an item on its own (no sidecar).
pub const FHIR_SUFFIX: &str = ".fhir.json";
/// Suffix of a stored pair's receipt in `done/`.
pub const RECEIPT_SUFFIX: &str = ".receipt.json";
/// Suffix of a refusal's reason beside the refused file in `rejected/`.
pub const ERROR_SUFFIX: &str = ".error.txt";
/// How long a file may wait for the other half of its pair before it is reported (a producer
/// writes both within seconds; one that waits longer was lost or misnamed).
pub const ORPHAN_AFTER_MS: Millis = 10 * 60 * 1000;
/// Largest sidecar read (a sidecar is a few hundred bytes).
const SIDECAR_MAX: u64 = 64 * 1024;
/// Largest receipt or error file read back.
const NOTE_MAX: u64 = 64 * 1024;

/// The sidecar: what the clinic software says about the document beside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Holder's INS (15 characters).
    pub ins: String,
    /// RPPS of the professional who files it (registered at this site).
    pub author_rpps: String,
    /// Class code, e.g. "10".
    pub class: String,
    /// Type code, e.g. "11488-4".
    #[serde(rename = "type")]
    pub type_code: String,
    /// Title.
    pub title: String,
    /// Producer's unique id: what makes a second drop of the same pair harmless.
    pub unique_id: String,
    /// MIME type (default `application/pdf`).
    #[serde(default)]
    pub format: Option<String>,
    /// Start of the act, `YYYY-MM-DD` (default: now).
    #[serde(default)]
    pub service_start: Option<String>,
}

/// What one pass over the inbox did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InboxReport {
    /// Documents stored now, by file name.
    pub stored: Vec<(String, DocId)>,
    /// Pairs already stored earlier (same unique id), removed with a receipt in `done/`.
    pub duplicates: Vec<String>,
    /// Sidecars of pairs the replica holds, left alone in the inbox by a crash (their receipt
    /// is in `done/`), removed now.
    pub tidied: Vec<String>,
    /// Pairs refused, with the reason written beside them.
    pub rejected: Vec<(String, String)>,
    /// Pairs left where they are because the replica could not store them now (its storage
    /// failed: a full disk, an I/O error), with why; the next scan tries them again.
    pub waiting: Vec<(String, String)>,
}

/// Whether a file-system event in the inbox can mean a new or completed pair, so it is worth
/// a scan: a file created, moved in (renamed into place), closed after writing, or its data
/// changed, under a name that is not temporary; or events lost (the watcher asks for a rescan).
///
/// Never an access (opening or reading a file or the folder: the scan does both), a move out
/// or a removal (the scan removes stored pairs and moves refused ones to `rejected/`), a folder created (the scan
/// creates those two) or a change of metadata: with these, each scan started the next, about
/// 1,200 scans a second on an idle inbox.
pub fn starts_scan(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    if event.need_rescan() {
        return true;
    }
    let completes = match event.kind {
        EventKind::Create(kind) => !matches!(kind, CreateKind::Folder),
        EventKind::Modify(ModifyKind::Name(mode)) => !matches!(mode, RenameMode::From),
        EventKind::Modify(ModifyKind::Data(_)) => true,
        // A backend that cannot tell what changed.
        EventKind::Modify(ModifyKind::Any) | EventKind::Any => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_)
        | EventKind::Modify(ModifyKind::Metadata(_) | ModifyKind::Other)
        | EventKind::Remove(_)
        | EventKind::Other => false,
    };
    // A rename names its source then its target: the target counts. An event without a path
    // is about the folder itself.
    completes
        && (event.paths.is_empty()
            || event.paths.iter().any(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(|n| !is_temporary(n))
            }))
}

/// Watches `inbox` (not its subfolders): the receiver gets `()` when a scan is worth doing
/// (`starts_scan`). The channel holds one signal: a scan sees every file present when it
/// starts, so signals that arrive before it coalesce into that one, and those that arrive
/// during it leave one more scan to do, never more. The watcher stops when dropped.
pub fn watch(
    inbox: &Path,
) -> notify::Result<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A lost event comes as a rescan event (`starts_scan`); an error reading the watch is
        // not about a file, and a scan for each could repeat as fast as the error does.
        if event.as_ref().is_ok_and(starts_scan) {
            // Full: a scan is already due; closed: the daemon is stopping.
            let _ = tx.try_send(());
        }
    })?;
    notify::Watcher::watch(&mut watcher, inbox, notify::RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Whether `name` is a FHIR file (`NAME.fhir.json`), which takes no sidecar.
fn is_fhir(name: &str) -> bool {
    name.strip_suffix(FHIR_SUFFIX)
        .is_some_and(|base| !base.is_empty() && !is_temporary(name))
}

fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".part")
        || name.ends_with('~')
}

/// Processes every complete pair now in `inbox` (the scan at start-up, and the work done on
/// each file-system event), and removes the sidecars a crash left alone (`leftover`). Reads
/// the inbox, not `done/` (`tidy`).
pub fn process(replica: &Replica, inbox: &Path) -> std::io::Result<InboxReport> {
    let mut report = InboxReport::default();
    if restored(replica)? {
        // It records nothing yet, so pairs wait where they are (the daemon scans again after
        // the first round).
        return Ok(report);
    }
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(inbox)?.filter_map(|e| e.ok()) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            continue;
        }
        let refusal = match entry.file_name().into_string() {
            Err(_) => Refusal::instead(
                "its name is not valid UTF-8",
                "drop the document and its sidecar again under UTF-8 names",
            ),
            Ok(name) if is_temporary(&name) => continue,
            Ok(_) if !kind.is_file() => Refusal::instead(
                "it is not a regular file (a symbolic link, a device or a pipe): the inbox takes the document itself, not a link to it",
                "drop a copy of the document itself, with its sidecar",
            ),
            Ok(name)
                if name.ends_with(SIDECAR_SUFFIX)
                    && name[..name.len() - SIDECAR_SUFFIX.len()].ends_with(SIDECAR_SUFFIX) =>
            {
                Refusal::instead(
                    "a sidecar of a sidecar",
                    "a document's sidecar is NAME.carnet.json beside NAME: drop the pair again under those names",
                )
            }
            Ok(name) if name.strip_suffix(SIDECAR_SUFFIX).is_some_and(is_fhir) => Refusal::instead(
                "a sidecar for a FHIR file, which carries its own metadata",
                "drop the NAME.fhir.json file alone; to file a FHIR JSON file as an opaque document instead, name it NAME.json beside its sidecar NAME.json.carnet.json",
            ),
            Ok(name) => {
                names.push(name);
                continue;
            }
        };
        let text = reject_alone(inbox, &entry.path(), &refusal)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        report.rejected.push((name, text));
    }
    names.sort();
    // The sidecar of a document rejected above has no document to wait for.
    let alone: Vec<String> = report.rejected.iter().map(|(n, _)| n.clone()).collect();
    for name in &alone {
        let sidecar = format!("{name}{SIDECAR_SUFFIX}");
        if let Some(at) = names.iter().position(|n| *n == sidecar) {
            names.remove(at);
            let refusal = Refusal::instead(
                "its document was rejected",
                "see the document's error file beside it",
            );
            let text = reject_alone(inbox, &inbox.join(&sidecar), &refusal)?;
            report.rejected.push((sidecar, text));
        }
    }
    for sidecar_name in names
        .iter()
        .filter(|n| n.ends_with(SIDECAR_SUFFIX) && !is_temporary(n))
    {
        let doc_name = &sidecar_name[..sidecar_name.len() - SIDECAR_SUFFIX.len()];
        if doc_name.is_empty() || is_temporary(doc_name) {
            continue;
        }
        let sidecar_path = inbox.join(sidecar_name);
        if !names.iter().any(|n| n == doc_name) {
            // Its document has not arrived, or was removed by a crash after it was stored.
            if leftover(replica, inbox, doc_name, &sidecar_path) {
                fs::remove_file(&sidecar_path)?;
                sync_dir(inbox)?;
                report.tidied.push(sidecar_name.clone());
            }
            continue;
        }
        let doc_path = inbox.join(doc_name);
        let outcome = ingest(replica, &doc_path, &sidecar_path);
        conclude(replica, inbox, doc_name, outcome, &mut report, |refusal| {
            move_pair(inbox, "rejected", &doc_path, &sidecar_path, refusal)
        })?;
    }
    for name in names.iter().filter(|n| is_fhir(n)) {
        let path = inbox.join(name);
        let outcome = ingest_fhir(replica, &path);
        conclude(replica, inbox, name, outcome, &mut report, |refusal| {
            reject_alone(inbox, &path, refusal)
        })?;
    }
    Ok(report)
}

/// Ends an item of the inbox (a pair, or a FHIR file, named `name`) as `outcome` says: a
/// receipt for what is stored, nothing for what waits, `reject` for a refusal; `report` says so.
fn conclude(
    replica: &Replica,
    inbox: &Path,
    name: &str,
    outcome: Result<Ingested, Refusal>,
    report: &mut InboxReport,
    reject: impl FnOnce(&Refusal) -> std::io::Result<String>,
) -> std::io::Result<()> {
    match outcome {
        Ok(Ingested::Stored(ids)) => {
            finish(inbox, inbox, name, &Receipt::new(&ids, false, replica))?;
            if let Some(first) = ids.first() {
                report.stored.push((name.to_string(), *first));
            }
        }
        Ok(Ingested::AlreadyStored(ids)) => {
            finish(inbox, inbox, name, &Receipt::new(&ids, true, replica))?;
            report.duplicates.push(name.to_string());
        }
        Ok(Ingested::Later(why)) => report.waiting.push((name.to_string(), why)),
        Err(refusal) => report.rejected.push((name.to_string(), reject(&refusal)?)),
    }
    Ok(())
}

/// Reads and files a FHIR file (`crate::fhir`): stored when any of its documents is new.
fn ingest_fhir(replica: &Replica, path: &Path) -> Result<Ingested, Refusal> {
    let text = fs::read(path).map_err(|e| {
        Refusal::then_retry(
            format!("cannot read the file: {e}"),
            "make it a regular file the daemon's user can read",
        )
    })?;
    let docs = crate::fhir::read(&text).map_err(|e| Refusal::file(e.to_string(), ""))?;
    // The author a refusal is about, when one is not registered here.
    let unregistered = docs.iter().find_map(|d| match &d.author {
        Actor::Professional(rpps) if !registered(replica, rpps) => Some(rpps.clone()),
        _ => None,
    });
    match crate::fhir::import(replica, docs) {
        Ok(done) if done.is_empty() => Err(Refusal::file("no document in the file", "")),
        Ok(done) => {
            let ids: Vec<DocId> = done.iter().map(|d| d.id).collect();
            Ok(if done.iter().all(|d| d.already_stored) {
                Ingested::AlreadyStored(ids)
            } else {
                Ingested::Stored(ids)
            })
        }
        Err(e) => storing_failed(replica, unregistered.as_ref(), e).map_err(Refusal::for_file),
    }
}

/// Whether the replica was restored from a backup and has not caught up with the host yet.
fn restored(replica: &Replica) -> std::io::Result<bool> {
    Ok(replica
        .restore_mark()
        .map_err(std::io::Error::other)?
        .is_some())
}

enum Ingested {
    /// Stored now (a FHIR file: every document it holds, some perhaps stored before).
    Stored(Vec<DocId>),
    /// Stored before, as this document (a second drop, or a scan after a crash).
    AlreadyStored(Vec<DocId>),
    /// Not stored, through no fault of the pair: the replica's storage failed.
    Later(String),
}

/// Why a pair (or a file that can never pair) was refused, and what to do now: written to its
/// `.error.txt` (`Refusal::text`).
#[derive(Debug)]
struct Refusal {
    reason: String,
    fix: Fix,
}

/// What to do about a refusal, for the file now named NAME in `rejected/`.
#[derive(Debug)]
enum Fix {
    /// The sidecar says something this replica cannot take: after the advice (empty, or a
    /// sentence ending in ", "), correct it and retry.
    Sidecar(String),
    /// The same for a FHIR file, which is its own sidecar.
    File(String),
    /// Do this at this replica, then `carnet inbox retry NAME`.
    ThenRetry(String),
    /// Retrying cannot help: this instead.
    Instead(String),
}

impl Refusal {
    fn sidecar(reason: impl Into<String>, advice: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            fix: Fix::Sidecar(advice.into()),
        }
    }

    fn file(reason: impl Into<String>, advice: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            fix: Fix::File(advice.into()),
        }
    }

    /// The refusal of a FHIR file: what a pair's sidecar would correct, the file does.
    fn for_file(self) -> Refusal {
        match self.fix {
            Fix::Sidecar(advice) => Refusal::file(self.reason, advice),
            _ => self,
        }
    }

    fn then_retry(reason: impl Into<String>, first: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            fix: Fix::ThenRetry(first.into()),
        }
    }

    fn instead(reason: impl Into<String>, fix: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            fix: Fix::Instead(fix.into()),
        }
    }

    /// The error file's text for the file named `name` in `rejected/`: the reason on the first
    /// line, then `fix: ` and what to do.
    fn text(&self, name: &str) -> String {
        let retry = format!("`carnet inbox retry {}`", shell_word(name));
        let fix = match &self.fix {
            Fix::Sidecar(advice) => format!(
                "{advice}correct the sidecar (rejected/{name}{SIDECAR_SUFFIX}, or in the software that wrote it), then {retry}"
            ),
            Fix::File(advice) => format!(
                "{advice}correct the file (rejected/{name}, or in the software that wrote it), then {retry}"
            ),
            Fix::ThenRetry(first) => format!("{first}, then {retry}"),
            Fix::Instead(what) => what.clone(),
        };
        format!("{}\nfix: {fix}\n", self.reason)
    }
}

/// `name` as one word for a shell: quoted unless plain.
fn shell_word(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+,@%=:".contains(c))
    {
        name.to_string()
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

/// What to do with a pair whose storing failed with `e`: try again later when the storage
/// failed (nothing wrong with the pair), refuse it otherwise, with the fix that applies;
/// `unregistered`, its author when not registered at this replica.
fn storing_failed(
    replica: &Replica,
    unregistered: Option<&Rpps>,
    e: carnet_store::Error,
) -> Result<Ingested, Refusal> {
    use carnet_store::Error as E;
    let at_site = replica.config().role == Role::Site;
    Err(match e {
        E::Storage(_) | E::Conflict(_) => return Ok(Ingested::Later(e.to_string())),
        E::Denied { rule: 1, .. } => Refusal::sidecar(
            e.to_string(),
            "the dossier is not active (closed) and nothing more is filed in it; if the sidecar names the wrong patient, ",
        ),
        E::Denied { rule: 2, .. } => Refusal::sidecar(
            e.to_string(),
            "an insurer's or employer's doctor files nothing in a DMP; to file it as the professional who wrote it, ",
        ),
        E::Denied { rule: 3, .. } => Refusal::sidecar(
            e.to_string(),
            "the holder blocked this professional; to file it as another professional of the care, ",
        ),
        E::Denied { .. } if let Some(author) = unregistered => Refusal::then_retry(
            format!("{e} (the author, {author}, is not registered at this replica)"),
            format!(
                "register them here (`carnet pro add --rpps {author} --profession PROFESSION`{}), or correct `author_rpps` in the sidecar if it is wrong",
                if at_site {
                    "; the host takes what they file once it binds them to this site, `carnet pki bind` at the host"
                } else {
                    ""
                }
            ),
        ),
        E::Denied { .. } => Refusal::sidecar(e.to_string(), "check `author_rpps` and `ins`; "),
        E::NotFound(m) if m.contains("purged") => Refusal::sidecar(
            m,
            "nothing more is filed in a closed dossier; if the sidecar names the wrong patient, ",
        ),
        E::NotFound(_) if at_site => Refusal::then_retry(
            "this site holds no dossier for the sidecar's INS",
            "if the host holds it, ask for it (`carnet pin INS`, with the sidecar's INS) and wait for the round that brings it (`carnet dossier show INS --as RPPS`); for a patient new to the DMP, open the dossier here (`carnet dossier create --ins INS … --as RPPS`); if the INS is wrong, correct the sidecar instead",
        ),
        E::NotFound(_) => Refusal::then_retry(
            "the host holds no dossier for the sidecar's INS",
            "create it (`carnet dossier create --ins INS …`), or correct the sidecar's INS if it is wrong",
        ),
        E::Invalid(m) => Refusal::sidecar(m, ""),
        E::Integrity(_) | E::Key(_) => Refusal::then_retry(
            e.to_string(),
            "the replica failed a check of its own: see the daemon's log and `carnet audit verify`; once it is repaired",
        ),
    })
}

/// `rpps` when it is not registered at this replica.
fn unregistered<'a>(replica: &Replica, rpps: &'a Rpps) -> Option<&'a Rpps> {
    (!registered(replica, rpps)).then_some(rpps)
}

/// Whether `rpps` is registered at this replica (an unreadable registry counts as not).
fn registered(replica: &Replica, rpps: &Rpps) -> bool {
    replica
        .professionals()
        .is_ok_and(|pros| pros.iter().any(|p| p.rpps == *rpps))
}

fn ingest(replica: &Replica, doc: &Path, sidecar: &Path) -> Result<Ingested, Refusal> {
    let unreadable = |what: &str, e: std::io::Error| {
        Refusal::then_retry(
            format!("cannot read the {what}: {e}"),
            "make it a regular file the daemon's user can read",
        )
    };
    let size = fs::metadata(sidecar)
        .map_err(|e| unreadable("sidecar", e))?
        .len();
    if size > SIDECAR_MAX {
        return Err(Refusal::sidecar(
            format!("the sidecar is {size} bytes; at most {SIDECAR_MAX} are accepted"),
            "a sidecar is a few hundred bytes of JSON (the README's inbox section); ",
        ));
    }
    let text = fs::read(sidecar).map_err(|e| unreadable("sidecar", e))?;
    let Filing {
        ins,
        author,
        mut document,
    } = read_sidecar(&text).map_err(|reason| Refusal::sidecar(reason, ""))?;
    let unique_id = document.unique_id.as_deref().unwrap_or_default();
    match replica.find_by_unique_id(&ins, unique_id) {
        Ok(Some(id)) => return Ok(Ingested::AlreadyStored(vec![id])),
        Ok(None) => {}
        Err(e) => return storing_failed(replica, unregistered(replica, &author), e),
    }
    document.body = fs::read(doc).map_err(|e| unreadable("document", e))?;
    let as_author = author.clone();
    match store(
        replica,
        Filing {
            ins,
            author,
            document,
        },
    ) {
        Ok(id) => Ok(Ingested::Stored(vec![id])),
        Err(e) => storing_failed(replica, unregistered(replica, &as_author), e),
    }
}
/// What a sidecar says, parsed and checked: the document to store, with an empty body.
#[derive(Debug)]
pub struct Filing {
    /// The holder's dossier.
    pub ins: Ins,
    /// The professional who files it.
    pub author: Rpps,
    /// The document, its body still empty (it is the file beside the sidecar).
    pub document: NewDocument,
}

/// Parses a sidecar's bytes and checks every value in it (the reason, when refused, is written
/// beside the pair in `rejected/`). Reads nothing else.
pub fn read_sidecar(text: &[u8]) -> Result<Filing, String> {
    let meta: Sidecar =
        serde_json::from_slice(text).map_err(|e| format!("the sidecar is not valid: {e}"))?;
    let ins = Ins::parse(&meta.ins).map_err(|e| e.to_string())?;
    let author = Rpps::parse(&meta.author_rpps).map_err(|e| e.to_string())?;
    if meta.unique_id.trim().is_empty() {
        return Err("the sidecar needs a unique_id".into());
    }
    let service_start = meta
        .service_start
        .as_deref()
        .map(carnet_store::time::parse_date)
        .transpose()
        .map_err(|e| e.to_string())?;
    let document = NewDocument {
        class: DocClass::parse(&meta.class).map_err(|e| e.to_string())?,
        type_code: meta.type_code,
        title: meta.title,
        format: meta.format.unwrap_or_else(|| "application/pdf".into()),
        body: Vec::new(),
        unique_id: Some(meta.unique_id),
        service_start,
        service_end: None,
    };
    Ok(Filing {
        ins,
        author,
        document,
    })
}

/// Stores a filing in one transaction, as its author would.
pub fn file(replica: &Replica, filing: Filing) -> Result<DocId, String> {
    store(replica, filing).map_err(|e| e.to_string())
}

fn store(replica: &Replica, filing: Filing) -> carnet_store::Result<DocId> {
    replica.put_document(
        &Actor::Professional(filing.author),
        AccessMode::Normal,
        None,
        &filing.ins,
        filing.document,
    )
}

/// What `done/NAME.receipt.json` says of a pair the replica holds, in place of the pair: ids
/// and a time, nothing about the patient (no INS, name or title; the file name is the
/// producer's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The receipt's format: 1.
    pub format: u32,
    /// The stored document's id (`carnet doc get ID --as …`); a FHIR file's first.
    pub document: String,
    /// A FHIR file's documents, every one, in the order filed (absent for a pair).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<String>,
    /// When the inbox finished the pair (RFC 3339, by the replica's clock).
    pub at: String,
    /// The replica held the document already (a second drop of the pair, or a scan after a
    /// crash or after an older version).
    pub already_stored: bool,
}

impl Receipt {
    fn new(ids: &[DocId], already_stored: bool, replica: &Replica) -> Receipt {
        let all: Vec<String> = ids.iter().map(DocId::to_string).collect();
        Receipt {
            format: 1,
            document: all.first().cloned().unwrap_or_default(),
            documents: if all.len() > 1 { all } else { Vec::new() },
            at: carnet_store::time::format_rfc3339(replica.now()),
            already_stored,
        }
    }
}

/// Reads a receipt (`None` when absent or unreadable).
fn read_receipt(path: &Path) -> Option<Receipt> {
    let bytes = carnet_store::files::read_bounded(path, NOTE_MAX).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Ends a pair the replica holds, found in `folder` (the inbox, or `done/` for a pair an older
/// version moved there): its receipt is written whole in `done/` (a temporary name, synced,
/// renamed; one for the same name is replaced), then the document is removed, then the
/// sidecar. A crash before the receipt leaves the pair, found stored at the next scan; one
/// between the removals leaves the sidecar alone, which the next scan removes (`leftover`).
fn finish(inbox: &Path, folder: &Path, doc_name: &str, receipt: &Receipt) -> std::io::Result<()> {
    let done = inbox.join("done");
    carnet_store::files::private_dir(&done)?;
    let temporary = done.join(format!(".{doc_name}{RECEIPT_SUFFIX}.tmp"));
    let bytes = serde_json::to_vec(receipt).map_err(std::io::Error::other)?;
    carnet_store::files::write_private(&temporary, &bytes)?;
    fs::File::open(&temporary)?.sync_all()?;
    fs::rename(&temporary, done.join(format!("{doc_name}{RECEIPT_SUFFIX}")))?;
    sync_dir(&done)?;
    fs::remove_file(folder.join(doc_name))?;
    sync_dir(folder)?;
    if is_fhir(doc_name) {
        return Ok(());
    }
    fs::remove_file(folder.join(format!("{doc_name}{SIDECAR_SUFFIX}")))?;
    sync_dir(folder)
}

/// Makes the entries of `dir` durable (a removal, a rename into it).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Whether `sidecar`, alone in the inbox, is what a crash left of a pair already finished: the
/// replica holds its document, and `done/` holds that document's receipt under its name.
fn leftover(replica: &Replica, inbox: &Path, doc_name: &str, sidecar: &Path) -> bool {
    let receipt = inbox
        .join("done")
        .join(format!("{doc_name}{RECEIPT_SUFFIX}"));
    // Most lone sidecars wait for their document: no receipt, nothing read.
    if !receipt.exists() {
        return false;
    }
    match (read_receipt(&receipt), stored_as(replica, sidecar)) {
        (Some(r), Some(id)) => r.document == id.to_string(),
        _ => false,
    }
}

/// The document this replica holds for the sidecar at `path` (by its unique id), if any.
fn stored_as(replica: &Replica, path: &Path) -> Option<DocId> {
    let text = carnet_store::files::read_bounded(path, SIDECAR_MAX).ok()?;
    let filing = read_sidecar(&text).ok()?;
    let unique_id = filing.document.unique_id.as_deref()?;
    replica
        .find_by_unique_id(&filing.ins, unique_id)
        .ok()
        .flatten()
}

/// The names of the regular files in `dir` (none when it is missing).
fn file_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// How long a receipt stays in `done/`: time enough for the producer to see it and for a
/// person to ask about a file; the trace keeps who filed what for good.
pub const RECEIPT_KEEP_MS: Millis = 90 * 24 * 3600 * 1000;

/// What `tidy` did in `done/`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Pairs an older version left there in clear, replaced by their receipt.
    pub finished: Vec<String>,
    /// Receipts older than `RECEIPT_KEEP_MS`, removed.
    pub receipts_removed: usize,
    /// Receipts a crash left half-written under their temporary name (ids only), older than
    /// `TEMPORARY_KEEP_MS`, removed.
    pub temporaries_removed: usize,
}

/// How long a receipt's temporary file may stay before `tidy` takes it for one a crash left:
/// a receipt is written and renamed within a scan, far quicker.
const TEMPORARY_KEEP_MS: Millis = 3_600_000;

/// Keeps `done/` as it should be for years (the daemon runs it at start and daily):
/// finishes the pairs an older version moved whole into it, in clear — each whose document
/// the replica holds leaves a receipt and is removed; the others stay, reported
/// (`InboxState::unclaimed`): their document is not here (a dossier purged since, a replica
/// restored from an older backup), and only a person can say what they are — and removes the
/// receipts older than `RECEIPT_KEEP_MS` by the replica's clock.
pub fn tidy(replica: &Replica, inbox: &Path) -> std::io::Result<Tidied> {
    let mut tidied = Tidied::default();
    if restored(replica)? {
        // It cannot tell what it holds until its first round.
        return Ok(tidied);
    }
    let done = inbox.join("done");
    let names = file_names(&done)?;
    let regular = |n: &str| fs::symlink_metadata(done.join(n)).is_ok_and(|m| m.is_file());
    for sidecar_name in names.iter().filter(|n| n.ends_with(SIDECAR_SUFFIX)) {
        let doc_name = &sidecar_name[..sidecar_name.len() - SIDECAR_SUFFIX.len()];
        if doc_name.is_empty() || doc_name.starts_with('.') || !names.iter().any(|n| n == doc_name)
        {
            continue;
        }
        if !regular(doc_name) || !regular(sidecar_name) {
            continue;
        }
        if let Some(id) = stored_as(replica, &done.join(sidecar_name)) {
            finish(inbox, &done, doc_name, &Receipt::new(&[id], true, replica))?;
            tidied.finished.push(doc_name.to_string());
        }
    }
    let now = replica.now();
    for name in names.iter().filter(|n| n.ends_with(RECEIPT_SUFFIX)) {
        let path = done.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && now.saturating_sub(written_at(&meta)) >= RECEIPT_KEEP_MS {
            fs::remove_file(&path)?;
            tidied.receipts_removed += 1;
        }
    }
    let temporary =
        |n: &&String| n.starts_with('.') && n.ends_with(&format!("{RECEIPT_SUFFIX}.tmp"));
    for name in names.iter().filter(temporary) {
        let path = done.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && now.saturating_sub(written_at(&meta)) >= TEMPORARY_KEEP_MS {
            fs::remove_file(&path)?;
            tidied.temporaries_removed += 1;
        }
    }
    Ok(tidied)
}

/// What in an inbox needs a person, as `carnet inbox list` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxState {
    /// The refused files in `rejected/`, by name.
    pub rejected: Vec<Rejected>,
    /// Files waiting for the other half of their pair for `ORPHAN_AFTER_MS` or more.
    pub orphans: Vec<Orphan>,
    /// Files in clear in `done/` that no receipt replaced (an older version moved pairs there
    /// whole): their document is not in this replica.
    pub unclaimed: Vec<String>,
}

/// The same, as `carnet sync status` shows it: the refused files counted, not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxSummary {
    /// How many files `rejected/` holds with their reason (`carnet inbox list`).
    pub rejected: usize,
    /// As in `InboxState`.
    pub orphans: Vec<Orphan>,
    /// As in `InboxState`.
    pub unclaimed: Vec<String>,
}

/// A refused file in `rejected/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Its name in `rejected/`: what `carnet inbox retry` takes.
    pub name: String,
    /// When it was refused (its error file's time).
    pub at: Millis,
    /// Its sidecar is beside it.
    pub sidecar: bool,
    /// Why it was refused.
    pub reason: String,
    /// What to do now (`None` in the error files of older versions).
    pub fix: Option<String>,
}

/// A file of the inbox without the other half of its pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// Its name in the inbox.
    pub name: String,
    /// When it was last written (the file's time).
    pub since: Millis,
    /// What it waits for: `"sidecar"` (a document alone) or `"document"` (a sidecar alone).
    pub missing: String,
}

/// The time a file was last written, in milliseconds since the epoch (0 if unknown).
fn written_at(meta: &fs::Metadata) -> Millis {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The files of `inbox` that have waited `ORPHAN_AFTER_MS` or more at `now` for the other half
/// of their pair. Temporary names are not counted (a producer is still writing them).
fn orphans(inbox: &Path, now: Millis) -> std::io::Result<Vec<Orphan>> {
    let names = file_names(inbox)?;
    let mut out = Vec::new();
    for name in names.iter().filter(|n| !is_temporary(n)) {
        let missing = match name.strip_suffix(SIDECAR_SUFFIX) {
            Some(doc) if doc.is_empty() || is_temporary(doc) => continue,
            Some(doc) if names.iter().any(|n| n == doc) => continue,
            Some(_) => "document",
            None if names.contains(&format!("{name}{SIDECAR_SUFFIX}")) || is_fhir(name) => {
                continue;
            }
            None => "sidecar",
        };
        let Ok(meta) = fs::symlink_metadata(inbox.join(name)) else {
            continue;
        };
        let since = written_at(&meta);
        if now.saturating_sub(since) >= ORPHAN_AFTER_MS {
            out.push(Orphan {
                name: name.clone(),
                since,
                missing: missing.into(),
            });
        }
    }
    Ok(out)
}

/// The files in `done/` other than receipts (and temporary ones).
fn unclaimed(inbox: &Path) -> std::io::Result<Vec<String>> {
    Ok(file_names(&inbox.join("done"))?
        .into_iter()
        .filter(|n| !n.starts_with('.') && !n.ends_with(RECEIPT_SUFFIX))
        .collect())
}

/// The names of the refused files in `rejected/` (those with an error file).
fn rejected_names(inbox: &Path) -> std::io::Result<Vec<String>> {
    Ok(file_names(&inbox.join("rejected"))?
        .into_iter()
        .filter_map(|n| n.strip_suffix(ERROR_SUFFIX).map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect())
}

/// What in `inbox` needs a person at `now`: the refused files with their reasons, the files
/// without the other half of their pair, the files in clear left in `done/`. Reads only.
pub fn state(inbox: &Path, now: Millis) -> std::io::Result<InboxState> {
    let rejected_dir = inbox.join("rejected");
    let mut rejected = Vec::new();
    for name in rejected_names(inbox)? {
        let error = rejected_dir.join(format!("{name}{ERROR_SUFFIX}"));
        let (Ok(meta), Ok(bytes)) = (
            fs::symlink_metadata(&error),
            carnet_store::files::read_bounded(&error, NOTE_MAX),
        ) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let (reason, fix) = match text.split_once("\nfix: ") {
            Some((reason, fix)) => (reason, Some(fix.trim_end().to_string())),
            None => (text.trim_end(), None),
        };
        rejected.push(Rejected {
            sidecar: rejected_dir
                .join(format!("{name}{SIDECAR_SUFFIX}"))
                .exists(),
            name,
            at: written_at(&meta),
            reason: reason.to_string(),
            fix,
        });
    }
    Ok(InboxState {
        rejected,
        orphans: orphans(inbox, now)?,
        unclaimed: unclaimed(inbox)?,
    })
}

/// `state` with the refused files counted rather than read (for `sync status`, asked often).
pub fn summary(inbox: &Path, now: Millis) -> std::io::Result<InboxSummary> {
    Ok(InboxSummary {
        rejected: rejected_names(inbox)?.len(),
        orphans: orphans(inbox, now)?,
        unclaimed: unclaimed(inbox)?,
    })
}

/// Moves the refused file `name` back from `rejected/` into the inbox, with its sidecar, and
/// removes their error files; the daemon's next scan (the move starts one) tries the pair
/// again. Answers the files moved. Refused, changing nothing: a name that is not a plain file
/// name (`../x`, `a/b`, a hidden name, an error file), one `rejected/` does not hold, one that
/// is not a regular file, one whose name is taken in the inbox.
pub fn retry(inbox: &Path, name: &str) -> carnet_store::Result<Vec<String>> {
    use carnet_store::Error;
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\0'])
        || name.ends_with(ERROR_SUFFIX)
    {
        return Err(Error::Invalid(format!(
            "'{name}' is not the name of a refused file: give a file name as `carnet inbox list` shows it (no folder)"
        )));
    }
    let rejected = inbox.join("rejected");
    let files: Vec<String> = [name.to_string(), format!("{name}{SIDECAR_SUFFIX}")]
        .into_iter()
        .filter(|f| fs::symlink_metadata(rejected.join(f)).is_ok())
        .collect();
    if files.is_empty() {
        return Err(Error::NotFound(format!(
            "no refused file named '{name}' in {}: `carnet inbox list` shows them",
            rejected.display()
        )));
    }
    for f in &files {
        if !fs::symlink_metadata(rejected.join(f)).is_ok_and(|m| m.is_file()) {
            return Err(Error::Invalid(format!(
                "{f} is not a regular file (a link?): drop a copy of the document itself into the inbox instead"
            )));
        }
        if fs::symlink_metadata(inbox.join(f)).is_ok() {
            return Err(Error::Invalid(format!(
                "{f} is in the inbox already: let the daemon take it (or move it away) first"
            )));
        }
    }
    // The document first: alone in the inbox, it waits for its sidecar.
    for f in &files {
        fs::rename(rejected.join(f), inbox.join(f))?;
    }
    for f in &files {
        match fs::remove_file(rejected.join(format!("{f}{ERROR_SUFFIX}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(files)
}

/// Moves both files into `inbox/sub/`, never over an existing file, with the refusal written
/// beside them; answers the error file's text.
fn move_pair(
    inbox: &Path,
    sub: &str,
    doc: &Path,
    sidecar: &Path,
    refusal: &Refusal,
) -> std::io::Result<String> {
    let dir = inbox.join(sub);
    carnet_store::files::private_dir(&dir)?;
    let doc_target = free_name(&dir, doc)?;
    let sidecar_target = PathBuf::from(format!("{}{SIDECAR_SUFFIX}", doc_target.display()));
    let text = refusal.text(&file_name(&doc_target));
    carnet_store::files::write_private(
        Path::new(&format!("{}{ERROR_SUFFIX}", doc_target.display())),
        text.as_bytes(),
    )?;
    fs::rename(sidecar, &sidecar_target)?;
    fs::rename(doc, &doc_target)?;
    // Kept with patient data in them: the owner's only, whatever mode the producer gave.
    for moved in [&sidecar_target, &doc_target] {
        fs::set_permissions(
            moved,
            fs::Permissions::from_mode(carnet_store::files::FILE_MODE),
        )?;
    }
    Ok(text)
}

/// The last component of `path`, as text.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Moves one file that can never be part of a pair into `inbox/rejected/`, under a UTF-8 name
/// and never over an existing file, with the refusal beside it; answers the error file's text.
/// A link is moved as a link: what it points to is never read.
fn reject_alone(inbox: &Path, file: &Path, refusal: &Refusal) -> std::io::Result<String> {
    let dir = inbox.join("rejected");
    carnet_store::files::private_dir(&dir)?;
    let target = free_name(&dir, file)?;
    let text = refusal.text(&file_name(&target));
    carnet_store::files::write_private(
        Path::new(&format!("{}{ERROR_SUFFIX}", target.display())),
        text.as_bytes(),
    )?;
    fs::rename(file, &target)?;
    if fs::symlink_metadata(&target)?.is_file() {
        fs::set_permissions(
            &target,
            fs::Permissions::from_mode(carnet_store::files::FILE_MODE),
        )?;
    }
    Ok(text)
}

/// `dir/NAME`, or `dir/NAME.1`, `.2`… if taken (`BASE.1.fhir.json` for `BASE.fhir.json`).
fn free_name(dir: &Path, file: &Path) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("a file without a name"))?
        .to_string_lossy()
        .into_owned();
    let mut candidate = dir.join(&name);
    let mut n = 1;
    // (`symlink_metadata`: a dangling link is a name taken too.)
    let taken = |p: &Path| fs::symlink_metadata(p).is_ok();
    while taken(&candidate)
        || taken(&PathBuf::from(format!(
            "{}{SIDECAR_SUFFIX}",
            candidate.display()
        )))
    {
        // A FHIR file keeps its suffix, so that it is one again once retried.
        candidate = dir.join(match name.strip_suffix(FHIR_SUFFIX) {
            Some(base) if is_fhir(&name) => format!("{base}.{n}{FHIR_SUFFIX}"),
            _ => format!("{name}.{n}"),
        });
        n += 1;
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestDisk;
    use carnet_store::model::{GrantBasis, GrantState, Profession, Professional};
    use carnet_store::replica::{InitOptions, KeySource, Role};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    const DOCTOR: &str = "10000000001";

    fn ins() -> Ins {
        Ins::from_body("2840575123456").expect("ins")
    }

    fn clock() -> carnet_store::replica::Clock {
        Arc::new(|| 1_700_000_000_000)
    }

    fn host_options() -> InitOptions {
        InitOptions {
            role: Role::Host,
            name: "h".into(),
            site_id: None,
            key: KeySource::File,
            host_key: None,
            lease_hours: None,
        }
    }

    fn replica(dir: &Path) -> Replica {
        let r = Replica::init(dir, host_options(), clock()).expect("init");
        with_a_dossier(r)
    }

    /// Registers the doctor and creates the dossier, with the doctor granted.
    fn with_a_dossier(r: Replica) -> Replica {
        let rpps = Rpps::parse(DOCTOR).expect("rpps");
        r.add_professional(&Professional {
            rpps: rpps.clone(),
            profession: Profession::Medecin,
            specialty: None,
            name: None,
        })
        .expect("pro");
        crate::testkit::as_host(&r)
            .authority()
            .create_dossier(crate::testkit::new_dossier(&ins()))
            .expect("dossier");
        crate::testkit::as_host(&r)
            .authority()
            .set_grant(
                &ins(),
                &rpps,
                GrantState::Active,
                GrantBasis::Treating,
                None,
            )
            .expect("grant");
        r
    }

    fn sidecar(uid: &str) -> String {
        format!(
            r#"{{"ins": "{}", "author_rpps": "{DOCTOR}", "class": "10", "type": "11488-4",
                "title": "CR de consultation", "unique_id": "{uid}", "format": "text/plain",
                "service_start": "2026-11-20"}}"#,
            ins().matricule()
        )
    }

    fn drop_pair(inbox: &Path, name: &str, body: &str, sidecar: &str) {
        fs::write(inbox.join(name), body).expect("doc");
        fs::write(inbox.join(format!("{name}{SIDECAR_SUFFIX}")), sidecar).expect("sidecar");
    }

    fn documents(r: &Replica) -> usize {
        r.list_documents(
            &Actor::Professional(Rpps::parse(DOCTOR).expect("rpps")),
            &ins(),
        )
        .expect("list")
        .len()
    }

    #[test]
    fn a_pair_the_replica_cannot_store_for_a_full_disk_waits_in_place_and_is_stored_later() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let (disk, journal) = (TestDisk::default(), TestDisk::default());
        let r = with_a_dossier(
            Replica::init_with_backend(
                data.path(),
                disk.clone(),
                journal.clone(),
                host_options(),
                clock(),
            )
            .expect("init"),
        );
        disk.full.store(true, std::sync::atomic::Ordering::SeqCst);
        drop_pair(
            inbox.path(),
            "cr.txt",
            "synthetic",
            &sidecar("urn:test:full"),
        );
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.waiting.len(), 1, "{report:?}");
        assert!(report.rejected.is_empty() && report.stored.is_empty());
        assert!(inbox.path().join("cr.txt").exists(), "left in place");
        assert!(!inbox.path().join("rejected").exists(), "not rejected");
        // Space freed, the daemon started again: the pair is stored.
        drop(r);
        disk.full.store(false, std::sync::atomic::Ordering::SeqCst);
        let r = Replica::open_with_backend(
            data.path(),
            disk.clone(),
            journal.clone(),
            &KeySource::File,
            clock(),
        )
        .expect("open");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.stored.len(), 1, "{report:?}");
        assert_eq!(documents(&r), 1);
    }

    /// The names in `dir`, sorted (none if it is missing).
    fn listing(dir: &Path) -> Vec<String> {
        file_names(dir).expect("list")
    }

    fn receipt(inbox: &Path, name: &str) -> Receipt {
        read_receipt(&inbox.join("done").join(format!("{name}{RECEIPT_SUFFIX}")))
            .expect("a receipt")
    }

    /// Every byte under `dir`, as text, for looking for what must not be there.
    fn everything_under(dir: &Path) -> String {
        let mut all = String::new();
        for name in listing(dir) {
            all += &name;
            all += &String::from_utf8_lossy(&fs::read(dir.join(&name)).unwrap_or_default());
        }
        all
    }

    #[test]
    fn a_pair_is_stored_once_even_if_dropped_twice_and_done_keeps_only_receipts() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(
            inbox.path(),
            "cr.txt",
            "synthetic report",
            &sidecar("urn:test:1"),
        );
        let first = process(&r, inbox.path()).expect("scan");
        assert_eq!(first.stored.len(), 1, "{first:?}");
        let (_, id) = &first.stored[0];
        assert_eq!(
            listing(&inbox.path().join("done")),
            vec![format!("cr.txt{RECEIPT_SUFFIX}")],
            "only the receipt stays"
        );
        assert!(listing(inbox.path()).is_empty(), "the pair left the inbox");
        let first_receipt = receipt(inbox.path(), "cr.txt");
        assert_eq!(
            first_receipt,
            Receipt {
                format: 1,
                document: id.to_string(),
                documents: Vec::new(),
                at: carnet_store::time::format_rfc3339(1_700_000_000_000),
                already_stored: false,
            }
        );
        let done = everything_under(&inbox.path().join("done"));
        for clear in [
            "synthetic report",
            "CR de consultation",
            ins().matricule(),
            "urn:test:1",
        ] {
            assert!(!done.contains(clear), "{clear} in clear in done/: {done}");
        }
        assert_eq!(
            fs::metadata(inbox.path().join(format!("done/cr.txt{RECEIPT_SUFFIX}")))
                .expect("receipt")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let read = r
            .read_document(
                &Actor::Professional(Rpps::parse(DOCTOR).expect("rpps")),
                id,
                AccessMode::Normal,
                None,
            )
            .expect("read");
        assert_eq!(&read.body[..], b"synthetic report");

        drop_pair(
            inbox.path(),
            "cr.txt",
            "synthetic report",
            &sidecar("urn:test:1"),
        );
        let second = process(&r, inbox.path()).expect("scan");
        assert_eq!(second.duplicates, vec!["cr.txt".to_string()]);
        assert!(second.stored.is_empty());
        assert_eq!(documents(&r), 1);
        assert!(listing(inbox.path()).is_empty());
        assert_eq!(
            receipt(inbox.path(), "cr.txt"),
            Receipt {
                already_stored: true,
                ..first_receipt
            },
            "the receipt says it was there already"
        );
    }

    /// A crash after the document was stored and before its receipt: the pair is found again,
    /// known as stored, and finished; nothing is stored twice.
    #[test]
    fn a_pair_found_again_after_a_crash_is_finished_not_stored_twice() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        let text = sidecar("urn:test:crash");
        drop_pair(inbox.path(), "cr.txt", "synthetic", &text);
        let mut filing = read_sidecar(text.as_bytes()).expect("sidecar");
        filing.document.body = b"synthetic".to_vec();
        let id = file(&r, filing).expect("stored before the crash");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.duplicates, vec!["cr.txt".to_string()], "{report:?}");
        assert_eq!(documents(&r), 1);
        assert!(listing(inbox.path()).is_empty());
        let receipt = receipt(inbox.path(), "cr.txt");
        assert_eq!(receipt.document, id.to_string());
        assert!(receipt.already_stored);
    }

    /// A crash between the two removals leaves the sidecar alone: its receipt names the
    /// document the replica holds for it, so the next scan removes it. A lone sidecar whose
    /// receipt names another document (a new pair under the same name) waits for its document.
    #[test]
    fn a_sidecar_a_crash_left_alone_is_recognised_by_its_receipt_and_removed() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(inbox.path(), "cr.txt", "synthetic", &sidecar("urn:test:a"));
        assert_eq!(process(&r, inbox.path()).expect("scan").stored.len(), 1);
        let sidecar_name = format!("cr.txt{SIDECAR_SUFFIX}");
        fs::write(inbox.path().join(&sidecar_name), sidecar("urn:test:a")).expect("left");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.tidied, vec![sidecar_name.clone()], "{report:?}");
        assert!(listing(inbox.path()).is_empty());

        // Another pair under the same name, its sidecar first: not a leftover.
        fs::write(inbox.path().join(&sidecar_name), sidecar("urn:test:b")).expect("new");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report, InboxReport::default());
        assert_eq!(listing(inbox.path()), vec![sidecar_name]);
        fs::write(inbox.path().join("cr.txt"), "another synthetic").expect("doc");
        assert_eq!(process(&r, inbox.path()).expect("scan").stored.len(), 1);
        assert_eq!(documents(&r), 2);
    }

    /// Older versions moved stored pairs whole into `done/`: each whose document the replica
    /// holds is replaced by a receipt; one it does not hold stays, and is reported.
    #[test]
    fn clear_pairs_an_older_version_left_in_done_become_receipts() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        let done = inbox.path().join("done");
        fs::create_dir(&done).expect("done");
        for (name, uid) in [("old.txt", "urn:test:old"), ("old.txt.1", "urn:test:old2")] {
            let text = sidecar(uid);
            drop_pair(&done, name, "synthetic old", &text);
            let mut filing = read_sidecar(text.as_bytes()).expect("sidecar");
            filing.document.body = b"synthetic old".to_vec();
            file(&r, filing).expect("stored by the older version");
        }
        drop_pair(
            &done,
            "gone.txt",
            "synthetic gone",
            &sidecar("urn:test:gone"),
        );
        assert_eq!(
            process(&r, inbox.path()).expect("scan"),
            InboxReport::default(),
            "a scan reads the inbox only"
        );
        let tidied = tidy(&r, inbox.path()).expect("tidy");
        let mut finished = tidied.finished.clone();
        finished.sort();
        assert_eq!(finished, vec!["old.txt", "old.txt.1"], "{tidied:?}");
        assert_eq!(tidied.receipts_removed, 0);
        assert_eq!(documents(&r), 2, "nothing stored again");
        assert!(receipt(inbox.path(), "old.txt.1").already_stored);
        let left = state(inbox.path(), 0).expect("state").unclaimed;
        assert_eq!(
            left,
            vec!["gone.txt".to_string(), format!("gone.txt{SIDECAR_SUFFIX}")]
        );
        assert_eq!(
            listing(&done).len(),
            4,
            "two receipts and the pair not found"
        );
    }

    fn error_file(inbox: &Path, name: &str) -> String {
        fs::read_to_string(inbox.join(format!("rejected/{name}{ERROR_SUFFIX}"))).expect("reason")
    }

    /// The fix line of a refusal.
    fn fix(inbox: &Path, name: &str) -> String {
        let text = error_file(inbox, name);
        text.split_once("\nfix: ")
            .map(|(_, fix)| fix.to_string())
            .unwrap_or_else(|| panic!("no fix in {text:?}"))
    }

    #[test]
    fn a_bad_sidecar_is_rejected_with_its_reason_and_the_fix() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(inbox.path(), "a.txt", "x", "{ not json");
        let bad_ins = sidecar("urn:test:2").replace(ins().matricule(), "284057512345600");
        drop_pair(inbox.path(), "b b.txt", "x", &bad_ins);
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.rejected.len(), 2, "{report:?}");
        assert!(error_file(inbox.path(), "a.txt").starts_with("the sidecar is not valid"));
        assert!(error_file(inbox.path(), "b b.txt").contains("INS"));
        for (name, word) in [("a.txt", "a.txt"), ("b b.txt", "'b b.txt'")] {
            let fix = fix(inbox.path(), name);
            assert!(
                fix.contains(&format!("rejected/{name}{SIDECAR_SUFFIX}"))
                    && fix.contains(&format!("`carnet inbox retry {word}`")),
                "{fix}"
            );
        }
        // Kept with patient data in them: the owner's only.
        let mode = |p: PathBuf| fs::metadata(p).expect("mode").permissions().mode() & 0o777;
        assert_eq!(mode(inbox.path().join("rejected")), 0o700);
        for f in ["a.txt", "a.txt.carnet.json", "a.txt.error.txt"] {
            assert_eq!(mode(inbox.path().join("rejected").join(f)), 0o600, "{f}");
        }
        assert_eq!(documents(&r), 0);
        // The fix applies: the sidecar corrected in rejected/, then retried.
        fs::write(
            inbox.path().join(format!("rejected/a.txt{SIDECAR_SUFFIX}")),
            sidecar("urn:test:fixed"),
        )
        .expect("corrected");
        retry(inbox.path(), "a.txt").expect("retry");
        assert_eq!(process(&r, inbox.path()).expect("scan").stored.len(), 1);
    }

    /// A minimal FHIR DocumentReference by DOCTOR, its body inline.
    fn fhir_doc(uid: &str, ins_system: &str) -> String {
        format!(
            r#"{{"resourceType": "DocumentReference", "status": "current",
                "masterIdentifier": {{"value": "{uid}"}},
                "subject": {{"identifier": {{"system": "{ins_system}", "value": "{}"}}}},
                "author": [{{"identifier": {{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "8{DOCTOR}"}}}}],
                "category": [{{"coding": [{{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": "10"}}]}}],
                "type": {{"coding": [{{"system": "http://loinc.org", "code": "11488-4"}}]}},
                "securityLabel": [{{"coding": [{{"system": "urn:oid:1.2.250.1.213.1.1.4.13", "code": "MASQUE_PS"}}]}}],
                "content": [{{"attachment": {{"contentType": "text/plain", "title": "CR", "data": "eHl6"}}}}]}}"#,
            ins().matricule()
        )
    }

    /// `NAME.fhir.json` is an item on its own: filed with its flags, leaving a receipt; dropped
    /// again, recognised; one that cannot be mapped is refused with the field, the fix naming
    /// the file; a sidecar given to one is refused.
    #[test]
    fn a_fhir_file_alone_is_filed_and_one_that_cannot_be_mapped_is_refused() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        let good = fhir_doc("urn:test:fhir-1", "urn:oid:1.2.250.1.213.1.4.10");
        fs::write(inbox.path().join("cr.fhir.json"), &good).expect("write");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.stored.len(), 1, "{report:?}");
        let id = report.stored[0].1;
        assert_eq!(
            receipt(inbox.path(), "cr.fhir.json").document,
            id.to_string()
        );
        assert!(listing(inbox.path()).is_empty(), "the file left the inbox");
        let meta = r
            .list_documents(
                &Actor::Professional(Rpps::parse(DOCTOR).expect("rpps")),
                &ins(),
            )
            .expect("list");
        assert_eq!(meta.len(), 1);
        assert!(meta[0].state().flags.masque_ps, "the flag is applied");
        assert_eq!(meta[0].facts.unique_id, "urn:test:fhir-1");
        // The same file again: recognised, not stored twice.
        fs::write(inbox.path().join("again.fhir.json"), &good).expect("write");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.duplicates, vec!["again.fhir.json".to_string()]);
        assert_eq!(documents(&r), 1);
        // No INS: refused, saying which field and why; the fix is about the file.
        let bad = fhir_doc("urn:test:fhir-2", "urn:oid:1.2.3");
        fs::write(inbox.path().join("bad.fhir.json"), &bad).expect("write");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        let error = error_file(inbox.path(), "bad.fhir.json");
        assert!(
            error.starts_with("DocumentReference.subject: no INS identifier"),
            "{error}"
        );
        assert!(
            fix(inbox.path(), "bad.fhir.json").contains("correct the file (rejected/bad.fhir.json"),
            "{error}"
        );
        assert_eq!(documents(&r), 1);
        // Refused again under the same name: kept beside the first, still a FHIR file.
        fs::write(inbox.path().join("bad.fhir.json"), &bad).expect("write");
        process(&r, inbox.path()).expect("scan");
        assert!(error_file(inbox.path(), "bad.1.fhir.json").contains("subject"));
        // A sidecar for a FHIR file is refused; the file itself is filed.
        let other = fhir_doc("urn:test:fhir-3", "urn:oid:1.2.250.1.213.1.4.10");
        fs::write(inbox.path().join("c.fhir.json"), &other).expect("write");
        fs::write(
            inbox.path().join(format!("c.fhir.json{SIDECAR_SUFFIX}")),
            sidecar("urn:test:side"),
        )
        .expect("write");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.stored.len(), 1, "{report:?}");
        assert!(
            error_file(inbox.path(), &format!("c.fhir.json{SIDECAR_SUFFIX}"))
                .contains("a sidecar for a FHIR file"),
        );
        assert_eq!(documents(&r), 2);
        // Never reported as waiting for a sidecar.
        fs::write(inbox.path().join("late.fhir.json.part"), "").expect("write");
        assert!(orphans(inbox.path(), i64::MAX).expect("orphans").is_empty());
    }

    /// Each refusal of the store names the fix that applies, and where the fix is a command,
    /// doing it and retrying stores the pair.
    #[test]
    fn each_refusal_of_the_store_names_a_fix_that_works() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        let stranger = "19999999999";
        drop_pair(
            inbox.path(),
            "unregistered.txt",
            "x",
            &sidecar("urn:test:3").replace(DOCTOR, stranger),
        );
        let other = Ins::from_body("1840575123456").expect("ins");
        drop_pair(
            inbox.path(),
            "no-dossier.txt",
            "x",
            &sidecar("urn:test:4").replace(ins().matricule(), other.matricule()),
        );
        assert_eq!(process(&r, inbox.path()).expect("scan").rejected.len(), 2);

        let unregistered = fix(inbox.path(), "unregistered.txt");
        assert!(
            unregistered.contains(&format!("`carnet pro add --rpps {stranger} --profession"))
                && unregistered.ends_with("then `carnet inbox retry unregistered.txt`\n"),
            "{unregistered}"
        );
        r.add_professional(&Professional {
            rpps: Rpps::parse(stranger).expect("rpps"),
            profession: Profession::Medecin,
            specialty: None,
            name: None,
        })
        .expect("pro add");
        retry(inbox.path(), "unregistered.txt").expect("retry");

        let no_dossier = fix(inbox.path(), "no-dossier.txt");
        assert!(
            error_file(inbox.path(), "no-dossier.txt")
                .starts_with("the host holds no dossier for the sidecar's INS")
                && no_dossier.contains("`carnet dossier create --ins INS")
                && !no_dossier.contains("authority import"),
            "{no_dossier}"
        );
        crate::testkit::as_host(&r)
            .authority()
            .create_dossier(crate::testkit::new_dossier(&other))
            .expect("dossier create");
        retry(inbox.path(), "no-dossier.txt").expect("retry");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.stored.len(), 2, "{report:?}");
        assert!(listing(&inbox.path().join("rejected")).is_empty());

        // A blocked author, then a closed dossier: retrying as it is cannot help, the sidecar
        // needs correcting.
        crate::testkit::as_host(&r)
            .authority()
            .set_grant(
                &ins(),
                &Rpps::parse(stranger).expect("rpps"),
                GrantState::Blocked,
                GrantBasis::Consent,
                None,
            )
            .expect("block");
        drop_pair(
            inbox.path(),
            "blocked.txt",
            "x",
            &sidecar("urn:test:5").replace(DOCTOR, stranger),
        );
        crate::testkit::as_host(&r)
            .authority()
            .close_dossier(&other, "synthetic closure", false)
            .expect("close");
        drop_pair(
            inbox.path(),
            "closed.txt",
            "x",
            &sidecar("urn:test:6").replace(ins().matricule(), other.matricule()),
        );
        assert_eq!(process(&r, inbox.path()).expect("scan").rejected.len(), 2);
        for (name, rule, words) in [
            ("blocked.txt", "rule 3", "blocked this professional"),
            ("closed.txt", "rule 1", "not active (closed)"),
        ] {
            let text = error_file(inbox.path(), name);
            assert!(text.contains(rule), "{text}");
            let fix = fix(inbox.path(), name);
            assert!(
                fix.contains(words)
                    && fix.contains(&format!("rejected/{name}{SIDECAR_SUFFIX}"))
                    && fix.contains(&format!("`carnet inbox retry {name}`")),
                "{fix}"
            );
        }
    }

    /// At a site, a dossier it does not hold is asked of the host (`carnet pin`), or opened
    /// there; `carnet authority import` (a bundle-provisioned site's) is not the fix.
    #[test]
    fn at_a_site_a_dossier_it_does_not_hold_is_asked_of_the_host() {
        let (_tmp, _host, site, the_ins) = crate::testkit::host_and_site();
        let inbox = tempfile::tempdir().expect("tmp");
        let other = Ins::from_body("1840575123456").expect("ins");
        drop_pair(
            inbox.path(),
            "cr.txt",
            "x",
            &sidecar("urn:test:site").replace(the_ins.matricule(), other.matricule()),
        );
        assert_eq!(
            process(&site, inbox.path()).expect("scan").rejected.len(),
            1
        );
        let text = error_file(inbox.path(), "cr.txt");
        assert!(
            text.starts_with("this site holds no dossier for the sidecar's INS"),
            "{text}"
        );
        let fix = fix(inbox.path(), "cr.txt");
        assert!(
            fix.contains("`carnet pin INS`")
                && fix.contains("`carnet dossier create --ins INS … --as RPPS`")
                && fix.contains("`carnet inbox retry cr.txt`")
                && !fix.contains("authority import"),
            "{fix}"
        );
    }

    #[test]
    fn what_can_never_pair_is_rejected_with_its_reason_and_nothing_is_followed() {
        use std::os::unix::ffi::OsStrExt;
        let (data, inbox, outside) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        let target = outside.path().join("secret.txt");
        fs::write(&target, "not for the inbox (synthetic)").expect("target");
        std::os::unix::fs::symlink(&target, inbox.path().join("linked.txt")).expect("link");
        fs::write(
            inbox.path().join(format!("linked.txt{SIDECAR_SUFFIX}")),
            sidecar("urn:test:7"),
        )
        .expect("sc");
        let raw = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        fs::write(inbox.path().join(raw), "x").expect("non-UTF-8 name");
        fs::write(
            inbox
                .path()
                .join(format!("g.txt{SIDECAR_SUFFIX}{SIDECAR_SUFFIX}")),
            "{}",
        )
        .expect("sidecar of a sidecar");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.rejected.len(), 4, "{report:?}");
        assert!(report.stored.is_empty());
        let left: Vec<_> = fs::read_dir(inbox.path())
            .expect("inbox")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .collect();
        assert!(left.is_empty(), "nothing stays behind: {left:?}");
        let errors = fs::read_dir(inbox.path().join("rejected"))
            .expect("rejected")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".error.txt"))
            .count();
        assert_eq!(errors, 4, "each with its reason");
        for name in listing(&inbox.path().join("rejected")) {
            if let Some(file) = name.strip_suffix(ERROR_SUFFIX) {
                let fix = fix(inbox.path(), file);
                assert!(
                    !fix.contains("carnet inbox retry"),
                    "retrying cannot help: {fix}"
                );
            }
        }
        assert_eq!(
            fs::read_to_string(&target).expect("target"),
            "not for the inbox (synthetic)"
        );
        assert!(
            fs::symlink_metadata(inbox.path().join("rejected/linked.txt"))
                .expect("moved")
                .file_type()
                .is_symlink(),
            "the link moved as a link"
        );
        assert_eq!(documents(&r), 0);
        // A second scan finds nothing to do.
        assert_eq!(
            process(&r, inbox.path()).expect("scan"),
            InboxReport::default()
        );
    }

    #[test]
    fn temporary_names_and_half_pairs_wait() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        fs::write(inbox.path().join("d.txt.part"), "x").expect("part");
        fs::write(
            inbox.path().join(format!("d.txt.part{SIDECAR_SUFFIX}")),
            sidecar("urn:test:4"),
        )
        .expect("sc");
        fs::write(
            inbox.path().join(format!("e.txt{SIDECAR_SUFFIX}")),
            sidecar("urn:test:5"),
        )
        .expect("sc");
        fs::write(
            inbox.path().join(format!(".f.txt{SIDECAR_SUFFIX}")),
            sidecar("urn:test:6"),
        )
        .expect("sc");
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report, InboxReport::default());
        assert!(inbox.path().join("d.txt.part").exists());
        // The document arrives (renamed into place): the pair is complete now.
        fs::write(inbox.path().join("e.txt"), "late document").expect("doc");
        assert_eq!(process(&r, inbox.path()).expect("scan").stored.len(), 1);
    }

    /// Receipts go after `RECEIPT_KEEP_MS` by the replica's clock (here fixed), and not before.
    #[test]
    fn receipts_older_than_the_keeping_time_are_removed() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(inbox.path(), "a.txt", "x", &sidecar("urn:test:old"));
        drop_pair(inbox.path(), "b.txt", "x", &sidecar("urn:test:new"));
        assert_eq!(process(&r, inbox.path()).expect("scan").stored.len(), 2);
        let now = r.now();
        let done = inbox.path().join("done");
        // Two temporaries a crash left: an old one, and one of a scan under way.
        for name in ["c.txt", "d.txt"] {
            fs::write(done.join(format!(".{name}{RECEIPT_SUFFIX}.tmp")), "{}").expect("tmp");
        }
        let written_ago = |file: String, ms: Millis| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis((now - ms) as u64);
            fs::File::options()
                .write(true)
                .open(done.join(file))
                .expect("receipt")
                .set_modified(at)
                .expect("mtime");
        };
        written_ago(format!("a.txt{RECEIPT_SUFFIX}"), RECEIPT_KEEP_MS);
        written_ago(format!("b.txt{RECEIPT_SUFFIX}"), RECEIPT_KEEP_MS - 1);
        written_ago(format!(".c.txt{RECEIPT_SUFFIX}.tmp"), TEMPORARY_KEEP_MS);
        written_ago(format!(".d.txt{RECEIPT_SUFFIX}.tmp"), TEMPORARY_KEEP_MS - 1);
        let tidied = tidy(&r, inbox.path()).expect("tidy");
        assert_eq!(tidied.receipts_removed, 1, "{tidied:?}");
        assert_eq!(tidied.temporaries_removed, 1, "{tidied:?}");
        assert_eq!(
            listing(&done),
            vec![
                format!(".d.txt{RECEIPT_SUFFIX}.tmp"),
                format!("b.txt{RECEIPT_SUFFIX}")
            ]
        );
    }

    #[test]
    fn retry_puts_a_refused_pair_back_and_refuses_what_is_not_one() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(inbox.path(), "a.txt", "x", "{ not json");
        assert_eq!(process(&r, inbox.path()).expect("scan").rejected.len(), 1);
        let rejected = inbox.path().join("rejected");
        let before = listing(&rejected);
        fs::write(inbox.path().join("b.txt"), "in the inbox").expect("b");
        fs::write(rejected.join("b.txt"), "refused").expect("b");
        fs::write(rejected.join(format!("b.txt{ERROR_SUFFIX}")), "why\n").expect("b");
        for (name, words) in [
            ("../a.txt", "not the name of a refused file"),
            ("rejected/a.txt", "not the name of a refused file"),
            ("..", "not the name of a refused file"),
            ("", "not the name of a refused file"),
            (".a.txt", "not the name of a refused file"),
            ("a.txt.error.txt", "not the name of a refused file"),
            ("c.txt", "no refused file named 'c.txt'"),
            ("b.txt", "b.txt is in the inbox already"),
        ] {
            let e = retry(inbox.path(), name).expect_err(name);
            assert!(e.to_string().contains(words), "{name}: {e}");
        }
        assert_eq!(
            listing(&rejected).len(),
            before.len() + 2,
            "nothing moved by a refusal"
        );
        fs::remove_file(inbox.path().join("b.txt")).expect("rm");
        assert_eq!(
            retry(inbox.path(), "a.txt").expect("retry"),
            vec!["a.txt".to_string(), format!("a.txt{SIDECAR_SUFFIX}")]
        );
        assert_eq!(
            listing(inbox.path()),
            vec!["a.txt".to_string(), format!("a.txt{SIDECAR_SUFFIX}")]
        );
        assert_eq!(
            state(inbox.path(), 0)
                .expect("state")
                .rejected
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            vec!["b.txt"],
            "its error file went with it"
        );
        // The link of a refused link stays where it is.
        let target = inbox.path().join("elsewhere.txt");
        std::os::unix::fs::symlink(&target, rejected.join("l.txt")).expect("link");
        let e = retry(inbox.path(), "l.txt").expect_err("a link");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn state_lists_refusals_with_their_fix_and_files_alone_past_the_grace_period() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(inbox.path(), "a.txt", "x", "{ not json");
        process(&r, inbox.path()).expect("scan");
        // Older versions wrote the reason alone.
        fs::write(inbox.path().join("rejected/old.txt"), "x").expect("old");
        fs::write(
            inbox.path().join(format!("rejected/old.txt{ERROR_SUFFIX}")),
            "an old reason\n",
        )
        .expect("old");
        let at: Millis = 1_800_000_000_000;
        let written = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at as u64);
        let alone = |name: &str| {
            let f = fs::File::create(inbox.path().join(name)).expect("file");
            f.set_modified(written).expect("mtime");
        };
        alone("doc.pdf");
        alone(&format!("lone.pdf{SIDECAR_SUFFIX}"));
        alone("half.pdf.part");
        alone("pair.pdf");
        alone(&format!("pair.pdf{SIDECAR_SUFFIX}"));

        let just_before = state(inbox.path(), at + ORPHAN_AFTER_MS - 1).expect("state");
        assert!(just_before.orphans.is_empty(), "{just_before:?}");
        let after = state(inbox.path(), at + ORPHAN_AFTER_MS).expect("state");
        assert_eq!(
            after.orphans,
            vec![
                Orphan {
                    name: "doc.pdf".into(),
                    since: at,
                    missing: "sidecar".into()
                },
                Orphan {
                    name: format!("lone.pdf{SIDECAR_SUFFIX}"),
                    since: at,
                    missing: "document".into()
                },
            ]
        );
        assert_eq!(after.rejected.len(), 2, "{after:?}");
        let a = &after.rejected[0];
        assert_eq!((a.name.as_str(), a.sidecar), ("a.txt", true));
        assert!(a.reason.starts_with("the sidecar is not valid"), "{a:?}");
        assert!(
            a.fix
                .as_deref()
                .is_some_and(|f| f.ends_with("`carnet inbox retry a.txt`")),
            "{a:?}"
        );
        let old = &after.rejected[1];
        assert_eq!(
            (old.name.as_str(), old.reason.as_str(), old.fix.as_deref()),
            ("old.txt", "an old reason", None)
        );
        assert_eq!(
            summary(inbox.path(), at + ORPHAN_AFTER_MS).expect("summary"),
            InboxSummary {
                rejected: 2,
                orphans: after.orphans.clone(),
                unclaimed: Vec::new(),
            }
        );
    }

    #[test]
    fn only_events_that_may_complete_a_pair_start_a_scan() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, EventKind, Flag, MetadataKind,
            ModifyKind, RemoveKind, RenameMode,
        };
        let at = |kind: EventKind, names: &[&str]| {
            names.iter().fold(notify::Event::new(kind), |e, n| {
                e.add_path(PathBuf::from("/inbox").join(n))
            })
        };
        let starts = [
            at(EventKind::Create(CreateKind::File), &["a.pdf"]),
            at(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                &["a.pdf"],
            ),
            at(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["a.pdf.part", "a.pdf"],
            ),
            at(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["a.pdf.carnet.json"],
            ),
            at(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["a.pdf"],
            ),
            notify::Event::new(EventKind::Other).set_flag(Flag::Rescan),
        ];
        for e in &starts {
            assert!(starts_scan(e), "{e:?} should start a scan");
        }
        let ignored = [
            // What a scan itself does: open and read the folder and the files, move pairs out,
            // create done/ and rejected/.
            at(EventKind::Access(AccessKind::Open(AccessMode::Any)), &[]),
            at(EventKind::Access(AccessKind::Close(AccessMode::Read)), &[]),
            at(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                &["a.pdf"],
            ),
            at(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &["a.pdf"],
            ),
            at(EventKind::Create(CreateKind::Folder), &["done"]),
            // Nothing that completes a pair either.
            at(EventKind::Remove(RemoveKind::File), &["a.pdf"]),
            at(
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                &["a.pdf"],
            ),
            // A producer still writing under a temporary name.
            at(EventKind::Create(CreateKind::File), &["a.pdf.part"]),
            at(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &[".a.pdf.carnet.json"],
            ),
            at(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["a.pdf.tmp"],
            ),
        ];
        for e in &ignored {
            assert!(!starts_scan(e), "{e:?} should not start a scan");
        }
    }

    /// The feedback loop of issue 19: a scan opened the folder, the watcher reported the open,
    /// and that started the next scan. Here the kernel's own events for two scans (one that
    /// stores a pair, rejects one and creates done/ and rejected/, one of an idle inbox) are
    /// collected, up to a marker made after each scan (events arrive in order), and none may
    /// start a scan.
    #[test]
    fn a_scan_causes_no_event_that_starts_another() {
        use notify::event::{CreateKind, EventKind};
        use std::time::{Duration, Instant};
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(
            inbox.path(),
            "cr.txt",
            "synthetic report",
            &sidecar("urn:test:7"),
        );
        drop_pair(inbox.path(), "bad.txt", "x", "{ not json");
        fs::write(
            inbox.path().join("late.txt.carnet.json"),
            sidecar("urn:test:8"),
        )
        .expect("sc");
        fs::write(inbox.path().join("big.pdf.part"), "half").expect("part");
        // The daemon's watch, with every event kept rather than filtered.
        let (tx, events) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            let _ = tx.send(e);
        })
        .expect("watcher");
        notify::Watcher::watch(
            &mut watcher,
            inbox.path(),
            notify::RecursiveMode::NonRecursive,
        )
        .expect("watch");
        let deadline = Instant::now() + Duration::from_secs(30);
        for (scan, marker) in [("first", "marker-1"), ("idle", "marker-2")] {
            let report = process(&r, inbox.path()).expect("scan");
            if scan == "first" {
                assert_eq!((report.stored.len(), report.rejected.len()), (1, 1));
            } else {
                assert_eq!(report, InboxReport::default());
            }
            // A folder: its creation starts no scan, and marks the end of this scan's events.
            fs::create_dir(inbox.path().join(marker)).expect("marker");
            let mut seen = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = events
                    .recv_timeout(left)
                    .expect("the marker's event in time")
                    .expect("an event");
                if event.kind == EventKind::Create(CreateKind::Folder)
                    && event.paths.iter().any(|p| p.ends_with(marker))
                {
                    break;
                }
                seen.push(event);
            }
            // What looped: the scan's own access to the folder is reported.
            assert!(
                seen.iter().any(|e| matches!(e.kind, EventKind::Access(_))),
                "the {scan} scan's events: {seen:?}"
            );
            let starting: Vec<_> = seen.iter().filter(|e| starts_scan(e)).collect();
            assert!(
                starting.is_empty(),
                "the {scan} scan caused events that start another: {starting:?}"
            );
        }
    }
}
