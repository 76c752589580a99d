//! Balancing by load: from the write rates heartbeats report, which one
//! operation (if any) evens out the instances. A pure function, tested on
//! synthetic reports; meta's leader applies its answer only once the same
//! answer held for several rounds in a row, and then waits a while before
//! deciding again (see `docs/operations/cluster.md`, "Balancing by load").
//!
//! The rules, in order:
//!
//! 1. Below `min_rate` rows/s written in the whole cluster nothing is
//!    decided here (the shard-count balancing of [`crate::scheduler`]
//!    applies): an idle cluster has no load to balance.
//! 2. An instance writing more than `(1 + margin)` × the mean: move one of
//!    its shards to the least loaded instance, the one that lowers the
//!    higher of the two the most; only a move that lowers the maximum
//!    counts (so the next round does not move it back).
//! 3. No such move (one shard carries the load): split the hottest shard of
//!    that instance whose tables can be divided, about half its write rate
//!    to a new shard (which rule 2 then moves).
//! 4. Otherwise, with more shards than `min_shards`, merge two idle shards
//!    (each below `idle_rate`) led by the same instance.

use std::collections::BTreeMap;

use crate::model::NodeId;

/// The thresholds of balancing by load.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceRules {
    /// Off: only failover and shard-count balancing.
    pub enabled: bool,
    /// An instance is overloaded above `(1 + margin)` × the mean write rate.
    pub margin: f64,
    /// Below this many rows/s in the whole cluster, nothing moves by load.
    pub min_rate: f64,
    /// A shard below this many rows/s is idle (merge candidates).
    pub idle_rate: f64,
    /// Merges never bring the number of shards below this (the cluster's
    /// initial shard count); 0 disables merging.
    pub min_shards: usize,
    /// How many rounds in a row a decision must hold before it is acted
    /// on.
    pub after_rounds: u32,
    /// After acting, how long no decision is taken (the rates settle).
    pub cooldown: std::time::Duration,
}

impl Default for BalanceRules {
    fn default() -> Self {
        Self {
            enabled: true,
            margin: 0.25,
            min_rate: 1000.0,
            idle_rate: 1.0,
            min_shards: 0,
            after_rounds: 6,
            cooldown: std::time::Duration::from_secs(10),
        }
    }
}

/// What the balancer knows of one shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardLoad {
    pub id: u64,
    pub leader: NodeId,
    /// Rows written per second.
    pub rate: f64,
    /// Its tables and their rows written per second.
    pub tables: Vec<(u64, f64)>,
}

/// One operation the balancer asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Move {
        shard: u64,
        from: NodeId,
        to: NodeId,
    },
    Split {
        shard: u64,
        tables: Vec<u64>,
    },
    Merge {
        into: u64,
        from: u64,
    },
}

/// The write rate each of `nodes` leads.
pub fn node_rates(nodes: &[NodeId], shards: &[ShardLoad]) -> BTreeMap<NodeId, f64> {
    let mut rates: BTreeMap<NodeId, f64> = nodes.iter().map(|n| (n.clone(), 0.0)).collect();
    for s in shards {
        if let Some(r) = rates.get_mut(&s.leader) {
            *r += s.rate.max(0.0);
        }
    }
    rates
}

/// The one operation that evens out the write load of `nodes` (live, not
/// drained, leading shards), if any; busy when the cluster writes at least
/// `min_rate` rows/s.
pub fn decide(nodes: &[NodeId], shards: &[ShardLoad], rules: &BalanceRules) -> Option<Decision> {
    let busy = node_rates(nodes, shards).values().sum::<f64>() >= rules.min_rate;
    decide_with(nodes, shards, rules, busy)
}

