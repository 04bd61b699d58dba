//! Records the git commit the daemon is built from, for `carnet-syncd --version`:
//! `CARNET_GIT_COMMIT` if the environment sets it (a packager building from a tarball), else
//! `git rev-parse --short HEAD`, else "unknown" (no git, or not a checkout).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CARNET_GIT_COMMIT");
    let commit = std::env::var("CARNET_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CARNET_GIT_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout), not for every file of the tree: the
    // HEAD file, the branch it names, and the packed refs (a worktree keeps its HEAD apart).
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watched.push(PathBuf::from(dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        watched.push(common.join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(branch));
        }
    }
    // (A path that does not exist would make cargo run this script at every build.)
    for path in watched.into_iter().filter(|p| p.exists()) {
        // Paths git prints relative are relative to this crate's folder, as cargo reads them.
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // Without git, this script runs again only if it changes.
    println!("cargo:rerun-if-changed=build.rs");
}
