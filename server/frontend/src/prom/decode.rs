//! A remote-write body decoded straight into Arrow columns, one batch per
//! physical table ([`super::samples_table`], [`super::series_table`]).
//!
//! The protobuf is read in place ([`super::wire`]): a label is a `&str`
//! slice of the body, a series' labels go into one reused vector, and a
//! sample is appended to the Arrow builders of its partition as it is read.
//! Nothing is allocated per label or per sample; a series' label JSON is
//! built only for a series the caller has not written yet.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use arrow::{
    array::{ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};

use super::{
    partition, samples_table, series_id, series_table,
    wire::{wrong_type, Wire, WireResult, FIXED64, LEN, VARINT},
    PARTITIONS,
};

/// A decoded remote-write body, ready to write.
#[derive(Debug)]
pub struct Decoded {
    /// `(table, rows)`: the samples tables with samples, and the series
    /// tables with series not known to be written.
    pub tables: Vec<(String, RecordBatch)>,
    /// The series in it whose labels were parsed, for the caller's cache
    /// of series already written.
    pub series: Vec<u64>,
    /// Their label sets, for [`LabelSets::insert`] once written.
    pub label_sets: Vec<(Box<[u8]>, Derived)>,
    pub samples: usize,
}

/// The Arrow schema of the rows of a physical table: `metric`, `series`,
/// `ts` and `last` (`value` for samples, `labels` for series), matched to
/// the table's own schema by column name when written.
fn rows_schema(last: Field) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("metric", DataType::Utf8, false),
        Field::new("series", DataType::UInt64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        last,
    ]))
}

#[derive(Default)]
struct Rows {
    metric: StringBuilder,
    series: UInt64Builder,
    ts: TimestampMillisecondBuilder,
    value: Float64Builder,
    labels: StringBuilder,
}

impl Rows {
    fn len(&self) -> usize {
        arrow::array::ArrayBuilder::len(&self.series)
    }

    /// The batch of `metric`, `series`, `ts` and the table's last column
    /// (`value` of a samples table, `labels` of a series table).
    fn finish(mut self, last: Field, column: ArrayRef) -> Result<RecordBatch, String> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.metric.finish()),
            Arc::new(self.series.finish()),
            Arc::new(self.ts.finish()),
            column,
        ];
        RecordBatch::try_new(rows_schema(last), columns).map_err(|e| e.to_string())
    }
}

/// What the decoder derives from a series' label bytes: its id and
/// partition, and where its metric name lies in those bytes (so that a hit
/// borrows nothing from the cache).
#[derive(Debug, Clone, Copy)]
pub struct Derived {
    id: u64,
    partition: u8,
    metric_at: u32,
    metric_len: u32,
}

/// Label sets already written to one database: the exact bytes of a
/// series' labels as a client sent them (every `Label` field, in order,
/// before any other field) → what the decoder derived from them. Prometheus
/// sends a series' labels byte for byte the same in every request, so a
/// series seen before costs one hash and one comparison of its bytes
/// instead of checking UTF-8, sorting its labels and hashing them again.
/// Only label sets that decoded without error and whose rows were written
/// are kept, so a hit means the series' row exists.
#[derive(Debug, Default)]
pub struct LabelSets {
    map: HashMap<Box<[u8]>, Derived, foldhash::fast::RandomState>,
    bytes: usize,
}

/// What an entry costs beyond its key bytes (the map's slot, the key's
/// allocation), counted in [`LabelSets::bytes`].
const ENTRY_OVERHEAD: usize = 64;

/// The most label-set bytes (with [`ENTRY_OVERHEAD`]) one request hands
/// to the cache: a body of very many small new series neither holds their
/// copies beyond this across its write nor floods the cache at once; the
/// series past it are cached when they are next sent.
const MAX_NEW_LABEL_BYTES: usize = 16 << 20;

impl LabelSets {
    /// About the memory the entries hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<Derived> {
        self.map.get(key).copied()
    }

    pub fn insert(&mut self, sets: Vec<(Box<[u8]>, Derived)>) {
        for (key, derived) in sets {
            let len = key.len() + ENTRY_OVERHEAD;
            if self.map.insert(key, derived).is_none() {
                self.bytes += len;
            }
        }
    }
}

/// What the decoder asks about the series written before.
pub trait Written {
    /// What a label set (its bytes, [`LabelSets`]) was decoded to, if its
    /// rows were written.
    fn label_set(&mut self, key: &[u8]) -> Option<Derived>;
    /// Whether the series' row was written.
    fn series(&mut self, id: u64) -> bool;
}

/// Nothing written before, or only the series `known` says.
struct Known<F>(F);

impl<F: Fn(u64) -> bool> Written for Known<F> {
    fn label_set(&mut self, _: &[u8]) -> Option<Derived> {
        None
    }
    fn series(&mut self, id: u64) -> bool {
        (self.0)(id)
    }
}

