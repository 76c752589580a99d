//! The standalone catalog: databases and tables, persisted as JSON
//! documents in the object store, one per version
//! (`{cluster}/catalog/{version:020}.json`).
//!
//! Every DDL change is persisted before it is acknowledged, as the next
//! version, with a put that only creates (`PutMode::Create`): two processes
//! that share the store (a rolling update of a standalone server on S3)
//! cannot overwrite each other's changes. The one that loses the race
//! reloads the catalog and answers a retryable error; a put whose answer
//! was lost (applied, then a timeout, then a retry refused) is recognised
//! by its content. The three latest versions are kept. A catalog written by
//! an older Strata (`{cluster}/catalog.json`, one document overwritten in
//! place) is read as version 0; the next change writes version 1.
//! In cluster mode the meta service owns this information instead: the
//! catalog is then an in-memory copy ([`Catalog::in_memory`]) that the
//! instance installs from meta and keeps current.

use std::{collections::BTreeMap, sync::Arc};

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
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
    /// A partitioned table: how its rows spread over its partitions. It
    /// holds no rows itself, and its `shard` is [`PARTITIONED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<crate::partition::PartitionSpec>,
    /// A partition of a partitioned table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<crate::partition::PartitionOf>,
    /// Cluster mode: meta's revision of the definition (bumped by every
    /// ALTER), which an ALTER names so that meta refuses it when another
    /// changed the table meanwhile. 0 in standalone mode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// The shard whose storage prefix holds the table's files (manifest and
    /// SSTs): the one it was created on. Set when the table first moves to
    /// another shard (a split or a merge); absent, it is `shard`. A table's
    /// files never move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<ShardId>,
}

