//! Prometheus remote read (`POST /prom/v1/read`, `/api/v1/read`), so that
//! Prometheus can use Strata as long-term storage. Reads the layout of RFC
//! 0003 through SQL, so it works on any instance of a cluster.
//!
//! Only the `SAMPLES` response type is produced (Prometheus's default and
//! fallback); a request that accepts only streamed chunks is refused.

use std::collections::BTreeMap;

use arrow::{
    array::{Array, AsArray},
    datatypes::{DataType, Float64Type, Int64Type, UInt64Type},
};
use prost::Message;

use crate::{
    error::{Error, Result},
    prom::{self, Label, Sample, TimeSeries},
    sql::{Output, QueryEngine},
};

#[derive(Clone, PartialEq, Message)]
pub struct ReadRequest {
    #[prost(message, repeated, tag = "1")]
    pub queries: Vec<Query>,
    /// 0 = SAMPLES, 1 = STREAMED_XOR_CHUNKS.
    #[prost(int32, repeated, tag = "2")]
    pub accepted_response_types: Vec<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Query {
    #[prost(int64, tag = "1")]
    pub start_timestamp_ms: i64,
    #[prost(int64, tag = "2")]
    pub end_timestamp_ms: i64,
    #[prost(message, repeated, tag = "3")]
    pub matchers: Vec<LabelMatcher>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LabelMatcher {
    /// 0 `=`, 1 `!=`, 2 `=~`, 3 `!~`.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<QueryResult>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryResult {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// A compiled matcher. Regexes are anchored, as in Prometheus.
enum Matcher {
    Eq(String, String),
    Ne(String, String),
    Re(String, regex::Regex),
    Nre(String, regex::Regex),
}

impl Matcher {
    fn compile(m: &LabelMatcher) -> Result<Self> {
        let re = |v: &str| {
            regex::Regex::new(&format!("^(?:{v})$")).map_err(|e| {
                Error::InvalidArgument(format!("remote read: bad regex for {}: {e}", m.name))
            })
        };
        Ok(match m.r#type {
            0 => Matcher::Eq(m.name.clone(), m.value.clone()),
            1 => Matcher::Ne(m.name.clone(), m.value.clone()),
            2 => Matcher::Re(m.name.clone(), re(&m.value)?),
            3 => Matcher::Nre(m.name.clone(), re(&m.value)?),
            t => {
                return Err(Error::InvalidArgument(format!(
                    "remote read: unknown matcher type {t}"
                )))
            }
        })
    }

    /// A missing label matches as the empty string.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |n: &str| labels.get(n).map_or("", String::as_str);
        match self {
            Matcher::Eq(n, v) => get(n) == v,
            Matcher::Ne(n, v) => get(n) != v,
            Matcher::Re(n, r) => r.is_match(get(n)),
            Matcher::Nre(n, r) => !r.is_match(get(n)),
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn rows(query: &QueryEngine, db: &str, sql: &str) -> Result<Vec<arrow::array::RecordBatch>> {
    match query.execute(db, sql).await? {
        Output::Rows { batches, .. } => Ok(batches),
        Output::AffectedRows(_) => Ok(Vec::new()),
    }
}

fn column(
    batch: &arrow::array::RecordBatch,
    i: usize,
    t: &DataType,
) -> Result<arrow::array::ArrayRef> {
    arrow::compute::cast(batch.column(i), t)
        .map_err(|e| Error::Internal(format!("remote read: {e}")))
}

/// Every series of a partition (of one metric, when given): id and labels.
pub(crate) async fn scan_series(
    query: &QueryEngine,
    db: &str,
    partition: u64,
    metric: Option<&str>,
) -> Result<Vec<(u64, BTreeMap<String, String>)>> {
    let table = prom::series_table(partition);
    if query.engine().entry(db, &table).is_err() {
        return Ok(Vec::new());
    }
    let filter = metric
        .map(|m| format!(" WHERE metric = {}", quote(m)))
        .unwrap_or_default();
    let mut out = Vec::new();
    for b in rows(
        query,
        db,
        &format!("SELECT series, labels FROM {table}{filter}"),
    )
    .await?
    {
        let ids = column(&b, 0, &DataType::UInt64)?;
        let ids = ids.as_primitive::<UInt64Type>();
        let labels = column(&b, 1, &DataType::Utf8)?;
        let labels = labels.as_string::<i32>();
        for i in 0..b.num_rows() {
            if labels.is_null(i) {
                continue;
            }
            if let Ok(set) = serde_json::from_str::<BTreeMap<String, String>>(labels.value(i)) {
                out.push((ids.value(i), set));
            }
        }
    }
    Ok(out)
}

/// The raw samples, in time order, of every series that `keep` accepts,
/// with timestamps in `[start_ms, end_ms]`. Reading one metric (`metric`)
/// touches only its partition. Values are returned as stored, so
/// Prometheus's stale markers (a special NaN) come back too.
pub(crate) async fn select(
    query: &QueryEngine,
    db: &str,
    metric: Option<&str>,
    keep: &(dyn Fn(&BTreeMap<String, String>) -> bool + Sync),
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<(BTreeMap<String, String>, Vec<Sample>)>> {
    let partitions: Vec<u64> = match metric {
        Some(m) => vec![prom::partition(m)],
        None => (0..prom::PARTITIONS).collect(),
    };
    let engine = query.engine();
    let mut out = Vec::new();
    for p in partitions {
        let (samples_table, series_table) = (prom::samples_table(p), prom::series_table(p));
        if engine.entry(db, &series_table).is_err() || engine.entry(db, &samples_table).is_err() {
            continue;
        }
        let mut found: BTreeMap<u64, BTreeMap<String, String>> = scan_series(query, db, p, metric)
            .await?
            .into_iter()
            .filter(|(_, set)| keep(set))
            .collect();
        if found.is_empty() {
            continue;
        }
        let mut samples: BTreeMap<u64, Vec<Sample>> = BTreeMap::new();
        let ids: Vec<u64> = found.keys().copied().collect();
        for chunk in ids.chunks(500) {
            let list = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let mut sql = format!(
                "SELECT series, CAST(ts AS BIGINT), value FROM {samples_table} \
                 WHERE ts >= {start_ms} AND ts <= {end_ms} AND series IN ({list})"
            );
            if let Some(m) = metric {
                sql.push_str(&format!(" AND metric = {}", quote(m)));
            }
            for b in rows(query, db, &sql).await? {
                let s = column(&b, 0, &DataType::UInt64)?;
                let s = s.as_primitive::<UInt64Type>();
                let t = column(&b, 1, &DataType::Int64)?;
                let t = t.as_primitive::<Int64Type>();
                let v = column(&b, 2, &DataType::Float64)?;
                let v = v.as_primitive::<Float64Type>();
                for i in 0..b.num_rows() {
                    if v.is_null(i) {
                        continue;
                    }
                    samples.entry(s.value(i)).or_default().push(Sample {
                        value: v.value(i),
                        timestamp: t.value(i),
                    });
                }
            }
        }
        for (id, mut points) in samples {
            points.sort_by_key(|s| s.timestamp);
            points.dedup_by_key(|s| s.timestamp);
            out.push((found.remove(&id).unwrap_or_default(), points));
        }
    }
    Ok(out)
}

/// Answers one query.
async fn answer(query: &QueryEngine, db: &str, q: &Query) -> Result<QueryResult> {
    let matchers = q
        .matchers
        .iter()
        .map(Matcher::compile)
        .collect::<Result<Vec<_>>>()?;
    let metric = q
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && m.r#type == 0)
        .map(|m| m.value.clone());
    let keep = |set: &BTreeMap<String, String>| matchers.iter().all(|m| m.matches(set));
    let mut out: Vec<TimeSeries> = select(
        query,
        db,
        metric.as_deref(),
        &keep,
        q.start_timestamp_ms,
        q.end_timestamp_ms,
    )
    .await?
    .into_iter()
    .map(|(labels, samples)| TimeSeries {
        labels: labels
            .into_iter()
            .map(|(name, value)| Label { name, value })
            .collect(),
        samples,
        histograms: Vec::new(),
    })
    .collect();
    out.sort_by(|a, b| {
        let key = |t: &TimeSeries| {
            t.labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect::<Vec<_>>()
        };
        key(a).cmp(&key(b))
    });
    Ok(QueryResult { timeseries: out })
}

/// Decodes a snappy-compressed `ReadRequest`, answers it, and returns the
/// snappy-compressed `ReadResponse`.
pub async fn read(query: &QueryEngine, db: &str, body: &[u8]) -> Result<Vec<u8>> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "remote read: the body is not snappy-compressed: {e}"
            ))
        })?;
    let req = ReadRequest::decode(raw.as_slice()).map_err(|e| {
        Error::InvalidArgument(format!(
            "remote read: the body is not a Prometheus ReadRequest: {e}"
        ))
    })?;
    if !req.accepted_response_types.is_empty() && !req.accepted_response_types.contains(&0) {
        return Err(Error::Unsupported(
            "remote read: only the SAMPLES response type is supported".to_string(),
        ));
    }
    let mut results = Vec::with_capacity(req.queries.len());
    for q in &req.queries {
        results.push(answer(query, db, q).await?);
    }
    snap::raw::Encoder::new()
        .compress_vec(&ReadResponse { results }.encode_to_vec())
        .map_err(|e| Error::Internal(format!("remote read: compressing the answer: {e}")))
}
