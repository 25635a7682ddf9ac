//! Shared EAL setup for the DPDK tests: one EAL per test process, shared by
//! all its tests, with no hugepages and little memory. A test skips (testkit)
//! only when EAL fails and DPDK itself cannot run here (`dpdk-testpmd`'s bare
//! self-check fails too); an EAL failure where DPDK runs fails the test.
#![allow(dead_code)]

pub mod scatter;

use switchyard_bindings::{Eal, EalOptions};

/// Vdev given to EAL at init (not probed at runtime) by every test process.
pub const EAL_VDEV: &str = "net_ring_eal0";

pub fn options() -> EalOptions {
    EalOptions {
        no_huge: Some(true),
        memory_mb: Some(256),
        vdevs: vec![EAL_VDEV.to_string()],
        log_level: std::env::var("SWITCHYARD_DPDK_LOG").ok(),
        ..EalOptions::default()
    }
}

/// The process's EAL, or `None` (the skip reported) when DPDK cannot run here.
pub fn eal() -> Option<&'static Eal> {
    match Eal::init(options()) {
        Ok(eal) => Some(eal),
        Err(e) => {
            testkit::fail_or_skip(&testkit::current_test(), "Eal::init", &e, testkit::probe::testpmd());
            None
        }
    }
}

/// A frame of `len` bytes whose content is derived from `seed`.
pub fn frame(seed: u32, len: usize) -> Vec<u8> {
    use testkit::frame::{Frame, ETHERTYPE_LOCAL_EXPERIMENTAL};
    let s = seed.to_be_bytes();
    Frame::new([2, 0, 0, 0, 0, 1], [2, 0, 0, s[1], s[2], s[3]])
        .ethertype(ETHERTYPE_LOCAL_EXPERIMENTAL)
        .fill(len, |i| (seed as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .build()
}

/// A fresh directory for this test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-bindings-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
