//! A QEMU guest on a vhost-user socket, shared by the tests that boot one (tests/qemu_guest.rs
//! and the CNI plugin's cni/tests/vhostuser_guest.rs): a Debian kernel with a busybox initramfs
//! (built by `scripts/qemu-guest-assets.sh`, in `$SWITCHYARD_QEMU_CACHE`, else
//! `/var/cache/switchyard-qemu`) under QEMU with a virtio-net-pci device on the socket. The
//! guest's /init addresses eth0 (`sy.ip`), pings `sy.peer` in rounds and prints markers
//! ("SWITCHYARD-GUEST: up", "round R PASS", "waiting", "PASS"/"FAIL") on its serial console,
//! which comes here line by line.
//!
//! QEMU runs under TCG by default (no nested virtualisation needed);
//! `SWITCHYARD_QEMU_ACCEL=kvm` picks KVM, `SWITCHYARD_QEMU=PATH` another QEMU binary. Every
//! wait is bounded; QEMU is killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Boot and one round of pings; TCG on a loaded 2-core machine is slow, a good run takes ~5 s.
pub const GUEST_WAIT: Duration = Duration::from_secs(180);
pub const SHORT_WAIT: Duration = Duration::from_secs(10);

/// One QEMU guest at a time in a test process (cases run in parallel under TCG only slow each
/// other down).
pub static ONE_GUEST: Mutex<()> = Mutex::new(());

fn runs(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn assets_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_QEMU_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/cache/switchyard-qemu"),
    }
}

/// The guest's kernel and initramfs.
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The guest and a QEMU to boot it, or why there are none here.
pub fn assets() -> Result<Assets, String> {
    if !runs(&qemu_bin(), "--version") {
        return Err(format!("{} not found (Debian: apt install qemu-system-x86)", qemu_bin()));
    }
    let dir = assets_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    if !kernel.is_file() || !initrd.is_file() {
        return Err(format!("no guest in {} (build it with scripts/qemu-guest-assets.sh)", dir.display()));
    }
    Ok(Assets { kernel, initrd })
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

/// What to boot and what the guest does.
pub struct Guest<'a> {
    pub assets: &'a Assets,
    /// Where QEMU's stderr (qemu.err) and, on drop, the console (console.txt) go.
    pub dir: &'a Path,
    /// The vhost-user socket.
    pub socket: &'a Path,
    /// The socket chardev's options after `path=...` (e.g. `,reconnect=1`, `,server=on`).
    pub chardev: &'a str,
    pub mac: &'a str,
    /// eth0's address, `ADDR/LEN`.
    pub ip: &'a str,
    /// The address it pings.
    pub peer: &'a str,
    /// Small echo replies wanted per round (then 20 full-size ones).
    pub pings: u32,
    pub rounds: u32,
    /// Between rounds: `wait` for [`Qemu::go`], or `rebind` the driver.
    pub between: &'a str,
    /// More QEMU arguments.
    pub extra: &'a [&'a str],
    /// Queue pairs the NIC asks the vhost-user backend for (`queues=`, with `mq=on` above 1, as
    /// libvirt turns `<driver queues>` into QEMU's arguments).
    pub queues: u32,
}

fn queues(n: u32) -> String {
    if n > 1 {
        format!(",queues={n}")
    } else {
        String::new()
    }
}

fn mq(n: u32) -> &'static str {
    if n > 1 {
        ",mq=on"
    } else {
        ""
    }
}

/// QEMU with the guest; its serial console comes line by line through a channel.
pub struct Qemu {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    console: Arc<Mutex<String>>,
    stderr: PathBuf,
}

impl Qemu {
    pub fn start(g: &Guest) -> Qemu {
        Qemu::start_in(g, &[])
    }

    /// As [`Qemu::start`], QEMU's command line run by `prefix` (a command that ends by running
    /// its arguments, e.g. `unshare` into the mount namespace of a pod's container).
    pub fn start_in(g: &Guest, prefix: &[&str]) -> Qemu {
        Qemu::spawn(g, prefix, "")
    }

