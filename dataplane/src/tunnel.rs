//! Overlay tunnels (VXLAN, Geneve) apart from any socket: the header a tunnel port puts in
//! front of an inner frame and takes off a received datagram, the MTU arithmetic, and the
//! table of remote MACs that says which endpoint an inner frame goes to.
//!
//! Invariants:
//! - [`TunnelCodec::decap`] looks at bytes only through the checked views of `wire::vxlan` and
//!   `wire::geneve`: whatever a datagram holds, it returns the inner frame's offset or one
//!   [`DropReason`], never panics.
//! - A received inner frame is at least an Ethernet header long; one in another VNI, a
//!   Geneve control message or a non-Ethernet payload is refused (the RFCs' "MUST drop" and
//!   "MUST NOT forward"); reserved fields are ignored.
//! - [`Remotes`] never moves a static remote MAC (`remote_macs`) by learning, and learns
//!   nothing when learning is off. [`Remotes::update`] changes the flood list, the static
//!   remote MACs and learning in place while readers run: a MAC that moves is replaced in one
//!   store (a reader sees the old endpoint or the new one, never none), the flood list is
//!   swapped whole, and endpoint indices never change (only new ones are added), so tables
//!   indexed like the endpoints (the fast path's neighbours) stay valid.

use crate::buffer::{BufferError, PacketBuf};
use crate::fdb::{FdbError, FdbView, MacTable};
use crate::switch::DropReason;
use crate::wire::geneve::{GenevePacket, GENEVE_HEADER_LEN, GENEVE_PORT, GENEVE_PROTO_ETHERNET};
use crate::wire::ip::{
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_SCTP, PROTO_TCP, PROTO_UDP, UDP_HEADER_LEN, V4_FRAG, V4_PROTO,
    V4_SRC, V6_DST, V6_NEXT, V6_SRC,
};
use crate::wire::vxlan::{VxlanPacket, VNI_MAX, VXLAN_HEADER_LEN, VXLAN_PORT};
use crate::wire::{EtherType, MacAddr, WireError, ETH_HEADER_LEN, ETH_TYPE_OFFSET, VLAN_TAG_LEN};
use arc_swap::{ArcSwap, Guard};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The two encapsulations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// RFC 7348.
    Vxlan,
    /// RFC 8926.
    Geneve,
}

/// Geneve option bytes the MTU leaves room for, although switchyard sends none: the 8 bytes
/// of one option as OVN's Geneve carries, so that the overlay MTU is the same whichever
/// implementation sends (58 bytes of overhead over IPv4, as OVN-Kubernetes plans).
pub const GENEVE_OPTIONS_RESERVED: usize = 8;

impl TunnelKind {
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
        }
    }

    /// The header switchyard writes (Geneve without options).
    pub fn header_len(self) -> usize {
        match self {
            TunnelKind::Vxlan => VXLAN_HEADER_LEN,
            TunnelKind::Geneve => GENEVE_HEADER_LEN,
        }
    }

    /// The IANA UDP port.
    pub fn default_port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => VXLAN_PORT,
            TunnelKind::Geneve => GENEVE_PORT,
        }
    }

    /// Bytes an underlay packet may carry besides the inner frame, as MTUs are planned:
    /// outer IP, UDP and the tunnel header, for Geneve with [`GENEVE_OPTIONS_RESERVED`] bytes
    /// of options.
    pub fn outer_len(self, ipv6: bool) -> usize {
        let reserved = match self {
            TunnelKind::Vxlan => 0,
            TunnelKind::Geneve => GENEVE_OPTIONS_RESERVED,
        };
        (if ipv6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN }) + UDP_HEADER_LEN + self.header_len() + reserved
    }

    /// The overhead as MTUs count it: the outer headers plus the inner Ethernet header
    /// (50 bytes for VXLAN and 58 for Geneve over IPv4, 20 more over IPv6).
    pub fn mtu_overhead(self, ipv6: bool) -> usize {
        self.outer_len(ipv6) + ETH_HEADER_LEN
    }

    /// The MTU a VM on the overlay gets over an underlay of `underlay_mtu`.
    pub fn overlay_mtu(self, ipv6: bool, underlay_mtu: u32) -> u32 {
        underlay_mtu.saturating_sub(self.mtu_overhead(ipv6) as u32)
    }

    /// The largest inner frame (Ethernet header and any VLAN tag included) whose underlay
    /// packet fits `underlay_mtu` without fragmentation.
    pub fn max_inner_frame(self, ipv6: bool, underlay_mtu: u32) -> usize {
        (underlay_mtu as usize).saturating_sub(self.outer_len(ipv6))
    }
}

/// The length of both headers switchyard writes, and of every header decapsulated by one
/// compare (VXLAN; Geneve without options).
pub const PLAIN_HEADER_LEN: usize = 8;
const _: () = assert!(PLAIN_HEADER_LEN == VXLAN_HEADER_LEN && PLAIN_HEADER_LEN == GENEVE_HEADER_LEN);

/// The UDP source port range of RFC 7348 section 5 (the dynamic ports, 49152-65535).
pub const SOURCE_PORT_MIN: u16 = 49152;
const SOURCE_PORT_SPAN: u64 = 65536 - SOURCE_PORT_MIN as u64;

