//! Translation: cluster state -> the dataplane configuration of one node.
//! docs/cluster-state.md is the specification; each rule there has a test in
//! control/tests/plan_rules.rs.
//!
//! Cost: one pass over the NNCPs, one over the VMIs; each VMI network is resolved with a hash
//! lookup of its NAD (whose CNI config was parsed once, at load). Linear in the state's size.
//! [`plan_memo`] re-plans only the VMIs whose object or NADs changed (`Arc` identity) and
//! gives the result [`plan`] gives (control/tests/incremental.rs checks it on random event
//! sequences); docs/cluster-state.md describes the incremental reconcile.

use crate::cni_subject::CniSubject;
use crate::k8s::{
    ClusterState, Interface, Loaded, NetworkAttachmentDefinition, NmPort, NodeNetworkConfigurationPolicy,
    Source, VirtualMachineInstance,
};
use crate::nad::NadNetwork;
use crate::{ObjRef, Problem, Skipped};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType, VlanModeName};
use switchyard_dataplane::wire::MacAddr;

/// Knobs of the translation that are not in the cluster state.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Directory of the vhost-user sockets of VM ports.
    pub vhost_dir: String,
    /// Permissions of those sockets (octal, e.g. "0660"), so that QEMU running as another
    /// user can connect; `None` leaves them to the process's umask.
    pub vhost_socket_mode: Option<String>,
    /// This node's tunnel endpoint for overlay networks (`--tunnel-ip`); `None`: its Node
    /// object's (control/src/overlay.rs).
    pub tunnel_ip: Option<std::net::IpAddr>,
    /// The underlay MTU overlay MTUs are computed from; `None`: 1500.
    pub underlay_mtu: Option<u32>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            vhost_dir: DEFAULT_VHOST_DIR.into(),
            vhost_socket_mode: None,
            tunnel_ip: None,
            underlay_mtu: None,
        }
    }
}

pub const DEFAULT_VHOST_DIR: &str = "/var/run/switchyard/vhost";
/// Bridge of an OVN-Kubernetes layer2 network: this prefix + the network's `name`.
pub const OVN_LAYER2_PREFIX: &str = "ovn-layer2/";
/// Bridge of an OVN-Kubernetes localnet whose physical network has no bridge mapping on the
/// node: this prefix + the physical network name.
pub const OVN_LOCALNET_PREFIX: &str = "ovn-localnet/";
/// The longest socket path a Unix socket address holds (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What a node gets: its configuration, and an account of everything left out.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub node: String,
    pub config: Config,
    /// Objects or parts deliberately given no port (pod network, SR-IOV, absent, ...).
    pub skipped: Vec<Skipped>,
    /// Facts worth knowing that are not errors (a localnet without a bridge mapping, ...).
    pub notes: Vec<String>,
    /// Bad input: each names file, object and field; that object (or part) was skipped.
    pub problems: Vec<Problem>,
    /// The overlay networks with a bridge on this node (control/src/overlay.rs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<crate::overlay::Overlay>,
    /// The interfaces of this node's VMIs on NADs of switchyard's CNI plugin, whose ports the
    /// plugin attaches: how the runtime tells their CNI ports, and the policy and IP spoof
    /// filter each gets (control/src/cni_subject.rs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cni_subjects: Vec<CniSubject>,
    /// Whether a rule between ports (a port name or a static MAC named twice, the port limit)
    /// made a problem: another VMI's change may then mend it, so no delta follows this plan.
    #[serde(skip)]
    pub(crate) ports_conflict: bool,
}

/// A port as built, with where it came from (for problems found when ports meet).
#[derive(Debug, Clone)]
pub(crate) struct Built {
    pub(crate) bridge: String,
    pub(crate) port: PortConfig,
    /// Shared: a memoised VMI's ports are copied into every plan.
    src: Option<Arc<(Source, ObjRef, String)>>,
    /// The creation time of the VMI the port is for (none for uplinks): of two VM ports
    /// claiming one MAC, the older one keeps it.
    created: Option<Arc<str>>,
}

/// The labels a node is matched with: its Node object's, then `extra` over them, and
/// `kubernetes.io/hostname=NODE` unless one of those sets it (the kubelet sets it on every
/// node).
pub fn node_labels(
    state: &ClusterState,
    node: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = state.nodes.get(node).map(|n| n.obj.metadata.labels.clone()).unwrap_or_default();
    labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.entry("kubernetes.io/hostname".into()).or_insert_with(|| node.to_string());
    labels
}

/// Translates `state` into the configuration of `node`. `extra_labels` are node labels
/// given on the command line (see [`node_labels`]). Never fails: problems are in the plan.
pub fn plan(
    state: &ClusterState,
    node: &str,
    extra_labels: &BTreeMap<String, String>,
    opts: &PlanOptions,
) -> Plan {
    plan_memo(state, node, extra_labels, opts, &mut PlanMemo::default())
}

/// A NAD looked up by a VMI, as it was (None: there was none).
type SeenNad = ((String, String), Option<Arc<NetworkAttachmentDefinition>>);
/// What a memo's entries depend on besides their VMI and NADs: node, vhost directory and
/// socket mode, bridge mappings.
type MemoKey = (String, String, Option<String>, Vec<(String, String)>);

/// What planning each VMI gave, kept from one plan to the next: a VMI whose object, NADs and
/// bridge mappings are the very same (`Arc` identity: the API source keeps an unchanged
/// object's `Arc`) is not planned again, its ports are taken from here. The result is the one
/// [`plan`] gives.
#[derive(Debug, Clone, Default)]
pub struct PlanMemo {
    /// The node, vhost options and bridge mappings the entries were planned with.
    key: Option<MemoKey>,
    /// The OVN bridge mappings of the last plan (a VMI planned alone needs them).
    mappings: BTreeMap<String, (String, ObjRef)>,
    /// The uplinks (NNCP ports) of the last plan, as built.
    pub(crate) uplinks: Vec<Built>,
    vmis: HashMap<(String, String), VmiMemo>,
    /// Where the last plan's time went (NNCPs, VMIs, finish, policies).
    pub phases: crate::phases::Phases,
}

