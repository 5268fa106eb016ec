//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run with one reconciling.

use crate::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::Mutex;
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

/// Timing as client-go's leader election has it (staging/src/k8s.io/client-go/tools/leaderelection/
/// leaderelection.go, with kube-controller-manager's 15 s / 10 s / 2 s from
/// staging/src/k8s.io/component-base/config/v1alpha1/defaults.go): a candidate judges a lease
/// expired by its own monotonic clock, a full lease duration after it last saw the record change
/// (never by comparing the holder's `renewTime` with its own wall clock, which a skew between nodes
/// would falsify), and a holder stops once the renew deadline, well inside the lease duration, has
/// passed without a renewal.
pub struct LeaderElection {
    leases: Api<Lease>,
    holder: String,
    /// Another holder's record as last seen, and when (by this process's monotonic clock).
    observed: Mutex<Option<(LeaseSpec, Instant)>>,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, holder: String) -> Self {
        LeaderElection {
            leases: Api::namespaced(client, namespace),
            holder,
            observed: Mutex::new(None),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            if self.try_within(CALL_DEADLINE).await? {
                info!(holder = %self.holder, "acquired the leader lease");
                return Ok(());
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews the lease until it is lost; returns only with the reason it was lost. A failed renewal is
    /// retried until the renew deadline, so one dropped request does not cost the leadership; the
    /// deadline is a hard one (every call is cut off at it), so the holder stops `LEASE_DURATION -
    /// RENEW_DEADLINE` (5 s) before any candidate may take over.
    pub async fn keep(&self) -> Error {
        let mut renewed = Instant::now();
        let mut last_error = None;
        loop {
            let deadline = renewed + RENEW_DEADLINE;
            tokio::time::sleep_until((Instant::now() + RETRY_PERIOD).min(deadline)).await;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = last_error.map_or_else(String::new, |e: Error| format!(": {e}"));
                return Error::LostLease(format!(
                    "no renewal within the {RENEW_DEADLINE:?} renew deadline{why}"
                ));
            }
            match self.try_within(CALL_DEADLINE.min(left)).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return Error::LostLease("another replica".to_string()),
                Err(error) => {
                    warn!(%error, "renewing the leader lease failed; retrying");
                    last_error = Some(error);
                }
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

    async fn try_within(&self, deadline: Duration) -> Result<bool> {
        tokio::time::timeout(deadline, self.try_acquire_or_renew())
            .await
            .unwrap_or(Err(Error::LeaseCallTimedOut(deadline)))
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
        if !ours && !free && !self.expired(&current) {
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

impl LeaderElection {
    /// Whether another holder's lease has run out: a full lease duration has passed on this
    /// process's clock since its record last changed (client-go's `observedTime`).
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let now = Instant::now();
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let seen_at = match observed.as_ref() {
            Some((seen, at)) if seen == spec => *at,
            _ => {
                *observed = Some((spec.clone(), now));
                now
            }
        };
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECS)).unwrap_or(0),
        );
        now >= seen_at + duration
    }
}
