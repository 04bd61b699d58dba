//! `carnet-syncd`: reconciles replicas with the national host (DESIGN §3).
//!
//! The daemon's settings (`config`), the wire framing (`frame`), the national PKI (`pki`), the
//! QUIC endpoints with mutual TLS (`transport`) and their congestion window (`congestion`),
//! enrolment (`enrol`), the host key's hand-over
//! and revocation (`hostkey`), the inbox (`inbox`), the
//! sans-IO session core (`session`) and its QUIC driver (`net`), a site's round timers
//! (`schedule`), the host's view of its sites
//! (`fleet`), the local API through which `carnet` reaches a replica (`api`), the HTTP
//! listener (`http`) serving `/metrics` (`metrics`) and the status page (`status_page`), the
//! notification spool (`spool`), and systemd's notify protocol (`systemd`).

pub mod api;
pub mod config;
pub mod congestion;
pub mod discovery;
pub mod enrol;
pub mod error;
/// The test suite's UDP fault proxy (tests/it), for tests over a link that loses datagrams.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/it/fault_proxy.rs"]
mod fault_proxy;
pub mod fhir;
pub mod fleet;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod hostkey;
pub mod http;
pub mod inbox;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod pki;
#[cfg(test)]
mod protocol_golden;
pub mod schedule;
pub mod session;
pub mod spool;
pub mod status_page;
pub mod systemd;
pub(crate) mod tail;
#[cfg_attr(not(test), allow(dead_code))]
mod testkit;
pub mod transport;

pub use error::{Error, Result};
