//! Telemetry set up once per process: the log format, and the Prometheus recorder that describes every
//! metric of the core's catalogue.

use std::sync::OnceLock;

use chatsys_core::telemetry::{CATALOGUE, Kind, Metric};
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
