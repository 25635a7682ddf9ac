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
        let ipv6 = self.src_ip.is_ipv6();
        let hl = outer_headers_len(ipv6);
        if frame.len() < hl || self.dst_ip.is_ipv6() != ipv6 {
            return false;
        }
        let udp_len = frame.len() - hl + UDP_HEADER_LEN;
        let l3 = ETH_HEADER_LEN;
        let ip_len = if ipv6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
        if udp_len + if ipv6 { 0 } else { ip_len } > usize::from(u16::MAX) {
            return false;
        }
        frame[ETH_DST_OFFSET..ETH_DST_OFFSET + 6].copy_from_slice(&self.dst_mac.0);
        frame[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6].copy_from_slice(&self.src_mac.0);
        let udp = l3 + ip_len;
        let ethertype = if ipv6 { EtherType::IPV6 } else { EtherType::IPV4 };
        frame[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2].copy_from_slice(&ethertype.to_be_bytes());
        let ip = &mut frame[l3..udp];
        match (self.src_ip, self.dst_ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ip[..V4_TOTAL_LEN].copy_from_slice(&[0x45, 0]);
                ip[V4_TOTAL_LEN..V4_TOTAL_LEN + 2]
                    .copy_from_slice(&((udp_len + ip_len) as u16).to_be_bytes());
                // Identification 0 with DF: never fragmented (RFC 6864 section 4.1).
                ip[4..V4_FRAG + 2].copy_from_slice(&[0, 0, (V4_DF >> 8) as u8, 0]);
                ip[V4_TTL] = OUTER_TTL;
                ip[V4_PROTO] = PROTO_UDP;
                ip[V4_CSUM..V4_CSUM + 2].copy_from_slice(&[0, 0]);
                ip[V4_SRC..V4_SRC + 4].copy_from_slice(&s.octets());
                ip[V4_DST..V4_DST + 4].copy_from_slice(&d.octets());
                let c = !fold(ones_sum(ip, 0));
                ip[V4_CSUM..V4_CSUM + 2].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ip[..V6_PAYLOAD_LEN].copy_from_slice(&[0x60, 0, 0, 0]);
                ip[V6_PAYLOAD_LEN..V6_PAYLOAD_LEN + 2].copy_from_slice(&(udp_len as u16).to_be_bytes());
                ip[V6_NEXT] = PROTO_UDP;
                ip[V6_HOPS] = OUTER_TTL;
                ip[V6_SRC..V6_SRC + 16].copy_from_slice(&s.octets());
                ip[V6_DST..V6_DST + 16].copy_from_slice(&d.octets());
            }
            _ => return false,
        }
        let u = &mut frame[udp..];
        u[UDP_SPORT..UDP_SPORT + 2].copy_from_slice(&self.src_port.to_be_bytes());
        u[UDP_DPORT..UDP_DPORT + 2].copy_from_slice(&self.dst_port.to_be_bytes());
        u[UDP_LEN..UDP_LEN + 2].copy_from_slice(&(udp_len as u16).to_be_bytes());
        u[UDP_CSUM..UDP_CSUM + 2].copy_from_slice(&[0, 0]);
        if let (IpAddr::V6(s), IpAddr::V6(d)) = (self.src_ip, self.dst_ip) {
            let sum = ones_sum(u, pseudo_sum(&s.octets(), &d.octets(), udp_len));
            // Zero means "no checksum": a computed zero is sent as 0xffff (RFC 768).
            let c = match !fold(sum) {
                0 => 0xffff,
                c => c,
            };
            u[UDP_CSUM..UDP_CSUM + 2].copy_from_slice(&c.to_be_bytes());
        }
        true
    }
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
