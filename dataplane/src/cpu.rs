//! Two CPU instructions the fast path wants and the standard library does not offer safely:
//! the time-stamp counter, for counting busy and idle cycles (as OVS's
//! `dpif-netdev/pmd-stats-show` does), and a prefetch hint. Neither reads nor writes memory
//! that Rust can see.

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
