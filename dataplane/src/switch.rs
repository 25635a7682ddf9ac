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
//! - The per-burst counters every frame moves (RX and TX packets and bytes) are kept in one
//!   copy per worker (at most [`COUNTER_SHARDS`]; [`SwitchConfig::counter_shards`]) on cache
//!   lines of their own, each worker adding to its own copy ([`set_counter_shard`]), so that
//!   workers receiving from or sending to one port do not pass its counters' line between
//!   their cores every burst; readers sum the copies. A port's copies are as many as its
//!   first snapshot's `counter_shards`: a thread whose shard a port lacks adds to the first
//!   copy (atomic adds: the sums stay exact, only the line is shared).

use crate::config::{BridgeConfig, Config, ConfigError, PortConfig, PortType};
use crate::fdb::MacTable;
use crate::vlan::{VlanMode, VlanPolicy};
use crate::wire::MacAddr;
use std::cell::Cell;
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
    Oversize => "oversize", "Larger than a buffer's data room (or, from a DPDK driver, a data window past the mbuf's own buffer, or a chain of segments).";
    TruncatedCapture => "truncated_capture", "A capture record shorter than the frame it recorded.";
    BadOffload => "bad_offload", "A checksum or segmentation request in a virtio-net header (a kernel port's, or a vhost-user guest's with offloads on) that cannot be carried out: an unsupported type, a segment size of 0, or offsets outside the frame.";
    InvalidSrcMac => "invalid_src_mac", "Source MAC is multicast, broadcast or all-zero.";
    ReservedDstMac => "reserved_dst_mac", "Destination in 01:80:C2:00:00:00-0F (IEEE reserved).";
    VlanNotAllowed => "vlan_not_allowed", "The port's VLAN mode does not accept the frame's VLAN.";
    SpoofedSrcMac => "spoofed_src_mac", "Source MAC not in the port's allowed_macs.";
    SpoofedArpSha => "spoofed_arp_sha", "ARP sender hardware address not in the port's allowed_macs.";
    SpoofedNdLladdr => "spoofed_nd_lladdr", "IPv6 neighbour discovery (RS, RA, NS, NA) whose source or target link-layer address option names a MAC not in the port's allowed_macs (all-zero passes), or two different MACs.";
    MalformedArp => "malformed_arp", "ARP too short to read on a port that filters ARP senders, or (on a port with allowed_ips) not Ethernet/IPv4 ARP.";
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
    TunnelWrongVni => "tunnel_wrong_vni", "A tunnel datagram for a VNI that is not the port's (on a socket or uplink shared by several VNIs: none of its ports'; also datagrams handed to a port of the socket or uplink that left before taking them, counted on a port still there).";
    TunnelDemuxFull => "tunnel_demux_full", "A tunnel datagram read off a socket or uplink shared by several VNIs found the queue of its VNI's port full (counted on the port that read it).";
    TunnelInnerRunt => "tunnel_inner_runt", "The frame inside a tunnel datagram is shorter than an Ethernet header.";
    GeneveBadOptions => "geneve_bad_options", "Geneve options past the end of the packet, an option overrunning the list, or a critical option switchyard does not understand.";
    TunnelMtu => "tunnel_mtu", "An inner frame too big for the underlay MTU once encapsulated (never fragmented).";
    TunnelNoEndpoint => "tunnel_no_endpoint", "A frame for a tunnel port that knows no endpoint for it (unknown destination, empty flood list).";
    TunnelSendError => "tunnel_send_error", "The kernel refused to send a tunnel datagram (no route, unreachable).";
    TunnelUnresolved => "tunnel_unresolved", "A tunnel frame to an endpoint whose MAC address is not resolved yet (uplink fast path: ARP/ND probe sent, the frame is not held).";
    UplinkNotTunnel => "uplink_not_tunnel", "A frame on a tunnel port's uplink that is neither for the tunnel's address and UDP port nor ARP/ND about it (uplink fast path; an AF_PACKET uplink's kernel still gets it).";
    TunnelOuterMalformed => "tunnel_outer_malformed", "Outer IP/UDP headers to the tunnel's address cut short or invalid: lengths, IPv4 header checksum, UDP checksum (required over IPv6), a fragment (uplink fast path).";
    SpoofedSrcIp => "spoofed_src_ip", "IP source address not one of the port's addresses (allowed_ips; IPv6: also the link-local address derived from the frame's source MAC; from :: only a neighbour solicitation or MLD report to ff02::/16, from 0.0.0.0 only DHCP to 255.255.255.255); also an IPv6 neighbour advertisement whose target is not one of them nor that link-local address.";
    SpoofedArpSpa => "spoofed_arp_spa", "ARP sender protocol address not one of the port's addresses (allowed_ips).";
    MalformedIp => "malformed_ip", "An IPv4/IPv6 or transport header cut short or invalid, on a bridge with policies or IP spoof filters.";
    PolicyEgressDenied => "policy_egress_denied", "No rule of the sending port's egress policy allows the packet, and it is no reply of a tracked connection.";
    PolicyIngressDenied => "policy_ingress_denied", "No rule of the receiving port's ingress policy allows the packet, and it is no reply of a tracked connection (counted on the sending port, once per receiving port refused).";
    ConntrackFull => "conntrack_full", "A new connection found the bridge's connection table full: not tracked, dropped (fails closed).";
    AfxdpRxDropped => "afxdp_rx_dropped", "The kernel dropped a frame on its way to an AF_XDP socket: larger than a UMEM chunk, no free chunk in the fill ring, or the socket's RX ring full (AF_XDP).";
}

