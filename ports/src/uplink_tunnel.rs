//! A VXLAN or Geneve tunnel port carried on an Ethernet uplink port (AF_PACKET, AF_XDP or
//! DPDK): the fast path, where switchyard writes and reads the outer Ethernet/IP/UDP headers itself and
//! resolves the endpoints' MAC addresses (ARP, Neighbour Discovery), as OVS-DPDK's userspace
//! tunnels do. No kernel socket, no system call besides the uplink's own.
//!
//! Invariants:
//! - TX writes the tunnel header and the outer headers into the frame's headroom: a frame to
//!   one endpoint is never copied; a flood copy per further endpoint is (each copy gets its
//!   own outer headers). The UDP source port is [`switchyard_dataplane::tunnel::source_port`]
//!   of the inner flow's hash; the outer IPv4 UDP checksum is zero, the IPv6 one computed.
//! - RX hands on only inner frames of tunnel packets to the local address and port that the
//!   outer checks ([`switchyard_dataplane::wire::outer::OuterPacket`]) and the codec accept,
//!   and (learning off) whose outer source is an endpoint the configuration names now (else
//!   `tunnel_unknown_source`), trimmed in place (no copy). Every other uplink frame is consumed here: ARP/ND about the
//!   local address or an endpoint updates the neighbour table (a request for the local
//!   address is answered); anything else is dropped as `uplink_not_tunnel` (an AF_PACKET
//!   uplink's kernel still receives its own copy and handles it as usual; on an AF_XDP or
//!   DPDK uplink the frame went to switchyard alone and goes nowhere else).
//! - A frame to an endpoint without a resolved MAC is dropped (`tunnel_unresolved`) and the
//!   endpoint is probed (at most once a second; RX sends the probes, as it polls anyway).
//! - The next hop of an endpoint is the gateway of the longest route holding it (the port's
//!   `routes`, then for an AF_PACKET or AF_XDP uplink the kernel's routes through the
//!   uplink's interface, read again once a second), else the endpoint itself
//!   ([`switchyard_dataplane::underlay::Routes`]). Frames to it carry the next hop's MAC.
//!   Bindings are ARP/ND's: a tunnel packet from an endpoint on the link only gives an
//!   unresolved slot a MAC to use until the probe's answer, or has a binding to another MAC
//!   probed ([`switchyard_dataplane::underlay::Neighbours::seen`]); behind a gateway the
//!   packet's source MAC is a router's and says nothing.
//! - One uplink carries the tunnel ports of every network on it ([`UplinkTunnelPort::join`]:
//!   one encapsulation, local address and UDP port, one port per VNI), as the kernel
//!   transport's socket does: the uplink's RX queue `q` is read by whichever member port's RX
//!   queue `q` takes it first (one at a time, a `try_lock`; the only member keeps it between
//!   polls, and gives it back at its first poll after another joined); a tunnel packet of another
//!   member's VNI goes, narrowed to its datagram, to that member's inbox `q` (bounded; full:
//!   `tunnel_demux_full`), and the member is woken once a burst; one of no member's VNI is the
//!   reader's `tunnel_wrong_vni`. The neighbour table (by address: one slot per endpoint or
//!   gateway of any member), its probes and the answers to ARP/ND are the uplink's, once; every
//!   member sends through its own handle of the uplink's TX queue of its worker (the uplink's
//!   own TX rules: a DPDK queue locked, an AF_PACKET handle a socket of its own). The uplink
//!   stays open while any member does.
//! - Opening and leaving: the registry (`UPLINKS`) gives each uplink a slot with its own
//!   lock, held while the uplink opens and a port joins it; nothing else waits on an opening.
//!   A leaving port (its last handle may go on a worker) takes no lock an open holds: the
//!   member list is read-copy-update, and an uplink whose last port goes on a worker is
//!   closed by the control thread ([`close_retired`]). A port being removed leaves the member
//!   list early ([`PortBackend::retire`]), so a new port of its VNI joins in the same
//!   reconcile. What is left in a leaving port's inboxes is counted (`tunnel_wrong_vni`) by
//!   the next member's probe round, or, when no member is left, as the process's portless
//!   `tunnel_wrong_vni` drops once the uplink and the inboxes have gone (`Orphans`).
//! - Neighbour slots (`SlotTable`): one per next hop address that some member routes an
//!   endpoint in use through (in its flood list or holding a remote MAC), counted per
//!   (member, endpoint); a slot nobody points at is freed, its binding forgotten, and given to
//!   the next new address (at most 4,112 (`NEIGHBOUR_SLOTS`) at once).

use crate::udp_tunnel::{join_vni, update_remotes, Orphans, TunnelOptions};
use arc_swap::ArcSwap;
use arrayvec::ArrayVec;
use crossbeam_queue::{ArrayQueue, SegQueue};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use switchyard_dataplane::backend::Backend;
use switchyard_dataplane::buffer::{PacketBuf, PoolCache};
use switchyard_dataplane::config::UnderlayRoute;
use switchyard_dataplane::cpu::coarse_seconds;
use switchyard_dataplane::port::{
    Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue, MAX_BURST,
};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::tunnel::{
    flow_hash, inner_len_drop, peek_vni, source_port, Remotes, RemotesView, TunnelCodec, TunnelKind,
    MAX_ENDPOINTS, PLAIN_HEADER_LEN,
};
use switchyard_dataplane::underlay::{
    arp_frame, classify, nd_frame, plain_ipv4_inner, Neighbours, Route, Routes, UplinkFrame,
    CONTROL_FRAME_LEN, MAX_GATEWAYS, PLAIN_INNER_AT,
};
use switchyard_dataplane::wire::outer::{HeadedV4, OuterRepr, OuterTemplate, V4_HEADED_LEN};
use switchyard_dataplane::wire::{MacAddr, ETH_HEADER_LEN};

/// How a tunnel port on an uplink finds its endpoints' next hops.
#[derive(Debug, Clone, Default)]
pub struct NextHops {
    /// The port's own routes (its `routes` option).
    pub routes: Vec<Route>,
    /// The interface whose kernel routes follow them (an AF_PACKET or AF_XDP uplink's).
    pub kernel_iface: Option<String>,
}

impl NextHops {
    /// The routes of a tunnel port's `routes` option.
    pub fn routes_of(config: &[UnderlayRoute]) -> Vec<Route> {
        config.iter().map(|r| Route { dst: r.dst, via: Some(r.via) }).collect()
    }
}

/// A hop index no neighbour slot has: the endpoint cannot be reached (the uplink's table of
/// addresses is full).
const NO_HOP: u16 = u16::MAX;

/// Neighbour slots of one uplink: every endpoint and gateway address of its ports, each once.
const NEIGHBOUR_SLOTS: usize = MAX_ENDPOINTS + MAX_GATEWAYS;

/// Tunnel packets of a member's VNI that another member's RX took off the uplink, per RX queue:
/// a few bursts, so that inboxes of ports whose worker lags cannot hold much of the pool.
const INBOX_DEPTH: usize = 256;

/// The routes in use, changed only by the once-a-second refresh.
#[derive(Debug)]
struct Routing {
    config: NextHops,
    table: Routes,
    /// The kernel's part of `table`, as last read.
    kernel: Routes,
}

/// A tunnel packet handed to the member of its VNI: the buffer narrowed to the datagram
/// (tunnel header on), the outer source address and MAC.
type Handed = (PacketBuf, IpAddr, MacAddr);

/// What other members hand one RX queue of a port.
#[derive(Debug)]
struct Inbox {
    q: ArrayQueue<Handed>,
    /// Written once a burst when packets were queued and the uplink's queue can wake a worker
    /// (AF_PACKET, AF_XDP; a DPDK uplink's workers poll without sleeping).
    wake: EventFd,
    /// The uplink's [`Uplink::orphaned`]: what is left here when the inbox goes (its port
    /// left before taking it) is counted there.
    orphaned: Arc<Orphans>,
}

impl Drop for Inbox {
    /// The last holder is the leaving port, or a reader that loaded the member list before
    /// the port left: nobody pushes after this.
    fn drop(&mut self) {
        self.orphaned.add(self.q.len() as u64);
    }
}

#[derive(Debug, Clone)]
struct Member {
    vni: u32,
    /// One inbox per RX queue of the uplink.
    inboxes: Arc<[Inbox]>,
}

/// The uplink's RX queue `q`, opened by the first member that opens its queue `q`.
struct UplinkQueue {
    /// Locked by the member RX reading the queue, for one `rx_burst`; `None` while the
    /// uplink's only member holds it ([`UplinkTunnelRx::alone`]).
    rx: Mutex<Option<Box<dyn RxQueue>>>,
    spin: bool,
    nap: bool,
    /// A duplicate of the queue's wake descriptor, when it has one (then members sleep on it
    /// and their inbox): there whoever holds the queue.
    wake: Option<OwnedFd>,
}

/// An uplink port and what the tunnel ports on it share: the encapsulation, local address
/// and UDP port, the neighbour table, the clock, the members by VNI.
struct Uplink {
    /// The registry's key (`afpacket:IFACE`, `dpdk:DEVARGS`); `None` for a port's own uplink.
    key: Option<String>,
    port: Arc<dyn PortBackend>,
    kind: TunnelKind,
    local: IpAddr,
    mac: MacAddr,
    dstport: u16,
    underlay_mtu: u32,
    clock: TunnelClock,
    /// By slot: the addresses' MACs ([`Uplink::slots`]).
    neighbours: Neighbours,
    /// The slot of each next hop address the members use ([`SlotTable`]).
    slots: Mutex<SlotTable>,
    /// Read once a burst, and only when a packet of another VNI came; changed by
    /// read-copy-update (a join and a leave never wait on each other or on a lock).
    members: ArcSwap<Vec<Member>>,
    /// Whether `members` has one member: read every burst (that member then holds the RX
    /// queues it reads, [`UplinkTunnelRx::alone`]); set after every change ([`Uplink::set_alone`]).
    alone: AtomicBool,
    /// Packets handed to ports that left before taking them ([`Inbox`]'s drop): the next
    /// member RX to probe counts them as `tunnel_wrong_vni` (their VNI is nobody's now); with
    /// no member left, they are counted as portless drops when the uplink and the last inbox
    /// have gone ([`Orphans`]).
    orphaned: Arc<Orphans>,
    queues: Box<[OnceLock<Arc<UplinkQueue>>]>,
    /// Serialises the opening of the RX queues.
    opening: Mutex<()>,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("port", &self.port.name())
            .field("key", &self.key)
            .field("local", &self.local)
            .field("mac", &self.mac)
            .finish()
    }
}

/// One uplink's place in [`UPLINKS`]: its own lock, held while the first port opens the
/// uplink (a DPDK device probe can take seconds) and while a port joins it, so that ports of
/// other uplinks open meanwhile. No worker ever takes it: a leaving port does not.
type UplinkSlot = Arc<Mutex<Weak<Uplink>>>;

/// Every shared uplink of the process by key; the registry's lock is held only to find or
/// add a key's slot (slots of closed uplinks are pruned then).
static UPLINKS: Mutex<Vec<(String, UplinkSlot)>> = Mutex::new(Vec::new());

/// Uplinks whose last port went on a worker thread: closed by the control thread (the next
/// [`close_retired`]), as a device's close may wait on the locks of another's probe.
static RETIRED: SegQueue<Arc<Uplink>> = SegQueue::new();

/// Closes the uplinks whose last port was dropped on a worker (see `RETIRED`); the
/// control thread calls it on every reconcile, and every join does.
pub fn close_retired() {
    while let Some(up) = RETIRED.pop() {
        drop(up);
    }
}

/// The neighbour slots of one uplink: each next hop address its members route an endpoint
/// through has one, counted per (member, endpoint) pointing at it; a slot nobody points at
/// is freed (its binding forgotten) and given to the next new address, so the table holds
/// the addresses in use, whatever came and went before.
#[derive(Debug, Default)]
struct SlotTable {
    by_ip: HashMap<IpAddr, u16>,
    /// By slot: its address and how many endpoints point at it (0: free).
    users: Vec<(IpAddr, u32)>,
    free: Vec<u16>,
    /// The table was found full (and said so) since a slot was last freed.
    full_warned: bool,
}

impl SlotTable {
    /// The address of slot `s`, when in use.
    fn ip_of(&self, s: u16) -> Option<IpAddr> {
        self.users.get(usize::from(s)).filter(|u| u.1 > 0).map(|u| u.0)
    }

    /// One more endpoint points at `ip`'s slot (given one when new and there is room).
    fn acquire(&mut self, ip: IpAddr, port: &str, neighbours: &Neighbours) -> Option<u16> {
        if let Some(&s) = self.by_ip.get(&ip) {
            self.users[usize::from(s)].1 += 1;
            return Some(s);
        }
        let s = match self.free.pop() {
            Some(s) => s,
            None if self.users.len() < NEIGHBOUR_SLOTS => {
                self.users.push((ip, 0));
                (self.users.len() - 1) as u16
            }
            None => {
                // Once until a slot frees: a learning port retries on every source change.
                if !std::mem::replace(&mut self.full_warned, true) {
                    tracing::warn!(port, address = %ip, "more than {NEIGHBOUR_SLOTS} next hops on one uplink: {ip} (and any other new one) unreachable");
                }
                return None;
            }
        };
        self.users[usize::from(s)] = (ip, 1);
        self.by_ip.insert(ip, s);
        // Cleared at release too; again here, under this table's lock, for a binding a worker
        // wrote with a slot number it read before the slot was freed.
        neighbours.clear(s);
        Some(s)
    }