impl Written for (&LabelSets, &HashSet<u64>) {
    fn label_set(&mut self, key: &[u8]) -> Option<Derived> {
        self.0.get(key)
    }
    fn series(&mut self, id: u64) -> bool {
        self.1.contains(&id)
    }
}

/// One series as read from the wire, before its labels are checked.
#[derive(Default)]
struct SeriesBuf<'a> {
    /// Each `Label` field's bytes, parsed only when the set is not known.
    raw_labels: Vec<&'a [u8]>,
    labels: Vec<(&'a str, &'a str)>,
    samples: Vec<(i64, f64)>,
    histograms: bool,
    /// The length of the message's leading `Label` fields, and whether no
    /// `Label` field follows another field (then that prefix is the whole
    /// label set, the key of [`LabelSets`]).
    prefix: usize,
    contiguous: bool,
}

impl<'a> SeriesBuf<'a> {
    fn clear(&mut self) {
        self.raw_labels.clear();
        self.labels.clear();
        self.samples.clear();
        self.histograms = false;
        self.prefix = 0;
        self.contiguous = true;
    }

    /// Reads one `prompb.TimeSeries` message; its labels' contents are
    /// read by [`SeriesBuf::parse_labels`].
    fn read(&mut self, body: &'a [u8]) -> WireResult<()> {
        self.clear();
        let mut w = Wire::new(body);
        let mut other = false;
        while !w.done() {
            match w.key()? {
                (1, LEN) => {
                    self.raw_labels.push(w.bytes()?);
                    if other {
                        self.contiguous = false;
                    } else {
                        self.prefix = w.pos();
                    }
                    continue;
                }
                (2, LEN) => self.samples.push(read_sample(w.bytes()?)?),
                (4, LEN) => {
                    w.bytes()?;
                    self.histograms = true;
                }
                (f @ (1 | 2 | 4), wire) => return Err(wrong_type("TimeSeries", f, wire)),
                (_, wire) => w.skip(wire)?,
            }
            other = true;
        }
        Ok(())
    }

    fn parse_labels(&mut self) -> WireResult<()> {
        for raw in &self.raw_labels {
            self.labels.push(read_label(raw)?);
        }
        Ok(())
    }
}

fn read_label(body: &[u8]) -> WireResult<(&str, &str)> {
    let (mut name, mut value) = ("", "");
    let mut w = Wire::new(body);
    while !w.done() {
        match w.key()? {
            (1, LEN) => name = w.str()?,
            (2, LEN) => value = w.str()?,
            (f @ (1 | 2), wire) => return Err(wrong_type("Label", f, wire)),
            (_, wire) => w.skip(wire)?,
        }
    }
    Ok((name, value))
}

fn read_sample(body: &[u8]) -> WireResult<(i64, f64)> {
    let (mut ts, mut value) = (0i64, 0f64);
    let mut w = Wire::new(body);
    while !w.done() {
        match w.key()? {
            (1, FIXED64) => value = f64::from_bits(w.fixed64()?),
            // int64: two's complement in a varint.
            (2, VARINT) => ts = w.varint()? as i64,
            (f @ (1 | 2), wire) => return Err(wrong_type("Sample", f, wire)),
            (_, wire) => w.skip(wire)?,
        }
    }
    Ok((ts, value))
}

/// Appends the labels' JSON object (`{"name":"value",…}`, in label order,
/// as `serde_json` writes a sorted map) to `out`.
fn labels_json(labels: &[(&str, &str)], out: &mut String) {
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing a &str to a String cannot fail.
        out.push_str(&serde_json::Value::from(*k).to_string());
        out.push(':');
        out.push_str(&serde_json::Value::from(*v).to_string());
    }
    out.push('}');
}

/// Decodes a decompressed `WriteRequest` (see [`super::decompress`]).
/// `known` says whether a series' row was written already (then it is not
/// written again).
pub fn decode(raw: &[u8], known: impl Fn(u64) -> bool) -> Result<Decoded, String> {
    decode_with(raw, &mut Known(known))
}

