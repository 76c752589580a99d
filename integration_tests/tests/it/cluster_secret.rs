//! The cluster secret: an instance refuses control RPCs (`ShardControl`)
//! without it, and meta refuses instance RPCs without it.

use std::time::Duration;

use strata_integration_tests::{
    cluster::{ClusterOptions, TestCluster},
    exec, http_post_bytes, query,
};
use strata_proto::meta::{
    meta_service_client::MetaServiceClient, shard_control_client::ShardControlClient,
    CatalogRequest, TableEvent,
};
use tonic::{transport::Channel, Code, Request};

fn with_secret<T>(message: T, secret: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(Duration::from_secs(10));
    if let Some(s) = secret {
        r.metadata_mut()
            .insert("x-strata-cluster-secret", s.parse().expect("ascii"));
    }
    r
}

async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_rpcs_without_the_cluster_secret_are_refused() {
    let cluster = TestCluster::start(ClusterOptions {
        servers: 1,
        shard_count: 2,
        ..Default::default()
    })
    .await;
    let server = &cluster.servers[0];
    let client = server.client().await;
    exec(
        &client,
        "CREATE TABLE guarded (ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts))",
    )
    .await;
    exec(&client, "INSERT INTO guarded VALUES (1, 1.0), (2, 2.0)").await;
    exec(&client, "FLUSH TABLE guarded").await;

    // Meta answers instance RPCs only with the secret.
    let mut meta = MetaServiceClient::new(channel(&cluster.metas[0].endpoint()).await);
    let refused = meta
        .get_catalog(with_secret(CatalogRequest {}, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let refused = meta
        .get_catalog(with_secret(CatalogRequest {}, Some("not-the-secret")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let catalog = meta
        .get_catalog(with_secret(CatalogRequest {}, Some(&cluster.secret)))
        .await
        .expect("catalog with the secret")
        .into_inner();
    let record_json = catalog
        .tables_json
        .into_iter()
        .find(|t| t.contains("\"guarded\""))
        .expect("the table's record");

    // The instance refuses DropTableOnShard, which would delete the table's
    // files, without the secret or with a wrong one.
    let mut control = ShardControlClient::new(channel(&server.endpoint()).await);
    let drop = |secret: Option<&str>| {
        with_secret(
            TableEvent {
                record_json: record_json.clone(),
            },
            secret,
        )
    };
    let refused = control.drop_table_on_shard(drop(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let refused = control
        .drop_table_on_shard(drop(Some("not-the-secret")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    let refused = control
        .drop_table_on_shard(drop(Some(&format!("{}x", cluster.secret))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    // The table and its rows are still there, from the SSTs as well as the
    // memtable.
    assert_eq!(
        query(&client, "SELECT count(*) FROM guarded").await,
        vec![vec!["2".to_string()]]
    );

    // Meta's HTTP routes that change the cluster (move a shard, pause or
    // resume scheduling) need the secret too; the read-only ones do not.
    let meta_http = cluster.metas[0].http;
    let shard = cluster.shards().await[0]["id"]
        .as_u64()
        .expect("a shard id");
    let to = server.endpoint();
    let move_path = format!("/shards/{shard}/move?node={to}");
    for path in ["/schedule/pause", "/schedule/resume", move_path.as_str()] {
        let (code, body) = http_post_bytes(meta_http, path, &[], b"")
            .await
            .expect("meta answers");
        assert_eq!(code, 401, "{path}: {body}");
        let (code, body) = http_post_bytes(
            meta_http,
            path,
            &[("x-strata-cluster-secret", "not-the-secret")],
            b"",
        )
        .await
        .expect("meta answers");
        assert_eq!(code, 403, "{path}: {body}");
    }
    assert_eq!(cluster.meta_get("/schedule").await["paused"], false);
    let bearer = format!("Bearer {}", cluster.secret);
    let (code, body) = http_post_bytes(
        meta_http,
        "/schedule/pause",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await
    .expect("meta answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(cluster.meta_get("/schedule").await["paused"], true);
    // `strata admin` sends `$STRATA_CLUSTER_SECRET`.
    let admin = |secret: &str| {
        std::process::Command::new(strata_integration_tests::strata_binary())
            .args(["admin", "--meta", &meta_http.to_string(), "resume-schedule"])
            .env("STRATA_CLUSTER_SECRET", secret)
            .output()
            .expect("run strata admin")
    };
    let out = admin("not-the-secret");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&cluster.secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.meta_get("/schedule").await["paused"], false);

    // With the secret the instance accepts a control RPC (re-installing the
    // table is idempotent).
    let accepted = control
        .create_table_on_shard(drop(Some(&cluster.secret)))
        .await
        .expect("accepted with the secret")
        .into_inner();
    assert_eq!(accepted.header.map(|h| h.code), Some(200));
    assert_eq!(
        query(&client, "SELECT count(*) FROM guarded").await,
        vec![vec!["2".to_string()]]
    );
}
