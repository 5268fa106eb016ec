//! `/metrics` as a monitoring system reads it: every family it serves is one of the catalogue's, with
//! its help text and only the labels the catalogue gives it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chatsys_core::telemetry::{CATALOGUE, Kind};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_served_is_in_the_catalogue_with_its_help_and_labels() {
    let server = common::start(&[]).await;
    let base = server.base();
    let client = reqwest::Client::new();
    let token = common::create_token(&client, &base, "metrics").await;
    client
        .post(format!("{base}/applications/{token}/chats"))
        .send()
        .await
        .unwrap();
    client
        .post(format!("{base}/applications/{token}/chats/1/messages"))
        .json(&json!({"body": "hello"}))
        .send()
        .await
        .unwrap();
    // The worker's metrics appear once the message is stored.
    let mut exposition = String::new();
    for _ in 0..100 {
        exposition = scrape(&client, &base).await;
        if exposition.contains("chatsys_worker_commands_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.running.stop().await;

    let mut served: BTreeMap<&str, (&str, bool)> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            served.entry(name).or_insert((kind, false)).0 = kind;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap();
            served.entry(name).or_insert(("", false)).1 = true;
        }
    }
    for family in ["http_requests_total", "chatsys_worker_commands_total"] {
        assert!(
            served.contains_key(family),
            "{family} not served:\n{exposition}"
        );
    }
    for (name, (kind, helped)) in &served {
        let metric = CATALOGUE
            .iter()
            .find(|m| m.name == *name)
            .unwrap_or_else(|| panic!("{name} is served but not in the catalogue"));
        assert!(helped, "{name} has no # HELP");
        let expected = match metric.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "summary",
        };
        assert_eq!(kind, &expected, "{name}'s kind");
    }
    for sample in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((family, labels)) = sample.split_once('{') else {
            continue;
        };
        let family = family
            .strip_suffix("_sum")
            .or_else(|| family.strip_suffix("_count"))
            .filter(|f| served.contains_key(f))
            .unwrap_or(family);
        let metric = CATALOGUE.iter().find(|m| m.name == family).unwrap();
        for pair in labels
            .trim_end_matches(|c| c != '}')
            .trim_end_matches('}')
            .split(',')
        {
            let label = pair.split_once('=').unwrap().0;
            assert!(
                label == "quantile" || metric.labels.contains(&label),
                "{family} carries the label {label}, which the catalogue does not give it"
            );
        }
    }
}

/// Methods are a label: one a client invents must not become a series of its own (each one is held by
/// every replica and sent on every scrape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_count_as_other() {
    let server = common::start(&[]).await;
    let base = server.base();
    let client = reqwest::Client::new();
    for n in 0..20 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{n}").as_bytes()).unwrap();
        let answer = client
            .request(method, format!("{base}/applications"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405);
    }
    let exposition = scrape(&client, &base).await;
    server.running.stop().await;
    assert!(
        !exposition.contains("INVENTED"),
        "a client's method became a label value:\n{exposition}"
    );
    assert!(
        exposition.contains(
            r#"http_requests_total{method="other",route="/applications",status="405"} 20"#
        ),
        "the invented methods are not counted as other:\n{exposition}"
    );
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
