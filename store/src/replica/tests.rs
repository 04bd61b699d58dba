//! Replica-level tests: two in-process replicas exchanging outboxes converge, exactly-once
//! apply, concurrent audited reads, format version, key rotation, purge.

use std::sync::Arc;

use crate::kv::ReadableTableMetadata;
use tempfile::TempDir;
use zeroize::Zeroizing;

use super::*;
use crate::audit::TraceAction;
use crate::authority::{Covers, SignedRecord};
use crate::error::Error;
use crate::ids::{DocId, Rpps};
use crate::model::{
    AccessMode, DocClass, DossierStatus, GrantBasis, GrantState, HolderKind, IdentityStatus,
    Profession, Sex,
};
use crate::policy::Action;

fn clock() -> Clock {
    Arc::new(|| 1_700_000_000_000)
}

fn ins() -> Ins {
    Ins::from_body("1840575123456").expect("ins")
}

fn doctor() -> Rpps {
    Rpps::parse("10000000001").expect("rpps")
}

fn nurse() -> Rpps {
    Rpps::parse("10000000002").expect("rpps")
}

fn identity() -> crate::model::Identity {
    crate::model::Identity {
        birth_name: "TEST".into(),
        first_names: "Alex".into(),
        birth_date: "1984-05-07".into(),
        sex: Sex::Male,
        birthplace: None,
        status: IdentityStatus::Qualified,
    }
}

/// An adult's dossier with the test identity.
fn new_dossier(ins: Ins) -> NewDossier {
    NewDossier {
        ins,
        ins_kind: crate::ids::InsKind::TestNir,
        identity: identity(),
        holder: HolderKind::Adult,
        representatives: vec![],
        mask_new_by_default: false,
    }
}

fn init(dir: &TempDir, role: Role, site: Option<u32>) -> Replica {
    Replica::init_on(
        dir.path(),
        &test_storage(dir.path(), role),
        InitOptions {
            role,
            name: role.as_str().into(),
            site_id: site.map(SiteId),
            key: KeySource::File,
            host_key: None,
            lease_hours: None,
        },
        clock(),
    )
    .expect("init")
}

/// Registers the professionals at host `host` and opens `ins()`'s dossier to the doctor.
fn dossier_for_the_doctor(host: &Replica) {
    register(host);
    host.create_dossier(new_dossier(ins())).expect("dossier");
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )
    .expect("grant");
}

fn register(r: &Replica) {
    for (rpps, p) in [
        (doctor(), Profession::Medecin),
        (nurse(), Profession::Infirmier),
    ] {
        r.add_professional(&Professional {
            rpps,
            profession: p,
            specialty: None,
            name: None,
        })
        .expect("pro");
    }
}

/// A host with one dossier, the doctor treating, and a site provisioned from its bundle.
fn host_and_site() -> (TempDir, Replica, TempDir, Replica) {
    let hd = TempDir::new().expect("tmp");
    let host = init(&hd, Role::Host, None);
    serving_a_site(hd, host)
}

/// `host_and_site` with the host given (new, in `hd`).
fn serving_a_site(hd: TempDir, host: Replica) -> (TempDir, Replica, TempDir, Replica) {
    let sd = TempDir::new().expect("tmp");
    dossier_for_the_doctor(&host);
    let site = init(&sd, Role::Site, Some(7));
    register(&site);
    // Only the host binds professionals to a site.
    for rpps in [doctor(), nurse()] {
        host.bind_professional(SiteId(7), &rpps, true)
            .expect("bind");
    }
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    sync(&host, &site);
    (hd, host, sd, site)
}

fn doc(title: &str, body: &[u8]) -> NewDocument {
    NewDocument {
        class: DocClass::parse("10").expect("class"),
        type_code: "11488-4".into(),
        title: title.into(),
        format: "text/plain".into(),
        body: body.to_vec(),
        unique_id: None,
        service_start: None,
        service_end: None,
    }
}

fn write(r: &Replica, title: &str, body: &[u8]) -> DocId {
    r.put_document(
        &Actor::Professional(doctor()),
        AccessMode::Normal,
        None,
        &ins(),
        doc(title, body),
    )
    .expect("put")
}

/// Sends `from`'s outbox (metadata, then bodies) to `to`; returns how many changes were applied.
/// One sync round between a site and the host, as the daemon will run it: push the site's
/// outbox, then its new bodies; pull the site's log from the host, then the bodies it lacks.
fn sync(host: &Replica, site: &Replica) {
    let origin = site.config().site_id;
    let changes = site.outbox(0, usize::MAX).expect("outbox");
    for (seq, change) in &changes {
        host.apply_remote(origin, *seq, change).expect("apply");
    }
    if let Some((last, _)) = changes.last() {
        site.ack_outbox(*last).expect("ack");
    }
    for id in host.missing_bodies().expect("missing") {
        if let Ok(body) = site.body_for_sync(&id) {
            host.receive_pieces_from(
                origin,
                &[BodyPiece {
                    doc: id,
                    offset: 0,
                    total: body.len() as u64,
                    bytes: body.to_vec(),
                }],
            )
            .expect("store body");
        }
    }
    let items = host
        .pull(origin, site.pull_cursor().expect("cursor"), usize::MAX)
        .expect("pull");
    site.apply_pull(&items).expect("apply pull");
    for id in site.missing_bodies().expect("missing") {
        if let Ok(body) = host.body_for_sync(&id) {
            site.receive_body_piece(&id, 0, body.len() as u64, &body)
                .expect("store body");
        }
    }
}

fn metas(r: &Replica) -> Vec<crate::merge::DocumentMeta> {
    r.list_documents(&Actor::Professional(doctor()), &ins())
        .expect("list")
}

#[test]
fn a_site_and_the_host_converge_through_push_and_pull() {
    let (_hd, host, _sd, site) = host_and_site();
    let a = write(&host, "at host", b"host body");
    let b = write(&site, "at site", b"site body");
    sync(&host, &site);
    assert_eq!(metas(&host), metas(&site));
    assert_eq!(metas(&host).len(), 2);
    let actor = Actor::Professional(doctor());
    assert_eq!(
        &site
            .read_document(&actor, &a, AccessMode::Normal, None)
            .expect("read")
            .body[..],
        b"host body"
    );
    assert_eq!(
        &host
            .read_document(&actor, &b, AccessMode::Normal, None)
            .expect("read")
            .body[..],
        b"site body"
    );

    // Concurrent mask at the site and unmask at the host converge to masked.
    host.update_document(&actor, &a, Action::Mask)
        .expect("mask");
    // The host logged the change for the site, whose scope holds the dossier.
    let seen = host
        .pull(
            site.config().site_id,
            site.pull_cursor().expect("cursor"),
            usize::MAX,
        )
        .expect("pull")
        .len();
    sync(&host, &site);
    host.update_document(&actor, &a, Action::Unmask)
        .expect("unmask");
    site.update_document(&actor, &a, Action::HideFromPatient)
        .expect("hide");
    site.update_document(&actor, &a, Action::Mask)
        .expect("mask again");
    sync(&host, &site);
    assert!(seen > 0);
    assert_eq!(metas(&host), metas(&site));
    let m = metas(&host)
        .into_iter()
        .find(|m| m.facts.id == a)
        .expect("doc");
    assert!(m.state().flags.masque_ps && m.state().flags.invisible_patient);

    // Concurrent replacements of the same document both survive and are a conflict.
    let r1 = host
        .replace_document(&actor, &b, doc("v2 host", b"2h"))
        .expect("replace");
    let r2 = site
        .replace_document(&actor, &b, doc("v2 site", b"2s"))
        .expect("replace");
    sync(&host, &site);
    assert_eq!(metas(&host), metas(&site));
    let old = metas(&site)
        .into_iter()
        .find(|m| m.facts.id == b)
        .expect("old");
    assert!(old.has_replacement_conflict());
    assert_eq!(
        old.state().successors.keys().copied().collect::<Vec<_>>(),
        {
            let mut both = vec![r1, r2];
            both.sort();
            both
        }
    );
    assert_eq!(
        (
            host.conflicts().expect("host"),
            site.conflicts().expect("site")
        ),
        (1, 1)
    );

    // Replaced once more at the site, after both: a replacement, not a new conflict.
    let c = write(&site, "c", b"c");
    let c1 = site
        .replace_document(&actor, &c, doc("c v2", b"c2"))
        .expect("replace");
    let c2 = site
        .replace_document(&actor, &c, doc("c v3", b"c3"))
        .expect("replace again");
    sync(&host, &site);
    let replaced = metas(&host)
        .into_iter()
        .find(|m| m.facts.id == c)
        .expect("c at the host");
    assert_eq!(replaced.state().successors.len(), 2, "{c1} and {c2}");
    assert!(!replaced.has_replacement_conflict());
    assert_eq!(
        (
            host.conflicts().expect("host"),
            site.conflicts().expect("site")
        ),
        (1, 1)
    );
    assert_eq!(site.conflicted().expect("listed"), vec![b]);
    assert_eq!(host.conflicted().expect("listed"), vec![b]);

    // Counting and naming them opens no sealed row: with another document's metadata
    // damaged, both still answer (and reading that document does not).
    let stored = site.stored_id(&c);
    let original = {
        let txn = site.begin_read().expect("read");
        let row = txn
            .open_table(DOCS)
            .expect("docs")
            .get(&stored)
            .expect("get");
        row.expect("c's row").value().to_vec()
    };
    let put = |value: &[u8]| {
        let txn = site.begin_raw_write().expect("write");
        site.digested(&txn, DOCS)
            .expect("docs")
            .insert(&stored, value)
            .expect("insert");
        txn.commit().expect("commit");
    };
    let mut damaged: StoredDoc = postcard::from_bytes(&original).expect("row");
    damaged.sealed[0] ^= 1;
    put(&postcard::to_stdvec(&damaged).expect("row"));
    assert!(
        site.read_document(&actor, &c, AccessMode::Normal, None)
            .is_err()
    );
    assert_eq!(site.conflicts().expect("counted"), 1);
    assert_eq!(site.conflicted().expect("named"), vec![b]);
    put(&original);
}

#[test]
fn apply_remote_is_exactly_once_and_refuses_gaps() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "one", b"1");
    write(&site, "two", b"2");
    let changes = site.outbox(0, 10).expect("outbox");
    assert_eq!(changes.len(), 2);
    let origin = site.config().site_id;
    assert!(
        host.apply_remote(origin, changes[1].0, &changes[1].1)
            .is_err(),
        "gap refused"
    );
    assert_eq!(
        host.apply_remote(origin, changes[0].0, &changes[0].1).ok(),
        Some(Applied::Applied)
    );
    assert_eq!(
        host.apply_remote(origin, changes[0].0, &changes[0].1).ok(),
        Some(Applied::Duplicate)
    );
    assert_eq!(
        host.apply_remote(origin, changes[1].0, &changes[1].1).ok(),
        Some(Applied::Applied)
    );
    site.ack_outbox(changes[1].0).expect("ack");
    assert_eq!(site.outbox_len().expect("len"), 0);
    write(&site, "three", b"3");
    let next = site.outbox(0, 10).expect("outbox");
    assert_eq!(
        next[0].0,
        changes[1].0 + 1,
        "sequence numbers are never reused"
    );
}

#[test]
fn bodies_for_sync_reads_the_bodies_held_in_one_go_and_skips_the_others() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "one", b"first body");
    write(&site, "two", b"second body");
    let changes = site.outbox(0, 10).expect("outbox");
    let metas: Vec<&crate::merge::DocumentMeta> = changes
        .iter()
        .filter_map(|(_, c)| match c {
            Change::Document { meta, .. } => Some(&**meta),
            _ => None,
        })
        .collect();
    assert_eq!(metas.len(), 2);
    let bodies = site.bodies_for_sync(&metas).expect("read");
    let bodies: Vec<Option<&[u8]>> = bodies.iter().map(|b| b.as_ref().map(|b| &b[..])).collect();
    assert_eq!(
        bodies,
        [Some(&b"first body"[..]), Some(&b"second body"[..])]
    );
    // The host takes the metadata without the bodies: it has none to send.
    host.apply_remote_batch(site.config().site_id, &changes)
        .expect("apply");
    let at_host = host.bodies_for_sync(&metas).expect("read");
    assert!(at_host.iter().all(Option::is_none));
}

#[test]
fn concurrent_audited_reads_are_all_traced() {
    let (_hd, host, _sd, _site) = host_and_site();
    let id = write(&host, "doc", b"body");
    let host = Arc::new(host);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    host.read_document(
                        &Actor::Professional(doctor()),
                        &id,
                        AccessMode::Normal,
                        None,
                    )
                    .expect("read");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let reads = host
        .audit_entries(Some(&ins()))
        .expect("audit")
        .iter()
        .filter(|c| c.entry.action == crate::audit::TraceAction::Access(Action::Read))
        .count();
    assert_eq!(reads, 160);
    host.verify_audit().expect("chain intact");
}

#[test]
fn the_meta_table_is_authenticated_and_an_older_replica_gets_it_at_open() {
    let d = TempDir::new().expect("tmp");
    drop(init(&d, Role::Site, Some(3)));
    let edit = |key: &str, value: Option<&[u8]>| {
        let db = open_raw(d.path().join(DB_FILE));
        let txn = db.begin_write().expect("txn");
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
    let open = || open_at(d.path(), &KeySource::File, clock());
    let original = {
        let db = open_raw(d.path().join(DB_FILE));
        let txn = db.begin_read().expect("txn");
        let meta = txn.open_table(META).expect("meta");
        meta.get(meta_key::AUTHORITY_AS_OF)
            .expect("get")
            .map(|v| v.value().to_vec())
    };
    // The lease's "current as of" moved forward by someone without the key: refused.
    edit(
        meta_key::AUTHORITY_AS_OF,
        Some(i64::MAX.to_le_bytes().as_slice()),
    );
    assert!(matches!(open(), Err(Error::Integrity(_))));
    edit(meta_key::AUTHORITY_AS_OF, original.as_deref());
    let r = open().expect("as it was");
    // A replica made before the authentication: its check says so, and it has no hash yet.
    {
        let txn = r.begin_raw_write().expect("txn");
        {
            let mut meta = txn.open_table(META).expect("meta");
            let mut keyring: Keyring = postcard::from_bytes(
                meta.get(meta_key::KEYRING)
                    .expect("get")
                    .expect("keyring")
                    .value(),
            )
            .expect("keyring");
            keyring.check = r
                .keys
                .master
                .read()
                .expect("lock")
                .current
                .seal(b"check", KEY_CHECK)
                .expect("seal");
            meta.insert(
                meta_key::KEYRING,
                postcard::to_stdvec(&keyring).expect("enc").as_slice(),
            )
            .expect("insert");
        }
        txn.commit().expect("commit");
    }
    drop(r);
    edit(STATE_MAC, None);
    drop(open().expect("an older replica opens, and is authenticated from now on"));
    edit(meta_key::PULL_CURSOR, Some(7u64.to_le_bytes().as_slice()));
    assert!(matches!(open(), Err(Error::Integrity(_))));
}

#[test]
fn newer_format_is_refused() {
    let d = TempDir::new().expect("tmp");
    drop(init(&d, Role::Site, None));
    {
        let db = open_raw(d.path().join(DB_FILE));
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(meta_key::FORMAT, 99u32.to_le_bytes().as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = open_at(d.path(), &KeySource::File, clock()).expect_err("refused");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("newer")),
        "{err}"
    );
}

#[test]
fn rotation_rewraps_keys_and_passphrases_are_checked() {
    let d = TempDir::new().expect("tmp");
    let pass = |p: &str| KeySource::Passphrase(Zeroizing::new(p.to_string()));
    let host = Replica::init(
        d.path(),
        InitOptions {
            role: Role::Host,
            name: "h".into(),
            site_id: None,
            key: pass("first"),
            host_key: None,
            lease_hours: None,
        },
        clock(),
    )
    .expect("init");
    dossier_for_the_doctor(&host);
    let id = write(&host, "doc", b"body");
    host.rotate_master_key(&pass("second")).expect("rotate");
    drop(host);
    assert!(matches!(
        open_at(d.path(), &pass("first"), clock()),
        Err(Error::Key(_))
    ));
    assert!(matches!(
        open_at(d.path(), &KeySource::File, clock()),
        Err(Error::Key(_))
    ));
    let host = open_at(d.path(), &pass("second"), clock()).expect("open");
    let actor = Actor::Professional(doctor());
    assert_eq!(
        &host
            .read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read")
            .body[..],
        b"body"
    );
    // Back to a key file.
    host.rotate_master_key(&KeySource::File)
        .expect("rotate to file");
    drop(host);
    let host = open_at(d.path(), &KeySource::File, clock()).expect("open with file");
    assert_eq!(
        &host
            .read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read")
            .body[..],
        b"body"
    );
}

#[test]
fn closure_on_a_site_purges_and_leaves_a_receipt() {
    let (_hd, host, _sd, site) = host_and_site();
    let id = write(&site, "doc", b"secret body");
    host.close_dossier(&ins(), "holder's request", true)
        .expect("close");
    let report = site
        .import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert_eq!(report.purged, 1);
    assert!(!site.has_dossier_key(&ins()).expect("key"));
    assert!(site.purge_receipt(&ins()).expect("receipt").is_some());
    let err = site
        .read_document(
            &Actor::Professional(doctor()),
            &id,
            AccessMode::Normal,
            None,
        )
        .expect_err("gone");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(site.body_for_sync(&id).is_err());
    site.verify_audit().expect("trace intact after purge");
    // The host archives: access is denied (row 1), the documents are kept until purge.
    let err = host
        .list_documents(&Actor::Professional(doctor()), &ins())
        .expect_err("closed");
    assert!(matches!(err, Error::Denied { rule: 1, .. }), "{err}");
    host.purge_dossier(&ins()).expect("purge");
    assert!(!host.has_dossier_key(&ins()).expect("key"));
}

#[test]
fn a_denied_batch_writes_nothing_but_traces() {
    let (_hd, host, _sd, _site) = host_and_site();
    let stranger = Actor::Professional(Rpps::parse("19999999999").expect("rpps"));
    let before = host.outbox_len().expect("len");
    let err = host
        .put_documents(
            &stranger,
            AccessMode::Normal,
            None,
            vec![(ins(), doc("x", b"x"))],
        )
        .expect_err("denied");
    assert!(matches!(err, Error::Denied { rule: 12, .. }), "{err}");
    assert_eq!(host.outbox_len().expect("len"), before);
    let last = host
        .audit_entries(None)
        .expect("audit")
        .pop()
        .expect("entry");
    assert!(!last.entry.allowed && last.entry.rule == 12);
}

#[test]
fn a_returned_change_does_not_block_the_stream() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "before closure", b"1");
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    write(&site, "written offline after the closure", b"2");
    let changes = site.outbox(0, 10).expect("outbox");
    let origin = site.config().site_id;
    for (seq, change) in &changes {
        assert_eq!(
            host.apply_remote(origin, *seq, change).ok(),
            Some(Applied::Returned)
        );
    }
    // The mark moved on: a replay is a duplicate, not a gap.
    assert_eq!(
        host.apply_remote(origin, changes[0].0, &changes[0].1).ok(),
        Some(Applied::Duplicate)
    );
}

#[test]
fn an_interrupted_site_purge_finishes_at_the_next_open() {
    let (_hd, host, sd, site) = host_and_site();
    let id = write(&site, "doc", b"secret body");
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    // Admit the closure as an import would, then "crash" before the purge.
    let bundle = host.export_authority().expect("export");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bundle.host_key).expect("key");
    {
        let txn = site.begin_write().expect("txn");
        for r in &bundle.records {
            let v = crate::authority::verify(&key, r).expect("verify");
            site.admit(&txn, r, &v).expect("admit");
        }
        txn.commit().expect("commit");
    }
    assert!(site.has_dossier_key(&ins()).expect("key"), "not purged yet");
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    assert!(!site.has_dossier_key(&ins()).expect("key"));
    assert!(site.purge_receipt(&ins()).expect("receipt").is_some());
    assert!(site.body_for_sync(&id).is_err());
}

#[test]
fn a_purged_ins_cannot_be_recreated_by_accident() {
    let (_hd, host, _sd, _site) = host_and_site();
    host.close_dossier(&ins(), "holder's request", true)
        .expect("close");
    host.purge_dossier(&ins()).expect("purge");
    let again = host.create_dossier(new_dossier(ins()));
    assert!(matches!(again, Err(Error::Invalid(_))));
    // The published purge record is what sites that missed the closure need.
    let bundle = host.export_authority().expect("export");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bundle.host_key).expect("key");
    assert!(bundle.records.iter().any(|r| matches!(
        crate::authority::verify(&key, r).map(|v| v.record),
        Ok(crate::authority::AuthorityRecord::Purged { .. })
    )));
}

#[test]
fn past_its_lease_a_site_reads_only_by_break_glass() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let moving: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let (hd, host, sd, _site) = host_and_site();
    drop(_site);
    let site = open_at(sd.path(), &KeySource::File, moving).expect("reopen");
    let id = write(&site, "doc", b"body");
    let doctor_actor = Actor::Professional(doctor());
    assert!(
        site.read_document(&doctor_actor, &id, AccessMode::Normal, None)
            .is_ok()
    );
    now.fetch_add(73 * 3_600_000, Ordering::SeqCst);
    let err = site
        .read_document(&doctor_actor, &id, AccessMode::Normal, None)
        .expect_err("lease over");
    assert!(matches!(err, Error::Denied { rule: 4, .. }), "{err}");
    assert!(
        site.read_document(
            &doctor_actor,
            &id,
            AccessMode::BreakGlass,
            Some("unconscious")
        )
        .is_ok()
    );
    // Writing still works offline; a fresh heartbeat from the host restores normal reads.
    write(&site, "written past the lease", b"2");
    drop(host);
    let host = open_at(hd.path(), &KeySource::File, {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    })
    .expect("host");
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert!(
        site.read_document(&doctor_actor, &id, AccessMode::Normal, None)
            .is_ok()
    );
}

#[test]
fn a_sites_lease_can_be_set_and_holds_after_reopening() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let moving: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let (_hd, mut host, sd, site) = host_and_site();
    drop(site);
    assert!(host.set_lease_hours(5).is_err(), "the host has no lease");
    let mut site = open_at(sd.path(), &KeySource::File, moving.clone()).expect("open");
    assert!(site.set_lease_hours(0).is_err());
    site.set_lease_hours(2).expect("lease");
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, moving).expect("reopen");
    assert_eq!(site.config().lease_ms, Some(2 * 3_600_000));
    let id = write(&site, "doc", b"body");
    let actor = Actor::Professional(doctor());
    assert!(
        site.read_document(&actor, &id, AccessMode::Normal, None)
            .is_ok()
    );
    // Three hours without news: past this site's two-hour lease, well within the default.
    now.fetch_add(3 * 3_600_000, Ordering::SeqCst);
    let err = site
        .read_document(&actor, &id, AccessMode::Normal, None)
        .expect_err("lease over");
    assert!(matches!(err, Error::Denied { rule: 4, .. }), "{err}");
}

#[test]
fn a_clock_set_back_ends_the_lease_until_the_host_vouches_again() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let moving: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let (hd, host, sd, site) = host_and_site();
    drop((host, site));
    let site = open_at(sd.path(), &KeySource::File, moving.clone()).expect("reopen");
    let host = open_at(hd.path(), &KeySource::File, moving).expect("host");
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    let id = write(&site, "doc", b"body");
    let actor = Actor::Professional(doctor());
    // Two days on, within the 72-hour lease: the site commits, and so records the time.
    now.fetch_add(48 * 3_600_000, Ordering::SeqCst);
    write(&site, "two days later", b"2");
    assert!(
        site.read_document(&actor, &id, AccessMode::Normal, None)
            .is_ok()
    );
    // The clock set back a day: the heartbeat looks a day old, but the site saw later times.
    now.fetch_sub(24 * 3_600_000, Ordering::SeqCst);
    let err = site
        .read_document(&actor, &id, AccessMode::Normal, None)
        .expect_err("a clock set back keeps no lease running");
    assert!(matches!(err, Error::Denied { rule: 4, .. }), "{err}");
    assert!(site.authority_freshness().expect("freshness").1);
    assert!(
        site.read_document(&actor, &id, AccessMode::BreakGlass, Some("unconscious"))
            .is_ok()
    );
    // A few minutes back is within the skew a heartbeat is allowed, and reads go on.
    now.fetch_add(24 * 3_600_000 - 4 * 60_000, Ordering::SeqCst);
    assert!(
        site.read_document(&actor, &id, AccessMode::Normal, None)
            .is_ok()
    );
    // A clock once ahead (set back afterwards) is corrected by the host's signed time.
    now.fetch_add(30 * 24 * 3_600_000, Ordering::SeqCst);
    write(&site, "a month ahead by mistake", b"3");
    now.fetch_sub(30 * 24 * 3_600_000, Ordering::SeqCst);
    assert!(
        site.read_document(&actor, &id, AccessMode::Normal, None)
            .is_err()
    );
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert!(
        site.read_document(&actor, &id, AccessMode::Normal, None)
            .is_ok()
    );
}

/// Rows in the `AUDIT` table (entries still journaled are not there yet).
fn in_table(r: &Replica) -> u64 {
    use crate::kv::ReadableTableMetadata;
    let txn = r.begin_read().expect("read");
    txn.open_table(AUDIT).expect("audit").len().expect("len")
}

/// Copies a data folder as it is on disk right now: what a power cut would leave.
fn crash_image(from: &std::path::Path) -> TempDir {
    fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
        for entry in std::fs::read_dir(from).expect("dir") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            if path.is_dir() {
                // The body segments.
                std::fs::create_dir(&target).expect("folder");
                copy_folder(&path, &target);
            } else {
                std::fs::copy(&path, target).expect("copy");
            }
        }
    }
    let to = TempDir::new().expect("tmp");
    copy_folder(from, to.path());
    // A host whose tables are in PostgreSQL: the image is its folder at that moment, beside
    // the same database (which keeps every commit).
    let storage = databases().get(from).cloned();
    if let Some(storage) = storage {
        databases().insert(to.path().to_owned(), storage);
    }
    to
}

/// Whether the suite's hosts keep their tables in PostgreSQL (`HOST_STORAGE_ENV`). Tests of
/// what is in the host's redb file (its bytes, its durability, a table removed from it, a
/// crash image that copies the file and then goes on beside the original) have nothing to
/// check there, and a full key rotation (`rekey`) works on a redb file only: those tests
/// return at once. `a_host_on_postgres_serves_a_site_and_a_row_put_back_is_refused` is the
/// PostgreSQL side of the put-back tests.
fn hosts_in_postgres() -> bool {
    std::env::var(HOST_STORAGE_ENV).as_deref() == Ok("postgres")
}

#[test]
fn asynchronous_reads_answer_the_same_and_are_all_traced() {
    use crate::audit::tests::block_on;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_hd, host, _sd, _site) = host_and_site();
    let id = write(&host, "doc", b"body");
    let host = Arc::new(host);
    let running = Arc::new(AtomicBool::new(true));
    let committer = {
        let (host, running) = (host.clone(), running.clone());
        std::thread::spawn(move || host.run_trace_committer(&running))
    };
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let read = block_on(host.read_document_async(
                        &Actor::Professional(doctor()),
                        &id,
                        AccessMode::Normal,
                        None,
                    ))
                    .expect("read");
                    assert_eq!(&read.body[..], b"body");
                }
            })
        })
        .collect();
    for t in readers {
        t.join().expect("thread");
    }
    // Denied: an error, and traced all the same.
    let denied = block_on(host.read_document_async(
        &Actor::Professional(nurse()),
        &id,
        AccessMode::Normal,
        None,
    ));
    assert!(matches!(denied, Err(Error::Denied { .. })), "{denied:?}");
    running.store(false, Ordering::SeqCst);
    committer.thread().unpark();
    committer.join().expect("committer");
    let entries = host.audit_entries(Some(&ins())).expect("audit");
    let reads = entries
        .iter()
        .filter(|c| c.entry.action == crate::audit::TraceAction::Access(Action::Read))
        .count();
    assert_eq!(reads, 161, "every read traced, the denied one too");
    host.verify_audit().expect("chain intact");
}

#[test]
fn journaled_traces_survive_a_crash() {
    let (_hd, host, _sd, _site) = host_and_site();
    let id = write(&host, "doc", b"body");
    let actor = Actor::Professional(doctor());
    for _ in 0..25 {
        host.read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read");
    }
    // The reads' traces are in the journal only: nothing has moved them into redb yet.
    let before = in_table(&host);
    let image = crash_image(host.dir());
    let recovered = open_at(image.path(), &KeySource::File, clock()).expect("recover");
    let reads = recovered
        .audit_entries(Some(&ins()))
        .expect("audit")
        .iter()
        .filter(|c| c.entry.action == crate::audit::TraceAction::Access(Action::Read))
        .count();
    assert_eq!(
        reads, 25,
        "every acknowledged read is traced after the crash"
    );
    assert_eq!(
        in_table(&recovered),
        before + 25,
        "they came from the journal"
    );
    recovered.verify_audit().expect("chain intact");
    // The original goes on, and a write after the reads keeps the chain in order.
    write(&host, "after", b"2");
    host.verify_audit().expect("chain intact");
}

#[test]
fn full_journal_epochs_move_into_the_store_while_reads_go_on() {
    use crate::audit::tests::block_on;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_hd, host, _sd, _site) = host_and_site();
    let id = write(&host, "doc", b"body");
    host.chain.lock().expect("chain").merge_at = 16;
    let before = in_table(&host);
    let host = Arc::new(host);
    let running = Arc::new(AtomicBool::new(true));
    let committer = {
        let (host, running) = (host.clone(), running.clone());
        std::thread::spawn(move || host.run_trace_committer(&running))
    };
    let read = |n: usize| {
        for _ in 0..n {
            let r = block_on(host.read_document_async(
                &Actor::Professional(doctor()),
                &id,
                AccessMode::Normal,
                None,
            ))
            .expect("read");
            assert_eq!(&r.body[..], b"body");
        }
    };
    read(100);
    // No write transaction ran: only the mover brings entries into the table.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_table(&host) < before + 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mover moved no sealed epoch"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    read(60);
    running.store(false, Ordering::SeqCst);
    committer.thread().unpark();
    committer.join().expect("committer");
    let reads_in = |r: &Replica| {
        r.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .filter(|c| c.entry.action == crate::audit::TraceAction::Access(Action::Read))
            .count()
    };
    // A power cut now: whatever is still journaled (sealed or active) is recovered in order.
    let image = crash_image(host.dir());
    let recovered = open_at(image.path(), &KeySource::File, clock()).expect("recover");
    assert_eq!(reads_in(&recovered), 160, "every read traced once");
    recovered.verify_audit().expect("chain intact");
    // The original goes on: a write after the reads keeps the chain in order.
    write(&host, "after", b"2");
    assert_eq!(reads_in(&host), 160);
    host.verify_audit().expect("chain intact");
}

#[test]
fn a_sealed_epoch_moves_once_whoever_moves_it() {
    if hosts_in_postgres() {
        return;
    }
    let (_hd, host, _sd, _site) = host_and_site();
    let id = write(&host, "doc", b"body");
    host.chain.lock().expect("chain").merge_at = 8;
    // A mover is registered (this thread, which moves by hand below): the leader seals.
    *host.mover.lock().expect("mover") = Some(std::thread::current());
    let before = in_table(&host);
    let actor = Actor::Professional(doctor());
    let read = |n: usize| {
        for _ in 0..n {
            host.read_document(&actor, &id, AccessMode::Normal, None)
                .expect("read");
        }
    };
    read(12);
    let sealed = host
        .chain
        .lock()
        .expect("chain")
        .sealed
        .clone()
        .expect("the full epoch was sealed");
    assert_eq!(sealed.records.len(), 8);
    assert_eq!(in_table(&host), before, "the leader moved nothing itself");
    // A power cut with a sealed epoch and an active one: both are recovered, in order.
    let image = crash_image(host.dir());
    let recovered = open_at(image.path(), &KeySource::File, clock()).expect("recover");
    assert_eq!(in_table(&recovered), before + 12);
    recovered.verify_audit().expect("chain intact");
    // The mover's move: the sealed records only.
    host.move_sealed(&sealed).expect("move");
    assert_eq!(in_table(&host), before + 8);
    assert!(host.chain.lock().expect("chain").sealed.is_none());
    // A writer that moves a sealed epoch first leaves the mover nothing to do.
    read(8);
    let sealed = host.chain.lock().expect("chain").sealed.clone();
    let sealed = sealed.expect("the next full epoch was sealed");
    write(&host, "after", b"2");
    let moved = in_table(&host);
    assert_eq!(
        moved,
        before + 20 + 1,
        "every read and the write's own entry"
    );
    host.move_sealed(&sealed).expect("a late move");
    assert_eq!(in_table(&host), moved, "nothing written twice");
    host.verify_audit().expect("chain intact");
    let image = crash_image(host.dir());
    let recovered = open_at(image.path(), &KeySource::File, clock()).expect("recover");
    assert_eq!(in_table(&recovered), moved);
    recovered.verify_audit().expect("chain intact");
}

#[test]
fn a_producers_unique_id_is_recognised_and_not_reused() {
    let (_hd, host, _sd, _site) = host_and_site();
    let mut d = doc("lab report", b"1");
    d.unique_id = Some("urn:oid:1.2.3.4.5".into());
    let actor = Actor::Professional(doctor());
    let id = host
        .put_document(&actor, AccessMode::Normal, None, &ins(), d.clone())
        .expect("put");
    assert_eq!(
        host.find_by_unique_id(&ins(), "urn:oid:1.2.3.4.5").ok(),
        Some(Some(id))
    );
    assert_eq!(
        host.find_by_unique_id(&ins(), "urn:oid:other").ok(),
        Some(None)
    );
    let again = host.put_document(&actor, AccessMode::Normal, None, &ins(), d);
    assert!(matches!(again, Err(Error::Invalid(_))), "{again:?}");
    host.close_dossier(&ins(), "x", true).expect("close");
    host.purge_dossier(&ins()).expect("purge");
    assert_eq!(
        host.find_by_unique_id(&ins(), "urn:oid:1.2.3.4.5").ok(),
        Some(None)
    );
}

#[test]
fn only_a_documents_exact_own_id_counts_as_its_own() {
    let id = DocId::mint(1_700_000_000_000);
    let own = format!("urn:carnet:{id}");
    assert!(is_own_unique_id(&id, &own));
    assert!(!is_own_unique_id(&id, &own.to_uppercase()));
    assert!(!is_own_unique_id(&id, &own[..own.len() - 1]));
    assert!(!is_own_unique_id(&id, &format!("{own}0")));
    assert!(!is_own_unique_id(&id, &format!("urn:oid:{id}")));
    assert!(!is_own_unique_id(&DocId::mint(1_700_000_000_001), &own));
}

#[test]
fn a_documents_own_unique_id_names_it_without_an_index_row() {
    let (_hd, host, _sd, site) = host_and_site();
    let actor = Actor::Professional(doctor());
    let id = write(&site, "no producer id", b"body");
    sync(&host, &site);
    let own = format!("urn:carnet:{id}");
    for r in [&site, &host] {
        assert_eq!(r.find_by_unique_id(&ins(), &own).ok(), Some(Some(id)));
        let txn = r.begin_read().expect("read");
        let rows = txn
            .open_table(UNIQUE_IDS)
            .expect("table")
            .iter()
            .expect("rows")
            .count();
        assert_eq!(rows, 0, "the document id is its index");
    }
    // Not a prefix match, and not in another dossier.
    assert_eq!(
        site.find_by_unique_id(&ins(), &own[..own.len() - 1]).ok(),
        Some(None)
    );
    let other = Ins::from_body("2840575123456").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    assert_eq!(host.find_by_unique_id(&other, &own).ok(), Some(None));
    // A producer cannot give it to another document of the dossier.
    let mut copy = doc("copy", b"other");
    copy.unique_id = Some(own.clone());
    let taken = site.put_document(&actor, AccessMode::Normal, None, &ins(), copy);
    assert!(matches!(taken, Err(Error::Invalid(_))), "{taken:?}");
    // A document filed under a producer's id does not answer to its own: that id is free.
    let mut filed = doc("lab", b"lab");
    filed.unique_id = Some("urn:oid:1.2.3.4.6".into());
    let lab = site
        .put_document(&actor, AccessMode::Normal, None, &ins(), filed)
        .expect("put");
    let lab_own = format!("urn:carnet:{lab}");
    assert_eq!(site.find_by_unique_id(&ins(), &lab_own).ok(), Some(None));
    let mut reimport = doc("re-import", b"lab");
    reimport.unique_id = Some(lab_own.clone());
    let again = site
        .put_document(&actor, AccessMode::Normal, None, &ins(), reimport)
        .expect("a free id");
    assert_eq!(
        site.find_by_unique_id(&ins(), &lab_own).ok(),
        Some(Some(again))
    );
}

