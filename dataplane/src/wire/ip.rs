//! The IPv4/IPv6 and transport header fields that the policy stage reads: addresses,
//! protocol, ports, TCP flags, ICMP type, and for ICMP errors the flow of the packet they quote.
//!
//! [`parse_l3`] reads everything through bounds-checked `get`s: whatever the bytes, it returns
//! a value (a cut-short header is [`L3::Malformed`]), never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// Header layouts, named once here for every module of `wire` that reads or writes them.
/// IPv4 header offsets: version/IHL, total length, identification, fragment field, TTL,
/// protocol, checksum, source, destination.
pub(crate) const V4_VER_IHL: usize = 0;
pub(crate) const V4_TOTAL_LEN: usize = 2;
pub(crate) const V4_ID: usize = 4;
pub(crate) const V4_FRAG: usize = 6;
pub(crate) const V4_TTL: usize = 8;
pub(crate) const V4_PROTO: usize = 9;
pub(crate) const V4_CSUM: usize = 10;
pub(crate) const V4_SRC: usize = 12;
pub(crate) const V4_DST: usize = 16;
/// The fragment field's don't-fragment bit, and its more-fragments bit with the offset.
pub(crate) const V4_DF: u16 = 0x4000;
pub(crate) const V4_MF_OFFSET: u16 = 0x3fff;
/// An IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 header offsets: payload length, next header, hop limit, source, destination.
pub(crate) const V6_PAYLOAD_LEN: usize = 4;
pub(crate) const V6_NEXT: usize = 6;
pub(crate) const V6_HOPS: usize = 7;
pub(crate) const V6_SRC: usize = 8;
pub(crate) const V6_DST: usize = 24;
/// The fixed IPv6 header (no extension headers).
pub const IPV6_HEADER_LEN: usize = 40;
/// UDP header offsets: source port, destination port, length, checksum.
pub(crate) const UDP_SPORT: usize = 0;
pub(crate) const UDP_DPORT: usize = 2;
pub(crate) const UDP_LEN: usize = 4;
pub(crate) const UDP_CSUM: usize = 6;
/// The UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// TCP header offsets: sequence number, data offset, flags, checksum.
pub(crate) const TCP_SEQ: usize = 4;
pub(crate) const TCP_DATA_OFF: usize = 12;
pub(crate) const TCP_FLAGS: usize = 13;
pub(crate) const TCP_CSUM: usize = 16;
/// A TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// ARP: the sender protocol address (Ethernet/IPv4 ARP).
const ARP_SPA: usize = 14;
const ARP_PLEN: usize = 5;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_CWR: u8 = 0x80;

/// One direction of a flow: addresses (IPv4 as the low 32 bits), ports (ICMP echo, and ICMPv4
/// timestamp, information and address mask: the identifier as the source port of a request
/// and the destination port of a reply; other ICMP: 0 and 0), protocol,
/// and the VLAN it travels in (the pipeline's VLAN, 0-4095; the header reads leave it 0 and
/// the policy stage sets it): two VLANs of one bridge may hold the same addresses, and their
/// connections are two, as OVN keeps each in the zone of its own ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub v4: bool,
    pub vlan: u16,
}

impl FlowKey {
    /// The other direction of the same flow.
    pub fn reversed(&self) -> FlowKey {
        FlowKey { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..*self }
    }

