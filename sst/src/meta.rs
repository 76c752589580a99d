//! Metadata about one SST, kept both in the file's footer and in the table's
//! manifest, so that planning and pruning need no object-store reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SstId;

/// A half-open range of timestamps in milliseconds: `start <= ts < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    pub start: i64,
    pub end: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        start: i64::MIN,
        end: i64::MAX,
    };

    pub fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }

    /// Whether the two ranges share at least one timestamp.
    pub fn overlaps(&self, other: &TimeRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn contains(&self, ts: i64) -> bool {
        self.start <= ts && ts < self.end
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// What the manifest records about an SST.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SstInfo {
    pub id: SstId,
    /// Path relative to the object store root.
    pub path: String,
    /// The timestamps of its rows: `[min, max + 1)`.
    pub time_range: TimeRange,
    /// The time segment the SST belongs to (its start, in milliseconds).
    pub segment_start: i64,
    /// The highest write sequence of any row.
    pub max_seq: u64,
    pub rows: u64,
    pub size_bytes: u64,
    /// The table schema version the file was written with.
    pub schema_version: u32,
    /// 0 for flushed SSTs; compaction output gets higher levels.
    #[serde(default)]
    pub level: u32,
    /// Min/max of tag columns, so that planning can skip SSTs whose tags
    /// cannot match a filter without reading them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub column_stats: BTreeMap<String, ColumnStats>,
}

/// The range of one column's values in an SST. Values are rendered as text
/// (the column's type says how to read them back); `None` when every value
/// is null.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub min: Option<String>,
    pub max: Option<String>,
    pub null_count: u64,
}