    /// One endpoint less points at slot `s`; the last one frees it.
    fn release(&mut self, s: u16, neighbours: &Neighbours) {
        // A slot already free is not pushed again (two addresses would share it).
        let Some(u) = self.users.get_mut(usize::from(s)).filter(|u| u.1 > 0) else { return };
        u.1 -= 1;
        if u.1 == 0 {
            self.by_ip.remove(&u.0);
            self.free.push(s);
            self.full_warned = false;
            neighbours.clear(s);
        }
    }

    /// How many slots are in use.
    fn in_use(&self) -> usize {
        self.by_ip.len()
    }
}

/// What opening an uplink gives: the port, its MAC address and MTU.
pub type OpenedUplink = (Arc<dyn PortBackend>, MacAddr, u32);

impl Uplink {
    fn new(key: Option<String>, o: &TunnelOptions, (port, mac, underlay_mtu): OpenedUplink) -> Uplink {
        let queues = (0..port.rx_queue_count()).map(|_| OnceLock::new()).collect();
        Uplink {
            key,
            port,
            kind: o.kind,
            local: o.local,
            mac,
            dstport: o.dstport,
            underlay_mtu,
            clock: TunnelClock::Monotonic(coarse_seconds()),
            neighbours: Neighbours::new(NEIGHBOUR_SLOTS),
            slots: Mutex::new(SlotTable::default()),
            members: ArcSwap::from_pointee(Vec::new()),
            alone: AtomicBool::new(false),
            orphaned: Arc::new(Orphans::default()),
            queues,
            opening: Mutex::new(()),
        }
    }

    fn now_s(&self) -> u32 {
        match &self.clock {
            TunnelClock::Monotonic(start) => coarse_seconds().saturating_sub(*start) as u32,
            TunnelClock::Shared(ns) => (ns.load(Ordering::Relaxed) / 1_000_000_000) as u32,
        }
    }

    /// The uplink's RX queue `q`, opened when no member had it yet.
    fn queue(&self, q: u16) -> Result<Arc<UplinkQueue>, PortError> {
        let slot = self.queues.get(usize::from(q)).ok_or_else(|| PortError::NoSuchQueue {
            port: self.port.name().into(),
            queue: q,
            count: self.queues.len() as u16,
        })?;
        let _opening = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = slot.get() {
            return Ok(u.clone());
        }
        let rx = self.port.open_rx(q)?;
        let wake = rx.wake_fd().map(|fd| fd.try_clone_to_owned()).transpose().map_err(|e| {
            PortError::Backend { port: self.port.name().into(), msg: format!("wake descriptor: {e}") }
        })?;
        let u = Arc::new(UplinkQueue {
            spin: rx.spin_when_idle(),
            nap: rx.nap_while_busy(),
            wake,
            rx: Mutex::new(Some(rx)),
        });
        Ok(slot.get_or_init(|| u).clone())
    }

    /// Adds a member for `o.vni`; refused when `o` is of another encapsulation, local
    /// address or UDP port than the uplink's, or its VNI is served already.
    fn join(&self, name: &str, o: &TunnelOptions, inboxes: Arc<[Inbox]>) -> Result<usize, PortError> {
        let refuse = |msg: String| Err(PortError::Backend { port: name.into(), msg });
        let on = self.key.as_deref().unwrap_or(self.port.name());
        if (o.kind, o.local, o.dstport) != (self.kind, self.local, self.dstport) {
            return refuse(format!(
                "uplink {on} carries {} from {} port {}: every tunnel port on one uplink has that \
                 type, local address and dstport",
                self.kind.name(),
                self.local,
                self.dstport
            ));
        }
        let Some(before) =
            join_vni(&self.members, |m| m.vni == o.vni, || Member { vni: o.vni, inboxes: inboxes.clone() })
        else {
            return refuse(format!("VNI {} is already served by another tunnel port on uplink {on}", o.vni));
        };
        self.set_alone();
        Ok(before.len())
    }

    /// The member whose inboxes are `inboxes` is gone (a no-op when it left already): its
    /// VNI's packets are `tunnel_wrong_vni` from now on, or another port's that joined with
    /// it. Takes no lock: a worker may drop a port's last handle.
    fn leave(&self, inboxes: &Arc<[Inbox]>) {
        let gone = |m: &Member| Arc::ptr_eq(&m.inboxes, inboxes);
        if !self.members.load().iter().any(gone) {
            return;
        }
        self.members.rcu(|cur| cur.iter().filter(|m| !gone(m)).cloned().collect::<Vec<_>>());
        self.set_alone();
    }

    /// Makes `alone` say whether the member list has one member. A join and a leave may race
    /// (no lock): each stores what it read and stores again while the list it read is no
    /// longer the list, so the last store is of the list that holds.
    fn set_alone(&self) {
        loop {
            let m = self.members.load_full();
            self.alone.store(m.len() == 1, Ordering::Release);
            if Arc::ptr_eq(&m, &self.members.load_full()) {
                break;
            }
        }
    }

    /// Binds `ip`'s slot, if it has one, to `mac` (an ARP/ND answer): under the slot table's
    /// lock, so that the slot cannot be freed and given to another address in between.
    fn confirm(&self, ip: IpAddr, mac: MacAddr, now: u32) {
        let t = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = t.by_ip.get(&ip) {
            self.neighbours.confirm(i, mac, now);
        }
    }
}

struct Shared {
    name: String,
    up: Arc<Uplink>,
    codec: TunnelCodec,
    remotes: Remotes,
    /// Per endpoint: the neighbour slot of its next hop (its own, a gateway's, or [`NO_HOP`]).
    via: Box<[AtomicU16]>,
    /// Per endpoint on the link: its own slot, which its tunnel packets confirm; [`NO_HOP`]
    /// behind a gateway (the packets' source MAC is the router's).
    direct: Box<[AtomicU16]>,
    routing: Mutex<Routing>,
    /// Which of the port's RX queues a handle holds.
    claims: RxClaims,
    /// What other members hand this port, by RX queue (also in the uplink's member list).
    inboxes: Arc<[Inbox]>,
    /// The uplink's, copied: read every burst.
    local: IpAddr,
    mac: MacAddr,
    port: u16,
    max_inner: usize,
    /// The options the port runs with (the last update's), for the next update.
    opts: Mutex<TunnelOptions>,
}

impl Drop for Shared {
    /// Leaves the uplink (no lock but the uplink's slot table, which no open holds) and
    /// frees the neighbour slots only this port used. On a worker the uplink, which may close
    /// with this port, goes to [`RETIRED`]: the control thread closes it.
    fn drop(&mut self) {
        self.up.leave(&self.inboxes);
        let mut t = self.up.slots.lock().unwrap_or_else(|e| e.into_inner());
        for v in self.via.iter() {
            let s = v.swap(NO_HOP, Ordering::Relaxed);
            if s != NO_HOP {
                t.release(s, &self.up.neighbours);
            }
        }
        drop(t);
        if switchyard_dataplane::worker::on_worker_thread() {
            RETIRED.push(self.up.clone());
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkTunnel")
            .field("name", &self.name)
            .field("uplink", &self.up.port.name())
            .field("codec", &self.codec)
            .field("local", &self.local)
            .field("mac", &self.mac)
            .finish()
    }
}

impl Shared {
    #[inline]
    fn now_s(&self) -> u32 {
        self.up.now_s()
    }

    /// The MAC of endpoint `e`'s next hop, when resolved.
    #[inline]
    fn next_hop_mac(&self, e: u16) -> Option<MacAddr> {
        let hop = self.via.get(usize::from(e))?.load(Ordering::Relaxed);
        self.up.neighbours.get(hop)
    }

    /// Points endpoint `i` (at `ip`) at next hop `nh`'s slot, or at none (`None`: the
    /// endpoint is not in use), giving back the slot it pointed at before. Returns its slot.
    fn point(&self, t: &mut SlotTable, i: u16, ip: IpAddr, nh: Option<IpAddr>) -> u16 {
        let (Some(via), Some(direct)) = (self.via.get(usize::from(i)), self.direct.get(usize::from(i)))
        else {
            return NO_HOP;
        };
        let old = via.load(Ordering::Relaxed);
        let hop = if old != NO_HOP && nh.is_some() && t.ip_of(old) == nh {
            old
        } else {
            let new = nh.and_then(|nh| t.acquire(nh, &self.name, &self.up.neighbours)).unwrap_or(NO_HOP);
            via.store(new, Ordering::Relaxed);
            // Both stores before the old slot is freed: a worker reading them after the free
            // finds the new slot (one reading before may still use the old one once).
            direct.store(if nh == Some(ip) { new } else { NO_HOP }, Ordering::Relaxed);
            if old != NO_HOP {
                t.release(old, &self.up.neighbours);
            }
            return new;
        };
        direct.store(if nh == Some(ip) { hop } else { NO_HOP }, Ordering::Relaxed);
        hop
    }

    /// Reads the kernel's routes again (when they are followed), points every endpoint in
    /// use at `now` (in the flood list or holding a remote MAC) at its next hop's slot and
    /// every other at none, and returns the slots to resolve with their addresses.
    fn route(&self, now: u32) -> Vec<(u16, IpAddr)> {
        let mut r = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(iface) = &r.config.kernel_iface {
            let kernel = Routes::of_kernel(iface);
            if kernel != r.kernel {
                tracing::info!(port = %self.name, %iface, routes = ?kernel.routes(), "underlay routes");
                r.table = Routes::new([&r.config.routes[..], kernel.routes()].concat());
                r.kernel = kernel;
            }
        }
        let mut hops = Vec::new();
        // The slots already in `hops`, one bit each (a set, not a search: 4,096 endpoints).
        let mut listed = [0u64; NEIGHBOUR_SLOTS.div_ceil(64)];
        let used = self.remotes.endpoints_in_use(now);
        let mut slots = self.up.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Endpoints are numbered densely from 0: the first index without one ends the list.
        for i in 0..MAX_ENDPOINTS as u16 {
            let Some(ip) = self.remotes.endpoint(i) else { break };
            let nh = used.get(usize::from(i)).is_some_and(|&u| u).then(|| r.table.next_hop(ip));
            let hop = self.point(&mut slots, i, ip, nh);
            let (word, bit) = (usize::from(hop) / 64, 1u64 << (hop % 64));
            if let (Some(nh), Some(w)) = (nh, listed.get_mut(word)) {
                if hop != NO_HOP && *w & bit == 0 {
                    *w |= bit;
                    hops.push((hop, nh));
                }
            }
        }
        hops
    }

    /// Points endpoint `i` at `ip` (new: learned) at its next hop's slot.
    fn route_one(&self, i: u16, ip: IpAddr) {
        let r = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        let nh = r.table.next_hop(ip);
        self.point(&mut self.up.slots.lock().unwrap_or_else(|e| e.into_inner()), i, ip, Some(nh));
    }

    /// Takes the port's `routes` option anew (in effect at the next probe round).
    fn set_routes(&self, config: &[UnderlayRoute]) {
        let routes = NextHops::routes_of(config);
        let mut r = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        if r.config.routes != routes {
            r.table = Routes::new([&routes[..], r.kernel.routes()].concat());
            r.config.routes = routes;
        }
    }
}

/// Where the port's seconds come from (neighbour probes and confirmations, the aging of
/// learned remote MACs).
#[derive(Debug, Clone)]
pub enum TunnelClock {
    /// Seconds since the port opened (the kernel's coarse monotonic clock, read every burst:
    /// no time-stamp counter read, which costs tens of nanoseconds in some VMs), from this
    /// reading of it.
    Monotonic(u64),
    /// A shared clock in nanoseconds: the replay harness sets it to the capture's time, so
    /// that probes and aging follow the capture, not the wall clock.
    Shared(Arc<AtomicU64>),
}

/// A tunnel port on an uplink port.
#[derive(Debug)]
pub struct UplinkTunnelPort {
    shared: Arc<Shared>,
}

impl UplinkTunnelPort {
    /// A tunnel port with an uplink of its own, `uplink` (whose MAC address is `mac` and MTU
    /// `underlay_mtu`), its endpoints' next hops found as `hops` says.
    pub fn new(
        name: &str,
        o: &TunnelOptions,
        uplink: Arc<dyn PortBackend>,
        mac: MacAddr,
        underlay_mtu: u32,
        hops: NextHops,
    ) -> Result<UplinkTunnelPort, PortError> {
        let up = Arc::new(Uplink::new(None, o, (uplink, mac, underlay_mtu)));
        UplinkTunnelPort::member(name, o, up, hops)
    }

