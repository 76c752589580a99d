//! The HTTP API: `POST /sql`, `GET /health`, `GET /metrics`, and InfluxDB
//! line protocol writes (`POST /influxdb/v1/write`, `/write`,
//! `/api/v2/write`).
//!
//! `POST /sql` takes `{"query": "…", "database": "…"}` (database optional)
//! and answers `{"rows": [{…}, …]}` for queries or `{"affected_rows": n}`
//! otherwise. Errors are `{"code": 400, "kind": "…", "message": "…"}` with
//! the same HTTP status.

use std::{sync::Arc, time::Instant};

use arrow::{array::RecordBatch, json::WriterBuilder};
use std::collections::{BTreeMap, HashMap};

use axum::{
    body::Bytes,
    extract::{Path, Query, RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use strata_engine::catalog::DEFAULT_DATABASE;

use crate::{
    error::Error,
    grpc::StorageServiceImpl,
    influx, metrics, prom,
    prom_read::Samples,
    sql::{Output, QueryEngine},
};

struct AppState {
    query: QueryEngine,
    storage: StorageServiceImpl,
    prom_series: prom::SeenSeries,
}

#[derive(Deserialize)]
struct SqlRequest {
    #[serde(alias = "sql")]
    query: String,
    #[serde(default)]
    database: Option<String>,
}

/// The HTTP API. Every request body is bounded by `max_body` bytes
/// (`server.max_body_size`; 413 above it), and every decompressed body by
/// the storage service's `max_decoded` (`server.max_decoded_size`).
pub fn router(query: QueryEngine, storage: StorageServiceImpl, max_body: usize) -> Router {
    Router::new()
        .route("/sql", post(sql))
        .route("/health", get(health))
        .route("/metrics", get(prometheus_metrics))
        .route("/influxdb/v1/write", post(influx_v1_write))
        .route("/write", post(influx_v1_write))
        .route("/api/v2/write", post(influx_v2_write))
        .route("/prom/v1/write", post(prom_write))
        .route("/api/v1/write", post(prom_write))
        .route("/prom/v1/read", post(prom_read))
        .route("/api/v1/read", post(prom_read))
        .route("/api/v1/query", get(prom_query).post(prom_query))
        .route(
            "/api/v1/query_range",
            get(prom_query_range).post(prom_query_range),
        )
        .route("/api/v1/labels", get(prom_labels).post(prom_labels))
        .route("/api/v1/label/{name}/values", get(prom_label_values))
        .route("/api/v1/series", get(prom_series).post(prom_series))
        .route("/api/v1/metadata", get(prom_metadata))
        .route("/api/v1/status/buildinfo", get(prom_buildinfo))
        // Grafana asks for exemplars and alerting rules; Strata keeps none.
        .route(
            "/api/v1/query_exemplars",
            get(prom_no_exemplars).post(prom_no_exemplars),
        )
        .route("/api/v1/rules", get(prom_no_rules))
        .route("/api/v1/alerts", get(prom_no_alerts))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(Arc::new(AppState {
            query,
            storage,
            prom_series: prom::SeenSeries::default(),
        }))
}

/// An InfluxDB-style error: `{"code": "invalid", "message": "…"}`.
fn influx_error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

async fn influx_v1_write(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let db = params.get("db").cloned();
    let precision = params.get("precision").cloned().unwrap_or_default();
    influx_write(&state, db, &precision, &headers, body).await
}

async fn influx_v2_write(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The bucket is the database; a v1-style `db/rp` bucket names the db.
    let db = params
        .get("bucket")
        .map(|b| b.split('/').next().unwrap_or(b).to_string());
    let precision = params.get("precision").cloned().unwrap_or_default();
    influx_write(&state, db, &precision, &headers, body).await
}

async fn influx_write(
    state: &AppState,
    db: Option<String>,
    precision: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    use std::io::Read;
    let started = Instant::now();
    let db = database_param(db.as_ref());
    let Some(precision) = influx::Precision::parse(precision) else {
        return influx_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("unknown precision {precision}: use ns, us, ms or s"),
        );
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    // A gzip body is read through a bounded reader: a small body can
    // declare (and decompress to) gigabytes.
    let max_decoded = state.storage.max_decoded();
    let raw = if gzip {
        let mut out = Vec::new();
        let limit = u64::try_from(max_decoded).unwrap_or(u64::MAX);
        let mut reader = flate2::read::GzDecoder::new(&body[..]).take(limit.saturating_add(1));
        if let Err(e) = reader.read_to_end(&mut out) {
            return influx_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the gzip body cannot be decompressed: {e}"),
            );
        }
        if out.len() > max_decoded {
            return influx_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too large",
                format!(
                    "the body decompresses to more than {max_decoded} bytes (server.max_decoded_size)"
                ),
            );
        }
        out
    } else {
        body.to_vec()
    };
    let Ok(text) = String::from_utf8(raw) else {
        return influx_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body is not UTF-8".to_string(),
        );
    };
    let result = write_lines(state, &db, &text, precision).await;
    metrics::observe_request("influx_write", started, result.is_ok());
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(InfluxError::Lines(lines)) => influx_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "{} bad line(s), nothing written: {}",
                lines.len(),
                lines
                    .iter()
                    .take(20)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Err(InfluxError::Write(e)) => {
            let status =
                StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = match status.as_u16() {
                404 => "not found",
                400..=499 => "invalid",
                503 => "unavailable",
                _ => "internal error",
            };
            influx_error(status, code, e.to_string())
        }
    }
}

