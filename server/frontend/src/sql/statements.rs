//! Strata's own statements: DDL, `SHOW`, `DESCRIBE`, `USE`, `EXISTS TABLE`,
//! `FLUSH TABLE`, `COMPACT TABLE`, `ALTER TABLE`.

use std::sync::Arc;

use arrow::{
    array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array, UInt8Array},
    datatypes::{Field, Schema},
};
use strata_engine::Engine;

use super::{alter_table, create_table, tokens::Cursor, Output};
use crate::error::{Error, Result};

/// A change of the session's read preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetReadPreference {
    To(crate::config::ReadPreference),
    /// `RESET read_preference` or `SET read_preference = DEFAULT`: back to
    /// the configured one.
    Default,
}

/// `SET [SESSION | LOCAL] read_preference {= | TO} {'leader' | 'follower' |
/// DEFAULT}` and `RESET read_preference`; `None` for any other statement.
/// (Strata has no transactions: `LOCAL` lasts as long as `SESSION`.)
pub fn parse_set_read_preference(sql: &str) -> Result<Option<SetReadPreference>> {
    // Cheap refusal of every other statement (comments may come first).
    if !sql.to_ascii_lowercase().contains("read_preference") {
        return Ok(None);
    }
    let mut c = Cursor::new(sql)?;
    let reset = if c.eat_keyword("reset") {
        true
    } else if c.eat_keyword("set") {
        let _ = c.eat_keyword("session") || c.eat_keyword("local");
        false
    } else {
        return Ok(None);
    };
    match c.identifier("setting") {
        Ok(name) if name.eq_ignore_ascii_case("read_preference") => {}
        _ => return Ok(None),
    }
    if reset {
        c.expect_end()?;
        return Ok(Some(SetReadPreference::Default));
    }
    if !(c.eat_token(&datafusion::sql::sqlparser::tokenizer::Token::Eq) || c.eat_keyword("to")) {
        return Err(c.error("expected = or TO after read_preference"));
    }
    if c.eat_keyword("default") {
        c.expect_end()?;
        return Ok(Some(SetReadPreference::Default));
    }
    let value = c.value()?;
    c.expect_end()?;
    Ok(Some(SetReadPreference::To(
        crate::config::ReadPreference::parse(&value)?,
    )))
}

/// `USE db` → `Some(db)`.
pub fn parse_use(sql: &str) -> Result<Option<String>> {
    let mut c = Cursor::new(sql)?;
    if !c.eat_keyword("use") {
        return Ok(None);
    }
    let db = c.identifier("database")?;
    c.expect_end()?;
    Ok(Some(db))
}

fn rows(columns: Vec<(&str, ArrayRef)>) -> Result<Output> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(|e| Error::Internal(format!("building a result: {e}")))?;
    Ok(Output::Rows {
        schema,
        batches: vec![batch],
    })
}

fn strings(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

/// Matches a SQL `LIKE` pattern (`%` and `_`), without recursion and in
/// time proportional to pattern × name length at worst (a pattern comes
/// from the client: `'%%%…%'` must not overflow a stack or take
/// exponential time).
fn like(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si) = (0usize, 0usize);
    // Where the last `%` was, and the name position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] == s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            // Let the last `%` take one more character.
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '%')
}

/// The tables holding `name`'s rows: the table, or a partitioned table's
/// partitions.
fn tables_of(
    engine: &Engine,
    database: &str,
    name: &str,
) -> Result<Vec<Arc<strata_engine::table::Table>>> {
    let entry = engine.entry(database, name)?;
    if entry.partition.is_none() {
        return Ok(vec![engine.table(database, name)?]);
    }
    engine
        .partitions(&entry)
        .iter()
        .map(|p| Ok(engine.table(database, &p.name)?))
        .collect()
}

/// `FLUSH TABLE t` or `COMPACT TABLE t`: the verb (upper case) and the
/// table; `None` for any other statement.
pub fn maintenance_statement(sql: &str) -> Option<(&'static str, Option<String>, String)> {
    let mut c = Cursor::new(sql).ok()?;
    let verb = if c.eat_keywords(&["flush", "table"]) {
        "FLUSH"
    } else if c.eat_keywords(&["compact", "table"]) {
        "COMPACT"
    } else {
        return None;
    };
    let (db, name) = c.object_name("table").ok()?;
    c.expect_end().ok()?;
    Some((verb, db, name))
}

