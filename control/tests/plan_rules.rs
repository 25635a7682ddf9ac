//! One test per mapping rule of docs/cluster-state.md, and the bad-input cases.

use std::collections::BTreeMap;
use switchyard_control::plan::{plan_memo, socket_path, PlanMemo, DEFAULT_VHOST_DIR};
use switchyard_control::{plan, ClusterState, Config, Plan, PlanOptions};
use switchyard_dataplane::config::{PortConfig, PortType, VlanModeName};
use testkit::manifest::{nad, scale_state, Vmi};

const NODE: &str = "n1";

fn state(files: &[(&str, &str)]) -> ClusterState {
    let mut s = ClusterState::default();
    for (f, t) in files {
        s.add_yaml(f, t);
    }
    s
}

fn plan_of(files: &[(&str, &str)]) -> Plan {
    let p = plan(&state(files), NODE, &BTreeMap::new(), &PlanOptions::default());
    p.config.validate().expect("every plan is a valid config");
    p
}

fn port<'a>(p: &'a Plan, name: &str) -> (&'a str, &'a PortConfig) {
    for b in &p.config.bridges {
        for q in &b.ports {
            if q.name == name {
                return (&b.name, q);
            }
        }
    }
    panic!("no port {name} in\n{}", p.to_yaml());
}

fn has_port(p: &Plan, name: &str) -> bool {
    p.config.bridges.iter().any(|b| b.ports.iter().any(|q| q.name == name))
}

/// A VMI on NODE with one interface `net1` (binding `bridge`) on multus network `network`.
fn vmi(ns: &str, name: &str, network: &str, iface_extra: &str) -> String {
    vmi_on(ns, name, network, iface_extra, NODE)
}

fn vmi_on(ns: &str, name: &str, network: &str, iface_extra: &str, node: &str) -> String {
    Vmi::new(ns, name, network, node).iface(iface_extra).yaml()
}

const MAC1: &str = "          macAddress: 02:00:00:00:00:01";

fn bridge_nad(extra: &str) -> String {
    nad(
        "ns",
        "net",
        &format!(r#"{{"cniVersion":"0.3.1","name":"net","type":"bridge","bridge":"br1"{extra}}}"#),
    )
}

fn one_port(extra: &str) -> PortConfig {
    let p = plan_of(&[("nad.yaml", &bridge_nad(extra)), ("vm.yaml", &vmi("ns", "vm", "net", MAC1))]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let (b, q) = port(&p, "ns/vm/net1");
    assert_eq!(b, "br1");
    q.clone()
}

// ---- bridge CNI ----

#[test]
fn bridge_vlan_is_an_access_port() {
    let q = one_port(r#","vlan":100"#);
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::Access), Some(100), None));
    // preserveDefaultVlan does not change an access port (see the doc).
    let q = one_port(r#","vlan":100,"preserveDefaultVlan":false"#);
    assert_eq!((q.vlan_mode, q.tag), (Some(VlanModeName::Access), Some(100)));
}

#[test]
fn bridge_vlan_trunk_is_a_trunk() {
    let q = one_port(r#","vlanTrunk":[{"id":5},{"minID":10,"maxID":12}],"preserveDefaultVlan":false"#);
    assert_eq!((q.vlan_mode, q.tag), (Some(VlanModeName::Trunk), None));
    assert_eq!(q.trunks, Some(vec![5, 10, 11, 12]));
    // preserveDefaultVlan (default true) keeps VLAN 1 as the untagged native VLAN.
    let q = one_port(r#","vlanTrunk":[{"id":5}]"#);
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::NativeUntagged), Some(1), Some(vec![5])));
    // vlan + vlanTrunk: the vlan is the untagged native VLAN, the trunks tagged.
    let q = one_port(r#","vlan":7,"vlanTrunk":[{"id":5},{"id":7}]"#);
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::NativeUntagged), Some(7), Some(vec![5])));
}

/// A native VLAN whose trunk list holds only itself is that VLAN alone: an access port, never
/// a native-untagged port with no trunks, which the switch (as OVS) reads as every VLAN.
#[test]
fn a_native_vlan_alone_is_that_vlan_not_every_vlan() {
    let q = one_port(r#","vlan":7,"vlanTrunk":[{"id":7}]"#);
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::Access), Some(7), None));
    // preserveDefaultVlan (the default) with VLAN 1 as the only trunk.
    let q = one_port(r#","vlanTrunk":[{"id":1}]"#);
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::Access), Some(1), None));
}

