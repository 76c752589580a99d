//! Prometheus remote write (`POST /prom/v1/write`, `/api/v1/write`).
//!
//! The storage layout is RFC 0003 (`docs/rfcs/0003-prometheus-layout.md`):
//! not one table per metric, but a fixed set of physical tables per
//! database, with the metric as the first primary-key column:
//!
//! ```text
//! prom_samples_{p}  metric STRING TAG, series BIGINT UNSIGNED TAG, ts TIMESTAMP KEY, value DOUBLE
//! prom_series_{p}   metric STRING TAG, series BIGINT UNSIGNED TAG, ts TIMESTAMP KEY (0), labels STRING (JSON)
//! ```
//!
//! `p` = a hash of the metric name modulo [`PARTITIONS`], so that the data
//! spreads over shards in a cluster. `series` is a stable hash of the whole
//! label set. Both tables are `OVERWRITE`: a sample Prometheus re-sends
//! after a timeout is written once.

use std::collections::{BTreeMap, HashSet};

use prost::Message;
use strata_proto::storage::{
    value, Field, FieldGroup, RequestContext, Tag, Value, WriteRequest as PbWrite,
    WriteSeriesEntry, WriteTableRequest,
};

/// Physical tables per kind and database.
pub const PARTITIONS: u64 = 4;

pub use strata_proto::prometheus::{Label, RemoteWriteRequest, Sample, TimeSeries};

/// FNV-1a, 64 bits: stable across processes and versions (the series id is
/// stored).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The id of a label set (sorted by name; names are unique).
pub fn series_id(labels: &[(String, String)]) -> u64 {
    fnv1a(labels.iter().flat_map(|(k, v)| {
        k.bytes()
            .chain(std::iter::once(0xff))
            .chain(v.bytes())
            .chain(std::iter::once(0xff))
    }))
}

/// The partition of a metric.
pub fn partition(metric: &str) -> u64 {
    fnv1a(metric.bytes()) % PARTITIONS
}

pub fn samples_table(p: u64) -> String {
    format!("prom_samples_{p}")
}

pub fn series_table(p: u64) -> String {
    format!("prom_series_{p}")
}

/// The DDL of the physical tables.
pub fn create_statements() -> Vec<(String, String)> {
    (0..PARTITIONS)
        .flat_map(|p| {
            [
                (
                    samples_table(p),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (metric STRING TAG, series BIGINT UNSIGNED TAG, \
                         ts TIMESTAMP NOT NULL, value DOUBLE, TIMESTAMP KEY(ts))",
                        samples_table(p)
                    ),
                ),
                (
                    series_table(p),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (metric STRING TAG, series BIGINT UNSIGNED TAG, \
                         ts TIMESTAMP NOT NULL, labels STRING, TIMESTAMP KEY(ts))",
                        series_table(p)
                    ),
                ),
            ]
        })
        .collect()
}

/// A decoded remote-write body, ready to write.
#[derive(Debug)]
pub struct Decoded {
    /// Rows for the samples tables and the series tables.
    pub request: PbWrite,
    /// The series in it, for the caller's cache of series already written.
    pub series: Vec<u64>,
    pub samples: usize,
}

fn tag_str(i: u32, v: &str) -> Tag {
    Tag {
        name_index: i,
        value: Some(Value {
            value: Some(value::Value::StringValue(v.to_string())),
        }),
    }
}

fn tag_u64(i: u32, v: u64) -> Tag {
    Tag {
        name_index: i,
        value: Some(Value {
            value: Some(value::Value::Uint64Value(v)),
        }),
    }
}

