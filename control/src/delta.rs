//! The delta path of a reconcile: a change of a few VMIs costs work proportional to those VMIs,
//! not to the node's 20,000 ports (issue 14).
//!
//! Invariant: a delta reconcile gives the plan, the running configuration and the compiled
//! switch a full reconcile of the same state gives (control/tests/incremental.rs checks it on
//! random event sequences). It is taken only where the planner's cross-object rules cannot
//! make a VMI's change reach other objects' results; everywhere else the full plan runs.
//!
//! How: the last full plan leaves a `Current`: the state it planned, its skipped list, the
//! objects its problems name, and an `Index` of what its ports declared (port
//! names, static MACs per bridge, ports per bridge). A VMI that changed is planned alone by
//! the one planner (`plan::plan_vmi`, the function a full plan memoises per VMI), its
//! ports replace those its memo entry had ([`crate::runtime::PortDelta`]), and the runtime
//! patches the running configuration and the compiled switch ([`Runtime::apply_delta`]).
//!
//! A change goes the full way when: an object other than a VMI changed; MultiNetworkPolicies
//! exist (a policy's peers are other VMIs' addresses and labels); the VMI names an overlay
//! (OVN layer2) NAD, an `ipspoofchk` NAD or a NAD of switchyard's CNI plugin, before or after
//! (overlays put VMIs' MACs on other nodes' tunnels, spoof filters come from the policy stage,
//! the CNI ports' subjects go to the runtime with a full plan); its status has an address that
//! does not parse (a problem the policy stage reports); its planning has a problem or a note,
//! before or after, or its last good version was kept; a port name or a static MAC it names
//! is named by another port too (the duplicate rules decide between ports); the last full
//! plan had such a conflict anywhere (a VMI kept or left out for it may come back when another
//! one changes) or kept any object at its last good version (the bad version's ports took part
//! in its first pass); a bridge would be left without ports or is not there yet; the node
//! would exceed its port limit; or the runtime cannot patch (CNI ports merged in).
//!
//! [`Runtime::apply_delta`]: crate::runtime::Runtime::apply_delta

use crate::k8s::{ClusterState, Loaded, VirtualMachineInstance};
use crate::lastgood::LastGood;
use crate::nad::NadNetwork;
use crate::plan::{nad_key, plan_vmi, PlanMemo, PlanOptions, VmiMemo};
use crate::runtime::PortDelta;
use crate::{ObjRef, Skipped};
use std::collections::{BTreeSet, HashMap};
use switchyard_dataplane::wire::MacAddr;

/// What the ports of the last plan declared, before the duplicate rules: counts by port name,
/// by (bridge, static MAC), by bridge, and in all.
#[derive(Debug, Default)]
pub(crate) struct Index {
    names: HashMap<String, u32>,
    macs: HashMap<(String, MacAddr), u32>,
    bridges: HashMap<String, usize>,
    total: usize,
}

impl Index {
    /// From a plan's memo (its uplinks and VMIs); `None` when the node is over its port limit.
    fn build(memo: &PlanMemo) -> Option<Index> {
        let mut ix = Index::default();
        for b in memo.uplinks.iter().chain(memo.vmis().flat_map(|m| m.ports.iter())) {
            ix.add(&b.bridge, &b.port.name, &b.port.static_macs);
        }
        (ix.total <= switchyard_dataplane::switch::MAX_PORTS_PER_NODE).then_some(ix)
    }

    fn add(&mut self, bridge: &str, name: &str, macs: &[MacAddr]) {
        *self.names.entry(name.to_string()).or_default() += 1;
        for m in macs {
            *self.macs.entry((bridge.to_string(), *m)).or_default() += 1;
        }
        *self.bridges.entry(bridge.to_string()).or_default() += 1;
        self.total += 1;
    }