    fn ip(&self, a: u128) -> IpAddr {
        if self.v4 {
            IpAddr::V4(Ipv4Addr::from(a as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }

    pub fn src_ip(&self) -> IpAddr {
        self.ip(self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        self.ip(self.dst)
    }
}

/// What kind of IP packet, for the policy stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpKind {
    /// A connection's packet (TCP, UDP, SCTP, ICMP echo, other protocols).
    Flow,
    /// IPv6 neighbour discovery or router solicitation/advertisement: passes every policy
    /// (the spoof filters still check it); with a neighbour advertisement's target address
    /// (`target`; 0, the unspecified address, which no advertisement claims, for the other
    /// messages) and the link-layer address its options name (`lladdr`), which receivers
    /// put in their neighbour caches.
    NeighborDiscovery { target: u128, lladdr: LinkAddr },
    /// An MLD message (ICMPv6 130, 131, 132 from a link-local source; 143 to `ff02::16`), hop
    /// limit 1: passes every policy when its Ethernet destination is a multicast one
    /// (`33:33:..`), as OVN's ACLs let `mldv1 || mldv2` past (the policy stage checks the
    /// MAC; otherwise it is an ICMPv6 packet like any).
    Mld,
    /// An ICMP error quoting the packet of `FlowKey` (as that packet went).
    IcmpError(FlowKey),
}

/// The link-layer address that the Source and Target Link-Layer Address options of a
/// neighbour discovery message name (an all-zero one names none, as OVN reads an absent
/// option: `nd.sll == 00:00:00:00:00:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkAddr {
    /// No option, or only all-zero ones.
    #[default]
    None,
    /// Every non-zero option names this MAC (as [`crate::wire::MacAddr::to_u64`] holds it).
    One(u64),
    /// Two options name different MACs (no genuine message does; OVS reads a repeated option
    /// as invalid).
    Several,
}

impl LinkAddr {
    fn with(self, mac: u64) -> LinkAddr {
        match self {
            _ if mac == 0 => self,
            LinkAddr::None => LinkAddr::One(mac),
            LinkAddr::One(m) if m == mac => self,
            _ => LinkAddr::Several,
        }
    }
}

/// The options of a neighbour discovery message (`opts`: from the first option to the end of
/// the packet): the link-layer address their Source (1) and Target (2) Link-Layer Address
/// options name. Every option is read, however many (a receiver reads them all); the walk
/// stops at an option of length 0 or one that overruns the packet (RFC 4861 4.6: a receiver
/// discards such a message), after checking what it names, in case a receiver reads it anyway.
fn nd_options(mut opts: &[u8]) -> LinkAddr {
    let mut ll = LinkAddr::None;
    while let [ty, len, rest @ ..] = opts {
        if let (1 | 2, Some(mac)) = (ty, rest.first_chunk::<6>()) {
            let mut w = [0u8; 8];
            w[2..].copy_from_slice(mac);
            ll = ll.with(u64::from_be_bytes(w));
        }
        let n = usize::from(*len) * 8;
        if n == 0 || n > opts.len() {
            break;
        }
        opts = &opts[n..];
    }
    ll
}

/// The link-layer address that the IPv6 packet `p` (from its IPv6 header) claims in its
/// neighbour discovery options, for the MAC spoof filter: [`LinkAddr::None`] for any packet
/// that is not neighbour discovery (as [`IpKind::NeighborDiscovery`] takes it). Any other
/// ICMPv6, TCP or UDP packet without extension headers is answered from its first bytes.
pub fn nd_link_addr(p: &[u8]) -> LinkAddr {
    match p.get(V6_NEXT) {
        Some(&PROTO_ICMPV6) if matches!(p.get(IPV6_HEADER_LEN), Some(133..=136)) => {}
        Some(0 | 43 | 44 | 60) => {}
        _ => return LinkAddr::None,
    }
    match parse_v6(p, true) {
        Some(IpFlow { kind: IpKind::NeighborDiscovery { lladdr, .. }, .. }) => lladdr,
        _ => LinkAddr::None,
    }
}

/// An IP packet's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpFlow {
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub kind: IpKind,
    /// The type and code of an ICMPv6 message, which the IP spoof filter's exception for the
    /// unspecified source `::` names (its one reader); `None` for IPv4 (whose exception for
    /// 0.0.0.0 names no ICMP), other protocols, a non-first fragment and a message cut before
    /// its code.
    pub icmp: Option<(u8, u8)>,
}

/// The type and code of the transport header `t` when the packet's protocol `proto` is
/// ICMPv6 and `t` holds both.
#[inline]
fn icmp6_type_code(proto: u8, t: &[u8]) -> Option<(u8, u8)> {
    match t {
        [ty, code, ..] if proto == PROTO_ICMPV6 => Some((*ty, *code)),
        _ => None,
    }
}

/// What the frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Ip(IpFlow),
    /// An Ethernet/IPv4 ARP packet with its sender protocol address.
    Arp(Ipv4Addr),
    /// Neither IP nor ARP (or ARP of another protocol).
    Other,
    /// IPv4/IPv6 (or ARP) cut short or with a bad version/header length.
    Malformed,
}

