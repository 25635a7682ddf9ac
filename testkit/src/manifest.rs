//! Kubernetes manifests as the control plane's tests and benchmarks write them: a
//! NetworkAttachmentDefinition, a VirtualMachineInstance with one secondary interface, a
//! MultiNetworkPolicy, and the many-VMI state of the scale test and benchmark.
//!
//! Invariant: the text is the YAML a user would write, with nothing switchyard-specific, so that
//! what a test feeds `ClusterState` is what a cluster holds; a test that needs a variant edits
//! the text (`str::replace`), which stays possible because every field stands on its own line.

use std::fmt::Write as _;

/// A NetworkAttachmentDefinition `ns/name` whose CNI config is `config` (JSON, without single
/// quotes).
pub fn nad(ns: &str, name: &str, config: &str) -> String {
    format!(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  config: '{config}'\n"
    )
}

/// A MultiNetworkPolicy `ns/name` for the networks `policy_for` (the annotation's value), with
/// `spec` (indented lines) as its spec.
pub fn policy(ns: &str, name: &str, policy_for: &str, spec: &str) -> String {
    format!(
        "apiVersion: k8s.cni.cncf.io/v1beta2\nkind: MultiNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n    k8s.v1.cni.cncf.io/policy-for: {policy_for}\nspec:\n{spec}"
    )
}

/// A VirtualMachineInstance with one interface `net1` (binding `bridge`) on the multus
/// network `network`, scheduled on `node`; [`Vmi::yaml`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct Vmi<'a> {
    ns: &'a str,
    name: &'a str,
    network: &'a str,
    node: &'a str,
    labels: &'a str,
    iface_extra: &'a str,
    status_extra: &'a str,
}

impl<'a> Vmi<'a> {
    pub fn new(ns: &'a str, name: &'a str, network: &'a str, node: &'a str) -> Self {
        Vmi { ns, name, network, node, labels: "", iface_extra: "", status_extra: "" }
    }

    /// Labels, in flow style without the braces (`app: web, tier: db`).
    pub fn labels(self, labels: &'a str) -> Self {
        Vmi { labels, ..self }
    }

    /// Lines added to the interface (indented by ten spaces, e.g. `          macAddress: ...`).
    pub fn iface(self, iface_extra: &'a str) -> Self {
        Vmi { iface_extra, ..self }
    }

    /// Lines added to the status after `nodeName` (indented by two spaces, newline-terminated).
    pub fn status(self, status_extra: &'a str) -> Self {
        Vmi { status_extra, ..self }
    }

    pub fn yaml(&self) -> String {
        let Vmi { ns, name, network, node, labels, iface_extra, status_extra } = *self;
        let labels = if labels.is_empty() { String::new() } else { format!("  labels: {{{labels}}}\n") };
        format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
  namespace: {ns}
{labels}spec:
  domain:
    devices:
      interfaces:
        - name: net1
          bridge: {{}}
{iface_extra}
  networks:
    - name: net1
      multus:
        networkName: {network}
status:
  nodeName: {node}
{status_extra}"#
        )
    }
}

/// The scale state: 20 bridge NADs `ns/net0..net19` (bridges br0..br3, VLANs 100..119) and
/// `vmis` VMIs `ns/vm<i>` with two secondary interfaces each (`a` on net`i%20`, `b` on
/// net`(i+7)%20`, MACs 02:00:00:hi:lo:01/02), spread over the nodes `n0..n<nodes-1>` by `i %
/// nodes`. One YAML stream.
pub fn scale_state(vmis: u32, nodes: u32) -> String {
    let mut text = String::new();
    for i in 0..20 {
        let config = format!(
            r#"{{"cniVersion":"0.3.1","name":"net{i}","type":"bridge","bridge":"br{}","vlan":{}}}"#,
            i % 4,
            100 + i
        );
        text.push_str(&nad("ns", &format!("net{i}"), &config));
        text.push_str("---\n");
    }
    for i in 0..vmis {
        let (hi, lo, node) = (i >> 8, i & 0xff, i % nodes.max(1));
        let _ = write!(
            text,
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: vm{i}, namespace: ns}}
spec:
  domain:
    devices:
      interfaces:
        - {{name: default, masquerade: {{}}}}
        - {{name: a, bridge: {{}}, macAddress: "02:00:00:{hi:02x}:{lo:02x}:01"}}
        - {{name: b, bridge: {{}}, macAddress: "02:00:00:{hi:02x}:{lo:02x}:02"}}
  networks:
    - {{name: default, pod: {{}}}}
    - {{name: a, multus: {{networkName: net{}}}}}
    - {{name: b, multus: {{networkName: net{}}}}}
status: {{nodeName: n{node}}}
---
"#,
            i % 20,
            (i + 7) % 20
        );
    }
    text
}
