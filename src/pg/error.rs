//! Errors of the wire layer. They name the server (redacted, never with a
//! password) and carry the server's SQLSTATE so callers can decide what to do.

use std::fmt;
use std::io;

/// An `ErrorResponse` from the server, reduced to what an operator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `55006` when a slot is already in use.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Anything that can go wrong talking to a server. `target` is the redacted
/// connection string, so every message says which database it is about.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("TLS with {target}: {message}")]
    Tls { target: String, message: String },
    #[error("authentication with {target} failed: {message}")]
    Auth { target: String, message: String },
    #[error("{target}: {error}")]
    Server { target: String, error: Box<ServerError> },
    #[error("connection to {target} lost: {source}")]
    Io { target: String, source: io::Error },
    #[error("unexpected reply from {target}: {message}")]
    Protocol { target: String, message: String },
}

impl PgError {
    /// The server's SQLSTATE, when the server refused something.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// The server's error, when the server refused something.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            PgError::Server { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// An ordinary SQL error (tokio-postgres) for logs: severity, SQLSTATE and
/// message, without the server's DETAIL, which can quote row values
/// ("Failing row contains ...").
pub fn describe_sql_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => error.to_string(),
    }
}
