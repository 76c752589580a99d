//! Line protocol into Arrow: each measurement's points become one batch in
//! its table's columns, built straight from the parsed lines (no value per
//! cell in between), and are written through the write path
//! ([`crate::writer::write_batches`]): here when the table's shard is open
//! here, else forwarded to its leader as `WriteArrow`.
//!
//! The rules are those of a HoraeDB-style write of the same points: a table
//! created by its first write has its tags (STRING) in order of first
//! appearance, then its fields typed by their first value (in the order of
//! the series' tag values, then of the lines), then a `timestamp` column
//! (`__timestamp` if a tag or field is named `timestamp`). A line naming a
//! tag twice keeps the smallest value; a line naming a field twice keeps
//! the last. A field named like the timestamp column is ignored. Of two
//! lines with the same primary key the later in series order is kept.

use std::collections::{BTreeMap, HashMap};

use arrow::{array::RecordBatch, datatypes::SchemaRef};
use strata_engine::schema::{ColumnSchema, ColumnType, TableSchema};

use super::{FieldValue, LineError, Point, Precision};
use crate::{
    error::{Error, Result},
    sql::QueryEngine,
    writer::{
        columns::{BatchBuilder, ColumnBuilder},
        columns_of, table_for_write, Forward,
    },
};

/// The name a value's type has in write errors (as gRPC writes name them).
fn value_type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Float(_) => "double",
        FieldValue::Int(_) => "int64",
        FieldValue::UInt(_) => "uint64",
        FieldValue::Str(_) => "string",
        FieldValue::Bool(_) => "boolean",
    }
}

/// Appends a field's value by the write path's type rules.
fn append(b: &mut ColumnBuilder, v: &FieldValue) -> bool {
    match v {
        FieldValue::Float(x) => b.append_f64(*x),
        FieldValue::Int(x) => b.append_int(i128::from(*x), true),
        FieldValue::UInt(x) => b.append_int(i128::from(*x), false),
        FieldValue::Str(s) => b.append_str(s),
        FieldValue::Bool(x) => b.append_bool(*x),
    }
}

/// Every point's time in milliseconds (`now_ms` for a point without one);
/// or the lines whose timestamps overflow.
pub fn timestamps(
    points: &[Point<'_>],
    precision: Precision,
    now_ms: i64,
) -> Result<Vec<i64>, Vec<LineError>> {
    let mut errors = Vec::new();
    let times = points
        .iter()
        .map(|p| match p.timestamp {
            None => now_ms,
            Some(t) => precision.to_millis(t).unwrap_or_else(|| {
                errors.push(LineError {
                    line: p.line,
                    reason: format!("timestamp {t} is out of range"),
                });
                0
            }),
        })
        .collect();
    if errors.is_empty() {
        Ok(times)
    } else {
        Err(errors)
    }
}

/// The points of each measurement, with their times, in line order.
pub fn by_measurement<'p, 'a>(
    points: &'p [Point<'a>],
    times: &[i64],
) -> BTreeMap<&'p str, Vec<(&'p Point<'a>, i64)>> {
    let mut tables: BTreeMap<&str, Vec<(&Point<'a>, i64)>> = BTreeMap::new();
    for (p, &t) in points.iter().zip(times) {
        tables
            .entry(p.measurement.as_ref())
            .or_default()
            .push((p, t));
    }
    tables
}

/// Names in order of first appearance.
fn first_seen<'p>(names: impl Iterator<Item = &'p str>) -> Vec<&'p str> {
    let mut seen = std::collections::HashSet::new();
    names.filter(|n| seen.insert(*n)).collect()
}

