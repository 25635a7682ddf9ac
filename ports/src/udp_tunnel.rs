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
//!   queue sleeps on an epoll descriptor that holds the socket and its inbox's eventfd, and
//!   does not sleep while its inbox or the socket's batch still holds datagrams.
//! - RX hands on only the inner frame of a datagram that `switchyard_dataplane::tunnel::TunnelCodec::decap`
//!   accepted and, with learning off, that came from an endpoint the configuration names now
//!   (`Remotes`; any other source: `tunnel_unknown_source`); every other datagram is one named
//!   drop. The socket has `UDP_GRO`: a run of
//!   datagrams of one sender may arrive as one message, which is cut back into the datagrams
//!   it carried (the kernel reports their size), each copied once into a pool buffer.
//! - TX writes the tunnel header into the frame's headroom (no copy) and sends one datagram
//!   per endpoint: a known remote MAC's endpoint, else every endpoint of the flood list (the
//!   copies share the frame's bytes, each is one `sendmmsg` message and counts as one frame
//!   sent). Consecutive datagrams to one endpoint, all of one length but the last, go as one
//!   UDP GSO send (`UDP_SEGMENT`): the kernel cuts them into the same datagrams (the same
//!   bytes on the wire), but the stack below the socket, and a peer's with `UDP_GRO`, handles
//!   the run as one packet. An inner frame too big for the underlay MTU is dropped
//!   (`tunnel_mtu`), never fragmented; the socket also refuses to fragment (`IP_PMTUDISC_DO`).
//!
//! UDP source port: the kernel socket sends every datagram from `dstport`. A per-flow source
//! port (entropy for the underlay's ECMP, RFC 7348 section 5) needs the outer headers written
//! by switchyard (a raw socket or the uplink fast path) or one socket per source port; with one
//! kernel socket, batching with `sendmmsg` matters more, and the source port is fixed.
//!
//! The underlay MTU is the smallest route MTU (`IP_MTU` on a connected socket) towards the
//! configured endpoints that have a route, read when the port opens and at each update (1500
//! when none has one); an endpoint without a route is logged and left out of it, never a
//! reason to refuse the port.

use crate::netdev::errno;
use arc_swap::ArcSwap;
use arrayvec::ArrayVec;
use crossbeam_queue::ArrayQueue;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
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
    /// The socket's [`SharedSocket::orphaned`]: what is left here when the inbox goes (its
    /// port left before taking it) is counted there. Set when the port joins.
    orphaned: OnceLock<Arc<Orphans>>,
}

impl Drop for Inbox {
    /// The last holder is the leaving port, or a reader that loaded the member list before
    /// the port left: nobody pushes after this.
    fn drop(&mut self) {
        let n = self.q.len();
        match self.orphaned.get() {
            Some(o) => o.add(n as u64),
            // Never joined: nothing was handed to it.
            None => switchyard_dataplane::switch::add_portless_drops(DropReason::TunnelWrongVni, n as u64),
        }
    }
}

/// Datagrams handed to a member's inbox that its port left without taking (added when the
/// inbox goes), until the next member to read the shared socket or uplink takes them and counts
/// them as `tunnel_wrong_vni` (their VNI is nobody's now). Held by the socket or uplink and by
/// every inbox: what is still here when the last of them goes, no member being left to count
/// it, is counted as the process's portless `tunnel_wrong_vni` drops
/// ([`switchyard_dataplane::switch::add_portless_drops`]), so no handed datagram is freed
/// unseen.
#[derive(Debug, Default)]
pub(crate) struct Orphans(AtomicU64);

