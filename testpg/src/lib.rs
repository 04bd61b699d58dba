//! A PostgreSQL server for Carnet's tests (the host's tables in PostgreSQL,
//! `carnet_store::kv::pg`): Debian's `postgresql` package (`initdb` and `postgres` from PATH
//! or `/usr/lib/postgresql/*/bin`), initialised in a folder of its own under the system's
//! temporary folder and listening on 127.0.0.1 only, one per test process; each test takes a
//! database of its own (`database`). A benchmark takes one of a second server that syncs its
//! commits to disk (`durable_database`).
//!
//! Invariants:
//! - The server ends with the process that started it: a shell beside it waits on a pipe from
//!   this process and sends the server SIGINT (fast shutdown) when the pipe closes, which the
//!   system does when this process ends, however it ends.
//! - Started as root, the server runs as the `postgres` user (initdb refuses root).
//! - Its folder goes with it: the same shell removes the server's folder once the server has
//!   stopped, and the process's folder once empty; folders a machine's crash left are removed
//!   by the next start.
//! - Waiting for the server waits on its own log line saying it accepts connections, within a
//!   bound; a missing server package is an error naming the package to install.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long the server may take to start.
const START_WAIT: Duration = Duration::from_secs(120);
const FOLDER_PREFIX: &str = "carnet-pg-test-";

/// The two servers a process may start.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// For tests: commits are not synced to disk (`fsync=off`); what a test checks does not
    /// depend on it, and it spares the machine's disk.
    Tests,
    /// For benchmarks: commits are synced to disk, as a deployment's are.
    Durable,
}

impl Kind {
    fn folder(self) -> &'static str {
        match self {
            Kind::Tests => "tests",
            Kind::Durable => "durable",
        }
    }
}

/// The running server of `kind`: its port, or why it could not start.
fn server(kind: Kind) -> &'static Result<u16, String> {
    static TESTS: OnceLock<Result<u16, String>> = OnceLock::new();
    static DURABLE: OnceLock<Result<u16, String>> = OnceLock::new();
    match kind {
        Kind::Tests => TESTS.get_or_init(|| start(kind)),
        Kind::Durable => DURABLE.get_or_init(|| start(kind)),
    }
}

/// A fresh, empty database of the test server: its address, for `PgStore::open`.
pub fn database() -> String {
    database_of(Kind::Tests)
}

/// A fresh, empty database of a server that syncs every commit to disk, as a deployment's
/// does: for benchmarks.
pub fn durable_database() -> String {
    database_of(Kind::Durable)
}

fn database_of(kind: Kind) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let port = match server(kind) {
        Ok(port) => *port,
        Err(e) => panic!("{e}"),
    };
    let name = format!("carnet_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let admin = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut psql = Command::new(binary("psql").unwrap_or_else(|e| panic!("{e}")));
    let status = psql
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", &admin, "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .stdout(Stdio::null())
        .status()
        .expect("run psql");
    assert!(status.success(), "CREATE DATABASE {name} failed");
    format!("postgres://postgres@127.0.0.1:{port}/{name}")
}

/// `name` from PATH or from the newest `/usr/lib/postgresql/*/bin`.
fn binary(name: &str) -> Result<PathBuf, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    versions
        .into_iter()
        .rev()
        .chain(from_path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found: the PostgreSQL tests need Debian's postgresql package \
                 (apt-get install postgresql; .ci/run installs it)"
            )
        })
}

/// The `postgres` user's uid and gid, when running as root.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    let uid = std::fs::metadata("/proc/self")
        .map_err(|e| e.to_string())?
        .uid();
    if uid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .map(Some)
        .ok_or_else(|| "running as root, and no postgres user to run the server as".into())
}

/// Removes the folders of test servers whose process has ended.
fn remove_stale_folders(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(FOLDER_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> Result<u16, String> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
}

fn start(kind: Kind) -> Result<u16, String> {
    let initdb = binary("initdb")?;
    let postgres = binary("postgres")?;
    let user = server_user()?;
    let tmp = std::env::temp_dir();
    remove_stale_folders(&tmp);
    let process = tmp.join(format!("{FOLDER_PREFIX}{}", std::process::id()));
    let folder = process.join(kind.folder());
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let data = folder.join("data");
    if let Some((uid, gid)) = user {
        for dir in [&process, &folder] {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
    }
    let as_server = |command: &mut Command| {
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
    };
    let mut init = Command::new(initdb);
    as_server(&mut init);
    let out = init
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port()?;
    // The shell starts the server, then waits on its standard input: this process holds the
    // other end (`WATCHDOGS`) until it ends; then it stops the server and removes its folder.
    let mut server = Command::new("sh");
    as_server(&mut server);
    let child = server
        .args([
            "-c",
            r#"exec 3<&0; "$0" "$@" </dev/null & pid=$!; read _ <&3; kill -INT $pid; wait $pid; rm -rf "$CARNET_PG_FOLDER"; rmdir "$CARNET_PG_PROCESS" 2>/dev/null; true"#,
        ])
        .arg(postgres)
        .arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&folder)
        .args([
            "-c",
            match kind {
                Kind::Tests => "fsync=off",
                Kind::Durable => "fsync=on",
            },
        ])
        .args(["-c", "max_connections=200"])
        .env("CARNET_PG_FOLDER", &folder)
        .env("CARNET_PG_PROCESS", &process)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.map_err(|e| format!("postgres: {e}"))?;
    // Every server's pipe is kept: dropping one would stop its server.
    static WATCHDOGS: Mutex<Vec<ChildStdin>> = Mutex::new(Vec::new());
    if let Some(stdin) = child.stdin.take() {
        WATCHDOGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stdin);
    }
    let stderr = child.stderr.take().ok_or("no server output")?;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-test-server".into())
        .spawn(move || {
            let mut told = false;
            let mut log = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("ready to accept connections") {
                    told = true;
                    let _ = ready_tx.send(Ok(()));
                }
                if !told {
                    log.push(line);
                }
            }
            if !told {
                let _ = ready_tx.send(Err(format!("postgres ended: {}", log.join("\n"))));
            }
            let _ = child.wait();
        })
        .map_err(|e| e.to_string())?;
    ready
        .recv_timeout(START_WAIT)
        .map_err(|_| "postgres did not start within 120 s".to_string())??;
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set for the copy of this test binary that `a_server_leaves_no_folder_behind` runs.
    const CHILD: &str = "CARNET_TESTPG_CHILD";

    /// Run by `a_server_leaves_no_folder_behind` in a process of its own: starts the test
    /// server, takes a database and ends.
    #[test]
    #[ignore = "a child process of a_server_leaves_no_folder_behind"]
    fn child_takes_a_database() {
        assert!(std::env::var_os(CHILD).is_some(), "run as a child only");
        let _ = database();
        let folder = std::env::temp_dir().join(format!("{FOLDER_PREFIX}{}", std::process::id()));
        if folder.join("tests").join("data").is_dir() {
            println!("server folder in place");
        }
    }

    #[test]
    fn a_server_leaves_no_folder_behind() {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "tests::child_takes_a_database",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the child");
        let folder = std::env::temp_dir().join(format!("{FOLDER_PREFIX}{}", child.id()));
        let out = child.wait_with_output().expect("the child ends");
        assert!(out.status.success(), "the child failed");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("server folder in place"), "{said}");
        // The server stops once the child has ended, then its shell removes the folder.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while folder.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} still there a minute after its process ended",
                folder.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