#[test]
fn a_site_receives_what_enters_its_scope_and_purges_what_leaves_it() {
    let (_hd, host, _sd, site) = host_and_site();
    let nurse_actor = Actor::Professional(nurse());
    // A second dossier, unknown to the site, where the site's nurse is then granted.
    let other = Ins::from_body("2900101123456").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    let id = host
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &other,
            {
                let mut d = doc("care plan", b"plan body");
                d.type_code = "11490-0".into();
                d
            },
        )
        .expect("host writes");
    sync(&host, &site);
    assert!(site.dossier(&other).is_err(), "not in the site's scope yet");
    host.set_grant(
        &other,
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        None,
    )
    .expect("grant");
    sync(&host, &site);
    assert_eq!(
        &site
            .read_document(&nurse_actor, &id, AccessMode::Normal, None)
            .expect("read at the site")
            .body[..],
        b"plan body"
    );
    // A sync with nothing new moves nothing.
    let cursor = site.pull_cursor().expect("cursor");
    assert!(
        host.pull(site.config().site_id, cursor, 100)
            .expect("pull")
            .is_empty()
    );
    // The grant is revoked: the dossier leaves the scope and the site purges it.
    host.set_grant(
        &other,
        &nurse(),
        GrantState::Revoked,
        GrantBasis::CareTeam,
        None,
    )
    .expect("revoke");
    sync(&host, &site);
    assert!(!site.has_dossier_key(&other).expect("key"));
    assert!(
        site.read_document(&nurse_actor, &id, AccessMode::Normal, None)
            .is_err()
    );
    // The site's purge receipt reaches the host at the next round.
    sync(&host, &site);
    let receipts = host.site_purge_receipts(&other).expect("receipts");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].0, site.config().site_id);
    // The first dossier (the doctor's) is untouched.
    assert!(site.has_dossier_key(&ins()).expect("key"));
}

#[test]
fn pulled_records_are_verified() {
    let (_hd, host, _sd, site) = host_and_site();
    host.update_emergency(&ins(), |p| p.btg_allowed = false)
        .expect("emergency");
    let mut items = host
        .pull(
            site.config().site_id,
            site.pull_cursor().expect("cursor"),
            100,
        )
        .expect("pull");
    assert!(!items.is_empty());
    for (_, item) in items.iter_mut() {
        if let PullItem::Authority(signed) = item {
            let last = signed.body.len() - 1;
            signed.body[last] ^= 1;
        }
    }
    assert!(matches!(site.apply_pull(&items), Err(Error::Integrity(_))));
}

/// How many refusals of a site's trace the host traced.
fn trace_refusals(host: &Replica) -> usize {
    host.audit_entries(None)
        .expect("audit")
        .iter()
        .filter(|c| c.entry.action == TraceAction::Admin("trace-refused".into()))
        .count()
}

/// The head of `records` as a site signs it; the store keeps it without checking the signature
/// (the sync layer checks it against the site's certificate).
fn signed(records: &[TraceRecord]) -> Option<TraceHeadEvidence> {
    records.last().map(|last| TraceHeadEvidence {
        head: SignedTraceHead {
            seq: last.seq,
            hash: last.hash,
            signature: vec![1; 64],
        },
        signer: b"certificate".to_vec(),
    })
}

#[test]
fn a_sites_trace_is_taken_only_with_a_signed_head_of_its_last_entry_which_the_host_keeps() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "doc", b"1");
    let origin = site.config().site_id;
    let records = site.traces_after(0, 100).expect("traces");
    assert!(records.len() >= 2);
    host.admit_chain_key(origin, &site.trace_chain_key())
        .expect("key");
    // Unsigned, or signed for another entry than the last: refused, traced, nothing stored.
    assert!(matches!(
        host.apply_remote_traces(origin, &records, None),
        Err(Error::Integrity(_))
    ));
    let mut other = signed(&records[..1]);
    assert!(matches!(
        host.apply_remote_traces(origin, &records, other.as_ref()),
        Err(Error::Integrity(_))
    ));
    assert_eq!(host.trace_mark(origin).ok(), Some(0));
    assert_eq!(host.signed_trace_head(origin).ok(), Some(None));
    assert_eq!(trace_refusals(&host), 2);
    // Signed: stored, and the signed head kept with its signer.
    host.apply_remote_traces(origin, &records[..1], other.as_ref())
        .expect("first entry");
    assert_eq!(host.signed_trace_head(origin).ok(), Some(other.clone()));
    let last = signed(&records);
    host.apply_remote_traces(origin, &records, last.as_ref())
        .expect("the rest");
    assert_eq!(host.signed_trace_head(origin).ok(), Some(last.clone()));
    // An older head sent again (a resent batch) does not replace the newer one.
    if let Some(o) = other.as_mut() {
        o.signer = b"another".to_vec();
    }
    host.apply_remote_traces(origin, &records[..1], other.as_ref())
        .expect("a resend");
    assert_eq!(host.signed_trace_head(origin).ok(), Some(last));
    // An empty batch needs no head.
    assert!(host.apply_remote_traces(origin, &[], None).is_ok());
}

#[test]
fn a_sites_trace_reaches_the_host_once_and_in_order() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "doc", b"1");
    let origin = site.config().site_id;
    let records = site.traces_after(0, 100).expect("traces");
    assert!(records.len() >= 2);
    assert!(
        host.apply_remote_traces(origin, &records, signed(&records).as_ref())
            .is_err(),
        "no entry before the site's chain key"
    );
    host.admit_chain_key(origin, &site.trace_chain_key())
        .expect("key");
    assert!(
        host.apply_remote_traces(origin, &records[1..], signed(&records[1..]).as_ref())
            .is_err(),
        "a gap is refused"
    );
    assert_eq!(host.trace_mark(origin).ok(), Some(0));
    let mark = host
        .apply_remote_traces(origin, &records, signed(&records).as_ref())
        .expect("apply");
    assert_eq!(mark, records.last().expect("last").seq);
    assert_eq!(
        host.apply_remote_traces(origin, &records, signed(&records).as_ref())
            .ok(),
        Some(mark),
        "a replay is a no-op"
    );
    host.verify_audit().expect("verifies");
    let held = host
        .audit_entries(None)
        .expect("audit")
        .iter()
        .filter(|c| c.entry.origin == origin)
        .count();
    assert_eq!(held, records.len());
}

#[test]
fn the_host_checks_a_sites_trace_as_a_chain_and_refuses_a_rewritten_history() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "doc", b"1");
    let origin = site.config().site_id;
    let records = site.traces_after(0, 100).expect("traces");
    host.admit_chain_key(origin, &site.trace_chain_key())
        .expect("key");
    // An entry altered on the way (or by the site) does not chain: nothing is stored.
    let mut forged = records.clone();
    forged[1].entry.allowed = !forged[1].entry.allowed;
    assert!(matches!(
        host.apply_remote_traces(origin, &forged, signed(&forged).as_ref()),
        Err(Error::Integrity(_))
    ));
    assert_eq!(host.trace_mark(origin).ok(), Some(0));
    assert_eq!(trace_refusals(&host), 1, "the refusal is traced");
    // The real chain is stored; sent again unchanged it is a no-op, rewritten it is refused.
    let mark = host
        .apply_remote_traces(origin, &records, signed(&records).as_ref())
        .expect("apply");
    assert_eq!(
        host.apply_remote_traces(origin, &records, signed(&records).as_ref())
            .ok(),
        Some(mark)
    );
    assert!(matches!(
        host.apply_remote_traces(origin, &forged, signed(&forged).as_ref()),
        Err(Error::Integrity(_))
    ));
    assert_eq!(trace_refusals(&host), 2);
    // A site cannot present another chain key later (a history started again).
    assert!(matches!(
        host.admit_chain_key(origin, &[9; 32]),
        Err(Error::Integrity(_))
    ));
    host.admit_chain_key(origin, &site.trace_chain_key())
        .expect("the same key again");
    // The host verifies the site's stored chain under its key.
    let (_, entries) = host.verify_audit().expect("verifies");
    assert!(entries >= records.len() as u64);
}

#[test]
fn an_emergency_fetch_is_decided_at_the_host_and_ends_by_itself() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    // A patient the site has never seen, a document the host holds.
    let other = Ins::from_body("2900101123456").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    let id = host
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &other,
            doc("allergies", b"penicillin (synthetic)"),
        )
        .expect("host writes");
    let break_glass = |r: &Replica| {
        r.read_document(
            &Actor::Professional(doctor()),
            &id,
            AccessMode::BreakGlass,
            Some("unconscious"),
        )
    };
    // Refused at the site without a reason, and with nothing to fetch for a normal read.
    assert!(
        site.request_emergency_fetch(&other, &doctor(), AccessMode::BreakGlass, " ")
            .is_err()
    );
    assert!(
        site.request_emergency_fetch(&other, &doctor(), AccessMode::Normal, "x")
            .is_err()
    );
    // The holder opposed break-glass: the host refuses, traces it, and sends nothing.
    host.update_emergency(&other, |p| p.btg_allowed = false)
        .expect("oppose");
    site.request_emergency_fetch(&other, &doctor(), AccessMode::BreakGlass, "unconscious")
        .expect("asked");
    sync(&host, &site);
    assert!(site.dossier(&other).is_err(), "refused: nothing came");
    let decided = |allowed: bool| {
        host.audit_entries(Some(&other))
            .expect("audit")
            .iter()
            .filter(|c| c.entry.mode == AccessMode::BreakGlass && c.entry.allowed == allowed)
            .count()
    };
    assert_eq!(decided(false), 1);
    // Allowed: the dossier comes, and the doctor breaks glass on it at the site.
    host.update_emergency(&other, |p| p.btg_allowed = true)
        .expect("allow");
    site.request_emergency_fetch(&other, &doctor(), AccessMode::BreakGlass, "unconscious")
        .expect("asked");
    sync(&host, &site);
    assert_eq!(decided(true), 1);
    assert_eq!(
        &break_glass(&site).expect("read").body[..],
        b"penicillin (synthetic)"
    );
    assert!(
        site.read_document(&Actor::Professional(nurse()), &id, AccessMode::Normal, None)
            .is_err(),
        "no grant: no normal read"
    );
    // A day later the emergency is over: the dossier leaves the site.
    assert_eq!(host.expire_emergency_access().expect("timer"), 0);
    now.fetch_add(super::EMERGENCY_VALID, Ordering::SeqCst);
    site.import_authority(&host.export_authority().expect("export"))
        .expect("fresh records");
    assert_eq!(host.expire_emergency_access().expect("timer"), 1);
    sync(&host, &site);
    assert!(!site.has_dossier_key(&other).expect("key"), "purged");
}

#[test]
fn an_emergency_fetch_for_a_professional_the_host_does_not_bind_is_refused() {
    let (_hd, host, _sd, site) = host_and_site();
    let other = Ins::from_body("2900101123456").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    let stranger = Rpps::parse("19999999999").expect("rpps");
    site.add_professional(&Professional {
        rpps: stranger.clone(),
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    })
    .expect("pro");
    site.request_emergency_fetch(&other, &stranger, AccessMode::Centre15, "call 15")
        .expect("asked");
    sync(&host, &site);
    assert!(site.dossier(&other).is_err());
    assert!(
        host.audit_entries(Some(&other))
            .expect("audit")
            .iter()
            .any(|c| c.entry.mode == AccessMode::Centre15 && !c.entry.allowed)
    );
}

#[test]
fn a_pinned_dossier_comes_to_the_site_and_leaves_when_unpinned() {
    let (_hd, host, _sd, site) = host_and_site();
    let tomorrow = Ins::from_body("1751299123456").expect("ins");
    host.create_dossier(new_dossier(tomorrow.clone()))
        .expect("dossier");
    site.pin(&tomorrow, true).expect("pin");
    sync(&host, &site);
    assert!(
        site.dossier(&tomorrow).is_err(),
        "a pin is a request: nothing comes before the host accepts it"
    );
    let requests = host.site_requests().expect("requests");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (requests[0].kind, requests[0].site, &requests[0].ins),
        (super::RequestKind::Pin, SiteId(7), &tomorrow)
    );
    host.decide_pin(SiteId(7), &tomorrow, true).expect("accept");
    assert!(host.site_requests().expect("requests").is_empty());
    sync(&host, &site);
    assert!(
        site.dossier(&tomorrow).is_ok(),
        "pinned and accepted: in the site's scope"
    );
    site.pin(&tomorrow, false).expect("unpin");
    sync(&host, &site);
    assert!(
        !site.has_dossier_key(&tomorrow).expect("key"),
        "unpinned: purged"
    );
    // Pinning a dossier the host does not know is returned, not an error.
    site.pin(&Ins::from_body("1751299999999").expect("ins"), true)
        .expect("pin");
    sync(&host, &site);
    assert!(host.pin(&tomorrow, true).is_err(), "the host pins nothing");
}

#[test]
fn out_of_scope_means_nothing_is_served_even_on_request() {
    let (_hd, host, _sd, site) = host_and_site();
    let site_id = site.config().site_id;
    let other = Ins::from_body("2900101123456").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    // In and out of scope before the site ever pulls: nothing of it is sent.
    host.set_grant(
        &other,
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        None,
    )
    .expect("grant");
    host.set_grant(
        &other,
        &nurse(),
        GrantState::Revoked,
        GrantBasis::CareTeam,
        None,
    )
    .expect("revoke");
    let later = host
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &other,
            doc("after", b"after"),
        )
        .expect("write");
    let items = host.pull(site_id, 0, usize::MAX).expect("pull from zero");
    let leaks = items.iter().any(|(_, item)| match item {
        PullItem::Document(m) => m.facts.ins == other,
        PullItem::Authority(s) => crate::authority::decode(s)
            .map(|v| v.record.ins() == Some(&other))
            .unwrap_or(false),
        PullItem::Leave(_) => false,
        PullItem::Withdraw { ins, .. } => ins == &other,
    });
    assert!(
        !leaks,
        "nothing of a dossier out of scope, whatever the cursor asked"
    );
    assert!(host.body_for_site(site_id, &later).is_err());
}

#[test]
fn every_write_retires_the_shared_read_view_so_no_read_misses_a_revocation() {
    let (_hd, host, _sd, site) = host_and_site();
    let actor = Actor::Professional(doctor());
    let read = |r: &Replica, id: &DocId| r.read_document(&actor, id, AccessMode::Normal, None);
    let id = write(&host, "doc", b"body");
    // Reads share one snapshot while nothing is written (their traces go to the journal); a
    // host on PostgreSQL, whose other daemons commit unheard, takes one per read.
    let view = host.shared_view().expect("view");
    read(&host, &id).expect("allowed");
    read(&host, &id).expect("allowed");
    assert_eq!(
        Arc::ptr_eq(&view, &host.shared_view().expect("view")),
        !hosts_in_postgres()
    );
    // The holder blocks the doctor (row 3: even the author is refused).
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Blocked,
        GrantBasis::Treating,
        None,
    )
    .expect("block");
    assert!(!Arc::ptr_eq(&view, &host.shared_view().expect("view")));
    assert!(matches!(read(&host, &id), Err(Error::Denied { .. })));
    // At a site, the block arrives with a sync: the read after it is refused too.
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )
    .expect("grant again");
    sync(&host, &site);
    read(&site, &id).expect("allowed at the site");
    let view = site.shared_view().expect("view");
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Blocked,
        GrantBasis::Treating,
        None,
    )
    .expect("block");
    sync(&host, &site);
    assert!(!Arc::ptr_eq(&view, &site.shared_view().expect("view")));
    assert!(read(&site, &id).is_err());
}

/// Lines of this crate's sources holding `needle`.
fn source_lines_with(needle: &str) -> Vec<String> {
    fn scan(dir: &std::path::Path, needle: &str, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                scan(&path, needle, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for (n, line) in text.lines().enumerate() {
                    if line.contains(needle) {
                        found.push(format!("{}:{}", path.display(), n + 1));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    scan(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        needle,
        &mut found,
    );
    found
}

#[test]
fn writes_begin_only_where_their_commit_retires_the_shared_read_view() {
    // `RawWrite::commit` retires the view; a transaction begun on a live replica's database
    // directly would commit around it and leave reads on an old snapshot (tests included).
    let found = source_lines_with(&[".db.", "begin_write()"].concat());
    assert_eq!(found.len(), 1, "only in begin_raw_write: {found:?}");
}

#[test]
fn reads_begin_only_where_they_wait_for_deferred_syncs() {
    // `Replica::begin_read` waits until what it reads is on disk; a read begun on the
    // database directly could see, and send on, a commit that a crash then undoes.
    let found = source_lines_with(&[".db.", "begin_read()"].concat());
    assert_eq!(found.len(), 1, "only in Replica::begin_read: {found:?}");
}

#[test]
fn only_commits_inside_deferring_syncs_leave_their_sync_behind() {
    if hosts_in_postgres() {
        return;
    }
    let (hd, host, _sd, _site) = host_and_site();
    let before = host.durable_point();
    write(&host, "waited for", b"one");
    assert_eq!(
        host.durable_point(),
        before,
        "a commit outside waits for its sync"
    );
    let id = host.deferring_syncs(|| write(&host, "left behind", b"two"));
    let point = host.durable_point();
    assert!(point > before, "the deferred sync is queued");
    // The scope ends with the call: the next commit waits again.
    write(&host, "waited for again", b"three");
    host.wait_durable(host.durable_point()).expect("durable");
    drop(host);
    let host = open_at(hd.path(), &KeySource::File, clock()).expect("reopen");
    let read = host
        .read_document(
            &Actor::Professional(doctor()),
            &id,
            AccessMode::Normal,
            None,
        )
        .expect("kept");
    assert_eq!(&read.body[..], b"two");
}

#[test]
fn a_deferred_commit_that_moves_the_trace_chain_or_journal_is_durable_when_it_returns() {
    let (hd, host, _sd, _site) = host_and_site();
    let actor = Actor::Professional(doctor());
    let id = write(&host, "read first", b"body");
    let traced = host.verify_audit().expect("verify").1;
    // A deferred write, on disk when it returns, or `moved` went on without it.
    let write_deferred = |title: &str, body: &[u8], moved: &str| {
        host.deferring_syncs(|| write(&host, title, body));
        assert!(
            host.is_durable(host.durable_point()).expect("durability"),
            "the {moved} moved on before the commit holding it was durable"
        );
    };
    // A write's trace entry moves the chain head; the next entries are journaled on top of it.
    write_deferred("moves the head", b"one", "chain head");
    // An audited read: its trace entry goes to the journal.
    host.read_document(&actor, &id, AccessMode::Normal, None)
        .expect("read");
    // A write's commit moves the journaled entry into redb and retires the journal region:
    // it may not be reused before that commit is on disk.
    write_deferred("moves the journal", b"two", "journal");
    // The next reads journal into the retired region.
    host.read_document(&actor, &id, AccessMode::Normal, None)
        .expect("read");
    drop(host);
    let host = open_at(hd.path(), &KeySource::File, clock()).expect("reopen");
    let (_, entries) = host.verify_audit().expect("the chain is whole");
    // Both reads and both writes.
    assert!(entries >= traced + 4, "{entries} entries, {traced} before");
}

/// A second site (8) where the treating doctor works too, synced once: the dossier is in its
/// scope.
fn second_site(host: &Replica) -> (TempDir, Replica) {
    let dir = TempDir::new().expect("tmp");
    let other = init(&dir, Role::Site, Some(8));
    register(&other);
    host.bind_professional(SiteId(8), &doctor(), true)
        .expect("bind");
    other
        .import_authority(&host.export_authority().expect("export"))
        .expect("import");
    sync(host, &other);
    (dir, other)
}

#[test]
fn every_document_of_a_pushed_batch_reaches_the_other_sites_holding_its_dossier() {
    let (_hd, host, _sd, site) = host_and_site();
    let (_other_dir, other) = second_site(&host);
    let other_id = other.config().site_id;
    let head = host.log_head(other_id).expect("head");
    let ids = [write(&site, "one", b"1"), write(&site, "two", b"2")];
    let changes = site.outbox(0, 10).expect("outbox");
    host.apply_remote_batch(site.config().site_id, &changes)
        .expect("one batch");
    let logged: Vec<DocId> = host
        .pull(other_id, head, 100)
        .expect("pull")
        .into_iter()
        .filter_map(|(_, item)| match item {
            PullItem::Document(meta) => Some(meta.facts.id),
            _ => None,
        })
        .collect();
    assert_eq!(logged, ids);
}

#[test]
fn a_leave_then_enter_in_one_batch_keeps_the_dossier() {
    let (_hd, host, _sd, site) = host_and_site();
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Revoked,
        GrantBasis::Treating,
        None,
    )
    .expect("revoke");
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )
    .expect("grant again");
    sync(&host, &site);
    assert!(site.has_dossier_key(&ins()).expect("key"), "still held");
    let id = host
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &ins(),
            doc("new", b"n"),
        )
        .expect("write");
    sync(&host, &site);
    assert!(
        site.read_document(
            &Actor::Professional(doctor()),
            &id,
            AccessMode::Normal,
            None
        )
        .is_ok()
    );
}

#[test]
fn a_site_cannot_unmask_or_write_in_another_sites_name() {
    let (_hd, host, _sd, site) = host_and_site();
    let actor = Actor::Professional(doctor());
    let id = write(&host, "sensitive", b"s");
    host.update_document(&actor, &id, Action::Mask)
        .expect("mask");
    sync(&host, &site);
    let origin = site.config().site_id;
    let mut forged = metas(&site)
        .into_iter()
        .find(|m| m.facts.id == id)
        .expect("at the site");
    assert!(forged.state().flags.masque_ps);
    forged.update(origin, |s| s.flags.masque_ps = false);
    let seq = host.applied_mark(origin).expect("mark") + 1;
    let outcome = host
        .apply_remote(
            origin,
            seq,
            &Change::Document {
                meta: Box::new(forged),
                acts: vec![],
            },
        )
        .expect("apply");
    assert_eq!(outcome, Applied::Returned);
    let at_host = metas(&host)
        .into_iter()
        .find(|m| m.facts.id == id)
        .expect("doc");
    assert!(at_host.state().flags.masque_ps, "still masked at the host");

    // A new document claiming another site as its author is refused.
    let mut other = metas(&host).into_iter().next().expect("a doc");
    other.facts.id = DocId([9; 16]);
    other.facts.author_site = SiteId(999);
    assert!(
        host.apply_remote(
            origin,
            seq + 1,
            &Change::Document {
                meta: Box::new(other),
                acts: vec![],
            }
        )
        .is_err()
    );
}

#[test]
fn a_scope_exit_purge_cut_by_a_crash_finishes_at_the_next_open() {
    let (_hd, _host, sd, site) = host_and_site();
    assert!(site.has_dossier_key(&ins()).expect("key"));
    // As `apply_pull` leaves it when the process dies between its commit and the purge.
    {
        let txn = site.begin_write().expect("txn");
        let sealed = site
            .keys
            .registry
            .seal(
                &pending_purge_aad(&site.blind(&ins())),
                ins().matricule().as_bytes(),
            )
            .expect("seal");
        site.digested(&txn, PENDING_PURGES)
            .expect("table")
            .insert(&site.blind(&ins()), sealed.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    assert!(
        !site.has_dossier_key(&ins()).expect("key"),
        "purged at open"
    );
    let left = {
        use crate::kv::ReadableTableMetadata;
        let txn = site.begin_read().expect("read");
        txn.open_table(PENDING_PURGES)
            .expect("t")
            .len()
            .expect("len")
    };
    assert_eq!(left, 0);
}

/// `host_and_site`, reopened on a clock the test moves.
fn host_and_site_on_a_clock() -> (
    (TempDir, TempDir),
    Arc<std::sync::atomic::AtomicI64>,
    Replica,
    Replica,
) {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let moving = |now: &Arc<AtomicI64>| -> Clock {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let (hd, host, sd, site) = host_and_site();
    drop((host, site));
    let host = open_at(hd.path(), &KeySource::File, moving(&now)).expect("host");
    let site = open_at(sd.path(), &KeySource::File, moving(&now)).expect("site");
    ((hd, sd), now, host, site)
}

/// The keys of a table keyed by stored document id (`doc_map`).
fn keys_by_doc<V: redb::Value + 'static>(
    r: &Replica,
    table: redb::TableDefinition<&'static [u8; 16], V>,
) -> Vec<[u8; 16]> {
    let txn = r.begin_read().expect("read");
    let table = txn.open_table(table).expect("table");
    table
        .iter()
        .expect("iter")
        .map(|row| *row.expect("row").0.value())
        .collect()
}

#[test]
fn the_host_tells_the_patient_after_two_weeks_and_releases_after_a_month() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    // Written at the site, hidden from the patient until the announcement consultation.
    let id = write(&site, "résultat", b"to be announced");
    site.update_document(&Actor::Professional(doctor()), &id, Action::HideFromPatient)
        .expect("hide");
    sync(&host, &site);
    let patient_reads = |r: &Replica| {
        r.read_document(&Actor::Holder, &id, AccessMode::Normal, None)
            .is_ok()
    };
    assert!(!patient_reads(&host) && !patient_reads(&site));
    // The host queues it for the timer; a site, which never releases, does not.
    assert_eq!(keys_by_doc(&host, HIDDEN_DOCS), vec![host.stored_id(&id)]);
    assert!(keys_by_doc(&site, HIDDEN_DOCS).is_empty());
    let admin = |r: &Replica, what: &str| {
        r.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .filter(|c| {
                c.entry.action == TraceAction::Admin(what.into()) && c.entry.doc == Some(id)
            })
            .count()
    };
    // A site never releases; before two weeks the host does nothing.
    assert_eq!(
        site.run_announcement_timer().expect("site"),
        AnnouncementPass::default()
    );
    now.fetch_add(13 * 24 * 3_600_000, Ordering::SeqCst);
    assert_eq!(
        host.run_announcement_timer().expect("pass"),
        AnnouncementPass::default()
    );
    // At two weeks the patient is told, once.
    now.fetch_add(2 * 24 * 3_600_000, Ordering::SeqCst);
    let pass = host.run_announcement_timer().expect("pass");
    assert_eq!((pass.told, pass.released), (1, 0));
    assert_eq!(
        host.run_announcement_timer().expect("again").told,
        0,
        "told once"
    );
    assert_eq!(admin(&host, "announcement-due"), 1);
    // Remembered under the host's stored form of the id, not the id every replica shares.
    assert_eq!(keys_by_doc(&host, ANNOUNCEMENTS), vec![host.stored_id(&id)]);
    assert_ne!(host.stored_id(&id), id.0);
    assert_ne!(host.stored_id(&id), site.stored_id(&id), "per replica");
    assert!(!patient_reads(&host), "still hidden");
    // The holder's export holds neither the document nor any trace entry about it; another
    // document and the entries about it are there.
    let visible = write(&host, "visible", b"seen");
    let exported = |r: &Replica| {
        let e = r.export_dossier(&Actor::Holder, &ins()).expect("export");
        let docs: Vec<DocId> = e.documents.iter().map(|d| d.meta.facts.id).collect();
        let traced: Vec<DocId> = e.traces.iter().filter_map(|t| t.doc).collect();
        (docs, traced)
    };
    let (docs, traced) = exported(&host);
    assert!(docs.contains(&visible) && traced.contains(&visible));
    assert!(!docs.contains(&id) && !traced.contains(&id), "{traced:?}");
    // At a month it becomes visible, on the host and, after a sync, on the site.
    now.fetch_add(16 * 24 * 3_600_000, Ordering::SeqCst);
    let pass = host.run_announcement_timer().expect("pass");
    assert_eq!((pass.told, pass.released), (0, 1));
    assert_eq!(admin(&host, "announcement-released"), 1);
    assert_eq!(keys_by_doc(&host, HOST_CLEARS), vec![host.stored_id(&id)]);
    assert!(keys_by_doc(&host, ANNOUNCEMENTS).is_empty());
    assert!(
        keys_by_doc(&host, HIDDEN_DOCS).is_empty(),
        "out of the queue"
    );
    assert!(patient_reads(&host));
    let (docs, traced) = exported(&host);
    assert!(
        docs.contains(&id) && traced.contains(&id),
        "released: {traced:?}"
    );
    assert!(
        !patient_reads(&site),
        "the site keeps it hidden until the host says otherwise"
    );
    sync(&host, &site);
    // (A month without news is past the site's lease: fresh host records first.)
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert!(patient_reads(&site));
    assert_eq!(
        host.run_announcement_timer().expect("idle"),
        AnnouncementPass::default()
    );
}

#[test]
fn a_pending_grant_works_at_once_at_its_site_and_never_becomes_a_grant_by_itself() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    let id = write(&site, "CR", b"for the nurse");
    let nurse_reads = |r: &Replica| {
        r.read_document(&Actor::Professional(nurse()), &id, AccessMode::Normal, None)
            .is_ok()
    };
    assert!(!nurse_reads(&site), "no grant yet");
    assert!(
        host.record_pending_grant(&ins(), &nurse()).is_err(),
        "the host grants directly"
    );
    // Consent given in person: usable at once, traced as pending.
    site.record_pending_grant(&ins(), &nurse())
        .expect("pending");
    assert!(nurse_reads(&site));
    let traced = site.audit_entries(Some(&ins())).expect("audit");
    assert!(
        traced
            .iter()
            .any(|c| c.entry.allowed && c.entry.outcome_reason.contains("pending grant"))
    );
    // At the host it is a request, traced; no grant comes of it.
    sync(&host, &site);
    let granted = |r: &Replica| {
        r.dossier(&ins())
            .expect("dossier")
            .grants
            .iter()
            .any(|g| g.rpps == nurse() && g.state == GrantState::Active)
    };
    assert!(!granted(&host) && !granted(&site));
    assert!(!nurse_reads(&host));
    let requests = host.site_requests().expect("requests");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (requests[0].kind, requests[0].rpps.as_ref()),
        (super::RequestKind::Consent, Some(&nurse()))
    );
    // The holder's consent confirmed at the host: a signed grant, which answers the request.
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::Consent,
        None,
    )
    .expect("confirm");
    assert!(host.site_requests().expect("requests").is_empty());
    sync(&host, &site);
    assert!(granted(&site));
    // A later revocation at the host wins over the pending grant made before it.
    now.fetch_add(1000, Ordering::SeqCst);
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Revoked,
        GrantBasis::Consent,
        None,
    )
    .expect("revoke");
    sync(&host, &site);
    assert!(!nurse_reads(&site));
    // A block wins over a new pending grant, and the host refuses the request.
    now.fetch_add(1000, Ordering::SeqCst);
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Blocked,
        GrantBasis::Consent,
        None,
    )
    .expect("block");
    sync(&host, &site);
    site.record_pending_grant(&ins(), &nurse())
        .expect("pending");
    assert!(!nurse_reads(&site), "a block wins");
    sync(&host, &site);
    assert!(host.site_requests().expect("requests").is_empty());
    assert!(
        host.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .any(|c| c.entry.action == TraceAction::Admin("consent-refused".into()))
    );
}

#[test]
fn consent_for_a_professional_the_host_does_not_bind_to_the_site_is_refused() {
    let (_hd, host, _sd, site) = host_and_site();
    // The site registers a professional of its own choosing; the host never bound them.
    let stranger = Rpps::parse("19999999999").expect("rpps");
    site.add_professional(&Professional {
        rpps: stranger.clone(),
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    })
    .expect("pro");
    site.record_pending_grant(&ins(), &stranger)
        .expect("pending");
    sync(&host, &site);
    assert!(host.site_requests().expect("requests").is_empty());
    let trace = host.audit_entries(Some(&ins())).expect("audit");
    assert!(
        trace
            .iter()
            .any(|c| c.entry.action == TraceAction::Admin("consent-refused".into()))
    );
    assert!(
        !host
            .dossier(&ins())
            .expect("dossier")
            .grants
            .iter()
            .any(|g| g.rpps == stranger)
    );
}

#[test]
fn a_pending_grant_lasts_one_encounter() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let (_hd, host, sd, site) = host_and_site();
    drop((host, site));
    let site = open_at(sd.path(), &KeySource::File, {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    })
    .expect("site");
    let id = write(&site, "CR", b"x");
    site.record_pending_grant(&ins(), &nurse())
        .expect("pending");
    let reads = || {
        site.read_document(&Actor::Professional(nurse()), &id, AccessMode::Normal, None)
            .is_ok()
    };
    assert!(reads());
    now.fetch_add(25 * 3_600_000, Ordering::SeqCst);
    // (Within the lease, past the encounter.)
    assert!(!reads(), "a pending grant is for one encounter");
}

#[test]
fn the_announcement_queue_decides_nothing_alone_and_an_older_host_gets_it_at_open() {
    if hosts_in_postgres() {
        return;
    }
    use std::sync::atomic::Ordering;
    let (dirs, now, host, site) = host_and_site_on_a_clock();
    let hidden = write(&site, "résultat", b"to be announced");
    site.update_document(
        &Actor::Professional(doctor()),
        &hidden,
        Action::HideFromPatient,
    )
    .expect("hide");
    sync(&host, &site);
    let visible = write(&host, "visible", b"seen");
    // A queue row that does not match the sealed metadata (a visible document, filed "long
    // ago"): the timer opens the document, finds nothing to announce, tells no one.
    {
        let txn = host.begin_raw_write().expect("txn");
        host.digested(&txn, HIDDEN_DOCS)
            .expect("queue")
            .insert(&host.stored_id(&visible), 0)
            .expect("insert");
        txn.commit().expect("commit");
    }
    now.fetch_add(15 * 24 * 3_600_000, Ordering::SeqCst);
    let pass = host.run_announcement_timer().expect("pass");
    assert_eq!((pass.told, pass.released), (1, 0), "only the hidden one");
    // As a host written before the queue existed: rebuilt at open from the documents.
    let clock_now = now.clone();
    let reopen = || {
        let now = clock_now.clone();
        open_at(
            dirs.0.path(),
            &KeySource::File,
            Arc::new(move || now.load(Ordering::SeqCst)),
        )
    };
    {
        let txn = host.begin_raw_write().expect("txn");
        txn.as_redb()
            .expect("redb")
            .delete_table(HIDDEN_DOCS)
            .expect("drop the queue");
        txn.open_table(META)
            .expect("meta")
            .remove(super::row_digest::meta_row("hidden_docs").as_str())
            .expect("no digest yet");
        txn.commit().expect("commit");
    }
    drop(host);
    let host = reopen().expect("reopen");
    assert_eq!(
        keys_by_doc(&host, HIDDEN_DOCS),
        vec![host.stored_id(&hidden)]
    );
    // Guarded from then on: a row removed outside Carnet is found at the next open.
    drop(host);
    {
        let db = open_raw(dirs.0.path().join(DB_FILE));
        let txn = db.begin_write().expect("txn");
        txn.open_table(HIDDEN_DOCS)
            .expect("queue")
            .retain(|_, _| false)
            .expect("empty it");
        txn.commit().expect("commit");
    }
    assert!(matches!(reopen(), Err(Error::Integrity(_))));
}

