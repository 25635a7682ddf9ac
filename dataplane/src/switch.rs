//! The compiled configuration snapshot that workers read, and the per-port counters.
//!
//! Invariants:
//! - A [`SwitchConfig`] is immutable once built; the control thread publishes a new one and
//!   workers pick it up between bursts.
//! - A port keeps its [`PortId`] for as long as a port of that name exists, across snapshots,
//!   so MAC table entries (which store port ids) stay meaningful; a removed port's id is
//!   reused only after every worker runs a snapshot without it and its entries were flushed
//!   after that ([`SwitchConfig::settle`]): no entry learned on it resolves to another port.
//! - Compiling changes the live MAC tables only once nothing can fail.
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
    BadOffload => "bad_offload", "A checksum or segmentation request in a virtio-net header (a kernel port's, or a vhost-user guest's with offloads on) that cannot be carried out: an unsupported type, a segment size of 0, offsets outside the frame, or a checksum start that is not the IP header's TCP or UDP header of the type.";
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
    VhostRingStopped => "vhost_ring_stopped", "The frontend stopped a guest TX ring (device reset, disconnect, memory table refused) while a super-frame from it was being cut into segments: the rest of its segments is dropped, counted once per super-frame (vhost-user).";
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
    TunnelUnknownSource => "tunnel_unknown_source", "A tunnel datagram from an outer source address that is no endpoint of the port (not in its flood list, no static remote MAC's), on a port with learning off: not taken, as OVN's tunnel ports take only their chassis' addresses.";
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
    /// The compiled policy: `None` when the port has none (a `policy: {}` with neither
    /// direction is `Some`: the port is open both ways, but its connections are tracked, as
    /// every connection of a port with a policy is).
    pub policy: Option<Arc<crate::policy::CompiledPolicy>>,
    pub stats: Arc<PortStats>,
    /// The backend type it was configured with (metrics tell vhost-user ports apart); `None`
    /// and `Some(Ring)` are both a ring port (a spec kept across `type: ring` written out or
    /// left out keeps the spelling it was built from: [`PortSpec::built_from`]).
    pub kind: Option<PortType>,
    /// The static MAC entries it names.
    pub static_macs: Box<[MacAddr]>,
    /// The policy as configured (what `policy` was compiled from).
    policy_config: Option<Box<crate::policy::PortPolicy>>,
}

impl PortSpec {
    /// Whether compiling `port` would give this spec (counters and id aside):
    /// every field the pipeline reads, and the type, are as `port` names them (a port without
    /// `type` is a ring port, as `PortConfig::backend` opens it: `type: ring` written out or
    /// left out is no change). Backend options are not kept here (the runtime opens and
    /// updates backends from the configuration), so a snapshot holds no copy of each port's
    /// configuration.
    pub fn built_from(&self, port: &PortConfig) -> bool {
        let ty = |k: Option<PortType>| k.unwrap_or(PortType::Ring);
        self.name == port.name
            && ty(self.kind) == ty(port.kind)
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
    /// Static entries the configuration names but the table cannot hold (more static entries
    /// than its size): (port, VLAN, MAC), the last ports in configuration order. A
    /// configuration error of those ports, which the snapshot runs without.
    pub refused_statics: Vec<(PortId, u16, MacAddr)>,
}

/// Learned entries of a port to remove from a table once no worker runs a snapshot older
/// than the one that lists them ([`SwitchConfig::settle`]): a port that left the table's
/// bridge (`keep` `None`: every learned entry of it), or one whose VLANs changed (those of
/// VLANs outside `keep`). Workers on the older snapshot may learn such entries after the
/// compile flushed them.
#[derive(Debug, Clone)]
struct Retired {
    table: Arc<MacTable>,
    port: PortId,
    keep: Option<VlanPolicy>,
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
    /// Learned entries to flush again once every worker runs this snapshot: those of ports
    /// this snapshot removed or changed the VLANs of, and those of earlier snapshots not
    /// settled. The id of a port removed stays unused until then, so that no entry a worker
    /// learned on it can resolve to another port.
    retired: Vec<Retired>,
    /// [`SwitchConfig::settle`] ran: `retired` is done with.
    settled: std::sync::atomic::AtomicBool,
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
        // Nor is a removed port's id given to a new port before every worker runs a snapshot
        // without the removed port (workers on `prev` may still learn entries on it): blocked,
        // unless every other id is taken (more than MAX_PORTS_PER_NODE ports and ports removed
        // in flight; validation keeps the ports themselves within it).
        let mut blocked = vec![false; MAX_PORTS_PER_NODE];
        if let Some(p) = prev {
            for id in p.blocked_ids() {
                if let Some(b) = blocked.get_mut(usize::from(id)) {
                    *b = true;
                }
            }
        }
        let mut next = 0usize;
        let mut alloc_id = |used: &mut Vec<bool>| -> PortId {
            while next < MAX_PORTS_PER_NODE && (used[next] || blocked[next]) {
                next += 1;
            }
            let id = if next < MAX_PORTS_PER_NODE {
                next
            } else {
                // Validation allows no more ports than ids, so one is free.
                used.iter().position(|u| !u).unwrap_or(0)
            };
            used[id] = true;
            id as PortId
        };

