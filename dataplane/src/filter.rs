//! The policy stage (docs/policy.md), run over a burst only on bridges where some port has a
//! policy or an IP spoof filter ([`crate::switch::Bridge::filter`]).
//!
//! Two halves, because the receiving port of a frame is known only at the last stage:
//! - [`ingress`] (after the MAC spoof check, before learning, so that a refused frame teaches
//!   nothing): the sender's IP spoof filter, then connection tracking (a reply of a tracked
//!   connection, or an ICMP error quoting one, passes), then the sender's egress policy.
//! - [`admit`] (for each port the frame is about to be queued to): the receiver's ingress
//!   policy, then the connection is committed to the table.
//!
//! Stateful as OVN-Kubernetes' `allow-related` ACLs: packets of a connection's original
//! direction are checked against the policies as they are now (every packet: the entry's
//! verdict, see [`crate::conntrack::verdict`], stands for the classifiers while the snapshot
//! and the ports are the same), replies pass while the connection is tracked; once the original direction is denied the connection is
//! marked blocked and its replies stop too. ARP, IPv6 neighbour discovery and MLD always pass
//! the policies (the spoof filters still check ARP's sender addresses and neighbour
//! discovery's claims); non-IP frames are not subject to policies.

use crate::conntrack::{verdict, Conntrack, Dir, Fast, FastProbe, FastView, PackedKey, Steady};
use crate::port::Burst;
use crate::switch::{DropReason, PortId, PortSpec};
use crate::wire::ip::{
    parse_l3, simple_v4_at, simple_v4_flow, FlowKey, IpFlow, IpKind, SimpleV4, L3, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};
use arrayvec::ArrayVec;
use std::net::{IpAddr, Ipv4Addr};

/// Why the stage let a frame on (for traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Note {
    /// Not IP (ARP included): no policy applies.
    #[default]
    NotIp,
    NeighborDiscovery,
    /// MLD to a multicast MAC.
    Mld,
    /// A reply of a tracked connection.
    Reply,
    /// An ICMP error quoting a tracked connection's packet.
    Related,
    /// Original direction: checked against the policies.
    Checked,
}

/// What [`ingress`] found out about one frame, for [`admit`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterMeta {
    pub note: Note,
    flow: Option<IpFlow>,
    /// The sender's egress rule that allowed it.
    pub egress_rule: Option<u32>,
    /// The last receiver's ingress rule that allowed it.
    pub ingress_rule: Option<u32>,
    committed: bool,
    /// The receiving port named by the connection entry's verdict, when that verdict is the
    /// running snapshot's for this sending port: the egress classifier was skipped, and the
    /// ingress one is skipped for that port.
    verdict_to: Option<PortId>,
}

/// Whether verdict `v` is the running snapshot's (epoch `epoch`, not 0) for ingress port `from`.
#[inline]
fn stands(v: u64, epoch: u32, from: PortId) -> bool {
    epoch != 0 && v >> 16 == verdict(epoch, from, 0) >> 16
}

/// What the policy stage needs besides the frame: the bridge's connection table, the clock
/// (seconds) and the policy epoch of the running snapshot (0: use no stored verdicts, as
/// traces do, which must name the rules).
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub ct: Option<&'a Conntrack>,
    pub now: u32,
    pub epoch: u32,
}

/// Whether `k` is an ICMP message that is no request (a reply, an error not related to a
/// tracked connection, any other type: source port 0, see [`FlowKey`]): it opens no
/// connection, so that nothing the other way passes as its reply. Linux conntrack calls such
/// a message invalid when it comes first (which OVN drops); here the policies decide it, and
/// it is not tracked. (An echo request of identifier 0 reads the same: not tracked either.)
#[inline]
fn icmp_answer(k: &FlowKey) -> bool {
    matches!(k.proto, crate::wire::ip::PROTO_ICMP | crate::wire::ip::PROTO_ICMPV6) && k.sport == 0
}

/// The destination port a policy rule sees: TCP, UDP and SCTP have one, other protocols 0.
fn l4_port(k: &FlowKey) -> u16 {
    match k.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => k.dport,
        _ => 0,
    }
}

