//! The process's one UMEM: a buffer pool whose region every AF_XDP socket of switchyard shares
//! (XDP_SHARED_UMEM), so that a frame received on one AF_XDP port is sent from another by
//! handing its slot over, with no copy.
//!
//! Invariants: slot `i` is the `SLOT_SIZE` bytes at UMEM offset `i * SLOT_SIZE` (unaligned
//! chunk mode: the kernel takes any chunk size); a slot is owned by exactly one of the free
//! queue here, the pool's buffers and caches (see the buffer module), or one ring group's fill
//! or TX rings until the kernel gives it back (RX or completion ring). A ring group is the
//! kernel's buffer pool of one socket's interface queue: its fill, completion and TX rings
//! (every socket has all four rings of its own). Each slot lent to the kernel carries its
//! group's tag (`Holder`); a slot
//! comes back from the kernel only through its own group's RX or completion ring, and when a
//! group's last socket is closed (and the kernel has let go: see `Holder`) every slot still
//! carrying its tag goes back to the free queue. The region is unmapped only with the last
//! holder of `Slots`: the pool keeps it alive while any buffer is out, and the kernel pins its
//! pages while a socket uses them.

use super::sys;
use crossbeam_queue::ArrayQueue;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use switchyard_dataplane::buffer::{ExternalSlots, Pool, SLOT_SIZE};

/// Slots in the UMEM (`UMEM_SLOTS * SLOT_SIZE` = 34 MiB, mapped and pinned while an AF_XDP
/// port is open): the fill rings of every open queue at their floor or share (see the afxdp
/// module: up to 252 queues) and the frames in flight.
pub const UMEM_SLOTS: usize = 16384;

/// The UMEM's region and its free slots.
pub(super) struct Slots {
    base: NonNull<u8>,
    len: usize,
    free: ArrayQueue<u32>,
    /// The tag of the ring group whose fill or TX ring slot `i` is in (lent to the kernel),
    /// 0 when it is not lent: set when a slot is written to one, cleared when the group's RX
    /// or completion ring hands it back, or when the group is closed (`Holder`). What is
    /// still set when the last socket is closed goes back to the free queue.
    lent: Box<[AtomicU32]>,
    /// The next ring group's tag (never 0, never reused: 2^32 binds).
    next_tag: AtomicU32,
    /// Ring groups (sockets) open on the UMEM: counted at bind, uncounted when the group's
    /// holder goes. What a fill ring's share is computed from (`super::fill_share`).
    queues: AtomicUsize,
    /// The sockets bound to the UMEM so far (dead ones pruned at each bind), most recent
    /// last, with the interface and queue each is bound to: a new socket names one of them in
    /// XDP_SHARED_UMEM (the kernel's UMEM lives while any socket uses it). Locked by a bind
    /// while it holds some of them open, and by a closing socket's `Holder` before it looks
    /// whether its socket is closed.
    live: Mutex<Vec<LiveSocket>>,
}

/// A socket bound to the UMEM and the interface and queue it is bound to.
type LiveSocket = (Weak<OwnedFd>, (u32, u32));

// SAFETY: the region is plain memory owned by this value; the free queue is thread-safe, and
// slot bytes are touched only by the single owner of each slot (module invariant).
unsafe impl Send for Slots {}
// SAFETY: as Send.
unsafe impl Sync for Slots {}

impl Slots {
    fn new(count: usize) -> io::Result<Slots> {
        let len = count * SLOT_SIZE;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let free = ArrayQueue::new(count);
        for i in 0..count as u32 {
            let _ = free.push(i);
        }
        let lent = (0..count).map(|_| AtomicU32::new(0)).collect();
        Ok(Slots {
            // SAFETY: mmap succeeded, so `p` is not null.
            base: unsafe { NonNull::new_unchecked(p as *mut u8) },
            len,
            free,
            lent,
            next_tag: AtomicU32::new(1),
            queues: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
        })
    }

    /// Copies `bytes` into slot `idx` from byte `at` on; `false` (nothing written) when they
    /// do not fit the slot.
    ///
    /// # Safety
    /// The caller owns slot `idx` (it took it from [`ExternalSlots::alloc`] and has not given
    /// it away), so no one else reads or writes its bytes.
    pub(super) unsafe fn write(&self, idx: u32, at: usize, bytes: &[u8]) -> bool {
        let start = idx as usize * SLOT_SIZE + at;
        if at + bytes.len() > SLOT_SIZE || (idx as usize + 1) * SLOT_SIZE > self.len {
            return false;
        }
        // SAFETY: `start..start + bytes.len()` lies inside slot `idx` inside the region
        // (checked above), which the caller alone owns; `bytes` is not in an owned slot.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(start), bytes.len()) };
        true
    }

