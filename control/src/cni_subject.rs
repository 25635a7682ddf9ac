//! CNI subjects: which VMI interface a port that switchyard's CNI plugin attached belongs to,
//! so that the port gets the MultiNetworkPolicies and IP spoof filter the plan resolves for
//! that interface (docs/policy.md, "Ports attached by switchyard's CNI plugin").
//!
//! The plan makes one [`CniSubject`] per interface of a VMI of the node on a NAD of type
//! `switchyard` (`plan::cni_subject`); the runtime keeps the last plan's and decorates each CNI port
//! that matches one of them ([`decorate`]). The CNI ADD carries the pod (namespace, name,
//! UID when the runtime passes it), the pod-side interface name and the bridge; KubeVirt names
//! the pod `virt-launcher-<vmi>-<5 random>` (`generateName`) and the interface after the VMI's
//! network ([`hashed_ifname`], [`ordinal_ifname`], or the status' `podInterfaceName`).
//!
//! Invariant: a CNI port is decorated only from a subject that it matches alone; a port that
//! matches two (two VMIs whose truncated pod-name prefixes meet, with no pod UID to decide) is
//! isolated both ways with no address allowed, and reported: never left open.

use crate::cni::CniPort;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use switchyard_dataplane::config::PortConfig;
use switchyard_dataplane::policy::{DirectionPolicy, PortPolicy};

/// The longest `generateName` base the API server keeps: a longer one is cut to this and
/// given 5 random characters (apiserver's `maxGeneratedNameLength`, 63 - 5).
pub const GENERATE_NAME_MAX: usize = 58;
/// The random suffix a `generateName` gets.
pub const GENERATE_NAME_SUFFIX: usize = 5;

/// One VMI interface of the node whose port switchyard's CNI plugin attaches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CniSubject {
    /// The interface as a planned port would be named, `ns/vmi/iface` (what policies resolve).
    pub port: String,
    pub namespace: String,
    pub vmi: String,
    /// The NAD, `ns/name`.
    pub nad: String,
    /// The bridge the NAD's config names: the CNI port must be on it.
    pub bridge: String,
    /// The NAD's access (or native) VLAN: the port's L2 segment with `bridge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The virt-launcher pod name up to its random suffix (`generateName`, cut as the API
    /// server cuts it).
    pub pod_prefix: String,
    /// The VMI's `status.activePods` UIDs: a CNI ADD carrying one of them is this VMI's pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod_uids: Vec<String>,
    /// The pod interface names the interface may have (hashed, ordinal, status; `eth0` for
    /// the multus default network).
    pub ifnames: Vec<String>,
    /// The interface's MAC as the VMI gives it (spec, else status): the VM's EUI-64
    /// link-local address is allowed from it when the ADD carried no MAC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// What the plan resolved for the interface, as for a planned port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PortPolicy>,
    /// The interface's addresses when it gets the IP spoof filter (the EUI-64 link-local
    /// address is added from the port's MAC when it is decorated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpAddr>>,
}

/// KubeVirt's hashed pod interface name of a secondary network (KubeVirt >= 1.1): `pod` and
/// the first 11 hex digits of SHA-256 of the network's name.
pub fn hashed_ifname(network: &str) -> String {
    format!("pod{}", &hex_sha256(network)[..11])
}

/// KubeVirt's ordinal pod interface name: `net<i>`, `i` the 1-based position of the network
/// among the VMI's multus networks that are not `default`.
pub fn ordinal_ifname(i: usize) -> String {
    format!("net{i}")
}

