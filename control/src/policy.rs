//! MultiNetworkPolicy (`k8s.cni.cncf.io/v1beta1` and `v1beta2`): the objects, and their
//! resolution into each switch port's [`PortPolicy`] and IP spoof filter (docs/policy.md).
//!
//! Resolution happens with the plan: selectors become the addresses the cluster state knows
//! (VMI status interface addresses on the policy's networks), so the dataplane only ever sees
//! address blocks and port ranges. Invariant: bad input never opens a port. A policy whose
//! subject cannot be determined (bad `podSelector`) is skipped as a whole and reported; a bad
//! rule, peer or port inside a policy is left out of it (reported), while the policy still
//! isolates the ports it selects, so the mistake denies more, never less.

use crate::k8s::{ClusterState, Loaded, Source};
use crate::nad::NadNetwork;
use crate::plan::Plan;
use crate::{ObjRef, Problem};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use switchyard_dataplane::policy::{
    Cidr, DirectionPolicy, PeerBlock, PolicyRule, PortPolicy, PortRange, Protocol,
};

/// The annotation naming the networks (NADs, `ns/name` or `name`, comma-separated) a policy is for.
pub const POLICY_FOR: &str = "k8s.v1.cni.cncf.io/policy-for";

#[derive(Debug, Clone, Deserialize)]
pub struct MultiNetworkPolicy {
    #[serde(default)]
    pub metadata: crate::k8s::ObjectMeta,
    #[serde(default)]
    pub spec: MnpSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MnpSpec {
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub ingress: Vec<MnpRule>,
    #[serde(default)]
    pub egress: Vec<MnpRule>,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
}

/// An ingress rule (`from`) or an egress rule (`to`): both are read into one type, and a
/// rule using the other direction's key is reported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MnpRule {
    #[serde(default)]
    pub from: Option<Vec<MnpPeer>>,
    #[serde(default)]
    pub to: Option<Vec<MnpPeer>>,
    #[serde(default)]
    pub ports: Option<Vec<MnpPort>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MnpPeer {
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default)]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MnpPort {
    #[serde(default)]
    pub protocol: Option<String>,
    /// A number or a name (names are not supported: reported).
    #[serde(default)]
    pub port: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub end_port: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Checks the operators (and that In/NotIn have values, Exists/DoesNotExist none).
    pub(crate) fn validate(&self, field: &str) -> Result<(), (String, String)> {
        for (i, r) in self.match_expressions.iter().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    return Err((format!("{f}.values"), format!("operator {} needs values", r.operator)))
                }
                "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                    return Err((format!("{f}.values"), format!("operator {} takes no values", r.operator)))
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                o => {
                    return Err((
                        format!("{f}.operator"),
                        format!("{o:?} is not In, NotIn, Exists or DoesNotExist"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Whether `labels` match (an empty selector matches everything). Call after `validate`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => v.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => !v.is_some_and(|v| r.values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
    }
}

/// One VM interface on a secondary network, anywhere in the cluster.
#[derive(Debug, Clone)]
struct Attachment {
    ns: String,
    /// The switch port name, `ns/vmi/iface`.
    port: String,
    nad: (String, String),
    labels: BTreeMap<String, String>,
    addrs: Vec<IpAddr>,
}

/// Whether `ip` can be an interface's own address: not unspecified, multicast, broadcast or
/// loopback.
fn unicast(ip: IpAddr) -> bool {
    !ip.is_unspecified()
        && !ip.is_multicast()
        && !ip.is_loopback()
        && !matches!(ip, IpAddr::V4(a) if a.is_broadcast())
}

/// Every VMI interface attached to a NAD, with the addresses its status reports (unparsable
/// ones, and ones no interface can have, reported as problems); with `build` false, only the
/// problems (none is returned).
fn attachments(state: &ClusterState, problems: &mut Vec<Problem>, build: bool) -> Vec<Attachment> {
    let mut out = Vec::new();
    for ((ns, name), l) in &state.vmis {
        let o = &l.obj;
        for ifc in &o.spec.domain.devices.interfaces {
            let Some(net) = o.spec.networks.iter().find(|n| n.name == ifc.name) else { continue };
            let Some(m) = &net.multus else { continue };
            let mut addrs = Vec::new();
            for (k, s) in o.status.interfaces.iter().enumerate() {
                if s.name.as_deref() != Some(ifc.name.as_str()) {
                    continue;
                }
                let listed = s.ip_address.iter().map(|a| (format!("status.interfaces[{k}].ipAddress"), a));
                let all = s
                    .ip_addresses
                    .iter()
                    .enumerate()
                    .map(|(x, a)| (format!("status.interfaces[{k}].ipAddresses[{x}]"), a));
                for (field, a) in listed.chain(all) {
                    // KubeVirt reports addresses bare; a CNI result writes them with a prefix.
                    let bare = a.split_once('/').map_or(a.as_str(), |(b, _)| b);
                    match bare.parse::<IpAddr>() {
                        // No interface's own address: the guest agent reports what the guest
                        // says, and `::` or 0.0.0.0 listed would let a port send anything from
                        // them past the spoof filter's narrow exceptions for them.
                        Ok(ip) if !unicast(ip) => problems.push(Problem::object(
                            &l.src,
                            &ObjRef::new("VirtualMachineInstance", Some(ns), name),
                            &field,
                            &format!("{a:?} is not a unicast address: not taken as the interface's"),
                        )),
                        Ok(ip) if !addrs.contains(&ip) => addrs.push(ip),
                        Ok(_) => {}
                        Err(_) => problems.push(Problem::object(
                            &l.src,
                            &ObjRef::new("VirtualMachineInstance", Some(ns), name),
                            &field,
                            &format!("{a:?} is not an IP address"),
                        )),
                    }
                }
            }
            if !build {
                continue;
            }
            let nad = match m.network_name.split_once('/') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => (ns.clone(), m.network_name.clone()),
            };
            out.push(Attachment {
                ns: ns.clone(),
                port: format!("{ns}/{name}/{}", ifc.name),
                nad,
                labels: o.metadata.labels.clone(),
                addrs,
            });
        }
    }
    out
}

fn ns_labels(state: &ClusterState, ns: &str) -> BTreeMap<String, String> {
    let mut l = state.namespaces.get(ns).map(|n| n.obj.metadata.labels.clone()).unwrap_or_default();
    // The API server sets this label on every namespace.
    l.insert("kubernetes.io/metadata.name".into(), ns.to_string());
    l
}

/// Reports problems of one policy object.
struct Reporter<'a> {
    src: &'a Source,
    oref: ObjRef,
    problems: &'a mut Vec<Problem>,
}

impl Reporter<'_> {
    fn push(&mut self, field: &str, msg: &str) {
        self.problems.push(Problem::object(self.src, &self.oref, field, msg));
    }
}

/// The policy's networks from its `policy-for` annotation; missing NADs reported.
fn networks(
    state: &ClusterState,
    ns: &str,
    meta: &crate::k8s::ObjectMeta,
    r: &mut Reporter,
) -> BTreeSet<(String, String)> {
    let field = format!("metadata.annotations.{POLICY_FOR}");
    let Some(v) = meta.annotations.get(POLICY_FOR) else {
        r.push(&field, "missing: the policy is for no network");
        return BTreeSet::new();
    };
    let mut out = BTreeSet::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let key = match item.split_once('/') {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (ns.to_string(), item.to_string()),
        };
        if state.nads.contains_key(&key) {
            out.insert(key);
        } else {
            r.push(&field, &format!("no NetworkAttachmentDefinition {}/{}", key.0, key.1));
        }
    }
    out
}

