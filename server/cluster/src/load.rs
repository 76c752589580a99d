//! The load an instance reports in each heartbeat: per shard it leads,
//! rates over the interval since the previous heartbeat (from the
//! engine's cumulative counters, [`strata_engine::shard::Shard::load`]),
//! and for the process its CPU use and resident memory, read from
//! `/proc/self` (zero where there is no `/proc`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use strata_engine::{shard::ShardLoad, table::LoadCounters};

/// The most tables whose write rates one shard's report carries.
pub(crate) const MAX_TABLE_RATES: usize = strata_meta::model::MAX_TABLE_RATES;

/// A shard's load per second over one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rates {
    pub rows_written: f64,
    pub bytes_written: f64,
    pub scans: f64,
    pub rows_scanned: f64,
    /// Rows written per second to each table written in the interval.
    pub tables: Vec<(u64, f64)>,
}

impl Rates {
    fn over(delta: LoadCounters, seconds: f64) -> Self {
        if seconds <= 0.0 {
            return Self::default();
        }
        Self {
            rows_written: delta.rows_written as f64 / seconds,
            bytes_written: delta.bytes_written as f64 / seconds,
            scans: delta.scans as f64 / seconds,
            rows_scanned: delta.rows_scanned as f64 / seconds,
            tables: Vec::new(),
        }
    }
}

/// The previous heartbeat's counters.
#[derive(Debug, Default)]
pub(crate) struct LoadTracker {
    last: parking_lot::Mutex<Option<Last>>,
}

#[derive(Debug)]
struct Last {
    at: Instant,
    cpu: Option<Duration>,
    shards: HashMap<u64, LoadCounters>,
    /// Rows written to each table (since it was opened).
    tables: HashMap<u64, u64>,
}

impl LoadTracker {
    /// Each shard's rates and the process's CPU use (cores) since the
    /// previous call, all zero on the first, and the shards of the previous
    /// call that are gone. A shard opened since then counts from its
    /// opening (its counters start at zero).
    pub(crate) fn sample(
        &self,
        shards: &[(u64, ShardLoad)],
    ) -> (HashMap<u64, Rates>, f64, Vec<u64>) {
        self.sample_at(Instant::now(), process_cpu(), shards)
    }

    fn sample_at(
        &self,
        now: Instant,
        cpu: Option<Duration>,
        shards: &[(u64, ShardLoad)],
    ) -> (HashMap<u64, Rates>, f64, Vec<u64>) {
        let mut last = self.last.lock();
        let mut rates = HashMap::new();
        let mut cores = 0.0;
        let mut closed: Vec<u64> = last
            .as_ref()
            .map(|prev| {
                prev.shards
                    .keys()
                    .filter(|id| !shards.iter().any(|(s, _)| s == *id))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        closed.sort_unstable();
        if let Some(prev) = last.as_ref() {
            let seconds = now.duration_since(prev.at).as_secs_f64();
            for (id, load) in shards {
                let before = prev.shards.get(id).copied().unwrap_or_default();
                let mut r = Rates::over(load.counters.since(&before), seconds);
                if seconds > 0.0 {
                    for (table, rows) in &load.tables {
                        let before = prev.tables.get(&table.0).copied().unwrap_or(0);
                        let delta = rows.saturating_sub(before);
                        if delta > 0 {
                            r.tables.push((table.0, delta as f64 / seconds));
                        }
                    }
                    // The busiest only: enough to divide a shard by, and a
                    // heartbeat (and meta's node record) stays small.
                    r.tables
                        .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    r.tables.truncate(MAX_TABLE_RATES);
                }
                rates.insert(*id, r);
            }
            if let (Some(now_cpu), Some(then)) = (cpu, prev.cpu) {
                if seconds > 0.0 {
                    cores = now_cpu.saturating_sub(then).as_secs_f64() / seconds;
                }
            }
        } else {
            for (id, _) in shards {
                rates.insert(*id, Rates::default());
            }
        }
        *last = Some(Last {
            at: now,
            cpu,
            shards: shards.iter().map(|(id, l)| (*id, l.counters)).collect(),
            tables: shards
                .iter()
                .flat_map(|(_, l)| l.tables.iter().map(|(t, rows)| (t.0, *rows)))
                .collect(),
        });
        (rates, cores, closed)
    }
}

/// CPU time (user + system) the process has used: fields 14 and 15 of
/// `/proc/self/stat`, in the kernel's fixed USER_HZ of 100 per second.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&stat)
}

fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident memory: `VmRSS` of `/proc/self/status`.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_status_rss(&s))
        .unwrap_or(0)
}

fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A shard whose one table (7) wrote `rows`.
    fn load(rows: u64, scans: u64) -> ShardLoad {
        ShardLoad {
            counters: LoadCounters {
                rows_written: rows,
                bytes_written: rows * 10,
                scans,
                rows_scanned: scans * 100,
            },
            tables: vec![(strata_sst::TableId(7), rows)],
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_the_counters_differences_over_the_interval() {
        let t = LoadTracker::default();
        let t0 = Instant::now();
        let (first, cores, _) = t.sample_at(t0, Some(Duration::from_secs(5)), &[(1, load(100, 1))]);
        assert_eq!(first[&1], Rates::default());
        assert_eq!(cores, 0.0);
        let (r, cores, closed) = t.sample_at(
            t0 + Duration::from_secs(2),
            Some(Duration::from_secs(6)),
            &[(1, load(300, 5)), (2, load(40, 0))],
        );
        assert_eq!(
            r[&1],
            Rates {
                rows_written: 100.0,
                bytes_written: 1000.0,
                scans: 2.0,
                rows_scanned: 200.0,
                tables: vec![(7, 100.0)],
            }
        );
        // Opened meanwhile: from zero.
        assert_eq!(r[&2].rows_written, 20.0);
        assert!((cores - 0.5).abs() < 1e-9, "{cores}");
        assert!(closed.is_empty());
        // A counter that went back (a table dropped) gives zero, not a
        // negative rate.
        let (r, _, closed) = t.sample_at(t0 + Duration::from_secs(3), None, &[(1, load(10, 5))]);
        assert_eq!(r[&1].rows_written, 0.0);
        // Shard 2 closed meanwhile.
        assert_eq!(closed, vec![2]);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (strata (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tstrata\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\n";
        assert_eq!(parse_status_rss(status), Some(2 * 1024 * 1024));
        // This process has both files on Linux.
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
            assert!(rss_bytes() > 0);
        }
    }
}
