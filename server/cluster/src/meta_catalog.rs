//! DDL through meta: the engine's [`ClusterCatalog`] in cluster mode.

use super::meta_client::*;
use std::sync::Arc;

use async_trait::async_trait;
use strata_engine::{
    catalog::TableEntry,
    options::TableOptions,
    partition::{PartitionOf, PartitionSpec},
    schema::TableSchema,
    ClusterCatalog,
};
use strata_meta::model::PartitionRef;
use strata_proto::meta::{
    AlterTableRequest, CreateTableRequest, DatabaseRequest, TableRequest, TableResponse,
};
use strata_sst::{ShardId, TableId};

/// What meta stores as a table's definition (a partitioned table's
/// partitions carry its definition, key included).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Definition {
    schema: TableSchema,
    options: TableOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition: Option<PartitionSpec>,
}

/// Meta's table record, as the engine's catalog entry.
pub(super) fn entry_of(json: &str) -> EngineResult<TableEntry> {
    let r: strata_meta::model::TableRecord = serde_json::from_str(json)
        .map_err(|e| strata_engine::Error::Catalog(format!("a table from meta: {e}")))?;
    let def: Definition = serde_json::from_value(r.definition)
        .map_err(|e| strata_engine::Error::Catalog(format!("table {}: {e}", r.name)))?;
    let partition_of = r.partition_of.map(|p| PartitionOf {
        parent: TableId(p.parent),
        index: p.index,
    });
    // A partition count without a matching key (meta refuses to write
    // one; an instance of an older version could): the table is shown
    // unpartitioned, on no shard, rather than failing the whole catalog.
    let partition = match (r.partitions, def.partition) {
        (0, _) => None,
        (n, Some(spec)) if spec.count == n => Some(spec),
        (n, _) => {
            tracing::error!(table = %r.name, partitions = n,
                "a partitioned table in meta's catalog has no matching key; not usable");
            None
        }
    };
    Ok(TableEntry {
        id: TableId(r.id),
        database: r.database,
        name: r.name,
        schema: def.schema,
        options: def.options,
        shard: ShardId(r.shard),
        created_at_ms: r.created_at_ms,
        partition,
        partition_of,
        revision: r.revision,
        home: r.home.map(ShardId),
    })
}

pub(super) fn record_json(e: &TableEntry) -> EngineResult<String> {
    let record = strata_meta::model::TableRecord {
        id: e.id.0,
        database: e.database.clone(),
        name: e.name.clone(),
        shard: e.shard.0,
        definition: definition(&e.schema, &e.options, e.partition.as_ref())?,
        created_at_ms: e.created_at_ms,
        partitions: e.partition.as_ref().map_or(0, |p| p.count),
        partition_of: e.partition_of.map(|p| PartitionRef {
            parent: p.parent.0,
            index: p.index,
        }),
        revision: e.revision,
        home: e.home.map(|s| s.0),
    };
    serde_json::to_string(&record).map_err(|err| strata_engine::Error::Internal(err.to_string()))
}

pub(super) fn definition(
    schema: &TableSchema,
    options: &TableOptions,
    partition: Option<&PartitionSpec>,
) -> EngineResult<serde_json::Value> {
    serde_json::to_value(Definition {
        schema: schema.clone(),
        options: options.clone(),
        partition: partition.cloned(),
    })
    .map_err(|e| strata_engine::Error::Internal(format!("encoding a table definition: {e}")))
}

/// DDL through meta.
#[derive(Debug)]
pub struct MetaCatalog {
    meta: Arc<MetaClient>,
}

impl MetaCatalog {
    pub fn new(meta: Arc<MetaClient>) -> Self {
        Self { meta }
    }
}

#[async_trait]
impl ClusterCatalog for MetaCatalog {
    async fn create_database(&self, name: &str, if_not_exists: bool) -> EngineResult<bool> {
        let req = DatabaseRequest {
            name: name.to_string(),
            if_not_exists,
            if_exists: false,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_database(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::Catalog("unexpected 404".into()),
            || strata_engine::Error::DatabaseExists {
                name: name.to_string(),
            },
        )?;
        Ok(resp.changed)
    }

    async fn drop_database(&self, name: &str, if_exists: bool) -> EngineResult<bool> {
        let req = DatabaseRequest {
            name: name.to_string(),
            if_not_exists: false,
            if_exists,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.drop_database(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::DatabaseNotFound {
                name: name.to_string(),
            },
            || strata_engine::Error::Catalog("unexpected 409".into()),
        )?;
        Ok(resp.changed)
    }

    async fn create_table(
        &self,
        database: &str,
        name: &str,
        schema: TableSchema,
        options: TableOptions,
        partition: Option<&PartitionSpec>,
        if_not_exists: bool,
    ) -> EngineResult<Option<Vec<TableEntry>>> {
        let req = CreateTableRequest {
            database: database.to_string(),
            name: name.to_string(),
            definition_json: definition(&schema, &options, partition)?.to_string(),
            if_not_exists,
            partitions: partition.map_or(0, |p| p.count),
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_table(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::DatabaseNotFound {
                name: database.to_string(),
            },
            || strata_engine::Error::TableExists {
                name: name.to_string(),
            },
        )?;
        if !resp.changed {
            return Ok(None);
        }
        entries_of(&resp).map(Some)
    }

    async fn alter_table(
        &self,
        base: &TableEntry,
        entry: &TableEntry,
    ) -> EngineResult<Vec<TableEntry>> {
        let req = AlterTableRequest {
            database: entry.database.clone(),
            name: entry.name.clone(),
            definition_json: definition(&entry.schema, &entry.options, entry.partition.as_ref())?
                .to_string(),
            base_revision: Some(base.revision),
            base_table_id: Some(base.id.0),
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.alter_table(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::TableNotFound {
                name: entry.name.clone(),
            },
            || {
                strata_engine::Error::CatalogChanged(format!(
                    "table {} changed since this instance read it (a concurrent ALTER)",
                    entry.name
                ))
            },
        )?;
        entries_of(&resp)
    }

    async fn drop_table(
        &self,
        database: &str,
        name: &str,
        if_exists: bool,
    ) -> EngineResult<Vec<TableEntry>> {
        let req = TableRequest {
            database: database.to_string(),
            name: name.to_string(),
            if_exists,
        };
        let resp = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.drop_table(req).await }
            })
            .await?;
        check(
            resp.header.as_ref(),
            || strata_engine::Error::TableNotFound {
                name: name.to_string(),
            },
            || strata_engine::Error::Catalog("unexpected 409".into()),
        )?;
        if !resp.changed {
            return Ok(Vec::new());
        }
        entries_of(&resp)
    }
}

/// A response's table, then its partitions.
fn entries_of(resp: &TableResponse) -> EngineResult<Vec<TableEntry>> {
    std::iter::once(&resp.record_json)
        .chain(&resp.partitions_json)
        .map(|j| entry_of(j))
        .collect()
}