impl Orphans {
    pub(crate) fn add(&self, n: u64) {
        if n != 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// What waits to be counted, taken (a load only, when nothing does).
    pub(crate) fn take(&self) -> u64 {
        if self.0.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.0.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Orphans {
    fn drop(&mut self) {
        switchyard_dataplane::switch::add_portless_drops(DropReason::TunnelWrongVni, *self.0.get_mut());
    }
}

/// Adds the member `make` gives to `members` unless one of them `serves` its VNI already, by
/// read-copy-update (no lock; a concurrent leave is not undone): the list before the join,
/// `None` when the VNI was served. The kernel transport's sockets and the fast path's uplinks
/// both keep their members so.
pub(crate) fn join_vni<M: Clone>(
    members: &ArcSwap<Vec<M>>,
    serves: impl Fn(&M) -> bool,
    make: impl Fn() -> M,
) -> Option<Arc<Vec<M>>> {
    let mut served = false;
    let before = members.rcu(|cur| {
        served = cur.iter().any(&serves);
        let mut next = Vec::clone(cur);
        if !served {
            next.push(make());
        }
        next
    });
    (!served).then_some(before)
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
    /// Read once per RX batch without a lock; changed by read-copy-update (a leaving port,
    /// maybe on a worker, takes no lock).
    members: ArcSwap<Vec<Member>>,
    /// Datagrams handed to ports that left before taking them ([`Inbox`]'s drop): the next
    /// member to read the socket counts them as `tunnel_wrong_vni` (their VNI is nobody's).
    orphaned: Arc<Orphans>,
    /// What the socket's last `recvmmsg` took and is still to be handed out; held by the one
    /// member reading the socket (another finds its datagrams in its inbox meanwhile).
    rx: Mutex<RxBatch>,
}

/// Bytes of one receive slot: the largest UDP payload, as a message the kernel coalesced
/// (UDP GRO) may be.
const RX_SLOT: usize = 65536;

/// A `UDP_GRO` control message as the kernel writes it (`CMSG_SPACE(4)`): the size of the
/// datagrams a coalesced message holds.
#[repr(C)]
#[derive(Clone, Copy)]
struct GroCmsg {
    hdr: libc::cmsghdr,
    size: libc::c_int,
    _pad: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<GroCmsg>() == 24);

/// The `recvmmsg` headers of an [`RxBatch`] and what they point at (but the slots).
struct RxMsgs {
    names: [libc::sockaddr_in6; RECV_BATCH],
    iov: [libc::iovec; RECV_BATCH],
    cmsgs: [GroCmsg; RECV_BATCH],
    hdrs: [libc::mmsghdr; RECV_BATCH],
}

/// The datagrams one `recvmmsg` took off a shared socket, handed out one by one. With
/// `UDP_GRO` on the socket, a message may hold a run of datagrams of one sender (sent as one
/// UDP GSO send, or coalesced by the device): it is cut at the segment size the kernel
/// reports, the datagrams it carried on the wire. A batch is used up before the next is read.
struct RxBatch {
    /// `RECV_BATCH` slots of `RX_SLOT` bytes.
    buf: Box<[u8]>,
    msgs: Box<RxMsgs>,
    /// Per message: its bytes, the size of its datagrams (its bytes when not coalesced), the
    /// sender.
    len: [usize; RECV_BATCH],
    seg: [usize; RECV_BATCH],
    from: [Option<IpAddr>; RECV_BATCH],
    /// The message was cut short (`MSG_TRUNC`, counted as `oversize`): nothing of it is
    /// handed out.
    trunc: [bool; RECV_BATCH],
    /// Messages received, the one being handed out and the offset of its next datagram.
    got: usize,
    msg: usize,
    off: usize,
}

// SAFETY: the raw pointers in `msgs` point into this batch's own boxes, are set again before
// every `recvmmsg` and used only by it, under the batch's mutex; nothing else is shared.
unsafe impl Send for RxBatch {}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch").field("got", &self.got).field("msg", &self.msg).finish()
    }
}

impl RxBatch {
    fn new() -> RxBatch {
        RxBatch {
            buf: vec![0u8; RECV_BATCH * RX_SLOT].into_boxed_slice(),
            // SAFETY: all-zero is a valid value of these plain C structs (null pointers, zero
            // lengths).
            msgs: Box::new(unsafe { std::mem::zeroed() }),
            len: [0; RECV_BATCH],
            seg: [0; RECV_BATCH],
            from: [None; RECV_BATCH],
            trunc: [false; RECV_BATCH],
            got: 0,
            msg: 0,
            off: 0,
        }
    }

    /// The next datagram; `None` when the batch is used up.
    fn peek(&self) -> Option<&[u8]> {
        let m = self.msg;
        if m >= self.got {
            return None;
        }
        let n = self.seg[m].min(self.len[m] - self.off);
        let at = m * RX_SLOT + self.off;
        self.buf.get(at..at + n)
    }

