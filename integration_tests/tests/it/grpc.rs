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
