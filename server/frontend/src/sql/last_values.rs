//! The `last_values('table')` table function: the newest row of every series
//! of a table in the session's database, from the table's last-value cache
//! (strata_engine::last_values). In cluster mode a table led elsewhere is
//! asked of its leader; a partitioned table is each partition's rows.

use std::sync::Arc;

use datafusion::{
    catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider},
    common::{plan_err, DataFusionError, Result as DfResult, ScalarValue},
    logical_expr::Expr,
};
use strata_engine::{provider::LastValuesProvider, Engine, Located};

use super::remote::RemoteTable;
use crate::route::Router;

pub const NAME: &str = "last_values";

#[derive(Debug)]
pub struct LastValuesFunction {
    pub engine: Arc<Engine>,
    /// Where tables are served (a `LocalRouter` for forwarded requests).
    pub router: Arc<dyn Router>,
}

impl TableFunctionImpl for LastValuesFunction {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> DfResult<Arc<dyn TableProvider>> {
        let name = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(s)), _)]
            | [Expr::Literal(ScalarValue::Utf8View(Some(s)), _)]
            | [Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _)] => s.clone(),
            _ => {
                return plan_err!(
                    "{NAME} takes one argument, a table name as a string: {NAME}('cpu')"
                )
            }
        };
        let database = args
            .session()
            .config()
            .options()
            .catalog
            .default_schema
            .clone();
        match self.engine.locate(&database, &name) {
            Ok(Located::Local(t)) => Ok(Arc::new(LastValuesProvider::new(t))),
            Ok(Located::Remote(entry)) => match self.router.is_distributed() {
                true => Ok(Arc::new(RemoteTable::last_values(
                    *entry,
                    self.router.clone(),
                ))),
                false => Err(DataFusionError::External(Box::new(
                    strata_engine::Error::NotServedHere {
                        table: name,
                        shard: entry.shard,
                    },
                ))),
            },
            Ok(Located::Partitioned(entry)) => {
                Ok(Arc::new(super::partitioned::PartitionedTable::last_values(
                    *entry,
                    self.engine.clone(),
                    self.router.clone(),
                )?))
            }
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }
}
