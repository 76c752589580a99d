//! The `strata sql` contract: `-e` and `-f` run statements in order, output
//! formats, and a failed statement exits non-zero with the server's message
//! on stderr.

use std::process::Command;

use strata_integration_tests::{strata_binary, StrataProcess};

fn strata_sql(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(strata_binary())
        .arg("sql")
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run strata sql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_sql_runs_statements_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = StrataProcess::start(&dir.path().join("data")).await;
    let ep = server.endpoint();

    let (ok, _, err) = strata_sql(
        &ep,
        &["-e", "CREATE DATABASE metrics; USE metrics; CREATE TABLE m (h STRING TAG, ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts)); INSERT INTO m VALUES ('x', 1000, 1.5), ('y', 2000, 2.5);"],
    );
    assert!(ok, "{err}");

    let (ok, out, err) = strata_sql(
        &ep,
        &[
            "-d",
            "metrics",
            "--format",
            "csv",
            "-e",
            "SELECT h, v FROM m ORDER BY h",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "h,v\nx,1.5\ny,2.5\n");

    let (ok, out, err) = strata_sql(
        &ep,
        &[
            "--format",
            "json",
            "-e",
            "SELECT count(*) AS n FROM metrics.m",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"[{"n":2}]"#);

    let (ok, out, err) = strata_sql(&ep, &["-e", "SELECT h FROM metrics.m ORDER BY h"]);
    assert!(ok, "{err}");
    assert!(out.contains("| h |") && out.contains("| x |"), "{out}");

    let file = dir.path().join("script.sql");
    std::fs::write(&file, "USE metrics;\n-- a comment; with a semicolon\nINSERT INTO m VALUES ('z', 3000, 3.5);\nSELECT count(*) FROM m;\n").unwrap();
    let (ok, out, err) = strata_sql(&ep, &["--format", "csv", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.ends_with("3\n"), "{out}");

    // The first failure stops the run, exits non-zero, and says why.
    let (ok, _, err) = strata_sql(&ep, &["-e", "SELECT 1; SELEC oops; SELECT 2"]);
    assert!(!ok);
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.contains("Line: 1, Column: 1"), "{err}");
    let (ok, _, err) = strata_sql(&ep, &["-e", "SELECT * FROM missing_table"]);
    assert!(!ok);
    assert!(err.contains("Table not found: missing_table"), "{err}");

    // Unreachable server.
    let (ok, _, err) = strata_sql("127.0.0.1:1", &["-e", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("cannot connect"), "{err}");
}
