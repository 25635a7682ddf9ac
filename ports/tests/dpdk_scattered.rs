#![cfg(feature = "dpdk")]
//! DPDK ports whose shared zero-copy pool lies on hugepages that are not physically adjacent,
//! with IOVA as PA: the port opens, every buffer the switchyard side gets from the pool is a
//! whole physically contiguous slot (the slots that straddle two runs of pages have no mbuf and
//! must never be handed out), and frames travel through the port in those buffers without a
//! copy. The pages are scattered as in bindings/tests/fragmented.rs (the same helpers).

#[path = "../../bindings/tests/common/scatter.rs"]
mod scatter;

use scatter::{pa_eal_on_hugepages, phys, Fragmenter, PAGE};
use std::collections::HashSet;
use std::fs::File;
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::DATA_ROOM;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx, MAX_BURST};
use switchyard_ports::dpdk::{DpdkPort, DpdkPortConfig};

#[test]
fn dpdk_port_on_physically_scattered_hugepages() {
    let Some((eal, dir)) = pa_eal_on_hugepages() else { return };
    let _held = Fragmenter::new(&dir).expect("fragment the hugepage free list");
    // 4095 mbufs of 2176 bytes: about 4.3 pages, over several physically separate ones.
    let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, pool_size: 4095, ..Default::default() };
    let port = DpdkPort::open(eal, "sc0", "net_ring_sc0", &cfg).expect("open on scattered pages");
    let pool = port.zero_copy_pool();

    // Take every buffer the pool has left: each is a distinct slot whose data room is
    // physically contiguous, and the buffers span pages that are not adjacent.
    let mut pagemap = File::open("/proc/self/pagemap").unwrap();
    let mut cache = pool.cache();
    let before = port.mbufs_in_use() as usize; // in the RX ring
    let mut held = Vec::new();
    while let Some(b) = cache.alloc() {
        held.push(b);
    }
    assert_eq!(held.len(), 4095 - before, "every free mbuf's slot was handed out");
    let mut seen = HashSet::new();
    for b in &held {
        let p = b.data().as_ptr() as usize;
        assert!(seen.insert(p), "a slot handed out twice");
        let first = phys(&mut pagemap, p).unwrap();
        let last = phys(&mut pagemap, p + DATA_ROOM - 1).unwrap();
        assert_eq!(last, first + DATA_ROOM as u64 - 1, "the data room at {p:#x} is physically contiguous");
    }
    let lo = seen.iter().min().unwrap() & !(PAGE - 1);
    let hi = *seen.iter().max().unwrap();
    let mut splits = 0;
    let mut page = lo;
    while page + PAGE <= hi {
        let (a, b) = (phys(&mut pagemap, page), phys(&mut pagemap, page + PAGE));
        if let (Some(a), Some(b)) = (a, b) {
            splits += usize::from(b != a + PAGE as u64);
        }
        page += PAGE;
    }
    assert!(splits > 0, "the setup failed to scatter the pool's pages");

    // Frames through the port (net_ring loops TX back to RX) in the pool's own buffers.
    let (_, tx_copies) = DpdkPort::copies();
    let frames: Vec<Vec<u8>> =
        (0..32u8).map(|i| (0..60 + usize::from(i) * 40).map(|j| (j as u8) ^ i).collect()).collect();
    let mut burst = Burst::new();
    let mut addrs = Vec::new();
    for f in &frames {
        let mut b = held.pop().unwrap();
        b.extend_from_slice(f).unwrap();
        addrs.push(b.data().as_ptr() as usize);
        burst.push(b);
    }
    drop(held);
    let (mut rx, mut tx) = (port.open_rx(0).unwrap(), port.open_tx(0).unwrap());
    let mut drops = DropTally::default();
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
    assert_eq!(DpdkPort::copies().1, tx_copies, "the pool's own buffers go out without a copy");
    let mut out = Burst::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < frames.len() && Instant::now() < deadline {
        rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut out, MAX_BURST);
    }
    assert!(drops.is_zero());
    let got: Vec<Vec<u8>> = out.iter().map(|b| b.data().to_vec()).collect();
    assert_eq!(got, frames);
    let back: Vec<usize> = out.iter().map(|b| b.data().as_ptr() as usize).collect();
    assert_eq!(back, addrs, "the same buffers came back");
}
