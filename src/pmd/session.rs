//! The session: the ports, the engine while it runs, and the counters kept across runs.

use super::args::Setup;
use super::report::{add_worker, Mark};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::{BridgeConfig, Config};
use switchyard_dataplane::port::PortBackend;
use switchyard_dataplane::switch::{PortStatsSnapshot, SwitchConfig};
use switchyard_dataplane::worker::{
    Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen, WorkerStatsSnapshot,
};
use switchyard_ports::factory::{open_port, PortContext};

/// The ports, the engine when it runs, and the counters kept across runs.
pub(super) struct Session {
    pub(super) setup_opts: EngineOptions,
    /// RX queue placement (explicit entries first, then round-robin), fixed at open.
    pub(super) rx: Vec<Vec<(u16, u16)>>,
    pub(super) specs: Vec<String>,
    pub(super) switch: Arc<SwitchConfig>,
    pub(super) ports: Vec<Option<Arc<dyn PortBackend>>>,
    pub(super) ring_names: Vec<String>,
    pub(super) mode: FwdMode,
    pub(super) gen: TxGen,
    pub(super) engine: Option<Engine>,
    /// Every pool an engine ran with (one per `start`).
    pub(super) pools: Vec<Pool>,
    pub(super) tsc_hz: u64,
    /// Running time since the port counters were last cleared.
    pub(super) run_time: Duration,
    pub(super) started: Option<Instant>,
    /// Port counters at the last `start` (for `show fwd stats`).
    pub(super) fwd_base: Vec<PortStatsSnapshot>,
    /// Port counters and time of the last periodic print / `show port stats`.
    pub(super) period_mark: (Instant, Vec<Mark>),
    pub(super) show_mark: (Instant, Vec<Mark>),
    /// Worker counters at the last periodic print (of the running engine).
    pub(super) period_workers: Vec<WorkerStatsSnapshot>,
    /// Worker counters of finished runs (per worker), since the last clear.
    pub(super) worker_totals: Vec<WorkerStatsSnapshot>,
    /// How long the last stop took.
    pub(super) last_stop: Option<Duration>,
}

impl Session {
    pub(super) fn open(setup: &Setup) -> Result<Session, String> {
        let cfg = Config {
            bridges: vec![BridgeConfig {
                mac_table_size: Some(setup.mac_table_size),
                conntrack_size: setup.conntrack_size,
                ..BridgeConfig::new("pmd", setup.ports.clone())
            }],
        };
        let switch = SwitchConfig::compile(&cfg, None).map_err(|e| format!("configuration: {e}"))?;
        // With `--features dpdk` the context has EAL options too (their defaults).
        #[allow(clippy::needless_update)]
        let ctx = PortContext {
            workers: setup.opts.cores.len() as u16,
            dpdk_mbufs: setup.mbufs,
            ..Default::default()
        };
        #[cfg(feature = "dpdk")]
        let ctx = {
            let mut ctx = ctx;
            ctx.eal.no_huge = setup.no_huge.then_some(true);
            ctx
        };
        // Without DPDK there is no EAL to tell.
        #[cfg(not(feature = "dpdk"))]
        let _ = setup.no_huge;
        let mut ports: Vec<Option<Arc<dyn PortBackend>>> = vec![None; switch.port_slots()];
        for (pc, spec) in setup.ports.iter().zip(&setup.specs) {
            let id = switch.by_name[&pc.name];
            let p = open_port(pc, &ctx).map_err(|e| format!("cannot open port {} ({spec}): {e}", pc.name))?;
            ports[usize::from(id)] = Some(p);
        }
        let n = setup.ports.len();
        // Port indices in --rxq-affinity are positions on the command line; map to port ids.
        let pinned: Vec<(u16, u16, usize)> = setup
            .rxq_affinity
            .iter()
            .map(|&(p, q, w)| (switch.by_name[&setup.ports[usize::from(p)].name], q, w))
            .collect();
        let rx = ForwardingPlan::placement(&ports, setup.opts.cores.len(), &pinned)
            .map_err(|e| format!("--rxq-affinity: {e}"))?;
        let now = Instant::now();
        let s = Session {
            rx,
            setup_opts: setup.opts.clone(),
            specs: setup.specs.clone(),
            ring_names: setup.ports.iter().filter_map(|p| p.ring.clone()).collect(),
            switch: Arc::new(switch),
            ports,
            mode: setup.mode,
            gen: setup.gen.clone(),
            engine: None,
            pools: Vec::new(),
            tsc_hz: switchyard_dataplane::cpu::hz(),
            run_time: Duration::ZERO,
            started: None,
            fwd_base: Vec::new(),
            period_mark: (now, vec![Mark::default(); n]),
            show_mark: (now, vec![Mark::default(); n]),
            period_workers: Vec::new(),
            worker_totals: Vec::new(),
            last_stop: None,
        };
        Ok(s)
    }

