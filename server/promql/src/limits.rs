//! Bounds on what one PromQL query may ask of a server, checked with a
//! cheap scan of its text *before* the recursive parser sees it, so that a
//! hostile or broken query gets a typed error instead of overflowing a
//! thread's stack. See `docs/operations/limits.md` for every limit.

use crate::error::{Error, Result};

/// The deepest PromQL expression accepted: brackets in the text, and the
/// depth of the parsed expression tree (the evaluator recurses once per
/// level).
pub const MAX_PROMQL_DEPTH: usize = 256;

/// The most operators one PromQL query may hold: `a + b + c …` nests
/// without brackets, one tree level per operator.
pub const MAX_PROMQL_OPERATORS: usize = 4096;

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
/// comments.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// The deepest bracket nesting (`(`, `[`, `{`).
    depth: usize,
    /// Operator characters (`+ - * / % ^ = < > | &`, each counted) and the
    /// keyword operators (`and`, `or`, `unless`, `atan2`): an upper bound on
    /// the depth a chain of binary or unary operators gives a parsed tree.
    operators: usize,
    /// Regex matchers (`=~`, `!~`), which the parser compiles.
    regexes: usize,
    /// The longest string literal after a regex matcher.
    longest_regex: usize,
}

/// Scans `text`; stops (with the depth at `depth_limit + 1`) as soon as the
/// nesting passes `depth_limit`. Strings are `"…"` and `'…'` with
/// backslash escapes and raw `` `…` ``; comments run from `#` to the end of
/// the line.
fn scan(text: &str, depth_limit: usize) -> Scan {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut out = Scan::default();
    let mut regex_next = false;
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
                if [&b"and"[..], b"or", b"unless", b"atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    out.operators += 1;
                }
            }
            b'~' if i > 0 && matches!(bytes[i - 1], b'=' | b'!') => {
                out.regexes += 1;
                regex_next = true;
            }
            b'"' | b'\'' | b'`' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    // Raw strings have no escapes.
                    if bytes[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                if std::mem::take(&mut regex_next) {
                    out.longest_regex = out.longest_regex.max(i - start);
                }
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
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

/// Refuses PromQL nested deeper than [`MAX_PROMQL_DEPTH`] brackets,
/// chaining more than [`MAX_PROMQL_OPERATORS`] operators, or with too many
/// or too long regex matchers, before parsing.
pub fn check_promql(text: &str) -> Result<()> {
    let found = scan(text, MAX_PROMQL_DEPTH);
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
        let depth = |t: &str| scan(t, 10).depth;
        assert_eq!(depth(r#"up{a="(((\"(("}"#), 1);
        assert_eq!(depth("sum(up) # ((((\n"), 1);
        assert_eq!(depth("up{a=`((\\`}"), 1);
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(depth(&deep), 11);
    }

    #[test]
    fn deep_queries_are_refused_before_parsing() {
        let nested = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert!(check_promql(&nested(MAX_PROMQL_DEPTH)).is_ok());
        assert!(check_promql(&nested(MAX_PROMQL_DEPTH + 1)).is_err());
        let words = vec!["up"; MAX_PROMQL_OPERATORS + 2].join(" or ");
        assert!(check_promql(&words).is_err(), "keyword operators count too");
        assert!(check_promql("up{job=\"and or unless\"} or on(x) down").is_ok());
        let chain = vec!["1"; MAX_PROMQL_OPERATORS + 2].join("+");
        assert!(check_promql(&chain).is_err());
        assert!(check_promql("sum by (job) (rate(up[5m])) > 0.5 * 2").is_ok());
    }
}
