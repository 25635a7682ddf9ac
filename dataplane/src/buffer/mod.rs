//! Packet buffers: one fixed-size buffer type for the whole dataplane, carved out of one
//! memory region per pool (hugepages when the kernel has them, ordinary pages otherwise).
//!
//! Invariants this module keeps:
//! - Every slot is owned by exactly one of: the pool's shared free queue, one [`PoolCache`], or
//!   one [`PacketBuf`]. A `PacketBuf` is the only handle to its slot's bytes, so `&mut` access
//!   through it is exclusive.
//! - A `PacketBuf` dropped anywhere goes back to the shared free queue (slow path); the hot path
//!   returns buffers to a per-worker [`PoolCache`] instead. Either way nothing leaks, and
//!   [`Pool::in_use`] counts exactly the buffers held outside the pool and its caches.
//! - The region is unmapped only when no buffer is out. If the last [`Pool`] handle goes away
//!   while buffers are still out, the region is deliberately leaked (and logged), so a stray
//!   buffer can never point into freed memory.
//! - `head + len <= SLOT_SIZE` for every buffer, always: every method that moves either checks.
//!
//! External pools ([`Pool::external`]): the slots live in memory that another allocator owns
//! (the DPDK port backend: each slot is the pinned data buffer of one mbuf). The same
//! invariants hold, with "the pool's shared free queue" read as "the owner" ([`ExternalSlots`]):
//! - Every slot is owned by exactly one of: the owner, one [`PoolCache`] of the pool, or one
//!   [`PacketBuf`]. A slot enters switchyard only through [`ExternalSlots::alloc`] or
//!   [`Pool::adopt`] (the owner hands it over) and leaves only through
//!   [`ExternalSlots::free`] (drop, cache flush) or [`PacketBuf::release_to`] (handed back to
//!   the owner's side by the caller). The shared free queue of an external pool is never used.
//! - [`Pool::in_use`] of an external pool is the owner's count of slots out of its hands
//!   ([`ExternalSlots::in_use`], which may include slots the owner lent elsewhere, e.g. to a
//!   device ring) less the slots in caches.
//! - The region belongs to the owner; the pool keeps the owner alive (an `Arc`) as long as the
//!   pool's shared state lives, which is as long as any buffer or cache of it is out.
//! - `head + len <= SLOT_SIZE` holds for adopted buffers too: [`Pool::adopt`] checks it.

use arrayvec::ArrayVec;
use crossbeam_queue::ArrayQueue;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::wire::{EtherType, MAC_ADDRS_LEN, VLAN_TAG_LEN};

/// Bytes in front of the frame, for pushing a VLAN tag or a tunnel header without a copy.
pub const HEADROOM: usize = 128;
/// Bytes for the frame itself.
pub const DATA_ROOM: usize = 2048;
/// One slot: headroom plus data room, a multiple of the 64-byte cache line.
pub const SLOT_SIZE: usize = HEADROOM + DATA_ROOM;
const HUGEPAGE: usize = 2 << 20;
/// How many buffers a cache moves to or from the shared queue at a time.
const CACHE_BULK: usize = 64;
/// A cache holds at most this many free buffers.
const CACHE_MAX: usize = 4 * CACHE_BULK;

/// Failures of the buffer layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    #[error("cannot map {bytes} bytes for pool {pool}: {reason}")]
    Map { pool: String, bytes: usize, reason: String },
    #[error("pool size must be between 1 and {max} buffers, not {asked}")]
    BadSize { asked: usize, max: usize },
    #[error("not enough room in the buffer: need {need} bytes, have {have}")]
    NoRoom { need: usize, have: usize },
    #[error("not enough headroom: need {need} bytes, have {have}")]
    NoHeadroom { need: usize, have: usize },
    #[error("frame too short for this operation ({0} bytes)")]
    TooShort(usize),
}

enum Region {
    Huge(memmap2::MmapMut),
    Plain(memmap2::MmapMut),
    /// Memory of another allocator, which frees slots through these hooks.
    External(Arc<dyn ExternalSlots>),
}

/// The owner of an external pool's slots (see the module documentation).
///
/// # Safety
/// An implementation must keep the pool's region (`count * SLOT_SIZE` bytes from `base`,
/// given to [`Pool::external`]) valid and unused by anyone else for every slot that
/// switchyard holds (from `alloc` or [`Pool::adopt`] until `free` or
/// [`PacketBuf::release_to`]), and must hand out each slot at most once at a time.
pub unsafe trait ExternalSlots: Send + Sync {
    /// Hands over one free slot (its index below the pool's count), or `None` when none is free.
    fn alloc(&self) -> Option<u32>;
    /// Takes slot `idx` back; switchyard does not touch it afterwards.
    fn free(&self, idx: u32);
    /// Slots out of the owner's hands (held by switchyard or lent elsewhere by the owner).
    fn in_use(&self) -> usize;
}

struct PoolShared {
    name: String,
    base: NonNull<u8>,
    count: usize,
    free: ArrayQueue<u32>,
    /// Each live cache's count of free buffers it holds, published with a plain store on every
    /// operation (no read-modify-write on the fast path, nothing shared between workers).
    caches: std::sync::Mutex<Vec<Arc<Held>>>,
    region: Region,
}

// SAFETY: the raw base pointer refers to the pool's own mapping, which lives as long as the
// PoolShared; all cross-thread state is in atomics or the lock-free queue.
unsafe impl Send for PoolShared {}
// SAFETY: as above; shared access only goes through atomics and the ArrayQueue.
unsafe impl Sync for PoolShared {}

impl PoolShared {
    #[inline]
    fn slot_ptr(&self, idx: u32) -> NonNull<u8> {
        debug_assert!((idx as usize) < self.count);
        // SAFETY: idx < count, so the offset lies inside the mapping of count * SLOT_SIZE bytes.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(idx as usize * SLOT_SIZE)) }
    }

