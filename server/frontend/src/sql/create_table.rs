//! Parsing `CREATE TABLE`, HoraeDB's dialect included:
//!
//! ```sql
//! CREATE TABLE [IF NOT EXISTS] [db.]name (
//!     col TYPE [NULL | NOT NULL] [TAG] [TIMESTAMP KEY] [PRIMARY KEY]
//!              [DICTIONARY] [COMMENT 'text'],
//!     …,
//!     [TIMESTAMP KEY (col) | TIME INDEX (col),]
//!     [PRIMARY KEY (col, …)]
//! ) [ENGINE = Analytic] [WITH (key = 'value', …)]
//! ```

use datafusion::sql::sqlparser::tokenizer::Token;
use strata_engine::{
    options::TableOptions,
    schema::{ColumnSchema, ColumnType, TableSchema},
};

use super::tokens::Cursor;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct CreateTable {
    pub database: Option<String>,
    pub name: String,
    pub if_not_exists: bool,
    pub schema: TableSchema,
    pub options: TableOptions,
    /// `PARTITION BY KEY(columns) PARTITIONS n`.
    pub partition: Option<strata_engine::partition::PartitionSpec>,
}

/// Parses the column type at the cursor.
pub(crate) fn column_type(c: &mut Cursor, column: &str) -> Result<ColumnType> {
    let Some(Token::Word(w)) = c.peek().cloned() else {
        return Err(c.error(format!("expected a type for column {column}")));
    };
    let mut name = w.value.to_ascii_lowercase();
    if name == "double" && c.peek_keyword_nth(1, "precision") {
        c.advance();
        name.push_str(" precision");
    } else if c.peek_keyword_nth(1, "unsigned") {
        c.advance();
        name.push_str(" unsigned");
    }
    let t = ColumnType::from_sql_name(&name).ok_or_else(|| {
        c.error(format!(
            "unknown type {} for column {column}; supported: TIMESTAMP, DOUBLE, FLOAT, BIGINT, INT, SMALLINT, TINYINT, UINT64, UINT32, UINT16, UINT8, BOOLEAN, STRING, VARBINARY",
            w.value
        ))
    })?;
    c.advance();
    // VARCHAR(255) and the like: the length is accepted and ignored.
    if c.eat_token(&Token::LParen) {
        while !c.eat_token(&Token::RParen) {
            if c.advance().is_none() {
                return Err(c.error("unterminated type arguments"));
            }
        }
    }
    Ok(t)
}

/// Key constraints written on a column.
#[derive(Debug, Default)]
pub(crate) struct ColumnKeys {
    pub timestamp_key: bool,
    pub primary_key: bool,
}

/// Parses `name TYPE [NULL | NOT NULL] [TAG] [DICTIONARY] [TIMESTAMP KEY]
/// [PRIMARY KEY] [COMMENT '…']`.
pub(crate) fn column_def(c: &mut Cursor) -> Result<(ColumnSchema, ColumnKeys)> {
    let name = c.identifier("column")?;
    let column_type = column_type(c, &name)?;
    let mut col = ColumnSchema {
        name: name.clone(),
        column_type,
        is_tag: false,
        nullable: true,
        comment: String::new(),
    };
    let mut keys = ColumnKeys::default();
    loop {
        if c.eat_keywords(&["not", "null"]) {
            col.nullable = false;
        } else if c.eat_keyword("null") {
            col.nullable = true;
        } else if c.eat_keyword("tag") {
            col.is_tag = true;
        } else if c.eat_keyword("dictionary") {
            // HoraeDB's dictionary hint: tags are always dictionary-encoded
            // in SSTs.
        } else if c.eat_keywords(&["timestamp", "key"]) || c.eat_keywords(&["time", "index"]) {
            keys.timestamp_key = true;
        } else if c.eat_keywords(&["primary", "key"]) {
            keys.primary_key = true;
        } else if c.eat_keyword("comment") {
            col.comment = c.value()?;
        } else if c.peek_keyword("default") {
            return Err(c.error(format!("DEFAULT values are not supported (column {name})")));
        } else {
            return Ok((col, keys));
        }
    }
}

fn name_list(c: &mut Cursor) -> Result<Vec<String>> {
    c.expect_token(&Token::LParen)?;
    let mut names = vec![c.identifier("column")?];
    while c.eat_token(&Token::Comma) {
        names.push(c.identifier("column")?);
    }
    c.expect_token(&Token::RParen)?;
    Ok(names)
}