/// A hash of an inner frame's flow: the Ethernet addresses and EtherType, and for IPv4/IPv6
/// (behind at most one VLAN tag) the addresses, the protocol and, for TCP, UDP and SCTP, the
/// ports. Frames of one flow hash alike, so one flow keeps one underlay path and its order.
/// Reads only within `frame` (fixed offsets, bounds-checked), whatever its bytes.
///
/// Exactly: the bytes are taken 8 at a time (little-endian; a word past the frame's end is 0)
/// and mixed two words a step by a folded 64x64->128-bit multiply (`flow_fold`: the product's
/// halves xored, as foldhash's). Step one: `h = fold(word(0) ^ K0, word(6) ^ K1)` (the MACs
/// and EtherType). Behind an 802.1Q or 802.1ad tag the EtherType and the IP header are 4 bytes
/// further on. IPv6 (a 40-byte header present): for the source, then the destination
/// address, `h = fold(word(at) ^ K2, word(at + 8) ^ h)`. The last step: `fold(last ^ K2, key
/// ^ h)`, where `last` is the word at the IPv4 source address (a 20-byte header present; 0
/// otherwise) and `key` (`flow_key`) is `EtherType << 8 | protocol`, with, for TCP (6), UDP
/// (17) and SCTP (132) on IPv4 that is not a fragment (`V4_FRAGMENT_BITS` clear) or on IPv6
/// whose first Next Header is one of them, the 4 bytes after the IP header (after IPv4's IHL
/// words; 0 where the frame is shorter) as a little-endian word `<< 32`, and bit 24 set. The
/// hash is the top 32 bits of the last step times `0x9e3779b97f4a7c15`. K0, K1, K2: the
/// constants below. tests/replay/tunnel_cases.py holds a rewrite of this in Python.
#[inline]
pub fn flow_hash(frame: &[u8]) -> u32 {
    // The common frame, untagged IPv4 without options and long enough for the ports, read
    // after one length check; any other in flow_hash_any, which hashes these alike (the test
    // `flow_hash_of_plain_ipv4_is_the_general_one`).
    const LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + 4;
    let Some(f) = frame.first_chunk::<LEN>() else { return flow_hash_any(frame) };
    let word = |off: usize| u64::from_le_bytes(f[off..off + 8].try_into().unwrap_or([0; 8]));
    let l3 = ETH_HEADER_LEN;
    // EtherType IPv4 (08 00) and a version/IHL byte whose IHL is 5, in one compare.
    let at12 = u32::from_le_bytes(f[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 4].try_into().unwrap_or([0; 4]));
    if at12 & 0x000f_ffff != 0x0005_0008 {
        return flow_hash_any(frame);
    }
    let proto = f[l3 + V4_PROTO];
    let whole = u16::from_be_bytes([f[l3 + V4_FRAG], f[l3 + V4_FRAG + 1]]) & V4_FRAGMENT_BITS == 0;
    let ports = if PORTS_PROTO[usize::from(proto)] & whole {
        let at = l3 + IPV4_HEADER_LEN;
        Some(u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]))
    } else {
        None
    };
    let h = flow_fold(word(0) ^ FLOW_K0, word(6) ^ FLOW_K1);
    flow_finish(flow_fold(word(l3 + V4_SRC) ^ FLOW_K2, flow_key(EtherType::IPV4, proto, ports) ^ h))
}

/// An IPv4 header's more-fragments flag and fragment offset (of the flags and offset field):
/// any of them set, the packet is a fragment, the first included, and [`flow_hash`] leaves its
/// ports out, so that every fragment of a datagram hashes alike (as the kernel's flow
/// dissector and OVS do).
const V4_FRAGMENT_BITS: u16 = 0x3fff;

/// The IP protocols whose ports [`flow_hash`] takes (TCP, UDP, SCTP), by number: one load
/// instead of three compares.
static PORTS_PROTO: [bool; 256] = {
    let mut t = [false; 256];
    t[PROTO_TCP as usize] = true;
    t[PROTO_UDP as usize] = true;
    t[PROTO_SCTP as usize] = true;
    t
};

/// The constants of [`flow_fold`]'s steps (fractional digits of pi, as foldhash's).
const FLOW_K0: u64 = 0x243f_6a88_85a3_08d3;
const FLOW_K1: u64 = 0x1319_8a2e_0370_7344;
const FLOW_K2: u64 = 0xa409_3822_299f_31d0;

/// One step of [`flow_hash`]: the 128-bit product's halves xored.
#[inline(always)]
fn flow_fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ (p >> 64) as u64
}

/// [`flow_hash`]'s protocol word: EtherType, IP protocol and, when the hash takes them, the
/// ports as they lie in the frame.
#[inline(always)]
fn flow_key(ethertype: u16, proto: u8, ports: Option<u32>) -> u64 {
    let ports = ports.map_or(0, |p| u64::from(p) << 32 | 1 << 24);
    u64::from(ethertype) << 8 | u64::from(proto) | ports
}

