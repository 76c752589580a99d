//! Deciding where shards go. A pure function of the live nodes and the
//! current assignment, so it is easy to test and to reason about:
//!
//! 1. **Failover / assignment.** A shard without a leader, or whose leader
//!    is not alive, goes to the live node with the fewest shards.
//! 2. **Balance / expansion.** While some node has two or more shards more
//!    than another, one shard moves from the most to the least loaded node.
//!    One move per call: moves are close-then-open, so they are paced.

use std::collections::BTreeMap;

use crate::model::{NodeId, ShardInfo};

/// One change of a shard's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub shard: u64,
    pub from: Option<NodeId>,
    pub to: NodeId,
}

/// The moves that bring `shards` closer to a balanced assignment over
/// `live` nodes.
pub fn plan(live: &[NodeId], shards: &[ShardInfo]) -> Vec<Move> {
    if live.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<&NodeId, usize> = live.iter().map(|n| (n, 0)).collect();
    for s in shards {
        if let Some(l) = &s.leader {
            if let Some(c) = load.get_mut(l) {
                *c += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for s in shards {
        let placed = s.leader.as_ref().is_some_and(|l| load.contains_key(l));
        if placed {
            continue;
        }
        let Some((&target, _)) = load.iter().min_by_key(|(n, c)| (**c, (*n).to_string())) else {
            break;
        };
        let target = target.clone();
        if let Some(c) = load.get_mut(&target) {
            *c += 1;
        }
        moves.push(Move {
            shard: s.id,
            from: s.leader.clone(),
            to: target,
        });
    }
    if !moves.is_empty() {
        return moves;
    }
    let (Some((&most, &hi)), Some((&least, &lo))) = (
        load.iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse((*n).to_string()))),
        load.iter().min_by_key(|(n, c)| (**c, (*n).to_string())),
    ) else {
        return moves;
    };
    if hi >= lo + 2 {
        if let Some(s) = shards.iter().find(|s| s.leader.as_ref() == Some(most)) {
            moves.push(Move {
                shard: s.id,
                from: Some(most.clone()),
                to: least.clone(),
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(leaders: &[Option<&str>]) -> Vec<ShardInfo> {
        leaders
            .iter()
            .enumerate()
            .map(|(i, l)| ShardInfo {
                id: i as u64,
                version: 1,
                leader: l.map(str::to_string),
            })
            .collect()
    }

    fn nodes(n: &[&str]) -> Vec<NodeId> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unassigned_shards_spread_over_live_nodes() {
        let m = plan(
            &nodes(&["a", "b", "c"]),
            &shards(&[None, None, None, None, None, None]),
        );
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for mv in &m {
            *per.entry(mv.to.clone()).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn a_dead_nodes_shards_fail_over() {
        let m = plan(
            &nodes(&["a", "c"]),
            &shards(&[Some("a"), Some("b"), Some("c"), Some("b")]),
        );
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|mv| mv.from.as_deref() == Some("b")));
        assert_ne!(m[0].to, m[1].to, "spread over the survivors");
    }

    #[test]
    fn a_new_node_receives_shards_one_move_at_a_time() {
        let s = shards(&[Some("a"), Some("a"), Some("b"), Some("b")]);
        let m = plan(&nodes(&["a", "b", "c"]), &s);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to, "c");
        // Balanced enough: nothing to do.
        let s = shards(&[Some("a"), Some("c"), Some("b"), Some("b")]);
        assert!(plan(&nodes(&["a", "b", "c"]), &s).is_empty());
    }
}
