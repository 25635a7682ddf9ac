//! Ports: the one interface every backend implements (burst RX and TX per queue, link state),
//! and the in-memory ring and pcap backends. The OS and guest backends (AF_PACKET, TAP,
//! vhost-user, DPDK) live in the `switchyard-ports` crate.
//!
//! Ownership model: a backend hands out queue handles ([`RxQueue`], [`TxQueue`]); a worker
//! owns the handles it was given and calls them with `&mut self`, so the fast path needs no
//! lock. A backend with a single hardware TX queue serialises its handles internally.
//!
//! Every frame a backend takes in and cannot deliver is counted in the caller's [`DropTally`]
//! under a named [`DropReason`]; nothing is dropped silently.

pub mod pcap;
pub mod ring;

use crate::buffer::{PacketBuf, PoolCache};
use crate::switch::DropReason;
use arrayvec::ArrayVec;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most frames moved in one burst.
pub const MAX_BURST: usize = 64;
/// The default burst size (as DPDK's testpmd).
pub const DEFAULT_BURST: usize = 32;

/// A burst of buffers in a fixed-size array: no allocation on the fast path.
pub type Burst = ArrayVec<PacketBuf, MAX_BURST>;

/// A burst holding copies of `frames` in buffers of `cache` (tests and tools; the fast path
/// fills bursts in place). `None` when the cache runs out of buffers, a frame does not fit in
/// one, or there are more than [`MAX_BURST`] frames.
pub fn burst_of<F: AsRef<[u8]>>(cache: &mut PoolCache, frames: &[F]) -> Option<Burst> {
    let mut burst = Burst::new();
    for f in frames {
        burst.try_push(cache.alloc_copy(f.as_ref())?).ok()?;
    }
    Some(burst)
}

/// Drops counted during one burst, added to a port's counters once per burst. A bitmask of
/// the reasons counted makes the common cases (nothing dropped, one reason) cost one test, not
/// a pass over every reason.
#[derive(Debug, Clone, Copy)]
pub struct DropTally {
    counts: [u32; DropReason::COUNT],
    /// Bit `r` set exactly when `counts[r]` is not zero.
    touched: u64,
}

// Every reason has its bit.
const _: () = assert!(DropReason::COUNT <= 64);

impl Default for DropTally {
    fn default() -> Self {
        DropTally { counts: [0; DropReason::COUNT], touched: 0 }
    }
}

/// Tallies with the same counts are equal, whatever was added and flushed on the way.
impl PartialEq for DropTally {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
    }
}

impl Eq for DropTally {}

impl DropTally {
    #[inline]
    pub fn add(&mut self, r: DropReason, n: u32) {
        self.counts[r as usize] += n;
        // Adding nothing (a flush's "no TX drops") leaves the tally empty.
        self.touched |= u64::from(n != 0) << r as u32;
    }
    pub fn get(&self, r: DropReason) -> u32 {
        self.counts[r as usize]
    }
    /// Drops counted, all reasons together.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }
    /// Nothing counted (`touched` has a bit for every count that is not zero).
    #[inline]
    pub fn is_zero(&self) -> bool {
        self.touched == 0
    }
    /// Adds every count to `stats` and zeroes the tally.
    #[inline]
    pub fn flush_into(&mut self, stats: &crate::switch::PortStats) {
        let mut touched = std::mem::take(&mut self.touched);
        while touched != 0 {
            let i = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            stats.add_drop(DropReason::ALL[i], u64::from(std::mem::take(&mut self.counts[i])));
        }
    }
}

/// Failures of opening or running a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port {port}: queue {queue} does not exist (the port has {count})")]
    NoSuchQueue { port: String, queue: u16, count: u16 },
    #[error("port {port}: RX queue {queue} is already taken by a worker")]
    QueueTaken { port: String, queue: u16 },
    #[error("{file}: {msg}")]
    Pcap { file: String, msg: String },
    #[error("{file}: frame {frame}: {msg}")]
    PcapFrame { file: String, frame: usize, msg: String },
    #[error("port {port}: {msg}")]
    Backend { port: String, msg: String },
    #[error("port {port}: {source}")]
    Io { port: String, source: std::io::Error },
    #[error("port {port}: type {kind} is not built into this switchyard ({hint})")]
    Unsupported { port: String, kind: String, hint: String },
    /// The device is open already as another port of this process (one device is one port);
    /// nothing of it was touched.
    #[error("port {port}: device {device} is open already as port {owner}")]
    DeviceInUse { port: String, device: String, owner: String },
}

/// What a worker lends a queue for one receive: the buffer cache that fresh frames come from
/// and the tally that counts what the queue had to drop. Two references passed by value, so
/// that it costs what two separate arguments would; [`RxCtx::reborrow`] lends it again.
pub struct RxCtx<'a> {
    pub cache: &'a mut PoolCache,
    pub drops: &'a mut DropTally,
}

impl<'a> RxCtx<'a> {
    #[inline(always)]
    pub fn new(cache: &'a mut PoolCache, drops: &'a mut DropTally) -> RxCtx<'a> {
        RxCtx { cache, drops }
    }

    /// The same cache and tally for a shorter call, leaving `self` usable after it.
    #[inline(always)]
    pub fn reborrow(&mut self) -> RxCtx<'_> {
        RxCtx { cache: self.cache, drops: self.drops }
    }
}

/// The receive side of one queue, owned by one worker.
pub trait RxQueue: Send {
    /// Appends up to `max` received frames to `out` (never beyond its capacity) and returns
    /// how many it appended. Buffers come from `rx.cache`; frames it had to drop are counted
    /// in `rx.drops`.
    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize;

