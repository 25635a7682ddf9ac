//! The one error type of the safe layer.
//!
//! Every DPDK failure becomes a variant carrying DPDK's own message
//! (`rte_strerror`) and, where there is one, the device or pool name.

use crate::sys;
use std::ffi::CStr;

/// A failure reported by DPDK (or caught before calling it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `rte_eal_init` failed.
    #[error("DPDK EAL init failed ({message}); EAL arguments: {args}")]
    EalInit { args: String, errno: i32, message: String },
    /// EAL was already initialised in this process with other options.
    #[error("DPDK EAL is already initialised with other options (first: {first}; now: {requested})")]
    EalOptionsDiffer { first: String, requested: String },
    /// An argument that cannot be passed to DPDK (a NUL byte, out of range...).
    #[error("invalid argument for {what}: {reason}")]
    InvalidArgument { what: String, reason: String },
    /// `rte_pktmbuf_pool_create` failed.
    #[error("mempool {pool}: create failed: {message}")]
    MempoolCreate { pool: String, errno: i32, message: String },
    /// The pool had no free mbuf.
    #[error("mempool {pool}: no free mbuf")]
    MbufAlloc { pool: String },
    /// `rte_dev_probe` failed (bad devargs, unknown driver, device busy...).
    #[error("device {device}: probe of {devargs:?} failed: {message}")]
    Probe { device: String, devargs: String, errno: i32, message: String },
    /// The device probed but no ethdev port has its name.
    #[error("device {device}: no ethdev port of that name after probing {devargs:?}")]
    NoSuchPort { device: String, devargs: String },
    /// An ethdev call failed; `op` names it (configure, rx_queue_setup, start...).
    #[error("device {device}: {op} failed: {message}")]
    EthDev { device: String, op: &'static str, errno: i32, message: String },
    /// A queue index outside what was configured.
    #[error("device {device}: {what} queue {queue} is not set up (configured: {configured})")]
    BadQueue { device: String, what: &'static str, queue: u16, configured: u16 },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// DPDK's text for an errno value (positive), e.g. from `-ret` or `rte_errno`.
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror accepts any int and returns a pointer to a
    // NUL-terminated string (static or in a per-thread buffer) that stays
    // valid until the next call on this thread; we copy it out at once.
    let p = unsafe { sys::rte_strerror(errno) };
    if p.is_null() {
        return format!("error {errno}");
    }
    // SAFETY: p is non-null and NUL-terminated (see above).
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    format!("{s} (errno {errno})")
}

/// The calling thread's `rte_errno`.
pub fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local int; no preconditions.
    unsafe { sys::shim::sy_rte_errno() }
}

/// Turns a DPDK `int` return (0 or positive = success, `-errno` = failure)
/// into a `Result`, building the error with `make(errno, message)`.
pub(crate) fn check(ret: i32, make: impl FnOnce(i32, String) -> Error) -> Result<i32> {
    if ret >= 0 {
        Ok(ret)
    } else {
        let errno = -ret;
        Err(make(errno, strerror(errno)))
    }
}
