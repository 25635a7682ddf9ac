//! AF_XDP ports through `switchyard pmd --fwd switch` between network-namespace "pods" on
//! veth pairs the tests create: frames both ways, TCP from pods with their default offloads
//! on (the receiving kernel verifies every checksum, the receiver every byte), a frame larger
//! than a UMEM chunk (counted, `afxdp_rx_dropped`), and an interface deleted under a running
//! switch (the port goes down, pmd keeps forwarding and stops cleanly).
//!
//! Needs root (netns, veth, BPF) and a kernel with AF_XDP; skips with a message elsewhere.

#[path = "../ports/tests/kports_common/mod.rs"]
mod kports_common;
mod traffic;

use kports_common::{afxdp_skip_reason, frame, has_marker, ip, skip, RawSock, VethNs, WAIT};
use std::process::Child;
use traffic::{spawn_pmd, stop_pmd, tcp_transfer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];

/// Two pods and pmd switching between the host ends of their veths over AF_XDP.
struct Pods {
    a: VethNs,
    b: VethNs,
    pmd: Option<Child>,
}

impl Pods {
    fn start(mtu: Option<u32>) -> Pods {
        let a = VethNs::create().expect("veth pod a");
        let b = VethNs::create().expect("veth pod b");
        if let Some(m) = mtu {
            a.set_mtu(m).unwrap();
        }
        ip(&["-n", &a.ns, "addr", "add", "10.203.0.1/24", "dev", &a.peer]).unwrap();
        ip(&["-n", &b.ns, "addr", "add", "10.203.0.2/24", "dev", &b.peer]).unwrap();
        let pmd = spawn_pmd(BIN, &[], &[format!("afxdp:{}", a.host), format!("afxdp:{}", b.host)]).unwrap();
        let p = Pods { a, b, pmd: Some(pmd) };
        p.wait_attached();
        p
    }

    /// Bounded wait until pmd has attached its XDP program to both host ends.
    fn wait_attached(&self) {
        let t0 = std::time::Instant::now();
        loop {
            let attached = [&self.a.host, &self.b.host].iter().all(|h| {
                std::process::Command::new("ip")
                    .args(["link", "show", h])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("xdp"))
            });
            if attached {
                return;
            }
            assert!(t0.elapsed() < WAIT * 3, "pmd did not attach XDP to {} and {}", self.a.host, self.b.host);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> serde_json::Value {
        stop_pmd(self.pmd.take().expect("pmd running"))
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        if let Some(mut c) = self.pmd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn port(summary: &serde_json::Value, i: usize) -> &serde_json::Value {
    &summary["ports"][i]
}

/// Sends `n` marked frames from `from` and returns how many with the marker `to` got.
fn exchange(from: &RawSock, to: &mut RawSock, src: [u8; 6], dst: [u8; 6], marker: &str, n: usize) -> usize {
    let mut got = 0;
    for i in 0..n {
        let m = format!("{marker}-{i}");
        from.send(&frame(dst, src, &[], &m, 200 + i * 10));
        if to.recv_matching(WAIT, |f| has_marker(f, &m)).is_some() {
            got += 1;
        }
    }
    got
}

#[test]
fn frames_both_ways_through_two_afxdp_ports() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("frames_both_ways_through_two_afxdp_ports", &why);
    }
    let mut p = Pods::start(None);
    let sa = RawSock::open(Some(&p.a.ns), &p.a.peer).unwrap();
    let mut sb = RawSock::open(Some(&p.b.ns), &p.b.peer).unwrap();
    assert_eq!(exchange(&sa, &mut sb, MAC_A, MAC_B, "a2b", 20), 20);
    let sb2 = RawSock::open(Some(&p.b.ns), &p.b.peer).unwrap();
    let mut sa2 = RawSock::open(Some(&p.a.ns), &p.a.peer).unwrap();
    assert_eq!(exchange(&sb2, &mut sa2, MAC_B, MAC_A, "b2a", 20), 20);
    let s = p.stop();
    assert_eq!(s["pool_in_use"].as_u64(), Some(0), "{s}");
    for i in 0..2 {
        assert!(port(&s, i)["rx"].as_u64().unwrap() >= 20, "{s}");
        assert!(port(&s, i)["tx"].as_u64().unwrap() >= 20, "{s}");
        assert_eq!(port(&s, i)["drops"].as_u64(), Some(0), "{s}");
    }
}

#[test]
fn tcp_between_veth_pods_with_default_offloads_over_afxdp() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("tcp_between_veth_pods_with_default_offloads_over_afxdp", &why);
    }
    let mut p = Pods::start(None);
    tcp_transfer(Some(&p.a.ns), Some(&p.b.ns), "10.203.0.2", 8 << 20);
    tcp_transfer(Some(&p.b.ns), Some(&p.a.ns), "10.203.0.1", 8 << 20);
    let s = p.stop();
    for i in 0..2 {
        assert_eq!(port(&s, i)["drops"].as_u64(), Some(0), "{s}");
    }
    // The veth peers' TSO is off while XDP is attached: every frame fits a chunk, so the
    // 8 MiB each way arrive as MTU-sized segments.
    assert!(port(&s, 0)["rx"].as_u64().unwrap() >= (8 << 20) / 1448, "{s}");
}

