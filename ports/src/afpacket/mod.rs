//! AF_PACKET port: a kernel network interface (an underlay NIC, a veth) driven through
//! memory-mapped packet rings.
//!
//! - **RX** has two modes ([`AfPacketOptions::rx_mode`]), which differ only in how frames come
//!   out of the kernel; each received frame then goes through the same `rx_frame` (VLAN tag put
//!   back, checksum finished, GSO super-frame segmented, drop reasons).
//!   - `ring`: a `TPACKET_V3` ring. The kernel fills blocks of frames and hands a whole block to
//!     user space (block status `TP_STATUS_USER`) when it is full or when the block timeout
//!     ([`AfPacketOptions::rx_block_timeout_ms`]) expires; the queue walks the frames of the
//!     block, copies each into a [`PacketBuf`](switchyard_dataplane::buffer::PacketBuf) and
//!     hands the block back. The kernel re-arms the block timer of every ring forever, idle or
//!     not, and clears the ring's 4 MiB at open.
//!   - `recvmmsg`: no ring. `recvmmsg(2)` takes up to 32 frames into slots (the virtio-net
//!     header before each frame, the stripped VLAN tag in a `PACKET_AUXDATA` control message,
//!     the socket's drop count in `SO_RXQ_OVFL`); the kernel keeps no timer and no memory for an
//!     idle socket. The receive queue is limited to 4 MiB, as much as a ring holds.
//!
//!   The kernel strips VLAN tags into the frame's metadata; the tag is put back so the switch
//!   sees the frame as it was on the wire. Several RX queues are several sockets in one
//!   `PACKET_FANOUT` (hash) group. Poll(2) on the RX socket wakes an idle worker in both modes:
//!   a ring socket is readable while the current block is the user's, a plain one while its
//!   queue holds a frame; `arm_wakeup` says "not idle" while frames already received are in hand.
//! - **TX** is a `TPACKET_V2` ring per TX handle (each handle is its own socket, so workers never
//!   share a ring and no lock is taken): frames are copied into the ring and one
//!   `sendto(MSG_DONTWAIT)` per burst tells the kernel to send them (`PACKET_QDISC_BYPASS` when
//!   the kernel has it). Runs of consecutive segments of one TCP flow in a burst leave instead
//!   as one GSO super-frame through a second socket with `PACKET_VNET_HDR` (`tx_merge`; the
//!   ring is kicked first, so the burst's order holds), which a veth hands to the peer's
//!   stack whole; counted by [`AfPacketPort::tx_merges`].
//! - The RX socket ignores outgoing frames (`PACKET_IGNORE_OUTGOING`, and the packet type is
//!   checked as well), so the switch never receives its own transmissions.
//! - A socket error saying the interface is down or gone (`ENETDOWN`, `ENXIO`, `ENODEV`) marks
//!   the port down: TX counts `port_down`, RX returns nothing, nothing panics.
//!
//! Every frame that is taken in and not delivered is counted: `oversize` (larger than a
//! buffer's data room, or than the interface MTU on TX), `runt`, `truncated_capture`,
//! `no_buffer` (pool empty, or the kernel's ring or queue overflowed: read from
//! `PACKET_STATISTICS` whenever a block says it lost frames, or a frame's `SO_RXQ_OVFL` count
//! changed), `bad_offload`, `tx_full` and `port_down`.

use crate::netdev::{backend, ifr_ioctl, io, link_state, Gone, IfReq};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
pub use switchyard_dataplane::config::AfPacketRxMode;
use switchyard_dataplane::port::{PortBackend, PortError, RxQueue, TxQueue};

mod abi;
mod rx;
mod rx_recvmmsg;
mod rx_ring;
mod tx;
mod tx_merge;

use abi::packet_socket;
use rx::{AfPacketRx, RxSource};
use rx_recvmmsg::RxSock;
use rx_ring::RxRing;
use tx::{AfPacketTx, TxRing};
use tx_merge::MergeSock;

// ---- Options and the port. ----

