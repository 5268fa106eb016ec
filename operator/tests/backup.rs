//! MySQL's backups and the restore a new system starts from: what the operator builds for them, how
//! the restore orders the migration and the reindex, and what the status says of overdue backups.

mod common;

use chatsys_operator::crd::{
    BackupClaim, BackupRecord, BackupTarget, ChatSystem, MysqlBackupSpec, RestoreSpec, S3Bucket,
};
use chatsys_operator::kinds::{Child, ChildKind};
use chatsys_operator::manifests::{self, Inputs};
use chatsys_operator::status::{self, Backups};
use common::{children, container, env, find, fixture, fresh_inputs, of_kind};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

fn bucket() -> S3Bucket {
    S3Bucket {
        endpoint: "https://s3.eu-west-1.amazonaws.com".to_string(),
        bucket: "team-backups".to_string(),
        prefix: "chat/".to_string(),
        region: Some("eu-west-1".to_string()),
        credentials_secret: "backup-bucket".to_string(),
    }
}

fn with_backups(target: BackupTarget) -> ChatSystem {
    let mut cs = fixture("defaults");
    cs.spec.mysql.backup = Some(MysqlBackupSpec {
        schedule: "0 3 * * *".to_string(),
        keep: 14,
        target,
    });
    cs
}

fn on_claim() -> BackupTarget {
    BackupTarget {
        volume_claim: Some(BackupClaim {
            size: Quantity("20Gi".to_string()),
            storage_class_name: Some("standard".to_string()),
        }),
        s3: None,
    }
}

fn in_bucket() -> BackupTarget {
    BackupTarget {
        volume_claim: None,
        s3: Some(bucket()),
    }
}

fn secret_ref(env: &Value) -> (&str, &str) {
    let reference = &env["valueFrom"]["secretKeyRef"];
    (
        reference["name"].as_str().expect("a Secret"),
        reference["key"].as_str().expect("a key"),
    )
}

/// The pod template of a CronJob's Jobs.
fn job_pod(cron_job: &Value) -> Value {
    serde_json::json!({ "spec": cron_job["spec"]["jobTemplate"]["spec"].clone() })
}

#[test]
fn backups_to_a_claim_are_a_cron_job_writing_to_a_claim_that_outlives_the_system() {
    let cs = with_backups(on_claim());
    let built = children(&cs, &fresh_inputs(&cs));

    let claim = find(
        &built,
        ChildKind::PersistentVolumeClaim,
        "chat-mysql-backups",
    );
    assert!(
        claim["metadata"].get("ownerReferences").is_none(),
        "deleting the ChatSystem must leave its backups: {}",
        claim["metadata"]
    );
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "20Gi");
    assert_eq!(claim["spec"]["storageClassName"], "standard");

    let cron_job = find(&built, ChildKind::CronJob, "chat-mysql-backup");
    let spec = &cron_job["spec"];
    assert_eq!(spec["schedule"], "0 3 * * *");
    assert_eq!(spec["timeZone"], "Etc/UTC");
    assert_eq!(
        spec["concurrencyPolicy"], "Forbid",
        "a slow backup is never run twice at once"
    );
    assert_eq!(
        spec["jobTemplate"]["metadata"]["labels"]["app.kubernetes.io/instance"], "chat",
        "the Jobs carry the system's labels, so the operator sees them"
    );
    let pod = job_pod(&cron_job);
    let dump = container(&pod, "dump");
    assert_eq!(dump["image"], cs.spec.mysql.image.as_str());
    let script = dump["command"][2].as_str().expect("a script");
    assert!(
        script.contains("mysqldump") && script.contains("--single-transaction"),
        "a consistent logical dump: {script}"
    );
    assert_eq!(env(dump, "BACKUP_KEEP")["value"], "14");
    assert_eq!(
        env(dump, "BACKUP_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['batch.kubernetes.io/job-name']",
        "each backup is named after its Job"
    );
    assert_eq!(
        secret_ref(env(dump, "MYSQL_PWD")),
        ("chat-mysql-credentials", "root-password")
    );
    assert_eq!(env(dump, "MYSQL_HOST")["value"], "chat-mysql");
    let volumes = pod["spec"]["template"]["spec"]["volumes"].clone();
    assert!(
        volumes
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "chat-mysql-backups"),
        "{volumes}"
    );
}

