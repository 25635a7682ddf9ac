//! RX, what both modes share: the socket setup, the queue handle, and what becomes of each
//! frame taken from the kernel (VLAN tag put back, checksum finished, GSO super-frame cut into
//! segments, drop reasons).

use super::abi::{
    bind_packet, packet_socket, setsockopt, PacketMreq, TpacketStatsV3, PACKET_ADD_MEMBERSHIP, PACKET_FANOUT,
    PACKET_FANOUT_HASH, PACKET_IGNORE_OUTGOING, PACKET_MR_PROMISC, PACKET_STATISTICS, PACKET_VNET_HDR,
};
use super::rx_recvmmsg::RxSock;
use super::rx_ring::RxRing;
use super::{AfPacketOptions, Shared};
use crate::netdev::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchyard_dataplane::buffer::{PacketBuf, PoolCache, DATA_ROOM};
use switchyard_dataplane::port::{Burst, DropTally, PortError, RxCtx, RxQueue};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::offload::{complete_checksum, Segmenter, VnetHdrRepr};
use switchyard_dataplane::wire::{MAC_ADDRS_LEN, VLAN_TAG_LEN};

/// Where a tag put back into a frame ends: it goes right after the MAC addresses.
const TAG_END: usize = MAC_ADDRS_LEN + VLAN_TAG_LEN;

/// A bound RX socket of interface `ifindex`: `PACKET_VNET_HDR` asked for (the returned flag
/// says whether the kernel agreed), `setup` run before the socket is bound (a ring must exist
/// before frames arrive), outgoing frames ignored, promiscuous mode and fanout as `opts` say.
pub(super) fn rx_socket<T>(
    port: &str,
    ifindex: i32,
    opts: &AfPacketOptions,
    fanout: Option<u32>,
    setup: impl FnOnce(RawFd) -> Result<T, PortError>,
) -> Result<(OwnedFd, bool, T), PortError> {
    let fd = packet_socket().map_err(|e| io(port, "AF_PACKET socket (needs CAP_NET_RAW)", e))?;
    let raw = fd.as_raw_fd();
    // A pod's veth sends with checksum offload and TSO on: without the virtio-net header
    // its TCP and UDP frames would be forwarded with partial checksums and as 64 KiB
    // super-frames. The header must be asked for before a ring exists.
    let on: libc::c_int = 1;
    let vnet = match setsockopt(raw, libc::SOL_PACKET, PACKET_VNET_HDR, &on) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(port, error = %e, "PACKET_VNET_HDR refused: frames with offloads from this interface will be dropped as bad_offload or oversize");
            false
        }
    };
    let extra = setup(raw)?;
    // Ignore frames this host sends (ours included); older kernels lack the option, and the
    // packet type is checked per frame anyway.
    let one: libc::c_int = 1;
    let _ = setsockopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &one);
    bind_packet(raw, ifindex, libc::ETH_P_ALL as u16).map_err(|e| io(port, "bind", e))?;
    if opts.promiscuous {
        let mreq =
            PacketMreq { mr_ifindex: ifindex, mr_type: PACKET_MR_PROMISC, mr_alen: 0, mr_address: [0; 8] };
        setsockopt(raw, libc::SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)
            .map_err(|e| io(port, "PACKET_ADD_MEMBERSHIP promiscuous", e))?;
    }
    if let Some(id) = fanout {
        let arg: u32 = id | (PACKET_FANOUT_HASH << 16);
        setsockopt(raw, libc::SOL_PACKET, PACKET_FANOUT, &arg).map_err(|e| io(port, "PACKET_FANOUT", e))?;
    }
    Ok((fd, vnet, extra))
}

/// Reads (and so resets) the kernel's drop counter of a packet socket. Without a V3 ring the
/// kernel writes the 8-byte `tpacket_stats`, whose fields are the first two of the V3 struct.
#[cold]
pub(super) fn read_kernel_drops(fd: RawFd) -> u32 {
    let mut st = TpacketStatsV3::default();
    let mut len = std::mem::size_of::<TpacketStatsV3>() as libc::socklen_t;
    // SAFETY: `st` is a writable tpacket_stats_v3 and `len` holds its size; the kernel
    // writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            &mut st as *mut TpacketStatsV3 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        0
    } else {
        st.tp_drops
    }
}

/// One RX queue's source of frames: a ring or the socket itself.
pub(super) enum RxSource {
    Ring(RxRing),
    Sock(Box<RxSock>),
}

pub(super) struct AfPacketRx {
    pub(super) shared: Arc<Shared>,
    pub(super) q: u16,
    pub(super) src: Option<RxSource>,
}

impl Drop for AfPacketRx {
    fn drop(&mut self) {
        if let Some(r) = self.src.take() {
            if let Some(slot) = self.shared.rx.get(self.q as usize) {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            }
        }
    }
}

impl Shared {
    /// Counts frames the kernel dropped because the queue was full (`no_buffer`).
    #[cold]
    pub(super) fn count_kernel_drops(&self, lost: u32, drops: &mut DropTally) {
        if lost != 0 {
            drops.add(DropReason::NoBuffer, lost);
            self.kernel_drops.fetch_add(u64::from(lost), Ordering::Relaxed);
        }
    }
}

/// What one received frame became.
pub(super) enum RxFrame {
    /// A finished frame in a buffer.
    Buf(PacketBuf),
    /// A GSO super-frame (its bytes where it was received), to be cut into segments.
    Gso(PendingGso),
}

