//! AF_XDP ports: a kernel interface's RX queues redirected by an XDP program into AF_XDP
//! sockets, frames moved through the socket rings with no system call on RX and one on TX.
//!
//! Invariants:
//! - Every AF_XDP socket of the process shares one UMEM ([`umem`]; the first socket registers
//!   it, a later one names the most recent socket still bound in `XDP_SHARED_UMEM`), whose
//!   slots are the slots of a
//!   [`Pool::external`](switchyard_dataplane::buffer::Pool::external): a received frame
//!   is adopted in place as a `PacketBuf`, and a buffer of that pool is sent by handing its
//!   slot to the TX ring, so frames move between AF_XDP ports without a copy. A buffer of any
//!   other pool is copied into a free UMEM slot on TX.
//! - Each RX queue `q` has one socket with all four rings of its own (its RX and fill rings
//!   owned by the worker holding the queue, its TX and completion rings by the TX handles of
//!   `q`); the port's XDP program ([`bpf`]) redirects queue `q` to it and is detached when
//!   the port is dropped, before the sockets close.
//! - Each queue's fill ring is topped up to its fill target after every burst; every slot the
//!   kernel hands back (RX, completion) returns to the pool or becomes a buffer, never both. A
//!   slot lent to the kernel carries the tag of the socket (its ring group: fill, completion
//!   and TX rings) it was lent to, and only that socket's RX or completion ring gives it back:
//!   a frame received on socket B and sent on socket A is A's until A's completion ring
//!   returns it.
//! - A closed socket gives its slots back (port dropped or failed to open, interface
//!   deleted): the frames left in its RX ring at once, and every slot still lent to its ring
//!   group once the last of its RX and TX parts is gone (the part dropped last, on a worker
//!   or the control thread, closes the socket first; nobody else uses its rings then), after
//!   the completions of the frames the kernel took from its TX ring (at most 50 ms). Kept out
//!   until the last AF_XDP port of the process closes: a zero-copy socket's group (the driver
//!   lets go of its fill buffers only in the kernel's deferred pool release, which user space
//!   cannot see) and a group whose TX frames did not complete in time, each at most
//!   `3 * RING_DEPTH` slots (fill ring, TX ring, completion ring; `umem::Holder`).
//! - A frame's TCP or UDP checksum left partial by a veth peer with checksum offload on (the
//!   XDP path carries no virtio-net header to say so) is finished on RX
//!   ([`finish_partial_l4_checksum`]); on a tunnel uplink ([`AfXdpPort::open_uplink`]) also
//!   the inner one of a VXLAN or Geneve packet that a kernel tunnel device left partial
//!   ([`finish_partial_tunnel_checksum`]). TSO needs nothing: the kernel turns a veth peer's
//!   segmentation offload off while an XDP program is attached, so its frames arrive
//!   MTU-sized.
//! - A fill ring keeps the slots lent to it while its queue is idle: the kernel takes them
//!   only for frames, and user space cannot take one back (the kernel caches the ring's
//!   entries past its published consumer index). So a queue's fill target starts at a
//!   quarter of its share ([`initial_fill_target`]: 256 while few queues are open, down to
//!   [`FILL_FLOOR`], one veth NAPI poll, 64 frames) and rises to the whole share once the
//!   queue is busy: when a burst finds that more than a quarter of the target was taken since
//!   the last top-up, when the queue received frames in `STATS_EVERY` (256) bursts within
//!   `BUSY_WINDOW` (1 s), or when the kernel counted frames that found no fill buffer
//!   (`rx_fill_ring_empty_descs`, also counted as `afxdp_rx_dropped`). The share
//!   ([`fill_share`]) is what the UMEM less [`IN_FLIGHT_RESERVE`] gives each of the open
//!   queues and one more (so that a port opened while every queue holds its share finds its
//!   floor free), at most [`RING_DEPTH`]; a target grows only from free slots beyond the
//!   reserve ([`grown_fill_target`]). When more queues open, the share falls and a busy
//!   queue's target with it (read every `STATS_EVERY` bursts and before a sleep), its fill
//!   ring draining to it as frames come. So a few busy ports keep 1,024 each, as before, and
//!   idle ones 64 to 256: 169 queues opened one after the other and left idle fit the 16,384
//!   slots (252 at the floor). A queue that was busy and went idle keeps what it had (at most
//!   the share of its time). Measured (tests/afxdp.rs' two TCP transfer tests, debug build,
//!   2026-12-07): starting at the floor and doubling when half the target was taken, TCP's
//!   first bursts found the fill ring empty (4-18 frames dropped, in every run); starting at
//!   a quarter share and doubling, 14 frames in one run of four; as built, none in 16 runs.
//! - A port opens only when the UMEM's free slots hold its queues' floors and
//!   [`IN_FLIGHT_RESERVE`] more ([`slots_needed`]; else it is refused with the counts): with
//!   every slot in a fill ring, frames between AF_XDP ports find none. Why not a UMEM a port
//!   (as Open vSwitch's netdev-afxdp has): frames between ports would be copied, and each
//!   port would pin a UMEM of its own; why not a UMEM sized from configuration: whole fill
//!   rings for 128 queues would pin 272 MiB (128 x 1,024 slots of `SLOT_SIZE`), and a bigger
//!   UMEM makes every socket's kernel buffer pool bigger (it keeps a descriptor for every
//!   chunk of the UMEM: docs/cni.md has the memory an AF_XDP port costs).
//! - Frames the kernel drops on the way to a socket (larger than a chunk, no fill buffer, RX
//!   ring full) are read from `XDP_STATISTICS` and counted as `afxdp_rx_dropped`.
//!
//! Zero-copy binding where the driver has it (the kernel's default when no mode is forced),
//! copy mode otherwise (veth: native XDP, copy mode).
//!
//! Why raw system calls and not libxdp/libbpf (Debian's libxdp-dev, libbpf-dev) or a Rust
//! crate: the program is six instructions, built in Rust ([`bpf`]), so no clang and no object
//! file; the socket setup is a handful of `setsockopt`s and four `mmap`s (`sys`); the rings'
//! protocol is a few lines; and libxdp's own UMEM handling would have to be bypassed anyway to
//! make the UMEM a switchyard buffer pool. No C library to build or ship, nothing that hides a
//! failure behind a log line instead of an error.

