//! Step-by-step evaluation of a parsed PromQL expression over samples that
//! were read beforehand (see [`super::prefetch`]).
//!
//! This follows the Prometheus 2.x engine: an instant selector takes the
//! newest sample in `[t - lookback, t]` unless it is a stale marker; a range
//! selector takes the samples in `[t - range, t]`; the offset and `@`
//! modifiers move `t`. Every step is evaluated on its own, so vector
//! matching, aggregation groups and `topk` are decided per step, as there.

pub(crate) mod funcs;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use promql_parser::{
    label::METRIC_NAME,
    parser::{
        AggregateExpr, AtModifier, BinModifier, BinaryExpr, Expr, LabelModifier, Offset,
        VectorMatchCardinality, VectorSelector,
    },
};

use crate::error::{Error, Result};

pub use crate::Labels;

/// One element of an instant vector. `ts` is the sample's own timestamp for
/// a plain selector (what `timestamp()` returns), otherwise the step.
#[derive(Clone, Debug)]
pub struct Elem {
    pub labels: Labels,
    pub v: f64,
    pub ts: i64,
}

/// A series of a range vector: samples in time order, stale markers removed.
#[derive(Clone, Debug)]
pub struct Window {
    pub labels: Labels,
    /// `labels` without the metric name.
    pub unnamed: Labels,
    pub points: Vec<(i64, f64)>,
}

#[derive(Clone, Debug)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<Elem>),
    Matrix(Vec<Window>),
    Str(String),
}

/// A series read for one selector: all its samples in the needed time span.
#[derive(Debug)]
pub struct Series {
    pub labels: Labels,
    /// `labels` without the metric name, made once per query rather than
    /// at every step of every function that drops it.
    pub unnamed: Labels,
    pub points: Vec<(i64, f64)>,
}

impl Series {
    pub fn new(labels: Labels, points: Vec<(i64, f64)>) -> Self {
        Self {
            unnamed: drop_name(&labels),
            labels,
            points,
        }
    }
}

/// The special NaN with which Prometheus marks a series as ended.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The largest time or duration, in milliseconds, a query computes with
/// (about 36 million years): times and durations are clamped to it, so that
/// sums and differences of a few of them never overflow an `i64`.
pub const MAX_MS: i64 = 1 << 60;

/// A duration in milliseconds, clamped to [`MAX_MS`].
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(MAX_MS, |ms| ms.min(MAX_MS))
}

/// A time or signed duration in milliseconds, clamped to ±[`MAX_MS`].
pub fn clamp_ms(ms: i64) -> i64 {
    ms.clamp(-MAX_MS, MAX_MS)
}

pub fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => -duration_ms(*d),
    }
}

pub struct Evaluator {
    pub start: i64,
    pub end: i64,
    pub lookback: i64,
    /// Selector data keyed by the selector's address in the parsed tree.
    pub data: HashMap<usize, Vec<Series>>,
    /// How deep [`Evaluator::eval`] has recursed: bounded by
    /// [`crate::limits::MAX_PROMQL_DEPTH`] whatever tree it is given.
    pub depth: std::cell::Cell<usize>,
    /// What the selector data takes of the query's memory limit (released
    /// with the evaluator).
    pub memory: Box<dyn crate::Budget>,
}

pub fn key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

/// Drops the metric name, as arithmetic and most functions do.
pub fn drop_name(l: &Labels) -> Labels {
    if l.contains_key(METRIC_NAME) {
        let mut m = (**l).clone();
        m.remove(METRIC_NAME);
        Arc::new(m)
    } else {
        l.clone()
    }
}

