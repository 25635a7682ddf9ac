//! What every per-attachment verb derives the same way from the config and the environment:
//! the attachment, its key, the host end's name, the port's name, its VLAN settings.
//!
//! Invariant: these are pure functions of (config, environment), so ADD, CHECK, DEL and GC of
//! one attachment always agree on names, even across plugin processes and daemon restarts.

use crate::config::{Mode, NetConf};
use crate::daemon::Daemon;
use crate::env::CniEnv;
use crate::error::{code, CniError};
use std::path::PathBuf;
use switchyard_control::cni::{attachment_key, Attachment};
use switchyard_dataplane::config::{AfPacketRxMode, PortConfig, PortType, VlanModeName};
use switchyard_dataplane::wire::MacAddr;

/// One invocation: its configuration, environment and the raw configuration bytes (handed to
/// the IPAM plugin unchanged).
pub struct Ctx<'a> {
    pub conf: &'a NetConf,
    pub env: &'a CniEnv,
    pub stdin: &'a [u8],
}

/// Writes one log line on stderr (the runtime keeps it; stdout carries only the answer).
pub fn log(ctx: &Ctx, msg: impl std::fmt::Display) {
    eprintln!(
        "switchyard-cni[{}] {} {}/{}: {msg}",
        std::process::id(),
        ctx.env.command.name(),
        ctx.env.container_id,
        ctx.env.ifname
    );
}

impl Ctx<'_> {
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
            netns: self.env.netns.clone(),
            pod_namespace: self.env.args.pod_namespace.clone(),
            pod_name: self.env.args.pod_name.clone(),
            pod_uid: self.env.args.pod_uid.clone(),
        }
    }

    pub fn key(&self) -> String {
        attachment_key(&self.env.container_id, &self.env.ifname)
    }

    /// The host end of the veth: `sy` and 13 hex digits of the attachment key (15 bytes, the
    /// kernel's limit), unique per attachment and the same in every verb.
    pub fn host_ifname(&self) -> String {
        host_ifname_of(&self.key())
    }

    /// `<namespace>/<pod>/<ifname>` when CNI_ARGS carry the pod, else `<container ID>/<ifname>`.
    pub fn port_name(&self) -> String {
        match (&self.env.args.pod_namespace, &self.env.args.pod_name) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}/{}", self.env.ifname),
            _ => format!("{}/{}", self.env.container_id, self.env.ifname),
        }
    }

    pub fn daemon(&self) -> Daemon {
        Daemon::new(&self.conf.socket)
    }

    /// The interface MAC the runtime asked for: runtimeConfig.mac, args.cni.mac, CNI_ARGS MAC.
    pub fn requested_mac(&self) -> Option<MacAddr> {
        self.conf.mac.or(self.env.args.mac)
    }

    /// CNI_PATH, which delegating to IPAM needs.
    pub fn ipam_path(&self) -> Result<&[PathBuf], CniError> {
        if self.env.path.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_PATH is not set (the ipam plugin is looked up there)",
            ));
        }
        Ok(&self.env.path)
    }

    /// The port the daemon gets for this attachment.
    pub fn port_config(&self, iface: Option<String>, mac: Option<MacAddr>) -> PortConfig {
        let (vlan_mode, tag, trunks) = vlan_settings(self.conf);
        let mut p = PortConfig {
            name: self.port_name(),
            kind: Some(match self.conf.mode {
                Mode::Veth => self.conf.veth_port.port_type(),
                Mode::Vhostuser => PortType::Vhostuser,
            }),
            vlan_mode,
            tag,
            trunks,
            iface,
            ..PortConfig::default()
        };
        if p.kind == Some(PortType::Afpacket) {
            // A node has hundreds of pod ports, most of them idle: no RX ring, so no kernel
            // timer per port and less memory to clear when one is opened. (An AF_XDP port has
            // no `rx_mode`: its rings are the sockets'.)
            p.rx_mode = Some(AfPacketRxMode::Recvmmsg);
        }
        if self.conf.macspoofchk {
            p.allowed_macs = mac.map(|m| vec![m]);
        }
        if self.conf.mode == Mode::Vhostuser {
            p.mode = Some(self.conf.vhost_mode.as_str().to_string());
            p.socket_mode = self.conf.socket_mode.clone();
        }
        p
    }
}

/// The host end's name for an attachment key.
pub fn host_ifname_of(key: &str) -> String {
    format!("sy{}", &key[..13.min(key.len())])
}

/// `vlan` and `trunk` as a port's VLAN settings: neither is a trunk of every VLAN (what a
/// Linux bridge without VLAN filtering gives a port), `vlan` alone an access port, `trunk`
/// alone a trunk of those VLANs (untagged frames are dropped), and both a native-untagged
/// port: untagged frames in `vlan`, the trunk's VLANs tagged. (The bridge plugin refuses
/// `vlan` with `vlanTrunk`; native-untagged is what its two settings would mean together.)
pub fn vlan_settings(conf: &NetConf) -> (Option<VlanModeName>, Option<u16>, Option<Vec<u16>>) {
    match (conf.vlan, conf.trunk.is_empty()) {
        (None, true) => (None, None, None),
        (Some(t), true) => (Some(VlanModeName::Access), Some(t), None),
        (None, false) => (Some(VlanModeName::Trunk), None, Some(conf.trunk.clone())),
        (Some(t), false) => (Some(VlanModeName::NativeUntagged), Some(t), Some(conf.trunk.clone())),
    }
}

