//! A tunnel uplink whose last port goes with a worker's last handle (the runtime's own `Arc`
//! gone first, as when the workers applied a plan late) is not closed on that worker: closing
//! a device may wait on the locks of another device's probe, which a forwarding thread must
//! never do. The control thread closes it (`factory::close_retired`, run on every publish).
//! The uplink here is a ring port wrapped to say on which thread it was dropped.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::ring::RingPort;
use switchyard_dataplane::port::{PortBackend, PortError, RxQueue, TxQueue};
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::worker::{on_worker_thread, Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen};
use switchyard_dataplane::SwitchConfig;
use switchyard_ports::udp_tunnel::TunnelOptions;
use switchyard_ports::uplink_tunnel::{NextHops, UplinkTunnelPort};

const WAIT: Duration = Duration::from_secs(10);

/// A ring port that records, when dropped, whether that happened on a worker thread.
struct Spy {
    ring: RingPort,
    dropped_on_worker: Arc<Mutex<Option<bool>>>,
}

impl Drop for Spy {
    fn drop(&mut self) {
        *self.dropped_on_worker.lock().unwrap() = Some(on_worker_thread());
    }
}

impl PortBackend for Spy {
    fn name(&self) -> &str {
        self.ring.name()
    }
    fn rx_queue_count(&self) -> u16 {
        self.ring.rx_queue_count()
    }
    fn tx_queue_count(&self) -> u16 {
        self.ring.tx_queue_count()
    }
    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.ring.open_rx(q)
    }
    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        self.ring.open_tx(q)
    }
}

/// A plan with `port` alone on a bridge (none: an empty bridge), its RX queue on worker 0.
fn plan_with(port: Option<Arc<dyn PortBackend>>) -> ForwardingPlan {
    let yaml = "bridges:\n- name: br\n  ports:\n  - {name: uw0}\n";
    let switch = Arc::new(SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap());
    let ports = vec![port];
    ForwardingPlan {
        rx: ForwardingPlan::round_robin(&ports, 1),
        egress: ForwardingPlan::paired_egress(ports.len()),
        switch,
        ports,
        mode: FwdMode::Switch,
        gen: TxGen::default(),
    }
}

#[test]
fn an_uplink_left_by_a_worker_is_closed_by_the_control_thread() {
    let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let o = TunnelOptions {
        kind: TunnelKind::Vxlan,
        vni: 5001,
        local,
        dstport: 4789,
        flood: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))],
        remote_macs: Vec::new(),
        learn: false,
        aging_s: 300,
    };
    let dropped_on_worker = Arc::new(Mutex::new(None));
    let key = format!("ring:off-worker-{}", std::process::id());
    let spy = dropped_on_worker.clone();
    let port = UplinkTunnelPort::join("uw0", &o, &key, NextHops::default(), move || {
        let (ring, _peer) = RingPort::new("uw0-uplink", 64);
        Ok((Arc::new(Spy { ring, dropped_on_worker: spy }), MacAddr([2, 0, 0, 0, 0, 1]), 1500))
    })
    .expect("port");
    let eng = Engine::start(EngineOptions { pool_buffers: 1024, ..Default::default() }, plan_with(None))
        .expect("engine");
    let g = eng.publish(plan_with(Some(Arc::new(port))));
    assert!(eng.wait_applied(g, WAIT), "plan applied");
    // The worker holds the port's only handles now; the next plan has it drop them.
    let g = eng.publish(plan_with(None));
    assert!(eng.wait_applied(g, WAIT), "empty plan applied");
    assert_eq!(*dropped_on_worker.lock().unwrap(), None, "the uplink was closed on the worker");
    switchyard_ports::factory::close_retired();
    assert_eq!(*dropped_on_worker.lock().unwrap(), Some(false), "closed here, off the workers");
    eng.stop();
}
