//! The compiled configuration snapshot that workers read, and the per-port counters.
//!
//! Invariants:
//! - A [`SwitchConfig`] is immutable once built; the control thread publishes a new one and
//!   workers pick it up between bursts.
//! - A port keeps its [`PortId`] for as long as a port of that name exists, across snapshots,
//!   so MAC table entries (which store port ids) stay meaningful; a removed port's id is
//!   reused only after its entries were flushed.
//! - Bridges keep their MAC table across snapshots unless the table's size changes.
//! - Counters live outside the snapshot (`Arc<PortStats>`) and survive reconfiguration.

use crate::config::{Config, ConfigError, PortConfig};
use crate::fdb::MacTable;
use crate::vlan::{VlanMode, VlanPolicy};
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A port's index in the snapshot and in MAC table entries.
pub type PortId = u16;
/// At most this many ports on a node (ids are u16; 20,000 VM interfaces fit).
pub const MAX_PORTS_PER_NODE: usize = 32768;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a frame was dropped. Every drop in the dataplane is one of these, counted on a
        /// port: ingress reasons on the port the frame came in on, egress reasons (`tx_*`,
        /// `port_down`) on the port it was going out of.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = DropReason::ALL.len();
            /// The counter's name, as `stats.json`, `ctl` and the trace print it.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    Runt => "runt", "Shorter than an Ethernet header (14 bytes).";
    TruncatedVlanTag => "truncated_vlan_tag", "EtherType 0x8100 but the tag is cut short.";
    Oversize => "oversize", "Larger than a buffer's data room.";
    TruncatedCapture => "truncated_capture", "A capture record shorter than the frame it recorded.";
    BadOffload => "bad_offload", "A kernel port's checksum or segmentation request (virtio-net header) that cannot be carried out: an unsupported type, or offsets outside the frame.";
    InvalidSrcMac => "invalid_src_mac", "Source MAC is multicast, broadcast or all-zero.";
    ReservedDstMac => "reserved_dst_mac", "Destination in 01:80:C2:00:00:00-0F (IEEE reserved).";
    VlanNotAllowed => "vlan_not_allowed", "The port's VLAN mode does not accept the frame's VLAN.";
    SpoofedSrcMac => "spoofed_src_mac", "Source MAC not in the port's allowed_macs.";
    SpoofedArpSha => "spoofed_arp_sha", "ARP sender hardware address not in the port's allowed_macs.";
    MalformedArp => "malformed_arp", "ARP too short to read on a port that filters ARP senders.";
    DstIsIngress => "dst_is_ingress", "Destination learned on the port the frame came in on.";
    NoEgressPort => "no_egress_port", "No other port carries the frame's VLAN (or the destination's port does not).";
    NoBuffer => "no_buffer", "No buffer for a flood copy or a received frame.";
    TxFull => "tx_full", "The egress queue had no room.";
    PortDown => "port_down", "The egress port is down.";
    VhostNoRxDesc => "vhost_no_rx_desc", "The guest posted no RX buffers (vhost-user): it is not reading its queue.";
    VhostTxRetries => "vhost_tx_retries", "The guest's RX ring filled up mid-burst and stayed full after the retries (vhost-user).";
    VhostInvalidDesc => "vhost_invalid_desc", "A guest descriptor chain was invalid: outside guest memory, overflowing, looping, too long, indirect or of the wrong direction (vhost-user).";
    VhostRingBroken => "vhost_ring_broken", "The guest corrupted a ring's indices; the queue is stopped until the guest sets it up again (vhost-user).";
    TunnelTruncated => "tunnel_truncated", "A tunnel datagram shorter than its VXLAN or Geneve header.";
    TunnelBadHeader => "tunnel_bad_header", "A VXLAN header without the I flag, a Geneve version other than 0, a Geneve control message (O bit) or a Geneve payload that is not Ethernet.";
    TunnelWrongVni => "tunnel_wrong_vni", "A tunnel datagram for a VNI that is not the port's.";
    TunnelInnerRunt => "tunnel_inner_runt", "The frame inside a tunnel datagram is shorter than an Ethernet header.";
    GeneveBadOptions => "geneve_bad_options", "Geneve options past the end of the packet, an option overrunning the list, or a critical option switchyard does not understand.";
    TunnelMtu => "tunnel_mtu", "An inner frame too big for the underlay MTU once encapsulated (never fragmented).";
    TunnelNoEndpoint => "tunnel_no_endpoint", "A frame for a tunnel port that knows no endpoint for it (unknown destination, empty flood list).";
    TunnelSendError => "tunnel_send_error", "The kernel refused to send a tunnel datagram (no route, unreachable).";
    TunnelUnresolved => "tunnel_unresolved", "A tunnel frame to an endpoint whose MAC address is not resolved yet (uplink fast path: ARP/ND probe sent, the frame is not held).";
    UplinkNotTunnel => "uplink_not_tunnel", "A frame on a tunnel port's uplink that is neither for the tunnel's address and UDP port nor ARP/ND about it (uplink fast path; an AF_PACKET uplink's kernel still gets it).";
    TunnelOuterMalformed => "tunnel_outer_malformed", "Outer IP/UDP headers to the tunnel's address cut short or invalid: lengths, IPv4 header checksum, UDP checksum (required over IPv6), a fragment (uplink fast path).";
    SpoofedSrcIp => "spoofed_src_ip", "IP source address not one of the port's addresses (allowed_ips).";
    SpoofedArpSpa => "spoofed_arp_spa", "ARP sender protocol address not one of the port's addresses (allowed_ips).";
    MalformedIp => "malformed_ip", "An IPv4/IPv6 or transport header cut short or invalid, on a bridge with policies or IP spoof filters.";
    PolicyEgressDenied => "policy_egress_denied", "No rule of the sending port's egress policy allows the packet, and it is no reply of a tracked connection.";
    PolicyIngressDenied => "policy_ingress_denied", "No rule of the receiving port's ingress policy allows the packet, and it is no reply of a tracked connection (counted on the sending port, once per receiving port refused).";
    ConntrackFull => "conntrack_full", "A new connection found the bridge's connection table full: not tracked, dropped (fails closed).";
    AfxdpRxDropped => "afxdp_rx_dropped", "The kernel dropped a frame on its way to an AF_XDP socket: larger than a UMEM chunk, no free chunk in the fill ring, or the socket's RX ring full (AF_XDP).";
}

