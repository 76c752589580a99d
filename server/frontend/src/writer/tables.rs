//! The tables a write names: created when missing, from the schema the
//! write's protocol derives from its request, and given the columns a write
//! brings. gRPC, line protocol and remote write all go through here, so a
//! table is created on write, or a column added, in one way.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use strata_engine::schema::{ColumnSchema, TableSchema};

use super::columns_of;
use crate::{error::Result, sql::QueryEngine};

/// A table resolved for a write.
#[derive(Debug)]
pub struct WriteTable {
    /// Its columns as this instance knows them ([`columns_of`]).
    pub schema: TableSchema,
    pub arrow: SchemaRef,
    /// Whether this write created it: its rows then built its columns and
    /// need no check against an older definition.
    pub created: bool,
}

/// `table` of `db` for a write. When it does not exist and `new_schema` is
/// given, it is created first, with the schema `new_schema` builds (each
/// protocol's rule for a table's first write: gRPC's tags and fields by
/// their first values, line protocol's tags and fields, remote write's
/// fixed layout) and the default options; in cluster mode through meta, on
/// the shard meta picks, and the rows then go to that shard's leader.
/// After the create the catalog is refreshed, as after SQL DDL: it takes
/// the new fingerprint (which forwarded writes carry to the leaders), and a
/// table another instance created a moment before, which meta reports as
/// existing without installing it here, becomes known. Without
/// `new_schema`, a missing table is `TableNotFound`.
pub async fn table_for_write(
    query: &QueryEngine,
    db: &str,
    table: &str,
    new_schema: Option<impl FnOnce() -> Result<TableSchema>>,
) -> Result<WriteTable> {
    let engine = query.engine();
    let created = match (columns_of(engine, db, table), new_schema) {
        (Ok((schema, arrow)), _) => {
            return Ok(WriteTable {
                schema,
                arrow,
                created: false,
            })
        }
        (Err(strata_engine::Error::TableNotFound { .. }), Some(build)) => {
            let created = engine
                .create_table(db, table, build()?, Default::default(), true)
                .await?;
            query.router().refresh_catalog().await?;
            created
        }
        (Err(e), _) => return Err(e.into()),
    };
    let (schema, arrow) = columns_of(engine, db, table)?;
    Ok(WriteTable {
        schema,
        arrow,
        created: created.is_some(),
    })
}

/// Adds to existing tables the columns a write brings (each protocol
/// decides which, by its rules; line protocol's `plan_columns`), then takes
/// the catalog's new fingerprint: the leaders the write is forwarded to
/// sync their catalogs to it before fitting the rows (a leader that still
/// misses a column refreshes its own then).
pub async fn add_columns(
    query: &QueryEngine,
    db: &str,
    additions: BTreeMap<String, Vec<ColumnSchema>>,
) -> Result<()> {
    if additions.is_empty() {
        return Ok(());
    }
    for (table, columns) in additions {
        let engine = query.engine();
        match engine
            .alter_table(
                db,
                &table,
                strata_engine::AlterTable::AddColumns(columns.clone()),
            )
            .await
        {
            Ok(()) => {}
            // Another instance changed the table meanwhile (say, added the
            // same columns for the same new field): take meta's catalog and
            // add what is still missing (a column added with another type
            // is refused by the write's own checks).
            Err(strata_engine::Error::CatalogChanged(_)) => {
                query.router().refresh_catalog().await?;
                let have = engine.entry(db, &table)?.schema;
                let missing: Vec<ColumnSchema> = columns
                    .into_iter()
                    .filter(|c| !have.columns.iter().any(|h| h.name == c.name))
                    .collect();
                if !missing.is_empty() {
                    engine
                        .alter_table(db, &table, strata_engine::AlterTable::AddColumns(missing))
                        .await?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Err(e) = query.router().refresh_catalog().await {
        tracing::debug!(error = %e, "refreshing the catalog after adding columns failed");
    }
    Ok(())
}
