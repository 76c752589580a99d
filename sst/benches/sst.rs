//! SST benchmarks: writing and reading back a sorted SST through the object
//! store (local filesystem).
//!
//! Run: `cargo bench -p strata-sst --bench sst`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use arrow::{
    array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use object_store::{local::LocalFileSystem, path::Path, ObjectStore};
use strata_sst::{
    reader::read_all,
    writer::{write_sst, SstWriteOptions},
    SstId, SEQ_COLUMN,
};

const HOSTS: usize = 100;
const POINTS: usize = 1000;

fn data() -> (SchemaRef, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("usage", DataType::Float64, true),
        Field::new(SEQ_COLUMN, DataType::UInt64, false),
    ]));
    // Sorted by (host, ts), as flushes produce it.
    let n = HOSTS * POINTS;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| format!("host-{:04}", i / POINTS))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                (0..n)
                    .map(|i| (i % POINTS) as i64 * 10_000)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                (0..n).map(|i| (i % 97) as f64 * 1.5).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(
                (0..n).map(|i| i as u64).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    (schema, batch)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let (schema, batch) = data();
    let opts = SstWriteOptions {
        timestamp_column: "ts".into(),
        tag_columns: vec!["host".into()],
        primary_key: vec!["host".into(), "ts".into()],
        ..Default::default()
    };
    let path = Path::from("bench/sst/1.parquet");

    let mut group = c.benchmark_group("sst");
    group.throughput(Throughput::Elements((HOSTS * POINTS) as u64));
    group.sample_size(10);
    group.bench_function("write_100k_rows", |b| {
        b.iter(|| {
            runtime
                .block_on(write_sst(
                    store.clone(),
                    &path,
                    SstId(1),
                    schema.clone(),
                    std::slice::from_ref(&batch),
                    &opts,
                ))
                .unwrap()
        })
    });
    group.bench_function("read_100k_rows", |b| {
        b.iter(|| runtime.block_on(read_all(store.clone(), &path)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