impl Evaluator {
    /// The reference time of a selector evaluated at step `t`.
    pub fn ref_time(&self, t: i64, at: &Option<AtModifier>, offset: &Option<Offset>) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => match st.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => duration_ms(d),
                Err(e) => -duration_ms(e.duration()),
            },
        };
        clamp_ms(base) - offset_ms(offset)
    }

    fn series(&self, vs: &VectorSelector) -> Result<&[Series]> {
        self.data
            .get(&key(vs))
            .map(Vec::as_slice)
            .ok_or_else(|| Error::Internal("PromQL: selector was not read".to_string()))
    }

    pub fn instant(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Elem>> {
        let rt = self.ref_time(t, &vs.at, &vs.offset);
        let mut out = Vec::new();
        for s in self.series(vs)? {
            let i = s.points.partition_point(|p| p.0 <= rt);
            if i == 0 {
                continue;
            }
            let (ts, v) = s.points[i - 1];
            if ts < rt - self.lookback || is_stale(v) {
                continue;
            }
            out.push(Elem {
                labels: s.labels.clone(),
                v,
                ts,
            });
        }
        Ok(out)
    }

    pub fn range(&self, vs: &VectorSelector, range: i64, t: i64) -> Result<Vec<Window>> {
        let rt = self.ref_time(t, &vs.at, &vs.offset);
        let mut out = Vec::new();
        for s in self.series(vs)? {
            let lo = s.points.partition_point(|p| p.0 < rt - range);
            let hi = s.points.partition_point(|p| p.0 <= rt);
            let points: Vec<(i64, f64)> = s.points[lo..hi]
                .iter()
                .filter(|p| !is_stale(p.1))
                .copied()
                .collect();
            if !points.is_empty() {
                out.push(Window {
                    labels: s.labels.clone(),
                    unnamed: s.unnamed.clone(),
                    points,
                });
            }
        }
        Ok(out)
    }

    pub fn new(start: i64, end: i64, lookback: i64) -> Self {
        Self {
            start,
            end,
            lookback,
            data: HashMap::new(),
            depth: std::cell::Cell::new(0),
            memory: Box::new(crate::Unbounded),
        }
    }

    /// Evaluates `e` at step `t`; refuses a tree deeper than
    /// [`crate::limits::MAX_PROMQL_DEPTH`] rather than exhaust the stack.
    pub fn eval(&self, e: &Expr, t: i64) -> Result<Value> {
        let depth = self.depth.get() + 1;
        if depth > crate::limits::MAX_PROMQL_DEPTH {
            return Err(crate::too_deep());
        }
        self.depth.set(depth);
        let result = self.eval_node(e, t);
        self.depth.set(depth - 1);
        result
    }

    fn eval_node(&self, e: &Expr, t: i64) -> Result<Value> {
        Ok(match e {
            Expr::NumberLiteral(n) => Value::Scalar(n.val),
            Expr::StringLiteral(s) => Value::Str(s.val.clone()),
            Expr::Paren(p) => self.eval(&p.expr, t)?,
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Value::Scalar(-v),
                Value::Vector(v) => Value::Vector(
                    v.into_iter()
                        .map(|e| Elem {
                            labels: drop_name(&e.labels),
                            v: -e.v,
                            ts: t,
                        })
                        .collect(),
                ),
                _ => return Err(unsupported("unary minus on this type")),
            },
            Expr::VectorSelector(vs) => Value::Vector(self.instant(vs, t)?),
            Expr::MatrixSelector(ms) => {
                Value::Matrix(self.range(&ms.vs, duration_ms(ms.range), t)?)
            }
            Expr::Call(c) => funcs::call(self, c, t)?,
            Expr::Aggregate(a) => Value::Vector(self.aggregate(a, t)?),
            Expr::Binary(b) => self.binary(b, t)?,
            Expr::Subquery(_) => return Err(unsupported("subqueries")),
            Expr::Extension(_) => return Err(unsupported("extension expressions")),
        })
    }

    pub fn vector(&self, e: &Expr, t: i64) -> Result<Vec<Elem>> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => Err(Error::InvalidArgument(format!(
                "PromQL: expected an instant vector: {e}"
            ))),
        }
    }

    pub fn scalar(&self, e: &Expr, t: i64) -> Result<f64> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(Error::InvalidArgument(format!(
                "PromQL: expected a scalar: {e}"
            ))),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Vec<Elem>> {
        let op = a.op.to_string();
        let input = self.vector(&a.expr, t)?;
        let (without, names): (bool, Vec<String>) = match &a.modifier {
            None => (false, Vec::new()),
            Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
        };
        let mut count_label = None;
        if op == "count_values" {
            let Some(p) = &a.param else {
                return Err(Error::InvalidArgument(
                    "count_values needs a label name".to_string(),
                ));
            };
            match self.eval(p, t)? {
                Value::Str(s) => count_label = Some(s),
                _ => {
                    return Err(Error::InvalidArgument(
                        "count_values needs a string label name".to_string(),
                    ))
                }
            }
        }
        // Group key and the labels of the group's result.
        let group_labels = |l: &Labels| -> BTreeMap<String, String> {
            if without {
                l.iter()
                    .filter(|(k, _)| k.as_str() != METRIC_NAME && !names.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                l.iter()
                    .filter(|(k, _)| names.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }
        };
        let mut groups: BTreeMap<BTreeMap<String, String>, Vec<Elem>> = BTreeMap::new();
        for e in input {
            let mut g = group_labels(&e.labels);
            if let Some(l) = &count_label {
                g.insert(l.clone(), format_value(e.v));
            }
            groups.entry(g).or_default().push(e);
        }
        let param = match (&a.param, op.as_str()) {
            (Some(p), "topk" | "bottomk" | "quantile") => self.scalar(p, t)?,
            _ => 0.0,
        };
        let mut out = Vec::new();
        for (g, elems) in groups {
            let labels = Arc::new(g);
            let vals: Vec<f64> = elems.iter().map(|e| e.v).collect();
            let v = match op.as_str() {
                "sum" => vals.iter().sum(),
                "avg" => vals.iter().sum::<f64>() / vals.len() as f64,
                "count" | "count_values" => vals.len() as f64,
                "group" => 1.0,
                "min" => {
                    vals.iter()
                        .copied()
                        .fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m })
                }
                "max" => {
                    vals.iter()
                        .copied()
                        .fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m })
                }
                "stddev" => variance(&vals).sqrt(),
                "stdvar" => variance(&vals),
                "quantile" => quantile(param, vals),
                "topk" | "bottomk" => {
                    if param.is_nan() || param < 1.0 {
                        continue;
                    }
                    let k = param.min(elems.len() as f64) as usize;
                    let mut sorted = elems;
                    let top = op == "topk";
                    // NaN sorts last either way, as in Prometheus.
                    sorted.sort_by(|a, b| {
                        let (x, y) = if top { (b.v, a.v) } else { (a.v, b.v) };
                        match (a.v.is_nan(), b.v.is_nan()) {
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                        }
                    });
                    out.extend(sorted.into_iter().take(k).map(|e| Elem { ts: t, ..e }));
                    continue;
                }
                other => {
                    return Err(unsupported(&format!("the aggregation {other}")));
                }
            };
            out.push(Elem { labels, v, ts: t });
        }
        Ok(out)
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value> {
        let op = b.op.to_string();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let cmp = is_comparison(&op);
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = elem_op(&op, l, r)?;
                Ok(Value::Scalar(if cmp {
                    if keep {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(vector_scalar(
                &op,
                v,
                s,
                false,
                return_bool,
                t,
            )?)),
            (Value::Scalar(s), Value::Vector(v)) => Ok(Value::Vector(vector_scalar(
                &op,
                v,
                s,
                true,
                return_bool,
                t,
            )?)),
            (Value::Vector(l), Value::Vector(r)) => {
                let default = BinModifier {
                    card: if matches!(op.as_str(), "and" | "or" | "unless") {
                        VectorMatchCardinality::ManyToMany
                    } else {
                        VectorMatchCardinality::OneToOne
                    },
                    matching: None,
                    return_bool: false,
                    fill_values: Default::default(),
                };
                let m = b.modifier.as_ref().unwrap_or(&default);
                Ok(Value::Vector(match op.as_str() {
                    "and" | "or" | "unless" => set_op(&op, l, r, m),
                    _ => vector_vector(&op, l, r, m, t)?,
                }))
            }
            _ => Err(Error::InvalidArgument(format!(
                "PromQL: operator {op} needs scalars or instant vectors"
            ))),
        }
    }
}

pub fn unsupported(what: &str) -> Error {
    Error::Unsupported(format!("PromQL: {what} is not supported by Strata"))
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Applies an operator to two values: the result, and for comparisons
/// whether it holds (the value is then the left one).
fn elem_op(op: &str, l: f64, r: f64) -> Result<(f64, bool)> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(unsupported(&format!("the operator {other}"))),
    })
}

