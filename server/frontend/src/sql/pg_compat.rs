//! What PostgreSQL clients expect of the SQL itself, whichever protocol
//! carries it: the settings they read with `SHOW` or `current_setting()`,
//! and `current_database()`.

use std::sync::Arc;

use arrow::datatypes::DataType;

/// The PostgreSQL version Strata answers as.
pub const SERVER_VERSION: &str = "15.0";

/// The PostgreSQL settings clients commonly `SHOW`.
pub fn pg_setting(name: &str) -> Option<&'static str> {
    Some(match name {
        "transaction isolation level"
        | "transaction_isolation"
        | "default_transaction_isolation" => "read committed",
        "server_version" => SERVER_VERSION,
        "server_version_num" => "150000",
        "standard_conforming_strings" => "on",
        "client_encoding" | "server_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "timezone" | "time zone" => "UTC",
        "search_path" => "public",
        "integer_datetimes" => "on",
        "is_superuser" => "on",
        "max_identifier_length" => "63",
        "application_name" => "",
        _ => return None,
    })
}

/// `current_setting(name)`: the PostgreSQL settings clients read (Grafana
/// reads `server_version_num` to pick its SQL dialect).
pub fn current_setting_udf() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::{
        common::{DataFusionError, ScalarValue},
        logical_expr::{create_udf, ColumnarValue, Volatility},
    };
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let name = match args.first() {
                Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(n)))) => n.to_ascii_lowercase(),
                _ => {
                    return Err(DataFusionError::Plan(
                        "current_setting takes a constant setting name".to_string(),
                    ))
                }
            };
            let value = pg_setting(&name).ok_or_else(|| {
                DataFusionError::Plan(format!("unrecognized configuration parameter \"{name}\""))
            })?;
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                value.to_string(),
            ))))
        }),
    )
}

/// `current_database()` or `current_schema()`: the database the statement
/// runs in (a Strata database is a schema of DataFusion's catalog), read
/// from the session's configuration, so that the text of a query is never
/// rewritten (a literal `'current_database()'` stays a literal).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionDatabase {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for SessionDatabase {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        let db = args.config_options.catalog.default_schema.clone();
        Ok(datafusion::logical_expr::ColumnarValue::Scalar(
            datafusion::common::ScalarValue::Utf8(Some(db)),
        ))
    }
}

/// `current_database()` and `current_schema()` (see [`SessionDatabase`]).
pub fn session_database_udfs() -> Vec<datafusion::logical_expr::ScalarUDF> {
    ["current_database", "current_schema"]
        .into_iter()
        .map(|name| {
            datafusion::logical_expr::ScalarUDF::new_from_impl(SessionDatabase {
                name,
                signature: datafusion::logical_expr::Signature::nullary(
                    datafusion::logical_expr::Volatility::Stable,
                ),
            })
        })
        .collect()
}
