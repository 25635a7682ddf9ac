//! AF_PACKET port: a kernel network interface (an underlay NIC, a veth) driven through
//! memory-mapped packet rings.
//!
//! - **RX** has two modes ([`AfPacketOptions::rx_mode`]), which differ only in how frames come
//!   out of the kernel; each received frame then goes through the same `rx_frame` (VLAN tag put
//!   back, checksum finished, GSO super-frame segmented, drop reasons).
//!   - `ring`: a `TPACKET_V3` ring. The kernel fills blocks of frames and hands a whole block to
//!     user space (block status `TP_STATUS_USER`) when it is full or when the block timeout
//!     ([`AfPacketOptions::rx_block_timeout_ms`]) expires; the queue walks the frames of the
//!     block, copies each into a [`PacketBuf`] and hands the block back. The kernel re-arms the
//!     block timer of every ring forever, idle or not, and clears the ring's 4 MiB at open.
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
//!   the kernel has it).
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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchyard_dataplane::buffer::{PacketBuf, PoolCache, DATA_ROOM, SLOT_SIZE};
pub use switchyard_dataplane::config::AfPacketRxMode;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, PortError, RxQueue, TxQueue};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::offload::{complete_checksum, Segmenter, VnetHdrRepr, VNET_HDR_LEN};

// ---- Kernel ABI (linux/if_packet.h), kept here so that the layout is visible and fixed. ----

const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_AUXDATA: libc::c_int = 8;
/// asm-generic/socket.h; the libc crate has it only for some targets.
const SO_RXQ_OVFL: libc::c_int = 40;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_OUTGOING: u8 = 4;
const TPACKET_V2: libc::c_int = 1;
const TPACKET_V3: libc::c_int = 2;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1 << 0;
const TP_STATUS_LOSING: u32 = 1 << 2;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1 << 0;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

#[repr(C)]
struct TpacketReq3 {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
    tp_retire_blk_tov: u32,
    tp_sizeof_priv: u32,
    tp_feature_req_word: u32,
}

#[repr(C)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

#[repr(C)]
#[derive(Default)]
struct TpacketStatsV3 {
    tp_packets: u32,
    tp_drops: u32,
    tp_freeze_q_cnt: u32,
}

// struct tpacket_auxdata { u32 tp_status; u32 tp_len; u32 tp_snaplen; u16 tp_mac; u16 tp_net;
// u16 tp_vlan_tci; u16 tp_vlan_tpid; }: the PACKET_AUXDATA control message of recvmsg.
const AUX_STATUS: usize = 0;
const AUX_VLAN_TCI: usize = 16;
const AUX_VLAN_TPID: usize = 18;
const AUX_SIZE: usize = 20;

#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

// struct tpacket_block_desc { u32 version; u32 offset_to_priv; struct tpacket_hdr_v1 { u32
// block_status; u32 num_pkts; u32 offset_to_first_pkt; u32 blk_len; ... } }
const BD_BLOCK_STATUS: usize = 8;
const BD_NUM_PKTS: usize = 12;
const BD_FIRST_PKT: usize = 16;
const BD_SIZE: usize = 48;

// struct tpacket3_hdr { u32 tp_next_offset; u32 tp_sec; u32 tp_nsec; u32 tp_snaplen;
// u32 tp_len; u32 tp_status; u16 tp_mac; u16 tp_net; { u32 tp_rxhash; u32 tp_vlan_tci;
// u16 tp_vlan_tpid; u16 pad } u8 pad[8] }, followed (aligned to 16) by a struct sockaddr_ll.
const H3_NEXT: usize = 0;
const H3_SNAPLEN: usize = 12;
const H3_LEN: usize = 16;
const H3_STATUS: usize = 20;
const H3_MAC: usize = 24;
const H3_VLAN_TCI: usize = 32;
const H3_VLAN_TPID: usize = 36;
const H3_SIZE: usize = 48;
/// sockaddr_ll.sll_pkttype, after the (16-aligned) tpacket3_hdr.
const H3_PKTTYPE: usize = H3_SIZE + 10;
/// With `PACKET_VNET_HDR` the kernel puts the virtio-net header just before the frame, after
/// the tpacket3_hdr and the 20-byte sockaddr_ll: the frame offset is at least this.
const H3_MAC_MIN_VNET: usize = H3_SIZE + 20 + VNET_HDR_LEN;

