//! A worker's cache of free buffers in front of a pool. Invariant: the cache's count of free
//! buffers is published on every operation ([`Held`]), so that [`Pool::in_use`] counts
//! exactly the buffers held outside the pool and its caches.

use super::packet::PacketBuf;
use super::pool::PoolShared;
use super::{Pool, CACHE_BULK, CACHE_MAX};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

impl Pool {
    /// A per-worker cache in front of this pool.
    pub fn cache(&self) -> PoolCache {
        let held = Arc::new(Held(AtomicUsize::new(0)));
        self.shared().caches.lock().unwrap_or_else(|e| e.into_inner()).push(held.clone());
        PoolCache { pool: self.clone(), free: Vec::with_capacity(CACHE_MAX), held }
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
pub(super) struct Held(pub(super) AtomicUsize);

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
