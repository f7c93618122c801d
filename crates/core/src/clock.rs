//! Time as a parameter. Library code reads the time only through a [`LifecycleClock`], so a
//! [`ManualClock`] can drive a 30-minute warm timeout in a millisecond test.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A point in time, UTC, as Kiln stores and sends it (RFC 3339 in JSON).
pub type Timestamp = DateTime<Utc>;

/// Adds a [`std::time::Duration`] to a timestamp, saturating instead of panicking.
#[must_use]
pub fn add_duration(t: Timestamp, d: Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The time between two timestamps, zero when `later` is not after `earlier`.
#[must_use]
pub fn duration_between(earlier: Timestamp, later: Timestamp) -> Duration {
    (later - earlier).to_std().unwrap_or(Duration::ZERO)
}

/// The source of "now" and of waiting, injected into every piece of library logic.
#[async_trait]
pub trait LifecycleClock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Returns once [`now`](Self::now) is at or past `deadline`.
    async fn sleep_until(&self, deadline: Timestamp);

    /// Sleeps for `duration` measured on this clock.
    async fn sleep(&self, duration: Duration) {
        self.sleep_until(add_duration(self.now(), duration)).await;
    }
}

#[async_trait]
impl<T: LifecycleClock + ?Sized> LifecycleClock for Arc<T> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
    async fn sleep_until(&self, deadline: Timestamp) {
        (**self).sleep_until(deadline).await;
    }
    async fn sleep(&self, duration: Duration) {
        (**self).sleep(duration).await;
    }
}

/// The wall clock, with tokio's timer for sleeping.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl LifecycleClock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The one place the wall clock is read.
    fn now(&self) -> Timestamp {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        loop {
            let remaining = duration_between(self.now(), deadline);
            if remaining.is_zero() {
                return;
            }
            tokio::time::sleep(remaining).await;
        }
    }
}

/// A clock that moves only when told to. Sleepers wake as soon as time passes their deadline.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::time::Duration;
/// use kiln_core::{LifecycleClock, ManualClock};
///
/// let clock = ManualClock::starting_at_epoch();
/// let start = clock.now();
/// let deadline = kiln_core::clock::add_duration(start, Duration::from_secs(1800));
/// let sleeper = {
///     let clock = clock.clone();
///     tokio::spawn(async move { clock.sleep_until(deadline).await })
/// };
/// clock.advance(Duration::from_secs(1800));
/// sleeper.await.unwrap();
/// assert_eq!((clock.now() - start).num_minutes(), 30);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &*self.now.borrow())
            .finish()
    }
}

impl ManualClock {
    /// A manual clock showing `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// A manual clock at a fixed, arbitrary start (2026-01-01T00:00:00Z), for reproducible tests.
    #[must_use]
    pub fn starting_at_epoch() -> Self {
        Self::new(DateTime::from_timestamp(1_767_225_600, 0).unwrap_or(DateTime::<Utc>::MIN_UTC))
    }

    /// Moves time forward by `by` and wakes every sleeper whose deadline has passed.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now = add_duration(*now, by));
    }

    /// Sets the time (forward or back) and wakes sleepers whose deadline has passed.
    pub fn set(&self, to: Timestamp) {
        self.now.send_replace(to);
    }
}

#[async_trait]
impl LifecycleClock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let mut rx = self.now.subscribe();
        // The sender lives as long as `self`, so `wait_for` only ends by the predicate.
        let _ = rx.wait_for(|now| *now >= deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_only_when_time_passes_their_deadline() {
        let clock = ManualClock::starting_at_epoch();
        let start = clock.now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for minutes in [10u64, 20, 30] {
            let clock = clock.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                clock.sleep(Duration::from_secs(minutes * 60)).await;
                tx.send(minutes).unwrap();
            });
        }
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(15 * 60));
        assert_eq!(rx.recv().await, Some(10));
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "the 20-minute sleeper woke early");
        clock.advance(Duration::from_secs(60 * 60));
        let mut rest = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        rest.sort_unstable();
        assert_eq!(rest, vec![20, 30]);
        assert_eq!((clock.now() - start).num_minutes(), 75);
    }

    #[tokio::test]
    async fn sleeping_until_the_past_returns_at_once() {
        let clock = ManualClock::starting_at_epoch();
        let past = clock.now() - chrono::Duration::seconds(5);
        clock.sleep_until(past).await;
        SystemClock.sleep_until(SystemClock.now()).await;
    }

    #[test]
    fn duration_helpers_saturate() {
        let t = ManualClock::starting_at_epoch().now();
        assert_eq!(
            duration_between(t, t - chrono::Duration::seconds(1)),
            Duration::ZERO
        );
        assert_eq!(add_duration(t, Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
