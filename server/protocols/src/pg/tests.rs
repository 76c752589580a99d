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

/// Timestamps are sent as pgwire sends chrono's types, in every DateStyle,
/// as text and binary.
#[test]
fn timestamps_are_sent_as_pgwire_sends_them() {
    use bytes::BytesMut;
    use chrono::{DateTime, NaiveDateTime};
    use pgwire::api::Type;
    use pgwire::types::{format::FormatOptions, ToSqlText};
    use postgres_types::ToSql;

    let times: Vec<NaiveDateTime> = [
        0i64,
        1,
        1_704_067_200_123_456,
        -62_135_596_800_000_000, // 0001-01-01
        253_402_300_799_999_999, // 9999-12-31 23:59:59.999999
        -62_167_219_200_000_000, // year 0
        -62_198_755_200_000_000, // year -1
        253_402_300_800_000_000, // 10000-01-01
    ]
    .iter()
    .map(|us| DateTime::from_timestamp_micros(*us).unwrap().naive_utc())
    .collect();
    for style in [
        "ISO, MDY",
        "ISO, DMY",
        "iso",
        "SQL, DMY",
        "Postgres, MDY",
        "German",
        "nonsense",
    ] {
        let mut options = FormatOptions::default();
        options.date_style = style.to_string();
        for t in &times {
            for (tz, ty) in [(false, Type::TIMESTAMP), (true, Type::TIMESTAMPTZ)] {
                let ours = PgTimestamp { t: *t, tz };
                let mut a = BytesMut::new();
                ours.to_sql_text(&ty, &mut a, &options).unwrap();
                let mut b = BytesMut::new();
                if tz {
                    t.and_utc().to_sql_text(&ty, &mut b, &options).unwrap();
                } else {
                    t.to_sql_text(&ty, &mut b, &options).unwrap();
                }
                assert_eq!(a, b, "{t} as {ty} in {style}");
                let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                ours.to_sql(&ty, &mut a).unwrap();
                if tz {
                    t.and_utc().to_sql(&ty, &mut b).unwrap();
                } else {
                    t.to_sql(&ty, &mut b).unwrap();
                }
                assert_eq!(a, b, "{t} as binary {ty}");
            }
        }
    }
}
