//! Damage at rest and in transit: a byte flipped inside a stored body chunk (in its segment
//! file), a chunk's location moved to another chunk's, a document record,
//! trace entry or signed host record (by opening the redb file directly, while no carnet runs);
//! a damaged authority bundle; a replica written by a newer format. Each is reported as what it
//! is — exit 5 for integrity, 2 for a format to upgrade — without a panic. Damage to a body or
//! a trace leaves another dossier readable; a change to a guarded table (documents' metadata,
//! signed records: `row_digest`) refuses the replica at open, naming the table.

use carnet_store::replica::tables::{
    AUDIT, AUTHORITY, BODY_PLACES, ChunkPlace, DOCS, FORMAT_VERSION, META, StoredTrace, body_key,
    meta_key, subject_key, tag,
};
use carnet_store::segments::{Location, SEGMENTS_DIR};
use redb::{ReadableDatabase, ReadableTable};

use crate::support::*;

/// Two dossiers: A (the clinic's) with a scan of three chunks and a tail, and B with one report.
struct Two {
    k: Clinic,
    scan: String,
    scan_body: Vec<u8>,
    b: String,
    b_doc: String,
}

const B_BODY: &[u8] = b"Dossier B report (synthetic)";

fn two() -> Two {
    let k = clinic();
    let scan_body: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let scan = k
        .host
        .add_doc(&k.ins, DOCTOR, "31", "18748-4", "Scanner", &scan_body);
    let b = ins_b();
    k.host.dossier(&b, "MARTIN", "Louis");
    k.host.standard_grants(&b);
    let b_doc = k
        .host
        .add_doc(&b, DOCTOR, "10", CONSULTATION, "CR B", B_BODY);
    Two {
        k,
        scan,
        scan_body,
        b,
        b_doc,
    }
}

impl Two {
    /// Dossier B stays fully usable.
    fn b_still_readable(&self) {
        let c = &self.k.host;
        assert_eq!(c.body(&self.b_doc, DOCTOR), B_BODY);
        assert_eq!(c.body(&self.b_doc, "patient"), B_BODY);
        assert_eq!(c.json(&["dossier", "show", &self.b])["status"], "active");
    }
}

/// Asserts an integrity failure: exit 5, a clear message, the JSON error kind.
fn integrity(c: &Carnet, args: &[&str], says: &str) {
    let o = c.fails(5, args);
    assert!(
        o.stderr.contains("integrity failure") && o.stderr.contains(says),
        "carnet {args:?}: {}",
        o.stderr
    );
    let mut j = vec!["--json"];
    j.extend_from_slice(args);
    assert_eq!(c.run(&j).json()["error"]["kind"], "integrity");
}

fn flip(v: &mut [u8], at: usize) {
    v[at] ^= 0x40;
}

/// Where chunk `n` of the document stored as `stored` is kept in the segments.
fn chunk_location(c: &Carnet, stored: &[u8; 16], n: u32) -> Location {
    let db = c.db();
    let txn = db.begin_read().expect("read");
    let places = txn.open_table(BODY_PLACES).expect("body_places");
    let at = places
        .get(body_key(stored, ChunkPlace::Main, n).as_slice())
        .expect("get")
        .expect("the chunk is kept in a segment");
    Location::decode(at.value()).expect("location")
}

