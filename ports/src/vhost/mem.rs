//! Guest memory: the one place that turns guest addresses into host memory accesses.
//!
//! Everything the guest (the vhost-user frontend) shares with us lives in mappings this module
//! makes and owns: the memory regions of `SET_MEM_TABLE` and the dirty-page log of
//! `SET_LOG_BASE`. The rest of the backend never sees a pointer: it reads and writes through
//! [`GuestMemory::read`] / [`GuestMemory::write`] (guest physical addresses, checked against the
//! memory table with checked arithmetic) and through [`Area`] (a validated, aligned window
//! over a ring, accessed with atomics).
//!
//! Rules this module keeps:
//! - No reference (`&[u8]`, `&T`) to guest memory is ever created: the guest may change it at
//!   any time, so bytes are copied with raw-pointer copies and ring fields are read and written
//!   with atomic operations on naturally aligned addresses. A stated assumption: a frame copy
//!   (`copy_nonoverlapping`) of bytes the guest writes at the same time is, in Rust's memory
//!   model, a data race all the same; switchyard relies on such a copy of shared memory giving
//!   some bytes (what C's memcpy gives DPDK's and QEMU's vhost backends), never trusting them
//!   before they are in its own buffer and checked there. vm-memory's volatile copies avoid the
//!   assumption at a cost per byte that the frame path does not pay.
//! - A mapping is unmapped only when its owner is dropped, and every [`Area`] holds an `Arc` of
//!   its [`GuestMemory`], so no access can reach unmapped memory.
//! - A region is mapped only when the file behind it is at least as large as the region (a
//!   shorter file would raise SIGBUS on access). A frontend that shrinks the file after the
//!   mapping is outside what this check can catch (DPDK and QEMU's libvhost-user share this
//!   limit); memfd seals would close it. So is a hugetlbfs file whose pages were never touched
//!   when the node runs out of huge pages: the first access to such a page raises SIGBUS too
//!   (QEMU prealloc's guest memory, which is what KubeVirt's hugepage VMs do).

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// The page size of the dirty log (fixed by the vhost-user protocol).
pub const LOG_PAGE: u64 = 4096;
const GUARD: usize = 4096;

/// Failures of mapping or translating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("guest range {addr:#x}+{len:#x} is not inside the memory table")]
    OutOfRange { addr: u64, len: u64 },
    #[error("ring address {addr:#x} is not {align}-byte aligned")]
    Misaligned { addr: u64, align: u64 },
    #[error("memory region {index}: {msg}")]
    BadRegion { index: usize, msg: String },
    #[error("mmap: {0}")]
    Map(std::io::Error),
}

/// One entry of the frontend's memory table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// Guest physical address of the region.
    pub gpa: u64,
    pub size: u64,
    /// The frontend's virtual address of the region (ring addresses are given in these).
    pub uva: u64,
    /// Where the region starts in the file.
    pub mmap_offset: u64,
}

/// An mmap'd range, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared and read-write.
    fn shared_fd(fd: &OwnedFd, len: usize) -> Result<Mapping, MemError> {
        // SAFETY: mmap with a null hint creates a new mapping and touches no existing memory;
        // the result is checked for MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::Map(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| MemError::Map(std::io::Error::other("null")))?;
        Ok(Mapping { ptr, len })
    }

    /// Anonymous read-write memory of `len` bytes with an inaccessible guard page on each
    /// side, so that any stray access next to it faults (for tests and fuzzing).
    fn guarded_anon(len: usize) -> Result<Mapping, MemError> {
        let total = len.checked_add(2 * GUARD).ok_or(MemError::Map(std::io::Error::other("too large")))?;
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemError::Map(std::io::Error::last_os_error()));
        }
        let base = p.cast::<u8>();
        // SAFETY: base + GUARD .. base + GUARD + len lies inside the mapping just made.
        let rc = unsafe { libc::mprotect(base.add(GUARD).cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping the mapping made above, which nothing else refers to.
            unsafe { libc::munmap(p, total) };
            return Err(MemError::Map(e));
        }
        let ptr = NonNull::new(base).ok_or_else(|| MemError::Map(std::io::Error::other("null")))?;
        Ok(Mapping { ptr, len: total })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping this struct made and owns; every user of it holds
        // (through an Arc) the owner, so nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

struct Region {
    gpa: u64,
    uva: u64,
    size: u64,
    /// Host address of the region's first byte.
    host: NonNull<u8>,
    _map: Mapping,
}

/// The guest's memory as the frontend's memory table describes it.
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the raw pointers refer to mappings owned by this struct, unmapped only when it is
// dropped; all accesses through them are raw copies or atomics that never create references
// (see the module's rules, and its stated assumption about copies racing the guest's writes).
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for r in &self.regions {
            l.entry(&format_args!("gpa {:#x}+{:#x} uva {:#x}", r.gpa, r.size, r.uva));
        }
        l.finish()
    }
}

