//! RX mode `ring`: a `TPACKET_V3` ring of blocks the kernel fills and hands over whole.

use super::abi::{
    setsockopt, RingMap, TpacketReq3, BD_BLOCK_STATUS, BD_FIRST_PKT, BD_NUM_PKTS, BD_SIZE, H3_LEN, H3_MAC,
    H3_MAC_MIN_VNET, H3_NEXT, H3_PKTTYPE, H3_SNAPLEN, H3_STATUS, H3_VLAN_TCI, H3_VLAN_TPID, PACKET_OUTGOING,
    PACKET_RX_RING, PACKET_VERSION, TPACKET_V3, TP_STATUS_KERNEL, TP_STATUS_LOSING, TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID,
};
use super::rx::{read_kernel_drops, rx_frame, rx_segments, rx_socket, PendingGso, RxFrame};
use super::{page_size, AfPacketOptions, Shared};
use crate::netdev::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, PortError, RxCtx};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::offload::{VnetHdrRepr, VNET_HDR_LEN};
use switchyard_dataplane::wire::{EtherType, VLAN_TAG_LEN};

pub(super) struct RxRing {
    pub(super) fd: OwnedFd,
    map: RingMap,
    block_size: usize,
    block_nr: usize,
    /// The block to look at next.
    cur: usize,
    /// Within the current block (when `in_block`): packets left and the next one's offset.
    in_block: bool,
    left: u32,
    next_off: usize,
    /// The socket hands over the virtio-net header (`PACKET_VNET_HDR`): partial checksums
    /// are finished here and GSO super-frames segmented.
    vnet: bool,
    /// A super-frame of the current block whose segments did not all fit the last burst.
    pending: Option<PendingGso>,
}

impl RxRing {
    pub(super) fn open(
        port: &str,
        ifindex: i32,
        opts: &AfPacketOptions,
        fanout: Option<u32>,
    ) -> Result<RxRing, PortError> {
        let page = page_size();
        // The kernel allocates each block as a power-of-two number of pages.
        let block_size = (opts.rx_block_size as usize).max(page).next_power_of_two();
        let frame_size = 2048usize; // only a hint for V3; blocks hold frames of any size
        let block_nr = opts.rx_block_count as usize;
        let (fd, vnet, map) = rx_socket(port, ifindex, opts, fanout, |raw| {
            setsockopt(raw, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3)
                .map_err(|e| io(port, "PACKET_VERSION TPACKET_V3", e))?;
            let req = TpacketReq3 {
                tp_block_size: block_size as u32,
                tp_block_nr: block_nr as u32,
                tp_frame_size: frame_size as u32,
                tp_frame_nr: (block_size / frame_size * block_nr) as u32,
                tp_retire_blk_tov: opts.rx_block_timeout_ms.max(1),
                tp_sizeof_priv: 0,
                tp_feature_req_word: 0,
            };
            setsockopt(raw, libc::SOL_PACKET, PACKET_RX_RING, &req)
                .map_err(|e| io(port, "PACKET_RX_RING", e))?;
            RingMap::new(raw, block_size * block_nr).map_err(|e| io(port, "mmap RX ring", e))
        })?;
        Ok(RxRing {
            fd,
            map,
            block_size,
            block_nr,
            cur: 0,
            in_block: false,
            left: 0,
            next_off: 0,
            vnet,
            pending: None,
        })
    }

    #[inline]
    pub(super) fn block_off(&self) -> usize {
        self.cur * self.block_size
    }

    /// Hands the current block back to the kernel and moves to the next.
    #[inline]
    pub(super) fn release_block(&mut self) {
        let off = self.block_off();
        self.map.atomic_u32(off + BD_BLOCK_STATUS).store(TP_STATUS_KERNEL, Ordering::Release);
        self.in_block = false;
        self.cur = (self.cur + 1) % self.block_nr;
    }

    /// `false` if frames are waiting: poll(2) on a TPACKET_V3 socket reports readable while
    /// the current block belongs to user space; a block we are part way through must be
    /// finished first.
    pub(super) fn idle(&self) -> bool {
        !self.in_block
            && self.map.atomic_u32(self.block_off() + BD_BLOCK_STATUS).load(Ordering::Acquire)
                & TP_STATUS_USER
                == 0
    }