/// The 32 bits of a [`flow_hash`]: the top half of the last step times an odd constant, each
/// bit of which depends on every bit of the step (the source port is the hash's top bits).
#[inline(always)]
fn flow_finish(h: u64) -> u32 {
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// [`flow_hash`] of any frame.
#[inline(never)]
fn flow_hash_any(frame: &[u8]) -> u32 {
    let word = |off: usize| -> u64 {
        frame.get(off..off + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let be16 = |off: usize| frame.get(off..off + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let ports_at = |off: usize| frame.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut h = flow_fold(word(0) ^ FLOW_K0, word(6) ^ FLOW_K1);
    let mut l3 = ETH_HEADER_LEN;
    let mut ethertype = be16(ETH_TYPE_OFFSET);
    if ethertype == EtherType::VLAN || ethertype == EtherType::QINQ {
        ethertype = be16(ETH_TYPE_OFFSET + VLAN_TAG_LEN);
        l3 += VLAN_TAG_LEN;
    }
    // IPv6's addresses are mixed into `h` here; IPv4's 8 bytes go with the protocol word.
    let (last, proto, at) = match ethertype {
        EtherType::IPV4 if frame.len() >= l3 + IPV4_HEADER_LEN => {
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            let whole = be16(l3 + V4_FRAG) & V4_FRAGMENT_BITS == 0;
            // Source and destination addresses are the 8 bytes from the source on.
            (word(l3 + V4_SRC), frame[l3 + V4_PROTO], whole.then_some(l3 + ihl))
        }
        EtherType::IPV6 if frame.len() >= l3 + IPV6_HEADER_LEN => {
            // Source, then destination: 16 bytes a step.
            for at in [l3 + V6_SRC, l3 + V6_DST] {
                h = flow_fold(word(at) ^ FLOW_K2, word(at + 8) ^ h);
            }
            (0, frame[l3 + V6_NEXT], Some(l3 + IPV6_HEADER_LEN))
        }
        _ => (0, 0, None),
    };
    let ports = match (proto, at) {
        (PROTO_TCP | PROTO_UDP | PROTO_SCTP, Some(at)) => Some(ports_at(at).unwrap_or(0)),
        _ => None,
    };
    flow_finish(flow_fold(last ^ FLOW_K2, flow_key(ethertype, proto, ports) ^ h))
}

/// The UDP source port for a flow hash: spread evenly over 49152-65535 (as the kernel's
/// `udp_flow_src_port` scales a hash into its range).
#[inline]
pub fn source_port(hash: u32) -> u16 {
    SOURCE_PORT_MIN + ((u64::from(hash) * SOURCE_PORT_SPAN) >> 32) as u16
}

/// Why an inner frame of `len` bytes cannot be sent through a tunnel whose largest inner
/// frame is `max_inner`: shorter than an Ethernet header, or too big (never fragmented).
#[inline]
pub fn inner_len_drop(len: usize, max_inner: usize) -> Option<DropReason> {
    if len < ETH_HEADER_LEN {
        Some(DropReason::Runt)
    } else if len > max_inner {
        Some(DropReason::TunnelMtu)
    } else {
        None
    }
}

/// The drop reason for a datagram the wire views refuse.
fn wire_reason(e: WireError) -> DropReason {
    match e {
        WireError::TruncatedTunnel(_) => DropReason::TunnelTruncated,
        WireError::GeneveOptionsPastEnd { .. }
        | WireError::GeneveBadOption
        | WireError::GeneveCriticalOption { .. } => DropReason::GeneveBadOptions,
        _ => DropReason::TunnelBadHeader,
    }
}

/// Where VXLAN's header and Geneve's base header both carry the 24-bit VNI (bytes 4-6).
const VNI_AT: usize = 4;

/// The VNI a datagram's header names, read alike for VXLAN and Geneve, nothing else checked:
/// how a socket shared by the tunnel ports of several VNIs picks the port a datagram is for
/// (that port's [`TunnelCodec::decap`] checks the header). `None`: shorter than a header.
#[inline]
pub fn peek_vni(datagram: &[u8]) -> Option<u32> {
    let h = datagram.first_chunk::<PLAIN_HEADER_LEN>()?;
    Some(u32::from_be_bytes([0, h[VNI_AT], h[VNI_AT + 1], h[VNI_AT + 2]]))
}

/// One tunnel's encapsulation: its kind and VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelCodec {
    pub kind: TunnelKind,
    pub vni: u32,
}

impl TunnelCodec {
    /// The first 8 bytes of a header that needs no more than one compare, as a mask and the
    /// value they must have: VXLAN with the I flag and this VNI; Geneve version 0 without
    /// options, O and C clear, protocol Ethernet, this VNI. Reserved bits are masked out
    /// (ignored, as both RFCs say).
    #[inline(always)]
    fn plain_header(&self) -> (u64, u64) {
        let vni = u64::from(self.vni & VNI_MAX) << 8;
        match self.kind {
            TunnelKind::Vxlan => (0x0800_0000_ffff_ff00, 0x0800_0000_0000_0000 | vni),
            TunnelKind::Geneve => (0xffc0_ffff_ffff_ff00, u64::from(GENEVE_PROTO_ETHERNET) << 32 | vni),
        }
    }

    /// Whether `datagram` starts with the plain header of [`TunnelCodec::plain_header`] and
    /// holds an Ethernet header after it: the common case, decided with one compare, whose
    /// answer is always `Ok(8)`.
    #[inline(always)]
    pub(crate) fn is_plain(&self, datagram: &[u8]) -> bool {
        let (mask, want) = self.plain_header();
        // One length check: the header and the inner Ethernet header.
        match datagram.first_chunk::<{ PLAIN_HEADER_LEN + ETH_HEADER_LEN }>() {
            Some(&[b0, b1, b2, b3, b4, b5, b6, b7, ..]) => {
                u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]) & mask == want
            }
            None => false,
        }
    }

    /// Where the inner frame starts in a received UDP payload, or why the datagram is dropped.
    #[inline]
    pub fn decap(&self, datagram: &[u8]) -> Result<usize, DropReason> {
        if self.is_plain(datagram) {
            return Ok(PLAIN_HEADER_LEN);
        }
        self.decap_checked(datagram)
    }

    /// [`TunnelCodec::decap`] through the wire views: every header, options included.
    fn decap_checked(&self, datagram: &[u8]) -> Result<usize, DropReason> {
        let (vni, off) = match self.kind {
            TunnelKind::Vxlan => {
                let p = VxlanPacket::new_checked(datagram).map_err(wire_reason)?;
                (p.vni(), VXLAN_HEADER_LEN)
            }
            TunnelKind::Geneve => {
                let p = GenevePacket::new_checked(datagram).map_err(wire_reason)?;
                if p.oam() || p.protocol() != GENEVE_PROTO_ETHERNET {
                    return Err(DropReason::TunnelBadHeader);
                }
                (p.vni(), p.header_len())
            }
        };
        if vni != self.vni {
            return Err(DropReason::TunnelWrongVni);
        }
        if datagram.len() < off + ETH_HEADER_LEN {
            return Err(DropReason::TunnelInnerRunt);
        }
        Ok(off)
    }

    /// Decapsulates a received datagram in place: `buf` keeps the inner frame.
    #[inline]
    pub fn decap_buf(&self, buf: &mut PacketBuf) -> Result<(), DropReason> {
        // The plain case trims a constant; the others, out of line, what the header says.
        if self.is_plain(buf.data()) {
            return buf.trim_front(PLAIN_HEADER_LEN).map_err(|_| DropReason::TunnelTruncated);
        }
        self.decap_buf_checked(buf)
    }

    /// [`TunnelCodec::decap_buf`] of a header that is not plain (options, another VNI, bad).
    #[cold]
    #[inline(never)]
    fn decap_buf_checked(&self, buf: &mut PacketBuf) -> Result<(), DropReason> {
        let off = self.decap_checked(buf.data())?;
        buf.trim_front(off).map_err(|_| DropReason::TunnelTruncated)
    }

    /// Writes the tunnel header in front of the inner frame in `buf` (into its headroom): the
    /// value the one-compare decapsulation accepts (VXLAN: the I flag and the VNI; Geneve:
    /// version 0, no options, Ethernet, the VNI), both kinds 8 bytes, in one store.
    #[inline]
    pub fn encap_buf(&self, buf: &mut PacketBuf) -> Result<(), BufferError> {
        buf.prepend(PLAIN_HEADER_LEN)?.copy_from_slice(&self.header());
        Ok(())
    }

    /// The 8-byte tunnel header [`TunnelCodec::encap_buf`] writes.
    #[inline]
    pub fn header(&self) -> [u8; PLAIN_HEADER_LEN] {
        self.plain_header().1.to_be_bytes()
    }
}

/// Most endpoints one tunnel port knows (flood list, static remotes and learned ones).
pub const MAX_ENDPOINTS: usize = 4096;
/// Most remote MACs one tunnel port holds.
pub const REMOTE_MACS: usize = 16384;

/// Failures of building a remote table.
#[derive(Debug, thiserror::Error)]
pub enum RemotesError {
    #[error("more than {MAX_ENDPOINTS} endpoints")]
    TooManyEndpoints,
    #[error("remote MAC {0} is not a unicast address")]
    NotUnicast(MacAddr),
    #[error("remote MAC {mac} given twice ({a} and {b})")]
    Duplicate { mac: MacAddr, a: IpAddr, b: IpAddr },
    #[error("remote MAC table: {0}")]
    Table(#[from] FdbError),
}

/// Where a tunnel port's inner frames go: the endpoints by index, the flood list, and the
/// remote MACs (static, and learned from received frames when learning is on).
///
/// Readers (TX and RX workers) take no lock; adding an endpoint never seen before (learning
/// from a new source address, or an update) takes one, off the common path. Updates
/// ([`Remotes::update`]) are serialised by the control plane (one reconcile at a time).
///
/// Which sources a port takes datagrams from ([`RemotesView::admits`]): with learning on,
/// any (a new source is learned); with learning off, only the endpoints the configuration
/// names now -- the flood list and the static remote MACs' endpoints -- as OVN's tunnel
/// ports take only their chassis' `remote_ip`. An endpoint an update left out keeps its index
/// but is no longer admitted.
pub struct Remotes {
    endpoints: Box<[OnceLock<IpAddr>]>,
    len: AtomicUsize,
    grow: Mutex<()>,
    /// By endpoint index, one bit each: named by the configuration now (flood list or a
    /// static MAC's endpoint).
    named: Box<[AtomicU64]>,
    flood: ArcSwap<Box<[u16]>>,
    /// The flood list's endpoint when the list has one, else [`NO_SOLE`]: set with it.
    sole: AtomicU32,
    macs: MacTable,
    learn: AtomicBool,
}

/// [`Remotes`]' `sole` when the flood list has not exactly one endpoint.
const NO_SOLE: u32 = u32::MAX;

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remotes")
            .field("endpoints", &self.len.load(Ordering::Relaxed))
            .field("flood", &**self.flood.load())
            .field("learn", &self.learns())
            .finish()
    }
}

