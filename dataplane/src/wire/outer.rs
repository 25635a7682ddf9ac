//! The outer headers of a tunnel packet on an Ethernet uplink: Ethernet, IPv4 (no options
//! written; options skipped on receipt) or IPv6 (no extension headers), UDP.
//!
//! ```text
//! | Ethernet (14) | IPv4 (20) or IPv6 (40) | UDP (8) | VXLAN / Geneve | inner frame |
//! ```
//!
//! [`OuterPacket::new_checked`] checks every length, the IPv4 header checksum and the UDP
//! checksum (IPv4: only when not zero, RFC 768; IPv6: always, a zero checksum is refused,
//! RFC 8200 section 8.1) and refuses fragments; afterwards no accessor panics. The UDP payload
//! ends where the IP length says: Ethernet padding is not part of it.
//! [`OuterRepr::emit`] writes the headers in front of a payload already in place; the IPv4
//! UDP checksum is written as zero (RFC 7348 section 5 allows it, and the kernel's VXLAN
//! sends it so by default), the IPv6 one is computed.

use super::ethernet::{ETH_DST_OFFSET, ETH_SRC_OFFSET, ETH_TYPE_OFFSET};
pub use super::ip::{IPV4_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN};
use super::ip::{
    PROTO_UDP, UDP_CSUM, UDP_DPORT, UDP_LEN, UDP_SPORT, V4_CSUM, V4_DF, V4_DST, V4_FRAG, V4_MF_OFFSET,
    V4_PROTO, V4_SRC, V4_TOTAL_LEN, V4_TTL, V6_DST, V6_HOPS, V6_NEXT, V6_PAYLOAD_LEN, V6_SRC,
};
use super::offload::{fold, ones_sum};
use super::{EtherType, MacAddr, WireError, ETH_HEADER_LEN};
use std::net::IpAddr;

/// The hop limit / TTL written (the kernel's default).
pub const OUTER_TTL: u8 = 64;

/// Bytes in front of the UDP payload: Ethernet, IP and UDP headers.
pub fn outer_headers_len(ipv6: bool) -> usize {
    ETH_HEADER_LEN + if ipv6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN } + UDP_HEADER_LEN
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// The ones' complement sum of the IPv4/IPv6 pseudo-header of a UDP packet of `udp_len` bytes.
fn pseudo_sum(src: &[u8], dst: &[u8], udp_len: usize) -> u64 {
    ones_sum(dst, ones_sum(src, 0)) + udp_len as u64 + u64::from(PROTO_UDP)
}

/// A checked Ethernet/IP/UDP frame.
#[derive(Debug, Clone)]
pub struct OuterPacket<T: AsRef<[u8]>> {
    buffer: T,
    /// Where the UDP header starts.
    udp: usize,
    /// The UDP packet's length (header included), from the UDP header.
    udp_len: usize,
}

