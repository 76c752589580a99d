//! The Helm chart in `helm/strata/`: `helm lint`, `helm template` with the
//! default values and with external Kafka, S3 and etcd, the output
//! validated against Kubernetes' schemas (`kubernetes-validate --strict`),
//! and the rendered pods started as local processes
//! (`integration_tests/helm/rendered_cluster.py`: each pod's command,
//! arguments, environment and mounted configuration as the chart renders
//! them, service names mapped to loopback addresses) forming a working
//! cluster on the test services' Kafka and S3, so that the chart's
//! configuration is the one the binary accepts.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use strata_integration_tests::{strata_binary, Services};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
}

/// Helm, installed by `scripts/bootstrap --python`.
fn helm() -> PathBuf {
    let p = home().join(".cache/strata-tools/bin/helm");
    assert!(
        p.exists(),
        "{} is missing: run scripts/bootstrap --python",
        p.display()
    );
    p
}

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("STRATA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/strata-venv"));
    venv.join("bin").join(name)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn must(cmd: &mut Command) -> String {
    let (ok, out) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{out}");
    out
}

const SECRET: &str = "helm-test-secret-0123456789abcdef";

/// `helm template` with `args`, written to `out`.
fn template(args: &[&str], out: &Path) {
    let rendered = must(
        Command::new(helm())
            .current_dir(repo())
            .args(["template", "strata", "helm/strata"])
            .args(args),
    );
    std::fs::write(out, rendered).expect("write rendered chart");
}

fn validate(file: &Path) {
    must(
        Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .arg(file),
    );
}

#[test]
fn the_chart_lints_renders_and_validates_with_default_and_external_values() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("clusterSecret.value={SECRET}");
    must(Command::new(helm()).current_dir(repo()).args([
        "lint",
        "--strict",
        "helm/strata",
        "--set",
        &secret,
    ]));
    must(Command::new(helm()).current_dir(repo()).args([
        "lint",
        "--strict",
        "helm/strata",
        "-f",
        "helm/strata/ci/external-values.yaml",
    ]));

    let default = dir.path().join("default.yaml");
    template(&["--set", &secret], &default);
    validate(&default);
    let text = std::fs::read_to_string(&default).unwrap();
    for kind in [
        "kind: StatefulSet",
        "kind: ConfigMap",
        "kind: Secret",
        "kind: Service",
        "kind: PodDisruptionBudget",
    ] {
        assert!(text.contains(kind), "the default chart renders no {kind}");
    }
    assert!(
        text.contains("--embedded-etcd"),
        "meta embeds etcd by default"
    );

    let external = dir.path().join("external.yaml");
    template(&["-f", "helm/strata/ci/external-values.yaml"], &external);
    validate(&external);
    let text = std::fs::read_to_string(&external).unwrap();
    assert!(
        !text.contains("--embedded-etcd"),
        "external etcd values still embed etcd"
    );

    // Without a cluster secret the chart refuses to render.
    let (ok, out) =
        run(Command::new(helm())
            .current_dir(repo())
            .args(["template", "strata", "helm/strata"]));
    assert!(!ok, "rendered without a cluster secret:\n{out}");
    assert!(out.contains("clusterSecret"), "{out}");

    // yamllint on the chart's own YAML (templates are Go templates).
    must(
        Command::new(venv_bin("yamllint"))
            .current_dir(repo())
            .args(["-d", "relaxed", "--strict"])
            .args([
                "helm/strata/Chart.yaml",
                "helm/strata/values.yaml",
                "helm/strata/ci/",
            ]),
    );
}

/// The rendered chart, run as local processes: three meta pods whose
/// embedded etcds form one cluster, three server pods, on the test
/// services' Kafka and S3.
#[test]
fn the_rendered_chart_runs_as_a_working_cluster() {
    let services = Services::private();
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    let brokers = services.var("STRATA_KAFKA_BROKERS").expect("brokers");
    let endpoint = services.var("AWS_ENDPOINT_URL").expect("S3 endpoint");
    let bucket = services.var("STRATA_S3_BUCKET").expect("bucket");
    let key = services.var("AWS_ACCESS_KEY_ID").expect("key");
    let secret_key = services.var("AWS_SECRET_ACCESS_KEY").expect("secret key");
    template(
        &[
            "--set",
            &format!("clusterSecret.value={SECRET}"),
            "--set",
            &format!("kafka.brokers={brokers}"),
            "--set",
            "kafka.deleteRecords=false",
            "--set",
            &format!("s3.endpoint={endpoint}"),
            "--set",
            &format!("s3.bucket={bucket}"),
            "--set",
            &format!("s3.accessKeyId={key}"),
            "--set",
            &format!("s3.secretAccessKey={secret_key}"),
        ],
        &rendered,
    );
    let python = std::env::var_os("STRATA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv_bin("python"));
    let (ok, out) = run(Command::new(python)
        .arg(repo().join("integration_tests/helm/rendered_cluster.py"))
        .arg(&rendered)
        .arg("--workdir")
        .arg(dir.path().join("pods"))
        .args(["--timeout", "180"])
        .env("STRATA_BIN", strata_binary()));
    eprintln!("{out}");
    assert!(ok, "the rendered chart did not form a working cluster");
}
