//! A VXLAN or Geneve tunnel port over the kernel's UDP stack: one UDP socket bound to
//! `local:dstport`, batched with `recvmmsg(2)` and `sendmmsg(2)`, shared by every tunnel port
//! of that encapsulation, address and port (one per VNI, as the kernel's VXLAN serves several
//! VNIs behind one `dstport`). Routing, neighbour
//! resolution, the outer IP and UDP headers and their checksums stay the kernel's (a UDP
//! checksum is always computed, over IPv4 as over IPv6, where it is required).
//!
//! Invariants:
//! - A shared socket serves each VNI at most once. Whichever member port's RX reads a batch
//!   off it keeps its own VNI's datagrams and hands the others, undecapsulated, to the inbox of
//!   the member of their VNI (a bounded queue; full: `tunnel_demux_full`), waking it; a
//!   datagram of no member's VNI is the reading port's `tunnel_wrong_vni`. A member's RX
//!   queue sleeps on an epoll descriptor that holds the socket and its inbox's eventfd.
//! - RX hands on only the inner frame of a datagram that `switchyard_dataplane::tunnel::TunnelCodec::decap`
//!   accepted, received in place into a pool buffer (no copy); every other datagram is one
//!   named drop.
//! - TX writes the tunnel header into the frame's headroom (no copy) and sends one datagram
//!   per endpoint: a known remote MAC's endpoint, else every endpoint of the flood list (the
//!   copies share the frame's bytes, each is one `sendmmsg` message and counts as one frame
//!   sent). An inner frame too big for the underlay MTU is dropped (`tunnel_mtu`), never
//!   fragmented; the socket also refuses to fragment (`IP_PMTUDISC_DO`).
//!
//! UDP source port: the kernel socket sends every datagram from `dstport`. A per-flow source
//! port (entropy for the underlay's ECMP, RFC 7348 section 5) needs the outer headers written
//! by switchyard (a raw socket or the uplink fast path) or one socket per source port; with one
//! kernel socket, batching with `sendmmsg` matters more, and the source port is fixed.
//!
//! The underlay MTU is the smallest route MTU (`IP_MTU` on a connected socket) towards the
//! configured endpoints, read when the port opens (1500 when it has none).

use crate::netdev::errno;
use arc_swap::ArcSwap;
use arrayvec::ArrayVec;
use crossbeam_queue::ArrayQueue;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use switchyard_dataplane::backend::{Backend, TunnelBackend};
use switchyard_dataplane::buffer::{PacketBuf, PoolCache};
use switchyard_dataplane::port::{
    Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue, MAX_BURST,
};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::tunnel::{
    inner_len_drop, peek_vni, Remotes, RemotesError, TunnelCodec, TunnelKind,
};
use switchyard_dataplane::wire::{MacAddr, ETH_HEADER_LEN};

/// What a tunnel port is opened with.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    pub kind: TunnelKind,
    pub vni: u32,
    pub local: IpAddr,
    /// The UDP port, both ends.
    pub dstport: u16,
    pub flood: Vec<IpAddr>,
    pub remote_macs: Vec<(MacAddr, IpAddr)>,
    pub learn: bool,
    /// Aging of learned remote MACs, seconds.
    pub aging_s: u32,
}

impl TunnelOptions {
    /// The options a checked tunnel backend describes (learned MACs age as a bridge's do).
    pub fn from_backend(t: &TunnelBackend) -> TunnelOptions {
        TunnelOptions {
            kind: t.kind,
            vni: t.vni,
            local: t.local,
            dstport: t.port(),
            flood: t.flood.clone().unwrap_or_default(),
            remote_macs: t.remote_macs.iter().map(|r| (r.mac, r.remote)).collect(),
            learn: t.learn.unwrap_or(true),
            aging_s: switchyard_dataplane::fdb::MacTable::DEFAULT_AGING_S,
        }
    }

