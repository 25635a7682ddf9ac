//! The AF_PACKET port for real, over veth pairs in network namespaces that each test creates
//! and removes. Needs root and iproute2; otherwise every test prints why and passes.

#[macro_use]
mod kports_common;

/// A test frame: marker, tags (TPID, TCI), length.
type Case = (&'static str, Vec<(u16, u16)>, usize);

use kports_common::*;
use std::time::Duration;
use switchyard_dataplane::port::{burst_of, Burst, DropTally, PortBackend, RxCtx};
use switchyard_dataplane::{DropReason, Pool};
use switchyard_ports::afpacket::{AfPacketOptions, AfPacketPort, AfPacketRxMode};
use testkit::frame::{Frame, ETHERTYPE_IPV4};

in_both_rx_modes!(
    ring = super::AfPacketRxMode::Ring,
    recvmmsg = super::AfPacketRxMode::Recvmmsg;
    tx_frames_reach_the_peer_byte_for_byte,
    rx_frames_from_the_peer_byte_for_byte,
    vlan_tags_are_kept_on_rx,
    oversize_frames_are_counted,
    deleting_the_interface_marks_the_port_down,
    link_down_counts_port_down_and_recovers,
    two_rx_queues_share_the_traffic,
    kernel_ring_overflow_is_counted,
);

/// The options a test's port gets in RX mode `mode`: the default port, or the light one the
/// CNI plugin's ports are.
fn opts(mode: AfPacketRxMode) -> AfPacketOptions {
    match mode {
        AfPacketRxMode::Ring => AfPacketOptions::default(),
        AfPacketRxMode::Recvmmsg => AfPacketOptions::light(),
    }
}

/// The veth pair and an open port on its host end, or `None` (skip message printed).
fn setup(test: &str, opts: AfPacketOptions) -> Option<(VethNs, AfPacketPort)> {
    if let Some(why) = skip_reason() {
        skip(test, &why);
        return None;
    }
    let veth = match VethNs::create() {
        Ok(v) => v,
        Err(e) => {
            skip(test, &format!("cannot create a network namespace and veth pair: {e}"));
            return None;
        }
    };
    let port = AfPacketPort::open("p0", &veth.host, opts).expect("open AF_PACKET port");
    Some((veth, port))
}

fn tx_frames_reach_the_peer_byte_for_byte(mode: AfPacketRxMode) {
    let Some((veth, port)) = setup("tx_frames_reach_the_peer_byte_for_byte", opts(mode)) else {
        return;
    };
    assert!(port.link_up());
    let mut peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-tx", 256, false).unwrap();
    let mut cache = pool.cache();
    let mut tx = port.open_tx(0).unwrap();
    let mut rx = port.open_rx(0).unwrap();
    let mut drops = DropTally::default();

    let sizes = [60usize, 64, 128, 1000, 1514];
    let frames: Vec<Vec<u8>> =
        sizes.iter().enumerate().map(|(i, n)| frame(DST, SRC, &[], &format!("TX{i}."), *n)).collect();
    let mut burst = burst_of(&mut cache, &frames).unwrap();
    // A frame over the interface MTU (1500) and a runt are counted, not sent.
    burst.push(cache.alloc_copy(&frame(DST, SRC, &[], "TXBIG.", 1600)).unwrap());
    burst.push(cache.alloc_copy(&[0u8; 10]).unwrap());
    let sent = tx.tx_burst(&mut burst, &mut cache, &mut drops);
    assert_eq!(sent, frames.len());
    assert!(burst.is_empty());
    assert_eq!(drops.get(DropReason::Oversize), 1);
    assert_eq!(drops.get(DropReason::Runt), 1);

    for (i, f) in frames.iter().enumerate() {
        let marker = format!("TX{i}.");
        let got = peer
            .recv_matching(WAIT, |g| has_marker(g, &marker))
            .unwrap_or_else(|| panic!("frame {i} never arrived"));
        assert_eq!(&got, f, "frame {i} changed on the way");
    }
    // The oversize frame was not sent: a frame sent after it arrives, and it did not come
    // before (the veth keeps the order).
    let mut end_burst = Burst::new();
    end_burst.push(cache.alloc_copy(&frame(DST, SRC, &[], "TXEND.", 60)).unwrap());
    assert_eq!(tx.tx_burst(&mut end_burst, &mut cache, &mut drops), 1);
    let next = peer.recv_matching(WAIT, |g| has_marker(g, "TXBIG.") || has_marker(g, "TXEND."));
    assert!(
        next.as_deref().is_some_and(|g| has_marker(g, "TXEND.")),
        "TXBIG. went out, or TXEND. never came"
    );

    // The port never receives its own transmissions: by the time a frame the peer sends
    // afterwards is in, any of ours would have been.
    peer.send(&frame(DST, SRC, &[], "PEER.", 60));
    let mut own = 0;
    let end = std::time::Instant::now() + WAIT;
    let mut burst = Burst::new();
    'wait: loop {
        assert!(std::time::Instant::now() < end, "the peer's frame never arrived");
        rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
        for b in burst.drain(..) {
            own += usize::from(has_marker(b.data(), "TX"));
            let peers = has_marker(b.data(), "PEER.");
            cache.free(b);
            if peers {
                break 'wait;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(own, 0, "the port received {own} of its own frames");

    // Many bursts in a row: more than the ring holds in total, all sent or counted.
    let mut total = 0;
    for round in 0..40 {
        let mut burst = Burst::new();
        for i in 0..32 {
            burst.push(cache.alloc_copy(&frame(DST, SRC, &[], &format!("M{round}.{i}."), 200)).unwrap());
        }
        total += tx.tx_burst(&mut burst, &mut cache, &mut drops);
    }
    let full = drops.get(DropReason::TxFull) as usize;
    assert_eq!(total + full, 40 * 32);
    tx.flush().unwrap();
    drop(rx);
    drop(tx);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

fn rx_frames_from_the_peer_byte_for_byte(mode: AfPacketRxMode) {
    let Some((veth, port)) = setup("rx_frames_from_the_peer_byte_for_byte", opts(mode)) else {
        return;
    };
    let peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-rx", 256, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    assert!(port.open_rx(0).is_err(), "an RX queue can be taken once");
    assert!(port.open_rx(1).is_err(), "queue 1 does not exist");
    let mut drops = DropTally::default();

    for (i, n) in [60usize, 64, 1000, 1514].iter().enumerate() {
        let marker = format!("RX{i}.");
        let f = frame(DST, SRC, &[], &marker, *n);
        peer.send(&f);
        let got = rx_wait(&mut *rx, &mut cache, &mut drops, &marker, WAIT)
            .unwrap_or_else(|| panic!("frame {i} ({n} bytes) not received"));
        assert_eq!(got.data(), &f[..], "frame {i} changed on the way");
        cache.free(got);
    }

    // A burst of frames sent back to back all arrive, in order.
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(DST, SRC, &[], &format!("B{i:03}."), 100)).collect();
    for f in &frames {
        peer.send(f);
    }
    let mut got = Vec::new();
    let end = std::time::Instant::now() + WAIT;
    while got.len() < frames.len() && std::time::Instant::now() < end {
        got.extend(rx_collect(&mut *rx, &mut cache, &mut drops, "B", Duration::from_millis(10)));
    }
    assert_eq!(got, frames);
    assert!(drops.is_zero(), "unexpected drops: {drops:?}");

    // The queue can be taken again once its handle is dropped.
    drop(rx);
    let rx2 = port.open_rx(0).unwrap();
    drop(rx2);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

fn vlan_tags_are_kept_on_rx(mode: AfPacketRxMode) {
    let Some((veth, port)) = setup("vlan_tags_are_kept_on_rx", opts(mode)) else {
        return;
    };
    let peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-vlan", 64, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut drops = DropTally::default();

    let cases: [Case; 5] = [
        ("V1.", vec![(0x8100, 0x2064)], 64),                    // PCP 1, VID 100
        ("V2.", vec![(0x8100, 0x0000)], 64),                    // priority tag, VID 0
        ("V3.", vec![(0x88a8, 0xe0c8)], 200),                   // 802.1ad, PCP 7, VID 200
        ("V4.", vec![(0x88a8, 0x012c), (0x8100, 0x0064)], 128), // QinQ
        ("V5.", vec![(0x8100, 0x0fff)], 1518),                  // a full-size tagged frame
    ];
    for (marker, tags, len) in &cases {
        let f = frame(DST, SRC, tags, marker, *len);
        peer.send(&f);
        let got = rx_wait(&mut *rx, &mut cache, &mut drops, marker, WAIT)
            .unwrap_or_else(|| panic!("tagged frame {marker} not received"));
        assert_eq!(got.data(), &f[..], "tagged frame {marker} changed on the way");
        cache.free(got);
    }
    assert!(drops.is_zero(), "unexpected drops: {drops:?}");
}

fn oversize_frames_are_counted(mode: AfPacketRxMode) {
    let Some((veth, port)) = setup("oversize_frames_are_counted", opts(mode)) else {
        return;
    };
    veth.set_mtu(4000).expect("raise the veth MTU");
    let peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-big", 64, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut drops = DropTally::default();

    peer.send(&frame(DST, SRC, &[], "BIG1.", 2500));
    // 2046 bytes on the wire plus the 4-byte tag put back: 2050, over the 2048 data room.
    peer.send(&frame(DST, SRC, &[(0x8100, 5)], "BIG2.", 2050));
    let ok = frame(DST, SRC, &[], "OK.", 2048);
    peer.send(&ok);
    let got = rx_wait(&mut *rx, &mut cache, &mut drops, "OK.", WAIT).expect("the 2048-byte frame");
    assert_eq!(got.data(), &ok[..]);
    cache.free(got);
    assert_eq!(drops.get(DropReason::Oversize), 2, "{drops:?}");

    // TX: with the MTU raised, a 2048-byte frame goes out.
    assert!(port.link_up()); // refreshes the MTU the port checks against
    let mut peer = peer;
    let mut tx = port.open_tx(0).unwrap();
    let mut burst = Burst::new();
    let big = frame(DST, SRC, &[], "TXOK.", 2048);
    burst.push(cache.alloc_copy(&big).unwrap());
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 1);
    assert_eq!(peer.recv_matching(WAIT, |g| has_marker(g, "TXOK.")).as_deref(), Some(&big[..]));
}

fn deleting_the_interface_marks_the_port_down(mode: AfPacketRxMode) {
    let Some((veth, port)) = setup("deleting_the_interface_marks_the_port_down", opts(mode)) else {
        return;
    };
    let pool = Pool::with_hugepages("afp-del", 64, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let mut tx2 = port.open_tx(1).unwrap();
    let mut drops = DropTally::default();
    assert!(port.link_up());

    // Deleting the peer deletes the pair.
    ip(&["-n", &veth.ns, "link", "del", &veth.peer]).expect("delete the peer");

    // The first burst finds out from the socket (ENXIO), before anyone asks for the link state.
    let mut burst = Burst::new();
    for i in 0..4 {
        burst.push(cache.alloc_copy(&frame(DST, SRC, &[], &format!("D{i}."), 100)).unwrap());
    }
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 0);
    assert_eq!(drops.get(DropReason::PortDown), 4, "{drops:?}");
    assert!(!port.link_up());
    for i in 0..3 {
        burst.push(cache.alloc_copy(&frame(DST, SRC, &[], &format!("E{i}."), 100)).unwrap());
    }
    assert_eq!(tx2.tx_burst(&mut burst, &mut cache, &mut drops), 0);
    assert_eq!(drops.get(DropReason::PortDown), 7);
    let mut out = Burst::new();
    assert_eq!(rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut out, 32), 0);
    tx.flush().unwrap();
    // A new TX handle on a gone interface: an error or a handle that counts, never a panic.
    if let Ok(mut tx3) = port.open_tx(2) {
        burst.push(cache.alloc_copy(&frame(DST, SRC, &[], "F.", 100)).unwrap());
        assert_eq!(tx3.tx_burst(&mut burst, &mut cache, &mut drops), 0);
        assert_eq!(drops.get(DropReason::PortDown), 8);
    }
    drop((rx, tx, tx2));
    drop(port);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

fn link_down_counts_port_down_and_recovers(mode: AfPacketRxMode) {
    let Some((veth, port)) = setup("link_down_counts_port_down_and_recovers", opts(mode)) else {
        return;
    };
    let mut peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-down", 64, false).unwrap();
    let mut cache = pool.cache();
    let mut tx = port.open_tx(0).unwrap();
    let mut drops = DropTally::default();

    ip(&["link", "set", &veth.host, "down"]).unwrap();
    assert!(!port.link_up());
    let mut burst = Burst::new();
    for i in 0..3 {
        burst.push(cache.alloc_copy(&frame(DST, SRC, &[], &format!("L{i}."), 100)).unwrap());
    }
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 0);
    assert_eq!(drops.get(DropReason::PortDown), 3, "{drops:?}");

    ip(&["link", "set", &veth.host, "up"]).unwrap();
    let end = std::time::Instant::now() + WAIT;
    while !port.link_up() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(port.link_up());
    let f = frame(DST, SRC, &[], "UP.", 100);
    burst.push(cache.alloc_copy(&f).unwrap());
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 1);
    assert_eq!(peer.recv_matching(WAIT, |g| has_marker(g, "UP.")).as_deref(), Some(&f[..]));
}

/// A UDP/IPv4 frame of flow `i` (source port 1000 + i), 80 bytes: the kernel's flow hash, which
/// the port's PACKET_FANOUT_HASH group spreads by, differs from flow to flow. Marked "Q" and
/// `i` at the start of the UDP payload.
fn udp_flow_frame(i: u8) -> Vec<u8> {
    let mut ip = [0x45, 0, 0, 66, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    Frame::new(DST, SRC)
        .ethertype(ETHERTYPE_IPV4)
        .payload(&ip)
        .payload(&(1000 + u16::from(i)).to_be_bytes())
        .payload(&[0x07, 0xd0, 0, 46, 0, 0, b'Q', i])
        .pad(80, 0)
        .build()
}

/// The flow of a frame made by [`udp_flow_frame`], `None` for any other frame.
fn udp_flow_of(f: &[u8]) -> Option<u8> {
    (f.len() == 80 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[42] == b'Q').then(|| f[43])
}

/// Two RX queues are two sockets in one fanout group: frames of many flows are spread over
/// both (each queue gets some), and each frame arrives on exactly one of them.
fn two_rx_queues_share_the_traffic(mode: AfPacketRxMode) {
    let opts = AfPacketOptions { rx_queues: 2, ..opts(mode) };
    let Some((veth, port)) = setup("two_rx_queues_share_the_traffic", opts) else {
        return;
    };
    assert_eq!(port.rx_queue_count(), 2);
    let peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-fan", 256, false).unwrap();
    let mut cache = pool.cache();
    let mut queues = [port.open_rx(0).unwrap(), port.open_rx(1).unwrap()];
    let mut drops = DropTally::default();
    const FLOWS: u8 = 64;
    for i in 0..FLOWS {
        peer.send(&udp_flow_frame(i));
    }
    // (queue, flow) of every test frame received.
    let mut got = Vec::new();
    let end = std::time::Instant::now() + WAIT;
    let mut burst = Burst::new();
    while got.len() < usize::from(FLOWS) && std::time::Instant::now() < end {
        for (q, rx) in queues.iter_mut().enumerate() {
            rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
            for b in burst.drain(..) {
                got.extend(udp_flow_of(b.data()).map(|i| (q, i)));
                cache.free(b);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut flows: Vec<u8> = got.iter().map(|&(_, i)| i).collect();
    flows.sort();
    flows.dedup();
    assert_eq!(
        (got.len(), flows.len()),
        (usize::from(FLOWS), usize::from(FLOWS)),
        "every frame, once: {got:?}"
    );
    let on_q0 = got.iter().filter(|&&(q, _)| q == 0).count();
    assert!(on_q0 > 0 && on_q0 < got.len(), "the fanout did not share: {on_q0} of {} on queue 0", got.len());
    assert!(drops.is_zero(), "{drops:?}");
}

fn kernel_ring_overflow_is_counted(mode: AfPacketRxMode) {
    let opts = AfPacketOptions { rx_block_size: 4096, rx_block_count: 2, ..opts(mode) };
    let Some((veth, port)) = setup("kernel_ring_overflow_is_counted", opts) else {
        return;
    };
    let peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let pool = Pool::with_hugepages("afp-ovf", 256, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut drops = DropTally::default();
    // Nobody reads while the frames arrive: a ring of two 4 KiB blocks holds a few of 300; a
    // socket's queue (recvmmsg) holds 4 MiB, about 2000 such frames.
    let sent = match mode {
        AfPacketRxMode::Ring => 300,
        AfPacketRxMode::Recvmmsg => 5000,
    };
    for i in 0..sent {
        peer.send(&frame(DST, SRC, &[], &format!("O{i:04}."), 1000));
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut got = rx_collect(&mut *rx, &mut cache, &mut drops, "O", Duration::from_millis(50)).len();
    // The kernel reports its losses with the next block it fills (the P frames fill it). An
    // O frame still on its way comes in before them, and is counted too.
    let end = std::time::Instant::now() + WAIT;
    let mut i = 0;
    while drops.get(DropReason::NoBuffer) == 0 && std::time::Instant::now() < end {
        peer.send(&frame(DST, SRC, &[], &format!("P{i}."), 100));
        i += 1;
        got += rx_collect(&mut *rx, &mut cache, &mut drops, "O", Duration::from_millis(5)).len();
    }
    let lost = drops.get(DropReason::NoBuffer) as usize;
    assert!(lost > 0, "the kernel's drops were not counted");
    assert!(got + lost >= sent, "received {got} + counted {lost} < {sent} sent");
    assert_eq!(port.kernel_drops(), lost as u64);
}

/// A `/proc/self/status` field in kB (`VmRSS` counts the pages of mapped packet rings).
fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// 200 ports as the CNI plugin makes them (`AfPacketOptions::light`): each opens, each gets
/// its own frames, they map no RX ring (a `ring` port maps 4 MiB more, which the kernel
/// clears when the port opens, and runs a timer for: the costs that grow with the port count;
/// the figures are in docs/benchmarks.md), and closing them leaves no descriptor and no ring
/// memory behind.
#[test]
fn two_hundred_light_ports_open_receive_and_close_cleanly() {
    const TEST: &str = "two_hundred_light_ports_open_receive_and_close_cleanly";
    const N: usize = 200;
    if let Some(why) = skip_reason() {
        return skip(TEST, &why);
    }
    let veths = match kports_common::VethMany::create(N) {
        Ok(v) => v,
        Err(e) => return skip(TEST, &format!("cannot create {N} veth pairs: {e}")),
    };
    let pool = Pool::with_hugepages("afp-many", 256, false).unwrap();
    let mut cache = pool.cache();
    let (fds0, rss0) = (open_fds(), status_kb("VmRSS"));
    let mut drops = DropTally::default();
    let mut ports = Vec::new();
    for (i, h) in veths.host.iter().enumerate() {
        let port =
            AfPacketPort::open(&format!("p{i}"), h, AfPacketOptions::light()).expect("open a light port");
        let rx = port.open_rx(0).unwrap();
        let tx = port.open_tx(0).unwrap();
        ports.push((port, rx, tx));
    }
    let grown = status_kb("VmRSS").saturating_sub(rss0);
    eprintln!("{N} light ports open: {grown} kB more resident");
    // The TX ring (128 frames: 320 KiB) is all the memory a light port maps.
    assert!(grown < (N as u64) * 1024, "{N} light ports take {grown} kB: an RX ring is back?");
    for i in (0..N).step_by(40) {
        let peer = RawSock::open(Some(&veths.ns), &veths.peer[i]).expect("peer socket");
        let marker = format!("M{i:03}.");
        let f = frame(DST, SRC, &[], &marker, 100);
        peer.send(&f);
        let got = rx_wait(&mut *ports[i].1, &mut cache, &mut drops, &marker, WAIT)
            .unwrap_or_else(|| panic!("port {i} did not receive its frame"));
        assert_eq!(got.data(), &f[..]);
        cache.free(got);
        // No other port saw it.
        for (j, (_, rx, _)) in ports.iter_mut().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                rx_collect(&mut **rx, &mut cache, &mut drops, &marker, Duration::from_millis(1)).is_empty(),
                "port {j}"
            );
        }
    }
    assert!(drops.is_zero(), "{drops:?}");
    drop(ports);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
    assert_eq!(open_fds(), fds0, "closed ports left descriptors");
    let left = status_kb("VmRSS").saturating_sub(rss0);
    assert!(left < 16 << 10, "closed ports left {left} kB mapped");
}
