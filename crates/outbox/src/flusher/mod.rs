//! The flusher: one task per outbox that sends the oldest due rows in batches, classifies
//! each failure once, and settles every outcome with the writer in the same step.

mod schedule;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::clock::{add_duration, duration_between};
use kiln_core::{
    ChatMessage, LifecycleClock, MessageId, MessageSink, SinkError, Timestamp, WorkspaceId,
};
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::OutboxError;
use crate::metrics::{Condition, Dropped, OutboxMetrics};
use crate::outbox::{Loaded, Outbox, OutboxRow};
use crate::router::{SingleSink, SinkRouter};
use crate::writer::{DropReason, DropRow, RetryMark, RowKey, Settle};

use schedule::RetrySchedule;

/// How to run a flusher beyond its sink and clock.
#[derive(Debug, Clone, Default)]
pub struct FlusherOptions {
    /// Seed for the retry jitter (tests); `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
}

/// A running flusher. Dropping it without [`shutdown`](Self::shutdown) stops it at once;
/// pending rows stay on disk either way.
#[derive(Debug)]
pub struct FlusherHandle {
    shared: Arc<Shared>,
    outbox: Outbox,
    stop: watch::Sender<Option<Timestamp>>,
    task: Option<JoinHandle<()>>,
}

/// What [`FlusherHandle::shutdown`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Rows still pending on disk; they are sent after the next start.
    pub pending: u64,
}

impl FlusherHandle {
    /// A snapshot of the counters and conditions.
    #[must_use]
    pub fn metrics(&self) -> OutboxMetrics {
        let c = &self.outbox.inner.counters;
        let state = self.shared.lock();
        let mut troubled: Vec<(WorkspaceId, Condition)> = state
            .conditions
            .iter()
            .filter(|(_, c)| **c != Condition::Healthy)
            .filter_map(|(w, c)| w.parse().ok().map(|w| (w, *c)))
            .collect();
        troubled.sort_by_key(|(w, c)| (std::cmp::Reverse(*c), *w));
        let now = self.outbox.inner.clock.now();
        let oldest = self.outbox.oldest_created_at().ok().flatten();
        OutboxMetrics {
            pending: self.outbox.pending_count(),
            oldest_pending_age: oldest.map(|t| duration_between(t, now)),
            enqueued: c.enqueued.load(Ordering::Relaxed),
            notices: c.notices.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            receiver_duplicates: self.shared.receiver_duplicates.load(Ordering::Relaxed),
            batches_sent: self.shared.batches_sent.load(Ordering::Relaxed),
            retried: self.shared.retried.load(Ordering::Relaxed),
            dropped: Dropped {
                overflow: c.dropped_overflow.load(Ordering::Relaxed),
                rejected: c.dropped_rejected.load(Ordering::Relaxed),
                too_large: c.dropped_too_large.load(Ordering::Relaxed),
                corrupt: c.dropped_corrupt.load(Ordering::Relaxed),
            },
            last_error: state.last_error.clone(),
            condition: troubled.first().map_or(Condition::Healthy, |(_, c)| *c),
            troubled_routes: troubled,
        }
    }

    /// Looks at the outbox now, and retries every route in backoff at once (for example
    /// after a token was rotated or a sink was added to a [`SinkMap`](crate::SinkMap)).
    pub fn wake(&self) {
        self.shared.lock().wake_all = true;
        self.outbox.inner.notify.notify_one();
    }

    /// Stops the flusher: it keeps delivering what is due until nothing is left or
    /// `deadline` (on the flusher's clock) passes, abandoning a delivery still in flight then.
    /// Whatever is left stays on disk and is sent after the next start.
    pub async fn shutdown(mut self, deadline: Timestamp) -> ShutdownReport {
        let _ = self.stop.send(Some(deadline));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        ShutdownReport {
            pending: self.outbox.pending_count(),
        }
    }
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.stop.send(Some(Timestamp::MIN_UTC));
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<SharedState>,
    batches_sent: AtomicU64,
    retried: AtomicU64,
    receiver_duplicates: AtomicU64,
}

