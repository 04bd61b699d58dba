//! Shared helpers: a replica in a temporary folder driven through the real `carnet` binary, a
//! standard cast of professionals, synthetic INS, and direct access to the redb file for the
//! tests that tamper with it.
//!
//! Every run clears `CARNET_DATA`, `CARNET_PASSPHRASE` and `CARNET_NEW_PASSPHRASE` from the
//! environment (a developer's shell must not change the outcome) and checks that the binary did
//! not panic: input from disk or from the user must never be a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tempfile::TempDir;

/// Médecin traitant of the standard dossier (generalist).
pub const DOCTOR: &str = "10000000001";
/// Pharmacist with an active grant.
pub const PHARMACIST: &str = "10000000002";
/// Emergency doctor, registered, no grant.
pub const ER_DOCTOR: &str = "10000000003";
/// Nurse with an active grant.
pub const NURSE: &str = "10000000004";
/// Specialist doctor with an active grant (not médecin traitant).
pub const SPECIALIST: &str = "10000000005";
/// Médecin-conseil of the insurer, registered, given a grant by mistake.
pub const INSURER_DOCTOR: &str = "10000000006";
/// A well-formed RPPS no replica registers.
pub const STRANGER: &str = "19999999999";

/// Type codes used below.
pub const CONSULTATION: &str = "11488-4";
pub const PRESCRIPTION: &str = "57833-6";
pub const LAB_REPORT: &str = "11502-2";

/// A synthetic INS from its 13-digit body (first digit 1–8), key computed.
pub fn ins(body: &str) -> String {
    carnet_store::ids::Ins::from_body(body)
        .expect("a valid synthetic INS body")
        .matricule()
        .to_string()
}

/// The standard patient of most tests.
pub fn ins_a() -> String {
    ins("2840575123456")
}

/// A second patient, to show that damage or a purge stays with one dossier.
pub fn ins_b() -> String {
    ins("1750913054321")
}

/// The same INS with a wrong key.
pub fn wrong_key(ins: &str) -> String {
    let key: u8 = ins[13..].parse().expect("two-digit key");
    format!("{}{:02}", &ins[..13], if key == 1 { 2 } else { key - 1 })
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: i32,
    /// Stdout as text (lossy).
    pub stdout: String,
    /// Stdout bytes as written.
    pub raw: Vec<u8>,
    /// Stderr as text.
    pub stderr: String,
}

impl Output {
    /// Stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// The entries of `audit show --json`, each with `who`: its actor as the human form writes it
/// (`RPPS (profession)`, `patient`, `representative R1`, `system`), which the tests match on.
pub fn trace_entries(list: Value) -> Vec<Value> {
    let mut entries = list.as_array().expect("audit entries").clone();
    for e in &mut entries {
        e["who"] = json!(who(&e["actor"]));
    }
    entries
}

/// An actor of the API's JSON as the human form writes it.
pub fn who(actor: &Value) -> String {
    match actor["kind"].as_str() {
        Some("professional") => format!(
            "{} ({})",
            actor["rpps"].as_str().unwrap_or("?"),
            actor["profession"].as_str().unwrap_or("unknown here")
        ),
        Some("holder") => "patient".into(),
        Some("representative") => format!("representative {}", actor["id"].as_str().unwrap_or("?")),
        Some("system") => "system".into(),
        _ => panic!("not an actor: {actor}"),
    }
}

/// The path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_carnet")
}

/// Runs the binary with exactly `args` and `env` (no `--data` added).
pub fn run_raw(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.env_remove("CARNET_DATA")
        .env_remove("CARNET_PASSPHRASE")
        .env_remove("CARNET_NEW_PASSPHRASE")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the carnet binary runs");
    let o = Output {
        // A signal (no code) is reported as -1 so that it fails every assertion on codes.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        raw: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stderr.contains("panicked") && !o.stderr.contains("RUST_BACKTRACE"),
        "carnet {args:?} panicked:\n{}",
        o.stderr
    );
    o
}

