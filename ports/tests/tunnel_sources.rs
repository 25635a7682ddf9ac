//! Which outer sources a tunnel port on the kernel transport takes datagrams from
//! (`switchyard_ports::udp_tunnel`, docs/overlay.md "Drops on receipt"): with learning off,
//! only the endpoints its configuration names now (the flood list, the static remote MACs'
//! endpoints); any other host reaching the UDP port is `tunnel_unknown_source`. With learning
//! on, every source is taken (and learned). Real sockets on the loopback; the datagrams are
//! written by hand (RFC 7348 section 5: flags 0x08, 24 reserved bits, the VNI, 8 reserved bits).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx, RxQueue};
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::{DropReason, Pool};
use switchyard_ports::udp_tunnel::{TunnelOptions, UdpTunnelPort};

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// In the flood list.
const FLOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The endpoint of a static remote MAC only.
const STATIC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// No endpoint of the port.
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
const VNI: u32 = 5001;

/// A VXLAN datagram around a 60-byte inner frame whose last source-MAC byte is `n`.
fn datagram(n: u8) -> Vec<u8> {
    let v = VNI.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(&[0xff; 6]);
    d.extend_from_slice(&[2, 0, 0, 0, 0, n, 0x88, 0xb5]);
    d.resize(8 + 60, 0xab);
    d
}

/// Polls `rx` until nothing came for 200 ms (bounded); the inner frames' tags (`n`).
fn drain(rx: &mut Box<dyn RxQueue>, cache: &mut PoolCache, drops: &mut DropTally) -> Vec<u8> {
    let mut got = Vec::new();
    let mut idle = Instant::now();
    let t = Instant::now();
    while idle.elapsed() < Duration::from_millis(200) && t.elapsed() < Duration::from_secs(10) {
        let mut burst = Burst::new();
        if rx.rx_burst(RxCtx::new(cache, drops), &mut burst, 32) == 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        idle = Instant::now();
        for b in burst {
            got.push(b.data()[11]);
            cache.free(b);
        }
    }
    got
}

fn opts(port: u16, learn: bool) -> TunnelOptions {
    TunnelOptions {
        kind: TunnelKind::Vxlan,
        vni: VNI,
        local: IpAddr::V4(LOCAL),
        dstport: port,
        flood: vec![IpAddr::V4(FLOOD)],
        remote_macs: vec![(MacAddr([2, 0, 0, 0, 0xb, 4]), IpAddr::V4(STATIC))],
        learn,
        aging_s: 300,
    }
}

#[test]
fn learning_off_takes_only_configured_endpoints() {
    let port = UdpSocket::bind((LOCAL, 0)).unwrap().local_addr().unwrap().port();
    let p = UdpTunnelPort::open("tun", &opts(port, false)).unwrap();
    let mut rx = p.open_rx(0).unwrap();
    let pool = Pool::new("t", 256).unwrap();
    let mut cache = pool.cache();
    let mut drops = DropTally::default();
    let (flood, stat, stranger) = (
        UdpSocket::bind((FLOOD, 0)).unwrap(),
        UdpSocket::bind((STATIC, 0)).unwrap(),
        UdpSocket::bind((STRANGER, 0)).unwrap(),
    );
    let send = |s: &UdpSocket, n: u8| s.send_to(&datagram(n), (LOCAL, port)).unwrap();
    // Interleaved, so that the per-run source cache is crossed both ways.
    send(&flood, 1);
    send(&stranger, 91);
    send(&stranger, 92);
    send(&stat, 2);
    send(&stranger, 93);
    send(&flood, 3);
    assert_eq!(drain(&mut rx, &mut cache, &mut drops), [1, 2, 3]);
    assert_eq!(drops.get(DropReason::TunnelUnknownSource), 3);
    assert_eq!(drops.total(), 3);

    // An update that leaves the static endpoint out: it is no endpoint any more.
    let mut o = opts(port, false);
    o.remote_macs.clear();
    p.remotes().update(&o.flood, &[], false).unwrap();
    send(&stat, 4);
    send(&flood, 5);
    assert_eq!(drain(&mut rx, &mut cache, &mut drops), [5]);
    assert_eq!(drops.get(DropReason::TunnelUnknownSource), 4);

    // Learning on: every source is taken (and learned).
    p.remotes().update(&o.flood, &[], true).unwrap();
    send(&stranger, 94);
    send(&stat, 6);
    assert_eq!(drain(&mut rx, &mut cache, &mut drops), [94, 6]);
    assert_eq!(drops.total(), 4);
    assert!(p.remotes().endpoints().contains(&IpAddr::V4(STRANGER)), "the stranger is learned");
    drop(rx);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}
