//! MultiNetworkPolicy resolution (docs/policy.md): selectors to addresses, rules to each
//! port's policy, the IP spoof filter, and bad input reported per object with its field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use switchyard_control::{plan, ClusterState, Plan, PlanOptions};
use switchyard_dataplane::config::PortConfig;
use switchyard_dataplane::policy::{Cidr, DirectionPolicy, PeerBlock, PolicyRule, PortRange, Protocol};
use testkit::manifest::{self, policy, Vmi};

const NODE: &str = "n1";

fn plan_of(files: &[String]) -> Plan {
    let mut s = ClusterState::default();
    for (i, t) in files.iter().enumerate() {
        s.add_yaml(&format!("f{i}.yaml"), t);
    }
    let p = plan(&s, NODE, &BTreeMap::new(), &PlanOptions::default());
    p.config.validate().expect("every plan is a valid config");
    p
}

fn port<'a>(p: &'a Plan, name: &str) -> &'a PortConfig {
    p.config
        .bridges
        .iter()
        .flat_map(|b| b.ports.iter())
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("no port {name} in\n{}", p.to_yaml()))
}

/// A bridge NAD `infra/<name>` on bridge `br-<name>`; `extra` adds config fields.
fn nad(name: &str, extra: &str) -> String {
    manifest::nad(
        "infra",
        name,
        &format!(r#"{{"cniVersion":"0.3.1","name":"{name}","type":"bridge","bridge":"br-{name}"{extra}}}"#),
    )
}

fn ns(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n")
}

/// A VMI with one interface `net1` on NAD `infra/<network>`, its labels and the addresses its
/// status reports; on NODE unless `node` says otherwise.
fn vmi(ns: &str, name: &str, network: &str, labels: &str, addrs: &[&str], node: &str) -> String {
    let list = addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let status = format!("  interfaces:\n    - name: net1\n      ipAddresses: [{list}]\n");
    Vmi::new(ns, name, &format!("infra/{network}"), node).labels(labels).status(&status).yaml()
}

fn host(s: &str) -> PeerBlock {
    PeerBlock { cidr: Cidr::host(s.parse::<IpAddr>().expect("address")), except: vec![] }
}

/// Two namespaces, VMs on this node and another; a policy with a podSelector peer, a
/// namespaceSelector peer, an ipBlock with except and a port range: the subject port gets
/// exactly those addresses and ports, the others nothing; a VM on another network is no peer.
fn cluster(web_labels: &str) -> Vec<String> {
    vec![
        nad("net", ""),
        nad("other", ""),
        ns("a", "team: red"),
        ns("b", "team: blue"),
        vmi("a", "web", "net", web_labels, &["10.0.0.10"], NODE),
        vmi("a", "client", "net", "role: client", &["10.0.0.11", "fd00::11"], "n2"),
        vmi("b", "db", "net", "role: db", &["10.0.0.20"], NODE),
        vmi("b", "stranger", "other", "role: client", &["10.0.0.30"], NODE),
        policy(
            "a",
            "web-in",
            "infra/net",
            r#"  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {matchLabels: {role: client}}
        - namespaceSelector: {matchLabels: {team: blue}}
        - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
      ports:
        - {protocol: TCP, port: 8000, endPort: 8080}
        - {protocol: UDP, port: 53}
"#,
        ),
    ]
}

#[test]
fn selectors_resolve_to_addresses() {
    let p = plan_of(&cluster("app: web"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let web = port(&p, "a/web/net1");
    let pol = web.policy.as_ref().expect("web is selected");
    assert_eq!(pol.egress, None, "policyTypes [Ingress]: egress stays open");
    let want = DirectionPolicy {
        rules: vec![PolicyRule {
            name: "a/web-in ingress[0]".into(),
            peers: Some(vec![
                host("10.0.0.11"),
                host("fd00::11"),
                host("10.0.0.20"),
                PeerBlock {
                    cidr: "192.168.0.0/16".parse().unwrap(),
                    except: vec!["192.168.1.0/24".parse().unwrap()],
                },
            ]),
            ports: Some(vec![
                PortRange { protocol: Protocol::Tcp, port: Some(8000), end_port: Some(8080) },
                PortRange { protocol: Protocol::Udp, port: Some(53), end_port: None },
            ]),
        }],
    };
    assert_eq!(pol.ingress.as_ref(), Some(&want));
    assert_eq!(
        web.allowed_ips.as_deref(),
        Some(&["10.0.0.10".parse::<IpAddr>().unwrap()][..]),
        "a policy turns on the IP spoof filter"
    );
    assert!(port(&p, "b/db/net1").policy.is_none(), "not selected");
}

/// Every port on a network that some policy is for gets the IP spoof filter, selected or not:
/// peers are told by their source addresses, so a VM left without it could send from a peer's
/// address and be let in as that peer (OVN-Kubernetes gives every pod port of a network with
/// IPAM port security on its addresses). A network no policy is for stays as it was.
#[test]
fn every_port_of_a_policy_network_is_spoof_filtered() {
    let p = plan_of(&cluster("app: web"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let db = port(&p, "b/db/net1");
    assert!(db.policy.is_none(), "not selected");
    assert_eq!(db.allowed_ips.as_deref(), Some(&["10.0.0.20".parse::<IpAddr>().unwrap()][..]));
    assert!(port(&p, "b/stranger/net1").allowed_ips.is_none(), "no policy is for `other`");
    // Another NAD on the same bridge (and VLAN) as `net`: one L2 segment with the policy's
    // peers, so its VMs are filtered too (s15y's review: only the policy's own NADs were).
    let mut files = cluster("app: web");
    files.push(manifest::nad(
        "infra",
        "alias",
        r#"{"cniVersion":"0.3.1","name":"alias","type":"bridge","bridge":"br-net"}"#,
    ));
    files.push(vmi("b", "lurker", "alias", "role: x", &["10.0.0.40"], NODE));
    let p = plan_of(&files);
    assert_eq!(
        port(&p, "b/lurker/net1").allowed_ips.as_deref(),
        Some(&["10.0.0.40".parse::<IpAddr>().unwrap()][..]),
        "{}",
        p.to_yaml()
    );
    assert!(port(&p, "b/stranger/net1").allowed_ips.is_none(), "another bridge");
}

/// A VM's labels change: the next plan drops its port's policy.
#[test]
fn label_change_follows() {
    let p = plan_of(&cluster("app: api"));
    assert!(port(&p, "a/web/net1").policy.is_none());
}

/// Default deny both ways; policies add up on a port; an egress rule's `to`.
#[test]
fn default_deny_and_policies_add_up() {
    let mut files = cluster("app: web");
    files.push(policy("a", "deny-all", "net", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"));
    files.push(policy(
        "a",
        "dns-out",
        "infra/net",
        "  podSelector: {matchExpressions: [{key: app, operator: Exists}]}\n  egress:\n    - to: [{ipBlock: {cidr: 10.0.0.53/32}}]\n      ports: [{protocol: UDP, port: 53}]\n",
    ));
    // `net` alone means the policy's own namespace: a/net does not exist.
    let p = plan_of(&files);
    let missing: Vec<_> =
        p.problems.iter().filter(|q| q.message.contains("no NetworkAttachmentDefinition a/net")).collect();
    assert_eq!(missing.len(), 1, "{:?}", p.problems);
    assert_eq!(missing[0].field.as_deref(), Some("metadata.annotations.k8s.v1.cni.cncf.io/policy-for"));
    let pol = port(&p, "a/web/net1").policy.clone().expect("selected");
    // deny-all applies to no network (a/net is missing), web-in and dns-out do.
    let eg = pol.egress.expect("dns-out isolates egress");
    assert_eq!(eg.rules.len(), 1);
    assert_eq!(eg.rules[0].name, "a/dns-out egress[0]");
    assert_eq!(pol.ingress.expect("web-in").rules.len(), 1);

    let mut files = cluster("app: web");
    files.push(policy("a", "deny-all", "infra/net", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"));
    let p = plan_of(&files);
    let pol = port(&p, "a/web/net1").policy.clone().expect("selected");
    assert_eq!(pol.egress, Some(DirectionPolicy::default()), "deny-all egress: no rule");
    assert_eq!(pol.ingress.expect("ingress").rules.len(), 1, "web-in's rule, deny-all adds none");
}

/// Bad input: each reported with its field; the bad part is left out, the policy still
/// isolates its ports; an unknown field rejects the object; other objects are applied.
#[test]
fn bad_input_is_reported_per_field() {
    let mut files = cluster("app: web");
    files.push(policy(
        "b",
        "bad",
        "infra/net",
        r#"  podSelector: {}
  ingress:
    - from: [{ipBlock: {cidr: 10.0.0.0/33}}]
    - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]
      ports: [{port: http}, {protocol: ICMP}, {port: 90, endPort: 80}]
"#,
    ));
    files.push(policy("b", "unknown", "infra/net", "  podSelector: {}\n  ingres: []\n"));
    let p = plan_of(&files);
    let fields: Vec<(String, String)> = p
        .problems
        .iter()
        .map(|q| {
            (
                q.object.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                q.field.clone().unwrap_or_default(),
            )
        })
        .collect();
    for f in [
        "spec.ingress[0].from[0].ipBlock.cidr",
        "spec.ingress[1].from[0].ipBlock.except[0]",
        "spec.ingress[1].ports[0].port",
        "spec.ingress[1].ports[1].protocol",
        "spec.ingress[1].ports[2].endPort",
    ] {
        assert!(fields.contains(&("MultiNetworkPolicy b/bad".into(), f.into())), "{f} not in {fields:?}");
    }
    let unknown =
        p.problems.iter().find(|q| q.object.as_ref().is_some_and(|o| o.name == "unknown")).expect("reported");
    assert!(unknown.message.contains("ingres"), "{unknown:?}");
    let db = port(&p, "b/db/net1").policy.clone().expect("b/bad still selects db");
    let rules = db.ingress.expect("isolated").rules;
    // Rule 0 lost its only peer: it matches nothing (not everything). Rule 1 kept its block.
    assert_eq!(rules[0].peers, Some(vec![]));
    assert_eq!(rules[1].peers.as_ref().map(|p| p[0].except.len()), Some(0));
    assert_eq!(rules[1].ports, Some(vec![]), "every port entry was bad: no port, not any port");
    assert!(port(&p, "a/web/net1").policy.is_some(), "the rest applied");
}

/// `ipspoofchk: true` on a NAD turns the filter on without a policy; an interface with no
/// known address gets none, and a note says so.
#[test]
fn ipspoofchk_by_itself() {
    let files = vec![
        nad("net", r#","ipspoofchk":true"#),
        vmi("a", "x", "net", "", &["10.0.0.1", "fd00::1/64"], NODE),
        vmi("a", "y", "net", "", &[], NODE),
    ];
    let p = plan_of(&files);
    let x = port(&p, "a/x/net1");
    assert!(x.policy.is_none());
    let want: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    assert_eq!(x.allowed_ips.as_ref(), Some(&want));
    assert!(port(&p, "a/y/net1").allowed_ips.is_none());
    assert!(p.notes.iter().any(|n| n.contains("a/y/net1") && n.contains("no known IP")), "{:?}", p.notes);
}

/// `policyTypes: []` is `policyTypes` left out: Ingress, and Egress when the policy has egress
/// rules. Kubernetes defaults an empty list as a missing one, and the Go implementations of
/// MultiNetworkPolicy (which cannot tell the two apart: `len(PolicyTypes) == 0`) do the same;
/// read as "no direction", it would isolate nothing and open the ports it means to close.
#[test]
fn empty_policy_types_mean_the_default() {
    let mut files = cluster("app: web");
    files.push(policy(
        "b",
        "db-lockdown",
        "infra/net",
        "  podSelector: {}\n  policyTypes: []\n  egress:\n    - to: [{ipBlock: {cidr: 10.0.0.53/32}}]\n",
    ));
    files.push(policy(
        "a",
        "web-deny",
        "infra/net",
        "  podSelector: {matchLabels: {app: web}}\n  policyTypes: []\n",
    ));
    let p = plan_of(&files);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let db = port(&p, "b/db/net1").policy.clone().expect("db is selected");
    assert_eq!(db.ingress, Some(DirectionPolicy::default()), "ingress isolated, no rule");
    assert_eq!(db.egress.map(|e| e.rules.len()), Some(1), "egress isolated by its rule");
    let web = port(&p, "a/web/net1").policy.clone().expect("web is selected");
    assert_eq!(web.ingress.map(|d| d.rules.len()), Some(1), "web-in's rule; web-deny isolates, adds none");
    assert_eq!(web.egress, None, "no egress rule: egress open");
}

/// A peer's IPv6 link-local address (a guest agent may report it) is left out of the rules:
/// the IP spoof filter lets every VM send from any link-local address (neighbour discovery,
/// DHCPv6), so allowing one would allow every VM on the network.
#[test]
fn a_peers_link_local_address_is_no_peer() {
    let mut files = cluster("app: web");
    files.retain(|f| !f.contains("name: client"));
    files.push(vmi("a", "client", "net", "role: client", &["10.0.0.11", "fe80::11", "fd00::11"], "n2"));
    let p = plan_of(&files);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let rules = port(&p, "a/web/net1").policy.clone().expect("selected").ingress.expect("isolated").rules;
    let peers = rules[0].peers.clone().expect("peers");
    assert!(peers.contains(&host("fd00::11")) && peers.contains(&host("10.0.0.11")), "{peers:?}");
    assert!(!peers.contains(&host("fe80::11")), "{peers:?}");
}

/// A port whose source MAC the switch does not check (`ipspoofchk` without `macspoofchk`) gets
/// its VM's own EUI-64 link-local address in `allowed_ips`, from the VM's MAC: the switch
/// allows the address derived from a frame's MAC only where it checked that MAC. With
/// `macspoofchk` the list stays the status addresses.
#[test]
fn an_unchecked_mac_lists_the_vms_own_link_local_address() {
    let with_mac = |spoofchk: &str| {
        let status = "  interfaces:\n    - name: net1\n      ipAddresses: [\"10.0.0.1\"]\n";
        let v = Vmi::new("a", "x", "infra/net", NODE)
            .iface("          macAddress: \"02:00:00:00:00:0a\"")
            .status(status)
            .yaml();
        plan_of(&[nad("net", spoofchk), v])
    };
    let ips = |p: &Plan| port(p, "a/x/net1").allowed_ips.clone();
    let p = with_mac(r#","ipspoofchk":true"#);
    assert!(port(&p, "a/x/net1").allowed_macs.is_none());
    let want: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fe80::ff:fe00:a".parse().unwrap()];
    assert_eq!(ips(&p), Some(want));
    let p = with_mac(r#","ipspoofchk":true,"macspoofchk":true"#);
    assert!(port(&p, "a/x/net1").allowed_macs.is_some());
    assert_eq!(ips(&p), Some(vec!["10.0.0.1".parse().unwrap()]));
}

/// A VMI status that reports an address no interface can have (`::`, `0.0.0.0`, a multicast,
/// broadcast or loopback address; the guest agent reports what the guest says) is reported as
/// a problem naming the field, and the address is left out of the port's `allowed_ips`: the
/// spoof filter lets `::` and `0.0.0.0` send only duplicate address detection, MLD and DHCP,
/// and an address in the list would let them send anything.
#[test]
fn a_status_address_no_interface_can_have_is_not_the_ports() {
    let bad = ["::", "0.0.0.0", "224.0.0.1", "ff02::1", "255.255.255.255", "127.0.0.1"];
    let mut addrs = vec!["10.0.0.1"];
    addrs.extend(bad);
    let p = plan_of(&[
        nad("net", r#","ipspoofchk":true,"macspoofchk":true"#),
        vmi("a", "x", "net", "", &addrs, NODE),
    ]);
    assert_eq!(port(&p, "a/x/net1").allowed_ips, Some(vec!["10.0.0.1".parse().unwrap()]));
    for (i, a) in bad.iter().enumerate() {
        let field = format!("status.interfaces[0].ipAddresses[{}]", i + 1);
        assert!(
            p.problems.iter().any(|q| q.to_string().contains(&field) && q.to_string().contains(a)),
            "{a} not reported at {field}: {:?}",
            p.problems
        );
    }
}

/// A VMI on a NAD of switchyard's own CNI plugin has no planned port (the plugin attaches
/// it): the plan carries its CNI subject, with the policy that selects it (peers resolved as
/// for a planned port) and its addresses for the IP spoof filter, and the names its pod and
/// pod interface are matched by (docs/policy.md, "Ports attached by switchyard's CNI plugin").
#[test]
fn a_vmi_on_a_switchyard_nad_yields_a_cni_subject_with_its_policy() {
    let sy = manifest::nad(
        "infra",
        "sy",
        r#"{"cniVersion":"1.0.0","name":"sy","type":"switchyard","bridge":"br-sy","vlan":30,"mode":"vhostuser"}"#,
    );
    let web_status = "  activePods: {\"5f0c-uid\": n1}\n  interfaces:\n    - name: net1\n      ipAddress: 10.0.0.10\n      podInterfaceName: podabc\n";
    let web = Vmi::new("a", "web", "infra/sy", NODE).labels("app: web").status(web_status).yaml();
    let files = vec![
        sy,
        nad("net", ""),
        web.replace("bridge: {}", "binding: {name: switchyard}"),
        vmi("a", "client", "sy", "role: client", &["10.0.0.11"], "n2"),
        vmi("a", "stranger", "net", "role: client", &["10.0.0.12"], NODE),
        policy(
            "a",
            "web-in",
            "infra/sy",
            "  podSelector: {matchLabels: {app: web}}\n  ingress:\n    - from: [{podSelector: {matchLabels: {role: client}}}]\n",
        ),
    ];
    let p = plan_of(&files);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert!(
        p.config.bridges.iter().flat_map(|b| &b.ports).all(|q| !q.name.starts_with("a/web/")),
        "no port is planned for it:\n{}",
        p.to_yaml()
    );
    assert_eq!(p.cni_subjects.len(), 1, "client runs on n2: {:?}", p.cni_subjects);
    let s = &p.cni_subjects[0];
    assert_eq!(
        (s.port.as_str(), s.nad.as_str(), s.bridge.as_str(), s.vlan),
        ("a/web/net1", "infra/sy", "br-sy", Some(30))
    );
    assert_eq!(s.pod_prefix, "virt-launcher-web-");
    assert_eq!(s.pod_uids, ["5f0c-uid"]);
    // sha256("net1") starts 6c270ef2f25; the ordinal name; the status' podInterfaceName.
    assert_eq!(s.ifnames, ["pod6c270ef2f25", "net1", "podabc"]);
    let want = DirectionPolicy {
        rules: vec![PolicyRule {
            name: "a/web-in ingress[0]".into(),
            peers: Some(vec![host("10.0.0.11")]),
            ports: None,
        }],
    };
    let pol = s.policy.as_ref().expect("web is selected");
    assert_eq!(pol.ingress.as_ref(), Some(&want), "only client is a peer: stranger is on another network");
    assert_eq!(pol.egress, None);
    assert_eq!(s.allowed_ips.as_deref(), Some(&["10.0.0.10".parse::<IpAddr>().unwrap()][..]));
    let line = p.skipped.iter().map(|k| k.to_string()).find(|k| k.contains("a/web")).expect("a skipped line");
    assert!(
        line.contains("virt-launcher-web-") && line.contains("pod6c270ef2f25") && line.contains("br-sy"),
        "{line}"
    );
}

/// KubeVirt sets a VMI's `status.nodeName` only once its virt-launcher pod is ready, after the
/// pod's CNI ADDs: a VMI whose pod is scheduled here (`status.activePods`) already has its CNI
/// subject, with its policy, and nothing else planned. The multus default network is the pod's
/// `eth0`; the subject carries the VMI's MAC (for the link-local address of a port whose ADD
/// named none).
#[test]
fn a_vmi_whose_pod_is_scheduled_here_has_its_cni_subject_before_it_runs() {
    let sy = manifest::nad(
        "infra",
        "sy",
        r#"{"cniVersion":"1.0.0","name":"sy","type":"switchyard","bridge":"br-sy"}"#,
    );
    let pending = Vmi::new("a", "web", "infra/sy", "")
        .labels("app: web")
        .iface("          macAddress: 02:00:00:00:00:0a")
        .status("  activePods: {\"uid-1\": n1}\n")
        .yaml();
    let elsewhere = Vmi::new("a", "far", "infra/sy", "").status("  activePods: {\"uid-2\": n2}\n").yaml();
    let files = vec![
        sy,
        pending.replace("networkName: infra/sy", "networkName: infra/sy\n        default: true"),
        elsewhere,
        policy("a", "web-in", "infra/sy", "  podSelector: {matchLabels: {app: web}}\n  ingress: []\n"),
    ];
    let p = plan_of(&files);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert!(p.config.bridges.iter().all(|b| b.ports.is_empty()), "{}", p.to_yaml());
    assert_eq!(p.cni_subjects.len(), 1, "far's pod is on n2: {:?}", p.cni_subjects);
    let s = &p.cni_subjects[0];
    assert_eq!((s.port.as_str(), s.pod_uids.as_slice()), ("a/web/net1", &["uid-1".to_string()][..]));
    assert_eq!(s.ifnames, ["eth0"], "the default network is the pod's eth0");
    assert_eq!(s.mac.as_deref(), Some("02:00:00:00:00:0a"));
    assert_eq!(s.policy.as_ref().and_then(|p| p.ingress.as_ref()), Some(&DirectionPolicy { rules: vec![] }));
}
