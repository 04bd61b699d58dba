//! Reading a dossier and its trace as a person (`dossier show`, `dossier list`, `audit show`
//! with `--as`): decided by the access table, traced, and whole only for the holder,
//! representatives and the médecin traitant (DOMAIN §6).

use serde_json::Value;

use crate::support::*;

fn actors(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["who"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// True when `trace` holds an `action` by `who`, allowed or not as `allowed` says.
fn traced(trace: &[Value], action: &str, who: &str, allowed: bool) -> bool {
    trace.iter().any(|e| {
        e["action"] == action
            && e["allowed"] == allowed
            && e["who"].as_str().is_some_and(|a| a.contains(who))
    })
}

fn grant_rpps(dossier: &Value) -> Vec<String> {
    dossier["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| g["rpps"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn the_trace_is_whole_for_the_holder_and_the_medecin_traitant_and_own_for_the_others() {
    let k = clinic();
    let c = &k.host;
    assert_eq!(c.body(&k.consult, SPECIALIST), CONSULT_BODY);
    assert_eq!(c.body(&k.prescription, PHARMACIST), PRESCRIPTION_BODY);
    for whole in [DOCTOR, "holder"] {
        let seen = actors(&c.audit_as(&k.ins, whole));
        for who in [PHARMACIST, SPECIALIST] {
            assert!(seen.iter().any(|a| a.contains(who)), "{whole}: {seen:?}");
        }
    }
    // The specialist, granted by consent: his own entries, this read among them.
    let own = c.audit_as(&k.ins, SPECIALIST);
    assert!(!own.is_empty());
    assert!(
        actors(&own).iter().all(|a| a.contains(SPECIALIST)),
        "{own:?}"
    );
    assert!(own.iter().any(|e| e["action"] == "read-trace"), "{own:?}");
    // Insurers and unknown actors are refused.
    for who in [INSURER_DOCTOR, STRANGER] {
        c.fails(3, &["audit", "show", "--dossier", &k.ins, "--as", who]);
    }
    // Every read is traced, allowed or denied; so is the operator's.
    let trace = c.audit(&k.ins);
    let read_trace = |who: &str, allowed: bool| traced(&trace, "read-trace", who, allowed);
    assert!(read_trace(DOCTOR, true) && read_trace(SPECIALIST, true));
    assert!(read_trace(INSURER_DOCTOR, false) && read_trace(STRANGER, false));
    assert!(
        c.audit(&k.ins)
            .iter()
            .any(|e| e["action"] == "operator-audit-show")
    );
}

#[test]
fn a_professional_sees_the_dossiers_he_may_access_and_only_his_own_grant() {
    let k = clinic();
    let c = &k.host;
    c.dossier(&ins_b(), "MARTIN", "Louis");
    let whole = c.json(&["dossier", "show", &k.ins, "--as", DOCTOR]);
    assert_eq!(grant_rpps(&whole).len(), 5, "{whole}");
    assert_eq!(
        grant_rpps(&c.json(&["dossier", "show", &k.ins, "--as", "holder"])).len(),
        5
    );
    let own = c.json(&["dossier", "show", &k.ins, "--as", PHARMACIST]);
    assert_eq!(own["identity"]["birth_name"], "DUPONT");
    assert_eq!(grant_rpps(&own), vec![PHARMACIST.to_string()], "{own}");
    c.fails(3, &["dossier", "show", &ins_b(), "--as", PHARMACIST]);
    c.fails(3, &["dossier", "show", &k.ins, "--as", INSURER_DOCTOR]);
    // The list: only what he may access; the operator sees both.
    let listed = |who: Option<&str>| -> Vec<String> {
        let mut args = vec!["dossier", "list"];
        if let Some(who) = who {
            args.extend(["--as", who]);
        }
        c.json(&args)
            .as_array()
            .expect("dossiers")
            .iter()
            .map(|d| d["ins"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(listed(Some(PHARMACIST)), vec![k.ins.clone()]);
    assert_eq!(listed(None).len(), 2);
    assert_eq!(listed(Some(INSURER_DOCTOR)), Vec::<String>::new());
    let trace = c.audit(&k.ins);
    assert!(
        trace
            .iter()
            .any(|e| e["action"] == "show-dossier" && e["allowed"] == false),
        "the refusals are traced"
    );
}

#[test]
fn at_a_site_every_reader_is_a_person() {
    let site = Carnet::site(7, None);
    let ins = ins_a();
    for args in [
        vec!["dossier", "show", &ins],
        vec!["dossier", "list"],
        vec!["audit", "show", "--dossier", &ins],
    ] {
        let o = site.fails(2, &args);
        assert!(o.stderr.contains("--as"), "{args:?}: {}", o.stderr);
    }
    assert_eq!(
        site.json(&["dossier", "list", "--as", "holder"]),
        serde_json::json!([])
    );
}

#[test]
fn a_grant_list_is_decided_and_traced_like_the_dossier_it_belongs_to() {
    let k = clinic();
    let c = &k.host;
    let listed = |who: &str| -> Vec<String> {
        c.json(&["grant", "list", "--dossier", &k.ins, "--as", who])
            .as_array()
            .expect("grants")
            .iter()
            .map(|g| g["rpps"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(listed("holder").len(), 5);
    assert_eq!(
        listed(DOCTOR).len(),
        5,
        "the médecin traitant sees them all"
    );
    assert_eq!(listed(PHARMACIST), vec![PHARMACIST.to_string()]);
    for who in [INSURER_DOCTOR, STRANGER] {
        c.fails(3, &["grant", "list", "--dossier", &k.ins, "--as", who]);
    }
    // The operator reads at the host, traced.
    assert_eq!(
        c.json(&["grant", "list", "--dossier", &k.ins])
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    let trace = c.audit(&k.ins);
    let decided = |who: &str, allowed: bool| traced(&trace, "show-dossier", who, allowed);
    assert!(decided(PHARMACIST, true) && decided(STRANGER, false));
    assert!(trace.iter().any(|e| e["action"] == "operator-grant-list"));
}

/// `audit show` pages: `--since` a time or a date, `--limit` entries, oldest first, and the
/// last line says where the next page starts; together the pages hold every entry.
#[test]
fn the_trace_is_read_page_by_page() {
    let k = clinic();
    let c = &k.host;
    let base = ["audit", "show", "--dossier", &k.ins, "--as", "holder"];
    let show = |extra: &[&str]| {
        let args = [&["--json"][..], &base[..], extra].concat();
        c.ok(&args).json().as_array().expect("entries").clone()
    };
    let at = |e: &Value| e["at"].as_str().expect("at").to_string();
    let whole = show(&[]);
    assert!(whole.len() >= 4, "{whole:?}");
    let mut times: Vec<String> = whole.iter().map(at).collect();
    times.sort();
    // A page of 2, oldest first, and the next from where the human output says.
    let first = show(&["--limit", "2"]);
    assert_eq!(first.iter().map(at).collect::<Vec<_>>(), times[..2]);
    let o = c.ok(&[&base[..], &["--limit", "2"][..]].concat());
    let hint = o.stdout.lines().last().expect("a last line");
    let since = hint
        .split("--since ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no next page named: {hint}"));
    let rest = show(&["--since", since]);
    assert!(rest.iter().map(at).all(|t| t.as_str() >= since));
    // Nothing lost between the pages (an entry of the boundary millisecond may come twice).
    let mut seen: Vec<String> = first.iter().chain(&rest).map(|e| e.to_string()).collect();
    seen.sort();
    seen.dedup();
    let mut all: Vec<String> = whole.iter().map(|e| e.to_string()).collect();
    all.sort();
    assert!(
        all.iter()
            .filter(|e| !e.contains("read-trace"))
            .all(|e| seen.contains(e)),
        "an entry is on no page"
    );
    // A date from long ago gives everything; one far ahead, nothing.
    assert!(show(&["--since", "2000-01-01"]).len() >= whole.len());
    assert!(show(&["--since", "2099-01-01"]).is_empty());
    for bad in [["--since", "soon"], ["--limit", "0"]] {
        c.fails(2, &[&base[..], &bad[..]].concat());
    }
}
