//! Builder tests of what platform teams expect around the system: KEDA's ScaledObject for the worker,
//! prometheus-operator's monitors and rules, and NetworkPolicies.

mod common;

use chatsys_operator::apis::OptionalApi;
use chatsys_operator::crd::ChatSystem;
use chatsys_operator::kinds::{Child, ChildKind};
use chatsys_operator::manifests;
use chatsys_operator::render;
use common::{children, find, fresh_inputs, of_kind};
use serde_json::{Value, json};

fn example(name: &str) -> (ChatSystem, Vec<Child>) {
    let path = format!("{}/../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut cs = render::read(&path).expect("the example parses").remove(0);
    cs.metadata.namespace = Some("team".to_string());
    cs.metadata.uid = Some("6f1c7a52-8d7e-4f0e-9a64-0d3b8f7c2e11".to_string());
    let built = children(&cs, &fresh_inputs(&cs));
    (cs, built)
}

/// Whether `labels` hold every pair of a `matchLabels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .expect("matchLabels")
        .iter()
        .all(|(key, value)| labels[key] == *value)
}

/// The ingress rule of a policy that opens `port`.
fn rule_for_port(policy: &Value, port: i64) -> &Value {
    policy["spec"]["ingress"]
        .as_array()
        .expect("ingress rules")
        .iter()
        .find(|rule| rule["ports"][0]["port"] == port)
        .unwrap_or_else(|| panic!("no rule for port {port} in {policy}"))
}

#[test]
fn each_database_accepts_only_the_components_that_use_it() {
    let (_, built) = example("minimal");
    for (service, port, clients) in [
        (
            "mysql",
            3306,
            json!([
                "api",
                "worker",
                "migrate",
                "mysql-backup",
                "mysql-restore",
                "reindex"
            ]),
        ),
        ("redis", 6379, json!(["api", "worker"])),
        ("rabbitmq", 5672, json!(["api", "worker"])),
        ("opensearch", 9200, json!(["api", "worker", "reindex"])),
    ] {
        let name = format!("chat-{service}");
        let policy = &find(&built, ChildKind::NetworkPolicy, &name);
        let workload = &find(&built, ChildKind::StatefulSet, &name);
        assert!(selects(
            &policy["spec"]["podSelector"],
            &workload["spec"]["template"]["metadata"]["labels"]
        ));
        assert_eq!(
            policy["spec"]["policyTypes"],
            json!(["Ingress"]),
            "egress open"
        );
        let rules = policy["spec"]["ingress"].as_array().expect("rules");
        // Redis has its cache's port besides, for the same clients.
        assert_eq!(
            rules.len(),
            if service == "redis" { 2 } else { 1 },
            "{name}: only its clients, no KEDA, no scrapes"
        );
        if service == "redis" {
            assert_eq!(
                rule_for_port(policy, 6380)["from"][0]["podSelector"]["matchExpressions"][0]["values"],
                json!(["api", "worker"])
            );
        }
        let from = &rule_for_port(policy, port)["from"][0]["podSelector"];
        assert_eq!(from["matchLabels"]["app.kubernetes.io/instance"], "chat");
        assert_eq!(
            from["matchExpressions"][0],
            json!({ "key": "app.kubernetes.io/component", "operator": "In", "values": clients })
        );
        for client in ["api", "worker"] {
            let pods = &find(&built, ChildKind::Deployment, &format!("chat-{client}"))["spec"]["template"]
                ["metadata"]["labels"];
            assert_eq!(pods["app.kubernetes.io/instance"], "chat");
            assert_eq!(pods["app.kubernetes.io/component"], client);
        }
    }
    let api = &find(&built, ChildKind::NetworkPolicy, "chat-api");
    assert!(rule_for_port(api, 8080).get("from").is_none(), "anyone");
    let worker = &find(&built, ChildKind::NetworkPolicy, "chat-worker");
    assert_eq!(worker["spec"]["ingress"].as_array().map(Vec::len), Some(1));
    assert!(rule_for_port(worker, 9090).get("from").is_none());
}

