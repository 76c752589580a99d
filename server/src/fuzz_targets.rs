//! The bodies of the fuzz targets: each takes arbitrary bytes, as a client,
//! a broker, a disk or an object store could hand them to Strata, and runs
//! them through the same functions the servers call. Any input must return;
//! a panic, an abort or a hang is the bug.
//!
//! Two harnesses call these, so that both exercise exactly the same code:
//! the libFuzzer targets in `fuzz/fuzz_targets/` (`cargo +nightly fuzz run
//! <name>`, see `docs/fuzzing.md`), and the suite's
//! `integration_tests/tests/it/fuzz_corpus.rs`, which replays the seed
//! corpus in `fuzz/corpus/<name>/` and a bounded number of seeded mutations
//! of it in a normal build.

use std::io::Cursor;

use crate::influx::{self, Precision};

/// The decompressed-size bound the targets decode under (the server's is
/// `server.max_decoded_size`, 64 MiB by default).
const FUZZ_MAX_DECODED: usize = 16 << 20;

/// A target's name and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target: its name (the directory of its corpus and the name of its
/// libFuzzer binary) and its body.
pub const TARGETS: &[Target] = &[
    ("line_protocol", line_protocol),
    ("remote_write", remote_write),
    ("remote_read", remote_read),
    ("promql", promql),
    ("sql", sql),
    ("wal_payload", wal_payload),
    ("wal_segment", wal_segment),
    ("manifest", manifest),
];

/// The body of a write to `/influx/v1/write` or `/api/v2/write`: parsed
/// (the HTTP layer refuses bodies that are not UTF-8 first), then at every
/// precision grouped into tables, each with the schema its first write
/// creates, and built into Arrow batches in it.
pub fn line_protocol(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let (points, _errors) = influx::parse_lines(body);
    for precision in [
        Precision::Nanos,
        Precision::Micros,
        Precision::Millis,
        Precision::Seconds,
        Precision::Minutes,
        Precision::Hours,
    ] {
        let Ok(times) = influx::timestamps(&points, precision, 1_700_000_000_000) else {
            continue;
        };
        for (table, points) in influx::by_measurement(&points, &times) {
            if let Ok(schema) = influx::schema_for_new_table(&points) {
                let _ = influx::to_batch(
                    table,
                    &schema,
                    schema.arrow_schema(),
                    &points,
                    crate::config::DEFAULT_REQUEST_LIMIT as usize,
                );
            }
        }
    }
}

/// The body of a Prometheus remote write: snappy, then a protobuf
/// `WriteRequest`, turned into Strata's write request.
pub fn remote_write(data: &[u8]) {
    if let Ok(raw) = crate::prom::decompress(data, FUZZ_MAX_DECODED, "remote write") {
        let _ = crate::prom::decode(&raw, |id| id % 2 == 0);
    }
    // The protobuf decoder on its own, for inputs snappy would refuse.
    let _ = crate::prom::decode(data, |id| id % 2 == 0);
}

/// The body of a Prometheus remote read: snappy, then a protobuf
/// `ReadRequest`, whose label matchers (regexes included) are compiled.
pub fn remote_read(data: &[u8]) {
    if let Ok(req) = crate::prom_read::decode_request(data, FUZZ_MAX_DECODED) {
        for q in &req.queries {
            let _ = crate::prom_read::compile_matchers(q);
        }
    }
}

/// The `query` of `/api/v1/query` and `/api/v1/query_range`: parsed, and
/// its selectors walked, as before any data is read.
pub fn promql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = strata_promql::check(text);
}

/// SQL text as the HTTP, gRPC and PostgreSQL front ends receive it: split
/// into statements and parsed (never planned).
pub fn sql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::sql::parse_only(text);
}

/// The payload of one WAL record (from Kafka or a local segment): a fence
/// marker or a write (a header and an Arrow IPC stream).
pub fn wal_payload(data: &[u8]) {
    if !strata_engine::codec::is_fence(data) {
        let _ = strata_engine::codec::decode(data);
    }
}

/// A local WAL segment file: records read one by one until the end or the
/// first invalid one, as reopening a segment does.
pub fn wal_segment(data: &[u8]) {
    use strata_wal::local::format::{read_record, ReadOutcome};
    let mut reader = Cursor::new(data);
    let mut expected: Option<u64> = None;
    // Reading from memory cannot fail with an I/O error.
    while let Ok(ReadOutcome::Record(header, payload)) = read_record(&mut reader) {
        if expected.is_some_and(|e| e != header.offset) {
            break;
        }
        expected = header.offset.checked_add(1);
        if !strata_engine::codec::is_fence(&payload) {
            let _ = strata_engine::codec::decode(&payload);
        }
    }
}

/// A manifest object from the store: decoded as an edit and as a snapshot,
/// and the edit applied to the snapshot (as loading does).
pub fn manifest(data: &[u8]) {
    use strata_engine::manifest::{decode_edit, decode_snapshot, ManifestState};
    let mut state = decode_snapshot(data).unwrap_or_else(|_| ManifestState::default());
    if let Ok(edit) = decode_edit(data) {
        state.apply(&edit);
    }
    let _ = serde_json::to_vec(&state);
}