pub mod bpf;
mod sys;
pub mod umem;

use crate::netdev::{is_link_error, Gone};
use bpf::XdpProgram;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use switchyard_dataplane::buffer::{PoolCache, HEADROOM, SLOT_SIZE};
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, PortError, RxCtx, RxQueue, TxQueue};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::offload::{finish_partial_l4_checksum, finish_partial_tunnel_checksum};
use umem::Umem;

/// Entries in each of a socket's four rings: the most a fill target reaches.
pub const RING_DEPTH: u32 = 1024;
/// The least a queue's fill ring keeps, and where it starts: the frames one veth NAPI poll
/// delivers (its budget, 64) find fill buffers even on an idle queue.
pub const FILL_FLOOR: u32 = 64;
/// UMEM slots the fill rings leave free for frames in flight between ports (RX adopted, in
/// a TX ring, in a worker's cache): a quarter ring.
pub const IN_FLIGHT_RESERVE: usize = RING_DEPTH as usize / 4;

/// The fill target a queue may grow to while `open` queues (this one among them) share the
/// UMEM: the UMEM less the in-flight reserve split among them and one more (so that a port
/// opened while every queue is busy finds its floor free), between [`FILL_FLOOR`] and
/// [`RING_DEPTH`].
pub fn fill_share(open: usize) -> u32 {
    let per = (umem::UMEM_SLOTS - IN_FLIGHT_RESERVE) / (open.max(1) + 1);
    u32::try_from(per).unwrap_or(u32::MAX).clamp(FILL_FLOOR, RING_DEPTH)
}

/// A new queue's fill target, given its `share` and the free slots beyond the reserve
/// (`spare`): a quarter of its share (256 while fewer than 15 queues are open), so that the
/// first bursts of a flow (TCP's slow start) find fill buffers before the target grows, but
/// not more than is spare, and never below [`FILL_FLOOR`] (a quarter share holds till 62 queues
/// are open; a queue idle from its open keeps this).
pub fn initial_fill_target(share: u32, spare: usize) -> u32 {
    (share / 4).min(u32::try_from(spare).unwrap_or(u32::MAX)).max(FILL_FLOOR)
}

/// A starved queue's next fill target (more than a quarter of `target` was taken from its fill
/// ring since the last top-up, or the kernel found it empty): its whole `share`, as far as
/// `spare` (free slots beyond the reserve) goes; never lower than `target`.
pub fn grown_fill_target(target: u32, share: u32, spare: usize) -> u32 {
    target + share.saturating_sub(target).min(u32::try_from(spare).unwrap_or(u32::MAX))
}

/// UMEM slots that must be free for a port of `queues` queues to open: each queue's fill
/// floor and the in-flight reserve.
pub fn slots_needed(queues: u16) -> usize {
    usize::from(queues.max(1)) * FILL_FLOOR as usize + IN_FLIGHT_RESERVE
}
/// An RX queue reads the kernel's drop counts once in this many bursts that received frames
/// (and before a sleep): a busy-polling worker's empty polls make no system call.
const STATS_EVERY: u32 = 256;
/// A queue that received frames in [`STATS_EVERY`] bursts within this long is busy: its fill
/// target rises to its share (module doc), before a stall of its worker can empty it.
const BUSY_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Most `sendto` kicks per TX burst (copy mode sends a batch of 32 per kick).
const MAX_KICKS: usize = 8;

struct RxPart {
    sock: Arc<OwnedFd>,
    rx: sys::Ring<sys::XdpDesc>,
    fill: sys::Ring<u64>,
    /// The kernel's drop count last read.
    dropped: u64,
    /// Drops read before a sleep, counted in the next burst.
    pending: u64,
    bursts: u32,
    /// The kernel's count of frames that found the fill ring empty, last read.
    fill_empty: u64,
    /// Entries the fill ring is topped up to (module doc: [`FILL_FLOOR`] to `share`).
    target: u32,
    /// What `target` may grow to: [`fill_share`] as last read.
    share: u32,
    /// When the last [`STATS_EVERY`] bursts with frames were counted full.
    window: Option<std::time::Instant>,
    /// Last: dropped after the rings and the descriptor (see `umem::Holder`).
    holder: Arc<umem::Holder>,
}

/// Frames the kernel received and nobody read go back to the free queue with the socket's
/// RX ring (at once, and even where the group is kept out: the kernel gave them back).
impl Drop for RxPart {
    fn drop(&mut self) {
        use switchyard_dataplane::buffer::ExternalSlots;
        let n = self.rx.available();
        for i in 0..n {
            let idx = slot_of(self.rx.read(i).addr).0;
            if self.holder.slots.returned(idx, self.holder.tag) {
                self.holder.slots.free(idx);
            }
        }
        self.rx.release(n);
    }
}

struct TxPart {
    sock: Arc<OwnedFd>,
    tx: sys::Ring<sys::XdpDesc>,
    comp: sys::Ring<u64>,
    /// Frames written to the TX ring whose completion has not been read.
    in_flight: u32,
    /// Last: dropped after the rings and the descriptor (see `umem::Holder`).
    holder: Arc<umem::Holder>,
}

