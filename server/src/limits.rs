//! Bounds on what one request may ask of a server: how deeply a query may
//! nest, checked with a cheap scan of the text *before* any recursive parser
//! sees it, so that a hostile or broken query gets a typed error instead of
//! overflowing a thread's stack (which aborts the whole process).
//!
//! The sizes of bodies and messages are configured (`[server]` in
//! [`crate::config`]); see `docs/operations/limits.md` for every limit.

use crate::error::{Error, Result};

/// The deepest PromQL expression accepted: brackets in the text, and the
/// depth of the parsed expression tree (the evaluator recurses once per
/// level).
pub const MAX_PROMQL_DEPTH: usize = 256;

/// The deepest bracket nesting accepted in SQL text, checked before
/// parsing. Also handed to the SQL parser as its recursion limit.
pub const MAX_SQL_DEPTH: usize = 256;

/// The most operators one PromQL query may hold: `a + b + c …` nests
/// without brackets, one tree level per operator.
pub const MAX_PROMQL_OPERATORS: usize = 4096;

/// The most operators (and `AND`/`OR`) one SQL text may hold, for the same
/// reason; planning time also grows with the square of a chain's length (a
/// debug build takes about 9 s for `1+1+…` with 2,000 terms).
pub const MAX_SQL_OPERATORS: usize = 2_000;

/// The most regex matchers (`=~`, `!~`) one PromQL query may hold: the
/// parser compiles each.
pub const MAX_PROMQL_REGEXES: usize = 256;

/// The longest regular expression a client may send (a matcher of remote
/// read or of a PromQL selector, `label_replace`'s pattern).
pub const MAX_REGEX_LEN: usize = 16 * 1024;

/// The most memory one compiled client regex may take (the `regex` crate's
/// own default is 10 MiB, per regex; a request may hold many).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a regular expression a client sent, with bounded size and
/// nesting: the pattern's length, the compiled program's size and the
/// parser's nesting depth are capped, so a request's regexes cost at most a
/// few MiB and milliseconds each. `what` names it in the error.
pub fn client_regex(pattern: &str, what: &str) -> Result<regex::Regex> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(Error::InvalidArgument(format!(
            "{what}: the regular expression is {} bytes long, more than the {MAX_REGEX_LEN} allowed",
            pattern.len()
        )));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("{what}: invalid regular expression: {e}")))
}

/// What a scan of a query's text found, outside string literals and
/// comments as the language spells them.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// The deepest bracket nesting (`(`, `[`, `{`).
    depth: usize,
    /// Operator characters (`+ - * / % ^ = < > | &`, each counted), and for
    /// SQL the words `AND` and `OR`: an upper bound on the depth a chain of
    /// binary or unary operators gives a parsed tree.
    operators: usize,
    /// PromQL: regex matchers (`=~`, `!~`), which the parser compiles.
    regexes: usize,
    /// PromQL: the longest string literal after a regex matcher.
    longest_regex: usize,
}

