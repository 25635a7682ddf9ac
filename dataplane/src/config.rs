//! The configuration file: bridges and their ports (docs/semantics.md, "The configuration
//! file"). Parsing gives plain structs; [`Config::validate`] checks every rule that serde
//! cannot, naming the offending field as `bridges[i].ports[j].field`.

use crate::wire::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

/// Failures of loading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
}

fn invalid(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), msg: msg.into() }
}

/// The whole configuration: a list of bridges.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub bridges: Vec<BridgeConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_aging_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_table_size: Option<usize>,
    /// Connections the bridge's connection tracker holds (ports with a policy only;
    /// default [`crate::conntrack::DEFAULT_CAPACITY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_size: Option<usize>,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
}

impl BridgeConfig {
    /// A bridge `name` with `ports` and every option at its default.
    pub fn new(name: impl Into<String>, ports: Vec<PortConfig>) -> BridgeConfig {
        BridgeConfig {
            name: name.into(),
            mac_aging_s: None,
            mac_table_size: None,
            conntrack_size: None,
            ports,
        }
    }
}

/// VLAN modes, named as in Open vSwitch's Port table `vlan_mode` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanModeName {
    Access,
    Trunk,
    NativeTagged,
    NativeUntagged,
}

/// The backend kinds a port can have (each with its options: [`crate::backend::Backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortType {
    Ring,
    Pcap,
    Afpacket,
    Afxdp,
    Tap,
    Vhostuser,
    Dpdk,
    /// A VXLAN tunnel port (RFC 7348) over the kernel's UDP stack.
    Vxlan,
    /// A Geneve tunnel port (RFC 8926) over the kernel's UDP stack.
    Geneve,
}

/// A remote MAC of a tunnel port: frames to `mac` go to the endpoint `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteMac {
    pub mac: MacAddr,
    pub remote: IpAddr,
}

/// A route of a tunnel port's underlay: endpoints in `dst` are reached through the gateway
/// `via` (fast path only; docs/overlay.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayRoute {
    pub dst: crate::policy::Cidr,
    pub via: IpAddr,
}

/// How an AF_PACKET port receives (docs/semantics.md, port options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfPacketRxMode {
    /// A `TPACKET_V3` ring per RX queue (4 MiB, a 1 ms block-retire timer): the fastest under
    /// load, but the kernel runs the ring's timer even while the port is idle.
    #[default]
    Ring,
    /// `recvmmsg(2)` on the packet socket: no ring and no timer, so an idle port costs
    /// nothing and opens fast; for the many mostly idle ports of a node's pods.
    Recvmmsg,
}

/// One port: its backend (`type` plus that type's options) and its L2 settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PortType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_mode: Option<VlanModeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunks: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_macs: Option<Vec<MacAddr>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_macs: Vec<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_limit: Option<u32>,
    /// IP spoof filter: the source addresses (and ARP sender addresses) the port may send
    /// (docs/policy.md); `None`: no filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<std::net::IpAddr>>,
    /// Network policy (docs/policy.md); `None`: the port is open both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PortPolicy>,

    // Type options. Each is valid only with the types listed.
    /// ring: the ring's name (default: the port's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<String>,
    /// pcap: the capture to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_pcap: Option<String>,
    /// pcap: the capture to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_pcap: Option<String>,
    /// pcap: replay `rx_pcap` forever from memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infinite: Option<bool>,
    /// afpacket, afxdp, tap: the kernel interface (default: the port's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// afpacket: how the port receives (default `ring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_mode: Option<AfPacketRxMode>,
    /// vhostuser: the Unix socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// vhostuser: `server` (switchyard listens) or `client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// vhostuser server mode: permissions of the socket, octal (e.g. "0660"), so that QEMU
    /// running as another user can connect. Default: the process's umask decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// vhostuser: offer the guest checksum and TCP segmentation offload on its transmit side
    /// (default false; docs/vhost.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<bool>,
    /// afxdp: RX queues of the interface (0..queues); vhostuser, dpdk: queue pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// dpdk: a PCI address or a vdev string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devargs: Option<String>,
    /// vxlan, geneve: the network's 24-bit identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// vxlan, geneve: the underlay source address (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    /// vxlan, geneve: the UDP port (default 4789 for vxlan, 6081 for geneve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dstport: Option<u16>,
    /// vxlan, geneve: `kernel` (the kernel's UDP socket, the default) or the uplink to write
    /// the outer headers on: an interface name (AF_PACKET) or a port SPEC (`afpacket:IFACE`,
    /// `dpdk:DEVARGS`), see ports/src/uplink_tunnel.rs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// vxlan, geneve: the endpoints of broadcast, multicast and unknown unicast frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<Vec<IpAddr>>,
    /// vxlan, geneve: known remote MACs (static, never learned over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_macs: Vec<RemoteMac>,
    /// vxlan, geneve: learn remote MACs from received frames (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn: Option<bool>,
    /// vxlan, geneve on an uplink: gateways towards endpoints off the uplink's link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<UnderlayRoute>,
}

