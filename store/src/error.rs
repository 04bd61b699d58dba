//! The one error type of `carnet-store`.
//!
//! Every variant says what it means for the caller; the CLI maps each kind to an exit code
//! (2 invalid input, 3 denied, 4 not found, 5 integrity). No input from disk, a peer or a user
//! ever panics: it becomes one of these.

/// What went wrong, and what the caller may do about it.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// The input was refused (malformed identifier, missing field, action not allowed in this
    /// role). Nothing was changed; correct the input and retry.
    #[error("{0}")]
    Invalid(String),
    /// The access decision table denied the request. The decision has been traced.
    #[error("access denied (rule {rule}): {reason}")]
    Denied {
        /// Row of the decision table (DOMAIN §4) that matched.
        rule: u8,
        /// Why, in words a professional understands.
        reason: String,
    },
    /// The named thing does not exist in this replica.
    #[error("{0}")]
    NotFound(String),
    /// Stored or received data failed an integrity check: a ciphertext, trace chain or signature
    /// does not verify. Nothing was returned from the damaged record.
    #[error("integrity failure: {0}")]
    Integrity(String),
    /// The master key could not be obtained or does not open this replica (wrong passphrase,
    /// missing key file).
    #[error("{0}")]
    Key(String),
    /// The database or file system failed (disk full, permissions, file locked by another
    /// process). Retrying after fixing the cause is safe: transactions are atomic.
    #[error("storage error: {0}")]
    Storage(String),
    /// Another host daemon sharing the database changed the same rows at the same time
    /// (PostgreSQL's SQLSTATE 40001): nothing of this operation was kept, and running it again
    /// is safe and may succeed.
    #[error("conflict: {0}")]
    Conflict(String),
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    pub(crate) fn integrity(msg: impl Into<String>) -> Self {
        Error::Integrity(msg.into())
    }
    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::SetDurabilityError,
    std::io::Error
);

impl From<redb::StorageError> for Error {
    fn from(e: redb::StorageError) -> Self {
        if crate::kv::pg::is_serialization_failure(&e) {
            Error::Conflict(e.to_string())
        } else {
            Error::Storage(e.to_string())
        }
    }
}

impl From<redb::TransactionError> for Error {
    fn from(e: redb::TransactionError) -> Self {
        match e {
            redb::TransactionError::Storage(e) => e.into(),
            e => Error::Storage(e.to_string()),
        }
    }
}

impl From<redb::CommitError> for Error {
    fn from(e: redb::CommitError) -> Self {
        match e {
            redb::CommitError::Storage(e) => e.into(),
            e => Error::Storage(e.to_string()),
        }
    }
}

impl From<redb::TableError> for Error {
    fn from(e: redb::TableError) -> Self {
        match e {
            // Every table a replica reads exists from its init on: one missing was removed.
            redb::TableError::TableDoesNotExist(name) => Error::Integrity(format!(
                "table {name} is missing from carnet.redb (removed outside Carnet): restore the data folder from your last backup"
            )),
            redb::TableError::Storage(e) => e.into(),
            e => Error::Storage(e.to_string()),
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Integrity(format!("undecodable record: {e}"))
    }
}
