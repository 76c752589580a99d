//! System tables, in the database `system`: snapshots of the engine's state
//! built when a query names them.
//!
//! - `system.tables`: one row per table, with its options and storage use;
//! - `system.sst_files`: one row per SST (segment, level, rows, bytes, time
//!   range);
//! - `system.shards`: one row per shard: where meta assigns it (leader and
//!   followers), this instance's role in it, and when it is open here
//!   (leading or following) its WAL epoch, applied offset and a follower's
//!   lag;
//! - `system.nodes`: the instances leading shards, as this instance last
//!   heard from meta (meta's `/nodes` has the full list);
//! - `system.partitions`: one row per partition of a partitioned table:
//!   its key, the sub-table holding it and the shard and leader serving it.

use std::sync::Arc;

use arrow::{
    array::{
        ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
        UInt64Array,
    },
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
};
use async_trait::async_trait;
use datafusion::{
    catalog::{MemTable, SchemaProvider, TableProvider},
    error::Result as DfResult,
};
use strata_engine::{options::format_duration, Engine};

use crate::route::{Assignment, Router};

pub const SYSTEM_DATABASE: &str = "system";
const TABLES: [&str; 5] = ["nodes", "partitions", "shards", "sst_files", "tables"];

#[derive(Debug)]
pub struct SystemSchema {
    engine: Arc<Engine>,
    router: Arc<dyn Router>,
}

impl SystemSchema {
    pub fn new(engine: Arc<Engine>, router: Arc<dyn Router>) -> Self {
        Self { engine, router }
    }

    /// Every shard's assignment; standalone has one shard, led here.
    fn assignments(&self) -> (String, Vec<Assignment>) {
        (self.router.node_id().to_string(), self.router.assignments())
    }

