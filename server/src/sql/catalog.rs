//! DataFusion's view of Strata's catalog: the catalog `strata`, one schema
//! per database, one table provider per table.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::{
    catalog::{CatalogProvider, SchemaProvider, TableProvider},
    error::Result as DfResult,
};
use strata_engine::{provider::StrataTableProvider, Engine};

use super::system::{SystemSchema, SYSTEM_DATABASE};

pub const CATALOG_NAME: &str = "strata";

#[derive(Debug)]
pub struct StrataCatalog {
    engine: Arc<Engine>,
}

impl StrataCatalog {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
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
            return Some(Arc::new(SystemSchema::new(self.engine.clone())));
        }
        self.engine.database_exists(name).then(|| {
            Arc::new(DatabaseSchema {
                engine: self.engine.clone(),
                database: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

#[derive(Debug)]
struct DatabaseSchema {
    engine: Arc<Engine>,
    database: String,
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        self.engine
            .tables(&self.database)
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .engine
            .table(&self.database, name)
            .ok()
            .map(|t| Arc::new(StrataTableProvider::new(t)) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.table(&self.database, name).is_ok()
    }
}