fn vector_scalar(
    op: &str,
    v: Vec<Elem>,
    s: f64,
    scalar_left: bool,
    return_bool: bool,
    t: i64,
) -> Result<Vec<Elem>> {
    let mut out = Vec::with_capacity(v.len());
    for e in v {
        let (l, r) = if scalar_left { (s, e.v) } else { (e.v, s) };
        let (mut value, mut keep) = elem_op(op, l, r)?;
        if is_comparison(op) && scalar_left {
            value = e.v;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            let labels = if !is_comparison(op) || return_bool {
                drop_name(&e.labels)
            } else {
                e.labels
            };
            out.push(Elem {
                labels,
                v: value,
                ts: t,
            });
        }
    }
    Ok(out)
}

/// A label set as a hashable key.
type Signature = Vec<(String, String)>;

/// The label set two sides are matched on.
fn signature(l: &Labels, m: &BinModifier) -> Signature {
    match &m.matching {
        Some(LabelModifier::Include(on)) => l
            .iter()
            .filter(|(k, _)| on.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(ig)) => l
            .iter()
            .filter(|(k, _)| k.as_str() != METRIC_NAME && !ig.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => l
            .iter()
            .filter(|(k, _)| k.as_str() != METRIC_NAME)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn set_op(op: &str, l: Vec<Elem>, r: Vec<Elem>, m: &BinModifier) -> Vec<Elem> {
    match op {
        "and" => {
            let right: HashSet<_> = r.iter().map(|e| signature(&e.labels, m)).collect();
            l.into_iter()
                .filter(|e| right.contains(&signature(&e.labels, m)))
                .collect()
        }
        "unless" => {
            let right: HashSet<_> = r.iter().map(|e| signature(&e.labels, m)).collect();
            l.into_iter()
                .filter(|e| !right.contains(&signature(&e.labels, m)))
                .collect()
        }
        _ => {
            let left: HashSet<_> = l.iter().map(|e| signature(&e.labels, m)).collect();
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|e| !left.contains(&signature(&e.labels, m))),
            );
            out
        }
    }
}

fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    let inner = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{{{inner}}}")
}