    fn shards(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("shard_id", DataType::UInt64, false),
            Field::new("version", DataType::UInt64, false),
            Field::new("leader", DataType::Utf8, false),
            Field::new("leader_endpoint", DataType::Utf8, false),
            Field::new("open_here", DataType::Boolean, false),
            Field::new("epoch", DataType::UInt64, true),
            Field::new("wal_offset", DataType::UInt64, true),
            Field::new("tables", DataType::UInt64, true),
            Field::new("followers", DataType::Utf8, false),
            Field::new("role", DataType::Utf8, true),
            Field::new("lag_records", DataType::UInt64, true),
            Field::new("lag_ms", DataType::UInt64, true),
        ]));
        let (_, assignments) = self.assignments();
        let local: Vec<_> = assignments
            .iter()
            .map(|a| self.engine.shard(strata_sst::ShardId(a.shard)))
            .collect();
        let followed: Vec<_> = assignments
            .iter()
            .map(|a| self.engine.follower(strata_sst::ShardId(a.shard)))
            .collect();
        let status: Vec<_> = followed
            .iter()
            .map(|f| f.as_ref().map(|f| f.status()))
            .collect();
        build(
            schema,
            vec![
                Arc::new(UInt64Array::from_iter_values(
                    assignments.iter().map(|a| a.shard),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    assignments.iter().map(|a| a.version),
                )),
                Arc::new(StringArray::from_iter_values(
                    assignments.iter().map(|a| a.leader.clone()),
                )),
                Arc::new(StringArray::from_iter_values(
                    assignments.iter().map(|a| a.endpoint.clone()),
                )),
                Arc::new(BooleanArray::from_iter(
                    local.iter().map(|s| Some(s.is_some())),
                )),
                Arc::new(UInt64Array::from_iter(
                    local.iter().map(|s| s.as_ref().map(|s| s.epoch().0)),
                )),
                Arc::new(UInt64Array::from_iter(local.iter().zip(&status).map(
                    |(s, f)| {
                        s.as_ref()
                            .map(|s| s.applied_offset())
                            .or(f.map(|f| f.applied))
                    },
                ))),
                Arc::new(UInt64Array::from_iter(local.iter().zip(&followed).map(
                    |(s, f)| {
                        s.as_ref()
                            .map(|s| s.tables().len() as u64)
                            .or(f.as_ref().map(|f| f.tables().len() as u64))
                    },
                ))),
                Arc::new(StringArray::from_iter_values(
                    assignments.iter().map(|a| a.followers.join(",")),
                )),
                Arc::new(StringArray::from_iter(local.iter().zip(&followed).map(
                    |(s, f)| match (s, f) {
                        (Some(_), _) => Some("leader"),
                        (None, Some(_)) => Some("follower"),
                        (None, None) => None,
                    },
                ))),
                Arc::new(UInt64Array::from_iter(
                    status.iter().map(|f| f.map(|f| f.lag_records)),
                )),
                Arc::new(UInt64Array::from_iter(
                    status.iter().map(|f| f.map(|f| f.lag_ms)),
                )),
            ],
        )
    }

    /// This instance's rows of a system table and, in cluster mode, every
    /// other instance's (an instance that does not answer is left out, so
    /// that the view stays available during a failover).
    async fn cluster_wide(
        &self,
        name: &str,
        local: RecordBatch,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let schema = local.schema();
        let mut batches = vec![local];
        {
            let router = &self.router;
            for peer in router.peer_endpoints() {
                let rows = match router.peer(&peer).await {
                    Ok(c) => {
                        c.query(strata_proto::storage::SqlQueryRequest {
                            context: None,
                            tables: Vec::new(),
                            sql: format!("SELECT * FROM system.{name}"),
                            forwarded: true,
                            catalog_fingerprint: router.fingerprint(),
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                match rows {
                    Ok(strata_client::SqlOutput::Rows(rows)) => {
                        for b in rows {
                            batches
                                .push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(peer = %peer, error = %e, "system.{name}: a peer did not answer")
                    }
                }
            }
        }
        Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
    }

    /// From the catalog, which every instance shares: no peer is asked.
    fn partitions(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("database", DataType::Utf8, false),
            Field::new("table_name", DataType::Utf8, false),
            Field::new("partition_key", DataType::Utf8, false),
            Field::new("partition_count", DataType::UInt32, false),
            Field::new("partition", DataType::UInt32, false),
            Field::new("partition_table", DataType::Utf8, false),
            Field::new("table_id", DataType::UInt64, false),
            Field::new("shard_id", DataType::UInt64, false),
            Field::new("leader", DataType::Utf8, true),
        ]));
        let mut parents = self.engine.catalog().all_tables();
        parents.retain(|t| t.partition.is_some());
        parents.sort_by(|a, b| (&a.database, &a.name).cmp(&(&b.database, &b.name)));
        let mut rows = Vec::new();
        for parent in &parents {
            for part in self.engine.partitions(parent) {
                let leader = self
                    .router
                    .assignment(part.shard)
                    .map(|a| a.leader)
                    .filter(|l| !l.is_empty());
                rows.push((parent, part, leader));
            }
        }
        build(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(p, _, _)| p.database.clone()),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(p, _, _)| p.name.clone()),
                )),
                Arc::new(StringArray::from_iter_values(rows.iter().map(
                    |(p, _, _)| {
                        p.partition
                            .as_ref()
                            .map(|s| {
                                if s.random {
                                    "RANDOM".to_string()
                                } else {
                                    s.columns.join(",")
                                }
                            })
                            .unwrap_or_default()
                    },
                ))),
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter()
                        .map(|(p, _, _)| p.partition.as_ref().map_or(0, |s| s.count)),
                )),
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter()
                        .map(|(_, t, _)| t.partition_of.map_or(0, |p| p.index)),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(_, t, _)| t.name.clone()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|(_, t, _)| t.id.0),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|(_, t, _)| t.shard.0),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter().map(|(_, _, l)| l.clone()),
                )),
            ],
        )
    }

    fn nodes(&self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("node_id", DataType::Utf8, false),
            Field::new("endpoint", DataType::Utf8, false),
            Field::new("shards", DataType::UInt64, false),
            Field::new("is_self", DataType::Boolean, false),
        ]));
        let (me, assignments) = self.assignments();
        let mut nodes: std::collections::BTreeMap<String, (String, u64)> =
            std::collections::BTreeMap::new();
        nodes.insert(me.clone(), (me.clone(), 0));
        for a in assignments.iter().filter(|a| !a.leader.is_empty()) {
            let e = nodes
                .entry(a.leader.clone())
                .or_insert_with(|| (a.endpoint.clone(), 0));
            e.1 += 1;
        }
        build(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(nodes.keys().cloned())),
                Arc::new(StringArray::from_iter_values(
                    nodes.values().map(|v| v.0.clone()),
                )),
                Arc::new(UInt64Array::from_iter_values(nodes.values().map(|v| v.1))),
                Arc::new(BooleanArray::from_iter(
                    nodes.keys().map(|k| Some(*k == me)),
                )),
            ],
        )
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn build(schema: SchemaRef, columns: Vec<ArrayRef>) -> DfResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn tables(engine: &Engine) -> DfResult<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("database", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("table_id", DataType::UInt64, false),
        Field::new("shard_id", DataType::UInt64, false),
        Field::new("update_mode", DataType::Utf8, false),
        Field::new("ttl", DataType::Utf8, true),
        Field::new("segment_duration", DataType::Utf8, false),
        Field::new("schema_version", DataType::UInt32, false),
        Field::new("memtable_rows", DataType::UInt64, false),
        Field::new("memtable_bytes", DataType::UInt64, false),
        Field::new("sst_files", DataType::UInt64, false),
        Field::new("sst_rows", DataType::UInt64, false),
        Field::new("sst_bytes", DataType::UInt64, false),
        Field::new("created_at", ts_type(), false),
    ]));
    let all = engine.all_tables();
    let versions: Vec<_> = all.iter().map(|t| t.version()).collect();
    let metas: Vec<_> = versions.iter().map(|v| v.meta.clone()).collect();
    let strings = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new(StringArray::from((0..all.len()).map(f).collect::<Vec<_>>()))
    };
    let u64s = |f: &dyn Fn(usize) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from((0..all.len()).map(f).collect::<Vec<_>>()))
    };
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(&|i| all[i].database().to_string()),
            strings(&|i| all[i].name().to_string()),
            u64s(&|i| all[i].id().0),
            u64s(&|i| metas[i].entry.shard.0),
            strings(&|i| metas[i].options().update_mode.as_str().to_string()),
            Arc::new(StringArray::from(
                metas
                    .iter()
                    .map(|m| m.options().ttl.map(format_duration))
                    .collect::<Vec<_>>(),
            )),
            strings(&|i| format_duration(metas[i].options().segment_duration)),
            Arc::new(UInt32Array::from(
                metas.iter().map(|m| m.schema().version).collect::<Vec<_>>(),
            )),
            u64s(&|i| versions[i].memtables().map(|m| m.rows() as u64).sum()),
            u64s(&|i| versions[i].memtable_bytes() as u64),
            u64s(&|i| versions[i].ssts.len() as u64),
            u64s(&|i| versions[i].ssts.iter().map(|s| s.info.rows).sum()),
            u64s(&|i| versions[i].ssts.iter().map(|s| s.info.size_bytes).sum()),
            Arc::new(TimestampMillisecondArray::from(
                metas
                    .iter()
                    .map(|m| m.entry.created_at_ms)
                    .collect::<Vec<_>>(),
            )),
        ],
    )?)
}