    /// As [`Qemu::start`], the guest running `script` (a busybox shell script, short: it
    /// travels on the kernel command line) instead of its pings once eth0 is up; its exit
    /// status is the verdict ("PASS"/"FAIL").
    pub fn start_script(g: &Guest, script: &str) -> Qemu {
        let hex: String = script.bytes().map(|b| format!("{b:02x}")).collect();
        Qemu::spawn(g, &[], &format!(" sy.run={hex}"))
    }

    fn spawn(g: &Guest, prefix: &[&str], append: &str) -> Qemu {
        let accel = std::env::var("SWITCHYARD_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
        // QEMU 7.2 (Debian 12) under TCG crashes when a vhost-user virtio-pci device uses MSI-X
        // (virtio_pci_set_guest_notifiers -> msix_set_vector_notifiers: a NULL dereference,
        // before the backend is asked anything): there the device gets no MSI-X vectors and the
        // guest uses INTx. QEMU 10.0 (bookworm-backports) runs MSI-X under TCG fine; versions in
        // between are untested. With KVM (irqfd) MSI-X is always used.
        let vectors = if accel == "tcg" && qemu_major() < 10 { ",vectors=0" } else { "" };
        let stderr = g.dir.join("qemu.err");
        let mut cmd = match prefix.split_first() {
            Some((run, args)) => {
                let mut c = Command::new(run);
                c.args(args).arg(qemu_bin());
                c
            }
            None => Command::new(qemu_bin()),
        };
        let mut child = cmd
            .args(["-accel", &accel, "-smp", "1", "-m", "256M"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=c0,path={}{}", g.socket.display(), g.chardev))
            .args(["-netdev", &format!("vhost-user,id=n0,chardev=c0{}", queues(g.queues))])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={}{vectors}{}", g.mac, mq(g.queues))])
            .arg("-kernel")
            .arg(&g.assets.kernel)
            .arg("-initrd")
            .arg(&g.assets.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 ipv6.disable=1 loglevel=4 sy.ip={} sy.peer={} \
                 sy.count={} sy.deadline=60 sy.rounds={} sy.between={}{append}",
                g.ip, g.peer, g.pings, g.rounds, g.between
            ))
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-nodefaults", "-no-reboot"])
            .args(g.extra)
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

    pub fn dump(&self) -> String {
        format!(
            "console:\n{}\nqemu stderr:\n{}",
            self.console.lock().unwrap(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// The first console line (from now) that starts with "SWITCHYARD-GUEST: " followed by one
    /// of `wanted`; panics on a FAIL marker, on QEMU's exit or after `limit` (with the console,
    /// QEMU's stderr and `sy_log()`, the switch's log).
    pub fn wait_marker(&mut self, wanted: &[&str], limit: Duration, sy_log: impl Fn() -> String) -> String {
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

    /// Sends one line to the guest's console (a guest's script may wait for it).
    pub fn say(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        s.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| s.flush())
            .expect("write to the guest's console");
    }

    /// Tells a guest that waits between rounds to go on.
    pub fn go(&mut self) {
        self.say("go");
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (bounded) for QEMU to exit after the guest powered off.
    pub fn wait_exit(&mut self) {
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
    pub fn guest_counters(&self) -> Option<(u64, u64)> {
        self.guest_dev_fields().map(|f| (f[1], f[9]))
    }

    /// The guest's eth0 receive errors from its final /proc/net/dev dump: (errs, frame), the
    /// latter where its driver counts frames it refused (virtio_net's "bad gso").
    pub fn guest_rx_errors(&self) -> Option<(u64, u64)> {
        self.guest_dev_fields().map(|f| (f[2], f[5]))
    }

    /// The numbers of the guest's eth0 line in its final /proc/net/dev dump (rx bytes,
    /// packets, errs, drop, fifo, frame, compressed, multicast, then tx bytes, packets, ...).
    fn guest_dev_fields(&self) -> Option<Vec<u64>> {
        let c = self.console.lock().unwrap();
        let line = c.lines().rev().find(|l| l.trim_start().starts_with("eth0:"))?;
        let f: Vec<u64> = line
            .trim_start()
            .trim_start_matches("eth0:")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (f.len() >= 10).then_some(f)
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