    /// A tunnel port on the uplink known as `key` (`afpacket:IFACE`, `dpdk:DEVARGS`): joins
    /// the one the process has open (the tunnel ports of every network on it share it), or
    /// opens it with `open`. Refused when the uplink carries another encapsulation, local
    /// address or UDP port, or `o.vni` already.
    pub fn join(
        name: &str,
        o: &TunnelOptions,
        key: &str,
        hops: NextHops,
        open: impl FnOnce() -> Result<OpenedUplink, PortError>,
    ) -> Result<UplinkTunnelPort, PortError> {
        close_retired();
        let slot = {
            let mut all = UPLINKS.lock().unwrap_or_else(|e| e.into_inner());
            // A slot of a closed uplink that only the registry holds (no join under way or
            // about to lock it).
            all.retain(|(_, s)| {
                Arc::strong_count(s) > 1 || s.try_lock().map_or(true, |w| w.strong_count() > 0)
            });
            match all.iter().find(|(k, _)| k == key) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = UplinkSlot::default();
                    all.push((key.to_string(), s.clone()));
                    s
                }
            }
        };
        // This uplink's joins wait for its opening; nothing else does.
        let mut open_one = slot.lock().unwrap_or_else(|e| e.into_inner());
        let up = match open_one.upgrade() {
            Some(up) => up,
            None => {
                let up = Arc::new(Uplink::new(Some(key.to_string()), o, open()?));
                *open_one = Arc::downgrade(&up);
                up
            }
        };
        UplinkTunnelPort::member(name, o, up, hops)
    }

    fn member(
        name: &str,
        o: &TunnelOptions,
        up: Arc<Uplink>,
        hops: NextHops,
    ) -> Result<UplinkTunnelPort, PortError> {
        let remotes = o.remotes(name)?;
        let ipv6 = o.local.is_ipv6();
        let queues = up.port.rx_queue_count();
        // Written only when the uplink's queue has a wake descriptor (workers sleep on it).
        let wake = || {
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| PortError::Backend { port: name.into(), msg: format!("eventfd: {e}") })
        };
        let inboxes: Arc<[Inbox]> = (0..queues)
            .map(|_| {
                Ok(Inbox { q: ArrayQueue::new(INBOX_DEPTH), wake: wake()?, orphaned: up.orphaned.clone() })
            })
            .collect::<Result<_, PortError>>()?;
        let sharing = up.join(name, o, inboxes.clone())?;
        let underlay_mtu = up.underlay_mtu;
        tracing::info!(
            port = name,
            kind = o.kind.name(),
            vni = o.vni,
            local = %o.local,
            uplink = up.port.name(),
            mac = %up.mac,
            underlay_mtu,
            overlay_mtu = o.kind.overlay_mtu(ipv6, underlay_mtu),
            sharing,
            "tunnel port open on uplink"
        );
        Ok(UplinkTunnelPort {
            shared: Arc::new(Shared {
                name: name.to_string(),
                codec: TunnelCodec { kind: o.kind, vni: o.vni },
                remotes,
                via: (0..MAX_ENDPOINTS).map(|_| AtomicU16::new(NO_HOP)).collect(),
                direct: (0..MAX_ENDPOINTS).map(|_| AtomicU16::new(NO_HOP)).collect(),
                routing: Mutex::new(Routing {
                    table: Routes::new(hops.routes.clone()),
                    config: hops,
                    kernel: Routes::default(),
                }),
                claims: RxClaims::new(name, queues),
                inboxes,
                local: o.local,
                mac: up.mac,
                port: o.dstport,
                max_inner: o.kind.max_inner_frame(ipv6, underlay_mtu),
                opts: Mutex::new(o.clone()),
                up,
            }),
        })
    }

    /// The port with its seconds read from `clock` instead; `None` once a queue was opened,
    /// or when the port shares its uplink (the clock is the uplink's).
    pub fn with_clock(mut self, clock: TunnelClock) -> Option<UplinkTunnelPort> {
        Arc::get_mut(&mut Arc::get_mut(&mut self.shared)?.up)?.clock = clock;
        Some(self)
    }

    /// The remote table (endpoints, flood list, remote MACs).
    pub fn remotes(&self) -> &Remotes {
        &self.shared.remotes
    }

    /// How many next hop addresses hold a neighbour slot on the uplink (all its ports').
    pub fn next_hops_in_use(&self) -> usize {
        self.shared.up.slots.lock().unwrap_or_else(|e| e.into_inner()).in_use()
    }

    /// The MAC address of endpoint `ip`'s next hop, if resolved.
    pub fn neighbour(&self, ip: IpAddr) -> Option<MacAddr> {
        let sh = &self.shared;
        sh.remotes.index_of(ip).and_then(|i| sh.next_hop_mac(i))
    }
}