/// Counters of one port. Workers add to them once per burst.
#[derive(Debug)]
pub struct PortStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames this port received that were flooded.
    pub flooded: AtomicU64,
    /// New MACs learned on this port.
    pub learned: AtomicU64,
    /// MACs that moved to this port from another.
    pub moved_in: AtomicU64,
    /// Frames whose source is a static entry of another port (forwarded, not learned).
    pub static_conflicts: AtomicU64,
    /// New MACs not learned because of `mac_limit` (frames still forwarded).
    pub mac_limit_hits: AtomicU64,
    /// New MACs not learned because the bridge's table was full (frames still forwarded).
    pub fdb_full: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
}

// By hand: `Default` is derived for arrays of at most 32 elements, and there are more reasons.
impl Default for PortStats {
    fn default() -> Self {
        PortStats {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            flooded: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            moved_in: AtomicU64::new(0),
            static_conflicts: AtomicU64::new(0),
            mac_limit_hits: AtomicU64::new(0),
            fdb_full: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A plain copy of [`PortStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortStatsSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub flooded: u64,
    pub learned: u64,
    pub moved_in: u64,
    pub static_conflicts: u64,
    pub mac_limit_hits: u64,
    pub fdb_full: u64,
    /// Every drop reason by name, zeros included.
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

impl PortStats {
    #[inline]
    pub fn add_drop(&self, r: DropReason, n: u64) {
        if n != 0 {
            self.drops[r as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize].load(Ordering::Relaxed)
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    pub fn snapshot(&self) -> PortStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PortStatsSnapshot {
            rx_packets: l(&self.rx_packets),
            rx_bytes: l(&self.rx_bytes),
            tx_packets: l(&self.tx_packets),
            tx_bytes: l(&self.tx_bytes),
            flooded: l(&self.flooded),
            learned: l(&self.learned),
            moved_in: l(&self.moved_in),
            static_conflicts: l(&self.static_conflicts),
            mac_limit_hits: l(&self.mac_limit_hits),
            fdb_full: l(&self.fdb_full),
            drops: DropReason::ALL.iter().map(|r| (r.name(), self.drop_count(*r))).collect(),
        }
    }

    pub fn clear(&self) {
        for a in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
            &self.flooded,
            &self.learned,
            &self.moved_in,
            &self.static_conflicts,
            &self.mac_limit_hits,
            &self.fdb_full,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for d in &self.drops {
            d.store(0, Ordering::Relaxed);
        }
    }
}

/// One port as the pipeline sees it.
#[derive(Debug)]
pub struct PortSpec {
    pub id: PortId,
    pub name: String,
    /// Index into [`SwitchConfig::bridges`].
    pub bridge: usize,
    pub vlan: VlanPolicy,
    /// The spoof filter: `None` when the port has none.
    pub allowed_macs: Option<Box<[MacAddr]>>,
    pub mac_limit: u32,
    /// The IP spoof filter: `None` when the port has none.
    pub allowed_ips: Option<Box<[std::net::IpAddr]>>,
    /// The compiled policy: `None` when the port is open both ways.
    pub policy: Option<Arc<crate::policy::CompiledPolicy>>,
    pub stats: Arc<PortStats>,
    /// The configuration this port was built from (backend type and options).
    pub config: PortConfig,
}

impl PortSpec {
    #[inline]
    pub fn allows_src(&self, mac: MacAddr) -> bool {
        match &self.allowed_macs {
            None => true,
            Some(list) => list.contains(&mac),
        }
    }
}

/// One bridge: its ports and MAC table.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    pub table: Arc<MacTable>,
    /// Member ports, in configuration order (the flood order).
    pub ports: Vec<PortId>,
    /// Some port has a policy or an IP spoof filter: frames go through the policy stage.
    pub filter: bool,
    /// The connection table, when some port has a policy.
    pub conntrack: Option<Arc<crate::conntrack::Conntrack>>,
}

/// The immutable configuration snapshot.
#[derive(Debug, Default)]
pub struct SwitchConfig {
    pub bridges: Vec<Bridge>,
    /// Indexed by [`PortId`]; `None` for ids not in use.
    pub ports: Vec<Option<PortSpec>>,
    pub by_name: HashMap<String, PortId>,
    pub source: Config,
}

impl SwitchConfig {
    /// Compiles a validated configuration. With `prev`, ports keep their ids, counters and
    /// bridges keep their MAC tables (when the size did not change); static entries of every
    /// port are re-installed, and entries of removed ports are flushed.
    pub fn compile(cfg: &Config, prev: Option<&SwitchConfig>) -> Result<SwitchConfig, ConfigError> {
        cfg.validate()?;
        let mut ids: HashMap<String, PortId> = HashMap::new();
        let mut used = vec![false; MAX_PORTS_PER_NODE];
        if let Some(p) = prev {
            for b in &cfg.bridges {
                for port in &b.ports {
                    if let Some(&id) = p.by_name.get(&port.name) {
                        ids.insert(port.name.clone(), id);
                        used[usize::from(id)] = true;
                    }
                }
            }
        }
        let mut next = 0usize;
        let mut alloc_id = |used: &mut Vec<bool>| -> PortId {
            while used[next] {
                next += 1;
            }
            used[next] = true;
            next as PortId
        };

        let mut out = SwitchConfig { source: cfg.clone(), ..Default::default() };
        for (bi, b) in cfg.bridges.iter().enumerate() {
            let size = b.mac_table_size.unwrap_or(MacTable::DEFAULT_CAPACITY);
            let aging = b.mac_aging_s.unwrap_or(MacTable::DEFAULT_AGING_S);
            let reuse = prev
                .and_then(|p| p.bridges.iter().find(|pb| pb.name == b.name))
                .filter(|pb| pb.table.capacity() == size)
                .map(|pb| pb.table.clone());
            let table = match reuse {
                Some(t) => {
                    t.set_aging_s(aging);
                    t
                }
                None => Arc::new(MacTable::new(size, aging).map_err(|e| ConfigError::Invalid {
                    field: format!("bridges[{bi}].mac_table_size"),
                    msg: e.to_string(),
                })?),
            };
            let mut members = Vec::new();
            for port in &b.ports {
                let id = match ids.get(&port.name) {
                    Some(&id) => id,
                    None => alloc_id(&mut used),
                };
                let stats = prev
                    .and_then(|p| p.port_by_name(&port.name))
                    .map(|ps| ps.stats.clone())
                    .unwrap_or_default();
                let mode = VlanMode::from(port.effective_vlan_mode());
                let vlan = VlanPolicy::new(mode, port.tag.unwrap_or(0), port.trunks.as_deref());
                let spec = PortSpec {
                    id,
                    name: port.name.clone(),
                    bridge: bi,
                    vlan,
                    allowed_macs: port
                        .allowed_macs
                        .as_ref()
                        .filter(|l| !l.is_empty())
                        .map(|l| l.clone().into_boxed_slice()),
                    mac_limit: port.mac_limit.unwrap_or(u32::MAX),
                    allowed_ips: port.allowed_ips.as_ref().map(|l| l.clone().into_boxed_slice()),
                    policy: port.policy.as_ref().map(|p| Arc::new(crate::policy::CompiledPolicy::compile(p))),
                    stats,
                    config: port.clone(),
                };
                if out.ports.len() <= usize::from(id) {
                    out.ports.resize_with(usize::from(id) + 1, || None);
                }
                out.by_name.insert(port.name.clone(), id);
                out.ports[usize::from(id)] = Some(spec);
                members.push(id);
            }
            let filter = b.ports.iter().any(|p| p.policy.is_some() || p.allowed_ips.is_some());
            let conntrack = b.ports.iter().any(|p| p.policy.is_some()).then(|| {
                let size = b.conntrack_size.unwrap_or(crate::conntrack::DEFAULT_CAPACITY);
                prev.and_then(|p| p.bridges.iter().find(|pb| pb.name == b.name))
                    .and_then(|pb| pb.conntrack.clone())
                    .filter(|ct| ct.capacity() == size)
                    .unwrap_or_else(|| Arc::new(crate::conntrack::Conntrack::new(size)))
            });
            out.bridges.push(Bridge { name: b.name.clone(), table, ports: members, filter, conntrack });
        }
        // Entries of ports that left a bridge (or the node): one pass per table, so that a large
        // change costs a scan per bridge, not one per port.
        if let Some(p) = prev {
            let mut gone: HashMap<usize, std::collections::HashSet<PortId>> = HashMap::new();
            for old in p.ports.iter().flatten() {
                let still = out
                    .port_by_name(&old.name)
                    .map(|np| out.bridges[np.bridge].name == p.bridges[old.bridge].name);
                if still != Some(true) {
                    gone.entry(old.bridge).or_default().insert(old.id);
                }
            }
            for (bi, ids) in gone {
                p.bridges[bi].table.remove_where(|_, _, port, _| ids.contains(&port));
            }
        }
        // Static entries: drop the ones no longer wanted in one pass, then (re)install the rest.
        for (bi, b) in cfg.bridges.iter().enumerate() {
            let table = &out.bridges[bi].table;
            let mut want: std::collections::HashSet<(u16, MacAddr, PortId)> =
                std::collections::HashSet::new();
            let mut fields = Vec::new();
            for (pi, port) in b.ports.iter().enumerate() {
                let id = out.by_name[&port.name];
                let Some(spec) = out.ports[usize::from(id)].as_ref() else { continue };
                for mac in &port.static_macs {
                    for v in spec.vlan.carried().iter() {
                        if want.insert((v, *mac, id)) {
                            fields.push((v, *mac, id, pi));
                        }
                    }
                }
            }
            table.remove_where(|vlan, mac, port, is_static| is_static && !want.contains(&(vlan, mac, port)));
            for (v, mac, id, pi) in fields {
                table.insert_static(v, mac, id).map_err(|e| ConfigError::Invalid {
                    field: format!("bridges[{bi}].ports[{pi}].static_macs"),
                    msg: e.to_string(),
                })?;
            }
        }
        Ok(out)
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortSpec> {
        self.ports.get(usize::from(id)).and_then(|p| p.as_ref())
    }

    pub fn port_by_name(&self, name: &str) -> Option<&PortSpec> {
        self.by_name.get(name).and_then(|id| self.port(*id))
    }

    pub fn port_ids(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports.iter().flatten().map(|p| p.id)
    }

    /// One past the highest port id in use: the size of per-port arrays.
    pub fn port_slots(&self) -> usize {
        self.ports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str, prev: Option<&SwitchConfig>) -> SwitchConfig {
        SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid YAML"), prev).expect("compiles")
    }

    const AB: &str = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: b, tag: 10}\n";

    /// A recompile keeps each surviving port's id and counters, gives a new port a free id,
    /// and keeps the bridge's MAC table with its learned entries.
    #[test]
    fn recompile_keeps_ids_counters_and_table() {
        let first = compile(AB, None);
        let (a, b) = (first.by_name["a"], first.by_name["b"]);
        first.port(a).unwrap().stats.rx_packets.fetch_add(7, Ordering::Relaxed);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        first.bridges[0].table.learn(10, mac, b, 1, u32::MAX);

        // b first in the new order, a third port added.
        let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: b, tag: 10}\n  - {name: a, tag: 10}\n  \
                    - {name: c, tag: 10}\n";
        let second = compile(yaml, Some(&first));
        assert_eq!((second.by_name["a"], second.by_name["b"]), (a, b), "ids follow names, not order");
        let c = second.by_name["c"];
        assert!(c != a && c != b, "the new port gets an id of its own");
        assert_eq!(second.port(a).unwrap().stats.snapshot().rx_packets, 7, "counters carried over");
        assert!(Arc::ptr_eq(&first.bridges[0].table, &second.bridges[0].table), "same MAC table");
        assert_eq!(second.bridges[0].table.lookup(10, mac, 1).map(|h| h.port), Some(b));
        assert_eq!(second.bridges[0].ports, vec![b, a, c], "flood order is configuration order");
    }

    /// A port that leaves takes its learned entries with it; the ports that stay keep theirs,
    /// and its id is free for the next new port.
    #[test]
    fn removed_port_loses_its_entries_and_frees_its_id() {
        let first = compile(AB, None);
        let (a, b) = (first.by_name["a"], first.by_name["b"]);
        let (ma, mb) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        first.bridges[0].table.learn(10, ma, a, 1, u32::MAX);
        first.bridges[0].table.learn(10, mb, b, 1, u32::MAX);

        let only_a = compile("bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n", Some(&first));
        let table = &only_a.bridges[0].table;
        assert_eq!(table.lookup(10, ma, 1).map(|h| h.port), Some(a));
        assert_eq!(table.lookup(10, mb, 1), None, "b's entry went with b");
        assert!(only_a.port_by_name("b").is_none());

        let again = compile(
            "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: d, tag: 10}\n",
            Some(&only_a),
        );
        assert_eq!(again.by_name["d"], b, "the lowest free id is reused");
        assert_eq!(again.port(b).unwrap().stats.snapshot().rx_packets, 0, "a new port starts at zero");
    }

    /// Static MACs are installed on every VLAN the port carries, and a recompile without them
    /// removes them.
    #[test]
    fn static_macs_follow_the_configuration() {
        let yaml =
            "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10, static_macs: ['02:00:00:00:00:0a']}\n  \
                    - {name: b, tag: 10}\n";
        let first = compile(yaml, None);
        let mac = MacAddr([2, 0, 0, 0, 0, 0xa]);
        let hit = first.bridges[0].table.lookup(10, mac, 1).expect("static entry installed");
        assert_eq!((hit.port, hit.is_static), (first.by_name["a"], true));
        let second = compile(AB, Some(&first));
        assert_eq!(second.bridges[0].table.lookup(10, mac, 1), None, "static entry removed");
    }
}
