//! What the Kubernetes API (or a manifest directory) hands the control plane: arbitrary text
//! read as multi-document YAML of NetworkAttachmentDefinitions, MultiNetworkPolicies (v1beta1,
//! v1beta2), VirtualMachineInstances, Namespaces, NodeNetworkConfigurationPolicies and Nodes,
//! loaded as the directory source loads them and planned for node `node1`.
//!
//! Besides never panicking: the plan is a configuration the switch accepts (no "internal
//! error" problem, `Config::validate` passes); every port policy it gives compiles to a
//! classifier that agrees with the rules read one after the other (`policy::interpret`) on
//! probes at the edges of every address block and port range; and when every document is
//! plain JSON data, each object given once (no `List`), the same objects stored the way the
//! API source stores them (JSON, `ApiStore::put`) plan to the same configuration.
#![no_main]

use kube::api::DynamicObject;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::net::IpAddr;
use switchyard_control::api_source::{ApiStore, Kind};
use switchyard_control::{plan, ClusterState, Plan, PlanOptions};
use switchyard_dataplane::policy::{interpret, Classifier, DirectionPolicy};

const NODE: &str = "node1";

fn addr(k: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from((k as u32).to_be_bytes())
    } else {
        IpAddr::from(k.to_be_bytes())
    }
}

/// The classifier of `d` against the interpreter, at the edges of its blocks and ranges.
fn check_direction(d: &DirectionPolicy) {
    let c = Classifier::compile(d);
    let mut peers: Vec<IpAddr> = vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    let mut ports: Vec<(u8, u16)> = vec![(6, 0), (17, 65535), (1, 0)];
    for r in &d.rules {
        for p in r.peers.iter().flatten() {
            for b in std::iter::once(&p.cidr).chain(&p.except) {
                let v4 = b.addr.is_ipv4();
                let (lo, hi) = b.range();
                peers.extend([lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)].map(|k| addr(k, v4)));
            }
        }
        for p in r.ports.iter().flatten() {
            let n = p.protocol.number();
            for x in [p.port, p.end_port].into_iter().flatten() {
                ports.extend([x.wrapping_sub(1), x, x.wrapping_add(1)].map(|x| (n, x)));
            }
            ports.push((n, 0));
        }
    }
    peers.truncate(96);
    ports.truncate(48);
    for &ip in &peers {
        for &(proto, port) in &ports {
            assert_eq!(
                c.matches(ip, proto, port),
                interpret(d, ip, proto, port),
                "{ip} {proto} {port}: {d:?}"
            );
        }
    }
}

fn check_plan(p: &Plan, how: &str) {
    // The plan's own problems are filed under "(plan)"; a user's text may say anything.
    if let Some(e) =
        p.problems.iter().find(|e| e.file == "(plan)" && e.message.starts_with("internal error"))
    {
        panic!("{how}: {e}");
    }
    if let Err(e) = p.config.validate() {
        panic!("{how}: the plan is not a valid config: {e}");
    }
    for port in p.config.bridges.iter().flat_map(|b| &b.ports) {
        if let Some(pol) = &port.policy {
            for d in [&pol.ingress, &pol.egress].into_iter().flatten() {
                check_direction(d);
            }
        }
    }
}

/// The kind the API source would watch `doc` as, when the directory source takes it too.
fn api_kind(doc: &serde_json::Value) -> Option<Kind> {
    let kind = doc.get("kind")?.as_str()?;
    // No apiVersion reads as the core group, as the directory source reads it.
    let api = doc.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
    let group = api.split_once('/').map_or("", |(g, _)| g);
    Kind::ALL.into_iter().find(|k| k.gvk().2 == kind && k.gvk().0 == group)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut state = ClusterState::default();
    state.add_yaml("fuzz.yaml", text);
    let opts = PlanOptions::default();
    let extra = BTreeMap::new();
    let from_dir = plan(&state, NODE, &extra, &opts);
    check_plan(&from_dir, "directory");

    // The API source's way, when it sees the same objects.
    if state
        .problems
        .iter()
        .any(|p| p.message.contains("defined twice") || p.message.contains("does not parse"))
    {
        return;
    }
    let mut store = ApiStore::default();
    // An object given twice is the directory's problem (the first one is used, or the second
    // one's parse error reported), and the API's update (the last one is used): left out.
    let mut seen = std::collections::HashSet::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let Ok(y) = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) else { return };
        if y.is_null() {
            continue;
        }
        // Only plain JSON data: the same value both ways.
        let Ok(j) = serde_json::to_value(&y) else { return };
        if serde_yaml_ng::to_value(&j).ok().as_ref() != Some(&y) {
            return;
        }
        if j.get("kind").and_then(|k| k.as_str()).is_some_and(|k| k.ends_with("List")) {
            return;
        }
        let Some(kind) = api_kind(&j) else { continue };
        let Ok(o) = serde_json::from_value::<DynamicObject>(j) else { return };
        if !seen.insert((kind, o.metadata.namespace.clone(), o.metadata.name.clone())) {
            return;
        }
        store.put(kind, o);
    }
    let from_api = plan(&store.snapshot(), NODE, &extra, &opts);
    check_plan(&from_api, "API");
    assert_eq!(from_dir.config.to_yaml(), from_api.config.to_yaml(), "directory and API plans differ");
});
