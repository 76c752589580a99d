//! What evaluating a query can fail with. Each variant is something the
//! client did or asked for; a failure to read samples is the caller's own
//! error type ([`crate::SampleSource::Error`]), never wrapped in this one.

/// An error of parsing or evaluating a PromQL query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query or one of its parameters is invalid (Prometheus's
    /// `bad_data`).
    #[error("{0}")]
    InvalidArgument(String),

    /// A valid query using a feature not implemented here; the message
    /// names it.
    #[error("{0}")]
    Unsupported(String),

    /// The query is past one of the limits on nesting or size
    /// ([`crate::limits`]).
    #[error("{0}")]
    TooComplex(String),

    /// The query needs more memory than its budget allows
    /// ([`crate::Budget`]).
    #[error("{0}")]
    ResourcesExhausted(String),

    /// A bug: a state the evaluator should never reach.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
