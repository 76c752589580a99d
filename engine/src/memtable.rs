//! The memtable: columnar, append-only chunks of rows in the storage schema
//! (user columns plus `__seq`). Inserts append an Arrow batch; sorting and
//! deduplication happen at flush and, for queries, at scan time.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    time::Instant,
};

use arrow::{
    array::{make_array, ArrayData, AsArray, MutableArrayData},
    compute::concat_batches,
    datatypes::{SchemaRef, TimestampMillisecondType, UInt64Type},
    record_batch::RecordBatch,
};
use parking_lot::Mutex;
use strata_sst::TimeRange;

use crate::{table_meta::TableMeta, Error, Result};

/// Small chunks are merged once this many accumulate.
const MERGE_SMALL_CHUNKS: usize = 32;
/// A chunk with fewer rows than this, and fewer bytes than
/// [`SMALL_CHUNK_BYTES`], counts as small.
const SMALL_CHUNK_ROWS: usize = 4096;
/// See [`SMALL_CHUNK_ROWS`]; bounds what one merge copies.
const SMALL_CHUNK_BYTES: usize = 64 << 10;

/// The bytes a batch's rows occupy: what the memtable and the write buffer
/// count (see [`compact_if_wasteful`] for rows that keep more alive).
///
/// Not `RecordBatch::get_array_memory_size`: that adds up each buffer's
/// whole allocation, and the columns of a batch decoded from Arrow IPC (a
/// write forwarded from another instance) all slice one message body, so it
/// counted that body once per column. A partition's memtable then reached
/// its `write_buffer_size` at a twentieth of its real size and flushed tiny
/// SSTs every second (seen as a 2-instance ingest spending its CPU on
/// flushes and compactions).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            let data = c.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// The bytes of memory `batch` keeps alive (each distinct allocation its
/// buffers, null bitmaps and child arrays included, point into, once), and
/// how many buffers it has. The bytes are usually close to [`batch_bytes`];
/// much more when the batch slices a larger allocation, as one decoded from
/// an Arrow IPC body with bytes no column refers to does.
fn retained(batch: &RecordBatch) -> (usize, usize) {
    fn walk(data: &ArrayData, seen: &mut HashMap<usize, usize>, buffers: &mut usize) {
        for buffer in data.buffers() {
            let key = buffer.data_ptr().as_ptr() as usize;
            let size = seen.entry(key).or_default();
            *size = (*size).max(buffer.capacity());
            *buffers += 1;
        }
        if let Some(nulls) = data.nulls() {
            let buffer = nulls.buffer();
            let size = seen.entry(buffer.data_ptr().as_ptr() as usize).or_default();
            *size = (*size).max(buffer.capacity());
            *buffers += 1;
        }
        for child in data.child_data() {
            walk(child, seen, buffers);
        }
    }
    let (mut seen, mut buffers) = (HashMap::new(), 0);
    for column in batch.columns() {
        walk(&column.to_data(), &mut seen, &mut buffers);
    }
    (seen.values().sum(), buffers)
}

/// `batch`, or, when it keeps alive more than three times the memory its
/// rows occupy plus 64 bytes per buffer (builders round buffers up to 64
/// bytes and may leave twice what they hold; a client's Arrow IPC body
/// padded with bytes no column uses, or a few rows sliced from a large
/// request, keep far more), a copy of its rows in buffers of their own; and
/// the bytes a memtable counts for it. Never fails: a batch that cannot be
/// copied is returned as it is, counted at what it keeps alive.
pub fn compact_if_wasteful(batch: RecordBatch) -> (RecordBatch, usize) {
    let used = batch_bytes(&batch);
    let (kept, buffers) = retained(&batch);
    if kept <= 3 * used + 64 * buffers {
        return (batch, used);
    }
    match compact(&batch) {
        Ok(copy) => {
            let used = batch_bytes(&copy);
            (copy, used)
        }
        Err(_) => (batch, kept.max(used)),
    }
}