#[derive(Debug, Clone)]
pub(crate) struct VmiMemo {
    vmi: Arc<VirtualMachineInstance>,
    /// The NADs it looked up, as they were (None: there was none).
    pub(crate) nads: Vec<SeenNad>,
    pub(crate) ports: Vec<Built>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) problems: Vec<Problem>,
    pub(crate) notes: Vec<String>,
    pub(crate) cni: Vec<CniSubject>,
}

impl PlanMemo {
    /// What VMI `k` planned to last time (None: it was not planned, not being on the node).
    pub(crate) fn vmi(&self, k: &(String, String)) -> Option<&VmiMemo> {
        self.vmis.get(k)
    }

    /// Every VMI planned last time.
    pub(crate) fn vmis(&self) -> impl Iterator<Item = &VmiMemo> {
        self.vmis.values()
    }

    /// Replaces what VMI `k` planned to (None: it is gone or not on the node), after a plan of
    /// it alone ([`plan_vmi`]) that the caller applied.
    pub(crate) fn set_vmi(&mut self, k: &(String, String), m: Option<VmiMemo>) {
        match m {
            Some(m) => drop(self.vmis.insert(k.clone(), m)),
            None => drop(self.vmis.remove(k)),
        }
    }
}

/// Whether a VMI has ports on `node`: it runs there, or is the target of a migration to it.
fn on_node(l: &Loaded<VirtualMachineInstance>, node: &str) -> bool {
    l.obj.status.node_name.as_deref() == Some(node) || l.obj.status.migration_target() == Some(node)
}

/// Plans one VMI alone, as [`plan_memo`] plans it with the bridge mappings of `memo`'s last
/// plan (None: it has no ports on `node`).
pub(crate) fn plan_vmi(
    state: &ClusterState,
    l: &Loaded<VirtualMachineInstance>,
    node: &str,
    opts: &PlanOptions,
    memo: &PlanMemo,
) -> Option<VmiMemo> {
    on_node(l, node).then(|| Planner::new(Vec::new(), memo.mappings.clone()).vmi_memo(state, l, node, opts))
}

impl VmiMemo {
    fn still_valid(&self, state: &ClusterState, vmi: &Arc<VirtualMachineInstance>) -> bool {
        Arc::ptr_eq(&self.vmi, vmi)
            && self.nads.iter().all(|(k, was)| match (state.nads.get(k), was) {
                (Some(n), Some(w)) => Arc::ptr_eq(&n.obj, w),
                (None, None) => true,
                _ => false,
            })
    }
}

/// [`plan`], reusing and refreshing `memo`.
pub fn plan_memo(
    state: &ClusterState,
    node: &str,
    extra_labels: &BTreeMap<String, String>,
    opts: &PlanOptions,
    memo: &mut PlanMemo,
) -> Plan {
    let mut ph = crate::phases::Phases::start();
    let labels = node_labels(state, node, extra_labels);
    let mut p = Planner::new(state.problems.clone(), BTreeMap::new());
    for l in state.nncps.values() {
        p.nncp(l, &labels);
    }
    let key = (
        node.to_string(),
        opts.vhost_dir.clone(),
        opts.vhost_socket_mode.clone(),
        p.mappings.iter().map(|(l, (b, _))| (l.clone(), b.clone())).collect(),
    );
    if memo.key.as_ref() != Some(&key) {
        memo.vmis.clear();
        memo.key = Some(key);
    }
    memo.mappings.clone_from(&p.mappings);
    memo.uplinks.clone_from(&p.ports);
    ph.mark("plan NNCPs");
    // Entries stay where they are (no key is copied for a VMI that did not change).
    memo.vmis
        .retain(|k, m| state.vmis.get(k).is_some_and(|l| on_node(l, node) && m.still_valid(state, &l.obj)));
    for (k, l) in &state.vmis {
        if !on_node(l, node) {
            continue;
        }
        if !memo.vmis.contains_key(k) {
            let m = Planner::new(Vec::new(), p.mappings.clone()).vmi_memo(state, l, node, opts);
            memo.vmis.insert(k.clone(), m);
        }
        let m = &memo.vmis[k];
        p.ports.extend(m.ports.iter().cloned());
        p.skipped.extend(m.skipped.iter().cloned());
        p.problems.extend(m.problems.iter().cloned());
        p.notes.extend(m.notes.iter().cloned());
        p.cni.extend(m.cni.iter().cloned());
    }
    // A VMI whose virt-launcher pod is scheduled here (`status.activePods`) but that does not
    // run here yet: KubeVirt sets `status.nodeName` only once the pod is ready, after the CNI
    // ADDs of its pod, so its CNI subjects are made from the pod's scheduling on, for the
    // ADD to find. Nothing else of it is planned (its ports come when it runs here), and it
    // is not memoised (the memo's ports are what the delta path indexes).
    for l in state.vmis.values() {
        if !on_node(l, node) && l.obj.status.active_pods.values().any(|n| n == node) {
            let vp = Planner::new(Vec::new(), p.mappings.clone());
            p.cni.extend(vp.vmi_memo(state, l, node, opts).cni);
        }
    }
    // Problems are returned, not logged: the caller reports them (plan prints them, run logs
    // them once per change).
    ph.mark("plan VMIs");
    let mut plan = p.finish(node);
    ph.mark("plan finish");
    crate::overlay::apply(state, opts, &mut plan);
    crate::policy::apply(state, &mut plan);
    plan.skipped.sort_by(|a, b| (&a.object, &a.item).cmp(&(&b.object, &b.item)));
    ph.mark("plan overlays, policies");
    memo.phases = ph;
    plan
}

struct Planner {
    problems: Vec<Problem>,
    skipped: Vec<Skipped>,
    notes: Vec<String>,
    ports: Vec<Built>,
    /// Bridges that exist even with no port (from NNCPs), and which object defined them.
    bridges: BTreeMap<String, ObjRef>,
    /// OVN localnet (physical network) -> bridge, from `ovn.bridge-mappings`.
    mappings: BTreeMap<String, (String, ObjRef)>,
    /// The NADs the VMI being planned looked up (for [`PlanMemo`]).
    nads_seen: Vec<SeenNad>,
    /// The CNI subjects of the VMIs planned.
    cni: Vec<CniSubject>,
}

