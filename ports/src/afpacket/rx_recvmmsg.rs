//! RX mode `recvmmsg`: no ring; `recvmmsg(2)` into slots, the stripped tag and the drop count
//! from control messages.

use super::abi::{
    setsockopt, AUX_SIZE, AUX_STATUS, AUX_VLAN_TCI, AUX_VLAN_TPID, PACKET_AUXDATA, PACKET_OUTGOING,
    SO_RXQ_OVFL,
};
use super::rx::{read_kernel_drops, rx_frame, rx_segments, rx_socket, PendingGso, RxFrame};
use super::rx_ring::stripped_tag;
use super::{AfPacketOptions, Shared};
use crate::netdev::{errno, io};
use std::os::fd::{AsRawFd, OwnedFd};
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, DropTally, PortError, RxCtx};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::offload::{VnetHdrRepr, VNET_HDR_LEN};

/// Frames one `recvmmsg(2)` call takes at most.
pub(super) const RECV_BATCH: usize = 32;
/// A receive slot: the virtio-net header and the largest frame the kernel hands over (a
/// 64 KiB GSO super-frame and its Ethernet header). Only the pages a frame touches are ever
/// faulted in, so small frames cost a page per slot.
pub(super) const RECV_SLOT: usize = 66 << 10;
/// The socket's receive queue limit: what a default `ring` RX queue holds (16 x 256 KiB).
pub(super) const RECV_QUEUE_BYTES: libc::c_int = 4 << 20;
/// Control-message room per frame: `PACKET_AUXDATA` (16 + 20 bytes, aligned) and
/// `SO_RXQ_OVFL` (16 + 4, aligned), with slack.
pub(super) const RECV_CTRL_WORDS: usize = 16;

/// What the kernel said about one frame of the last `recvmmsg` call.
#[derive(Clone, Copy, Default)]
pub(super) struct RecvMeta {
    /// Bytes of the message (virtio-net header included); with `MSG_TRUNC`, all of them,
    /// not only those that fit the slot.
    len: usize,
    truncated: bool,
    pkttype: u8,
    /// `tp_status`, TCI and TPID of the `PACKET_AUXDATA` message.
    aux: Option<(u32, u16, u16)>,
    /// The socket's running drop count (`SO_RXQ_OVFL`), when the kernel sent it.
    dropped: Option<u32>,
}

/// RX by `recvmmsg(2)` on the packet socket: frames are received into `RECV_BATCH` slots and
/// handed one by one to [`rx_frame`], like the ring's. The kernel keeps no ring and no timer
/// for this socket; poll(2) reports it readable while its receive queue is not empty.
pub(super) struct RxSock {
    pub(super) fd: OwnedFd,
    vnet: bool,
    /// `RECV_BATCH` slots of `RECV_SLOT` bytes.
    slots: Box<[u8]>,
    meta: [RecvMeta; RECV_BATCH],
    /// Frames received by the last call, and the next of them to hand out.
    got: usize,
    next: usize,
    /// A super-frame (in a slot) whose segments did not all fit the last burst.
    pending: Option<PendingGso>,
    /// The last `SO_RXQ_OVFL` count seen.
    dropped: u32,
}