    /// Marks slot `idx` lent to the kernel in ring group `tag` (written to its fill ring or
    /// one of its TX rings).
    #[inline]
    pub(super) fn lend(&self, idx: u32, tag: u32) {
        if let Some(l) = self.lent.get(idx as usize) {
            l.store(tag, Ordering::Relaxed);
        }
    }

    /// Marks slot `idx` handed back by ring group `tag`'s kernel side (read from its RX or
    /// completion ring): true when that group had it (false for an index the kernel should
    /// not have given: beyond the slots, not lent, or lent to another group, which the caller
    /// must then leave alone, since it may be in use, in the free queue or another group's).
    #[inline]
    pub(super) fn returned(&self, idx: u32, tag: u32) -> bool {
        self.lent
            .get(idx as usize)
            .is_some_and(|l| l.compare_exchange(tag, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok())
    }

    /// Ring groups (sockets) open on the UMEM now.
    #[inline]
    pub(super) fn open_queues(&self) -> usize {
        self.queues.load(Ordering::Relaxed)
    }

    /// Slots in the free queue now (racing with every worker: a hint, not a reservation).
    #[inline]
    pub(super) fn free_now(&self) -> usize {
        self.free.len()
    }

    /// A fresh ring group tag.
    fn new_tag(&self) -> u32 {
        loop {
            let t = self.next_tag.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Every slot still lent to ring group `tag` goes back to the free queue: the group is
    /// closed and the kernel no longer touches its slots. Returns how many.
    fn reclaim(&self, tag: u32) -> usize {
        let mut n = 0;
        for (i, l) in self.lent.iter().enumerate() {
            // A plain load first: most slots are not the group's (no locked instruction).
            if l.load(Ordering::Relaxed) == tag
                && l.compare_exchange(tag, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                ExternalSlots::free(self, i as u32);
                n += 1;
            }
        }
        n
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by Slots::new with this length; no buffer, cache or
        // socket refers to it any more (this was the last holder).
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}

// SAFETY: the region lives as long as this value; each slot index is in the free queue at most
// once (pushed only when its owner gives it back), so it is handed out at most once at a time.
unsafe impl ExternalSlots for Slots {
    #[inline]
    fn alloc(&self) -> Option<u32> {
        self.free.pop()
    }
    #[inline]
    fn free(&self, idx: u32) {
        let _ = self.free.push(idx);
    }
    fn in_use(&self) -> usize {
        self.free.capacity() - self.free.len()
    }
}

/// The shared UMEM: its pool and its slots.
pub struct Umem {
    pub(super) pool: Pool,
    pub(super) slots: Arc<Slots>,
}

/// The last port using the UMEM is gone, so every socket is closed: the kernel holds no slot
/// any more, and the ones still lent (groups kept out at their close: see `Holder`) go back
/// to the free queue, so that the pool sees only buffers still out.
impl Drop for Umem {
    fn drop(&mut self) {
        for (i, l) in self.slots.lent.iter().enumerate() {
            if l.swap(0, Ordering::Relaxed) != 0 {
                self.slots.free(i as u32);
            }
        }
    }
}

impl std::fmt::Debug for Umem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Umem").field("slots", &UMEM_SLOTS).finish()
    }
}

fn registry() -> &'static Mutex<Weak<Umem>> {
    static R: Mutex<Weak<Umem>> = Mutex::new(Weak::new());
    &R
}

/// A socket bound to one queue, sharing the process's UMEM (registering it if it is the first).
pub(super) struct Bound {
    pub umem: Arc<Umem>,
    pub sock: Arc<OwnedFd>,
    pub rx: sys::Ring<sys::XdpDesc>,
    pub tx: sys::Ring<sys::XdpDesc>,
    pub fill: sys::Ring<u64>,
    pub comp: sys::Ring<u64>,
    /// The socket's ring group: for the RX and TX parts to hold as their last field.
    pub holder: Arc<Holder>,
}

/// A socket's hold on its ring group's slots: the tag it lends them under, and the return of
/// every slot still lent to the group once the socket is closed (a bind that holds the socket
/// open for a moment, to name it in XDP_SHARED_UMEM, does so under `Slots::live`, which the
/// holder takes before it looks). Dropped after the socket's rings and descriptor (the RX and
/// TX parts keep it as their last field), so when the last holder goes the socket is
/// released: the last
/// `munmap` or `close` of an AF_XDP socket runs the kernel's `xsk_release` before it returns
/// to user space, which unbinds the socket (removed from the XSKMAP and the device's TX list,
/// then `synchronize_net`): in copy mode nothing in the kernel reads the fill or TX ring or
/// writes a slot after that. Frames the kernel took from a TX ring and has not completed may
/// still be read by the device (an skb over UMEM pages, `IFF_TX_SKB_NO_LINEAR`), so the TX
/// part waits a little for their completions and quarantines the group where some are
/// missing (`Holder::quarantine`). In zero-copy mode the driver keeps the fill addresses it
/// took in its hardware ring until the kernel's deferred pool release (`xp_release_deferred`,
/// on a work queue after close returns: a bind on the queue just closed meets EBUSY for 1-7
/// ms), which user space cannot see: a zero-copy group's slots stay lent until the UMEM goes
/// (at most `3 * RING_DEPTH` a closed queue, on drivers whose ports are not opened and closed
/// with pods; veth has no zero-copy).
pub(super) struct Holder {
    pub(super) slots: Arc<Slots>,
    pub(super) tag: u32,
    /// The socket's descriptor: dead when the holder goes, or nothing is given back.
    sock: Weak<OwnedFd>,
    /// Slots of the group may still be in the kernel's hands after close.
    kept: AtomicBool,
}

impl Holder {
    /// Keeps every slot lent to the group out until the UMEM goes: the kernel may still use
    /// some after the socket is closed (zero-copy, or a TX frame not completed).
    pub(super) fn quarantine(&self) {
        self.kept.store(true, Ordering::Relaxed);
    }