enum InfluxError {
    Lines(Vec<influx::LineError>),
    Write(Error),
}

impl From<Error> for InfluxError {
    fn from(e: Error) -> Self {
        InfluxError::Write(e)
    }
}

/// Checks the whole batch, adds the columns it brings to existing tables,
/// then writes it (tables led by other instances are forwarded to their
/// leaders).
async fn write_lines(
    state: &AppState,
    db: &str,
    text: &str,
    precision: influx::Precision,
) -> Result<(), InfluxError> {
    state.query.ensure_database(db).await?;
    let engine = state.query.engine();
    // Every problem of the batch is reported at once: malformed lines, and
    // values that do not fit their columns.
    let (points, mut bad) = influx::parse_lines(text);
    let additions = match influx::plan_columns(engine, db, &points) {
        Ok(a) => a,
        Err(errors) => {
            bad.extend(errors);
            BTreeMap::new()
        }
    };
    if !bad.is_empty() {
        bad.sort_by_key(|e| e.line);
        return Err(InfluxError::Lines(bad));
    }
    if points.is_empty() {
        return Ok(());
    }
    let now = strata_meta::model::now_ms();
    let times = influx::timestamps(&points, precision, now).map_err(InfluxError::Lines)?;
    crate::writer::add_columns(&state.query, db, additions).await?;
    influx::write(
        &state.query,
        db,
        &points,
        &times,
        state.storage.auto_create_table(),
        state.storage.max_decoded(),
    )
    .await?;
    Ok(())
}

fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "code": e.status_code(),
        "kind": format!("{:?}", e.kind()),
        "retryable": e.is_retryable(),
        "message": e.to_string(),
    });
    (status, Json(body)).into_response()
}

fn batches_to_json(batches: &[RecordBatch]) -> Result<Value, Error> {
    let mut buf = Vec::new();
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        for b in batches {
            writer
                .write(b)
                .map_err(|e| Error::Internal(format!("encoding JSON: {e}")))?;
        }
        writer
            .finish()
            .map_err(|e| Error::Internal(format!("encoding JSON: {e}")))?;
    }
    if buf.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&buf).map_err(|e| Error::Internal(format!("encoding JSON: {e}")))
}

/// The body is read as JSON whatever its content type, so that
/// `curl -d '{"query": …}'` works.
/// The read preference a request asks for (`?read_preference=` or the
/// `x-strata-read-preference` header); `None` when it names none.
fn read_preference(
    query: Option<&str>,
    headers: &HeaderMap,
) -> crate::error::Result<Option<strata_frontend::config::ReadPreference>> {
    use strata_frontend::config::ReadPreference;
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "read_preference")
            .map(|(_, v)| v.into_owned())
    });
    let from_header = headers
        .get(ReadPreference::HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    from_query
        .or(from_header)
        .map(|v| ReadPreference::parse(&v))
        .transpose()
}

async fn sql(
    State(state): State<Arc<AppState>>,
    RawQuery(params): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let query = match read_preference(params.as_deref(), &headers) {
        Ok(Some(p)) => state
            .query
            .reading_followers(p == strata_frontend::config::ReadPreference::Follower),
        Ok(None) => state.query.clone(),
        Err(e) => return error_response(&e),
    };
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = Error::InvalidArgument(format!(
                "the body must be JSON like {{\"query\": \"SELECT 1\"}}: {e}"
            ));
            return error_response(&e);
        }
    };
    let db = req.database.unwrap_or_else(|| DEFAULT_DATABASE.to_string());
    let sql = req.query;
    let result = query
        .limited(false, |q| async move { q.execute(&db, &sql).await })
        .await;
    metrics::observe_request("http_sql", started, result.is_ok());
    match result {
        Ok(Output::AffectedRows(n)) => Json(json!({ "affected_rows": n })).into_response(),
        Ok(Output::Rows { batches, .. }) => match batches_to_json(&batches) {
            Ok(rows) => Json(json!({ "rows": rows })).into_response(),
            Err(e) => error_response(&e),
        },
        Err(e) => error_response(&e),
    }
}