/// How long a closing socket waits for the completions of frames the kernel took from its
/// TX ring before it gives up and quarantines its group's slots.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_millis(50);

impl TxPart {
    /// Reads the completion ring: every slot a frame was sent from goes back to the free
    /// queue (only a slot lent to this group: each index at most once in the free queue).
    #[inline]
    fn complete(&mut self) {
        use switchyard_dataplane::buffer::ExternalSlots;
        let (slots, tag) = (&self.holder.slots, self.holder.tag);
        let c = self.comp.available();
        for i in 0..c {
            let idx = slot_of(self.comp.read(i)).0;
            if slots.returned(idx, tag) {
                slots.free(idx);
            }
        }
        self.comp.release(c);
        self.in_flight = self.in_flight.saturating_sub(c);
    }
}

/// A socket whose group's slots come back at its close first waits (at most [`CLOSE_DRAIN`])
/// for the completions of the frames the kernel took from its TX ring: until then the device
/// may still read them. Frames still in the TX ring are not waited for: after the close
/// nothing takes them.
impl Drop for TxPart {
    fn drop(&mut self) {
        if !self.holder.gives_back() {
            return;
        }
        let t0 = std::time::Instant::now();
        loop {
            self.complete();
            if self.in_flight.saturating_sub(self.tx.outstanding()) == 0 {
                return;
            }
            if t0.elapsed() > CLOSE_DRAIN {
                tracing::debug!(
                    in_flight = self.in_flight,
                    "AF_XDP socket closed with TX frames not completed"
                );
                self.holder.quarantine();
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

struct Shared {
    /// First: the program is detached before the sockets close, so no frame is redirected
    /// into a socket being closed.
    _prog: XdpProgram,
    name: String,
    iface: String,
    ifindex: u32,
    /// One slot per RX queue; empty while a worker holds it.
    rx: Vec<Mutex<Option<RxPart>>>,
    tx: Vec<Arc<Mutex<TxPart>>>,
    /// After the sockets (fields drop in order): the last port closes the UMEM after its
    /// sockets are closed.
    umem: Arc<Umem>,
    /// For interface ioctls (link state).
    ctl: OwnedFd,
    /// The interface is gone (deleted): permanent.
    gone: Gone,
    zero_copy: bool,
    /// RX finishes partial inner checksums of tunnel packets too (a tunnel uplink).
    tunnel_checksums: bool,
}

/// An AF_XDP port on the RX queues `0..queues` of one kernel interface.
#[derive(Clone)]
pub struct AfXdpPort {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("name", &self.shared.name)
            .field("iface", &self.shared.iface)
            .field("ifindex", &self.shared.ifindex)
            .field("zero_copy", &self.shared.zero_copy)
            .finish()
    }
}

fn backend(port: &str, msg: impl std::fmt::Display) -> PortError {
    PortError::Backend { port: port.to_string(), msg: msg.to_string() }
}

/// Tops the fill ring of group `tag`, which holds `left` entries the kernel has not taken, up
/// to `target` entries with free UMEM slots.
fn refill(fill: &mut sys::Ring<u64>, slots: &umem::Slots, tag: u32, target: u32, left: u32) {
    use switchyard_dataplane::buffer::ExternalSlots;
    // `left` was read from the kernel's consumer index just before: not read again (a cache
    // line the kernel writes from another core). Every ring is RING_DEPTH entries.
    let room = target.min(RING_DEPTH).saturating_sub(left);
    let mut k = 0;
    while k < room {
        let Some(idx) = slots.alloc() else { break };
        slots.lend(idx, tag);
        fill.write(k, idx as u64 * SLOT_SIZE as u64);
        k += 1;
    }
    fill.submit(k);
}

/// The slot a descriptor address (RX, completion) lies in, and the frame's offset in it.
#[inline(always)]
fn slot_of(addr: u64) -> (u32, u64) {
    let off = sys::desc_offset(addr);
    ((off / SLOT_SIZE as u64) as u32, off % SLOT_SIZE as u64)
}

impl AfXdpPort {
    /// Opens port `name` on RX queues `0..queues` of interface `iface`: binds a socket to each
    /// queue (sharing the process's UMEM), fills the fill rings, and attaches the redirect
    /// program. Fails when the interface is missing, lacks the queues, or AF_XDP or BPF are
    /// not allowed (CAP_NET_ADMIN, CAP_BPF or root).
    pub fn open(name: &str, iface: &str, queues: u16) -> Result<AfXdpPort, PortError> {
        AfXdpPort::open_with(name, iface, queues, false)
    }

    /// [`AfXdpPort::open`] for a tunnel uplink: RX also finishes the inner checksum of a
    /// VXLAN or Geneve packet that a veth peer's kernel tunnel device left partial
    /// ([`finish_partial_tunnel_checksum`]; a second header parse for each tunnel packet,
    /// which other ports do not pay).
    pub fn open_uplink(name: &str, iface: &str, queues: u16) -> Result<AfXdpPort, PortError> {
        AfXdpPort::open_with(name, iface, queues, true)
    }

    fn open_with(
        name: &str,
        iface: &str,
        queues: u16,
        tunnel_checksums: bool,
    ) -> Result<AfXdpPort, PortError> {
        let queues = queues.max(1);
        let cname =
            CString::new(iface).map_err(|_| backend(name, format!("bad interface name {iface:?}")))?;
        // SAFETY: `cname` is a NUL-terminated string live for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(backend(name, format!("no interface {iface:?}")));
        }
        // Every queue's fill ring keeps at least FILL_FLOOR slots of the process's one UMEM
        // whether or not frames come, and frames between ports need free slots beside them
        // (measured: with every slot in a fill ring, frames between AF_XDP ports found none):
        // a port the UMEM cannot give that is refused, rather than opened to carry nothing.
        let need = slots_needed(queues);
        let free = umem::free_slots().unwrap_or(umem::UMEM_SLOTS);
        if free < need {
            return Err(backend(
                name,
                format!(
                    "{queues} queue(s) need {need} free slots of the AF_XDP buffer area (UMEM), \
                     {free} of {} are free: each queue's fill ring keeps at least {FILL_FLOOR} \
                     (more while busy) and {IN_FLIGHT_RESERVE} stay free for frames in flight",
                    umem::UMEM_SLOTS
                ),
            ));
        }
        // The UMEM first: on a failed open it goes after the sockets (locals drop in reverse).
        let mut umem = None;
        let mut rx = Vec::new();
        let mut tx = Vec::new();
        let mut fds = Vec::new();
        for q in 0..queues {
            let b = umem::bind_queue(ifindex, u32::from(q), RING_DEPTH)
                .map_err(|e| backend(name, format!("AF_XDP socket on {iface} queue {q}: {e}")))?;
            let mut fill = b.fill;
            let share = fill_share(b.umem.slots.open_queues());
            let spare = b.umem.slots.free_now().saturating_sub(IN_FLIGHT_RESERVE);
            let start = initial_fill_target(share, spare);
            refill(&mut fill, &b.umem.slots, b.holder.tag, start, 0);
            fds.push(b.sock.clone());
            rx.push(Mutex::new(Some(RxPart {
                sock: b.sock.clone(),
                rx: b.rx,
                fill,
                dropped: 0,
                pending: 0,
                bursts: 0,
                fill_empty: 0,
                target: start,
                share,
                window: None,
                holder: b.holder.clone(),
            })));
            tx.push(Arc::new(Mutex::new(TxPart {
                sock: b.sock,
                tx: b.tx,
                comp: b.comp,
                in_flight: 0,
                holder: b.holder,
            })));
            umem = Some(b.umem);
        }
        let umem = umem.ok_or_else(|| backend(name, "no queue"))?;
        let mut prog = XdpProgram::load(u32::from(queues)).map_err(|e| backend(name, e))?;
        for (q, s) in fds.iter().enumerate() {
            prog.set(q as u32, s.as_raw_fd()).map_err(|e| backend(name, e))?;
        }
        prog.attach(ifindex).map_err(|e| backend(name, format!("{iface}: {e}")))?;
        let zero_copy = sys::zero_copy(fds[0].as_raw_fd());
        // SAFETY: plain socket(2) call; no pointers.
        let ctl = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if ctl < 0 {
            return Err(PortError::Io { port: name.into(), source: std::io::Error::last_os_error() });
        }
        // SAFETY: ctl was just returned by socket(2) and is owned by nobody else.
        let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
        tracing::info!(port = name, iface, queues, zero_copy, native_xdp = prog.native, "AF_XDP port open");
        Ok(AfXdpPort {
            shared: Arc::new(Shared {
                _prog: prog,
                name: name.to_string(),
                iface: iface.to_string(),
                ifindex,
                umem,
                rx,
                tx,
                ctl,
                gone: Gone::default(),
                zero_copy,
                tunnel_checksums,
            }),
        })
    }

    /// Whether the sockets run in zero-copy mode (the driver has it), not copy mode.
    pub fn zero_copy(&self) -> bool {
        self.shared.zero_copy
    }
}

impl PortBackend for AfXdpPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn rx_queue_count(&self) -> u16 {
        self.shared.rx.len() as u16
    }

    fn tx_queue_count(&self) -> u16 {
        self.shared.tx.len() as u16
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        let count = self.rx_queue_count();
        let slot = self.shared.rx.get(usize::from(q)).ok_or_else(|| PortError::NoSuchQueue {
            port: self.shared.name.clone(),
            queue: q,
            count,
        })?;
        let part = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PortError::QueueTaken { port: self.shared.name.clone(), queue: q })?;
        Ok(Box::new(AfXdpRx { shared: self.shared.clone(), q, part: Some(part) }))
    }

