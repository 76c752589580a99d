//! Engine tests that need a whole engine: queries racing compaction, TTL
//! expiry and garbage collection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use arrow::{
    array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray},
    util::pretty::pretty_format_batches,
};
use datafusion::{
    physical_plan::collect,
    prelude::{SessionConfig, SessionContext},
};
use object_store::{local::LocalFileSystem, ObjectStore};
use strata_wal::memory::MemoryWal;

use crate::{
    catalog::TableEntry,
    options::TableOptions,
    provider::StrataTableProvider,
    schema::{ColumnSchema, ColumnType, TableSchema},
    table::Table,
    AlterTable, ClusterCatalog, Engine, EngineConfig,
};

fn col(name: &str, t: ColumnType, tag: bool) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        column_type: t,
        is_tag: tag,
        nullable: true,
        comment: String::new(),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    engine: Arc<Engine>,
}

async fn harness(cfg: EngineConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
    let engine = Engine::open(cfg, store, Arc::new(MemoryWal::new()))
        .await
        .unwrap();
    Harness {
        _dir: dir,
        root,
        engine,
    }
}

fn no_background() -> EngineConfig {
    EngineConfig {
        gc_grace: Duration::ZERO,
        gc_interval: Duration::from_secs(3600),
        orphan_min_age: Duration::ZERO,
        compaction_min_files: 1000,
        ..Default::default()
    }
}

/// The tests' table: a tag `host`, `ts`, `n` and `v`.
fn schema() -> TableSchema {
    TableSchema::try_new(
        vec![
            col("host", ColumnType::String, true),
            col("ts", ColumnType::Timestamp, false),
            col("n", ColumnType::Int64, false),
            col("v", ColumnType::Double, false),
        ],
        "ts",
        &[],
    )
    .unwrap()
}

async fn create(engine: &Engine, name: &str, options: TableOptions) -> Arc<Table> {
    engine
        .create_table("public", name, schema(), options, false)
        .await
        .unwrap()
        .unwrap();
    engine.table("public", name).unwrap()
}

fn rows(table: &Table, host: &str, from: i64, count: i64, ts_base: i64) -> RecordBatch {
    RecordBatch::try_new(
        table.arrow_schema(),
        vec![
            Arc::new(StringArray::from(vec![host; count as usize])),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (from..from + count).map(|i| ts_base + i),
            )),
            Arc::new(Int64Array::from_iter_values(from..from + count)),
            Arc::new(Float64Array::from_iter_values(
                (from..from + count).map(|i| i as f64),
            )),
        ],
    )
    .unwrap()
}

fn session(engine: &Engine, table: &Arc<Table>) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.runtime_env()
        .register_object_store(engine.object_store_url().as_ref(), engine.object_store());
    ctx.register_table(
        table.name(),
        Arc::new(StrataTableProvider::new(table.clone())),
    )
    .unwrap();
    ctx
}

/// The rows of table `name`.
async fn count(engine: &Engine, name: &str) -> i64 {
    count_of(engine, &engine.table("public", name).unwrap()).await
}

