//! The inbox: clinic software drops a document and its sidecar into a folder; each complete
//! pair is stored once, then moved to `done/`, or to `rejected/` with a `.error.txt` saying why.
//!
//! A pair is `NAME` (the document) and `NAME.carnet.json` (its sidecar, format in README).
//! Producers write under a temporary name and rename when complete; names starting with `.` or
//! ending in `.tmp`, `.part` or `~` are ignored, and so is a sidecar whose document has not
//! arrived yet.
//!
//! Invariants: a pair is stored before it is moved, and recognised by its producer's
//! `unique_id` when seen again, so a crash between the two, or the same pair dropped twice,
//! stores it once. Bad input never panics: it lands in `rejected/` with the reason. A pair the
//! replica cannot store because its storage failed (a full disk) is not bad input: it stays
//! where it is (`InboxReport::waiting`) and the daemon tries it again after its next round.
//!
//! The daemon scans at start-up and when `watch` signals. *Invariant:* a scan causes no event
//! that signals another: only a file created, moved in, closed after writing or written to
//! under a name that is not temporary starts a scan (`starts_scan`), and a scan only opens and
//! reads (access events), moves pairs out (moved-from events) and creates `done/` and
//! `rejected/` (folder creations; the watch is not recursive, so what happens inside them is
//! not seen). An idle inbox therefore costs nothing: no event, no scan.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use carnet_store::ids::{DocId, Ins, Rpps};
use carnet_store::model::{AccessMode, Actor, DocClass};
use carnet_store::replica::{NewDocument, Replica};
use serde::Deserialize;

/// Suffix of a sidecar file.
pub const SIDECAR_SUFFIX: &str = ".carnet.json";
/// Largest sidecar read (a sidecar is a few hundred bytes).
const SIDECAR_MAX: u64 = 64 * 1024;

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
    /// Pairs already stored earlier (same unique id), moved to `done/`.
    pub duplicates: Vec<String>,
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
/// or a removal (the scan moves pairs to `done/` and `rejected/`), a folder created (the scan
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

fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".part")
        || name.ends_with('~')
}

/// Processes every complete pair now in `inbox` (the scan at start-up, and the work done on
/// each file-system event).
pub fn process(replica: &Replica, inbox: &Path) -> std::io::Result<InboxReport> {
    let mut report = InboxReport::default();
    if replica
        .restore_mark()
        .map_err(std::io::Error::other)?
        .is_some()
    {
        // Restored, not caught up: it records nothing yet, so pairs wait where they are (the
        // daemon scans again after the first round).
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
        let reason = match entry.file_name().into_string() {
            Err(_) => "its name is not valid UTF-8: drop it again under a UTF-8 name",
            Ok(name) if is_temporary(&name) => continue,
            Ok(_) if !kind.is_file() => {
                "it is not a regular file (a symbolic link, a device or a pipe): the inbox takes the document itself, not a link to it"
            }
            Ok(name)
                if name.ends_with(SIDECAR_SUFFIX)
                    && name[..name.len() - SIDECAR_SUFFIX.len()].ends_with(SIDECAR_SUFFIX) =>
            {
                "a sidecar of a sidecar: a document's sidecar is NAME.carnet.json beside NAME"
            }
            Ok(name) => {
                names.push(name);
                continue;
            }
        };
        reject_alone(inbox, &entry.path(), reason)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        report.rejected.push((name, reason.into()));
    }
    names.sort();
    // The sidecar of a document rejected above has no document to wait for.
    let alone: Vec<String> = report.rejected.iter().map(|(n, _)| n.clone()).collect();
    for name in &alone {
        let sidecar = format!("{name}{SIDECAR_SUFFIX}");
        if let Some(at) = names.iter().position(|n| *n == sidecar) {
            names.remove(at);
            let reason = "its document was rejected (see the document's error file)";
            reject_alone(inbox, &inbox.join(&sidecar), reason)?;
            report.rejected.push((sidecar, reason.into()));
        }
    }
    for sidecar_name in names
        .iter()
        .filter(|n| n.ends_with(SIDECAR_SUFFIX) && !is_temporary(n))
    {
        let doc_name = &sidecar_name[..sidecar_name.len() - SIDECAR_SUFFIX.len()];
        if doc_name.is_empty() || is_temporary(doc_name) || !names.iter().any(|n| n == doc_name) {
            continue;
        }
        let doc_path = inbox.join(doc_name);
        let sidecar_path = inbox.join(sidecar_name);
        match ingest(replica, &doc_path, &sidecar_path) {
            Ok(Ingested::Stored(id)) => {
                move_pair(inbox, "done", &doc_path, &sidecar_path, None)?;
                report.stored.push((doc_name.to_string(), id));
            }
            Ok(Ingested::AlreadyStored) => {
                move_pair(inbox, "done", &doc_path, &sidecar_path, None)?;
                report.duplicates.push(doc_name.to_string());
            }
            Ok(Ingested::Later(why)) => report.waiting.push((doc_name.to_string(), why)),
            Err(reason) => {
                move_pair(inbox, "rejected", &doc_path, &sidecar_path, Some(&reason))?;
                report.rejected.push((doc_name.to_string(), reason));
            }
        }
    }
    Ok(report)
}

