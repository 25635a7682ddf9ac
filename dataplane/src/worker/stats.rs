//! Per-worker counters (as `ovs-appctl dpif-netdev/pmd-stats-show`). A worker adds to its
//! own [`WorkerStats`] once per poll; readers take a [`WorkerStatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// The calling thread's CPU time (user and system) in microseconds; 0 where it cannot be read.
pub(super) fn thread_cpu_us() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |u| {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        us(u.user_time()) + us(u.system_time())
    })
}

/// Counters of one worker.
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
    /// that a health check can tell a stalled worker: see
    /// [`EngineView::poll_ages`](super::EngineView::poll_ages).
    pub last_poll_tsc: AtomicU64,
    /// The last plan generation this worker applied.
    pub(super) applied: AtomicU64,
    /// CPU time (user and system) of the worker thread in its finished poll loops, in
    /// microseconds (`getrusage(RUSAGE_THREAD)`, added when a loop ends): unlike TSC cycles it
    /// leaves out the time the thread waited for a core, so CPU time per frame is the cost of
    /// a frame on a machine shared with other work.
    pub cpu_us: AtomicU64,
    /// Busy cycles by stage (see [`StageCycles`]); counted only with
    /// [`EngineOptions::stage_cycles`](super::EngineOptions::stage_cycles), zero otherwise.
    pub stages: StageCounters,
}

/// [`StageCycles`] as counters, added to once per busy poll.
#[derive(Debug, Default)]
pub struct StageCounters {
    pub rx: AtomicU64,
    pub pipeline: AtomicU64,
    pub tx: AtomicU64,
}

/// TSC cycles of busy polls split by stage: `rx` the RX queues' `rx_burst` calls (the
/// driver's receive and the port's adoption of the frames; empty polls of a busy poll
/// included), `pipeline` what is done to a burst between RX and TX (the L2 pipeline in switch
/// mode; in testpmd's modes the port's RX counters and the rewrite), `tx` the TX queues'
/// `tx_burst` calls (the port's hand-over and the driver's transmit and frees) with the
/// batches' flush around them. What is left of a busy poll's cycles is the worker loop's own
/// (counting, the plan check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StageCycles {
    pub rx: u64,
    pub pipeline: u64,
    pub tx: u64,
}

impl StageCycles {
    /// Adds the stages of one burst from its TSC marks: before RX, after RX, after the
    /// pipeline, after TX.
    #[inline(always)]
    pub(super) fn add_marks(&mut self, [t0, t1, t2, t3]: [u64; 4]) {
        self.rx += t1.wrapping_sub(t0);
        self.pipeline += t2.wrapping_sub(t1);
        self.tx += t3.wrapping_sub(t2);
    }

    /// All three stages.
    pub fn total(&self) -> u64 {
        self.rx + self.pipeline + self.tx
    }
}

impl StageCounters {
    /// Adds one busy poll's stages.
    #[inline]
    pub(super) fn add(&self, s: &StageCycles) {
        self.rx.fetch_add(s.rx, Ordering::Relaxed);
        self.pipeline.fetch_add(s.pipeline, Ordering::Relaxed);
        self.tx.fetch_add(s.tx, Ordering::Relaxed);
    }

    fn snapshot(&self) -> StageCycles {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StageCycles { rx: l(&self.rx), pipeline: l(&self.pipeline), tx: l(&self.tx) }
    }
}

impl WorkerStats {
    /// The counters as they are now, for worker `worker` pinned to `core`.
    pub fn snapshot(&self, worker: usize, core: Option<usize>) -> WorkerStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerStatsSnapshot {
            worker,
            core,
            busy_cycles: l(&self.busy_cycles),
            idle_cycles: l(&self.idle_cycles),
            rx_packets: l(&self.rx_packets),
            forwarded_packets: l(&self.forwarded_packets),
            busy_polls: l(&self.busy_polls),
            idle_polls: l(&self.idle_polls),
            cpu_us: l(&self.cpu_us),
            stages: self.stages.snapshot(),
        }
    }

    /// Sets every counter to zero (the applied generation stays).
    pub fn clear(&self) {
        for a in [
            &self.busy_cycles,
            &self.idle_cycles,
            &self.rx_packets,
            &self.forwarded_packets,
            &self.busy_polls,
            &self.idle_polls,
            &self.cpu_us,
            &self.stages.rx,
            &self.stages.pipeline,
            &self.stages.tx,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
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
    /// See [`WorkerStats::cpu_us`].
    pub cpu_us: u64,
    /// Busy cycles by stage; all zero unless the engine counted them.
    pub stages: StageCycles,
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
    /// CPU time per received packet in nanoseconds (0 when none was received or the CPU
    /// time is not known yet).
    pub fn cpu_ns_per_packet(&self) -> f64 {
        if self.rx_packets == 0 {
            0.0
        } else {
            self.cpu_us as f64 * 1e3 / self.rx_packets as f64
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