impl<T: AsRef<[u8]>> OuterPacket<T> {
    /// Checks an Ethernet frame carrying IPv4 or IPv6 with UDP, as described in the module
    /// documentation. Anything else (another EtherType, another protocol, IPv6 extension
    /// headers) is [`WireError::NotUdp`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < ETH_HEADER_LEN {
            return Err(WireError::TruncatedOuter(b.len()));
        }
        let l3 = ETH_HEADER_LEN;
        let (udp, ip_end, pseudo) = match be16(b, ETH_TYPE_OFFSET) {
            EtherType::IPV4 => {
                if b.len() < l3 + IPV4_HEADER_LEN {
                    return Err(WireError::TruncatedOuter(b.len()));
                }
                let ihl = usize::from(b[l3] & 0x0f) * 4;
                if b[l3] >> 4 != 4 || ihl < IPV4_HEADER_LEN || b.len() < l3 + ihl {
                    return Err(WireError::BadOuterIp);
                }
                let total = usize::from(be16(b, l3 + V4_TOTAL_LEN));
                if total < ihl || b.len() < l3 + total {
                    return Err(WireError::BadOuterIp);
                }
                if fold(ones_sum(&b[l3..l3 + ihl], 0)) != 0xffff {
                    return Err(WireError::OuterChecksum);
                }
                if b[l3 + V4_PROTO] != PROTO_UDP {
                    return Err(WireError::NotUdp);
                }
                if be16(b, l3 + V4_FRAG) & V4_MF_OFFSET != 0 {
                    return Err(WireError::OuterFragment);
                }
                (l3 + ihl, l3 + total, None)
            }
            EtherType::IPV6 => {
                if b.len() < l3 + IPV6_HEADER_LEN {
                    return Err(WireError::TruncatedOuter(b.len()));
                }
                if b[l3] >> 4 != 6 {
                    return Err(WireError::BadOuterIp);
                }
                let end = l3 + IPV6_HEADER_LEN + usize::from(be16(b, l3 + V6_PAYLOAD_LEN));
                if b.len() < end {
                    return Err(WireError::BadOuterIp);
                }
                if b[l3 + V6_NEXT] != PROTO_UDP {
                    return Err(WireError::NotUdp);
                }
                (l3 + IPV6_HEADER_LEN, end, Some(l3))
            }
            _ => return Err(WireError::NotUdp),
        };
        if ip_end < udp + UDP_HEADER_LEN {
            return Err(WireError::TruncatedOuter(ip_end));
        }
        let udp_len = usize::from(be16(b, udp + UDP_LEN));
        if udp_len < UDP_HEADER_LEN || udp + udp_len > ip_end {
            return Err(WireError::BadOuterUdp);
        }
        let csum = be16(b, udp + UDP_CSUM);
        let (src, dst) = match pseudo {
            Some(l3) => (&b[l3 + V6_SRC..l3 + V6_SRC + 16], &b[l3 + V6_DST..l3 + V6_DST + 16]),
            None => (&b[l3 + V4_SRC..l3 + V4_SRC + 4], &b[l3 + V4_DST..l3 + V4_DST + 4]),
        };
        if csum == 0 {
            if pseudo.is_some() {
                return Err(WireError::OuterChecksum);
            }
        } else if fold(ones_sum(&b[udp..udp + udp_len], pseudo_sum(src, dst, udp_len))) != 0xffff {
            return Err(WireError::OuterChecksum);
        }
        Ok(OuterPacket { buffer, udp, udp_len })
    }

    pub fn src_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6])
    }

    pub fn dst_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[ETH_DST_OFFSET..ETH_DST_OFFSET + 6])
    }

    fn ip(&self, v4: usize, v6: usize) -> IpAddr {
        let b = self.buffer.as_ref();
        let l3 = ETH_HEADER_LEN;
        if self.udp - l3 == IPV6_HEADER_LEN && be16(b, ETH_TYPE_OFFSET) == EtherType::IPV6 {
            let a: [u8; 16] = b[l3 + v6..l3 + v6 + 16].try_into().unwrap_or([0; 16]);
            IpAddr::from(a)
        } else {
            IpAddr::from([b[l3 + v4], b[l3 + v4 + 1], b[l3 + v4 + 2], b[l3 + v4 + 3]])
        }
    }

    pub fn src_ip(&self) -> IpAddr {
        self.ip(V4_SRC, V6_SRC)
    }

    pub fn dst_ip(&self) -> IpAddr {
        self.ip(V4_DST, V6_DST)
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), self.udp + UDP_SPORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), self.udp + UDP_DPORT)
    }

    /// Where the UDP payload starts in the frame.
    pub fn payload_offset(&self) -> usize {
        self.udp + UDP_HEADER_LEN
    }

    /// The UDP payload's length.
    pub fn payload_len(&self) -> usize {
        self.udp_len - UDP_HEADER_LEN
    }
}

/// The outer headers of one tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterRepr {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Source and destination: both IPv4 or both IPv6 (else nothing is written).
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl OuterRepr {
    /// Writes the headers into `frame[..outer_headers_len(ipv6)]`, the UDP payload being the
    /// rest of `frame`. Returns false (and writes nothing) when `frame` is shorter than the
    /// headers, the addresses are of two families, or the payload is too long for one IP
    /// packet.
    pub fn emit(&self, frame: &mut [u8]) -> bool {
        OuterTemplate::new(self).is_some_and(|t| t.write(frame, self.src_port))
    }
}

/// The longest outer headers: Ethernet, IPv6, UDP.
pub const MAX_OUTER_HEADERS_LEN: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN + UDP_HEADER_LEN;
const V4_HEADERS_LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;