/// [`decide`], with whether the cluster counts as busy (meta keeps it
/// with hysteresis: busy from `min_rate`, idle again below half of it).
pub fn decide_with(
    nodes: &[NodeId],
    shards: &[ShardLoad],
    rules: &BalanceRules,
    busy: bool,
) -> Option<Decision> {
    if !rules.enabled || nodes.is_empty() {
        return None;
    }
    let rates = node_rates(nodes, shards);
    let total: f64 = rates.values().sum();
    if busy {
        return spread(&rates, total, shards, rules);
    }
    merge_idle(shards, rules)
}

/// Whether two decisions are the same operation (a split's tables follow
/// the rates of the moment, so only its shard counts).
pub fn same(a: &Decision, b: &Decision) -> bool {
    match (a, b) {
        (Decision::Split { shard: x, .. }, Decision::Split { shard: y, .. }) => x == y,
        _ => a == b,
    }
}

/// Rules 2 and 3.
fn spread(
    rates: &BTreeMap<NodeId, f64>,
    total: f64,
    shards: &[ShardLoad],
    rules: &BalanceRules,
) -> Option<Decision> {
    let mean = total / rates.len() as f64;
    let (hot, hot_rate) = rates
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))?;
    if *hot_rate <= mean * (1.0 + rules.margin) {
        return None;
    }
    let (cold, cold_rate) = rates
        .iter()
        .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| a.0.cmp(b.0)))?;
    let on_hot: Vec<&ShardLoad> = shards.iter().filter(|s| &s.leader == hot).collect();
    // The move that lowers the higher of the two the most, if it lowers
    // the maximum at all.
    let best = on_hot
        .iter()
        .filter(|s| s.rate > 0.0)
        .map(|s| {
            let after = (hot_rate - s.rate).max(cold_rate + s.rate);
            (after, *s)
        })
        .filter(|(after, _)| *after < hot_rate * 0.95)
        .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    if let Some((_, s)) = best {
        return Some(Decision::Move {
            shard: s.id,
            from: hot.clone(),
            to: cold.clone(),
        });
    }
    // One shard carries the instance's load: divide the hottest that can
    // be divided, if moving the part split off would then lower the
    // maximum (else the split only costs a pause).
    let mut splittable: Vec<&&ShardLoad> = on_hot
        .iter()
        .filter(|s| s.tables.iter().filter(|(_, r)| *r > 0.0).count() >= 2)
        .collect();
    splittable.sort_by(|a, b| b.rate.total_cmp(&a.rate).then_with(|| a.id.cmp(&b.id)));
    splittable.into_iter().find_map(|shard| {
        let tables = half_by_rate(&shard.tables);
        let go: f64 = shard
            .tables
            .iter()
            .filter(|(t, _)| tables.contains(t))
            .map(|(_, r)| r)
            .sum();
        let helps = (hot_rate - go).max(cold_rate + go) < hot_rate * 0.95;
        let divides = !tables.is_empty() && tables.len() < shard.tables.len();
        (helps && divides).then_some(Decision::Split {
            shard: shard.id,
            tables,
        })
    })
}

/// The tables that make about half of `tables`' write rate: hottest first,
/// each to the lighter side; the side that does not keep the hottest goes.
pub fn half_by_rate(tables: &[(u64, f64)]) -> Vec<u64> {
    let mut sorted: Vec<(u64, f64)> = tables.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let (mut stay, mut go) = (0.0, 0.0);
    let mut moving = Vec::new();
    for (id, rate) in sorted {
        if stay <= go {
            stay += rate;
        } else {
            go += rate;
            moving.push(id);
        }
    }
    moving.sort_unstable();
    moving
}