/// Scans `text`; stops (with the depth at `depth_limit + 1`) as soon as the
/// nesting passes `depth_limit`.
fn scan(text: &str, depth_limit: usize, lang: Lang) -> Scan {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut out = Scan::default();
    let mut regex_next = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match (lang, c) {
            (_, b'(' | b'[' | b'{') => {
                depth += 1;
                out.depth = out.depth.max(depth);
                if out.depth > depth_limit {
                    return out;
                }
            }
            (_, b')' | b']' | b'}') => depth = depth.saturating_sub(1),
            // SQL strings and quoted identifiers: a doubled quote stays
            // inside.
            (Lang::Sql, b'\'' | b'"' | b'`') => {
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
            (Lang::Sql, b'-') if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            (Lang::Sql, b'/') if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            (_, b'a'..=b'z' | b'A'..=b'Z' | b'_') => {
                let start = i;
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_')
                {
                    i += 1;
                }
                let word = &bytes[start..=i];
                // Keyword operators chain without brackets as deep as
                // symbols do (`up or up or …`).
                let keyword = match lang {
                    Lang::Sql => [&b"and"[..], b"or"]
                        .iter()
                        .any(|k| word.eq_ignore_ascii_case(k)),
                    Lang::PromQl => [&b"and"[..], b"or", b"unless", b"atan2"]
                        .iter()
                        .any(|k| word.eq_ignore_ascii_case(k)),
                };
                if keyword {
                    out.operators += 1;
                }
            }
            (Lang::PromQl, b'~') if i > 0 && matches!(bytes[i - 1], b'=' | b'!') => {
                out.regexes += 1;
                regex_next = true;
            }
            // PromQL strings: "…" and '…' with backslash escapes, `…` raw.
            (Lang::PromQl, b'"' | b'\'') => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if std::mem::take(&mut regex_next) {
                    out.longest_regex = out.longest_regex.max(i - start);
                }
            }
            (Lang::PromQl, b'`') => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    i += 1;
                }
                if std::mem::take(&mut regex_next) {
                    out.longest_regex = out.longest_regex.max(i - start);
                }
            }
            (Lang::PromQl, b'#') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            (_, b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'<' | b'>' | b'|' | b'&') => {
                out.operators += 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[derive(Clone, Copy)]
enum Lang {
    Sql,
    PromQl,
}

/// Refuses SQL nested deeper than [`MAX_SQL_DEPTH`] brackets or chaining
/// more than [`MAX_SQL_OPERATORS`] operators, before parsing.
pub fn check_sql(sql: &str) -> Result<()> {
    let found = scan(sql, MAX_SQL_DEPTH, Lang::Sql);
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

/// Refuses PromQL nested deeper than [`MAX_PROMQL_DEPTH`] brackets or
/// chaining more than [`MAX_PROMQL_OPERATORS`] operators, before parsing.
pub fn check_promql(text: &str) -> Result<()> {
    let found = scan(text, MAX_PROMQL_DEPTH, Lang::PromQl);
    if found.depth > MAX_PROMQL_DEPTH {
        return Err(Error::TooComplex(format!(
            "invalid PromQL: the query nests more than {MAX_PROMQL_DEPTH} levels of brackets"
        )));
    }
    if found.operators > MAX_PROMQL_OPERATORS {
        return Err(Error::TooComplex(format!(
            "invalid PromQL: the query nests too deeply: more than {MAX_PROMQL_OPERATORS} operators"
        )));
    }
    // The parser compiles every regex matcher as it parses.
    if found.regexes > MAX_PROMQL_REGEXES {
        return Err(Error::TooComplex(format!(
            "invalid PromQL: more than {MAX_PROMQL_REGEXES} regex matchers (=~, !~)"
        )));
    }
    if found.longest_regex > MAX_REGEX_LEN {
        return Err(Error::InvalidArgument(format!(
            "invalid PromQL: a regex matcher of {} bytes, more than the {MAX_REGEX_LEN} allowed",
            found.longest_regex
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn promql_regex_matchers_are_counted_and_measured() {
        assert!(check_promql(r#"up{job=~"a.*", host!~'b|c'}"#).is_ok());
        let long = format!(r#"up{{job=~"{}"}}"#, "a".repeat(MAX_REGEX_LEN + 1));
        assert!(check_promql(&long)
            .unwrap_err()
            .to_string()
            .contains("regex matcher of"));
        // A long value of an equality matcher is not a regex.
        let value = format!(r#"up{{job="{}"}}"#, "a".repeat(MAX_REGEX_LEN + 1));
        assert!(check_promql(&value).is_ok());
        let many = format!(
            "up{{{}}}",
            (0..=MAX_PROMQL_REGEXES)
                .map(|i| format!("l{i}=~\"x\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(check_promql(&many).is_err());
    }

    #[test]
    fn client_regexes_are_bounded() {
        assert!(client_regex("^(?:a.*b)$", "t").unwrap().is_match("axxb"));
        let long = "a".repeat(MAX_REGEX_LEN + 1);
        let err = client_regex(&long, "t").unwrap_err();
        assert!(err.to_string().contains("bytes long"), "{err}");
        // A short pattern whose compiled form is huge.
        let err = client_regex(r"\w{1000}\w{1000}\w{1000}", "t").unwrap_err();
        assert!(
            err.to_string().contains("invalid regular expression"),
            "{err}"
        );
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(client_regex(&deep, "t").is_err());
    }

    #[test]
    fn depth_ignores_brackets_in_strings_and_comments() {
        let depth = |t: &str, lang| scan(t, 10, lang).depth;
        assert_eq!(depth("SELECT ((1))", Lang::Sql), 2);
        assert_eq!(depth("SELECT '((((' , \"(((\"", Lang::Sql), 0);
        assert_eq!(depth("SELECT 'it''s ((' -- (((\n", Lang::Sql), 0);
        assert_eq!(depth("SELECT /* ((( */ (1)", Lang::Sql), 1);
        assert_eq!(depth(r#"up{a="(((\"(("}"#, Lang::PromQl), 1);
        assert_eq!(depth("sum(up) # ((((\n", Lang::PromQl), 1);
        // Counting stops past the limit.
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(depth(&deep, Lang::Sql), 11);
        // Operators, and AND/OR as words only.
        let ops = |t: &str| scan(t, 10, Lang::Sql).operators;
        assert_eq!(ops("SELECT a+b FROM t WHERE x = 1 AND y OR z"), 4);
        assert_eq!(
            ops("SELECT orders, android, band FROM t WHERE s = '+-*'"),
            1
        );
    }

    #[test]
    fn deep_queries_are_refused_before_parsing() {
        let nested = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert!(check_promql(&nested(MAX_PROMQL_DEPTH)).is_ok());
        assert!(check_promql(&nested(MAX_PROMQL_DEPTH + 1)).is_err());
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
        let words = vec!["up"; MAX_PROMQL_OPERATORS + 2].join(" or ");
        assert!(check_promql(&words).is_err(), "keyword operators count too");
        assert!(check_promql("up{job=\"and or unless\"} or on(x) down").is_ok());
        let chain = vec!["1"; MAX_PROMQL_OPERATORS + 2].join("+");
        assert!(check_promql(&chain).is_err());
        let chain = vec!["1"; MAX_SQL_OPERATORS + 2].join(" OR ");
        assert!(check_sql(&format!("SELECT {chain}")).is_err());
        let chain = vec!["1"; 100].join("+");
        assert!(check_sql(&format!("SELECT {chain}")).is_ok());
        assert!(check_promql("sum by (job) (rate(up[5m])) > 0.5 * 2").is_ok());
    }
}
