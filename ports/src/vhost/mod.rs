//! vhost-user ports: virtual machines attach through a Unix socket and switchyard moves frames
//! in and out of their virtio-net rings directly (the device side, the role of DPDK's vhost
//! library in OVS-DPDK).
//!
//! ## Why hand-written and not the rust-vmm crates
//!
//! The backend is written directly against the vhost-user protocol and the virtio split ring,
//! with `libc` as its only dependency, rather than on rust-vmm's `vhost` /
//! `vhost-user-backend`, `vm-memory` and `virtio-queue`:
//! - **The fast path is a polling loop over bursts.** `vhost-user-backend` is built around an
//!   epoll thread per queue that wakes on kicks and hands out descriptor chains one at a time
//!   (`DescriptorChain` iterators, a `GuestMemoryAtomic` load per access). switchyard's workers
//!   own their queues, poll them with no system call, copy whole bursts into its own
//!   [`PacketBuf`](switchyard_dataplane::buffer::PacketBuf)s, and publish the used index once per burst. That
//!   is a few hundred lines of ring code ([`vring`]), simpler to make fast than to adapt.
//! - **One small audited surface for untrusted memory.** Every guest access goes through
//!   [`mem`] (region lookup with checked arithmetic, atomics for ring fields, raw copies for
//!   data, guard-paged fake memory for fuzzing) and every check the guest can fail maps to a
//!   named drop counter. With `vm-memory` the checks would be split between three crates'
//!   abstractions and our own error mapping.
//! - **Threading model.** The protocol runs on one control thread per port, workers take a
//!   per-ring lock that the control thread holds only for the instant it swaps a ring; the
//!   rust-vmm backend framework owns its threads and its locking.
//! - **No new dependencies** in a crate that must build in constrained CI.
//!
//! The price is writing the message handling ourselves (`control`); the protocol subset a
//! virtio-net backend needs is small and is covered by tests against DPDK's virtio-user.
//!
//! ## Layout
//! - [`mem`]: guest memory and the dirty log (mmap, translation, checked access). With
//!   [`sys`] (SCM_RIGHTS, poll, eventfd, memfd) the only `unsafe` code of the backend.
//! - [`proto`]: message formats, feature bits.
//! - [`vring`]: the split ring data path (guest TX -> switch, switch -> guest RX with mergeable
//!   buffers), notification suppression, event-idx, dirty logging, and every guest check.
//! - `control`: the per-port control thread (server or client socket, reconnects, messages);
//!   [`Loopback`] runs its session code without the socket (message in, replies out), for
//!   tests and the `vhost_msg` fuzz target.
//! - [`frontend`]: a small vhost-user frontend that plays the guest, for tests and benchmarks.
//!
//! ## Queues
//! Queue pair `q` is vring `2q` (guest RX, the switch transmits into it) and `2q + 1` (guest
//! TX, the switch receives from it). The port has `queues` RX queues (one per pair, each taken
//! by one worker); TX handle `w` (worker `w`) transmits into pair `w % queues`, or pair 0 when
//! the guest did not enable that pair. Each vring is behind a mutex that its worker holds
//! for one burst and the control thread only to swap the ring's state.
//!
//! ## Idle workers sleep on kicks
//! The guest is asked not to kick (notify) the device while a worker polls. A worker with
//! nothing to do sleeps in `poll(2)` on the kick eventfd of its TX vring instead of on a
//! timer: `arm_wakeup` asks the guest for kicks (clears USED_F_NO_NOTIFY, or with event-idx
//! points avail_event at the next entry), fences, and re-reads the available index, so a frame
//! posted meanwhile is either seen or kicked; `disarm_wakeup` suppresses kicks again and drains
//! the fd ([`vring::Vring::enable_notify`], [`vring::Vring::disable_notify`]).
//!
//! ## Guest problems and their counters
//! `vhost_invalid_desc` (a bad descriptor or chain, or a frame towards the guest that would
//! walk more than [`vring::MAX_EMPTY_DESCS`] zero-length descriptors across its RX chains:
//! frame dropped, chains returned empty),
//! `vhost_ring_broken` (the ring's indices cannot be trusted: the queue stops until the
//! frontend sets it up again), `vhost_no_rx_desc` (the guest posted no RX buffers),
//! `vhost_tx_retries` (the guest's RX ring filled up mid-burst and stayed full for
//! [`vring::TX_RETRIES`] re-reads), `oversize` (a frame larger than a buffer). Not the
//! guest's: `vhost_ring_stopped` (the frontend stopped a TX ring while a super-frame was
//! being cut into segments: the rest of it is lost; a ring rebuilt in place finishes it).

