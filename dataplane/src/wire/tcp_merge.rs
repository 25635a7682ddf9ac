//! The reverse of [`Segmenter`](super::offload::Segmenter): a run of consecutive segments of
//! one TCP flow becomes one super-frame (the headers of the first, the payloads of all) with a
//! virtio-net header asking for GSO, so that a kernel port (`PACKET_VNET_HDR` on AF_PACKET)
//! or a guest that agreed to GUEST_TSO4/6 (vhost-user RX) gets one packet instead of dozens,
//! as the kernel's own GRO and its VXLAN + bridge path hand over.
//!
//! A run is what GRO would merge, and nothing else: untagged IPv4 without options or
//! fragments, or IPv6 without extension headers; every segment's headers equal to the first's
//! but for the IP length, identification (incrementing by one, unless DF is set) and checksum
//! and the TCP sequence number, PSH and checksum; sequence numbers contiguous; only ACK (and
//! PSH on the last segment, which ends the run) set; every payload of the size of the first
//! but the last, which may be shorter; the merged IP packet at most 65,535 bytes.
//!
//! The super-frame's TCP checksum is left to the receiver's side as a sender's TSO packet's
//! is (`NEEDS_CSUM`, the field holding the pseudo-header sum): a veth's peer stack trusts it,
//! as it trusts the packets of the kernel's own VXLAN + bridge path, and a device that needs
//! it finished gets it finished by the kernel. The segments' own checksums are not verified
//! here (that would read every payload byte once more); a full checksum would not help
//! either: the kernel makes a GSO packet without `NEEDS_CSUM` into one with it before sending
//! (`tcp4_gso_segment` on an untrusted packet), dropping the checksum (ports/tests/
//! afpacket_tx_merge.rs sees the pseudo-header sum arrive). A guest is different: virtio
//! requires a device that marks a packet `NEEDS_CSUM` to have validated its checksums, and the
//! guest's stack trusts the mark, so [`merge_verified_tcp_run`] (vhost-user RX) verifies every
//! segment's checksums first and ends the run before one that fails.
//!
//! The promise: nothing here panics or reads outside the frames it is given; frames that do
//! not qualify are left for the caller to send one by one.