    /// TX handle `q` sends through the socket of queue `q` modulo the queue count (handles
    /// sharing a socket take turns on it).
    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        let part = self.shared.tx[usize::from(q) % self.shared.tx.len()].clone();
        Ok(Box::new(AfXdpTx { shared: self.shared.clone(), part }))
    }

    fn link_up(&self) -> bool {
        let s = &self.shared;
        s.gone.link_state(s.ctl.as_raw_fd(), s.ifindex as i32, &s.name, &s.iface).is_some_and(|(up, _)| up)
    }
}

struct AfXdpRx {
    shared: Arc<Shared>,
    q: u16,
    part: Option<RxPart>,
}

impl Drop for AfXdpRx {
    fn drop(&mut self) {
        if let Some(slot) = self.shared.rx.get(usize::from(self.q)) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = self.part.take();
        }
    }
}

impl RxPart {
    /// The queue is starved: its fill target grows (module doc), from free slots beyond the
    /// in-flight reserve.
    #[cold]
    fn grow(&mut self) {
        let spare = self.holder.slots.free_now().saturating_sub(IN_FLIGHT_RESERVE);
        self.target = grown_fill_target(self.target, self.share, spare);
    }

    /// Called every [`STATS_EVERY`] bursts with frames: where the last as many took less than
    /// [`BUSY_WINDOW`], the queue is busy and its target grows (a queue that keeps up with a
    /// steady flow never finds a quarter of its target taken, but a stall of its worker would
    /// empty it: measured, a 256-slot start lost about 1,000 frames a run at 200,000 frames/s).
    #[cold]
    fn note_busy(&mut self) {
        let now = std::time::Instant::now();
        if self.window.is_some_and(|t| now.duration_since(t) < BUSY_WINDOW) {
            self.grow();
        }
        self.window = Some(now);
    }

