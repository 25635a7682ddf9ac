//! The fast path's underlay, apart from any port: what a tunnel port carried on an Ethernet
//! uplink (AF_PACKET, DPDK) does with the frames of that uplink, and how it finds the MAC
//! address of a remote tunnel endpoint.
//!
//! - [`classify`] sorts an uplink frame into a tunnel packet for this endpoint (local IP and
//!   UDP port), an ARP or Neighbour Discovery message about the local address or a known
//!   endpoint, or something else -- never panicking, whatever the bytes.
//! - [`Neighbours`] holds one MAC per next hop (by slot: the uplink's tunnel ports give each
//!   endpoint or gateway address one), read without a lock by TX, written by RX when an ARP
//!   reply, a Neighbour Advertisement or a request about the local address confirms it (as
//!   OVS's tunnel neighbour cache, which snoops ARP/ND only). A tunnel packet never overwrites
//!   a binding: it gives an unresolved slot its source MAC, unconfirmed, and makes a binding
//!   to another MAC unconfirmed ([`Neighbours::seen`]); either is probed at the next round
//!   and the answer decides. A binding not confirmed for [`REACHABLE_S`] is still used but
//!   probed again (as the kernel's STALE state); an endpoint without a binding is probed at
//!   most once a second ([`PROBE_INTERVAL_S`]) and frames to it are dropped
//!   (`tunnel_unresolved`), not held.
//! - [`arp_frame`] and [`nd_frame`] write the requests and replies (ARP, RFC 826; Neighbour
//!   Solicitation/Advertisement, RFC 4861) into a fixed array.
//!
//! - [`Routes`] picks each endpoint's next hop: the gateway of the longest route that holds
//!   it (the tunnel port's `routes`, and for an AF_PACKET uplink the kernel's routes through
//!   the uplink's interface, [`Routes::from_proc`]), or the endpoint itself when no route
//!   with a gateway holds it (on the link). A gateway is resolved like an endpoint, in a slot
//!   of its own, shared by every endpoint behind it (an uplink has slots for
//!   [`crate::tunnel::MAX_ENDPOINTS`] plus [`MAX_GATEWAYS`] addresses).

