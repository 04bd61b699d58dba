//! `init`, the data folder, passphrases, `pro`, `dossier`, `grant`, `emergency` and `audit`:
//! success and failure paths, human and `--json` output.

use crate::support::*;

#[test]
fn init_host_human_and_json() {
    let c = Carnet::empty();
    let o = c.ok(&["init", "--role", "host", "--name", "national host"]);
    assert!(
        o.stdout
            .contains("initialised host replica 'national host' (site id 0)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("master.key"),
        "the key file must be named: {}",
        o.stdout
    );
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("host key: "))
        .expect("host key line");
    let key = line.trim_start_matches("host key: ");
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(c.data.join("master.key").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.data.join("master.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the key file must not be readable by others: {mode:o}"
        );
    }
    assert_eq!(c.host_key(), key);

    let j = Carnet::empty().json(&["init", "--role", "host"]);
    assert_eq!(j["role"], "host");
    assert_eq!(j["site_id"], 0);
    assert_eq!(j["name"], "host");
    assert_eq!(j["host_key"].as_str().map(str::len), Some(64));
}

#[test]
fn init_site_human_and_json() {
    let c = Carnet::empty();
    let j = c.json(&[
        "init",
        "--role",
        "site",
        "--name",
        "Pharmacie du bourg",
        "--site-id",
        "42",
    ]);
    assert_eq!(j["role"], "site");
    assert_eq!(j["site_id"], 42);
    assert_eq!(j["name"], "Pharmacie du bourg");
    assert!(
        j["host_key"].is_null(),
        "a site pins no host key until told: {j}"
    );
    // Unpinned: no host key to print.
    c.fails(4, &["authority", "key"]);

    let pinned = Carnet::empty();
    let key = Carnet::host().host_key();
    let o = pinned.ok(&["init", "--role", "site", "--host-key", &key]);
    assert!(
        o.stdout.contains("initialised site replica"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(&format!("host key: {key}")),
        "{}",
        o.stdout
    );
    assert_eq!(pinned.host_key(), key);
    assert_eq!(pinned.json(&["audit", "verify"])["ok"], true);
}

#[test]
fn init_refusals() {
    let c = Carnet::host();
    let before = std::fs::read(c.db_path()).expect("db");
    let o = c.fails_once(2, &["init", "--role", "host"]);
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    let o = c.fails_once(2, &["init", "--role", "site"]);
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    assert_eq!(
        std::fs::read(c.db_path()).expect("db"),
        before,
        "a refused init changed the replica"
    );

    let fresh = Carnet::empty();
    for bad in ["abc", &"zz".repeat(32), &"ab".repeat(33)] {
        let o = fresh.fails(2, &["init", "--role", "site", "--host-key", bad]);
        assert!(o.stderr.contains("64 hex digits"), "{}", o.stderr);
    }
    let o = fresh.fails(
        2,
        &["init", "--role", "host", "--host-key", &"ab".repeat(32)],
    );
    assert!(o.stderr.contains("for sites"), "{}", o.stderr);
    let o = fresh.fails(2, &["init", "--role", "host", "--site-id", "3"]);
    assert!(o.stderr.contains("for sites"), "{}", o.stderr);
    let o = fresh.fails(2, &["init", "--role", "site", "--site-id", "0"]);
    assert!(o.stderr.contains("host"), "{}", o.stderr);
    assert!(
        !fresh.db_path().exists(),
        "a refused init left a replica behind"
    );
}

#[test]
fn missing_data_folder_is_a_usage_error() {
    let o = run_raw(&[], &["pro", "list"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--data"), "{}", o.stderr);
    let o = run_raw(&[], &["--json", "init", "--role", "host"]);
    assert_eq!(o.code, 2);
    let v = o.json();
    assert_eq!(v["error"]["kind"], "invalid");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--data")),
        "{v}"
    );

    // CARNET_DATA stands for --data.
    let c = Carnet::host();
    let data = c.data.display().to_string();
    let o = run_raw(&[("CARNET_DATA", &data)], &["--json", "pro", "list"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json(), serde_json::json!([]));
}

#[test]
fn a_folder_without_replica_is_not_found() {
    let c = Carnet::empty();
    let o = c.fails(4, &["pro", "list"]);
    assert!(o.stderr.contains("carnet init"), "{}", o.stderr);
    assert!(!c.data.join("carnet.redb").exists());
}

#[test]
fn passphrase_mode() {
    let mut c = Carnet::empty();
    c.set_env("CARNET_PASSPHRASE", "correct horse battery");
    let o = c.ok(&["init", "--role", "host"]);
    assert!(o.stdout.contains("CARNET_PASSPHRASE"), "{}", o.stdout);
    assert!(
        !c.data.join("master.key").exists(),
        "a passphrase replica has no key file"
    );
    c.pro(DOCTOR, "medecin");

    c.unset_env("CARNET_PASSPHRASE");
    let o = c.fails_once(2, &["pro", "list"]);
    assert!(o.stderr.contains("CARNET_PASSPHRASE"), "{}", o.stderr);
    let o = c.run_env(
        &[("CARNET_PASSPHRASE", "wrong horse")],
        &["--json", "pro", "list"],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert_eq!(o.json()["error"]["kind"], "key");
    assert!(o.stderr.contains("wrong passphrase"), "{}", o.stderr);

    let o = c.run_env(
        &[("CARNET_PASSPHRASE", "correct horse battery")],
        &["--json", "pro", "list"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json()[0]["rpps"], DOCTOR);
}

#[test]
fn pro_add_and_list() {
    let c = Carnet::host();
    let o = c.ok(&[
        "pro",
        "add",
        "--rpps",
        DOCTOR,
        "--profession",
        "medecin",
        "--specialty",
        "cardiologie",
        "--name",
        "Dr Coeur",
    ]);
    assert_eq!(o.stdout.trim(), format!("registered {DOCTOR} (medecin)"));
    let j = c.json(&[
        "pro",
        "add",
        "--rpps",
        PHARMACIST,
        "--profession",
        "pharmacien",
    ]);
    assert_eq!(
        j,
        serde_json::json!({"rpps": PHARMACIST, "profession": "pharmacien", "specialty": null, "name": null})
    );

    let list = c.ok(&["pro", "list"]).stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("RPPS"));
    assert!(
        lines[1].starts_with(DOCTOR)
            && lines[1].contains("cardiologie")
            && lines[1].contains("Dr Coeur"),
        "{list}"
    );
    assert!(
        lines[2].starts_with(PHARMACIST) && lines[2].contains("pharmacien"),
        "{list}"
    );
    let j = c.json(&["pro", "list"]);
    assert_eq!(j.as_array().map(Vec::len), Some(2));
    assert_eq!(j[0]["specialty"], "cardiologie");

    // Re-registering updates.
    c.ok(&[
        "pro",
        "add",
        "--rpps",
        DOCTOR,
        "--profession",
        "medecin",
        "--name",
        "Dr Coeur-Vaillant",
    ]);
    let j = c.json(&["pro", "list"]);
    assert_eq!(j.as_array().map(Vec::len), Some(2));
    assert_eq!(j[0]["name"], "Dr Coeur-Vaillant");

    for bad in ["1234567890", "123456789012", "1234567890a", ""] {
        let o = c.fails(2, &["pro", "add", "--rpps", bad, "--profession", "medecin"]);
        assert!(o.stderr.contains("invalid RPPS"), "{bad}: {}", o.stderr);
    }
    let o = c.fails(
        2,
        &["pro", "add", "--rpps", NURSE, "--profession", "astrologue"],
    );
    assert!(
        o.stderr.contains("astrologue") && o.stderr.contains("pharmacien"),
        "{}",
        o.stderr
    );
    assert_eq!(
        c.json(&["pro", "list"]).as_array().map(Vec::len),
        Some(2),
        "refusals registered nobody"
    );
}

#[test]
fn dossier_create_show_list() {
    let c = Carnet::host();
    let a = ins_a();
    let o = c.ok(&[
        "dossier",
        "create",
        "--ins",
        &a,
        "--birth-name",
        "DUPONT",
        "--first-names",
        "Camille Marie",
        "--birth-date",
        "1984-05-07",
        "--sex",
        "F",
        "--birthplace",
        "75056",
        "--qualified",
    ]);
    assert_eq!(o.stdout.trim(), format!("created dossier {a}"));
    let b = ins_b();
    let j = c.json(&[
        "dossier",
        "create",
        "--ins",
        &b,
        "--ins-kind",
        "test",
        "--birth-name",
        "MARTIN",
        "--first-names",
        "Louis",
        "--birth-date",
        "2015-01-02",
        "--sex",
        "M",
        "--holder",
        "minor",
        "--representative",
        "Mme MARTIN",
        "--mask-new-by-default",
    ]);
    assert_eq!(j["ins"], b.as_str());
    assert_eq!(j["ins_kind"], "test");
    assert_eq!(j["identity"]["status"], "provisional");
    assert_eq!(j["holder"], "minor");
    assert_eq!(j["representatives"][0]["id"], "R1");
    assert_eq!(j["representatives"][0]["name"], "Mme MARTIN");
    assert_eq!(j["mask_new_by_default"], true);
    assert_eq!(j["status"], "active");
    assert_eq!(j["documents"], 0);

    let s = c.json(&["dossier", "show", &a]);
    assert_eq!(s["identity"]["birth_name"], "DUPONT");
    assert_eq!(s["identity"]["first_names"], "Camille Marie");
    assert_eq!(s["identity"]["birth_date"], "1984-05-07");
    assert_eq!(s["identity"]["sex"], "F");
    assert_eq!(s["identity"]["birthplace"], "75056");
    assert_eq!(s["identity"]["status"], "qualified");
    assert_eq!(s["ins_kind"], "nir");
    assert_eq!(s["emergency"]["btg_allowed"], true);
    assert!(s["closure"].is_null());
    let human = c.ok(&["dossier", "show", &a]).stdout;
    assert!(
        human.starts_with(&format!("dossier {a} (1.2.250.1.213.1.4.8)")),
        "{human}"
    );
    assert!(
        human
            .contains("DUPONT Camille Marie, born 1984-05-07, sex F, birthplace 75056 [qualified]"),
        "{human}"
    );
    assert!(human.contains("status: active"), "{human}");
    assert!(human.contains("grants: none"), "{human}");
    // Spaces inside the INS are ignored.
    let spaced = format!("{} {} {}", &a[..1], &a[1..7], &a[7..]);
    assert_eq!(c.json(&["dossier", "show", &spaced])["ins"], a.as_str());

    let list = c.ok(&["dossier", "list"]).stdout;
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(
        list.contains(&a) && list.contains("DUPONT Camille Marie"),
        "{list}"
    );
    assert!(list.contains(&b) && list.contains("MARTIN Louis"), "{list}");
    let l = c.json(&["dossier", "list"]);
    assert_eq!(l.as_array().map(Vec::len), Some(2));
}

#[test]
fn dossier_create_refusals() {
    let c = Carnet::host();
    let a = ins_a();
    let bad = wrong_key(&a);
    let create = |ins: &str| {
        vec![
            "dossier".to_string(),
            "create".into(),
            "--ins".into(),
            ins.to_string(),
            "--birth-name".into(),
            "DUPONT".into(),
            "--first-names".into(),
            "Camille".into(),
            "--birth-date".into(),
            "1984-05-07".into(),
            "--sex".into(),
            "F".into(),
        ]
    };
    let args = create(&bad);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.fails(2, &args);
    assert!(
        o.stderr.contains("invalid INS") && o.stderr.contains("wrong key"),
        "{}",
        o.stderr
    );
    for malformed in ["12345", "9840575123456 00", "2840575X2345600"] {
        let args = create(malformed);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = c.fails(2, &args);
        assert!(
            o.stderr.contains("invalid INS"),
            "{malformed}: {}",
            o.stderr
        );
    }
    // Other fields.
    for (flag, value, says) in [
        ("--sex", "X", "X"),
        ("--birth-date", "1984-13-45", "1984-13-45"),
        ("--ins-kind", "foo", "foo"),
    ] {
        let mut args = create(&a);
        let i = args.iter().position(|x| x == flag).map_or_else(
            || {
                args.push(flag.to_string());
                args.push(String::new());
                args.len() - 1
            },
            |i| i + 1,
        );
        args[i] = value.to_string();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = c.fails(2, &args);
        assert!(o.stderr.contains(says), "{flag} {value}: {}", o.stderr);
    }
    let mut args = create(&a);
    args.extend(["--representative".to_string(), "Someone".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.fails(2, &args);
    assert!(o.stderr.contains("adult"), "{}", o.stderr);
    assert_eq!(
        c.json(&["dossier", "list"]),
        serde_json::json!([]),
        "refusals created nothing"
    );

    let args = create(&a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ok(&args);
    let o = c.fails(2, &args);
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);

    let site = Carnet::site(7, None);
    let o = site.fails(2, &args);
    assert!(o.stderr.contains("host"), "{}", o.stderr);
    assert_eq!(
        site.json(&["dossier", "list", "--as", "holder"]),
        serde_json::json!([])
    );

    let o = c.fails(4, &["dossier", "show", &ins_b()]);
    assert!(o.stderr.contains("no such dossier"), "{}", o.stderr);
    let o = c.fails(2, &["dossier", "show", &wrong_key(&ins_b())]);
    assert!(o.stderr.contains("invalid INS"), "{}", o.stderr);
}

#[test]
fn dossier_close_and_purge() {
    let k = clinic();
    let c = &k.host;
    let o = c.fails(2, &["dossier", "purge", &k.ins]);
    assert!(
        o.stderr.contains("close the dossier before purging"),
        "{}",
        o.stderr
    );
    assert_eq!(
        c.body(&k.consult, DOCTOR),
        CONSULT_BODY,
        "a refused purge destroyed nothing"
    );
    let o = c.fails(2, &["dossier", "close", &k.ins, "--reason", "  "]);
    assert!(o.stderr.contains("reason"), "{}", o.stderr);
    c.fails(4, &["dossier", "close", &ins_b(), "--reason", "x"]);

    let o = c.ok(&[
        "dossier",
        "close",
        &k.ins,
        "--reason",
        "demande du titulaire",
    ]);
    assert!(
        o.stdout.contains(&format!("closed dossier {}", k.ins)),
        "{}",
        o.stdout
    );
    let s = c.json(&["dossier", "show", &k.ins]);
    assert_eq!(s["status"], "closed");
    assert_eq!(s["closure"]["reason"], "demande du titulaire");
    assert!(
        c.ok(&["dossier", "show", &k.ins])
            .stdout
            .contains("status: closed on ")
    );
    let o = c.fails(2, &["dossier", "close", &k.ins, "--reason", "again"]);
    assert!(o.stderr.contains("already closed"), "{}", o.stderr);
    let o = c.fails(
        2,
        &["grant", "add", "--dossier", &k.ins, "--rpps", ER_DOCTOR],
    );
    assert!(o.stderr.contains("closed"), "{}", o.stderr);

    // Archived ten years: purging before is refused, until the holder asks the deletion.
    let o = c.fails(3, &["dossier", "purge", &k.ins]);
    let until = s["closure"]["retention_ends"]
        .as_str()
        .and_then(|t| t.get(..10))
        .expect("retention end");
    assert!(
        o.stderr.contains(&format!("archived until {until}"))
            && o.stderr.contains("request-deletion"),
        "{}",
        o.stderr
    );
    assert_eq!(s["closure"]["deletion_requested"], serde_json::Value::Null);
    assert_eq!(
        c.json(&["dossier", "show", &k.ins])["documents"],
        s["documents"],
        "a refused purge destroyed nothing"
    );
    let j = c.json(&["dossier", "request-deletion", &k.ins]);
    assert_eq!(j["status"], "closed");
    assert!(j["closure"]["deletion_requested"].is_string(), "{j}");
    assert!(
        c.ok(&["dossier", "show", &k.ins])
            .stdout
            .contains("the holder asked its deletion on ")
    );
    let j = c.json(&["dossier", "purge", &k.ins]);
    assert_eq!(j, serde_json::json!({"ins": k.ins, "status": "purged"}));
    let o = c.fails(3, &["dossier", "reopen", &k.ins, "--reason", "x"]);
    assert!(o.stderr.contains("was purged"), "{}", o.stderr);
    c.fails(3, &["dossier", "request-deletion", &k.ins]);
    c.fails(4, &["dossier", "show", &k.ins]);
    c.fails(4, &["dossier", "purge", &k.ins]);
    assert_eq!(c.json(&["dossier", "list"]), serde_json::json!([]));
    // The closure and the purge are in the (host's) trace, which still verifies.
    let trace = c.json(&["audit", "verify"]);
    assert_eq!(trace["ok"], true);
}

#[test]
fn grants_add_revoke_block_list() {
    let c = Carnet::host();
    c.standard_pros();
    let a = ins_a();
    c.dossier(&a, "DUPONT", "Camille");
    assert_eq!(
        c.json(&["grant", "list", "--dossier", &a]),
        serde_json::json!([])
    );
    assert!(
        c.ok(&["grant", "list", "--dossier", &a])
            .stdout
            .contains("(no grant)")
    );

    let o = c.ok(&[
        "grant",
        "add",
        "--dossier",
        &a,
        "--rpps",
        DOCTOR,
        "--medecin-traitant",
    ]);
    assert_eq!(
        o.stdout.trim(),
        format!("grant of {DOCTOR} on {a}: active (médecin traitant)")
    );
    let j = c.json(&["grant", "add", "--dossier", &a, "--rpps", PHARMACIST]);
    assert_eq!(
        j,
        serde_json::json!({"ins": a, "rpps": PHARMACIST, "state": "active", "basis": "consent",
                           "issued_at": j["issued_at"], "treating": false,
                           "medecin_traitant": false, "until": null})
    );
    let j = c.json(&[
        "grant",
        "add",
        "--dossier",
        &a,
        "--rpps",
        SPECIALIST,
        "--basis",
        "care-team",
    ]);
    assert_eq!(
        (j["basis"].clone(), j["treating"].clone()),
        ("care-team".into(), false.into())
    );
    let j = c.json(&[
        "grant",
        "add",
        "--dossier",
        &a,
        "--rpps",
        ER_DOCTOR,
        "--basis",
        "treating",
    ]);
    assert_eq!(
        (j["basis"].clone(), j["treating"].clone()),
        ("treating".into(), true.into())
    );
    let o = c.fails(
        2,
        &[
            "grant",
            "add",
            "--dossier",
            &a,
            "--rpps",
            ER_DOCTOR,
            "--basis",
            "friendship",
        ],
    );
    assert!(o.stderr.contains("friendship"), "{}", o.stderr);
    let j = c.json(&["grant", "revoke", "--dossier", &a, "--rpps", PHARMACIST]);
    assert_eq!(j["state"], "revoked");
    assert_eq!(
        j["basis"], "consent",
        "a revocation keeps the basis it ends"
    );
    // A revoked or blocked médecin traitant has no rights left.
    let j = c.json(&["grant", "block", "--dossier", &a, "--rpps", ER_DOCTOR]);
    assert_eq!(
        (j["state"].clone(), j["treating"].clone()),
        ("blocked".into(), false.into())
    );
    let j = c.json(&["grant", "block", "--dossier", &a, "--rpps", NURSE]);
    assert_eq!(j["state"], "blocked");
    // Grants may name a professional this replica does not know (they are national).
    c.ok(&["grant", "add", "--dossier", &a, "--rpps", STRANGER]);

    let list = c.json(&["grant", "list", "--dossier", &a]);
    let state = |r: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|g| g["rpps"] == r))
            .map(|g| {
                (
                    g["state"].as_str().unwrap_or("?").to_string(),
                    g["treating"] == true,
                )
            })
    };
    assert_eq!(state(DOCTOR), Some(("active".into(), true)));
    assert_eq!(state(PHARMACIST), Some(("revoked".into(), false)));
    assert_eq!(state(NURSE), Some(("blocked".into(), false)));
    assert_eq!(state(STRANGER), Some(("active".into(), false)));
    let human = c.ok(&["grant", "list", "--dossier", &a]).stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with(NURSE) && l.contains("blocked") && l.ends_with("consent")),
        "{human}"
    );
    assert!(
        human.lines().any(|l| l.starts_with(DOCTOR)
            && l.contains("active")
            && l.ends_with("médecin traitant")),
        "{human}"
    );
    let show = c.ok(&["dossier", "show", &a]).stdout;
    assert!(
        show.contains(&format!("{DOCTOR} active (médecin traitant)")),
        "{show}"
    );

    let o = c.fails(2, &["grant", "add", "--dossier", &a, "--rpps", "123"]);
    assert!(o.stderr.contains("invalid RPPS"), "{}", o.stderr);
    c.fails(
        4,
        &["grant", "add", "--dossier", &ins_b(), "--rpps", DOCTOR],
    );
    c.fails(4, &["grant", "list", "--dossier", &ins_b()]);
    c.fails(
        2,
        &[
            "grant",
            "block",
            "--dossier",
            &wrong_key(&a),
            "--rpps",
            DOCTOR,
        ],
    );
    let site = Carnet::site(3, None);
    // At a site, consent given in person needs the dossier there (the host's decisions are
    // checked in `authority`).
    let o = site.fails(4, &["grant", "add", "--dossier", &a, "--rpps", DOCTOR]);
    assert!(
        o.stderr.contains("no such dossier") && o.stderr.contains("carnet pin"),
        "a site's hint is its own: {}",
        o.stderr
    );
}

#[test]
fn emergency_preferences() {
    let c = Carnet::host();
    let a = ins_a();
    c.dossier(&a, "DUPONT", "Camille");
    let s = c.json(&["dossier", "show", &a]);
    assert_eq!(
        s["emergency"],
        serde_json::json!({"samu_allowed": true, "btg_allowed": true, "masked_in_emergency": false})
    );
    let o = c.ok(&["emergency", "set", "--dossier", &a, "--samu", "oppose"]);
    assert!(
        o.stdout.contains(
            "centre 15 opposed, break-glass allowed, masked documents in emergency opposed"
        ),
        "{}",
        o.stdout
    );
    let j = c.json(&["emergency", "set", "--dossier", &a, "--masked", "allow"]);
    assert_eq!(
        j,
        serde_json::json!({"ins": a, "samu_allowed": false, "btg_allowed": true, "masked_in_emergency": true})
    );
    let j = c.json(&[
        "emergency",
        "set",
        "--dossier",
        &a,
        "--btg",
        "oppose",
        "--samu",
        "allow",
    ]);
    assert_eq!(
        (
            j["samu_allowed"].clone(),
            j["btg_allowed"].clone(),
            j["masked_in_emergency"].clone()
        ),
        (true.into(), false.into(), true.into())
    );
    let s = c.json(&["dossier", "show", &a]);
    assert_eq!(
        s["emergency"],
        serde_json::json!({"samu_allowed": true, "btg_allowed": false, "masked_in_emergency": true})
    );

    c.fails(
        4,
        &["emergency", "set", "--dossier", &ins_b(), "--btg", "allow"],
    );
    let o = c.run(&["emergency", "set", "--dossier", &a, "--btg", "maybe"]);
    assert_eq!(o.code, 2, "clap refuses an unknown value");
    assert_eq!(
        c.json(&["dossier", "show", &a])["emergency"]["btg_allowed"],
        false,
        "refusals changed nothing"
    );
    // (A site refusing `emergency set` is checked in `authority`, on a dossier it holds.)
}

#[test]
fn audit_show_and_verify() {
    let k = clinic();
    let c = &k.host;
    c.body(&k.consult, DOCTOR);
    let entries = c.audit(&k.ins);
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"dossier-create"), "{actions:?}");
    assert!(actions.contains(&"grant-active"), "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| **a == "write").count(),
        2,
        "{actions:?}"
    );
    let read = entries
        .iter()
        .find(|e| e["action"] == "read")
        .expect("read traced");
    assert_eq!(read["doc"], k.consult.as_str());
    assert_eq!(read["allowed"], true);
    assert_eq!(read["rule"], 4);
    assert_eq!(read["mode"], "normal");
    assert_eq!(read["site_id"], 0);
    assert_eq!(read["decided_offline"], false, "the host decides online");
    assert!(
        read["who"].as_str().is_some_and(|a| a.starts_with(DOCTOR)),
        "{read}"
    );

    let human = c.ok(&["audit", "show", "--dossier", &k.ins]).stdout;
    assert!(
        human
            .lines()
            .any(|l| l.contains("read") && l.contains("ALLOW") && l.contains(&k.consult)),
        "{human}"
    );

    let v = c.json(&["audit", "verify"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["chains"], 1);
    let n = v["entries"].as_u64().expect("count");
    assert!(n >= entries.len() as u64, "{n} < {}", entries.len());
    let o = c.ok(&["audit", "verify"]);
    assert_eq!(
        o.stdout.trim(),
        format!("trace intact: {n} entries in 1 chain(s)")
    );

    let other = Carnet::host();
    other.dossier(&ins_b(), "MARTIN", "Louis");
    // The operator's reading is traced: it is the one entry of a dossier never held here.
    let shown = other.json(&["audit", "show", "--dossier", &ins_a()]);
    let actions: Vec<&str> = shown
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, vec!["operator-audit-show"]);
    other.fails(2, &["audit", "show", "--dossier", "123"]);
}

