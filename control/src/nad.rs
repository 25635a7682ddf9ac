//! The CNI configuration inside a NetworkAttachmentDefinition (`spec.config`, a JSON string:
//! one plugin, or a conflist with `plugins`), reduced to what switchyard needs.
//!
//! Validation follows the plugins themselves: the Linux bridge CNI's `loadNetConf` /
//! `collectVlanTrunk` (containernetworking/plugins, plugins/main/bridge/bridge.go) and
//! OVN-Kubernetes' secondary network config (ovn-k8s-cni-overlay). A config those plugins
//! would reject is rejected here with the field named.

use serde_json::{Map, Value};

/// What a NAD asks for, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NadNetwork {
    /// Linux bridge CNI (`bridge`) or its KubeVirt twin (`cnv-bridge`).
    Bridge(BridgeNet),
    /// OVN-Kubernetes `topology: localnet`.
    OvnLocalnet { network: String, physical_network: String, vlan: Option<u16> },
    /// OVN-Kubernetes `topology: layer2`: an overlay across the nodes (control/src/overlay.rs).
    OvnLayer2(Layer2Net),
    /// `type: sriov`: the VF is handed to the VM; no switch port.
    Sriov,
    /// `type: switchyard`: the CNI plugin attaches the interface when the pod starts (docs/cni.md);
    /// no port is planned from the manifests, but the interface is a CNI subject
    /// (control/src/cni_subject.rs): its port must be on `bridge`, and `vlan` is the access (or
    /// native) VLAN the plugin gives it (cni/src/config.rs reads the same keys).
    SwitchyardCni { bridge: String, vlan: Option<u16> },
    /// Something switchyard does not switch; the reason says what.
    Unsupported { reason: String },
}

/// An OVN-Kubernetes layer2 network, with switchyard's own keys for its overlay
/// (docs/overlay.md, "From cluster state").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer2Net {
    /// The network's `name`: the same network in every NAD (and namespace) that names it.
    pub network: String,
    /// `vni` (switchyard's key): the overlay's VNI, 1 to 16777215; absent: derived from the
    /// network's name.
    pub vni: Option<u32>,
    /// `mtu`: the MTU OVN-Kubernetes gives the VMs of the network.
    pub mtu: Option<u32>,
    /// `tunnel` (switchyard's key): `vxlan` (default) or `geneve`.
    pub geneve: bool,
    /// `tunnelPort` (switchyard's key): the underlay UDP port; absent: the encapsulation's
    /// (4789, 6081).
    pub dstport: Option<u16>,
    /// Where the plugin's keys are (`spec.config` or `spec.config.plugins[N]`), for problems.
    pub path: String,
}

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNet {
    /// `bridge` or `cnv-bridge`.
    pub cni_type: String,
    /// `bridge` (default `cni0`, as the plugin).
    pub bridge: String,
    /// `vlan` (0 or absent: none).
    pub vlan: Option<u16>,
    /// `vlanTrunk`, expanded, sorted, deduplicated.
    pub trunks: Vec<u16>,
    /// `preserveDefaultVlan` (default true, as the plugin).
    pub preserve_default_vlan: bool,
    /// `macspoofchk` (default false).
    pub macspoofchk: bool,
    /// `ipspoofchk` (default false): drop what the VM sends from addresses not its own.
    pub ipspoofchk: bool,
    /// `mtu` (accepted, not used: the dataplane has no per-port MTU).
    pub mtu: Option<u32>,
}

/// The first thing wrong in a CNI config: the field (its path from `spec.config`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct FieldError {
    pub field: String,
    pub msg: String,
}

fn err<T>(field: String, msg: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field, msg: msg.into() })
}

fn get_int(o: &Map<String, Value>, key: &str, base: &str) -> Result<Option<i64>, FieldError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) => Ok(Some(i)),
            None => err(format!("{base}.{key}"), format!("{v} is not an integer")),
        },
    }
}

fn get_bool(o: &Map<String, Value>, key: &str, base: &str) -> Result<Option<bool>, FieldError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => err(format!("{base}.{key}"), format!("{v} is not a boolean")),
    }
}

fn get_str<'a>(o: &'a Map<String, Value>, key: &str, base: &str) -> Result<Option<&'a str>, FieldError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => err(format!("{base}.{key}"), format!("{v} is not a string")),
    }
}

/// The CNI types that put an interface somewhere (chained plugins like `tuning` do not).
const MAIN_TYPES: &[&str] = &["bridge", "cnv-bridge", "ovn-k8s-cni-overlay", "sriov", "switchyard"];