#[test]
fn a_frame_larger_than_a_umem_chunk_is_counted() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("a_frame_larger_than_a_umem_chunk_is_counted", &why);
    }
    // Pod a's link takes 3000-byte frames; a chunk has room for fewer (2176 less the kernel's
    // 256 bytes of XDP headroom).
    let mut p = Pods::start(Some(3000));
    let sa = RawSock::open(Some(&p.a.ns), &p.a.peer).unwrap();
    let mut sb = RawSock::open(Some(&p.b.ns), &p.b.peer).unwrap();
    for i in 0..3 {
        sa.send(&frame(MAC_B, MAC_A, &[], &format!("big-{i}"), 2500));
    }
    // Frames that fit still pass, before and after.
    assert_eq!(exchange(&sa, &mut sb, MAC_A, MAC_B, "fits", 5), 5);
    assert!(sb.recv_matching(std::time::Duration::from_millis(200), |f| has_marker(f, "big-")).is_none());
    // Let the idle worker read the kernel's counts before it sleeps.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(exchange(&sa, &mut sb, MAC_A, MAC_B, "after", 2), 2);
    let s = p.stop();
    assert_eq!(port(&s, 0)["drop_reasons"]["afxdp_rx_dropped"].as_u64(), Some(3), "{s}");
    assert_eq!(port(&s, 1)["rx"].as_u64(), Some(0), "{s}");
}

#[test]
fn an_interface_deleted_under_the_switch_takes_its_port_down() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("an_interface_deleted_under_the_switch_takes_its_port_down", &why);
    }
    let mut p = Pods::start(None);
    let sb = RawSock::open(Some(&p.b.ns), &p.b.peer).unwrap();
    let mut sa = RawSock::open(Some(&p.a.ns), &p.a.peer).unwrap();
    assert_eq!(exchange(&sb, &mut sa, MAC_B, MAC_A, "before", 3), 3);
    ip(&["link", "del", &p.a.host]).unwrap();
    for i in 0..50 {
        sb.send(&frame(MAC_A, MAC_B, &[], &format!("gone-{i}"), 100));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let s = p.stop();
    // Every frame b sent after the deletion went towards the deleted port and was counted.
    assert!(port(&s, 1)["rx"].as_u64().unwrap() >= 53, "{s}");
    assert_eq!(port(&s, 0)["drop_reasons"]["port_down"].as_u64(), Some(50), "{s}");
    assert_eq!(port(&s, 0)["tx"].as_u64(), Some(3), "{s}");
}

/// A pod on a veth pair whose ends have two queues each (as [`VethNs`], gone on drop).
fn two_queue_veth() -> VethNs {
    let (pid, n) = kports_common::unique();
    let v = VethNs {
        ns: format!("sy-test-{pid}-q{n}"),
        host: format!("sy{pid}q{n}"),
        peer: format!("sy{pid}r{n}"),
    };
    ip(&["netns", "add", &v.ns]).unwrap();
    #[rustfmt::skip]
    ip(&["link", "add", &v.host, "numtxqueues", "2", "numrxqueues", "2", "type", "veth",
         "peer", "name", &v.peer, "numtxqueues", "2", "numrxqueues", "2"]).unwrap();
    ip(&["link", "set", &v.peer, "netns", &v.ns]).unwrap();
    ip(&["-n", &v.ns, "link", "set", &v.peer, "up"]).unwrap();
    ip(&["link", "set", &v.host, "up"]).unwrap();
    v
}

#[test]
fn two_rx_queues_on_two_workers_and_too_many_queues_refused() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("two_rx_queues_on_two_workers_and_too_many_queues_refused", &why);
    }
    let a = two_queue_veth();
    let b = VethNs::create().expect("veth pod b");
    // More queues than the interface has: pmd refuses to start, naming the queue.
    let out = std::process::Command::new(BIN)
        .args(["pmd", "--fwd", "switch", "--seconds", "1", "--port"])
        .arg(format!("afxdp:{},queues=3", a.host))
        .args(["--port", &format!("afxdp:{}", b.host)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("queue 2"), "{err}");
    // Two queues, two workers: TCP both ways (each flow lands on one of the queues).
    ip(&["-n", &a.ns, "addr", "add", "10.204.0.1/24", "dev", &a.peer]).unwrap();
    ip(&["-n", &b.ns, "addr", "add", "10.204.0.2/24", "dev", &b.peer]).unwrap();
    let ports = [format!("afxdp:{},queues=2", a.host), format!("afxdp:{}", b.host)];
    let pmd = spawn_pmd(BIN, &["--lcores", "0,1"], &ports).unwrap();
    let mut p = Pods { a, b, pmd: Some(pmd) };
    p.wait_attached();
    tcp_transfer(Some(&p.a.ns), Some(&p.b.ns), "10.204.0.2", 4 << 20);
    tcp_transfer(Some(&p.b.ns), Some(&p.a.ns), "10.204.0.1", 4 << 20);
    let s = p.stop();
    assert_eq!(s["workers"].as_array().map(Vec::len), Some(2), "{s}");
    for i in 0..2 {
        assert_eq!(port(&s, i)["drops"].as_u64(), Some(0), "{s}");
    }
}
