//! AF_XDP's kernel interface (linux/if_xdp.h): the socket, its options, and the four rings
//! mapped from it with their producer/consumer protocol.
//!
//! Invariant: a ring's indices are read and written only through [`Ring`], with acquire loads
//! of the kernel's index and release stores of ours; an index is masked before it addresses an
//! entry, so no entry outside the mapping is ever touched.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

pub(super) const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
pub(super) const XDP_RX_RING: libc::c_int = 2;
pub(super) const XDP_TX_RING: libc::c_int = 3;
pub(super) const XDP_UMEM_REG: libc::c_int = 4;
pub(super) const XDP_UMEM_FILL_RING: libc::c_int = 5;
pub(super) const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
pub(super) const XDP_SHARED_UMEM: u16 = 1;
/// Bind flag: the kernel says in each ring's flags word when it must be woken (a `sendto` for
/// TX, a `recvfrom` or `poll` for the fill ring) instead of needing a system call every time.
/// A socket sharing the UMEM takes it from the first socket (the kernel refuses it there).
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// The flags word's bit: the kernel waits for a system call to go on with this ring.
const XDP_RING_NEED_WAKEUP: u32 = 1;
pub(super) const XDP_UMEM_UNALIGNED_CHUNK_FLAG: u32 = 1;
const PGOFF_RX: libc::off_t = 0;
const PGOFF_TX: libc::off_t = 0x8000_0000;
const PGOFF_FILL: libc::off_t = 0x1_0000_0000;
const PGOFF_COMP: libc::off_t = 0x1_8000_0000;
/// In unaligned-chunk mode the kernel puts a descriptor's offset into its chunk above bit 48.
const UNALIGNED_OFFSET_SHIFT: u32 = 48;