/// Ring sizes and socket options of an AF_PACKET port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfPacketOptions {
    /// Bytes per RX block; rounded up to a power of two of at least a page. Default 256 KiB.
    pub rx_block_size: u32,
    /// RX blocks per queue. Default 16 (4 MiB of ring per RX queue).
    pub rx_block_count: u32,
    /// Milliseconds after which the kernel hands over a block that is not full (the latency
    /// floor at low rates). Default 1.
    pub rx_block_timeout_ms: u32,
    /// RX queues: one socket each, in a `PACKET_FANOUT` hash group when more than one.
    /// Default 1.
    pub rx_queues: u16,
    /// Frames in each TX handle's ring. Default 512.
    pub tx_frame_count: u32,
    /// Put the interface in promiscuous mode while the port is open. Default true.
    pub promiscuous: bool,
    /// Skip the kernel's qdisc on TX (`PACKET_QDISC_BYPASS`) where the kernel has it.
    /// Default true.
    pub qdisc_bypass: bool,
    /// How RX works: a `TPACKET_V3` ring (default) or `recvmmsg(2)` without a ring (the
    /// `rx_block_*` options are then unused).
    pub rx_mode: AfPacketRxMode,
    /// Send runs of segments of one TCP flow in a TX burst as one GSO super-frame (a second
    /// socket with `PACKET_VNET_HDR`; `tx_merge`). Default true; off where the kernel refuses
    /// the header.
    pub tx_merge: bool,
}

impl AfPacketOptions {
    /// The options of a port that is idle most of the time (a pod's veth): RX by
    /// `recvmmsg(2)`, no ring and so no kernel timer, and a 128-frame TX ring (the kernel
    /// clears every ring page when the ring is made: opening is cheaper with fewer).
    pub fn light() -> AfPacketOptions {
        AfPacketOptions {
            rx_mode: AfPacketRxMode::Recvmmsg,
            tx_frame_count: 128,
            ..AfPacketOptions::default()
        }
    }
}

impl Default for AfPacketOptions {
    fn default() -> Self {
        AfPacketOptions {
            rx_block_size: 256 << 10,
            rx_block_count: 16,
            rx_block_timeout_ms: 1,
            rx_queues: 1,
            tx_frame_count: 512,
            promiscuous: true,
            qdisc_bypass: true,
            rx_mode: AfPacketRxMode::Ring,
            tx_merge: true,
        }
    }
}

struct Shared {
    name: String,
    iface: String,
    ifindex: i32,
    opts: AfPacketOptions,
    /// One slot per RX queue; empty while a worker holds it.
    rx: Vec<Mutex<Option<RxSource>>>,
    /// The TX ring made by open(), handed to the first open_tx.
    tx_spare: Mutex<Option<TxRing>>,
    /// For interface ioctls (link state, MTU).
    ctl: OwnedFd,
    /// The interface is gone (deleted): permanent.
    gone: Gone,
    /// MTU last read; refreshed by link_up().
    mtu: AtomicU32,
    /// Frames the kernel dropped on RX (ring full), summed over queues; also counted as
    /// `no_buffer` in the drops of the burst that noticed them.
    kernel_drops: AtomicU64,
    /// Super-frames sent by TX merging, and the segments they held.
    tx_merged: AtomicU64,
    tx_merged_segments: AtomicU64,
}

