//! A real QEMU guest on a switchyard vhost-user port: `switchyard pmd --fwd switch` between a
//! vhost-user port and a TAP interface (198.51.100.1/24, in a network namespace the test
//! creates and removes); a Debian kernel with a busybox initramfs boots under QEMU with a
//! virtio-net-pci device on the vhost-user socket, pings 198.51.100.1 from 198.51.100.2 and
//! prints a verdict on its serial console. The test checks the verdict, switchyard's port
//! counters (every frame crosses, nothing is dropped) and that the backend refused none of
//! QEMU's messages.
//!
//! Cases: switchyard as the vhost-user server (QEMU connects), switchyard as the client (QEMU
//! listens with `server=on`), switchyard restarted under a running guest (QEMU reconnects
//! with `reconnect=1`, the guest pings again), and the guest's driver unbound and bound again
//! (a device reset and a new setup on the same connection, as in a guest reboot). The guest
//! sends small and full-size (1514-byte) frames.
//!
//! Needs root, `ip`, `qemu-system-x86_64` and the guest built by
//! `scripts/qemu-guest-assets.sh` (in `$SWITCHYARD_QEMU_CACHE`, else
//! `/var/cache/switchyard-qemu`); skips (testkit) otherwise. QEMU runs under TCG
//! by default (no nested virtualisation needed); `SWITCHYARD_QEMU_ACCEL=kvm` picks KVM,
//! `SWITCHYARD_QEMU=PATH` another QEMU binary, `SWITCHYARD_QEMU_KEEP=1` keeps the logs.
//! Every wait is bounded; QEMU, switchyard and the namespace go away whatever happens.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const HOST_IP: &str = "198.51.100.1";
const GUEST_IP: &str = "198.51.100.2";
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// Echo replies the guest wants per round.
const PINGS: u32 = 3;
/// Boot and one round of pings; TCG on a loaded 2-core machine is slow, a good run takes ~5 s.
const GUEST_WAIT: Duration = Duration::from_secs(180);
const SHORT_WAIT: Duration = Duration::from_secs(10);

/// One QEMU guest at a time in this process (the cases share nothing but the CPUs; run in
/// parallel under TCG they only slow each other down).
static ONE_GUEST: Mutex<()> = Mutex::new(());

fn runs(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn assets_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_QEMU_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/cache/switchyard-qemu"),
    }
}

