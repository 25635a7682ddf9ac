//! The network configuration the runtime passes on stdin, checked key by key.
//!
//! Invariant: a [`NetConf`] is only built from a configuration whose every key is known (the
//! CNI-level keys, the runtime's reserved `cni.dev/` keys, plus this plugin's, docs/cni.md) and whose every value is in range; the first
//! problem is a [`ConfError`] naming the key (`vlan`, `trunk[1].maxID`, ...), which the runtime
//! receives as error 7 (6 for JSON that does not parse, 1 for an unsupported `cniVersion`).

use crate::error::{code, CniError};
use crate::result::{CniResult, ResultError};
use crate::version::Version;
use serde_json::{Map, Value};
use std::path::PathBuf;
use switchyard_dataplane::buffer::DATA_ROOM;
use switchyard_dataplane::config::{parse_socket_mode, PortType};
use switchyard_dataplane::wire::MacAddr;

/// Where tombstones go when the config names no `stateDir` (the daemon's default CNI state).
pub use switchyard_control::cni::DEFAULT_CNI_STATE as DEFAULT_STATE_DIR;
/// The daemon's control socket when the config names none.
pub use switchyard_control::ctl::DEFAULT_SOCKET;

/// The largest `mtu` of a port the plugin attaches: a frame of that MTU, its Ethernet header
/// (14) and a VLAN tag (4) the port may push onto it fills one of the switch's buffers
/// ([`DATA_ROOM`]). QEMU tells a vhost-user guest the MTU (virtio-net's `mtu`), and a veth's
/// pod end sends frames (and, with offloads, TCP segments) that large: with a larger MTU every
/// full-size frame would be dropped as `oversize`.
pub const VHOST_MAX_MTU: u32 = (DATA_ROOM - 14 - 4) as u32;

/// Keys of the CNI spec that any plugin configuration may carry.
const CNI_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "ipam",
    "dns",
    "cni.dev/valid-attachments",
];
/// This plugin's keys.
const PLUGIN_KEYS: &[&str] = &[
    "bridge",
    "vlan",
    "trunk",
    "macspoofchk",
    "mtu",
    "mode",
    "socket",
    "stateDir",
    "vhostMode",
    "socketOwner",
    "socketGroup",
    "socketMode",
    "deviceID",
    "vethPort",
];

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("the network configuration is not valid JSON: {0}")]
    Decode(String),
    #[error("cniVersion {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    Version(String),
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
}

impl From<ConfError> for CniError {
    fn from(e: ConfError) -> CniError {
        let c = match e {
            ConfError::Decode(_) => code::DECODE,
            ConfError::Version(_) => code::INCOMPATIBLE_VERSION,
            ConfError::Field { .. } => code::INVALID_CONFIG,
        };
        CniError::new(c, e.to_string())
    }
}

impl From<ResultError> for ConfError {
    fn from(e: ResultError) -> ConfError {
        ConfError::Field { field: "prevResult".into(), msg: e.to_string() }
    }
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> ConfError {
    ConfError::Field { field: field.into(), msg: msg.into() }
}

/// How the attachment reaches the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A veth pair: the container end in the pod, the host end an AF_PACKET or AF_XDP port
    /// ([`VethPort`]).
    Veth,
    /// A vhost-user socket that the VM's QEMU uses.
    Vhostuser,
}

/// How the switch reads the host end of a veth (`vethPort`, veth mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VethPort {
    /// An AF_PACKET socket (the default): any kernel, no BPF.
    Afpacket,
    /// AF_XDP sockets fed by an XDP program on the host end: the daemon needs CAP_BPF (or
    /// CAP_SYS_ADMIN) besides CAP_NET_ADMIN and CAP_NET_RAW.
    Afxdp,
}

impl VethPort {
    /// The switch's port type of that name (the config file's `type`).
    pub fn port_type(self) -> PortType {
        match self {
            VethPort::Afpacket => PortType::Afpacket,
            VethPort::Afxdp => PortType::Afxdp,
        }
    }
}

/// Which side of the vhost-user socket listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostMode {
    /// The switch listens, QEMU connects (the default).
    Server,
    /// QEMU listens, the switch connects.
    Client,
}

