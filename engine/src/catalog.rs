//! The standalone catalog: databases and tables, persisted as one JSON
//! document in the object store (`{cluster}/catalog.json`).
//!
//! Every DDL change is persisted (one atomic put) before it is acknowledged.
//! In cluster mode the meta service owns this information instead: the
//! catalog is then an in-memory copy ([`Catalog::in_memory`]) that the
//! instance installs from meta and keeps current.

use std::{collections::BTreeMap, sync::Arc};

use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_sst::{ShardId, TableId};

use crate::{options::TableOptions, schema::TableSchema, Error, Result};

/// The database every instance starts with, used when none is named.
pub const DEFAULT_DATABASE: &str = "public";

/// Names the engine uses itself: system tables and DataFusion's
/// `information_schema`.
pub const RESERVED_DATABASES: &[&str] = &["system", "information_schema"];

/// What the catalog knows about one table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    pub id: TableId,
    pub database: String,
    pub name: String,
    pub schema: TableSchema,
    pub options: TableOptions,
    pub shard: ShardId,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CatalogState {
    /// Format version of this document.
    format: u32,
    next_table_id: u64,
    databases: BTreeMap<String, i64>,
    tables: BTreeMap<TableId, TableEntry>,
}

/// Databases and tables of a standalone instance.
#[derive(Debug)]
pub struct Catalog {
    /// Where the catalog is persisted; `None` for a copy of meta's.
    store: Option<Arc<dyn ObjectStore>>,
    path: Path,
    state: RwLock<CatalogState>,
    /// Serialises changes so that persisted versions never interleave.
    write_lock: tokio::sync::Mutex<()>,
}

