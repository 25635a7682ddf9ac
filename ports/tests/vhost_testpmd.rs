//! vhost-user ports against a real frontend: DPDK's virtio-user PMD in `dpdk-testpmd` plays
//! the VM. Frames go into the guest through the port, testpmd forwards them back (`io` mode),
//! and they come out of the port again, byte for byte; testpmd's own generator (`txonly`)
//! feeds the port; and both sides restart.
//!
//! testpmd runs with `--no-huge` (DPDK then backs its memory with a memfd that virtio-user can
//! share). The tests skip (testkit), saying why, only when `dpdk-testpmd` is missing or fails
//! its bare self-check (`testkit::probe::testpmd`); after that, a testpmd that exits or cannot
//! init before the link is up fails the test: virtio-user does its vhost-user handshake inside
//! EAL's device probe, so a handshake switchyard breaks shows up exactly there.
//! Each test bounds every wait; testpmd is killed when a test ends.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_ports::vhost::proto::feat;
use switchyard_ports::vhost::{Mode, VhostOptions, VhostUserPort};
use testkit::frame::{Frame, ETHERTYPE_LOCAL_EXPERIMENTAL};

use testkit::probe::TESTPMD;

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sy-tp-{}-{name}.sock", std::process::id()))
}

/// Whether testpmd runs here (the bare self-check); `false` with the skip reported.
fn testpmd_runs(test: &str) -> bool {
    match testkit::probe::testpmd() {
        Ok(()) => true,
        Err(why) => {
            testkit::skip(test, &why);
            false
        }
    }
}

/// A running testpmd in interactive mode, its output collected line by line.
struct TestPmd {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: Vec<String>,
    /// EAL's runtime directory of this testpmd, removed when it is gone.
    runtime_dir: std::path::PathBuf,
}

impl TestPmd {
    fn start(name: &str, vdev: &str, fwd: &str) -> TestPmd {
        Self::start_with(name, vdev, fwd, &[])
    }

    fn start_with(name: &str, vdev: &str, fwd: &str, extra: &[&str]) -> TestPmd {
        let prefix = format!("sy{}{name}", std::process::id());
        let runtime_dir = std::path::Path::new("/var/run/dpdk").join(&prefix);
        let mut child = Command::new(TESTPMD)
            .args(["-l", "0-1", "--no-huge", "-m", "256", "--no-pci"])
            .arg(format!("--file-prefix={prefix}"))
            .args(["--vdev", vdev, "--log-level=pmd.net.virtio.*:info"])
            .args(["--", "-i", "--nb-cores=1", "--total-num-mbufs=2048"])
            .arg(format!("--forward-mode={fwd}"))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn testpmd");
        let (tx, rx) = channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        TestPmd { child, stdin, lines: rx, log: Vec::new(), runtime_dir }
    }

    fn cmd(&mut self, c: &str) {
        let _ = writeln!(self.stdin, "{c}");
        let _ = self.stdin.flush();
    }

    fn dump(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        self.log.join("\n")
    }