/// What a policy's peers are resolved against: the state, the policy's namespace, every
/// attachment and the policy's networks.
struct Scope<'a> {
    state: &'a ClusterState,
    ns: &'a str,
    att: &'a [Attachment],
    nets: &'a BTreeSet<(String, String)>,
}

/// Resolves one rule's peers and ports; bad parts are reported and left out.
fn rule(
    sc: &Scope,
    name: String,
    peers: Option<&Vec<MnpPeer>>,
    ports: Option<&Vec<MnpPort>>,
    rf: &str,
    pkey: &str,
    r: &mut Reporter,
) -> PolicyRule {
    let (state, ns, att, nets) = (sc.state, sc.ns, sc.att, sc.nets);
    let peers = peers.filter(|p| !p.is_empty()).map(|list| {
        let mut blocks = Vec::new();
        for (j, p) in list.iter().enumerate() {
            let pf = format!("{rf}.{pkey}[{j}]");
            if let Some(b) = &p.ip_block {
                if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                    r.push(&pf, "ipBlock goes alone, without podSelector or namespaceSelector");
                    continue;
                }
                let cidr = match b.cidr.parse::<Cidr>() {
                    Ok(c) => c,
                    Err(e) => {
                        r.push(&format!("{pf}.ipBlock.cidr"), &e);
                        continue;
                    }
                };
                let mut except = Vec::new();
                for (k, e) in b.except.iter().enumerate() {
                    let ef = format!("{pf}.ipBlock.except[{k}]");
                    match e.parse::<Cidr>() {
                        Ok(c) => {
                            let (lo, hi) = cidr.range();
                            let (elo, ehi) = c.range();
                            if c.addr.is_ipv4() != cidr.addr.is_ipv4() || elo < lo || ehi > hi {
                                r.push(&ef, &format!("{c} is not inside {cidr}"));
                            } else {
                                except.push(c);
                            }
                        }
                        Err(m) => r.push(&ef, &m),
                    }
                }
                blocks.push(PeerBlock { cidr, except });
                continue;
            }
            let mut sel_ok = true;
            for (s, k) in [(&p.pod_selector, "podSelector"), (&p.namespace_selector, "namespaceSelector")] {
                if let Some(Err((f, m))) = s.as_ref().map(|s| s.validate(&format!("{pf}.{k}"))) {
                    r.push(&f, &m);
                    sel_ok = false;
                }
            }
            if !sel_ok {
                continue;
            }
            if p.pod_selector.is_none() && p.namespace_selector.is_none() {
                r.push(&pf, "a peer needs podSelector, namespaceSelector or ipBlock");
                continue;
            }
            for a in att.iter().filter(|a| nets.contains(&a.nad)) {
                let ns_ok = match &p.namespace_selector {
                    None => a.ns == ns,
                    Some(s) => s.matches(&ns_labels(state, &a.ns)),
                };
                let pod_ok = p.pod_selector.as_ref().is_none_or(|s| s.matches(&a.labels));
                if ns_ok && pod_ok {
                    // An IPv6 link-local address names no one for sure: a port with
                    // `allowed_macs` may send from the EUI-64 address of each MAC it lists, and
                    // one without a filter from any (docs/policy.md), so a peer is its other
                    // addresses.
                    blocks.extend(
                        a.addrs
                            .iter()
                            .filter(|ip| !is_link_local(ip))
                            .map(|ip| PeerBlock { cidr: Cidr::host(*ip), except: vec![] }),
                    );
                }
            }
        }
        blocks
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|list| {
        let mut out = Vec::new();
        for (j, p) in list.iter().enumerate() {
            let pf = format!("{rf}.ports[{j}]");
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                o => {
                    r.push(&format!("{pf}.protocol"), &format!("{o:?} is not TCP, UDP or SCTP"));
                    continue;
                }
            };
            let port = match &p.port {
                None => None,
                Some(serde_yaml_ng::Value::Number(n)) => match n.as_i64() {
                    Some(v @ 1..=65535) => Some(v as u16),
                    _ => {
                        r.push(&format!("{pf}.port"), &format!("{n} is not a port number (1-65535)"));
                        continue;
                    }
                },
                Some(serde_yaml_ng::Value::String(s)) => {
                    r.push(
                        &format!("{pf}.port"),
                        &format!("named port {s:?} is not supported (VMs have no container ports)"),
                    );
                    continue;
                }
                Some(_) => {
                    r.push(&format!("{pf}.port"), "neither a number nor a name");
                    continue;
                }
            };
            let end_port = match (port, p.end_port) {
                (_, None) => None,
                (None, Some(_)) => {
                    r.push(&format!("{pf}.endPort"), "endPort needs port");
                    continue;
                }
                (Some(a), Some(e)) if e >= i64::from(a) && e <= 65535 => Some(e as u16),
                (Some(a), Some(e)) => {
                    r.push(&format!("{pf}.endPort"), &format!("{e} is not between port {a} and 65535"));
                    continue;
                }
            };
            out.push(PortRange { protocol, port, end_port });
        }
        out
    });
    PolicyRule { name, peers, ports }
}