fn vector_vector(
    op: &str,
    lhs: Vec<Elem>,
    rhs: Vec<Elem>,
    m: &BinModifier,
    t: i64,
) -> Result<Vec<Elem>> {
    let one_to_many = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    let (lhs, rhs) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut right: HashMap<Signature, Elem> = HashMap::new();
    for e in rhs {
        let sig = signature(&e.labels, m);
        if let Some(prev) = right.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(Error::InvalidArgument(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the \
                 operation: [{}, {}];many-to-many matching not allowed: matching labels must be \
                 unique on one side",
                fmt_labels(&sig.into_iter().collect()),
                fmt_labels(&prev.labels),
                fmt_labels(&e.labels)
            )));
        }
        right.insert(sig, e);
    }
    let include = m
        .card
        .labels()
        .map(|l| l.labels.clone())
        .unwrap_or_default();
    let cmp = is_comparison(op);
    let mut matched: HashMap<Signature, HashSet<Signature>> = HashMap::new();
    let mut out = Vec::new();
    for l in lhs {
        let sig = signature(&l.labels, m);
        let Some(r) = right.get(&sig) else { continue };
        let (vl, vr) = if one_to_many { (r.v, l.v) } else { (l.v, r.v) };
        let (mut value, mut keep) = elem_op(op, vl, vr)?;
        if m.return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        // The result's labels, from the "many" (or left) side.
        let mut labels = (*l.labels).clone();
        if !cmp || m.return_bool {
            labels.remove(METRIC_NAME);
        }
        if matches!(m.card, VectorMatchCardinality::OneToOne) {
            match &m.matching {
                Some(LabelModifier::Include(on)) => labels.retain(|k, _| on.labels.contains(k)),
                Some(LabelModifier::Exclude(ig)) => labels.retain(|k, _| !ig.labels.contains(k)),
                None => {}
            }
        }
        for name in &include {
            match r.labels.get(name) {
                Some(v) if !v.is_empty() => {
                    labels.insert(name.clone(), v.clone());
                }
                _ => {
                    labels.remove(name);
                }
            }
        }
        let set = matched.entry(sig).or_default();
        if matches!(m.card, VectorMatchCardinality::OneToOne) {
            if !set.is_empty() {
                return Err(Error::InvalidArgument(
                    "multiple matches for labels: many-to-one matching must be explicit \
                     (group_left/group_right)"
                        .to_string(),
                ));
            }
            set.insert(Vec::new());
        } else if !set.insert(labels.clone().into_iter().collect()) {
            return Err(Error::InvalidArgument(
                "multiple matches for labels: grouping labels must ensure unique matches"
                    .to_string(),
            ));
        }
        out.push(Elem {
            labels: Arc::new(labels),
            v: value,
            ts: t,
        });
    }
    Ok(out)
}

/// Population variance, as PromQL's `stdvar`.
pub fn variance(vals: &[f64]) -> f64 {
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n
}

/// The φ-quantile with linear interpolation between ranks, as PromQL's
/// `quantile` and `quantile_over_time`.
pub fn quantile(q: f64, mut vals: Vec<f64>) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let w = rank - lower;
    vals[lower as usize] * (1.0 - w) + vals[upper as usize] * w
}

/// A sample value as Prometheus prints it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}
