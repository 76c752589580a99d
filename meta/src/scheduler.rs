//! Deciding where shards go. A pure function of the live nodes, the
//! current assignment and what nodes last reported, so it is easy to test
//! and to reason about:
//!
//! 1. **Failover / assignment.** A shard without a leader, or whose leader
//!    is not alive, is led next by its most caught-up live follower (a
//!    *promotion*: it has the shard's data in memory already), or else by
//!    the live node with the fewest shards (it replays the WAL).
//! 2. **Balance / expansion.** While some node leads two or more shards
//!    more than another, one shard moves from the most to the least loaded
//!    node. One move per call: moves are close-then-open, so they are paced.
//! 3. **Followers.** Each shard with a live leader keeps `replicas`
//!    followers (its own setting, else the cluster's), on live nodes other
//!    than its leader, the least busy first; dead followers are replaced.
//!
//! Drained nodes (`strata admin drain`) lead nothing: their shards go to
//! their best follower (else the least loaded node) as in a failover, but
//! announced to the old leader, which flushes and hands over; no new
//! follower is placed on them.

use std::collections::BTreeMap;

use crate::model::{NodeId, ShardInfo};

/// Why a shard's assignment changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No live leader and no live follower: a node opens it from the WAL.
    Assign,
    /// No live leader: a live follower takes over.
    Promote,
    /// A live leader hands the shard to another node.
    Balance,
    /// Only the followers change.
    Followers,
}

/// One change of a shard's assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub shard: u64,
    pub from: Option<NodeId>,
    pub to: NodeId,
    /// The shard's followers after the change.
    pub followers: Vec<NodeId>,
    pub kind: Kind,
}

/// What the scheduler knows besides the assignment.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Followers per shard when the shard does not say.
    pub replicas: u64,
    /// The WAL offset each follower reported applying: (shard, node).
    pub applied: BTreeMap<(u64, NodeId), u64>,
    /// Live nodes being drained: they lead nothing and get no new follower.
    pub draining: std::collections::BTreeSet<NodeId>,
    /// No balancing by shard count (shards are placed by load).
    pub skip_balance: bool,
}

