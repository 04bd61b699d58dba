//! The one error type of `carnet-syncd`.

/// What went wrong in sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or reading a certificate or key failed.
    #[error("certificate authority: {0}")]
    Pki(String),
    /// The TLS configuration could not be built from the given material (bad certificate or
    /// key): fix the enrolment bundle.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A socket, endpoint or file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The request was refused: wrong role, unknown site, malformed bundle. Nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The replica refused or failed.
    #[error(transparent)]
    Store(#[from] carnet_store::Error),
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