/// Whether the port's IP spoof filter lets `key`'s source through, in a frame from MAC `mac`
/// (as [`crate::wire::MacAddr::to_u64`] holds it; `icmp`: the packet's ICMPv6 type and code,
/// [`IpFlow::icmp`]): one of the port's addresses; or the IPv6 link-local address derived from
/// `mac` ([`eui64_link_local`]: the guest's own, as OVN's port security allows it; `mac` is
/// [`lla_mac`]'s, none on a port without a MAC spoof filter); or one of the two exceptions for
/// an address not configured yet that OVN's port security makes, and only those: from `::`,
/// duplicate address detection and its MLD reports ([`unspecified_v6_allowed`]), from
/// `0.0.0.0`, a DHCP request ([`unspecified_v4_allowed`]). Any other link-local source is
/// refused: a VM could otherwise send from its router's `fe80::` address (a neighbour
/// solicitation from it, with the VM's MAC as its source link-layer address, puts the VM in
/// its neighbours' caches as the router). A guest with another link-local address (RFC 7217
/// stable privacy) is allowed it when its VMI status reports it (then it is in the list).
fn src_allowed(list: &[IpAddr], key: &FlowKey, icmp: Option<(u8, u8)>, mac: u64) -> bool {
    let src = key.src_ip();
    if list.contains(&src) {
        return true;
    }
    match src {
        IpAddr::V6(_) => {
            (key.src == 0 && unspecified_v6_allowed(key, icmp))
                || (mac != NO_MAC && key.src == eui64_link_local(mac))
        }
        IpAddr::V4(a) => a.is_unspecified() && unspecified_v4_allowed(key),
    }
}

/// What a port may send from `::` (`key`'s source; `icmp`: the ICMPv6 type and code), as OVN's
/// port security allows it (ovn-controller's `build_in_port_sec_ip6_flows`: `ip6.src == :: &&
/// ip6.dst == ff02::/16 && icmp6 && icmp6.code == 0 && icmp6.type == {131, 135, 143}`): a
/// neighbour solicitation (135, duplicate address detection, RFC 4862 5.4) or an MLDv1 or
/// MLDv2 report (131, 143: the solicited-node group joined before it, RFC 3810 5.2.13) to a
/// link-local multicast group. Anything else from `::` (UDP, TCP, an echo request, a message
/// to a unicast address, a router solicitation) names no sender and is refused.
#[inline]
fn unspecified_v6_allowed(key: &FlowKey, icmp: Option<(u8, u8)>) -> bool {
    key.proto == crate::wire::ip::PROTO_ICMPV6
        && key.dst >> 112 == 0xff02
        && matches!(icmp, Some((131 | 135 | 143, 0)))
}

/// What a port may send from `0.0.0.0` (`key`'s source), as OVN's port security allows it
/// (`build_in_port_sec_ip4_flows`: `ip4.src == 0.0.0.0 && ip4.dst == 255.255.255.255 &&
/// udp.src == 68 && udp.dst == 67`): a DHCP client's broadcast, before it has an address.
#[inline]
fn unspecified_v4_allowed(key: &FlowKey) -> bool {
    key.proto == PROTO_UDP && key.sport == 68 && key.dport == 67 && key.dst == u128::from(u32::MAX)
}

/// No MAC ([`lla_mac`]): not a 48-bit value, so no frame's source MAC.
const NO_MAC: u64 = u64::MAX;

/// The MAC whose EUI-64 link-local address a frame from MAC `mac` on `port` may use: `mac`
/// where the port's MAC spoof filter checked it (`allowed_macs`), else [`NO_MAC`]. On a port
/// without one, the guest chooses its source MAC, so the address derived from it would let it
/// send as its router (the router's MAC and its EUI-64 address, its own MAC in the link-layer
/// option: a MAC move in the table and neighbours' caches poisoned); the plan lists such a
/// port's own link-local address in `allowed_ips` instead, from the VM's MAC.
#[inline(always)]
fn lla_mac(port: &PortSpec, mac: u64) -> u64 {
    if port.allowed_macs.is_some() {
        mac
    } else {
        NO_MAC
    }
}

/// The IPv6 link-local address that SLAAC derives from MAC `mac` (modified EUI-64, RFC 4291
/// appendix A: `fe80::` with the MAC split by `ff:fe` and its universal/local bit flipped).
#[inline]
pub fn eui64_link_local(mac: u64) -> u128 {
    let iid = ((mac >> 24) << 40 | 0xfffe << 24 | (mac & 0xff_ffff)) ^ (0x02 << 56);
    0xfe80 << 112 | u128::from(iid)
}

