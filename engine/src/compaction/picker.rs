//! Choosing what to compact: a time-window strategy.
//!
//! SSTs are grouped by segment (every SST lies inside one). Within a segment,
//! files below the target size are candidates; when there are at least
//! `min_files` of them, the smallest (up to `max_files`) are merged into one
//! sorted run. Files in different segments are never merged, so expiry can
//! always drop whole segments. A manual `COMPACT TABLE` merges every segment
//! with more than one file, whatever the sizes.

use std::{collections::BTreeMap, sync::Arc};

use crate::{context::EngineConfig, gc::SstHandle, table::TableVersion};

/// One merge of SSTs of one segment.
#[derive(Debug, Clone)]
pub struct CompactionTask {
    pub segment_start: i64,
    pub inputs: Vec<Arc<SstHandle>>,
}

impl CompactionTask {
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|s| s.info.size_bytes).sum()
    }

    pub fn input_rows(&self) -> u64 {
        self.inputs.iter().map(|s| s.info.rows).sum()
    }
}

/// The tasks worth running on `version` now.
pub fn pick(version: &TableVersion, cfg: &EngineConfig, manual: bool) -> Vec<CompactionTask> {
    let mut segments: BTreeMap<i64, Vec<Arc<SstHandle>>> = BTreeMap::new();
    for sst in version.ssts.iter() {
        segments
            .entry(sst.info.segment_start)
            .or_default()
            .push(sst.clone());
    }
    let max_files = cfg.compaction_max_files.max(2);
    let min_files = cfg.compaction_min_files.max(2);
    let mut tasks = Vec::new();
    for (segment_start, mut files) in segments {
        if manual {
            if files.len() < 2 {
                continue;
            }
            files.sort_by_key(|f| f.info.size_bytes);
            for chunk in files.chunks(max_files) {
                if chunk.len() >= 2 {
                    tasks.push(CompactionTask {
                        segment_start,
                        inputs: chunk.to_vec(),
                    });
                }
            }
            continue;
        }
        let mut small: Vec<_> = files
            .into_iter()
            .filter(|f| f.info.size_bytes < cfg.compaction_target_file_size)
            .collect();
        if small.len() < min_files {
            continue;
        }
        small.sort_by_key(|f| f.info.size_bytes);
        small.truncate(max_files);
        tasks.push(CompactionTask {
            segment_start,
            inputs: small,
        });
    }
    tasks
}

/// An estimate of the memory one compaction needs: for each input, one
/// decoded row group plus a batch in the merge, and the output's row group.
/// Decoded rows are assumed to be 8x their compressed size, the ratio seen
/// for time-series data under zstd.
pub fn estimate_memory(task: &CompactionTask, cfg: &EngineConfig) -> u64 {
    const DECODE_RATIO: u64 = 8;
    const BATCH_ROWS: u64 = 8192;
    /// Footer, page index and bloom filters: not row data.
    const FILE_OVERHEAD: u64 = 16 * 1024;
    /// Reader and decoder buffers per open file.
    const PER_FILE: u64 = 256 * 1024;
    let group_rows = cfg.sst_row_group_rows as u64;
    let mut total = 0u64;
    let mut widest = 0u64;
    for sst in &task.inputs {
        let rows = sst.info.rows.max(1);
        let row_bytes =
            (sst.info.size_bytes.saturating_sub(FILE_OVERHEAD) / rows).max(8) * DECODE_RATIO;
        widest = widest.max(row_bytes);
        total += PER_FILE + row_bytes * rows.min(group_rows + BATCH_ROWS);
    }
    total + widest * group_rows
}