fn sst_files(engine: &Engine) -> DfResult<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("database", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("table_id", DataType::UInt64, false),
        Field::new("sst_id", DataType::UInt64, false),
        Field::new("segment_start", ts_type(), false),
        Field::new("level", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("min_ts", ts_type(), false),
        Field::new("max_ts", ts_type(), false),
        Field::new("max_seq", DataType::UInt64, false),
        Field::new("schema_version", DataType::UInt32, false),
        Field::new("path", DataType::Utf8, false),
    ]));
    let mut rows = Vec::new();
    for table in engine.all_tables() {
        let version = table.version();
        let mut ssts: Vec<_> = version.ssts.iter().cloned().collect();
        ssts.sort_by_key(|s| {
            (
                s.info.segment_start,
                s.info.level,
                s.info.time_range.start,
                s.info.id,
            )
        });
        for s in ssts {
            rows.push((table.clone(), s));
        }
    }
    let infos: Vec<_> = rows.iter().map(|(_, s)| &s.info).collect();
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|(t, _)| t.database().to_string())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|(t, _)| t.name().to_string())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(
                rows.iter().map(|(t, _)| t.id().0).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(
                infos.iter().map(|i| i.id.0).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                infos.iter().map(|i| i.segment_start).collect::<Vec<_>>(),
            )),
            Arc::new(UInt32Array::from(
                infos.iter().map(|i| i.level).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(
                infos.iter().map(|i| i.rows).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(
                infos.iter().map(|i| i.size_bytes).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                infos.iter().map(|i| i.time_range.start).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                infos
                    .iter()
                    .map(|i| i.time_range.end.saturating_sub(1))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(
                infos.iter().map(|i| i.max_seq).collect::<Vec<_>>(),
            )),
            Arc::new(UInt32Array::from(
                infos.iter().map(|i| i.schema_version).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                infos.iter().map(|i| i.path.clone()).collect::<Vec<_>>(),
            )),
        ],
    )?)
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            "tables" => self
                .cluster_wide("tables", tables(&self.engine)?)
                .await
                .map(Some),
            "sst_files" => self
                .cluster_wide("sst_files", sst_files(&self.engine)?)
                .await
                .map(Some),
            "shards" => self.shards().map(Some),
            "nodes" => self.nodes().map(Some),
            "partitions" => self.partitions().map(Some),
            _ => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