impl TableEntry {
    /// The shard whose storage prefix holds the table's files.
    pub fn home(&self) -> ShardId {
        self.home.unwrap_or(self.shard)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The shard of a partitioned table itself, which no instance opens (its
/// partitions are on real shards).
pub const PARTITIONED: ShardId = ShardId(u64::MAX);

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
    /// The folder of the versioned documents.
    dir: Path,
    /// The single document of older versions (read when no versioned
    /// document exists).
    legacy: Path,
    state: RwLock<CatalogState>,
    /// Serialises changes so that persisted versions never interleave;
    /// holds the version the state was read from or last written as.
    write_lock: tokio::sync::Mutex<u64>,
}

/// Versions kept in the store: the latest and the two before it.
const KEPT_VERSIONS: u64 = 3;

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
        let dir = Path::from(format!("{cluster}/catalog"));
        let legacy = Path::from(format!("{cluster}/catalog.json"));
        let (version, state) = load_latest(store.as_ref(), &dir, &legacy).await?;
        let catalog = Self {
            store: Some(store),
            dir,
            legacy,
            state: RwLock::new(state),
            write_lock: tokio::sync::Mutex::new(version),
        };
        // Two processes opening an empty store at once both create the
        // default database; the one that loses finds it after reloading.
        for _ in 0..5 {
            if catalog.database_exists(DEFAULT_DATABASE) {
                return Ok(catalog);
            }
            match catalog.create_database(DEFAULT_DATABASE, true).await {
                Ok(_) | Err(Error::CatalogChanged(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if catalog.database_exists(DEFAULT_DATABASE) {
            Ok(catalog)
        } else {
            Err(Error::CatalogChanged(
                "the catalog kept changing while the default database was created; retry".into(),
            ))
        }
    }

    /// An empty, unpersisted catalog: a copy of the meta service's, filled
    /// with [`Self::install`].
    pub fn in_memory() -> Self {
        Self {
            store: None,
            dir: Path::from("meta"),
            legacy: Path::from("meta"),
            state: RwLock::new(CatalogState {
                format: 1,
                next_table_id: 1,
                ..Default::default()
            }),
            write_lock: tokio::sync::Mutex::new(0),
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

    /// Writes `state` as `version`, which must not exist yet. When another
    /// process wrote that version first, the catalog is reloaded (and
    /// published) and the change is refused with a retryable error.
    async fn persist(&self, version: u64, state: &CatalogState) -> Result<Persisted> {
        let Some(store) = &self.store else {
            return Err(Error::Internal(
                "the catalog is a copy of the meta service's; DDL goes through meta".into(),
            ));
        };
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Catalog(format!("encoding: {e}")))?;
        let path = version_path(&self.dir, version);
        let put = store
            .put_opts(
                &path,
                PutPayload::from(bytes.clone()),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await;
        match put {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Ours, if a first attempt was applied and its answer lost.
                if read(store.as_ref(), &path).await?.as_deref() == Some(bytes.as_slice()) {
                    tracing::info!(%path, "a catalog version whose put was answered ambiguously is ours");
                } else {
                    let (latest, current) =
                        load_latest(store.as_ref(), &self.dir, &self.legacy).await?;
                    return Ok(Persisted::Raced(latest, current));
                }
            }
            Err(source) => {
                return Err(Error::ObjectStore {
                    op: "write",
                    path: path.to_string(),
                    source: Box::new(source),
                })
            }
        }
        // A process far behind can create a version number that was used
        // and removed long ago (the versions still kept exist, so
        // this is the only way a stale put succeeds): the put succeeds, but loaders read the highest version. A version that
        // others wrote fewer than three more on top of was built on ours
        // (the versions they read still exist), so it counts as written.
        if latest_version(store.as_ref(), &self.dir)
            .await?
            .is_some_and(|latest| latest >= version + KEPT_VERSIONS)
        {
            if let Err(e) = store.delete(&path).await {
                tracing::debug!(%path, error = %e, "removing a stale catalog version");
            }
            let (latest, current) = load_latest(store.as_ref(), &self.dir, &self.legacy).await?;
            return Ok(Persisted::Raced(latest, current));
        }
        if version > KEPT_VERSIONS {
            let old = version_path(&self.dir, version - KEPT_VERSIONS);
            if let Err(e) = store.delete(&old).await {
                tracing::debug!(path = %old, error = %e, "removing an old catalog version");
            }
        }
        Ok(Persisted::Written)
    }

    /// Applies `change` to a copy of the state, persists it, then publishes it.
    async fn update<T>(&self, change: impl FnOnce(&mut CatalogState) -> Result<T>) -> Result<T> {
        let mut version = self.write_lock.lock().await;
        let mut next = self.state.read().clone();
        let out = change(&mut next)?;
        match self.persist(*version + 1, &next).await? {
            Persisted::Written => {
                *version += 1;
                *self.state.write() = next;
                Ok(out)
            }
            Persisted::Raced(latest, current) => {
                let tried = *version + 1;
                tracing::warn!(
                    tried,
                    latest,
                    "another process changed the catalog; reloaded it"
                );
                *version = latest;
                *self.state.write() = current;
                Err(Error::CatalogChanged(format!(
                    "another process wrote catalog version {tried} or later first; the \
                     catalog was reloaded (version {latest}), retry the statement"
                )))
            }
        }
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
                partition: None,
                partition_of: None,
                revision: 0,
                home: None,
            };
            s.tables.insert(id, entry.clone());
            Ok(Some(entry))
        })
        .await
    }

    /// Registers a partitioned table and its `spec.count` partitions (named
    /// by [`crate::partition::sub_table_name`], on the standalone shard) in
    /// one version.
    /// Returns the table; `Ok(None)` when it existed and `if_not_exists`.
    pub async fn create_partitioned_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        spec: crate::partition::PartitionSpec,
        if_not_exists: bool,
    ) -> Result<Option<TableEntry>> {
        let shard = crate::STANDALONE_SHARD;
        if name.is_empty() {
            return Err(Error::InvalidSchema("table name must not be empty".into()));
        }
        spec.validate(&schema, &options)?;
        self.update(|s| {
            if !s.databases.contains_key(database) {
                return Err(Error::DatabaseNotFound {
                    name: database.into(),
                });
            }
            let exists = |n: &str| {
                s.tables
                    .values()
                    .any(|t| t.database == database && t.name == n)
            };
            if exists(name) {
                return if if_not_exists {
                    Ok(None)
                } else {
                    Err(Error::TableExists { name: name.into() })
                };
            }
            let names: Vec<String> = (0..spec.count)
                .map(|i| crate::partition::sub_table_name(name, i))
                .collect();
            if let Some(taken) = names.iter().find(|n| exists(n)) {
                return Err(Error::TableExists {
                    name: taken.clone(),
                });
            }
            let now = now_ms();
            let parent = TableEntry {
                id: TableId(s.next_table_id),
                database: database.to_string(),
                name: name.to_string(),
                schema: schema.clone(),
                options: options.clone(),
                shard: PARTITIONED,
                created_at_ms: now,
                partition: Some(spec.clone()),
                partition_of: None,
                revision: 0,
                home: None,
            };
            s.next_table_id += 1;
            for (index, sub) in (0u32..).zip(names) {
                let id = TableId(s.next_table_id);
                s.next_table_id += 1;
                s.tables.insert(
                    id,
                    TableEntry {
                        id,
                        database: database.to_string(),
                        name: sub,
                        schema: schema.clone(),
                        options: options.clone(),
                        shard,
                        created_at_ms: now,
                        partition: None,
                        partition_of: Some(crate::partition::PartitionOf {
                            parent: parent.id,
                            index,
                        }),
                        revision: 0,
                        home: None,
                    },
                );
            }
            s.tables.insert(parent.id, parent.clone());
            Ok(Some(parent))
        })
        .await
    }

    /// The partitions of table `parent`, in partition order.
    pub fn partitions(&self, parent: TableId) -> Vec<TableEntry> {
        let mut out: Vec<_> = self
            .state
            .read()
            .tables
            .values()
            .filter(|t| t.partition_of.is_some_and(|p| p.parent == parent))
            .cloned()
            .collect();
        out.sort_by_key(|t| t.partition_of.map(|p| p.index));
        out
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

    /// Changes several tables' definitions in one version (a partitioned
    /// table and its partitions): all or none.
    pub async fn update_tables(
        &self,
        ids: &[TableId],
        change: impl Fn(&TableEntry) -> Result<TableEntry>,
    ) -> Result<Vec<TableEntry>> {
        self.update(|s| {
            let mut next = Vec::with_capacity(ids.len());
            for id in ids {
                let current = s.tables.get(id).ok_or_else(|| Error::TableNotFound {
                    name: format!("#{id}"),
                })?;
                next.push(change(current)?);
            }
            for e in &next {
                s.tables.insert(e.id, e.clone());
            }
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
                Some(id) => {
                    // A partitioned table goes with its partitions.
                    s.tables
                        .retain(|_, t| t.partition_of.is_none_or(|p| p.parent != id));
                    Ok(s.tables.remove(&id))
                }
                None if if_exists => Ok(None),
                None => Err(Error::TableNotFound { name: name.into() }),
            }
        })
        .await
    }
}

/// What a persist did.
enum Persisted {
    Written,
    /// Another process wrote the version first: the latest version and
    /// its state.
    Raced(u64, CatalogState),
}

fn version_path(dir: &Path, version: u64) -> Path {
    Path::from(format!("{dir}/{version:020}.json"))
}

/// An object's bytes; `None` when it does not exist.
async fn read(store: &dyn ObjectStore, path: &Path) -> Result<Option<Vec<u8>>> {
    let failed = |source| Error::ObjectStore {
        op: "read",
        path: path.to_string(),
        source: Box::new(source),
    };
    match store.get(path).await {
        Ok(got) => Ok(Some(got.bytes().await.map_err(failed)?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(failed(source)),
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<CatalogState> {
    serde_json::from_slice::<CatalogState>(bytes)
        .map_err(|e| Error::Catalog(format!("{path}: {e}")))
}

/// The latest version of the catalog and its state: the highest versioned
/// document, else the legacy single document as version 0, else an empty
/// catalog.
/// The highest version under `dir`, by listing only.
async fn latest_version(store: &dyn ObjectStore, dir: &Path) -> Result<Option<u64>> {
    let listed: Vec<object_store::ObjectMeta> =
        store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore {
                op: "list",
                path: dir.to_string(),
                source: Box::new(source),
            })?;
    Ok(listed
        .iter()
        .filter_map(|m| {
            m.location
                .filename()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max())
}

async fn load_latest(
    store: &dyn ObjectStore,
    dir: &Path,
    legacy: &Path,
) -> Result<(u64, CatalogState)> {
    // A version listed can be removed before it is read, by a process that
    // wrote three more meanwhile: list again.
    for _ in 0..5 {
        let latest = latest_version(store, dir).await?;
        let Some(version) = latest else {
            return Ok(match read(store, legacy).await? {
                Some(bytes) => (0, decode(legacy, &bytes)?),
                None => (
                    0,
                    CatalogState {
                        format: 1,
                        next_table_id: 1,
                        ..Default::default()
                    },
                ),
            });
        };
        let path = version_path(dir, version);
        if let Some(bytes) = read(store, &path).await? {
            return Ok((version, decode(&path, &bytes)?));
        }
    }
    Err(Error::CatalogChanged(format!(
        "the catalog under {dir} kept changing while it was read; retry"
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeSet;

    use object_store::memory::InMemory;
    use strata_sst::fault::{Fault, FaultStore, Op};

    use super::*;
    use crate::schema::TableSchema;

    fn schema() -> TableSchema {
        let ts = crate::schema::ColumnSchema {
            name: "ts".into(),
            column_type: crate::schema::ColumnType::Timestamp,
            is_tag: false,
            nullable: false,
            comment: String::new(),
        };
        TableSchema::try_new(vec![ts], "ts", &[]).unwrap()
    }

    async fn create(c: &Catalog, name: &str) -> Result<Option<TableEntry>> {
        c.create_table(
            DEFAULT_DATABASE,
            name,
            schema(),
            TableOptions::default(),
            ShardId(0),
            false,
        )
        .await
    }

    #[tokio::test]
    async fn two_processes_never_overwrite_each_others_changes() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = Catalog::open(store.clone(), "c").await.unwrap();
        let b = Catalog::open(store.clone(), "c").await.unwrap();
        create(&a, "from_a").await.unwrap();
        // `b` still holds the state before `a`'s change: its write would
        // have dropped `from_a`. It is refused, and `b` reloads.
        let err = create(&b, "from_b").await.unwrap_err();
        assert!(matches!(err, Error::CatalogChanged(_)), "{err}");
        assert!(err.is_retryable());
        assert!(b.table(DEFAULT_DATABASE, "from_a").is_some());
        create(&b, "from_b").await.unwrap();
        let reopened = Catalog::open(store.clone(), "c").await.unwrap();
        let names: Vec<String> = reopened
            .tables(DEFAULT_DATABASE)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["from_a", "from_b"]);
        // Distinct ids: `b` allocated from the reloaded state.
        let ids: BTreeSet<_> = reopened.all_tables().iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 2);
        // Only the latest versions are kept.
        for i in 0..6 {
            let name = format!("more{i}");
            if let Err(e) = create(&a, &name).await {
                assert!(matches!(e, Error::CatalogChanged(_)), "{e}");
                create(&a, &name).await.unwrap();
            }
        }
        let listed: Vec<_> = store
            .list(Some(&Path::from("c/catalog")))
            .try_collect()
            .await
            .unwrap();
        assert!(listed.len() <= KEPT_VERSIONS as usize, "{listed:?}");
        let latest = Catalog::open(store, "c").await.unwrap();
        assert_eq!(latest.tables(DEFAULT_DATABASE).len(), 8);
    }

    #[tokio::test]
    async fn a_process_far_behind_cannot_reuse_a_removed_version() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = Catalog::open(store.clone(), "c").await.unwrap();
        let b = Catalog::open(store.clone(), "c").await.unwrap();
        // `a` writes far ahead; the versions `b` would write next are gone.
        for i in 0..8 {
            create(&a, &format!("a{i}")).await.unwrap();
        }
        assert!(store
            .head(&version_path(&a.dir, 2))
            .await
            .is_err_and(|e| matches!(e, object_store::Error::NotFound { .. })));
        // `b`'s put of version 2 succeeds, but it is not the latest: the
        // change is refused and `b` reloads instead of acknowledging a
        // catalog nobody reads.
        let err = create(&b, "from_b").await.unwrap_err();
        assert!(matches!(err, Error::CatalogChanged(_)), "{err}");
        assert_eq!(b.tables(DEFAULT_DATABASE).len(), 8);
        let t = create(&b, "from_b").await.unwrap().unwrap();
        assert_eq!(t.id, TableId(9), "ids continue from the latest catalog");
        let reopened = Catalog::open(store.clone(), "c").await.unwrap();
        assert_eq!(reopened.tables(DEFAULT_DATABASE).len(), 9);
        // The stray version was removed again.
        assert!(store.head(&version_path(&a.dir, 2)).await.is_err());
    }

    #[tokio::test]
    async fn two_processes_opening_an_empty_store_both_start() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (a, b) = tokio::join!(
            Catalog::open(store.clone(), "c"),
            Catalog::open(store.clone(), "c")
        );
        assert!(a.unwrap().database_exists(DEFAULT_DATABASE));
        assert!(b.unwrap().database_exists(DEFAULT_DATABASE));
    }

    #[tokio::test]
    async fn an_ambiguous_put_is_recognised_or_reloaded() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let faults = FaultStore::new(inner.clone());
        let store: Arc<dyn ObjectStore> = faults.clone();
        let c = Catalog::open(store.clone(), "c").await.unwrap();
        c.create_database("d", false).await.unwrap();

        // The put of a drop was applied, then answered with a timeout:
        // the drop fails, the next change finds the version taken by
        // different bytes, reloads (the drop is there) and asks for a retry.
        faults.inject(Op::Put, "c/catalog/", Fault::ApplyThenTimeout, 1);
        assert!(c.drop_database("d", false).await.is_err());
        assert!(c.database_exists("d"), "not published after an error");
        let err = c.create_database("e", false).await.unwrap_err();
        assert!(matches!(err, Error::CatalogChanged(_)), "{err}");
        assert!(!c.database_exists("d"), "the applied drop was reloaded");
        c.create_database("e", false).await.unwrap();

        // A version already holding exactly the bytes of this change (a
        // first attempt applied, its answer lost, the retry refused) counts
        // as written.
        let version = *c.write_lock.lock().await;
        let mut next = c.state.read().clone();
        next.databases.remove("e");
        let bytes = serde_json::to_vec_pretty(&next).unwrap();
        inner
            .put(&version_path(&c.dir, version + 1), PutPayload::from(bytes))
            .await
            .unwrap();
        assert!(c.drop_database("e", false).await.unwrap());
        assert!(!c.database_exists("e"));
        let reopened = Catalog::open(inner, "c").await.unwrap();
        assert_eq!(reopened.databases(), [DEFAULT_DATABASE]);
    }

    #[tokio::test]
    async fn a_catalog_written_by_an_older_version_is_read_and_carried_on() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut old = CatalogState {
            format: 1,
            next_table_id: 7,
            ..Default::default()
        };
        old.databases.insert(DEFAULT_DATABASE.to_string(), 1);
        old.databases.insert("legacy_db".to_string(), 1);
        store
            .put(
                &Path::from("c/catalog.json"),
                PutPayload::from(serde_json::to_vec(&old).unwrap()),
            )
            .await
            .unwrap();
        let c = Catalog::open(store.clone(), "c").await.unwrap();
        assert!(c.database_exists("legacy_db"));
        let t = create(&c, "t").await.unwrap().unwrap();
        assert_eq!(t.id, TableId(7));
        let reopened = Catalog::open(store, "c").await.unwrap();
        assert!(reopened.database_exists("legacy_db"));
        assert!(reopened.table(DEFAULT_DATABASE, "t").is_some());
    }
}