    fn in_use(&self) -> usize {
        let cached: usize = self
            .caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum();
        match &self.region {
            Region::External(ext) => ext.in_use().saturating_sub(cached),
            _ => self.count.saturating_sub(self.free.len()).saturating_sub(cached),
        }
    }

    /// Takes a free slot: from the owner for an external pool, else from the shared queue.
    #[inline]
    fn take(&self) -> Option<u32> {
        match &self.region {
            Region::External(ext) => ext.alloc(),
            _ => self.free.pop(),
        }
    }

    /// Gives a slot back: to the owner for an external pool, else to the shared queue.
    #[inline]
    fn give(&self, idx: u32) {
        match &self.region {
            Region::External(ext) => ext.free(idx),
            // Cannot fail: the queue has room for every slot of the pool.
            _ => {
                let _ = self.free.push(idx);
            }
        }
    }
}

struct PoolOwner(NonNull<PoolShared>);

// SAFETY: PoolShared is Send + Sync; the owner only hands out shared references.
unsafe impl Send for PoolOwner {}
// SAFETY: as above.
unsafe impl Sync for PoolOwner {}

impl Drop for PoolOwner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw and is still live: it is freed only here.
        let shared = unsafe { self.0.as_ref() };
        let out = shared.in_use();
        if out == 0 {
            // SAFETY: no buffer and no cache refers to the pool any more (caches hold an Arc
            // to this owner, and in_use() == 0 says no buffer is out), so we own it alone.
            drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        } else {
            tracing::error!(
                pool = %shared.name,
                out,
                "buffer pool dropped with buffers still out; leaking its memory so they stay valid"
            );
        }
    }
}

/// A pool of packet buffers. Cheap to clone; all clones share the buffers.
#[derive(Clone)]
pub struct Pool {
    owner: Arc<PoolOwner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared().name)
            .field("count", &self.capacity())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Pool {
    /// Largest pool: slot indices are u32, and the mapping must stay addressable.
    pub const MAX_BUFFERS: usize = 1 << 24;

    /// Creates a pool of `count` buffers, trying hugepages first and falling back to ordinary
    /// pages with one log line.
    pub fn new(name: &str, count: usize) -> Result<Pool, BufferError> {
        Self::with_hugepages(name, count, true)
    }

    /// As [`Pool::new`]; `try_huge: false` skips the hugepage attempt.
    pub fn with_hugepages(name: &str, count: usize, try_huge: bool) -> Result<Pool, BufferError> {
        if count == 0 || count > Self::MAX_BUFFERS {
            return Err(BufferError::BadSize { asked: count, max: Self::MAX_BUFFERS });
        }
        let bytes = count * SLOT_SIZE;
        let huge_bytes = bytes.div_ceil(HUGEPAGE) * HUGEPAGE;
        let huge = if try_huge {
            memmap2::MmapOptions::new().len(huge_bytes).huge(None).map_anon().ok()
        } else {
            None
        };
        let region =
            match huge {
                Some(m) => Region::Huge(m),
                None => {
                    if try_huge {
                        tracing::info!(
                            pool = name,
                            bytes,
                            "no hugepages available; buffer pool uses ordinary pages"
                        );
                    }
                    let m = memmap2::MmapOptions::new().len(bytes).map_anon().map_err(|e| {
                        BufferError::Map { pool: name.to_string(), bytes, reason: e.to_string() }
                    })?;
                    advise_huge(|a| m.advise_range(a, 0, bytes));
                    Region::Plain(m)
                }
            };
        let mut region = region;
        let base = match &mut region {
            Region::Huge(m) | Region::Plain(m) => NonNull::new(m.as_mut_ptr()).ok_or_else(|| {
                BufferError::Map { pool: name.to_string(), bytes, reason: "null mapping".into() }
            })?,
            Region::External(_) => unreachable!("built above from a mapping"),
        };
        let free = ArrayQueue::new(count);
        for i in 0..count as u32 {
            // Cannot fail: the queue holds exactly `count`.
            let _ = free.push(i);
        }
        Ok(Self::from_shared(name, base, count, free, region))
    }

    fn from_shared(
        name: &str,
        base: NonNull<u8>,
        count: usize,
        free: ArrayQueue<u32>,
        region: Region,
    ) -> Pool {
        let shared = Box::new(PoolShared {
            name: name.to_string(),
            base,
            count,
            free,
            caches: std::sync::Mutex::new(Vec::new()),
            region,
        });
        let ptr = NonNull::from(Box::leak(shared));
        Pool { owner: Arc::new(PoolOwner(ptr)) }
    }

    /// A pool over `count` slots of [`SLOT_SIZE`] bytes from `base` that `owner` allocates and
    /// frees (see the module documentation). Buffers of it are dropped or freed into any cache
    /// like any other; they go back to `owner`.
    ///
    /// # Safety
    /// `base` must point to `count * SLOT_SIZE` bytes that stay valid while `owner` lives, and
    /// `owner` must keep the [`ExternalSlots`] contract for this region.
    pub unsafe fn external(
        name: &str,
        base: NonNull<u8>,
        count: usize,
        owner: Arc<dyn ExternalSlots>,
    ) -> Result<Pool, BufferError> {
        if count == 0 || count > Self::MAX_BUFFERS {
            return Err(BufferError::BadSize { asked: count, max: Self::MAX_BUFFERS });
        }
        // The shared queue of an external pool is never used; one entry is the least it takes.
        Ok(Self::from_shared(name, base, count, ArrayQueue::new(1), Region::External(owner)))
    }

    /// Whether the slots belong to an external owner ([`Pool::external`]).
    pub fn is_external(&self) -> bool {
        matches!(self.shared().region, Region::External(_))
    }

    /// Wraps slot `idx` of an external pool, holding the frame `[head, head + len)`, in a
    /// buffer; `None` (and nothing taken) when the pool is not external or the window or index
    /// is out of range.
    ///
    /// # Safety
    /// The caller hands over the slot: the owner has it out of its hands, nobody else uses it,
    /// and it is not held by any other buffer or cache. Dropping the buffer gives it back to
    /// the owner ([`ExternalSlots::free`]).
    #[inline]
    pub unsafe fn adopt(&self, idx: u32, head: u16, len: u16) -> Option<PacketBuf> {
        // SAFETY: the caller hands the slot over (contract).
        unsafe { self.adopter()?.adopt(idx, head, len) }
    }

    /// [`Pool::adopt`] for a whole burst: the checks that concern the pool (external, its
    /// size) done once. `None` when the pool is not external.
    #[inline]
    pub fn adopter(&self) -> Option<Adopter<'_>> {
        let s = self.shared();
        matches!(s.region, Region::External(_)).then_some(Adopter {
            pool: self.owner.0,
            count: s.count,
            _pool: std::marker::PhantomData,
        })
    }

    /// [`PacketBuf::release_to`] this pool for a whole burst (see [`Releaser`]).
    #[inline]
    pub fn releaser(&self) -> Releaser<'_> {
        Releaser { pool: self.owner.0, _pool: std::marker::PhantomData }
    }

    /// Whether `buf` is a buffer of this pool.
    #[inline]
    pub fn owns(&self, buf: &PacketBuf) -> bool {
        buf.pool == self.owner.0
    }

    #[inline]
    fn shared(&self) -> &PoolShared {
        // SAFETY: the PoolShared lives at least as long as any PoolOwner (see PoolOwner::drop).
        unsafe { self.owner.0.as_ref() }
    }

    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// Whether the region is backed by hugepages.
    pub fn on_hugepages(&self) -> bool {
        matches!(self.shared().region, Region::Huge(_))
    }

    pub fn capacity(&self) -> usize {
        self.shared().count
    }

    /// Buffers held outside the pool and its caches right now.
    pub fn in_use(&self) -> usize {
        self.shared().in_use()
    }

    /// Takes one buffer from the shared queue (slow path; workers use a [`PoolCache`]).
    pub fn alloc(&self) -> Option<PacketBuf> {
        let s = self.shared();
        s.take().map(|idx| PacketBuf::fresh(self.owner.0, s, idx))
    }

    /// A per-worker cache in front of this pool.
    pub fn cache(&self) -> PoolCache {
        let held = Arc::new(Held(AtomicUsize::new(0)));
        self.shared().caches.lock().unwrap_or_else(|e| e.into_inner()).push(held.clone());
        PoolCache { pool: self.clone(), free: Vec::with_capacity(CACHE_MAX), held }
    }
}

