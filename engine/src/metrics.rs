//! Engine metrics, registered in the process-wide Prometheus registry that
//! the server exposes on `/metrics`.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};

// Metric names and help texts below are static and valid, so construction
// cannot fail; registration fails only on a duplicate name, which LazyLock
// rules out.
#[allow(clippy::expect_used)]
fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

#[allow(clippy::expect_used)]
fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(g.clone()));
    g
}

#[allow(clippy::expect_used)]
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g =
        IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(g.clone()));
    g
}

/// A led shard's load as of the last heartbeat (`kind`: `rows_written_per_s`,
/// `bytes_written_per_s`, `scans_per_s`, `rows_scanned_per_s`,
/// `memtable_bytes`, `wal_backlog`), what meta is told.
#[allow(clippy::expect_used)]
pub static SHARD_LOAD: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    let g = prometheus::GaugeVec::new(
        Opts::new(
            "strata_shard_load",
            "A led shard's load as of the last heartbeat, by kind (per-second rates, memtable bytes, WAL backlog records)",
        ),
        &["shard", "kind"],
    )
    .expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(g.clone()));
    g
});

/// A follower's WAL records behind the end of its shard's topic.
pub static FOLLOWER_LAG_RECORDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "strata_follower_lag_records",
        "WAL records a follower shard is behind the end of its topic (as of its last look)",
        &["shard"],
    )
});
/// How long a follower has been behind (0 when caught up).
pub static FOLLOWER_LAG_MS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "strata_follower_lag_ms",
        "Milliseconds a follower shard has been behind the end of its topic (0 when caught up)",
        &["shard"],
    )
});

#[allow(clippy::expect_used)]
fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(h.clone()));
    h
}

pub static ROWS_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_rows_written_total",
        "Rows acknowledged by the write path",
    )
});
pub static WRITE_BATCHES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_write_batches_total", "Write batches acknowledged"));
pub static WAL_GROUP_COMMITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_wal_group_commits_total",
        "WAL group commits (one fsync or produce each)",
    )
});
pub static WAL_RECORDS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_wal_records_total", "WAL records appended"));
pub static WAL_REPLAYED_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_wal_replayed_records_total",
        "WAL records replayed at startup",
    )
});
pub static FLUSHES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_flushes_total", "Memtable flushes completed"));
pub static FLUSH_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_flush_bytes_total",
        "Bytes of SSTs written by flushes",
    )
});
pub static FLUSH_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_flush_failures_total",
        "Memtable flushes that failed and will be retried",
    )
});
pub static FLUSH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_flush_duration_seconds",
        "Time to flush one memtable",
        vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    )
});
pub static HANDOVER_PAUSE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_handover_pause_seconds",
        "How long writes to tables handed to another shard (split, merge) were refused on the shard handing them over: drain, flush and handover commit",
        vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    )
});
pub static WAL_APPEND_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_wal_append_duration_seconds",
        "Time of one WAL group commit",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ],
    )
});
#[allow(clippy::expect_used)]
fn float_counter(name: &str, help: &str) -> prometheus::Counter {
    let c = prometheus::Counter::new(name, help).expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

pub static WRITE_STALLS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_write_stalls_total",
        "Writes that waited at the write buffer's hard limit",
    )
});
pub static WRITE_STALL_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_write_stall_timeouts_total",
        "Writes refused after waiting at the hard limit for the stall timeout",
    )
});
pub static WRITE_STALL_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    float_counter(
        "strata_write_stall_seconds_total",
        "Time writes spent waiting at the hard limit",
    )
});
pub static GC_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "strata_gc_pending_files",
        "Retired SST files waiting for deletion",
    )
});
pub static GC_DELETED_FILES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_gc_deleted_files_total", "Retired SST files deleted"));
pub static GC_ORPHANS_DELETED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_gc_orphans_deleted_total",
        "Orphan SST files (in no manifest) deleted",
    )
});
pub static TTL_EXPIRED_FILES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_ttl_expired_files_total",
        "SST files removed whole because all their rows expired",
    )
});
pub static COMPACTIONS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_compactions_total", "Compactions completed"));
pub static COMPACTION_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_compaction_failures_total",
        "Compactions that failed and will be retried",
    )
});
pub static COMPACTION_INPUT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_compaction_input_bytes_total",
        "Bytes of SSTs read by compactions",
    )
});
pub static COMPACTION_OUTPUT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_compaction_output_bytes_total",
        "Bytes of SSTs written by compactions",
    )
});
pub static COMPACTION_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_compaction_duration_seconds",
        "Time of one compaction",
        vec![0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0],
    )
});
pub static COMPACTION_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "strata_compaction_pending_tasks",
        "Tables waiting for a compaction slot",
    )
});
pub static FLUSH_PENDING: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("strata_flush_pending_tasks", "Flushes scheduled or running"));