#[test]
fn keda_and_scrapers_get_in_where_the_spec_needs_them() {
    let (_, built) = example("full");
    let rabbitmq = &find(&built, ChildKind::NetworkPolicy, "chat-rabbitmq");
    let rules = rabbitmq["spec"]["ingress"].as_array().expect("rules");
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[1]["from"],
        json!([{ "namespaceSelector": {}, "podSelector": { "matchLabels": { "app.kubernetes.io/name": "keda-operator" } } }])
    );
    let monitoring = json!([{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } } }]);
    assert_eq!(rule_for_port(rabbitmq, 15692)["from"], monitoring);
    let worker = &find(&built, ChildKind::NetworkPolicy, "chat-worker");
    assert_eq!(rule_for_port(worker, 9090)["from"], monitoring);
    let api = &find(&built, ChildKind::NetworkPolicy, "chat-api");
    let from = &rule_for_port(api, 8080)["from"];
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    assert_eq!(from.as_array().map(Vec::len), Some(1), "clients only");
    assert_eq!(
        rule_for_port(api, 9090)["from"],
        monitoring,
        "Prometheus scrapes the API's metrics port"
    );
    let (_, open) = example("scale-to-zero");
    assert!(of_kind(&open, ChildKind::NetworkPolicy).is_empty());
}