use super::ethernet::ETH_TYPE_OFFSET;
use super::ip::{
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_TCP, TCP_ACK, TCP_CSUM, TCP_DATA_OFF, TCP_FLAGS, TCP_HEADER_LEN,
    TCP_PSH, TCP_SEQ, V4_CSUM, V4_DF, V4_FRAG, V4_ID, V4_MF_OFFSET, V4_PROTO, V4_SRC, V4_TOTAL_LEN,
    V4_VER_IHL, V6_NEXT, V6_PAYLOAD_LEN, V6_SRC,
};
use super::offload::{fold, ones_sum, VnetGso, VnetHdrRepr, VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
use super::{EtherType, ETH_HEADER_LEN};

/// The most header bytes a merged segment has: Ethernet, IPv6, TCP with 40 bytes of options.
pub const MERGE_MAX_HDRS: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN + 60;

/// The largest IP length field (IPv4 total length, IPv6 payload length).
const IP_LEN_MAX: usize = 0xffff;

/// A run of segments merged: what goes before their payloads.
#[derive(Debug, Clone)]
pub struct TcpMerge {
    /// The virtio-net header, then the super-frame's headers.
    head: [u8; VNET_HDR_LEN + MERGE_MAX_HDRS],
    /// Header bytes of every segment of the run (its payload starts there).
    pub hdrs: usize,
    /// Segments in the run (at least 2).
    pub segments: usize,
}

impl TcpMerge {
    /// The virtio-net header and the super-frame's headers, to be sent before the payloads
    /// (`frame[hdrs..]` of each segment, in order).
    pub fn head(&self) -> &[u8] {
        &self.head[..VNET_HDR_LEN + self.hdrs]
    }

    /// The virtio-net header alone.
    pub fn vnet_hdr(&self) -> &[u8; VNET_HDR_LEN] {
        self.head.first_chunk().unwrap_or(&[0; VNET_HDR_LEN])
    }

    /// The super-frame's headers alone (Ethernet to TCP).
    pub fn headers(&self) -> &[u8] {
        &self.head[VNET_HDR_LEN..VNET_HDR_LEN + self.hdrs]
    }
}

/// One segment's layout and the fields that vary along a run.
#[derive(Debug, Clone, Copy)]
struct Seg {
    l3: usize,
    l4: usize,
    hdrs: usize,
    ipv4: bool,
    payload: usize,
    seq: u32,
    flags: u8,
    id: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(f) = b.get_mut(at..at + 2) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}

/// A frame that may be part of a run: untagged IPv4 (no options, not a fragment) or IPv6 (no
/// extension header) carrying TCP with a payload, lengths exactly the frame's, flags ACK and
/// maybe PSH.
fn parse(f: &[u8]) -> Option<Seg> {
    let l3 = ETH_HEADER_LEN;
    let (ipv4, l4, id) = match be16(f, ETH_TYPE_OFFSET)? {
        EtherType::IPV4 => {
            let ip = f.get(l3..l3 + IPV4_HEADER_LEN)?;
            let ok = ip[V4_VER_IHL] == 0x45
                && ip[V4_PROTO] == PROTO_TCP
                && be16(ip, V4_FRAG)? & V4_MF_OFFSET == 0
                && usize::from(be16(ip, V4_TOTAL_LEN)?) == f.len() - l3;
            if !ok {
                return None;
            }
            (true, l3 + IPV4_HEADER_LEN, be16(ip, V4_ID)?)
        }
        EtherType::IPV6 => {
            let ip = f.get(l3..l3 + IPV6_HEADER_LEN)?;
            let ok = ip[0] >> 4 == 6
                && ip[V6_NEXT] == PROTO_TCP
                && usize::from(be16(ip, V6_PAYLOAD_LEN)?) == f.len() - l3 - IPV6_HEADER_LEN;
            if !ok {
                return None;
            }
            (false, l3 + IPV6_HEADER_LEN, 0)
        }
        _ => return None,
    };
    let doff = usize::from(*f.get(l4 + TCP_DATA_OFF)? >> 4) * 4;
    let hdrs = l4 + doff;
    let flags = *f.get(l4 + TCP_FLAGS)?;
    if doff < TCP_HEADER_LEN || hdrs >= f.len() || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let seq = u32::from_be_bytes(f.get(l4 + TCP_SEQ..l4 + TCP_SEQ + 4)?.try_into().ok()?);
    Some(Seg { l3, l4, hdrs, ipv4, payload: f.len() - hdrs, seq, flags, id })
}

/// The byte ranges of a segment's headers that every segment of a run must have equal: all
/// but the IP length, identification and checksum, the TCP sequence number, flags and
/// checksum.
fn same_headers(s: &Seg, a: &[u8], b: &[u8]) -> bool {
    let (l3, l4, hdrs) = (s.l3, s.l4, s.hdrs);
    let ip_ok = if s.ipv4 {
        a[..l3 + V4_TOTAL_LEN] == b[..l3 + V4_TOTAL_LEN]
            && a[l3 + V4_FRAG..l3 + V4_CSUM] == b[l3 + V4_FRAG..l3 + V4_CSUM]
            && a[l3 + V4_SRC..l4] == b[l3 + V4_SRC..l4]
    } else {
        a[..l3 + V6_PAYLOAD_LEN] == b[..l3 + V6_PAYLOAD_LEN] && a[l3 + V6_NEXT..l4] == b[l3 + V6_NEXT..l4]
    };
    ip_ok
        && a[l4..l4 + TCP_SEQ] == b[l4..l4 + TCP_SEQ]
        && a[l4 + TCP_SEQ + 4..l4 + TCP_FLAGS] == b[l4 + TCP_SEQ + 4..l4 + TCP_FLAGS]
        && a[l4 + TCP_FLAGS + 1..l4 + TCP_CSUM] == b[l4 + TCP_FLAGS + 1..l4 + TCP_CSUM]
        && a[l4 + TCP_CSUM + 2..hdrs] == b[l4 + TCP_CSUM + 2..hdrs]
}

/// The sum of the pseudo-header's addresses (the protocol and length are added per segment).
fn addr_sum(s: &Seg, f: &[u8]) -> u64 {
    if s.ipv4 {
        ones_sum(&f[s.l3 + V4_SRC..s.l3 + V4_SRC + 8], 0)
    } else {
        ones_sum(&f[s.l3 + V6_SRC..s.l3 + V6_SRC + 32], 0)
    }
}

/// Whether a segment's checksums verify: the IPv4 header's, and the TCP checksum over the
/// pseudo-header (`addrs`: the addresses' sum) and the whole segment.
fn checksums_ok(s: &Seg, f: &[u8], addrs: u64) -> bool {
    let ip_ok = !s.ipv4 || fold(ones_sum(&f[s.l3..s.l4], 0)) == 0xffff;
    let pseudo = addrs + u64::from(PROTO_TCP) + (f.len() - s.l4) as u64;
    ip_ok && fold(ones_sum(&f[s.l4..], pseudo)) == 0xffff
}

/// Merges the longest run at the start of `frames` (at most `max` of them): `None` when it is
/// shorter than two segments. The first frame of a run that did not merge can still go alone.
/// The segments' checksums are not looked at (see the module doc).
pub fn merge_tcp_run<'a>(frames: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Option<TcpMerge> {
    merge(frames, max, false)
}