/// [`decode`], asking `written` about the series written before: a series
/// whose label bytes are known is not parsed again, and its row is known
/// to be written.
pub fn decode_with(raw: &[u8], written: &mut impl Written) -> Result<Decoded, String> {
    let not_a_request = |e: String| format!("the body is not a Prometheus WriteRequest: {e}");
    let mut samples_rows: Vec<Rows> = (0..PARTITIONS).map(|_| Rows::default()).collect();
    let mut series_rows: Vec<Rows> = (0..PARTITIONS).map(|_| Rows::default()).collect();
    let mut new_series: HashSet<u64> = HashSet::new();
    let mut series_ids = Vec::new();
    let mut label_sets = Vec::new();
    let mut label_set_bytes = 0usize;
    let mut samples = 0usize;
    let mut json = String::new();
    let mut buf = SeriesBuf::default();
    // The rows repeat a series' metric name for every sample: a long name
    // with many samples could expand a small body into gigabytes (and past
    // Arrow's 2 GiB per string column). The rows may take four times the
    // body, plus 64 MiB.
    let budget = raw.len().saturating_mul(4).saturating_add(64 << 20);
    let mut row_bytes = 0usize;
    let too_large = |budget: usize| {
        format!("the request expands to more than {budget} bytes of rows (a long metric name repeated for many samples)")
    };
    let mut w = Wire::new(raw);
    let mut i = 0usize;
    while !w.done() {
        let body = match w.key().map_err(not_a_request)? {
            (1, LEN) => w.bytes().map_err(not_a_request)?,
            (1, wire) => return Err(not_a_request(wrong_type("WriteRequest", 1, wire))),
            (_, wire) => {
                w.skip(wire).map_err(not_a_request)?;
                continue;
            }
        };
        let n = i;
        i += 1;
        buf.read(body).map_err(not_a_request)?;
        if buf.histograms {
            return Err(format!(
                "series {n}: native histograms are not supported; send classic histograms"
            ));
        }
        let key = &body[..buf.prefix];
        let cacheable = buf.contiguous && !key.is_empty();
        let hit = if cacheable {
            written.label_set(key).and_then(|d| {
                let at = d.metric_at as usize;
                let metric = key.get(at..at.checked_add(d.metric_len as usize)?)?;
                Some((
                    d.id,
                    d.partition as usize,
                    std::str::from_utf8(metric).ok()?,
                ))
            })
        } else {
            None
        };
        let (id, p, metric) = match hit {
            Some(hit) => hit,
            None => {
                buf.parse_labels().map_err(not_a_request)?;
                let labels = &mut buf.labels;
                labels.retain(|(_, v)| !v.is_empty());
                labels.sort_unstable();
                if labels.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(format!("series {n}: a label name repeats"));
                }
                let Some(&(_, metric)) = labels.iter().find(|(k, _)| *k == "__name__") else {
                    return Err(format!("series {n}: no __name__ label"));
                };
                if buf.samples.is_empty() {
                    continue;
                }
                let id = series_id(labels);
                let p = partition(metric) as usize;
                if !written.series(id) && new_series.insert(id) {
                    json.clear();
                    labels_json(labels, &mut json);
                    row_bytes = row_bytes.saturating_add(json.len() + metric.len() + 24);
                    let rows = &mut series_rows[p];
                    rows.metric.append_value(metric);
                    rows.series.append_value(id);
                    rows.ts.append_value(0);
                    rows.labels.append_value(&json);
                }
                series_ids.push(id);
                // The metric name is a slice of the label bytes: its place
                // there is what the cache keeps.
                let at = (metric.as_ptr() as usize).wrapping_sub(key.as_ptr() as usize);
                let in_key = key.get(at..at.saturating_add(metric.len()));
                let cost = key.len() + ENTRY_OVERHEAD;
                if cacheable
                    && in_key == Some(metric.as_bytes())
                    && label_set_bytes + cost <= MAX_NEW_LABEL_BYTES
                {
                    if let (Ok(metric_at), Ok(metric_len)) =
                        (u32::try_from(at), u32::try_from(metric.len()))
                    {
                        let derived = Derived {
                            id,
                            partition: p as u8,
                            metric_at,
                            metric_len,
                        };
                        label_sets.push((Box::from(key), derived));
                        label_set_bytes += cost;
                    }
                }
                (id, p, metric)
            }
        };
        row_bytes = row_bytes.saturating_add((metric.len() + 28).saturating_mul(buf.samples.len()));
        if row_bytes > budget {
            return Err(too_large(budget));
        }
        let rows = &mut samples_rows[p];
        for &(ts, value) in &buf.samples {
            samples += 1;
            rows.metric.append_value(metric);
            rows.series.append_value(id);
            rows.ts.append_value(ts);
            rows.value.append_value(value);
        }
    }
    let mut tables = Vec::new();
    for (p, (mut s, mut l)) in samples_rows.into_iter().zip(series_rows).enumerate() {
        let p = p as u64;
        if s.len() > 0 {
            let value: ArrayRef = Arc::new(s.value.finish());
            let last = Field::new("value", DataType::Float64, false);
            tables.push((samples_table(p), s.finish(last, value)?));
        }
        if l.len() > 0 {
            let labels: ArrayRef = Arc::new(l.labels.finish());
            let last = Field::new("labels", DataType::Utf8, false);
            tables.push((series_table(p), l.finish(last, labels)?));
        }
    }
    Ok(Decoded {
        tables,
        series: series_ids,
        label_sets,
        samples,
    })
}
