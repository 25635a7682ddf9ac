//! The CPU's time-stamp counter, for counting busy and idle cycles (as OVS's
//! `dpif-netdev/pmd-stats-show` does). The one `unsafe` here is a single instruction that
//! reads a register and touches no memory.

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