impl VhostMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VhostMode::Server => "server",
            VhostMode::Client => "client",
        }
    }
}

/// One attachment the runtime still considers valid (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValidAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// A checked network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub bridge: String,
    /// The access (or native) VLAN; `vlan: 0` is no VLAN, as in the bridge plugin.
    pub vlan: Option<u16>,
    /// Trunked VLANs, sorted, without duplicates.
    pub trunk: Vec<u16>,
    pub macspoofchk: bool,
    pub mtu: Option<u32>,
    /// The IPAM plugin's type, when the config delegates addresses to one.
    pub ipam: Option<String>,
    pub mode: Mode,
    /// veth mode: the port type of the host end.
    pub veth_port: VethPort,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub vhost_mode: VhostMode,
    pub socket_owner: Option<u32>,
    pub socket_group: Option<u32>,
    pub socket_mode: Option<String>,
    /// `runtimeConfig.mac` (the `mac` capability), else `args.cni.mac`.
    pub mac: Option<MacAddr>,
    /// `runtimeConfig.CNIDeviceInfoFile`.
    pub device_info_file: Option<PathBuf>,
    /// vhostuser: the device of switchyard's device plugin that the kubelet allocated to the
    /// pod, `deviceID` as Multus adds it for a network whose NAD names a resource (or
    /// `runtimeConfig.deviceID`): the socket goes in that device's directory (docs/kubevirt.md).
    pub device_id: Option<String>,
    pub dns: Map<String, Value>,
    pub prev_result: Option<CniResult>,
    /// GC: `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The `cniVersion` of a configuration, read as leniently as possible: errors are reported
/// in the config's own version when it has a readable one.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

fn uint(v: &Value, field: &str, max: u64) -> Result<u64, ConfError> {
    match v.as_u64() {
        Some(n) if n <= max => Ok(n),
        _ => Err(bad(field, format!("must be an integer from 0 to {max} (got {v})"))),
    }
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, ConfError> {
    v.as_str().ok_or_else(|| bad(field, format!("must be a string (got {v})")))
}

/// A uid or gid: a number, or a string of digits.
fn id(v: &Value, field: &str) -> Result<u32, ConfError> {
    let n = match v {
        Value::String(s) => s.parse::<u32>().ok(),
        _ => v.as_u64().and_then(|n| u32::try_from(n).ok()),
    };
    n.ok_or_else(|| bad(field, format!("must be a numeric uid/gid (got {v})")))
}

/// A device id of switchyard's device plugin (the daemon's rules: a file-name component).
fn device(v: &Value, field: &str) -> Result<String, ConfError> {
    let s = string(v, field)?;
    switchyard_control::cni::device_dir("/", s).map_err(|e| bad(field, e.to_string()))?;
    Ok(s.to_string())
}

fn mac(v: &Value, field: &str) -> Result<MacAddr, ConfError> {
    let s = string(v, field)?;
    let m: MacAddr = s.parse().map_err(|e| bad(field, format!("{e}")))?;
    if m.is_multicast() || m.is_zero() {
        return Err(bad(field, format!("{s} is not a unicast MAC address")));
    }
    Ok(m)
}

/// `[{"id": N}, {"minID": A, "maxID": B}]`: VLANs 1 to 4094, as the bridge plugin reads them.
fn trunk(v: &Value) -> Result<Vec<u16>, ConfError> {
    let items = v.as_array().ok_or_else(|| bad("trunk", "must be an array of {id} or {minID, maxID}"))?;
    // A set, not a list to sort: each range item costs no more than an `id` (a list of
    // `{"minID": 1, "maxID": 4094}` items would grow by 4094 entries for every 24 bytes).
    let mut set = [false; 4095];
    for (i, item) in items.iter().enumerate() {
        let f = format!("trunk[{i}]");
        let o = item.as_object().ok_or_else(|| bad(&f, "must be an object: {id} or {minID, maxID}"))?;
        if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "id" | "minID" | "maxID")) {
            return Err(bad(format!("{f}.{k}"), "unknown key (want id, or minID and maxID)"));
        }
        let vid = |k: &str| -> Result<Option<u16>, ConfError> {
            match o.get(k) {
                None => Ok(None),
                Some(x) => match x.as_u64() {
                    Some(n @ 1..=4094) => Ok(Some(n as u16)),
                    _ => Err(bad(format!("{f}.{k}"), format!("must be a VLAN from 1 to 4094 (got {x})"))),
                },
            }
        };
        match (vid("minID")?, vid("maxID")?) {
            (Some(a), Some(b)) if a <= b => set[usize::from(a)..=usize::from(b)].fill(true),
            (Some(a), Some(b)) => {
                return Err(bad(format!("{f}.minID"), format!("{a} is greater than maxID {b}")))
            }
            (None, Some(_)) => return Err(bad(format!("{f}.minID"), "missing (maxID needs it)")),
            (Some(_), None) => return Err(bad(format!("{f}.maxID"), "missing (minID needs it)")),
            (None, None) => {}
        }
        match vid("id")? {
            Some(n) => set[usize::from(n)] = true,
            None if !o.contains_key("minID") => return Err(bad(&f, "needs id, or minID and maxID")),
            None => {}
        }
    }
    Ok((1..=4094u16).filter(|&v| set[usize::from(v)]).collect())
}