/// The kernel and initramfs, or why the test cannot run here.
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    if !testkit::probe::is_root() {
        return Err("not running as root (needs network namespaces and a TAP interface)".into());
    }
    if !runs("ip", "-V") {
        return Err("the `ip` command (iproute2) is missing".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing (no TAP interfaces here)".into());
    }
    // Network namespaces may be refused even to root (an unprivileged container).
    let probe = format!("syq-probe-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output().is_ok_and(|o| o.status.success());
    if !made {
        return Err("cannot create a network namespace here".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    if !runs(&qemu_bin(), "--version") {
        return Err(format!("{} not found (Debian: apt install qemu-system-x86)", qemu_bin()));
    }
    let dir = assets_dir();
    let (k, i) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    if !k.is_file() || !i.is_file() {
        return Err(format!("no guest in {} (build it with scripts/qemu-guest-assets.sh)", dir.display()));
    }
    Ok((k, i))
}

/// The QEMU binary: `$SWITCHYARD_QEMU`, else qemu-system-x86_64 from PATH.
fn qemu_bin() -> String {
    std::env::var("SWITCHYARD_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// QEMU's major version (0 when it cannot be told).
fn qemu_major() -> u32 {
    let out = Command::new(qemu_bin()).arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    text.split("version ").nth(1).and_then(|v| v.split('.').next()?.parse().ok()).unwrap_or(0)
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
}

/// A network namespace holding a persistent TAP interface with the host side's address (so
/// that its configuration survives switchyard restarts). Removed on drop.
struct Netns {
    name: String,
    tap: String,
}

impl Netns {
    fn create(case: &str) -> Netns {
        sweep_dead_namespaces();
        let name = format!("syq-{}-{case}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns { name, tap: "syq0".into() };
        // No IPv6 (no router solicitations or MLD reports), so the only frames are the test's.
        let sysctl = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"];
        let o = Command::new("ip").args(["netns", "exec", &ns.name, "sysctl", "-qw"]).args(sysctl).output();
        assert!(o.is_ok_and(|o| o.status.success()), "sysctl in {}", ns.name);
        let n = ns.name.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", &ns.tap, "mode", "tap"]);
        ip(&["-n", n, "addr", "add", &format!("{HOST_IP}/24"), "dev", &ns.tap]);
        ip(&["-n", n, "link", "set", &ns.tap, "up"]);
        // The host side never ARPs for the guest (no probes that could find the guest gone):
        // the guest's ARP request and the echo traffic are the only frames.
        ip(&["-n", n, "neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "nud", "permanent", "dev", &ns.tap]);
        ns
    }
}

/// Removes the namespaces (`syq-PID-*`) that a test process left behind when it was killed
/// before its `Drop` ran: those whose process is gone. A live test's namespaces are left alone.
fn sweep_dead_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "syq-1234-case" or "syq-1234-case (id: 3)"
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("syq-").and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// `switchyard pmd --fwd switch` on the vhost-user port and the namespace's TAP interface.
struct Switchyard {
    child: Option<Child>,
    log: PathBuf,
    out: PathBuf,
}

impl Switchyard {
    fn start(ns: &Netns, vhost_spec: &str, dir: &Path, run: u32) -> Switchyard {
        let log = dir.join(format!("switchyard-{run}.log"));
        let out = dir.join(format!("switchyard-{run}.out"));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, BIN, "pmd", "--fwd", "switch", "--json"])
            .args(["--port", vhost_spec, "--port", &format!("tap:{}", ns.tap)])
            .env("SWITCHYARD_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn switchyard");
        let s = Switchyard { child: Some(child), log, out };
        s.wait_log("the ports to open", "Forwarding", SHORT_WAIT);
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `needle` in stdout or the log.
    fn wait_log(&self, what: &str, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let out = std::fs::read_to_string(&self.out).unwrap_or_default();
            if out.contains(needle) || self.log().contains(needle) {
                return;
            }
            if t0.elapsed() > limit {
                panic!("timed out waiting for {what}\nstdout:\n{out}\nlog:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, the exit (bounded), and the JSON summary; the log with it.
    fn stop(mut self) -> (serde_json::Value, String) {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(ok.success());
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if t0.elapsed() > SHORT_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("switchyard did not stop on SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let log = self.log();
        assert!(st.success(), "switchyard exited with {st}\nstdout:\n{out}\nlog:\n{log}");
        let last = out.lines().last().unwrap_or_default();
        let j = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last:?}\nlog:\n{log}"));
        (j, log)
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// QEMU with the guest; its serial console comes line by line through a channel.
struct Qemu {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    console: Arc<Mutex<String>>,
    stderr: PathBuf,
}

impl Qemu {
    /// `chardev`: the socket chardev's options after `path=...` (e.g. `,reconnect=1`);
    /// `between`: what the guest does between rounds (`wait` for [`Qemu::go`], or `rebind`
    /// its driver); `extra`: more QEMU arguments.
    fn start(c: &Case, chardev: &str, rounds: u32, between: &str, extra: &[&str]) -> Qemu {
        let dir = c.dir.path();
        let accel = std::env::var("SWITCHYARD_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
        // QEMU 7.2 (Debian 12) under TCG crashes when a vhost-user virtio-pci device uses MSI-X
        // (virtio_pci_set_guest_notifiers -> msix_set_vector_notifiers: a NULL dereference,
        // before the backend is asked anything): there the device gets no MSI-X vectors and the
        // guest uses INTx. QEMU 10.0 (bookworm-backports) runs MSI-X under TCG fine; versions in
        // between are untested. With KVM (irqfd) MSI-X is always used.
        let vectors = if accel == "tcg" && qemu_major() < 10 { ",vectors=0" } else { "" };
        let stderr = dir.join("qemu.err");
        let mut child = Command::new(qemu_bin())
            .args(["-accel", &accel, "-smp", "1", "-m", "256M"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=c0,path={}{chardev}", c.sock().display()))
            .args(["-netdev", "vhost-user,id=n0,chardev=c0"])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}{vectors}")])
            .arg("-kernel")
            .arg(&c.kernel)
            .arg("-initrd")
            .arg(&c.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 ipv6.disable=1 loglevel=4 sy.ip={GUEST_IP}/24 sy.peer={HOST_IP} \
                 sy.count={PINGS} sy.deadline=60 sy.rounds={rounds} sy.between={between}"
            ))
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-nodefaults", "-no-reboot"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn qemu");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let console = Arc::new(Mutex::new(String::new()));
        let all = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end_matches('\r').to_string();
                all.lock().unwrap().push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Qemu { child, stdin, lines, console, stderr }
    }

    fn dump(&self) -> String {
        format!(
            "console:\n{}\nqemu stderr:\n{}",
            self.console.lock().unwrap(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// The first console line (from now) that starts with "SWITCHYARD-GUEST: " followed by one
    /// of `wanted`; panics on a FAIL marker, on QEMU's exit or after `limit`.
    fn wait_marker(&mut self, wanted: &[&str], limit: Duration, sy_log: impl Fn() -> String) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let Some(m) = line.strip_prefix("SWITCHYARD-GUEST: ") else { continue };
                    if wanted.iter().any(|w| m.starts_with(w)) {
                        return m.to_string();
                    }
                    if m.contains("FAIL") {
                        panic!("the guest says {m:?}\n{}\nswitchyard log:\n{}", self.dump(), sy_log());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {wanted:?} from the guest in {limit:?}\n{}\nswitchyard log:\n{}",
                        self.dump(),
                        sy_log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    panic!(
                        "QEMU exited ({st:?}) before {wanted:?}\n{}\nswitchyard log:\n{}",
                        self.dump(),
                        sy_log()
                    )
                }
            }
        }
    }

    /// Tells a guest that waits between rounds to go on.
    fn go(&mut self) {
        let s = self.stdin.as_mut().expect("stdin");
        s.write_all(b"go\n").and_then(|_| s.flush()).expect("write to the guest's console");
    }

    /// Waits (bounded) for QEMU to exit after the guest powered off.
    fn wait_exit(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                assert!(st.success(), "QEMU exited with {st}\n{}", self.dump());
                return;
            }
            assert!(
                t0.elapsed() < SHORT_WAIT * 3,
                "QEMU did not exit after the guest powered off\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The guest's eth0 packet counters from its final /proc/net/dev dump: (rx, tx).
    fn guest_counters(&self) -> Option<(u64, u64)> {
        let c = self.console.lock().unwrap();
        let line = c.lines().rev().find(|l| l.trim_start().starts_with("eth0:"))?;
        let f: Vec<u64> = line
            .trim_start()
            .trim_start_matches("eth0:")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (f.len() >= 10).then(|| (f[1], f[9]))
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::write(
            self.stderr.with_file_name("console.txt"),
            self.console.lock().unwrap().as_bytes(),
        );
    }
}

fn port(j: &serde_json::Value, i: usize) -> &serde_json::Value {
    &j["ports"][i]
}

fn count(j: &serde_json::Value, i: usize, k: &str) -> u64 {
    port(j, i)[k].as_u64().unwrap_or_else(|| panic!("ports[{i}].{k} in {j}"))
}

/// Every frame crossed the switch both ways and nothing was dropped: the vhost-user port (p0)
/// received what the TAP port (p1) sent and the other way round, at least the echo requests
/// and replies, and every buffer came back.
fn check_counters(j: &serde_json::Value, log: &str) {
    let why = format!("{j}\nlog:\n{log}");
    for i in 0..2 {
        assert_eq!(count(j, i, "drops"), 0, "drops on p{i}: {why}");
    }
    assert_eq!(count(j, 0, "rx"), count(j, 1, "tx"), "guest -> tap: {why}");
    assert_eq!(count(j, 1, "rx"), count(j, 0, "tx"), "tap -> guest: {why}");
    // The echo requests one way and the replies the other (and an ARP request and reply,
    // unless the guest still knew the host's MAC).
    assert!(count(j, 0, "rx") >= u64::from(PINGS), "{why}");
    assert!(count(j, 0, "tx") >= u64::from(PINGS), "{why}");
    // 20 full-size echoes each way (1514-byte frames).
    for k in ["rx_bytes", "tx_bytes"] {
        assert!(count(j, 0, k) >= 20 * 1514, "{k}: {why}");
    }
    assert_eq!(count(j, 0, "learned"), 1, "{why}");
    assert_eq!(j["pool_in_use"], 0, "{why}");
}

/// No message from QEMU was refused, and the backend complained about nothing.
fn check_log(log: &str) {
    let bad: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(bad.is_empty(), "warnings in switchyard's log:\n{}\n\nfull log:\n{log}", bad.join("\n"));
    assert!(log.contains("vhost: link port=p0 up=true"), "the vhost-user link never came up:\n{log}");
}

/// The names of the vhost-user requests the log shows, in order (for the test's output).
fn requests(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("vhost: message"))
        .filter_map(|l| {
            Some(l.split("name=").nth(1)?.split_whitespace().next()?.trim_matches('"').to_string())
        })
        .collect()
}

struct Case {
    _lock: std::sync::MutexGuard<'static, ()>,
    kernel: PathBuf,
    initrd: PathBuf,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl Case {
    fn new(test: &str, case: &str) -> Option<Case> {
        let (kernel, initrd) = match prerequisites() {
            Ok(p) => p,
            Err(why) => {
                testkit::skip(test, &why);
                return None;
            }
        };
        let lock = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
        let mut dir = tempfile::tempdir().unwrap();
        // SWITCHYARD_QEMU_KEEP=1: keep the logs (switchyard's, QEMU's) for a look afterwards.
        if std::env::var_os("SWITCHYARD_QEMU_KEEP").is_some_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("{test}: keeping {}", dir.path().display());
        }
        let ns = Netns::create(case);
        Some(Case { _lock: lock, kernel, initrd, dir, ns })
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("vhost.sock")
    }
}

/// One guest, one round of pings; checks and returns the switch's summary.
fn one_round(c: &Case, sy: Switchyard, chardev: &str, extra: &[&str]) -> serde_json::Value {
    let t0 = Instant::now();
    let mut q = Qemu::start(c, chardev, 1, "wait", extra);
    let sy_log = || sy.log();
    q.wait_marker(&["up"], GUEST_WAIT, sy_log);
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, sy_log);
    q.wait_marker(&["PASS"], SHORT_WAIT, sy_log);
    q.wait_exit();
    let took = t0.elapsed();
    // The guest booted and printed its verdict, so its /proc/net/dev dump (printed just
    // before it) is on the console: a missing eth0 line is a failure, not a skipped check.
    let (grx, gtx) = q
        .guest_counters()
        .unwrap_or_else(|| panic!("no eth0 counters in the guest's /proc/net/dev dump\n{}", q.dump()));
    let (j, log) = sy.stop();
    eprintln!("guest up, pinged and powered off in {took:.1?}; QEMU sent: {}", requests(&log).join(" "));
    check_log(&log);
    check_counters(&j, &log);
    assert_eq!((count(&j, 0, "tx"), count(&j, 0, "rx")), (grx, gtx), "guest's eth0 rx/tx vs p0: {j}");
    j
}

#[test]
fn guest_pings_through_a_server_port() {
    let Some(c) = Case::new("guest_pings_through_a_server_port", "srv") else { return };
    let spec = format!("vhost:{}", c.sock().display());
    let sy = Switchyard::start(&c.ns, &spec, c.dir.path(), 0);
    one_round(&c, sy, "", &[]);
}

#[test]
fn guest_pings_through_a_client_port() {
    let Some(c) = Case::new("guest_pings_through_a_client_port", "cli") else { return };
    // switchyard first: it retries until QEMU listens (QEMU with server=on waits for it).
    let spec = format!("vhost:{},client", c.sock().display());
    let sy = Switchyard::start(&c.ns, &spec, c.dir.path(), 0);
    // With a VGA device the guest's RAM is two regions (the legacy VGA window splits it), as
    // in most real VMs; without one (the other cases) QEMU sends a single region.
    one_round(&c, sy, ",server=on", &["-vga", "std"]);
}

#[test]
fn guest_pings_again_after_switchyard_restarts() {
    let Some(c) = Case::new("guest_pings_again_after_switchyard_restarts", "rst") else { return };
    let spec = format!("vhost:{}", c.sock().display());
    let sy = Switchyard::start(&c.ns, &spec, c.dir.path(), 0);
    let mut q = Qemu::start(&c, ",reconnect=1", 2, "wait", &[]);
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, || sy.log());
    q.wait_marker(&["waiting"], SHORT_WAIT, || sy.log());
    let (j, log) = sy.stop();
    check_log(&log);
    check_counters(&j, &log);

    // A new switchyard on the same socket: QEMU reconnects within a second and sets the
    // device up again under the running guest.
    let sy = Switchyard::start(&c.ns, &spec, c.dir.path(), 1);
    sy.wait_log("QEMU to reconnect", "vhost: link port=p0 up=true", SHORT_WAIT * 3);
    q.go();
    q.wait_marker(&["round 2 PASS"], GUEST_WAIT, || sy.log());
    q.wait_marker(&["PASS"], SHORT_WAIT, || sy.log());
    q.wait_exit();
    let (j, log) = sy.stop();
    eprintln!("after the restart, QEMU sent: {}", requests(&log).join(" "));
    check_log(&log);
    check_counters(&j, &log);
}

#[test]
fn guest_pings_again_after_its_driver_is_rebound() {
    let Some(c) = Case::new("guest_pings_again_after_its_driver_is_rebound", "rbd") else { return };
    // Unbinding virtio_net resets the device: QEMU stops the rings (GET_VRING_BASE) and, once
    // the driver is bound again, sets everything up anew on the same connection (what a guest
    // reboot does too).
    let spec = format!("vhost:{}", c.sock().display());
    let sy = Switchyard::start(&c.ns, &spec, c.dir.path(), 0);
    let mut q = Qemu::start(&c, "", 2, "rebind", &[]);
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, || sy.log());
    q.wait_marker(&["rebinding"], SHORT_WAIT, || sy.log());
    q.wait_marker(&["round 2 PASS"], GUEST_WAIT, || sy.log());
    q.wait_marker(&["PASS"], SHORT_WAIT, || sy.log());
    q.wait_exit();
    let (j, log) = sy.stop();
    eprintln!("with a rebind, QEMU sent: {}", requests(&log).join(" "));
    check_log(&log);
    check_counters(&j, &log);
    let sessions = log.matches("vhost: frontend connected").count();
    assert_eq!(sessions, 1, "the rebind should not reconnect:\n{log}");
    let ups = log.matches("vhost: link port=p0 up=true").count();
    assert!(ups >= 2, "the link should come up again after the rebind:\n{log}");
}
