//! OVN-Kubernetes `topology: layer2` networks as overlays across the nodes: the tunnel port
//! each node's bridge of such a network gets (docs/overlay.md, "From cluster state").
//!
//! Invariants:
//! - Every node computes the same VNI for a network from the NADs alone (the oldest NAD's
//!   `vni` by `metadata.creationTimestamp`, then namespace/name; else a hash of the network's
//!   name into [`DERIVED_VNI_MIN`]..=[`MAX_VNI`]), with no coordination; of two networks
//!   with one VNI, the later one gets no tunnel at all (a problem on its NADs), so their
//!   frames never mix and a new NAD never turns an existing network off.
//! - The flood list is exactly the tunnel endpoints of the other nodes that host a VMI of the
//!   network (status.nodeName); every MAC of such a VMI is a static remote entry to its node's
//!   endpoint, and the port learns nothing. A MAC on one of this node's ports is never a
//!   remote entry (the local port wins).
//! - A node's endpoint is its `switchyard.io/tunnel-ip` annotation, else its first IPv4
//!   `InternalIP`, else its first IPv6 one (of `--tunnel-ip`'s family when that is given):
//!   one rule that this node applies to itself and to its peers, so two dual-stack nodes
//!   pick addresses each other listens on; a peer whose endpoint is of another family than
//!   this node's is left out (a problem on its Node). This node's own is `--tunnel-ip` first. An
//!   endpoint that no port could use (`unusable_endpoint`) is a problem on its Node, which
//!   alone is left out: the plan stays a valid configuration (each tunnel port is checked
//!   before it is added), so one bad Node never freezes every node's configuration.
//!
//! Cost: one pass over the NADs and one over the VMIs (and their interfaces) per plan.

use crate::k8s::{ClusterState, Loaded, Node, Source, VirtualMachineInstance};
use crate::nad::{Layer2Net, NadNetwork, MAX_VNI};
use crate::plan::{binding_of, nad_key, parse_mac, Binding, Plan, PlanOptions, OVN_LAYER2_PREFIX};
use crate::{ObjRef, Problem};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use switchyard_dataplane::config::{PortConfig, PortType, RemoteMac};
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_dataplane::wire::MacAddr;

/// The Node annotation that gives a node's tunnel endpoint instead of its InternalIP.
pub const TUNNEL_IP_ANNOTATION: &str = "switchyard.io/tunnel-ip";
/// The smallest derived VNI: 1-4095 are left to explicit `vni`s (often chosen equal to a
/// VLAN id), so a derived VNI never takes one of them.
pub const DERIVED_VNI_MIN: u32 = 4096;
/// The underlay MTU assumed when the plan is given none.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// The tunnel port of an overlay network: this prefix + the network's name.
pub const TUNNEL_PORT_PREFIX: &str = "tunnel/";

/// The VNI derived from a network's name: FNV-1a (32 bits) of the name, folded into
/// [`DERIVED_VNI_MIN`]..=[`MAX_VNI`] (never 0, never an explicit-range VNI).
pub fn derive_vni(network: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in network.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    DERIVED_VNI_MIN + h % (MAX_VNI - DERIVED_VNI_MIN + 1)
}

/// One overlay network as this node plans it (shown by `switchyard plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overlay {
    pub network: String,
    pub bridge: String,
    pub vni: u32,
    /// Whether the VNI was derived from the name (no `vni` in the NAD).
    pub vni_derived: bool,
    /// `vxlan` or `geneve`.
    pub tunnel: &'static str,
    /// The tunnel port, when one was planned (another node hosts a VMI of the network, this
    /// node's endpoint is known, no collision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    /// The other nodes hosting VMIs of the network, with their endpoints (the flood list).
    pub endpoints: Vec<Endpoint>,
    /// The MACs of those VMIs, each at its node's endpoint.
    pub remote_macs: Vec<RemoteVm>,
    /// The MTU a VM of the network should get: the underlay MTU less the tunnel's overhead.
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub node: String,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteVm {
    pub mac: MacAddr,
    pub node: String,
    pub ip: IpAddr,
    /// `namespace/vmi/interface`.
    pub interface: String,
}

/// A network's settings as its NADs give them (the oldest NAD decides: [`networks`]).
struct Net<'a> {
    l2: &'a Layer2Net,
    vni: u32,
    /// The place of the deciding NAD in the age order (0: the oldest of all).
    rank: usize,
    /// The NADs naming the network: (namespace/name, source, object).
    nads: Vec<(Source, ObjRef, &'a Layer2Net)>,
    collided: bool,
}

/// A VMI interface on a layer2 network.
struct Member {
    network: String,
    node: String,
    mac: Option<MacAddr>,
    interface: String,
    src: Source,
    vmi: ObjRef,
}

/// The MAC of interface `name` of `o`: the spec's, else the one the VMI reports. Invalid MACs
/// are left out here (the VMI's own node reports them).
fn vmi_mac(o: &VirtualMachineInstance, spec_mac: Option<&str>, name: &str) -> Option<MacAddr> {
    let s = spec_mac.or_else(|| {
        o.status.interfaces.iter().find(|s| s.name.as_deref() == Some(name)).and_then(|s| s.mac.as_deref())
    })?;
    parse_mac(s).ok()
}

fn members(state: &ClusterState, nets: &BTreeMap<String, Net<'_>>) -> Vec<Member> {
    let mut out = Vec::new();
    for l in state.vmis.values() {
        let o = &l.obj;
        let Some(node) = o.status.node_name.as_deref().filter(|n| !n.is_empty()) else { continue };
        let ns = o.metadata.namespace.as_deref().unwrap_or("default");
        for ifc in &o.spec.domain.devices.interfaces {
            if ifc.state.as_deref() == Some("absent") || matches!(binding_of(ifc), Binding::Skip(_)) {
                continue;
            }
            let Some(multus) =
                o.spec.networks.iter().find(|n| n.name == ifc.name).and_then(|n| n.multus.as_ref())
            else {
                continue;
            };
            let Some(nad) = state.nads.get(&nad_key(ns, &multus.network_name)) else { continue };
            let Ok(NadNetwork::OvnLayer2(l2)) = &nad.net else { continue };
            if !nets.contains_key(&l2.network) {
                continue;
            }
            out.push(Member {
                network: l2.network.clone(),
                node: node.to_string(),
                mac: vmi_mac(o, ifc.mac_address.as_deref(), &ifc.name),
                interface: format!("{ns}/{}/{}", o.metadata.name, ifc.name),
                src: l.src.clone(),
                vmi: ObjRef::new("VirtualMachineInstance", Some(ns), &o.metadata.name),
            });
        }
    }
    out
}