mod control;
pub use control::{Answer, Loopback};
pub mod frontend;
#[allow(unsafe_code)]
pub mod mem;
pub mod proto;
#[allow(unsafe_code)]
pub mod sys;
pub mod vring;

use crossbeam_queue::ArrayQueue;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{
    Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue,
};
use switchyard_dataplane::switch::DropReason;

/// Most queue pairs a port offers (the configuration check refuses more).
pub const MAX_QUEUE_PAIRS: u16 = switchyard_dataplane::backend::VHOST_MAX_QUEUE_PAIRS;

/// Who opens the socket (the configuration's `mode`).
pub use switchyard_dataplane::backend::VhostMode as Mode;

/// How a vhost-user port is opened.
#[derive(Debug, Clone)]
pub struct VhostOptions {
    pub mode: Mode,
    /// Queue pairs offered (VIRTIO_NET_F_MQ); 1 to [`MAX_QUEUE_PAIRS`].
    pub queues: u16,
    /// Client mode: the first pause between connection attempts, doubled after each attempt
    /// that fails (no connection, or a session that ends before features are agreed) up to
    /// 5 s, and back to this after a session that negotiated.
    pub reconnect_interval: Duration,
    /// Server mode: permissions given to the socket after it is created.
    pub socket_mode: Option<u32>,
    /// Offer the guest checksum and TCP segmentation offload both ways
    /// ([`proto::feat::OFFLOADS`]): switchyard finishes the guest's frames where they enter,
    /// and merges runs of TCP segments into super-frames towards it.
    pub offloads: bool,
}

impl Default for VhostOptions {
    fn default() -> Self {
        VhostOptions {
            mode: Mode::Server,
            queues: 1,
            reconnect_interval: Duration::from_millis(200),
            socket_mode: None,
            offloads: false,
        }
    }
}

/// What the workers see of one vring.
#[derive(Debug, Default)]
pub struct VqState {
    /// The running ring, `None` while the frontend has not (or no longer) set it up.
    pub ring: Option<vring::Vring>,
    /// Guest TX super-frames whose remaining segments were lost when the control thread
    /// stopped the ring part-way through them; the queue's worker counts them
    /// (`vhost_ring_stopped`) on its next poll, under the lock it takes anyway.
    pub lost: u32,
}

/// One vring's lock and state on cache lines of their own: the workers of a multiqueue port
/// each lock and update their own vrings every burst, which must not share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct PaddedVq(Mutex<VqState>);

pub(crate) struct Shared {
    name: String,
    path: PathBuf,
    /// Server mode: the device and inode of the socket this port bound at `path`. The port
    /// removes the socket when it closes only while `path` is still that socket: a port that
    /// took over the path since (a renamed port, opened before this one closes) keeps its own.
    bound: Option<(u64, u64)>,
    opts: VhostOptions,
    vqs: Box<[PaddedVq]>,
    rx_claims: RxClaims,
    link: AtomicBool,
    connected: AtomicBool,
    stop: AtomicBool,
    sessions: AtomicU64,
    features: AtomicU64,
    rarp: ArrayQueue<[u8; 60]>,
    /// Super-frames written into the guest's RX buffers, and their segments.
    rx_merged: AtomicU64,
    rx_merged_segments: AtomicU64,
}

impl Shared {
    /// The options a port is refused with.
    fn check(name: &str, opts: &VhostOptions) -> Result<(), PortError> {
        if opts.queues == 0 || opts.queues > MAX_QUEUE_PAIRS {
            return Err(PortError::Backend {
                port: name.into(),
                msg: format!("queues must be between 1 and {MAX_QUEUE_PAIRS}, not {}", opts.queues),
            });
        }
        Ok(())
    }

    /// A port's state before any session, its vrings stopped.
    fn new(
        name: &str,
        path: &Path,
        bound: Option<(u64, u64)>,
        opts: VhostOptions,
    ) -> Result<Shared, PortError> {
        Shared::check(name, &opts)?;
        let nvq = usize::from(opts.queues) * 2;
        Ok(Shared {
            name: name.to_string(),
            path: path.to_path_buf(),
            bound,
            vqs: (0..nvq).map(|_| PaddedVq::default()).collect(),
            rx_claims: RxClaims::new(name, opts.queues),
            opts,
            link: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            features: AtomicU64::new(0),
            rarp: ArrayQueue::new(16),
            rx_merged: AtomicU64::new(0),
            rx_merged_segments: AtomicU64::new(0),
        })
    }