/// An RX or TX descriptor: a frame at `addr` (an offset into the UMEM) of `len` bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// The UMEM offset a descriptor's address means (unaligned mode's offset folded in).
#[inline(always)]
pub(super) fn desc_offset(addr: u64) -> u64 {
    (addr & ((1 << UNALIGNED_OFFSET_SHIFT) - 1)) + (addr >> UNALIGNED_OFFSET_SHIFT)
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct xdp_umem_reg`.
#[repr(C)]
pub(super) struct UmemReg {
    pub addr: u64,
    pub len: u64,
    pub chunk_size: u32,
    pub headroom: u32,
    pub flags: u32,
    pub tx_metadata_len: u32,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_statistics`: the kernel's per-socket drop counts.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct XdpStatistics {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// A new AF_XDP socket.
pub(super) fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; no pointers.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is a live, writable T and `len` its size; the kernel writes at most `len`.
    let rc = unsafe { libc::getsockopt(fd, SOL_XDP, opt, &mut v as *mut T as *mut libc::c_void, &mut len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// The socket's kernel drop counts.
pub(super) fn statistics(fd: RawFd) -> io::Result<XdpStatistics> {
    getsockopt(fd, XDP_STATISTICS)
}

/// Whether the bound socket runs in zero-copy mode.
pub(super) fn zero_copy(fd: RawFd) -> bool {
    getsockopt::<u32>(fd, XDP_OPTIONS).is_ok_and(|o| o & XDP_OPTIONS_ZEROCOPY != 0)
}

/// Binds the socket to queue `queue` of interface `ifindex`; `shared`: the socket whose UMEM
/// it shares. No mode flag: the kernel binds zero-copy where the driver has it and falls back
/// to copy mode otherwise (and a socket sharing a UMEM may give none). The first socket asks
/// for need-wakeup flags (the sharing ones inherit them).
pub(super) fn bind(fd: RawFd, ifindex: u32, queue: u32, shared: Option<RawFd>) -> io::Result<()> {
    let sa = SockaddrXdp {
        family: libc::AF_XDP as u16,
        flags: if shared.is_some() { XDP_SHARED_UMEM } else { XDP_USE_NEED_WAKEUP },
        ifindex,
        queue_id: queue,
        shared_umem_fd: shared.map_or(0, |f| f as u32),
    };
    // SAFETY: `sa` is a valid sockaddr_xdp and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd,
            &sa as *const SockaddrXdp as *const libc::sockaddr,
            std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Wakes the driver to go on filling the RX ring (zero-copy drivers that ran out of fill
/// buffers set the fill ring's need-wakeup flag and wait for this). Errors are the driver's
/// to report through the rings; nothing to do about them here.
pub(super) fn wake_rx(fd: RawFd) {
    // SAFETY: a zero-length receive with no buffer and no address: the kernel writes no memory.
    unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// Asks the kernel to send what the TX ring holds (copy mode sends only when asked). `Ok`
/// when it took some or had nothing; the errno otherwise (EAGAIN: its batch budget ran out).
pub(super) fn kick_tx(fd: RawFd) -> Result<(), i32> {
    // SAFETY: a zero-length send with no buffer and no address: the kernel reads no memory.
    let rc = unsafe { libc::sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
    if rc < 0 {
        Err(crate::netdev::errno())
    } else {
        Ok(())
    }
}

/// One ring mapped from an AF_XDP socket, of entries `T` (descriptors, or UMEM addresses for
/// the fill and completion rings); unmapped on drop.
pub(super) struct Ring<T> {
    map: NonNull<u8>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
    /// Our index: the producer for a ring we fill, the consumer for one we drain.
    local: u32,
}

// SAFETY: the mapping is owned by this value alone (no other copy of the pointers exists in
// this process); the kernel's side is synchronised through the atomics.
unsafe impl<T: Send> Send for Ring<T> {}

/// Which ring to map.
#[derive(Clone, Copy)]
pub(super) enum Which {
    Rx,
    Tx,
    Fill,
    Completion,
}

impl<T: Copy> Ring<T> {
    /// Maps ring `which` of socket `fd` (its size set before with the ring's socket option).
    pub(super) fn map(fd: &OwnedFd, which: Which, size: u32) -> io::Result<Ring<T>> {
        let offs: MmapOffsets = getsockopt(fd.as_raw_fd(), XDP_MMAP_OFFSETS)?;
        let (off, pgoff) = match which {
            Which::Rx => (offs.rx, PGOFF_RX),
            Which::Tx => (offs.tx, PGOFF_TX),
            Which::Fill => (offs.fr, PGOFF_FILL),
            Which::Completion => (offs.cr, PGOFF_COMP),
        };
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a fresh shared mapping of the socket's ring; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p as *mut u8;
        // SAFETY: the kernel's offsets lie inside the mapping of `map_len` bytes (it sized the
        // ring for `size` entries behind `desc`); the index words are 4-byte aligned u32s.
        let (producer, consumer, flags, entries) = unsafe {
            (
                NonNull::new_unchecked(base.add(off.producer as usize) as *mut AtomicU32),
                NonNull::new_unchecked(base.add(off.consumer as usize) as *mut AtomicU32),
                NonNull::new_unchecked(base.add(off.flags as usize) as *mut AtomicU32),
                NonNull::new_unchecked(base.add(off.desc as usize) as *mut T),
            )
        };
        let mut r = Ring {
            // SAFETY: mmap succeeded, so `base` is not null.
            map: unsafe { NonNull::new_unchecked(base) },
            map_len,
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            local: 0,
        };
        r.local = match which {
            Which::Tx | Which::Fill => r.prod().load(Ordering::Relaxed),
            Which::Rx | Which::Completion => r.cons().load(Ordering::Relaxed),
        };
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the mapping, which lives as long as `self`.
        unsafe { self.producer.as_ref() }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as prod().
        unsafe { self.consumer.as_ref() }
    }

    /// Whether the kernel waits for a system call to go on with this ring (need-wakeup).
    #[inline]
    pub(super) fn needs_wakeup(&self) -> bool {
        // SAFETY: points into the mapping, which lives as long as `self`.
        unsafe { self.flags.as_ref() }.load(Ordering::Acquire) & XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer side: entries we may write now.
    #[inline]
    pub(super) fn free(&self) -> u32 {
        (self.mask + 1) - self.local.wrapping_sub(self.cons().load(Ordering::Acquire))
    }

    /// Producer side: entries produced and not yet taken by the kernel.
    #[inline]
    pub(super) fn outstanding(&self) -> u32 {
        self.local.wrapping_sub(self.cons().load(Ordering::Acquire))
    }

    /// Producer side: writes entry `i` past our producer index (`i < free()`).
    #[inline]
    pub(super) fn write(&mut self, i: u32, v: T) {
        let slot = (self.local.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot <= mask < the ring's entry count, all inside the mapping.
        unsafe { self.entries.as_ptr().add(slot).write_volatile(v) };
    }

    /// Producer side: hands the next `n` written entries to the kernel.
    #[inline]
    pub(super) fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.prod().store(self.local, Ordering::Release);
    }

    /// Consumer side: entries the kernel produced that we have not consumed.
    #[inline]
    pub(super) fn available(&self) -> u32 {
        self.prod().load(Ordering::Acquire).wrapping_sub(self.local)
    }

    /// Consumer side: entry `i` past our consumer index (`i < available()`).
    #[inline]
    pub(super) fn read(&self, i: u32) -> T {
        let slot = (self.local.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot <= mask < the ring's entry count, all inside the mapping.
        unsafe { self.entries.as_ptr().add(slot).read_volatile() }
    }

    /// Consumer side: gives the next `n` entries back to the kernel.
    #[inline]
    pub(super) fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.cons().store(self.local, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by map() with this length and nothing points into it
        // past this value.
        unsafe { libc::munmap(self.map.as_ptr() as *mut libc::c_void, self.map_len) };
    }
}
