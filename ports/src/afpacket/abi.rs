//! The kernel's AF_PACKET ABI (linux/if_packet.h), kept here so that the layout is visible and
//! fixed, and the socket calls on it: creating, binding and configuring a packet socket, and the
//! shared mapping of its rings ([`RingMap`]), through which every access is bounds-checked.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use switchyard_dataplane::buffer::SLOT_SIZE;
use switchyard_dataplane::wire::offload::VNET_HDR_LEN;

pub(super) const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
pub(super) const PACKET_RX_RING: libc::c_int = 5;
pub(super) const PACKET_STATISTICS: libc::c_int = 6;
pub(super) const PACKET_VERSION: libc::c_int = 10;
pub(super) const PACKET_TX_RING: libc::c_int = 13;
pub(super) const PACKET_LOSS: libc::c_int = 14;
pub(super) const PACKET_FANOUT: libc::c_int = 18;
pub(super) const PACKET_QDISC_BYPASS: libc::c_int = 20;
pub(super) const PACKET_VNET_HDR: libc::c_int = 15;
pub(super) const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
pub(super) const PACKET_AUXDATA: libc::c_int = 8;
/// asm-generic/socket.h; the libc crate has it only for some targets.
pub(super) const SO_RXQ_OVFL: libc::c_int = 40;
pub(super) const PACKET_MR_PROMISC: libc::c_ushort = 1;
pub(super) const PACKET_FANOUT_HASH: u32 = 0;
pub(super) const PACKET_OUTGOING: u8 = 4;
pub(super) const TPACKET_V2: libc::c_int = 1;
pub(super) const TPACKET_V3: libc::c_int = 2;

pub(super) const TP_STATUS_KERNEL: u32 = 0;
pub(super) const TP_STATUS_USER: u32 = 1 << 0;
pub(super) const TP_STATUS_LOSING: u32 = 1 << 2;
pub(super) const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
pub(super) const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
pub(super) const TP_STATUS_AVAILABLE: u32 = 0;
pub(super) const TP_STATUS_SEND_REQUEST: u32 = 1 << 0;

#[repr(C)]
pub(super) struct TpacketReq3 {
    pub(super) tp_block_size: u32,
    pub(super) tp_block_nr: u32,
    pub(super) tp_frame_size: u32,
    pub(super) tp_frame_nr: u32,
    pub(super) tp_retire_blk_tov: u32,
    pub(super) tp_sizeof_priv: u32,
    pub(super) tp_feature_req_word: u32,
}

#[repr(C)]
pub(super) struct TpacketReq {
    pub(super) tp_block_size: u32,
    pub(super) tp_block_nr: u32,
    pub(super) tp_frame_size: u32,
    pub(super) tp_frame_nr: u32,
}

#[repr(C)]
#[derive(Default)]
pub(super) struct TpacketStatsV3 {
    pub(super) tp_packets: u32,
    pub(super) tp_drops: u32,
    pub(super) tp_freeze_q_cnt: u32,
}

// struct tpacket_auxdata { u32 tp_status; u32 tp_len; u32 tp_snaplen; u16 tp_mac; u16 tp_net;
// u16 tp_vlan_tci; u16 tp_vlan_tpid; }: the PACKET_AUXDATA control message of recvmsg.
pub(super) const AUX_STATUS: usize = 0;
pub(super) const AUX_VLAN_TCI: usize = 16;
pub(super) const AUX_VLAN_TPID: usize = 18;
pub(super) const AUX_SIZE: usize = 20;

#[repr(C)]
pub(super) struct PacketMreq {
    pub(super) mr_ifindex: libc::c_int,
    pub(super) mr_type: libc::c_ushort,
    pub(super) mr_alen: libc::c_ushort,
    pub(super) mr_address: [u8; 8],
}

// struct tpacket_block_desc { u32 version; u32 offset_to_priv; struct tpacket_hdr_v1 { u32
// block_status; u32 num_pkts; u32 offset_to_first_pkt; u32 blk_len; ... } }
pub(super) const BD_BLOCK_STATUS: usize = 8;
pub(super) const BD_NUM_PKTS: usize = 12;
pub(super) const BD_FIRST_PKT: usize = 16;
pub(super) const BD_SIZE: usize = 48;

