//! `carnet-syncd`: reconciles replicas with the national host (DESIGN §3).
//!
//! This release holds the wire framing (`frame`); the sans-IO session core, the QUIC transport
//! and the daemon build on it.

pub mod frame;
