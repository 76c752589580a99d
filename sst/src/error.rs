/// Errors of SST operations, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to write SST {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("failed to read SST {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("object store operation {op} on {path} failed: {source}")]
    ObjectStore {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    #[error("invalid SST input: {0}")]
    InvalidInput(String),

    #[error("SST {path} has invalid metadata: {reason}")]
    InvalidMetadata { path: String, reason: String },
}

impl Error {
    /// Whether the same operation may succeed if retried later (a transient
    /// object-store failure, for example).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::ObjectStore { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
            ),
            Error::Write { .. } | Error::Read { .. } => true,
            Error::InvalidInput(_) | Error::InvalidMetadata { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
