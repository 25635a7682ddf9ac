//! The vhost-user split ring against a hostile guest: arbitrary bytes become a guest memory
//! layout, ring placement, descriptor tables, available-ring contents and indices. Dequeue and
//! enqueue must never panic and never touch memory outside the guest's regions (the regions
//! are mapped between guard pages, so a stray access would fault), and every buffer comes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use switchyard_dataplane::buffer::{Pool, DATA_ROOM};
use switchyard_ports::vhost::mem::{DirtyLog, GuestMemory};
use switchyard_ports::vhost::sys;
use switchyard_ports::vhost::vring::{RingConfig, RxGso, Vring};
use switchyard_dataplane::port::{Burst, DropTally, RxCtx};

/// Where the fake frontend maps guest memory in its own address space.
const UVA: u64 = 0x7f00_0000_0000;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    // One to three regions of 4..16 pages at distinct 256 KiB-aligned guest addresses.
    let mut layout = Vec::new();
    for _ in 0..(1 + inp.u8() % 3) {
        let slot = u64::from(inp.u8() % 64);
        let pages = 1 + u64::from(inp.u8() % 3);
        if !layout.iter().any(|&(g, _, _)| g == slot << 18) {
            layout.push((slot << 18, pages * 16384, (slot << 18) + UVA));
        }
    }
    let Ok(mem) = GuestMemory::anonymous(&layout) else { return };
    let mem = Arc::new(mem);
    let (g0, size0, _) = layout[0];
    // The rest of the input is sprayed over the first region (descriptors, rings, frames).
    let spray: Vec<u8> = inp.0.iter().copied().take(size0 as usize).collect();
    let num = 1u16 << (inp.u8() % 9);
    let at = |inp: &mut Input, align: u64| UVA + g0 + ((inp.u64() % size0) & !(align - 1));
    // The last flag byte also turns offloads on (so earlier inputs keep their meaning).
    let flags: u8;
    let cfg = RingConfig {
        num,
        desc: at(&mut inp, 16),
        avail: at(&mut inp, 2),
        used: at(&mut inp, 4),
        used_log_gpa: Some(g0),
        base: inp.u16(),
        event_idx: inp.u8() & 1 == 1,
        hdr_len: if inp.u8() & 1 == 1 { 12 } else { 10 },
        mrg_rxbuf: inp.u8() & 1 == 1,
        in_order: {
            flags = inp.u8();
            flags & 1 == 1
        },
        // Offload requests in the sprayed headers: checksums finished, super-frames segmented.
        tx_offload: flags & 2 == 2,
        // Runs of TCP segments towards the guest merged (with mergeable buffers only).
        rx_gso: RxGso { tcpv4: flags & 4 == 4, tcpv6: flags & 8 == 8 },
    };
    let frames: Vec<usize> = (0..8).map(|_| usize::from(inp.u16()) % 3000).collect();
    let _ = mem.write(g0, &spray);
    let Ok(log) = DirtyLog::anonymous(64) else { return };
    let Ok(call) = sys::eventfd() else { return };
    let pool = Pool::with_hugepages("fuzz-vring", 128, false).expect("pool");
    let mut cache = pool.cache();
    if let Ok(mut ring) = Vring::new(mem.clone(), &cfg, Some(Arc::new(log)), Some(Arc::new(call))) {
        let mut drops = DropTally::default();
        for round in 0..3 {
            let mut out = Burst::new();
            if ring.enable_notify() {
                ring.disable_notify();
            }
            let got = ring.dequeue(RxCtx::new(&mut cache, &mut drops), &mut out, 32);
            assert!(got <= 32);
            for b in out.drain(..) {
                assert!(b.len() <= DATA_ROOM);
                cache.free(b);
            }
            let mut burst = Burst::new();
            for &len in frames.iter().skip(round * 3).take(3) {
                let mut b = cache.alloc().expect("buffer");
                b.set_len(len.min(DATA_ROOM)).expect("len");
                burst.push(b);
            }
            let n = burst.len();
            assert!(ring.enqueue(&mut burst, &mut cache, &mut drops) <= n);
            assert!(burst.is_empty());
        }
    }
    drop(cache);
    assert_eq!(pool.in_use(), 0);
});