/// Refuses empty and reserved database names.
pub fn validate_database_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidSchema(
            "database name must not be empty".into(),
        ));
    }
    if RESERVED_DATABASES.contains(&name) {
        return Err(Error::InvalidSchema(format!(
            "database name {name} is reserved"
        )));
    }
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Catalog {
    /// Loads the catalog, creating an empty one with the default database.
    pub async fn open(store: Arc<dyn ObjectStore>, cluster: &str) -> Result<Self> {
        let path = Path::from(format!("{cluster}/catalog.json"));
        let state = match store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|source| Error::ObjectStore {
                    op: "read",
                    path: path.to_string(),
                    source: Box::new(source),
                })?;
                serde_json::from_slice::<CatalogState>(&bytes)
                    .map_err(|e| Error::Catalog(format!("{path}: {e}")))?
            }
            Err(object_store::Error::NotFound { .. }) => CatalogState {
                format: 1,
                next_table_id: 1,
                ..Default::default()
            },
            Err(source) => {
                return Err(Error::ObjectStore {
                    op: "read",
                    path: path.to_string(),
                    source: Box::new(source),
                })
            }
        };
        let catalog = Self {
            store: Some(store),
            path,
            state: RwLock::new(state),
            write_lock: tokio::sync::Mutex::new(()),
        };
        if !catalog.database_exists(DEFAULT_DATABASE) {
            catalog.create_database(DEFAULT_DATABASE, true).await?;
        }
        Ok(catalog)
    }

    /// An empty, unpersisted catalog: a copy of the meta service's, filled
    /// with [`Self::install`].
    pub fn in_memory() -> Self {
        Self {
            store: None,
            path: Path::from("meta"),
            state: RwLock::new(CatalogState {
                format: 1,
                next_table_id: 1,
                ..Default::default()
            }),
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Replaces the whole content (a copy of meta's catalog).
    pub fn install(&self, databases: Vec<String>, tables: Vec<TableEntry>) {
        let mut state = self.state.write();
        state.databases = databases.into_iter().map(|d| (d, 0)).collect();
        state.tables = tables.into_iter().map(|t| (t.id, t)).collect();
        state.next_table_id = state.tables.keys().map(|t| t.0 + 1).max().unwrap_or(1);
    }

    /// Adds or replaces one table (a copy of meta's record).
    pub fn install_table(&self, entry: TableEntry) {
        let mut state = self.state.write();
        state.databases.entry(entry.database.clone()).or_insert(0);
        state.tables.insert(entry.id, entry);
    }

    /// Removes one table from the copy.
    pub fn remove_table(&self, id: TableId) -> Option<TableEntry> {
        self.state.write().tables.remove(&id)
    }

    /// Adds or removes one database in the copy.
    pub fn install_database(&self, name: &str, present: bool) {
        let mut state = self.state.write();
        if present {
            state.databases.entry(name.to_string()).or_insert(0);
        } else {
            state.databases.remove(name);
        }
    }

    async fn persist(&self, state: &CatalogState) -> Result<()> {
        let Some(store) = &self.store else {
            return Err(Error::Internal(
                "the catalog is a copy of the meta service's; DDL goes through meta".into(),
            ));
        };
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Catalog(format!("encoding: {e}")))?;
        store
            .put(&self.path, PutPayload::from(bytes))
            .await
            .map_err(|source| Error::ObjectStore {
                op: "write",
                path: self.path.to_string(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Applies `change` to a copy of the state, persists it, then publishes it.
    async fn update<T>(&self, change: impl FnOnce(&mut CatalogState) -> Result<T>) -> Result<T> {
        let _guard = self.write_lock.lock().await;
        let mut next = self.state.read().clone();
        let out = change(&mut next)?;
        self.persist(&next).await?;
        *self.state.write() = next;
        Ok(out)
    }

    pub fn database_exists(&self, name: &str) -> bool {
        self.state.read().databases.contains_key(name)
    }

    pub fn databases(&self) -> Vec<String> {
        self.state.read().databases.keys().cloned().collect()
    }

    /// Creates a database; returns false when it existed and `if_not_exists`.
    pub async fn create_database(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        validate_database_name(name)?;
        self.update(|s| {
            if s.databases.contains_key(name) {
                return if if_not_exists {
                    Ok(false)
                } else {
                    Err(Error::DatabaseExists { name: name.into() })
                };
            }
            s.databases.insert(name.to_string(), now_ms());
            Ok(true)
        })
        .await
    }

    /// Drops an empty database.
    pub async fn drop_database(&self, name: &str, if_exists: bool) -> Result<bool> {
        self.update(|s| {
            if !s.databases.contains_key(name) {
                return if if_exists {
                    Ok(false)
                } else {
                    Err(Error::DatabaseNotFound { name: name.into() })
                };
            }
            if name == DEFAULT_DATABASE {
                return Err(Error::Unsupported(format!(
                    "the {DEFAULT_DATABASE} database cannot be dropped"
                )));
            }
            if s.tables.values().any(|t| t.database == name) {
                return Err(Error::Unsupported(format!(
                    "database {name} is not empty; drop its tables first"
                )));
            }
            s.databases.remove(name);
            Ok(true)
        })
        .await
    }

    pub fn table(&self, database: &str, name: &str) -> Option<TableEntry> {
        self.state
            .read()
            .tables
            .values()
            .find(|t| t.database == database && t.name == name)
            .cloned()
    }

    pub fn table_by_id(&self, id: TableId) -> Option<TableEntry> {
        self.state.read().tables.get(&id).cloned()
    }

    pub fn tables(&self, database: &str) -> Vec<TableEntry> {
        let mut out: Vec<_> = self
            .state
            .read()
            .tables
            .values()
            .filter(|t| t.database == database)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn all_tables(&self) -> Vec<TableEntry> {
        self.state.read().tables.values().cloned().collect()
    }

    /// Registers a new table with a freshly allocated id. `Ok(None)` when it
    /// existed and `if_not_exists`.
    pub async fn create_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        shard: ShardId,
        if_not_exists: bool,
    ) -> Result<Option<TableEntry>> {
        if name.is_empty() {
            return Err(Error::InvalidSchema("table name must not be empty".into()));
        }
        self.update(|s| {
            if !s.databases.contains_key(database) {
                return Err(Error::DatabaseNotFound {
                    name: database.into(),
                });
            }
            if s.tables
                .values()
                .any(|t| t.database == database && t.name == name)
            {
                return if if_not_exists {
                    Ok(None)
                } else {
                    Err(Error::TableExists { name: name.into() })
                };
            }
            let id = TableId(s.next_table_id);
            s.next_table_id += 1;
            let entry = TableEntry {
                id,
                database: database.to_string(),
                name: name.to_string(),
                schema,
                options,
                shard,
                created_at_ms: now_ms(),
            };
            s.tables.insert(id, entry.clone());
            Ok(Some(entry))
        })
        .await
    }

    /// Changes a table's definition; `change` gets the current entry and
    /// returns the new one. Persisted before it returns.
    pub async fn update_table(
        &self,
        id: TableId,
        change: impl FnOnce(&TableEntry) -> Result<TableEntry>,
    ) -> Result<TableEntry> {
        self.update(|s| {
            let current = s.tables.get(&id).ok_or_else(|| Error::TableNotFound {
                name: format!("#{id}"),
            })?;
            let next = change(current)?;
            s.tables.insert(id, next.clone());
            Ok(next)
        })
        .await
    }

    /// Removes a table; returns it, or `None` when missing and `if_exists`.
    pub async fn drop_table(
        &self,
        database: &str,
        name: &str,
        if_exists: bool,
    ) -> Result<Option<TableEntry>> {
        self.update(|s| {
            let id = s
                .tables
                .values()
                .find(|t| t.database == database && t.name == name)
                .map(|t| t.id);
            match id {
                Some(id) => Ok(s.tables.remove(&id)),
                None if if_exists => Ok(None),
                None => Err(Error::TableNotFound { name: name.into() }),
            }
        })
        .await
    }
}
