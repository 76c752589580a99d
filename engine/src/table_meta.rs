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
}
