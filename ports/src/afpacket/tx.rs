//! TX: a `TPACKET_V2` ring per handle (each its own socket), flushed with one `sendto` a burst.

use super::abi::{
    bind_packet, packet_socket, setsockopt, RingMap, TpacketReq, H2_DATA, H2_LEN, H2_STATUS, PACKET_LOSS,
    PACKET_QDISC_BYPASS, PACKET_TX_RING, PACKET_VERSION, TPACKET_V2, TP_STATUS_AVAILABLE,
    TP_STATUS_SEND_REQUEST, TX_FRAME_SIZE,
};
use super::tx_merge::MergeSock;
use super::{page_size, AfPacketOptions, Shared};
use crate::netdev::{errno, io, is_link_error, link_state};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, DropTally, PortError, TxQueue, MAX_BURST};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::tcp_merge::merge_tcp_run;
use switchyard_dataplane::wire::{EtherType, ETH_HEADER_LEN, MAC_ADDRS_LEN, VLAN_TAG_LEN};

pub(super) struct TxRing {
    fd: OwnedFd,
    map: RingMap,
    frame_nr: usize,
    frames_per_block: usize,
    block_size: usize,
    /// The next frame to fill.
    head: usize,
}

impl TxRing {
    pub(super) fn open(port: &str, ifindex: i32, opts: &AfPacketOptions) -> Result<TxRing, PortError> {
        let fd = packet_socket().map_err(|e| io(port, "AF_PACKET socket (needs CAP_NET_RAW)", e))?;
        let raw = fd.as_raw_fd();
        setsockopt(raw, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V2)
            .map_err(|e| io(port, "PACKET_VERSION TPACKET_V2", e))?;
        let page = page_size();
        let block_size = (TX_FRAME_SIZE * 16).max(page).next_power_of_two();
        let frames_per_block = block_size / TX_FRAME_SIZE;
        let block_nr = (opts.tx_frame_count as usize).div_ceil(frames_per_block);
        let frame_nr = block_nr * frames_per_block;
        let req = TpacketReq {
            tp_block_size: block_size as u32,
            tp_block_nr: block_nr as u32,
            tp_frame_size: TX_FRAME_SIZE as u32,
            tp_frame_nr: frame_nr as u32,
        };
        // A frame the kernel refuses (malformed, over the MTU) is skipped instead of stalling
        // the ring; tx_burst checks length and MTU first and counts those frames itself.
        let one: libc::c_int = 1;
        setsockopt(raw, libc::SOL_PACKET, PACKET_LOSS, &one).map_err(|e| io(port, "PACKET_LOSS", e))?;
        setsockopt(raw, libc::SOL_PACKET, PACKET_TX_RING, &req).map_err(|e| io(port, "PACKET_TX_RING", e))?;
        let map = RingMap::new(raw, block_size * block_nr).map_err(|e| io(port, "mmap TX ring", e))?;
        if opts.qdisc_bypass {
            let one: libc::c_int = 1;
            if let Err(e) = setsockopt(raw, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &one) {
                tracing::debug!(port, error = %e, "PACKET_QDISC_BYPASS not available");
            }
        }
        // Protocol 0: this socket sends only and never receives.
        bind_packet(raw, ifindex, 0).map_err(|e| io(port, "bind", e))?;
        Ok(TxRing { fd, map, frame_nr, frames_per_block, block_size, head: 0 })
    }

    #[inline]
    pub(super) fn frame_off(&self, i: usize) -> usize {
        (i / self.frames_per_block) * self.block_size + (i % self.frames_per_block) * TX_FRAME_SIZE
    }

    #[inline]
    pub(super) fn status(&self, i: usize) -> &AtomicU32 {
        self.map.atomic_u32(self.frame_off(i) + H2_STATUS)
    }