/// The outer headers of an [`OuterRepr`] written once, for every packet to one endpoint
/// through one next hop: [`OuterTemplate::write`] copies them and fills in what differs per
/// packet -- the lengths, the UDP source port, the IPv4 header checksum (the template's sum
/// plus the total length, RFC 1624's incremental update from a header whose length and
/// checksum are zero) and the IPv6 UDP checksum (over the packet, from the pseudo-header's
/// sum kept in the template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterTemplate {
    /// The headers with zero lengths, source port and checksums.
    bytes: [u8; MAX_OUTER_HEADERS_LEN],
    ipv6: bool,
    /// IPv4: the ones' complement sum of the IP header as in `bytes`, folded to 16 bits;
    /// IPv6: the sum of the pseudo-header less the UDP length.
    sum: u64,
}

impl OuterTemplate {
    /// The template of `r`'s headers (its `src_port` is not part of it); `None` when its
    /// addresses are of two families.
    pub fn new(r: &OuterRepr) -> Option<OuterTemplate> {
        let mut bytes = [0u8; MAX_OUTER_HEADERS_LEN];
        bytes[ETH_DST_OFFSET..ETH_DST_OFFSET + 6].copy_from_slice(&r.dst_mac.0);
        bytes[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6].copy_from_slice(&r.src_mac.0);
        let l3 = ETH_HEADER_LEN;
        let (ethertype, ip_len, sum) = match (r.src_ip, r.dst_ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ip = &mut bytes[l3..l3 + IPV4_HEADER_LEN];
                ip[..V4_TOTAL_LEN].copy_from_slice(&[0x45, 0]);
                ip[V4_FRAG..V4_FRAG + 2].copy_from_slice(&V4_DF.to_be_bytes());
                ip[V4_TTL] = OUTER_TTL;
                ip[V4_PROTO] = PROTO_UDP;
                ip[V4_SRC..V4_SRC + 4].copy_from_slice(&s.octets());
                ip[V4_DST..V4_DST + 4].copy_from_slice(&d.octets());
                (EtherType::IPV4, IPV4_HEADER_LEN, u64::from(fold(ones_sum(ip, 0))))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = &mut bytes[l3..l3 + IPV6_HEADER_LEN];
                ip[..V6_PAYLOAD_LEN].copy_from_slice(&[0x60, 0, 0, 0]);
                ip[V6_NEXT] = PROTO_UDP;
                ip[V6_HOPS] = OUTER_TTL;
                ip[V6_SRC..V6_SRC + 16].copy_from_slice(&s.octets());
                ip[V6_DST..V6_DST + 16].copy_from_slice(&d.octets());
                (EtherType::IPV6, IPV6_HEADER_LEN, pseudo_sum(&s.octets(), &d.octets(), 0))
            }
            _ => return None,
        };
        bytes[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2].copy_from_slice(&ethertype.to_be_bytes());
        let udp = l3 + ip_len;
        bytes[udp + UDP_DPORT..udp + UDP_DPORT + 2].copy_from_slice(&r.dst_port.to_be_bytes());
        Some(OuterTemplate { bytes, ipv6: ethertype == EtherType::IPV6, sum })
    }

    /// The length of the headers ([`outer_headers_len`]).
    #[inline]
    pub fn headers_len(&self) -> usize {
        outer_headers_len(self.ipv6)
    }

    /// Writes the headers into `frame[..self.headers_len()]` with UDP source port
    /// `src_port`, the UDP payload being the rest of `frame`. Returns false (and writes
    /// nothing) when `frame` is shorter than the headers or the payload too long for one IP
    /// packet.
    #[inline]
    pub fn write(&self, frame: &mut [u8], src_port: u16) -> bool {
        if self.ipv6 {
            return self.write_v6(frame, src_port);
        }
        let total = frame.len().wrapping_sub(ETH_HEADER_LEN);
        let Some(h) = frame.first_chunk_mut::<V4_HEADERS_LEN>() else { return false };
        let Ok(total) = u16::try_from(total) else { return false };
        *h = *self.bytes.first_chunk::<V4_HEADERS_LEN>().unwrap_or(&[0; V4_HEADERS_LEN]);
        // `sum` of an IPv4 template is folded to 16 bits; `total` covers the IPv4 and UDP
        // headers at least, `h` being that long.
        write_v4_fields(h, self.sum as u32, total, src_port);
        true
    }

    /// The IPv4 template with `head`, the first 8 bytes of every UDP payload (a tunnel
    /// header), after the headers: [`HeadedV4`]. `None` for an IPv6 template.
    pub fn v4_headed(&self, head: [u8; PAYLOAD_HEAD_LEN]) -> Option<HeadedV4> {
        if self.ipv6 {
            return None;
        }
        let mut bytes = [0u8; V4_HEADED_LEN];
        bytes[..V4_HEADERS_LEN].copy_from_slice(&self.bytes[..V4_HEADERS_LEN]);
        bytes[V4_HEADERS_LEN..].copy_from_slice(&head);
        // `sum` of an IPv4 template is folded to 16 bits.
        Some(HeadedV4 { bytes, sum: self.sum as u32 })
    }

    fn write_v6(&self, frame: &mut [u8], src_port: u16) -> bool {
        let udp = ETH_HEADER_LEN + IPV6_HEADER_LEN;
        let Some(Ok(udp_len)) = frame.len().checked_sub(udp).map(u16::try_from) else { return false };
        if usize::from(udp_len) < UDP_HEADER_LEN {
            return false;
        }
        frame[..MAX_OUTER_HEADERS_LEN].copy_from_slice(&self.bytes);
        let l3 = ETH_HEADER_LEN;
        frame[l3 + V6_PAYLOAD_LEN..l3 + V6_PAYLOAD_LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
        let u = &mut frame[udp..];
        u[UDP_SPORT..UDP_SPORT + 2].copy_from_slice(&src_port.to_be_bytes());
        u[UDP_LEN..UDP_LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
        // The checksum field is zero (the template's) while the sum runs.
        let c = match !fold(ones_sum(u, self.sum + u64::from(udp_len))) {
            0 => 0xffff,
            c => c,
        };
        u[UDP_CSUM..UDP_CSUM + 2].copy_from_slice(&c.to_be_bytes());
        true
    }
}

/// The bytes of a UDP payload a [`HeadedV4`] holds: a VXLAN or Geneve header.
pub const PAYLOAD_HEAD_LEN: usize = 8;
/// What [`HeadedV4::write`] puts in front of a frame: Ethernet, IPv4 and UDP headers and the
/// payload's first [`PAYLOAD_HEAD_LEN`] bytes (50).
pub const V4_HEADED_LEN: usize = V4_HEADERS_LEN + PAYLOAD_HEAD_LEN;

/// An IPv4 [`OuterTemplate`] followed by the first bytes of every payload (a tunnel header):
/// the whole of what goes in front of an inner frame, written with one copy of
/// [`V4_HEADED_LEN`] bytes and four 16-bit fields (IP total length, IP header checksum, UDP
/// source port, UDP length). The IPv4 UDP checksum stays zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadedV4 {
    /// The template's headers, then the payload's first bytes.
    bytes: [u8; V4_HEADED_LEN],
    /// The template's IP header sum (folded to 16 bits).
    sum: u32,
}