fn file_size_and_block(fd: &OwnedFd) -> std::io::Result<(u64, u64)> {
    let f = std::fs::File::from(fd.try_clone()?);
    let md = f.metadata()?;
    use std::os::unix::fs::MetadataExt;
    Ok((md.len(), md.blksize().max(1)))
}

fn check_table(descs: &[RegionDesc]) -> Result<(), MemError> {
    for (index, d) in descs.iter().enumerate() {
        let bad = |msg: &str| MemError::BadRegion { index, msg: msg.into() };
        if d.size == 0 {
            return Err(bad("empty region"));
        }
        d.gpa.checked_add(d.size).ok_or_else(|| bad("guest address + size overflows"))?;
        d.uva.checked_add(d.size).ok_or_else(|| bad("user address + size overflows"))?;
        d.mmap_offset.checked_add(d.size).ok_or_else(|| bad("mmap offset + size overflows"))?;
        if usize::try_from(d.size).is_err() {
            return Err(bad("region larger than the address space"));
        }
    }
    Ok(())
}

impl GuestMemory {
    /// Maps the regions of a memory table, one file descriptor per region.
    pub fn map(descs: &[RegionDesc], fds: &[OwnedFd]) -> Result<GuestMemory, MemError> {
        if descs.len() != fds.len() {
            return Err(MemError::BadRegion {
                index: 0,
                msg: format!("{} regions but {} file descriptors", descs.len(), fds.len()),
            });
        }
        check_table(descs)?;
        let mut regions = Vec::with_capacity(descs.len());
        for (index, (d, fd)) in descs.iter().zip(fds).enumerate() {
            let bad = |msg: String| MemError::BadRegion { index, msg };
            let (file_len, block) = file_size_and_block(fd).map_err(|e| bad(format!("fstat: {e}")))?;
            // Checked in check_table.
            let end = d.mmap_offset + d.size;
            if end > file_len {
                return Err(bad(format!("region ends at {end:#x} but the file holds {file_len:#x} bytes")));
            }
            // Map from offset 0 and round up to the file's block size (hugetlbfs needs whole
            // hugepages), as DPDK does.
            let len = end.div_ceil(block).checked_mul(block).ok_or_else(|| bad("size overflows".into()))?;
            let len = usize::try_from(len).map_err(|_| bad("size overflows".into()))?;
            let map = Mapping::shared_fd(fd, len)?;
            let off = usize::try_from(d.mmap_offset).map_err(|_| bad("offset overflows".into()))?;
            // SAFETY: off + size <= end <= len, so the result stays inside the mapping.
            let host = unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(off)) };
            regions.push(Region { gpa: d.gpa, uva: d.uva, size: d.size, host, _map: map });
        }
        Ok(GuestMemory { regions })
    }

    /// Fresh anonymous memory laid out as `(gpa, size, uva)` regions, each with guard pages
    /// around it: a fake guest for tests and fuzzing, where any access outside the regions
    /// faults instead of going unnoticed.
    pub fn anonymous(layout: &[(u64, u64, u64)]) -> Result<GuestMemory, MemError> {
        let descs: Vec<RegionDesc> =
            layout.iter().map(|&(gpa, size, uva)| RegionDesc { gpa, size, uva, mmap_offset: 0 }).collect();
        check_table(&descs)?;
        let mut regions = Vec::new();
        for d in descs {
            let len =
                usize::try_from(d.size).map_err(|_| MemError::Map(std::io::Error::other("too large")))?;
            let map = Mapping::guarded_anon(len)?;
            // SAFETY: the accessible part starts GUARD bytes into the mapping.
            let host = unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(GUARD)) };
            regions.push(Region { gpa: d.gpa, uva: d.uva, size: d.size, host, _map: map });
        }
        Ok(GuestMemory { regions })
    }

    /// The regions as `(gpa, size, uva)`.
    pub fn layout(&self) -> Vec<(u64, u64, u64)> {
        self.regions.iter().map(|r| (r.gpa, r.size, r.uva)).collect()
    }

    /// The host pointer of `gpa` and how many bytes from it (at most `len`) lie in the same
    /// region.
    #[inline]
    fn chunk(&self, gpa: u64, len: u64) -> Option<(*mut u8, usize)> {
        for r in &self.regions {
            if let Some(off) = gpa.checked_sub(r.gpa) {
                if off < r.size {
                    let n = len.min(r.size - off);
                    // off < size <= isize::MAX-sized mapping (checked at map time).
                    let p = r.host.as_ptr().wrapping_add(off as usize);
                    return Some((p, n as usize));
                }
            }
        }
        None
    }

    /// Whether every byte of `[gpa, gpa + len)` is guest memory.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        if gpa.checked_add(len).is_none() {
            return false;
        }
        let (mut a, mut left) = (gpa, len);
        while left > 0 {
            match self.chunk(a, left) {
                Some((_, n)) => {
                    a += n as u64;
                    left -= n as u64;
                }
                None => return false,
            }
        }
        true
    }

    /// Copies guest memory at `gpa` into `dst`. Checks the whole range first, so a failed
    /// read copies nothing.
    #[inline]
    pub fn read(&self, gpa: u64, dst: &mut [u8]) -> Result<(), MemError> {
        let len = dst.len() as u64;
        if !self.contains(gpa, len) {
            return Err(MemError::OutOfRange { addr: gpa, len });
        }
        let mut done = 0usize;
        while done < dst.len() {
            let (p, n) = self
                .chunk(gpa + done as u64, (dst.len() - done) as u64)
                .ok_or(MemError::OutOfRange { addr: gpa, len })?;
            // SAFETY: chunk() returned n bytes inside a live region mapping; dst[done..done+n]
            // is inside dst; guest memory and dst never overlap (dst is our own memory).
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(done), n) };
            done += n;
        }
        Ok(())
    }

    /// Copies `src` into guest memory at `gpa`. Checks the whole range first, so a failed
    /// write writes nothing.
    #[inline]
    pub fn write(&self, gpa: u64, src: &[u8]) -> Result<(), MemError> {
        let len = src.len() as u64;
        if !self.contains(gpa, len) {
            return Err(MemError::OutOfRange { addr: gpa, len });
        }
        let mut done = 0usize;
        while done < src.len() {
            let (p, n) = self
                .chunk(gpa + done as u64, (src.len() - done) as u64)
                .ok_or(MemError::OutOfRange { addr: gpa, len })?;
            // SAFETY: as in read(): n bytes inside a live mapping, src[done..done+n] inside src.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), p, n) };
            done += n;
        }
        Ok(())
    }

    /// The range `[gpa, gpa + len)` as one [`Span`] when it lies inside one region (what a
    /// guest's packet buffer always does in practice); `None` when it is empty, overflows, or is
    /// not guest memory or crosses regions (callers then take the checked, chunked
    /// [`GuestMemory::read`] / [`GuestMemory::write`], which judge it).
    #[inline]
    pub fn span(&self, gpa: u64, len: u64) -> Option<Span<'_>> {
        if len == 0 || gpa.checked_add(len).is_none() {
            return None;
        }
        let (ptr, n) = self.chunk(gpa, len)?;
        if n as u64 != len {
            return None;
        }
        Some(Span { ptr, len: n, _mem: std::marker::PhantomData })
    }

    fn area_in(self: &Arc<Self>, addr: u64, len: u64, align: u64, by_uva: bool) -> Result<Area, MemError> {
        if !align.is_power_of_two() || addr & (align - 1) != 0 {
            return Err(MemError::Misaligned { addr, align });
        }
        let end = addr.checked_add(len).ok_or(MemError::OutOfRange { addr, len })?;
        for r in &self.regions {
            let start = if by_uva { r.uva } else { r.gpa };
            if addr >= start && end <= start + r.size {
                let off = (addr - start) as usize;
                let ptr = r.host.as_ptr().wrapping_add(off);
                if (ptr as usize) & (align as usize - 1) != 0 {
                    return Err(MemError::Misaligned { addr, align });
                }
                let ptr = NonNull::new(ptr).ok_or(MemError::OutOfRange { addr, len })?;
                return Ok(Area { ptr, len: len as usize, mem: self.clone() });
            }
        }
        Err(MemError::OutOfRange { addr, len })
    }

    /// A ring structure at the frontend's virtual address `uva`: `len` bytes that must lie in
    /// one region, aligned to `align` (in the guest's view and in ours).
    pub fn area_uva(self: &Arc<Self>, uva: u64, len: u64, align: u64) -> Result<Area, MemError> {
        self.area_in(uva, len, align, true)
    }

    /// As [`GuestMemory::area_uva`], by guest physical address.
    pub fn area_gpa(self: &Arc<Self>, gpa: u64, len: u64, align: u64) -> Result<Area, MemError> {
        self.area_in(gpa, len, align, false)
    }
}

