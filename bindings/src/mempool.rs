//! Packet mbuf pools (`rte_pktmbuf_pool_create`).

use crate::eal::Eal;
use crate::error::{rte_errno, strerror, Error, Result};
use crate::mbuf::Mbuf;
use crate::sys;
use std::ffi::CString;
use std::ptr::NonNull;

/// A pool of packet mbufs. Thread-safe (DPDK's default `ring_mp_mc` ops).
///
/// Dropping it frees the pool only when every mbuf has come back; a pool
/// with mbufs still out (in a device ring, or leaked) is left allocated and
/// a warning is logged, so no mbuf ever points into freed memory.
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<sys::rte_mempool>,
    name: String,
    size: u32,
    /// For a pinned-extbuf pool ([`Mempool::pinned_extbuf`]): where the buffers are.
    ext: Option<ExtMem>,
}

/// The buffer region of a pinned-extbuf pool: `slots` buffers of `elt_size` bytes from
/// `base`, in one memzone registered with DPDK as `pieces` IOVA-contiguous pieces; `size` of
/// the slots have an mbuf, the others (straddling two pieces) none.
#[derive(Debug)]
struct ExtMem {
    base: NonNull<u8>,
    elt_size: u16,
    slots: u32,
    pieces: u32,
    memzone: *const std::ffi::c_void,
}

