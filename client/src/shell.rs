//! `strata sql`: run statements from `-e`, from a file, or interactively.
//!
//! Contract (relied on by scripts and tests): statements run in order; the
//! first failure prints `Error: <server message>` on stderr and makes the
//! process exit non-zero. `USE db` switches the database for the statements
//! that follow. The interactive shell keeps history in `~/.strata_history`
//! and reads a statement over several lines until it ends with `;`.

use std::{io::Write, path::PathBuf, time::Instant};

use rustyline::{error::ReadlineError, DefaultEditor};

use crate::{
    format::{render, Format},
    split::{is_complete, split_statements},
    Client, Error, SqlOutput,
};

/// Options of one `strata sql` run.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    pub endpoint: String,
    pub database: String,
    pub format: Format,
}

/// A session: a connection plus the current database.
pub struct Session {
    client: Client,
    database: String,
    format: Format,
}

fn parse_use(stmt: &str) -> Option<String> {
    let mut words = stmt.split_whitespace();
    let first = words.next()?;
    if !first.eq_ignore_ascii_case("use") {
        return None;
    }
    let raw = words.next()?.trim_end_matches(';');
    if words.next().is_some() {
        return None;
    }
    // Like the server: quoted names keep their case, others are lower-cased.
    if raw.starts_with(['`', '"']) {
        Some(raw.trim_matches(['`', '"']).to_string())
    } else {
        Some(raw.to_lowercase())
    }
}

impl Session {
    pub async fn connect(opts: &ShellOptions) -> Result<Self, Error> {
        Ok(Self {
            client: Client::connect(&opts.endpoint).await?,
            database: opts.database.clone(),
            format: opts.format,
        })
    }

    /// Runs one statement and prints its result to `out`.
    pub async fn run_statement(
        &mut self,
        stmt: &str,
        out: &mut impl Write,
        timing: bool,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let output = self.client.sql(&self.database, stmt).await?;
        if let Some(db) = parse_use(stmt) {
            // The server validated the database; remember it.
            self.database = db;
        }
        let elapsed = started.elapsed();
        if let (SqlOutput::AffectedRows(n), true, Format::Table) = (&output, timing, self.format) {
            let rows = if *n == 1 { "row" } else { "rows" };
            let _ = writeln!(
                out,
                "Query OK, {n} {rows} affected ({:.3} sec)\n",
                elapsed.as_secs_f64()
            );
            return Ok(());
        }
        let text = match &output {
            SqlOutput::AffectedRows(n) => match self.format {
                Format::Table => format!("Affected rows: {n}"),
                Format::Json => format!("{{\"affected_rows\":{n}}}"),
                Format::Csv => String::new(),
            },
            SqlOutput::Rows(batches) => render(batches, self.format).map_err(Error::Decode)?,
        };
        if !text.is_empty() {
            let newline = if text.ends_with('\n') { "" } else { "\n" };
            let _ = write!(out, "{text}{newline}");
        }
        if timing && self.format == Format::Table {
            let rows: usize = match &output {
                SqlOutput::Rows(b) => b.iter().map(|b| b.num_rows()).sum(),
                SqlOutput::AffectedRows(_) => 0,
            };
            let what = match output {
                SqlOutput::Rows(_) => {
                    format!("{rows} row{} in set", if rows == 1 { "" } else { "s" })
                }
                SqlOutput::AffectedRows(_) => "Query OK".to_string(),
            };
            let _ = writeln!(out, "{what} ({:.3} sec)\n", elapsed.as_secs_f64());
        }
        Ok(())
    }

    pub fn database(&self) -> &str {
        &self.database
    }
}

/// Runs every statement of `sql`; stops at the first error.
pub async fn run_batch(opts: &ShellOptions, sql: &str) -> Result<(), Error> {
    let mut session = Session::connect(opts).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for stmt in split_statements(sql) {
        session.run_statement(&stmt, &mut out, false).await?;
    }
    Ok(())
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".strata_history"))
}

const HELP: &str = "Enter SQL statements ending with ';'. Commands: \\q or exit to quit, \\h for help.
Examples:
  SHOW TABLES;
  CREATE TABLE cpu (host STRING TAG, ts TIMESTAMP NOT NULL, usage DOUBLE, TIMESTAMP KEY(ts));
  SELECT date_bin(INTERVAL '1 minute', ts) AS minute, avg(usage) FROM cpu GROUP BY minute ORDER BY minute;";

/// The interactive shell.
pub async fn run_interactive(opts: &ShellOptions) -> Result<(), Error> {
    let mut session = Session::connect(opts).await?;
    let mut editor = DefaultEditor::new().map_err(|e| Error::Decode(format!("terminal: {e}")))?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "Connected to Strata at {}. Type \\h for help, \\q to quit.",
        opts.endpoint
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            format!("strata:{}> ", session.database())
        } else {
            "      -> ".to_string()
        };
        match editor.readline(&prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() {
                    match trimmed {
                        "" => continue,
                        "\\q" | "exit" | "quit" | "exit;" | "quit;" => break,
                        "\\h" | "help" | "\\?" => {
                            println!("{HELP}");
                            continue;
                        }
                        _ => {}
                    }
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !is_complete(&buffer) {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.trim());
                let stdout = std::io::stdout();
                for stmt in split_statements(&buffer) {
                    let mut out = stdout.lock();
                    if let Err(e) = session.run_statement(&stmt, &mut out, true).await {
                        eprintln!("Error: {e}");
                        break;
                    }
                }
                buffer.clear();
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("Error: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