    /// Takes a VMI's port out; false when it was not alone with its name or a MAC.
    fn take(&mut self, bridge: &str, name: &str, macs: &[MacAddr]) -> bool {
        let alone = self.names.remove(name) == Some(1);
        let mut ok = alone;
        for m in macs {
            ok &= self.macs.remove(&(bridge.to_string(), *m)) == Some(1);
        }
        if let Some(n) = self.bridges.get_mut(bridge) {
            *n = n.saturating_sub(1);
        }
        self.total = self.total.saturating_sub(1);
        ok
    }

    /// Puts a VMI's port in; false when its name or a MAC is already there.
    fn put(&mut self, bridge: &str, name: &str, macs: &[MacAddr]) -> bool {
        let free = !self.names.contains_key(name)
            && macs.iter().all(|m| !self.macs.contains_key(&(bridge.to_string(), *m)));
        self.add(bridge, name, macs);
        free
    }
}

/// What the last reconcile planned, for the next delta.
#[derive(Debug)]
pub(crate) struct Current {
    /// The state planned (last good versions in place): `origin` looks ports up in it.
    pub(crate) state: ClusterState,
    /// The plan's skipped list (sorted by object, then item).
    pub(crate) skipped: Vec<Skipped>,
    /// The objects (and the files, API paths for the API source) the plan's problems name.
    problem_objects: BTreeSet<ObjRef>,
    problem_files: BTreeSet<String>,
    index: Index,
}

impl Current {
    /// After a full plan; `None` when no delta may follow it: a rule between ports (a name
    /// or static MAC twice, the port limit) made a problem, which another VMI's change may
    /// mend (a VMI kept at its last good version for a MAC another one held, say), or an
    /// object was kept at its last good version.
    pub(crate) fn new(
        state: ClusterState,
        plan: &mut crate::Plan,
        kept: &[crate::lastgood::Kept],
        memo: &PlanMemo,
    ) -> Option<Current> {
        // A kept object's bad version took part in the first pass of that plan (its ports
        // could push another VMI's MAC or name out): another VMI's change is judged against
        // those only by a full plan.
        if plan.ports_conflict || !kept.is_empty() {
            return None;
        }
        let index = Index::build(memo)?;
        Some(Current {
            state,
            skipped: std::mem::take(&mut plan.skipped),
            problem_objects: plan.problems.iter().filter_map(|p| p.object.clone()).collect(),
            problem_files: plan.problems.iter().map(|p| p.file.clone()).collect(),
            index,
        })
    }
}

/// A VMI's key and what the store has now (None: deleted).
pub(crate) type VmiNow = ((String, String), Option<Loaded<VirtualMachineInstance>>);

/// One VMI changed: its key, what the store has now (None: deleted), its plan alone.
pub(crate) struct VmiChange {
    pub(crate) key: (String, String),
    pub(crate) now: Option<Loaded<VirtualMachineInstance>>,
    pub(crate) memo: Option<VmiMemo>,
    /// Its skipped items as planned now.
    pub(crate) skipped: Vec<Skipped>,
}

/// Whether VMI `v`'s change stays within its own ports: no overlay, `ipspoofchk` or
/// switchyard CNI NAD among its networks, every status address parses.
fn stays_local(state: &ClusterState, v: &VirtualMachineInstance) -> bool {
    let ns = v.metadata.namespace.as_deref().unwrap_or("default");
    let nads_ok = v.spec.networks.iter().filter_map(|n| n.multus.as_ref()).all(|m| {
        match state.nads.get(&nad_key(ns, &m.network_name)).map(|n| &n.net) {
            Some(Ok(NadNetwork::OvnLayer2(_))) => false,
            Some(Ok(NadNetwork::Bridge(b))) => !b.ipspoofchk,
            // Its CNI subject goes to the runtime with a full plan only (control/src/cni_subject.rs).
            Some(Ok(NadNetwork::SwitchyardCni { .. })) => false,
            _ => true,
        }
    });
    let parses =
        |a: &String| a.split_once('/').map_or(a.as_str(), |(b, _)| b).parse::<std::net::IpAddr>().is_ok();
    nads_ok && v.status.interfaces.iter().all(|s| s.ip_address.iter().chain(&s.ip_addresses).all(parses))
}