#[test]
fn pending_emergencies_are_indexed_and_a_purge_drops_only_its_dossiers() {
    if hosts_in_postgres() {
        return;
    }
    let (hd, host, _sd, _site) = host_and_site();
    let other = Ins::from_body("2840575123457").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    // A break-glass read at the host in each dossier: two emergencies, both pending.
    for ins in [ins(), other.clone()] {
        let id = host
            .put_document(
                &Actor::Professional(doctor()),
                AccessMode::BreakGlass,
                Some("unconscious"),
                &ins,
                doc("CR", b"synthetic"),
            )
            .expect("put");
        host.read_document(
            &Actor::Professional(nurse()),
            &id,
            AccessMode::BreakGlass,
            Some("unconscious"),
        )
        .expect("break-glass");
    }
    let all = host.emergencies(false).expect("all");
    assert!(all.len() >= 2, "{all:?}");
    let ids = |list: Vec<Emergency>| list.iter().map(|e| e.id).collect::<Vec<u64>>();
    assert_eq!(
        ids(host.emergencies(true).expect("pending")),
        ids(all.clone())
    );
    // Reviewed: out of the pending list, still in the whole one.
    let first = all[0].id;
    host.review_emergency(first, "dpo:Test", "justified")
        .expect("review");
    let pending = ids(host.emergencies(true).expect("pending"));
    assert!(!pending.contains(&first) && pending.len() == all.len() - 1);
    assert_eq!(host.emergencies(false).expect("all").len(), all.len());
    // The index is read, not the rows: a pending row of an emergency not in the index is an
    // integrity error, not an emergency skipped.
    {
        let txn = host.begin_raw_write().expect("txn");
        host.digested(&txn, PENDING_EMERGENCIES)
            .expect("pending")
            .insert(u64::MAX, ())
            .expect("insert");
        txn.commit().expect("commit");
    }
    assert!(matches!(host.emergencies(true), Err(Error::Integrity(_))));
    {
        let txn = host.begin_raw_write().expect("txn");
        host.digested(&txn, PENDING_EMERGENCIES)
            .expect("pending")
            .remove(u64::MAX)
            .expect("remove");
        txn.commit().expect("commit");
    }
    // As a host written before the indexes: rebuilt at open from the index rows.
    {
        let txn = host.begin_raw_write().expect("txn");
        for table in ["pending_emergencies", "dossier_emergencies"] {
            txn.as_redb()
                .expect("redb")
                .delete_table(redb::TableDefinition::<&[u8], ()>::new(table))
                .expect("drop");
            txn.open_table(META)
                .expect("meta")
                .remove(super::row_digest::meta_row(table).as_str())
                .expect("no digest yet");
        }
        txn.commit().expect("commit");
    }
    drop(host);
    let host = open_at(hd.path(), &KeySource::File, clock()).expect("reopen");
    assert_eq!(ids(host.emergencies(true).expect("pending")), pending);
    // A purge drops the emergencies of its dossier, and only those.
    let of = |list: &[Emergency], ins: &Ins| {
        list.iter()
            .filter(|e| Ins::parse(&e.ins).ok().as_ref() == Some(ins))
            .count()
    };
    let before = host.emergencies(false).expect("all");
    assert!(of(&before, &ins()) > 0 && of(&before, &other) > 0);
    host.close_dossier(&ins(), "holder's request", true)
        .expect("close");
    host.purge_dossier(&ins()).expect("purge");
    let after = host.emergencies(false).expect("all");
    assert_eq!(of(&after, &ins()), 0);
    assert_eq!(of(&after, &other), of(&before, &other));
    assert_eq!(table_len(&host, DOSSIER_EMERGENCIES), after.len() as u64);
    assert!(
        host.emergencies(true)
            .expect("pending")
            .iter()
            .all(|e| Ins::parse(&e.ins).ok() == Some(other.clone()))
    );
}

#[test]
fn missing_bodies_are_indexed_and_an_older_replica_gets_the_index_at_open() {
    let (_hd, host, sd, site) = host_and_site();
    let id = write(&host, "CR", b"body at the host");
    // Metadata only: the site pulls, and the body is what it lacks.
    let items = host
        .pull(
            site.config().site_id,
            site.pull_cursor().expect("cursor"),
            usize::MAX,
        )
        .expect("pull");
    site.apply_pull(&items).expect("apply");
    assert_eq!(site.missing_bodies().expect("missing"), vec![id]);
    // As a replica written before the index existed: the index is rebuilt at open.
    drop(site);
    {
        let db = open_raw(sd.path().join(DB_FILE));
        let txn = db.begin_write().expect("txn");
        txn.as_redb()
            .expect("redb")
            .delete_table(MISSING_BODIES)
            .expect("drop the index");
        txn.commit().expect("commit");
    }
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    assert_eq!(site.missing_bodies().expect("missing"), vec![id]);
    let body = host.body_for_sync(&id).expect("body");
    assert!(
        site.receive_body_piece(&id, 0, body.len() as u64, &body)
            .expect("store")
    );
    assert!(site.missing_bodies().expect("missing").is_empty());
}

/// Every chunk of document `id`'s body, in segments or in `BODIES`: (key, sealed), in key
/// order.
fn body_chunks(r: &Replica, id: &DocId) -> Vec<(Vec<u8>, Vec<u8>)> {
    let txn = r.begin_read().expect("read");
    r.bodies_read(&txn)
        .expect("bodies")
        .chunks_of(&r.stored_id(id))
        .expect("chunks")
}

/// Chunks of document `id`'s body, in segments or in `BODIES`: (chunks, tails).
fn body_rows(r: &Replica, id: &DocId) -> (u64, u64) {
    let chunks = body_chunks(r, id);
    let count = |place: ChunkPlace| chunks.iter().filter(|(k, _)| k[0] == place.kind()).count();
    (
        count(ChunkPlace::Main) as u64,
        count(ChunkPlace::Tail) as u64,
    )
}

/// `body_rows` of a body of `n` bytes as `r` cuts it: in segments (`segment_chunk_plan`), or
/// in `BODIES` (`body_chunk_plan`).
fn rows_cut(r: &Replica, n: usize) -> (u64, u64) {
    let padded = crate::padding::padded_body_len(n);
    let plan = if r.segments.is_some() {
        segment_chunk_plan(padded)
    } else {
        body_chunk_plan(padded)
    };
    let tails = plan.iter().filter(|c| c.1 == ChunkPlace::Tail).count() as u64;
    (plan.len() as u64 - tails, tails)
}

/// Stores document `id`'s body again at `r`, cut as `cut` says (as a replica of format 9 cut
/// it in segments: `body_chunk_plan`).
fn recut_body(r: &Replica, id: &DocId, body: &[u8], cut: fn(usize) -> Vec<(usize, ChunkPlace)>) {
    let key = {
        let (txn, generation) = r.snapshot().expect("snapshot");
        r.load_doc(&txn, generation, id).expect("document").1
    };
    let txn = r.begin_raw_write().expect("write");
    {
        let mut bodies = r.bodies(&txn).expect("bodies");
        bodies.remove(&r.stored_id(id)).expect("remove");
        r.put_body_cut(&mut bodies, &key, id, body, cut)
            .expect("put");
    }
    txn.commit().expect("commit");
}

/// Removes the chunk at `key`, wherever it is kept.
fn remove_chunk(r: &Replica, key: &[u8]) {
    let txn = r.begin_raw_write().expect("write");
    let removed = [BODIES, BODY_PLACES]
        .into_iter()
        .filter(|t| {
            let mut table = txn.open_table(*t).expect("table");
            table.remove(key).expect("remove").is_some()
        })
        .count();
    assert_eq!(removed, 1, "the chunk was kept in one place");
    txn.commit().expect("commit");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn read_body(r: &Replica, id: &DocId) -> Vec<u8> {
    r.read_document(&Actor::Professional(doctor()), id, AccessMode::Normal, None)
        .expect("read")
        .body
        .to_vec()
}

#[test]
fn bodies_of_every_size_read_back_and_travel_and_their_tails_go_with_a_purge() {
    let (_hd, host, _sd, site) = host_and_site();
    let sizes = [
        1, 3_991, 3_992, 3_993, 4_096, 12_080, 70_000, 150_000, 65_000,
    ];
    let ids: Vec<DocId> = sizes
        .iter()
        .map(|&n| write(&site, &format!("{n} bytes"), &pattern(n)))
        .collect();
    sync(&host, &site);
    for (&n, id) in sizes.iter().zip(&ids) {
        assert_eq!(read_body(&site, id), pattern(n), "{n} bytes at the site");
        assert_eq!(read_body(&host, id), pattern(n), "{n} bytes at the host");
        assert_eq!(
            body_rows(&site, id),
            rows_cut(&site, n),
            "{n} bytes at the site"
        );
        assert_eq!(
            body_rows(&host, id),
            rows_cut(&host, n),
            "{n} bytes at the host"
        );
    }
    // A 4 KiB body: one record in segments; in `BODIES` (a host on PostgreSQL), one
    // page-sized chunk and a tail kept apart.
    assert_eq!(body_rows(&site, &ids[4]), (1, 0));
    let host_rows = if host.segments.is_some() {
        (1, 0)
    } else {
        (1, 1)
    };
    assert_eq!(body_rows(&host, &ids[4]), host_rows);
    // A missing last chunk (of three in segments, a tail in `BODIES`) is a damaged body, not
    // a shorter one.
    let host_victim = if host.segments.is_some() {
        &ids[7]
    } else {
        &ids[4]
    };
    for (r, id) in [(&site, &ids[7]), (&host, host_victim)] {
        let chunks = body_chunks(r, id);
        remove_chunk(r, &chunks.last().expect("chunks").0);
        let err = r
            .read_document(&Actor::Professional(doctor()), id, AccessMode::Normal, None)
            .expect_err("damaged");
        assert!(matches!(err, Error::Integrity(_)), "{err}");
    }
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    for id in &ids {
        assert_eq!(body_rows(&site, id), (0, 0), "purged with its tail");
    }
}

#[test]
fn bodies_format_9_cut_in_two_in_segments_still_read_and_the_replica_is_marked_as_of_this_build() {
    let (_hd, _host, sd, site) = host_and_site();
    let sizes = [3_993, 4_096, 40_000, 70_000, 150_000];
    let ids: Vec<DocId> = sizes
        .iter()
        .map(|&n| write(&site, &format!("{n} bytes"), &pattern(n)))
        .collect();
    assert_eq!(body_rows(&site, &ids[1]), (1, 0), "this build: one record");
    for (&n, id) in sizes.iter().zip(&ids) {
        recut_body(&site, id, &pattern(n), body_chunk_plan);
    }
    assert_eq!(
        body_rows(&site, &ids[1]),
        (1, 1),
        "format 9: a chunk and a tail"
    );
    // Marked 9 through the replica, which authenticates its settings anew.
    let txn = site.begin_raw_write().expect("write");
    txn.open_table(META)
        .expect("meta")
        .insert(meta_key::FORMAT, 9u32.to_le_bytes().as_slice())
        .expect("format");
    txn.commit().expect("commit");
    drop(site);
    let set_format = |format: u32| set_stored_format(sd.path(), format);
    let stored_format = |r: &Replica| {
        let txn = r.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        let format = meta.get(meta_key::FORMAT).expect("get").expect("format");
        u32::from_le_bytes(format.value().try_into().expect("u32"))
    };
    // A build that reads up to an earlier format refuses a later one's replica, untouched.
    set_format(FORMAT_VERSION + 1);
    let err = open_at(sd.path(), &KeySource::File, clock()).expect_err("newer");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("newer Carnet")),
        "{err}"
    );
    let db = open_raw(sd.path().join(DB_FILE));
    let txn = db.begin_read().expect("read");
    let format = txn
        .open_table(META)
        .expect("meta")
        .get(meta_key::FORMAT)
        .expect("get")
        .map(|v| v.value().to_vec());
    assert_eq!(
        format,
        Some((FORMAT_VERSION + 1).to_le_bytes().to_vec()),
        "left as it was"
    );
    drop((txn, db));
    set_format(9);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("format 9 opens");
    assert_eq!(stored_format(&site), FORMAT_VERSION, "marked at open");
    for (&n, id) in sizes.iter().zip(&ids) {
        assert_eq!(
            read_body(&site, id),
            pattern(n),
            "{n} bytes, cut as format 9 did"
        );
    }
    // Its tails are still needed: one missing is a damaged body, not a shorter one.
    remove_chunk(
        &site,
        body_key(&site.stored_id(&ids[1]), ChunkPlace::Tail, 1).as_slice(),
    );
    let err = site
        .read_document(
            &Actor::Professional(doctor()),
            &ids[1],
            AccessMode::Normal,
            None,
        )
        .expect_err("damaged");
    assert!(matches!(err, Error::Integrity(_)), "{err}");
    // New bodies go in this build's cut beside them.
    let new = write(&site, "after", &pattern(4_096));
    assert_eq!(body_rows(&site, &new), (1, 0));
    assert_eq!(read_body(&site, &new), pattern(4_096));
}

/// Writes `format` as the stored format of the closed replica in `dir`, straight into its
/// database (its settings' authentication is not updated).
fn set_stored_format(dir: &std::path::Path, format: u32) {
    let db = open_raw(dir.join(DB_FILE));
    let txn = db.begin_write().expect("write");
    txn.open_table(META)
        .expect("meta")
        .insert(meta_key::FORMAT, format.to_le_bytes().as_slice())
        .expect("format");
    txn.commit().expect("commit");
}

#[test]
fn a_replica_of_an_older_format_is_refused_and_left_as_it_was() {
    let (_hd, _host, sd, site) = host_and_site();
    let id = write(&site, "kept", &pattern(5_000));
    drop(site);
    let set_format = |format: u32| set_stored_format(sd.path(), format);
    set_format(2);
    let err = open_at(sd.path(), &KeySource::File, clock()).expect_err("format 2");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("earlier Carnet") && m.contains("format 2")),
        "{err}"
    );
    // Refused before anything was written: put back at its format, it opens as it was.
    set_format(FORMAT_VERSION);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    assert_eq!(read_body(&site, &id), pattern(5_000));
}

/// The lengths of document `id`'s sealed chunks, in key order, and of its row in `DOCS`.
fn sealed_lengths(r: &Replica, id: &DocId) -> (Vec<usize>, usize) {
    let txn = r.begin_read().expect("read");
    let stored = r.stored_id(id);
    let chunks = r
        .bodies_read(&txn)
        .expect("bodies")
        .chunks_of(&stored)
        .expect("chunks")
        .into_iter()
        .map(|(_, sealed)| sealed.len())
        .collect();
    let docs = txn.open_table(DOCS).expect("docs");
    let meta = docs.get(&stored).expect("get").expect("row").value().len();
    (chunks, meta)
}

#[test]
fn bodies_and_metadata_of_one_size_bucket_are_sealed_to_rows_of_equal_length() {
    let (_hd, host, _sd, site) = host_and_site();
    // 4,609 to 5,120 bytes share a bucket; so do short titles.
    let a = write(&site, "a", &pattern(4_700));
    let b = write(&site, "a longer title", &pattern(5_120));
    // Trailing zero bytes in a body are its own: cut by size, not by value.
    let zeros = write(&site, "zeros", &[0u8; 5_000]);
    let other = write(&site, "other bucket", &pattern(5_121));
    sync(&host, &site);
    for r in [&site, &host] {
        assert_eq!(sealed_lengths(r, &a), sealed_lengths(r, &b));
        assert_eq!(sealed_lengths(r, &a), sealed_lengths(r, &zeros));
        assert_ne!(sealed_lengths(r, &a).0, sealed_lengths(r, &other).0);
        assert_eq!(read_body(r, &a), pattern(4_700));
        assert_eq!(read_body(r, &b), pattern(5_120));
        assert_eq!(read_body(r, &zeros), vec![0u8; 5_000]);
        assert_eq!(read_body(r, &other), pattern(5_121));
    }
    let (chunks, _) = sealed_lengths(&site, &a);
    let stored: usize = chunks
        .iter()
        .map(|c| c - crate::crypto::SEAL_OVERHEAD)
        .sum();
    assert_eq!(stored, 5_120, "padded to its bucket");
}

/// Removes the bodies of `ids` (their records stay until their segment is compacted).
fn remove_bodies(r: &Replica, ids: &[DocId]) {
    let txn = r.begin_raw_write().expect("write");
    {
        let mut bodies = r.bodies(&txn).expect("bodies");
        for id in ids {
            bodies.remove(&r.stored_id(id)).expect("remove");
        }
    }
    txn.commit().expect("commit");
}

/// The segments of `r` and their sizes.
fn segment_sizes(r: &Replica) -> Vec<(u32, u64)> {
    r.segments
        .as_ref()
        .expect("segments")
        .sizes()
        .expect("sizes")
}

#[test]
fn segments_mostly_dead_or_small_are_compacted_at_open_and_every_body_still_reads() {
    let (_hd, _host, sd, site) = host_and_site();
    let ids: Vec<DocId> = (0..5)
        .map(|i| write(&site, &format!("scan {i}"), &pattern(70_000 + i)))
        .collect();
    // Four bodies removed: their records stay in the segment until it is compacted.
    remove_bodies(&site, &ids[1..]);
    let before = segment_sizes(&site);
    assert_eq!(before.len(), 1, "{before:?}");
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    let after = segment_sizes(&site);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        after[0].0, before[0].0,
        "the live records moved to a new segment"
    );
    assert!(after[0].1 * 4 < before[0].1, "{before:?} -> {after:?}");
    assert_eq!(read_body(&site, &ids[0]), pattern(70_000));
    // One small segment per process that stored a body: past eight, they are merged.
    let mut site = site;
    let mut small = vec![ids[0]];
    for i in 0..9 {
        small.push(write(&site, &format!("note {i}"), &pattern(1_000 + i)));
        drop(site);
        site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    }
    let merged = segment_sizes(&site);
    assert_eq!(merged.len(), 1, "{merged:?}");
    assert_eq!(read_body(&site, &small[0]), pattern(70_000));
    for (i, id) in small[1..].iter().enumerate() {
        assert_eq!(read_body(&site, id), pattern(1_000 + i));
    }
    assert_eq!(site.damaged_bodies().expect("check"), vec![]);
}

/// While the replica runs (no reopen), a mostly dead segment is compacted: its live records
/// move and it is retired. A snapshot taken before reads the old records to its end, and the
/// segment's file goes only once that snapshot has ended.
#[test]
fn a_running_replica_compacts_and_a_snapshot_taken_before_still_reads() {
    let (_hd, _host, sd, site) = host_and_site();
    let ids: Vec<DocId> = (0..5)
        .map(|i| write(&site, &format!("scan {i}"), &pattern(70_000 + i)))
        .collect();
    // Opened again, the segment is no longer the one appends go to: compaction may take it.
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    remove_bodies(&site, &ids[1..]);
    let before = segment_sizes(&site);
    assert_eq!(before.len(), 1, "{before:?}");
    let files = || {
        std::fs::read_dir(sd.path().join(crate::segments::SEGMENTS_DIR))
            .expect("segments folder")
            .count()
    };
    assert_eq!(files(), 1);

    let (snapshot, generation) = site.snapshot().expect("snapshot");
    let bodies = site.bodies_read(&snapshot).expect("bodies");
    let (_, key, meta) = site
        .load_doc(&snapshot, generation, &ids[0])
        .expect("metadata");
    assert_eq!(site.compact_bodies().expect("compact"), 1);
    let after = segment_sizes(&site);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0].0, before[0].0, "the live record moved");
    assert_eq!(read_body(&site, &ids[0]), pattern(70_000));
    // The snapshot names the old record, and reads it.
    assert_eq!(
        site.get_body(&bodies, &key, &meta)
            .expect("the old record")
            .to_vec(),
        pattern(70_000)
    );
    let segments = site.segments.as_ref().expect("segments");
    assert_eq!(segments.retired(), vec![before[0].0]);
    assert_eq!(files(), 2, "kept while the snapshot lives");
    drop((bodies, snapshot));
    // The next pass (or commit) removes it.
    assert_eq!(site.compact_bodies().expect("compact"), 0);
    assert_eq!(segments.retired(), Vec::<u32>::new());
    assert_eq!(files(), 1);
    assert_eq!(read_body(&site, &ids[0]), pattern(70_000));
    assert_eq!(site.damaged_bodies().expect("check"), vec![]);
    // The segment appends go to is left alone, however dead: a body written now goes there.
    let late = write(&site, "late", &pattern(9_000));
    remove_bodies(&site, &ids[..1]);
    assert_eq!(site.compact_bodies().expect("compact"), 0);
    assert_eq!(read_body(&site, &late), pattern(9_000));
}

/// A pass with nothing to do does not take the write lock (on a large host its scan would
/// hold every write meanwhile): it ends while a write transaction is open elsewhere.
#[test]
fn a_compaction_with_nothing_to_do_leaves_the_writers_alone() {
    let (_hd, _host, sd, site) = host_and_site();
    write(&site, "scan", &pattern(70_000));
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    let writing = site.begin_raw_write().expect("write");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = done.send(site.compact_bodies());
        });
        let outcome = finished.recv_timeout(std::time::Duration::from_secs(60));
        // Released either way, so that a pass that waits for it ends and the test with it.
        drop(writing);
        assert_eq!(
            outcome
                .expect("the pass ended while a write was open")
                .expect("compact"),
            0
        );
    });
}

#[test]
fn a_damaged_location_or_record_costs_its_body_not_the_replica_nor_the_segments() {
    let (_hd, _host, sd, site) = host_and_site();
    let ids: Vec<DocId> = (0..4)
        .map(|i| write(&site, &format!("scan {i}"), &pattern(70_000 + i)))
        .collect();
    let txn = site.begin_raw_write().expect("write");
    site.bodies(&txn)
        .expect("bodies")
        .remove(&site.stored_id(&ids[3]))
        .expect("remove");
    txn.commit().expect("commit");
    // Three of four bodies live: nothing to compact. One record's bytes damaged, another
    // chunk given a location that does not decode.
    let (segment, size) = segment_sizes(&site)[0];
    let file = sd
        .path()
        .join(crate::segments::SEGMENTS_DIR)
        .join(format!("{segment:08}.seg"));
    let mut bytes = std::fs::read(&file).expect("read");
    // The first byte of the first record (the first body's), which its check covers.
    bytes[20] ^= 1;
    std::fs::write(&file, &bytes).expect("write");
    let txn = site.begin_raw_write().expect("write");
    txn.open_table(BODY_PLACES)
        .expect("places")
        .insert(
            body_key(&site.stored_id(&ids[2]), ChunkPlace::Main, 0).as_slice(),
            [1u8; 3].as_slice(),
        )
        .expect("insert");
    txn.commit().expect("commit");
    drop(site);
    // Opens; the damaged bodies are errors of their own, the others read, nothing is removed.
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("opens");
    assert_eq!(segment_sizes(&site), vec![(segment, size)]);
    assert_eq!(read_body(&site, &ids[1]), pattern(70_001));
    let mut damaged = site.damaged_bodies().expect("check");
    damaged.sort();
    let mut expected = vec![ids[0], ids[2]];
    expected.sort();
    assert_eq!(damaged, expected);
    // With the location put right, a record that does not read back stops a compaction
    // (here of the small segments, past eight) and leaves every segment as it was.
    let txn = site.begin_raw_write().expect("write");
    txn.open_table(BODY_PLACES)
        .expect("places")
        .remove(body_key(&site.stored_id(&ids[2]), ChunkPlace::Main, 0).as_slice())
        .expect("remove");
    txn.commit().expect("commit");
    let mut site = site;
    for i in 0..9 {
        write(&site, &format!("note {i}"), &pattern(1_000 + i));
        drop(site);
        site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    }
    let kept = segment_sizes(&site);
    assert!(kept.len() > 8, "{kept:?}");
    // Passes while the replica runs find the same record: each stops before copying
    // anything, so nothing grows from pass to pass.
    for _ in 0..2 {
        assert_eq!(site.compact_bodies().expect("compact"), 0);
    }
    assert_eq!(segment_sizes(&site), kept);
    assert_eq!(read_body(&site, &ids[1]), pattern(70_001));
}

/// A database or journal in memory that clones share (`init_with_backends` opens it twice).
#[derive(Debug, Clone, Default)]
struct SharedMemory(Arc<redb::backends::InMemoryBackend>);

impl StorageBackend for SharedMemory {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
}

#[test]
fn a_failed_segment_write_is_a_storage_failure_and_no_commit_follows_it() {
    let dir = TempDir::new().expect("tmp");
    let (db, journal) = (SharedMemory::default(), SharedMemory::default());
    let files = crate::segments::tests::MemFiles::default();
    let options = InitOptions {
        role: Role::Host,
        name: "host".into(),
        site_id: None,
        key: KeySource::File,
        host_key: None,
        lease_hours: None,
    };
    let host = Replica::init_with_backends(
        dir.path(),
        db.clone(),
        journal.clone(),
        files.clone(),
        options,
        clock(),
    )
    .expect("init");
    dossier_for_the_doctor(&host);
    let kept = write(&host, "kept", &pattern(5_000));
    assert_eq!(host.storage_failure(), None);
    files.disk().broken = true;
    let refused = host.put_document(
        &Actor::Professional(doctor()),
        AccessMode::Normal,
        None,
        &ins(),
        doc("lost", &pattern(6_000)),
    );
    assert!(matches!(refused, Err(Error::Storage(_))), "{refused:?}");
    let failure = host.storage_failure().expect("a storage failure");
    assert!(failure.contains("segments"), "{failure}");
    // The disk back, the replica still commits nothing: what reached it is unknown.
    files.disk().broken = false;
    let refused = host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    );
    assert!(
        matches!(&refused, Err(Error::Storage(m)) if m.contains("segments failed earlier")),
        "{refused:?}"
    );
    drop(host);
    let host =
        Replica::open_with_backends(dir.path(), db, journal, files, &KeySource::File, clock())
            .expect("opens again");
    assert_eq!(host.storage_failure(), None);
    assert_eq!(read_body(&host, &kept), pattern(5_000));
    write(&host, "after", &pattern(7_000));
}

#[test]
fn a_body_whose_record_was_damaged_on_disk_is_found_by_the_body_check() {
    let (_hd, _host, sd, site) = host_and_site();
    let kept = write(&site, "kept", &pattern(5_000));
    let damaged = write(&site, "damaged", &pattern(70_000));
    assert_eq!(site.damaged_bodies().expect("check"), vec![]);
    // One byte of the last record written (the second body's tail) changed in its file.
    let segments = sd.path().join(crate::segments::SEGMENTS_DIR);
    let file = std::fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).expect("write");
    assert_eq!(site.damaged_bodies().expect("check"), vec![damaged]);
    assert_eq!(read_body(&site, &kept), pattern(5_000));
    let err = site.body_for_sync(&damaged).expect_err("damaged");
    assert!(
        matches!(&err, Error::Integrity(m) if m.contains("was altered")),
        "{err}"
    );
}

/// A segment checks a record's ends only (`segments`): a byte changed between them is found
/// by the seal of the chunk when it is opened, never read as the body.
#[test]
fn a_body_damaged_between_its_records_ends_is_refused_by_its_seal() {
    let (_hd, _host, sd, site) = host_and_site();
    let damaged = write(&site, "damaged", &pattern(70_000));
    let kept = write(&site, "kept", &pattern(5_000));
    let segments = sd.path().join(crate::segments::SEGMENTS_DIR);
    let file = std::fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .min()
        .expect("a segment");
    let mut bytes = std::fs::read(&file).expect("read");
    // Inside the first record (the damaged body's first chunk), far from its ends.
    bytes[30_000] ^= 1;
    std::fs::write(&file, &bytes).expect("write");
    assert_eq!(site.damaged_bodies().expect("check"), vec![damaged]);
    let err = site.body_for_sync(&damaged).expect_err("damaged");
    assert!(matches!(err, Error::Integrity(_)), "{err}");
    let err = site
        .read_document(
            &Actor::Professional(doctor()),
            &damaged,
            AccessMode::Normal,
            None,
        )
        .expect_err("damaged");
    assert!(matches!(err, Error::Integrity(_)), "{err}");
    assert_eq!(read_body(&site, &kept), pattern(5_000));
    // A backup opens every chunk it copies: it refuses to carry the damage, and says whose.
    let files = TempDir::new().expect("tmp");
    let refused = site.backup_to(&files.path().join("site.backup"), &[]);
    assert!(
        matches!(&refused, Err(Error::Integrity(m)) if m.contains(&damaged.to_string())),
        "{refused:?}"
    );
    assert!(!files.path().join("site.backup").exists());
}

#[test]
fn removing_a_body_never_takes_another_documents_chunks_or_tail() {
    let (_hd, _host, _sd, site) = host_and_site();
    let victim = write(&site, "4 KiB", &pattern(4_096));
    // Cut with a tail (as in `BODIES`, or a format 9 replica's segments), so that a removal
    // reaching past its own tail would show.
    recut_body(&site, &victim, &pattern(4_096), body_chunk_plan);
    assert_eq!(body_rows(&site, &victim), (1, 1));
    // The stored ids just before and just after the victim's, each with two chunks and a
    // tail: their keys are the victim's nearest neighbours in both places.
    let stored = u128::from_be_bytes(site.stored_id(&victim));
    let [before, after] =
        [stored.wrapping_sub(1), stored.wrapping_add(1)].map(|n| site.doc_id(&n.to_be_bytes()));
    // The one before in `BODIES`, the one after in segments (`BODY_PLACES`, values never
    // read here): a removal clears its keys' range in both.
    let txn = site.begin_raw_write().expect("write");
    for (id, table) in [(before, BODIES), (after, BODY_PLACES)] {
        let mut rows = txn.open_table(table).expect("table");
        let stored = site.stored_id(&id);
        for (place, n) in [
            (ChunkPlace::Main, 0),
            (ChunkPlace::Main, 1),
            (ChunkPlace::Tail, 2),
        ] {
            rows.insert(body_key(&stored, place, n).as_slice(), [0u8; 16].as_slice())
                .expect("insert");
        }
    }
    site.bodies(&txn)
        .expect("bodies")
        .remove(&site.stored_id(&before))
        .expect("remove");
    txn.commit().expect("commit");
    assert_eq!(body_rows(&site, &before), (0, 0), "removed, tail and all");
    assert_eq!(
        body_rows(&site, &victim),
        (1, 1),
        "the victim's chunk and tail stay"
    );
    assert_eq!(read_body(&site, &victim), pattern(4_096));
    let txn = site.begin_raw_write().expect("write");
    site.bodies(&txn)
        .expect("bodies")
        .remove(&site.stored_id(&victim))
        .expect("remove");
    txn.commit().expect("commit");
    assert_eq!(body_rows(&site, &victim), (0, 0));
    let txn = site.begin_read().expect("read");
    let after_rows = txn
        .open_table(BODY_PLACES)
        .expect("places")
        .range(
            body_key(&site.stored_id(&after), ChunkPlace::Main, 0).as_slice()
                ..=body_key(&site.stored_id(&after), ChunkPlace::Tail, u32::MAX).as_slice(),
        )
        .expect("range")
        .count();
    assert_eq!(after_rows, 3, "the next document's rows stay");
}

/// One whole body as a single piece.
fn whole(id: DocId, body: &[u8]) -> BodyPiece {
    BodyPiece {
        doc: id,
        offset: 0,
        total: body.len() as u64,
        bytes: body.to_vec(),
    }
}

#[test]
fn the_host_takes_a_body_only_from_the_site_that_owes_it_and_a_bad_one_keeps_the_debt() {
    let (_hd, host, _sd, site) = host_and_site();
    let origin = site.config().site_id;
    let body = b"the real body (synthetic)".to_vec();
    let id = write(&site, "CR", &body);
    // The metadata alone: the host records the body as owed by the site that wrote it.
    for (seq, change) in site.outbox(0, usize::MAX).expect("outbox") {
        host.apply_remote(origin, seq, &change).expect("apply");
    }
    assert_eq!(host.bodies_owed_by(origin).expect("owed"), vec![(id, 0)]);

    // Another site, with the right bytes or bogus ones: refused, nothing kept, still owed.
    let other = SiteId(origin.0 + 1);
    for bytes in [body.clone(), vec![0; body.len()]] {
        let err = host
            .receive_pieces_from(other, &[whole(id, &bytes)])
            .expect_err("another site owes nothing");
        assert!(err.to_string().contains("owes no body"), "{err}");
    }
    assert!(!host.has_body(&id).expect("has"));
    assert_eq!(host.bodies_owed_by(origin).expect("owed"), vec![(id, 0)]);
    // The host never takes pieces outside a site's session.
    assert!(host.receive_body_pieces(&[whole(id, &body)]).is_err());

    // The owing site sends a corrupt body: the pieces go, the debt stays.
    let half = body.len() / 2;
    let mut piece = whole(id, &body[..half]);
    piece.total = body.len() as u64;
    assert_eq!(
        host.receive_pieces_from(origin, &[piece]).expect("half"),
        vec![false]
    );
    assert_eq!(host.body_progress(&id).expect("progress"), half as u64);
    let mut bogus = whole(id, &vec![7; body.len() - half]);
    bogus.offset = half as u64;
    bogus.total = body.len() as u64;
    assert!(matches!(
        host.receive_pieces_from(origin, &[bogus]),
        Err(Error::Integrity(_))
    ));
    assert_eq!(host.body_progress(&id).expect("progress"), 0);
    assert!(!host.has_body(&id).expect("has"));
    assert_eq!(
        host.bodies_owed_by(origin).expect("owed"),
        vec![(id, 0)],
        "a corrupt body resets the progress, never the debt"
    );

    // A body the site does not owe (here: its debt cleared behind the host's back) is refused
    // even from the site that wrote it.
    let owed_row = {
        let txn = host.begin_write().expect("write");
        let mut k = host.stored_id(&id).to_vec();
        k.extend_from_slice(&origin.0.to_be_bytes());
        txn.open_table(OWED_BODIES)
            .expect("owed")
            .remove(k.as_slice())
            .expect("remove");
        txn.commit().expect("commit");
        k
    };
    let err = host
        .receive_pieces_from(origin, &[whole(id, &body)])
        .expect_err("not owed");
    assert!(err.to_string().contains("owes no body"), "{err}");
    {
        let txn = host.begin_write().expect("write");
        txn.open_table(OWED_BODIES)
            .expect("owed")
            .insert(owed_row.as_slice(), ())
            .expect("insert");
        txn.commit().expect("commit");
    }

    // The real body from the site that owes it is stored, and the debt is settled.
    assert_eq!(
        host.receive_pieces_from(origin, &[whole(id, &body)])
            .expect("whole"),
        vec![true]
    );
    assert!(host.has_body(&id).expect("has"));
    assert!(host.bodies_owed_by(origin).expect("owed").is_empty());
    // Sent again after it is stored: nothing to do, and nothing refused.
    assert_eq!(
        host.receive_pieces_from(origin, &[whole(id, &body)])
            .expect("again"),
        vec![true]
    );
}

/// When the host last vouched the site's cache (its lease runs from there).
fn as_of(r: &Replica) -> Millis {
    r.authority_freshness().expect("freshness").0
}

/// Pulls `site`'s log from `host` in batches of at most `max` items, as a session does; the
/// lease outcome of the last batch, and the number of batches.
fn pull_pages(host: &Replica, site: &Replica, max: usize) -> (Option<Lease>, usize) {
    for pages in 1..10_000 {
        let page = host
            .pull_page(
                site.config().site_id,
                site.pull_cursor().expect("cursor"),
                max,
            )
            .expect("page");
        let applied = site.apply_pull(&page.items).expect("apply");
        if !page.more {
            return (applied.lease, pages);
        }
    }
    panic!("the pull never ended");
}