        let mut out = SwitchConfig {
            shards: prev.map_or(0, |p| p.shards),
            retired: prev.map(SwitchConfig::unsettled).unwrap_or_default(),
            ..SwitchConfig::default()
        };
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
                refused_statics: Vec::new(),
            });
        }
        // Nothing below fails: the live tables change from here on.
        // Entries of ports that left a bridge (or the node), and learned entries of ports on
        // VLANs they no longer carry: one pass per table, so that a large change costs a scan
        // per bridge, not one per port. The tables they left have changed.
        let mut lost: Vec<&Arc<MacTable>> = Vec::new();
        if let Some(p) = prev {
            let mut gone: HashMap<usize, HashMap<PortId, Option<VlanPolicy>>> = HashMap::new();
            for old in p.ports.iter().flatten() {
                let now = out.port_by_name(&old.name);
                match now.filter(|np| out.bridges[np.bridge].name == p.bridges[old.bridge].name) {
                    None => {
                        gone.entry(old.bridge).or_default().insert(old.id, None);
                    }
                    Some(np) if np.vlan != old.vlan => {
                        gone.entry(old.bridge).or_default().insert(old.id, Some(np.vlan.clone()));
                    }
                    Some(_) => {}
                }
            }
            for (bi, ids) in gone {
                let table = &p.bridges[bi].table;
                table.remove_where(|vlan, _, port, is_static| match ids.get(&port) {
                    Some(None) => true,
                    Some(Some(v)) => !is_static && !v.carries(vlan),
                    None => false,
                });
                if ids.values().any(Option::is_none) {
                    lost.push(table);
                }
                out.retired.extend(ids.into_iter().map(|(port, keep)| Retired {
                    table: table.clone(),
                    port,
                    keep,
                }));
            }
        }
        // Static entries, per bridge whose ports changed: each (VLAN, MAC) belongs to the last
        // port (in configuration order) that names it, as installing them in order gives.
        // Entries owned otherwise go, missing ones are installed. A bridge whose ports were
        // all taken over, in a table that lost none, keeps its entries as they are.
        for (bi, b) in cfg.bridges.iter().enumerate() {
            let table = &out.bridges[bi].table.clone();
            let reused = prev.is_some_and(|p| p.bridges.iter().any(|pb| Arc::ptr_eq(&pb.table, table)));
            let touched = b.ports.iter().any(|port| !same.contains(&out.by_name[&port.name]));
            if reused && !touched && !lost.iter().any(|t| Arc::ptr_eq(t, table)) {
                out.bridges[bi].refused_statics = prev
                    .and_then(|p| p.bridges.iter().find(|pb| Arc::ptr_eq(&pb.table, table)))
                    .map(|pb| pb.refused_statics.clone())
                    .unwrap_or_default();
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
            // More static entries than the table holds: the first ones in configuration order
            // (so that the same ports are refused each time) get in, the others are refused.
            if want.len() > table.capacity() {
                let mut all: Vec<(usize, u16, MacAddr, PortId)> =
                    want.iter().map(|((v, mac), (id, pi))| (*pi, *v, *mac, *id)).collect();
                all.sort_unstable();
                for (_, v, mac, id) in all.drain(table.capacity()..) {
                    want.remove(&(v, mac));
                    out.bridges[bi].refused_statics.push((id, v, mac));
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
            fields.sort_unstable_by_key(|f| (f.3, f.0, f.1));
            for (v, mac, id, _) in fields {
                // Cannot fail: validation refuses multicast MACs and VLANs past 4095, and the
                // table holds only wanted static entries, fewer than its size, so a learned
                // entry makes room when it is full.
                if table.insert_static(v, mac, id).is_err() {
                    out.bridges[bi].refused_statics.push((id, v, mac));
                }
            }
        }
        // Flushes owed to a table no bridge of this snapshot has are moot: no worker running
        // it reads the table (nor keeps it allocated through them).
        let bridges = &out.bridges;
        out.retired.retain(|r| bridges.iter().any(|b| Arc::ptr_eq(&b.table, &r.table)));
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
            retired: self.unsettled(),
            settled: Default::default(),
        };
        // Ids a new port may not take (see `blocked_ids`): this snapshot's and unsettled
        // removed ones.
        let blocked: HashSet<PortId> = self.unsettled_removed().collect();
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
                    refused_statics: pb.refused_statics.clone(),
                });
                continue;
            }
            // Static entries refused on this bridge: which port gets them is a whole-bridge
            // decision.
            if !self.bridges[bi].refused_statics.is_empty() {
                return Ok(None);
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
                        while self.ports.get(next).is_some_and(|p| p.is_some())
                            || out.ports.get(next).is_some_and(|p| p.is_some())
                            || blocked.contains(&(next as PortId))
                        {
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
                refused_statics: Vec::new(),
            });
        }
        // A wanted entry held by a port that is not touched: a whole-bridge decision. So is a
        // table that might not hold every static entry (a bound: the ones there and the ones
        // wanted, as if none were there yet).
        for (bi, w) in want.iter().enumerate() {
            let table = &out.bridges[bi].table;
            if table.statics() + w.len() > table.capacity() {
                return Ok(None);
            }
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
        // Touched ports that stay on their bridge with other VLANs: their learned entries of
        // VLANs they no longer carry go.
        let mut revlan: Vec<HashMap<PortId, VlanPolicy>> = vec![HashMap::new(); cfg.bridges.len()];
        for n in &set {
            if let (Some(old), Some(new)) = (self.port_by_name(n), out.port_by_name(n)) {
                if old.bridge == new.bridge && old.vlan != new.vlan {
                    revlan[new.bridge].insert(new.id, new.vlan.clone());
                }
            }
        }
        // Only now the tables change (they are live), and nothing below fails: entries of
        // ports that left, static entries held but no longer wanted, then the wanted ones
        // missing.
        for bi in 0..cfg.bridges.len() {
            if leave[bi].is_empty() && held[bi].is_empty() && want[bi].is_empty() && revlan[bi].is_empty() {
                continue;
            }
            let table = &out.bridges[bi].table.clone();
            let (l, h, w, r) = (&leave[bi], &held[bi], &want[bi], &revlan[bi]);
            table.remove_where(|vlan, mac, port, is_static| {
                l.contains(&port)
                    || (is_static && h.contains(&(vlan, mac)) && w.get(&(vlan, mac)) != Some(&port))
                    || (!is_static && r.get(&port).is_some_and(|v| !v.carries(vlan)))
            });
            out.retired.extend(l.iter().map(|&port| Retired { table: table.clone(), port, keep: None }));
            out.retired.extend(r.iter().map(|(&port, v)| Retired {
                table: table.clone(),
                port,
                keep: Some(v.clone()),
            }));
            let mut fields: Vec<(u16, MacAddr, PortId)> = w
                .iter()
                .filter(|((v, mac), id)| {
                    table.lookup(*v, *mac, 0).is_none_or(|h| !h.is_static || h.port != **id)
                })
                .map(|((v, mac), id)| (*v, *mac, *id))
                .collect();
            fields.sort_unstable();
            for (v, mac, id) in fields {
                // Cannot fail (validation, and the bound above): recorded if it did.
                if table.insert_static(v, mac, id).is_err() {
                    out.bridges[bi].refused_statics.push((id, v, mac));
                }
            }
        }
        Ok(Some(out))
    }

    /// Ids no new port of a snapshot compiled or patched from this one may take: those of
    /// this snapshot's ports (a port that leaves in the next one is still learned on by the
    /// workers running this one) and of ports removed before and not settled.
    fn blocked_ids(&self) -> impl Iterator<Item = PortId> + '_ {
        self.port_ids().chain(self.unsettled_removed())
    }

    /// The ids of removed ports in [`SwitchConfig::unsettled`].
    fn unsettled_removed(&self) -> impl Iterator<Item = PortId> + '_ {
        let live = !self.settled.load(Ordering::Acquire);
        self.retired.iter().filter(move |r| live && r.keep.is_none()).map(|r| r.port)
    }

    /// The flushes still owed (none once settled), carried into the next snapshot.
    fn unsettled(&self) -> Vec<Retired> {
        if self.settled.load(Ordering::Acquire) {
            Vec::new()
        } else {
            self.retired.clone()
        }
    }

    /// To be called once every worker runs this snapshot (it was published and applied):
    /// removes the learned entries that workers on older snapshots may have written, since
    /// the compile, on ports this snapshot or an unsettled earlier one removed, or on VLANs
    /// such ports no longer carry, and frees the removed ports' ids for the next snapshot.
    /// Once only; later calls do nothing. Returns how many entries went.
    pub fn settle(&self) -> usize {
        if self.settled.swap(true, Ordering::AcqRel) {
            return 0;
        }
        // One pass per table: by table, the ports and the VLANs each keeps (None: none).
        type Ports<'a> = HashMap<PortId, Option<&'a VlanPolicy>>;
        let mut by_table: Vec<(&Arc<MacTable>, Ports)> = Vec::new();
        for r in &self.retired {
            let i = match by_table.iter().position(|(t, _)| Arc::ptr_eq(t, &r.table)) {
                Some(i) => i,
                None => {
                    by_table.push((&r.table, HashMap::new()));
                    by_table.len() - 1
                }
            };
            // Every learned entry of a port removed once; else the VLANs of its latest change
            // (the list goes oldest first).
            let keep = by_table[i].1.entry(r.port).or_insert(r.keep.as_ref());
            if keep.is_some() {
                *keep = r.keep.as_ref();
            }
        }
        by_table
            .iter()
            .map(|(table, ports)| {
                table.remove_where(|vlan, _, port, is_static| {
                    !is_static && ports.get(&port).is_some_and(|k| k.is_none_or(|v| !v.carries(vlan)))
                })
            })
            .sum()
    }

    /// Static entries refused because their bridge's table is full of static entries, as
    /// (port name, message), one per port.
    pub fn static_errors(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for b in &self.bridges {
            let mut per: std::collections::BTreeMap<PortId, usize> = std::collections::BTreeMap::new();
            for (id, _, _) in &b.refused_statics {
                *per.entry(*id).or_default() += 1;
            }
            for (id, n) in per {
                let name = self.port(id).map_or_else(|| format!("#{id}"), |p| p.name.clone());
                let msg = format!(
                    "{n} static MAC entr{} not installed: bridge {}'s MAC table ({} entries) is full of \
                     static entries of ports before it",
                    if n == 1 { "y" } else { "ies" },
                    b.name,
                    b.table.capacity()
                );
                out.push((name, msg));
            }
        }
        out
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
        // `type` left out is `type: ring`.
        let untyped = compile(&port("tag: 10"), Some(&first));
        assert!(Arc::ptr_eq(&spec(&first), &spec(&untyped)), "type: ring left out keeps the spec");
        assert!(Arc::ptr_eq(&spec(&untyped), &spec(&compile(&base, Some(&untyped)))), "and back");
        for changed in [
            "tag: 11, type: ring, ring: r1",
            "tag: 10, type: tap",
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

        only_a.settle();
        let again = compile(
            "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: d, tag: 10}\n",
            Some(&only_a),
        );
        assert_eq!(again.by_name["d"], b, "the lowest free id is reused once settled");
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

    const MAC_A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);

    /// `n` learned entries on port `port`, VLAN 10, of MACs 02:ee:00:`set`:00:00 on.
    fn fill(table: &MacTable, port: PortId, n: u32, set: u8) {
        for i in 0..n {
            let m = MacAddr([2, 0xee, 0, set, (i >> 8) as u8, i as u8]);
            assert_eq!(table.learn(10, m, port, 1, u32::MAX), crate::fdb::LearnOutcome::Learned);
        }
    }

    /// A MAC table full of learned entries (a flood of source MACs) does not keep a new port
    /// with a static MAC out: a compile and a patch alike install it in place of a learned
    /// entry, counted in the table's evictions.
    #[test]
    fn a_table_full_of_learned_entries_takes_a_new_ports_static_mac() {
        let base = "bridges:\n- name: br0\n  mac_table_size: 64\n  ports:\n  - {name: a, tag: 10}\n";
        let with_c = format!("{base}  - {{name: c, tag: 10, static_macs: ['02:00:00:00:00:0a']}}\n");
        let first = compile(base, None);
        let table = first.bridges[0].table.clone();
        fill(&table, first.by_name["a"], 64, 0);
        assert_eq!(table.len(), 64);

        let cfg = Config::from_yaml_str(&with_c).unwrap();
        let second =
            SwitchConfig::compile(&cfg, Some(&first)).expect("a full table of learned entries compiles");
        let hit = table.lookup(10, MAC_A, 1).expect("c's static entry is in");
        assert_eq!((hit.port, hit.is_static), (second.by_name["c"], true));
        assert_eq!((table.len(), table.evicted()), (64, 1));
        assert!(second.static_errors().is_empty());

        // The same through a patch, on the table full again.
        let third = compile(base, Some(&second));
        third.settle();
        // c's entry went with c: one free place, the rest learned.
        assert_eq!(table.len(), 63);
        fill(&table, third.by_name["a"], 1, 1);
        let patched = third.patch(&cfg, &["c"]).unwrap().expect("a patch");
        assert_eq!(
            table.lookup(10, MAC_A, 1).map(|h| (h.port, h.is_static)),
            Some((patched.by_name["c"], true))
        );
        assert_eq!((table.len(), table.evicted()), (64, 2));
    }

    /// More static MACs than the table holds: the compile succeeds, the first ports in
    /// configuration order get their entries, the last ones are refused and named, one error
    /// per port; a patch leaves the decision to a compile.
    #[test]
    fn static_macs_past_the_table_size_are_refused_per_port() {
        let yaml = "bridges:\n- name: br0\n  mac_table_size: 2\n  ports:\n  \
                    - {name: a, tag: 10, static_macs: ['02:00:00:00:00:01', '02:00:00:00:00:02']}\n  \
                    - {name: b, tag: 10, static_macs: ['02:00:00:00:00:03']}\n";
        let first = compile(yaml, None);
        let table = &first.bridges[0].table;
        assert_eq!((table.len(), table.statics()), (2, 2));
        assert_eq!(table.lookup(10, MacAddr([2, 0, 0, 0, 0, 3]), 1), None);
        let errs = first.static_errors();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "b");
        assert!(errs[0].1.contains("1 static MAC entry not installed"), "{}", errs[0].1);
        // Recompiled as it is, the refusal stays; a patch of the bridge is not made.
        let again = compile(yaml, Some(&first));
        assert_eq!(again.static_errors(), errs);
        let cfg = Config::from_yaml_str(yaml).unwrap();
        assert!(again.patch(&cfg, &["b"]).unwrap().is_none());
        // a gives one up: b's gets in.
        let fewer = compile(
            "bridges:\n- name: br0\n  mac_table_size: 2\n  ports:\n  \
             - {name: a, tag: 10, static_macs: ['02:00:00:00:00:01']}\n  \
             - {name: b, tag: 10, static_macs: ['02:00:00:00:00:03']}\n",
            Some(&again),
        );
        assert!(fewer.static_errors().is_empty());
        assert_eq!(
            fewer.bridges[0].table.lookup(10, MacAddr([2, 0, 0, 0, 0, 3]), 1).map(|h| h.port),
            Some(fewer.by_name["b"])
        );
    }

    /// A worker still on the old snapshot learns on a removed port after the compile flushed
    /// it: a port added in the same change does not get that id (so the entry never resolves
    /// to it), and settling the new snapshot (every worker runs it) removes the entry. Through
    /// a compile and a patch.
    #[test]
    fn entries_learned_on_a_removed_port_never_resolve_to_a_new_one() {
        let ac = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: c, tag: 10}\n";
        for patch in [false, true] {
            let first = compile(AB, None);
            first.settle();
            let b = first.by_name["b"];
            let cfg = Config::from_yaml_str(ac).unwrap();
            let second = if patch {
                first.patch(&cfg, &["b", "c"]).unwrap().expect("a patch")
            } else {
                SwitchConfig::compile(&cfg, Some(&first)).unwrap()
            };
            // A worker on `first` learns on b.
            let table = &first.bridges[0].table;
            table.learn(10, MAC_A, b, 2, u32::MAX);
            let c = second.by_name["c"];
            assert_ne!(c, b, "patch {patch}: c does not take b's id while b may be learned on");
            assert_ne!(second.bridges[0].table.lookup(10, MAC_A, 2).map(|h| h.port), Some(c));
            // Not settled: the next snapshot keeps b's id unused and carries the flush.
            let third = compile(&format!("{ac}  - {{name: d, tag: 10}}\n"), Some(&second));
            assert!(third.by_name["d"] != b, "patch {patch}");
            assert_eq!(third.settle(), 1, "patch {patch}: the entry learned on b went");
            assert_eq!(table.lookup(10, MAC_A, 2), None);
            let fourth =
                compile(&format!("{ac}  - {{name: d, tag: 10}}\n  - {{name: e, tag: 10}}\n"), Some(&third));
            assert_eq!(fourth.by_name["e"], b, "patch {patch}: settled, the id is free again");
        }
    }

    /// A port whose VLAN changes loses its learned entries of the VLAN it left, at the compile
    /// and (those a worker on the old snapshot learned since) at the settle; the others stay.
    #[test]
    fn a_vlan_change_flushes_the_ports_entries_of_the_vlan_it_left() {
        let to = |tag: u16| {
            format!(
                "bridges:\n- name: br0\n  ports:\n  - {{name: a, tag: {tag}}}\n  - {{name: b, tag: 10}}\n"
            )
        };
        for patch in [false, true] {
            let first = compile(&to(10), None);
            let (a, b) = (first.by_name["a"], first.by_name["b"]);
            let table = first.bridges[0].table.clone();
            let mb = MacAddr([2, 0, 0, 0, 0, 0xb]);
            table.learn(10, MAC_A, a, 1, u32::MAX);
            table.learn(10, mb, b, 1, u32::MAX);
            let cfg = Config::from_yaml_str(&to(20)).unwrap();
            let second = if patch {
                first.patch(&cfg, &["a"]).unwrap().expect("a patch")
            } else {
                SwitchConfig::compile(&cfg, Some(&first)).unwrap()
            };
            assert_eq!(table.lookup(10, MAC_A, 1), None, "patch {patch}");
            table.learn(10, MAC_A, a, 2, u32::MAX);
            table.learn(20, MAC_A, a, 2, u32::MAX);
            assert_eq!(second.settle(), 1, "patch {patch}");
            assert_eq!(table.lookup(10, MAC_A, 2), None);
            assert_eq!(table.lookup(20, MAC_A, 2).map(|h| h.port), Some(a));
            assert_eq!(table.lookup(10, mb, 2).map(|h| h.port), Some(b));
        }
    }
}
