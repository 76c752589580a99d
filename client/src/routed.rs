//! A cluster-aware client: sends each write to the leader of its table's
//! shard, with routes cached and refreshed only on route errors.
//!
//! - `NotLeader`: the shard moved; the route is refreshed once and the
//!   request retried on the new leader.
//! - `ShardMoving` (or `NotLeader` again while a move is in flight): the
//!   request is retried after a short pause.
//! - `TableNotFound`: the table really is missing; returned as it is.
//! - The leader unreachable: re-routed and retried when nothing was sent;
//!   when the request was sent and no answer came (the leader died), the
//!   error is returned, since the rows may or may not be written.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use strata_proto::{common::ErrorKind, storage::WriteRequest};

use crate::{Client, Error, Result};

/// Where a table is led, as a route answer said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedRoute {
    pub endpoint: String,
    pub shard: u64,
    pub version: u64,
}

/// How long a write keeps retrying while its shard is between leaders.
const MOVING_RETRY: Duration = Duration::from_millis(300);
const MOVING_ATTEMPTS: usize = 50;

/// A client of a whole cluster.
#[derive(Debug)]
pub struct RoutedClient {
    seeds: Vec<String>,
    clients: Mutex<HashMap<String, Client>>,
    routes: Mutex<HashMap<(String, String), CachedRoute>>,
    refreshes: AtomicU64,
}

impl RoutedClient {
    /// `seeds` are instances' gRPC addresses; any of them answers routes.
    pub fn new(seeds: Vec<String>) -> Self {
        Self {
            seeds,
            clients: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// How many times routes were fetched (the first lookup of a table
    /// included).
    pub fn route_fetches(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// The cached route of a table, if any.
    pub fn cached(&self, database: &str, table: &str) -> Option<CachedRoute> {
        self.routes
            .lock()
            .ok()?
            .get(&(database.to_string(), table.to_string()))
            .cloned()
    }

    /// A connection to `endpoint`, reused.
    pub async fn client(&self, endpoint: &str) -> Result<Client> {
        if let Some(c) = self
            .clients
            .lock()
            .ok()
            .and_then(|m| m.get(endpoint).cloned())
        {
            return Ok(c);
        }
        let c = Client::connect(endpoint).await?;
        if let Ok(mut m) = self.clients.lock() {
            m.insert(endpoint.to_string(), c.clone());
        }
        Ok(c)
    }

    /// The route of a table: cached, or asked of a seed.
    pub async fn route(&self, database: &str, table: &str) -> Result<CachedRoute> {
        if let Some(r) = self.cached(database, table) {
            return Ok(r);
        }
        self.refresh(database, table).await
    }

    async fn refresh(&self, database: &str, table: &str) -> Result<CachedRoute> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for seed in &self.seeds {
            let client = match self.client(seed).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match client.route(database, vec![table.to_string()]).await {
                Ok(resp) => {
                    let Some(r) = resp.routes.into_iter().find(|r| r.table == table) else {
                        return Err(Error::Server {
                            code: 404,
                            kind: ErrorKind::TableNotFound,
                            retryable: false,
                            message: format!("Table not found: {table}"),
                            retry_after: None,
                        });
                    };
                    let endpoint = r
                        .endpoint
                        .map(|e| format!("{}:{}", e.ip, e.port))
                        .unwrap_or_default();
                    let route = CachedRoute {
                        endpoint,
                        shard: r.shard_id,
                        version: r.shard_version,
                    };
                    if let Ok(mut m) = self.routes.lock() {
                        m.insert((database.to_string(), table.to_string()), route.clone());
                    }
                    return Ok(route);
                }
                Err(e) if e.kind().is_some() && !e.is_retryable() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Decode("no seed endpoints".to_string())))
    }

    fn forget(&self, database: &str, table: &str) {
        if let Ok(mut m) = self.routes.lock() {
            m.remove(&(database.to_string(), table.to_string()));
        }
    }

    /// Writes the rows of one table to its shard's leader.
    pub async fn write(&self, request: WriteRequest) -> Result<u32> {
        let database = request
            .context
            .as_ref()
            .map(|c| c.database.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "public".to_string());
        let Some(table) = request.table_requests.first().map(|t| t.table.clone()) else {
            return Ok(0);
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let route = self.route(&database, &table).await?;
            let result = match self.client(&route.endpoint).await {
                Ok(c) => c.write(request.clone()).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => return Ok(n),
                Err(e) if attempt < MOVING_ATTEMPTS => match e.kind() {
                    Some(ErrorKind::NotLeader) => {
                        // The shard moved: one refresh finds the new leader;
                        // while it is still moving, pause between tries.
                        self.forget(&database, &table);
                        if attempt > 1 {
                            tokio::time::sleep(MOVING_RETRY).await;
                        }
                    }
                    Some(ErrorKind::ShardMoving) => {
                        let pause = match &e {
                            Error::Server {
                                retry_after: Some(d),
                                ..
                            } => *d,
                            _ => MOVING_RETRY,
                        };
                        tokio::time::sleep(pause).await;
                    }
                    None if matches!(e, Error::Connect { .. }) => {
                        // The leader is unreachable (killed), and nothing was
                        // sent: re-route and try again.
                        self.forget(&database, &table);
                        tokio::time::sleep(MOVING_RETRY).await;
                    }
                    None => {
                        // Sent, with no answer: the rows may or may not be
                        // written, so a blind retry could write them twice.
                        // Re-route next time and let the caller decide.
                        self.forget(&database, &table);
                        return Err(e);
                    }
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
}