/// As [`merge_tcp_run`], and every segment's checksums verify (the IPv4 header's and the TCP
/// checksum), as GRO checks them and as virtio requires of a device that hands a guest a
/// packet marked `NEEDS_CSUM`: the run ends before the first segment that fails (it then goes
/// alone, and its receiver finds the error).
pub fn merge_verified_tcp_run<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> Option<TcpMerge> {
    merge(frames, max, true)
}

fn merge<'a>(frames: impl IntoIterator<Item = &'a [u8]>, max: usize, verify: bool) -> Option<TcpMerge> {
    let mut it = frames.into_iter().take(max);
    let f0 = it.next()?;
    let s0 = parse(f0)?;
    let mss = s0.payload;
    if s0.flags & TCP_PSH != 0 {
        return None;
    }
    let addrs = addr_sum(&s0, f0);
    let ip_fixed = s0.hdrs - s0.l3 - if s0.ipv4 { 0 } else { IPV6_HEADER_LEN };
    let mut prev = s0;
    let mut payload = mss;
    let mut n = 1usize;
    let mut last_flags = s0.flags;
    for f in it {
        // The previous segment was full and not the last one (no PSH): `f` may follow it.
        if prev.payload != mss || prev.flags & TCP_PSH != 0 {
            break;
        }
        let Some(s) = parse(f) else { break };
        let in_order = s.hdrs == s0.hdrs
            && s.ipv4 == s0.ipv4
            && s.seq == prev.seq.wrapping_add(mss as u32)
            && s.payload <= mss
            && ip_fixed + payload + s.payload <= IP_LEN_MAX
            && same_headers(&s0, f0, f);
        // The identification increments unless DF is set (equal in both: compared above).
        let id_ok = !s0.ipv4
            || s.id == s0.id.wrapping_add(n as u16)
            || be16(f0, s0.l3 + V4_FRAG).is_some_and(|v| v & V4_DF != 0);
        if !in_order || !id_ok {
            break;
        }
        // The first segment's checksums only once a second one could join it.
        if verify && ((n == 1 && !checksums_ok(&s0, f0, addrs)) || !checksums_ok(&s, f, addrs)) {
            break;
        }
        payload += s.payload;
        last_flags = s.flags;
        prev = s;
        n += 1;
    }
    if n < 2 {
        return None;
    }
    let hdrs = s0.hdrs;
    let mut head = [0u8; VNET_HDR_LEN + MERGE_MAX_HDRS];
    let vnet = VnetHdrRepr {
        flags: VNET_F_NEEDS_CSUM,
        gso_type: if s0.ipv4 { VnetGso::TCPV4 } else { VnetGso::TCPV6 },
        hdr_len: hdrs as u16,
        gso_size: mss as u16,
        csum_start: s0.l4 as u16,
        csum_offset: TCP_CSUM as u16,
    };
    let (vh, h) = head.split_at_mut(VNET_HDR_LEN);
    if let Ok(vh) = <&mut [u8; VNET_HDR_LEN]>::try_from(vh) {
        vnet.emit(vh);
    }
    let h = &mut h[..hdrs];
    h.copy_from_slice(&f0[..hdrs]);
    let l3 = s0.l3;
    if s0.ipv4 {
        put16(h, l3 + V4_TOTAL_LEN, (ip_fixed + payload) as u16);
        put16(h, l3 + V4_CSUM, 0);
        let c = !fold(ones_sum(&h[l3..s0.l4], 0));
        put16(h, l3 + V4_CSUM, c);
    } else {
        put16(h, l3 + V6_PAYLOAD_LEN, (ip_fixed + payload) as u16);
    }
    let l4 = s0.l4;
    h[l4 + TCP_FLAGS] = s0.flags | (last_flags & TCP_PSH);
    // The pseudo-header sum (not complemented), as a sender with checksum offload leaves it.
    let pseudo = addrs + u64::from(PROTO_TCP) + (hdrs - l4 + payload) as u64;
    put16(h, l4 + TCP_CSUM, fold(pseudo));
    Some(TcpMerge { head, hdrs, segments: n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::offload::{complete_checksum, Segmenter};
    use etherparse::PacketBuilder;

    fn payload(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
    }

    /// A finished IPv4 TCP segment (etherparse writes the checksums; the ID and DF are set
    /// after, with the header checksum written again).
    fn seg4(seq: u32, id: u16, df: bool, psh: bool, data: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1000, 2000, seq, 512)
            .ack(77);
        let b = if psh { b.psh() } else { b };
        let mut out = Vec::new();
        b.write(&mut out, data).unwrap();
        let ip = &mut out[ETH_HEADER_LEN..ETH_HEADER_LEN + IPV4_HEADER_LEN];
        put16(ip, V4_ID, id);
        put16(ip, V4_FRAG, if df { V4_DF } else { 0 });
        put16(ip, V4_CSUM, 0);
        let c = !fold(ones_sum(ip, 0));
        put16(ip, V4_CSUM, c);
        out
    }

    fn seg6(seq: u32, psh: bool, data: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(1000, 2000, seq, 512)
            .ack(77);
        let b = if psh { b.psh() } else { b };
        let mut out = Vec::new();
        b.write(&mut out, data).unwrap();
        out
    }

    /// The super-frame of a merge: its headers and the payloads.
    fn super_frame(m: &TcpMerge, frames: &[Vec<u8>]) -> (VnetHdrRepr, Vec<u8>) {
        let head = m.head();
        let vh = VnetHdrRepr::parse(head[..VNET_HDR_LEN].try_into().unwrap());
        let mut f = head[VNET_HDR_LEN..].to_vec();
        for s in &frames[..m.segments] {
            f.extend_from_slice(&s[m.hdrs..]);
        }
        (vh, f)
    }

    /// A frame's TCP checksum verifies (the receiving stack's check).
    fn tcp_checksum_ok(f: &[u8]) -> bool {
        let s = etherparse::SlicedPacket::from_ethernet(f).unwrap();
        let (src, dst, ipv4): (Vec<u8>, Vec<u8>, bool) = match s.net.unwrap() {
            etherparse::NetSlice::Ipv4(v) => {
                (v.header().source().to_vec(), v.header().destination().to_vec(), true)
            }
            etherparse::NetSlice::Ipv6(v) => {
                (v.header().source().to_vec(), v.header().destination().to_vec(), false)
            }
        };
        let l4 = ETH_HEADER_LEN + if ipv4 { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
        let pseudo = ones_sum(&src, ones_sum(&dst, 0)) + u64::from(PROTO_TCP) + (f.len() - l4) as u64;
        fold(ones_sum(&f[l4..], pseudo)) == 0xffff
    }

    /// Segments cut from a super-frame merge back into it, checksums and all, and the
    /// Segmenter cuts the merge back into the very segments (IPv4 and IPv6, a short last one,
    /// PSH on the last).
    #[test]
    fn a_run_merges_into_the_frame_that_segments_back_into_it() {
        for v6 in [false, true] {
            for (count, last) in [(2usize, 1398usize), (5, 1398), (7, 3), (32, 1000)] {
                let mss = 1398;
                let frames: Vec<Vec<u8>> = (0..count)
                    .map(|i| {
                        let len = if i + 1 == count { last } else { mss };
                        let seq = 5000u32.wrapping_add((i * mss) as u32);
                        let data = payload(len, i as u8);
                        let psh = i + 1 == count;
                        if v6 {
                            seg6(seq, psh, &data)
                        } else {
                            seg4(seq, 100 + i as u16, false, psh, &data)
                        }
                    })
                    .collect();
                let m = merge_tcp_run(frames.iter().map(|f| f.as_slice()), 64).expect("a run");
                assert_eq!(m.segments, count);
                let (vh, sf) = super_frame(&m, &frames);
                assert_eq!(vh.gso_size as usize, mss);
                assert_eq!(vh.gso_type, if v6 { VnetGso::TCPV6 } else { VnetGso::TCPV4 });
                assert!(vh.needs_csum());
                let l4 = ETH_HEADER_LEN + if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
                assert_eq!((vh.csum_start as usize, vh.csum_offset as usize), (l4, TCP_CSUM));
                // Finished as the device (or the receiver's trust) would: it verifies.
                let mut done = sf.clone();
                complete_checksum(&mut done, l4, TCP_CSUM).unwrap();
                assert!(tcp_checksum_ok(&done), "the finished super-frame's checksum verifies");
                let s = etherparse::SlicedPacket::from_ethernet(&sf).unwrap();
                let Some(etherparse::TransportSlice::Tcp(t)) = s.transport else { panic!() };
                assert!(t.psh() && t.ack() && t.sequence_number() == 5000);
                // Back through the Segmenter: the same frames, byte for byte.
                let mut seg = Segmenter::new(&sf, &vh).unwrap();
                for (i, want) in frames.iter().enumerate() {
                    let mut out = vec![0u8; 2048];
                    let n = seg.next_into(&sf, &mut out).unwrap().unwrap();
                    assert_eq!(&out[..n], &want[..], "segment {i} of {count} (v6 {v6})");
                }
                assert!(seg.finished());
            }
        }
    }

    /// What must not merge ends the run there (or prevents it): a sequence gap, other flags,
    /// another flow, IP options, a non-incrementing ID without DF, a longer segment after
    /// shorter ones, a short segment before a full one, a VLAN tag, more than 65,535 bytes
    /// of IP.
    #[test]
    fn what_gro_would_not_merge_is_not_merged() {
        let d = payload(1000, 1);
        let run =
            |frames: &[Vec<u8>]| merge_tcp_run(frames.iter().map(|f| f.as_slice()), 64).map(|m| m.segments);
        let ok = |seq, id| seg4(seq, id, false, false, &d);
        assert_eq!(run(&[ok(0, 1), ok(1000, 2), ok(2000, 3)]), Some(3));
        assert_eq!(run(&[ok(0, 1), ok(1000, 2), ok(2500, 3)]), Some(2), "sequence gap");
        assert_eq!(run(&[ok(0, 1), ok(1000, 5)]), None, "ID jumps without DF");
        assert_eq!(
            run(&[seg4(0, 1, true, false, &d), seg4(1000, 1, true, false, &d)]),
            Some(2),
            "DF: fixed ID"
        );
        assert_eq!(run(&[seg4(0, 1, false, true, &d), ok(1000, 2)]), None, "PSH ends a run");
        let mut fin = ok(1000, 2);
        fin[ETH_HEADER_LEN + IPV4_HEADER_LEN + TCP_FLAGS] |= super::super::ip::TCP_FIN;
        assert_eq!(run(&[ok(0, 1), fin]), None, "FIN");
        let mut other = ok(1000, 2);
        other[ETH_HEADER_LEN + IPV4_HEADER_LEN + 1] ^= 1; // source port
        assert_eq!(run(&[ok(0, 1), other]), None, "another flow");
        let mut opts = ok(1000, 2);
        opts[ETH_HEADER_LEN] = 0x46;
        assert_eq!(run(&[opts.clone(), ok(1000, 2)]), None, "IP options");
        assert_eq!(run(&[ok(0, 1), opts]), None, "IP options");
        let odd = |seq, id| seg4(seq, id, false, false, &payload(999, 1));
        assert_eq!(run(&[odd(0, 1), odd(999, 2), ok(1998, 3)]), Some(2), "odd size; a longer one ends it");
        let short = seg4(0, 1, false, false, &payload(500, 1));
        assert_eq!(run(&[short, ok(500, 2)]), None, "a short segment ends the run");
        let mut tagged = ok(0, 1);
        tagged.splice(12..12, [0x81, 0, 0, 10]);
        assert_eq!(run(&[tagged.clone(), tagged]), None, "VLAN tag");
        let mut ack = ok(0, 1);
        ack.truncate(ETH_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN);
        assert_eq!(run(&[ack.clone(), ack]), None, "no payload");
        let big: Vec<Vec<u8>> = (0..70).map(|i| ok(i * 1000, 1 + i as u16)).collect();
        let all = merge_tcp_run(big.iter().map(|f| f.as_slice()), 100).map(|m| m.segments);
        assert_eq!(all, Some(65), "IP length limit");
        assert_eq!(merge_tcp_run(big.iter().map(|f| f.as_slice()), 8).map(|m| m.segments), Some(8), "max");
        let truncated = ok(0, 1)[..30].to_vec();
        assert_eq!(run(&[truncated.clone(), truncated]), None);
        assert_eq!(run(&[]), None);
    }

    /// The verified merge ends a run before the first segment whose IPv4 header or TCP
    /// checksum fails; the unverified one does not look.
    #[test]
    fn a_verified_merge_ends_before_a_bad_checksum() {
        let d = payload(1000, 3);
        let frames: Vec<Vec<u8>> = (0..4).map(|i| seg4(i * 1000, 1 + i as u16, false, false, &d)).collect();
        let verified =
            |fs: &[Vec<u8>]| merge_verified_tcp_run(fs.iter().map(|f| f.as_slice()), 64).map(|m| m.segments);
        let plain = |fs: &[Vec<u8>]| merge_tcp_run(fs.iter().map(|f| f.as_slice()), 64).map(|m| m.segments);
        assert_eq!(verified(&frames), Some(4));
        let l4 = ETH_HEADER_LEN + IPV4_HEADER_LEN;
        let mut bad = frames.clone();
        bad[2][l4 + TCP_HEADER_LEN + 100] ^= 0x40;
        assert_eq!(verified(&bad), Some(2), "a payload byte of the third segment");
        assert_eq!(plain(&bad), Some(4), "unverified: merged");
        let mut bad = frames.clone();
        bad[0][ETH_HEADER_LEN + V4_CSUM] ^= 1;
        assert_eq!(verified(&bad), None, "the first segment's IPv4 header checksum");
        let mut bad = frames.clone();
        bad[1][l4 + TCP_CSUM] ^= 1;
        assert_eq!(verified(&bad), None, "the second segment's TCP checksum: a run of one");
        let mut bad = frames.clone();
        bad[3][ETH_HEADER_LEN + V4_CSUM + 1] ^= 0x10;
        assert_eq!(verified(&bad), Some(3), "the last segment's IPv4 header checksum");
        let f6: Vec<Vec<u8>> = (0..3).map(|i| seg6(i * 1000, false, &d)).collect();
        assert_eq!(verified(&f6), Some(3));
        let mut bad6 = f6.clone();
        let last = bad6[2].len() - 1;
        bad6[2][last] ^= 1;
        assert_eq!(verified(&bad6), Some(2), "IPv6: the last byte of the third segment");
    }

    proptest::proptest! {
        /// Whatever bytes the frames hold (valid runs with up to four bytes changed, a frame
        /// cut short), merging never panics, and a merge is lossless: the Segmenter cuts the
        /// super-frame back into the very frames it was made of, but for what segmentation
        /// writes anew (the IPv4 ID and header checksum, the TCP checksum).
        #[test]
        fn a_merge_never_panics_and_loses_nothing(
            v6 in proptest::bool::ANY,
            count in 1usize..12,
            mss in 1usize..1500,
            last in 1usize..1500,
            flips in proptest::collection::vec((0usize..12, 0usize..1600, 1u8..=255), 0..4),
            cut in proptest::option::of((0usize..12, 0usize..1600)),
        ) {
            let mut frames: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let len = if i + 1 == count { last.min(mss) } else { mss };
                    let seq = 7u32.wrapping_add((i * mss) as u32);
                    let data = payload(len, i as u8);
                    if v6 { seg6(seq, false, &data) } else { seg4(seq, 40 + i as u16, false, false, &data) }
                })
                .collect();
            let touched = !flips.is_empty() || cut.is_some();
            for (f, at, x) in flips {
                if let Some(b) = frames.get_mut(f % count).and_then(|f| f.get_mut(at)) {
                    *b ^= x;
                }
            }
            if let Some((f, at)) = cut {
                let f = &mut frames[f % count];
                let at = at.min(f.len());
                f.truncate(at);
            }
            let plain = merge_tcp_run(frames.iter().map(|f| f.as_slice()), 64);
            // Verifying only ends runs earlier; untouched frames (finished checksums) verify.
            let verified = merge_verified_tcp_run(frames.iter().map(|f| f.as_slice()), 64);
            let (p, v) = (plain.as_ref().map_or(0, |m| m.segments), verified.as_ref().map_or(0, |m| m.segments));
            proptest::prop_assert!(v <= p, "verified {} > plain {}", v, p);
            if !touched {
                proptest::prop_assert_eq!(v, p);
            }
            let Some(m) = plain else { return Ok(()) };
            proptest::prop_assert!(m.segments >= 2 && m.segments <= count);
            let (vh, sf) = super_frame(&m, &frames);
            let mut seg = Segmenter::new(&sf, &vh).expect("a merge segments");
            let l3 = ETH_HEADER_LEN;
            let l4 = l3 + if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
            let rewritten = |k: usize| {
                k == l4 + TCP_CSUM || k == l4 + TCP_CSUM + 1
                    || (!v6 && (l3 + V4_ID..l3 + V4_ID + 2).contains(&k))
                    || (!v6 && (l3 + V4_CSUM..l3 + V4_CSUM + 2).contains(&k))
            };
            for (i, want) in frames[..m.segments].iter().enumerate() {
                let mut out = vec![0u8; 2048];
                let n = seg.next_into(&sf, &mut out).unwrap().expect("as many segments as merged");
                proptest::prop_assert_eq!(n, want.len(), "segment {} length", i);
                for (k, (a, b)) in out[..n].iter().zip(want).enumerate() {
                    proptest::prop_assert!(a == b || rewritten(k), "segment {} byte {}: {} != {}", i, k, a, b);
                }
            }
            proptest::prop_assert!(seg.finished());
        }
    }
}
