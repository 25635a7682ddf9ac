//! DPDK FFI for switchyard, and a thin safe layer over it. Empty unless the
//! `dpdk` feature is enabled (then it needs DPDK 22.11, found by pkg-config,
//! and a C compiler; no libclang: the bindgen output is committed).
//!
//! - [`sys`]: the raw bindings (bindgen, allowlisted) and the C shim for
//!   DPDK's static-inline functions.
//! - [`eal`]: EAL init, once per process.
//! - [`mempool`], [`mbuf`]: packet buffer pools and owned mbufs.
//! - [`ethdev`]: ports: probe, configure, queues, start/stop, stats, bursts.
//! - [`error`]: the one error type, with DPDK's messages.

#[cfg(feature = "dpdk")]
pub mod eal;
#[cfg(feature = "dpdk")]
pub mod error;
#[cfg(feature = "dpdk")]
pub mod ethdev;
#[cfg(feature = "dpdk")]
pub mod mbuf;
#[cfg(feature = "dpdk")]
pub mod mempool;
#[cfg(feature = "dpdk")]
pub mod sys;

#[cfg(feature = "dpdk")]
pub use {
    eal::{Eal, EalOptions},
    error::{Error, Result},
    ethdev::{DevInfo, EthDev, EthStats, Link},
    mbuf::Mbuf,
    mempool::Mempool,
};
