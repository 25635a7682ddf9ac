//! What the benchmarks (criterion) and the instruction-count examples share: a burst of
//! zeroed IPv4-typed frames whose addresses each iteration writes, and a cheap reproducible
//! pseudo-random sequence. Included with `#[path]` by dataplane/benches, dataplane/examples
//! and the workspace's benches/pipeline.rs.

// Each includer uses a part.
#![allow(dead_code)]

use switchyard_dataplane::port::Burst;
use switchyard_dataplane::wire::{EtherType, ETH_TYPE_OFFSET};
use switchyard_dataplane::PoolCache;

/// `n` buffers from `cache`, each a `len`-byte frame of zeros but for the EtherType (IPv4).
pub fn ipv4_burst(cache: &mut PoolCache, n: usize, len: usize) -> Burst {
    let mut frame = vec![0u8; len];
    frame[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2].copy_from_slice(&EtherType::IPV4.to_be_bytes());
    let mut burst = Burst::new();
    for _ in 0..n {
        burst.push(cache.alloc_copy(&frame).expect("a buffer for the burst"));
    }
    burst
}

/// A splitmix64 step: a cheap, reproducible pseudo-random sequence.
pub fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
