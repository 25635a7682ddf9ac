//! The engine: starts one thread per worker and a housekeeping thread, publishes plans to
//! them and stops them. Invariants: a publish or a stop wakes every worker sleeping in
//! poll(2); [`Engine::wait_applied`] returns true only once every worker has applied the
//! generation; a stopped engine has joined every thread it started.

use super::backoff::IDLE_WAIT;
use super::clock::seconds_at;
use super::stats::{WorkerStats, WorkerStatsSnapshot};
use super::thread::worker_main;
use super::ForwardingPlan;
use crate::buffer::Pool;
use crate::cpu;
use crate::port::{DEFAULT_BURST, MAX_BURST};
use arc_swap::ArcSwap;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Called on a worker thread (worker index) when it starts and again whenever it takes up a
/// new plan, before it opens that plan's queues: e.g. to register the thread with DPDK's EAL
/// so that mempool caches work, EAL being brought up by the first DPDK port of a plan, after
/// the workers started. Must be idempotent.
pub type WorkerHook = Arc<dyn Fn(usize) + Send + Sync>;

/// How the workers run.
#[derive(Clone)]
pub struct EngineOptions {
    /// One entry per worker: the core to pin it to, or `None` to leave it unpinned.
    pub cores: Vec<Option<usize>>,
    pub burst: usize,
    /// Poll without ever backing off (benchmarks, and dedicated cores: a DaemonSet's exclusive
    /// CPUs).
    pub busy_poll: bool,
    /// How long a worker must have received nothing (TSC time) before it yields or sleeps; a
    /// gap shorter than this in a latency-bound loop costs nothing. Receiving a frame starts
    /// the count again; waking from a sleep without one does not. `None` (the default): per
    /// worker from its RX queues, 2 ms when one of them gains by spinning
    /// ([`RxQueue::spin_when_idle`](crate::port::RxQueue::spin_when_idle): a DPDK ethdev, a
    /// vhost-user guest, a ring), none when every one is a kernel socket that wakes the worker
    /// on readiness (AF_PACKET, UDP tunnel, TAP, AF_XDP).
    pub idle_spin: Option<Duration>,
    /// The longest an idle worker sleeps between polls.
    pub max_sleep: Duration,
    /// The longest an idle worker sleeps in poll(2) on its queues' wake descriptors before it
    /// polls again (a frame, a publish or a stop wakes it at once; the bound only matters
    /// for a wake-up that never comes).
    pub idle_wait: Duration,
    /// Buffers in the shared pool.
    pub pool_buffers: usize,
    /// Run on each worker thread before it polls and before it opens a new plan's queues
    /// ([`WorkerHook`]).
    pub on_worker_plan: Option<WorkerHook>,
    /// Count busy cycles by stage ([`WorkerStatsSnapshot::stages`]): four TSC reads a burst.
    /// Off, the workers run a loop compiled without them.
    pub stage_cycles: bool,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("cores", &self.cores)
            .field("burst", &self.burst)
            .field("busy_poll", &self.busy_poll)
            .field("idle_spin", &self.idle_spin)
            .field("max_sleep", &self.max_sleep)
            .field("idle_wait", &self.idle_wait)
            .field("pool_buffers", &self.pool_buffers)
            .field("on_worker_plan", &self.on_worker_plan.is_some())
            .field("stage_cycles", &self.stage_cycles)
            .finish()
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cores: vec![None],
            burst: DEFAULT_BURST,
            busy_poll: false,
            idle_spin: None,
            max_sleep: Duration::from_micros(100),
            idle_wait: IDLE_WAIT,
            pool_buffers: 16384,
            on_worker_plan: None,
            stage_cycles: false,
        }
    }
}

/// What the engine and its threads share.
pub(super) struct Shared {
    /// One per worker: written on publish and stop to wake a worker sleeping in poll(2).
    pub(super) wakers: Vec<Option<EventFd>>,
    pub(super) plan: ArcSwap<ForwardingPlan>,
    pub(super) generation: AtomicU64,
    pub(super) stop: AtomicBool,
    pub(super) workers: Vec<WorkerStats>,
    pub(super) pool: Pool,
    pub(super) opts: EngineOptions,
    pub(super) tsc_start: u64,
    pub(super) tsc_hz: u64,
}

impl Shared {
    fn wake_all(&self) {
        for w in self.wakers.iter().flatten() {
            let _ = w.write(1);
        }
    }

    fn worker_stats(&self) -> Vec<WorkerStatsSnapshot> {
        let cores = &self.opts.cores;
        self.workers.iter().enumerate().map(|(i, w)| w.snapshot(i, cores[i])).collect()
    }

