//! One packet buffer's handle and what it does to its frame. Invariant: `head + len <=
//! SLOT_SIZE` always (every method that moves either checks), so every access through the
//! handle stays inside the slot it owns.

use super::pool::PoolShared;
use super::{BufferError, Pool, HEADROOM, SLOT_SIZE};
use crate::wire::{EtherType, MAC_ADDRS_LEN, VLAN_TAG_LEN};
use arrayvec::ArrayVec;
use std::ptr::NonNull;

/// One packet buffer: a slot of [`SLOT_SIZE`] bytes and the window `[head, head + len)` that
/// holds the frame.
///
/// The handle is 16 bytes (pool, slot index, window) so that bursts move cheaply.
pub struct PacketBuf {
    pub(super) pool: NonNull<PoolShared>,
    pub(super) idx: u32,
    pub(super) head: u16,
    pub(super) len: u16,
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
    pub(super) fn fresh(pool: NonNull<PoolShared>, _s: &PoolShared, idx: u32) -> PacketBuf {
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
    #[inline]
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
    #[inline]
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

    /// Grows the frame by `N` bytes at the front, as [`PacketBuf::prepend`], and returns them
    /// with the bytes behind them (the frame as it was): for a writer whose new front depends
    /// on the frame (one window computed for both). Nothing changes on an error.
    #[inline]
    pub fn prepend_split<const N: usize>(&mut self) -> Result<(&mut [u8; N], &mut [u8]), BufferError> {
        let (head, len) = (self.head as usize, self.len as usize);
        if N > head {
            return Err(BufferError::NoHeadroom { need: N, have: head });
        }
        // head + len <= SLOT_SIZE (module invariant), so len + N fits 16 bits.
        self.head = (head - N) as u16;
        self.len = (len + N) as u16;
        let p = self.slot_ptr().as_ptr();
        // Built without bounds checks, as data(): [head - N, head + len) is inside the slot
        // (head + len <= SLOT_SIZE, module invariant), SLOT_SIZE bytes inside the live mapping,
        // which this handle owns; &mut self makes the access exclusive, and the two parts do
        // not overlap.
        // SAFETY: both parts lie in this handle's slot, apart (above).
        unsafe {
            Ok((&mut *p.add(head - N).cast::<[u8; N]>(), std::slice::from_raw_parts_mut(p.add(head), len)))
        }
    }

    /// Removes `n` bytes from the front.
    #[inline]
    pub fn trim_front(&mut self, n: usize) -> Result<(), BufferError> {
        if n > self.len as usize {
            return Err(BufferError::TooShort(self.len as usize));
        }
        self.head += n as u16;
        self.len -= n as u16;
        Ok(())
    }

    /// Keeps the `len` bytes from `off` on (both within the frame) as the frame: a trim at
    /// each end in one step.
    #[inline]
    pub fn narrow(&mut self, off: usize, len: usize) -> Result<(), BufferError> {
        let have = self.len as usize;
        if off > have || len > have - off {
            return Err(BufferError::TooShort(have));
        }
        self.head += off as u16;
        self.len = len as u16;
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
pub(super) fn forget_front<const N: usize>(burst: &mut ArrayVec<PacketBuf, N>, n: usize) {
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
