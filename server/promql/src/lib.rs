//! PromQL evaluation for `/api/v1/query` and `/api/v1/query_range`, with
//! the Prometheus 2.x semantics described in `docs/protocols/prometheus.md`.
//!
//! The crate knows nothing of tables or SQL: it reads samples through a
//! [`SampleSource`], which the server implements over the RFC 0003 layout
//! (`strata-server`'s `prom_read`). A query runs in two phases:
//! 1. [`prefetch`] reads, once, the samples every selector of the parsed
//!    expression needs over the whole query span, counting them against
//!    the source's [`Budget`];
//! 2. [`eval::Evaluator`] evaluates the expression at each step over those
//!    samples.
//!
//! Subqueries and the functions not in [`SUPPORTED_FUNCTIONS`] are refused
//! with an error naming them, never answered approximately. The text of a
//! query is checked against [`limits`] before the parser sees it.

mod error;
mod eval;
pub mod limits;
pub mod select;

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    sync::Arc,
};

use promql_parser::parser::{self, Expr, VectorSelector};
use serde_json::{json, Value as Json};

pub use error::{Error, Result};
use eval::{format_value, Evaluator, Series, Value};

/// A series' labels, the metric name (`__name__`) among them.
pub type Labels = Arc<BTreeMap<String, String>>;

/// The series a selector reads: labels, and samples `(milliseconds, value)`
/// in time order.
pub type Selected = Vec<(Labels, Vec<(i64, f64)>)>;

/// Where a query's samples come from: the storage a server keeps them in.
pub trait SampleSource: Sync {
    /// The source's own error, handed back to the caller as it is; the
    /// evaluator's errors convert into it.
    type Error: From<Error> + Send;

    /// The series named `metric` (any name when `None`) whose labels `keep`
    /// accepts, each with its samples `(milliseconds, value)` in
    /// `[start_ms, end_ms]`, in time order.
    fn select(
        &self,
        metric: Option<&str>,
        keep: &(dyn Fn(&BTreeMap<String, String>) -> bool + Sync),
        start_ms: i64,
        end_ms: i64,
    ) -> impl Future<Output = Result<Selected, Self::Error>> + Send;

    /// A share of the query's memory limit for what it holds outside the
    /// source (the series it evaluates, its answer), named `what`; released
    /// when dropped.
    fn budget(&self, what: &'static str) -> Box<dyn Budget>;
}

/// Memory a query may hold: growing it past the query's limit fails with
/// [`Error::ResourcesExhausted`].
pub trait Budget: Send + Sync {
    fn try_grow(&self, bytes: usize) -> Result<()>;
}

/// A budget without a limit (tests, tools).
#[derive(Debug, Default)]
pub struct Unbounded;

impl Budget for Unbounded {
    fn try_grow(&self, _bytes: usize) -> Result<()> {
        Ok(())
    }
}

pub use eval::funcs::SUPPORTED as SUPPORTED_FUNCTIONS;

/// Prometheus's default lookback delta.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Prometheus refuses range queries with more points per series than this.
pub const MAX_POINTS: i64 = 11_000;

/// The error for an expression nested deeper than the limit.
fn too_deep() -> Error {
    Error::TooComplex(format!(
        "invalid PromQL: the expression nests more than {} levels",
        limits::MAX_PROMQL_DEPTH
    ))
}

/// Parses a query: its nesting is checked on the text before the parser
/// sees it, and on the tree (without recursion) before anything walks it.
pub fn parse(text: &str) -> Result<Expr> {
    limits::check_promql(text)?;
    let expr =
        parse_guarded(text).map_err(|e| Error::InvalidArgument(format!("invalid PromQL: {e}")))?;
    if depth(&expr) > limits::MAX_PROMQL_DEPTH {
        return Err(too_deep());
    }
    Ok(expr)
}

/// `promql_parser`'s parse, with its panics turned into errors. The parser
/// panics on some inputs instead of refusing them: a duration or offset
/// written as a number it cannot turn into a `Duration` (`up[1e300]`,
/// `up offset Inf`, `up[NaN]`). Callers check the nesting first
/// ([`limits::check_promql`]); a stack overflow is not a panic.
pub fn parse_guarded(text: &str) -> std::result::Result<Expr, String> {
    std::panic::catch_unwind(|| parser::parse(text)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the parser gave up".to_string());
        Err(why)
    })
}