impl PortBackend for UplinkTunnelPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn rx_queue_count(&self) -> u16 {
        self.shared.up.port.rx_queue_count()
    }

    fn tx_queue_count(&self) -> u16 {
        self.shared.up.port.tx_queue_count()
    }

    /// The port's queue `q` reads its inbox `q` and, when no other member is reading it, the
    /// uplink's queue `q` (opened by the first member that asks).
    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        let sh = &self.shared;
        sh.claims.claim(q)?;
        let rx = UplinkTunnelRx::open(sh, q);
        if rx.is_err() {
            sh.claims.release(q);
        }
        Ok(Box::new(rx?))
    }

    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        let sh = &self.shared;
        Ok(Box::new(UplinkTunnelTx {
            shared: sh.clone(),
            tx: sh.up.port.open_tx(q)?,
            out: Burst::new(),
            templates: Box::new(Templates([None; TEMPLATES])),
        }))
    }

    fn link_up(&self) -> bool {
        self.shared.up.port.link_up()
    }

    /// "resolved" counts the uplink's next hops (shared by its ports) with a MAC.
    fn info(&self) -> Option<String> {
        let sh = &self.shared;
        let up = &sh.up;
        let others = up.members.load().len().saturating_sub(1);
        let shared = if others > 0 { format!(" shared with {others} other port(s)") } else { String::new() };
        Some(format!(
            "{} vni {} on uplink {} ({}){shared}, flood {} endpoints, {} resolved, underlay_mtu {} overlay_mtu {}",
            sh.codec.kind.name(),
            sh.codec.vni,
            up.port.name(),
            sh.mac,
            sh.remotes.flood().len(),
            up.neighbours.resolved(),
            up.underlay_mtu,
            sh.codec.kind.overlay_mtu(sh.local.is_ipv6(), up.underlay_mtu)
        ))
    }

    /// Leaves the uplink's member list: a port joining with this VNI now is served (the
    /// uplink, its slots and this port's queues stay until the port goes).
    fn retire(&self) {
        self.shared.up.leave(&self.shared.inboxes);
    }

    /// New endpoints get indices of their own, and so neighbour slots; RX probes them. New
    /// `routes` take effect at the next probe round.
    fn update(&self, wanted: &Backend) -> Result<bool, PortError> {
        let sh = &self.shared;
        let mut opts = sh.opts.lock().unwrap_or_else(|e| e.into_inner());
        match update_remotes(&sh.name, &opts, &sh.remotes, wanted)? {
            Some(o) => {
                *opts = o;
                if let Backend::Tunnel(t) = wanted {
                    sh.set_routes(&t.routes);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

struct UplinkTunnelRx {
    /// The uplink's queue `q`, read when no other member's RX is reading it.
    queue: Arc<UplinkQueue>,
    /// `queue`'s RX queue while this port is the uplink's only member: read with no lock,
    /// given back to `queue` at the first burst that finds another member.
    alone: Option<Box<dyn RxQueue>>,
    q: u16,
    /// The uplink queue's wake descriptor and inbox `q`'s eventfd, when the queue has one.
    epoll: Option<Epoll>,
    /// `arm_wakeup` armed the uplink's queue: `disarm_wakeup` disarms it.
    armed: bool,
    /// Sends ARP/ND replies and probes.
    tx: Box<dyn TxQueue>,
    /// The packets of a burst from its first uncommon one on, decided one by one.
    frames: Burst,
    control: Burst,
    /// The second of the last probe round.
    probed_at: Option<u32>,
    /// The last tunnel source address and its endpoint index.
    last: LastSource,
    /// Last, so dropped after the uplink's queues above: the port's last handle gives the
    /// uplink to the control thread to close ([`RETIRED`]) only once it holds none of its
    /// device's queues (fields drop in declaration order).
    shared: Arc<Shared>,
}

/// Queues an ARP/ND frame on `control` (a reply to `to`, or a probe for `target`), sending
/// the queue through `tx` first when it is full.
fn control_frame(
    sh: &Shared,
    (control, tx): (&mut Burst, &mut dyn TxQueue),
    cache: &mut PoolCache,
    target: IpAddr,
    to: Option<MacAddr>,
    drops: &mut DropTally,
) {
    let mut f = [0u8; CONTROL_FRAME_LEN];
    let n = match (sh.local, target) {
        (IpAddr::V4(l), IpAddr::V4(t)) => arp_frame(&mut f, sh.mac, l, t, to),
        (IpAddr::V6(l), IpAddr::V6(t)) => nd_frame(&mut f, sh.mac, l, t, to.map(|m| (t, m))),
        _ => return,
    };
    if control.is_full() {
        tx.tx_burst(control, cache, drops);
    }
    match cache.alloc_copy(&f[..n]) {
        Some(b) => control.push(b),
        None => drops.add(DropReason::NoBuffer, 1),
    }
}

impl Drop for UplinkTunnelRx {
    fn drop(&mut self) {
        self.give_back();
        self.shared.claims.release(self.q);
    }
}

impl UplinkTunnelRx {
    /// Member `sh`'s RX queue `q` (claimed by the caller).
    fn open(sh: &Arc<Shared>, q: u16) -> Result<UplinkTunnelRx, PortError> {
        let queue = sh.up.queue(q)?;
        let err =
            |e: nix::errno::Errno| PortError::Backend { port: sh.name.clone(), msg: format!("epoll: {e}") };
        let epoll = match &queue.wake {
            Some(fd) => {
                let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(err)?;
                let inbox = &sh.inboxes[usize::from(q)];
                ep.add(inbox.wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0)).map_err(err)?;
                ep.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, 1)).map_err(err)?;
                Some(ep)
            }
            None => None,
        };
        Ok(UplinkTunnelRx {
            shared: sh.clone(),
            tx: sh.up.port.open_tx(q)?,
            queue,
            alone: None,
            q,
            epoll,
            armed: false,
            frames: Burst::new(),
            control: Burst::new(),
            probed_at: None,
            last: None,
        })
    }

    /// Takes up to `max` packets other members handed this queue: each decapsulated and
    /// delivered as one read off the uplink, or counted. Returns (taken, delivered).
    fn handed(
        &mut self,
        (cache, drops): (&mut PoolCache, &mut DropTally),
        out: &mut Burst,
        max: usize,
        now: u32,
    ) -> (usize, usize) {
        let UplinkTunnelRx { shared, last, q, .. } = self;
        let sh = &**shared;
        let inbox = &sh.inboxes[usize::from(*q)];
        if inbox.q.is_empty() {
            // The one-network case, every burst: nothing more.
            return (0, 0);
        }
        let (remotes, codec) = (sh.remotes.view(), sh.codec);
        let (mut taken, mut delivered, mut confirmed) = (0, 0, None);
        while taken < max {
            let Some((mut b, src_ip, src_mac)) = inbox.q.pop() else { break };
            taken += 1;
            let len = b.len();
            if let Err(r) = to_inner(&codec, &mut b, 0, len) {
                drops.add(r, 1);
                cache.free(b);
                continue;
            }
            if !arrived(sh, &remotes, (&mut *last, &mut confirmed), (src_ip, src_mac), b.data(), now) {
                drops.add(DropReason::TunnelUnknownSource, 1);
                cache.free(b);
                continue;
            }
            out.push(b);
            delivered += 1;
        }
        (taken, delivered)
    }

    /// Gives the uplink's queue back to the others when this port held it alone.
    fn give_back(&mut self) {
        if let Some(rx) = self.alone.take() {
            *self.queue.rx.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
        }
    }

    /// Appends up to `n` frames of the uplink's queue to `to`, unless another member is
    /// reading it (false). The uplink's only member keeps the queue (no lock a burst); with
    /// several, each burst takes it with a `try_lock`.
    fn read_uplink(
        &mut self,
        (cache, drops): (&mut PoolCache, &mut DropTally),
        to: &mut Burst,
        n: usize,
    ) -> bool {
        let alone = self.shared.up.alone.load(Ordering::Acquire);
        if !alone {
            self.give_back();
        }
        if let Some(rx) = &mut self.alone {
            rx.rx_burst(RxCtx::new(cache, drops), to, n);
            return true;
        }
        let Ok(mut held) = self.queue.rx.try_lock() else { return false };
        let Some(rx) = held.as_mut() else { return false };
        rx.rx_burst(RxCtx::new(cache, drops), to, n);
        if alone {
            self.alone = held.take();
        }
        true
    }

    /// Once a second: follows route changes and probes every next hop that is unresolved
    /// or stale.
    fn probe(&mut self, cache: &mut PoolCache, now: u32, drops: &mut DropTally) {
        if self.probed_at == Some(now) {
            return;
        }
        self.probed_at = Some(now);
        let sh = &*self.shared;
        let orphaned = sh.up.orphaned.take();
        if orphaned > 0 {
            drops.add(DropReason::TunnelWrongVni, orphaned.min(u64::from(u32::MAX)) as u32);
        }
        for (hop, ip) in sh.route(now) {
            if sh.up.neighbours.take_probe(hop, now) {
                control_frame(sh, (&mut self.control, &mut *self.tx), cache, ip, None, drops);
            }
        }
        // The round may have freed the slot of the last source (its learned MACs aged out):
        // its next packet looks it up again, and is routed again ([`source_index`]).
        self.last = None;
    }
}

/// The endpoint index of tunnel source `ip` (added when learning is on), `last` holding the
/// previous answer (forgotten every probe round). A known source without a next hop slot
/// (not in use, its slot freed) that learning puts in use again is routed again at once.
#[inline]
fn source_index(sh: &Shared, last: &mut LastSource, ip: IpAddr) -> Option<u16> {
    match *last {
        Some((a, i)) if a == ip => Some(i),
        _ => {
            let routed =
                |i: u16| sh.via.get(usize::from(i)).is_some_and(|v| v.load(Ordering::Relaxed) != NO_HOP);
            let i = match sh.remotes.index_of(ip) {
                Some(i) if routed(i) || !sh.remotes.learns() => i,
                _ => learned_source(sh, ip)?,
            };
            *last = Some((ip, i));
            Some(i)
        }
    }
}

/// The index of new (or unrouted) tunnel source `ip`, learned (when learning is on) and
/// routed at once, so that the reply finds its next hop's MAC. Out of line: rare, and `source_index` runs for
/// every packet.
#[cold]
#[inline(never)]
fn learned_source(sh: &Shared, ip: IpAddr) -> Option<u16> {
    let i = sh.remotes.learning_index(ip)?;
    sh.route_one(i, ip);
    Some(i)
}

/// The last tunnel source address and its endpoint index ([`source_index`]).
type LastSource = Option<(IpAddr, u16)>;

/// Checks the tunnel header of the datagram at `payload..payload + len` of `b` and narrows
/// `b` to the inner frame: the one decapsulation of the reader's own packets and of those
/// another member handed over.
fn to_inner(codec: &TunnelCodec, b: &mut PacketBuf, payload: usize, len: usize) -> Result<(), DropReason> {
    let datagram = b.data().get(payload..payload.wrapping_add(len)).ok_or(DropReason::TunnelTruncated)?;
    let off = codec.decap(datagram)?;
    b.narrow(payload + off, len - off).map_err(|_| DropReason::TunnelTruncated)
}

/// What the arrival of inner frame `inner` from tunnel source `src` (address, MAC) does: the
/// source's endpoint index found (learned when new and learning is on); with learning off,
/// a source the configuration does not name refused (false: the caller counts
/// `tunnel_unknown_source`, nothing is learned or confirmed); else its neighbour entry
/// confirmed (for an endpoint on the link; once while `confirmed` says the same endpoint and
/// MAC), and the inner source MAC learned behind it. `inner` is at least an Ethernet header
/// long (decapsulation refuses shorter ones).
#[inline(always)]
fn arrived(
    sh: &Shared,
    remotes: &RemotesView<'_>,
    (last, confirmed): (&mut LastSource, &mut Option<(u16, MacAddr)>),
    (src_ip, src_mac): (IpAddr, MacAddr),
    inner: &[u8],
    now: u32,
) -> bool {
    let i = source_index(sh, last, src_ip);
    if !remotes.admits(i) {
        return false;
    }
    if let Some(i) = i {
        if *confirmed != Some((i, src_mac)) {
            let own = sh.direct[usize::from(i)].load(Ordering::Relaxed);
            if own != NO_HOP {
                sh.up.neighbours.seen(own, src_mac);
            }
            *confirmed = Some((i, src_mac));
        }
        remotes.learn_at(MacAddr::from_bytes(&inner[6..ETH_HEADER_LEN - 2]), i, now);
    }
    true
}

impl RxQueue for UplinkTunnelRx {
    /// As its uplink's queue: an AF_PACKET or AF_XDP uplink wakes for free, a DPDK one cannot
    /// wake.
    fn spin_when_idle(&self) -> bool {
        self.queue.spin
    }

    /// As its uplink's queue.
    fn nap_while_busy(&self) -> bool {
        self.queue.nap
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let now = self.shared.now_s();
        self.probe(cache, now, drops);
        let want = max.min(out.remaining_capacity());
        // First what other members read for this port, then the uplink unless another
        // member is reading it (that one hands this port its packets).
        let (taken, mut delivered) = self.handed((cache, drops), out, want, now);
        // Read straight onto `out`: the common packets stay where they are (below).
        let start = out.len();
        let read = taken < want && self.read_uplink((cache, drops), out, want - taken);
        if !read {
            // The probes `probe` queued go now: its slot is marked probed already.
            if !self.control.is_empty() {
                self.tx.tx_burst(&mut self.control, cache, drops);
            }
            return delivered;
        }
        let UplinkTunnelRx { shared, tx, frames, control, last, q, .. } = self;
        let sh = &**shared;
        let (remotes, codec) = (sh.remotes.view(), sh.codec);
        // The members, read at the first packet of another VNI; those handed packets, woken
        // once each at the end.
        let mut members = None;
        let mut woken: ArrayVec<usize, MAX_BURST> = ArrayVec::new();
        // The endpoint and MAC this burst last confirmed: a burst of one sender's packets
        // confirms its neighbour entry once.
        let mut confirmed = None;
        let local4 = match sh.local {
            IpAddr::V4(l) => Some(l),
            IpAddr::V6(_) => None,
        };
        // The common packets, where they were read: outer headers and tunnel header at fixed
        // offsets, each narrowed in place to its inner frame, up to the first other packet.
        let mut k = start;
        // Whether the loop stopped at a packet `arrived` refused (narrowed already).
        let mut refused = false;
        if let Some(l) = local4 {
            while let Some(b) = out.get_mut(k) {
                let Some(p) = plain_ipv4_inner(b.data(), l, sh.port, &codec) else { break };
                if b.narrow(PLAIN_INNER_AT, p.len).is_err() {
                    break;
                }
                let src = (IpAddr::V4(p.src_ip), p.src_mac);
                if !arrived(sh, &remotes, (&mut *last, &mut confirmed), src, b.data(), now) {
                    refused = true;
                    break;
                }
                k += 1;
            }
        }
        delivered += k - start;
        // From the first other packet on, each is taken off `out` and decided one by one:
        // those delivered go back on in their order.
        if k < out.len() {
            for b in out.drain(k..) {
                frames.push(b);
            }
        }
        let mut rest = frames.drain(..);
        if refused {
            if let Some(b) = rest.next() {
                drops.add(DropReason::TunnelUnknownSource, 1);
                cache.free(b);
            }
        }
        for mut b in rest {
            // A common packet behind another: as above.
            if let Some(p) = local4.and_then(|l| plain_ipv4_inner(b.data(), l, sh.port, &codec)) {
                if b.narrow(PLAIN_INNER_AT, p.len).is_ok() {
                    let src = (IpAddr::V4(p.src_ip), p.src_mac);
                    if arrived(sh, &remotes, (&mut *last, &mut confirmed), src, b.data(), now) {
                        out.push(b);
                        delivered += 1;
                    } else {
                        drops.add(DropReason::TunnelUnknownSource, 1);
                        cache.free(b);
                    }
                    continue;
                }
            }
            match classify(b.data(), sh.local, sh.port) {
                UplinkFrame::Tunnel { payload, len, src_ip, src_mac } => {
                    // The datagram's tunnel header decided, then the frame narrowed to the
                    // inner frame in one step (classify's lengths lie within the frame).
                    let datagram = b.data().get(payload..payload.wrapping_add(len));
                    if let Some(vni) = datagram.and_then(peek_vni).filter(|&v| v != codec.vni) {
                        let members: &[Member] = members.get_or_insert_with(|| sh.up.members.load());
                        if let Some(k) = members.iter().position(|m| m.vni == vni) {
                            // Another network's: to its port, the tunnel header still on.
                            let handed = b.narrow(payload, len).is_ok();
                            match members[k].inboxes.get(usize::from(*q)) {
                                Some(inbox) if handed => match inbox.q.push((b, src_ip, src_mac)) {
                                    Ok(()) if !woken.contains(&k) => woken.push(k),
                                    Ok(()) => {}
                                    Err((b, ..)) => {
                                        drops.add(DropReason::TunnelDemuxFull, 1);
                                        cache.free(b);
                                    }
                                },
                                _ => {
                                    drops.add(DropReason::TunnelTruncated, 1);
                                    cache.free(b);
                                }
                            }
                            continue;
                        }
                    }
                    if let Err(r) = to_inner(&codec, &mut b, payload, len) {
                        drops.add(r, 1);
                        cache.free(b);
                        continue;
                    }
                    if !arrived(sh, &remotes, (&mut *last, &mut confirmed), (src_ip, src_mac), b.data(), now)
                    {
                        drops.add(DropReason::TunnelUnknownSource, 1);
                        cache.free(b);
                        continue;
                    }
                    out.push(b);
                    delivered += 1;
                }
                UplinkFrame::Neighbour { ip, mac, answer } => {
                    cache.free(b);
                    confirmed = None;
                    sh.up.confirm(ip, mac, now);
                    if answer {
                        control_frame(sh, (control, &mut **tx), cache, ip, Some(mac), drops);
                    }
                }
                UplinkFrame::NotOurs => {
                    drops.add(DropReason::UplinkNotTunnel, 1);
                    cache.free(b);
                }
                UplinkFrame::Malformed => {
                    drops.add(DropReason::TunnelOuterMalformed, 1);
                    cache.free(b);
                }
            }
        }
        if !control.is_empty() {
            tx.tx_burst(control, cache, drops);
        }
        if let (Some(members), true) = (members, self.queue.wake.is_some()) {
            for k in woken {
                // A failed write means the counter is huge already: the member is awake.
                let _ = members[k].inboxes[usize::from(*q)].wake.write(1);
            }
        }
        delivered
    }

    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.epoll.as_ref().map(|e| e.0.as_fd())
    }

    /// Packets in the inbox, or frames the uplink's queue holds already: no sleep. A queue
    /// another member is reading is that member's to hand out (to the inbox, waking us).
    fn arm_wakeup(&mut self) -> bool {
        if !self.shared.inboxes[usize::from(self.q)].q.is_empty() {
            return false;
        }
        if let Some(rx) = &mut self.alone {
            self.armed = rx.arm_wakeup();
            return self.armed;
        }
        match self.queue.rx.try_lock() {
            Ok(mut held) => match held.as_mut() {
                Some(rx) => {
                    self.armed = rx.arm_wakeup();
                    self.armed
                }
                None => true,
            },
            Err(_) => true,
        }
    }

    fn disarm_wakeup(&mut self) {
        // Non-blocking: EAGAIN when nothing was written.
        let _ = self.shared.inboxes[usize::from(self.q)].wake.read();
        if std::mem::take(&mut self.armed) {
            if let Some(rx) = &mut self.alone {
                rx.disarm_wakeup();
            } else if let Ok(mut held) = self.queue.rx.try_lock() {
                if let Some(rx) = held.as_mut() {
                    rx.disarm_wakeup();
                }
            }
        }
    }
}

struct UplinkTunnelTx {
    tx: Box<dyn TxQueue>,
    out: Burst,
    templates: Box<Templates>,
    /// Last: dropped after `tx` (see [`UplinkTunnelRx`]'s `shared`).
    shared: Arc<Shared>,
}

/// How many endpoints' outer headers a TX queue keeps written ([`Templates`]).
const TEMPLATES: usize = 16;

/// The outer headers of the endpoints a TX queue sent to lately, by endpoint index modulo
/// [`TEMPLATES`], each with the next hop MAC it was written for: an endpoint's address never
/// changes (indices are never reused), the rest of the headers but the next hop's MAC is the
/// port's, so a template is good as long as that MAC is the one resolved now.
struct Templates([Option<(u16, MacAddr, Template)>; TEMPLATES]);

/// One endpoint's outer headers; over IPv4 also with the port's tunnel header after them
/// (one copy puts both in front of a frame, [`send_through`]).
#[derive(Clone, Copy)]
struct Template {
    outer: OuterTemplate,
    headed: Option<HeadedV4>,
}

