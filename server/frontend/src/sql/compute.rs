//! Compute instances (`strata server --role compute`): they lead and follow
//! no shard, and read a table by themselves: its SSTs from the object store
//! (through the disk cache), as its manifest lists them, and from its
//! leader only the rows that manifest does not hold yet.
//!
//! The cut is consistent: the manifest read here has a flushed offset `F`
//! (its SSTs hold every row of sequence below `F`); the leader sends its
//! rows of sequence `F` and above still in memory, and refuses
//! (`FlushedBeyond`) when it has flushed past `F`, in which case the
//! manifest is read again. Every row the leader acknowledged is in one of
//! the two, once; in `OVERWRITE` mode the newest version of a key wins in
//! the same merge as on the leader. The leader checks it still owns the
//! shard before and after taking its rows, so a deposed leader's rows are
//! never used.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use arrow::record_batch::RecordBatch;
use datafusion::{
    catalog::{Session, TableProvider},
    common::{DataFusionError, Result as DfResult},
    logical_expr::Expr,
    physical_plan::ExecutionPlan,
};
use datafusion_proto::bytes::Serializeable;
use futures::TryStreamExt;
use strata_engine::{
    options::UpdateMode,
    provider::{on_key_only, StrataTableProvider},
    Engine,
};
use strata_proto::storage::{ExecutePlanRequest, RequestContext};

use super::remote::{moved, target, RemoteTable, MOVE_POLL, MOVE_WAIT};
use crate::{error::RemoteError, route::Target};

/// How often a scan reads the manifest again because the leader flushed
/// past it, before it gives up (retryable).
const MAX_MANIFEST_READS: usize = 5;

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Whether the leader is of a version that cannot send its unflushed rows:
/// it took the request for an ordinary plan part, whose columns are the
/// table's, without `__seq`.
fn older_leader(e: &strata_client::Error) -> bool {
    e.to_string()
        .contains(&format!("no column {} here", strata_sst::SEQ_COLUMN))
}

/// Whether the leader answered that it flushed past the manifest read here.
fn flushed_beyond(e: &strata_client::Error) -> bool {
    e.to_string().contains("FlushedBeyond")
}

impl RemoteTable {
    /// The scan of a compute instance: `None` when the leader cannot send
    /// its unflushed rows (an older version), to read the table from it as
    /// any instance does.
    pub(crate) async fn scan_storage(
        &self,
        engine: &Arc<Engine>,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let entry = self.entry();
        let router = self.router();
        let deadline = Instant::now() + MOVE_WAIT;
        let mut fresh = false;
        let mut reads = 0;
        loop {
            let table = engine.reader(entry, fresh).await.map_err(external)?;
            let version = table.version();
            let meta = version.meta.clone();
            let schema = meta.schema();
            let storage = meta.storage_schema.clone();
            let user = self.schema();
            // The storage columns asked for: those projected, those the
            // filters read, and what the merge needs (key, time,
            // `__seq`, and every column rows may not lack).
            let mut names: BTreeSet<String> = BTreeSet::new();
            match projection {
                Some(p) => names.extend(p.iter().map(|&i| user.field(i).name().clone())),
                None => names.extend(user.fields().iter().map(|f| f.name().clone())),
            }
            for f in filters {
                names.extend(f.column_refs().into_iter().map(|c| c.name.clone()));
            }
            for (i, field) in storage.fields().iter().enumerate() {
                if !field.is_nullable()
                    || schema.is_primary_key(i)
                    || i == schema.timestamp_index
                    || i == schema.seq_index()
                {
                    names.insert(field.name().clone());
                }
            }
            let columns: Vec<String> = storage
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| names.contains(n))
                .collect();
            // In OVERWRITE mode only filters on the key may go below the
            // merge (a filter on a field could hide a row's newest version
            // and let an older one through); the scan applies them all.
            let overwrite = meta.options().update_mode == UpdateMode::Overwrite;
            let pushed: Vec<Vec<u8>> = filters
                .iter()
                .filter(|f| !overwrite || on_key_only(schema, f))
                .filter_map(|f| f.to_bytes().ok().map(|b| b.to_vec()))
                .collect();
            let from = version.flushed_offset;
            let rows: Vec<RecordBatch> = match target(router.as_ref(), entry, deadline).await? {
                Target::Local(t) => {
                    return StrataTableProvider::new(t)
                        .scan(state, projection, filters, limit)
                        .await
                        .map(Some)
                }
                Target::Remote { endpoint, .. } => {
                    let request = ExecutePlanRequest {
                        context: Some(RequestContext {
                            database: entry.database.clone(),
                        }),
                        table: entry.name.clone(),
                        columns,
                        filters: pushed,
                        limit: None,
                        plan: Vec::new(),
                        catalog_fingerprint: router.fingerprint(),
                        unflushed_from: Some(from),
                    };
                    let sent = match router.peer(&endpoint).await {
                        Ok(peer) => match peer.execute_plan(request).await {
                            Ok(stream) => stream.try_collect().await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(rows) => rows,
                        // A leader of an older version: it runs plan parts
                        // but knows nothing of `unflushed_from` (the field
                        // is dropped on its side, and it looks for `__seq`
                        // among the table's columns), or not even those.
                        Err(e) if e.is_unimplemented() || older_leader(&e) => {
                            tracing::debug!(table = %entry.name,
                                "the leader cannot send its unflushed rows; reading the table from it");
                            return Ok(None);
                        }
                        Err(e) if flushed_beyond(&e) => {
                            if reads >= MAX_MANIFEST_READS {
                                return Err(external(RemoteError(e)));
                            }
                            reads += 1;
                            fresh = true;
                            continue;
                        }
                        Err(e) if moved(&e) && Instant::now() < deadline => {
                            tracing::debug!(table = %entry.name, error = %e, "shard moved; retrying");
                            tokio::time::sleep(MOVE_POLL).await;
                            continue;
                        }
                        Err(e) => return Err(external(RemoteError(e))),
                    }
                }
            };
            return StrataTableProvider::over_rows(table, self.schema(), version, rows)
                .scan(state, projection, filters, limit)
                .await
                .map(Some);
        }
    }
}