/// `host_and_site_on_a_clock`, with the host's clock `ahead` ms ahead of the site's.
fn host_ahead_of_site(
    ahead: i64,
) -> (
    (TempDir, TempDir),
    Arc<std::sync::atomic::AtomicI64>,
    Replica,
    Replica,
) {
    use std::sync::atomic::Ordering;
    let ((hd, sd), now, host, site) = host_and_site_on_a_clock();
    drop(host);
    let host = open_at(hd.path(), &KeySource::File, {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst) + ahead)
    })
    .expect("host");
    ((hd, sd), now, host, site)
}

#[test]
fn a_heartbeat_renews_the_lease_only_for_the_site_and_the_log_head_it_names() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    let site_id = site.config().site_id;
    now.fetch_add(1000, Ordering::SeqCst);
    assert_eq!(pull_pages(&host, &site, 1024).0, Some(Lease::Renewed));
    let current = as_of(&site);
    assert_eq!(current, now.load(Ordering::SeqCst));
    assert_eq!(
        site.pull_cursor().expect("cursor"),
        host.log_head(site_id).expect("head")
    );

    // The host writes: the site's log grows, the site has not pulled it.
    write(&host, "new at the host", b"body");
    let cursor = site.pull_cursor().expect("cursor");
    let head = host.log_head(site_id).expect("head");
    assert!(head > cursor);
    now.fetch_add(1000, Ordering::SeqCst);
    let admit = |signed: SignedRecord| {
        site.apply_pull(&[(cursor, PullItem::Authority(signed))])
            .expect("apply")
            .lease
    };
    // A heartbeat for the log head the site has not reached (as the host answers a Hello that
    // claims it): not admitted, nothing moves.
    let ahead_of_it = host
        .site_heartbeat(site_id, head)
        .expect("heartbeat")
        .1
        .expect("current at head");
    assert_eq!(admit(ahead_of_it.clone()), Some(Lease::NotVouched));
    // For another site, even naming this site's cursor.
    let other = host
        .sign_heartbeat_in(
            &host.begin_read().expect("read"),
            host.now(),
            Covers::Log {
                site: SiteId(site_id.0 + 1),
                log_head: cursor,
            },
        )
        .expect("sign");
    assert_eq!(admit(other), Some(Lease::NotVouched));
    // A format 1 heartbeat vouches for nothing.
    let key = host.signing.as_ref().expect("host key");
    let v1 = crate::authority::sign(key, 1, &AuthorityRecord::HeartbeatV1 { at: host.now() })
        .expect("sign");
    assert_eq!(admit(v1), Some(Lease::NotVouched));
    // A heartbeat among a bundle's records: refused whole.
    let mut bundle = host.export_authority().expect("export");
    bundle.records.push(ahead_of_it);
    let err = site
        .import_authority(&bundle)
        .expect_err("a heartbeat among records");
    assert!(
        err.to_string().contains("heartbeat among its records"),
        "{err}"
    );
    assert_eq!(as_of(&site), current, "the lease did not move");
    assert_eq!(site.pull_cursor().expect("cursor"), cursor);

    // The site's own current heartbeat (its cursor is the head) is admitted once it pulled.
    assert_eq!(pull_pages(&host, &site, 1024).0, Some(Lease::Renewed));
    assert_eq!(as_of(&site), now.load(Ordering::SeqCst));
    now.fetch_add(1000, Ordering::SeqCst);
    let cursor = site.pull_cursor().expect("cursor");
    let (log_head, hb) = host.site_heartbeat(site_id, cursor).expect("heartbeat");
    assert_eq!(log_head, cursor);
    assert_eq!(admit(hb.expect("current")), Some(Lease::Renewed));
    assert_eq!(as_of(&site), now.load(Ordering::SeqCst));
    // A site behind gets no heartbeat at Hello.
    assert!(
        host.site_heartbeat(site_id, cursor - 1)
            .expect("hb")
            .1
            .is_none()
    );
}

#[test]
fn a_pull_passes_the_entries_a_site_no_longer_receives_and_ends_current() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    let site_id = site.config().site_id;
    for i in 0..5 {
        write(&host, &format!("doc {i}"), b"body");
    }
    // The dossier leaves the site's scope: what was logged for it is no longer sent.
    for rpps in [doctor(), nurse()] {
        host.bind_professional(site_id, &rpps, false)
            .expect("unbind");
    }
    now.fetch_add(1000, Ordering::SeqCst);
    let (lease, pages) = pull_pages(&host, &site, 2);
    // Six entries (five documents, the scope exit), three read per batch: the first batch
    // brings no item, and still moves the cursor past what it read.
    assert_eq!(pages, 2);
    assert_eq!(lease, Some(Lease::Renewed));
    assert_eq!(
        site.pull_cursor().expect("cursor"),
        host.log_head(site_id).expect("head")
    );
    assert!(
        !site.has_dossier_key(&ins()).expect("key"),
        "purged on leaving the scope"
    );
}

#[test]
fn a_pull_batch_ends_before_the_entry_that_would_pass_its_weight_and_the_next_goes_on() {
    let (_dirs, _now, host, site) = host_and_site_on_a_clock();
    let site_id = site.config().site_id;
    pull_pages(&host, &site, 1024);
    for i in 0..5 {
        write(&host, &format!("doc {i}"), b"body");
    }
    // Each document weighs 2; at most 5 a batch: two documents, then two, then the last.
    let weigh = |item: &PullItem| u64::from(matches!(item, PullItem::Document(_))) * 2;
    let documents = |items: &[(u64, PullItem)]| {
        items
            .iter()
            .filter(|(_, i)| matches!(i, PullItem::Document(_)))
            .count()
    };
    let mut batches = Vec::new();
    loop {
        let cursor = site.pull_cursor().expect("cursor");
        let page = host
            .pull_page_within(site_id, cursor, 1024, 5, &weigh)
            .expect("page");
        let (covered, last) = page.items.last().expect("a heartbeat ends every batch");
        assert!(matches!(last, PullItem::Authority(_)));
        // The heartbeat covers what the batch holds and no further: the next batch starts at
        // the document left out.
        assert!(page.items.iter().all(|(seq, _)| seq <= covered));
        site.apply_pull(&page.items).expect("apply");
        assert_eq!(site.pull_cursor().expect("cursor"), *covered);
        batches.push(documents(&page.items));
        if !page.more {
            break;
        }
    }
    assert_eq!(batches, [2, 2, 1]);
    // Every document reached the site.
    assert_eq!(site.dossier(&ins()).expect("dossier").documents, 5);
    // An entry heavier than the whole weight still goes, alone.
    for i in 0..2 {
        write(&host, &format!("heavy {i}"), b"body");
    }
    let heavy = |item: &PullItem| u64::from(matches!(item, PullItem::Document(_))) * 100;
    let page = host
        .pull_page_within(
            site_id,
            site.pull_cursor().expect("cursor"),
            1024,
            5,
            &heavy,
        )
        .expect("page");
    assert_eq!((documents(&page.items), page.more), (1, true));
}

#[test]
fn signed_times_ahead_of_the_clock_are_refused_and_change_nothing() {
    use std::sync::atomic::Ordering;
    // A host clock a year ahead: before, its heartbeat dated the site's cache a year ahead,
    // and the lease did not run for a year.
    let (_dirs, now, host, site) = host_ahead_of_site(365 * 24 * 3_600_000);
    let site_id = site.config().site_id;
    let before = (as_of(&site), site.pull_cursor().expect("cursor"));
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        None,
    )
    .expect("grant");
    let page = host.pull_page(site_id, before.1, 1024).expect("page");
    let err = site.apply_pull(&page.items).expect_err("ahead");
    assert!(
        err.to_string().contains("ahead of this replica's clock"),
        "{err}"
    );
    // The heartbeat a Hello gets, were the site current.
    let head = host.log_head(site_id).expect("head");
    let (_, hb) = host.site_heartbeat(site_id, head).expect("heartbeat");
    assert!(
        site.apply_pull(&[(head, PullItem::Authority(hb.expect("hb")))])
            .is_err()
    );
    let err = site
        .import_authority(&host.export_authority().expect("export"))
        .expect_err("ahead");
    assert!(
        err.to_string().contains("ahead of this replica's clock"),
        "{err}"
    );
    // Nothing changed: no grant, the same lease and cursor; and the lease runs out.
    assert_eq!((as_of(&site), site.pull_cursor().expect("cursor")), before);
    assert!(
        !site
            .dossier(&ins())
            .expect("dossier")
            .grants
            .iter()
            .any(|g| g.rpps == nurse())
    );
    now.fetch_add(73 * 3_600_000, Ordering::SeqCst);
    assert!(
        site.authority_freshness().expect("freshness").1,
        "lease over"
    );

    // Within the skew, a host clock a little ahead is fine.
    drop(host);
    let (_dirs, _now, host, site) = host_ahead_of_site(crate::authority::MAX_SKEW - 1000);
    let page = host
        .pull_page(
            site.config().site_id,
            site.pull_cursor().expect("cursor"),
            1024,
        )
        .expect("page");
    assert_eq!(
        site.apply_pull(&page.items).expect("apply").lease,
        Some(Lease::Renewed)
    );
}

#[test]
fn a_bundle_imports_whole_or_not_at_all_and_only_a_whole_one_renews_the_lease() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    let nurse_state = |r: &Replica| {
        r.dossier(&ins())
            .expect("dossier")
            .grants
            .into_iter()
            .find(|g| g.rpps == nurse())
            .map(|g| g.state)
    };
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        None,
    )
    .expect("grant");
    now.fetch_add(1000, Ordering::SeqCst);
    let report = site
        .import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert!(report.lease_renewed);
    assert_eq!(nurse_state(&site), Some(GrantState::Active));
    let renewed = as_of(&site);

    // The host revokes the nurse; the bundle reaches the site with the revocation removed.
    now.fetch_add(1000, Ordering::SeqCst);
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Revoked,
        GrantBasis::CareTeam,
        None,
    )
    .expect("revoke");
    let genuine = host.export_authority().expect("export");
    let mut withheld = genuine.clone();
    withheld.records.retain(|r| {
        !matches!(
            crate::authority::decode(r).map(|v| v.record),
            Ok(AuthorityRecord::Grant(g)) if g.state == GrantState::Revoked
        )
    });
    assert_eq!(withheld.records.len() + 1, genuine.records.len());
    let err = site.import_authority(&withheld).expect_err("incomplete");
    assert!(matches!(err, Error::Integrity(_)), "{err}");
    assert!(err.to_string().contains("incomplete or altered"), "{err}");
    assert_eq!(as_of(&site), renewed, "nothing changed");
    assert_eq!(nurse_state(&site), Some(GrantState::Active));
    // Without the host's vouch it imports as relayed records, and renews no lease.
    let mut unvouched = withheld.clone();
    unvouched.vouch = None;
    let report = site.import_authority(&unvouched).expect("relayed");
    assert!(!report.lease_renewed);
    assert_eq!(as_of(&site), renewed);
    // Past the lease, such a bundle does not bring normal reads back.
    now.fetch_add(73 * 3_600_000, Ordering::SeqCst);
    assert!(site.authority_freshness().expect("f").1, "lease over");
    site.import_authority(&unvouched).expect("relayed");
    assert!(site.authority_freshness().expect("f").1, "still over");
    // A whole bundle does, with the revocation.
    let report = site
        .import_authority(&host.export_authority().expect("export"))
        .expect("whole");
    assert!(report.lease_renewed);
    assert!(!site.authority_freshness().expect("f").1);
    assert_eq!(nurse_state(&site), Some(GrantState::Revoked));
    // A site's own export relays records and vouches for nothing.
    assert!(site.export_authority().expect("export").vouch.is_none());
}

/// The host's copy of `id`.
fn host_meta(host: &Replica, id: &DocId) -> crate::merge::DocumentMeta {
    metas(host)
        .into_iter()
        .find(|m| m.facts.id == *id)
        .expect("at the host")
}

/// Pushes `meta` with `acts` as `site`'s next change; answers what the host did with it.
fn push_as(
    host: &Replica,
    site: &Replica,
    meta: crate::merge::DocumentMeta,
    acts: Vec<(Actor, Action)>,
) -> Applied {
    let origin = site.config().site_id;
    let seq = host.applied_mark(origin).expect("mark") + 1;
    let acts = acts
        .into_iter()
        .map(|(actor, action)| Act { actor, action })
        .collect();
    host.apply_remote(
        origin,
        seq,
        &Change::Document {
            meta: Box::new(meta),
            acts,
        },
    )
    .expect("apply")
}

/// The host's trace entries saying it returned something to a site.
fn returned_traces(host: &Replica) -> Vec<crate::audit::AuditEntry> {
    host.audit_entries(Some(&ins()))
        .expect("audit")
        .into_iter()
        .map(|c| c.entry)
        .filter(|e| !e.allowed && e.outcome_reason.starts_with("returned to site"))
        .collect()
}

#[test]
fn a_pushed_change_is_merged_only_if_an_act_the_host_allows_made_it() {
    let (_hd, host, _sd, site) = host_and_site();
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        None,
    )
    .expect("grant");
    let id = write(&host, "at the host", b"h");
    sync(&host, &site);
    let origin = site.config().site_id;
    let at_site = || {
        metas(&site)
            .into_iter()
            .find(|m| m.facts.id == id)
            .expect("at the site")
    };
    let deleted = || {
        let mut m = at_site();
        m.update(origin, |s| {
            s.availability = Some(crate::model::Availability::Deleted)
        });
        m
    };
    let stranger = Rpps::parse("19999999999").expect("rpps");
    let nurse = Actor::Professional(nurse());
    // (An RPPS that is not one no longer decodes: `ids`.)
    assert!(
        postcard::from_bytes::<Rpps>(&postcard::to_stdvec("not an RPPS").expect("encode")).is_err()
    );
    // No act, an act of another kind, a granted nurse (only the author deletes), a
    // professional the host does not bind to the site, no RPPS, the system: all returned.
    for acts in [
        vec![],
        vec![(nurse.clone(), Action::Mask)],
        vec![(nurse.clone(), Action::Delete)],
        vec![(Actor::Professional(stranger.clone()), Action::Delete)],
        vec![(Actor::System, Action::Delete)],
    ] {
        assert_eq!(
            push_as(&host, &site, deleted(), acts.clone()),
            Applied::Returned,
            "{acts:?}"
        );
    }
    assert_eq!(
        host_meta(&host, &id).state().availability(),
        crate::model::Availability::Approved
    );
    let traced = returned_traces(&host);
    assert_eq!(traced.len(), 5, "{traced:?}");
    assert!(traced.iter().all(|e| e.doc == Some(id)));
    // More acts than any site sends for one document: returned, however good one of them is.
    let flood = vec![(nurse.clone(), Action::Mask); 300];
    let mut m = at_site();
    m.update(origin, |s| s.flags.masque_ps = true);
    assert_eq!(push_as(&host, &site, m, flood), Applied::Returned);
    assert!(
        traced
            .iter()
            .any(|e| e.rule == 6 && e.action == TraceAction::Access(Action::Delete))
    );
    // A mask needs an act too: the stranger's is not taken, the granted nurse's is.
    let masked = || {
        let mut m = at_site();
        m.update(origin, |s| s.flags.masque_ps = true);
        m
    };
    let stranger_masks = vec![(Actor::Professional(stranger), Action::Mask)];
    assert_eq!(
        push_as(&host, &site, masked(), stranger_masks),
        Applied::Returned
    );
    assert!(!host_meta(&host, &id).state().flags.masque_ps);
    assert_eq!(
        push_as(&host, &site, masked(), vec![(nurse, Action::Mask)]),
        Applied::Applied
    );
    assert!(host_meta(&host, &id).state().flags.masque_ps);
    // The author, treating, deletes his own document: merged.
    let mut m = host_meta(&host, &id);
    m.update(origin, |s| {
        s.availability = Some(crate::model::Availability::Deleted)
    });
    let doctor_deletes = vec![(Actor::Professional(doctor()), Action::Delete)];
    assert_eq!(push_as(&host, &site, m, doctor_deletes), Applied::Applied);
}

#[test]
fn a_site_may_advance_only_its_own_counter_of_a_version_vector() {
    let (_hd, host, _sd, site) = host_and_site();
    let id = write(&host, "at the host", b"h");
    sync(&host, &site);
    let origin = site.config().site_id;
    let doctor_masks = || vec![(Actor::Professional(doctor()), Action::Mask)];
    for other in [SiteId(8), host.config().site_id] {
        let held = host_meta(&host, &id);
        let mut m = held.clone();
        m.update(origin, |s| s.flags.masque_ps = true);
        m.update(other, |_| {});
        assert_eq!(push_as(&host, &site, m, doctor_masks()), Applied::Returned);
        assert_eq!(host_meta(&host, &id), held, "nothing of it merged");
    }
    assert!(
        returned_traces(&host)
            .iter()
            .all(|e| e.outcome_reason.contains("version vector"))
    );
    // A new document's clock names its site only.
    let new = write(&site, "new", b"n");
    let Some((_, Change::Document { meta, acts })) = site.outbox(0, 10).expect("outbox").pop()
    else {
        panic!("a document");
    };
    assert_eq!(meta.facts.id, new);
    let acts: Vec<(Actor, Action)> = acts.into_iter().map(|a| (a.actor, a.action)).collect();
    let mut forged = (*meta).clone();
    forged.update(SiteId(8), |_| {});
    assert_eq!(
        push_as(&host, &site, forged, acts.clone()),
        Applied::Returned
    );
    // The same origin's honest changes are merged: the document, then a mask.
    assert_eq!(push_as(&host, &site, *meta, acts), Applied::Applied);
    site.update_document(&Actor::Professional(doctor()), &id, Action::Mask)
        .expect("mask");
    let Some((_, Change::Document { meta, acts })) = site.outbox(0, 10).expect("outbox").pop()
    else {
        panic!("a document");
    };
    let acts = acts.into_iter().map(|a| (a.actor, a.action)).collect();
    assert_eq!(push_as(&host, &site, *meta, acts), Applied::Applied);
    assert!(host_meta(&host, &id).state().flags.masque_ps);
    assert_eq!(host_meta(&host, &id).clock().get(SiteId(8)), 0);
}

#[test]
fn a_new_document_is_written_by_a_professional_the_host_binds_there_as_the_host_knows_him() {
    let (_hd, host, _sd, site) = host_and_site();
    let origin = site.config().site_id;
    write(&site, "model", b"m");
    let Some((_, Change::Document { meta, .. })) = site.outbox(0, 10).expect("outbox").pop() else {
        panic!("a document");
    };
    let forge = |n: u8, author: crate::model::Author, class: &str| {
        let mut facts = meta.facts.clone();
        facts.id = DocId([n; 16]);
        facts.unique_id = format!("urn:test:{n}");
        facts.author = author;
        facts.class = DocClass::parse(class).expect("class");
        crate::merge::DocumentMeta::new(facts, origin, Default::default())
    };
    let pro = |rpps: Rpps, profession| crate::model::Author::Professional { rpps, profession };
    let stranger = Rpps::parse("19999999999").expect("rpps");
    for (n, author, class) in [
        // Not bound to the site by the host.
        (1, pro(stranger, Profession::Medecin), "10"),
        // Bound, but claiming a profession the host's registry does not give him.
        (2, pro(nurse(), Profession::Medecin), "10"),
        // The holder may add patient documents only.
        (3, crate::model::Author::Holder, "10"),
    ] {
        assert_eq!(
            push_as(&host, &site, forge(n, author, class), vec![]),
            Applied::Returned,
            "{n}"
        );
        assert!(
            host.list_documents(&Actor::Holder, &ins())
                .expect("list")
                .iter()
                .all(|m| m.facts.id != DocId([n; 16]))
        );
    }
    assert_eq!(returned_traces(&host).len(), 3);
    // As the host knows them: the nurse as a nurse (row 11), the holder's own upload (the site
    // holds the dossier for its treating doctor's grant).
    for (n, author, class) in [
        (4, pro(nurse(), Profession::Infirmier), "10"),
        (5, crate::model::Author::Holder, "90"),
    ] {
        assert_eq!(
            push_as(&host, &site, forge(n, author, class), vec![]),
            Applied::Applied,
            "{n}"
        );
    }
    // A new document already deleted by someone else before it was pushed: the author did
    // not do it, and the nurse (no grant) may not.
    let mut deleted = forge(6, pro(nurse(), Profession::Infirmier), "10");
    deleted.facts.author = pro(doctor(), Profession::Medecin);
    deleted.update(origin, |s| {
        s.availability = Some(crate::model::Availability::Deleted)
    });
    assert_eq!(
        push_as(&host, &site, deleted.clone(), vec![]),
        Applied::Applied,
        "its author deletes his own"
    );
    let mut by_nurse = forge(7, pro(doctor(), Profession::Medecin), "10");
    by_nurse.update(origin, |s| s.flags.invisible_patient = true);
    by_nurse.facts.author = pro(nurse(), Profession::Infirmier);
    let doctor_hides = vec![(Actor::Professional(doctor()), Action::HideFromPatient)];
    assert_eq!(
        push_as(&host, &site, by_nurse.clone(), doctor_hides),
        Applied::Applied,
        "the treating doctor hides it"
    );
}

#[test]
fn a_documents_entry_carries_every_act_queued_from_it_and_old_entries_their_author() {
    let (_hd, _host, _sd, site) = host_and_site();
    let doctor = Actor::Professional(doctor());
    let id = write(&site, "one", b"1");
    site.update_document(&doctor, &id, Action::Mask)
        .expect("mask");
    site.update_document(&doctor, &id, Action::Delete)
        .expect("delete");
    let acts_of = |change: &Change| match change {
        Change::Document { acts, .. } => acts.iter().map(|a| a.action).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let all = site.outbox(0, 10).expect("outbox");
    assert_eq!(
        all.iter().map(|(_, c)| acts_of(c)).collect::<Vec<_>>(),
        [
            vec![Action::Write, Action::Mask, Action::Delete],
            vec![Action::Mask, Action::Delete],
            vec![Action::Delete]
        ]
    );
    // The same, however many entries are asked for at once.
    let first = site.outbox(0, 1).expect("outbox");
    assert_eq!(
        acts_of(&first[0].1),
        [Action::Write, Action::Mask, Action::Delete]
    );
    let second = site.outbox(all[0].0, 1).expect("outbox");
    assert_eq!(acts_of(&second[0].1), [Action::Mask, Action::Delete]);
    // An entry queued by an earlier build names only the document: its author's acts.
    {
        let txn = site.begin_write().expect("txn");
        site.push_outbox(&txn, |_| Ok(OutboxItem::Document(site.stored_id(&id))))
            .expect("queue");
        txn.commit().expect("commit");
    }
    let (_, last) = site.outbox(0, 10).expect("outbox").pop().expect("entry");
    let Change::Document { acts, .. } = last else {
        panic!("a document");
    };
    assert!(!acts.is_empty());
    assert!(acts.iter().all(|a| a.actor == doctor));
    assert!(acts.iter().any(|a| a.action == Action::Delete));
    assert_eq!(
        site.outbox_by_kind().expect("kinds").get("document"),
        Some(&4)
    );
}

#[test]
fn a_mask_the_host_lifted_comes_back_only_as_a_mask_by_someone_who_may_mask() {
    let (_hd, host, _sd, site) = host_and_site();
    let doctor = Actor::Professional(doctor());
    let id = write(&host, "at the host", b"h");
    host.update_document(&doctor, &id, Action::Mask)
        .expect("mask");
    sync(&host, &site);
    // Concurrently: the host unmasks; the site's doctor (who may mask), not knowing, hides
    // the document from the patient, his version still masked as he received it: that is
    // his mask too, and the merge keeps it (restrictive flags win on concurrency).
    host.update_document(&doctor, &id, Action::Unmask)
        .expect("unmask");
    site.update_document(&doctor, &id, Action::HideFromPatient)
        .expect("hide");
    sync(&host, &site);
    let state = host_meta(&host, &id).state();
    assert!(
        state.flags.invisible_patient && state.flags.masque_ps,
        "merged: restrictive flags win on concurrency, {state:?}"
    );
    assert!(returned_traces(&host).is_empty());
    // Once the site has seen the unmask, a mask without an act is returned.
    host.update_document(&doctor, &id, Action::Unmask)
        .expect("unmask");
    sync(&host, &site);
    let mut m = host_meta(&host, &id);
    assert!(!m.state().flags.masque_ps);
    m.update(site.config().site_id, |s| s.flags.masque_ps = true);
    assert_eq!(push_as(&host, &site, m, vec![]), Applied::Returned);
    // Masked and unmasked at the host again; a version that has not seen this unmask carries
    // the mask back with no act, or with the act of someone who may not mask (the nurse,
    // bound there, holds no grant): each is returned, and the host's unmask stands.
    host.update_document(&doctor, &id, Action::Mask)
        .expect("mask");
    let stale = host_meta(&host, &id);
    host.update_document(&doctor, &id, Action::Unmask)
        .expect("unmask");
    let returned_before = returned_traces(&host).len();
    let with_acts = |acts: Vec<(Actor, Action)>| {
        let mut m = stale.clone();
        m.update(site.config().site_id, |_| {});
        push_as(&host, &site, m, acts)
    };
    let nurse = Actor::Professional(nurse());
    for acts in [vec![], vec![(nurse, Action::HideFromPatient)]] {
        assert_eq!(with_acts(acts), Applied::Returned);
        assert!(!host_meta(&host, &id).state().flags.masque_ps);
    }
    assert_eq!(returned_traces(&host).len(), returned_before + 2);
    // The same version with the doctor's act: his mask, merged.
    assert_eq!(
        with_acts(vec![(doctor, Action::HideFromPatient)]),
        Applied::Applied
    );
    assert!(host_meta(&host, &id).state().flags.masque_ps);
}

#[test]
fn rows_one_to_three_return_what_a_site_pushes_and_the_host_says_why() {
    let (_hd, host, _sd, site) = host_and_site();
    let origin = site.config().site_id;
    write(&site, "model", b"m");
    let Some((_, Change::Document { meta, .. })) = site.outbox(0, 10).expect("outbox").pop() else {
        panic!("a document");
    };
    let by = |n: u8, rpps: Rpps, profession| {
        let mut facts = meta.facts.clone();
        facts.id = DocId([n; 16]);
        facts.unique_id = format!("urn:test:{n}");
        facts.author = crate::model::Author::Professional { rpps, profession };
        crate::merge::DocumentMeta::new(facts, origin, Default::default())
    };
    // Row 3: the holder blocked the nurse.
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Blocked,
        GrantBasis::Consent,
        None,
    )
    .expect("block");
    let nurse_writes = by(1, nurse(), Profession::Infirmier);
    assert_eq!(
        push_as(&host, &site, nurse_writes, vec![]),
        Applied::Returned
    );
    // Row 2: someone acting for an insurer, bound to the site by mistake.
    let adviser = Rpps::parse("10000000006").expect("rpps");
    host.add_professional(&Professional {
        rpps: adviser.clone(),
        profession: Profession::MedecinConseil,
        specialty: None,
        name: None,
    })
    .expect("pro");
    host.bind_professional(origin, &adviser, true)
        .expect("bind");
    let adviser_writes = by(2, adviser, Profession::MedecinConseil);
    assert_eq!(
        push_as(&host, &site, adviser_writes, vec![]),
        Applied::Returned
    );
    // Row 1: the dossier is closed; the doctor's document comes back too.
    host.close_dossier(&ins(), "test", false).expect("close");
    let doctor_writes = by(3, doctor(), Profession::Medecin);
    assert_eq!(
        push_as(&host, &site, doctor_writes, vec![]),
        Applied::Returned
    );
    let rules: Vec<u8> = returned_traces(&host).iter().map(|e| e.rule).collect();
    assert_eq!(rules, [3, 2, 1]);
}

#[test]
fn a_change_from_a_site_of_an_earlier_build_is_its_authors() {
    let (_hd, host, _sd, site) = host_and_site();
    let id = write(&host, "at the host", b"h");
    sync(&host, &site);
    let origin = site.config().site_id;
    let legacy = |f: fn(&mut crate::model::DocState)| {
        let mut m = host_meta(&host, &id);
        m.update(origin, f);
        let seq = host.applied_mark(origin).expect("mark") + 1;
        host.apply_remote(origin, seq, &Change::LegacyDocument(Box::new(m)))
            .expect("apply")
    };
    // Its author, the treating doctor, bound to the site, may mask it.
    assert_eq!(legacy(|s| s.flags.masque_ps = true), Applied::Applied);
    // Nobody may archive it from a site.
    assert_eq!(
        legacy(|s| s.availability = Some(crate::model::Availability::Archived)),
        Applied::Returned
    );
    // Unbound, the author is nobody there.
    host.bind_professional(origin, &doctor(), false)
        .expect("unbind");
    assert_eq!(
        legacy(|s| s.flags.invisible_patient = true),
        Applied::Returned
    );
    let state = host_meta(&host, &id).state();
    assert!(state.flags.masque_ps && !state.flags.invisible_patient);
}

/// Sends `site`'s trace to the host, as a round does first.
fn push_traces(host: &Replica, site: &Replica) {
    let origin = site.config().site_id;
    host.admit_chain_key(origin, &site.trace_chain_key())
        .expect("chain key");
    let records = site.traces_after(0, usize::MAX).expect("traces");
    host.apply_remote_traces(origin, &records, signed(&records).as_ref())
        .expect("traces");
}

#[test]
fn a_restored_site_records_nothing_until_it_took_back_the_chain_it_made() {
    let (_hd, host, sd, site) = host_and_site();
    let origin = site.config().site_id;
    let before = write(&site, "before", b"before (synthetic)");
    push_traces(&host, &site);
    sync(&host, &site);
    let files = TempDir::new().expect("tmp");
    let file = files.path().join("site.backup");
    let taken = site.backup_to(&file, &[]).expect("backup");
    assert_eq!((taken.site_id, taken.role), (origin, Role::Site));
    assert_eq!(backup::inspect(&file).expect("inspect").site_id, origin);
    // After the backup the site goes on, and the host takes it all.
    let after = write(&site, "after", b"after (synthetic)");
    write(&site, "after, again", b"after again (synthetic)");
    push_traces(&host, &site);
    sync(&host, &site);
    let key = files.path().join("kept-apart.key");
    fs::copy(sd.path().join(KEY_FILE), &key).expect("key");
    let dir = files.path().join("restored");
    backup::restore(&file, &dir, &KeySource::File, Some(&key), clock()).expect("restore");
    let r = open_at(&dir, &KeySource::File, clock()).expect("open");
    assert!(r.restore_mark().expect("mark").is_some());
    // The bodies came back with it, from the segments they were kept in, into its own.
    assert_eq!(
        &r.body_for_sync(&before).expect("body")[..],
        b"before (synthetic)"
    );
    {
        use crate::kv::ReadableTableMetadata;
        let txn = r.begin_read().expect("read");
        assert_eq!(
            txn.open_table(BODIES).expect("bodies").len().expect("len"),
            0
        );
        assert!(
            txn.open_table(BODY_PLACES)
                .expect("places")
                .len()
                .expect("len")
                > 0
        );
    }
    assert_eq!(r.damaged_bodies().expect("bodies"), vec![]);
    let (head, queued) = (
        r.trace_head().expect("head"),
        r.outbox_len().expect("outbox"),
    );
    assert!(head < host.trace_mark(origin).expect("mark"));

    // Nothing is recorded, nor read, and a refusal writes nothing.
    let refused = r.put_document(
        &Actor::Professional(doctor()),
        AccessMode::Normal,
        None,
        &ins(),
        doc("during the restore", b"x"),
    );
    assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    assert!(
        r.list_documents(&Actor::Professional(doctor()), &ins())
            .is_err()
    );
    assert_eq!(r.trace_head().expect("head"), head);
    assert_eq!(r.outbox_len().expect("outbox"), queued);

    // The host's copy comes back only link by link under the site's own key: an entry
    // altered, or one past a gap, is refused and nothing is stored.
    let theirs = host.traces_of(origin, head, 1024).expect("host copy");
    assert!(theirs.len() >= 2, "{theirs:?}");
    let mut forged = theirs.clone();
    forged[0].entry.allowed = !forged[0].entry.allowed;
    assert!(matches!(
        r.restore_own_traces(&forged),
        Err(Error::Integrity(_))
    ));
    assert!(r.restore_own_traces(&theirs[1..]).is_err());
    assert_eq!(r.trace_head().expect("head"), head);
    let held = host.trace_head_held(origin).expect("held");
    assert_eq!(
        r.restore_own_traces(&theirs).expect("restore traces"),
        held.0
    );
    // A host that names another end of the chain is not followed.
    let acked = host.applied_mark(origin).expect("applied");
    assert!(matches!(
        r.finish_restore(acked, (held.0, [9; 32])),
        Err(Error::Integrity(_))
    ));
    assert!(r.restore_mark().expect("mark").is_some());
    r.finish_restore(acked, held).expect("finish");
    assert!(r.restore_mark().expect("mark").is_none());
    assert!(r.outbox_issued().expect("issued") >= acked);
    r.verify_audit()
        .expect("the chain verifies across the restore");

    // It syncs on: the document pushed after the backup comes back, a new one goes out with
    // a sequence the host has not seen, and the host's copy of its chain still verifies.
    assert_eq!(
        host.record_site_restore(origin, taken.taken_at)
            .expect("record"),
        1
    );
    let new = write(&r, "after the restore", b"new (synthetic)");
    push_traces(&host, &r);
    sync(&host, &r);
    assert!(metas(&r).iter().any(|m| m.facts.id == after));
    assert!(metas(&host).iter().any(|m| m.facts.id == new));
    host.verify_audit().expect("host chains");
}

