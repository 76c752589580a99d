//! Memtable benchmarks: inserting write batches, and the sort + dedup that
//! flushes and OVERWRITE scans run over a memtable.
//!
//! Run: `cargo bench -p strata-engine --bench memtable`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use arrow::{
    array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array},
    datatypes::SchemaRef,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata_engine::{
    catalog::TableEntry,
    memtable::Memtable,
    options::TableOptions,
    schema::{ColumnSchema, ColumnType, TableSchema},
    sort::sort_and_dedup,
    table::TableMeta,
};
use strata_sst::{ShardId, TableId, TimeRange};

const HOSTS: usize = 100;
const POINTS: usize = 1000;

/// A table `name` of `(column, type, is_tag)` columns, keyed by `ts`.
fn table(id: u64, name: &str, columns: &[(&str, ColumnType, bool)]) -> Arc<TableMeta> {
    let columns = columns
        .iter()
        .map(|&(name, column_type, is_tag)| ColumnSchema {
            name: name.into(),
            column_type,
            is_tag,
            nullable: true,
            comment: String::new(),
        })
        .collect();
    let schema = TableSchema::try_new(columns, "ts", &[]).unwrap();
    TableMeta::new(TableEntry {
        id: TableId(id),
        database: "public".into(),
        name: name.into(),
        schema,
        options: TableOptions::default(),
        shard: ShardId(0),
        created_at_ms: 0,
        partition: None,
        partition_of: None,
        revision: 0,
        home: None,
    })
}

fn meta() -> Arc<TableMeta> {
    table(
        1,
        "cpu",
        &[
            ("host", ColumnType::String, true),
            ("ts", ColumnType::Timestamp, false),
            ("usage", ColumnType::Double, false),
        ],
    )
}

/// One write: every host's point at time `t`, as the shard writer sees it.
fn write_batch(schema: &SchemaRef, t: usize) -> RecordBatch {
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("host-{h:04}")).collect();
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(hosts)),
            Arc::new(TimestampMillisecondArray::from(vec![
                t as i64 * 10_000;
                HOSTS
            ])),
            Arc::new(Float64Array::from(
                (0..HOSTS).map(|h| (h * t) as f64).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(vec![t as u64; HOSTS])),
        ],
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let meta = meta();
    let schema = meta.storage_schema.clone();
    let batches: Vec<RecordBatch> = (0..POINTS).map(|t| write_batch(&schema, t)).collect();
    let rows = (HOSTS * POINTS) as u64;

    let mut group = c.benchmark_group("memtable");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(10);
    group.bench_function("insert_100k_rows_in_1k_writes", |b| {
        b.iter_batched(
            || Memtable::new(meta.clone()),
            |m| {
                for (t, batch) in batches.iter().enumerate() {
                    m.insert(batch.clone(), t as u64, TimeRange::new(0, 1))
                        .unwrap();
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    let filled = Memtable::new(meta.clone());
    for (t, batch) in batches.iter().enumerate() {
        filled
            .insert(batch.clone(), t as u64, TimeRange::new(0, 1))
            .unwrap();
    }
    let snapshot = filled.snapshot();
    let key = meta.schema().primary_key.clone();
    let seq = meta.schema().seq_index();
    group.bench_function("sort_dedup_100k_rows", |b| {
        b.iter(|| sort_and_dedup(&schema, &snapshot, &key, seq, true).unwrap())
    });
    group.finish();

    // The Prometheus layout (RFC 0003): key (metric, series, ts), rows
    // arriving as remote write sends them: each request a slice of the
    // series, every series' samples in time order, series in hash order.
    let prom = prom_meta();
    let schema = prom.storage_schema.clone();
    let batches = prom_writes(&schema);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let key = prom.schema().primary_key.clone();
    let seq = prom.schema().seq_index();
    let mut group = c.benchmark_group("memtable_prom");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(10);
    group.bench_function("sort_dedup_prom_layout", |b| {
        b.iter(|| sort_and_dedup(&schema, &batches, &key, seq, true).unwrap())
    });
    group.finish();
}

const PROM_SERIES: u64 = 20_000;
const PROM_SAMPLES: i64 = 10;
const PROM_METRICS: u64 = 100;

fn prom_meta() -> Arc<TableMeta> {
    table(
        2,
        "prom_samples_0",
        &[
            ("metric", ColumnType::String, true),
            ("series", ColumnType::UInt64, true),
            ("ts", ColumnType::Timestamp, false),
            ("value", ColumnType::Double, false),
        ],
    )
}

/// 200k samples in writes of 1,000 series × 10 samples; series ids are
/// scattered (a hash), metric names shared by 200 series each.
fn prom_writes(schema: &SchemaRef) -> Vec<RecordBatch> {
    let per_write = 1_000u64;
    (0..PROM_SERIES / per_write)
        .map(|w| {
            let ids: Vec<u64> = (w * per_write..(w + 1) * per_write).collect();
            let n = ids.len() * PROM_SAMPLES as usize;
            let mut metric = Vec::with_capacity(n);
            let mut series = Vec::with_capacity(n);
            let mut ts = Vec::with_capacity(n);
            for &id in &ids {
                let hashed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                for t in 0..PROM_SAMPLES {
                    metric.push(format!("metric_{:03}_total", id % PROM_METRICS));
                    series.push(hashed);
                    ts.push(t * 15_000);
                }
            }
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(metric)),
                    Arc::new(UInt64Array::from(series)),
                    Arc::new(TimestampMillisecondArray::from(ts)),
                    Arc::new(Float64Array::from(vec![1.0; n])),
                    Arc::new(UInt64Array::from(vec![w; n])),
                ],
            )
            .unwrap()
        })
        .collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