    /// The remote table these options describe (flood list, static remote MACs, learning).
    pub fn remotes(&self, port: &str) -> Result<Remotes, PortError> {
        Remotes::new(&self.flood, &self.remote_macs, self.learn, self.aging_s)
            .map_err(|e| remotes_err(port, e))
    }

    /// Whether a port opened with `self` can take `o` in place: the same encapsulation, VNI,
    /// local address and UDP port (the socket or uplink stays; only the remote table changes).
    fn same_transport(&self, o: &TunnelOptions) -> bool {
        (self.kind, self.vni, self.local, self.dstport) == (o.kind, o.vni, o.local, o.dstport)
    }
}

fn remotes_err(port: &str, e: RemotesError) -> PortError {
    PortError::Backend { port: port.into(), msg: e.to_string() }
}

/// `PortBackend::update` of both tunnel transports: when `wanted` is a tunnel with the
/// transport of `opened`, its flood list, static remote MACs and learning are stored into
/// `remotes` in place and the new options returned; `None` when the change needs a reopen.
/// (Whether the underlay, kernel or an uplink, is the same is the caller's to check: the
/// options do not hold it.)
pub(crate) fn update_remotes(
    port: &str,
    opened: &TunnelOptions,
    remotes: &Remotes,
    wanted: &Backend,
) -> Result<Option<TunnelOptions>, PortError> {
    let Backend::Tunnel(t) = wanted else { return Ok(None) };
    let o = TunnelOptions::from_backend(t);
    if !opened.same_transport(&o) {
        return Ok(None);
    }
    remotes.update(&o.flood, &o.remote_macs, o.learn).map_err(|e| remotes_err(port, e))?;
    tracing::info!(
        port,
        flood = o.flood.len(),
        remote_macs = o.remote_macs.len(),
        learn = o.learn,
        "tunnel port remote table updated in place"
    );
    Ok(Some(o))
}

/// Datagrams one `recvmmsg` takes at most.
const RECV_BATCH: usize = 32;
/// Messages one `sendmmsg` carries at most (a burst's frames times their endpoints).
const SEND_BATCH: usize = 64;
/// Socket buffers asked for, bytes.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// The underlay MTU assumed when no endpoint is configured.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// The socket's identity: encapsulation, local address, UDP port.
type SocketKey = (TunnelKind, IpAddr, u16);

/// Datagrams of a port's VNI that another member's RX took off the shared socket.
const INBOX_DEPTH: usize = 1024;

/// What another member hands a port: the datagram (tunnel header still on) and its sender.
#[derive(Debug)]
struct Inbox {
    q: ArrayQueue<(PacketBuf, Option<IpAddr>)>,
    /// Written (once per batch) when datagrams were queued, so a sleeping RX wakes.
    wake: EventFd,
}

#[derive(Debug, Clone)]
struct Member {
    vni: u32,
    inbox: Arc<Inbox>,
}

/// A UDP socket shared by the tunnel ports of one [`SocketKey`], one port per VNI.
#[derive(Debug)]
struct SharedSocket {
    key: SocketKey,
    sock: UdpSocket,
    /// Read once per RX batch without a lock; changed under [`SOCKETS`]'s lock.
    members: ArcSwap<Vec<Member>>,
}

/// Every shared socket open in the process (dead ones pruned on the next open).
static SOCKETS: Mutex<Vec<Weak<SharedSocket>>> = Mutex::new(Vec::new());

impl SharedSocket {
    /// Joins the socket of `o`'s key (binding it when no port holds it) as the port of `o.vni`.
    fn join(name: &str, o: &TunnelOptions, inbox: Arc<Inbox>) -> Result<Arc<SharedSocket>, PortError> {
        let key = (o.kind, o.local, o.dstport);
        let mut all = SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        let s = match all.iter().filter_map(Weak::upgrade).find(|s| s.key == key) {
            Some(s) => s,
            None => {
                let s = Arc::new(SharedSocket::bind(name, key)?);
                all.push(Arc::downgrade(&s));
                s
            }
        };
        let mut members = Vec::clone(&s.members.load());
        if members.iter().any(|m| m.vni == o.vni) {
            return Err(PortError::Backend {
                port: name.into(),
                msg: format!(
                    "VNI {} is already served by another tunnel port on {}:{}",
                    o.vni, o.local, o.dstport
                ),
            });
        }
        members.push(Member { vni: o.vni, inbox });
        s.members.store(Arc::new(members));
        Ok(s)
    }

