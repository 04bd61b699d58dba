//! Several host daemons over one PostgreSQL database: what each keeps apart from the others.
//!
//! The national host may run as several `carnet-syncd --role host` processes sharing one
//! database (ARCHITECTURE.md, "Several host daemons"). They share every table, the keys and
//! the signing key, and PostgreSQL orders their transactions (a write that collides with
//! another's is refused whole, `Error::Conflict`, and run again). What cannot be shared is the
//! trace chain: each daemon appends to its own, from its own data folder and trace journal.
//!
//! - The first daemon (the folder `carnet init --role host` made) is number 0; its chain is the
//!   host's (`SiteId::HOST`), as with one daemon.
//! - A daemon added with `Replica::join_on` takes the next number (from 1 to `MAX_DAEMONS`),
//!   stored in its folder (`DAEMON_FILE`) and claimed in the `host_daemons` table in one
//!   serialisable transaction, so two folders never get the same one. Its chain's origin is
//!   `FIRST_DAEMON_ORIGIN + number`, a range the host never enrols a site under.
//!
//! Invariants: a daemon writes trace rows, its chain head, its trace anchor and its journal's
//! epoch under its own origin and its own `meta` rows only; its entries still say the host
//! decided (`AuditEntry::origin` is `SiteId::HOST`), and every host chain is hashed with the
//! host's chain key, so `verify_audit` checks each of them.

use std::path::Path;
use std::time::Duration;

use super::tables::{HOST_DAEMONS, META, meta_key};
use super::{
    Clock, DB_FILE, KEY_FILE, KeySource, POSTGRES_MARK, Replica, ReplicaConfig, Role, Storage,
};
use crate::error::{Error, Result};
use crate::ids::SiteId;
use crate::kv::{Database, ReadableTable};

/// File in the data folder of a daemon added with `join_on`: its number, in decimal.
pub const DAEMON_FILE: &str = "carnet.daemon";
/// The trace origin of daemon 1; daemon `n` writes under `FIRST_DAEMON_ORIGIN + n - 1`. Site
/// ids are never issued from here on (`is_daemon_origin`).
pub const FIRST_DAEMON_ORIGIN: u32 = 0xFFFF_FF00;
/// The most daemons that may join the first one.
pub const MAX_DAEMONS: u32 = 255;
/// How many times an operation refused for a collision (`Error::Conflict`) runs again.
const CONFLICT_RETRIES: u32 = 8;

/// True for the trace origin of any host daemon, the first one's (`SiteId::HOST`) included.
pub fn is_daemon_origin(origin: SiteId) -> bool {
    origin == SiteId::HOST || origin.0 >= FIRST_DAEMON_ORIGIN
}

/// Which daemon of the host this process is (0 at a site, and for the first host daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Daemon(pub(super) u32);

impl Daemon {
    /// The number stored in `dir`, or 0 when the folder has none.
    pub(super) fn of_folder(dir: &Path) -> Result<Daemon> {
        let path = dir.join(DAEMON_FILE);
        if !path.exists() {
            return Ok(Daemon(0));
        }
        let bytes = crate::files::read_bounded(&path, 64)?;
        let number = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|n| (1..=MAX_DAEMONS).contains(n))
            .ok_or_else(|| {
                Error::integrity(format!(
                    "{} is malformed: it holds this host daemon's number (1 to {MAX_DAEMONS})",
                    path.display()
                ))
            })?;
        Ok(Daemon(number))
    }

    /// Writes the number into `dir`.
    pub(super) fn write_to(self, dir: &Path) -> Result<()> {
        crate::files::write_private(&dir.join(DAEMON_FILE), format!("{}\n", self.0).as_bytes())?;
        Ok(())
    }

    /// The origin this daemon's trace chain is stored under.
    pub(super) fn trace_origin(self) -> SiteId {
        match self.0 {
            0 => SiteId::HOST,
            n => SiteId(FIRST_DAEMON_ORIGIN + n - 1),
        }
    }

    /// The origin the replica of `config` stores its own trace chain under: at the host this
    /// daemon's, at a site its id.
    pub(super) fn own_origin(self, config: &ReplicaConfig) -> SiteId {
        match config.role {
            Role::Host => self.trace_origin(),
            Role::Site => config.site_id,
        }
    }

    /// This daemon's name for a `meta` row of its own (`base` for the first daemon).
    pub(super) fn meta_row(self, base: &str) -> String {
        match self.0 {
            0 => base.to_string(),
            n => format!("{base}:{n}"),
        }
    }
}

