//! Closure and purge: a closed dossier refuses every access; a purge destroys its key and its
//! rows on the host; a site purges its copy when it imports the closure.

use carnet_store::replica::tables::{
    BODIES, BODY_PLACES, DOCS, DOSSIER_DOCS, DOSSIER_KEYS, TOMBSTONES,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::support::*;

/// Blind indexes holding a data key, and the number of rows of the document tables.
#[derive(Debug, PartialEq)]
struct Rows {
    keys: Vec<[u8; 32]>,
    tombstones: Vec<[u8; 32]>,
    docs: u64,
    index: u64,
    bodies: u64,
}

fn rows(c: &Carnet) -> Rows {
    let db = c.db();
    let txn = db.begin_read().expect("read");
    let keys = txn.open_table(DOSSIER_KEYS).expect("dossier_keys");
    let tombs = txn.open_table(TOMBSTONES).expect("tombstones");
    Rows {
        keys: keys
            .iter()
            .expect("iter")
            .map(|r| *r.expect("row").0.value())
            .collect(),
        tombstones: tombs
            .iter()
            .expect("iter")
            .map(|r| *r.expect("row").0.value())
            .collect(),
        docs: txn.open_table(DOCS).expect("docs").len().expect("len"),
        index: txn
            .open_table(DOSSIER_DOCS)
            .expect("index")
            .len()
            .expect("len"),
        bodies: txn.open_table(BODIES).expect("bodies").len().expect("len")
            + txn
                .open_table(BODY_PLACES)
                .expect("body_places")
                .len()
                .expect("len"),
    }
}

#[test]
fn a_closed_dossier_refuses_everything() {
    let k = clinic();
    let c = &k.host;
    c.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "demande du titulaire",
    ]);
    let f = c.write("n", b"n");
    for (who, args) in [
        (DOCTOR, vec!["doc", "get", &k.consult, "--as", DOCTOR]),
        ("patient", vec!["doc", "get", &k.consult, "--as", "patient"]),
        (
            ER_DOCTOR,
            vec![
                "doc",
                "get",
                &k.consult,
                "--as",
                ER_DOCTOR,
                "--mode",
                "break-glass",
                "--reason",
                "r",
            ],
        ),
        (
            DOCTOR,
            vec!["doc", "list", "--dossier", &k.ins, "--as", DOCTOR],
        ),
        (
            DOCTOR,
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
        ),
        (DOCTOR, vec!["doc", "mask", &k.consult, "--as", DOCTOR]),
    ] {
        let o = c.fails(3, &args);
        assert!(
            o.stderr.contains("(rule 1)") && o.stderr.contains("not active"),
            "{who} {args:?}: {}",
            o.stderr
        );
    }
    let out = c.path("e.json").display().to_string();
    c.fails(
        3,
        &["export", "--dossier", &k.ins, "--as", "patient", "-o", &out],
    );
    // Archived on the host: the rows are still there until the purge.
    assert_eq!(rows(c).docs, 2);
}