/// Whether `ip` is an IPv6 link-local address (`fe80::/10`).
fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// What a node's ports get from the policies.
#[derive(Debug, Default)]
pub struct Resolved {
    /// By port name.
    pub policies: HashMap<String, PortPolicy>,
}

/// Resolves every policy of `state` against every attachment and sets the policy and IP spoof
/// filter of the ports of `plan` (problems and notes added to it).
pub fn apply(state: &ClusterState, plan: &mut Plan) {
    let mut problems = Vec::new();
    // Attachments serve policies and IP spoof filters alone: with neither, only the status
    // addresses are checked (the same problems), and no port changes.
    let spoofchk = |n: &crate::k8s::LoadedNad| matches!(&n.net, Ok(NadNetwork::Bridge(b)) if b.ipspoofchk);
    let needed = !state.policies.is_empty() || state.nads.values().any(spoofchk);
    let att = attachments(state, &mut problems, needed);
    if !needed {
        plan.problems.extend(problems);
        return;
    }
    let mut per_port: HashMap<String, PortPolicy> = HashMap::new();
    // The networks some policy is for: every port on them (and on their L2 segments, below)
    // gets the IP spoof filter, selected or not, since peers are told by their source
    // addresses (a VM without the filter could send from a peer's address and be let in as
    // that peer).
    let mut policy_nets = BTreeSet::new();
    for ((ns, name), l) in &state.policies {
        policy_nets.extend(resolve_one(state, ns, name, l, &att, &mut per_port, &mut problems));
    }
    let by_port: HashMap<&str, &Attachment> = att.iter().map(|a| (a.port.as_str(), a)).collect();
    // The L2 segments (bridge, access VLAN or none) of those networks: another NAD (of another
    // namespace, say) may put ports on the same bridge and VLAN, one segment with the policy's
    // peers, whose VMs must be filtered as well.
    let segments: BTreeSet<(&str, Option<u16>)> = plan
        .config
        .bridges
        .iter()
        .flat_map(|b| b.ports.iter().map(move |p| (b, p)))
        .filter(|(_, p)| by_port.get(p.name.as_str()).is_some_and(|a| policy_nets.contains(&a.nad)))
        .map(|(b, p)| (b.name.as_str(), p.tag))
        .collect();
    let mut segments: BTreeSet<(String, Option<u16>)> =
        segments.into_iter().map(|(b, t)| (b.to_string(), t)).collect();
    // The CNI subjects (VMI interfaces whose ports switchyard's CNI plugin attaches) on those
    // networks are on their segments too.
    let subject_nad = |s: &crate::cni_subject::CniSubject| by_port.get(s.port.as_str()).map(|a| &a.nad);
    for s in &plan.cni_subjects {
        if subject_nad(s).is_some_and(|n| policy_nets.contains(n)) {
            segments.insert((s.bridge.clone(), s.vlan));
        }
    }
    for b in &mut plan.config.bridges {
        let bridge = b.name.clone();
        for p in &mut b.ports {
            let Some(a) = by_port.get(p.name.as_str()) else { continue };
            let policy = per_port.remove(&p.name);
            let spoofchk = state
                .nads
                .get(&a.nad)
                .is_some_and(|n| matches!(&n.net, Ok(NadNetwork::Bridge(b)) if b.ipspoofchk));
            let segment = (bridge.clone(), p.tag);
            if policy.is_some() || spoofchk || policy_nets.contains(&a.nad) || segments.contains(&segment) {
                if a.addrs.is_empty() {
                    plan.notes.push(format!(
                        "{} has no known IP address yet (no status.interfaces addresses): no IP spoof filter",
                        p.name
                    ));
                } else {
                    let mut ips = a.addrs.clone();
                    // The switch allows the EUI-64 link-local address of a frame's source MAC
                    // only where it checked that MAC (`allowed_macs`); elsewhere the VM's own
                    // one is listed, from its MAC.
                    if p.allowed_macs.is_none() {
                        for m in &p.static_macs {
                            let lla = IpAddr::from(std::net::Ipv6Addr::from(
                                switchyard_dataplane::filter::eui64_link_local(m.to_u64()),
                            ));
                            if !ips.contains(&lla) {
                                ips.push(lla);
                            }
                        }
                    }
                    p.allowed_ips = Some(ips);
                }
            }
            p.policy = policy;
        }
    }
    // A CNI subject gets what a planned port of the interface would: its policy, and its
    // addresses for the IP spoof filter (the link-local address of the port's MAC is added
    // when the runtime merges the port, which has the MAC).
    for s in &mut plan.cni_subjects {
        let Some(a) = by_port.get(s.port.as_str()) else { continue };
        s.policy = per_port.remove(&s.port);
        let segment = (s.bridge.clone(), s.vlan);
        if s.policy.is_some() || policy_nets.contains(&a.nad) || segments.contains(&segment) {
            if a.addrs.is_empty() {
                plan.notes.push(format!(
                    "{} (a CNI port) has no known IP address yet (no status.interfaces addresses): no IP spoof filter",
                    s.port
                ));
            } else {
                s.allowed_ips = Some(a.addrs.clone());
            }
        }
    }
    plan.problems.extend(problems);
}