fn hex_sha256(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name prefix of VMI `vmi`'s virt-launcher pods: KubeVirt's `generateName`
/// `virt-launcher-<vmi>-`, cut to [`GENERATE_NAME_MAX`] bytes as the API server cuts it.
pub fn pod_prefix(vmi: &str) -> String {
    let mut p = format!("virt-launcher-{vmi}-");
    // Names are DNS labels (ASCII); a byte cut of anything else would split a character.
    let mut cut = GENERATE_NAME_MAX.min(p.len());
    while !p.is_char_boundary(cut) {
        cut -= 1;
    }
    p.truncate(cut);
    p
}

/// Whether `name` is a pod name `generateName` `prefix` gives: the prefix and 5 lowercase
/// letters or digits.
fn generated_from(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|r| {
        r.len() == GENERATE_NAME_SUFFIX && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

impl CniSubject {
    /// Whether `p`'s namespace, interface and bridge are this subject's (the pod is matched
    /// apart, by UID or name).
    fn same_place(&self, p: &CniPort) -> bool {
        p.attachment.pod_namespace.as_deref() == Some(self.namespace.as_str())
            && self.ifnames.contains(&p.attachment.ifname)
            && p.bridge == self.bridge
    }
}

/// The subjects CNI port `p` matches: by pod UID when it carries one that a subject lists
/// (authoritative), else by pod name. Empty: none (a port of a pod that is no VMI's, or
/// whose VMI is not known yet).
pub fn matches<'a>(subjects: &'a [CniSubject], p: &CniPort) -> Vec<&'a CniSubject> {
    let here: Vec<&CniSubject> = subjects.iter().filter(|s| s.same_place(p)).collect();
    if here.is_empty() {
        return here;
    }
    if let Some(uid) = p.attachment.pod_uid.as_deref() {
        let by_uid: Vec<&CniSubject> =
            here.iter().copied().filter(|s| s.pod_uids.iter().any(|u| u == uid)).collect();
        if !by_uid.is_empty() {
            return by_uid;
        }
    }
    let Some(name) = p.attachment.pod_name.as_deref() else { return Vec::new() };
    here.into_iter().filter(|s| generated_from(name, &s.pod_prefix)).collect()
}

/// `port` (CNI port `p`'s, as merged) decorated from `subjects`: the policy and allowed
/// addresses of the one subject it matches; isolated both ways with no address allowed when
/// it matches several, with the reason returned.
pub fn decorate(subjects: &[CniSubject], p: &CniPort, port: &mut PortConfig) -> Option<String> {
    match matches(subjects, p).as_slice() {
        [] => None,
        [s] => {
            port.policy.clone_from(&s.policy);
            port.allowed_ips = s.allowed_ips.as_ref().map(|ips| {
                let mut ips = ips.clone();
                // As for a planned port (policy::apply): where the switch does not check the
                // source MAC, the VM's own EUI-64 link-local address is listed from its MAC.
                if port.allowed_macs.is_none() {
                    let own =
                        p.mac.as_deref().or(s.mac.as_deref()).and_then(|m| crate::plan::parse_mac(m).ok());
                    for m in port.static_macs.iter().copied().chain(own) {
                        let lla = IpAddr::from(std::net::Ipv6Addr::from(
                            switchyard_dataplane::filter::eui64_link_local(m.to_u64()),
                        ));
                        if !ips.contains(&lla) {
                            ips.push(lla);
                        }
                    }
                }
                ips
            });
            None
        }
        many => {
            let closed = DirectionPolicy::default();
            port.policy = Some(PortPolicy { ingress: Some(closed.clone()), egress: Some(closed) });
            port.allowed_ips = Some(Vec::new());
            let names: BTreeSet<&str> = many.iter().map(|s| s.port.as_str()).collect();
            Some(format!(
                "CNI port {}: its pod {}/{} matches interfaces {} alike (pod names cut to {GENERATE_NAME_MAX} \
                 characters meet, no pod UID decides): isolated both ways until one goes",
                port.name,
                p.attachment.pod_namespace.as_deref().unwrap_or("?"),
                p.attachment.pod_name.as_deref().unwrap_or("?"),
                names.into_iter().collect::<Vec<_>>().join(", "),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::Attachment;
    use switchyard_dataplane::config::PortType;
    use switchyard_dataplane::policy::PolicyRule;

    fn subject(ns: &str, vmi: &str, net: &str, uids: &[&str]) -> CniSubject {
        CniSubject {
            port: format!("{ns}/{vmi}/{net}"),
            namespace: ns.into(),
            vmi: vmi.into(),
            nad: format!("{ns}/sy"),
            bridge: "br1".into(),
            vlan: None,
            pod_prefix: pod_prefix(vmi),
            pod_uids: uids.iter().map(|u| u.to_string()).collect(),
            ifnames: vec![hashed_ifname(net), ordinal_ifname(1), "status0".into()],
            mac: None,
            policy: Some(PortPolicy {
                ingress: Some(DirectionPolicy {
                    rules: vec![PolicyRule { name: vmi.into(), peers: None, ports: None }],
                }),
                egress: None,
            }),
            allowed_ips: Some(vec!["10.0.0.5".parse().unwrap()]),
        }
    }

    fn cni(ns: Option<&str>, pod: Option<&str>, uid: Option<&str>, ifname: &str, bridge: &str) -> CniPort {
        CniPort {
            bridge: bridge.into(),
            attachment: Attachment {
                container_id: "c1".into(),
                ifname: ifname.into(),
                netns: None,
                pod_namespace: ns.map(Into::into),
                pod_name: pod.map(Into::into),
                pod_uid: uid.map(Into::into),
            },
            port: PortConfig { name: "p".into(), kind: Some(PortType::Vhostuser), ..Default::default() },
            mac: Some("02:00:00:00:00:05".into()),
            owner: None,
            group: None,
            network: None,
            device: None,
        }
    }

    fn vmis(m: &[&CniSubject]) -> Vec<String> {
        m.iter().map(|s| s.vmi.clone()).collect()
    }

    #[test]
    fn kubevirts_interface_names() {
        // sha256("blue") = 16477688c0e00699c6cfa4497a3612d7e83c532062b64b250fed8908128ed548.
        assert_eq!(hashed_ifname("blue"), "pod16477688c0e");
        assert_eq!(hashed_ifname("blue").len(), 14, "within the kernel's 15 bytes");
        assert_eq!(ordinal_ifname(2), "net2");
        assert_eq!(pod_prefix("vm-a"), "virt-launcher-vm-a-");
        let long = "v".repeat(60);
        assert_eq!(pod_prefix(&long).len(), GENERATE_NAME_MAX);
        assert!(generated_from("virt-launcher-vm-a-x7k2p", "virt-launcher-vm-a-"));
        assert!(!generated_from("virt-launcher-vm-a-x7k2", "virt-launcher-vm-a-"), "4 characters");
        assert!(!generated_from("virt-launcher-vm-a-X7K2P", "virt-launcher-vm-a-"), "upper case");
        assert!(!generated_from("virt-launcher-vm-ab-x7k2p", "virt-launcher-vm-a-"));
    }

    #[test]
    fn a_port_matches_by_pod_name_and_any_interface_scheme() {
        let s = [subject("ns", "vm-a", "blue", &[]), subject("ns", "vm-b", "blue", &[])];
        let hashed = hashed_ifname("blue");
        for ifname in [hashed.as_str(), "net1", "status0"] {
            let p = cni(Some("ns"), Some("virt-launcher-vm-a-abcde"), None, ifname, "br1");
            assert_eq!(vmis(&matches(&s, &p)), ["vm-a"], "{ifname}");
        }
        // An interface name none of the schemes gives, another namespace, another bridge, a pod
        // that is no virt-launcher of these VMIs, an ADD without pod arguments: no subject.
        let none = [
            cni(Some("ns"), Some("virt-launcher-vm-a-abcde"), None, "eth1", "br1"),
            cni(Some("other"), Some("virt-launcher-vm-a-abcde"), None, "net1", "br1"),
            cni(Some("ns"), Some("virt-launcher-vm-a-abcde"), None, "net1", "br2"),
            cni(Some("ns"), Some("vm-a"), None, "net1", "br1"),
            cni(Some("ns"), Some("virt-launcher-vm-c-abcde"), None, "net1", "br1"),
            cni(None, None, None, "net1", "br1"),
        ];
        for p in &none {
            assert!(matches(&s, p).is_empty(), "{:?}", p.attachment);
            let mut port = p.port.clone();
            assert_eq!(decorate(&s, p, &mut port), None);
            assert_eq!(port, p.port, "left as it was");
        }
    }

    #[test]
    fn a_truncated_name_is_matched_and_a_collision_fails_closed_unless_a_uid_decides() {
        // Two VMIs whose names share their first 44 characters: both prefixes are cut to the
        // same 58 bytes.
        let base = "a".repeat(44);
        let (v1, v2) = (format!("{base}-one"), format!("{base}-two"));
        assert_eq!(pod_prefix(&v1), pod_prefix(&v2));
        let s = [subject("ns", &v1, "blue", &["uid-1"]), subject("ns", &v2, "blue", &["uid-2"])];
        let pod = format!("{}q9z8x", pod_prefix(&v1));
        let p = cni(Some("ns"), Some(&pod), None, "net1", "br1");
        assert_eq!(matches(&s, &p).len(), 2);
        let mut port = p.port.clone();
        let why = decorate(&s, &p, &mut port).expect("reported");
        assert!(why.contains(&v1) && why.contains(&v2), "{why}");
        let pol = port.policy.expect("isolated");
        assert_eq!(pol.ingress.map(|d| d.rules.len()), Some(0));
        assert_eq!(pol.egress.map(|d| d.rules.len()), Some(0));
        assert_eq!(port.allowed_ips, Some(Vec::new()));
        // The pod's UID decides, whatever its name.
        let p = cni(Some("ns"), Some(&pod), Some("uid-2"), "net1", "br1");
        assert_eq!(vmis(&matches(&s, &p)), [v2]);
        let p = cni(Some("ns"), Some("anything"), Some("uid-1"), "net1", "br1");
        let mut port = p.port.clone();
        assert_eq!(decorate(&s, &p, &mut port), None);
        assert_eq!(port.policy, s[0].policy);
        // A UID no subject lists falls back to the name.
        let p = cni(Some("ns"), Some(&pod), Some("uid-9"), "net1", "br1");
        assert_eq!(matches(&s, &p).len(), 2);
    }

    #[test]
    fn decorating_adds_the_vms_link_local_address_where_its_mac_is_not_checked() {
        let s = [subject("ns", "vm-a", "blue", &[])];
        let p = cni(Some("ns"), Some("virt-launcher-vm-a-abcde"), None, "net1", "br1");
        let mut port = p.port.clone();
        assert_eq!(decorate(&s, &p, &mut port), None);
        assert_eq!(port.policy, s[0].policy);
        let ips = port.allowed_ips.unwrap();
        assert_eq!(ips[0], "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(ips[1], "fe80::ff:fe00:5".parse::<IpAddr>().unwrap(), "{ips:?}");
        // With the MAC checked the switch allows its link-local address itself.
        let mut port = p.port.clone();
        port.allowed_macs = Some(vec![crate::plan::parse_mac("02:00:00:00:00:05").unwrap()]);
        decorate(&s, &p, &mut port);
        assert_eq!(port.allowed_ips.unwrap().len(), 1);
    }

    /// A port that matched a subject keeps its policy and addresses when it matches none
    /// later (its NAD deleted or its bridge edited while the VM runs): never opened by a
    /// change of the objects; it is forgotten with the port. The VMI's MAC gives the
    /// link-local address when the ADD named no MAC.
    #[test]
    fn a_port_that_no_subject_matches_any_more_keeps_its_last_filter() {
        let base =
            switchyard_dataplane::config::Config::from_yaml_str("bridges:\n- name: br1\n  ports: []\n")
                .unwrap();
        let mut ports = crate::cni::CniPorts::in_memory();
        let mut p = cni(Some("a"), Some("virt-launcher-web-x1y2z"), None, &hashed_ifname("net1"), "br1");
        p.mac = None;
        ports.insert(p.clone()).unwrap();
        let mut s = subject("a", "web", "net1", &[]);
        s.mac = Some("02:00:00:00:00:0a".into());
        let (cfg, _) = ports.merge_into(&base, std::slice::from_ref(&s));
        let q = &cfg.bridges[0].ports[0];
        assert_eq!(q.policy, s.policy);
        let lla: IpAddr = "fe80::ff:fe00:a".parse().unwrap();
        assert_eq!(q.allowed_ips, Some(vec!["10.0.0.5".parse().unwrap(), lla]));
        // The NAD goes: no subject any more.
        let (cfg, _) = ports.merge_into(&base, &[]);
        let q = &cfg.bridges[0].ports[0];
        assert_eq!((q.policy.as_ref(), q.allowed_ips.as_ref().map(Vec::len)), (s.policy.as_ref(), Some(2)));
        // A subject that matches again decides (here: no policy any more).
        let mut open = s.clone();
        open.policy = None;
        open.allowed_ips = None;
        let (cfg, _) = ports.merge_into(&base, std::slice::from_ref(&open));
        assert_eq!(
            (cfg.bridges[0].ports[0].policy.as_ref(), cfg.bridges[0].ports[0].allowed_ips.as_ref()),
            (None, None)
        );
        // Deleted and added again: nothing remembered.
        ports.merge_into(&base, std::slice::from_ref(&s));
        ports.remove(&p.attachment).unwrap();
        ports.insert(p).unwrap();
        let (cfg, _) = ports.merge_into(&base, &[]);
        assert_eq!(cfg.bridges[0].ports[0].policy, None);
    }
}
