//! The demonstration scenario (README's first command): a host replica in a temporary folder,
//! a dossier, professionals, documents, a masked document, a denied access, a break-glass
//! read, the trace and the holder's export — each step the real `carnet` command, run
//! in-process and narrated.

use std::path::Path;

use clap::Parser;
use serde_json::json;

use crate::args::{Cli, DemoArgs};
use crate::commands::{Failure, Reply};

const DOCTOR: &str = "10000000001";
const PHARMACIST: &str = "10000000002";
const EMERGENCY_DOCTOR: &str = "10000000003";

/// A synthetic test INS (body 2 84 05 75 123 456, key computed).
fn demo_ins() -> Result<String, Failure> {
    Ok(carnet_store::ids::Ins::from_body("2840575123456")?
        .matricule()
        .to_string())
}

fn step(dir: &Path, say: &str, args: &[&str], expect_exit: i32) -> Result<String, Failure> {
    if say.is_empty() {
        println!();
    } else {
        println!("\n# {say}");
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect();
    println!("$ carnet {}", shown.join(" "));
    let mut full = vec![
        "carnet".to_string(),
        "--data".into(),
        dir.display().to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    let cli = Cli::try_parse_from(&full).map_err(|e| Failure::Usage(e.to_string()))?;
    let outcome = crate::commands::run(&cli);
    let (code, text) = match &outcome {
        Ok(Reply {
            raw_stdout: Some(raw),
            ..
        }) => (0, String::from_utf8_lossy(raw).into_owned()),
        Ok(r) => (0, r.human.clone()),
        Err(f) => (f.exit_code(), format!("error: {}", f.message())),
    };
    for line in text.lines() {
        println!("  {line}");
    }
    if code != expect_exit {
        return Err(Failure::Usage(format!(
            "demo step '{say}' ended with exit {code}, expected {expect_exit}"
        )));
    }
    if code != 0 {
        println!("  (exit {code}, as expected)");
    }
    Ok(text)
}

/// Runs the scenario.
pub fn run(args: &DemoArgs) -> Result<Reply, Failure> {
    let tmp = std::env::temp_dir().join(format!("carnet-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Failure::File(e.to_string()))?;
    let result = scenario(&tmp);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(Reply::new(
        if args.keep {
            format!("\ndemo complete; data kept in {}", tmp.display())
        } else {
            "\ndemo complete; temporary data removed".to_string()
        },
        json!({"ok": true}),
    ))
}

fn scenario(tmp: &Path) -> Result<(), Failure> {
    let dir = tmp.join("host");
    let ins = demo_ins()?;
    let ins = ins.as_str();
    let files = tmp.join("files");
    std::fs::create_dir_all(&files).map_err(|e| Failure::File(e.to_string()))?;
    let write = |name: &str, text: &str| -> Result<String, Failure> {
        let p = files.join(name);
        std::fs::write(&p, text).map_err(|e| Failure::File(e.to_string()))?;
        Ok(p.display().to_string())
    };
    let consult = write(
        "consultation.txt",
        "Consultation du 23/11: tension 13/8, RAS. (synthetic)",
    )?;
    let hiv = write(
        "serologie.txt",
        "Sérologie: résultat confidentiel. (synthetic)",
    )?;
    let prescription = write(
        "ordonnance.txt",
        "Amoxicilline 1 g, 3 fois par jour, 6 jours. (synthetic)",
    )?;
    println!("Carnet demo — a replica in {}", dir.display());
    println!("Everything below is synthetic data; each step is the real `carnet` command.");

    step(
        &dir,
        "Create the replica (the national host role, so it may create dossiers)",
        &["init", "--role", "host", "--name", "demo host"],
        0,
    )?;
    step(
        &dir,
        "Register three professionals",
        &[
            "pro",
            "add",
            "--rpps",
            DOCTOR,
            "--profession",
            "medecin",
            "--specialty",
            "medecine-generale",
            "--name",
            "Dr Martin",
        ],
        0,
    )?;
    step(
        &dir,
        "",
        &[
            "pro",
            "add",
            "--rpps",
            PHARMACIST,
            "--profession",
            "pharmacien",
            "--name",
            "Mme Durand",
        ],
        0,
    )?;
    step(
        &dir,
        "",
        &[
            "pro",
            "add",
            "--rpps",
            EMERGENCY_DOCTOR,
            "--profession",
            "medecin",
            "--specialty",
            "urgences",
            "--name",
            "Dr Leroy",
        ],
        0,
    )?;
    step(
        &dir,
        "Create a dossier for a (synthetic) patient",
        &[
            "dossier",
            "create",
            "--ins",
            ins,
            "--ins-kind",
            "demo",
            "--birth-name",
            "EXEMPLE",
            "--first-names",
            "Camille",
            "--birth-date",
            "1984-05-07",
            "--sex",
            "F",
            "--qualified",
        ],
        0,
    )?;
    step(
        &dir,
        "Dr Martin becomes médecin traitant; the pharmacist gets a care-team grant",
        &[
            "grant",
            "add",
            "--dossier",
            ins,
            "--rpps",
            DOCTOR,
            "--treating",
        ],
        0,
    )?;
    step(
        &dir,
        "",
        &["grant", "add", "--dossier", ins, "--rpps", PHARMACIST],
        0,
    )?;
    step(
        &dir,
        "Dr Martin files a consultation report and a prescription",
        &[
            "doc",
            "add",
            "--dossier",
            ins,
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            "11488-4",
            "--title",
            "CR de consultation",
            "--format",
            "text/plain",
            &consult,
        ],
        0,
    )?;
    step(
        &dir,
        "",
        &[
            "doc",
            "add",
            "--dossier",
            ins,
            "--as",
            DOCTOR,
            "--class",
            "42",
            "--type",
            "57833-6",
            "--title",
            "Ordonnance",
            "--format",
            "text/plain",
            &prescription,
        ],
        0,
    )?;
    let serology = step(
        &dir,
        "…and a sensitive lab result, which he masks from other professionals",
        &[
            "doc",
            "add",
            "--dossier",
            ins,
            "--as",
            DOCTOR,
            "--class",
            "10",
            "--type",
            "11502-2",
            "--title",
            "CR de biologie",
            "--format",
            "text/plain",
            &hiv,
        ],
        0,
    )?;
    let serology = serology.trim().to_string();
    step(&dir, "", &["doc", "mask", &serology, "--as", DOCTOR], 0)?;
    step(
        &dir,
        "The pharmacist lists the dossier: she sees the prescription only",
        &["doc", "list", "--dossier", ins, "--as", PHARMACIST],
        0,
    )?;
    step(
        &dir,
        "She tries to open the masked result: denied, and the denial is traced",
        &["doc", "get", &serology, "--as", PHARMACIST],
        3,
    )?;
    step(
        &dir,
        "An emergency doctor without a grant cannot read normally…",
        &["doc", "get", &serology, "--as", EMERGENCY_DOCTOR],
        3,
    )?;
    step(
        &dir,
        "…the patient allows masked documents in emergencies",
        &["emergency", "set", "--dossier", ins, "--masked", "allow"],
        0,
    )?;
    step(
        &dir,
        "…so break-glass, with a reason, opens it",
        &[
            "doc",
            "get",
            &serology,
            "--as",
            EMERGENCY_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "patient unconscious, suspected sepsis",
        ],
        0,
    )?;
    step(
        &dir,
        "The trace of the dossier: every decision, allowed or denied",
        &["audit", "show", "--dossier", ins],
        0,
    )?;
    step(
        &dir,
        "The hash chain of the trace verifies",
        &["audit", "verify"],
        0,
    )?;
    let export = tmp.join("export.json");
    step(
        &dir,
        "The patient takes a full copy (FHIR R4 Bundle)",
        &[
            "export",
            "--dossier",
            ins,
            "--as",
            "patient",
            "-o",
            &export.display().to_string(),
        ],
        0,
    )?;
    println!("\n# Nothing in the data folder is readable without the key:");
    let markers = ["EXEMPLE", "Camille", ins, "Sérologie", "CR de biologie"];
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Failure::File(e.to_string()))? {
        let path = entry.map_err(|e| Failure::File(e.to_string()))?.path();
        let bytes = std::fs::read(&path).map_err(|e| Failure::File(e.to_string()))?;
        for m in markers {
            if bytes.windows(m.len()).any(|w| w == m.as_bytes()) {
                found.push(format!("{} in {}", m, path.display()));
            }
        }
    }
    println!(
        "  searched every file for the name, first name, INS and titles: {}",
        if found.is_empty() {
            "none found".to_string()
        } else {
            found.join("; ")
        }
    );
    if !found.is_empty() {
        return Err(Failure::Usage("patient data found in clear".into()));
    }
    Ok(())
}
