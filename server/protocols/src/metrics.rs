//! Server metrics: requests by protocol and outcome, and their latency. The
//! engine registers its own in the same process-wide registry.

use std::{sync::LazyLock, time::Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};

#[allow(clippy::expect_used)]
static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    // Static, valid definitions: construction cannot fail.
    let c = IntCounterVec::new(
        Opts::new(
            "strata_requests_total",
            "Requests served, by endpoint and outcome",
        ),
        &["endpoint", "outcome"],
    )
    .expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
});

#[allow(clippy::expect_used)]
static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "strata_request_duration_seconds",
            "Request latency, by endpoint",
        )
        .buckets(vec![
            0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
        ]),
        &["endpoint"],
    )
    .expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(h.clone()));
    h
});

pub fn observe_request(endpoint: &str, started: Instant, ok: bool) {
    REQUESTS
        .with_label_values(&[endpoint, if ok { "ok" } else { "error" }])
        .inc();
    LATENCY
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
}

#[allow(clippy::expect_used)]
static WAL_LOST_REGIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new(
        "strata_wal_lost_regions",
        "WAL regions (shards) refused because their broker lost acknowledged records",
    )
    .expect("static metric definition is valid");
    let _ = prometheus::default_registry().register(Box::new(g.clone()));
    g
});

/// The text exposition of every registered metric.
pub fn render() -> String {
    use prometheus::Encoder;
    // Touch the lazily registered families so they appear from the start.
    LazyLock::force(&REQUESTS);
    LazyLock::force(&LATENCY);
    WAL_LOST_REGIONS.set(strata_wal::loss::regions().len() as i64);
    let families = prometheus::default_registry().gather();
    let mut out = Vec::new();
    if prometheus::TextEncoder::new()
        .encode(&families, &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
