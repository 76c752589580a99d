//! Printing results as a table, CSV or JSON.

use arrow::{
    csv::WriterBuilder as CsvWriterBuilder,
    json::{writer::JsonArray, WriterBuilder as JsonWriterBuilder},
    record_batch::RecordBatch,
    util::pretty::pretty_format_batches,
};

/// How `strata sql` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format {other}; use table, csv or json")),
        }
    }
}

/// Renders rows in `format`.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String, String> {
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) && batches.is_empty() {
                return Ok("(no rows)".to_string());
            }
            pretty_format_batches(batches)
                .map(|t| t.to_string())
                .map_err(|e| e.to_string())
        }
        Format::Csv => {
            let mut buf = Vec::new();
            {
                let mut writer = CsvWriterBuilder::new().with_header(true).build(&mut buf);
                for b in batches {
                    writer.write(b).map_err(|e| e.to_string())?;
                }
            }
            String::from_utf8(buf).map_err(|e| e.to_string())
        }
        Format::Json => {
            let mut buf = Vec::new();
            {
                let mut writer = JsonWriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, JsonArray>(&mut buf);
                for b in batches {
                    writer.write(b).map_err(|e| e.to_string())?;
                }
                writer.finish().map_err(|e| e.to_string())?;
            }
            let s = String::from_utf8(buf).map_err(|e| e.to_string())?;
            Ok(if s.is_empty() { "[]".to_string() } else { s })
        }
    }
}
