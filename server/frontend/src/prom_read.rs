//! Prometheus remote read (`POST /prom/v1/read`, `/api/v1/read`), so that
//! Prometheus can use Strata as long-term storage. Reads the layout of RFC
//! 0003 through SQL, so it works on any instance of a cluster.
//!
//! Only the `SAMPLES` response type is produced (Prometheus's default and
//! fallback); a request that accepts only streamed chunks is refused.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use arrow::{
    array::{Array, AsArray},
    datatypes::{DataType, Float64Type, Int64Type, UInt64Type},
};
use datafusion::scalar::ScalarValue;
use promql_parser::label::{MatchOp, Matcher};
use prost::Message;

use crate::{
    error::{Error, Result},
    prom::{self, Label, Sample, TimeSeries},
    sql::{cast_binder, Output, QueryEngine},
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

/// Compiles a remote-read matcher into PromQL's own (`promql_parser`'s
/// `Matcher`, which PromQL selectors and `match[]` use too). A regex is
/// compiled with the client bounds ([`strata_promql::limits::client_regex`]) and
/// anchored, as in Prometheus.
fn compile(m: &LabelMatcher) -> Result<Matcher> {
    let re = |v: &str| {
        strata_promql::limits::client_regex(
            &format!("^(?:{v})$"),
            &format!("remote read: the matcher of {}", m.name),
        )
    };
    let op = match m.r#type {
        0 => MatchOp::Equal,
        1 => MatchOp::NotEqual,
        2 => MatchOp::Re(re(&m.value)?),
        3 => MatchOp::NotRe(re(&m.value)?),
        t => {
            return Err(Error::InvalidArgument(format!(
                "remote read: unknown matcher type {t}"
            )))
        }
    };
    Ok(Matcher {
        op,
        name: m.name.clone(),
        value: m.value.clone(),
    })
}

/// A statement's text and the values of its `$n` placeholders: what a
/// request names (a metric, a time range, series ids) is bound as a value
/// on the plan, never pasted into the SQL.
struct Statement {
    sql: String,
    params: Vec<ScalarValue>,
}

impl Statement {
    fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// Binds `v` to the next placeholder, returning its name (`$3`).
    fn bind(&mut self, v: ScalarValue) -> String {
        self.params.push(v);
        format!("${}", self.params.len())
    }

    /// Appends ` AND `/` WHERE ` (whichever comes next) and a condition.
    fn and(&mut self, cond: &str) {
        let word = if self.sql.contains(" WHERE ") {
            " AND "
        } else {
            " WHERE "
        };
        self.sql.push_str(word);
        self.sql.push_str(cond);
    }

    /// `series IN ($n, …)` over `ids`.
    fn series_in(&mut self, ids: &[u64]) {
        let list: Vec<String> = ids
            .iter()
            .map(|&id| self.bind(ScalarValue::UInt64(Some(id))))
            .collect();
        self.and(&format!("series IN ({})", list.join(", ")));
    }

    /// `metric = $n`, when a metric is named.
    fn metric(&mut self, metric: Option<&str>) {
        if let Some(m) = metric {
            let p = self.bind(ScalarValue::Utf8(Some(m.to_string())));
            self.and(&format!("metric = {p}"));
        }
    }
}