/// Plans the VMIs `changed` (their keys with what the store has now) against `cur` and
/// `lastgood`'s memo: the port delta and the changes to commit once the runtime took it.
/// `None`: the change is not one the delta path takes (the module doc says which); `cur`'s
/// index is then spent (the caller plans in full and makes a new one).
pub(crate) fn plan_delta(
    cur: &mut Current,
    lastgood: &LastGood,
    changed: Vec<VmiNow>,
    node: &str,
    opts: &PlanOptions,
) -> Option<(PortDelta, Vec<VmiChange>)> {
    if !cur.state.policies.is_empty() {
        return None;
    }
    let memo = lastgood.memo();
    let mut delta = PortDelta::default();
    let mut out = Vec::with_capacity(changed.len());
    let mut touched_bridges = BTreeSet::new();
    for (key, now) in changed {
        let oref = ObjRef::new("VirtualMachineInstance", Some(&key.0), &key.1);
        let file = now
            .as_ref()
            .map(|l| l.src.file.to_string())
            .unwrap_or_else(|| crate::api_source::vmi_path(&key.0, &key.1));
        if cur.problem_objects.contains(&oref) || cur.problem_files.contains(&file) {
            return None;
        }
        let before = cur.state.vmis.get(&key);
        if !before.into_iter().chain(now.as_ref()).all(|l| stays_local(&cur.state, &l.obj)) {
            return None;
        }
        let old = memo.vmi(&key);
        let new = now.as_ref().and_then(|l| plan_vmi(&cur.state, l, node, opts, memo));
        let clean = |m: &VmiMemo| m.problems.is_empty() && m.notes.is_empty();
        if !old.is_none_or(clean) || !new.as_ref().is_none_or(clean) {
            return None;
        }
        for b in old.iter().flat_map(|m| &m.ports) {
            touched_bridges.insert(b.bridge.clone());
            if !cur.index.take(&b.bridge, &b.port.name, &b.port.static_macs) {
                return None;
            }
        }
        for b in new.iter().flat_map(|m| &m.ports) {
            touched_bridges.insert(b.bridge.clone());
            if !cur.index.put(&b.bridge, &b.port.name, &b.port.static_macs) {
                return None;
            }
            delta.upserted.push((b.bridge.clone(), b.port.clone()));
        }
        for b in old.iter().flat_map(|m| &m.ports) {
            if !new.iter().flat_map(|m| &m.ports).any(|n| n.port.name == b.port.name) {
                delta.removed.push(b.port.name.clone());
            }
        }
        let skipped = new.as_ref().map(|m| m.skipped.clone()).unwrap_or_default();
        out.push(VmiChange { key, now, memo: new, skipped });
    }
    let emptied = touched_bridges.iter().any(|b| cur.index.bridges.get(b).is_none_or(|n| *n == 0));
    if emptied || cur.index.total > switchyard_dataplane::switch::MAX_PORTS_PER_NODE {
        return None;
    }
    Some((delta, out))
}

/// Puts VMI `key`'s skipped items `new` in place of its old ones in `list` (sorted by object,
/// then item, as a plan's): where they start, the old items, and the new ones in order.
pub(crate) fn splice_skipped(
    list: &mut Vec<Skipped>,
    key: &(String, String),
    new: &[Skipped],
) -> (usize, Vec<Skipped>, Vec<Skipped>) {
    let oref = ObjRef::new("VirtualMachineInstance", Some(&key.0), &key.1);
    let lo = list.partition_point(|s| s.object < oref);
    let hi = lo + list[lo..].partition_point(|s| s.object == oref);
    let mut add = new.to_vec();
    add.sort_by(|a, b| a.item.cmp(&b.item));
    let old: Vec<Skipped> = list.splice(lo..hi, add.iter().cloned()).collect();
    (lo, old, add)
}