/// The bridge CNI makes a kernel bridge of its `bridge` name: a name no interface can have is
/// refused, so that no NAD puts a VM on a bridge switchyard names itself (another
/// network's `ovn-layer2/<name>`).
#[test]
fn a_bridge_name_no_interface_can_have_is_refused() {
    for bad in ["ovn-layer2/blue", "a-bridge-name-too-long", "br:1"] {
        let nad = nad(
            "ns",
            "net",
            &format!(r#"{{"cniVersion":"0.3.1","name":"net","type":"bridge","bridge":"{bad}"}}"#),
        );
        let p = plan_of(&[("nad.yaml", &nad), ("vm.yaml", &vmi("ns", "vm", "net", MAC1))]);
        assert!(!has_port(&p, "ns/vm/net1"), "{bad}: {}", p.to_yaml());
        assert!(p.config.bridges.iter().all(|b| b.name != bad), "{bad}");
        let why = p.skipped.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n");
        assert!(why.contains(".bridge") && why.contains(bad), "{bad}: {why}");
    }
}

#[test]
fn bridge_without_vlan_is_vlan_transparent() {
    let q = one_port("");
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::Trunk), None, None));
    let q = one_port(r#","vlan":0"#);
    assert_eq!((q.vlan_mode, q.tag, q.trunks), (Some(VlanModeName::Trunk), None, None));
}

#[test]
fn macspoofchk_enforces_the_interface_mac_and_the_mac_is_static() {
    let mac = "02:00:00:00:00:01".parse().unwrap();
    let q = one_port(r#","macspoofchk":true"#);
    assert_eq!(q.allowed_macs, Some(vec![mac]));
    assert_eq!(q.static_macs, vec![mac]);
    let q = one_port(r#","macspoofchk":false"#);
    assert_eq!(q.allowed_macs, None);
    assert_eq!(q.static_macs, vec![mac]);
}

#[test]
fn vm_port_is_vhostuser_server_named_ns_vmi_iface() {
    let q = one_port("");
    assert_eq!(q.kind, Some(PortType::Vhostuser));
    assert_eq!(q.mode.as_deref(), Some("server"));
    assert_eq!(q.socket.as_deref(), Some("/var/run/switchyard/vhost/ns_vm_net1.sock"));
    let long = "x".repeat(63);
    let s = socket_path(DEFAULT_VHOST_DIR, &long, &long, "net1");
    assert!(s.len() <= 107 && s.starts_with("/var/run/switchyard/vhost/") && s.ends_with(".sock"), "{s}");
    assert_eq!(s, socket_path(DEFAULT_VHOST_DIR, &long, &long, "net1"));
}

#[test]
fn mac_comes_from_status_when_the_spec_has_none() {
    let v = vmi("ns", "vm", "net", "").replace(
        "  nodeName: n1\n",
        "  nodeName: n1\n  interfaces:\n    - name: net1\n      mac: 02:00:00:00:00:09\n",
    );
    let p = plan_of(&[("nad.yaml", &bridge_nad(r#","macspoofchk":true"#)), ("vm.yaml", &v)]);
    let (_, q) = port(&p, "ns/vm/net1");
    let mac = "02:00:00:00:00:09".parse().unwrap();
    assert_eq!((q.static_macs.clone(), q.allowed_macs.clone()), (vec![mac], Some(vec![mac])));
    // The spec's MAC wins over the status.
    let v2 = v
        .replace("          bridge: {}\n", "          bridge: {}\n          macAddress: 02:00:00:00:00:0a\n");
    let p = plan_of(&[("nad.yaml", &bridge_nad("")), ("vm.yaml", &v2)]);
    assert_eq!(port(&p, "ns/vm/net1").1.static_macs, vec!["02:00:00:00:00:0a".parse().unwrap()]);
    // Unknown MAC + enforcement: fail closed (an empty allow list), and say so.
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad(r#","macspoofchk":true"#)),
        ("vm.yaml", &vmi("ns", "vm", "net", "")),
    ]);
    let q = port(&p, "ns/vm/net1").1;
    assert_eq!(
        (q.allowed_macs.clone(), q.static_macs.is_empty()),
        (Some(vec!["00:00:00:00:00:00".parse().unwrap()]), true)
    );
    assert!(p.notes.iter().any(|n| n.contains("no known MAC")), "{:?}", p.notes);
}

#[test]
fn a_mac_on_two_ports_of_a_bridge_is_static_on_the_first_only() {
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad("")),
        ("a.yaml", &vmi("ns", "a", "net", MAC1)),
        ("b.yaml", &vmi("ns", "b", "net", MAC1)),
    ]);
    assert_eq!(port(&p, "ns/a/net1").1.static_macs.len(), 1);
    assert!(port(&p, "ns/b/net1").1.static_macs.is_empty());
    assert_eq!(p.problems.len(), 1);
    assert!(p.problems[0].message.contains("02:00:00:00:00:01"), "{}", p.problems[0]);
}

/// The older VMI keeps its MAC: one created later with the same MAC (another tenant's, say,
/// whose name sorts first) gets no static entry and its problem, and cannot take the older
/// one's traffic. Without creation times (state files) the first by name keeps it.
#[test]
fn a_mac_claimed_twice_stays_with_the_older_vmi() {
    let created = |y: String, t: &str| {
        y.replacen("metadata:\n", &format!("metadata:\n  creationTimestamp: \"{t}\"\n"), 1)
    };
    let nad_a = nad("a-evil", "net", r#"{"cniVersion":"0.3.1","name":"net","type":"bridge","bridge":"br1"}"#);
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad("")),
        ("nad-a.yaml", &nad_a),
        ("old.yaml", &created(vmi("ns", "vma", "net", MAC1), "2026-12-01T10:00:00Z")),
        ("new.yaml", &created(vmi("a-evil", "x", "net", MAC1), "2026-12-06T10:00:00Z")),
    ]);
    assert_eq!(port(&p, "ns/vma/net1").1.static_macs.len(), 1, "{}", p.to_yaml());
    assert!(port(&p, "a-evil/x/net1").1.static_macs.is_empty());
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert_eq!(
        p.problems[0].object.as_ref().map(|o| o.to_string()).as_deref(),
        Some("VirtualMachineInstance a-evil/x")
    );
    assert!(p.problems[0].message.contains("stays on ns/vma/net1"), "{}", p.problems[0]);
}

