//! The fuzz targets in the suite, without an instrumented build: every file
//! of each target's seed corpus (`fuzz/corpus/<target>/`), then seeded
//! random mutations of them, run through the same body the libFuzzer target
//! calls (`strata_server::fuzz_targets`). A panic is the failure.
//!
//! The mutations are bounded (`BUDGET` and `MAX_INPUTS` per target) and
//! reproducible: the seed is `STRATA_FUZZ_SEED` (decimal), else a fixed
//! default, and a failure prints the seed, the input and the step. Longer
//! runs: `STRATA_FUZZ_SECONDS`, `STRATA_FUZZ_INPUTS`; real coverage-guided
//! fuzzing: `cargo +nightly fuzz run <target>` in `fuzz/` (docs/fuzzing.md).
//!
//! A panicking input is saved under `$CARGO_TARGET_TMPDIR/fuzz-crashes/`;
//! `STRATA_FUZZ_DUMP=N` saves mutation N there too (to pick one out), and
//! `STRATA_FUZZ_TRACE=1` every input as `last-input` before it runs (what
//! is left after an abort: a failed allocation, a stack overflow).
//!
//! `fuzz_write_seeds` (ignored) regenerates the binary seeds from the
//! crates' own encoders.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use strata_server::fuzz_targets::TARGETS;

const DEFAULT_SEED: u64 = 0x5354_5241_5441_0014;
const BUDGET: Duration = Duration::from_secs(2);
const MAX_INPUTS: usize = 20_000;
/// Mutated inputs stay below this, so a step stays cheap.
const MAX_LEN: usize = 16 * 1024;
/// At most this many brackets are inserted at once: deep nesting of PromQL
/// and SQL overflows the stack until their depth limits land (see
/// `fuzz/crashes-pending/README.md`); that is fuzzed with cargo fuzz, not
/// replayed here.
const MAX_BRACKETS: usize = 24;
/// Tokio's default worker stack.
const WORKER_STACK: usize = 2 * 1024 * 1024;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
        .join("corpus")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Bytes that matter to the formats fuzzed: separators, quotes, escapes,
/// brackets, and the ends of integer ranges.
const INTERESTING_BYTES: &[u8] =
    b" ,=\"'\\\n\r\t#;:()[]{}-+.0123456789eE_@~!|*/%^`\x00\x7f\x80\xff";
const TOKENS: &[&[u8]] = &[
    b"\\ ",
    b"\\,",
    b"\\=",
    b"\"",
    b"''",
    b"i",
    b"u",
    b"t",
    b"true",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"1e308",
    b"NaN",
    b"-Inf",
    b"\xc3\xa9",
    b"\xf0\x9f\x92\xa9",
    b" offset ",
    b" @ ",
    b"[5m]",
    b"[1y:1s]",
    b"=~\".*\"",
    b" by (a) ",
    b"sum(",
    b"rate(",
    b" SELECT ",
    b" FROM ",
    b" WHERE ",
    b" UNION ",
    b"/*",
    b"*/",
    b"--",
    b";",
    b"CREATE TABLE ",
    b" TAG ",
    b" TIMESTAMP KEY ",
    b"\"add\":[",
    b"\"seq\":",
    b"null",
    b"{}",
    b"[]",
];
const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1000_0000,
    u64::MAX,
    i64::MAX as u64,
];

/// One random change to `data`; `corpus` is for splicing.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let pos = |rng: &mut Rng, data: &Vec<u8>| rng.below(data.len() + 1);
    match rng.below(12) {
        // Flip a bit.
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        // Set a byte.
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = if rng.chance(2) {
                INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]
            } else {
                rng.next() as u8
            };
        }
        // Insert a few bytes.
        2 => {
            let i = pos(rng, data);
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let b = if rng.chance(2) {
                    INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]
                } else {
                    rng.next() as u8
                };
                data.insert(i, b);
            }
        }
        // Delete a range.
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(16));
            data.drain(i..i + n);
        }
        // Duplicate a range.
        4 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(64));
            let chunk: Vec<u8> = data[i..i + n].to_vec();
            let at = pos(rng, data);
            data.splice(at..at, chunk);
        }
        // Splice with another corpus entry.
        5 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = pos(rng, data);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Truncate.
        6 if !data.is_empty() => {
            let n = rng.below(data.len());
            data.truncate(n);
        }
        // Repeated brackets (bounded: see MAX_BRACKETS), sometimes closed.
        7 => {
            let (open, close) =
                [(b'(', b')'), (b'[', b']'), (b'{', b'}'), (b'"', b'"')][rng.below(4)];
            let n = 1 + rng.below(MAX_BRACKETS);
            let at = pos(rng, data);
            data.splice(at..at, std::iter::repeat_n(open, n));
            if rng.chance(2) {
                let end = pos(rng, data).max(at + n);
                data.splice(end..end, std::iter::repeat_n(close, n));
            }
        }
        // Insert a token.
        8 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            let at = pos(rng, data);
            data.splice(at..at, t.iter().copied());
        }
        // Overwrite with an interesting integer (little-endian, 1-8 bytes):
        // lengths, counts and varints of the binary formats.
        9 if !data.is_empty() => {
            let v = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())];
            let width = [1, 2, 4, 8][rng.below(4)];
            let i = rng.below(data.len());
            for (k, b) in v.to_le_bytes().iter().take(width).enumerate() {
                if let Some(slot) = data.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
        // Swap two bytes.
        10 if data.len() > 1 => {
            let (i, j) = (rng.below(data.len()), rng.below(data.len()));
            data.swap(i, j);
        }
        // Add or subtract a small number from a byte.
        _ if !data.is_empty() => {
            let i = rng.below(data.len());
            let d = 1 + rng.below(8) as u8;
            data[i] = if rng.chance(2) {
                data[i].wrapping_add(d)
            } else {
                data[i].wrapping_sub(d)
            };
        }
        _ => data.push(rng.next() as u8),
    }
    data.truncate(MAX_LEN);
}

