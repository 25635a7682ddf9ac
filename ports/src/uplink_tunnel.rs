//! A VXLAN or Geneve tunnel port carried on an Ethernet uplink port (AF_PACKET or DPDK): the
//! fast path, where switchyard writes and reads the outer Ethernet/IP/UDP headers itself and
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
//!   trimmed in place (no copy). Every other uplink frame is consumed here: ARP/ND about the
//!   local address or an endpoint updates the neighbour table (a request for the local
//!   address is answered); anything else is dropped as `uplink_not_tunnel` (an AF_PACKET
//!   uplink's kernel still receives its own copy and handles it as usual).
//! - A frame to an endpoint without a resolved MAC is dropped (`tunnel_unresolved`) and the
//!   endpoint is probed (at most once a second; RX sends the probes, as it polls anyway).
//! - The next hop of an endpoint is the gateway of the longest route holding it (the port's
//!   `routes`, then for an AF_PACKET uplink the kernel's routes through the uplink's
//!   interface, read again once a second), else the endpoint itself
//!   ([`switchyard_dataplane::underlay::Routes`]). Frames to it carry the next hop's MAC; a
//!   tunnel packet confirms its source's MAC only for an endpoint on the link (behind a
//!   gateway, the packet's source MAC is a router's).

use crate::udp_tunnel::{update_remotes, TunnelOptions};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use switchyard_dataplane::backend::Backend;
use switchyard_dataplane::buffer::{PacketBuf, PoolCache};
use switchyard_dataplane::config::UnderlayRoute;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, PortError, RxCtx, RxQueue, TxQueue};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::tunnel::{
    flow_hash, inner_len_drop, source_port, Remotes, RemotesView, TunnelCodec, MAX_ENDPOINTS,
};
use switchyard_dataplane::underlay::{
    arp_frame, classify, nd_frame, plain_ipv4_inner, Neighbours, Route, Routes, UplinkFrame,
    CONTROL_FRAME_LEN, MAX_GATEWAYS, PLAIN_INNER_AT,
};
use switchyard_dataplane::wire::outer::{OuterRepr, OuterTemplate};
use switchyard_dataplane::wire::{MacAddr, ETH_HEADER_LEN};

/// How a tunnel port on an uplink finds its endpoints' next hops.
#[derive(Debug, Clone, Default)]
pub struct NextHops {
    /// The port's own routes (its `routes` option).
    pub routes: Vec<Route>,
    /// The interface whose kernel routes follow them (an AF_PACKET uplink's).
    pub kernel_iface: Option<String>,
}

impl NextHops {
    /// The routes of a tunnel port's `routes` option.
    pub fn routes_of(config: &[UnderlayRoute]) -> Vec<Route> {
        config.iter().map(|r| Route { dst: r.dst, via: Some(r.via) }).collect()
    }
}

/// A hop index no neighbour slot has: the endpoint cannot be reached (its gateway found no
/// slot).
const NO_HOP: u16 = u16::MAX;

/// The routes in use, changed only by the once-a-second refresh.
#[derive(Debug)]
struct Routing {
    config: NextHops,
    table: Routes,
    /// The kernel's part of `table`, as last read.
    kernel: Routes,
}

struct Shared {
    name: String,
    uplink: Arc<dyn PortBackend>,
    codec: TunnelCodec,
    remotes: Remotes,
    /// Neighbour slots: the endpoints' (by endpoint index), then the gateways'.
    neighbours: Neighbours,
    /// Per endpoint: the slot of its next hop (its own, a gateway's, or [`NO_HOP`]).
    via: Box<[AtomicU16]>,
    /// The gateways of slots `MAX_ENDPOINTS + k`: set once, never changed.
    gateways: Box<[OnceLock<IpAddr>]>,
    routing: Mutex<Routing>,
    local: IpAddr,
    mac: MacAddr,
    port: u16,
    underlay_mtu: u32,
    max_inner: usize,
    clock: TunnelClock,
    /// The options the port runs with (the last update's), for the next update.
    opts: Mutex<TunnelOptions>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkTunnel")
            .field("name", &self.name)
            .field("uplink", &self.uplink.name())
            .field("codec", &self.codec)
            .field("local", &self.local)
            .field("mac", &self.mac)
            .finish()
    }
}