/// The depth of an expression tree, walked with an explicit stack.
fn depth(e: &Expr) -> usize {
    let mut max = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        match e {
            Expr::Aggregate(a) => {
                stack.push((&a.expr, d + 1));
                if let Some(p) = &a.param {
                    stack.push((p, d + 1));
                }
            }
            Expr::Unary(u) => stack.push((&u.expr, d + 1)),
            Expr::Binary(b) => {
                stack.push((&b.lhs, d + 1));
                stack.push((&b.rhs, d + 1));
            }
            Expr::Paren(p) => stack.push((&p.expr, d + 1)),
            Expr::Subquery(s) => stack.push((&s.expr, d + 1)),
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), d + 1))),
            Expr::MatrixSelector(_)
            | Expr::VectorSelector(_)
            | Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::Extension(_) => {}
        }
    }
    max
}

/// Every selector of the expression with the window it is read over (the
/// range of a range selector, else 0 for "lookback").
fn selectors<'a>(e: &'a Expr, out: &mut Vec<(&'a VectorSelector, i64)>) -> Result<()> {
    match e {
        Expr::VectorSelector(vs) => out.push((vs, 0)),
        Expr::MatrixSelector(ms) => out.push((&ms.vs, eval::duration_ms(ms.range))),
        Expr::Aggregate(a) => {
            selectors(&a.expr, out)?;
            if let Some(p) = &a.param {
                selectors(p, out)?;
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out)?,
        Expr::Binary(b) => {
            selectors(&b.lhs, out)?;
            selectors(&b.rhs, out)?;
        }
        Expr::Paren(p) => selectors(&p.expr, out)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                selectors(a, out)?;
            }
        }
        Expr::Subquery(_) => return Err(eval::unsupported("subqueries")),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Extension(_) => return Err(eval::unsupported("extension expressions")),
    }
    Ok(())
}

/// What a query does with its text before reading any data: parse it and
/// walk its selectors (refusing what is not supported). The fuzz targets
/// (`fuzz/`) call this.
pub fn check(text: &str) -> Result<()> {
    let expr = parse(text)?;
    let mut list = Vec::new();
    selectors(&expr, &mut list)
}

/// Reads the samples of every selector for steps in `[start, end]`.
async fn prefetch<S: SampleSource>(
    source: &S,
    expr: &Expr,
    start: i64,
    end: i64,
    lookback: i64,
) -> Result<Evaluator, S::Error> {
    let mut ev = Evaluator::new(start, end, lookback);
    ev.memory = source.budget("promql series");
    let mut list = Vec::new();
    selectors(expr, &mut list)?;
    // The selectors are read concurrently: each is a few SQL queries.
    let reads = list.into_iter().map(|(vs, range)| {
        let (a, b) = (
            ev.ref_time(start, &vs.at, &vs.offset),
            ev.ref_time(end, &vs.at, &vs.offset),
        );
        let window = if range > 0 { range } else { lookback };
        let (mint, maxt) = (a.min(b) - window, a.max(b));
        async move {
            let (name, groups) = select::groups_of(vs);
            let keep = |l: &BTreeMap<String, String>| select::matches(&groups, l);
            let found = source.select(name.as_deref(), &keep, mint, maxt).await?;
            let series: Vec<Series> = found
                .into_iter()
                .map(|(labels, points)| Series::new(labels, points))
                .collect();
            Ok::<_, S::Error>((eval::key(vs), series))
        }
    });
    for (key, series) in futures::future::try_join_all(reads).await? {
        // The series stay in memory while the query is evaluated: they
        // count against the query's memory limit.
        let bytes: usize = series.iter().map(series_size).sum();
        ev.memory.try_grow(bytes)?;
        ev.data.insert(key, series);
    }
    Ok(ev)
}

/// About what one series takes in memory: its points, and its labels twice
/// (with and without the metric name).
fn series_size(s: &Series) -> usize {
    let labels: usize = s.labels.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
    s.points.len() * std::mem::size_of::<(i64, f64)>() + 2 * labels + 64
}