    /// The port of `vni` is gone: its datagrams are `tunnel_wrong_vni` from now on.
    fn leave(&self, vni: u32) {
        let _all = SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
        let members: Vec<Member> = self.members.load().iter().filter(|m| m.vni != vni).cloned().collect();
        self.members.store(Arc::new(members));
    }

    fn bind(name: &str, (kind, local, port): SocketKey) -> Result<SharedSocket, PortError> {
        let sock = UdpSocket::bind(SocketAddr::new(local, port)).map_err(|e| io_err(name, e))?;
        sock.set_nonblocking(true).map_err(|e| io_err(name, e))?;
        let fd = sock.as_fd();
        // As deep as an AF_PACKET port's 4 MiB ring: a worker that is not scheduled for a few
        // milliseconds must not cost a burst of datagrams. The *FORCE options (CAP_NET_ADMIN)
        // go past net.core.[rw]mem_max; without the capability the capped size is taken.
        for (force, opt) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]
        {
            if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                // Best effort: the default buffers work, only with more drops under load.
                let _ = setsockopt_int(fd, libc::SOL_SOCKET, opt, SOCKET_BUFFER);
            }
        }
        let pmtu = if local.is_ipv6() {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
        } else {
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
        };
        pmtu.map_err(|e| io_err(name, e))?;
        Ok(SharedSocket { key: (kind, local, port), sock, members: ArcSwap::from_pointee(Vec::new()) })
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    sock: Arc<SharedSocket>,
    inbox: Arc<Inbox>,
    /// The socket and the inbox's eventfd: what an idle RX queue sleeps on.
    epoll: Epoll,
    codec: TunnelCodec,
    remotes: Remotes,
    ipv6: bool,
    port: u16,
    /// The underlay MTU and the largest inner frame it carries: set when the port opens and
    /// when an update brings endpoints with another route MTU.
    underlay_mtu: AtomicU32,
    max_inner: AtomicUsize,
    start: Instant,
    /// The options the port runs with (the last update's), for the next update.
    opts: Mutex<TunnelOptions>,
}

impl Shared {
    fn now_s(&self) -> u32 {
        self.start.elapsed().as_secs() as u32
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.sock.as_fd()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.sock.leave(self.codec.vni);
    }
}

/// A VXLAN or Geneve port on a kernel UDP socket.
#[derive(Debug)]
pub struct UdpTunnelPort {
    shared: Arc<Shared>,
    claims: Arc<RxClaims>,
}

fn io_err(name: &str, e: std::io::Error) -> PortError {
    PortError::Io { port: name.to_string(), source: e }
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `v` is a live c_int and the length passed is its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The underlay MTU of a port with options `o` towards `endpoints`: the smallest route MTU,
/// [`DEFAULT_UNDERLAY_MTU`] when there is no endpoint.
fn underlay_mtu_of(name: &str, o: &TunnelOptions, endpoints: &[IpAddr]) -> Result<u32, PortError> {
    let mut underlay_mtu = None::<u32>;
    for &ip in endpoints {
        let m = route_mtu(o.local, ip, o.dstport).map_err(|e| PortError::Backend {
            port: name.into(),
            msg: format!("no route from {} to endpoint {ip}: {e}", o.local),
        })?;
        underlay_mtu = Some(underlay_mtu.map_or(m, |u| u.min(m)));
    }
    Ok(underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU))
}

