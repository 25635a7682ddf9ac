//! A guest's offload requests, the way they reach the switch: an arbitrary virtio-net header
//! and frame, posted on a vhost-user TX ring that agreed to CSUM and HOST_TSO4/6
//! (`tx_offload`), taken by `Vring::dequeue` (the header read, a partial checksum finished
//! with `complete_checksum`, a super-frame copied out and cut by `Segmenter`); then the
//! segments to an egress port of the kind the input picks.
//!
//! Ingress must not panic or touch memory outside the guest's (mapped between guard pages),
//! and every frame is accounted for: either it comes out (one frame, or segments) and nothing
//! is counted, or nothing comes out and exactly one named drop is counted (`bad_offload`,
//! `oversize`, `vhost_invalid_desc`). What comes out: every buffer at most `DATA_ROOM`; a
//! frame without GSO is the frame, but for the two bytes of a checksum it was asked to
//! finish, which then verifies (RFC 1071, summed here); the segments of a super-frame follow
//! `offload_common::check_cut` (at most `len / gso_size + 1` of them, none over the headers
//! plus `gso_size`, the payload kept), and a segment whose TCP or UDP header etherparse finds
//! at the header's `csum_start` has a checksum that verifies.
//!
//! Egress (`ctl` bits 2-3): 0, a port without offloads (the checks above); 1, a guest RX ring
//! that agreed to GUEST_TSO4/6 with mergeable buffers (runs merged by
//! `merge_verified_tcp_run`): every segment arrives, a super-frame's header is one
//! `Segmenter` takes and it cuts back into the very segments; 2, an AF_PACKET TX socket
//! (`merge_tcp_run`): each merge's super-frame cuts back into segments of the same lengths and
//! payloads; 3, a tunnel port (VXLAN or Geneve, IPv4 or IPv6 underlay, MTU from the input):
//! each segment is encapsulated, or refused by `inner_len_drop` as `tunnel_mtu`/`runt`, and
//! one that is sent fits the underlay MTU.
//!
//! Input: `[ctl: u8][virtio-net header: 10][frame]`; `ctl` bit 0: the length fields of the
//! frame (IP, UDP, a tunnel's inner IP) made to agree with its length; bit 1: the header in a
//! descriptor of its own (else header and frame in one); bits 2-3: the egress; bit 4: the
//! tunnel egress is Geneve (else VXLAN), bit 5: over IPv6, bits 6-7: its underlay MTU
//! (1280 + 64 * n).
#![no_main]

#[path = "offload_common/mod.rs"]
// `l4_offsets` is the `tunnel_gso` target's.
#[allow(dead_code)]
mod offload_common;

use libfuzzer_sys::fuzz_target;
use offload_common::{check_cut, fix_lengths, l4_checksum, rfc1071, Input};
use std::sync::Arc;
use switchyard_dataplane::buffer::{Pool, PoolCache, DATA_ROOM};
use switchyard_dataplane::port::{Burst, DropTally, RxCtx, MAX_BURST};
use switchyard_dataplane::tunnel::{inner_len_drop, TunnelCodec, TunnelKind};
use switchyard_dataplane::wire::offload::{Segmenter, VnetGso, VnetHdrRepr, VNET_HDR_LEN};
use switchyard_dataplane::wire::tcp_merge::merge_tcp_run;
use switchyard_dataplane::DropReason;
use switchyard_ports::vhost::mem::GuestMemory;
use switchyard_ports::vhost::vring::{RingConfig, RxGso, Vring, DESC_F_NEXT, DESC_F_WRITE, GSO_MAX_FRAME};

/// Where the fake frontend maps guest memory in its own address space.
const UVA: u64 = 0x7f00_0000_0000;
/// Guest memory: the TX ring (8 entries), the RX ring (256), the frame, the RX buffers.
const MEM: u64 = 2 << 20;
const TX_DESC: u64 = 0x1000;
const TX_AVAIL: u64 = 0x2000;
const TX_USED: u64 = 0x3000;
const RX_DESC: u64 = 0x4000;
const RX_AVAIL: u64 = 0x6000;
const RX_USED: u64 = 0x7000;
const FRAME: u64 = 0x1_0000;
const RX_NUM: u16 = 256;
const RX_BUF: u64 = 0x10_0000;
const RX_BUF_LEN: u32 = 4096;
/// The virtio-net header with `num_buffers` (VERSION_1).
const HDR_LEN: usize = 12;