/// Runs `sql` when it is one of Strata's own statements; `Ok(None)` means
/// DataFusion should run it.
pub async fn try_execute(engine: &Engine, database: &str, sql: &str) -> Result<Option<Output>> {
    let mut c = Cursor::new(sql)?;
    let resolve = |db: Option<String>| db.unwrap_or_else(|| database.to_string());

    if c.peek_keyword("create") && c.peek_keyword_nth(1, "table") {
        let ct = create_table::parse(sql)?;
        let db = resolve(ct.database);
        match ct.partition {
            Some(spec) => {
                engine
                    .create_partitioned_table(
                        &db,
                        &ct.name,
                        ct.schema,
                        ct.options,
                        spec,
                        ct.if_not_exists,
                    )
                    .await?
            }
            None => {
                engine
                    .create_table(&db, &ct.name, ct.schema, ct.options, ct.if_not_exists)
                    .await?
            }
        };
        return Ok(Some(Output::AffectedRows(0)));
    }
    if c.peek_keyword("create")
        && (c.peek_keyword_nth(1, "database") || c.peek_keyword_nth(1, "schema"))
    {
        c.advance();
        c.advance();
        let if_not_exists = c.eat_keywords(&["if", "not", "exists"]);
        let name = c.identifier("database")?;
        c.expect_end()?;
        engine.create_database(&name, if_not_exists).await?;
        return Ok(Some(Output::AffectedRows(0)));
    }
    if c.eat_keyword("drop") {
        if c.eat_keyword("table") {
            let if_exists = c.eat_keywords(&["if", "exists"]);
            let (db, name) = c.object_name("table")?;
            c.expect_end()?;
            engine.drop_table(&resolve(db), &name, if_exists).await?;
            return Ok(Some(Output::AffectedRows(0)));
        }
        if c.eat_keyword("database") || c.eat_keyword("schema") {
            let if_exists = c.eat_keywords(&["if", "exists"]);
            let name = c.identifier("database")?;
            c.expect_end()?;
            engine.drop_database(&name, if_exists).await?;
            return Ok(Some(Output::AffectedRows(0)));
        }
        return Err(c.error("expected TABLE or DATABASE after DROP"));
    }
    if c.eat_keyword("show") {
        if c.eat_keyword("tables") {
            let mut db = database.to_string();
            if c.eat_keyword("from") || c.eat_keyword("in") {
                db = c.identifier("database")?;
            }
            let pattern = if c.eat_keyword("like") {
                Some(c.value()?)
            } else {
                None
            };
            c.expect_end()?;
            if !engine.database_exists(&db) {
                return Err(strata_engine::Error::DatabaseNotFound { name: db }.into());
            }
            // Partitions are listed in `system.tables`, not here.
            let names: Vec<String> = engine
                .table_entries(&db)
                .into_iter()
                .filter(|t| t.partition_of.is_none())
                .map(|t| t.name)
                .filter(|n| pattern.as_deref().is_none_or(|p| like(p, n)))
                .collect();
            return rows(vec![("Tables", strings(names))]).map(Some);
        }
        if c.eat_keyword("databases") || c.eat_keyword("schemas") {
            c.expect_end()?;
            return rows(vec![("Databases", strings(engine.databases()))]).map(Some);
        }
        if c.eat_keywords(&["create", "table"]) {
            let (db, name) = c.object_name("table")?;
            c.expect_end()?;
            let entry = engine.entry(&resolve(db), &name)?;
            let ddl = create_table::show_create(
                &entry.name,
                &entry.schema,
                &entry.options,
                entry.partition.as_ref(),
            );
            return rows(vec![
                ("Table", strings(vec![entry.name.clone()])),
                ("Create Table", strings(vec![ddl])),
            ])
            .map(Some);
        }
        // Other SHOW statements (SHOW COLUMNS, SHOW ALL…) go to DataFusion.
        return Ok(None);
    }
    if c.peek_keyword("describe") || c.peek_keyword("desc") {
        c.advance();
        c.eat_keyword("table");
        let (db, name) = c.object_name("table")?;
        c.expect_end()?;
        let entry = engine.entry(&resolve(db), &name)?;
        let schema = &entry.schema;
        let cols = &schema.columns;
        return rows(vec![
            (
                "name",
                strings(cols.iter().map(|c| c.name.clone()).collect()),
            ),
            (
                "type",
                strings(
                    cols.iter()
                        .map(|c| c.column_type.sql_name().to_string())
                        .collect(),
                ),
            ),
            (
                "is_primary",
                Arc::new(BooleanArray::from(
                    (0..cols.len())
                        .map(|i| schema.is_primary_key(i))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "is_nullable",
                Arc::new(BooleanArray::from(
                    cols.iter().map(|c| c.nullable).collect::<Vec<_>>(),
                )),
            ),
            (
                "is_tag",
                Arc::new(BooleanArray::from(
                    cols.iter().map(|c| c.is_tag).collect::<Vec<_>>(),
                )),
            ),
            (
                "is_timestamp_key",
                Arc::new(BooleanArray::from(
                    (0..cols.len())
                        .map(|i| i == schema.timestamp_index)
                        .collect::<Vec<_>>(),
                )),
            ),
        ])
        .map(Some);
    }
    if c.peek_keyword("exists") && c.peek_keyword_nth(1, "table") {
        c.advance();
        c.advance();
        let (db, name) = c.object_name("table")?;
        c.expect_end()?;
        let exists = engine.entry(&resolve(db), &name).is_ok();
        let result: ArrayRef = Arc::new(UInt8Array::from(vec![u8::from(exists)]));
        return rows(vec![("result", result)]).map(Some);
    }
    if c.eat_keywords(&["flush", "table"]) {
        let (db, name) = c.object_name("table")?;
        c.expect_end()?;
        for table in tables_of(engine, &resolve(db), &name)? {
            engine.flush_table(&table).await?;
        }
        return Ok(Some(Output::AffectedRows(0)));
    }
    if c.peek_keyword("use") {
        return Err(Error::Internal(
            "USE is handled before statement dispatch".into(),
        ));
    }
    if c.peek_keyword("alter") && c.peek_keyword_nth(1, "table") {
        let alter = alter_table::parse(sql)?;
        engine
            .alter_table(&resolve(alter.database), &alter.name, alter.change)
            .await?;
        return Ok(Some(Output::AffectedRows(0)));
    }
    if c.eat_keywords(&["compact", "table"]) {
        let (db, name) = c.object_name("table")?;
        c.expect_end()?;
        let mut report = strata_engine::compaction::CompactionReport::default();
        for table in tables_of(engine, &resolve(db), &name)? {
            engine.flush_table(&table).await?;
            let r = engine.compact_table(&table).await?;
            report.tasks += r.tasks;
            report.input_files += r.input_files;
            report.output_files += r.output_files;
            report.input_bytes += r.input_bytes;
            report.output_bytes += r.output_bytes;
        }
        let n = |v: u64| Arc::new(UInt64Array::from(vec![v])) as ArrayRef;
        return rows(vec![
            ("tasks", n(report.tasks as u64)),
            ("input_files", n(report.input_files as u64)),
            ("output_files", n(report.output_files as u64)),
            ("input_bytes", n(report.input_bytes)),
            ("output_bytes", n(report.output_bytes)),
        ])
        .map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{like, parse_set_read_preference, SetReadPreference};
    use crate::config::ReadPreference;

    #[test]
    fn set_read_preference() {
        let to = |p| Some(SetReadPreference::To(p));
        for (sql, want) in [
            (
                "SET read_preference = 'follower'",
                to(ReadPreference::Follower),
            ),
            ("set READ_PREFERENCE to leader;", to(ReadPreference::Leader)),
            (
                "SET SESSION read_preference = 'FOLLOWER'",
                to(ReadPreference::Follower),
            ),
            (
                "SET LOCAL read_preference TO 'leader'",
                to(ReadPreference::Leader),
            ),
            (
                "SET \"read_preference\" = 'follower'",
                to(ReadPreference::Follower),
            ),
            (
                "/* a tool */ SET read_preference = 'follower'",
                to(ReadPreference::Follower),
            ),
            ("SET read_preference_x = 1", None),
            ("SELECT 'read_preference'", None),
            (
                "SET read_preference = DEFAULT",
                Some(SetReadPreference::Default),
            ),
            ("RESET read_preference", Some(SetReadPreference::Default)),
            ("SET extra_float_digits = 3", None),
            ("RESET ALL", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(parse_set_read_preference(sql).unwrap(), want, "{sql}");
        }
        for bad in [
            "SET read_preference = 'nearest'",
            "SET read_preference 'follower'",
            "SET read_preference = 'follower' extra",
            "RESET read_preference now",
        ] {
            let e = parse_set_read_preference(bad).unwrap_err();
            assert_eq!(
                e.kind(),
                strata_engine::ErrorKind::InvalidArgument,
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn like_patterns() {
        assert!(like("cpu%", "cpu_usage"));
        assert!(like("c_u", "cpu"));
        assert!(!like("cpu", "cpu2"));
        assert!(like("%a%b%", "xaybz"));
        assert!(like("%", ""));
        assert!(like("a%", "a"));
        assert!(!like("a%b", "acd"));
        assert!(!like("_", ""));
        // A hostile pattern: no recursion, no exponential time.
        let hostile = format!("{}z", "%_".repeat(1000));
        assert!(!like(&hostile, &"a".repeat(1000)));
        assert!(like(&"%".repeat(200_000), "any"));
    }
}