// ---- OVN-Kubernetes ----

const NNCP_MAPPING: &str = r#"apiVersion: nmstate.io/v1
kind: NodeNetworkConfigurationPolicy
metadata:
  name: ovs
spec:
  desiredState:
    interfaces:
      - name: br-phys
        type: ovs-bridge
        state: up
        bridge:
          port:
            - name: eth2
            - name: br-phys-int
      - name: br-phys-int
        type: ovs-interface
        state: up
    ovn:
      bridge-mappings:
        - localnet: physnet
          bridge: br-phys
          state: present
"#;

#[test]
fn ovn_localnet_goes_on_the_mapped_bridge_with_its_vlan_and_mac_enforced() {
    let n = nad(
        "ns",
        "ln",
        r#"{"cniVersion":"0.4.0","name":"tenant","type":"ovn-k8s-cni-overlay","topology":"localnet","physicalNetworkName":"physnet","vlanID":20,"netAttachDefName":"ns/ln"}"#,
    );
    let p =
        plan_of(&[("nncp.yaml", NNCP_MAPPING), ("nad.yaml", &n), ("vm.yaml", &vmi("ns", "vm", "ln", MAC1))]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let (b, q) = port(&p, "ns/vm/net1");
    assert_eq!(b, "br-phys");
    assert_eq!((q.vlan_mode, q.tag), (Some(VlanModeName::Access), Some(20)));
    assert_eq!(q.allowed_macs, Some(vec!["02:00:00:00:00:01".parse().unwrap()]));
    // The OVS internal interface is not an uplink; eth2 is.
    assert_eq!(port(&p, "eth2").0, "br-phys");
    assert!(!has_port(&p, "br-phys-int"));
}

#[test]
fn an_uplink_no_interface_can_be_named_is_left_out_with_its_problem() {
    // A port's name is its interface: 16 bytes is one too many. Left out (with the problem
    // naming the field), the plan stays a valid configuration and keeps the other uplink.
    let nncp = NNCP_MAPPING.replace("- name: eth2\n", "- name: eth2\n            - name: sixteen-bytes-xx\n");
    let p = plan_of(&[("nncp.yaml", &nncp)]);
    assert!(has_port(&p, "eth2") && !has_port(&p, "sixteen-bytes-xx"));
    assert!(p.config.validate().is_ok());
    assert!(
        p.problems.iter().any(|q| q.to_string().contains("port[1].name") && q.message.contains("15")),
        "{:?}",
        p.problems
    );
}

#[test]
fn ovn_localnet_defaults() {
    // No physicalNetworkName: the network name is the physical network. No vlanID: untagged
    // (VLAN 0). macspoofchk-like enforcement even without a MAC option.
    let n = nad("ns", "ln", r#"{"name":"physnet","type":"ovn-k8s-cni-overlay","topology":"localnet"}"#);
    let p =
        plan_of(&[("nncp.yaml", NNCP_MAPPING), ("nad.yaml", &n), ("vm.yaml", &vmi("ns", "vm", "ln", MAC1))]);
    let (b, q) = port(&p, "ns/vm/net1");
    assert_eq!((b, q.vlan_mode, q.tag), ("br-phys", Some(VlanModeName::Access), Some(0)));
    assert!(q.allowed_macs.is_some());
    // No bridge mapping on the node: a bridge of its own, without uplink, and a note.
    let p = plan_of(&[("nad.yaml", &n), ("vm.yaml", &vmi("ns", "vm", "ln", MAC1))]);
    assert_eq!(port(&p, "ns/vm/net1").0, "ovn-localnet/physnet");
    assert!(p.notes.iter().any(|n| n.contains("physnet")), "{:?}", p.notes);
}

#[test]
fn ovn_layer2_is_a_bridge_per_network_with_mac_enforced() {
    // Two NADs in two namespaces naming the same network share the bridge.
    let a = nad(
        "a",
        "l2",
        r#"{"name":"blue","type":"ovn-k8s-cni-overlay","topology":"layer2","subnets":"10.0.0.0/24","netAttachDefName":"a/l2"}"#,
    );
    let b = nad("b", "l2", r#"{"name":"blue","type":"ovn-k8s-cni-overlay","topology":"layer2"}"#);
    let p = plan_of(&[
        ("a.yaml", &a),
        ("b.yaml", &b),
        ("va.yaml", &vmi("a", "vm", "l2", MAC1)),
        ("vb.yaml", &vmi("b", "vm", "l2", "          macAddress: 02:00:00:00:00:02")),
    ]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let (ba, qa) = port(&p, "a/vm/net1");
    let (bb, _) = port(&p, "b/vm/net1");
    assert_eq!((ba, bb), ("ovn-layer2/blue", "ovn-layer2/blue"));
    assert_eq!(qa.vlan_mode, Some(VlanModeName::Trunk));
    assert_eq!(qa.allowed_macs, Some(vec!["02:00:00:00:00:01".parse().unwrap()]));
}

// ---- no switch port ----

#[test]
fn sriov_and_unknown_cni_types_are_skipped_with_a_reason() {
    let s = nad("ns", "sr", r#"{"name":"sr","type":"sriov","vlan":3}"#);
    let m = nad("ns", "mv", r#"{"name":"mv","type":"macvlan","master":"eth0"}"#);
    let p = plan_of(&[
        ("s.yaml", &s),
        ("m.yaml", &m),
        ("v1.yaml", &vmi("ns", "v1", "sr", "")),
        ("v2.yaml", &vmi("ns", "v2", "mv", "")),
        ("v3.yaml", &vmi("ns", "v3", "sr", "").replace("bridge: {}", "sriov: {}")),
    ]);
    assert!(p.config.bridges.is_empty());
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let reasons: Vec<String> = p.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("v1 interface net1") && reasons[0].contains("SR-IOV"), "{reasons:?}");
    assert!(reasons[1].contains("macvlan"), "{reasons:?}");
    assert!(reasons[2].contains("SR-IOV"), "{reasons:?}");
}

#[test]
fn interface_states_pod_network_and_placement() {
    let v = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vm
  namespace: ns
spec:
  domain:
    devices:
      interfaces:
        - name: default
          masquerade: {}
        - name: gone
          bridge: {}
          state: absent
        - name: off
          bridge: {}
          state: down
        - name: plugin
          binding:
            name: vhostuser
        - name: other
          binding:
            name: passt
  networks:
    - name: default
      pod: {}
    - name: gone
      multus:
        networkName: net
    - name: off
      multus:
        networkName: other-ns/net
    - name: plugin
      multus:
        networkName: net
    - name: other
      multus:
        networkName: net
status:
  nodeName: n1
"#;
    let vm_obj = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: lonely
  namespace: ns
spec:
  template:
    spec:
      domain: {devices: {interfaces: [{name: net1, bridge: {}}]}}
      networks: [{name: net1, multus: {networkName: net}}]
"#;
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad("")),
        ("nad2.yaml", &nad("other-ns", "net", r#"{"name":"net","type":"bridge","bridge":"br2"}"#)),
        ("vm.yaml", v),
        ("vmobj.yaml", vm_obj),
        ("elsewhere.yaml", &vmi_on("ns", "far", "net", "", "n2")),
    ]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let names: Vec<&str> =
        p.config.bridges.iter().flat_map(|b| b.ports.iter().map(|q| q.name.as_str())).collect();
    // down keeps its port; absent, masquerade/pod, passt: none; other node, VirtualMachine: none.
    assert_eq!(names, vec!["ns/vm/plugin", "ns/vm/off"]);
    assert_eq!(port(&p, "ns/vm/off").0, "br2", "networkName with a namespace/ prefix");
    let items: Vec<&str> = p.skipped.iter().map(|s| s.item.as_str()).collect();
    assert_eq!(items, vec!["interface default", "interface gone", "interface other"]);
}

// ---- NNCP ----

const NNCP_TRUNK: &str = r#"apiVersion: nmstate.io/v1
kind: NodeNetworkConfigurationPolicy
metadata:
  name: br1
spec:
  nodeSelector:
    role: dpdk
  desiredState:
    interfaces:
      - name: br1
        type: linux-bridge
        state: up
        bridge:
          port:
            - name: eth1
              vlan:
                mode: trunk
                enable-native: true
                tag: 10
                trunk-tags:
                  - id: 10
                  - id: 20
                  - id-range: {min: 30, max: 32}
            - name: eth2
              vlan:
                mode: access
                tag: 40
            - name: eth3
              vlan:
                mode: trunk
                trunk-tags: [{id: 50}]
            - name: eth4
      - name: br-old
        type: linux-bridge
        state: absent
"#;

#[test]
fn nncp_bridge_ports_become_uplinks_with_their_vlans() {
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    role: dpdk\n";
    let p = plan_of(&[("node.yaml", node), ("nncp.yaml", NNCP_TRUNK)]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.config.bridges.len(), 1, "br-old is absent");
    let (b, q) = port(&p, "eth1");
    assert_eq!(b, "br1");
    assert_eq!((q.kind, q.iface.as_deref()), (Some(PortType::Afpacket), Some("eth1")));
    assert_eq!(
        (q.vlan_mode, q.tag, q.trunks.clone()),
        (Some(VlanModeName::NativeUntagged), Some(10), Some(vec![20, 30, 31, 32]))
    );
    let q = port(&p, "eth2").1;
    assert_eq!((q.vlan_mode, q.tag, q.trunks.clone()), (Some(VlanModeName::Access), Some(40), None));
    let q = port(&p, "eth3").1;
    assert_eq!((q.vlan_mode, q.tag, q.trunks.clone()), (Some(VlanModeName::Trunk), None, Some(vec![50])));
    let q = port(&p, "eth4").1;
    assert_eq!((q.vlan_mode, q.tag, q.trunks.clone()), (Some(VlanModeName::Trunk), None, None));
}

/// nmstate's readings: numbers and `enable-native` may be strings; `vlan: {}` is no VLAN
/// settings; a native VLAN alone is that VLAN; a bridge (or a bridge mapping's bridge) named
/// as no interface can be is left out with its problem, the rest of the policy planned.
#[test]
fn nncp_vlans_as_nmstate_reads_them() {
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    role: dpdk\n";
    let nncp = r#"apiVersion: nmstate.io/v1
kind: NodeNetworkConfigurationPolicy
metadata:
  name: quoted
spec:
  desiredState:
    interfaces:
      - name: br2
        type: linux-bridge
        bridge:
          port:
            - name: eth5
              vlan: {mode: access, tag: "100"}
            - name: eth6
              vlan:
                mode: trunk
                enable-native: "true"
                tag: 300
                trunk-tags: [{id: "300"}]
            - name: eth7
              vlan: {mode: trunk, trunk-tags: [{id-range: {min: "5", max: "7"}}]}
            - name: eth8
              vlan: {}
      - name: ovn-layer2/blue
        type: ovs-bridge
        bridge:
          port: [{name: eth9}]
    ovn:
      bridge-mappings:
        - {localnet: physnet, bridge: "ovn-layer2/red"}
        - {localnet: physnet2, bridge: br2}
"#;
    let p = plan_of(&[("node.yaml", node), ("nncp.yaml", nncp)]);
    let probs: Vec<String> = p.problems.iter().map(|x| x.to_string()).collect();
    assert_eq!(probs.len(), 2, "{probs:#?}");
    assert!(probs.iter().any(|x| x.contains("interfaces[1].name")), "{probs:#?}");
    assert!(probs.iter().any(|x| x.contains("bridge-mappings[0].bridge")), "{probs:#?}");
    assert!(!has_port(&p, "eth9"));
    let q = port(&p, "eth5").1;
    assert_eq!((q.vlan_mode, q.tag, q.trunks.clone()), (Some(VlanModeName::Access), Some(100), None));
    let q = port(&p, "eth6").1;
    assert_eq!((q.vlan_mode, q.tag, q.trunks.clone()), (Some(VlanModeName::Access), Some(300), None));
    let q = port(&p, "eth7").1;
    assert_eq!(
        (q.vlan_mode, q.tag, q.trunks.clone()),
        (Some(VlanModeName::Trunk), None, Some(vec![5, 6, 7]))
    );
    let q = port(&p, "eth8").1;
    assert_eq!((q.vlan_mode, q.tag, q.trunks.clone()), (Some(VlanModeName::Trunk), None, None));
}

#[test]
fn nncp_node_selector_uses_node_labels_or_the_command_line() {
    let st = state(&[("nncp.yaml", NNCP_TRUNK)]);
    let opts = PlanOptions::default();
    assert!(plan(&st, "n1", &BTreeMap::new(), &opts).config.bridges.is_empty());
    let labels: BTreeMap<String, String> = [("role".to_string(), "dpdk".to_string())].into();
    assert_eq!(plan(&st, "n1", &labels, &opts).config.bridges.len(), 1);
    // kubernetes.io/hostname is implied.
    let by_host = NNCP_TRUNK.replace("role: dpdk", "kubernetes.io/hostname: n1");
    let st = state(&[("nncp.yaml", &by_host)]);
    assert_eq!(plan(&st, "n1", &BTreeMap::new(), &opts).config.bridges.len(), 1);
    assert!(plan(&st, "n2", &BTreeMap::new(), &opts).config.bridges.is_empty());
}

// ---- bad input ----

#[test]
fn a_manifest_that_does_not_parse_is_reported_and_the_rest_applied() {
    let p = plan_of(&[
        ("bad.yaml", "apiVersion: v1\nkind: [unclosed\n"),
        ("nad.yaml", &bridge_nad("")),
        ("vm.yaml", &vmi("ns", "vm", "net", MAC1)),
    ]);
    assert!(has_port(&p, "ns/vm/net1"));
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].file, "bad.yaml");
    // A wrongly typed field names its path.
    let bad_vmi = vmi("ns", "vm2", "net", "").replace("nodeName: n1", "nodeName: n1\n  interfaces: 7");
    let p = plan_of(&[("nad.yaml", &bridge_nad("")), ("vm2.yaml", &bad_vmi)]);
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].field.as_deref(), Some("status.interfaces"), "{}", p.problems[0]);
    assert_eq!(p.problems[0].object.as_ref().unwrap().to_string(), "VirtualMachineInstance ns/vm2");
}

#[test]
fn a_nad_whose_config_is_not_json() {
    let bad = nad("ns", "net", "{not json");
    let p = plan_of(&[("nad.yaml", &bad), ("vm.yaml", &vmi("ns", "vm", "net", MAC1))]);
    assert!(p.config.bridges.is_empty());
    assert_eq!(p.problems.len(), 1);
    let pr = &p.problems[0];
    assert_eq!((pr.file.as_str(), pr.field.as_deref()), ("nad.yaml", Some("spec.config")));
    assert_eq!(pr.object.as_ref().unwrap().to_string(), "NetworkAttachmentDefinition ns/net");
    assert!(
        p.skipped.iter().any(|s| s.item == "interface net1" && s.reason.contains("invalid")),
        "{:?}",
        p.skipped
    );
}

#[test]
fn a_vlan_out_of_range() {
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad(r#","vlan":5000"#)),
        ("nad2.yaml", &nad("ns", "ok", r#"{"name":"ok","type":"bridge","bridge":"br9"}"#)),
        ("vm.yaml", &vmi("ns", "vm", "net", MAC1)),
        ("vm2.yaml", &vmi("ns", "vm2", "ok", "")),
    ]);
    assert!(has_port(&p, "ns/vm2/net1") && !has_port(&p, "ns/vm/net1"));
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].field.as_deref(), Some("spec.config.vlan"));
    // In an NNCP: that port is left out, the field named; the bridge keeps its other ports.
    let bad = NNCP_TRUNK.replace("tag: 40", "tag: 4095").replace("role: dpdk", "{}");
    let p = plan_of(&[("nncp.yaml", &bad)]);
    assert!(!has_port(&p, "eth2"));
    for other in ["eth1", "eth3", "eth4"] {
        assert_eq!(port(&p, other).0, "br1");
    }
    assert!(
        p.skipped.iter().any(|s| s.item == "bridge br1 port eth2" && s.reason.contains("invalid")),
        "{:?}",
        p.skipped
    );
    assert_eq!(p.problems.len(), 1);
    assert_eq!(
        p.problems[0].field.as_deref(),
        Some("spec.desiredState.interfaces[0].bridge.port[1].vlan.tag")
    );
    // OVN vlanID.
    let n = nad("ns", "ln", r#"{"name":"p","type":"ovn-k8s-cni-overlay","topology":"localnet","vlanID":0}"#);
    let p = plan_of(&[("nad.yaml", &n)]);
    assert_eq!(p.problems[0].field.as_deref(), Some("spec.config.vlanID"));
}

#[test]
fn a_mac_that_is_not_a_mac() {
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad("")),
        ("vm.yaml", &vmi("ns", "vm", "net", "          macAddress: 02:00:zz:00:00:01")),
        ("ok.yaml", &vmi("ns", "ok", "net", MAC1)),
    ]);
    assert!(has_port(&p, "ns/ok/net1") && !has_port(&p, "ns/vm/net1"));
    assert_eq!(p.problems.len(), 1);
    let pr = &p.problems[0];
    assert_eq!(pr.file, "vm.yaml");
    assert_eq!(pr.field.as_deref(), Some("spec.domain.devices.interfaces[0].macAddress"));
    assert!(pr.to_string().starts_with("vm.yaml: VirtualMachineInstance ns/vm: spec.domain"), "{pr}");
    // A multicast MAC is not an interface MAC either.
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad("")),
        ("vm.yaml", &vmi("ns", "vm", "net", "          macAddress: 03:00:00:00:00:01")),
    ]);
    assert_eq!(p.problems.len(), 1);
}

