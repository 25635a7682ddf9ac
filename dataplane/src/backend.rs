//! A port's backend, typed: the port type with that type's options, and nothing else.
//!
//! The configuration file writes a backend flat on its port (`type: afpacket`, `iface: eth1`,
//! `rx_mode: recvmmsg`: [`PortConfig`]); validation converts it once into a [`Backend`]
//! ([`PortConfig::backend`]), where each type carries exactly its options and string-typed
//! settings are types. What opens ports (the factory), `pmd --port` ([`Backend`]'s `FromStr`)
//! and `run`'s backend overrides ([`PortConfig::set_backend`]) all go through this one enum, so
//! adding a backend is one new [`PortType`] and one new variant, and the compiler points at
//! every place that must handle it.
//!
//! Invariant: a `Backend` made by [`PortConfig::backend`] or by parsing passed every check of
//! its type's options (docs/semantics.md, port options); writing it back with
//! [`PortConfig::set_backend`] gives a port that converts to the same `Backend`.

use crate::config::{AfPacketRxMode, PortConfig, PortType, RemoteMac, UnderlayRoute};
use crate::tunnel::TunnelKind;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Who opens a vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhostMode {
    /// switchyard listens and takes the frontend (QEMU with `reconnect=`) back when it comes
    /// again.
    #[default]
    Server,
    /// switchyard connects (QEMU listens with `server=on`) and reconnects when it goes away.
    Client,
}

impl VhostMode {
    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            VhostMode::Server => "server",
            VhostMode::Client => "client",
        }
    }
}

/// Permissions of a socket switchyard creates (at most 0o777).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(u32);

impl SocketMode {
    /// An octal permission mode such as "0660" or "660".
    pub fn parse(s: &str) -> Option<SocketMode> {
        crate::config::parse_socket_mode(s).map(SocketMode)
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// The RX queues an AF_XDP port or uplink opens when `queues` is not given.
pub const AFXDP_DEFAULT_QUEUES: u16 = 1;

/// One port's backend: its type and that type's options. An option left `None` takes its
/// documented default where the port is opened (an interface or ring named like the port,
/// one queue pair, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An in-memory ring (its far end is reachable in the process), named `ring`.
    Ring { ring: Option<String> },
    /// Captures: `rx` is read (once, or forever from memory when `infinite`), `tx` written.
    Pcap { rx: Option<String>, tx: Option<String>, infinite: Option<bool> },
    /// A kernel interface over AF_PACKET.
    Afpacket { iface: Option<String>, rx_mode: Option<AfPacketRxMode> },
    /// A kernel interface over AF_XDP: its RX queues `0..queues` (default
    /// [`AFXDP_DEFAULT_QUEUES`]).
    Afxdp { iface: Option<String>, queues: Option<u16> },
    /// A TAP interface (created if it does not exist).
    Tap { iface: Option<String> },
    /// A vhost-user socket: `queues` queue pairs, `socket_mode` set on a socket it creates,
    /// `offloads`: checksum and TCP segmentation offload offered to the guest (default off).
    Vhostuser {
        socket: String,
        mode: Option<VhostMode>,
        socket_mode: Option<SocketMode>,
        queues: Option<u16>,
        offloads: Option<bool>,
    },
    /// A DPDK ethdev (a PCI address or a vdev string) with `queues` RX queues.
    Dpdk { devargs: String, queues: Option<u16> },
    /// A VXLAN or Geneve tunnel port (docs/overlay.md).
    Tunnel(TunnelBackend),
}

/// A tunnel port's settings, checked: a 24-bit VNI, a unicast local address, endpoints and
/// remote MACs of the local address's family, no MAC given twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelBackend {
    pub kind: TunnelKind,
    pub vni: u32,
    pub local: IpAddr,
    /// The UDP port (`None`: the encapsulation's default).
    pub dstport: Option<u16>,
    /// `None` or `kernel`: the kernel's UDP socket; otherwise an uplink port's name.
    pub underlay: Option<String>,
    pub flood: Option<Vec<IpAddr>>,
    pub remote_macs: Vec<RemoteMac>,
    /// Learn remote MACs from received frames (`None`: yes).
    pub learn: Option<bool>,
    /// Gateways towards endpoints off the uplink's link (an uplink underlay only).
    pub routes: Vec<UnderlayRoute>,
}

impl TunnelBackend {
    /// The UDP port, the encapsulation's default when none is configured.
    pub fn port(&self) -> u16 {
        self.dstport.unwrap_or(self.kind.default_port())
    }

    /// Whether `self` and `o` differ at most in what a running tunnel port changes in place
    /// (`PortBackend::update`): the flood list, the static remote MACs and learning. The
    /// encapsulation, VNI, local address, UDP port and underlay (the socket or uplink) are
    /// the same.
    /// The underlays are compared as they open ([`uplink_form`]): `eth1`, `afpacket:eth1` and
    /// `afpacket:eth1,ring` are one uplink, as are no underlay and `kernel`.
    pub fn same_transport(&self, o: &TunnelBackend) -> bool {
        (self.kind, self.vni, self.local, self.port()) == (o.kind, o.vni, o.local, o.port())
            && uplink_form(self.underlay.as_deref()) == uplink_form(o.underlay.as_deref())
    }

    /// What a tunnel port opened with these options holds, one value for every spelling of
    /// them: two tunnels with one form have the same transport ([`TunnelBackend::same_transport`])
    /// and the same remote table, so a reload neither reopens the port nor updates it in place.
    /// Left out when at their defaults: `dstport` (the encapsulation's port), `learn: true`,
    /// an empty `flood` list; the underlay as it opens ([`uplink_form`]: `kernel` is none,
    /// `eth1` is `afpacket:eth1`). The flood list is the set of endpoints a flooded frame is
    /// sent to (`tunnel::Remotes::update` keeps each endpoint once; the order the copies go out
    /// in is not a setting), so it is sorted and each address kept once; the static remote MACs
    /// are a table by MAC (a MAC given twice is refused), sorted by MAC; the underlay's routes
    /// are taken longest prefix first, as `underlay::Routes::new` orders them (routes of one
    /// length keep their order: the first that holds an endpoint wins).
    pub fn opened_form(&self) -> TunnelBackend {
        let mut flood = self.flood.clone().unwrap_or_default();
        flood.sort_unstable();
        flood.dedup();
        let mut remote_macs = self.remote_macs.clone();
        remote_macs.sort_unstable_by_key(|r| r.mac);
        let mut routes = self.routes.clone();
        routes.sort_by_key(|r| std::cmp::Reverse(r.dst.len));
        TunnelBackend {
            kind: self.kind,
            vni: self.vni,
            local: self.local,
            dstport: Some(self.port()).filter(|&p| p != self.kind.default_port()),
            underlay: uplink_form(self.underlay.as_deref()),
            flood: Some(flood).filter(|f| !f.is_empty()),
            remote_macs,
            learn: self.learn.filter(|&l| !l),
            routes,
        }
    }
}

/// The uplink a tunnel port's `underlay` names, as one key for every spelling of it
/// (`IFACE` is `afpacket:IFACE`; the options after the device, `afpacket:IFACE,recvmmsg` or
/// `dpdk:NAME,iface=..`, are not part of it: one interface or DPDK device is one uplink);
/// `None` for the kernel transport (`kernel` or none). Tunnel ports with one key share that
/// uplink, which the configuration check lets them do only with one spelling
/// ([`uplink_spelling`]).
pub fn uplink_key(underlay: Option<&str>) -> Option<String> {
    let spelled = uplink_spelling(underlay)?;
    Some(spelled.split(',').next().unwrap_or_default().to_string())
}

/// The uplink an underlay opens and how, one string for every spelling of it: the
/// [`uplink_spelling`] parsed as a port spec, taken in its [`Backend::opened_form`] and written
/// back, so `afxdp:IFACE,queues=1` is `afxdp:IFACE` ([`AFXDP_DEFAULT_QUEUES`] is 1) and
/// `afpacket:IFACE,ring` is `afpacket:IFACE` (ring is AF_PACKET's default receive mode).
/// Underlays with one form open one uplink the same way; what is compared of two underlays is
/// this, never their spelling. A DPDK uplink's devargs stay as [`canonical_devargs`] writes
/// them (DPDK's own options are not interpreted here); an underlay that does not parse as an
/// uplink is as spelled (the configuration check refuses it). `None` for the kernel transport.
pub fn uplink_form(underlay: Option<&str>) -> Option<String> {
    let spelled = uplink_spelling(underlay)?;
    // An uplink's spec always names its interface: the port name `opened_form` falls back on
    // is never used.
    Some(match spelled.parse::<Backend>().map(|b| b.opened_form(&spelled)) {
        Ok(Backend::Afpacket { iface: Some(iface), rx_mode }) => match rx_mode {
            None => format!("afpacket:{iface}"),
            Some(m) => format!("afpacket:{iface},{}", m.name()),
        },
        Ok(Backend::Afxdp { iface: Some(iface), queues }) => match queues {
            None => format!("afxdp:{iface}"),
            Some(n) => format!("afxdp:{iface},queues={n}"),
        },
        _ => spelled,
    })
}