/// Whether an IPv6 address (a neighbour advertisement's target, a source) is one that a port
/// with `allowed_ips` `list` may claim in a frame from MAC `mac`: one of its addresses or the
/// link-local address derived from `mac` (OVN's port security: `nd.target == {lla, ip6}`).
fn v6_claim_allowed(list: &[IpAddr], a: u128, mac: u64) -> bool {
    (mac != NO_MAC && a == eui64_link_local(mac)) || list.contains(&IpAddr::V6(std::net::Ipv6Addr::from(a)))
}

/// The payload of the frame `d` (`tagged`: with an 802.1Q tag, whose length the caller
/// checked), read for [`ingress`]: its EtherType and what it holds, behind any VLAN tags
/// stacked inside the one the port read ([`crate::wire::inner_ethertype`]: a guest reads
/// what they carry; a frame that ends inside them is malformed).
#[inline]
pub fn parse(d: &[u8], tagged: bool) -> (u16, L3) {
    let off = if tagged { crate::wire::ETH_VLAN_HEADER_LEN } else { crate::wire::ETH_HEADER_LEN };
    match (d.get(off - 2), d.get(off - 1)) {
        (Some(a), Some(b)) => {
            let et = u16::from_be_bytes([*a, *b]);
            if et == crate::wire::EtherType::VLAN || et == crate::wire::EtherType::QINQ {
                return parse_stacked(d, off);
            }
            (et, parse_l3(et, d.get(off..).unwrap_or_default()))
        }
        _ => (0, L3::Malformed),
    }
}

/// [`FastKeys::push`] for a frame that is not a simple IPv4 packet (its IP header at `l3`):
/// its key (in VLAN `vlan`) and TCP flags when it is an IP packet of a flow whose source
/// passes the port's IP spoof filter (`mac`: the frame's source MAC). Out of line: inlined,
/// its code cost the simple IPv4 packets registers.
#[inline(never)]
fn other_ip(port: &PortSpec, d: &[u8], l3: usize, vlan: u16, mac: u64) -> Option<(PackedKey, u8)> {
    match parse_at(d, l3) {
        L3::Ip(f) if f.kind == IpKind::Flow => {
            if port.allowed_ips.as_ref().is_some_and(|l| !src_allowed(l, &f.key, f.icmp, lla_mac(port, mac)))
            {
                return None;
            }
            Some((PackedKey::new(&FlowKey { vlan, ..f.key }), f.tcp_flags))
        }
        _ => None,
    }
}

/// What the frame `d` carries behind its Ethernet header (and, `off` =
/// [`crate::wire::ETH_VLAN_HEADER_LEN`], the one tag the port read), for the fast path, which
/// takes IP packets only: a VLAN tag behind it (a stacked one) is not IP here (the general
/// stages read behind it, [`parse`]).
#[inline(always)]
fn parse_at(d: &[u8], off: usize) -> L3 {
    match (d.get(off - 2), d.get(off - 1)) {
        (Some(a), Some(b)) => parse_l3(u16::from_be_bytes([*a, *b]), d.get(off..).unwrap_or_default()),
        _ => L3::Malformed,
    }
}

/// [`parse`] for a frame with a tag inside the one the port read: out of line (rare; inlined,
/// its loop cost the fast path's first stage, which inlines [`parse`], registers).
#[cold]
#[inline(never)]
fn parse_stacked(d: &[u8], off: usize) -> (u16, L3) {
    match crate::wire::inner_ethertype(d, off) {
        Some((et, off)) => (et, parse_l3(et, d.get(off..).unwrap_or_default())),
        None => (0, L3::Malformed),
    }
}