/// Swaps the values of two rows of `table` in `r`'s file, as someone with write access to the
/// data folder but not the key can (the replica is closed first, reopened after).
fn swap_rows<K: crate::kv::Ordered>(
    dir: &TempDir,
    table: redb::TableDefinition<K, &'static [u8]>,
    a: K::SelfType<'_>,
    b: K::SelfType<'_>,
) where
    for<'a> K::SelfType<'a>: Clone,
{
    let db = open_raw(dir.path().join(DB_FILE));
    let txn = db.begin_write().expect("txn");
    {
        let mut t = txn.open_table(table).expect("table");
        let va = t
            .get(a.clone())
            .expect("get")
            .expect("row a")
            .value()
            .to_vec();
        let vb = t
            .get(b.clone())
            .expect("get")
            .expect("row b")
            .value()
            .to_vec();
        t.insert(a, vb.as_slice()).expect("insert");
        t.insert(b, va.as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
}

#[test]
fn a_sealed_value_moved_to_another_row_does_not_open() {
    let other = Ins::from_body("2840575123457").expect("ins");
    // Two queued pins of two dossiers: swapped, each would pin the other's dossier.
    let (_hd, _host, sd, site) = host_and_site();
    let base = site.outbox_issued().expect("issued");
    site.pin(&ins(), true).expect("pin");
    site.pin(&other, true).expect("pin");
    drop(site);
    swap_rows(&sd, OUTBOX, base + 1, base + 2);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    // Neither is sent: each is held back, with why, and sync goes on (`withheld`).
    let sent = site.outbox(base, 10).expect("outbox");
    assert_eq!(
        sent.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
        [Change::Withheld, Change::Withheld]
    );
    let held = site.withheld().expect("held");
    assert_eq!(held.len(), 2);
    assert!(
        held.iter().all(|(_, h)| h.reason.contains("integrity")),
        "{held:?}"
    );
    drop(site);
    // Two pending purges: swapped, each would purge the other dossier.
    let (_hd, _host, sd, site) = host_and_site();
    {
        let txn = site.begin_write().expect("txn");
        let mut t = site.digested(&txn, PENDING_PURGES).expect("table");
        for ins in [ins(), other.clone()] {
            let bi = site.blind(&ins);
            let sealed = site
                .keys
                .registry
                .seal(&pending_purge_aad(&bi), ins.matricule().as_bytes())
                .expect("seal");
            t.insert(&bi, sealed.as_slice()).expect("insert");
        }
        drop(t);
        txn.commit().expect("commit");
    }
    let (a, b) = (site.blind(&ins()), site.blind(&other));
    drop(site);
    swap_rows(&sd, PENDING_PURGES, &a, &b);
    let Err(err) = open_at(sd.path(), &KeySource::File, clock()) else {
        panic!("a moved pending purge must not open");
    };
    assert!(matches!(err, Error::Integrity(_)), "{err}");
}

/// Reads row `key` of `table` in the (closed) replica in `dir`.
fn raw_row<K: crate::kv::Ordered>(
    dir: &TempDir,
    table: redb::TableDefinition<K, &'static [u8]>,
    key: K::SelfType<'_>,
) -> Option<Vec<u8>> {
    let db = open_raw(dir.path().join(DB_FILE));
    let txn = db.begin_read().expect("read");
    let t = txn.open_table(table).expect("table");
    t.get(key).expect("get").map(|v| v.value().to_vec())
}

/// Writes row `key` of `table` in the (closed) replica in `dir`, as someone with the data
/// folder but not the key can.
fn put_raw_row<K: crate::kv::Ordered>(
    dir: &TempDir,
    table: redb::TableDefinition<K, &'static [u8]>,
    key: K::SelfType<'_>,
    value: &[u8],
) {
    let db = open_raw(dir.path().join(DB_FILE));
    let txn = db.begin_write().expect("txn");
    txn.open_table(table)
        .expect("table")
        .insert(key, value)
        .expect("insert");
    txn.commit().expect("commit");
}

/// Opens `dir`, expecting an integrity failure that says `says`.
fn refused_at_open(dir: &TempDir, says: &str) {
    match open_at(dir.path(), &KeySource::File, clock()) {
        Err(Error::Integrity(m)) => assert!(m.contains(says), "{m}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("opened: the put-back row would be used"),
    }
}

/// Every file of a replica's data folder, read whole: what someone with a copy of the folder
/// but not the key sees, every table's keys and values included.
fn folder_bytes(dir: &TempDir) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir.path())
        .expect("folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file() && !p.ends_with(KEY_FILE))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

fn assert_nowhere_in_clear(dir: &TempDir, what: &[(&str, Vec<u8>)]) {
    let files = folder_bytes(dir);
    assert!(files.iter().any(|(p, _)| p.ends_with(DB_FILE)), "{files:?}");
    for (path, bytes) in &files {
        for (name, needle) in what {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{name} in clear in {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_grant_put_back_after_its_revocation_is_detected_at_open() {
    let (_hd, host, sd, site) = host_and_site();
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        None,
    )
    .expect("grant");
    sync(&host, &site);
    let subject = subject_key(
        tag::GRANT,
        Some(&site.blind(&ins())),
        Some(&site.rpps_index(&nurse())),
    );
    drop(site);
    let active = raw_row(&sd, AUTHORITY, subject.as_slice()).expect("the active grant");
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Revoked,
        GrantBasis::CareTeam,
        None,
    )
    .expect("revoke");
    sync(&host, &site);
    drop(site);
    let revoked = raw_row(&sd, AUTHORITY, subject.as_slice()).expect("the revoked grant");
    assert_ne!(active, revoked, "the revocation reached the site");
    // The older sealed row still opens under its key and subject: only the digest sees it.
    put_raw_row(&sd, AUTHORITY, subject.as_slice(), &active);
    refused_at_open(&sd, "table authority");
    // Put back as it was, the replica opens again.
    put_raw_row(&sd, AUTHORITY, subject.as_slice(), &revoked);
    open_at(sd.path(), &KeySource::File, clock()).expect("opens again");
}

#[test]
fn a_binding_or_a_scope_copied_to_another_site_at_the_host_is_detected_at_open() {
    if hosts_in_postgres() {
        return;
    }
    let (hd, host, _sd, _site) = host_and_site();
    host.bind_professional(SiteId(7), &doctor(), true)
        .expect("bind");
    let (bound, scoped) = {
        let txn = host.begin_read().expect("read");
        let first = |t: redb::TableDefinition<&'static [u8], ()>| -> Vec<u8> {
            let table = txn.open_table(t).expect("table");
            let mut rows = table.iter().expect("iter");
            rows.next().expect("a row").expect("row").0.value().to_vec()
        };
        let scope = txn.open_table(SCOPE).expect("scope");
        let scoped = scope
            .iter()
            .expect("iter")
            .next()
            .expect("the doctor's dossier entered site 7's scope")
            .expect("row");
        (
            first(SITE_PROS),
            (scoped.0.value().to_vec(), scoped.1.value()),
        )
    };
    drop(host);
    // Site 7's binding and scope copied to site 8 (keys are site ‖ keyed index), without the key.
    let to_site_8 = |key: &[u8]| [&8u32.to_be_bytes()[..], &key[4..]].concat();
    let db = open_raw(hd.path().join(DB_FILE));
    let txn = db.begin_write().expect("txn");
    txn.open_table(SITE_PROS)
        .expect("table")
        .insert(to_site_8(&bound).as_slice(), ())
        .expect("insert");
    txn.commit().expect("commit");
    drop(db);
    refused_at_open(&hd, "table site_pros");
    let db = open_raw(hd.path().join(DB_FILE));
    let txn = db.begin_write().expect("txn");
    txn.open_table(SITE_PROS)
        .expect("table")
        .remove(to_site_8(&bound).as_slice())
        .expect("remove");
    txn.open_table(SCOPE)
        .expect("table")
        .insert(to_site_8(&scoped.0).as_slice(), scoped.1)
        .expect("insert");
    txn.commit().expect("commit");
    drop(db);
    refused_at_open(&hd, "table scope");
}

#[test]
fn a_document_put_back_to_an_older_revision_is_detected_at_open() {
    let (_hd, host, sd, site) = host_and_site();
    let id = write(&site, "CR", b"report");
    let stored = site.stored_id(&id);
    drop(site);
    let before = raw_row(&sd, DOCS, &stored).expect("rev 1");
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    site.update_document(&Actor::Professional(doctor()), &id, Action::Mask)
        .expect("mask");
    drop((site, host));
    put_raw_row(&sd, DOCS, &stored, &before);
    refused_at_open(&sd, "table docs");
}

#[test]
fn a_sealed_setting_put_back_is_detected_at_open() {
    if hosts_in_postgres() {
        return;
    }
    // As the host's PKI register (`put_sealed`) before a site's revocation.
    let dir = TempDir::new().expect("tmp");
    let host = init(&dir, Role::Host, None);
    host.put_sealed("register", b"site 7 enrolled")
        .expect("put");
    drop(host);
    let older = raw_row(&dir, META, "sealed:register").expect("row");
    let host = open_at(dir.path(), &KeySource::File, clock()).expect("reopen");
    host.put_sealed("register", b"site 7 revoked").expect("put");
    drop(host);
    let db = open_raw(dir.path().join(DB_FILE));
    let txn = db.begin_write().expect("txn");
    txn.open_table(META)
        .expect("meta")
        .insert("sealed:register", older.as_slice())
        .expect("insert");
    txn.commit().expect("commit");
    drop(db);
    refused_at_open(&dir, "changed outside Carnet");
}

#[test]
fn a_passphrase_is_stretched_at_the_recommended_cost_and_older_replicas_still_open() {
    let dir = TempDir::new().expect("tmp");
    let pass = || KeySource::Passphrase(Zeroizing::new("correct horse".to_string()));
    let r = Replica::init(
        dir.path(),
        InitOptions {
            role: Role::Site,
            name: "s".into(),
            site_id: Some(SiteId(3)),
            key: pass(),
            host_key: None,
            lease_hours: None,
        },
        clock(),
    )
    .expect("init");
    let keyring = |r: &Replica| -> Keyring {
        let txn = r.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        let row = meta.get(meta_key::KEYRING).expect("get").expect("keyring");
        postcard::from_bytes(row.value()).expect("decode")
    };
    let KeyKind::PassphraseAt { salt, cost } = keyring(&r).kind else {
        panic!("the cost is stored with the salt");
    };
    assert_eq!(cost, KdfCost::RECOMMENDED);
    // As a replica made before the cost was stored: its keys wrapped under the legacy cost.
    let legacy = Key::from_passphrase("correct horse", &salt, KdfCost::LEGACY).expect("argon2");
    {
        let mut k = keyring(&r);
        k.kind = KeyKind::Passphrase { salt };
        k.check = legacy.seal(CHECK_STATE, KEY_CHECK).expect("seal");
        k.index = legacy.wrap(b"index", &r.keys.index).expect("wrap");
        k.registry = legacy.wrap(b"registry", &r.keys.registry).expect("wrap");
        k.audit = legacy.wrap(b"audit", &r.keys.audit).expect("wrap");
        let txn = r.begin_raw_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(
                meta_key::KEYRING,
                postcard::to_stdvec(&k).expect("encode").as_slice(),
            )
            .expect("insert");
        txn.commit().expect("commit");
    }
    drop(r);
    let r = open_at(dir.path(), &pass(), clock()).expect("an older replica opens");
    assert!(matches!(keyring(&r).kind, KeyKind::Passphrase { .. }));
    // A rotation moves it to today's cost.
    r.rotate_master_key(&pass()).expect("rotate");
    assert!(
        matches!(keyring(&r).kind, KeyKind::PassphraseAt { cost, .. } if cost == KdfCost::RECOMMENDED)
    );
    drop(r);
    open_at(dir.path(), &pass(), clock()).expect("opens after rotation");
}

/// Copies every file of the data folder `from` into `to` (a whole folder put back).
fn copy_folder(from: &TempDir, to: &Path) {
    for entry in std::fs::read_dir(from.path()).expect("dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

#[test]
fn a_whole_folder_put_back_is_refused_by_the_high_water_mark() {
    let (_hd, _host, sd, site) = host_and_site();
    let outside = TempDir::new().expect("tmp");
    let mark = outside.path().join("carnet.mark");
    site.check_high_water(&mark).expect("first use");
    write(&site, "first", b"1");
    drop(site);
    let older = TempDir::new().expect("tmp");
    copy_folder(&sd, older.path());
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    site.check_high_water(&mark).expect("the same folder");
    write(&site, "second", b"2");
    drop(site);
    // The older copy put back whole: consistent with itself, behind the mark.
    let newer = TempDir::new().expect("tmp");
    copy_folder(&sd, newer.path());
    copy_folder(&older, sd.path());
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("opens");
    match site.check_high_water(&mark) {
        Err(Error::Integrity(m)) => assert!(m.contains("older copy"), "{m}"),
        other => panic!("a rolled-back folder passed: {other:?}"),
    }
    // A sanctioned restore sets the mark to the restored folder.
    site.reset_high_water(&mark).expect("reset");
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    site.check_high_water(&mark)
        .expect("the restored folder is the reference now");
    drop(site);
    // The mark is this replica's: another replica's mark file is refused.
    let (_hd2, _host2, _sd2, other) = host_and_site();
    assert!(matches!(
        other.check_high_water(&mark),
        Err(Error::Integrity(_))
    ));
    drop(newer);
}

#[test]
fn a_trace_cut_short_is_refused_by_the_high_water_mark() {
    let (_hd, _host, sd, site) = host_and_site();
    let outside = TempDir::new().expect("tmp");
    let mark = outside.path().join("carnet.mark");
    site.check_high_water(&mark).expect("first use");
    let id = write(&site, "doc", b"body");
    let actor = Actor::Professional(doctor());
    for _ in 0..5 {
        site.read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read");
    }
    // The running replica's mover writes the trace head into the mark.
    site.mark_trace_head(std::time::Duration::ZERO)
        .expect("mark");
    // A power cut now: the reads' entries are in the journal only.
    let image = crash_image(site.dir());
    let intact = crash_image(site.dir());
    // Someone zeroes the journal (what a crash before its sync would have left) ...
    let journal = image.path().join(super::journal::JOURNAL_FILE);
    let len = std::fs::metadata(&journal).expect("journal").len();
    std::fs::write(&journal, vec![0u8; len as usize]).expect("zero");
    let cut = open_at(image.path(), &KeySource::File, clock()).expect("opens");
    match cut.check_high_water(&mark) {
        Err(Error::Integrity(m)) => assert!(m.contains("trace entries were removed"), "{m}"),
        other => panic!("a trace cut short passed: {other:?}"),
    }
    drop(cut);
    // ... while the folder as the crash left it opens, its entries replayed from the journal.
    let recovered = open_at(intact.path(), &KeySource::File, clock()).expect("recover");
    recovered
        .check_high_water(&mark)
        .expect("the journal holds every entry the mark names");
    recovered.verify_audit().expect("chain intact");
    drop((site, sd));
}

#[test]
fn no_rpps_nor_ins_in_clear_in_the_host_or_site_tables_of_grants_and_bindings() {
    if hosts_in_postgres() {
        return;
    }
    let (hd, host, sd, site) = host_and_site();
    // Consent given in person to the nurse (a pending grant at the site, queued for the host
    // and a request there), a pin, and a professional registered and not yet sent.
    site.record_pending_grant(&ins(), &nurse())
        .expect("pending grant");
    site.pin(&ins(), true).expect("pin");
    let third = Rpps::parse("10000000009").expect("rpps");
    site.add_professional(&Professional {
        rpps: third.clone(),
        profession: Profession::Pharmacien,
        specialty: None,
        name: None,
    })
    .expect("pro");
    let what = [
        ("the doctor's RPPS", doctor().as_str().as_bytes().to_vec()),
        ("the nurse's RPPS", nurse().as_str().as_bytes().to_vec()),
        ("a third RPPS", third.as_str().as_bytes().to_vec()),
        ("the INS", ins().matricule().as_bytes().to_vec()),
        (
            "the INS's body",
            ins().matricule().as_bytes()[..13].to_vec(),
        ),
    ];
    // Queued at the site, before the host has them.
    assert_nowhere_in_clear(&sd, &what);
    sync(&host, &site);
    assert!(
        host.site_requests().expect("requests").len() >= 2,
        "the pin and the consent are requests at the host"
    );
    assert_nowhere_in_clear(&hd, &what);
    assert_nowhere_in_clear(&sd, &what);
    // Found through the keyed indexes, all the same.
    assert_eq!(
        host.site_professionals(SiteId(7)).expect("bound"),
        vec![doctor(), nurse()]
    );
    assert_eq!(site.professionals().expect("pros").len(), 3);
}

/// Trace entries of `r` whose action is the admin act `what`.
fn admin_traced(r: &Replica, what: &str) -> Vec<crate::audit::AuditEntry> {
    r.audit_entries(None)
        .expect("trace")
        .into_iter()
        .map(|e| e.entry)
        .filter(|e| e.action == TraceAction::Admin(what.into()))
        .collect()
}

/// True when `site` holds anything of document `id`: its metadata, body, or a mark of it.
fn holds_document(site: &Replica, id: &DocId) -> bool {
    let txn = site.begin_read().expect("read");
    let docs = txn
        .open_table(DOCS)
        .expect("docs")
        .get(&site.stored_id(id))
        .expect("get")
        .is_some();
    docs || site.has_body(id).expect("body") || site.missing_bodies().expect("missing").contains(id)
}

#[test]
fn a_professional_unbound_from_the_site_takes_the_others_documents_with_him() {
    let (_hd, host, _sd, site) = host_and_site();
    let doctor_actor = Actor::Professional(doctor());
    let mut from_host = doc("at the host", b"written at the host");
    from_host.unique_id = Some("urn:oid:1.2.3.4.5".into());
    let at_host = host
        .put_document(&doctor_actor, AccessMode::Normal, None, &ins(), from_host)
        .expect("host writes");
    let second = write(&host, "second at the host", b"second");
    let own = write(&site, "written at the site", b"own");
    sync(&host, &site);
    for id in [&at_host, &second, &own] {
        assert!(
            holds_document(&site, id),
            "the site holds {id} while its doctor treats"
        );
    }
    // The site is to mask one of the host's documents; that change waits in its outbox when
    // the host unbinds the doctor (the nurse has no grant: only the site's writing keeps the
    // dossier in its scope).
    site.update_document(&doctor_actor, &second, Action::Mask)
        .expect("mask at the site");
    host.bind_professional(SiteId(7), &doctor(), false)
        .expect("unbind");
    let items = host
        .pull(SiteId(7), site.pull_cursor().expect("cursor"), usize::MAX)
        .expect("pull");
    assert!(
        items
            .iter()
            .any(|(_, i)| matches!(i, PullItem::Withdraw { ins: of, docs }
            if of == &ins() && docs.contains(&at_host) && docs.contains(&second)
                && !docs.contains(&own))),
        "{items:?}"
    );
    let report = site.apply_pull(&items).expect("apply");
    assert_eq!(report.withdrawn, 1, "the masked one waits for its push");
    assert!(!holds_document(&site, &at_host), "withdrawn");
    assert!(
        holds_document(&site, &second),
        "kept until its change is pushed"
    );
    assert!(holds_document(&site, &own), "a site keeps what it wrote");
    assert!(
        site.dossier(&ins()).is_ok(),
        "the dossier stays in the scope"
    );
    let unique_rows = site
        .begin_read()
        .expect("read")
        .open_table(UNIQUE_IDS)
        .expect("uniques")
        .len()
        .expect("len");
    assert_eq!(
        unique_rows, 0,
        "the withdrawn document's unique id went with it"
    );
    // The next round pushes the mask (the host returns it: the doctor no longer practises
    // there) and withdraws the rest.
    sync(&host, &site);
    assert!(!holds_document(&site, &second), "withdrawn after its push");
    assert!(holds_document(&site, &own));
    assert_eq!(
        site.read_document(&doctor_actor, &own, AccessMode::Normal, None)
            .expect("read own")
            .body
            .as_slice(),
        b"own"
    );
    let traced = admin_traced(&site, "documents-withdrawn");
    assert!(!traced.is_empty(), "the withdrawal is traced");
    assert!(
        traced
            .iter()
            .all(|e| e.ins.as_deref() == Some(ins().matricule()))
    );
    site.verify_audit().expect("the site's trace is whole");
    host.verify_audit().expect("the host's trace is whole");
    // Bound again: the host's documents come back.
    host.bind_professional(SiteId(7), &doctor(), true)
        .expect("bind");
    sync(&host, &site);
    assert!(holds_document(&site, &at_host) && holds_document(&site, &second));
}

#[test]
fn a_dossier_back_in_scope_by_the_sites_writing_alone_loses_what_the_site_held_before() {
    let (_hd, host, _sd, site) = host_and_site();
    let at_host = write(&host, "at the host", b"h");
    sync(&host, &site);
    assert!(holds_document(&site, &at_host));
    // The grant ends: the dossier leaves the site's scope. Before the site hears of it, its
    // doctor adds a document (row 11: adding needs no consent), which brings the dossier back
    // into its scope, for what the site wrote only.
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Revoked,
        GrantBasis::Treating,
        None,
    )
    .expect("revoke");
    let own = write(&site, "at the site", b"s");
    let origin = site.config().site_id;
    let changes = site.outbox(0, usize::MAX).expect("outbox");
    let pushed = host.apply_pushed(origin, &changes, &[]).expect("push");
    assert_eq!(pushed.outcomes, [Applied::Applied]);
    site.ack_outbox(changes.last().expect("change").0)
        .expect("ack");
    let items = host
        .pull(origin, site.pull_cursor().expect("cursor"), usize::MAX)
        .expect("pull");
    let leave = items
        .iter()
        .position(|(_, i)| matches!(i, PullItem::Leave(_)));
    let withdraw = items.iter().position(|(_, i)| {
        matches!(i, PullItem::Withdraw { docs, .. } if docs.contains(&at_host) && !docs.contains(&own))
    });
    assert!(
        matches!((leave, withdraw), (Some(l), Some(w)) if l < w),
        "{items:?}"
    );
    site.apply_pull(&items).expect("apply");
    assert!(site.dossier(&ins()).is_ok(), "kept, not purged");
    assert!(holds_document(&site, &own), "a site keeps what it wrote");
    assert!(
        !holds_document(&site, &at_host),
        "what the site may no longer hold is gone"
    );
}

#[test]
fn a_right_back_before_the_pull_withdraws_nothing_and_an_ended_pin_withdraws_the_rest() {
    let (_hd, host, _sd, site) = host_and_site();
    let at_host = write(&host, "at the host", b"h");
    write(&site, "at the site", b"s");
    sync(&host, &site);
    // Unbound and bound again before the site pulls: its rights are whole again.
    host.bind_professional(SiteId(7), &doctor(), false)
        .expect("unbind");
    host.bind_professional(SiteId(7), &doctor(), true)
        .expect("bind");
    sync(&host, &site);
    assert!(holds_document(&site, &at_host));
    // A pin the host accepted, then the doctor unbound: the pin keeps the dossier whole; the
    // pin ended, the host's document is withdrawn.
    site.pin(&ins(), true).expect("pin");
    sync(&host, &site);
    host.decide_pin(SiteId(7), &ins(), true).expect("accept");
    host.bind_professional(SiteId(7), &doctor(), false)
        .expect("unbind");
    sync(&host, &site);
    assert!(holds_document(&site, &at_host), "still pinned");
    host.decide_pin(SiteId(7), &ins(), false)
        .expect("end the pin");
    sync(&host, &site);
    assert!(!holds_document(&site, &at_host), "the pin ended: withdrawn");
    assert!(site.dossier(&ins()).is_ok());
}

/// Rows read raw: table name → each row's key and value, as stored.
type RawRows = std::collections::BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// Every row of every table of the database in `dir`, read raw with redb (no key): table name
/// → its rows' keys and values, as stored.
fn raw_rows(dir: &std::path::Path) -> RawRows {
    use crate::kv::{ReadableTable, TableHandle};
    struct Rows<'a> {
        txn: &'a crate::kv::ReadTransaction,
        out: RawRows,
    }
    impl backup::Tables for Rows<'_> {
        fn table<K: crate::kv::Ordered, V: redb::Value + 'static>(
            &mut self,
            def: redb::TableDefinition<K, V>,
        ) -> Result<()> {
            let table = match self.txn.open_table(def) {
                Ok(t) => t,
                // Created lazily (only where it is used): nothing in it.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let rows = self.out.entry(def.name().to_string()).or_default();
            for row in table.iter()? {
                let (k, v) = row?;
                rows.push((
                    K::as_bytes(&k.value()).as_ref().to_vec(),
                    V::as_bytes(&v.value()).as_ref().to_vec(),
                ));
            }
            Ok(())
        }
    }
    let db = open_raw(dir.join(DB_FILE));
    let txn = db.begin_read().expect("read");
    let mut rows = Rows {
        txn: &txn,
        out: Default::default(),
    };
    backup::each_table(&mut rows).expect("every table");
    let names: Vec<String> = txn
        .as_redb()
        .expect("redb")
        .list_tables()
        .expect("tables")
        .map(|t| t.name().to_string())
        .collect();
    assert!(
        names.iter().all(|n| rows.out.contains_key(n)),
        "a table the scan does not list: {names:?}"
    );
    rows.out
}

/// Where, in `rows`, one of `ids` or the first 6 bytes of one (its creation time) shows:
/// `table (key|value)` for each such row.
fn id_leaks(rows: &RawRows, ids: &[DocId]) -> Vec<String> {
    let holds = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let mut out = Vec::new();
    for (table, rows) in rows {
        for (k, v) in rows {
            for (part, bytes) in [("key", k), ("value", v)] {
                if ids.iter().any(|id| holds(bytes, &id.0[..6])) {
                    out.push(format!("{table} ({part})"));
                }
            }
        }
    }
    out.dedup();
    out
}

#[test]
fn no_table_of_a_site_or_the_host_holds_a_document_id_or_its_time() {
    if hosts_in_postgres() {
        return;
    }
    let (hd, host, sd, site) = host_and_site();
    let origin = site.config().site_id;
    // A second site holding the dossier: the host logs the first site's documents for it.
    let (od, other) = second_site(&host);
    // A second dossier, closed at the host before the site's document in it arrives.
    let closing = closing_held_by_the_site(&host, &site);
    let actor = Actor::Professional(doctor());
    let tail = write(&site, "a body with a tail", &pattern(4_096));
    let mut producer = doc("producer's id", &pattern(9_000));
    producer.unique_id = Some("1.2.250.1.999^4242".into());
    let unique = site
        .put_document(&actor, AccessMode::Normal, None, &ins(), producer)
        .expect("put");
    let returned = site
        .put_document(
            &actor,
            AccessMode::Normal,
            None,
            &closing,
            doc("returned", b"closed meanwhile"),
        )
        .expect("put");
    host.close_dossier(&closing, "holder's request", false)
        .expect("close");
    // The site's changes reach the host without their bodies (owed), and stay queued here.
    let changes = site.outbox(0, usize::MAX).expect("outbox");
    host.apply_remote_batch(origin, &changes).expect("push");
    let returns = host.returned_to(origin).expect("returned");
    assert!(
        matches!(&returns[..], [Returned::Document { id, reason }]
            if *id == returned && reason.contains("not active at the host")),
        "{returns:?}"
    );
    let applied = changes.last().map_or(0, |(seq, _)| *seq);
    site.quarantine_returned(&returns, applied)
        .expect("quarantine");
    let body = site.body_for_sync(&tail).expect("body");
    host.receive_pieces_from(
        origin,
        &[BodyPiece {
            doc: tail,
            offset: 0,
            total: body.len() as u64,
            bytes: body[..1_000].to_vec(),
        }],
    )
    .expect("a piece kept");
    // A document of the host reaches the site without its body, and half of it arrives.
    let from_host = write(&host, "from the host", &pattern(10_000));
    let items = host
        .pull(origin, site.pull_cursor().expect("cursor"), usize::MAX)
        .expect("pull");
    site.apply_pull(&items).expect("apply");
    let body = host.body_for_sync(&from_host).expect("body");
    site.receive_body_piece(&from_host, 0, body.len() as u64, &body[..4_000])
        .expect("a piece kept");
    let forms: Vec<[[u8; 16]; 3]> = [tail, unique]
        .iter()
        .map(|id| [site.stored_id(id), host.stored_id(id), other.stored_id(id)])
        .collect();
    drop((host, site, other));

    let ids = [tail, unique, returned, from_host];
    let (site_rows, host_rows) = (raw_rows(sd.path()), raw_rows(hd.path()));
    let filled = |rows: &RawRows, tables: &[&str]| {
        for t in tables {
            assert!(rows.get(*t).is_some_and(|r| !r.is_empty()), "{t} is empty");
        }
    };
    filled(
        &site_rows,
        &[
            "docs",
            "dossier_docs",
            "body_places",
            "unique_ids",
            "missing_bodies",
            "partial_bodies",
            "partial_progress",
            "quarantine",
            "outbox",
        ],
    );
    filled(
        &host_rows,
        &[
            "docs",
            "dossier_docs",
            "body_places",
            "unique_ids",
            "owed_bodies",
            "returned",
            "site_log",
            "partial_bodies",
            "partial_progress",
        ],
    );
    for (who, rows) in [
        ("site", &site_rows),
        ("host", &host_rows),
        ("other site", &raw_rows(od.path())),
    ] {
        assert_eq!(id_leaks(rows, &ids), Vec::<String>::new(), "at the {who}");
    }
    // The same document is stored otherwise in each replica, and two replicas holding the same
    // documents share no stored id.
    for [at_site, at_host, at_other] in forms {
        assert!(at_site != at_host && at_site != at_other && at_host != at_other);
    }
    let keys = |rows: &RawRows| {
        rows["docs"]
            .iter()
            .map(|(k, _)| k.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(keys(&site_rows).is_disjoint(&keys(&host_rows)));
}

// ---- full rotation (`rekey`) ----

use super::rekey::REKEY_FILE;

fn gone() -> Ins {
    Ins::from_body("2900101123456").expect("ins")
}

fn pinned() -> Ins {
    Ins::from_body("1751299123456").expect("ins")
}

/// A host and a site holding between them a row of each kind a full rotation re-keys:
/// documents with bodies and a producer's unique id, a flag the host cleared, a dossier closed
/// and purged on both (tombstones, the host's `Purged` record, a purge receipt), a pin waiting
/// at the host, and at the site a quarantined document and queued changes of every kind (acts,
/// pin, in-person consent, emergency fetch).
fn a_full_house() -> (TempDir, Replica, TempDir, Replica, Vec<DocId>) {
    let (hd, host, sd, site) = host_and_site();
    let doctor_acts = Actor::Professional(doctor());
    host.create_dossier(new_dossier(gone())).expect("dossier");
    host.set_grant(
        &gone(),
        &doctor(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )
    .expect("grant");
    let mut with_unique = doc("lab results", b"potassium 4.1 (synthetic)");
    with_unique.unique_id = Some("urn:oid:1.2.250.1.999.1".into());
    let ids = vec![
        write(&site, "consultation", b"first body (synthetic)"),
        site.put_document(&doctor_acts, AccessMode::Normal, None, &ins(), with_unique)
            .expect("put"),
        write(&site, "to quarantine", b"returned body (synthetic)"),
    ];
    site.pin(&pinned(), true).expect("pin");
    sync(&host, &site);
    host.update_document(&doctor_acts, &ids[0], Action::Mask)
        .expect("mask");
    host.update_document(&doctor_acts, &ids[0], Action::Unmask)
        .expect("unmask");
    // On the host's queues: a document waiting for its announcement, an emergency to review.
    host.update_document(&doctor_acts, &ids[0], Action::HideFromPatient)
        .expect("hide");
    host.read_document(
        &Actor::Professional(nurse()),
        &ids[1],
        AccessMode::BreakGlass,
        Some("unconscious (synthetic)"),
    )
    .expect("break-glass");
    host.close_dossier(&gone(), "holder's request", true)
        .expect("close");
    host.purge_dossier(&gone()).expect("purge");
    sync(&host, &site);
    assert!(site.purge_receipt(&gone()).expect("receipt").is_some());
    let returns: Vec<Returned> = ids[2..]
        .iter()
        .map(|&id| Returned::Document {
            id,
            reason: "refused (synthetic)".into(),
        })
        .collect();
    site.quarantine_returned(&returns, site.outbox_issued().expect("issued"))
        .expect("quarantine");
    site.update_document(&doctor_acts, &ids[1], Action::Mask)
        .expect("queued act");
    site.pin(&gone(), true).expect("queued pin");
    site.record_pending_grant(&ins(), &nurse())
        .expect("pending grant");
    site.request_emergency_fetch(
        &pinned(),
        &doctor(),
        AccessMode::BreakGlass,
        "unconscious (synthetic)",
    )
    .expect("emergency fetch");
    (hd, host, sd, site, ids)
}

/// Everything a replica answers, to compare before and after a rotation (the listing this
/// makes is traced: the trace is compared without listings).
fn answers(r: &Replica, ids: &[DocId]) -> String {
    let doctor_acts = Actor::Professional(doctor());
    let listing = TraceAction::Access(Action::List);
    let mut out = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n",
        r.list_documents(&doctor_acts, &ins()).expect("list"),
        r.dossiers().expect("dossiers"),
        r.professionals().expect("pros"),
        r.outbox(0, usize::MAX).expect("outbox"),
        r.quarantined().expect("quarantine"),
        r.verify_audit().expect("trace").0,
        r.audit_entries(None)
            .expect("entries")
            .into_iter()
            .filter(|e| e.entry.action != listing)
            .collect::<Vec<_>>(),
        r.purge_receipt(&gone()).expect("receipt"),
        r.authority_version().expect("version"),
        r.trace_chain_key(),
    );
    for id in ids {
        let body = r.body_for_sync(id).map(|b| b.to_vec()).ok();
        out.push_str(&format!("{id:?} {body:?}\n"));
    }
    if r.config().role == Role::Host {
        let site = SiteId(7);
        out.push_str(&format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n",
            r.emergencies(true).expect("pending emergencies"),
            keys_by_doc(r, HIDDEN_DOCS)
                .iter()
                .map(|k| r.doc_id(k))
                .collect::<Vec<_>>(),
            r.pull(site, 0, usize::MAX).expect("log"),
            r.site_requests().expect("requests"),
            r.site_professionals(site).expect("bound"),
            r.site_purge_receipts(&gone()).expect("receipts"),
        ));
    }
    out
}

/// The host keeps the path to each site its connections measured: one per site, the latest
/// replacing the one before, across a reopen; a row it cannot read, key or value, counts as
/// none.
#[test]
fn the_host_keeps_the_path_to_each_site_across_a_reopen() {
    let (hd, host, _sd, _site) = host_and_site();
    assert!(host.site_link_paths().expect("none yet").is_empty());
    let path = |rate| LinkPath {
        rate,
        min_rtt_micros: 300_000,
        measured_at: 1_800_000_000_000,
    };
    host.set_site_link_path(SiteId(2), path(250_000))
        .expect("record");
    host.set_site_link_path(SiteId(3), path(64_000))
        .expect("record");
    host.set_site_link_path(SiteId(2), path(240_000))
        .expect("again");
    let mut txn = host.begin_raw_write().expect("write");
    txn.set_durability(redb::Durability::Immediate)
        .expect("durability");
    txn.open_table(SITE_LINK_PATHS)
        .expect("table")
        .insert(4u32.to_be_bytes().as_slice(), [0xff].as_slice())
        .expect("unreadable row");
    txn.open_table(SITE_LINK_PATHS)
        .expect("table")
        .insert(
            [5u8].as_slice(),
            postcard::to_stdvec(&path(1)).expect("path").as_slice(),
        )
        .expect("a key of another width");
    txn.commit().expect("commit");
    drop(host);
    let host = open_at(hd.path(), &KeySource::File, clock()).expect("reopen");
    assert_eq!(
        host.site_link_paths().expect("paths"),
        vec![(SiteId(2), path(240_000)), (SiteId(3), path(64_000))]
    );
}

#[test]
fn after_a_full_rotation_everything_reads_the_same() {
    if hosts_in_postgres() {
        return;
    }
    let (hd, host, sd, site, ids) = a_full_house();
    assert_eq!(host.emergencies(true).expect("pending").len(), 1);
    assert_eq!(
        keys_by_doc(&host, HIDDEN_DOCS),
        vec![host.stored_id(&ids[0])]
    );
    let before = (answers(&host, &ids), answers(&site, &ids));
    site.set_host_marks(Some((3, 11))).expect("marks");
    let path = LinkPath {
        rate: 250_000,
        min_rtt_micros: 300_000,
        measured_at: 1_800_000_000_000,
    };
    site.set_link_path(path).expect("path");
    host.set_site_link_path(SiteId(2), path)
        .expect("path to the site");
    let (host, report) = host.rotate_full(&KeySource::File).expect("host");
    assert_eq!((report.dossiers, report.documents), (1, 3), "{report:?}");
    assert!(report.body_chunks >= 3 && report.traces > 10, "{report:?}");
    let (site, report) = site.rotate_full(&KeySource::File).expect("site");
    assert_eq!(report.documents, 3, "{report:?}");
    assert_eq!(before, (answers(&host, &ids), answers(&site, &ids)));
    assert_eq!(site.host_marks().expect("marks"), Some((3, 11)), "kept");
    assert_eq!(site.link_path().expect("path"), Some(path), "kept");
    assert_eq!(
        host.site_link_paths().expect("paths"),
        vec![(SiteId(2), path)],
        "kept"
    );
    // Reopened from disk, and still syncing: the queued changes reach the host, which writes
    // back into the site's scope.
    drop((host, site));
    let host = open_at(hd.path(), &KeySource::File, clock()).expect("host");
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("site");
    assert_eq!(before, (answers(&host, &ids), answers(&site, &ids)));
    let new = write(&site, "after the rotation", b"new body (synthetic)");
    sync(&host, &site);
    assert_eq!(site.outbox_len().expect("outbox"), 0);
    let requests = host.site_requests().expect("requests");
    assert!(requests.iter().any(|r| r.ins == gone()), "{requests:?}");
    assert_eq!(
        &host.body_for_sync(&new).expect("body")[..],
        b"new body (synthetic)"
    );
    host.update_document(&Actor::Professional(doctor()), &new, Action::Mask)
        .expect("mask at the host");
    sync(&host, &site);
    let metas = metas(&site);
    assert!(
        metas
            .iter()
            .any(|m| m.facts.id == new && m.state().flags.masque_ps),
        "the host's change reached the site"
    );
    host.verify_audit().expect("host trace");
    site.verify_audit().expect("site trace");
}

/// What an old copy's keys still open in the database file at `dir`, opened raw (no Carnet).
struct OldKeys {
    index: Key,
    registry: Key,
    audit: Key,
    data: Vec<Key>,
    /// The documents' stored ids under the old index key.
    stored_ids: Vec<[u8; 16]>,
}

impl OldKeys {
    fn of(r: &Replica) -> OldKeys {
        let master = r.keys.master.read().expect("lock");
        let txn = r.begin_read().expect("read");
        let data = txn
            .open_table(DOSSIER_KEYS)
            .expect("keys")
            .iter()
            .expect("iter")
            .map(|row| {
                let (k, v) = row.expect("row");
                master
                    .unwrap_key(&aad(&[b"dossier-key", k.value()]), v.value())
                    .expect("unwrap")
            })
            .collect();
        let stored_ids = txn
            .open_table(DOCS)
            .expect("docs")
            .iter()
            .expect("iter")
            .map(|row| *row.expect("row").0.value())
            .collect();
        OldKeys {
            stored_ids,
            index: r.keys.index.clone(),
            registry: r.keys.registry.clone(),
            audit: r.keys.audit.clone(),
            data,
        }
    }

    /// How many rows, per table, open with these keys (with the associated data the code gives
    /// that row) or carry the blind index of a known INS under the old index key.
    fn still_open(&self, dir: &std::path::Path) -> Vec<(&'static str, usize)> {
        let db = open_raw(dir.join(DB_FILE));
        let txn = db.begin_read().expect("read");
        let any_data_key =
            |a: &[u8], sealed: &[u8]| self.data.iter().any(|k| k.open(a, sealed).is_ok());
        let old_bi = ins_index(&self.index, &ins());
        // Rows name documents by their stored id under the old index key.
        let doc_map = super::doc_map::DocMap::new(&self.index);
        let id_of = |stored: &[u8]| doc_map.id(stored.try_into().expect("a stored id")).0;
        let mut docs = 0;
        for row in txn.open_table(DOCS).expect("docs").iter().expect("iter") {
            let (k, v) = row.expect("row");
            let stored: StoredDoc = postcard::from_bytes(v.value()).expect("doc");
            if any_data_key(
                &super::documents::meta_aad(&id_of(k.value()), stored.rev),
                &stored.sealed,
            ) || stored.dossier == old_bi
                || self.stored_ids.contains(k.value())
            {
                docs += 1;
            }
        }
        // Every chunk: the rows of `BODIES`, and the records `BODY_PLACES` names in segments.
        let segments =
            crate::segments::Segments::in_folder(&dir.join(crate::segments::SEGMENTS_DIR))
                .expect("segments");
        let view = segments.view().expect("view");
        let mut chunks: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (table, in_segments) in [(BODIES, false), (BODY_PLACES, true)] {
            for row in txn.open_table(table).expect("table").iter().expect("iter") {
                let (k, v) = row.expect("row");
                let sealed = if in_segments {
                    let at = crate::segments::Location::decode(v.value()).expect("location");
                    view.read(at).expect("record")
                } else {
                    v.value().to_vec()
                };
                chunks.push((k.value().to_vec(), sealed));
            }
        }
        let mut bodies = 0;
        for (k, sealed) in &chunks {
            let id = id_of(&k[1..17]);
            let chunk = u32::from_be_bytes(k[17..].try_into().expect("chunk"));
            if any_data_key(&super::documents::body_aad(&id, chunk), sealed) {
                bodies += 1;
            }
        }
        let mut authority = 0;
        for row in txn
            .open_table(AUTHORITY)
            .expect("auth")
            .iter()
            .expect("iter")
        {
            let (k, v) = row.expect("row");
            if self
                .registry
                .open(&aad(&[b"authority", k.value()]), v.value())
                .is_ok()
                || k.value().windows(32).any(|w| w == old_bi)
            {
                authority += 1;
            }
        }
        let mut keyed = 0;
        for row in txn
            .open_table(DOSSIER_KEYS)
            .expect("keys")
            .iter()
            .expect("iter")
        {
            if *row.expect("row").0.value() == old_bi {
                keyed += 1;
            }
        }
        let mut pros = 0;
        for row in txn.open_table(PROS).expect("pros").iter().expect("iter") {
            let (k, v) = row.expect("row");
            if self.registry.open(&pro_aad(k.value()), v.value()).is_ok()
                || *k.value() == rpps_index_under(&self.index, &doctor())
            {
                pros += 1;
            }
        }
        let mut traces = 0;
        for row in txn.open_table(AUDIT).expect("audit").iter().expect("iter") {
            let (k, v) = row.expect("row");
            let stored: StoredTrace = postcard::from_bytes(v.value()).expect("trace");
            if self
                .audit
                .open(&trace_aad(k.value().0), &stored.sealed)
                .is_ok()
            {
                traces += 1;
            }
        }
        let mut outbox = 0;
        for row in txn
            .open_table(OUTBOX)
            .expect("outbox")
            .iter()
            .expect("iter")
        {
            let (k, v) = row.expect("row");
            if let OutboxItem::DocumentAct { id, sealed_act } =
                postcard::from_bytes(v.value()).expect("item")
                && self
                    .registry
                    .open(&super::sync::act_aad(&id_of(&id), k.value()), &sealed_act)
                    .is_ok()
            {
                outbox += 1;
            }
        }
        let mut quarantine = 0;
        for row in txn.open_table(QUARANTINE).expect("q").iter().expect("iter") {
            let (k, v) = row.expect("row");
            if super::quarantine::reseal_quarantine_row(
                &self.registry,
                &self.registry,
                &DocId(id_of(k.value())),
                v.value(),
            )
            .is_ok()
            {
                quarantine += 1;
            }
        }
        let mut settings = 0;
        for row in txn.open_table(META).expect("meta").iter().expect("iter") {
            let (k, v) = row.expect("row");
            if let Some(name) = k.value().strip_prefix("sealed:")
                && self
                    .registry
                    .open(&aad(&[b"sealed", name.as_bytes()]), v.value())
                    .is_ok()
            {
                settings += 1;
            }
        }
        vec![
            ("docs", docs),
            ("bodies", bodies),
            ("authority", authority),
            ("dossier_keys", keyed),
            ("professionals", pros),
            ("audit", traces),
            ("outbox", outbox),
            ("quarantine", quarantine),
            ("meta sealed:", settings),
        ]
    }
}

#[test]
fn after_a_full_rotation_the_old_keys_open_nothing_and_a_plain_one_does_not_do_that() {
    let (_hd, host, sd, site, _ids) = a_full_house();
    drop(host);
    site.put_sealed("identity", b"a site's TLS identity (synthetic)")
        .expect("sealed setting");
    let old = OldKeys::of(&site);

    // A plain rotation: the old keys still open every table's rows (so this check can fail).
    site.rotate_master_key(&KeySource::File).expect("plain");
    drop(site);
    let opened = old.still_open(sd.path());
    assert!(opened.iter().all(|(_, n)| *n > 0), "{opened:?}");

    let site = open_at(sd.path(), &KeySource::File, clock()).expect("open");
    let (site, _) = site.rotate_full(&KeySource::File).expect("full");
    assert_eq!(
        &site.get_sealed("identity").expect("setting").expect("kept")[..],
        b"a site's TLS identity (synthetic)"
    );
    drop(site);
    let opened = old.still_open(sd.path());
    assert!(opened.iter().all(|(_, n)| *n == 0), "{opened:?}");
    // The records sealed under the old keys went with their segments.
    let segments =
        crate::segments::Segments::in_folder(&sd.path().join(crate::segments::SEGMENTS_DIR))
            .expect("segments");
    assert_eq!(
        segments.sizes().expect("sizes"),
        vec![],
        "no segment is left"
    );
    assert!(
        !sd.path().join(REKEY_FILE).exists() && !sd.path().join(KEY_FILE_NEW).exists(),
        "nothing staged is left"
    );
}

#[test]
fn a_full_rotation_stopped_before_its_commit_point_leaves_the_old_replica() {
    let (_hd, _host, sd, site, ids) = a_full_house();
    let before = answers(&site, &ids);
    let old_key = std::fs::read(sd.path().join(KEY_FILE)).expect("key");
    // Staged, then the process dies before the database moves into place.
    site.stage_rekey(&KeySource::File).expect("staged");
    assert!(sd.path().join(REKEY_FILE).exists() && sd.path().join(KEY_FILE_NEW).exists());
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("old key opens");
    assert_eq!(
        std::fs::read(sd.path().join(KEY_FILE)).expect("key"),
        old_key
    );
    assert!(
        !sd.path().join(REKEY_FILE).exists(),
        "the half-done database is removed at open"
    );
    assert_eq!(before, answers(&site, &ids));
    // A rotation refused midway (here: the replica restoring) changes nothing either.
    site.mark_restored(clock()()).expect("mark");
    let err = site.rotate_full(&KeySource::File).expect_err("restoring");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(!sd.path().join(REKEY_FILE).exists());
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("old key opens");
    assert_eq!(
        std::fs::read(sd.path().join(KEY_FILE)).expect("key"),
        old_key
    );
    site.verify_audit().expect("trace");
}

#[test]
fn a_full_rotation_stopped_after_its_commit_point_opens_with_the_new_key() {
    let (_hd, _host, sd, site, ids) = a_full_house();
    let before = answers(&site, &ids);
    site.stage_rekey(&KeySource::File).expect("staged");
    // The database moved into place; the process dies before the key file follows.
    std::fs::rename(sd.path().join(REKEY_FILE), sd.path().join(DB_FILE)).expect("move");
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("new key opens");
    assert!(
        !sd.path().join(KEY_FILE_NEW).exists(),
        "the new key is in place"
    );
    assert_eq!(before, answers(&site, &ids));
}

#[test]
fn a_full_rotation_carries_the_high_water_mark_even_when_it_stops_after_its_commit_point() {
    let (_hd, _host, sd, site) = host_and_site();
    let outside = TempDir::new().expect("tmp");
    let mark = outside.path().join("carnet.mark");
    site.check_high_water(&mark).expect("first use");
    write(&site, "first", b"1");
    let older = TempDir::new().expect("tmp");
    let (site, _) = site.rotate_full(&KeySource::File).expect("rotate");
    // The rotated folder opens under the mark, now sealed under its new key.
    drop(site);
    copy_folder(&sd, older.path());
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("reopen");
    site.check_high_water(&mark).expect("the rotated folder");
    // Stopped after the database moved into place, before the mark did: the new mark is taken.
    site.stage_rekey(&KeySource::File).expect("staged");
    std::fs::rename(sd.path().join(REKEY_FILE), sd.path().join(DB_FILE)).expect("move");
    drop(site);
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("new key");
    site.check_high_water(&mark)
        .expect("the successor mark is taken");
    assert!(!super::high_water::rekeyed_mark(&mark).exists());
    drop(site);
    // And an older copy of the rotated folder is still refused by it.
    copy_folder(&older, sd.path());
    let site = open_at(sd.path(), &KeySource::File, clock()).expect("opens");
    assert!(matches!(
        site.check_high_water(&mark),
        Err(Error::Integrity(_))
    ));
}

// ---- dossiers opened at a site (`local_dossiers`) ----

fn walk_in() -> Ins {
    Ins::from_body("2900101123456").expect("ins")
}

fn write_as(r: &Replica, rpps: &Rpps, ins: &Ins, title: &str) -> DocId {
    r.put_document(
        &Actor::Professional(rpps.clone()),
        AccessMode::Normal,
        None,
        ins,
        doc(title, title.as_bytes()),
    )
    .expect("put")
}

fn provisional(ins: Ins) -> NewDossier {
    let mut d = new_dossier(ins);
    d.identity.status = IdentityStatus::Provisional;
    d
}

fn host_titles(host: &Replica, ins: &Ins) -> Vec<String> {
    let mut titles: Vec<String> = host
        .list_documents(&Actor::Holder, ins)
        .expect("list")
        .into_iter()
        .map(|m| m.facts.title)
        .collect();
    titles.sort();
    titles
}

#[test]
fn a_dossier_opened_at_a_site_is_usable_at_once_and_the_host_adopts_it() {
    let (_hd, host, _sd, site) = host_and_site();
    let creator = Actor::Professional(doctor());
    site.open_dossier_here(new_dossier(walk_in()), &creator)
        .expect("open here");
    assert!(
        site.open_dossier_here(new_dossier(walk_in()), &creator)
            .is_err(),
        "opened once"
    );
    assert!(
        site.open_dossier_here(new_dossier(ins()), &creator)
            .is_err(),
        "not over a dossier the host signed"
    );
    // Another professional of the site writes; the creator reads it (this encounter).
    let note = write_as(&site, &nurse(), &walk_in(), "nurse's note");
    write_as(&site, &doctor(), &walk_in(), "doctor's note");
    let read = site
        .read_document(&creator, &note, AccessMode::Normal, None)
        .expect("the creator reads what the site wrote");
    assert_eq!(read.meta.facts.title, "nurse's note");
    let info = site.dossier(&walk_in()).expect("dossier");
    assert_eq!(info.head_seq, 0);
    assert_eq!(info.local.as_ref().map(|l| l.held), Some(0));
    assert!(
        host.dossier(&walk_in()).is_err(),
        "the host knows nothing yet"
    );

    sync(&host, &site);
    let adopted = host.dossier(&walk_in()).expect("the host adopted it");
    assert_eq!(adopted.head.identity, identity());
    assert_eq!(
        host_titles(&host, &walk_in()),
        ["doctor's note", "nurse's note"]
    );
    let here = site.dossier(&walk_in()).expect("dossier");
    assert!(here.local.is_none(), "the signed head took over");
    assert_eq!(here.head_seq, adopted.head_seq);
    assert_eq!(here.documents, 2, "nothing lost, nothing doubled");
    assert!(
        site.audit_entries(None)
            .expect("trace")
            .iter()
            .any(|c| matches!(&c.entry.action, crate::audit::TraceAction::Admin(a) if a == "dossier-opened-here")),
        "the opening is traced"
    );
}

#[test]
fn a_provisional_identity_keeps_everything_at_the_site_until_it_is_qualified() {
    let (_hd, host, _sd, site) = host_and_site();
    site.open_dossier_here(provisional(walk_in()), &Actor::Professional(doctor()))
        .expect("open here");
    write_as(&site, &doctor(), &walk_in(), "first aid");
    let kinds = site.outbox_by_kind().expect("outbox");
    assert!(
        !kinds.contains_key("document") && !kinds.contains_key("dossier-proposal"),
        "nothing of a provisional identity is queued: {kinds:?}"
    );
    let held = site
        .dossier(&walk_in())
        .expect("dossier")
        .local
        .expect("local");
    assert_eq!(
        held.held, 3,
        "proposal, the creator's pending grant, the document"
    );
    sync(&host, &site);
    assert!(
        host.dossier(&walk_in()).is_err(),
        "nothing reached the host"
    );

    assert!(
        site.qualify_dossier(&walk_in(), &Rpps::parse("10000000099").expect("rpps"))
            .is_err(),
        "only a professional registered here qualifies an identity"
    );
    site.qualify_dossier(&walk_in(), &doctor())
        .expect("qualify");
    assert!(site.qualify_dossier(&walk_in(), &doctor()).is_err(), "once");
    assert_eq!(
        site.dossier(&walk_in()).expect("d").local.map(|l| l.held),
        Some(0)
    );
    sync(&host, &site);
    let adopted = host.dossier(&walk_in()).expect("adopted");
    assert_eq!(adopted.head.identity.status, IdentityStatus::Qualified);
    assert_eq!(host_titles(&host, &walk_in()), ["first aid"]);
}

#[test]
fn two_sites_opening_the_same_ins_converge_to_one_dossier_whatever_the_order() {
    for a_first in [true, false] {
        let (_hd, host, _sd, a) = host_and_site();
        let (_od, b) = second_site(&host);
        a.open_dossier_here(new_dossier(walk_in()), &Actor::Professional(doctor()))
            .expect("a opens");
        let mut other_traits = new_dossier(walk_in());
        other_traits.identity.first_names = "Alexandre".into();
        b.open_dossier_here(other_traits, &Actor::Professional(doctor()))
            .expect("b opens");
        write_as(&a, &doctor(), &walk_in(), "seen at a");
        write_as(&b, &doctor(), &walk_in(), "seen at b");
        let (first, second) = if a_first { (&a, &b) } else { (&b, &a) };
        sync(&host, first);
        sync(&host, second);
        sync(&host, first);
        let one = host.dossier(&walk_in()).expect("one dossier");
        assert_eq!(host_titles(&host, &walk_in()), ["seen at a", "seen at b"]);
        for site in [&a, &b] {
            let here = site.dossier(&walk_in()).expect("dossier");
            assert!(here.local.is_none());
            assert_eq!(here.head, one.head, "every site ends with the host's head");
        }
        let expected = if a_first { "Alex" } else { "Alexandre" };
        assert_eq!(
            one.head.identity.first_names, expected,
            "the first proposal adopted"
        );
    }
}

#[test]
fn the_host_refuses_a_proposal_it_cannot_take_and_the_site_keeps_what_it_wrote() {
    let (_hd, host, _sd, site) = host_and_site();
    // The host closed the dossier for that INS; the site did not hold it.
    host.create_dossier(new_dossier(walk_in()))
        .expect("host dossier");
    host.close_dossier(&walk_in(), "holder's request", false)
        .expect("close");
    site.open_dossier_here(new_dossier(walk_in()), &Actor::Professional(doctor()))
        .expect("open here");
    let id = write_as(&site, &doctor(), &walk_in(), "written meanwhile");
    let origin = site.config().site_id;
    let changes = site.outbox(0, usize::MAX).expect("outbox");
    let mut returned = Vec::new();
    for (seq, change) in &changes {
        if host.apply_remote(origin, *seq, change).expect("apply") == Applied::Returned
            && let Some(meta) = change.document()
        {
            returned.push(meta.facts.id);
        }
    }
    assert_eq!(returned, [id]);
    site.quarantine_returned(
        &host.returned_to(origin).expect("returned"),
        changes.last().expect("changes").0,
    )
    .expect("quarantine");
    site.ack_outbox(changes.last().expect("changes").0)
        .expect("ack");
    let items = host
        .pull(origin, site.pull_cursor().expect("cursor"), usize::MAX)
        .expect("pull");
    site.apply_pull(&items).expect("apply pull");
    assert!(
        site.dossier(&walk_in()).is_err(),
        "the closure reached the site"
    );
    kept_alone(&site, id, "the dossier for this INS is closed");
    assert_eq!(
        host.dossier(&walk_in()).expect("closed dossier").documents,
        0,
        "the host took nothing into a closed dossier"
    );
}

/// Asserts that `id` is the one document in `site`'s quarantine, kept for a reason saying `why`.
fn kept_alone(site: &Replica, id: DocId, why: &str) {
    let kept = site.quarantined().expect("quarantine");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].record.meta.facts.id, id);
    assert!(
        kept[0].record.reason.contains(why),
        "the site is told why: {}",
        kept[0].record.reason
    );
}

#[test]
fn a_dossier_the_host_refuses_is_dropped_at_its_site_with_what_it_held_kept_in_quarantine() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&host, "held in a signed dossier", b"synthetic");
    sync(&host, &site);
    let origin = site.config().site_id;
    // The host unbinds the creator before the proposal reaches it.
    host.bind_professional(origin, &doctor(), false)
        .expect("unbind");
    site.open_dossier_here(new_dossier(walk_in()), &Actor::Professional(doctor()))
        .expect("open here");
    let id = write_as(&site, &doctor(), &walk_in(), "written before the refusal");
    let changes = site
        .outbox(site.outbox_acked().expect("acked"), usize::MAX)
        .expect("outbox");
    let applied = host.apply_pushed(origin, &changes, &[]).expect("push");
    let returned: Vec<Returned> = applied.returned.into_iter().map(|(_, r)| r).collect();
    let refused = returned
        .iter()
        .find(|r| matches!(r, Returned::Dossier { .. }))
        .expect("the dossier is returned")
        .clone();
    let applied = changes.last().expect("changes").0;
    site.quarantine_returned(&returned, applied)
        .expect("returned");
    site.ack_outbox(applied).expect("ack");
    assert!(site.local_dossiers().expect("local").is_empty());
    assert!(site.dossier(&walk_in()).is_err(), "the dossier is gone");
    kept_alone(&site, id, "not a professional the host binds");
    assert_eq!(site.outbox_by_kind().expect("outbox").get("document"), None);
    site.verify_audit().expect("the site's trace verifies");
    // Told again (a repeated Welcome): nothing changes.
    site.quarantine_returned(std::slice::from_ref(&refused), applied)
        .expect("again");
    assert_eq!(site.quarantined().expect("quarantine").len(), 1);
    assert_eq!(site.quarantine_len().expect("count"), 1);
    // A return can never take away a dossier the host signed.
    let held = site.dossier(&ins()).expect("signed dossier").documents;
    assert!(held > 0);
    let signed = Returned::Dossier {
        ins: ins(),
        reason: "forged".into(),
    };
    site.quarantine_returned(&[signed], site.outbox_issued().expect("issued"))
        .expect("returned");
    assert_eq!(
        site.dossier(&ins())
            .expect("a signed dossier stays")
            .documents,
        held
    );
    assert_eq!(site.quarantined().expect("quarantine").len(), 1);
    // The walk-in's dossier opened again here: the refusal of the first one told again (the
    // site's acknowledgement lost) leaves it, the host not having decided its proposal yet.
    site.open_dossier_here(new_dossier(walk_in()), &Actor::Professional(doctor()))
        .expect("open again");
    write_as(&site, &doctor(), &walk_in(), "written after the refusal");
    site.quarantine_returned(std::slice::from_ref(&refused), applied)
        .expect("told again");
    assert!(site.dossier(&walk_in()).is_ok(), "the new dossier stays");
    assert_eq!(site.quarantine_len().expect("count"), 1);
    // Refused once the host has its proposal: it goes, what it held kept.
    let issued = site.outbox_issued().expect("issued");
    site.quarantine_returned(std::slice::from_ref(&refused), issued)
        .expect("refused");
    assert!(
        site.dossier(&walk_in()).is_err(),
        "refused on its own proposal"
    );
    assert_eq!(site.quarantine_len().expect("count"), 2);
    // Opened again with a provisional identity: its proposal is held back, never sent, so no
    // refusal is of it.
    let mut provisional = new_dossier(walk_in());
    provisional.identity.status = IdentityStatus::Provisional;
    site.open_dossier_here(provisional, &Actor::Professional(doctor()))
        .expect("open provisional");
    site.quarantine_returned(&[refused], site.outbox_issued().expect("issued"))
        .expect("held");
    assert!(
        site.dossier(&walk_in()).is_ok(),
        "the held proposal's dossier stays"
    );
}