/// The underlay as the uplink is opened from it: `IFACE` is `afpacket:IFACE`, a PCI device
/// of `dpdk:` in DPDK's spelling ([`canonical_devargs`]; a malformed one as given, for the
/// backend's check to refuse), the options kept.
pub fn uplink_spelling(underlay: Option<&str>) -> Option<String> {
    match underlay {
        None | Some("kernel") => None,
        Some(s) => match s.strip_prefix("dpdk:").map(canonical_devargs) {
            Some(Ok(d)) => Some(format!("dpdk:{d}")),
            _ if s.contains(':') => Some(s.to_string()),
            _ => Some(format!("afpacket:{s}")),
        },
    }
}

/// DPDK devargs with a PCI device in DPDK's own spelling of its name: `0000:3b:02.1` for
/// `3b:02.1`, `0000:3B:02.1` or `0:3b:2.1`: lower-case hex, the domain at least four
/// digits (what `rte_pci_device_name` writes, and so the name DPDK gives the ethdev). One
/// device spelled two ways is then one name to the ports that claim it (ports/src/dpdk.rs) and
/// to `rte_eth_dev_get_port_by_name`. A device name made only of hex digits, `:` and `.` with
/// a `:` in it is taken for a PCI address and must be one, `[DOMAIN:]BUS:DEVICE.FUNCTION`
/// (DOMAIN 1 to 8 hex digits, BUS 1 or 2, DEVICE 1 or 2 and at most 1f, FUNCTION 0 to 7);
/// any other name (a vdev such as `net_pcap0`) and the options after the first comma are kept
/// as they are.
pub fn canonical_devargs(devargs: &str) -> Result<String, String> {
    let (name, opts) = match devargs.split_once(',') {
        Some((n, o)) => (n.trim(), Some(o)),
        None => (devargs.trim(), None),
    };
    let pci_like = name.contains(':') && name.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    if !pci_like {
        return Ok(devargs.to_string());
    }
    let bad = || format!("{name:?} is not a PCI address ([DOMAIN:]BUS:DEVICE.FUNCTION, e.g. 0000:03:00.1)");
    let hex = |f: &str, max_digits: usize| {
        if f.is_empty() || f.len() > max_digits {
            return None;
        }
        u32::from_str_radix(f, 16).ok()
    };
    let (head, function) = name.rsplit_once('.').ok_or_else(bad)?;
    let fields: Vec<&str> = head.split(':').collect();
    let (domain, bus, device) = match fields.as_slice() {
        [b, d] => (Some(0), hex(b, 2), hex(d, 2)),
        [dom, b, d] => (hex(dom, 8), hex(b, 2), hex(d, 2)),
        _ => return Err(bad()),
    };
    let function = match function.as_bytes() {
        [f @ b'0'..=b'7'] => f - b'0',
        _ => return Err(bad()),
    };
    match (domain, bus, device) {
        (Some(dom), Some(b), Some(d)) if d <= 0x1f => {
            let canonical = format!("{dom:04x}:{b:02x}:{d:02x}.{function}");
            Ok(match opts {
                Some(o) => format!("{canonical},{o}"),
                None => canonical,
            })
        }
        _ => Err(bad()),
    }
}

/// The queue pairs a vhost-user port offers when `queues` is not given.
pub const VHOST_DEFAULT_QUEUE_PAIRS: u16 = 1;

/// Most queue pairs a vhost-user port offers: the vhost backend's limit (its rings and RX
/// claims are sized for it). virtio allows up to 0x8000 pairs and QEMU 511; a guest that
/// wants more than this gets a port refused at the configuration check rather than at open.
pub const VHOST_MAX_QUEUE_PAIRS: u16 = 8;

/// Most queues an afxdp or dpdk port may name (DPDK's `RTE_MAX_QUEUES_PER_PORT`).
pub const MAX_QUEUES: u16 = 1024;

/// The longest Linux interface name, in bytes (`IFNAMSIZ` less the NUL).
pub const IFNAME_MAX: usize = 15;

/// Why `name` can be no Linux interface's name, or `Ok`: the rules of the kernel's
/// `dev_valid_name` (1 to 15 bytes, not `.` or `..`, no `/`, `:` or white space, where white
/// space is the kernel's `isspace`: the ASCII set with vertical tab, and byte 0xA0), and no
/// NUL (the name goes to the kernel NUL-terminated). An interface of such a name cannot exist
/// or be created, so a port on one could never open.
pub fn check_ifname(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > IFNAME_MAX {
        return Err(format!("interface name {name:?} is {} bytes: expected 1 to {IFNAME_MAX}", b.len()));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    let bad = |c: u8| matches!(c, 0 | b'/' | b':' | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0);
    if let Some(c) = b.iter().copied().find(|&c| bad(c)) {
        return Err(format!(
            "interface name {name:?} contains {:?}: no NUL, '/', ':' or white space",
            char::from(c)
        ));
    }
    Ok(())
}

/// Longest vhost-user socket path, in bytes: `sun_path` (108) less the NUL.
pub const SOCKET_PATH_MAX: usize = 107;

/// A backend that breaks a rule of its type's options: `field` is the option (as the
/// configuration file names it), `msg` what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct BackendError {
    pub field: String,
    pub msg: String,
}

fn err(field: impl Into<String>, msg: impl Into<String>) -> BackendError {
    BackendError { field: field.into(), msg: msg.into() }
}

/// The type options of a port, in the order they are checked (and named in errors).
pub const TYPE_OPTIONS: [&str; 20] = [
    "ring",
    "rx_pcap",
    "tx_pcap",
    "infinite",
    "iface",
    "rx_mode",
    "socket",
    "mode",
    "socket_mode",
    "offloads",
    "queues",
    "devargs",
    "vni",
    "local",
    "dstport",
    "underlay",
    "flood",
    "remote_macs",
    "learn",
    "routes",
];

/// The options of the tunnel types.
const TUNNEL_OPTIONS: &[&str] =
    &["vni", "local", "dstport", "underlay", "flood", "remote_macs", "learn", "routes"];

impl PortType {
    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            PortType::Ring => "ring",
            PortType::Pcap => "pcap",
            PortType::Afpacket => "afpacket",
            PortType::Afxdp => "afxdp",
            PortType::Tap => "tap",
            PortType::Vhostuser => "vhostuser",
            PortType::Dpdk => "dpdk",
            PortType::Vxlan => "vxlan",
            PortType::Geneve => "geneve",
        }
    }

    /// The type options this type takes (a subset of [`TYPE_OPTIONS`]).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            PortType::Ring => &["ring"],
            PortType::Pcap => &["rx_pcap", "tx_pcap", "infinite"],
            PortType::Afpacket => &["iface", "rx_mode"],
            PortType::Afxdp => &["iface", "queues"],
            PortType::Tap => &["iface"],
            PortType::Vhostuser => &["socket", "mode", "socket_mode", "offloads", "queues"],
            PortType::Dpdk => &["queues", "devargs"],
            PortType::Vxlan | PortType::Geneve => TUNNEL_OPTIONS,
        }
    }
}

impl Backend {
    /// The port type of this backend.
    pub fn port_type(&self) -> PortType {
        match self {
            Backend::Ring { .. } => PortType::Ring,
            Backend::Pcap { .. } => PortType::Pcap,
            Backend::Afpacket { .. } => PortType::Afpacket,
            Backend::Afxdp { .. } => PortType::Afxdp,
            Backend::Tap { .. } => PortType::Tap,
            Backend::Vhostuser { .. } => PortType::Vhostuser,
            Backend::Dpdk { .. } => PortType::Dpdk,
            Backend::Tunnel(t) => match t.kind {
                TunnelKind::Vxlan => PortType::Vxlan,
                TunnelKind::Geneve => PortType::Geneve,
            },
        }
    }

