//! Two CPU instructions the fast path wants and the standard library does not offer safely:
//! the time-stamp counter, for counting busy and idle cycles (as OVS's
//! `dpif-netdev/pmd-stats-show` does), and a prefetch hint. Neither reads nor writes memory
//! that Rust can see. Also the scheduler's time slice of a worker thread ([`set_slice`]), a
//! system call that neither the libc crate nor nix wraps.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads the time-stamp counter (or a nanosecond clock where there is none).
#[inline]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter register; it has no memory effects and is available
        // on every x86-64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Counter ticks per second, measured once (20 ms) against the monotonic clock.
pub fn hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), rdtsc());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (Instant::now(), rdtsc());
        let ns = (t1 - t0).as_nanos().max(1) as u64;
        ((c1.wrapping_sub(c0)) as u128 * 1_000_000_000 / ns as u128) as u64
    })
}

/// Asks the CPU to bring the cache line at address `addr` closer (a hint; it never faults,
/// whatever the address, and reads nothing Rust can see).
#[inline]
pub fn prefetch_addr(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = std::ptr::without_provenance::<i8>(addr);
        // SAFETY: PREFETCHT0 is a hint with no architectural effect; an invalid address does
        // not fault.
        unsafe { core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Whole seconds of the kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`: the time
/// of the last timer tick, read from the vDSO's data page without reading the time-stamp
/// counter, which is slow in some VMs); 0 where it cannot be read.
#[inline]
pub fn coarse_seconds() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is, and keeps no pointer to it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc == 0 {
        ts.tv_sec as u64
    } else {
        0
    }
}

/// Asks the CPU to bring the cache lines of `bytes` closer (a hint; it never faults).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: PREFETCHT0 is a hint with no architectural effect; the address lies
            // inside `bytes`, and even an invalid address would not fault.
            unsafe {
                core::arch::x86_64::_mm_prefetch(
                    bytes.as_ptr().add(off) as *const i8,
                    core::arch::x86_64::_MM_HINT_T0,
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// `struct sched_attr` of sched_setattr(2), its first version (`SCHED_ATTR_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// The flag of `sched_attr` that survives [`set_slice`] (the others need a larger struct).
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

/// Sets the calling thread's time slice under the normal policy (SCHED_OTHER) to `slice`
/// (`None`: the kernel's default). Under Linux's EEVDF scheduler (6.12 on) a woken thread
/// whose slice is shorter than the running thread's preempts it at once instead of waiting
/// for the end of that slice; the kernel takes 0.1 to 100 ms and older kernels ignore the
/// value. A thread under another policy (real-time, deadline) is left as it is, and the
/// thread's nice value is kept.
pub fn set_slice(slice: Option<Duration>) -> std::io::Result<()> {
    let size = std::mem::size_of::<SchedAttr>() as u32;
    let mut attr = SchedAttr::default();
    // SAFETY: sched_getattr(2) on the calling thread (pid 0) writes at most `size` bytes into
    // `attr`, a live `repr(C)` struct of that size laid out as the kernel's version 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.policy != libc::SCHED_OTHER as u32 {
        return Ok(());
    }
    attr.size = size;
    attr.flags &= SCHED_FLAG_RESET_ON_FORK;
    attr.runtime = slice.map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
    // SAFETY: sched_setattr(2) on the calling thread reads `size` bytes of `attr`, a live
    // `repr(C)` struct of that size.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice the kernel reports for the calling thread (`se.slice` in
    /// /proc/thread-self/sched, ns), where it reports one.
    fn slice_now() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = text.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_and_the_default_back() {
        std::thread::spawn(|| {
            let Some(default) = slice_now() else {
                testkit::skip(
                    "a_thread_gets_the_slice_it_asks_for_and_the_default_back",
                    "no se.slice in /proc/thread-self/sched (a kernel without EEVDF slices)",
                );
                return;
            };
            set_slice(Some(Duration::from_micros(100))).expect("sched_setattr");
            assert_eq!(slice_now(), Some(100_000));
            set_slice(None).expect("sched_setattr");
            assert_eq!(slice_now(), Some(default));
        })
        .join()
        .expect("test thread");
    }
}
