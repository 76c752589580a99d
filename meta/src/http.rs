//! Meta's HTTP API, behind `strata admin` (documented in
//! `docs/meta-http-api.md`). Answers are JSON; errors are
//! `{"error": "..."}` with a 4xx or 5xx status.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use strata_proto::meta::MetaRouteRequest;

use crate::{service::Meta, Error};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn failed(e: &Error) -> Response {
    let status = if e.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(status, e.to_string())
}

/// The routes that change the cluster (`POST`) need the cluster secret when
/// meta has one: the header [`crate::secret::HEADER`] or
/// `Authorization: Bearer <secret>`. 401 without one, 403 with another.
/// The read-only routes answer anyone who can reach the port.
#[allow(clippy::result_large_err)]
fn authorize(meta: &Meta, headers: &HeaderMap) -> Result<(), Response> {
    let Some(secret) = &meta.options().cluster_secret else {
        return Ok(());
    };
    let given = headers
        .get(crate::secret::HEADER)
        .map(|v| v.as_bytes())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                .map(|v| &v[7..])
        });
    match given {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            format!(
                "this route changes the cluster and needs the cluster secret \
                 (header {} or Authorization: Bearer; `strata admin` sends ${})",
                crate::secret::HEADER,
                crate::secret::ENV
            ),
        )),
        Some(v) if secret.matches(v) => Ok(()),
        Some(_) => Err(error(StatusCode::FORBIDDEN, "wrong cluster secret")),
    }
}

pub fn router(meta: Meta) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/leader", get(leader))
        .route("/route", get(route))
        .route("/nodes", get(nodes))
        .route("/shards", get(shards))
        .route("/tables", get(tables))
        .route("/procedures", get(procedures))
        .route("/shards/{id}/move", post(move_shard))
        .route("/shards/{id}/split", post(split_shard))
        .route("/shards/{id}/merge", post(merge_shards))
        .route("/reshape", get(reshape))
        .route("/shards/{id}/replicas", post(shard_replicas))
        .route("/replicas", post(replicas))
        .route("/nodes/drain", post(drain))
        .route("/nodes/undrain", post(undrain))
        .route("/schedule/pause", post(pause))
        .route("/schedule/resume", post(resume))
        .route("/schedule", get(schedule))
        .with_state(meta)
}

async fn health(State(meta): State<Meta>) -> Response {
    match meta.store().config().await {
        Ok(_) => Json(json!({ "status": "ok", "leader": meta.is_leader() })).into_response(),
        Err(e) => failed(&e),
    }
}