/// A super-frame being cut into segments, possibly across bursts: its bytes (in a ring block
/// or a receive slot) stay with user space until the last segment is out.
pub(super) struct PendingGso {
    /// Offset of the frame's bytes in the ring or the slots, and their length.
    pub(super) data: usize,
    pub(super) len: usize,
    /// The VLAN tag the kernel took out (TPID and TCI), put back into every segment.
    tag: Option<[u8; VLAN_TAG_LEN]>,
    seg: Segmenter,
}

/// Turns one received frame into a buffer, whichever way it was received: `data` is the
/// frame as captured (found at offset `at` of its ring or slots), `tag` the VLAN tag the
/// kernel took out (put back, so the switch sees the frame as it was on the wire), `vh` its
/// virtio-net header (a checksum the sender left to the device is finished here). A GSO
/// super-frame is handed back for segmentation. `Err` names the drop reason.
#[inline]
pub(super) fn rx_frame(
    data: &[u8],
    at: usize,
    tag: Option<[u8; VLAN_TAG_LEN]>,
    vh: &VnetHdrRepr,
    cache: &mut PoolCache,
) -> Result<RxFrame, DropReason> {
    let snaplen = data.len();
    let extra = if tag.is_some() { VLAN_TAG_LEN } else { 0 };
    if vh.is_gso() {
        let seg = Segmenter::new(data, vh).map_err(|_| DropReason::BadOffload)?;
        if seg.max_segment_len() + extra > DATA_ROOM {
            return Err(DropReason::Oversize);
        }
        return Ok(RxFrame::Gso(PendingGso { data: at, len: snaplen, tag, seg }));
    }
    if snaplen + extra > DATA_ROOM {
        return Err(DropReason::Oversize);
    }
    if snaplen < MAC_ADDRS_LEN && tag.is_some() {
        return Err(DropReason::Runt);
    }
    let mut buf = cache.alloc().ok_or(DropReason::NoBuffer)?;
    let tail = buf.tail_mut();
    if let Some(t) = tag {
        tail[..MAC_ADDRS_LEN].copy_from_slice(&data[..MAC_ADDRS_LEN]);
        tail[MAC_ADDRS_LEN..TAG_END].copy_from_slice(&t);
        tail[TAG_END..TAG_END + snaplen - MAC_ADDRS_LEN].copy_from_slice(&data[MAC_ADDRS_LEN..]);
    } else {
        tail[..snaplen].copy_from_slice(data);
    }
    if vh.needs_csum() {
        // csum_start counts from the frame as the kernel had it, without the stripped tag.
        let start =
            usize::from(vh.csum_start) + if usize::from(vh.csum_start) >= MAC_ADDRS_LEN { extra } else { 0 };
        if complete_checksum(&mut tail[..snaplen + extra], start, usize::from(vh.csum_offset)).is_err() {
            cache.free(buf);
            return Err(DropReason::BadOffload);
        }
    }
    // Cannot fail: snaplen + extra <= DATA_ROOM, the room after the default headroom.
    let _ = buf.set_len(snaplen + extra);
    Ok(RxFrame::Buf(buf))
}

/// Moves the next segments of a super-frame (`frame`: its bytes) into `out`, up to `room` of
/// them; `true` once the last one is out (or the rest are dropped).
pub(super) fn rx_segments(
    frame: &[u8],
    p: &mut PendingGso,
    cache: &mut PoolCache,
    out: &mut Burst,
    room: usize,
    drops: &mut DropTally,
) -> (usize, bool) {
    let mut n = 0;
    while n < room && !p.seg.finished() {
        let Some(mut buf) = cache.alloc() else {
            let left = p.seg.remaining();
            drops.add(DropReason::NoBuffer, u32::try_from(left).unwrap_or(u32::MAX));
            return (n, true);
        };
        let extra = if p.tag.is_some() { VLAN_TAG_LEN } else { 0 };
        let tail = buf.tail_mut();
        let room_for_seg = tail.len().min(DATA_ROOM) - extra;
        match p.seg.next_into(frame, &mut tail[..room_for_seg]) {
            Ok(Some(len)) => {
                if let Some(t) = p.tag {
                    tail.copy_within(MAC_ADDRS_LEN..len, TAG_END);
                    tail[MAC_ADDRS_LEN..TAG_END].copy_from_slice(&t);
                }
                // Cannot fail: len + extra <= DATA_ROOM.
                let _ = buf.set_len(len + extra);
                out.push(buf);
                n += 1;
            }
            Ok(None) => {
                cache.free(buf);
                break;
            }
            Err(_) => {
                cache.free(buf);
                drops.add(DropReason::BadOffload, 1);
                return (n, true);
            }
        }
    }
    (n, p.seg.finished())
}

impl RxQueue for AfPacketRx {
    /// A kernel socket: readiness wakes the worker at no cost to the sender.
    fn spin_when_idle(&self) -> bool {
        false
    }

    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self.src.as_ref()? {
            RxSource::Ring(r) => Some(r.fd.as_fd()),
            RxSource::Sock(s) => Some(s.fd.as_fd()),
        }
    }

    fn arm_wakeup(&mut self) -> bool {
        match self.src.as_ref() {
            Some(RxSource::Ring(r)) => r.idle(),
            Some(RxSource::Sock(s)) => s.idle(),
            None => true,
        }
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let room = max.min(out.remaining_capacity());
        match self.src.as_mut() {
            Some(RxSource::Ring(r)) => r.rx_burst(&self.shared, rx, out, room),
            Some(RxSource::Sock(s)) => s.rx_burst(&self.shared, rx, out, room),
            None => 0,
        }
    }
}
