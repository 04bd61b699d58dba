//! The demonstration (README's first command): a national host and three sites — a rural
//! clinic, a pharmacy and a mobile emergency unit — as real `carnet-syncd` daemons on 127.0.0.1,
//! in a temporary folder. Each step is the real `carnet` command (run in-process; while a
//! replica's daemon runs, it goes through the daemon's socket), narrated: the clinic writes while
//! cut off from the host, the link returns and it converges, the pharmacy receives the dossier it
//! has a grant for, the patient revokes the pharmacy and its copy is purged, a break-glass read
//! at the clinic reaches the host's emergency list; the mobile unit, out of reach, opens a
//! dossier for a patient it does not know and reads it by break-glass, and when it reconnects
//! the host merges it into the dossier it holds and notifies the patient's médecin traitant;
//! then, the host out of reach again, the unit writes its intervention report and hands the
//! dossier over to the clinic site to site (`peer_listen`, `[[peer]]`), where a doctor without a
//! grant is refused until the patient consents in person, and the trace shows the handover;
//! the host comes back and all three converge. The daemons are stopped and the folder removed at
//! the end, on success or failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use crate::args::{Cli, DemoArgs};
use crate::commands::{Failure, Reply};

const DOCTOR: &str = "10000000001";
const PHARMACIST: &str = "10000000002";
const EMERGENCY_DOCTOR: &str = "10000000003";
const SMUR_DOCTOR: &str = "10000000004";
const SMUR_NURSE: &str = "10000000005";

/// A synthetic test INS (body 2 84 05 75 123 456, key computed).
fn demo_ins() -> Result<String, Failure> {
    ins_of("2840575123456")
}

/// The INS of the 13-digit body `body`, its key computed.
fn ins_of(body: &str) -> Result<String, Failure> {
    Ok(carnet_store::ids::Ins::from_body(body)?
        .matricule()
        .to_string())
}

fn file_err(e: impl std::fmt::Display) -> Failure {
    Failure::File(e.to_string())
}

/// One replica of the demo: its name in the narration and its data folder.
struct Place<'a> {
    name: &'a str,
    dir: PathBuf,
}

/// Runs one `carnet` command on `place`, prints it and its output; fails the demo if its exit
/// code is not `expect_exit`.
fn step(place: &Place, say: &str, args: &[&str], expect_exit: i32) -> Result<String, Failure> {
    let outcome = run_quietly(place, args);
    show(place, say, args, outcome, expect_exit)
}

