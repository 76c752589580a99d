//! The meta service's operations on the key-value store. Every change that
//! must be atomic is one transaction: a table's record, its name index and
//! the id allocator change together; a shard's new leader is a
//! compare-and-swap on the shard's record, which bumps its version.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    kv::{Compare, KeyValue, KvStore, LeaseId, Op},
    model::{
        now_ms, partition_name, ClusterConfig, DatabaseRecord, Keys, NodeId, NodeInfo,
        PartitionRef, Reshape, ReshapeKind, ReshapeStep, ShardInfo, ShardLock, TableRecord,
        PARTITIONED_SHARD,
    },
    Error, Result,
};

/// The default database every cluster has.
pub const DEFAULT_DATABASE: &str = "public";

/// A number unlikely to repeat: identifies one initialisation of a cluster's
/// metadata, so that instances notice a fresh etcd.
fn incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.write_u32(std::process::id());
    h.finish() | 1
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Invalid(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| Error::Invalid(format!("{}: {e}", String::from_utf8_lossy(&kv.key))))
}

/// How a table creation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateTable {
    Created(TableRecord),
    Exists(TableRecord),
    DatabaseMissing,
    /// A table already has the name a partition would take.
    PartitionNameTaken(String),
}

/// How an ALTER ended.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateTable {
    /// The records written, the table first.
    Updated(Vec<TableRecord>),
    Missing,
    /// The table's definition is no longer the one the change was made to.
    Changed,
}

/// The most partitions a table may have: a table and its partitions are
/// created in one etcd transaction, which holds at most 128 operations
/// (etcd's `--max-txn-ops` default), two per table.
pub const MAX_PARTITIONS: u32 = 60;

/// The most bytes of records one table creation writes (etcd's request
/// limit is 1.5 MiB by default).
const MAX_CREATE_BYTES: usize = 1 << 20;

/// The cluster's metadata.
#[derive(Debug, Clone)]
pub struct MetaStore {
    kv: Arc<dyn KvStore>,
    keys: Keys,
}