/// An octal permission mode such as "0660" or "660" (at most 0777).
pub fn parse_socket_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o777 && !s.is_empty())
}

/// Parses YAML text, naming `path` in errors (serde_yaml_ng's message gives the field and line).
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), msg: e.to_string() })
}

impl Config {
    /// Reads and checks the file at `path`. Every error names the file once (a field's error
    /// as `PATH: FIELD`), so callers print it as it is, without adding the path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: p.clone(), source: e })?;
        let c: Config = from_yaml(&text, &p)?;
        c.validate().map_err(|e| match e {
            ConfigError::Invalid { field, msg } => {
                ConfigError::Invalid { field: format!("{p}: {field}"), msg }
            }
            other => other,
        })?;
        Ok(c)
    }

    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let c: Config = from_yaml(text, "<config>")?;
        c.validate()?;
        Ok(c)
    }

    /// Every rule serde cannot check. The first failure is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bridges = HashSet::new();
        let mut ports = HashSet::new();
        // vhostuser socket paths: two ports on one path would fight over it (a server's bind
        // unlinks the path, orphaning the other port's listener).
        let mut sockets: HashMap<&str, &str> = HashMap::new();
        let mut nports = 0usize;
        let mut uplinks = HashMap::new();
        let mut kernel_ifaces = KernelIfaces::new();
        for (bi, b) in self.bridges.iter().enumerate() {
            let bf = format!("bridges[{bi}]");
            if b.name.is_empty() {
                return Err(invalid(format!("{bf}.name"), "must not be empty"));
            }
            if !bridges.insert(b.name.as_str()) {
                return Err(invalid(format!("{bf}.name"), format!("duplicate bridge {:?}", b.name)));
            }
            if b.mac_aging_s == Some(0) {
                return Err(invalid(format!("{bf}.mac_aging_s"), "must be at least 1"));
            }
            if let Some(n) = b.mac_table_size {
                if n == 0 || n > crate::fdb::MacTable::MAX_CAPACITY {
                    return Err(invalid(
                        format!("{bf}.mac_table_size"),
                        format!("must be between 1 and {}", crate::fdb::MacTable::MAX_CAPACITY),
                    ));
                }
            }
            if let Some(n) = b.conntrack_size {
                if n == 0 || n > crate::conntrack::MAX_CAPACITY {
                    return Err(invalid(
                        format!("{bf}.conntrack_size"),
                        format!("must be between 1 and {}", crate::conntrack::MAX_CAPACITY),
                    ));
                }
            }
            for (pi, p) in b.ports.iter().enumerate() {
                let pf = PortField(bi, pi);
                nports += 1;
                if p.name.is_empty() {
                    return Err(invalid(format!("{pf}.name"), "must not be empty"));
                }
                if !ports.insert(p.name.as_str()) {
                    return Err(invalid(
                        format!("{pf}.name"),
                        format!("duplicate port {:?} (port names are unique on the node)", p.name),
                    ));
                }
                p.validate(&pf)?;
                if let (Some(PortType::Vhostuser), Some(sock)) = (p.kind, p.socket.as_deref()) {
                    if let Some(other) = sockets.insert(sock, p.name.as_str()) {
                        return Err(invalid(
                            format!("{pf}.socket"),
                            format!("{sock:?} is port {other:?}'s socket too (a socket serves one port)"),
                        ));
                    }
                }
                if matches!(p.kind, Some(PortType::Vxlan | PortType::Geneve)) {
                    shared_uplink(&mut uplinks, p, &pf)?;
                }
                afxdp_alone(&mut kernel_ifaces, p, &pf)?;
            }
        }
        if nports > crate::switch::MAX_PORTS_PER_NODE {
            return Err(invalid("bridges", format!("more than {} ports", crate::switch::MAX_PORTS_PER_NODE)));
        }
        Ok(())
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