/// The points in the order a HoraeDB-style write of them has: by series
/// (its tag values, tags in order of first appearance, one value per tag:
/// the smallest), then by line. Of two rows with the same primary key the
/// later one is kept, so a table whose key leaves out a tag keeps the row
/// this order puts last.
fn in_series_order<'p, 'a>(points: &[(&'p Point<'a>, i64)]) -> Vec<(&'p Point<'a>, i64)> {
    let tags = first_seen(
        points
            .iter()
            .flat_map(|(p, _)| p.tags.iter().map(|(k, _)| k.as_ref())),
    );
    let position: HashMap<&str, usize> = tags.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let series_key = |p: &Point<'_>| -> Vec<(usize, String)> {
        let mut key: Vec<(usize, String)> = p
            .tags
            .iter()
            .filter_map(|(k, v)| Some((*position.get(k.as_ref())?, v.to_string())))
            .collect();
        key.sort();
        key.dedup_by(|a, b| a.0 == b.0);
        key
    };
    type Keyed<'p, 'a> = (Vec<(usize, String)>, (&'p Point<'a>, i64));
    let mut keyed: Vec<Keyed<'p, 'a>> = points
        .iter()
        .map(|&(p, t)| (series_key(p), (p, t)))
        .collect();
    // Stable: lines of one series keep their order.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// The schema of a table created by the write of `points` (see the module
