//! The store's own failures, apart from the refusals of requests: the disk
//! or the database could not do what was asked. `error.rs` alone turns
//! either into a status.

use std::sync::Arc;

use crate::domain::Rejection;

/// What kind of failure it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The store cannot be reached now (a transient fault; retry).
    Unavailable,
    /// The disk (or the database server's) is full.
    Full,
    /// The file system or the database refuses writes.
    ReadOnly,
    /// The data directory or its database file is gone.
    Lost,
    /// A stored record is damaged.
    Corrupt,
    /// The store is closing.
    Closing,
    /// Anything else: a bug or an unexpected state.
    Internal,
}

/// A failure of the store, with what a client may be told and its cause.
#[derive(Debug, Clone)]
pub struct StoreError {
    /// Its kind.
    pub fault: Fault,
    /// What happened, for the client and the log.
    pub message: String,
    /// The underlying error, if any (for the log only).
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure of kind `fault`.
    pub fn new(fault: Fault, message: impl Into<String>) -> StoreError {
        StoreError {
            fault,
            message: message.into(),
            source: None,
        }
    }

    /// This failure, caused by `source`.
    pub fn caused_by(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        self.source = Some(Arc::new(source));
        self
    }

    /// An unexpected failure: `INTERNAL` for the client, `cause` for the log.
    pub fn internal(cause: impl std::fmt::Display) -> StoreError {
        StoreError::new(Fault::Internal, format!("internal store error: {cause}"))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Why a write did not happen: refused by the rules, or the store failed.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// The request was refused; nothing was written.
    Refused(Rejection),
    /// The store failed; the whole batch committed nothing.
    Store(StoreError),
}

impl From<Rejection> for WriteError {
    fn from(r: Rejection) -> WriteError {
        WriteError::Refused(r)
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> WriteError {
        WriteError::Store(e)
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Refused(r) => write!(f, "{r}"),
            WriteError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WriteError {}