/// The CNI subject of VMI `o`'s interface `iface` on the switchyard NAD `nad` (its policy and
/// allowed addresses are the policy stage's, [`crate::policy::apply`]).
fn cni_subject(
    o: &VirtualMachineInstance,
    ns: &str,
    vmi: &str,
    iface: &str,
    nad: (&str, &str),
    (bridge, vlan): (&str, Option<u16>),
    mac: Option<MacAddr>,
) -> CniSubject {
    use crate::cni_subject::{hashed_ifname, ordinal_ifname, pod_prefix};
    // The multus default network is the pod's `eth0` (KubeVirt's both schemes); a secondary
    // one is named by the hashed scheme, or the ordinal one in older pods.
    let default =
        o.spec.networks.iter().any(|n| n.name == iface && n.multus.as_ref().is_some_and(|m| m.default));
    let mut ifnames = vec![if default { "eth0".to_string() } else { hashed_ifname(iface) }];
    // KubeVirt's ordinal scheme counts the multus networks that are not the default one.
    let secondary = o.spec.networks.iter().filter(|n| n.multus.as_ref().is_some_and(|m| !m.default));
    if let Some(i) = secondary.map(|n| n.name.as_str()).position(|n| n == iface) {
        ifnames.push(ordinal_ifname(i + 1));
    }
    for s in o.status.interfaces.iter().filter(|s| s.name.as_deref() == Some(iface)) {
        if let Some(p) = s.pod_interface_name.as_ref().filter(|p| !p.is_empty() && !ifnames.contains(p)) {
            ifnames.push(p.clone());
        }
    }
    CniSubject {
        port: format!("{ns}/{vmi}/{iface}"),
        namespace: ns.to_string(),
        vmi: vmi.to_string(),
        nad: format!("{}/{}", nad.0, nad.1),
        bridge: bridge.to_string(),
        vlan,
        pod_prefix: pod_prefix(vmi),
        pod_uids: o.status.active_pods.keys().cloned().collect(),
        ifnames,
        mac: mac.map(|m| m.to_string()),
        policy: None,
        allowed_ips: None,
    }
}

fn vlan_id(v: i64, field: &str, errs: &mut Vec<(String, String)>) -> Option<u16> {
    if (1..=4094).contains(&v) {
        Some(v as u16)
    } else {
        errs.push((field.to_string(), format!("VLAN {v} out of range 1-4094")));
        None
    }
}

/// A port whose untagged frames are VLAN `tag` and which carries `trunks` tagged besides: a
/// native-untagged port, or an access port on `tag` when no other VLAN is left. Never a
/// native-untagged port with an empty trunk list, which the switch reads as "every VLAN" (as
/// OVS reads an empty `trunks`): the bridge CNI's `"vlan": 7, "vlanTrunk": [{"id": 7}]` and
/// nmstate's `enable-native` with `trunk-tags` of the native VLAN alone mean VLAN 7 only.
fn native_vlan(tag: u16, trunks: Vec<u16>) -> (VlanModeName, Option<u16>, Option<Vec<u16>>) {
    let trunks: Vec<u16> = trunks.into_iter().filter(|t| *t != tag).collect();
    if trunks.is_empty() {
        (VlanModeName::Access, Some(tag), None)
    } else {
        (VlanModeName::NativeUntagged, Some(tag), Some(trunks))
    }
}

/// An nmstate bridge port's `vlan` as OVS port settings: (mode, tag, trunks).
fn nm_port_vlan(
    port: &NmPort,
    pf: &str,
    errs: &mut Vec<(String, String)>,
) -> (VlanModeName, Option<u16>, Option<Vec<u16>>) {
    // No VLAN settings (nmstate reads an empty `vlan: {}` as none too): the port carries
    // every VLAN as it comes (a Linux bridge without VLAN filtering, an OVS port without
    // tag/trunks).
    let Some(v) = port.vlan.as_ref().filter(|v| {
        v.mode.is_some() || v.tag.is_some() || v.enable_native.is_some() || !v.trunk_tags.is_empty()
    }) else {
        return (VlanModeName::Trunk, None, None);
    };
    let tag = v.tag.and_then(|t| vlan_id(t, &format!("{pf}.vlan.tag"), errs));
    let mut trunks = Vec::new();
    for (k, t) in v.trunk_tags.iter().enumerate() {
        let tf = format!("{pf}.vlan.trunk-tags[{k}]");
        if let Some(id) = t.id {
            trunks.extend(vlan_id(id, &format!("{tf}.id"), errs));
        }
        if let Some(r) = &t.id_range {
            let lo = vlan_id(r.min, &format!("{tf}.id-range.min"), errs);
            let hi = vlan_id(r.max, &format!("{tf}.id-range.max"), errs);
            if let (Some(lo), Some(hi)) = (lo, hi) {
                if lo > hi {
                    errs.push((format!("{tf}.id-range"), format!("min {lo} is greater than max {hi}")));
                }
                trunks.extend(lo..=hi);
            }
        }
        if t.id.is_none() && t.id_range.is_none() {
            errs.push((tf, "neither id nor id-range".into()));
        }
    }
    trunks.sort_unstable();
    trunks.dedup();
    match v.mode.as_deref() {
        Some("access") => {
            if v.tag.is_none() {
                errs.push((format!("{pf}.vlan.tag"), "an access port needs a tag".into()));
            }
            (VlanModeName::Access, tag, None)
        }
        Some("trunk") => {
            if trunks.is_empty() && v.trunk_tags.is_empty() {
                errs.push((format!("{pf}.vlan.trunk-tags"), "a trunk port needs trunk-tags".into()));
            }
            if v.enable_native == Some(true) {
                if v.tag.is_none() {
                    errs.push((
                        format!("{pf}.vlan.tag"),
                        "enable-native needs a tag (the native VLAN)".into(),
                    ));
                }
                match tag {
                    Some(t) => native_vlan(t, trunks),
                    None => (VlanModeName::NativeUntagged, tag, Some(trunks)),
                }
            } else {
                (VlanModeName::Trunk, None, Some(trunks))
            }
        }
        Some(m) => {
            errs.push((format!("{pf}.vlan.mode"), format!("{m:?} is neither access nor trunk")));
            (VlanModeName::Trunk, None, None)
        }
        None => {
            errs.push((format!("{pf}.vlan.mode"), "missing".into()));
            (VlanModeName::Trunk, None, None)
        }
    }
}