/// Parses `spec.config` of the NAD `ns/name`.
pub fn parse(config: &str, ns: &str, name: &str) -> Result<NadNetwork, FieldError> {
    let v: Value = match serde_json::from_str(config) {
        Ok(v) => v,
        Err(e) => return err("spec.config".into(), format!("not JSON: {e}")),
    };
    let Some(top) = v.as_object() else {
        return err("spec.config".into(), "not a JSON object");
    };
    let top_name = get_str(top, "name", "spec.config")?;
    // A conflist: the first plugin that attaches the interface decides.
    let (plugin, base) = match top.get("plugins") {
        None | Some(Value::Null) => (top, "spec.config".to_string()),
        Some(Value::Array(list)) => {
            let mut chosen = None;
            let mut first_type = None;
            for (i, p) in list.iter().enumerate() {
                let base = format!("spec.config.plugins[{i}]");
                let Some(po) = p.as_object() else {
                    return err(base, "not a JSON object");
                };
                let t = get_str(po, "type", &base)?.unwrap_or("");
                if first_type.is_none() {
                    first_type = Some(t.to_string());
                }
                if MAIN_TYPES.contains(&t) {
                    chosen = Some((po, base));
                    break;
                }
            }
            match chosen {
                Some(c) => c,
                None => {
                    let t = first_type.unwrap_or_default();
                    return Ok(NadNetwork::Unsupported {
                        reason: format!("CNI type {t:?} is not switched by switchyard"),
                    });
                }
            }
        }
        Some(_) => return err("spec.config.plugins".into(), "not a list"),
    };
    let cni_type = get_str(plugin, "type", &base)?.unwrap_or("");
    let net_name = get_str(plugin, "name", &base)?.or(top_name);
    match cni_type {
        "bridge" | "cnv-bridge" => parse_bridge(plugin, &base, cni_type).map(NadNetwork::Bridge),
        "ovn-k8s-cni-overlay" => parse_ovn(plugin, &base, net_name, ns, name),
        "sriov" => Ok(NadNetwork::Sriov),
        "switchyard" => parse_switchyard(plugin, &base),
        "" => err(format!("{base}.type"), "missing"),
        t => Ok(NadNetwork::Unsupported { reason: format!("CNI type {t:?} is not switched by switchyard") }),
    }
}

/// The keys of switchyard's own plugin config that say where its ports go: `bridge` (required:
/// the plugin refuses a config without one) and `vlan` (0 or absent: none).
fn parse_switchyard(o: &Map<String, Value>, base: &str) -> Result<NadNetwork, FieldError> {
    let bridge = match get_str(o, "bridge", base)? {
        None => return err(format!("{base}.bridge"), "missing (switchyard's CNI plugin needs the bridge)"),
        Some("") => return err(format!("{base}.bridge"), "empty"),
        Some(b) => b.to_string(),
    };
    let vlan = match get_int(o, "vlan", base)? {
        None | Some(0) => None,
        Some(v) if (1..=4094).contains(&v) => Some(v as u16),
        Some(v) => {
            return err(format!("{base}.vlan"), format!("invalid VLAN ID {v} (must be between 0 and 4094)"))
        }
    };
    Ok(NadNetwork::SwitchyardCni { bridge, vlan })
}

