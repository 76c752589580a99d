//! InfluxDB line protocol: parsing, and turning a batch into writes
//! (Arrow batches built straight from the lines, in [`rows`]).
//!
//! ```text
//! measurement[,tag=value…] field=value[,field=value…] [timestamp]
//! ```
//!
//! A measurement is a table, tags are `STRING TAG` columns, fields are
//! columns typed by their values (`1.5` DOUBLE, `1i` BIGINT, `1u` BIGINT
//! UNSIGNED, `"s"` STRING, `t`/`false` BOOLEAN), and the timestamp goes to
//! the table's timestamp key (`timestamp` in tables created by a write).
//! Strata stores milliseconds: finer timestamps are truncated.
//!
//! A batch is checked whole before anything is written: if any line is
//! malformed, or a value does not fit its column's type, the request fails
//! with 400 naming every such line, and no line of the batch is written.

use std::borrow::Cow;
use std::collections::BTreeMap;

mod rows;

pub use self::rows::{by_measurement, schema_for_new_table, timestamps, to_batch, write};

/// A field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Str(String),
    Bool(bool),
}

impl FieldValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Float(_) => "float",
            FieldValue::Int(_) => "integer",
            FieldValue::UInt(_) => "unsigned",
            FieldValue::Str(_) => "string",
            FieldValue::Bool(_) => "boolean",
        }
    }
}

/// One parsed line.
/// Names and tag values borrow from the request body unless they hold
/// escapes, so parsing allocates little per line.
#[derive(Clone, Debug, PartialEq)]
pub struct Point<'a> {
    /// 1-based line number in the request body.
    pub line: usize,
    pub measurement: Cow<'a, str>,
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub fields: Vec<(Cow<'a, str>, FieldValue)>,
    /// In the request's precision; `None` means "now".
    pub timestamp: Option<i64>,
}

/// A line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Timestamp precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Nanos,
    Micros,
    Millis,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// Parses InfluxDB's names (`ns`, `n`, `us`, `u`, `µs`, `ms`, `s`, and
    /// in v1 `m` and `h`); `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "ns" | "n" => Precision::Nanos,
            "us" | "u" | "µs" => Precision::Micros,
            "ms" => Precision::Millis,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            _ => return None,
        })
    }

    /// Milliseconds since the epoch (truncated towards negative infinity).
    pub fn to_millis(self, t: i64) -> Option<i64> {
        match self {
            Precision::Nanos => Some(t.div_euclid(1_000_000)),
            Precision::Micros => Some(t.div_euclid(1_000)),
            Precision::Millis => Some(t),
            Precision::Seconds => t.checked_mul(1_000),
            Precision::Minutes => t.checked_mul(60_000),
            Precision::Hours => t.checked_mul(3_600_000),
        }
    }
}

/// Splits at the first unescaped, unquoted occurrence of any of `stops`
/// (ASCII). Returns (before, the stop found, after). Scans bytes: in UTF-8
/// no byte of a multi-byte character is ASCII, so this is exact.
fn split_unescaped<'a>(s: &'a str, stops: &[u8], quotes: bool) -> (&'a str, Option<char>, &'a str) {
    let bytes = s.as_bytes();
    let mut escaped = false;
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        if b == b'\\' {
            escaped = true;
            continue;
        }
        if quotes && b == b'"' {
            quoted = !quoted;
            continue;
        }
        if !quoted && stops.contains(&b) {
            return (&s[..i], Some(b as char), &s[i + 1..]);
        }
    }
    (s, None, "")
}

/// Removes backslash escapes of `chars` (and of the backslash itself);
/// borrows when there is none.
fn unescape<'a>(s: &'a str, chars: &[char]) -> Cow<'a, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(&n) = it.peek() {
                if chars.contains(&n) || n == '\\' {
                    out.push(n);
                    it.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    Cow::Owned(out)
}