/// Decompresses a snappy body (remote write or read; `what` names it in
/// errors). The decompressed length the body declares is checked against
/// `max_decoded` (`server.max_decoded_size`) before anything is allocated:
/// five bytes can declare 4 GiB.
pub fn decompress(body: &[u8], max_decoded: usize, what: &str) -> crate::error::Result<Vec<u8>> {
    use crate::error::Error;
    let not_snappy = |e: snap::Error| {
        Error::InvalidArgument(format!("{what}: the body is not snappy-compressed: {e}"))
    };
    let len = snap::raw::decompress_len(body).map_err(not_snappy)?;
    if len > max_decoded {
        return Err(Error::TooLarge(format!(
            "{what}: the body declares {len} bytes decompressed, more than {max_decoded} \
             (server.max_decoded_size)"
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(not_snappy)
}

/// Decodes a decompressed `WriteRequest` (see [`decompress`]). `known` says
/// whether a series' row was written already (then it is not written
/// again).
pub fn decode(database: &str, raw: &[u8], known: impl Fn(u64) -> bool) -> Result<Decoded, String> {
    let req = RemoteWriteRequest::decode(raw)
        .map_err(|e| format!("the body is not a Prometheus WriteRequest: {e}"))?;
    // (samples, series) rows per partition.
    type Rows = (
        BTreeMap<(String, u64), Vec<FieldGroup>>,
        BTreeMap<(String, u64), String>,
    );
    let mut parts: BTreeMap<u64, Rows> = BTreeMap::new();
    let mut series_ids = Vec::new();
    let mut samples = 0;
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        if !ts.histograms.is_empty() {
            return Err(format!(
                "series {i}: native histograms are not supported; send classic histograms"
            ));
        }
        let mut labels: Vec<(String, String)> = ts
            .labels
            .into_iter()
            .filter(|l| !l.value.is_empty())
            .map(|l| (l.name, l.value))
            .collect();
        labels.sort();
        if labels.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(format!("series {i}: a label name repeats"));
        }
        let Some(metric) = labels
            .iter()
            .find(|(k, _)| k == "__name__")
            .map(|(_, v)| v.clone())
        else {
            return Err(format!("series {i}: no __name__ label"));
        };
        if ts.samples.is_empty() {
            continue;
        }
        let id = series_id(&labels);
        let (sample_rows, series_rows) = parts.entry(partition(&metric)).or_default();
        if !known(id) {
            let json: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            series_rows.insert(
                (metric.clone(), id),
                serde_json::Value::Object(json).to_string(),
            );
        }
        series_ids.push(id);
        let groups = sample_rows.entry((metric, id)).or_default();
        for s in ts.samples {
            samples += 1;
            groups.push(FieldGroup {
                timestamp: s.timestamp,
                fields: vec![Field {
                    name_index: 0,
                    value: Some(Value {
                        value: Some(value::Value::Float64Value(s.value)),
                    }),
                }],
            });
        }
    }
    let mut tables = Vec::new();
    for (p, (sample_rows, series_rows)) in parts {
        tables.push(WriteTableRequest {
            table: samples_table(p),
            tag_names: vec!["metric".to_string(), "series".to_string()],
            field_names: vec!["value".to_string()],
            entries: sample_rows
                .into_iter()
                .map(|((metric, id), groups)| WriteSeriesEntry {
                    tags: vec![tag_str(0, &metric), tag_u64(1, id)],
                    field_groups: groups,
                })
                .collect(),
        });
        if !series_rows.is_empty() {
            tables.push(WriteTableRequest {
                table: series_table(p),
                tag_names: vec!["metric".to_string(), "series".to_string()],
                field_names: vec!["labels".to_string()],
                entries: series_rows
                    .into_iter()
                    .map(|((metric, id), json)| WriteSeriesEntry {
                        tags: vec![tag_str(0, &metric), tag_u64(1, id)],
                        field_groups: vec![FieldGroup {
                            timestamp: 0,
                            fields: vec![Field {
                                name_index: 0,
                                value: Some(Value {
                                    value: Some(value::Value::StringValue(json)),
                                }),
                            }],
                        }],
                    })
                    .collect(),
            });
        }
    }
    Ok(Decoded {
        request: PbWrite {
            context: Some(RequestContext {
                database: database.to_string(),
            }),
            table_requests: tables,
        },
        series: series_ids,
        samples,
    })
}

/// The series an instance has written already, per database (bounded: it is
/// cleared when it grows past a million entries).
#[derive(Debug, Default)]
pub struct SeenSeries {
    inner: parking_lot::Mutex<HashSet<(String, u64)>>,
}

impl SeenSeries {
    pub fn contains(&self, db: &str, id: u64) -> bool {
        self.inner.lock().contains(&(db.to_string(), id))
    }

    pub fn insert_all(&self, db: &str, ids: &[u64]) {
        let mut s = self.inner.lock();
        if s.len() > 1_000_000 {
            s.clear();
        }
        s.extend(ids.iter().map(|id| (db.to_string(), *id)));
    }

    pub fn forget_database(&self, db: &str) {
        self.inner.lock().retain(|(d, _)| d != db);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body(series: Vec<TimeSeries>) -> Vec<u8> {
        RemoteWriteRequest { timeseries: series }.encode_to_vec()
    }

    fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries::new(labels, samples)
    }

    #[test]
    fn series_ids_are_stable_and_label_order_free() {
        let a = vec![
            ("__name__".to_string(), "up".to_string()),
            ("job".to_string(), "x".to_string()),
        ];
        assert_eq!(series_id(&a), series_id(&a.clone()));
        let b = vec![
            ("__name__".to_string(), "up".to_string()),
            ("job".to_string(), "y".to_string()),
        ];
        assert_ne!(series_id(&a), series_id(&b));
        // The same labels in another order give the same id once sorted.
        let d = decode(
            "db",
            &body(vec![
                ts(&[("job", "x"), ("__name__", "up")], &[(1, 1.0)]),
                ts(&[("__name__", "up"), ("job", "x")], &[(2, 2.0)]),
            ]),
            |_| false,
        )
        .unwrap();
        assert_eq!(d.series[0], d.series[1]);
        assert_eq!(d.samples, 2);
    }

    #[test]
    fn decodes_into_partitioned_tables_and_skips_known_series() {
        let d = decode(
            "db",
            &body(vec![
                ts(
                    &[("__name__", "up"), ("job", "a")],
                    &[(1000, 1.0), (2000, 0.0)],
                ),
                ts(
                    &[("__name__", "http_requests_total"), ("code", "200")],
                    &[(1000, 5.0)],
                ),
            ]),
            |_| false,
        )
        .unwrap();
        let names: Vec<&str> = d
            .request
            .table_requests
            .iter()
            .map(|t| t.table.as_str())
            .collect();
        assert!(names.iter().all(|n| n.starts_with("prom_")), "{names:?}");
        let sample_rows: usize = d
            .request
            .table_requests
            .iter()
            .filter(|t| t.table.starts_with("prom_samples_"))
            .flat_map(|t| &t.entries)
            .map(|e| e.field_groups.len())
            .sum();
        assert_eq!(sample_rows, 3);
        let known = d.series.clone();
        let again = decode(
            "db",
            &body(vec![ts(
                &[("__name__", "up"), ("job", "a")],
                &[(3000, 1.0)],
            )]),
            |id| known.contains(&id),
        )
        .unwrap();
        assert!(again
            .request
            .table_requests
            .iter()
            .all(|t| t.table.starts_with("prom_samples_")));
    }

    #[test]
    fn refuses_bad_bodies_with_reasons() {
        let err = decompress(b"not snappy", 1 << 20, "remote write").unwrap_err();
        assert!(err.to_string().contains("snappy"), "{err}");
        // A five-byte body declaring 4 GiB is refused before allocating.
        let mut huge = Vec::new();
        let mut n: u64 = 0xFFFF_FFFF;
        while n >= 0x80 {
            huge.push((n as u8) | 0x80);
            n >>= 7;
        }
        huge.push(n as u8);
        let err = decompress(&huge, 64 << 20, "remote write").unwrap_err();
        assert!(matches!(err, crate::error::Error::TooLarge(_)), "{err}");
        let fine = snap::raw::Encoder::new().compress_vec(b"abc").unwrap();
        assert_eq!(decompress(&fine, 3, "remote write").unwrap(), b"abc");
        assert!(decompress(&fine, 2, "remote write").is_err());
        let no_name = body(vec![ts(&[("job", "a")], &[(1, 1.0)])]);
        assert!(decode("db", &no_name, |_| false)
            .unwrap_err()
            .contains("__name__"));
        let mut h = ts(&[("__name__", "h")], &[]);
        h.histograms.push(vec![1, 2, 3]);
        assert!(decode("db", &body(vec![h]), |_| false)
            .unwrap_err()
            .contains("native histograms"));
    }
}
