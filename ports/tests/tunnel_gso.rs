//! UDP GSO and GRO on the kernel-UDP tunnel transport (`switchyard_ports::udp_tunnel`): a
//! burst's runs of datagrams to one endpoint (one length, the last of a run may be shorter)
//! leave as one `UDP_SEGMENT` send each, and the datagrams on the wire are exactly the ones
//! sent one by one would be; a receiving port with `UDP_GRO` cuts a coalesced message back into
//! those datagrams. Real sockets on the loopback (which keeps a GSO packet whole up to the
//! receiving socket); the VXLAN header is checked against RFC 7348 section 5 as written here
//! (flags 0x08, 24 reserved bits, the VNI, 8 reserved bits).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_dataplane::Pool;
use switchyard_ports::udp_tunnel::{TunnelOptions, UdpTunnelPort};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const VNI: u32 = 4242;

/// Inner frame lengths of one burst: runs 1000 x3 + 600 (a shorter last one ends a run),
/// 1000 x2 (a longer next one ends it), 1200 x2 + 70, then one of 500.
const LENS: [usize; 10] = [1000, 1000, 1000, 600, 1000, 1000, 1200, 1200, 70, 500];

fn opts(local: Ipv4Addr, peer: Ipv4Addr, port: u16) -> TunnelOptions {
    TunnelOptions {
        kind: TunnelKind::Vxlan,
        vni: VNI,
        local: IpAddr::V4(local),
        dstport: port,
        flood: vec![IpAddr::V4(peer)],
        remote_macs: vec![],
        learn: false,
        aging_s: 300,
    }
}

/// Inner frame `i` of `len` bytes: broadcast, source MAC ending in `i`, a payload whose every
/// byte depends on `i` and its offset (so a datagram cut at the wrong place cannot match).
fn frame(i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, i as u8, 0x88, 0xb5]);
    f.extend((14..len).map(|o| (o as u8).wrapping_mul(7).wrapping_add(i as u8)));
    f
}

/// The datagram RFC 7348 makes of inner frame `f`.
fn vxlan(f: &[u8]) -> Vec<u8> {
    let v = VNI.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    d.extend_from_slice(f);
    d
}

/// A free UDP port on both addresses.
fn free_port() -> u16 {
    let s = UdpSocket::bind((A, 0)).unwrap();
    s.local_addr().unwrap().port()
}

/// Sends `LENS` through a port on A towards B in one burst; the datagrams it reports sent.
fn send_burst(cache: &mut PoolCache, port: u16) -> (UdpTunnelPort, usize, DropTally) {
    let a = UdpTunnelPort::open("tun-a", &opts(A, B, port)).unwrap();
    let mut tx = a.open_tx(0).unwrap();
    let mut burst = Burst::new();
    for (i, &len) in LENS.iter().enumerate() {
        burst.push(cache.alloc_copy(&frame(i, len)).unwrap());
    }
    let mut drops = DropTally::default();
    let sent = tx.tx_burst(&mut burst, cache, &mut drops);
    (a, sent, drops)
}

/// Receives datagrams on `s` until `n` came (or 5 s passed), and any that follow within
/// 200 ms; their bytes.
fn recv_n(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((len, _)) => got.push(buf[..len].to_vec()),
            Err(_) if got.len() >= n || t.elapsed() > Duration::from_secs(5) => return got,
            Err(_) => {}
        }
    }
}

#[test]
fn runs_leave_as_the_same_datagrams_on_the_wire() {
    let port = free_port();
    let pool = Pool::new("t", 256).unwrap();
    let mut cache = pool.cache();
    // A plain receiver (no UDP_GRO): the kernel hands it every datagram as it was cut.
    let peer = UdpSocket::bind((B, port)).unwrap();
    let (a, sent, drops) = send_burst(&mut cache, port);
    assert_eq!(sent, LENS.len());
    assert_eq!(drops.total(), 0);
    let got = recv_n(&peer, LENS.len());
    let want: Vec<Vec<u8>> = LENS.iter().enumerate().map(|(i, &l)| vxlan(&frame(i, l))).collect();
    assert_eq!(got.len(), want.len(), "datagram count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "datagram {i}: {} bytes, want {}", g.len(), w.len());
    }
    drop(a);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn a_run_is_one_gso_send_and_a_gro_port_cuts_it_back() {
    let port = free_port();
    let pool = Pool::new("t", 256).unwrap();
    let mut cache = pool.cache();

    // A receiver with UDP_GRO sees a GSO send as one message: the runs, not the datagrams.
    let peer = UdpSocket::bind((B, port)).unwrap();
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed is its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            peer.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_GRO: {}", std::io::Error::last_os_error());
    let (a, sent, _) = send_burst(&mut cache, port);
    assert_eq!(sent, LENS.len());
    let d = |l: usize| l + 8;
    let runs = [3 * d(1000) + d(600), 2 * d(1000), 2 * d(1200) + d(70), d(500)];
    let got: Vec<usize> = recv_n(&peer, runs.len()).iter().map(Vec::len).collect();
    assert_eq!(got, runs, "message lengths at a UDP_GRO receiver");
    drop(peer);

    // A switchyard port on B gets the same runs and hands out every inner frame, in order.
    let b = UdpTunnelPort::open("tun-b", &opts(B, A, port)).unwrap();
    let mut rx = b.open_rx(0).unwrap();
    assert!(!rx.spin_when_idle(), "a UDP socket wakes an idle worker for free: no spin");
    let (a2, sent, _) = {
        drop(a);
        send_burst(&mut cache, port)
    };
    assert_eq!(sent, LENS.len());
    let mut drops = DropTally::default();
    let mut frames = Vec::new();
    let t = Instant::now();
    // Bursts of 4: a run longer than a burst is handed out across calls.
    while frames.len() < LENS.len() && t.elapsed() < Duration::from_secs(5) {
        let mut burst = Burst::new();
        if rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 4) == 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        assert!(burst.len() <= 4);
        for f in burst {
            frames.push(f.data().to_vec());
            cache.free(f);
        }
    }
    assert_eq!(drops.total(), 0);
    let want: Vec<Vec<u8>> = LENS.iter().enumerate().map(|(i, &l)| frame(i, l)).collect();
    assert_eq!(frames.len(), want.len(), "frames handed out");
    for (i, (g, w)) in frames.iter().zip(&want).enumerate() {
        assert!(g == w, "frame {i}: {} bytes, want {}", g.len(), w.len());
    }
    assert!(rx.arm_wakeup(), "nothing left: the queue may sleep");
    drop(rx);
    drop((a2, b));
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}