// struct tpacket3_hdr { u32 tp_next_offset; u32 tp_sec; u32 tp_nsec; u32 tp_snaplen;
// u32 tp_len; u32 tp_status; u16 tp_mac; u16 tp_net; { u32 tp_rxhash; u32 tp_vlan_tci;
// u16 tp_vlan_tpid; u16 pad } u8 pad[8] }, followed (aligned to 16) by a struct sockaddr_ll.
pub(super) const H3_NEXT: usize = 0;
pub(super) const H3_SNAPLEN: usize = 12;
pub(super) const H3_LEN: usize = 16;
pub(super) const H3_STATUS: usize = 20;
pub(super) const H3_MAC: usize = 24;
pub(super) const H3_VLAN_TCI: usize = 32;
pub(super) const H3_VLAN_TPID: usize = 36;
pub(super) const H3_SIZE: usize = 48;
/// sockaddr_ll.sll_pkttype, after the (16-aligned) tpacket3_hdr.
pub(super) const H3_PKTTYPE: usize = H3_SIZE + 10;
/// With `PACKET_VNET_HDR` the kernel puts the virtio-net header just before the frame, after
/// the tpacket3_hdr and the 20-byte sockaddr_ll: the frame offset is at least this.
pub(super) const H3_MAC_MIN_VNET: usize = H3_SIZE + 20 + VNET_HDR_LEN;

// struct tpacket2_hdr { u32 tp_status; u32 tp_len; u32 tp_snaplen; u16 tp_mac; u16 tp_net;
// u32 tp_sec; u32 tp_nsec; u16 tp_vlan_tci; u16 tp_vlan_tpid; u8 pad[4] }: 32 bytes. On TX,
// without PACKET_TX_HAS_OFF, the frame starts at TPACKET2_HDRLEN - sizeof(sockaddr_ll) = 32.
pub(super) const H2_STATUS: usize = 0;
pub(super) const H2_LEN: usize = 4;
pub(super) const H2_DATA: usize = 32;
/// A TX ring frame holds the header and the largest frame a buffer can hold.
pub(super) const TX_FRAME_SIZE: usize = (H2_DATA + SLOT_SIZE + 15) & !15;

pub(super) fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: &T) -> std::io::Result<()> {
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
pub(super) fn packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; no pointers.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn bind_packet(fd: RawFd, ifindex: i32, protocol: u16) -> std::io::Result<()> {
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
pub(super) struct RingMap {
    base: NonNull<u8>,
    len: usize,
}

impl RingMap {
    pub(super) fn new(fd: RawFd, len: usize) -> std::io::Result<RingMap> {
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
    pub(super) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: the offset is 4-aligned (the mapping is page-aligned) and inside the mapping,
        // which lives as long as `self`; the kernel writes these words concurrently, so they
        // are only ever accessed atomically through this view.
        unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
    }

    /// A plain u32 at `off` that the kernel does not change while user space owns it.
    #[inline]
    pub(super) fn read_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len);
        // SAFETY: in bounds (checked); unaligned read of plain data in a block or frame that
        // user space owns (its status word said so, with acquire ordering).
        unsafe { std::ptr::read_unaligned(self.base.as_ptr().add(off) as *const u32) }
    }

    #[inline]
    pub(super) fn read_u16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.len);
        // SAFETY: as in read_u32.
        unsafe { std::ptr::read_unaligned(self.base.as_ptr().add(off) as *const u16) }
    }

    #[inline]
    pub(super) fn write_u32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len);
        // SAFETY: in bounds; the frame is owned by user space (status AVAILABLE) until its
        // status word is set with release ordering afterwards.
        unsafe { std::ptr::write_unaligned(self.base.as_ptr().add(off) as *mut u32, v) }
    }

    #[inline]
    pub(super) fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off <= self.len && len <= self.len - off);
        // SAFETY: in bounds (checked); the bytes belong to a block user space owns.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), len) }
    }

    #[inline]
    pub(super) fn copy_in(&self, off: usize, src: &[u8]) {
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