use crate::policy::Cidr;
use crate::tunnel::{TunnelCodec, PLAIN_HEADER_LEN};
use crate::wire::arp::{ArpPacket, ArpRepr, ARP_ETH_IPV4_LEN};
use crate::wire::ip::{PROTO_ICMPV6, V6_DST, V6_HOPS, V6_NEXT, V6_PAYLOAD_LEN, V6_SRC};
use crate::wire::offload::{fold, ones_sum};
use crate::wire::outer::{OuterPacket, IPV6_HEADER_LEN};
use crate::wire::{
    EtherType, MacAddr, WireError, ETH_HEADER_LEN, ETH_SRC_OFFSET, ETH_TYPE_OFFSET, MAC_ADDRS_LEN,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A binding not confirmed for this long (seconds) is probed again.
pub const REACHABLE_S: u32 = 30;
/// Probes for one endpoint at most this often (seconds).
pub const PROBE_INTERVAL_S: u32 = 1;
/// The longest frame [`arp_frame`] or [`nd_frame`] writes.
pub const CONTROL_FRAME_LEN: usize = ETH_HEADER_LEN + IPV6_HEADER_LEN + nd::LEN;

/// Neighbour discovery messages as this module writes and reads them (RFC 4861).
mod nd {
    use core::ops::Range;
    pub const SOLICIT: u8 = 135;
    pub const ADVERT: u8 = 136;
    /// An NS/NA with one link-layer address option: type, code, checksum, 4 bytes of flags
    /// or reserved, the target (16), the option (8).
    pub const LEN: usize = 32;
    pub const TARGET: Range<usize> = 8..24;
    pub const OPTIONS: usize = 24;
    pub const OPT_SOURCE_LLA: u8 = 1;
    pub const OPT_TARGET_LLA: u8 = 2;
    /// NA flags: Solicited, Override.
    pub const FLAGS_SOLICITED_OVERRIDE: u8 = 0x60;
    pub const HOP_LIMIT: u8 = 255;
}
/// Ethernet's minimum frame (without FCS): ARP frames are padded to it.
const ETH_MIN_FRAME: usize = 60;

/// What an uplink frame is to a tunnel endpoint at `local`:`port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkFrame {
    /// A UDP datagram to the local address and port: the tunnel header starts at `payload`
    /// and the datagram is `len` bytes long.
    Tunnel { payload: usize, len: usize, src_ip: IpAddr, src_mac: MacAddr },
    /// `ip` is at `mac` (an ARP request or reply, a Neighbour Solicitation or Advertisement);
    /// `answer`: it asked for the local address, and a reply is due.
    Neighbour { ip: IpAddr, mac: MacAddr, answer: bool },
    /// A frame that is neither: another address, protocol or port, ARP or ND about others.
    NotOurs,
    /// IP/UDP to the local address and port but malformed (length, checksum, fragment).
    Malformed,
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Sorts an uplink frame (see [`UplinkFrame`]).
#[inline]
pub fn classify(frame: &[u8], local: IpAddr, port: u16) -> UplinkFrame {
    if let IpAddr::V4(l) = local {
        if let Some(t) = plain_ipv4_tunnel(frame, l, port) {
            return t;
        }
    }
    classify_full(frame, local, port)
}

/// [`classify`] of any frame, every header checked through the wire views.
#[inline(never)]
fn classify_full(frame: &[u8], local: IpAddr, port: u16) -> UplinkFrame {
    match (be16(frame, ETH_TYPE_OFFSET), local) {
        (Some(EtherType::ARP), IpAddr::V4(l)) => classify_arp(frame, l),
        (Some(EtherType::IPV6), IpAddr::V6(l))
            if frame.get(ETH_HEADER_LEN + V6_NEXT) == Some(&PROTO_ICMPV6) =>
        {
            classify_nd(frame, l)
        }
        (Some(EtherType::IPV4), IpAddr::V4(_)) | (Some(EtherType::IPV6), IpAddr::V6(_)) => {
            match OuterPacket::new_checked(frame) {
                Ok(p) if p.dst_ip() == local && p.dst_port() == port => UplinkFrame::Tunnel {
                    payload: p.payload_offset(),
                    len: p.payload_len(),
                    src_ip: p.src_ip(),
                    src_mac: p.src_mac(),
                },
                Ok(_) | Err(WireError::NotUdp) => UplinkFrame::NotOurs,
                Err(_) if !addressed_to(frame, local) => UplinkFrame::NotOurs,
                Err(_) => UplinkFrame::Malformed,
            }
        }
        _ => UplinkFrame::NotOurs,
    }
}

/// Where the headers of [`plain_ipv4_tunnel`]'s packets lie (IPv4 without options).
mod plain_v4 {
    use crate::wire::ip::{IPV4_HEADER_LEN, UDP_HEADER_LEN};
    use crate::wire::ETH_HEADER_LEN;
    pub const IP: usize = ETH_HEADER_LEN;
    pub const UDP: usize = IP + IPV4_HEADER_LEN;
    pub const PAYLOAD: usize = UDP + UDP_HEADER_LEN;
    /// Version 4, a 20-byte header.
    pub const VER_IHL: u8 = 0x45;

    /// The source address of the headers.
    #[inline(always)]
    pub fn src_ip(h: &[u8; PAYLOAD]) -> std::net::Ipv4Addr {
        use crate::wire::ip::V4_SRC;
        std::net::Ipv4Addr::new(h[IP + V4_SRC], h[IP + V4_SRC + 1], h[IP + V4_SRC + 2], h[IP + V4_SRC + 3])
    }
}

/// The common tunnel packet, decided with fixed offsets: IPv4 without options, not a
/// fragment, a correct header checksum, UDP to `local`:`port` with a zero checksum, the
/// lengths consistent. `None` for anything else, which [`classify`] then checks in full;
/// whenever it answers, the answer is the full check's (the test
/// `plain_ipv4_is_classified_as_in_full`).
#[inline]
fn plain_ipv4_tunnel(frame: &[u8], local: Ipv4Addr, port: u16) -> Option<UplinkFrame> {
    use plain_v4::{PAYLOAD, UDP};
    let (h, udp_len) = plain_ipv4_udp(frame, local, port)?;
    Some(UplinkFrame::Tunnel {
        payload: PAYLOAD,
        len: udp_len - (PAYLOAD - UDP),
        src_ip: IpAddr::V4(plain_v4::src_ip(h)),
        src_mac: MacAddr::from_bytes(&h[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6]),
    })
}

/// [`plain_ipv4_tunnel`]'s checks: the headers and the UDP length (header included) of a
/// packet that passes them.
#[inline(always)]
fn plain_ipv4_udp(frame: &[u8], local: Ipv4Addr, port: u16) -> Option<(&[u8; plain_v4::PAYLOAD], usize)> {
    use crate::wire::ip::{
        PROTO_UDP, UDP_CSUM, UDP_DPORT, UDP_LEN, V4_DST, V4_FRAG, V4_MF_OFFSET, V4_PROTO, V4_TOTAL_LEN,
    };
    use plain_v4::{IP, PAYLOAD, UDP, VER_IHL};
    let h = frame.first_chunk::<PAYLOAD>()?;
    let at = |off: usize| u16::from_be_bytes([h[off], h[off + 1]]);
    let total = usize::from(at(IP + V4_TOTAL_LEN));
    let udp_len = usize::from(at(UDP + UDP_LEN));
    let plain = at(ETH_TYPE_OFFSET) == EtherType::IPV4
        && h[IP] == VER_IHL
        && h[IP + V4_PROTO] == PROTO_UDP
        && at(IP + V4_FRAG) & V4_MF_OFFSET == 0
        && h[IP + V4_DST..IP + V4_DST + 4] == local.octets()
        && at(UDP + UDP_DPORT) == port
        && at(UDP + UDP_CSUM) == 0
        && udp_len >= PAYLOAD - UDP
        && UDP + udp_len <= IP + total
        && IP + total <= frame.len()
        && header_sum_ok(h);
    plain.then_some((h, udp_len))
}

/// Where the inner frame of a [`plain_ipv4_inner`] packet starts: behind the outer headers
/// and the 8-byte tunnel header.
pub const PLAIN_INNER_AT: usize = plain_v4::PAYLOAD + PLAIN_HEADER_LEN;

/// A tunnel packet whose inner frame [`plain_ipv4_inner`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainInner {
    /// The outer source address and MAC.
    pub src_ip: Ipv4Addr,
    pub src_mac: MacAddr,
    /// The inner frame's length, from [`PLAIN_INNER_AT`] on.
    pub len: usize,
}