async fn rows(
    query: &QueryEngine,
    db: &str,
    statement: Statement,
) -> Result<Vec<arrow::array::RecordBatch>> {
    let bind = cast_binder(statement.params);
    match query.execute_bound(db, &statement.sql, bind).await? {
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

/// A label set, shared.
pub use crate::prom::Labels;

/// Every series of a partition (of one metric, when given): id and labels.
/// Reads the ids, then the labels of the ids not in the label cache.
pub async fn scan_series(
    query: &QueryEngine,
    db: &str,
    partition: u64,
    metric: Option<&str>,
) -> Result<Vec<(u64, Labels)>> {
    let table = prom::series_table(partition);
    if query.engine().entry(db, &table).is_err() {
        return Ok(Vec::new());
    }
    let mut all = Statement::new(format!("SELECT series FROM {table}"));
    all.metric(metric);
    let mut ids = Vec::new();
    for b in rows(query, db, all).await? {
        let col = column(&b, 0, &DataType::UInt64)?;
        ids.extend(col.as_primitive::<UInt64Type>().iter().flatten());
    }
    ids.sort_unstable();
    ids.dedup();
    let (mut out, missing) = query.prom_labels().get_all(&ids);
    let mut parsed = Vec::with_capacity(missing.len());
    for chunk in missing.chunks(1000) {
        let mut labels_of = Statement::new(format!("SELECT series, labels FROM {table}"));
        labels_of.metric(metric);
        labels_of.series_in(chunk);
        for b in rows(query, db, labels_of).await? {
            let ids = column(&b, 0, &DataType::UInt64)?;
            let ids = ids.as_primitive::<UInt64Type>();
            let labels = column(&b, 1, &DataType::Utf8)?;
            let labels = labels.as_string::<i32>();
            for i in 0..b.num_rows() {
                if labels.is_null(i) {
                    continue;
                }
                if let Ok(set) = serde_json::from_str::<BTreeMap<String, String>>(labels.value(i)) {
                    parsed.push((ids.value(i), Arc::new(set)));
                }
            }
        }
    }
    query.prom_labels().insert_all(&parsed);
    out.extend(parsed);
    Ok(out)
}

/// Above this many series, a read scans the metric rather than listing them.
const MAX_LISTED_SERIES: usize = 500;

/// The samples PromQL evaluates: [`select`] over one database, counted
/// against the query's memory limit (`query.memory_limit`).
pub struct Samples<'a> {
    query: &'a QueryEngine,
    db: &'a str,
}

impl<'a> Samples<'a> {
    pub fn new(query: &'a QueryEngine, db: &'a str) -> Self {
        Self { query, db }
    }
}

impl strata_promql::SampleSource for Samples<'_> {
    type Error = Error;

    async fn select(
        &self,
        metric: Option<&str>,
        keep: &(dyn Fn(&BTreeMap<String, String>) -> bool + Sync),
        start_ms: i64,
        end_ms: i64,
    ) -> Result<strata_promql::Selected> {
        let found = select(self.query, self.db, metric, keep, start_ms, end_ms).await?;
        Ok(found
            .into_iter()
            .map(|(labels, samples)| {
                let points = samples.iter().map(|s| (s.timestamp, s.value)).collect();
                (labels, points)
            })
            .collect())
    }

    fn budget(&self, what: &'static str) -> Box<dyn strata_promql::Budget> {
        Box::new(QueryMemory(self.query.reservation(what)))
    }
}

/// A share of the query memory pool, as PromQL's budget.
struct QueryMemory(datafusion::execution::memory_pool::MemoryReservation);

impl strata_promql::Budget for QueryMemory {
    fn try_grow(&self, bytes: usize) -> strata_promql::Result<()> {
        self.0
            .try_grow(bytes)
            .map_err(|e| strata_promql::Error::ResourcesExhausted(e.find_root().to_string()))
    }
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
) -> Result<Vec<(Labels, Vec<Sample>)>> {
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
        let mut found: HashMap<u64, Labels> = scan_series(query, db, p, metric)
            .await?
            .into_iter()
            .filter(|(_, set)| keep(set))
            .collect();
        if found.is_empty() {
            continue;
        }
        let mut samples: HashMap<u64, Vec<Sample>> = HashMap::with_capacity(found.len());
        let mut ids: Vec<u64> = found.keys().copied().collect();
        ids.sort_unstable();
        // A few series are named in the query, so that the scan prunes by
        // them; many are read in one scan (of the metric, when named) and
        // kept here.
        let mut scan = Statement::new(format!(
            "SELECT series, CAST(ts AS BIGINT), value FROM {samples_table}"
        ));
        let (start, end) = (
            scan.bind(ScalarValue::Int64(Some(start_ms))),
            scan.bind(ScalarValue::Int64(Some(end_ms))),
        );
        // The placeholders take the type of `ts`: milliseconds.
        scan.and(&format!("ts >= {start} AND ts <= {end}"));
        if ids.len() <= MAX_LISTED_SERIES {
            scan.series_in(&ids);
        }
        scan.metric(metric);
        for b in rows(query, db, scan).await? {
            let s = column(&b, 0, &DataType::UInt64)?;
            let s = s.as_primitive::<UInt64Type>().values();
            let t = column(&b, 1, &DataType::Int64)?;
            let t = t.as_primitive::<Int64Type>();
            let v = column(&b, 2, &DataType::Float64)?;
            let v = v.as_primitive::<Float64Type>();
            // Rows come in runs of one series (the SSTs are sorted by
            // series): one map lookup per run.
            let mut i = 0;
            while i < s.len() {
                let id = s[i];
                let run = s[i..].iter().take_while(|&&x| x == id).count();
                if !found.contains_key(&id) {
                    i += run;
                    continue;
                }
                let points = samples.entry(id).or_default();
                points.extend((i..i + run).filter(|&k| !v.is_null(k)).map(|k| Sample {
                    value: v.value(k),
                    timestamp: t.value(k),
                }));
                i += run;
            }
        }
        let mut series: Vec<(u64, Vec<Sample>)> = samples.into_iter().collect();
        series.sort_unstable_by_key(|(id, _)| *id);
        for (id, mut points) in series {
            if !points.is_sorted_by_key(|s| s.timestamp) {
                points.sort_by_key(|s| s.timestamp);
            }
            points.dedup_by_key(|s| s.timestamp);
            if let Some(labels) = found.remove(&id) {
                out.push((labels, points));
            }
        }
    }
    Ok(out)
}

