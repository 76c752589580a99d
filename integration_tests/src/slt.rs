//! Running sqllogictest files against a real Strata process over gRPC.

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use strata_client::{Client, SqlOutput};

/// A sqllogictest connection: the gRPC client plus the current database.
pub struct StrataDb {
    client: Client,
    database: String,
    /// Sent before every statement, in the same request.
    prefix: &'static str,
}

impl StrataDb {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            database: "public".to_string(),
            prefix: "",
        }
    }

    /// Every request starts with `SET read_preference = 'follower'`: its
    /// reads of tables whose shards the instance follows are served by
    /// the followers.
    pub fn reading_followers(mut self) -> Self {
        self.prefix = "SET read_preference = 'follower';\n";
        self
    }
}

fn is_explain(batches: &[arrow::record_batch::RecordBatch]) -> bool {
    batches.first().is_some_and(|b| {
        let s = b.schema();
        s.fields().len() == 2 && s.field(0).name() == "plan_type" && s.field(1).name() == "plan"
    })
}

/// EXPLAIN output, one row per plan line, numbered, with indentation shown
/// as dashes (DataFusion's sqllogictest convention), so plans diff well.
fn explain_rows(batches: &[arrow::record_batch::RecordBatch]) -> DBOutput<DefaultColumnType> {
    let mut rows = Vec::new();
    for row in crate::rows_as_strings(batches) {
        rows.push(vec![row[0].clone()]);
        for (i, line) in row[1].lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let indent = line.len() - line.trim_start().len();
            let line = mask_sst_ids(line.trim_start());
            rows.push(vec![format!("{:02}){}{}", i + 1, "-".repeat(indent), line)]);
        }
    }
    DBOutput::Rows {
        types: vec![DefaultColumnType::Text],
        rows,
    }
}

fn is_analyze(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    words == ["explain", "analyze"]
}

/// Metrics that do not depend on timing or machine: pruning counts and rows.
const STABLE_METRICS: &[&str] = &[
    "output_rows",
    "ssts_total",
    "ssts_pruned_by_time",
    "ssts_pruned_by_stats",
    "ssts_scanned",
    "memtables_scanned",
    "duplicates_removed",
    "files_ranges_pruned_statistics",
    "row_groups_pruned_statistics",
    "row_groups_pruned_bloom_filter",
    "page_index_rows_pruned",
];

/// EXPLAIN ANALYZE output reduced to what is deterministic: one row per
/// scan operator (Strata's scan, dedup, and the Parquet scan), with only the
/// pruning and row-count metrics, in name order.
fn analyze_rows(batches: &[arrow::record_batch::RecordBatch]) -> DBOutput<DefaultColumnType> {
    let mut rows = Vec::new();
    for row in crate::rows_as_strings(batches) {
        for line in row[1].lines() {
            let line = line.trim();
            let name = line.split([':', ',']).next().unwrap_or("");
            let keep = match name {
                "StrataScanExec" | "DedupExec" => true,
                "DataSourceExec" => line.contains("file_type=parquet"),
                _ => false,
            };
            if !keep {
                continue;
            }
            let metrics = line
                .rfind("metrics=[")
                .map(|i| &line[i + 9..line.len().saturating_sub(1)])
                .unwrap_or("");
            let mut kept: Vec<&str> = metrics
                .split(", ")
                .filter(|m| {
                    m.split('=')
                        .next()
                        .is_some_and(|k| STABLE_METRICS.contains(&k))
                })
                .collect();
            kept.sort();
            rows.push(vec![format!("{name}: {}", kept.join(", "))]);
        }
    }
    DBOutput::Rows {
        types: vec![DefaultColumnType::Text],
        rows,
    }
}

/// SST file names are random ids, and their directories name the cluster
/// and shard (which differ between standalone and cluster runs): plans show
/// them as `<table dir>/sst/<id>`.
fn mask_sst_ids(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("/sst/") {
        let start = rest[..i].rfind(['[', ' ', ',', '=']).map_or(0, |p| p + 1);
        out.push_str(&rest[..start]);
        out.push_str("<table dir>/sst/");
        rest = &rest[i + 5..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(".parquet") {
            out.push_str("<id>");
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

fn column_type(t: &arrow::datatypes::DataType) -> DefaultColumnType {
    use arrow::datatypes::DataType::*;
    match t {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => {
            DefaultColumnType::Integer
        }
        Float16 | Float32 | Float64 | Decimal128(..) | Decimal256(..) => {
            DefaultColumnType::FloatingPoint
        }
        _ => DefaultColumnType::Text,
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for StrataDb {
    type Error = strata_client::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Self::Error> {
        // An empty request stays empty (it is refused as such).
        let empty = sql.trim().trim_matches(';').trim().is_empty();
        let out = if self.prefix.is_empty() || empty {
            self.client.sql(&self.database, sql).await?
        } else {
            self.client
                .sql(&self.database, &format!("{}{sql}", self.prefix))
                .await?
        };
        let trimmed = sql.trim().trim_end_matches(';');
        let mut words = trimmed.split_whitespace();
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("use")) {
            if let Some(db) = words.next() {
                self.database = if db.starts_with(['`', '"']) {
                    db.trim_matches(['`', '"']).to_string()
                } else {
                    db.to_lowercase()
                };
            }
        }
        Ok(match out {
            SqlOutput::AffectedRows(n) => DBOutput::StatementComplete(u64::from(n)),
            SqlOutput::Rows(batches) if is_explain(&batches) && is_analyze(sql) => {
                analyze_rows(&batches)
            }
            SqlOutput::Rows(batches) if is_explain(&batches) => explain_rows(&batches),
            SqlOutput::Rows(batches) => {
                let types = batches
                    .first()
                    .map(|b| {
                        b.schema()
                            .fields()
                            .iter()
                            .map(|f| column_type(f.data_type()))
                            .collect()
                    })
                    .unwrap_or_default();
                let rows = crate::rows_as_strings(&batches)
                    .into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|v| {
                                if v.is_empty() {
                                    "(empty)".to_string()
                                } else {
                                    v
                                }
                            })
                            .collect()
                    })
                    .collect();
                DBOutput::Rows { types, rows }
            }
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "strata"
    }
}