/// documentation for the rules).
pub fn schema_for_new_table(points: &[(&Point<'_>, i64)]) -> Result<TableSchema> {
    let tags = first_seen(
        points
            .iter()
            .flat_map(|(p, _)| p.tags.iter().map(|(k, _)| k.as_ref())),
    );
    let fields = first_seen(
        points
            .iter()
            .flat_map(|(p, _)| p.fields.iter().map(|(k, _)| k.as_ref())),
    );
    // Counted before a column is built: a request can name millions.
    let width = tags.len() + fields.len() + 1;
    if width > strata_engine::schema::MAX_COLUMNS {
        return Err(strata_engine::schema::too_many_columns(width).into());
    }
    // A field's type is its first value in series order.
    let mut types: HashMap<&str, ColumnType> = HashMap::new();
    for (p, _) in in_series_order(points) {
        for (k, v) in &p.fields {
            types
                .entry(k.as_ref())
                .or_insert_with(|| super::column_type_of(v));
        }
    }
    let column = |name: &str, column_type, is_tag| ColumnSchema {
        name: name.to_string(),
        column_type,
        is_tag,
        nullable: true,
        comment: String::new(),
    };
    let mut columns: Vec<ColumnSchema> = tags
        .iter()
        .map(|t| column(t, ColumnType::String, true))
        .collect();
    columns.extend(fields.iter().map(|f| {
        column(
            f,
            types.get(f).copied().unwrap_or(ColumnType::Double),
            false,
        )
    }));
    let ts = if columns.iter().any(|c| c.name == "timestamp") {
        "__timestamp"
    } else {
        "timestamp"
    };
    columns.push(ColumnSchema {
        nullable: false,
        ..column(ts, ColumnType::Timestamp, false)
    });
    Ok(TableSchema::try_new(columns, ts, &[])?)
}

/// A cell of a row being built: a tag's value or a field's.
#[derive(Clone, Copy)]
enum Cell<'p> {
    Tag(&'p str),
    Field(&'p FieldValue),
}

/// One measurement's points as a batch in `schema`'s columns (`arrow` is
/// its Arrow form). Fails, naming the table, on a tag or field the table
/// does not have, a value that does not fit its column, or a missing value
/// of a column that is not nullable.
pub fn to_batch(
    table: &str,
    schema: &TableSchema,
    arrow: SchemaRef,
    points: &[(&Point<'_>, i64)],
    max_decoded: usize,
) -> Result<RecordBatch> {
    let invalid = |reason: String| {
        Error::InvalidArgument(format!("Invalid write to table {table}: {reason}"))
    };
    let index: HashMap<&str, usize> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let resolve = |name: &str| {
        index
            .get(name)
            .copied()
            .ok_or_else(|| invalid(format!("column {name} does not exist")))
    };
    // Every name is checked before any row is built, tags first.
    for name in first_seen(
        points
            .iter()
            .flat_map(|(p, _)| p.tags.iter().map(|(k, _)| k.as_ref())),
    ) {
        resolve(name)?;
    }
    for name in first_seen(
        points
            .iter()
            .flat_map(|(p, _)| p.fields.iter().map(|(k, _)| k.as_ref())),
    ) {
        resolve(name)?;
    }
    let mut batch = BatchBuilder::new(schema, points.len(), max_decoded)?;
    let mut row: Vec<Option<Cell<'_>>> = vec![None; schema.columns.len()];
    for (p, time) in points {
        row.iter_mut().for_each(|c| *c = None);
        for (k, v) in &p.tags {
            let col = resolve(k)?;
            // A tag named twice keeps its smallest value.
            match row[col] {
                Some(Cell::Tag(old)) if old <= v.as_ref() => {}
                _ => row[col] = Some(Cell::Tag(v.as_ref())),
            }
        }
        for (k, v) in &p.fields {
            row[resolve(k)?] = Some(Cell::Field(v));
        }
        batch
            .append_row(
                *time,
                &row,
                |b, cell| match cell {
                    Cell::Tag(s) => b.append_str(s),
                    Cell::Field(v) => append(b, v),
                },
                |cell| match cell {
                    Cell::Tag(_) => "string",
                    Cell::Field(v) => value_type_name(v),
                },
            )
            .map_err(invalid)?;
    }
    batch.finish(arrow).map_err(|e| invalid(e.to_string()))
}

/// Writes parsed, checked points into database `db`: creates the tables
/// that do not exist (with `auto_create`), builds each table's batch and
/// writes them all through the write path. A table or column added
/// through another instance a moment ago is found by refreshing the
/// catalog once.
pub async fn write(
    query: &QueryEngine,
    db: &str,
    points: &[Point<'_>],
    times: &[i64],
    auto_create: bool,
    max_decoded: usize,
) -> Result<u64> {
    let engine = query.engine();
    let router = query.router();
    let mut batches = Vec::new();
    for (table, points) in by_measurement(points, times) {
        if table.is_empty() {
            return Err(Error::InvalidArgument("a write names no table".to_string()));
        }
        // Whether the batch was checked against this table's columns
        // (`plan_columns`) or built them: a table another instance created
        // a moment ago is found only by the refresh below.
        let mut checked = engine.entry(db, table).is_ok();
        if !checked {
            router.refresh_catalog().await?;
        }
        let resolved = table_for_write(
            query,
            db,
            table,
            auto_create.then_some(|| schema_for_new_table(&points)),
        )
        .await?;
        checked |= resolved.created;
        let (schema, arrow) = (resolved.schema, resolved.arrow);
        // With the default primary key (every tag, then the time) two
        // checked rows share a key only within one series, whose lines keep
        // their order either way; otherwise the series order decides which
        // row is kept, as it did.
        let points = if schema.has_default_primary_key() && checked {
            points
        } else {
            in_series_order(&points)
        };
        let batch = match to_batch(table, &schema, arrow, &points, max_decoded) {
            Ok(b) => b,
            // A column added through another instance a moment ago (its
            // write was forwarded here before this instance's catalog
            // caught up): take the catalog again and retry.
            Err(Error::InvalidArgument(m))
                if router.is_distributed() && m.contains("does not exist") =>
            {
                router.refresh_catalog().await?;
                let (schema, arrow) = columns_of(engine, db, table)?;
                to_batch(table, &schema, arrow, &points, max_decoded)?
            }
            Err(e) => return Err(e),
        };
        batches.push((table.to_string(), batch));
    }
    crate::writer::write_batches(
        query,
        db,
        batches,
        max_decoded,
        Forward::Whole,
        std::time::Instant::now() + crate::route::MOVE_WAIT,
    )
    .await
}