fn parse_field_value(raw: &str) -> Result<FieldValue, String> {
    if raw.is_empty() {
        return Err("a field has no value".to_string());
    }
    if let Some(body) = raw.strip_prefix('"') {
        let Some(inner) = body.strip_suffix('"') else {
            return Err(format!("unterminated string value {raw}"));
        };
        return Ok(FieldValue::Str(unescape(inner, &['"']).into_owned()));
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(n) = raw.strip_suffix('i') {
        return n
            .parse::<i64>()
            .map(FieldValue::Int)
            .map_err(|_| format!("invalid integer value {raw}"));
    }
    if let Some(n) = raw.strip_suffix('u') {
        return n
            .parse::<u64>()
            .map(FieldValue::UInt)
            .map_err(|_| format!("invalid unsigned value {raw}"));
    }
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(FieldValue::Float(v)),
        _ => Err(format!("invalid field value {raw}")),
    }
}

fn parse_line(line: &str, number: usize) -> Result<Point<'_>, String> {
    // measurement and tags | fields | timestamp, separated by unescaped
    // spaces (spaces inside quoted string fields do not count).
    let (series, sep, rest) = split_unescaped(line, b" ", false);
    if sep.is_none() {
        return Err("a line needs a measurement and at least one field".to_string());
    }
    let rest = rest.trim_start_matches(' ');
    let (fields_raw, _, ts_raw) = split_unescaped(rest, b" ", true);
    let ts_raw = ts_raw.trim();

    let (measurement_raw, _, mut tags_raw) = split_unescaped(series, b",", false);
    if measurement_raw.is_empty() {
        return Err("the measurement name is empty".to_string());
    }
    let measurement = unescape(measurement_raw, &[',', ' ']);
    let mut tags = Vec::new();
    while !tags_raw.is_empty() {
        let (pair, _, next) = split_unescaped(tags_raw, b",", false);
        let (k, eq, v) = split_unescaped(pair, b"=", false);
        if eq.is_none() || k.is_empty() || v.is_empty() {
            return Err(format!("invalid tag `{pair}`: expected key=value"));
        }
        tags.push((unescape(k, &[',', '=', ' ']), unescape(v, &[',', '=', ' '])));
        tags_raw = next;
    }

    let mut fields = Vec::new();
    let mut fields_rest = fields_raw;
    if fields_rest.is_empty() {
        return Err("a line needs at least one field".to_string());
    }
    while !fields_rest.is_empty() {
        let (pair, _, next) = split_unescaped(fields_rest, b",", true);
        let (k, eq, v) = split_unescaped(pair, b"=", true);
        if eq.is_none() || k.is_empty() {
            return Err(format!("invalid field `{pair}`: expected key=value"));
        }
        let value = parse_field_value(v).map_err(|e| format!("field {k}: {e}"))?;
        fields.push((unescape(k, &[',', '=', ' ']), value));
        fields_rest = next;
    }
    let timestamp = if ts_raw.is_empty() {
        None
    } else {
        Some(
            ts_raw
                .parse::<i64>()
                .map_err(|_| format!("invalid timestamp {ts_raw}"))?,
        )
    };
    Ok(Point {
        line: number,
        measurement,
        tags,
        fields,
        timestamp,
    })
}

/// Parses a body. Blank lines and `#` comments are skipped. Returns the
/// points of the good lines and the errors of the bad ones.
pub fn parse_lines(body: &str) -> (Vec<Point<'_>>, Vec<LineError>) {
    let mut points = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim_end_matches('\r').trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line, i + 1) {
            Ok(p) => points.push(p),
            Err(reason) => errors.push(LineError {
                line: i + 1,
                reason,
            }),
        }
    }
    (points, errors)
}

/// Parses a body: every point, or every line that failed.
pub fn parse(body: &str) -> Result<Vec<Point<'_>>, Vec<LineError>> {
    let (points, errors) = parse_lines(body);
    if errors.is_empty() {
        Ok(points)
    } else {
        Err(errors)
    }
}