/// Resolves one policy into `per_port` (problems reported); returns its networks (none when
/// it is skipped whole).
fn resolve_one(
    state: &ClusterState,
    ns: &str,
    name: &str,
    l: &Loaded<MultiNetworkPolicy>,
    att: &[Attachment],
    per_port: &mut HashMap<String, PortPolicy>,
    problems: &mut Vec<Problem>,
) -> BTreeSet<(String, String)> {
    let mut r = Reporter { src: &l.src, oref: ObjRef::new("MultiNetworkPolicy", Some(ns), name), problems };
    let spec = &l.obj.spec;
    if let Err((f, m)) = spec.pod_selector.validate("spec.podSelector") {
        r.push(&f, &m);
        return BTreeSet::new();
    }
    let nets = networks(state, ns, &l.obj.metadata, &mut r);
    let (mut ing, mut eg) = (false, !spec.egress.is_empty());
    // An empty list is a missing one, as Kubernetes defaults it (and as the Go
    // implementations read it, which cannot tell the two apart).
    match spec.policy_types.as_deref().filter(|t| !t.is_empty()) {
        None => ing = true,
        Some(t) => {
            eg = false;
            for (i, t) in t.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ing = true,
                    "Egress" => eg = true,
                    o => {
                        r.push(&format!("spec.policyTypes[{i}]"), &format!("{o:?} is not Ingress or Egress"))
                    }
                }
            }
        }
    }
    let dir = |rules: &[MnpRule], d: &str, key: &str, other: &str, r: &mut Reporter| -> DirectionPolicy {
        let mut out = Vec::new();
        for (i, ru) in rules.iter().enumerate() {
            let rf = format!("spec.{d}[{i}]");
            let (peers, wrong) = if key == "from" { (&ru.from, &ru.to) } else { (&ru.to, &ru.from) };
            if wrong.is_some() {
                r.push(&format!("{rf}.{other}"), &format!("an {d} rule has no {other} (use {key})"));
                continue;
            }
            out.push(rule(
                &Scope { state, ns, att, nets: &nets },
                format!("{ns}/{name} {d}[{i}]"),
                peers.as_ref(),
                ru.ports.as_ref(),
                &rf,
                key,
                r,
            ));
        }
        DirectionPolicy { rules: out }
    };
    let ingress = ing.then(|| dir(&spec.ingress, "ingress", "from", "to", &mut r));
    let egress = eg.then(|| dir(&spec.egress, "egress", "to", "from", &mut r));
    for a in
        att.iter().filter(|a| a.ns == ns && nets.contains(&a.nad) && spec.pod_selector.matches(&a.labels))
    {
        let p = per_port.entry(a.port.clone()).or_default();
        for (mine, add) in [(&mut p.ingress, &ingress), (&mut p.egress, &egress)] {
            if let Some(add) = add {
                mine.get_or_insert_with(DirectionPolicy::default).rules.extend(add.rules.iter().cloned());
            }
        }
    }
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selector_operators() {
        let s: LabelSelector = serde_yaml_ng::from_str(
            "matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n- {key: x, operator: DoesNotExist}\n",
        )
        .unwrap();
        s.validate("s").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("x", "1")])));
        assert!(LabelSelector::default().matches(&labels(&[])), "empty selects all");
        let bad: LabelSelector =
            serde_yaml_ng::from_str("matchExpressions:\n- {key: tier, operator: Has}\n").unwrap();
        assert_eq!(bad.validate("s").unwrap_err().0, "s.matchExpressions[0].operator");
    }
}