/// `copy_nonoverlapping` with the short lengths of small frames and virtio-net headers done
/// inline, as two overlapping unaligned moves (no call into the C library's memmove, which
/// costs more than the copy for a 60-byte frame).
///
/// # Safety
/// As `copy_nonoverlapping`: `src` readable and `dst` writable for `len` bytes, not
/// overlapping.
#[inline(always)]
unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    macro_rules! two_moves {
        ($n:literal) => {{
            // SAFETY (of the caller's contract): $n <= len <= 2 * $n, so [0, $n) and
            // [len - $n, len) both lie inside the len bytes of src and of dst.
            let head = std::ptr::read_unaligned(src as *const [u8; $n]);
            let tail = std::ptr::read_unaligned(src.add(len - $n) as *const [u8; $n]);
            std::ptr::write_unaligned(dst as *mut [u8; $n], head);
            std::ptr::write_unaligned(dst.add(len - $n) as *mut [u8; $n], tail);
        }};
    }
    match len {
        64..=128 => two_moves!(64),
        32..=63 => two_moves!(32),
        16..=31 => two_moves!(16),
        8..=15 => two_moves!(8),
        // SAFETY: the caller's contract.
        _ => unsafe { std::ptr::copy_nonoverlapping(src, dst, len) },
    }
}

