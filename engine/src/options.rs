//! Table options, set with `WITH (key = 'value', …)` in `CREATE TABLE`.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `ttl` | none (keep forever) | rows older than this are expired |
//! | `enable_ttl` | `true` | HoraeDB's switch; `false` clears `ttl` |
//! | `segment_duration` | `2h` | the time span of one segment; every SST lies in one |
//! | `update_mode` | `OVERWRITE` | `OVERWRITE` keeps the newest write of a key, `APPEND` keeps all |
//! | `write_buffer_size` | engine default (32 MiB) | memtable size that triggers a flush |
//!
//! HoraeDB's other table options (`arena_block_size`, `compaction_strategy`,
//! `num_rows_per_row_group`, `storage_format`, `memtable_type`, …) are accepted
//! and recorded so that HoraeDB scripts run unchanged; they do not change
//! behaviour.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How rows with the same primary key are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateMode {
    /// The newest write of a key wins.
    Overwrite,
    /// Every row is kept.
    Append,
}

impl UpdateMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpdateMode::Overwrite => "OVERWRITE",
            UpdateMode::Append => "APPEND",
        }
    }
}

pub const DEFAULT_SEGMENT_DURATION: Duration = Duration::from_secs(2 * 3600);

/// The options of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableOptions {
    /// Rows older than `now - ttl` are expired. `None` keeps data forever.
    #[serde(with = "opt_duration_ms")]
    pub ttl: Option<Duration>,
    #[serde(with = "duration_ms")]
    pub segment_duration: Duration,
    pub update_mode: UpdateMode,
    /// `None` uses the engine's default.
    pub write_buffer_size: Option<u64>,
    /// Rows per Parquet row group in this table's SSTs; `None` uses the
    /// engine's default (HoraeDB's `num_rows_per_row_group`).
    #[serde(default)]
    pub num_rows_per_row_group: Option<usize>,
    /// Accepted HoraeDB options that Strata records but does not act on.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            ttl: None,
            segment_duration: DEFAULT_SEGMENT_DURATION,
            update_mode: UpdateMode::Overwrite,
            write_buffer_size: None,
            num_rows_per_row_group: None,
            extra: BTreeMap::new(),
        }
    }
}

/// HoraeDB table options that are accepted and ignored.
const ACCEPTED_HORAEDB_OPTIONS: &[&str] = &[
    "arena_block_size",
    "compaction_strategy",
    "compression",
    "storage_format",
    "memtable_type",
    "layered_enable",
    "layered_mutable_switch_threshold",
    "memtable_preflush_size",
    "enable_ttl_compaction",
];

fn invalid(key: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses a duration such as `7d`, `2h`, `30m`, `1h30m` or a number of
/// milliseconds.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(v).map_err(|e| {
        invalid(
            key,
            format!("'{value}' is not a duration ({e}); use e.g. '7d', '2h'"),
        )
    })
}

/// Parses a size such as `32MB`, `64MiB`, `1g`, or a number of bytes.
pub fn parse_size(key: &str, value: &str) -> Result<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| invalid(key, format!("'{value}' is not a size; use e.g. '32MB'")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(invalid(
                key,
                format!("unknown size unit '{other}' in '{value}'"),
            ))
        }
    };
    Ok((num * mult as f64) as u64)
}