/// Rule 4: two idle shards of one instance, the higher id merged into the
/// lower.
fn merge_idle(shards: &[ShardLoad], rules: &BalanceRules) -> Option<Decision> {
    if rules.min_shards == 0 || shards.len() <= rules.min_shards {
        return None;
    }
    let mut idle: Vec<&ShardLoad> = shards.iter().filter(|s| s.rate < rules.idle_rate).collect();
    idle.sort_by_key(|s| (s.leader.clone(), s.id));
    idle.windows(2)
        .find(|w| w[0].leader == w[1].leader)
        .map(|w| Decision::Merge {
            into: w[0].id,
            from: w[1].id,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shard(id: u64, leader: &str, tables: &[(u64, f64)]) -> ShardLoad {
        ShardLoad {
            id,
            leader: leader.to_string(),
            rate: tables.iter().map(|t| t.1).sum(),
            tables: tables.to_vec(),
        }
    }

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    /// Applies decisions until none comes, as meta would (a split's new
    /// shard stays on its instance until moved); returns them.
    fn settle(
        nodes: &[NodeId],
        mut shards: Vec<ShardLoad>,
        rules: &BalanceRules,
    ) -> (Vec<Decision>, Vec<ShardLoad>) {
        let mut done = Vec::new();
        let mut next_id = shards.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        while let Some(d) = decide(nodes, &shards, rules) {
            assert!(done.len() < 50, "does not settle: {done:?}");
            match &d {
                Decision::Move { shard, to, .. } => {
                    shards.iter_mut().find(|s| s.id == *shard).unwrap().leader = to.clone();
                }
                Decision::Split { shard, tables } => {
                    let s = shards.iter_mut().find(|s| s.id == *shard).unwrap();
                    let (go, stay): (Vec<_>, Vec<_>) =
                        s.tables.iter().partition(|(t, _)| tables.contains(t));
                    s.tables = stay;
                    s.rate = s.tables.iter().map(|t| t.1).sum();
                    let leader = s.leader.clone();
                    shards.push(shard_of(next_id, &leader, go));
                    next_id += 1;
                }
                Decision::Merge { into, from } => {
                    let gone = shards.iter().position(|s| s.id == *from).unwrap();
                    let gone = shards.remove(gone);
                    let s = shards.iter_mut().find(|s| s.id == *into).unwrap();
                    s.tables.extend(gone.tables);
                    s.rate += gone.rate;
                }
            }
            done.push(d);
        }
        (done, shards)
    }

    fn shard_of(id: u64, leader: &str, tables: Vec<(u64, f64)>) -> ShardLoad {
        shard(id, leader, &tables)
    }

    fn within(nodes: &[NodeId], shards: &[ShardLoad], margin: f64) -> bool {
        let rates = node_rates(nodes, shards);
        let mean = rates.values().sum::<f64>() / rates.len() as f64;
        rates.values().all(|r| (r - mean).abs() <= mean * margin)
    }

    #[test]
    fn one_hot_shard_of_six_tables_is_split_and_spread_over_three_instances() {
        let n = nodes(3);
        let tables: Vec<(u64, f64)> = (1..=6).map(|t| (t, 1000.0)).collect();
        let shards = vec![
            shard(0, "n0", &tables),
            shard(1, "n1", &[(10, 0.0)]),
            shard(2, "n2", &[(11, 0.0)]),
        ];
        let (done, after) = settle(&n, shards, &BalanceRules::default());
        assert!(within(&n, &after, 0.25), "{done:?}\n{after:?}");
        assert!(done.iter().any(|d| matches!(d, Decision::Split { .. })));
        assert!(done.len() <= 8, "{done:?}");
        // Settled: asked again, nothing.
        assert_eq!(decide(&n, &after, &BalanceRules::default()), None);
    }

    #[test]
    fn uneven_shards_move_without_splitting_and_never_back() {
        let n = nodes(2);
        let shards = vec![
            shard(0, "n0", &[(1, 3000.0)]),
            shard(1, "n0", &[(2, 2000.0)]),
            shard(2, "n0", &[(3, 1000.0)]),
            shard(3, "n1", &[(4, 100.0)]),
        ];
        let (done, after) = settle(&n, shards, &BalanceRules::default());
        assert!(
            done.iter().all(|d| matches!(d, Decision::Move { .. })),
            "{done:?}"
        );
        assert!(within(&n, &after, 0.25), "{after:?}");
        // Each shard moved at most once: no flapping.
        let mut moved = std::collections::BTreeMap::new();
        for d in &done {
            if let Decision::Move { shard, .. } = d {
                *moved.entry(*shard).or_insert(0) += 1;
            }
        }
        assert!(moved.values().all(|c| *c == 1), "{done:?}");
    }

    #[test]
    fn balanced_idle_or_indivisible_loads_are_left_alone() {
        let n = nodes(2);
        let rules = BalanceRules::default();
        // Within the margin.
        let even = vec![
            shard(0, "n0", &[(1, 1100.0)]),
            shard(1, "n1", &[(2, 900.0)]),
        ];
        assert_eq!(decide(&n, &even, &rules), None);
        // Idle: below the cluster's minimum rate, and no merging set.
        let idle = vec![shard(0, "n0", &[(1, 50.0)]), shard(1, "n0", &[(2, 0.0)])];
        assert_eq!(decide(&n, &idle, &rules), None);
        // The hot node's load is in one table; its other shard is cold:
        // splitting that would not help.
        let lopsided = vec![
            shard(0, "n0", &[(1, 5000.0)]),
            shard(1, "n0", &[(2, 10.0), (3, 10.0)]),
            shard(2, "n1", &[(4, 0.0)]),
        ];
        assert_eq!(decide(&n, &lopsided, &rules), None);
        // One table carries everything: nothing helps.
        let one = vec![shard(0, "n0", &[(1, 5000.0)]), shard(1, "n1", &[(2, 0.0)])];
        assert_eq!(decide(&n, &one, &rules), None);
        // Off.
        let hot = vec![shard(0, "n0", &[(1, 5000.0), (2, 5000.0)])];
        let off = BalanceRules {
            enabled: false,
            ..rules.clone()
        };
        assert_eq!(decide(&n, &hot, &off), None);
    }

    #[test]
    fn idle_shards_of_one_instance_merge_down_to_the_minimum() {
        let n = nodes(2);
        let rules = BalanceRules {
            min_shards: 2,
            ..BalanceRules::default()
        };
        let shards = vec![
            shard(0, "n0", &[(1, 0.0)]),
            shard(1, "n1", &[(2, 0.0)]),
            shard(5, "n0", &[(3, 0.0)]),
            shard(7, "n0", &[(4, 0.5)]),
        ];
        let (done, after) = settle(&n, shards, &rules);
        assert_eq!(
            done,
            vec![
                Decision::Merge { into: 0, from: 5 },
                Decision::Merge { into: 0, from: 7 }
            ]
        );
        assert_eq!(after.len(), 2);
    }

    #[test]
    fn many_shards_and_instances_settle_within_the_margin() {
        let n = nodes(7);
        // 40 shards of 1..=5 tables with uneven rates, all on two nodes.
        let mut shards = Vec::new();
        let mut table = 0;
        for id in 0..40u64 {
            let tables: Vec<(u64, f64)> = (0..=(id % 5))
                .map(|k| {
                    table += 1;
                    (table, 100.0 + ((id * 37 + k * 11) % 13) as f64 * 50.0)
                })
                .collect();
            shards.push(shard(id, if id % 3 == 0 { "n1" } else { "n0" }, &tables));
        }
        let (done, after) = settle(&n, shards, &BalanceRules::default());
        assert!(within(&n, &after, 0.25), "{after:?}");
        assert!(done.len() < 50);
    }

    #[test]
    fn half_by_rate_divides_a_shard_by_its_tables_load() {
        assert_eq!(
            half_by_rate(&[(1, 10.0), (2, 10.0), (3, 10.0), (4, 10.0)]),
            vec![2, 4]
        );
        assert_eq!(
            half_by_rate(&[(1, 100.0), (2, 60.0), (3, 30.0), (4, 10.0)]),
            vec![2, 3, 4]
        );
        assert_eq!(half_by_rate(&[(1, 5.0)]), Vec::<u64>::new());
    }
}