/// A replica in its own temporary folder: `data/` is the replica, files given to or written by
/// commands go next to it, so they never count as "inside the data folder".
#[derive(Debug)]
pub struct Carnet {
    tmp: TempDir,
    /// The data folder (`--data`).
    pub data: PathBuf,
    env: Vec<(String, String)>,
}

impl Carnet {
    /// A folder with no replica yet.
    pub fn empty() -> Carnet {
        let tmp = tempfile::Builder::new()
            .prefix("carnet-it-")
            .tempdir()
            .expect("temporary folder");
        let data = tmp.path().join("data");
        Carnet {
            tmp,
            data,
            env: Vec::new(),
        }
    }

    /// A host replica (key file).
    pub fn host() -> Carnet {
        let c = Carnet::empty();
        c.ok(&["init", "--role", "host", "--name", "test host"]);
        c
    }

    /// A site replica, pinned to `host_key` when given.
    pub fn site(site_id: u32, host_key: Option<&str>) -> Carnet {
        let c = Carnet::empty();
        let id = site_id.to_string();
        let mut args = vec![
            "init",
            "--role",
            "site",
            "--name",
            "test site",
            "--site-id",
            &id,
        ];
        if let Some(k) = host_key {
            args.extend(["--host-key", k]);
        }
        c.ok(&args);
        c
    }

