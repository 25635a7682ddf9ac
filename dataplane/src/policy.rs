//! Network policy of one port, as the configuration carries it (already resolved by the control
//! plane: selectors turned into addresses), and its compiled form, the [`Classifier`] that the
//! pipeline asks once per IP frame.
//!
//! Semantics (docs/policy.md): a direction with a [`DirectionPolicy`] is isolated: a frame is
//! allowed in that direction when at least one rule matches it, a rule matching when the
//! peer address is in one of its peer blocks (none given: any address) and the protocol and
//! destination port are in one of its port ranges (none given: any protocol, any port).
//!
//! Invariant: a classifier answers exactly what [`DirectionPolicy`]'s rules say, with the
//! lowest-numbered matching rule (a property test compares it with a direct interpretation of
//! the rules), at a cost that does not grow with the number of rules: two binary searches, one
//! over the address intervals that the rules' blocks cut the address space into, one over the
//! (protocol, port) intervals of the rules that cover that address interval.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What is wrong in a port's policy, naming the field below the port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct PolicyError {
    pub field: String,
    pub msg: String,
}

/// An address block `ADDR/LEN` (IPv4 or IPv6), written and read as that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The block holding just `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    fn bits(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The block's first and last address, as [`addr_key`] numbers them.
    pub fn range(&self) -> (u128, u128) {
        let bits = u32::from(self.bits());
        let (a, _) = addr_key(self.addr);
        let host_bits = bits - u32::from(self.len);
        let mask = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        (a & !mask, a | mask)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let (lo, hi) = self.range();
        let (k, _) = addr_key(ip);
        lo <= k && k <= hi
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let len: u8 = l.parse().map_err(|_| format!("{l:?} is not a prefix length"))?;
        let c = Cidr { addr, len };
        if len > c.bits() {
            return Err(format!("prefix length {len} is longer than the address ({})", c.bits()));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address as a number, and whether it is IPv4 (IPv4 addresses are numbered on their own).
#[inline]
pub fn addr_key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), true),
        IpAddr::V6(a) => (u128::from(a), false),
    }
}

/// The transport protocols a rule's ports name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// A peer block: `cidr` less the blocks in `except`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerBlock {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

/// Destination ports of one protocol: `port` (none: every port) up to `end_port` (none: just
/// `port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// One allow rule. `peers`/`ports` absent: any peer / any traffic; present but empty: nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// What `ctl trace` prints for it, e.g. `ns/policy ingress[0]`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortRange>>,
}

/// The rules of one direction of a port that is isolated in it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionPolicy {
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// A port's policy. `ingress`: what the port may receive (the peer is the source);
/// `egress`: what it may send (the peer is the destination). A direction left out is open.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<DirectionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<DirectionPolicy>,
}

impl PortRange {
    /// The (protocol, port) keys it covers, inclusive.
    fn keys(&self) -> (u32, u32) {
        let p = u32::from(self.protocol.number()) << 16;
        match (self.port, self.end_port) {
            (None, _) => (p, p | 0xffff),
            (Some(a), None) => (p | u32::from(a), p | u32::from(a)),
            (Some(a), Some(b)) => (p | u32::from(a), p | u32::from(b)),
        }
    }
}