/// An external pool, checked once, adopting slots ([`Pool::adopter`]).
#[derive(Clone, Copy)]
pub struct Adopter<'a> {
    pool: NonNull<PoolShared>,
    count: usize,
    /// Borrows the pool: the PoolShared outlives the adopter.
    _pool: std::marker::PhantomData<&'a Pool>,
}

impl Adopter<'_> {
    /// Whether slot `idx` with the window `[head, head + len)` may become a buffer of the pool:
    /// a slot of it, the window inside the slot.
    #[inline(always)]
    fn admits(&self, idx: u32, head: u16, len: u16) -> bool {
        (idx as usize) < self.count && usize::from(head) + usize::from(len) <= SLOT_SIZE
    }

    /// The pool's number of slots: [`Adopter::adopt`] takes indices below it.
    #[inline]
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adopts onto the end of `out`, item by item, the slot and window `(idx, head, len)` that
    /// `window` finds for each item of `items`, as [`Adopter::adopt`] would, and stops at the
    /// first item for which `window` finds none or `adopt` would refuse, or when `out` is full.
    /// Returns how many were adopted: the first ones of `items`. A burst's common case: one
    /// loop with no capacity check or call in it, `out`'s length set once at its end.
    ///
    /// # Safety
    /// For each item adopted, as [`Pool::adopt`] for its slot: the caller hands it over.
    #[inline(always)]
    pub unsafe fn adopt_while<T: Copy, const N: usize>(
        &self,
        items: &[T],
        out: &mut ArrayVec<PacketBuf, N>,
        mut window: impl FnMut(T) -> Option<(u32, u16, u16)>,
    ) -> usize {
        let start = out.len();
        let items = &items[..items.len().min(N - start)];
        let dst = out.as_mut_ptr();
        let mut k = 0;
        for &item in items {
            let Some((idx, head, len)) = window(item) else { break };
            if !self.admits(idx, head, len) {
                break;
            }
            // start + k < N (items cut to the room left), so the element is in the array, at or
            // past its length: not initialized, and counted by set_len below.
            // SAFETY: in bounds and unused (above); the slot is handed over (contract).
            unsafe { dst.add(start + k).write(PacketBuf { pool: self.pool, idx, head, len }) };
            k += 1;
        }
        // SAFETY: the first start + k elements are initialized (above), start + k <= N.
        unsafe { out.set_len(start + k) };
        k
    }

    /// As [`Pool::adopt`] on the pool this adopter came from (which is external).
    ///
    /// # Safety
    /// As [`Pool::adopt`].
    #[inline]
    pub unsafe fn adopt(&self, idx: u32, head: u16, len: u16) -> Option<PacketBuf> {
        // Not `then_some`: that would build (and drop, freeing the slot) a buffer when refused.
        if self.admits(idx, head, len) {
            Some(PacketBuf { pool: self.pool, idx, head, len })
        } else {
            None
        }
    }
}

/// A pool's side of handing a burst's slots over in place (a TX path that passes each slot's
/// owner to a device): look at every buffer's window first, then release the buffers taken.
#[derive(Clone, Copy)]
pub struct Releaser<'a> {
    pool: NonNull<PoolShared>,
    _pool: std::marker::PhantomData<&'a Pool>,
}