impl RxSock {
    pub(super) fn open(
        port: &str,
        ifindex: i32,
        opts: &AfPacketOptions,
        fanout: Option<u32>,
    ) -> Result<RxSock, PortError> {
        let (fd, vnet, ()) = rx_socket(port, ifindex, opts, fanout, |raw| {
            let one: libc::c_int = 1;
            // The VLAN tag the kernel took out comes only in this control message.
            setsockopt(raw, libc::SOL_PACKET, PACKET_AUXDATA, &one)
                .map_err(|e| io(port, "PACKET_AUXDATA", e))?;
            // The drop count in each frame's control data says when to read PACKET_STATISTICS.
            setsockopt(raw, libc::SOL_SOCKET, SO_RXQ_OVFL, &one).map_err(|e| io(port, "SO_RXQ_OVFL", e))?;
            // The queue may hold as much as a default ring (TSO super-frames are 64 KiB each;
            // the default rmem_default holds three). A limit, not memory: nothing is
            // allocated until frames wait. The kernel doubles the value; FORCE passes
            // rmem_max where the process may (CAP_NET_ADMIN).
            let limit: libc::c_int = RECV_QUEUE_BYTES / 2;
            if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &limit).is_err() {
                let _ = setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &limit);
            }
            Ok(())
        })?;
        Ok(RxSock {
            fd,
            vnet,
            slots: vec![0u8; RECV_BATCH * RECV_SLOT].into_boxed_slice(),
            meta: [RecvMeta::default(); RECV_BATCH],
            got: 0,
            next: 0,
            pending: None,
            dropped: 0,
        })
    }

    /// `false` if received frames are still in hand (the socket's own queue is level
    /// triggered: poll(2) returns at once while it holds frames).
    pub(super) fn idle(&self) -> bool {
        self.next == self.got && self.pending.is_none()
    }

    /// Receives up to `want` frames into the slots; the count, 0 when none are waiting.
    pub(super) fn recv(&mut self, shared: &Shared, want: usize, drops: &mut DropTally) -> usize {
        let want = want.clamp(1, RECV_BATCH);
        // SAFETY: all-zero is a valid value of these plain C structs (null pointers, zero lengths).
        let mut names: [libc::sockaddr_ll; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut ctrl = [[0u64; RECV_CTRL_WORDS]; RECV_BATCH];
        // SAFETY: as above.
        let mut iov: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.slots.as_mut_ptr();
        for i in 0..want {
            // SAFETY: slot i lies within `slots` (i < RECV_BATCH and slots is RECV_BATCH *
            // RECV_SLOT bytes long).
            iov[i].iov_base = unsafe { base.add(i * RECV_SLOT) } as *mut libc::c_void;
            iov[i].iov_len = RECV_SLOT;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_ll as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of_val(&ctrl[i]) as _;
        }
        // SAFETY: every header points at live, writable buffers of the lengths given (names,
        // one iovec into `slots`, control words), all of which outlive the call; no timeout.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                want as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            match errno() {
                libc::EAGAIN | libc::EINTR | libc::ENETDOWN => {}
                // The kernel could not express a frame's offloads as a virtio-net header and
                // dropped it (packet_rcv_vnet).
                libc::EINVAL => drops.add(DropReason::BadOffload, 1),
                libc::ENXIO | libc::ENODEV => shared.gone.mark(&shared.name, &shared.iface),
                e => tracing::debug!(port = %shared.name, errno = e, "AF_PACKET recvmmsg error"),
            }
            return 0;
        }
        let got = rc as usize;
        for i in 0..got {
            let h = &hdrs[i].msg_hdr;
            let words = &ctrl[i];
            let bytes = u64s_as_bytes(words);
            let clen = (h.msg_controllen as usize).min(bytes.len());
            let mut m = RecvMeta {
                len: hdrs[i].msg_len as usize,
                truncated: h.msg_flags & libc::MSG_TRUNC != 0,
                pkttype: names[i].sll_pkttype,
                aux: None,
                dropped: None,
            };
            for (level, kind, data) in cmsgs(&bytes[..clen]) {
                if level == libc::SOL_PACKET && kind == PACKET_AUXDATA && data.len() >= AUX_SIZE {
                    let u32_at =
                        |o: usize| u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
                    let u16_at = |o: usize| u16::from_ne_bytes([data[o], data[o + 1]]);
                    m.aux = Some((u32_at(AUX_STATUS), u16_at(AUX_VLAN_TCI), u16_at(AUX_VLAN_TPID)));
                } else if level == libc::SOL_SOCKET && kind == SO_RXQ_OVFL && data.len() >= 4 {
                    m.dropped = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
                }
            }
            self.meta[i] = m;
        }
        self.got = got;
        self.next = 0;
        got
    }

    pub(super) fn rx_burst(&mut self, shared: &Shared, rx: RxCtx<'_>, out: &mut Burst, room: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let mut n = 0;
        let mut received = false;
        while n < room {
            if let Some(p) = self.pending.as_mut() {
                let (k, done) =
                    rx_segments(&self.slots[p.data..p.data + p.len], p, cache, out, room - n, drops);
                n += k;
                if !done {
                    break;
                }
                self.pending = None;
            }
            if self.next == self.got {
                // One call per burst: a second would most likely find the queue empty.
                if received || self.recv(shared, room - n, drops) == 0 {
                    break;
                }
                received = true;
            }
            let i = self.next;
            self.next += 1;
            let m = self.meta[i];
            if let Some(d) = m.dropped {
                if d != self.dropped {
                    self.dropped = d;
                    shared.count_kernel_drops(read_kernel_drops(self.fd.as_raw_fd()), drops);
                }
            }
            if m.pkttype == PACKET_OUTGOING {
                continue;
            }
            match self.slot_frame(i, &m, cache) {
                Ok(RxFrame::Buf(b)) => {
                    out.push(b);
                    n += 1;
                }
                Ok(RxFrame::Gso(mut p)) => {
                    let (k, done) =
                        rx_segments(&self.slots[p.data..p.data + p.len], &mut p, cache, out, room - n, drops);
                    n += k;
                    if !done {
                        self.pending = Some(p);
                        break;
                    }
                }
                Err(r) => drops.add(r, 1),
            }
        }
        n
    }

    /// Hands the frame in slot `i` to [`rx_frame`].
    pub(super) fn slot_frame(
        &self,
        i: usize,
        m: &RecvMeta,
        cache: &mut PoolCache,
    ) -> Result<RxFrame, DropReason> {
        if m.truncated || m.len > RECV_SLOT {
            return Err(DropReason::TruncatedCapture);
        }
        let start = i * RECV_SLOT;
        let (vh, at) = if self.vnet {
            if m.len < VNET_HDR_LEN {
                return Err(DropReason::BadOffload);
            }
            let mut b = [0u8; VNET_HDR_LEN];
            b.copy_from_slice(&self.slots[start..start + VNET_HDR_LEN]);
            (VnetHdrRepr::parse(&b), start + VNET_HDR_LEN)
        } else {
            (VnetHdrRepr::default(), start)
        };
        let len = start + m.len - at;
        let tag = m.aux.and_then(|(status, tci, tpid)| stripped_tag(status, tci, tpid));
        rx_frame(&self.slots[at..at + len], at, tag, &vh, cache)
    }
}