/// A checked range of guest memory (one packet buffer), never empty, inside one region, valid
/// while the [`GuestMemory`] it came from is borrowed: bytes are copied in and out with raw
/// copies, never through a reference, and every offset is checked against the span again, so
/// no method panics or touches a byte outside it.
#[derive(Clone, Copy)]
pub struct Span<'a> {
    ptr: *mut u8,
    len: usize,
    _mem: std::marker::PhantomData<&'a GuestMemory>,
}

impl Span<'_> {
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The span without its first `n` bytes (`None` if that leaves nothing).
    #[inline]
    pub fn skip(self, n: usize) -> Option<Self> {
        if n >= self.len {
            return None;
        }
        Some(Span { ptr: self.ptr.wrapping_add(n), len: self.len - n, _mem: self._mem })
    }

    /// Hints the CPU to fetch the first and the last cache line of the span's first `upto`
    /// bytes (a frame of up to 128 bytes: all of it), for reading or for writing.
    #[inline]
    pub fn prefetch(&self, upto: usize, write: bool) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
            let last = self.ptr.wrapping_add(upto.min(self.len).saturating_sub(1));
            // SAFETY: PREFETCH is a hint without architectural effect; both addresses lie in
            // the span (a span is never empty), and even an unmapped address would not fault.
            unsafe {
                if write {
                    _mm_prefetch::<_MM_HINT_ET0>(self.ptr as *const i8);
                    _mm_prefetch::<_MM_HINT_ET0>(last as *const i8);
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(self.ptr as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(last as *const i8);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (upto, write);
    }

    /// Copies the whole span into the front of `dst`; `false` (nothing copied) when `dst` is
    /// shorter.
    #[inline]
    pub fn read_into(&self, dst: &mut [u8]) -> bool {
        if dst.len() < self.len {
            return false;
        }
        // The span is `len` bytes inside a region mapping that lives as long as the borrowed
        // GuestMemory; dst holds at least len bytes; guest memory never overlaps our buffers.
        // SAFETY: len readable guest bytes at ptr, len writable bytes at dst, no overlap.
        unsafe { copy_bytes(self.ptr, dst.as_mut_ptr(), self.len) };
        true
    }

    /// Copies `src` into the span at `off`; `false` (nothing written) when it does not fit.
    #[inline]
    pub fn write_at(&self, off: usize, src: &[u8]) -> bool {
        match off.checked_add(src.len()) {
            Some(end) if end <= self.len => {
                // [off, end) lies inside the span (checked above), which lies inside a live
                // region mapping; src is our own memory, never guest memory.
                // SAFETY: src.len() writable guest bytes at ptr + off, no overlap with src.
                unsafe { copy_bytes(src.as_ptr(), self.ptr.add(off), src.len()) };
                true
            }
            _ => false,
        }
    }
}

/// A validated window over guest memory (a ring's descriptor table, available ring or used
/// ring), read and written with atomics. Every accessor checks bounds and alignment and
/// answers `None` (loads) or `false` (stores) instead of touching anything outside.
pub struct Area {
    ptr: NonNull<u8>,
    len: usize,
    mem: Arc<GuestMemory>,
}

// SAFETY: the window points into a mapping kept alive by `mem`; all access is atomic.
unsafe impl Send for Area {}

impl std::fmt::Debug for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Area").field("len", &self.len).finish()
    }
}

