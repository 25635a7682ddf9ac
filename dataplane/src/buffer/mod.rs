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

//!
//! The pieces: `pool` (the region and its shared free queue), `cache` (a worker's cache in
//! front of a pool), `packet` (one buffer's handle and what it does to its frame), `external`
//! (pools over slots of another allocator).

mod cache;
mod external;
mod packet;
mod pool;

pub use cache::PoolCache;
pub use external::{Adopter, ExternalSlots, Releaser};
pub use packet::{move_front, PacketBuf};
pub use pool::Pool;

/// Bytes in front of the frame, for pushing a VLAN tag or a tunnel header without a copy.
pub const HEADROOM: usize = 128;
/// Bytes for the frame itself.
pub const DATA_ROOM: usize = 2048;
/// One slot: headroom plus data room, a multiple of the 64-byte cache line.
pub const SLOT_SIZE: usize = HEADROOM + DATA_ROOM;
pub(crate) const HUGEPAGE: usize = 2 << 20;
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

/// Asks the kernel for transparent huge pages (fewer TLB misses for memory every frame
/// touches) through `advise`, which applies the advice to the range in question. Only advice:
/// where the kernel has no THP, or only for part of the range, the memory stays ordinary pages
/// and works the same.
pub(crate) fn advise_huge(advise: impl FnOnce(memmap2::Advice) -> std::io::Result<()>) {
    #[cfg(target_os = "linux")]
    if let Err(e) = advise(memmap2::Advice::HugePage) {
        tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) refused; ordinary pages");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = advise;
}

#[cfg(test)]
mod tests;