/// The VLAN key of every remote MAC: the remote table is per VNI, the inner VLAN plays no part.
const ANY_VLAN: u16 = 0;

impl Remotes {
    /// A table with the flood list, the static remote MACs and learning on or off; learned
    /// entries age after `aging_s`.
    pub fn new(
        flood: &[IpAddr],
        statics: &[(MacAddr, IpAddr)],
        learn: bool,
        aging_s: u32,
    ) -> Result<Remotes, RemotesError> {
        let r = Remotes {
            endpoints: (0..MAX_ENDPOINTS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            grow: Mutex::new(()),
            named: (0..MAX_ENDPOINTS.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            flood: ArcSwap::from_pointee(Box::new([])),
            sole: AtomicU32::new(NO_SOLE),
            macs: MacTable::new(REMOTE_MACS, aging_s)?,
            learn: AtomicBool::new(learn),
        };
        r.update(flood, statics, learn)?;
        Ok(r)
    }

    /// Makes the flood list, the static remote MACs and learning these, in place, while
    /// readers run: new endpoints are added (indices never change), every static MAC of
    /// `statics` is stored at its endpoint (a moved MAC in one store), static MACs no longer
    /// listed are removed, the flood list is swapped whole. Turning learning off forgets the
    /// learned MACs. A refused update (a bad or duplicate MAC) changes nothing; one that runs
    /// out of room (endpoints, MAC table) may have stored part of the new statics.
    pub fn update(
        &self,
        flood: &[IpAddr],
        statics: &[(MacAddr, IpAddr)],
        learn: bool,
    ) -> Result<(), RemotesError> {
        let mut seen: HashSet<MacAddr> = HashSet::with_capacity(statics.len());
        for (k, (mac, ip)) in statics.iter().enumerate() {
            if mac.is_multicast() || mac.is_zero() {
                return Err(RemotesError::NotUnicast(*mac));
            }
            if !seen.insert(*mac) {
                let (_, a) = statics[..k].iter().find(|(m, _)| m == mac).copied().unwrap_or((*mac, *ip));
                return Err(RemotesError::Duplicate { mac: *mac, a, b: *ip });
            }
        }
        let mut fl = Vec::with_capacity(flood.len());
        for ip in flood {
            let i = self.endpoint_index(*ip, true).ok_or(RemotesError::TooManyEndpoints)?;
            if !fl.contains(&i) {
                fl.push(i);
            }
        }
        let mut named = vec![0u64; self.named.len()];
        for &i in &fl {
            named[usize::from(i) / 64] |= 1 << (i % 64);
        }
        for (mac, ip) in statics {
            let i = self.endpoint_index(*ip, true).ok_or(RemotesError::TooManyEndpoints)?;
            self.macs.insert_static(ANY_VLAN, *mac, i)?;
            named[usize::from(i) / 64] |= 1 << (i % 64);
        }
        // New endpoints admitted before old ones are let go: a reader between the two stores
        // admits both, never neither.
        for (w, n) in self.named.iter().zip(&named) {
            w.fetch_or(*n, Ordering::Relaxed);
        }
        for (w, n) in self.named.iter().zip(&named) {
            w.fetch_and(*n, Ordering::Relaxed);
        }
        self.macs.remove_where(|_, mac, _, is_static| is_static && !seen.contains(&mac));
        let sole = match fl[..] {
            [e] => u32::from(e),
            _ => NO_SOLE,
        };
        self.flood.store(Arc::new(fl.into_boxed_slice()));
        self.sole.store(sole, Ordering::Relaxed);
        if !learn && self.learn.swap(false, Ordering::Relaxed) {
            self.macs.flush_dynamic();
        }
        self.learn.store(learn, Ordering::Relaxed);
        Ok(())
    }

    /// The index of endpoint `ip`, added when `add` and there is room.
    fn endpoint_index(&self, ip: IpAddr, add: bool) -> Option<u16> {
        let find = |n: usize| (0..n).find(|&i| self.endpoints[i].get() == Some(&ip));
        if let Some(i) = find(self.len.load(Ordering::Acquire)) {
            return Some(i as u16);
        }
        if !add {
            return None;
        }
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.len.load(Ordering::Acquire);
        if let Some(i) = find(n) {
            return Some(i as u16);
        }
        let slot = self.endpoints.get(n)?;
        let _ = slot.set(ip);
        self.len.store(n + 1, Ordering::Release);
        Some(n as u16)
    }

    /// The index of endpoint `ip` when it is known.
    pub fn index_of(&self, ip: IpAddr) -> Option<u16> {
        self.endpoint_index(ip, false)
    }

    /// The endpoint at `i`.
    #[inline]
    pub fn endpoint(&self, i: u16) -> Option<IpAddr> {
        self.endpoints.get(usize::from(i)).and_then(|s| s.get().copied())
    }

    /// The flood list's endpoint indices, as they are now (a TX burst loads it once).
    #[inline]
    pub fn flood(&self) -> Guard<Arc<Box<[u16]>>> {
        self.flood.load()
    }

    /// Every endpoint known, in index order.
    pub fn endpoints(&self) -> Vec<IpAddr> {
        (0..self.len.load(Ordering::Acquire)).filter_map(|i| self.endpoints[i].get().copied()).collect()
    }

    /// Where a frame to `dst` goes at `now` (seconds): one endpoint for a known unicast MAC,
    /// `None` for broadcast, multicast and unknown unicast (the flood list).
    #[inline]
    pub fn lookup(&self, dst: MacAddr, now: u32) -> Option<u16> {
        self.view().lookup(dst, now)
    }

    /// The one endpoint there is, when it is also the whole flood list: every frame goes
    /// there, known or not (a port with one remote). Two atomic loads, no reference taken.
    #[inline]
    pub fn sole_endpoint(&self) -> Option<u16> {
        let s = self.sole.load(Ordering::Relaxed);
        (s != NO_SOLE && self.endpoint_count() == 1).then_some(s as u16)
    }

    /// How many endpoints are known (indices `0..n`).
    #[inline]
    pub fn endpoint_count(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The table as a burst reads it: the remote MAC table's parameters and whether learning
    /// is on, read once ([`RemotesView`]).
    #[inline]
    pub fn view(&self) -> RemotesView<'_> {
        let sole = self.sole_endpoint().map_or(NO_SOLE, u32::from);
        RemotesView { macs: self.macs.view(), learn: self.learns(), sole, remotes: self }
    }

    /// Learns that `src` lives behind `from` (when learning is on, `src` is a unicast MAC not
    /// held by a static entry, and `from` is not the port's sole endpoint: [`RemotesView`]).
    #[inline]
    pub fn learn(&self, src: MacAddr, from: IpAddr, now: u32) {
        if let Some(i) = self.learning_index(from) {
            self.learn_at(src, i, now);
        }
    }

    /// The index to learn `from` under (added when new), `None` when learning is off or the
    /// endpoints are full. A receiver keeps it for the next datagram from the same address.
    pub fn learning_index(&self, from: IpAddr) -> Option<u16> {
        if self.learns() {
            self.endpoint_index(from, true)
        } else {
            None
        }
    }

    /// Learns that `src` lives behind endpoint `i` (from [`Remotes::learning_index`]), as
    /// [`Remotes::learn`] does.
    #[inline]
    pub fn learn_at(&self, src: MacAddr, i: u16, now: u32) {
        self.view().learn_at(src, i, now)
    }

    /// Whether learning is on.
    #[inline]
    pub fn learns(&self) -> bool {
        self.learn.load(Ordering::Relaxed)
    }

    /// Whether endpoint `i` is named by the configuration now (the flood list or a static
    /// MAC's endpoint).
    #[inline]
    pub fn is_named(&self, i: u16) -> bool {
        self.named.get(usize::from(i) / 64).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
    }

    /// By endpoint index, whether a frame can go there at `now`: it is in the flood list or
    /// holds a remote MAC (static, or learned and not aged out). Off the per-frame path: a
    /// walk of the remote MAC table, with no allocation but the result's.
    pub fn endpoints_in_use(&self, now: u32) -> Vec<bool> {
        let mut used = vec![false; self.endpoint_count()];
        let mut mark = |i: u16| {
            if let Some(u) = used.get_mut(usize::from(i)) {
                *u = true;
            }
        };
        for &i in self.flood.load().iter() {
            mark(i);
        }
        self.macs.each_live_port(now, mark);
        used
    }

    /// Every remote MAC with its endpoint and whether it is static (for `show`).
    pub fn macs(&self, now: u32) -> Vec<(MacAddr, IpAddr, bool)> {
        self.macs
            .entries(now)
            .into_iter()
            .filter_map(|e| Some((e.mac, self.endpoint(e.port)?, e.is_static)))
            .collect()
    }
}

/// A burst's reading of a [`Remotes`]: lookups and learning as through the table, with the
/// MAC table's parameters ([`crate::fdb::FdbView`]), the learning switch and the sole endpoint
/// ([`Remotes::sole_endpoint`]) as they were when the view was taken.
///
/// A MAC behind the sole endpoint is not learned: while a port has one endpoint, every frame
/// goes there, known or not, so the entry would never be read (a port with one `remote_ip` in
/// OVS learns none either), and the per-packet probe of the remote table is saved. When a
/// second endpoint appears (learned from a new source, or in an updated flood list), learning
/// starts with the next packet of each source; until then a frame to a MAC behind the first
/// endpoint is flooded to the flood list, as an unknown MAC is.
#[derive(Clone, Copy)]
pub struct RemotesView<'a> {
    macs: FdbView<'a>,
    learn: bool,
    /// [`Remotes::sole_endpoint`] when the view was taken, or [`NO_SOLE`].
    sole: u32,
    remotes: &'a Remotes,
}

impl RemotesView<'_> {
    /// [`Remotes::lookup`].
    #[inline]
    pub fn lookup(&self, dst: MacAddr, now: u32) -> Option<u16> {
        if dst.is_multicast() {
            return None;
        }
        self.macs.lookup_probe(&self.macs.probe_u64(ANY_VLAN, dst.to_u64()), now).map(|h| h.port)
    }

