//! `authority export/import/key`: a site provisioned from the host's signed records works per
//! its grants, follows revocations, and refuses records from any other host.

use crate::support::*;

#[test]
fn key_and_export_on_the_host() {
    let k = clinic();
    let c = &k.host;
    let key = c.host_key();
    assert_eq!(key.len(), 64);
    assert_eq!(c.ok(&["authority", "key"]).stdout.trim(), key);
    let out = c.path("bundle");
    let o = c.ok(&["authority", "export", "-o", &out.display().to_string()]);
    // One head and five grants, signed whole by the host (its heartbeat over them).
    assert!(
        o.stdout.starts_with("6 signed record(s) written to"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("signed whole by the host"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("transfer it securely"), "{}", o.stdout);
    let bytes = std::fs::read(&out).expect("bundle");
    assert!(bytes.starts_with(b"CARNETAB"));
    let j = c.json(&[
        "authority",
        "export",
        "--output",
        &out.display().to_string(),
    ]);
    assert_eq!(j["records"], 6);
    assert_eq!(j["signed_whole"], true);
    let o = c.fails(
        2,
        &[
            "authority",
            "export",
            "-o",
            &c.path("no/dir/b").display().to_string(),
        ],
    );
    assert!(o.stderr.contains("cannot write"), "{}", o.stderr);
    // A site without a host key has nothing signed to export.
    let site = Carnet::site(4, None);
    let o = site.fails(
        2,
        &[
            "authority",
            "export",
            "-o",
            &site.path("b").display().to_string(),
        ],
    );
    assert!(o.stderr.contains("no host key"), "{}", o.stderr);
    let missing = site.path("missing").display().to_string();
    let o = site.fails(2, &["authority", "import", &missing]);
    assert!(o.stderr.contains("cannot read"), "{}", o.stderr);
}

#[test]
fn a_site_works_from_the_hosts_records() {
    let k = clinic();
    let host = &k.host;
    let bundle = host.export_authority("bundle").display().to_string();
    let site = Carnet::site(31, Some(&host.host_key()));
    let j = site.json(&["authority", "import", &bundle]);
    assert_eq!(
        j,
        serde_json::json!({"admitted": 7, "unchanged": 0, "purged": 0, "lease_renewed": true})
    );
    let o = site.ok(&["authority", "import", &bundle]);
    assert_eq!(
        o.stdout.trim(),
        "imported: 0 record(s) now in force, 7 unchanged, 0 dossier(s) purged after closure"
    );

    let show = site.json(&["dossier", "show", &k.ins, "--as", "holder"]);
    assert_eq!(show["identity"]["birth_name"], "DUPONT");
    assert_eq!(show["status"], "active");
    assert_eq!(
        show["documents"], 0,
        "documents travel by sync, not in the bundle"
    );
    assert_eq!(show["grants"].as_array().map(Vec::len), Some(5));

    // Professionals are registered per site; an unknown RPPS is not identified (row 12).
    let f = site.write("n", b"note");
    let o = site.fails(
        3,
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
    assert!(o.stderr.contains("(rule 12)"), "{}", o.stderr);
    site.standard_pros();
    let consult = site.add_doc(
        &k.ins,
        DOCTOR,
        "10",
        CONSULTATION,
        "CR du dispensaire",
        b"CR site (synthetic)",
    );
    let presc = site.add_doc(
        &k.ins,
        SPECIALIST,
        "42",
        PRESCRIPTION,
        "Ordonnance site",
        b"Rx site (synthetic)",
    );
    let j = site.json(&["doc", "get", &consult, "--as", DOCTOR]);
    assert_eq!(j["rule"], 4);
    assert_eq!(j["site_id"], 31);
    assert_eq!(site.body(&consult, SPECIALIST), b"CR site (synthetic)");
    assert_eq!(site.body(&presc, PHARMACIST), b"Rx site (synthetic)");
    site.fails(3, &["doc", "get", &consult, "--as", PHARMACIST]);
    site.fails(3, &["doc", "get", &consult, "--as", ER_DOCTOR]);
    assert_eq!(
        site.ok(&[
            "doc",
            "get",
            &consult,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "urgence"
        ])
        .raw,
        b"CR site (synthetic)"
    );
    // Decisions at a site are flagged as decided offline, with the authority version used.
    let t = site
        .audit_as(&k.ins, "holder")
        .into_iter()
        .rev()
        .find(|e| e["action"] == "read")
        .expect("read trace");
    assert_eq!(t["site_id"], 31);
    assert_eq!(t["decided_offline"], true);
    assert!(
        t["authority_version"].as_u64().is_some_and(|v| v > 0),
        "{t}"
    );
    assert_eq!(site.json(&["audit", "verify"])["ok"], true);

    // The host's decisions stay the host's (a site records only consent given in person).
    let o = site.fails(
        2,
        &["grant", "revoke", "--dossier", &k.ins, "--rpps", ER_DOCTOR],
    );
    assert!(o.stderr.contains("national host"), "{}", o.stderr);
    site.fails(2, &["dossier", "close", &k.ins, "--reason", "x"]);
    site.fails(2, &["dossier", "purge", &k.ins]);
    site.fails(
        2,
        &["emergency", "set", "--dossier", &k.ins, "--btg", "oppose"],
    );
}

#[test]
fn revocations_and_blocks_reach_the_site() {
    let k = clinic();
    let host = &k.host;
    let site = Carnet::site(32, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b1").display().to_string(),
    ]);
    site.standard_pros();
    let id = site.add_doc(
        &k.ins,
        DOCTOR,
        "42",
        PRESCRIPTION,
        "Ordonnance",
        b"Rx (synthetic)",
    );
    assert_eq!(site.body(&id, PHARMACIST), b"Rx (synthetic)");
    assert_eq!(site.body(&id, NURSE), b"Rx (synthetic)");
    let old_bundle = host.export_authority("b1-copy").display().to_string();

    host.ok(&["grant", "revoke", "--dossier", &k.ins, "--rpps", PHARMACIST]);
    host.ok(&["grant", "block", "--dossier", &k.ins, "--rpps", NURSE]);
    host.ok(&["emergency", "set", "--dossier", &k.ins, "--btg", "oppose"]);
    let j = site.json(&[
        "authority",
        "import",
        &host.export_authority("b2").display().to_string(),
    ]);
    // The revocation, the block, the preferences and the export's heartbeat.
    assert_eq!(j["admitted"], 4, "{j}");
    site.fails(3, &["doc", "get", &id, "--as", PHARMACIST]);
    let o = site.fails(
        3,
        &[
            "doc",
            "get",
            &id,
            "--as",
            NURSE,
            "--mode",
            "break-glass",
            "--reason",
            "r",
        ],
    );
    assert!(o.stderr.contains("(rule 3)"), "{}", o.stderr);
    let o = site.fails(
        3,
        &[
            "doc",
            "get",
            &id,
            "--as",
            ER_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "r",
        ],
    );
    assert!(o.stderr.contains("opposed break-glass"), "{}", o.stderr);

    // Replaying the older bundle cannot undo them.
    let j = site.json(&["authority", "import", &old_bundle]);
    assert_eq!(j["admitted"], 0, "{j}");
    site.fails(3, &["doc", "get", &id, "--as", PHARMACIST]);
    site.fails(3, &["doc", "get", &id, "--as", NURSE]);
    let grants = site.json(&["grant", "list", "--dossier", &k.ins, "--as", "holder"]);
    let state = |r: &str| {
        grants
            .as_array()
            .and_then(|g| g.iter().find(|x| x["rpps"] == r))
            .map(|x| x["state"].clone())
    };
    assert_eq!(state(PHARMACIST), Some("revoked".into()));
    assert_eq!(state(NURSE), Some("blocked".into()));
}

#[test]
fn a_site_refuses_another_hosts_records() {
    let k = clinic();
    let other = Carnet::host();
    other.dossier(&ins_b(), "INTRUS", "Mallory");
    other.ok(&[
        "grant",
        "add",
        "--dossier",
        &ins_b(),
        "--rpps",
        DOCTOR,
        "--treating",
    ]);
    let foreign = other.export_authority("foreign").display().to_string();
    let genuine = k.host.export_authority("genuine").display().to_string();

    // Pinned at init.
    let pinned = Carnet::site(33, Some(&k.host.host_key()));
    let o = pinned.fails(5, &["authority", "import", &foreign]);
    assert!(o.stderr.contains("different host"), "{}", o.stderr);
    assert_eq!(
        pinned.json(&["dossier", "list", "--as", "holder"]),
        serde_json::json!([])
    );
    assert_eq!(pinned.host_key(), k.host.host_key());
    pinned.ok(&["authority", "import", &genuine]);

    // Pinned at the first import.
    let unpinned = Carnet::site(34, None);
    unpinned.ok(&["authority", "import", &genuine]);
    assert_eq!(unpinned.host_key(), k.host.host_key());
    let o = unpinned.fails(5, &["authority", "import", &foreign]);
    assert!(o.stderr.contains("different host"), "{}", o.stderr);
    for s in [&pinned, &unpinned] {
        let list = s.json(&["dossier", "list", "--as", "holder"]);
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        assert_eq!(list[0]["ins"], k.ins.as_str());
        s.fails(4, &["dossier", "show", &ins_b(), "--as", "holder"]);
    }

    // A host trusts only itself.
    let o = k.host.fails(5, &["authority", "import", &foreign]);
    assert!(o.stderr.contains("different host"), "{}", o.stderr);
    // Records of the wrong host key smuggled under the right one do not verify.
    let mut bytes = std::fs::read(&foreign).expect("foreign");
    let key = k.host.host_key();
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    bytes[9..41].copy_from_slice(&raw);
    let smuggled = pinned.write("smuggled", &bytes);
    let o = pinned.fails(5, &["authority", "import", &smuggled]);
    assert!(o.stderr.contains("does not verify"), "{}", o.stderr);
    pinned.fails(4, &["dossier", "show", &ins_b(), "--as", "holder"]);
}

/// When the site's authority cache was last vouched current by the host (its lease runs from
/// there), as `carnet status` says.
fn as_of(site: &Carnet) -> serde_json::Value {
    site.json(&["sync", "status"])["authority_as_of"].clone()
}

/// The state of `rpps`'s grant on `ins` at `c`.
fn grant_state(c: &Carnet, ins: &str, rpps: &str) -> Option<serde_json::Value> {
    let grants = c.json(&["grant", "list", "--dossier", ins, "--as", "holder"]);
    grants
        .as_array()
        .and_then(|g| g.iter().find(|x| x["rpps"] == rpps))
        .map(|x| x["state"].clone())
}

/// The host's bundle `name`, with the revocation of `rpps`'s grant taken out.
fn withheld_revocation(host: &Carnet, name: &str, rpps: &str) -> carnet_store::authority::Bundle {
    use carnet_store::authority::{AuthorityRecord, Bundle, decode};
    let mut bundle = Bundle::from_bytes(&std::fs::read(host.export_authority(name)).expect("read"))
        .expect("bundle");
    let before = bundle.records.len();
    bundle.records.retain(|r| {
        !matches!(decode(r).map(|v| v.record),
            Ok(AuthorityRecord::Grant(g)) if g.rpps.as_str() == rpps
                && g.state == carnet_store::model::GrantState::Revoked)
    });
    assert_eq!(bundle.records.len() + 1, before, "one revocation taken out");
    bundle
}

#[test]
fn a_bundle_with_a_revocation_withheld_is_refused_whole() {
    let k = clinic();
    let host = &k.host;
    let site = Carnet::site(36, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b1").display().to_string(),
    ]);
    let renewed = as_of(&site);
    assert!(renewed.is_string(), "{renewed}");
    host.ok(&["grant", "revoke", "--dossier", &k.ins, "--rpps", PHARMACIST]);
    let bundle = withheld_revocation(host, "b2", PHARMACIST);
    let file = site.write("withheld", &bundle.to_bytes().expect("encode"));
    let o = site.fails(5, &["authority", "import", &file]);
    assert!(o.stderr.contains("incomplete or altered"), "{}", o.stderr);
    // Nothing changed: the lease runs from the last genuine bundle, the grant as it was.
    assert_eq!(as_of(&site), renewed);
    assert_eq!(
        grant_state(&site, &k.ins, PHARMACIST),
        Some("active".into())
    );
    // The genuine bundle brings the revocation and renews the lease.
    let j = site.json(&[
        "authority",
        "import",
        &host.path("b2").display().to_string(),
    ]);
    assert_eq!(j["lease_renewed"], true, "{j}");
    assert_ne!(as_of(&site), renewed);
    assert_eq!(
        grant_state(&site, &k.ins, PHARMACIST),
        Some("revoked".into())
    );
}

#[test]
fn a_bundle_not_signed_whole_relays_records_and_renews_no_lease() {
    let k = clinic();
    let host = &k.host;
    let site = Carnet::site(37, Some(&host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &host.export_authority("b1").display().to_string(),
    ]);
    let renewed = as_of(&site);
    host.ok(&["grant", "revoke", "--dossier", &k.ins, "--rpps", PHARMACIST]);
    // The host's vouch taken off as well: the records verify one by one, and vouch for nothing.
    let mut bundle = withheld_revocation(host, "b2", PHARMACIST);
    bundle.vouch = None;
    let file = site.write("unvouched", &bundle.to_bytes().expect("encode"));
    let o = site.ok(&["authority", "import", &file]);
    assert!(
        o.stdout
            .contains("not signed whole by the host: the lease is not renewed"),
        "{}",
        o.stdout
    );
    assert_eq!(
        site.json(&["authority", "import", &file])["lease_renewed"],
        false
    );
    assert_eq!(as_of(&site), renewed);
    // A site's own export is such a bundle.
    let o = site.ok(&[
        "authority",
        "export",
        "-o",
        &site.path("relay").display().to_string(),
    ]);
    assert!(o.stdout.contains("not signed whole"), "{}", o.stdout);
}

#[test]
fn a_bundle_dated_ahead_of_the_sites_clock_is_refused() {
    use std::sync::Arc;
    let k = clinic();
    let site = Carnet::site(38, Some(&k.host.host_key()));
    site.ok(&[
        "authority",
        "import",
        &k.host.export_authority("b1").display().to_string(),
    ]);
    let renewed = as_of(&site);
    // The host's clock a year ahead: its export is dated then (before, the site's lease would
    // not have run for a year).
    let ahead = {
        let year = 365 * 24 * 3_600_000;
        let clock: carnet_store::replica::Clock = Arc::new(move || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
                + year
        });
        let host = carnet_store::replica::Replica::open(
            &k.host.data,
            &carnet_store::replica::KeySource::File,
            clock,
        )
        .expect("open the host replica");
        host.export_authority()
            .expect("export")
            .to_bytes()
            .expect("encode")
    };
    let file = site.write("ahead", &ahead);
    let o = site.fails(2, &["authority", "import", &file]);
    assert!(
        o.stderr.contains("ahead of this replica's clock"),
        "{}",
        o.stderr
    );
    assert_eq!(as_of(&site), renewed, "the lease did not move");
}
