//! An AF_XDP port closed and opened again while another AF_XDP port keeps the process's UMEM:
//! the first port's socket registered the UMEM (the one others share), so the reopened
//! port's socket sits on the same interface queue and must use that socket's fill and
//! completion rings. Frames must flow both ways through the reopened port.
//!
//! Needs root (netns, veth, BPF) and AF_XDP; skips with a message elsewhere.

mod kports_common;

use kports_common::*;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend};
use switchyard_dataplane::Pool;
use switchyard_ports::afxdp::AfXdpPort;

#[test]
fn a_port_reopened_while_another_keeps_the_umem_moves_frames_both_ways() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("a_port_reopened_while_another_keeps_the_umem_moves_frames_both_ways", &why);
    }
    let a = VethNs::create().unwrap();
    let b = VethNs::create().unwrap();
    let first = AfXdpPort::open("a", &a.host, 1).unwrap();
    let other = AfXdpPort::open("b", &b.host, 1).unwrap();
    drop(first);
    let port = AfXdpPort::open("a2", &a.host, 1).unwrap();
    let pool = Pool::new("t", 256).unwrap();
    let mut cache = pool.cache();
    let mut drops = DropTally::default();
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let peer = RawSock::open(Some(&a.ns), &a.peer).unwrap();
    let src = [2, 0, 0, 0, 0, 0xa1];
    let dst = [2, 0, 0, 0, 0, 0xa2];
    for i in 0..3 {
        let m = format!("in-{i}");
        peer.send(&frame(dst, src, &[], &m, 300));
        let got = rx_wait(rx.as_mut(), &mut cache, &mut drops, &m, WAIT);
        assert!(got.is_some(), "frame {i} did not arrive on the reopened port");
    }
    let mut peer = peer;
    for i in 0..3 {
        let m = format!("out-{i}");
        let mut burst = Burst::new();
        burst.push(cache.alloc_copy(&frame(src, dst, &[], &m, 300)).unwrap());
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 1);
        assert!(peer.recv_matching(WAIT, |f| has_marker(f, &m)).is_some(), "frame {i} did not leave");
    }
    assert!(drops.is_zero());
    drop((rx, tx, port, other));
}
