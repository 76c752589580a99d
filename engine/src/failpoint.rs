//! Named delays for fault tests: `STRATA_FAILPOINTS=flush.before_commit=3000`
//! makes every flush wait 3 s between uploading its SSTs and committing its
//! manifest edit, so that a test can pause or replace the process exactly
//! there. Unset (always, outside tests), a failpoint costs one map lookup.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

static FAILPOINTS: LazyLock<HashMap<String, Duration>> = LazyLock::new(|| {
    let Ok(spec) = std::env::var("STRATA_FAILPOINTS") else {
        return HashMap::new();
    };
    spec.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let ms = v.trim().parse::<u64>().ok()?;
            Some((k.trim().to_string(), Duration::from_millis(ms)))
        })
        .collect()
});

/// Waits as long as failpoint `name` says (not at all when unset).
pub async fn pause(name: &str) {
    if let Some(d) = FAILPOINTS.get(name) {
        tracing::warn!(
            failpoint = name,
            ms = d.as_millis() as u64,
            "failpoint: pausing"
        );
        tokio::time::sleep(*d).await;
    }
}