impl Releaser<'_> {
    /// What [`PacketBuf::release_to`] would hand back, `(idx, head, len)`, without releasing:
    /// `None` for a buffer of another pool.
    #[inline]
    pub fn window(&self, b: &PacketBuf) -> Option<(u32, u16, u16)> {
        (b.pool == self.pool).then_some((b.idx, b.head, b.len))
    }

    /// Releases the first `n` buffers of `burst` as [`PacketBuf::release_to`] does: the caller
    /// has taken their slots over (each is of this pool: [`Releaser::window`] said so). The
    /// rest of the burst moves to its front.
    #[inline]
    pub fn release_front<const N: usize>(&self, burst: &mut ArrayVec<PacketBuf, N>, n: usize) {
        let n = n.min(burst.len());
        debug_assert!(
            burst[..n].iter().all(|b| b.pool == self.pool),
            "release_front: a buffer of another pool"
        );
        // Forgetting a handle hands its slot over: all release_to does for a buffer of this
        // pool.
        forget_front(burst, n);
    }
}

/// A per-worker cache of free buffers in front of a [`Pool`]: allocation and freeing touch
/// only this cache, except once every `CACHE_BULK` buffers.
pub struct PoolCache {
    pool: Pool,
    free: Vec<u32>,
    /// `free.len()`, published for [`Pool::in_use`].
    held: Arc<Held>,
}

/// A cache's published count, alone on its cache line so that workers never share one.
#[repr(align(64))]
struct Held(AtomicUsize);

impl PoolCache {
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A fresh, empty buffer (headroom reserved), or `None` when the pool is exhausted.
    #[inline]
    pub fn alloc(&mut self) -> Option<PacketBuf> {
        let s = self.pool.shared();
        if self.free.is_empty() {
            refill(&mut self.free, s);
        }
        let idx = self.free.pop()?;
        self.held.0.store(self.free.len(), Ordering::Relaxed);
        Some(PacketBuf::fresh(self.pool.owner.0, s, idx))
    }

    /// A new buffer holding a copy of `bytes`.
    pub fn alloc_copy(&mut self, bytes: &[u8]) -> Option<PacketBuf> {
        let mut b = self.alloc()?;
        b.extend_from_slice(bytes).ok()?;
        Some(b)
    }

    /// Returns a buffer. A buffer from another pool goes back to its own pool.
    #[inline]
    pub fn free(&mut self, buf: PacketBuf) {
        if buf.pool != self.pool.owner.0 {
            drop(buf);
            return;
        }
        let s = self.pool.shared();
        if self.free.len() >= CACHE_MAX {
            flush(&mut self.free, s, CACHE_BULK);
        }
        self.free.push(buf.idx);
        self.held.0.store(self.free.len(), Ordering::Relaxed);
        std::mem::forget(buf);
    }
}

#[cold]
fn refill(cache: &mut Vec<u32>, s: &PoolShared) {
    let mut n = 0;
    while n < CACHE_BULK {
        match s.take() {
            Some(i) => {
                cache.push(i);
                n += 1;
            }
            None => break,
        }
    }
}

#[cold]
fn flush(cache: &mut Vec<u32>, s: &PoolShared, n: usize) {
    let n = n.min(cache.len());
    for _ in 0..n {
        if let Some(i) = cache.pop() {
            s.give(i);
        }
    }
}

impl Drop for PoolCache {
    fn drop(&mut self) {
        let s = self.pool.shared();
        let n = self.free.len();
        flush(&mut self.free, s, n);
        self.held.0.store(0, Ordering::Relaxed);
        let mut list = s.caches.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|c| !Arc::ptr_eq(c, &self.held));
    }
}

/// One packet buffer: a slot of [`SLOT_SIZE`] bytes and the window `[head, head + len)` that
/// holds the frame.
///
/// The handle is 16 bytes (pool, slot index, window) so that bursts move cheaply.
pub struct PacketBuf {
    pool: NonNull<PoolShared>,
    idx: u32,
    head: u16,
    len: u16,
}

// SAFETY: a PacketBuf is the only handle to its slot (module invariant), and PoolShared is Sync.
unsafe impl Send for PacketBuf {}

impl Drop for PacketBuf {
    fn drop(&mut self) {
        // SAFETY: the pool outlives every buffer (PoolOwner leaks it while any is out).
        let s = unsafe { self.pool.as_ref() };
        s.give(self.idx);
    }
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf").field("idx", &self.idx).field("len", &self.len).finish()
    }
}

impl PacketBuf {
    #[inline]
    fn fresh(pool: NonNull<PoolShared>, _s: &PoolShared, idx: u32) -> PacketBuf {
        PacketBuf { pool, idx, head: HEADROOM as u16, len: 0 }
    }

    /// Hands the slot back to the caller when this is a buffer of `pool`: its index and the
    /// frame window `(idx, head, len)`. The caller then owns the slot (for an external pool:
    /// it gives it back to the owner's side, e.g. passes the mbuf to a device). A buffer of
    /// another pool comes back unchanged.
    #[inline]
    pub fn release_to(self, pool: &Pool) -> Result<(u32, u16, u16), PacketBuf> {
        if self.pool != pool.owner.0 {
            return Err(self);
        }
        let out = (self.idx, self.head, self.len);
        std::mem::forget(self);
        Ok(out)
    }

    #[inline]
    fn slot_ptr(&self) -> NonNull<u8> {
        // SAFETY: the pool outlives every buffer (PoolOwner leaks it while any is out), and
        // idx was handed out by this pool, so it is below its count.
        unsafe { self.pool.as_ref() }.slot_ptr(self.idx)
    }

    #[inline]
    fn slot_mut(&mut self) -> &mut [u8] {
        // SAFETY: the slot is SLOT_SIZE bytes inside the live mapping, this handle owns it, and
        // &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr().as_ptr(), SLOT_SIZE) }
    }