/// Formats a duration the way `SHOW CREATE TABLE` prints it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    const UNITS: &[(u64, &str)] = &[
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (unit, name) in UNITS {
        if ms >= *unit && ms.is_multiple_of(*unit) {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

impl TableOptions {
    /// Applies `WITH (…)` options on top of the defaults.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut opts = TableOptions::default();
        opts.apply_pairs(pairs, true)?;
        Ok(opts)
    }

    /// Applies `ALTER TABLE … MODIFY SETTING` changes to these options. The
    /// update mode cannot change: rows already stored were kept or merged
    /// under the old mode.
    pub fn modified<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let mut opts = self.clone();
        opts.apply_pairs(pairs, false)?;
        Ok(opts)
    }

    fn apply_pairs<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        creating: bool,
    ) -> Result<()> {
        let opts = self;
        let mut enable_ttl = true;
        for (key, value) in pairs {
            let lower = key.to_ascii_lowercase();
            match lower.as_str() {
                "ttl" => {
                    let d = parse_duration(&lower, value)?;
                    opts.ttl = if d.is_zero() { None } else { Some(d) };
                }
                "enable_ttl" => {
                    enable_ttl = match value.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(&lower, format!("'{value}' is not true or false"))),
                    }
                }
                "segment_duration" => {
                    let d = parse_duration(&lower, value)?;
                    if d < Duration::from_secs(1) {
                        return Err(invalid(&lower, "must be at least 1s"));
                    }
                    opts.segment_duration = d;
                }
                "update_mode" if !creating => {
                    return Err(invalid(
                        &lower,
                        "cannot be changed after the table is created",
                    ))
                }
                "update_mode" => {
                    opts.update_mode = match value.to_ascii_lowercase().as_str() {
                        "overwrite" => UpdateMode::Overwrite,
                        "append" => UpdateMode::Append,
                        _ => {
                            return Err(invalid(
                                &lower,
                                format!("'{value}' is not OVERWRITE or APPEND"),
                            ))
                        }
                    }
                }
                "write_buffer_size" => {
                    let size = parse_size(&lower, value)?;
                    if size < 1024 {
                        return Err(invalid(&lower, "must be at least 1KB"));
                    }
                    opts.write_buffer_size = Some(size);
                }
                "num_rows_per_row_group" => {
                    let n: usize = value.trim().parse().map_err(|_| {
                        invalid(&lower, format!("'{value}' is not a number of rows"))
                    })?;
                    if n < 1 {
                        return Err(invalid(&lower, "must be at least 1"));
                    }
                    opts.num_rows_per_row_group = Some(n);
                }
                k if ACCEPTED_HORAEDB_OPTIONS.contains(&k) => {
                    opts.extra.insert(k.to_string(), value.to_string());
                }
                _ => {
                    return Err(invalid(
                        key,
                        "unknown option; supported: ttl, enable_ttl, segment_duration, update_mode, write_buffer_size, num_rows_per_row_group",
                    ))
                }
            }
        }
        if !enable_ttl {
            opts.ttl = None;
        }
        Ok(())
    }

    /// The options as `WITH (…)` pairs, for `SHOW CREATE TABLE`.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = vec![
            (
                "segment_duration".to_string(),
                format_duration(self.segment_duration),
            ),
            (
                "update_mode".to_string(),
                self.update_mode.as_str().to_string(),
            ),
        ];
        if let Some(ttl) = self.ttl {
            out.push(("ttl".to_string(), format_duration(ttl)));
        }
        if let Some(size) = self.write_buffer_size {
            out.push(("write_buffer_size".to_string(), size.to_string()));
        }
        if let Some(n) = self.num_rows_per_row_group {
            out.push(("num_rows_per_row_group".to_string(), n.to_string()));
        }
        for (k, v) in &self.extra {
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// The earliest timestamp a table with `ttl` still shows, now.
pub fn ttl_cutoff(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| chrono::Utc::now().timestamp_millis() - ttl.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_options_and_rejects_bad_values() {
        let o = TableOptions::from_pairs([
            ("ttl", "7d"),
            ("update_mode", "append"),
            ("write_buffer_size", "64MB"),
            ("segment_duration", "1h"),
            ("arena_block_size", "1KB"),
        ])
        .unwrap();
        assert_eq!(o.ttl, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(o.update_mode, UpdateMode::Append);
        assert_eq!(o.write_buffer_size, Some(64 << 20));
        assert_eq!(o.segment_duration, Duration::from_secs(3600));
        let off = TableOptions::from_pairs([("ttl", "7d"), ("enable_ttl", "false")]).unwrap();
        assert_eq!(off.ttl, None);

        let err = TableOptions::from_pairs([("ttl", "soon")]).unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
        let err = TableOptions::from_pairs([("colour", "blue")]).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