macro_rules! area_access {
    ($load:ident, $store:ident, $t:ty, $atomic:ty) => {
        #[inline]
        pub fn $load(&self, off: usize, order: Ordering) -> Option<$t> {
            let p = self.at(off, std::mem::size_of::<$t>())?;
            // SAFETY: at() checked that [off, off + size) lies inside the window (live guest
            // memory, kept mapped by self.mem) and that the address is aligned for $t; an
            // atomic access creates no reference to non-atomic data.
            Some(unsafe { <$atomic>::from_ptr(p.cast()) }.load(order))
        }
        #[inline]
        pub fn $store(&self, off: usize, v: $t, order: Ordering) -> bool {
            match self.at(off, std::mem::size_of::<$t>()) {
                Some(p) => {
                    // SAFETY: as in the load above.
                    unsafe { <$atomic>::from_ptr(p.cast()) }.store(v, order);
                    true
                }
                None => false,
            }
        }
    };
}

impl Area {
    #[inline]
    fn at(&self, off: usize, size: usize) -> Option<*mut u8> {
        let end = off.checked_add(size)?;
        if end > self.len {
            return None;
        }
        let p = self.ptr.as_ptr().wrapping_add(off);
        // Sizes are 2, 4, 8 or 16: powers of two.
        if (p as usize) & (size - 1) != 0 {
            return None;
        }
        Some(p)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hints the CPU to fetch the cache line holding byte `off` of the window (nothing when
    /// `off` is outside it), for reading or for writing.
    #[inline]
    pub fn prefetch(&self, off: usize, write: bool) {
        if off >= self.len {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
            let p = self.ptr.as_ptr().wrapping_add(off) as *const i8;
            // SAFETY: PREFETCH is a hint without architectural effect; the address lies in the
            // window, and even an unmapped one would not fault.
            unsafe {
                if write {
                    _mm_prefetch::<_MM_HINT_ET0>(p);
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(p);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = write;
    }

    /// The memory this window lies in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    area_access!(load_u16, store_u16, u16, AtomicU16);
    area_access!(load_u32, store_u32, u32, AtomicU32);
    area_access!(load_u64, store_u64, u64, AtomicU64);

    /// Two adjacent `u64` at `off` (a 16-byte descriptor), with one bounds and alignment check.
    #[inline]
    pub fn load_u64_pair(&self, off: usize, order: Ordering) -> Option<(u64, u64)> {
        let p = self.at(off, 16)?;
        // at() checked that [off, off + 16) lies inside the window (live guest memory, kept
        // mapped by self.mem) and that p is 16-, hence 8-byte aligned, so both u64 are aligned
        // and inside; atomic accesses create no reference to non-atomic data.
        // SAFETY: two aligned u64 inside live guest memory, read atomically (above).
        unsafe {
            let a = AtomicU64::from_ptr(p.cast()).load(order);
            let b = AtomicU64::from_ptr(p.add(8).cast()).load(order);
            Some((a, b))
        }
    }

    /// Two adjacent `u32` at `off` (a used-ring element), with one bounds and alignment check.
    #[inline]
    pub fn store_u32_pair(&self, off: usize, a: u32, b: u32, order: Ordering) -> bool {
        // 8 bytes at 4-byte alignment: at() checks the alignment of the size, so check by hand.
        let Some(end) = off.checked_add(8) else { return false };
        if end > self.len {
            return false;
        }
        let p = self.ptr.as_ptr().wrapping_add(off);
        if (p as usize) & 3 != 0 {
            return false;
        }
        // [off, off + 8) lies inside the window (live guest memory, kept mapped by self.mem)
        // and p is 4-byte aligned, so both u32 are aligned and inside; atomic accesses create
        // no reference to non-atomic data.
        // SAFETY: two aligned u32 inside live guest memory, written atomically (above).
        unsafe {
            AtomicU32::from_ptr(p.cast()).store(a, order);
            AtomicU32::from_ptr(p.add(4).cast()).store(b, order);
        }
        true
    }
}

/// The dirty-page log of live migration: one bit per 4 KiB guest page, set with atomic ORs.
pub struct DirtyLog {
    base: NonNull<u8>,
    len: usize,
    _map: Mapping,
}

// SAFETY: base points into the owned mapping; all access is atomic.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog").field("len", &self.len).finish()
    }
}

impl DirtyLog {
    /// Maps the log of `SET_LOG_BASE`: `size` bytes at `offset` in `fd`.
    pub fn map(fd: &OwnedFd, size: u64, offset: u64) -> Result<DirtyLog, MemError> {
        let bad = |msg: String| MemError::BadRegion { index: 0, msg };
        let end = offset.checked_add(size).ok_or_else(|| bad("log offset + size overflows".into()))?;
        if size == 0 {
            return Err(bad("empty log".into()));
        }
        let (file_len, _) = file_size_and_block(fd).map_err(|e| bad(format!("fstat: {e}")))?;
        if end > file_len {
            return Err(bad(format!("log ends at {end:#x} but the file holds {file_len:#x} bytes")));
        }
        let len = usize::try_from(end).map_err(|_| bad("log too large".into()))?;
        let map = Mapping::shared_fd(fd, len)?;
        // SAFETY: offset + size == len, so base stays inside the mapping.
        let base = unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(offset as usize)) };
        Ok(DirtyLog { base, len: size as usize, _map: map })
    }

    /// A log in anonymous memory (tests).
    pub fn anonymous(size: usize) -> Result<DirtyLog, MemError> {
        let map = Mapping::guarded_anon(size)?;
        // SAFETY: the accessible part starts GUARD bytes into the mapping.
        let base = unsafe { NonNull::new_unchecked(map.ptr.as_ptr().add(GUARD)) };
        Ok(DirtyLog { base, len: size, _map: map })
    }

    #[inline]
    fn byte(&self, i: usize) -> Option<&AtomicU8> {
        if i >= self.len {
            return None;
        }
        // SAFETY: i < len, inside the live mapping; AtomicU8 has alignment 1; the reference is
        // to an atomic, which the other side may change concurrently without a data race.
        Some(unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(i)) })
    }

    /// Marks every page that `[gpa, gpa + len)` touches. Pages beyond the log are ignored.
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let limit = (self.len as u64) * 8;
        let mut page = first;
        while page <= last && page < limit {
            if let Some(b) = self.byte((page / 8) as usize) {
                b.fetch_or(1 << (page % 8), Ordering::Relaxed);
            }
            page += 1;
        }
    }

    /// Whether the page holding `gpa` is marked.
    pub fn is_marked(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        match usize::try_from(page / 8).ok().and_then(|i| self.byte(i)) {
            Some(b) => b.load(Ordering::Relaxed) & (1 << (page % 8)) != 0,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_checked() {
        let m =
            GuestMemory::anonymous(&[(0x1000, 0x2000, 0x7000_0000), (0x3000, 0x1000, 0x9000_0000)]).unwrap();
        // Spans the two adjacent regions.
        m.write(0x2ff0, &[7u8; 32]).unwrap();
        let mut b = [0u8; 32];
        m.read(0x2ff0, &mut b).unwrap();
        assert_eq!(b, [7u8; 32]);
        assert!(m.read(0x0fff, &mut b).is_err());
        assert!(m.write(0x3ff0, &[0u8; 32]).is_err());
        assert!(m.read(u64::MAX - 4, &mut b).is_err());
        assert!(!m.contains(0x1000, u64::MAX));
        assert!(m.contains(0x1000, 0x3000));
        let m = Arc::new(m);
        // Areas must not span regions and must be aligned.
        assert!(m.area_gpa(0x2ff0, 32, 16).is_err());
        assert!(m.area_gpa(0x1002, 4, 4).is_err());
        let a = m.area_uva(0x7000_0010, 16, 16).unwrap();
        assert!(a.store_u64(8, 0x1122, Ordering::Relaxed));
        assert_eq!(a.load_u64(8, Ordering::Relaxed), Some(0x1122));
        assert_eq!(a.load_u64(12, Ordering::Relaxed), None);
        assert_eq!(a.load_u16(15, Ordering::Relaxed), None);
        assert!(!a.store_u32(usize::MAX - 1, 0, Ordering::Relaxed));
    }

    #[test]
    fn spans_stay_inside_one_region() {
        let m = GuestMemory::anonymous(&[(0, 0x1000, 0x10_0000), (0x1000, 0x1000, 0x20_0000)]).unwrap();
        assert!(m.span(0, 0).is_none(), "empty");
        assert!(m.span(0xf00, 0x200).is_none(), "crosses into the next region");
        assert!(m.span(0x1f00, 0x200).is_none(), "runs past the end");
        assert!(m.span(u64::MAX - 4, 8).is_none(), "overflows");
        assert!(m.span(0x3000, 1).is_none(), "outside the table");
        let s = m.span(0x1100, 100).unwrap();
        assert_eq!(s.len(), 100);
        let src: Vec<u8> = (0..100u8).collect();
        for len in [1usize, 7, 8, 15, 16, 31, 32, 63, 64, 100] {
            assert!(s.write_at(100 - len, &src[..len]));
            let mut back = [0u8; 100];
            assert!(m.span(0x1100 + 100 - len as u64, len as u64).unwrap().read_into(&mut back));
            assert_eq!(&back[..len], &src[..len], "length {len}");
        }
        // Spans that end exactly at the end of a region (followed by a guard page): the
        // overlapping moves of every length class stay inside.
        for len in [1usize, 7, 8, 15, 16, 31, 32, 63, 64, 100] {
            let end = m.span(0x2000 - len as u64, len as u64).unwrap();
            assert!(end.write_at(0, &src[..len]));
            let mut back = [0u8; 100];
            assert!(end.read_into(&mut back));
            assert_eq!(&back[..len], &src[..len], "length {len} at the end");
        }
        assert!(!s.write_at(1, &src), "one byte too many");
        assert!(!s.write_at(usize::MAX, &src[..2]), "offset overflow");
        assert!(!s.read_into(&mut [0u8; 99]), "destination too short");
        let t = s.skip(99).unwrap();
        assert_eq!(t.len(), 1);
        assert!(s.skip(100).is_none());
        s.prefetch(1000, true);
        t.prefetch(0, false);
    }

    #[test]
    fn dirty_log_marks_pages_in_bounds() {
        let l = DirtyLog::anonymous(2).unwrap();
        l.mark(4096 * 3 + 10, 4096);
        assert!(l.is_marked(4096 * 3) && l.is_marked(4096 * 4) && !l.is_marked(4096 * 5));
        l.mark(u64::MAX - 1, 100);
        l.mark(4096 * 15, 4096 * 100);
        assert!(l.is_marked(4096 * 15));
        assert!(!l.is_marked(4096 * 16));
    }
}