/// `200 OK` while the server serves. Still 200 (restarting the process
/// would not help) but `DEGRADED`, with the reasons, while a shard is
/// refused because its WAL lost acknowledged records.
async fn health() -> String {
    let lost = strata_wal::loss::regions();
    if lost.is_empty() {
        return "OK".to_string();
    }
    let mut out = String::from("DEGRADED\n");
    for (region, detail) in lost {
        out.push_str(&format!(
            "WAL {region} lost acknowledged records: {detail}\n"
        ));
    }
    out
}

async fn prometheus_metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
        .into_response()
}

/// The database a request names, `public` when it names none.
fn database_param(db: Option<&String>) -> String {
    db.filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_string())
}

/// Prometheus remote write: a snappy-compressed protobuf `WriteRequest`.
/// `?db=` picks the database (default `public`). Answers 204, or 400 with
/// the reason for a body that cannot be decoded.
async fn prom_write(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let db = database_param(params.get("db"));
    let result = prom_write_inner(&state, &db, &body).await;
    metrics::observe_request("prom_write", started, result.is_ok());
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(&e),
    }
}

async fn prom_write_inner(state: &AppState, db: &str, body: &[u8]) -> Result<(), Error> {
    state.query.ensure_database(db).await?;
    let engine = state.query.engine();
    // The physical tables, created on the first write to a database (and
    // again if dropped: then no series row is known to be written).
    let mut series_tables = Vec::with_capacity(prom::PARTITIONS as usize);
    for (table, schema) in prom::tables()? {
        let entry = match engine.entry(db, &table) {
            Ok(entry) => Some(entry),
            Err(_) => {
                crate::writer::table_for_write(&state.query, db, &table, Some(|| Ok(schema)))
                    .await?;
                engine.entry(db, &table).ok()
            }
        };
        if table.starts_with("prom_series_") {
            series_tables.push(entry.map(|e| e.id.0));
        }
    }
    // Tables created anew (here, by another instance or by SQL) have new
    // ids: what this instance knew of the old ones is forgotten.
    state.prom_series.check_tables(db, &series_tables);
    let raw = prom::decompress(body, state.storage.max_decoded(), "remote write")?;
    let (decoded, generation) = state
        .prom_series
        .decode(db, &raw)
        .map_err(|e| Error::InvalidArgument(format!("remote write: {e}")))?;
    drop(raw);
    if decoded.samples == 0 {
        return Ok(());
    }
    crate::writer::write_batches(
        &state.query,
        db,
        decoded.tables,
        state.storage.max_decoded(),
        crate::writer::Forward::Split,
        Instant::now() + crate::route::MOVE_WAIT,
    )
    .await?;
    state
        .prom_series
        .written(db, generation, &decoded.series, decoded.label_sets);
    Ok(())
}