#[test]
fn backups_to_a_bucket_dump_in_the_pod_then_upload_with_the_named_credentials() {
    let cs = with_backups(in_bucket());
    let built = children(&cs, &fresh_inputs(&cs));
    assert!(
        of_kind(&built, ChildKind::PersistentVolumeClaim).is_empty(),
        "no claim for a bucket"
    );
    let pod = job_pod(&find(&built, ChildKind::CronJob, "chat-mysql-backup"));
    let template = &pod["spec"]["template"]["spec"];
    assert_eq!(template["initContainers"][0]["name"], "dump");
    let upload = container(&pod, "upload");
    assert!(
        upload["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("amazon/aws-cli:"))
    );
    assert_eq!(env(upload, "S3_BUCKET")["value"], "team-backups");
    assert_eq!(env(upload, "S3_PREFIX")["value"], "chat/");
    assert_eq!(
        env(upload, "S3_ENDPOINT")["value"],
        "https://s3.eu-west-1.amazonaws.com"
    );
    assert_eq!(
        secret_ref(env(upload, "AWS_SECRET_ACCESS_KEY")),
        ("backup-bucket", "secret-access-key")
    );
    assert!(
        template["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "backups" && v.get("emptyDir").is_some())
    );
}

#[test]
fn a_bucket_whose_credentials_are_missing_is_an_invalid_spec() {
    let cs = with_backups(in_bucket());
    let mut inputs = fresh_inputs(&cs);
    inputs.external_secret_keys.remove("backup-bucket");
    let invalid = manifests::validate(&cs, &inputs).expect_err("refused");
    assert!(
        invalid
            .0
            .contains(&"mysql-backup: Secret backup-bucket not found".to_string()),
        "{invalid}"
    );
}

#[test]
fn a_schedule_that_is_not_one_is_an_invalid_spec() {
    let mut cs = with_backups(on_claim());
    cs.spec.mysql.backup.as_mut().expect("backups").schedule = "every night".to_string();
    let invalid = manifests::validate(&cs, &fresh_inputs(&cs)).expect_err("refused");
    assert!(
        invalid
            .0
            .iter()
            .any(|p| p.starts_with("mysql: backup.schedule")),
        "{invalid}"
    );
}

#[test]
fn only_a_system_with_backups_has_the_backup_alert() {
    let names = |cs: &ChatSystem| -> Vec<String> {
        manifests::alert_rules(cs)
            .into_iter()
            .map(|rule| rule.alert)
            .collect()
    };
    assert!(!names(&fixture("defaults")).contains(&"ChatsysBackupOverdue".to_string()));
    let cs = with_backups(on_claim());
    let rule = manifests::alert_rules(&cs)
        .into_iter()
        .find(|rule| rule.alert == "ChatsysBackupOverdue")
        .expect("the backup alert");
    assert!(
        rule.expr
            .contains("chatsys_operator_mysql_backup_last_timestamp_seconds")
            && rule
                .expr
                .contains("chatsys_operator_mysql_backup_max_age_seconds")
            && rule.expr.contains(r#"chatsystem="chat""#),
        "{}",
        rule.expr
    );
}

fn restoring(from: RestoreSpec) -> ChatSystem {
    let mut cs = fixture("defaults");
    cs.spec.mysql.restore_from = Some(from);
    cs
}

fn from_claim() -> RestoreSpec {
    RestoreSpec {
        backup: "chat-mysql-backup-29412345".to_string(),
        claim_name: None,
        s3: None,
    }
}

fn plan(cs: &ChatSystem, inputs: &Inputs) -> manifests::Plan {
    manifests::build(&manifests::validate(cs, inputs).expect("valid"))
}

fn job_named(built: &[Child], prefix: &str) -> Option<Value> {
    of_kind(built, ChildKind::Job).into_iter().find(|job| {
        job["metadata"]["name"]
            .as_str()
            .is_some_and(|name| name.starts_with(prefix))
    })
}

fn name_of(job: &Value) -> String {
    job["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string()
}

#[test]
fn a_new_system_restores_then_migrates_then_serves_and_reindexes() {
    let cs = restoring(from_claim());
    let mut inputs = fresh_inputs(&cs);

    let first = plan(&cs, &inputs);
    let restore = job_named(&first.children, "chat-restore-").expect("a restore Job");
    assert!(
        job_named(&first.children, "chat-migrate-").is_none(),
        "the schema is migrated after the backup is in"
    );
    assert!(of_kind(&first.children, ChildKind::Deployment).is_empty());
    let load = container(&restore, "restore");
    assert_eq!(
        env(load, "BACKUP_NAME")["value"],
        "chat-mysql-backup-29412345"
    );
    assert!(
        load["command"][2]
            .as_str()
            .is_some_and(|script| script.contains("sha256sum")),
        "the restore checks the backup's checksum"
    );
    let volumes = &restore["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes.as_array().expect("volumes").iter().any(|v| {
            v["persistentVolumeClaim"]["claimName"] == "chat-mysql-backups"
                && v["persistentVolumeClaim"]["readOnly"] == true
        }),
        "the backups are read, never written, by a restore: {volumes}"
    );
    let restore = name_of(&restore);
    assert_eq!(
        first.waiting_for,
        [format!("the restore of mysql.restoreFrom (Job {restore})")]
    );

    inputs.completed_jobs.insert(restore.clone());
    let restored = plan(&cs, &inputs);
    let migration = name_of(&job_named(&restored.children, "chat-migrate-").expect("migration"));
    assert!(job_named(&restored.children, "chat-reindex-").is_none());
    assert!(of_kind(&restored.children, ChildKind::Deployment).is_empty());

    inputs.completed_jobs.insert(migration);
    let migrated = plan(&cs, &inputs);
    assert_eq!(of_kind(&migrated.children, ChildKind::Deployment).len(), 2);
    let reindex = job_named(&migrated.children, "chat-reindex-").expect("a reindex Job");
    assert_eq!(container(&reindex, "reindex")["args"][0], "reindex");
    assert!(
        job_named(&migrated.children, "chat-restore-").is_some(),
        "the restore Job stays while the spec names it"
    );
}

#[test]
fn a_failed_restore_starts_nothing_and_says_why() {
    let cs = restoring(from_claim());
    let mut inputs = fresh_inputs(&cs);
    let restore =
        name_of(&job_named(&plan(&cs, &inputs).children, "chat-restore-").expect("restore"));
    inputs.failed_jobs.insert(
        restore.clone(),
        "BackoffLimitExceeded: Job has reached the specified backoff limit".to_string(),
    );
    let failed = plan(&cs, &inputs);
    assert!(job_named(&failed.children, "chat-migrate-").is_none());
    assert!(of_kind(&failed.children, ChildKind::Deployment).is_empty());
    assert_eq!(
        failed.refused,
        [format!(
            "Job {restore}: the restore of mysql.restoreFrom failed (BackoffLimitExceeded: Job has reached the specified backoff limit; kubectl logs job/{restore}); nothing else starts until it succeeds"
        )]
    );
}

#[test]
fn a_system_that_already_runs_is_never_restored_over() {
    let cs = restoring(from_claim());
    let mut inputs = fresh_inputs(&cs);
    inputs.deployments.insert(
        "api",
        manifests::ExistingDeployment {
            replicas: 2,
            replicas_applied_by_operator: true,
        },
    );
    let built = plan(&cs, &inputs);
    assert!(job_named(&built.children, "chat-restore-").is_none());
    assert!(job_named(&built.children, "chat-migrate-").is_some());
}

#[test]
fn a_restore_from_a_bucket_downloads_first_with_the_named_credentials() {
    let cs = restoring(RestoreSpec {
        backup: "chat-mysql-backup-29412345".to_string(),
        claim_name: None,
        s3: Some(bucket()),
    });
    let restore =
        job_named(&plan(&cs, &fresh_inputs(&cs)).children, "chat-restore-").expect("a restore Job");
    let pod = &restore["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "download");
    assert_eq!(pod["containers"][0]["name"], "restore");
    let download = container(&restore, "download");
    assert_eq!(
        secret_ref(env(download, "AWS_ACCESS_KEY_ID")),
        ("backup-bucket", "access-key-id")
    );
    assert_eq!(
        env(download, "BACKUP_NAME")["value"],
        "chat-mysql-backup-29412345"
    );
}

fn at(timestamp: &str) -> Timestamp {
    timestamp.parse().expect("a timestamp")
}

fn backup_at(timestamp: &str) -> BackupRecord {
    BackupRecord {
        name: "chat-mysql-backup-29412345".to_string(),
        time: Time(at(timestamp)),
    }
}

#[test]
fn a_backup_older_than_twice_the_schedules_interval_is_overdue() {
    let cs = with_backups(on_claim());
    let now = at("2026-12-05T12:00:00Z");

    let recent = Backups::of(&cs, Some(backup_at("2026-12-04T03:05:00Z")), None, now);
    assert_eq!(recent.overdue, None, "{recent:?}");
    assert_eq!(recent.last, Some(backup_at("2026-12-04T03:05:00Z")));

    let old = Backups::of(&cs, Some(backup_at("2026-12-03T03:05:00Z")), None, now);
    assert_eq!(
        old.overdue.as_deref(),
        Some(
            "the newest MySQL backup, chat-mysql-backup-29412345, completed 56h 55m ago: over twice the schedule's interval (24h); kubectl get jobs -l app.kubernetes.io/component=mysql-backup"
        )
    );

    let since = Time(at("2026-12-02T00:00:00Z"));
    let never = Backups::of(&cs, None, Some(&since), now);
    assert!(
        never
            .overdue
            .as_deref()
            .is_some_and(|reason| reason.starts_with("no MySQL backup has completed in the 84h")),
        "{never:?}"
    );
    let just_scheduled = Time(now - SignedDuration::from_hours(1));
    assert_eq!(
        Backups::of(&cs, None, Some(&just_scheduled), now).overdue,
        None
    );

    let observed = status::observed(&cs, &[], &[], &[], &[], old, now);
    let degraded = observed
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "BackupOverdue")
    );
    assert_eq!(
        observed.last_backup,
        Some(backup_at("2026-12-03T03:05:00Z")),
        "the status names the newest backup"
    );
}

#[test]
fn weekday_backups_are_not_overdue_over_a_weekend() {
    let mut cs = with_backups(on_claim());
    cs.spec.mysql.backup.as_mut().expect("backups").schedule = "0 3 * * 1-5".to_string();
    // Friday's backup, read on Monday at noon: the longest interval is three days.
    let monday = at("2026-12-07T12:00:00Z");
    let backups = Backups::of(&cs, Some(backup_at("2026-12-04T03:05:00Z")), None, monday);
    assert_eq!(backups.overdue, None);
}

#[tokio::test]
async fn the_status_names_the_newest_backup_the_cron_jobs_runs_completed() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = common::apiserver::ApiServer::new();
    let mut object = serde_json::to_value(with_backups(on_claim())).expect("serialises");
    object["metadata"] = serde_json::json!({ "name": "chat", "namespace": "team" });
    server.create(
        "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems",
        object,
    );
    let _ = common::reconcile(&server, "chat").await;
    server.complete_jobs("team");
    common::reconcile(&server, "chat")
        .await
        .expect("reconciled");
    let claim = server
        .get(
            "/api/v1/namespaces/team/persistentvolumeclaims",
            "chat-mysql-backups",
        )
        .expect("the backups' claim is created");
    assert!(claim["metadata"].get("ownerReferences").is_none());
    let cron_jobs = "/apis/batch/v1/namespaces/team/cronjobs";
    assert!(server.get(cron_jobs, "chat-mysql-backup").is_some());

    server.run_cron_job(
        "team",
        "chat-mysql-backup",
        29_412_100,
        "2026-12-04T03:02:00Z",
    );
    let newest = server.run_cron_job(
        "team",
        "chat-mysql-backup",
        29_413_540,
        "2026-12-05T03:04:00Z",
    );
    common::reconcile(&server, "chat")
        .await
        .expect("reconciled");
    let status = server
        .get(
            "/apis/chatsys.io/v1alpha1/namespaces/team/chatsystems",
            "chat",
        )
        .expect("stored")["status"]
        .clone();
    assert_eq!(
        status["lastBackup"],
        serde_json::json!({ "name": newest, "time": "2026-12-05T03:04:00Z" })
    );
    assert!(
        server
            .get("/apis/batch/v1/namespaces/team/jobs", &newest)
            .is_some(),
        "the CronJob's Jobs are its, never deleted as the system's orphans"
    );
    // What the ChatsysBackupOverdue alert reads: the newest backup's time, and twice a day.
    let exposition = handle.render();
    let of_system = r#"{chatsystem_namespace="team",chatsystem="chat"}"#;
    let completed = "2026-12-05T03:04:00Z".parse::<Timestamp>().expect("a time");
    for series in [
        format!(
            "chatsys_operator_mysql_backup_last_timestamp_seconds{of_system} {}",
            completed.as_second()
        ),
        format!("chatsys_operator_mysql_backup_max_age_seconds{of_system} 172800"),
    ] {
        assert!(exposition.contains(&series), "{series} in\n{exposition}");
    }
}