// struct tpacket2_hdr { u32 tp_status; u32 tp_len; u32 tp_snaplen; u16 tp_mac; u16 tp_net;
// u32 tp_sec; u32 tp_nsec; u16 tp_vlan_tci; u16 tp_vlan_tpid; u8 pad[4] }: 32 bytes. On TX,
// without PACKET_TX_HAS_OFF, the frame starts at TPACKET2_HDRLEN - sizeof(sockaddr_ll) = 32.
const H2_STATUS: usize = 0;
const H2_LEN: usize = 4;
const H2_DATA: usize = 32;
/// A TX ring frame holds the header and the largest frame a buffer can hold.
const TX_FRAME_SIZE: usize = (H2_DATA + SLOT_SIZE + 15) & !15;

// ---- Small system helpers, shared with the TAP backend. ----

/// `struct ifreq`: the name and 24 bytes of union (flags, index, MTU are at its start).
#[repr(C)]
pub(super) struct IfReq {
    pub(super) name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    pub(super) fn new(name: &str) -> Option<IfReq> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) || b.contains(&b'/') {
            return None;
        }
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        for (d, s) in r.name.iter_mut().zip(b) {
            *d = *s as libc::c_char;
        }
        Some(r)
    }

    pub(super) fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub(super) fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    pub(super) fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    pub(super) fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
}

/// The current `errno`.
pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Whether an errno says the interface is gone or down for good or for now.
pub(super) fn is_link_error(e: i32) -> bool {
    matches!(e, libc::ENXIO | libc::ENODEV | libc::ENETDOWN | libc::EBADFD | libc::EIO)
}

