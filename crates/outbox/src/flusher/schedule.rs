//! Retry delays. The exponential envelope comes from `backon` (the maintained successor of
//! the unmaintained `backoff` crate, RUSTSEC-2025-0012); the jitter is applied here as *full*
//! jitter — a uniform draw from `[0, envelope]` with an injectable RNG — because backon's own
//! jitter adds up to one more envelope on top, which would exceed the configured maximum.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::OutboxConfig;

/// One route's retry state: a fast schedule for transient failures and a slow one for
/// refused credentials or a misconfigured sink.
#[derive(Debug)]
pub(crate) struct RetrySchedule {
    transient_builder: ExponentialBuilder,
    slow_builder: ExponentialBuilder,
    transient: ExponentialBackoff,
    slow: ExponentialBackoff,
    transient_max: Duration,
    slow_max: Duration,
    retry_after_max: Duration,
}

impl RetrySchedule {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let transient_builder = ExponentialBuilder::default()
            .with_min_delay(config.retry_initial_interval)
            .with_max_delay(config.retry_max_interval)
            .with_factor(2.0)
            .without_max_times();
        let slow_builder = ExponentialBuilder::default()
            .with_min_delay(config.auth_retry_initial_interval)
            .with_max_delay(config.auth_retry_max_interval)
            .with_factor(2.0)
            .without_max_times();
        Self {
            transient: transient_builder.build(),
            slow: slow_builder.build(),
            transient_builder,
            slow_builder,
            transient_max: config.retry_max_interval,
            slow_max: config.auth_retry_max_interval,
            retry_after_max: config.retry_after_max,
        }
    }

    /// The delay after a transient failure: the receiver's `Retry-After` when it gave one
    /// (cut to `MSG_RETRY_AFTER_MAX_MS`), else a full-jitter draw from the next envelope.
    pub(crate) fn transient_delay(
        &mut self,
        retry_after: Option<Duration>,
        rng: &mut StdRng,
    ) -> Duration {
        let envelope = self.transient.next().unwrap_or(self.transient_max);
        match retry_after {
            Some(after) => after.min(self.retry_after_max),
            None => full_jitter(envelope, rng),
        }
    }

    /// The delay after refused credentials or a misconfiguration: the slow envelope, with
    /// jitter only in its upper half so a rotated token is picked up neither too late nor by
    /// every node at once.
    pub(crate) fn slow_delay(&mut self, rng: &mut StdRng) -> Duration {
        let envelope = self.slow.next().unwrap_or(self.slow_max);
        let half = envelope / 2;
        half + full_jitter(envelope - half, rng)
    }

    /// After a success: the next failure starts from the initial delay again.
    pub(crate) fn reset(&mut self) {
        self.transient = self.transient_builder.build();
        self.slow = self.slow_builder.build();
    }
}

/// A uniform draw from `[0, envelope]`, at millisecond resolution.
fn full_jitter(envelope: Duration, rng: &mut StdRng) -> Duration {
    let ms = u64::try_from(envelope.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ms))
}

/// A generator seeded from `seed`, or from the OS when none is given.
pub(crate) fn rng(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_delays_stay_within_the_doubling_envelope_and_cap() {
        let config = OutboxConfig::default();
        let mut s = RetrySchedule::new(&config);
        let mut r = rng(Some(7));
        let mut envelope = Duration::from_secs(1);
        let mut saw_spread = false;
        for _ in 0..40 {
            let d = s.transient_delay(None, &mut r);
            assert!(d <= envelope, "{d:?} > {envelope:?}");
            saw_spread |= d < envelope / 2;
            envelope = (envelope * 2).min(Duration::from_secs(30));
        }
        assert!(saw_spread, "full jitter should sometimes draw low");
        s.reset();
        assert!(s.transient_delay(None, &mut r) <= Duration::from_secs(1));
    }

    #[test]
    fn retry_after_takes_precedence_and_is_capped() {
        let config = OutboxConfig::default();
        let mut s = RetrySchedule::new(&config);
        let mut r = rng(Some(1));
        assert_eq!(
            s.transient_delay(Some(Duration::from_secs(7)), &mut r),
            Duration::from_secs(7)
        );
        assert_eq!(
            s.transient_delay(Some(Duration::from_secs(86_400)), &mut r),
            config.retry_after_max
        );
    }

    #[test]
    fn slow_delays_start_at_a_minute_and_stay_under_five() {
        let config = OutboxConfig::default();
        let mut s = RetrySchedule::new(&config);
        let mut r = rng(Some(3));
        let first = s.slow_delay(&mut r);
        assert!(first >= Duration::from_secs(30) && first <= Duration::from_secs(60));
        for _ in 0..20 {
            let d = s.slow_delay(&mut r);
            assert!(
                d <= Duration::from_secs(300) && d >= Duration::from_secs(30),
                "{d:?}"
            );
        }
    }
}