/// Whether a value fits a column of type `t` (as the write path converts:
/// integers into any integer column they fit, or a DOUBLE below 2^53).
pub fn fits(v: &FieldValue, t: strata_engine::schema::ColumnType) -> bool {
    use strata_engine::schema::ColumnType as T;
    let int = |x: i128| match t {
        T::Int64 => i64::try_from(x).is_ok(),
        T::Int32 => i32::try_from(x).is_ok(),
        T::Int16 => i16::try_from(x).is_ok(),
        T::Int8 => i8::try_from(x).is_ok(),
        T::UInt64 => u64::try_from(x).is_ok(),
        T::UInt32 => u32::try_from(x).is_ok(),
        T::UInt16 => u16::try_from(x).is_ok(),
        T::UInt8 => u8::try_from(x).is_ok(),
        T::Double => x.unsigned_abs() < (1u128 << 53),
        _ => false,
    };
    match v {
        FieldValue::Float(_) => t == T::Double,
        FieldValue::Int(x) => int(i128::from(*x)),
        FieldValue::UInt(x) => int(i128::from(*x)),
        FieldValue::Str(_) => matches!(t, T::String | T::Varbinary),
        FieldValue::Bool(_) => t == T::Boolean,
    }
}

/// The column type a new field takes from its first value.
pub fn column_type_of(v: &FieldValue) -> strata_engine::schema::ColumnType {
    use strata_engine::schema::ColumnType as T;
    match v {
        FieldValue::Float(_) => T::Double,
        FieldValue::Int(_) => T::Int64,
        FieldValue::UInt(_) => T::UInt64,
        FieldValue::Str(_) => T::String,
        FieldValue::Bool(_) => T::Boolean,
    }
}

