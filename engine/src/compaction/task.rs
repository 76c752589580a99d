//! Running one compaction: a streaming merge of the input SSTs through the
//! same plan queries use (sort-preserving merge, deduplication in OVERWRITE
//! mode), dropping expired rows, into new SSTs that roll at the target size.
//! One manifest edit then swaps inputs for outputs; the inputs are retired
//! to the garbage collector, which deletes them once no query uses them.

use std::{sync::Arc, time::Instant};

use datafusion::{
    common::config::TableParquetOptions,
    common::ScalarValue,
    execution::{runtime_env::RuntimeEnvBuilder, TaskContext},
    logical_expr::Operator,
    physical_expr::expressions::{BinaryExpr, Column, Literal},
    physical_plan::{execute_stream, filter::FilterExec, ExecutionPlan},
    prelude::SessionConfig,
};
use futures::StreamExt;
use object_store::{path::Path, ObjectStoreExt};
use strata_sst::{
    layout,
    writer::{SstWriteOptions, SstWriter},
    SstId, SstInfo,
};

use super::picker::CompactionTask;
use crate::{
    manifest::ManifestEdit,
    metrics,
    options::ttl_cutoff,
    options::UpdateMode,
    provider::{plan, plan::SourceSpec},
    table::Table,
    Error, Result,
};

/// What one compaction did.
#[derive(Debug, Default, Clone)]
pub struct TaskOutcome {
    pub inputs: usize,
    pub input_bytes: u64,
    pub input_rows: u64,
    pub outputs: Vec<SstInfo>,
}

fn df_err(e: datafusion::error::DataFusionError) -> Error {
    if let datafusion::error::DataFusionError::ResourcesExhausted(m) = e.find_root() {
        return Error::Internal(format!("compaction ran out of its memory budget: {m}"));
    }
    Error::Internal(format!("compaction failed: {e}"))
}

async fn merge_and_write(
    table: &Table,
    task: &CompactionTask,
    memory_limit: u64,
    guards: &mut Vec<crate::gc::WriteGuard>,
) -> Result<Vec<SstInfo>> {
    let meta = table.meta();
    let schema = meta.schema();
    let cfg = &table.ctx.config;
    let overwrite = meta.options().update_mode == UpdateMode::Overwrite;
    let spec = SourceSpec {
        meta: meta.clone(),
        read: (0..meta.storage_schema.fields().len()).collect(),
        predicate: None,
        merge: true,
        dedup: overwrite,
        target_partitions: 1,
        limit: None,
    };
    let source = plan::sst_source(
        &table.ctx,
        &spec,
        &task.inputs,
        TableParquetOptions::default(),
        table.ctx.reader_factory.clone(),
    )
    .map_err(df_err)?
    .ok_or_else(|| Error::Internal("compaction without inputs".into()))?;
    let mut merged: Arc<dyn ExecutionPlan> = plan::combine(&spec, vec![source]).map_err(df_err)?;
    if let Some(cutoff) = ttl_cutoff(meta.options().ttl) {
        let ts = schema.timestamp_index;
        let expr = Arc::new(BinaryExpr::new(
            Arc::new(Column::new(&schema.timestamp_column().name, ts)),
            Operator::GtEq,
            Arc::new(Literal::new(ScalarValue::TimestampMillisecond(
                Some(cutoff),
                None,
            ))),
        ));
        merged = Arc::new(FilterExec::try_new(expr, merged).map_err(df_err)?);
    }

    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit as usize, 1.0)
        .build_arc()
        .map_err(df_err)?;
    runtime.register_object_store(table.ctx.store_url.as_ref(), table.ctx.store.clone());
    let task_ctx = Arc::new(
        TaskContext::default()
            .with_session_config(SessionConfig::new().with_batch_size(8192))
            .with_runtime(runtime),
    );
    let mut stream = execute_stream(merged, task_ctx).map_err(df_err)?;

    let entry = &meta.entry;
    let current_row_groups = meta
        .options()
        .num_rows_per_row_group
        .unwrap_or(cfg.sst_row_group_rows);
    let level = task.inputs.iter().map(|s| s.info.level).max().unwrap_or(0) + 1;
    let opts = SstWriteOptions {
        timestamp_column: schema.timestamp_column().name.clone(),
        tag_columns: schema.tag_names(),
        primary_key: schema.primary_key_names(),
        schema_version: schema.version,
        segment_start: task.segment_start,
        level,
        row_group_rows: current_row_groups,
        zstd_level: cfg.sst_zstd_level,
    };
    let mut outputs: Vec<SstInfo> = Vec::new();
    let mut current: Option<SstWriter> = None;
    let result: Result<()> = async {
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(df_err)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let writer = match current.as_mut() {
                Some(w) => w,
                None => {
                    let id = SstId::random();
                    guards.push(table.ctx.gc.begin_write(id));
                    let path = layout::sst_path(&cfg.cluster, entry.home(), entry.id, id);
                    current.insert(
                        SstWriter::new(
                            table.ctx.store.clone(),
                            path,
                            id,
                            meta.storage_schema.clone(),
                            opts.clone(),
                        )
                        .map_err(|e| sst_err(entry.id, e))?,
                    )
                }
            };
            writer
                .write(&batch)
                .await
                .map_err(|e| sst_err(entry.id, e))?;
            if writer.estimated_size() >= cfg.compaction_target_file_size {
                if let Some(done) = current.take() {
                    outputs.push(done.finish().await.map_err(|e| sst_err(entry.id, e))?);
                }
            }
        }
        if let Some(done) = current.take() {
            outputs.push(done.finish().await.map_err(|e| sst_err(entry.id, e))?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Outputs written so far are in no manifest: remove them now rather
        // than leave them to the orphan scan.
        delete_outputs(table, &outputs).await;
        return Err(e);
    }
    Ok(outputs)
}

