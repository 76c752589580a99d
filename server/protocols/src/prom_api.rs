//! The parts of Prometheus's HTTP API that need no PromQL evaluation:
//! `/api/v1/labels`, `/api/v1/label/{name}/values`, `/api/v1/series`,
//! `/api/v1/metadata` and `/api/v1/status/buildinfo` (which Grafana probes).
//! Series selectors (`match[]`) are parsed by `promql-parser`.
//!
//! Answers use Prometheus's envelope: `{"status": "success", "data": …}`, or
//! `{"status": "error", "errorType": "bad_data", "error": "…"}` with 400.
//! The series index keeps no time range, so `start` and `end` are accepted
//! and not used: every series ever written is considered.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::parser::Expr;
use strata_promql::select::{groups_of, matches, Group};

use crate::{
    error::{Error, Result},
    prom, prom_read,
    sql::QueryEngine,
};

/// Parses a `match[]` selector into its alternatives, and the metric name
/// when the selector names one.
fn selector(text: &str) -> Result<(Option<String>, Vec<Group>)> {
    strata_promql::limits::check_promql(text)?;
    let expr = strata_promql::parse_guarded(text)
        .map_err(|e| Error::InvalidArgument(format!("invalid match[] {text}: {e}")))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(Error::InvalidArgument(format!(
            "match[] {text} is not a series selector"
        )));
    };
    let (name, groups) = groups_of(&vs);
    if groups.iter().all(|g| g.iter().all(|m| m.is_match(""))) {
        return Err(Error::InvalidArgument(format!(
            "match[] {text} must contain at least one matcher that does not match the empty string"
        )));
    }
    Ok((name, groups))
}

/// The label sets of the series matching any of `selectors` (all series
/// when there is none).
pub async fn series(
    query: &QueryEngine,
    db: &str,
    selectors: &[String],
) -> Result<Vec<BTreeMap<String, String>>> {
    let mut parsed = Vec::new();
    for s in selectors {
        parsed.push(selector(s)?);
    }
    // The partitions to read: one per named metric, or all.
    let mut partitions: BTreeSet<u64> = BTreeSet::new();
    let mut metrics: BTreeSet<Option<String>> = BTreeSet::new();
    if parsed.is_empty() || parsed.iter().any(|(n, _)| n.is_none()) {
        partitions.extend(0..prom::PARTITIONS);
        metrics.insert(None);
    } else {
        for (n, _) in &parsed {
            if let Some(n) = n {
                partitions.insert(prom::partition(n));
                metrics.insert(Some(n.clone()));
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in partitions {
        // With named metrics only, read just those metrics' rows.
        let names: Vec<Option<&str>> = if metrics.contains(&None) {
            vec![None]
        } else {
            metrics
                .iter()
                .flatten()
                .filter(|m| prom::partition(m) == p)
                .map(|m| Some(m.as_str()))
                .collect()
        };
        for name in names {
            for (id, labels) in prom_read::scan_series(query, db, p, name).await? {
                let keep = parsed.is_empty() || parsed.iter().any(|(_, g)| matches(g, &labels));
                if keep && seen.insert(id) {
                    out.push((*labels).clone());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Label names of the matching series.
pub async fn label_names(
    query: &QueryEngine,
    db: &str,
    selectors: &[String],
) -> Result<Vec<String>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for s in series(query, db, selectors).await? {
        names.extend(s.into_keys());
    }
    Ok(names.into_iter().collect())
}

/// Values of one label over the matching series.
pub async fn label_values(
    query: &QueryEngine,
    db: &str,
    name: &str,
    selectors: &[String],
) -> Result<Vec<String>> {
    let mut values: BTreeSet<String> = BTreeSet::new();
    for mut s in series(query, db, selectors).await? {
        if let Some(v) = s.remove(name) {
            values.insert(v);
        }
    }
    Ok(values.into_iter().collect())
}

/// `/api/v1/status/buildinfo`: the Prometheus version whose API Strata
/// follows, so that Grafana enables the matching features.
pub fn build_info() -> serde_json::Value {
    serde_json::json!({
        "version": "2.53.0",
        "revision": env!("CARGO_PKG_VERSION"),
        "branch": "strata",
        "buildUser": "strata",
        "buildDate": "",
        "goVersion": "n/a (Strata, Rust)",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_parse_into_groups_with_the_metric_name() {
        let (name, groups) = selector(r#"up{job=~"a|b", env!="dev"}"#).unwrap();
        assert_eq!(name.as_deref(), Some("up"));
        assert!(matches(
            &groups,
            &labels(&[("__name__", "up"), ("job", "a")])
        ));
        assert!(!matches(
            &groups,
            &labels(&[("__name__", "up"), ("job", "c")])
        ));
        assert!(!matches(
            &groups,
            &labels(&[("__name__", "up"), ("job", "a"), ("env", "dev")])
        ));
        assert!(!matches(
            &groups,
            &labels(&[("__name__", "down"), ("job", "a")])
        ));
        let (name, groups) = selector(r#"{__name__=~"http_.*", code="200"}"#).unwrap();
        assert_eq!(name, None);
        assert!(matches(
            &groups,
            &labels(&[("__name__", "http_x"), ("code", "200")])
        ));
        assert!(selector(r#"{job=""}"#).is_err(), "matches everything");
        assert!(selector("rate(up[5m])").is_err(), "not a selector");
        assert!(selector("up{").is_err());
    }
}
