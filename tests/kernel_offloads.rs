//! TCP and UDP through `switchyard pmd --fwd switch` between two network-namespace "pods" on
//! veth pairs with their default offloads on (transmit checksum offload and TSO, as every
//! pod's interface has): the switch must hand the receiving stack finished checksums and
//! MTU-sized segments, or its TCP never connects. The receiving kernel verifies every
//! checksum; the test checks every byte and that the switch counted no drop (with TCP, save a
//! few `no_buffer` for the kernel's ring overflowing while the worker was off its core on a
//! loaded machine, which TCP retransmits: `assert_overflows_at_most`).
//!
//! Needs root (netns, veth); skips with a message elsewhere.

#[path = "../ports/tests/kports_common/mod.rs"]
#[macro_use]
mod kports_common;
mod traffic;

use kports_common::{ip, skip, skip_reason, VethNs};
use std::process::Child;
use std::time::{Duration, Instant};
use traffic::{stop_pmd, tcp_transfer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const A: &str = "10.201.0.1";
const B: &str = "10.201.0.2";
const TCP_BYTES: usize = 32 << 20;

in_both_rx_modes!(
    ring = "",
    recvmmsg = ",recvmmsg";
    tcp_transfer_between_veth_pods_with_default_offloads,
    tcp_both_ways_between_a_tap_port_and_a_veth_pod,
    udp_datagrams_and_udp_gso_between_veth_pods_with_default_offloads,
);

/// Two pods on one switch: pmd in switch mode between the host ends of their veths.
struct Topology {
    a: VethNs,
    b: VethNs,
    pmd: Option<Child>,
}

impl Topology {
    /// `rx`: the AF_PACKET ports' spec suffix (`""`, or `",recvmmsg"`).
    fn start(rx: &str) -> Result<Topology, String> {
        let a = VethNs::create()?;
        let b = VethNs::create()?;
        ip(&["-n", &a.ns, "addr", "add", &format!("{A}/24"), "dev", &a.peer])?;
        ip(&["-n", &b.ns, "addr", "add", &format!("{B}/24"), "dev", &b.peer])?;
        let pmd = traffic::spawn_pmd(
            BIN,
            &[],
            &[format!("afpacket:{}{rx}", a.host), format!("afpacket:{}{rx}", b.host)],
        )?;
        Ok(Topology { a, b, pmd: Some(pmd) })
    }

    /// Stops pmd (SIGTERM) and returns its last JSON line.
    fn stop(&mut self) -> serde_json::Value {
        stop_pmd(self.pmd.take().expect("pmd running"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut c) = self.pmd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every port's drops in pmd's JSON summary are zero and some frames moved.
fn assert_no_drops(summary: &serde_json::Value) {
    assert_overflows_at_most(summary, false);
}

/// [`assert_no_drops`], or with `tcp`, for a TCP transfer on this shared 2-core machine: a
/// port may have counted `no_buffer` for frames the kernel dropped when its AF_PACKET ring or
/// queue overflowed while the worker was off its core (the kernel's drop, which TCP
/// retransmits: a loaded machine descheduled pmd long enough once in many runs, 6 frames),
/// at most 64 and one in 100 of the frames the port received; no other reason (an offload the
/// switch got wrong is `bad_offload`, a frame too large `oversize`), and no more.
fn assert_overflows_at_most(summary: &serde_json::Value, tcp: bool) {
    let ports = summary["ports"].as_array().expect("ports in the summary");
    assert_eq!(ports.len(), 2, "{summary}");
    for p in ports {
        let rx = p["rx"].as_u64().unwrap_or(0);
        assert!(rx > 0, "{summary}");
        let overflow = if tcp { p["drop_reasons"]["no_buffer"].as_u64().unwrap_or(0) } else { 0 };
        assert_eq!(p["drops"].as_u64(), Some(overflow), "a port dropped frames: {summary}");
        assert!(overflow <= 64 + rx / 100, "a port's ring overflowed too often: {summary}");
    }
}

fn tcp_transfer_between_veth_pods_with_default_offloads(rx: &str) {
    if let Some(why) = skip_reason() {
        return skip("tcp_transfer_between_veth_pods_with_default_offloads", &why);
    }
    let mut t = Topology::start(rx).expect("topology");
    tcp_transfer(Some(&t.a.ns), Some(&t.b.ns), B, TCP_BYTES);
    let summary = t.stop();
    assert_overflows_at_most(&summary, true);
    // TSO on the sender: the 32 MiB reach the switch as super-frames that leave it as
    // MSS-sized segments.
    let ports = summary["ports"].as_array().unwrap();
    let (a_rx, b_tx) = (ports[0]["rx"].as_u64().unwrap(), ports[1]["tx"].as_u64().unwrap());
    assert!(b_tx >= (TCP_BYTES / 1448) as u64, "{summary}");
    eprintln!("frames from A: {a_rx}, segments to B: {b_tx}");
}

/// A TAP port whose kernel side is a namespace of its own, and a veth pod: TCP both ways. pmd
/// runs in that namespace (a TAP interface stays in the namespace that created it, and the
/// port follows its link there), with the veth pod's host end moved in beside it; nothing of
/// the test is in the root namespace, so copies of it run at once.
fn tcp_both_ways_between_a_tap_port_and_a_veth_pod(rx: &str) {
    if let Some(why) = skip_reason() {
        return skip("tcp_both_ways_between_a_tap_port_and_a_veth_pod", &why);
    }
    let a = VethNs::create().expect("veth pod");
    ip(&["-n", &a.ns, "addr", "add", "10.202.0.2/24", "dev", &a.peer]).unwrap();
    let (pid, n) = kports_common::unique();
    let sw = NetnsGuard::create(format!("sy-tapsw-{pid}-{n}")).expect("the switch's namespace");
    ip(&["link", "set", &a.host, "netns", &sw.0]).unwrap();
    ip(&["-n", &sw.0, "link", "set", &a.host, "up"]).unwrap();
    let tap = format!("sy{pid}t{n}");
    let ports = [format!("afpacket:{}{rx}", a.host), format!("tap:{tap}")];
    let pmd = traffic::spawn_pmd_in(Some(&sw.0), BIN, &[], &ports).unwrap();
    let t0 = Instant::now();
    while ip(&["-n", &sw.0, "link", "show", &tap]).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "pmd did not create {tap}");
        std::thread::sleep(Duration::from_millis(50));
    }
    ip(&["-n", &sw.0, "addr", "add", "10.202.0.1/24", "dev", &tap]).unwrap();
    ip(&["-n", &sw.0, "link", "set", &tap, "up"]).unwrap();
    tcp_transfer(Some(&a.ns), Some(&sw.0), "10.202.0.1", TCP_BYTES);
    tcp_transfer(Some(&sw.0), Some(&a.ns), "10.202.0.2", TCP_BYTES);
    assert_overflows_at_most(&stop_pmd(pmd), true);
}

/// A network namespace, deleted on drop (with every interface still in it).
struct NetnsGuard(String);

impl NetnsGuard {
    fn create(name: String) -> Result<NetnsGuard, String> {
        ip(&["netns", "add", &name])?;
        Ok(NetnsGuard(name))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn udp_datagrams_and_udp_gso_between_veth_pods_with_default_offloads(rx: &str) {
    if let Some(why) = skip_reason() {
        return skip("udp_datagrams_and_udp_gso_between_veth_pods_with_default_offloads", &why);
    }
    let mut t = Topology::start(rx).expect("topology");
    traffic::udp_exchange(Some(&t.a.ns), A, Some(&t.b.ns), B);
    let summary = t.stop();
    assert_no_drops(&summary);
}
