//! The fuzz targets' logic (issue 13 §3): one function per target, each taking any bytes. The
//! cargo-fuzz targets in `fuzz/` (nightly, outside the workspace) call them, and
//! `tests/fuzz_corpora.rs` replays the committed corpora (`fuzz/corpus/TARGET/`) through them on
//! stable, in CI.
//!
//! The property is the project's rule for input: whatever the bytes, a function returns; bad
//! input is an error and never a panic. Where a target can check more, it does (a frame or a
//! `carnet.toml` that decodes encodes back to itself; the replicas a session ran against still
//! open, and their traces verify). A panic here is the finding.
//!
//! Targets that need a replica run against fresh copies of a fixture made once per process
//! (`Fixture`, kept in memory and written out sparse into `/dev/shm`, or the temporary folder
//! where there is none; a folder of a process that is gone is removed by the next):
//! every input meets the same state, so a finding replays exactly. Keys are made anew in each
//! process, so a committed input signed by another process's keys is refused where it is
//! checked; `session` therefore also runs real rounds between the fixture's host and site and
//! mutates what travels (see `session`), reaching past the signatures.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use carnet_store::authority::Bundle as AuthorityBundle;
use carnet_store::ids::{Ins, SiteId};
use carnet_store::model::{AccessMode, Actor};
use carnet_store::replica::{KeySource, Replica, Role, system_clock};

use crate::config::Config;
use crate::frame::{FrameDecoder, encode};
use crate::pki::Identity;
use crate::session::{HostSession, Msg, SiteSession};
use crate::testkit;

/// A target: any bytes in, nothing out but a panic when it finds a defect.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("session", session),
    ("authority_bundle", authority_bundle),
    ("inbox_sidecar", inbox_sidecar),
    ("api_request", api_request),
    ("config", config),
    ("fhir", fhir),
];

/// Frame decoding: the first byte sets how the rest arrives (pieces of 1 to 256 bytes), the rest
/// is what the peer sent, read as the messages of a host session (`Msg`) and of a session
/// between two sites (`PeerMsg`). Every message decoded encodes to a frame that decodes to it
/// again.
pub fn frame(data: &[u8]) {
    frames_of::<Msg>(data);
    frames_of::<crate::peer::PeerMsg>(data);
}

