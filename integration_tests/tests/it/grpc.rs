//! The gRPC StorageService at the wire level: Route, StreamSqlQuery and
//! StreamWrite, as HoraeDB's SDKs call them.

use strata_client::decode_payload;
use strata_integration_tests::{exec, rows_as_strings, StrataProcess};
use strata_proto::storage::{
    sql_query_response::Output, storage_service_client::StorageServiceClient, value, Field,
    FieldGroup, RequestContext, RouteRequest, ShardRole, SqlQueryRequest, Tag, Value, WriteRequest,
    WriteSeriesEntry, WriteTableRequest,
};

fn ctx() -> Option<RequestContext> {
    Some(RequestContext {
        database: "public".to_string(),
    })
}

pub(crate) fn points(table: &str, host: &str, from: i64, n: i64) -> WriteRequest {
    WriteRequest {
        context: ctx(),
        table_requests: vec![WriteTableRequest {
            table: table.to_string(),
            tag_names: vec!["host".to_string()],
            field_names: vec!["v".to_string()],
            entries: vec![WriteSeriesEntry {
                tags: vec![Tag {
                    name_index: 0,
                    value: Some(Value {
                        value: Some(value::Value::StringValue(host.to_string())),
                    }),
                }],
                field_groups: (from..from + n)
                    .map(|t| FieldGroup {
                        timestamp: t,
                        fields: vec![Field {
                            name_index: 0,
                            value: Some(Value {
                                value: Some(value::Value::Float64Value(t as f64)),
                            }),
                        }],
                    })
                    .collect(),
            }],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_stream_write_and_stream_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let mut raw = StorageServiceClient::connect(format!("http://{}", server.endpoint()))
        .await
        .unwrap();

    // Route: standalone serves every table itself, as the leader of shard 0.
    let routes = raw
        .route(RouteRequest {
            context: ctx(),
            tables: vec!["a".to_string(), "b".to_string()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(routes.header.unwrap().code, 200);
    assert_eq!(routes.routes.len(), 2);
    for r in &routes.routes {
        let ep = r.endpoint.as_ref().unwrap();
        assert_eq!(format!("{}:{}", ep.ip, ep.port), server.endpoint());
        assert_eq!(r.role, ShardRole::Leader as i32);
        assert_eq!(r.shard_id, 0);
    }

    // StreamWrite: many requests, one response; the table is auto-created.
    let requests: Vec<WriteRequest> = (0..20)
        .map(|i| points("streamed", "h", i * 1000, 1000))
        .collect();
    let resp = raw
        .stream_write(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.header.unwrap().code, 200);
    assert_eq!(resp.success, 20_000);

    // StreamSqlQuery returns the rows in several messages.
    let mut stream = raw
        .stream_sql_query(SqlQueryRequest {
            context: ctx(),
            tables: vec!["streamed".to_string()],
            sql: "SELECT host, timestamp, v FROM streamed ORDER BY timestamp".to_string(),
            forwarded: false,
            catalog_fingerprint: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut messages = 0;
    let mut rows = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        assert_eq!(msg.header.as_ref().unwrap().code, 200);
        messages += 1;
        if let Some(Output::Arrow(payload)) = msg.output {
            rows.extend(rows_as_strings(&decode_payload(payload).unwrap()));
        }
    }
    assert!(messages > 1, "20k rows come in more than one message");
    assert_eq!(rows.len(), 20_000);
    assert_eq!(rows[19_999][2], "19999.0");

    // Errors in a stream come as one message with an error header.
    let mut stream = raw
        .stream_sql_query(SqlQueryRequest {
            context: ctx(),
            tables: vec![],
            sql: "SELECT * FROM missing".to_string(),
            forwarded: false,
            catalog_fingerprint: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.header.unwrap().code, 404);

    // A database in the request context is honoured.
    let client = server.client().await;
    exec(&client, "CREATE DATABASE other").await;
    let mut w = points("in_other", "x", 0, 3);
    w.context = Some(RequestContext {
        database: "other".to_string(),
    });
    assert_eq!(raw.write(w).await.unwrap().into_inner().success, 3);
    let out = client
        .sql("other", "SELECT count(*) FROM in_other")
        .await
        .unwrap();
    match out {
        strata_client::SqlOutput::Rows(b) => {
            assert_eq!(rows_as_strings(&b), vec![vec!["3".to_string()]])
        }
        other => panic!("{other:?}"),
    }
    let mut w = points("t", "x", 0, 1);
    w.context = Some(RequestContext {
        database: "nowhere".to_string(),
    });
    let header = raw.write(w).await.unwrap().into_inner().header.unwrap();
    assert_eq!(header.code, 404, "{}", header.error);
    assert!(header.error.contains("Database not found: nowhere"));
}

/// A StreamWrite whose first message wrote an APPEND table's rows and whose
/// next one fails with a retryable error (the Kafka broker is stopped) is
/// answered as a partial write (400, not retryable), with the rows written
/// counted: a client retrying the whole stream would write them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_write_failing_after_an_append_message_is_a_partial_write() {
    let services = strata_integration_tests::Services::private();
    let (args, mut env) = services.remote_storage("stream-partial");
    env.push(("STRATA_WAL__PRODUCE_TIMEOUT".to_string(), "3s".to_string()));
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start_with(&dir.path().join("data"), args, env).await;
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE ap (host STRING TAG, v DOUBLE, timestamp TIMESTAMP NOT NULL, \
         TIMESTAMP KEY(timestamp)) WITH (update_mode='APPEND')",
    )
    .await;
    let mut raw = StorageServiceClient::connect(format!("http://{}", server.endpoint()))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let call = tokio::spawn(async move {
        raw.stream_write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner()
    });
    tx.send(points("ap", "a", 0, 10)).await.unwrap();
    // The first message is written before the broker goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = strata_integration_tests::query(&client, "SELECT count(*) FROM ap").await;
        if n == [["10"]] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    services.stop_broker();
    tx.send(points("ap", "b", 100, 10)).await.unwrap();
    drop(tx);
    let resp = tokio::time::timeout(std::time::Duration::from_secs(120), call)
        .await
        .expect("the stream is answered")
        .unwrap();
    let header = resp.header.unwrap();
    assert_eq!(header.code, 400, "{header:?}");
    assert!(header.error.contains("partial write"), "{header:?}");
    assert_eq!(resp.success, 10);
}