/// `batch` with each column copied into buffers of its own, so that it no
/// longer keeps a larger allocation alive.
fn compact(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| {
            let data = c.to_data();
            let mut copy = MutableArrayData::new(vec![&data], false, data.len());
            copy.try_extend(0, 0, data.len())
                .map_err(|source| Error::Arrow {
                    op: "copying a memtable chunk",
                    source: Box::new(source),
                })?;
            Ok(make_array(copy.freeze()))
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(batch.schema(), columns).map_err(|source| Error::Arrow {
        op: "copying a memtable chunk",
        source: Box::new(source),
    })
}

/// A memtable's chunks: small ones (few rows and bytes, from small writes)
/// are kept apart and merged once [`MERGE_SMALL_CHUNKS`] accumulate, so that
/// scans do not walk thousands of one-row chunks, and what small chunks keep
/// alive beyond what they count stays bounded. Rows carry their sequence
/// numbers, so the order of chunks does not matter.
#[derive(Debug, Default)]
struct Chunks {
    large: Vec<RecordBatch>,
    small: Vec<RecordBatch>,
}

impl Chunks {
    fn push(&mut self, schema: &SchemaRef, batch: RecordBatch, bytes: usize) {
        if batch.num_rows() >= SMALL_CHUNK_ROWS || bytes >= SMALL_CHUNK_BYTES {
            self.large.push(batch);
            return;
        }
        self.small.push(batch);
        if self.small.len() < MERGE_SMALL_CHUNKS {
            return;
        }
        // At most 32 chunks of under 64 KiB each: a bounded copy. One that
        // fails leaves the chunks as they are (the rows are in the WAL and
        // must stay here), moved with the large ones so that it is not
        // retried at every insert.
        match concat_batches(schema, &self.small) {
            Ok(merged) => {
                self.small.clear();
                if merged.num_rows() < SMALL_CHUNK_ROWS && batch_bytes(&merged) < SMALL_CHUNK_BYTES
                {
                    self.small.push(merged);
                } else {
                    self.large.push(merged);
                }
            }
            Err(_) => self.large.append(&mut self.small),
        }
    }
}

/// One memtable of one table.
#[derive(Debug)]
pub struct Memtable {
    /// The table definition the rows were written under.
    meta: std::sync::Arc<TableMeta>,
    schema: SchemaRef,
    chunks: Mutex<Chunks>,
    bytes: AtomicUsize,
    rows: AtomicUsize,
    min_offset: AtomicU64,
    max_offset: AtomicU64,
    min_ts: AtomicI64,
    max_ts: AtomicI64,
    created: Instant,
    first_write: Mutex<Option<Instant>>,
}

impl Memtable {
    pub fn new(meta: std::sync::Arc<TableMeta>) -> Self {
        Self {
            schema: meta.storage_schema.clone(),
            meta,
            chunks: Mutex::new(Chunks::default()),
            bytes: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
            min_offset: AtomicU64::new(u64::MAX),
            max_offset: AtomicU64::new(0),
            min_ts: AtomicI64::new(i64::MAX),
            max_ts: AtomicI64::new(i64::MIN),
            created: Instant::now(),
            first_write: Mutex::new(None),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The table definition the rows were written under.
    pub fn meta(&self) -> &std::sync::Arc<TableMeta> {
        &self.meta
    }

    /// Appends rows written at WAL `offset` (already in the storage schema,
    /// with `__seq` filled in), whose timestamps span `time_range`.
    pub fn insert(&self, batch: RecordBatch, offset: u64, time_range: TimeRange) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::Internal(
                "memtable insert with a mismatched schema".to_string(),
            ));
        }
        // Every path (a write, a replay, a follower) inserts here: rows
        // that slice a much larger allocation are copied out (only their
        // own bytes), so that what is counted is what is held.
        let (batch, size) = compact_if_wasteful(batch);
        let rows = batch.num_rows();
        {
            let mut chunks = self.chunks.lock();
            chunks.push(&self.schema, batch, size);
        }
        self.first_write.lock().get_or_insert_with(Instant::now);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.min_offset.fetch_min(offset, Ordering::AcqRel);
        self.max_offset.fetch_max(offset, Ordering::AcqRel);
        self.min_ts.fetch_min(time_range.start, Ordering::AcqRel);
        self.max_ts
            .fetch_max(time_range.end.saturating_sub(1), Ordering::AcqRel);
        Ok(())
    }

    /// The chunks as they are now; later inserts do not change the result.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let chunks = self.chunks.lock();
        chunks.large.iter().chain(&chunks.small).cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.load(Ordering::Acquire) == 0
    }

    /// Approximate memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    /// The smallest WAL offset of any row, if any.
    pub fn min_offset(&self) -> Option<u64> {
        let v = self.min_offset.load(Ordering::Acquire);
        (v != u64::MAX).then_some(v)
    }

    /// The largest WAL offset of any row, if any.
    pub fn max_offset(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.max_offset.load(Ordering::Acquire))
    }

    /// The timestamps of its rows, if any.
    pub fn time_range(&self) -> Option<TimeRange> {
        (!self.is_empty()).then(|| {
            TimeRange::new(
                self.min_ts.load(Ordering::Acquire),
                self.max_ts.load(Ordering::Acquire).saturating_add(1),
            )
        })
    }

    /// How long ago the first row arrived.
    pub fn age(&self) -> std::time::Duration {
        self.first_write
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    /// A copy holding only the rows at WAL offset `from` or above (a
    /// follower drops what its leader flushed). `None` when no row is left.
    pub fn retain_from(&self, from: u64) -> Result<Option<Memtable>> {
        let arrow_err = |source| Error::Arrow {
            op: "filtering a memtable",
            source: Box::new(source),
        };
        let kept = Memtable::new(self.meta.clone());
        let seq_index = self.schema.fields().len() - 1;
        let ts_index = self.meta.entry.schema.timestamp_index;
        for chunk in self.snapshot() {
            let seq = chunk
                .column(seq_index)
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| Error::Internal("memtable __seq is not u64".into()))?;
            let keep = arrow::compute::kernels::cmp::gt_eq(
                seq,
                &arrow::array::UInt64Array::new_scalar(from),
            )
            .map_err(arrow_err)?;
            let chunk = arrow::compute::filter_record_batch(&chunk, &keep).map_err(arrow_err)?;
            if chunk.num_rows() == 0 {
                continue;
            }
            let seq = chunk
                .column(seq_index)
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| Error::Internal("memtable __seq is not u64".into()))?;
            let ts = chunk
                .column(ts_index)
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| Error::Internal("memtable timestamp has the wrong type".into()))?;
            let (Some(lo), Some(hi)) = (arrow::compute::min(ts), arrow::compute::max(ts)) else {
                continue;
            };
            let (Some(first), Some(last)) = (arrow::compute::min(seq), arrow::compute::max(seq))
            else {
                continue;
            };
            // The rows go in once; the statistics cover both ends of the
            // chunk's offsets.
            kept.insert(chunk, first, TimeRange::new(lo, hi.saturating_add(1)))?;
            kept.max_offset.fetch_max(last, Ordering::AcqRel);
        }
        if let Some(t) = *self.first_write.lock() {
            *kept.first_write.lock() = Some(t);
        }
        Ok((!kept.is_empty()).then_some(kept))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use arrow::{
        array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray, UInt64Array},
        datatypes::{DataType, Field, Schema},
        ipc::{reader::StreamReader, writer::StreamWriter},
    };

    use super::*;

    fn two_column_meta() -> Arc<TableMeta> {
        use crate::schema::ColumnType;
        TableMeta::for_test(&[("ts", ColumnType::Timestamp), ("v", ColumnType::Double)])
    }

    /// `rows` rows in `meta`'s storage schema, sent through Arrow IPC (as
    /// a client's or a forwarding instance's write arrives) and decoded.
    fn decoded_from_ipc(meta: &TableMeta, rows: usize) -> RecordBatch {
        let batch = RecordBatch::try_new(
            meta.storage_schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(
                    (0..rows as i64).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    (0..rows).map(|i| i as f64).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(vec![1u64; rows])),
            ],
        )
        .unwrap();
        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, &batch.schema()).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    fn retained_bytes(batch: &RecordBatch) -> usize {
        retained(batch).0
    }

    /// A few rows that keep a much larger allocation alive (here a slice
    /// of a decoded 1M-row IPC body; a client can send a body padded with
    /// bytes no column refers to) are copied out on insert: the memtable
    /// counts what it holds, and does not hold 24 MiB for 10 rows.
    #[test]
    fn rows_that_slice_a_larger_allocation_are_copied_out() {
        let meta = two_column_meta();
        let big = decoded_from_ipc(&meta, 1_000_000);
        let few = big.slice(500, 10);
        assert!(
            retained_bytes(&few) >= 24_000_000,
            "{}",
            retained_bytes(&few)
        );
        let m = Memtable::new(meta.clone());
        m.insert(few, 1, TimeRange::new(0, 1_000_000)).unwrap();
        drop(big);
        let held: usize = m.snapshot().iter().map(retained_bytes).sum();
        assert!(held < 4096, "the memtable holds {held} bytes for 10 rows");
        assert!(
            m.bytes() <= held && m.bytes() >= 240,
            "counted {}",
            m.bytes()
        );
        let chunk = &m.snapshot()[0];
        let v = chunk
            .column(1)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(
            v.values().to_vec(),
            (500..510).map(f64::from).collect::<Vec<_>>()
        );
    }

    /// Small chunks are merged even with large ones between them, so that
    /// the little each may keep alive beyond what it counts stays bounded;
    /// no row is lost or duplicated by the merges.
    #[test]
    fn small_chunks_are_merged_wherever_they_are() {
        let meta = two_column_meta();
        let m = Memtable::new(meta.clone());
        let mut rows = 0;
        for i in 0..200 {
            let n = if i % 16 == 15 { SMALL_CHUNK_ROWS } else { 1 };
            m.insert(decoded_from_ipc(&meta, n), i, TimeRange::new(0, n as i64))
                .unwrap();
            rows += n;
            let small = m.chunks.lock().small.len();
            assert!(small < MERGE_SMALL_CHUNKS, "{small} small chunks");
            let all = m.snapshot().len();
            assert!(
                all <= 1 + i as usize / 16 + MERGE_SMALL_CHUNKS,
                "{all} chunks"
            );
        }
        let total: usize = m.snapshot().iter().map(|c| c.num_rows()).sum();
        assert_eq!((total, m.rows()), (rows, rows));
    }

    /// A batch built by builders (buffers rounded up to 64 bytes) is
    /// counted at what its rows occupy and not copied, however small.
    #[test]
    fn a_small_built_batch_is_neither_copied_nor_overcounted() {
        let meta = two_column_meta();
        let batch = RecordBatch::try_new(
            meta.storage_schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![1i64])),
                Arc::new(Float64Array::from(vec![1.0])),
                Arc::new(UInt64Array::from(vec![1u64])),
            ],
        )
        .unwrap();
        let ptr = batch.column(1).to_data().buffers()[0].as_ptr();
        let m = Memtable::new(meta.clone());
        m.insert(batch, 1, TimeRange::new(1, 2)).unwrap();
        assert_eq!(m.bytes(), 24);
        assert_eq!(
            m.snapshot()[0].column(1).to_data().buffers()[0].as_ptr(),
            ptr
        );
    }

    /// A whole decoded IPC body is kept as it is, without a copy.
    #[test]
    fn a_whole_ipc_body_is_not_copied() {
        let meta = two_column_meta();
        let batch = decoded_from_ipc(&meta, 100_000);
        let ptr = batch.column(1).to_data().buffers()[0].as_ptr();
        let m = Memtable::new(meta.clone());
        m.insert(batch, 1, TimeRange::new(0, 100_000)).unwrap();
        assert_eq!(
            m.snapshot()[0].column(1).to_data().buffers()[0].as_ptr(),
            ptr
        );
    }

    /// A batch decoded from Arrow IPC counts what its rows occupy, as the
    /// same batch built in memory does, not its message body once per column.
    #[test]
    fn a_batch_decoded_from_ipc_counts_its_rows_once() {
        let n = 10_000;
        let mut fields = vec![Field::new("host", DataType::Utf8, false)];
        let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(StringArray::from(
            (0..n)
                .map(|i| format!("host_{}", i % 100))
                .collect::<Vec<_>>(),
        ))];
        for c in 0..20 {
            fields.push(Field::new(format!("f{c}"), DataType::Float64, false));
            columns.push(Arc::new(Float64Array::from(
                (0..n).map(|i| i as f64 * 0.5).collect::<Vec<_>>(),
            )));
        }
        fields.push(Field::new("ts", DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from(
            (0..n as i64).collect::<Vec<_>>(),
        )));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let local = batch_bytes(&batch);

        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, &batch.schema()).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let decoded: Vec<RecordBatch> = StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let remote = batch_bytes(&decoded[0]);
        // 21 columns sharing one body: the old count was ~21x.
        assert!(
            decoded[0].get_array_memory_size() > 10 * local,
            "the decoded columns share one body"
        );
        assert!(
            remote <= local + local / 10 && remote + remote / 10 >= local,
            "decoded {remote} bytes vs {local} built in memory"
        );
    }
}
