//! The chart grants what the operator's calls need: the rules `helm template` renders are the code's
//! lists, cluster-wide or, with `watchNamespaces`, in each watched namespace only.

mod common;

use chatsys_operator::rbac::{CLUSTER_RULES, LEADER_ELECTION_RULES, Rule};
use common::rbac::{RELEASE_NAMESPACE, documents, helm_template};
use serde_json::Value;

fn as_json(rules: &[Rule]) -> Value {
    serde_json::to_value(rules).expect("rules serialise")
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn the_chart_grants_exactly_the_rules_the_code_lists() {
    let objects = documents(&helm_template(&[]));
    let cluster_roles = of_kind(&objects, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(cluster_roles[0]["rules"], as_json(CLUSTER_RULES));
    let roles = of_kind(&objects, "Role");
    assert_eq!(roles.len(), 1, "the leader election Role");
    assert_eq!(roles[0]["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(roles[0]["rules"], as_json(LEADER_ELECTION_RULES));
}

#[test]
fn a_namespace_scoped_install_grants_the_same_rules_in_those_namespaces_and_nothing_cluster_wide() {
    let objects = documents(&helm_template(&["watchNamespaces={team,chat}"]));
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty());
    let roles = of_kind(&objects, "Role");
    let scoped: Vec<&str> = roles
        .iter()
        .filter(|r| r["rules"] == as_json(CLUSTER_RULES))
        .map(|r| r["metadata"]["namespace"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(scoped, ["team", "chat"]);
    let bindings = of_kind(&objects, "RoleBinding");
    for namespace in ["team", "chat"] {
        assert!(
            bindings
                .iter()
                .any(|b| b["metadata"]["namespace"] == namespace
                    && b["subjects"][0]["namespace"] == RELEASE_NAMESPACE),
            "{namespace}"
        );
    }
    let deployment = of_kind(&objects, "Deployment")[0];
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    let watched = env
        .iter()
        .find(|e| e["name"] == "CHATSYS_WATCH_NAMESPACES")
        .expect("the operator is told");
    assert_eq!(watched["value"], "team,chat");
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