/// The route MTU from `local` towards `remote` (the kernel's answer for a connected socket).
pub fn route_mtu(local: IpAddr, remote: IpAddr, port: u16) -> std::io::Result<u32> {
    let s = UdpSocket::bind(SocketAddr::new(local, 0))?;
    s.connect(SocketAddr::new(remote, port))?;
    let (level, opt) =
        if local.is_ipv6() { (libc::IPPROTO_IPV6, libc::IPV6_MTU) } else { (libc::IPPROTO_IP, libc::IP_MTU) };
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and `len` is `v`'s size; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), level, opt, &mut v as *mut libc::c_int as *mut libc::c_void, &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v.max(0) as u32)
}

impl UdpTunnelPort {
    pub fn open(name: &str, o: &TunnelOptions) -> Result<UdpTunnelPort, PortError> {
        let remotes = o.remotes(name)?;
        let ipv6 = o.local.is_ipv6();
        let nix_err = |e: nix::errno::Errno| io_err(name, e.into());
        let inbox = Arc::new(Inbox {
            q: ArrayQueue::new(INBOX_DEPTH),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(nix_err)?,
        });
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(nix_err)?;
        epoll.add(&inbox.wake, EpollEvent::new(EpollFlags::EPOLLIN, 0)).map_err(nix_err)?;
        let underlay_mtu = underlay_mtu_of(name, o, &remotes.endpoints())?;
        let sock = SharedSocket::join(name, o, inbox.clone())?;
        let shared = Shared {
            name: name.to_string(),
            sock,
            inbox,
            epoll,
            codec: TunnelCodec { kind: o.kind, vni: o.vni },
            remotes,
            ipv6,
            port: o.dstport,
            underlay_mtu: AtomicU32::new(underlay_mtu),
            max_inner: AtomicUsize::new(o.kind.max_inner_frame(ipv6, underlay_mtu)),
            start: Instant::now(),
            opts: Mutex::new(o.clone()),
        };
        // Dropping `shared` on an error leaves the socket again.
        shared.epoll.add(shared.fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1)).map_err(nix_err)?;
        tracing::info!(
            port = name,
            kind = o.kind.name(),
            vni = o.vni,
            local = %o.local,
            dstport = o.dstport,
            sharing = shared.sock.members.load().len() - 1,
            underlay_mtu,
            overlay_mtu = o.kind.overlay_mtu(ipv6, underlay_mtu),
            "tunnel port open"
        );
        Ok(UdpTunnelPort { shared: Arc::new(shared), claims: Arc::new(RxClaims::new(name, 1)) })
    }

    /// The underlay MTU the port works with.
    pub fn underlay_mtu(&self) -> u32 {
        self.shared.underlay_mtu.load(Ordering::Relaxed)
    }

    /// The MTU a VM on this overlay should be given.
    pub fn overlay_mtu(&self) -> u32 {
        self.shared.codec.kind.overlay_mtu(self.shared.ipv6, self.underlay_mtu())
    }

    /// The remote table (endpoints, flood list, remote MACs).
    pub fn remotes(&self) -> &Remotes {
        &self.shared.remotes
    }

    /// The endpoint a frame to `mac` goes to now (`None`: the flood list).
    pub fn remote_of(&self, mac: MacAddr) -> Option<IpAddr> {
        let r = &self.shared.remotes;
        r.lookup(mac, self.shared.now_s()).and_then(|i| r.endpoint(i))
    }

    /// The bound socket's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.sock.sock.local_addr()
    }
}

