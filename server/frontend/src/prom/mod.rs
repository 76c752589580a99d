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

use std::collections::{HashMap, HashSet};

use strata_engine::schema::ColumnType;

mod decode;
mod labels;
mod wire;

pub use decode::{decode, decode_with, Decoded, Derived, LabelSets, Written};
pub use labels::{LabelCache, Labels};

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
pub fn series_id<K: AsRef<str>, V: AsRef<str>>(labels: &[(K, V)]) -> u64 {
    fnv1a(labels.iter().flat_map(|(k, v)| {
        k.as_ref()
            .bytes()
            .chain(std::iter::once(0xff))
            .chain(v.as_ref().bytes())
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

/// The physical tables of one database and their schemas, created on the
/// first remote write through the write path
/// ([`crate::writer::table_for_write`]), with the default options
/// (`OVERWRITE`). The key is every tag, then the time: (metric, series,
/// ts).
pub fn tables() -> strata_engine::Result<Vec<(String, strata_engine::schema::TableSchema)>> {
    let mut out = Vec::with_capacity(2 * PARTITIONS as usize);
    for p in 0..PARTITIONS {
        out.push((
            samples_table(p),
            layout_schema("value", ColumnType::Double)?,
        ));
        out.push((
            series_table(p),
            layout_schema("labels", ColumnType::String)?,
        ));
    }
    Ok(out)
}

/// `metric STRING TAG, series UINT64 TAG, ts TIMESTAMP NOT NULL` and the
/// kind's own last column.
fn layout_schema(
    last: &str,
    last_type: ColumnType,
) -> strata_engine::Result<strata_engine::schema::TableSchema> {
    use strata_engine::schema::{ColumnSchema, TableSchema};
    let column = |name: &str, column_type, is_tag, nullable| ColumnSchema {
        name: name.to_string(),
        column_type,
        is_tag,
        nullable,
        comment: String::new(),
    };
    let columns = vec![
        column("metric", ColumnType::String, true, true),
        column("series", ColumnType::UInt64, true, true),
        column("ts", ColumnType::Timestamp, false, false),
        column(last, last_type, false, true),
    ];
    TableSchema::try_new(columns, "ts", &[])
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

/// The series an instance has written already, per database: their ids,
/// and their label sets as sent ([`LabelSets`]). Bounded: the ids are
/// cleared past a million, the label sets past 64 MiB.
///
/// A decode reads it under a read lock that it yields to a waiting writer
/// every [`YIELD_EVERY`] lookups, so that a large body does not hold up the
/// requests that record what they wrote. What a request decoded is
/// recorded only if the database's series were not forgotten since
/// ([`Generation`]): otherwise a request decoded against the old tables
/// could mark as written a series row that the new tables lack.
#[derive(Debug, Default)]
pub struct SeenSeries {
    inner: parking_lot::RwLock<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    databases: HashMap<String, SeenIn>,
    ids: usize,
    label_bytes: usize,
    /// The last generation given to a forgotten database.
    generations: u64,
}

#[derive(Debug, Default)]
struct SeenIn {
    generation: u64,
    /// The ids of the series tables these series were written to
    /// ([`SeenSeries::check_tables`]).
    tables: Vec<Option<u64>>,
    ids: HashSet<u64>,
    labels: LabelSets,
}

/// Which version of a database's series cache a request decoded against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

/// The bounds of [`SeenSeries`].
const MAX_SEEN_IDS: usize = 1_000_000;
const MAX_SEEN_LABEL_BYTES: usize = 64 << 20;
/// Lookups between two chances for a writer to take the lock.
const YIELD_EVERY: u32 = 256;

/// [`Written`] over a read lock of [`SeenSeries`].
struct Lookup<'a> {
    seen: parking_lot::RwLockReadGuard<'a, Seen>,
    db: &'a str,
    generation: u64,
    calls: u32,
}

impl Lookup<'_> {
    fn current(&mut self) -> Option<&SeenIn> {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(YIELD_EVERY) {
            parking_lot::RwLockReadGuard::bump(&mut self.seen);
        }
        self.seen
            .databases
            .get(self.db)
            .filter(|d| d.generation == self.generation)
    }
}

impl Written for Lookup<'_> {
    fn label_set(&mut self, key: &[u8]) -> Option<Derived> {
        self.current()?.labels.get(key)
    }
    fn series(&mut self, id: u64) -> bool {
        self.current().is_some_and(|d| d.ids.contains(&id))
    }
}

impl SeenSeries {
    /// Decodes a remote-write body for `db` ([`decode_with`]), skipping
    /// the series written already. Concurrent decodes share the cache.
    pub fn decode(&self, db: &str, raw: &[u8]) -> Result<(Decoded, Generation), String> {
        let seen = self.inner.read();
        let generation = seen.databases.get(db).map_or(0, |d| d.generation);
        let mut lookup = Lookup {
            seen,
            db,
            generation,
            calls: 0,
        };
        let decoded = decode_with(raw, &mut lookup)?;
        Ok((decoded, Generation(generation)))
    }

    /// Records what a request decoded at `generation` held, once its rows
    /// are written; nothing if `db`'s series were forgotten since.
    pub fn written(
        &self,
        db: &str,
        generation: Generation,
        ids: &[u64],
        label_sets: Vec<(Box<[u8]>, Derived)>,
    ) {
        if ids.is_empty() && label_sets.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut guard = self.inner.write();
            let seen = &mut *guard;
            let d = match seen.databases.get_mut(db) {
                Some(d) => d,
                None => seen.databases.entry(db.to_string()).or_default(),
            };
            if d.generation != generation.0 {
                return;
            }
            let before = (d.ids.len(), d.labels.bytes());
            d.ids.extend(ids.iter().copied());
            d.labels.insert(label_sets);
            seen.ids += d.ids.len() - before.0;
            seen.label_bytes += d.labels.bytes() - before.1;
            // Past a bound, every database's entries of that kind go; they
            // are freed after the lock is released.
            if seen.ids > MAX_SEEN_IDS {
                for d in seen.databases.values_mut() {
                    dropped.push((std::mem::take(&mut d.ids), LabelSets::default()));
                }
                seen.ids = 0;
            }
            if seen.label_bytes > MAX_SEEN_LABEL_BYTES {
                for d in seen.databases.values_mut() {
                    dropped.push((HashSet::new(), std::mem::take(&mut d.labels)));
                }
                seen.label_bytes = 0;
            }
        }
        drop(dropped);
    }

    /// Forgets `db`'s series unless they were written to the series tables
    /// of these ids (`None`: a table this instance does not see): tables
    /// dropped and created anew by another instance or by SQL have new ids.
    pub fn check_tables(&self, db: &str, tables: &[Option<u64>]) {
        let same = self
            .inner
            .read()
            .databases
            .get(db)
            .is_some_and(|d| d.tables == tables);
        if !same {
            self.forget(db, tables.to_vec());
        }
    }

    /// Forgets `db`'s series: its series tables are now `tables`. A request
    /// decoded before does not record what it wrote.
    fn forget(&self, db: &str, tables: Vec<Option<u64>>) {
        let old = {
            let mut guard = self.inner.write();
            let seen = &mut *guard;
            seen.generations += 1;
            let fresh = SeenIn {
                generation: seen.generations,
                tables,
                ..SeenIn::default()
            };
            let old = seen.databases.insert(db.to_string(), fresh);
            if let Some(d) = &old {
                seen.ids -= d.ids.len();
                seen.label_bytes -= d.labels.bytes();
            }
            old
        };
        drop(old);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arrow::{
        array::{Array, AsArray},
        datatypes::{Float64Type, TimestampMillisecondType, UInt64Type},
    };
    use prost::Message;
    use rand::{Rng, SeedableRng};

    fn body(series: Vec<TimeSeries>) -> Vec<u8> {
        RemoteWriteRequest { timeseries: series }.encode_to_vec()
    }

    fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries::new(labels, samples)
    }

    /// One row of a decoded body: `(table, metric, series, ts, value bits
    /// or labels JSON)`.
    type Row = (String, String, u64, i64, String);

    /// Every row of a decoded body, sorted.
    fn rows(d: &Decoded) -> Vec<Row> {
        let mut out = Vec::new();
        for (table, b) in &d.tables {
            let metric = b.column_by_name("metric").unwrap().as_string::<i32>();
            let series = b
                .column_by_name("series")
                .unwrap()
                .as_primitive::<UInt64Type>();
            let ts = b
                .column_by_name("ts")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            for i in 0..b.num_rows() {
                let last = match b.column_by_name("value") {
                    Some(v) => format!("{:?}", v.as_primitive::<Float64Type>().value(i).to_bits()),
                    None => b
                        .column_by_name("labels")
                        .unwrap()
                        .as_string::<i32>()
                        .value(i)
                        .to_string(),
                };
                assert!(!metric.is_null(i));
                out.push((
                    table.clone(),
                    metric.value(i).to_string(),
                    series.value(i),
                    ts.value(i),
                    last,
                ));
            }
        }
        out.sort();
        out
    }

    /// What the rows must be, from `prost`'s decoding of the same body: the
    /// layout of RFC 0003 as the protobuf path wrote it before the Arrow
    /// decoder (labels with empty values dropped, sorted; the series JSON
    /// a sorted map).
    fn reference(raw: &[u8], known: impl Fn(u64) -> bool) -> Result<Vec<Row>, ()> {
        let req = RemoteWriteRequest::decode(raw).map_err(drop)?;
        let mut out = Vec::new();
        let mut new = HashSet::new();
        for t in req.timeseries {
            if !t.histograms.is_empty() {
                return Err(());
            }
            let mut labels: Vec<(String, String)> = t
                .labels
                .into_iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.name, l.value))
                .collect();
            labels.sort();
            if labels.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(());
            }
            let metric = labels
                .iter()
                .find(|(k, _)| k == "__name__")
                .ok_or(())?
                .1
                .clone();
            if t.samples.is_empty() {
                continue;
            }
            let id = series_id(&labels);
            let p = partition(&metric);
            if !known(id) && new.insert(id) {
                let json: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                out.push((
                    series_table(p),
                    metric.clone(),
                    id,
                    0,
                    serde_json::Value::Object(json).to_string(),
                ));
            }
            for s in t.samples {
                out.push((
                    samples_table(p),
                    metric.clone(),
                    id,
                    s.timestamp,
                    format!("{:?}", s.value.to_bits()),
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    #[test]
    fn series_ids_are_stable_and_label_order_free() {
        let a = vec![
            ("__name__".to_string(), "up".to_string()),
            ("job".to_string(), "x".to_string()),
        ];
        assert_eq!(series_id(&a), series_id(&a.clone()));
        // Borrowed labels hash as owned ones do (the id is stored).
        assert_eq!(
            series_id(&a),
            series_id(&[("__name__", "up"), ("job", "x")])
        );
        assert_eq!(
            series_id(&a),
            0xc21f_d525_5561_b626,
            "the stored id changed"
        );
        let b = vec![
            ("__name__".to_string(), "up".to_string()),
            ("job".to_string(), "y".to_string()),
        ];
        assert_ne!(series_id(&a), series_id(&b));
        // The same labels in another order give the same id once sorted.
        let d = decode(
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
        let raw = body(vec![
            ts(
                &[("__name__", "up"), ("job", "a")],
                &[(1000, 1.0), (2000, 0.0)],
            ),
            ts(
                &[
                    ("__name__", "http_requests_total"),
                    ("code", "200"),
                    ("empty", ""),
                ],
                &[(1000, 5.0)],
            ),
        ]);
        let d = decode(&raw, |_| false).unwrap();
        let names: Vec<&str> = d.tables.iter().map(|(t, _)| t.as_str()).collect();
        assert!(names.iter().all(|n| n.starts_with("prom_")), "{names:?}");
        let got = rows(&d);
        assert_eq!(got, reference(&raw, |_| false).unwrap());
        assert_eq!(
            got.iter()
                .filter(|r| r.0.starts_with("prom_samples_"))
                .count(),
            3
        );
        let json: Vec<&str> = got
            .iter()
            .filter(|r| r.0.starts_with("prom_series_"))
            .map(|r| r.4.as_str())
            .collect();
        assert!(
            json.contains(&r#"{"__name__":"http_requests_total","code":"200"}"#),
            "{json:?}"
        );
        let known = d.series.clone();
        let again = decode(
            &body(vec![ts(
                &[("__name__", "up"), ("job", "a")],
                &[(3000, 1.0)],
            )]),
            |id| known.contains(&id),
        )
        .unwrap();
        assert!(again
            .tables
            .iter()
            .all(|(t, _)| t.starts_with("prom_samples_")));
    }

    /// The Arrow decoder and `prost` agree on every body: the same rows for
    /// what both accept, an error from both for what both refuse. Random
    /// requests (labels with quotes, escapes and non-ASCII text; repeated
    /// series; empty values; unknown fields), then random damage to them.
    #[test]
    fn the_arrow_decoder_agrees_with_prost() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let pieces = [
            "up", "a\"b", "\\", "é", "x\ny", "", "job", "__name__", "zz", "0",
        ];
        let mut checked = (0, 0);
        for round in 0..3000 {
            let mut series = Vec::new();
            for _ in 0..rng.random_range(0..6) {
                let mut labels = Vec::new();
                if rng.random_bool(0.95) {
                    labels.push((
                        "__name__".to_string(),
                        pieces[rng.random_range(0..5)].to_string(),
                    ));
                }
                for _ in 0..rng.random_range(0..4) {
                    labels.push((
                        format!("l{}", rng.random_range(0..5)),
                        pieces[rng.random_range(0..pieces.len())].to_string(),
                    ));
                }
                let samples: Vec<(i64, f64)> = (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            rng.random_range(-5..5_000_000_000_000i64),
                            rng.random::<f64>(),
                        )
                    })
                    .collect();
                let l: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                series.push(ts(&l, &samples));
            }
            let mut raw = body(series);
            if round % 3 == 1 {
                // An unknown field (metadata, 3) prost skips.
                raw.extend_from_slice(&[0x1a, 0x02, 0x08, 0x01]);
            }
            if round % 3 == 2 && !raw.is_empty() {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..raw.len());
                    match rng.random_range(0..3) {
                        0 => raw[i] ^= 1 << rng.random_range(0..8),
                        1 => raw.truncate(i),
                        _ => raw.insert(i, rng.random()),
                    }
                    if raw.is_empty() {
                        break;
                    }
                }
            }
            let known = |id: u64| id.is_multiple_of(3);
            let want = reference(&raw, known);
            let got = decode(&raw, known);
            match (&want, &got) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(&rows(g), w, "round {round}: {raw:?}");
                    checked.0 += 1;
                }
                (Err(()), Err(_)) => checked.1 += 1,
                // prost skips groups (wire types 3 and 4), which the
                // decoder refuses; nothing else may differ.
                (Ok(_), Err(e)) if e.contains("wire type 3") || e.contains("wire type 4") => {}
                _ => panic!(
                    "round {round}: prost {:?}, decoder {:?}, body {raw:?}",
                    want.map(|r| r.len()),
                    got.map(|d| d.samples)
                ),
            }
        }
        assert!(checked.0 > 1000 && checked.1 > 300, "{checked:?}");
    }

    /// Decoding with the label sets written before (the server's cache)
    /// gives the rows decoding from scratch gives, series after series,
    /// including label sets a client sends in another order, with empty
    /// values, split around the samples, or that fail to decode.
    #[test]
    fn written_label_sets_decode_as_parsed_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let values = ["a", "b", "", "é", "x\"y"];
        let pool: Vec<Vec<(String, String)>> = (0..30)
            .map(|i| {
                let mut labels = Vec::new();
                if i % 10 != 9 {
                    labels.push(("__name__".to_string(), format!("m{}", i % 4)));
                }
                for _ in 0..rng.random_range(0..4) {
                    labels.push((
                        format!("l{}", rng.random_range(0..4)),
                        values[rng.random_range(0..values.len())].to_string(),
                    ));
                }
                labels
            })
            .collect();
        // One `timeseries` field of a WriteRequest; with `split`, the last
        // label is sent after the samples (protobuf merges the two halves),
        // which is not a cache key.
        fn series_field(
            labels: &[(String, String)],
            samples: &[(i64, f64)],
            split: bool,
        ) -> Vec<u8> {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let inner = if split && !l.is_empty() {
                let (first, last) = l.split_at(l.len() - 1);
                let mut b = TimeSeries::new(first, samples).encode_to_vec();
                b.extend(TimeSeries::new(last, &[]).encode_to_vec());
                b
            } else {
                TimeSeries::new(&l, samples).encode_to_vec()
            };
            let mut out = vec![0x0a];
            let mut n = inner.len() as u64;
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend(inner);
            out
        }
        let mut sets = LabelSets::default();
        let mut ids: HashSet<u64> = HashSet::new();
        let (mut hits, mut ok, mut refused) = (0usize, 0usize, 0usize);
        for round in 0..600 {
            let mut raw = Vec::new();
            let mut with_samples = 0;
            for _ in 0..rng.random_range(0..8) {
                let labels = &pool[rng.random_range(0..pool.len())];
                let samples: Vec<(i64, f64)> = (0..rng.random_range(0..3))
                    .map(|_| (rng.random_range(0..1000i64), rng.random::<f64>()))
                    .collect();
                with_samples += usize::from(!samples.is_empty());
                raw.extend(series_field(labels, &samples, rng.random_bool(0.1)));
            }
            let want = reference(&raw, |id: u64| ids.contains(&id));
            let got = decode_with(&raw, &mut (&sets, &ids));
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(rows(&g), w, "round {round}");
                    hits += with_samples - g.series.len();
                    ok += 1;
                    ids.extend(g.series.iter().copied());
                    sets.insert(g.label_sets);
                }
                (Err(()), Err(_)) => refused += 1,
                (w, g) => panic!(
                    "round {round}: {:?} vs {:?}",
                    w.map(|r| r.len()),
                    g.map(|d| d.samples)
                ),
            }
        }
        assert!(
            hits > 300 && ok > 100 && refused > 100,
            "{hits} {ok} {refused}"
        );
    }

    /// What a request decoded before its database's tables were created
    /// anew is not recorded as written: the new tables lack its series rows.
    #[test]
    fn a_forgotten_database_does_not_take_back_earlier_decodes() {
        let seen = SeenSeries::default();
        let raw = body(vec![ts(&[("__name__", "up"), ("job", "a")], &[(1, 1.0)])]);
        let tables = |d: &Decoded| d.tables.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
        let (d, g) = seen.decode("db", &raw).unwrap();
        assert_eq!(tables(&d).len(), 2, "{:?}", tables(&d));
        seen.written("db", g, &d.series, d.label_sets);
        // Written: the label set is a hit, the series row is not written again.
        let (d, g) = seen.decode("db", &raw).unwrap();
        assert_eq!(tables(&d).len(), 1);
        assert!(d.series.is_empty() && d.label_sets.is_empty());
        // Another database knows nothing of it.
        assert_eq!(tables(&seen.decode("other", &raw).unwrap().0).len(), 2);
        drop((d, g));
        // Forgotten between a decode and its write (another request found
        // the tables dropped and created them anew, with new ids): nothing
        // is recorded.
        seen.check_tables("db", &[Some(10)]);
        let (before, g) = seen.decode("db", &raw).unwrap();
        assert_eq!(tables(&before).len(), 2);
        seen.check_tables("db", &[Some(11)]);
        seen.written("db", g, &before.series, before.label_sets);
        let (d, g) = seen.decode("db", &raw).unwrap();
        assert_eq!(
            tables(&d).len(),
            2,
            "the new tables still need the series row"
        );
        seen.written("db", g, &d.series, d.label_sets);
        assert_eq!(tables(&seen.decode("db", &raw).unwrap().0).len(), 1);
        // The series tables as this instance sees them: the first check
        // records them (and forgets), the same ids again keep what is known,
        // new ids (tables created anew elsewhere) forget it.
        seen.check_tables("db", &[Some(1), Some(2)]);
        let (d, g) = seen.decode("db", &raw).unwrap();
        seen.written("db", g, &d.series, d.label_sets);
        seen.check_tables("db", &[Some(1), Some(2)]);
        assert_eq!(tables(&seen.decode("db", &raw).unwrap().0).len(), 1);
        seen.check_tables("db", &[Some(1), Some(3)]);
        assert_eq!(tables(&seen.decode("db", &raw).unwrap().0).len(), 2);
    }

    /// A body of very many small new series hands at most 16 MiB of label
    /// sets to the cache: they are held across the write, and inserted
    /// under the cache's write lock.
    #[test]
    fn one_request_hands_a_bounded_number_of_label_sets_to_the_cache() {
        let names: Vec<String> = (0..300_000).map(|i| format!("m{i}")).collect();
        let series = names
            .iter()
            .map(|n| ts(&[("__name__", n.as_str())], &[(1, 1.0)]))
            .collect();
        let d = decode(&body(series), |_| false).unwrap();
        assert_eq!(d.samples, 300_000);
        assert_eq!(d.series.len(), 300_000);
        let bytes: usize = d.label_sets.iter().map(|(k, _)| k.len() + 64).sum();
        assert!(!d.label_sets.is_empty() && d.label_sets.len() < 300_000);
        assert!(bytes <= 16 << 20, "{bytes}");
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
        assert!(decode(&no_name, |_| false)
            .unwrap_err()
            .contains("__name__"));
        let mut h = ts(&[("__name__", "h")], &[]);
        h.histograms.push(vec![1, 2, 3]);
        assert!(decode(&body(vec![h]), |_| false)
            .unwrap_err()
            .contains("native histograms"));
        // A 1 MiB metric name with 100 samples would be 100 MiB of rows.
        let name = "m".repeat(1 << 20);
        let samples: Vec<(i64, f64)> = (0..100).map(|i| (i, 1.0)).collect();
        let wide = body(vec![ts(&[("__name__", &name)], &samples)]);
        assert!(decode(&wide, |_| false)
            .unwrap_err()
            .contains("bytes of rows"));
        let dup = body(vec![ts(
            &[("__name__", "a"), ("x", "1"), ("x", "2")],
            &[(1, 1.0)],
        )]);
        assert!(decode(&dup, |_| false).unwrap_err().contains("repeats"));
    }
}