impl Shared {
    fn now_s(&self) -> u32 {
        match &self.clock {
            TunnelClock::Monotonic(start) => start.elapsed().as_secs() as u32,
            TunnelClock::Shared(ns) => (ns.load(Ordering::Relaxed) / 1_000_000_000) as u32,
        }
    }

    /// The MAC of endpoint `e`'s next hop, when resolved.
    #[inline]
    fn next_hop_mac(&self, e: u16) -> Option<MacAddr> {
        let hop = self.via.get(usize::from(e))?.load(Ordering::Relaxed);
        self.neighbours.get(hop)
    }

    /// The neighbour slots of address `ip`: an endpoint's, a gateway's, or both.
    fn slots_of(&self, ip: IpAddr) -> impl Iterator<Item = u16> + '_ {
        let gw = self.gateways.iter().position(|g| g.get() == Some(&ip));
        self.remotes.index_of(ip).into_iter().chain(gw.map(|k| (MAX_ENDPOINTS + k) as u16))
    }

    /// Reads the kernel's routes again (when they are followed), points every endpoint at
    /// its next hop's slot, and returns the slots to resolve with their addresses.
    fn route(&self) -> Vec<(u16, IpAddr)> {
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
        // Endpoints are numbered densely from 0: the first index without one ends the list.
        for i in 0..MAX_ENDPOINTS as u16 {
            let Some(ip) = self.remotes.endpoint(i) else { break };
            let nh = r.table.next_hop(ip);
            let hop = if nh == ip { Some(i) } else { self.gateway_slot(nh) };
            self.via[usize::from(i)].store(hop.unwrap_or(NO_HOP), Ordering::Relaxed);
            if let Some(h) = hop.filter(|h| !hops.iter().any(|(x, _)| x == h)) {
                hops.push((h, nh));
            }
        }
        hops
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

    /// The slot of gateway `ip`, given one when new and there is room.
    fn gateway_slot(&self, ip: IpAddr) -> Option<u16> {
        // Only `route` (under the routing lock) adds gateways.
        for (k, g) in self.gateways.iter().enumerate() {
            if *g.get_or_init(|| ip) == ip {
                return Some((MAX_ENDPOINTS + k) as u16);
            }
        }
        tracing::warn!(port = %self.name, gateway = %ip, "more than {MAX_GATEWAYS} gateways: endpoints behind it unreachable");
        None
    }
}

/// Where the port's seconds come from (neighbour probes and confirmations, the aging of
/// learned remote MACs).
#[derive(Debug, Clone)]
pub enum TunnelClock {
    /// Seconds since the port opened.
    Monotonic(Instant),
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
    /// A tunnel port that owns `uplink` (whose MAC address is `mac` and MTU `underlay_mtu`),
    /// its endpoints' next hops found as `hops` says.
    pub fn new(
        name: &str,
        o: &TunnelOptions,
        uplink: Arc<dyn PortBackend>,
        mac: MacAddr,
        underlay_mtu: u32,
        hops: NextHops,
    ) -> Result<UplinkTunnelPort, PortError> {
        let remotes = o.remotes(name)?;
        let ipv6 = o.local.is_ipv6();
        tracing::info!(
            port = name,
            kind = o.kind.name(),
            vni = o.vni,
            local = %o.local,
            uplink = uplink.name(),
            %mac,
            underlay_mtu,
            overlay_mtu = o.kind.overlay_mtu(ipv6, underlay_mtu),
            "tunnel port open on uplink"
        );
        Ok(UplinkTunnelPort {
            shared: Arc::new(Shared {
                name: name.to_string(),
                uplink,
                codec: TunnelCodec { kind: o.kind, vni: o.vni },
                remotes,
                neighbours: Neighbours::new(MAX_ENDPOINTS + MAX_GATEWAYS),
                via: (0..MAX_ENDPOINTS as u16).map(AtomicU16::new).collect(),
                gateways: (0..MAX_GATEWAYS).map(|_| OnceLock::new()).collect(),
                routing: Mutex::new(Routing {
                    table: Routes::new(hops.routes.clone()),
                    config: hops,
                    kernel: Routes::default(),
                }),
                local: o.local,
                mac,
                port: o.dstport,
                underlay_mtu,
                max_inner: o.kind.max_inner_frame(ipv6, underlay_mtu),
                clock: TunnelClock::Monotonic(Instant::now()),
                opts: Mutex::new(o.clone()),
            }),
        })
    }