    /// A descriptor that becomes readable when frames may have arrived, so that an idle worker
    /// can sleep in `poll(2)` instead of waking on a timer. `None`: the queue cannot tell, and
    /// a worker polling it backs off with short sleeps.
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Before sleeping on [`RxQueue::wake_fd`]: asks the queue to signal it, and returns
    /// `false` if frames are already waiting (then the worker must not sleep).
    fn arm_wakeup(&mut self) -> bool {
        true
    }

    /// After a sleep: clears whatever `arm_wakeup` set up (drains an eventfd, say).
    fn disarm_wakeup(&mut self) {}

    /// Whether an idle worker gains by spinning before it sleeps on this queue. `false` for a
    /// kernel socket or device (AF_PACKET, a UDP socket, TAP, AF_XDP): the kernel makes its
    /// [`RxQueue::wake_fd`] readable when a frame arrives, at no cost to the sender, and a
    /// spinning worker only takes the CPU the kernel needs to deliver that frame. `true` (the
    /// default) for queues that cannot wake a worker (a DPDK ethdev) or whose wake-ups cost the
    /// sender (a vhost-user guest's kick, an in-process ring's eventfd). A worker spins only
    /// when one of its queues says `true` (`EngineOptions::idle_spin`).
    fn spin_when_idle(&self) -> bool {
        true
    }

    /// Whether a worker, past its spin, should nap on a timer while frames keep coming instead
    /// of yielding and then sleeping in poll(2) at once. `true` for a queue whose sender pays
    /// for every wake-up (AF_XDP: each flush that finds the worker asleep on the socket wakes
    /// it from the sender's softirq, an IPI to the worker's core); a napping worker is on no
    /// wait queue, so the sender pays nothing and the worker gathers a burst. A worker naps
    /// only when every one of its queues says `true`; after the naps it sleeps in poll(2), so
    /// the first frame after an idle period still wakes it at once. Default `false`.
    fn nap_while_busy(&self) -> bool {
        false
    }
}

/// The transmit side of one queue, owned by one worker.
pub trait TxQueue: Send {
    /// Sends every frame in `pkts`, draining it. Frames that cannot be sent are returned to
    /// `cache` and counted in `drops` (`tx_full`, `port_down`). Returns the number sent.
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize;

    /// Pushes out anything buffered (a file writer's buffer, say). Default: nothing to do.
    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Which RX queues of a port are taken. Each RX queue is polled by at most one handle at a
/// time: a backend claims the queue when it hands out an [`RxQueue`] and releases it when that
/// handle is dropped.
#[derive(Debug)]
pub struct RxClaims {
    port: String,
    taken: Box<[AtomicBool]>,
}

impl RxClaims {
    pub fn new(port: &str, queues: u16) -> RxClaims {
        RxClaims { port: port.to_string(), taken: (0..queues).map(|_| AtomicBool::new(false)).collect() }
    }

    pub fn count(&self) -> u16 {
        self.taken.len() as u16
    }

    /// Claims queue `q`: an error when the port has no such queue or a handle holds it.
    pub fn claim(&self, q: u16) -> Result<(), PortError> {
        let Some(t) = self.taken.get(usize::from(q)) else {
            return Err(PortError::NoSuchQueue { port: self.port.clone(), queue: q, count: self.count() });
        };
        if t.swap(true, Ordering::AcqRel) {
            return Err(PortError::QueueTaken { port: self.port.clone(), queue: q });
        }
        Ok(())
    }

    /// Gives queue `q` back (from the handle's `Drop`).
    pub fn release(&self, q: u16) {
        if let Some(t) = self.taken.get(usize::from(q)) {
            t.store(false, Ordering::Release);
        }
    }
}

/// A port backend.
pub trait PortBackend: Send + Sync {
    fn name(&self) -> &str;
    /// How many RX queues the port has (each can be taken by one worker).
    fn rx_queue_count(&self) -> u16 {
        1
    }
    /// How many TX queue handles the port can give (one per worker).
    fn tx_queue_count(&self) -> u16 {
        u16::MAX
    }
    /// Takes RX queue `q`. Each RX queue can be taken once until its handle is dropped.
    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError>;
    /// A TX handle for queue `q`.
    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError>;
    /// Whether the link is up.
    fn link_up(&self) -> bool {
        true
    }
    /// What the backend found out when it opened, worth showing (`ctl show ports`): a tunnel
    /// port's underlay and overlay MTU, say. Default: nothing.
    fn info(&self) -> Option<String> {
        None
    }
    /// Applies `wanted`, a changed backend of this port, in place, keeping the port's sockets
    /// and queues open (no frame lost): `Ok(true)` when done, `Ok(false)` when this backend
    /// cannot take that change in place (the caller closes and reopens it), `Err` when the
    /// update was refused (the caller reopens too, and the reopening reports the error).
    /// Tunnel ports take a new flood list, static remote MACs and learning this way.
    /// Default: never in place.
    fn update(&self, wanted: &crate::backend::Backend) -> Result<bool, PortError> {
        let _ = wanted;
        Ok(false)
    }
    /// The port is being removed (its queues may run until the workers drop them): gives up
    /// now what a port opened in the same reconcile may need, so that the new one opens at
    /// once. A tunnel port leaves its VNI on its shared socket or uplink (the socket or
    /// uplink itself stays open while the port's queues use it). Called once, by the control
    /// thread, before the reconcile opens ports. Default: nothing.
    fn retire(&self) {}
}
