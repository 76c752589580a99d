//! HoraeDB's published Python client (`horaedb-client` on PyPI) writes rows
//! and runs SQL against `strata standalone`, unchanged.
//!
//! The interpreter comes from `$STRATA_PYTHON` (the test script installs the
//! client into a virtualenv and sets it). Without it the test fails loudly
//! rather than passing silently.

use std::process::Command;

use strata_integration_tests::{query, StrataProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn horaedb_python_client_writes_and_queries() {
    let python = std::env::var("STRATA_PYTHON").unwrap_or_else(|_| {
        panic!("STRATA_PYTHON is not set: run the suite with scripts/test, which installs horaedb-client into a virtualenv")
    });
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/horaedb_client_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.endpoint())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "python client check failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.log_tail()
    );
    // What Python wrote is visible to everyone else too.
    let client = server.client().await;
    let rows = query(&client, "SELECT count(*) FROM py_demo").await;
    assert_eq!(rows, vec![vec!["11".to_string()]]);
}