/// The bytes of control-message words.
pub(super) fn u64s_as_bytes(w: &[u64; RECV_CTRL_WORDS]) -> [u8; RECV_CTRL_WORDS * 8] {
    let mut b = [0u8; RECV_CTRL_WORDS * 8];
    for (d, s) in b.chunks_exact_mut(8).zip(w) {
        d.copy_from_slice(&s.to_ne_bytes());
    }
    b
}

/// The control messages of a received message: (level, type, data), as CMSG_FIRSTHDR and
/// CMSG_NXTHDR walk them (a `cmsghdr`, then data; each message aligned to `size_t`).
pub(super) fn cmsgs(buf: &[u8]) -> impl Iterator<Item = (libc::c_int, libc::c_int, &[u8])> {
    const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = std::mem::size_of::<usize>();
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + HDR > buf.len() {
            return None;
        }
        let h = &buf[off..off + HDR];
        let mut lb = [0u8; ALIGN];
        lb.copy_from_slice(&h[..ALIGN]);
        let len = usize::from_ne_bytes(lb);
        if len < HDR || off + len > buf.len() {
            return None;
        }
        let level = libc::c_int::from_ne_bytes([h[ALIGN], h[ALIGN + 1], h[ALIGN + 2], h[ALIGN + 3]]);
        let kind = libc::c_int::from_ne_bytes([h[ALIGN + 4], h[ALIGN + 5], h[ALIGN + 6], h[ALIGN + 7]]);
        let item = (level, kind, &buf[off + HDR..off + len]);
        off += len.next_multiple_of(ALIGN);
        Some(item)
    })
}