fn be16(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(off)?, *d.get(off + 1)?]))
}

fn be32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

fn be128(d: &[u8], off: usize) -> Option<u128> {
    Some(u128::from_be_bytes(d.get(off..off + 16)?.try_into().ok()?))
}

/// Reads the payload `p` of a frame of EtherType `ethertype`.
pub fn parse_l3(ethertype: u16, p: &[u8]) -> L3 {
    match ethertype {
        0x0800 => parse_v4(p, true).map_or(L3::Malformed, L3::Ip),
        0x86dd => parse_v6(p, true).map_or(L3::Malformed, L3::Ip),
        0x0806 => {
            // Ethernet/IPv4 ARP only: hardware type 1 or 6 (IEEE 802, which Linux takes on an
            // Ethernet device as 1), protocol 0x0800, lengths 6 and 4.
            match (be16(p, 0), be16(p, 2), p.get(ARP_PLEN - 1), p.get(ARP_PLEN), be32(p, ARP_SPA)) {
                (Some(1 | 6), Some(0x0800), Some(6), Some(4), Some(spa)) => L3::Arp(Ipv4Addr::from(spa)),
                (Some(_), Some(_), Some(_), Some(_), Some(_)) => L3::Other,
                _ => L3::Malformed,
            }
        }
        _ => L3::Other,
    }
}

/// Ports (or ICMP identifiers) and flags of the transport header at `t`; `outer`: the
/// packet itself, not one quoted by an ICMP error (whose transport header may be cut to 8
/// bytes, and which is not classified further); `hops`: an IPv6 packet's hop limit.
fn transport(key: &mut FlowKey, t: &[u8], icmp6: bool, hops: u8, outer: bool) -> Option<(u8, IpKind)> {
    match key.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            key.sport = be16(t, 0)?;
            key.dport = be16(t, 2)?;
            let flags = if key.proto == PROTO_TCP && outer { *t.get(TCP_FLAGS)? } else { 0 };
            Some((flags, IpKind::Flow))
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let ty = *t.first()?;
            let (echo_req, echo_rep, err, nd) = if icmp6 {
                // Neighbour discovery as OVN lets it past every ACL (`nd`, `nd_rs`, `nd_ra`):
                // router solicitation and advertisement, neighbour solicitation and
                // advertisement, code 0, hop limit 255 (which a receiver requires too, RFC
                // 4861). A redirect (137) is not among them.
                let nd = (133..=136).contains(&ty) && t.get(1) == Some(&0) && hops == 255;
                (ty == 128, ty == 129, (1..=4).contains(&ty), nd)
            } else {
                // Echo, and timestamp, information and address mask requests and replies, which
                // carry an identifier in the same place.
                (
                    matches!(ty, 8 | 13 | 15 | 17),
                    matches!(ty, 0 | 14 | 16 | 18),
                    matches!(ty, 3 | 4 | 5 | 11 | 12),
                    false,
                )
            };
            if echo_req || echo_rep {
                let id = be16(t, 4)?;
                (key.sport, key.dport) = if echo_req { (id, 0) } else { (0, id) };
                return Some((0, IpKind::Flow));
            }
            if nd {
                // A neighbour advertisement's target address (the address it claims), and
                // the options after the fixed part: 8 bytes (RS), 16 (RA), 24 (NS, NA).
                let target = if ty == 136 { be128(t, 8)? } else { 0 };
                let fixed = match ty {
                    133 => 8,
                    134 => 16,
                    _ => 24,
                };
                let opts = t.get(fixed..).unwrap_or_default();
                return Some((0, IpKind::NeighborDiscovery { target, lladdr: nd_options(opts) }));
            }
            // MLD (mldv1: queries, reports, done from a link-local source; mldv2: reports to
            // ff02::16), as OVN matches it, and hop limit 1, which RFC 2710 and 3810 require.
            let mld = icmp6
                && hops == 1
                && match ty {
                    130..=132 => (key.src >> 118) == 0xfe80 >> 6,
                    143 => key.dst == 0xff02_0000_0000_0000_0000_0000_0000_0016,
                    _ => false,
                };
            if mld && outer {
                return Some((0, IpKind::Mld));
            }
            if err && outer {
                // The quoted packet starts 8 bytes in.
                let inner = t.get(8..)?;
                let q = if icmp6 { parse_v6(inner, false)? } else { parse_v4(inner, false)? };
                return Some((0, IpKind::IcmpError(q.key)));
            }
            Some((0, IpKind::Flow))
        }
        _ => Some((0, IpKind::Flow)),
    }
}