/// The common tunnel packet and its inner frame at once: a packet that the fixed-offset
/// check of [`classify`] takes, whose datagram `codec` decapsulates with its one compare
/// (an 8-byte header, [`TunnelCodec::decap`] answering 8). Whenever it answers, [`classify`]
/// and [`TunnelCodec::decap`] give the same inner frame and source (the test
/// `plain_ipv4_inner_is_classify_and_decap`); `None`: ask them.
#[inline]
pub fn plain_ipv4_inner(frame: &[u8], local: Ipv4Addr, port: u16, codec: &TunnelCodec) -> Option<PlainInner> {
    use plain_v4::{PAYLOAD, UDP};
    let (h, udp_len) = plain_ipv4_udp(frame, local, port)?;
    // In the frame: plain_ipv4_udp checked UDP + udp_len <= IP + total <= frame.len().
    let datagram = frame.get(PAYLOAD..UDP + udp_len)?;
    codec.is_plain(datagram).then(|| PlainInner {
        src_ip: plain_v4::src_ip(h),
        src_mac: MacAddr::from_bytes(&h[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6]),
        len: datagram.len() - PLAIN_HEADER_LEN,
    })
}

/// Whether the IPv4 header at [`plain_v4::IP`] (20 bytes) has a correct checksum: its ones'
/// complement sum is 0xffff. The sum is taken over five 32-bit words in the machine's byte
/// order (RFC 1071 2.(B) and (C): the ones' complement sum does not depend on byte order, and
/// 32-bit words add as pairs of 16-bit ones once the carries are folded back); five words sum
/// to less than 2^35, which three folds bring to 16 bits, and 0xffff reads the same either way.
#[inline(always)]
fn header_sum_ok(h: &[u8; plain_v4::PAYLOAD]) -> bool {
    let w = |k: usize| u64::from(u32::from_ne_bytes([h[k], h[k + 1], h[k + 2], h[k + 3]]));
    let at = plain_v4::IP;
    let sum = w(at) + w(at + 4) + w(at + 8) + w(at + 12) + w(at + 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16) == 0xffff
}

/// Whether an IP frame's destination address (where it can be read) is `local`.
fn addressed_to(frame: &[u8], local: IpAddr) -> bool {
    let l3 = ETH_HEADER_LEN;
    match local {
        IpAddr::V4(l) => frame.get(l3 + 16..l3 + 20) == Some(&l.octets()[..]),
        IpAddr::V6(l) => frame.get(l3 + V6_DST..l3 + V6_DST + 16) == Some(&l.octets()[..]),
    }
}

fn classify_arp(frame: &[u8], local: Ipv4Addr) -> UplinkFrame {
    let Some(r) = ArpPacket::new_checked(&frame[ETH_HEADER_LEN..]).ok().and_then(|p| ArpRepr::parse(&p))
    else {
        return UplinkFrame::NotOurs;
    };
    if r.sha.is_multicast() || r.sha.is_zero() || r.spa.is_unspecified() || r.spa == local {
        return UplinkFrame::NotOurs;
    }
    let for_us = r.tpa == local;
    // A request or reply to us binds its sender; so does a gratuitous ARP (sender = target),
    // which the caller takes only for an endpoint it knows.
    if for_us || r.spa == r.tpa {
        UplinkFrame::Neighbour {
            ip: IpAddr::V4(r.spa),
            mac: r.sha,
            answer: for_us && r.operation == ArpRepr::REQUEST,
        }
    } else {
        UplinkFrame::NotOurs
    }
}

fn classify_nd(frame: &[u8], local: Ipv6Addr) -> UplinkFrame {
    let l3 = ETH_HEADER_LEN;
    let ip = match frame.get(l3..l3 + IPV6_HEADER_LEN) {
        Some(ip) => ip,
        None => return UplinkFrame::NotOurs,
    };
    let plen = usize::from(u16::from_be_bytes([ip[V6_PAYLOAD_LEN], ip[V6_PAYLOAD_LEN + 1]]));
    let Some(icmp) = frame.get(l3 + IPV6_HEADER_LEN..l3 + IPV6_HEADER_LEN + plen) else {
        return UplinkFrame::NotOurs;
    };
    // RFC 4861 section 7.1: hop limit 255 (not forwarded), a valid checksum, 24 bytes at least.
    if ip[V6_HOPS] != nd::HOP_LIMIT
        || icmp.len() < nd::OPTIONS
        || !matches!(icmp[0], nd::SOLICIT | nd::ADVERT)
    {
        return UplinkFrame::NotOurs;
    }
    let sum =
        ones_sum(icmp, ones_sum(&ip[V6_SRC..V6_DST + 16], 0) + icmp.len() as u64 + u64::from(PROTO_ICMPV6));
    if fold(sum) != 0xffff {
        return UplinkFrame::NotOurs;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[V6_SRC..V6_SRC + 16]).unwrap_or([0; 16]));
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[nd::TARGET]).unwrap_or([0; 16]));
    let want = if icmp[0] == nd::SOLICIT { nd::OPT_SOURCE_LLA } else { nd::OPT_TARGET_LLA };
    let mut opts = &icmp[nd::OPTIONS..];
    let mut lla = None;
    while let [ty, len, ..] = *opts {
        let n = usize::from(len) * 8;
        if n == 0 || n > opts.len() {
            return UplinkFrame::NotOurs;
        }
        if ty == want && n >= 8 {
            lla = Some(MacAddr::from_bytes(&opts[2..8]));
        }
        opts = &opts[n..];
    }
    let Some(mac) = lla.filter(|m| !m.is_multicast() && !m.is_zero()) else {
        return UplinkFrame::NotOurs;
    };
    if icmp[0] == nd::SOLICIT {
        // A solicitation for the local address binds its sender (duplicate address
        // detection, from ::, carries no source option and binds nothing).
        if target == local && !src.is_unspecified() && src != local {
            return UplinkFrame::Neighbour { ip: IpAddr::V6(src), mac, answer: true };
        }
        UplinkFrame::NotOurs
    } else if target != local {
        UplinkFrame::Neighbour { ip: IpAddr::V6(target), mac, answer: false }
    } else {
        UplinkFrame::NotOurs
    }
}

