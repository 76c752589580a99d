//! The WAL regions of this process that lost acknowledged records and were
//! refused (see [`crate::Error::RecordsLost`]): read by `/health` and the
//! metrics, so the loss is visible beyond one log line.

use std::{collections::BTreeMap, sync::Mutex};

static LOST: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Records that `region` lost records and was refused.
pub fn record(region: &str, detail: &str) {
    if let Ok(mut lost) = LOST.lock() {
        lost.insert(region.to_string(), detail.to_string());
    }
}

/// Forgets `region` (it opened, or the loss was accepted).
pub fn clear(region: &str) {
    if let Ok(mut lost) = LOST.lock() {
        lost.remove(region);
    }
}

/// Every region refused for lost records, with why.
pub fn regions() -> Vec<(String, String)> {
    LOST.lock()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}