#[test]
fn a_dossier_the_host_takes_from_a_site_clears_its_earlier_refusal_there() {
    // Adopted (the host holds no dossier for the INS), then merged (it holds one).
    for host_holds in [false, true] {
        let (_hd, host, _sd, site) = host_and_site();
        if host_holds {
            host.create_dossier(new_dossier(walk_in())).expect("host's");
        }
        let origin = site.config().site_id;
        let doctor_here = Actor::Professional(doctor());
        let push = |title: &str| -> u64 {
            site.open_dossier_here(new_dossier(walk_in()), &doctor_here)
                .expect("open here");
            write_as(&site, &doctor(), &walk_in(), title);
            let changes = site
                .outbox(site.outbox_acked().expect("acked"), usize::MAX)
                .expect("outbox");
            host.apply_pushed(origin, &changes, &[]).expect("push");
            changes.last().expect("changes").0
        };
        // Refused (the doctor not bound there); the site's acknowledgement never reaches the
        // host.
        host.bind_professional(origin, &doctor(), false)
            .expect("unbind");
        let first = push("first");
        site.quarantine_returned(&host.returned_to(origin).expect("returned"), first)
            .expect("refused");
        site.ack_outbox(first).expect("ack");
        // Opened again once the doctor is bound: taken, and the refusal is told no more.
        host.bind_professional(origin, &doctor(), true)
            .expect("bind");
        let second = push("second");
        assert!(host.dossier(&walk_in()).is_ok(), "taken");
        let returns = host.returned_to(origin).expect("returned");
        assert!(
            !returns
                .iter()
                .any(|r| matches!(r, Returned::Dossier { .. })),
            "host holds: {host_holds}, {returns:?}"
        );
        site.quarantine_returned(&returns, second).expect("welcome");
        assert_eq!(site.local_dossiers().expect("local"), [walk_in()]);
        assert_eq!(site.quarantine_len().expect("quarantine"), 1);
    }
}

#[test]
fn a_rogue_site_cannot_make_the_host_adopt_what_it_may_not_open() {
    let (_hd, host, _sd, site) = host_and_site();
    let origin = site.config().site_id;
    let stranger = Rpps::parse("10000000099").expect("rpps");
    let mut prov = new_dossier(walk_in());
    prov.identity.status = IdentityStatus::Provisional;
    let cases = [
        // A creator the host does not bind to that site.
        (identity(), Actor::Professional(stranger)),
        // A provisional identity is never shared.
        (prov.identity.clone(), Actor::Professional(doctor())),
        // An identity without names.
        (
            crate::model::Identity {
                birth_name: " ".into(),
                ..identity()
            },
            Actor::Professional(doctor()),
        ),
    ];
    let mut seq = site.outbox_issued().expect("issued");
    for (identity, creator) in cases {
        seq += 1;
        let mut head = host_head_like(&host);
        head.identity = identity;
        let change =
            crate::replica::sync::Change::DossierProposal(Box::new(Proposal { head, creator }));
        assert_eq!(
            host.apply_remote(origin, seq, &change).expect("apply"),
            Applied::Returned
        );
        assert!(host.dossier(&walk_in()).is_err(), "nothing adopted");
        let returns = host.returned_to(origin).expect("returned");
        assert!(
            matches!(&returns[..], [Returned::Dossier { ins, reason }]
                if *ins == walk_in() && reason.contains("did not take the dossier")),
            "the site is told: {returns:?}"
        );
    }
}

/// A head for `walk_in` as a site would propose it.
fn host_head_like(host: &Replica) -> crate::model::DossierHead {
    host.new_head(new_dossier(walk_in())).expect("head")
}

#[test]
fn a_full_rotation_keeps_a_dossier_opened_here_and_what_it_holds_back() {
    let (_hd, host, sd, site) = host_and_site();
    site.open_dossier_here(provisional(walk_in()), &Actor::Professional(doctor()))
        .expect("open here");
    let id = write_as(&site, &doctor(), &walk_in(), "before the rotation");
    let (site, _) = site.rotate_full(&KeySource::File).expect("rotate");
    let site = {
        drop(site);
        open_at(sd.path(), &KeySource::File, clock()).expect("open")
    };
    let state = site
        .dossier(&walk_in())
        .expect("dossier")
        .local
        .expect("local");
    assert_eq!(state.held, 3);
    site.qualify_dossier(&walk_in(), &doctor())
        .expect("qualify");
    sync(&host, &site);
    assert_eq!(host_titles(&host, &walk_in()), ["before the rotation"]);
    assert!(host.has_body(&id).expect("body"));
}

/// A second dossier at the host, the doctor treating, synced to the site: the dossier a test
/// then closes.
fn closing_held_by_the_site(host: &Replica, site: &Replica) -> Ins {
    let closing = Ins::from_body("2840575123456").expect("ins");
    host.create_dossier(new_dossier(closing.clone()))
        .expect("dossier");
    host.set_grant(
        &closing,
        &doctor(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )
    .expect("grant");
    sync(host, site);
    closing
}

/// A dossier closed at the host while the site's document in it waits: the document lands in
/// the site's quarantine, and the quarantine's id of it.
fn quarantined_at_site() -> (TempDir, Replica, TempDir, Replica, Ins, DocId) {
    let (hd, host, sd, site) = host_and_site();
    let closing = closing_held_by_the_site(&host, &site);
    let late = site
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &closing,
            doc("late", b"late body (synthetic)"),
        )
        .expect("put");
    host.close_dossier(&closing, "holder's request", false)
        .expect("close");
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    (hd, host, sd, site, closing, late)
}

#[test]
fn a_document_quarantined_before_it_was_sent_keeps_its_place_in_the_outbox() {
    let (_hd, host, _sd, site, _closing, late) = quarantined_at_site();
    // Written after the one the closure quarantined: its change comes after it.
    let after = site
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &ins(),
            doc("after the closure", b"after (synthetic)"),
        )
        .expect("put");
    let changes = site.outbox(0, usize::MAX).expect("outbox");
    let seqs: Vec<u64> = changes.iter().map(|(seq, _)| *seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {seqs:?}"
    );
    assert!(
        changes.contains(&(seqs[0], Change::Quarantined)),
        "{changes:?}"
    );
    // The host takes the batch whole: no gap where the quarantined document was.
    host.apply_remote_batch(site.config().site_id, &changes)
        .expect("no gap in the site's changes");
    assert!(host_titles(&host, &ins()).contains(&"after the closure".to_string()));
    assert!(!host_titles(&host, &ins()).contains(&"late".to_string()));
    let quarantined = host
        .audit_entries(None)
        .expect("trace")
        .iter()
        .filter(|c| c.entry.action == TraceAction::Admin("change-quarantined-by-site".into()))
        .count();
    assert_eq!(quarantined, 1, "the host traces the quarantined change");
    // The site lets go of the placeholder once acknowledged; the quarantine keeps the document.
    site.ack_outbox(*seqs.last().expect("seq")).expect("ack");
    assert_eq!(site.outbox_len().expect("outbox"), 0);
    assert_eq!(site.quarantined().expect("list")[0].id, late);
    assert!(host.has_body(&after).is_ok());
}

#[test]
fn a_returned_change_delivered_again_is_returned_again_and_no_body_is_asked_for() {
    let (_hd, host, _sd, site) = host_and_site();
    let late = site
        .put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            &ins(),
            doc("late", b"late body (synthetic)"),
        )
        .expect("put");
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    let origin = site.config().site_id;
    let changes = site.outbox(0, usize::MAX).expect("outbox");
    // A stale copy of the session reaches the host first; its answer goes nowhere.
    let first = host.apply_pushed(origin, &changes, &[]).expect("first");
    assert_eq!(first.outcomes, [Applied::Returned]);
    assert_eq!(first.returned.len(), 1);
    // The live session's push is a duplicate: answered as the first delivery was.
    let again = host.apply_pushed(origin, &changes, &[]).expect("again");
    assert_eq!(again.outcomes, [Applied::Duplicate]);
    assert!(
        matches!(&again.returned[..], [(0, Returned::Document { id, .. })] if *id == late),
        "{:?}",
        again.returned
    );
    assert!(again.lacking.is_empty(), "{:?}", again.lacking);
}

#[test]
fn a_quarantined_document_is_listed_without_its_body_and_read_by_its_author_alone() {
    let (_hd, _host, _sd, site, closing, late) = quarantined_at_site();
    let listed = site.quarantined().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, late);
    assert_eq!(listed[0].state, QuarantineState::Held);
    assert_eq!(listed[0].record.meta.facts.ins, closing);
    assert!(listed[0].record.reason.contains("closed"), "{listed:?}");
    // Someone with the data folder but not the key sees neither the body nor the metadata.
    let db = site.begin_read().expect("read");
    for row in db
        .open_table(QUARANTINE)
        .expect("table")
        .iter()
        .expect("iter")
    {
        let (_, v) = row.expect("row");
        let v = v.value();
        assert!(!v.windows(9).any(|w| w == b"late body"), "body in clear");
        assert!(!v.windows(4).any(|w| w == b"late"), "title in clear");
    }
    drop(db);
    // Its author reads it; another professional registered here, an unknown one and the
    // site's own operator are refused; each attempt is traced on the (purged) dossier.
    assert_eq!(
        *site
            .quarantined_body(&Actor::Professional(doctor()), &late)
            .expect("author"),
        b"late body (synthetic)"
    );
    let stranger = Rpps::parse("19999999999").expect("rpps");
    for who in [
        Actor::Professional(nurse()),
        Actor::Professional(stranger),
        Actor::System,
        Actor::Holder,
    ] {
        let refused = site.quarantined_body(&who, &late);
        assert!(matches!(refused, Err(Error::Denied { .. })), "{who:?}");
    }
    let reads: Vec<bool> = site
        .audit_entries(Some(&closing))
        .expect("trace")
        .into_iter()
        .filter(|e| {
            e.entry.doc == Some(late) && e.entry.action == TraceAction::Access(Action::Read)
        })
        .map(|e| e.entry.allowed)
        .collect();
    assert_eq!(reads, vec![true, false, false, false, false]);
    assert!(matches!(
        site.quarantined_body(&Actor::Professional(doctor()), &DocId([7; 16])),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn a_document_kept_again_in_quarantine_stays_refiled_and_keeps_the_sites_latest_act() {
    let (_hd, host, _sd, site) = host_and_site();
    let closing = closing_held_by_the_site(&host, &site);
    let doctor_here = Actor::Professional(doctor());
    let id = site
        .put_document(
            &doctor_here,
            AccessMode::Normal,
            None,
            &closing,
            doc("kept twice", b"synthetic"),
        )
        .expect("put");
    sync(&host, &site);
    // A change of it returned: kept in quarantine, still in its dossier here; then refiled.
    let returned = Returned::Document {
        id,
        reason: "refused (synthetic)".into(),
    };
    site.quarantine_returned(&[returned], site.outbox_issued().expect("issued"))
        .expect("returned");
    let new = site
        .refile_quarantined(&doctor_here, &id, &ins())
        .expect("refile");
    // Masked here, then its dossier closed before the mask reaches the host: the purge keeps
    // it again, masked.
    site.update_document(&doctor_here, &id, Action::Mask)
        .expect("mask");
    host.close_dossier(&closing, "holder's request", false)
        .expect("close");
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert!(site.dossier(&closing).is_err(), "purged here");
    let kept = site.quarantined_one(&id).expect("show").record;
    assert_eq!(kept.refiled.map(|r| r.doc), Some(new), "refiled once");
    assert!(kept.meta.state().flags.masque_ps, "the latest act kept");
    assert!(matches!(
        site.refile_quarantined(&doctor_here, &id, &ins()),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn a_refiled_document_is_taken_by_the_host_and_the_quarantine_keeps_it_marked() {
    let (_hd, host, _sd, site, _closing, late) = quarantined_at_site();
    let nurse_refile = site.refile_quarantined(&Actor::Professional(nurse()), &late, &ins());
    assert!(matches!(nurse_refile, Err(Error::Denied { .. })));
    assert_eq!(
        site.quarantined_one(&late).expect("show").state,
        QuarantineState::Held,
        "a refused refiling changes nothing"
    );
    let new = site
        .refile_quarantined(&Actor::Professional(doctor()), &late, &ins())
        .expect("refile");
    assert_ne!(new, late);
    let shown = site.quarantined_one(&late).expect("show");
    assert_eq!(shown.state, QuarantineState::Waiting);
    assert_eq!(shown.record.refiled.as_ref().map(|r| r.doc), Some(new));
    assert!(matches!(
        site.refile_quarantined(&Actor::Professional(doctor()), &late, &ins()),
        Err(Error::Invalid(_))
    ));
    sync(&host, &site);
    assert_eq!(
        site.quarantined_one(&late).expect("show").state,
        QuarantineState::Taken
    );
    assert_eq!(read_body(&host, &new), b"late body (synthetic)");
    // Kept, never dropped, and still readable by its author.
    assert_eq!(
        *site
            .quarantined_body(&Actor::Professional(doctor()), &late)
            .expect("author"),
        b"late body (synthetic)"
    );
}

#[test]
fn a_grant_ends_at_an_offline_site_by_its_clock_and_break_glass_remains() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    let id = write(&site, "CR", b"for the nurse (synthetic)");
    let hour = 3_600_000;
    let start = now.load(Ordering::SeqCst);
    // An end must be in the future, and belongs to an active grant that is not the médecin
    // traitant's designation.
    for (state, basis, until) in [
        (GrantState::Active, GrantBasis::CareTeam, start),
        (GrantState::Revoked, GrantBasis::CareTeam, start + hour),
        (
            GrantState::Active,
            GrantBasis::MedecinTraitant,
            start + hour,
        ),
    ] {
        assert!(matches!(
            host.set_grant(&ins(), &nurse(), state, basis, Some(until)),
            Err(Error::Invalid(_))
        ));
    }
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::CareTeam,
        Some(start + hour),
    )
    .expect("grant until");
    sync(&host, &site);
    let nurse_reads =
        |mode, reason| site.read_document(&Actor::Professional(nurse()), &id, mode, reason);
    nurse_reads(AccessMode::Normal, None).expect("before its end");
    // The site hears nothing more from the host; its clock passes the end (not its lease).
    now.fetch_add(2 * hour, Ordering::SeqCst);
    let err = nurse_reads(AccessMode::Normal, None).expect_err("ended");
    assert!(
        matches!(&err, Error::Denied { rule: 11, reason } if reason.contains("ended")),
        "{err}"
    );
    let traced = site.audit_entries(Some(&ins())).expect("audit");
    let last = &traced.last().expect("traced").entry;
    assert!(!last.allowed);
    assert!(
        last.outcome_reason.contains(&format!(
            "the grant ended on {}",
            crate::time::format_rfc3339(start + hour)
        )),
        "{}",
        last.outcome_reason
    );
    nurse_reads(AccessMode::BreakGlass, Some("unconscious")).expect("break-glass");
    // The host's records say the same: the grant is still "active, until" (nothing was
    // re-issued), and the host decides from it the same way.
    let g = host
        .dossier(&ins())
        .expect("dossier")
        .grants
        .into_iter()
        .find(|g| g.rpps == nurse())
        .expect("grant");
    assert_eq!((g.state, g.until), (GrantState::Active, Some(start + hour)));
    assert!(
        host.read_document(&Actor::Professional(nurse()), &id, AccessMode::Normal, None)
            .is_err()
    );
}

#[test]
fn a_dossier_has_one_medecin_traitant_who_stays_until_another_is_designated() {
    let (_hd, host, _sd, site) = host_and_site();
    // The doctor has the same rights as a médecin traitant, and is not one.
    assert_eq!(host.medecin_traitant(&ins()).expect("mt"), None);
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Active,
        GrantBasis::MedecinTraitant,
        None,
    )
    .expect("designate");
    let mt = |r: &Replica| r.medecin_traitant(&ins()).expect("mt").map(|g| g.rpps);
    assert_eq!(mt(&host), Some(doctor()));
    // Revoking, blocking or re-basing the médecin traitant is refused, and traced.
    for (state, basis) in [
        (GrantState::Revoked, GrantBasis::MedecinTraitant),
        (GrantState::Revoked, GrantBasis::Treating),
        (GrantState::Blocked, GrantBasis::Treating),
        (GrantState::Active, GrantBasis::Consent),
    ] {
        let err = host
            .set_grant(&ins(), &doctor(), state, basis, None)
            .expect_err("the médecin traitant stays");
        assert!(
            matches!(&err, Error::Denied { rule: 4, .. } | Error::Invalid(_)),
            "{err}"
        );
    }
    let err = host
        .set_grant(
            &ins(),
            &doctor(),
            GrantState::Blocked,
            GrantBasis::Treating,
            None,
        )
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("designate another médecin traitant first"),
        "{err}"
    );
    assert!(
        host.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .any(|c| !c.entry.allowed
                && c.entry.action == TraceAction::Admin("grant-refused".into()))
    );
    assert_eq!(mt(&host), Some(doctor()));
    // Designating the nurse: the doctor keeps the same rights, and is no longer the one.
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Active,
        GrantBasis::MedecinTraitant,
        None,
    )
    .expect("designate another");
    let grants = host.dossier(&ins()).expect("dossier").grants;
    assert_eq!(grants.iter().filter(|g| g.medecin_traitant()).count(), 1);
    let doctor_grant = grants.iter().find(|g| g.rpps == doctor()).expect("doctor");
    assert_eq!(
        (doctor_grant.state, doctor_grant.basis),
        (GrantState::Active, GrantBasis::Treating)
    );
    assert_eq!(mt(&host), Some(nurse()));
    // Now the doctor may be revoked; the site holds the same, signed.
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Revoked,
        GrantBasis::Treating,
        None,
    )
    .expect("revoke the former one");
    sync(&host, &site);
    assert_eq!(mt(&site), Some(nurse()));
    let at_site = site.dossier(&ins()).expect("dossier").grants;
    assert_eq!(at_site.iter().filter(|g| g.medecin_traitant()).count(), 1);
}