pub static SST_META_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_sst_metadata_cache_hits_total",
        "SST footer lookups served from memory",
    )
});
pub static SST_META_CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_sst_metadata_cache_misses_total",
        "SST footer lookups that read the file",
    )
});

pub static MEMTABLE_BYTES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("strata_memtable_bytes", "Bytes held in memtables"));

/// Registers every metric, so that `/metrics` lists them all from the
/// start (a counter that never moved still says 0).
pub static SHARDS_FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_shards_fenced_total",
        "Shards that stopped writing because a newer owner took them over",
    )
});
pub static FOLLOWER_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_follower_reads_total",
        "Table reads served by a follower shard, once caught up with its WAL",
    )
});
pub static FOLLOWER_READS_BEHIND: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_follower_reads_behind_total",
        "Follower reads that went to the leader: the follower did not catch up within engine.follower_read_timeout",
    )
});
pub static MANIFEST_CONFLICTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_manifest_conflicts_total",
        "Manifest commits that lost a conditional put and reloaded the manifest",
    )
});
pub static MANIFEST_UNKNOWN_COMMITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_manifest_unknown_commits_total",
        "Manifest commits whose outcome the object store left unknown",
    )
});

pub fn register_all() {
    LazyLock::force(&FOLLOWER_LAG_RECORDS);
    LazyLock::force(&FOLLOWER_LAG_MS);
    LazyLock::force(&SHARDS_FENCED);
    LazyLock::force(&FOLLOWER_READS);
    LazyLock::force(&FOLLOWER_READS_BEHIND);
    LazyLock::force(&MANIFEST_CONFLICTS);
    LazyLock::force(&MANIFEST_UNKNOWN_COMMITS);
    LazyLock::force(&ROWS_WRITTEN);
    LazyLock::force(&WRITE_BATCHES);
    LazyLock::force(&WAL_GROUP_COMMITS);
    LazyLock::force(&WAL_RECORDS);
    LazyLock::force(&WAL_REPLAYED_RECORDS);
    LazyLock::force(&FLUSHES);
    LazyLock::force(&FLUSH_BYTES);
    LazyLock::force(&FLUSH_FAILURES);
    LazyLock::force(&FLUSH_SECONDS);
    LazyLock::force(&WAL_APPEND_SECONDS);
    LazyLock::force(&HANDOVER_PAUSE_SECONDS);
    LazyLock::force(&WRITE_STALLS);
    LazyLock::force(&WRITE_STALL_TIMEOUTS);
    LazyLock::force(&WRITE_STALL_SECONDS);
    LazyLock::force(&GC_PENDING);
    LazyLock::force(&GC_DELETED_FILES);
    LazyLock::force(&GC_ORPHANS_DELETED);
    LazyLock::force(&TTL_EXPIRED_FILES);
    LazyLock::force(&COMPACTIONS);
    LazyLock::force(&COMPACTION_FAILURES);
    LazyLock::force(&COMPACTION_INPUT_BYTES);
    LazyLock::force(&COMPACTION_OUTPUT_BYTES);
    LazyLock::force(&COMPACTION_SECONDS);
    LazyLock::force(&COMPACTION_PENDING);
    LazyLock::force(&FLUSH_PENDING);
    LazyLock::force(&SST_META_CACHE_HITS);
    LazyLock::force(&SST_META_CACHE_MISSES);
    LazyLock::force(&MEMTABLE_BYTES);
}
