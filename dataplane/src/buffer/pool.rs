//! A pool's memory and its shared free queue. Invariant: the region is unmapped only when no
//! buffer of the pool is out (see [`PoolOwner`]'s drop), so a buffer never points into freed
//! memory.

use super::cache::Held;
use super::external::ExternalSlots;
use super::packet::PacketBuf;
use super::{advise_huge, BufferError, HUGEPAGE, SLOT_SIZE};
use crossbeam_queue::ArrayQueue;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) enum Region {
    Huge(memmap2::MmapMut),
    Plain(memmap2::MmapMut),
    /// Memory of another allocator, which frees slots through these hooks.
    External(Arc<dyn ExternalSlots>),
}

pub(super) struct PoolShared {
    pub(super) name: String,
    pub(super) base: NonNull<u8>,
    pub(super) count: usize,
    pub(super) free: ArrayQueue<u32>,
    /// Each live cache's count of free buffers it holds, published with a plain store on every
    /// operation (no read-modify-write on the fast path, nothing shared between workers).
    pub(super) caches: std::sync::Mutex<Vec<Arc<Held>>>,
    pub(super) region: Region,
}

// SAFETY: the raw base pointer refers to the pool's own mapping, which lives as long as the
// PoolShared; all cross-thread state is in atomics or the lock-free queue.
unsafe impl Send for PoolShared {}
// SAFETY: as above; shared access only goes through atomics and the ArrayQueue.
unsafe impl Sync for PoolShared {}

impl PoolShared {
    #[inline]
    pub(super) fn slot_ptr(&self, idx: u32) -> NonNull<u8> {
        debug_assert!((idx as usize) < self.count);
        // SAFETY: idx < count, so the offset lies inside the mapping of count * SLOT_SIZE bytes.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(idx as usize * SLOT_SIZE)) }
    }

    pub(super) fn in_use(&self) -> usize {
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
    pub(super) fn take(&self) -> Option<u32> {
        match &self.region {
            Region::External(ext) => ext.alloc(),
            _ => self.free.pop(),
        }
    }

    /// Gives a slot back: to the owner for an external pool, else to the shared queue.
    #[inline]
    pub(super) fn give(&self, idx: u32) {
        match &self.region {
            Region::External(ext) => ext.free(idx),
            // Cannot fail: the queue has room for every slot of the pool.
            _ => {
                let _ = self.free.push(idx);
            }
        }
    }
}

pub(super) struct PoolOwner(pub(super) NonNull<PoolShared>);

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
    pub(super) owner: Arc<PoolOwner>,
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

    pub(super) fn from_shared(
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

    #[inline]
    pub(super) fn shared(&self) -> &PoolShared {
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

    /// Takes one buffer from the shared queue (slow path; workers use a [`PoolCache`](super::PoolCache)).
    pub fn alloc(&self) -> Option<PacketBuf> {
        let s = self.shared();
        s.take().map(|idx| PacketBuf::fresh(self.owner.0, s, idx))
    }
}