    /// Asks the kernel to send every frame marked SEND_REQUEST; `Err(errno)` on failure.
    #[inline]
    pub(super) fn kick(&self) -> Result<(), i32> {
        // SAFETY: sendto with a null buffer of length 0 and no address: the kernel sends the
        // frames of the mapped TX ring; no user memory is passed.
        let rc = unsafe {
            libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)
        };
        if rc < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }

    /// Takes back every frame still waiting for the kernel (the run of SEND_REQUEST frames
    /// that ends just before `head`) and rewinds `head` to the first of them, where the
    /// kernel will look next. Returns how many.
    #[cold]
    pub(super) fn reclaim_pending(&mut self) -> usize {
        let mut n = 0;
        let mut i = self.head;
        while n < self.frame_nr {
            let prev = (i + self.frame_nr - 1) % self.frame_nr;
            let st = self.status(prev);
            if st.load(Ordering::Acquire) != TP_STATUS_SEND_REQUEST {
                break;
            }
            st.store(TP_STATUS_AVAILABLE, Ordering::Relaxed);
            i = prev;
            n += 1;
        }
        self.head = i;
        n
    }
}

pub(super) struct AfPacketTx {
    pub(super) shared: Arc<Shared>,
    pub(super) ring: TxRing,
    /// Frames may still wait in the ring (the last kick did not take them all).
    pub(super) pending: bool,
    /// Where runs of one TCP flow go as one super-frame; `None`: merging is off, or the
    /// kernel refused it.
    pub(super) merge: Option<MergeSock>,
}

pub(super) fn drop_all(pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally, r: DropReason) {
    drops.add(r, pkts.len() as u32);
    for b in pkts.drain(..) {
        cache.free(b);
    }
}

impl AfPacketTx {
    /// Kicks the ring and handles the outcome; returns how many of the `queued` frames of
    /// this burst were taken back and counted as dropped.
    pub(super) fn kick_and_settle(&mut self, queued: usize, drops: &mut DropTally) -> usize {
        match self.ring.kick() {
            Ok(()) => {
                self.pending = false;
                0
            }
            Err(libc::EAGAIN) | Err(libc::EINTR) => {
                self.pending = true;
                0
            }
            Err(libc::ENOBUFS) => {
                // The driver refused a frame: congestion, or a link without carrier.
                let running = link_state(self.shared.ctl.as_raw_fd(), self.shared.ifindex);
                match running {
                    Some((true, _)) => {
                        self.pending = true;
                        0
                    }
                    Some((false, _)) => self.take_back(queued, drops),
                    None => {
                        self.shared.gone.mark(&self.shared.name, &self.shared.iface);
                        self.take_back(queued, drops)
                    }
                }
            }
            Err(e) => {
                if matches!(e, libc::ENXIO | libc::ENODEV) {
                    self.shared.gone.mark(&self.shared.name, &self.shared.iface);
                } else if !is_link_error(e) {
                    tracing::debug!(port = %self.shared.name, errno = e, "AF_PACKET TX error");
                }
                self.take_back(queued, drops)
            }
        }
    }

    #[cold]
    pub(super) fn take_back(&mut self, queued: usize, drops: &mut DropTally) -> usize {
        self.pending = false;
        let n = self.ring.reclaim_pending();
        drops.add(DropReason::PortDown, n as u32);
        n.min(queued)
    }
}

impl AfPacketTx {
    /// Copies one frame into the ring (not yet kicked); `false` when it was dropped (counted).
    /// `full` is set once the ring is found full: the burst's later frames are dropped.
    #[inline]
    fn ring_one(&mut self, d: &[u8], max_len: usize, full: &mut bool, drops: &mut DropTally) -> bool {
        let len = d.len();
        if len < ETH_HEADER_LEN {
            drops.add(DropReason::Runt, 1);
            return false;
        }
        let tagged = matches!(
            u16::from_be_bytes([d[MAC_ADDRS_LEN], d[MAC_ADDRS_LEN + 1]]),
            EtherType::VLAN | EtherType::QINQ
        );
        let limit = if tagged { max_len + VLAN_TAG_LEN } else { max_len };
        if len > limit || len > TX_FRAME_SIZE - H2_DATA {
            drops.add(DropReason::Oversize, 1);
            return false;
        }
        if *full {
            drops.add(DropReason::TxFull, 1);
            return false;
        }
        let i = self.ring.head;
        if self.ring.status(i).load(Ordering::Acquire) != TP_STATUS_AVAILABLE {
            // Still owned by the kernel: the ring is full.
            *full = true;
            drops.add(DropReason::TxFull, 1);
            return false;
        }
        let off = self.ring.frame_off(i);
        self.ring.map.copy_in(off + H2_DATA, d);
        self.ring.map.write_u32(off + H2_LEN, len as u32);
        self.ring.status(i).store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.ring.head = (i + 1) % self.ring.frame_nr;
        true
    }