#[test]
fn every_monitor_scrapes_a_port_that_exists() {
    let (_, built) = example("full");
    let monitors = of_kind(&built, ChildKind::ServiceMonitor);
    assert_eq!(monitors.len(), 3);
    for monitor in monitors {
        assert_eq!(
            monitor["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        let selected: Vec<Value> = of_kind(&built, ChildKind::Service)
            .into_iter()
            .filter(|service| selects(&monitor["spec"]["selector"], &service["metadata"]["labels"]))
            .collect();
        assert_eq!(selected.len(), 1, "{}", monitor["metadata"]["name"]);
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(endpoint["interval"], "15s");
        assert!(
            selected[0]["spec"]["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .any(|port| port["name"] == endpoint["port"]),
            "{} scrapes a port its Service does not have",
            monitor["metadata"]["name"]
        );
        assert_eq!(
            monitor["spec"]["podTargetLabels"],
            json!(["app.kubernetes.io/instance", "app.kubernetes.io/component"])
        );
    }

    let (_, built) = example("scale-to-zero");
    let monitors = of_kind(&built, ChildKind::PodMonitor);
    assert_eq!(monitors.len(), 3);
    for monitor in monitors {
        let workloads: Vec<Value> = of_kind(&built, ChildKind::Deployment)
            .into_iter()
            .chain(of_kind(&built, ChildKind::StatefulSet))
            .filter(|w| {
                selects(
                    &monitor["spec"]["selector"],
                    &w["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(workloads.len(), 1, "{}", monitor["metadata"]["name"]);
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        let named = endpoint["port"].as_str().is_some_and(|port| {
            common::containers(&workloads[0])
                .iter()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .any(|p| p["name"] == port)
        });
        assert!(
            named || endpoint["targetPort"] == 15692,
            "{} scrapes a port its pods do not have",
            monitor["metadata"]["name"]
        );
    }
}

#[test]
fn the_backlog_scaler_reads_the_command_queue_with_the_right_credentials() {
    let (_, built) = example("scale-to-zero");
    let scaled = &find(&built, ChildKind::ScaledObject, "chat-worker");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(
        scaled["spec"]["minReplicaCount"], 0,
        "scale to zero was asked"
    );
    assert_eq!(scaled["spec"]["maxReplicaCount"], 20);
    let metadata = &scaled["spec"]["triggers"][0]["metadata"];
    assert_eq!(metadata["value"], "5000", "a string, as KEDA reads it");
    assert_eq!(metadata["mode"], "QueueLength");
    assert_eq!(metadata["host"], "amqp://chat-rabbitmq.team.svc:5672/%2f");
    assert!(
        of_kind(&built, ChildKind::HorizontalPodAutoscaler)
            .iter()
            .all(|hpa| hpa["metadata"]["name"] != "chat-worker")
    );
    let worker = &find(&built, ChildKind::Deployment, "chat-worker");
    assert!(
        worker["spec"].get("replicas").is_none(),
        "KEDA's HPA owns the count"
    );

    let mut cs = example("external").0;
    cs.spec.worker.autoscaling.metric = chatsys_operator::crd::ScalingMetric::QueueBacklog;
    let built = children(&cs, &fresh_inputs(&cs));
    let authentication = &find(&built, ChildKind::TriggerAuthentication, "chat-worker");
    assert_eq!(
        authentication["spec"]["secretTargetRef"],
        json!([{ "parameter": "host", "name": "chat-rabbitmq", "key": "url" }])
    );
    let scaled = &find(&built, ChildKind::ScaledObject, "chat-worker");
    assert!(
        scaled["spec"]["triggers"][0]["metadata"]
            .get("host")
            .is_none()
    );
    assert_eq!(scaled["spec"]["minReplicaCount"], 2);
}

#[test]
fn with_several_command_queues_both_components_know_them_and_the_scaler_watches_each() {
    let (_, built) = example("full");
    for settings in ["chat-api", "chat-worker"] {
        assert_eq!(
            find(&built, ChildKind::ConfigMap, settings)["data"]["CHATSYS_QUEUE_SHARDS"],
            "4",
            "{settings}"
        );
    }
    let scaled = &find(&built, ChildKind::ScaledObject, "chat-worker");
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    let queues: Vec<&Value> = triggers
        .iter()
        .map(|trigger| &trigger["metadata"]["queueName"])
        .collect();
    assert_eq!(
        queues,
        [
            "chatsys.commands.quorum",
            "chatsys.commands.quorum.1",
            "chatsys.commands.quorum.2",
            "chatsys.commands.quorum.3"
        ]
    );
    // 2,000 messages per replica over the whole backlog, spread over four queues.
    assert!(
        triggers
            .iter()
            .all(|trigger| trigger["metadata"]["value"] == "500")
    );
}

#[test]
fn without_the_optional_apis_nothing_of_theirs_is_built_and_the_plan_says_what_is_missing() {
    let (cs, _) = example("full");
    let mut inputs = fresh_inputs(&cs);
    inputs.served.clear();
    let plan = manifests::build(&manifests::validate(&cs, &inputs).expect("valid"));
    assert!(
        plan.children
            .iter()
            .all(|m| m.kind().optional_api().is_none())
    );
    let missing: Vec<OptionalApi> = plan.missing.iter().map(|m| m.api).collect();
    assert_eq!(
        missing,
        [OptionalApi::Keda, OptionalApi::PrometheusOperator]
    );
    assert!(
        plan.children
            .iter()
            .any(|m| m.kind() == ChildKind::HorizontalPodAutoscaler && m.name() == "chat-worker"),
        "the worker scales on CPU meanwhile"
    );
    assert_eq!(
        plan.missing[0].to_string(),
        "worker.autoscaling.metric QueueBacklog (the worker scales on CPU until it is installed) needs KEDA: CustomResourceDefinitions scaledobjects.keda.sh, triggerauthentications.keda.sh not found"
    );
}

#[test]
fn a_deployed_api_has_an_admin_key_and_keeps_its_metrics_off_the_clients_port() {
    let (cs, built) = example("full");
    let api = &find(&built, ChildKind::Deployment, "chat-api");
    let container = common::container(api, "api");
    assert_eq!(
        common::env(container, "CHATSYS_ADMIN_KEY")["valueFrom"]["secretKeyRef"],
        json!({ "name": "chat-api-admin-key", "key": "admin-key" }),
        "listing applications is never open on a cluster"
    );
    assert!(
        of_kind(&built, ChildKind::Secret)
            .iter()
            .any(|s| s["metadata"]["name"] == "chat-api-admin-key")
    );
    let settings = &find(&built, ChildKind::ConfigMap, "chat-api")["data"];
    assert_eq!(settings["CHATSYS_METRICS_LISTEN"], "0.0.0.0:9090");
    let monitor = &find(&built, ChildKind::ServiceMonitor, "chat-api");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    for path in find(&built, ChildKind::Ingress, "chat-api")["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .expect("paths")
    {
        let path = path["path"].as_str().unwrap_or_default();
        assert!(
            !["/", "/metrics", "/healthz", "/readyz"].contains(&path),
            "{path} is not for clients"
        );
    }

    // A key of the user's instead: nothing generated, the API reads theirs.
    let mut own = cs.clone();
    own.spec.api.admin_key_secret = Some(chatsys_operator::crd::SecretKeyReference {
        name: "ops-keys".to_string(),
        key: "chat".to_string(),
    });
    let mut inputs = fresh_inputs(&own);
    inputs.external_secret_keys.remove("ops-keys");
    let missing = manifests::validate(&own, &inputs).expect_err("no such Secret");
    assert_eq!(missing.0, ["api: Secret ops-keys not found"]);
    inputs
        .external_secret_keys
        .insert("ops-keys".to_string(), ["chat".to_string()].into());
    let built = children(&own, &inputs);
    assert!(
        !of_kind(&built, ChildKind::Secret)
            .iter()
            .any(|s| s["metadata"]["name"] == "chat-api-admin-key")
    );
    let api = &find(&built, ChildKind::Deployment, "chat-api");
    assert_eq!(
        common::env(common::container(api, "api"), "CHATSYS_ADMIN_KEY")["valueFrom"]["secretKeyRef"],
        json!({ "name": "ops-keys", "key": "chat" })
    );
}

#[test]
fn each_components_scheduling_labels_annotations_and_env_reach_its_pods_only() {
    let (mut cs, _) = example("minimal");
    let settings: chatsys_operator::crd::PodSettings = serde_json::from_value(json!({
        "nodeSelector": { "pool": "chat" },
        "tolerations": [{ "key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule" }],
        "affinity": { "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [
            { "weight": 100, "podAffinityTerm": { "topologyKey": "kubernetes.io/hostname",
              "labelSelector": { "matchLabels": { "app.kubernetes.io/component": "api" } } } }] } },
        "topologySpreadConstraints": [{ "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway" }],
        "podAnnotations": { "mesh.example.org/inject": "true", "chatsys.io/config-hash": "mine" },
        "podLabels": { "team": "chat", "app.kubernetes.io/component": "mine" },
        "env": [{ "name": "RUST_LOG", "value": "debug" }],
    }))
    .expect("settings parse");
    cs.spec.api.pod = settings.clone();
    cs.spec.mysql.pod = settings;
    let built = children(&cs, &fresh_inputs(&cs));
    for (kind, name, container) in [
        (ChildKind::Deployment, "chat-api", "api"),
        (ChildKind::StatefulSet, "chat-mysql", "mysql"),
    ] {
        let workload = &find(&built, kind, name);
        let pod = &workload["spec"]["template"];
        assert_eq!(
            pod["spec"]["nodeSelector"],
            json!({ "pool": "chat" }),
            "{name}"
        );
        assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated", "{name}");
        assert!(
            pod["spec"]["affinity"]["podAntiAffinity"].is_object(),
            "{name}"
        );
        assert_eq!(pod["spec"]["topologySpreadConstraints"][0]["maxSkew"], 1);
        assert_eq!(pod["metadata"]["labels"]["team"], "chat");
        assert_ne!(
            pod["metadata"]["labels"]["app.kubernetes.io/component"], "mine",
            "the operator's labels select the pods: they win"
        );
        assert_eq!(
            workload["spec"]["selector"]["matchLabels"].get("team"),
            None,
            "a selector never changes"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["mesh.example.org/inject"],
            "true"
        );
        let env = common::env(common::container(workload, container), "RUST_LOG");
        assert_eq!(env["value"], "debug");
    }
    assert_ne!(
        find(&built, ChildKind::Deployment, "chat-api")["spec"]["template"]["metadata"]["annotations"]
            ["chatsys.io/config-hash"],
        "mine"
    );
    let migration = &of_kind(&built, ChildKind::Job)[0];
    assert_eq!(
        migration["spec"]["template"]["spec"]["nodeSelector"],
        json!({ "pool": "chat" }),
        "the migration runs where the API does"
    );
    let worker = &find(&built, ChildKind::Deployment, "chat-worker");
    assert!(
        worker["spec"]["template"]["spec"]["nodeSelector"].is_null(),
        "each component's own"
    );
}

#[test]
fn ingress_nginx_annotations_only_for_its_class_and_the_users_on_top() {
    let (mut cs, _) = example("full");
    cs.spec.api.ingress.annotations = [(
        "nginx.ingress.kubernetes.io/proxy-read-timeout".to_string(),
        "60".to_string(),
    )]
    .into();
    cs.spec.api.ingress.class_name = Some("nginx".to_string());
    let built = children(&cs, &fresh_inputs(&cs));
    let annotations = &find(&built, ChildKind::Ingress, "chat-api")["metadata"]["annotations"];
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-buffering"],
        "off"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"], "60",
        "the user's value wins"
    );
    cs.spec.api.ingress.class_name = Some("traefik".to_string());
    cs.spec.api.ingress.annotations = [(
        "traefik.ingress.kubernetes.io/router.entrypoints".to_string(),
        "websecure".to_string(),
    )]
    .into();
    let built = children(&cs, &fresh_inputs(&cs));
    assert_eq!(
        find(&built, ChildKind::Ingress, "chat-api")["metadata"]["annotations"],
        json!({ "traefik.ingress.kubernetes.io/router.entrypoints": "websecure" }),
        "no other controller's annotations"
    );
}
