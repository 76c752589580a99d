//! DDL through meta: the engine's [`ClusterCatalog`] in cluster mode.

use super::meta_client::*;
use std::sync::Arc;

use async_trait::async_trait;
use strata_engine::{
    catalog::TableEntry, options::TableOptions, schema::TableSchema, ClusterCatalog,
};
use strata_proto::meta::{AlterTableRequest, CreateTableRequest, DatabaseRequest, TableRequest};
use strata_sst::{ShardId, TableId};

/// What meta stores as a table's definition.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Definition {
    schema: TableSchema,
    options: TableOptions,
}

/// Meta's table record, as the engine's catalog entry.
pub(super) fn entry_of(json: &str) -> EngineResult<TableEntry> {
    let r: strata_meta::model::TableRecord = serde_json::from_str(json)
        .map_err(|e| strata_engine::Error::Catalog(format!("a table from meta: {e}")))?;
    let def: Definition = serde_json::from_value(r.definition)
        .map_err(|e| strata_engine::Error::Catalog(format!("table {}: {e}", r.name)))?;
    Ok(TableEntry {
        id: TableId(r.id),
        database: r.database,
        name: r.name,
        schema: def.schema,
        options: def.options,
        shard: ShardId(r.shard),
        created_at_ms: r.created_at_ms,
        partition: None,
        partition_of: None,
    })
}

pub(super) fn record_json(e: &TableEntry) -> EngineResult<String> {
    let record = strata_meta::model::TableRecord {
        id: e.id.0,
        database: e.database.clone(),
        name: e.name.clone(),
        shard: e.shard.0,
        definition: definition(&e.schema, &e.options)?,
        created_at_ms: e.created_at_ms,
    };
    serde_json::to_string(&record).map_err(|err| strata_engine::Error::Internal(err.to_string()))
}

pub(super) fn definition(
    schema: &TableSchema,
    options: &TableOptions,
) -> EngineResult<serde_json::Value> {
    serde_json::to_value(Definition {
        schema: schema.clone(),
        options: options.clone(),
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
        if_not_exists: bool,
    ) -> EngineResult<Option<TableEntry>> {
        let req = CreateTableRequest {
            database: database.to_string(),
            name: name.to_string(),
            definition_json: definition(&schema, &options)?.to_string(),
            if_not_exists,
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
        entry_of(&resp.record_json).map(Some)
    }

    async fn alter_table(&self, entry: &TableEntry) -> EngineResult<()> {
        let req = AlterTableRequest {
            database: entry.database.clone(),
            name: entry.name.clone(),
            definition_json: definition(&entry.schema, &entry.options)?.to_string(),
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
            || strata_engine::Error::Catalog("unexpected 409".into()),
        )
    }

    async fn drop_table(
        &self,
        database: &str,
        name: &str,
        if_exists: bool,
    ) -> EngineResult<Option<TableEntry>> {
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
            return Ok(None);
        }
        entry_of(&resp.record_json).map(Some)
    }
}