/// The layer2 networks of the state by name, with their VNIs; problems for NADs of one network
/// that disagree and for VNIs two networks share.
fn networks<'a>(state: &'a ClusterState, problems: &mut Vec<Problem>) -> BTreeMap<String, Net<'a>> {
    let mut nads: Vec<(&(String, String), &crate::k8s::LoadedNad, &Layer2Net)> = state
        .nads
        .iter()
        .filter_map(|(k, n)| match &n.net {
            Ok(NadNetwork::OvnLayer2(l2)) => Some((k, n, l2)),
            _ => None,
        })
        .collect();
    // Oldest first (metadata.creationTimestamp), then by namespace/name; a NAD without a
    // timestamp (a file that leaves it out) after every one with one. OVN-Kubernetes lets the
    // first NAD of a network define it: a NAD created later in some namespace never takes
    // over an existing network, whatever its name.
    let age = |n: &crate::k8s::LoadedNad| n.obj.metadata.creation_timestamp.clone();
    nads.sort_by(|a, b| {
        let (ta, tb) = (age(a.1), age(b.1));
        (ta.is_none(), ta, a.0).cmp(&(tb.is_none(), tb, b.0))
    });
    let mut nets: BTreeMap<String, Net<'a>> = BTreeMap::new();
    for (rank, (k, n, l2)) in nads.into_iter().enumerate() {
        let oref = ObjRef::new("NetworkAttachmentDefinition", Some(&k.0), &k.1);
        match nets.get_mut(&l2.network) {
            None => {
                let vni = l2.vni.unwrap_or_else(|| derive_vni(&l2.network));
                nets.insert(
                    l2.network.clone(),
                    Net { l2, vni, rank, nads: vec![(n.src.clone(), oref, l2)], collided: false },
                );
            }
            Some(net) => {
                let first = &net.nads[0].1;
                let differs = [
                    ("vni", l2.vni != net.l2.vni),
                    ("tunnel", l2.geneve != net.l2.geneve),
                    ("tunnelPort", l2.dstport != net.l2.dstport),
                ];
                for (key, _) in differs.iter().filter(|(_, d)| *d) {
                    let msg = format!(
                        "network {} has another {key} in {first}, its oldest NAD, which decides for the network",
                        l2.network
                    );
                    problems.push(Problem::object(&n.src, &oref, &format!("{}.{key}", l2.path), &msg));
                }
                net.nads.push((n.src.clone(), oref, l2));
            }
        }
    }
    // Collisions: of the networks of one VNI, the oldest keeps it; every later one loses its
    // tunnel (a NAD created later never turns an existing network off).
    let mut by_vni: BTreeMap<u32, Vec<(usize, String)>> = BTreeMap::new();
    for (name, net) in &nets {
        by_vni.entry(net.vni).or_default().push((net.rank, name.clone()));
    }
    for (vni, mut names) in by_vni.into_iter().filter(|(_, n)| n.len() > 1) {
        names.sort();
        let keeper = names[0].1.clone();
        for (_, name) in &names[1..] {
            let Some(net) = nets.get_mut(name) else { continue };
            net.collided = true;
            for (src, oref, l2) in &net.nads {
                let (field, how) = match l2.vni {
                    Some(_) => ("vni", "given"),
                    None => ("name", "derived from the name"),
                };
                let msg = format!(
                    "VNI {vni} ({how}) of network {name} is already the VNI of network {keeper}, defined \
                     earlier: network {name} gets no tunnel (give it another vni)"
                );
                problems.push(Problem::object(src, oref, &format!("{}.{field}", l2.path), &msg));
            }
        }
    }
    nets
}

/// Why `ip` cannot be a tunnel endpoint (a node's, or this node's own), if it cannot: the
/// unspecified address, a multicast or broadcast address, a loopback address, an IPv6
/// link-local address (it needs a scope a plan cannot name). Such an address would fail the
/// port's configuration check and, with it, the whole plan.
pub(crate) fn unusable_endpoint(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else {
        match ip {
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("an IPv6 link-local address"),
            _ => None,
        }
    }
}

/// A node's tunnel endpoint: the annotation, else its first usable InternalIP of family `v6`
/// when given (`--tunnel-ip`'s family), else -- the rule every node applies alike, to itself
/// and to its peers -- its first usable IPv4 InternalIP, or without one its first usable IPv6
/// InternalIP. `Err`: the field to blame and why.
pub(crate) fn node_endpoint(n: &Node, v6: Option<bool>) -> Result<IpAddr, (String, String)> {
    if let Some(a) = n.metadata.annotations.get(TUNNEL_IP_ANNOTATION) {
        let field = format!("metadata.annotations[{TUNNEL_IP_ANNOTATION}]");
        return match a.trim().parse::<IpAddr>() {
            Ok(ip) if v6.is_some_and(|v6| v6 != ip.is_ipv6()) => {
                Err((field, format!("{ip} is not of the family of this node's endpoint")))
            }
            Ok(ip) => match unusable_endpoint(ip) {
                Some(why) => Err((field, format!("{ip} is {why}, not a tunnel endpoint"))),
                None => Ok(ip),
            },
            Err(_) => Err((field, format!("{a:?} is not an IP address"))),
        };
    }
    let ips = || {
        n.status
            .addresses
            .iter()
            .filter(|a| a.kind == "InternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .filter(|ip| unusable_endpoint(*ip).is_none())
    };
    match v6 {
        None => ips().find(IpAddr::is_ipv4).or_else(|| ips().next()),
        Some(v6) => ips().find(|ip| ip.is_ipv6() == v6),
    }
    .ok_or_else(|| {
        let fam = match v6 {
            None => "",
            Some(true) => " IPv6",
            Some(false) => " IPv4",
        };
        (
            "status.addresses".into(),
            format!("no usable{fam} InternalIP (and no {TUNNEL_IP_ANNOTATION} annotation)"),
        )
    })
}

/// This node's endpoint: `--tunnel-ip`, else its Node object's (`None`: a problem says why).
fn local_endpoint(
    state: &ClusterState,
    node: &str,
    opts: &PlanOptions,
    problems: &mut Vec<Problem>,
) -> Option<IpAddr> {
    if let Some(ip) = opts.tunnel_ip {
        if let Some(why) = unusable_endpoint(ip) {
            let msg = format!("--tunnel-ip {ip} is {why}, not a tunnel endpoint: this node's overlay networks get no tunnel");
            problems.push(Problem::file("(plan)", msg));
            return None;
        }
        // The peers know this node's endpoint from its Node object only: a flag that differs
        // sends from an address they take datagrams from none of.
        if let Some(Ok(theirs)) = state.nodes.get(node).map(|l| node_endpoint(&l.obj, None)) {
            if theirs != ip {
                let msg = format!(
                    "--tunnel-ip {ip} differs from the endpoint the other nodes take from Node {node} ({theirs}): \
                     they drop this node's datagrams (tunnel_unknown_source); set the \
                     {TUNNEL_IP_ANNOTATION} annotation to {ip}"
                );
                problems.push(Problem::file("(plan)", msg));
            }
        }
        return Some(ip);
    }
    let p = match state.nodes.get(node) {
        Some(l) => match node_endpoint(&l.obj, None) {
            Ok(ip) => return Some(ip),
            Err((field, msg)) => node_problem(l, &field, &msg),
        },
        None => Problem::file(
            "(plan)",
            format!("no Node object {node} and no --tunnel-ip: this node's overlay networks get no tunnel"),
        ),
    };
    problems.push(p);
    None
}

/// The field a Node's endpoint comes from.
fn endpoint_field(n: &Node) -> &'static str {
    if n.metadata.annotations.contains_key(TUNNEL_IP_ANNOTATION) {
        "metadata.annotations[switchyard.io/tunnel-ip]"
    } else {
        "status.addresses"
    }
}

