//! The VXLAN and Geneve tunnel port (`switchyard_ports::udp_tunnel`) against an independent
//! implementation: scapy's VXLAN and Geneve layers (tunnel_scapy.py, Debian's python3-scapy),
//! over real UDP sockets on the loopback. Both directions: what the port sends, as scapy
//! dissects it; what scapy builds (options/TLVs, reserved bits, and every malformed case), as
//! the port delivers or counts it.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_dataplane::port::{burst_of, Burst, DropTally, PortBackend, RxCtx};
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_dataplane::{DropReason, Pool};
use switchyard_ports::udp_tunnel::{TunnelOptions, UdpTunnelPort};
use testkit::frame::{Frame, ETHERTYPE_LOCAL_EXPERIMENTAL};

const PY: &str = testkit::probe::SCAPY_PYTHON;
const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PEER: &str = "127.0.0.2";

fn script() -> String {
    format!("{}/tests/tunnel_scapy.py", env!("CARGO_MANIFEST_DIR"))
}

/// A UDP port free on both loopback addresses right now.
fn free_port() -> u16 {
    loop {
        let s = UdpSocket::bind((LOCAL, 0)).unwrap();
        let p = s.local_addr().unwrap().port();
        if UdpSocket::bind((PEER, p)).is_ok() {
            return p;
        }
    }
}

/// A tunnel port on `port` flooding to `flood`.
fn open(kind: TunnelKind, port: u16, flood: &[&str]) -> UdpTunnelPort {
    let o = TunnelOptions {
        kind,
        vni: 5001,
        local: IpAddr::V4(LOCAL),
        dstport: port,
        flood: flood.iter().map(|a| a.parse().unwrap()).collect(),
        remote_macs: vec![],
        learn: true,
        aging_s: 300,
    };
    UdpTunnelPort::open("tun0", &o).unwrap()
}

fn frame(n: u8, len: usize) -> Vec<u8> {
    Frame::new([0xff; 6], [2, 0, 0, 0, 0xa, n])
        .ethertype(ETHERTYPE_LOCAL_EXPERIMENTAL)
        .fill(len, |k| (k as u8).wrapping_mul(7) ^ n)
        .build()
}

fn tx_is_what_scapy_dissects(kind: TunnelKind) {
    if let Err(why) = testkit::probe::scapy() {
        testkit::skip(&testkit::current_test(), &why);
        return;
    }
    let port = free_port();
    let tun = open(kind, port, &[PEER]);
    let frames: Vec<Vec<u8>> = vec![frame(1, 60), frame(2, 1000), frame(3, 14)];
    let mut py = Command::new(PY)
        .args([&script(), "recv", kind.name(), PEER, &port.to_string(), &frames.len().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let pool = Pool::new("t", 64).unwrap();
    let mut cache = pool.cache();
    let mut tx = tun.open_tx(0).unwrap();
    let mut burst = burst_of(&mut cache, &frames).unwrap();
    let mut drops = DropTally::default();
    // Broadcast destinations: one copy each to the flood list's one endpoint.
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
    assert!(drops.is_zero());
    for f in &frames {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(v["vni"], 5001, "{v}");
        assert_eq!(v["inner"].as_str().unwrap(), hex(f), "{v}");
        match kind {
            TunnelKind::Vxlan => assert_eq!(v["flags"], 0x08, "{v}"),
            TunnelKind::Geneve => {
                for (k, want) in
                    [("version", 0), ("optionlen", 0), ("oam", 0), ("critical", 0), ("proto", 0x6558)]
                {
                    assert_eq!(v[k], want, "{k}: {v}");
                }
            }
        }
    }
    assert!(py.wait().unwrap().success());
    drop(tx);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rx_delivers_or_counts_what_scapy_builds(kind: TunnelKind) {
    if let Err(why) = testkit::probe::scapy() {
        testkit::skip(&testkit::current_test(), &why);
        return;
    }
    let port = free_port();
    // Two endpoints: a port with one learns no remote MAC (every frame goes there).
    let tun = open(kind, port, &[PEER, "127.0.0.3"]);
    let mut rx = tun.open_rx(0).unwrap();
    let out = Command::new(PY)
        .args([&script(), "send", kind.name(), PEER, &port.to_string(), "127.0.0.1"])
        .output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cases: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let want_delivered: Vec<&str> =
        cases.iter().filter(|c| c["verdict"] == "deliver").map(|c| c["inner"].as_str().unwrap()).collect();
    assert!(want_delivered.len() >= 2 && cases.len() > want_delivered.len());
    let pool = Pool::new("t", 256).unwrap();
    let mut cache = pool.cache();
    let mut drops = DropTally::default();
    let mut got = Vec::new();
    let t = Instant::now();
    while (got.len() + drops.total() as usize) < cases.len() && t.elapsed() < Duration::from_secs(5) {
        let mut burst = Burst::new();
        if rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        for b in burst {
            got.push(hex(b.data()));
            cache.free(b);
        }
    }
    assert_eq!(got, want_delivered);
    for r in DropReason::ALL {
        let want = cases.iter().filter(|c| c["verdict"] == r.name()).count() as u32;
        assert_eq!(drops.get(*r), want, "{}", r.name());
    }
    // The senders' MACs were learned: a frame to one goes to the peer alone, not to the
    // flood list.
    let mac = switchyard_dataplane::wire::MacAddr([2, 0, 0, 0, 0xb, 1]);
    assert_eq!(tun.remote_of(mac), Some(PEER.parse().unwrap()));
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn vxlan_tx_is_what_scapy_dissects() {
    tx_is_what_scapy_dissects(TunnelKind::Vxlan);
}

#[test]
fn geneve_tx_is_what_scapy_dissects() {
    tx_is_what_scapy_dissects(TunnelKind::Geneve);
}

#[test]
fn vxlan_rx_delivers_or_counts_what_scapy_builds() {
    rx_delivers_or_counts_what_scapy_builds(TunnelKind::Vxlan);
}

#[test]
fn geneve_rx_delivers_or_counts_what_scapy_builds() {
    rx_delivers_or_counts_what_scapy_builds(TunnelKind::Geneve);
}
