#![cfg(feature = "dpdk")]
//! The pinned-extbuf pool on hugepages that are not physically adjacent, with IOVA as physical
//! addresses (a VM, or a host without an IOMMU): the pool must start and every buffer's IOVA
//! must be the physical address of its bytes.
//!
//! How the pages are made non-adjacent: the kernel hands out free hugepages last freed, first
//! taken (its free list is a stack). The test maps 24 hugepages of a hugetlbfs file, reads
//! their physical frames (/proc/self/pagemap), and frees every other one in frame order
//! while holding the rest, so that no two freed pages are adjacent; the pool's memzone,
//! reserved right after, gets those pages. The test checks that this worked (the region's
//! pages, read again from pagemap, include non-adjacent neighbours) before it checks the pool:
//! what it shows is the pool over a region known to be physically split, every buffer's
//! `buf_iova` equal to the physical address of its first byte and its last byte at
//! `buf_iova + len - 1`, independently of DPDK's own translation, and frames through a
//! port. (net_ring does not DMA: that the addresses are right is checked against pagemap, not
//! by a device.)

mod common;

use common::scatter::{pa_eal_on_hugepages, phys, Fragmenter, PAGE};
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_bindings::{EthDev, Mbuf, Mempool};

/// Slot size as switchyard's (128 bytes of headroom, 2048 of data room).
const ELT: u16 = 2176;
/// 4095 slots of 2176 bytes: about 4.3 pages, so the region spans at least five pages.
const MBUFS: u32 = 4095;

#[test]
fn pinned_pool_starts_on_physically_scattered_hugepages() {
    let Some((eal, dir)) = pa_eal_on_hugepages() else { return };
    let _held = Fragmenter::new(&dir).expect("fragment the hugepage free list");
    let pool =
        Arc::new(Mempool::pinned_extbuf(eal, "frag", MBUFS, 32, ELT).expect("pool on scattered pages"));
    let (base, elt) = pool.pinned_region().unwrap();
    let slots = pool.region_slots().unwrap() as usize;
    let pieces = pool.iova_pieces().unwrap();
    let base = base.as_ptr() as usize;
    let end = base + slots * usize::from(elt);

    // The region is physically split: some page is not followed by its physical neighbour.
    let mut pagemap = File::open("/proc/self/pagemap").unwrap();
    let mut splits = 0;
    let mut page = base & !(PAGE - 1);
    while page + PAGE < end {
        let (a, b) = (phys(&mut pagemap, page).unwrap(), phys(&mut pagemap, page + PAGE).unwrap());
        splits += usize::from(b != a + PAGE as u64);
        page += PAGE;
    }
    eprintln!("region {base:#x}+{slots} slots: {splits} physical splits, {pieces} pieces registered");
    assert!(splits > 0, "the setup failed to scatter the pool's pages (another process took them?)");
    // One piece per physically contiguous run (a run too short for a whole slot has none).
    assert!((splits..=splits + 1).contains(&(pieces as usize)), "{pieces} pieces for {splits} splits");

    // Every mbuf's buffer: its slot, IOVA = physical address, physically contiguous.
    let table = pool.slot_table().expect("every mbuf has its slot");
    assert_eq!(table.len(), slots);
    let mut with_mbuf = 0;
    let last_used = table.iter().rposition(|m| !m.is_null()).unwrap();
    for (i, &m) in table.iter().enumerate() {
        let addr = base + i * usize::from(ELT);
        if m.is_null() {
            // Only a slot across a physical split goes without an mbuf (or the spare ones
            // after the last used slot, reserved when a first try lost slots to splits).
            let straddles = phys(&mut pagemap, addr + usize::from(ELT) - 1).unwrap()
                != phys(&mut pagemap, addr).unwrap() + u64::from(ELT) - 1;
            assert!(straddles || i > last_used, "slot {i} is whole and has no mbuf");
            continue;
        }
        with_mbuf += 1;
        // SAFETY: reading a free mbuf's header fields; nobody holds it (the pool is unused).
        let (buf, iova, len) = unsafe { ((*m).buf_addr as usize, (*m).buf_iova, (*m).buf_len) };
        assert_eq!(buf, addr);
        assert_eq!(len, ELT);
        let first = phys(&mut pagemap, addr).unwrap();
        let last = phys(&mut pagemap, addr + usize::from(ELT) - 1).unwrap();
        assert_eq!(iova, first, "slot {i}: buf_iova is the physical address of its first byte");
        assert_eq!(last, first + u64::from(ELT) - 1, "slot {i}: the buffer is physically contiguous");
    }
    assert_eq!(with_mbuf, MBUFS as usize);

    // A port on the pool moves frames through buffers on the scattered pages.
    let mut dev = EthDev::probe(eal, "net_ring_frag0").expect("probe");
    dev.configure(1, 1).unwrap();
    dev.setup_rx_queue(0, 512, &pool).unwrap();
    dev.setup_tx_queue(0, 512).unwrap();
    dev.start().unwrap();
    let frames: Vec<Vec<u8>> = (0..32u32).map(|i| common::frame(i, 60 + i as usize * 40)).collect();
    let mut burst: Vec<Mbuf> = frames
        .iter()
        .map(|f| {
            let mut m = pool.alloc().unwrap();
            assert!(m.set_data(f));
            m
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !burst.is_empty() {
        dev.tx_mbufs(0, &mut burst);
        assert!(Instant::now() < deadline, "tx stuck");
    }
    let mut got = Vec::new();
    let mut out = Vec::new();
    while got.len() < frames.len() && Instant::now() < deadline {
        dev.rx_mbufs(0, &mut out, 32);
        got.extend(out.drain(..).map(|m| m.data().to_vec()));
    }
    assert_eq!(got, frames);
    dev.close().unwrap();
    assert_eq!(pool.in_use(), 0);
}