/// The endpoint (of family `v6` when given) of every Node among `nodes` (those hosting a VMI
/// of an overlay network, and this one), with the Nodes that have it, by name. A Node hosting
/// none (a stale object left by a reinstalled machine that got its address back) makes no
/// remote MAC ambiguous and does not count.
fn endpoint_owners(
    state: &ClusterState,
    v6: Option<bool>,
    nodes: &BTreeSet<&str>,
) -> BTreeMap<IpAddr, Vec<String>> {
    let mut owners: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for (name, l) in state.nodes.iter().filter(|(n, _)| nodes.contains(n.as_str())) {
        if let Ok(ip) = node_endpoint(&l.obj, v6) {
            owners.entry(ip).or_default().push(name.clone());
        }
    }
    owners
}

fn node_problem(l: &Loaded<Node>, field: &str, msg: &str) -> Problem {
    Problem::object(&l.src, &ObjRef::new("Node", None, &l.obj.metadata.name), field, msg)
}

/// Adds the tunnel port of each overlay network that has a bridge on this node, and the
/// overlays' account, to `plan` (problems for what cannot be planned).
pub fn apply(state: &ClusterState, opts: &PlanOptions, plan: &mut Plan) {
    let nets = networks(state, &mut plan.problems);
    if nets.is_empty() {
        return;
    }
    let members = members(state, &nets);
    let node = plan.node.clone();
    let mut local: Option<Option<IpAddr>> = None;
    // (local address, UDP port) of the tunnel ports planned so far, and their encapsulation:
    // the networks of one encapsulation share the socket (demultiplexed by VNI), another
    // encapsulation cannot use it.
    let mut sockets: BTreeMap<(IpAddr, u16), TunnelKind> = BTreeMap::new();
    // Nodes and VMIs already reported (a problem once, however many networks it touches).
    let mut reported: HashSet<ObjRef> = HashSet::new();
    let underlay_mtu = opts.underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU);
    // Every Node's endpoint and the Nodes that have it (this node's family; computed when a
    // peer is first needed).
    let mut owners: Option<BTreeMap<IpAddr, Vec<String>>> = None;
    let member_nodes: BTreeSet<&str> =
        members.iter().map(|m| m.node.as_str()).chain(std::iter::once(node.as_str())).collect();
    for (name, net) in &nets {
        let bridge_name = format!("{OVN_LAYER2_PREFIX}{name}");
        let Some(bi) = plan.config.bridges.iter().position(|b| b.name == bridge_name) else { continue };
        let kind = if net.l2.geneve { TunnelKind::Geneve } else { TunnelKind::Vxlan };
        // This node's endpoint matters (and its absence is a problem) only where another node
        // hosts a VMI of the network.
        let remote = members.iter().any(|m| &m.network == name && m.node != node);
        let local_ip = if remote {
            *local.get_or_insert_with(|| local_endpoint(state, &node, opts, &mut plan.problems))
        } else {
            None
        };
        let v6 = local_ip.map(|ip| ip.is_ipv6());
        let mtu = kind.overlay_mtu(v6.unwrap_or(false), underlay_mtu);
        // The peers' endpoints by the rule this node's own follows ([`node_endpoint`]): the
        // family of `--tunnel-ip` when given, else IPv4 first.
        let fam = opts.tunnel_ip.map(|ip| ip.is_ipv6());
        // This node sharing its endpoint with another: every other node leaves both out (the
        // peers' rule below), so this one keeps no tunnel either, and says so.
        if let Some(ip) = local_ip {
            let owners = owners.get_or_insert_with(|| endpoint_owners(state, fam, &member_nodes));
            if let Some(all) = owners.get(&ip).filter(|o| o.iter().any(|n| *n != node)) {
                if reported.insert(ObjRef::new("Node", None, &node)) {
                    let others: Vec<&str> = all.iter().filter(|o| **o != node).map(String::as_str).collect();
                    let msg = format!(
                        "this node's ({node}) tunnel endpoint {ip} is also node {}'s: the other nodes leave \
                         both out of the overlay, and this node plans no tunnel port",
                        others.join(", ")
                    );
                    plan.problems.push(match state.nodes.get(&node) {
                        Some(l) => node_problem(l, endpoint_field(&l.obj), &msg),
                        None => Problem::file("(plan)", msg),
                    });
                }
                continue;
            }
        }
        let local_macs: HashSet<MacAddr> =
            plan.config.bridges[bi].ports.iter().flat_map(|p| p.static_macs.iter().copied()).collect();
        let mut endpoints: BTreeMap<String, IpAddr> = BTreeMap::new();
        let mut remote_macs: Vec<RemoteVm> = Vec::new();
        let mut seen_macs: BTreeMap<MacAddr, String> = BTreeMap::new();
        for m in members.iter().filter(|m| &m.network == name && m.node != node) {
            let ip = match endpoints.get(&m.node) {
                Some(ip) => *ip,
                None => match state.nodes.get(&m.node) {
                    Some(l) => match node_endpoint(&l.obj, fam) {
                        // Of another family than this node's (a node with addresses of the
                        // other family only, or an annotation of it): unreachable from here.
                        Ok(ip) if v6.is_some_and(|v6| v6 != ip.is_ipv6()) => {
                            if reported.insert(ObjRef::new("Node", None, &m.node)) {
                                let msg = format!(
                                    "tunnel endpoint {ip} is not of the family of this node's ({node}) endpoint \
                                     {}: node {} is left out of the overlay here (give every node an address \
                                     of one family)",
                                    local_ip.map(|l| l.to_string()).unwrap_or_default(),
                                    m.node
                                );
                                plan.problems.push(node_problem(l, endpoint_field(&l.obj), &msg));
                            }
                            continue;
                        }
                        // This node's own address as a peer's: frames flooded there come
                        // back to this node (a VM sees its own broadcasts; IPv6 DAD fails).
                        Ok(ip) if Some(ip) == local_ip => {
                            if reported.insert(ObjRef::new("Node", None, &m.node)) {
                                let msg = format!(
                                    "tunnel endpoint {ip} is this node's ({node}) own: node {} is left out of the \
                                     overlay here",
                                    m.node
                                );
                                plan.problems.push(node_problem(l, endpoint_field(&l.obj), &msg));
                            }
                            continue;
                        }
                        Ok(ip) => {
                            let owners =
                                owners.get_or_insert_with(|| endpoint_owners(state, fam, &member_nodes));
                            match owners.get(&ip).filter(|o| o.len() > 1) {
                                // Several nodes on one endpoint: whichever answers there, the
                                // MACs of the others would be wrong. Every node leaves them
                                // all out, alike.
                                Some(all) => {
                                    for n in all {
                                        let Some(l) = state.nodes.get(n) else { continue };
                                        if reported.insert(ObjRef::new("Node", None, n)) {
                                            let others: Vec<&str> =
                                                all.iter().filter(|o| *o != n).map(String::as_str).collect();
                                            let msg = format!(
                                                "tunnel endpoint {ip} is also node {}'s: none of them is a tunnel \
                                                 endpoint (which one's VMIs are behind it is unknown)",
                                                others.join(", ")
                                            );
                                            plan.problems.push(node_problem(l, endpoint_field(&l.obj), &msg));
                                        }
                                    }
                                    continue;
                                }
                                None => *endpoints.entry(m.node.clone()).or_insert(ip),
                            }
                        }
                        Err((field, msg)) => {
                            let oref = ObjRef::new("Node", None, &m.node);
                            if reported.insert(oref) {
                                plan.problems.push(node_problem(
                                    l,
                                    &field,
                                    &format!("{msg}: no tunnel endpoint"),
                                ));
                            }
                            continue;
                        }
                    },
                    None => {
                        if reported.insert(m.vmi.clone()) {
                            let msg = format!(
                                "no Node object {}: the tunnel endpoint of its VMIs is unknown, they are not \
                                 reachable over network {name}",
                                m.node
                            );
                            plan.problems.push(Problem::object(&m.src, &m.vmi, "status.nodeName", &msg));
                        }
                        continue;
                    }
                },
            };
            let Some(mac) = m.mac else { continue };
            if local_macs.contains(&mac) {
                continue;
            }
            if let Some(first) = seen_macs.get(&mac) {
                let msg = format!("MAC {mac} is also on {first}: frames to it go to {first}'s node");
                plan.problems.push(Problem::object(&m.src, &m.vmi, "", &msg));
                continue;
            }
            seen_macs.insert(mac, m.interface.clone());
            remote_macs.push(RemoteVm { mac, node: m.node.clone(), ip, interface: m.interface.clone() });
        }
        if let Some(want) = net.l2.mtu.filter(|m| *m > mtu) {
            let (src, oref, l2) = &net.nads[0];
            let msg = format!(
                "MTU {want} is larger than the overlay's {mtu} ({} over a {underlay_mtu}-byte underlay): frames \
                 above {mtu} are dropped as tunnel_mtu",
                kind.name()
            );
            plan.problems.push(Problem::object(src, oref, &format!("{}.mtu", l2.path), &msg));
        }
        let dstport = net.l2.dstport.unwrap_or_else(|| kind.default_port());
        let mut port = None;
        if let (Some(lip), false, false) = (local_ip, endpoints.is_empty(), net.collided) {
            if *sockets.entry((lip, dstport)).or_insert(kind) == kind {
                let p = PortConfig {
                    name: format!("{TUNNEL_PORT_PREFIX}{name}"),
                    kind: Some(if net.l2.geneve { PortType::Geneve } else { PortType::Vxlan }),
                    vni: Some(net.vni),
                    local: Some(lip),
                    dstport: Some(dstport),
                    flood: Some(endpoints.values().copied().collect()),
                    remote_macs: remote_macs.iter().map(|r| RemoteMac { mac: r.mac, remote: r.ip }).collect(),
                    learn: Some(false),
                    ..Default::default()
                };
                // The port's own checks, so that a port the config would refuse costs this
                // network its tunnel, not every bridge its plan (the endpoints were checked
                // above; this catches what they missed).
                let (pi, bridge) = (plan.config.bridges[bi].ports.len(), &mut plan.config.bridges[bi]);
                bridge.ports.push(p);
                match bridge.ports[pi].validate_in(bi, pi) {
                    Ok(()) => port = Some(bridge.ports[pi].name.clone()),
                    Err(e) => {
                        bridge.ports.pop();
                        let (src, oref, l2) = &net.nads[0];
                        let msg =
                            format!("the tunnel port of network {name} is not valid ({e}): no tunnel port");
                        plan.problems.push(Problem::object(src, oref, &l2.path, &msg));
                    }
                }
            } else {
                let (src, oref, l2) = &net.nads[0];
                let msg = format!(
                    "an overlay network of another encapsulation on this node already uses UDP port {dstport} on \
                     {lip}: give network {name} its own tunnelPort (one socket serves one encapsulation)"
                );
                plan.problems.push(Problem::object(src, oref, &format!("{}.tunnelPort", l2.path), &msg));
            }
        }
        plan.overlays.push(Overlay {
            network: name.clone(),
            bridge: bridge_name,
            vni: net.vni,
            vni_derived: net.l2.vni.is_none(),
            tunnel: kind.name(),
            port,
            local: local_ip,
            endpoints: endpoints.into_iter().map(|(node, ip)| Endpoint { node, ip }).collect(),
            remote_macs,
            mtu,
        });
    }
    if let Err(e) = plan.config.validate() {
        plan.problems.push(Problem::file(
            "(plan)",
            format!("internal error: the plan with its tunnel ports is not a valid config: {e}"),
        ));
    }
}