    /// Whether a datagram from the source at endpoint index `i` is taken: with learning on,
    /// always; with learning off, when the configuration names the endpoint now (one atomic
    /// load). A source with no index at all is taken only with learning on.
    #[inline]
    pub fn admits(&self, i: Option<u16>) -> bool {
        self.learn || i.is_some_and(|i| self.remotes.is_named(i))
    }

    /// [`Remotes::learn_at`].
    #[inline]
    pub fn learn_at(&self, src: MacAddr, i: u16, now: u32) {
        if self.learn && u32::from(i) != self.sole && !src.is_multicast() && !src.is_zero() {
            self.macs.learn_probe(&self.macs.probe_u64(ANY_VLAN, src.to_u64()), i, now, u32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Pool;
    use std::net::Ipv4Addr;

    fn frame() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    }

    #[test]
    fn mtu_overheads_are_the_rfcs() {
        assert_eq!(TunnelKind::Vxlan.mtu_overhead(false), 50);
        assert_eq!(TunnelKind::Geneve.mtu_overhead(false), 58);
        assert_eq!(TunnelKind::Vxlan.mtu_overhead(true), 70);
        assert_eq!(TunnelKind::Geneve.mtu_overhead(true), 78);
        assert_eq!(TunnelKind::Vxlan.overlay_mtu(false, 1500), 1450);
        // A 1450-byte IP packet in a 14-byte Ethernet header fills a 1500-byte underlay.
        assert_eq!(TunnelKind::Vxlan.max_inner_frame(false, 1500), 1464);
    }

    #[test]
    fn encap_then_decap_gives_the_frame_back() {
        let pool = Pool::new("t", 4).unwrap();
        for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
            let c = TunnelCodec { kind, vni: 5001 };
            let mut b = pool.alloc().unwrap();
            b.extend_from_slice(&frame()).unwrap();
            c.encap_buf(&mut b).unwrap();
            assert_eq!(b.len(), frame().len() + kind.header_len());
            c.decap_buf(&mut b).unwrap();
            assert_eq!(b.data(), &frame()[..]);
        }
    }

    #[test]
    fn decap_drops_are_named() {
        let c = TunnelCodec { kind: TunnelKind::Vxlan, vni: 5001 };
        let mut d = vec![0x08, 0, 0, 0, 0, 0x13, 0x89, 0];
        d.extend_from_slice(&frame());
        assert_eq!(c.decap(&d), Ok(8));
        assert_eq!(c.decap(&d[..5]), Err(DropReason::TunnelTruncated));
        assert_eq!(c.decap(&d[..8 + 13]), Err(DropReason::TunnelInnerRunt));
        assert_eq!(TunnelCodec { vni: 5002, ..c }.decap(&d), Err(DropReason::TunnelWrongVni));
        let mut no_i = d.clone();
        no_i[0] = 0;
        assert_eq!(c.decap(&no_i), Err(DropReason::TunnelBadHeader));
        let g = TunnelCodec { kind: TunnelKind::Geneve, vni: 5001 };
        let mut gd = vec![0, 0, 0x65, 0x58, 0, 0x13, 0x89, 0];
        gd.extend_from_slice(&frame());
        assert_eq!(g.decap(&gd), Ok(8));
        let mut oam = gd.clone();
        oam[1] = 0x80;
        assert_eq!(g.decap(&oam), Err(DropReason::TunnelBadHeader));
        let mut ip = gd.clone();
        ip[2..4].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(g.decap(&ip), Err(DropReason::TunnelBadHeader));
        let mut past = gd.clone();
        past[0] = 63;
        assert_eq!(g.decap(&past), Err(DropReason::GeneveBadOptions));
    }

    #[test]
    fn geneve_plain_and_walked_headers_agree() {
        let g = TunnelCodec { kind: TunnelKind::Geneve, vni: 5001 };
        let mut gd = vec![0, 0, 0x65, 0x58, 0, 0x13, 0x89, 0];
        gd.extend_from_slice(&frame());
        // Reserved flag bits and the reserved byte are ignored on both paths.
        for (b1, b7) in [(0, 0), (0x3f, 0xff)] {
            let mut d = gd.clone();
            d[1] = b1;
            d[7] = b7;
            assert_eq!(g.decap(&d), Ok(8));
            assert_eq!(g.decap(&d[..8 + 13]), Err(DropReason::TunnelInnerRunt));
            assert_eq!(TunnelCodec { vni: 5002, ..g }.decap(&d), Err(DropReason::TunnelWrongVni));
        }
        // One 4-byte option takes the walked path and gives the same answers.
        let mut opt = vec![1, 0, 0x65, 0x58, 0, 0x13, 0x89, 0, 1, 2, 3, 0];
        opt.extend_from_slice(&frame());
        assert_eq!(g.decap(&opt), Ok(12));
        assert_eq!(g.decap(&opt[..12 + 13]), Err(DropReason::TunnelInnerRunt));
        let mut v1 = gd.clone();
        v1[0] = 0x40;
        assert_eq!(g.decap(&v1), Err(DropReason::TunnelBadHeader));
        for n in 0..8 {
            assert_eq!(g.decap(&gd[..n]), Err(DropReason::TunnelTruncated));
        }
    }

    #[test]
    fn source_ports_follow_the_inner_flow() {
        // IPv4/UDP 10.0.0.1:1000 -> 10.0.0.2:2000 behind MACs.
        let udp = |sport: u16, tag: bool| {
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
            if tag {
                f.extend_from_slice(&[0x81, 0x00, 0, 10]);
            }
            f.extend_from_slice(&[
                0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
            ]);
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&[0x07, 0xd0, 0, 8, 0, 0]);
            f
        };
        assert_eq!(flow_hash(&udp(1000, false)), flow_hash(&udp(1000, false)));
        assert_ne!(flow_hash(&udp(1000, false)), flow_hash(&udp(1001, false)));
        assert_ne!(flow_hash(&udp(1000, true)), flow_hash(&udp(1001, true)));
        // 4096 source ports of one host pair spread over the range: every port in range,
        // and most of the 64 sixteenths of it used.
        let mut seen = [false; 64];
        for sport in 0..4096u16 {
            let p = source_port(flow_hash(&udp(sport, false)));
            assert!(p >= SOURCE_PORT_MIN);
            seen[usize::from(p - SOURCE_PORT_MIN) / 256] = true;
        }
        assert!(seen.iter().filter(|&&s| s).count() >= 60, "{seen:?}");
        assert_eq!(source_port(0), 49152);
        assert_eq!(source_port(u32::MAX), 65535);
        // Anything, however short, hashes without a panic.
        for n in 0..udp(1, true).len() {
            flow_hash(&udp(1, true)[..n]);
        }
    }

