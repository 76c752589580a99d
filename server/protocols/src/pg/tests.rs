#![allow(clippy::unwrap_used)]
use arrow::datatypes::{DataType, TimeUnit};

use super::{encode::*, extended::*, *};

#[test]
fn parameters_are_bound_outside_quotes_and_comments() {
    let v = vec!["42".to_string(), "'it''s'".to_string()];
    assert_eq!(
        bind_parameters("SELECT * FROM t WHERE a = $1 AND b = $2", &v).unwrap(),
        "SELECT * FROM t WHERE a = 42 AND b = 'it''s'"
    );
    assert_eq!(
        bind_parameters("SELECT '$1', \"$2\" -- $1\n, $1 /* $2 */", &v).unwrap(),
        "SELECT '$1', \"$2\" -- $1\n, 42 /* $2 */"
    );
    assert!(bind_parameters("SELECT $3", &v).is_err());
    assert_eq!(parameter_count("SELECT $1, $2, '$5'"), 2);
    assert_eq!(parameter_count("SELECT 1"), 0);
}

#[test]
fn session_statements_are_answered_here() {
    assert!(matches!(
        session_statement("BEGIN"),
        Some(Response::TransactionStart(_))
    ));
    assert!(matches!(
        session_statement("set extra_float_digits = 3"),
        Some(Response::Execution(_))
    ));
    assert!(matches!(
        session_statement("SHOW transaction isolation level"),
        Some(Response::Query(_))
    ));
    // Strata's own SHOW statements go to the SQL front end.
    assert!(session_statement("SHOW TABLES").is_none());
    assert!(session_statement("SELECT 1").is_none());
}

#[test]
fn arrow_types_map_to_postgres_types() {
    assert_eq!(pg_type(&DataType::Int64), Type::INT8);
    assert_eq!(pg_type(&DataType::UInt64), Type::NUMERIC);
    assert_eq!(pg_type(&DataType::Utf8View), Type::TEXT);
    assert_eq!(
        pg_type(&DataType::Timestamp(TimeUnit::Millisecond, None)),
        Type::TIMESTAMP
    );
    assert_eq!(pg_type(&DataType::Float64), Type::FLOAT8);
}