/// Parses a whole `CREATE TABLE` statement.
pub fn parse(sql: &str) -> Result<CreateTable> {
    let mut c = Cursor::new(sql)?;
    c.expect_keyword("create")?;
    c.expect_keyword("table")?;
    let if_not_exists = c.eat_keywords(&["if", "not", "exists"]);
    let (database, name) = c.object_name("table")?;
    c.expect_token(&Token::LParen)?;

    let mut columns: Vec<ColumnSchema> = Vec::new();
    let mut timestamp_key: Option<String> = None;
    let mut primary_key: Vec<String> = Vec::new();
    let set_timestamp_key = |c: &Cursor, col: String, ts: &mut Option<String>| -> Result<()> {
        if let Some(prev) = ts {
            if *prev != col {
                return Err(c.error(format!(
                    "a table has exactly one TIMESTAMP KEY; both {prev} and {col} are declared"
                )));
            }
        }
        *ts = Some(col);
        Ok(())
    };

    loop {
        if c.eat_keywords(&["timestamp", "key"]) || c.eat_keywords(&["time", "index"]) {
            let names = name_list(&mut c)?;
            if names.len() != 1 {
                return Err(c.error("TIMESTAMP KEY takes exactly one column"));
            }
            let col = names.into_iter().next().unwrap_or_default();
            set_timestamp_key(&c, col, &mut timestamp_key)?;
        } else if c.eat_keywords(&["primary", "key"]) {
            if !primary_key.is_empty() {
                return Err(c.error("PRIMARY KEY is declared twice"));
            }
            primary_key = name_list(&mut c)?;
        } else {
            let (col, keys) = column_def(&mut c)?;
            if keys.timestamp_key {
                set_timestamp_key(&c, col.name.clone(), &mut timestamp_key)?;
            }
            if keys.primary_key {
                if !primary_key.is_empty() {
                    return Err(c.error("PRIMARY KEY is declared twice"));
                }
                primary_key = vec![col.name.clone()];
            }
            columns.push(col);
        }
        if c.eat_token(&Token::Comma) {
            continue;
        }
        c.expect_token(&Token::RParen)?;
        break;
    }

    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut partition = None;
    loop {
        if c.eat_keyword("engine") {
            c.expect_token(&Token::Eq)?;
            let engine = c.value()?;
            if !engine.eq_ignore_ascii_case("analytic") {
                return Err(c.error(format!(
                    "unknown engine {engine}; only Analytic is supported"
                )));
            }
        } else if c.eat_keyword("with") {
            c.expect_token(&Token::LParen)?;
            if !c.eat_token(&Token::RParen) {
                loop {
                    let key = c.value()?;
                    c.expect_token(&Token::Eq)?;
                    let value = c.value()?;
                    pairs.push((key, value));
                    if c.eat_token(&Token::Comma) {
                        continue;
                    }
                    c.expect_token(&Token::RParen)?;
                    break;
                }
            }
        } else if c.eat_keyword("partition") {
            if partition.is_some() {
                return Err(c.error("PARTITION BY is given twice"));
            }
            c.expect_keyword("by")?;
            let mut columns = Vec::new();
            let random = c.eat_keyword("random");
            if !random {
                if !c.eat_keyword("key") {
                    return Err(c.error(
                        "only PARTITION BY KEY(tag, …) PARTITIONS n and PARTITION BY RANDOM \
                         PARTITIONS n are supported (not HASH)",
                    ));
                }
                c.expect_token(&Token::LParen)?;
                loop {
                    columns.push(c.identifier("column")?);
                    if c.eat_token(&Token::Comma) {
                        continue;
                    }
                    c.expect_token(&Token::RParen)?;
                    break;
                }
            }
            c.expect_keyword("partitions")?;
            let count = match c.peek() {
                Some(Token::Number(n, _)) => n.parse::<u32>().ok(),
                _ => None,
            }
            .ok_or_else(|| c.error("PARTITIONS takes a whole number"))?;
            c.advance();
            partition = Some(strata_engine::partition::PartitionSpec {
                columns,
                count,
                random,
            });
        } else {
            break;
        }
    }
    c.expect_end()?;

    let timestamp_key = timestamp_key.ok_or_else(|| Error::InvalidArgument(format!(
        "table {name} has no TIMESTAMP KEY; declare one, e.g. `ts TIMESTAMP NOT NULL, TIMESTAMP KEY(ts)`"
    )))?;
    let schema = TableSchema::try_new(columns, &timestamp_key, &primary_key)?;
    let options = TableOptions::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    if let Some(spec) = &partition {
        spec.validate(&schema, &options)?;
    }
    Ok(CreateTable {
        database,
        name,
        if_not_exists,
        schema,
        options,
        partition,
    })
}