    pub(super) fn rx_burst(&mut self, shared: &Shared, rx: RxCtx<'_>, out: &mut Burst, room: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let ring = self;
        let mut n = 0;
        while n < room {
            if !ring.in_block {
                let off = ring.block_off();
                let st = ring.map.atomic_u32(off + BD_BLOCK_STATUS).load(Ordering::Acquire);
                if st & TP_STATUS_USER == 0 {
                    break;
                }
                if st & TP_STATUS_LOSING != 0 {
                    shared.count_kernel_drops(read_kernel_drops(ring.fd.as_raw_fd()), drops);
                }
                ring.left = ring.map.read_u32(off + BD_NUM_PKTS);
                ring.next_off = ring.map.read_u32(off + BD_FIRST_PKT) as usize;
                ring.in_block = true;
            }
            if let Some(p) = ring.pending.as_mut() {
                let (k, done) = rx_segments(ring.map.bytes(p.data, p.len), p, cache, out, room - n, drops);
                n += k;
                if !done {
                    break;
                }
                ring.pending = None;
            }
            let boff = ring.block_off();
            while ring.left > 0 && n < room {
                let rel = ring.next_off;
                // A header outside the block would be a kernel bug; give the block back.
                if rel < BD_SIZE || rel + H3_PKTTYPE + 1 > ring.block_size {
                    ring.left = 0;
                    break;
                }
                let hdr = boff + rel;
                ring.left -= 1;
                ring.next_off = rel + ring.map.read_u32(hdr + H3_NEXT) as usize;
                let pkttype = ring.map.bytes(hdr + H3_PKTTYPE, 1)[0];
                if pkttype == PACKET_OUTGOING {
                    continue;
                }
                match ring_frame(&ring.map, hdr, ring.block_size - rel, ring.vnet, cache) {
                    Ok(RxFrame::Buf(b)) => {
                        out.push(b);
                        n += 1;
                    }
                    Ok(RxFrame::Gso(mut p)) => {
                        let (k, done) =
                            rx_segments(ring.map.bytes(p.data, p.len), &mut p, cache, out, room - n, drops);
                        n += k;
                        if !done {
                            ring.pending = Some(p);
                            break;
                        }
                    }
                    Err(r) => drops.add(r, 1),
                }
            }
            if ring.pending.is_some() {
                break;
            }
            if ring.left == 0 {
                ring.release_block();
            }
        }
        n
    }
}

/// The tag the kernel stripped from a frame (status word, TCI, TPID as the kernel gave them).
pub(super) fn stripped_tag(status: u32, tci: u16, tpid: u16) -> Option<[u8; VLAN_TAG_LEN]> {
    if status & TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    let tpid = match tpid {
        0 => EtherType::VLAN,
        t if status & TP_STATUS_VLAN_TPID_VALID != 0 => t,
        _ => EtherType::VLAN,
    };
    let (p, t) = (tpid.to_be_bytes(), tci.to_be_bytes());
    Some([p[0], p[1], t[0], t[1]])
}

/// Reads the ring's description of the frame whose header is at `hdr` (with `hdr_room`
/// bytes of its block from there) and hands the frame to [`rx_frame`].
#[inline]
pub(super) fn ring_frame(
    map: &RingMap,
    hdr: usize,
    hdr_room: usize,
    vnet: bool,
    cache: &mut PoolCache,
) -> Result<RxFrame, DropReason> {
    let snaplen = map.read_u32(hdr + H3_SNAPLEN) as usize;
    let wire_len = map.read_u32(hdr + H3_LEN) as usize;
    let status = map.read_u32(hdr + H3_STATUS);
    let mac = map.read_u16(hdr + H3_MAC) as usize;
    let tag = stripped_tag(status, map.read_u32(hdr + H3_VLAN_TCI) as u16, map.read_u16(hdr + H3_VLAN_TPID));
    if snaplen < wire_len || mac > hdr_room || snaplen > hdr_room - mac {
        return Err(DropReason::TruncatedCapture);
    }
    let vh = if vnet {
        if mac < H3_MAC_MIN_VNET {
            return Err(DropReason::BadOffload);
        }
        let mut b = [0u8; VNET_HDR_LEN];
        b.copy_from_slice(map.bytes(hdr + mac - VNET_HDR_LEN, VNET_HDR_LEN));
        VnetHdrRepr::parse(&b)
    } else {
        VnetHdrRepr::default()
    };
    rx_frame(map.bytes(hdr + mac, snaplen), hdr + mac, tag, &vh, cache)
}
