//! Splitting SQL text into statements at top-level semicolons, respecting
//! quotes ('…', "…", `…`) and comments (`-- …`, `/* … */`).

/// Splits `sql` into trimmed, non-empty statements (without the `;`).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                current.push(c);
                while let Some(d) = chars.next() {
                    current.push(d);
                    if d == c {
                        // A doubled quote is an escaped quote.
                        if chars.peek() == Some(&c) {
                            if let Some(e) = chars.next() {
                                current.push(e);
                            }
                            continue;
                        }
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                // Line comment: drop it up to the newline.
                for d in chars.by_ref() {
                    if d == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                current.push(' ');
            }
            ';' => {
                let stmt = current.trim();
                if !stmt.is_empty() {
                    out.push(stmt.to_string());
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    let stmt = current.trim();
    if !stmt.is_empty() {
        out.push(stmt.to_string());
    }
    out
}

/// Whether `sql` ends a statement: its last significant character, outside
/// quotes and comments, is `;`. The interactive shell reads lines until then.
pub fn is_complete(sql: &str) -> bool {
    let mut last_significant = None;
    let mut chars = sql.chars().peekable();
    let mut in_quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = in_quote {
            if c == q {
                in_quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                in_quote = Some(c);
                last_significant = Some(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {}
            c => last_significant = Some(c),
        }
    }
    in_quote.is_none() && last_significant == Some(';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let sql = "SELECT 'a;b' ; -- c;d\nSELECT \"x;\" /* ; */ ;;\n SELECT 1";
        assert_eq!(
            split_statements(sql),
            vec!["SELECT 'a;b'", "SELECT \"x;\"", "SELECT 1"]
        );
        assert_eq!(split_statements("  ;  "), Vec::<String>::new());
        assert_eq!(split_statements("SELECT 'it''s;'"), vec!["SELECT 'it''s;'"]);
    }

    #[test]
    fn detects_complete_statements() {
        assert!(is_complete("SELECT 1;"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT ';"));
        assert!(is_complete("SELECT 1; -- done"));
    }
}
