//! What a table has been asked to do on this instance: rows and bytes
//! written, scans and rows scanned. Counters only (two relaxed atomic adds
//! per write or scan); the heartbeat turns a shard's sum into rates, which
//! meta shows and balances by.

use std::sync::atomic::{AtomicU64, Ordering};

/// A table's counters since it was opened on this instance.
#[derive(Debug, Default)]
pub struct TableLoad {
    rows_written: AtomicU64,
    bytes_written: AtomicU64,
    scans: AtomicU64,
    rows_scanned: AtomicU64,
}

impl TableLoad {
    /// One acknowledged write: its rows and its WAL payload's bytes.
    pub fn wrote(&self, rows: usize, bytes: usize) {
        self.rows_written.fetch_add(rows as u64, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One scan started (a query, or a remote part of one, read the table).
    pub fn scanned(&self) {
        self.scans.fetch_add(1, Ordering::Relaxed);
    }

    /// Rows a scan produced.
    pub fn rows_scanned(&self, rows: usize) {
        self.rows_scanned.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn counters(&self) -> LoadCounters {
        LoadCounters {
            rows_written: self.rows_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            scans: self.scans.load(Ordering::Relaxed),
            rows_scanned: self.rows_scanned.load(Ordering::Relaxed),
        }
    }
}

/// Cumulative counters of one table or the sum over a shard's tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadCounters {
    pub rows_written: u64,
    pub bytes_written: u64,
    pub scans: u64,
    pub rows_scanned: u64,
}

impl LoadCounters {
    pub fn add(&mut self, other: LoadCounters) {
        self.rows_written += other.rows_written;
        self.bytes_written += other.bytes_written;
        self.scans += other.scans;
        self.rows_scanned += other.rows_scanned;
    }

    /// What happened between `earlier` and these counters (zero where a
    /// counter went back: a table dropped or reopened meanwhile).
    pub fn since(&self, earlier: &LoadCounters) -> LoadCounters {
        LoadCounters {
            rows_written: self.rows_written.saturating_sub(earlier.rows_written),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            scans: self.scans.saturating_sub(earlier.scans),
            rows_scanned: self.rows_scanned.saturating_sub(earlier.rows_scanned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_differences_never_go_negative() {
        let a = TableLoad::default();
        a.wrote(10, 100);
        a.wrote(5, 40);
        a.scanned();
        a.rows_scanned(7);
        let c = a.counters();
        assert_eq!(
            c,
            LoadCounters {
                rows_written: 15,
                bytes_written: 140,
                scans: 1,
                rows_scanned: 7
            }
        );
        let mut sum = c;
        sum.add(c);
        assert_eq!(sum.rows_written, 30);
        assert_eq!(sum.since(&c), c);
        assert_eq!(c.since(&sum), LoadCounters::default());
    }
}