fn valid_attachments(key: &str, v: &Value) -> Result<Vec<ValidAttachment>, ConfError> {
    let items = v.as_array().ok_or_else(|| bad(key, "must be an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let get = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{key}[{i}].{k}"), "missing or not a string"))
            };
            Ok(ValidAttachment { container_id: get("containerID")?, ifname: get("ifname")? })
        })
        .collect()
}

impl NetConf {
    /// Parses and checks the configuration bytes from stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| ConfError::Decode(e.to_string()))?;
        let o = v
            .as_object()
            .ok_or_else(|| ConfError::Decode("the configuration is not a JSON object".into()))?;
        Self::from_map(o)
    }

    fn from_map(o: &Map<String, Value>) -> Result<NetConf, ConfError> {
        // `cni.dev/` keys are the runtime's (the spec reserves the prefix): libcni 1.2.3 and
        // later send GC's list under two names, and a newer runtime may add more.
        if let Some(k) = o.keys().find(|k| {
            !CNI_KEYS.contains(&k.as_str())
                && !PLUGIN_KEYS.contains(&k.as_str())
                && !k.starts_with("cni.dev/")
        }) {
            let hint = match k.as_str() {
                "vlanTrunk" => " (switchyard's key for it is \"trunk\")",
                _ => "",
            };
            return Err(bad(k, format!("unknown key{hint}")));
        }
        let version = match o.get("cniVersion") {
            None => return Err(bad("cniVersion", "missing")),
            Some(v) => {
                let s = string(v, "cniVersion")?;
                Version::parse(s).ok_or_else(|| ConfError::Version(s.to_string()))?
            }
        };
        let name = match o.get("name") {
            Some(v) => string(v, "name")?.to_string(),
            None => String::new(),
        };
        let bridge = match o.get("bridge") {
            None => return Err(bad("bridge", "missing (the name of a bridge of the running switch)")),
            Some(v) => string(v, "bridge")?.to_string(),
        };
        if bridge.is_empty() {
            return Err(bad("bridge", "must not be empty"));
        }
        let vlan = match o.get("vlan") {
            None | Some(Value::Null) => None,
            Some(v) => Some(uint(v, "vlan", 4094)? as u16).filter(|&t| t != 0),
        };
        let trunk = match o.get("trunk") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => trunk(v)?,
        };
        // Off unless asked for, as in the reference bridge plugin (`MacSpoofChk bool`,
        // `omitempty`): a key the bridge plugin also has means what it means there.
        let macspoofchk = match o.get("macspoofchk") {
            None | Some(Value::Null) => false,
            Some(v) => {
                v.as_bool().ok_or_else(|| bad("macspoofchk", format!("must be true or false (got {v})")))?
            }
        };
        let mtu = match o.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match uint(v, "mtu", 65535)? {
                0 => None,
                m if m < 68 => return Err(bad("mtu", format!("must be from 68 to 65535 (got {m})"))),
                m => Some(m as u32),
            },
        };
        let ipam = match o.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(i)) => match i.get("type") {
                None => None,
                Some(t) => Some(string(t, "ipam.type")?.to_string()).filter(|t| !t.is_empty()),
            },
            Some(v) => return Err(bad("ipam", format!("must be an object (got {v})"))),
        };
        if let Some(t) = &ipam {
            if t.contains('/') || t == "." || t == ".." {
                return Err(bad("ipam.type", format!("{t:?} is not a plugin name")));
            }
        }
        let mode = match o.get("mode") {
            None | Some(Value::Null) => Mode::Veth,
            Some(v) => match string(v, "mode")? {
                "veth" => Mode::Veth,
                "vhostuser" => Mode::Vhostuser,
                m => return Err(bad("mode", format!("{m:?}: want \"veth\" or \"vhostuser\""))),
            },
        };
        // As the vhost-user keys in veth mode: a key that would mean nothing is a mistake.
        if mode == Mode::Vhostuser && o.contains_key("vethPort") {
            return Err(bad("vethPort", "applies only to \"mode\": \"veth\""));
        }
        let veth_port = match o.get("vethPort") {
            None | Some(Value::Null) => VethPort::Afpacket,
            Some(v) => match string(v, "vethPort")? {
                "afpacket" => VethPort::Afpacket,
                "afxdp" => VethPort::Afxdp,
                m => return Err(bad("vethPort", format!("{m:?}: want \"afpacket\" or \"afxdp\""))),
            },
        };
        // Either mode: a veth's host end is an AF_PACKET or AF_XDP port with the same buffers.
        if let Some(m) = mtu.filter(|&m| m > VHOST_MAX_MTU) {
            return Err(bad(
                "mtu",
                format!(
                    "{m} is too large: at most {VHOST_MAX_MTU} (the switch's buffers hold \
                     {DATA_ROOM}-byte frames: MTU + 14-byte header + a 4-byte VLAN tag)"
                ),
            ));
        }
        let path = |k: &str, default: &str| -> Result<PathBuf, ConfError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(PathBuf::from(default)),
                Some(v) => {
                    let s = string(v, k)?;
                    if s.is_empty() {
                        return Err(bad(k, "must not be empty"));
                    }
                    Ok(PathBuf::from(s))
                }
            }
        };
        let socket = path("socket", DEFAULT_SOCKET)?;
        let state_dir = path("stateDir", DEFAULT_STATE_DIR)?;
        // The vhost-user keys mean nothing to a veth: naming one there is a mistake to report.
        if mode == Mode::Veth {
            if let Some(k) = ["vhostMode", "socketOwner", "socketGroup", "socketMode", "deviceID"]
                .iter()
                .find(|k| o.contains_key(**k))
            {
                return Err(bad(*k, "applies only to \"mode\": \"vhostuser\""));
            }
        }
        let vhost_mode = match o.get("vhostMode") {
            None | Some(Value::Null) => VhostMode::Server,
            Some(v) => match string(v, "vhostMode")? {
                "server" => VhostMode::Server,
                "client" => VhostMode::Client,
                m => return Err(bad("vhostMode", format!("{m:?}: want \"server\" or \"client\""))),
            },
        };
        let socket_owner = o.get("socketOwner").map(|v| id(v, "socketOwner")).transpose()?;
        let socket_group = o.get("socketGroup").map(|v| id(v, "socketGroup")).transpose()?;
        let socket_mode = match o.get("socketMode") {
            None => None,
            // QEMU creates a client-mode socket; its mode is QEMU's business.
            Some(_) if vhost_mode == VhostMode::Client => {
                return Err(bad(
                    "socketMode",
                    "applies only to \"vhostMode\": \"server\" (the switch creates the socket)",
                ))
            }
            Some(v) => {
                let s = string(v, "socketMode")?;
                if parse_socket_mode(s).is_none() {
                    return Err(bad("socketMode", format!("{s:?} is not an octal mode such as \"0660\"")));
                }
                Some(s.to_string())
            }
        };
        let mut mac_v = None;
        if let Some(a) = o.get("args") {
            let a = a.as_object().ok_or_else(|| bad("args", "must be an object"))?;
            if let Some(m) = a.get("cni").and_then(|c| c.get("mac")) {
                mac_v = Some(mac(m, "args.cni.mac")?);
            }
        }
        let mut device_info_file = None;
        let mut device_id = o.get("deviceID").map(|v| device(v, "deviceID")).transpose()?;
        if let Some(rc) = o.get("runtimeConfig") {
            let rc = rc.as_object().ok_or_else(|| bad("runtimeConfig", "must be an object"))?;
            match rc.get("mac") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(m) => mac_v = Some(mac(m, "runtimeConfig.mac")?),
            }
            if let (None, Some(d)) = (&device_id, rc.get("deviceID")) {
                if mode == Mode::Veth {
                    return Err(bad("runtimeConfig.deviceID", "applies only to \"mode\": \"vhostuser\""));
                }
                device_id = Some(device(d, "runtimeConfig.deviceID")?);
            }
            match rc.get("CNIDeviceInfoFile") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(f) => {
                    device_info_file = Some(PathBuf::from(string(f, "runtimeConfig.CNIDeviceInfoFile")?))
                }
            }
        }
        let dns = match o.get("dns") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(d)) => d.clone(),
            Some(_) => return Err(bad("dns", "must be an object")),
        };
        let prev_result = match o.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(p) => Some(CniResult::parse(p)?),
        };
        // The spec's name, else the name spec 1.1.0 was first published with (libcni sends
        // both); `null` is how libcni (Go) writes an empty list.
        let valid_attachments = ["cni.dev/valid-attachments", "cni.dev/attachments"]
            .iter()
            .find_map(|k| o.get(*k).map(|v| (*k, v)))
            .map(|(k, v)| match v {
                Value::Null => Ok(Vec::new()),
                v => valid_attachments(k, v),
            })
            .transpose()?;
        Ok(NetConf {
            version,
            name,
            bridge,
            vlan,
            trunk,
            macspoofchk,
            mtu,
            ipam,
            mode,
            veth_port,
            socket,
            state_dir,
            vhost_mode,
            socket_owner,
            socket_group,
            socket_mode,
            mac: mac_v,
            device_info_file,
            device_id,
            dns,
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, ConfError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    /// A config of 40,000 full-range trunk items (1 MB) parses without a large allocation:
    /// the peak RSS grows by far less than the 320 MiB that expanding every range took.
    #[test]
    fn trunk_ranges_do_not_amplify() {
        let items = vec![json!({"minID": 1, "maxID": 4094}); 40_000];
        let conf = json!({"cniVersion": "1.0.0", "bridge": "br0", "trunk": items}).to_string();
        let (r, grew) = testkit::peak_rss_growth(|| NetConf::parse(conf.as_bytes()));
        assert_eq!(r.unwrap().trunk, (1..=4094).collect::<Vec<u16>>());
        assert!(grew < 128 << 20, "peak RSS grew by {} MiB", grew >> 20);
    }

    fn field_of(e: ConfError) -> String {
        match e {
            ConfError::Field { field, .. } => field,
            e => panic!("not a field error: {e}"),
        }
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "switchyard", "bridge": "br1"}))
            .unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!((c.vlan, c.trunk.is_empty(), c.macspoofchk, c.mode), (None, true, false, Mode::Veth));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.ipam, None);
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(json!({
            "cniVersion": "0.3.1", "name": "n", "type": "switchyard", "bridge": "br1", "vlan": 10,
            "trunk": [{"id": 20}, {"minID": 100, "maxID": 102}, {"id": 101}], "macspoofchk": false,
            "mtu": 2000, "mode": "vhostuser", "socket": "/s", "stateDir": "/d", "vhostMode": "server",
            "socketOwner": 107, "socketGroup": "107", "socketMode": "0660",
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"},
            "runtimeConfig": {"mac": "02:00:00:00:00:0a", "CNIDeviceInfoFile": "/f"},
            "args": {"cni": {"mac": "02:00:00:00:00:0b"}}, "capabilities": {"mac": true}, "dns": {}
        }))
        .unwrap();
        assert_eq!(c.vlan, Some(10));
        assert_eq!(c.trunk, vec![20, 100, 101, 102]);
        assert_eq!(
            (c.macspoofchk, c.mtu, c.mode, c.vhost_mode),
            (false, Some(2000), Mode::Vhostuser, VhostMode::Server)
        );
        assert_eq!(
            (c.socket_owner, c.socket_group, c.socket_mode.as_deref()),
            (Some(107), Some(107), Some("0660"))
        );
        assert_eq!(c.ipam.as_deref(), Some("host-local"));
        // runtimeConfig.mac wins over args.cni.mac.
        assert_eq!(c.mac, Some("02:00:00:00:00:0a".parse().unwrap()));
        assert_eq!(c.device_info_file, Some(PathBuf::from("/f")));
    }

    #[test]
    fn problems_name_their_key() {
        let base = json!({"cniVersion": "1.0.0", "name": "n", "type": "switchyard", "bridge": "br1"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            parse(b).unwrap_err()
        };
        assert_eq!(field_of(with("colour", json!("blue"))), "colour");
        assert!(with("vlanTrunk", json!([])).to_string().contains("\"trunk\""));
        assert_eq!(field_of(with("vlan", json!(4095))), "vlan");
        assert_eq!(field_of(with("vlan", json!(-1))), "vlan");
        assert_eq!(field_of(with("trunk", json!([{"id": 0}]))), "trunk[0].id");
        assert_eq!(field_of(with("trunk", json!([{"id": 2}, {"minID": 5, "maxID": 4}]))), "trunk[1].minID");
        assert_eq!(field_of(with("trunk", json!([{"maxID": 4}]))), "trunk[0].minID");
        assert_eq!(field_of(with("trunk", json!([{"vid": 4}]))), "trunk[0].vid");
        assert_eq!(field_of(with("trunk", json!([{}]))), "trunk[0]");
        assert_eq!(field_of(with("mtu", json!(20))), "mtu");
        assert_eq!(field_of(with("macspoofchk", json!("yes"))), "macspoofchk");
        assert_eq!(field_of(with("mode", json!("tap"))), "mode");
        assert_eq!(field_of(with("vhostMode", json!("server"))), "vhostMode");
        assert_eq!(field_of(with("runtimeConfig", json!({"mac": "01:00:5e:00:00:01"}))), "runtimeConfig.mac");
        assert_eq!(field_of(with("bridge", json!(""))), "bridge");
        let mut nb = base.clone();
        nb.as_object_mut().unwrap().remove("bridge");
        assert_eq!(field_of(parse(nb).unwrap_err()), "bridge");
        let mut vh = base.clone();
        vh["mode"] = json!("vhostuser");
        vh["socketMode"] = json!("0999");
        assert_eq!(field_of(parse(vh.clone()).unwrap_err()), "socketMode");
        vh["socketMode"] = json!("0660");
        // An MTU whose frames would not fit the switch's buffers, in either mode.
        vh["mtu"] = json!(VHOST_MAX_MTU + 1);
        let e = parse(vh.clone()).unwrap_err();
        assert!(e.to_string().contains("at most 2030"), "{e}");
        assert_eq!(field_of(e), "mtu");
        vh["mtu"] = json!(VHOST_MAX_MTU);
        assert_eq!(parse(vh.clone()).unwrap().mtu, Some(2030));
        vh.as_object_mut().unwrap().remove("mtu");
        let mut veth = base.clone();
        veth["mtu"] = json!(9000);
        assert_eq!(field_of(parse(veth.clone()).unwrap_err()), "mtu");
        veth["mtu"] = json!(VHOST_MAX_MTU);
        assert_eq!(parse(veth).unwrap().mtu, Some(2030));
        vh["vhostMode"] = json!("client");
        let mut dev = base.clone();
        dev["mode"] = json!("vhostuser");
        dev["deviceID"] = json!("sy-1");
        assert_eq!(parse(dev.clone()).unwrap().device_id.as_deref(), Some("sy-1"));
        dev["deviceID"] = json!("../etc");
        assert_eq!(field_of(parse(dev.clone()).unwrap_err()), "deviceID");
        dev.as_object_mut().unwrap().remove("deviceID");
        dev["runtimeConfig"] = json!({"deviceID": "sy-2"});
        assert_eq!(parse(dev).unwrap().device_id.as_deref(), Some("sy-2"));
        assert_eq!(field_of(with("deviceID", json!("sy-1"))), "deviceID");
        assert_eq!(field_of(parse(vh).unwrap_err()), "socketMode");
        assert!(matches!(with("cniVersion", json!("0.2.0")), ConfError::Version(_)));
        assert!(matches!(NetConf::parse(b"{\"cniVersion\": "), Err(ConfError::Decode(_))));
        assert_eq!(CniError::from(NetConf::parse(b"[1]").unwrap_err()).code, code::DECODE);
    }

    /// `vethPort` picks the host end's port type in veth mode (AF_PACKET unless asked); an
    /// unknown value, a non-string and any use in vhost-user mode are refused naming the key.
    #[test]
    fn veth_port_is_read_and_refused_where_it_means_nothing() {
        let base = json!({"cniVersion": "1.0.0", "name": "n", "type": "switchyard", "bridge": "br1"});
        let with = |extra: Value| {
            let mut b = base.clone();
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(b)
        };
        assert_eq!(with(json!({})).unwrap().veth_port, VethPort::Afpacket);
        assert_eq!(with(json!({"vethPort": null})).unwrap().veth_port, VethPort::Afpacket);
        assert_eq!(with(json!({"vethPort": "afpacket"})).unwrap().veth_port, VethPort::Afpacket);
        let x = with(json!({"vethPort": "afxdp", "mode": "veth"})).unwrap();
        assert_eq!((x.veth_port, x.veth_port.port_type()), (VethPort::Afxdp, PortType::Afxdp));
        for bad_value in [json!("xdp"), json!("AFXDP"), json!(""), json!(1), json!(true)] {
            let e = with(json!({"vethPort": bad_value})).unwrap_err();
            assert!(e.to_string().starts_with("vethPort: "), "{e}");
            assert_eq!(field_of(e), "vethPort");
        }
        let e = with(json!({"vethPort": "xdp"})).unwrap_err();
        assert!(e.to_string().contains("want \"afpacket\" or \"afxdp\""), "{e}");
        for v in [json!("afxdp"), json!("afpacket"), Value::Null] {
            let e = with(json!({"mode": "vhostuser", "vethPort": v})).unwrap_err();
            assert!(e.to_string().contains("applies only to \"mode\": \"veth\""), "{e}");
            assert_eq!(CniError::from(e.clone()).code, code::INVALID_CONFIG);
            assert_eq!(field_of(e), "vethPort");
        }
    }

    #[test]
    fn gc_attachments_are_read() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "switchyard", "bridge": "br1",
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "net1"}]}))
        .unwrap();
        assert_eq!(
            c.valid_attachments,
            Some(vec![ValidAttachment { container_id: "c1".into(), ifname: "net1".into() }])
        );
    }

    /// What libcni 1.2.3 and later inject for GC: the list under both names (`null` when the
    /// runtime keeps nothing); other `cni.dev/` keys are the runtime's and accepted.
    #[test]
    fn gc_config_as_libcni_writes_it_is_accepted() {
        let base = json!({"cniVersion": "1.1.0", "name": "n", "type": "switchyard", "bridge": "br1"});
        let list = json!([{"containerID": "c1", "ifname": "net1"}]);
        let mut both = base.clone();
        both["cni.dev/valid-attachments"] = list.clone();
        both["cni.dev/attachments"] = list.clone();
        let want = Some(vec![ValidAttachment { container_id: "c1".into(), ifname: "net1".into() }]);
        assert_eq!(parse(both).unwrap().valid_attachments, want);
        let mut old_name = base.clone();
        old_name["cni.dev/attachments"] = list;
        assert_eq!(parse(old_name).unwrap().valid_attachments, want);
        let mut null = base.clone();
        null["cni.dev/valid-attachments"] = Value::Null;
        null["cni.dev/attachments"] = Value::Null;
        assert_eq!(parse(null).unwrap().valid_attachments, Some(Vec::new()));
        let mut other = base.clone();
        other["cni.dev/some-future-key"] = json!(1);
        assert_eq!(parse(other).unwrap().valid_attachments, None);
        let mut bad_list = base;
        bad_list["cni.dev/valid-attachments"] = json!({});
        assert_eq!(field_of(parse(bad_list).unwrap_err()), "cni.dev/valid-attachments");
    }
}
