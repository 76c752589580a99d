//! The harness for end-to-end tests: real `strata` processes on loopback
//! ports and temporary directories, and helpers to drive them.
//!
//! Every process a test starts is owned by a [`StrataProcess`]; dropping it
//! kills that process (by its pid, never by name).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cluster;
pub mod ledger;
pub mod prometheus;
pub mod slt;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The `strata` binary: `$STRATA_BIN`, or the one built next to this test.
pub fn strata_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("strata");
    assert!(
        bin.exists(),
        "the strata binary is not built at {}; run `cargo build --bin strata` or set STRATA_BIN",
        bin.display()
    );
    bin
}

/// A free port on 127.0.0.1, below the kernel's ephemeral range
/// (32768–60999 by default): a port from that range can be taken by any
/// outgoing connection between this check and the server's bind.
///
/// nextest runs tests in parallel processes, each picking ports for the
/// servers it starts; two could pick the same free port before either
/// server binds it. Every port handed out is reserved with a file created
/// exclusively in a directory all test processes share, so no other test
/// gets it for [`PORT_RESERVATION`] (a restarted server keeps its port).
pub fn free_addr() -> SocketAddr {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if !reserve_port(port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local addr");
        }
    }
    panic!("no free port in 20000..32000 after 1000 tries");
}

/// How long a port handed out by [`free_addr`] stays reserved.
pub const PORT_RESERVATION: Duration = Duration::from_secs(30 * 60);

/// Reserves `port` for this test process: true if no other test took it
/// within [`PORT_RESERVATION`].
fn reserve_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join(format!(
        "strata-test-ports-{}",
        // One directory per user: a stale one of another user is not writable.
        std::env::var("USER").unwrap_or_default()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(port.to_string());
    let mark = format!("{}\n", std::process::id());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            use std::io::Write;
            let _ = f.write_all(mark.as_bytes());
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // An old reservation (an earlier run) is taken over; the
            // rename makes only one of two racing takers win.
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PORT_RESERVATION);
            if !old {
                return false;
            }
            let claim = dir.join(format!("{port}.{}", std::process::id()));
            if std::fs::write(&claim, &mark).is_err() {
                return false;
            }
            // rename replaces atomically; whoever renames last owns it, so
            // read back to see who won.
            let _ = std::fs::rename(&claim, &path);
            std::fs::read_to_string(&path).is_ok_and(|s| s == mark)
        }
        Err(_) => {
            // No shared directory (read-only /tmp): fall back to the bind check.
            true
        }
    }
}