/// The components a backing service's NetworkPolicy lets in.
fn admitted(built: &[Child], service: &str) -> Vec<String> {
    let policy = find(built, ChildKind::NetworkPolicy, &format!("chat-{service}"));
    policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
        .as_array()
        .expect("components")
        .iter()
        .map(|v| v.as_str().expect("a name").to_string())
        .collect()
}

#[test]
fn the_backup_restore_and_reindex_pods_may_reach_the_databases_they_read() {
    let mut cs = with_backups(on_claim());
    cs.spec.mysql.restore_from = Some(from_claim());
    let built = children(&cs, &fresh_inputs(&cs));
    let mysql = admitted(&built, "mysql");
    for component in ["mysql-backup", "mysql-restore", "reindex"] {
        assert!(
            mysql.contains(&component.to_string()),
            "{component}: {mysql:?}"
        );
    }
    assert!(admitted(&built, "opensearch").contains(&"reindex".to_string()));
    for (kind, prefix) in [
        (ChildKind::CronJob, "chat-mysql-backup"),
        (ChildKind::Job, "chat-restore-"),
        (ChildKind::Job, "chat-reindex-"),
    ] {
        let object = of_kind(&built, kind)
            .into_iter()
            .find(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .expect("built");
        let template = match kind {
            ChildKind::CronJob => &object["spec"]["jobTemplate"]["spec"]["template"],
            _ => &object["spec"]["template"],
        };
        let component = &template["metadata"]["labels"]["app.kubernetes.io/component"];
        assert!(
            mysql.iter().any(|c| c == component),
            "{prefix}'s pods are labelled {component}, which the policy admits"
        );
    }
}
