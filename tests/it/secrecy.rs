//! No patient data in clear at rest: after a busy life (documents, replacement, masks, traces
//! with reasons, a site fed by the host, a key rotation), no file under a data folder contains
//! a known title, body, name, first name, INS or RPPS; and after documents travel between a
//! host and two sites through their daemons, no `carnet.redb` holds a document id or its
//! creation time.

use std::path::Path;

use crate::support::*;

const BIRTH_NAME: &str = "QUELLEBOEUF";
const FIRST_NAMES: &str = "Philomene Ysaline";
const BODY_MARKER: &str = "ZXQ-BODY-MARKER-7731";
const TITLE_MARKER: &str = "ZXQ-TITLE-MARKER-4482";
const REASON_MARKER: &str = "ZXQ-REASON-MARKER-9120";

/// The markers, including the INS with and without its key and spaced as on a card.
fn markers(ins: &str) -> Vec<String> {
    vec![
        BIRTH_NAME.to_string(),
        FIRST_NAMES.to_string(),
        "Philomene".to_string(),
        "Ysaline".to_string(),
        BODY_MARKER.to_string(),
        TITLE_MARKER.to_string(),
        REASON_MARKER.to_string(),
        ins.to_string(),
        ins[..13].to_string(),
        // Professionals: table keys name them by a keyed index, values hold them sealed.
        DOCTOR.to_string(),
        SPECIALIST.to_string(),
        ER_DOCTOR.to_string(),
        PHARMACIST.to_string(),
        format!(
            "{} {} {} {} {} {} {}",
            &ins[..1],
            &ins[1..3],
            &ins[3..5],
            &ins[5..7],
            &ins[7..10],
            &ins[10..13],
            &ins[13..]
        ),
    ]
}

fn assert_no_marker(dir: &Path, ins: &str) {
    let files = files_under(dir);
    assert!(
        files.iter().any(|f| f.ends_with("carnet.redb")),
        "the database was searched: {files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).expect("read a data file");
        for m in markers(ins) {
            assert!(
                !contains(&bytes, m.as_bytes()),
                "'{m}' found in clear in {}",
                f.display()
            );
            assert!(
                !contains(&bytes, m.to_lowercase().as_bytes()),
                "'{m}' (lower case) found in clear in {}",
                f.display()
            );
        }
    }
}