/// Answers one query.
async fn answer(query: &QueryEngine, db: &str, q: &Query) -> Result<QueryResult> {
    let matchers = q.matchers.iter().map(compile).collect::<Result<Vec<_>>>()?;
    let metric = q
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && m.r#type == 0)
        .map(|m| m.value.clone());
    // A missing label matches as the empty string.
    let keep = |set: &BTreeMap<String, String>| {
        matchers
            .iter()
            .all(|m| m.is_match(set.get(&m.name).map_or("", String::as_str)))
    };
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
            .iter()
            .map(|(name, value)| Label {
                name: name.clone(),
                value: value.clone(),
            })
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

/// The most queries one remote read may hold (Prometheus sends one per
/// selector of the PromQL query it answers).
pub const MAX_QUERIES: usize = 256;
/// The most matchers one query of a remote read may hold.
pub const MAX_MATCHERS: usize = 256;

/// Decodes a snappy-compressed `ReadRequest` (the body of a remote read),
/// refusing one that decompresses to more than `max_decoded` bytes, and
/// checks that it accepts the `SAMPLES` response type.
pub fn decode_request(body: &[u8], max_decoded: usize) -> Result<ReadRequest> {
    let raw = crate::prom::decompress(body, max_decoded, "remote read")?;
    let req = ReadRequest::decode(raw.as_slice()).map_err(|e| {
        Error::InvalidArgument(format!(
            "remote read: the body is not a Prometheus ReadRequest: {e}"
        ))
    })?;
    if req.queries.len() > MAX_QUERIES {
        return Err(Error::InvalidArgument(format!(
            "remote read: {} queries in one request, more than the {MAX_QUERIES} allowed",
            req.queries.len()
        )));
    }
    if let Some(q) = req.queries.iter().find(|q| q.matchers.len() > MAX_MATCHERS) {
        return Err(Error::InvalidArgument(format!(
            "remote read: a query with {} matchers, more than the {MAX_MATCHERS} allowed",
            q.matchers.len()
        )));
    }
    if !req.accepted_response_types.is_empty() && !req.accepted_response_types.contains(&0) {
        return Err(Error::Unsupported(
            "remote read: only the SAMPLES response type is supported".to_string(),
        ));
    }
    Ok(req)
}

/// Compiles the matchers of one query, as answering it does first (the
/// fuzz targets check this step too: the regexes come from the client).
#[doc(hidden)]
pub fn compile_matchers(q: &Query) -> Result<()> {
    for m in &q.matchers {
        compile(m)?;
    }
    Ok(())
}

/// Decodes a snappy-compressed `ReadRequest`, answers it, and returns the
/// snappy-compressed `ReadResponse`.
pub async fn read(
    query: &QueryEngine,
    db: &str,
    body: &[u8],
    max_decoded: usize,
) -> Result<Vec<u8>> {
    let req = decode_request(body, max_decoded)?;
    let mut results = Vec::with_capacity(req.queries.len());
    for q in &req.queries {
        results.push(answer(query, db, q).await?);
    }
    snap::raw::Encoder::new()
        .compress_vec(&ReadResponse { results }.encode_to_vec())
        .map_err(|e| Error::Internal(format!("remote read: compressing the answer: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body(req: &ReadRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    fn matcher(t: i32, value: &str) -> LabelMatcher {
        LabelMatcher {
            r#type: t,
            name: "host".to_string(),
            value: value.to_string(),
        }
    }

    #[test]
    fn requests_with_too_many_queries_matchers_or_huge_regexes_are_refused() {
        let query = |matchers: Vec<LabelMatcher>| Query {
            start_timestamp_ms: 0,
            end_timestamp_ms: 1,
            matchers,
        };
        let many = ReadRequest {
            queries: vec![query(vec![matcher(0, "a")]); MAX_QUERIES + 1],
            accepted_response_types: vec![0],
        };
        let err = decode_request(&body(&many), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("queries in one request"), "{err}");
        let wide = ReadRequest {
            queries: vec![query(vec![matcher(0, "a"); MAX_MATCHERS + 1])],
            accepted_response_types: vec![0],
        };
        let err = decode_request(&body(&wide), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("matchers"), "{err}");

        let ok = ReadRequest {
            queries: vec![query(vec![matcher(2, "h.*"), matcher(3, "x|y")])],
            accepted_response_types: vec![0],
        };
        let req = decode_request(&body(&ok), 1 << 20).unwrap();
        compile_matchers(&req.queries[0]).unwrap();
        for bad in [
            "(".repeat(200) + &")".repeat(200),
            r"\w{1000}\w{1000}\w{1000}".to_string(),
            "a".repeat(strata_promql::limits::MAX_REGEX_LEN + 1),
        ] {
            let q = query(vec![matcher(2, &bad)]);
            let err = compile_matchers(&q).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
    }
}
