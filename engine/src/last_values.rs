//! The last-value cache: the newest row of every series of a table, kept in
//! memory so that "the latest value of each series" (TSBS `lastpoint`,
//! dashboards' current-value panels) is answered without reading the table.
//!
//! A series is a distinct value of the primary key without the timestamp
//! (the tags). Every write applied to the memtable is folded in
//! ([`LastValues::fold`]): per series, the row with the largest (timestamp,
//! sequence) wins, so a later write of the same (series, time) replaces the
//! earlier one, as `OVERWRITE` tables do.
//!
//! On open, rows already in SSTs are not in the cache. The first query then
//! seeds it from a full scan of the table (rows at sequence 0). That is exact
//! even with writes racing the scan: every write since open is folded with
//! its real sequence, which wins a tie with a scanned row of the same
//! (series, time), and the scan sees everything older. A table with more
//! series than the cap ([`LastValues::new`]) stops caching; its queries then
//! fold a full scan each time.
//!
//! Rows are kept compactly: each fold keeps only the winning rows of the
//! batch (an Arrow `take`), and the kept batches are merged into one when
//! they hold more than twice the live rows.

use arrow::{
    array::{Array, ArrayRef, AsArray, UInt32Array},
    compute::{interleave, take_record_batch},
    datatypes::{SchemaRef, TimestampMillisecondType},
    record_batch::RecordBatch,
    row::{RowConverter, SortField},
};
use datafusion::common::{hash_map::Entry as MapEntry, HashMap};
use parking_lot::Mutex;

use crate::{schema::adapt_batch, table_meta::TableMeta, Error, Result};

/// Where a series' newest row is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ts: i64,
    seq: u64,
    batch: u32,
    row: u32,
}

/// One table's last-value cache.
#[derive(Debug)]
pub struct LastValues {
    max_series: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The series key columns (the primary key without the timestamp).
    key: Vec<String>,
    /// Bumped whenever the contents are thrown away, so that a seed that
    /// started before does not mark the cache complete.
    generation: u64,
    /// Holds every series of the table (seeded, or nothing was on disk).
    complete: bool,
    /// Too many series: nothing is cached or folded.
    disabled: bool,
    index: HashMap<Box<[u8]>, usize>,
    slots: Vec<Slot>,
    batches: Vec<RecordBatch>,
    batch_rows: usize,
}

/// What [`LastValues::snapshot`] found.
pub enum Snapshot {
    /// The newest row of every series, in the requested schema.
    Rows(RecordBatch),
    /// The cache must first be seeded from a scan (token for
    /// [`LastValues::finish_seed`]).
    NeedsSeed(u64),
    /// The table has too many series to cache.
    Disabled,
}

fn arrow_err(op: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |source| Error::Arrow {
        op,
        source: Box::new(source),
    }
}

/// The series key columns of a definition.
fn key_columns(meta: &TableMeta) -> impl Iterator<Item = &str> {
    let schema = meta.schema();
    schema
        .primary_key
        .iter()
        .filter(|&&i| i != schema.timestamp_index)
        .map(|&i| schema.columns[i].name.as_str())
}

fn key_names(meta: &TableMeta) -> Vec<String> {
    key_columns(meta).map(String::from).collect()
}

impl LastValues {
    /// A cache for a table of definition `meta`, holding at most
    /// `max_series` series (0 disables it). `complete` says the table has no
    /// rows outside what will be folded (no SSTs yet).
    pub fn new(meta: &TableMeta, max_series: usize, complete: bool) -> Self {
        Self {
            max_series,
            inner: Mutex::new(Inner {
                key: key_names(meta),
                generation: 0,
                complete,
                disabled: max_series == 0,
                index: HashMap::default(),
                slots: Vec::new(),
                batches: Vec::new(),
                batch_rows: 0,
            }),
        }
    }

    /// An uncapped, empty cache for one query's fold of a full scan.
    pub fn scratch(meta: &TableMeta) -> Self {
        Self::new(meta, usize::MAX, true)
    }

    /// Folds rows (in `meta`'s user schema) written at WAL `seq`. Never
    /// fails: on an error the cache forgets everything and reseeds at the
    /// next query.
    pub fn fold(&self, meta: &TableMeta, batch: &RecordBatch, seq: u64) {
        let mut inner = self.inner.lock();
        if inner.disabled {
            return;
        }
        // The key columns change only with a schema change: compare
        // without allocating, on the write path.
        if !inner.key.iter().map(String::as_str).eq(key_columns(meta)) {
            inner.reset(key_names(meta));
        }
        if let Err(e) = inner.fold(meta, batch, seq) {
            tracing::warn!(error = %e, "last-value cache reset after a failed update");
            let key = inner.key.clone();
            inner.reset(key);
            return;
        }
        if inner.slots.len() > self.max_series {
            tracing::info!(
                max_series = self.max_series,
                "last-value cache disabled for a table with more series than the cap"
            );
            let key = inner.key.clone();
            inner.reset(key);
            inner.disabled = true;
        }
    }

    /// The newest row of every series, in `target` (the table's current user
    /// schema), if the cache holds every series.
    pub fn snapshot(&self, target: &SchemaRef) -> Result<Snapshot> {
        let mut inner = self.inner.lock();
        if inner.disabled {
            return Ok(Snapshot::Disabled);
        }
        if !inner.complete {
            return Ok(Snapshot::NeedsSeed(inner.generation));
        }
        inner.compact(target)?;
        let batch = match inner.batches.first() {
            Some(b) => adapt_batch(b, target)?,
            None => RecordBatch::new_empty(target.clone()),
        };
        Ok(Snapshot::Rows(batch))
    }

