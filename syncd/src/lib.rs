//! `carnet-syncd`: reconciles replicas with the national host (DESIGN §3).
//!
//! So far: the wire framing (`frame`), the national PKI (`pki`) and the QUIC endpoints with
//! mutual TLS (`transport`). The sans-IO session core and the daemon build on them.

pub mod error;
pub mod frame;
pub mod pki;
pub mod transport;

pub use error::{Error, Result};
