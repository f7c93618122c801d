//! The queue in front of the writer, and who commits it (group commit).
//!
//! Producers push commands; whoever finds the writer idle commits everything queued in one
//! transaction. A blocking producer (`enqueue_blocking`) commits on its own thread, so a
//! lone producer pays no hand-off to another thread and back. Async callers and the flusher
//! hand the queue to the writer thread (an async task must not block on a commit), and the
//! writer thread also takes over whatever queued up while a producer was committing.
//!
//! A group gathers inside its open transaction: when the previous group served k > 1
//! calls, the committer begins with what is queued, applies it, and then applies each new
//! arrival while it waits for the next, until the group serves k calls, at most
//! `MSG_GROUP_COMMIT_MAX_WAIT_US` and never longer than the previous commit took, because
//! the producers it just answered are about to call again. Without the wait, concurrent
//! single-message producers split into a group of one and a group of the rest, paying
//! twice the commits; waiting before `BEGIN` instead (as this did first) left the inserts
//! to after the last arrival (8 blocking producers: ~105k msg/s then, ~115k now).
//!
//! Waiting threads spin before they sleep (`MSG_GROUP_COMMIT_SPIN_US`): a blocking producer
//! whose row another thread commits, and a gathering committer, check again (yielding the
//! CPU between checks) before parking. With `synchronous=NORMAL` a commit takes tens of
//! microseconds, about what waking a parked thread costs on a virtual machine, so parking
//! at once made eight producers spend more time being woken than committing: measured on a
//! 2-core VM, 52k msg/s parking at once against 100k msg/s with 100 µs of spinning, at a
//! third of the CPU time per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use crate::error::OutboxError;
use crate::writer::{Command, Writer};

/// Who commits a command if the writer is idle when it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committer {
    /// The calling thread (it blocks until its own command is committed anyway).
    Caller,
    /// The writer thread (async callers).
    Thread,
}

pub(crate) struct WriteQueue {
    state: Mutex<State>,
    /// Wakes the writer thread: a hand-off, or closing.
    to_thread: Condvar,
    /// Wakes a gathering committer: the queue reached its target.
    arrived: Condvar,
    writer: Mutex<Writer>,
    max_rows: usize,
    max_wait: Duration,
    /// How long a waiter yields and checks again before it sleeps.
    spin: Duration,
    /// The previous group's own duration in µs (see [`Writer::last_commit`]): a blocking
    /// producer spins through a commit that long (see [`WriteQueue::wait_reply`]).
    last_commit_us: AtomicU64,
}

/// A blocking producer spins at most this many times `MSG_GROUP_COMMIT_SPIN_US`.
const REPLY_SPIN_FACTOR: u32 = 4;

#[derive(Default)]
struct State {
    queue: VecDeque<Command>,
    /// Someone commits, or the writer thread was asked to: a newcomer only queues. While it
    /// is false the queue is empty.
    busy: bool,
    /// The writer thread is asked to commit what is queued.
    handoff: bool,
    closed: bool,
    /// Calls served by the previous group.
    last_group: usize,
    /// A gathering committer sleeps until this many calls are queued (0: nobody waits).
    gather_target: usize,
}

