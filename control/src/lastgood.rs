//! Keeping the last good version of an object whose manifest turned bad.
//!
//! The rule (per object, at the manifest level): `run` remembers, for every Node, NAD, NNCP,
//! VMI, MultiNetworkPolicy and Namespace, the last version of it that had no problem. When a reload finds a problem with an
//! object (its document does not parse into the object's type, a NAD's `spec.config` is not
//! usable, a VMI names a missing network or carries a bad MAC, an NNCP has a VLAN out of range,
//! ...), the object's last good version is planned in its place, so the ports it contributed
//! stay exactly as they were. When a whole file stops parsing as YAML (or cannot be read), every
//! object that file held before and that is now missing is kept the same way. An object that was
//! never good is skipped, as `plan` does. An object that is deleted from a good file (or whose
//! file is deleted) is gone: deleting is not a problem.
//!
//! This is the "per-object last-good contribution" choice: it works through the NAD -> VMI
//! indirection too (a broken NAD keeps the VM ports that use it on their previous settings),
//! which keeping port configs by port name could not attribute.

use crate::k8s::{
    ClusterState, Loaded, LoadedNad, Namespace, Node, NodeNetworkConfigurationPolicy, VirtualMachineInstance,
};
use crate::plan::{plan_memo, Plan, PlanMemo, PlanOptions};
use crate::policy::MultiNetworkPolicy;
use crate::{ObjRef, Problem};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The last good version of every object seen.
#[derive(Debug, Default, Clone)]
pub struct LastGood {
    nodes: BTreeMap<String, Loaded<Node>>,
    nads: HashMap<(String, String), LoadedNad>,
    nncps: BTreeMap<String, Loaded<NodeNetworkConfigurationPolicy>>,
    vmis: BTreeMap<(String, String), Loaded<VirtualMachineInstance>>,
    /// What each VMI planned to last time (a VMI that did not change is not planned again).
    memo: PlanMemo,
    policies: BTreeMap<(String, String), Loaded<MultiNetworkPolicy>>,
    namespaces: BTreeMap<String, Loaded<Namespace>>,
}

/// An object planned from its last good version, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub object: ObjRef,
    /// The file the kept version came from.
    pub file: String,
    /// `invalid` (the object has a problem) or `file broken` (its file no longer parses).
    pub why: &'static str,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}; keeping its last good version (from {})", self.object, self.why, self.file)
    }
}

/// A plan made with last good versions substituted.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its `problems` are those of the input as it is (what is wrong now), plus any the
    /// substitution brought.
    pub plan: Plan,
    pub kept: Vec<Kept>,
    /// The state that was planned (last good versions in place).
    pub state: ClusterState,
}

fn nad_ref(k: &(String, String)) -> ObjRef {
    ObjRef::new("NetworkAttachmentDefinition", Some(&k.0), &k.1)
}
fn vmi_ref(k: &(String, String)) -> ObjRef {
    ObjRef::new("VirtualMachineInstance", Some(&k.0), &k.1)
}
fn nncp_ref(k: &str) -> ObjRef {
    ObjRef::new("NodeNetworkConfigurationPolicy", None, k)
}
fn node_ref(k: &str) -> ObjRef {
    ObjRef::new("Node", None, k)
}
fn policy_ref(k: &(String, String)) -> ObjRef {
    ObjRef::new("MultiNetworkPolicy", Some(&k.0), &k.1)
}
fn namespace_ref(k: &str) -> ObjRef {
    ObjRef::new("Namespace", None, k)
}

/// A map of objects by key (the state's maps are BTreeMaps and a HashMap).
trait Store<K, V> {
    fn has(&self, k: &K) -> bool;
    fn put(&mut self, k: K, v: V);
}

impl<K: Ord, V> Store<K, V> for BTreeMap<K, V> {
    fn has(&self, k: &K) -> bool {
        self.contains_key(k)
    }
    fn put(&mut self, k: K, v: V) {
        self.insert(k, v);
    }
}

impl<K: Eq + std::hash::Hash, V> Store<K, V> for HashMap<K, V> {
    fn has(&self, k: &K) -> bool {
        self.contains_key(k)
    }
    fn put(&mut self, k: K, v: V) {
        self.insert(k, v);
    }
}

