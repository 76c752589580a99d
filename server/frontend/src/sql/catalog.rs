//! DataFusion's view of Strata's catalog: the catalog `strata`, one schema
//! per database, one table provider per table.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::{
    catalog::{CatalogProvider, SchemaProvider, TableProvider},
    error::Result as DfResult,
};
use strata_engine::{provider::StrataTableProvider, Engine, Located};

use super::{
    remote::RemoteTable,
    system::{SystemSchema, SYSTEM_DATABASE},
};
use crate::route::Router;

pub const CATALOG_NAME: &str = "strata";

#[derive(Debug)]
pub struct StrataCatalog {
    engine: Arc<Engine>,
    /// Where tables are served: in cluster mode, tables on other
    /// instances' shards are reached through their leaders. A
    /// `LocalRouter` for forwarded requests, which must not be forwarded
    /// again.
    router: Arc<dyn Router>,
    /// Read tables whose shards are followed here from the follower's
    /// copy once it has caught up with the WAL, else from the leader
    /// (read-only statements under `read_preference = follower`).
    followers: bool,
}

impl StrataCatalog {
    pub fn new(engine: Arc<Engine>, router: Arc<dyn Router>, followers: bool) -> Self {
        Self {
            engine,
            router,
            followers,
        }
    }
}

impl CatalogProvider for StrataCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.engine.databases();
        names.push(SYSTEM_DATABASE.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SYSTEM_DATABASE {
            return Some(Arc::new(SystemSchema::new(
                self.engine.clone(),
                self.router.clone(),
            )));
        }
        self.engine.database_exists(name).then(|| {
            Arc::new(DatabaseSchema {
                engine: self.engine.clone(),
                router: self.router.clone(),
                database: name.to_string(),
                followers: self.followers,
            }) as Arc<dyn SchemaProvider>
        })
    }
}

#[derive(Debug)]
struct DatabaseSchema {
    engine: Arc<Engine>,
    router: Arc<dyn Router>,
    database: String,
    followers: bool,
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        // Partitions are read through their table (and by name).
        self.engine
            .table_entries(&self.database)
            .into_iter()
            .filter(|t| t.partition_of.is_none())
            .map(|t| t.name)
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match self.engine.locate(&self.database, name) {
            Ok(Located::Local(t)) if t.meta().entry.partition_of.is_some() => {
                Ok(Some(Arc::new(super::partitioned::PartitionTable::new(
                    Arc::new(StrataTableProvider::new(t)),
                    name.to_string(),
                ))))
            }
            Ok(Located::Local(t)) => Ok(Some(Arc::new(StrataTableProvider::new(t)))),
            Ok(Located::Partitioned(entry)) => {
                Ok(Some(Arc::new(super::partitioned::PartitionedTable::new(
                    *entry,
                    self.engine.clone(),
                    self.router.clone(),
                    self.followers,
                )?)))
            }
            Ok(Located::Remote(entry)) => match self.router.is_distributed() {
                // A followed table, under `read_preference = follower`:
                // read from the follower once it has caught up (at the
                // scan: resolving a name costs nothing), else the leader.
                true if self.followers => match self.engine.follower(entry.shard) {
                    Some(f) => Ok(Some(Arc::new(RemoteTable::preferring_follower(
                        *entry,
                        self.router.clone(),
                        f,
                    )))),
                    None => Ok(Some(Arc::new(RemoteTable::reading_storage(
                        *entry,
                        self.router.clone(),
                        &self.engine,
                    )))),
                },
                true => Ok(Some(Arc::new(RemoteTable::reading_storage(
                    *entry,
                    self.router.clone(),
                    &self.engine,
                )))),
                false => Err(datafusion::error::DataFusionError::External(Box::new(
                    strata_engine::Error::NotServedHere {
                        table: name.to_string(),
                        shard: entry.shard,
                    },
                ))),
            },
            Err(
                strata_engine::Error::TableNotFound { .. }
                | strata_engine::Error::DatabaseNotFound { .. },
            ) => Ok(None),
            // It exists, and cannot be read right now (it is moving between
            // shards): listed with its definition (SHOW TABLES, the
            // information schema), and a scan says a retry will do.
            Err(strata_engine::Error::TableMoving { .. }) => {
                match self.engine.entry(&self.database, name) {
                    Ok(entry) => Ok(Some(Arc::new(MovingTable {
                        schema: entry.schema.arrow_schema(),
                        name: entry.name,
                    }))),
                    Err(_) => Ok(None),
                }
            }
            Err(e) => Err(datafusion::error::DataFusionError::External(Box::new(e))),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.entry(&self.database, name).is_ok()
    }
}

/// A table moving between shards (a split or a merge) or being opened on
/// its shard: its definition is known; reading it fails retryably.
#[derive(Debug)]
struct MovingTable {
    schema: arrow::datatypes::SchemaRef,
    name: String,
}

#[async_trait]
impl TableProvider for MovingTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[datafusion::prelude::Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(self.moving())
    }

    async fn insert_into(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _input: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _insert_op: datafusion::logical_expr::dml::InsertOp,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(self.moving())
    }

    async fn delete_from(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _filters: Vec<datafusion::prelude::Expr>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(self.moving())
    }

    async fn update(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _assignments: Vec<(String, datafusion::prelude::Expr)>,
        _filters: Vec<datafusion::prelude::Expr>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(self.moving())
    }
}

impl MovingTable {
    /// What every operation on it answers (retryable, and the statement is
    /// run again once the table is open: see `sql::table_moving`).
    fn moving(&self) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(strata_engine::Error::TableMoving {
            table: self.name.clone(),
        }))
    }
}
