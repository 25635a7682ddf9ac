//! An owned packet mbuf.

use crate::sys;
use std::ptr::NonNull;

/// One owned, single-segment-aware packet mbuf; dropping it frees it back to
/// its pool. `#[repr(transparent)]` over the mbuf pointer, so a `[Mbuf]` is
/// an array of `rte_mbuf *` for the burst functions.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an owned mbuf may move between threads; freeing it to its
// (thread-safe) pool from any thread is allowed.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `m` must be a valid, non-null mbuf that nobody else owns or frees
    /// (e.g. returned by rx burst or by an alloc), whose pool outlives it.
    pub unsafe fn from_raw(m: *mut sys::rte_mbuf) -> Mbuf {
        debug_assert!(!m.is_null());
        // SAFETY: the caller guarantees m is non-null.
        Mbuf(unsafe { NonNull::new_unchecked(m) })
    }

    /// Gives up ownership (e.g. to a tx burst) without freeing.
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    /// The raw pointer, still owned by `self`.
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.0.as_ptr()
    }

    fn raw(&self) -> &sys::rte_mbuf {
        // SAFETY: self owns a valid mbuf; the shared borrow of self keeps
        // anyone else (through this handle) from writing it.
        unsafe { self.0.as_ref() }
    }

    /// Start of the mbuf's buffer (the headroom starts here).
    pub fn buf_addr(&self) -> *mut u8 {
        self.raw().buf_addr as *mut u8
    }

    /// Bytes of buffer (headroom included).
    pub fn buf_len(&self) -> u16 {
        self.raw().buf_len
    }

    /// The pool the mbuf belongs to.
    pub fn pool_ptr(&self) -> *mut sys::rte_mempool {
        self.raw().pool
    }

    /// Makes the mbuf a single-segment packet of `len` bytes at offset `off` of its buffer,
    /// without touching the bytes (the buffer already holds the frame), and clears every
    /// offload request and RX flag but the external-buffer flag. False (nothing changed) when
    /// `off + len` is beyond the buffer or the mbuf has more than one segment.
    pub fn set_window(&mut self, off: u16, len: u16) -> bool {
        let m = self.raw();
        if u32::from(off) + u32::from(len) > u32::from(m.buf_len) || m.nb_segs != 1 {
            return false;
        }
        // SAFETY: one segment and the window within buf_len (checked above).
        unsafe { self.set_window_unchecked(off, len) };
        true
    }

    /// [`Mbuf::set_window`] for a caller that knows the checks it makes to hold: no check.
    ///
    /// # Safety
    /// The mbuf has one segment, and `off + len` is at most its buffer's length (`buf_len`).
    #[inline]
    pub unsafe fn set_window_unchecked(&mut self, off: u16, len: u16) {
        // SAFETY: self owns a valid mbuf exclusively (&mut self).
        let m = unsafe { self.0.as_mut() };
        debug_assert!(u32::from(off) + u32::from(len) <= u32::from(m.buf_len) && m.nb_segs == 1);
        m.data_off = off;
        m.data_len = len;
        m.pkt_len = u32::from(len);
        m.ol_flags &= sys::RTE_MBUF_F_EXTERNAL;
    }

    /// Offload and status flags (`ol_flags`), e.g. [`sys::RTE_MBUF_F_EXTERNAL`].
    pub fn ol_flags(&self) -> u64 {
        self.raw().ol_flags
    }

    /// Bytes in the whole packet (all segments).
    pub fn len(&self) -> usize {
        self.raw().pkt_len as usize
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the first segment.
    pub fn data_len(&self) -> usize {
        usize::from(self.raw().data_len)
    }

    /// Number of segments.
    pub fn nb_segs(&self) -> u16 {
        self.raw().nb_segs
    }

    /// Port the mbuf was received on.
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// Free bytes in front of the data.
    pub fn headroom(&self) -> usize {
        usize::from(self.raw().data_off)
    }

    /// Free bytes after the data of the first segment (0 when the window does not fit the
    /// buffer, see [`Mbuf::window_fits`]).
    pub fn tailroom(&self) -> usize {
        let m = self.raw();
        usize::from(m.buf_len).saturating_sub(usize::from(m.data_off) + usize::from(m.data_len))
    }

    /// Whether the data window (`data_off` + `data_len`) lies inside the buffer, as DPDK
    /// promises and a driver with a bug may not keep: [`Mbuf::data`] of one that does not is
    /// cut to the buffer.
    pub fn window_fits(&self) -> bool {
        let m = self.raw();
        usize::from(m.data_off) + usize::from(m.data_len) <= usize::from(m.buf_len)
    }

    /// The data window cut to the buffer: (offset, length).
    fn window(&self) -> (usize, usize) {
        let m = self.raw();
        let off = usize::from(m.data_off).min(usize::from(m.buf_len));
        (off, usize::from(m.data_len).min(usize::from(m.buf_len) - off))
    }

    /// The first segment's data (cut to the buffer, should a driver have left a window past
    /// it: [`Mbuf::window_fits`]).
    pub fn data(&self) -> &[u8] {
        let (off, len) = self.window();
        // SAFETY: buf_addr .. + buf_len is the mbuf's buffer, and off + len <= buf_len (cut
        // so in window()); we own the mbuf, so nobody writes it while this shared borrow
        // lives.
        unsafe { std::slice::from_raw_parts((self.raw().buf_addr as *const u8).add(off), len) }
    }

    /// The first segment's data, writable (cut to the buffer, as [`Mbuf::data`]).
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (off, len) = self.window();
        let addr = self.raw().buf_addr as *mut u8;
        // SAFETY: as in data(); &mut self makes the borrow exclusive, and a
        // direct buffer (refcnt 1, ours) is writable.
        unsafe { std::slice::from_raw_parts_mut(addr.add(off), len) }
    }

    /// Grows the data by `len` bytes at the end (of the last segment) and
    /// returns them, or `None` when the tailroom is too small.
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: we own a valid mbuf; rte_pktmbuf_append checks the room.
        let p = unsafe { sys::shim::sy_rte_pktmbuf_append(self.0.as_ptr(), len) };
        if p.is_null() {
            return None;
        }
        // SAFETY: DPDK returned len writable bytes inside the buffer, which
        // &mut self lets only us touch.
        Some(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, usize::from(len)) })
    }

    /// Grows the data by `len` bytes in front (into the headroom) and
    /// returns them, or `None` when the headroom is too small.
    pub fn prepend(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: we own a valid mbuf; rte_pktmbuf_prepend checks the room.
        let p = unsafe { sys::shim::sy_rte_pktmbuf_prepend(self.0.as_ptr(), len) };
        if p.is_null() {
            return None;
        }
        // SAFETY: as in append().
        Some(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, usize::from(len)) })
    }

    /// Removes `len` bytes from the front; false when the first segment is shorter.
    pub fn adj(&mut self, len: u16) -> bool {
        // SAFETY: we own a valid mbuf; rte_pktmbuf_adj checks the length.
        !unsafe { sys::shim::sy_rte_pktmbuf_adj(self.0.as_ptr(), len) }.is_null()
    }

    /// Removes `len` bytes from the end; false when the last segment is shorter.
    pub fn trim(&mut self, len: u16) -> bool {
        // SAFETY: we own a valid mbuf; rte_pktmbuf_trim checks the length.
        unsafe { sys::shim::sy_rte_pktmbuf_trim(self.0.as_ptr(), len) == 0 }
    }

    /// Empties the packet and restores the default headroom.
    pub fn reset(&mut self) {
        // SAFETY: we own a valid mbuf.
        unsafe { sys::shim::sy_rte_pktmbuf_reset(self.0.as_ptr()) }
    }

    /// Replaces the data with `bytes`; false (mbuf unchanged in length 0)
    /// when they do not fit in one segment.
    pub fn set_data(&mut self, bytes: &[u8]) -> bool {
        self.reset();
        let Ok(len) = u16::try_from(bytes.len()) else {
            return false;
        };
        match self.append(len) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Frees the mbuf (same as dropping it).
    pub fn free(self) {
        drop(self)
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and give it back exactly once.
        unsafe { sys::shim::sy_rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Frees a slice of raw mbufs in one call (`rte_pktmbuf_free_bulk`).
///
/// # Safety
/// Every pointer must be a valid mbuf owned by the caller (or null), and
/// none may be used after this call.
pub unsafe fn free_bulk(mbufs: &mut [*mut sys::rte_mbuf]) {
    // SAFETY: the caller's contract; count fits: slices of mbuf pointers in
    // switchyard are bursts, far below u32::MAX.
    unsafe { sys::rte_pktmbuf_free_bulk(mbufs.as_mut_ptr(), mbufs.len() as u32) }
}
