//! Helpers for the kernel-port tests (AF_PACKET, TAP): network namespaces and veth pairs that
//! a test creates and always removes (guards with Drop), a small raw AF_PACKET socket for the
//! far side, and bounded waits (1 ms sleeps between polls, a timeout on every wait).
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use switchyard_dataplane::port::{Burst, DropTally, RxCtx, RxQueue};
use switchyard_dataplane::{PacketBuf, PoolCache};
use testkit::frame::Frame;

/// Runs each named test function (taking one argument: how the AF_PACKET ports receive) in
/// both RX modes, as `ring::NAME(ring_arg)` and `recvmmsg::NAME(recvmmsg_arg)`.
#[allow(unused_macros)]
macro_rules! in_both_rx_modes {
    (ring = $ring:expr, recvmmsg = $recv:expr; $($t:ident),* $(,)?) => {
        mod ring {
            $(#[test]
            fn $t() {
                super::$t($ring)
            })*
        }
        mod recvmmsg {
            $(#[test]
            fn $t() {
                super::$t($recv)
            })*
        }
    };
}

/// EtherType of the test frames (IEEE local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;
pub const WAIT: Duration = Duration::from_secs(3);

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !testkit::probe::is_root() {
        return Some("not running as root (needs CAP_NET_ADMIN and CAP_NET_RAW)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("the `ip` command (iproute2) is missing".into()),
    }
    None
}

/// Why AF_XDP tests cannot run here: [`skip_reason`], or a kernel without AF_XDP sockets
/// (probed with socket(2), not with the code under test).
pub fn afxdp_skip_reason() -> Option<String> {
    if let Some(why) = skip_reason() {
        return Some(why);
    }
    // SAFETY: plain socket(2) call; the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Some(format!("the kernel gives no AF_XDP socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is ours.
    unsafe { libc::close(fd) };
    None
}

/// How these tests skip: the workspace's one way (printed, logged, refused in strict mode).
pub use testkit::skip;

