//! The permissions the operator's calls need, and no more: the chart's ClusterRole and Role are
//! these lists (a test compares them), so a new call and its permission change together.

use serde::Serialize;

/// One rule of a ClusterRole or Role, serialised as Kubernetes writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Cluster-wide, since a ChatSystem may live in any namespace. Children are watched (`list`, `watch`),
/// server-side applied and deleted when orphaned. An apply is a `patch`, and the one that creates the
/// object is authorized as a `create` as well (kubernetes
/// `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go`), so every applied kind needs both; StatefulSets and
/// Deployments are also read (`get`) for their claim templates and replica owners, and Jobs (migrations, a restore, the backups
/// a CronJob starts) listed for their outcome. Credentials are created once (`create`) and never deleted; claims are
/// read, grown and (the backups' claim) applied, never deleted; events are written through `events.k8s.io`, as kube's recorder does. KEDA's,
/// prometheus-operator's and the delegated services' operators' kinds are used only where the cluster
/// serves them (discovery needs no rule).
pub const CLUSTER_RULES: &[Rule] = &[
    Rule {
        api_groups: &["chatsys.io"],
        resources: &["chatsystems"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_groups: &["chatsys.io"],
        resources: &["chatsystems/status"],
        verbs: &["patch"],
    },
    Rule {
        api_groups: &[""],
        resources: &["secrets"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    Rule {
        api_groups: &[""],
        resources: &["configmaps", "services"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &[""],
        resources: &["persistentvolumeclaims"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    Rule {
        api_groups: &["apps"],
        resources: &["deployments", "statefulsets"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["batch"],
        resources: &["jobs", "cronjobs"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["autoscaling"],
        resources: &["horizontalpodautoscalers"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["policy"],
        resources: &["poddisruptionbudgets"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["ingresses", "networkpolicies"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["keda.sh"],
        resources: &["scaledobjects", "triggerauthentications"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["monitoring.coreos.com"],
        resources: &["servicemonitors", "podmonitors", "prometheusrules"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["k8s.mariadb.com"],
        resources: &["mariadbs", "backups"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["rabbitmq.com"],
        resources: &["rabbitmqclusters"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["opensearch.opster.io"],
        resources: &["opensearchclusters"],
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// In the operator's own namespace, for leader election: the Lease is read, created and replaced.
pub const LEADER_ELECTION_RULES: &[Rule] = &[Rule {
    api_groups: &["coordination.k8s.io"],
    resources: &["leases"],
    verbs: &["get", "create", "update"],
}];