fn parse_v4(p: &[u8], outer: bool) -> Option<IpFlow> {
    let vi = *p.get(V4_VER_IHL)?;
    let ihl = usize::from(vi & 0x0f) * 4;
    if vi >> 4 != 4 || ihl < IPV4_HEADER_LEN || p.len() < ihl {
        return None;
    }
    let mut key = FlowKey {
        src: u128::from(be32(p, V4_SRC)?),
        dst: u128::from(be32(p, V4_DST)?),
        proto: *p.get(V4_PROTO)?,
        v4: true,
        ..Default::default()
    };
    // A fragment other than the first has no transport header: ports 0.
    if be16(p, V4_FRAG)? & 0x1fff != 0 {
        return Some(IpFlow { key, tcp_flags: 0, kind: IpKind::Flow, icmp: None });
    }
    let (tcp_flags, kind) = transport(&mut key, p.get(ihl..)?, false, 0, outer)?;
    Some(IpFlow { key, tcp_flags, kind, icmp: None })
}

/// The fields of a simple IPv4 packet ([`simple_v4`]), as the header holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleV4 {
    pub src: u32,
    pub dst: u32,
    /// The transport header's first word: source port << 16 | destination port.
    pub ports: u32,
    pub proto: u8,
    pub tcp_flags: u8,
}

/// The common case of [`parse_l3`] for IPv4, read in one bounds check: a header without
/// options, not a later fragment, carrying TCP, UDP or SCTP. `Some` only for such a packet;
/// `None`: ask [`parse_l3`].
#[inline(always)]
pub fn simple_v4(p: &[u8]) -> Option<SimpleV4> {
    simple_v4_at(p, 0)
}

/// [`simple_v4`] of the packet at offset `off` of `d` (a frame's, after its Ethernet header):
/// the offset folded into the one bounds check.
#[inline(always)]
pub fn simple_v4_at(d: &[u8], off: usize) -> Option<SimpleV4> {
    const PORTS_END: usize = IPV4_HEADER_LEN + 4;
    let h: &[u8; PORTS_END] = d.get(off..off.checked_add(PORTS_END)?)?.try_into().ok()?;
    let p = d.get(off..)?;
    let proto = h[V4_PROTO];
    if h[V4_VER_IHL] != 0x45
        || u16::from_be_bytes([h[V4_FRAG], h[V4_FRAG + 1]]) & 0x1fff != 0
        || !matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
    {
        return None;
    }
    let tcp_flags = if proto == PROTO_TCP { *p.get(IPV4_HEADER_LEN + TCP_FLAGS)? } else { 0 };
    let w = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    Some(SimpleV4 { src: w(V4_SRC), dst: w(V4_DST), ports: w(IPV4_HEADER_LEN), proto, tcp_flags })
}