    pub(super) fn port_stats(&self) -> Vec<PortStatsSnapshot> {
        self.switch.ports.iter().flatten().map(|p| p.stats.snapshot()).collect()
    }

    pub(super) fn marks(&self) -> Vec<Mark> {
        self.port_stats().iter().map(Mark::of).collect()
    }

    pub(super) fn plan(&self) -> ForwardingPlan {
        let workers = self.setup_opts.cores.len();
        ForwardingPlan {
            switch: self.switch.clone(),
            ports: self.ports.clone(),
            rx: if self.rx.len() == workers {
                self.rx.clone()
            } else {
                ForwardingPlan::round_robin(&self.ports, workers)
            },
            mode: self.mode,
            egress: ForwardingPlan::paired_egress(self.ports.len()),
            gen: self.gen.clone(),
        }
    }

    pub(super) fn running(&self) -> bool {
        self.engine.is_some()
    }

    pub(super) fn start(&mut self) -> Result<(), String> {
        if self.running() {
            return Ok(());
        }
        let engine =
            Engine::start(self.setup_opts.clone(), self.plan()).map_err(|e| format!("cannot start: {e}"))?;
        self.tsc_hz = engine.tsc_hz();
        self.pools.push(engine.pool().clone());
        self.engine = Some(engine);
        let now = Instant::now();
        self.started = Some(now);
        self.fwd_base = self.port_stats();
        self.period_mark = (now, self.marks());
        self.period_workers = Vec::new();
        Ok(())
    }

    /// Stops the workers (if running) and returns what they counted in this run.
    pub(super) fn stop(&mut self) -> Option<Vec<WorkerStatsSnapshot>> {
        let engine = self.engine.take()?;
        let t0 = Instant::now();
        if let Some(s) = self.started.take() {
            self.run_time += t0 - s;
        }
        let ws = engine.stop();
        self.last_stop = Some(t0.elapsed());
        if self.worker_totals.len() < ws.len() {
            self.worker_totals.resize_with(ws.len(), Default::default);
        }
        for (t, w) in self.worker_totals.iter_mut().zip(&ws) {
            t.worker = w.worker;
            t.core = w.core;
            add_worker(t, w);
        }
        Some(ws)
    }

    pub(super) fn set_fwd(&mut self, mode: FwdMode) -> Result<(), String> {
        self.mode = mode;
        if let Some(e) = &self.engine {
            let g = e.publish(self.plan());
            if !e.wait_applied(g, Duration::from_secs(1)) {
                return Err("the workers did not take the new mode within 1 s".into());
            }
        }
        Ok(())
    }

    pub(super) fn clear(&mut self) {
        for p in self.switch.ports.iter().flatten() {
            p.stats.clear();
        }
        if let Some(e) = &self.engine {
            e.clear_worker_stats();
        }
        self.period_workers.clear();
        self.worker_totals.clear();
        self.run_time = Duration::ZERO;
        let now = Instant::now();
        if self.started.is_some() {
            self.started = Some(now);
        }
        let zero = vec![Mark::default(); self.specs.len()];
        self.fwd_base = self.port_stats();
        self.period_mark = (now, zero.clone());
        self.show_mark = (now, zero);
    }
}