/// Prometheus remote read: a snappy-compressed protobuf `ReadRequest`;
/// answers a snappy-compressed `ReadResponse` of samples.
async fn prom_read(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let db = database_param(params.get("db"));
    let max_decoded = state.storage.max_decoded();
    let result = state
        .query
        .limited(false, |q| async move {
            crate::prom_read::read(&q, &db, &body, max_decoded).await
        })
        .await;
    metrics::observe_request("prom_read", started, result.is_ok());
    match result {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/x-protobuf"),
                (header::CONTENT_ENCODING, "snappy"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

/// Prometheus API parameters from the query string and, for POST, the form
/// body: the database (`db`) and every `match[]`.
fn prom_params(raw: Option<String>, body: &[u8]) -> (String, Vec<String>) {
    let mut db = DEFAULT_DATABASE.to_string();
    let mut matches = Vec::new();
    let pairs = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .chain(form_urlencoded::parse(body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect::<Vec<_>>();
    for (k, v) in pairs {
        match k.as_str() {
            "db" if !v.is_empty() => db = v,
            "match[]" => matches.push(v),
            _ => {}
        }
    }
    (db, matches)
}

fn prom_ok(data: Value) -> Response {
    Json(json!({ "status": "success", "data": data })).into_response()
}

/// Prometheus's error types and statuses: a timeout is `timeout` with 503,
/// a query over its memory limit `execution` with 422 (as Prometheus answers
/// a query that would load too many samples), too many queries at once
/// `unavailable` with 503.
fn prom_err(e: &Error) -> Response {
    use strata_engine::ErrorKind;
    let (status, kind) = match (e.kind(), e.status_code()) {
        (ErrorKind::Timeout, _) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        (ErrorKind::ResourcesExhausted, _) => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        (_, 400..=499) => (StatusCode::BAD_REQUEST, "bad_data"),
        (_, 503) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    (
        status,
        Json(json!({ "status": "error", "errorType": kind, "error": e.to_string() })),
    )
        .into_response()
}

async fn prom_labels(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let (db, matches) = prom_params(raw, &body);
    let result = state
        .query
        .limited(false, |q| async move {
            crate::prom_api::label_names(&q, &db, &matches).await
        })
        .await;
    match result {
        Ok(v) => prom_ok(json!(v)),
        Err(e) => prom_err(&e),
    }
}

async fn prom_label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (db, matches) = prom_params(raw, &[]);
    let result = state
        .query
        .limited(false, |q| async move {
            crate::prom_api::label_values(&q, &db, &name, &matches).await
        })
        .await;
    match result {
        Ok(v) => prom_ok(json!(v)),
        Err(e) => prom_err(&e),
    }
}

async fn prom_series(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let (db, matches) = prom_params(raw, &body);
    if matches.is_empty() {
        return prom_err(&Error::InvalidArgument(
            "no match[] parameter provided".to_string(),
        ));
    }
    let result = state
        .query
        .limited(false, |q| async move {
            crate::prom_api::series(&q, &db, &matches).await
        })
        .await;
    match result {
        Ok(v) => prom_ok(json!(v)),
        Err(e) => prom_err(&e),
    }
}

/// Every parameter of a Prometheus API request, from the query string and,
/// for POST, the form body (the last value wins).
fn prom_form(raw: Option<String>, body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .chain(form_urlencoded::parse(body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The parts every PromQL request shares: database, query text, lookback.
fn promql_common(p: &HashMap<String, String>) -> Result<(String, String, i64), Error> {
    let db = p
        .get("db")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
    let text = p
        .get("query")
        .filter(|q| !q.trim().is_empty())
        .cloned()
        .ok_or_else(|| {
            Error::InvalidArgument("invalid parameter \"query\": missing".to_string())
        })?;
    let lookback = match p.get("lookback_delta") {
        Some(d) => strata_promql::parse_duration(d)?,
        None => strata_promql::DEFAULT_LOOKBACK_MS,
    };
    Ok((db, text, lookback))
}

fn required_time(p: &HashMap<String, String>, name: &str) -> Result<i64, Error> {
    let v = p
        .get(name)
        .ok_or_else(|| Error::InvalidArgument(format!("invalid parameter \"{name}\": missing")))?;
    strata_promql::parse_time(v)
        .map_err(|e| Error::InvalidArgument(format!("invalid parameter \"{name}\": {e}")))
}

async fn prom_query(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = prom_form(raw, &body);
    let run = async {
        let (db, text, lookback) = promql_common(&p)?;
        let t = match p.get("time") {
            Some(_) => required_time(&p, "time")?,
            None => chrono::Utc::now().timestamp_millis(),
        };
        state
            .query
            .limited(false, |q| async move {
                strata_promql::instant(&Samples::new(&q, &db), &text, t, lookback).await
            })
            .await
    };
    promql_answer("promql_query", run).await
}

/// Runs a PromQL request, records it, and answers in Prometheus's envelope.
async fn promql_answer(
    endpoint: &str,
    run: impl std::future::Future<Output = Result<Value, Error>>,
) -> Response {
    let started = Instant::now();
    let result = run.await;
    metrics::observe_request(endpoint, started, result.is_ok());
    match result {
        Ok(v) => prom_ok(v),
        Err(e) => prom_err(&e),
    }
}

async fn prom_query_range(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let p = prom_form(raw, &body);
    let run = async {
        let (db, text, lookback) = promql_common(&p)?;
        let start = required_time(&p, "start")?;
        let end = required_time(&p, "end")?;
        let step = strata_promql::parse_duration(p.get("step").ok_or_else(|| {
            Error::InvalidArgument("invalid parameter \"step\": missing".to_string())
        })?)?;
        state
            .query
            .limited(false, |q| async move {
                strata_promql::range(&Samples::new(&q, &db), &text, start, end, step, lookback)
                    .await
            })
            .await
    };
    promql_answer("promql_query_range", run).await
}

/// Strata keeps no metric metadata (HELP, TYPE) yet: an empty answer, as
/// Prometheus gives for metrics without metadata.
async fn prom_metadata() -> Response {
    prom_ok(json!({}))
}

async fn prom_no_exemplars() -> Response {
    prom_ok(json!([]))
}

async fn prom_no_rules() -> Response {
    prom_ok(json!({ "groups": [] }))
}

async fn prom_no_alerts() -> Response {
    prom_ok(json!({ "alerts": [] }))
}

async fn prom_buildinfo() -> Response {
    prom_ok(crate::prom_api::build_info())
}