    /// Whether this holder gives its group's slots back at the close: not quarantined. The
    /// TX part drains its frames only then.
    pub(super) fn gives_back(&self) -> bool {
        !self.kept.load(Ordering::Relaxed)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.slots.queues.fetch_sub(1, Ordering::Relaxed);
        if !self.gives_back() {
            return;
        }
        let live = self.slots.live.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.sock.strong_count() != 0;
        drop(live);
        if open {
            // Someone still holds the socket open (a bug): better lent than in two hands.
            tracing::warn!(tag = self.tag, "AF_XDP socket still open at its close: its slots stay out");
            return;
        }
        let n = self.slots.reclaim(self.tag);
        tracing::debug!(tag = self.tag, slots = n, "AF_XDP socket closed: its slots are back");
    }
}

/// Slots of the process's UMEM in its free queue now: not lent to a socket's fill or TX ring
/// (a closed socket's come back at its close, but for a zero-copy group: see `Holder`), not
/// out as a buffer or in a pool cache. `None` while no AF_XDP port is open: the next one
/// makes a whole new UMEM.
pub fn free_slots() -> Option<usize> {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.upgrade().map(|u| u.slots.free.len())
}

fn set_u32(fd: &OwnedFd, opt: libc::c_int, v: u32) -> io::Result<()> {
    crate::netdev::setsockopt(fd.as_raw_fd(), sys::SOL_XDP, opt, &v)
}

/// How long a bind waits for the kernel to let go of a queue whose last socket was closed
/// (its buffer pool leaves the queue in a deferred release, after close returns: 1-7 ms
/// measured on a loaded 2-core machine).
const QUEUE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds `sock` to `queue` of `ifindex` with rings of its own, sharing the UMEM of one of
/// the sockets bound to it so far: the most recent that is still bound (one whose interface
/// was deleted is unbound: EBADF). With none bound, the region of `slots` is registered again
/// as the UMEM of `sock`. EBUSY on a queue none of ours is bound to is a closed socket's
/// buffer pool the kernel has not yet taken off the queue: tried again for a while. Returns
/// `sock`, listed among the sockets bound.
fn bind_shared(sock: OwnedFd, slots: &Slots, ifindex: u32, queue: u32) -> io::Result<Arc<OwnedFd>> {
    let t0 = std::time::Instant::now();
    let mut registered = false;
    loop {
        // Held while the sockets named are held open here (a closing socket's holder looks
        // whether its socket is closed under it), never across a sleep.
        let mut l = slots.live.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|(w, _)| w.strong_count() > 0);
        let ours = l.iter().any(|(_, at)| *at == (ifindex, queue));
        let mut r = Err(io::Error::from_raw_os_error(libc::EBADF));
        if !registered {
            for (w, _) in l.iter().rev() {
                let Some(s) = w.upgrade() else { continue };
                r = sys::bind(sock.as_raw_fd(), ifindex, queue, Some(s.as_raw_fd()));
                if r.as_ref().err().and_then(io::Error::raw_os_error) != Some(libc::EBADF) {
                    break;
                }
            }
        }
        if r.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EBADF) {
            if !registered {
                register(&sock, slots)?;
                registered = true;
            }
            r = sys::bind(sock.as_raw_fd(), ifindex, queue, None);
        }
        match r {
            Ok(()) => {
                let sock = Arc::new(sock);
                l.push((Arc::downgrade(&sock), (ifindex, queue)));
                return Ok(sock);
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !ours && t0.elapsed() < QUEUE_RELEASE_WAIT => {
                drop(l);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Registers the region of `slots` as the UMEM of `sock` (the kernel pins its pages while a
/// socket uses it).
fn register(sock: &OwnedFd, slots: &Slots) -> io::Result<()> {
    let r = sys::UmemReg {
        addr: slots.base.as_ptr() as u64,
        len: slots.len as u64,
        chunk_size: SLOT_SIZE as u32,
        headroom: 0,
        flags: sys::XDP_UMEM_UNALIGNED_CHUNK_FLAG,
        tx_metadata_len: 0,
    };
    crate::netdev::setsockopt(sock.as_raw_fd(), sys::SOL_XDP, sys::XDP_UMEM_REG, &r)
}

/// Opens a socket on queue `queue` of `ifindex` with rings of `depth` entries.
pub(super) fn bind_queue(ifindex: u32, queue: u32, depth: u32) -> io::Result<Bound> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    let sock = sys::xdp_socket()?;
    let existing = reg.upgrade();
    let fresh = match &existing {
        Some(_) => None,
        None => {
            let slots = Arc::new(Slots::new(UMEM_SLOTS)?);
            // SAFETY: the region is UMEM_SLOTS slots of SLOT_SIZE bytes that `slots` owns and
            // keeps mapped while it lives; `slots` keeps the ExternalSlots contract (above).
            let pool = unsafe { Pool::external("afxdp-umem", slots.base, UMEM_SLOTS, slots.clone()) }
                .map_err(|e| io::Error::other(e.to_string()))?;
            Some((slots, pool))
        }
    };
    let slots = match (&existing, &fresh) {
        (Some(u), _) => u.slots.clone(),
        (None, Some((s, _))) => s.clone(),
        (None, None) => return Err(io::Error::other("no UMEM to share")),
    };
    set_u32(&sock, sys::XDP_UMEM_FILL_RING, depth)?;
    set_u32(&sock, sys::XDP_UMEM_COMPLETION_RING, depth)?;
    set_u32(&sock, sys::XDP_RX_RING, depth)?;
    set_u32(&sock, sys::XDP_TX_RING, depth)?;
    let rx = sys::Ring::map(&sock, sys::Which::Rx, depth)?;
    let tx = sys::Ring::map(&sock, sys::Which::Tx, depth)?;
    let fill = sys::Ring::map(&sock, sys::Which::Fill, depth)?;
    let comp = sys::Ring::map(&sock, sys::Which::Completion, depth)?;
    let sock = bind_shared(sock, &slots, ifindex, queue)?;
    let zero_copy = sys::zero_copy(sock.as_raw_fd());
    let umem = match (existing, fresh) {
        (Some(u), _) => u,
        (None, Some((slots, pool))) => {
            let u = Arc::new(Umem { pool, slots });
            *reg = Arc::downgrade(&u);
            u
        }
        (None, None) => return Err(io::Error::other("no UMEM to share")),
    };
    // Counted before the holder exists: its drop uncounts.
    umem.slots.queues.fetch_add(1, Ordering::Relaxed);
    let holder = Arc::new(Holder {
        slots: umem.slots.clone(),
        tag: umem.slots.new_tag(),
        sock: Arc::downgrade(&sock),
        kept: AtomicBool::new(zero_copy),
    });
    Ok(Bound { umem, sock, rx, tx, fill, comp, holder })
}