/// `GET /metrics`: meta's state in Prometheus' text format, read from etcd
/// at each scrape (`strata_meta_etcd_up` 0 when that fails).
async fn metrics(State(meta): State<Meta>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    gauge(
        "strata_meta_is_leader",
        "1 on the meta process that leads (schedules shards)",
        &[("", f64::from(u8::from(meta.is_leader())))],
    );
    // Bounded: a slow etcd makes a scrape report etcd down, not pile up.
    let limit = std::time::Duration::from_secs(2);
    let nodes = tokio::time::timeout(limit, meta.store().nodes())
        .await
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ()));
    let shards = tokio::time::timeout(limit, meta.shard_views())
        .await
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ()));
    gauge(
        "strata_meta_etcd_up",
        "1 when meta's last read of etcd succeeded",
        &[("", f64::from(u8::from(nodes.is_ok() && shards.is_ok())))],
    );
    if let Ok(nodes) = nodes {
        let compute = nodes.iter().filter(|n| n.is_compute()).count();
        gauge(
            "strata_meta_nodes",
            "Instances heartbeating, by role",
            &[
                ("{role=\"data\"}", (nodes.len() - compute) as f64),
                ("{role=\"compute\"}", compute as f64),
            ],
        );
    }
    if let Ok(shards) = shards {
        let count = |state: &str| shards.iter().filter(|s| s.state == state).count() as f64;
        gauge(
            "strata_meta_shards",
            "Shards by state (serving, moving: assigned but not yet taken, unassigned)",
            &[
                ("{state=\"serving\"}", count("serving")),
                ("{state=\"moving\"}", count("moving")),
                ("{state=\"unassigned\"}", count("unassigned")),
            ],
        );
        gauge(
            "strata_meta_tables",
            "Tables in the cluster's shards",
            &[("", shards.iter().map(|s| s.tables as f64).sum())],
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn leader(State(meta): State<Meta>) -> Response {
    match meta.store().leader().await {
        Ok(l) => Json(json!({ "leader": l, "me": meta.options().me })).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct RouteQuery {
    table: String,
    #[serde(default)]
    database: String,
}

async fn route(State(meta): State<Meta>, Query(q): Query<RouteQuery>) -> Response {
    let req = MetaRouteRequest {
        database: q.database,
        tables: vec![q.table.clone()],
    };
    match meta.route(req).await {
        Ok(resp) => match resp.routes.into_iter().next() {
            Some(r) if r.found => Json(json!({
                "table": r.table,
                "table_id": r.table_id,
                "shard": r.shard,
                "shard_version": r.shard_version,
                "leader": r.leader,
                "endpoint": r.leader_endpoint,
                "role": "leader",
                "followers": r.follower_endpoints,
            }))
            .into_response(),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("table {} not found", q.table),
            ),
        },
        Err(e) => failed(&e),
    }
}

async fn nodes(State(meta): State<Meta>) -> Response {
    let draining = match meta.store().draining().await {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    match meta.store().nodes().await {
        Ok(nodes) => Json(
            nodes
                .into_iter()
                .map(|n| {
                    json!({
                        "id": n.id,
                        "endpoint": n.endpoint,
                        "http_endpoint": n.http_endpoint,
                        "started_at_ms": n.started_at_ms,
                        "last_heartbeat_ms": n.last_heartbeat_ms,
                        "shards": n.shards.iter().filter(|s| !s.is_follower()).map(|s| s.id).collect::<Vec<_>>(),
                        "draining": draining.iter().any(|(d, i)| *d == n.id && *i == n.instance),
                        "tables": n.load.tables,
                        "memtable_bytes": n.load.memtable_bytes,
                        "cpu_cores": (n.load.cpu_cores * 100.0).round() / 100.0,
                        "rss_bytes": n.load.rss_bytes,
                        "rows_written_per_s": (n.shards.iter().filter(|s| !s.is_follower()).map(|s| s.rows_written_per_s).sum::<f64>() * 10.0).round() / 10.0,
                        "scans_per_s": (n.shards.iter().filter(|s| !s.is_follower()).map(|s| s.scans_per_s).sum::<f64>() * 10.0).round() / 10.0,
                        "followed": n.shards.iter().filter(|s| s.is_follower()).map(|s| s.id).collect::<Vec<_>>(),
                        "role": if n.is_compute() { "compute" } else { "data" },
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => failed(&e),
    }
}

async fn shards(State(meta): State<Meta>) -> Response {
    match meta.shard_views().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => failed(&e),
    }
}

/// Shards between two owners (the move procedures in flight), and the
/// split or merge in progress.
async fn procedures(State(meta): State<Meta>) -> Response {
    let reshape = match meta.store().reshape().await {
        Ok(r) => r.map(|(r, _)| {
            json!({
                "kind": match r.kind {
                    crate::model::ReshapeKind::Split => "split_shard",
                    crate::model::ReshapeKind::Merge => "merge_shards",
                },
                "shard": r.from,
                "from": r.from,
                "to": r.to,
                "state": r.step.as_str(),
                "tables": r.tables,
                "attempts": r.attempts,
                "last_error": r.last_error,
            })
        }),
        Err(e) => return failed(&e),
    };
    match meta.shard_views().await {
        Ok(v) => Json(
            v.into_iter()
                .filter(|s| s.state != "serving")
                .map(|s| {
                    json!({
                        "kind": "move_shard",
                        "shard": s.id,
                        "version": s.version,
                        "from": s.holder,
                        "to": s.leader,
                        "state": s.state,
                    })
                })
                .chain(reshape)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => failed(&e),
    }
}

async fn tables(State(meta): State<Meta>) -> Response {
    match meta.store().tables().await {
        Ok(t) => Json(
            t.into_iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "database": t.database,
                        "name": t.name,
                        "shard": t.shard,
                        "created_at_ms": t.created_at_ms,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => failed(&e),
    }
}

async fn move_shard(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    let Some(node) = q.get("node") else {
        return error(StatusCode::BAD_REQUEST, "missing ?node=");
    };
    let version = match q.get("version").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "version must be a number"),
    };
    match meta.move_shard(id, node, version).await {
        Ok(Ok(info)) => {
            Json(json!({ "shard": info.id, "version": info.version, "leader": info.leader }))
                .into_response()
        }
        Ok(Err(msg)) => error(StatusCode::CONFLICT, msg),
        Err(e) => failed(&e),
    }
}

/// `POST /shards/{id}/split[?tables=1,2,…]`: starts a split of the shard
/// (by default every second of its tables goes to a new shard).
async fn split_shard(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    let tables = match q.get("tables") {
        None => None,
        Some(list) => match list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim().parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
        {
            Ok(t) => Some(t),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "tables must be table ids, comma-separated",
                )
            }
        },
    };
    reshape_started(meta.split_shard(id, tables).await)
}

/// `POST /shards/{id}/merge?from=B`: starts merging shard B into this one
/// (B's tables come here, then B is retired).
async fn merge_shards(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    let Some(Ok(from)) = q.get("from").map(|v| v.parse::<u64>()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing or bad ?from= (a shard id)",
        );
    };
    reshape_started(meta.merge_shards(id, from).await)
}

fn reshape_started(
    result: crate::Result<std::result::Result<crate::model::Reshape, String>>,
) -> Response {
    match result {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(msg)) => error(StatusCode::CONFLICT, msg),
        Err(e) => failed(&e),
    }
}

/// `GET /reshape`: the split or merge in progress, and the last finished.
async fn reshape(State(meta): State<Meta>) -> Response {
    let current = match meta.store().reshape().await {
        Ok(r) => r.map(|(r, _)| r),
        Err(e) => return failed(&e),
    };
    match meta.store().last_reshape().await {
        Ok(last) => Json(json!({ "current": current, "last": last })).into_response(),
        Err(e) => failed(&e),
    }
}

async fn pause(State(meta): State<Meta>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    match meta.store().set_schedule_paused(true).await {
        Ok(()) => Json(json!({ "paused": true })).into_response(),
        Err(e) => failed(&e),
    }
}

async fn resume(State(meta): State<Meta>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    match meta.store().set_schedule_paused(false).await {
        Ok(()) => Json(json!({ "paused": false })).into_response(),
        Err(e) => failed(&e),
    }
}

async fn schedule(State(meta): State<Meta>) -> Response {
    match meta.store().schedule_paused().await {
        Ok(p) => Json(json!({ "paused": p })).into_response(),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct ReplicasQuery {
    count: Option<u64>,
}

/// Most followers a shard may ask for: more than any cluster has nodes.
const MAX_REPLICAS: u64 = 16;

async fn replicas(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Query(q): Query<ReplicasQuery>,
) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    let Some(n) = q.count.filter(|n| *n <= MAX_REPLICAS) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("give ?count=N, N from 0 to {MAX_REPLICAS}"),
        );
    };
    match meta.store().set_replicas(n).await {
        Ok(c) => Json(json!({ "replicas": c.replicas })).into_response(),
        Err(e) => failed(&e),
    }
}

async fn shard_replicas(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Query<ReplicasQuery>,
) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    if q.count.is_some_and(|n| n > MAX_REPLICAS) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("count is at most {MAX_REPLICAS}"),
        );
    }
    let shards = match meta.store().shards().await {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    let Some((info, rev)) = shards.into_iter().find(|(s, _)| s.id == id) else {
        return error(StatusCode::NOT_FOUND, format!("shard {id} does not exist"));
    };
    match meta.store().set_shard_replicas(&info, rev, q.count).await {
        Ok(Some(s)) => Json(json!({ "shard": s.id, "replicas": s.replicas })).into_response(),
        Ok(None) => error(
            StatusCode::CONFLICT,
            format!("shard {id} changed meanwhile; retry"),
        ),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
struct NodeQuery {
    node: String,
}

async fn drain(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Query(q): Query<NodeQuery>,
) -> Response {
    set_drain(meta, headers, q.node, true).await
}

async fn undrain(
    State(meta): State<Meta>,
    headers: HeaderMap,
    Query(q): Query<NodeQuery>,
) -> Response {
    set_drain(meta, headers, q.node, false).await
}

async fn set_drain(meta: Meta, headers: HeaderMap, node: String, on: bool) -> Response {
    if let Err(r) = authorize(&meta, &headers) {
        return r;
    }
    match meta.drain(&node, on).await {
        Ok(Ok(())) => Json(json!({ "node": node, "draining": on })).into_response(),
        Ok(Err(m)) => error(StatusCode::CONFLICT, m),
        Err(e) => failed(&e),
    }
}
