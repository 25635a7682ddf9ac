//! Traffic between network-namespace "pods" for the kernel-port tests (tests/kernel_offloads.rs,
//! cni/tests): a TCP stream whose receiver checks every byte, UDP datagrams of every size and a
//! UDP GSO send, so a frame the switch corrupted or lost shows, and bounded waits throughout. The including test crate has the
//! `kports_common` module (ports/tests/kports_common) at its root.
#![allow(dead_code)]

use crate::kports_common::in_netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deterministic bytes of a transfer: position `i` of stream `seed`.
pub fn byte_at(seed: u64, i: usize) -> u8 {
    let x = (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// Runs `f` in namespace `ns`, or in the test's own namespace when `None`.
pub fn maybe_in<T>(ns: Option<&str>, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match ns {
        Some(ns) => in_netns(ns, f),
        None => f(),
    }
}

/// The receiver's socket buffer (`SO_RCVBUF`; the kernel doubles it, and advertises at most
/// part of that as its window). A switch port buffers what its kernel queue holds while the
/// worker is not running (an AF_PACKET port's default ring: 4 MiB, about 2,600 full-size frames
/// or 48 GSO super-frames); with a window above that (Linux lets a receive window grow to
/// `tcp_rmem`'s maximum, 6 to 32 MiB), a worker starved on a loaded machine lets the ring
/// overflow and the frames are counted as `no_buffer`. A window far below it means the sender
/// never has more in flight than the ring holds, however long the worker waits for a core.
const RECV_BUFFER: libc::c_int = 512 << 10;

/// Sends `bytes` bytes from a socket in `from` to a listener in `to` (`to_ip`), through the
/// switch, and checks every byte on arrival. The receive window is bounded ([`RECV_BUFFER`]).
pub fn tcp_transfer(from: Option<&str>, to: Option<&str>, to_ip: &str, bytes: usize) {
    let port = 5201;
    let listener = maybe_in(to, || TcpListener::bind((to_ip, port)).map_err(|e| e.to_string())).unwrap();
    // Set before any connection arrives: the accepted socket inherits it, and its window
    // scale is chosen from it.
    // SAFETY: setsockopt on our socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &RECV_BUFFER as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    let server = std::thread::spawn(move || -> Result<usize, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        loop {
            let k = s.read(&mut buf).map_err(|e| format!("read at byte {n}: {e}"))?;
            if k == 0 {
                break;
            }
            if let Some(i) = (0..k).find(|&i| buf[i] != byte_at(7, n + i)) {
                return Err(format!("byte {} differs", n + i));
            }
            n += k;
        }
        s.write_all(b"done").map_err(|e| e.to_string())?;
        Ok(n)
    });
    let addr: SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
    // Retry until the switch forwards (bounded).
    let mut c = maybe_in(from, || {
        let t0 = Instant::now();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => return Ok(s),
                Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                    return Err(format!("TCP connect {addr} through the switch: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let data: Vec<u8> = (0..bytes).map(|i| byte_at(7, i)).collect();
    for part in data.chunks(1 << 20) {
        c.write_all(part).expect("send through the switch");
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ack = [0u8; 4];
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.read_exact(&mut ack).expect("the receiver's acknowledgement");
    assert_eq!(&ack, b"done");
    assert_eq!(server.join().unwrap(), Ok(bytes));
}

const UDP_SEGMENT: libc::c_int = 103;

/// The next datagram that is not a late copy of the start-up probe.
fn recv_skipping_probes(rx: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let (n, _) = rx.recv_from(buf)?;
        if &buf[..n] != b"probe" {
            return Ok(n);
        }
    }
}

/// UDP from `from_ip` in `from` to `to_ip` in `to` through the switch: 600 datagrams of every
/// size up to a 1500-byte MTU, one at a time (none lost to a full socket buffer), each checked
/// whole on arrival (the receiving stack verifies its checksum), then one UDP GSO send of 8 x
/// 1000 bytes that must arrive as 8 datagrams.
pub fn udp_exchange(from: Option<&str>, from_ip: &str, to: Option<&str>, to_ip: &str) {
    let rx = maybe_in(to, || UdpSocket::bind((to_ip, 6000)).map_err(|e| e.to_string())).unwrap();
    let tx = maybe_in(from, || UdpSocket::bind((from_ip, 6001)).map_err(|e| e.to_string())).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let dst: SocketAddr = format!("{to_ip}:6000").parse().unwrap();
    // Until the switch forwards: a probe answered once.
    let t0 = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        tx.send_to(b"probe", dst).unwrap();
        if let Ok((n, _)) = rx.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no UDP through the switch");
    }
    for i in 0..600usize {
        let len = 1 + (i * 37) % 1472;
        let d: Vec<u8> = (0..len).map(|k| byte_at(i as u64, k)).collect();
        tx.send_to(&d, dst).unwrap();
        let n =
            recv_skipping_probes(&rx, &mut buf).unwrap_or_else(|e| panic!("datagram {i} ({len} bytes): {e}"));
        assert_eq!(&buf[..n], &d[..], "datagram {i}");
    }
    let gso: libc::c_int = 1000;
    // SAFETY: setsockopt on our socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            &gso as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let big: Vec<u8> = (0..8000).map(|k| byte_at(99, k)).collect();
    tx.send_to(&big, dst).unwrap();
    for s in 0..8 {
        let n = recv_skipping_probes(&rx, &mut buf).unwrap_or_else(|e| panic!("GSO segment {s}: {e}"));
        assert_eq!(&buf[..n], &big[s * 1000..(s + 1) * 1000], "GSO segment {s}");
    }
}

/// `switchyard pmd --fwd switch --json` (the binary `bin`) with the options `extra` on `ports`, running until stopped.
pub fn spawn_pmd(bin: &str, extra: &[&str], ports: &[String]) -> Result<Child, String> {
    spawn_pmd_in(None, bin, extra, ports)
}

/// [`spawn_pmd`] in network namespace `ns` (`ip netns exec`, which execs pmd: the child is
/// pmd itself, as [`stop_pmd`] needs).
pub fn spawn_pmd_in(ns: Option<&str>, bin: &str, extra: &[&str], ports: &[String]) -> Result<Child, String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(["pmd", "--fwd", "switch", "--json"]).args(extra);
    for p in ports {
        cmd.args(["--port", p]);
    }
    cmd
        // stdin stays open: EOF on it would stop pmd.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn switchyard pmd: {e}"))
}

/// Stops pmd (SIGTERM) and returns its last JSON line.
pub fn stop_pmd(child: Child) -> serde_json::Value {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("pmd output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pmd failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("pmd's last line is not JSON ({e}): {stdout}"))
}
