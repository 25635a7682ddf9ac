//! Per-worker counters (as `ovs-appctl dpif-netdev/pmd-stats-show`). A worker adds to its
//! own [`WorkerStats`] once per poll; readers take a [`WorkerStatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one worker, on cache lines of their own (128 bytes: the adjacent-line
/// prefetcher pairs lines), so that the workers' per-poll adds never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
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
