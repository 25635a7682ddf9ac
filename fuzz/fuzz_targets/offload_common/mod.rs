//! What the offload fuzz targets (`offload`, `tunnel_gso`) share: an input read as a
//! virtio-net header and a frame, a fix-up that makes the frame's length fields agree with
//! its length (so that the fuzzer reaches segmentation without guessing them), and checks of
//! a super-frame's segments stated from the outside: the segments' bytes, not the code that
//! cut them, and checksums verified by etherparse rather than by `wire::offload`.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use switchyard_dataplane::wire::offload::{VnetHdrRepr, VNET_HDR_LEN};

/// An input: `[ctl: u8][virtio-net header: 10 bytes][frame]`. `None`: too short.
pub struct Input {
    pub ctl: u8,
    pub hdr: VnetHdrRepr,
    pub frame: Vec<u8>,
}

impl Input {
    pub fn parse(data: &[u8]) -> Option<Input> {
        let (&ctl, rest) = data.split_first()?;
        let hdr: &[u8; VNET_HDR_LEN] = rest.get(..VNET_HDR_LEN)?.try_into().ok()?;
        Some(Input { ctl, hdr: VnetHdrRepr::parse(hdr), frame: rest[VNET_HDR_LEN..].to_vec() })
    }
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if let Some(b) = f.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// The IP header after the Ethernet header at `eth` and up to two VLAN tags: (offset,
/// IPv4?).
fn ip_at(f: &[u8], eth: usize) -> Option<(usize, bool)> {
    let mut l3 = eth + 14;
    let mut et = be16(f, eth + 12)?;
    for _ in 0..2 {
        if et != 0x8100 && et != 0x88a8 {
            break;
        }
        et = be16(f, l3 + 2)?;
        l3 += 4;
    }
    match et {
        0x0800 => Some((l3, true)),
        0x86dd => Some((l3, false)),
        _ => None,
    }
}

/// Where the frame's layer-4 header starts and, for a VXLAN or Geneve packet, where its inner
/// frame and the inner layer-4 header start, as RFC 791/8200 and RFC 7348/8926 lay them out:
/// `(l4, Some((inner Ethernet, inner l4)))`.
pub fn l4_offsets(f: &[u8]) -> (Option<usize>, Option<(usize, usize)>) {
    let Some((l3, v4)) = ip_at(f, 0) else { return (None, None) };
    let (l4, proto) = if v4 {
        let Some(&vihl) = f.get(l3) else { return (None, None) };
        (l3 + usize::from(vihl & 0x0f) * 4, f.get(l3 + 9).copied())
    } else {
        (l3 + 40, f.get(l3 + 6).copied())
    };
    if proto != Some(17) {
        return (Some(l4), None);
    }
    let Some(inner_eth) = tunnel_inner(f, l4) else { return (Some(l4), None) };
    let inner = ip_at(f, inner_eth).and_then(|(il3, iv4)| {
        if iv4 {
            f.get(il3).map(|v| il3 + usize::from(v & 0x0f) * 4)
        } else {
            Some(il3 + 40)
        }
    });
    (Some(l4), inner.map(|i| (inner_eth, i)))
}

/// The inner Ethernet frame of the UDP datagram at `udp`: Geneve (version 0, Ethernet)
/// after its options, else VXLAN (the I flag).
fn tunnel_inner(f: &[u8], udp: usize) -> Option<usize> {
    let tun = udp + 8;
    match (f.get(tun), be16(f, tun + 2)) {
        (Some(&fl), Some(0x6558)) if fl >> 6 == 0 => Some(tun + 8 + usize::from(fl & 0x3f) * 4),
        (Some(&fl), _) if fl & 0x08 != 0 => Some(tun + 8),
        _ => None,
    }
}

/// Makes the IP (and UDP) length fields of the frame at `eth` agree with the frame's end;
/// for a VXLAN or Geneve packet, the inner frame's too.
pub fn fix_lengths(f: &mut [u8], eth: usize, depth: u32) {
    let Some((l3, v4)) = ip_at(f, eth) else { return };
    let len = f.len();
    let Some(rest) = len.checked_sub(l3) else { return };
    let (l4, proto) = if v4 {
        put16(f, l3 + 2, rest as u16);
        let Some(&vihl) = f.get(l3) else { return };
        (l3 + usize::from(vihl & 0x0f) * 4, f.get(l3 + 9).copied())
    } else {
        put16(f, l3 + 4, rest.saturating_sub(40) as u16);
        (l3 + 40, f.get(l3 + 6).copied())
    };
    if proto == Some(17) && l4 < len {
        put16(f, l4 + 4, (len - l4) as u16);
        if depth == 0 {
            if let Some(inner_eth) = tunnel_inner(f, l4) {
                fix_lengths(f, inner_eth, 1);
            }
        }
    }
}

/// A TCP or UDP packet as etherparse reads it (`frame` starting at an Ethernet header): its
/// layer-4 header's offset, protocol (6 or 17), and whether its checksum verifies (and, over
/// IPv4, the IP header's too): the RFC 1071 sum of the pseudo-header (RFC 793/768, RFC 8200
/// section 8.1) and the segment's bytes as they are (etherparse's own checksum functions
/// re-serialise the header from its fields and so drop the TCP reserved bits). `None`: not
/// TCP or UDP over IP as etherparse reads it, or a UDP checksum of zero (none, over IPv4).
pub fn l4_checksum(frame: &[u8]) -> Option<(usize, u8, bool)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (l4, proto) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.slice(), 6u8),
        Some(TransportSlice::Udp(u)) => (u.slice(), 17u8),
        _ => return None,
    };
    let mut sum = Vec::with_capacity(40 + l4.len());
    let ip_ok = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            if proto == 17 && l4.get(6..8) == Some(&[0, 0]) {
                return None;
            }
            sum.extend_from_slice(&ip.header().source());
            sum.extend_from_slice(&ip.header().destination());
            sum.extend_from_slice(&[0, proto]);
            sum.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            rfc1071(ip.header().slice()) == 0xffff
        }
        Some(NetSlice::Ipv6(ip)) => {
            sum.extend_from_slice(&ip.header().source());
            sum.extend_from_slice(&ip.header().destination());
            sum.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            sum.extend_from_slice(&[0, 0, 0, proto]);
            true
        }
        _ => return None,
    };
    sum.extend_from_slice(l4);
    Some((l4.as_ptr() as usize - frame.as_ptr() as usize, proto, ip_ok && rfc1071(&sum) == 0xffff))
}