    /// Server mode, on close: removes the socket at `path` if it is still the one this port
    /// bound (same device and inode). Between the check and the unlink another process could
    /// bind the path anew; within switchyard the ports open and close on the one reconcile
    /// thread, so the port that took the path over is open already when this runs.
    fn remove_own_socket(&self) {
        use std::os::unix::fs::MetadataExt;
        let Some(own) = self.bound else { return };
        match std::fs::symlink_metadata(&self.path) {
            Ok(md) if (md.dev(), md.ino()) == own => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => tracing::debug!(port = %self.name, path = %self.path.display(),
                "vhost: the socket path is another socket now; left in place"),
            Err(_) => {}
        }
    }

    fn vq(&self, i: usize) -> MutexGuard<'_, VqState> {
        self.vqs[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A vhost-user port. Dropping it stops its control thread, closes the connection and (in
/// server mode) removes the socket, unless another port has bound the path since.
pub struct VhostUserPort {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl VhostUserPort {
    /// Opens the port: in server mode binds `path` now (replacing a stale socket), in client
    /// mode starts connecting to it in the background.
    pub fn open(name: &str, path: &Path, opts: VhostOptions) -> Result<VhostUserPort, PortError> {
        Shared::check(name, &opts)?;
        let mut bound = None;
        let listener = match opts.mode {
            Mode::Server => {
                if let Ok(md) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if md.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    }
                }
                let l =
                    UnixListener::bind(path).map_err(|e| PortError::Io { port: name.into(), source: e })?;
                let io = |e| PortError::Io { port: name.into(), source: e };
                // Which socket is ours: the path may be taken over by the time this port closes.
                let md = std::fs::symlink_metadata(path).map_err(io)?;
                bound = {
                    use std::os::unix::fs::MetadataExt;
                    Some((md.dev(), md.ino()))
                };
                l.set_nonblocking(true).map_err(io)?;
                if let Some(m) = opts.socket_mode {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).map_err(io)?;
                }
                Some(l)
            }
            Mode::Client => None,
        };
        let shared = Arc::new(Shared::new(name, path, bound, opts)?);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || control::run(sh, listener))
            .map_err(|e| PortError::Io { port: name.into(), source: e })?;
        Ok(VhostUserPort { shared, thread: Some(thread) })
    }

    /// Whether a frontend is connected.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// How many frontend connections this port has had.
    pub fn sessions(&self) -> u64 {
        self.shared.sessions.load(Ordering::Acquire)
    }

    /// The virtio features the frontend negotiated in the current session.
    pub fn negotiated_features(&self) -> u64 {
        self.shared.features.load(Ordering::Acquire)
    }

    /// TCP super-frames written into the guest's RX buffers (runs of segments merged: a guest
    /// that agreed to GUEST_TSO4/6 with mergeable buffers, `offloads` on), and the segments
    /// they were made of.
    pub fn guest_rx_merges(&self) -> (u64, u64) {
        (
            self.shared.rx_merged.load(Ordering::Relaxed),
            self.shared.rx_merged_segments.load(Ordering::Relaxed),
        )
    }