/// The most copies of a port's per-burst counters: workers `w` and `w + COUNTER_SHARDS`
/// share one. 64 bytes a copy (8 copies: 10 MiB for 20,000 ports).
pub const COUNTER_SHARDS: usize = 8;

thread_local! {
    /// The copy of the per-burst counters this thread adds to (0 outside the workers).
    static COUNTER_SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread (worker `worker`) add to its own copy of every port's per-burst
/// counters.
pub fn set_counter_shard(worker: usize) {
    COUNTER_SHARD.with(|s| s.set(worker % COUNTER_SHARDS));
}

/// Drops with no port left to count them on, by reason: frames a port was handed and still
/// held when it left the switch, once no port that could count them is left either (a
/// tunnel port's inbox when the last port on its shared socket or uplink goes). A port's
/// counters go with the port; these are the process's, never reset (`ctl show stats`'s
/// `portless` line, the metric `switchyard_portless_drops_total`).
static PORTLESS_DROPS: [AtomicU64; DropReason::COUNT] = [const { AtomicU64::new(0) }; DropReason::COUNT];

/// Counts `n` frames dropped for reason `r` where no port is left to count them on.
pub fn add_portless_drops(r: DropReason, n: u64) {
    if n != 0 {
        PORTLESS_DROPS[r as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// The drops counted by [`add_portless_drops`] for reason `r`.
pub fn portless_drops(r: DropReason) -> u64 {
    PORTLESS_DROPS[r as usize].load(Ordering::Relaxed)
}

/// One copy of the counters every burst adds to, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct BurstCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
}

/// Counters of one port. Workers add to them once per burst.
#[derive(Debug)]
pub struct PortStats {
    /// RX/TX packets and bytes, one copy per [`set_counter_shard`] shard (1 to
    /// [`COUNTER_SHARDS`] of them).
    burst: Box<[BurstCounters]>,
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

/// [`COUNTER_SHARDS`] copies of the per-burst counters.
impl Default for PortStats {
    fn default() -> Self {
        PortStats::new(COUNTER_SHARDS)
    }
}

impl PortStats {
    /// Zeroed counters with `shards` copies of the per-burst ones (clamped to 1 to
    /// [`COUNTER_SHARDS`]): as many as the workers that add to them.
    pub fn new(shards: usize) -> PortStats {
        PortStats {
            burst: (0..shards.clamp(1, COUNTER_SHARDS)).map(|_| BurstCounters::default()).collect(),
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
    /// This thread's copy of the per-burst counters (the first for a shard this port lacks).
    #[inline]
    fn mine(&self) -> &BurstCounters {
        let all = &self.burst[..];
        match all.get(COUNTER_SHARD.with(Cell::get)) {
            Some(c) => c,
            // `new` makes at least one copy.
            None => &all[0],
        }
    }

    /// How many copies of the per-burst counters this port has.
    pub fn shards(&self) -> usize {
        self.burst.len()
    }

    /// Adds a burst received: `packets` frames of `bytes` bytes in all.
    #[inline]
    pub fn add_rx(&self, packets: u64, bytes: u64) {
        let c = self.mine();
        c.rx_packets.fetch_add(packets, Ordering::Relaxed);
        c.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds a burst sent: `packets` frames of `bytes` bytes in all.
    #[inline]
    pub fn add_tx(&self, packets: u64, bytes: u64) {
        let c = self.mine();
        c.tx_packets.fetch_add(packets, Ordering::Relaxed);
        c.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&BurstCounters) -> &AtomicU64) -> u64 {
        self.burst.iter().map(|c| f(c).load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    }

    pub fn rx_packets(&self) -> u64 {
        self.sum(|c| &c.rx_packets)
    }

    pub fn rx_bytes(&self) -> u64 {
        self.sum(|c| &c.rx_bytes)
    }

    pub fn tx_packets(&self) -> u64 {
        self.sum(|c| &c.tx_packets)
    }

    pub fn tx_bytes(&self) -> u64 {
        self.sum(|c| &c.tx_bytes)
    }

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
            rx_packets: self.rx_packets(),
            rx_bytes: self.rx_bytes(),
            tx_packets: self.tx_packets(),
            tx_bytes: self.tx_bytes(),
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
        for c in self.burst.iter() {
            for a in [&c.rx_packets, &c.rx_bytes, &c.tx_packets, &c.tx_bytes] {
                a.store(0, Ordering::Relaxed);
            }
        }
        for a in [
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
    /// The backend type it was configured with (metrics tell vhost-user ports apart).
    pub kind: Option<PortType>,
    /// The static MAC entries it names.
    pub static_macs: Box<[MacAddr]>,
    /// The policy as configured (what `policy` was compiled from).
    policy_config: Option<Box<crate::policy::PortPolicy>>,
}

impl PortSpec {
    /// Whether compiling `port` would give this spec (counters and id aside):
    /// every field the pipeline reads, and the type, are as `port` names them. Backend options
    /// are not kept here (the runtime opens and updates backends from the configuration),
    /// so a snapshot holds no copy of each port's configuration.
    pub fn built_from(&self, port: &PortConfig) -> bool {
        self.name == port.name
            && self.kind == port.kind
            && self.mac_limit == port.mac_limit.unwrap_or(u32::MAX)
            && self.allowed_macs.as_deref() == port.allowed_macs.as_deref().filter(|l| !l.is_empty())
            && self.allowed_ips.as_deref() == port.allowed_ips.as_deref()
            && self.static_macs[..] == port.static_macs[..]
            && self.policy_config.as_deref() == port.policy.as_ref()
            && self.vlan == vlan_of(port)
    }

    #[inline]
    pub fn allows_src(&self, mac: MacAddr) -> bool {
        match &self.allowed_macs {
            None => true,
            Some(list) => list.contains(&mac),
        }
    }
}

/// The VLAN policy `port` configures.
fn vlan_of(port: &PortConfig) -> VlanPolicy {
    VlanPolicy::new(VlanMode::from(port.effective_vlan_mode()), port.tag.unwrap_or(0), port.trunks.as_deref())
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
    /// The policy epoch of this snapshot: a number no other compiled snapshot has (never 0),
    /// which the connection table's verdicts name ([`crate::conntrack::verdict`]).
    pub policy_epoch: u32,
}

/// The next policy epoch (1, 2, ...; 0 skipped when it wraps).
fn next_epoch() -> u32 {
    static EPOCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let e = EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed).wrapping_add(1);
        if e != 0 {
            return e;
        }
    }
}

/// The immutable configuration snapshot.
#[derive(Debug, Default)]
pub struct SwitchConfig {
    pub bridges: Vec<Bridge>,
    /// Indexed by [`PortId`]; `None` for ids not in use. Shared with the previous snapshot
    /// for every port whose configuration did not change.
    pub ports: Vec<Option<Arc<PortSpec>>>,
    pub by_name: HashMap<String, PortId>,
    /// The copies of the per-burst counters a new port gets; 0: [`COUNTER_SHARDS`]. Taken
    /// over from the previous snapshot ([`SwitchConfig::with_counter_shards`]).
    shards: usize,
}

impl PortSpec {
    /// The compiled form of `port`, as port `id` of bridge `bi`, counting into `stats`.
    fn build(id: PortId, bi: usize, port: &PortConfig, stats: Arc<PortStats>) -> PortSpec {
        PortSpec {
            id,
            name: port.name.clone(),
            bridge: bi,
            vlan: vlan_of(port),
            allowed_macs: port
                .allowed_macs
                .as_ref()
                .filter(|l| !l.is_empty())
                .map(|l| l.clone().into_boxed_slice()),
            mac_limit: port.mac_limit.unwrap_or(u32::MAX),
            allowed_ips: port.allowed_ips.as_ref().map(|l| l.clone().into_boxed_slice()),
            policy: port.policy.as_ref().map(|p| Arc::new(crate::policy::CompiledPolicy::compile(p))),
            stats,
            kind: port.kind,
            static_macs: port.static_macs.clone().into_boxed_slice(),
            policy_config: port.policy.clone().map(Box::new),
        }
    }
}

/// A bridge's policy stage: whether frames go through it, and its connection table (kept
/// from `prev`'s bridge of the same name when the size is the same).
fn bridge_filter(
    b: &BridgeConfig,
    bi: usize,
    prev: Option<&SwitchConfig>,
) -> Result<(bool, Option<Arc<crate::conntrack::Conntrack>>), ConfigError> {
    let filter = b.ports.iter().any(|p| p.policy.is_some() || p.allowed_ips.is_some());
    if !b.ports.iter().any(|p| p.policy.is_some()) {
        return Ok((filter, None));
    }
    let size = b.conntrack_size.unwrap_or(crate::conntrack::DEFAULT_CAPACITY);
    let kept = prev
        .and_then(|p| p.bridges.iter().find(|pb| pb.name == b.name))
        .and_then(|pb| pb.conntrack.clone())
        .filter(|ct| ct.capacity() == size);
    let ct = match kept {
        Some(ct) => ct,
        None => Arc::new(crate::conntrack::Conntrack::new(size).map_err(|e| ConfigError::Invalid {
            field: format!("bridges[{bi}].conntrack_size"),
            msg: e.to_string(),
        })?),
    };
    Ok((filter, Some(ct)))
}

impl SwitchConfig {
    /// Compiles a validated configuration. With `prev`, ports keep their ids, counters and
    /// bridges keep their MAC tables (when the size did not change); entries of removed ports
    /// are flushed. Incremental: a port whose configuration and bridge are as in `prev` keeps
    /// `prev`'s compiled spec (the same `Arc`) and its static entries as installed; only the
    /// other ports are compiled and have their static entries removed and installed. The
    /// result is the snapshot a compile from scratch would give, with the MAC tables kept.
    pub fn compile(cfg: &Config, prev: Option<&SwitchConfig>) -> Result<SwitchConfig, ConfigError> {
        cfg.validate()?;
        // A port keeps its id: looked up in `prev` (twice, rather than copying every name).
        let prev_id = |name: &str| prev.and_then(|p| p.by_name.get(name).copied());
        let mut used = vec![false; MAX_PORTS_PER_NODE];
        for b in &cfg.bridges {
            for port in &b.ports {
                if let Some(id) = prev_id(&port.name) {
                    used[usize::from(id)] = true;
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

        let mut out = SwitchConfig { shards: prev.map_or(0, |p| p.shards), ..SwitchConfig::default() };
        out.by_name.reserve(cfg.bridges.iter().map(|b| b.ports.len()).sum());
        // Ports of `prev` taken over as they were (same id, bridge and configuration).
        let mut same: std::collections::HashSet<PortId> = std::collections::HashSet::new();
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
            let mut members = Vec::with_capacity(b.ports.len());
            for port in &b.ports {
                let id = match prev_id(&port.name) {
                    Some(id) => id,
                    None => alloc_id(&mut used),
                };
                if out.ports.len() <= usize::from(id) {
                    out.ports.resize_with(usize::from(id) + 1, || None);
                }
                let kept = prev.and_then(|p| {
                    let ps = p.ports.get(usize::from(id))?.as_ref()?;
                    (ps.bridge == bi
                        && p.bridges
                            .get(bi)
                            .is_some_and(|pb| pb.name == b.name && Arc::ptr_eq(&pb.table, &table))
                        && ps.built_from(port))
                    .then(|| ps.clone())
                });
                if let Some(spec) = kept {
                    same.insert(id);
                    out.by_name.insert(port.name.clone(), id);
                    out.ports[usize::from(id)] = Some(spec);
                    members.push(id);
                    continue;
                }
                let stats = prev
                    .and_then(|p| p.port_by_name(&port.name))
                    .map(|ps| ps.stats.clone())
                    .unwrap_or_else(|| out.new_stats());
                out.by_name.insert(port.name.clone(), id);
                out.ports[usize::from(id)] = Some(Arc::new(PortSpec::build(id, bi, port, stats)));
                members.push(id);
            }
            let (filter, conntrack) = bridge_filter(b, bi, prev)?;
            out.bridges.push(Bridge {
                name: b.name.clone(),
                table,
                ports: members,
                filter,
                conntrack,
                policy_epoch: next_epoch(),
            });
        }
        // Entries of ports that left a bridge (or the node): one pass per table, so that a large
        // change costs a scan per bridge, not one per port. The tables they left have changed.
        let mut lost: Vec<&Arc<MacTable>> = Vec::new();
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
                lost.push(&p.bridges[bi].table);
            }
        }
        // Static entries, per bridge whose ports changed: each (VLAN, MAC) belongs to the last
        // port (in configuration order) that names it, as installing them in order gives.
        // Entries owned otherwise go, missing ones are installed. A bridge whose ports were
        // all taken over, in a table that lost none, keeps its entries as they are.
        for (bi, b) in cfg.bridges.iter().enumerate() {
            let table = &out.bridges[bi].table;
            let reused = prev.is_some_and(|p| p.bridges.iter().any(|pb| Arc::ptr_eq(&pb.table, table)));
            let touched = b.ports.iter().any(|port| !same.contains(&out.by_name[&port.name]));
            if reused && !touched && !lost.iter().any(|t| Arc::ptr_eq(t, table)) {
                continue;
            }
            let mut want: HashMap<(u16, MacAddr), (PortId, usize)> = HashMap::new();
            for (pi, port) in b.ports.iter().enumerate() {
                if port.static_macs.is_empty() {
                    continue;
                }
                let id = out.by_name[&port.name];
                let Some(spec) = out.ports[usize::from(id)].as_ref() else { continue };
                for mac in &port.static_macs {
                    for v in spec.vlan.carried() {
                        want.insert((v, *mac), (id, pi));
                    }
                }
            }
            if reused {
                table.remove_where(|vlan, mac, port, is_static| {
                    is_static && want.get(&(vlan, mac)).is_none_or(|w| w.0 != port)
                });
            }
            let mut fields: Vec<(u16, MacAddr, PortId, usize)> = want
                .into_iter()
                .filter(|((v, mac), (id, _))| {
                    table.lookup(*v, *mac, 0).is_none_or(|h| !h.is_static || h.port != *id)
                })
                .map(|((v, mac), (id, pi))| (v, mac, id, pi))
                .collect();
            // In configuration order, so that a full table names the same port each time.
            fields.sort_unstable_by_key(|f| (f.3, f.0, f.1));
            for (v, mac, id, pi) in fields {
                table.insert_static(v, mac, id).map_err(|e| ConfigError::Invalid {
                    field: format!("bridges[{bi}].ports[{pi}].static_macs"),
                    msg: e.to_string(),
                })?;
            }
        }
        Ok(out)
    }

    /// This snapshot with the ports named in `touched` (added to, changed in or removed from
    /// `cfg`) compiled again and every other port and bridge taken over as it is: the snapshot
    /// [`SwitchConfig::compile`] of `cfg` with `Some(self)` gives, when `cfg` differs from the
    /// configuration `self` was compiled from only in the touched ports. Its work is the
    /// touched ports and one pass over each bridge they are or were on (membership, the MAC
    /// table's entries of the ports that left); untouched bridges keep their member lists and
    /// policy epochs. `None` where a patch cannot stand in for a compile: the bridges differ,
    /// or a static MAC entry a touched port names or held is also named by another port of
    /// its bridge (which of them owns it is a whole-bridge decision). Nothing is changed
    /// before that is known.
    pub fn patch(&self, cfg: &Config, touched: &[&str]) -> Result<Option<SwitchConfig>, ConfigError> {
        use std::collections::HashSet;
        if cfg.bridges.len() != self.bridges.len() {
            return Ok(None);
        }
        for (b, pb) in cfg.bridges.iter().zip(&self.bridges) {
            let size = b.mac_table_size.unwrap_or(MacTable::DEFAULT_CAPACITY);
            let aging = b.mac_aging_s.unwrap_or(MacTable::DEFAULT_AGING_S);
            let ct = b.conntrack_size.unwrap_or(crate::conntrack::DEFAULT_CAPACITY);
            if b.name != pb.name
                || pb.table.capacity() != size
                || pb.table.aging_s() != aging
                || pb.conntrack.as_ref().is_some_and(|c| c.capacity() != ct)
            {
                return Ok(None);
            }
        }
        let find = |b: &'_ BridgeConfig, name: &str| -> Option<usize> {
            b.ports
                .binary_search_by(|p| p.name.as_str().cmp(name))
                .ok()
                .or_else(|| b.ports.iter().position(|p| p.name == name))
        };
        let set: HashSet<&str> = touched.iter().copied().collect();
        // Bridges the touched ports are or were on.
        let mut hit = vec![false; cfg.bridges.len()];
        let mut now_on: HashMap<&str, usize> = HashMap::with_capacity(set.len());
        for n in &set {
            if let Some(ps) = self.port_by_name(n) {
                hit[ps.bridge] = true;
            }
            for (bi, b) in cfg.bridges.iter().enumerate() {
                if let Some(pi) = find(b, n) {
                    b.ports[pi].validate_in(bi, pi)?;
                    now_on.insert(n, bi);
                    hit[bi] = true;
                    break;
                }
            }
        }
        let mut out = SwitchConfig {
            bridges: Vec::with_capacity(self.bridges.len()),
            ports: self.ports.clone(),
            by_name: self.by_name.clone(),
            shards: self.shards,
        };
        // Ports gone from the node, or from their bridge: all their entries go from the table
        // they leave.
        let mut leave: Vec<HashSet<PortId>> = vec![HashSet::new(); cfg.bridges.len()];
        // Static entries touched ports held (before) and want (after), by bridge.
        let mut held: Vec<HashSet<(u16, MacAddr)>> = vec![HashSet::new(); cfg.bridges.len()];
        let mut want: Vec<HashMap<(u16, MacAddr), PortId>> = vec![HashMap::new(); cfg.bridges.len()];
        let statics = |spec: &PortSpec| -> Vec<(u16, MacAddr)> {
            spec.static_macs.iter().flat_map(|m| spec.vlan.carried().map(move |v| (v, *m))).collect()
        };
        for n in &set {
            let Some(old) = self.port_by_name(n) else { continue };
            if now_on.get(n) != Some(&old.bridge) {
                leave[old.bridge].insert(old.id);
                if !now_on.contains_key(n) {
                    out.ports[usize::from(old.id)] = None;
                    out.by_name.remove(*n);
                }
            }
            held[old.bridge].extend(statics(old));
        }
        // The MACs in play on each bridge: any other port naming one makes the patch a
        // whole-bridge decision.
        let mut play: Vec<HashSet<MacAddr>> =
            held.iter().map(|h| h.iter().map(|(_, m)| *m).collect()).collect();
        for (n, bi) in &now_on {
            if let Some(pi) = find(&cfg.bridges[*bi], n) {
                play[*bi].extend(cfg.bridges[*bi].ports[pi].static_macs.iter().copied());
            }
        }
        // New ports take the lowest free ids, in configuration order (as a compile gives them).
        let mut next = 0usize;
        for (bi, b) in cfg.bridges.iter().enumerate() {
            if !hit[bi] {
                let pb = &self.bridges[bi];
                out.bridges.push(Bridge {
                    name: pb.name.clone(),
                    table: pb.table.clone(),
                    ports: pb.ports.clone(),
                    filter: pb.filter,
                    conntrack: pb.conntrack.clone(),
                    policy_epoch: pb.policy_epoch,
                });
                continue;
            }
            let mut members = Vec::with_capacity(b.ports.len());
            for port in &b.ports {
                let name = port.name.as_str();
                if !set.contains(name) {
                    // An untouched port naming a MAC in play: a whole-bridge decision.
                    if port.static_macs.iter().any(|m| play[bi].contains(m)) {
                        return Ok(None);
                    }
                    let Some(&id) = self.by_name.get(name) else { return Ok(None) };
                    members.push(id);
                    continue;
                }
                let prev = self.port_by_name(name);
                let id = match prev {
                    Some(ps) => ps.id,
                    None => {
                        while out.ports.get(next).is_some_and(|p| p.is_some()) {
                            next += 1;
                        }
                        if next >= MAX_PORTS_PER_NODE {
                            return Ok(None);
                        }
                        next as PortId
                    }
                };
                if out.ports.len() <= usize::from(id) {
                    out.ports.resize_with(usize::from(id) + 1, || None);
                }
                let spec = match prev {
                    Some(ps) if ps.bridge == bi && ps.built_from(port) => self.ports[usize::from(id)].clone(),
                    _ => {
                        let stats = prev.map(|ps| ps.stats.clone()).unwrap_or_else(|| self.new_stats());
                        Some(Arc::new(PortSpec::build(id, bi, port, stats)))
                    }
                };
                if let Some(sp) = &spec {
                    for k in statics(sp) {
                        if want[bi].insert(k, id).is_some() {
                            return Ok(None);
                        }
                    }
                }
                out.ports[usize::from(id)] = spec;
                out.by_name.insert(port.name.clone(), id);
                members.push(id);
            }
            let (filter, conntrack) = bridge_filter(b, bi, Some(self))?;
            out.bridges.push(Bridge {
                name: b.name.clone(),
                table: self.bridges[bi].table.clone(),
                ports: members,
                filter,
                conntrack,
                policy_epoch: next_epoch(),
            });
        }
        // A wanted entry held by a port that is not touched: a whole-bridge decision.
        for (bi, w) in want.iter().enumerate() {
            let table = &out.bridges[bi].table;
            for ((v, mac), id) in w {
                if let Some(h) = table.lookup(*v, *mac, 0) {
                    let mine =
                        h.port == *id || self.port(h.port).is_some_and(|ps| set.contains(ps.name.as_str()));
                    if h.is_static && !mine {
                        return Ok(None);
                    }
                }
            }
        }
        // Only now the tables change (they are live): entries of ports that left, static
        // entries held but no longer wanted, then the wanted ones missing.
        for bi in 0..cfg.bridges.len() {
            if leave[bi].is_empty() && held[bi].is_empty() && want[bi].is_empty() {
                continue;
            }
            let table = &out.bridges[bi].table;
            let (l, h, w) = (&leave[bi], &held[bi], &want[bi]);
            table.remove_where(|vlan, mac, port, is_static| {
                l.contains(&port)
                    || (is_static && h.contains(&(vlan, mac)) && w.get(&(vlan, mac)) != Some(&port))
            });
            let mut fields: Vec<(u16, MacAddr, PortId)> = w
                .iter()
                .filter(|((v, mac), id)| {
                    table.lookup(*v, *mac, 0).is_none_or(|h| !h.is_static || h.port != **id)
                })
                .map(|((v, mac), id)| (*v, *mac, *id))
                .collect();
            fields.sort_unstable();
            for (v, mac, id) in fields {
                table.insert_static(v, mac, id).map_err(|e| ConfigError::Invalid {
                    field: format!("bridges[{bi}].static_macs"),
                    msg: e.to_string(),
                })?;
            }
        }
        Ok(Some(out))
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortSpec> {
        self.ports.get(usize::from(id)).and_then(|p| p.as_deref())
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

    /// An empty snapshot whose new ports get `workers` copies of their per-burst counters
    /// (at most [`COUNTER_SHARDS`]), as do the ports of every snapshot compiled or patched
    /// from it: one per worker of the switch that runs it, whose shards are its indexes.
    pub fn with_counter_shards(workers: usize) -> SwitchConfig {
        SwitchConfig { shards: workers.clamp(1, COUNTER_SHARDS), ..SwitchConfig::default() }
    }

    /// The copies of the per-burst counters a port new in this snapshot gets.
    pub fn counter_shards(&self) -> usize {
        if self.shards == 0 {
            COUNTER_SHARDS
        } else {
            self.shards
        }
    }

    /// New counters for a port of this snapshot.
    fn new_stats(&self) -> Arc<PortStats> {
        Arc::new(PortStats::new(self.counter_shards()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str, prev: Option<&SwitchConfig>) -> SwitchConfig {
        SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid YAML"), prev).expect("compiles")
    }

    const AB: &str = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: b, tag: 10}\n";

    /// One thread per worker index of `workers`, each on that worker's counter shard, adding
    /// 1,000 times one received frame of `rx_bytes` and `tx_frames` sent of `tx_bytes`.
    fn from_workers(
        stats: &Arc<PortStats>,
        workers: impl Iterator<Item = usize>,
        (rx_bytes, tx_frames, tx_bytes): (u64, u64, u64),
    ) {
        let threads: Vec<_> = workers
            .map(|w| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    set_counter_shard(w);
                    for _ in 0..1000 {
                        stats.add_rx(1, rx_bytes);
                        stats.add_tx(tx_frames, tx_bytes);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Workers add to their own copies of a port's RX/TX counters (shards 0 to
    /// COUNTER_SHARDS, the last one shared with worker 0); readers see the sum, and a clear
    /// zeroes every copy.
    #[test]
    fn per_worker_counter_copies_sum_up_and_clear() {
        let stats = Arc::new(PortStats::default());
        from_workers(&stats, 0..=COUNTER_SHARDS, (60, 2, 128));
        let n = (COUNTER_SHARDS as u64 + 1) * 1000;
        let snap = stats.snapshot();
        assert_eq!(
            (snap.rx_packets, snap.rx_bytes, snap.tx_packets, snap.tx_bytes),
            (n, 60 * n, 2 * n, 128 * n)
        );
        // Every copy got its share: no shard was left out of the writes.
        assert!(stats.burst.iter().all(|c| c.rx_packets.load(Ordering::Relaxed) >= 1000));
        stats.clear();
        assert_eq!(
            (stats.rx_packets(), stats.rx_bytes(), stats.tx_packets(), stats.tx_bytes()),
            (0, 0, 0, 0)
        );
    }

    /// A switch of 2 workers gives its ports 2 copies of the per-burst counters, through
    /// compiles and patches alike (a port kept keeps its counters); a thread whose shard a
    /// port lacks adds to the first copy, and the sums stay exact.
    #[test]
    fn counter_copies_follow_the_workers() {
        let empty = SwitchConfig::with_counter_shards(2);
        let first = compile(AB, Some(&empty));
        assert_eq!(first.counter_shards(), 2);
        assert!(first.ports.iter().flatten().all(|p| p.stats.shards() == 2));
        let three = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: b, tag: 10}\n  \
                     - {name: c, tag: 10}\n";
        let patched = first
            .patch(&Config::from_yaml_str(three).unwrap(), &["c"])
            .unwrap()
            .expect("a new port is a patch");
        assert_eq!(patched.port_by_name("c").unwrap().stats.shards(), 2);
        let again = compile(three, Some(&patched));
        assert!(again.ports.iter().flatten().all(|p| p.stats.shards() == 2));
        assert_eq!(compile(AB, None).port_by_name("a").unwrap().stats.shards(), COUNTER_SHARDS);

        let stats = again.port_by_name("a").unwrap().stats.clone();
        from_workers(&stats, 0..4, (60, 1, 60));
        assert_eq!((stats.rx_packets(), stats.tx_bytes()), (4000, 240_000));
        let per: Vec<u64> = stats.burst.iter().map(|c| c.rx_packets.load(Ordering::Relaxed)).collect();
        assert_eq!(per, [3000, 1000], "shards 0, 2 and 3 add to the first copy");
    }

    /// A snapshot keeps no copy of a port's configuration: a port whose backend options alone
    /// changed keeps its compiled spec (the runtime reopens backends from the configuration),
    /// and a change to any field the spec holds (type included) compiles it again, in a
    /// compile and in a patch alike.
    #[test]
    fn a_spec_is_kept_unless_a_field_it_holds_changed() {
        let port =
            |a: &str| format!("bridges:\n- name: br0\n  ports:\n  - {{name: a, {a}}}\n  - {{name: b}}\n");
        let base = port("tag: 10, type: ring, ring: r1");
        let first = compile(&base, None);
        let spec = |sw: &SwitchConfig| sw.ports[usize::from(sw.by_name["a"])].clone().unwrap();
        let kept = compile(&port("tag: 10, type: ring, ring: r2"), Some(&first));
        assert!(Arc::ptr_eq(&spec(&first), &spec(&kept)), "a backend option alone keeps the spec");
        for changed in [
            "tag: 11, type: ring, ring: r1",
            "tag: 10",
            "tag: 10, type: ring, ring: r1, vlan_mode: native-untagged",
            "tag: 10, type: ring, ring: r1, static_macs: ['02:00:00:00:00:01']",
            "tag: 10, type: ring, ring: r1, allowed_macs: ['02:00:00:00:00:01']",
            "tag: 10, type: ring, ring: r1, mac_limit: 5",
            "tag: 10, type: ring, ring: r1, allowed_ips: [10.0.0.1]",
            "tag: 10, type: ring, ring: r1, policy: {ingress: {rules: []}}",
        ] {
            let cfg = Config::from_yaml_str(&port(changed)).unwrap();
            let p = &cfg.bridges[0].ports[0];
            assert!(!spec(&first).built_from(p), "{changed}");
            let again = SwitchConfig::compile(&cfg, Some(&first)).unwrap();
            assert!(!Arc::ptr_eq(&spec(&first), &spec(&again)), "compile: {changed}");
            assert!(spec(&again).built_from(p), "{changed}");
            let patched = first.patch(&cfg, &["a"]).unwrap().expect("a patch");
            assert!(!Arc::ptr_eq(&spec(&first), &spec(&patched)), "patch: {changed}");
            assert_eq!(spec(&patched).stats.snapshot(), spec(&first).stats.snapshot(), "{changed}");
        }
    }

    /// A recompile keeps each surviving port's id and counters, gives a new port a free id,
    /// and keeps the bridge's MAC table with its learned entries.
    #[test]
    fn recompile_keeps_ids_counters_and_table() {
        let first = compile(AB, None);
        let (a, b) = (first.by_name["a"], first.by_name["b"]);
        first.port(a).unwrap().stats.add_rx(7, 0);
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