    /// Sets an environment variable for every later run of this replica.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Removes a variable set with `set_env`.
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// A path next to the data folder (for inputs and outputs of commands).
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes a file next to the data folder and returns its path as text.
    pub fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write an input file");
        p.display().to_string()
    }

    /// The redb file of the replica.
    pub fn db_path(&self) -> PathBuf {
        self.data.join("carnet.redb")
    }

    /// Runs `carnet --data DIR args…` with this replica's environment plus `extra_env`.
    pub fn run_env(&self, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
        let data = self.data.display().to_string();
        let mut full = vec!["--data", data.as_str()];
        full.extend_from_slice(args);
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend_from_slice(extra_env);
        run_raw(&env, &full)
    }

    /// Runs a command.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(&[], args)
    }

    /// Runs a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_eq!(
            o.code, 0,
            "carnet {args:?} failed:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o
    }

    /// Runs a command with `--json` that must succeed; returns its parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        self.ok(&full).json()
    }

    /// Runs a command that must fail with `code`; checks the error is reported on stderr in
    /// the human form, and, run again with `--json`, as a JSON error object with the same code.
    /// Only for commands whose failure changes nothing but the trace (they run twice).
    pub fn fails(&self, code: i32, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_eq!(
            o.code, code,
            "carnet {args:?}: expected exit {code}:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        assert!(
            o.stderr.starts_with("error: "),
            "carnet {args:?}: no error line:\n{}",
            o.stderr
        );
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let j = self.run(&full);
        assert_eq!(j.code, code, "carnet --json {args:?}: stderr {}", j.stderr);
        let v = j.json();
        assert_eq!(v["error"]["exit_code"], code, "{v}");
        assert!(
            v["error"]["kind"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
        o
    }

    /// Runs a command that must fail with `code`, once (for failures that may change state).
    pub fn fails_once(&self, code: i32, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_eq!(
            o.code, code,
            "carnet {args:?}: expected exit {code}:\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        assert!(
            o.stderr.starts_with("error: "),
            "carnet {args:?}: no error line:\n{}",
            o.stderr
        );
        o
    }

    /// The host key printed by `authority key`.
    pub fn host_key(&self) -> String {
        self.json(&["authority", "key"])["host_key"]
            .as_str()
            .expect("host key")
            .to_string()
    }

    /// Registers a professional.
    pub fn pro(&self, rpps: &str, profession: &str) {
        self.ok(&["pro", "add", "--rpps", rpps, "--profession", profession]);
    }

    /// Registers the standard cast.
    pub fn standard_pros(&self) {
        self.ok(&[
            "pro",
            "add",
            "--rpps",
            DOCTOR,
            "--profession",
            "medecin",
            "--specialty",
            "medecine-generale",
            "--name",
            "Dr Generaliste",
        ]);
        self.pro(PHARMACIST, "pharmacien");
        self.ok(&[
            "pro",
            "add",
            "--rpps",
            ER_DOCTOR,
            "--profession",
            "medecin",
            "--specialty",
            "urgences",
        ]);
        self.pro(NURSE, "infirmier");
        self.pro(SPECIALIST, "medecin");
        self.pro(INSURER_DOCTOR, "medecin-conseil");
    }

    /// Creates a qualified adult dossier (host).
    pub fn dossier(&self, ins: &str, birth_name: &str, first_names: &str) {
        self.ok(&[
            "dossier",
            "create",
            "--ins",
            ins,
            "--birth-name",
            birth_name,
            "--first-names",
            first_names,
            "--birth-date",
            "1984-05-07",
            "--sex",
            "F",
            "--birthplace",
            "75056",
            "--qualified",
        ]);
    }

    /// The standard grants on a dossier (host): DOCTOR its médecin traitant; PHARMACIST, NURSE,
    /// SPECIALIST and INSURER_DOCTOR active.
    pub fn standard_grants(&self, ins: &str) {
        self.ok(&[
            "grant",
            "add",
            "--dossier",
            ins,
            "--rpps",
            DOCTOR,
            "--medecin-traitant",
        ]);
        for r in [PHARMACIST, NURSE, SPECIALIST, INSURER_DOCTOR] {
            self.ok(&["grant", "add", "--dossier", ins, "--rpps", r]);
        }
    }

    /// Adds a document as `actor` (normal mode); returns its id.
    pub fn add_doc(
        &self,
        ins: &str,
        actor: &str,
        class: &str,
        type_code: &str,
        title: &str,
        body: &[u8],
    ) -> String {
        let file = self.write(&format!("body-{}", unique()), body);
        let v = self.json(&[
            "doc",
            "add",
            "--dossier",
            ins,
            "--as",
            actor,
            "--class",
            class,
            "--type",
            type_code,
            "--title",
            title,
            "--format",
            "text/plain",
            &file,
        ]);
        let id = v["id"].as_str().expect("document id").to_string();
        assert_eq!(id.len(), 32, "a document id is 32 hex digits: {id}");
        id
    }

    /// Replaces the prescription `old` by DOCTOR's "Ordonnance v2"; returns the new id.
    pub fn replace_prescription(&self, old: &str) -> String {
        let f = self.write(&format!("v2-{}", unique()), b"Ordonnance v2 (synthetic)");
        self.json(&[
            "doc",
            "replace",
            old,
            "--as",
            DOCTOR,
            "--class",
            "42",
            "--type",
            PRESCRIPTION,
            "--title",
            "Ordonnance v2",
            &f,
        ])["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// On a host: registers `DOCTOR`, creates the dossier of `ins_a()` and makes him its
    /// médecin traitant. Answers the INS.
    pub fn doctor_dossier(&self) -> String {
        self.pro(DOCTOR, "medecin");
        let ins = ins_a();
        self.dossier(&ins, "EXEMPLE", "Camille");
        self.ok(&[
            "grant",
            "add",
            "--dossier",
            &ins,
            "--rpps",
            DOCTOR,
            "--medecin-traitant",
        ]);
        ins
    }

    /// Reads a document's body as `actor` (normal mode), which must be allowed.
    pub fn body(&self, id: &str, actor: &str) -> Vec<u8> {
        self.ok(&["doc", "get", id, "--as", actor]).raw
    }

    /// The dossier's trace as the host's operator reads it, as JSON entries (host only).
    pub fn audit(&self, ins: &str) -> Vec<Value> {
        trace_entries(self.json(&["audit", "show", "--dossier", ins]))
    }

    /// The dossier's trace as `who` (an RPPS, `holder` or `representative`) may read it: the
    /// way at a site, where every reader is a person.
    pub fn audit_as(&self, ins: &str, who: &str) -> Vec<Value> {
        trace_entries(self.json(&["audit", "show", "--dossier", ins, "--as", who]))
    }

    /// Exports the signed host records to a file next to the data folder; returns its path.
    pub fn export_authority(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        self.ok(&["authority", "export", "-o", &p.display().to_string()]);
        p
    }

    /// Opens the redb file directly. No carnet process may run meanwhile (redb locks the file).
    pub fn db(&self) -> redb::Database {
        redb::Database::open(self.db_path()).expect("open the replica's redb file")
    }

    /// How document `doc` (hex) is stored in this replica's tables (`doc_map`), read with its
    /// key file while no carnet runs.
    pub fn stored_doc_id(&self, doc: &str) -> [u8; 16] {
        let replica = carnet_store::replica::Replica::open(
            &self.data,
            &carnet_store::replica::KeySource::File,
            carnet_store::replica::system_clock(),
        )
        .expect("open the replica");
        replica.stored_id(&carnet_store::ids::DocId(doc_id_bytes(doc)))
    }

    /// The blind index of the dossier holding `doc`, read from the dossier index.
    pub fn dossier_of(&self, doc: &str) -> [u8; 32] {
        use redb::{ReadableDatabase, ReadableTable};
        let stored = self.stored_doc_id(doc);
        let db = self.db();
        let txn = db.begin_read().expect("read");
        let index = txn
            .open_table(carnet_store::replica::tables::DOSSIER_DOCS)
            .expect("dossier_docs");
        let found = index
            .iter()
            .expect("iter")
            .map(|r| r.expect("row").0.value().to_vec())
            .find(|k| k[32..] == stored)
            .unwrap_or_else(|| panic!("document {doc} is in no dossier"));
        found[..32].try_into().expect("32 bytes")
    }
}

/// A counter for unique file names within a test process.
pub fn unique() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A host with the standard cast and one dossier (`ins_a`, "DUPONT", "Camille Marie") carrying
/// the standard grants, a consultation report and a prescription by the médecin traitant.
#[derive(Debug)]
pub struct Clinic {
    /// The host replica.
    pub host: Carnet,
    /// The dossier.
    pub ins: String,
    /// A consultation report (11488-4) by DOCTOR.
    pub consult: String,
    /// A prescription (57833-6) by DOCTOR.
    pub prescription: String,
}

/// Body of `Clinic::consult`.
pub const CONSULT_BODY: &[u8] = b"Consultation: tension 13/8, RAS. (synthetic)";
/// Body of `Clinic::prescription`.
pub const PRESCRIPTION_BODY: &[u8] = b"Amoxicilline 1 g, 3 fois par jour. (synthetic)";

/// Builds the standard `Clinic`.
pub fn clinic() -> Clinic {
    let host = Carnet::host();
    host.standard_pros();
    let ins = ins_a();
    host.dossier(&ins, "DUPONT", "Camille Marie");
    host.standard_grants(&ins);
    let consult = host.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR de consultation",
        CONSULT_BODY,
    );
    let prescription = host.add_doc(
        &ins,
        DOCTOR,
        "42",
        PRESCRIPTION,
        "Ordonnance",
        PRESCRIPTION_BODY,
    );
    Clinic {
        host,
        ins,
        consult,
        prescription,
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read a folder") {
            let p = entry.expect("folder entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Parses a document id printed by the CLI.
pub fn doc_id_bytes(id: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).expect("hex document id");
    }
    b
}

/// `n` bytes no compressor shrinks (as a scan, an image or a PDF), different for each `seed`:
/// the body of a test that counts what crosses the link (frames are compressed when that pays).
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    // splitmix64 of the seed, then xorshift.
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x = (x ^ (x >> 31)) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
