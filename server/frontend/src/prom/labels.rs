//! The labels of series by id, cached for PromQL and remote read.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// A series' labels, by name.
pub type Labels = Arc<std::collections::BTreeMap<String, String>>;

/// The labels of series by id, parsed once. A series id is a hash of its
/// whole label set (`prom::series_id`), so an id's labels never change and
/// the cache cannot go stale, in any database or on any instance; it is
/// only bounded: past [`LabelCache::MAX`] ids (at roughly 1 KiB per label
/// set of a dozen labels, about 128 MiB) it starts again.
#[derive(Default)]
pub struct LabelCache(Mutex<HashMap<u64, Labels>>);

impl LabelCache {
    const MAX: usize = 1 << 17;

    pub(crate) fn get_all(&self, ids: &[u64]) -> (Vec<(u64, Labels)>, Vec<u64>) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (mut found, mut missing) = (Vec::with_capacity(ids.len()), Vec::new());
        for &id in ids {
            match map.get(&id) {
                Some(l) => found.push((id, l.clone())),
                None => missing.push(id),
            }
        }
        (found, missing)
    }

    pub(crate) fn insert_all(&self, parsed: &[(u64, Labels)]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() + parsed.len() > Self::MAX {
            map.clear();
        }
        for (id, l) in parsed {
            map.insert(*id, l.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(host: u64) -> Labels {
        Arc::new(std::collections::BTreeMap::from([
            ("__name__".to_string(), "up".to_string()),
            ("host".to_string(), format!("h{host}")),
        ]))
    }

    #[test]
    fn the_label_cache_returns_what_it_holds_and_stays_bounded() {
        let cache = LabelCache::default();
        cache.insert_all(&[(1, labels(1)), (2, labels(2))]);
        let (found, missing) = cache.get_all(&[1, 3, 2]);
        assert_eq!(found, vec![(1, labels(1)), (2, labels(2))]);
        assert_eq!(missing, vec![3]);
        // Past the bound it starts again rather than growing.
        let many: Vec<(u64, Labels)> = (10..10 + LabelCache::MAX as u64)
            .map(|id| (id, labels(0)))
            .collect();
        cache.insert_all(&many);
        let (found, missing) = cache.get_all(&[1, 10]);
        assert_eq!(found, vec![(10, labels(0))]);
        assert_eq!(missing, vec![1]);
        let len = cache.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert_eq!(len, LabelCache::MAX);
    }
}
