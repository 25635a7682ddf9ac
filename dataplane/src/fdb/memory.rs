//! The MAC table's memory: zeroed pairs of atomics in one anonymous mapping, on transparent
//! huge pages when large. Invariant: the bytes are only ever accessed through the atomics of
//! [`AtomicPairs::pairs`].

use super::FdbError;
use crate::buffer::{advise_huge, HUGEPAGE};
use std::sync::atomic::AtomicU64;

/// Zeroed memory for a large table of atomic pairs (the MAC table's slots); from 2 MiB up,
/// aligned to 2 MiB and advised onto transparent huge pages: a table of 1M entries is 64 MiB
/// that every frame touches at random, one TLB miss per lookup on 4 KiB pages. Lives as long
/// as the value. The memory is only ever accessed through the atomics of [`AtomicPairs::pairs`]
/// (the mapping is held as an `MmapRaw`, so no `&[u8]` over it ever exists).
pub struct AtomicPairs {
    map: memmap2::MmapRaw,
    /// Offset of the first pair in `map` (the first 2 MiB boundary for a large table, else 0).
    offset: usize,
    len: usize,
}

impl AtomicPairs {
    /// `len` pairs of zeroed `AtomicU64`s (at least one).
    pub fn zeroed(len: usize) -> Result<AtomicPairs, FdbError> {
        let len = len.max(1);
        let err = |bytes: usize, reason: &str| {
            FdbError::NoMemory(format!("cannot map {bytes} bytes for pool mac table: {reason}"))
        };
        let bytes = len
            .checked_mul(std::mem::size_of::<[AtomicU64; 2]>())
            .filter(|&b| b <= isize::MAX as usize - HUGEPAGE)
            .ok_or_else(|| err(usize::MAX, "size overflows"))?;
        // A table smaller than a huge page stays on ordinary pages (a huge page would commit
        // 2 MiB for it). A larger one gets room to start at a 2 MiB boundary wherever the
        // kernel puts the mapping.
        let huge = bytes >= HUGEPAGE;
        let total = if huge { bytes + HUGEPAGE } else { bytes };
        let map =
            memmap2::MmapOptions::new().len(total).map_anon().map_err(|e| err(bytes, &e.to_string()))?;
        let map = memmap2::MmapRaw::from(map);
        let start = map.as_mut_ptr() as usize;
        let offset = if huge { start.next_multiple_of(HUGEPAGE) - start } else { 0 };
        if huge {
            advise_huge(|a| map.advise_range(a, offset, bytes));
        }
        Ok(AtomicPairs { map, offset, len })
    }

    /// The pairs.
    pub fn pairs(&self) -> &[[AtomicU64; 2]] {
        // Why this holds: offset + len * 16 <= the mapping's length (zeroed() mapped len * 16
        // bytes, plus 2 MiB when the offset may be non-zero, and the offset is below 2 MiB);
        // the start is page aligned, more than AtomicU64 needs; the pointer comes from the raw
        // mapping (writable, no reference over the bytes exists); an anonymous mapping is
        // zero-filled and all-zero bytes are a valid AtomicU64; the mapping lives as long as
        // &self; the bytes are only ever accessed through these atomics, and shared access is
        // what atomics are for.
        let first = self.map.as_mut_ptr().wrapping_add(self.offset).cast::<[AtomicU64; 2]>();
        // SAFETY: `len` valid, aligned, zero-initialised pairs at `first` for as long as &self.
        unsafe { std::slice::from_raw_parts(first, self.len) }
    }
}

impl std::fmt::Debug for AtomicPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicPairs").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn atomic_pairs_are_zeroed_aligned_and_usable_end_to_end() {
        for len in [1usize, 64, HUGEPAGE / 16, 3 * HUGEPAGE / 16 + 5] {
            let t = AtomicPairs::zeroed(len).expect("map");
            let p = t.pairs();
            assert_eq!(p.len(), len);
            assert!(p.iter().all(|s| s[0].load(Ordering::Relaxed) == 0 && s[1].load(Ordering::Relaxed) == 0));
            if len * 16 >= HUGEPAGE {
                assert_eq!(p.as_ptr() as usize % HUGEPAGE, 0, "a large table starts on a 2 MiB boundary");
            }
            p[0][0].store(1, Ordering::Relaxed);
            p[len - 1][1].store(u64::MAX, Ordering::Relaxed);
            assert_eq!(p[0][0].load(Ordering::Relaxed), 1);
            assert_eq!(p[len - 1][1].load(Ordering::Relaxed), u64::MAX);
        }
        assert_eq!(AtomicPairs::zeroed(0).expect("map").pairs().len(), 1, "never empty");
        assert!(AtomicPairs::zeroed(usize::MAX / 8).is_err(), "a size that overflows is refused");
    }
}