    /// Adds what the kernel dropped since the last read to `pending`; reads the queue's fill
    /// share again (the target falls with it) and grows the target where the kernel found the
    /// fill ring empty since the last read.
    #[cold]
    fn read_kernel_drops(&mut self) {
        let slots = &self.holder.slots;
        self.share = fill_share(slots.open_queues());
        self.target = self.target.min(self.share);
        if let Ok(s) = sys::statistics(self.sock.as_raw_fd()) {
            if s.rx_fill_ring_empty_descs != self.fill_empty {
                self.fill_empty = s.rx_fill_ring_empty_descs;
                self.grow();
            }
            let now = s.rx_dropped + s.rx_ring_full;
            if now != self.dropped {
                tracing::debug!(
                    rx_dropped = s.rx_dropped,
                    rx_ring_full = s.rx_ring_full,
                    fill_empty = s.rx_fill_ring_empty_descs,
                    invalid = s.rx_invalid_descs,
                    "AF_XDP kernel drops"
                );
            }
            self.pending += now.saturating_sub(self.dropped);
            self.dropped = now;
        }
    }
}

impl RxQueue for AfXdpRx {
    /// A kernel socket: readiness wakes the worker at no cost to the sender.
    fn spin_when_idle(&self) -> bool {
        false
    }

    /// Every frame that finds the worker asleep on the socket costs the sender's softirq a
    /// wake-up (`sock_def_readable` from the XDP flush, an IPI to the worker's core): under
    /// load the worker naps on a timer instead and takes the frames in bursts
    /// (benches/bridge-compare.sh, docs/benchmarks.md).
    fn nap_while_busy(&self) -> bool {
        true
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let drops = rx.drops;
        let Some(part) = self.part.as_mut() else { return 0 };
        if part.pending != 0 {
            let n = std::mem::take(&mut part.pending);
            drops.add(DropReason::AfxdpRxDropped, u32::try_from(n).unwrap_or(u32::MAX));
        }
        let room = max.min(out.capacity() - out.len()) as u32;
        let n = part.rx.available().min(room);
        if n == 0 {
            // A zero-copy driver out of fill buffers waits for a system call (need-wakeup);
            // copy mode never sets the flag.
            if part.fill.needs_wakeup() {
                sys::wake_rx(part.sock.as_raw_fd());
            }
            return 0;
        }
        part.bursts = part.bursts.wrapping_add(1);
        if part.bursts % STATS_EVERY == 0 {
            part.read_kernel_drops();
            part.note_busy();
        }
        let umem = &self.shared.umem;
        let Some(adopter) = umem.pool.adopter() else { return 0 };
        let tunnels = self.shared.tunnel_checksums;
        let tag = part.holder.tag;
        let mut got = 0;
        for i in 0..n {
            let d = part.rx.read(i);
            let (idx, head) = slot_of(d.addr);
            if !umem.slots.returned(idx, tag) {
                // Not a slot this port lent the kernel: not a frame it should give (adopting
                // it could hand out a buffer in use).
                drops.add(DropReason::Oversize, 1);
                continue;
            }
            let len = u16::try_from(d.len).unwrap_or(u16::MAX);
            // SAFETY: the kernel hands the slot back through the RX ring: it came from this
            // socket's fill ring, so nobody else holds it now.
            match unsafe { adopter.adopt(idx, head as u16, len) } {
                Some(mut b) => {
                    // No virtio-net header says which checksums a veth peer left partial.
                    if tunnels {
                        finish_partial_tunnel_checksum(b.data_mut());
                    } else {
                        finish_partial_l4_checksum(b.data_mut());
                    }
                    out.push(b);
                    got += 1;
                }
                None => {
                    // A window outside its slot: not a frame the kernel should give; its slot
                    // goes back to the pool when it is one.
                    if (idx as usize) < adopter.count() {
                        use switchyard_dataplane::buffer::ExternalSlots;
                        umem.slots.free(idx);
                    }
                    drops.add(DropReason::Oversize, 1);
                }
            }
        }
        part.rx.release(n);
        let left = part.fill.outstanding();
        if left < part.target - part.target / 4 && part.target < part.share {
            part.grow();
        }
        refill(&mut part.fill, &umem.slots, tag, part.target, left);
        got
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.part.as_ref().map(|p| p.sock.as_fd())
    }

    /// Also reads the kernel's drop counts (frames it dropped wake nobody, and a syscall
    /// costs nothing next to a sleep) and tops the fill ring up to its target.
    fn arm_wakeup(&mut self) -> bool {
        let Some(p) = self.part.as_mut() else { return true };
        p.read_kernel_drops();
        // A target grown from the kernel's count is filled now, before the next frames.
        let left = p.fill.outstanding();
        refill(&mut p.fill, &p.holder.slots, p.holder.tag, p.target, left);
        p.pending == 0 && p.rx.available() == 0
    }
}

struct AfXdpTx {
    shared: Arc<Shared>,
    part: Arc<Mutex<TxPart>>,
}

fn drop_all(pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally, r: DropReason) {
    drops.add(r, pkts.len() as u32);
    for b in pkts.drain(..) {
        cache.free(b);
    }
}