/// A clock the test moves, from the fixed `clock()` time.
fn moving_clock() -> (Arc<std::sync::atomic::AtomicI64>, Clock) {
    let now = Arc::new(std::sync::atomic::AtomicI64::new(1_700_000_000_000));
    let read = now.clone();
    (
        now,
        Arc::new(move || read.load(std::sync::atomic::Ordering::SeqCst)),
    )
}

/// The dossier's signed head as the host holds it now.
fn signed_head(host: &Replica) -> SignedRecord {
    let bundle = host.export_authority().expect("export");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bundle.host_key).expect("key");
    bundle
        .records
        .into_iter()
        .find(|r| {
            matches!(
                crate::authority::verify(&key, r).map(|v| v.record),
                Ok(crate::authority::AuthorityRecord::Dossier(h)) if h.ins == ins()
            )
        })
        .expect("head")
}

#[test]
fn a_closed_dossier_is_purged_only_after_ten_years() {
    use std::sync::atomic::Ordering;
    let (hd, host, _sd, site) = host_and_site();
    let id = write(&site, "doc", b"archived body");
    sync(&host, &site);
    drop(host);
    let (now, moving) = moving_clock();
    let host = open_at(hd.path(), &KeySource::File, moving).expect("host");
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    let closure = host
        .dossier(&ins())
        .expect("dossier")
        .head
        .closure
        .expect("closure");
    assert_eq!(closure.deletion_requested, None);
    // 2023-11-14 plus ten calendar years.
    assert_eq!(
        crate::time::format_date(closure.retention_ends()),
        "2033-11-14"
    );
    let refused = |host: &Replica| {
        let err = host
            .purge_dossier(&ins())
            .expect_err("within the retention");
        assert!(
            matches!(&err, Error::Denied { reason, .. } if reason.contains("archived until 2033-11-14")),
            "{err}"
        );
        assert!(host.has_dossier_key(&ins()).expect("key"), "nothing purged");
        assert_eq!(host.dossier(&ins()).expect("kept").documents, 1);
    };
    refused(&host);
    let last = host
        .audit_entries(None)
        .expect("audit")
        .pop()
        .expect("entry");
    assert_eq!(
        (last.entry.action, last.entry.allowed),
        (TraceAction::Admin("dossier-purge-refused".into()), false)
    );
    // A millisecond before the retention ends, still refused; at its end, purged.
    now.store(closure.retention_ends() - 1, Ordering::SeqCst);
    refused(&host);
    now.store(closure.retention_ends(), Ordering::SeqCst);
    host.purge_dossier(&ins()).expect("retention over");
    assert!(!host.has_dossier_key(&ins()).expect("key"));
    assert!(host.body_for_sync(&id).is_err());
}

#[test]
fn the_holders_deletion_request_allows_the_purge_at_once() {
    let (_hd, host, _sd, _site) = host_and_site();
    // Asked at the closure.
    host.close_dossier(&ins(), "holder's request", true)
        .expect("close");
    let closure = host.dossier(&ins()).expect("dossier").head.closure;
    assert_eq!(closure.and_then(|c| c.deletion_requested), Some(clock()()));
    host.purge_dossier(&ins()).expect("purged at once");
    // Nothing is left to ask the deletion of, or to reopen.
    for err in [
        host.request_deletion(&ins())
            .map(|_| ())
            .expect_err("purged"),
        host.reopen_dossier(&ins(), "x")
            .map(|_| ())
            .expect_err("purged"),
    ] {
        assert!(
            matches!(&err, Error::Denied { rule: 1, reason } if reason.contains("was purged")),
            "{err}"
        );
    }

    // Asked after the closure: only while closed.
    let other = Ins::from_body("2840575123456").expect("ins");
    host.create_dossier(new_dossier(other.clone()))
        .expect("dossier");
    let err = host.request_deletion(&other).expect_err("active");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("not closed")),
        "{err}"
    );
    host.close_dossier(&other, "holder's request", false)
        .expect("close");
    assert!(matches!(
        host.purge_dossier(&other),
        Err(Error::Denied { .. })
    ));
    let closure = host.request_deletion(&other).expect("asked");
    assert_eq!(closure.deletion_requested, Some(clock()()));
    // The closed head is signed again with the request.
    assert_eq!(
        host.dossier(&other).expect("dossier").head.closure,
        Some(closure)
    );
    host.purge_dossier(&other).expect("purged at once");
    assert!(!host.has_dossier_key(&other).expect("key"));
    // A site cannot decide any of it.
    let (_hd, _host, _sd, site) = host_and_site();
    assert!(site.request_deletion(&ins()).is_err());
    assert!(site.reopen_dossier(&ins(), "x").is_err());
}

#[test]
fn reopening_brings_the_archive_back_to_the_host_and_the_site() {
    let (_hd, host, _sd, site) = host_and_site();
    let doctor_actor = Actor::Professional(doctor());
    let id = write(&site, "doc", b"archived body");
    sync(&host, &site);
    let active_head = signed_head(&host);
    let err = host.reopen_dossier(&ins(), "x").expect_err("active");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("not closed")),
        "{err}"
    );
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    let closed_head = signed_head(&host);
    assert!(
        host.reopen_dossier(&ins(), " ").is_err(),
        "a reason is needed"
    );
    // The site purges at its next round and returns its receipt.
    sync(&host, &site);
    assert!(!site.has_dossier_key(&ins()).expect("key"));
    sync(&host, &site);
    assert_eq!(host.site_purge_receipts(&ins()).expect("receipts").len(), 1);
    // A replayed active head from before the closure does not undo it at the site.
    let cursor = site.pull_cursor().expect("cursor");
    site.apply_pull(&[(cursor, PullItem::Authority(active_head))])
        .expect("apply");
    assert!(!site.has_dossier_key(&ins()).expect("key"));
    assert!(site.purge_receipt(&ins()).expect("receipt").is_some());
    // Nor does an active head the host did not sign.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let mut forged = host.dossier(&ins()).expect("dossier").head;
    forged.status = DossierStatus::Active;
    forged.closure = None;
    let forged = crate::authority::sign(
        &forger,
        1_000,
        &crate::authority::AuthorityRecord::Dossier(forged),
    )
    .expect("sign");
    assert!(matches!(
        site.apply_pull(&[(cursor, PullItem::Authority(forged))]),
        Err(Error::Integrity(_))
    ));
    assert!(!site.has_dossier_key(&ins()).expect("key"));

    // The host kept the key, the documents and the grants: reopening brings them back.
    let head = host
        .reopen_dossier(&ins(), "holder's request")
        .expect("reopen");
    assert_eq!((head.status, head.closure), (DossierStatus::Active, None));
    let last = host
        .audit_entries(None)
        .expect("audit")
        .pop()
        .expect("entry");
    assert_eq!(
        last.entry.action,
        TraceAction::Admin("dossier-reopen".into())
    );
    assert!(
        host.site_purge_receipts(&ins())
            .expect("receipts")
            .is_empty(),
        "the receipts answered the closure"
    );
    assert_eq!(
        &host
            .read_document(&doctor_actor, &id, AccessMode::Normal, None)
            .expect("read at the host")
            .body[..],
        b"archived body"
    );
    // The access rules hold as before: a stranger is still denied.
    let stranger = Actor::Professional(Rpps::parse("19999999999").expect("rpps"));
    assert!(matches!(
        host.read_document(&stranger, &id, AccessMode::Normal, None),
        Err(Error::Denied { .. })
    ));
    let err = host.reopen_dossier(&ins(), "again").expect_err("active");
    assert!(matches!(err, Error::Invalid(_)), "{err}");

    // The site receives it whole at its next round: head, grants, documents, body.
    sync(&host, &site);
    assert!(site.has_dossier_key(&ins()).expect("key"));
    assert_eq!(site.purge_receipt(&ins()).expect("receipt"), None);
    let info = site.dossier(&ins()).expect("dossier back");
    assert_eq!(info.head.status, DossierStatus::Active);
    assert!(info.grants.iter().any(|g| g.rpps == doctor()));
    assert_eq!(
        &site
            .read_document(&doctor_actor, &id, AccessMode::Normal, None)
            .expect("read at the site")
            .body[..],
        b"archived body"
    );
    // The closure replayed after the reopening is older: it purges nothing.
    let cursor = site.pull_cursor().expect("cursor");
    let report = site
        .apply_pull(&[(cursor, PullItem::Authority(closed_head))])
        .expect("apply");
    assert_eq!(report.purged, 0);
    assert!(site.has_dossier_key(&ins()).expect("key"));
    // A new closure purges it again, with a new receipt.
    host.close_dossier(&ins(), "closed again", false)
        .expect("close");
    sync(&host, &site);
    assert!(!site.has_dossier_key(&ins()).expect("key"));
    sync(&host, &site);
    assert_eq!(host.site_purge_receipts(&ins()).expect("receipts").len(), 1);
}

#[test]
fn a_receipt_for_an_undone_closure_is_not_kept() {
    let (_hd, host, _sd, site) = host_and_site();
    write(&site, "doc", b"body");
    sync(&host, &site);
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    // The site purges, but its receipt reaches the host only after the reopening.
    let items = host
        .pull(
            site.config().site_id,
            site.pull_cursor().expect("cursor"),
            usize::MAX,
        )
        .expect("pull");
    site.apply_pull(&items).expect("apply");
    assert!(!site.has_dossier_key(&ins()).expect("key"));
    host.reopen_dossier(&ins(), "holder's request")
        .expect("reopen");
    sync(&host, &site);
    assert!(
        host.site_purge_receipts(&ins())
            .expect("receipts")
            .is_empty()
    );
    assert!(site.has_dossier_key(&ins()).expect("key"));
    assert_eq!(metas(&site).len(), 1);
}

#[test]
fn a_closure_and_its_reopening_in_one_batch_purge_nothing() {
    let (_hd, host, _sd, site) = host_and_site();
    let id = write(&site, "doc", b"body");
    sync(&host, &site);
    let cursor = site.pull_cursor().expect("cursor");
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    let closed = signed_head(&host);
    host.reopen_dossier(&ins(), "holder's request")
        .expect("reopen");
    let reopened = signed_head(&host);
    let report = site
        .apply_pull(&[
            (cursor + 1, PullItem::Authority(closed)),
            (cursor + 2, PullItem::Authority(reopened)),
        ])
        .expect("apply");
    assert_eq!(report.purged, 0);
    assert!(
        site.read_document(
            &Actor::Professional(doctor()),
            &id,
            AccessMode::Normal,
            None
        )
        .is_ok()
    );
}

// ---- notifications ----

/// The host's notifications, read as its operator.
fn notified(host: &Replica) -> Vec<Notification> {
    host.notifications(None).expect("notifications")
}

fn kinds(list: &[Notification]) -> Vec<&'static str> {
    list.iter().map(|n| n.kind.name()).collect()
}

fn table_len<K: crate::kv::Ordered, V: redb::Value + 'static>(
    r: &Replica,
    table: redb::TableDefinition<K, V>,
) -> u64 {
    let txn = r.begin_read().expect("read");
    match txn.open_table(table) {
        Ok(t) => t.len().expect("len"),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn an_offline_break_glass_read_tells_the_holder_and_the_medecin_traitant_once() {
    if hosts_in_postgres() {
        return;
    }
    let (_hd, host, _sd, site) = host_and_site();
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Active,
        GrantBasis::MedecinTraitant,
        None,
    )
    .expect("médecin traitant");
    // The doctor writes at the host: his first access, told to the holder only.
    let id = write(&host, "compte rendu", b"cr");
    let first = notified(&host);
    assert_eq!(kinds(&first), ["first_access"]);
    assert_eq!(first[0].recipients, [Recipient::Holder]);
    assert_eq!(
        first[0].kind,
        NotificationKind::FirstAccess { rpps: doctor() }
    );
    // Again: not a first access any more.
    write(&host, "second", b"2");
    assert_eq!(notified(&host).len(), 1);
    sync(&host, &site);
    // The nurse reads by break-glass at the site, offline; the trace reaches the host twice.
    site.read_document(
        &Actor::Professional(nurse()),
        &id,
        AccessMode::BreakGlass,
        Some("unconscious"),
    )
    .expect("break-glass");
    assert!(
        site.notifications(None).is_err(),
        "a site neither makes nor lists notifications"
    );
    assert_eq!(table_len(&site, NOTIFICATIONS), 0);
    push_traces(&host, &site);
    push_traces(&host, &site);
    let list = notified(&host);
    assert_eq!(kinds(&list), ["first_access", "emergency_access"], "once");
    let e = &list[1];
    assert_eq!(e.site, site.config().site_id);
    assert_eq!(e.doc, Some(id));
    assert_eq!(
        e.recipients,
        [Recipient::Holder, Recipient::MedecinTraitant(doctor())]
    );
    let emergency = host.emergencies(false).expect("emergencies");
    assert_eq!(
        e.kind,
        NotificationKind::EmergencyAccess {
            mode: AccessMode::BreakGlass,
            emergency: emergency[0].id
        }
    );
    // The nurse's break-glass counted as her access: her next read is no first access.
    assert_eq!(table_len(&host, FIRST_ACCESSES), 2);
    // A restart changes nothing; listing is traced as the operator's read.
    drop(host);
    let host = open_at(_hd.path(), &KeySource::File, clock()).expect("reopen");
    push_traces(&host, &site);
    assert_eq!(notified(&host).len(), 2);
    assert!(!admin_traced(&host, "operator-notifications-list").is_empty());
    // The holder's export carries both; the spool takes them once.
    let export = host.export_dossier(&Actor::Holder, &ins()).expect("export");
    assert_eq!(export.notifications.len(), 2);
    assert_eq!(host.notifications_to_spool().expect("spool").len(), 2);
    host.mark_notifications_spooled(2).expect("mark");
    host.mark_notifications_spooled(1).expect("never lowered");
    assert!(host.notifications_to_spool().expect("spool").is_empty());
    // A full rotation keeps them, the spool's mark and the first accesses.
    let (host, _) = host.rotate_full(&KeySource::File).expect("rotate");
    assert_eq!(notified(&host).len(), 2);
    assert!(host.notifications_to_spool().expect("spool").is_empty());
    write(&host, "third", b"3");
    assert_eq!(notified(&host).len(), 2, "the doctor's access is known");
}

#[test]
fn a_minors_representatives_are_told_instead_of_the_holder_and_read_it_in_their_export() {
    let (_hd, host, _sd, _site) = host_and_site();
    let mut d = new_dossier(walk_in());
    d.holder = HolderKind::Minor;
    d.identity.birth_date = "2020-01-01".into();
    d.representatives = vec![NewRepresentative {
        name: "Parent".into(),
        relationship: "mother".into(),
    }];
    host.create_dossier(d).expect("minor's dossier");
    write_as(&host, &nurse(), &walk_in(), "vaccination");
    let list = host.notifications(Some(&walk_in())).expect("list");
    assert_eq!(kinds(&list), ["first_access"]);
    let r1 = crate::ids::RepresentativeId(1);
    assert_eq!(list[0].recipients, [Recipient::Representative(r1)]);
    assert!(host.notifications(Some(&ins())).expect("other").is_empty());
    let export = host
        .export_dossier(&Actor::Representative(r1), &walk_in())
        .expect("export");
    assert_eq!(export.notifications, list);
}

#[test]
fn a_document_announced_is_told_once_and_nothing_about_a_hidden_one_is_exported() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, site) = host_and_site_on_a_clock();
    let id = write(&site, "résultat", b"to be announced");
    site.update_document(&Actor::Professional(doctor()), &id, Action::HideFromPatient)
        .expect("hide");
    sync(&host, &site);
    // A break-glass read of the hidden document at the host: told, but not in the holder's
    // export while the document is hidden.
    host.read_document(
        &Actor::Professional(nurse()),
        &id,
        AccessMode::BreakGlass,
        Some("unconscious"),
    )
    .expect("break-glass");
    assert_eq!(kinds(&notified(&host)), ["emergency_access"]);
    let exported = |r: &Replica| {
        r.export_dossier(&Actor::Holder, &ins())
            .expect("export")
            .notifications
    };
    assert!(exported(&host).is_empty(), "about a hidden document");
    now.fetch_add(15 * 24 * 3_600_000, Ordering::SeqCst);
    host.run_announcement_timer().expect("told");
    assert_eq!(notified(&host).len(), 1, "told is not announced");
    now.fetch_add(16 * 24 * 3_600_000, Ordering::SeqCst);
    host.run_announcement_timer().expect("released");
    host.run_announcement_timer().expect("again");
    let list = notified(&host);
    assert_eq!(kinds(&list), ["emergency_access", "document_announced"]);
    assert_eq!(
        list[1].kind,
        NotificationKind::DocumentAnnounced { doc: id }
    );
    assert_eq!(list[1].recipients, [Recipient::Holder]);
    assert_eq!(exported(&host), list, "visible now: both exported");
}

/// A host and a site; a dossier the host holds and the site does not, for which the site
/// opens its own (the walk-in's): what the site traces about it is outside its scope at the
/// host until its push.
fn walk_in_held_by_the_host_opened_at_the_site() -> (TempDir, Replica, TempDir, Replica) {
    let (hd, host, sd, site) = host_and_site();
    host.create_dossier(new_dossier(walk_in())).expect("host's");
    site.open_dossier_here(new_dossier(walk_in()), &Actor::Professional(doctor()))
        .expect("open here");
    (hd, host, sd, site)
}

#[test]
fn a_professionals_accesses_in_one_trace_batch_make_one_first_access() {
    if hosts_in_postgres() {
        return;
    }
    let (_hd, host, _sd, site) = walk_in_held_by_the_host_opened_at_the_site();
    // Three writes by the nurse, outside the site's scope at the host: one pair held, not
    // three.
    for title in ["first aid", "dressing", "follow-up"] {
        write_as(&site, &nurse(), &walk_in(), title);
    }
    push_traces(&host, &site);
    let pairs = |r: &Replica| -> std::collections::BTreeSet<Rpps> {
        r.audit_entries(Some(&walk_in()))
            .expect("audit")
            .iter()
            .filter_map(|c| match (&c.entry.action, &c.entry.actor) {
                (TraceAction::Access(_), crate::audit::TraceActor::Professional { rpps, .. })
                    if c.entry.allowed =>
                {
                    Some(rpps.clone())
                }
                _ => None,
            })
            .collect()
    };
    let professionals = pairs(&site);
    assert!(professionals.contains(&nurse()), "{professionals:?}");
    assert_eq!(
        table_len(&host, HELD_NOTIFICATIONS),
        professionals.len() as u64
    );
    sync(&host, &site);
    let list = host.notifications(Some(&walk_in())).expect("list");
    assert_eq!(list.len(), professionals.len(), "{list:?}");
    assert!(list.iter().all(|n| n.kind.name() == "first_access"));
}

#[test]
fn what_a_site_traced_outside_its_scope_is_told_only_once_the_dossier_enters_it() {
    if hosts_in_postgres() {
        return;
    }
    let (_hd, host, _sd, site) = walk_in_held_by_the_host_opened_at_the_site();
    let id = write_as(&site, &nurse(), &walk_in(), "first aid");
    site.read_document(
        &Actor::Professional(doctor()),
        &id,
        AccessMode::BreakGlass,
        Some("unconscious"),
    )
    .expect("break-glass");
    // Its trace arrives first: outside its scope, nothing is told.
    push_traces(&host, &site);
    assert!(notified(&host).is_empty());
    assert!(table_len(&host, HELD_NOTIFICATIONS) > 0);
    // A full rotation re-keys what is held.
    let (host, _) = host.rotate_full(&KeySource::File).expect("rotate");
    // Then its push: the host merges the dossier, which enters the site's scope.
    sync(&host, &site);
    let list = host.notifications(Some(&walk_in())).expect("list");
    // In the order the site traced them, the emergencies of a batch first.
    assert_eq!(
        kinds(&list),
        ["emergency_access", "first_access"],
        "{list:?}"
    );
    assert_eq!(
        list[1].kind,
        NotificationKind::FirstAccess { rpps: nurse() }
    );
    assert_eq!(table_len(&host, HELD_NOTIFICATIONS), 0);
    sync(&host, &site);
    assert_eq!(notified(&host).len(), 2);
}

#[test]
fn a_purge_drops_the_notifications_of_the_dossier_and_its_first_accesses() {
    let (_hd, host, _sd, _site) = host_and_site();
    host.create_dossier(new_dossier(walk_in())).expect("other");
    write(&host, "cr", b"cr");
    write_as(&host, &doctor(), &walk_in(), "cr");
    assert_eq!(notified(&host).len(), 2);
    host.close_dossier(&ins(), "holder's request", true)
        .expect("close");
    host.purge_dossier(&ins()).expect("purge");
    let left = notified(&host);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].ins, walk_in());
    assert_eq!(table_len(&host, FIRST_ACCESSES), 1);
}

#[test]
fn a_document_or_a_grant_dated_outside_living_memory_is_refused_and_changes_nothing() {
    let (_hd, r, _sd, _site) = host_and_site();
    let before = r.dossier(&ins()).expect("dossier").documents;
    for (start, end) in [
        (Some(i64::MIN), None),
        (Some(-10_000_000_000_000), None),
        (None, Some(i64::MAX)),
        (Some(0), Some(8_000_000_000_000)),
    ] {
        let mut d = doc("dated wrongly", b"synthetic");
        d.service_start = start;
        d.service_end = end;
        let e = r
            .put_document(
                &Actor::Professional(doctor()),
                AccessMode::Normal,
                None,
                &ins(),
                d,
            )
            .expect_err("refused");
        assert!(e.to_string().contains("out of range"), "{e}");
    }
    assert_eq!(r.dossier(&ins()).expect("dossier").documents, before);
    let e = r
        .set_grant(
            &ins(),
            &nurse(),
            GrantState::Active,
            GrantBasis::Consent,
            Some(i64::MAX),
        )
        .expect_err("refused");
    assert!(e.to_string().contains("out of range"), "{e}");
}

#[test]
fn an_outbox_entry_this_build_cannot_read_is_held_back_and_sync_goes_on() {
    let (_hd, host, _sd, site) = host_and_site();
    let stranger = Rpps::parse("19999999999").expect("rpps");
    site.add_professional(&Professional {
        rpps: stranger.clone(),
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    })
    .expect("pro");
    // As an earlier build that took any RPPS would have stored it.
    #[derive(serde::Serialize)]
    struct Loose {
        rpps: String,
        profession: Profession,
        specialty: Option<String>,
        name: Option<String>,
    }
    let bad = postcard::to_stdvec(&Loose {
        rpps: "../\u{1b}[2J".into(),
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    })
    .expect("encode");
    let pro = site.rpps_index(&stranger);
    {
        let txn = site.begin_write().expect("txn");
        let sealed = site.keys.registry.seal(&pro_aad(&pro), &bad).expect("seal");
        site.digested(&txn, PROS)
            .expect("pros")
            .insert(&pro, sealed.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let after = write(&site, "written after it", b"still synced");
    sync(&host, &site);
    assert!(metas(&host).iter().any(|m| m.facts.id == after));
    assert_eq!(site.outbox_len().expect("outbox"), 0);
    let held = site.withheld().expect("held");
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].1.reason.contains("undecodable"),
        "{}",
        held[0].1.reason
    );
    let admin = |r: &Replica, what: &str| {
        r.audit_entries(None)
            .expect("audit")
            .iter()
            .filter(|c| c.entry.action == TraceAction::Admin(what.into()))
            .count()
    };
    assert_eq!(admin(&site, "outbox-entry-held"), 1);
    sync(&host, &site);
    assert_eq!(admin(&host, "change-withheld-by-site"), 1);
    // Later rounds go on, and the entry stays held.
    write(&site, "and another", b"synced too");
    sync(&host, &site);
    assert_eq!(site.withheld().expect("held").len(), 1);
    assert_eq!(site.outbox_len().expect("outbox"), 0);
}

/// The redb file of a replica, opened raw (no key), as someone with the data folder could.
fn open_raw(path: impl AsRef<std::path::Path>) -> Database {
    Database::Redb(redb::Database::open(path.as_ref()).expect("db"))
}

/// Where a test's replica of `role` keeps its tables: a host's in a PostgreSQL database of
/// the test server when `HOST_STORAGE_ENV` says `postgres` (the suite's second run in
/// `.ci/run`), else in its folder.
/// The folder is remembered with its database, for `open_at`.
fn test_storage(dir: &std::path::Path, role: Role) -> Storage {
    match std::env::var(HOST_STORAGE_ENV).as_deref() {
        Ok("postgres") if role == Role::Host => {
            let storage = Storage::postgres(carnet_testpg::database());
            databases().insert(dir.to_owned(), storage.clone());
            storage
        }
        _ => Storage::File,
    }
}

/// The database of each folder `test_storage` gave one.
fn databases()
-> std::sync::MutexGuard<'static, std::collections::HashMap<std::path::PathBuf, Storage>> {
    static DATABASES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Storage>>,
    > = std::sync::OnceLock::new();
    DATABASES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `Replica::open` of the replica in `dir`, wherever `init` put its tables.
fn open_at(dir: &std::path::Path, source: &KeySource, clock: Clock) -> Result<Replica> {
    let storage = databases().get(dir).cloned().unwrap_or(Storage::File);
    Replica::open_on(dir, &storage, source, clock, DEFAULT_CACHE_MIB)
}

/// The host's options for `init_on`.
fn host_options() -> InitOptions {
    InitOptions {
        role: Role::Host,
        name: "host".into(),
        site_id: None,
        key: KeySource::File,
        host_key: None,
        lease_hours: None,
    }
}

