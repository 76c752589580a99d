//! Bounds on what one request may ask of a server: how deeply a SQL
//! statement may nest, checked with a cheap scan of the text *before* any
//! recursive parser sees it, so that a hostile or broken query gets a typed
//! error instead of overflowing a thread's stack (which aborts the whole
//! process). PromQL's bounds are `strata_promql::limits`.
//!
//! The sizes of bodies and messages are configured (`[server]` in
//! [`crate::config`]); see `docs/operations/limits.md` for every limit.

use crate::error::{Error, Result};

/// The deepest bracket nesting accepted in SQL text, checked before
/// parsing. Also handed to the SQL parser as its recursion limit.
pub const MAX_SQL_DEPTH: usize = 256;

/// The most operators (and `AND`/`OR`) one SQL text may hold, for the same
/// reason; planning time also grows with the square of a chain's length (a
/// debug build takes about 9 s for `1+1+…` with 2,000 terms).
pub const MAX_SQL_OPERATORS: usize = 2_000;

/// What a scan of a statement's text found, outside string literals and
/// comments.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// The deepest bracket nesting (`(`, `[`, `{`).
    depth: usize,
    /// Operator characters (`+ - * / % ^ = < > | &`, each counted), and
    /// the words `AND` and `OR`: an upper bound on the depth a chain of
    /// binary or unary operators gives a parsed tree.
    operators: usize,
}

/// Scans `text`; stops (with the depth at `depth_limit + 1`) as soon as the
/// nesting passes `depth_limit`.
fn scan(text: &str, depth_limit: usize) -> Scan {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut out = Scan::default();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                out.depth = out.depth.max(depth);
                if out.depth > depth_limit {
                    return out;
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            // SQL strings and quoted identifiers: a doubled quote stays
            // inside.
            b'\'' | b'"' | b'`' => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == c {
                        if bytes.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_')
                {
                    i += 1;
                }
                let word = &bytes[start..=i];
                // Keyword operators chain without brackets as deep as
                // symbols do (`up or up or …`).
                if [&b"and"[..], b"or"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    out.operators += 1;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'<' | b'>' | b'|' | b'&' => {
                out.operators += 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Refuses SQL nested deeper than [`MAX_SQL_DEPTH`] brackets or chaining
/// more than [`MAX_SQL_OPERATORS`] operators, before parsing.
pub fn check_sql(sql: &str) -> Result<()> {
    let found = scan(sql, MAX_SQL_DEPTH);
    if found.depth > MAX_SQL_DEPTH {
        return Err(Error::TooComplex(format!(
            "the statement nests more than {MAX_SQL_DEPTH} levels of parentheses"
        )));
    }
    if found.operators > MAX_SQL_OPERATORS {
        return Err(Error::TooComplex(format!(
            "the statement nests too deeply: more than {MAX_SQL_OPERATORS} operators"
        )));
    }
    check_sql_tokens(sql)
}

/// The same bounds counted on the SQL tokenizer's tokens, which read
/// strings, escapes (`E'\''`), dollar quoting and comments as the parser
/// does: a hand scan can be misled into taking a long operator chain for
/// the inside of a string. Linear and without recursion; text the tokenizer
/// refuses is left to the parser's error.
fn check_sql_tokens(sql: &str) -> Result<()> {
    use datafusion::sql::sqlparser::{
        dialect::GenericDialect,
        keywords::Keyword,
        tokenizer::{Token, Tokenizer},
    };
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    for t in &tokens {
        match t {
            Token::LParen | Token::LBracket | Token::LBrace => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR) => operators += 1,
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Caret
            | Token::Pipe
            | Token::Ampersand
            | Token::StringConcat
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::Arrow
            | Token::LongArrow => operators += 1,
            _ => {}
        }
    }
    if deepest > MAX_SQL_DEPTH {
        return Err(Error::TooComplex(format!(
            "the statement nests more than {MAX_SQL_DEPTH} levels of parentheses"
        )));
    }
    if operators > MAX_SQL_OPERATORS {
        return Err(Error::TooComplex(format!(
            "the statement nests too deeply: more than {MAX_SQL_OPERATORS} operators"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn depth_ignores_brackets_in_strings_and_comments() {
        let depth = |t: &str| scan(t, 10).depth;
        assert_eq!(depth("SELECT ((1))"), 2);
        assert_eq!(depth("SELECT '((((' , \"(((\""), 0);
        assert_eq!(depth("SELECT 'it''s ((' -- (((\n"), 0);
        assert_eq!(depth("SELECT /* ((( */ (1)"), 1);
        // Counting stops past the limit.
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(depth(&deep), 11);
        // Operators, and AND/OR as words only.
        let ops = |t: &str| scan(t, 10).operators;
        assert_eq!(ops("SELECT a+b FROM t WHERE x = 1 AND y OR z"), 4);
        assert_eq!(
            ops("SELECT orders, android, band FROM t WHERE s = '+-*'"),
            1
        );
    }

    #[test]
    fn deep_queries_are_refused_before_parsing() {
        let nested = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert!(check_sql(&format!("SELECT {}", nested(MAX_SQL_DEPTH))).is_ok());
        let err = check_sql(&format!("SELECT {}", nested(100_000))).unwrap_err();
        assert!(matches!(err, Error::TooComplex(_)), "{err}");
        // Quoting a hand scan misreads: the tokenizer still counts.
        let chain = vec!["1"; MAX_SQL_OPERATORS + 2].join("+");
        for hidden in [
            format!("SELECT E'\\'', {chain} -- '"),
            format!("SELECT $$'$$, {chain}, $$'$$"),
        ] {
            let err = check_sql(&hidden).unwrap_err();
            assert!(matches!(err, Error::TooComplex(_)), "{err}");
        }
        let chain = vec!["1"; MAX_SQL_OPERATORS + 2].join(" OR ");
        assert!(check_sql(&format!("SELECT {chain}")).is_err());
        let chain = vec!["1"; 100].join("+");
        assert!(check_sql(&format!("SELECT {chain}")).is_ok());
    }
}
