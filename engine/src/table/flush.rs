//! Flushing a frozen memtable to SSTs.
//!
//! Steps, each safe to crash after:
//! 1. sort the memtable's rows by primary key and, in `OVERWRITE` mode, keep
//!    the newest write of each key;
//! 2. split them by time segment and upload one SST per segment (a crash here
//!    leaves orphan files, which no manifest references);
//! 3. commit one manifest edit that adds the SSTs and advances the table's
//!    flushed WAL offset (the commit point: after it, replay skips these rows);
//! 4. publish a new table version without the memtable.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use arrow::{
    array::{AsArray, UInt32Array},
    compute::take_record_batch,
    datatypes::TimestampMillisecondType,
    record_batch::RecordBatch,
};
use object_store::ObjectStoreExt;
use strata_sst::{
    layout,
    writer::{write_sst, SstWriteOptions},
    SstId,
};

use super::Table;
use crate::{
    manifest::ManifestEdit, memtable::Memtable, metrics, options::UpdateMode, sort::sort_and_dedup,
    Error, Result,
};

/// Splits sorted rows by time segment, keeping the order within each.
pub(crate) fn split_by_segment(
    batch: &RecordBatch,
    ts_index: usize,
    segment_ms: i64,
) -> Result<Vec<(i64, RecordBatch)>> {
    let ts = batch
        .column(ts_index)
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| Error::Internal("timestamp column has the wrong type".into()))?;
    let segment_ms = segment_ms.max(1);
    let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, t) in ts.values().iter().enumerate() {
        let start = t.div_euclid(segment_ms) * segment_ms;
        groups.entry(start).or_default().push(i as u32);
    }
    if groups.len() == 1 {
        if let Some((start, _)) = groups.into_iter().next() {
            return Ok(vec![(start, batch.clone())]);
        }
        return Ok(Vec::new());
    }
    groups
        .into_iter()
        .map(|(start, idx)| {
            let taken = take_record_batch(batch, &UInt32Array::from(idx)).map_err(|source| {
                Error::Arrow {
                    op: "splitting rows by segment",
                    source: Box::new(source),
                }
            })?;
            Ok((start, taken))
        })
        .collect()
}

/// Drops rows older than `cutoff` (expired by TTL).
pub(crate) fn drop_expired(
    batch: &RecordBatch,
    ts_index: usize,
    cutoff: i64,
) -> Result<RecordBatch> {
    let ts = batch
        .column(ts_index)
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| Error::Internal("timestamp column has the wrong type".into()))?;
    let keep: arrow::array::BooleanArray = ts.values().iter().map(|t| Some(*t >= cutoff)).collect();
    arrow::compute::filter_record_batch(batch, &keep).map_err(|source| Error::Arrow {
        op: "dropping expired rows",
        source: Box::new(source),
    })
}