/// Splits `task` into tasks that fit `budget`. Returns the tasks and
/// whether some inputs had to be left out because even two files exceed it.
pub fn fit_budget(
    task: CompactionTask,
    cfg: &EngineConfig,
    budget: u64,
) -> Result<Vec<CompactionTask>, u64> {
    if estimate_memory(&task, cfg) <= budget {
        return Ok(vec![task]);
    }
    let mut out = Vec::new();
    let mut current: Vec<Arc<SstHandle>> = Vec::new();
    for sst in task.inputs {
        current.push(sst);
        let probe = CompactionTask {
            segment_start: task.segment_start,
            inputs: current.clone(),
        };
        if estimate_memory(&probe, cfg) > budget {
            let last = current.pop();
            if current.len() >= 2 {
                out.push(CompactionTask {
                    segment_start: task.segment_start,
                    inputs: std::mem::take(&mut current),
                });
            } else {
                current.clear();
            }
            if let Some(last) = last {
                current.push(last);
            }
        }
    }
    if current.len() >= 2 {
        out.push(CompactionTask {
            segment_start: task.segment_start,
            inputs: current,
        });
    }
    if out.is_empty() {
        // Not even two files fit: report what the smallest pair needs.
        return Err(budget + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use strata_sst::{SstId, SstInfo, TimeRange};

    use super::*;
    use crate::{memtable::Memtable, schema::ColumnType, table_meta::TableMeta};

    fn version(files: &[(i64, u64)]) -> TableVersion {
        let meta = TableMeta::for_test(&[("ts", ColumnType::Timestamp)]);
        let ssts = files
            .iter()
            .enumerate()
            .map(|(i, (seg, size))| {
                SstHandle::new(SstInfo {
                    id: SstId(i as u64),
                    path: format!("{i}.parquet"),
                    time_range: TimeRange::new(*seg, seg + 1),
                    segment_start: *seg,
                    max_seq: 0,
                    rows: 1000,
                    size_bytes: *size,
                    schema_version: 1,
                    level: 0,
                    column_stats: Default::default(),
                })
            })
            .collect();
        TableVersion {
            active: Arc::new(Memtable::new(meta.clone())),
            meta,
            frozen: vec![],
            ssts: Arc::new(ssts),
            flushed_offset: 0,
        }
    }

    #[test]
    fn picks_segments_with_enough_small_files() {
        let cfg = EngineConfig {
            compaction_min_files: 3,
            compaction_max_files: 4,
            compaction_target_file_size: 1000,
            ..Default::default()
        };
        // Segment 0: 5 small files; segment 10: 2 small; segment 20: 3 but one big.
        let v = version(&[
            (0, 10),
            (0, 20),
            (0, 30),
            (0, 40),
            (0, 50),
            (10, 1),
            (10, 2),
            (20, 5),
            (20, 6),
            (20, 5000),
        ]);
        let tasks = pick(&v, &cfg, false);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].segment_start, 0);
        let sizes: Vec<u64> = tasks[0].inputs.iter().map(|s| s.info.size_bytes).collect();
        assert_eq!(sizes, vec![10, 20, 30, 40], "the smallest, up to max_files");
        let manual = pick(&v, &cfg, true);
        let segs: Vec<i64> = manual.iter().map(|t| t.segment_start).collect();
        assert_eq!(
            segs,
            vec![0, 10, 20],
            "manual compaction merges every segment"
        );
        assert_eq!(manual[0].inputs.len(), 4, "in chunks of at most max_files");
    }

    #[test]
    fn big_tasks_are_split_to_fit_the_budget() {
        let cfg = EngineConfig::default();
        let v = version(&[(0, 1 << 20), (0, 1 << 20), (0, 1 << 20), (0, 1 << 20)]);
        let task = CompactionTask {
            segment_start: 0,
            inputs: v.ssts.to_vec(),
        };
        let one = estimate_memory(
            &CompactionTask {
                segment_start: 0,
                inputs: v.ssts[..2].to_vec(),
            },
            &cfg,
        );
        let parts = fit_budget(task.clone(), &cfg, one).unwrap();
        assert!(parts.len() >= 2 && parts.iter().all(|p| p.inputs.len() >= 2));
        assert!(fit_budget(task, &cfg, 10).is_err());
    }
}