async fn count_of(engine: &Engine, table: &Arc<Table>) -> i64 {
    let got = session(engine, table)
        .sql(&format!("SELECT count(*) AS n FROM {}", table.name()))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    got[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn local_store(root: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(root).unwrap())
}

async fn fault_harness() -> (
    tempfile::TempDir,
    Arc<strata_sst::fault::FaultStore>,
    Arc<dyn ObjectStore>,
) {
    let dir = tempfile::tempdir().unwrap();
    let inner = local_store(dir.path());
    let faults = strata_sst::fault::FaultStore::new(inner.clone());
    (dir, faults, inner)
}

/// A cluster catalog that refuses DDL: tests install entries directly.
#[derive(Debug)]
pub(super) struct NoDdl;

#[async_trait::async_trait]
impl ClusterCatalog for NoDdl {
    async fn create_database(&self, _: &str, _: bool) -> crate::Result<bool> {
        Err(crate::Error::Internal("no DDL here".into()))
    }
    async fn drop_database(&self, _: &str, _: bool) -> crate::Result<bool> {
        Err(crate::Error::Internal("no DDL here".into()))
    }
    async fn create_table(
        &self,
        _: &str,
        _: &str,
        _: TableSchema,
        _: TableOptions,
        _: Option<&crate::partition::PartitionSpec>,
        _: bool,
    ) -> crate::Result<Option<Vec<TableEntry>>> {
        Err(crate::Error::Internal("no DDL here".into()))
    }
    async fn alter_table(&self, _: &TableEntry, _: &TableEntry) -> crate::Result<Vec<TableEntry>> {
        Err(crate::Error::Internal("no DDL here".into()))
    }
    async fn drop_table(&self, _: &str, _: &str, _: bool) -> crate::Result<Vec<TableEntry>> {
        Err(crate::Error::Internal("no DDL here".into()))
    }
}

fn parquet_files(root: &std::path::Path) -> usize {
    fn walk(d: &std::path::Path, n: &mut usize) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(root, &mut n);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_query_keeps_its_files_through_compaction_expiry_and_gc() {
    let h = harness(no_background()).await;
    let now = chrono::Utc::now().timestamp_millis();
    let table = create(&h.engine, "t", TableOptions::default()).await;
    for i in 0..4 {
        table
            .write(rows(&table, "a", i * 100, 100, now - 3_600_000))
            .await
            .unwrap();
        h.engine.flush_table(&table).await.unwrap();
    }
    assert_eq!(parquet_files(&h.root), 4);

    let ctx = session(&h.engine, &table);
    let df = ctx
        .sql("SELECT count(*) AS n, sum(v) AS s FROM t")
        .await
        .unwrap();
    let plan = df.create_physical_plan().await.unwrap();

    // Compaction replaces the 4 files with 1; GC with zero grace runs.
    let report = h.engine.compact_table(&table).await.unwrap();
    assert_eq!((report.input_files, report.output_files), (4, 1));
    h.engine.maintain(false).await.unwrap();
    assert_eq!(
        parquet_files(&h.root),
        5,
        "the planned query still pins the 4 inputs"
    );

    // TTL expiry removes the new file from the table too.
    h.engine
        .alter_table(
            "public",
            "t",
            AlterTable::ModifySettings(vec![("ttl".into(), "1m".into())]),
        )
        .await
        .unwrap();
    assert_eq!(table.expire().await.unwrap(), 1);
    h.engine.maintain(false).await.unwrap();

    // The old plan reads its pinned files and gets the old answer.
    let got = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let text = pretty_format_batches(&got).unwrap().to_string();
    assert!(text.contains("| 400 | 79800.0 |"), "{text}");

    // A new query sees the current state: everything expired.
    let now_rows = ctx
        .sql("SELECT count(*) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(pretty_format_batches(&now_rows)
        .unwrap()
        .to_string()
        .contains("| 0 "));

    // Once the plan is gone, GC deletes every retired file.
    drop(plan);
    drop(got);
    h.engine.maintain(false).await.unwrap();
    assert_eq!(parquet_files(&h.root), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_never_miss_a_file_while_compaction_and_gc_run() {
    let cfg = EngineConfig {
        compaction_min_files: 2,
        ..no_background()
    };
    let h = harness(cfg).await;
    let table = create(
        &h.engine,
        "s",
        TableOptions {
            update_mode: crate::options::UpdateMode::Append,
            ..Default::default()
        },
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicI64::new(0));

    let writer = {
        let (engine, table, stop, written) = (
            h.engine.clone(),
            table.clone(),
            stop.clone(),
            written.clone(),
        );
        tokio::spawn(async move {
            let mut next = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                table.write(rows(&table, "w", next, 50, 0)).await.unwrap();
                next += 50;
                written.store(next, std::sync::atomic::Ordering::Release);
                engine.flush_table(&table).await.unwrap();
            }
        })
    };
    let maintainer = {
        let (engine, table, stop) = (h.engine.clone(), table.clone(), stop.clone());
        tokio::spawn(async move {
            let mut compactions = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                compactions += engine.compact_table(&table).await.unwrap().tasks;
                engine.maintain(true).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            compactions
        })
    };
    let ctx = session(&h.engine, &table);
    let mut last = 0i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut queries = 0;
    while std::time::Instant::now() < deadline {
        let before = written.load(std::sync::atomic::Ordering::Acquire);
        let out = ctx
            .sql("SELECT count(*), count(DISTINCT n) FROM s")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("a query failed while compaction and GC ran: {e}"));
        let col = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        let distinct = out[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(col, distinct, "no row is seen twice");
        assert!(
            col >= before && col >= last,
            "no acknowledged row is missing ({col} < {before})"
        );
        last = col;
        queries += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    writer.await.unwrap();
    let compactions = maintainer.await.unwrap();
    assert!(
        compactions > 0 && queries > 10,
        "compactions={compactions} queries={queries}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_over_its_memory_budget_fails_retryably_and_nothing_changes() {
    let cfg = EngineConfig {
        compaction_memory_budget: 64 * 1024,
        ..no_background()
    };
    let h = harness(cfg).await;
    let table = create(&h.engine, "b", TableOptions::default()).await;
    for i in 0..3 {
        table
            .write(rows(&table, "a", i * 1000, 1000, 0))
            .await
            .unwrap();
        h.engine.flush_table(&table).await.unwrap();
    }
    let err = h.engine.compact_table(&table).await.unwrap_err();
    assert!(
        matches!(err, crate::Error::CompactionOverBudget { .. }),
        "{err}"
    );
    assert!(err.is_retryable(), "{err}");
    assert_eq!(table.version().ssts.len(), 3, "nothing was replaced");
    // The engine goes on serving.
    let ctx = session(&h.engine, &table);
    let out = ctx
        .sql("SELECT count(*) FROM b")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(pretty_format_batches(&out)
        .unwrap()
        .to_string()
        .contains("3000"));
}

/// The rows of `last_values` for `table`, as "host ts n" strings, sorted.
async fn last_values(table: &Arc<Table>) -> Vec<String> {
    use arrow::array::AsArray;
    let ctx = SessionContext::new();
    ctx.register_table(
        "lv",
        Arc::new(crate::provider::LastValuesProvider::new(table.clone())),
    )
    .unwrap();
    // A scan of a table that must be seeded reads the table itself.
    ctx.runtime_env()
        .register_object_store(table.ctx.store_url.as_ref(), table.ctx.store.clone());
    let batches = ctx
        .sql("SELECT host, CAST(ts AS BIGINT) AS ts, n FROM lv ORDER BY host")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let host = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let host = host.as_string::<i32>();
        let ts = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let n = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            out.push(format!("{} {} {}", host.value(i), ts.value(i), n.value(i)));
        }
    }
    out
}

fn one_row(table: &Table, host: &str, ts: i64, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        table.arrow_schema(),
        vec![
            Arc::new(StringArray::from(vec![host])),
            Arc::new(TimestampMillisecondArray::from(vec![ts])),
            Arc::new(Int64Array::from(vec![n])),
            Arc::new(Float64Array::from(vec![n as f64])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn last_values_keep_the_newest_row_per_series_through_late_writes_and_overwrites() {
    let h = harness(no_background()).await;
    let table = create(&h.engine, "t", TableOptions::default()).await;
    table.write(rows(&table, "a", 0, 10, 1000)).await.unwrap();
    table.write(rows(&table, "b", 0, 5, 1000)).await.unwrap();
    assert_eq!(last_values(&table).await, ["a 1009 9", "b 1004 4"]);

    // An older row changes nothing; a newer one of the same time replaces.
    table.write(one_row(&table, "a", 1003, 77)).await.unwrap();
    table.write(one_row(&table, "a", 1009, 99)).await.unwrap();
    table.write(one_row(&table, "c", 5, 1)).await.unwrap();
    assert_eq!(
        last_values(&table).await,
        ["a 1009 99", "b 1004 4", "c 5 1"]
    );
    // The same answer after a flush: the cache does not care where rows are.
    table.flush().await.unwrap();
    assert_eq!(
        last_values(&table).await,
        ["a 1009 99", "b 1004 4", "c 5 1"]
    );
    assert_eq!(table.last_values().series(), 3);
}

#[tokio::test]
async fn last_values_are_seeded_from_ssts_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
    let wal = Arc::new(MemoryWal::new());

    let engine = Engine::open(no_background(), store.clone(), wal.clone())
        .await
        .unwrap();
    let table = create(&engine, "t", TableOptions::default()).await;
    table.write(rows(&table, "a", 0, 10, 1000)).await.unwrap();
    table.write(rows(&table, "b", 0, 5, 1000)).await.unwrap();
    table.flush().await.unwrap();
    // In the WAL only: replayed, and folded, on open.
    table.write(one_row(&table, "b", 1004, 40)).await.unwrap();
    engine.close().await.unwrap();
    drop(table);
    drop(engine);

    let engine = Engine::open(no_background(), store, wal).await.unwrap();
    let table = engine.table("public", "t").unwrap();
    // A write racing the seed: newer than what the SSTs hold.
    table.write(one_row(&table, "a", 1009, 90)).await.unwrap();
    assert_eq!(last_values(&table).await, ["a 1009 90", "b 1004 40"]);
    assert_eq!(table.last_values().series(), 2);
    table.write(one_row(&table, "c", 1, 1)).await.unwrap();
    assert_eq!(
        last_values(&table).await,
        ["a 1009 90", "b 1004 40", "c 1 1"]
    );
}

#[tokio::test]
async fn last_values_compact_adapt_to_new_columns_and_fall_back_past_the_series_cap() {
    let h = harness(EngineConfig {
        last_value_cache_max_series: 700,
        ..no_background()
    })
    .await;
    let table = create(&h.engine, "t", TableOptions::default()).await;
    // 600 series written four times: the kept rows pass twice the live
    // ones, so the cache merges them.
    let hosts: Vec<String> = (0..600).map(|i| format!("h{i:03}")).collect();
    for round in 0..4i64 {
        let batch = RecordBatch::try_new(
            table.arrow_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(&hosts)),
                Arc::new(TimestampMillisecondArray::from(vec![round * 10; 600])),
                Arc::new(Int64Array::from(vec![round; 600])),
                Arc::new(Float64Array::from(vec![round as f64; 600])),
            ],
        )
        .unwrap();
        table.write(batch).await.unwrap();
    }
    let got = last_values(&table).await;
    assert_eq!(got.len(), 600);
    assert!(got.iter().all(|r| r.ends_with(" 30 3")), "{got:?}");

    // A new column reads as NULL for rows cached before it.
    h.engine
        .alter_table(
            "public",
            "t",
            AlterTable::AddColumns(vec![col("extra", ColumnType::String, false)]),
        )
        .await
        .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table(
        "lv",
        Arc::new(crate::provider::LastValuesProvider::new(table.clone())),
    )
    .unwrap();
    let nulls = ctx
        .sql("SELECT count(*) FROM lv WHERE extra IS NULL")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = pretty_format_batches(&nulls).unwrap().to_string();
    assert!(text.contains("| 600 "), "{text}");

    // Past the cap the cache stops; answers come from a scan, still right.
    let more: Vec<String> = (600..800).map(|i| format!("h{i:03}")).collect();
    let schema = table.arrow_schema();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(&more)),
            Arc::new(TimestampMillisecondArray::from(vec![50; 200])),
            Arc::new(Int64Array::from(vec![5; 200])),
            Arc::new(Float64Array::from(vec![5.0; 200])),
            Arc::new(StringArray::from(vec![Some("x"); 200])),
        ],
    )
    .unwrap();
    table.write(batch).await.unwrap();
    assert_eq!(table.last_values().series(), 0);
    let got = last_values(&table).await;
    assert_eq!(got.len(), 800);
    assert_eq!(got[0], "h000 30 3");
    assert_eq!(got[799], "h799 50 5");
}

mod fencing;
mod follower;
mod handover;
mod reader;