    /// Folds rows read from the table by a seeding scan (sequence 0: older
    /// than anything folded since the table opened).
    pub fn seed(&self, meta: &TableMeta, batch: &RecordBatch) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner.disabled {
            return Ok(());
        }
        inner.fold(meta, batch, 0)
    }

    /// Marks the cache complete after a seeding scan that started at
    /// `generation`. Returns false when the cache was reset meanwhile.
    pub fn finish_seed(&self, generation: u64) -> bool {
        let mut inner = self.inner.lock();
        if inner.generation != generation || inner.disabled {
            return false;
        }
        inner.complete = true;
        true
    }

    /// Forgets everything: the next query seeds the cache from a scan (a
    /// promoted follower's table holds rows that were never folded here).
    pub fn invalidate(&self) {
        let mut inner = self.inner.lock();
        let key = inner.key.clone();
        inner.reset(key);
    }

    /// How many series are cached.
    pub fn series(&self) -> usize {
        self.inner.lock().slots.len()
    }
}

impl Inner {
    fn reset(&mut self, key: Vec<String>) {
        self.key = key;
        self.generation += 1;
        self.complete = false;
        self.index = HashMap::default();
        self.slots = Vec::new();
        self.batches = Vec::new();
        self.batch_rows = 0;
    }

    fn fold(&mut self, meta: &TableMeta, batch: &RecordBatch, seq: u64) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let schema = batch.schema();
        let column = |name: &str| -> Result<ArrayRef> {
            schema
                .index_of(name)
                .map(|i| batch.column(i).clone())
                .map_err(arrow_err("finding a column for the last-value cache"))
        };
        let ts_name = &meta.schema().timestamp_column().name;
        let ts = column(ts_name)?;
        let ts = ts
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| Error::Internal("timestamp column has the wrong type".into()))?;
        let key_cols = self
            .key
            .iter()
            .map(|k| column(k))
            .collect::<Result<Vec<_>>>()?;
        let rows = if key_cols.is_empty() {
            None
        } else {
            let converter = RowConverter::new(
                key_cols
                    .iter()
                    .map(|c| SortField::new(c.data_type().clone()))
                    .collect(),
            )
            .map_err(arrow_err("encoding series keys"))?;
            Some(
                converter
                    .convert_columns(&key_cols)
                    .map_err(arrow_err("encoding series keys"))?,
            )
        };
        let key_of = |i: usize| -> &[u8] {
            match &rows {
                Some(r) => r.row(i).data(),
                None => &[],
            }
        };

        // This batch's newest row per series; a later row wins a tie.
        let mut best: HashMap<&[u8], usize> = HashMap::default();
        for i in 0..n {
            if ts.is_null(i) {
                continue;
            }
            match best.entry(key_of(i)) {
                MapEntry::Occupied(mut e) => {
                    if ts.value(i) >= ts.value(*e.get()) {
                        e.insert(i);
                    }
                }
                MapEntry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }

        // Those newer than what the cache holds.
        let mut take: Vec<u32> = Vec::new();
        let mut targets: Vec<(Option<usize>, &[u8])> = Vec::new();
        for (k, i) in best {
            let (t, s) = (ts.value(i), seq);
            match self.index.get(k) {
                Some(&slot) => {
                    let old = self.slots[slot];
                    if (t, s) >= (old.ts, old.seq) {
                        take.push(i as u32);
                        targets.push((Some(slot), k));
                    }
                }
                None => {
                    take.push(i as u32);
                    targets.push((None, k));
                }
            }
        }
        if take.is_empty() {
            return Ok(());
        }
        let kept = take_record_batch(batch, &UInt32Array::from(take.clone()))
            .map_err(arrow_err("keeping the newest rows"))?;
        let b = self.batches.len() as u32;
        for (row, ((target, k), &i)) in targets.into_iter().zip(&take).enumerate() {
            let slot = Slot {
                ts: ts.value(i as usize),
                seq,
                batch: b,
                row: row as u32,
            };
            match target {
                Some(s) => self.slots[s] = slot,
                None => {
                    self.index.insert(Box::from(k), self.slots.len());
                    self.slots.push(slot);
                }
            }
        }
        self.batch_rows += kept.num_rows();
        let target = kept.schema();
        self.batches.push(kept);
        if self.batch_rows > 2 * self.slots.len() + 1024 {
            self.compact(&target)?;
        }
        Ok(())
    }

    /// Merges the kept batches into one holding exactly the live rows, in
    /// `target`'s schema.
    fn compact(&mut self, target: &SchemaRef) -> Result<()> {
        if self.batches.len() == 1 && self.batches[0].schema().fields() == target.fields() {
            return Ok(());
        }
        if self.slots.is_empty() {
            self.batches.clear();
            self.batch_rows = 0;
            return Ok(());
        }
        let adapted = self
            .batches
            .iter()
            .map(|b| adapt_batch(b, target))
            .collect::<Result<Vec<_>>>()?;
        let indices: Vec<(usize, usize)> = self
            .slots
            .iter()
            .map(|s| (s.batch as usize, s.row as usize))
            .collect();
        let columns = (0..target.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    adapted.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &indices).map_err(arrow_err("compacting the last-value cache"))
            })
            .collect::<Result<Vec<_>>>()?;
        let merged = RecordBatch::try_new(target.clone(), columns)
            .map_err(arrow_err("compacting the last-value cache"))?;
        for (row, slot) in self.slots.iter_mut().enumerate() {
            slot.batch = 0;
            slot.row = row as u32;
        }
        self.batch_rows = merged.num_rows();
        self.batches = vec![merged];
        Ok(())
    }
}
