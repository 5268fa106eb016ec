//! MySQL's own backups when the operator runs MySQL: a CronJob that writes checksummed logical dumps to
//! a volume claim that outlives the ChatSystem, or to a bucket; and the restore a new ChatSystem starts
//! from, which runs before its schema migration.

use super::backing::{BackingService, MYSQL_DATABASE};
use super::{
    Inputs, Plan, SecretReference, child_name, claim_spec, container_security_context, labels,
    metadata, pod_security_context, secret_env, stable_labels, value_env, with_pull_secrets,
};
use crate::crd::{BackupTarget, ChatSystem, MysqlProvider, RestoreSpec, S3Bucket};
use crate::kinds::Child;
use croner::Cron;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp, Zoned};
use std::str::FromStr;

/// The scripts the Jobs run, as files so that a test runs exactly these against a real database.
const BACKUP_SCRIPT: &str = include_str!("../../scripts/mysql-backup.sh");
const RESTORE_SCRIPT: &str = include_str!("../../scripts/mysql-restore.sh");
const UPLOAD_SCRIPT: &str = include_str!("../../scripts/backup-s3-upload.sh");
const DOWNLOAD_SCRIPT: &str = include_str!("../../scripts/backup-s3-download.sh");

/// The AWS CLI's image, which moves dumps to and from a bucket (the MySQL image has no S3 client).
pub const AWS_CLI_IMAGE: &str = "amazon/aws-cli:2.22.35";

/// Where the dumps are, in every container of a backup or restore pod.
const BACKUP_DIR: &str = "/backups";
/// The MySQL image's user (its Dockerfile creates `mysql` with uid 999), which owns the dumps.
const MYSQL_UID: i64 = 999;
/// Tries of one backup before its Job fails; the next schedule tries again.
const BACKUP_RETRIES: i32 = 2;
/// A dump that runs longer than this is stopped: a stuck one must not block the schedule
/// (`concurrencyPolicy: Forbid` skips runs while one is active).
const BACKUP_DEADLINE_SECS: i64 = 6 * 3600;
/// Tries of the restore: MySQL may still be starting on its new volume when the first one runs.
const RESTORE_RETRIES: i32 = 6;
const RESTORE_DEADLINE_SECS: i64 = 6 * 3600;
/// The pod label the Job controller sets to its Job's name (kubernetes
/// `staging/src/k8s.io/api/batch/v1/types.go`, `JobNameLabel`; since 1.27). A CronJob names its Jobs
/// `<cronjob>-<scheduled time in minutes since the epoch>` (kubernetes
/// `pkg/controller/cronjob/utils.go`, `getJobName`): the backup is named after its Job, so the
/// status can say which backup a successful Job wrote.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// The component label of the backup CronJob and of the Jobs it starts.
pub const BACKUP_COMPONENT: &str = "mysql-backup";
/// The component label of the restore Job.
pub const RESTORE_COMPONENT: &str = "mysql-restore";

pub fn cron_job_name(cs: &ChatSystem) -> String {
    child_name(cs, BACKUP_COMPONENT)
}

/// The claim that holds this system's backups; a restore reads it unless `restoreFrom` names another.
pub fn backup_claim_name(cs: &ChatSystem) -> String {
    child_name(cs, "mysql-backups")
}

/// Whether the operator itself backs up and restores MySQL (mariadb-operator does its own).
fn builtin(cs: &ChatSystem) -> bool {
    cs.spec.mysql.external.is_none() && cs.spec.mysql.provider == MysqlProvider::Builtin
}

/// The bucket credentials the spec names, for backups and for the restore.
pub fn bucket_secrets(cs: &ChatSystem) -> Vec<SecretReference<'_>> {
    let mysql = &cs.spec.mysql;
    let backups = mysql.backup.as_ref().and_then(|b| b.target.s3.as_ref());
    let restore = mysql.restore_from.as_ref().and_then(|r| r.s3.as_ref());
    backups
        .into_iter()
        .chain(restore)
        .flat_map(|bucket| {
            ["access-key-id", "secret-access-key"].map(|key| SecretReference {
                component: BACKUP_COMPONENT,
                name: &bucket.credentials_secret,
                key,
            })
        })
        .collect()
}

/// The longest time between two runs of a schedule (the interval of `0 3 * * *` is a day; of
/// `0 3 * * 1-5`, the three days over a weekend): a backup older than twice it is overdue. Read from
/// the next runs, as the CronJob controller reads the schedule, in UTC.
pub fn longest_interval(schedule: &str) -> Result<SignedDuration, String> {
    let cron =
        Cron::from_str(schedule).map_err(|e| format!("{schedule:?} is not a schedule: {e}"))?;
    let start = Timestamp::now().to_zoned(TimeZone::UTC);
    let runs: Vec<Zoned> = cron.iter_after(start).take(INTERVALS_READ + 1).collect();
    runs.windows(2)
        .map(|pair| pair[0].duration_until(&pair[1]))
        .max()
        .ok_or_else(|| format!("{schedule:?} never runs"))
}

