//! PromQL functions, following Prometheus 2.x (`promql/functions.go`).
//! A function that is not listed here is refused with an error naming it.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Datelike, Timelike};
use promql_parser::{
    label::{MatchOp, METRIC_NAME},
    parser::{Call, Expr},
};

use super::{drop_name, quantile, unsupported, variance, Elem, Evaluator, Value, Window};
use crate::error::{Error, Result};

/// The functions Strata evaluates (the rest get an "unsupported" error).
pub const SUPPORTED: &[&str] = &[
    "abs",
    "absent",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

fn arg(c: &Call, i: usize) -> Result<&Expr> {
    c.args.args.get(i).map(|b| b.as_ref()).ok_or_else(|| {
        Error::InvalidArgument(format!("{}: missing argument {}", c.func.name, i + 1))
    })
}

fn string_arg(ev: &Evaluator, c: &Call, i: usize, t: i64) -> Result<String> {
    match ev.eval(arg(c, i)?, t)? {
        Value::Str(s) => Ok(s),
        _ => Err(Error::InvalidArgument(format!(
            "{}: argument {} must be a string",
            c.func.name,
            i + 1
        ))),
    }
}

pub fn call(ev: &Evaluator, c: &Call, t: i64) -> Result<Value> {
    let name = c.func.name;
    if !SUPPORTED.contains(&name) {
        return Err(unsupported(&format!("the function {name}()")));
    }
    match name {
        "rate" | "increase" | "delta" | "irate" | "idelta" | "changes" | "resets" | "deriv"
        | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "last_over_time" | "present_over_time" | "stddev_over_time"
        | "stdvar_over_time" => range_fn(ev, c, 0, t, |w, rs, re| over(name, w, rs, re)),
        "quantile_over_time" => {
            let q = ev.scalar(arg(c, 0)?, t)?;
            range_fn(ev, c, 1, t, |w, _, _| {
                Some(quantile(q, w.iter().map(|p| p.1).collect()))
            })
        }
        "predict_linear" => {
            let secs = ev.scalar(arg(c, 1)?, t)?;
            range_fn(ev, c, 0, t, |w, _, _| {
                if w.len() < 2 {
                    return None;
                }
                let (slope, intercept) = linear_regression(w, t);
                Some(slope * secs + intercept)
            })
        }
        "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
        "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
        "vector" => Ok(Value::Vector(vec![Elem {
            labels: Arc::new(BTreeMap::new()),
            v: ev.scalar(arg(c, 0)?, t)?,
            ts: t,
        }])),
        "scalar" => {
            let v = ev.vector(arg(c, 0)?, t)?;
            Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
        }
        "timestamp" => Ok(Value::Vector(
            ev.vector(arg(c, 0)?, t)?
                .into_iter()
                .map(|e| Elem {
                    labels: drop_name(&e.labels),
                    v: e.ts as f64 / 1000.0,
                    ts: t,
                })
                .collect(),
        )),
        "sort" | "sort_desc" => {
            let mut v = ev.vector(arg(c, 0)?, t)?;
            v.sort_by(|a, b| a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal));
            if name == "sort_desc" {
                v.reverse();
            }
            Ok(Value::Vector(v))
        }
        "absent" => {
            let v = ev.vector(arg(c, 0)?, t)?;
            if !v.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(Value::Vector(vec![Elem {
                labels: Arc::new(absent_labels(arg(c, 0)?)),
                v: 1.0,
                ts: t,
            }]))
        }
        "label_replace" => label_replace(ev, c, t),
        "label_join" => label_join(ev, c, t),
        "histogram_quantile" => {
            let q = ev.scalar(arg(c, 0)?, t)?;
            Ok(Value::Vector(histogram_quantile(
                q,
                ev.vector(arg(c, 1)?, t)?,
                t,
            )))
        }
        "round" => {
            let to = match c.args.args.get(1) {
                Some(e) => ev.scalar(e, t)?,
                None => 1.0,
            };
            let inv = 1.0 / to;
            map(ev, c, t, |v| (v * inv + 0.5).floor() / inv)
        }
        "clamp" => {
            let (lo, hi) = (ev.scalar(arg(c, 1)?, t)?, ev.scalar(arg(c, 2)?, t)?);
            if hi < lo {
                return Ok(Value::Vector(Vec::new()));
            }
            map(ev, c, t, |v| lo.max(hi.min(v)))
        }
        "clamp_min" => {
            let lo = ev.scalar(arg(c, 1)?, t)?;
            map(ev, c, t, |v| lo.max(v))
        }
        "clamp_max" => {
            let hi = ev.scalar(arg(c, 1)?, t)?;
            map(ev, c, t, |v| hi.min(v))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let input = if c.args.args.is_empty() {
                vec![Elem {
                    labels: Arc::new(BTreeMap::new()),
                    v: t as f64 / 1000.0,
                    ts: t,
                }]
            } else {
                ev.vector(arg(c, 0)?, t)?
            };
            Ok(Value::Vector(
                input
                    .into_iter()
                    .map(|e| Elem {
                        labels: drop_name(&e.labels),
                        v: date_part(name, e.v),
                        ts: t,
                    })
                    .collect(),
            ))
        }
        _ => {
            let f: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sqrt" => f64::sqrt,
                "sgn" => |v: f64| {
                    if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        -1.0
                    } else {
                        v
                    }
                },
                "acos" => f64::acos,
                "acosh" => f64::acosh,
                "asin" => f64::asin,
                "asinh" => f64::asinh,
                "atan" => f64::atan,
                "atanh" => f64::atanh,
                "cos" => f64::cos,
                "cosh" => f64::cosh,
                "sin" => f64::sin,
                "sinh" => f64::sinh,
                "tan" => f64::tan,
                "tanh" => f64::tanh,
                "deg" => f64::to_degrees,
                "rad" => f64::to_radians,
                other => return Err(unsupported(&format!("the function {other}()"))),
            };
            map(ev, c, t, f)
        }
    }
}