impl Replica {
    /// Adds a host daemon with its data folder `dir` to the host whose tables are in the
    /// PostgreSQL database `storage`, and opens it. `dir` must hold no replica; with
    /// `KeySource::File` it holds a copy of the first daemon's `master.key`. The daemon takes
    /// the next free number (`daemons`); a failure after it leaves the number unused and the
    /// folder as it was.
    pub fn join_on(
        dir: &Path,
        storage: &Storage,
        source: &KeySource,
        clock: Clock,
        cache_mib: usize,
    ) -> Result<Replica> {
        let Storage::Postgres(pg) = storage else {
            return Err(Error::invalid(
                "only a host whose tables are in PostgreSQL runs several daemons: set [host] storage in carnet.toml",
            ));
        };
        if [DB_FILE, POSTGRES_MARK, DAEMON_FILE]
            .iter()
            .any(|f| dir.join(f).exists())
        {
            return Err(Error::invalid(format!(
                "{} already holds a replica: a daemon joins from a folder of its own",
                dir.display()
            )));
        }
        if matches!(source, KeySource::File) && !dir.join(KEY_FILE).exists() {
            return Err(Error::Key(format!(
                "{} has no {KEY_FILE}: copy the first host daemon's key there (mode 0600)",
                dir.display()
            )));
        }
        crate::files::private_dir(dir)?;
        let db = Database::Pg(crate::kv::pg::PgStore::open(&pg.url)?);
        let number = retry_conflicts(|| claim_number(&db, clock()))?;
        drop(db);
        let written = [dir.join(DAEMON_FILE), dir.join(POSTGRES_MARK)];
        let opened = Daemon(number).write_to(dir).and_then(|()| {
            super::write_postgres_mark(dir)?;
            Replica::open_on(dir, storage, source, clock, cache_mib)
        });
        if opened.is_err() {
            super::remove_created(&written);
        }
        opened
    }

    /// Which daemon of the host this is (0 for the first one, and at a site).
    pub fn daemon_number(&self) -> u32 {
        self.daemon.0
    }

    /// Runs `op` again while it is refused for colliding with another daemon's transaction
    /// (`Error::Conflict`), a few times, after a short random pause that grows: nothing of a
    /// refused transaction was kept, and what committed before it within `op` is applied once
    /// (each operation is safe to repeat, as a site repeats a round after a host crash).
    pub(crate) fn retrying<T>(&self, op: impl FnMut() -> Result<T>) -> Result<T> {
        retry_conflicts(op)
    }
}

/// See `Replica::retrying`.
fn retry_conflicts<T>(mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(Error::Conflict(why)) if attempt < CONFLICT_RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, %why, "collided with another host daemon: running again");
                let mut jitter = [0u8; 1];
                crate::crypto::random_bytes(&mut jitter)?;
                let ms = (1u64 << attempt.min(6)) + u64::from(jitter[0] % 8);
                std::thread::sleep(Duration::from_millis(ms));
            }
            outcome => return outcome,
        }
    }
}

/// Claims the next daemon number in one serialisable transaction: two claims that collide
/// are one refused (`Error::Conflict`), so no number is given twice.
fn claim_number(db: &Database, now: crate::time::Millis) -> Result<u32> {
    let txn = db.begin_write()?;
    let config: Option<ReplicaConfig> = {
        let meta = txn.open_table(META)?;
        let row = meta.get(meta_key::CONFIG)?;
        row.map(|v| postcard::from_bytes(v.value())).transpose()?
    };
    if config.is_none_or(|c| c.role != Role::Host) {
        return Err(Error::invalid(
            "this PostgreSQL database holds no host: run `carnet init --role host --storage …` for the first daemon",
        ));
    }
    let number = {
        let mut table = txn.open_table(HOST_DAEMONS)?;
        let last = table.last()?.map_or(0, |(k, _)| k.value());
        let number = last + 1;
        if number > MAX_DAEMONS {
            return Err(Error::invalid(format!(
                "this host already has {MAX_DAEMONS} daemons besides its first: no more may join"
            )));
        }
        table.insert(number, now.max(0) as u64)?;
        number
    };
    txn.commit()?;
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_have_origins_and_rows_of_their_own() {
        assert_eq!(Daemon(0).trace_origin(), SiteId::HOST);
        assert_eq!(Daemon(1).trace_origin(), SiteId(FIRST_DAEMON_ORIGIN));
        assert_eq!(
            Daemon(MAX_DAEMONS).trace_origin(),
            SiteId(FIRST_DAEMON_ORIGIN + MAX_DAEMONS - 1)
        );
        assert!(is_daemon_origin(Daemon(7).trace_origin()));
        assert!(!is_daemon_origin(SiteId(FIRST_DAEMON_ORIGIN - 1)));
        assert_eq!(Daemon(0).meta_row("trace_anchor"), "trace_anchor");
        assert_eq!(Daemon(3).meta_row("trace_anchor"), "trace_anchor:3");
    }

    #[test]
    fn a_malformed_daemon_file_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(Daemon::of_folder(dir.path()).expect("none"), Daemon(0));
        Daemon(4).write_to(dir.path()).expect("write");
        assert_eq!(Daemon::of_folder(dir.path()).expect("four"), Daemon(4));
        for bad in ["0\n", "256", "x", ""] {
            std::fs::write(dir.path().join(DAEMON_FILE), bad).expect("write");
            let e = Daemon::of_folder(dir.path()).expect_err(bad);
            assert!(e.to_string().contains("daemon's number"), "{e}");
        }
    }
}
