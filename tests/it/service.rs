//! `carnet-syncd` as a service (issue 19 §1): its command line, systemd's notify protocol and
//! watchdog, SIGHUP reloading `carnet.toml`, JSON logs and the host's per-site events. Real
//! daemons on 127.0.0.1, every wait bounded.

use std::process::Command;

use crate::daemon::syncd_bin;

/// `--version` and `--help` answer on stdout with status 0 (they were "unknown argument", 2):
/// the version names the commit the binary was built from.
#[test]
fn syncd_answers_version_and_help() {
    let run = |args: &[&str]| {
        let out = Command::new(syncd_bin())
            .args(args)
            .env_remove("CARNET_DATA")
            .output()
            .expect("carnet-syncd runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for flag in ["--version", "-V"] {
        let (code, stdout, stderr) = run(&[flag]);
        assert_eq!(code, Some(0), "{flag}: {stderr}");
        let line = stdout.trim();
        let prefix = format!("carnet-syncd {} (commit ", env!("CARGO_PKG_VERSION"));
        let commit = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{flag}: '{line}'"));
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{flag}: commit '{commit}'"
        );
    }
    for flag in ["--help", "-h"] {
        let (code, stdout, stderr) = run(&[flag]);
        assert_eq!(code, Some(0), "{flag}: {stderr}");
        for expected in [
            "usage: carnet-syncd --data DIR",
            "--config FILE",
            "--version",
            "(commit ",
        ] {
            assert!(
                stdout.contains(expected),
                "{flag}: no '{expected}' in\n{stdout}"
            );
        }
    }
    // Mistakes stay usage errors (2), said on stderr.
    let (code, _, stderr) = run(&["--verbose"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown argument '--verbose'"), "{stderr}");
    let (code, _, stderr) = run(&["--data"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--data needs a value"), "{stderr}");
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no data folder"), "{stderr}");
}