/// Writes into `out` an ARP request (`to` = `None`: broadcast, asking for `target`) or a
/// reply to `to`; returns the frame's length (padded to 60 bytes).
pub fn arp_frame(
    out: &mut [u8; CONTROL_FRAME_LEN],
    mac: MacAddr,
    ip: Ipv4Addr,
    target: Ipv4Addr,
    to: Option<MacAddr>,
) -> usize {
    let (dst, op, tha) = match to {
        Some(m) => (m, ArpRepr::REPLY, m),
        None => (MacAddr::BROADCAST, ArpRepr::REQUEST, MacAddr::ZERO),
    };
    out.fill(0);
    out[..ETH_SRC_OFFSET].copy_from_slice(&dst.0);
    out[ETH_SRC_OFFSET..MAC_ADDRS_LEN].copy_from_slice(&mac.0);
    out[ETH_TYPE_OFFSET..ETH_HEADER_LEN].copy_from_slice(&EtherType::ARP.to_be_bytes());
    ArpRepr { operation: op, sha: mac, spa: ip, tha, tpa: target }.emit_into(&mut out[ETH_HEADER_LEN..]);
    const { assert!(ETH_HEADER_LEN + ARP_ETH_IPV4_LEN <= ETH_MIN_FRAME) };
    ETH_MIN_FRAME
}

/// Writes into `out` a Neighbour Solicitation for `target` (`to` = `None`: to its
/// solicited-node multicast address) or a solicited Advertisement of `ip` to `to` =
/// (address, MAC); returns the frame's length.
pub fn nd_frame(
    out: &mut [u8; CONTROL_FRAME_LEN],
    mac: MacAddr,
    ip: Ipv6Addr,
    target: Ipv6Addr,
    to: Option<(Ipv6Addr, MacAddr)>,
) -> usize {
    let t = target.octets();
    let (dst_ip, dst_mac, ty, flags, opt, tgt) = match to {
        Some((a, m)) => (a, m, nd::ADVERT, nd::FLAGS_SOLICITED_OVERRIDE, nd::OPT_TARGET_LLA, ip),
        None => {
            let solicited = Ipv6Addr::new(
                0xff02,
                0,
                0,
                0,
                0,
                1,
                0xff00 | u16::from(t[13]),
                u16::from_be_bytes([t[14], t[15]]),
            );
            (
                solicited,
                MacAddr([0x33, 0x33, 0xff, t[13], t[14], t[15]]),
                nd::SOLICIT,
                0,
                nd::OPT_SOURCE_LLA,
                target,
            )
        }
    };
    out.fill(0);
    out[..ETH_SRC_OFFSET].copy_from_slice(&dst_mac.0);
    out[ETH_SRC_OFFSET..MAC_ADDRS_LEN].copy_from_slice(&mac.0);
    out[ETH_TYPE_OFFSET..ETH_HEADER_LEN].copy_from_slice(&EtherType::IPV6.to_be_bytes());
    let l3 = ETH_HEADER_LEN;
    let ipv6 = &mut out[l3..l3 + IPV6_HEADER_LEN];
    ipv6[0] = 0x60;
    ipv6[V6_PAYLOAD_LEN..V6_PAYLOAD_LEN + 2].copy_from_slice(&(nd::LEN as u16).to_be_bytes());
    ipv6[V6_NEXT] = PROTO_ICMPV6;
    ipv6[V6_HOPS] = nd::HOP_LIMIT;
    ipv6[V6_SRC..V6_SRC + 16].copy_from_slice(&ip.octets());
    ipv6[V6_DST..V6_DST + 16].copy_from_slice(&dst_ip.octets());
    let icmp = &mut out[l3 + IPV6_HEADER_LEN..];
    icmp[0] = ty;
    icmp[4] = flags;
    icmp[nd::TARGET].copy_from_slice(&tgt.octets());
    icmp[nd::OPTIONS] = opt;
    icmp[nd::OPTIONS + 1] = 1;
    icmp[nd::OPTIONS + 2..nd::OPTIONS + 8].copy_from_slice(&mac.0);
    let sum = ones_sum(
        &icmp[..nd::LEN],
        ones_sum(&ip.octets(), ones_sum(&dst_ip.octets(), 0)) + nd::LEN as u64 + u64::from(PROTO_ICMPV6),
    );
    icmp[2..4].copy_from_slice(&(!fold(sum)).to_be_bytes());
    CONTROL_FRAME_LEN
}

/// Room for gateways in an uplink's neighbour table, beyond one slot per endpoint.
pub const MAX_GATEWAYS: usize = 16;

/// A route of the underlay: endpoints in `dst` are reached through `via` (`None`: on the
/// link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub via: Option<IpAddr>,
}

/// `RTF_GATEWAY` of the kernel's route flags (/proc/net/route, /proc/net/ipv6_route).
const RTF_GATEWAY: u32 = 0x2;
/// `RTF_UP`.
const RTF_UP: u32 = 0x1;