    /// The port with its seconds read from `clock` instead; `None` once a queue was opened
    /// (the queues share the clock the port had then).
    pub fn with_clock(mut self, clock: TunnelClock) -> Option<UplinkTunnelPort> {
        Arc::get_mut(&mut self.shared)?.clock = clock;
        Some(self)
    }

    /// The remote table (endpoints, flood list, remote MACs).
    pub fn remotes(&self) -> &Remotes {
        &self.shared.remotes
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
        self.shared.uplink.rx_queue_count()
    }

    fn tx_queue_count(&self) -> u16 {
        self.shared.uplink.tx_queue_count()
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        let sh = &self.shared;
        Ok(Box::new(UplinkTunnelRx {
            shared: sh.clone(),
            rx: sh.uplink.open_rx(q)?,
            tx: sh.uplink.open_tx(q)?,
            frames: Burst::new(),
            control: Burst::new(),
            probed_at: None,
            last: None,
        }))
    }

    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        let sh = &self.shared;
        Ok(Box::new(UplinkTunnelTx {
            shared: sh.clone(),
            tx: sh.uplink.open_tx(q)?,
            out: Burst::new(),
            templates: Box::new(Templates([None; TEMPLATES])),
        }))
    }

    fn link_up(&self) -> bool {
        self.shared.uplink.link_up()
    }

    fn info(&self) -> Option<String> {
        let sh = &self.shared;
        Some(format!(
            "{} vni {} on uplink {} ({}), flood {} endpoints, {} resolved, underlay_mtu {} overlay_mtu {}",
            sh.codec.kind.name(),
            sh.codec.vni,
            sh.uplink.name(),
            sh.mac,
            sh.remotes.flood().len(),
            sh.neighbours.resolved(),
            sh.underlay_mtu,
            sh.codec.kind.overlay_mtu(sh.local.is_ipv6(), sh.underlay_mtu)
        ))
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
    shared: Arc<Shared>,
    rx: Box<dyn RxQueue>,
    /// Sends ARP/ND replies and probes.
    tx: Box<dyn TxQueue>,
    frames: Burst,
    control: Burst,
    /// The second of the last probe round.
    probed_at: Option<u32>,
    /// The last tunnel source address and its endpoint index.
    last: LastSource,
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

impl UplinkTunnelRx {
    /// Once a second: follows route changes and probes every next hop that is unresolved
    /// or stale.
    fn probe(&mut self, cache: &mut PoolCache, now: u32, drops: &mut DropTally) {
        if self.probed_at == Some(now) {
            return;
        }
        self.probed_at = Some(now);
        let sh = &*self.shared;
        for (hop, ip) in sh.route() {
            if sh.neighbours.take_probe(hop, now) {
                control_frame(sh, (&mut self.control, &mut *self.tx), cache, ip, None, drops);
            }
        }
    }
}

/// The endpoint index of tunnel source `ip` (added when learning is on), `last` holding the
/// previous answer.
#[inline]
fn source_index(sh: &Shared, last: &mut LastSource, ip: IpAddr) -> Option<u16> {
    match *last {
        Some((a, i)) if a == ip => Some(i),
        _ => {
            let r = &sh.remotes;
            let i = r.index_of(ip).or_else(|| r.learning_index(ip))?;
            *last = Some((ip, i));
            Some(i)
        }
    }
}

/// The last tunnel source address and its endpoint index ([`source_index`]).
type LastSource = Option<(IpAddr, u16)>;

/// What the arrival of inner frame `inner` from tunnel source `src` (address, MAC) does: the
/// source's endpoint index found (learned when new and learning is on), its neighbour entry
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
) {
    if let Some(i) = source_index(sh, last, src_ip) {
        if *confirmed != Some((i, src_mac)) {
            if sh.via[usize::from(i)].load(Ordering::Relaxed) == i {
                sh.neighbours.confirm(i, src_mac, now);
            }
            *confirmed = Some((i, src_mac));
        }
        remotes.learn_at(MacAddr::from_bytes(&inner[6..ETH_HEADER_LEN - 2]), i, now);
    }
}