impl HeadedV4 {
    /// Writes the headers and the payload's first bytes into `h`, the front of a packet whose
    /// rest (after `h`) is `rest` bytes long, with UDP source port `src_port`. Returns false
    /// (and writes nothing) when the packet is too long for one IP packet.
    #[inline(always)]
    pub fn write(&self, h: &mut [u8; V4_HEADED_LEN], rest: u16, src_port: u16) -> bool {
        const IP_AND_AFTER: u16 = (V4_HEADED_LEN - ETH_HEADER_LEN) as u16;
        let Some(total) = rest.checked_add(IP_AND_AFTER) else { return false };
        *h = self.bytes;
        write_v4_fields(h, self.sum, total, src_port);
        true
    }
}

/// Fills the four per-packet fields of IPv4 template headers copied into the front of `h`
/// (at least the [`V4_HEADERS_LEN`] bytes of the headers, checked when compiled): the IP total
/// length `total` (at least the IPv4 and UDP headers' 28 bytes), the IP header checksum from
/// `sum` (the template's header sum with its length and checksum zero, folded to 16 bits), the
/// UDP source port `src_port` and the UDP length.
#[inline(always)]
fn write_v4_fields<const N: usize>(h: &mut [u8; N], sum: u32, total: u16, src_port: u16) {
    const { assert!(N >= V4_HEADERS_LEN) };
    let (l3, udp) = (ETH_HEADER_LEN, ETH_HEADER_LEN + IPV4_HEADER_LEN);
    h[l3 + V4_TOTAL_LEN..l3 + V4_TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
    // Both the sum and the total length are at most 0xffff: one end-around carry folds
    // theirs (RFC 1624's update of a header whose length and checksum were zero).
    let s = sum + u32::from(total);
    let c = !(((s & 0xffff) + (s >> 16)) as u16);
    h[l3 + V4_CSUM..l3 + V4_CSUM + 2].copy_from_slice(&c.to_be_bytes());
    h[udp + UDP_SPORT..udp + UDP_SPORT + 2].copy_from_slice(&src_port.to_be_bytes());
    let udp_len = total.wrapping_sub(IPV4_HEADER_LEN as u16);
    h[udp + UDP_LEN..udp + UDP_LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn repr(v6: bool) -> OuterRepr {
        let (s, d): (IpAddr, IpAddr) = if v6 {
            ("fd00::1".parse::<Ipv6Addr>().unwrap().into(), "fd00::2".parse::<Ipv6Addr>().unwrap().into())
        } else {
            (Ipv4Addr::new(192, 0, 2, 1).into(), Ipv4Addr::new(192, 0, 2, 2).into())
        };
        OuterRepr {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: s,
            dst_ip: d,
            src_port: 50000,
            dst_port: 4789,
        }
    }

    fn built(v6: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; outer_headers_len(v6)];
        f.extend_from_slice(payload);
        assert!(repr(v6).emit(&mut f));
        f
    }

    #[test]
    fn ipv4_headers_as_the_rfcs_write_them() {
        let f = built(false, b"abcdefgh");
        // Written out by hand: Ethernet, IPv4 (len 36, DF, TTL 64, UDP, checksum), UDP.
        #[rustfmt::skip]
        let want = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00,
            0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0xb6, 0xc5, 192, 0, 2, 1, 192, 0, 2, 2,
            0xc3, 0x50, 0x12, 0xb5, 0, 16, 0, 0,
        ];
        assert_eq!(&f[..42], &want[..]);
        let p = OuterPacket::new_checked(&f[..]).unwrap();
        assert_eq!((p.payload_offset(), p.payload_len()), (42, 8));
        assert_eq!((p.src_port(), p.dst_port()), (50000, 4789));
        assert_eq!((p.src_ip(), p.dst_ip()), (repr(false).src_ip, repr(false).dst_ip));
        assert_eq!(p.src_mac(), MacAddr([2, 0, 0, 0, 0, 1]));
        // Ethernet padding after the IP packet is not payload.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(OuterPacket::new_checked(&padded[..]).unwrap().payload_len(), 8);
    }

    /// One template written in front of payloads of every length up to 300 bytes, with
    /// several source ports: each packet as the receive check reads it (lengths, both
    /// checksums: RFC 1624's incremental IPv4 sum agrees with the full one); the longest
    /// payload one IP packet holds is written, one byte more refused.
    #[test]
    fn one_template_writes_every_length_and_port() {
        for v6 in [false, true] {
            let t = OuterTemplate::new(&repr(v6)).expect("one family");
            let hl = outer_headers_len(v6);
            assert_eq!(t.headers_len(), hl);
            for len in 0..300usize {
                for sport in [49152u16, 50000, 65535] {
                    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                    let mut f = vec![0xeeu8; hl];
                    f.extend_from_slice(&payload);
                    assert!(t.write(&mut f, sport), "len {len}");
                    let p = OuterPacket::new_checked(&f[..]).expect("checks pass");
                    assert_eq!((p.payload_offset(), p.payload_len(), p.src_port()), (hl, len, sport));
                    assert_eq!(&f[hl..], &payload[..]);
                }
            }
            let mut short = vec![0u8; hl - 1];
            assert!(!t.write(&mut short, 50000));
            // IPv4: the total length (IP header included) fits 16 bits; IPv6: the UDP length.
            let longest = ETH_HEADER_LEN + if v6 { IPV6_HEADER_LEN } else { 0 } + usize::from(u16::MAX);
            let mut long = vec![0u8; longest];
            assert!(t.write(&mut long, 50000));
            assert!(OuterPacket::new_checked(&long[..]).is_ok());
            long.push(0);
            assert!(!t.write(&mut long, 50000));
        }
        assert!(OuterTemplate::new(&OuterRepr { dst_ip: repr(true).dst_ip, ..repr(false) }).is_none());
    }

    /// The headed template writes what the template writes, then its head; for every length
    /// up to 300 bytes and several source ports, up to the longest IP packet (one byte more
    /// refused, nothing written); an IPv6 template has none.
    #[test]
    fn headed_v4_is_the_template_then_the_head() {
        let t = OuterTemplate::new(&repr(false)).expect("one family");
        let head = [0x08, 0, 0, 0, 0, 0x13, 0x89, 0];
        let h = t.v4_headed(head).expect("IPv4");
        for rest in (0..300u16).chain([u16::MAX - 36]) {
            for sport in [49152u16, 50000, 65535] {
                let mut want = vec![0u8; V4_HEADERS_LEN];
                want.extend_from_slice(&head);
                want.resize(V4_HEADED_LEN + usize::from(rest), 0x5a);
                assert!(t.write(&mut want, sport));
                let mut got = want.clone();
                got[..V4_HEADED_LEN].fill(0xee);
                let front = got.first_chunk_mut::<V4_HEADED_LEN>().expect("long enough");
                assert!(h.write(front, rest, sport), "rest {rest}");
                assert_eq!(got, want, "rest {rest} sport {sport}");
                let p = OuterPacket::new_checked(&got[..]).expect("checks pass");
                assert_eq!((p.payload_len(), p.src_port()), (usize::from(rest) + 8, sport));
            }
        }
        let mut front = [0xeeu8; V4_HEADED_LEN];
        assert!(!h.write(&mut front, u16::MAX - 35, 50000));
        assert_eq!(front, [0xee; V4_HEADED_LEN], "nothing written");
        assert!(OuterTemplate::new(&repr(true)).expect("one family").v4_headed(head).is_none());
    }

    #[test]
    fn ipv6_udp_checksum_is_computed_and_checked() {
        let f = built(true, b"abcdefgh");
        assert_eq!(f.len(), 62 + 8);
        assert_ne!(&f[60..62], &[0, 0]);
        let p = OuterPacket::new_checked(&f[..]).unwrap();
        assert_eq!((p.payload_offset(), p.payload_len()), (62, 8));
        assert_eq!(p.dst_ip(), repr(true).dst_ip);
        let mut bad = f.clone();
        bad[65] ^= 1;
        assert_eq!(OuterPacket::new_checked(&bad[..]).unwrap_err(), WireError::OuterChecksum);
        let mut zero = f.clone();
        zero[60..62].copy_from_slice(&[0, 0]);
        assert_eq!(OuterPacket::new_checked(&zero[..]).unwrap_err(), WireError::OuterChecksum);
    }

    #[test]
    fn malformed_outer_headers_are_errors() {
        let f = built(false, b"abcdefgh");
        for n in 0..42 {
            assert!(OuterPacket::new_checked(&f[..n]).is_err(), "len {n}");
        }
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        let c = !fold(ones_sum(
            &{
                let mut h = frag[14..34].to_vec();
                h[10..12].copy_from_slice(&[0, 0]);
                h
            },
            0,
        ));
        frag[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(OuterPacket::new_checked(&frag[..]).unwrap_err(), WireError::OuterFragment);
        let mut csum = f.clone();
        csum[22] = 63;
        assert_eq!(OuterPacket::new_checked(&csum[..]).unwrap_err(), WireError::OuterChecksum);
        let mut udp_long = f.clone();
        udp_long[39] = 17;
        assert_eq!(OuterPacket::new_checked(&udp_long[..]).unwrap_err(), WireError::BadOuterUdp);
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(OuterPacket::new_checked(&arp[..]).unwrap_err(), WireError::NotUdp);
        // A non-zero IPv4 UDP checksum is checked.
        let mut sum = f.clone();
        sum[40..42].copy_from_slice(&[0x12, 0x34]);
        assert_eq!(OuterPacket::new_checked(&sum[..]).unwrap_err(), WireError::OuterChecksum);
        assert!(!OuterRepr { dst_ip: repr(true).dst_ip, ..repr(false) }.emit(&mut [0u8; 64]));
        assert!(!repr(false).emit(&mut [0u8; 41]));
    }
}