#[derive(Debug, Default)]
struct SharedState {
    last_error: Option<String>,
    conditions: HashMap<String, Condition>,
    wake_all: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Outbox {
    /// Starts delivering to one sink for every route. Needs a tokio runtime.
    #[must_use]
    pub fn spawn_flusher(
        &self,
        sink: Arc<dyn MessageSink>,
        clock: Arc<dyn LifecycleClock>,
    ) -> FlusherHandle {
        self.spawn_flusher_routed(Arc::new(SingleSink(sink)), clock, FlusherOptions::default())
    }

    /// Starts delivering, asking `router` for each workspace's sink. Needs a tokio runtime.
    /// Run at most one flusher per outbox.
    #[must_use]
    pub fn spawn_flusher_routed(
        &self,
        router: Arc<dyn SinkRouter>,
        clock: Arc<dyn LifecycleClock>,
        options: FlusherOptions,
    ) -> FlusherHandle {
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(None);
        let flusher = Flusher::new(
            self.clone(),
            router,
            clock,
            shared.clone(),
            options,
            stop_rx,
        );
        let task = tokio::spawn(flusher.run());
        FlusherHandle {
            shared,
            outbox: self.clone(),
            stop,
            task: Some(task),
        }
    }
}

#[derive(Debug)]
struct RouteState {
    blocked_until: Option<Timestamp>,
    schedule: RetrySchedule,
    failing_since: Option<Timestamp>,
    /// After a 413: the batch size the receiver is known to take, doubled back towards
    /// `MSG_BATCH_MAX_SIZE` after each full batch it accepts.
    size_cap: Option<usize>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Something was sent or settled; look again at once.
    Worked,
    /// Nothing is due; the earliest blocked route frees up then.
    Idle { next_due: Option<Timestamp> },
    /// The shutdown deadline passed during a delivery.
    Abandoned,
}

pub(crate) struct Flusher {
    outbox: Outbox,
    router: Arc<dyn SinkRouter>,
    clock: Arc<dyn LifecycleClock>,
    shared: Arc<Shared>,
    routes: HashMap<String, RouteState>,
    rng: StdRng,
    stop: watch::Receiver<Option<Timestamp>>,
    /// Test hook: stop dead at this point of a delivery, as a killed process would.
    #[cfg(test)]
    pub(crate) crash_at: Option<CrashPoint>,
}

/// Where the crash-point tests stop a delivery.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// The batch is loaded but not sent.
    BeforeSend,
    /// The receiver acknowledged the batch; the rows are not deleted yet.
    AfterAck,
}

/// A part of a batch being delivered; parts are sent in order, and a part that is split
/// (413, or a rejection naming nobody) is replaced by its halves.
type Part = Vec<OutboxRow>;

impl Flusher {
    fn new(
        outbox: Outbox,
        router: Arc<dyn SinkRouter>,
        clock: Arc<dyn LifecycleClock>,
        shared: Arc<Shared>,
        options: FlusherOptions,
        stop: watch::Receiver<Option<Timestamp>>,
    ) -> Self {
        let mut flusher = Self {
            outbox,
            router,
            clock,
            shared,
            routes: HashMap::new(),
            rng: schedule::rng(options.jitter_seed),
            stop,
            #[cfg(test)]
            crash_at: None,
        };
        flusher.recover_retry_times();
        flusher
    }