    /// Seconds since the engine started, the clock of learning and aging.
    #[inline]
    fn now(&self) -> u32 {
        seconds_at(self.tsc_start, self.tsc_hz, cpu::rdtsc())
    }
}

/// Failures of starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("core {core} does not exist or is not available to this process (available: {available:?})")]
    NoSuchCore { core: usize, available: Vec<usize> },
    #[error("burst size must be between 1 and {max}, not {asked}")]
    BadBurst { asked: usize, max: usize },
    #[error("need at least one worker")]
    NoWorkers,
    #[error("buffer pool: {0}")]
    Pool(#[from] crate::buffer::BufferError),
    #[error("cannot start worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot set the control threads' CPU affinity: {0}")]
    Affinity(std::io::Error),
}

/// Cores this process may run on.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids().map(|v| v.into_iter().map(|c| c.id).collect()).unwrap_or_default()
}

/// The cores left to a process's other threads once `workers` are taken: `allowed` less
/// `workers`, or `None` when that leaves nothing or takes nothing (then the other threads keep
/// every allowed core, the workers' included).
pub fn other_cores(allowed: &[usize], workers: &[usize]) -> Option<Vec<usize>> {
    let rest: Vec<usize> = allowed.iter().copied().filter(|c| !workers.contains(c)).collect();
    (!rest.is_empty() && rest.len() < allowed.len()).then_some(rest)
}

/// Runs `start` with the calling thread kept off the workers' cores, then puts the thread's
/// affinity back: the threads `start` spawns (a metrics server) inherit the other cores and so
/// never take a pinned worker's CPU, as OVS keeps its non-PMD threads off the PMD cores. The
/// calling thread itself keeps its cores: EAL, initialised later from it, places its own
/// threads from that affinity. Also returns the cores the spawned threads got, `None` when
/// [`other_cores`] leaves nothing to change, or why the affinity could not be set.
pub fn spawn_off_worker_cores<T>(
    workers: &[usize],
    start: impl FnOnce() -> T,
) -> (T, Result<Option<Vec<usize>>, EngineError>) {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let Some(rest) = other_cores(&available_cores(), workers) else {
        return (start(), Ok(None));
    };
    let this = Pid::from_raw(0);
    let confine = || -> nix::Result<CpuSet> {
        let before = sched_getaffinity(this)?;
        let mut set = CpuSet::new();
        for &c in &rest {
            set.set(c)?;
        }
        sched_setaffinity(this, &set)?;
        Ok(before)
    };
    match confine() {
        Ok(before) => {
            let out = start();
            let restored = sched_setaffinity(this, &before).map_err(|e| EngineError::Affinity(e.into()));
            (out, restored.map(|()| Some(rest)))
        }
        Err(e) => (start(), Err(EngineError::Affinity(e.into()))),
    }
}

/// The running workers.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A read-only handle on a running [`Engine`] for observers on other threads (the metrics and
/// health endpoints): it loads the plan the workers run and reads their counters, and takes
/// no lock that a worker or the control thread takes. It keeps the engine's shared state
/// alive, not its workers.
#[derive(Clone)]
pub struct EngineView {
    shared: Arc<Shared>,
}

impl EngineView {
    /// The plan workers are running (or about to).
    pub fn plan(&self) -> Arc<ForwardingPlan> {
        self.shared.plan.load_full()
    }

    /// Every worker's counters.
    pub fn worker_stats(&self) -> Vec<WorkerStatsSnapshot> {
        self.shared.worker_stats()
    }

    /// TSC ticks per second.
    pub fn tsc_hz(&self) -> u64 {
        self.shared.tsc_hz
    }

    /// Seconds since start on the engine's clock.
    pub fn now(&self) -> u32 {
        self.shared.now()
    }

    /// How long ago each worker finished its last poll. A worker that sleeps in poll(2)
    /// wakes at least every [`EngineOptions::idle_wait`], so an age well above that means a
    /// stalled worker (or a stopped engine).
    pub fn poll_ages(&self) -> Vec<Duration> {
        let now = cpu::rdtsc();
        let hz = self.shared.tsc_hz.max(1) as u128;
        self.shared
            .workers
            .iter()
            .map(|w| {
                // A TSC read on another core may lag this one's: saturate at zero.
                let ticks = now.saturating_sub(w.last_poll_tsc.load(Ordering::Relaxed)) as u128;
                Duration::from_nanos((ticks * 1_000_000_000 / hz).min(u64::MAX as u128) as u64)
            })
            .collect()
    }
}