impl PortPolicy {
    /// Checks what serde cannot; `base` is the field path of the policy.
    pub fn validate(&self, base: &str) -> Result<(), PolicyError> {
        for (dir, d) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            let Some(d) = d else { continue };
            for (i, r) in d.rules.iter().enumerate() {
                let rf = format!("{base}.{dir}.rules[{i}]");
                for (j, p) in r.peers.iter().flatten().enumerate() {
                    for (k, e) in p.except.iter().enumerate() {
                        let (lo, hi) = p.cidr.range();
                        let (elo, ehi) = e.range();
                        if e.addr.is_ipv4() != p.cidr.addr.is_ipv4() || elo < lo || ehi > hi {
                            return Err(PolicyError {
                                field: format!("{rf}.peers[{j}].except[{k}]"),
                                msg: format!("{e} is not inside {}", p.cidr),
                            });
                        }
                    }
                }
                for (j, p) in r.ports.iter().flatten().enumerate() {
                    match (p.port, p.end_port) {
                        (None, Some(_)) => {
                            return Err(PolicyError {
                                field: format!("{rf}.ports[{j}].end_port"),
                                msg: "an end_port needs a port".into(),
                            })
                        }
                        (Some(a), Some(b)) if b < a => {
                            return Err(PolicyError {
                                field: format!("{rf}.ports[{j}].end_port"),
                                msg: format!("{b} is below port {a}"),
                            })
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// `[starts[i], starts[i+1])` maps to `vals[i]`; `starts[0]` is 0, so every key has a value.
#[derive(Debug, Clone, Default)]
struct Intervals<K> {
    starts: Box<[K]>,
    vals: Box<[u32]>,
}

impl<K: Copy + Ord> Intervals<K> {
    #[inline]
    fn get(&self, k: K) -> u32 {
        let i = self.starts.partition_point(|s| *s <= k);
        // starts[0] is the smallest key, so i >= 1 for every k (0 only for an empty table).
        self.vals.get(i.wrapping_sub(1)).copied().unwrap_or(NO_RULE)
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// No rule matches.
pub const NO_RULE: u32 = u32::MAX;
/// The largest (protocol, port) key.
const KEY_MAX: u128 = 0xff_ffff;

/// One direction's rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// IPv4 peer address -> address class.
    v4: Intervals<u32>,
    /// IPv6 peer address -> address class.
    v6: Intervals<u128>,
    /// Per address class: (protocol << 16 | port) -> lowest matching rule, or [`NO_RULE`].
    classes: Box<[Intervals<u32>]>,
    /// The rules' names, by rule number.
    names: Box<[String]>,
}

/// Cuts `[0, max]` at every range's edges: the start of each elementary interval, and for
/// each the (ascending) numbers of the ranges' owners that cover it, adjacent equal intervals
/// merged.
fn partition(owners: &[Vec<(u128, u128)>], max: u128) -> (Vec<u128>, Vec<Vec<u32>>) {
    let mut cuts: Vec<u128> = vec![0];
    for &(lo, hi) in owners.iter().flatten() {
        cuts.push(lo);
        if hi < max {
            cuts.push(hi + 1);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut sets: Vec<Vec<u32>> = vec![Vec::new(); cuts.len()];
    for (r, ranges) in owners.iter().enumerate() {
        for &(lo, hi) in ranges {
            let i0 = cuts.partition_point(|c| *c < lo);
            let i1 = cuts.partition_point(|c| *c <= hi);
            for s in &mut sets[i0..i1] {
                if s.last() != Some(&(r as u32)) {
                    s.push(r as u32);
                }
            }
        }
    }
    let mut starts = Vec::with_capacity(cuts.len());
    let mut out: Vec<Vec<u32>> = Vec::with_capacity(cuts.len());
    for (c, s) in cuts.into_iter().zip(sets) {
        if out.last() != Some(&s) {
            starts.push(c);
            out.push(s);
        }
    }
    (starts, out)
}

/// `ranges` less `cut` (sorted, disjoint inclusive ranges in and out).
fn subtract(ranges: Vec<(u128, u128)>, (clo, chi): (u128, u128)) -> Vec<(u128, u128)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for (lo, hi) in ranges {
        if chi < lo || clo > hi {
            out.push((lo, hi));
            continue;
        }
        if clo > lo {
            out.push((lo, clo - 1));
        }
        if chi < hi {
            out.push((chi + 1, hi));
        }
    }
    out
}

/// A rule's peer addresses of one family (`v4`) as inclusive ranges.
fn peer_ranges(rule: &PolicyRule, v4: bool) -> Vec<(u128, u128)> {
    let max = if v4 { u128::from(u32::MAX) } else { u128::MAX };
    let Some(peers) = &rule.peers else {
        return vec![(0, max)];
    };
    let mut out = Vec::new();
    for p in peers.iter().filter(|p| p.cidr.addr.is_ipv4() == v4) {
        let mut r = vec![p.cidr.range()];
        for e in p.except.iter().filter(|e| e.addr.is_ipv4() == v4) {
            r = subtract(r, e.range());
        }
        out.extend(r);
    }
    out
}

fn rule_keys(rule: &PolicyRule) -> Vec<(u128, u128)> {
    match &rule.ports {
        None => vec![(0, KEY_MAX)],
        Some(ports) => ports
            .iter()
            .map(|p| {
                let (a, b) = p.keys();
                (u128::from(a), u128::from(b))
            })
            .collect(),
    }
}

impl Classifier {
    /// Compiles the rules of one direction.
    pub fn compile(d: &DirectionPolicy) -> Classifier {
        let keys: Vec<Vec<(u128, u128)>> = d.rules.iter().map(rule_keys).collect();
        let mut class_of: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut classes: Vec<Intervals<u32>> = Vec::new();
        let mut class = |set: Vec<u32>| -> u32 {
            if let Some(&c) = class_of.get(&set) {
                return c;
            }
            // The (protocol, port) table of the rules in `set`: the lowest rule per interval.
            let owners: Vec<Vec<(u128, u128)>> = set.iter().map(|&r| keys[r as usize].clone()).collect();
            let (starts, sets) = partition(&owners, KEY_MAX);
            let vals: Vec<u32> =
                sets.iter().map(|s| s.first().map_or(NO_RULE, |&i| set[i as usize])).collect();
            let mut st: Vec<u32> = Vec::with_capacity(starts.len());
            let mut vs: Vec<u32> = Vec::with_capacity(starts.len());
            for (s, v) in starts.into_iter().zip(vals) {
                if vs.last() != Some(&v) {
                    st.push(s as u32);
                    vs.push(v);
                }
            }
            let c = classes.len() as u32;
            classes.push(Intervals { starts: st.into(), vals: vs.into() });
            class_of.insert(set, c);
            c
        };
        let mut family = |v4: bool| -> (Vec<u128>, Vec<u32>) {
            let owners: Vec<Vec<(u128, u128)>> = d.rules.iter().map(|r| peer_ranges(r, v4)).collect();
            let max = if v4 { u128::from(u32::MAX) } else { u128::MAX };
            let (starts, sets) = partition(&owners, max);
            let vals = sets.into_iter().map(&mut class).collect();
            (starts, vals)
        };
        let (s4, c4) = family(true);
        let (s6, c6) = family(false);
        Classifier {
            v4: Intervals { starts: s4.into_iter().map(|s| s as u32).collect(), vals: c4.into() },
            v6: Intervals { starts: s6.into(), vals: c6.into() },
            classes: classes.into(),
            names: d.rules.iter().map(|r| r.name.clone()).collect(),
        }
    }

    /// The lowest-numbered rule allowing traffic with peer `peer`, IP protocol `proto` and
    /// destination port `port` (0 for protocols without ports), or `None`.
    #[inline]
    pub fn matches(&self, peer: IpAddr, proto: u8, port: u16) -> Option<u32> {
        let class = match peer {
            IpAddr::V4(a) => self.v4.get(u32::from(a)),
            IpAddr::V6(a) => self.v6.get(u128::from(a)),
        };
        let key = (u32::from(proto) << 16) | u32::from(port);
        let r = self.classes.get(class as usize)?.get(key);
        (r != NO_RULE).then_some(r)
    }

    /// A rule's name (for traces).
    pub fn rule_name(&self, r: u32) -> &str {
        self.names.get(r as usize).map_or("?", String::as_str)
    }

    /// The size of the compiled tables: (address intervals, address classes, port intervals).
    pub fn size(&self) -> (usize, usize, usize) {
        (self.v4.len() + self.v6.len(), self.classes.len(), self.classes.iter().map(Intervals::len).sum())
    }
}

/// A port's policy, compiled: one classifier per isolated direction.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    pub ingress: Option<Classifier>,
    pub egress: Option<Classifier>,
}

impl CompiledPolicy {
    pub fn compile(p: &PortPolicy) -> CompiledPolicy {
        CompiledPolicy {
            ingress: p.ingress.as_ref().map(Classifier::compile),
            egress: p.egress.as_ref().map(Classifier::compile),
        }
    }
}

/// The rules read as written, one after the other: the lowest rule that allows the packet.
/// The reference the classifier is tested against (this module's property test, the `cluster`
/// fuzz target); [`Classifier::matches`] answers the same, in O(log rules).
pub fn interpret(d: &DirectionPolicy, peer: IpAddr, proto: u8, port: u16) -> Option<u32> {
    let peer_ok = |r: &PolicyRule| match &r.peers {
        None => true,
        Some(ps) => ps.iter().any(|p| p.cidr.contains(peer) && !p.except.iter().any(|e| e.contains(peer))),
    };
    let port_ok = |r: &PolicyRule| match &r.ports {
        None => true,
        Some(ps) => ps.iter().any(|p| {
            p.protocol.number() == proto
                && match (p.port, p.end_port) {
                    (None, _) => true,
                    (Some(a), None) => port == a,
                    (Some(a), Some(b)) => (a..=b).contains(&port),
                }
        }),
    };
    d.rules.iter().position(|r| peer_ok(r) && port_ok(r)).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid CIDR")
    }

    fn rule(peers: Option<Vec<PeerBlock>>, ports: Option<Vec<PortRange>>) -> PolicyRule {
        PolicyRule { name: "r".into(), peers, ports }
    }

    #[test]
    fn cidr_parse_and_range() {
        assert_eq!(cidr("10.0.0.0/8").range(), (0x0a00_0000, 0x0aff_ffff));
        assert_eq!(cidr("0.0.0.0/0").range(), (0, u128::from(u32::MAX)));
        assert_eq!(cidr("::/0").range(), (0, u128::MAX));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        // Host bits set are ignored, as Kubernetes' ipBlock does after validation.
        assert!(cidr("10.1.2.3/8").contains("10.200.0.1".parse().unwrap()));
        assert!(!cidr("::/0").contains("10.0.0.1".parse().unwrap()), "families apart");
    }

    /// A rule with an ipBlock and except, one with ports only: the lowest matching rule wins,
    /// excepted addresses fall to later rules, ports out of range to none.
    #[test]
    fn except_ports_and_order() {
        let d = DirectionPolicy {
            rules: vec![
                rule(
                    Some(vec![PeerBlock { cidr: cidr("10.0.0.0/8"), except: vec![cidr("10.1.0.0/16")] }]),
                    Some(vec![PortRange { protocol: Protocol::Tcp, port: Some(80), end_port: Some(90) }]),
                ),
                rule(None, Some(vec![PortRange { protocol: Protocol::Udp, port: None, end_port: None }])),
            ],
        };
        let c = Classifier::compile(&d);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(c.matches(ip("10.2.0.1"), 6, 85), Some(0));
        assert_eq!(c.matches(ip("10.1.0.1"), 6, 85), None, "excepted");
        assert_eq!(c.matches(ip("10.2.0.1"), 6, 91), None);
        assert_eq!(c.matches(ip("10.1.0.1"), 17, 5), Some(1));
        assert_eq!(c.matches(ip("fd00::1"), 17, 5), Some(1));
        assert_eq!(c.matches(ip("fd00::1"), 1, 0), None, "ICMP is not in any port list");
        let all = Classifier::compile(&DirectionPolicy { rules: vec![rule(None, None)] });
        assert_eq!(all.matches(ip("fd00::1"), 58, 0), Some(0));
        let none = Classifier::compile(&DirectionPolicy::default());
        assert_eq!(none.matches(ip("1.2.3.4"), 6, 80), None, "isolated, nothing allowed");
    }

    /// 1,000 rules of one /32 peer and one port each: the tables grow with the rules, the
    /// lookup is two binary searches.
    #[test]
    fn thousand_rules_compile_small() {
        let rules = (0..1000u32)
            .map(|i| {
                rule(
                    Some(vec![PeerBlock {
                        cidr: Cidr::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                        except: vec![],
                    }]),
                    Some(vec![PortRange {
                        protocol: Protocol::Tcp,
                        port: Some(1000 + i as u16),
                        end_port: None,
                    }]),
                )
            })
            .collect();
        let d = DirectionPolicy { rules };
        let c = Classifier::compile(&d);
        let (intervals, classes, keys) = c.size();
        assert!(intervals <= 2002 && classes <= 1001 && keys <= 3 * 1001, "{:?}", c.size());
        assert_eq!(c.matches(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 500)), 6, 1500), Some(500));
        assert_eq!(c.matches(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 500)), 6, 1501), None);
    }

    #[test]
    fn validate_names_fields() {
        let bad_except = PortPolicy {
            ingress: Some(DirectionPolicy {
                rules: vec![rule(
                    Some(vec![PeerBlock { cidr: cidr("10.0.0.0/16"), except: vec![cidr("10.1.0.0/24")] }]),
                    None,
                )],
            }),
            egress: None,
        };
        let e = bad_except.validate("p").unwrap_err();
        assert_eq!(e.field, "p.ingress.rules[0].peers[0].except[0]");
        let bad_end = PortPolicy {
            ingress: None,
            egress: Some(DirectionPolicy {
                rules: vec![rule(
                    None,
                    Some(vec![PortRange { protocol: Protocol::Sctp, port: Some(9), end_port: Some(8) }]),
                )],
            }),
        };
        assert_eq!(bad_end.validate("p").unwrap_err().field, "p.egress.rules[0].ports[0].end_port");
    }

    // Random policies over a small address and port space, so that peers, excepts and ports
    // overlap often; addresses of both families.
    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..4, any::<u8>()).prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::new(10, a, 0, b))),
            (0u16..4, any::<u16>()).prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, b))),
            Just(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))),
        ]
    }

    fn arb_block() -> impl Strategy<Value = PeerBlock> {
        (arb_addr(), 0u8..=8, prop::collection::vec((0u8..=8, any::<u8>()), 0..3)).prop_map(
            |(a, short, ex)| {
                let bits = if a.is_ipv4() { 32 } else { 128 };
                let len = bits - short.min(bits) - if short > 6 { 16 } else { 0 };
                let cidr = Cidr { addr: a, len };
                let (lo, _) = cidr.range();
                let except = ex
                    .into_iter()
                    .filter(|_| len < bits)
                    .map(|(s, off)| {
                        // An except inside the block: a longer prefix at an offset into it.
                        let elen = (len + 1 + s.min(bits - len - 1)).min(bits);
                        let key = lo + u128::from(off) % (cidr.range().1 - lo + 1);
                        let addr = if a.is_ipv4() {
                            IpAddr::V4(Ipv4Addr::from(key as u32))
                        } else {
                            IpAddr::V6(Ipv6Addr::from(key))
                        };
                        Cidr { addr, len: elen }
                    })
                    .collect();
                PeerBlock { cidr, except }
            },
        )
    }

    fn arb_ports() -> impl Strategy<Value = PortRange> {
        (
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)],
            prop::option::of(0u16..40),
            prop::option::of(0u16..20),
        )
            .prop_map(|(protocol, port, extra)| PortRange {
                protocol,
                port,
                end_port: port.and(extra).map(|e| port.unwrap_or(0) + e),
            })
    }

    fn arb_rule() -> impl Strategy<Value = PolicyRule> {
        (
            prop::option::of(prop::collection::vec(arb_block(), 0..3)),
            prop::option::of(prop::collection::vec(arb_ports(), 0..3)),
        )
            .prop_map(|(peers, ports)| PolicyRule { name: "r".into(), peers, ports })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The compiled classifier answers what the rules, read one by one, answer: the same
        /// lowest matching rule or none.
        #[test]
        fn classifier_agrees_with_interpreter(
            rules in prop::collection::vec(arb_rule(), 0..8),
            probes in prop::collection::vec(
                (arb_addr(), prop_oneof![Just(6u8), Just(17), Just(132), Just(1), Just(58)], 0u16..64),
                1..40,
            ),
        ) {
            let d = DirectionPolicy { rules };
            let c = Classifier::compile(&d);
            for (ip, proto, port) in probes {
                prop_assert_eq!(c.matches(ip, proto, port), interpret(&d, ip, proto, port), "{} {} {}", ip, proto, port);
            }
        }
    }
}