impl Templates {
    /// The template for endpoint `e` at `dst_ip` through next hop `dst_mac`, written when
    /// not kept; `None` when the addresses are of two families.
    #[inline]
    fn get(&mut self, sh: &Shared, e: u16, dst_mac: MacAddr) -> Result<&Template, DropReason> {
        let slot = &mut self.0[usize::from(e) % TEMPLATES];
        if !matches!(slot, Some((i, m, _)) if *i == e && *m == dst_mac) {
            let dst_ip = sh.remotes.endpoint(e).ok_or(DropReason::TunnelUnresolved)?;
            let repr = OuterRepr {
                src_mac: sh.mac,
                dst_mac,
                src_ip: sh.local,
                dst_ip,
                src_port: 0,
                dst_port: sh.port,
            };
            let outer = OuterTemplate::new(&repr).ok_or(DropReason::NoBuffer)?;
            *slot = Some((e, dst_mac, Template { outer, headed: outer.v4_headed(sh.codec.header()) }));
        }
        slot.as_ref().map(|(_, _, t)| t).ok_or(DropReason::NoBuffer)
    }
}

/// Writes the outer headers for endpoint `e` in front of `b` (tunnel header already in
/// place) and queues it on `out`, sending `out` through `tx` when full; frees `b` and counts
/// why when it cannot. Returns the frames sent.
#[inline(always)]
fn push_to(
    sh: &Shared,
    (out, tx, templates): (&mut Burst, &mut dyn TxQueue, &mut Templates),
    mut b: PacketBuf,
    e: u16,
    sport: u16,
    cache: &mut PoolCache,
    drops: &mut DropTally,
) -> usize {
    let written = match sh.next_hop_mac(e) {
        None => Err(DropReason::TunnelUnresolved),
        Some(dst_mac) => templates.get(sh, e, dst_mac).and_then(|t| {
            let t = &t.outer;
            let ok = b.prepend(t.headers_len()).is_ok() && t.write(b.data_mut(), sport);
            ok.then_some(()).ok_or(DropReason::NoBuffer)
        }),
    };
    if let Err(r) = written {
        drops.add(r, 1);
        cache.free(b);
        return 0;
    }
    out.push(b);
    if out.is_full() {
        return tx.tx_burst(out, cache, drops);
    }
    0
}

/// `b`, or `None` when its inner frame is too big for the underlay (dropped and counted).
#[inline(always)]
fn fits(sh: &Shared, b: PacketBuf, cache: &mut PoolCache, drops: &mut DropTally) -> Option<PacketBuf> {
    match inner_len_drop(b.len(), sh.max_inner) {
        None => Some(b),
        Some(r) => {
            drops.add(r, 1);
            cache.free(b);
            None
        }
    }
}

/// The frames of a burst [`send_through`] drops, by index: one bit each.
type Marks = u64;
const _: () = assert!(MAX_BURST <= Marks::BITS as usize);

/// Puts the tunnel header and the outer headers of `t` in front of every frame of `pkts` in
/// place (one endpoint's next hop): per frame the length check, the flow hash and one
/// prepend; over IPv4 one copy of the template's 50 bytes. Then hands `pkts` to `tx` as it
/// is (no moves between bursts). A frame that cannot be sent is left as it was, marked, and
/// taken out before `tx` sends (its drop counted). Returns the frames sent.
#[inline(always)]
fn send_through(
    sh: &Shared,
    t: &Template,
    pkts: &mut Burst,
    tx: &mut dyn TxQueue,
    cache: &mut PoolCache,
    drops: &mut DropTally,
) -> usize {
    let max_inner = sh.max_inner;
    let mut marks: Marks = 0;
    match &t.headed {
        // An underlay too small for any frame (no inner frame fits) goes the general way.
        Some(h) if max_inner >= ETH_HEADER_LEN => {
            for (i, b) in pkts.iter_mut().enumerate() {
                if !encap_v4(h, b, max_inner) {
                    marks |= 1 << i;
                }
            }
        }
        _ => {
            let (header, outer) = (sh.codec.header(), &t.outer);
            for (i, b) in pkts.iter_mut().enumerate() {
                if !encap_any(outer, &header, b, max_inner) {
                    marks |= 1 << i;
                }
            }
        }
    }
    if marks != 0 {
        drop_marked(pkts, marks, max_inner, cache, drops);
    }
    if pkts.is_empty() {
        return 0;
    }
    tx.tx_burst(pkts, cache, drops)
}

/// [`send_through`] of one frame over IPv4: false (and `b` left as it was) when its inner
/// frame is a runt or too big for the underlay, or the buffer's headroom too small.
#[inline(always)]
fn encap_v4(t: &HeadedV4, b: &mut PacketBuf, max_inner: usize) -> bool {
    let inner = b.len();
    // inner_len_drop's two bounds in one compare (`max_inner` is at least an Ethernet
    // header: send_through's condition).
    if inner.wrapping_sub(ETH_HEADER_LEN) > max_inner.wrapping_sub(ETH_HEADER_LEN) {
        return false;
    }
    let Ok((front, frame)) = b.prepend_split::<V4_HEADED_LEN>() else { return false };
    let sport = source_port(flow_hash(frame));
    // `inner` is a buffer's length (16 bits); the write cannot fail for a frame that fits the
    // underlay's MTU.
    t.write(front, inner as u16, sport) || undo_prepend(b, V4_HEADED_LEN)
}

/// [`send_through`] of one frame through any template (IPv6, or an underlay too small for
/// any frame).
#[inline(always)]
fn encap_any(
    t: &OuterTemplate,
    header: &[u8; PLAIN_HEADER_LEN],
    b: &mut PacketBuf,
    max_inner: usize,
) -> bool {
    if inner_len_drop(b.len(), max_inner).is_some() {
        return false;
    }
    let sport = source_port(flow_hash(b.data()));
    let outer = t.headers_len();
    let Ok(h) = b.prepend(outer + PLAIN_HEADER_LEN) else { return false };
    h[outer..].copy_from_slice(header);
    t.write(b.data_mut(), sport) || undo_prepend(b, outer + PLAIN_HEADER_LEN)
}

/// Takes back `n` bytes a prepend put in front of a frame whose headers could not be
/// written; false.
#[cold]
fn undo_prepend(b: &mut PacketBuf, n: usize) -> bool {
    let _ = b.trim_front(n);
    false
}

/// Takes the frames marked in `marks` out of `pkts` (order kept), counting why each is dropped:
/// its inner frame's length, else the buffer's headroom.
#[cold]
#[inline(never)]
fn drop_marked(
    pkts: &mut Burst,
    marks: Marks,
    max_inner: usize,
    cache: &mut PoolCache,
    drops: &mut DropTally,
) {
    let all = std::mem::take(pkts);
    for (i, b) in all.into_iter().enumerate() {
        if marks & (1 << i) == 0 {
            pkts.push(b);
            continue;
        }
        drops.add(inner_len_drop(b.len(), max_inner).unwrap_or(DropReason::NoBuffer), 1);
        cache.free(b);
    }
}

