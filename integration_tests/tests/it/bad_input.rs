//! Bad input gets a clear, typed error, and the server keeps serving.

use strata_integration_tests::{exec, http_request, query, StrataProcess};
use strata_proto::{
    common::ErrorKind,
    storage::{
        value, Field, FieldGroup, RequestContext, Value, WriteRequest, WriteSeriesEntry,
        WriteTableRequest,
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
