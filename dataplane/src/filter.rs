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
//! marked blocked and its replies stop too. ARP and IPv6 neighbour discovery always pass the
//! policies (the spoof filter still checks ARP's sender address); non-IP frames are not
//! subject to policies.

use crate::conntrack::{verdict, Conntrack, Dir};
use crate::port::Burst;
use crate::switch::{DropReason, PortId, PortSpec};
use crate::wire::ip::{
    parse_l3, simple_v4_flow, FlowKey, IpFlow, IpKind, L3, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
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

/// The destination port a policy rule sees: TCP, UDP and SCTP have one, other protocols 0.
fn l4_port(k: &FlowKey) -> u16 {
    match k.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => k.dport,
        _ => 0,
    }
}

/// Whether the port's IP spoof filter lets `key`'s source through: one of the port's
/// addresses; or an IPv6 link-local or unspecified source (the guest's own link-local
/// address, duplicate address detection); or DHCPv4 from 0.0.0.0 (a client without an address
/// yet).
fn src_allowed(list: &[IpAddr], key: &FlowKey) -> bool {
    let src = key.src_ip();
    if list.contains(&src) {
        return true;
    }
    match src {
        IpAddr::V6(a) => a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(a) => a.is_unspecified() && key.proto == PROTO_UDP && key.sport == 68 && key.dport == 67,
    }
}

/// The payload of the frame `d` (`tagged`: with an 802.1Q tag, whose length the caller
/// checked), read for [`ingress`]: its EtherType and what it holds.
#[inline]
pub fn parse(d: &[u8], tagged: bool) -> (u16, L3) {
    let off = if tagged { crate::wire::ETH_VLAN_HEADER_LEN } else { crate::wire::ETH_HEADER_LEN };
    match (d.get(off - 2), d.get(off - 1)) {
        (Some(a), Some(b)) => {
            let et = u16::from_be_bytes([*a, *b]);
            (et, parse_l3(et, d.get(off..).unwrap_or_default()))
        }
        _ => (0, L3::Malformed),
    }
}

/// The first half of the stage for a frame received on `port`, as [`parse`] read it (`h`: the
/// [`crate::conntrack::hash`] of its flow key, when it is IP). `Err`: drop it for that reason.
pub fn ingress((et, l3): (u16, L3), h: u64, port: &PortSpec, cx: Ctx) -> Result<FilterMeta, DropReason> {
    let (ct, now) = (cx.ct, cx.now);
    let flow = match l3 {
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
        if !src_allowed(list, &flow.key) {
            return Err(DropReason::SpoofedSrcIp);
        }
    }
    let mut m = FilterMeta { flow: Some(flow), ..Default::default() };
    match flow.kind {
        IpKind::NeighborDiscovery => {
            m.note = Note::NeighborDiscovery;
            m.flow = None;
            return Ok(m);
        }
        IpKind::IcmpError(quoted) => {
            if ct.and_then(|ct| ct.lookup(&quoted, now)).is_some_and(|f| !f.blocked) {
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
                    m.note = Note::Reply;
                    m.flow = None;
                    return Ok(m);
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
/// there, for that reason.
#[inline]
pub fn admit(m: &mut FilterMeta, from: &PortSpec, to: &PortSpec, cx: Ctx) -> Result<(), DropReason> {
    let Some(flow) = m.flow else { return Ok(()) };
    let (ct, now) = (cx.ct, cx.now);
    if m.verdict_to == Some(to.id) {
        return Ok(());
    }
    if let Some(ing) = to.policy.as_ref().and_then(|p| p.ingress.as_ref()) {
        match ing.matches(flow.key.src_ip(), flow.key.proto, l4_port(&flow.key)) {
            Some(r) => m.ingress_rule = Some(r),
            None => {
                if let Some(ct) = ct {
                    ct.block(&flow.key, now);
                }
                return Err(DropReason::PolicyIngressDenied);
            }
        }
    }
    // Both classifiers allowed it (or the egress one's verdict stood): the entry keeps the
    // verdict for the next packets.
    let v = if cx.epoch == 0 { 0 } else { verdict(cx.epoch, from.id, to.id) };
    if !m.committed && (from.policy.is_some() || to.policy.is_some()) {
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

/// The stage's fast path, for a burst on `port` of frames that the pipeline forwards plainly
/// (untagged Ethernet, known unicast), `to(i)` being frame i's destination port: true when every
/// frame is an IP packet of a tracked connection that passes the port's spoof filters (its
/// source MAC in `allowed_macs`, its source address in `allowed_ips`; an IP packet has no ARP
/// sender to check) and leaves its entry's state as it is, and is either a reply or carries
/// the running snapshot's verdict for (`port`, `to(i)`): then the MAC spoof check and the
/// general stage would pass each frame unchanged. Its one write is the general stage's own
/// for such a packet, made in the same frame order: an entry's expiry moved on (once a second;
/// the general stage, tracking the packet again, then finds nothing to change). On false the
/// general stages take the burst. Two passes (every key hashed and its slot prefetched, then
/// the lookups) so that the table's cache misses overlap.
#[inline]
pub fn fast_burst(
    burst: &Burst,
    port: &PortSpec,
    cx: Ctx,
    mut to: impl FnMut(usize) -> Option<PortId>,
) -> bool {
    let Some(ct) = cx.ct else { return spoof_filtered_burst(burst, port) };
    if cx.epoch == 0 {
        return false;
    }
    let mut flows: ArrayVec<(FlowKey, u64, u8), { crate::port::MAX_BURST }> = ArrayVec::new();
    for b in burst.iter() {
        let d = b.data();
        if !mac_allowed(port, d) {
            return false;
        }
        let (key, flags) = match simple_flow(d) {
            Some(f) => f,
            None => match parse(d, false).1 {
                L3::Ip(f) if f.kind == IpKind::Flow => (f.key, f.tcp_flags),
                _ => return false,
            },
        };
        if port.allowed_ips.as_ref().is_some_and(|l| !src_allowed(l, &key)) {
            return false;
        }
        let h = crate::conntrack::hash(&key);
        ct.prefetch(h);
        flows.push((key, h, flags));
    }
    for (i, (k, h, flags)) in flows.iter().enumerate() {
        let Some((f, state_changes)) = ct.lookup_refresh(k, *h, *flags, cx.now) else { return false };
        if f.blocked || state_changes {
            return false;
        }
        if f.dir == Dir::Original && to(i).is_none_or(|op| f.verdict != verdict(cx.epoch, port.id, op)) {
            return false;
        }
    }
    true
}

/// Whether the untagged frame `d`'s source MAC passes `port`'s MAC spoof filter (the MAC
/// spoof check's first half; the fast paths take no ARP frame, whose sender it also checks).
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
/// neither ARP nor malformed IP and whose source address the sending port owns, so true when
/// every frame is such a frame with an allowed source MAC.
fn spoof_filtered_burst(burst: &Burst, port: &PortSpec) -> bool {
    burst.iter().all(|b| {
        let d = b.data();
        if !mac_allowed(port, d) {
            return false;
        }
        let key = match simple_flow(d) {
            Some((k, _)) => k,
            None => match parse(d, false).1 {
                L3::Ip(f) => f.key,
                L3::Other => return true,
                _ => return false,
            },
        };
        port.allowed_ips.as_ref().is_none_or(|l| src_allowed(l, &key))
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