/// What the first plan found wrong, and what was kept so far.
struct Bad {
    objects: BTreeSet<ObjRef>,
    files: BTreeSet<String>,
    kept: Vec<Kept>,
}

/// Puts last good versions into `current` for objects that are bad or missing because their
/// file broke.
fn substitute<K: Clone, V: Clone>(
    current: &mut impl Store<K, V>,
    last: impl Iterator<Item = (K, V)>,
    oref: impl Fn(&K) -> ObjRef,
    file_of: impl Fn(&V) -> String,
    bad: &mut Bad,
) {
    for (k, v) in last {
        let o = oref(&k);
        let why = if bad.objects.contains(&o) {
            "invalid"
        } else if !current.has(&k) && bad.files.contains(&file_of(&v)) {
            "file broken"
        } else {
            continue;
        };
        bad.kept.push(Kept { object: o, file: file_of(&v), why });
        current.put(k, v);
    }
}

impl LastGood {
    pub fn new() -> LastGood {
        LastGood::default()
    }

    /// Where the last [`LastGood::resolve`]'s time went (the plan's phases, then its own).
    pub fn take_phases(&mut self) -> crate::phases::Phases {
        std::mem::take(&mut self.memo.phases)
    }

    /// The plan memo: what each VMI planned to last time.
    pub(crate) fn memo(&self) -> &PlanMemo {
        &self.memo
    }

    /// Takes VMI `k` as it is now (None: gone), good (no problem), planned alone to `m`
    /// ([`crate::plan::plan_vmi`]): its last good version and its memo entry from now on.
    pub(crate) fn set_vmi(
        &mut self,
        k: &(String, String),
        l: Option<Loaded<VirtualMachineInstance>>,
        m: Option<crate::plan::VmiMemo>,
    ) {
        match l {
            Some(l) => drop(self.vmis.insert(k.clone(), l)),
            None => drop(self.vmis.remove(k)),
        }
        self.memo.set_vmi(k, m);
    }