    /// The one-length-check hash of untagged IPv4 is the general one: every byte of a TCP,
    /// a UDP and an ICMP frame (headers and ports) set to every value, every truncation and
    /// padding.
    #[test]
    fn flow_hash_of_plain_ipv4_is_the_general_one() {
        let mut fast = 0;
        for proto in [6u8, 17, 1] {
            let mut base = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            base.extend_from_slice(&[0x45, 0, 0, 46, 0, 1, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            base.extend_from_slice(&[0x13, 0x88, 0x07, 0xd0, 0, 26, 0, 0]);
            base.resize(60, 0x5a);
            let mut check = |f: &[u8]| {
                assert_eq!(flow_hash(f), flow_hash_any(f), "frame {f:02x?}");
                fast += usize::from(f.len() >= 38 && f[12..14] == [8, 0] && f[14] & 0x0f == 5);
            };
            for at in 0..42 {
                for v in 0..=255u8 {
                    let mut f = base.clone();
                    f[at] = v;
                    check(&f);
                }
            }
            for n in 0..base.len() {
                check(&base[..n]);
            }
            let mut padded = base.clone();
            padded.extend_from_slice(&[0xaa; 40]);
            check(&padded);
        }
        assert!(fast > 3 * 30 * 256, "{fast} frames took the one-check path");
    }

    #[test]
    fn remotes_static_learned_and_flood() {
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
        let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        let m1 = MacAddr([2, 0, 0, 0, 0xb, 1]);
        let m2 = MacAddr([2, 0, 0, 0, 0xb, 2]);
        let r = Remotes::new(&[a, b, a], &[(m1, a)], true, 300).unwrap();
        assert_eq!(r.flood()[..], [0, 1]);
        assert_eq!(r.lookup(m1, 0).and_then(|i| r.endpoint(i)), Some(a));
        assert_eq!(r.lookup(MacAddr::BROADCAST, 0), None);
        assert_eq!(r.lookup(m2, 0), None);
        // Learning from a new endpoint adds it; a static MAC never moves.
        r.learn(m2, c, 1);
        r.learn(m1, b, 1);
        assert_eq!(r.lookup(m2, 1).and_then(|i| r.endpoint(i)), Some(c));
        assert_eq!(r.lookup(m1, 1).and_then(|i| r.endpoint(i)), Some(a));
        assert_eq!(r.endpoints(), vec![a, b, c]);
        let off = Remotes::new(&[a], &[], false, 300).unwrap();
        off.learn(m2, c, 1);
        assert_eq!(off.lookup(m2, 1), None);
        assert!(matches!(
            Remotes::new(&[], &[(m1, a), (m1, b)], true, 300),
            Err(RemotesError::Duplicate { .. })
        ));
        assert!(matches!(
            Remotes::new(&[], &[(MacAddr::BROADCAST, a)], true, 300),
            Err(RemotesError::NotUnicast(_))
        ));
    }

    /// `sole_endpoint` is the flood list's endpoint exactly while it is the only endpoint
    /// and the whole list, through updates and learning.
    #[test]
    fn sole_endpoint_follows_the_flood_list_and_the_endpoints() {
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
        let r = Remotes::new(&[ip(2)], &[], true, 300).unwrap();
        assert_eq!(r.sole_endpoint(), Some(0));
        r.update(&[ip(2), ip(3)], &[], true).unwrap();
        assert_eq!(r.sole_endpoint(), None, "two in the flood list");
        let r = Remotes::new(&[], &[], true, 300).unwrap();
        assert_eq!(r.sole_endpoint(), None, "no endpoint");
        r.update(&[ip(3)], &[], true).unwrap();
        assert_eq!(r.sole_endpoint(), Some(0));
        r.learn(MacAddr([2, 0, 0, 0, 0xb, 1]), ip(4), 1);
        assert_eq!(r.sole_endpoint(), None, "a second endpoint learned");
        let r = Remotes::new(&[ip(2), ip(3)], &[], true, 300).unwrap();
        r.update(&[ip(3)], &[], true).unwrap();
        assert_eq!(r.sole_endpoint(), None, "one in the flood list, two endpoints known");
    }

    /// A MAC behind the sole endpoint is not learned (every frame goes there anyway); once a
    /// second endpoint is in the flood list, the next packet of that MAC is learned, and a
    /// MAC from a second, learned endpoint is learned at once.
    #[test]
    fn a_sole_endpoint_learns_nothing_until_a_second_appears() {
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
        let m = |n: u8| MacAddr([2, 0, 0, 0, 0xb, n]);
        let r = Remotes::new(&[ip(2)], &[], true, 300).unwrap();
        r.learn(m(1), ip(2), 1);
        assert_eq!(r.lookup(m(1), 1), None, "behind the sole endpoint: not learned");
        assert_eq!(r.sole_endpoint(), Some(0));
        r.update(&[ip(2), ip(3)], &[], true).unwrap();
        r.learn(m(1), ip(2), 2);
        assert_eq!(r.lookup(m(1), 2).and_then(|i| r.endpoint(i)), Some(ip(2)), "two endpoints");
        // One endpoint again in the flood list, but two known: no longer sole, learned.
        let r = Remotes::new(&[ip(2)], &[], true, 300).unwrap();
        r.learn(m(2), ip(4), 1);
        assert_eq!(r.lookup(m(2), 1).and_then(|i| r.endpoint(i)), Some(ip(4)), "a new source");
        r.learn(m(1), ip(2), 1);
        assert_eq!(r.lookup(m(1), 1).and_then(|i| r.endpoint(i)), Some(ip(2)));
        // A view taken while sole keeps that reading for its burst: a second endpoint learned
        // meanwhile counts from the next view on.
        let r = Remotes::new(&[ip(2)], &[], true, 300).unwrap();
        let v = r.view();
        r.learn(m(2), ip(4), 1);
        v.learn_at(m(1), 0, 1);
        assert_eq!(r.lookup(m(1), 1), None, "the view's reading: sole");
        r.view().learn_at(m(1), 0, 1);
        assert_eq!(r.lookup(m(1), 1).and_then(|i| r.endpoint(i)), Some(ip(2)), "a new view");
    }

    #[test]
    fn remotes_update_in_place() {
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
        let m = |n: u8| MacAddr([2, 0, 0, 0, 0xb, n]);
        let r = Remotes::new(&[ip(2), ip(3)], &[(m(1), ip(2)), (m(2), ip(3))], true, 300).unwrap();
        r.learn(m(9), ip(4), 1);
        assert_eq!(r.lookup(m(9), 1).and_then(|i| r.endpoint(i)), Some(ip(4)));
        // m1 moves to a new endpoint, m2 is no longer remote, m3 is new; the flood list
        // becomes [3, 5]; learning goes off, so the learned m9 is forgotten.
        r.update(&[ip(3), ip(5)], &[(m(1), ip(5)), (m(3), ip(3))], false).unwrap();
        assert_eq!(r.lookup(m(1), 2).and_then(|i| r.endpoint(i)), Some(ip(5)));
        assert_eq!(r.lookup(m(2), 2), None);
        assert_eq!(r.lookup(m(3), 2).and_then(|i| r.endpoint(i)), Some(ip(3)));
        assert_eq!(r.lookup(m(9), 2), None);
        assert!(!r.learns());
        // Indices of known endpoints never change; the new one is appended.
        assert_eq!(r.endpoints(), vec![ip(2), ip(3), ip(4), ip(5)]);
        assert_eq!(r.flood()[..], [1, 3]);
        // A refused update changes nothing.
        assert!(matches!(
            r.update(&[], &[(m(1), ip(2)), (m(1), ip(3))], true),
            Err(RemotesError::Duplicate { .. })
        ));
        assert_eq!(r.lookup(m(1), 2).and_then(|i| r.endpoint(i)), Some(ip(5)));
        assert_eq!(r.flood()[..], [1, 3]);
        assert!(!r.learns());
    }

    #[test]
    fn peek_vni_reads_both_headers() {
        let mut f = frame();
        for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
            let pool = Pool::new("t", 2).unwrap();
            let mut b = pool.alloc().unwrap();
            b.extend_from_slice(&f).unwrap();
            TunnelCodec { kind, vni: 0xabcdef }.encap_buf(&mut b).unwrap();
            assert_eq!(peek_vni(b.data()), Some(0xabcdef), "{kind:?}");
            assert_eq!(peek_vni(&b.data()[..7]), None);
        }
        f.truncate(0);
        assert_eq!(peek_vni(&f), None);
    }

    /// The fragments of one IPv4 datagram share one source port (one underlay path), the
    /// first included: none of them hashes its ports, as the kernel's flow dissector and OVS
    /// hash fragments (found by s15v's review: the first fragment took its ports).
    #[test]
    fn fragments_of_one_datagram_share_a_source_port() {
        let frag = |flags_off: u16| {
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            f.extend_from_slice(&[0x45, 0, 0, 60, 0x12, 0x34]);
            f.extend_from_slice(&flags_off.to_be_bytes());
            f.extend_from_slice(&[64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            f.extend_from_slice(&[0x13, 0x88, 0x07, 0xd0, 0, 40, 0, 0]);
            f.resize(74, 0x5a);
            f
        };
        let first = source_port(flow_hash(&frag(0x2000)));
        let later = source_port(flow_hash(&frag(0x00b9)));
        let last = source_port(flow_hash(&frag(0x0172)));
        assert_eq!(later, last);
        assert_eq!(first, later, "first fragment {first}, later ones {later}");
        // A whole datagram (DF alone) takes its ports: another flow's port.
        let whole = source_port(flow_hash(&frag(0x4000)));
        let other = {
            let mut f = frag(0x4000);
            f[34] ^= 1;
            source_port(flow_hash(&f))
        };
        assert_ne!(whole, other, "the ports count for a whole datagram");
    }

    /// With learning off the table admits exactly the endpoints the configuration names now
    /// (flood list, static MACs' endpoints); an endpoint an update leaves out keeps its index
    /// but is no longer admitted; with learning on every source is.
    #[test]
    fn learning_off_admits_only_named_endpoints() {
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
        let m = MacAddr([2, 0, 0, 0, 0, 9]);
        let r = Remotes::new(&[ip(2)], &[(m, ip(3))], false, 300).unwrap();
        let (a, b) = (r.index_of(ip(2)), r.index_of(ip(3)));
        assert!(r.view().admits(a) && r.view().admits(b));
        assert!(!r.view().admits(None), "an unknown source");
        r.update(&[ip(2)], &[], false).unwrap();
        assert_eq!(r.index_of(ip(3)), b, "the index stays");
        assert!(r.view().admits(a) && !r.view().admits(b));
        r.update(&[ip(4)], &[(m, ip(2))], false).unwrap();
        assert!(r.view().admits(a) && r.view().admits(r.index_of(ip(4))) && !r.view().admits(b));
        r.update(&[ip(2)], &[], true).unwrap();
        assert!(r.view().admits(None) && r.view().admits(b));
    }
}