/// Applies `f` to every element of the first argument, dropping the name.
fn map(ev: &Evaluator, c: &Call, t: i64, f: impl Fn(f64) -> f64) -> Result<Value> {
    Ok(Value::Vector(
        ev.vector(arg(c, 0)?, t)?
            .into_iter()
            .map(|e| Elem {
                labels: drop_name(&e.labels),
                v: f(e.v),
                ts: t,
            })
            .collect(),
    ))
}

/// Evaluates a function of a range vector (argument `i`): `f` gets each
/// series' samples and the window's bounds.
fn range_fn(
    ev: &Evaluator,
    c: &Call,
    i: usize,
    t: i64,
    f: impl Fn(&[(i64, f64)], i64, i64) -> Option<f64>,
) -> Result<Value> {
    let Expr::MatrixSelector(ms) = arg(c, i)? else {
        return Err(unsupported(&format!(
            "{}() over anything but a range selector (subqueries)",
            c.func.name
        )));
    };
    let range = super::duration_ms(ms.range);
    let end = ev.ref_time(t, &ms.vs.at, &ms.vs.offset);
    let keep_name = c.func.name == "last_over_time";
    let windows: Vec<Window> = ev.range(&ms.vs, range, t)?;
    let mut out = Vec::with_capacity(windows.len());
    for w in windows {
        if let Some(v) = f(&w.points, end - range, end) {
            out.push(Elem {
                labels: if keep_name { w.labels } else { w.unnamed },
                v,
                ts: t,
            });
        }
    }
    Ok(Value::Vector(out))
}

fn over(name: &str, w: &[(i64, f64)], range_start: i64, range_end: i64) -> Option<f64> {
    let vals = || w.iter().map(|p| p.1);
    let n = w.len() as f64;
    Some(match name {
        "rate" => extrapolated(w, range_start, range_end, true, true)?,
        "increase" => extrapolated(w, range_start, range_end, true, false)?,
        "delta" => extrapolated(w, range_start, range_end, false, false)?,
        "irate" | "idelta" => {
            if w.len() < 2 {
                return None;
            }
            let (prev, last) = (w[w.len() - 2], w[w.len() - 1]);
            let mut d = last.1 - prev.1;
            if name == "irate" {
                if last.1 < prev.1 {
                    d = last.1;
                }
                let secs = (last.0 - prev.0) as f64 / 1000.0;
                if secs == 0.0 {
                    return None;
                }
                d /= secs;
            }
            d
        }
        "changes" => w
            .windows(2)
            .filter(|p| p[0].1 != p[1].1 && !(p[0].1.is_nan() && p[1].1.is_nan()))
            .count() as f64,
        "resets" => w.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64,
        "deriv" => {
            if w.len() < 2 {
                return None;
            }
            linear_regression(w, w[0].0).0
        }
        "avg_over_time" => vals().sum::<f64>() / n,
        "sum_over_time" => vals().sum(),
        "count_over_time" => n,
        "present_over_time" => 1.0,
        "last_over_time" => w[w.len() - 1].1,
        "min_over_time" => vals().fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }),
        "max_over_time" => vals().fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }),
        "stdvar_over_time" => variance(&vals().collect::<Vec<_>>()),
        "stddev_over_time" => variance(&vals().collect::<Vec<_>>()).sqrt(),
        _ => return None,
    })
}

