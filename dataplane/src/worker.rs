//! Poll-mode workers: threads, optionally pinned to cores, that each own a set of RX queues and
//! one TX queue on every port, and run bursts through a forwarding mode (the L2 switch, or one
//! of testpmd's modes for benchmarking).
//!
//! Invariants:
//! - The control side never blocks a worker: it publishes a new [`ForwardingPlan`] (an `ArcSwap` store
//!   plus a generation bump) and workers pick it up between bursts, opening queue handles for
//!   ports that appeared and dropping the handles of ports that went away. Ports that did not
//!   change keep their handles, so they lose nothing across a reconfiguration.
//! - A worker that has applied a generation says so ([`Engine::wait_applied`]); once every
//!   worker has, no worker holds a handle of a port that the plan no longer has.
//! - Counters are added once per burst; busy and idle time is counted in TSC cycles.
//! - Idle workers back off (spin, then yield, then sleeps doubling up to a bound) unless busy
//!   polling is asked for; a stop request is seen within one sleep bound.
//! - On stop, every worker frees what it holds (TX batches, cache), so the pool's `in_use`
//!   counts only buffers held by ports.

use crate::buffer::{Pool, PoolCache};
use crate::cpu;
use crate::pipeline::{process_burst, TxBatches};
use crate::port::{Burst, DropTally, PortBackend, RxQueue, TxQueue, DEFAULT_BURST, MAX_BURST};
use crate::switch::{PortId, SwitchConfig};
use crate::wire::{EtherType, MacAddr, MAC_ADDRS_LEN, VLAN_TAG_LEN, VLAN_TCI_OFFSET};
use arc_swap::ArcSwap;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a worker does with the frames it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdMode {
    /// The full L2 pipeline.
    Switch,
    /// Forward unchanged to the egress port the plan pairs with the ingress port (testpmd `io`).
    Io,
    /// Set source to the egress port's MAC and destination to the ingress port's (testpmd `mac`).
    Mac,
    /// Swap source and destination MACs (testpmd `macswap`).
    MacSwap,
    /// Count and free.
    RxOnly,
    /// Generate frames from a template (testpmd `txonly`).
    TxOnly,
    /// Generate frames cycling over MACs and flows (testpmd `flowgen`).
    FlowGen,
}

impl FwdMode {
    pub const ALL: &'static [(&'static str, FwdMode)] = &[
        ("switch", FwdMode::Switch),
        ("io", FwdMode::Io),
        ("mac", FwdMode::Mac),
        ("macswap", FwdMode::MacSwap),
        ("rxonly", FwdMode::RxOnly),
        ("txonly", FwdMode::TxOnly),
        ("flowgen", FwdMode::FlowGen),
    ];

    pub fn parse(s: &str) -> Option<FwdMode> {
        FwdMode::ALL.iter().find(|(n, _)| *n == s).map(|(_, m)| *m)
    }

    pub fn name(self) -> &'static str {
        FwdMode::ALL.iter().find(|(_, m)| *m == self).map_or("?", |(n, _)| n)
    }

    fn generates(self) -> bool {
        matches!(self, FwdMode::TxOnly | FwdMode::FlowGen)
    }
}

/// The frames `txonly` and `flowgen` send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxGen {
    /// Frame length without FCS (at least 60).
    pub frame_len: usize,
    /// Source/destination MAC pairs to cycle over (flowgen).
    pub macs: u32,
    /// UDP flows (source ports) to cycle over (flowgen).
    pub flows: u32,
    /// An 802.1Q tag to put on generated frames.
    pub vlan: Option<u16>,
}

impl Default for TxGen {
    fn default() -> Self {
        TxGen { frame_len: 64, macs: 1, flows: 1, vlan: None }
    }
}

/// The MAC address the `mac` mode and generators give port `p` (as testpmd's defaults).
pub fn port_mac(p: PortId) -> MacAddr {
    let b = p.to_be_bytes();
    MacAddr([0x02, 0, 0, 0, b[0], b[1]])
}