fn sst_err(table: strata_sst::TableId, source: strata_sst::Error) -> Error {
    Error::Sst {
        op: "compaction write",
        table,
        source: Box::new(source),
    }
}

async fn delete_outputs(table: &Table, outputs: &[SstInfo]) {
    for o in outputs {
        let _ = table.ctx.store.delete(&Path::from(o.path.as_str())).await;
    }
}

/// Runs `task` on `table` within `memory_limit` bytes.
pub(crate) async fn run(
    table: &Table,
    task: &CompactionTask,
    memory_limit: u64,
) -> Result<TaskOutcome> {
    let started = Instant::now();
    let mut guards = Vec::new();
    let outputs = merge_and_write(table, task, memory_limit, &mut guards).await?;
    let removed: Vec<SstId> = task.inputs.iter().map(|s| s.info.id).collect();
    crate::failpoint::pause("compaction.before_commit").await;
    {
        let mut manifest = table.manifest.lock().await;
        let committed = manifest
            .commit(
                ManifestEdit {
                    add: outputs.clone(),
                    remove: removed.clone(),
                    ..Default::default()
                },
                // Re-planned after a conflict only while every input is
                // still in the table.
                |s| removed.iter().all(|id| s.ssts.contains_key(id)),
            )
            .await;
        match committed {
            Ok(_) => {
                table.install_sst_change(&removed, outputs.clone());
                table.sync_with(manifest.state());
            }
            Err(e @ Error::ManifestConflict { .. }) if !table.owner.is_fenced() => {
                // Known not committed: the outputs are in no manifest.
                delete_outputs(table, &outputs).await;
                table.sync_with(manifest.state());
                return Err(e);
            }
            Err(e) => {
                table.note_moved(&e);
                // Unknown, fenced, or the store failed: the outputs may be
                // live (or a newer owner's state may list them). Delete
                // nothing; keep them from the orphan scan until the
                // manifest is re-read, which settles it.
                if matches!(e, Error::CommitUnknown { .. }) {
                    table.park_guards(std::mem::take(&mut guards));
                }
                return Err(e);
            }
        }
    }
    drop(guards);
    let outcome = TaskOutcome {
        inputs: task.inputs.len(),
        input_bytes: task.input_bytes(),
        input_rows: task.input_rows(),
        outputs,
    };
    let out_bytes: u64 = outcome.outputs.iter().map(|o| o.size_bytes).sum();
    let out_rows: u64 = outcome.outputs.iter().map(|o| o.rows).sum();
    metrics::COMPACTIONS.inc();
    metrics::COMPACTION_INPUT_BYTES.inc_by(outcome.input_bytes);
    metrics::COMPACTION_OUTPUT_BYTES.inc_by(out_bytes);
    metrics::COMPACTION_SECONDS.observe(started.elapsed().as_secs_f64());
    tracing::info!(
        table = %table.name(),
        segment = task.segment_start,
        inputs = outcome.inputs,
        input_rows = outcome.input_rows,
        input_bytes = outcome.input_bytes,
        outputs = outcome.outputs.len(),
        output_rows = out_rows,
        output_bytes = out_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compacted"
    );
    Ok(outcome)
}
