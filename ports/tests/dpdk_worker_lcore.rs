#![cfg(feature = "dpdk")]
//! A worker thread that started before EAL (as `run`'s do: its engine starts with an empty
//! plan, and EAL comes up with the first DPDK port a reconcile opens) is registered with EAL
//! by the factory's worker hook when it takes up the plan with that port, before it polls the
//! port's queues, so that the mempool's per-lcore cache serves it; later plans keep its one
//! lcore id, and the id goes back to EAL when the worker ends.

#[path = "../../bindings/tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_bindings::eal::{lcore_id, LCORE_ID_ANY};
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::PortBackend;
use switchyard_dataplane::worker::{Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen};
use switchyard_dataplane::SwitchConfig;
use switchyard_ports::dpdk::{DpdkPort, DpdkPortConfig};

const WAIT: Duration = Duration::from_secs(10);

/// A plan with `port` alone on a bridge, its RX queue on worker 0.
fn plan_with(port: Arc<dyn PortBackend>) -> ForwardingPlan {
    let yaml = "bridges:\n- name: br\n  ports:\n  - {name: wl0}\n";
    let switch = Arc::new(SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap());
    let ports = vec![Some(port)];
    ForwardingPlan {
        rx: ForwardingPlan::round_robin(&ports, 1),
        egress: ForwardingPlan::paired_egress(ports.len()),
        switch,
        ports,
        mode: FwdMode::Switch,
        gen: TxGen::default(),
    }
}

/// An engine with an empty plan whose worker hook is the factory's, and what the worker's
/// lcore id was after the hook's last call, and how many calls.
fn engine_seeing_lcores() -> (Engine, Arc<AtomicU32>, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let hook = switchyard_ports::factory::worker_hook();
    let (s, c) = (seen.clone(), calls.clone());
    let opts = EngineOptions {
        pool_buffers: 1024,
        on_worker_plan: Some(Arc::new(move |idx| {
            hook(idx);
            s.store(lcore_id(), Ordering::Release);
            c.fetch_add(1, Ordering::AcqRel);
        })),
        ..Default::default()
    };
    let empty = ForwardingPlan {
        switch: Arc::new(SwitchConfig::default()),
        ports: Vec::new(),
        rx: vec![Vec::new()],
        mode: FwdMode::Switch,
        egress: Vec::new(),
        gen: TxGen::default(),
    };
    let eng = Engine::start(opts, empty).expect("engine");
    let deadline = Instant::now() + WAIT;
    while calls.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(calls.load(Ordering::Acquire) > 0, "the hook ran on the worker's start");
    (eng, seen, calls)
}

#[test]
fn a_worker_started_before_eal_is_registered_with_its_first_dpdk_plan() {
    let (eng, seen, calls) = engine_seeing_lcores();
    assert_eq!(seen.load(Ordering::Acquire), LCORE_ID_ANY, "no EAL yet: the worker is no lcore");

    // EAL comes up with the port, after the worker started.
    let Some(eal) = common::eal() else { return };
    let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, pool_size: 2047, ..Default::default() };
    let port: Arc<dyn PortBackend> =
        Arc::new(DpdkPort::open(eal, "wl0", "net_ring_wl0", &cfg).expect("open"));
    let g = eng.publish(plan_with(port.clone()));
    assert!(eng.wait_applied(g, WAIT), "plan applied");
    let lcore = seen.load(Ordering::Acquire);
    assert_ne!(lcore, LCORE_ID_ANY, "the worker registered before polling the DPDK port");
    assert_ne!(lcore, lcore_id(), "an lcore of its own, not the main thread's");

    // A later plan: the hook runs again and the worker keeps its lcore id.
    let before = calls.load(Ordering::Acquire);
    let g = eng.publish(plan_with(port.clone()));
    assert!(eng.wait_applied(g, WAIT), "second plan applied");
    assert!(calls.load(Ordering::Acquire) > before, "the hook ran with the new plan");
    assert_eq!(seen.load(Ordering::Acquire), lcore, "registered once");
    eng.stop();

    // The stopped worker gave its id back: the next engine's worker gets the same one
    // (EAL hands out the lowest free id), not a new one.
    let (eng, seen, _) = engine_seeing_lcores();
    let g = eng.publish(plan_with(port));
    assert!(eng.wait_applied(g, WAIT), "plan applied on the second engine");
    assert_eq!(seen.load(Ordering::Acquire), lcore, "the first worker's lcore id was released");
    eng.stop();
}
