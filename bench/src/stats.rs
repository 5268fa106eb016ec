//! Latency and rate summaries.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len(),
            p50_ms: millis(percentile(&samples, 0.50)),
            p99_ms: millis(percentile(&samples, 0.99)),
            p999_ms: millis(percentile(&samples, 0.999)),
            max_ms: millis(samples.last().copied().unwrap_or_default()),
        }
    }
}

/// Nearest-rank percentile of sorted samples; zero when there are none.
pub fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Operations completed in a measured interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rate {
    pub operations: u64,
    pub seconds: f64,
    pub per_second: f64,
}

impl Rate {
    pub fn new(operations: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        let per_second = if seconds > 0.0 {
            operations as f64 / seconds
        } else {
            0.0
        };
        Self {
            operations,
            seconds,
            per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let summary = LatencySummary::of(samples);
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.p50_ms, 500.0);
        assert_eq!(summary.p99_ms, 990.0);
        assert_eq!(summary.p999_ms, 999.0);
        assert_eq!(summary.max_ms, 1000.0);
    }

    #[test]
    fn a_single_slow_request_shows_in_the_tail_of_a_small_sample() {
        let summary = LatencySummary::of(ms(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 400]));
        assert_eq!(summary.p50_ms, 1.0);
        assert_eq!(summary.p99_ms, 400.0);
    }

    #[test]
    fn no_samples_summarise_to_zero() {
        assert_eq!(LatencySummary::of(Vec::new()), LatencySummary::default());
        assert_eq!(Rate::new(5, Duration::ZERO).per_second, 0.0);
    }
}