/// The first tunnel port seen on each uplink (by [`crate::backend::uplink_key`]), with its
/// type, local address, UDP port and path, its underlay as spelled and as it opens the uplink
/// ([`crate::backend::uplink_form`]), and the VNIs of the ports on it.
type Uplinks =
    HashMap<String, ((crate::tunnel::TunnelKind, IpAddr, u16, String, String, String), HashSet<u32>)>;

/// The kernel interface an uplink spelled as [`crate::backend::uplink_spelling`] writes it
/// opens (AF_PACKET or AF_XDP).
fn uplink_iface(spelled: &str) -> Option<&str> {
    let rest = spelled.strip_prefix("afpacket:").or_else(|| spelled.strip_prefix("afxdp:"))?;
    rest.split(',').next()
}

/// The kernel interfaces that AF_PACKET and AF_XDP ports and tunnel uplinks open, each with
/// its first opener: what it is (`{field} ({port})` and how it opens it), whether it opens it
/// over AF_XDP, and for an uplink its key.
type KernelIfaces = HashMap<String, (String, bool, Option<String>)>;

/// An interface that an AF_XDP port or uplink opens is opened by nothing else of the switch
/// (another AF_XDP or AF_PACKET port or uplink; the tunnel ports of one uplink share it): its
/// XDP program takes every frame of the queues it redirects, so an AF_PACKET socket on the
/// interface would see none of them, and a second AF_XDP port finds the queues taken. `p` is
/// a valid port. (A DPDK `net_af_packet` or `net_af_xdp` device on the same interface is not
/// recognised.)
fn afxdp_alone(ifaces: &mut KernelIfaces, p: &PortConfig, pf: &PortField) -> Result<(), ConfigError> {
    use crate::backend::Backend;
    let (iface, afxdp, key, what, field) = match p.backend() {
        Ok(Backend::Afpacket { iface, .. }) => {
            (iface.unwrap_or_else(|| p.name.clone()), false, None, "an AF_PACKET port", "iface")
        }
        Ok(Backend::Afxdp { iface, .. }) => {
            (iface.unwrap_or_else(|| p.name.clone()), true, None, "an AF_XDP port", "iface")
        }
        Ok(Backend::Tunnel(t)) => {
            let Some(spelled) = crate::backend::uplink_spelling(t.underlay.as_deref()) else { return Ok(()) };
            let Some(iface) = uplink_iface(&spelled) else { return Ok(()) };
            let afxdp = spelled.starts_with("afxdp:");
            let what = if afxdp { "an AF_XDP uplink" } else { "an AF_PACKET uplink" };
            (iface.to_string(), afxdp, crate::backend::uplink_key(Some(&spelled)), what, "underlay")
        }
        _ => return Ok(()),
    };
    match ifaces.get(&iface) {
        Some((_, afxdp0, key0)) if !(*afxdp0 || afxdp) || (key.is_some() && key == *key0) => Ok(()),
        Some((first, ..)) => Err(invalid(
            format!("{pf}.{field}"),
            format!(
                "{what} on interface {iface:?}, which {first} opens already: an interface that \
                 AF_XDP opens is opened by nothing else (its XDP program takes the frames of the \
                 queues it redirects)"
            ),
        )),
        None => {
            let first = format!("{pf} ({}), {what},", p.name);
            ifaces.insert(iface, (first, afxdp, key));
            Ok(())
        }
    }
}

