//! TX of merged TCP runs: a second packet socket per TX handle, without a ring, with
//! `PACKET_VNET_HDR`, through which a run of segments of one TCP flow
//! ([`merge_tcp_run`](switchyard_dataplane::wire::tcp_merge::merge_tcp_run)) leaves as one
//! GSO super-frame: one `sendmsg` whose iovec is the virtio-net header and the merged headers,
//! then each segment's payload where it lies in its buffer (the kernel copies them once into
//! the packet it builds). A veth hands that packet to the peer's stack whole, as the kernel's
//! own VXLAN + bridge path hands it a TSO packet; a device without TSO gets it cut again by
//! the kernel's software GSO.
//!
//! A socket with a TX ring sends only from the ring, hence the second socket; the ring is
//! kicked before a merged send so that frames leave in the order of the burst.

use super::abi::{bind_packet, packet_socket, setsockopt, PACKET_QDISC_BYPASS, PACKET_VNET_HDR};
use super::AfPacketOptions;
use crate::netdev::errno;
use std::os::fd::{AsRawFd, OwnedFd};
use switchyard_dataplane::buffer::PacketBuf;
use switchyard_dataplane::port::MAX_BURST;
use switchyard_dataplane::wire::tcp_merge::TcpMerge;

/// The send buffer asked for: a few super-frames in flight (a veth takes each at once).
const SNDBUF: libc::c_int = 4 << 20;

pub(super) struct MergeSock {
    fd: OwnedFd,
}

impl MergeSock {
    /// The socket, or `None` when the kernel refuses `PACKET_VNET_HDR` (or any step fails):
    /// then every frame goes through the ring, as without merging.
    pub(super) fn open(port: &str, ifindex: i32, opts: &AfPacketOptions) -> Option<MergeSock> {
        let fd = packet_socket().ok()?;
        let raw = fd.as_raw_fd();
        let on: libc::c_int = 1;
        if let Err(e) = setsockopt(raw, libc::SOL_PACKET, PACKET_VNET_HDR, &on) {
            tracing::warn!(port, error = %e, "PACKET_VNET_HDR refused on TX: TCP runs are sent segment by segment");
            return None;
        }
        if opts.qdisc_bypass {
            let _ = setsockopt(raw, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &on);
        }
        // Best effort, as the UDP tunnel's buffers: the FORCE option needs CAP_NET_ADMIN.
        if setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SNDBUF).is_err() {
            let _ = setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, &SNDBUF);
        }
        // Protocol 0: this socket sends only and never receives.
        if let Err(e) = bind_packet(raw, ifindex, 0) {
            tracing::warn!(port, error = %e, "TX merge socket: bind failed: TCP runs are sent segment by segment");
            return None;
        }
        Some(MergeSock { fd })
    }

    /// Sends the run `segs` (the segments `m` was made of) as one super-frame; `Err(errno)`
    /// when the kernel took nothing.
    pub(super) fn send(&self, m: &TcpMerge, segs: &[PacketBuf]) -> Result<(), i32> {
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let mut iov = [empty; MAX_BURST + 1];
        let head = m.head();
        iov[0] = libc::iovec { iov_base: head.as_ptr() as *mut libc::c_void, iov_len: head.len() };
        let mut n = 1;
        for (slot, b) in iov[1..].iter_mut().zip(segs) {
            let Some(p) = b.data().get(m.hdrs..) else { return Err(libc::EINVAL) };
            *slot = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
            n += 1;
        }
        // SAFETY: msghdr is plain data; all-zero (no address, no control) is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        // SAFETY: every iovec points at `head` or a segment's bytes, all alive and unchanged
        // for the call (borrowed by `m` and `segs`); the kernel only reads them. `msg` names
        // no address or control buffer.
        let rc = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if rc < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }
}
