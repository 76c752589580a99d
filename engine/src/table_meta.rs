//! A table's definition at one schema version: a leaf that the memtable,
//! the last-value index, the planner and the table itself share, without
//! depending on each other.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::{catalog::TableEntry, options::TableOptions, schema::TableSchema};

/// A table's definition at one schema version: the catalog entry and the
/// Arrow schemas derived from it.
#[derive(Debug)]
pub struct TableMeta {
    pub entry: TableEntry,
    /// The schema users see.
    pub arrow_schema: SchemaRef,
    /// The schema of memtables and SSTs: user columns plus `__seq`.
    pub storage_schema: SchemaRef,
}

impl TableMeta {
    pub fn new(entry: TableEntry) -> Arc<Self> {
        Arc::new(Self {
            arrow_schema: entry.schema.arrow_schema(),
            storage_schema: entry.schema.storage_schema(),
            entry,
        })
    }

    pub fn schema(&self) -> &TableSchema {
        &self.entry.schema
    }

    pub fn options(&self) -> &TableOptions {
        &self.entry.options
    }

    /// For unit tests: table 1, `public.t`, on shard 0, with non-null
    /// field columns of these names and types and timestamp key `ts`.
    #[cfg(test)]
    pub(crate) fn for_test(columns: &[(&str, crate::schema::ColumnType)]) -> Arc<Self> {
        let columns = columns
            .iter()
            .map(|(name, column_type)| crate::schema::ColumnSchema {
                name: (*name).into(),
                column_type: *column_type,
                is_tag: false,
                nullable: false,
                comment: String::new(),
            })
            .collect();
        #[allow(clippy::unwrap_used)]
        let schema = TableSchema::try_new(columns, "ts", &[]).unwrap();
        Self::new(TableEntry {
            id: strata_sst::TableId(1),
            database: "public".into(),
            name: "t".into(),
            schema,
            options: TableOptions::default(),
            shard: strata_sst::ShardId(0),
            created_at_ms: 0,
            partition: None,
            partition_of: None,
            revision: 0,
            home: None,
        })
    }
}
