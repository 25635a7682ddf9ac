//! A GSO super-frame from a peer's kernel, as an AF_PACKET uplink takes it
//! (`PACKET_VNET_HDR`): an arbitrary virtio-net header and frame through `Segmenter`, the
//! way the port's RX does it (`Segmenter::new`, a refusal being `bad_offload`; segments
//! longer than a buffer, less a VLAN tag the kernel took out, `oversize`; then `next_into`
//! into a buffer's room, segment by segment). Aimed at UDP-tunnel super-frames (a kernel
//! VXLAN or Geneve device's TSO packet, `csum_start` at the inner layer-4 header), which the
//! input can have the harness line up (lengths, checksum start, GSO type), and every other
//! kind of super-frame too.
//!
//! Nothing may panic. A super-frame `Segmenter` accepts and the port does not refuse as
//! oversize is cut without an error (`new` checked what `next_into` needs), into `count()`
//! segments, none longer than `max_segment_len()`, that follow `offload_common::check_cut`
//! (at most `len / gso_size + 1`, none over the headers plus `gso_size`, the payload kept).
//! A tunnel packet's segments (`csum_start` at the inner layer-4 header as RFC 7348/8926 and
//! the IP headers place it) are whole tunnel packets by etherparse's reading: the outer IP
//! and UDP lengths are the segment's, the outer IPv4 header checksum and the outer UDP
//! checksum (where not zero) verify, and so does the inner TCP or UDP checksum.
//!
//! Input: `[ctl: u8][virtio-net header: 10][frame]`; `ctl` bit 0: the length fields made to
//! agree with the frame's length; bit 1: NEEDS_CSUM set, `csum_start` put at the (inner, for
//! a tunnel packet) layer-4 header; bits 2-3: the GSO type kept, or made TCPV4, TCPV6 or
//! UDP_L4; bit 4: the kernel took a VLAN tag out (4 bytes less room a segment).
#![no_main]

#[path = "offload_common/mod.rs"]
mod offload_common;

use libfuzzer_sys::fuzz_target;
use offload_common::{check_cut, fix_lengths, l4_checksum, l4_offsets, Input};
use switchyard_dataplane::buffer::DATA_ROOM;
use switchyard_dataplane::wire::offload::{Segmenter, VnetGso, VNET_F_NEEDS_CSUM};

fuzz_target!(|data: &[u8]| {
    let Some(Input { ctl, mut hdr, mut frame }) = Input::parse(data) else { return };
    if ctl & 1 != 0 {
        fix_lengths(&mut frame, 0, 0);
    }
    let (outer_l4, inner_l4) = l4_offsets(&frame);
    if ctl & 2 != 0 {
        if let Some(l4) = inner_l4.map(|(_, l4)| l4).or(outer_l4) {
            hdr.flags |= VNET_F_NEEDS_CSUM;
            hdr.csum_start = l4.min(usize::from(u16::MAX)) as u16;
        }
    }
    match (ctl >> 2) & 3 {
        0 => {}
        1 => hdr.gso_type = VnetGso::TCPV4 | (hdr.gso_type & VnetGso::ECN),
        2 => hdr.gso_type = VnetGso::TCPV6 | (hdr.gso_type & VnetGso::ECN),
        _ => hdr.gso_type = VnetGso::UDP_L4,
    }
    let extra = if ctl & 16 != 0 { 4 } else { 0 };
    // As the port's RX: a frame without GSO is no segmenter's business.
    if !hdr.is_gso() {
        return;
    }
    // Refused: the port counts bad_offload.
    let Ok(mut seg) = Segmenter::new(&frame, &hdr) else { return };
    let mss = usize::from(hdr.gso_size);
    let count = seg.count();
    assert!(count >= 1 && count <= frame.len() / mss + 1, "{count} segments of {mss}");
    assert_eq!(seg.remaining(), count);
    let max = seg.max_segment_len();
    assert!(max <= frame.len());
    // Longer than a buffer: the port counts oversize.
    if max + extra > DATA_ROOM {
        return;
    }
    let mut out = vec![0u8; DATA_ROOM - extra];
    let mut segs = Vec::new();
    while let Some(l) = seg.next_into(&frame, &mut out).expect("a checked super-frame cuts") {
        assert!(l <= max, "a segment of {l} over the largest, {max}");
        segs.push(out[..l].to_vec());
        assert_eq!(seg.remaining(), count - segs.len());
        assert!(segs.len() <= count);
    }
    assert!(seg.finished());
    assert_eq!(segs.len(), count);
    check_cut(&frame, &segs, mss);

    // A tunnel packet cut where RFC 7348/8926 put its inner layer-4 header: whole tunnel
    // packets, outer and inner checksums finished.
    let Some((inner_eth, inner)) = inner_l4 else { return };
    if !hdr.needs_csum() || usize::from(hdr.csum_start) != inner {
        return;
    }
    let want = match hdr.gso_type & !VnetGso::ECN {
        VnetGso::UDP_L4 => 17,
        _ => 6,
    };
    for (i, s) in segs.iter().enumerate() {
        // Every IP and UDP length, outer and inner, is the segment's.
        let mut fixed = s.clone();
        fix_lengths(&mut fixed, 0, 0);
        assert_eq!(&fixed, s, "segment {i}: a length field is not the segment's");
        // The outer UDP checksum (none over IPv4 when zero) and the IPv4 header's.
        if let Some((udp, proto, ok)) = l4_checksum(s) {
            if Some(udp) == outer_l4 && proto == 17 {
                assert!(ok, "segment {i}: outer checksum");
            }
        }
        if let Some((l4, proto, ok)) = s.get(inner_eth..).and_then(l4_checksum) {
            if inner_eth + l4 == inner && proto == want {
                assert!(ok, "segment {i}: inner checksum");
            }
        }
    }
});