fn read_corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

fn show(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let shown: String = text.chars().take(2000).collect();
    format!("{} bytes, {:?}", data.len(), shown)
}

/// Where inputs that panicked (and `STRATA_FUZZ_DUMP`ed ones) are written.
fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")
}

fn save(target: &str, name: &str, data: &[u8]) -> PathBuf {
    let dir = crash_dir().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Panics are expected inside some targets (the WAL codec turns arrow-ipc's
/// panics on damaged streams into errors): record the last one's message
/// instead of printing each, and report it if it escapes the target.
fn quiet_panics() {
    // Capturing a backtrace per panic is slow (the WAL codec sees thousands
    // of caught ones): only when asked.
    let backtrace = std::env::var_os("STRATA_FUZZ_BACKTRACE").is_some();
    std::panic::set_hook(Box::new(move |info| {
        let mut last = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner());
        *last = if backtrace {
            format!("{info}\n{}", std::backtrace::Backtrace::force_capture())
        } else {
            info.to_string()
        };
    }));
}

/// Runs `body` on `data`; on a panic, saves the input and fails the test
/// naming it.
fn run_one(target: &str, body: fn(&[u8]), data: &[u8], what: &dyn Fn() -> String) {
    if catch_unwind(AssertUnwindSafe(|| body(data))).is_err() {
        let path = save(target, &format!("crash-{:016x}", fnv(data)), data);
        let message = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = std::panic::take_hook();
        panic!(
            "fuzz target {target} panicked on {}: {message}\ninput {}, saved to {}\n(reproduce \
             with `cargo +nightly fuzz run {target} <file>` in fuzz/, see docs/fuzzing.md)",
            what(),
            show(data),
            path.display()
        );
    }
}

/// Runs a target on a thread with the stack of a tokio worker (2 MiB), where
/// the servers run these functions: the test thread's may be larger.
fn run_target(target: &str) {
    let name = target.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("fuzz-{target}"))
        .stack_size(WORKER_STACK)
        .spawn(move || run_target_here(&name))
        .unwrap();
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

fn run_target_here(target: &str) {
    let body = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    quiet_panics();
    let corpus = read_corpus(target);
    assert!(
        corpus.len() >= 3,
        "the corpus of {target} has {} files",
        corpus.len()
    );
    for (path, data) in &corpus {
        run_one(target, body, data, &|| path.display().to_string());
    }

    let seed = env_u64("STRATA_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let budget = env_u64("STRATA_FUZZ_SECONDS").map_or(BUDGET, Duration::from_secs);
    let max_inputs = env_u64("STRATA_FUZZ_INPUTS").map_or(MAX_INPUTS, |n| n as usize);
    // Writes mutation number N to a file before running it.
    let dump = env_u64("STRATA_FUZZ_DUMP");
    // Writes every input to `last-input` before running it: what an abort
    // (a failed allocation, a stack overflow) leaves to look at.
    let trace = std::env::var_os("STRATA_FUZZ_TRACE").is_some();
    // Each target gets its own stream, so a target's inputs do not depend on
    // the order the tests run in.
    let mut rng = Rng::new(seed ^ fnv(target.as_bytes()));
    let entries: Vec<Vec<u8>> = corpus.into_iter().map(|(_, d)| d).collect();
    let started = Instant::now();
    let mut current = Vec::new();
    let mut done = 0;
    while done < max_inputs && started.elapsed() < budget {
        // Mostly start again from a corpus entry; sometimes keep mutating
        // the last input, to wander further.
        if current.is_empty() || !rng.chance(4) {
            current = entries[rng.below(entries.len())].clone();
        }
        let steps = 1 + rng.below(4);
        for _ in 0..steps {
            mutate_once(&mut rng, &mut current, &entries);
        }
        if dump == Some(done as u64) {
            let path = save(target, &format!("mutation-{done}"), &current);
            println!(
                "fuzz target {target}: mutation {done} saved to {}",
                path.display()
            );
        }
        if trace {
            save(target, "last-input", &current);
        }
        run_one(target, body, &current, &|| {
            format!("mutation {done} (STRATA_FUZZ_SEED={seed})")
        });
        done += 1;
    }
    println!(
        "fuzz target {target}: {} corpus files, {done} mutations in {:.1?} (seed {seed})",
        entries.len(),
        started.elapsed()
    );
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn fuzz_line_protocol() {
    run_target("line_protocol");
}

#[test]
fn fuzz_remote_write() {
    run_target("remote_write");
}

#[test]
fn fuzz_remote_read() {
    run_target("remote_read");
}

#[test]
fn fuzz_promql() {
    run_target("promql");
}

#[test]
fn fuzz_sql() {
    run_target("sql");
}

#[test]
fn fuzz_wal_payload() {
    run_target("wal_payload");
}

#[test]
fn fuzz_wal_segment() {
    run_target("wal_segment");
}

#[test]
fn fuzz_manifest() {
    run_target("manifest");
}

/// Every target has a test above and a corpus; every corpus directory is a
/// target.
#[test]
fn fuzz_targets_all_listed() {
    let dirs: Vec<String> = std::fs::read_dir(corpus_root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (name, _) in TARGETS {
        assert!(dirs.iter().any(|d| d == name), "no corpus for {name}");
        let bin = corpus_root()
            .join("..")
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(bin.exists(), "no libFuzzer target {}", bin.display());
    }
    for d in &dirs {
        assert!(
            TARGETS.iter().any(|(name, _)| name == d),
            "corpus {d} has no target"
        );
    }
}

/// Regenerates the binary seeds (remote write/read, WAL, manifest) with
/// the crates' own encoders: `cargo nextest run --workspace --run-ignored
/// only -E 'test(fuzz_write_seeds)'`.
#[test]
#[ignore]
fn fuzz_write_seeds() {
    seeds::write_all(&corpus_root());
}

mod seeds {
    use std::{collections::BTreeMap, path::Path, sync::Arc};

    use arrow::{
        array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray},
        datatypes::{DataType, Field, Schema, TimeUnit},
    };
    use prost::Message;
    use strata_engine::{
        codec,
        manifest::{ManifestEdit, ManifestState},
    };
    use strata_server::{
        prom::{Label, RemoteWriteRequest, Sample, TimeSeries},
        prom_read::{LabelMatcher, Query, ReadRequest},
    };
    use strata_sst::{ColumnStats, SstId, SstInfo, TableId, TimeRange};

    fn put(root: &Path, target: &str, name: &str, data: &[u8]) {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }

    fn snappy(raw: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(raw).unwrap()
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            histograms: Vec::new(),
        }
    }

    fn write_request(ts: Vec<TimeSeries>) -> Vec<u8> {
        RemoteWriteRequest { timeseries: ts }.encode_to_vec()
    }

    fn matcher(t: i32, name: &str, value: &str) -> LabelMatcher {
        LabelMatcher {
            r#type: t,
            name: name.to_string(),
            value: value.to_string(),
        }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("value", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(TimestampMillisecondArray::from(vec![1, 2, 3])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.0)])),
                Arc::new(Int64Array::from(vec![Some(i64::MAX), Some(0), None])),
            ],
        )
        .unwrap()
    }

    fn sst(id: u64) -> SstInfo {
        SstInfo {
            id: SstId(id),
            path: format!("db/t/{id}.sst"),
            time_range: TimeRange::new(0, 3_600_000),
            segment_start: 0,
            max_seq: 42,
            rows: 1000,
            size_bytes: 65536,
            schema_version: 1,
            level: 0,
            column_stats: BTreeMap::from([(
                "host".to_string(),
                ColumnStats {
                    min: Some("a".into()),
                    max: Some("z".into()),
                    null_count: 0,
                },
            )]),
        }
    }

    pub fn write_all(root: &Path) {
        // Remote write.
        let one = write_request(vec![series(
            &[("__name__", "up"), ("job", "node"), ("instance", "a:9100")],
            &[(1_700_000_000_000, 1.0)],
        )]);
        put(root, "remote_write", "one_series", &snappy(&one));
        let many = write_request(vec![
            series(
                &[("__name__", "http_requests_total"), ("code", "200")],
                &[(1, 1.0), (2, 2.0), (3, f64::NAN)],
            ),
            series(&[("__name__", "temp"), ("room", "é")], &[(-5, -1e300)]),
            series(&[("__name__", "empty")], &[]),
        ]);
        put(root, "remote_write", "three_series", &snappy(&many));
        let dup = write_request(vec![series(
            &[("__name__", "x"), ("a", "1"), ("a", "2")],
            &[(1, 1.0)],
        )]);
        put(root, "remote_write", "repeated_label", &snappy(&dup));
        let noname = write_request(vec![series(&[("job", "x")], &[(1, 1.0)])]);
        put(root, "remote_write", "no_name", &snappy(&noname));
        put(root, "remote_write", "not_snappy", &one);
        put(root, "remote_write", "empty", b"");

        // Remote read.
        let read = |queries: Vec<Query>, types: Vec<i32>| {
            snappy(
                &ReadRequest {
                    queries,
                    accepted_response_types: types,
                }
                .encode_to_vec(),
            )
        };
        put(
            root,
            "remote_read",
            "eq",
            &read(
                vec![Query {
                    start_timestamp_ms: 0,
                    end_timestamp_ms: 3_600_000,
                    matchers: vec![matcher(0, "__name__", "up"), matcher(1, "job", "x")],
                }],
                vec![0],
            ),
        );
        put(
            root,
            "remote_read",
            "regex",
            &read(
                vec![
                    Query {
                        start_timestamp_ms: -1,
                        end_timestamp_ms: i64::MAX,
                        matchers: vec![
                            matcher(2, "job", "node|api.*"),
                            matcher(3, "env", "(dev|test)"),
                        ],
                    },
                    Query::default(),
                ],
                vec![],
            ),
        );
        put(
            root,
            "remote_read",
            "bad_regex",
            &read(
                vec![Query {
                    matchers: vec![matcher(2, "a", "(")],
                    ..Default::default()
                }],
                vec![0, 1],
            ),
        );
        put(
            root,
            "remote_read",
            "chunks_only",
            &read(vec![Query::default()], vec![1]),
        );
        put(root, "remote_read", "empty", b"");

        // WAL payloads.
        let write = codec::encode_write(TableId(7), 3, &batch()).unwrap();
        put(root, "wal_payload", "write", &write);
        put(root, "wal_payload", "fence", &codec::encode_fence(9));
        put(root, "wal_payload", "header_only", &write[..15]);
        put(root, "wal_payload", "truncated", &write[..write.len() / 2]);

        // WAL segments.
        use strata_wal::local::format::encode;
        let mut seg = Vec::new();
        encode(&mut seg, 10, 1, &write);
        encode(&mut seg, 11, 1, &codec::encode_fence(2));
        encode(&mut seg, 12, 2, b"not a payload");
        put(root, "wal_segment", "three_records", &seg);
        let mut torn = Vec::new();
        encode(&mut torn, 0, 1, b"hello");
        encode(&mut torn, 1, 1, &write);
        torn.truncate(torn.len() - 10);
        put(root, "wal_segment", "torn_tail", &torn);
        let mut gap = Vec::new();
        encode(&mut gap, 5, 1, b"a");
        encode(&mut gap, 7, 1, b"b");
        put(root, "wal_segment", "out_of_sequence", &gap);
        put(root, "wal_segment", "empty", b"");

        // Manifest objects.
        let edit = ManifestEdit {
            seq: 3,
            add: vec![sst(11), sst(12)],
            remove: vec![SstId(5)],
            flushed_offset: Some(100),
            epoch: 2,
            nonce: 0xdead_beef,
            shard: None,
            hand_over: None,
        };
        put(
            root,
            "manifest",
            "edit.json",
            &serde_json::to_vec(&edit).unwrap(),
        );
        put(
            root,
            "manifest",
            "empty_edit.json",
            &serde_json::to_vec(&ManifestEdit {
                seq: 1,
                epoch: 1,
                ..Default::default()
            })
            .unwrap(),
        );
        put(
            root,
            "manifest",
            "legacy_edit.json",
            br#"{"seq":2,"add":[],"remove":[]}"#,
        );
        let mut state = ManifestState {
            table: TableId(7),
            ..Default::default()
        };
        state.apply(&edit);
        put(
            root,
            "manifest",
            "snapshot.json",
            &serde_json::to_vec(&state).unwrap(),
        );
        put(root, "manifest", "not_json", b"{\"seq\": ");
    }
}
