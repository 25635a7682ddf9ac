//! Traffic between network-namespace "pods" for the kernel-port tests (tests/kernel_offloads.rs,
//! cni/tests): a TCP stream whose receiver checks every byte, so a frame the switch corrupted
//! or lost shows, and bounded waits throughout. The including test crate has the
//! `kports_common` module (dataplane/tests/kports_common) at its root.
#![allow(dead_code)]

use crate::kports_common::in_netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// Sends `bytes` bytes from a socket in `from` to a listener in `to` (`to_ip`), through the
/// switch, and checks every byte on arrival.
pub fn tcp_transfer(from: Option<&str>, to: Option<&str>, to_ip: &str, bytes: usize) {
    let port = 5201;
    let listener = maybe_in(to, || TcpListener::bind((to_ip, port)).map_err(|e| e.to_string())).unwrap();
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
