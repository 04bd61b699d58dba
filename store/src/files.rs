//! Private files: every file holding patient data or keys is written with mode 0600, in a
//! folder of mode 0700 (the replica's owner only), whatever the process umask.
//!
//! Invariant: a file Carnet writes with patient data or keys goes through `write_private` or
//! `open_private`; a folder it creates for them through `private_dir`. At open, a data folder
//! that others can read is tightened and the fix reported (`tighten_folder`). The files of a
//! data folder are its own: a symbolic link or anything but a regular file in their place is
//! refused before it is opened (`own_files`), and a small file is read only up to its bound
//! (`read_bounded`), so a key file linked to `/dev/zero` neither follows the link nor fills
//! memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a private folder.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) with mode 0700, and sets an existing one to 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Opens `path` for reading and writing with mode 0600 (created when `create`); an existing
/// regular file that others could read is set to 0600 first.
pub fn open_private(path: &Path, create: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    restrict(&f)?;
    Ok(f)
}

/// Sets an open regular file to mode 0600 if it allows more (a device such as `/dev/stdout`
/// is left alone).
fn restrict(f: &File) -> io::Result<()> {
    let meta = f.metadata()?;
    if meta.is_file() && meta.permissions().mode() & 0o777 != FILE_MODE {
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600: a new file is created so, an existing one is set
/// to 0600 before anything is written into it.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    restrict(&f)?;
    if f.metadata()?.is_file() {
        f.set_len(0)?;
    }
    f.write_all(bytes)?;
    f.flush()
}

/// Checks that each of `names` in `dir` that exists is a regular file, not a symbolic link (nor
/// a device, a pipe or a folder); names the first that is not.
pub fn own_files(dir: &Path, names: &[&str]) -> io::Result<()> {
    for name in names {
        let path = dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(meta) => {
                let what = if meta.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "not a regular file"
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {what}: Carnet opens only its own regular files in a data folder (put the real file back, from a backup if need be)",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `path`, a regular file of at most `max` bytes, without following a symbolic link.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a regular file of at most {max} bytes",
                path.display()
            ),
        ));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    io::Read::read_to_end(&mut io::Read::take(f, max + 1), &mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} grew past {max} bytes while read", path.display()),
        ));
    }
    Ok(out)
}

/// Tightens a data folder that others may read: the folder itself to 0700, its regular files
/// to 0600 and its direct subfolders (the body segments, the inbox) to 0700, their regular
/// files to 0600. Returns one sentence per fix (or per fix that failed), for the caller to
/// report.
pub fn tighten_folder(dir: &Path) -> Vec<String> {
    let mut report = Vec::new();
    let mut fix = |path: &Path, mode: u32, what: &str| {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        let old = meta.permissions().mode() & 0o777;
        if old & 0o077 == 0 {
            return;
        }
        match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            Ok(()) => report.push(format!(
                "{what} {} was readable by others (mode {old:04o}): set to {mode:04o}",
                path.display()
            )),
            Err(e) => report.push(format!(
                "{what} {} is readable by others (mode {old:04o}) and could not be set to {mode:04o}: {e}",
                path.display()
            )),
        }
    };
    fix(dir, DIR_MODE, "the data folder");
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_file() {
                fix(&entry.path(), FILE_MODE, "the file");
            } else if kind.is_dir() {
                fix(&entry.path(), DIR_MODE, "the folder");
                for inner in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                    if inner.file_type().is_ok_and(|t| t.is_file()) {
                        fix(&inner.path(), FILE_MODE, "the file");
                    }
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_folders_whatever_was_there() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/b");
        private_dir(&dir).expect("dir");
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("out");
        fs::write(&f, b"old, longer content").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&f, b"new").expect("write");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read(&f).expect("read"), b"new");
        let g = dir.join("db");
        drop(open_private(&g, true).expect("create"));
        assert_eq!(mode(&g), 0o600);
    }

    #[test]
    fn a_loose_folder_is_tightened_and_reported() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        fs::write(dir.join("carnet.redb"), b"x").expect("write");
        fs::write(dir.join("private"), b"x").expect("write");
        fs::create_dir(dir.join("inbox")).expect("mkdir");
        fs::create_dir(dir.join("segments")).expect("mkdir");
        fs::write(dir.join("segments/00000001.seg"), b"x").expect("write");
        fs::set_permissions(
            dir.join("segments/00000001.seg"),
            fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(dir.join("carnet.redb"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        fs::set_permissions(dir.join("private"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::set_permissions(dir.join("inbox"), fs::Permissions::from_mode(0o755)).expect("chmod");
        let report = tighten_folder(dir);
        assert_eq!(report.len(), 5, "{report:?}");
        assert_eq!(mode(dir), 0o700);
        assert_eq!(mode(&dir.join("carnet.redb")), 0o600);
        assert_eq!(mode(&dir.join("segments/00000001.seg")), 0o600);
        assert_eq!(mode(&dir.join("inbox")), 0o700);
        assert!(tighten_folder(dir).is_empty());
    }

    #[test]
    fn bounded_reads_refuse_links_and_oversized_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let small = dir.path().join("small");
        fs::write(&small, b"0123456789").expect("write");
        assert_eq!(read_bounded(&small, 10).expect("read"), b"0123456789");
        assert!(read_bounded(&small, 9).is_err(), "one byte too many");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&small, &link).expect("link");
        assert!(read_bounded(&link, 10).is_err(), "a link is not followed");
        assert!(own_files(dir.path(), &["small", "absent"]).is_ok());
        let err = own_files(dir.path(), &["small", "link"]).expect_err("link");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).expect("link");
        assert!(read_bounded(&dir.path().join("zero"), 1 << 20).is_err());
    }
}