/// Flushes one frozen memtable of `table`.
pub(crate) async fn flush_memtable(table: &Table, memtable: &Arc<Memtable>) -> Result<()> {
    let started = Instant::now();
    // A replaced owner uploads nothing (and could commit nothing anyway).
    table.owner.check()?;
    let (Some(min_offset), Some(max_offset)) = (memtable.min_offset(), memtable.max_offset())
    else {
        let flushed = table.version().flushed_offset;
        table.install_flush(memtable, Vec::new(), flushed);
        return Ok(());
    };
    // Rows keep the schema they were written under; the current options
    // (segment duration, TTL) decide how they are laid out.
    let mem_meta = memtable.meta().clone();
    let current = table.meta();
    let schema = memtable.schema().clone();
    let key = mem_meta.schema().primary_key.clone();
    let seq = mem_meta.schema().seq_index();
    let dedup = current.options().update_mode == UpdateMode::Overwrite;
    let ts_index = mem_meta.schema().timestamp_index;
    let segment_ms = current.options().segment_duration.as_millis() as i64;
    let cutoff = crate::options::ttl_cutoff(current.options().ttl);
    let batches = memtable.snapshot();
    let segments = tokio::task::spawn_blocking(move || -> Result<Vec<(i64, RecordBatch)>> {
        let Some(sorted) = sort_and_dedup(&schema, &batches, &key, seq, dedup)? else {
            return Ok(Vec::new());
        };
        let sorted = match cutoff {
            Some(cutoff) => drop_expired(&sorted, ts_index, cutoff)?,
            None => sorted,
        };
        if sorted.num_rows() == 0 {
            return Ok(Vec::new());
        }
        split_by_segment(&sorted, ts_index, segment_ms)
    })
    .await
    .map_err(|e| Error::Internal(format!("flush sort task failed: {e}")))??;

    let entry = &mem_meta.entry;
    let cfg = &table.ctx.config;
    let current_row_groups = current
        .options()
        .num_rows_per_row_group
        .unwrap_or(cfg.sst_row_group_rows);
    let mut infos = Vec::with_capacity(segments.len());
    let mut guards = Vec::with_capacity(segments.len());
    let mut bytes = 0u64;
    let mut rows = 0u64;
    for (segment_start, batch) in segments {
        let id = SstId::random();
        guards.push(table.ctx.gc.begin_write(id));
        let path = layout::sst_path(&cfg.cluster, entry.home(), entry.id, id);
        let opts = SstWriteOptions {
            timestamp_column: entry.schema.timestamp_column().name.clone(),
            tag_columns: entry.schema.tag_names(),
            primary_key: entry.schema.primary_key_names(),
            schema_version: entry.schema.version,
            segment_start,
            level: 0,
            row_group_rows: current_row_groups,
            zstd_level: cfg.sst_zstd_level,
        };
        let info = write_sst(
            table.ctx.store.clone(),
            &path,
            id,
            memtable.schema().clone(),
            &[batch],
            &opts,
        )
        .await
        .map_err(|source| Error::Sst {
            op: "write",
            table: entry.id,
            source: Box::new(source),
        })?;
        bytes += info.size_bytes;
        rows += info.rows;
        infos.push(info);
    }

    let flushed_offset = max_offset + 1;
    crate::failpoint::pause("flush.before_commit").await;
    {
        let mut manifest = table.manifest.lock().await;
        if !table
            .version()
            .frozen
            .iter()
            .any(|m| Arc::ptr_eq(m, memtable))
        {
            // Another path (a re-read of the manifest after an unknown
            // outcome) found these rows flushed already.
            for info in &infos {
                let _ = table
                    .ctx
                    .store
                    .delete(&object_store::path::Path::from(info.path.as_str()))
                    .await;
            }
            return Ok(());
        }
        // Re-planned after a conflict only while these rows are not
        // recorded as flushed already (by an earlier attempt whose outcome
        // was unknown).
        let committed = manifest
            .commit(
                ManifestEdit {
                    add: infos.clone(),
                    flushed_offset: Some(flushed_offset),
                    ..Default::default()
                },
                |s| s.flushed_offset <= min_offset,
            )
            .await;
        match committed {
            Ok(_) => {}
            Err(Error::ManifestConflict { .. }) if !table.owner.is_fenced() => {
                // These SSTs are in no manifest: remove them, and take the
                // manifest's word for the rows (it records them as flushed).
                for info in &infos {
                    let _ = table
                        .ctx
                        .store
                        .delete(&object_store::path::Path::from(info.path.as_str()))
                        .await;
                }
                table.sync_with(manifest.state());
                return Ok(());
            }
            // Unknown: the SSTs may be referenced; leave them, and keep
            // them from the orphan scan until the manifest is re-read.
            Err(e) => {
                if matches!(e, Error::CommitUnknown { .. }) {
                    table.park_guards(std::mem::take(&mut guards));
                }
                return Err(e);
            }
        }
        table.install_flush(memtable, infos.clone(), flushed_offset);
        table.sync_with(manifest.state());
    }
    let files = infos.len();
    drop(guards);
    metrics::FLUSHES.inc();
    metrics::FLUSH_BYTES.inc_by(bytes);
    metrics::FLUSH_SECONDS.observe(started.elapsed().as_secs_f64());
    tracing::info!(
        table = %entry.name,
        table_id = %entry.id,
        rows,
        files,
        bytes,
        flushed_offset,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "flushed memtable"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use arrow::{
        array::TimestampMillisecondArray,
        datatypes::{DataType, Field, Schema, TimeUnit},
    };

    use super::*;

    #[test]
    fn rows_are_split_by_segment_in_order() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(TimestampMillisecondArray::from(vec![
                5, 15, 7, -3, 12,
            ]))],
        )
        .unwrap();
        let parts = split_by_segment(&batch, 0, 10).unwrap();
        let got: Vec<(i64, Vec<i64>)> = parts
            .iter()
            .map(|(s, b)| {
                (
                    *s,
                    b.column(0)
                        .as_primitive::<TimestampMillisecondType>()
                        .values()
                        .to_vec(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(-10, vec![-3]), (0, vec![5, 7]), (10, vec![15, 12])]
        );
    }
}