#[test]
fn one_bad_interface_of_a_vmi_leaves_its_other_interfaces_planned() {
    let two = vmi("ns", "vm", "net", MAC1)
        .replace(
            "        - name: net1\n",
            "        - name: net2\n          bridge: {}\n          macAddress: 02:00:zz:00:00:02\n        - name: net1\n",
        )
        .replace("  networks:\n", "  networks:\n    - name: net2\n      multus:\n        networkName: net\n");
    let p = plan_of(&[("nad.yaml", &bridge_nad("")), ("vm.yaml", &two)]);
    assert!(has_port(&p, "ns/vm/net1") && !has_port(&p, "ns/vm/net2"), "{}", p.to_yaml());
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].field.as_deref(), Some("spec.domain.devices.interfaces[0].macAddress"));
    assert!(
        p.skipped.iter().any(|s| s.item == "interface net2" && s.reason.contains("invalid")),
        "{:?}",
        p.skipped
    );
}

#[test]
fn a_vmi_naming_a_network_with_no_nad() {
    let p = plan_of(&[
        ("nad.yaml", &bridge_nad("")),
        ("vm.yaml", &vmi("ns", "vm", "missing", MAC1)),
        ("ok.yaml", &vmi("ns", "ok", "net", "")),
    ]);
    assert!(has_port(&p, "ns/ok/net1") && !has_port(&p, "ns/vm/net1"));
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].field.as_deref(), Some("spec.networks[0].multus.networkName"));
    assert!(p.problems[0].message.contains("ns/missing"));
}

