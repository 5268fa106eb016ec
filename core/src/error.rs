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
    #[error("{backend} unavailable: {detail}")]
    Unavailable { backend: Backend, detail: String },
    /// A command the worker can never apply (it goes to the dead-letter queue).
    #[error("rejected command: {0}")]
    Rejected(String),
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

/// Classifies a database error: deadlocks, lock timeouts and lost connections are transient;
/// a statement the database refuses for its data is a rejected command.
pub fn from_sqlx(err: sqlx::Error) -> CoreError {
    match &err {
        sqlx::Error::Database(db) => {
            // MySQL/MariaDB: 1205 lock wait timeout, 1213 deadlock, 1020 record changed;
            // SQLite: 5 busy, 6 locked.
            let transient = matches!(
                db.code().as_deref(),
                Some("1205" | "1213" | "1020" | "5" | "6" | "517" | "261")
            ) || db.message().contains("database is locked");
            if transient {
                CoreError::unavailable(Backend::Database, err)
            } else {
                CoreError::Rejected(err.to_string())
            }
        }
        _ => CoreError::unavailable(Backend::Database, err),
    }
}