impl TxQueue for AfXdpTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        use switchyard_dataplane::buffer::ExternalSlots;
        if pkts.is_empty() {
            return 0;
        }
        if self.shared.gone.get() {
            drop_all(pkts, cache, drops, DropReason::PortDown);
            return 0;
        }
        let umem = &self.shared.umem;
        let mut guard = self.part.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        // Slots the kernel has sent go back to the pool.
        t.complete();
        let tag = t.holder.tag;
        let room = t.tx.free();
        let mut k = 0u32;
        for b in pkts.drain(..) {
            if k == room {
                drops.add(DropReason::TxFull, 1);
                cache.free(b);
                continue;
            }
            let desc = match b.release_to(&umem.pool) {
                Ok((idx, head, len)) => sys::XdpDesc {
                    addr: u64::from(idx) * SLOT_SIZE as u64 + u64::from(head),
                    len: len.into(),
                    options: 0,
                },
                Err(b) => {
                    let Some(idx) = umem.slots.alloc() else {
                        drops.add(DropReason::NoBuffer, 1);
                        cache.free(b);
                        continue;
                    };
                    let len = b.len();
                    // SAFETY: the slot was just taken from the free queue: ours alone.
                    if !unsafe { umem.slots.write(idx, HEADROOM, b.data()) } {
                        // A buffer's frame always fits the data room behind HEADROOM.
                        umem.slots.free(idx);
                        drops.add(DropReason::Oversize, 1);
                        cache.free(b);
                        continue;
                    }
                    cache.free(b);
                    sys::XdpDesc {
                        addr: u64::from(idx) * SLOT_SIZE as u64 + HEADROOM as u64,
                        len: len as u32,
                        options: 0,
                    }
                }
            };
            umem.slots.lend(slot_of(desc.addr).0, tag);
            t.tx.write(k, desc);
            k += 1;
        }
        t.tx.submit(k);
        t.in_flight = t.in_flight.saturating_add(k);
        for _ in 0..MAX_KICKS {
            // Need-wakeup: a zero-copy driver that is still sending clears the flag, and a
            // kick would only cost a system call; copy mode keeps it set (it sends only when
            // asked).
            if t.tx.outstanding() == 0 || !t.tx.needs_wakeup() {
                break;
            }
            match sys::kick_tx(t.sock.as_raw_fd()) {
                Ok(()) => {}
                Err(libc::EAGAIN) => {}
                Err(e) if is_link_error(e) => {
                    // The socket lost its interface: what it holds will never be sent.
                    self.shared.gone.mark(&self.shared.name, &self.shared.iface);
                    drops.add(DropReason::PortDown, k);
                    return 0;
                }
                Err(e) => {
                    tracing::debug!(port = %self.shared.name, errno = e, "AF_XDP TX kick");
                    break;
                }
            }
        }
        k as usize
    }
}

#[cfg(test)]
#[allow(unused_imports)]
#[path = "../../tests/kports_common/mod.rs"]
mod kc;

#[cfg(test)]
mod rings {
    use super::kc;
    use super::*;
    use std::time::Duration;
    use switchyard_dataplane::buffer::{ExternalSlots, Pool};

    /// The UMEM is the process's: tests that count its slots take turns.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static M: Mutex<()> = Mutex::new(());
        M.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket closed with frames in each of its rings (TX written and never sent, sent and
    /// their completions not read, received and not read) gives every slot back, while
    /// another port keeps the UMEM.
    #[test]
    fn a_socket_closed_with_frames_in_all_its_rings_gives_every_slot_back() {
        let _s = serial();
        if let Some(why) = kc::afxdp_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let k = kc::VethNs::create().unwrap();
        let keeper = AfXdpPort::open("keep", &k.host, 1).unwrap();
        let base = umem::free_slots().unwrap();
        let a = kc::VethNs::create().unwrap();
        let port = AfXdpPort::open("a", &a.host, 1).unwrap();
        let slots = port.shared.umem.slots.clone();
        let peer = kc::RawSock::open(Some(&a.ns), &a.peer).unwrap();
        // Received and never read: in the RX ring.
        for i in 0..16 {
            peer.send(&kc::frame(kc::DST, kc::SRC, &[], &format!("rx{i}"), 200));
        }
        let pool = Pool::new("s21w3", 256).unwrap();
        let mut cache = pool.cache();
        let mut drops = DropTally::default();
        // Sent: completions in the completion ring, not read.
        let mut tx = port.open_tx(0).unwrap();
        let mut burst = Burst::new();
        for i in 0..8 {
            burst.push(cache.alloc_copy(&kc::frame(kc::SRC, kc::DST, &[], &format!("c{i}"), 200)).unwrap());
        }
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 8);
        // Written to the TX ring and never kicked: copy mode sends only when asked.
        {
            let mut t = port.shared.tx[0].lock().unwrap();
            let tag = t.holder.tag;
            for i in 0..8 {
                let idx = slots.alloc().unwrap();
                // SAFETY: just taken from the free queue: ours alone.
                assert!(unsafe { slots.write(idx, HEADROOM, &kc::frame(kc::SRC, kc::DST, &[], "t", 200)) });
                slots.lend(idx, tag);
                t.tx.write(
                    i,
                    sys::XdpDesc {
                        addr: u64::from(idx) * SLOT_SIZE as u64 + HEADROOM as u64,
                        len: 200,
                        options: 0,
                    },
                );
            }
            t.tx.submit(8);
            t.in_flight += 8;
        }
        std::thread::sleep(Duration::from_millis(300));
        let rx_held = port.shared.rx[0].lock().unwrap().as_ref().unwrap().rx.available();
        assert_eq!(rx_held, 16, "frames in the RX ring");
        assert!(umem::free_slots().unwrap() < base - FILL_FLOOR as usize, "the port's rings hold slots");
        drop((tx, port));
        assert_eq!(umem::free_slots(), Some(base), "slots of the closed socket still out");
        assert!(drops.is_zero());
        drop(keeper);
    }