fn frames_of<M>(data: &[u8])
where
    M: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new();
    for piece in bytes.chunks(usize::from(cut) + 1) {
        decoder.push(piece);
        loop {
            match decoder.next_message::<M>() {
                Ok(Some(msg)) => assert_eq!(wire(&msg).as_ref(), Ok(&msg), "frame round trip"),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// `msg` through the frame codec, as on the wire.
fn wire<M>(msg: &M) -> Result<M, String>
where
    M: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = encode(msg).map_err(|e| e.to_string())?;
    let mut decoder = FrameDecoder::new();
    decoder.push(&bytes);
    match decoder.next_message() {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err("incomplete".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sessions, both roles, against fresh copies of the fixture's host and site. The first byte
/// chooses how the rest is used:
/// - even: the rest is frames; their messages go to a `HostSession` (of the fixture's site, in
///   one `handle_all` if the byte is 0 mod 4, else one `handle` each) and to a `SiteSession`
///   after its `start`, each until the first error;
/// - odd: a real round between the host and the site, with the rest as mutations of what
///   travels, four bytes each: the message (its number in the round), what to do (low two
///   bits: xor a byte with the other six bits plus one, cut the frame, drop the message, send
///   it twice) and where in the frame (u16, little-endian, modulo its length).
///
/// Then both replicas' traces verify, and every 16th input of a thread (each in
/// `session_checked`) both reopen.
pub fn session(data: &[u8]) {
    thread_local!(static INPUTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    let n = INPUTS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    session_checked(data, n % 16 == 1);
}

/// `session`, reopening the replicas afterwards when `reopen`.
pub fn session_checked(data: &[u8], reopen: bool) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let copy = fixture.fresh(&["host", "site"]);
    let (host, site) = (copy.open("host"), copy.open("site"));
    if mode % 2 == 0 {
        raw_session(fixture, &host, &site, mode % 4 == 0, rest);
    } else {
        mutated_round(fixture, &host, &site, rest, None);
    }
    for (name, replica) in [("host", &host), ("site", &site)] {
        if let Err(e) = replica.verify_audit() {
            panic!("the {name}'s trace no longer verifies after a session: {e}");
        }
    }
    drop((host, site));
    if reopen {
        for name in ["host", "site"] {
            copy.open(name);
        }
    }
}

fn raw_session(fixture: &Fixture, host: &Replica, site: &Replica, all: bool, bytes: &[u8]) {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    let mut msgs = Vec::new();
    while let Ok(Some(msg)) = decoder.next_message::<Msg>() {
        msgs.push(msg);
    }
    let mut h = fixture.host_session();
    if all {
        let _ = h.handle_all(crate::testkit::host_sync(host), msgs.clone());
    } else {
        for msg in msgs.iter().cloned() {
            if h.handle(crate::testkit::host_sync(host), msg).is_err() {
                break;
            }
        }
    }
    let mut s = fixture.site_session();
    if s.start(crate::testkit::site_sync(site)).is_err() {
        return;
    }
    for msg in msgs {
        if s.handle(crate::testkit::site_sync(site), msg).is_err() {
            break;
        }
    }
}

/// Most messages one mutated round carries before it is stopped.
const ROUND_MESSAGES: usize = 2_000;

/// Runs a round with `mutations` of what travels (see `session`); `log`, when given, receives
/// every message sent, and whether it went to the host.
fn mutated_round(
    fixture: &Fixture,
    host: &Replica,
    site: &Replica,
    mutations: &[u8],
    mut log: Option<&mut Vec<(bool, Msg)>>,
) {
    let mutations: Vec<(usize, u8, usize)> = mutations
        .chunks_exact(4)
        .map(|m| {
            (
                usize::from(m[0]),
                m[1],
                usize::from(u16::from_le_bytes([m[2], m[3]])),
            )
        })
        .collect();
    let mut sent = 0;
    // What travels: each message becomes the frames the mutations make of it.
    let mut travel = |msg: &Msg| -> Vec<Vec<u8>> {
        let Ok(frame) = encode(msg) else {
            return Vec::new();
        };
        let mut frames = vec![frame];
        for &(_, what, pos) in mutations.iter().filter(|(at, ..)| *at == sent) {
            for frame in frames.iter_mut() {
                let len = frame.len().max(1);
                match what & 3 {
                    0 => {
                        if let Some(b) = frame.get_mut(pos % len) {
                            *b ^= (what >> 2) + 1;
                        }
                    }
                    1 => frame.truncate(pos % len),
                    _ => {}
                }
            }
            match what & 3 {
                2 => frames.clear(),
                3 => frames.extend(frames.clone()),
                _ => {}
            }
        }
        sent += 1;
        frames
    };
    let mut h = fixture.host_session();
    let mut s = fixture.site_session();
    let Ok(hello) = s.start(crate::testkit::site_sync(site)) else {
        return;
    };
    let mut to_host = vec![hello];
    let (mut to_host_wire, mut to_site_wire) = (FrameDecoder::new(), FrameDecoder::new());
    let mut carried = 0;
    while carried < ROUND_MESSAGES && !to_host.is_empty() {
        let mut to_site = Vec::new();
        for msg in to_host.drain(..) {
            carried += 1;
            if let Some(log) = log.as_mut() {
                log.push((true, msg.clone()));
            }
            for frame in travel(&msg) {
                to_host_wire.push(&frame);
            }
        }
        loop {
            match to_host_wire.next_message::<Msg>() {
                Ok(Some(msg)) => match h.handle(crate::testkit::host_sync(host), msg) {
                    Ok(replies) => to_site.extend(replies),
                    Err(_) => return,
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
        for msg in to_site {
            carried += 1;
            if let Some(log) = log.as_mut() {
                log.push((false, msg.clone()));
            }
            for frame in travel(&msg) {
                to_site_wire.push(&frame);
            }
        }
        loop {
            match to_site_wire.next_message::<Msg>() {
                Ok(Some(msg)) => match s.handle(crate::testkit::site_sync(site), msg) {
                    Ok(replies) => to_host.extend(replies),
                    Err(_) => return,
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Files a site imports by hand: an authority bundle (imported into a fresh copy of a site
/// that pins no host key yet, so a bundle signed whole by any key reaches every check after
/// the signatures), an enrolment bundle and a host key revocation (decoded).
pub fn authority_bundle(data: &[u8]) {
    let _ = crate::enrol::Bundle::from_bytes(data);
    let _ = crate::hostkey::HostRevocation::from_bytes(data);
    let Ok(bundle) = AuthorityBundle::from_bytes(data) else {
        return;
    };
    let copy = fixture().fresh(&["unpinned"]);
    let site = copy.open("unpinned");
    let _ = site.import_authority(&bundle);
    if let Err(e) = site.verify_audit() {
        panic!("the site's trace no longer verifies after an import: {e}");
    }
}

/// An inbox sidecar: parsed and checked; when valid, its document (with a body of its unique
/// id's bytes) filed at a fresh copy of the fixture's site, as the inbox does.
pub fn inbox_sidecar(data: &[u8]) {
    let Ok(mut filing) = crate::inbox::read_sidecar(data) else {
        return;
    };
    filing.document.body = filing
        .document
        .unique_id
        .clone()
        .unwrap_or_default()
        .into_bytes();
    let copy = fixture().fresh(&["site"]);
    let site = copy.open("site");
    let _ = crate::inbox::file(&site, filing);
    if let Err(e) = site.verify_audit() {
        panic!("the site's trace no longer verifies after a filing: {e}");
    }
}

/// The local API's request decoding (the JSON body of `POST /v1/call`, `api::wire`): a
/// request that decodes and converts is classified for both roles, and encodes to JSON that
/// decodes and converts again (the client sends what the daemon reads).
pub fn api_request(data: &[u8]) {
    use crate::api::{Request, wire};
    let Ok(decoded) = serde_json::from_slice::<wire::Request>(data) else {
        return;
    };
    let Ok(request) = Request::try_from(decoded) else {
        return;
    };
    request.may_change_what_syncs(Role::Host);
    request.may_change_what_syncs(Role::Site);
    let json = serde_json::to_vec(&wire::Request::from(&request)).expect("a request encodes");
    match serde_json::from_slice::<wire::Request>(&json).map(Request::try_from) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("a converted request does not convert again once encoded: {e}"),
        Err(e) => panic!("a decoded request does not decode again once encoded: {e}"),
    }
}

/// `carnet.toml`: a file that loads is written back (`to_commented_toml`, as `carnet init`
/// writes it) as a file that loads as the same settings.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new(crate::config::CONFIG_FILE);
    let Ok(config) = Config::parse(text, origin) else {
        return;
    };
    let data_dir = Path::new("/var/lib/carnet");
    config.inbox_dir(data_dir);
    config.spool_dir(data_dir);
    let written = config.to_commented_toml();
    match Config::parse(&written, origin) {
        Ok(back) => assert_eq!(back, config, "carnet.toml written back differs"),
        Err(e) => panic!("carnet.toml written back does not load: {e}"),
    }
}

/// A FHIR R4 file, as `carnet import` and the inbox read it: refused, or read into documents
/// that a fresh copy of the fixture's site files (or refuses) with its trace still verifying,
/// and that the same file filed again stores nothing twice.
pub fn fhir(data: &[u8]) {
    let Ok(docs) = crate::fhir::read(data) else {
        return;
    };
    let copy = fixture().fresh(&["site"]);
    let site = copy.open("site");
    let Ok(first) = crate::fhir::import(&site, docs) else {
        return;
    };
    if let Ok(docs) = crate::fhir::read(data)
        && let Ok(again) = crate::fhir::import(&site, docs)
    {
        let ids = |v: &[crate::fhir::Imported]| v.iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(
            ids(&again),
            ids(&first),
            "a file filed again is filed elsewhere"
        );
        assert!(
            again.iter().all(|i| i.already_stored),
            "a file filed again stored something twice"
        );
    }
    if let Err(e) = site.verify_audit() {
        panic!("the site's trace no longer verifies after a FHIR import: {e}");
    }
}

/// The FHIR seeds of `seeds`, for the fixture's dossier `ins` and its `doctor`.
fn fhir_seeds(
    ins: &carnet_store::ids::Ins,
    doctor: &carnet_store::ids::Rpps,
) -> Vec<(&'static str, String)> {
    let (ins, rpps) = (ins.matricule(), doctor.as_str());
    let doc = |uid: &str, replaces: &str| {
        format!(
            r#"{{"resourceType": "DocumentReference", "status": "current",
  "masterIdentifier": {{"system": "urn:ietf:rfc:3986", "value": "{uid}"}},
  "subject": {{"reference": "urn:uuid:p"}},
  "author": [{{"reference": "urn:uuid:d"}}],
  "date": "2026-11-20T10:00:00+01:00",
  "category": [{{"coding": [{{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": "10"}}]}}],
  "type": {{"coding": [{{"system": "http://loinc.org", "code": "11488-4"}}]}},
  "securityLabel": [{{"coding": [{{"system": "urn:oid:1.2.250.1.213.1.1.4.13", "code": "INVISIBLE_PATIENT"}}]}}]{replaces},
  "content": [{{"attachment": {{"contentType": "text/plain", "title": "CR", "data": "Q1IgKHN5bnRoZXRpYyk="}}}}]}}"#
        )
    };
    let patient = format!(
        r#"{{"fullUrl": "urn:uuid:p", "resource": {{"resourceType": "Patient", "identifier": [{{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "{ins}"}}]}}}}"#
    );
    let doctor = format!(
        r#"{{"fullUrl": "urn:uuid:d", "resource": {{"resourceType": "Practitioner", "identifier": [{{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "8{rpps}"}}]}}}}"#
    );
    let replaces = r#", "relatesTo": [{"code": "replaces", "target": {"identifier": {"value": "urn:test:fhir-1"}}}]"#;
    let bundle = format!(
        r#"{{"resourceType": "Bundle", "type": "collection", "entry": [{patient}, {doctor}, {{"resource": {}}}, {{"resource": {}}}]}}"#,
        doc("urn:test:fhir-2", replaces),
        doc("urn:test:fhir-1", "")
    );
    let alone = doc("urn:test:fhir-3", "")
        .replace(
            r#""subject": {"reference": "urn:uuid:p"}"#,
            &format!(r#""subject": {{"identifier": {{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "{ins}"}}}}"#),
        )
        .replace(
            r#""author": [{"reference": "urn:uuid:d"}]"#,
            &format!(r#""author": [{{"identifier": {{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "8{rpps}"}}}}]"#),
        );
    vec![("bundle", bundle), ("alone", alone)]
}

/// A host and an enrolled site (`testkit::host_and_site_in`) with documents written on both
/// sides, one larger than a message carries inline, and a site pinning no host key; copied
/// fresh for each input.
struct Fixture {
    /// This process's folder: `template/` holds the replicas as made, `work-N/` thread N's copy.
    root: PathBuf,
    /// The template's replicas, by name, as they were made.
    templates: Vec<(&'static str, Vec<TemplateFile>)>,
    site_id: SiteId,
    site_certificate: Vec<u8>,
    site_signer: Identity,
}

/// Prefix of the fixture folders, followed by the process id.
const FIXTURE_PREFIX: &str = "carnet-fuzz-";

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::make)
}

impl Fixture {
    fn make() -> Fixture {
        remove_stale_fixtures();
        let root = fixtures_folder().join(format!("{FIXTURE_PREFIX}{}", std::process::id()));
        let template = root.join("template");
        std::fs::create_dir_all(&template).expect("fixture folder");
        let (host, site, ins) = testkit::host_and_site_in(&template);
        testkit::init(&template.join("unpinned"), Role::Site, Some(5), None);
        let mut fixture = Fixture {
            root,
            templates: Vec::new(),
            site_id: site.config().site_id,
            site_certificate: testkit::certificate(&site),
            site_signer: testkit::signer(&site),
        };
        // A first round brings the dossier to the site; then each side writes.
        put(&host, &ins, "host note", b"written at the host".to_vec());
        mutated_round(&fixture, &host, &site, &[], None);
        put(
            &host,
            &ins,
            "host imaging",
            vec![7; crate::session::INLINE_MAX as usize + 1],
        );
        put(&site, &ins, "site note", b"written at the site".to_vec());
        drop((host, site));
        for name in ["host", "site", "unpinned"] {
            fixture
                .templates
                .push((name, TemplateFile::read_folder(&template.join(name))));
        }
        std::fs::remove_dir_all(&template).expect("template removed");
        fixture
    }

    fn host_session(&self) -> HostSession {
        HostSession::new(self.site_id, self.site_certificate.clone())
    }

    fn site_session(&self) -> SiteSession {
        SiteSession::new(self.site_signer.clone(), Vec::new())
    }

    /// This thread's copy of the replicas `names` of the template, made afresh.
    fn fresh(&self, names: &[&str]) -> Copy {
        thread_local!(static THREAD: u64 = {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        let dir = self.root.join(format!("work-{}", THREAD.with(|n| *n)));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("fixture copy removed");
        }
        for name in names {
            let files = self
                .templates
                .iter()
                .filter(|(replica, _)| replica == name)
                .flat_map(|(_, files)| files);
            for file in files {
                file.write(&dir.join(name));
            }
        }
        Copy { dir }
    }
}

/// A file of the template, held in memory without its runs of zeros (the trace journal is
/// made whole at its full size, mostly zeros): written back sparse, a copy costs little.
struct TemplateFile {
    /// Its path inside the replica folder (the body segments are in a folder of their own).
    name: PathBuf,
    len: u64,
    /// The blocks that are not all zeros, with their offsets.
    blocks: Vec<(u64, Vec<u8>)>,
}

/// Size of the blocks `TemplateFile` keeps.
const BLOCK: usize = 64 * 1024;

impl TemplateFile {
    /// The files of the replica folder `dir`, those of its sub-folders included.
    fn read_folder(dir: &Path) -> Vec<TemplateFile> {
        let mut files = Vec::new();
        Self::read_into(dir, Path::new(""), &mut files);
        files
    }

    fn read_into(dir: &Path, inside: &Path, files: &mut Vec<TemplateFile>) {
        for entry in std::fs::read_dir(dir).expect("fixture listed") {
            let entry = entry.expect("fixture entry");
            if entry.file_type().expect("fixture entry type").is_dir() {
                Self::read_into(&entry.path(), &inside.join(entry.file_name()), files);
                continue;
            }
            let bytes = std::fs::read(entry.path()).expect("fixture file read");
            let blocks = bytes
                .chunks(BLOCK)
                .enumerate()
                .filter(|(_, block)| block.iter().any(|b| *b != 0))
                .map(|(i, block)| ((i * BLOCK) as u64, block.to_vec()))
                .collect();
            files.push(TemplateFile {
                name: inside.join(entry.file_name()),
                len: bytes.len() as u64,
                blocks,
            });
        }
    }

    /// Writes the file into `dir` (its folders made 0700 if missing), mode 0600.
    fn write(&self, dir: &Path) {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = dir.join(&self.name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.parent().unwrap_or(dir))
            .expect("copy folder");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("fixture file created");
        for (offset, block) in &self.blocks {
            file.seek(SeekFrom::Start(*offset)).expect("seek");
            file.write_all(block).expect("fixture file written");
        }
        file.set_len(self.len).expect("fixture file length");
    }
}

/// A fresh copy of the fixture's replicas.
struct Copy {
    dir: PathBuf,
}

impl Copy {
    fn open(&self, name: &str) -> Replica {
        match Replica::open(&self.dir.join(name), &KeySource::File, system_clock()) {
            Ok(replica) => replica,
            Err(e) => panic!("the fixture's {name} replica no longer opens: {e}"),
        }
    }
}

/// Writes a document as the fixture's doctor.
fn put(replica: &Replica, ins: &Ins, title: &str, body: Vec<u8>) {
    replica
        .put_document(
            &Actor::Professional(testkit::doctor()),
            AccessMode::Normal,
            None,
            ins,
            testkit::new_doc(title, body),
        )
        .expect("fixture document");
}

/// Where the fixtures are made: `/dev/shm` where there is one (a replica syncs its writes to
/// disk, which costs nothing in memory), else the system's temporary folder.
fn fixtures_folder() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the fixture folders of processes that are gone (a fuzzer stops without cleaning up).
fn remove_stale_fixtures() {
    let Ok(entries) = std::fs::read_dir(fixtures_folder()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FIXTURE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Seed inputs for every target, made from real encodings against this process's fixture:
/// `(target, name, bytes)`. `tests/fuzz_corpora.rs` writes them (`--ignored`) before `cargo fuzz
/// cmin` minimises each corpus.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let fixture = fixture();
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.push((target, name, bytes));
    };
    // A real round, every message as it travels.
    let copy = fixture.fresh(&["host", "site"]);
    let (host, site) = (copy.open("host"), copy.open("site"));
    let mut log = Vec::new();
    mutated_round(fixture, &host, &site, &[], Some(&mut log));
    let frames = |to_host: bool| -> Vec<u8> {
        log.iter()
            .filter(|(t, _)| *t == to_host)
            .flat_map(|(_, m)| encode(m).expect("encode"))
            .collect()
    };
    for (i, (_, msg)) in log.iter().enumerate() {
        let mut input = vec![if i % 2 == 0 { 255 } else { 7 }];
        input.extend(encode(msg).expect("encode"));
        add("frame", format!("{i:02}-{}", msg.kind()), input);
    }
    add("frame", "error".into(), {
        let mut input = vec![3];
        input.extend(encode(&Msg::Error("stopped".into())).expect("encode"));
        input
    });
    for (mode, name) in [(0, "to-host-all"), (2, "to-host-each")] {
        add("session", name.into(), [vec![mode], frames(true)].concat());
    }
    add(
        "session",
        "to-site".into(),
        [vec![0], frames(false)].concat(),
    );
    add("session", "round".into(), vec![1]);
    for (i, what) in [(0u8, 1u8), (1, 0), (2, 2), (3, 3), (4, 1), (5, 0), (6, 3)] {
        let at = (i as u16 * 37 + 5).to_le_bytes();
        add(
            "session",
            format!("round-{i}-{what}"),
            vec![1, i, what | 0x10, at[0], at[1]],
        );
    }
    // Files imported by hand.
    let bundle = host.export_authority().expect("export");
    add(
        "authority_bundle",
        "authority".into(),
        bundle.to_bytes().expect("bundle"),
    );
    crate::enrol::init_host(&host).expect("pki");
    let enrolment = crate::enrol::enrol(&host, "Clinique Test", "010000000", "127.0.0.1:4433")
        .expect("enrol")
        .to_bytes()
        .expect("enrolment");
    add("authority_bundle", "enrolment".into(), enrolment.clone());
    // Sidecars.
    let ins = testkit::ins();
    let doctor = testkit::doctor();
    let sidecar = |extra: &str| {
        format!(
            r#"{{"ins": "{}", "author_rpps": "{}", "class": "10", "type": "11488-4", "title": "CR de consultation", "unique_id": "urn:test:1"{extra}}}"#,
            ins.matricule(),
            doctor.as_str()
        )
    };
    add("inbox_sidecar", "minimal".into(), sidecar("").into_bytes());
    add(
        "inbox_sidecar",
        "full".into(),
        sidecar(r#", "format": "text/plain", "service_start": "2026-11-20""#).into_bytes(),
    );
    add(
        "inbox_sidecar",
        "bad-date".into(),
        sidecar(r#", "service_start": "1066-10-14""#).into_bytes(),
    );
    // FHIR files: a DocumentReference alone, and a Bundle of two, the second replacing the
    // first, with its Patient and its Practitioner.
    for (name, file) in fhir_seeds(&ins, &doctor) {
        add("fhir", name.into(), file.into_bytes());
    }
    // Local API requests.
    use crate::api::Request;
    use carnet_store::model::{AccessMode, GrantBasis, GrantState, Profession, Professional};
    let actor = Actor::Professional(doctor.clone());
    let doc = host
        .list_documents(&actor, &ins)
        .expect("documents")
        .first()
        .map(|d| d.facts.id)
        .expect("a document");
    let requests = vec![
        Request::Config,
        Request::VerifyAudit,
        Request::SyncNow,
        Request::AddProfessional {
            professional: Professional {
                rpps: doctor.clone(),
                profession: Profession::Medecin,
                specialty: None,
                name: Some("Dr Test".into()),
            },
        },
        Request::CreateDossier {
            dossier: testkit::new_dossier(&ins),
            creator: Some(actor.clone()),
        },
        Request::Dossier {
            ins: ins.clone(),
            actor: Some(actor.clone()),
        },
        Request::CloseDossier {
            ins: ins.clone(),
            reason: "décès".into(),
            deletion_requested: true,
        },
        Request::SetGrant {
            ins: ins.clone(),
            rpps: doctor.clone(),
            state: GrantState::Active,
            basis: Some(GrantBasis::Treating),
            until: Some(1_900_000_000_000),
        },
        Request::UpdateEmergency {
            ins: ins.clone(),
            samu: Some(true),
            btg: None,
            masked: Some(false),
        },
        Request::PutDocument {
            actor: actor.clone(),
            mode: AccessMode::Normal,
            reason: None,
            ins: ins.clone(),
            document: testkit::new_doc("CR", b"body".to_vec()),
        },
        Request::ReadDocument {
            actor: actor.clone(),
            id: doc,
            mode: AccessMode::BreakGlass,
            reason: Some("urgence".into()),
        },
        Request::UpdateDocument {
            actor: actor.clone(),
            id: doc,
            action: carnet_store::policy::Action::Mask,
        },
        Request::AuditEntries {
            ins: Some(ins.clone()),
        },
        Request::ImportAuthority { bundle },
        Request::Pin {
            ins: ins.clone(),
            on: true,
            site: Some(5),
        },
        Request::PkiEnrol {
            name: "Clinique".into(),
            finess: "010000000".into(),
            host_address: "127.0.0.1:4433".into(),
            pros: vec![doctor.clone()],
            ca: None,
            days: Some(365),
        },
        Request::PkiInstall { bundle: enrolment },
        Request::PkiRevokeHost {
            pin: [9; 32],
            ca: None,
        },
        Request::Fleet { site: Some(5) },
        Request::Backup {
            path: "/tmp/backup".into(),
        },
    ];
    for request in requests {
        let json = serde_json::to_vec(&crate::api::wire::Request::from(&request)).expect("json");
        let op = serde_json::from_slice::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("op").and_then(|op| op.as_str()).map(str::to_string))
            .unwrap_or_default();
        add("api_request", op, json);
    }
    // carnet.toml as `carnet init` writes it, for both roles.
    for (name, text) in [
        (
            "host",
            "role = \"host\"\nlisten = \"0.0.0.0:4433\"\nnotification_spool = \"spool\"\n\n[http]\nlisten = \"127.0.0.1:8780\"\n",
        ),
        (
            "site",
            "role = \"site\"\nhost_address = \"192.0.2.1:4433\"\nlease_hours = 72\nsync_every = 30\nlog_format = \"json\"\ninbox = \"/srv/inbox\"\n",
        ),
        (
            "site-daemons",
            "role = \"site\"\nhost_address = [\"192.0.2.1:4433\", \"[2001:db8::2]:4433\"]\n",
        ),
        (
            "site-peers",
            "role = \"site\"\nhost_address = \"192.0.2.1:4433\"\npeer_listen = \"0.0.0.0:4434\"\n\n[http]\nlisten = \"127.0.0.1:8780\"\n\n[[peer]]\nname = \"smur-vallee\"\naddress = \"192.0.2.20:4434\"\nsite = 12\n\n[[peer]]\nname = \"clinique\"\naddress = \"[2001:db8::7]:4434\"\nsite = 7\n",
        ),
    ] {
        let config = Config::parse(text, Path::new(name)).expect("seed config");
        add(
            "config",
            name.into(),
            config.to_commented_toml().into_bytes(),
        );
    }
    seeds
}

#[cfg(test)]
mod fhir_seed_tests {
    use super::*;

    /// The FHIR seeds are files the reader takes and the fixture's site files whole: the
    /// fuzzer starts from inputs that reach the filing.
    #[test]
    fn the_fhir_seeds_are_read_and_filed() {
        for (name, file) in fhir_seeds(&testkit::ins(), &testkit::doctor()) {
            let docs = crate::fhir::read(file.as_bytes())
                .unwrap_or_else(|e| panic!("seed {name} is not read: {e}"));
            let copy = fixture().fresh(&["site"]);
            let site = copy.open("site");
            let filed = crate::fhir::import(&site, docs)
                .unwrap_or_else(|e| panic!("seed {name} is not filed: {e}"));
            assert!(filed.iter().all(|i| !i.already_stored), "{name}: {filed:?}");
            fhir(file.as_bytes());
        }
    }
}