impl SimpleV4 {
    /// The flow key [`parse_l3`] returns for the packet.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: u128::from(self.src),
            dst: u128::from(self.dst),
            sport: (self.ports >> 16) as u16,
            dport: self.ports as u16,
            proto: self.proto,
            v4: true,
            vlan: 0,
        }
    }
}

/// [`simple_v4`] as the key and TCP flags that [`parse_l3`] returns for such a packet.
#[inline]
pub fn simple_v4_flow(p: &[u8]) -> Option<(FlowKey, u8)> {
    let s = simple_v4(p)?;
    Some((s.key(), s.tcp_flags))
}

fn parse_v6(p: &[u8], outer: bool) -> Option<IpFlow> {
    if *p.first()? >> 4 != 6 || p.len() < IPV6_HEADER_LEN {
        return None;
    }
    let mut key = FlowKey { src: be128(p, V6_SRC)?, dst: be128(p, V6_DST)?, v4: false, ..Default::default() };
    let mut next = *p.get(V6_NEXT)?;
    let mut off = IPV6_HEADER_LEN;
    // Extension headers, all of them (RFC 8200 4.1: a receiver takes any number, and the
    // kernel does: stopping after some would read the next header as the transport and skip
    // the neighbour-discovery checks of a message behind it): hop-by-hop, routing,
    // destination options, fragment (a non-first fragment ends the walk with ports 0). Each
    // is at least 8 bytes, so the walk ends at the frame's end.
    loop {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*p.get(off + 1)?) + 1) * 8;
                next = *p.get(off)?;
                off += len;
            }
            44 => {
                let frag = be16(p, off + 2)? & 0xfff8;
                next = *p.get(off)?;
                off += 8;
                if frag != 0 {
                    key.proto = next;
                    return Some(IpFlow { key, tcp_flags: 0, kind: IpKind::Flow, icmp: None });
                }
            }
            _ => break,
        }
    }
    key.proto = next;
    let t = p.get(off..)?;
    let (tcp_flags, kind) = transport(&mut key, t, true, *p.get(V6_HOPS)?, outer)?;
    Some(IpFlow { key, tcp_flags, kind, icmp: icmp6_type_code(key.proto, t) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The IPv4 shortcut returns what the full parser returns, whenever it answers;
        /// and it answers for plain TCP/UDP headers.
        #[test]
        fn simple_v4_agrees_with_parse_l3(
            mut p in proptest::collection::vec(any::<u8>(), 0..60),
            plain in any::<bool>(),
            proto in prop_oneof![Just(6u8), Just(17u8), Just(132u8), any::<u8>()],
        ) {
            if plain && p.len() >= 34 {
                p[0] = 0x45;
                p[6] &= 0xe0;
                p[7] = 0;
                p[9] = proto;
            }
            let fast = simple_v4_flow(&p);
            if let Some((key, flags)) = fast {
                let flow = IpFlow { key, tcp_flags: flags, kind: IpKind::Flow, icmp: None };
                prop_assert_eq!(parse_l3(0x0800, &p), L3::Ip(flow));
            }
            if plain && p.len() >= 34 && matches!(proto, 6 | 17 | 132) {
                prop_assert!(fast.is_some());
            }
            // The fast path's read at an offset (after an Ethernet header) is the same read.
            let mut frame = vec![0xee; 14];
            frame.extend_from_slice(&p);
            prop_assert_eq!(simple_v4_at(&frame, 14), simple_v4(&p));
            // And on a buffer cut short at the offset's header (the one bounds check's edge,
            // 24 to 33 bytes of header): the same answer as the unshifted cut buffer.
            let cut = p.len().min(20 + (proto as usize % 14));
            prop_assert_eq!(simple_v4_at(&frame[..14 + cut], 14), simple_v4(&p[..cut]));
        }
    }
}