#[test]
fn altered_body_chunk() {
    let t = two();
    let c = &t.k.host;
    assert_eq!(c.body(&t.scan, DOCTOR), t.scan_body);
    assert!(
        c.ok(&["doc", "check"])
            .stdout
            .contains("every stored body is intact")
    );
    let scan = c.stored_doc_id(&t.scan);
    {
        // One byte of chunk 1's record changed in its segment file.
        let at = chunk_location(c, &scan, 1);
        let file = c
            .data
            .join(SEGMENTS_DIR)
            .join(format!("{:08}.seg", at.segment));
        let mut bytes = std::fs::read(&file).expect("segment");
        flip(&mut bytes, at.offset as usize + 20 + at.len as usize / 2);
        std::fs::write(&file, &bytes).expect("write the segment");
    }
    let o = c.fails(5, &["doc", "get", &t.scan, "--as", DOCTOR]);
    assert!(
        o.stderr
            .contains(&format!("body of document {} was altered", t.scan)),
        "{}",
        o.stderr
    );
    assert!(o.raw.is_empty(), "no byte of a damaged body is printed");
    // The operator's check finds it, and only it, without anyone reading the dossier.
    let check = c.fails(5, &["doc", "check"]);
    assert!(
        check.stderr.contains(&format!(
            "1 stored body is damaged (altered, cut short or missing a part): {};",
            t.scan
        )),
        "{}",
        check.stderr
    );
    let out = c.path("scan.out");
    c.fails(
        5,
        &[
            "doc",
            "get",
            &t.scan,
            "--as",
            DOCTOR,
            "-o",
            &out.display().to_string(),
        ],
    );
    assert!(!out.exists(), "no file is written from a damaged body");
    // The holder's export refuses rather than ship a damaged copy.
    let exp = c.path("export.json");
    integrity(
        c,
        &[
            "export",
            "--dossier",
            &t.k.ins,
            "--as",
            "patient",
            "-o",
            &exp.display().to_string(),
        ],
        "altered",
    );
    // The metadata, the dossier's other documents and dossier B are intact.
    assert_eq!(
        c.json(&["doc", "list", "--dossier", &t.k.ins, "--as", DOCTOR])
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(c.body(&t.k.consult, DOCTOR), CONSULT_BODY);
    t.b_still_readable();
}

#[test]
fn a_body_chunk_moved_to_another_document_does_not_open() {
    let t = two();
    let c = &t.k.host;
    let scan = c.stored_doc_id(&t.scan);
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        {
            let mut bodies = txn.open_table(BODY_PLACES).expect("body_places");
            let from = body_key(&scan, ChunkPlace::Main, 2);
            let to = body_key(&scan, ChunkPlace::Main, 1);
            let v = bodies
                .get(from.as_slice())
                .expect("get")
                .expect("chunk 2")
                .value()
                .to_vec();
            bodies.insert(to.as_slice(), v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    integrity(c, &["doc", "get", &t.scan, "--as", DOCTOR], "was altered");
    t.b_still_readable();
}

#[test]
fn altered_document_record() {
    let t = two();
    let c = &t.k.host;
    let id = c.stored_doc_id(&t.k.consult);
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        {
            let mut docs = txn.open_table(DOCS).expect("docs");
            let mut v = docs.get(&id).expect("get").expect("row").value().to_vec();
            let last = v.len() - 1;
            flip(&mut v, last);
            docs.insert(&id, v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    // Any change to a guarded table is seen at open, before any row is used: the whole
    // replica is refused, naming the table (the row's own seal would say the same of it).
    let says = "the rows of table docs".to_string();
    integrity(c, &["doc", "get", &t.k.consult, "--as", DOCTOR], &says);
    integrity(
        c,
        &["doc", "list", "--dossier", &t.k.ins, "--as", DOCTOR],
        &says,
    );
    integrity(c, &["doc", "mask", &t.k.consult, "--as", DOCTOR], &says);
    let f = c.write("r.txt", b"r");
    integrity(
        c,
        &[
            "doc",
            "replace",
            &t.k.consult,
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "r",
            &f,
        ],
        &says,
    );
    integrity(c, &["doc", "get", &t.b_doc, "--as", DOCTOR], &says);
}

#[test]
fn altered_trace_entry() {
    let t = two();
    let c = &t.k.host;
    c.body(&t.k.consult, DOCTOR);
    let seq = {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        let seq;
        {
            let mut audit = txn.open_table(AUDIT).expect("audit");
            let last = audit.last().expect("last").expect("a trace entry");
            let (origin, s) = last.0.value();
            seq = s;
            let mut v = last.1.value().to_vec();
            drop(last);
            let end = v.len() - 1;
            flip(&mut v, end);
            audit.insert((origin, s), v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        seq
    };
    let says = format!("trace entry {seq} of site 0 was altered");
    integrity(c, &["audit", "verify"], &says);
    integrity(c, &["audit", "show", "--dossier", &t.k.ins], &says);
    // Documents stay readable (each read appends a new, intact entry).
    assert_eq!(c.body(&t.k.consult, DOCTOR), CONSULT_BODY);
    t.b_still_readable();
    integrity(c, &["audit", "verify"], &says);
}

#[test]
fn altered_trace_chain_hash() {
    let t = two();
    let c = &t.k.host;
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        {
            let mut audit = txn.open_table(AUDIT).expect("audit");
            // The chain hash is the first field of the row, outside the sealed entry.
            let mut v = audit
                .get((0, 3))
                .expect("get")
                .expect("entry 3")
                .value()
                .to_vec();
            flip(&mut v, 0);
            audit.insert((0, 3), v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let o = c.fails(5, &["audit", "verify"]);
    assert!(
        o.stderr.contains("entry 3 was altered or reordered"),
        "{}",
        o.stderr
    );
    t.b_still_readable();
}

#[test]
fn removed_trace_entry() {
    let t = two();
    let c = &t.k.host;
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        txn.open_table(AUDIT)
            .expect("audit")
            .remove((0, 5))
            .expect("remove")
            .expect("entry 5");
        txn.commit().expect("commit");
    }
    let o = c.fails(5, &["audit", "verify"]);
    assert!(o.stderr.contains("entry 5 is missing"), "{}", o.stderr);
    t.b_still_readable();
}

#[test]
fn a_trace_removed_whole_with_its_head_is_seen_and_numbering_does_not_start_again() {
    let t = two();
    let c = &t.k.host;
    c.ok(&["audit", "verify"]);
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        let heads = redb::TableDefinition::<u32, &[u8]>::new("audit_heads");
        txn.open_table(AUDIT)
            .expect("audit")
            .retain(|_, _| false)
            .expect("rows");
        txn.open_table(heads)
            .expect("heads")
            .retain(|_, _| false)
            .expect("heads");
        txn.commit().expect("commit");
    }
    integrity(c, &["audit", "verify"], "trace was cut");
    let o = c.fails(5, &["audit", "show", "--dossier", &t.b]);
    assert!(o.stderr.contains("restore"), "{}", o.stderr);
    // The table itself removed (opening makes it again, empty): seen as well.
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        txn.delete_table(AUDIT).expect("audit");
        txn.commit().expect("commit");
    }
    integrity(c, &["audit", "verify"], "trace was cut");
    // The last entries alone, with the head moved back to match: seen too.
    let t = two();
    let c = &t.k.host;
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        let heads = redb::TableDefinition::<u32, &[u8]>::new("audit_heads");
        let (last, kept) = {
            let mut audit = txn.open_table(AUDIT).expect("audit");
            let last = audit.last().expect("last").expect("an entry").0.value().1;
            for seq in last - 2..=last {
                audit.remove((0, seq)).expect("remove");
            }
            let kept = audit
                .get((0, last - 3))
                .expect("get")
                .expect("kept")
                .value()
                .to_vec();
            (last, kept)
        };
        let hash = postcard::from_bytes::<StoredTrace>(&kept)
            .expect("row")
            .hash;
        txn.open_table(heads)
            .expect("heads")
            .insert(
                0,
                postcard::to_stdvec(&(last - 3, hash))
                    .expect("head")
                    .as_slice(),
            )
            .expect("insert");
        txn.commit().expect("commit");
    }
    integrity(c, &["audit", "verify"], "trace was cut");
}

#[test]
fn altered_signed_authority_record() {
    let t = two();
    let c = &t.k.host;
    let bi = c.dossier_of(&t.k.consult);
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        {
            let mut auth = txn.open_table(AUTHORITY).expect("authority");
            // The grants on dossier A, the médecin traitant's among them (their keys name
            // professionals by a keyed index, which needs the key to compute).
            let prefix = subject_key(tag::GRANT, Some(&bi), None);
            let grants: Vec<(Vec<u8>, Vec<u8>)> = auth
                .range(prefix.as_slice()..)
                .expect("range")
                .map(|row| row.expect("row"))
                .take_while(|(k, _)| k.value().starts_with(&prefix))
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .collect();
            assert!(!grants.is_empty(), "dossier A has grants");
            for (key, mut v) in grants {
                let mid = v.len() / 2;
                flip(&mut v, mid);
                auth.insert(key.as_slice(), v.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let says = "the rows of table authority";
    integrity(c, &["doc", "get", &t.k.consult, "--as", DOCTOR], says);
    integrity(c, &["grant", "list", "--dossier", &t.k.ins], says);
    integrity(c, &["dossier", "show", &t.k.ins], says);
    // Nothing is exported from a damaged authority table.
    let out = c.path("bundle");
    integrity(
        c,
        &["authority", "export", "-o", &out.display().to_string()],
        says,
    );
    assert!(!out.exists());
    // Refused whole: no decision is taken on a table found changed.
    integrity(c, &["doc", "get", &t.b_doc, "--as", DOCTOR], says);
}

#[test]
fn altered_dossier_head() {
    let t = two();
    let c = &t.k.host;
    let bi = c.dossier_of(&t.k.consult);
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        {
            let mut auth = txn.open_table(AUTHORITY).expect("authority");
            let key = subject_key(tag::DOSSIER, Some(&bi), None);
            let mut v = auth
                .get(key.as_slice())
                .expect("get")
                .expect("the head")
                .value()
                .to_vec();
            let last = v.len() - 1;
            flip(&mut v, last);
            auth.insert(key.as_slice(), v.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let says = "the rows of table authority";
    integrity(c, &["doc", "get", &t.k.consult, "--as", "patient"], says);
    integrity(c, &["dossier", "show", &t.k.ins], says);
    let o = c.fails(5, &["dossier", "close", &t.k.ins, "--reason", "x"]);
    assert!(o.stderr.contains(says), "{}", o.stderr);
    integrity(c, &["dossier", "show", &t.b], says);
}

#[test]
fn newer_format_asks_to_upgrade() {
    let k = clinic();
    let c = &k.host;
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert(
                meta_key::FORMAT,
                (FORMAT_VERSION + 1).to_le_bytes().as_slice(),
            )
            .expect("insert");
        txn.commit().expect("commit");
    }
    let f = c.write("x", b"x");
    for args in [
        vec!["pro", "list"],
        vec!["dossier", "list"],
        vec!["doc", "get", &k.consult, "--as", DOCTOR],
        vec![
            "doc",
            "add",
            "--dossier",
            &k.ins,
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            CONSULTATION,
            "--title",
            "t",
            &f,
        ],
        vec!["audit", "verify"],
        vec!["keys", "rotate"],
    ] {
        let o = c.fails(2, &args);
        assert!(
            o.stderr.contains("newer Carnet") && o.stderr.contains("upgrade carnet"),
            "{args:?}: {}",
            o.stderr
        );
    }
    // A malformed version is damage, not a version.
    {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert(meta_key::FORMAT, [1u8, 0].as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let o = c.fails(5, &["pro", "list"]);
    assert!(o.stderr.contains("format version"), "{}", o.stderr);
    // Back at its version, nothing was lost and the refused commands wrote nothing.
    let entries = {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert(meta_key::FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
            .expect("insert");
        let n =
            redb::ReadableTableMetadata::len(&txn.open_table(AUDIT).expect("audit")).expect("len");
        txn.commit().expect("commit");
        n
    };
    assert_eq!(c.json(&["audit", "verify"])["entries"], entries);
    assert_eq!(c.json(&["dossier", "show", &k.ins])["documents"], 2);
    assert_eq!(c.body(&k.consult, DOCTOR), CONSULT_BODY);
}

#[test]
fn the_replicas_settings_and_counters_cannot_be_changed_or_put_back_without_the_key() {
    let k = clinic();
    let c = &k.host;
    let says = "changed outside Carnet";
    let read = |key: &str| -> Option<Vec<u8>> {
        let db = c.db();
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        meta.get(key).expect("get").map(|v| v.value().to_vec())
    };
    let write = |key: &str, value: Option<&[u8]>| {
        let db = c.db();
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn.open_table(META).expect("meta");
            match value {
                Some(v) => meta.insert(key, v).map(|_| ()),
                None => meta.remove(key).map(|_| ()),
            }
            .expect("edit");
        }
        txn.commit().expect("commit");
    };
    // A counter moved (the lease's "current as of", the authority version), the keyring (its
    // pinned host key) or the settings (role, site id, lease) edited: each is refused, exit 5.
    for key in [
        meta_key::AUTHORITY_AS_OF,
        meta_key::AUTHORITY_VERSION,
        meta_key::KEYRING,
        meta_key::CONFIG,
    ] {
        let original = read(key);
        let mut changed = original
            .clone()
            .unwrap_or_else(|| 9u64.to_le_bytes().to_vec());
        if let Some(b) = changed.last_mut() {
            *b ^= 1;
        }
        write(key, Some(&changed));
        let o = c.run(&["dossier", "list"]);
        assert_eq!(o.code, 5, "{key} changed, still opens: {}", o.stderr);
        // The keyring and the settings are decoded before the check: edited so that they no
        // longer decode (a malformed pinned key, a truncated setting), they are refused as
        // damage, exit 5 all the same.
        let counter = key == meta_key::AUTHORITY_AS_OF || key == meta_key::AUTHORITY_VERSION;
        integrity(c, &["dossier", "list"], if counter { says } else { "" });
        // Put back as it was, the replica opens again.
        write(key, original.as_deref());
        c.ok(&["dossier", "list"]);
    }
    // An older state put back whole: the authentication is the one of that older state only
    // if the keyed hash comes with it; a hash removed is refused too.
    let db = c.db();
    let txn = db.begin_write().expect("write");
    txn.open_table(META)
        .expect("meta")
        .remove("state_mac")
        .expect("remove");
    txn.commit().expect("commit");
    drop(db);
    integrity(c, &["dossier", "list"], says);
}

/// A site pinned to the host, and the host's bundle.
fn site_and_bundle() -> (Clinic, Carnet, Vec<u8>) {
    let k = clinic();
    let bundle = std::fs::read(k.host.export_authority("bundle")).expect("bundle");
    let site = Carnet::site(9, Some(&k.host.host_key()));
    (k, site, bundle)
}

#[test]
fn damaged_bundles_change_nothing() {
    let (k, site, good) = site_and_bundle();
    let unpinned = Carnet::site(10, None);
    let n = good.len();
    let flipped = |at: usize| {
        let mut b = good.clone();
        flip(&mut b, at);
        b
    };
    let cases: Vec<(&str, Vec<u8>, i32, &str)> = vec![
        ("empty", Vec::new(), 2, "bad magic"),
        (
            "not a bundle",
            b"{\"resourceType\": \"Bundle\"}".to_vec(),
            2,
            "bad magic",
        ),
        (
            "truncated to half",
            good[..n / 2].to_vec(),
            5,
            "truncated or corrupted",
        ),
        (
            "last byte cut",
            good[..n - 1].to_vec(),
            5,
            "truncated or corrupted",
        ),
        (
            "magic only",
            good[..8].to_vec(),
            5,
            "truncated or corrupted",
        ),
        ("signature byte", flipped(n - 1), 5, "does not verify"),
        ("signed body byte", flipped(n - 70), 5, "does not verify"),
        ("format byte", flipped(8), 2, "format"),
    ];
    for (what, bytes, code, says) in cases {
        let file = site.write("damaged", &bytes);
        for s in [&site, &unpinned] {
            let o = s.fails(code, &["authority", "import", &file]);
            assert!(o.stderr.contains(says), "{what}: {}", o.stderr);
        }
    }
    // The host key inside the bundle: another host for a pinned site; for an unpinned site,
    // signatures that no longer verify.
    let file = site.write("damaged", &flipped(8 + 1 + 5));
    let o = site.fails(5, &["authority", "import", &file]);
    // (A flipped public key is either another valid key or no curve point at all.)
    assert!(
        o.stderr.contains("different host") || o.stderr.contains("host key is malformed"),
        "{}",
        o.stderr
    );
    unpinned.fails(5, &["authority", "import", &file]);

    // Nothing changed: no dossier, no pinned key on the unpinned site, an intact trace.
    for s in [&site, &unpinned] {
        assert_eq!(
            s.json(&["dossier", "list", "--as", "holder"]),
            serde_json::json!([])
        );
        assert_eq!(s.json(&["audit", "verify"])["ok"], true);
    }
    unpinned.fails(4, &["authority", "key"]);
    // The good bundle still imports.
    let file = site.write("good", &good);
    let j = site.json(&["authority", "import", &file]);
    assert!(j["admitted"].as_u64().is_some_and(|a| a > 0), "{j}");
    assert_eq!(
        site.json(&["dossier", "show", &k.ins, "--as", "holder"])["status"],
        "active"
    );
}

#[test]
fn a_whole_data_folder_put_back_is_refused_with_a_high_water_mark_outside_it() {
    let k = clinic();
    let c = &k.host;
    let mark = c.path("carnet.mark").display().to_string();
    let hw = [("CARNET_HIGH_WATER", mark.as_str())];
    assert_eq!(c.run_env(&hw, &["dossier", "list"]).code, 0);
    let older = c.path("older");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).expect("dir");
        for e in std::fs::read_dir(from).expect("dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
            }
        }
    };
    copy(&c.data, &older);
    let o = c.run_env(&hw, &["doc", "mask", &k.consult, "--as", DOCTOR]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The whole folder as it was before the mask: refused, exit 5, nothing used.
    copy(&older, &c.data);
    let o = c.run_env(&hw, &["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]);
    assert_eq!(o.code, 5, "{}", o.stderr);
    assert!(o.stderr.contains("older copy"), "{}", o.stderr);
    // Without the mark nothing can tell (the limit the threat model states).
    c.ok(&["dossier", "list"]);
}

/// Every row of the byte-keyed table `name` (a table the caller names from `tables`), raw.
fn raw_rows(c: &Carnet, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let def = redb::TableDefinition::<&[u8], &[u8]>::new(name);
    let db = c.db();
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(def).expect("table");
    table
        .iter()
        .expect("iter")
        .map(|r| {
            let (k, v) = r.expect("row");
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

/// Puts `rows` back into the byte-keyed table `name`, over what it holds now (someone with the
/// data folder and an older copy of it, without the key).
fn put_back(c: &Carnet, name: &str, rows: &[(Vec<u8>, Vec<u8>)]) {
    let def = redb::TableDefinition::<&[u8], &[u8]>::new(name);
    let db = c.db();
    let txn = db.begin_write().expect("write");
    {
        let mut table = txn.open_table(def).expect("table");
        for (k, v) in rows {
            table.insert(k.as_slice(), v.as_slice()).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

/// Rows from an older copy of the data folder, put back without the key: a grant before its
/// revocation at a site, the host's PKI register before a site's revocation. Each was sealed by
/// the replica itself and still opens; each is refused at open (exit 5) all the same.
#[test]
fn a_grant_or_a_revoked_site_put_back_from_an_older_copy_is_refused() {
    let (k, site, bundle) = site_and_bundle();
    let file = site.write("first.bundle", &bundle);
    site.ok(&["authority", "import", &file]);
    let granted = raw_rows(&site, "authority");
    k.host
        .ok(&["grant", "revoke", "--dossier", &k.ins, "--rpps", PHARMACIST]);
    let file = k.host.export_authority("second.bundle");
    site.ok(&["authority", "import", &file.display().to_string()]);
    let grants = site.json(&["grant", "list", "--dossier", &k.ins, "--as", "holder"]);
    let pharmacist = grants
        .as_array()
        .and_then(|g| g.iter().find(|g| g["rpps"] == PHARMACIST))
        .map(|g| g["state"].clone());
    assert_eq!(
        pharmacist,
        Some(serde_json::json!("revoked")),
        "the revocation was admitted: {grants}"
    );
    put_back(&site, "authority", &granted);
    integrity(
        &site,
        &["grant", "list", "--dossier", &k.ins, "--as", "holder"],
        "authority",
    );

    let host = &k.host;
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("site.bundle").display().to_string();
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Officine",
        "--finess",
        "750000001",
        "--host-address",
        "127.0.0.1:4433",
        "-o",
        &bundle,
    ]);
    let before_revocation = raw_meta_sealed(host);
    host.ok(&["pki", "revoke", "1"]);
    assert_eq!(host.json(&["pki", "list"])[0]["revoked"], true);
    let db = host.db();
    let txn = db.begin_write().expect("write");
    {
        let mut meta = txn.open_table(META).expect("meta");
        for (k, v) in &before_revocation {
            meta.insert(k.as_str(), v.as_slice()).expect("insert");
        }
    }
    txn.commit().expect("commit");
    drop(db);
    integrity(host, &["pki", "list"], "changed outside Carnet");
}

/// The sealed rows of `meta` (the sync layer's register and identities), raw.
fn raw_meta_sealed(c: &Carnet) -> Vec<(String, Vec<u8>)> {
    let db = c.db();
    let txn = db.begin_read().expect("read");
    let meta = txn.open_table(META).expect("meta");
    meta.iter()
        .expect("iter")
        .map(|r| {
            let (k, v) = r.expect("row");
            (k.value().to_string(), v.value().to_vec())
        })
        .filter(|(k, _)| k.starts_with("sealed:"))
        .collect()
}

#[test]
fn a_damaged_database_is_an_integrity_failure_that_says_to_restore() {
    let c = Carnet::host();
    c.dossier(&ins_a(), "EXEMPLE", "Camille");
    let db = c.db_path();
    let whole = std::fs::read(&db).expect("db");
    // Cut in half, then every page altered past the header.
    std::fs::write(&db, &whole[..whole.len() / 2]).expect("truncate");
    integrity(&c, &["dossier", "list"], "restore the data folder");
    let mut damaged = whole.clone();
    for at in (4096..damaged.len()).step_by(97) {
        flip(&mut damaged, at);
    }
    std::fs::write(&db, &damaged).expect("damage");
    let o = c.fails(5, &["dossier", "list"]);
    assert!(o.stderr.contains("is damaged"), "{}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    // Put back, it opens as before: nothing was changed.
    std::fs::write(&db, &whole).expect("restore");
    assert_eq!(c.json(&["dossier", "list"])[0]["ins"], ins_a().as_str());
}

#[test]
fn the_data_folder_follows_no_link_and_reads_no_endless_file() {
    let c = Carnet::host();
    c.dossier(&ins_a(), "EXEMPLE", "Camille");
    let key = c.data.join("master.key");
    let kept = c.path("master.key.kept");
    std::fs::rename(&key, &kept).expect("move the key");
    // A key file linked to an endless device: refused at once, nothing read from it.
    std::os::unix::fs::symlink("/dev/zero", &key).expect("link");
    integrity(&c, &["dossier", "list"], "symbolic link");
    std::fs::remove_file(&key).expect("unlink");
    std::fs::rename(&kept, &key).expect("key back");

    // The trace journal linked to a file outside the folder: refused, the target untouched.
    let journal = c.data.join("trace.journal");
    let outside = c.path("elsewhere.txt");
    std::fs::write(&outside, b"not Carnet's (synthetic)").expect("outside");
    let saved = c.path("trace.journal.kept");
    std::fs::rename(&journal, &saved).expect("move the journal");
    std::os::unix::fs::symlink(&outside, &journal).expect("link");
    integrity(&c, &["dossier", "list"], "symbolic link");
    assert_eq!(
        std::fs::read(&outside).expect("outside"),
        b"not Carnet's (synthetic)"
    );
    std::fs::remove_file(&journal).expect("unlink");
    std::fs::rename(&saved, &journal).expect("journal back");
    assert_eq!(c.json(&["dossier", "list"])[0]["ins"], ins_a().as_str());
}