/// Routes, looked up by longest prefix (the first given wins among equally long ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// The table of `routes`.
    pub fn new(mut routes: Vec<Route>) -> Routes {
        // Stable: among routes of one length, the order given stays.
        routes.sort_by_key(|r| std::cmp::Reverse(r.dst.len));
        Routes(routes)
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.0
    }

    /// The next hop towards `ip`: the gateway of the longest route holding it, or `ip` itself
    /// (on the link: a route without gateway holds it, or none does).
    pub fn next_hop(&self, ip: IpAddr) -> IpAddr {
        self.0.iter().find(|r| r.dst.contains(ip)).and_then(|r| r.via).unwrap_or(ip)
    }

    /// The kernel's routes out of interface `iface`, from the text of `/proc/net/route` (`v4`)
    /// and `/proc/net/ipv6_route` (`v6`); lines that do not parse, are down or belong to
    /// other interfaces are left out.
    pub fn from_proc(iface: &str, v4: &str, v6: &str) -> Routes {
        let hex32 = |s: &str| u32::from_str_radix(s, 16).ok();
        let mut routes = Vec::new();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...: addresses as the
        // kernel's network-order words printed in host order.
        for l in v4.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (Some(&dev), Some(dst), Some(gw), Some(flags), Some(mask)) = (
                f.first(),
                f.get(1).and_then(|s| hex32(s)),
                f.get(2).and_then(|s| hex32(s)),
                f.get(3).and_then(|s| hex32(s)),
                f.get(7).and_then(|s| hex32(s)),
            ) else {
                continue;
            };
            let mask = u32::from_be_bytes(mask.to_ne_bytes());
            if dev != iface || flags & RTF_UP == 0 || mask.leading_ones() != mask.count_ones() {
                continue;
            }
            let via = (flags & RTF_GATEWAY != 0).then(|| IpAddr::V4(Ipv4Addr::from(gw.to_ne_bytes())));
            let dst =
                Cidr { addr: IpAddr::V4(Ipv4Addr::from(dst.to_ne_bytes())), len: mask.count_ones() as u8 };
            routes.push(Route { dst, via });
        }
        // dst(32 hex) dst_len src src_len gateway(32 hex) metric refcnt use flags dev.
        for l in v6.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let v6addr =
                |s: &str| u128::from_str_radix(s, 16).ok().filter(|_| s.len() == 32).map(Ipv6Addr::from);
            let (Some(dst), Some(len), Some(gw), Some(flags), Some(&dev)) = (
                f.first().and_then(|s| v6addr(s)),
                f.get(1).and_then(|s| u8::from_str_radix(s, 16).ok()).filter(|&n| n <= 128),
                f.get(4).and_then(|s| v6addr(s)),
                f.get(8).and_then(|s| hex32(s)),
                f.get(9),
            ) else {
                continue;
            };
            if dev != iface || flags & RTF_UP == 0 || dst.is_multicast() {
                continue;
            }
            let via = (flags & RTF_GATEWAY != 0).then_some(IpAddr::V6(gw));
            routes.push(Route { dst: Cidr { addr: IpAddr::V6(dst), len }, via });
        }
        Routes::new(routes)
    }

    /// [`Routes::from_proc`] of this host's kernel (no routes where the files cannot be read).
    pub fn of_kernel(iface: &str) -> Routes {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Routes::from_proc(iface, &read("/proc/net/route"), &read("/proc/net/ipv6_route"))
    }
}

/// A MAC with the valid bit, in one atomic word.
const VALID: u64 = 1 << 63;
/// With [`VALID`]: the MAC is in use but not confirmed by ARP/ND (taken from a tunnel packet,
/// or doubted by one from another MAC): probed at the next round, whatever its age.
const UNCONFIRMED: u64 = 1 << 62;

struct Slot {
    mac: AtomicU64,
    confirmed: AtomicU32,
    asked: AtomicU32,
}

/// `mac` in the low 48 bits of a word.
fn mac_word(mac: MacAddr) -> u64 {
    let m = mac.0;
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// The MAC of each remote endpoint (by endpoint index), see the module documentation.
pub struct Neighbours {
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for Neighbours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neighbours").field("resolved", &self.resolved()).finish()
    }
}