    /// Startup recovery: a route that was in backoff when the last run ended stays in
    /// backoff until its persisted `next_attempt_at`.
    fn recover_retry_times(&mut self) {
        let now = self.clock.now();
        match self.outbox.persisted_retry_times() {
            Ok(times) => {
                for (workspace, ms) in times {
                    let Some(at) = chrono::DateTime::from_timestamp_millis(ms) else {
                        continue;
                    };
                    if at > now {
                        self.route(&workspace).blocked_until = Some(at);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read persisted retry times"),
        }
    }

    fn route(&mut self, workspace: &str) -> &mut RouteState {
        let config = &self.outbox.inner.config;
        self.routes
            .entry(workspace.to_owned())
            .or_insert_with(|| RouteState {
                blocked_until: None,
                schedule: RetrySchedule::new(config),
                failing_since: None,
                size_cap: None,
            })
    }

    async fn run(mut self) {
        let max_wait = self.outbox.inner.config.batch_max_wait;
        let notify = self.outbox.inner.notify.clone();
        loop {
            let deadline = *self.stop.borrow();
            let now = self.clock.now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            let step = self.step().await;
            let next_due = match step {
                Ok(Step::Worked) => continue,
                Ok(Step::Abandoned) => break,
                Ok(Step::Idle { next_due }) => next_due,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox flusher step failed");
                    self.shared.lock().last_error = Some(e.to_string());
                    Some(add_duration(now, max_wait.min(Duration::from_secs(1))))
                }
            };
            let wake_at = match (deadline, next_due) {
                // Stopping: wait only for a route that frees up before the deadline.
                (Some(d), Some(due)) if due < d => due,
                (Some(_), _) => break,
                (None, Some(due)) => due.min(add_duration(now, max_wait)),
                (None, None) => add_duration(now, max_wait),
            };
            tokio::select! {
                () = notify.notified() => {}
                () = self.clock.sleep_until(wake_at) => {}
                _ = self.stop.changed() => {}
            }
        }
        tracing::debug!(
            pending = self.outbox.pending_count(),
            "outbox flusher stopped"
        );
    }

    /// Picks the oldest due route, sends one batch of it (splitting as the receiver asks)
    /// and settles every outcome.
    pub(crate) async fn step(&mut self) -> Result<Step, OutboxError> {
        let now = self.clock.now();
        if std::mem::take(&mut self.shared.lock().wake_all) {
            for route in self.routes.values_mut() {
                route.blocked_until = None;
            }
        }
        let blocked: HashSet<String> = self
            .routes
            .iter()
            .filter(|(_, r)| r.blocked_until.is_some_and(|t| t > now))
            .map(|(w, _)| w.clone())
            .collect();
        let next_due = self
            .routes
            .values()
            .filter_map(|r| r.blocked_until.filter(|t| *t > now))
            .min();
        let config = &self.outbox.inner.config;
        let (max_rows, max_bytes) = (config.batch_max_size, config.batch_max_bytes);
        let caps: HashMap<String, usize> = self
            .routes
            .iter()
            .filter_map(|(w, r)| r.size_cap.map(|c| (w.clone(), c)))
            .collect();
        let outbox = self.outbox.clone();
        let plan = tokio::task::spawn_blocking(move || -> Result<_, OutboxError> {
            let route = match outbox.oldest_route()? {
                None => return Ok(None),
                Some(r) if !blocked.contains(&r) => Some(r),
                Some(_) => outbox
                    .routes_by_age()?
                    .into_iter()
                    .find(|r| !blocked.contains(r)),
            };
            let Some(route) = route else { return Ok(None) };
            let limit = caps.get(&route).map_or(max_rows, |c| (*c).min(max_rows));
            let rows = outbox.load_batch(&route, limit, max_bytes)?;
            let (rows, claim) = outbox.claim(rows)?;
            Ok(Some((route, rows, claim)))
        })
        .await
        .map_err(|e| OutboxError::Storage(format!("batch read task failed: {e}")))??;
        // `_claim` keeps the rows out of overflow eviction until this step has settled them.
        let Some((workspace, loaded, _claim)) = plan else {
            return Ok(Step::Idle { next_due });
        };
        let mut rows = Vec::with_capacity(loaded.len());
        let mut corrupt = Vec::new();
        for l in loaded {
            match l {
                Loaded::Row(r) => rows.push(r),
                Loaded::Corrupt { key, error } => {
                    tracing::error!(id = %key.id, pos = key.pos, %error, "unreadable outbox row dropped");
                    corrupt.push(DropRow {
                        key,
                        reason: DropReason::Corrupt,
                        detail: error,
                    });
                }
            }
        }
        if !corrupt.is_empty() {
            self.outbox
                .settle(Settle {
                    dropped: corrupt,
                    ..Settle::default()
                })
                .await?;
        }
        if rows.is_empty() {
            return Ok(Step::Worked);
        }
        let sink = workspace
            .parse::<WorkspaceId>()
            .ok()
            .and_then(|w| self.router.sink_for(w));
        let Some(sink) = sink else {
            let wait = self.outbox.inner.config.batch_max_wait;
            self.route(&workspace).blocked_until = Some(add_duration(now, wait));
            self.set_condition(&workspace, Condition::NoSink);
            tracing::debug!(%workspace, "no sink for this workspace yet; its messages wait");
            return Ok(Step::Worked);
        };
        self.deliver(&workspace, sink.as_ref(), rows).await
    }

    async fn deliver(
        &mut self,
        workspace: &str,
        sink: &dyn MessageSink,
        rows: Vec<OutboxRow>,
    ) -> Result<Step, OutboxError> {
        let mut parts: VecDeque<Part> = VecDeque::from([rows]);
        while let Some(part) = parts.pop_front() {
            let batch: Vec<ChatMessage> = part.iter().map(|r| r.message.clone()).collect();
            #[cfg(test)]
            if self.crash_at == Some(CrashPoint::BeforeSend) {
                return Err(OutboxError::Storage("injected crash before send".into()));
            }
            self.shared.batches_sent.fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::select! {
                r = sink.deliver(&batch) => r,
                () = deadline_passed(self.stop.clone(), self.clock.clone()) => {
                    return Ok(Step::Abandoned);
                }
            };
            match outcome {
                Ok(report) => {
                    #[cfg(test)]
                    if self.crash_at == Some(CrashPoint::AfterAck) {
                        return Err(OutboxError::Storage("injected crash after ack".into()));
                    }
                    self.shared
                        .receiver_duplicates
                        .fetch_add(report.duplicates, Ordering::Relaxed);
                    self.outbox
                        .settle(Settle {
                            delivered: keys(&part),
                            ..Settle::default()
                        })
                        .await?;
                    let max_rows = self.outbox.inner.config.batch_max_size;
                    let route = self.route(workspace);
                    if let Some(cap) = route.size_cap.filter(|c| part.len() >= *c) {
                        route.size_cap = Some(cap * 2).filter(|c| *c < max_rows);
                    }
                    route.schedule.reset();
                    route.failing_since = None;
                    route.blocked_until = None;
                    self.set_condition(workspace, Condition::Healthy);
                }
                Err(SinkError::PayloadTooLarge { message }) if part.len() == 1 => {
                    self.drop_rows(&part, DropReason::TooLarge, &message)
                        .await?;
                }
                Err(SinkError::PayloadTooLarge { .. }) => {
                    let route = self.route(workspace);
                    let half = (part.len() / 2).max(1);
                    route.size_cap = Some(route.size_cap.map_or(half, |c| c.min(half)));
                    let (first, second) = halves(part);
                    parts.push_front(second);
                    parts.push_front(first);
                }
                Err(SinkError::Rejected {
                    message,
                    message_ids,
                }) => {
                    let named: HashSet<MessageId> = message_ids.into_iter().collect();
                    let (culprits, rest): (Part, Part) = part
                        .into_iter()
                        .partition(|r| named.contains(&r.message.id));
                    if !culprits.is_empty() {
                        self.drop_rows(&culprits, DropReason::Rejected, &message)
                            .await?;
                        if !rest.is_empty() {
                            parts.push_front(rest);
                        }
                    } else if rest.len() == 1 {
                        self.drop_rows(&rest, DropReason::Rejected, &message)
                            .await?;
                    } else {
                        let (first, second) = halves(rest);
                        parts.push_front(second);
                        parts.push_front(first);
                    }
                }
                Err(error) => {
                    self.retry_later(workspace, &part, &error).await?;
                    return Ok(Step::Worked);
                }
            }
        }
        Ok(Step::Worked)
    }

    async fn drop_rows(
        &mut self,
        rows: &[OutboxRow],
        reason: DropReason,
        detail: &str,
    ) -> Result<(), OutboxError> {
        for r in rows {
            tracing::warn!(
                id = %r.message.id,
                session = %r.message.session_id,
                seq = r.message.seq,
                reason = reason.as_str(),
                detail,
                "message dropped"
            );
        }
        self.shared.lock().last_error = Some(format!("{}: {detail}", reason.as_str()));
        self.outbox
            .settle(Settle {
                dropped: rows
                    .iter()
                    .map(|r| DropRow {
                        key: r.key.clone(),
                        reason,
                        detail: detail.to_owned(),
                    })
                    .collect(),
                ..Settle::default()
            })
            .await?;
        Ok(())
    }

    /// A batch-level failure: keep every row, block the route for the classified delay and
    /// persist when to try again.
    async fn retry_later(
        &mut self,
        workspace: &str,
        part: &[OutboxRow],
        error: &SinkError,
    ) -> Result<(), OutboxError> {
        let now = self.clock.now();
        let max_elapsed = self.outbox.inner.config.retry_max_elapsed_time;
        let mut rng = std::mem::replace(&mut self.rng, schedule::rng(Some(0)));
        let route = self.route(workspace);
        let (delay, mut condition) = match error {
            SinkError::Unavailable { retry_after, .. } => (
                route.schedule.transient_delay(*retry_after, &mut rng),
                Condition::Retrying,
            ),
            SinkError::Unauthorized { .. } => {
                (route.schedule.slow_delay(&mut rng), Condition::AuthFailed)
            }
            _ => (
                route.schedule.slow_delay(&mut rng),
                Condition::Misconfigured,
            ),
        };
        let since = *route.failing_since.get_or_insert(now);
        let until = add_duration(now, delay);
        route.blocked_until = Some(until);
        self.rng = rng;
        if condition == Condition::Retrying && duration_between(since, now) >= max_elapsed {
            condition = Condition::Stalled;
        }
        let was = self.set_condition(workspace, condition);
        if condition == Condition::Stalled && was != Condition::Stalled {
            tracing::error!(%workspace, %error, "message delivery has been failing for too long; still retrying, nothing dropped");
        } else {
            tracing::warn!(%workspace, %error, delay_ms = delay.as_millis() as u64, "delivery failed; will retry");
        }
        self.shared.retried.fetch_add(1, Ordering::Relaxed);
        self.shared.lock().last_error = Some(error.to_string());
        self.outbox
            .settle(Settle {
                retry: Some(RetryMark {
                    workspace: workspace.to_owned(),
                    rows: keys(part),
                    next_attempt_ms: until.timestamp_millis(),
                    error: error.to_string(),
                }),
                ..Settle::default()
            })
            .await?;
        Ok(())
    }

    /// Sets a route's condition, returning the previous one.
    fn set_condition(&self, workspace: &str, condition: Condition) -> Condition {
        let mut state = self.shared.lock();
        if condition == Condition::Healthy {
            state.conditions.remove(workspace).unwrap_or_default()
        } else {
            state
                .conditions
                .insert(workspace.to_owned(), condition)
                .unwrap_or_default()
        }
    }
}

fn keys(rows: &[OutboxRow]) -> Vec<RowKey> {
    rows.iter().map(|r| r.key.clone()).collect()
}

fn halves(mut part: Part) -> (Part, Part) {
    let second = part.split_off(part.len() / 2);
    (part, second)
}

/// Completes once a shutdown deadline is set and has passed on `clock`.
async fn deadline_passed(
    mut stop: watch::Receiver<Option<Timestamp>>,
    clock: Arc<dyn LifecycleClock>,
) {
    let deadline = loop {
        if let Some(d) = *stop.borrow_and_update() {
            break d;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    clock.sleep_until(deadline).await;
}

#[cfg(test)]
impl Flusher {
    /// A flusher driven by hand through [`step`](Self::step), with no shutdown deadline.
    pub(crate) fn for_test(
        outbox: &Outbox,
        router: Arc<dyn SinkRouter>,
        clock: Arc<dyn LifecycleClock>,
        seed: u64,
    ) -> Self {
        let (_stop, stop_rx) = watch::channel(None);
        Self::new(
            outbox.clone(),
            router,
            clock,
            Arc::new(Shared::default()),
            FlusherOptions {
                jitter_seed: Some(seed),
            },
            stop_rx,
        )
    }
}
