//! The server's errors, and how each maps onto what clients act on: an
//! [`ErrorKind`](strata_engine::ErrorKind), an HTTP-style status code (as
//! HoraeDB's clients expect in response headers), and whether to retry.

use datafusion::error::DataFusionError;
use strata_engine::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SQL parse error at line {line}, column {column}: {message}")]
    Parse {
        message: String,
        line: u64,
        column: u64,
    },

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{0}")]
    Unsupported(String),

    /// A request past one of the server's limits on nesting or size (an
    /// invalid argument; PostgreSQL's `statement_too_complex`).
    #[error("{0}")]
    TooComplex(String),

    /// A body or message past a configured size limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),

    #[error(transparent)]
    Engine(#[from] strata_engine::Error),

    #[error("{message}")]
    Query { kind: ErrorKind, message: String },

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Parse { .. }
            | Error::InvalidArgument(_)
            | Error::TooComplex(_)
            | Error::TooLarge(_) => ErrorKind::InvalidArgument,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Engine(e) => e.kind(),
            Error::Query { kind, .. } => *kind,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The HTTP-style code used in gRPC response headers and HTTP responses.
    pub fn status_code(&self) -> u16 {
        if matches!(self, Error::TooLarge(_)) {
            return 413;
        }
        match self.kind() {
            ErrorKind::InvalidArgument | ErrorKind::Unsupported => 400,
            ErrorKind::TableNotFound | ErrorKind::DatabaseNotFound => 404,
            ErrorKind::AlreadyExists => 409,
            ErrorKind::Unavailable => 503,
            // Misdirected Request: the client should refresh its route.
            ErrorKind::NotLeader => 421,
            ErrorKind::ShardMoving => 503,
            ErrorKind::Internal => 500,
            // As gRPC's RESOURCE_EXHAUSTED maps onto HTTP (Google's API
            // guide); `retryable` stays false: the same query fails again.
            ErrorKind::ResourcesExhausted => 429,
            ErrorKind::Timeout => 504,
            ErrorKind::Overloaded => 503,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unavailable
                | ErrorKind::NotLeader
                | ErrorKind::ShardMoving
                | ErrorKind::Overloaded
        )
    }
}

/// The kind of an error another instance answered with.
pub fn remote_kind(e: &strata_client::Error) -> ErrorKind {
    use strata_proto::common::ErrorKind as Pb;
    match e.kind() {
        Some(Pb::InvalidArgument) => ErrorKind::InvalidArgument,
        Some(Pb::TableNotFound) => ErrorKind::TableNotFound,
        Some(Pb::DatabaseNotFound) => ErrorKind::DatabaseNotFound,
        Some(Pb::AlreadyExists) => ErrorKind::AlreadyExists,
        Some(Pb::NotLeader) => ErrorKind::NotLeader,
        Some(Pb::ShardMoving) => ErrorKind::ShardMoving,
        Some(Pb::Unsupported) => ErrorKind::Unsupported,
        Some(Pb::Unavailable) => ErrorKind::Unavailable,
        Some(Pb::ResourcesExhausted) => ErrorKind::ResourcesExhausted,
        Some(Pb::Timeout) => ErrorKind::Timeout,
        Some(Pb::Overloaded) => ErrorKind::Overloaded,
        Some(Pb::Internal | Pb::Unspecified) => ErrorKind::Internal,
        // Not reached, or the connection failed: worth a retry.
        None => ErrorKind::Unavailable,
    }
}

/// Extracts the table name from DataFusion's "table '…' not found".
fn missing_table(message: &str) -> Option<String> {
    let rest = message.split("table '").nth(1)?;
    let name = rest.split("' not found").next()?;
    if !rest.contains("' not found") {
        return None;
    }
    Some(name.rsplit('.').next().unwrap_or(name).to_string())
}

/// Another instance's error, carried through DataFusion (a remote scan or
/// sink fails with it) and kept typed for the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub strata_client::Error);

impl From<strata_promql::Error> for Error {
    fn from(e: strata_promql::Error) -> Self {
        use strata_promql::Error as P;
        match e {
            P::InvalidArgument(m) => Error::InvalidArgument(m),
            P::Unsupported(m) => Error::Unsupported(m),
            P::TooComplex(m) => Error::TooComplex(m),
            P::ResourcesExhausted(message) => Error::Query {
                kind: ErrorKind::ResourcesExhausted,
                message,
            },
            P::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Unwrap context layers to the error that actually happened.
        let root = e.find_root();
        match root {
            DataFusionError::External(inner) => {
                if let Some(engine) = inner.downcast_ref::<strata_engine::Error>() {
                    return Error::Query {
                        kind: engine.kind(),
                        message: engine.to_string(),
                    };
                }
                if let Some(remote) = inner.downcast_ref::<RemoteError>() {
                    return Error::Query {
                        kind: remote_kind(&remote.0),
                        message: remote.0.to_string(),
                    };
                }
                if let Some(ours) = inner.downcast_ref::<Error>() {
                    return Error::Query {
                        kind: ours.kind(),
                        message: ours.to_string(),
                    };
                }
                Error::Query {
                    kind: ErrorKind::Internal,
                    message: inner.to_string(),
                }
            }
            DataFusionError::SQL(parse, _) => {
                use datafusion::sql::sqlparser::parser::ParserError;
                let detail = match parse.as_ref() {
                    ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
                    ParserError::RecursionLimitExceeded => {
                        "the statement is nested too deeply".to_string()
                    }
                };
                Error::Query {
                    kind: ErrorKind::InvalidArgument,
                    message: format!("SQL parse error: {detail}"),
                }
            }
            DataFusionError::Plan(msg) => match missing_table(msg) {
                Some(name) => Error::Query {
                    kind: ErrorKind::TableNotFound,
                    message: format!("Table not found: {name}"),
                },
                None => Error::Query {
                    kind: ErrorKind::InvalidArgument,
                    message: format!("Invalid query: {msg}"),
                },
            },
            DataFusionError::SchemaError(..) => Error::Query {
                kind: ErrorKind::InvalidArgument,
                message: format!("Invalid query: {root}"),
            },
            DataFusionError::NotImplemented(msg) => Error::Query {
                kind: ErrorKind::Unsupported,
                message: format!("Unsupported: {msg}"),
            },
            DataFusionError::ArrowError(arrow, _) => {
                let kind = match arrow.as_ref() {
                    arrow::error::ArrowError::CastError(_)
                    | arrow::error::ArrowError::ParseError(_)
                    | arrow::error::ArrowError::InvalidArgumentError(_)
                    | arrow::error::ArrowError::DivideByZero
                    | arrow::error::ArrowError::ArithmeticOverflow(_)
                    | arrow::error::ArrowError::ComputeError(_) => ErrorKind::InvalidArgument,
                    _ => ErrorKind::Internal,
                };
                Error::Query {
                    kind,
                    message: root.to_string(),
                }
            }
            DataFusionError::ResourcesExhausted(_) => Error::Query {
                kind: ErrorKind::ResourcesExhausted,
                message: root.to_string(),
            },
            DataFusionError::Execution(msg) => Error::Query {
                kind: ErrorKind::InvalidArgument,
                message: format!("Execution error: {msg}"),
            },
            _ => Error::Query {
                kind: ErrorKind::Internal,
                message: root.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tables_are_recognised() {
        assert_eq!(
            missing_table("table 'strata.public.nope' not found"),
            Some("nope".to_string())
        );
        assert_eq!(missing_table("no field named x"), None);
    }
}