    /// Plans `state` for `node`, substituting last good versions of bad objects, and
    /// remembers the good ones for next time.
    pub fn resolve(
        &mut self,
        mut state: ClusterState,
        node: &str,
        labels: &BTreeMap<String, String>,
        opts: &PlanOptions,
    ) -> Resolved {
        let first = plan_memo(&state, node, labels, opts, &mut self.memo);
        let mut ph = std::mem::take(&mut self.memo.phases);
        let mut bad = Bad {
            objects: first.problems.iter().filter_map(|p| p.object.clone()).collect(),
            files: first.problems.iter().filter(|p| p.object.is_none()).map(|p| p.file.clone()).collect(),
            kept: Vec::new(),
        };
        // Nothing bad (the usual case): nothing to look up.
        if !bad.objects.is_empty() || !bad.files.is_empty() {
            let file = |s: &crate::k8s::Source| s.file.to_string();
            substitute(
                &mut state.nads,
                self.nads.iter().map(|(k, v)| (k.clone(), v.clone())),
                nad_ref,
                |v| file(&v.src),
                &mut bad,
            );
            substitute(
                &mut state.vmis,
                self.vmis.iter().map(|(k, v)| (k.clone(), v.clone())),
                vmi_ref,
                |v| file(&v.src),
                &mut bad,
            );
            substitute(
                &mut state.nncps,
                self.nncps.iter().map(|(k, v)| (k.clone(), v.clone())),
                |k| nncp_ref(k),
                |v| file(&v.src),
                &mut bad,
            );
            substitute(
                &mut state.nodes,
                self.nodes.iter().map(|(k, v)| (k.clone(), v.clone())),
                |k| node_ref(k),
                |v| file(&v.src),
                &mut bad,
            );
            substitute(
                &mut state.policies,
                self.policies.iter().map(|(k, v)| (k.clone(), v.clone())),
                policy_ref,
                |v| file(&v.src),
                &mut bad,
            );
            substitute(
                &mut state.namespaces,
                self.namespaces.iter().map(|(k, v)| (k.clone(), v.clone())),
                |k| namespace_ref(k),
                |v| file(&v.src),
                &mut bad,
            );
        }
        let Bad { objects: bad, mut kept, .. } = bad;
        kept.sort_by(|a, b| a.object.cmp(&b.object));
        let restored: BTreeSet<ObjRef> = kept.iter().map(|k| k.object.clone()).collect();
        // What is good now (or was kept) is the last good version from here on; a bad object
        // with no good version is not remembered.
        let keep = |o: &ObjRef| !bad.contains(o) || restored.contains(o);
        self.nads = state
            .nads
            .iter()
            .filter(|(k, _)| bad.is_empty() || keep(&nad_ref(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.vmis = state
            .vmis
            .iter()
            .filter(|(k, _)| bad.is_empty() || keep(&vmi_ref(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.nncps = state
            .nncps
            .iter()
            .filter(|(k, _)| bad.is_empty() || keep(&nncp_ref(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.nodes = state
            .nodes
            .iter()
            .filter(|(k, _)| bad.is_empty() || keep(&node_ref(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.policies = state
            .policies
            .iter()
            .filter(|(k, _)| keep(&policy_ref(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.namespaces = state
            .namespaces
            .iter()
            .filter(|(k, _)| keep(&namespace_ref(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ph.mark("last good");
        if kept.is_empty() {
            self.memo.phases = ph;
            return Resolved { plan: first, kept, state };
        }
        let mut second = plan_memo(&state, node, labels, opts, &mut self.memo);
        // The kept objects' problems are those of their bad versions (the first pass); any
        // other object's are as the second pass finds them (a conflict with a bad version
        // that is no longer planned is gone).
        let mut problems: Vec<Problem> = first
            .problems
            .into_iter()
            .filter(|p| p.object.as_ref().is_none_or(|o| restored.contains(o)))
            .collect();
        for p in second.problems.drain(..) {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
        second.problems = problems;
        // The bad version's conflict is what kept it: gone once another VMI changes.
        second.ports_conflict |= first.ports_conflict;
        self.memo.phases = std::mem::take(&mut self.memo.phases).after(ph);
        Resolved { plan: second, kept, state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAD: &str = r#"
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: net1, namespace: ns}
spec:
  config: '{"cniVersion":"0.3.1","name":"net1","type":"bridge","bridge":"br1","vlan":VLAN}'
"#;
    const VMI: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vm, namespace: ns}
spec:
  domain: {devices: {interfaces: [{name: eth1, bridge: {}, macAddress: "MAC"}]}}
  networks: [{name: eth1, multus: {networkName: net1}}]
status: {nodeName: n1}
"#;

    fn state(vlan: &str, mac: &str) -> ClusterState {
        let mut s = ClusterState::default();
        s.add_yaml("nad.yaml", &NAD.replace("VLAN", vlan));
        s.add_yaml("vmi.yaml", &VMI.replace("MAC", mac));
        s
    }

    fn tag(p: &Plan) -> Option<u16> {
        p.config.bridges.iter().flat_map(|b| &b.ports).find(|p| p.name == "ns/vm/eth1").and_then(|p| p.tag)
    }

    fn resolve(lg: &mut LastGood, s: ClusterState) -> Resolved {
        lg.resolve(s, "n1", &BTreeMap::new(), &PlanOptions::default())
    }

    /// A kept object's bad version takes part in the first pass only: a conflict it made
    /// there with another object is not reported once the last good version is planned.
    #[test]
    fn a_conflict_with_a_bad_version_is_not_reported() {
        let mut lg = LastGood::new();
        let r = resolve(&mut lg, state("100", "02:00:00:00:00:01"));
        assert!(r.plan.problems.is_empty(), "{:?}", r.plan.problems);
        // vm: its MAC becomes 02 and a second interface names a missing NAD (bad: kept with
        // 01); vm2 (never seen before) takes 02 on the same bridge.
        let mut s = ClusterState::default();
        s.add_yaml("nad.yaml", &NAD.replace("VLAN", "100"));
        let bad = VMI
            .replace("MAC", "02:00:00:00:00:02")
            .replace(
                "macAddress: \"02:00:00:00:00:02\"}]",
                "macAddress: \"02:00:00:00:00:02\"}, {name: eth2, bridge: {}}]",
            )
            .replace(
                "networkName: net1}}]",
                "networkName: net1}}, {name: eth2, multus: {networkName: net2}}]",
            );
        assert!(bad.contains("net2"), "{bad}");
        s.add_yaml("vmi.yaml", &bad);
        s.add_yaml("vmi2.yaml", &VMI.replace("name: vm,", "name: vm2,").replace("MAC", "02:00:00:00:00:02"));
        let r = resolve(&mut lg, s);
        assert_eq!(r.kept.len(), 1, "{:?}", r.kept);
        let named: Vec<String> =
            r.plan.problems.iter().filter_map(|p| p.object.as_ref()).map(|o| o.name.clone()).collect();
        assert_eq!(named, ["vm"], "{:?}", r.plan.problems);
        let macs = |n: &str| {
            r.plan
                .config
                .bridges
                .iter()
                .flat_map(|b| &b.ports)
                .find(|p| p.name == n)
                .map(|p| p.static_macs.clone())
        };
        assert_eq!(macs("ns/vm/eth1").unwrap()[0].to_string(), "02:00:00:00:00:01");
        assert_eq!(macs("ns/vm2/eth1").unwrap()[0].to_string(), "02:00:00:00:00:02");
    }

    #[test]
    fn bad_objects_keep_their_last_good_version() {
        let mut lg = LastGood::new();
        let r = resolve(&mut lg, state("100", "02:00:00:00:00:01"));
        assert!(r.kept.is_empty() && r.plan.problems.is_empty(), "{:?}", r.plan.problems);
        assert_eq!(tag(&r.plan), Some(100));
        // The NAD's VLAN goes out of range: the port stays in VLAN 100.
        let r = resolve(&mut lg, state("5000", "02:00:00:00:00:01"));
        assert_eq!(tag(&r.plan), Some(100));
        assert_eq!(r.kept.len(), 1, "{:?}", r.kept);
        assert!(!r.plan.problems.is_empty());
        // A bad MAC on the VMI: kept too.
        let r = resolve(&mut lg, state("200", "zz"));
        assert_eq!(tag(&r.plan), Some(200));
        assert_eq!(r.kept[0].object.kind, "VirtualMachineInstance");
        // A file that no longer parses: its objects are kept.
        let mut s = ClusterState::default();
        s.add_yaml("nad.yaml", &NAD.replace("VLAN", "300"));
        s.add_yaml("vmi.yaml", "{{{ not yaml");
        let r = resolve(&mut lg, s);
        assert_eq!(tag(&r.plan), Some(300));
        assert_eq!(r.kept[0].why, "file broken");
        // Deleting the VMI (its file gone, no problem) removes the port.
        let mut s = ClusterState::default();
        s.add_yaml("nad.yaml", &NAD.replace("VLAN", "300"));
        let r = resolve(&mut lg, s);
        assert_eq!(tag(&r.plan), None);
        assert!(r.kept.is_empty());
    }

    /// A policy that turns bad keeps its last good version: the port it isolates stays
    /// isolated with the old rules, not opened.
    #[test]
    fn bad_policy_keeps_its_last_good_version() {
        const POL: &str = "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata:\n  name: p\n  \
                           namespace: ns\n  annotations: {k8s.v1.cni.cncf.io/policy-for: net1}\nspec:\n  podSelector: {}\n  \
                           ingress: [{from: [{ipBlock: {cidr: CIDR}}]}]\n";
        let with = |cidr: &str| {
            let mut s = state("100", "02:00:00:00:00:01");
            s.add_yaml("pol.yaml", &POL.replace("CIDR", cidr));
            s
        };
        let rules = |p: &Plan| {
            let port =
                p.config.bridges.iter().flat_map(|b| &b.ports).find(|p| p.name == "ns/vm/eth1").cloned();
            port.and_then(|p| p.policy).and_then(|p| p.ingress).map(|d| d.rules[0].peers.clone())
        };
        let mut lg = LastGood::new();
        let r = resolve(&mut lg, with("10.0.0.0/8"));
        let good = rules(&r.plan).expect("isolated");
        let r = resolve(&mut lg, with("10.0.0.0/99"));
        assert_eq!(r.kept.len(), 1, "{:?}", r.kept);
        assert_eq!(r.kept[0].object.kind, "MultiNetworkPolicy");
        assert_eq!(rules(&r.plan), Some(good), "the last good rules");
    }

    #[test]
    fn never_good_objects_are_skipped() {
        let mut lg = LastGood::new();
        let r = resolve(&mut lg, state("100", "zz"));
        assert_eq!(tag(&r.plan), None);
        assert!(r.kept.is_empty());
        let r = resolve(&mut lg, state("100", "02:00:00:00:00:01"));
        assert_eq!(tag(&r.plan), Some(100));
    }
}
