//! Progress bars: drawn on a terminal for people, never for a pipe, a log or `--json`.
//!
//! A terminal is a pseudo-terminal made by `script` (util-linux), which runs the command with
//! its standard streams on it and copies what it drew to its own standard output.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A body past the size from which `carnet` draws a bar (1 MiB), synthetic.
fn large_body() -> Vec<u8> {
    (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect()
}

/// `doc add` of the large body at `body` into `ins`, as `DOCTOR`.
fn add_large<'a>(ins: &'a str, body: &'a str) -> Vec<&'a str> {
    vec![
        "doc",
        "add",
        "--dossier",
        ins,
        "--as",
        DOCTOR,
        "--class",
        "31",
        "--type",
        "18748-4",
        "--title",
        "Imagerie",
        body,
    ]
}

/// A host holding one large document of the standard dossier; answers (host, INS, body file,
/// document id).
fn host_with_a_large_document() -> (Carnet, String, String, String) {
    let host = Carnet::host();
    let ins = host.doctor_dossier();
    let body = host.write("large.bin", &large_body());
    let id = host.add_doc(&ins, DOCTOR, "31", "18748-4", "Imagerie", &large_body());
    (host, ins, body, id)
}

#[test]
fn nothing_is_drawn_when_stderr_is_not_a_terminal() {
    let (host, ins, body, id) = host_with_a_large_document();
    let got = host.path("got.bin").display().to_string();
    let export = host.path("export.json").display().to_string();
    let bundle = host.path("records.carnet").display().to_string();
    let add = add_large(&ins, &body);
    let get = ["doc", "get", &id, "--as", DOCTOR, "-o", &got];
    let export_args = [
        "export",
        "--dossier",
        &ins,
        "--as",
        "patient",
        "-o",
        &export,
    ];
    // Captured stderr is a pipe: each long command says nothing there, in either output form.
    for args in [
        &add[..],
        &get,
        &export_args,
        &["authority", "export", "-o", &bundle],
    ] {
        for json in [false, true] {
            let mut full = args.to_vec();
            if json {
                full.push("--json");
            }
            let o = host.ok(&full);
            assert!(
                o.stderr.is_empty(),
                "carnet {full:?} wrote on stderr:\n{}",
                o.stderr
            );
        }
    }
    assert_eq!(std::fs::read(&got).expect("read"), large_body());
}

/// `script`, if this machine has it.
fn script() -> Option<&'static str> {
    let found = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then_some("script")
}

/// Runs `carnet --data DIR args…` on a pseudo-terminal, with the umask at 000 (a file it
/// created without its mode would be open to all); answers what the terminal showed.
fn on_a_terminal(script: &str, data: &Path, args: &[&str]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = [bin(), "--data", &data.display().to_string()]
        .iter()
        .chain(args)
        .map(|a| quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!("umask 000 && exec {line}");
    let out = Command::new(script)
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("CARNET_DATA")
        .env_remove("CARNET_PASSPHRASE")
        .env("TERM", "xterm")
        .output()
        .expect("script runs");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "carnet {args:?} on a terminal:\n{shown}"
    );
    assert!(!shown.contains("panicked"), "{shown}");
    shown
}

#[test]
fn a_terminal_shows_progress_for_people_and_none_for_json() {
    let Some(script) = script() else {
        eprintln!("no `script` (util-linux) on this machine: the terminal case is not run");
        return;
    };
    let (host, ins, body, id) = host_with_a_large_document();
    let add = |json: bool| {
        let mut args = add_large(&ins, &body);
        if json {
            args.push("--json");
        }
        on_a_terminal(script, &host.data, &args)
    };
    let people = add(false);
    assert!(
        people.contains("MiB") && (people.contains("reading") || people.contains("storing")),
        "no bar with bytes on a terminal:\n{people:?}"
    );
    assert!(
        !people.contains("large.bin"),
        "the bar shows no file name: {people:?}"
    );
    let json = add(true);
    assert!(
        !json.contains("MiB") && !json.contains("reading") && !json.contains("storing"),
        "a bar in --json mode:\n{json:?}"
    );
    assert!(json.contains("\"id\""), "{json:?}");
    // A large body written to a file: a bar, and the file 0600 from its creation on.
    let got = host.path("got.bin");
    let shown = on_a_terminal(
        script,
        &host.data,
        &[
            "doc",
            "get",
            &id,
            "--as",
            DOCTOR,
            "-o",
            &got.display().to_string(),
        ],
    );
    assert!(
        shown.contains("writing") && shown.contains("MiB"),
        "{shown:?}"
    );
    assert_eq!(std::fs::read(&got).expect("read"), large_body());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&got).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a body written with a bar is the owner's only");
}
