use std::path::PathBuf;

/// Errors of WAL operations, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("WAL I/O failed while {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("WAL record at offset {offset} in {path} is corrupted: {reason}")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("WAL record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },

    #[error("WAL refuses writes after an earlier failure ({reason}); reopen it to recover")]
    Poisoned { reason: String },

    #[error("WAL is closed")]
    Closed,

    /// The append was refused because a writer with a higher epoch took the
    /// region over. `committed` holds the offsets of the append's leading
    /// records that landed before the newer writer's first record: those are
    /// durable and replay applies them, so the caller may acknowledge them.
    /// Every other record of the append is dropped by replay.
    #[error("this writer (epoch {}) was fenced: a writer with epoch {} took the WAL region over", epoch.0, by.0)]
    Fenced {
        epoch: crate::Epoch,
        by: crate::Epoch,
        committed: Vec<crate::WalOffset>,
    },

    /// The region no longer holds records it acknowledged (the broker lost
    /// them, or the topic was deleted and recreated). Nothing is replayed
    /// until an operator accepts the loss.
    #[error("WAL topic {topic} lost acknowledged records: {detail}")]
    RecordsLost { topic: String, detail: String },

    #[error("Kafka WAL failed while {op}: {source}")]
    Kafka {
        op: &'static str,
        retryable: bool,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl Error {
    /// Whether the same operation may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Corrupted { .. } | Error::RecordTooLarge { .. } => false,
            Error::RecordsLost { .. } => false,
            Error::Poisoned { .. } | Error::Closed | Error::Fenced { .. } => false,
            Error::Kafka { retryable, .. } => *retryable,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