/// The rules of tunnel ports sharing an uplink: one type, local address and UDP port per
/// uplink (its tunnel endpoint), one port per VNI. (One interface, one uplink when AF_XDP
/// opens it: [`afxdp_alone`].) `p` is a valid tunnel port.
fn shared_uplink(uplinks: &mut Uplinks, p: &PortConfig, pf: &PortField) -> Result<(), ConfigError> {
    let Ok(crate::backend::Backend::Tunnel(t)) = p.backend() else { return Ok(()) };
    let Some(key) = crate::backend::uplink_key(t.underlay.as_deref()) else { return Ok(()) };
    let spelled = crate::backend::uplink_spelling(t.underlay.as_deref()).unwrap_or_default();
    // Compared as the uplink opens (`afxdp:eth1` is `afxdp:eth1,queues=1`), named as spelled.
    let form = crate::backend::uplink_form(t.underlay.as_deref()).unwrap_or_default();
    let kind = t.kind;
    let (first, vnis) = uplinks.entry(key.clone()).or_insert_with(|| {
        (
            (kind, t.local, t.port(), format!("{pf} ({})", p.name), spelled.clone(), form.clone()),
            HashSet::new(),
        )
    });
    let (k0, local0, port0, at, spelled0, form0) = first;
    if *form0 != form {
        return Err(invalid(
            format!("{pf}.underlay"),
            format!(
                "{spelled:?} differs from {spelled0:?}, the underlay of {at}: it names the same \
                 uplink {key:?} with other options (the ports on one uplink open it once)"
            ),
        ));
    }
    if *local0 != t.local {
        return Err(invalid(
            format!("{pf}.local"),
            format!(
                "{} differs from {local0}, the local address of {at} on the same uplink {key:?}: the \
                 tunnel ports on one uplink share its one tunnel endpoint",
                t.local
            ),
        ));
    }
    if (*k0, *port0) != (kind, t.port()) {
        return Err(invalid(
            format!("{pf}.dstport"),
            format!(
                "{} port {} differs from {} port {port0} of {at} on the same uplink {key:?}: one \
                 uplink carries one encapsulation and UDP port (another needs another uplink or \
                 underlay: kernel)",
                kind.name(),
                t.port(),
                k0.name()
            ),
        ));
    }
    if !vnis.insert(t.vni) {
        return Err(invalid(
            format!("{pf}.vni"),
            format!("VNI {} is served already by another tunnel port on uplink {key:?}", t.vni),
        ));
    }
    Ok(())
}

/// The path of a port in a configuration, `bridges[B].ports[P]`, written out only when an
/// error names it (a node's configuration has tens of thousands of ports).
struct PortField(usize, usize);

impl std::fmt::Display for PortField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bridges[{}].ports[{}]", self.0, self.1)
    }
}

impl PortConfig {
    /// The VLAN mode after applying OVS's defaults: a port with a tag is an access port, one
    /// without is a trunk.
    pub fn effective_vlan_mode(&self) -> VlanModeName {
        self.vlan_mode.unwrap_or(if self.tag.is_some() { VlanModeName::Access } else { VlanModeName::Trunk })
    }

    /// The checks [`Config::validate`] makes of one port, as port `pi` of bridge `bi` (the
    /// field names of its errors): for a port changed alone.
    pub fn validate_in(&self, bi: usize, pi: usize) -> Result<(), ConfigError> {
        self.validate(&PortField(bi, pi))
    }