    /// Whether vring `i` is running (set up and enabled by the frontend).
    pub fn vring_running(&self, i: usize) -> bool {
        i < self.shared.vqs.len() && self.shared.vq(i).ring.as_ref().is_some_and(|r| r.broken().is_none())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct VhostRx {
    shared: Arc<Shared>,
    q: u16,
    /// Our copy of the running ring's kick eventfd ([`RxQueue::wake_fd`] must lend it out
    /// without the ring's lock), refreshed on every burst and every arm. The frontend may
    /// replace the fd or stop the ring at any time: a worker asleep on the old fd sees that
    /// when its poll times out (we never signal the guest's fd ourselves: see
    /// [`vring::Vring::kick`]), and its next burst lets go of the old fd (closing our copy).
    kick: Option<Arc<File>>,
}

impl VhostRx {
    fn vq(&self) -> usize {
        2 * usize::from(self.q) + 1
    }

    fn refresh_kick(kick: &mut Option<Arc<File>>, ring: Option<&vring::Vring>) {
        let now = ring.and_then(vring::Vring::kick);
        let same = match (kick.as_ref(), now) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            *kick = now.cloned();
        }
    }
}

impl Drop for VhostRx {
    fn drop(&mut self) {
        self.shared.rx_claims.release(self.q);
    }
}

impl RxQueue for VhostRx {
    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let mut n = 0;
        if self.q == 0 && !self.shared.rarp.is_empty() {
            while n < max && !out.is_full() {
                let Some(f) = self.shared.rarp.pop() else { break };
                match cache.alloc_copy(&f) {
                    Some(b) => {
                        out.push(b);
                        n += 1;
                    }
                    None => drops.add(DropReason::NoBuffer, 1),
                }
            }
        }
        let mut st = self.shared.vq(self.vq());
        if st.lost != 0 {
            drops.add(DropReason::VhostRingStopped, std::mem::take(&mut st.lost));
        }
        Self::refresh_kick(&mut self.kick, st.ring.as_ref());
        if let Some(r) = st.ring.as_mut() {
            n += r.dequeue(RxCtx { cache, drops }, out, max - n);
        }
        n
    }

    /// The guest's kick eventfd while the ring runs with one (`None` otherwise: no ring yet,
    /// or a frontend that polls us and sent no fd; the worker then backs off with timed
    /// sleeps).
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.kick.as_deref().map(AsFd::as_fd)
    }

    fn arm_wakeup(&mut self) -> bool {
        let shared = self.shared.clone();
        let mut st = shared.vq(self.vq());
        Self::refresh_kick(&mut self.kick, st.ring.as_ref());
        let (Some(r), Some(kick)) = (st.ring.as_mut(), self.kick.as_ref()) else {
            // Nothing to sleep on (the ring stopped since wake_fd was asked): don't sleep.
            return false;
        };
        // Kicks that came while we polled are stale: drop them so they do not end the sleep
        // at once. Any kick from here on stays (the guest kicks after our request below).
        sys::eventfd_take(kick);
        if !r.enable_notify() {
            return false;
        }
        drop(st);
        // Queue 0 also delivers the RARP frames of SEND_RARP: don't sleep on one. (One pushed
        // while we sleep waits for the poll's timeout.)
        if self.q == 0 && !shared.rarp.is_empty() {
            self.disarm_wakeup();
            return false;
        }
        true
    }

    fn disarm_wakeup(&mut self) {
        if let Some(r) = self.shared.vq(self.vq()).ring.as_mut() {
            r.disable_notify();
        }
        if let Some(k) = &self.kick {
            sys::eventfd_take(k);
        }
    }
}

struct VhostTx {
    shared: Arc<Shared>,
    vq: usize,
}

fn drop_all(pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally, r: DropReason) {
    drops.add(r, pkts.len() as u32);
    for b in pkts.drain(..) {
        cache.free(b);
    }
}

impl TxQueue for VhostTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        if pkts.is_empty() {
            return 0;
        }
        if !self.shared.link.load(Ordering::Acquire) {
            drop_all(pkts, cache, drops, DropReason::PortDown);
            return 0;
        }
        let mut st = self.shared.vq(self.vq);
        if st.ring.is_none() && self.vq != 0 {
            drop(st);
            st = self.shared.vq(0);
        }
        match st.ring.as_mut() {
            Some(r) => {
                let sent = r.enqueue(pkts, cache, drops);
                let m = r.take_merges();
                if m.frames != 0 {
                    self.shared.rx_merged.fetch_add(m.frames, Ordering::Relaxed);
                    self.shared.rx_merged_segments.fetch_add(m.segments, Ordering::Relaxed);
                }
                sent
            }
            None => {
                drop_all(pkts, cache, drops, DropReason::PortDown);
                0
            }
        }
    }
}

impl PortBackend for VhostUserPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn rx_queue_count(&self) -> u16 {
        self.shared.opts.queues
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.shared.rx_claims.claim(q)?;
        Ok(Box::new(VhostRx { shared: self.shared.clone(), q, kick: None }))
    }

    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        let pair = q % self.shared.opts.queues;
        Ok(Box::new(VhostTx { shared: self.shared.clone(), vq: 2 * usize::from(pair) }))
    }

    fn link_up(&self) -> bool {
        self.shared.link.load(Ordering::Acquire)
    }
}