enum Ingested {
    Stored(DocId),
    AlreadyStored,
    /// Not stored, through no fault of the pair: the replica's storage failed.
    Later(String),
}

/// What to do with a pair whose storing failed with `e`: try again later when the storage
/// failed (nothing wrong with the pair), refuse it otherwise.
fn storing_failed(e: carnet_store::Error) -> Result<Ingested, String> {
    match e {
        carnet_store::Error::Storage(_) | carnet_store::Error::Conflict(_) => {
            Ok(Ingested::Later(e.to_string()))
        }
        e => Err(e.to_string()),
    }
}

fn ingest(replica: &Replica, doc: &Path, sidecar: &Path) -> Result<Ingested, String> {
    let size = fs::metadata(sidecar)
        .map_err(|e| format!("cannot read the sidecar: {e}"))?
        .len();
    if size > SIDECAR_MAX {
        return Err(format!(
            "the sidecar is {size} bytes; at most {SIDECAR_MAX} are accepted"
        ));
    }
    let text = fs::read(sidecar).map_err(|e| format!("cannot read the sidecar: {e}"))?;
    let Filing {
        ins,
        author,
        mut document,
    } = read_sidecar(&text)?;
    let unique_id = document.unique_id.as_deref().unwrap_or_default();
    match replica.find_by_unique_id(&ins, unique_id) {
        Ok(Some(_)) => return Ok(Ingested::AlreadyStored),
        Ok(None) => {}
        Err(e) => return storing_failed(e),
    }
    document.body = fs::read(doc).map_err(|e| format!("cannot read the document: {e}"))?;
    match store(
        replica,
        Filing {
            ins,
            author,
            document,
        },
    ) {
        Ok(id) => Ok(Ingested::Stored(id)),
        Err(e) => storing_failed(e),
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

/// Moves both files into `inbox/sub/`, never over an existing file; writes the reason beside
/// them when given.
fn move_pair(
    inbox: &Path,
    sub: &str,
    doc: &Path,
    sidecar: &Path,
    reason: Option<&str>,
) -> std::io::Result<()> {
    let dir = inbox.join(sub);
    carnet_store::files::private_dir(&dir)?;
    let doc_target = free_name(&dir, doc)?;
    let sidecar_target = PathBuf::from(format!("{}{SIDECAR_SUFFIX}", doc_target.display()));
    if let Some(reason) = reason {
        carnet_store::files::write_private(
            Path::new(&format!("{}.error.txt", doc_target.display())),
            format!("{reason}\n").as_bytes(),
        )?;
    }
    fs::rename(sidecar, &sidecar_target)?;
    fs::rename(doc, &doc_target)?;
    // Kept with patient data in them: the owner's only, whatever mode the producer gave.
    for moved in [&sidecar_target, &doc_target] {
        fs::set_permissions(
            moved,
            fs::Permissions::from_mode(carnet_store::files::FILE_MODE),
        )?;
    }
    Ok(())
}

/// Moves one file that can never be part of a pair into `inbox/rejected/`, under a UTF-8 name
/// and never over an existing file, with the reason beside it. A link is moved as a link: what
/// it points to is never read.
fn reject_alone(inbox: &Path, file: &Path, reason: &str) -> std::io::Result<()> {
    let dir = inbox.join("rejected");
    carnet_store::files::private_dir(&dir)?;
    let target = free_name(&dir, file)?;
    carnet_store::files::write_private(
        Path::new(&format!("{}.error.txt", target.display())),
        format!("{reason}\n").as_bytes(),
    )?;
    fs::rename(file, &target)?;
    if fs::symlink_metadata(&target)?.is_file() {
        fs::set_permissions(
            &target,
            fs::Permissions::from_mode(carnet_store::files::FILE_MODE),
        )?;
    }
    Ok(())
}

/// `dir/NAME`, or `dir/NAME.1`, `.2`… if taken.
fn free_name(dir: &Path, file: &Path) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("a file without a name"))?
        .to_string_lossy()
        .into_owned();
    let mut candidate = dir.join(&name);
    let mut n = 1;
    while candidate.exists()
        || PathBuf::from(format!("{}{SIDECAR_SUFFIX}", candidate.display())).exists()
    {
        candidate = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carnet_store::model::{GrantBasis, GrantState, Profession, Professional};
    use carnet_store::replica::{InitOptions, KeySource, Role};
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

    /// A disk in memory that can be made full: every write then fails with ENOSPC.
    #[derive(Debug, Clone, Default)]
    struct FillableDisk {
        inner: Arc<redb::backends::InMemoryBackend>,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl redb::StorageBackend for FillableDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.inner.write(offset, data)
        }
    }

    #[test]
    fn a_pair_the_replica_cannot_store_for_a_full_disk_waits_in_place_and_is_stored_later() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let (disk, journal) = (FillableDisk::default(), FillableDisk::default());
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

    #[test]
    fn a_pair_is_stored_once_even_if_dropped_twice() {
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
        assert!(inbox.path().join("done/cr.txt").exists());
        assert!(
            inbox
                .path()
                .join(format!("done/cr.txt{SIDECAR_SUFFIX}"))
                .exists()
        );
        assert!(!inbox.path().join("cr.txt").exists());
        let (_, id) = &first.stored[0];
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
        assert!(
            inbox.path().join("done/cr.txt.1").exists(),
            "nothing overwritten in done/"
        );
    }

    #[test]
    fn a_bad_sidecar_is_rejected_with_its_reason() {
        let (data, inbox) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let r = replica(data.path());
        drop_pair(inbox.path(), "a.txt", "x", "{ not json");
        let bad_ins = sidecar("urn:test:2").replace(ins().matricule(), "284057512345600");
        drop_pair(inbox.path(), "b.txt", "x", &bad_ins);
        let stranger = sidecar("urn:test:3").replace(DOCTOR, "19999999999");
        drop_pair(inbox.path(), "c.txt", "x", &stranger);
        let report = process(&r, inbox.path()).expect("scan");
        assert_eq!(report.rejected.len(), 3, "{report:?}");
        let reason = |n: &str| {
            fs::read_to_string(inbox.path().join(format!("rejected/{n}.error.txt")))
                .expect("reason")
        };
        assert!(reason("a.txt").contains("sidecar is not valid"));
        assert!(reason("b.txt").contains("INS"));
        assert!(reason("c.txt").contains("denied"));
        assert!(inbox.path().join("rejected/a.txt").exists());
        assert_eq!(documents(&r), 0);
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
