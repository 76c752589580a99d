//! A ledger of acknowledged writes under faults: [`LedgerWriter`] writes
//! single rows through every server at once and records each one
//! acknowledged, so that a test can check afterwards that every
//! acknowledged row is there exactly once.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use strata_client::Client;

/// Writes `INSERT INTO table (n, ts)` rows, one task per server (so that a
/// dead, paused or cut-off server does not slow the others), one id per
/// attempt with a 5 s timeout. An attempt that fails or times out is not
/// retried with its id, so a loss or a duplicate shows in the ledger.
pub struct LedgerWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    by_server: Arc<Mutex<Vec<usize>>>,
    clients: Arc<Mutex<Vec<Client>>>,
    avoid: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LedgerWriter {
    /// Starts writing to `table` (columns `n BIGINT`, `ts TIMESTAMP`)
    /// through each of `clients`.
    pub fn start(clients: Vec<Client>, table: &'static str) -> Self {
        let servers = clients.len();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let by_server = Arc::new(Mutex::new(vec![0; servers]));
        let clients = Arc::new(Mutex::new(clients));
        let avoid = Arc::new(AtomicUsize::new(usize::MAX));
        let next = Arc::new(AtomicI64::new(0));
        let tasks = (0..servers)
            .map(|i| {
                let (stop, acked, by_server, clients, avoid, next) = (
                    stop.clone(),
                    acked.clone(),
                    by_server.clone(),
                    clients.clone(),
                    avoid.clone(),
                    next.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if avoid.load(Ordering::Relaxed) == i {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        let n = next.fetch_add(1, Ordering::Relaxed) + 1;
                        let client = clients.lock().unwrap()[i].clone();
                        let sql = format!(
                            "INSERT INTO {table} (n, ts) VALUES ({n}, {})",
                            1_700_000_000_000i64 + n
                        );
                        match tokio::time::timeout(Duration::from_secs(5), client.sql("", &sql))
                            .await
                        {
                            Ok(Ok(_)) => {
                                acked.lock().unwrap().insert(n);
                                by_server.lock().unwrap()[i] += 1;
                            }
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            by_server,
            clients,
            avoid,
            tasks,
        }
    }

    /// Sends nothing more through server `i` (paused or about to be
    /// killed); `None`: through every server again. An attempt already in
    /// flight ends within its timeout.
    pub fn avoid(&self, i: Option<usize>) {
        self.avoid.store(i.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Writes through server `i` from now on go to `client` (a restarted
    /// server at a new address).
    pub fn set_client(&self, i: usize, client: Client) {
        self.clients.lock().unwrap()[i] = client;
    }

    /// Rows acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Rows acknowledged by server `i` so far.
    pub fn acked_by(&self, i: usize) -> usize {
        self.by_server.lock().unwrap()[i]
    }

    /// Waits until `more` further rows are acknowledged; panics with
    /// `logs()` after two minutes.
    pub async fn progress(&self, more: usize, what: &str, logs: impl Fn() -> String) {
        let target = self.acked() + more;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "writes made no progress ({what}); logs:\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops writing and returns the acknowledged ids.
    pub async fn finish(self) -> BTreeSet<i64> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}