/// An AF_PACKET port bound to one kernel interface. Cheap to clone.
#[derive(Clone)]
pub struct AfPacketPort {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AfPacketPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacketPort")
            .field("name", &self.shared.name)
            .field("iface", &self.shared.iface)
            .field("ifindex", &self.shared.ifindex)
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl AfPacketPort {
    /// Opens port `name` on interface `iface` with default options.
    pub fn open_default(name: &str, iface: &str) -> Result<AfPacketPort, PortError> {
        Self::open(name, iface, AfPacketOptions::default())
    }

    /// Opens port `name` on interface `iface`: creates the RX ring(s) and one TX ring now, so
    /// that a missing interface or missing privileges (CAP_NET_RAW) fail here.
    pub fn open(name: &str, iface: &str, opts: AfPacketOptions) -> Result<AfPacketPort, PortError> {
        if opts.rx_queues == 0 {
            return Err(backend(name, "rx_queues must be at least 1"));
        }
        if opts.rx_block_count == 0 || opts.tx_frame_count == 0 {
            return Err(backend(name, "ring sizes must be at least 1"));
        }
        let mut ifr =
            IfReq::new(iface).ok_or_else(|| backend(name, format!("bad interface name {iface:?}")))?;
        let ctl = packet_socket().map_err(|e| io(name, "AF_PACKET socket (needs CAP_NET_RAW)", e))?;
        ifr_ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr)
            .map_err(|e| io(name, &format!("interface {iface}"), e))?;
        let ifindex = ifr.int();
        let (_, mtu) = link_state(ctl.as_raw_fd(), ifindex)
            .ok_or_else(|| backend(name, format!("interface {iface} disappeared")))?;

        let fanout_id = if opts.rx_queues > 1 {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            Some(((std::process::id() as u32) ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 8)) & 0xffff)
        } else {
            None
        };
        let mut rx = Vec::with_capacity(opts.rx_queues as usize);
        for _ in 0..opts.rx_queues {
            let src = match opts.rx_mode {
                AfPacketRxMode::Ring => RxSource::Ring(RxRing::open(name, ifindex, &opts, fanout_id)?),
                AfPacketRxMode::Recvmmsg => {
                    RxSource::Sock(Box::new(RxSock::open(name, ifindex, &opts, fanout_id)?))
                }
            };
            rx.push(Mutex::new(Some(src)));
        }
        let tx = TxRing::open(name, ifindex, &opts)?;
        tracing::debug!(port = name, iface, ifindex, mtu, "AF_PACKET port open");
        Ok(AfPacketPort {
            shared: Arc::new(Shared {
                name: name.to_string(),
                iface: iface.to_string(),
                ifindex,
                opts,
                rx,
                tx_spare: Mutex::new(Some(tx)),
                ctl,
                gone: Gone::default(),
                mtu: AtomicU32::new(mtu),
                kernel_drops: AtomicU64::new(0),
                tx_merged: AtomicU64::new(0),
                tx_merged_segments: AtomicU64::new(0),
            }),
        })
    }

    /// The interface name given at open.
    pub fn iface(&self) -> &str {
        &self.shared.iface
    }

    /// The interface index.
    pub fn ifindex(&self) -> i32 {
        self.shared.ifindex
    }

    /// Frames the kernel dropped because an RX ring was full (also counted as `no_buffer`).
    pub fn kernel_drops(&self) -> u64 {
        self.shared.kernel_drops.load(Ordering::Relaxed)
    }

    /// TX merging so far: super-frames sent, and the segments they held (each also counted
    /// as a frame sent).
    pub fn tx_merges(&self) -> (u64, u64) {
        (
            self.shared.tx_merged.load(Ordering::Relaxed),
            self.shared.tx_merged_segments.load(Ordering::Relaxed),
        )
    }
}

impl PortBackend for AfPacketPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn rx_queue_count(&self) -> u16 {
        self.shared.opts.rx_queues
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        let count = self.shared.opts.rx_queues;
        let slot = self.shared.rx.get(q as usize).ok_or_else(|| PortError::NoSuchQueue {
            port: self.shared.name.clone(),
            queue: q,
            count,
        })?;
        let ring = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PortError::QueueTaken { port: self.shared.name.clone(), queue: q })?;
        Ok(Box::new(AfPacketRx { shared: self.shared.clone(), q, src: Some(ring) }))
    }

    fn open_tx(&self, _q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        let spare = self.shared.tx_spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        let ring = match spare {
            Some(r) => r,
            None => TxRing::open(&self.shared.name, self.shared.ifindex, &self.shared.opts)?,
        };
        let s = &self.shared;
        let merge = if s.opts.tx_merge { MergeSock::open(&s.name, s.ifindex, &s.opts) } else { None };
        Ok(Box::new(AfPacketTx { shared: s.clone(), ring, pending: false, merge }))
    }

    fn link_up(&self) -> bool {
        let s = &self.shared;
        let Some((up, mtu)) = s.gone.link_state(s.ctl.as_raw_fd(), s.ifindex, &s.name, &s.iface) else {
            return false;
        };
        if mtu != 0 {
            s.mtu.store(mtu, Ordering::Relaxed);
        }
        up
    }
}