/// Everything the workers need, published as one immutable unit.
pub struct ForwardingPlan {
    pub switch: Arc<SwitchConfig>,
    /// Port backends by [`PortId`].
    pub ports: Vec<Option<Arc<dyn PortBackend>>>,
    /// Per worker: the (port, RX queue) pairs it polls.
    pub rx: Vec<Vec<(PortId, u16)>>,
    pub mode: FwdMode,
    /// For io, mac and macswap: where frames from port i go.
    pub egress: Vec<PortId>,
    pub gen: TxGen,
}

impl ForwardingPlan {
    /// testpmd's default pairing: 0<->1, 2<->3, ...; an odd last port answers itself.
    pub fn paired_egress(n: usize) -> Vec<PortId> {
        (0..n).map(|i| if i ^ 1 < n { (i ^ 1) as PortId } else { i as PortId }).collect()
    }

    /// Explicit placement first (`pinned`: port, RX queue, worker), then every other RX queue
    /// of every port dealt round-robin over the workers. Errors name the entry that cannot be
    /// honoured (a port that is not there, a queue the port does not have, a worker index out
    /// of range).
    pub fn placement(
        ports: &[Option<Arc<dyn PortBackend>>],
        workers: usize,
        pinned: &[(PortId, u16, usize)],
    ) -> Result<Vec<Vec<(PortId, u16)>>, String> {
        let w = workers.max(1);
        let mut rx = vec![Vec::new(); w];
        for &(p, q, wi) in pinned {
            let Some(Some(b)) = ports.get(usize::from(p)) else {
                return Err(format!("{p}:{q}@{wi}: no port {p}"));
            };
            if q >= b.rx_queue_count() {
                return Err(format!("{p}:{q}@{wi}: port {p} has {} RX queue(s)", b.rx_queue_count()));
            }
            if wi >= w {
                return Err(format!("{p}:{q}@{wi}: there are {w} worker(s)"));
            }
            if rx.iter().any(|v: &Vec<(PortId, u16)>| v.contains(&(p, q))) {
                return Err(format!("{p}:{q}@{wi}: queue placed twice"));
            }
            rx[wi].push((p, q));
        }
        let mut k = 0;
        for (id, b) in ports.iter().enumerate() {
            if let Some(b) = b {
                for q in 0..b.rx_queue_count() {
                    let pq = (id as PortId, q);
                    if pinned.iter().any(|&(p, pq2, _)| (p, pq2) == pq) {
                        continue;
                    }
                    rx[k % w].push(pq);
                    k += 1;
                }
            }
        }
        Ok(rx)
    }

    /// Every RX queue of every port, dealt round-robin to `workers` workers.
    pub fn round_robin(ports: &[Option<Arc<dyn PortBackend>>], workers: usize) -> Vec<Vec<(PortId, u16)>> {
        let w = workers.max(1);
        let mut rx = vec![Vec::new(); w];
        let mut k = 0;
        for (id, p) in ports.iter().enumerate() {
            if let Some(p) = p {
                for q in 0..p.rx_queue_count() {
                    rx[k % w].push((id as PortId, q));
                    k += 1;
                }
            }
        }
        rx
    }
}

/// Called on each worker thread when it starts (worker index), e.g. to register the thread
/// with DPDK's EAL so that mempool caches work.
pub type WorkerHook = Arc<dyn Fn(usize) + Send + Sync>;

