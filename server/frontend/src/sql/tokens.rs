//! A cursor over SQL tokens for Strata's own statements, with errors that
//! name the line and column of the offending token.

use datafusion::sql::sqlparser::{
    dialect::GenericDialect,
    tokenizer::{Token, TokenWithSpan, Tokenizer, Word},
};

use crate::error::{Error, Result};

/// Tokens of one statement, without whitespace and comments.
pub struct Cursor {
    tokens: Vec<TokenWithSpan>,
    pos: usize,
}

impl Cursor {
    pub fn new(sql: &str) -> Result<Self> {
        let dialect = GenericDialect {};
        let tokens = Tokenizer::new(&dialect, sql)
            .tokenize_with_location()
            .map_err(|e| Error::Parse {
                message: e.message.clone(),
                line: e.location.line,
                column: e.location.column,
            })?
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect();
        Ok(Self { tokens, pos: 0 })
    }

    pub fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|t| &t.token)
    }

    pub fn peek_nth(&self, n: usize) -> Option<&Token> {
        self.tokens.get(self.pos + n).map(|t| &t.token)
    }

    pub fn advance(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos).map(|t| &t.token);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    /// An error located at the current token (or at the end).
    pub fn error(&self, message: impl Into<String>) -> Error {
        let (line, column) = match self.tokens.get(self.pos).or_else(|| self.tokens.last()) {
            Some(t) => (t.span.start.line, t.span.start.column),
            None => (1, 1),
        };
        Error::Parse {
            message: message.into(),
            line,
            column,
        }
    }

    fn describe(&self) -> String {
        match self.peek() {
            Some(t) => format!("'{t}'"),
            None => "end of statement".to_string(),
        }
    }

    /// Whether the next word is `kw` (case-insensitive, unquoted).
    pub fn peek_keyword(&self, kw: &str) -> bool {
        self.peek_keyword_nth(0, kw)
    }

    pub fn peek_keyword_nth(&self, n: usize, kw: &str) -> bool {
        matches!(self.peek_nth(n), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }

    /// Consumes `kw` if it is next.
    pub fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.peek_keyword(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes the keywords if they are all next.
    pub fn eat_keywords(&mut self, kws: &[&str]) -> bool {
        if kws
            .iter()
            .enumerate()
            .all(|(i, k)| self.peek_keyword_nth(i, k))
        {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    pub fn expect_keyword(&mut self, kw: &str) -> Result<()> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(self.error(format!("expected {kw}, found {}", self.describe())))
        }
    }

    pub fn eat_token(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub fn expect_token(&mut self, token: &Token) -> Result<()> {
        if self.eat_token(token) {
            Ok(())
        } else {
            Err(self.error(format!("expected '{token}', found {}", self.describe())))
        }
    }

    /// An identifier: unquoted names are lower-cased, as DataFusion does;
    /// quoted ones ("x", `x`) are kept as written.
    pub fn identifier(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let name = normalize(w);
                self.pos += 1;
                Ok(name)
            }
            Some(Token::SingleQuotedString(s)) if what == "database" => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.error(format!("expected {what} name, found {}", self.describe()))),
        }
    }

    /// A possibly qualified name `[db.]name`.
    pub fn object_name(&mut self, what: &str) -> Result<(Option<String>, String)> {
        let first = self.identifier(what)?;
        if self.eat_token(&Token::Period) {
            let second = self.identifier(what)?;
            Ok((Some(first), second))
        } else {
            Ok((None, first))
        }
    }

    /// A literal or bare word value, as text.
    pub fn value(&mut self) -> Result<String> {
        let v = match self.peek() {
            Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => s.clone(),
            Some(Token::Number(n, _)) => n.clone(),
            Some(Token::Word(w)) => w.value.clone(),
            _ => return Err(self.error(format!("expected a value, found {}", self.describe()))),
        };
        self.pos += 1;
        Ok(v)
    }

    /// Skips an optional trailing `;` and requires the end of the statement.
    pub fn expect_end(&mut self) -> Result<()> {
        while self.eat_token(&Token::SemiColon) {}
        match self.peek() {
            None | Some(Token::EOF) => Ok(()),
            Some(_) => Err(self.error(format!(
                "unexpected {} after the end of the statement",
                self.describe()
            ))),
        }
    }
}

pub fn normalize(w: &Word) -> String {
    if w.quote_style.is_some() {
        w.value.clone()
    } else {
        w.value.to_lowercase()
    }
}
