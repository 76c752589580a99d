use strata_sst::TableId;

/// What a caller can do about an error: the classification every protocol
/// maps to its own status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or violates the schema.
    InvalidArgument,
    TableNotFound,
    DatabaseNotFound,
    AlreadyExists,
    /// Temporarily unable to serve; retry later.
    Unavailable,
    /// A bug or an unexpected storage failure.
    Internal,
    /// Valid, but not supported.
    Unsupported,
    /// This instance does not lead the table's shard (any more): refresh the
    /// route and send the request to the shard's leader.
    NotLeader,
    /// The table's shard is between leaders (a move or a failover): retry
    /// shortly.
    ShardMoving,
    /// The query needs more memory than `query.memory_limit` allows; the
    /// same query fails again unless the limit is raised.
    ResourcesExhausted,
    /// The query ran longer than `query.timeout` and was cancelled.
    Timeout,
    /// `query.max_concurrent` queries were running and none finished within
    /// `query.queue_timeout`: retry later.
    Overloaded,
}

/// Errors of engine operations, named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Table not found: {name}")]
    TableNotFound { name: String },

    #[error("Table already exists: {name}")]
    TableExists { name: String },

    #[error("Database not found: {name}")]
    DatabaseNotFound { name: String },

    #[error("Database already exists: {name}")]
    DatabaseExists { name: String },

    #[error("Invalid table schema: {0}")]
    InvalidSchema(String),

    #[error("Invalid table option {key}: {reason}")]
    InvalidOption { key: String, reason: String },

    #[error("Invalid write to table {table}: {reason}")]
    InvalidWrite { table: String, reason: String },

    /// Part of a write was applied and the rest failed, to an APPEND table
    /// (where writing a row twice keeps two rows): not to be retried whole.
    /// A 400, as InfluxDB answers its partial writes, so that clients that
    /// retry 5xx answers (Telegraf) do not.
    #[error(
        "partial write: {written} rows of this write were written to {tables}, and the rest \
         failed ({reason}); writing it again whole would write those rows twice (an APPEND \
         table): send only the rest"
    )]
    PartialWrite {
        written: u64,
        tables: String,
        reason: String,
    },

    #[error("Unsupported: {0}")]
    Unsupported(String),

    #[error("WAL {op} failed: {source}")]
    Wal {
        op: &'static str,
        #[source]
        source: Box<strata_wal::Error>,
    },

    #[error("WAL append failed: {reason}")]
    WalAppend { reason: String, retryable: bool },

    #[error("SST {op} failed for table {table}: {source}")]
    Sst {
        op: &'static str,
        table: TableId,
        #[source]
        source: Box<strata_sst::Error>,
    },

    #[error("object store {op} of {path} failed: {source}")]
    ObjectStore {
        op: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },

    #[error("manifest of table {table} is invalid: {reason}")]
    Manifest { table: TableId, reason: String },

    #[error("catalog is invalid: {0}")]
    Catalog(String),

    /// Another process changed the persisted catalog first (retryable).
    #[error("the catalog changed: {0}")]
    CatalogChanged(String),

    #[error("WAL record is invalid: {0}")]
    Codec(String),

    #[error("arrow error while {op}: {source}")]
    Arrow {
        op: &'static str,
        #[source]
        source: Box<arrow::error::ArrowError>,
    },

    #[error("Write to table {table} stalled for {waited_ms} ms: memtables hold {used} bytes, the limit is {limit}; retry later")]
    WriteStalled {
        table: String,
        waited_ms: u64,
        used: usize,
        limit: usize,
    },

    #[error("Compaction of table {table} needs about {needed} bytes, over the budget of {budget}")]
    CompactionOverBudget {
        table: String,
        needed: u64,
        budget: u64,
    },

    #[error("the engine is shutting down")]
    ShuttingDown,

    #[error("NotLeader: table {table} is on shard {shard}, which this instance does not serve")]
    NotServedHere {
        table: String,
        shard: strata_sst::ShardId,
    },

    #[error("FollowerBehind: the follower of shard {shard} has applied its WAL up to offset {applied}, not yet to {end}, the end when the read began; retry, or read from the leader")]
    FollowerBehind {
        shard: strata_sst::ShardId,
        applied: u64,
        end: u64,
    },

    /// A compute instance asked for the rows not in a manifest whose
    /// flushed offset is `asked`, and the leader has flushed past it: the
    /// rows between are in SSTs that manifest does not list. Re-read it.
    #[error("FlushedBeyond: table {table} has flushed up to offset {flushed}, past {asked}; read its manifest again")]
    FlushedBeyond {
        table: String,
        flushed: u64,
        asked: u64,
    },

    #[error("ShardMoving: shard {shard} is between leaders; retry shortly")]
    ShardNotOpen { shard: strata_sst::ShardId },

    #[error("NotLeader: shard {shard} (epoch {epoch}) was taken over by a leader with epoch {by}")]
    ShardFenced {
        shard: strata_sst::ShardId,
        epoch: u64,
        by: u64,
    },

    /// The table was handed to another shard (a split or a merge): this
    /// shard's owner commits nothing more for it. Not a fence: the shard's
    /// other tables are unaffected.
    #[error("NotLeader: table {table} was handed from shard {from} to shard {to}")]
    TableMoved {
        table: TableId,
        from: strata_sst::ShardId,
        to: strata_sst::ShardId,
    },

    /// The table is being handed to another shard, or opened on its shard:
    /// retry shortly. (The front end recognises the wording after the
    /// table name, also through DataFusion: keep it.)
    #[error("ShardMoving: table {table} is moving between shards or being opened; retry shortly")]
    TableMoving { table: String },

    #[error("shard {shard}: the WAL holds epoch {highest}, above this leader's epoch {epoch}; a higher epoch is needed")]
    EpochBehind {
        shard: strata_sst::ShardId,
        epoch: u64,
        highest: u64,
    },

    #[error("manifest of table {table} changed under this writer: {reason}")]
    ManifestConflict { table: TableId, reason: String },

    #[error("manifest commit of table {table} has an unknown outcome (the object store did not answer: {reason}); the manifest is re-read before the next change")]
    CommitUnknown { table: TableId, reason: String },

    #[error("Meta unavailable: {0}")]
    MetaUnavailable(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::TableNotFound { .. } => ErrorKind::TableNotFound,
            Error::DatabaseNotFound { .. } => ErrorKind::DatabaseNotFound,
            Error::TableExists { .. } | Error::DatabaseExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidSchema(_)
            | Error::InvalidOption { .. }
            | Error::InvalidWrite { .. }
            | Error::PartialWrite { .. } => ErrorKind::InvalidArgument,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::NotServedHere { .. } | Error::ShardFenced { .. } | Error::TableMoved { .. } => {
                ErrorKind::NotLeader
            }
            Error::ShardNotOpen { .. } | Error::TableMoving { .. } => ErrorKind::ShardMoving,
            Error::MetaUnavailable(_) | Error::CatalogChanged(_) => ErrorKind::Unavailable,
            Error::Wal { source, .. } if source.is_retryable() => ErrorKind::Unavailable,
            Error::WalAppend {
                retryable: true, ..
            } => ErrorKind::Unavailable,
            Error::Sst { source, .. } if source.is_retryable() => ErrorKind::Unavailable,
            Error::ObjectStore { .. }
            | Error::ShuttingDown
            | Error::FollowerBehind { .. }
            | Error::FlushedBeyond { .. }
            | Error::WriteStalled { .. }
            | Error::CompactionOverBudget { .. } => ErrorKind::Unavailable,
            Error::Wal { .. }
            | Error::WalAppend { .. }
            | Error::Sst { .. }
            | Error::Manifest { .. }
            | Error::ManifestConflict { .. }
            | Error::CommitUnknown { .. }
            | Error::Catalog(_)
            | Error::Codec(_)
            | Error::EpochBehind { .. }
            | Error::Arrow { .. }
            | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