/// Whether the kernel gives this process TAP interfaces, probed without the code under test:
/// `/dev/net/tun` opens and `TUNSETIFF` creates a TAP interface (named by the kernel, gone
/// when the descriptor closes). When this passes, a TAP port must open.
pub fn tap_probe() -> Result<(), String> {
    // SAFETY: open(2) of a constant NUL-terminated path.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("cannot open /dev/net/tun: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all zeroes is an empty name (the kernel picks one).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) } < 0 {
        return Err(format!("TUNSETIFF on /dev/net/tun: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

fn disable_ipv6(ns: Option<&str>, ifname: &str) {
    let key = format!("net.ipv6.conf.{ifname}.disable_ipv6=1");
    let _ = match ns {
        Some(ns) => Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", &key]).output(),
        None => Command::new("sysctl").args(["-qw", &key]).output(),
    };
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short number for names in this process.
pub fn unique() -> (u32, u32) {
    (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Waits until none of `ifnames` (in namespace `ns`, or the test's) has the noop qdisc, which
/// drops every frame sent through it (counted as the interface's TX `dropped`). A veth end
/// brought up while its peer was down gets its qdisc only when the peer comes up too, from
/// the kernel's link-watch work, which runs after `ip link set up` has returned (measured on a
/// loaded 2-core machine: a frame sent from that end right away was lost 5 times in 100); the
/// end brought up second gets it within its own `ip link set up`. Bounded (`WAIT`).
fn wait_for_qdiscs(ns: Option<&str>, ifnames: &[&str]) -> Result<(), String> {
    let end = Instant::now() + WAIT;
    let mut nap = Duration::from_millis(1);
    loop {
        let mut cmd = Command::new("ip");
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        let o = cmd.args(["-o", "link", "show"]).output().map_err(|e| format!("ip: {e}"))?;
        let out = String::from_utf8_lossy(&o.stdout);
        // `IDX: NAME@PEER: <FLAGS> mtu N qdisc Q ...`, one line an interface.
        let noop = ifnames.iter().find(|n| {
            out.lines().any(|l| {
                let name = l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n));
                name == Some(**n) && l.contains(" qdisc noop ")
            })
        });
        match noop {
            None => return Ok(()),
            Some(n) if Instant::now() >= end => return Err(format!("{n} still has no qdisc after {WAIT:?}")),
            Some(_) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// A network namespace holding one end (`peer`) of a veth pair whose other end (`host`) stays
/// in the test's namespace. Both go away on drop, whatever happened in between. Both ends
/// can send when `create` returns (their qdiscs attached: [`wait_for_qdiscs`]).
pub struct VethNs {
    pub ns: String,
    pub host: String,
    pub peer: String,
}

impl VethNs {
    pub fn create() -> Result<VethNs, String> {
        let (pid, n) = unique();
        let g = VethNs {
            ns: format!("sy-test-{pid}-{n}"),
            host: format!("sy{pid}h{n}"),
            peer: format!("sy{pid}p{n}"),
        };
        ip(&["netns", "add", &g.ns])?;
        // From here on, drop cleans up.
        ip(&["link", "add", &g.host, "type", "veth", "peer", "name", &g.peer])?;
        ip(&["link", "set", &g.peer, "netns", &g.ns])?;
        disable_ipv6(None, &g.host);
        disable_ipv6(Some(&g.ns), &g.peer);
        ip(&["-n", &g.ns, "link", "set", &g.peer, "up"])?;
        ip(&["link", "set", &g.host, "up"])?;
        // The peer, up first, gets its qdisc after this returns.
        wait_for_qdiscs(Some(&g.ns), &[&g.peer])?;
        Ok(g)
    }

    pub fn set_mtu(&self, mtu: u32) -> Result<(), String> {
        let m = mtu.to_string();
        ip(&["link", "set", &self.host, "mtu", &m])?;
        ip(&["-n", &self.ns, "link", "set", &self.peer, "mtu", &m])
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// `count` veth pairs: host ends `host[i]` in the test's namespace, peers `peer[i]` in one
/// network namespace `ns`, all up (every end can send: [`wait_for_qdiscs`]); made with two
/// `ip -batch` runs, gone on drop.
pub struct VethMany {
    pub ns: String,
    pub host: Vec<String>,
    pub peer: Vec<String>,
}

fn ip_batch(ns: Option<&str>, lines: &str) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip -batch: {e}"))?;
    child.stdin.take().expect("piped").write_all(lines.as_bytes()).map_err(|e| format!("ip -batch: {e}"))?;
    let o = child.wait_with_output().map_err(|e| format!("ip -batch: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip -batch: {}", String::from_utf8_lossy(&o.stderr).trim()))
    }
}

impl VethMany {
    pub fn create(count: usize) -> Result<VethMany, String> {
        let (pid, n) = unique();
        let g = VethMany {
            ns: format!("sy-test-{pid}-{n}"),
            host: (0..count).map(|i| format!("sy{pid}m{i}")).collect(),
            peer: (0..count).map(|i| format!("sy{pid}n{i}")).collect(),
        };
        ip(&["netns", "add", &g.ns])?;
        // From here on, drop cleans up.
        let mut add = String::new();
        let mut up = String::new();
        for (h, p) in g.host.iter().zip(&g.peer) {
            add += &format!("link add {h} type veth peer name {p} netns {}\nlink set {h} up\n", g.ns);
            up += &format!("link set {p} up\n");
        }
        ip_batch(None, &add)?;
        ip_batch(Some(&g.ns), &up)?;
        // The host ends, up first, get their qdiscs after the peers come up.
        wait_for_qdiscs(None, &g.host.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(g)
    }
}

impl Drop for VethMany {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peers, and with them the pairs.
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Removes an interface on drop (for TAP tests), ignoring errors.
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// Runs `f` with this thread in network namespace `ns`, then moves the thread back.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let open = |p: &str| -> Result<OwnedFd, String> {
        let c = std::ffi::CString::new(p).unwrap();
        // SAFETY: open(2) of a NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("open {p}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let orig = open("/proc/thread-self/ns/net")?;
    let target = open(&format!("/run/netns/{ns}"))?;
    struct Back(OwnedFd);
    impl Drop for Back {
        fn drop(&mut self) {
            // SAFETY: setns with a namespace fd we hold; affects only this thread.
            let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "cannot return to the original network namespace");
        }
    }
    // SAFETY: setns with a namespace fd we hold; affects only this thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    let _back = Back(orig);
    f()
}

/// A raw AF_PACKET socket bound to one interface: the far side of a port under test.
pub struct RawSock {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl RawSock {
    /// Opens a socket on `ifname`, inside namespace `ns` when given.
    pub fn open(ns: Option<&str>, ifname: &str) -> Result<RawSock, String> {
        match ns {
            Some(ns) => in_netns(ns, || Self::open_here(ifname)),
            None => Self::open_here(ifname),
        }
    }

    fn open_here(ifname: &str) -> Result<RawSock, String> {
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("no interface {ifname}"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                proto as i32,
            )
        };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a valid sockaddr_ll and its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        Ok(RawSock { fd, buf: vec![0; 65536] })
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sends `frame.len()` bytes from a live slice on the bound socket.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr() as *const _, frame.len(), 0) };
        assert_eq!(rc, frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// The next incoming (not outgoing) frame that `want` accepts, within `timeout`.
    pub fn recv_matching(&mut self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: receives at most buf.len() bytes into buf; sll/alen are valid.
            let rc = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut _,
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut alen,
                )
            };
            if rc > 0 {
                let f = &self.buf[..rc as usize];
                if sll.sll_pkttype != libc::PACKET_OUTGOING && want(f) {
                    return Some(f.to_vec());
                }
                continue;
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A test frame: dst, src, optional tags (TPID, TCI), EtherType 0x88b5, a marker, padded with
/// a byte pattern to `len` bytes in all.
pub fn frame(dst: [u8; 6], src: [u8; 6], tags: &[(u16, u16)], marker: &str, len: usize) -> Vec<u8> {
    let f = tags.iter().fold(Frame::new(dst, src), |f, &(tpid, tci)| f.tag(tpid, tci));
    let f = f.ethertype(TEST_ETHERTYPE).payload(marker.as_bytes());
    let start = f.len();
    f.fill(len, |k| ((k - start) as u8).wrapping_mul(7)).build()
}

/// Whether `f` carries `marker` right after its EtherType (tags skipped).
pub fn has_marker(f: &[u8], marker: &str) -> bool {
    let mut off = 12;
    while f.len() >= off + 2 && matches!(u16::from_be_bytes([f[off], f[off + 1]]), 0x8100 | 0x88a8) {
        off += 4;
    }
    f.len() >= off + 2 + marker.len()
        && u16::from_be_bytes([f[off], f[off + 1]]) == TEST_ETHERTYPE
        && &f[off + 2..off + 2 + marker.len()] == marker.as_bytes()
}

/// Polls `rx` until a frame with `marker` arrives (frames without it are freed) or `timeout`.
pub fn rx_wait(
    rx: &mut dyn RxQueue,
    cache: &mut PoolCache,
    drops: &mut DropTally,
    marker: &str,
    timeout: Duration,
) -> Option<PacketBuf> {
    let end = Instant::now() + timeout;
    let mut burst = Burst::new();
    loop {
        rx.rx_burst(RxCtx::new(cache, drops), &mut burst, 32);
        let mut found = None;
        for b in burst.drain(..) {
            if found.is_none() && has_marker(b.data(), marker) {
                found = Some(b);
            } else {
                cache.free(b);
            }
        }
        if found.is_some() {
            return found;
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `rx` for `dur` and returns every frame with `marker_prefix` it got (others freed).
pub fn rx_collect(
    rx: &mut dyn RxQueue,
    cache: &mut PoolCache,
    drops: &mut DropTally,
    marker_prefix: &str,
    dur: Duration,
) -> Vec<Vec<u8>> {
    let end = Instant::now() + dur;
    let mut burst = Burst::new();
    let mut got = Vec::new();
    while Instant::now() < end {
        rx.rx_burst(RxCtx::new(cache, drops), &mut burst, 32);
        for b in burst.drain(..) {
            if has_marker(b.data(), marker_prefix) {
                got.push(b.data().to_vec());
            }
            cache.free(b);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

pub const DST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const SRC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
