//! The Grafana dashboard of the chart and the alerts the operator writes read only series that the
//! API and the worker serve on `/metrics`: each metric they name, with the labels they group and
//! select by, and the label values they select. Checked against the full stack after traffic, since a
//! series exists only once it has a value.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chatsys_conformance::chat_path;
use chatsys_conformance::harness;
use chatsys_core::telemetry::{CATALOGUE, Kind};
use chatsys_operator::crd::{ChatSystem, ChatSystemSpec};
use chatsys_operator::manifests::alert_rules;
use chatsys_operator::metrics::CHATSYSTEM_READY;
use serde_json::Value;

/// Labels the scrape adds (from the pod and the namespace), not the processes.
const SCRAPE_LABELS: [&str; 3] = [
    "namespace",
    "app_kubernetes_io_instance",
    "app_kubernetes_io_component",
];

/// One metric a query reads: its name, the labels it groups or selects by, and the values it
/// selects with `=`.
#[derive(Debug, Default)]
struct Read {
    labels: BTreeSet<String>,
    values: BTreeSet<(String, String)>,
}

/// Every metric a PromQL expression reads (a name followed by a selector), with its selectors'
/// labels and values; the labels of `by (…)` clauses are added to each metric of the expression.
fn reads(expr: &str, into: &mut BTreeMap<String, Read>) {
    let mut grouped = BTreeSet::new();
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if expr[i..].starts_with("by (") {
            let end = expr[i..].find(')').expect("a closed by clause") + i;
            grouped.extend(expr[i + 4..end].split(',').map(|l| l.trim().to_string()));
            i = end;
        } else if bytes[i] == b'{' {
            let start = expr[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |p| p + 1);
            let name = expr[start..i].to_string();
            let end = expr[i..].find('}').expect("a closed selector") + i;
            let read = into.entry(name.clone()).or_default();
            for matcher in expr[i + 1..end].split(',').filter(|m| !m.trim().is_empty()) {
                let (label, rest) = matcher.split_once(['=', '!']).expect("a matcher");
                read.labels.insert(label.trim().to_string());
                if let Some(value) = rest.strip_prefix('"') {
                    read.values.insert((
                        label.trim().to_string(),
                        value.trim_end_matches('"').to_string(),
                    ));
                }
            }
            names.push(name);
            i = end;
        }
        i += 1;
    }
    for name in names {
        into.get_mut(&name)
            .expect("read")
            .labels
            .extend(grouped.iter().cloned());
    }
}

fn dashboard_queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../charts/chatsys-operator/dashboards/chatsys.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("an expr").to_string())
        .collect();
    queries.extend(
        dashboard["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["query"]["query"].as_str().map(str::to_string)),
    );
    queries
}

/// The families served, by name (summaries also as `_sum` and `_count`), with their samples.
fn served_families(exposition: &str) -> BTreeMap<String, Vec<String>> {
    let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        families
            .entry(name.to_string())
            .or_default()
            .push(line.to_string());
        for suffix in ["_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                families
                    .entry(family.to_string())
                    .or_default()
                    .push(line.to_string());
            }
        }
    }
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_read_only_what_metrics_serves() {
    let served = harness::full_stack().await;
    let target = &served.target;
    let token = target.create_token().await;
    let chat = target.create_chat(&token).await;
    target
        .create_message(&token, chat, "a message to count")
        .await;
    target
        .get(&chat_path(&token, chat))
        .await
        .expect_status(200);
    let events = target
        .request(
            reqwest::Method::GET,
            &format!("{}/events?after=0", chat_path(&token, chat)),
        )
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    drop(events);
    let mut cs = ChatSystem::new("chat", ChatSystemSpec::default());
    cs.metadata.namespace = Some("team".to_string());
    let alerts = alert_rules(&cs);
    let mut wanted = BTreeMap::new();
    for query in dashboard_queries()
        .iter()
        .chain(alerts.iter().map(|a| &a.expr))
    {
        reads(query, &mut wanted);
    }
    // The operator's readiness gauge is served by the operator, which its own tests scrape.
    assert!(
        wanted.remove(CHATSYSTEM_READY).is_some(),
        "the dashboard and an alert read readiness"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let (exposition, families) = loop {
        let exposition = target.get("/metrics").await.text();
        let families = served_families(&exposition);
        let missing: Vec<&String> = wanted
            .keys()
            .filter(|n| !families.contains_key(*n))
            .collect();
        if missing.is_empty() {
            break (exposition, families);
        }
        assert!(
            Instant::now() < deadline,
            "read by the dashboard or an alert but not served: {missing:?}\n{exposition}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (name, read) in &wanted {
        let family = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .filter(|f| CATALOGUE.iter().any(|m| m.name == *f))
            .unwrap_or(name);
        let metric = CATALOGUE
            .iter()
            .find(|m| m.name == family)
            .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        for label in &read.labels {
            let known = SCRAPE_LABELS.contains(&label.as_str())
                || metric.labels.contains(&label.as_str())
                || (label == "quantile" && metric.kind == Kind::Histogram);
            assert!(
                known,
                "{name} is read by the label {label}, which it does not carry"
            );
        }
        for (label, value) in read
            .values
            .iter()
            .filter(|(l, _)| !SCRAPE_LABELS.contains(&l.as_str()))
        {
            let sample = format!("{label}=\"{value}\"");
            assert!(
                families[name].iter().any(|line| line.contains(&sample)),
                "{name} is read with {sample}, which no series served has:\n{exposition}"
            );
        }
    }
    assert!(wanted.contains_key("chatsys_queue_messages"), "{wanted:?}");
}
