//! Warm-pool simulation: replays task-arrival traces (Poisson and bursty) through the real
//! [`kiln_pool::WarmPool`] over the memory store and provider, on a `ManualClock`, with a
//! simulated cold start, and prints what each warm timeout and pre-warm minimum costs and
//! buys: the cold-start rate, the mean time a task waits for its node, and the idle
//! node-hours (nodes up but running no task).
//!
//! ```text
//! cargo run --example pool_sim
//! ```
//!
//! The simulation is event driven: the clock jumps to the next arrival, task end, node boot
//! or pool deadline, so a day of traffic replays in milliseconds. Every run is seeded and
//! deterministic.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::clock::{add_duration, duration_between};
use kiln_core::memory::{MemoryProvider, MemoryStore};
use kiln_core::{
    LifecycleClock, ManualClock, NodeQuery, NodeState, NodeStore, TaskId, Timestamp, UserId, VmSize,
};
use kiln_pool::memory::simulate_node_boots;
use kiln_pool::{AcquireSource, PrewarmTarget, Settings, WarmPool};

/// How long a new node takes from the provider call to its agent host's hello.
const COLD_START: Duration = Duration::from_secs(100);
/// How long each trace lasts.
const TRACE_HOURS: u64 = 24;

/// A task arrival: when (from the trace start) and how long its agent runs.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: Duration,
    runs_for: Duration,
}

/// splitmix64: a tiny seeded generator, so the example needs no dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponentially distributed with this mean.
    fn exp(&mut self, mean: Duration) -> Duration {
        Duration::from_secs_f64(-self.unit().ln() * mean.as_secs_f64())
    }
}

/// Agent run times: exponential, 12 minutes on average, at least 2.
fn run_time(rng: &mut Rng) -> Duration {
    rng.exp(Duration::from_secs(12 * 60))
        .max(Duration::from_secs(120))
}

/// Steady traffic: Poisson arrivals at `per_hour`.
fn poisson(seed: u64, per_hour: f64) -> Vec<Arrival> {
    let mut rng = Rng(seed);
    let mean_gap = Duration::from_secs_f64(3600.0 / per_hour);
    let end = Duration::from_secs(TRACE_HOURS * 3600);
    let mut at = Duration::ZERO;
    let mut trace = Vec::new();
    loop {
        at += rng.exp(mean_gap);
        if at >= end {
            return trace;
        }
        let runs_for = run_time(&mut rng);
        trace.push(Arrival { at, runs_for });
    }
}

/// Bursty traffic: bursts (every 2 hours on average) of 3 to 8 tasks within 5 minutes,
/// over a trickle of one task per hour.
fn bursty(seed: u64) -> Vec<Arrival> {
    let mut rng = Rng(seed);
    let end = Duration::from_secs(TRACE_HOURS * 3600);
    let mut trace = poisson(seed ^ 0x5eed, 1.0);
    let mut at = Duration::ZERO;
    loop {
        at += rng.exp(Duration::from_secs(2 * 3600));
        if at >= end {
            break;
        }
        let size = 3 + rng.next_u64() % 6;
        for _ in 0..size {
            let offset = Duration::from_secs(rng.next_u64() % 300);
            let runs_for = run_time(&mut rng);
            trace.push(Arrival {
                at: (at + offset).min(end),
                runs_for,
            });
        }
    }
    trace.sort_by_key(|a| a.at);
    trace
}

/// What one configuration did on one trace.
#[derive(Debug, Default)]
struct Outcome {
    tasks: usize,
    cold_starts: usize,
    total_wait: Duration,
    max_wait: Duration,
    idle: Duration,
    provisioned: usize,
}

#[derive(Debug, Default)]
struct Shared {
    /// When running tasks end (the simulation wakes then).
    ends: BTreeSet<(Timestamp, TaskId)>,
    waits: Vec<(Duration, AcquireSource)>,
    finished: usize,
}