/// Runs of a schedule read for its longest interval: more than a month of weekdays, or a year of
/// monthly runs.
const INTERVALS_READ: usize = 24;

/// The backup claim and CronJob, when the spec asks for backups. With mariadb-operator its `Backup`
/// replaces the CronJob (see `delegated`), and writes to the same claim.
pub fn build(cs: &ChatSystem, plan: &mut Plan) {
    let Some(backup) = cs.spec.mysql.backup.as_ref() else {
        return;
    };
    if cs.spec.mysql.external.is_some() {
        return;
    }
    if backup.target.volume_claim.is_some() {
        plan.children
            .push(Child::PersistentVolumeClaim(backup_claim(
                cs,
                &backup.target,
            )));
    }
    if builtin(cs) {
        plan.children.push(Child::CronJob(cron_job(cs)));
    }
}

/// How far the restore a new system starts from has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restore {
    /// No restore: nothing was asked, or the system ran before it was (data is never restored over).
    None,
    /// The restore Job has not succeeded yet: the schema migration waits for it.
    Running {
        job: String,
    },
    Failed {
        job: String,
        reason: String,
    },
    /// Restored: the search index is rebuilt from the restored store.
    Done {
        job: String,
    },
}

/// The restore Job while it is needed: from the start of a new system (no API Deployment yet) until
/// the spec stops asking for it. Its outcome says whether the schema may be migrated.
pub fn restore(cs: &ChatSystem, inputs: &Inputs, plan: &mut Plan) -> Restore {
    let Some(from) = cs.spec.mysql.restore_from.as_ref().filter(|_| builtin(cs)) else {
        return Restore::None;
    };
    let job = restore_job(cs, from);
    let name = job.metadata.name.clone().unwrap_or_default();
    let began = inputs.completed_jobs.contains(&name)
        || inputs.failed_jobs.contains_key(&name)
        || inputs.running_jobs.contains(&name);
    if !began && inputs.deployments.contains_key("api") {
        return Restore::None;
    }
    plan.children.push(Child::Job(job));
    if inputs.completed_jobs.contains(&name) {
        Restore::Done { job: name }
    } else if let Some(reason) = inputs.failed_jobs.get(&name) {
        Restore::Failed {
            job: name,
            reason: reason.clone(),
        }
    } else {
        Restore::Running { job: name }
    }
}

/// The backups' claim: not owned by the ChatSystem, so that deleting it leaves the backups to start
/// a new one from.
fn backup_claim(cs: &ChatSystem, target: &BackupTarget) -> PersistentVolumeClaim {
    let claim = target.volume_claim.as_ref().expect("a volume claim target");
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            owner_references: None,
            ..metadata(cs, &backup_claim_name(cs), BACKUP_COMPONENT)
        },
        spec: Some(claim_spec(&claim.size, claim.storage_class_name.clone())),
        ..PersistentVolumeClaim::default()
    }
}

fn cron_job(cs: &ChatSystem) -> CronJob {
    let backup = cs.spec.mysql.backup.as_ref().expect("backups asked for");
    let backup_env = [
        EnvVar {
            name: "BACKUP_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.labels['{JOB_NAME_LABEL}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        value_env("BACKUP_KEEP", &backup.keep.to_string()),
    ];
    let dump = mysql_step(cs, "dump", BACKUP_SCRIPT, &backup_env);
    let (init_containers, containers) = match &backup.target.s3 {
        None => (Vec::new(), vec![dump]),
        // The dump goes to the pod's own volume first, then to the bucket.
        Some(bucket) => (
            vec![dump],
            vec![bucket_step("upload", UPLOAD_SCRIPT, bucket, &backup_env)],
        ),
    };
    let volume = match &backup.target.s3 {
        None => claim_volume(backup_claim_name(cs), false),
        Some(_) => pod_volume(),
    };
    CronJob {
        metadata: metadata(cs, &cron_job_name(cs), BACKUP_COMPONENT),
        spec: CronJobSpec {
            schedule: backup.schedule.clone(),
            time_zone: Some("Etc/UTC".to_string()),
            // A backup still running when the next is due: the next is skipped, not run beside it.
            concurrency_policy: Some("Forbid".to_string()),
            // A run missed by more than an hour (the cluster or its controller down) waits for the
            // next one rather than starting late at an unexpected time.
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                // The Jobs carry the system's labels, so the operator sees them and reports the last.
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cs, BACKUP_COMPONENT)),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(BACKUP_RETRIES),
                    active_deadline_seconds: Some(BACKUP_DEADLINE_SECS),
                    template: pod_template(
                        cs,
                        BACKUP_COMPONENT,
                        init_containers,
                        containers,
                        volume,
                    ),
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        },
        ..CronJob::default()
    }
}