/// Renders a table as a `CREATE TABLE` statement that recreates it.
pub fn show_create(
    name: &str,
    schema: &TableSchema,
    options: &TableOptions,
    partition: Option<&strata_engine::partition::PartitionSpec>,
) -> String {
    let quote = |s: &str| format!("`{}`", s.replace('`', "``"));
    let mut parts: Vec<String> = schema
        .columns
        .iter()
        .map(|col| {
            let mut s = format!("{} {}", quote(&col.name), col.column_type.sql_name());
            if !col.nullable {
                s.push_str(" NOT NULL");
            } else {
                s.push_str(" NULL");
            }
            if col.is_tag {
                s.push_str(" TAG");
            }
            if !col.comment.is_empty() {
                s.push_str(&format!(" COMMENT '{}'", col.comment.replace('\'', "''")));
            }
            s
        })
        .collect();
    let key: Vec<String> = schema
        .primary_key_names()
        .iter()
        .map(|n| quote(n))
        .collect();
    parts.push(format!("PRIMARY KEY({})", key.join(", ")));
    parts.push(format!(
        "TIMESTAMP KEY({})",
        quote(&schema.timestamp_column().name)
    ));
    let with: Vec<String> = options
        .to_pairs()
        .into_iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\'', "''")))
        .collect();
    let partition = partition.map_or_else(String::new, |p| {
        if p.random {
            return format!(" PARTITION BY RANDOM PARTITIONS {}", p.count);
        }
        let key: Vec<String> = p.columns.iter().map(|c| quote(c)).collect();
        format!(
            " PARTITION BY KEY({}) PARTITIONS {}",
            key.join(", "),
            p.count
        )
    });
    format!(
        "CREATE TABLE {} ({}){partition} ENGINE=Analytic WITH({})",
        quote(name),
        parts.join(", "),
        with.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use strata_engine::options::UpdateMode;

    use super::*;

    /// The tables remote write creates are the ones its SQL DDL created
    /// before it went through the write path: same columns, key and
    /// options.
    #[test]
    fn the_layout_is_what_its_ddl_created() {
        let ddl = |name: &str, last: &str| {
            format!(
                "CREATE TABLE IF NOT EXISTS {name} (metric STRING TAG, series BIGINT UNSIGNED TAG, \
                 ts TIMESTAMP NOT NULL, {last}, TIMESTAMP KEY(ts))"
            )
        };
        let tables = crate::prom::tables().unwrap();
        assert_eq!(tables.len(), 2 * crate::prom::PARTITIONS as usize);
        for (table, schema) in tables {
            let last = if table.starts_with("prom_samples_") {
                "value DOUBLE"
            } else {
                "labels STRING"
            };
            let parsed = parse(&ddl(&table, last)).unwrap();
            assert_eq!(parsed.schema, schema, "{table}");
            assert_eq!(
                parsed.options,
                strata_engine::options::TableOptions::default(),
                "{table}"
            );
        }
    }

    #[test]
    fn parses_horaedb_ddl_as_written() {
        let sql = "CREATE TABLE `demo` (
            `name` string TAG,
            `value` double NOT NULL,
            `t` timestamp NOT NULL,
            timestamp KEY (t)) ENGINE=Analytic with (enable_ttl='false', update_mode='APPEND')";
        let ct = parse(sql).unwrap();
        assert_eq!(ct.name, "demo");
        assert_eq!(ct.schema.timestamp_column().name, "t");
        assert_eq!(ct.schema.primary_key_names(), vec!["name", "t"]);
        assert_eq!(ct.options.update_mode, UpdateMode::Append);
        assert!(!ct.schema.columns[1].nullable);
    }

    #[test]
    fn parses_horaedb_partitioned_tables() {
        let sql = "CREATE TABLE `pt` (`name` string TAG, `region` string TAG, `value` double, \
                   `t` timestamp NOT NULL, timestamp KEY (t)) \
                   PARTITION BY KEY(name, region) PARTITIONS 4 ENGINE=Analytic";
        let ct = parse(sql).unwrap();
        let spec = ct.partition.clone().unwrap();
        assert_eq!(spec.columns, ["name", "region"]);
        assert_eq!(spec.count, 4);
        let shown = show_create(&ct.name, &ct.schema, &ct.options, ct.partition.as_ref());
        assert!(
            shown.contains(" PARTITION BY KEY(`name`, `region`) PARTITIONS 4 ENGINE=Analytic"),
            "{shown}"
        );
        assert_eq!(parse(&shown).unwrap().partition, ct.partition);
        // RANDOM, for APPEND tables, shown back as it was given.
        let random = "CREATE TABLE r (`name` string TAG, `t` timestamp NOT NULL, \
                      timestamp KEY (t)) PARTITION BY RANDOM PARTITIONS 3 \
                      ENGINE=Analytic WITH (update_mode='APPEND')";
        let ct = parse(random).unwrap();
        let spec = ct.partition.clone().unwrap();
        assert!(spec.random && spec.columns.is_empty() && spec.count == 3);
        let shown = show_create(&ct.name, &ct.schema, &ct.options, ct.partition.as_ref());
        assert!(
            shown.contains(" PARTITION BY RANDOM PARTITIONS 3 "),
            "{shown}"
        );
        assert_eq!(parse(&shown).unwrap().partition, ct.partition);
        for (bad, why) in [
            ("PARTITION BY KEY(value) PARTITIONS 4", "must be a TAG"),
            (
                "PARTITION BY KEY(region) PARTITIONS 4",
                "must be a TAG of the primary key",
            ),
            ("PARTITION BY KEY(nope) PARTITIONS 4", "not a column"),
            ("PARTITION BY KEY(name) PARTITIONS 0", "between 1 and"),
            ("PARTITION BY KEY(name) PARTITIONS 1000", "between 1 and"),
            ("PARTITION BY KEY(name, name) PARTITIONS 2", "named twice"),
            ("PARTITION BY KEY(name) PARTITIONS -1", "whole number"),
            (
                "PARTITION BY RANDOM PARTITIONS 4",
                "needs update_mode = 'APPEND'",
            ),
            ("PARTITION BY HASH(name) PARTITIONS 4", "not HASH"),
            ("PARTITION BY KEY(name) PARTITIONS x", "whole number"),
            (
                "PARTITION BY HASH(name) PARTITIONS 2",
                "only PARTITION BY KEY",
            ),
            ("PARTITION BY KEY() PARTITIONS 2", "column name"),
            (
                "PARTITION BY KEY(name) PARTITIONS 2 PARTITION BY KEY(name) PARTITIONS 2",
                "twice",
            ),
        ] {
            let sql = format!(
                "CREATE TABLE pt (name string TAG, region string TAG, value double, \
                 t timestamp NOT NULL, timestamp KEY (t), PRIMARY KEY (name, t)) {bad}"
            );
            let e = parse(&sql).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_inline_keys_and_qualified_names() {
        let ct = parse(
            "create table if not exists db1.Cpu (Host STRING TAG, ts TIMESTAMP TIMESTAMP KEY, \
             usage DOUBLE, code BIGINT UNSIGNED, name VARCHAR(10), PRIMARY KEY(host, ts)) \
             WITH (ttl = '7d', segment_duration='1h', write_buffer_size='8MB');",
        )
        .unwrap();
        assert_eq!(ct.database.as_deref(), Some("db1"));
        assert_eq!(ct.name, "cpu");
        assert!(ct.if_not_exists);
        assert_eq!(ct.schema.columns[3].column_type, ColumnType::UInt64);
        assert_eq!(ct.options.write_buffer_size, Some(8 << 20));
    }

    #[test]
    fn errors_name_the_position() {
        let err = parse("CREATE TABLE t (a STRING TAG, ts TIMESTAMP, TIMESTAMP KEY(ts), v FLAOT)")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown type FLAOT"), "{err}");
        assert!(err.contains("line 1, column 66"), "{err}");
        let err = parse("CREATE TABLE t (v DOUBLE)").unwrap_err().to_string();
        assert!(err.contains("no TIMESTAMP KEY"), "{err}");
    }

    #[test]
    fn show_create_roundtrips() {
        let ct = parse("CREATE TABLE m (h STRING TAG, ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts)) WITH (ttl='1d')").unwrap();
        let again = parse(&show_create(
            &ct.name,
            &ct.schema,
            &ct.options,
            ct.partition.as_ref(),
        ))
        .unwrap();
        assert_eq!(again.schema, ct.schema);
        assert_eq!(again.options, ct.options);
    }
}
