//! Epoch fencing for replay.
//!
//! A new leader writes with a higher epoch than the leader it replaced. A
//! stale leader may still manage to append a few records after the new
//! leader's first record. Replay must not apply them as current: once a
//! record of epoch `e` has been seen, records of any epoch below `e` are
//! dropped.

use crate::{Epoch, WalEntry};

/// Filters a replayed stream of entries, dropping fenced ones.
#[derive(Debug, Default, Clone)]
pub struct EpochFence {
    highest: Epoch,
    dropped: u64,
}

impl EpochFence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns true when `entry` is current and should be applied.
    pub fn admit(&mut self, entry: &WalEntry) -> bool {
        if entry.epoch < self.highest {
            self.dropped += 1;
            return false;
        }
        self.highest = entry.epoch;
        true
    }

    /// The highest epoch seen so far.
    pub fn highest(&self) -> Epoch {
        self.highest
    }

    /// How many entries were dropped as fenced.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