/// How the workers run.
#[derive(Clone)]
pub struct EngineOptions {
    /// One entry per worker: the core to pin it to, or `None` to leave it unpinned.
    pub cores: Vec<Option<usize>>,
    pub burst: usize,
    /// Poll without backing off (for benchmarks).
    pub busy_poll: bool,
    /// The longest an idle worker sleeps between polls.
    pub max_sleep: Duration,
    /// The longest an idle worker sleeps in poll(2) on its queues' wake descriptors before it
    /// polls again (a frame, a publish or a stop wakes it at once; the bound only matters
    /// for a wake-up that never comes).
    pub idle_wait: Duration,
    /// Buffers in the shared pool.
    pub pool_buffers: usize,
    /// Run on each worker thread before it polls.
    pub on_worker_start: Option<WorkerHook>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("cores", &self.cores)
            .field("burst", &self.burst)
            .field("busy_poll", &self.busy_poll)
            .field("max_sleep", &self.max_sleep)
            .field("idle_wait", &self.idle_wait)
            .field("pool_buffers", &self.pool_buffers)
            .field("on_worker_start", &self.on_worker_start.is_some())
            .finish()
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cores: vec![None],
            burst: DEFAULT_BURST,
            busy_poll: false,
            max_sleep: Duration::from_micros(100),
            idle_wait: IDLE_WAIT,
            pool_buffers: 16384,
            on_worker_start: None,
        }
    }
}

/// Counters of one worker (as `ovs-appctl dpif-netdev/pmd-stats-show`).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub busy_cycles: AtomicU64,
    pub idle_cycles: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Frames passed on: in switch mode every frame handed to the pipeline (which may then
    /// drop or flood it; the ports count what went out), in the other modes the frames the
    /// egress queue accepted.
    pub forwarded_packets: AtomicU64,
    /// Polls that received something.
    pub busy_polls: AtomicU64,
    pub idle_polls: AtomicU64,
    /// TSC value at the end of the worker's last poll (one store per loop iteration), so
    /// that a health check can tell a stalled worker: see [`EngineView::poll_ages`].
    pub last_poll_tsc: AtomicU64,
    applied: AtomicU64,
}

/// A plain copy of [`WorkerStats`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorkerStatsSnapshot {
    pub worker: usize,
    pub core: Option<usize>,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub rx_packets: u64,
    /// See [`WorkerStats::forwarded_packets`].
    pub forwarded_packets: u64,
    pub busy_polls: u64,
    pub idle_polls: u64,
}

impl WorkerStatsSnapshot {
    /// Busy cycles per received packet.
    pub fn cycles_per_packet(&self) -> f64 {
        if self.rx_packets == 0 {
            0.0
        } else {
            self.busy_cycles as f64 / self.rx_packets as f64
        }
    }
    /// Share of cycles spent busy.
    pub fn busy_ratio(&self) -> f64 {
        let t = self.busy_cycles + self.idle_cycles;
        if t == 0 {
            0.0
        } else {
            self.busy_cycles as f64 / t as f64
        }
    }
}

struct Shared {
    /// One per worker: written on publish and stop to wake a worker sleeping in poll(2).
    wakers: Vec<Option<EventFd>>,
    plan: ArcSwap<ForwardingPlan>,
    generation: AtomicU64,
    stop: AtomicBool,
    workers: Vec<WorkerStats>,
    pool: Pool,
    opts: EngineOptions,
    tsc_start: u64,
    tsc_hz: u64,
}

impl Shared {
    fn wake_all(&self) {
        for w in self.wakers.iter().flatten() {
            let _ = w.write(1);
        }
    }

    /// Seconds since the engine started, the clock of learning and aging.
    #[inline]
    fn now(&self) -> u32 {
        seconds_at(self.tsc_start, self.tsc_hz, cpu::rdtsc())
    }
}

/// Whole seconds from TSC value `start` to `tsc` at `hz` ticks a second.
#[inline]
fn seconds_at(start: u64, hz: u64, tsc: u64) -> u32 {
    (tsc.wrapping_sub(start) / hz.max(1)) as u32
}

/// A worker's view of [`Shared::now`], from the TSC value its loop reads anyway: the division
/// is done once a second, not once per poll. The range in which the cached second holds is
/// kept as offsets from the start (as the division sees the TSC), so it is exact for every
/// input, a TSC value just below the start (another core's skew) included.
struct SecondClock {
    now: u32,
    /// The offsets from the start in which `now` holds: [from, until).
    from: u64,
    until: u64,
}