    /// What this backend opens as the port `port`, one value for every spelling of it: an
    /// option the factory (ports/src/factory.rs) gives a fixed default when it is left out is
    /// left out when it is that default (an afpacket port's `rx_mode: ring`, an afxdp port's
    /// `queues:` [`AFXDP_DEFAULT_QUEUES`], a vhostuser port's `mode: server`, `queues:`
    /// [`VHOST_DEFAULT_QUEUE_PAIRS`] and `offloads: false`, a pcap port's `infinite: false`),
    /// and a name that defaults to the port's (`iface`, `ring`) is written out. Two backends
    /// with one form open the same thing the same way, so what a reload compares of a port's
    /// backend (control/src/reconcile.rs) and of a tunnel's uplink ([`uplink_form`]) is this,
    /// never the spelling: `afpacket:eth1` and `afpacket:eth1,ring` do not reopen a port.
    ///
    /// A tunnel port is in its [`TunnelBackend::opened_form`]: its transport and remote table
    /// as the port holds them.
    ///
    /// Not interpreted, so compared as written: a DPDK port's devargs beyond its PCI device's
    /// spelling (the device in DPDK's spelling, [`canonical_devargs`]: `03:00.0` is
    /// `0000:03:00.0`; DPDK's own options after it, a vdev's arguments and their order, are
    /// DPDK's business), a dpdk port's `queues` (its default, the worker count, is known only
    /// where the port opens), a vhostuser port's `socket_mode` (left out, the socket keeps
    /// the mode `bind` gave it under the process's umask), and file and socket paths.
    pub fn opened_form(&self, port: &str) -> Backend {
        let named = |n: &Option<String>| Some(n.clone().unwrap_or_else(|| port.to_string()));
        match self {
            Backend::Ring { ring } => Backend::Ring { ring: named(ring) },
            Backend::Pcap { rx, tx, infinite } => {
                Backend::Pcap { rx: rx.clone(), tx: tx.clone(), infinite: infinite.filter(|&i| i) }
            }
            Backend::Afpacket { iface, rx_mode } => Backend::Afpacket {
                iface: named(iface),
                rx_mode: rx_mode.filter(|&m| m != AfPacketRxMode::default()),
            },
            Backend::Afxdp { iface, queues } => {
                Backend::Afxdp { iface: named(iface), queues: queues.filter(|&q| q != AFXDP_DEFAULT_QUEUES) }
            }
            Backend::Tap { iface } => Backend::Tap { iface: named(iface) },
            Backend::Vhostuser { socket, mode, socket_mode, queues, offloads } => Backend::Vhostuser {
                socket: socket.clone(),
                mode: mode.filter(|&m| m != VhostMode::default()),
                socket_mode: *socket_mode,
                queues: queues.filter(|&q| q != VHOST_DEFAULT_QUEUE_PAIRS),
                offloads: offloads.filter(|&o| o),
            },
            // Made by `PortConfig::backend` or parsing, the devargs are canonical already; a
            // `Backend` built by hand is brought to it too (a malformed PCI address stays as
            // given, for the port's check to refuse).
            Backend::Dpdk { devargs, queues } => Backend::Dpdk {
                devargs: canonical_devargs(devargs).unwrap_or_else(|_| devargs.clone()),
                queues: *queues,
            },
            Backend::Tunnel(t) => Backend::Tunnel(t.opened_form()),
        }
    }
}

impl AfPacketRxMode {
    /// The name the configuration file and a port spec (`afpacket:IFACE,recvmmsg`) use.
    pub fn name(self) -> &'static str {
        match self {
            AfPacketRxMode::Ring => "ring",
            AfPacketRxMode::Recvmmsg => "recvmmsg",
        }
    }
}

impl PortConfig {
    /// Which type options are set, in the order of [`TYPE_OPTIONS`]. The destructuring names
    /// every field, so that a new field of `PortConfig` cannot be forgotten here.
    fn options_set(&self) -> [bool; TYPE_OPTIONS.len()] {
        let PortConfig {
            name: _,
            kind: _,
            vlan_mode: _,
            tag: _,
            trunks: _,
            allowed_macs: _,
            static_macs: _,
            mac_limit: _,
            allowed_ips: _,
            policy: _,
            ring,
            rx_pcap,
            tx_pcap,
            infinite,
            iface,
            rx_mode,
            socket,
            mode,
            socket_mode,
            offloads,
            queues,
            devargs,
            vni,
            local,
            dstport,
            underlay,
            flood,
            remote_macs,
            learn,
            routes,
        } = self;
        [
            ring.is_some(),
            rx_pcap.is_some(),
            tx_pcap.is_some(),
            infinite.is_some(),
            iface.is_some(),
            rx_mode.is_some(),
            socket.is_some(),
            mode.is_some(),
            socket_mode.is_some(),
            offloads.is_some(),
            queues.is_some(),
            devargs.is_some(),
            vni.is_some(),
            local.is_some(),
            dstport.is_some(),
            underlay.is_some(),
            flood.is_some(),
            !remote_macs.is_empty(),
            learn.is_some(),
            !routes.is_empty(),
        ]
    }

    /// The port's backend, checked: every option set belongs to the port's type, and each has
    /// a valid value. A port without `type` is a ring and takes no option.
    pub fn backend(&self) -> Result<Backend, BackendError> {
        let kind = self.kind;
        let allowed = kind.map(PortType::options).unwrap_or_default();
        for (opt, set) in TYPE_OPTIONS.iter().zip(self.options_set()) {
            if set && !allowed.contains(opt) {
                let tn = kind.map(PortType::name).unwrap_or("(none)");
                return Err(err(*opt, format!("not an option of port type {tn}")));
            }
        }
        let Some(kind) = kind else { return Ok(Backend::Ring { ring: None }) };
        Ok(match kind {
            PortType::Ring => Backend::Ring { ring: self.ring.clone() },
            PortType::Pcap => {
                Backend::Pcap { rx: self.rx_pcap.clone(), tx: self.tx_pcap.clone(), infinite: self.infinite }
            }
            PortType::Afpacket => {
                self.check_iface()?;
                Backend::Afpacket { iface: self.iface.clone(), rx_mode: self.rx_mode }
            }
            PortType::Afxdp => {
                self.check_iface()?;
                self.check_queues("an afxdp port has RX queues")?;
                Backend::Afxdp { iface: self.iface.clone(), queues: self.queues }
            }
            PortType::Tap => {
                self.check_iface()?;
                Backend::Tap { iface: self.iface.clone() }
            }
            PortType::Vhostuser => {
                let mode = match self.mode.as_deref() {
                    None => None,
                    Some("server") => Some(VhostMode::Server),
                    Some("client") => Some(VhostMode::Client),
                    Some(m) => return Err(err("mode", format!("{m:?} is neither server nor client"))),
                };
                let socket_mode = match &self.socket_mode {
                    None => None,
                    Some(m) => Some(SocketMode::parse(m).ok_or_else(|| {
                        err("socket_mode", format!("{m:?} is not an octal mode like \"0660\""))
                    })?),
                };
                if socket_mode.is_some() && mode == Some(VhostMode::Client) {
                    return Err(err("socket_mode", "only a server creates the socket"));
                }
                let socket = self
                    .socket
                    .clone()
                    .ok_or_else(|| err("socket", "a vhostuser port needs a socket path"))?;
                if socket.is_empty() || socket.len() > SOCKET_PATH_MAX || socket.contains('\0') {
                    return Err(err(
                        "socket",
                        format!(
                            "{socket:?}: a socket path is 1 to {SOCKET_PATH_MAX} bytes (sun_path), without NUL"
                        ),
                    ));
                }
                if let Some(q) = self.queues {
                    if q == 0 || q > VHOST_MAX_QUEUE_PAIRS {
                        return Err(err(
                            "queues",
                            format!("{q} queue pairs: a vhostuser port has 1 to {VHOST_MAX_QUEUE_PAIRS}"),
                        ));
                    }
                }
                Backend::Vhostuser { socket, mode, socket_mode, queues: self.queues, offloads: self.offloads }
            }
            PortType::Dpdk => {
                let devargs =
                    self.devargs.as_deref().ok_or_else(|| err("devargs", "a dpdk port needs devargs"))?;
                let devargs = canonical_devargs(devargs).map_err(|m| err("devargs", m))?;
                self.check_queues("a dpdk port has queue pairs")?;
                Backend::Dpdk { devargs, queues: self.queues }
            }
            PortType::Vxlan => Backend::Tunnel(self.tunnel(TunnelKind::Vxlan)?),
            PortType::Geneve => Backend::Tunnel(self.tunnel(TunnelKind::Geneve)?),
        })
    }

    /// The port's backend as it opens ([`Backend::opened_form`], the port's name filling in
    /// `iface` or `ring`): ports whose backends have one opened form open the same thing the
    /// same way, however their options are spelled.
    pub fn opened_backend(&self) -> Result<Backend, BackendError> {
        self.backend().map(|b| b.opened_form(&self.name))
    }

    /// `queues` of an afxdp or dpdk port: 1 to [`MAX_QUEUES`] (0 would open nothing to poll;
    /// more than a NIC has is refused when the port opens).
    fn check_queues(&self, what: &str) -> Result<(), BackendError> {
        match self.queues {
            Some(q) if q == 0 || q > MAX_QUEUES => {
                Err(err("queues", format!("{q}: {what} 1 to {MAX_QUEUES}")))
            }
            _ => Ok(()),
        }
    }

    /// The interface of an afpacket, afxdp or tap port (`iface`, or the port's name without
    /// one) is a name an interface can have ([`check_ifname`]).
    fn check_iface(&self) -> Result<(), BackendError> {
        match &self.iface {
            Some(i) => check_ifname(i).map_err(|m| err("iface", m)),
            None => check_ifname(&self.name)
                .map_err(|m| err("name", format!("without iface the port's name is its interface: {m}"))),
        }
    }

