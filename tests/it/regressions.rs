//! Regressions found in review: replayed bundles, purges a site missed, init input checks.

use carnet_store::replica::tables::TOMBSTONES;
use redb::{ReadableDatabase, ReadableTable};

use crate::support::*;

#[test]
fn init_refuses_a_host_key_that_is_not_a_public_key() {
    let c = Carnet::empty();
    // 64 hex digits, but not an Ed25519 point.
    let o = c.fails_once(
        2,
        &["init", "--role", "site", "--host-key", &"ab".repeat(32)],
    );
    assert!(o.stderr.contains("host key"), "{}", o.stderr);
    assert!(
        !c.db_path().exists(),
        "a refused init left a replica behind"
    );
}

#[test]
fn replaying_an_old_bundle_does_not_resurrect_a_purged_dossier() {
    let k = clinic();
    let host = &k.host;
    let old = host.export_authority("old").display().to_string();
    let site = Carnet::site(40, Some(&host.host_key()));
    site.ok(&["authority", "import", &old]);
    site.standard_pros();
    host.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "demande du titulaire",
    ]);
    let closure = host.export_authority("closure").display().to_string();
    assert_eq!(site.json(&["authority", "import", &closure])["purged"], 1);
    // The bundle from before the closure, replayed.
    site.json(&["authority", "import", &old]);
    let o = site.run(&["dossier", "show", &k.ins, "--as", "holder"]);
    assert_ne!(o.code, 0, "the purged dossier is back: {}", o.stdout);
    let f = site.write("n", b"n");
    let o = site.run(&[
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
    ]);
    assert_ne!(
        o.code, 0,
        "a document was written into a closed dossier: {}",
        o.stdout
    );
}

#[test]
fn a_site_that_missed_the_closure_still_purges_after_the_host_purged() {
    let k = clinic();
    let host = &k.host;
    let site = Carnet::site(41, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b1").display().to_string(),
    ]);
    site.standard_pros();
    let id = site.add_doc(
        &k.ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR",
        b"site copy (synthetic)",
    );
    // Early deletion request: the host closes and purges before the site hears of the closure.
    host.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "suppression anticipee",
        "--deletion-requested",
    ]);
    host.ok(&["dossier", "purge", &k.ins]);
    let j = site.json(&[
        "authority",
        "import",
        &host.export_authority("b2").display().to_string(),
    ]);
    assert_eq!(j["purged"], 1, "the site was never told: {j}");
    site.fails(4, &["doc", "get", &id, "--as", DOCTOR]);
}

/// Reads a postcard varint.
fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The `cause_seq` of the only purge receipt in a replica (postcard: zigzag `at`, then `cause_seq`).
fn receipt_cause_seq(c: &Carnet) -> u64 {
    let db = c.db();
    let txn = db.begin_read().expect("read");
    let t = txn.open_table(TOMBSTONES).expect("tombstones");
    let row = t
        .iter()
        .expect("iter")
        .next()
        .expect("a tombstone")
        .expect("row");
    let v = row.1.value().to_vec();
    let mut at = 0;
    varint(&v, &mut at);
    varint(&v, &mut at)
}

#[test]
fn purge_receipts_name_the_closure_that_ended_the_dossier() {
    let k = clinic();
    let host = &k.host;
    let site = Carnet::site(42, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b1").display().to_string(),
    ]);
    host.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "x",
        "--deletion-requested",
    ]);
    let closure_seq = host.json(&["dossier", "show", &k.ins])["head_seq"]
        .as_u64()
        .expect("seq");
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b2").display().to_string(),
    ]);
    host.ok(&["dossier", "purge", &k.ins]);
    assert_eq!(receipt_cause_seq(host), closure_seq, "host-side purge");
    assert_eq!(
        receipt_cause_seq(&site),
        closure_seq,
        "site purge caused by the closure"
    );
}

#[test]
fn a_site_is_told_emergency_preferences_are_the_hosts() {
    let k = clinic();
    let site = Carnet::site(44, Some(&k.host.host_key()));
    // Even for a dossier the site does not hold: the role is checked first.
    let o = site.fails(
        2,
        &["emergency", "set", "--dossier", &k.ins, "--btg", "oppose"],
    );
    assert!(o.stderr.contains("national host"), "{}", o.stderr);
}

#[test]
fn reimporting_a_closure_is_a_no_op() {
    let k = clinic();
    let host = &k.host;
    let site = Carnet::site(43, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b1").display().to_string(),
    ]);
    host.ok(&["dossier", "close", &k.ins, "--reason", "x"]);
    let closure = host.export_authority("closure").display().to_string();
    assert_eq!(site.json(&["authority", "import", &closure])["purged"], 1);
    let again = site.json(&["authority", "import", &closure]);
    assert_eq!(again["admitted"], 0, "{again}");
    assert_eq!(again["purged"], 0, "{again}");
}
