//! Idle behaviour of the worker engine (issue: "an idle switch with 2 workers uses under 2% of
//! a core in total, and the first frame after an idle minute is forwarded within 200 µs").
//!
//! Starts 2 workers (back-off on, default options) on in-memory ring ports in switch mode,
//! measures the process's CPU time over an idle period (from /proc/self/stat), then injects
//! one frame after each idle period and measures, with a spinning observer on the other ring,
//! how long it took to come out, and at the end how long stopping the engine takes. Then a
//! vhost-user port whose worker sleeps on the guest's kick fd: how long from the guest's
//! kick to the frame out of a ring port (the figure the vhost_idle test prints). Prints the
//! numbers; asserts nothing (the tests do not time these: a loaded machine decides them).
//!
//! `cargo bench --bench idle` (idle period 60 s, 3 rounds); `IDLE_SECS=5 ROUNDS=5 cargo bench
//! --bench idle` for a quick look.

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::ring::RingPort;
use switchyard_dataplane::port::PortBackend;
use switchyard_dataplane::worker::{Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen};
use switchyard_dataplane::{Pool, SwitchConfig};

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is field 14, stime 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    (ut + st) / tick
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let idle: u64 = std::env::var("IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // OBSERVER=yield: the measuring thread yields its core instead of spinning, so the woken
    // worker can run on it (on a VM whose other vCPU is halted, waking that vCPU costs ms).
    let yield_observer = std::env::var("OBSERVER").is_ok_and(|v| v == "yield");
    let (a, pa) = RingPort::new("a", 1024);
    let (b, pb) = RingPort::new("b", 1024);
    let ports: Vec<Option<Arc<dyn PortBackend>>> = vec![Some(Arc::new(a)), Some(Arc::new(b))];
    let cfg =
        Config::from_yaml_str("bridges:\n- name: br\n  ports:\n  - {name: a}\n  - {name: b}\n").unwrap();
    let sw = Arc::new(SwitchConfig::compile(&cfg, None).unwrap());
    let rx = ForwardingPlan::round_robin(&ports, 2);
    let plan = ForwardingPlan {
        switch: sw,
        egress: ForwardingPlan::paired_egress(2),
        ports,
        rx,
        mode: FwdMode::Switch,
        gen: TxGen::default(),
    };
    let opts = EngineOptions { cores: vec![None, None], ..Default::default() };
    println!("idle: 2 workers, max_sleep {:?}, idle period {idle} s, {rounds} rounds", opts.max_sleep);
    let eng = Engine::start(opts, plan).unwrap();
    let inj = Pool::new("inj", 64).unwrap();
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.resize(60, 0);
    let mut cpu = Vec::new();
    let mut lat = Vec::new();
    for r in 0..rounds {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(idle));
        let c1 = cpu_seconds();
        let wall = t0.elapsed().as_secs_f64();
        let share = (c1 - c0) / wall * 100.0;
        let mut buf = inj.alloc().unwrap();
        buf.extend_from_slice(&frame).unwrap();
        let t = Instant::now();
        pb.inject(buf).unwrap();
        let out = loop {
            if let Some(x) = pa.collect() {
                break x;
            }
            if t.elapsed() > Duration::from_secs(1) {
                panic!("frame not forwarded within 1 s");
            }
            if yield_observer {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        };
        let us = t.elapsed().as_secs_f64() * 1e6;
        drop(out);
        println!("round {r}: idle CPU {share:.2}% of one core over {wall:.1} s; first frame after idle forwarded in {us:.1} µs");
        cpu.push(share);
        lat.push(us);
    }
    cpu.sort_by(|a, b| a.total_cmp(b));
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median idle CPU {:.2}% of one core (2 workers + housekeeping); median first-frame latency {:.1} µs, max {:.1} µs",
        cpu[cpu.len() / 2],
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    // How long stopping the idle workers takes (they sleep in poll(2); stop wakes them).
    let t = Instant::now();
    let _ = eng.stop();
    println!("engine stop (2 idle workers): {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
    kick_wake(rounds.max(5));
}

/// A VM port (vhost-user, the guest played by the in-process frontend) and a ring port, one
/// worker: `rounds` times, once the worker sleeps on the kick fd, the guest transmits and
/// kicks, and the frame is awaited on the ring by a spinning observer.
fn kick_wake(rounds: usize) {
    use switchyard_ports::vhost::frontend::Frontend;
    use switchyard_ports::vhost::proto::feat;
    use switchyard_ports::vhost::{VhostOptions, VhostUserPort};
    let path = std::env::temp_dir().join(format!("sy-bench-kick-{}.sock", std::process::id()));
    let vm = Arc::new(VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap());
    let (ring, peer) = RingPort::new("r", 1024);
    let ports: Vec<Option<Arc<dyn PortBackend>>> = vec![Some(vm.clone()), Some(Arc::new(ring))];
    let cfg =
        Config::from_yaml_str("bridges:\n- name: br\n  ports:\n  - {name: vm}\n  - {name: r}\n").unwrap();
    let plan = ForwardingPlan {
        switch: Arc::new(SwitchConfig::compile(&cfg, None).unwrap()),
        egress: ForwardingPlan::paired_egress(2),
        rx: ForwardingPlan::round_robin(&ports, 1),
        ports,
        mode: FwdMode::Switch,
        gen: TxGen::default(),
    };
    let eng = Engine::start(EngineOptions::default(), plan).unwrap();
    let mut fe = Frontend::connect(&path, Duration::from_secs(5)).unwrap();
    fe.setup(1, 256, feat::OFFERED).unwrap();
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.resize(60, 0);
    let mut lat = Vec::new();
    for r in 0..rounds {
        // Until the worker sleeps (it asks the guest to kick).
        let t = Instant::now();
        while fe.backend_polls(1) {
            assert!(t.elapsed() < Duration::from_secs(5), "the worker never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let kicked = fe.transmit_notify(0, &frame) == Some(true);
        while peer.collect().is_none() {
            assert!(t.elapsed() < Duration::from_secs(1), "frame not forwarded within 1 s");
            std::hint::spin_loop();
        }
        let us = t.elapsed().as_secs_f64() * 1e6;
        fe.reclaim(1);
        println!("kick round {r}: kicked {kicked}, frame out after {us:.1} µs");
        lat.push(us);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!("median kick-to-frame-out {:.1} µs, max {:.1} µs", lat[lat.len() / 2], lat[lat.len() - 1]);
    let _ = eng.stop();
}
