//! Tunnel ports of several VNIs on one UDP socket (`switchyard_ports::udp_tunnel`): whichever
//! port reads the socket keeps its own VNI's datagrams and hands the others to their ports;
//! an unknown VNI is counted (`tunnel_wrong_vni`), a full hand-over queue too
//! (`tunnel_demux_full`); the port that was handed datagrams is woken through its wake
//! descriptor; what a port leaves in its hand-over queue is counted; a port being removed
//! hands its VNI to a new one at once. Real sockets on the loopback; the datagrams are written by hand here (RFC 7348
//! section 5: flags 0x08, 24 reserved bits, the VNI, 8 reserved bits).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx, RxQueue};
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_dataplane::{DropReason, Pool};
use switchyard_ports::udp_tunnel::{TunnelOptions, UdpTunnelPort};

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn opts(kind: TunnelKind, vni: u32, port: u16) -> TunnelOptions {
    TunnelOptions {
        kind,
        vni,
        local: IpAddr::V4(LOCAL),
        dstport: port,
        flood: vec![IpAddr::V4(PEER)],
        remote_macs: vec![],
        learn: false,
        aging_s: 300,
    }
}

/// A VXLAN datagram of `vni` around a 60-byte inner frame whose last source-MAC byte is `n`.
fn datagram(vni: u32, n: u16) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(&[0xff; 6]);
    d.extend_from_slice(&[2, 0, 0, 0, (n >> 8) as u8, n as u8, 0x88, 0xb5]);
    d.resize(8 + 60, 0xab);
    d
}

/// Polls `rx` until nothing came for 200 ms (bounded); the inner frames' tags (`n`).
fn drain(rx: &mut Box<dyn RxQueue>, cache: &mut PoolCache, drops: &mut DropTally) -> Vec<u16> {
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
            got.push(u16::from_be_bytes([b.data()[10], b.data()[11]]));
            cache.free(b);
        }
    }
    got
}

/// Whether `rx`'s wake descriptor is readable now.
fn woken(rx: &dyn RxQueue) -> bool {
    let fd = rx.wake_fd().expect("a tunnel RX queue has a wake descriptor");
    let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() == 1
}