    fn tunnel(&self, kind: TunnelKind) -> Result<TunnelBackend, BackendError> {
        let vni = match self.vni {
            None => return Err(err("vni", "a tunnel port needs a vni")),
            Some(v) if v > crate::wire::vxlan::VNI_MAX => {
                return Err(err("vni", format!("{v} is not a 24-bit VNI")))
            }
            Some(v) => v,
        };
        let local = self.local.ok_or_else(|| err("local", "a tunnel port needs a local address"))?;
        if local.is_unspecified() || local.is_multicast() {
            return Err(err("local", format!("{local} is not a unicast address")));
        }
        if self.dstport == Some(0) {
            return Err(err("dstport", "must not be 0"));
        }
        let unicast_like_local =
            |ip: &IpAddr| ip.is_ipv6() == local.is_ipv6() && !ip.is_unspecified() && !ip.is_multicast();
        for (i, ip) in self.flood.iter().flatten().enumerate() {
            if !unicast_like_local(ip) {
                return Err(err(
                    format!("flood[{i}]"),
                    format!("{ip} is not a unicast address of the local address's family"),
                ));
            }
            // The port's own address: every flooded frame would come back to it (a VM gets its
            // own broadcasts back; IPv6 duplicate address detection fails).
            if *ip == local {
                return Err(err(format!("flood[{i}]"), format!("{ip} is the port's own local address")));
            }
        }
        for (i, r) in self.remote_macs.iter().enumerate() {
            if r.mac.is_multicast() || r.mac.is_zero() {
                return Err(err(format!("remote_macs[{i}].mac"), format!("{} is not a unicast MAC", r.mac)));
            }
            if !unicast_like_local(&r.remote) {
                return Err(err(
                    format!("remote_macs[{i}].remote"),
                    format!("{} is not a unicast address of the local address's family", r.remote),
                ));
            }
            if r.remote == local {
                return Err(err(
                    format!("remote_macs[{i}].remote"),
                    format!("{} is the port's own local address", r.remote),
                ));
            }
            if self.remote_macs[..i].iter().any(|o| o.mac == r.mac) {
                return Err(err(format!("remote_macs[{i}].mac"), format!("{} given twice", r.mac)));
            }
        }
        // An uplink is what ports/src/factory.rs opens as one, AF_PACKET, AF_XDP or DPDK: anything else
        // (`foo:bar`, `ring:r`, a bad interface name or PCI address) is refused here, with the
        // configuration, rather than when the port is opened.
        if let Some(up) = uplink_spelling(self.underlay.as_deref()) {
            const WANT: &str =
                "an underlay is kernel, IFACE, afpacket:IFACE[,ring|recvmmsg], afxdp:IFACE[,queues=N] or dpdk:DEVARGS";
            let given = self.underlay.as_deref().unwrap_or_default();
            match up.parse::<Backend>() {
                Ok(Backend::Afpacket { .. } | Backend::Afxdp { .. } | Backend::Dpdk { .. }) => {}
                Ok(other) => {
                    return Err(err(
                        "underlay",
                        format!("{given:?}: a {} port is no uplink ({WANT})", other.port_type().name()),
                    ))
                }
                Err(e) => return Err(err("underlay", format!("{given:?}: {e} ({WANT})"))),
            }
        }
        if !self.routes.is_empty() && matches!(self.underlay.as_deref(), None | Some("kernel")) {
            return Err(err(
                "routes",
                "only for an uplink underlay (the kernel's UDP socket follows the kernel's routes)",
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.dst.addr.is_ipv6() != local.is_ipv6() {
                return Err(err(
                    format!("routes[{i}].dst"),
                    format!("{} is not of the local address's family", r.dst),
                ));
            }
            if !unicast_like_local(&r.via) || r.via == local {
                return Err(err(
                    format!("routes[{i}].via"),
                    format!(
                        "{} is not a unicast address of the local address's family, other than it",
                        r.via
                    ),
                ));
            }
        }
        Ok(TunnelBackend {
            kind,
            vni,
            local,
            dstport: self.dstport,
            underlay: self.underlay.clone(),
            flood: self.flood.clone(),
            remote_macs: self.remote_macs.clone(),
            learn: self.learn,
            routes: self.routes.clone(),
        })
    }

    /// Gives the port this backend: its type and exactly that type's options (every other
    /// option cleared). The port's name and L2 settings stay.
    pub fn set_backend(&mut self, b: &Backend) {
        let old = std::mem::replace(self, PortConfig { kind: Some(b.port_type()), ..Default::default() });
        macro_rules! keep {
            ($($field:ident),*) => { $(self.$field = old.$field;)* };
        }
        keep!(name, vlan_mode, tag, trunks, allowed_macs, static_macs, mac_limit, allowed_ips, policy);
        match b {
            Backend::Ring { ring } => self.ring = ring.clone(),
            Backend::Pcap { rx, tx, infinite } => {
                self.rx_pcap = rx.clone();
                self.tx_pcap = tx.clone();
                self.infinite = *infinite;
            }
            Backend::Afpacket { iface, rx_mode } => {
                self.iface = iface.clone();
                self.rx_mode = *rx_mode;
            }
            Backend::Afxdp { iface, queues } => {
                self.iface = iface.clone();
                self.queues = *queues;
            }
            Backend::Tap { iface } => self.iface = iface.clone(),
            Backend::Vhostuser { socket, mode, socket_mode, queues, offloads } => {
                self.offloads = *offloads;
                self.socket = Some(socket.clone());
                self.mode = mode.map(|m| m.name().to_string());
                self.socket_mode = socket_mode.map(|m| m.to_string());
                self.queues = *queues;
            }
            Backend::Dpdk { devargs, queues } => {
                self.devargs = Some(devargs.clone());
                self.queues = *queues;
            }
            Backend::Tunnel(t) => {
                self.vni = Some(t.vni);
                self.local = Some(t.local);
                self.dstport = t.dstport;
                self.underlay = t.underlay.clone();
                self.flood = t.flood.clone();
                self.remote_macs = t.remote_macs.clone();
                self.learn = t.learn;
                self.routes = t.routes.clone();
            }
        }
    }
}

fn plain_arg<'a>(rest: &'a str, what: &str) -> Result<&'a str, String> {
    if rest.is_empty() {
        return Err(format!("needs {what}"));
    }
    if rest.contains(',') {
        return Err(format!("takes only {what}, no options"));
    }
    Ok(rest)
}

/// A backend written as `switchyard pmd --port` takes it, `TYPE:ARGS`:
///
/// ```text
/// ring:NAME
/// pcap:FILE[,infinite]  or  pcap:rx=FILE,tx=FILE[,infinite]  (either file may be left out)
/// afpacket:IFACE[,ring|,recvmmsg]
/// tap:IFACE
/// vhost:PATH[,server|,client][,offloads][,queues=N]  (also vhostuser:)
/// dpdk:DEVARGS
/// ```
///
/// Only the syntax is checked here (whether a file exists is the caller's business). The
/// error says what is wrong with ARGS, without repeating the spec.
impl FromStr for Backend {
    type Err = String;

