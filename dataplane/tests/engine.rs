//! The worker engine over in-memory ring ports: switching, hot add and remove of ports while
//! traffic flows through the others, testpmd modes, and a clean stop that returns every buffer.

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::ring::{RingPeer, RingPort};
use switchyard_dataplane::port::PortBackend;
use switchyard_dataplane::worker::{Engine, EngineOptions, FwdMode, Plan, TxGen};
use switchyard_dataplane::{Pool, SwitchConfig};

fn frame(dst: u8, src: u8, n: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src, 0x08, 0x00];
    f.extend_from_slice(&n.to_be_bytes());
    f.resize(60, 0);
    f
}

struct Rig {
    peers: Vec<RingPeer>,
    backends: Vec<Option<Arc<dyn PortBackend>>>,
}

fn rig(names: &[&str]) -> Rig {
    let mut peers = Vec::new();
    let mut backends: Vec<Option<Arc<dyn PortBackend>>> = Vec::new();
    for n in names {
        let (p, peer) = RingPort::new(n, 4096);
        peers.push(peer);
        backends.push(Some(Arc::new(p)));
    }
    Rig { peers, backends }
}

fn plan(
    yaml: &str,
    prev: Option<&SwitchConfig>,
    backends: Vec<Option<Arc<dyn PortBackend>>>,
    mode: FwdMode,
) -> Plan {
    let sw = Arc::new(SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), prev).unwrap());
    let rx = Plan::round_robin(&backends, 1);
    Plan {
        peers: Plan::paired_peers(backends.len()),
        switch: sw,
        ports: backends,
        rx,
        mode,
        gen: TxGen::default(),
    }
}

fn collect(peer: &RingPeer, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match peer.collect() {
            Some(b) => out.push(b.data().to_vec()),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    out
}

#[test]
fn switches_and_survives_hot_plug() {
    let r = rig(&["a", "b", "c"]);
    let inj = Pool::new("inject", 4096).unwrap();
    let y2 = "bridges:\n- name: br\n  ports:\n  - {name: a}\n  - {name: b}\n";
    let p = plan(y2, None, vec![r.backends[0].clone(), r.backends[1].clone()], FwdMode::Switch);
    let sw0 = p.switch.clone();
    let opts = EngineOptions { pool_buffers: 4096, ..Default::default() };
    let eng = Engine::start(opts, p).unwrap();
    // b announces itself, then a sends to it: unicast after learning.
    r.peers[1]
        .inject(
            inj.alloc()
                .map(|mut b| {
                    b.extend_from_slice(&frame(0xff, 2, 0)).unwrap();
                    b
                })
                .unwrap(),
        )
        .unwrap();
    assert_eq!(collect(&r.peers[0], 1, Duration::from_secs(5)).len(), 1, "broadcast from b reached a");
    let mut sent = 0u32;
    let mut received = 0usize;
    for round in 0..20u32 {
        if round == 5 {
            // Hot add c while a->b traffic flows.
            let y3 = "bridges:\n- name: br\n  ports:\n  - {name: a}\n  - {name: b}\n  - {name: c}\n";
            let g = eng.publish(plan(y3, Some(&sw0), r.backends.clone(), FwdMode::Switch));
            assert!(eng.wait_applied(g, Duration::from_secs(5)));
        }
        if round == 12 {
            // Hot remove c again.
            let plan_now = eng.plan();
            let g = eng.publish(plan(
                y2,
                Some(&plan_now.switch),
                vec![r.backends[0].clone(), r.backends[1].clone()],
                FwdMode::Switch,
            ));
            assert!(eng.wait_applied(g, Duration::from_secs(5)));
        }
        for _ in 0..50 {
            let mut b = inj.alloc().unwrap();
            b.extend_from_slice(&frame(2, 1, sent)).unwrap();
            r.peers[0].inject(b).unwrap();
            sent += 1;
        }
        received += collect(&r.peers[1], 50, Duration::from_secs(5)).len();
    }
    assert_eq!(received, sent as usize, "no frame lost on unchanged ports across reconfiguration");
    // c saw only the floods that happened while it was there (none: everything was unicast).
    assert!(r.peers[2].collect().is_none());
    let plan_now = eng.plan();
    let a = plan_now.switch.port_by_name("a").unwrap().stats.snapshot();
    assert_eq!(a.rx_packets, u64::from(sent));
    assert_eq!(a.drops.values().sum::<u64>(), 0);
    let t0 = Instant::now();
    let ws = eng.stop();
    assert!(t0.elapsed() < Duration::from_millis(500), "stop took {:?}", t0.elapsed());
    assert_eq!(ws.len(), 1);
    assert!(ws[0].rx_packets >= u64::from(sent));
    assert!(ws[0].busy_cycles > 0);
    drop(plan_now);
    drop(r);
    assert_eq!(inj.in_use(), 0, "every injected buffer came back");
}

#[test]
fn io_and_txonly_modes() {
    let r = rig(&["x", "y"]);
    let inj = Pool::new("inject2", 1024).unwrap();
    let y = "bridges:\n- name: br\n  ports:\n  - {name: x}\n  - {name: y}\n";
    let eng = Engine::start(
        EngineOptions { pool_buffers: 4096, ..Default::default() },
        plan(y, None, r.backends.clone(), FwdMode::Io),
    )
    .unwrap();
    for i in 0..10 {
        let mut b = inj.alloc().unwrap();
        b.extend_from_slice(&frame(9, 8, i)).unwrap();
        r.peers[0].inject(b).unwrap();
    }
    let got = collect(&r.peers[1], 10, Duration::from_secs(5));
    assert_eq!(got.len(), 10);
    assert_eq!(got[3], frame(9, 8, 3), "io forwards unchanged");
    let g = eng.publish(plan(y, Some(&eng.plan().switch), r.backends.clone(), FwdMode::TxOnly));
    assert!(eng.wait_applied(g, Duration::from_secs(5)));
    let gen = collect(&r.peers[0], 100, Duration::from_secs(5));
    assert_eq!(gen.len(), 100);
    assert_eq!(gen[0].len(), 64);
    assert_eq!(&gen[0][12..14], &[0x08, 0x00]);
    let _ = eng.stop();
    drop(r);
    assert_eq!(inj.in_use(), 0);
}
