//! Compaction: merging small SSTs of a segment into fewer, larger ones,
//! deduplicating (`OVERWRITE`) and dropping expired rows on the way.
//!
//! The [`Compactor`] runs at most `max_concurrent_compactions` tasks at once
//! and gives them a shared memory budget (`compaction_memory_budget`). A
//! task's need is estimated before it starts ([`picker::estimate_memory`]);
//! a task that would not fit is split into smaller merges, and one that
//! cannot be split fails with a retryable [`Error::CompactionOverBudget`]
//! instead of exhausting memory (HoraeDB #476, #489). The merge itself runs
//! under a DataFusion memory pool of the same size.
//!
//! The engine owns the compactor and one loop ([`run_signals`]). A shard
//! does not call the compactor: after a flush it sends the table on its
//! [`CompactionSignal`], which never waits and keeps no dropped table alive,
//! and the loop schedules the check.

pub mod picker;
mod task;

use std::sync::{atomic::Ordering, Arc, Weak};

use tokio::sync::{mpsc, Semaphore};

pub use self::{picker::CompactionTask, task::TaskOutcome};
use crate::{context::EngineConfig, metrics, table::Table, Error, Result};

/// What compacting one table did.
#[derive(Debug, Default, Clone)]
pub struct CompactionReport {
    pub tasks: usize,
    pub input_files: usize,
    pub output_files: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// Runs compactions within the configured concurrency and memory budget.
#[derive(Debug)]
pub struct Compactor {
    slots: Semaphore,
    /// The memory budget, in KiB permits.
    budget: Semaphore,
    budget_bytes: u64,
}

const KIB: u64 = 1024;

impl Compactor {
    pub fn new(cfg: &EngineConfig) -> Self {
        let budget_bytes = cfg.compaction_memory_budget.max(KIB);
        Self {
            slots: Semaphore::new(cfg.max_concurrent_compactions.max(1)),
            budget: Semaphore::new((budget_bytes / KIB) as usize),
            budget_bytes,
        }
    }

    /// Compacts `table` now: every segment that the picker selects
    /// (`manual`: every segment with more than one SST). Serialised with the
    /// table's other maintenance.
    pub async fn compact(&self, table: &Arc<Table>, manual: bool) -> Result<CompactionReport> {
        if manual {
            // Whole expired files are dropped rather than merged.
            table.expire().await?;
        }
        let _maintenance = table.maintenance.lock().await;
        let mut report = CompactionReport::default();
        // A manual compaction repeats until every segment is one file (or
        // stops shrinking); chunks of `max_files` may need several rounds.
        for _ in 0..if manual { 8 } else { 1 } {
            let before = table.version().ssts.len();
            let round = self.compact_round(table, manual).await?;
            let progressed = round.tasks > 0 && table.version().ssts.len() < before;
            report.tasks += round.tasks;
            report.input_files += round.input_files;
            report.output_files += round.output_files;
            report.input_bytes += round.input_bytes;
            report.output_bytes += round.output_bytes;
            if !progressed {
                break;
            }
        }
        Ok(report)
    }

    async fn compact_round(&self, table: &Arc<Table>, manual: bool) -> Result<CompactionReport> {
        let cfg = &table.ctx.config;
        let mut report = CompactionReport::default();
        for task in picker::pick(&table.version(), cfg, manual) {
            let parts =
                picker::fit_budget(task.clone(), cfg, self.budget_bytes).map_err(|needed| {
                    Error::CompactionOverBudget {
                        table: table.name().to_string(),
                        needed: needed.max(picker::estimate_memory(&task, cfg)),
                        budget: self.budget_bytes,
                    }
                })?;
            for part in parts {
                if table.is_dropped() {
                    return Ok(report);
                }
                let need = picker::estimate_memory(&part, cfg).clamp(KIB, self.budget_bytes);
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| Error::ShuttingDown)?;
                let _memory = self
                    .budget
                    .acquire_many((need / KIB) as u32)
                    .await
                    .map_err(|_| Error::ShuttingDown)?;
                let outcome = task::run(table, &part, self.budget_bytes).await?;
                report.tasks += 1;
                report.input_files += outcome.inputs;
                report.input_bytes += outcome.input_bytes;
                report.output_files += outcome.outputs.len();
                report.output_bytes += outcome.outputs.iter().map(|o| o.size_bytes).sum::<u64>();
            }
        }
        Ok(report)
    }

    /// Starts a background compaction of `table` if one is due and none is
    /// running. Failures are logged and retried at the next check.
    pub fn schedule(self: &Arc<Self>, table: Arc<Table>) {
        if picker::pick(&table.version(), &table.ctx.config, false).is_empty() {
            return;
        }
        if table.compaction_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        metrics::COMPACTION_PENDING.inc();
        let compactor = self.clone();
        tokio::spawn(async move {
            let result = compactor.compact(&table, false).await;
            metrics::COMPACTION_PENDING.dec();
            table.compaction_scheduled.store(false, Ordering::Release);
            if let Err(e) = result {
                metrics::COMPACTION_FAILURES.inc();
                tracing::warn!(table = %table.name(), error = %e, "compaction failed; it will be retried");
            }
        });
    }
}

/// How a shard asks the engine for a compaction check after a flush.
#[derive(Debug, Clone)]
pub struct CompactionSignal(mpsc::UnboundedSender<Weak<Table>>);

impl CompactionSignal {
    /// A signal and the receiver the engine's loop drains.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Weak<Table>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Asks for a check of `table`. Dropped silently once the engine closed.
    pub fn send(&self, table: &Arc<Table>) {
        let _ = self.0.send(Arc::downgrade(table));
    }
}

/// The engine's compaction loop: schedules a check for every table a shard
/// signals, while it still exists. Ends when every signal is dropped or the
/// engine aborts it.
pub async fn run_signals(
    compactor: Arc<Compactor>,
    mut signals: mpsc::UnboundedReceiver<Weak<Table>>,
) {
    while let Some(table) = signals.recv().await {
        if let Some(table) = table.upgrade() {
            if !table.is_dropped() {
                compactor.schedule(table);
            }
        }
    }
}