impl PortBackend for UdpTunnelPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.claims.claim(q)?;
        Ok(Box::new(UdpTunnelRx { shared: self.shared.clone(), claims: self.claims.clone(), q, last: None }))
    }

    fn open_tx(&self, _q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        Ok(Box::new(UdpTunnelTx { shared: self.shared.clone() }))
    }

    fn info(&self) -> Option<String> {
        let sh = &self.shared;
        Some(format!(
            "{} vni {} flood {} endpoints, underlay_mtu {} overlay_mtu {}",
            sh.codec.kind.name(),
            sh.codec.vni,
            sh.remotes.flood().len(),
            self.underlay_mtu(),
            self.overlay_mtu()
        ))
    }

    fn update(&self, wanted: &Backend) -> Result<bool, PortError> {
        let sh = &self.shared;
        let mut opts = sh.opts.lock().unwrap_or_else(|e| e.into_inner());
        // The route MTU towards the new endpoints first: an endpoint without a route refuses
        // the update before anything changed (the reopen then reports it).
        if let Backend::Tunnel(t) = wanted {
            let o = TunnelOptions::from_backend(t);
            let eps: Vec<IpAddr> =
                o.flood.iter().chain(o.remote_macs.iter().map(|(_, ip)| ip)).copied().collect();
            let mtu = underlay_mtu_of(&sh.name, &o, &eps)?;
            let Some(o) = update_remotes(&sh.name, &opts, &sh.remotes, wanted)? else { return Ok(false) };
            if sh.underlay_mtu.swap(mtu, Ordering::Relaxed) != mtu {
                sh.max_inner.store(o.kind.max_inner_frame(sh.ipv6, mtu), Ordering::Relaxed);
                tracing::info!(port = %sh.name, underlay_mtu = mtu, overlay_mtu = o.kind.overlay_mtu(sh.ipv6, mtu), "tunnel port MTU changed");
            }
            *opts = o;
            return Ok(true);
        }
        Ok(false)
    }
}