/// Loads the backup named into the new system's empty database, before its schema is migrated (a
/// backup of an older release is then migrated like any older schema). Named after what it restores,
/// since a Job's template cannot change.
fn restore_job(cs: &ChatSystem, from: &RestoreSpec) -> Job {
    let backup_env = [value_env("BACKUP_NAME", &from.backup)];
    let load = mysql_step(cs, "restore", RESTORE_SCRIPT, &backup_env);
    let (init_containers, volume) = match &from.s3 {
        None => (
            Vec::new(),
            claim_volume(
                from.claim_name
                    .clone()
                    .unwrap_or_else(|| backup_claim_name(cs)),
                true,
            ),
        ),
        Some(bucket) => (
            vec![bucket_step(
                "download",
                DOWNLOAD_SCRIPT,
                bucket,
                &backup_env,
            )],
            pod_volume(),
        ),
    };
    let name = child_name(cs, &format!("restore-{}", &super::config_hash(from)[..8]));
    Job {
        metadata: metadata(cs, &name, RESTORE_COMPONENT),
        spec: Some(JobSpec {
            backoff_limit: Some(RESTORE_RETRIES),
            active_deadline_seconds: Some(RESTORE_DEADLINE_SECS),
            template: pod_template(cs, RESTORE_COMPONENT, init_containers, vec![load], volume),
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Root's connection to the operator's MySQL: a logical dump of routines and events, and a load of
/// one, need more than the application's user may do.
fn mysql_env(cs: &ChatSystem) -> Vec<EnvVar> {
    let mysql = BackingService::Mysql;
    vec![
        value_env("MYSQL_HOST", &mysql.workload_name(cs)),
        value_env("MYSQL_PORT", &mysql.port().to_string()),
        value_env("MYSQL_USER", "root"),
        secret_env("MYSQL_PWD", &mysql.credentials_secret(cs), "root-password"),
        value_env("MYSQL_DATABASE", MYSQL_DATABASE),
    ]
}

/// The bucket's address and the AWS CLI's credentials, from the Secret the spec names.
fn bucket_env(bucket: &S3Bucket) -> Vec<EnvVar> {
    let secret = &bucket.credentials_secret;
    vec![
        value_env("S3_ENDPOINT", &bucket.endpoint),
        value_env("S3_BUCKET", &bucket.bucket),
        value_env("S3_PREFIX", &bucket.prefix),
        // The AWS CLI needs a region even for stores that have none.
        value_env(
            "AWS_DEFAULT_REGION",
            bucket.region.as_deref().unwrap_or("us-east-1"),
        ),
        secret_env("AWS_ACCESS_KEY_ID", secret, "access-key-id"),
        secret_env("AWS_SECRET_ACCESS_KEY", secret, "secret-access-key"),
        // Its caches and config go under HOME; the root file system is read-only.
        value_env("HOME", SCRATCH_DIR),
    ]
}

/// A step in the MySQL image, which has mysqldump, mysql, gzip and sha256sum.
fn mysql_step(cs: &ChatSystem, name: &str, script: &str, env: &[EnvVar]) -> Container {
    let env = mysql_env(cs)
        .into_iter()
        .chain(env.iter().cloned())
        .collect();
    step(name, &cs.spec.mysql.image, script, env)
}

fn bucket_step(name: &str, script: &str, bucket: &S3Bucket, env: &[EnvVar]) -> Container {
    let env = bucket_env(bucket)
        .into_iter()
        .chain(env.iter().cloned())
        .collect();
    step(name, AWS_CLI_IMAGE, script, env)
}

/// Writable space for the tools' temporary files, the root file system being read-only.
const SCRATCH_DIR: &str = "/tmp";

/// One script of a backup or restore pod, with the backups at [`BACKUP_DIR`].
fn step(name: &str, image: &str, script: &str, mut env: Vec<EnvVar>) -> Container {
    env.push(value_env("BACKUP_DIR", BACKUP_DIR));
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec!["sh".to_string(), "-c".to_string(), script.to_string()]),
        env: Some(env),
        resources: Some(step_resources()),
        security_context: Some(container_security_context(true)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "backups".to_string(),
                mount_path: BACKUP_DIR.to_string(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "scratch".to_string(),
                mount_path: SCRATCH_DIR.to_string(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

/// mysqldump streams rows and gzip a block at a time: little memory whatever the database's size.
fn step_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), Quantity(value.to_string())))
            .collect()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
        limits: Some(quantities(&[("memory", "512Mi")])),
        ..ResourceRequirements::default()
    }
}

fn claim_volume(claim_name: String, read_only: bool) -> Volume {
    Volume {
        name: "backups".to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name,
            read_only: Some(read_only),
        }),
        ..Volume::default()
    }
}

/// The pod's own volume, where a dump waits on its way to or from a bucket.
fn pod_volume() -> Volume {
    Volume {
        name: "backups".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn pod_template(
    cs: &ChatSystem,
    component: &str,
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    backups: Volume,
) -> PodTemplateSpec {
    let scratch = Volume {
        name: "scratch".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(stable_labels(cs, component)),
            ..ObjectMeta::default()
        }),
        spec: Some(with_pull_secrets(
            cs,
            PodSpec {
                security_context: Some(pod_security_context(MYSQL_UID)),
                restart_policy: Some("OnFailure".to_string()),
                init_containers: (!init_containers.is_empty()).then_some(init_containers),
                containers,
                volumes: Some(vec![backups, scratch]),
                ..PodSpec::default()
            },
        )),
    }
}
