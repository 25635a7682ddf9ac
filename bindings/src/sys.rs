//! Raw DPDK 22.11 FFI: the committed bindgen output plus the C shim.
//!
//! Everything here is `unsafe` to call; the safe layer lives in the sibling
//! modules ([`crate::eal`], [`crate::mempool`], [`crate::mbuf`],
//! [`crate::ethdev`]).

// Kept exactly as bindgen wrote it (bindings/gen/generate.sh reproduces it byte for byte), so
// its bitfield accessors' unsafe blocks carry bindgen's reasoning, not SAFETY comments.
#[rustfmt::skip]
#[allow(clippy::undocumented_unsafe_blocks)]
#[path = "dpdk_sys_22_11.rs"]
mod generated;

pub use generated::*;

/// `RTE_MBUF_F_EXTERNAL` (a macro bindgen does not see): the mbuf's buffer is external; set on
/// every mbuf of a pinned-extbuf pool until [`crate::Mempool::make_pinned_direct`] clears it.
/// Checked against the C headers by a layout test.
pub const RTE_MBUF_F_EXTERNAL: u64 = 1 << 61;

/// Out-of-line wrappers for DPDK's static-inline functions and macros
/// (`bindings/shim/shim.c`, compiled by build.rs with the cc crate).
pub mod shim {
    use super::{rte_mbuf, rte_mempool};
    use core::ffi::{c_char, c_int, c_uint, c_void};

    extern "C" {
        /// `RTE_EAL_PMD_PATH`: where EAL loads driver plugins from.
        pub fn sy_pmd_path() -> *const c_char;
        /// `rte_errno` of the calling thread.
        pub fn sy_rte_errno() -> c_int;
        /// `rte_lcore_id()` of the calling thread.
        pub fn sy_rte_lcore_id() -> c_uint;
        pub fn sy_rte_eth_rx_burst(
            port_id: u16,
            queue_id: u16,
            rx_pkts: *mut *mut rte_mbuf,
            nb_pkts: u16,
        ) -> u16;
        pub fn sy_rte_eth_tx_burst(
            port_id: u16,
            queue_id: u16,
            tx_pkts: *mut *mut rte_mbuf,
            nb_pkts: u16,
        ) -> u16;
        pub fn sy_rte_pktmbuf_alloc(mp: *mut rte_mempool) -> *mut rte_mbuf;
        pub fn sy_rte_pktmbuf_alloc_bulk(
            mp: *mut rte_mempool,
            mbufs: *mut *mut rte_mbuf,
            count: c_uint,
        ) -> c_int;
        pub fn sy_rte_pktmbuf_free(m: *mut rte_mbuf);
        pub fn sy_rte_pktmbuf_mtod(m: *mut rte_mbuf) -> *mut c_void;
        pub fn sy_rte_pktmbuf_data_len(m: *const rte_mbuf) -> u16;
        pub fn sy_rte_pktmbuf_pkt_len(m: *const rte_mbuf) -> u32;
        pub fn sy_rte_pktmbuf_headroom(m: *const rte_mbuf) -> u16;
        pub fn sy_rte_pktmbuf_tailroom(m: *const rte_mbuf) -> u16;
        pub fn sy_rte_pktmbuf_append(m: *mut rte_mbuf, len: u16) -> *mut c_char;
        pub fn sy_rte_pktmbuf_prepend(m: *mut rte_mbuf, len: u16) -> *mut c_char;
        pub fn sy_rte_pktmbuf_adj(m: *mut rte_mbuf, len: u16) -> *mut c_char;
        pub fn sy_rte_pktmbuf_trim(m: *mut rte_mbuf, len: u16) -> c_int;
        pub fn sy_rte_pktmbuf_reset(m: *mut rte_mbuf);
        pub fn sy_rte_pktmbuf_is_contiguous(m: *const rte_mbuf) -> c_int;
        pub fn sy_rte_mbuf_refcnt_read(m: *const rte_mbuf) -> u16;
        pub fn sy_rte_pktmbuf_data_room_size(mp: *mut rte_mempool) -> u16;
        /// Creates a pktmbuf pool of `n` mbufs whose buffers are pinned external buffers of
        /// `elt_size` bytes, slot `i` at `base + i * elt_size` of one memzone registered as its
        /// IOVA-contiguous pieces; writes the region to `*base`, its size in slots (`n` or
        /// more, the others have no mbuf) to `*slots`, the number of pieces to `*pieces` and
        /// the memzone to `*mz`. NULL with rte_errno on failure.
        pub fn sy_extbuf_pool_create(
            name: *const c_char,
            n: c_uint,
            cache: c_uint,
            elt_size: u16,
            socket: c_int,
            base: *mut *mut c_void,
            mz: *mut *const c_void,
            slots: *mut c_uint,
            pieces: *mut c_uint,
        ) -> *mut rte_mempool;
        /// `rte_mem_virt2iova`: the IOVA of the byte at `va`, `RTE_BAD_IOVA` when unknown.
        pub fn sy_rte_mem_virt2iova(va: *const c_void) -> u64;
        /// Whether EAL runs with IOVA as physical addresses.
        pub fn sy_rte_eal_iova_is_pa() -> c_int;
        /// Frees a pool made by `sy_extbuf_pool_create` and its memzone.
        pub fn sy_extbuf_pool_free(mp: *mut rte_mempool, mz: *const c_void);
        /// Fills `table[i]` (`n` slots) with the mbuf whose buffer is `base + i * elt_size`, NULL
        /// for a slot without one; returns how many were filled, or -1 when a buffer lies
        /// outside the region or is shared.
        pub fn sy_extbuf_pool_slots(
            mp: *mut rte_mempool,
            base: *mut c_void,
            elt_size: c_uint,
            table: *mut *mut rte_mbuf,
            n: c_uint,
        ) -> c_int;
        /// Clears `RTE_MBUF_F_EXTERNAL` on every mbuf of a pool made by
        /// `sy_extbuf_pool_create` (DPDK then frees them as direct mbufs); returns how many.
        pub fn sy_extbuf_pool_make_direct(mp: *mut rte_mempool) -> c_uint;
        /// Sizes and offsets as the C compiler sees them (see shim.c).
        pub fn sy_layout(what: c_uint) -> usize;
    }
}