/// One `strata standalone` process.
pub struct StrataProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub pg: SocketAddr,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl StrataProcess {
    /// Starts `strata standalone` on `data_dir` with fresh ports and waits
    /// until it serves.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with_env(data_dir, Vec::new()).await
    }

    pub async fn start_with_env(data_dir: &Path, env: Vec<(String, String)>) -> Self {
        Self::start_with(data_dir, Vec::new(), env).await
    }

    /// Starts with extra command-line arguments (e.g. `--config FILE`).
    pub async fn start_with(
        data_dir: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Self {
        let mut p = Self {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc: free_addr(),
            http: free_addr(),
            pg: free_addr(),
            log: data_dir.with_extension("log"),
            env,
            args,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new(strata_binary());
        cmd.arg("standalone")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--http-addr")
            .arg(self.http.to_string())
            .arg("--pg-addr")
            .arg(self.pg.to_string())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // A fixed parallelism keeps plans the same on any machine.
            .env("STRATA_QUERY__THREADS", "2");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn strata");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(120)).await;
    }

    /// Polls `/health` until it answers 200.
    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "strata exited during startup with {status}; log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if http_get(self.http, "/health")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "strata did not become ready in {timeout:?}; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn endpoint(&self) -> String {
        self.grpc.to_string()
    }

    pub async fn client(&self) -> strata_client::Client {
        strata_client::Client::connect(&self.endpoint())
            .await
            .expect("connect to strata")
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    /// Starts the process again on a new data directory (same ports).
    pub async fn restart_in(&mut self, data_dir: &Path) {
        assert!(self.child.is_none(), "stop or kill the process first");
        self.data_dir = data_dir.to_path_buf();
        self.spawn().await;
    }

    /// Starts the process again on the same data directory and ports.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the process first");
        self.spawn().await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the process in bytes (Linux), if it runs.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for StrataProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Stops a child with SIGTERM (a clean shutdown) and waits for it; after
/// 60 s, kills it.
pub fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(child.try_wait(), Ok(Some(_))) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The remote services of `scripts/test-services` (Kafka, S3, etcd), for
/// tests that need them. Panics with instructions when they are not set up:
/// such tests fail loudly rather than pass without their services.
///
/// [`Services::from_env`] is the shared set every test uses. A test that
/// stops a service uses [`Services::private`]: its own broker, S3 server and
/// etcd, so that the outage cannot disturb tests running beside it.
pub struct Services {
    script: PathBuf,
    /// The state directory of a private set (stopped on drop).
    private: Option<tempfile::TempDir>,
    /// Endpoints of a private set, as environment variables.
    env: Vec<(String, String)>,
}

impl Services {
    pub fn from_env() -> Self {
        let script = std::env::var_os("STRATA_TEST_SERVICES").unwrap_or_else(|| {
            panic!(
                "remote services are not set up: run `scripts/test-services start` and \
                 `eval \"$(scripts/test-services env)\"` (scripts/test does both)"
            )
        });
        for var in [
            "STRATA_KAFKA_BROKERS",
            "AWS_ENDPOINT_URL",
            "STRATA_S3_BUCKET",
        ] {
            assert!(
                std::env::var_os(var).is_some(),
                "{var} is not set; see scripts/test-services env"
            );
        }
        Self {
            script: PathBuf::from(script),
            private: None,
            env: Vec::new(),
        }
    }

    /// A private set of services on new ports, for a test that stops them.
    pub fn private() -> Self {
        let shared = Self::from_env();
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new(&shared.script)
            .arg("start")
            .env("STRATA_SERVICES_DIR", dir.path())
            .stdout(Stdio::null())
            .status()
            .expect("run test-services start");
        assert!(status.success(), "starting private services failed");
        let out = Command::new(&shared.script)
            .arg("env")
            .env("STRATA_SERVICES_DIR", dir.path())
            .output()
            .expect("run test-services env");
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k != "STRATA_TEST_SERVICES")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            script: shared.script.clone(),
            private: Some(dir),
            env,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.script);
        if let Some(dir) = &self.private {
            cmd.env("STRATA_SERVICES_DIR", dir.path());
        }
        cmd
    }

    fn run(&self, verb: &str, name: &str) {
        let status = self
            .command()
            .arg(verb)
            .arg(name)
            .status()
            .expect("run test-services");
        assert!(status.success(), "test-services {verb} {name} failed");
    }

    /// Stops one service (`kafka`, `s3`, `etcd`). Only for a private set:
    /// stopping a shared service would break the tests running beside.
    pub fn stop(&self, name: &str) {
        assert!(
            self.private.is_some(),
            "stop services only in a private set (Services::private)"
        );
        self.run("stop-one", name);
    }

    /// Starts it again on the same port and data.
    pub fn start(&self, name: &str) {
        self.run("start-one", name);
    }

    /// The endpoints of a private set as environment variables (empty for
    /// the shared set, whose variables every process inherits).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    fn run_verb(&self, verb: &str) {
        assert!(
            self.private.is_some(),
            "stop or kill the broker only in a private set (Services::private)"
        );
        let status = self
            .command()
            .arg(verb)
            .status()
            .expect("run test-services");
        assert!(status.success(), "test-services {verb} failed");
    }

    /// Stops the Kafka broker alone with SIGTERM (its storage stays up).
    pub fn stop_broker(&self) {
        self.run_verb("stop-broker");
    }

    /// Kills the Kafka broker alone with SIGKILL.
    pub fn kill_broker(&self) {
        self.run_verb("kill-broker");
    }

    /// Starts the broker again on the same port and data.
    pub fn start_broker(&self) {
        self.run_verb("start-broker");
    }

    /// A variable of this set's environment (`STRATA_KAFKA_BROKERS`, …).
    pub fn var(&self, name: &str) -> Option<String> {
        match &self.private {
            Some(_) => self
                .env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            None => std::env::var(name).ok(),
        }
    }

    /// Arguments and environment that run `strata standalone` on Kafka and
    /// S3, isolated from other tests by a unique topic and key prefix.
    pub fn remote_storage(&self, name: &str) -> (Vec<String>, Vec<(String, String)>) {
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let config =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config/standalone-kafka-s3.toml");
        let mut env = self.env.clone();
        env.push((
            "STRATA_WAL__TOPIC_PREFIX".to_string(),
            format!("t-{unique}"),
        ));
        env.push((
            "STRATA_OBJECT_STORE__PREFIX".to_string(),
            format!("t-{unique}"),
        ));
        (
            vec!["--config".to_string(), config.display().to_string()],
            env,
        )
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if self.private.is_some() {
            let _ = self.command().arg("stop").status();
        }
    }
}

/// A `POST` with raw bytes and extra headers; returns (status, body).
pub async fn http_post_bytes(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let (status, body) = http_post_raw(addr, path, headers, body).await?;
    Some((status, String::from_utf8_lossy(&body).to_string()))
}

/// A `POST` with raw bytes and extra headers; returns (status, raw body).
pub async fn http_post_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut head = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut resp))
        .await
        .ok()?
        .ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, resp[split + 4..].to_vec()))
}

/// A minimal HTTP/1.0 request; returns (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut resp))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// Every file under `dir` (recursively) with the given extension.
pub fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Formats every row of `batches` as strings (NULL for nulls).
pub fn rows_as_strings(batches: &[arrow::record_batch::RecordBatch]) -> Vec<Vec<String>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    out
}

/// Runs a query and returns its rows as strings.
pub async fn query(client: &strata_client::Client, sql: &str) -> Vec<Vec<String>> {
    match client.sql("", sql).await {
        Ok(strata_client::SqlOutput::Rows(batches)) => rows_as_strings(&batches),
        Ok(other) => panic!("expected rows from {sql}, got {other:?}"),
        Err(e) => panic!("{sql} failed: {e}"),
    }
}

/// Runs a statement that returns no rows.
pub async fn exec(client: &strata_client::Client, sql: &str) {
    if let Err(e) = client.sql("", sql).await {
        panic!("{sql} failed: {e}");
    }
}
