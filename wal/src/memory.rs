//! An in-memory WAL for unit tests. It is "durable" for as long as the value
//! (and its clones) live; [`MemoryWal::reopen`] simulates a process restart.

use std::{collections::VecDeque, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::{AppendResult, Epoch, Result, Wal, WalEntry, WalOffset};

#[derive(Debug, Default)]
struct State {
    entries: VecDeque<WalEntry>,
    next: u64,
    low: u64,
}

/// An in-memory WAL region.
#[derive(Debug, Default, Clone)]
pub struct MemoryWal {
    state: Arc<Mutex<State>>,
}

impl MemoryWal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new handle on the same records, as a process restart would see them.
    pub fn reopen(&self) -> Self {
        self.clone()
    }
}

#[async_trait]
impl Wal for MemoryWal {
    async fn append(&self, epoch: Epoch, payloads: Vec<Bytes>) -> Result<AppendResult> {
        let mut state = self.state.lock();
        let mut offsets = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let offset = WalOffset(state.next);
            offsets.push(offset);
            state.entries.push_back(WalEntry {
                offset,
                epoch,
                payload,
            });
            state.next += 1;
        }
        Ok(AppendResult { offsets })
    }

    async fn read(&self, from: WalOffset, max_bytes: usize) -> Result<Vec<WalEntry>> {
        let state = self.state.lock();
        let from = from.0.max(state.low);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in state.entries.iter().filter(|e| e.offset.0 >= from) {
            if !out.is_empty() && bytes + entry.payload.len() > max_bytes {
                break;
            }
            bytes += entry.payload.len();
            out.push(entry.clone());
        }
        Ok(out)
    }

    async fn truncate(&self, below: WalOffset) -> Result<()> {
        let mut state = self.state.lock();
        if below.0 <= state.low {
            return Ok(());
        }
        state.low = below.0.min(state.next);
        let low = state.low;
        while state.entries.front().is_some_and(|e| e.offset.0 < low) {
            state.entries.pop_front();
        }
        Ok(())
    }

    fn next_offset(&self) -> WalOffset {
        WalOffset(self.state.lock().next)
    }

    fn low_watermark(&self) -> WalOffset {
        WalOffset(self.state.lock().low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, WalFactory};

    struct Factory(MemoryWal);

    #[async_trait]
    impl WalFactory for Factory {
        async fn open(&self) -> Arc<dyn Wal> {
            Arc::new(self.0.reopen())
        }
    }

    #[tokio::test]
    async fn memory_wal_passes_conformance_suite() {
        conformance::run_all(&Factory(MemoryWal::new())).await;
    }
}
