//! One worker thread: its loop (pick up a new plan, poll, count, back off when idle) and the
//! queue handles it owns. Invariant: the worker holds RX and TX handles only of ports in the
//! plan it last applied, and on stop frees every buffer it holds.

use super::backoff::{naps_for, slice_for, spin_for, Backoff};
use super::clock::SecondClock;
use super::engine::Shared;
use super::stats::{thread_cpu_us, StageCycles};
use super::{ForwardingPlan, FwdMode};
use crate::buffer::PoolCache;
use crate::cpu;
use crate::pipeline::{process_burst, TxBatches};
use crate::port::{Burst, DropTally, PortBackend, PortError, RxCtx, RxQueue, TxQueue};
use crate::switch::{DropReason, PortId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An RX queue a worker polls, with the backend it was opened on.
pub(super) struct RxSlot {
    pub(super) port: PortId,
    queue: u16,
    backend: Arc<dyn PortBackend>,
    pub(super) handle: Box<dyn RxQueue>,
}

pub(super) struct Worker {
    pub(super) idx: usize,
    gen: u64,
    pub(super) plan: Arc<ForwardingPlan>,
    pub(super) rx: Vec<RxSlot>,
    /// Assigned (port, queue) pairs not opened yet (another worker still holds them).
    pub(super) rx_pending: Vec<(PortId, u16)>,
    tx: Vec<Option<Box<dyn TxQueue>>>,
    tx_backends: Vec<Option<Arc<dyn PortBackend>>>,
    batches: TxBatches,
    pub(super) cache: PoolCache,
    pub(super) burst: Burst,
    tally: DropTally,
    pub(super) flow_seq: u64,
    clock: SecondClock,
    /// This poll's stages so far (with stage counting on).
    pub(super) stages: StageCycles,
}

fn same(a: &Arc<dyn PortBackend>, b: &Arc<dyn PortBackend>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

thread_local! {
    /// Set on a worker thread for its whole life ([`on_worker_thread`]).
    static ON_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a forwarding worker: a port backend whose drop would close a
/// device (a call that may wait on the locks of another device's opening) hands that work to
/// the control thread when dropped here.
pub fn on_worker_thread() -> bool {
    ON_WORKER.with(|w| w.get())
}

/// The body of worker thread `idx`, until the engine stops.
pub(super) fn worker_main(idx: usize, sh: Arc<Shared>) {
    ON_WORKER.with(|w| w.set(true));
    if let Some(core) = sh.opts.cores[idx] {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(worker = idx, core, "could not pin worker to core");
        }
    }
    crate::switch::set_counter_shard(idx);
    if let Some(hook) = &sh.opts.on_worker_plan {
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
        stages: StageCycles::default(),
    };
    if sh.opts.stage_cycles {
        poll_loop::<true>(&mut w, &sh);
    } else {
        poll_loop::<false>(&mut w, &sh);
    }
    w.release_all();
}

/// The worker thread's scheduler slice as last set ([`slice_for`]; a thread starts with the
/// default): a system call only when the worker starts or stops napping.
struct Slice {
    naps: Option<bool>,
}

impl Slice {
    fn set(&mut self, naps: bool) {
        if self.naps == Some(naps) {
            return;
        }
        self.naps = Some(naps);
        if let Err(e) = cpu::set_slice(slice_for(naps)) {
            // Only the wake-up latency of naps suffers; the worker works as before.
            tracing::debug!(error = %e, "worker: scheduler slice not set");
        }
    }
}

/// The worker's loop until the engine stops; with `STAGES` it also counts busy cycles by
/// stage ([`StageCycles`]), compiled out otherwise.
fn poll_loop<const STAGES: bool>(w: &mut Worker, sh: &Shared) {
    let stats = &sh.workers[w.idx];
    let cpu_start = thread_cpu_us();
    let (spin, naps) = w.idle_mode(sh);
    let mut backoff = Backoff::new(spin, naps);
    let mut slice = Slice { naps: Some(false) };
    slice.set(naps);
    let mut last_retry = Instant::now();
    let mut t_prev = cpu::rdtsc();
    while !sh.stop.load(Ordering::Acquire) {
        // When the poll starts (the clock of learning): when the last one ended, unless a
        // reload or the opening of ports took time in between.
        let mut poll_tsc = t_prev;
        let g = sh.generation.load(Ordering::Acquire);
        if g != w.gen {
            w.reload(sh);
            w.gen = g;
            stats.applied.store(g, Ordering::Release);
            let (spin, naps) = w.idle_mode(sh);
            backoff.set_queues(spin, naps);
            slice.set(naps);
            poll_tsc = cpu::rdtsc();
        }
        if !w.rx_pending.is_empty() && last_retry.elapsed() > Duration::from_millis(1) {
            let plan = w.plan.clone();
            w.open_pending(&plan);
            let (spin, naps) = w.idle_mode(sh);
            backoff.set_queues(spin, naps);
            slice.set(naps);
            last_retry = Instant::now();
            poll_tsc = cpu::rdtsc();
        }
        let (got, sent) = w.poll::<STAGES>(sh, poll_tsc);
        let t_now = cpu::rdtsc();
        let dt = t_now.wrapping_sub(t_prev);
        t_prev = t_now;
        stats.last_poll_tsc.store(t_now, Ordering::Relaxed);
        if got > 0 {
            stats.busy_cycles.fetch_add(dt, Ordering::Relaxed);
            stats.busy_polls.fetch_add(1, Ordering::Relaxed);
            stats.rx_packets.fetch_add(got as u64, Ordering::Relaxed);
            stats.forwarded_packets.fetch_add(sent as u64, Ordering::Relaxed);
            if STAGES {
                stats.stages.add(&w.stages);
                w.stages = StageCycles::default();
            }
            backoff.busy(t_now);
            continue;
        }
        stats.idle_cycles.fetch_add(dt, Ordering::Relaxed);
        stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        if STAGES {
            // An empty poll's RX time is idle time.
            w.stages = StageCycles::default();
        }
        if !backoff.idle(&sh.opts, t_now, |timeout| w.sleep_on_queues(sh, timeout)) {
            continue;
        }
        // Time spent backing off counts as idle too.
        let t_after = cpu::rdtsc();
        stats.idle_cycles.fetch_add(t_after.wrapping_sub(t_prev), Ordering::Relaxed);
        t_prev = t_after;
    }
    stats.cpu_us.fetch_add(thread_cpu_us().saturating_sub(cpu_start), Ordering::Relaxed);
}

/// A TSC mark for stage counting; 0 (and no read) without it.
#[inline(always)]
pub(super) fn stage_mark<const STAGES: bool>() -> u64 {
    if STAGES {
        cpu::rdtsc()
    } else {
        0
    }
}

impl Worker {
    /// This worker's idle spin, from the options or its open RX queues ([`spin_for`]), and
    /// whether it naps instead of yielding ([`naps_for`]).
    fn idle_mode(&self, sh: &Shared) -> (Duration, bool) {
        (
            spin_for(&sh.opts, self.rx.iter().map(|s| s.handle.spin_when_idle())),
            naps_for(self.rx.iter().map(|s| s.handle.nap_while_busy())),
        )
    }

    fn reload(&mut self, sh: &Shared) {
        // Before this plan's queues are opened: its ports may need what the hook sets up
        // (a DPDK port brings EAL up after the worker started; the worker then registers).
        if let Some(hook) = &sh.opts.on_worker_plan {
            hook(self.idx);
        }
        let plan = sh.plan.load_full();
        let mine: &[(PortId, u16)] = plan.rx.get(self.idx).map_or(&[], |v| v.as_slice());
        let backend_of = |p: PortId| plan.ports.get(usize::from(p)).and_then(|b| b.clone());
        // Keep RX handles that are still ours and whose backend did not change. Sets, not
        // scans: a worker may own tens of thousands of queues, and a reload must stay linear.
        let wanted: std::collections::HashSet<(PortId, u16)> = mine.iter().copied().collect();
        let old = std::mem::take(&mut self.rx);
        for s in old {
            let keep = wanted.contains(&(s.port, s.queue))
                && backend_of(s.port).is_some_and(|b| same(&b, &s.backend));
            if keep {
                self.rx.push(s);
            }
        }
        let kept: std::collections::HashSet<(PortId, u16)> =
            self.rx.iter().map(|s| (s.port, s.queue)).collect();
        self.rx_pending = mine.iter().copied().filter(|pq| !kept.contains(pq)).collect();
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
                Err(PortError::QueueTaken { .. }) => self.rx_pending.push((port, queue)),
                Err(e) => tracing::error!(worker = self.idx, error = %e, "cannot open RX queue"),
            }
        }
    }

    /// One poll of every RX queue (or one generated burst per owned port), which starts at TSC
    /// value `tsc`. Returns the frames received (or generated) and the frames sent.
    fn poll<const STAGES: bool>(&mut self, sh: &Shared, tsc: u64) -> (usize, usize) {
        match self.plan.mode {
            FwdMode::Switch => self.poll_switch::<STAGES>(sh, tsc),
            mode @ (FwdMode::TxOnly | FwdMode::FlowGen) => self.poll_generate(mode, sh.opts.burst),
            mode @ (FwdMode::Io | FwdMode::Mac | FwdMode::MacSwap | FwdMode::RxOnly) => {
                self.poll_testpmd::<STAGES>(mode, sh.opts.burst)
            }
        }
    }

    /// One poll of every RX queue through the L2 pipeline; "sent" counts every frame handed
    /// to it.
    fn poll_switch<const STAGES: bool>(&mut self, sh: &Shared, tsc: u64) -> (usize, usize) {
        let mut now = None;
        let (mut got, mut sent) = (0, 0);
        for k in 0..self.rx.len() {
            let Some((port, n, t0, t1)) = self.rx_timed::<STAGES>(k, sh.opts.burst) else { continue };
            got += n;
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
            let t2 = stage_mark::<STAGES>();
            self.batches.flush(&self.plan.switch, &mut self.tx, &mut self.cache);
            if STAGES {
                self.stages.add_marks([t0, t1, t2, cpu::rdtsc()]);
            }
            sent += n;
        }
        (got, sent)
    }

    /// [`Self::rx_burst`] as the first stage of a poll: `None` for an empty poll (whose
    /// cycles, with `STAGES`, count as RX), else the port, the frames and the stage marks
    /// before and after the receive.
    #[inline(always)]
    pub(super) fn rx_timed<const STAGES: bool>(
        &mut self,
        k: usize,
        burst_size: usize,
    ) -> Option<(PortId, usize, u64, u64)> {
        let t0 = stage_mark::<STAGES>();
        let (port, n) = self.rx_burst(k, burst_size);
        if n == 0 {
            if STAGES {
                self.stages.rx += cpu::rdtsc().wrapping_sub(t0);
            }
            return None;
        }
        Some((port, n, t0, stage_mark::<STAGES>()))
    }

    /// Receives a burst from RX slot `k` into `self.burst`, counting on its port what the
    /// queue dropped. Returns the port and the frames received.
    #[inline(always)]
    pub(super) fn rx_burst(&mut self, k: usize, burst_size: usize) -> (PortId, usize) {
        let port = self.rx[k].port;
        let rx = RxCtx::new(&mut self.cache, &mut self.tally);
        let n = self.rx[k].handle.rx_burst(rx, &mut self.burst, burst_size);
        if !self.tally.is_zero() {
            if let Some(spec) = self.plan.switch.port(port) {
                self.tally.flush_into(&spec.stats);
            }
        }
        (port, n)
    }

    /// Sends `burst` out of `port` directly (modes other than switch), counting on that port.
    pub(super) fn send_direct(&mut self, port: PortId) -> usize {
        let n = self.burst.len();
        if n == 0 {
            return 0;
        }
        let bytes: usize = self.burst.iter().map(|b| b.len()).sum();
        let sent = match self.tx.get_mut(usize::from(port)).and_then(|q| q.as_mut()) {
            Some(q) => q.tx_burst(&mut self.burst, &mut self.cache, &mut self.tally),
            None => {
                self.tally.add(DropReason::PortDown, n as u32);
                for b in self.burst.drain(..) {
                    self.cache.free(b);
                }
                0
            }
        };
        if let Some(spec) = self.plan.switch.port(port) {
            spec.stats.add_tx(sent as u64, (bytes * sent / n) as u64);
            self.tally.flush_into(&spec.stats);
        }
        sent
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