impl WriteQueue {
    pub(crate) fn new(writer: Writer, max_rows: usize, max_wait: Duration, spin: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            to_thread: Condvar::new(),
            arrived: Condvar::new(),
            writer: Mutex::new(writer),
            max_rows: max_rows.max(1),
            max_wait,
            spin,
            last_commit_us: AtomicU64::new(0),
        }
    }

    /// Waits on a synchronous caller's thread for the reply to a command it submitted:
    /// checks again, yielding the CPU, then sleeps. It spins for the spin time or, when
    /// commits take longer (an fsync per commit under `synchronous=FULL`), for one and a
    /// half times the previous commit, at most four times the spin time: a producer
    /// asleep when its commit ends costs the committer a wake-up, several of which
    /// outlast a fast fsync (8 producers under FULL: ~25k msg/s sleeping after 100 µs,
    /// ~35k spinning through the commit, on a 2-core VM).
    pub(crate) fn wait_reply<T>(
        &self,
        mut rx: oneshot::Receiver<Result<T, OutboxError>>,
    ) -> Result<T, OutboxError> {
        if !self.spin.is_zero() {
            let commit = Duration::from_micros(self.last_commit_us.load(Ordering::Relaxed));
            let spin = (commit * 3 / 2).clamp(self.spin, self.spin * REPLY_SPIN_FACTOR);
            let deadline = Instant::now() + spin;
            loop {
                match rx.try_recv() {
                    Ok(reply) => return reply,
                    Err(TryRecvError::Closed) => return Err(OutboxError::Closed),
                    Err(TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::yield_now();
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
        rx.blocking_recv().map_err(|_| OutboxError::Closed)?
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `cmd`; its reply channel is answered once its group has committed (or failed).
    /// With [`Committer::Caller`] and an idle writer, the commit happens before this returns.
    pub(crate) fn submit(&self, cmd: Command, committer: Committer) -> Result<(), OutboxError> {
        let mut s = self.state();
        if s.closed {
            return Err(OutboxError::Closed);
        }
        s.queue.push_back(cmd);
        if s.gather_target > 0 && s.queue.len() >= s.gather_target {
            self.arrived.notify_one();
        }
        if s.busy {
            return Ok(());
        }
        s.busy = true;
        match committer {
            Committer::Thread => {
                s.handoff = true;
                self.to_thread.notify_one();
            }
            Committer::Caller => {
                drop(s);
                self.commit_queued(Committer::Caller);
            }
        }
        Ok(())
    }

    /// The writer thread's loop: commits whenever handed the queue; returns once closed and
    /// everything queued is committed.
    pub(crate) fn run_thread(&self) {
        let mut s = self.state();
        loop {
            if s.handoff {
                s.handoff = false;
                drop(s);
                self.commit_queued(Committer::Thread);
                s = self.state();
                continue;
            }
            if s.closed {
                if s.queue.is_empty() || s.busy {
                    return;
                }
                s.busy = true;
                s.handoff = true;
                continue;
            }
            s = self
                .to_thread
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops taking commands; the writer thread commits what is queued and returns.
    pub(crate) fn close(&self) {
        let mut s = self.state();
        s.closed = true;
        self.to_thread.notify_one();
        self.arrived.notify_all();
    }

    /// Commits groups until the queue is empty. A caller commits one group (its own command
    /// is in it: the queue was empty when it found the writer idle) and hands anything newer
    /// to the writer thread.
    fn commit_queued(&self, who: Committer) {
        let _closes_on_panic = ClosesOnPanic(self);
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let (group, mut gather) = {
                let mut s = self.state();
                if who == Committer::Thread {
                    // Async producers are usually back within microseconds; while the
                    // writer thread spins it stays busy, so they queue without waking it.
                    let until = Instant::now() + self.spin;
                    while s.queue.is_empty() && !s.closed && Instant::now() < until {
                        drop(s);
                        std::thread::yield_now();
                        s = self.state();
                    }
                }
                if s.queue.is_empty() {
                    s.busy = false;
                    return;
                }
                let window = self.max_wait.min(writer.last_commit());
                let now = Instant::now();
                let mut gather = Gather {
                    target: s.last_group.min(self.max_rows),
                    weight: 0,
                    spin_until: now + self.spin.min(window),
                    deadline: now + window,
                };
                let group = self.take(&mut s, &mut gather.weight);
                (group, gather)
            };
            let served = writer.commit_group(group, &mut |have| self.more(have, &mut gather));
            self.last_commit_us.store(
                u64::try_from(writer.last_commit().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let mut s = self.state();
            s.last_group = served;
            if who == Committer::Caller {
                if s.queue.is_empty() {
                    s.busy = false;
                } else {
                    s.handoff = true;
                    self.to_thread.notify_one();
                }
                return;
            }
        }
    }

    /// Takes queued commands from the front up to `MSG_GROUP_COMMIT_MAX_ROWS` rows (an
    /// empty group takes its first command whatever its size).
    fn take(&self, s: &mut State, weight: &mut usize) -> Vec<Command> {
        let mut taken = Vec::new();
        while let Some(next) = s.queue.front() {
            if *weight > 0 && *weight + next.weight() > self.max_rows {
                break;
            }
            *weight += next.weight();
            taken.extend(s.queue.pop_front());
        }
        taken
    }

    /// Called by the writer inside the open transaction once it has applied `have`
    /// commands: more commands for the same group, or none to commit now. While the group
    /// serves fewer calls than the previous one did, it waits (bounded) for the producers
    /// just answered, who are about to call again; each arrival is applied while the next
    /// is awaited, so the wait overlaps the inserts instead of preceding them.
    fn more(&self, have: usize, gather: &mut Gather) -> Vec<Command> {
        if have >= gather.target || gather.weight >= self.max_rows {
            return Vec::new();
        }
        let mut s = self.state();
        loop {
            if !s.queue.is_empty() {
                return self.take(&mut s, &mut gather.weight);
            }
            let now = Instant::now();
            if s.closed || now >= gather.deadline {
                return Vec::new();
            }
            if now < gather.spin_until {
                // Spin first: a sleeping committer costs a wake-up on top.
                drop(s);
                std::thread::yield_now();
                s = self.state();
                continue;
            }
            s.gather_target = 1;
            s = self
                .arrived
                .wait_timeout(s, gather.deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            s.gather_target = 0;
        }
    }
}

/// How a group grows while its transaction is open.
struct Gather {
    /// Calls served by the previous group: the producers about to call again.
    target: usize,
    /// Rows taken so far.
    weight: usize,
    /// Until then a waiting committer yields; after it, it sleeps until an arrival.
    spin_until: Instant,
    /// Never waits past this: the previous commit's duration, at most
    /// `MSG_GROUP_COMMIT_MAX_WAIT_US`.
    deadline: Instant,
}

/// If a commit panics (on a producer's thread or the writer thread), the outbox closes:
/// every queued call is answered [`OutboxError::Closed`] (its reply channel is dropped) and
/// later calls fail at once, instead of waiting forever behind a committer that is gone.
struct ClosesOnPanic<'a>(&'a WriteQueue);

impl Drop for ClosesOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = self.0.state();
            s.closed = true;
            s.busy = false;
            s.queue.clear();
            self.0.to_thread.notify_one();
            self.0.arrived.notify_all();
        }
    }
}