/// Prints a command that ran and its outcome; fails the demo on an unexpected exit code.
fn show(
    place: &Place,
    say: &str,
    args: &[&str],
    (code, text): (i32, String),
    expect_exit: i32,
) -> Result<String, Failure> {
    if !say.is_empty() {
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
    println!("[{}] $ carnet {}", place.name, shown.join(" "));
    for line in crate::terminal::printable(&text).lines() {
        println!("    {line}");
    }
    if code != expect_exit {
        return Err(Failure::Usage(format!(
            "demo step '{say}' at {} ended with exit {code}, expected {expect_exit}",
            place.name
        )));
    }
    if code != 0 {
        println!("    (exit {code}, as expected)");
    }
    Ok(text)
}

/// Runs one command on `place` without printing: (exit code, output or error text).
fn run_quietly(place: &Place, args: &[&str]) -> (i32, String) {
    let mut full = vec![
        "carnet".to_string(),
        "--data".into(),
        place.dir.display().to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    let cli = match Cli::try_parse_from(&full) {
        Ok(c) => c,
        Err(e) => return (2, e.to_string()),
    };
    match crate::commands::run(&cli) {
        Ok(Reply {
            raw_stdout: Some(raw),
            ..
        }) => (0, String::from_utf8_lossy(&raw).into_owned()),
        Ok(r) => (0, r.human),
        Err(f) => (f.exit_code(), format!("error: {}", f.message())),
    }
}

/// `sync now` on a site, retried for a while (a daemon just started needs a moment to bind);
/// the round that succeeds is the one shown.
fn sync_now(place: &Place, say: &str) -> Result<String, Failure> {
    step_retried(place, say, &["sync", "now"], |_| true)
}

/// Runs one command on `place` that must succeed, tried again for a while as long as `again`
/// holds of the error it ends with (a daemon just started needs a moment to bind); the try
/// that ends it is the one shown.
fn step_retried(
    place: &Place,
    say: &str,
    args: &[&str],
    again: impl Fn(&str) -> bool,
) -> Result<String, Failure> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = run_quietly(place, args);
        if code == 0 || !again(&text) || Instant::now() > deadline {
            return show(place, say, args, (code, text), 0);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The daemons started by the demo, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Default)]
struct Daemons(Vec<(String, Child)>);

impl Daemons {
    fn start(&mut self, place: &Place, logs: &Path) -> Result<(), Failure> {
        let bin = std::env::current_exe()
            .map_err(file_err)?
            .with_file_name("carnet-syncd");
        if !bin.exists() {
            return Err(Failure::Usage(format!(
                "{} is missing: build it first with `cargo build --release`",
                bin.display()
            )));
        }
        let log =
            std::fs::File::create(logs.join(format!("{}.log", place.name))).map_err(file_err)?;
        let child = Command::new(bin)
            .arg("--data")
            .arg(&place.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(file_err)?;
        println!("[{}] $ carnet-syncd --data {} &", place.name, place.name);
        self.0.push((place.name.to_string(), child));
        // The socket answers once the daemon owns the store.
        let socket = carnet_syncd::api::socket_path(&place.dir);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err(Failure::Usage(format!(
                    "the {} daemon did not start (see its log)",
                    place.name
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop(&mut self, name: &str) {
        if let Some(i) = self.0.iter().position(|(n, _)| n == name) {
            let (_, child) = self.0.remove(i);
            println!("[{name}] (carnet-syncd stopped with SIGTERM)");
            terminate(child);
        }
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child) in self.0.drain(..) {
            terminate(child);
        }
    }
}

/// A free port on 127.0.0.1 for the host.
fn free_port() -> Result<u16, Failure> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(file_err)
}

/// Runs the scenario.
pub fn run(args: &DemoArgs) -> Result<Reply, Failure> {
    let tmp = std::env::temp_dir().join(format!("carnet-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // Everything the demo writes is beneath a folder of the owner's only.
    carnet_store::files::private_dir(&tmp).map_err(file_err)?;
    let result = {
        let mut daemons = Daemons::default();
        scenario(&tmp, &mut daemons)
        // Dropped here: every daemon is stopped before the folder goes.
    };
    if !args.keep {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(Reply::new(
        if args.keep {
            format!(
                "\ndemo complete; daemons stopped; data kept in {}",
                tmp.display()
            )
        } else {
            "\ndemo complete; daemons stopped and temporary data removed".to_string()
        },
        json!({"ok": true}),
    ))
}

fn scenario(tmp: &Path, daemons: &mut Daemons) -> Result<(), Failure> {
    let host = Place {
        name: "host",
        dir: tmp.join("host"),
    };
    let clinic = Place {
        name: "clinic",
        dir: tmp.join("clinic"),
    };
    let pharmacy = Place {
        name: "pharmacy",
        dir: tmp.join("pharmacy"),
    };
    let unit = Place {
        name: "mobile unit",
        dir: tmp.join("smur"),
    };
    let walker = ins_of("1670315123456")?;
    let walker = walker.as_str();
    let ins = demo_ins()?;
    let ins = ins.as_str();
    let files = tmp.join("files");
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&files).map_err(file_err)?;
    std::fs::create_dir_all(&logs).map_err(file_err)?;
    let write = |name: &str, text: &str| -> Result<String, Failure> {
        let p = files.join(name);
        std::fs::write(&p, text).map_err(file_err)?;
        Ok(p.display().to_string())
    };
    let consult = write(
        "consultation.txt",
        "Consultation du 23/11: tension 13/8, RAS. (synthetic)",
    )?;
    let serology = write(
        "serologie.txt",
        "Sérologie: résultat confidentiel. (synthetic)",
    )?;
    let prescription = write(
        "ordonnance.txt",
        "Amoxicilline 1 g, 3 fois par jour, 6 jours. (synthetic)",
    )?;
    let vitals = write(
        "constantes.txt",
        "Constantes sur place: TA 9/6, FC 112, SpO2 91 %. (synthetic)",
    )?;
    let intervention = write(
        "intervention.txt",
        "Chute en randonnée, traumatisme crânien, transporté à Murat. (synthetic)",
    )?;
    let address = format!("127.0.0.1:{}", free_port()?);
    println!(
        "Carnet demo — a national host and three sites on this machine, in {}",
        tmp.display()
    );
    println!("Everything below is synthetic data; each step is the real `carnet` command.");

    println!("\n## Setting up: the host, its PKI, three enrolled sites");
    step(
        &host,
        "The national host: it creates dossiers, signs its decisions, serves sync",
        &[
            "init",
            "--role",
            "host",
            "--name",
            "hôte national",
            "--listen",
            &address,
        ],
        0,
    )?;
    // The CA key goes to its own folder, as on a national host (kept offline there): every
    // certificate the demo issues passes `--ca-dir`.
    let ca_dir = files.join("national-ca").display().to_string();
    step(&host, "", &["pki", "init", "--ca-dir", &ca_dir], 0)?;
    for (i, (rpps, profession)) in [
        (DOCTOR, "medecin"),
        (EMERGENCY_DOCTOR, "medecin"),
        (PHARMACIST, "pharmacien"),
        (SMUR_DOCTOR, "medecin"),
        (SMUR_NURSE, "infirmier"),
    ]
    .into_iter()
    .enumerate()
    {
        step(
            &host,
            if i == 0 {
                "The host knows the professionals (the national RPPS directory)"
            } else {
                ""
            },
            &["pro", "add", "--rpps", rpps, "--profession", profession],
            0,
        )?;
    }
    // Each site's bundle and its id (`site-N` in its certificate), which its peers list.
    let enrol = |name: &str,
                 finess: &str,
                 out: &str,
                 pros: &[&str]|
     -> Result<(String, u32), Failure> {
        let bundle = files.join(out).display().to_string();
        let mut args = vec![
            "pki",
            "enrol",
            "--name",
            name,
            "--finess",
            finess,
            "--host-address",
            &address,
            "-o",
            &bundle,
            "--ca-dir",
            &ca_dir,
        ];
        for p in pros {
            args.extend(["--pro", p]);
        }
        let said = step(
            &host,
            if pros.len() > 1 {
                "Each site is enrolled with the professionals who practise there: only the host binds them"
            } else {
                ""
            },
            &args,
            0,
        )?;
        let site = said
            .strip_prefix("enrolled site ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| Failure::Usage(format!("no site id in '{said}'")))?;
        Ok((bundle, site))
    };
    let (clinic_bundle, clinic_site) = enrol(
        "Maison de santé de Murat",
        "150000001",
        "clinic.bundle",
        &[DOCTOR, EMERGENCY_DOCTOR],
    )?;
    let (pharmacy_bundle, _) = enrol(
        "Pharmacie du Marché",
        "150000002",
        "pharmacy.bundle",
        &[PHARMACIST],
    )?;
    let (unit_bundle, unit_site) = enrol(
        "SMUR du Cantal",
        "150000003",
        "smur.bundle",
        &[SMUR_DOCTOR, SMUR_NURSE],
    )?;
    step(
        &clinic,
        "A rural clinic, a pharmacy and a mobile emergency unit are created from their enrolment bundles",
        &["init", "--role", "site", "--enrol", &clinic_bundle],
        0,
    )?;
    step(
        &pharmacy,
        "",
        &["init", "--role", "site", "--enrol", &pharmacy_bundle],
        0,
    )?;
    step(
        &unit,
        "",
        &["init", "--role", "site", "--enrol", &unit_bundle],
        0,
    )?;
    step(
        &clinic,
        "Each site registers its professionals",
        &[
            "pro",
            "add",
            "--rpps",
            DOCTOR,
            "--profession",
            "medecin",
            "--name",
            "Dr Martin",
        ],
        0,
    )?;
    step(
        &clinic,
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
        &pharmacy,
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
        &host,
        "The host holds the patient's dossier and her grants: Dr Martin is her médecin traitant, the pharmacist is in her care team",
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
        &host,
        "",
        &[
            "grant",
            "add",
            "--dossier",
            ins,
            "--rpps",
            DOCTOR,
            "--medecin-traitant",
        ],
        0,
    )?;
    step(
        &host,
        "",
        &["grant", "add", "--dossier", ins, "--rpps", PHARMACIST],
        0,
    )?;
    step(
        &host,
        "The host also holds the dossier of a hiker, Dr Martin his médecin traitant; no site holds it",
        &[
            "dossier",
            "create",
            "--ins",
            walker,
            "--ins-kind",
            "demo",
            "--birth-name",
            "RANDONNEUR",
            "--first-names",
            "Paul",
            "--birth-date",
            "1967-03-15",
            "--sex",
            "M",
            "--qualified",
        ],
        0,
    )?;
    step(
        &host,
        "",
        &[
            "grant",
            "add",
            "--dossier",
            walker,
            "--rpps",
            DOCTOR,
            "--medecin-traitant",
        ],
        0,
    )?;

    println!("\n## The daemons start; from now on `carnet` goes through each one's local socket");
    daemons.start(&host, &logs)?;
    daemons.start(&clinic, &logs)?;
    daemons.start(&pharmacy, &logs)?;
    sync_now(
        &clinic,
        "The clinic syncs: its professionals reach the host, the dossier comes into its scope",
    )?;
    sync_now(&pharmacy, "So does the pharmacy")?;

    println!("\n## The link to the host goes down");
    daemons.stop("host");
    let consult_id = step(
        &clinic,
        "Cut off, Dr Martin goes on working: a consultation report, a prescription…",
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
    let consult_id = consult_id.trim().to_string();
    let prescription_id = step(
        &clinic,
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
    let prescription_id = prescription_id.trim().to_string();
    let serology_id = step(
        &clinic,
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
            &serology,
        ],
        0,
    )?;
    let serology_id = serology_id.trim().to_string();
    step(
        &clinic,
        "",
        &["doc", "mask", &serology_id, "--as", DOCTOR],
        0,
    )?;
    step(
        &clinic,
        "Everything waits in the clinic's outbox, nothing is lost",
        &["sync", "status"],
        0,
    )?;

    println!("\n## The link returns");
    daemons.start(&host, &logs)?;
    sync_now(&clinic, "The clinic pushes what it wrote offline")?;
    step(
        &host,
        "The host has the documents",
        &["dossier", "show", ins],
        0,
    )?;
    sync_now(
        &pharmacy,
        "The pharmacy pulls the dossier it has a grant for",
    )?;
    step(
        &pharmacy,
        "The pharmacist sees the prescription (not the consultation: not in her matrix; not the masked result)",
        &["doc", "list", "--dossier", ins, "--as", PHARMACIST],
        0,
    )?;
    step(
        &pharmacy,
        "…and reads it offline, from her own replica",
        &["doc", "get", &prescription_id, "--as", PHARMACIST],
        0,
    )?;

    println!("\n## The patient revokes the pharmacy");
    step(
        &host,
        "At the host",
        &["grant", "revoke", "--dossier", ins, "--rpps", PHARMACIST],
        0,
    )?;
    sync_now(
        &pharmacy,
        "The host tells the connected pharmacy at once: at its next round (its daemon's, or this one) it purges its copy and returns a receipt",
    )?;
    step(
        &pharmacy,
        "The prescription is gone from the pharmacy",
        &["doc", "get", &prescription_id, "--as", PHARMACIST],
        4,
    )?;

    println!("\n## An emergency at the clinic");
    step(
        &clinic,
        "Dr Leroy, on call, has no grant: a normal read is refused (and traced)",
        &["doc", "get", &consult_id, "--as", EMERGENCY_DOCTOR],
        3,
    )?;
    step(
        &clinic,
        "Break-glass, with a reason, opens it",
        &[
            "doc",
            "get",
            &consult_id,
            "--as",
            EMERGENCY_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "patient unconscious, suspected sepsis",
        ],
        0,
    )?;
    sync_now(
        &clinic,
        "The clinic syncs: its trace entries reach the host first",
    )?;
    step(
        &host,
        "The host's emergency list, for the patient and her médecin traitant to be told",
        &["audit", "emergencies"],
        0,
    )?;
    step(
        &host,
        "Every trace chain verifies at the host",
        &["audit", "verify"],
        0,
    )?;

    println!("\n## The mobile unit, in a valley out of reach, picks up a patient it does not know");
    for (rpps, name) in [(SMUR_DOCTOR, "Dr Petit"), (SMUR_NURSE, "M. Roux")] {
        let profession = if rpps == SMUR_DOCTOR {
            "medecin"
        } else {
            "infirmier"
        };
        step(
            &unit,
            if rpps == SMUR_DOCTOR {
                "The unit registers its crew (no daemon runs: `carnet` opens its store)"
            } else {
                ""
            },
            &[
                "pro",
                "add",
                "--rpps",
                rpps,
                "--profession",
                profession,
                "--name",
                name,
            ],
            0,
        )?;
    }
    step(
        &unit,
        "Dr Petit opens a dossier from the ID card in the patient's wallet: provisional until checked",
        &[
            "dossier",
            "create",
            "--ins",
            walker,
            "--ins-kind",
            "demo",
            "--birth-name",
            "RANDONNEUR",
            "--first-names",
            "Paul",
            "--birth-date",
            "1967-03-15",
            "--sex",
            "M",
            "--as",
            SMUR_DOCTOR,
        ],
        0,
    )?;
    let vitals_id = step(
        &unit,
        "The nurse records the vitals",
        &[
            "doc",
            "add",
            "--dossier",
            walker,
            "--as",
            SMUR_NURSE,
            "--class",
            "45",
            "--type",
            "15507-7",
            "--title",
            "Constantes sur place",
            &vitals,
        ],
        0,
    )?;
    let vitals_id = vitals_id.trim().to_string();
    step(
        &unit,
        "The patient cannot consent: Dr Petit reads by break-glass, decided offline from the unit's cache",
        &[
            "doc",
            "get",
            &vitals_id,
            "--as",
            SMUR_DOCTOR,
            "--mode",
            "break-glass",
            "--reason",
            "patient inconscient après une chute",
        ],
        0,
    )?;
    step(
        &unit,
        "Nothing of a provisional identity leaves the unit",
        &["sync", "status"],
        0,
    )?;
    step(
        &unit,
        "Dr Petit checks the identity (ID document, INSi)",
        &["dossier", "qualify", walker, "--as", SMUR_DOCTOR],
        0,
    )?;
    daemons.start(&unit, &logs)?;
    sync_now(
        &unit,
        "Back in reach, the unit syncs: the host merges its dossier into the one it holds",
    )?;
    step(
        &host,
        "One dossier at the host, with the unit's documents",
        &["dossier", "show", walker],
        0,
    )?;
    step(
        &host,
        "Its trace: the unit's opening, qualification and break-glass, and the host's merge",
        &["audit", "show", "--dossier", walker],
        0,
    )?;
    step(
        &host,
        "The break-glass decided offline is on the host's emergency list",
        &["audit", "emergencies"],
        0,
    )?;
    let told = step(
        &host,
        "The host notifies the hiker and Dr Martin, his médecin traitant, of the break-glass",
        &["notifications", "list", "--dossier", walker],
        0,
    )?;
    let to_martin = format!("médecin traitant {DOCTOR}");
    if !told
        .lines()
        .any(|l| l.contains("bris_de_glace") && l.contains(&to_martin))
    {
        return Err(Failure::Usage(
            "the break-glass of the mobile unit was not notified to the médecin traitant".into(),
        ));
    }
    handover_scene(
        &Valley {
            host: &host,
            clinic: &clinic,
            unit: &unit,
            clinic_site,
            unit_site,
            logs: &logs,
        },
        daemons,
        walker,
        &intervention,
    )?;

    println!("\n# Nothing in any data folder is readable without its key:");
    let markers = [
        "EXEMPLE",
        "Camille",
        "RANDONNEUR",
        "randonnée",
        walker,
        ins,
        "Sérologie",
        "CR de biologie",
        "Amoxicilline",
    ];
    let mut found = Vec::new();
    for place in [&host, &clinic, &pharmacy, &unit] {
        for path in regular_files(&place.dir)? {
            let bytes = std::fs::read(&path).map_err(file_err)?;
            for m in markers {
                if bytes.windows(m.len()).any(|w| w == m.as_bytes()) {
                    found.push(format!("{} in {}", m, path.display()));
                }
            }
        }
    }
    println!(
        "    searched every file of the four replicas for the names, first names, INS, titles and texts: {}",
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

/// The places of the handover scene: the host, the clinic and the mobile unit, with the ids
/// the two sites know each other by.
struct Valley<'a> {
    host: &'a Place<'a>,
    clinic: &'a Place<'a>,
    unit: &'a Place<'a>,
    clinic_site: u32,
    unit_site: u32,
    logs: &'a Path,
}

/// Prepends `settings` to `place`'s carnet.toml (top-level keys go before any table), appends
/// `tables`, and shows both.
fn configure(place: &Place, settings: &str, tables: &str) -> Result<(), Failure> {
    let path = place.dir.join("carnet.toml");
    let text = std::fs::read_to_string(&path).map_err(file_err)?;
    std::fs::write(&path, format!("{settings}\n{text}\n{tables}")).map_err(file_err)?;
    for line in settings.lines().chain(tables.lines()) {
        println!("[{}] carnet.toml: {line}", place.name);
    }
    Ok(())
}

/// The mobile unit hands the hiker's dossier over to the clinic while neither reaches the
/// host; the clinic decides access again; the host comes back and all three converge.
fn handover_scene(
    v: &Valley,
    daemons: &mut Daemons,
    walker: &str,
    intervention: &str,
) -> Result<(), Failure> {
    println!(
        "\n## The host is out of reach again; the unit brings the hiker to the clinic at Murat"
    );
    daemons.stop("host");
    let listen = format!("127.0.0.1:{}", free_port()?);
    println!(
        "\n# The clinic accepts handovers from the unit, the unit knows where the clinic listens"
    );
    configure(
        v.clinic,
        &format!("peer_listen = \"{listen}\""),
        &format!(
            // The unit listens nowhere: the clinic only takes handovers from it.
            "[[peer]]\nname = \"smur\"\naddress = \"127.0.0.1:{}\"\nsite = {}",
            free_port()?,
            v.unit_site
        ),
    )?;
    configure(
        v.unit,
        "",
        &format!(
            "[[peer]]\nname = \"clinique\"\naddress = \"{listen}\"\nsite = {}",
            v.clinic_site
        ),
    )?;
    daemons.stop("clinic");
    daemons.start(v.clinic, v.logs)?;
    let report = step(
        v.unit,
        "On the way, Dr Petit writes the intervention report",
        &[
            "doc",
            "add",
            "--dossier",
            walker,
            "--as",
            SMUR_DOCTOR,
            "--class",
            "10",
            "--type",
            "15507-7",
            "--title",
            "Intervention SMUR",
            intervention,
        ],
        0,
    )?;
    let report = report.trim().to_string();
    step_retried(
        v.unit,
        "…and hands the dossier over to the clinic, site to site",
        &[
            "handover",
            "--to",
            "clinique",
            "--dossier",
            walker,
            "--as",
            SMUR_DOCTOR,
            "--reason",
            "patient transporté à la maison de santé de Murat",
        ],
        |e| e.contains("could not be reached"),
    )?;
    step(
        v.clinic,
        "A handover brings data, not rights: Dr Leroy, who has no grant, is refused",
        &["doc", "get", &report, "--as", EMERGENCY_DOCTOR],
        3,
    )?;
    step(
        v.clinic,
        "The hiker, awake, consents in person: the clinic records a grant, pending until the host confirms it",
        &[
            "grant",
            "add",
            "--dossier",
            walker,
            "--rpps",
            EMERGENCY_DOCTOR,
        ],
        0,
    )?;
    step(
        v.clinic,
        "Dr Leroy reads the report",
        &["doc", "get", &report, "--as", EMERGENCY_DOCTOR],
        0,
    )?;
    step(
        v.clinic,
        "The clinic's trace: the handover, by whom, from which site, why",
        &["audit", "show", "--dossier", walker, "--as", "holder"],
        0,
    )?;

    println!("\n## The host is back in reach");
    daemons.start(v.host, v.logs)?;
    sync_now(v.unit, "The unit syncs")?;
    sync_now(v.clinic, "So does the clinic")?;
    let listed = step(
        v.host,
        "The host holds the unit's report once, for Dr Martin, his médecin traitant",
        &["doc", "list", "--dossier", walker, "--as", DOCTOR],
        0,
    )?;
    if listed.matches(report.as_str()).count() != 1 {
        return Err(Failure::Usage(
            "the host does not hold the unit's report exactly once".into(),
        ));
    }
    Ok(())
}

/// Every regular file under `dir` (the daemon's socket and folders skipped).
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(file_err)? {
            let entry = entry.map_err(file_err)?;
            let kind = entry.file_type().map_err(file_err)?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}
