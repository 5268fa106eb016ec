//! The chart grants what the operator's calls need: the rules in its template are the code's lists.

use chatsys_operator::rbac::{CLUSTER_RULES, LEADER_ELECTION_RULES, Rule};
use serde_json::Value;

/// The `rules:` lists of the RBAC template, in order; each is plain YAML between template lines.
fn chart_rules() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/chatsys-operator/templates/rbac.yaml"
    );
    let template = std::fs::read_to_string(path).expect("the chart's rbac.yaml");
    template
        .split("\nrules:\n")
        .skip(1)
        .map(|rest| {
            let block: String = rest
                .lines()
                .take_while(|line| line.starts_with("  "))
                .map(|line| format!("{line}\n"))
                .collect();
            serde_saphyr::from_str(&block).expect("rules are plain YAML")
        })
        .collect()
}

fn as_json(rules: &[Rule]) -> Value {
    serde_json::to_value(rules).expect("rules serialise")
}

#[test]
fn the_chart_grants_exactly_the_rules_the_code_lists() {
    let rules = chart_rules();
    assert_eq!(rules.len(), 2, "a ClusterRole and the leader election Role");
    assert_eq!(rules[0], as_json(CLUSTER_RULES));
    assert_eq!(rules[1], as_json(LEADER_ELECTION_RULES));
}

#[test]
fn no_rule_grants_more_than_a_call_uses() {
    for rule in CLUSTER_RULES.iter().chain(LEADER_ELECTION_RULES) {
        for verb in rule.verbs {
            assert!(
                [
                    "get", "list", "watch", "create", "patch", "update", "delete"
                ]
                .contains(verb),
                "{verb}"
            );
        }
        assert!(!rule.verbs.contains(&"*") && !rule.resources.contains(&"*"));
    }
    let secrets = CLUSTER_RULES
        .iter()
        .find(|r| r.resources.contains(&"secrets"))
        .expect("secrets");
    assert!(
        !secrets.verbs.contains(&"delete"),
        "credentials are never deleted by the operator"
    );
    assert!(
        !CLUSTER_RULES
            .iter()
            .any(|r| r.api_groups == [""] && r.resources.contains(&"events")),
        "events are written through events.k8s.io"
    );
}