    /// Copies the next datagram into a pool buffer, with its sender, and moves past it (also
    /// when it cannot be copied: `no_buffer`, or `oversize` past a buffer's room).
    fn take(&mut self, cache: &mut PoolCache) -> Result<(PacketBuf, Option<IpAddr>), DropReason> {
        let m = self.msg;
        let from = self.from.get(m).copied().flatten();
        let r = match self.peek() {
            None => Err(DropReason::Runt),
            Some(d) => match cache.alloc() {
                None => Err(DropReason::NoBuffer),
                Some(mut b) => match b.extend_from_slice(d) {
                    Ok(()) => Ok((b, from)),
                    Err(_) => {
                        cache.free(b);
                        Err(DropReason::Oversize)
                    }
                },
            },
        };
        if m < self.got {
            self.off += self.seg[m].min(self.len[m] - self.off);
            if self.off >= self.len[m] {
                self.msg += 1;
                self.off = 0;
                self.skip_truncated();
            }
        }
        r
    }

    /// Moves past messages cut short (already counted).
    fn skip_truncated(&mut self) {
        while self.msg < self.got && self.trunc[self.msg] {
            self.msg += 1;
        }
    }

    /// Reads the next batch off `sock` (the last one must be used up): the messages received.
    /// A message cut short (`MSG_TRUNC`) is one `oversize`.
    fn recv(&mut self, sock: &UdpSocket, port: &str, drops: &mut DropTally) -> usize {
        // The headers are kept between calls (no 4 KiB to clear for a poll that finds the
        // socket empty); every field the kernel reads is set here.
        let RxMsgs { names, iov, cmsgs, hdrs } = &mut *self.msgs;
        for (i, slot) in self.buf.chunks_exact_mut(RX_SLOT).enumerate() {
            iov[i].iov_base = slot.as_mut_ptr() as *mut libc::c_void;
            iov[i].iov_len = slot.len();
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_in6 as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = &mut cmsgs[i] as *mut GroCmsg as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of::<GroCmsg>() as _;
            h.msg_flags = 0;
        }
        // SAFETY: every header points at live memory of the lengths given (a name, one iovec
        // over a slot of `self.buf`, a control buffer), all of which outlive the call.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.msg = 0;
        self.off = 0;
        self.got = 0;
        if rc <= 0 {
            if rc < 0 && !matches!(errno(), libc::EAGAIN | libc::EINTR) {
                tracing::debug!(port, errno = errno(), "tunnel recvmmsg error");
            }
            return 0;
        }
        let got = rc as usize;
        for i in 0..got {
            let h = &hdrs[i].msg_hdr;
            let len = hdrs[i].msg_len as usize;
            let c = &cmsgs[i];
            let coalesced = h.msg_controllen as u64 >= (std::mem::size_of::<libc::cmsghdr>() + 4) as u64
                && c.hdr.cmsg_level == libc::SOL_UDP
                && c.hdr.cmsg_type == libc::UDP_GRO
                && c.size > 0;
            self.trunc[i] = h.msg_flags & libc::MSG_TRUNC != 0;
            if self.trunc[i] {
                // Nothing of it is handed out.
                drops.add(DropReason::Oversize, 1);
            }
            self.len[i] = len.min(RX_SLOT);
            self.seg[i] = if coalesced { c.size as usize } else { len.max(1) };
            self.from[i] = from_c_sockaddr(&names[i]);
        }
        self.got = got;
        self.skip_truncated();
        got
    }
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
        let _ = inbox.orphaned.set(s.orphaned.clone());
        if join_vni(&s.members, |m| m.vni == o.vni, || Member { vni: o.vni, inbox: inbox.clone() }).is_none()
        {
            return Err(PortError::Backend {
                port: name.into(),
                msg: format!(
                    "VNI {} is already served by another tunnel port on {}:{}",
                    o.vni, o.local, o.dstport
                ),
            });
        }
        Ok(s)
    }