fn parse_bridge(o: &Map<String, Value>, base: &str, cni_type: &str) -> Result<BridgeNet, FieldError> {
    let bridge = get_str(o, "bridge", base)?.unwrap_or("cni0");
    if bridge.is_empty() {
        return err(format!("{base}.bridge"), "empty");
    }
    // The bridge CNI makes a kernel bridge of this name: one no interface can have fails there
    // and must not become a port here, least of all on a bridge switchyard names itself
    // (`ovn-layer2/<network>`, another tenant's overlay).
    if let Err(e) = switchyard_dataplane::backend::check_ifname(bridge) {
        return err(format!("{base}.bridge"), e);
    }
    let vlan = match get_int(o, "vlan", base)? {
        None | Some(0) => None,
        Some(v) if (1..=4094).contains(&v) => Some(v as u16),
        Some(v) => {
            return err(format!("{base}.vlan"), format!("invalid VLAN ID {v} (must be between 0 and 4094)"))
        }
    };
    // A set, not a list to sort: each range item costs no more than an `id` (a list of
    // `{"minID": 1, "maxID": 4094}` items would grow by 4094 entries for every 24 bytes).
    let mut trunk_set = [false; 4095];
    match o.get("vlanTrunk") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let ib = format!("{base}.vlanTrunk[{i}]");
                let Some(io) = it.as_object() else {
                    return err(ib, "not a JSON object");
                };
                let min = get_int(io, "minID", &ib)?;
                let max = get_int(io, "maxID", &ib)?;
                match (min, max) {
                    (Some(lo), Some(hi)) => {
                        if !(1..=4094).contains(&lo) {
                            return err(format!("{ib}.minID"), format!("VLAN {lo} out of range 1-4094"));
                        }
                        if !(1..=4094).contains(&hi) {
                            return err(format!("{ib}.maxID"), format!("VLAN {hi} out of range 1-4094"));
                        }
                        if hi < lo {
                            return err(
                                format!("{ib}.minID"),
                                format!("minID {lo} is greater than maxID {hi}"),
                            );
                        }
                        trunk_set[lo as usize..=hi as usize].fill(true);
                    }
                    (None, Some(_)) => {
                        return err(format!("{ib}.minID"), "minID and maxID go together: minID is missing")
                    }
                    (Some(_), None) => {
                        return err(format!("{ib}.maxID"), "minID and maxID go together: maxID is missing")
                    }
                    (None, None) => {}
                }
                if let Some(id) = get_int(io, "id", &ib)? {
                    if !(1..=4094).contains(&id) {
                        return err(format!("{ib}.id"), format!("VLAN {id} out of range 1-4094"));
                    }
                    trunk_set[id as usize] = true;
                }
            }
        }
        Some(_) => return err(format!("{base}.vlanTrunk"), "not a list"),
    }
    let trunks: Vec<u16> = (1..=4094u16).filter(|&v| trunk_set[usize::from(v)]).collect();
    let mtu = match get_int(o, "mtu", base)? {
        None => None,
        Some(m) if (0..=65535).contains(&m) => Some(m as u32),
        Some(m) => return err(format!("{base}.mtu"), format!("MTU {m} out of range")),
    };
    Ok(BridgeNet {
        cni_type: cni_type.to_string(),
        bridge: bridge.to_string(),
        vlan,
        trunks,
        preserve_default_vlan: get_bool(o, "preserveDefaultVlan", base)?.unwrap_or(true),
        macspoofchk: get_bool(o, "macspoofchk", base)?.unwrap_or(false),
        ipspoofchk: get_bool(o, "ipspoofchk", base)?.unwrap_or(false),
        mtu,
    })
}

