//! The queue in front of the writer, and who commits it (group commit).
//!
//! Producers push commands; whoever finds the writer idle commits everything queued in one
//! transaction. A blocking producer (`enqueue_blocking`) commits on its own thread, so a
//! lone producer pays no hand-off to another thread and back. Async callers and the flusher
//! hand the queue to the writer thread (an async task must not block on a commit), and the
//! writer thread also takes over whatever queued up while a producer was committing.
//!
//! Before each commit the committer gathers: when the previous group served k > 1 calls,
//! it waits until k calls are queued, at most `MSG_GROUP_COMMIT_MAX_WAIT_US` and never
//! longer than the previous commit took, because the producers it just answered are about
//! to call again. Without this, concurrent single-message producers split into a group of
//! one and a group of the rest, paying twice the commits.
//!
//! Waiting threads spin before they sleep (`MSG_GROUP_COMMIT_SPIN_US`): a blocking producer
//! whose row another thread commits, and a gathering committer, check again (yielding the
//! CPU between checks) before parking. With `synchronous=NORMAL` a commit takes tens of
//! microseconds, about what waking a parked thread costs on a virtual machine, so parking
//! at once made eight producers spend more time being woken than committing: measured on a
//! 2-core VM, 52k msg/s parking at once against 100k msg/s with 100 µs of spinning, at a
//! third of the CPU time per message.

use std::collections::VecDeque;
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
}

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
    /// A gathering committer waits until this many calls are queued (0: nobody waits).
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
        }
    }

    /// Waits on a synchronous caller's thread for the reply to a command it submitted:
    /// checks again, yielding the CPU, for up to the spin time, then sleeps.
    pub(crate) fn wait_reply<T>(
        &self,
        mut rx: oneshot::Receiver<Result<T, OutboxError>>,
    ) -> Result<T, OutboxError> {
        if !self.spin.is_zero() {
            let deadline = Instant::now() + self.spin;
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
            let group = {
                let mut s = self.gather(writer.last_commit());
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
                let mut weight = 0;
                let mut group = Vec::new();
                while let Some(next) = s.queue.front() {
                    if !group.is_empty() && weight + next.weight() > self.max_rows {
                        break;
                    }
                    weight += next.weight();
                    group.extend(s.queue.pop_front());
                }
                s.last_group = group.len();
                group
            };
            writer.commit_group(group);
            if who == Committer::Caller {
                let mut s = self.state();
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

    /// Waits (bounded) until as many calls are queued as the previous group served.
    fn gather(&self, last_commit: Duration) -> MutexGuard<'_, State> {
        let mut s = self.state();
        let target = s.last_group.min(self.max_rows);
        let window = self.max_wait.min(last_commit);
        if target <= 1 || s.queue.len() >= target || window.is_zero() || s.closed {
            return s;
        }
        let deadline = Instant::now() + window;
        // Spin first: the producers just answered are usually back within microseconds,
        // and a sleeping committer costs a wake-up on top.
        let spin_until = Instant::now() + self.spin.min(window);
        while Instant::now() < spin_until {
            drop(s);
            std::thread::yield_now();
            s = self.state();
            if s.queue.len() >= target || s.closed {
                return s;
            }
        }
        s.gather_target = target;
        while s.queue.len() < target && !s.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .arrived
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        s.gather_target = 0;
        s
    }
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
