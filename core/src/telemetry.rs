//! Telemetry for every chatsys process, set up in one place: the log format, the Prometheus recorder,
//! and the catalogue of every metric the processes record (name, kind, help text, labels). Each call
//! site names its metric from the catalogue, and `/metrics` shows `# HELP` for each.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Structured logs on stderr: JSON lines in deployments (`json`), readable text on a terminal.
/// The level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests start several servers in one process) keeps the first subscriber.
    let _ = if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: what `/metrics` calls it, what it measures, and the labels it carries.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        labels,
    }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        labels,
    }
}

const fn histogram(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
        labels,
    }
}

pub const HTTP_REQUESTS: Metric = counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    &["method", "route", "status"],
);
pub const HTTP_REQUEST_DURATION: Metric = histogram(
    "http_request_duration_seconds",
    "Time from a request's head to its response, by method, route template and status.",
    &["method", "route", "status"],
);
pub const CACHE_LOOKUPS: Metric = counter(
    "chatsys_cache_total",
    "Cache lookups by kind (message, chat, application, page) and result (hit, miss).",
    &["kind", "result"],
);
pub const CACHE_ERRORS: Metric = counter(
    "chatsys_cache_errors_total",
    "Cache operations that failed; the store answered instead.",
    &[],
);
pub const CACHE_PAGES_TOO_LARGE: Metric = counter(
    "chatsys_cache_pages_too_large_total",
    "Rendered list pages over the cache's page size limit, read from the store each time.",
    &[],
);
pub const COUNTER_RESEEDS: Metric = counter(
    "chatsys_counter_reseeds_total",
    "Number counters found missing (Redis restarted or flushed) and restarted above every number handed out, by counter (chats, messages).",
    &["counter"],
);
pub const QUEUE_PUBLISH: Metric = histogram(
    "chatsys_queue_publish_seconds",
    "Time to publish a command and have the broker confirm it, by result (ok, error).",
    &["result"],
);
pub const WORKER_COMMANDS: Metric = counter(
    "chatsys_worker_commands_total",
    "Commands the worker settled, by result (applied, dead_lettered).",
    &["result"],
);
pub const QUEUE_MESSAGES: Metric = gauge(
    "chatsys_queue_messages",
    "Commands waiting in RabbitMQ, by queue (commands, dead_letters), as the worker last read them.",
    &["queue"],
);
pub const WORKER_BATCH: Metric = histogram(
    "chatsys_worker_batch_seconds",
    "Time to store one batch in the database, from its first delivery to its commit.",
    &[],
);
pub const QUEUE_ENVELOPE_COMMANDS: Metric = histogram(
    "chatsys_queue_envelope_commands",
    "Commands per message published to the command queue (the group commits' sizes).",
    &[],
);
pub const WORKER_BATCH_SIZE: Metric = histogram(
    "chatsys_worker_batch_size",
    "Commands per stored batch.",
    &[],
);
pub const WORKER_STAGE: Metric = histogram(
    "chatsys_worker_stage_seconds",
    "Time of each ingest stage per batch or slice, by stage (apply, cache, index).",
    &["stage"],
);
pub const WORKER_INDEX_FAILURES: Metric = counter(
    "chatsys_worker_index_failures_total",
    "Calls to the search index that failed and were retried.",
    &[],
);

pub const LIVE_STREAMS: Metric = counter(
    "chatsys_live_streams_total",
    "Live event streams of a chat opened.",
    &[],
);
pub const LIVE_REPAIRS: Metric = counter(
    "chatsys_live_store_reads_total",
    "Times a chat's feed read changes from the store because announcements were missed, late or interrupted.",
    &[],
);

/// Every metric a chatsys process records.
pub const CATALOGUE: &[Metric] = &[
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    CACHE_LOOKUPS,
    CACHE_ERRORS,
    CACHE_PAGES_TOO_LARGE,
    COUNTER_RESEEDS,
    QUEUE_PUBLISH,
    QUEUE_ENVELOPE_COMMANDS,
    WORKER_COMMANDS,
    QUEUE_MESSAGES,
    WORKER_BATCH,
    WORKER_BATCH_SIZE,
    WORKER_STAGE,
    WORKER_INDEX_FAILURES,
    LIVE_STREAMS,
    LIVE_REPAIRS,
];

/// Serves these counters at zero before anything is counted, so that a dashboard or an alert reading
/// a rate sees 0 rather than no series. Label-less counters only: a labelled one would need its values.
pub fn count_from_zero(counters: &[Metric]) {
    for metric in counters {
        debug_assert!(metric.kind == Kind::Counter && metric.labels.is_empty());
        metrics::counter!(metric.name).increment(0);
    }
}

/// The process-wide Prometheus recorder (one per process, however many servers a test starts), with
/// every metric of the catalogue described.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                for metric in CATALOGUE {
                    match metric.kind {
                        Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
                        Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
                        Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
                    }
                }
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_in_prometheus_style() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "a metric is listed twice");
        for metric in CATALOGUE {
            let suffix_ok = match metric.kind {
                Kind::Counter => metric.name.ends_with("_total"),
                Kind::Gauge | Kind::Histogram => !metric.name.ends_with("_total"),
            };
            assert!(
                suffix_ok,
                "{} does not follow Prometheus naming for its kind",
                metric.name
            );
            assert!(
                metric.help.ends_with('.'),
                "{} has no full help text",
                metric.name
            );
        }
    }
}