    /// Frames the peer sends into `rx`'s port in one go, then what arrives read and freed.
    fn burst_in(rx: &mut AfXdpRx, peer: &kc::RawSock, frames: usize, cache: &mut PoolCache) -> usize {
        let f = kc::frame(kc::DST, [2, 0, 0, 0, 0, 0x21], &[], "grow", 200);
        for _ in 0..frames {
            peer.send(&f);
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut drops = DropTally::default();
        let mut burst = Burst::new();
        let mut got = 0;
        let mut quiet = 0;
        while quiet < 20 {
            let k = rx.rx_burst(RxCtx::new(cache, &mut drops), &mut burst, 32);
            for b in burst.drain(..) {
                cache.free(b);
            }
            got += k;
            if k == 0 {
                quiet += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    /// A queue's fill ring starts at a quarter share, grows to its whole share (a ring, while
    /// few queues are open) at the first burst that takes more than a quarter of it, and, when more queues open, falls to the new share as
    /// frames drain it: the slots it gives up stay in the free queue.
    #[test]
    fn a_busy_queues_fill_target_grows_to_its_share_and_falls_when_queues_open() {
        let _s = serial();
        if let Some(why) = kc::afxdp_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let a = kc::VethNs::create().unwrap();
        let port = AfXdpPort::open("busy", &a.host, 1).unwrap();
        let part = port.shared.rx[0].lock().unwrap().take().unwrap();
        let mut rx = AfXdpRx { shared: port.shared.clone(), q: 0, part: Some(part) };
        let peer = kc::RawSock::open(Some(&a.ns), &a.peer).unwrap();
        let pool = Pool::new("grow", 512).unwrap();
        let mut cache = pool.cache();
        let target = |rx: &AfXdpRx| rx.part.as_ref().unwrap().target;
        let lent = |rx: &AfXdpRx| rx.part.as_ref().unwrap().fill.outstanding();
        let start = initial_fill_target(fill_share(1), umem::UMEM_SLOTS);
        assert_eq!(start, 256);
        assert_eq!((target(&rx), lent(&rx)), (start, start), "an idle queue keeps where it started");
        // More frames than its fill ring holds: the first burst read finds it taken.
        burst_in(&mut rx, &peer, 600, &mut cache);
        assert_eq!(target(&rx), RING_DEPTH, "after a burst of 600 frames");
        assert_eq!(lent(&rx), RING_DEPTH, "the fill ring is topped up to its target");
        // 20 more queues open: the share of 21 is 16,128 / 22.
        let more = kc::VethMany::create(20).unwrap();
        let others: Vec<_> = more
            .host
            .iter()
            .enumerate()
            .map(|(i, h)| AfXdpPort::open(&format!("o{i}"), h, 1).unwrap())
            .collect();
        let share = fill_share(21);
        assert_eq!(share, 733);
        rx.arm_wakeup();
        assert_eq!(target(&rx), share, "the target falls with the share");
        assert_eq!(burst_in(&mut rx, &peer, 100, &mut cache), 100);
        assert_eq!(lent(&rx), RING_DEPTH - 100, "above its target: not topped up");
        let free = umem::free_slots().unwrap();
        assert_eq!(burst_in(&mut rx, &peer, 400, &mut cache), 400);
        assert_eq!(lent(&rx), share, "drained below its target: topped up to it");
        let given_up = (RING_DEPTH - 100 - share) as usize;
        assert_eq!(umem::free_slots().unwrap(), free + given_up, "the slots it gave up are free");
        drop((rx, others, port));
    }

    /// A queue that keeps up with a steady flow (one frame a burst: never a quarter of its
    /// fill ring taken) is busy after twice `STATS_EVERY` bursts within a second: its target
    /// rises to its share.
    #[test]
    fn a_queue_with_a_steady_flow_gets_its_share() {
        let _s = serial();
        if let Some(why) = kc::afxdp_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let a = kc::VethNs::create().unwrap();
        let port = AfXdpPort::open("steady", &a.host, 1).unwrap();
        let part = port.shared.rx[0].lock().unwrap().take().unwrap();
        let mut rx = AfXdpRx { shared: port.shared.clone(), q: 0, part: Some(part) };
        let peer = kc::RawSock::open(Some(&a.ns), &a.peer).unwrap();
        let pool = Pool::new("steady", 256).unwrap();
        let mut cache = pool.cache();
        let mut drops = DropTally::default();
        let mut burst = Burst::new();
        let f = kc::frame(kc::DST, [2, 0, 0, 0, 0, 0x31], &[], "steady", 100);
        let start = rx.part.as_ref().unwrap().target;
        assert_eq!(start, 256);
        let t0 = std::time::Instant::now();
        let mut bursts = 0;
        while bursts <= 2 * STATS_EVERY && t0.elapsed() < Duration::from_secs(10) {
            peer.send(&f);
            let t1 = std::time::Instant::now();
            while t1.elapsed() < Duration::from_secs(1) {
                let k = rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
                for b in burst.drain(..) {
                    cache.free(b);
                }
                if k > 0 {
                    bursts += 1;
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        assert!(bursts > 2 * STATS_EVERY, "{bursts} bursts in {:?}", t0.elapsed());
        assert!(t0.elapsed() < BUSY_WINDOW * 2, "too slow here to be busy: {:?}", t0.elapsed());
        assert_eq!(rx.part.as_ref().unwrap().target, RING_DEPTH, "after {bursts} bursts of one frame");
        drop((rx, port));
    }

    /// A second port refused on an interface queue the first port's socket is bound to must
    /// leave the first port's fill ring alone: it belongs to the first port's worker.
    #[test]
    fn a_refused_port_on_a_taken_queue_does_not_fill_the_first_ports_ring() {
        let _s = serial();
        if let Some(why) = kc::afxdp_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let a = kc::VethNs::create().unwrap();
        let first = AfXdpPort::open("a", &a.host, 1).unwrap();
        let slots = first.shared.umem.slots.clone();
        let mut rx = first.open_rx(0).unwrap();
        let peer = kc::RawSock::open(Some(&a.ns), &a.peer).unwrap();
        // Frames the kernel receives into 8 slots of the fill ring (the worker does not poll).
        for i in 0..8 {
            peer.send(&kc::frame(kc::DST, [2, 0, 0, 0, 0, 0x11], &[], &format!("m{i}"), 100));
        }
        std::thread::sleep(Duration::from_millis(300));
        let lent = slots.in_use();
        assert!(AfXdpPort::open("dup", &a.host, 1).is_err(), "the interface has a program already");
        let pool = Pool::new("s15x", 256).unwrap();
        let mut cache = pool.cache();
        let mut drops = DropTally::default();
        let got = kc::rx_collect(rx.as_mut(), &mut cache, &mut drops, "m", Duration::from_millis(300));
        assert_eq!(got.len(), 8);
        // Received, freed and replaced by as many fresh slots: the fill ring is at its target
        // again and nothing else is out.
        assert_eq!(slots.in_use(), lent, "slots lost in the first port's fill ring");
        drop((rx, first));
    }
}

/// The fill-share arithmetic at its edges (no kernel needed).
#[cfg(test)]
mod fill_rule {
    use super::*;
    use umem::UMEM_SLOTS;

    #[test]
    fn a_few_queues_get_whole_rings_and_many_get_their_share_down_to_the_floor() {
        let usable = UMEM_SLOTS - IN_FLIGHT_RESERVE;
        assert_eq!(fill_share(0), RING_DEPTH, "no queue counted yet: as one");
        assert_eq!(fill_share(1), RING_DEPTH);
        // 16,128 / 15 = 1,075: still a whole ring; / 16 = 1,008: the first share below it.
        assert_eq!(fill_share(14), RING_DEPTH);
        assert_eq!(fill_share(15), 1008);
        assert_eq!(fill_share(128), 125);
        assert_eq!(fill_share(251), 64);
        assert_eq!(fill_share(252), FILL_FLOOR, "63 by the split: the floor");
        assert_eq!(fill_share(100_000), FILL_FLOOR);
        assert_eq!(fill_share(usize::MAX - 1), FILL_FLOOR);
        // Every open queue at its share and one more at its floor fit beside the reserve,
        // as far as the floor allows (252 idle queues).
        for n in 1..usable / FILL_FLOOR as usize {
            assert!(n * fill_share(n) as usize + FILL_FLOOR as usize <= usable, "{n} queues");
        }
        assert_eq!(usable / FILL_FLOOR as usize, 252);
    }

    #[test]
    fn a_starved_target_grows_to_its_share_as_far_as_the_spare_slots_go() {
        let lots = UMEM_SLOTS;
        assert_eq!(grown_fill_target(FILL_FLOOR, RING_DEPTH, lots), RING_DEPTH);
        assert_eq!(grown_fill_target(256, RING_DEPTH, lots), RING_DEPTH);
        assert_eq!(grown_fill_target(256, 733, lots), 733, "not past the share");
        assert_eq!(grown_fill_target(RING_DEPTH, RING_DEPTH, lots), RING_DEPTH);
        assert_eq!(grown_fill_target(FILL_FLOOR, FILL_FLOOR, lots), FILL_FLOOR);
        assert_eq!(grown_fill_target(FILL_FLOOR, 125, lots), 125);
        assert_eq!(grown_fill_target(256, RING_DEPTH, 10), 266, "only the spare slots");
        assert_eq!(grown_fill_target(256, RING_DEPTH, 0), 256);
        // Above its share (queues opened since): growing never lowers it, nor raises it.
        assert_eq!(grown_fill_target(RING_DEPTH, 125, lots), RING_DEPTH);
    }

    #[test]
    fn a_new_queue_starts_at_a_quarter_share_within_the_spare_slots_and_the_floor() {
        let lots = UMEM_SLOTS;
        assert_eq!(initial_fill_target(fill_share(1), lots), 256);
        assert_eq!(initial_fill_target(fill_share(15), lots), 252);
        assert_eq!(initial_fill_target(fill_share(61), lots), 65);
        assert_eq!(initial_fill_target(fill_share(62), lots), FILL_FLOOR);
        assert_eq!(initial_fill_target(fill_share(128), lots), FILL_FLOOR);
        assert_eq!(initial_fill_target(fill_share(1), 100), 100, "only what is spare");
        assert_eq!(initial_fill_target(fill_share(1), 10), FILL_FLOOR, "the floor, admitted at open");
        // Queues opened one after the other and left idle, each admitted while its floor and
        // the reserve are free: how many fit (the 128-port test needs 129 with its keeper).
        let mut free = UMEM_SLOTS;
        let mut open = 0;
        while free >= slots_needed(1) {
            open += 1;
            free -= initial_fill_target(fill_share(open), free - IN_FLIGHT_RESERVE) as usize;
        }
        assert_eq!(open, 169);
    }

    #[test]
    fn a_port_needs_its_queues_floors_and_the_reserve() {
        assert_eq!(slots_needed(1), 64 + 256);
        assert_eq!(slots_needed(0), slots_needed(1), "a port has at least one queue");
        assert_eq!(slots_needed(4), 4 * 64 + 256);
        assert_eq!(slots_needed(u16::MAX), 65535 * 64 + 256);
    }
}