#[test]
fn no_plaintext_in_any_data_file() {
    let host = Carnet::host();
    host.standard_pros();
    let ins = ins("2991299123987");
    host.dossier(&ins, BIRTH_NAME, FIRST_NAMES);
    host.standard_grants(&ins);
    host.ok(&["emergency", "set", "--dossier", &ins, "--masked", "allow"]);
    // A body spanning chunks, with the marker at both ends and across the chunk boundary.
    let mut big = format!("{BODY_MARKER} start ").into_bytes();
    big.resize(65_536 - 104 - 5, b'.');
    big.extend_from_slice(BODY_MARKER.as_bytes());
    big.resize(150_000, b'-');
    big.extend_from_slice(BODY_MARKER.as_bytes());
    let title = format!("Compte rendu {TITLE_MARKER} {BIRTH_NAME}");
    let id = host.add_doc(&ins, DOCTOR, "10", CONSULTATION, &title, &big);
    let small = host.add_doc(
        &ins,
        DOCTOR,
        "42",
        PRESCRIPTION,
        TITLE_MARKER,
        format!("{BODY_MARKER} {FIRST_NAMES}").as_bytes(),
    );
    let f = host.write("v2", format!("corrected {BODY_MARKER}").as_bytes());
    host.ok(&[
        "doc",
        "replace",
        &small,
        "--as",
        DOCTOR,
        "--class",
        "42",
        "--type",
        PRESCRIPTION,
        "--title",
        &title,
        &f,
    ]);
    host.ok(&["doc", "mask", &id, "--as", DOCTOR]);
    assert_eq!(host.body(&id, DOCTOR), big, "the data is really there");
    host.ok(&[
        "doc",
        "get",
        &id,
        "--as",
        ER_DOCTOR,
        "--mode",
        "break-glass",
        "--reason",
        REASON_MARKER,
    ]);
    host.fails_once(3, &["doc", "get", &id, "--as", PHARMACIST]);
    host.ok(&["doc", "list", "--dossier", &ins, "--as", "patient"]);
    let other = ins_b();
    host.dossier(&other, "AUTRE", "Personne");
    host.ok(&["dossier", "close", &other, "--reason", REASON_MARKER]);

    // A site fed by the host's bundle, writing its own documents.
    let bundle = host.export_authority("bundle");
    let site = Carnet::site(5, Some(&host.host_key()));
    site.ok(&["authority", "import", &bundle.display().to_string()]);
    site.standard_pros();
    let sid = site.add_doc(
        &ins,
        DOCTOR,
        "10",
        CONSULTATION,
        TITLE_MARKER,
        BODY_MARKER.as_bytes(),
    );
    site.ok(&["doc", "get", &sid, "--as", DOCTOR]);
    site.ok(&[
        "doc",
        "get",
        &sid,
        "--as",
        SPECIALIST,
        "--mode",
        "break-glass",
        "--reason",
        REASON_MARKER,
    ]);

    // The trace and the dossier, read back through the CLI, do hold the data…
    let trace = host.ok(&["audit", "show", "--dossier", &ins]).stdout;
    assert!(trace.contains(REASON_MARKER), "{trace}");
    assert!(
        host.ok(&["dossier", "show", &ins])
            .stdout
            .contains(BIRTH_NAME)
    );
    // …but nothing under either data folder does.
    assert_no_marker(&host.data, &ins);
    assert_no_marker(&site.data, &ins);

    // After a key rotation too (keys are re-wrapped; nothing is decrypted to disk).
    host.ok(&["keys", "rotate"]);
    assert_no_marker(&host.data, &ins);
    assert_eq!(host.body(&id, DOCTOR), big);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file of a data folder is 0600 and the folder 0700; so is the only folder under it.
fn assert_private_folder(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "data folder {}", dir.display());
    let files = files_under(dir);
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn every_file_with_patient_data_or_keys_is_the_owners_only() {
    let host = Carnet::host();
    assert_private_folder(&host.data);
    let ins = host.doctor_dossier();
    let id = host.add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", b"secret body");
    // Each output file is 0600, a new one and one that was there, readable by all, before.
    let got = host.path("got.bin");
    std::fs::write(&got, b"older and longer content").expect("write");
    chmod(&got, 0o644);
    let got_text = got.display().to_string();
    host.ok(&["doc", "get", &id, "--as", DOCTOR, "-o", &got_text]);
    assert_eq!(std::fs::read(&got).expect("read"), b"secret body");
    let export = host.path("export.json").display().to_string();
    host.ok(&[
        "export",
        "--dossier",
        &ins,
        "--as",
        "patient",
        "-o",
        &export,
    ]);
    let records = host.export_authority("records.carnet");
    host.ok(&["pki", "init", "--ca-in-replica"]);
    let bundle = host.path("site.bundle").display().to_string();
    host.ok(&[
        "pki",
        "enrol",
        "--name",
        "Clinique",
        "--finess",
        "750000001",
        "--host-address",
        "127.0.0.1:4433",
        "-o",
        &bundle,
    ]);
    for out in [
        got.as_path(),
        Path::new(&export),
        &records,
        Path::new(&bundle),
    ] {
        assert_eq!(mode(out), 0o600, "{}", out.display());
    }
    host.ok(&["keys", "rotate"]);
    assert_private_folder(&host.data);
    let site = Carnet::empty();
    site.ok(&["init", "--role", "site", "--enrol", &bundle]);
    assert_private_folder(&site.data);

    // A folder made readable by others is tightened at the next open, and said.
    chmod(&host.data, 0o755);
    chmod(&host.db_path(), 0o644);
    let o = host.ok(&["pro", "list"]);
    assert!(
        o.stderr.contains("warning") && o.stderr.contains("readable by others"),
        "{}",
        o.stderr
    );
    assert_private_folder(&host.data);
    let o = host.ok(&["pro", "list"]);
    assert!(!o.stderr.contains("warning"), "{}", o.stderr);
}

#[test]
fn no_replica_holds_a_document_id_or_its_time_after_syncing_through_the_daemons() {
    use crate::convergence::{network, sync_all};
    use crate::daemon::stop;
    let mut n = network();
    let ins = n.ins.clone();
    // Bodies of one chunk and of several chunks with a tail, written at each replica.
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let small = b"consultation (synthetic)".to_vec();
    let written = [
        (
            n.host.add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", &big),
            &big,
        ),
        (
            n.sites[0].add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", &small),
            &small,
        ),
        (
            n.sites[1].add_doc(&ins, DOCTOR, "10", CONSULTATION, "CR", &big),
            &big,
        ),
    ];
    sync_all(&n);
    for place in [&n.host, &n.sites[0], &n.sites[1]] {
        for (id, body) in &written {
            assert_eq!(&place.body(id, DOCTOR), *body, "{id} travelled whole");
        }
    }
    for d in n.site_daemons.iter_mut().chain([&mut n.host_daemon]) {
        assert_eq!(stop(d), Some(0));
    }
    for place in [&n.host, &n.sites[0], &n.sites[1]] {
        let bytes = std::fs::read(place.db_path()).expect("read carnet.redb");
        for (id, _) in &written {
            // The first 6 bytes are the creation time; the whole id begins with them.
            let time = &doc_id_bytes(id)[..6];
            assert!(
                !contains(&bytes, time),
                "document {id} (or its time) in {}",
                place.db_path().display()
            );
        }
    }
}
