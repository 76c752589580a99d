//! The HTTP API: `POST /sql`, `GET /health`, `GET /metrics`.
//!
//! `POST /sql` takes `{"query": "…", "database": "…"}` (database optional)
//! and answers `{"rows": [{…}, …]}` for queries or `{"affected_rows": n}`
//! otherwise. Errors are `{"code": 400, "kind": "…", "message": "…"}` with
//! the same HTTP status.

use std::{sync::Arc, time::Instant};

use arrow::{array::RecordBatch, json::WriterBuilder};
use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use strata_engine::catalog::DEFAULT_DATABASE;

use crate::{
    error::Error,
    metrics,
    sql::{Output, QueryEngine},
};

#[derive(Clone)]
struct AppState {
    query: QueryEngine,
}

#[derive(Deserialize)]
struct SqlRequest {
    #[serde(alias = "sql")]
    query: String,
    #[serde(default)]
    database: Option<String>,
}

pub fn router(query: QueryEngine) -> Router {
    Router::new()
        .route("/sql", post(sql))
        .route("/health", get(health))
        .route("/metrics", get(prometheus_metrics))
        .with_state(Arc::new(AppState { query }))
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
async fn sql(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
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
    let result = state.query.execute(&db, &req.query).await;
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

async fn health() -> &'static str {
    "OK"
}

async fn prometheus_metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
        .into_response()
}