/// A socket address in the C layout, and its length.
fn c_sockaddr(ip: IpAddr, port: u16) -> (libc::sockaddr_in6, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_in6 (and sockaddr_in, which it is large enough for).
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in (16 bytes) fits in a sockaddr_in6 (28 bytes); both are plain
            // C structs, and the write is unaligned-safe.
            unsafe {
                std::ptr::write_unaligned(&mut sa as *mut libc::sockaddr_in6 as *mut libc::sockaddr_in, sin)
            };
            (sa, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        IpAddr::V6(v6) => {
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = port.to_be();
            sa.sin6_addr = libc::in6_addr { s6_addr: v6.octets() };
            (sa, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// The address the kernel wrote into a `sockaddr_in6`-sized name (IPv4 or IPv6).
fn from_c_sockaddr(sa: &libc::sockaddr_in6) -> Option<IpAddr> {
    match libc::c_int::from(sa.sin6_family) {
        libc::AF_INET6 => Some(IpAddr::from(sa.sin6_addr.s6_addr)),
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) at the start of `sa`,
            // which is larger; the read is unaligned-safe.
            let sin = unsafe {
                std::ptr::read_unaligned(sa as *const libc::sockaddr_in6 as *const libc::sockaddr_in)
            };
            Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        _ => None,
    }
}

struct UdpTunnelRx {
    shared: Arc<Shared>,
    claims: Arc<RxClaims>,
    q: u16,
    /// The last source address learned from and its endpoint index.
    last: Option<(IpAddr, u16)>,
}

impl Drop for UdpTunnelRx {
    fn drop(&mut self) {
        self.claims.release(self.q);
    }
}

impl UdpTunnelRx {
    /// Decapsulates a datagram of this port's VNI (from this socket read or a member's) and
    /// appends the inner frame to `out`, learning its source; or counts why not.
    fn deliver(
        &mut self,
        mut b: PacketBuf,
        from: Option<IpAddr>,
        now: u32,
        out: &mut Burst,
        cache: &mut PoolCache,
        drops: &mut DropTally,
    ) -> usize {
        if let Err(r) = self.shared.codec.decap_buf(&mut b) {
            drops.add(r, 1);
            cache.free(b);
            return 0;
        }
        if let Some(from) = from.filter(|_| self.shared.remotes.learns()) {
            // Datagrams come in runs from one peer: its index is looked up once a run.
            let idx = match self.last {
                Some((ip, idx)) if ip == from => Some(idx),
                _ => self.shared.remotes.learning_index(from),
            };
            if let Some(idx) = idx {
                self.last = Some((from, idx));
                self.shared.remotes.learn_at(MacAddr::from_bytes(&b.data()[6..ETH_HEADER_LEN - 2]), idx, now);
            }
        }
        out.push(b);
        1
    }
}

impl RxQueue for UdpTunnelRx {
    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let now = self.shared.now_s();
        let mut delivered = 0;
        let mut max = max.min(out.remaining_capacity());
        // First what other members read for this VNI.
        while max > 0 {
            let Some((b, from)) = self.shared.inbox.q.pop() else { break };
            max -= 1;
            delivered += self.deliver(b, from, now, out, cache, drops);
        }
        let want = max.min(RECV_BATCH);
        let mut bufs: ArrayVec<PacketBuf, RECV_BATCH> = ArrayVec::new();
        while bufs.len() < want {
            match cache.alloc() {
                Some(b) => bufs.push(b),
                None => break,
            }
        }
        if bufs.is_empty() {
            return delivered;
        }
        let n = bufs.len();
        // SAFETY: all-zero is a valid value of these plain C structs (null pointers, zero lengths).
        let mut names: [libc::sockaddr_in6; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (i, b) in bufs.iter_mut().enumerate() {
            let room = b.tail_mut();
            iov[i].iov_base = room.as_mut_ptr() as *mut libc::c_void;
            iov[i].iov_len = room.len();
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_in6 as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers of the lengths given (a name, one iovec
        // over the tail room of a buffer this function owns), all of which outlive the call.
        let rc = unsafe {
            libc::recvmmsg(
                self.shared.fd().as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            if rc < 0 && !matches!(errno(), libc::EAGAIN | libc::EINTR) {
                tracing::debug!(port = %self.shared.name, errno = errno(), "tunnel recvmmsg error");
            }
            for b in bufs {
                cache.free(b);
            }
            return delivered;
        }
        let got = rc as usize;
        let own = self.shared.codec.vni;
        let members = self.shared.sock.members.load();
        // Members handed datagrams in this batch, woken once each at the end.
        let mut woken: ArrayVec<usize, RECV_BATCH> = ArrayVec::new();
        for (i, mut b) in bufs.into_iter().enumerate() {
            if i >= got {
                cache.free(b);
                continue;
            }
            let h = &hdrs[i];
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || b.set_len(h.msg_len as usize).is_err() {
                drops.add(DropReason::Oversize, 1);
                cache.free(b);
                continue;
            }
            let from = from_c_sockaddr(&names[i]);
            // Another member's VNI goes to its inbox; this port's, a short datagram and an
            // unknown VNI are decapsulated (and refused) here.
            let other = match peek_vni(b.data()) {
                Some(vni) if vni != own => members.iter().position(|m| m.vni == vni),
                _ => None,
            };
            match other {
                Some(k) => {
                    if let Err((b, _)) = members[k].inbox.q.push((b, from)) {
                        drops.add(DropReason::TunnelDemuxFull, 1);
                        cache.free(b);
                    } else if !woken.contains(&k) {
                        woken.push(k);
                    }
                }
                None => delivered += self.deliver(b, from, now, out, cache, drops),
            }
        }
        for k in woken {
            // A failed write means the counter is already huge: the member is awake anyway.
            let _ = members[k].inbox.wake.write(1);
        }
        delivered
    }

    /// Frames may be waiting in the inbox although the socket is empty: then no sleep.
    fn arm_wakeup(&mut self) -> bool {
        self.shared.inbox.q.is_empty()
    }

    fn disarm_wakeup(&mut self) {
        // Non-blocking: EAGAIN when nothing was written.
        let _ = self.shared.inbox.wake.read();
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.shared.epoll.0.as_fd())
    }
}

/// Where one encapsulated frame goes.
#[derive(Clone, Copy)]
enum Dest {
    One(u16),
    Flood,
}

struct UdpTunnelTx {
    shared: Arc<Shared>,
}

impl UdpTunnelTx {
    /// Sends `msgs` (frame index in `ready`, endpoint index) with as few `sendmmsg` calls as
    /// the kernel allows; returns the datagrams sent and counts the rest.
    fn send(&self, ready: &[(PacketBuf, Dest)], msgs: &[(u8, u16)], drops: &mut DropTally) -> usize {
        let n = msgs.len();
        // SAFETY: all-zero is a valid value of these plain C structs (null pointers, zero lengths).
        let mut names: [libc::sockaddr_in6; SEND_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        let mut unknown = 0;
        let mut k = 0;
        for &(f, e) in msgs {
            let Some(ip) = self.shared.remotes.endpoint(e) else {
                unknown += 1;
                continue;
            };
            let (sa, len) = c_sockaddr(ip, self.shared.port);
            names[k] = sa;
            let d = ready[usize::from(f)].0.data();
            iov[k].iov_base = d.as_ptr() as *mut libc::c_void;
            iov[k].iov_len = d.len();
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = &mut names[k] as *mut libc::sockaddr_in6 as *mut libc::c_void;
            h.msg_namelen = len;
            h.msg_iov = &mut iov[k];
            h.msg_iovlen = 1;
            k += 1;
        }
        drops.add(DropReason::TunnelNoEndpoint, unknown);
        let n = n - unknown as usize;
        let mut sent = 0;
        let mut at = 0;
        while at < n {
            // SAFETY: headers at..n point at live names and iovecs over frames in `ready`,
            // which outlive the call; the kernel only reads them (and writes msg_len).
            let rc = unsafe {
                libc::sendmmsg(
                    self.shared.fd().as_raw_fd(),
                    hdrs[at..].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                sent += rc as usize;
                at += rc as usize;
                continue;
            }
            match errno() {
                libc::EINTR => {}
                libc::EAGAIN | libc::ENOBUFS => {
                    drops.add(DropReason::TxFull, (n - at) as u32);
                    break;
                }
                libc::EMSGSIZE => {
                    drops.add(DropReason::TunnelMtu, 1);
                    at += 1;
                }
                e => {
                    tracing::debug!(port = %self.shared.name, errno = e, "tunnel sendmmsg error");
                    drops.add(DropReason::TunnelSendError, 1);
                    at += 1;
                }
            }
        }
        sent
    }
}

impl TxQueue for UdpTunnelTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        let sh = &*self.shared;
        let now = sh.now_s();
        let max_inner = sh.max_inner.load(Ordering::Relaxed);
        // One flood list for the whole burst, however an update swaps it meanwhile.
        let flood = sh.remotes.flood();
        let mut ready: ArrayVec<(PacketBuf, Dest), MAX_BURST> = ArrayVec::new();
        for mut b in pkts.drain(..) {
            if let Some(r) = inner_len_drop(b.len(), max_inner) {
                drops.add(r, 1);
                cache.free(b);
                continue;
            }
            let dest = match sh.remotes.lookup(MacAddr::from_bytes(&b.data()[..6]), now) {
                Some(e) => Dest::One(e),
                None if flood.is_empty() => {
                    drops.add(DropReason::TunnelNoEndpoint, 1);
                    cache.free(b);
                    continue;
                }
                None => Dest::Flood,
            };
            if sh.codec.encap_buf(&mut b).is_err() {
                drops.add(DropReason::NoBuffer, 1);
                cache.free(b);
                continue;
            }
            ready.push((b, dest));
        }
        let mut msgs: ArrayVec<(u8, u16), SEND_BATCH> = ArrayVec::new();
        let mut sent = 0;
        for (f, (_, dest)) in ready.iter().enumerate() {
            let one;
            let eps: &[u16] = match dest {
                Dest::One(e) => {
                    one = [*e];
                    &one
                }
                Dest::Flood => &flood,
            };
            for &e in eps {
                if msgs.is_full() {
                    sent += self.send(&ready, &msgs, drops);
                    msgs.clear();
                }
                msgs.push((f as u8, e));
            }
        }
        if !msgs.is_empty() {
            sent += self.send(&ready, &msgs, drops);
        }
        for (b, _) in ready {
            cache.free(b);
        }
        sent
    }
}
