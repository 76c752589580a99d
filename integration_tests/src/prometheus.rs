//! A real Prometheus server (the Debian package's binary, unpacked by
//! `scripts/test-services install`), for PromQL conformance and for
//! scrape-and-remote-write tests.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_addr, http_get, terminate};

/// `$STRATA_PROMETHEUS`, or where `scripts/test-services install` unpacks it.
pub fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("STRATA_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/strata-tools/prometheus/usr/bin/prometheus")
        });
    assert!(
        path.exists(),
        "Prometheus is not installed at {}: run `scripts/test-services install` \
         (it unpacks the Debian package `prometheus`) or set STRATA_PROMETHEUS",
        path.display()
    );
    path
}

/// One Prometheus process with its own TSDB directory, on a loopback port,
/// with the remote-write receiver on.
pub struct PrometheusProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl PrometheusProcess {
    /// Starts Prometheus with `config` (YAML) in `dir` and waits until ready.
    pub async fn start(dir: &Path, config: &str) -> Self {
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = free_addr();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("prometheus log");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--storage.tsdb.retention.time=1d")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self {
            child: Some(child),
            addr,
            log: log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("prometheus exited with {status}:\n{}", p.log_tail());
                }
            }
            if http_get(addr, "/-/ready")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}
