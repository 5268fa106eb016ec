//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run with one reconciling.

use crate::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

pub const LEASE_NAME: &str = "chatsys-operator";
/// A holder that has not renewed for this long has lost the lease.
const LEASE_DURATION_SECS: i32 = 15;
/// How often the holder renews and a candidate retries.
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A holder that could not renew for this long stops: another replica may take over soon after.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Each call to the API server ends within this, answered or not: a hung renewal must fail in time
/// for the holder to stop before its lease runs out, or two replicas would reconcile at once.
pub const CALL_DEADLINE: Duration = Duration::from_secs(3);

pub struct LeaderElection {
    leases: Api<Lease>,
    holder: String,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, holder: String) -> Self {
        LeaderElection {
            leases: Api::namespaced(client, namespace),
            holder,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            if self.try_within_deadline().await? {
                info!(holder = %self.holder, "acquired the leader lease");
                return Ok(());
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews the lease until it is lost; returns only with the reason it was lost. A failed renewal is
    /// retried until the renew deadline, so one dropped request does not cost the leadership.
    pub async fn keep(&self) -> Error {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            match self.try_within_deadline().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return Error::LostLease("another replica".to_string()),
                Err(error) if renewed.elapsed() >= RENEW_DEADLINE => return error,
                Err(error) => warn!(%error, "renewing the leader lease failed; retrying"),
            }
        }
    }

    /// Gives the lease up on a clean shutdown, so a standby takes over at once rather than after
    /// the lease expires.
    pub async fn release(&self) -> Result<()> {
        let Some(lease) = self.leases.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let current = lease.spec.clone().unwrap_or_default();
        if current.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        let released = Lease {
            metadata: lease.metadata,
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..current
            }),
        };
        match self
            .leases
            .replace(LEASE_NAME, &PostParams::default(), &released)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn try_within_deadline(&self) -> Result<bool> {
        tokio::time::timeout(CALL_DEADLINE, self.try_acquire_or_renew())
            .await
            .unwrap_or(Err(Error::LeaseCallTimedOut(CALL_DEADLINE)))
    }

    /// Takes the lease if it is free, expired or already ours; `false` when another replica holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(lease) = self.leases.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error.into()),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.holder.as_str());
        let free = current.holder_identity.as_deref().is_none_or(str::is_empty);
        if !ours && !free && !expired(&current, now) {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0);
        let spec = if ours {
            let acquired = current.acquire_time.map(|t| t.0).unwrap_or(now);
            self.spec(acquired, now, transitions)
        } else {
            self.spec(now, now, transitions + 1)
        };
        let renewed = Lease {
            metadata: lease.metadata,
            spec: Some(spec),
        };
        // The resourceVersion in the metadata makes this a compare-and-swap: two candidates cannot both win.
        match self
            .leases
            .replace(LEASE_NAME, &PostParams::default(), &renewed)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECS),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(
        spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECS),
    ));
    renewed
        .0
        .checked_add(duration)
        .map(|deadline| deadline < now)
        .unwrap_or(true)
}