impl RxQueue for UplinkTunnelRx {
    /// As its uplink's queue: an AF_PACKET uplink wakes for free, a DPDK one cannot wake.
    fn spin_when_idle(&self) -> bool {
        self.rx.spin_when_idle()
    }

    /// As its uplink's queue.
    fn nap_while_busy(&self) -> bool {
        self.rx.nap_while_busy()
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let now = self.shared.now_s();
        self.probe(cache, now, drops);
        let want = max.min(out.remaining_capacity());
        self.rx.rx_burst(RxCtx::new(cache, drops), &mut self.frames, want);
        let UplinkTunnelRx { shared, tx, frames, control, last, .. } = self;
        let sh = &**shared;
        let (remotes, codec) = (sh.remotes.view(), sh.codec);
        let mut delivered = 0;
        // The endpoint and MAC this burst last confirmed: a burst of one sender's packets
        // confirms its neighbour entry once.
        let mut confirmed = None;
        let local4 = match sh.local {
            IpAddr::V4(l) => Some(l),
            IpAddr::V6(_) => None,
        };
        for mut b in frames.drain(..) {
            // The common packet first: outer headers and tunnel header at fixed offsets, the
            // frame narrowed to the inner frame at once.
            if let Some(p) = local4.and_then(|l| plain_ipv4_inner(b.data(), l, sh.port, &codec)) {
                if b.narrow(PLAIN_INNER_AT, p.len).is_ok() {
                    let src = (IpAddr::V4(p.src_ip), p.src_mac);
                    arrived(sh, &remotes, (&mut *last, &mut confirmed), src, b.data(), now);
                    out.push(b);
                    delivered += 1;
                    continue;
                }
            }
            match classify(b.data(), sh.local, sh.port) {
                UplinkFrame::Tunnel { payload, len, src_ip, src_mac } => {
                    // The datagram's tunnel header decided, then the frame narrowed to the
                    // inner frame in one step (classify's lengths lie within the frame).
                    let datagram = b.data().get(payload..payload.wrapping_add(len));
                    let decap = datagram.map_or(Err(DropReason::TunnelTruncated), |d| codec.decap(d));
                    let inner = decap.and_then(|off| {
                        b.narrow(payload + off, len - off).map_err(|_| DropReason::TunnelTruncated)
                    });
                    if let Err(r) = inner {
                        drops.add(r, 1);
                        cache.free(b);
                        continue;
                    }
                    arrived(sh, &remotes, (&mut *last, &mut confirmed), (src_ip, src_mac), b.data(), now);
                    out.push(b);
                    delivered += 1;
                }
                UplinkFrame::Neighbour { ip, mac, answer } => {
                    cache.free(b);
                    confirmed = None;
                    for i in sh.slots_of(ip) {
                        sh.neighbours.confirm(i, mac, now);
                    }
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
        delivered
    }

    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.rx.wake_fd()
    }

    fn arm_wakeup(&mut self) -> bool {
        self.rx.arm_wakeup()
    }

    fn disarm_wakeup(&mut self) {
        self.rx.disarm_wakeup()
    }
}

struct UplinkTunnelTx {
    shared: Arc<Shared>,
    tx: Box<dyn TxQueue>,
    out: Burst,
    templates: Box<Templates>,
}

/// How many endpoints' outer headers a TX queue keeps written ([`Templates`]).
const TEMPLATES: usize = 16;

/// The outer headers of the endpoints a TX queue sent to lately, by endpoint index modulo
/// [`TEMPLATES`], each with the next hop MAC it was written for: an endpoint's address never
/// changes (indices are never reused), the rest of the headers but the next hop's MAC is the
/// port's, so a template is good as long as that MAC is the one resolved now.
struct Templates([Option<(u16, MacAddr, OuterTemplate)>; TEMPLATES]);

impl Templates {
    /// The template for endpoint `e` at `dst_ip` through next hop `dst_mac`, written when
    /// not kept; `None` when the addresses are of two families.
    #[inline]
    fn get(&mut self, sh: &Shared, e: u16, dst_mac: MacAddr) -> Result<&OuterTemplate, DropReason> {
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
            *slot = Some((e, dst_mac, OuterTemplate::new(&repr).ok_or(DropReason::NoBuffer)?));
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

/// Sends every frame of `pkts` through template `t` (one endpoint's next hop): per frame the
/// length check, the flow hash, and the tunnel header and outer headers put in front in one
/// prepend. Returns the frames sent.
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

#[inline(always)]
fn send_through(
    sh: &Shared,
    t: &OuterTemplate,
    pkts: &mut Burst,
    (out, tx): (&mut Burst, &mut dyn TxQueue),
    cache: &mut PoolCache,
    drops: &mut DropTally,
) -> usize {
    let (header, outer) = (sh.codec.header(), t.headers_len());
    let mut sent = 0;
    for b in pkts.drain(..) {
        let Some(mut b) = fits(sh, b, cache, drops) else { continue };
        let sport = source_port(flow_hash(b.data()));
        let ok = match b.prepend(outer + header.len()) {
            Ok(h) => {
                h[outer..].copy_from_slice(&header);
                t.write(b.data_mut(), sport)
            }
            Err(_) => false,
        };
        if !ok {
            drops.add(DropReason::NoBuffer, 1);
            cache.free(b);
            continue;
        }
        out.push(b);
        if out.is_full() {
            sent += tx.tx_burst(out, cache, drops);
        }
    }
    if !out.is_empty() {
        sent += tx.tx_burst(out, cache, drops);
    }
    sent
}

impl TxQueue for UplinkTunnelTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        let UplinkTunnelTx { shared, tx, out, templates } = self;
        let sh = &**shared;
        // One flood list for the whole burst, however an update swaps it meanwhile.
        let flood = sh.remotes.flood();
        // A port whose one endpoint is its whole flood list sends every frame there, known
        // or not: no lookup (as a port with one `remote_ip`). Its next hop's MAC and its
        // template are read once a burst.
        let only = match ***flood {
            [e] if sh.remotes.endpoint_count() == 1 => Some(e),
            _ => None,
        };
        if let Some(t) = only.and_then(|e| templates.get(sh, e, sh.next_hop_mac(e)?).ok()) {
            return send_through(sh, t, pkts, (out, &mut **tx), cache, drops);
        }
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
    use switchyard_dataplane::buffer::Pool;
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

    /// Hands `frame` to the port as received on the uplink; returns the inner frames delivered.
    /// Once the port's queues are gone: frames left on the peer freed, every buffer back.
    fn all_returned(peer: &RingPeer, mut cache: PoolCache, pool: &Pool) {
        while let Some(b) = peer.collect() {
            cache.free(b);
        }
        drop(cache);
        assert_eq!(pool.in_use(), 0);
    }

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
}