/// [`native_vlan`]'s settings as a [`PortConfig`] holds them.
fn native_vlan_of(
    (m, t, tr): (VlanModeName, Option<u16>, Option<Vec<u16>>),
) -> (Option<VlanModeName>, Option<u16>, Option<Vec<u16>>) {
    (Some(m), t, tr)
}

fn selector_matches(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// FNV-1a, for short stable socket names.
fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The vhost-user socket of VM port `ns/vmi/iface`: `<dir>/<ns>_<vmi>_<iface>.sock` (the three
/// are DNS labels, which have no `_`), or `<dir>/<16 hex digits>.sock` (a hash of the port
/// name) when that path would not fit in a Unix socket address.
pub fn socket_path(dir: &str, ns: &str, vmi: &str, iface: &str) -> String {
    let dir = dir.trim_end_matches('/');
    let p = format!("{dir}/{ns}_{vmi}_{iface}.sock");
    if p.len() <= MAX_SOCKET_PATH {
        p
    } else {
        format!("{dir}/{:016x}.sock", fnv1a64(&format!("{ns}/{vmi}/{iface}")))
    }
}

/// Whether every VM port's socket in `dir` fits a Unix socket address: the hashed form of
/// [`socket_path`], the longest it ever writes, does. A directory too long for it is refused
/// at start (`run`, `plan`): otherwise every plan would hold ports that no configuration
/// accepts, and no plan would apply at all, the uplinks' ports included.
pub fn vhost_dir_fits(dir: &str) -> Result<(), String> {
    let longest = format!("{}/{:016x}.sock", dir.trim_end_matches('/'), 0);
    if longest.len() <= MAX_SOCKET_PATH {
        Ok(())
    } else {
        Err(format!(
            "--vhost-dir: {dir:?} is too long: a VM port's socket there takes {} bytes, more than a Unix socket address \
             holds ({MAX_SOCKET_PATH}); use a directory of at most {} bytes",
            longest.len(),
            MAX_SOCKET_PATH - (longest.len() - dir.trim_end_matches('/').len())
        ))
    }
}

/// The (namespace, name) of the NAD a VMI in namespace `vmi_ns` names as `networkName`
/// (`ns/name`, or `name` in the VMI's namespace).
pub(crate) fn nad_key(vmi_ns: &str, network_name: &str) -> (String, String) {
    match network_name.split_once('/') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (vmi_ns.to_string(), network_name.to_string()),
    }
}

/// How a VMI interface's binding relates to the switch.
pub(crate) enum Binding {
    /// It gets a switch port.
    Port,
    /// It does not; the reason.
    Skip(String),
}

pub(crate) fn binding_of(i: &Interface) -> Binding {
    if i.masquerade.is_some() {
        return Binding::Skip("masquerade binding: pod network, not switched".into());
    }
    if i.passt.is_some() || i.slirp.is_some() {
        return Binding::Skip("passt/slirp binding: pod network, not switched".into());
    }
    if i.sriov.is_some() {
        return Binding::Skip("SR-IOV binding: the VF is passed through to the VM, no switch port".into());
    }
    if i.macvtap.is_some() {
        return Binding::Skip("macvtap binding: attaches to a host interface, not to the switch".into());
    }
    if let Some(b) = &i.binding {
        let n = b.name.to_ascii_lowercase();
        if n.contains("vhost") || n == "managedtap" || n == "l2bridge" {
            return Binding::Port;
        }
        if n == "passt" {
            return Binding::Skip("passt binding plugin: pod network, not switched".into());
        }
        return Binding::Skip(format!("binding plugin {:?} is not one switchyard serves", b.name));
    }
    // `bridge: {}`, or no binding at all (KubeVirt defaults to bridge).
    Binding::Port
}

pub(crate) fn parse_mac(s: &str) -> Result<MacAddr, String> {
    let m: MacAddr = s.parse().map_err(|e: switchyard_dataplane::wire::mac::MacParseError| e.to_string())?;
    if m.is_multicast() || m.is_zero() {
        return Err(format!("{m} is not a unicast MAC"));
    }
    Ok(m)
}

impl Planner {
    fn new(problems: Vec<Problem>, mappings: BTreeMap<String, (String, ObjRef)>) -> Planner {
        Planner {
            problems,
            skipped: Vec::new(),
            notes: Vec::new(),
            ports: Vec::new(),
            bridges: BTreeMap::new(),
            mappings,
            nads_seen: Vec::new(),
            cni: Vec::new(),
        }
    }

    /// Plans VMI `l` (on `node`) into an empty planner, as its memo entry.
    fn vmi_memo(
        mut self,
        state: &ClusterState,
        l: &Loaded<VirtualMachineInstance>,
        node: &str,
        opts: &PlanOptions,
    ) -> VmiMemo {
        self.vmi(state, l, opts, l.obj.status.node_name.as_deref() != Some(node));
        VmiMemo {
            vmi: l.obj.clone(),
            nads: self.nads_seen,
            ports: self.ports,
            skipped: self.skipped,
            problems: self.problems,
            notes: self.notes,
            cni: self.cni,
        }
    }

    fn nncp(&mut self, l: &Loaded<NodeNetworkConfigurationPolicy>, labels: &BTreeMap<String, String>) {
        let o = &l.obj;
        let oref = ObjRef::new("NodeNetworkConfigurationPolicy", None, &o.metadata.name);
        if !selector_matches(&o.spec.node_selector, labels) {
            tracing::debug!("{oref}: nodeSelector does not match the node");
            return;
        }
        let ds = &o.spec.desired_state;
        let internal: HashSet<&str> =
            ds.interfaces.iter().filter(|i| i.kind == "ovs-interface").map(|i| i.name.as_str()).collect();
        let mut errs: Vec<(String, String)> = Vec::new();
        let mut skipped = Vec::new();
        let mut bridges: Vec<(usize, String, Vec<PortConfig>)> = Vec::new();
        for (i, iface) in ds.interfaces.iter().enumerate() {
            let f = format!("spec.desiredState.interfaces[{i}]");
            if iface.kind != "linux-bridge" && iface.kind != "ovs-bridge" {
                continue;
            }
            match iface.state.as_deref() {
                None | Some("up") => {}
                Some(s @ ("absent" | "down")) => {
                    skipped.push(Skipped {
                        object: oref.clone(),
                        item: format!("bridge {}", iface.name),
                        reason: format!("state {s}"),
                    });
                    continue;
                }
                Some(s) => {
                    errs.push((format!("{f}.state"), format!("{s:?} is not up, down or absent")));
                    continue;
                }
            }
            if iface.name.is_empty() {
                errs.push((format!("{f}.name"), "missing".into()));
                continue;
            }
            // A bridge is a kernel interface (an OVS bridge's internal port too): a name no
            // interface can have is no bridge nmstate could make, and could be one of the
            // names switchyard gives the bridges it makes itself (`ovn-layer2/...`).
            if let Err(e) = switchyard_dataplane::backend::check_ifname(&iface.name) {
                errs.push((format!("{f}.name"), e));
                continue;
            }
            let mut ports = Vec::new();
            for (j, port) in
                iface.bridge.as_ref().map(|b| b.port.as_slice()).unwrap_or(&[]).iter().enumerate()
            {
                let pf = format!("{f}.bridge.port[{j}]");
                if port.name.is_empty() {
                    errs.push((format!("{pf}.name"), "missing".into()));
                    continue;
                }
                if iface.kind == "ovs-bridge"
                    && (internal.contains(port.name.as_str()) || port.name == iface.name)
                {
                    skipped.push(Skipped {
                        object: oref.clone(),
                        item: format!("bridge {} port {}", iface.name, port.name),
                        reason: "OVS internal interface (the host's own port), not an uplink".into(),
                    });
                    continue;
                }
                if port.link_aggregation.is_some() {
                    skipped.push(Skipped {
                        object: oref.clone(),
                        item: format!("bridge {} port {}", iface.name, port.name),
                        reason:
                            "OVS bond (link-aggregation) uplinks are not supported; bond in the kernel and \
                                 name the bond instead"
                                .into(),
                    });
                    continue;
                }
                let mut port_errs = Vec::new();
                let (mode, tag, trunks) = nm_port_vlan(port, &pf, &mut port_errs);
                // The port's name is its interface: one no interface can have is left out here
                // with its problem, or the configuration check would refuse the whole plan.
                if let Err(m) = switchyard_dataplane::backend::check_ifname(&port.name) {
                    port_errs.push((format!("{pf}.name"), m));
                }
                if !port_errs.is_empty() {
                    // This port is left out; the bridge keeps its other ports.
                    errs.extend(port_errs);
                    skipped.push(Skipped {
                        object: oref.clone(),
                        item: format!("bridge {} port {}", iface.name, port.name),
                        reason: "invalid (see problems)".into(),
                    });
                    continue;
                }
                ports.push(PortConfig {
                    name: port.name.clone(),
                    kind: Some(PortType::Afpacket),
                    vlan_mode: Some(mode),
                    tag,
                    trunks,
                    iface: Some(port.name.clone()),
                    ..Default::default()
                });
            }
            bridges.push((i, iface.name.clone(), ports));
        }
        let mut maps = Vec::new();
        if let Some(ovn) = &ds.ovn {
            for (k, m) in ovn.bridge_mappings.iter().enumerate() {
                let f = format!("spec.desiredState.ovn.bridge-mappings[{k}]");
                match m.state.as_deref() {
                    None | Some("present") => {}
                    Some("absent") => continue,
                    Some(s) => {
                        errs.push((format!("{f}.state"), format!("{s:?} is neither present nor absent")));
                        continue;
                    }
                }
                if m.localnet.is_empty() {
                    errs.push((format!("{f}.localnet"), "missing".into()));
                } else if m.bridge.is_empty() {
                    errs.push((format!("{f}.bridge"), "missing".into()));
                } else if let Err(e) = switchyard_dataplane::backend::check_ifname(&m.bridge) {
                    // An OVS bridge is a kernel interface; see the bridges' names above.
                    errs.push((format!("{f}.bridge"), e));
                } else {
                    maps.push((f, m.localnet.clone(), m.bridge.clone()));
                }
            }
        }
        // A bad part (a port, a bridge, a mapping) is left out, the rest is planned.
        for (field, msg) in errs {
            self.problems.push(Problem::object(&l.src, &oref, &field, &msg));
        }
        self.skipped.extend(skipped);
        for (i, name, ports) in bridges {
            if let Some(prev) = self.bridges.get(&name) {
                let msg = format!("bridge {name} is already defined by {prev}; this definition is skipped");
                self.problems.push(Problem::object(
                    &l.src,
                    &oref,
                    &format!("spec.desiredState.interfaces[{i}].name"),
                    &msg,
                ));
                continue;
            }
            tracing::info!("{oref}: bridge {name} with {} uplink(s)", ports.len());
            self.bridges.insert(name.clone(), oref.clone());
            for port in ports {
                self.ports.push(Built {
                    bridge: name.clone(),
                    port,
                    created: None,
                    src: Some(Arc::new((
                        l.src.clone(),
                        oref.clone(),
                        format!("spec.desiredState.interfaces[{i}].bridge.port"),
                    ))),
                });
            }
        }
        for (f, localnet, bridge) in maps {
            if let Some((b, prev)) = self.mappings.get(&localnet) {
                if *b != bridge {
                    let msg = format!(
                        "localnet {localnet} is already mapped to {b} by {prev}; this mapping is skipped"
                    );
                    self.problems.push(Problem::object(&l.src, &oref, &f, &msg));
                }
                continue;
            }
            self.mappings.insert(localnet, (bridge, oref.clone()));
        }
    }

    /// Plans the ports of one VMI; `migrating`: this node is the target of its migration in
    /// progress, not its node.
    fn vmi(
        &mut self,
        state: &ClusterState,
        l: &Loaded<VirtualMachineInstance>,
        opts: &PlanOptions,
        migrating: bool,
    ) {
        let o = &l.obj;
        let ns = o.metadata.namespace.as_deref().unwrap_or("default");
        let vmi = o.metadata.name.as_str();
        let oref = ObjRef::new("VirtualMachineInstance", Some(ns), vmi);
        let mut errs: Vec<(String, String)> = Vec::new();
        let mut skipped = Vec::new();
        let mut ports: Vec<Built> = Vec::new();
        let mut seen = HashSet::new();
        let skip = |item: &str, reason: String| Skipped {
            object: oref.clone(),
            item: format!("interface {item}"),
            reason,
        };
        for (i, ifc) in o.spec.domain.devices.interfaces.iter().enumerate() {
            let before = errs.len();
            'iface: {
                let f = format!("spec.domain.devices.interfaces[{i}]");
                if ifc.name.is_empty() {
                    errs.push((format!("{f}.name"), "missing".into()));
                    break 'iface;
                }
                if !seen.insert(ifc.name.as_str()) {
                    errs.push((format!("{f}.name"), format!("interface {} is listed twice", ifc.name)));
                    break 'iface;
                }
                match ifc.state.as_deref() {
                    None | Some("up") | Some("down") => {}
                    Some("absent") => {
                        skipped.push(skip(&ifc.name, "state absent: the interface is unplugged".into()));
                        break 'iface;
                    }
                    Some(s) => {
                        errs.push((format!("{f}.state"), format!("{s:?} is not up, down or absent")));
                        break 'iface;
                    }
                }
                let Some((j, net)) = o.spec.networks.iter().enumerate().find(|(_, n)| n.name == ifc.name)
                else {
                    errs.push((
                        format!("{f}.name"),
                        format!("no network named {:?} in spec.networks", ifc.name),
                    ));
                    break 'iface;
                };
                // A NAD of switchyard's CNI plugin: the plugin attaches the pod's interface to
                // the switch whatever binding carries it on to the VM (the `switchyard` binding
                // plugin, a bridge in veth mode), so the binding does not decide.
                let by_plugin = net.multus.as_ref().is_some_and(|m| {
                    state
                        .nads
                        .get(&nad_key(ns, &m.network_name))
                        .is_some_and(|n| matches!(n.net, Ok(NadNetwork::SwitchyardCni { .. })))
                });
                if let (Binding::Skip(reason), false) = (binding_of(ifc), by_plugin) {
                    skipped.push(skip(&ifc.name, reason));
                    break 'iface;
                }
                if net.pod.is_some() {
                    skipped.push(skip(&ifc.name, "pod network: not a secondary network".into()));
                    break 'iface;
                }
                let Some(multus) = &net.multus else {
                    errs.push((format!("spec.networks[{j}]"), "neither pod nor multus".into()));
                    break 'iface;
                };
                let nad_key = nad_key(ns, &multus.network_name);
                let (nad_ns, nad_name) = (nad_key.0.as_str(), nad_key.1.as_str());
                let nad = state.nads.get(&nad_key);
                self.nads_seen.push((nad_key.clone(), nad.map(|n| n.obj.clone())));
                let Some(nad) = nad else {
                    errs.push((
                        format!("spec.networks[{j}].multus.networkName"),
                        format!("no NetworkAttachmentDefinition {nad_ns}/{nad_name}"),
                    ));
                    break 'iface;
                };
                let net = match &nad.net {
                    Ok(n) => n,
                    Err(reason) => {
                        skipped.push(skip(&ifc.name, reason.to_string()));
                        break 'iface;
                    }
                };
                // The MAC: the spec's, else the one the VMI reports.
                let mac = if let Some(m) = &ifc.mac_address {
                    match parse_mac(m) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            errs.push((format!("{f}.macAddress"), e));
                            break 'iface;
                        }
                    }
                } else {
                    match o
                        .status
                        .interfaces
                        .iter()
                        .enumerate()
                        .find(|(_, s)| s.name.as_deref() == Some(&ifc.name))
                    {
                        Some((k, s)) => match s.mac.as_deref().map(parse_mac) {
                            None => None,
                            Some(Ok(m)) => Some(m),
                            Some(Err(e)) => {
                                errs.push((format!("status.interfaces[{k}].mac"), e));
                                break 'iface;
                            }
                        },
                        None => None,
                    }
                };
                let port_name = format!("{ns}/{vmi}/{}", ifc.name);
                let mut port = PortConfig {
                    name: port_name,
                    kind: Some(PortType::Vhostuser),
                    socket: Some(socket_path(&opts.vhost_dir, ns, vmi, &ifc.name)),
                    mode: Some("server".into()),
                    socket_mode: opts.vhost_socket_mode.clone(),
                    // On a migration's target, the MAC is not static before the switch-over:
                    // the guest still runs on the source (docs/overlay.md, "Live migration").
                    static_macs: if migrating { Vec::new() } else { mac.into_iter().collect() },
                    ..Default::default()
                };
                // Enforcement without a known MAC: the all-zero MAC alone, which no frame has,
                // closes the port (an empty list would be no filter at all).
                let enforce = || Some(vec![mac.unwrap_or(MacAddr::ZERO)]);
                let bridge = match net {
                    NadNetwork::Bridge(b) => {
                        match (b.vlan, b.trunks.is_empty()) {
                            (Some(v), true) => {
                                port.vlan_mode = Some(VlanModeName::Access);
                                port.tag = Some(v);
                            }
                            (Some(v), false) => {
                                (port.vlan_mode, port.tag, port.trunks) =
                                    native_vlan_of(native_vlan(v, b.trunks.clone()));
                            }
                            (None, false) if b.preserve_default_vlan => {
                                (port.vlan_mode, port.tag, port.trunks) =
                                    native_vlan_of(native_vlan(1, b.trunks.clone()));
                            }
                            (None, false) => {
                                port.vlan_mode = Some(VlanModeName::Trunk);
                                port.trunks = Some(b.trunks.clone());
                            }
                            (None, true) => port.vlan_mode = Some(VlanModeName::Trunk),
                        }
                        if b.macspoofchk {
                            port.allowed_macs = enforce();
                        }
                        b.bridge.clone()
                    }
                    NadNetwork::OvnLocalnet { physical_network, vlan, .. } => {
                        port.vlan_mode = Some(VlanModeName::Access);
                        port.tag = Some(vlan.unwrap_or(0));
                        port.allowed_macs = enforce();
                        match self.mappings.get(physical_network) {
                            Some((b, _)) => b.clone(),
                            None => {
                                let b = format!("{OVN_LOCALNET_PREFIX}{physical_network}");
                                self.notes.push(format!(
                                    "localnet {physical_network} has no ovn.bridge-mappings entry on this node: its VM \
                                     ports are on bridge {b}, which has no uplink"
                                ));
                                b
                            }
                        }
                    }
                    NadNetwork::OvnLayer2(l2) => {
                        port.vlan_mode = Some(VlanModeName::Trunk);
                        port.allowed_macs = enforce();
                        format!("{OVN_LAYER2_PREFIX}{}", l2.network)
                    }
                    NadNetwork::Sriov => {
                        skipped.push(skip(
                            &ifc.name,
                            format!("NAD {nad_ns}/{nad_name} is SR-IOV: the VF is passed through to the VM, no switch port"),
                        ));
                        break 'iface;
                    }
                    NadNetwork::SwitchyardCni { bridge, vlan } => {
                        let sub =
                            cni_subject(o, ns, vmi, &ifc.name, (nad_ns, nad_name), (bridge, *vlan), mac);
                        skipped.push(skip(
                            &ifc.name,
                            format!(
                                "NAD {nad_ns}/{nad_name} is switchyard's CNI plugin: the plugin attaches the port \
                                 when the pod starts; it gets this interface's policy and IP spoof filter when it is \
                                 on bridge {bridge} in pod {}<5 characters>{} with interface {}",
                                sub.pod_prefix,
                                if sub.pod_uids.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (or of UID {})", sub.pod_uids.join(", "))
                                },
                                sub.ifnames.join(", ")
                            ),
                        ));
                        self.cni.push(sub);
                        break 'iface;
                    }
                    NadNetwork::Unsupported { reason } => {
                        skipped.push(skip(&ifc.name, format!("NAD {nad_ns}/{nad_name}: {reason}")));
                        break 'iface;
                    }
                };
                if port.allowed_macs.as_ref().is_some_and(|a| a.iter().all(|m| m.is_zero())) {
                    self.notes.push(format!(
                        "{} has MAC enforcement but no known MAC yet (no macAddress, no status): it drops all it sends",
                        port.name
                    ));
                }
                ports.push(Built {
                    bridge,
                    port,
                    src: Some(Arc::new((l.src.clone(), oref.clone(), format!("{f}.macAddress")))),
                    created: o.metadata.creation_timestamp.as_deref().map(Arc::from),
                });
            }
            if errs.len() > before {
                // This interface is left out; the VMI's others are planned.
                skipped.push(skip(&ifc.name, "invalid (see problems)".into()));
            }
        }
        for (field, msg) in errs {
            self.problems.push(Problem::object(&l.src, &oref, &field, &msg));
        }
        for b in &ports {
            tracing::debug!("{oref}: port {} on bridge {}", b.port.name, b.bridge);
        }
        self.skipped.extend(skipped);
        self.ports.extend(ports);
    }

    fn finish(mut self, node: &str) -> Plan {
        // Set where a rule between ports decides (the problem may name no object).
        let mut conflict = false;
        // Sorted: bridges by name, ports by name.
        self.ports.sort_by(|a, b| (&a.bridge, &a.port.name).cmp(&(&b.bridge, &b.port.name)));
        // Port names are unique on the node: an uplink named in two bridges keeps the first.
        // (Borrowed keys: a plan of 20,000 ports copies no name to check them.)
        let mut dropped = vec![false; self.ports.len()];
        let mut names: HashMap<&str, &str> = HashMap::with_capacity(self.ports.len());
        for (i, b) in self.ports.iter().enumerate() {
            if let Some(first) = names.get(b.port.name.as_str()) {
                if let Some((src, oref, field)) = b.src.as_deref() {
                    let msg = format!(
                        "port {} is already on bridge {first}; not added to {}",
                        b.port.name, b.bridge
                    );
                    self.problems.push(Problem::object(src, oref, field, &msg));
                }
                dropped[i] = true;
                conflict = true;
                continue;
            }
            names.insert(&b.port.name, &b.bridge);
        }
        drop(names);
        let mut keep: Vec<Built> = std::mem::take(&mut self.ports)
            .into_iter()
            .zip(dropped)
            .filter(|(_, d)| !d)
            .map(|(b, _)| b)
            .collect();
        // One static entry per (bridge, MAC): a MAC on two VM ports of a bridge stays on the
        // port of the older VMI (by creation time; then ports without one, as in state files;
        // then by name) only, so that a VMI created later with another's MAC cannot take its
        // traffic. Found on borrowed keys first, then removed.
        let mut gone: Vec<(usize, usize)> = Vec::new();
        {
            // (bridge, MAC) -> the (port, index in its static_macs) holding it so far.
            let mut macs: HashMap<(&str, MacAddr), (usize, usize)> = HashMap::with_capacity(keep.len());
            // The ports that lost a MAC, with that MAC (one problem a port, the last MAC).
            let mut lost: BTreeMap<usize, MacAddr> = BTreeMap::new();
            let age = |b: &Built| (b.created.is_none(), b.created.clone());
            for (i, b) in keep.iter().enumerate() {
                for (k, m) in b.port.static_macs.iter().enumerate() {
                    match macs.entry((b.bridge.as_str(), *m)) {
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert((i, k));
                        }
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            conflict = true;
                            let (hi, hk) = *e.get();
                            // Strictly older takes it; on a tie the holder (first by name) keeps it.
                            if age(b) < age(&keep[hi]) {
                                gone.push((hi, hk));
                                lost.insert(hi, *m);
                                e.insert((i, k));
                            } else {
                                gone.push((i, k));
                                lost.insert(i, *m);
                            }
                        }
                    }
                }
            }
            for (i, m) in lost {
                let b = &keep[i];
                let first = &keep[macs[&(b.bridge.as_str(), m)].0].port.name;
                if let Some((src, oref, field)) = b.src.as_deref() {
                    let msg = format!(
                        "MAC {m} is also on port {first} of bridge {}; its static entry stays on {first}",
                        b.bridge
                    );
                    self.problems.push(Problem::object(src, oref, field, &msg));
                }
            }
        }
        gone.sort_unstable();
        for (i, k) in gone.into_iter().rev() {
            keep[i].port.static_macs.remove(k);
        }
        // The dataplane's port limit: uplinks first, then VM ports in name order.
        let max = switchyard_dataplane::switch::MAX_PORTS_PER_NODE;
        if keep.len() > max {
            conflict = true;
            let (mut up, mut vm): (Vec<Built>, Vec<Built>) =
                keep.into_iter().partition(|b| b.port.kind != Some(PortType::Vhostuser));
            vm.sort_by(|a, b| a.port.name.cmp(&b.port.name));
            let room = max.saturating_sub(up.len());
            for b in vm.drain(room.min(vm.len())..) {
                if let Some((src, oref, _)) = b.src.as_deref() {
                    let msg = format!("port {} left out: the node has more than {max} ports", b.port.name);
                    self.problems.push(Problem::object(src, oref, "", &msg));
                }
            }
            up.truncate(max);
            up.extend(vm);
            up.sort_by(|a, b| (&a.bridge, &a.port.name).cmp(&(&b.bridge, &b.port.name)));
            keep = up;
        }
        let mut bridges: BTreeMap<String, Vec<PortConfig>> =
            self.bridges.keys().map(|k| (k.clone(), Vec::new())).collect();
        for b in keep {
            bridges.entry(b.bridge).or_default().push(b.port);
        }
        let config = Config {
            bridges: bridges
                .into_iter()
                .map(|(name, ports)| BridgeConfig {
                    name,
                    mac_aging_s: None,
                    mac_table_size: None,
                    conntrack_size: None,
                    ports,
                })
                .collect(),
        };
        if let Err(e) = config.validate() {
            // A translation bug, not bad input: say so loudly.
            self.problems.push(Problem::file(
                "(plan)",
                format!("internal error: the plan is not a valid config: {e}"),
            ));
        }
        self.notes.sort();
        self.notes.dedup();
        Plan {
            node: node.to_string(),
            config,
            skipped: self.skipped,
            notes: self.notes,
            ports_conflict: conflict,
            problems: self.problems,
            overlays: Vec::new(),
            cni_subjects: self.cni,
        }
    }
}