/// The columns a batch adds to existing tables, per table; or the lines
/// whose values do not fit their columns (or conflict with another line of
/// the batch), or would take a table past
/// [`MAX_COLUMNS`](strata_engine::schema::MAX_COLUMNS). Nothing is changed.
/// Each name is looked up in a map: a batch costs time linear in its size,
/// whatever the width of its tables.
pub fn plan_columns(
    engine: &strata_engine::Engine,
    database: &str,
    points: &[Point<'_>],
) -> Result<BTreeMap<String, Vec<strata_engine::schema::ColumnSchema>>, Vec<LineError>> {
    use std::collections::HashMap;
    use strata_engine::schema::{ColumnSchema, ColumnType, MAX_COLUMNS};
    /// One existing table the batch writes to.
    struct Plan {
        /// Its columns: name -> (is a tag, type).
        columns: HashMap<String, (bool, ColumnType)>,
        /// The columns the batch adds, and where each is in `new`.
        new: Vec<ColumnSchema>,
        new_index: HashMap<String, usize>,
    }
    impl Plan {
        fn find(&self, name: &str) -> Option<(bool, ColumnType)> {
            self.columns.get(name).copied().or_else(|| {
                self.new_index
                    .get(name)
                    .map(|&i| (self.new[i].is_tag, self.new[i].column_type))
            })
        }
        /// Adds a column; false when the table would be too wide.
        fn add(&mut self, name: &str, column_type: ColumnType, is_tag: bool) -> bool {
            if self.columns.len() + self.new.len() >= MAX_COLUMNS {
                return false;
            }
            self.new_index.insert(name.to_string(), self.new.len());
            self.new.push(ColumnSchema {
                name: name.to_string(),
                column_type,
                is_tag,
                nullable: true,
                comment: String::new(),
            });
            true
        }
    }
    let mut plans: HashMap<&str, Option<Plan>> = HashMap::new();
    let mut errors = Vec::new();
    for p in points {
        // One catalog lookup per measurement, not per line.
        let plan = plans.entry(p.measurement.as_ref()).or_insert_with(|| {
            engine
                .entry(database, &p.measurement)
                .ok()
                .map(|entry| Plan {
                    columns: entry
                        .schema
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), (c.is_tag, c.column_type)))
                        .collect(),
                    new: Vec::new(),
                    new_index: HashMap::new(),
                })
        });
        let Some(plan) = plan.as_mut() else {
            // A new table: created from the batch by the write path.
            continue;
        };
        let mut fail = |reason: String| {
            errors.push(LineError {
                line: p.line,
                reason,
            })
        };
        let too_wide = |k: &str| {
            format!(
                "adding {k} would give {} more than {MAX_COLUMNS} columns",
                p.measurement
            )
        };
        for (k, _) in &p.tags {
            match plan.find(k) {
                Some((true, _)) => {}
                Some((false, _)) if plan.columns.contains_key(k.as_ref()) => {
                    fail(format!("{k} is a field of {}, not a tag", p.measurement))
                }
                // A name this batch adds as a field is left to the write.
                Some((false, _)) => {}
                None => {
                    if !plan.add(k, ColumnType::String, true) {
                        fail(too_wide(k));
                    }
                }
            }
        }
        for (k, v) in &p.fields {
            match plan.find(k) {
                Some((true, _)) => fail(format!("{k} is a tag of {}, not a field", p.measurement)),
                Some((false, t)) if !fits(v, t) => fail(format!(
                    "field {k} is {}, but column {k} of {} is {}",
                    v.type_name(),
                    p.measurement,
                    t
                )),
                Some(_) => {}
                None => {
                    if !plan.add(k, column_type_of(v), false) {
                        fail(too_wide(k));
                    }
                }
            }
        }
    }
    let added: BTreeMap<String, Vec<ColumnSchema>> = plans
        .into_iter()
        .filter_map(|(m, plan)| Some((m.to_string(), plan?.new)))
        .filter(|(_, cols)| !cols.is_empty())
        .collect();
    if errors.is_empty() {
        Ok(added)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_protocol_with_escapes_types_and_comments() {
        let body = "# a comment\n\
            cpu,host=a,region=us\\ west usage=0.5,count=3i,big=7u,ok=t,msg=\"hi, \\\"you\\\" there\" 1700000000000000000\n\
            \n\
            my\\,m,tag\\=k=v\\,x f=-1.5e3\n";
        let points = parse(body).unwrap();
        assert_eq!(points.len(), 2);
        let p = &points[0];
        assert_eq!(p.line, 2);
        assert_eq!(p.measurement, "cpu");
        let owned = |t: &[(Cow<'_, str>, Cow<'_, str>)]| -> Vec<(String, String)> {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let owned_fields = |f: &[(Cow<'_, str>, FieldValue)]| -> Vec<(String, FieldValue)> {
            f.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        assert_eq!(
            owned(&p.tags),
            vec![
                ("host".to_string(), "a".to_string()),
                ("region".to_string(), "us west".to_string())
            ]
        );
        assert_eq!(
            owned_fields(&p.fields),
            vec![
                ("usage".to_string(), FieldValue::Float(0.5)),
                ("count".to_string(), FieldValue::Int(3)),
                ("big".to_string(), FieldValue::UInt(7)),
                ("ok".to_string(), FieldValue::Bool(true)),
                (
                    "msg".to_string(),
                    FieldValue::Str("hi, \"you\" there".to_string())
                ),
            ]
        );
        assert_eq!(p.timestamp, Some(1_700_000_000_000_000_000));
        let q = &points[1];
        assert_eq!(q.measurement, "my,m");
        assert_eq!(
            owned(&q.tags),
            vec![("tag=k".to_string(), "v,x".to_string())]
        );
        assert_eq!(
            owned_fields(&q.fields),
            vec![("f".to_string(), FieldValue::Float(-1500.0))]
        );
        assert_eq!(q.timestamp, None);
    }

    #[test]
    fn names_every_bad_line() {
        let body = "ok v=1\nnofields\ncpu v=abc\ncpu v=1 notatime\ncpu,bad v=1\ncpu v=\"open\n";
        let errors = parse(body).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6]);
        assert!(
            errors[1].reason.contains("invalid field value abc"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].reason.contains("invalid timestamp"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn precision_converts_to_milliseconds() {
        assert_eq!(
            Precision::parse("ns").unwrap().to_millis(1_500_000_999),
            Some(1_500)
        );
        assert_eq!(
            Precision::parse("u").unwrap().to_millis(2_000_500),
            Some(2_000)
        );
        assert_eq!(Precision::parse("s").unwrap().to_millis(3), Some(3_000));
        assert_eq!(Precision::parse("h").unwrap().to_millis(1), Some(3_600_000));
        assert_eq!(Precision::parse("ns").unwrap().to_millis(-1), Some(-1));
        assert!(Precision::parse("weeks").is_none());
        assert!(Precision::Seconds.to_millis(i64::MAX).is_none());
    }

    #[test]
    fn groups_points_into_tables_with_the_columns_a_first_write_creates() {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Float64Type, Int64Type};
        use strata_engine::schema::ColumnType;
        let points =
            parse("a,h=x v=1 1000\na,h=x v=2 2000\na,h=y v=3,w=4i 3000\nb f=1 4000\n").unwrap();
        let times = timestamps(&points, Precision::Millis, 0).unwrap();
        let tables = by_measurement(&points, &times);
        assert_eq!(tables.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        let a = &tables["a"];
        let schema = schema_for_new_table(a).unwrap();
        let columns: Vec<(&str, ColumnType, bool)> = schema
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.column_type, c.is_tag))
            .collect();
        assert_eq!(
            columns,
            [
                ("h", ColumnType::String, true),
                ("v", ColumnType::Double, false),
                ("w", ColumnType::Int64, false),
                ("timestamp", ColumnType::Timestamp, false),
            ]
        );
        let batch = to_batch("a", &schema, schema.arrow_schema(), a, 64 << 20).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let v = batch.column(1).as_primitive::<Float64Type>();
        assert_eq!(v.values(), &[1.0, 2.0, 3.0]);
        let w = batch.column(2).as_primitive::<Int64Type>();
        assert_eq!((w.null_count(), w.value(2)), (2, 4));
    }

    #[test]
    fn a_first_write_types_a_field_by_its_first_value_in_series_order() {
        // Series (h=a) sorts before (h=b): v is DOUBLE, and 1i fits it.
        let points = parse("m,h=b v=1i 1\nm,h=a v=0.5 2\n").unwrap();
        let times = timestamps(&points, Precision::Millis, 0).unwrap();
        let tables = by_measurement(&points, &times);
        let schema = schema_for_new_table(&tables["m"]).unwrap();
        assert_eq!(
            schema.column("v").unwrap().column_type,
            strata_engine::schema::ColumnType::Double
        );
        to_batch("m", &schema, schema.arrow_schema(), &tables["m"], 64 << 20).unwrap();
        // A value that does not fit is named with its table and column.
        let points = parse("m,h=a v=1i 1\nm,h=b v=0.5 2\n").unwrap();
        let times = timestamps(&points, Precision::Millis, 0).unwrap();
        let tables = by_measurement(&points, &times);
        let schema = schema_for_new_table(&tables["m"]).unwrap();
        let err =
            to_batch("m", &schema, schema.arrow_schema(), &tables["m"], 64 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid write to table m: column v expects BIGINT, got a double value"
        );
        // A field named like the timestamp column moves it aside.
        let points = parse("m timestamp=1i 1\n").unwrap();
        let times = timestamps(&points, Precision::Millis, 0).unwrap();
        let schema = schema_for_new_table(&by_measurement(&points, &times)["m"]).unwrap();
        assert_eq!(schema.timestamp_column().name, "__timestamp");
    }

    #[test]
    fn an_out_of_range_timestamp_names_its_line() {
        let points = parse("m v=1 1\nm v=2 9223372036854775807\n").unwrap();
        let errors = timestamps(&points, Precision::Seconds, 0).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
    }
}
