/// Errors of meta operations, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd {op} failed: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },

    #[error("lease {0} has expired or does not exist")]
    LeaseExpired(i64),

    #[error("metadata is invalid: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether the same operation may succeed if retried later (etcd
    /// unreachable, a leader election in progress).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Etcd { source, .. } => !matches!(
                source,
                etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)
            ),
            Error::LeaseExpired(_) | Error::Invalid(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