    fn stop(mut self) {
        self.cmd("quit");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestPmd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

fn wait_for(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    Frame::new([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01])
        .ethertype(ETHERTYPE_LOCAL_EXPERIMENTAL)
        .payload(&i.to_be_bytes())
        .fill(len, |k| (k as u32).wrapping_mul(13).wrapping_add(i) as u8)
        .build()
}

/// Starts testpmd as the guest of `port` and waits until the port's link is up.
fn guest(port: &VhostUserPort, name: &str, vdev: &str, fwd: &str) -> TestPmd {
    let mut tp = TestPmd::start(name, vdev, fwd);
    // testpmd reads its commands once its prompt is up.
    tp.cmd("start");
    tp.started(port);
    tp
}

impl TestPmd {
    /// Waits for the port's link. testpmd runs here (the self-check passed), so its exit
    /// before the link is up, or a link that never comes up, is a failure (its log in the
    /// message): its EAL probes virtio-user, which does the vhost-user handshake with the port.
    fn started(&mut self, port: &VhostUserPort) {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if port.link_up() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("testpmd exited ({st}) before the link came up:\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("link did not come up with testpmd in 20 s:\n{}", self.dump());
    }
}

/// Sends `frames` into the guest and collects what comes back (testpmd `io` forwarding).
fn round_trip(port: &VhostUserPort, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, DropTally) {
    let pool = Pool::with_hugepages("tp", 1024, false).unwrap();
    let mut c = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let mut d = DropTally::default();
    let mut got = Vec::new();
    for chunk in frames.chunks(16) {
        let mut b = Burst::new();
        for f in chunk {
            b.push(c.alloc_copy(f).unwrap());
        }
        tx.tx_burst(&mut b, &mut c, &mut d);
        // Let testpmd bounce them before sending more (its RX ring is 256 deep by default).
        let want = got.len() + chunk.len();
        wait_for(Duration::from_secs(2), || {
            let mut out = Burst::new();
            rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
            for b in out.drain(..) {
                got.push(b.data().to_vec());
                c.free(b);
            }
            got.len() >= want
        });
    }
    (got, d)
}

/// Waits until the guest forwards: a probe frame comes back (the link comes up when the rings
/// are set up, a moment before testpmd has posted its RX buffers and started forwarding).
fn wait_forwarding(port: &VhostUserPort) {
    let probe = frame(0xffff_ffff, 60);
    let ok = wait_for(Duration::from_secs(10), || {
        let (got, _) = round_trip(port, std::slice::from_ref(&probe));
        got.contains(&probe)
    });
    assert!(ok, "testpmd never forwarded a probe frame");
}

fn io_round_trip_is_exact(port: &VhostUserPort, seed: u32) {
    wait_forwarding(port);
    let frames: Vec<Vec<u8>> = (0..256u32).map(|i| frame(seed + i, 60 + (i as usize * 37) % 1455)).collect();
    let (got, d) = round_trip(port, &frames);
    assert_eq!(got.len(), frames.len(), "frames back from testpmd (drops: {d:?})");
    assert!(d.is_zero(), "drops: {d:?}");
    assert!(got == frames, "frames came back changed");
}

#[test]
fn testpmd_io_forwarding_round_trip_and_restart() {
    if !testpmd_runs("testpmd_io_forwarding_round_trip_and_restart") {
        return;
    }
    let path = sock("io");
    let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
    let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
    let tp = guest(&port, "io", &vdev, "io");
    // virtio-user's defaults: in order, mergeable RX buffers (DPDK's in-order paths).
    let f = port.negotiated_features();
    assert_ne!(f & feat::F_IN_ORDER, 0, "IN_ORDER not agreed: {f:#x}");
    assert_ne!(f & feat::NET_F_MRG_RXBUF, 0, "MRG_RXBUF not agreed: {f:#x}");
    io_round_trip_is_exact(&port, 0);
    // The guest restarts: the port goes down, then takes it back. The second guest asks for
    // neither (DPDK's plain split-ring paths: descriptors out of order, one buffer a frame).
    tp.stop();
    assert!(wait_for(Duration::from_secs(5), || !port.link_up()), "link down after testpmd quit");
    let vdev = format!("{vdev},in_order=0,mrg_rxbuf=0");
    let tp = guest(&port, "io2", &vdev, "io");
    let f = port.negotiated_features();
    assert_eq!(f & (feat::F_IN_ORDER | feat::NET_F_MRG_RXBUF), 0, "features: {f:#x}");
    io_round_trip_is_exact(&port, 1000);
    tp.stop();
}

#[test]
fn testpmd_txonly_reaches_the_port() {
    if !testpmd_runs("testpmd_txonly_reaches_the_port") {
        return;
    }
    let path = sock("txonly");
    let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
    let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
    let tp = guest(&port, "txonly", &vdev, "txonly");
    let pool = Pool::with_hugepages("txonly", 1024, false).unwrap();
    let mut c = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut d = DropTally::default();
    let mut n = 0usize;
    let mut first: Option<Vec<u8>> = None;
    let start = Instant::now();
    while n < 100_000 && start.elapsed() < Duration::from_secs(5) {
        let mut out = Burst::new();
        rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
        for b in out.drain(..) {
            // testpmd's txonly frames: 64 bytes (virtio carries no CRC), IPv4/UDP, alike.
            assert_eq!(b.len(), 64);
            assert_eq!(&b.data()[12..14], &[0x08, 0x00]);
            match &first {
                None => first = Some(b.data().to_vec()),
                Some(f) => assert_eq!(&b.data()[..34], &f[..34]),
            }
            n += 1;
            c.free(b);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("txonly: {n} frames in {secs:.2} s ({:.0} frames/s)", n as f64 / secs);
    assert!(n >= 1000, "only {n} frames from testpmd txonly");
    assert!(d.is_zero(), "{d:?}");
    tp.stop();
}

/// A port whose poller sleeps on its kick fd: testpmd's virtio-user, asked to kick (the port
/// armed its wake-up), kicks when it transmits. Nothing else polls here, so the kick is the
/// only thing that can end the sleep.
#[test]
fn testpmd_kicks_a_sleeping_port() {
    if !testpmd_runs("testpmd_kicks_a_sleeping_port") {
        return;
    }
    let path = sock("kick");
    let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
    let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
    let tp = guest(&port, "kick", &vdev, "io");
    wait_forwarding(&port);
    let pool = Pool::with_hugepages("kick", 1024, false).unwrap();
    let mut c = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let mut d = DropTally::default();
    let take = |rx: &mut Box<dyn switchyard_dataplane::port::RxQueue>, c: &mut _, d: &mut _| {
        let mut out = Burst::new();
        rx.rx_burst(RxCtx::new(c, d), &mut out, 32);
        out.drain(..)
            .map(|b| {
                let v = b.data().to_vec();
                c.free(b);
                v
            })
            .collect::<Vec<_>>()
    };
    // Stragglers of the probes.
    while !take(&mut rx, &mut c, &mut d).is_empty() {}
    let mut worst = Duration::ZERO;
    for i in 0..5u32 {
        std::thread::sleep(Duration::from_millis(20));
        assert!(rx.wake_fd().is_some(), "testpmd gave a kick fd");
        assert!(rx.arm_wakeup(), "nothing pending");
        let f = frame(2000 + i, 60);
        let t = Instant::now();
        let mut b = Burst::new();
        b.push(c.alloc_copy(&f).unwrap());
        assert_eq!(tx.tx_burst(&mut b, &mut c, &mut d), 1);
        let kicked = readable_within_2s(rx.wake_fd().unwrap());
        let lat = t.elapsed();
        rx.disarm_wakeup();
        assert!(kicked, "testpmd did not kick within 2 s (frame {i}):\n{}", {
            let mut tp = tp;
            tp.dump()
        });
        worst = worst.max(lat);
        let mut got = Vec::new();
        assert!(wait_for(Duration::from_secs(2), || {
            got.extend(take(&mut rx, &mut c, &mut d));
            got.contains(&f)
        }));
    }
    eprintln!("testpmd: kicked back {worst:?} at worst after a frame went in");
    assert!(d.is_zero(), "{d:?}");
    tp.stop();
}

/// Whether `fd` becomes readable within 2 s.
fn readable_within_2s(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    switchyard_ports::vhost::sys::poll_readable(fd, 2000).unwrap()
}

#[test]
fn testpmd_server_mode_and_switchyard_client_reconnects() {
    if !testpmd_runs("testpmd_server_mode_and_switchyard_client_reconnects") {
        return;
    }
    let path = sock("client");
    let _ = std::fs::remove_file(&path);
    let vdev = format!("net_virtio_user0,path={},queues=1,server=1", path.display());
    let opts = VhostOptions {
        mode: Mode::Client,
        reconnect_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let mut tp = TestPmd::start("client", &vdev, "io");
    // testpmd in server mode waits for the backend before its prompt.
    let port = VhostUserPort::open("vm", &path, opts.clone()).unwrap();
    tp.cmd("start");
    tp.started(&port);
    io_round_trip_is_exact(&port, 0);
    // switchyard restarts: a new port connects to the same testpmd.
    drop(port);
    let port = VhostUserPort::open("vm", &path, opts).unwrap();
    assert!(wait_for(Duration::from_secs(10), || port.link_up()), "link up after reconnect:\n{}", tp.dump());
    io_round_trip_is_exact(&port, 500);
    // The frontend restarts: switchyard reconnects by itself.
    tp.stop();
    assert!(wait_for(Duration::from_secs(5), || !port.link_up()));
    let mut tp = TestPmd::start("client2", &vdev, "io");
    tp.cmd("start");
    tp.started(&port);
    io_round_trip_is_exact(&port, 900);
    assert!(port.sessions() >= 2);
    tp.stop();
    let _ = std::fs::remove_file(&path);
}

/// The whole switch: a ring port and the vhost port on one bridge, testpmd swapping MACs in
/// the guest. Frames injected on the ring flood to the VM, come back with source and
/// destination swapped, and the switch (having learned the ring's MAC) sends them to the ring.
#[test]
fn testpmd_through_the_switch_pipeline() {
    use std::sync::Arc;
    use switchyard_dataplane::config::Config;
    use switchyard_dataplane::port::ring::RingPort;
    use switchyard_dataplane::worker::{Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen};
    use switchyard_dataplane::SwitchConfig;
    if !testpmd_runs("testpmd_through_the_switch_pipeline") {
        return;
    }
    let path = sock("switch");
    let vm = Arc::new(VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap());
    let (ring, peer) = RingPort::new("up", 4096);
    let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
    let tp = guest(&vm, "switch", &vdev, "macswap");
    let yaml = format!(
        "bridges:\n- name: br\n  ports:\n  - {{name: up}}\n  - {{name: vm, type: vhostuser, socket: {}}}\n",
        path.display()
    );
    let sw = Arc::new(SwitchConfig::compile(&Config::from_yaml_str(&yaml).unwrap(), None).unwrap());
    let backends: Vec<Option<Arc<dyn PortBackend>>> = vec![Some(Arc::new(ring)), Some(vm.clone())];
    let rx = ForwardingPlan::round_robin(&backends, 1);
    let plan = ForwardingPlan {
        egress: ForwardingPlan::paired_egress(2),
        switch: sw,
        ports: backends,
        rx,
        mode: FwdMode::Switch,
        gen: TxGen::default(),
    };
    let eng = Engine::start(EngineOptions { pool_buffers: 4096, ..Default::default() }, plan).unwrap();
    let inj = Pool::with_hugepages("inject", 1024, false).unwrap();
    let swapped = |f: &[u8]| {
        let mut s = f.to_vec();
        s[0..6].copy_from_slice(&f[6..12]);
        s[6..12].copy_from_slice(&f[0..6]);
        s
    };
    // Until testpmd forwards, probes may be lost.
    let probe = frame(0xfffe, 60);
    let ok = wait_for(Duration::from_secs(10), || {
        let _ = peer.inject(
            inj.alloc()
                .map(|mut b| {
                    b.extend_from_slice(&probe).unwrap();
                    b
                })
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(20));
        let mut hit = false;
        while let Some(b) = peer.collect() {
            hit |= b.data() == &swapped(&probe)[..];
        }
        hit
    });
    assert!(ok, "no probe came back through the switch:\n{}", {
        let mut tp = tp;
        tp.dump()
    });
    let frames: Vec<Vec<u8>> = (0..200u32).map(|i| frame(i, 60 + (i as usize * 31) % 1400)).collect();
    let mut got = Vec::new();
    // A probe injected while the first one was still on its way comes back late: not one of
    // the 200.
    let late_probe = swapped(&probe);
    for chunk in frames.chunks(16) {
        for f in chunk {
            let mut b = inj.alloc().unwrap();
            b.extend_from_slice(f).unwrap();
            peer.inject(b).unwrap();
        }
        let want = got.len() + chunk.len();
        wait_for(Duration::from_secs(2), || {
            while let Some(b) = peer.collect() {
                if b.data() != &late_probe[..] {
                    got.push(b.data().to_vec());
                }
            }
            got.len() >= want
        });
    }
    let want: Vec<Vec<u8>> = frames.iter().map(|f| swapped(f)).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "frames changed on the way");
    let snap = eng.plan().switch.port_by_name("vm").unwrap().stats.snapshot();
    assert!(snap.rx_packets >= 200 && snap.tx_packets >= 200, "{snap:?}");
    // Idle, the worker sleeps on the vhost port's kick fd (and the ring's eventfd) rather
    // than backing off on a timer.
    std::thread::sleep(Duration::from_millis(200));
    let s0 = eng.worker_stats()[0].clone();
    std::thread::sleep(Duration::from_millis(500));
    let idle_polls = eng.worker_stats()[0].idle_polls - s0.idle_polls;
    eprintln!("testpmd idle 0.5 s: {idle_polls} idle polls");
    assert!(idle_polls < 300, "idle worker polled {idle_polls} times in 0.5 s");
    let _ = eng.stop();
    tp.stop();
    assert_eq!(inj.in_use(), 0);
}

/// Throughput of the port itself against testpmd (not a pass/fail test; run with
/// `cargo test --release -p switchyard-dataplane --test vhost_testpmd -- --ignored --nocapture`).
/// Guest TX -> port: testpmd `txonly` 64-byte frames, counted by a loop polling the port.
/// Port -> guest RX: a loop sending 64-byte bursts into testpmd `rxonly`.
#[test]
#[ignore]
fn testpmd_throughput() {
    if !testpmd_runs("testpmd_throughput") {
        return;
    }
    let secs = 3.0;
    let pool = Pool::with_hugepages("tput", 4096, false).unwrap();
    let mut c = pool.cache();
    let mut d = DropTally::default();
    {
        let path = sock("tput-rx");
        let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
        let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
        let tp = guest(&port, "tputrx", &vdev, "txonly");
        let mut rx = port.open_rx(0).unwrap();
        let mut n = 0u64;
        // Warm up, then count.
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(300) {
            let mut out = Burst::new();
            rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
            out.drain(..).for_each(|b| c.free(b));
        }
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            let mut out = Burst::new();
            n += rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32) as u64;
            out.drain(..).for_each(|b| c.free(b));
        }
        let el = t0.elapsed().as_secs_f64();
        eprintln!("guest TX -> port: {n} frames in {el:.2} s = {:.2} Mpps", n as f64 / el / 1e6);
        tp.stop();
    }
    {
        let path = sock("tput-tx");
        let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
        let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
        let tp = guest(&port, "tputtx", &vdev, "rxonly");
        let mut tx = port.open_tx(0).unwrap();
        let f = frame(1, 64);
        std::thread::sleep(Duration::from_millis(300));
        let mut d = DropTally::default();
        let (mut sent, mut offered) = (0u64, 0u64);
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            let mut b = Burst::new();
            for _ in 0..32 {
                b.push(c.alloc_copy(&f).unwrap());
            }
            offered += 32;
            sent += tx.tx_burst(&mut b, &mut c, &mut d) as u64;
        }
        let el = t0.elapsed().as_secs_f64();
        eprintln!(
            "port -> guest RX: {sent} of {offered} frames in {el:.2} s = {:.2} Mpps delivered (drops {d:?})",
            sent as f64 / el / 1e6
        );
        tp.stop();
    }
}

/// Two queue pairs: testpmd generates on both TX queues, each arrives on its own RX queue of
/// the port; the port's two TX handles fill the guest's two RX queues.
#[test]
fn testpmd_multiqueue() {
    if !testpmd_runs("testpmd_multiqueue") {
        return;
    }
    let path = sock("mq");
    let port = VhostUserPort::open("vm", &path, VhostOptions { queues: 2, ..Default::default() }).unwrap();
    let vdev = format!("net_virtio_user0,path={},queues=2", path.display());
    let mut tp = TestPmd::start_with("mq", &vdev, "txonly", &["--rxq=2", "--txq=2"]);
    tp.cmd("start");
    tp.started(&port);
    assert!(
        wait_for(Duration::from_secs(10), || port.vring_running(2) && port.vring_running(3)),
        "second queue pair not enabled:\n{}",
        tp.dump()
    );
    let pool = Pool::with_hugepages("mq", 1024, false).unwrap();
    let mut c = pool.cache();
    let mut d = DropTally::default();
    let mut counts = [0usize; 2];
    let mut rxs = [port.open_rx(0).unwrap(), port.open_rx(1).unwrap()];
    wait_for(Duration::from_secs(5), || {
        for (q, rx) in rxs.iter_mut().enumerate() {
            let mut out = Burst::new();
            counts[q] += rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
            out.drain(..).for_each(|b| c.free(b));
        }
        counts.iter().all(|n| *n >= 1000)
    });
    assert!(counts.iter().all(|n| *n >= 1000), "frames per RX queue: {counts:?}");
    assert!(d.is_zero(), "{d:?}");
    tp.stop();
}
