//! `carnet-store`: the encrypted local replica of Carnet — the domain core (identifiers, model,
//! version vectors, merge, access policy, crypto, trace, host authority) and its redb
//! persistence. It knows nothing of the network or of async runtimes.
//!
//! Architecture invariants: the store never touches the network; plaintext keys never leave
//! `crypto`; every access decision goes through `policy::decide` and is traced.

pub mod audit;
pub mod authority;
pub mod clock;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod files;
pub mod ids;
pub mod kv;
pub mod merge;
pub mod model;
pub mod padding;
pub mod policy;
pub mod replica;
pub mod segments;
pub mod text;
pub mod time;

pub use error::{Error, Result};