fn desc(mem: &GuestMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write(table + 16 * u64::from(i), &b).unwrap();
}

fn cfg(num: u16, desc: u64, avail: u64, used: u64) -> RingConfig {
    RingConfig {
        num,
        desc: desc + UVA,
        avail: avail + UVA,
        used: used + UVA,
        used_log_gpa: None,
        base: 0,
        event_idx: false,
        hdr_len: HDR_LEN,
        mrg_rxbuf: true,
        in_order: false,
        tx_offload: false,
        rx_gso: RxGso::default(),
    }
}

fn used_idx(mem: &GuestMemory, used: u64) -> u16 {
    let mut b = [0u8; 2];
    mem.read(used + 2, &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// The guest's TX ring with one chain, header and frame: what `dequeue` makes of it, and the
/// drops it counted.
fn ingress(
    mem: &Arc<GuestMemory>,
    hdr: &VnetHdrRepr,
    frame: &[u8],
    split: bool,
    cache: &mut PoolCache,
) -> (Vec<Vec<u8>>, DropTally) {
    let mut vh = [0u8; HDR_LEN];
    hdr.emit((&mut vh[..VNET_HDR_LEN]).try_into().unwrap());
    mem.write(FRAME, &vh).unwrap();
    mem.write(FRAME + HDR_LEN as u64, frame).unwrap();
    let len = (HDR_LEN + frame.len()) as u32;
    if split {
        desc(mem, TX_DESC, 0, FRAME, HDR_LEN as u32, DESC_F_NEXT, 1);
        desc(mem, TX_DESC, 1, FRAME + HDR_LEN as u64, len - HDR_LEN as u32, 0, 0);
    } else {
        desc(mem, TX_DESC, 0, FRAME, len, 0, 0);
    }
    mem.write(TX_AVAIL + 4, &0u16.to_le_bytes()).unwrap();
    mem.write(TX_AVAIL + 2, &1u16.to_le_bytes()).unwrap();
    let mut ring = Vring::new(
        mem.clone(),
        &RingConfig { tx_offload: true, ..cfg(8, TX_DESC, TX_AVAIL, TX_USED) },
        None,
        None,
    )
    .expect("TX ring");
    let mut drops = DropTally::default();
    let mut segs = Vec::new();
    // Up to 65,536 segments (a segment size of 1), 32 a poll as a worker takes them.
    for _ in 0..=(GSO_MAX_FRAME / 32 + 1) {
        let mut out = Burst::new();
        let got = ring.dequeue(RxCtx::new(cache, &mut drops), &mut out, 32);
        assert_eq!(got, out.len());
        for b in out.drain(..) {
            assert!(b.len() <= DATA_ROOM, "a buffer of {} bytes", b.len());
            segs.push(b.data().to_vec());
            cache.free(b);
        }
        if got == 0 && !ring.mid_frame() {
            break;
        }
    }
    assert!(!ring.mid_frame(), "segments left after every poll");
    assert_eq!(used_idx(mem, TX_USED), 1, "the chain went back to the guest");
    assert!(ring.broken().is_none());
    (segs, drops)
}

/// Egress 1: a guest RX ring that takes super-frames. Every segment arrives; a super-frame
/// cuts back into the very segments it was made of.
fn guest_rx(mem: &Arc<GuestMemory>, segs: &[Vec<u8>], cache: &mut PoolCache) {
    for i in 0..RX_NUM {
        desc(mem, RX_DESC, i, RX_BUF + u64::from(i) * u64::from(RX_BUF_LEN), RX_BUF_LEN, DESC_F_WRITE, 0);
        mem.write(RX_AVAIL + 4 + 2 * u64::from(i), &i.to_le_bytes()).unwrap();
    }
    mem.write(RX_AVAIL + 2, &RX_NUM.to_le_bytes()).unwrap();
    let rx_gso = RxGso { tcpv4: true, tcpv6: true };
    let mut ring = Vring::new(
        mem.clone(),
        &RingConfig { rx_gso, ..cfg(RX_NUM, RX_DESC, RX_AVAIL, RX_USED) },
        None,
        None,
    )
    .expect("RX ring");
    // Every segment takes at most one buffer (a segment is at most DATA_ROOM + 12 bytes), a
    // super-frame fewer than its segments: RX_NUM of them fit.
    let segs = &segs[..segs.len().min(usize::from(RX_NUM))];
    let mut drops = DropTally::default();
    let mut next_used = 0u16;
    let mut expect = segs.iter();
    for chunk in segs.chunks(MAX_BURST) {
        let mut burst = Burst::new();
        for s in chunk {
            burst.push(cache.alloc_copy(s).expect("buffer"));
        }
        let sent = ring.enqueue(&mut burst, cache, &mut drops);
        assert!(drops.is_zero(), "{drops:?}");
        assert_eq!(sent, chunk.len());
        let end = used_idx(mem, RX_USED);
        while next_used != end {
            // One frame: its header's num_buffers buffers, each as long as its used entry.
            let mut bytes = Vec::new();
            let mut nbuf = 1u16;
            let mut k = 0;
            while k < nbuf {
                let mut e = [0u8; 8];
                mem.read(RX_USED + 4 + 8 * u64::from(next_used.wrapping_add(k) % RX_NUM), &mut e).unwrap();
                let id = u32::from_le_bytes(e[0..4].try_into().unwrap());
                let len = u32::from_le_bytes(e[4..8].try_into().unwrap());
                assert!(id < u32::from(RX_NUM) && len <= RX_BUF_LEN);
                let mut b = vec![0u8; len as usize];
                mem.read(RX_BUF + u64::from(id) * u64::from(RX_BUF_LEN), &mut b).unwrap();
                bytes.extend_from_slice(&b);
                if k == 0 {
                    nbuf = u16::from_le_bytes([bytes[10], bytes[11]]);
                    assert!(nbuf >= 1);
                }
                k += 1;
            }
            next_used = next_used.wrapping_add(nbuf);
            let vh = VnetHdrRepr::parse(bytes[..VNET_HDR_LEN].try_into().unwrap());
            let frame = &bytes[HDR_LEN..];
            if vh.is_gso() {
                assert!(matches!(vh.gso_type, VnetGso::TCPV4 | VnetGso::TCPV6), "{vh:?}");
                let mut cut =
                    Segmenter::new(frame, &vh).expect("the guest's super-frame is one Segmenter takes");
                let mut out = vec![0u8; DATA_ROOM];
                let mut n = 0;
                while let Some(l) = cut.next_into(frame, &mut out).expect("a segment fits") {
                    let want = expect.next().expect("more segments re-cut than sent");
                    assert_eq!(&out[..l], want.as_slice(), "re-cut segment {n}");
                    n += 1;
                }
                assert!(n >= 2);
            } else {
                assert_eq!(vh, VnetHdrRepr::default());
                assert_eq!(Some(frame), expect.next().map(Vec::as_slice), "a plain frame");
            }
        }
    }
    assert!(expect.next().is_none(), "segments missing on the guest's side");
}

/// Egress 2: AF_PACKET TX merges runs. Each merge cuts back into segments of the lengths and
/// payloads of those it was made of (their checksums are not verified: a segment's may
/// differ).
fn afpacket_tx(segs: &[Vec<u8>]) {
    let mut i = 0;
    while i < segs.len() {
        let Some(m) = merge_tcp_run(segs[i..].iter().map(Vec::as_slice), MAX_BURST) else {
            i += 1;
            continue;
        };
        assert!(m.segments >= 2 && i + m.segments <= segs.len());
        let run = &segs[i..i + m.segments];
        let mut sup = m.headers().to_vec();
        for s in run {
            sup.extend_from_slice(&s[m.hdrs..]);
        }
        let vh = VnetHdrRepr::parse(m.vnet_hdr());
        let mut cut = Segmenter::new(&sup, &vh).expect("a merge is one Segmenter takes");
        assert_eq!(cut.count(), run.len());
        let mut out = vec![0u8; DATA_ROOM];
        for s in run {
            let l = cut.next_into(&sup, &mut out).expect("fits").expect("a segment");
            assert_eq!(l, s.len());
            assert_eq!(&out[m.hdrs..l], &s[m.hdrs..]);
        }
        assert!(cut.finished());
        i += m.segments;
    }
}

/// Egress 3: a tunnel port. Each segment is encapsulated or refused under a named reason,
/// and what is sent fits the underlay MTU.
fn tunnel(segs: &[Vec<u8>], sel: u8, cache: &mut PoolCache) {
    let kind = if sel & 1 != 0 { TunnelKind::Geneve } else { TunnelKind::Vxlan };
    let ipv6 = sel & 2 != 0;
    let mtu = 1280 + 64 * u32::from(sel >> 2);
    let max_inner = kind.max_inner_frame(ipv6, mtu);
    let codec = TunnelCodec { kind, vni: 5001 };
    for s in segs {
        match inner_len_drop(s.len(), max_inner) {
            Some(r) => assert!(matches!(r, DropReason::TunnelMtu | DropReason::Runt)),
            None => {
                assert!(s.len() + kind.outer_len(ipv6) <= mtu as usize);
                let mut b = cache.alloc_copy(s).expect("buffer");
                codec.encap_buf(&mut b).expect("headroom for the tunnel header");
                assert_eq!(codec.decap(b.data()), Ok(kind.header_len()));
                cache.free(b);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(Input { ctl, hdr, mut frame }) = Input::parse(data) else { return };
    if HDR_LEN + frame.len() > (RX_BUF - FRAME) as usize {
        return;
    }
    if ctl & 1 != 0 {
        fix_lengths(&mut frame, 0, 0);
    }
    let mem = Arc::new(GuestMemory::anonymous(&[(0, MEM, UVA)]).expect("guest memory"));
    let pool = Pool::with_hugepages("fuzz-offload", 128, false).expect("pool");
    let mut cache = pool.cache();
    let (segs, drops) = ingress(&mem, &hdr, &frame, ctl & 2 != 0, &mut cache);

    if segs.is_empty() {
        // Refused: counted once, under a reason that says why.
        assert_eq!(drops.total(), 1, "{drops:?}");
        let r = [DropReason::BadOffload, DropReason::Oversize, DropReason::VhostInvalidDesc]
            .into_iter()
            .find(|&r| drops.get(r) == 1);
        assert!(r.is_some(), "{drops:?}");
        if !hdr.is_gso() && !hdr.needs_csum() {
            // A plain frame is refused only for its length.
            assert!(frame.len() > DATA_ROOM, "{drops:?}");
        }
    } else {
        assert!(drops.is_zero(), "frames out and a drop counted: {drops:?}");
        if hdr.is_gso() {
            let h = check_cut(&frame, &segs, usize::from(hdr.gso_size));
            // A segment whose layer-4 header is where the header said has its checksum
            // finished (a tunnel's inner one is the `tunnel_gso` target's).
            let proto = match hdr.gso_type & !VnetGso::ECN {
                VnetGso::UDP_L4 => 17,
                _ => 6,
            };
            for s in &segs {
                if let Some((l4, p, ok)) = l4_checksum(s) {
                    if hdr.needs_csum()
                        && l4 == usize::from(hdr.csum_start)
                        && p == proto
                        && h.is_none_or(|h| h > l4)
                    {
                        assert!(ok, "segment checksum");
                    }
                }
            }
        } else {
            assert_eq!(segs.len(), 1);
            let out = &segs[0];
            assert_eq!(out.len(), frame.len());
            if hdr.needs_csum() {
                let (start, field) =
                    (usize::from(hdr.csum_start), usize::from(hdr.csum_start) + usize::from(hdr.csum_offset));
                assert!(field + 2 <= frame.len());
                assert_eq!(&out[..field], &frame[..field]);
                assert_eq!(&out[field + 2..], &frame[field + 2..]);
                // The field held the rest of the sum (the pseudo-header's, for a real sender):
                // finished, the bytes from csum_start sum to the field's old value, complemented
                // (0 is written as 0xffff).
                let old = u16::from_be_bytes([frame[field], frame[field + 1]]);
                let mut zeroed = out.clone();
                zeroed[field..field + 2].copy_from_slice(&old.to_be_bytes());
                let sum = rfc1071(&zeroed[start..]);
                let new = u16::from_be_bytes([out[field], out[field + 1]]);
                assert_eq!(new, if !sum == 0 { 0xffff } else { !sum }, "finished checksum");
            } else {
                assert_eq!(out, &frame);
            }
        }
        match (ctl >> 2) & 3 {
            0 => {}
            1 => guest_rx(&mem, &segs, &mut cache),
            2 => afpacket_tx(&segs),
            _ => tunnel(&segs, ctl >> 4, &mut cache),
        }
    }
    drop(cache);
    assert_eq!(pool.in_use(), 0);
});
