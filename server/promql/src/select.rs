//! Series selectors: a parsed selector's alternatives (`or` groups of
//! label matchers) and whether a series' labels match them. Used by the
//! evaluator and by the metadata API (`match[]`).

use std::collections::BTreeMap;

use promql_parser::{
    label::{MatchOp, Matcher},
    parser::VectorSelector,
};

/// One alternative of a selector: matchers that must all hold.
pub type Group = Vec<Matcher>;

/// A parsed selector's alternatives (each a list of matchers that must all
/// hold, the metric name included), and its metric name when it has one.
pub fn groups_of(vs: &VectorSelector) -> (Option<String>, Vec<Group>) {
    let mut groups: Vec<Group> = if vs.matchers.or_matchers.is_empty() {
        vec![vs.matchers.matchers.clone()]
    } else {
        vs.matchers.or_matchers.clone()
    };
    let mut name = vs.name.clone();
    if let Some(n) = &vs.name {
        for g in &mut groups {
            g.push(Matcher {
                op: MatchOp::Equal,
                name: "__name__".to_string(),
                value: n.clone(),
            });
        }
    } else if groups.len() == 1 {
        name = groups[0]
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone());
    }
    (name, groups)
}

pub fn matches(groups: &[Group], labels: &BTreeMap<String, String>) -> bool {
    groups.iter().any(|g| {
        g.iter()
            .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)))
    })
}