/// The first half of the stage for a frame received on `port`, as [`parse`] read it (`h`: the
/// [`crate::conntrack::hash`] of its flow key, when it is IP; `src`, `dst`: its Ethernet
/// addresses, as [`crate::wire::MacAddr::to_u64`] holds them). `Err`: drop it for that reason.
pub fn ingress(
    (et, l3): (u16, L3),
    h: u64,
    (src, dst): (u64, u64),
    port: &PortSpec,
    cx: Ctx,
) -> Result<FilterMeta, DropReason> {
    let (ct, now) = (cx.ct, cx.now);
    let flow = match l3 {
        // ARP that is not Ethernet/IPv4 names no sender a port's addresses can be checked
        // against: refused where ARP senders are checked (as OVN's port security refuses it).
        L3::Other if et == crate::wire::EtherType::ARP && port.allowed_ips.is_some() => {
            return Err(DropReason::MalformedArp)
        }
        L3::Other => return Ok(FilterMeta::default()),
        L3::Malformed if et == crate::wire::EtherType::ARP => {
            return if port.allowed_ips.is_some() {
                Err(DropReason::MalformedArp)
            } else {
                Ok(FilterMeta::default())
            };
        }
        L3::Malformed => return Err(DropReason::MalformedIp),
        L3::Arp(spa) => {
            let ok = port
                .allowed_ips
                .as_ref()
                .is_none_or(|l| spa == Ipv4Addr::UNSPECIFIED || l.contains(&IpAddr::V4(spa)));
            return if ok { Ok(FilterMeta::default()) } else { Err(DropReason::SpoofedArpSpa) };
        }
        L3::Ip(f) => f,
    };
    if let Some(list) = &port.allowed_ips {
        if !src_allowed(list, &flow.key, flow.icmp, lla_mac(port, src)) {
            return Err(DropReason::SpoofedSrcIp);
        }
    }
    let mut m = FilterMeta { flow: Some(flow), ..Default::default() };
    match flow.kind {
        IpKind::NeighborDiscovery { target, .. } => {
            // A neighbour advertisement claims its target address: on a port with an IP spoof
            // filter, one of the port's addresses or the link-local one derived from the
            // frame's source MAC (the same rule as for sources), as OVN's port security checks
            // `nd.target` (the IPv6 form of ARP's sender address). (Its link-layer options
            // were checked against `allowed_macs` by the MAC spoof filter.)
            if let (t @ 1.., Some(list)) = (target, &port.allowed_ips) {
                if !v6_claim_allowed(list, t, lla_mac(port, src)) {
                    return Err(DropReason::SpoofedSrcIp);
                }
            }
            m.note = Note::NeighborDiscovery;
            m.flow = None;
            return Ok(m);
        }
        IpKind::Mld if dst >> 32 == 0x3333 => {
            m.note = Note::Mld;
            m.flow = None;
            return Ok(m);
        }
        // MLD to a unicast MAC: an ICMPv6 packet like any (`IpKind::Mld` is never tracked:
        // it opens no connection, as ICMP answers do not).
        IpKind::Mld => {}
        IpKind::IcmpError(quoted) => {
            // The quoted packet went in this packet's VLAN.
            let quoted = FlowKey { vlan: flow.key.vlan, ..quoted };
            // Related only when it goes back to the quoted packet's sender, as Linux
            // conntrack requires (`nf_conntrack_inet_error`: outer destination = the quoted
            // packet's source); otherwise it is the sender's own packet, checked as any.
            if quoted.v4 == flow.key.v4
                && quoted.src == flow.key.dst
                && ct.and_then(|ct| ct.lookup(&quoted, now)).is_some_and(|f| !f.blocked)
            {
                m.note = Note::Related;
                m.flow = None;
                return Ok(m);
            }
        }
        IpKind::Flow => {
            // One probe: a reply passes; an original-direction packet's entry is refreshed
            // here (and blocked below if the policies refuse it now).
            match ct.and_then(|ct| ct.track_hashed(&flow.key, h, flow.tcp_flags, now)) {
                Some(f) if f.dir == Dir::Reply && !f.blocked => {
                    if !f.reopened_by(flow.key.proto, flow.tcp_flags) {
                        m.note = Note::Reply;
                        m.flow = None;
                        return Ok(m);
                    }
                    // A SYN reopening a closed connection the other way: no reply, a new
                    // connection, checked below (its entry turned round, blocked until then).
                    if let Some(ct) = ct {
                        ct.turn_round(&flow.key, h, now);
                    }
                }
                Some(f) if !f.blocked => {
                    m.committed = true;
                    if stands(f.verdict, cx.epoch, port.id) {
                        m.verdict_to = Some(f.verdict as PortId);
                    }
                }
                _ => {}
            }
        }
    }
    m.note = Note::Checked;
    if m.verdict_to.is_some() {
        // This port's egress policy allowed the connection under this snapshot.
        return Ok(m);
    }
    if let Some(eg) = port.policy.as_ref().and_then(|p| p.egress.as_ref()) {
        match eg.matches(flow.key.dst_ip(), flow.key.proto, l4_port(&flow.key)) {
            Some(r) => m.egress_rule = Some(r),
            None => {
                if let Some(ct) = ct {
                    ct.block(&flow.key, now);
                }
                return Err(DropReason::PolicyEgressDenied);
            }
        }
    }
    Ok(m)
}

