//! The catalogue of every metric the chatsys processes record (name, kind, help text, labels). Each
//! call site names its metric from the catalogue, and `/metrics` shows `# HELP` for each; the recorder
//! itself is set up by the runtime.

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
