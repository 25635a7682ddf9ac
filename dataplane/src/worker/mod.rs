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
//! - Idle workers back off unless busy polling is asked for, but only after a sustained idle
//!   period ([`EngineOptions::idle_spin`] without a frame): they spin until then, then yield,
//!   then sleep; a stop request is seen within one sleep bound.
//! - On stop, every worker frees what it holds (TX batches, cache), so the pool's `in_use`
//!   counts only buffers held by ports.
//!
//! The pieces: [`engine`] starts, feeds and stops the threads; [`placement`] deals RX queues
//! to workers; `thread` is one worker's loop and its queue handles; `modes` and `generator`
//! are testpmd's forwarding modes; `backoff` is what an idle worker does; `clock` is the
//! seconds clock of learning; `stats` the per-worker counters.

mod backoff;
mod clock;
pub mod engine;
mod generator;
mod modes;
pub mod placement;
mod stats;
mod thread;

pub use engine::{
    available_cores, other_cores, raise_fd_limit, spawn_off_worker_cores, Engine, EngineError, EngineOptions,
    EngineView, WorkerHook,
};
pub use generator::TxGen;
pub use modes::port_mac;
pub use placement::{Deal, PlacementError};
pub use stats::{StageCycles, WorkerStats, WorkerStatsSnapshot};
pub use thread::on_worker_thread;

use crate::port::PortBackend;
use crate::switch::{PortId, SwitchConfig};
use std::sync::Arc;

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

    /// [`placement::place_rx`] with testpmd's dealing: explicit placement first (`pinned`:
    /// port, RX queue, worker), then every other RX queue round-robin over the workers.
    pub fn placement(
        ports: &[Option<Arc<dyn PortBackend>>],
        workers: usize,
        pinned: &[(PortId, u16, usize)],
    ) -> Result<Vec<Vec<(PortId, u16)>>, PlacementError> {
        placement::place_rx(ports, workers, pinned, Deal::RoundRobin)
    }

    /// Every RX queue of every port, dealt round-robin to `workers` workers.
    pub fn round_robin(ports: &[Option<Arc<dyn PortBackend>>], workers: usize) -> Vec<Vec<(PortId, u16)>> {
        placement::deal_all(ports, workers, Deal::RoundRobin)
    }
}