/// The second half, for receiving port `to` of a frame from `from`. `Err`: do not queue it
/// there, for that reason; with `block`, the connection's replies then stop passing too (a
/// unicast frame; a flood blocks it only when every port refused it, see [`refused`]).
#[inline]
pub fn admit(
    m: &mut FilterMeta,
    from: &PortSpec,
    to: &PortSpec,
    cx: Ctx,
    block: bool,
) -> Result<(), DropReason> {
    let Some(flow) = m.flow else { return Ok(()) };
    let (ct, now) = (cx.ct, cx.now);
    if m.verdict_to == Some(to.id) {
        return Ok(());
    }
    if let Some(ing) = to.policy.as_ref().and_then(|p| p.ingress.as_ref()) {
        match ing.matches(flow.key.src_ip(), flow.key.proto, l4_port(&flow.key)) {
            Some(r) => m.ingress_rule = Some(r),
            None => {
                if let (Some(ct), true) = (ct, block) {
                    ct.block(&flow.key, now);
                }
                return Err(DropReason::PolicyIngressDenied);
            }
        }
    }
    // Both classifiers allowed it (or the egress one's verdict stood): the entry keeps the
    // verdict for the next packets.
    let v = if cx.epoch == 0 { 0 } else { verdict(cx.epoch, from.id, to.id) };
    if !m.committed && (from.policy.is_some() || to.policy.is_some()) && !icmp_answer(&flow.key) {
        if let Some(ct) = ct {
            ct.commit_verdict(&flow.key, flow.tcp_flags, now, v).map_err(|()| DropReason::ConntrackFull)?;
        }
        m.committed = true;
    } else if m.committed && v != 0 {
        if let Some(ct) = ct {
            ct.remember(&flow.key, now, v);
        }
    }
    Ok(())
}

/// A flooded frame that every port's ingress policy refused ([`admit`] without `block` for
/// each): its connection's replies stop passing, as after a refused unicast frame. (A flood
/// that some port took keeps the connection for that port: a refusal is about the port that
/// refused.)
pub fn refused(m: &FilterMeta, cx: Ctx) {
    if let (Some(flow), Some(ct)) = (m.flow, cx.ct) {
        ct.block(&flow.key, cx.now);
    }
}

/// The stage's fast path, for a burst on `port` of frames that the pipeline forwards plainly
/// (untagged Ethernet, known unicast), `to(i)` being frame i's destination port: true when every
/// frame is an IP packet of a tracked connection that passes the port's spoof filters (its
/// source MAC in `allowed_macs`, its source address in `allowed_ips`; an IP packet has no ARP
/// sender to check) and leaves its entry's state as it is, and is either a reply or carries
/// the running snapshot's verdict for (`port`, `to(i)`), or is of an untracked connection
/// between two ports without policies (`port`, and `to(i)` where `open` says so): then the
/// MAC spoof check and the general stage would pass each frame unchanged. Its one write is the general stage's own
/// for such a packet, made in the same frame order: an entry's expiry moved on (once a second;
/// the general stage, tracking the packet again, then finds nothing to change). On false the
/// general stages take the burst.
///
/// Two stages over the burst ([`FastKeys`]), as VPP's and OVS's flow lookups: the first reads
/// each frame once, the second looks every key up, so that the table's cache misses overlap.
/// The pipeline runs the first inside its own first stage (one read of each frame for both);
/// this is the same for a burst on its own.
pub fn fast_burst(
    burst: &Burst,
    port: &PortSpec,
    cx: Ctx,
    to: impl FnMut(usize) -> Option<PortId>,
    open: impl FnMut(PortId) -> bool,
) -> bool {
    if cx.ct.is_none() {
        return spoof_filtered_burst(burst, port);
    }
    let Some(vlan) = port.vlan.ingress(None) else { return false };
    let Some(mut keys) = FastKeys::new(port, cx, vlan) else { return false };
    burst.iter().all(|b| {
        let d = b.data();
        eth_src(d).is_some_and(|(src, et)| keys.push(port, d, crate::wire::ETH_HEADER_LEN, src, et))
    }) && {
        keys.locate();
        keys.check(port, cx, to, open)
    }
}

/// The fast path's two stages over a burst on a bridge with policies ([`fast_burst`]).
pub struct FastKeys<'a> {
    ct: FastView<'a>,
    lists: Lists,
    /// The steady entry words at the burst's clock.
    steady: Steady,
    /// The burst's VLAN, and the family and VLAN bits of its IPv4 keys.
    vlan: u16,
    fam: u64,
    /// Frame i's probe.
    keys: ArrayVec<FastProbe, { crate::port::MAX_BURST }>,
}