    fn validate(&self, pf: &PortField) -> Result<(), ConfigError> {
        if let Some(t) = self.tag {
            if t > 4094 {
                return Err(invalid(format!("{pf}.tag"), format!("VLAN {t} out of range 0-4094")));
            }
        }
        if let Some(tr) = &self.trunks {
            for (i, v) in tr.iter().enumerate() {
                if *v > 4094 {
                    return Err(invalid(
                        format!("{pf}.trunks[{i}]"),
                        format!("VLAN {v} out of range 0-4094"),
                    ));
                }
            }
        }
        match self.effective_vlan_mode() {
            VlanModeName::Access => {
                if self.tag.is_none() {
                    return Err(invalid(format!("{pf}.tag"), "vlan_mode access needs a tag"));
                }
                if self.trunks.as_ref().is_some_and(|t| !t.is_empty()) {
                    return Err(invalid(format!("{pf}.trunks"), "an access port has no trunks"));
                }
            }
            VlanModeName::Trunk => {
                if self.tag.is_some() {
                    return Err(invalid(
                        format!("{pf}.tag"),
                        "a trunk port has no tag (use native-tagged or native-untagged)",
                    ));
                }
            }
            VlanModeName::NativeTagged | VlanModeName::NativeUntagged => {
                if self.tag.is_none() {
                    return Err(invalid(format!("{pf}.tag"), "a native VLAN mode needs a tag"));
                }
            }
        }
        if let Some(macs) = &self.allowed_macs {
            // The all-zero MAC is allowed here alone: no frame's source is all-zero (such a
            // frame is dropped before the filter), so a list of it alone lets nothing through,
            // which is how the plan closes a VM port whose MAC is not known yet (an empty list
            // is no filter, as an absent one). Beside other MACs it would let an ARP sender of
            // all zeros through, and means nothing else.
            for (i, m) in macs.iter().enumerate() {
                if m.is_multicast() || (m.is_zero() && macs.len() > 1) {
                    return Err(invalid(
                        format!("{pf}.allowed_macs[{i}]"),
                        format!("{m} is not a unicast MAC"),
                    ));
                }
            }
        }
        if let Some(p) = &self.policy {
            p.validate(&format!("{pf}.policy"))
                .map_err(|e| ConfigError::Invalid { field: e.field, msg: e.msg })?;
        }
        for (i, m) in self.static_macs.iter().enumerate() {
            if m.is_multicast() || m.is_zero() {
                return Err(invalid(format!("{pf}.static_macs[{i}]"), format!("{m} is not a unicast MAC")));
            }
        }
        // Type options: each only with its types, each with a valid value.
        self.backend().map_err(|e| invalid(format!("{pf}.{}", e.field), e.msg))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let c = Config::from_yaml_str(
            r#"
bridges:
  - name: br1
    mac_aging_s: 300
    mac_table_size: 65536
    ports:
      - name: eth1
        type: afpacket
        vlan_mode: native-untagged
        tag: 100
        trunks: [101, 200]
        allowed_macs: []
        static_macs: []
        mac_limit: 4096
"#,
        )
        .unwrap();
        let p = &c.bridges[0].ports[0];
        assert_eq!(p.effective_vlan_mode(), VlanModeName::NativeUntagged);
        assert_eq!(p.trunks.as_deref(), Some(&[101, 200][..]));
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_yaml_str("bridges:\n- name: b\n  ports:\n  - name: p\n    tag: 5000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bridges[0].ports[0].tag"), "{e}");
        let e = Config::from_yaml_str("bridges:\n- name: b\n  ports:\n  - name: p\n    vlanmode: access\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vlanmode"), "{e}");
        let e = Config::from_yaml_str("bridges:\n- name: b\n  ports:\n  - name: p\n    allowed_macs: [zz]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a MAC"), "{e}");
        // The all-zero MAC alone closes the port; beside another MAC it is refused.
        let zero = |l: &str| {
            Config::from_yaml_str(&format!(
                "bridges:\n- name: b\n  ports:\n  - {{name: p, allowed_macs: [{l}]}}\n"
            ))
        };
        assert!(zero("'00:00:00:00:00:00'").is_ok());
        let e = zero("'02:00:00:00:00:01', '00:00:00:00:00:00'").unwrap_err().to_string();
        assert!(e.contains("allowed_macs[1]"), "{e}");
        let e = Config::from_yaml_str("bridges:\n- name: b\n  ports:\n  - name: p\n  - name: p\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bridges[0].ports[1].name"), "{e}");
        let e = Config::from_yaml_str(
            "bridges:\n- name: b\n  ports:\n  - name: p\n    type: ring\n    devargs: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bridges[0].ports[0].devargs"), "{e}");
        let vm = "bridges:\n- name: b\n  ports:\n  - name: p\n    type: vhostuser\n    socket: /tmp/x.sock\n";
        assert!(Config::from_yaml_str(&format!("{vm}    socket_mode: \"0660\"\n")).is_ok());
        assert!(Config::from_yaml_str(&format!("{vm}    offloads: true\n")).is_ok());
        let e = Config::from_yaml_str(&format!("{vm}    offloads: 3\n")).unwrap_err().to_string();
        assert!(e.contains("offloads"), "{e}");
        let e = Config::from_yaml_str(&format!("{vm}    socket_mode: \"0999\"\n")).unwrap_err().to_string();
        assert!(e.contains("bridges[0].ports[0].socket_mode"), "{e}");
        let e = Config::from_yaml_str(&format!("{vm}    mode: client\n    socket_mode: \"0660\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("socket_mode"), "{e}");
        // Values no backend takes are refused here, not left to a port that never opens.
        for (extra, field) in [("    queues: 0\n", "queues"), ("    queues: 65535\n", "queues")] {
            let e = Config::from_yaml_str(&format!("{vm}{extra}")).unwrap_err().to_string();
            assert!(e.contains(&format!("bridges[0].ports[0].{field}:")), "{e}");
        }
        // One socket, one port: the second server's bind would unlink the first one's path.
        let two = format!("{vm}  - name: q\n    type: vhostuser\n    socket: /tmp/x.sock\n");
        let e = Config::from_yaml_str(&two).unwrap_err().to_string();
        assert!(e.contains("bridges[0].ports[1].socket:") && e.contains("\"p\""), "{e}");
        let apart = format!("{vm}  - name: q\n    type: vhostuser\n    socket: /tmp/y.sock\n");
        assert!(Config::from_yaml_str(&apart).is_ok());
        for kind in ["afxdp\n    iface: eth1", "dpdk\n    devargs: net_null0"] {
            let y = format!("bridges:\n- name: b\n  ports:\n  - name: p\n    type: {kind}\n");
            for q in ["0", "1025"] {
                let e = Config::from_yaml_str(&format!("{y}    queues: {q}\n")).unwrap_err().to_string();
                assert!(e.contains("bridges[0].ports[0].queues:"), "{kind} {q}: {e}");
            }
            assert!(Config::from_yaml_str(&format!("{y}    queues: 1024\n")).is_ok(), "{kind}");
        }
        let tap = "bridges:\n- name: b\n  ports:\n  - name: p\n    type: tap\n";
        for iface in ["sixteen-bytes-xx", "\"a/b\"", "\"a b\"", "\"a\\0b\""] {
            let e = Config::from_yaml_str(&format!("{tap}    iface: {iface}\n")).unwrap_err().to_string();
            assert!(e.contains("bridges[0].ports[0].iface:"), "{iface}: {e}");
        }
        let e = Config::from_yaml_str(&tap.replace("name: p", "name: a-port-name-too-long"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bridges[0].ports[0].name:"), "{e}");
    }

    #[test]
    fn tunnel_ports_parse_and_are_checked() {
        let c = Config::from_yaml_str(
            r#"
bridges:
  - name: br1
    ports:
      - name: tun0
        type: vxlan
        vni: 5001
        local: 192.0.2.1
        dstport: 4789
        underlay: kernel
        flood: [192.0.2.2, 192.0.2.3]
        remote_macs:
          - {mac: "02:00:00:00:0b:01", remote: 192.0.2.2}
        learn: true
"#,
        )
        .unwrap();
        let p = &c.bridges[0].ports[0];
        assert_eq!((p.kind, p.vni, p.learn), (Some(PortType::Vxlan), Some(5001), Some(true)));
        assert_eq!(p.remote_macs[0].remote, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.effective_vlan_mode(), VlanModeName::Trunk);
        let port = |extra: &str| format!("bridges:\n- name: b\n  ports:\n  - name: t\n{extra}");
        let bad = [
            ("    type: geneve\n    local: 10.0.0.1\n", "ports[0].vni"),
            ("    type: geneve\n    vni: 16777216\n    local: 10.0.0.1\n", "ports[0].vni"),
            ("    type: vxlan\n    vni: 1\n", "ports[0].local"),
            ("    type: vxlan\n    vni: 1\n    local: 10.0.0.1\n    flood: [\"fd00::2\"]\n", "flood[0]"),
            (
                "    type: vxlan\n    vni: 1\n    local: fd00::1\n    remote_macs: [{mac: \"ff:ff:ff:ff:ff:ff\", remote: \"fd00::2\"}]\n",
                "remote_macs[0].mac",
            ),
            ("    type: afpacket\n    vni: 1\n", "ports[0].vni"),
        ];
        for (y, field) in bad {
            let e = Config::from_yaml_str(&port(y)).unwrap_err().to_string();
            assert!(e.contains(field), "{y}: {e}");
        }
        assert!(Config::from_yaml_str(&port(
            "    type: geneve\n    vni: 7\n    local: fd00::1\n    flood: [\"fd00::2\"]\n"
        ))
        .is_ok());
    }

    /// Tunnel ports on one uplink (`eth1` and `afpacket:eth1` being one): one local address,
    /// encapsulation and UDP port, one port per VNI; on other uplinks or the kernel
    /// transport, anything.
    #[test]
    fn tunnel_ports_sharing_an_uplink_agree() {
        let tun = |name: &str, kind: &str, vni: u32, local: &str, underlay: &str| {
            format!(
                "  - {{name: {name}, type: {kind}, vni: {vni}, local: {local}, underlay: \"{underlay}\"}}\n"
            )
        };
        let two = |a: String, b: String| {
            Config::from_yaml_str(&format!("bridges:\n- name: b1\n  ports:\n{a}- name: b2\n  ports:\n{b}"))
        };
        let ok = |a, b| two(a, b).unwrap_or_else(|e| panic!("{e}"));
        ok(tun("t1", "vxlan", 1, "192.0.2.1", "eth1"), tun("t2", "vxlan", 2, "192.0.2.1", "afpacket:eth1"));
        ok(tun("t1", "vxlan", 1, "192.0.2.1", "eth1"), tun("t2", "vxlan", 1, "192.0.2.9", "eth2"));
        ok(tun("t1", "vxlan", 1, "192.0.2.1", "eth1"), tun("t2", "geneve", 1, "192.0.2.9", "kernel"));
        let err = |a, b| two(a, b).expect_err("refused").to_string();
        let e = err(
            tun("t1", "vxlan", 1, "192.0.2.1", "eth1"),
            tun("t2", "vxlan", 2, "192.0.2.2", "afpacket:eth1"),
        );
        assert!(e.starts_with("bridges[1].ports[0].local: 192.0.2.2 differs from 192.0.2.1"), "{e}");
        assert!(e.contains("bridges[0].ports[0] (t1)") && e.contains("\"afpacket:eth1\""), "{e}");
        let e = err(
            tun("t1", "vxlan", 1, "192.0.2.1", "dpdk:net_af_packet0,iface=eth0"),
            tun("t2", "geneve", 2, "192.0.2.1", "dpdk:net_af_packet0,iface=eth0"),
        );
        assert!(
            e.starts_with("bridges[1].ports[0].dstport: geneve port 6081 differs from vxlan port 4789"),
            "{e}"
        );
        let e = err(
            tun("t1", "vxlan", 1, "192.0.2.1", "eth1"),
            tun("t2", "vxlan", 2, "192.0.2.1", "afpacket:eth1,recvmmsg"),
        );
        assert!(e.starts_with("bridges[1].ports[0].underlay: \"afpacket:eth1,recvmmsg\" differs"), "{e}");
        // One interface is one kind of uplink when AF_XDP opens it.
        let e =
            err(tun("t1", "vxlan", 1, "192.0.2.1", "eth1"), tun("t2", "vxlan", 2, "192.0.2.1", "afxdp:eth1"));
        assert!(
            e.starts_with(
                "bridges[1].ports[0].underlay: an AF_XDP uplink on interface \"eth1\", which \
                 bridges[0].ports[0] (t1), an AF_PACKET uplink, opens already"
            ),
            "{e}"
        );
        // Nor does a port share an interface with an uplink, or another port, when either
        // opens it over AF_XDP (review R1); AF_PACKET alone may.
        let port = |name: &str, kind: &str, iface: &str| {
            format!("  - {{name: {name}, type: {kind}, iface: {iface}}}\n")
        };
        for (a, b, field, what) in [
            (
                port("p1", "afxdp", "eth1"),
                tun("t2", "vxlan", 2, "192.0.2.1", "eth1"),
                "underlay",
                "an AF_PACKET uplink",
            ),
            (
                port("p1", "afpacket", "eth1"),
                tun("t2", "vxlan", 2, "192.0.2.1", "afxdp:eth1"),
                "underlay",
                "an AF_XDP uplink",
            ),
            (
                tun("t1", "vxlan", 1, "192.0.2.1", "afxdp:eth1,queues=2"),
                port("p2", "afpacket", "eth1"),
                "iface",
                "an AF_PACKET port",
            ),
            (port("p1", "afxdp", "eth1"), port("p2", "afxdp", "eth1"), "iface", "an AF_XDP port"),
        ] {
            let e = err(a, b);
            assert!(
                e.starts_with(&format!(
                    "bridges[1].ports[0].{field}: {what} on interface \"eth1\", which bridges[0].ports[0] ("
                )),
                "{e}"
            );
        }
        ok(port("p1", "afpacket", "eth1"), port("p2", "afpacket", "eth1"));
        ok(port("p1", "afpacket", "eth1"), tun("t2", "vxlan", 2, "192.0.2.1", "eth1"));
        ok(port("p1", "afxdp", "eth1"), port("p2", "afpacket", "eth2"));
        ok(
            tun("t1", "vxlan", 1, "192.0.2.1", "afxdp:eth1"),
            tun("t2", "vxlan", 2, "192.0.2.1", "afpacket:eth2"),
        );
        // An AF_XDP uplink's queue count is part of how the one uplink opens.
        ok(
            tun("t1", "vxlan", 1, "192.0.2.1", "afxdp:eth1"),
            tun("t2", "vxlan", 2, "192.0.2.1", "afxdp:eth1"),
        );
        let e = err(
            tun("t1", "vxlan", 1, "192.0.2.1", "afxdp:eth1,queues=2"),
            tun("t2", "vxlan", 2, "192.0.2.1", "afxdp:eth1"),
        );
        assert!(e.starts_with("bridges[1].ports[0].underlay: \"afxdp:eth1\" differs"), "{e}");
        // The default queue count spelled out or not is one uplink opened one way, in either
        // order; so is AF_PACKET's default receive mode. Another count or mode is refused.
        for (a, b) in [
            ("afxdp:eth1", "afxdp:eth1,queues=1"),
            ("afxdp:eth1,queues=1", "afxdp:eth1"),
            ("eth1", "afpacket:eth1,ring"),
            ("afpacket:eth1,ring", "eth1"),
        ] {
            ok(tun("t1", "vxlan", 1, "192.0.2.1", a), tun("t2", "vxlan", 2, "192.0.2.1", b));
        }
        for (a, b) in [
            ("afxdp:eth1,queues=1", "afxdp:eth1,queues=2"),
            ("afxdp:eth1,queues=2", "afxdp:eth1,queues=1"),
            ("afpacket:eth1,ring", "afpacket:eth1,recvmmsg"),
        ] {
            let e = err(tun("t1", "vxlan", 1, "192.0.2.1", a), tun("t2", "vxlan", 2, "192.0.2.1", b));
            assert!(
                e.starts_with(&format!("bridges[1].ports[0].underlay: \"{b}\" differs from \"{a}\"")),
                "{e}"
            );
        }
        let e = err(tun("t1", "vxlan", 7, "192.0.2.1", "eth1"), tun("t2", "vxlan", 7, "192.0.2.1", "eth1"));
        assert!(e.starts_with("bridges[1].ports[0].vni: VNI 7 is served already"), "{e}");
    }

    #[test]
    fn afxdp_ports_take_an_interface_and_queues() {
        let y =
            "bridges:\n- name: b\n  ports:\n  - name: p\n    type: afxdp\n    iface: eth1\n    queues: 4\n";
        let c = Config::from_yaml_str(y).unwrap();
        let p = &c.bridges[0].ports[0];
        assert_eq!((p.kind, p.iface.as_deref(), p.queues), (Some(PortType::Afxdp), Some("eth1"), Some(4)));
        let e = Config::from_yaml_str(&y.replace("queues: 4", "rx_mode: ring")).unwrap_err().to_string();
        assert!(e.contains("rx_mode") && e.contains("port type afxdp"), "{e}");
    }

    #[test]
    fn rx_mode_is_an_afpacket_option() {
        let port = |t: &str, m: &str| {
            format!("bridges:\n- name: b\n  ports:\n  - name: p\n    type: {t}\n    rx_mode: {m}\n")
        };
        let c = Config::from_yaml_str(&port("afpacket", "recvmmsg")).unwrap();
        assert_eq!(c.bridges[0].ports[0].rx_mode, Some(AfPacketRxMode::Recvmmsg));
        let c = Config::from_yaml_str(&port("afpacket", "ring")).unwrap();
        assert_eq!(c.bridges[0].ports[0].rx_mode, Some(AfPacketRxMode::Ring));
        let e = Config::from_yaml_str(&port("tap", "ring")).unwrap_err().to_string();
        assert!(e.contains("bridges[0].ports[0].rx_mode") && e.contains("port type tap"), "{e}");
        let e = Config::from_yaml_str(&port("afpacket", "v2")).unwrap_err().to_string();
        assert!(e.contains("rx_mode") && e.contains("recvmmsg"), "{e}");
    }
}
