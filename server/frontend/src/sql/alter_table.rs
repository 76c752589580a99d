//! Parsing `ALTER TABLE`:
//!
//! ```sql
//! ALTER TABLE [db.]name ADD [COLUMN] col TYPE [NULL] [TAG] [COMMENT '…'];
//! ALTER TABLE [db.]name ADD [COLUMN] (col TYPE …, col TYPE …);
//! ALTER TABLE [db.]name MODIFY SETTING key = 'value' [, key = 'value' …];
//! ```

use datafusion::sql::sqlparser::tokenizer::Token;
use strata_engine::{engine_api::AlterTable, schema::ColumnSchema};

use super::{create_table::column_def, tokens::Cursor};
use crate::error::Result;

#[derive(Debug)]
pub struct Alter {
    pub database: Option<String>,
    pub name: String,
    pub change: AlterTable,
}

fn column(c: &mut Cursor) -> Result<ColumnSchema> {
    let (col, keys) = column_def(c)?;
    if keys.timestamp_key || keys.primary_key {
        return Err(c.error("the timestamp key and primary key cannot be changed"));
    }
    Ok(col)
}

pub fn parse(sql: &str) -> Result<Alter> {
    let mut c = Cursor::new(sql)?;
    c.expect_keyword("alter")?;
    c.expect_keyword("table")?;
    let (database, name) = c.object_name("table")?;
    let change = if c.eat_keyword("add") {
        c.eat_keyword("column");
        let mut columns = Vec::new();
        if c.eat_token(&Token::LParen) {
            loop {
                columns.push(column(&mut c)?);
                if c.eat_token(&Token::Comma) {
                    continue;
                }
                c.expect_token(&Token::RParen)?;
                break;
            }
        } else {
            columns.push(column(&mut c)?);
            while c.eat_token(&Token::Comma) {
                c.eat_keyword("add");
                c.eat_keyword("column");
                columns.push(column(&mut c)?);
            }
        }
        AlterTable::AddColumns(columns)
    } else if c.eat_keywords(&["modify", "setting"]) || c.eat_keyword("set") {
        let paren = c.eat_token(&Token::LParen);
        let mut pairs = Vec::new();
        loop {
            let key = c.value()?;
            c.expect_token(&Token::Eq)?;
            let value = c.value()?;
            pairs.push((key, value));
            if !c.eat_token(&Token::Comma) {
                break;
            }
        }
        if paren {
            c.expect_token(&Token::RParen)?;
        }
        AlterTable::ModifySettings(pairs)
    } else if c.peek_keyword("drop") || c.peek_keyword("rename") || c.peek_keyword("modify") {
        return Err(crate::error::Error::Unsupported(
            "ALTER TABLE supports ADD COLUMN and MODIFY SETTING".to_string(),
        ));
    } else {
        return Err(c.error("expected ADD COLUMN or MODIFY SETTING"));
    };
    c.expect_end()?;
    Ok(Alter {
        database,
        name,
        change,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_add_column_and_modify_setting() {
        let a = parse("ALTER TABLE db.t ADD COLUMN region STRING TAG").unwrap();
        assert_eq!(a.database.as_deref(), Some("db"));
        match a.change {
            AlterTable::AddColumns(c) => assert!(c[0].is_tag && c[0].name == "region"),
            other => panic!("{other:?}"),
        }
        let a = parse("alter table t add column (a double, b bigint null)").unwrap();
        assert!(matches!(a.change, AlterTable::AddColumns(ref c) if c.len() == 2));
        let a = parse("ALTER TABLE t MODIFY SETTING ttl='7d', write_buffer_size='64MB'").unwrap();
        match a.change {
            AlterTable::ModifySettings(p) => {
                assert_eq!(p[0], ("ttl".to_string(), "7d".to_string()))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse("ALTER TABLE t DROP COLUMN x").is_err());
        assert!(parse("ALTER TABLE t ADD COLUMN x")
            .unwrap_err()
            .to_string()
            .contains("expected a type"));
    }
}