impl Neighbours {
    /// A table for endpoint indices below `n`, all unresolved.
    pub fn new(n: usize) -> Neighbours {
        Neighbours {
            slots: (0..n)
                .map(|_| Slot {
                    mac: AtomicU64::new(0),
                    confirmed: AtomicU32::new(0),
                    asked: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    /// The MAC of endpoint `i`, when resolved.
    #[inline]
    pub fn get(&self, i: u16) -> Option<MacAddr> {
        let v = self.slots.get(usize::from(i))?.mac.load(Ordering::Acquire);
        (v & VALID != 0).then(|| {
            let b = v.to_be_bytes();
            MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    }

    /// What a tunnel packet from endpoint `i` (on the link) with source MAC `mac` tells: a
    /// slot without a MAC takes it, unconfirmed (used at once, probed at the next round); a
    /// slot with another MAC keeps its own but is probed at the next round (the answer
    /// decides: an outer source MAC is no ARP/ND answer, and may be a router's); the same
    /// MAC changes nothing (data confirms no binding: ARP/ND do).
    #[inline]
    pub fn seen(&self, i: u16, mac: MacAddr) {
        if let Some(s) = self.slots.get(usize::from(i)) {
            let v = s.mac.load(Ordering::Relaxed);
            let m = mac_word(mac);
            let new = if v & VALID == 0 {
                VALID | UNCONFIRMED | m
            } else if v & !(VALID | UNCONFIRMED) != m && v & UNCONFIRMED == 0 {
                v | UNCONFIRMED
            } else {
                return;
            };
            // Only over what was read: an ARP/ND answer written meanwhile wins.
            let _ = s.mac.compare_exchange(v, new, Ordering::Release, Ordering::Relaxed);
        }
    }

    /// Forgets slot `i` (its address is no next hop any more): no MAC, never asked.
    pub fn clear(&self, i: u16) {
        if let Some(s) = self.slots.get(usize::from(i)) {
            s.mac.store(0, Ordering::Release);
            s.confirmed.store(0, Ordering::Relaxed);
            s.asked.store(0, Ordering::Relaxed);
        }
    }

    /// Endpoint `i` is at `mac`, as an ARP/ND message said at `now` (seconds).
    pub fn confirm(&self, i: u16, mac: MacAddr, now: u32) {
        if let Some(s) = self.slots.get(usize::from(i)) {
            let v = VALID | mac_word(mac);
            if s.mac.load(Ordering::Relaxed) != v {
                s.mac.store(v, Ordering::Release);
            }
            if s.confirmed.load(Ordering::Relaxed) != now {
                s.confirmed.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Whether endpoint `i` should be probed at `now` (unresolved, or not confirmed for
    /// [`REACHABLE_S`], and not probed in the last [`PROBE_INTERVAL_S`]); when so, the probe
    /// is taken as sent.
    pub fn take_probe(&self, i: u16, now: u32) -> bool {
        let Some(s) = self.slots.get(usize::from(i)) else {
            return false;
        };
        let v = s.mac.load(Ordering::Acquire);
        let fresh = v & (VALID | UNCONFIRMED) == VALID
            && now.saturating_sub(s.confirmed.load(Ordering::Relaxed)) < REACHABLE_S;
        let asked = s.asked.load(Ordering::Relaxed);
        // `asked` holds the probe's time plus one, so that 0 means never.
        if fresh || (asked != 0 && now.saturating_sub(asked - 1) < PROBE_INTERVAL_S) {
            return false;
        }
        s.asked.store(now + 1, Ordering::Relaxed);
        true
    }

    /// How many endpoints are resolved.
    pub fn resolved(&self) -> usize {
        self.slots.iter().filter(|s| s.mac.load(Ordering::Relaxed) & VALID != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::outer::{outer_headers_len, OuterRepr};

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const PEER: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn arp_request_and_reply_as_rfc_826() {
        let local = Ipv4Addr::new(192, 0, 2, 1);
        let peer = Ipv4Addr::new(192, 0, 2, 2);
        let mut f = [0u8; CONTROL_FRAME_LEN];
        let n = arp_frame(&mut f, MAC, local, peer, None);
        #[rustfmt::skip]
        let want = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06,
            0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2,
        ];
        assert_eq!((n, &f[..42]), (60, &want[..]));
        assert!(f[42..60].iter().all(|&b| b == 0));
        // Our request seen from the peer: it binds us and asks for an answer.
        assert_eq!(
            classify(&f[..n], IpAddr::V4(peer), 4789),
            UplinkFrame::Neighbour { ip: IpAddr::V4(local), mac: MAC, answer: true }
        );
        // A reply to us binds the peer, no answer due.
        let n = arp_frame(&mut f, PEER, peer, local, Some(MAC));
        assert_eq!(&f[..6], &MAC.0);
        assert_eq!(
            classify(&f[..n], IpAddr::V4(local), 4789),
            UplinkFrame::Neighbour { ip: IpAddr::V4(peer), mac: PEER, answer: false }
        );
        // A request for someone else is not ours.
        let n = arp_frame(&mut f, PEER, peer, Ipv4Addr::new(192, 0, 2, 9), None);
        assert_eq!(classify(&f[..n], IpAddr::V4(local), 4789), UplinkFrame::NotOurs);
        for k in 0..42 {
            assert_eq!(classify(&f[..k], IpAddr::V4(local), 4789), UplinkFrame::NotOurs);
        }
    }

    #[test]
    fn neighbour_solicitation_and_advertisement() {
        let local: Ipv6Addr = "fd00::1".parse().unwrap();
        let peer: Ipv6Addr = "fd00::2:3".parse().unwrap();
        let mut f = [0u8; CONTROL_FRAME_LEN];
        let n = nd_frame(&mut f, MAC, local, peer, None);
        // To the solicited-node address ff02::1:ff02:3 and its MAC 33:33:ff:02:00:03.
        assert_eq!(&f[..6], &[0x33, 0x33, 0xff, 0x02, 0x00, 0x03]);
        let sn: Ipv6Addr = "ff02::1:ff02:3".parse().unwrap();
        assert_eq!(&f[38..54], &sn.octets());
        assert_eq!((f[54], f[21]), (135, 255));
        assert_eq!(
            classify(&f[..n], IpAddr::V6(peer), 4789),
            UplinkFrame::Neighbour { ip: IpAddr::V6(local), mac: MAC, answer: true }
        );
        let n = nd_frame(&mut f, PEER, peer, local, Some((local, MAC)));
        assert_eq!((f[54], f[58]), (136, 0x60));
        assert_eq!(
            classify(&f[..n], IpAddr::V6(local), 4789),
            UplinkFrame::Neighbour { ip: IpAddr::V6(peer), mac: PEER, answer: false }
        );
        let mut bad = f;
        bad[80] ^= 1;
        assert_eq!(classify(&bad[..n], IpAddr::V6(local), 4789), UplinkFrame::NotOurs);
        let mut hops = f;
        hops[21] = 64;
        assert_eq!(classify(&hops[..n], IpAddr::V6(local), 4789), UplinkFrame::NotOurs);
        for k in 0..n {
            assert_eq!(classify(&f[..k], IpAddr::V6(local), 4789), UplinkFrame::NotOurs);
        }
    }

    /// A VXLAN packet from PEER (192.0.2.2) to `local` with 30 bytes of zero payload, and its
    /// outer headers.
    fn tunnel_packet(local: IpAddr) -> (Vec<u8>, OuterRepr) {
        let mut f = vec![0u8; outer_headers_len(false) + 30];
        let r = OuterRepr {
            src_mac: PEER,
            dst_mac: MAC,
            src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            dst_ip: local,
            src_port: 50000,
            dst_port: 4789,
        };
        assert!(r.emit(&mut f));
        (f, r)
    }

    /// Calls `check` on every variant of `base` with one of its first `bytes` bytes set to
    /// every value, each also with its outer IPv4 header checksum made right again; on every
    /// truncation; and padded with 20 bytes.
    fn each_variant(base: &[u8], bytes: usize, check: &mut dyn FnMut(&[u8])) {
        for at in 0..bytes {
            for v in 0..=255u8 {
                let mut f = base.to_vec();
                f[at] = v;
                check(&f);
                f[24..26].copy_from_slice(&[0, 0]);
                let c = !fold(ones_sum(&f[14..34], 0));
                f[24..26].copy_from_slice(&c.to_be_bytes());
                check(&f);
            }
        }
        for n in 0..base.len() {
            check(&base[..n]);
        }
        let mut padded = base.to_vec();
        padded.extend_from_slice(&[0xaa; 20]);
        check(&padded);
    }

    /// The fixed-offset check answers only for frames the full check takes as tunnel
    /// packets, and then as the full check does: every byte of the headers (and the first of
    /// the payload) set to every value, with the IPv4 header checksum as it falls and made
    /// right again, and every truncation and padding.
    #[test]
    fn plain_ipv4_is_classified_as_in_full() {
        let l = Ipv4Addr::new(192, 0, 2, 1);
        let local = IpAddr::V4(l);
        let (base, _) = tunnel_packet(local);
        let (mut answered, mut declined) = (0, 0);
        let mut check = |f: &[u8]| match plain_ipv4_tunnel(f, l, 4789) {
            Some(t) => {
                assert_eq!(t, classify_full(f, local, 4789), "frame {f:02x?}");
                assert!(matches!(t, UplinkFrame::Tunnel { .. }));
                answered += 1;
            }
            None => declined += 1,
        };
        check(&base);
        each_variant(&base, outer_headers_len(false) + 1, &mut check);
        // The base frame and its variants with other addresses, ports, TTL, identification,
        // and payload bytes (over 40 positions with 256 values each) take the plain path;
        // others (options, fragments, other protocols, UDP checksums, bad sums) do not.
        assert!(answered > 40 * 256, "answered {answered}");
        assert!(declined > 10 * 256, "declined {declined}");
    }

    /// The one-pass check of a tunnel packet and its inner frame answers only for packets
    /// that classify takes as tunnel packets and whose datagram the codec decapsulates, and
    /// then with their inner frame and source: every byte of the outer headers, the tunnel
    /// header and the inner Ethernet header set to every value (the IPv4 header checksum as
    /// it falls and made right again), every truncation and padding, VXLAN and Geneve.
    #[test]
    fn plain_ipv4_inner_is_classify_and_decap() {
        use crate::tunnel::TunnelKind;
        let l = Ipv4Addr::new(192, 0, 2, 1);
        let local = IpAddr::V4(l);
        for (kind, header) in [
            (TunnelKind::Vxlan, [0x08, 0, 0, 0, 0, 0x13, 0x89, 0]),
            (TunnelKind::Geneve, [0, 0, 0x65, 0x58, 0, 0x13, 0x89, 0]),
        ] {
            let codec = TunnelCodec { kind, vni: 5001 };
            let mut base = vec![0u8; outer_headers_len(false)];
            base.extend_from_slice(&header);
            base.extend_from_slice(&[2, 0, 0, 0, 0, 0xa, 2, 0, 0, 0, 0, 0xb, 0x08, 0x00]);
            base.extend_from_slice(&[0x5a; 16]);
            assert!(tunnel_packet(local).1.emit(&mut base));
            let (mut answered, mut declined) = (0, 0);
            let mut check = |f: &[u8]| match plain_ipv4_inner(f, l, 4789, &codec) {
                Some(p) => {
                    let UplinkFrame::Tunnel { payload, len, src_ip, src_mac } = classify_full(f, local, 4789)
                    else {
                        panic!("not a tunnel packet in full: {f:02x?}");
                    };
                    let off = codec.decap(&f[payload..payload + len]);
                    assert_eq!(off, Ok(PLAIN_HEADER_LEN), "frame {f:02x?}");
                    assert_eq!(payload + PLAIN_HEADER_LEN, PLAIN_INNER_AT);
                    assert_eq!(
                        (IpAddr::V4(p.src_ip), p.src_mac, p.len),
                        (src_ip, src_mac, len - PLAIN_HEADER_LEN)
                    );
                    answered += 1;
                    true
                }
                None => {
                    declined += 1;
                    false
                }
            };
            assert!(check(&base), "{kind:?}: the base packet is plain");
            each_variant(&base, PLAIN_INNER_AT + ETH_HEADER_LEN, &mut |f| {
                check(f);
            });
            // Variants of addresses, ports, TTL, identification, the VNI's last byte... and
            // the inner header's 14 bytes take the one-pass path; others do not.
            assert!(answered > 40 * 256, "{kind:?}: answered {answered}");
            assert!(declined > 10 * 256, "{kind:?}: declined {declined}");
        }
    }

    #[test]
    fn tunnel_packets_and_others() {
        let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let (f, r) = tunnel_packet(local);
        assert_eq!(
            classify(&f, local, 4789),
            UplinkFrame::Tunnel { payload: 42, len: 30, src_ip: r.src_ip, src_mac: PEER }
        );
        assert_eq!(classify(&f, local, 6081), UplinkFrame::NotOurs);
        assert_eq!(classify(&f, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 4789), UplinkFrame::NotOurs);
        assert_eq!(classify(&f[..50], local, 4789), UplinkFrame::Malformed);
        assert_eq!(classify(&f[..20], local, 4789), UplinkFrame::NotOurs);
    }

    #[test]
    fn kernel_routes_of_one_interface_longest_prefix_first() {
        // As this kernel prints them (little-endian words); eth1's and the down route left out.
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\tFE00630A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000630A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\t0014630A\tFD00630A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\t0015630A\tFD00630A\t0002\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth1\t0016630A\tFD00630A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\tgarbage\n";
        let v6 = "fd000000000000990000000000000000 40 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  fd000000000000200000000000000000 40 00000000000000000000000000000000 00 \
                  fe8000000000000000000000000000fe 00000400 00000001 00000000 00000003     eth0\n\
                  ff000000000000000000000000000000 08 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n";
        let r = Routes::from_proc("eth0", v4, v6);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.routes().len(), 5, "{r:?}");
        assert_eq!(r.next_hop(ip("10.99.20.7")), ip("10.99.0.253"), "the /24 over the default");
        assert_eq!(r.next_hop(ip("10.99.0.7")), ip("10.99.0.7"), "on the link");
        assert_eq!(r.next_hop(ip("10.99.21.7")), ip("10.99.0.254"), "a route that is down: the default");
        assert_eq!(r.next_hop(ip("10.99.22.7")), ip("10.99.0.254"), "another interface's: the default");
        assert_eq!(r.next_hop(ip("192.0.2.1")), ip("10.99.0.254"));
        assert_eq!(r.next_hop(ip("fd00:0:0:20::9")), ip("fe80::fe"));
        assert_eq!(r.next_hop(ip("fd00:0:0:99::9")), ip("fd00:0:0:99::9"));
        assert_eq!(r.next_hop(ip("fd00:0:0:30::9")), ip("fd00:0:0:30::9"), "no route: on the link");
        // Configured routes come first among equally long ones.
        let cfg = Route { dst: "10.99.20.0/24".parse().unwrap(), via: Some(ip("10.99.0.1")) };
        let both = Routes::new([&[cfg][..], r.routes()].concat());
        assert_eq!(both.next_hop(ip("10.99.20.7")), ip("10.99.0.1"));
    }

    #[test]
    fn neighbours_resolve_go_stale_and_probe_once_a_second() {
        let n = Neighbours::new(4);
        assert_eq!(n.get(1), None);
        assert!(n.take_probe(1, 10));
        assert!(!n.take_probe(1, 10));
        assert!(n.take_probe(1, 11));
        n.confirm(1, PEER, 11);
        assert_eq!(n.get(1), Some(PEER));
        assert!(!n.take_probe(1, 12));
        assert!(n.take_probe(1, 11 + REACHABLE_S));
        assert_eq!(n.get(1), Some(PEER), "a stale binding is still used");
        assert!(!n.take_probe(9, 0));
        assert_eq!(n.resolved(), 1);
    }

    /// A tunnel packet never overwrites a binding: one from another MAC (a router's, or the
    /// node's new NIC) has the binding probed at the next round, and only the answer moves
    /// it; one to an unresolved slot gives it a MAC to use, probed all the same.
    #[test]
    fn tunnel_packets_do_not_overwrite_a_binding() {
        const OTHER: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);
        let n = Neighbours::new(4);
        n.confirm(1, PEER, 10);
        assert!(!n.take_probe(1, 11));
        n.seen(1, PEER);
        assert!(!n.take_probe(1, 11), "the same MAC: nothing to ask");
        n.seen(1, OTHER);
        assert_eq!(n.get(1), Some(PEER), "not overwritten by a data packet");
        assert!(n.take_probe(1, 11), "doubted: asked at the next round");
        assert!(!n.take_probe(1, 11));
        n.confirm(1, PEER, 11);
        assert!(!n.take_probe(1, 12), "the answer confirms it");
        n.seen(1, OTHER);
        n.confirm(1, OTHER, 13);
        assert_eq!(n.get(1), Some(OTHER), "an answer moves it");
        // Unresolved: the packet's MAC is used at once, and asked about.
        n.seen(2, OTHER);
        assert_eq!(n.get(2), Some(OTHER));
        assert!(n.take_probe(2, 13));
        n.clear(2);
        assert_eq!(n.get(2), None);
        assert!(n.take_probe(2, 13), "a cleared slot was never asked");
    }
}