    /// The frame bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // Built from the window without a bounds check: every frame read goes through here.
        // head + len <= SLOT_SIZE (module invariant), so the window lies in this handle's slot,
        // SLOT_SIZE bytes inside the live mapping, which the handle owns.
        // SAFETY: the window is inside the slot this handle owns (above).
        unsafe {
            std::slice::from_raw_parts(self.slot_ptr().as_ptr().add(self.head as usize), self.len as usize)
        }
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in data(); &mut self makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.slot_ptr().as_ptr().add(self.head as usize),
                self.len as usize,
            )
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    #[inline]
    pub fn tailroom(&self) -> usize {
        SLOT_SIZE - self.head as usize - self.len as usize
    }

    /// Empties the buffer and restores the default headroom.
    #[inline]
    pub fn reset(&mut self) {
        self.head = HEADROOM as u16;
        self.len = 0;
    }

    /// Appends bytes at the tail.
    #[inline]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), BufferError> {
        let room = self.tailroom();
        if bytes.len() > room {
            return Err(BufferError::NoRoom { need: bytes.len(), have: room });
        }
        let start = self.head as usize + self.len as usize;
        self.slot_mut()[start..start + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u16;
        Ok(())
    }

    /// Grows or shrinks the frame at the tail (new bytes hold whatever the slot held).
    pub fn set_len(&mut self, len: usize) -> Result<(), BufferError> {
        let have = SLOT_SIZE - self.head as usize;
        if len > have {
            return Err(BufferError::NoRoom { need: len, have });
        }
        self.len = len as u16;
        Ok(())
    }

    /// Room for the bytes of a writer: the whole tail of the slot, for a receive path that
    /// copies in place then calls [`PacketBuf::set_len`].
    pub fn tail_mut(&mut self) -> &mut [u8] {
        let start = self.head as usize + self.len as usize;
        &mut self.slot_mut()[start..]
    }

    /// Grows the frame by `n` bytes at the front and returns them.
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufferError> {
        let have = self.head as usize;
        if n > have {
            return Err(BufferError::NoHeadroom { need: n, have });
        }
        self.head -= n as u16;
        self.len += n as u16;
        let h = self.head as usize;
        Ok(&mut self.slot_mut()[h..h + n])
    }

    /// Removes `n` bytes from the front.
    pub fn trim_front(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.len as usize {
            return Err(BufferError::TooShort(self.len as usize));
        }
        self.head += n as u16;
        self.len -= n as u16;
        Ok(())
    }

    /// Inserts an 802.1Q tag (TPID 0x8100, `tci`) after the two MAC addresses, using headroom.
    #[inline]
    pub fn push_vlan(&mut self, tci: u16) -> Result<(), BufferError> {
        const ADDRS: usize = MAC_ADDRS_LEN;
        const TAG: usize = VLAN_TAG_LEN;
        if self.len < ADDRS as u16 {
            return Err(BufferError::TooShort(self.len as usize));
        }
        if self.head < TAG as u16 {
            return Err(BufferError::NoHeadroom { need: TAG, have: self.head as usize });
        }
        let h = self.head as usize;
        let s = self.slot_mut();
        // The addresses move TAG bytes to the front; the tag goes into the gap behind them.
        s.copy_within(h..h + ADDRS, h - TAG);
        s[h + ADDRS - TAG..h + ADDRS - TAG + 2].copy_from_slice(&EtherType::VLAN.to_be_bytes());
        s[h + ADDRS - TAG + 2..h + ADDRS].copy_from_slice(&tci.to_be_bytes());
        self.head -= TAG as u16;
        self.len += TAG as u16;
        Ok(())
    }

    /// Removes the 4 bytes after the two MAC addresses (the outer tag). The caller has checked
    /// that the frame is tagged.
    #[inline]
    pub fn pop_vlan(&mut self) -> Result<(), BufferError> {
        if self.len < (MAC_ADDRS_LEN + VLAN_TAG_LEN) as u16 {
            return Err(BufferError::TooShort(self.len as usize));
        }
        let h = self.head as usize;
        self.slot_mut().copy_within(h..h + MAC_ADDRS_LEN, h + VLAN_TAG_LEN);
        self.head += VLAN_TAG_LEN as u16;
        self.len -= VLAN_TAG_LEN as u16;
        Ok(())
    }
}

/// Moves the first `n` buffers of `from` to the end of `to`, in order, as one copy of their
/// handles (a burst handed to a TX batch whole); the rest of `from` moves to its front. Moves
/// as many as fit when `n` is more than `from` holds or `to` has room for.
#[inline]
pub fn move_front<const A: usize, const B: usize>(
    from: &mut ArrayVec<PacketBuf, A>,
    to: &mut ArrayVec<PacketBuf, B>,
    n: usize,
) {
    let n = n.min(from.len()).min(to.remaining_capacity());
    let at = to.len();
    // The n handles are copied bitwise into n free places of `to` (n is within its spare
    // capacity and within `from`), which then holds them as its elements at..at + n; `from`
    // forgets them below, so each buffer keeps exactly one handle.
    // SAFETY: n initialised handles into n spare places; the length set counts them.
    unsafe {
        std::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr().add(at), n);
        to.set_len(at + n);
    }
    forget_front(from, n);
}

/// Removes the first `n` handles of `burst` (at most its length) without dropping them: their
/// slots are held elsewhere now (copied into another burst, or handed to their owner). The
/// rest moves to the front, in order.
#[inline]
fn forget_front<const N: usize>(burst: &mut ArrayVec<PacketBuf, N>, n: usize) {
    let n = n.min(burst.len());
    let rest = burst.len() - n;
    // The rest (n..len, initialised) moves to the front (ptr::copy: the ranges may overlap)
    // and the length becomes rest, so every handle left is initialised and held once; the n
    // forgotten ones are overwritten or cut off, never dropped or used again from here.
    // SAFETY: initialised handles moved within the burst's storage, each held once (above).
    unsafe {
        // Nothing left to move when the whole burst goes (a burst handed over whole): no call.
        if rest != 0 {
            let p = burst.as_mut_ptr();
            std::ptr::copy(p.add(n), p, rest);
        }
        burst.set_len(rest);
    }
}