// ---- loading, output ----

#[test]
fn load_dir_reads_yaml_at_any_depth_and_ignores_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("..data")).unwrap();
    std::fs::write(
        root.join("a/b/all.yml"),
        format!("{}---\n{}", bridge_nad(""), vmi("ns", "vm", "net", MAC1)),
    )
    .unwrap();
    std::fs::write(root.join("notes.txt"), "kind: [garbage").unwrap();
    std::fs::write(root.join("..data/dup.yaml"), bridge_nad("")).unwrap();
    std::fs::write(root.join("empty.yaml"), "---\n---\n").unwrap();
    let st = ClusterState::load_dir(root).unwrap();
    assert!(st.problems.is_empty(), "{:?}", st.problems);
    assert_eq!((st.nads.len(), st.vmis.len()), (1, 1));
    let p = plan(&st, NODE, &BTreeMap::new(), &PlanOptions::default());
    assert!(has_port(&p, "ns/vm/net1"));
    assert!(ClusterState::load_dir(&root.join("nope")).is_err());
}

#[test]
fn output_is_sorted_deterministic_and_loads_back() {
    let files = [
        ("nad.yaml", bridge_nad("")),
        ("z.yaml", vmi("ns", "z", "net", "")),
        ("a.yaml", vmi("ns", "a", "net", "")),
        ("nncp.yaml", NNCP_TRUNK.replace("role: dpdk", "{}")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let p1 = plan_of(&refs);
    let mut rev = refs.clone();
    rev.reverse();
    let p2 = plan_of(&rev);
    assert_eq!(p1.to_yaml(), p2.to_yaml());
    let names: Vec<&str> = p1.config.bridges[0].ports.iter().map(|q| q.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(Config::from_yaml_str(&p1.to_yaml()).unwrap(), p1.config);
    let j: serde_json::Value = serde_json::from_str(&p1.to_json()).unwrap();
    let c: Config = serde_json::from_value(j["config"].clone()).unwrap();
    assert_eq!(c, p1.config);
}

/// The issue's scale: 10,000 VMIs with 2 secondary interfaces each are loaded and planned
/// correctly. Timing is printed for information only (`cargo test --release -p
/// switchyard-control scale -- --nocapture`); speed is judged in benchmarks, not here. The VMIs
/// are spread over 5 nodes so that one node's 4,000 ports stay under the dataplane's port
/// limit; load and plan still go through all 10,000.
#[test]
fn scale_10k_vmis() {
    let text = scale_state(10_000, 5);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("state.yaml"), &text).unwrap();
    let t0 = std::time::Instant::now();
    let st = ClusterState::load_dir(d.path()).unwrap();
    let t1 = std::time::Instant::now();
    let p = plan(&st, "n0", &BTreeMap::new(), &PlanOptions::default());
    let t2 = std::time::Instant::now();
    assert!(p.problems.is_empty(), "{:?}", &p.problems[..p.problems.len().min(3)]);
    let ports: usize = p.config.bridges.iter().map(|b| b.ports.len()).sum();
    assert_eq!(ports, 4000);
    p.config.validate().unwrap();
    let total = t2 - t0;
    eprintln!(
        "scale: load {:?}, plan {:?}, total {:?} ({} bytes of YAML)",
        t1 - t0,
        t2 - t1,
        total,
        text.len()
    );
}

#[test]
fn switchyard_cni_nads_are_left_to_the_plugin() {
    let n =
        nad("ns", "sy", r#"{"cniVersion":"1.0.0","name":"sy","type":"switchyard","bridge":"br1","vlan":10}"#);
    let p = plan_of(&[("n.yaml", &n), ("v1.yaml", &vmi("ns", "v1", "sy", ""))]);
    assert!(p.config.bridges.is_empty(), "{:?}", p.config);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let reasons: Vec<String> = p.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("v1 interface net1") && reasons[0].contains("the plugin attaches the port"),
        "{reasons:?}"
    );
    let s: Vec<_> = p.cni_subjects.iter().map(|s| (s.port.as_str(), s.bridge.as_str(), s.vlan)).collect();
    assert_eq!(s, [("ns/v1/net1", "br1", Some(10))]);
    // The plugin refuses a config without a bridge: so does the plan, naming the field.
    let n = nad("ns", "sy", r#"{"cniVersion":"1.0.0","name":"sy","type":"switchyard"}"#);
    let p = plan_of(&[("n.yaml", &n), ("v1.yaml", &vmi("ns", "v1", "sy", ""))]);
    assert!(p.cni_subjects.is_empty());
    assert!(p.problems.iter().any(|x| x.to_string().contains("spec.config.bridge")), "{:?}", p.problems);
}

#[test]
fn a_memo_plans_what_plan_plans_and_follows_changed_nads_and_vmis() {
    let labels = BTreeMap::new();
    let opts = PlanOptions::default();
    let st1 = state(&[
        ("nad.yaml", &bridge_nad(r#","vlan":10"#)),
        ("vm.yaml", &vmi("ns", "vm", "net", MAC1)),
        ("vm2.yaml", &vmi("ns", "vm2", "net", "")),
    ]);
    let mut memo = PlanMemo::default();
    let p1 = plan_memo(&st1, NODE, &labels, &opts, &mut memo);
    assert_eq!(p1.config, plan(&st1, NODE, &labels, &opts).config);
    assert_eq!(port(&p1, "ns/vm/net1").1.tag, Some(10));
    // The same objects (the same Arcs): the memo's ports, the same plan.
    let again = plan_memo(&st1.clone(), NODE, &labels, &opts, &mut memo);
    assert_eq!(again.config, p1.config);
    // The NAD changes (a new object), the VMIs do not: both ports follow it.
    let mut st2 = st1.clone();
    let other = state(&[("nad.yaml", &bridge_nad(r#","vlan":20"#))]);
    st2.nads = other.nads.clone();
    let p2 = plan_memo(&st2, NODE, &labels, &opts, &mut memo);
    assert_eq!(p2.config, plan(&st2, NODE, &labels, &opts).config);
    assert_eq!(port(&p2, "ns/vm/net1").1.tag, Some(20));
    assert_eq!(port(&p2, "ns/vm2/net1").1.tag, Some(20));
    // One VMI changes: its port follows, the other stays.
    let mut st3 = st2.clone();
    let moved = state(&[("vm.yaml", &vmi("ns", "vm", "missing", MAC1))]);
    st3.vmis.extend(moved.vmis.clone());
    let p3 = plan_memo(&st3, NODE, &labels, &opts, &mut memo);
    assert_eq!(p3.config, plan(&st3, NODE, &labels, &opts).config);
    assert_eq!(p3.problems, plan(&st3, NODE, &labels, &opts).problems);
    assert!(!has_port(&p3, "ns/vm/net1") && has_port(&p3, "ns/vm2/net1"));
    // The NAD goes away: the memo does not keep its ports.
    let mut st4 = st3.clone();
    st4.nads.clear();
    let p4 = plan_memo(&st4, NODE, &labels, &opts, &mut memo);
    assert!(p4.config.bridges.is_empty(), "{}", p4.to_yaml());
}

/// An array where an object belongs (an NNCP bridge given as `[[{name: e}]]`) is refused the
/// same way from a manifest and from the API: a problem naming the field, no bridge planned.
/// serde_json's own value reader gave a struct's fields from an array in order, so the API's
/// copy planned a bridge with port `e` that the manifest's did not (found by the `cluster`
/// fuzz target).
#[test]
fn an_array_for_an_object_is_refused_from_the_api_as_from_a_manifest() {
    use switchyard_control::api_source::{ApiStore, Kind};
    let text = "apiVersion: nmstate.io/v1\nkind: NodeNetworkConfigurationPolicy\nmetadata: {name: r}\n\
                spec:\n  desiredState:\n    interfaces:\n    - name: r\n      type: linux-bridge\n      \
                bridge: [[{name: e}]]\n";
    let mut dir = ClusterState::default();
    dir.add_yaml("nncp.yaml", text);
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let o: kube::api::DynamicObject = serde_json::from_value(serde_json::to_value(y).unwrap()).unwrap();
    let mut store = ApiStore::default();
    store.put(Kind::Nncp, o);
    let api = store.snapshot();
    for (how, st) in [("manifest", &dir), ("API", &api)] {
        let fields: Vec<_> = st.problems.iter().map(|p| p.field.as_deref()).collect();
        assert_eq!(fields, [Some("spec.desiredState.interfaces[0].bridge")], "{how}: {:?}", st.problems);
        let p = plan(st, "node1", &BTreeMap::new(), &PlanOptions::default());
        assert!(p.config.bridges.is_empty(), "{how}: {}", p.config.to_yaml());
    }
}