// SAFETY: an rte_mempool with the default ring_mp_mc ops may be used from
// any thread; the handle itself is just pointers (the pool and, for a
// pinned-extbuf pool, its region and memzone) and a name. (EAL arguments
// could name other default ops, `--mbuf-pool-ops-name`, e.g. single-producer
// ones: EalOptions::extra_args must not.)
unsafe impl Send for Mempool {}
// SAFETY: every method takes &self and calls thread-safe mempool functions.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with a per-lcore cache of `cache` and
    /// `data_room` bytes of buffer each (headroom included; DPDK's default
    /// is [`Mempool::DEFAULT_DATA_ROOM`]).
    pub fn new(_eal: &Eal, name: &str, n: u32, cache: u32, data_room: u16) -> Result<Mempool> {
        let bad = |reason: String| Error::InvalidArgument { what: format!("mempool {name}"), reason };
        // RTE_MEMPOOL_NAMESIZE is 32 with the "MP_" prefix DPDK adds.
        if name.is_empty() || name.len() > 26 {
            return Err(bad("name must be 1 to 26 bytes".into()));
        }
        if cache > sys::RTE_MEMPOOL_CACHE_MAX_SIZE {
            return Err(bad(format!("cache {cache} is over {}", sys::RTE_MEMPOOL_CACHE_MAX_SIZE)));
        }
        if u32::from(data_room) <= sys::RTE_PKTMBUF_HEADROOM {
            return Err(bad(format!(
                "data room {data_room} leaves nothing after the {}-byte headroom",
                sys::RTE_PKTMBUF_HEADROOM
            )));
        }
        let cname = CString::new(name).map_err(|_| bad("name contains a NUL byte".into()))?;
        // SAFETY: EAL is initialised (we hold &Eal); cname is a valid C
        // string that DPDK copies; the numbers were range-checked above.
        let p = unsafe {
            sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, sys::SOCKET_ID_ANY)
        };
        match NonNull::new(p) {
            Some(ptr) => Ok(Mempool { ptr, name: name.to_string(), size: n, ext: None }),
            None => {
                let errno = rte_errno();
                Err(Error::MempoolCreate { pool: name.to_string(), errno, message: strerror(errno) })
            }
        }
    }

    /// A pool of `n` mbufs whose data buffers are pinned external buffers of `elt_size` bytes
    /// each (headroom included), laid out back to back in one memzone
    /// (`rte_pktmbuf_pool_create_extbuf`): buffer `i` is `base + i * elt_size` and belongs to
    /// the same mbuf for the pool's whole life. The memzone need not be physically
    /// contiguous (hugepages of a node that has run for a while seldom are, and with IOVA as
    /// PA that matters): DPDK gets it as its IOVA-contiguous pieces, each with its own IOVA,
    /// and a slot that straddles two pieces has no mbuf, so the region may hold a few more
    /// slots than `n` ([`Mempool::region_slots`], [`Mempool::iova_pieces`]).
    /// [`Mempool::pinned_region`] and [`Mempool::slot_table`] describe it. Works under
    /// `--no-huge` and with DMA-capable devices alike (memzone memory is mapped for DMA and
    /// its IOVA is known).
    pub fn pinned_extbuf(_eal: &Eal, name: &str, n: u32, cache: u32, elt_size: u16) -> Result<Mempool> {
        let bad = |reason: String| Error::InvalidArgument { what: format!("mempool {name}"), reason };
        // The memzone is named "<name>_x" (RTE_MEMZONE_NAMESIZE 32) and the ring "MP_<name>".
        if name.is_empty() || name.len() > 26 {
            return Err(bad("name must be 1 to 26 bytes".into()));
        }
        if n == 0 {
            return Err(bad("a pool needs at least one mbuf".into()));
        }
        if cache > sys::RTE_MEMPOOL_CACHE_MAX_SIZE {
            return Err(bad(format!("cache {cache} is over {}", sys::RTE_MEMPOOL_CACHE_MAX_SIZE)));
        }
        if u32::from(elt_size) <= sys::RTE_PKTMBUF_HEADROOM || !elt_size.is_multiple_of(64) {
            return Err(bad(format!(
                "buffer size {elt_size} must be a multiple of 64 above the {}-byte headroom",
                sys::RTE_PKTMBUF_HEADROOM
            )));
        }
        let cname = CString::new(name).map_err(|_| bad("name contains a NUL byte".into()))?;
        let mut base = std::ptr::null_mut();
        let mut memzone = std::ptr::null();
        let (mut slots, mut pieces) = (0, 0);
        // SAFETY: EAL is initialised (we hold &Eal); cname is a valid C string that DPDK
        // copies; base, memzone, slots and pieces are valid out-pointers; the numbers were
        // checked above.
        let p = unsafe {
            sys::shim::sy_extbuf_pool_create(
                cname.as_ptr(),
                n,
                cache,
                elt_size,
                sys::SOCKET_ID_ANY,
                &mut base,
                &mut memzone,
                &mut slots,
                &mut pieces,
            )
        };
        match (NonNull::new(p), NonNull::new(base as *mut u8)) {
            (Some(ptr), Some(base)) => Ok(Mempool {
                ptr,
                name: name.to_string(),
                size: n,
                ext: Some(ExtMem { base, elt_size, slots, pieces, memzone }),
            }),
            _ => {
                let errno = rte_errno();
                Err(Error::MempoolCreate { pool: name.to_string(), errno, message: strerror(errno) })
            }
        }
    }

    /// For a pinned-extbuf pool: the buffer region's start and the size of one buffer.
    pub fn pinned_region(&self) -> Option<(NonNull<u8>, u16)> {
        self.ext.as_ref().map(|e| (e.base, e.elt_size))
    }

    /// For a pinned-extbuf pool: how many buffers of `elt_size` bytes its region holds (the
    /// pool's size or more; see [`Mempool::pinned_extbuf`]).
    pub fn region_slots(&self) -> Option<u32> {
        self.ext.as_ref().map(|e| e.slots)
    }

    /// For a pinned-extbuf pool: how many IOVA-contiguous pieces of its region were registered
    /// with DPDK, each with its own IOVA (1 when the region is physically contiguous).
    pub fn iova_pieces(&self) -> Option<u32> {
        self.ext.as_ref().map(|e| e.pieces)
    }

    /// For a pinned-extbuf pool: `table[i]` is the mbuf whose buffer is buffer `i` of the
    /// region (fixed for the pool's life), null for a buffer without an mbuf; the table has
    /// [`Mempool::region_slots`] entries. `None` for other pools.
    pub fn slot_table(&self) -> Option<Vec<*mut sys::rte_mbuf>> {
        let e = self.ext.as_ref()?;
        let mut table = vec![std::ptr::null_mut(); e.slots as usize];
        // SAFETY: the pool is live; table has room for size entries; the shim only reads the
        // mbufs' buf_addr while iterating the pool's objects.
        let filled = unsafe {
            sys::shim::sy_extbuf_pool_slots(
                self.ptr.as_ptr(),
                e.base.as_ptr().cast(),
                u32::from(e.elt_size),
                table.as_mut_ptr(),
                e.slots,
            )
        };
        (filled == self.size as i32).then_some(table)
    }

    /// For a pinned-extbuf pool: makes every mbuf look like a direct mbuf to DPDK (clears
    /// `RTE_MBUF_F_EXTERNAL`), buffer and all else unchanged, so that DPDK frees them on its
    /// fast path: `rte_pktmbuf_prefree_seg` then skips `rte_pktmbuf_detach` (a call that only
    /// finds out that a pinned buffer stays) and the reference count in the shared info that
    /// follows the mbuf (one more cache line per free). The buffer still never leaves its
    /// mbuf: nothing on DPDK's free path moves a direct mbuf's buffer, and a pinned buffer is
    /// not one to hand back anyway. Intel's vector RX paths (iavf, i40e, ice...) already clear
    /// the flag on every mbuf they receive (their rearm template has `ol_flags` 0); mlx5 sets
    /// it back on RX for pinned pools, and an mbuf with the flag takes DPDK's pinned-extbuf
    /// path again, which is equally correct.
    ///
    /// What DPDK cannot do with such an mbuf is see that its buffer is not inside it: a clone
    /// or attach (`rte_pktmbuf_clone`, `rte_pktmbuf_attach`) would make an indirect mbuf whose
    /// free computes the "direct" mbuf from the buffer address (`rte_mbuf_from_indirect`) and
    /// writes into whatever lies in front of the buffer. Hence the contract below.
    ///
    /// Errors (nothing changed) when the pool is not a pinned-extbuf pool or has mbufs out.
    ///
    /// # Safety
    /// - Nobody may use the pool while this runs (call it right after creating the pool,
    ///   before any device queue or thread uses it).
    /// - For the pool's whole life no mbuf of it may be cloned, attached to or be attached
    ///   (`rte_pktmbuf_clone`, `rte_pktmbuf_attach`, `rte_pktmbuf_detach`, and what calls them:
    ///   GSO, which net_tap runs for frames requesting TSO (`RTE_MBUF_F_TX_TCP_SEG`), IP
    ///   fragmentation, and no pool for indirect mbufs may be this one), nor get an external
    ///   buffer attached (`rte_pktmbuf_attach_extbuf`, which breaks any pinned pool already).
    pub unsafe fn make_pinned_direct(&self) -> Result<()> {
        let bad = |reason: &str| Error::InvalidArgument {
            what: format!("mempool {}", self.name),
            reason: reason.to_string(),
        };
        if self.ext.is_none() {
            return Err(bad("not a pinned-extbuf pool"));
        }
        if self.in_use() != 0 {
            return Err(bad("mbufs are out"));
        }
        // The pool is a live pinned-extbuf pool made by sy_extbuf_pool_create; the caller
        // guarantees nobody uses it meanwhile (so writing each free mbuf's ol_flags races with
        // nothing) and that no mbuf of it is ever cloned or attached (the one thing a
        // direct-looking mbuf with an external buffer cannot take).
        // SAFETY: a live pinned pool, unused meanwhile, never cloned or attached (above).
        let changed = unsafe { sys::shim::sy_extbuf_pool_make_direct(self.ptr.as_ptr()) };
        debug_assert_eq!(changed, self.size);
        Ok(())
    }

    /// `RTE_MBUF_DEFAULT_BUF_SIZE`: 2048 bytes of data after 128 of headroom.
    pub const DEFAULT_DATA_ROOM: u16 = sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many mbufs the pool holds in all.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Mbufs currently free (in the pool's ring and the per-lcore caches).
    pub fn avail(&self) -> u32 {
        // SAFETY: self.ptr is a live pool (freed only in Drop).
        unsafe { sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs currently out of the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: self.ptr is a live pool.
        unsafe { sys::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    /// Bytes of buffer per mbuf, headroom included.
    pub fn data_room(&self) -> u16 {
        // SAFETY: self.ptr is a live packet mbuf pool.
        unsafe { sys::shim::sy_rte_pktmbuf_data_room_size(self.ptr.as_ptr()) }
    }

    /// The raw pool, for FFI calls (rx queue setup).
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.ptr.as_ptr()
    }

    /// Takes one mbuf (reset: empty, default headroom).
    pub fn alloc(&self) -> Result<Mbuf> {
        // SAFETY: self.ptr is a live packet mbuf pool.
        let m = unsafe { sys::shim::sy_rte_pktmbuf_alloc(self.ptr.as_ptr()) };
        match NonNull::new(m) {
            // SAFETY: a fresh mbuf from rte_pktmbuf_alloc is ours alone.
            Some(m) => Ok(unsafe { Mbuf::from_raw(m.as_ptr()) }),
            None => Err(Error::MbufAlloc { pool: self.name.clone() }),
        }
    }

    /// Fills all of `out` with fresh mbufs, or none of it (all-or-nothing, as
    /// `rte_pktmbuf_alloc_bulk`). The caller owns the mbufs written.
    pub fn alloc_bulk_raw(&self, out: &mut [*mut sys::rte_mbuf]) -> Result<()> {
        let n = u32::try_from(out.len()).map_err(|_| Error::InvalidArgument {
            what: format!("mempool {}", self.name),
            reason: "burst too large".into(),
        })?;
        // SAFETY: out has room for n pointers; the pool is live.
        let ret = unsafe { sys::shim::sy_rte_pktmbuf_alloc_bulk(self.ptr.as_ptr(), out.as_mut_ptr(), n) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::MbufAlloc { pool: self.name.clone() })
        }
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        let out = self.in_use();
        if out != 0 {
            tracing::warn!(
                pool = %self.name,
                in_use = out,
                "DPDK mempool dropped with mbufs still out; leaving it allocated"
            );
            return;
        }
        match &self.ext {
            // SAFETY: as below; the memzone holds only this pool's buffers, none of which is
            // out, and is freed after the pool.
            Some(e) => unsafe { sys::shim::sy_extbuf_pool_free(self.ptr.as_ptr(), e.memzone) },
            // SAFETY: the pool is live, no mbuf of it is out, and no other handle
            // to it exists (Mempool is not Clone; devices hold Arc<Mempool>).
            None => unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) },
        }
    }
}