impl Plan {
    /// The plan as YAML: the configuration, preceded by comments listing what was skipped,
    /// the notes and the problems (so the output still loads as a configuration file).
    pub fn to_yaml(&self) -> String {
        let mut s = format!("# switchyard plan for node {}\n", self.node);
        for p in &self.problems {
            s.push_str(&format!("# problem: {}\n", one_line(&p.to_string())));
        }
        for k in &self.skipped {
            s.push_str(&format!("# skipped: {}\n", one_line(&k.to_string())));
        }
        for n in &self.notes {
            s.push_str(&format!("# note: {}\n", one_line(n)));
        }
        for o in &self.overlays {
            s.push_str(&format!("# overlay: {}\n", o.summary()));
        }
        s.push_str(&self.config.to_yaml());
        s
    }

    /// The plan as one JSON object: `{"node", "config", "skipped", "notes", "problems"}`, and
    /// `"overlays"` when there are any.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels given on the command line win over the Node object's, and the hostname label
    /// defaults to the node's name unless one of them sets it.
    #[test]
    fn node_labels_order_and_hostname_default() {
        let state = ClusterState::default();
        let extra: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
        let l = node_labels(&state, "w1", &extra);
        assert_eq!(l.get("zone").map(String::as_str), Some("b"));
        assert_eq!(l.get("kubernetes.io/hostname").map(String::as_str), Some("w1"));
        let own: BTreeMap<String, String> = [("kubernetes.io/hostname".to_string(), "h".to_string())].into();
        assert_eq!(node_labels(&state, "w1", &own)["kubernetes.io/hostname"], "h");
    }