impl TxQueue for UplinkTunnelTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        let UplinkTunnelTx { shared, tx, out, templates } = self;
        let sh = &**shared;
        // A port whose one endpoint is its whole flood list sends every frame there, known
        // or not: no lookup (as a port with one `remote_ip`). Its next hop's MAC and its
        // template are read once a burst.
        let only = sh.remotes.sole_endpoint();
        if let Some(t) = only.and_then(|e| templates.get(sh, e, sh.next_hop_mac(e)?).ok()) {
            return send_through(sh, t, pkts, &mut **tx, cache, drops);
        }
        // One flood list for the whole burst, however an update swaps it meanwhile.
        let flood = sh.remotes.flood();
        let q = (out, &mut **tx, &mut **templates);
        let now = sh.now_s();
        let (remotes, codec) = (sh.remotes.view(), sh.codec);
        let mut sent = 0;
        for b in pkts.drain(..) {
            let Some(mut b) = fits(sh, b, cache, drops) else { continue };
            let sport = source_port(flow_hash(b.data()));
            let one = only.or_else(|| remotes.lookup(MacAddr::from_bytes(&b.data()[..6]), now));
            if codec.encap_buf(&mut b).is_err() {
                drops.add(DropReason::NoBuffer, 1);
                cache.free(b);
                continue;
            }
            match one {
                Some(e) => sent += push_to(sh, (q.0, q.1, q.2), b, e, sport, cache, drops),
                None => {
                    let Some((&last, rest)) = flood.split_last() else {
                        drops.add(DropReason::TunnelNoEndpoint, 1);
                        cache.free(b);
                        continue;
                    };
                    for &e in rest {
                        if sh.next_hop_mac(e).is_none() {
                            drops.add(DropReason::TunnelUnresolved, 1);
                            continue;
                        }
                        match cache.alloc_copy(b.data()) {
                            Some(c) => sent += push_to(sh, (q.0, q.1, q.2), c, e, sport, cache, drops),
                            None => drops.add(DropReason::NoBuffer, 1),
                        }
                    }
                    sent += push_to(sh, (q.0, q.1, q.2), b, last, sport, cache, drops);
                }
            }
        }
        let (out, tx, _) = q;
        if !out.is_empty() {
            sent += tx.tx_burst(out, cache, drops);
        }
        sent
    }

    fn flush(&mut self) -> Result<(), PortError> {
        self.tx.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use switchyard_dataplane::buffer::{Pool, HEADROOM};
    use switchyard_dataplane::port::ring::{RingPeer, RingPort};
    use switchyard_dataplane::tunnel::TunnelKind;
    use switchyard_dataplane::wire::outer::OuterPacket;
    use switchyard_dataplane::wire::EtherType;

    const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const X: MacAddr = MacAddr([2, 0, 0, 0, 0xb, 1]);

    fn v4(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(v4(n))
    }

    /// A VXLAN port (VNI 5001, 192.0.2.1) on a ring uplink, its queues, and the ring's far end.
    fn port(flood: &[IpAddr]) -> (UplinkTunnelPort, RingPeer, Box<dyn RxQueue>, Box<dyn TxQueue>) {
        let (ring, peer) = RingPort::new("uplink", 256);
        let o = TunnelOptions {
            kind: TunnelKind::Vxlan,
            vni: 5001,
            local: ip(1),
            dstport: 4789,
            flood: flood.to_vec(),
            remote_macs: Vec::new(),
            learn: true,
            aging_s: 300,
        };
        let p = UplinkTunnelPort::new("tun", &o, Arc::new(ring), LOCAL_MAC, 1500, NextHops::default())
            .expect("port")
            .with_clock(TunnelClock::Shared(Arc::new(AtomicU64::new(0))))
            .expect("no queue yet");
        let (rx, tx) = (p.open_rx(0).expect("rx"), p.open_tx(0).expect("tx"));
        (p, peer, rx, tx)
    }

    /// A port of `o` on a ring uplink, with a clock the test sets (nanoseconds): the port,
    /// the uplink's far end and the clock.
    fn clocked_port(o: &TunnelOptions) -> (UplinkTunnelPort, RingPeer, Arc<AtomicU64>) {
        let (ring, peer) = RingPort::new("uplink", 256);
        let clock = Arc::new(AtomicU64::new(0));
        let p = UplinkTunnelPort::new("tun", o, Arc::new(ring), LOCAL_MAC, 1500, NextHops::default())
            .expect("port")
            .with_clock(TunnelClock::Shared(clock.clone()))
            .expect("no queue yet");
        (p, peer, clock)
    }

    /// Once the port's queues are gone: frames left on the peer freed, every buffer back.
    fn all_returned(peer: &RingPeer, mut cache: PoolCache, pool: &Pool) {
        while let Some(b) = peer.collect() {
            cache.free(b);
        }
        drop(cache);
        assert_eq!(pool.in_use(), 0);
    }

    /// Hands `frame` to the port as received on the uplink; returns the inner frames delivered.
    fn receive(peer: &RingPeer, rx: &mut dyn RxQueue, cache: &mut PoolCache, frame: &[u8]) -> Vec<Vec<u8>> {
        peer.inject(cache.alloc_copy(frame).expect("buffer")).expect("room");
        let (mut out, mut drops) = (Burst::new(), DropTally::default());
        rx.rx_burst(RxCtx::new(cache, &mut drops), &mut out, 32);
        assert!(drops.is_zero(), "{drops:?}");
        out.drain(..)
            .map(|b| {
                let v = b.data().to_vec();
                cache.free(b);
                v
            })
            .collect()
    }

    /// An ARP reply from `n` at `mac` to the port.
    fn arp_reply(n: u8, mac: MacAddr) -> Vec<u8> {
        let mut f = [0u8; CONTROL_FRAME_LEN];
        let len = arp_frame(&mut f, mac, v4(n), v4(1), Some(LOCAL_MAC));
        f[..len].to_vec()
    }

    /// An inner frame from `src` to `dst`.
    fn inner(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&EtherType::IPV4.to_be_bytes());
        f
    }

    /// Sends `frame` into the tunnel; returns (next hop MAC, endpoint) of every VXLAN packet
    /// out of the uplink, each checked by the receive side's checks and carrying `frame`.
    fn send(
        peer: &RingPeer,
        tx: &mut dyn TxQueue,
        cache: &mut PoolCache,
        frame: &[u8],
    ) -> Vec<(MacAddr, IpAddr)> {
        let mut b = Burst::new();
        b.push(cache.alloc_copy(frame).expect("buffer"));
        tx.tx_burst(&mut b, cache, &mut DropTally::default());
        let mut got = Vec::new();
        while let Some(o) = peer.collect() {
            if o.data()[12..14] == EtherType::IPV4.to_be_bytes() {
                let p = OuterPacket::new_checked(o.data()).expect("outer headers as received");
                assert_eq!(&o.data()[p.payload_offset() + 8..], frame);
                got.push((p.dst_mac(), p.dst_ip()));
            }
            cache.free(o);
        }
        got
    }

    /// A tunnel packet from endpoint 192.0.2.2 (at `mac`) to the port, VNI `vni`, carrying
    /// `inner`.
    fn tunnel_packet(mac: MacAddr, vni: u32, inner: &[u8]) -> Vec<u8> {
        tunnel_packet_from(2, mac, vni, inner)
    }

    /// A tunnel packet from endpoint 192.0.2.`n` (at `mac`) to the port, VNI `vni`, carrying
    /// `inner`.
    fn tunnel_packet_from(n: u8, mac: MacAddr, vni: u32, inner: &[u8]) -> Vec<u8> {
        let v = vni.to_be_bytes();
        let mut f = vec![0u8; 42];
        f.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
        f.extend_from_slice(inner);
        let r = OuterRepr {
            src_mac: mac,
            dst_mac: LOCAL_MAC,
            src_ip: ip(n),
            dst_ip: ip(1),
            src_port: 50000,
            dst_port: 4789,
        };
        assert!(r.emit(&mut f));
        f
    }

    /// One poll of `rx`: the frames delivered and the drops counted.
    fn poll(rx: &mut dyn RxQueue, cache: &mut PoolCache) -> (Vec<Vec<u8>>, DropTally) {
        let (mut out, mut drops) = (Burst::new(), DropTally::default());
        rx.rx_burst(RxCtx::new(cache, &mut drops), &mut out, 32);
        let frames = out
            .drain(..)
            .map(|b| {
                let v = b.data().to_vec();
                cache.free(b);
                v
            })
            .collect();
        (frames, drops)
    }

    /// Every frame the uplink sent since the last call: (EtherType, the VXLAN VNI of a tunnel
    /// packet).
    fn sent(peer: &RingPeer, cache: &mut PoolCache) -> Vec<(u16, Option<u32>)> {
        let mut got = Vec::new();
        while let Some(o) = peer.collect() {
            let et = u16::from_be_bytes([o.data()[12], o.data()[13]]);
            let vni = OuterPacket::new_checked(o.data())
                .ok()
                .and_then(|p| switchyard_dataplane::tunnel::peek_vni(&o.data()[p.payload_offset()..]));
            got.push((et, vni));
            cache.free(o);
        }
        got
    }

    /// Two networks (VNIs 5001 and 5002) on one uplink: each port gets its own packets
    /// whichever port's RX reads the uplink; a third VNI is the reader's `tunnel_wrong_vni`;
    /// one neighbour table (one probe, one ARP reply resolves both ports' endpoint); an ARP
    /// request answered once; each port sends its own VNI; another local address or a served
    /// VNI is refused; the uplink stays with the port left when the other goes.
    #[test]
    fn two_networks_share_one_uplink() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:shared-{}", std::process::id());
        let (ring, peer) = RingPort::new("uplink", 256);
        let ring = Mutex::new(Some(ring));
        let opts = |vni: u32, local: IpAddr| TunnelOptions {
            kind: TunnelKind::Vxlan,
            vni,
            local,
            dstport: 4789,
            flood: vec![ip(2)],
            remote_macs: Vec::new(),
            learn: true,
            aging_s: 300,
        };
        let join = |name: &str, vni: u32, local: IpAddr| {
            UplinkTunnelPort::join(name, &opts(vni, local), &key, NextHops::default(), || {
                let r = ring.lock().unwrap().take().expect("the uplink opened once");
                Ok((Arc::new(r), LOCAL_MAC, 1500))
            })
        };
        let a = join("a", 5001, ip(1)).expect("a");
        let b = join("b", 5002, ip(1)).expect("b joins a's uplink");
        assert!(join("c", 5003, ip(9)).is_err(), "another local address");
        assert!(join("d", 5001, ip(1)).is_err(), "VNI 5001 served");
        let (mut ra, mut ta) = (a.open_rx(0).expect("rx"), a.open_tx(0).expect("tx"));
        let (mut rb, mut tb) = (b.open_rx(0).expect("rx"), b.open_tx(0).expect("tx"));
        assert!(a.open_rx(0).is_err(), "queue 0 of a taken");
        // First polls: both ports route endpoint 2 to one slot, probed once.
        assert_eq!(poll(&mut *ra, &mut cache).0.len(), 0);
        assert_eq!(poll(&mut *rb, &mut cache).0.len(), 0);
        assert_eq!(sent(&peer, &mut cache), [(EtherType::ARP, None)], "one probe for both ports");
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        peer.inject(cache.alloc_copy(&arp_reply(2, m2)).unwrap()).unwrap();
        assert_eq!(poll(&mut *rb, &mut cache).0.len(), 0);
        assert_eq!((a.neighbour(ip(2)), b.neighbour(ip(2))), (Some(m2), Some(m2)));

        let (ia, ib, ic) =
            (inner(LOCAL_MAC, X), inner(LOCAL_MAC, MacAddr([2, 0, 0, 0, 0xb, 2])), inner(X, X));
        for reader in 0..2 {
            for (vni, f) in [(5001, &ia), (5002, &ib), (5003, &ic)] {
                peer.inject(cache.alloc_copy(&tunnel_packet(m2, vni, f)).unwrap()).unwrap();
            }
            let (first, second) = if reader == 0 { (&mut ra, &mut rb) } else { (&mut rb, &mut ra) };
            let (got, drops) = poll(&mut **first, &mut cache);
            assert_eq!(drops.get(DropReason::TunnelWrongVni), 1, "5003 at the reader");
            assert_eq!(drops.total(), 1);
            assert_eq!(got, [if reader == 0 { ia.clone() } else { ib.clone() }]);
            let (got, drops) = poll(&mut **second, &mut cache);
            assert!(drops.is_zero(), "{drops:?}");
            assert_eq!(got, [if reader == 0 { ib.clone() } else { ia.clone() }], "handed over");
        }
        // (Each port here has one endpoint and learns no remote MAC: where each port learns
        // its own, `handed_packets_are_learned_by_their_own_port`.)

        // An ARP request for the local address: answered once, by the reader.
        let mut req = [0u8; CONTROL_FRAME_LEN];
        let n = arp_frame(&mut req, m2, v4(2), v4(1), None);
        peer.inject(cache.alloc_copy(&req[..n]).unwrap()).unwrap();
        poll(&mut *ra, &mut cache);
        poll(&mut *rb, &mut cache);
        assert_eq!(sent(&peer, &mut cache), [(EtherType::ARP, None)], "one reply");

        // Each port sends its own VNI through the one uplink.
        for (tx, vni) in [(&mut ta, 5001), (&mut tb, 5002)] {
            let mut burst = Burst::new();
            burst.push(cache.alloc_copy(&inner(X, LOCAL_MAC)).unwrap());
            tx.tx_burst(&mut burst, &mut cache, &mut DropTally::default());
            assert_eq!(sent(&peer, &mut cache), [(EtherType::IPV4, Some(vni))]);
        }

        // a goes: b keeps the uplink; 5001 is nobody's now.
        drop((ra, ta, a));
        for (vni, f) in [(5001, &ia), (5002, &ib)] {
            peer.inject(cache.alloc_copy(&tunnel_packet(m2, vni, f)).unwrap()).unwrap();
        }
        let (got, drops) = poll(&mut *rb, &mut cache);
        assert_eq!((got, drops.get(DropReason::TunnelWrongVni)), (vec![ib.clone()], 1));
        drop((rb, tb, b));
        all_returned(&peer, cache, &pool);
    }

    /// A burst whose common tunnel packets are interleaved with others (an ARP reply, a frame
    /// not for the tunnel, a runt inner frame) delivers the inner frames in their order, each
    /// once, and counts the others.
    #[test]
    fn a_mixed_burst_keeps_its_order() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (p, peer, mut rx, _tx) = port(&[ip(2)]);
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        let f = |n: u8| inner(LOCAL_MAC, MacAddr([2, 0, 0, 0, 0xb, n]));
        let mut not_ours = inner(X, X);
        not_ours[14] = 0x45;
        let burst = [
            tunnel_packet(m2, 5001, &f(1)),
            tunnel_packet(m2, 5001, &f(2)),
            arp_reply(2, m2),
            tunnel_packet(m2, 5001, &f(3)),
            not_ours,
            tunnel_packet(m2, 5001, &f(4)[..10]),
            tunnel_packet(m2, 5001, &f(5)),
        ];
        for b in &burst {
            peer.inject(cache.alloc_copy(b).unwrap()).unwrap();
        }
        let (got, drops) = poll(&mut *rx, &mut cache);
        assert_eq!(got, [f(1), f(2), f(3), f(5)]);
        assert_eq!(drops.total(), 2, "{drops:?}");
        assert_eq!(drops.get(DropReason::UplinkNotTunnel), 1, "{drops:?}");
        assert_eq!(p.neighbour(ip(2)), Some(m2), "the ARP reply in the burst was read");
        drop((rx, _tx));
        all_returned(&peer, cache, &pool);
    }

    /// The uplink's only member keeps its RX queue (no lock a burst) and gives it back at its
    /// first poll after another port joins, then takes it again when that port has left; a
    /// queue handle going away gives it back too.
    #[test]
    fn a_port_alone_holds_the_uplink_until_another_joins() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:alone-{}", std::process::id());
        let (ring, peer) = RingPort::new("uplink", 256);
        let ring = Mutex::new(Some(ring));
        let join = |name: &str, vni: u32| {
            let o = TunnelOptions {
                kind: TunnelKind::Vxlan,
                vni,
                local: ip(1),
                dstport: 4789,
                flood: vec![ip(2)],
                remote_macs: Vec::new(),
                learn: true,
                aging_s: 300,
            };
            UplinkTunnelPort::join(name, &o, &key, NextHops::default(), || {
                let r = ring.lock().unwrap().take().expect("the uplink opened once");
                Ok((Arc::new(r), LOCAL_MAC, 1500))
            })
            .expect("port")
        };
        let a = join("a", 5001);
        // Whether the uplink's queue 0 is in the registry (no member holds it).
        let free = |p: &UplinkTunnelPort| {
            let q = p.shared.up.queues[0].get().expect("queue 0 open");
            q.rx.lock().unwrap().is_some()
        };
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        let (ia, ib) = (inner(LOCAL_MAC, X), inner(LOCAL_MAC, MacAddr([2, 0, 0, 0, 0xb, 2])));
        let mut ra = a.open_rx(0).expect("rx");
        assert!(free(&a), "opened, not read yet");
        assert_eq!(
            receive(&peer, &mut *ra, &mut cache, &tunnel_packet(m2, 5001, &ia)),
            std::slice::from_ref(&ia)
        );
        assert!(!free(&a), "a, alone, keeps the queue");

        let b = join("b", 5002);
        let mut rb = b.open_rx(0).expect("rx");
        peer.inject(cache.alloc_copy(&tunnel_packet(m2, 5002, &ib)).unwrap()).unwrap();
        assert_eq!(poll(&mut *rb, &mut cache).0, Vec::<Vec<u8>>::new(), "a holds the uplink");
        assert_eq!(poll(&mut *ra, &mut cache).0, Vec::<Vec<u8>>::new(), "a reads it for b");
        assert!(free(&a), "given back at a's first poll with b there");
        assert_eq!(poll(&mut *rb, &mut cache).0, std::slice::from_ref(&ib), "handed over");
        // Now b can read the uplink: a's packet goes to a through b.
        peer.inject(cache.alloc_copy(&tunnel_packet(m2, 5001, &ia)).unwrap()).unwrap();
        assert_eq!(poll(&mut *rb, &mut cache).0, Vec::<Vec<u8>>::new());
        assert_eq!(poll(&mut *ra, &mut cache).0, std::slice::from_ref(&ia), "read by b, handed to a");
        assert!(free(&a), "with two members nobody keeps it");

        drop((rb, b));
        assert_eq!(
            receive(&peer, &mut *ra, &mut cache, &tunnel_packet(m2, 5001, &ia)),
            std::slice::from_ref(&ia)
        );
        assert!(!free(&a), "alone again: kept again");
        drop(ra);
        assert!(free(&a), "a handle going away gives it back");
        let mut ra = a.open_rx(0).expect("rx again");
        assert_eq!(
            receive(&peer, &mut *ra, &mut cache, &tunnel_packet(m2, 5001, &ia)),
            std::slice::from_ref(&ia)
        );
        drop((ra, a));
        all_returned(&peer, cache, &pool);
    }

    /// The outer headers are written from a template per endpoint; when the next hop's MAC
    /// changes (a new ARP reply), the next packet carries the new one.
    #[test]
    fn outer_headers_follow_a_changed_next_hop_mac() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (_p, peer, mut rx, mut tx) = port(&[ip(2)]);
        let (m1, m2) = (MacAddr([2, 0, 0, 0, 0x99, 1]), MacAddr([2, 0, 0, 0, 0x99, 2]));
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m1));
        for _ in 0..2 {
            assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)), [(m1, ip(2))]);
        }
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m2));
        for _ in 0..2 {
            assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)), [(m2, ip(2))]);
        }
        drop((rx, tx));
        all_returned(&peer, cache, &pool);
    }

    /// A burst to a port's one endpoint with frames that cannot go: each dropped and counted
    /// by why (a runt, one too big for the underlay, one without headroom for the headers),
    /// the others sent in order, each with its own outer lengths and its flow's source port;
    /// every buffer back.
    #[test]
    fn one_endpoint_burst_drops_what_cannot_go() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (_p, peer, mut rx, mut tx) = port(&[ip(2)]);
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m2));
        sent(&peer, &mut cache);
        let max_inner = TunnelKind::Vxlan.max_inner_frame(false, 1500);
        let frame = |n: u8, len: usize| {
            let mut f = inner(X, LOCAL_MAC);
            f.resize(len, n);
            f
        };
        let good = [frame(1, 60), frame(2, max_inner), frame(3, ETH_HEADER_LEN)];
        let mut burst = Burst::new();
        let mut add = |f: &[u8]| burst.push(cache.alloc_copy(f).expect("buffer"));
        add(&good[0]);
        add(&frame(4, ETH_HEADER_LEN - 1));
        add(&good[1]);
        add(&frame(5, max_inner + 1));
        let mut cramped = cache.alloc().expect("buffer");
        cramped.prepend(HEADROOM - V4_HEADED_LEN + 1).expect("headroom").fill(0);
        burst.push(cramped);
        burst.push(cache.alloc_copy(&good[2]).expect("buffer"));
        let mut drops = DropTally::default();
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 3);
        assert!(burst.is_empty());
        let why = [DropReason::Runt, DropReason::TunnelMtu, DropReason::NoBuffer];
        assert_eq!(why.map(|r| drops.get(r)), [1, 1, 1], "{drops:?}");
        assert_eq!(drops.total(), 3);
        let mut got = Vec::new();
        while let Some(o) = peer.collect() {
            let p = OuterPacket::new_checked(o.data()).expect("outer headers as received");
            assert_eq!((p.dst_mac(), p.dst_ip(), p.dst_port()), (m2, ip(2), 4789));
            let payload = &o.data()[p.payload_offset()..];
            assert_eq!(payload.len(), p.payload_len());
            assert_eq!(p.src_port(), source_port(flow_hash(&payload[8..])));
            got.push(payload[8..].to_vec());
            cache.free(o);
        }
        assert_eq!(got, good);
        drop((rx, tx));
        all_returned(&peer, cache, &pool);
    }

    /// Geneve over IPv4 through the one-endpoint path (the HeadedV4 template
    /// with the Geneve header): for inner lengths 14, 15, 60, 1000 and the underlay's largest,
    /// the outer checks pass, the lengths are exact, the Geneve header is version 0 without
    /// options, protocol Ethernet, VNI 5001, and the source port is the inner flow's.
    #[test]
    fn geneve_over_ipv4_through_the_one_endpoint_path() {
        use switchyard_dataplane::wire::GenevePacket;
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let o = TunnelOptions { kind: TunnelKind::Geneve, dstport: 6081, ..vxlan(5001, &[ip(2)]) };
        let (p, peer, _clock) = clocked_port(&o);
        let (mut rx, mut tx) = (p.open_rx(0).expect("rx"), p.open_tx(0).expect("tx"));
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m2));
        sent(&peer, &mut cache);
        let max_inner = TunnelKind::Geneve.max_inner_frame(false, 1500);
        for len in [14usize, 15, 60, 1000, max_inner] {
            let mut f = inner(X, LOCAL_MAC);
            f.resize(len, len as u8);
            let mut burst = Burst::new();
            burst.push(cache.alloc_copy(&f).expect("buffer"));
            let mut drops = DropTally::default();
            assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 1, "len {len}");
            assert!(drops.is_zero(), "{drops:?}");
            let o = peer.collect().expect("one packet");
            assert!(peer.collect().is_none());
            let d = o.data();
            assert_eq!(d.len(), 14 + 20 + 8 + 8 + len);
            let op = OuterPacket::new_checked(d).expect("outer checks");
            assert_eq!((op.dst_mac(), op.dst_ip(), op.dst_port()), (m2, ip(2), 6081));
            assert_eq!(u16::from_be_bytes([d[16], d[17]]) as usize, 20 + 8 + 8 + len, "IP total");
            assert_eq!(op.payload_len(), 8 + len);
            let g = GenevePacket::new_checked(&d[op.payload_offset()..]).expect("geneve");
            assert_eq!((g.options_len(), g.oam(), g.critical()), (0, false, false));
            assert_eq!((g.protocol(), g.vni()), (0x6558, 5001));
            assert_eq!(d[op.payload_offset()] >> 6, 0, "version 0");
            assert_eq!(&d[op.payload_offset() + 8..], &f[..]);
            assert_eq!(op.src_port(), source_port(flow_hash(&f)));
            cache.free(o);
        }
        drop((rx, tx));
        all_returned(&peer, cache, &pool);
    }

    /// A port whose one endpoint is its flood list sends everything there without a lookup;
    /// once learning adds a second endpoint, frames go by the remote table again.
    #[test]
    fn one_endpoint_then_two() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (p, peer, mut rx, mut tx) = port(&[ip(2)]);
        let (m2, m3) = (MacAddr([2, 0, 0, 0, 0x99, 2]), MacAddr([2, 0, 0, 0, 0x99, 3]));
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m2));
        assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)), [(m2, ip(2))]);
        // A tunnel packet from 192.0.2.3 with inner source X: endpoint 3 learned (on the
        // link, its MAC confirmed by the packet), X behind it.
        let payload = [&[0x08, 0, 0, 0, 0, 0x13, 0x89, 0][..], &inner(LOCAL_MAC, X)].concat();
        let mut f = vec![0u8; 42];
        f.extend_from_slice(&payload);
        let r = OuterRepr {
            src_mac: m3,
            dst_mac: LOCAL_MAC,
            src_ip: ip(3),
            dst_ip: ip(1),
            src_port: 50000,
            dst_port: 4789,
        };
        assert!(r.emit(&mut f));
        assert_eq!(receive(&peer, &mut *rx, &mut cache, &f), [inner(LOCAL_MAC, X)]);
        assert_eq!(p.remotes().endpoints(), [ip(2), ip(3)]);
        assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)), [(m3, ip(3))]);
        let unknown = MacAddr([2, 0, 0, 0, 0xc, 1]);
        assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(unknown, LOCAL_MAC)), [(m2, ip(2))]);
        drop((rx, tx));
        all_returned(&peer, cache, &pool);
    }

    /// VXLAN options for VNI `vni` from 192.0.2.1, flooding to `flood`.
    fn vxlan(vni: u32, flood: &[IpAddr]) -> TunnelOptions {
        TunnelOptions {
            kind: TunnelKind::Vxlan,
            vni,
            local: ip(1),
            dstport: 4789,
            flood: flood.to_vec(),
            remote_macs: Vec::new(),
            learn: false,
            aging_s: 300,
        }
    }

    /// Joins `key` as port `name` of `vni`; a new uplink is a ring whose peer is put in `peer`.
    fn join_ring(
        name: &str,
        vni: u32,
        flood: &[IpAddr],
        key: &str,
        peer: &Mutex<Option<RingPeer>>,
    ) -> Result<UplinkTunnelPort, PortError> {
        UplinkTunnelPort::join(name, &vxlan(vni, flood), key, NextHops::default(), || {
            let (r, p) = RingPort::new("uplink", 256);
            *peer.lock().unwrap() = Some(p);
            Ok((Arc::new(r), LOCAL_MAC, 1500))
        })
    }

    /// The first port of an uplink opens it while holding only that uplink's slot: a port
    /// of another uplink opens, and a port of a third leaves, meanwhile; a second port of the
    /// uplink being opened waits for the opening and joins it (opened once).
    #[test]
    fn an_uplink_opening_slowly_holds_up_only_its_own_joins() {
        use std::sync::mpsc;
        use std::time::Duration;
        let pid = std::process::id();
        let (key_a, key_b, key_c) =
            (format!("ring:slow-a-{pid}"), format!("ring:slow-b-{pid}"), format!("ring:slow-c-{pid}"));
        let c = join_ring("c", 5003, &[ip(2)], &key_c, &Mutex::new(None)).expect("c");
        let (opening_tx, opening_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let opens = Arc::new(AtomicU64::new(0));
        let slow = {
            let (key_a, opens) = (key_a.clone(), opens.clone());
            std::thread::spawn(move || {
                UplinkTunnelPort::join("a", &vxlan(5001, &[ip(2)]), &key_a, NextHops::default(), || {
                    opens.fetch_add(1, Ordering::Relaxed);
                    opening_tx.send(()).expect("test waits");
                    // A device probe that takes a while (bounded: the test never hangs).
                    let _ = go_rx.recv_timeout(Duration::from_secs(10));
                    let (r, _) = RingPort::new("uplink", 16);
                    Ok((Arc::new(r), LOCAL_MAC, 1500))
                })
            })
        };
        opening_rx.recv_timeout(Duration::from_secs(10)).expect("a opens its uplink");
        let (done_tx, done_rx) = mpsc::channel();
        let other = std::thread::spawn(move || {
            let b = join_ring("b", 5002, &[ip(2)], &key_b, &Mutex::new(None));
            drop(c);
            done_tx.send(b.is_ok()).expect("test waits");
            b
        });
        let done = done_rx.recv_timeout(Duration::from_secs(5));
        let same = {
            let (key_a, opens) = (key_a.clone(), opens.clone());
            std::thread::spawn(move || {
                UplinkTunnelPort::join("a2", &vxlan(5004, &[ip(2)]), &key_a, NextHops::default(), || {
                    opens.fetch_add(1, Ordering::Relaxed);
                    Err(PortError::Backend { port: "a2".into(), msg: "opened twice".into() })
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let waited = !same.is_finished();
        go_tx.send(()).expect("a still opening");
        let a = slow.join().expect("no panic").expect("a");
        let a2 = same.join().expect("no panic").expect("a2 joins a's uplink");
        let b = other.join().expect("no panic");
        assert_eq!(done, Ok(true), "another uplink's join and a leaving port waited for a's opening");
        assert!(waited, "a2 did not wait for the uplink it joins to open");
        assert_eq!(opens.load(Ordering::Relaxed), 1);
        assert!(a2.info().expect("info").contains("shared with 1 other port(s)"));
        drop((a, a2, b));
    }

    /// A port being removed gives its VNI up (`retire`): a new port of that VNI joins at once
    /// and keeps it when the old one's last handle goes; packets of the VNI that another
    /// port reads are handed to the new port.
    #[test]
    fn a_retired_port_hands_its_vni_to_a_new_one() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:retire-{}", std::process::id());
        let peer = Mutex::new(None);
        let a = join_ring("a", 5001, &[ip(2)], &key, &peer).expect("a");
        let b = join_ring("b", 5002, &[ip(2)], &key, &peer).expect("b");
        let peer = peer.lock().unwrap().take().expect("opened");
        let (ra, ta) = (a.open_rx(0).expect("rx"), a.open_tx(0).expect("tx"));
        let mut rb = b.open_rx(0).expect("rx");
        assert!(join_ring("a-new", 5001, &[ip(2)], &key, &Mutex::new(None)).is_err(), "5001 served");
        a.retire();
        let n = join_ring("a-new", 5001, &[ip(2)], &key, &Mutex::new(None)).expect("5001 free after retire");
        let mut rn = n.open_rx(0).expect("rx");
        // The old port's last handles go after the new one joined: the new one stays.
        drop((ra, ta, a));
        let ia = inner(LOCAL_MAC, X);
        peer.inject(cache.alloc_copy(&tunnel_packet(MacAddr([2, 0, 0, 0, 0x99, 2]), 5001, &ia)).unwrap())
            .unwrap();
        let (got, drops) = poll(&mut *rb, &mut cache);
        assert!(got.is_empty() && drops.is_zero(), "b handed it over: {drops:?}");
        let (got, drops) = poll(&mut *rn, &mut cache);
        assert_eq!((got, drops.total()), (vec![ia], 0));
        drop((rb, rn, b, n));
        all_returned(&peer, cache, &pool);
    }

    /// With learning off a port takes tunnel packets only from the endpoints its configuration
    /// names (flood list, static remote MACs' endpoints): another source is
    /// `tunnel_unknown_source`, whether the packet is read by the port itself (in the run of
    /// common packets or behind another) or handed over by another port of the uplink.
    #[test]
    fn learning_off_takes_only_configured_endpoints() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:sources-{}", std::process::id());
        let peer = Mutex::new(None);
        let a = join_ring("a", 5001, &[ip(2)], &key, &peer).expect("a");
        let b = join_ring("b", 5002, &[ip(2)], &key, &peer).expect("b");
        a.remotes().update(&[ip(2)], &[(MacAddr([2, 0, 0, 0, 0xb, 3]), ip(3))], false).expect("update");
        let peer = peer.lock().unwrap().take().expect("opened");
        let (mut ra, mut rb) = (a.open_rx(0).expect("rx"), b.open_rx(0).expect("rx"));
        let m = MacAddr([2, 0, 0, 0, 0x99, 2]);
        let f = |n: u8| inner(LOCAL_MAC, MacAddr([2, 0, 0, 0, 0xc, n]));
        // (source, VNI, tag): the stranger 192.0.2.9 first behind a common packet (the run of
        // common packets stops at it), then among others.
        let packets = [
            (2, 5001, 1),
            (9, 5001, 91),
            (3, 5001, 2),
            (9, 5002, 92),
            (9, 5001, 93),
            (2, 5001, 3),
            (2, 5002, 4),
        ];
        for (src, vni, n) in packets {
            peer.inject(cache.alloc_copy(&tunnel_packet_from(src, m, vni, &f(n))).unwrap()).unwrap();
        }
        let (got, drops) = poll(&mut *ra, &mut cache);
        assert_eq!(got, [f(1), f(2), f(3)]);
        assert_eq!((drops.get(DropReason::TunnelUnknownSource), drops.total()), (2, 2));
        let (got, drops) = poll(&mut *rb, &mut cache);
        assert_eq!(got, [f(4)]);
        assert_eq!((drops.get(DropReason::TunnelUnknownSource), drops.total()), (1, 1));
        // The static endpoint left out by an update: no endpoint any more.
        a.remotes().update(&[ip(2)], &[], false).expect("update");
        peer.inject(cache.alloc_copy(&tunnel_packet_from(3, m, 5001, &f(5))).unwrap()).unwrap();
        let (got, drops) = poll(&mut *ra, &mut cache);
        assert!(got.is_empty());
        assert_eq!((drops.get(DropReason::TunnelUnknownSource), drops.total()), (1, 1));
        // Learning on: any source is taken.
        a.remotes().update(&[ip(2)], &[], true).expect("update");
        peer.inject(cache.alloc_copy(&tunnel_packet_from(9, m, 5001, &f(6))).unwrap()).unwrap();
        let (got, drops) = poll(&mut *ra, &mut cache);
        assert_eq!((got, drops.total()), (vec![f(6)], 0));
        drop((ra, rb, a, b));
        all_returned(&peer, cache, &pool);
    }

    /// The inner source MACs of packets one port read for another are learned by the port
    /// whose VNI they carry, and only by it (ports with two endpoints, so both learn).
    #[test]
    fn handed_packets_are_learned_by_their_own_port() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:learn-{}", std::process::id());
        let peer = Mutex::new(None);
        let join = |name: &str, vni: u32| {
            let o = TunnelOptions { learn: true, ..vxlan(vni, &[ip(2), ip(3)]) };
            UplinkTunnelPort::join(name, &o, &key, NextHops::default(), || {
                let (r, p) = RingPort::new("uplink", 256);
                *peer.lock().unwrap() = Some(p);
                Ok((Arc::new(r), LOCAL_MAC, 1500))
            })
        };
        let (a, b) = (join("a", 5001).expect("a"), join("b", 5002).expect("b"));
        let peer = peer.lock().unwrap().take().expect("opened");
        let (mut ra, mut rb) = (a.open_rx(0).expect("rx"), b.open_rx(0).expect("rx"));
        let (m2, y) = (MacAddr([2, 0, 0, 0, 0x99, 2]), MacAddr([2, 0, 0, 0, 0xb, 2]));
        let (ia, ib) = (inner(LOCAL_MAC, X), inner(LOCAL_MAC, y));
        for (vni, f) in [(5002, &ib), (5001, &ia)] {
            peer.inject(cache.alloc_copy(&tunnel_packet(m2, vni, f)).unwrap()).unwrap();
        }
        assert_eq!(poll(&mut *ra, &mut cache).0, [ia], "a read both");
        assert_eq!(poll(&mut *rb, &mut cache).0, [ib], "handed to b");
        let at =
            |p: &UplinkTunnelPort, m: MacAddr| p.remotes().lookup(m, 0).and_then(|i| p.remotes().endpoint(i));
        assert_eq!((at(&a, X), at(&a, y)), (Some(ip(2)), None));
        assert_eq!((at(&b, X), at(&b, y)), (None, Some(ip(2))));
        drop((ra, rb, a, b));
        all_returned(&peer, cache, &pool);
    }

    /// Packets another port handed to a port that then left are counted (`tunnel_wrong_vni`,
    /// by the next port to probe: their VNI is nobody's), not freed unseen; the next hops
    /// only the leaving port used are freed with it.
    #[test]
    fn packets_left_for_a_port_that_left_are_counted() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:orphans-{}", std::process::id());
        let peer = Mutex::new(None);
        let a = join_ring("a", 5001, &[ip(2)], &key, &peer).expect("a");
        let b = join_ring("b", 5002, &[ip(2), ip(4)], &key, &peer).expect("b");
        let peer = peer.lock().unwrap().take().expect("opened");
        let mut ra = a.open_rx(0).expect("rx");
        let mut rb = b.open_rx(0).expect("rx");
        // First polls route both ports' endpoints: 192.0.2.2 (both) and .4 (b's).
        poll(&mut *rb, &mut cache);
        poll(&mut *ra, &mut cache);
        assert_eq!(a.next_hops_in_use(), 2);
        sent(&peer, &mut cache);
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        for _ in 0..3 {
            let f = tunnel_packet(m2, 5002, &inner(LOCAL_MAC, X));
            peer.inject(cache.alloc_copy(&f).unwrap()).unwrap();
        }
        let (got, drops) = poll(&mut *ra, &mut cache);
        assert!(got.is_empty() && drops.is_zero(), "three in b's inbox: {drops:?}");
        drop((rb, b));
        assert_eq!(a.next_hops_in_use(), 1, "b's own next hop freed with it");
        // Counted at a's next probe round (once a second, on the uplink's own clock).
        let (mut wrong, t) = (0, std::time::Instant::now());
        while wrong == 0 && t.elapsed().as_secs() < 4 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            wrong += u64::from(poll(&mut *ra, &mut cache).1.get(DropReason::TunnelWrongVni));
        }
        assert_eq!(wrong, 3);
        drop((ra, a));
        all_returned(&peer, cache, &pool);
    }

    /// Packets handed to a port that then left with the last other port on the uplink: no
    /// member is left to count them at a probe round, so they are counted as the process's
    /// portless `tunnel_wrong_vni` drops when the uplink and the inbox go (they were freed
    /// uncounted). Each nextest test is a process of its own: the counter moves by this
    /// test's packets only.
    #[test]
    fn packets_left_when_the_last_port_leaves_the_uplink_are_counted() {
        use switchyard_dataplane::switch::portless_drops;
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let key = format!("ring:last-orphans-{}", std::process::id());
        let peer = Mutex::new(None);
        let a = join_ring("a", 5001, &[ip(2)], &key, &peer).expect("a");
        let b = join_ring("b", 5002, &[ip(2)], &key, &peer).expect("b");
        let peer = peer.lock().unwrap().take().expect("opened");
        let mut ra = a.open_rx(0).expect("rx");
        let rb = b.open_rx(0).expect("rx");
        poll(&mut *ra, &mut cache);
        sent(&peer, &mut cache);
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        for _ in 0..3 {
            let f = tunnel_packet(m2, 5002, &inner(LOCAL_MAC, X));
            peer.inject(cache.alloc_copy(&f).unwrap()).unwrap();
        }
        let (got, drops) = poll(&mut *ra, &mut cache);
        assert!(got.is_empty() && drops.is_zero(), "three in b's inbox: {drops:?}");
        let before = portless_drops(DropReason::TunnelWrongVni);
        // a goes first, b (its inbox unread) last: the uplink closes with b.
        drop((ra, a));
        assert_eq!(portless_drops(DropReason::TunnelWrongVni), before, "counted while b is there");
        drop((rb, b));
        assert_eq!(portless_drops(DropReason::TunnelWrongVni) - before, 3);
        all_returned(&peer, cache, &pool);
    }

    /// The uplink's neighbour slots hold the next hops in use: an endpoint that leaves the
    /// flood list (and holds no remote MAC) gives its slot back, its binding forgotten, and
    /// endpoints that come and go one after another never take more than one slot.
    #[test]
    fn neighbour_slots_of_endpoints_no_longer_used_are_reused() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (p, peer, clock) = clocked_port(&vxlan(5001, &[ip(2)]));
        let mut rx = p.open_rx(0).expect("rx");
        poll(&mut *rx, &mut cache);
        let m2 = MacAddr([2, 0, 0, 0, 0x99, 2]);
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m2));
        assert_eq!((p.next_hops_in_use(), p.neighbour(ip(2))), (1, Some(m2)));
        let slot_of = |n: u8| p.shared.up.slots.lock().expect("slots").by_ip.get(&ip(n)).copied();
        let mut first = None;
        for (k, n) in (3..60).enumerate() {
            p.remotes().update(&[ip(n)], &[], false).expect("update");
            clock.store((k as u64 + 1) * 1_000_000_000, Ordering::Relaxed);
            sent(&peer, &mut cache);
            poll(&mut *rx, &mut cache);
            assert_eq!(p.next_hops_in_use(), 1, "endpoint {n}");
            let s = slot_of(n).expect("a slot");
            assert_eq!(*first.get_or_insert(s), s, "endpoint {n} reuses the freed slot");
            assert_eq!(p.neighbour(ip(n)), None, "endpoint {n} has a binding it never got");
            assert_eq!(sent(&peer, &mut cache), [(EtherType::ARP, None)], "endpoint {n} probed");
        }
        assert_eq!(p.remotes().endpoint_count(), 58, "the port's own table keeps its indices");
        drop(rx);
        all_returned(&peer, cache, &pool);
    }

    /// A learned endpoint whose MACs aged out gives its slot back; its next packet routes it
    /// again at once (the reply is not `tunnel_unresolved`).
    #[test]
    fn a_learned_endpoint_that_comes_back_is_routed_at_once() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (p, peer, clock) = clocked_port(&TunnelOptions { learn: true, ..vxlan(5001, &[ip(2)]) });
        let (mut rx, mut tx) = (p.open_rx(0).expect("rx"), p.open_tx(0).expect("tx"));
        let m3 = MacAddr([2, 0, 0, 0, 0x99, 3]);
        let from3 = |inner: &[u8]| tunnel_packet_from(3, m3, 5001, inner);
        let ix = inner(LOCAL_MAC, X);
        assert_eq!(receive(&peer, &mut *rx, &mut cache, &from3(&ix)), [ix.as_slice()]);
        assert_eq!(p.next_hops_in_use(), 2);
        assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)), [(m3, ip(3))]);
        // X ages out (300 s): 192.0.2.3 is no longer in use.
        clock.store(400_000_000_000, Ordering::Relaxed);
        poll(&mut *rx, &mut cache);
        assert_eq!(p.next_hops_in_use(), 1);
        sent(&peer, &mut cache);
        assert_eq!(receive(&peer, &mut *rx, &mut cache, &from3(&ix)), [ix.as_slice()]);
        assert_eq!(p.next_hops_in_use(), 2);
        assert_eq!(send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)), [(m3, ip(3))]);
        drop((rx, tx));
        all_returned(&peer, cache, &pool);
    }

    /// A tunnel packet from an endpoint with another source MAC than its binding (a router's,
    /// or a node's new NIC) leaves the binding as it is and has it probed at the next round;
    /// the answer moves it.
    #[test]
    fn a_tunnel_packet_from_another_mac_does_not_move_the_binding() {
        let pool = Pool::new("t", 64).expect("pool");
        let mut cache = pool.cache();
        let (p, peer, clock) = clocked_port(&vxlan(5001, &[ip(2)]));
        let (mut rx, mut tx) = (p.open_rx(0).expect("rx"), p.open_tx(0).expect("tx"));
        let (m2, m9) = (MacAddr([2, 0, 0, 0, 0x99, 2]), MacAddr([2, 0, 0, 0, 0x99, 9]));
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m2));
        sent(&peer, &mut cache);
        let ia = inner(LOCAL_MAC, X);
        assert_eq!(receive(&peer, &mut *rx, &mut cache, &tunnel_packet(m9, 5001, &ia)), [ia.as_slice()]);
        assert_eq!(
            send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)),
            [(m2, ip(2))],
            "moved by a data packet"
        );
        clock.store(1_000_000_000, Ordering::Relaxed);
        poll(&mut *rx, &mut cache);
        assert_eq!(sent(&peer, &mut cache), [(EtherType::ARP, None)], "doubted: probed");
        receive(&peer, &mut *rx, &mut cache, &arp_reply(2, m9));
        assert_eq!(
            send(&peer, &mut *tx, &mut cache, &inner(X, LOCAL_MAC)),
            [(m9, ip(2))],
            "the answer moves it"
        );
        drop((rx, tx));
        all_returned(&peer, cache, &pool);
    }
}
