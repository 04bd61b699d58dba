//! A temporary folder, removed when dropped: what `tempfile::tempdir` gave the benches.
//!
//! Not `tempfile` itself: as a normal dependency of this crate it brought `rustix`, which turns
//! on `bitflags/std`, so `cargo build --workspace` resolved other features than a build of the
//! default members (`cli`, `syncd`) or `cargo run`, and every crate above `bitflags` (inotify,
//! notify, carnet-syncd, carnet-cli) was compiled twice, once for each (issue 19: the README's
//! demo command recompiled for two minutes after its build command).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A folder of our own under the system's temporary folder (mode 0700).
#[derive(Debug)]
pub struct TempDir(PathBuf);

/// Creates a new temporary folder.
pub fn tempdir() -> std::io::Result<TempDir> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..1000u32 {
        let path = base.join(format!(
            "carnet-bench-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(TempDir(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "no free temporary folder name in {}",
        base.display()
    )))
}

impl TempDir {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