impl MetaStore {
    pub fn new(kv: Arc<dyn KvStore>, cluster: &str) -> Self {
        Self {
            kv,
            keys: Keys::new(cluster),
        }
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    fn table_name_key(&self, db: &str, name: &str) -> Vec<u8> {
        let mut k = self.keys.tables();
        k.truncate(k.len() - "tables/".len());
        k.extend_from_slice(format!("table_names/{db}/{name}").as_bytes());
        k
    }

    /// Creates the cluster's configuration, shards and default database if
    /// missing; returns the configuration in force (an existing cluster keeps
    /// its shard count).
    pub async fn init_cluster(&self, shard_count: u64) -> Result<ClusterConfig> {
        let wanted = ClusterConfig {
            shard_count,
            incarnation: incarnation(),
            replicas: 0,
        };
        let mut ops = vec![Op::put(self.keys.config(), encode(&wanted)?)];
        for id in 0..shard_count {
            ops.push(Op::put(
                self.keys.shard(id),
                encode(&ShardInfo::new(id, None))?,
            ));
        }
        ops.push(Op::put(
            self.keys.database(DEFAULT_DATABASE),
            encode(&DatabaseRecord {
                name: DEFAULT_DATABASE.to_string(),
                created_at_ms: now_ms(),
            })?,
        ));
        self.kv
            .txn(vec![Compare::Absent(self.keys.config())], ops)
            .await?;
        self.config()
            .await?
            .ok_or_else(|| Error::Invalid("cluster configuration missing after init".into()))
    }

    pub async fn config(&self) -> Result<Option<ClusterConfig>> {
        match self.kv.get(&self.keys.config()).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    // ---- nodes ----

    /// Records a node under `lease`: it disappears when the lease ends.
    pub async fn put_node(&self, info: &NodeInfo, lease: LeaseId) -> Result<()> {
        self.kv
            .put(&self.keys.node(&info.id), &encode(info)?, lease)
            .await?;
        Ok(())
    }

    /// The nodes whose leases are alive.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.kv
            .range(&self.keys.nodes())
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    // ---- shards ----

    /// Every shard, with the revision of its record (for compare-and-swap).
    pub async fn shards(&self) -> Result<Vec<(ShardInfo, i64)>> {
        self.kv
            .range(&self.keys.shards())
            .await?
            .iter()
            .map(|kv| Ok((decode(kv)?, kv.mod_revision)))
            .collect()
    }

    /// Moves a shard to `leader`, bumping its version, if its record is
    /// still at `revision` (the new leader leaves the followers). Returns
    /// the new record, or `None` if it changed.
    pub async fn set_leader(
        &self,
        shard: &ShardInfo,
        revision: i64,
        leader: Option<NodeId>,
    ) -> Result<Option<ShardInfo>> {
        let followers = shard
            .followers
            .iter()
            .filter(|f| Some(*f) != leader.as_ref())
            .cloned()
            .collect();
        self.set_assignment(shard, revision, leader, followers)
            .await
    }

    /// Sets a shard's leader and followers if its record is still at
    /// `revision`. The version is bumped when the leader changes (requests
    /// routed under the old one are refused), not for followers alone.
    pub async fn set_assignment(
        &self,
        shard: &ShardInfo,
        revision: i64,
        leader: Option<NodeId>,
        followers: Vec<NodeId>,
    ) -> Result<Option<ShardInfo>> {
        let bump = u64::from(leader != shard.leader);
        let next = ShardInfo {
            id: shard.id,
            version: shard.version + bump,
            followers: followers
                .into_iter()
                .filter(|f| Some(f) != leader.as_ref())
                .collect(),
            leader,
            replicas: shard.replicas,
        };
        self.put_shard(&next, revision).await
    }

    /// Sets a shard's own follower count (`None`: the cluster's).
    pub async fn set_shard_replicas(
        &self,
        shard: &ShardInfo,
        revision: i64,
        replicas: Option<u64>,
    ) -> Result<Option<ShardInfo>> {
        let next = ShardInfo {
            replicas,
            ..shard.clone()
        };
        self.put_shard(&next, revision).await
    }

    /// Sets the cluster's follower count.
    pub async fn set_replicas(&self, replicas: u64) -> Result<ClusterConfig> {
        for _ in 0..8 {
            let Some(kv) = self.kv.get(&self.keys.config()).await? else {
                return Err(Error::Invalid("the cluster is not initialised".into()));
            };
            let mut config: ClusterConfig = decode(&kv)?;
            if config.replicas == replicas {
                return Ok(config);
            }
            config.replicas = replicas;
            let r = self
                .kv
                .txn(
                    vec![Compare::ModRevision(self.keys.config(), kv.mod_revision)],
                    vec![Op::put(self.keys.config(), encode(&config)?)],
                )
                .await?;
            if r.succeeded {
                return Ok(config);
            }
        }
        Err(Error::Invalid(
            "setting replicas kept conflicting; retry".into(),
        ))
    }

    /// The last table id handed out (0 before any).
    pub async fn last_table_id(&self) -> Result<u64> {
        match self.kv.get(&self.keys.table_ids()).await? {
            Some(kv) => decode(&kv),
            None => Ok(0),
        }
    }

    async fn put_shard(&self, next: &ShardInfo, revision: i64) -> Result<Option<ShardInfo>> {
        let next = next.clone();
        let key = self.keys.shard(next.id);
        let r = self
            .kv
            .txn(
                vec![Compare::ModRevision(key.clone(), revision)],
                vec![Op::put(key, encode(&next)?)],
            )
            .await?;
        Ok(r.succeeded.then_some(next))
    }

    // ---- shard locks ----

    /// Takes the lease lock of `shard` for `node` under `lease`, or confirms
    /// that it holds it. Returns the lock, or `None` when another node holds
    /// it.
    ///
    /// A newly taken lock gets a new **epoch**, which fences the shard's WAL:
    /// greater than any epoch this store handed out for the shard, than
    /// `min_epoch` (the highest epoch the WAL has seen, which survives a
    /// fresh etcd) and than the wall clock in milliseconds (so that epochs
    /// keep growing even across an etcd that lost its data).
    pub async fn acquire_shard_lock(
        &self,
        shard: u64,
        node: &str,
        instance: &str,
        lease: LeaseId,
        min_epoch: u64,
    ) -> Result<Option<ShardLock>> {
        let key = self.keys.shard_lock(shard);
        for _ in 0..8 {
            match self.kv.get(&key).await? {
                Some(kv) => {
                    let lock: ShardLock = decode(&kv)?;
                    // Another node, or another process of this node: a
                    // different writer, which must not share the epoch.
                    if lock.node != node || lock.instance != instance {
                        return Ok(None);
                    }
                    if kv.lease == lease {
                        return Ok(Some(lock));
                    }
                    // Held under an earlier lease of the same node (it
                    // re-registered): move it to the new lease, same epoch.
                    let t = self
                        .kv
                        .txn(
                            vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                            vec![Op::Put {
                                key: key.clone(),
                                value: encode(&lock)?,
                                lease,
                            }],
                        )
                        .await?;
                    if t.succeeded {
                        return Ok(Some(lock));
                    }
                }
                None => {
                    let epoch_key = self.keys.shard_epoch(shard);
                    let last = self.kv.get(&epoch_key).await?;
                    let (previous, cmp) = match &last {
                        Some(kv) => (
                            decode::<u64>(kv)?,
                            Compare::ModRevision(epoch_key.clone(), kv.mod_revision),
                        ),
                        None => (0, Compare::Absent(epoch_key.clone())),
                    };
                    let epoch = (previous + 1)
                        .max(min_epoch)
                        .max(u64::try_from(now_ms()).unwrap_or(0));
                    let lock = ShardLock {
                        node: node.to_string(),
                        epoch,
                        instance: instance.to_string(),
                    };
                    let t = self
                        .kv
                        .txn(
                            vec![Compare::Absent(key.clone()), cmp],
                            vec![
                                Op::Put {
                                    key: key.clone(),
                                    value: encode(&lock)?,
                                    lease,
                                },
                                Op::put(epoch_key, encode(&epoch)?),
                            ],
                        )
                        .await?;
                    if t.succeeded {
                        return Ok(Some(lock));
                    }
                }
            }
        }
        Err(Error::Invalid(format!(
            "taking the lock of shard {shard} kept conflicting; retry"
        )))
    }

    /// The lock, when process `instance` of `node` holds it under `lease`
    /// (it is then sure to be the shard's only writer until the lease
    /// expires).
    pub async fn confirm_shard_lock(
        &self,
        shard: u64,
        node: &str,
        instance: &str,
        lease: LeaseId,
    ) -> Result<Option<ShardLock>> {
        let Some(kv) = self.kv.get(&self.keys.shard_lock(shard)).await? else {
            return Ok(None);
        };
        let lock: ShardLock = decode(&kv)?;
        Ok((lock.node == node && lock.instance == instance && kv.lease == lease).then_some(lock))
    }

    /// Releases the lock if process `instance` of `node` holds it.
    pub async fn release_shard_lock(&self, shard: u64, node: &str, instance: &str) -> Result<bool> {
        let key = self.keys.shard_lock(shard);
        let Some(kv) = self.kv.get(&key).await? else {
            return Ok(false);
        };
        let lock: ShardLock = decode(&kv)?;
        if lock.node != node || lock.instance != instance {
            return Ok(false);
        }
        let r = self
            .kv
            .txn(
                vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                vec![Op::delete(key)],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Who holds a shard's lock.
    pub async fn lock_holder(&self, shard: u64) -> Result<Option<ShardLock>> {
        match self.kv.get(&self.keys.shard_lock(shard)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    // ---- catalog ----

    pub async fn create_database(&self, name: &str) -> Result<bool> {
        let key = self.keys.database(name);
        let r = self
            .kv
            .txn(
                vec![Compare::Absent(key.clone())],
                vec![
                    Op::put(
                        key,
                        encode(&DatabaseRecord {
                            name: name.to_string(),
                            created_at_ms: now_ms(),
                        })?,
                    ),
                    self.bump_catalog(),
                ],
            )
            .await?;
        Ok(r.succeeded)
    }

    pub async fn drop_database(&self, name: &str) -> Result<bool> {
        let key = self.keys.database(name);
        if self.kv.get(&key).await?.is_none() {
            return Ok(false);
        }
        let r = self
            .kv
            .txn(vec![], vec![Op::delete(key), self.bump_catalog()])
            .await?;
        Ok(r.succeeded)
    }

    /// The catalog's fingerprint: changes with every DDL.
    pub async fn catalog_fingerprint(&self) -> Result<u64> {
        let rev = self
            .kv
            .get(&self.keys.catalog_version())
            .await?
            .map_or(0, |kv| kv.mod_revision);
        let incarnation = self.config().await?.map_or(0, |c| c.incarnation);
        Ok(incarnation.rotate_left(17) ^ u64::try_from(rev).unwrap_or(0))
    }

    fn bump_catalog(&self) -> Op {
        Op::put(self.keys.catalog_version(), now_ms().to_string())
    }

    pub async fn databases(&self) -> Result<Vec<DatabaseRecord>> {
        self.kv
            .range(&self.keys.databases())
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    pub async fn tables(&self) -> Result<Vec<TableRecord>> {
        self.kv
            .range(&self.keys.tables())
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    pub async fn table(&self, db: &str, name: &str) -> Result<Option<TableRecord>> {
        let Some(id) = self.kv.get(&self.table_name_key(db, name)).await? else {
            return Ok(None);
        };
        let id: u64 = decode(&id)?;
        match self.kv.get(&self.keys.table(id)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Creates a table on the shard holding the fewest tables: the id
    /// allocation, the name and the record change in one transaction, so a
    /// name exists at most once and an id is never reused, even when a meta
    /// leader fails half way (a retry then finds the table).
    ///
    /// With `partitions > 0` the table is partitioned: it goes on
    /// [`PARTITIONED_SHARD`] and its partitions (named by
    /// [`partition_name`], with the same definition) are spread over the
    /// shards, each on the one holding the fewest tables, all in the same
    /// transaction.
    pub async fn create_table(
        &self,
        db: &str,
        name: &str,
        definition: serde_json::Value,
        partitions: u32,
    ) -> Result<CreateTable> {
        if partitions > MAX_PARTITIONS {
            return Err(Error::Invalid(format!(
                "a table may have at most {MAX_PARTITIONS} partitions, not {partitions}"
            )));
        }
        for _ in 0..16 {
            if self.kv.get(&self.keys.database(db)).await?.is_none() {
                return Ok(CreateTable::DatabaseMissing);
            }
            if let Some(existing) = self.table(db, name).await? {
                return Ok(CreateTable::Exists(existing));
            }
            for index in 0..partitions {
                let part = partition_name(name, index);
                if self.table(db, &part).await?.is_some() {
                    return Ok(CreateTable::PartitionNameTaken(part));
                }
            }
            let config = self
                .config()
                .await?
                .ok_or_else(|| Error::Invalid("the cluster is not initialised".into()))?;
            let tables = self.tables().await?;
            // Every shard there is, but one a merge is emptying. The
            // creation fails (and is planned again) if a split or merge
            // starts or moves on meanwhile: a merge's last check for
            // tables left on its shard must see this one.
            let reshape = self.reshape().await?;
            let reshape_compare = match &reshape {
                Some((_, rev)) => Compare::ModRevision(self.keys.reshape(), *rev),
                None => Compare::Absent(self.keys.reshape()),
            };
            let retiring = reshape
                .filter(|(r, _)| r.kind == ReshapeKind::Merge)
                .map(|(r, _)| r.from);
            let mut counts: BTreeMap<u64, usize> = self
                .shards()
                .await?
                .into_iter()
                .map(|(s, _)| (s.id, 0))
                .filter(|(s, _)| Some(*s) != retiring)
                .collect();
            if counts.is_empty() {
                counts = (0..config.shard_count.max(1)).map(|s| (s, 0)).collect();
            }
            for t in &tables {
                if let Some(n) = counts.get_mut(&t.shard) {
                    *n += 1;
                }
            }
            // The emptiest shard, counting the tables placed so far.
            let mut place = || {
                let (&shard, n) = counts.iter_mut().min_by_key(|(s, n)| (**n, **s))?;
                *n += 1;
                Some(shard)
            };
            let shard = if partitions > 0 {
                PARTITIONED_SHARD
            } else {
                place().unwrap_or(0)
            };
            let ids = self.kv.get(&self.keys.table_ids()).await?;
            let (last, id_compare) = match &ids {
                Some(kv) => (
                    decode::<u64>(kv)?,
                    Compare::ModRevision(self.keys.table_ids(), kv.mod_revision),
                ),
                None => (0, Compare::Absent(self.keys.table_ids())),
            };
            let record = TableRecord {
                id: last + 1,
                database: db.to_string(),
                name: name.to_string(),
                shard,
                definition: definition.clone(),
                created_at_ms: now_ms(),
                partitions,
                partition_of: None,
                revision: 0,
                home: None,
            };
            // etcd refuses a request over 1.5 MiB (`--max-request-bytes`).
            let bytes = encode(&record)?.len() * (partitions as usize + 1);
            if bytes > MAX_CREATE_BYTES {
                return Err(Error::Invalid(format!(
                    "table {db}.{name}: its definition, once per partition, takes {bytes} \
                     bytes, more than one metadata transaction holds ({MAX_CREATE_BYTES}); \
                     use fewer partitions or columns"
                )));
            }
            let name_key = self.table_name_key(db, name);
            let mut compares = vec![
                id_compare,
                Compare::Absent(name_key.clone()),
                reshape_compare,
            ];
            let mut ops = vec![
                Op::put(name_key, encode(&record.id)?),
                Op::put(self.keys.table(record.id), encode(&record)?),
                self.bump_catalog(),
            ];
            let mut last_id = record.id;
            for index in 0..partitions {
                last_id += 1;
                let part = TableRecord {
                    id: last_id,
                    name: partition_name(name, index),
                    shard: place().unwrap_or(0),
                    partitions: 0,
                    partition_of: Some(PartitionRef {
                        parent: record.id,
                        index,
                    }),
                    ..record.clone()
                };
                let key = self.table_name_key(db, &part.name);
                compares.push(Compare::Absent(key.clone()));
                ops.push(Op::put(key, encode(&part.id)?));
                ops.push(Op::put(self.keys.table(part.id), encode(&part)?));
            }
            ops.push(Op::put(self.keys.table_ids(), encode(&last_id)?));
            let r = self.kv.txn(compares, ops).await?;
            if r.succeeded {
                return Ok(CreateTable::Created(record));
            }
        }
        Err(Error::Invalid(format!(
            "creating table {db}.{name} kept conflicting; retry"
        )))
    }

    /// Replaces a table's definition (ALTER TABLE), and its partitions'
    /// with it, in one transaction that fails if any of them changed or
    /// went since read (a drop racing with the change is not undone).
    /// With `base` (the table id and the revision the change was made to),
    /// answers `Changed` when the name now means another table or another
    /// revision.
    pub async fn update_table(
        &self,
        db: &str,
        name: &str,
        definition: serde_json::Value,
        base: Option<(u64, u64)>,
    ) -> Result<UpdateTable> {
        for _ in 0..16 {
            let Some(id) = self.kv.get(&self.table_name_key(db, name)).await? else {
                return Ok(UpdateTable::Missing);
            };
            let id: u64 = decode(&id)?;
            let Some(kv) = self.kv.get(&self.keys.table(id)).await? else {
                return Ok(UpdateTable::Missing);
            };
            let table: TableRecord = decode(&kv)?;
            if base.is_some_and(|(id, revision)| id != table.id || revision != table.revision) {
                return Ok(UpdateTable::Changed);
            }
            let next_revision = table.revision + 1;
            let mut read = vec![(table, kv.mod_revision)];
            if read[0].0.partitions > 0 {
                for kv in self.kv.range(&self.keys.tables()).await? {
                    let r: TableRecord = decode(&kv)?;
                    if r.partition_of.is_some_and(|p| p.parent == id) {
                        read.push((r, kv.mod_revision));
                    }
                }
            }
            let mut compares = Vec::with_capacity(read.len());
            let mut ops = vec![self.bump_catalog()];
            let mut records = Vec::with_capacity(read.len());
            for (mut r, mod_revision) in read {
                compares.push(Compare::ModRevision(self.keys.table(r.id), mod_revision));
                r.definition = definition.clone();
                r.revision = next_revision;
                ops.push(Op::put(self.keys.table(r.id), encode(&r)?));
                records.push(r);
            }
            if self.kv.txn(compares, ops).await?.succeeded {
                records[1..].sort_by_key(|t| t.partition_of.map(|p| p.index));
                return Ok(UpdateTable::Updated(records));
            }
        }
        Err(Error::Invalid(format!(
            "altering table {db}.{name} kept conflicting; retry"
        )))
    }

    /// The partitions of table `parent`, in partition order.
    pub async fn partitions(&self, parent: u64) -> Result<Vec<TableRecord>> {
        let mut parts: Vec<TableRecord> = self
            .tables()
            .await?
            .into_iter()
            .filter(|t| t.partition_of.is_some_and(|p| p.parent == parent))
            .collect();
        parts.sort_by_key(|t| t.partition_of.map(|p| p.index));
        Ok(parts)
    }

    /// Drops a table, and its partitions with it in the same transaction;
    /// returns the records dropped (the table first), none if it did not
    /// exist.
    pub async fn drop_table(&self, db: &str, name: &str) -> Result<Vec<TableRecord>> {
        for _ in 0..16 {
            let Some(record) = self.table(db, name).await? else {
                return Ok(Vec::new());
            };
            let mut records = vec![record.clone()];
            if record.partitions > 0 {
                records.extend(self.partitions(record.id).await?);
            }
            let mut ops = vec![self.bump_catalog()];
            for r in &records {
                ops.push(Op::delete(self.table_name_key(&r.database, &r.name)));
                ops.push(Op::delete(self.keys.table(r.id)));
            }
            // The name still means the table read (not one dropped and
            // created again meanwhile, whose records this would orphan).
            let same = Compare::Value(self.table_name_key(db, name), encode(&record.id)?);
            if self.kv.txn(vec![same], ops).await?.succeeded {
                return Ok(records);
            }
        }
        Err(Error::Invalid(format!(
            "dropping table {db}.{name} kept conflicting; retry"
        )))
    }

    /// Records a table reported by an instance (rebuilding an empty etcd):
    /// keeps the id it already has, and raises the id allocator past it.
    pub async fn restore_table(&self, record: &TableRecord) -> Result<bool> {
        let name_key = self.table_name_key(&record.database, &record.name);
        let r = self
            .kv
            .txn(
                vec![
                    Compare::Absent(name_key.clone()),
                    Compare::Absent(self.keys.table(record.id)),
                ],
                vec![
                    Op::put(name_key, encode(&record.id)?),
                    Op::put(self.keys.table(record.id), encode(record)?),
                    self.bump_catalog(),
                ],
            )
            .await?;
        loop {
            let ids = self.kv.get(&self.keys.table_ids()).await?;
            let (last, cmp) = match &ids {
                Some(kv) => (
                    decode::<u64>(kv)?,
                    Compare::ModRevision(self.keys.table_ids(), kv.mod_revision),
                ),
                None => (0, Compare::Absent(self.keys.table_ids())),
            };
            if last >= record.id {
                break;
            }
            let t = self
                .kv
                .txn(
                    vec![cmp],
                    vec![Op::put(self.keys.table_ids(), encode(&record.id)?)],
                )
                .await?;
            if t.succeeded {
                break;
            }
        }
        if r.succeeded && record.shard != PARTITIONED_SHARD {
            self.restore_shard(record.shard).await?;
        }
        Ok(r.succeeded)
    }

    /// Recreates a shard a reported table is on (one a split created after
    /// the cluster's initialisation), unassigned, and raises the shard
    /// count past it so that its id is not given out again.
    async fn restore_shard(&self, id: u64) -> Result<()> {
        for _ in 0..16 {
            let Some(kv) = self.kv.get(&self.keys.config()).await? else {
                return Ok(());
            };
            let mut config: ClusterConfig = decode(&kv)?;
            let exists = self.kv.get(&self.keys.shard(id)).await?.is_some();
            if exists && config.shard_count > id {
                return Ok(());
            }
            config.shard_count = config.shard_count.max(id + 1);
            let mut ops = vec![Op::put(self.keys.config(), encode(&config)?)];
            let mut compares = vec![Compare::ModRevision(self.keys.config(), kv.mod_revision)];
            if !exists {
                compares.push(Compare::Absent(self.keys.shard(id)));
                ops.push(Op::put(
                    self.keys.shard(id),
                    encode(&ShardInfo::new(id, None))?,
                ));
            }
            if self.kv.txn(compares, ops).await?.succeeded {
                tracing::info!(shard = id, "recreated a shard a reported table is on");
                return Ok(());
            }
        }
        Err(Error::Invalid(format!(
            "recreating shard {id} kept conflicting"
        )))
    }

    // ---- splits and merges ----

    /// The split or merge in progress, with its record's revision.
    pub async fn reshape(&self) -> Result<Option<(Reshape, i64)>> {
        match self.kv.get(&self.keys.reshape()).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// The last split or merge finished.
    pub async fn last_reshape(&self) -> Result<Option<Reshape>> {
        match self.kv.get(&self.keys.reshape_last()).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Records a new split or merge, unless one is in progress (`None`
    /// then). A split's shard `to` is created with it (a new id, led by
    /// `leader`): the shard count grows.
    pub async fn start_reshape(
        &self,
        mut reshape: Reshape,
        leader: Option<NodeId>,
    ) -> Result<Option<Reshape>> {
        for _ in 0..16 {
            if self.reshape().await?.is_some() {
                return Ok(None);
            }
            let mut compares = vec![Compare::Absent(self.keys.reshape())];
            let mut ops = Vec::new();
            if reshape.kind == ReshapeKind::Split {
                let kv = self
                    .kv
                    .get(&self.keys.config())
                    .await?
                    .ok_or_else(|| Error::Invalid("the cluster is not initialised".into()))?;
                let mut config: ClusterConfig = decode(&kv)?;
                reshape.to = config.shard_count;
                config.shard_count += 1;
                compares.push(Compare::ModRevision(self.keys.config(), kv.mod_revision));
                compares.push(Compare::Absent(self.keys.shard(reshape.to)));
                ops.push(Op::put(self.keys.config(), encode(&config)?));
                ops.push(Op::put(
                    self.keys.shard(reshape.to),
                    encode(&ShardInfo::new(reshape.to, leader.clone()))?,
                ));
            }
            reshape.updated_ms = now_ms();
            ops.push(Op::put(self.keys.reshape(), encode(&reshape)?));
            if self.kv.txn(compares, ops).await?.succeeded {
                return Ok(Some(reshape));
            }
        }
        Err(Error::Invalid(
            "starting the split or merge kept conflicting; retry".into(),
        ))
    }

    /// Records a failed attempt at the current step.
    pub async fn reshape_failed(&self, reshape: &Reshape, rev: i64, error: &str) -> Result<()> {
        let mut next = reshape.clone();
        next.attempts += 1;
        next.last_error = error.to_string();
        self.kv
            .txn(
                vec![Compare::ModRevision(self.keys.reshape(), rev)],
                vec![Op::put(self.keys.reshape(), encode(&next)?)],
            )
            .await?;
        Ok(())
    }

    /// After the handover: moves the tables (those still on `from`) to
    /// `to` in the catalog, their files staying at their home, and
    /// records the step, in one transaction. Returns the tables' records
    /// as they are now (dropped ones left out), or `None` when the
    /// procedure changed meanwhile.
    pub async fn move_reshaped_tables(
        &self,
        reshape: &Reshape,
        rev: i64,
    ) -> Result<Option<Vec<TableRecord>>> {
        for _ in 0..16 {
            let mut compares = vec![Compare::ModRevision(self.keys.reshape(), rev)];
            let mut ops = vec![self.bump_catalog()];
            let mut records = Vec::new();
            for id in &reshape.tables {
                let Some(kv) = self.kv.get(&self.keys.table(*id)).await? else {
                    continue;
                };
                let mut record: TableRecord = decode(&kv)?;
                if record.shard == reshape.from {
                    record.home = Some(record.home.unwrap_or(reshape.from));
                    record.shard = reshape.to;
                    compares.push(Compare::ModRevision(self.keys.table(*id), kv.mod_revision));
                    ops.push(Op::put(self.keys.table(*id), encode(&record)?));
                }
                records.push(record);
            }
            let mut next = reshape.clone();
            next.step = ReshapeStep::Moved;
            next.attempts = 0;
            next.last_error.clear();
            next.updated_ms = now_ms();
            ops.push(Op::put(self.keys.reshape(), encode(&next)?));
            if self.kv.txn(compares, ops).await?.succeeded {
                return Ok(Some(records));
            }
            if self.reshape().await?.map(|(_, r)| r) != Some(rev) {
                return Ok(None);
            }
        }
        Err(Error::Invalid(
            "moving the tables of a split or merge kept conflicting".into(),
        ))
    }

    /// Ends the procedure. A merge retires its shard `from` (no table is
    /// on it any more; the caller checked): its record goes, and its
    /// leader closes it. Returns false when the procedure changed
    /// meanwhile.
    pub async fn finish_reshape(&self, reshape: &Reshape, rev: i64) -> Result<bool> {
        let mut done = reshape.clone();
        done.step = ReshapeStep::Done;
        done.attempts = 0;
        done.last_error.clear();
        done.updated_ms = now_ms();
        let mut ops = vec![
            Op::delete(self.keys.reshape()),
            Op::put(self.keys.reshape_last(), encode(&done)?),
        ];
        if reshape.kind == ReshapeKind::Merge {
            ops.push(Op::delete(self.keys.shard(reshape.from)));
        }
        Ok(self
            .kv
            .txn(vec![Compare::ModRevision(self.keys.reshape(), rev)], ops)
            .await?
            .succeeded)
    }

    /// Hands the procedure back to its first step with `tables` (a merge
    /// whose shard received tables created meanwhile).
    pub async fn restart_reshape(
        &self,
        reshape: &Reshape,
        rev: i64,
        tables: Vec<u64>,
    ) -> Result<bool> {
        let mut next = reshape.clone();
        next.step = ReshapeStep::HandingOver;
        next.tables = tables;
        next.updated_ms = now_ms();
        Ok(self
            .kv
            .txn(
                vec![Compare::ModRevision(self.keys.reshape(), rev)],
                vec![Op::put(self.keys.reshape(), encode(&next)?)],
            )
            .await?
            .succeeded)
    }

    // ---- the meta leader ----

    /// Tries to become (or stay) the leading meta process under `lease`.
    pub async fn campaign(&self, me: &str, lease: LeaseId) -> Result<bool> {
        let key = self.keys.meta_leader();
        self.kv
            .txn(
                vec![Compare::Absent(key.clone())],
                vec![Op::Put {
                    key: key.clone(),
                    value: me.as_bytes().to_vec(),
                    lease,
                }],
            )
            .await?;
        // Ours only under our own lease: another process with the same
        // address (a misconfiguration, or this process's predecessor whose
        // lease has not expired yet) does not make this one the leader.
        Ok(self
            .kv
            .get(&key)
            .await?
            .is_some_and(|kv| kv.value == me.as_bytes() && kv.lease == lease))
    }

    pub async fn leader(&self) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(&self.keys.meta_leader())
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).to_string()))
    }

    // ---- scheduling switch ----

    pub async fn set_schedule_paused(&self, paused: bool) -> Result<()> {
        if paused {
            self.kv.put(&self.keys.schedule_paused(), b"1", 0).await?;
        } else {
            self.kv.delete(&self.keys.schedule_paused()).await?;
        }
        Ok(())
    }

    /// Marks process `instance` of `node` drained (no shard is led there;
    /// a new process behind the node id is not), or clears the mark.
    pub async fn set_draining(&self, node: &str, instance: Option<&str>) -> Result<()> {
        match instance {
            Some(i) => {
                self.kv
                    .put(&self.keys.draining(node), i.as_bytes(), 0)
                    .await?;
            }
            None => {
                self.kv.delete(&self.keys.draining(node)).await?;
            }
        }
        Ok(())
    }

    /// The drained nodes: (node id, the process that was drained).
    pub async fn draining(&self) -> Result<Vec<(String, String)>> {
        let prefix = self.keys.draining_prefix();
        Ok(self
            .kv
            .range(&prefix)
            .await?
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key[prefix.len()..]).to_string(),
                    String::from_utf8_lossy(&kv.value).to_string(),
                )
            })
            .collect())
    }

    pub async fn schedule_paused(&self) -> Result<bool> {
        Ok(self.kv.get(&self.keys.schedule_paused()).await?.is_some())
    }

    /// A lease for a node or a meta process.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.kv.grant_lease(ttl).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::kv::memory::MemoryKv;

    fn store() -> MetaStore {
        MetaStore::new(Arc::new(MemoryKv::new()), "c1")
    }

    #[tokio::test]
    async fn init_is_idempotent_and_keeps_the_first_shard_count() {
        let s = store();
        assert_eq!(s.init_cluster(4).await.unwrap().shard_count, 4);
        assert_eq!(s.init_cluster(8).await.unwrap().shard_count, 4);
        assert_eq!(s.shards().await.unwrap().len(), 4);
        assert_eq!(s.databases().await.unwrap()[0].name, "public");
    }

    async fn created(s: &MetaStore, name: &str) -> TableRecord {
        match s
            .create_table("public", name, serde_json::json!({}), 0)
            .await
            .unwrap()
        {
            CreateTable::Created(r) => r,
            _ => panic!("{name} not created"),
        }
    }

    /// A split creates its shard (a new id; the count grows), one procedure
    /// runs at a time, moving the tables records their home, and a merge
    /// retires its shard, whose id is not given out again; new tables are
    /// not placed on a shard a merge is emptying.
    #[tokio::test]
    async fn splits_and_merges_move_tables_and_create_and_retire_shards() {
        let s = store();
        s.init_cluster(1).await.unwrap();
        let a = created(&s, "a").await;
        let b = created(&s, "b").await;
        assert_eq!((a.shard, b.shard), (0, 0));

        let split = Reshape::new(ReshapeKind::Split, 0, 0, vec![b.id]);
        let started = s
            .start_reshape(split.clone(), Some("n1".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(started.to, 1);
        assert_eq!(s.config().await.unwrap().unwrap().shard_count, 2);
        let shards = s.shards().await.unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[1].0.leader.as_deref(), Some("n1"));
        // One at a time.
        assert!(s.start_reshape(split, None).await.unwrap().is_none());

        let (r, rev) = s.reshape().await.unwrap().unwrap();
        let moved = s.move_reshaped_tables(&r, rev).await.unwrap().unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!((moved[0].shard, moved[0].home), (1, Some(0)));
        // A stale step changes nothing.
        assert!(s.move_reshaped_tables(&r, rev).await.unwrap().is_none());
        let (r, rev) = s.reshape().await.unwrap().unwrap();
        assert_eq!(r.step, ReshapeStep::Moved);
        assert!(s.finish_reshape(&r, rev).await.unwrap());
        assert!(s.reshape().await.unwrap().is_none());
        assert_eq!(
            s.last_reshape().await.unwrap().unwrap().step,
            ReshapeStep::Done
        );

        // Merge shard 1 back into 0: new tables go to 0 meanwhile.
        let merge = Reshape::new(ReshapeKind::Merge, 1, 0, vec![b.id]);
        s.start_reshape(merge, None).await.unwrap().unwrap();
        assert_eq!(created(&s, "c").await.shard, 0);
        let (r, rev) = s.reshape().await.unwrap().unwrap();
        let moved = s.move_reshaped_tables(&r, rev).await.unwrap().unwrap();
        assert_eq!((moved[0].shard, moved[0].home), (0, Some(0)));
        let (r, rev) = s.reshape().await.unwrap().unwrap();
        assert!(s.finish_reshape(&r, rev).await.unwrap());
        let shards = s.shards().await.unwrap();
        assert_eq!(
            shards.iter().map(|(i, _)| i.id).collect::<Vec<_>>(),
            vec![0]
        );
        // The next split gets a new id, not the retired one.
        let next = s
            .start_reshape(Reshape::new(ReshapeKind::Split, 0, 0, vec![a.id]), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.to, 2);
    }

    #[tokio::test]
    async fn tables_get_unique_ids_and_names_and_spread_over_shards() {
        let s = store();
        s.init_cluster(2).await.unwrap();
        let def = serde_json::json!({"columns": []});
        let a = match s.create_table("public", "a", def.clone(), 0).await.unwrap() {
            CreateTable::Created(r) => r,
            other => panic!("{other:?}"),
        };
        let b = match s.create_table("public", "b", def.clone(), 0).await.unwrap() {
            CreateTable::Created(r) => r,
            other => panic!("{other:?}"),
        };
        assert_ne!(a.id, b.id);
        assert_ne!(a.shard, b.shard, "the emptier shard is chosen");
        assert!(matches!(
            s.create_table("public", "a", def.clone(), 0).await.unwrap(),
            CreateTable::Exists(_)
        ));
        assert_eq!(
            s.create_table("nope", "x", def.clone(), 0).await.unwrap(),
            CreateTable::DatabaseMissing
        );
        assert_eq!(s.drop_table("public", "a").await.unwrap().len(), 1);
        let c = match s.create_table("public", "a", def, 0).await.unwrap() {
            CreateTable::Created(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(c.id > b.id, "ids are never reused");
    }

    #[tokio::test]
    async fn a_partitioned_table_is_created_altered_and_dropped_with_its_partitions() {
        let s = store();
        s.init_cluster(3).await.unwrap();
        let def = serde_json::json!({"v": 1});
        let other = match s.create_table("public", "o", def.clone(), 0).await.unwrap() {
            CreateTable::Created(r) => r,
            other => panic!("{other:?}"),
        };
        let t = match s.create_table("public", "t", def.clone(), 5).await.unwrap() {
            CreateTable::Created(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!((t.shard, t.partitions), (PARTITIONED_SHARD, 5));
        let parts = s.partitions(t.id).await.unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["__t_0", "__t_1", "__t_2", "__t_3", "__t_4"]);
        let ids: Vec<u64> = parts.iter().map(|p| p.id).collect();
        assert_eq!(ids, (t.id + 1..=t.id + 5).collect::<Vec<_>>());
        assert_eq!(s.last_table_id().await.unwrap(), t.id + 5);
        // Spread: with `o` on one shard, 5 partitions over 3 shards leave
        // every shard 2 tables.
        let mut per_shard = BTreeMap::new();
        for r in parts.iter().chain([&other]) {
            *per_shard.entry(r.shard).or_insert(0) += 1;
        }
        assert_eq!(per_shard.into_values().collect::<Vec<_>>(), [2, 2, 2]);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(
                p.partition_of,
                Some(PartitionRef {
                    parent: t.id,
                    index: i as u32
                })
            );
        }

        // A name a partition would take is refused, with nothing created.
        let taken = s
            .create_table("public", "__u_1", def.clone(), 0)
            .await
            .unwrap();
        assert!(matches!(taken, CreateTable::Created(_)), "{taken:?}");
        let before = s.last_table_id().await.unwrap();
        match s.create_table("public", "u", def.clone(), 3).await.unwrap() {
            CreateTable::PartitionNameTaken(name) => assert_eq!(name, "__u_1"),
            other => panic!("{other:?}"),
        }
        assert!(s.table("public", "u").await.unwrap().is_none());
        assert!(s.table("public", "__u_0").await.unwrap().is_none());
        assert_eq!(s.last_table_id().await.unwrap(), before);
        assert!(s
            .create_table("public", "big", def.clone(), MAX_PARTITIONS + 1)
            .await
            .is_err());

        // ALTER changes every partition's definition with the table's.
        let new_def = serde_json::json!({"v": 2});
        // A change made to a definition the table no longer has is refused.
        assert_eq!(
            s.update_table("public", "t", new_def.clone(), Some((t.id, 1)))
                .await
                .unwrap(),
            UpdateTable::Changed
        );
        assert_eq!(
            s.update_table("public", "t", new_def.clone(), Some((t.id + 100, 0)))
                .await
                .unwrap(),
            UpdateTable::Changed,
            "another table of the same name"
        );
        let UpdateTable::Updated(altered) = s
            .update_table("public", "t", new_def.clone(), Some((t.id, 0)))
            .await
            .unwrap()
        else {
            panic!("not updated");
        };
        assert_eq!(altered.len(), 6);
        assert!(altered.iter().all(|r| r.revision == 1), "{altered:?}");
        assert_eq!(
            s.update_table("public", "t", new_def.clone(), Some((t.id, 0)))
                .await
                .unwrap(),
            UpdateTable::Changed,
            "the revision moved on"
        );
        for r in s.tables().await.unwrap() {
            if r.id == t.id || r.partition_of.is_some_and(|p| p.parent == t.id) {
                assert_eq!(r.definition, new_def, "{}", r.name);
            } else {
                assert_eq!(r.definition, def, "{}", r.name);
            }
        }

        // DROP takes the partitions along.
        assert_eq!(s.drop_table("public", "t").await.unwrap().len(), 6);
        for i in 0..5 {
            assert!(s
                .table("public", &partition_name("t", i))
                .await
                .unwrap()
                .is_none());
        }
        assert!(s.partitions(t.id).await.unwrap().is_empty());
        assert!(s.table("public", "o").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn shard_locks_are_exclusive_and_follow_their_lease() {
        let s = store();
        s.init_cluster(1).await.unwrap();
        let l1 = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        let l2 = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        let e1 = s
            .acquire_shard_lock(0, "n1", "i1", l1, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.acquire_shard_lock(0, "n1", "i1", l1, 0).await.unwrap(),
            Some(e1.clone()),
            "re-acquiring is idempotent"
        );
        assert_eq!(
            s.acquire_shard_lock(0, "n2", "i2", l2, 0).await.unwrap(),
            None,
            "another node is refused"
        );
        s.kv().revoke(l1).await.unwrap();
        let e2 = s
            .acquire_shard_lock(0, "n2", "i2", l2, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(e2.epoch > e1.epoch, "a new holder gets a higher epoch");
        assert_eq!(s.lock_holder(0).await.unwrap(), Some(e2.clone()));
        // An epoch the WAL has seen beyond the store's (a fresh etcd) wins.
        s.release_shard_lock(0, "n2", "i2").await.unwrap();
        let far = e2.epoch + 1_000_000_000;
        let e3 = s
            .acquire_shard_lock(0, "n2", "i2", l2, far)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e3.epoch, far);
        assert!(!s.release_shard_lock(0, "n1", "i1").await.unwrap());
        assert!(s.release_shard_lock(0, "n2", "i2").await.unwrap());
    }

    /// Two processes behind one node id (two pods on 0.0.0.0:8831 without
    /// an advertised address) are two holders: the second is refused while
    /// the first holds the lock, and gets a higher epoch once it is gone.
    #[tokio::test]
    async fn two_processes_of_one_node_do_not_share_a_lock() {
        let s = store();
        s.init_cluster(1).await.unwrap();
        let l1 = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        let a = s
            .acquire_shard_lock(0, "n1", "a", l1, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.acquire_shard_lock(0, "n1", "b", l1, 0).await.unwrap(),
            None
        );
        assert!(s
            .confirm_shard_lock(0, "n1", "a", l1)
            .await
            .unwrap()
            .is_some());
        assert!(s
            .confirm_shard_lock(0, "n1", "b", l1)
            .await
            .unwrap()
            .is_none());
        assert!(!s.release_shard_lock(0, "n1", "b").await.unwrap());
        s.kv().revoke(l1).await.unwrap();
        assert!(s
            .confirm_shard_lock(0, "n1", "a", l1)
            .await
            .unwrap()
            .is_none());
        let l2 = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        let b = s
            .acquire_shard_lock(0, "n1", "b", l2, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(b.epoch > a.epoch);
    }

    #[tokio::test]
    async fn leader_changes_are_compare_and_swap_with_versions() {
        let s = store();
        s.init_cluster(1).await.unwrap();
        let (shard, rev) = s.shards().await.unwrap().remove(0);
        let moved = s
            .set_leader(&shard, rev, Some("n1".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved.version, 2);
        assert!(
            s.set_leader(&shard, rev, Some("n2".into()))
                .await
                .unwrap()
                .is_none(),
            "a stale change is refused"
        );
    }

    #[tokio::test]
    async fn one_leader_at_a_time() {
        let s = store();
        let l1 = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        let l2 = s.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert!(s.campaign("m1", l1).await.unwrap());
        assert!(!s.campaign("m2", l2).await.unwrap());
        // The same name under another lease (a second process given the
        // same address, or a restarted one while its predecessor's lease
        // lives) does not lead.
        assert!(!s.campaign("m1", l2).await.unwrap());
        s.kv().revoke(l1).await.unwrap();
        assert!(s.campaign("m2", l2).await.unwrap());
    }
}
