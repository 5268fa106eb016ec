//! Per-application write quotas, kept by each API process: a generic cell rate algorithm, so a tenant
//! may write at a steady rate with a burst of one second's worth, and a write past it is refused with
//! the time until it would fit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::AppId;
use crate::error::{CoreError, CoreResult};

/// A message body counts as one write per started this many bytes, so a quota bounds bytes as well.
pub const BYTES_PER_WRITE: usize = 16 * 1024;

/// Applications tracked before those whose quota is whole again are forgotten.
const TRACKED: usize = 10_000;

pub struct WriteQuota {
    /// The time one write takes of the quota.
    interval: Duration,
    /// How far ahead of now an application's quota may be spent.
    burst: Duration,
    /// When each application's quota is whole again.
    whole_at: Mutex<HashMap<AppId, Instant>>,
}

impl WriteQuota {
    /// `writes_per_second` writes a second for each application; `None` for 0 (no quota).
    pub fn new(writes_per_second: f64) -> Option<Self> {
        (writes_per_second > 0.0).then(|| {
            let interval = Duration::from_secs_f64(1.0 / writes_per_second);
            WriteQuota {
                interval,
                burst: Duration::from_secs(1).max(interval),
                whole_at: Mutex::new(HashMap::new()),
            }
        })
    }

    /// The writes a message of this body costs.
    pub fn writes_of(body: &str) -> u32 {
        u32::try_from(body.len().div_ceil(BYTES_PER_WRITE).max(1)).unwrap_or(u32::MAX)
    }

    /// Spends `writes` of the application's quota, or says when they would fit.
    pub fn spend(&self, app: AppId, writes: u32) -> CoreResult<()> {
        self.spend_at(app, writes, Instant::now())
    }

    fn spend_at(&self, app: AppId, writes: u32, now: Instant) -> CoreResult<()> {
        let mut whole_at = self.whole_at.lock().unwrap_or_else(|e| e.into_inner());
        if whole_at.len() >= TRACKED {
            whole_at.retain(|_, at| *at > now);
        }
        let from = whole_at.get(&app).copied().unwrap_or(now).max(now);
        let spent = from + self.interval * writes;
        let ahead = spent - now;
        if ahead > self.burst {
            return Err(CoreError::TooMany {
                what: "writes of this application",
                retry_after: ahead - self.burst,
            });
        }
        whole_at.insert(app, spent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_steady_rate() {
        let quota = WriteQuota::new(10.0).unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            quota.spend_at(1, 1, start).unwrap();
        }
        let refused = quota.spend_at(1, 1, start).unwrap_err();
        let CoreError::TooMany { retry_after, .. } = refused else {
            panic!("{refused}")
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // Another application has its own quota.
        quota.spend_at(2, 1, start).unwrap();
        // A tenth of a second later one more write fits, and only one.
        let later = start + Duration::from_millis(100);
        quota.spend_at(1, 1, later).unwrap();
        assert!(quota.spend_at(1, 1, later).is_err());
    }

    #[test]
    fn large_bodies_cost_more_writes() {
        assert_eq!(WriteQuota::writes_of("x"), 1);
        assert_eq!(WriteQuota::writes_of(&"x".repeat(BYTES_PER_WRITE)), 1);
        assert_eq!(WriteQuota::writes_of(&"x".repeat(64 * 1024)), 4);
        let quota = WriteQuota::new(8.0).unwrap();
        let now = Instant::now();
        quota.spend_at(1, 4, now).unwrap();
        quota.spend_at(1, 4, now).unwrap();
        assert!(quota.spend_at(1, 1, now).is_err());
    }

    #[test]
    fn no_quota_at_zero() {
        assert!(WriteQuota::new(0.0).is_none());
    }
}