#[test]
fn two_vnis_share_one_socket_demultiplexed_by_vni() {
    let port = UdpSocket::bind((LOCAL, 0)).unwrap().local_addr().unwrap().port();
    let a = UdpTunnelPort::open("tun-a", &opts(TunnelKind::Vxlan, 100, port)).unwrap();
    let b = UdpTunnelPort::open("tun-b", &opts(TunnelKind::Vxlan, 200, port)).unwrap();
    assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    // One VNI once per socket; another encapsulation cannot have the port.
    let again = UdpTunnelPort::open("tun-c", &opts(TunnelKind::Vxlan, 100, port)).unwrap_err();
    assert!(again.to_string().contains("VNI 100 is already served"), "{again}");
    assert!(UdpTunnelPort::open("tun-g", &opts(TunnelKind::Geneve, 300, port)).is_err());

    let (mut rx_a, mut rx_b) = (a.open_rx(0).unwrap(), b.open_rx(0).unwrap());
    let pool = Pool::new("t", 4096).unwrap();
    let mut cache = pool.cache();
    let (mut drops_a, mut drops_b) = (DropTally::default(), DropTally::default());
    let peer = UdpSocket::bind((PEER, 0)).unwrap();
    let send = |vni: u32, n: u16| peer.send_to(&datagram(vni, n), (LOCAL, port)).unwrap();
    // Interleaved: 3 for A, 3 for B, 2 for nobody.
    for (vni, n) in [(100, 1), (200, 11), (300, 21), (100, 2), (200, 12), (100, 3), (300, 22), (200, 13)] {
        send(vni, n);
    }
    // Only A polls: it reads everything off the socket.
    assert_eq!(drain(&mut rx_a, &mut cache, &mut drops_a), [1, 2, 3]);
    assert_eq!(drops_a.get(DropReason::TunnelWrongVni), 2);
    assert_eq!(drops_a.total(), 2);
    // B was handed its three and woken, although the socket is empty now.
    assert!(woken(&*rx_b), "B's wake descriptor is not readable");
    assert!(!rx_b.arm_wakeup(), "B must not sleep with datagrams in its inbox");
    assert_eq!(drain(&mut rx_b, &mut cache, &mut drops_b), [11, 12, 13]);
    assert_eq!(drops_b.total(), 0);
    rx_b.disarm_wakeup();
    assert!(!woken(&*rx_b), "B's wake descriptor stays readable with nothing to read");
    assert!(rx_b.arm_wakeup());

    // B's queue holds 1024 datagrams: 1030 read by A leave 6 counted on A.
    for n in 0..1030 {
        send(200, 100 + n);
    }
    assert!(drain(&mut rx_a, &mut cache, &mut drops_a).is_empty());
    assert_eq!(drops_a.get(DropReason::TunnelDemuxFull), 6);
    let got_b = drain(&mut rx_b, &mut cache, &mut drops_b);
    assert_eq!(got_b, (100..1124).collect::<Vec<u16>>());

    // B gone: its VNI is nobody's.
    drop(rx_b);
    drop(b);
    send(200, 31);
    send(100, 4);
    assert_eq!(drain(&mut rx_a, &mut cache, &mut drops_a), [4]);
    assert_eq!(drops_a.get(DropReason::TunnelWrongVni), 3);
    // And a new port may serve it again. What it was handed and never took when it goes is
    // counted by the next reader (its VNI is nobody's then), not freed unseen.
    let b2 = UdpTunnelPort::open("tun-b2", &opts(TunnelKind::Vxlan, 200, port)).unwrap();
    for n in 0..5 {
        send(200, 40 + n);
    }
    assert!(drain(&mut rx_a, &mut cache, &mut drops_a).is_empty(), "handed to b2");
    let wrong = drops_a.get(DropReason::TunnelWrongVni);
    drop(b2);
    send(100, 5);
    assert_eq!(drain(&mut rx_a, &mut cache, &mut drops_a), [5]);
    assert_eq!(drops_a.get(DropReason::TunnelWrongVni) - wrong, 5, "b2's leftovers");
    // A port being removed gives its VNI up first (`retire`): a new port of it opens at once
    // and keeps it when the old one goes.
    let b3 = UdpTunnelPort::open("tun-b3", &opts(TunnelKind::Vxlan, 200, port)).unwrap();
    b3.retire();
    let b4 = UdpTunnelPort::open("tun-b4", &opts(TunnelKind::Vxlan, 200, port)).unwrap();
    drop(b3);
    let mut rx_b4 = b4.open_rx(0).unwrap();
    send(200, 50);
    assert!(drain(&mut rx_a, &mut cache, &mut drops_a).is_empty(), "handed to b4");
    assert_eq!(drain(&mut rx_b4, &mut cache, &mut drops_b), [50]);
    drop((rx_b4, b4));
    drop(rx_a);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

/// Datagrams handed to a port that then goes with the last other port on the socket: no
/// reader is left to count them, so they are counted as the process's portless
/// `tunnel_wrong_vni` drops when the socket and the queue have gone (each nextest test is a
/// process of its own: the counter moves by this test's datagrams only).
#[test]
fn datagrams_left_when_the_last_port_leaves_the_socket_are_counted() {
    use switchyard_dataplane::switch::portless_drops;
    let port = UdpSocket::bind((LOCAL, 0)).unwrap().local_addr().unwrap().port();
    let a = UdpTunnelPort::open("tun-a", &opts(TunnelKind::Vxlan, 100, port)).unwrap();
    let b = UdpTunnelPort::open("tun-b", &opts(TunnelKind::Vxlan, 200, port)).unwrap();
    let (mut rx_a, rx_b) = (a.open_rx(0).unwrap(), b.open_rx(0).unwrap());
    let pool = Pool::new("t", 64).unwrap();
    let mut cache = pool.cache();
    let mut drops = DropTally::default();
    let peer = UdpSocket::bind((PEER, 0)).unwrap();
    for n in 0..4 {
        peer.send_to(&datagram(200, n), (LOCAL, port)).unwrap();
    }
    assert!(drain(&mut rx_a, &mut cache, &mut drops).is_empty(), "handed to b");
    assert!(drops.is_zero(), "{drops:?}");
    let before = portless_drops(DropReason::TunnelWrongVni);
    drop((rx_a, a));
    assert_eq!(portless_drops(DropReason::TunnelWrongVni), before, "counted while b is there");
    drop((rx_b, b));
    assert_eq!(portless_drops(DropReason::TunnelWrongVni) - before, 4);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}