/// The ones' complement sum of `b` (RFC 1071), folded.
pub fn rfc1071(b: &[u8]) -> u16 {
    let mut s: u64 = b.chunks(2).map(|c| u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Checks `segs`, what a super-frame `frame` with segment size `mss` was cut into, from the
/// outside: one segment is the frame's length; several all carry the same `h` bytes of
/// headers (found from the lengths: the segments' total is the frame's plus `h` for each
/// segment after the first), `mss` bytes of payload each but the last (at most `mss`), and
/// their payloads put together are the frame's after its headers. So the number of segments
/// is at most `frame.len() / mss + 1` and none is longer than the headers plus `mss`.
/// Returns `h` (`None` for one segment).
pub fn check_cut(frame: &[u8], segs: &[Vec<u8>], mss: usize) -> Option<usize> {
    assert!(mss > 0, "a super-frame with segment size 0 was cut");
    assert!(!segs.is_empty(), "a super-frame cut into nothing");
    assert!(
        segs.len() <= frame.len() / mss + 1,
        "{} segments of {mss} from {} bytes",
        segs.len(),
        frame.len()
    );
    if segs.len() == 1 {
        assert_eq!(segs[0].len(), frame.len(), "a lone segment is the whole frame");
        return None;
    }
    let total: usize = segs.iter().map(Vec::len).sum();
    let extra = total.checked_sub(frame.len()).expect("segments shorter than the frame in all");
    assert_eq!(extra % (segs.len() - 1), 0, "segments of unequal header lengths");
    let h = extra / (segs.len() - 1);
    assert!(h <= frame.len());
    let mut at = h;
    for (i, s) in segs.iter().enumerate() {
        let chunk = s.len().checked_sub(h).expect("a segment shorter than its headers");
        assert!(chunk <= mss, "segment {i}: {chunk} bytes of payload over the segment size {mss}");
        if i + 1 < segs.len() {
            assert_eq!(chunk, mss, "segment {i} is not full and not the last");
        } else {
            assert!(chunk > 0, "an empty last segment");
        }
        assert_eq!(&s[h..], &frame[at..at + chunk], "segment {i}'s payload is not the frame's");
        // The Ethernet addresses are the frame's in every segment.
        assert_eq!(s.get(..12), frame.get(..12), "segment {i}'s addresses");
        at += chunk;
    }
    assert_eq!(at, frame.len(), "payload lost");
    Some(h)
}