#[test]
fn an_init_that_runs_out_of_disk_leaves_nothing_behind_and_a_new_init_works() {
    let c = Carnet::empty();
    // A full disk, emulated: files may not grow past 16 KiB (a write past it fails with EFBIG;
    // the signal that would kill the process is ignored).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 32; exec \"$0\" --data \"$1\" init --role host")
        .arg(bin())
        .arg(&c.data)
        .env_remove("CARNET_PASSPHRASE")
        .output()
        .expect("sh runs");
    assert_ne!(out.status.code(), Some(0), "the init cannot succeed");
    let left: Vec<_> = std::fs::read_dir(&c.data)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed init leaves nothing: {left:?}");
    c.ok(&["init", "--role", "host"]);
    c.ok(&["dossier", "list"]);
}

#[test]
fn completions_and_manual_pages_come_from_the_commands_themselves() {
    let c = Carnet::empty();
    for (shell, marker) in [
        ("bash", "_carnet()"),
        ("zsh", "#compdef carnet"),
        ("fish", "complete -c carnet"),
    ] {
        let o = c.ok(&["completions", shell]);
        assert!(o.stdout.contains(marker), "{shell}: {}", &o.stdout[..200]);
        // Every command is offered, a new one included without anyone editing a script.
        assert!(o.stdout.contains("quarantine") && o.stdout.contains("completions"));
    }
    // Refused as any usage error, in JSON too with --json.
    let o = c.fails(2, &["completions", "tcsh"]);
    assert!(o.stderr.contains("bash, zsh, fish"), "{}", o.stderr);
    let j = c.run(&["--json", "completions", "tcsh"]).json();
    assert!(
        j["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tcsh")),
        "{j}"
    );
    let dir = c.data.join("man");
    let o = c.ok(&["man", dir.to_str().expect("utf-8")]);
    assert!(o.stdout.contains("manual pages written"), "{}", o.stdout);
    let page = std::fs::read_to_string(dir.join("carnet-doc-add.1")).expect("a page per command");
    assert!(
        page.contains(".SH NAME") && page.contains("carnet\\-doc\\-add"),
        "{page}"
    );
    assert!(page.contains("\\-\\-dossier"), "its options: {page}");
    assert!(dir.join("carnet.1").exists());
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // The script is far larger than a pipe holds: the reader closes it long before the end.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("\"$0\" completions bash 2>\"$1\" | head -c 10 >/dev/null; exit ${PIPESTATUS[0]}")
        .arg(bin())
        .arg(std::env::temp_dir().join(format!("carnet-epipe-{}", std::process::id())))
        .output()
        .expect("bash runs");
    let err_file = std::env::temp_dir().join(format!("carnet-epipe-{}", std::process::id()));
    let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
    let _ = std::fs::remove_file(&err_file);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "nothing said: {stderr}");
}