impl Engine {
    /// Checks the options, then starts one thread per worker and a housekeeping thread that
    /// ages MAC tables once a second.
    pub fn start(opts: EngineOptions, plan: ForwardingPlan) -> Result<Engine, EngineError> {
        if opts.cores.is_empty() {
            return Err(EngineError::NoWorkers);
        }
        if opts.burst == 0 || opts.burst > MAX_BURST {
            return Err(EngineError::BadBurst { asked: opts.burst, max: MAX_BURST });
        }
        let avail = available_cores();
        for c in opts.cores.iter().flatten() {
            if !avail.contains(c) {
                return Err(EngineError::NoSuchCore { core: *c, available: avail });
            }
        }
        let pool = Pool::new("workers", opts.pool_buffers)?;
        let n = opts.cores.len();
        let tsc_start = cpu::rdtsc();
        let shared = Arc::new(Shared {
            wakers: (0..n)
                .map(|_| EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).ok())
                .collect(),
            plan: ArcSwap::from_pointee(plan),
            generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            workers: (0..n)
                .map(|_| WorkerStats { last_poll_tsc: AtomicU64::new(tsc_start), ..Default::default() })
                .collect(),
            pool,
            tsc_start,
            tsc_hz: cpu::hz(),
            opts,
        });
        let mut threads = Vec::new();
        for i in 0..n {
            let sh = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("sy-worker-{i}"))
                .spawn(move || worker_main(i, sh))
                .map_err(EngineError::Spawn)?;
            threads.push(t);
        }
        let sh = shared.clone();
        let t = std::thread::Builder::new()
            .name("sy-housekeeping".into())
            .spawn(move || housekeeping(sh))
            .map_err(EngineError::Spawn)?;
        threads.push(t);
        Ok(Engine { shared, threads })
    }

    /// Publishes a new plan; workers pick it up between bursts. Returns its generation.
    pub fn publish(&self, plan: ForwardingPlan) -> u64 {
        self.shared.plan.store(Arc::new(plan));
        let g = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.wake_all();
        g
    }

    /// The plan workers are running (or about to).
    pub fn plan(&self) -> Arc<ForwardingPlan> {
        self.shared.plan.load_full()
    }

    /// Waits until every worker has applied generation `gen`. False on timeout.
    pub fn wait_applied(&self, gen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.workers.iter().all(|w| w.applied.load(Ordering::Acquire) >= gen) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    pub fn worker_count(&self) -> usize {
        self.shared.workers.len()
    }

    pub fn worker_stats(&self) -> Vec<WorkerStatsSnapshot> {
        self.shared.worker_stats()
    }

    /// A read-only handle for observers on other threads.
    pub fn view(&self) -> EngineView {
        EngineView { shared: self.shared.clone() }
    }

    pub fn clear_worker_stats(&self) {
        for w in &self.shared.workers {
            w.clear();
        }
    }

    /// TSC ticks per second, for turning cycles into time.
    pub fn tsc_hz(&self) -> u64 {
        self.shared.tsc_hz
    }

    /// Seconds since start on the engine's clock (the one learning uses).
    pub fn now(&self) -> u32 {
        self.shared.now()
    }

    /// Stops every worker and waits for them. Each frees what it holds before it exits.
    pub fn stop(mut self) -> Vec<WorkerStatsSnapshot> {
        self.shutdown();
        self.worker_stats()
    }

    /// Stops the workers and waits for them, keeping the engine (its pool among it): for what
    /// must be done between the last burst and the pool's end (frames in a queue no worker
    /// will read again, given back).
    pub fn halt(&mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn housekeeping(sh: Arc<Shared>) {
    let mut last = Instant::now();
    while !sh.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let now = sh.now();
            for b in &sh.plan.load().switch.bridges {
                b.table.age(now);
            }
        }
    }
}

/// Raises this process's open-file limit as far as it may go (the kernel's `nr_open` when the
/// process may raise its hard limit, as root can; the hard limit otherwise): every port holds
/// descriptors (sockets, eventfds, vhost-user memory and kick/call fds), and a node with
/// thousands of VM interfaces needs far more than the usual 1024. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard)
        .min(1 << 20);
    if nr_open > hard && setrlimit(Resource::RLIMIT_NOFILE, nr_open, nr_open).is_ok() {
        return nr_open;
    }
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::other_cores;

    #[test]
    fn other_threads_get_the_cores_the_workers_leave() {
        assert_eq!(other_cores(&[0, 1], &[1]), Some(vec![0]));
        assert_eq!(other_cores(&[0, 1, 2, 3], &[2, 3]), Some(vec![0, 1]));
        // Nothing left, or nothing taken: the other threads keep every core.
        assert_eq!(other_cores(&[0, 1], &[0, 1]), None);
        assert_eq!(other_cores(&[2, 3], &[0]), None);
        assert_eq!(other_cores(&[], &[]), None);
    }
}