    /// The port whose inbox is `inbox` is gone (a no-op when it left already): its VNI's
    /// datagrams are `tunnel_wrong_vni` from now on, or another port's that joined with it.
    fn leave(&self, inbox: &Arc<Inbox>) {
        let gone = |m: &Member| Arc::ptr_eq(&m.inbox, inbox);
        if !self.members.load().iter().any(gone) {
            return;
        }
        self.members.rcu(|cur| cur.iter().filter(|m| !gone(m)).cloned().collect::<Vec<_>>());
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
        // Runs of datagrams of one sender (a peer's UDP GSO send, or a device's GRO) arrive as
        // one message: one trip through the stack for the run. Best effort: without it every
        // datagram is a message of its own, as before kernel 5.0.
        if let Err(e) = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1) {
            tracing::debug!(port = name, error = %e, "UDP_GRO refused: one datagram a message");
        }
        Ok(SharedSocket {
            key: (kind, local, port),
            sock,
            members: ArcSwap::from_pointee(Vec::new()),
            orphaned: Arc::new(Orphans::default()),
            rx: Mutex::new(RxBatch::new()),
        })
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
    /// TX sends runs of datagrams as one UDP GSO send (`UDP_SEGMENT`); cleared when the
    /// kernel refuses it for good (EIO: the route's device has no checksum offload).
    gso: AtomicBool,
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
        self.sock.leave(&self.inbox);
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

/// The underlay MTU of a port with options `o` towards `endpoints`: the smallest route MTU
/// among the endpoints the kernel has a route to, [`DEFAULT_UNDERLAY_MTU`] when there is none.
/// An endpoint without a route is left out of it with a warning (its datagrams are then
/// `tunnel_send_error` until a route appears): one unroutable endpoint never takes the whole
/// port, and every other endpoint with it, down.
fn underlay_mtu_of(name: &str, o: &TunnelOptions, endpoints: &[IpAddr]) -> u32 {
    let mut underlay_mtu = None::<u32>;
    for &ip in endpoints {
        match route_mtu(o.local, ip, o.dstport) {
            Ok(m) => underlay_mtu = Some(underlay_mtu.map_or(m, |u| u.min(m))),
            Err(e) => tracing::warn!(
                port = %name,
                endpoint = %ip,
                "no route from {} to tunnel endpoint {ip} ({e}): left out of the underlay MTU; its datagrams \
                 fail until a route appears",
                o.local
            ),
        }
    }
    underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU)
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
            orphaned: OnceLock::new(),
        });
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(nix_err)?;
        epoll.add(&inbox.wake, EpollEvent::new(EpollFlags::EPOLLIN, 0)).map_err(nix_err)?;
        let underlay_mtu = underlay_mtu_of(name, o, &remotes.endpoints());
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
            gso: AtomicBool::new(true),
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

    /// Leaves the socket's member list: a port joining with this VNI now is served (the
    /// socket stays open while this port's queues use it).
    fn retire(&self) {
        self.shared.sock.leave(&self.shared.inbox);
    }

    fn update(&self, wanted: &Backend) -> Result<bool, PortError> {
        let sh = &self.shared;
        let mut opts = sh.opts.lock().unwrap_or_else(|e| e.into_inner());
        // The route MTU towards the new endpoints (an endpoint without a route is left out
        // of it, with a warning).
        if let Backend::Tunnel(t) = wanted {
            let o = TunnelOptions::from_backend(t);
            let eps: Vec<IpAddr> =
                o.flood.iter().chain(o.remote_macs.iter().map(|(_, ip)| ip)).copied().collect();
            let mtu = underlay_mtu_of(&sh.name, &o, &eps);
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
    /// The last source address taken from and its endpoint index.
    last: Option<(IpAddr, u16)>,
}

impl Drop for UdpTunnelRx {
    fn drop(&mut self) {
        self.claims.release(self.q);
    }
}

impl UdpTunnelRx {
    /// Decapsulates a datagram of this port's VNI (from this socket read or a member's) and
    /// appends the inner frame to `out`, learning its source; or counts why not (with
    /// learning off, a source that is no configured endpoint: `tunnel_unknown_source`).
    fn deliver(
        &mut self,
        mut b: PacketBuf,
        from: Option<IpAddr>,
        now: &mut Option<u32>,
        out: &mut Burst,
        cache: &mut PoolCache,
        drops: &mut DropTally,
    ) -> usize {
        if let Err(r) = self.shared.codec.decap_buf(&mut b) {
            drops.add(r, 1);
            cache.free(b);
            return 0;
        }
        let remotes = &self.shared.remotes;
        let learns = remotes.learns();
        // The source's endpoint index. Datagrams come in runs from one peer: it is looked up
        // once a run (added when learning is on and it is new).
        let idx = match (from, self.last) {
            (Some(from), Some((ip, idx))) if ip == from => Some(idx),
            (Some(from), _) => {
                let i = if learns { remotes.learning_index(from) } else { remotes.index_of(from) };
                if let Some(i) = i {
                    self.last = Some((from, i));
                }
                i
            }
            (None, _) => None,
        };
        // With learning off only the configured endpoints are taken (`Remotes`): any other
        // host reaching the UDP port could otherwise put frames into the network.
        if !learns && !idx.is_some_and(|i| remotes.is_named(i)) {
            drops.add(DropReason::TunnelUnknownSource, 1);
            cache.free(b);
            return 0;
        }
        if let (Some(idx), true) = (idx, learns) {
            // The clock is read once a call, and only when something is learned.
            let now = *now.get_or_insert_with(|| self.shared.now_s());
            remotes.learn_at(MacAddr::from_bytes(&b.data()[6..ETH_HEADER_LEN - 2]), idx, now);
        }
        out.push(b);
        1
    }
}

impl RxQueue for UdpTunnelRx {
    /// A kernel socket: readiness wakes the worker at no cost to the sender.
    fn spin_when_idle(&self) -> bool {
        false
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let mut now = None;
        let mut delivered = 0;
        let max = max.min(out.remaining_capacity());
        // Datagrams of this VNI taken (delivered or dropped), at most `max`: first what other
        // members read for this VNI.
        let mut taken = 0;
        while taken < max {
            let Some((b, from)) = self.shared.inbox.q.pop() else { break };
            taken += 1;
            delivered += self.deliver(b, from, &mut now, out, cache, drops);
        }
        if taken >= max {
            return delivered;
        }
        // One member reads the socket at a time; another finds its datagrams in its inbox.
        let sock = self.shared.sock.clone();
        let Ok(mut rxb) = sock.rx.try_lock() else { return delivered };
        let n = sock.orphaned.take();
        if n != 0 {
            drops.add(DropReason::TunnelWrongVni, n.min(u64::from(u32::MAX)) as u32);
        }
        let own = self.shared.codec.vni;
        let members = sock.members.load();
        // Members handed datagrams in this call, woken once each at the end.
        let mut woken: ArrayVec<usize, RECV_BATCH> = ArrayVec::new();
        let mut received = false;
        loop {
            let Some(d) = rxb.peek() else {
                if received || rxb.recv(&sock.sock, &self.shared.name, drops) == 0 {
                    break;
                }
                received = true;
                continue;
            };
            let vni = peek_vni(d);
            let other = match vni {
                Some(vni) if vni != own => members.iter().position(|m| m.vni == vni),
                _ => None,
            };
            if other.is_none() && taken >= max {
                // The rest stays for the next call (or the member that reads next).
                break;
            }
            let (b, from) = match rxb.take(cache) {
                Ok(b) => b,
                Err(r) => {
                    drops.add(r, 1);
                    continue;
                }
            };
            match other {
                Some(k) => {
                    if let Err((b, _)) = members[k].inbox.q.push((b, from)) {
                        drops.add(DropReason::TunnelDemuxFull, 1);
                        cache.free(b);
                    } else if !woken.contains(&k) {
                        if woken.is_full() {
                            // More members than a batch has messages: wake this one now.
                            let _ = members[k].inbox.wake.write(1);
                        } else {
                            woken.push(k);
                        }
                    }
                }
                None => {
                    taken += 1;
                    delivered += self.deliver(b, from, &mut now, out, cache, drops);
                }
            }
        }
        drop(rxb);
        for k in woken {
            // A failed write means the counter is already huge: the member is awake anyway.
            let _ = members[k].inbox.wake.write(1);
        }
        delivered
    }

    /// Frames may be waiting in the inbox, or in the socket's batch (read off the socket
    /// already, so it would not wake us), although the socket is empty: then no sleep. A batch
    /// another member holds is that member's to hand out (to our inbox, waking us).
    fn arm_wakeup(&mut self) -> bool {
        self.shared.inbox.q.is_empty() && self.shared.sock.rx.try_lock().map_or(true, |b| b.peek().is_none())
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

/// A `UDP_SEGMENT` control message (`cmsg_len` = `CMSG_LEN(2)`, the whole `CMSG_SPACE(2)`):
/// the segment size of one GSO send.
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

const GSO_CMSG_LEN: usize = std::mem::size_of::<libc::cmsghdr>() + std::mem::size_of::<u16>();
const _: () = assert!(std::mem::size_of::<GsoCmsg>() == 24 && std::mem::align_of::<GsoCmsg>() == 8);

/// Datagrams one UDP GSO send carries at most (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
const GSO_MAX_SEGS: usize = 64;
/// UDP payload bytes one GSO send carries at most: the IPv4 total length's limit (65535) less
/// the IPv4 and UDP headers (an IPv6 payload may be 20 bytes more; one limit keeps it simple).
const GSO_MAX_BYTES: usize = 65535 - 20 - 8;

/// One message of a `sendmmsg` batch: `count` datagrams from `first` on (the iovecs and names
/// of `UdpTunnelTx::send`), one UDP GSO send when `count` > 1.
#[derive(Clone, Copy, Default)]
struct Msg {
    first: u8,
    count: u8,
}

impl UdpTunnelTx {
    /// Sends `msgs` (frame index in `ready`, endpoint index) with as few system calls as the
    /// kernel allows: runs of datagrams to one endpoint, all of one length but the last (which
    /// may be shorter), go out as one UDP GSO send (`UDP_SEGMENT`: the kernel cuts the run into
    /// the same datagrams on the wire, and the stack below the socket sees one packet); the
    /// messages of a burst go in one `sendmmsg`. Returns the datagrams sent and counts the rest.
    fn send(&self, ready: &[(PacketBuf, Dest)], msgs: &[(u8, u16)], drops: &mut DropTally) -> usize {
        // SAFETY: all-zero is a valid value of these plain C structs (null pointers, zero lengths).
        let mut names: [libc::sockaddr_in6; SEND_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iov: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
        let mut lens = [0u32; SEND_BATCH];
        let mut unknown = 0;
        let mut k = 0;
        let mut dst = [0u16; SEND_BATCH];
        for &(f, e) in msgs {
            let Some(ip) = self.shared.remotes.endpoint(e) else {
                unknown += 1;
                continue;
            };
            let (sa, len) = c_sockaddr(ip, self.shared.port);
            names[k] = sa;
            lens[k] = len;
            dst[k] = e;
            let d = ready[usize::from(f)].0.data();
            iov[k].iov_base = d.as_ptr() as *mut libc::c_void;
            iov[k].iov_len = d.len();
            k += 1;
        }
        drops.add(DropReason::TunnelNoEndpoint, unknown);
        // Runs of one endpoint and one length into messages.
        let gso = self.shared.gso.load(Ordering::Relaxed);
        let mut plan: ArrayVec<Msg, SEND_BATCH> = ArrayVec::new();
        let mut i = 0;
        while i < k {
            let (seg, mut count, mut bytes) = (iov[i].iov_len, 1, iov[i].iov_len);
            while gso
                && i + count < k
                && count < GSO_MAX_SEGS
                && dst[i + count] == dst[i]
                && iov[i + count - 1].iov_len == seg
                && iov[i + count].iov_len <= seg
                && bytes + iov[i + count].iov_len <= GSO_MAX_BYTES
            {
                bytes += iov[i + count].iov_len;
                count += 1;
            }
            plan.push(Msg { first: i as u8, count: count as u8 });
            i += count;
        }
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut cmsgs: [GsoCmsg; SEND_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        for (j, m) in plan.iter().enumerate() {
            let first = usize::from(m.first);
            let h = &mut hdrs[j].msg_hdr;
            h.msg_name = &mut names[first] as *mut libc::sockaddr_in6 as *mut libc::c_void;
            h.msg_namelen = lens[first];
            h.msg_iov = &mut iov[first];
            h.msg_iovlen = usize::from(m.count);
            if m.count > 1 {
                let c = &mut cmsgs[j];
                c.hdr.cmsg_len = GSO_CMSG_LEN as _;
                c.hdr.cmsg_level = libc::SOL_UDP;
                c.hdr.cmsg_type = libc::UDP_SEGMENT;
                c.size = iov[first].iov_len as u16;
                h.msg_control = c as *mut GsoCmsg as *mut libc::c_void;
                h.msg_controllen = std::mem::size_of::<GsoCmsg>() as _;
            }
        }
        let counts: ArrayVec<u8, SEND_BATCH> = plan.iter().map(|m| m.count).collect();
        self.sendmmsg_all(&mut hdrs[..plan.len()], &counts, drops, |j, e, drops| {
            let m = plan[j];
            if m.count == 1 {
                self.refused(e, drops);
                return 0;
            }
            // The kernel refused the GSO send (a device without checksum offload: EIO; a route
            // whose MTU dropped under the segment size: EINVAL): the run goes again one
            // datagram a message, so each gets its own fate and counter. EIO will not change:
            // GSO is off for the port from now on.
            if e == libc::EIO && self.shared.gso.swap(false, Ordering::Relaxed) {
                tracing::info!(port = %self.shared.name, "UDP GSO refused by the kernel (EIO): one datagram a message from now on");
            }
            let first = usize::from(m.first);
            let range = first..first + usize::from(m.count);
            self.send_singles(&mut names[range.clone()], &lens[range.clone()], &mut iov[range], drops)
        })
    }

    /// Sends each datagram of `iov` (to `names`, of name lengths `lens`) as its own message:
    /// a run the kernel refused as one GSO send. Returns the datagrams sent and counts the rest.
    fn send_singles(
        &self,
        names: &mut [libc::sockaddr_in6],
        lens: &[u32],
        iov: &mut [libc::iovec],
        drops: &mut DropTally,
    ) -> usize {
        let n = iov.len().min(GSO_MAX_SEGS);
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut hdrs: [libc::mmsghdr; GSO_MAX_SEGS] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_in6 as *mut libc::c_void;
            h.msg_namelen = lens[i];
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        self.sendmmsg_all(&mut hdrs[..n], &[1; GSO_MAX_SEGS][..n], drops, |_, e, drops| {
            self.refused(e, drops);
            0
        })
    }

    /// Counts one datagram the kernel refused with `e`.
    fn refused(&self, e: i32, drops: &mut DropTally) {
        if e == libc::EMSGSIZE {
            drops.add(DropReason::TunnelMtu, 1);
        } else {
            tracing::debug!(port = %self.shared.name, errno = e, "tunnel sendmmsg error");
            drops.add(DropReason::TunnelSendError, 1);
        }
    }

    /// Sends the messages `hdrs` (message `j` carrying `counts[j]` datagrams) with as few
    /// `sendmmsg` calls as the kernel allows. A full socket buffer counts every datagram left
    /// as `tx_full`; a message the kernel refuses goes to `refused(j, errno, drops)`, which
    /// returns the datagrams it still sent. Returns the datagrams sent.
    fn sendmmsg_all(
        &self,
        hdrs: &mut [libc::mmsghdr],
        counts: &[u8],
        drops: &mut DropTally,
        mut refused: impl FnMut(usize, i32, &mut DropTally) -> usize,
    ) -> usize {
        let n = hdrs.len();
        let datagrams = |r: std::ops::Range<usize>| counts[r].iter().map(|&c| usize::from(c)).sum::<usize>();
        let mut sent = 0;
        let mut at = 0;
        while at < n {
            // SAFETY: the caller's headers point at live names, iovecs over frames it holds and
            // control messages, all of which outlive the call; the kernel only reads them (and
            // writes msg_len).
            let rc = unsafe {
                libc::sendmmsg(
                    self.shared.fd().as_raw_fd(),
                    hdrs[at..].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                sent += datagrams(at..at + rc as usize);
                at += rc as usize;
                continue;
            }
            match errno() {
                libc::EINTR => {}
                libc::EAGAIN | libc::ENOBUFS => {
                    drops.add(DropReason::TxFull, datagrams(at..n) as u32);
                    break;
                }
                e => {
                    sent += refused(at, e, drops);
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