#[test]
fn host_purge_destroys_the_key_and_the_rows() {
    let k = clinic();
    let c = &k.host;
    let before = rows(c);
    assert_eq!(before.keys.len(), 1);
    assert_eq!((before.docs, before.index, before.bodies), (2, 2, 2));
    c.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "demande du titulaire",
        "--deletion-requested",
    ]);
    let o = c.ok(&["dossier", "purge", &k.ins]);
    assert!(
        o.stdout.contains(&format!("purged dossier {}", k.ins))
            && o.stdout.contains("key is destroyed"),
        "{}",
        o.stdout
    );

    let after = rows(c);
    assert!(after.keys.is_empty(), "the dossier key row is gone");
    assert_eq!(
        (after.docs, after.index, after.bodies),
        (0, 0, 0),
        "{after:?}"
    );
    assert_eq!(
        after.tombstones, before.keys,
        "a tombstone is left for the purged dossier"
    );

    for who in [DOCTOR, "patient"] {
        let o = c.fails(4, &["doc", "get", &k.consult, "--as", who]);
        assert!(o.stderr.contains(&k.consult), "{}", o.stderr);
    }
    c.fails(4, &["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]);
    c.fails(4, &["dossier", "show", &k.ins]);
    // The trace keeps the closure and the purge, and still verifies.
    let actions: Vec<String> = c
        .audit(&k.ins)
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect();
    for a in ["dossier-close", "dossier-key-destroyed", "dossier-purged"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    assert_eq!(c.json(&["audit", "verify"])["ok"], true);
}

#[test]
fn host_purge_leaves_other_dossiers_alone() {
    let k = clinic();
    let c = &k.host;
    let b = ins_b();
    c.dossier(&b, "MARTIN", "Louis");
    c.standard_grants(&b);
    let b_doc = c.add_doc(&b, DOCTOR, "10", CONSULTATION, "CR B", b"B (synthetic)");
    let bi_a = c.dossier_of(&k.consult);
    let bi_b = c.dossier_of(&b_doc);
    c.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "x",
        "--deletion-requested",
    ]);
    c.ok(&["dossier", "purge", &k.ins]);
    let r = rows(c);
    assert_eq!(r.keys, vec![bi_b]);
    assert_eq!(r.tombstones, vec![bi_a]);
    assert_eq!((r.docs, r.index, r.bodies), (1, 1, 1));
    assert_eq!(c.body(&b_doc, DOCTOR), b"B (synthetic)");
    let list = c.json(&["dossier", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["ins"], b.as_str());
}

#[test]
fn a_site_purges_its_copy_when_it_imports_the_closure() {
    let k = clinic();
    let host = &k.host;
    let b = ins_b();
    host.dossier(&b, "MARTIN", "Louis");
    host.standard_grants(&b);
    let first = host.export_authority("bundle-1").display().to_string();
    let key = host.host_key();
    let sites = [Carnet::site(21, Some(&key)), Carnet::site(22, Some(&key))];
    let mut site_docs = Vec::new();
    for s in &sites {
        let j = s.json(&["authority", "import", &first]);
        assert_eq!(j["purged"], 0);
        s.standard_pros();
        let a_doc = s.add_doc(
            &k.ins,
            DOCTOR,
            "10",
            CONSULTATION,
            "CR site",
            b"A at the site (synthetic)",
        );
        let b_doc = s.add_doc(
            &b,
            DOCTOR,
            "10",
            CONSULTATION,
            "CR site",
            b"B at the site (synthetic)",
        );
        assert_eq!(s.body(&a_doc, DOCTOR), b"A at the site (synthetic)");
        assert_eq!(rows(s).keys.len(), 2);
        site_docs.push((a_doc, b_doc));
    }

    host.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "demande du titulaire",
    ]);
    let second = host.export_authority("bundle-2").display().to_string();
    let j = sites[0].json(&["authority", "import", &second]);
    assert_eq!(j["purged"], 1, "{j}");
    assert!(j["admitted"].as_u64().is_some_and(|n| n >= 1), "{j}");
    let o = sites[1].ok(&["authority", "import", &second]);
    assert!(
        o.stdout.contains("1 dossier(s) purged after closure"),
        "{}",
        o.stdout
    );

    for (s, (a_doc, b_doc)) in sites.iter().zip(&site_docs) {
        let bi_b = s.dossier_of(b_doc);
        let r = rows(s);
        assert_eq!(r.keys, vec![bi_b], "only dossier B keeps a key");
        assert_eq!((r.docs, r.index, r.bodies), (1, 1, 1), "{r:?}");
        assert_eq!(r.tombstones.len(), 1);
        let o = s.fails(4, &["doc", "get", a_doc, "--as", DOCTOR]);
        assert!(o.stderr.contains(a_doc.as_str()), "{}", o.stderr);
        s.fails(4, &["doc", "list", "--dossier", &k.ins, "--as", DOCTOR]);
        s.fails(4, &["dossier", "show", &k.ins, "--as", "holder"]);
        let f = s.write("late", b"late");
        s.fails(
            4,
            &[
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
        );
        assert_eq!(s.body(b_doc, DOCTOR), b"B at the site (synthetic)");
        // No person reads the trace of a dossier the site no longer holds: read in process.
        let actions: Vec<String> = carnet_store::replica::Replica::open(
            &s.data,
            &carnet_store::replica::KeySource::File,
            carnet_store::replica::system_clock(),
        )
        .expect("open the site")
        .audit_entries(Some(&carnet_store::ids::Ins::parse(&k.ins).expect("ins")))
        .expect("trace")
        .iter()
        .map(|c| c.entry.action.name())
        .collect();
        assert!(
            actions.iter().any(|a| a == "dossier-key-destroyed"),
            "{actions:?}"
        );
        assert_eq!(s.json(&["audit", "verify"])["ok"], true);
    }
}