impl SecondClock {
    const UNSET: SecondClock = SecondClock { now: 0, from: u64::MAX, until: 0 };

    /// [`seconds_at`]`(start, hz, tsc)`.
    #[inline]
    fn at(&mut self, start: u64, hz: u64, tsc: u64) -> u32 {
        let off = tsc.wrapping_sub(start);
        if off < self.from || off >= self.until {
            let hz = hz.max(1);
            let q = off / hz;
            self.now = q as u32;
            self.from = q * hz;
            self.until = self.from.saturating_add(hz);
        }
        self.now
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
}

/// Cores this process may run on.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids().map(|v| v.into_iter().map(|c| c.id).collect()).unwrap_or_default()
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
        worker_snapshots(&self.shared)
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

fn worker_snapshots(sh: &Shared) -> Vec<WorkerStatsSnapshot> {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    sh.workers
        .iter()
        .enumerate()
        .map(|(i, w)| WorkerStatsSnapshot {
            worker: i,
            core: sh.opts.cores[i],
            busy_cycles: l(&w.busy_cycles),
            idle_cycles: l(&w.idle_cycles),
            rx_packets: l(&w.rx_packets),
            forwarded_packets: l(&w.forwarded_packets),
            busy_polls: l(&w.busy_polls),
            idle_polls: l(&w.idle_polls),
        })
        .collect()
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
        worker_snapshots(&self.shared)
    }

    /// A read-only handle for observers on other threads.
    pub fn view(&self) -> EngineView {
        EngineView { shared: self.shared.clone() }
    }

