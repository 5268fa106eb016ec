use std::fmt;

/// Which backing service failed; the API answers 503 for these, the worker retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Database,
    Redis,
    Queue,
    Search,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Database => "database",
            Backend::Redis => "redis",
            Backend::Queue => "queue",
            Backend::Search => "search",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("invalid query parameter {param}: {message}")]
    InvalidQuery {
        param: &'static str,
        message: String,
    },
    /// A request header the server reads holds something it cannot take.
    #[error("invalid header {header}: {message}")]
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    /// A conditional edit of a message whose newest version is none of those it was conditioned on.
    #[error("the message's version moved on")]
    VersionMoved { newest: u64 },
    /// An idempotency key already used for a different request.
    #[error("idempotency key reused for a different request")]
    KeyReused,
    /// An idempotency key held by a request still in flight.
    #[error("idempotency key in use by a request in flight")]
    KeyInFlight,
    /// A bound on what one client, one application or this process may hold or do at once was
    /// reached; the same request may succeed after `retry_after`.
    #[error("too many {what}")]
    TooMany {
        what: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("{backend} unavailable: {detail}")]
    Unavailable { backend: Backend, detail: String },
    /// A command the worker can never apply (it goes to the dead-letter queue).
    #[error("rejected command: {0}")]
    Rejected(String),
    /// The database's schema is one this version cannot migrate: applied by a newer release (a
    /// rollback), changed since it was applied, left half-applied, or a migration's SQL refused.
    /// Waiting cannot fix it, so a migration run fails at once.
    #[error("schema cannot be migrated: {0}")]
    Schema(String),
}

impl CoreError {
    pub fn unavailable(backend: Backend, detail: impl fmt::Display) -> Self {
        CoreError::Unavailable {
            backend,
            detail: detail.to_string(),
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        CoreError::Invalid {
            field,
            message: message.into(),
        }
    }

    pub fn invalid_header(header: &'static str, message: impl Into<String>) -> Self {
        CoreError::InvalidHeader {
            header,
            message: message.into(),
        }
    }

    pub fn invalid_query(param: &'static str, message: impl Into<String>) -> Self {
        CoreError::InvalidQuery {
            param,
            message: message.into(),
        }
    }

    /// Transient failures are retried by the worker; the rest go to the dead-letter queue.
    pub fn is_transient(&self) -> bool {
        matches!(self, CoreError::Unavailable { .. })
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
