//! `carnet-syncd`: reconciles replicas with the national host (DESIGN §3).
//!
//! So far: the daemon's settings (`config`), the wire framing (`frame`), the national PKI (`pki`), the QUIC endpoints with
//! mutual TLS (`transport`), enrolment (`enrol`) and the inbox (`inbox`). The sans-IO session core and the daemon build on them.

pub mod config;
pub mod enrol;
pub mod error;
pub mod frame;
pub mod inbox;
pub mod net;
pub mod pki;
pub mod session;
#[cfg(test)]
mod testkit;
pub mod transport;

pub use error::{Error, Result};