/// The changes that bring `shards` closer to the wanted assignment over
/// `live` nodes.
pub fn plan(live: &[NodeId], shards: &[ShardInfo], facts: &Facts) -> Vec<Move> {
    if live.is_empty() {
        return Vec::new();
    }
    let alive = |n: &NodeId| live.contains(n);
    // The nodes that may lead: live and not drained.
    let mut load: BTreeMap<&NodeId, usize> = live
        .iter()
        .filter(|n| !facts.draining.contains(*n))
        .map(|n| (n, 0))
        .collect();
    if load.is_empty() {
        return Vec::new();
    }
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
        let live_followers: Vec<&NodeId> = s.followers.iter().filter(|f| alive(f)).collect();
        let promoted = live_followers
            .iter()
            .filter(|f| load.contains_key(**f))
            .max_by_key(|f| {
                let applied = facts.applied.get(&(s.id, (**f).clone())).copied();
                let leads = load.get(**f).copied().unwrap_or(0);
                (
                    applied,
                    std::cmp::Reverse(leads),
                    std::cmp::Reverse((**f).clone()),
                )
            })
            .map(|f| (*f).clone());
        let (target, kind) = match promoted {
            Some(f) => (f, Kind::Promote),
            None => {
                let Some((&target, _)) = load.iter().min_by_key(|(n, c)| (**c, (*n).to_string()))
                else {
                    break;
                };
                (target.clone(), Kind::Assign)
            }
        };
        if let Some(c) = load.get_mut(&target) {
            *c += 1;
        }
        moves.push(Move {
            shard: s.id,
            from: s.leader.clone(),
            followers: live_followers
                .into_iter()
                .filter(|f| **f != target)
                .cloned()
                // A drained leader keeps a copy while it is up.
                .chain(s.leader.iter().filter(|l| alive(l)).cloned())
                .collect(),
            to: target,
            kind,
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
    if !facts.skip_balance && hi >= lo + 2 {
        // A shard the least loaded node follows moves cheaply.
        let led: Vec<&ShardInfo> = shards
            .iter()
            .filter(|s| s.leader.as_ref() == Some(most))
            .collect();
        let pick = led
            .iter()
            .find(|s| s.followers.contains(least))
            .or_else(|| led.first());
        if let Some(s) = pick {
            moves.push(Move {
                shard: s.id,
                from: Some(most.clone()),
                to: least.clone(),
                followers: s
                    .followers
                    .iter()
                    .filter(|f| *f != least)
                    .cloned()
                    .collect(),
                kind: Kind::Balance,
            });
            return moves;
        }
    }
    // Followers: replace the dead, add the missing, drop the extra. A new
    // follower goes to the node following the fewest shards, then to the
    // next node after the leader in name order (a ring: the followers of
    // evenly led shards spread evenly).
    let mut busy: BTreeMap<&NodeId, usize> = live
        .iter()
        .filter(|n| !facts.draining.contains(*n))
        .map(|n| (n, 0))
        .collect();
    let ring = |leader: &NodeId, n: &NodeId| {
        let pos = |x: &NodeId| live.iter().filter(|y| *y < x).count();
        (pos(n) + live.len() - pos(leader)) % live.len()
    };
    for s in shards {
        for f in &s.followers {
            if let Some(c) = busy.get_mut(f) {
                *c += 1;
            }
        }
    }
    for s in shards {
        let Some(leader) = s.leader.as_ref().filter(|l| alive(l)) else {
            continue;
        };
        let want = usize::try_from(s.replicas.unwrap_or(facts.replicas))
            .unwrap_or(usize::MAX)
            .min(live.len() - 1);
        // Followers on drained nodes stay while they are up, as extras
        // (they are about to stop): the count is made of the others.
        let want = want.min(
            busy.len()
                .saturating_sub(usize::from(busy.contains_key(leader))),
        );
        let drained: Vec<NodeId> = s
            .followers
            .iter()
            .filter(|f| alive(f) && *f != leader && facts.draining.contains(*f))
            .cloned()
            .collect();
        let mut next: Vec<NodeId> = s
            .followers
            .iter()
            .filter(|f| alive(f) && *f != leader && !facts.draining.contains(*f))
            .cloned()
            .collect();
        while next.len() > want {
            if let Some(dropped) = next.pop() {
                if let Some(c) = busy.get_mut(&dropped) {
                    *c = c.saturating_sub(1);
                }
            }
        }
        while next.len() < want {
            let Some((&n, _)) = busy
                .iter()
                .filter(|(n, _)| **n != leader && !next.contains(n))
                .min_by_key(|(n, c)| (**c, ring(leader, n)))
            else {
                break;
            };
            let n = n.clone();
            if let Some(c) = busy.get_mut(&n) {
                *c += 1;
            }
            next.push(n);
        }
        next.extend(drained);
        if next != s.followers {
            moves.push(Move {
                shard: s.id,
                from: Some(leader.clone()),
                to: leader.clone(),
                followers: next,
                kind: Kind::Followers,
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shards(leaders: &[Option<&str>]) -> Vec<ShardInfo> {
        leaders
            .iter()
            .enumerate()
            .map(|(i, l)| ShardInfo {
                id: i as u64,
                version: 1,
                leader: l.map(str::to_string),
                followers: Vec::new(),
                replicas: None,
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
            &Facts::default(),
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
            &Facts::default(),
        );
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|mv| mv.from.as_deref() == Some("b")));
        assert_ne!(m[0].to, m[1].to, "spread over the survivors");
    }

    #[test]
    fn a_new_node_receives_shards_one_move_at_a_time() {
        let s = shards(&[Some("a"), Some("a"), Some("b"), Some("b")]);
        let m = plan(&nodes(&["a", "b", "c"]), &s, &Facts::default());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to, "c");
        // Balanced enough: nothing to do.
        let s = shards(&[Some("a"), Some("c"), Some("b"), Some("b")]);
        assert!(plan(&nodes(&["a", "b", "c"]), &s, &Facts::default()).is_empty());
    }

    fn with_followers(s: &mut [ShardInfo], f: &[&[&str]]) {
        for (s, f) in s.iter_mut().zip(f) {
            s.followers = f.iter().map(|n| n.to_string()).collect();
        }
    }

    #[test]
    fn followers_are_placed_on_other_nodes_and_replaced_when_they_die() {
        let facts = Facts {
            replicas: 1,
            ..Default::default()
        };
        let s = shards(&[Some("a"), Some("b"), Some("c")]);
        let m = plan(&nodes(&["a", "b", "c"]), &s, &facts);
        assert_eq!(m.len(), 3);
        for mv in &m {
            assert_eq!(mv.kind, Kind::Followers);
            assert_eq!(mv.followers.len(), 1);
            assert_ne!(mv.followers[0], mv.to, "a leader never follows itself");
        }
        let mut followed: Vec<&str> = m.iter().map(|mv| mv.followers[0].as_str()).collect();
        followed.sort();
        assert_eq!(followed, vec!["a", "b", "c"], "spread evenly");

        // c's death: a's follower (c) is replaced, c's shard fails over.
        let mut s = shards(&[Some("a"), Some("b"), Some("c")]);
        with_followers(&mut s, &[&["c"], &["a"], &["b"]]);
        let m = plan(&nodes(&["a", "b"]), &s, &facts);
        assert_eq!(m.len(), 1, "failover first: {m:?}");
        assert_eq!(m[0].shard, 2);
        assert_eq!(m[0].kind, Kind::Promote);
        assert_eq!(m[0].to, "b");
        // Then the followers: shard 0 loses c and gets b.
        let mut s = shards(&[Some("a"), Some("b"), Some("b")]);
        with_followers(&mut s, &[&["c"], &["a"], &[]]);
        let m = plan(&nodes(&["a", "b"]), &s, &facts);
        let s0 = m.iter().find(|mv| mv.shard == 0).unwrap();
        assert_eq!(s0.followers, vec!["b".to_string()]);
        let s2 = m.iter().find(|mv| mv.shard == 2).unwrap();
        assert_eq!(s2.followers, vec!["a".to_string()]);
        // A shard's own setting wins; with one node there is nowhere to put one.
        let mut s = shards(&[Some("a")]);
        s[0].replicas = Some(0);
        s[0].followers = vec!["b".into()];
        let m = plan(&nodes(&["a", "b"]), &s, &facts);
        assert_eq!(m[0].followers, Vec::<String>::new());
        assert!(plan(&nodes(&["a"]), &shards(&[Some("a")]), &facts).is_empty());
    }

    #[test]
    fn failover_promotes_the_most_caught_up_follower() {
        let mut s = shards(&[Some("a")]);
        with_followers(&mut s, &[&["b", "c"]]);
        let mut facts = Facts {
            replicas: 2,
            ..Default::default()
        };
        facts.applied.insert((0, "b".into()), 100);
        facts.applied.insert((0, "c".into()), 250);
        let m = plan(&nodes(&["b", "c", "d"]), &s, &facts);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, Kind::Promote);
        assert_eq!(m[0].to, "c");
        assert_eq!(m[0].followers, vec!["b".to_string()]);
        // No live follower: a node opens it from the WAL.
        let m = plan(&nodes(&["d"]), &s, &facts);
        assert_eq!(m[0].kind, Kind::Assign);
        assert_eq!(m[0].to, "d");
    }

    #[test]
    fn a_drained_node_leads_nothing_and_keeps_its_copy_while_up() {
        let mut s = shards(&[Some("a"), Some("b"), Some("c")]);
        with_followers(&mut s, &[&["b"], &["c"], &["a"]]);
        let mut facts = Facts {
            replicas: 1,
            ..Default::default()
        };
        facts.draining.insert("a".to_string());
        let m = plan(&nodes(&["a", "b", "c"]), &s, &facts);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].shard, 0);
        assert_eq!(m[0].to, "b", "its follower takes over");
        assert_eq!(m[0].followers, vec!["a".to_string()]);
        // Then it gets a follower that is not about to stop (a stays, extra).
        let mut s = shards(&[Some("b"), Some("b"), Some("c")]);
        with_followers(&mut s, &[&["a"], &["c"], &["a"]]);
        let m = plan(&nodes(&["a", "b", "c"]), &s, &facts);
        let s0 = m.iter().find(|mv| mv.shard == 0).unwrap();
        assert_eq!(s0.followers, vec!["c".to_string(), "a".to_string()]);
        // Nothing moves to a drained node, and it gets no new follower.
        let mut s = shards(&[Some("b"), Some("b"), Some("c")]);
        with_followers(&mut s, &[&["a"], &["c"], &[]]);
        let m = plan(&nodes(&["a", "b", "c"]), &s, &facts);
        assert!(m.iter().all(|mv| mv.to != "a"), "{m:?}");
        let s2 = m.iter().find(|mv| mv.shard == 2).unwrap();
        assert_eq!(s2.followers, vec!["b".to_string()]);
    }
}