impl<'a> FastKeys<'a> {
    /// For a burst of VLAN `vlan` on `port` (its frames untagged, or each with one 802.1Q tag
    /// of that VLAN: see [`FastKeys::push`]). `None` when the bridge has no connection table
    /// (spoof filters alone: see [`spoof_filtered_burst`]) or the context stores no verdicts.
    #[inline(always)]
    pub fn new(port: &PortSpec, cx: Ctx<'a>, vlan: u16) -> Option<FastKeys<'a>> {
        let ct = cx.ct.filter(|_| cx.epoch != 0)?;
        Some(FastKeys {
            ct: ct.fast_view(),
            lists: Lists::of(port),
            steady: Steady::at(cx.now),
            vlan,
            fam: PackedKey::v4_family(vlan),
            keys: ArrayVec::new(),
        })
    }

    /// Stage 1 for the next frame `d` (source MAC `src`, EtherType `et`, as the pipeline's
    /// first stage read them; `l3`: where its IP header starts, behind the Ethernet header or,
    /// in a tagged burst, behind the tag, whose EtherType `et` then is): checks its spoof
    /// filters against the port's lists as words (made once per burst), reads a simple IPv4
    /// packet straight into the table's [`PackedKey`] (no [`FlowKey`] in between), hashes it
    /// and prefetches its slots. False: not for the fast path.
    ///
    /// It takes an IP packet of a connection ([`IpKind::Flow`]) right behind the header only,
    /// which the general stages' spoof checks decide by the same two reads, tagged or not: the
    /// source MAC against `allowed_macs` (such a packet names no ARP sender and no neighbour
    /// discovery link-layer address for the MAC spoof check to read), the source address
    /// against `allowed_ips` (`src_allowed`, with the link-local address derived from the
    /// source MAC where `allowed_macs` checked it). A tag stacked inside the one the port read
    /// makes `et` its TPID: not IP here (the general stages read behind it).
    #[inline(always)]
    pub fn push(&mut self, port: &PortSpec, d: &[u8], l3: usize, src: u64, et: u16) -> bool {
        if !self.lists.mac_allowed(port, src) {
            return false;
        }
        let v4 = match et {
            crate::wire::EtherType::IPV4 => simple_v4_at(d, l3),
            _ => None,
        };
        let (key, h, flags) = match v4 {
            Some(s) => {
                if !self.lists.v4_allowed(port, &s) {
                    return false;
                }
                let h = crate::conntrack::hash_v4(s.src, s.dst, s.ports, s.proto, self.fam);
                (PackedKey::v4(s.src, s.dst, s.ports, s.proto, self.fam), h, s.tcp_flags)
            }
            None => match other_ip(port, d, l3, self.vlan, src) {
                Some((key, flags)) => (key, crate::conntrack::hash_packed(&key), flags),
                None => return false,
            },
        };
        self.keys.try_push(self.ct.probe_hashed(key, h, flags, &self.steady)).is_ok()
    }

    /// Stage 2, once every frame of the burst went through [`FastKeys::push`] (whose
    /// prefetches of the table's directory lines it waits for): each frame's slot placed by
    /// the directory and prefetched ([`FastView::locate`]), for [`FastKeys::check`].
    #[inline(always)]
    pub fn locate(&mut self) {
        for p in self.keys.iter_mut() {
            self.ct.locate(p);
        }
    }

    /// Stage 3, the lookups, once the frames' slots were placed ([`FastKeys::locate`]):
    /// true when every frame is a reply or carries the snapshot's verdict for (`port`, `to(i)`),
    /// or is of a connection that is not tracked between two ports without policies (`port`
    /// and `to(i)`, for which `open` says so): the general stages pass such a packet, track
    /// nothing (they commit a connection only where one of its ports has a policy) and write
    /// nothing, as on a bridge where a VM with a policy sits beside VMs without.
    /// Frame by frame, stopping at the first that fails: the only writes
    /// ([`FastView::lookup`]'s, an expiry moved on) are made for the frames before it, in
    /// their order, as the general stage makes them.
    #[inline(always)]
    pub fn check(
        &self,
        port: &PortSpec,
        cx: Ctx,
        mut to: impl FnMut(usize) -> Option<PortId>,
        mut open: impl FnMut(PortId) -> bool,
    ) -> bool {
        let from_open = port.policy.is_none();
        let base = verdict(cx.epoch, port.id, 0);
        // A loop, not `all`: the iterator's fold is not always inlined, and out of line it
        // costs the burst a call and its state's reloads.
        for (i, p) in self.keys.iter().enumerate() {
            let ok = match self.ct.lookup(p, cx.now) {
                Fast::Reply => true,
                Fast::Original(v) => to(i).is_some_and(|op| v == base | u64::from(op)),
                Fast::Absent => from_open && to(i).is_some_and(&mut open),
                Fast::Slow => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// The source MAC (as [`crate::wire::MacAddr::to_u64`] holds it) and the EtherType of a
/// frame, in one 8-byte read; `None` when it is shorter than an Ethernet header.
#[inline(always)]
fn eth_src(d: &[u8]) -> Option<(u64, u16)> {
    let w = d.get(6..crate::wire::ETH_HEADER_LEN)?.first_chunk::<8>()?;
    let w = u64::from_be_bytes(*w);
    Some((w >> 16, w as u16))
}

/// How many of a port's allowed MACs and IPv4 addresses [`Lists`] keeps as words (a VM port
/// has one MAC and an address or two); a longer list is searched as it is.
const LIST_WORDS: usize = 4;

/// A port's spoof filters as a burst checks them: the allowed MACs and IPv4 addresses as
/// words, made once per burst, so that a frame costs [`LIST_WORDS`] compares without a branch
/// and no address is built per frame. A list shorter than that repeats its first entry;
/// `None`: the port's list is longer, or (IPv4) holds no IPv4 address.
struct Lists {
    macs: Option<[u64; LIST_WORDS]>,
    v4: Option<[u32; LIST_WORDS]>,
}

/// The first [`LIST_WORDS`] of `items`, the first repeated to fill; `None` when there are none
/// or more.
#[inline(always)]
fn words<T: Copy>(mut items: impl Iterator<Item = T>) -> Option<[T; LIST_WORDS]> {
    let first = items.next()?;
    let mut w = [first; LIST_WORDS];
    for slot in w.iter_mut().skip(1) {
        match items.next() {
            Some(x) => *slot = x,
            None => return Some(w),
        }
    }
    items.next().is_none().then_some(w)
}

impl Lists {
    #[inline(always)]
    fn of(port: &PortSpec) -> Lists {
        let macs = port.allowed_macs.as_ref().and_then(|l| words(l.iter().map(|m| m.to_u64())));
        let v4 = port.allowed_ips.as_ref().and_then(|l| {
            words(l.iter().filter_map(|a| match a {
                IpAddr::V4(a) => Some(u32::from(*a)),
                IpAddr::V6(_) => None,
            }))
        });
        Lists { macs, v4 }
    }

    /// [`mac_allowed`] for the source MAC `src` of a frame.
    #[inline(always)]
    fn mac_allowed(&self, port: &PortSpec, src: u64) -> bool {
        match (&self.macs, &port.allowed_macs) {
            (_, None) => true,
            (Some(w), _) => w.iter().fold(false, |a, &x| a | (x == src)),
            (None, Some(l)) => l.iter().any(|m| m.to_u64() == src),
        }
    }

    /// Whether the port's IP spoof filter lets the simple IPv4 packet `s` through
    /// ([`src_allowed`]; a source not among the words is asked of it, for its exceptions).
    #[inline(always)]
    fn v4_allowed(&self, port: &PortSpec, s: &SimpleV4) -> bool {
        let Some(l) = &port.allowed_ips else { return true };
        if let Some(w) = &self.v4 {
            if w.iter().fold(false, |a, &x| a | (x == s.src)) {
                return true;
            }
        }
        // An IPv4 source: no MAC-derived address applies, and TCP, UDP and SCTP carry no ICMP
        // type.
        src_allowed(l, &s.key(), None, 0)
    }
}

/// Whether the frame `d`'s source MAC (before any tag: untagged or tagged alike) passes
/// `port`'s MAC spoof filter (the MAC spoof check's first half; the fast paths take no ARP
/// frame, whose sender it also checks, and no neighbour discovery, whose link-layer options it
/// checks).
#[inline(always)]
fn mac_allowed(port: &PortSpec, d: &[u8]) -> bool {
    let Some(list) = &port.allowed_macs else { return true };
    let src = d.get(6..crate::wire::ETH_HEADER_LEN - 2).map(crate::wire::MacAddr::from_bytes);
    src.is_some_and(|m| list.contains(&m))
}

/// The key and TCP flags of the untagged frame `d` when it is a simple IPv4 packet (see
/// [`simple_v4_flow`]).
#[inline(always)]
fn simple_flow(d: &[u8]) -> Option<(FlowKey, u8)> {
    match d.get(crate::wire::ETH_HEADER_LEN - 2..crate::wire::ETH_HEADER_LEN) {
        Some([8, 0]) => simple_v4_flow(d.get(crate::wire::ETH_HEADER_LEN..).unwrap_or_default()),
        _ => None,
    }
}

/// [`fast_burst`] on a bridge without policies (no connection table; some port has an IP
/// spoof filter, `ipspoofchk` alone): there the stage passes unchanged every frame that is
/// neither ARP (by EtherType: an ARP the stage cannot read is `malformed_arp`, not "not IP")
/// nor neighbour discovery (whose target address the stage checks) nor malformed IP and whose
/// source address the sending port owns, so true when every frame is such a frame with an
/// allowed source MAC.
pub fn spoof_filtered_burst(burst: &Burst, port: &PortSpec) -> bool {
    spoof_filtered(burst, port, simple_flow)
}

/// [`spoof_filtered_burst`] for a burst of 802.1Q-tagged frames (a trunk's, with spoof
/// filters or without): the same decision, as the general stages make it for a tagged frame
/// (the source MAC before the tag; the payload read behind every tag, by [`parse`] as the
/// general stages' MAC spoof check and [`ingress`] read it), a simple IPv4 packet behind one
/// tag read straight.
pub fn spoof_filtered_tagged_burst(burst: &Burst, port: &PortSpec) -> bool {
    spoof_filtered(burst, port, |d| {
        match d.get(crate::wire::ETH_HEADER_LEN - 2..crate::wire::ETH_VLAN_HEADER_LEN) {
            Some([0x81, 0, _, _, 8, 0]) => {
                simple_v4_flow(d.get(crate::wire::ETH_VLAN_HEADER_LEN..).unwrap_or_default())
            }
            _ => None,
        }
    })
}

/// The two above: `simple` reads a simple IPv4 packet's key, where the frame has one.
#[inline(always)]
fn spoof_filtered(burst: &Burst, port: &PortSpec, simple: impl Fn(&[u8]) -> Option<(FlowKey, u8)>) -> bool {
    burst.iter().all(|b| {
        let d = b.data();
        if !mac_allowed(port, d) {
            return false;
        }
        let (key, icmp) = match simple(d) {
            Some((k, _)) => (k, None),
            None => match parse(d, false) {
                (_, L3::Ip(f)) if matches!(f.kind, IpKind::NeighborDiscovery { .. }) => return false,
                (_, L3::Ip(f)) => (f.key, f.icmp),
                // ARP and RARP carry addresses the general stages check.
                (et, L3::Other) => {
                    return !matches!(et, crate::wire::EtherType::ARP | crate::wire::EtherType::RARP)
                }
                _ => return false,
            },
        };
        let mac = eth_src(d).map_or(0, |(m, _)| m);
        port.allowed_ips.as_ref().is_none_or(|l| src_allowed(l, &key, icmp, lla_mac(port, mac)))
    })
}

/// One line for traces: what the stage decided, naming the rules.
pub fn describe(m: &FilterMeta, from: &PortSpec, to: Option<&PortSpec>) -> String {
    let rule = |p: &PortSpec, egress: bool, r: u32| {
        p.policy
            .as_ref()
            .and_then(|c| if egress { c.egress.as_ref() } else { c.ingress.as_ref() })
            .map_or_else(|| "?".to_string(), |c| c.rule_name(r).to_string())
    };
    match m.note {
        Note::NotIp => "not-ip".into(),
        Note::NeighborDiscovery => "neighbor-discovery".into(),
        Note::Mld => "mld".into(),
        Note::Reply => "reply-of-tracked".into(),
        Note::Related => "related-to-tracked".into(),
        Note::Checked => {
            let mut s = String::from("new");
            if let Some(r) = m.egress_rule {
                s.push_str(&format!(" egress-allowed-by=[{}]", rule(from, true, r)));
            }
            if let (Some(r), Some(to)) = (m.ingress_rule, to) {
                s.push_str(&format!(" ingress-allowed-by=[{}]", rule(to, false, r)));
            }
            s
        }
    }
}
