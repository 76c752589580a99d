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
use crate::cluster::Cluster;

pub const CATALOG_NAME: &str = "strata";

#[derive(Debug)]
pub struct StrataCatalog {
    engine: Arc<Engine>,
    /// Cluster mode: tables on other instances' shards are reached through
    /// their leaders. `None` for forwarded requests, which must not be
    /// forwarded again.
    cluster: Option<Arc<Cluster>>,
}

impl StrataCatalog {
    pub fn new(engine: Arc<Engine>, cluster: Option<Arc<Cluster>>) -> Self {
        Self { engine, cluster }
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
                self.cluster.clone(),
            )));
        }
        self.engine.database_exists(name).then(|| {
            Arc::new(DatabaseSchema {
                engine: self.engine.clone(),
                cluster: self.cluster.clone(),
                database: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

#[derive(Debug)]
struct DatabaseSchema {
    engine: Arc<Engine>,
    cluster: Option<Arc<Cluster>>,
    database: String,
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        self.engine
            .table_entries(&self.database)
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match self.engine.locate(&self.database, name) {
            Ok(Located::Local(t)) => Ok(Some(Arc::new(StrataTableProvider::new(t)))),
            Ok(Located::Remote(entry)) => match &self.cluster {
                Some(c) => Ok(Some(Arc::new(RemoteTable::new(*entry, c.clone())))),
                None => Err(datafusion::error::DataFusionError::External(Box::new(
                    strata_engine::Error::NotServedHere {
                        table: name.to_string(),
                        shard: entry.shard,
                    },
                ))),
            },
            Err(_) => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.entry(&self.database, name).is_ok()
    }
}