impl Overlay {
    /// One line for the plan's YAML comments.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} vni {}{} {} mtu {}",
            self.bridge,
            self.vni,
            if self.vni_derived { " (derived)" } else { "" },
            self.tunnel,
            self.mtu
        );
        match (&self.port, &self.local) {
            (Some(p), Some(l)) => s.push_str(&format!(" port {p} local {l}")),
            (None, _) => s.push_str(" no tunnel port"),
            (Some(p), None) => s.push_str(&format!(" port {p}")),
        }
        let eps: Vec<String> = self.endpoints.iter().map(|e| format!("{}={}", e.node, e.ip)).collect();
        s.push_str(&format!(" endpoints [{}]", eps.join(", ")));
        let macs: Vec<String> = self.remote_macs.iter().map(|r| format!("{}@{}", r.mac, r.node)).collect();
        s.push_str(&format!(" remote_macs [{}]", macs.join(", ")));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;

    fn nad(ns: &str, name: &str, network: &str, extra: &str) -> String {
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {name}\n  \
             namespace: {ns}\nspec:\n  config: '{{\"name\":\"{network}\",\"type\":\"ovn-k8s-cni-overlay\",\
             \"topology\":\"layer2\"{extra}}}'\n"
        )
    }

    /// [`nad`] with a `metadata.creationTimestamp`.
    fn nad_at(ns: &str, name: &str, network: &str, extra: &str, created: &str) -> String {
        nad(ns, name, network, extra).replacen(
            "metadata:\n",
            &format!("metadata:\n  creationTimestamp: \"{created}\"\n"),
            1,
        )
    }

    fn vmi(name: &str, nad: &str, mac: &str, node: &str) -> String {
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: {name}\n  namespace: ns\n\
             spec:\n  domain:\n    devices:\n      interfaces:\n        - name: net1\n          bridge: {{}}\n          \
             macAddress: \"{mac}\"\n  networks:\n    - name: net1\n      multus:\n        networkName: {nad}\n\
             status:\n  nodeName: {node}\n"
        )
    }

    fn node(name: &str, ip: &str, annotation: Option<&str>) -> String {
        let ann = annotation
            .map(|a| format!("  annotations:\n    {TUNNEL_IP_ANNOTATION}: \"{a}\"\n"))
            .unwrap_or_default();
        let addrs = if ip.is_empty() {
            String::new()
        } else {
            format!("status:\n  addresses:\n    - {{type: Hostname, address: {name}}}\n    - {{type: InternalIP, address: \"{ip}\"}}\n")
        };
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{ann}{addrs}")
    }

    fn plan_of(docs: &[String], me: &str) -> Plan {
        let mut st = ClusterState::default();
        for (i, d) in docs.iter().enumerate() {
            st.add_yaml(&format!("f{i}.yaml"), d);
        }
        plan(&st, me, &BTreeMap::new(), &PlanOptions::default())
    }

    fn tunnel<'a>(p: &'a Plan, network: &str) -> Option<&'a PortConfig> {
        let name = format!("{TUNNEL_PORT_PREFIX}{network}");
        p.config.bridges.iter().flat_map(|b| &b.ports).find(|q| q.name == name)
    }

    fn fields(p: &Plan) -> Vec<(String, String)> {
        p.problems
            .iter()
            .map(|x| {
                (
                    x.object.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                    x.field.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Derived VNIs are stable, in 4096..=2^24-1, and differ between names.
    #[test]
    fn derived_vnis_are_stable_and_in_range() {
        assert_eq!(derive_vni("blue"), derive_vni("blue"));
        assert_ne!(derive_vni("blue"), derive_vni("red"));
        for n in ["", "a", "blue", &"x".repeat(300)] {
            let v = derive_vni(n);
            assert!((DERIVED_VNI_MIN..=MAX_VNI).contains(&v), "{n}: {v}");
        }
        // The fold reaches both ends of the range for some hash values: 4096 + h % span.
        assert_eq!(DERIVED_VNI_MIN + (MAX_VNI - DERIVED_VNI_MIN), MAX_VNI);
    }

    /// Three nodes: the flood list of n1 is exactly the other nodes hosting VMIs of the
    /// network (n2, and n3 through its annotation), not n4 (no VMI of it); every remote MAC is
    /// static at its node's endpoint; learning is off; the VNI is the NAD's or the derived one,
    /// the same on every node.
    #[test]
    fn endpoints_are_the_nodes_hosting_the_network() {
        let docs = vec![
            nad("ns", "blue", "blue", ""),
            nad("ns", "red", "red", r#","vni":77,"tunnel":"geneve""#),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            node("n3", "10.0.0.3", Some("192.168.9.3")),
            node("n4", "10.0.0.4", None),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
            vmi("c", "blue", "02:00:00:00:00:0c", "n3"),
            vmi("d", "red", "02:00:00:00:00:0d", "n4"),
            vmi("e", "red", "02:00:00:00:00:0e", "n1"),
            // The MAC of n1's own VMI a, claimed on n2 too: on n1 the local port wins.
            vmi("z", "blue", "02:00:00:00:00:0a", "n2"),
        ];
        let p = plan_of(&docs, "n1");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let t = tunnel(&p, "blue").expect("a tunnel port for blue");
        assert_eq!(t.kind, Some(PortType::Vxlan));
        assert_eq!(t.vni, Some(derive_vni("blue")));
        assert_eq!(t.local, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(t.dstport, Some(4789));
        assert_eq!(t.learn, Some(false));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.flood, Some(vec![ip("10.0.0.2"), ip("192.168.9.3")]));
        let rm: Vec<(String, IpAddr)> = t.remote_macs.iter().map(|r| (r.mac.to_string(), r.remote)).collect();
        assert_eq!(
            rm,
            [
                ("02:00:00:00:00:0b".to_string(), ip("10.0.0.2")),
                ("02:00:00:00:00:0c".to_string(), ip("192.168.9.3"))
            ]
        );
        let red = tunnel(&p, "red").expect("a tunnel port for red");
        assert_eq!((red.kind, red.vni, red.dstport), (Some(PortType::Geneve), Some(77), Some(6081)));
        assert_eq!(red.flood, Some(vec![ip("10.0.0.4")]));
        let o = p.overlays.iter().find(|o| o.network == "blue").unwrap();
        assert_eq!((o.mtu, o.vni_derived), (1450, true));
        assert_eq!(p.overlays.iter().find(|o| o.network == "red").unwrap().mtu, 1442);
        // n2 sees the same VNI, with n1 and n3 as its endpoints.
        let p2 = plan_of(&docs, "n2");
        let t2 = tunnel(&p2, "blue").unwrap();
        // On n2, z holds a's MAC on a local port: only c is remote.
        let rm2: Vec<String> = t2.remote_macs.iter().map(|r| r.mac.to_string()).collect();
        assert_eq!(rm2, ["02:00:00:00:00:0c"]);
        assert_eq!(t2.vni, t.vni);
        assert_eq!(t2.flood, Some(vec![ip("10.0.0.1"), ip("192.168.9.3")]));
        // n4 has no VMI of blue: no bridge, no tunnel for it.
        assert!(tunnel(&plan_of(&docs, "n4"), "blue").is_none());
        assert!(p.to_yaml().contains(&format!(
            "# overlay: ovn-layer2/blue vni {} (derived) vxlan mtu 1450",
            t.vni.unwrap()
        )));
    }

    /// Networks of one encapsulation on the same nodes share the default UDP port (one socket
    /// demultiplexed by VNI); a network of the other encapsulation on that port is a problem
    /// and gets no tunnel port.
    #[test]
    fn networks_of_one_encapsulation_share_the_udp_port() {
        let docs = vec![
            nad("ns", "blue", "blue", ""),
            nad("ns", "red", "red", r#","vni":77"#),
            nad("ns", "green", "green", r#","vni":78,"tunnel":"geneve","tunnelPort":4789"#),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
            vmi("c", "red", "02:00:00:00:00:0c", "n1"),
            vmi("d", "red", "02:00:00:00:00:0d", "n2"),
            vmi("e", "green", "02:00:00:00:00:0e", "n1"),
            vmi("f", "green", "02:00:00:00:00:0f", "n2"),
        ];
        let p = plan_of(&docs, "n1");
        let (blue, red) = (tunnel(&p, "blue").unwrap(), tunnel(&p, "red").unwrap());
        assert_eq!((blue.dstport, red.dstport), (Some(4789), Some(4789)));
        assert_eq!((blue.local, red.local), (red.local, Some("10.0.0.1".parse().unwrap())));
        assert_ne!(blue.vni, red.vni);
        assert!(tunnel(&p, "green").is_none());
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition ns/green".to_string(), "spec.config.tunnelPort".to_string())]
        );
        assert!(p.problems[0].message.contains("another encapsulation"), "{:?}", p.problems);
    }

    /// Dual-stack Nodes: a remote endpoint is the InternalIP of this node's endpoint's family
    /// (IPv6 with an IPv6 `--tunnel-ip`), and the overlay MTU counts the IPv6 header.
    #[test]
    fn endpoints_follow_the_local_family() {
        let dual = |name: &str, v4: &str, v6: &str| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n    \
                 - {{type: InternalIP, address: \"{v4}\"}}\n    - {{type: InternalIP, address: \"{v6}\"}}\n"
            )
        };
        let docs = vec![
            nad("ns", "blue", "blue", ""),
            dual("n1", "10.0.0.1", "fd00::1"),
            dual("n2", "10.0.0.2", "fd00::2"),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
        ];
        let p = plan_of(&docs, "n1");
        assert_eq!(tunnel(&p, "blue").unwrap().flood, Some(vec!["10.0.0.2".parse().unwrap()]));
        let mut st = ClusterState::default();
        for (i, d) in docs.iter().enumerate() {
            st.add_yaml(&format!("f{i}.yaml"), d);
        }
        let opts = PlanOptions { tunnel_ip: Some("fd00::1".parse().unwrap()), ..Default::default() };
        let p = plan(&st, "n1", &BTreeMap::new(), &opts);
        // The peers take n1's endpoint from its Node (IPv4 first): the flag differs, and the
        // plan says so (they would drop what n1 sends from fd00::1).
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert!(p.problems[0].message.contains("--tunnel-ip fd00::1 differs"), "{:?}", p.problems);
        let t = tunnel(&p, "blue").unwrap();
        assert_eq!(t.flood, Some(vec!["fd00::2".parse().unwrap()]));
        assert_eq!(t.remote_macs[0].remote, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(p.overlays[0].mtu, 1430);
    }

    /// Dual-stack Nodes listing their families in different orders: every node takes the
    /// same rule (IPv4 first) for itself and its peers, so n1 [v4, v6] and n2 [v6, v4] send to
    /// the addresses the other listens on; a node with IPv6 only is left out on both (a
    /// problem on its Node), not sent to at an address of another family.
    #[test]
    fn dual_stack_nodes_agree_on_their_endpoints() {
        let addrs = |name: &str, ips: &[&str]| {
            let list: String =
                ips.iter().map(|a| format!("    - {{type: InternalIP, address: \"{a}\"}}\n")).collect();
            format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n{list}")
        };
        let docs = vec![
            nad("ns", "blue", "blue", ""),
            addrs("n1", &["10.0.0.1", "fd00::1"]),
            addrs("n2", &["fd00::2", "10.0.0.2"]),
            addrs("n3", &["fd00::3"]),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
            vmi("c", "blue", "02:00:00:00:00:0c", "n3"),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p1 = plan_of(&docs, "n1");
        let p2 = plan_of(&docs, "n2");
        let (t1, t2) = (tunnel(&p1, "blue").unwrap(), tunnel(&p2, "blue").unwrap());
        assert_eq!((t1.local, t1.flood.clone()), (Some(ip("10.0.0.1")), Some(vec![ip("10.0.0.2")])));
        assert_eq!((t2.local, t2.flood.clone()), (Some(ip("10.0.0.2")), Some(vec![ip("10.0.0.1")])));
        for p in [&p1, &p2] {
            assert_eq!(
                fields(p),
                [("Node n3".to_string(), "status.addresses".to_string())],
                "{:?}",
                p.problems
            );
        }
        // n3 itself: IPv6 only, its peers' endpoints are IPv4: none is reachable.
        let p3 = plan_of(&docs, "n3");
        assert!(tunnel(&p3, "blue").is_none());
        assert_eq!(fields(&p3).len(), 2, "{:?}", p3.problems);
    }

    /// A network alone on its node has a bridge but no tunnel port, and needs no endpoint.
    #[test]
    fn a_network_on_one_node_has_no_tunnel_and_needs_no_node_ip() {
        let p = plan_of(&[nad("ns", "blue", "blue", ""), vmi("a", "blue", "02:00:00:00:00:0a", "n1")], "n1");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert!(tunnel(&p, "blue").is_none());
        assert_eq!(p.overlays.len(), 1);
        assert!(p.overlays[0].endpoints.is_empty() && p.overlays[0].port.is_none());
    }

    /// Two networks with one VNI (given, or derived from two names that hash alike): the
    /// network defined first keeps it, the later one loses its tunnel, with a problem on its
    /// NAD naming the other network and the field. Without timestamps, namespace/name order.
    #[test]
    fn a_vni_collision_costs_the_later_network_only() {
        let mut docs = vec![
            nad("ns", "blue", "blue", r#","vni":5000"#),
            nad("ns", "red", "red", r#","vni":5000"#),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
        ];
        for (i, n) in ["blue", "red"].iter().enumerate() {
            docs.push(vmi(&format!("l{i}"), n, &format!("02:00:00:00:01:0{i}"), "n1"));
            docs.push(vmi(&format!("r{i}"), n, &format!("02:00:00:00:02:0{i}"), "n2"));
        }
        let p = plan_of(&docs, "n1");
        assert!(tunnel(&p, "blue").is_some() && tunnel(&p, "red").is_none());
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition ns/red".to_string(), "spec.config.vni".to_string())]
        );
        assert!(p.problems[0].message.contains("network blue"), "{}", p.problems[0].message);
        // red created first: blue, the later, loses.
        docs[0] = nad_at("ns", "blue", "blue", r#","vni":5000"#, "2026-12-06T10:00:00Z");
        docs[1] = nad_at("ns", "red", "red", r#","vni":5000"#, "2026-12-05T10:00:00Z");
        let p = plan_of(&docs, "n1");
        assert!(tunnel(&p, "blue").is_none() && tunnel(&p, "red").is_some());
        assert_eq!(fields(&p)[0].0, "NetworkAttachmentDefinition ns/blue");

        // Two names whose derived VNIs collide (searched: the space has 2^24 - 4096 values).
        let mut seen: BTreeMap<u32, String> = BTreeMap::new();
        let (a, b) = (0..)
            .map(|i| format!("net-{i}"))
            .find_map(|n| seen.insert(derive_vni(&n), n.clone()).map(|prev| (prev, n)))
            .unwrap();
        let docs = vec![
            nad("ns", "a", &a, ""),
            nad("ns", "b", &b, ""),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            vmi("a1", "a", "02:00:00:00:01:01", "n1"),
            vmi("a2", "a", "02:00:00:00:01:02", "n2"),
        ];
        let p = plan_of(&docs, "n1");
        assert!(tunnel(&p, &a).is_some(), "ns/a is older by name");
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition ns/b".to_string(), "spec.config.name".to_string())]
        );
    }

    /// NADs of one network in several namespaces: the oldest by creationTimestamp decides the
    /// network's settings, whatever the names; a NAD created later with `vni` equal to an
    /// existing network's derived VNI costs only its own network the tunnel.
    #[test]
    fn the_oldest_nad_defines_a_network() {
        let base = vec![
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            vmi("a", "ns/blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "ns/blue", "02:00:00:00:00:0b", "n2"),
        ];
        let mut docs = base.clone();
        docs.push(nad_at("ns", "blue", "blue", "", "2026-12-01T00:00:00Z"));
        docs.push(nad_at("aaa", "mine", "blue", r#","vni":7"#, "2026-12-06T00:00:00Z"));
        let p = plan_of(&docs, "n1");
        assert_eq!(tunnel(&p, "blue").unwrap().vni, Some(derive_vni("blue")));
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition aaa/mine".to_string(), "spec.config.vni".to_string())]
        );
        // Another network claiming blue's derived VNI, later: only it loses.
        let mut docs = base;
        docs.push(nad_at("ns", "blue", "blue", "", "2026-12-01T00:00:00Z"));
        let vni = derive_vni("blue");
        docs.push(nad_at("aaa", "red", "red", &format!(r#","vni":{vni}"#), "2026-12-06T00:00:00Z"));
        let p = plan_of(&docs, "n1");
        assert_eq!(tunnel(&p, "blue").unwrap().vni, Some(vni));
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition aaa/red".to_string(), "spec.config.vni".to_string())]
        );
    }

    /// A bad `vni` is the NAD's problem (its VMIs are skipped); NADs of one network that
    /// disagree keep the first's settings, with a problem on the other.
    #[test]
    fn bad_and_disagreeing_vnis() {
        let p = plan_of(
            &[nad("ns", "blue", "blue", r#","vni":16777216"#), vmi("a", "blue", "02:00:00:00:00:0a", "n1")],
            "n1",
        );
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition ns/blue".to_string(), "spec.config.vni".to_string())]
        );
        let p = plan_of(
            &[nad("ns", "blue", "blue", r#","vni":0"#), vmi("a", "blue", "02:00:00:00:00:0a", "n1")],
            "n1",
        );
        assert_eq!(fields(&p)[0].1, "spec.config.vni");
        let p = plan_of(
            &[
                nad("a", "blue", "blue", r#","vni":10"#),
                nad("b", "blue", "blue", r#","vni":11"#),
                vmi("a", "a/blue", "02:00:00:00:00:0a", "n1"),
            ],
            "n1",
        );
        assert_eq!(
            fields(&p),
            [("NetworkAttachmentDefinition b/blue".to_string(), "spec.config.vni".to_string())]
        );
        assert_eq!(p.overlays[0].vni, 10);
    }

    /// A remote node without an address is a problem on that Node (its VMIs are left out); a
    /// VMI on a node with no Node object is a problem on the VMI; this node without an
    /// address (and no --tunnel-ip) gets no tunnel; `--tunnel-ip` wins over the Node's.
    #[test]
    fn missing_node_addresses_are_problems_with_the_field() {
        let docs = vec![
            nad("ns", "blue", "blue", ""),
            node("n1", "10.0.0.1", None),
            node("n2", "", None),
            node("n3", "10.0.0.3", Some("not-an-ip")),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
            vmi("c", "blue", "02:00:00:00:00:0c", "n3"),
            vmi("d", "blue", "02:00:00:00:00:0d", "n9"),
        ];
        let p = plan_of(&docs, "n1");
        assert_eq!(
            fields(&p),
            [
                ("Node n2".to_string(), "status.addresses".to_string()),
                ("Node n3".to_string(), format!("metadata.annotations[{TUNNEL_IP_ANNOTATION}]")),
                ("VirtualMachineInstance ns/d".to_string(), "status.nodeName".to_string()),
            ]
        );
        assert!(tunnel(&p, "blue").is_none(), "no endpoint is known");
        // n2 itself has no address: no tunnel, a problem naming its Node; --tunnel-ip mends it.
        let p = plan_of(&docs, "n2");
        assert!(fields(&p).contains(&("Node n2".to_string(), "status.addresses".to_string())));
        assert!(tunnel(&p, "blue").is_none());
        let mut st = ClusterState::default();
        for (i, d) in docs.iter().enumerate() {
            st.add_yaml(&format!("f{i}.yaml"), d);
        }
        let opts = PlanOptions { tunnel_ip: Some("10.9.9.2".parse().unwrap()), ..Default::default() };
        let p = plan(&st, "n2", &BTreeMap::new(), &opts);
        let t = tunnel(&p, "blue").expect("--tunnel-ip gives n2 its endpoint");
        assert_eq!(t.local, Some("10.9.9.2".parse().unwrap()));
        assert_eq!(t.flood, Some(vec!["10.0.0.1".parse().unwrap()]));
    }

    /// A Node whose endpoint is no usable unicast address (the annotation unspecified,
    /// multicast, broadcast, loopback, IPv6 link-local; an InternalIP of such only) is a
    /// problem on that Node and only it is left out: the plan stays valid, the other nodes
    /// keep their tunnel. Before, the plan failed its config check and the runtime kept its
    /// old configuration for every bridge.
    #[test]
    fn a_node_with_an_unusable_endpoint_is_left_out_alone() {
        let bad = ["0.0.0.0", "224.0.0.1", "255.255.255.255", "127.0.0.1", "::", "fe80::1", "ff02::1"];
        let mut docs = vec![
            nad("ns", "blue", "blue", ""),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
        ];
        for (i, a) in bad.iter().enumerate() {
            docs.push(node(&format!("x{i}"), "10.0.0.9", Some(a)));
            docs.push(vmi(&format!("v{i}"), "blue", &format!("02:00:00:00:01:0{i}"), &format!("x{i}")));
        }
        // Only an unusable InternalIP: no endpoint either.
        docs.push(node("y", "0.0.0.0", None));
        docs.push(vmi("w", "blue", "02:00:00:00:02:01", "y"));
        let p = plan_of(&docs, "n1");
        assert!(p.config.validate().is_ok());
        let mut want: Vec<(String, String)> = (0..bad.len())
            .map(|i| (format!("Node x{i}"), format!("metadata.annotations[{TUNNEL_IP_ANNOTATION}]")))
            .collect();
        want.push(("Node y".into(), "status.addresses".into()));
        assert_eq!(fields(&p), want, "{:?}", p.problems);
        let t = tunnel(&p, "blue").expect("n2 keeps its tunnel");
        assert_eq!(t.flood, Some(vec!["10.0.0.2".parse().unwrap()]));
        assert_eq!(t.remote_macs.len(), 1);
        // This node's own endpoint unusable: a problem on it, no tunnel, the plan still valid.
        docs[1] = node("n1", "10.0.0.1", Some("0.0.0.0"));
        let p = plan_of(&docs, "n1");
        assert!(p.config.validate().is_ok());
        assert!(tunnel(&p, "blue").is_none());
        assert!(
            fields(&p).contains(&("Node n1".into(), format!("metadata.annotations[{TUNNEL_IP_ANNOTATION}]")))
        );
        assert!(!p.problems.iter().any(|x| x.message.contains("internal error")), "{:?}", p.problems);
    }

    /// A peer whose endpoint is this node's own is left out (its flood copies would come back
    /// here) with a problem on its Node; two nodes on one endpoint are both left out, each
    /// with a problem naming the other, on every node alike.
    #[test]
    fn own_and_shared_endpoints_are_left_out() {
        let docs = vec![
            nad("ns", "blue", "blue", ""),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            node("n3", "10.0.0.3", Some("10.0.0.1")),
            node("n4", "10.0.0.4", Some("10.0.0.5")),
            node("n5", "10.0.0.5", None),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("b", "blue", "02:00:00:00:00:0b", "n2"),
            vmi("c", "blue", "02:00:00:00:00:0c", "n3"),
            vmi("d", "blue", "02:00:00:00:00:0d", "n4"),
            vmi("e", "blue", "02:00:00:00:00:0e", "n5"),
        ];
        let ann = format!("metadata.annotations[{TUNNEL_IP_ANNOTATION}]");
        // n1 shares its endpoint with n3: every other node leaves both out, so n1 keeps no
        // tunnel either (it would send where nobody takes it), with a problem on its Node.
        let p = plan_of(&docs, "n1");
        assert!(p.config.validate().is_ok());
        assert!(tunnel(&p, "blue").is_none(), "{:?}", p.overlays);
        let f = fields(&p);
        assert!(f.contains(&("Node n1".to_string(), "status.addresses".to_string())), "{:?}", p.problems);
        assert!(p.problems.iter().any(|x| x.message.contains("also node n3's")), "{:?}", p.problems);
        // Without n3's claim on it, n1 floods to n2 only (n4 and n5 share one).
        let mut alone = docs.clone();
        alone[3] = node("n3", "10.0.0.3", None);
        let p = plan_of(&alone, "n1");
        let t = tunnel(&p, "blue").expect("n2 and n3 are left");
        assert_eq!(t.flood, Some(vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()]));
        let f = fields(&p);
        assert!(f.contains(&("Node n4".to_string(), ann.clone())), "{:?}", p.problems);
        assert!(f.contains(&("Node n5".to_string(), "status.addresses".to_string())), "{:?}", p.problems);
        // A stale Node object hosting no VMI on n2's address makes nothing ambiguous.
        alone.push(node("old-n2", "10.0.0.2", None));
        let p = plan_of(&alone, "n1");
        let t = tunnel(&p, "blue").expect("n2 is kept");
        assert!(t.flood.as_ref().is_some_and(|f| f.contains(&"10.0.0.2".parse().unwrap())), "{:?}", t.flood);
        assert!(!p.problems.iter().any(|x| x.message.contains("old-n2")), "{:?}", p.problems);
        // n3 and n1 share 10.0.0.1 too: on n2 neither is an endpoint, nor n4 and n5.
        let p2 = plan_of(&docs, "n2");
        assert!(tunnel(&p2, "blue").is_none(), "no endpoint left: {:?}", p2.overlays);
        let f2 = fields(&p2);
        for n in ["n1", "n3", "n4", "n5"] {
            assert!(f2.iter().any(|(o, _)| o == &format!("Node {n}")), "{n}: {:?}", p2.problems);
        }
    }

    /// During a migration (status.migrationState.targetNode, not completed) the target node
    /// has the VM's port already, without the MAC static, and the MAC stays remote at the
    /// source; the source keeps its port and static entry. Completed or failed: as usual.
    #[test]
    fn a_migration_in_progress_gives_the_target_a_port_without_the_static_mac() {
        let mut docs = vec![
            nad("ns", "blue", "blue", ""),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            vmi("c", "blue", "02:00:00:00:00:0c", "n2"),
        ];
        let b = vmi("b", "blue", "02:00:00:00:00:0b", "n1");
        docs.push(format!("{b}  migrationState: {{targetNode: n2, sourceNode: n1, completed: false}}\n"));
        let port_b = |p: &Plan| {
            p.config.bridges.iter().flat_map(|b| &b.ports).find(|q| q.name == "ns/b/net1").cloned()
        };
        let p2 = plan_of(&docs, "n2");
        assert!(p2.problems.is_empty(), "{:?}", p2.problems);
        let q = port_b(&p2).expect("the target has b's port");
        assert!(q.static_macs.is_empty(), "{q:?}");
        let rm: Vec<String> = tunnel(&p2, "blue")
            .unwrap()
            .remote_macs
            .iter()
            .map(|r| format!("{}@{}", r.mac, r.remote))
            .collect();
        assert_eq!(rm, ["02:00:00:00:00:0b@10.0.0.1"]);
        let p1 = plan_of(&docs, "n1");
        assert_eq!(port_b(&p1).unwrap().static_macs.len(), 1);
        // Failed: the target has no port any more.
        docs.pop();
        docs.push(format!("{b}  migrationState: {{targetNode: n2, sourceNode: n1, failed: true}}\n"));
        assert!(port_b(&plan_of(&docs, "n2")).is_none());
    }

    /// Migration: the VMI's MAC is local on the node named by status.nodeName and remote to
    /// that node everywhere else; an NAD MTU above the overlay's is a problem on `mtu`.
    #[test]
    fn a_moved_vmi_is_local_on_its_new_node_and_remote_elsewhere() {
        let base = vec![
            nad("ns", "blue", "blue", r#","mtu":1500"#),
            node("n1", "10.0.0.1", None),
            node("n2", "10.0.0.2", None),
            vmi("a", "blue", "02:00:00:00:00:0a", "n1"),
            vmi("c", "blue", "02:00:00:00:00:0c", "n2"),
        ];
        let mut before = base.clone();
        before.push(vmi("b", "blue", "02:00:00:00:00:0b", "n1"));
        let mut after = base;
        after.push(vmi("b", "blue", "02:00:00:00:00:0b", "n2"));
        let remote = |p: &Plan| -> Vec<String> {
            tunnel(p, "blue").unwrap().remote_macs.iter().map(|r| format!("{}@{}", r.mac, r.remote)).collect()
        };
        let p1 = plan_of(&before, "n1");
        assert_eq!(remote(&p1), ["02:00:00:00:00:0c@10.0.0.2"]);
        assert_eq!(
            fields(&p1),
            [("NetworkAttachmentDefinition ns/blue".to_string(), "spec.config.mtu".to_string())]
        );
        let p1 = plan_of(&after, "n1");
        assert_eq!(remote(&p1), ["02:00:00:00:00:0b@10.0.0.2", "02:00:00:00:00:0c@10.0.0.2"]);
        assert!(!p1.config.bridges.iter().flat_map(|b| &b.ports).any(|q| q.name == "ns/b/net1"));
        let p2 = plan_of(&after, "n2");
        assert_eq!(remote(&p2), ["02:00:00:00:00:0a@10.0.0.1"]);
        assert!(p2.config.bridges.iter().flat_map(|b| &b.ports).any(|q| q.name == "ns/b/net1"));
    }
}
