//! vhost-user ports against a real frontend: DPDK's virtio-user PMD in `dpdk-testpmd` plays
//! the VM. Frames go into the guest through the port, testpmd forwards them back (`io` mode),
//! and they come out of the port again, byte for byte; testpmd's own generator (`txonly`)
//! feeds the port; and both sides restart.
//!
//! testpmd runs with `--no-huge` (DPDK then backs its memory with a memfd that virtio-user can
//! share). The tests skip, saying why, when `dpdk-testpmd` is missing or its EAL cannot start.
//! Each test bounds every wait; testpmd is killed when a test ends.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::port::vhost::{Mode, VhostOptions, VhostUserPort};
use switchyard_dataplane::port::{Burst, DropTally, PortBackend};

const TESTPMD: &str = "dpdk-testpmd";

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sy-tp-{}-{name}.sock", std::process::id()))
}

fn have_testpmd() -> bool {
    match Command::new(TESTPMD).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => true,
        Err(_) => {
            eprintln!("SKIP: {TESTPMD} not found (Debian: apt install dpdk)");
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
}

impl TestPmd {
    fn start(name: &str, vdev: &str, fwd: &str) -> TestPmd {
        let mut child = Command::new(TESTPMD)
            .args(["-l", "0-1", "--no-huge", "-m", "256", "--no-pci"])
            .arg(format!("--file-prefix=sy{}{name}", std::process::id()))
            .args(["--vdev", vdev, "--log-level=pmd.net.virtio.*:info"])
            .args(["--", "-i", "--nb-cores=1", "--total-num-mbufs=2048"])
            .arg(format!("--forward-mode={fwd}"))
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
        TestPmd { child, stdin, lines: rx, log: Vec::new() }
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
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    for (k, b) in f.iter_mut().enumerate().skip(14) {
        *b = (k as u32).wrapping_mul(13).wrapping_add(i) as u8;
    }
    f[14..18].copy_from_slice(&i.to_be_bytes());
    f
}

/// Starts testpmd as the guest of `port` and waits until the port's link is up. `None`
/// (with a message) when testpmd cannot run here.
fn guest(port: &VhostUserPort, name: &str, vdev: &str, fwd: &str) -> Option<TestPmd> {
    let mut tp = TestPmd::start(name, vdev, fwd);
    // testpmd reads its commands once its prompt is up.
    tp.cmd("start");
    if !tp.started(port) {
        return None;
    }
    Some(tp)
}

impl TestPmd {
    /// Waits for the port's link; `false` with a SKIP message when testpmd could not start
    /// here (EAL failure), a panic when it started but the link did not come up.
    fn started(&mut self, port: &VhostUserPort) -> bool {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if port.link_up() {
                return true;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                eprintln!("SKIP: testpmd exited ({st}) before the link came up:\n{}", self.dump());
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.dump();
        if log.contains("Cannot init") || log.contains("EAL: FATAL") {
            eprintln!("SKIP: testpmd's EAL cannot start here:\n{log}");
            return false;
        }
        panic!("link did not come up with testpmd:\n{log}");
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
            rx.rx_burst(&mut c, &mut out, 32, &mut d);
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
    if !have_testpmd() {
        return;
    }
    let path = sock("io");
    let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
    let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
    let Some(tp) = guest(&port, "io", &vdev, "io") else { return };
    io_round_trip_is_exact(&port, 0);
    // The guest restarts: the port goes down, then takes it back.
    tp.stop();
    assert!(wait_for(Duration::from_secs(5), || !port.link_up()), "link down after testpmd quit");
    let Some(tp) = guest(&port, "io2", &vdev, "io") else { return };
    io_round_trip_is_exact(&port, 1000);
    tp.stop();
}

#[test]
fn testpmd_txonly_reaches_the_port() {
    if !have_testpmd() {
        return;
    }
    let path = sock("txonly");
    let port = VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap();
    let vdev = format!("net_virtio_user0,path={},queues=1", path.display());
    let Some(tp) = guest(&port, "txonly", &vdev, "txonly") else { return };
    let pool = Pool::with_hugepages("txonly", 1024, false).unwrap();
    let mut c = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut d = DropTally::default();
    let mut n = 0usize;
    let mut first: Option<Vec<u8>> = None;
    let start = Instant::now();
    while n < 100_000 && start.elapsed() < Duration::from_secs(5) {
        let mut out = Burst::new();
        rx.rx_burst(&mut c, &mut out, 32, &mut d);
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

#[test]
fn testpmd_server_mode_and_switchyard_client_reconnects() {
    if !have_testpmd() {
        return;
    }
    let path = sock("client");
    let _ = std::fs::remove_file(&path);
    let vdev = format!("net_virtio_user0,path={},queues=1,server=1", path.display());
    let opts = VhostOptions { mode: Mode::Client, reconnect_interval: Duration::from_millis(50), ..Default::default() };
    let mut tp = TestPmd::start("client", &vdev, "io");
    // testpmd in server mode waits for the backend before its prompt.
    let port = VhostUserPort::open("vm", &path, opts.clone()).unwrap();
    tp.cmd("start");
    if !tp.started(&port) {
        return;
    }
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
    if !tp.started(&port) {
        return;
    }
    io_round_trip_is_exact(&port, 900);
    assert!(port.sessions() >= 2);
    tp.stop();
    let _ = std::fs::remove_file(&path);
}