    fn from_str(spec: &str) -> Result<Backend, String> {
        let (kind, rest) = spec
            .split_once(':')
            .ok_or("expected TYPE:ARGS with TYPE one of ring, pcap, afpacket, afxdp, tap, vhost, dpdk")?;
        match kind {
            "ring" => Ok(Backend::Ring { ring: Some(plain_arg(rest, "a ring name")?.into()) }),
            "pcap" => {
                let (mut rx, mut tx, mut infinite) = (None::<String>, None::<String>, false);
                for (i, p) in rest.split(',').enumerate() {
                    if p == "infinite" {
                        infinite = true;
                    } else if let Some(f) = p.strip_prefix("rx=") {
                        rx = Some(f.into());
                    } else if let Some(f) = p.strip_prefix("tx=") {
                        tx = Some(f.into());
                    } else if p.contains('=') {
                        return Err(format!("unknown pcap option {p:?} (rx=FILE, tx=FILE, infinite)"));
                    } else if i == 0 && !p.is_empty() {
                        rx = Some(p.into());
                    } else {
                        return Err(format!(
                            "unexpected {p:?} (expected pcap:FILE[,infinite] or pcap:rx=FILE,tx=FILE[,infinite])"
                        ));
                    }
                }
                if [&rx, &tx].into_iter().flatten().any(|f| f.is_empty()) {
                    return Err("empty file name".into());
                }
                match rx {
                    None if tx.is_none() => return Err("needs a capture file".into()),
                    None if infinite => return Err("infinite needs a capture to receive (rx=FILE)".into()),
                    _ => {}
                }
                Ok(Backend::Pcap { rx, tx, infinite: Some(infinite) })
            }
            "afpacket" | "tap" => {
                let (iface, mode) = match rest.split_once(',') {
                    Some((i, m)) if kind == "afpacket" => (i, Some(m)),
                    _ => (rest, None),
                };
                let rx_mode = match mode {
                    None => None,
                    Some("ring") => Some(AfPacketRxMode::Ring),
                    Some("recvmmsg") => Some(AfPacketRxMode::Recvmmsg),
                    Some(m) => return Err(format!("unknown afpacket option {m:?} (ring or recvmmsg)")),
                };
                let iface = plain_arg(iface, "an interface name")?;
                check_ifname(iface)?;
                let iface = Some(iface.to_string());
                Ok(if kind == "tap" { Backend::Tap { iface } } else { Backend::Afpacket { iface, rx_mode } })
            }
            "afxdp" => {
                let mut parts = rest.split(',');
                let iface = parts.next().unwrap_or_default();
                check_ifname(iface)?;
                let mut queues = None;
                for p in parts {
                    let n = p.strip_prefix("queues=").and_then(|n| n.parse::<u16>().ok()).filter(|&n| n > 0);
                    match n {
                        Some(n) => queues = Some(n),
                        None => return Err(format!("unknown afxdp option {p:?} (queues=N, N >= 1)")),
                    }
                }
                Ok(Backend::Afxdp { iface: Some(iface.to_string()), queues })
            }
            "vhost" | "vhostuser" => {
                let mut parts = rest.split(',');
                let socket = parts.next().unwrap_or_default();
                if socket.is_empty() {
                    return Err("needs a socket path".into());
                }
                let mut mode = VhostMode::Server;
                let mut offloads = None;
                let mut queues = None;
                for p in parts {
                    if let Some(n) = p.strip_prefix("queues=") {
                        match n.parse::<u16>() {
                            Ok(n) if (1..=VHOST_MAX_QUEUE_PAIRS).contains(&n) => queues = Some(n),
                            _ => {
                                return Err(format!(
                                    "bad vhost option {p:?} (queues=N, N from 1 to {VHOST_MAX_QUEUE_PAIRS})"
                                ))
                            }
                        }
                        continue;
                    }
                    match p {
                        "server" => mode = VhostMode::Server,
                        "client" => mode = VhostMode::Client,
                        "offloads" => offloads = Some(true),
                        _ => {
                            return Err(format!(
                                "unknown vhost option {p:?} (client, server, offloads or queues=N)"
                            ))
                        }
                    }
                }
                Ok(Backend::Vhostuser {
                    socket: socket.into(),
                    mode: Some(mode),
                    socket_mode: None,
                    queues,
                    offloads,
                })
            }
            "dpdk" => {
                if rest.is_empty() {
                    return Err(
                        "needs DEVARGS (a PCI address or a vdev such as net_pcap0,rx_pcap=a.pcap)".into()
                    );
                }
                Ok(Backend::Dpdk { devargs: canonical_devargs(rest)?, queues: None })
            }
            _ => Err(format!("unknown port type {kind:?} (ring, pcap, afpacket, afxdp, tap, vhost, dpdk)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(kind: PortType) -> PortConfig {
        PortConfig { name: "p".into(), kind: Some(kind), ..Default::default() }
    }

    #[test]
    fn a_pci_device_has_one_spelling_and_a_malformed_one_is_refused_naming_devargs() {
        for (given, want) in [
            ("0000:3b:02.1", "0000:3b:02.1"),
            ("3b:02.1", "0000:3b:02.1"),
            ("3B:02.1", "0000:3b:02.1"),
            ("0000:3B:02.1", "0000:3b:02.1"),
            ("0:3b:2.1", "0000:3b:02.1"),
            (" 3b:02.1,txq_inline=0", "0000:3b:02.1,txq_inline=0"),
            ("10000:e1:1f.7", "10000:e1:1f.7"),
            // Not PCI-like: left to DPDK as they are.
            ("net_pcap0,rx_pcap=a.pcap", "net_pcap0,rx_pcap=a.pcap"),
            ("net_null0", "net_null0"),
            ("class=eth,mac=02:00:00:00:00:01", "class=eth,mac=02:00:00:00:00:01"),
        ] {
            assert_eq!(canonical_devargs(given).as_deref(), Ok(want), "{given:?}");
        }
        for bad in [
            "3b:02",
            "0000:3b:02",
            "3b:02.8",
            "3b:20.1",
            "3b:02.",
            "100:02.1",
            "123456789:3b:02.1",
            "a:b:c:d.1",
            ":02.1",
        ] {
            let e = canonical_devargs(bad).unwrap_err();
            assert!(e.contains("not a PCI address"), "{bad:?}: {e}");
        }
        let mut p = port(PortType::Dpdk);
        p.devargs = Some("03:00.1,n_rxq=2".into());
        assert_eq!(
            p.backend().unwrap(),
            Backend::Dpdk { devargs: "0000:03:00.1,n_rxq=2".into(), queues: None }
        );
        p.devargs = Some("03:00.9".into());
        assert_eq!(p.backend().unwrap_err().field, "devargs");
        assert_eq!("dpdk:0000:03:00.1".parse::<Backend>().unwrap(), "dpdk:3:0.1".parse::<Backend>().unwrap());
        assert!("dpdk:03:00".parse::<Backend>().unwrap_err().contains("not a PCI address"));
        // Tunnel ports on one uplink device, spelled two ways, share one uplink.
        assert_eq!(uplink_key(Some("dpdk:3B:02.1,n_rxq=2")), uplink_key(Some("dpdk:0000:3b:02.1")));
        assert_eq!(
            uplink_spelling(Some("dpdk:3b:02.1,n_rxq=2")).as_deref(),
            Some("dpdk:0000:3b:02.1,n_rxq=2")
        );
        assert_eq!(uplink_spelling(Some("eth1")).as_deref(), Some("afpacket:eth1"));
        // An AF_XDP uplink's queue count is an option: one interface, one uplink.
        assert_eq!(uplink_key(Some("afxdp:eth1,queues=2")).as_deref(), Some("afxdp:eth1"));
        assert_eq!(uplink_key(Some("afxdp:eth1")).as_deref(), Some("afxdp:eth1"));
        assert_eq!(uplink_spelling(Some("afxdp:eth1,queues=2")).as_deref(), Some("afxdp:eth1,queues=2"));
    }

    /// Every spelling of one uplink opened one way has one form; another way of opening it
    /// (queues, receive mode) another.
    #[test]
    fn an_uplink_has_one_form_for_every_spelling() {
        let form = |u: &str| uplink_form(Some(u)).unwrap();
        for (a, b) in [
            ("afxdp:eth1", "afxdp:eth1,queues=1"),
            ("afxdp:eth1,queues=2", "afxdp:eth1,queues=1,queues=2"),
            ("eth1", "afpacket:eth1"),
            ("eth1", "afpacket:eth1,ring"),
            ("afpacket:eth1,recvmmsg", "afpacket:eth1,recvmmsg"),
            ("dpdk:3B:02.1,n_rxq=2", "dpdk:0000:3b:02.1,n_rxq=2"),
        ] {
            assert_eq!(form(a), form(b), "{a} and {b}");
            assert_eq!(form(b), form(a), "{b} and {a}");
        }
        for (a, b) in [
            ("afxdp:eth1", "afxdp:eth1,queues=2"),
            ("afxdp:eth1,queues=2", "afxdp:eth1,queues=3"),
            ("eth1", "afpacket:eth1,recvmmsg"),
            ("afpacket:eth1", "afxdp:eth1"),
            ("eth1", "eth2"),
        ] {
            assert_ne!(form(a), form(b), "{a} and {b}");
        }
        assert_eq!(form("afxdp:eth1,queues=1"), "afxdp:eth1");
        assert_eq!(form("afpacket:eth1,ring"), "afpacket:eth1");
        assert_eq!(uplink_form(Some("kernel")), None);
        assert_eq!(uplink_form(None), None);
    }

    /// A port's backend with each default spelled and left out has one opened form; a real
    /// difference (another interface or device, another receive mode or queue count) another.
    #[test]
    fn a_port_backend_has_one_opened_form_for_every_spelling() {
        let with = |kind: PortType, f: &dyn Fn(&mut PortConfig)| {
            let mut p = PortConfig { name: "eth1".into(), kind: Some(kind), ..Default::default() };
            f(&mut p);
            p.opened_backend().unwrap()
        };
        let afp = |f: &dyn Fn(&mut PortConfig)| with(PortType::Afpacket, f);
        let xdp = |f: &dyn Fn(&mut PortConfig)| with(PortType::Afxdp, f);
        let vhost = |f: &dyn Fn(&mut PortConfig)| {
            with(PortType::Vhostuser, &|p| {
                p.socket = Some("/run/vm.sock".into());
                f(p)
            })
        };
        let dpdk = |devargs: &str, queues: Option<u16>| {
            with(PortType::Dpdk, &|p| {
                p.devargs = Some(devargs.into());
                p.queues = queues;
            })
        };
        let same: Vec<(&str, Backend, Backend)> = vec![
            ("afpacket rx_mode ring", afp(&|_| {}), afp(&|p| p.rx_mode = Some(AfPacketRxMode::Ring))),
            ("afpacket iface = name", afp(&|_| {}), afp(&|p| p.iface = Some("eth1".into()))),
            ("afxdp queues 1", xdp(&|_| {}), xdp(&|p| p.queues = Some(AFXDP_DEFAULT_QUEUES))),
            (
                "afxdp iface = name",
                xdp(&|p| p.queues = Some(2)),
                xdp(&|p| {
                    p.iface = Some("eth1".into());
                    p.queues = Some(2);
                }),
            ),
            (
                "tap iface = name",
                with(PortType::Tap, &|_| {}),
                with(PortType::Tap, &|p| p.iface = Some("eth1".into())),
            ),
            (
                "ring = name",
                with(PortType::Ring, &|_| {}),
                with(PortType::Ring, &|p| p.ring = Some("eth1".into())),
            ),
            (
                "type left out is ring",
                PortConfig { name: "eth1".into(), ..Default::default() }.opened_backend().unwrap(),
                with(PortType::Ring, &|_| {}),
            ),
            (
                "pcap not infinite",
                with(PortType::Pcap, &|p| p.rx_pcap = Some("a.pcap".into())),
                with(PortType::Pcap, &|p| {
                    p.rx_pcap = Some("a.pcap".into());
                    p.infinite = Some(false);
                }),
            ),
            ("vhost server", vhost(&|_| {}), vhost(&|p| p.mode = Some("server".into()))),
            ("vhost one pair", vhost(&|_| {}), vhost(&|p| p.queues = Some(VHOST_DEFAULT_QUEUE_PAIRS))),
            ("vhost no offloads", vhost(&|_| {}), vhost(&|p| p.offloads = Some(false))),
            ("dpdk PCI spelling", dpdk("03:00.0", None), dpdk("0000:03:00.0", None)),
            (
                "dpdk PCI spelling, options",
                dpdk("3:0.0,n_rxq=2", Some(2)),
                dpdk("0000:03:00.0,n_rxq=2", Some(2)),
            ),
        ];
        for (what, a, b) in &same {
            assert_eq!(a, b, "{what}");
        }
        let differ: Vec<(&str, Backend, Backend)> = vec![
            ("afpacket iface", afp(&|_| {}), afp(&|p| p.iface = Some("eth2".into()))),
            ("afpacket recvmmsg", afp(&|_| {}), afp(&|p| p.rx_mode = Some(AfPacketRxMode::Recvmmsg))),
            (
                "afpacket ring/recvmmsg",
                afp(&|p| p.rx_mode = Some(AfPacketRxMode::Ring)),
                afp(&|p| p.rx_mode = Some(AfPacketRxMode::Recvmmsg)),
            ),
            ("afxdp queues 2", xdp(&|_| {}), xdp(&|p| p.queues = Some(2))),
            ("afxdp queues 1/2", xdp(&|p| p.queues = Some(1)), xdp(&|p| p.queues = Some(2))),
            ("afxdp iface", xdp(&|_| {}), xdp(&|p| p.iface = Some("eth2".into()))),
            ("afpacket/afxdp", afp(&|_| {}), xdp(&|_| {})),
            (
                "ring name",
                with(PortType::Ring, &|_| {}),
                with(PortType::Ring, &|p| p.ring = Some("r".into())),
            ),
            ("vhost client", vhost(&|_| {}), vhost(&|p| p.mode = Some("client".into()))),
            ("vhost two pairs", vhost(&|_| {}), vhost(&|p| p.queues = Some(2))),
            ("vhost offloads", vhost(&|_| {}), vhost(&|p| p.offloads = Some(true))),
            ("vhost socket_mode", vhost(&|_| {}), vhost(&|p| p.socket_mode = Some("0660".into()))),
            ("dpdk device", dpdk("03:00.0", None), dpdk("0000:03:00.1", None)),
            // DPDK's own options and a dpdk port's queues (the worker count by default) are
            // not interpreted.
            ("dpdk options", dpdk("0000:03:00.0", None), dpdk("0000:03:00.0,n_rxq=1", None)),
            ("dpdk queues", dpdk("0000:03:00.0", None), dpdk("0000:03:00.0", Some(1))),
        ];
        for (what, a, b) in &differ {
            assert_ne!(a, b, "{what}");
        }
        // The port spec's spellings (`pmd --port`, `run` overrides) too.
        let spec = |s: &str| s.parse::<Backend>().unwrap().opened_form("p");
        assert_eq!(spec("afpacket:eth1"), spec("afpacket:eth1,ring"));
        assert_eq!(spec("afxdp:eth1"), spec("afxdp:eth1,queues=1"));
        assert_eq!(spec("vhost:/s"), spec("vhost:/s,server,queues=1"));
        assert_ne!(spec("afpacket:eth1"), spec("afpacket:eth1,recvmmsg"));
        assert_ne!(spec("afxdp:eth1"), spec("afxdp:eth1,queues=2"));
        // A DPDK backend built by hand is brought to DPDK's spelling of its device.
        assert_eq!(
            Backend::Dpdk { devargs: "3:0.0".into(), queues: None }.opened_form("p"),
            Backend::Dpdk { devargs: "0000:03:00.0".into(), queues: None }
        );
        // The form is a fixed point: what it opens, taken again, is itself.
        for (_, a, b) in same.iter().chain(&differ) {
            assert_eq!(&a.opened_form("eth1"), a);
            assert_eq!(&b.opened_form("eth1"), b);
        }
    }

    /// A tunnel port's options respelled (defaults written out or left out, the flood list
    /// in another order or with an address twice, remote MACs or routes of other lengths in
    /// another order, the uplink spelled another way) have one opened form; a change of the
    /// remote table or of the transport another.
    #[test]
    fn a_tunnel_backend_has_one_opened_form_for_every_spelling() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let rm = |mac: &str, remote: &str| RemoteMac { mac: mac.parse().unwrap(), remote: ip(remote) };
        let route = |dst: &str, via: &str| UnderlayRoute { dst: dst.parse().unwrap(), via: ip(via) };
        let (m1, m2) = ("02:00:00:00:0b:01", "02:00:00:00:0b:02");
        let tun = |f: &dyn Fn(&mut PortConfig)| {
            let mut p = PortConfig {
                name: "t".into(),
                kind: Some(PortType::Vxlan),
                vni: Some(5001),
                local: Some(ip("192.0.2.1")),
                flood: Some(vec![ip("192.0.2.2"), ip("192.0.2.3")]),
                remote_macs: vec![rm(m1, "192.0.2.2"), rm(m2, "192.0.2.3")],
                ..Default::default()
            };
            f(&mut p);
            p.opened_backend().unwrap_or_else(|e| panic!("{e}: {p:?}"))
        };
        let uplink = |u: &'static str, routes: &'static [(&'static str, &'static str)]| {
            move |p: &mut PortConfig| {
                p.underlay = Some(u.into());
                p.routes = routes.iter().map(|(d, v)| route(d, v)).collect();
            }
        };
        let none = |_: &mut PortConfig| {};
        let same: Vec<(&str, Backend, Backend)> = vec![
            ("dstport 4789", tun(&none), tun(&|p| p.dstport = Some(4789))),
            ("underlay kernel", tun(&none), tun(&|p| p.underlay = Some("kernel".into()))),
            ("learn true", tun(&none), tun(&|p| p.learn = Some(true))),
            ("flood order", tun(&none), tun(&|p| p.flood = Some(vec![ip("192.0.2.3"), ip("192.0.2.2")]))),
            (
                "flood address twice",
                tun(&none),
                tun(&|p| p.flood = Some(vec![ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.2")])),
            ),
            ("no flood list, empty flood list", tun(&|p| p.flood = None), tun(&|p| p.flood = Some(vec![]))),
            (
                "remote MACs order",
                tun(&none),
                tun(&|p| p.remote_macs = vec![rm(m2, "192.0.2.3"), rm(m1, "192.0.2.2")]),
            ),
            ("uplink afpacket ring", tun(&uplink("eth1", &[])), tun(&uplink("afpacket:eth1,ring", &[]))),
            (
                "uplink afxdp one queue",
                tun(&uplink("afxdp:eth1", &[])),
                tun(&uplink("afxdp:eth1,queues=1", &[])),
            ),
            (
                "routes of two lengths in another order",
                tun(&uplink("eth1", &[("10.0.0.0/8", "192.0.2.9"), ("10.1.0.0/16", "192.0.2.8")])),
                tun(&uplink("eth1", &[("10.1.0.0/16", "192.0.2.8"), ("10.0.0.0/8", "192.0.2.9")])),
            ),
            (
                "geneve dstport 6081",
                tun(&|p| p.kind = Some(PortType::Geneve)),
                tun(&|p| {
                    p.kind = Some(PortType::Geneve);
                    p.dstport = Some(6081);
                }),
            ),
        ];
        for (what, a, b) in &same {
            assert_eq!(a, b, "{what}");
        }
        let differ: Vec<(&str, Backend, Backend)> = vec![
            ("flood endpoint added", tun(&none), tun(&|p| p.flood.as_mut().unwrap().push(ip("192.0.2.4")))),
            ("flood endpoint removed", tun(&none), tun(&|p| p.flood = Some(vec![ip("192.0.2.2")]))),
            ("remote MAC moved", tun(&none), tun(&|p| p.remote_macs[0].remote = ip("192.0.2.3"))),
            ("remote MAC removed", tun(&none), tun(&|p| p.remote_macs.truncate(1))),
            ("learn off", tun(&none), tun(&|p| p.learn = Some(false))),
            ("dstport", tun(&none), tun(&|p| p.dstport = Some(4790))),
            ("geneve's port on vxlan", tun(&none), tun(&|p| p.dstport = Some(6081))),
            ("vni", tun(&none), tun(&|p| p.vni = Some(5002))),
            ("local", tun(&none), tun(&|p| p.local = Some(ip("192.0.2.9")))),
            ("geneve", tun(&none), tun(&|p| p.kind = Some(PortType::Geneve))),
            ("uplink", tun(&none), tun(&uplink("eth1", &[]))),
            ("uplink receive mode", tun(&uplink("eth1", &[])), tun(&uplink("afpacket:eth1,recvmmsg", &[]))),
            ("uplink queues", tun(&uplink("afxdp:eth1", &[])), tun(&uplink("afxdp:eth1,queues=2", &[]))),
            (
                "route's gateway",
                tun(&uplink("eth1", &[("10.0.0.0/8", "192.0.2.9")])),
                tun(&uplink("eth1", &[("10.0.0.0/8", "192.0.2.8")])),
            ),
            // Of one length, the first route holding an endpoint is its route: order counts.
            (
                "routes of one length in another order",
                tun(&uplink("eth1", &[("10.0.0.0/8", "192.0.2.9"), ("10.0.0.0/8", "192.0.2.8")])),
                tun(&uplink("eth1", &[("10.0.0.0/8", "192.0.2.8"), ("10.0.0.0/8", "192.0.2.9")])),
            ),
        ];
        for (what, a, b) in &differ {
            assert_ne!(a, b, "{what}");
        }
        // What differs in the remote table alone keeps the transport: updated in place.
        for (what, a, b) in &differ[..5] {
            let (Backend::Tunnel(x), Backend::Tunnel(y)) = (a, b) else { panic!("{what}: not tunnels") };
            assert!(x.same_transport(y), "{what}");
        }
        // The form is a fixed point.
        for (what, a, b) in same.iter().chain(&differ) {
            assert_eq!(&a.opened_form("t"), a, "{what}");
            assert_eq!(&b.opened_form("t"), b, "{what}");
        }
    }

    /// Every ordered choice of up to `most` items of `pool`, each place of the pool taken at
    /// most once (the empty choice first).
    fn arrangements<T: Copy>(pool: &[T], most: usize) -> Vec<Vec<T>> {
        let mut all: Vec<Vec<usize>> = vec![Vec::new()];
        let mut last = all.clone();
        for _ in 0..most {
            let next: Vec<Vec<usize>> = last
                .iter()
                .flat_map(|s| (0..pool.len()).filter(|i| !s.contains(i)).map(|i| [&s[..], &[i]].concat()))
                .collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all.into_iter().map(|s| s.into_iter().map(|i| pool[i]).collect()).collect()
    }

    /// A tunnel port on uplink `eth1` with these routes, flood list, remote MACs and learning.
    fn tunnel_with(
        routes: Vec<UnderlayRoute>,
        flood: Option<Vec<IpAddr>>,
        remote_macs: Vec<RemoteMac>,
        learn: Option<bool>,
    ) -> TunnelBackend {
        TunnelBackend {
            kind: TunnelKind::Vxlan,
            vni: 1,
            local: "192.0.2.1".parse().unwrap(),
            dstport: None,
            underlay: Some("eth1".into()),
            flood,
            remote_macs,
            learn,
            routes,
        }
    }

    /// Routes with one opened form give one underlay table: every endpoint gets the same next
    /// hop from `underlay::Routes` built from either list as ports/src/uplink_tunnel.rs builds
    /// it (the port's routes, then the uplink's kernel routes), so a reload that keeps a port
    /// whose routes were only reordered (unchanged, `TunnelBackend::opened_form`) leaves it on
    /// the next hops the new configuration gives. Checked against the table itself, over every
    /// ordered choice of up to four routes of a pool with nested prefixes, two prefixes of one
    /// length, one prefix with two gateways and a default route.
    #[test]
    fn routes_of_one_opened_form_give_every_endpoint_one_next_hop() {
        use crate::underlay::{Route, Routes};
        use std::collections::hash_map::{Entry, HashMap};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let pool: Vec<UnderlayRoute> = [
            ("10.0.0.0/8", "192.0.2.9"),
            ("10.0.0.0/8", "192.0.2.8"),
            ("11.0.0.0/8", "192.0.2.7"),
            ("10.1.0.0/16", "192.0.2.6"),
            ("10.1.2.0/24", "192.0.2.5"),
            ("0.0.0.0/0", "192.0.2.4"),
        ]
        .iter()
        .map(|(d, v)| UnderlayRoute { dst: d.parse().unwrap(), via: ip(v) })
        .collect();
        // The uplink's kernel routes, after the port's: one on the link, one through a gateway.
        let kernel = [
            Route { dst: "10.1.2.0/24".parse().unwrap(), via: None },
            Route { dst: "12.0.0.0/8".parse().unwrap(), via: Some(ip("192.0.2.3")) },
        ];
        let endpoints: Vec<IpAddr> = ["10.1.2.3", "10.1.9.9", "10.9.9.9", "11.1.1.1", "12.0.0.1", "13.0.0.1"]
            .into_iter()
            .map(ip)
            .collect();
        let mut tables: HashMap<String, (Vec<UnderlayRoute>, Vec<IpAddr>)> = HashMap::new();
        let mut shared = 0;
        for routes in arrangements(&pool, 4) {
            let form = format!("{:?}", tunnel_with(routes.clone(), None, Vec::new(), None).opened_form());
            let own: Vec<Route> = routes.iter().map(|r| Route { dst: r.dst, via: Some(r.via) }).collect();
            let table = Routes::new([&own[..], &kernel[..]].concat());
            let hops: Vec<IpAddr> = endpoints.iter().map(|&e| table.next_hop(e)).collect();
            match tables.entry(form) {
                Entry::Occupied(e) => {
                    shared += 1;
                    assert_eq!(e.get().1, hops, "{:?} and {routes:?}: one form, other next hops", e.get().0);
                }
                Entry::Vacant(e) => {
                    e.insert((routes, hops));
                }
            }
        }
        // Routes of different lengths in another order do share a form (else nothing was checked).
        assert!(shared >= 100, "{shared} lists shared a form");
    }

    /// Flood lists, remote MACs and learning with one opened form hold one remote table: the
    /// same flood endpoints (as a set: the order copies go out in is not a setting), the same
    /// sole endpoint (a port with one remote sends every frame there), the same remote MACs, the
    /// same endpoints admitted with learning off, and learning alike (`tunnel::Remotes` built
    /// from either with the defaults `TunnelOptions::from_backend`, ports/src/udp_tunnel.rs,
    /// gives a setting left out). Over every ordered choice of up to four flood addresses of a
    /// pool naming one address twice, and no flood list, each with remote MAC lists in both
    /// orders and learning left out, on and off.
    #[test]
    fn remote_tables_of_one_opened_form_hold_one_table() {
        use crate::tunnel::Remotes;
        use std::collections::hash_map::{Entry, HashMap};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, b, c) = (ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.4"));
        let rm =
            |m: u8, remote: IpAddr| RemoteMac { mac: crate::wire::MacAddr([2, 0, 0, 0, 0xb, m]), remote };
        let floods = std::iter::once(None).chain(arrangements(&[a, b, a, c], 4).into_iter().map(Some));
        let mac_lists =
            [vec![], vec![rm(1, a)], vec![rm(1, a), rm(2, c)], vec![rm(2, c), rm(1, a)], vec![rm(1, c)]];
        let mut tables: HashMap<String, (String, String)> = HashMap::new();
        let mut shared = 0;
        for flood in floods {
            for macs in &mac_lists {
                for learn in [None, Some(true), Some(false)] {
                    let t = tunnel_with(Vec::new(), flood.clone(), macs.clone(), learn);
                    let statics: Vec<_> = macs.iter().map(|r| (r.mac, r.remote)).collect();
                    let r = Remotes::new(
                        flood.as_deref().unwrap_or_default(),
                        &statics,
                        learn.unwrap_or(true),
                        crate::fdb::MacTable::DEFAULT_AGING_S,
                    )
                    .unwrap();
                    let mut flooded: Vec<IpAddr> = r.flood().iter().filter_map(|&i| r.endpoint(i)).collect();
                    flooded.sort();
                    let sole = r.sole_endpoint().and_then(|i| r.endpoint(i));
                    let mut held = r.macs(0);
                    held.sort();
                    let admitted: Vec<bool> =
                        [a, b, c].iter().map(|&x| r.index_of(x).is_some_and(|i| r.is_named(i))).collect();
                    let table = format!("{flooded:?} {sole:?} {held:?} {admitted:?} {}", r.learns());
                    let what = format!("{t:?}");
                    match tables.entry(format!("{:?}", t.opened_form())) {
                        Entry::Occupied(e) => {
                            shared += 1;
                            assert_eq!(e.get().1, table, "{} and {what}: one form, other tables", e.get().0);
                        }
                        Entry::Vacant(e) => {
                            e.insert((what, table));
                        }
                    }
                }
            }
        }
        assert!(shared >= 100, "{shared} spellings shared a form");
    }

    #[test]
    fn each_type_converts_and_writes_back_to_the_same_backend() {
        let backends = [
            Backend::Ring { ring: None },
            Backend::Ring { ring: Some("r".into()) },
            Backend::Pcap { rx: Some("a.pcap".into()), tx: None, infinite: Some(true) },
            Backend::Afpacket { iface: Some("eth1".into()), rx_mode: Some(AfPacketRxMode::Recvmmsg) },
            Backend::Tap { iface: None },
            Backend::Vhostuser {
                socket: "/s".into(),
                mode: Some(VhostMode::Server),
                socket_mode: SocketMode::parse("660"),
                queues: Some(2),
                offloads: Some(true),
            },
            Backend::Dpdk { devargs: "net_null0".into(), queues: Some(4) },
            Backend::Tunnel(TunnelBackend {
                kind: TunnelKind::Geneve,
                vni: 7,
                local: "fd00::1".parse().unwrap(),
                dstport: Some(6082),
                underlay: Some("dpdk:net_null1".into()),
                flood: Some(vec!["fd00::2".parse().unwrap()]),
                remote_macs: vec![RemoteMac {
                    mac: "02:00:00:00:0b:01".parse().unwrap(),
                    remote: "fd00::3".parse().unwrap(),
                }],
                learn: Some(false),
                routes: vec![UnderlayRoute {
                    dst: "fd00:20::/64".parse().unwrap(),
                    via: "fd00::fe".parse().unwrap(),
                }],
            }),
        ];
        for b in backends {
            // From a port of another type with L2 settings: the options are replaced, the L2
            // settings kept.
            let mut p = PortConfig {
                name: "p".into(),
                tag: Some(5),
                kind: Some(PortType::Dpdk),
                devargs: Some("x".into()),
                queues: Some(9),
                ..Default::default()
            };
            p.set_backend(&b);
            assert_eq!(p.backend(), Ok(b.clone()), "{p:?}");
            assert_eq!((p.kind, p.tag), (Some(b.port_type()), Some(5)));
        }
    }

    #[test]
    fn options_of_other_types_and_bad_values_name_the_field() {
        let mut p = port(PortType::Tap);
        p.rx_mode = Some(AfPacketRxMode::Ring);
        assert_eq!(p.backend(), Err(err("rx_mode", "not an option of port type tap")));
        let p = PortConfig { name: "p".into(), ring: Some("r".into()), ..Default::default() };
        assert_eq!(p.backend(), Err(err("ring", "not an option of port type (none)")));
        let mut p = port(PortType::Vhostuser);
        assert_eq!(p.backend().unwrap_err().field, "socket");
        p.socket = Some("/s".into());
        p.mode = Some("both".into());
        assert_eq!(p.backend().unwrap_err().field, "mode");
        p.mode = Some("client".into());
        p.socket_mode = Some("0660".into());
        assert_eq!(p.backend(), Err(err("socket_mode", "only a server creates the socket")));
        p.mode = None;
        p.socket_mode = Some("999".into());
        assert_eq!(p.backend().unwrap_err().field, "socket_mode");
        assert_eq!(port(PortType::Dpdk).backend().unwrap_err().field, "devargs");
        // Underlay routes: only on an uplink, of the local address's family, via another.
        let mut p = port(PortType::Vxlan);
        p.vni = Some(1);
        p.local = "10.0.0.1".parse().ok();
        let route =
            |dst: &str, via: &str| UnderlayRoute { dst: dst.parse().unwrap(), via: via.parse().unwrap() };
        p.routes = vec![route("10.1.0.0/16", "10.0.0.254")];
        assert_eq!(p.backend().unwrap_err().field, "routes");
        p.underlay = Some("eth0".into());
        assert!(p.backend().is_ok());
        p.routes.push(route("fd00::/64", "10.0.0.254"));
        assert_eq!(p.backend().unwrap_err().field, "routes[1].dst");
        p.routes[1] = route("0.0.0.0/0", "10.0.0.1");
        assert_eq!(p.backend().unwrap_err().field, "routes[1].via");
        // Every type's options are type options.
        for t in [
            PortType::Ring,
            PortType::Pcap,
            PortType::Afpacket,
            PortType::Tap,
            PortType::Vhostuser,
            PortType::Dpdk,
            PortType::Vxlan,
            PortType::Geneve,
        ] {
            assert!(t.options().iter().all(|o| TYPE_OPTIONS.contains(o)), "{t:?}");
        }
    }

    #[test]
    fn values_every_backend_refuses_are_refused_naming_the_field() {
        // vhost-user queue pairs: 1 to VHOST_MAX_QUEUE_PAIRS.
        let mut p = port(PortType::Vhostuser);
        p.socket = Some("/run/vm.sock".into());
        for (q, ok) in [(0, false), (1, true), (VHOST_MAX_QUEUE_PAIRS, true), (9, false), (65535, false)] {
            p.queues = Some(q);
            match p.backend() {
                Ok(_) => assert!(ok, "queues {q} accepted"),
                Err(e) => assert!(!ok && e.field == "queues", "queues {q}: {e}"),
            }
        }
        p.queues = None;
        p.socket = Some(format!("/{}", "s".repeat(SOCKET_PATH_MAX)));
        assert_eq!(p.backend().unwrap_err().field, "socket");
        p.socket = Some(format!("/{}", "s".repeat(SOCKET_PATH_MAX - 1)));
        assert!(p.backend().is_ok());
        // Interface names: what the kernel's dev_valid_name takes, for iface or the port's name.
        let long = "a".repeat(IFNAME_MAX + 1);
        for t in [PortType::Afpacket, PortType::Afxdp, PortType::Tap] {
            let mut p = port(t);
            for bad in [long.as_str(), "", "a/b", "a b", "a\tb", "a\0b", "eth0:1", ".", "..", "\u{e0}"] {
                p.iface = Some(bad.into());
                assert_eq!(p.backend().map_err(|e| e.field), Err("iface".into()), "{t:?} iface {bad:?}");
            }
            p.iface = Some("a".repeat(IFNAME_MAX));
            assert!(p.backend().is_ok(), "{t:?}");
            p.iface = None;
            p.name = long.clone();
            assert_eq!(p.backend().map_err(|e| e.field), Err("name".into()), "{t:?} without iface");
            p.iface = Some("eth1".into());
            assert!(p.backend().is_ok(), "{t:?}: a long port name with an iface");
        }
        // A tunnel's interface underlay, in either spelling.
        let mut p = port(PortType::Vxlan);
        p.vni = Some(1);
        p.local = "10.0.0.1".parse().ok();
        for u in [long.clone(), format!("afpacket:{long},recvmmsg"), "afpacket:a b".into()] {
            p.underlay = Some(u.clone());
            assert_eq!(p.backend().map_err(|e| e.field), Err("underlay".into()), "{u:?}");
        }
        // An underlay no backend opens as an uplink is refused with the configuration, not at
        // open: an unknown prefix, another port type, a bad option or PCI address.
        for u in [
            "foo:bar",
            "ring:r",
            "tap:eth0",
            "afpacket:eth0,fast",
            "afxdp:eth0,queues=0",
            "afxdp:eth0,zc",
            "afxdp:a b",
            "dpdk:",
            "dpdk:3b:02",
        ] {
            p.underlay = Some(u.into());
            let e = p.backend().unwrap_err();
            assert_eq!(e.field, "underlay", "{u:?}: {e:?}");
            assert!(
                e.msg.contains(&format!("{u:?}")) && e.msg.contains("an underlay is kernel"),
                "{u:?}: {e:?}"
            );
        }
        for u in [
            "kernel",
            "eth0",
            "afpacket:eth0",
            "afxdp:eth0",
            "afxdp:eth0,queues=2",
            "dpdk:0000:3b:02.1",
            "dpdk:net_null0,x=1",
        ] {
            p.underlay = Some(u.into());
            assert!(p.backend().is_ok(), "{u:?}");
        }
        p.underlay = Some("afpacket:eth0,recvmmsg".into());
        assert!(p.backend().is_ok());
        // The port's own address as an endpoint: its flooded frames would come back to it.
        p.flood = Some(vec!["10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()]);
        assert_eq!(p.backend(), Err(err("flood[1]", "10.0.0.1 is the port's own local address")));
        p.flood = None;
        p.remote_macs = vec![RemoteMac {
            mac: crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
            remote: "10.0.0.1".parse().unwrap(),
        }];
        assert_eq!(p.backend().map_err(|e| e.field), Err("remote_macs[0].remote".into()));
        p.remote_macs.clear();
        // The --port spelling refuses the same.
        for spec in
            [format!("tap:{long}"), "afpacket:a/b".into(), "afxdp:a b".into(), "vhost:/s,queues=9".into()]
        {
            assert!(spec.parse::<Backend>().is_err(), "{spec}");
        }
        assert!("vhost:/s,queues=8".parse::<Backend>().is_ok());
    }
}