/// `rate`, `increase` and `delta`: the change over the window, corrected for
/// counter resets and extrapolated to the window's edges the way Prometheus
/// does (not past half a sample interval beyond the data, and not below
/// zero for a counter).
fn extrapolated(
    w: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (first, last) = (w[0], w[w.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        for p in w.windows(2) {
            if p[1].1 < p[0].1 {
                result += p[0].1;
            }
        }
    }
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg_step = sampled / (w.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    result *= interval / sampled;
    if per_second {
        result /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result)
}

/// Least-squares slope (per second) and the value at `intercept_ms`.
fn linear_regression(w: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let first = w[0].1;
    if w.iter().all(|p| p.1 == first) {
        if first.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, first);
    }
    let (mut n, mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(ts, v) in w {
        let x = (ts - intercept_ms) as f64 / 1000.0;
        n += 1.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// The labels `absent()` gives: the selector's equality matchers.
fn absent_labels(e: &Expr) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Expr::VectorSelector(vs) = e else {
        return out;
    };
    let mut dup = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && out.insert(m.name.clone(), m.value.clone()).is_some() {
            dup.push(m.name.clone());
        }
    }
    for d in dup {
        out.remove(&d);
    }
    out
}

fn label_replace(ev: &Evaluator, c: &Call, t: i64) -> Result<Value> {
    let dst = string_arg(ev, c, 1, t)?;
    let repl = string_arg(ev, c, 2, t)?;
    let src = string_arg(ev, c, 3, t)?;
    let pattern = string_arg(ev, c, 4, t)?;
    let re = crate::limits::client_regex(&format!("^(?s:{pattern})$"), "label_replace")?;
    let mut out = Vec::new();
    for mut e in ev.vector(arg(c, 0)?, t)? {
        let value = e.labels.get(&src).cloned().unwrap_or_default();
        if let Some(caps) = re.captures(&value) {
            let mut res = String::new();
            caps.expand(&repl, &mut res);
            let mut l = (*e.labels).clone();
            if res.is_empty() {
                l.remove(&dst);
            } else {
                l.insert(dst.clone(), res);
            }
            e.labels = Arc::new(l);
        }
        out.push(e);
    }
    Ok(Value::Vector(out))
}

fn label_join(ev: &Evaluator, c: &Call, t: i64) -> Result<Value> {
    let dst = string_arg(ev, c, 1, t)?;
    let sep = string_arg(ev, c, 2, t)?;
    let mut srcs = Vec::new();
    for i in 3..c.args.args.len() {
        srcs.push(string_arg(ev, c, i, t)?);
    }
    let mut out = Vec::new();
    for mut e in ev.vector(arg(c, 0)?, t)? {
        let joined = srcs
            .iter()
            .map(|s| e.labels.get(s).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(&sep);
        let mut l = (*e.labels).clone();
        if joined.is_empty() {
            l.remove(&dst);
        } else {
            l.insert(dst.clone(), joined);
        }
        e.labels = Arc::new(l);
        out.push(e);
    }
    Ok(Value::Vector(out))
}

/// `histogram_quantile` over classic buckets (series with an `le` label).
fn histogram_quantile(q: f64, v: Vec<Elem>, t: i64) -> Vec<Elem> {
    let mut groups: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    for e in v {
        let Some(le) = e.labels.get("le").and_then(|s| parse_bound(s)) else {
            continue;
        };
        let mut key = (*e.labels).clone();
        key.remove("le");
        key.remove(METRIC_NAME);
        groups.entry(key).or_default().push((le, e.v));
    }
    groups
        .into_iter()
        .map(|(labels, buckets)| Elem {
            labels: Arc::new(labels),
            v: bucket_quantile(q, buckets),
            ts: t,
        })
        .collect()
}

fn parse_bound(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

fn bucket_quantile(q: f64, mut b: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Merge buckets with the same bound, then force monotonic counts.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for (le, c) in b {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for x in &mut merged {
        if x.1 > max {
            max = x.1;
        } else if x.1 < max {
            x.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let i = merged.partition_point(|x| x.1 < rank);
    if i == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if i == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[i].0, merged[i].1);
    if i > 0 {
        start = merged[i - 1].0;
        count -= merged[i - 1].1;
        rank -= merged[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn date_part(name: &str, secs: f64) -> f64 {
    if !secs.is_finite() {
        return f64::NAN;
    }
    let Some(d) = DateTime::from_timestamp(secs.floor() as i64, 0) else {
        return f64::NAN;
    };
    (match name {
        "minute" => d.minute(),
        "hour" => d.hour(),
        "day_of_week" => d.weekday().num_days_from_sunday(),
        "day_of_month" => d.day(),
        "day_of_year" => d.ordinal(),
        "month" => d.month(),
        "year" => d.year() as u32,
        _ => {
            // days_in_month: the day before the first of the next month.
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            chrono::NaiveDate::from_ymd_opt(y, m, 1)
                .and_then(|n| n.pred_opt())
                .map_or(0, |n| n.day())
        }
    }) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // A counter growing by 1 every 10 s from 1, sampled from 5 s to 55 s
        // in a 60 s window ending at 60 s: 5 increments over 50 s,
        // extrapolated by 5 s on each side (under 1.1 sample intervals).
        let w: Vec<(i64, f64)> = (0..6)
            .map(|i| (5_000 + i * 10_000, (i + 1) as f64))
            .collect();
        let r = extrapolated(&w, 0, 60_000, true, true).unwrap_or(f64::NAN);
        assert!((r - 0.1).abs() < 1e-12, "{r}");
        let inc = extrapolated(&w, 0, 60_000, true, false).unwrap_or(f64::NAN);
        assert!((inc - 6.0).abs() < 1e-12, "{inc}");
        // A reset adds the value before it: 3 up to 8, then 2 after the reset.
        let w = vec![(0, 5.0), (10_000, 8.0), (20_000, 2.0)];
        let inc = extrapolated(&w, 0, 20_000, true, false).unwrap_or(f64::NAN);
        assert!((inc - 5.0).abs() < 1e-12, "{inc}");
        assert!(extrapolated(&w[..1], 0, 20_000, true, true).is_none());
        // A counter starting at 0 is not extrapolated below zero: the start
        // moves to where it would have been 0 (here the first sample).
        let w: Vec<(i64, f64)> = (0..6).map(|i| (5_000 + i * 10_000, i as f64)).collect();
        let r = extrapolated(&w, 0, 60_000, true, false).unwrap_or(f64::NAN);
        assert!((r - 5.5).abs() < 1e-12, "{r}");
    }

    #[test]
    fn bucket_quantile_interpolates_within_a_bucket() {
        let b = vec![(0.1, 10.0), (0.5, 30.0), (f64::INFINITY, 40.0)];
        assert!((bucket_quantile(0.5, b.clone()) - 0.3).abs() < 1e-12);
        assert_eq!(bucket_quantile(0.99, b.clone()), 0.5);
        assert!(bucket_quantile(0.5, vec![(0.1, 1.0)]).is_nan());
        assert_eq!(bucket_quantile(-1.0, b), f64::NEG_INFINITY);
    }

    #[test]
    fn quantile_interpolates_between_ranks() {
        assert_eq!(quantile(0.5, vec![1.0, 3.0, 2.0, 4.0]), 2.5);
        assert_eq!(quantile(0.0, vec![7.0, 1.0]), 1.0);
        assert_eq!(quantile(2.0, vec![1.0]), f64::INFINITY);
    }

    #[test]
    fn date_parts_are_utc() {
        // 2024-02-29T13:45:00Z
        let s = 1_709_214_300.0;
        assert_eq!(date_part("hour", s), 13.0);
        assert_eq!(date_part("minute", s), 45.0);
        assert_eq!(date_part("days_in_month", s), 29.0);
        assert_eq!(date_part("day_of_week", s), 4.0);
        assert_eq!(date_part("year", s), 2024.0);
    }
}