/// Lets every runnable task run (the runtime is single-threaded, so this is deterministic).
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn simulate(trace: &[Arrival], warm_timeout: Duration, prewarm_min: u32) -> Outcome {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::starting_at_epoch();
    let start = clock.now();
    let owner = UserId::new();
    let settings = Settings {
        warm_timeout,
        provisioning_timeout: Duration::from_secs(3600),
        prewarm: vec![PrewarmTarget {
            owner,
            size: VmSize::Small,
            location: None,
            min_idle: prewarm_min,
        }],
        ..Settings::default()
    };
    let pool = Arc::new(WarmPool::new(
        store.clone(),
        Arc::new(MemoryProvider::new()),
        Arc::new(clock.clone()),
        settings,
    ));
    let boots = simulate_node_boots(pool.clone(), COLD_START).await;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let end = add_duration(start, Duration::from_secs(TRACE_HOURS * 3600));
    let mut next_arrival = 0;
    let mut outcome = Outcome {
        tasks: trace.len(),
        ..Outcome::default()
    };
    let far = add_duration(end, Duration::from_secs(86_400));
    loop {
        let now = clock.now();
        while next_arrival < trace.len() && add_duration(start, trace[next_arrival].at) <= now {
            let arrival = trace[next_arrival];
            next_arrival += 1;
            let (pool, shared, clock) = (pool.clone(), shared.clone(), clock.clone());
            tokio::spawn(async move {
                let task = TaskId::new();
                let got = pool
                    .acquire(owner, VmSize::Small, None, task)
                    .await
                    .expect("the simulated provider never fails");
                let ends_at = add_duration(clock.now(), arrival.runs_for);
                {
                    let mut s = shared.lock().unwrap();
                    s.waits.push((got.waited, got.source));
                    s.ends.insert((ends_at, task));
                }
                clock.sleep_until(ends_at).await;
                pool.release(got.node.id).await.expect("release");
                let mut s = shared.lock().unwrap();
                s.ends.remove(&(ends_at, task));
                s.finished += 1;
            });
        }
        settle().await;
        pool.tick().await;
        settle().await;

        let nodes = store
            .list_nodes(&NodeQuery {
                states: vec![NodeState::Warm, NodeState::Provisioning],
                ..NodeQuery::default()
            })
            .await
            .expect("nodes");
        let idle = nodes
            .iter()
            .filter(|n| {
                n.state == NodeState::Warm
                    || (n.state == NodeState::Provisioning && n.claimed_by.is_none())
            })
            .count() as u32;
        let booting = nodes
            .iter()
            .filter(|n| n.state == NodeState::Provisioning)
            .map(|n| add_duration(n.created_at, COLD_START))
            .min();
        let done = next_arrival == trace.len() && shared.lock().unwrap().finished == trace.len();
        if done || now >= far {
            outcome.provisioned = store
                .list_nodes(&NodeQuery::default())
                .await
                .expect("nodes")
                .len();
            break;
        }
        let mut next = pool.next_wake(far).await;
        if let Some(arrival) = trace.get(next_arrival) {
            next = next.min(add_duration(start, arrival.at));
        }
        if let Some((ends_at, _)) = shared.lock().unwrap().ends.first() {
            next = next.min(*ends_at);
        }
        if let Some(boot) = booting {
            next = next.min(boot);
        }
        // Idle time counts within the trace window only.
        let window_end = next.min(end);
        if window_end > now {
            outcome.idle += duration_between(now, window_end) * idle;
        }
        if next <= now {
            // Something is due but not done yet (a spawned task still running): look again soon.
            next = add_duration(now, Duration::from_secs(1));
        }
        clock.set(next);
    }
    boots.abort();
    let s = shared.lock().unwrap();
    for (wait, source) in &s.waits {
        outcome.total_wait += *wait;
        outcome.max_wait = outcome.max_wait.max(*wait);
        if *source == AcquireSource::Provisioned {
            outcome.cold_starts += 1;
        }
    }
    outcome
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let traces = [
        ("poisson 4/h", poisson(7, 4.0)),
        ("poisson 12/h", poisson(11, 12.0)),
        ("bursty", bursty(13)),
    ];
    let timeouts_min = [0u64, 10, 30, 60, 120];
    let prewarm = [0u32, 1, 2];
    println!(
        "Warm-pool simulation: {TRACE_HOURS} h traces, cold start {} s, agent runs ~12 min \
         (exponential, min 2 min).",
        COLD_START.as_secs()
    );
    println!(
        "{:<13} {:>9} {:>8} {:>6} {:>11} {:>11} {:>10} {:>10} {:>11}",
        "trace",
        "warm(min)",
        "prewarm",
        "tasks",
        "cold-start",
        "mean wait",
        "max wait",
        "idle node-h",
        "nodes made"
    );
    for (name, trace) in &traces {
        for &timeout in &timeouts_min {
            for &min in &prewarm {
                let o = simulate(trace, Duration::from_secs(timeout * 60), min).await;
                let mean_wait = if o.tasks == 0 {
                    0.0
                } else {
                    o.total_wait.as_secs_f64() / o.tasks as f64
                };
                println!(
                    "{:<13} {:>9} {:>8} {:>6} {:>10.1}% {:>10.1}s {:>9}s {:>11.1} {:>11}",
                    name,
                    timeout,
                    min,
                    o.tasks,
                    100.0 * o.cold_starts as f64 / o.tasks.max(1) as f64,
                    mean_wait,
                    o.max_wait.as_secs(),
                    o.idle.as_secs_f64() / 3600.0,
                    o.provisioned,
                );
            }
        }
    }
}