    /// The socket path is readable while it fits a Unix socket address (107 bytes) and a
    /// stable hash of the port's name once it would not.
    #[test]
    fn socket_path_fits_sun_path() {
        assert_eq!(socket_path("/run/vh/", "ns", "vm", "net1"), "/run/vh/ns_vm_net1.sock");
        let long_vmi = "v".repeat(100);
        let p = socket_path("/run/vh", "ns", &long_vmi, "net1");
        assert!(p.len() <= MAX_SOCKET_PATH, "{p}");
        // The longest directory that fits is accepted, one byte more refused.
        let fits = "/".to_string() + &"d".repeat(MAX_SOCKET_PATH - 23);
        assert_eq!(vhost_dir_fits(&fits), Ok(()));
        assert!(vhost_dir_fits(&(fits.clone() + "d")).unwrap_err().contains("too long"));
        assert!(socket_path(&fits, &"n".repeat(63), &"v".repeat(63), "i").len() <= MAX_SOCKET_PATH);
        assert_eq!(p, socket_path("/run/vh", "ns", &long_vmi, "net1"), "stable");
        assert_ne!(p, socket_path("/run/vh", "ns", &long_vmi, "net2"), "one socket per port");
        let fits = "v".repeat(MAX_SOCKET_PATH - "/d/n__i.sock".len());
        assert_eq!(socket_path("/d", "n", &fits, "i").len(), MAX_SOCKET_PATH, "the longest readable path");
    }

    /// VLAN ids 1-4094 pass; 0 and 4095 are refused naming the field; a VM's MAC must be
    /// unicast and not zero.
    #[test]
    fn vlan_ids_and_macs() {
        let mut errs = Vec::new();
        assert_eq!(vlan_id(1, "f", &mut errs), Some(1));
        assert_eq!(vlan_id(4094, "f", &mut errs), Some(4094));
        assert_eq!((vlan_id(0, "a", &mut errs), vlan_id(4095, "b", &mut errs)), (None, None));
        assert_eq!(errs.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(parse_mac("02:00:00:00:00:01"), Ok(MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("00:00:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
    }
}
