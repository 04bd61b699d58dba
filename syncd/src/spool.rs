//! The notification spool (host, `notification_spool` in `carnet.toml`): the host daemon
//! writes each of the store's notifications as one JSON file in a folder, for a messaging
//! gateway to pick up (read, send, remove).
//!
//! Invariants: a file is written whole or not at all (a temporary name in the same folder,
//! then a rename), mode 0600, named by the notification's id (`notification-ID.json`, ids zero
//! padded so names sort in id order); the folder is created 0700 when missing. What was
//! spooled is remembered in the store (the highest id, `Replica::mark_notifications_spooled`),
//! never by looking at the folder, so a file the gateway removed is not written again; a
//! notification is marked only once its file is in place (a crash between the two writes it
//! again, whole, under the same name). A spool that cannot be written is the caller's to log;
//! what failed is tried again at the next pass, and nothing else waits for it.

use std::path::{Path, PathBuf};

use carnet_store::replica::{HostOversight, Notification};
use serde_json::Value;

use crate::error::{Error, Result};

/// A notification as the spool, the local API and `carnet notifications list --json` show it
/// (`api::wire::Notification`): ids, the dossier's INS, the recipients, and the text for the
/// holder or representatives.
pub fn notification_json(n: &Notification) -> Value {
    crate::api::wire::json(&crate::api::wire::Notification::from(n))
}

/// The file of notification `id` in the spool.
pub fn file_name(id: u64) -> String {
    format!("notification-{id:012}.json")
}

/// One pass: writes every notification not spooled yet into `dir`, in id order, and marks
/// them spooled; stops at the first that cannot be written (the next pass starts there).
/// Answers how many were written. Of several daemons of one host, only the one holding the
/// spool's turn is given notifications to write (`notifications_to_spool`).
pub fn spool_pass(replica: HostOversight<'_>, dir: &Path) -> Result<usize> {
    let pending = replica.notifications_to_spool()?;
    if pending.is_empty() {
        return Ok(0);
    }
    if !dir.exists() {
        carnet_store::files::private_dir(dir).map_err(|e| unwritable(dir, &e))?;
    }
    let mut written = None;
    let mut failure = None;
    for n in &pending {
        match write_one(dir, n) {
            Ok(()) => written = Some(n.id),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(id) = written {
        // The renames are durable before the mark moves past them.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| unwritable(dir, &e))?;
        replica.mark_notifications_spooled(id)?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(pending.len()),
    }
}

fn write_one(dir: &Path, n: &Notification) -> Result<()> {
    let name = file_name(n.id);
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(&notification_json(n))
        .map_err(|e| Error::Invalid(format!("notification {}: {e}", n.id)))?;
    let write = || -> std::io::Result<()> {
        carnet_store::files::write_private(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        unwritable(dir, &e)
    })
}

fn unwritable(dir: &Path, e: &std::io::Error) -> Error {
    Error::Invalid(format!(
        "the notification spool {} cannot be written ({e}): tried again at the next pass",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_names_sort_in_id_order() {
        assert!(file_name(9) < file_name(10));
        assert_eq!(file_name(1), "notification-000000000001.json");
    }

    #[test]
    fn an_unwritable_spool_is_an_error_and_nothing_is_marked() {
        let (_dir, host) = crate::testkit::host_with_notification();
        let tmp = tempfile::tempdir().expect("dir");
        // A file where the folder should be: nothing can be written there (root included).
        let spool = tmp.path().join("spool");
        std::fs::write(&spool, b"in the way").expect("file");
        assert!(spool_pass(crate::testkit::as_host(&host).oversight(), &spool).is_err());
        assert_eq!(
            crate::testkit::as_host(&host)
                .oversight()
                .notifications_to_spool()
                .expect("list")
                .len(),
            1
        );
        std::fs::remove_file(&spool).expect("cleared");
        assert_eq!(
            spool_pass(crate::testkit::as_host(&host).oversight(), &spool).expect("pass"),
            1
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&spool), 0o700, "created private");
        let file = spool.join(file_name(1));
        assert_eq!(mode(&file), 0o600);
        let json: Value =
            serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
        assert_eq!(json["kind"], "first_access");
        assert_eq!(json["recipients"], json!([{"role": "holder"}]));
        std::fs::remove_file(&file).expect("the gateway takes it");
        assert_eq!(
            spool_pass(crate::testkit::as_host(&host).oversight(), &spool).expect("again"),
            0
        );
        assert!(
            !file.exists(),
            "a file the gateway removed is not written again"
        );
    }
}
