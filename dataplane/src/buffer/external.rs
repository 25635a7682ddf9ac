//! Pools over slots that another allocator owns (the DPDK port backend: each slot is the
//! pinned data buffer of one mbuf); the invariants are the module's, read as in its
//! documentation. Invariant of this file: a slot becomes a buffer only through [`Adopter`]
//! (the window checked against the slot) and leaves only to its owner.

use super::packet::{forget_front, PacketBuf};
use super::pool::{PoolShared, Region};
use super::{BufferError, Pool, SLOT_SIZE};
use arrayvec::ArrayVec;
use crossbeam_queue::ArrayQueue;
use std::ptr::NonNull;
use std::sync::Arc;

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

impl Pool {
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
