//! systemd's notify protocol (`sd_notify(3)`), without libsystemd: a service of `Type=notify`
//! tells the manager it is ready (`READY=1`), reloading (`RELOADING=1`), stopping
//! (`STOPPING=1`), alive (`WATCHDOG=1`), and what it does (`STATUS=…`), each a datagram of
//! `KEY=VALUE` lines sent to the Unix socket named by `NOTIFY_SOCKET` — a path, or an abstract
//! name when it starts with `@`.
//!
//! Invariants: without `NOTIFY_SOCKET` every call does nothing; a failed send is logged, never
//! fatal (the daemon serves the same with or without a manager); the watchdog interval is half
//! of `WATCHDOG_USEC`, and only when `WATCHDOG_PID`, if set, is this process.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The manager's notification socket, if the daemon runs under one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names, or a notifier that does nothing.
    pub fn from_env() -> Notifier {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(name) if !name.is_empty() => Notifier::to(&name).unwrap_or_else(|e| {
                tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET unusable: systemd is not told");
                Notifier { target: None }
            }),
            _ => Notifier { target: None },
        }
    }

    /// A notifier sending to `name`: a path, or `@NAME` for an abstract socket.
    pub fn to(name: &str) -> std::io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => SocketAddr::from_pathname(name)?,
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// True when a manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (`KEY=VALUE` lines) as one datagram; a failure is logged.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the manager asks this
/// process (`WATCHDOG_PID` unset, or this process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let n = Notifier::to(&path.display().to_string()).expect("notifier");
        assert!(n.is_active());
        n.notify("READY=1\nSTATUS=serving");
        let got = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..got], b"READY=1\nSTATUS=serving");

        // An abstract name (systemd's own, `@/org/freedesktop/systemd1/notify/…`).
        let name = format!(
            "carnet-test-{}-{}",
            std::process::id(),
            dir.path().file_name().expect("name").to_string_lossy()
        );
        let abstract_addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).expect("name")
        };
        let listener = UnixDatagram::bind_addr(&abstract_addr).expect("bind abstract");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Notifier::to(&format!("@{name}"))
            .expect("notifier")
            .notify("WATCHDOG=1");
        let got = listener.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..got], b"WATCHDOG=1");

        // Nobody listening: logged, not fatal.
        drop(listener);
        Notifier::to(&format!("@{name}"))
            .expect("notifier")
            .notify("STOPPING=1");
    }
}