    /// A merged send failed with `e`: a passing condition (buffer full, interrupted, link
    /// down: the ring path counts that) leaves merging on; anything else (the kernel refuses
    /// the super-frame) turns it off for this handle.
    #[cold]
    fn merge_failed(&mut self, e: i32) {
        if !matches!(e, libc::EAGAIN | libc::ENOBUFS | libc::EINTR) && !is_link_error(e) {
            tracing::warn!(port = %self.shared.name, errno = e, "TX merge refused: TCP runs are sent segment by segment");
            self.merge = None;
        }
    }
}

impl TxQueue for AfPacketTx {
    /// Frames go through the ring in order, except runs of one TCP flow
    /// ([`merge_tcp_run`]), each sent as one super-frame once the ring is empty (kicked first;
    /// a run behind frames the kernel left pending goes through the ring), so the burst's order
    /// holds; a run the kernel does not take goes through the ring.
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        if self.shared.gone.get() {
            if self.pending {
                self.take_back(0, drops);
            }
            drop_all(pkts, cache, drops, DropReason::PortDown);
            return 0;
        }
        let mtu = self.shared.mtu.load(Ordering::Relaxed) as usize;
        let max_len = if mtu == 0 { TX_FRAME_SIZE - H2_DATA } else { mtu + ETH_HEADER_LEN };
        // Ring frames of this burst, those not kicked yet, and those taken back.
        let (mut queued, mut unkicked, mut lost) = (0usize, 0usize, 0usize);
        let (mut merged, mut merged_segs) = (0u64, 0usize);
        let mut full = false;
        let n = pkts.len();
        let mut i = 0;
        while i < n {
            if self.merge.is_some() && n - i >= 2 {
                // Untagged segments only (merge_tcp_run takes no tag): their limit is max_len.
                let run = pkts[i..].iter().map(|b| b.data()).take_while(|d| d.len() <= max_len);
                if let Some(m) = merge_tcp_run(run, MAX_BURST) {
                    let segs = &pkts[i..i + m.segments];
                    // What the ring holds leaves first (this burst's frames and any an earlier
                    // kick left pending), so that the run cannot overtake them; while the ring
                    // cannot be emptied the run goes through it, behind them.
                    if unkicked > 0 || self.pending {
                        lost += self.kick_and_settle(queued - lost, drops);
                        unkicked = 0;
                    }
                    let sent = if self.pending {
                        Err(libc::EAGAIN)
                    } else {
                        self.merge.as_ref().map_or(Err(0), |s| s.send(&m, segs))
                    };
                    match sent {
                        Ok(()) => {
                            merged += 1;
                            merged_segs += m.segments;
                        }
                        Err(e) => {
                            self.merge_failed(e);
                            for b in segs {
                                if self.ring_one(b.data(), max_len, &mut full, drops) {
                                    queued += 1;
                                    unkicked += 1;
                                }
                            }
                        }
                    }
                    i += m.segments;
                    continue;
                }
            }
            if self.ring_one(pkts[i].data(), max_len, &mut full, drops) {
                queued += 1;
                unkicked += 1;
            }
            i += 1;
        }
        for b in pkts.drain(..) {
            cache.free(b);
        }
        if merged != 0 {
            self.shared.tx_merged.fetch_add(merged, Ordering::Relaxed);
            self.shared.tx_merged_segments.fetch_add(merged_segs as u64, Ordering::Relaxed);
        }
        if unkicked != 0 || self.pending {
            // Frames taken back may include this burst's from an earlier kick left pending.
            lost += self.kick_and_settle(queued - lost, drops);
        }
        queued - lost.min(queued) + merged_segs
    }

    fn flush(&mut self) -> Result<(), PortError> {
        if self.pending && !self.shared.gone.get() {
            let mut d = DropTally::default();
            self.kick_and_settle(0, &mut d);
        }
        Ok(())
    }
}
