//! Bad input gets a clear, typed error, and the server keeps serving.

use std::io::Write;

use strata_integration_tests::{exec, http_post_bytes, http_request, query, StrataProcess};
use strata_proto::{
    common::ErrorKind,
    storage::{
        arrow_payload::Compression, value, ArrowPayload, Field, FieldGroup, RequestContext, Value,
        WriteArrowRequest, WriteRequest, WriteSeriesEntry, WriteTableRequest,
    },
};

fn write_one(table: &str, field: &str, v: value::Value) -> WriteRequest {
    WriteRequest {
        context: Some(RequestContext {
            database: String::new(),
        }),
        table_requests: vec![WriteTableRequest {
            table: table.to_string(),
            tag_names: vec![],
            field_names: vec![field.to_string()],
            entries: vec![WriteSeriesEntry {
                tags: vec![],
                field_groups: vec![FieldGroup {
                    timestamp: 1,
                    fields: vec![Field {
                        name_index: 0,
                        value: Some(Value { value: Some(v) }),
                    }],
                }],
            }],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_typed_errors_and_the_server_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        vec![(
            "STRATA_SERVER__AUTO_CREATE_TABLE".to_string(),
            "false".to_string(),
        )],
    )
    .await;
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE t (h STRING TAG, ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts))",
    )
    .await;

    // Malformed SQL names the position.
    let err = client.sql("", "SELEC * FROM t").await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(err.to_string().contains("Line: 1, Column: 1"), "{err}");
    let err = client
        .sql(
            "",
            "CREATE TABLE x (ts TIMESTAMP, TIMESTAMP KEY(ts), v DUBBLE)",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line 1, column 52"), "{err}");

    // A wrong value type names the column.
    let err = client
        .sql("", "INSERT INTO t (h, ts, v) VALUES ('a', 1, 'abc')")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(err.to_string().contains("column v"), "{err}");
    let err = client
        .write(write_one("t", "v", value::Value::StringValue("x".into())))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(err.to_string().contains("column v"), "{err}");

    // Missing tables are typed TableNotFound, over SQL and gRPC writes.
    let err = client
        .sql("", "INSERT INTO nope (ts) VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::TableNotFound), "{err}");
    let err = client.sql("", "SELECT * FROM nope").await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::TableNotFound), "{err}");
    let err = client
        .write(write_one("nope", "v", value::Value::Float64Value(1.0)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::TableNotFound), "{err}");

    // Unknown columns, bad name indexes and a NULL timestamp key.
    let err = client
        .write(write_one("t", "nosuch", value::Value::Float64Value(1.0)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nosuch"), "{err}");
    let mut bad = write_one("t", "v", value::Value::Float64Value(1.0));
    bad.table_requests[0].entries[0].field_groups[0].fields[0].name_index = 9;
    let err = client.write(bad).await.unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = client
        .sql("", "INSERT INTO t (h, v) VALUES ('a', 1.0)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ts"), "{err}");

    // Malformed HTTP bodies.
    let (code, body) = http_request(server.http, "POST", "/sql", Some("{not json"))
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_request(
        server.http,
        "POST",
        "/sql",
        Some(r#"{"query": "SELECT * FROM nope"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("TableNotFound"), "{body}");

    // Still serving, and nothing bad was written.
    assert!(server.is_running());
    exec(&client, "INSERT INTO t (h, ts, v) VALUES ('a', 1, 2.5)").await;
    assert_eq!(
        query(&client, "SELECT h, v FROM t").await,
        vec![vec!["a".to_string(), "2.5".to_string()]]
    );
    let (code, body) = http_request(
        server.http,
        "POST",
        "/sql",
        Some(r#"{"query": "SELECT count(*) AS n FROM t"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""n":1"#), "{body}");
    let (code, metrics) = http_request(server.http, "GET", "/metrics", None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("strata_rows_written_total"), "{metrics}");
}

/// Percent-encodes a form value.
fn form(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `/health` answers and the process still runs.
async fn assert_serving(server: &mut StrataProcess) {
    assert!(
        server.is_running(),
        "the server died; log:\n{}",
        server.log_tail()
    );
    let (code, body) = http_request(server.http, "GET", "/health", None)
        .await
        .unwrap_or_else(|| panic!("no answer from /health; log:\n{}", server.log_tail()));
    assert_eq!(code, 200, "{body}");
}

fn nested(n: usize, inner: &str) -> String {
    format!("{}{inner}{}", "(".repeat(n), ")".repeat(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_promql_and_huge_ranges_get_400_and_the_server_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    let form_body = |q: &str| format!("query={}&time=1700000000", form(q));

    // 1,000 nested parentheses (about 2 KB) overflowed a worker's stack and
    // aborted the process; 100,000 of them, and long operator chains, are
    // refused just the same, before the parser sees them.
    for q in [
        nested(1_000, "1"),
        nested(100_000, "1"),
        format!("sum({})", nested(300, "up")),
        vec!["1"; 100_000].join("+"),
        vec!["-"; 100_000].join(" ") + " 1",
    ] {
        let (code, body) = http_post_bytes(
            server.http,
            "/api/v1/query",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form_body(&q).as_bytes(),
        )
        .await
        .unwrap_or_else(|| panic!("no answer; log:\n{}", server.log_tail()));
        assert_eq!(code, 400, "{body}");
        assert!(body.contains(r#""errorType":"bad_data""#), "{body}");
        assert!(
            body.contains("nest") || body.contains("operators"),
            "{body}"
        );
        assert_serving(&mut server).await;
    }
    // Nesting within the limit still answers.
    let (code, body) = http_post_bytes(
        server.http,
        "/api/v1/query",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form_body(&nested(100, "1")).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""result":[1700000000,"1"]"#), "{body}");

    // A range of ±1e300 seconds: the step count overflowed (a debug build
    // panicked, a release build looped). Refused as Prometheus refuses it.
    let (code, body) = http_request(
        server.http,
        "GET",
        "/api/v1/query_range?query=1&start=-1e300&end=1e300&step=1",
        None,
    )
    .await
    .unwrap_or_else(|| panic!("no answer; log:\n{}", server.log_tail()));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(r#""status":"error""#)
            && body.contains(r#""errorType":"bad_data""#)
            && body.contains(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
            ),
        "{body}"
    );
    assert_serving(&mut server).await;
    // Huge but few steps, offsets and ranges answer without overflowing.
    for path in [
        "/api/v1/query_range?query=1&start=-1e300&end=1e300&step=1e300",
        "/api/v1/query_range?query=up%20offset%20100000000y&start=0&end=60&step=15",
        "/api/v1/query?query=rate(up%5B100000000y%5D)&time=-1e300",
        "/api/v1/query?query=up%20%40%201e300&time=1e300",
    ] {
        let (code, body) = http_request(server.http, "GET", path, None)
            .await
            .unwrap_or_else(|| panic!("no answer to {path}; log:\n{}", server.log_tail()));
        assert!(code == 200 || code == 400, "{path}: {code} {body}");
        assert_serving(&mut server).await;
    }
    // Durations the PromQL parser cannot turn into a `Duration` made it
    // panic (the request's connection dropped without an answer).
    for q in ["up[1e300]", "up offset Inf", "rate(up[NaN])", "up[1e300:1]"] {
        for path in [
            format!("/api/v1/query?query={}&time=1", form(q)),
            format!("/api/v1/series?match[]={}", form(q)),
        ] {
            let (code, body) = http_request(server.http, "GET", &path, None)
                .await
                .unwrap_or_else(|| panic!("no answer to {path}; log:\n{}", server.log_tail()));
            assert_eq!(code, 400, "{path}: {body}");
            assert!(body.contains(r#""errorType":"bad_data""#), "{path}: {body}");
        }
    }
    assert_serving(&mut server).await;
    for path in [
        "/api/v1/query_range?query=1&start=NaN&end=1&step=1",
        "/api/v1/query_range?query=1&start=0&end=Inf&step=1",
        "/api/v1/query_range?query=1&start=0&end=1&step=NaN",
    ] {
        let (code, body) = http_request(server.http, "GET", path, None).await.unwrap();
        assert_eq!(code, 400, "{path}: {body}");
    }
    assert_serving(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_sql_gets_a_typed_error_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE t (h STRING TAG, ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts))",
    )
    .await;
    let deep = [
        format!("SELECT {}", nested(100_000, "1")),
        format!("SELECT {}1{}", "(SELECT ".repeat(2_000), ")".repeat(2_000)),
        format!(
            "SELECT * FROM {}t{}",
            "(SELECT * FROM ".repeat(2_000),
            ") AS x".repeat(2_000)
        ),
        format!("SELECT * FROM t WHERE {}", nested(5_000, "v > 1")),
        // Operator chains nest without parentheses.
        format!("SELECT {}", vec!["1"; 200_000].join("+")),
        format!(
            "SELECT * FROM t WHERE {}",
            vec!["v = 1"; 100_000].join(" OR ")
        ),
    ];
    for sql in &deep {
        let body = serde_json::json!({ "query": sql }).to_string();
        let (code, text) = http_request(server.http, "POST", "/sql", Some(&body))
            .await
            .unwrap_or_else(|| panic!("no answer; log:\n{}", server.log_tail()));
        assert_eq!(code, 400, "{text}");
        assert!(
            text.contains("InvalidArgument") && text.contains("nest"),
            "{text}"
        );
        assert_serving(&mut server).await;
        let err = client.sql("", sql).await.unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
        assert_serving(&mut server).await;
    }
    // Parentheses inside strings and comments do not count.
    let quoted = format!(
        "SELECT '{}' AS s -- {}\n",
        "(".repeat(10_000),
        "(".repeat(10_000)
    );
    assert_eq!(query(&client, &quoted).await[0][0].len(), 10_000);
    assert_serving(&mut server).await;
}

/// A snappy body that declares `len` bytes decompressed and holds none.
fn snappy_declaring(len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = len;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_messages_are_refused_before_decoding() {
    const MB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start_with_env(
        &dir.path().join("data"),
        [
            ("STRATA_SERVER__MAX_BODY_SIZE", "1MB"),
            ("STRATA_SERVER__MAX_DECODED_SIZE", "1MB"),
            ("STRATA_SERVER__GRPC_MAX_MESSAGE_SIZE", "1MB"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    )
    .await;
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE t (h STRING TAG, ts TIMESTAMP NOT NULL, v BIGINT, TIMESTAMP KEY(ts))",
    )
    .await;

    // Remote write and read: a 5-byte body declaring 4 GiB, one declaring
    // 100 MB, and a real snappy body of 2 MB (over the decoded limit).
    let zeros = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 2 * MB])
        .unwrap();
    assert!(zeros.len() < MB);
    for path in ["/api/v1/write", "/api/v1/read"] {
        for body in [
            snappy_declaring(0xFFFF_FFFF),
            snappy_declaring(100_000_000),
            zeros.clone(),
        ] {
            let (code, text) =
                http_post_bytes(server.http, path, &[("Content-Encoding", "snappy")], &body)
                    .await
                    .unwrap_or_else(|| panic!("no answer; log:\n{}", server.log_tail()));
            assert_eq!(code, 413, "{path}: {text}");
            assert!(text.contains("max_decoded_size"), "{text}");
            assert_serving(&mut server).await;
        }
    }

    // Line protocol: a gzip body that decompresses past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b'\n'; 2 * MB]).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < MB);
    let (code, text) = http_post_bytes(
        server.http,
        "/api/v2/write?bucket=public",
        &[("Content-Encoding", "gzip")],
        &gz,
    )
    .await
    .unwrap();
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("max_decoded_size"), "{text}");
    assert_serving(&mut server).await;

    // Any endpoint's body past the limit (valid JSON, 1.5 MB).
    let big_sql =
        serde_json::json!({ "query": format!("SELECT 1 -- {}", "x".repeat(MB + MB / 2)) })
            .to_string();
    let (code, text) = http_request(server.http, "POST", "/sql", Some(&big_sql))
        .await
        .unwrap();
    assert_eq!(code, 413, "{text}");
    let (code, text) = http_post_bytes(server.http, "/api/v1/write", &[], &vec![0u8; MB + MB / 2])
        .await
        .unwrap();
    assert_eq!(code, 413, "{text}");
    assert_serving(&mut server).await;

    // gRPC: a message past the limit.
    let err = client
        .write(write_one(
            "t",
            "h",
            value::Value::StringValue("x".repeat(2 * MB)),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    // A zstd payload of Arrow rows that decodes past the limit.
    let rows: arrow::array::ArrayRef =
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![0i64; 2 * MB / 8]));
    let batch = arrow::record_batch::RecordBatch::try_from_iter([("v", rows)]).unwrap();
    let mut ipc = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    let err = client
        .write_arrow(WriteArrowRequest {
            context: None,
            table: "t".to_string(),
            rows: Some(ArrowPayload {
                record_batches: vec![zstd::bulk::compress(&ipc, 3).unwrap()],
                compression: Compression::Zstd as i32,
            }),
            shard_version: 0,
            catalog_fingerprint: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(err.to_string().contains("more than"), "{err}");
    assert_serving(&mut server).await;

    // Within the limits everything still works.
    exec(&client, "INSERT INTO t (h, ts, v) VALUES ('a', 1, 2)").await;
    let (code, text) = http_post_bytes(
        server.http,
        "/api/v2/write?bucket=public",
        &[],
        b"t,h=b v=3i 2000000",
    )
    .await
    .unwrap();
    assert_eq!(code, 204, "{text}");
    assert_eq!(
        query(&client, "SELECT count(*) FROM t").await,
        vec![vec!["2".to_string()]]
    );
    assert_serving(&mut server).await;
}

/// A write naming very many columns, or very many rows of a wide table, is
/// refused with a typed error in time linear in its size; the server keeps
/// serving. (The names used to be compared pairwise, and every row built in
/// every column of its table: a few MB could hang or exhaust a server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_writes_are_refused_and_the_server_survives() {
    const NAMES: usize = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = StrataProcess::start(&dir.path().join("data")).await;
    let client = server.client().await;
    let http = server.http;
    let lp = move |body: String| async move {
        http_post_bytes(http, "/write?db=public&precision=ms", &[], body.as_bytes())
            .await
            .expect("an answer")
    };

    // A new table of 300,000 fields, by line protocol and by gRPC.
    let body: String = (0..NAMES).map(|i| format!("wide f{i}=1 1000\n")).collect();
    let (code, text) = lp(body).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("at most 4096 columns"), "{text}");
    assert_serving(&mut server).await;
    let mut wide = write_one("wide_grpc", "f0", value::Value::Float64Value(1.0));
    wide.table_requests[0].field_names = (0..NAMES).map(|i| format!("f{i}")).collect();
    let err = client.write(wide).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(err.to_string().contains("at most 4096 columns"), "{err}");
    assert_serving(&mut server).await;

    // An existing table: columns are added up to the limit, not past it.
    let body: String = (0..4000).map(|i| format!("sparse f{i}=1 1000\n")).collect();
    let (code, text) = lp(body).await;
    assert_eq!(code, 204, "{text}");
    let body: String = (4000..5000)
        .map(|i| format!("sparse f{i}=1 2000\n"))
        .collect();
    let (code, text) = lp(body).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("more than 4096 columns"), "{text}");
    assert_serving(&mut server).await;

    // Many rows of the 4,001-column table, each setting one field: every
    // row takes a slot in every column, past 4 × max_decoded_size.
    let body: String = (0..300_000)
        .map(|i| format!("sparse f1={i} {}\n", 10_000 + i))
        .collect();
    let (code, text) = lp(body).await;
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("max_decoded_size"), "{text}");
    assert_serving(&mut server).await;

    // The table is intact and still takes ordinary writes.
    let (code, text) = lp("sparse f1=7 3000\n".to_string()).await;
    assert_eq!(code, 204, "{text}");
    assert_eq!(
        query(&client, "SELECT f1 FROM sparse WHERE timestamp = 3000").await,
        vec![vec!["7.0".to_string()]]
    );
}