/// Asks the kernel for transparent huge pages (fewer TLB misses for memory every frame
/// touches) through `advise`, which applies the advice to the range in question. Only advice:
/// where the kernel has no THP, or only for part of the range, the memory stays ordinary pages
/// and works the same.
fn advise_huge(advise: impl FnOnce(memmap2::Advice) -> std::io::Result<()>) {
    #[cfg(target_os = "linux")]
    if let Err(e) = advise(memmap2::Advice::HugePage) {
        tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) refused; ordinary pages");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = advise;
}

/// Zeroed memory for a large table of atomic pairs (the MAC table's slots); from 2 MiB up,
/// aligned to 2 MiB and advised onto transparent huge pages: a table of 1M entries is 64 MiB
/// that every frame touches at random, one TLB miss per lookup on 4 KiB pages. Lives as long
/// as the value. The memory is only ever accessed through the atomics of [`AtomicPairs::pairs`]
/// (the mapping is held as an `MmapRaw`, so no `&[u8]` over it ever exists).
pub struct AtomicPairs {
    map: memmap2::MmapRaw,
    /// Offset of the first pair in `map` (the first 2 MiB boundary for a large table, else 0).
    offset: usize,
    len: usize,
}

impl AtomicPairs {
    /// `len` pairs of zeroed `AtomicU64`s (at least one).
    pub fn zeroed(len: usize) -> Result<AtomicPairs, BufferError> {
        let len = len.max(1);
        let err = |bytes: usize, reason: &str| BufferError::Map {
            pool: "mac table".into(),
            bytes,
            reason: reason.into(),
        };
        let bytes = len
            .checked_mul(std::mem::size_of::<[AtomicU64; 2]>())
            .filter(|&b| b <= isize::MAX as usize - HUGEPAGE)
            .ok_or_else(|| err(usize::MAX, "size overflows"))?;
        // A table smaller than a huge page stays on ordinary pages (a huge page would commit
        // 2 MiB for it). A larger one gets room to start at a 2 MiB boundary wherever the
        // kernel puts the mapping.
        let huge = bytes >= HUGEPAGE;
        let total = if huge { bytes + HUGEPAGE } else { bytes };
        let map =
            memmap2::MmapOptions::new().len(total).map_anon().map_err(|e| err(bytes, &e.to_string()))?;
        let map = memmap2::MmapRaw::from(map);
        let start = map.as_mut_ptr() as usize;
        let offset = if huge { start.next_multiple_of(HUGEPAGE) - start } else { 0 };
        if huge {
            advise_huge(|a| map.advise_range(a, offset, bytes));
        }
        Ok(AtomicPairs { map, offset, len })
    }

    /// The pairs.
    pub fn pairs(&self) -> &[[AtomicU64; 2]] {
        // Why this holds: offset + len * 16 <= the mapping's length (zeroed() mapped len * 16
        // bytes, plus 2 MiB when the offset may be non-zero, and the offset is below 2 MiB);
        // the start is page aligned, more than AtomicU64 needs; the pointer comes from the raw
        // mapping (writable, no reference over the bytes exists); an anonymous mapping is
        // zero-filled and all-zero bytes are a valid AtomicU64; the mapping lives as long as
        // &self; the bytes are only ever accessed through these atomics, and shared access is
        // what atomics are for.
        let first = self.map.as_mut_ptr().wrapping_add(self.offset).cast::<[AtomicU64; 2]>();
        // SAFETY: `len` valid, aligned, zero-initialised pairs at `first` for as long as &self.
        unsafe { std::slice::from_raw_parts(first, self.len) }
    }
}