/// Steps evaluated between two yields to the runtime: a range query of
/// 11,000 steps over many series is CPU work that must not hold a worker
/// thread past the query's timeout (a timeout only fires at an await).
const STEPS_PER_YIELD: usize = 32;

/// A time as Prometheus writes it: Unix seconds, with a fraction only when
/// there is one.
fn seconds(ms: i64) -> Json {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

/// `/api/v1/query`: the expression at one time, as Prometheus answers it.
pub async fn instant<S: SampleSource>(
    source: &S,
    text: &str,
    t: i64,
    lookback: i64,
) -> Result<Json, S::Error> {
    let expr = parse(text)?;
    let ev = prefetch(source, &expr, t, t, lookback).await?;
    Ok(match ev.eval(&expr, t)? {
        Value::Scalar(v) => {
            json!({"resultType": "scalar", "result": [seconds(t), format_value(v)]})
        }
        Value::Str(s) => json!({"resultType": "string", "result": [seconds(t), s]}),
        Value::Vector(v) => {
            check_unique(v.iter().map(|e| &e.labels))?;
            json!({
                "resultType": "vector",
                "result": v.iter().map(|e| json!({
                    "metric": *e.labels,
                    "value": [seconds(t), format_value(e.v)],
                })).collect::<Vec<_>>(),
            })
        }
        Value::Matrix(m) => json!({
            "resultType": "matrix",
            "result": m.iter().map(|w| json!({
                "metric": *w.labels,
                "values": w.points.iter().map(|(ts, v)| json!([seconds(*ts), format_value(*v)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    })
}

fn check_unique<'a>(labels: impl Iterator<Item = &'a eval::Labels>) -> Result<()> {
    let mut seen = HashSet::new();
    for l in labels {
        if !seen.insert(l) {
            return Err(Error::InvalidArgument(
                "vector cannot contain metrics with the same labelset".to_string(),
            ));
        }
    }
    Ok(())
}

/// `/api/v1/query_range`: the expression at `start`, `start + step`, … up
/// to `end`, as a matrix sorted by labels.
pub async fn range<S: SampleSource>(
    source: &S,
    text: &str,
    start: i64,
    end: i64,
    step: i64,
    lookback: i64,
) -> Result<Json, S::Error> {
    let expr = range_expr(text, start, end, step)?;
    let ev = prefetch(source, &expr, start, end, lookback).await?;
    let answer = source.budget("promql answer");
    Ok(range_steps(ev, &expr, answer, start, end, step).await?)
}

/// A range query's expression, once its times and text are checked.
fn range_expr(text: &str, start: i64, end: i64, step: i64) -> Result<Expr> {
    if end < start {
        return Err(Error::InvalidArgument(
            "end timestamp must not be before start time".to_string(),
        ));
    }
    if step <= 0 {
        return Err(Error::InvalidArgument(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
                .to_string(),
        ));
    }
    // In i128: the span of two API times does not fit an i64.
    if (i128::from(end) - i128::from(start)) / i128::from(step) > i128::from(MAX_POINTS) {
        return Err(Error::InvalidArgument(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the \
             query resolution (?step=XX)"
                .to_string(),
        ));
    }
    let expr = parse(text)?;
    if matches!(expr, Expr::MatrixSelector(_) | Expr::StringLiteral(_)) {
        return Err(Error::InvalidArgument(format!(
            "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
            if matches!(expr, Expr::StringLiteral(_)) {
                "string"
            } else {
                "range vector"
            }
        )));
    }
    Ok(expr)
}

/// Evaluates a range query at every step. The answer grows by a JSON pair
/// per point: it counts against `answer` like the series do.
async fn range_steps(
    ev: Evaluator,
    expr: &Expr,
    answer: Box<dyn Budget>,
    start: i64,
    end: i64,
    step: i64,
) -> Result<Json> {
    let mut out: BTreeMap<BTreeMap<String, String>, Vec<Json>> = BTreeMap::new();
    let mut t = start;
    let mut steps = 0usize;
    while t <= end {
        steps += 1;
        if steps.is_multiple_of(STEPS_PER_YIELD) {
            tokio::task::yield_now().await;
        }
        match ev.eval(expr, t)? {
            Value::Scalar(v) => {
                answer.try_grow(POINT_JSON_BYTES)?;
                out.entry(BTreeMap::new())
                    .or_default()
                    .push(json!([seconds(t), format_value(v)]))
            }
            Value::Vector(v) => {
                check_unique(v.iter().map(|e| &e.labels))?;
                answer.try_grow(v.len() * POINT_JSON_BYTES)?;
                for e in v {
                    out.entry((*e.labels).clone())
                        .or_default()
                        .push(json!([seconds(t), format_value(e.v)]));
                }
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "a range query must give a scalar or an instant vector".to_string(),
                ))
            }
        }
        match t.checked_add(step) {
            Some(next) => t = next,
            None => break,
        }
    }
    Ok(json!({
        "resultType": "matrix",
        "result": out.into_iter().map(|(metric, values)| json!({"metric": metric, "values": values})).collect::<Vec<_>>(),
    }))
}

/// About what one `[time, "value"]` pair of an answer takes in memory.
const POINT_JSON_BYTES: usize = 160;

/// Seconds as milliseconds, clamped to ±[`eval::MAX_MS`] (as Prometheus
/// clamps API times to its own minimum and maximum); `None` when not finite.
fn seconds_to_ms(f: f64) -> Option<i64> {
    // `as` saturates a finite f64 to the i64 range.
    f.is_finite()
        .then(|| eval::clamp_ms((f * 1000.0).round() as i64))
}

/// A Prometheus API time: Unix seconds (with a fraction) or RFC 3339.
/// `NaN` and infinities are refused; times past about 36 million years
/// from 1970 are clamped.
pub fn parse_time(s: &str) -> Result<i64> {
    if let Some(ms) = s.parse::<f64>().ok().and_then(seconds_to_ms) {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| eval::clamp_ms(d.timestamp_millis()))
        .map_err(|_| Error::InvalidArgument(format!("cannot parse {s:?} to a valid timestamp")))
}

/// A Prometheus API duration: seconds (with a fraction) or `1m30s`.
pub fn parse_duration(s: &str) -> Result<i64> {
    if let Ok(f) = s.parse::<f64>() {
        // Never handed to promql-parser, which panics on a number of
        // seconds that is NaN, infinite or negative.
        return seconds_to_ms(f).ok_or_else(|| {
            Error::InvalidArgument(format!("cannot parse {s:?} to a valid duration"))
        });
    }
    promql_parser::util::duration::parse_duration(s)
        .map(eval::duration_ms)
        .map_err(|_| Error::InvalidArgument(format!("cannot parse {s:?} to a valid duration")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn series(name: &str, extra: &[(&str, &str)], points: &[(i64, f64)]) -> Series {
        let mut l: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("__name__".to_string(), name.to_string());
        Series::new(std::sync::Arc::new(l), points.to_vec())
    }

    #[test]
    fn durations_the_parser_cannot_represent_are_errors_not_panics() {
        for q in [
            "up[1e300]",
            "up[NaN]",
            "up[Inf]",
            "up offset 1e300",
            "up offset Inf",
            "rate(up[1e300])",
            "up[1e300:1]",
            "up[5m:1e300]",
            "up @ 1e300",
            "up @ NaN",
        ] {
            match parse(q) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.starts_with("invalid PromQL"), "{q}: {m}")
                }
                Err(e) => panic!("{q}: unexpected error {e}"),
                // Some spellings are representable; they must just not panic.
                Ok(_) => {}
            }
        }
        assert!(parse("up[1e300]").is_err());
        assert!(parse("up offset Inf").is_err());
    }

    /// Evaluates `text` at `t` over in-memory series (every selector gets
    /// the series whose name it names).
    fn eval_at(text: &str, data: &[Series], t: i64) -> Value {
        let expr = parse(text).unwrap();
        let mut list = Vec::new();
        selectors(&expr, &mut list).unwrap();
        let mut ev = Evaluator::new(t, t, DEFAULT_LOOKBACK_MS);
        for (vs, _) in list {
            let (_, groups) = select::groups_of(vs);
            let picked = data
                .iter()
                .filter(|s| select::matches(&groups, &s.labels))
                .map(|s| Series::new(s.labels.clone(), s.points.clone()))
                .collect();
            ev.data.insert(eval::key(vs), picked);
        }
        ev.eval(&expr, t).unwrap()
    }

    fn values(v: Value) -> Vec<(BTreeMap<String, String>, f64)> {
        let Value::Vector(v) = v else {
            panic!("not a vector: {v:?}")
        };
        let mut out: Vec<_> = v.into_iter().map(|e| ((*e.labels).clone(), e.v)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn lookback_and_staleness() {
        let stale = f64::from_bits(eval::STALE_NAN_BITS);
        let data = [
            series("up", &[("job", "a")], &[(0, 1.0), (60_000, 2.0)]),
            series("up", &[("job", "b")], &[(0, 1.0), (30_000, stale)]),
        ];
        let v = values(eval_at("up", &data, 90_000));
        assert_eq!(v.len(), 1, "the stale series is gone: {v:?}");
        assert_eq!(v[0].1, 2.0);
        // Past the 5 minute lookback nothing is left.
        assert!(values(eval_at("up", &data, 60_000 + 300_001)).is_empty());
        assert_eq!(values(eval_at("up", &data, 60_000 + 300_000)).len(), 1);
        // offset moves the reference time back.
        let v = values(eval_at("up offset 1m", &data, 90_000));
        assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1.0]);
    }

    #[test]
    fn vector_matching_with_group_left() {
        let data = [
            series("req", &[("job", "a"), ("code", "200")], &[(0, 10.0)]),
            series("req", &[("job", "a"), ("code", "500")], &[(0, 2.0)]),
            series("limit", &[("job", "a"), ("team", "x")], &[(0, 4.0)]),
        ];
        let v = values(eval_at(
            "req / on(job) group_left(team) limit",
            &data,
            1_000,
        ));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0.get("team").map(String::as_str), Some("x"));
        assert!(!v[0].0.contains_key("__name__"));
        assert_eq!(v[0].1, 2.5);
        assert_eq!(v[1].1, 0.5);
        // Without group_left the many side is an error.
        let expr = parse("req / on(job) limit").unwrap();
        let mut list = Vec::new();
        selectors(&expr, &mut list).unwrap();
        assert_eq!(list.len(), 2);
        // Comparisons filter and keep the name.
        let v = values(eval_at("req > 5", &data, 1_000));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.get("__name__").map(String::as_str), Some("req"));
        let v = values(eval_at("req > bool 5", &data, 1_000));
        assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1.0, 0.0]);
    }

    #[test]
    fn aggregations_group_by_and_without() {
        let data = [
            series("m", &[("a", "1"), ("b", "x")], &[(0, 1.0)]),
            series("m", &[("a", "1"), ("b", "y")], &[(0, 3.0)]),
            series("m", &[("a", "2"), ("b", "x")], &[(0, 5.0)]),
        ];
        let v = values(eval_at("sum by (a) (m)", &data, 0));
        assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), vec![4.0, 5.0]);
        let v = values(eval_at("max without (a) (m)", &data, 0));
        assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), vec![5.0, 3.0]);
        let v = values(eval_at("topk(2, m)", &data, 0));
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|x| x.0.contains_key("__name__")));
        let v = values(eval_at("count(m)", &data, 0));
        assert_eq!(v[0].1, 3.0);
    }

    #[test]
    fn unsupported_functions_are_named() {
        let expr = parse("absent_over_time(up[5m])").unwrap();
        let ev = Evaluator::new(0, 0, DEFAULT_LOOKBACK_MS);
        let err = ev.eval(&expr, 0).unwrap_err().to_string();
        assert!(err.contains("absent_over_time"), "{err}");
        let err = selectors(&parse("max_over_time(up[5m:1m])").unwrap(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("subqueries"), "{err}");
    }

    #[test]
    fn api_times_and_durations() {
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_duration("15").unwrap(), 15_000);
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000);
        for bad in ["NaN", "inf", "-Inf", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        // Times and durations past 2^60 ms are clamped, not wrapped.
        assert_eq!(parse_time("-1e300").unwrap(), -eval::MAX_MS);
        assert_eq!(parse_duration("1e300").unwrap(), eval::MAX_MS);
        assert_eq!(parse_duration("100000000y").unwrap(), eval::MAX_MS);
    }
}