fn parse_ovn(
    o: &Map<String, Value>,
    base: &str,
    net_name: Option<&str>,
    ns: &str,
    name: &str,
) -> Result<NadNetwork, FieldError> {
    let Some(network) = net_name.filter(|n| !n.is_empty()) else {
        return err(format!("{base}.name"), "missing: OVN-Kubernetes names the network by it");
    };
    if let Some(nad) = get_str(o, "netAttachDefName", base)? {
        let want = format!("{ns}/{name}");
        if nad != want {
            return err(
                format!("{base}.netAttachDefName"),
                format!("{nad:?} is not this NAD ({want:?}); OVN-Kubernetes rejects the mismatch"),
            );
        }
    }
    let mtu = match get_int(o, "mtu", base)? {
        None => None,
        Some(m) if (0..=65535).contains(&m) => Some(m as u32),
        Some(m) => return err(format!("{base}.mtu"), format!("MTU {m} out of range")),
    };
    match o.get("subnets") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(v) => return err(format!("{base}.subnets"), format!("{v} is not a string")),
    }
    let vlan = get_int(o, "vlanID", base)?;
    let topology = get_str(o, "topology", base)?;
    match topology {
        Some("localnet") => {
            let vlan = match vlan {
                None => None,
                Some(v) if (1..=4094).contains(&v) => Some(v as u16),
                Some(v) => return err(format!("{base}.vlanID"), format!("VLAN {v} out of range 1-4094")),
            };
            let physical =
                get_str(o, "physicalNetworkName", base)?.filter(|p| !p.is_empty()).unwrap_or(network);
            Ok(NadNetwork::OvnLocalnet {
                network: network.to_string(),
                physical_network: physical.to_string(),
                vlan,
            })
        }
        Some("layer2") => {
            if vlan.is_some() {
                return err(format!("{base}.vlanID"), "only a localnet topology has a vlanID");
            }
            let vni = match get_int(o, "vni", base)? {
                None => None,
                Some(v) if (1..=i64::from(MAX_VNI)).contains(&v) => Some(v as u32),
                Some(v) => return err(format!("{base}.vni"), format!("VNI {v} out of range 1-{MAX_VNI}")),
            };
            let geneve = match get_str(o, "tunnel", base)? {
                None | Some("vxlan") => false,
                Some("geneve") => true,
                Some(t) => {
                    return err(format!("{base}.tunnel"), format!("{t:?} is neither vxlan nor geneve"))
                }
            };
            let dstport = match get_int(o, "tunnelPort", base)? {
                None => None,
                Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                Some(p) => {
                    return err(format!("{base}.tunnelPort"), format!("UDP port {p} out of range 1-65535"))
                }
            };
            Ok(NadNetwork::OvnLayer2(Layer2Net {
                network: network.to_string(),
                vni,
                mtu,
                geneve,
                dstport,
                path: base.to_string(),
            }))
        }
        Some("layer3") => Ok(NadNetwork::Unsupported {
            reason: "OVN-Kubernetes layer3 networks are routed, not switched".into(),
        }),
        Some(t) => err(format!("{base}.topology"), format!("{t:?} is not localnet, layer2 or layer3")),
        None => err(format!("{base}.topology"), "missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &str) -> Result<NadNetwork, FieldError> {
        parse(c, "ns", "nad")
    }

    /// A config of 40,000 full-range trunk items (1 MB, about what the API server stores in
    /// one object) parses without a large allocation: the peak RSS grows by far less than the
    /// 320 MiB that expanding every range into a list took.
    #[test]
    fn trunk_ranges_do_not_amplify() {
        let items = vec![r#"{"minID":1,"maxID":4094}"#; 40_000].join(",");
        let config = format!(r#"{{"type":"bridge","vlanTrunk":[{items},{{"id":7}}]}}"#);
        let (r, grew) = testkit::peak_rss_growth(|| p(&config));
        let NadNetwork::Bridge(b) = r.unwrap() else { panic!() };
        assert_eq!(b.trunks, (1..=4094).collect::<Vec<u16>>());
        assert!(grew < 128 << 20, "peak RSS grew by {} MiB", grew >> 20);
    }

    #[test]
    fn bridge_defaults() {
        let NadNetwork::Bridge(b) = p(r#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(b.bridge, "cni0");
        assert!(b.preserve_default_vlan && !b.macspoofchk && b.vlan.is_none() && b.trunks.is_empty());
    }

    #[test]
    fn conflist_picks_the_main_plugin() {
        let n = p(
            r#"{"name":"n","plugins":[{"type":"cnv-bridge","bridge":"br1","vlan":7},{"type":"cnv-tuning"}]}"#,
        )
        .unwrap();
        assert!(matches!(n, NadNetwork::Bridge(BridgeNet { vlan: Some(7), .. })));
        let n = p(r#"{"name":"n","plugins":[{"type":"macvlan"},{"type":"tuning"}]}"#).unwrap();
        assert!(matches!(n, NadNetwork::Unsupported { .. }));
    }

    #[test]
    fn trunk_expansion_and_errors() {
        let NadNetwork::Bridge(b) =
            p(r#"{"type":"bridge","vlanTrunk":[{"id":5},{"minID":10,"maxID":12},{"id":11}]}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(b.trunks, vec![5, 10, 11, 12]);
        let e = p(r#"{"type":"bridge","vlanTrunk":[{"id":5},{"minID":10}]}"#).unwrap_err();
        assert_eq!(e.field, "spec.config.vlanTrunk[1].maxID");
        let e = p(r#"{"type":"bridge","vlanTrunk":[{"minID":20,"maxID":10}]}"#).unwrap_err();
        assert_eq!(e.field, "spec.config.vlanTrunk[0].minID");
        let e = p(r#"{"type":"bridge","vlan":4095}"#).unwrap_err();
        assert_eq!(e.field, "spec.config.vlan");
        let e = p(r#"{"plugins":[{"type":"bridge","vlan":"x"}]}"#).unwrap_err();
        assert_eq!(e.field, "spec.config.plugins[0].vlan");
    }

    #[test]
    fn ovn() {
        let n = p(r#"{"name":"tenant","type":"ovn-k8s-cni-overlay","topology":"localnet","vlanID":20,"netAttachDefName":"ns/nad"}"#)
            .unwrap();
        assert_eq!(
            n,
            NadNetwork::OvnLocalnet {
                network: "tenant".into(),
                physical_network: "tenant".into(),
                vlan: Some(20)
            }
        );
        let e =
            p(r#"{"name":"t","type":"ovn-k8s-cni-overlay","topology":"localnet","netAttachDefName":"x/y"}"#)
                .unwrap_err();
        assert_eq!(e.field, "spec.config.netAttachDefName");
        let e = p(r#"{"name":"t","type":"ovn-k8s-cni-overlay","topology":"layer2","vlanID":3}"#).unwrap_err();
        assert_eq!(e.field, "spec.config.vlanID");
        assert!(matches!(
            p(r#"{"name":"t","type":"ovn-k8s-cni-overlay","topology":"layer3"}"#).unwrap(),
            NadNetwork::Unsupported { .. }
        ));
        assert_eq!(p("{nope").unwrap_err().field, "spec.config");
    }
}