impl std::fmt::Debug for AtomicPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicPairs").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the machine has hugepages (a hugetlbfs mounted and enough of them free), a pool
    /// made as the dataplane makes its pools ([`Pool::new`]) is on them: by its own report,
    /// and by the kernel's page size for the mapping that holds its buffers. A silent fallback
    /// to ordinary pages fails.
    #[test]
    fn pools_are_on_hugepages_when_the_machine_has_them() {
        let test = "pools_are_on_hugepages_when_the_machine_has_them";
        let count = 1024;
        let bytes = (count * SLOT_SIZE) as u64;
        let huge = match testkit::probe::hugepages(1) {
            Ok(h) if h.free >= bytes.div_ceil(h.page_bytes) => h,
            Ok(h) => {
                let need = bytes.div_ceil(h.page_bytes);
                return testkit::skip(
                    test,
                    &format!("{} free hugepages, fewer than the {need} needed", h.free),
                );
            }
            Err(why) => return testkit::skip(test, &why),
        };
        let pool = Pool::new("huge-check", count).unwrap();
        assert!(pool.on_hugepages(), "the pool fell back to ordinary pages with {huge:?} free");
        let b = pool.alloc().unwrap();
        let (page, hugetlb) = testkit::probe::page_size_at(b.data().as_ptr() as usize).unwrap();
        assert_eq!(page, huge.page_bytes, "the kernel's page size for the pool's mapping");
        assert!(hugetlb, "the pool's mapping is not hugetlb memory");
        // A pool asked for ordinary pages gets them (the probe tells the two apart).
        let plain = Pool::with_hugepages("plain-check", count, false).unwrap();
        let c = plain.alloc().unwrap();
        assert!(!plain.on_hugepages());
        assert_ne!(testkit::probe::page_size_at(c.data().as_ptr() as usize).unwrap().0, huge.page_bytes);
    }

    #[test]
    fn atomic_pairs_are_zeroed_aligned_and_usable_end_to_end() {
        for len in [1usize, 64, HUGEPAGE / 16, 3 * HUGEPAGE / 16 + 5] {
            let t = AtomicPairs::zeroed(len).expect("map");
            let p = t.pairs();
            assert_eq!(p.len(), len);
            assert!(p.iter().all(|s| s[0].load(Ordering::Relaxed) == 0 && s[1].load(Ordering::Relaxed) == 0));
            if len * 16 >= HUGEPAGE {
                assert_eq!(p.as_ptr() as usize % HUGEPAGE, 0, "a large table starts on a 2 MiB boundary");
            }
            p[0][0].store(1, Ordering::Relaxed);
            p[len - 1][1].store(u64::MAX, Ordering::Relaxed);
            assert_eq!(p[0][0].load(Ordering::Relaxed), 1);
            assert_eq!(p[len - 1][1].load(Ordering::Relaxed), u64::MAX);
        }
        assert_eq!(AtomicPairs::zeroed(0).expect("map").pairs().len(), 1, "never empty");
        assert!(AtomicPairs::zeroed(usize::MAX / 8).is_err(), "a size that overflows is refused");
    }

    #[test]
    fn move_front_moves_handles_in_order_and_loses_none() {
        let pool = Pool::new("mv", 256).unwrap();
        let mut cache = pool.cache();
        let frame = |c: &mut PoolCache, i: u8| c.alloc_copy(&[i; 20]).unwrap();
        let firsts = |v: &ArrayVec<PacketBuf, 8>| v.iter().map(|b| b.data()[0]).collect::<Vec<_>>();
        for (from_len, to_len, n) in [(5, 0, 5), (5, 2, 3), (5, 6, 5), (3, 0, 7), (0, 4, 2), (8, 8, 1)] {
            let mut from: ArrayVec<PacketBuf, 8> = (0..from_len).map(|i| frame(&mut cache, i)).collect();
            let mut to: ArrayVec<PacketBuf, 8> = (0..to_len).map(|i| frame(&mut cache, 100 + i)).collect();
            move_front(&mut from, &mut to, n);
            let moved = n.min(usize::from(from_len)).min(8 - usize::from(to_len));
            let want_to: Vec<u8> = (0..to_len).map(|i| 100 + i).chain(0..moved as u8).collect();
            assert_eq!(firsts(&to), want_to, "{from_len} {to_len} {n}");
            assert_eq!(firsts(&from), (moved as u8..from_len).collect::<Vec<_>>(), "{from_len} {to_len} {n}");
            assert_eq!(pool.in_use(), usize::from(from_len) + usize::from(to_len));
            from.drain(..).chain(to.drain(..)).for_each(|b| cache.free(b));
            assert_eq!(pool.in_use(), 0);
        }
    }

    #[test]
    fn handle_is_16_bytes() {
        assert_eq!(std::mem::size_of::<PacketBuf>(), 16);
    }

    #[test]
    fn alloc_free_accounting() {
        let pool = Pool::with_hugepages("t", 300, false).unwrap();
        let mut cache = pool.cache();
        let mut held: Vec<_> = (0..300).map(|_| cache.alloc().unwrap()).collect();
        assert_eq!(pool.in_use(), 300);
        assert!(cache.alloc().is_none());
        for b in held.drain(..150) {
            cache.free(b);
        }
        assert_eq!(pool.in_use(), 150);
        drop(held); // Drop path returns to the shared queue.
        assert_eq!(pool.in_use(), 0);
        drop(cache);
        assert_eq!(pool.in_use(), 0);
        assert!(pool.alloc().is_some());
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn vlan_push_pop_round_trip() {
        let pool = Pool::with_hugepages("t", 4, false).unwrap();
        let mut b = pool.alloc().unwrap();
        let frame: Vec<u8> = (0..60u8).collect();
        b.extend_from_slice(&frame).unwrap();
        b.push_vlan(0x2064).unwrap();
        assert_eq!(b.len(), 64);
        assert_eq!(&b.data()[..12], &frame[..12]);
        assert_eq!(&b.data()[12..16], &[0x81, 0x00, 0x20, 0x64]);
        assert_eq!(&b.data()[16..], &frame[12..]);
        b.pop_vlan().unwrap();
        assert_eq!(b.data(), &frame[..]);
    }

    #[test]
    fn bounds_are_errors() {
        let pool = Pool::with_hugepages("t", 2, false).unwrap();
        let mut b = pool.alloc().unwrap();
        assert!(b.extend_from_slice(&vec![0u8; DATA_ROOM + 1]).is_err());
        assert!(b.extend_from_slice(&vec![0u8; DATA_ROOM]).is_ok());
        assert!(b.extend_from_slice(&[0u8]).is_err());
        b.reset();
        assert!(b.pop_vlan().is_err());
        assert!(b.push_vlan(1).is_err());
        assert!(b.prepend(HEADROOM + 1).is_err());
        assert!(b.prepend(HEADROOM).is_ok());
        assert!(b.trim_front(HEADROOM + 1).is_err());
    }

    /// A toy owner: a Vec of slots and a free list.
    struct Toy {
        mem: Box<[u8]>,
        free: std::sync::Mutex<Vec<u32>>,
        count: usize,
    }

    // SAFETY: the region is the Box, alive as long as Toy; the free list hands out each slot once.
    unsafe impl ExternalSlots for Toy {
        fn alloc(&self) -> Option<u32> {
            self.free.lock().unwrap().pop()
        }
        fn free(&self, idx: u32) {
            let mut f = self.free.lock().unwrap();
            assert!(!f.contains(&idx), "slot {idx} freed twice");
            f.push(idx);
        }
        fn in_use(&self) -> usize {
            self.count - self.free.lock().unwrap().len()
        }
    }

    /// A toy owner of `count` slots, all free, and the external pool over them; the region's
    /// base too.
    fn toy_pool(name: &str, count: usize) -> (Arc<Toy>, NonNull<u8>, Pool) {
        let mut toy =
            Toy { mem: vec![0u8; count * SLOT_SIZE].into_boxed_slice(), free: Default::default(), count };
        toy.free.get_mut().unwrap().extend((0..count as u32).rev());
        let base = NonNull::new(toy.mem.as_mut_ptr()).unwrap();
        let toy = Arc::new(toy);
        // SAFETY: the region is toy.mem, count slots, kept alive by the Arc the pool holds.
        let ext = unsafe { Pool::external(name, base, count, toy.clone()) }.unwrap();
        (toy, base, ext)
    }

    #[test]
    fn external_pool_gives_slots_back_to_their_owner() {
        let count = 300;
        let (toy, base, ext) = toy_pool("ext", count);
        assert!(ext.is_external());
        let regular = Pool::with_hugepages("reg", 16, false).unwrap();
        let mut worker = regular.cache();
        // The owner hands a slot over with a frame in it (as an RX path would).
        let idx = toy.alloc().unwrap();
        // SAFETY: slot idx is out of the owner's hands and nobody else holds it.
        let mut b = unsafe { ext.adopt(idx, 100, 60) }.unwrap();
        assert_eq!(ext.in_use(), 1);
        assert_eq!((b.headroom(), b.len()), (100, 60));
        b.push_vlan(7).unwrap();
        // SAFETY: the offset stays inside toy.mem (slot idx, below count).
        assert_eq!(b.data().as_ptr(), unsafe { base.as_ptr().add(idx as usize * SLOT_SIZE + 96) });
        // Out-of-range windows and indices are refused.
        // SAFETY: nothing is taken when adopt refuses.
        assert!(unsafe { ext.adopt(0, 2000, 177) }.is_none());
        // SAFETY: as above: an index past the pool is refused, nothing taken.
        assert!(unsafe { ext.adopt(count as u32, 0, 0) }.is_none());
        // SAFETY: a pool that is not external refuses every adoption.
        assert!(unsafe { regular.adopt(0, 0, 0) }.is_none());
        // Freed into a worker cache of another pool: back to the owner.
        worker.free(b);
        assert_eq!(ext.in_use(), 0);
        // release_to hands the slot to the caller; a buffer of another pool comes back.
        let idx = toy.alloc().unwrap();
        // SAFETY: as above.
        let b = unsafe { ext.adopt(idx, 128, 10) }.unwrap();
        assert_eq!(b.release_to(&ext).unwrap(), (idx, 128, 10));
        assert_eq!(ext.in_use(), 1, "the caller holds it now");
        toy.free(idx);
        let r = worker.alloc().unwrap();
        let r = r.release_to(&ext).unwrap_err();
        worker.free(r);
        // Allocation through the pool and a cache of it takes from the owner and gives back.
        let mut c = ext.cache();
        let held: Vec<_> = (0..count).map(|_| c.alloc().unwrap()).collect();
        assert!(c.alloc().is_none() && ext.alloc().is_none());
        assert_eq!(ext.in_use(), count);
        for b in held {
            c.free(b);
        }
        assert_eq!(ext.in_use(), 0, "cached slots are not in use");
        drop(c);
        assert_eq!(toy.in_use(), 0, "a dropped cache gives its slots back to the owner");
        drop(ext);
        assert_eq!(Arc::strong_count(&toy), 1, "the pool let go of its owner");
        drop(worker);
        assert_eq!(regular.in_use(), 0);
    }

    #[test]
    fn adopt_while_stops_at_the_first_refusal_and_at_capacity() {
        // Room for a worker cache's bulk (CACHE_BULK) and the slots handed over.
        let count = 200;
        let (toy, base, ext) = toy_pool("aw", count);
        let adopter = ext.adopter().unwrap();
        assert_eq!(adopter.count(), count);
        // Items: (slot or none, head, len); the window of an item is taken as is.
        type Item = (Option<u32>, u16, u16);
        let window = |(idx, head, len): Item| idx.map(|i| (i, head, len));
        // Slots the owner hands over for the items that are to be adopted.
        let take = |n: usize| (0..n).map(|_| toy.alloc().unwrap()).collect::<Vec<u32>>();
        let cases: [(&[Item], usize, usize); 5] = [
            // (items, buffers already in `out`, how many are adopted)
            (&[(Some(0), 128, 60), (Some(1), 0, 2176), (Some(2), 1, 1)], 0, 3),
            // No window: stops there.
            (&[(Some(0), 128, 60), (None, 0, 0), (Some(2), 1, 1)], 1, 1),
            // A window past the slot's end, an index past the pool: refused, stops there.
            (&[(Some(0), 2000, 177), (Some(1), 0, 1)], 0, 0),
            (&[(Some(0), 0, 1), (Some(count as u32), 0, 1)], 2, 1),
            // Room for two only.
            (&[(Some(0), 0, 1), (Some(1), 0, 2), (Some(2), 0, 3)], 6, 2),
        ];
        for (items, already, adopted) in cases {
            let mut out: ArrayVec<PacketBuf, 8> = ArrayVec::new();
            let mut c = ext.cache();
            out.extend((0..already).map(|_| c.alloc().unwrap()));
            // The items' slots, as the owner hands them over, for those that will be adopted.
            let slots = take(adopted);
            let items: Vec<Item> = items
                .iter()
                .enumerate()
                .map(|(i, &(idx, h, l))| (idx.map(|x| if i < adopted { slots[i] } else { x }), h, l))
                .collect();
            // SAFETY: the slots of the items adopted (the first `adopted`) were taken from the
            // owner above; the others are not taken (adopt_while stops before them).
            let n = unsafe { adopter.adopt_while(&items, &mut out, window) };
            assert_eq!(n, adopted, "{items:?}");
            assert_eq!(out.len(), already + adopted);
            for (b, &(idx, head, len)) in out[already..].iter().zip(&items) {
                let at = b.data().as_ptr() as usize - base.as_ptr() as usize;
                let want = idx.unwrap() as usize * SLOT_SIZE + usize::from(head);
                assert_eq!((at, b.len()), (want, usize::from(len)));
            }
            assert_eq!(ext.in_use(), already + adopted);
            out.drain(..).for_each(|b| c.free(b));
            drop(c);
            assert_eq!(toy.in_use(), 0, "every slot back with its owner");
        }
    }

    #[test]
    fn dropping_the_pool_with_buffers_out_keeps_them_valid() {
        let pool = Pool::with_hugepages("t", 2, false).unwrap();
        let mut b = pool.alloc().unwrap();
        drop(pool);
        b.extend_from_slice(&[1, 2, 3]).unwrap();
        assert_eq!(b.data(), &[1, 2, 3]);
    }
}