/// Every row of `table` in the database at `url`, as stored.
fn pg_rows(url: &str, table: crate::kv::TableDefinition<&[u8], &[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = Database::Pg(crate::kv::pg::PgStore::open(url).expect("open"));
    let txn = db.begin_read().expect("read");
    let rows = txn.open_table(table).expect("table");
    rows.iter()
        .expect("iter")
        .map(|row| {
            let (k, v) = row.expect("row");
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

/// A host whose tables are in PostgreSQL does what a host in a file does: it serves a site a
/// round both ways, keeps what it stored across a reopen (every guarded table checked again),
/// and someone who puts an older row back into the database (a grant before its revocation)
/// is found at the next open, as in a file.
#[test]
fn a_host_on_postgres_serves_a_site_and_a_row_put_back_is_refused() {
    let url = carnet_testpg::database();
    let storage = Storage::postgres(url.clone());
    let hd = TempDir::new().expect("tmp");
    let host = Replica::init_on(hd.path(), &storage, host_options(), clock()).expect("init");
    assert!(
        !hd.path().join(DB_FILE).exists(),
        "no redb file beside PostgreSQL"
    );
    let (hd, host, _sd, site) = serving_a_site(hd, host);
    let id = write(&site, "Compte rendu", b"synthetic body");
    sync(&host, &site);
    let actor = Actor::Professional(doctor());
    let read = |r: &Replica| {
        r.read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read")
            .body
            .to_vec()
    };
    assert_eq!(read(&host), b"synthetic body");
    let granted = pg_rows(&url, AUTHORITY);
    drop(host);

    let host = Replica::open_on(hd.path(), &storage, &KeySource::File, clock(), 64)
        .expect("reopen: every guarded table checked");
    assert_eq!(read(&host), b"synthetic body", "kept across the reopen");
    host.set_grant(
        &ins(),
        &doctor(),
        GrantState::Revoked,
        GrantBasis::Treating,
        None,
    )
    .expect("revoke");
    drop(host);

    // The grant's row before its revocation, put back by someone with the database's password.
    let db = Database::Pg(crate::kv::pg::PgStore::open(&url).expect("open"));
    let txn = db.begin_write().expect("write");
    {
        let mut table = txn.open_table(AUTHORITY).expect("authority");
        for (k, v) in &granted {
            table.insert(k.as_slice(), v.as_slice()).expect("put back");
        }
    }
    txn.commit().expect("commit");
    match Replica::open_on(hd.path(), &storage, &KeySource::File, clock(), 64) {
        Err(Error::Integrity(m)) => assert!(
            m.contains("authority") && m.contains("PostgreSQL") && !m.contains("carnet.redb"),
            "{m}"
        ),
        other => panic!("a row put back must be refused: {:?}", other.map(|_| ())),
    }
}

/// PostgreSQL is for the host; a folder whose tables are there, opened without the address,
/// says where they are; the address is never said in an error.
#[test]
fn postgres_storage_is_the_hosts_and_its_folder_says_so() {
    let url = carnet_testpg::database();
    let storage = Storage::postgres(url.clone());
    let sd = TempDir::new().expect("tmp");
    let site = InitOptions {
        role: Role::Site,
        site_id: Some(SiteId(3)),
        ..host_options()
    };
    match Replica::init_on(sd.path(), &storage, site, clock()) {
        Err(Error::Invalid(m)) => assert!(m.contains("for the host"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(
        !sd.path().join(KEY_FILE).exists(),
        "a refused init writes nothing"
    );
    let hd = TempDir::new().expect("tmp");
    let host = Replica::init_on(hd.path(), &storage, host_options(), clock()).expect("init");
    // A backup or a full key rotation of a host in PostgreSQL says what to do instead.
    let out = hd.path().join("host.backup");
    match host.backup_to(&out, &[]) {
        Err(Error::Invalid(m)) => assert!(m.contains("pg_dump"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!out.exists() && !hd.path().join("host.backup.partial").exists());
    match host.stage_rekey(&KeySource::File) {
        Err(Error::Invalid(m)) => assert!(m.contains("PostgreSQL"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(host);
    match open_at(hd.path(), &KeySource::File, clock()) {
        Err(Error::Invalid(m)) => assert!(m.contains("PostgreSQL") && !m.contains(&url), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A second host in the same database is refused: it holds a replica already.
    let other = TempDir::new().expect("tmp");
    match Replica::init_on(other.path(), &storage, host_options(), clock()) {
        Err(Error::Invalid(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(
        !other.path().join(KEY_FILE).exists(),
        "a refused init leaves nothing in its folder"
    );
    // Two inits into one empty database at once: one host is made, the other refused whole.
    let storage = Storage::postgres(carnet_testpg::database());
    let folders = [TempDir::new().expect("tmp"), TempDir::new().expect("tmp")];
    let made: Vec<bool> = std::thread::scope(|scope| {
        let runs: Vec<_> = folders
            .iter()
            .map(|dir| {
                let storage = &storage;
                scope.spawn(move || {
                    Replica::init_on(dir.path(), storage, host_options(), clock()).is_ok()
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("init thread"))
            .collect()
    });
    assert_eq!(made.iter().filter(|ok| **ok).count(), 1, "{made:?}");
}

/// Two daemons of one host never hold the notification spool's turn at once: the first takes
/// it and keeps it by taking it again; the second gets it only once the turn ran out unrenewed.
#[test]
fn the_spool_turn_is_one_daemons_at_a_time() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let moving: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let storage = Storage::postgres(carnet_testpg::database());
    let hd = TempDir::new().expect("tmp");
    let first =
        Replica::init_on(hd.path(), &storage, host_options(), moving.clone()).expect("init");
    let jd = TempDir::new().expect("tmp");
    std::fs::copy(hd.path().join(KEY_FILE), jd.path().join(KEY_FILE)).expect("copy key");
    let second = Replica::join_on(jd.path(), &storage, &KeySource::File, moving, 64).expect("join");
    assert!(
        first.take_spool_turn().expect("turn"),
        "a free turn is taken"
    );
    assert!(
        !second.take_spool_turn().expect("turn"),
        "a turn held is not"
    );
    now.fetch_add(50_000, Ordering::SeqCst);
    assert!(
        first.take_spool_turn().expect("turn"),
        "its holder keeps it"
    );
    now.fetch_add(50_000, Ordering::SeqCst);
    assert!(
        !second.take_spool_turn().expect("turn"),
        "renewed, it is still held"
    );
    now.fetch_add(11_000, Ordering::SeqCst);
    assert!(
        second.take_spool_turn().expect("turn"),
        "a turn run out is free"
    );
    assert!(
        !first.take_spool_turn().expect("turn"),
        "and now the other's"
    );
}

/// Several host daemons over one PostgreSQL database (`daemons`): a daemon joins with the
/// first one's key, each sees what the other committed at its next read (a revocation
/// included), their concurrent writes collide and run again until all are kept, and each
/// appends to a trace chain of its own that both verify.
#[test]
fn two_host_daemons_share_one_database() {
    let url = carnet_testpg::database();
    let storage = Storage::postgres(url.clone());
    let hd = TempDir::new().expect("tmp");
    let first = Replica::init_on(hd.path(), &storage, host_options(), clock()).expect("init");
    let (hd, first, _sd, site) = serving_a_site(hd, first);

    // A second daemon's folder: the first one's key, nothing else.
    let jd = TempDir::new().expect("tmp");
    std::fs::copy(hd.path().join(KEY_FILE), jd.path().join(KEY_FILE)).expect("copy key");
    let second =
        Replica::join_on(jd.path(), &storage, &KeySource::File, clock(), 64).expect("join");
    assert_eq!((first.daemon_number(), second.daemon_number()), (0, 1));
    // Each daemon's high-water mark is its own: one does not open as the other's.
    let marks = TempDir::new().expect("tmp");
    let mark = marks.path().join("first.mark");
    first
        .check_high_water(&mark)
        .expect("the first daemon's mark");
    match second.check_high_water(&mark) {
        Err(Error::Integrity(m)) => assert!(m.contains("not this replica's"), "{m}"),
        other => panic!("another daemon's mark: {other:?}"),
    }
    second
        .check_high_water(&marks.path().join("second.mark"))
        .expect("the second daemon's mark");
    match Replica::join_on(jd.path(), &storage, &KeySource::File, clock(), 64) {
        Err(Error::Invalid(m)) => assert!(m.contains("already holds a replica"), "{m}"),
        other => panic!("a folder joins once: {:?}", other.map(|_| ())),
    }
    let redb_host = TempDir::new().expect("tmp");
    match Replica::join_on(
        redb_host.path(),
        &Storage::File,
        &KeySource::File,
        clock(),
        64,
    ) {
        Err(Error::Invalid(m)) => assert!(m.contains("PostgreSQL"), "{m}"),
        other => panic!("a host in its file has one daemon: {:?}", other.map(|_| ())),
    }

    // A document the site pushed through the first daemon is read through the second.
    let id = write(&site, "Compte rendu", b"synthetic body");
    sync(&first, &site);
    first
        .set_grant(
            &ins(),
            &nurse(),
            GrantState::Active,
            GrantBasis::Treating,
            None,
        )
        .expect("grant the nurse");
    let actor = Actor::Professional(nurse());
    let read = |r: &Replica| r.read_document(&actor, &id, AccessMode::Normal, None);
    assert_eq!(
        read(&first).expect("first").body.to_vec(),
        b"synthetic body"
    );
    assert_eq!(
        read(&second).expect("second").body.to_vec(),
        b"synthetic body"
    );
    // (A first access writes its notification; this read writes nothing.)
    assert!(read(&first).is_ok());
    // That notification is spooled by one daemon: the first to ask takes the spool's turn.
    assert!(!first.notifications_to_spool().expect("spool").is_empty());
    assert!(
        second.notifications_to_spool().expect("spool").is_empty(),
        "another daemon holds the spool's turn"
    );
    // The second daemon revokes; the first, which read just before, refuses at once.
    second
        .set_grant(
            &ins(),
            &nurse(),
            GrantState::Revoked,
            GrantBasis::Treating,
            None,
        )
        .expect("revoke");
    assert!(
        matches!(read(&first), Err(Error::Denied { .. })),
        "a revocation by another daemon holds at the next read"
    );

    // Both daemons create dossiers at the same time: every one is kept, once.
    let made: Vec<Ins> = std::thread::scope(|scope| {
        let runs: Vec<_> = [(&first, 0u32), (&second, 1)]
            .into_iter()
            .map(|(daemon, half)| {
                scope.spawn(move || {
                    (0..12)
                        .map(|n| {
                            let i = Ins::from_body(&format!("2840575123{:03}", half * 100 + n + 1))
                                .expect("ins");
                            daemon
                                .as_host()
                                .expect("host")
                                .authority()
                                .create_dossier(new_dossier(i.clone()))
                                .expect("created despite collisions");
                            i
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|r| r.join().expect("thread"))
            .collect()
    });
    for i in &made {
        for daemon in [&first, &second] {
            assert!(daemon.dossier(i).is_ok(), "each daemon sees every dossier");
        }
    }
    assert_eq!(made.len(), 24);

    // Each daemon's trace is a chain of its own; both verify all of them.
    let (origins_first, entries) = first.verify_audit().expect("first verifies");
    let (origins_second, _) = second.verify_audit().expect("second verifies");
    assert_eq!(origins_first, origins_second);
    assert!(entries > 0);
    let txn = first.begin_read().expect("read");
    let heads = txn.open_table(AUDIT_HEADS).expect("heads");
    for origin in [SiteId::HOST, SiteId(daemons::FIRST_DAEMON_ORIGIN)] {
        let head = heads
            .get(origin.0)
            .expect("get")
            .expect("a chain per daemon");
        let (seq, _): (u64, [u8; 32]) = postcard::from_bytes(head.value()).expect("head");
        assert!(seq > 0, "daemon {origin} traced");
    }
    drop((heads, txn));

    // One process per folder: the folder of a running daemon does not open twice.
    match Replica::open_on(jd.path(), &storage, &KeySource::File, clock(), 64) {
        Err(Error::Storage(m)) => assert!(m.contains("in use by another process"), "{m}"),
        other => panic!("a daemon's folder opened twice: {:?}", other.map(|_| ())),
    }
    // The second daemon reopens from its folder, its chain where it left it.
    let head = second.trace_head().expect("head");
    drop(second);
    let second = Replica::open_on(jd.path(), &storage, &KeySource::File, clock(), 64)
        .expect("reopen the second daemon");
    assert_eq!(second.daemon_number(), 1);
    assert_eq!(second.trace_head().expect("head"), head);
}

/// The unit (site 7) hands the dossier over to the clinic (site 8) by the doctor: built,
/// admitted, then traced at the unit.
fn hand_over(unit: &Replica, clinic: &Replica) -> Handover {
    let h = unit
        .handover_out(&ins(), &doctor(), None, SiteId(8))
        .expect("handover");
    clinic.admit_handover(SiteId(7), &h).expect("admit");
    unit.record_handover(&ins(), &doctor(), None, SiteId(8))
        .expect("traced");
    h
}

/// A clinic (site 8) on `now`'s clock, enrolled with the host's key, that holds none of the
/// host's dossiers (nobody is bound to it): the nurse is registered there.
fn a_clinic_on(host: &Replica, now: &Arc<std::sync::atomic::AtomicI64>) -> (TempDir, Replica) {
    use std::sync::atomic::Ordering;
    let dir = TempDir::new().expect("tmp");
    let clinic = Replica::init_on(
        dir.path(),
        &test_storage(dir.path(), Role::Site),
        InitOptions {
            role: Role::Site,
            name: "clinic".into(),
            site_id: Some(SiteId(8)),
            key: KeySource::File,
            host_key: host.host_key().expect("key"),
            lease_hours: None,
        },
        {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::SeqCst))
        },
    )
    .expect("init");
    clinic
        .add_professional(&Professional {
            rpps: nurse(),
            profession: Profession::Infirmier,
            specialty: None,
            name: None,
        })
        .expect("pro");
    sync(host, &clinic);
    (dir, clinic)
}

const HOUR: i64 = 3_600_000;

/// A sync round, then the heartbeat of the site's log as the daemon's rounds end with it.
fn sync_with_heartbeat(host: &Replica, site: &Replica) {
    sync(host, site);
    let page = host
        .pull_page(
            site.config().site_id,
            site.pull_cursor().expect("cursor"),
            100,
        )
        .expect("page");
    let report = site.apply_pull(&page.items).expect("apply");
    assert!(
        matches!(report.lease, Some(Lease::Renewed | Lease::Unchanged)),
        "{report:?}"
    );
}

#[test]
fn a_handover_brings_the_dossier_and_the_lease_of_that_dossier_but_no_rights() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    assert!(
        clinic.dossier(&ins()).is_err(),
        "the clinic holds no dossier"
    );
    // Eighty hours on, the unit hears from the host once more; the clinic does not.
    now.fetch_add(80 * HOUR, Ordering::SeqCst);
    sync_with_heartbeat(&host, &unit);
    now.fetch_add(2 * HOUR, Ordering::SeqCst);
    let report_id = write(&unit, "intervention report", b"SMUR: stable");
    let nurse_reads = |id: &DocId| {
        clinic
            .read_document(&Actor::Professional(nurse()), id, AccessMode::Normal, None)
            .map(|o| o.body.to_vec())
    };

    let h = unit
        .handover_out(
            &ins(),
            &doctor(),
            Some("patient brought to the clinic"),
            SiteId(8),
        )
        .expect("handover");
    assert!(
        h.heartbeat.is_some(),
        "the unit relays its latest heartbeat"
    );
    assert!(h.traces.iter().all(|t| t.entry.origin == SiteId(7)));
    let report = clinic.admit_handover(SiteId(7), &h).expect("admit");
    unit.record_handover(
        &ins(),
        &doctor(),
        Some("patient brought to the clinic"),
        SiteId(8),
    )
    .expect("traced");
    assert!(
        unit.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .any(|c| c.entry.action == TraceAction::HandedOver { to: SiteId(8) }),
        "the sender traces the handover once admitted"
    );
    assert_eq!(report.documents_new, 1, "{report:?}");
    assert!(report.records_admitted >= 2, "{report:?}");
    assert_eq!(
        report.lease_from,
        Some(now.load(Ordering::SeqCst) - 2 * HOUR)
    );
    assert_eq!(report.lacking.len(), 1, "the body follows on its own");
    let body = unit.body_for_sync(&report_id).expect("body");
    clinic
        .receive_body_pieces(&[whole(report_id, &body)])
        .expect("body piece");

    // Data, not rights: the nurse has no grant here.
    let err = nurse_reads(&report_id).expect_err("no grant");
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    // Consent given in person: read under it, the dossier's lease renewed by the unit's
    // heartbeat though the clinic's own is over.
    assert!(
        clinic.authority_freshness().expect("freshness").1,
        "clinic lease over"
    );
    clinic
        .record_pending_grant(&ins(), &nurse())
        .expect("consent in person");
    assert_eq!(nurse_reads(&report_id).expect("read"), b"SMUR: stable");

    // The handover is traced at the clinic, and the unit's entries are kept apart.
    let traced = clinic.audit_entries(Some(&ins())).expect("audit");
    let received = traced
        .iter()
        .find(|c| c.entry.action == TraceAction::Admin("handover-received".into()))
        .expect("traced");
    assert_eq!(received.entry.origin, SiteId(8));
    assert_eq!(
        received.entry.stated_reason.as_deref(),
        Some("patient brought to the clinic")
    );
    assert!(received.entry.outcome_reason.contains("from site 7"));
    // The unit's entries are kept apart: the clinic's own trace verifies whole.
    assert!(traced.iter().all(|c| c.entry.origin == SiteId(8)));
    assert_eq!(clinic.relayed_traces(&ins()).expect("relayed"), h.traces);
    clinic
        .verify_audit()
        .expect("the clinic's own trace verifies");

    // A clock set back behind what the clinic saw ends the relayed lease too.
    now.fetch_add(40 * HOUR, Ordering::SeqCst);
    clinic
        .record_pending_grant(&ins(), &nurse())
        .expect("a commit, seen at this time");
    now.fetch_sub(39 * HOUR, Ordering::SeqCst);
    let err = nurse_reads(&report_id).expect_err("clock set back");
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    now.fetch_add(39 * HOUR, Ordering::SeqCst);

    // A full key rotation at either site keeps the relayed lease, the relayed entries and the
    // heartbeat to relay.
    let (clinic, _) = clinic.rotate_full(&KeySource::File).expect("rotate clinic");
    let (unit, _) = unit.rotate_full(&KeySource::File).expect("rotate unit");
    let nurse_reads = |id: &DocId| {
        clinic
            .read_document(&Actor::Professional(nurse()), id, AccessMode::Normal, None)
            .map(|o| o.body.to_vec())
    };
    assert_eq!(nurse_reads(&report_id).expect("read"), b"SMUR: stable");
    assert_eq!(clinic.relayed_traces(&ins()).expect("relayed"), h.traces);
    assert!(
        unit.handover_out(&ins(), &doctor(), None, SiteId(8))
            .expect("handover")
            .heartbeat
            .is_some()
    );
    // The relayed heartbeat ends the lease of the dossier 72 hours after the host signed it
    // (42 hours ago now).
    now.fetch_add(31 * HOUR, Ordering::SeqCst);
    let err = nurse_reads(&report_id).expect_err("past the relayed heartbeat's lease");
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    // Handed over again: nothing new, nothing twice.
    let again = clinic.admit_handover(SiteId(7), &h).expect("again");
    assert_eq!(
        (again.documents_new, again.traces_kept),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(again.lease_from, None);
}

#[test]
fn a_peer_asking_for_a_dossier_gets_it_only_from_a_site_caring_for_the_patient() {
    use std::sync::atomic::Ordering;
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    sync_with_heartbeat(&host, &unit);
    let asks = |unit: &Replica| unit.handover_asked(&ins(), SiteId(8), &nurse(), Some("arrived"));
    let refusals = |unit: &Replica| {
        unit.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .filter(|c| c.entry.action == TraceAction::Admin("handover-ask-refused".into()))
            .count()
    };
    // Held, but nobody here has cared for the patient: refused, the ask traced.
    let err = asks(&unit).expect_err("no care here");
    assert!(err.to_string().contains("does not qualify"), "{err}");
    assert_eq!(refusals(&unit), 1);
    // A dossier not held here: nothing to trace.
    let other = Ins::from_body("2840575123457").expect("ins");
    let err = unit
        .handover_asked(&other, SiteId(8), &nurse(), None)
        .expect_err("not held");
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    // The doctor writes the intervention report: the unit is caring for the patient now.
    write(&unit, "intervention report", b"SMUR: stable");
    let h = asks(&unit).expect("qualifies");
    assert_eq!(h.by, doctor(), "handed over as the doctor's");
    let reason = h.reason.clone().expect("reason");
    assert!(
        reason.contains("asked by site 8") && reason.ends_with("arrived"),
        "{reason}"
    );
    let report = clinic.admit_handover(SiteId(7), &h).expect("admit");
    assert_eq!(report.documents_new, 1, "{report:?}");
    unit.record_handover(&ins(), &h.by, h.reason.as_deref(), SiteId(8))
        .expect("traced");

    // A day later the care is over: refused again.
    now.fetch_add(25 * HOUR, Ordering::SeqCst);
    asks(&unit).expect_err("care over");
    assert_eq!(refusals(&unit), 2);
    unit.verify_audit().expect("the unit's trace verifies");
}

#[test]
fn a_handover_that_does_not_verify_changes_nothing_and_is_traced() {
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    sync_with_heartbeat(&host, &unit);
    write(&unit, "intervention report", b"SMUR");
    let h = unit
        .handover_out(&ins(), &doctor(), None, SiteId(8))
        .expect("handover");
    let refused = |h: &Handover, from: u32| {
        let before = clinic.audit_entries(None).expect("audit").len();
        let err = clinic.admit_handover(SiteId(from), h).expect_err("refused");
        assert!(clinic.dossier(&ins()).is_err(), "nothing admitted: {err}");
        let after = clinic.audit_entries(None).expect("audit");
        assert_eq!(after.len(), before + 1, "one entry: the refusal");
        assert_eq!(
            after.last().map(|c| c.entry.action.clone()),
            Some(TraceAction::Admin("handover-refused".into()))
        );
        err.to_string()
    };
    // A forged record.
    let mut forged = h.clone();
    if let Some(b) = forged.records[1].body.last_mut() {
        *b ^= 1;
    }
    assert!(refused(&forged, 7).contains("does not verify"));
    // No signed head.
    let mut headless = h.clone();
    headless.records.retain(|r| {
        !matches!(
            crate::authority::decode(r).map(|v| v.record),
            Ok(AuthorityRecord::Dossier(_))
        )
    });
    assert!(refused(&headless, 7).contains("no signed head"));
    // A document of another dossier.
    let mut stray = h.clone();
    stray.documents[0].facts.ins = Ins::from_body("2840575123456").expect("ins");
    assert!(refused(&stray, 7).contains("another dossier"));
    // A document whose facts no writer of Carnet makes.
    let mut odd = h.clone();
    odd.documents[0].facts.title = "a\u{7}title".into();
    refused(&odd, 7);
    // A heartbeat the host signed for another site than the one handing over.
    let mut relayed = h.clone();
    relayed.traces.clear();
    assert!(refused(&relayed, 9).contains("did not sign for it"));
    // Trace entries that are not the sender's own.
    let mut foreign = h.clone();
    foreign.heartbeat = None;
    assert!(refused(&foreign, 9).contains("not its own"));
    // The genuine one goes in.
    clinic.admit_handover(SiteId(7), &h).expect("admit");
    assert!(clinic.dossier(&ins()).is_ok());
}

#[test]
fn a_stale_record_handed_over_does_not_undo_a_newer_one() {
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    let h = hand_over(&unit, &clinic);
    // The host blocks the nurse; the clinic learns it (a bundle), the unit does not.
    host.set_grant(
        &ins(),
        &nurse(),
        GrantState::Blocked,
        GrantBasis::Consent,
        None,
    )
    .expect("block");
    clinic
        .import_authority(&host.export_authority().expect("export"))
        .expect("import");
    let blocked = |r: &Replica| {
        r.dossier(&ins())
            .expect("dossier")
            .grants
            .iter()
            .any(|g| g.rpps == nurse() && g.state == GrantState::Blocked)
    };
    assert!(blocked(&clinic));
    // The unit hands over again what it holds: the head is not newer, the block stands.
    let again = clinic.admit_handover(SiteId(7), &h).expect("admit");
    assert_eq!(again.records_admitted, 0, "{again:?}");
    assert!(blocked(&clinic));
    // And a document a blocked author wrote is not taken from a peer (the nurse is registered
    // at the unit too).
    let by_nurse = unit
        .put_document(
            &Actor::Professional(nurse()),
            AccessMode::Normal,
            None,
            &ins(),
            doc("nurse's note", b"n"),
        )
        .expect("the unit does not know of the block");
    let h = unit
        .handover_out(&ins(), &doctor(), None, SiteId(8))
        .expect("handover");
    let report = clinic.admit_handover(SiteId(7), &h).expect("admit");
    assert_eq!(
        report
            .documents_refused
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        vec![by_nurse]
    );
}

/// The refused site certificates `items` carry, if any.
fn refused_in(items: &[(u64, PullItem)]) -> Option<crate::authority::RefusedCertificates> {
    items.iter().find_map(|(_, item)| match item {
        PullItem::Authority(signed) => match crate::authority::decode(signed).ok()?.record {
            AuthorityRecord::RefusedCertificates(r) => Some(r),
            _ => None,
        },
        _ => None,
    })
}

#[test]
fn the_host_signs_the_certificates_it_refuses_and_every_site_receives_them() {
    let (_hd, host, _sd, site) = host_and_site();
    let (a, b, c) = ([3u8; 32], [1u8; 32], [9u8; 32]);
    assert!(
        host.refused_certificates()
            .expect("list")
            .fingerprints
            .is_empty()
    );
    // Storing the register with no certificate refused signs nothing.
    assert_eq!(
        host.put_sealed_refusing("host-pki", b"register 0", Vec::new())
            .expect("store"),
        None
    );
    let seq = host
        .put_sealed_refusing("host-pki", b"register 1", vec![a, b, a])
        .expect("store")
        .expect("a new list");
    assert_eq!(
        host.get_sealed("host-pki")
            .expect("get")
            .as_deref()
            .map(Vec::as_slice),
        Some(&b"register 1"[..]),
        "the register, in the same commit"
    );
    assert_eq!(
        host.refused_certificates().expect("list").fingerprints,
        vec![b, a]
    );
    // The same list again signs nothing new.
    assert_eq!(
        host.put_sealed_refusing("host-pki", b"register 2", vec![b, a])
            .expect("store"),
        None
    );
    // The site holds it once it pulled.
    assert!(!site.refuses_certificate(&a).expect("refuses"));
    sync(&host, &site);
    for (f, refused) in [(a, true), (b, true), (c, false)] {
        assert_eq!(site.refuses_certificate(&f).expect("refuses"), refused);
    }
    assert_eq!(
        site.refused_certificates().expect("list").fingerprints,
        vec![b, a]
    );
    // A site that joins later finds it in its log.
    host.bind_professional(SiteId(8), &doctor(), true)
        .expect("bind");
    let items = host.pull(SiteId(8), 0, usize::MAX).expect("pull");
    assert_eq!(refused_in(&items).map(|r| r.fingerprints), Some(vec![b, a]));
    // And a replica given the host's bundle holds it.
    let (_od, other) = {
        let dir = TempDir::new().expect("tmp");
        let other = init(&dir, Role::Site, Some(9));
        (dir, other)
    };
    other
        .import_authority(&host.export_authority().expect("export"))
        .expect("import");
    assert!(other.refuses_certificate(&a).expect("refuses"));
    // A shorter list replaces the one held, whole.
    let newer = host
        .put_sealed_refusing("host-pki", b"register 3", vec![c])
        .expect("store")
        .expect("a new list");
    assert!(newer > seq);
    sync(&host, &site);
    for (f, refused) in [(a, false), (b, false), (c, true)] {
        assert_eq!(site.refuses_certificate(&f).expect("refuses"), refused);
    }
    // Still held after reopening.
    let dir = site.dir().to_path_buf();
    drop(site);
    let site = Replica::open_on(
        &dir,
        &test_storage(&dir, Role::Site),
        &KeySource::File,
        clock(),
        64,
    )
    .expect("reopen");
    assert!(site.refuses_certificate(&c).expect("refuses"));
}

#[test]
fn a_site_admits_a_list_of_refused_certificates_only_from_the_host_and_newer() {
    let (_hd, host, _sd, site) = host_and_site();
    let (a, b) = ([3u8; 32], [4u8; 32]);
    host.put_sealed_refusing("host-pki", b"register 1", vec![a])
        .expect("store");
    let cursor = site.pull_cursor().expect("cursor");
    let first = host.pull(SiteId(7), cursor, usize::MAX).expect("pull");
    let first_signed = first
        .iter()
        .find_map(|(_, item)| match item {
            PullItem::Authority(s) if refused_in(&[(0, item.clone())]).is_some() => Some(s.clone()),
            _ => None,
        })
        .expect("the list is in the site's log");
    host.put_sealed_refusing("host-pki", b"register 2", vec![b])
        .expect("store");
    sync(&host, &site);
    assert!(site.refuses_certificate(&b).expect("refuses"));
    // The older list replayed, in a pull or a bundle: ignored.
    site.apply_pull(&[(
        site.pull_cursor().expect("cursor"),
        PullItem::Authority(first_signed.clone()),
    )])
    .expect("an older record is ignored");
    let relayed = crate::authority::Bundle {
        format: crate::authority::BUNDLE_FORMAT,
        host_key: host.host_key().expect("key").expect("pinned"),
        records: vec![first_signed],
        vouch: None,
    };
    let report = site.import_authority(&relayed).expect("import");
    assert_eq!((report.admitted, report.unchanged), (0, 1));
    assert!(site.refuses_certificate(&b).expect("refuses"));
    assert!(!site.refuses_certificate(&a).expect("refuses"));
    // A list signed by another key, with the next sequence: refused whole.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let forged = crate::authority::sign(
        &forger,
        u64::MAX,
        &AuthorityRecord::RefusedCertificates(crate::authority::RefusedCertificates::new(
            host.now(),
            vec![a, b, [5u8; 32]],
        )),
    )
    .expect("sign");
    let cursor = site.pull_cursor().expect("cursor");
    assert!(matches!(
        site.apply_pull(&[(cursor + 1, PullItem::Authority(forged.clone()))]),
        Err(Error::Integrity(_))
    ));
    let mut relayed = relayed;
    relayed.records = vec![forged];
    assert!(site.import_authority(&relayed).is_err());
    assert_eq!(
        site.refused_certificates().expect("list").fingerprints,
        vec![b]
    );
    assert_eq!(site.pull_cursor().expect("cursor"), cursor);
}

#[test]
fn a_handover_carries_the_certificates_the_host_refuses_to_a_site_out_of_its_reach() {
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    let rogue = [5u8; 32];
    host.put_sealed_refusing("host-pki", b"register", vec![rogue])
        .expect("revoke");
    sync(&host, &unit);
    assert!(unit.refuses_certificate(&rogue).expect("unit"));
    assert!(!clinic.refuses_certificate(&rogue).expect("clinic"));
    hand_over(&unit, &clinic);
    assert!(
        clinic.refuses_certificate(&rogue).expect("clinic"),
        "the clinic refuses the rogue site from now on"
    );
}

#[test]
fn a_document_handed_over_for_a_dossier_closed_meanwhile_is_kept_in_its_authors_quarantine() {
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    let report = write(&unit, "intervention report", b"SMUR");
    let h = hand_over(&unit, &clinic);
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    // Either site learns the closure: the unit keeps what it wrote in its quarantine, the
    // clinic purges its copy.
    for site in [&unit, &clinic] {
        site.import_authority(&host.export_authority().expect("export"))
            .expect("import");
        assert!(!site.has_dossier_key(&ins()).expect("key"));
    }
    let kept = unit.quarantined().expect("quarantine");
    assert_eq!(kept.iter().map(|q| q.id).collect::<Vec<_>>(), vec![report]);
    // The handover made before the closure, replayed, brings nothing back.
    let again = clinic.admit_handover(SiteId(7), &h).expect("admit");
    assert_eq!(again.records_admitted, 0, "{again:?}");
    assert_eq!(again.documents_new, 0, "{again:?}");
    assert!(!clinic.has_dossier_key(&ins()).expect("key"));
    // And the unit cannot hand a closed dossier over.
    let err = unit
        .handover_out(&ins(), &doctor(), None, SiteId(8))
        .expect_err("closed");
    assert!(
        matches!(err, Error::NotFound(_) | Error::Denied { .. }),
        "{err}"
    );
}

/// Asserts the host sends `site` no signed record at its next pull (no dossier entered its
/// scope).
fn assert_no_record_for(host: &Replica, site: &Replica) {
    let cursor = site.pull_cursor().expect("cursor");
    let pulled = host.pull(site.config().site_id, cursor, 100).expect("pull");
    assert!(
        !pulled
            .iter()
            .any(|(_, i)| matches!(i, PullItem::Authority(_))),
        "{pulled:?}"
    );
}

#[test]
fn the_host_lets_the_receiver_hold_a_handed_over_dossier_on_the_senders_word_only() {
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    hand_over(&unit, &clinic);
    // The clinic's own word (its trace of the handover it received) brings nothing.
    push_traces(&host, &clinic);
    assert_no_record_for(&host, &clinic);
    // The unit's signed trace names the clinic: the host lets it hold the dossier, so the
    // host's closure reaches it.
    push_traces(&host, &unit);
    sync(&host, &clinic);
    host.close_dossier(&ins(), "holder's request", false)
        .expect("close");
    sync(&host, &clinic);
    assert!(
        !clinic.has_dossier_key(&ins()).expect("key"),
        "the closure reached the clinic"
    );
    assert!(
        host.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .any(
                |c| c.entry.action == TraceAction::Admin("handover-scope".into())
                    && c.entry.allowed
            )
    );
}

#[test]
fn a_handover_the_host_cannot_follow_gives_the_receiver_nothing() {
    let (_dirs, now, host, unit) = host_and_site_on_a_clock();
    let (_cd, clinic) = a_clinic_on(&host, &now);
    // The unit wrote in the dossier: it stays in its scope. But the host no longer binds the
    // doctor to the unit: what the unit traces in their name does not make the host send the
    // dossier anywhere.
    write(&unit, "written at the unit", b"u");
    sync(&host, &unit);
    host.bind_professional(SiteId(7), &doctor(), false)
        .expect("unbind");
    hand_over(&unit, &clinic);
    push_traces(&host, &unit);
    assert_no_record_for(&host, &clinic);
    assert!(
        host.audit_entries(Some(&ins()))
            .expect("audit")
            .iter()
            .any(
                |c| c.entry.action == TraceAction::Admin("handover-scope".into())
                    && !c.entry.allowed
            )
    );
}

/// The feed's entries after `since`, or a panic naming what came instead.
fn feed(r: &Replica, since: u64) -> (Vec<super::ChangeEntry>, u64) {
    match r.changes_since(since, 10_000).expect("changes") {
        super::ChangesPage::Entries { entries, last_seq } => (entries, last_seq),
        gone => panic!("the feed answered {gone:?} for cursor {since}"),
    }
}

#[test]
fn the_change_feed_names_each_committed_change_once_in_order() {
    use super::Changed as Change;
    let (_hd, host, _sd, site) = host_and_site();
    // What the site received from the host: the dossier's head and its grant.
    let (received, last) = feed(&site, 0);
    let changes: Vec<&Change> = received.iter().map(|e| &e.change).collect();
    assert!(
        changes.contains(&&Change::Dossier { ins: ins() }),
        "{changes:?}"
    );
    assert!(
        changes.contains(&&Change::Grants { ins: ins() }),
        "{changes:?}"
    );
    assert!(received.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(received.last().map(|e| e.seq), Some(last));

    // A document written: one entry, after the cursor, and this process's waiters woken.
    let mut watch = site.change_watch();
    let id = write(&site, "report", b"body");
    let (after, last_after) = feed(&site, last);
    assert_eq!(
        after.iter().map(|e| &e.change).collect::<Vec<_>>(),
        vec![&Change::Document { ins: ins(), id }]
    );
    assert_eq!(after[0].seq, last + 1);
    assert!(watch.has_changed().expect("watch"));
    assert_eq!(*watch.borrow_and_update(), last_after);

    // A refused write commits nothing, so the feed names nothing.
    let refused = site.put_document(
        &Actor::Professional(Rpps::parse("10000000999").expect("rpps")),
        AccessMode::Normal,
        None,
        &ins(),
        doc("refused", b"x"),
    );
    assert!(refused.is_err());
    assert!(feed(&site, last_after).0.is_empty());
    assert!(!watch.has_changed().expect("watch"));

    // A cursor this replica never gave is refused.
    let err = site.changes_since(last_after + 5, 10).expect_err("ahead");
    assert!(matches!(err, Error::Invalid(_)), "{err}");

    // A purge leaves one entry of the dossier: the purge itself.
    host.close_dossier(&ins(), "holder's request", true)
        .expect("close");
    site.import_authority(&host.export_authority().expect("export"))
        .expect("import");
    let (all, _) = feed(&site, 0);
    let about: Vec<&Change> = all
        .iter()
        .map(|e| &e.change)
        .filter(|c| c.ins() == Some(&ins()))
        .collect();
    assert_eq!(about, vec![&Change::Dossier { ins: ins() }]);
}

#[test]
fn the_change_feed_refuses_a_cursor_older_than_what_it_keeps() {
    use super::ChangesPage;
    let (_hd, _host, _sd, site) = host_and_site();
    site.set_change_cap(3);
    for n in 0..5 {
        write(&site, &format!("doc {n}"), b"body");
    }
    let ChangesPage::Gone { floor, last_seq } = site.changes_since(0, 10).expect("page") else {
        panic!("a trimmed feed answered cursor 0");
    };
    assert_eq!(last_seq - floor, 3);
    let (kept, last) = feed(&site, floor);
    assert_eq!(kept.len(), 3);
    assert_eq!(last, last_seq);
    // A full rotation drops the entries (they name dossiers by their old index): every
    // cursor before it is refused, the latest still follows.
    let (site, _) = site.rotate_full(&KeySource::File).expect("rotate");
    assert!(matches!(
        site.changes_since(last - 1, 10).expect("page"),
        ChangesPage::Gone { .. }
    ));
    assert!(feed(&site, last).0.is_empty());
    let id = write(&site, "after", b"body");
    let (after, _) = feed(&site, last);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, last + 1);
    assert_eq!(after[0].change, super::Changed::Document { ins: ins(), id });
}

/// The host opens a dossier for the walk-in and grants the site's doctor: it enters the site's
/// scope, which the site learns at its next pull.
fn walk_in_enters_the_scope(host: &Replica) {
    host.create_dossier(new_dossier(walk_in()))
        .expect("host dossier");
    host.set_grant(
        &walk_in(),
        &doctor(),
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )
    .expect("grant");
}

#[test]
fn a_dossier_opened_here_that_leaves_the_scope_keeps_what_the_site_wrote() {
    for qualified in [false, true] {
        let (_hd, host, _sd, site) = host_and_site();
        walk_in_enters_the_scope(&host);
        let opened = if qualified {
            new_dossier(walk_in())
        } else {
            provisional(walk_in())
        };
        site.open_dossier_here(opened, &Actor::Professional(doctor()))
            .expect("open here");
        let id = write_as(&site, &nurse(), &walk_in(), "written here");
        // The grant is revoked before the site's next round: the dossier left its scope.
        host.set_grant(
            &walk_in(),
            &doctor(),
            GrantState::Revoked,
            GrantBasis::Treating,
            None,
        )
        .expect("revoke");
        sync(&host, &site);
        sync(&host, &site);
        if qualified {
            // Pushed before the pull: the host merged the proposal, so the dossier is back.
            assert!(host.has_body(&id).expect("host"), "the host holds it");
            continue;
        }
        // Held back, it never left: the Leave purged the dossier, and the site kept it.
        assert!(!host.has_body(&id).expect("host"));
        kept_alone(&site, id, "left this site's scope");
        assert!(
            site.held_back().expect("held").is_empty(),
            "nothing stays held for a purged dossier"
        );
        assert!(site.dossier(&walk_in()).is_err(), "the local head went too");
        let body = site
            .quarantined_body(&Actor::Professional(nurse()), &id)
            .expect("its author reads it");
        assert_eq!(&body[..], b"written here");
    }
}

#[test]
fn the_hosts_head_for_a_provisional_dossier_sends_what_was_written_and_keeps_the_proposal() {
    let (_hd, host, _sd, site) = host_and_site();
    walk_in_enters_the_scope(&host);
    // Opened here before the site pulled the host's dossier, with an identity not checked.
    let mut unchecked = provisional(walk_in());
    unchecked.identity.first_names = "Unchecked".into();
    site.open_dossier_here(unchecked, &Actor::Professional(doctor()))
        .expect("open here");
    let id = write_as(&site, &nurse(), &walk_in(), "written here");
    sync(&host, &site);
    let kinds = site.outbox_by_kind().expect("outbox");
    assert!(kinds.contains_key("document"), "released: {kinds:?}");
    assert!(
        !kinds.contains_key("dossier-proposal"),
        "the provisional traits stay here: {kinds:?}"
    );
    sync(&host, &site);
    assert!(
        host.has_body(&id).expect("host"),
        "the document reached the host"
    );
    assert_ne!(
        host.dossier(&walk_in())
            .expect("dossier")
            .head
            .identity
            .first_names,
        "Unchecked"
    );
}