/// An ioctl on an `ifreq`.
pub(super) fn ifr_ioctl(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> std::io::Result<()> {
    // SAFETY: `ifr` is a valid, writable ifreq of the kernel's size (16 + 24 bytes) for the
    // whole call; the interface ioctls used here read and write only within it.
    let rc = unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The name the interface with index `ifindex` has now, written into `ifr`; `false` when no
/// interface has that index any more.
pub(super) fn ifr_by_index(ifindex: i32, ifr: &mut IfReq) -> bool {
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: if_indextoname writes at most IFNAMSIZ bytes (NUL included) into `name`.
    let p = unsafe { libc::if_indextoname(ifindex as libc::c_uint, name.as_mut_ptr()) };
    if p.is_null() {
        return false;
    }
    ifr.name = name;
    ifr.data = [0; 24];
    true
}

/// `(up and running, mtu)` of the interface with index `ifindex`; `None` when it is gone.
pub(super) fn link_state(ctl: RawFd, ifindex: i32) -> Option<(bool, u32)> {
    let mut ifr = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
    if !ifr_by_index(ifindex, &mut ifr) {
        return None;
    }
    ifr_ioctl(ctl, libc::SIOCGIFFLAGS, &mut ifr).ok()?;
    let flags = ifr.short() as i32;
    let up = flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0;
    ifr.data = [0; 24];
    let mtu = match ifr_ioctl(ctl, libc::SIOCGIFMTU, &mut ifr) {
        Ok(()) => ifr.int().max(0) as u32,
        Err(_) => 0,
    };
    Some((up, mtu))
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: &T) -> std::io::Result<()> {
    // SAFETY: `val` points to a live, initialised T and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A new AF_PACKET socket that receives nothing until it is bound with a protocol.
fn packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; no pointers.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_packet(fd: RawFd, ifindex: i32, protocol: u16) -> std::io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A shared read-write mapping of a socket's packet ring(s), unmapped on drop.
struct RingMap {
    base: NonNull<u8>,
    len: usize,
}

impl RingMap {
    fn new(fd: RawFd, len: usize) -> std::io::Result<RingMap> {
        // SAFETY: mapping a packet socket's ring: a fresh mapping of `len` bytes at an address
        // the kernel picks; nothing else in the process is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        let p = if p == libc::MAP_FAILED {
            // MAP_LOCKED can fail under RLIMIT_MEMLOCK; the ring works without it.
            // SAFETY: as above.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            }
        } else {
            p
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p as *mut u8).ok_or_else(|| std::io::Error::other("null mmap"))?;
        Ok(RingMap { base, len })
    }

    /// The status word (or any aligned u32 the kernel updates concurrently) at `off`.
    #[inline]
    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: the offset is 4-aligned (the mapping is page-aligned) and inside the mapping,
        // which lives as long as `self`; the kernel writes these words concurrently, so they
        // are only ever accessed atomically through this view.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
    }

    /// A plain u32 at `off` that the kernel does not change while user space owns it.
    #[inline]
    fn read_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len);
        // SAFETY: in bounds (checked); unaligned read of plain data in a block or frame that
        // user space owns (its status word said so, with acquire ordering).
        unsafe { std::ptr::read_unaligned(self.base.as_ptr().add(off) as *const u32) }
    }

    #[inline]
    fn read_u16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.len);
        // SAFETY: as in read_u32.
        unsafe { std::ptr::read_unaligned(self.base.as_ptr().add(off) as *const u16) }
    }

    #[inline]
    fn write_u32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len);
        // SAFETY: in bounds; the frame is owned by user space (status AVAILABLE) until its
        // status word is set with release ordering afterwards.
        unsafe { std::ptr::write_unaligned(self.base.as_ptr().add(off) as *mut u32, v) }
    }

    #[inline]
    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off <= self.len && len <= self.len - off);
        // SAFETY: in bounds (checked); the bytes belong to a block user space owns.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), len) }
    }

    #[inline]
    fn copy_in(&self, off: usize, src: &[u8]) {
        assert!(off <= self.len && src.len() <= self.len - off);
        // SAFETY: in bounds (checked); the frame is owned by user space until its status is
        // set to SEND_REQUEST; `src` is a packet buffer, never inside the ring.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len()) }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in new(); no reference into it
        // outlives the RingMap (all accessors borrow self).
        unsafe {
            libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

// SAFETY: the mapping is owned by the RingMap alone; it is only reached through &self/&mut self
// of the ring that owns it, and the words the kernel shares are accessed atomically.
unsafe impl Send for RingMap {}

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
    gone: AtomicBool,
    /// MTU last read; refreshed by link_up().
    mtu: AtomicU32,
    /// Frames the kernel dropped on RX (ring full), summed over queues; also counted as
    /// `no_buffer` in the drops of the burst that noticed them.
    kernel_drops: AtomicU64,
}

impl Shared {
    fn mark_gone(&self) {
        if !self.gone.swap(true, Ordering::Relaxed) {
            tracing::warn!(port = %self.name, iface = %self.iface, "interface is gone; port down");
        }
    }
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

fn backend(port: &str, msg: impl Into<String>) -> PortError {
    PortError::Backend { port: port.to_string(), msg: msg.into() }
}

fn io(port: &str, what: &str, e: std::io::Error) -> PortError {
    PortError::Io { port: port.to_string(), source: std::io::Error::new(e.kind(), format!("{what}: {e}")) }
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
                gone: AtomicBool::new(false),
                mtu: AtomicU32::new(mtu),
                kernel_drops: AtomicU64::new(0),
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
        Ok(Box::new(AfPacketTx { shared: self.shared.clone(), ring, pending: false }))
    }

    fn link_up(&self) -> bool {
        if self.shared.gone.load(Ordering::Relaxed) {
            return false;
        }
        match link_state(self.shared.ctl.as_raw_fd(), self.shared.ifindex) {
            Some((up, mtu)) => {
                if mtu != 0 {
                    self.shared.mtu.store(mtu, Ordering::Relaxed);
                }
                up
            }
            None => {
                self.shared.mark_gone();
                false
            }
        }
    }
}

// ---- RX: the socket setup both modes share. ----

/// A bound RX socket of interface `ifindex`: `PACKET_VNET_HDR` asked for (the returned flag
/// says whether the kernel agreed), `setup` run before the socket is bound (a ring must exist
/// before frames arrive), outgoing frames ignored, promiscuous mode and fanout as `opts` say.
fn rx_socket<T>(
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
fn read_kernel_drops(fd: RawFd) -> u32 {
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
enum RxSource {
    Ring(RxRing),
    Sock(Box<RxSock>),
}

// ---- RX mode `ring`: TPACKET_V3. ----

struct RxRing {
    fd: OwnedFd,
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
    fn open(
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
    fn block_off(&self) -> usize {
        self.cur * self.block_size
    }

    /// Hands the current block back to the kernel and moves to the next.
    #[inline]
    fn release_block(&mut self) {
        let off = self.block_off();
        self.map.atomic_u32(off + BD_BLOCK_STATUS).store(TP_STATUS_KERNEL, Ordering::Release);
        self.in_block = false;
        self.cur = (self.cur + 1) % self.block_nr;
    }

    /// `false` if frames are waiting: poll(2) on a TPACKET_V3 socket reports readable while
    /// the current block belongs to user space; a block we are part way through must be
    /// finished first.
    fn idle(&self) -> bool {
        !self.in_block
            && self.map.atomic_u32(self.block_off() + BD_BLOCK_STATUS).load(Ordering::Acquire)
                & TP_STATUS_USER
                == 0
    }

    fn rx_burst(
        &mut self,
        shared: &Shared,
        cache: &mut PoolCache,
        out: &mut Burst,
        room: usize,
        drops: &mut DropTally,
    ) -> usize {
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
fn stripped_tag(status: u32, tci: u16, tpid: u16) -> Option<[u8; VLAN_HLEN]> {
    if status & TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    let tpid = match tpid {
        0 => ETH_P_8021Q,
        t if status & TP_STATUS_VLAN_TPID_VALID != 0 => t,
        _ => ETH_P_8021Q,
    };
    let (p, t) = (tpid.to_be_bytes(), tci.to_be_bytes());
    Some([p[0], p[1], t[0], t[1]])
}

/// Reads the ring's description of the frame whose header is at `hdr` (with `hdr_room`
/// bytes of its block from there) and hands the frame to [`rx_frame`].
#[inline]
fn ring_frame(
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

// ---- RX mode `recvmmsg`: no ring. ----

/// Frames one `recvmmsg(2)` call takes at most.
const RECV_BATCH: usize = 32;
/// A receive slot: the virtio-net header and the largest frame the kernel hands over (a
/// 64 KiB GSO super-frame and its Ethernet header). Only the pages a frame touches are ever
/// faulted in, so small frames cost a page per slot.
const RECV_SLOT: usize = 66 << 10;
/// The socket's receive queue limit: what a default `ring` RX queue holds (16 x 256 KiB).
const RECV_QUEUE_BYTES: libc::c_int = 4 << 20;
/// Control-message room per frame: `PACKET_AUXDATA` (16 + 20 bytes, aligned) and
/// `SO_RXQ_OVFL` (16 + 4, aligned), with slack.
const RECV_CTRL_WORDS: usize = 16;

/// What the kernel said about one frame of the last `recvmmsg` call.
#[derive(Clone, Copy, Default)]
struct RecvMeta {
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
struct RxSock {
    fd: OwnedFd,
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
    fn open(
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
    fn idle(&self) -> bool {
        self.next == self.got && self.pending.is_none()
    }

    /// Receives up to `want` frames into the slots; the count, 0 when none are waiting.
    fn recv(&mut self, shared: &Shared, want: usize, drops: &mut DropTally) -> usize {
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
                libc::ENXIO | libc::ENODEV => shared.mark_gone(),
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

    fn rx_burst(
        &mut self,
        shared: &Shared,
        cache: &mut PoolCache,
        out: &mut Burst,
        room: usize,
        drops: &mut DropTally,
    ) -> usize {
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
    fn slot_frame(&self, i: usize, m: &RecvMeta, cache: &mut PoolCache) -> Result<RxFrame, DropReason> {
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
fn u64s_as_bytes(w: &[u64; RECV_CTRL_WORDS]) -> [u8; RECV_CTRL_WORDS * 8] {
    let mut b = [0u8; RECV_CTRL_WORDS * 8];
    for (d, s) in b.chunks_exact_mut(8).zip(w) {
        d.copy_from_slice(&s.to_ne_bytes());
    }
    b
}

/// The control messages of a received message: (level, type, data), as CMSG_FIRSTHDR and
/// CMSG_NXTHDR walk them (a `cmsghdr`, then data; each message aligned to `size_t`).
fn cmsgs(buf: &[u8]) -> impl Iterator<Item = (libc::c_int, libc::c_int, &[u8])> {
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

// ---- RX: what both modes share. ----

struct AfPacketRx {
    shared: Arc<Shared>,
    q: u16,
    src: Option<RxSource>,
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
    fn count_kernel_drops(&self, lost: u32, drops: &mut DropTally) {
        if lost != 0 {
            drops.add(DropReason::NoBuffer, lost);
            self.kernel_drops.fetch_add(u64::from(lost), Ordering::Relaxed);
        }
    }
}

/// What one received frame became.
enum RxFrame {
    /// A finished frame in a buffer.
    Buf(PacketBuf),
    /// A GSO super-frame (its bytes where it was received), to be cut into segments.
    Gso(PendingGso),
}

/// A super-frame being cut into segments, possibly across bursts: its bytes (in a ring block
/// or a receive slot) stay with user space until the last segment is out.
struct PendingGso {
    /// Offset of the frame's bytes in the ring or the slots, and their length.
    data: usize,
    len: usize,
    /// The VLAN tag the kernel took out (TPID and TCI), put back into every segment.
    tag: Option<[u8; VLAN_HLEN]>,
    seg: Segmenter,
}

/// Turns one received frame into a buffer, whichever way it was received: `data` is the
/// frame as captured (found at offset `at` of its ring or slots), `tag` the VLAN tag the
/// kernel took out (put back, so the switch sees the frame as it was on the wire), `vh` its
/// virtio-net header (a checksum the sender left to the device is finished here). A GSO
/// super-frame is handed back for segmentation. `Err` names the drop reason.
#[inline]
fn rx_frame(
    data: &[u8],
    at: usize,
    tag: Option<[u8; VLAN_HLEN]>,
    vh: &VnetHdrRepr,
    cache: &mut PoolCache,
) -> Result<RxFrame, DropReason> {
    let snaplen = data.len();
    let extra = if tag.is_some() { VLAN_HLEN } else { 0 };
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
    if snaplen < 12 && tag.is_some() {
        return Err(DropReason::Runt);
    }
    let mut buf = cache.alloc().ok_or(DropReason::NoBuffer)?;
    let tail = buf.tail_mut();
    if let Some(t) = tag {
        tail[..12].copy_from_slice(&data[..12]);
        tail[12..16].copy_from_slice(&t);
        tail[16..16 + snaplen - 12].copy_from_slice(&data[12..]);
    } else {
        tail[..snaplen].copy_from_slice(data);
    }
    if vh.needs_csum() {
        // csum_start counts from the frame as the kernel had it, without the stripped tag.
        let start = usize::from(vh.csum_start) + if usize::from(vh.csum_start) >= 12 { extra } else { 0 };
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
fn rx_segments(
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
        let extra = if p.tag.is_some() { VLAN_HLEN } else { 0 };
        let tail = buf.tail_mut();
        let room_for_seg = tail.len().min(DATA_ROOM) - extra;
        match p.seg.next_into(frame, &mut tail[..room_for_seg]) {
            Ok(Some(len)) => {
                if let Some(t) = p.tag {
                    tail.copy_within(12..len, 16);
                    tail[12..16].copy_from_slice(&t);
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

    fn rx_burst(
        &mut self,
        cache: &mut PoolCache,
        out: &mut Burst,
        max: usize,
        drops: &mut DropTally,
    ) -> usize {
        let room = max.min(out.remaining_capacity());
        match self.src.as_mut() {
            Some(RxSource::Ring(r)) => r.rx_burst(&self.shared, cache, out, room, drops),
            Some(RxSource::Sock(s)) => s.rx_burst(&self.shared, cache, out, room, drops),
            None => 0,
        }
    }
}

// ---- TX: TPACKET_V2, one ring (and socket) per handle. ----

struct TxRing {
    fd: OwnedFd,
    map: RingMap,
    frame_nr: usize,
    frames_per_block: usize,
    block_size: usize,
    /// The next frame to fill.
    head: usize,
}

impl TxRing {
    fn open(port: &str, ifindex: i32, opts: &AfPacketOptions) -> Result<TxRing, PortError> {
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
    fn frame_off(&self, i: usize) -> usize {
        (i / self.frames_per_block) * self.block_size + (i % self.frames_per_block) * TX_FRAME_SIZE
    }

    #[inline]
    fn status(&self, i: usize) -> &AtomicU32 {
        self.map.atomic_u32(self.frame_off(i) + H2_STATUS)
    }

    /// Asks the kernel to send every frame marked SEND_REQUEST; `Err(errno)` on failure.
    #[inline]
    fn kick(&self) -> Result<(), i32> {
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
    fn reclaim_pending(&mut self) -> usize {
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

struct AfPacketTx {
    shared: Arc<Shared>,
    ring: TxRing,
    /// Frames may still wait in the ring (the last kick did not take them all).
    pending: bool,
}

fn drop_all(pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally, r: DropReason) {
    drops.add(r, pkts.len() as u32);
    for b in pkts.drain(..) {
        cache.free(b);
    }
}

impl AfPacketTx {
    /// Kicks the ring and handles the outcome; returns how many of the `queued` frames of
    /// this burst were taken back and counted as dropped.
    fn kick_and_settle(&mut self, queued: usize, drops: &mut DropTally) -> usize {
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
                        self.shared.mark_gone();
                        self.take_back(queued, drops)
                    }
                }
            }
            Err(e) => {
                if matches!(e, libc::ENXIO | libc::ENODEV) {
                    self.shared.mark_gone();
                } else if !is_link_error(e) {
                    tracing::debug!(port = %self.shared.name, errno = e, "AF_PACKET TX error");
                }
                self.take_back(queued, drops)
            }
        }
    }

    #[cold]
    fn take_back(&mut self, queued: usize, drops: &mut DropTally) -> usize {
        self.pending = false;
        let n = self.ring.reclaim_pending();
        drops.add(DropReason::PortDown, n as u32);
        n.min(queued)
    }
}

impl TxQueue for AfPacketTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        if self.shared.gone.load(Ordering::Relaxed) {
            if self.pending {
                self.take_back(0, drops);
            }
            drop_all(pkts, cache, drops, DropReason::PortDown);
            return 0;
        }
        let mtu = self.shared.mtu.load(Ordering::Relaxed) as usize;
        let max_len = if mtu == 0 { TX_FRAME_SIZE - H2_DATA } else { mtu + ETH_HLEN };
        let mut queued = 0usize;
        let mut full = false;
        for b in pkts.drain(..) {
            let len = b.len();
            let d = b.data();
            if len < ETH_HLEN {
                drops.add(DropReason::Runt, 1);
                cache.free(b);
                continue;
            }
            let tagged = matches!(u16::from_be_bytes([d[12], d[13]]), ETH_P_8021Q | ETH_P_8021AD);
            let limit = if tagged { max_len + VLAN_HLEN } else { max_len };
            if len > limit || len > TX_FRAME_SIZE - H2_DATA {
                drops.add(DropReason::Oversize, 1);
                cache.free(b);
                continue;
            }
            if full {
                drops.add(DropReason::TxFull, 1);
                cache.free(b);
                continue;
            }
            let i = self.ring.head;
            if self.ring.status(i).load(Ordering::Acquire) != TP_STATUS_AVAILABLE {
                // Still owned by the kernel: the ring is full.
                full = true;
                drops.add(DropReason::TxFull, 1);
                cache.free(b);
                continue;
            }
            let off = self.ring.frame_off(i);
            self.ring.map.copy_in(off + H2_DATA, d);
            self.ring.map.write_u32(off + H2_LEN, len as u32);
            self.ring.status(i).store(TP_STATUS_SEND_REQUEST, Ordering::Release);
            self.ring.head = (i + 1) % self.ring.frame_nr;
            queued += 1;
            cache.free(b);
        }
        if queued == 0 && !self.pending {
            return 0;
        }
        let lost = self.kick_and_settle(queued, drops);
        queued - lost
    }

    fn flush(&mut self) -> Result<(), PortError> {
        if self.pending && !self.shared.gone.load(Ordering::Relaxed) {
            let mut d = DropTally::default();
            self.kick_and_settle(0, &mut d);
        }
        Ok(())
    }
}