/// A port's VLAN settings in words ("access VLAN 10", "trunk of 20, 21", ...).
pub fn describe_vlans(p: &PortConfig) -> String {
    let list = |t: &Option<Vec<u16>>| match t.as_deref() {
        None | Some([]) => "every VLAN".to_string(),
        Some(l) => l.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
    };
    let tag = p.tag.map_or("-".to_string(), |t| t.to_string());
    match p.effective_vlan_mode() {
        VlanModeName::Access => format!("access VLAN {tag}"),
        VlanModeName::Trunk => format!("trunk of {}", list(&p.trunks)),
        VlanModeName::NativeTagged => format!("native-tagged VLAN {tag}, trunk of {}", list(&p.trunks)),
        VlanModeName::NativeUntagged => format!("native-untagged VLAN {tag}, trunk of {}", list(&p.trunks)),
    }
}

/// Whether two ports have the same VLAN behaviour (OVS's defaults applied, trunk lists
/// compared as sets).
pub fn same_vlans(a: &PortConfig, b: &PortConfig) -> bool {
    let trunks = |p: &PortConfig| {
        let mut t = p.trunks.clone().unwrap_or_default();
        t.sort_unstable();
        t.dedup();
        t
    };
    a.effective_vlan_mode() == b.effective_vlan_mode() && a.tag == b.tag && trunks(a) == trunks(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: serde_json::Value) -> NetConf {
        let mut c = json!({"cniVersion": "1.0.0", "name": "n", "type": "switchyard", "bridge": "br1"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        NetConf::parse(c.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn vlan_and_trunk_map_to_port_modes() {
        assert_eq!(vlan_settings(&conf(json!({}))), (None, None, None));
        assert_eq!(vlan_settings(&conf(json!({"vlan": 0}))), (None, None, None));
        assert_eq!(vlan_settings(&conf(json!({"vlan": 10}))), (Some(VlanModeName::Access), Some(10), None));
        assert_eq!(
            vlan_settings(&conf(json!({"trunk": [{"id": 20}]}))),
            (Some(VlanModeName::Trunk), None, Some(vec![20]))
        );
        assert_eq!(
            vlan_settings(&conf(json!({"vlan": 10, "trunk": [{"minID": 20, "maxID": 21}]}))),
            (Some(VlanModeName::NativeUntagged), Some(10), Some(vec![20, 21]))
        );
    }

    #[test]
    fn same_vlans_applies_the_defaults() {
        let a = PortConfig { tag: Some(10), ..PortConfig::default() };
        let b = PortConfig { tag: Some(10), vlan_mode: Some(VlanModeName::Access), ..PortConfig::default() };
        assert!(same_vlans(&a, &b));
        let c = PortConfig { tag: Some(11), ..PortConfig::default() };
        assert!(!same_vlans(&a, &c));
        let t1 = PortConfig { trunks: Some(vec![3, 2]), ..PortConfig::default() };
        let t2 = PortConfig {
            trunks: Some(vec![2, 3]),
            vlan_mode: Some(VlanModeName::Trunk),
            ..PortConfig::default()
        };
        assert!(same_vlans(&t1, &t2));
        assert_eq!(describe_vlans(&a), "access VLAN 10");
        assert_eq!(describe_vlans(&t1), "trunk of 3, 2");
        assert_eq!(describe_vlans(&PortConfig::default()), "trunk of every VLAN");
    }

    /// veth mode asks for the `vethPort` type on the host end (AF_PACKET's `rx_mode` only on
    /// an AF_PACKET port: the schema refuses it on AF_XDP); vhost-user mode for a vhost-user
    /// port.
    #[test]
    fn the_port_type_follows_the_mode_and_veth_port() {
        let env = CniEnv {
            command: crate::env::Command::Add,
            container_id: "c1".into(),
            netns: None,
            ifname: "net1".into(),
            args: crate::env::CniArgs::default(),
            path: Vec::new(),
        };
        let port = |extra| {
            let c = conf(extra);
            let ctx = Ctx { conf: &c, env: &env, stdin: b"" };
            ctx.port_config(Some("syhost".into()), None)
        };
        let p = port(json!({}));
        assert_eq!((p.kind, p.rx_mode), (Some(PortType::Afpacket), Some(AfPacketRxMode::Recvmmsg)));
        let p = port(json!({"vethPort": "afxdp"}));
        assert_eq!((p.kind, p.rx_mode, p.iface.as_deref()), (Some(PortType::Afxdp), None, Some("syhost")));
        let p = port(json!({"mode": "vhostuser"}));
        assert_eq!((p.kind, p.rx_mode), (Some(PortType::Vhostuser), None));
    }

    #[test]
    fn host_names_fit_the_kernel_limit() {
        let k = attachment_key("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "net1");
        let h = host_ifname_of(&k);
        assert_eq!(h.len(), 15);
        assert!(h.starts_with("sy"));
        assert_ne!(h, host_ifname_of(&attachment_key("c", "net2")));
    }
}