    pub fn clear_worker_stats(&self) {
        for w in &self.shared.workers {
            for a in [
                &w.busy_cycles,
                &w.idle_cycles,
                &w.rx_packets,
                &w.forwarded_packets,
                &w.busy_polls,
                &w.idle_polls,
            ] {
                a.store(0, Ordering::Relaxed);
            }
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

struct RxSlot {
    port: PortId,
    queue: u16,
    backend: Arc<dyn PortBackend>,
    handle: Box<dyn RxQueue>,
}

struct Worker {
    idx: usize,
    gen: u64,
    plan: Arc<ForwardingPlan>,
    rx: Vec<RxSlot>,
    /// Assigned (port, queue) pairs not opened yet (another worker still holds them).
    rx_pending: Vec<(PortId, u16)>,
    tx: Vec<Option<Box<dyn TxQueue>>>,
    tx_backends: Vec<Option<Arc<dyn PortBackend>>>,
    batches: TxBatches,
    cache: PoolCache,
    burst: Burst,
    tally: DropTally,
    flow_seq: u64,
    clock: SecondClock,
}

fn same(a: &Arc<dyn PortBackend>, b: &Arc<dyn PortBackend>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Worker {
    fn reload(&mut self, sh: &Shared) {
        let plan = sh.plan.load_full();
        let mine: &[(PortId, u16)] = plan.rx.get(self.idx).map_or(&[], |v| v.as_slice());
        let backend_of = |p: PortId| plan.ports.get(usize::from(p)).and_then(|b| b.clone());
        // Keep RX handles that are still ours and whose backend did not change.
        let old = std::mem::take(&mut self.rx);
        for s in old {
            let keep =
                mine.contains(&(s.port, s.queue)) && backend_of(s.port).is_some_and(|b| same(&b, &s.backend));
            if keep {
                self.rx.push(s);
            }
        }
        self.rx_pending =
            mine.iter().copied().filter(|pq| !self.rx.iter().any(|s| (s.port, s.queue) == *pq)).collect();
        self.open_pending(&plan);
        // TX: one handle per port, reopened when the backend changed.
        let n = plan.ports.len();
        self.batches.discard(&mut self.cache);
        self.batches.resize(plan.switch.port_slots().max(n));
        self.tx.resize_with(n.max(self.tx.len()), || None);
        self.tx_backends.resize_with(n.max(self.tx_backends.len()), || None);
        for i in 0..self.tx.len() {
            let want = plan.ports.get(i).and_then(|b| b.clone());
            let keep = match (&want, &self.tx_backends[i]) {
                (Some(a), Some(b)) => same(a, b),
                (None, None) => true,
                _ => false,
            };
            if !keep {
                if let Some(mut q) = self.tx[i].take() {
                    let _ = q.flush();
                }
                self.tx_backends[i] = None;
                if let Some(b) = want {
                    match b.open_tx(self.idx as u16) {
                        Ok(q) => {
                            self.tx[i] = Some(q);
                            self.tx_backends[i] = Some(b);
                        }
                        Err(e) => tracing::error!(worker = self.idx, error = %e, "cannot open TX queue"),
                    }
                }
            }
        }
        self.plan = plan;
    }

    fn open_pending(&mut self, plan: &ForwardingPlan) {
        let pending = std::mem::take(&mut self.rx_pending);
        for (port, queue) in pending {
            let Some(b) = plan.ports.get(usize::from(port)).and_then(|b| b.clone()) else { continue };
            match b.open_rx(queue) {
                Ok(handle) => self.rx.push(RxSlot { port, queue, backend: b, handle }),
                Err(crate::port::PortError::QueueTaken { .. }) => self.rx_pending.push((port, queue)),
                Err(e) => tracing::error!(worker = self.idx, error = %e, "cannot open RX queue"),
            }
        }
    }

    /// Sends `burst` out of `port` directly (modes other than switch), counting on that port.
    fn send_direct(&mut self, port: PortId) -> usize {
        let n = self.burst.len();
        if n == 0 {
            return 0;
        }
        let bytes: usize = self.burst.iter().map(|b| b.len()).sum();
        let sent = match self.tx.get_mut(usize::from(port)).and_then(|q| q.as_mut()) {
            Some(q) => q.tx_burst(&mut self.burst, &mut self.cache, &mut self.tally),
            None => {
                self.tally.add(crate::switch::DropReason::PortDown, n as u32);
                for b in self.burst.drain(..) {
                    self.cache.free(b);
                }
                0
            }
        };
        if let Some(spec) = self.plan.switch.port(port) {
            spec.stats.tx_packets.fetch_add(sent as u64, Ordering::Relaxed);
            spec.stats.tx_bytes.fetch_add((bytes * sent / n) as u64, Ordering::Relaxed);
            self.tally.flush_into(&spec.stats);
        }
        sent
    }

    /// One poll of every RX queue (or one generated burst per owned port), which starts at TSC
    /// value `tsc`. Returns the frames received (or generated) and the frames sent.
    fn poll(&mut self, sh: &Shared, tsc: u64) -> (usize, usize) {
        let mode = self.plan.mode;
        let burst_size = sh.opts.burst;
        let mut got = 0;
        let mut sent = 0;
        if mode.generates() {
            for k in 0..self.rx.len() {
                let port = self.rx[k].port;
                let n = self.generate(port, burst_size, mode);
                got += n;
                sent += self.send_direct(port);
            }
            return (got, sent);
        }
        let mut now = None;
        for k in 0..self.rx.len() {
            let port = self.rx[k].port;
            let n = self.rx[k].handle.rx_burst(&mut self.cache, &mut self.burst, burst_size, &mut self.tally);
            if !self.tally.is_zero() {
                if let Some(spec) = self.plan.switch.port(port) {
                    self.tally.flush_into(&spec.stats);
                }
            }
            if n == 0 {
                continue;
            }
            got += n;
            match mode {
                FwdMode::Switch => {
                    let now = *now.get_or_insert_with(|| self.clock.at(sh.tsc_start, sh.tsc_hz, tsc));
                    // Field by field: disjoint borrows, no reference count touched per burst.
                    process_burst(
                        &self.plan.switch,
                        port,
                        &mut self.burst,
                        now,
                        &mut self.cache,
                        &mut self.batches,
                        None,
                    );
                    self.batches.flush(&self.plan.switch, &mut self.tx, &mut self.cache);
                    sent += n;
                }
                _ => {
                    if let Some(spec) = self.plan.switch.port(port) {
                        let bytes: usize = self.burst.iter().map(|b| b.len()).sum();
                        spec.stats.rx_packets.fetch_add(n as u64, Ordering::Relaxed);
                        spec.stats.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    let egress = self.plan.egress.get(usize::from(port)).copied().unwrap_or(port);
                    match mode {
                        FwdMode::RxOnly => {
                            for b in self.burst.drain(..) {
                                self.cache.free(b);
                            }
                        }
                        FwdMode::Mac => {
                            let (src, dst) = (port_mac(egress), port_mac(port));
                            for b in self.burst.iter_mut() {
                                let d = b.data_mut();
                                if d.len() >= MAC_ADDRS_LEN {
                                    d[0..6].copy_from_slice(&dst.0);
                                    d[6..MAC_ADDRS_LEN].copy_from_slice(&src.0);
                                }
                            }
                            sent += self.send_direct(egress);
                        }
                        FwdMode::MacSwap => {
                            for b in self.burst.iter_mut() {
                                let d = b.data_mut();
                                if d.len() >= MAC_ADDRS_LEN {
                                    let mut a = [0u8; 6];
                                    a.copy_from_slice(&d[0..6]);
                                    d.copy_within(6..MAC_ADDRS_LEN, 0);
                                    d[6..MAC_ADDRS_LEN].copy_from_slice(&a);
                                }
                            }
                            sent += self.send_direct(egress);
                        }
                        _ => sent += self.send_direct(egress),
                    }
                }
            }
        }
        (got, sent)
    }

    /// Fills the burst with generated frames for `port`.
    fn generate(&mut self, port: PortId, n: usize, mode: FwdMode) -> usize {
        let g = &self.plan.gen;
        let len = g.frame_len.clamp(60, crate::buffer::DATA_ROOM);
        let egress = self.plan.egress.get(usize::from(port)).copied().unwrap_or(port);
        let mut made = 0;
        for _ in 0..n {
            let Some(mut b) = self.cache.alloc() else { break };
            let seq = self.flow_seq;
            self.flow_seq = self.flow_seq.wrapping_add(1);
            let (mac_i, flow_i) = if mode == FwdMode::FlowGen {
                ((seq % u64::from(g.macs.max(1))) as u32, (seq % u64::from(g.flows.max(1))) as u32)
            } else {
                (0, 0)
            };
            let frame = build_udp_frame(port_mac(port), port_mac(egress), mac_i, flow_i, g.vlan, len);
            // Cannot fail: len <= DATA_ROOM.
            let _ = b.extend_from_slice(&frame[..len]);
            self.burst.push(b);
            made += 1;
        }
        made
    }

    /// Sleeps in poll(2) on every RX queue's wake descriptor and this worker's own eventfd,
    /// for at most `timeout`. Returns false without sleeping when some queue cannot be waited
    /// on (no descriptor) or already has frames.
    fn sleep_on_queues(&mut self, sh: &Shared, timeout: Duration) -> bool {
        if self.plan.mode.generates()
            || self.rx.len() > MAX_SLEEP_QUEUES
            || self.rx.iter().any(|s| s.handle.wake_fd().is_none())
        {
            return false;
        }
        let mut armed = 0;
        let mut ok = true;
        for s in self.rx.iter_mut() {
            if !s.handle.arm_wakeup() {
                ok = false;
                break;
            }
            armed += 1;
        }
        if ok {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.rx.len() + 1);
            for s in &self.rx {
                if let Some(fd) = s.handle.wake_fd() {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
            }
            if let Some(w) = &sh.wakers[self.idx] {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
            }
            let ms = timeout.as_millis().min(u128::from(u16::MAX)) as u16;
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
        }
        for s in self.rx.iter_mut().take(armed) {
            s.handle.disarm_wakeup();
        }
        if let Some(w) = &sh.wakers[self.idx] {
            let _ = w.read();
        }
        true
    }

    fn release_all(&mut self) {
        self.batches.discard(&mut self.cache);
        for b in self.burst.drain(..) {
            self.cache.free(b);
        }
        for q in self.tx.iter_mut().flatten() {
            let _ = q.flush();
        }
        self.rx.clear();
        self.tx.clear();
        self.tx_backends.clear();
    }
}

/// A UDP/IPv4 frame of `len` bytes: MACs varied by `mac_i`, UDP source port by `flow_i`.
fn build_udp_frame(
    src: MacAddr,
    dst: MacAddr,
    mac_i: u32,
    flow_i: u32,
    vlan: Option<u16>,
    len: usize,
) -> [u8; 2048] {
    let mut f = [0u8; 2048];
    let mut s = src.0;
    let mut d = dst.0;
    let vary = |m: &mut [u8; 6]| {
        let v = u32::from_be_bytes([m[2], m[3], m[4], m[5]]) ^ (mac_i << 16);
        m[2..6].copy_from_slice(&v.to_be_bytes());
    };
    vary(&mut s);
    vary(&mut d);
    f[0..6].copy_from_slice(&d);
    f[6..MAC_ADDRS_LEN].copy_from_slice(&s);
    let mut o = MAC_ADDRS_LEN;
    if let Some(v) = vlan {
        f[o..o + 2].copy_from_slice(&EtherType::VLAN.to_be_bytes());
        f[VLAN_TCI_OFFSET..VLAN_TCI_OFFSET + 2].copy_from_slice(&(v & 0x0fff).to_be_bytes());
        o += VLAN_TAG_LEN;
    }
    f[o..o + 2].copy_from_slice(&EtherType::IPV4.to_be_bytes());
    let ip = o + 2;
    let ip_len = (len.saturating_sub(ip)).max(28) as u16;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
    f[ip + 8] = 64;
    f[ip + 9] = 17;
    f[ip + 12..ip + 16].copy_from_slice(&[198, 18, 0, 1]);
    f[ip + 16..ip + 20].copy_from_slice(&[198, 19, 0, 1]);
    let mut sum = 0u32;
    for i in (ip..ip + 20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([f[i], f[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[ip + 10..ip + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = ip + 20;
    f[udp..udp + 2].copy_from_slice(&(1024u16.wrapping_add(flow_i as u16)).to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&1024u16.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

/// The longest a worker sleeps in poll(2) before it looks at the stop flag and the plan again
/// (publish and stop also wake it at once), unless [`EngineOptions::idle_wait`] says otherwise.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A worker with more RX queues than this backs off with short sleeps instead of poll(2)
/// over all their descriptors. Sleeping in poll(2) is far cheaper than polling every queue:
/// with 500 idle AF_PACKET ports the process used 45% of a core at a limit of 256 (short
/// sleeps) and 11% with this one (benches/afpacket-scale.sh, docs/benchmarks.md).
const MAX_SLEEP_QUEUES: usize = 4096;

fn worker_main(idx: usize, sh: Arc<Shared>) {
    if let Some(core) = sh.opts.cores[idx] {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(worker = idx, core, "could not pin worker to core");
        }
    }
    if let Some(hook) = &sh.opts.on_worker_start {
        hook(idx);
    }
    let plan = sh.plan.load_full();
    let mut w = Worker {
        idx,
        gen: 0,
        batches: TxBatches::new(plan.switch.port_slots()),
        plan,
        rx: Vec::new(),
        rx_pending: Vec::new(),
        tx: Vec::new(),
        tx_backends: Vec::new(),
        cache: sh.pool.cache(),
        burst: Burst::new(),
        tally: DropTally::default(),
        flow_seq: 0,
        clock: SecondClock::UNSET,
    };
    let stats = &sh.workers[idx];
    let mut idle_polls = 0u32;
    let mut sleep = Duration::from_micros(1);
    let mut last_retry = Instant::now();
    let mut t_prev = cpu::rdtsc();
    while !sh.stop.load(Ordering::Acquire) {
        // When the poll starts (the clock of learning): when the last one ended, unless a
        // reload or the opening of ports took time in between.
        let mut poll_tsc = t_prev;
        let g = sh.generation.load(Ordering::Acquire);
        if g != w.gen {
            w.reload(&sh);
            w.gen = g;
            stats.applied.store(g, Ordering::Release);
            poll_tsc = cpu::rdtsc();
        }
        if !w.rx_pending.is_empty() && last_retry.elapsed() > Duration::from_millis(1) {
            let plan = w.plan.clone();
            w.open_pending(&plan);
            last_retry = Instant::now();
            poll_tsc = cpu::rdtsc();
        }
        let (got, sent) = w.poll(&sh, poll_tsc);
        let t_now = cpu::rdtsc();
        let dt = t_now.wrapping_sub(t_prev);
        t_prev = t_now;
        stats.last_poll_tsc.store(t_now, Ordering::Relaxed);
        if got > 0 {
            stats.busy_cycles.fetch_add(dt, Ordering::Relaxed);
            stats.busy_polls.fetch_add(1, Ordering::Relaxed);
            stats.rx_packets.fetch_add(got as u64, Ordering::Relaxed);
            stats.forwarded_packets.fetch_add(sent as u64, Ordering::Relaxed);
            idle_polls = 0;
            sleep = Duration::from_micros(1);
            continue;
        }
        stats.idle_cycles.fetch_add(dt, Ordering::Relaxed);
        stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        if sh.opts.busy_poll {
            std::hint::spin_loop();
            continue;
        }
        idle_polls = idle_polls.saturating_add(1);
        if idle_polls < 2000 {
            std::hint::spin_loop();
        } else if idle_polls < 2100 {
            std::thread::yield_now();
        } else if idle_polls < 2200 || !w.rx_pending.is_empty() || !w.sleep_on_queues(&sh, sh.opts.idle_wait)
        {
            // Queues that cannot wake us (or a short grace period): short, growing sleeps.
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(sh.opts.max_sleep);
        }
        // Time spent backing off counts as idle too.
        let t_after = cpu::rdtsc();
        stats.idle_cycles.fetch_add(t_after.wrapping_sub(t_prev), Ordering::Relaxed);
        t_prev = t_after;
    }
    w.release_all();
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
    use super::*;

    #[test]
    fn second_clock_agrees_with_the_division() {
        // A TSC below and above 2^32 Hz, none, and one tick a second.
        for hz in [2_596_000_000u64, 5_000_000_000, 0, 1] {
            let start = 1_000_003u64;
            let mut clock = SecondClock::UNSET;
            // Just below the start (another core's skew), then forwards by uneven steps across
            // many second boundaries, exactly on them, and back.
            let mut ticks = vec![start - 1, start, start + 1000, start + hz / 2, start - 1];
            ticks.extend((0..4000u64).map(|i| start + i * 7_919_113 * 3));
            ticks.extend((0..5).map(|s| start + s * hz));
            ticks.extend((1..5).map(|s| start + s * hz - 1));
            ticks.extend([start + 10 * hz, start + 2 * hz, start, start + 30 * hz + 5, u64::MAX, 0]);
            for t in ticks {
                assert_eq!(clock.at(start, hz, t), seconds_at(start, hz, t), "hz {hz} tsc {t}");
            }
        }
    }
}
