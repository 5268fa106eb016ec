//! Every metric the operator exports: its name, its help text and how it is recorded. The other
//! modules record through the functions here, and the `ChatsysNotReady` alert reads
//! [`CHATSYSTEM_READY`] by name, so a renamed metric cannot leave its alert behind.

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::time::Duration;

pub const RECONCILES: &str = "chatsys_operator_reconciles_total";
pub const RECONCILE_ERRORS: &str = "chatsys_operator_reconcile_errors_total";
pub const RECONCILE_DURATION: &str = "chatsys_operator_reconcile_duration_seconds";
pub const UNREADABLE_RESOURCES: &str = "chatsys_operator_unreadable_resources_total";
/// 1 while a ChatSystem's Ready condition is true, 0 while it is not; its alert is `ChatsysNotReady`.
pub const CHATSYSTEM_READY: &str = "chatsys_operator_chatsystem_ready";

/// When the newest MySQL backup of a ChatSystem completed (or its schedule began, before the first),
/// in seconds since the epoch; with [`MYSQL_BACKUP_MAX_AGE`], the `ChatsysBackupOverdue` alert.
pub const MYSQL_BACKUP_LAST: &str = "chatsys_operator_mysql_backup_last_timestamp_seconds";
/// The age past which a ChatSystem's newest MySQL backup is overdue: twice its schedule's interval.
pub const MYSQL_BACKUP_MAX_AGE: &str = "chatsys_operator_mysql_backup_max_age_seconds";

/// A deleted ChatSystem's gauge is dropped once it has not been set for this long (its reconcile sets
/// it at least every 5 minutes while it exists), so no alert fires for a system that is gone.
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// Installs the global metrics recorder; its handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Help texts, and the reconcile counter at zero so a scrape before the first reconcile sees it.
pub fn describe() {
    ::metrics::describe_counter!(RECONCILES, "Reconciles of ChatSystem resources started.");
    ::metrics::describe_counter!(
        RECONCILE_ERRORS,
        "Reconciles that failed, by kind of error."
    );
    ::metrics::describe_histogram!(
        RECONCILE_DURATION,
        ::metrics::Unit::Seconds,
        "Duration of each reconcile."
    );
    ::metrics::describe_counter!(
        UNREADABLE_RESOURCES,
        "Versions of ChatSystems the operator could not decode, reported in their status and skipped."
    );
    ::metrics::describe_gauge!(
        CHATSYSTEM_READY,
        "1 while the ChatSystem (labels chatsystem_namespace, chatsystem) is Ready, 0 while it is not."
    );
    ::metrics::describe_gauge!(
        MYSQL_BACKUP_LAST,
        ::metrics::Unit::Seconds,
        "When the newest MySQL backup of the ChatSystem completed (or its schedule began, before the first), since the epoch."
    );
    ::metrics::describe_gauge!(
        MYSQL_BACKUP_MAX_AGE,
        ::metrics::Unit::Seconds,
        "The age past which the ChatSystem's newest MySQL backup is overdue: twice its schedule's interval."
    );
    ::metrics::counter!(RECONCILES).absolute(0);
}

pub fn reconcile_started() {
    ::metrics::counter!(RECONCILES).increment(1);
}

pub fn reconcile_finished(took: Duration) {
    ::metrics::histogram!(RECONCILE_DURATION).record(took.as_secs_f64());
}

/// A failed reconcile, labelled with its kind of error (see `Error::metric_label`).
pub fn reconcile_failed(label: &'static str) {
    ::metrics::counter!(RECONCILE_ERRORS, "error" => label).increment(1);
}

pub fn unreadable_resource() {
    ::metrics::counter!(UNREADABLE_RESOURCES).increment(1);
}

/// The gauge of the `ChatsysNotReady` alert for one ChatSystem.
pub fn chatsystem_ready(namespace: &str, name: String, ready: bool) {
    ::metrics::gauge!(CHATSYSTEM_READY, "chatsystem_namespace" => namespace.to_string(), "chatsystem" => name)
        .set(if ready { 1.0 } else { 0.0 });
}

/// The gauges of the `ChatsysBackupOverdue` alert for one ChatSystem.
pub fn mysql_backup(namespace: &str, name: String, newest: f64, max_age: f64) {
    let labels = [
        ("chatsystem_namespace", namespace.to_string()),
        ("chatsystem", name),
    ];
    ::metrics::gauge!(MYSQL_BACKUP_LAST, &labels).set(newest);
    ::metrics::gauge!(MYSQL_BACKUP_MAX_AGE, &labels).set(max_age);
}
