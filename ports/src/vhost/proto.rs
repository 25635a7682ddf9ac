//! The vhost-user wire protocol: message header, request codes, feature bits, and the
//! payloads this backend reads and writes (little-endian, as QEMU and DPDK send them on x86
//! and arm64).

use std::net::Ipv4Addr;
use switchyard_dataplane::wire::arp::ArpRepr;
use switchyard_dataplane::wire::{
    EtherType, MacAddr, ETH_DST_OFFSET, ETH_HEADER_LEN, ETH_SRC_OFFSET, ETH_TYPE_OFFSET,
};

/// Requests (frontend to backend).
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const NET_SET_MTU: u32 = 20;
    pub const SET_BACKEND_REQ_FD: u32 = 21;

    /// The request's name as the vhost-user specification spells it (for logs), including the
    /// requests this backend does not handle.
    pub fn name(request: u32) -> &'static str {
        const LATER: [&str; 19] = [
            "IOTLB_MSG",
            "SET_VRING_ENDIAN",
            "GET_CONFIG",
            "SET_CONFIG",
            "CREATE_CRYPTO_SESSION",
            "CLOSE_CRYPTO_SESSION",
            "POSTCOPY_ADVISE",
            "POSTCOPY_LISTEN",
            "POSTCOPY_END",
            "GET_INFLIGHT_FD",
            "SET_INFLIGHT_FD",
            "GPU_SET_SOCKET",
            "RESET_DEVICE",
            "VRING_KICK",
            "GET_MAX_MEM_SLOTS",
            "ADD_MEM_REG",
            "REM_MEM_REG",
            "SET_STATUS",
            "GET_STATUS",
        ];
        match request {
            GET_FEATURES => "GET_FEATURES",
            SET_FEATURES => "SET_FEATURES",
            SET_OWNER => "SET_OWNER",
            RESET_OWNER => "RESET_OWNER",
            SET_MEM_TABLE => "SET_MEM_TABLE",
            SET_LOG_BASE => "SET_LOG_BASE",
            SET_LOG_FD => "SET_LOG_FD",
            SET_VRING_NUM => "SET_VRING_NUM",
            SET_VRING_ADDR => "SET_VRING_ADDR",
            SET_VRING_BASE => "SET_VRING_BASE",
            GET_VRING_BASE => "GET_VRING_BASE",
            SET_VRING_KICK => "SET_VRING_KICK",
            SET_VRING_CALL => "SET_VRING_CALL",
            SET_VRING_ERR => "SET_VRING_ERR",
            GET_PROTOCOL_FEATURES => "GET_PROTOCOL_FEATURES",
            SET_PROTOCOL_FEATURES => "SET_PROTOCOL_FEATURES",
            GET_QUEUE_NUM => "GET_QUEUE_NUM",
            SET_VRING_ENABLE => "SET_VRING_ENABLE",
            SEND_RARP => "SEND_RARP",
            NET_SET_MTU => "NET_SET_MTU",
            SET_BACKEND_REQ_FD => "SET_BACKEND_REQ_FD",
            22..=40 => LATER[(request - 22) as usize],
            _ => "unknown",
        }
    }

    /// Whether a frontend that agreed to the protocol features `proto` waits for this
    /// request's reply whatever the message's NEED_REPLY flag says (vhost-user.rst: the
    /// requests whose reply is their answer, and SET_LOG_BASE once LOG_SHMFD is agreed, which
    /// QEMU's `vhost_user_set_log_base` reads a reply to). Refusing one of them without a reply
    /// would leave the frontend blocked (QEMU holds its global lock while it waits).
    pub fn awaits_reply(request: u32, proto: u64) -> bool {
        match request {
            SET_LOG_BASE => proto & super::pfeat::LOG_SHMFD != 0,
            // GET_CONFIG, CREATE_CRYPTO_SESSION, POSTCOPY_ADVISE, GET_INFLIGHT_FD,
            // GET_MAX_MEM_SLOTS, GET_STATUS: their protocol features are not offered, so a
            // frontend sending one is refused, which ends the session.
            GET_FEATURES
            | GET_VRING_BASE
            | GET_PROTOCOL_FEATURES
            | GET_QUEUE_NUM
            | 24
            | 26
            | 28
            | 31
            | 36
            | 40 => true,
            _ => false,
        }
    }
}

/// Virtio and vhost feature bits.
pub mod feat {
    /// The driver may leave a TCP/UDP checksum partial (`NEEDS_CSUM` in the header).
    pub const NET_F_CSUM: u64 = 1 << 0;
    /// The device may leave a checksum partial towards the driver (`NEEDS_CSUM`, after
    /// validating it) or say it validated one (`DATA_VALID`).
    pub const NET_F_GUEST_CSUM: u64 = 1 << 1;
    /// The device may hand the driver TCP super-frames (GSO TCPV4, TCPV6).
    pub const NET_F_GUEST_TSO4: u64 = 1 << 7;
    pub const NET_F_GUEST_TSO6: u64 = 1 << 8;
    /// The driver may send TCP super-frames for the device to segment.
    pub const NET_F_HOST_TSO4: u64 = 1 << 11;
    pub const NET_F_HOST_TSO6: u64 = 1 << 12;
    pub const NET_F_MTU: u64 = 1 << 3;
    pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
    pub const NET_F_STATUS: u64 = 1 << 16;
    pub const NET_F_CTRL_VQ: u64 = 1 << 17;
    pub const NET_F_GUEST_ANNOUNCE: u64 = 1 << 21;
    pub const NET_F_MQ: u64 = 1 << 22;
    pub const F_NOTIFY_ON_EMPTY: u64 = 1 << 24;
    pub const LOG_ALL: u64 = 1 << 26;
    pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_F_EVENT_IDX: u64 = 1 << 29;
    pub const USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const F_VERSION_1: u64 = 1 << 32;
    pub const F_IN_ORDER: u64 = 1 << 35;

    /// What this backend offers. Not offered: indirect descriptors (so an INDIRECT flag is an
    /// invalid descriptor), offloads (frames are plain Ethernet), the packed ring.
    ///
    /// IN_ORDER is a promise kept by every path of [`crate::vhost::vring`]: each queue takes the
    /// guest's available entries strictly in order and returns each of them, valid or not,
    /// with one used entry in that same order (a frame spread over several RX buffers uses
    /// consecutive entries). It lets DPDK guests take their in-order paths, which recycle
    /// descriptors without looking at the used ids (and which they assume when it is agreed).
    pub const OFFERED: u64 = F_VERSION_1
        | NET_F_MRG_RXBUF
        | RING_F_EVENT_IDX
        | NET_F_MQ
        | LOG_ALL
        | USER_F_PROTOCOL_FEATURES
        | F_IN_ORDER;

    /// The offloads a port with `offloads` on offers on top of [`OFFERED`]. The guest's
    /// transmit side (checksum and TCP segmentation): switchyard finishes its frames where
    /// they enter (`crate::vhost::vring`'s offload path), so every other port gets finished,
    /// MTU-sized frames. The guest's receive side (GUEST_CSUM, which GUEST_TSO4/6 require):
    /// runs of TCP segments towards the guest are merged into super-frames again, with mergeable
    /// RX buffers only (`crate::vhost::vring::RxGso`); every other frame goes finished, flags 0.
    pub const OFFLOADS: u64 = NET_F_CSUM
        | NET_F_HOST_TSO4
        | NET_F_HOST_TSO6
        | NET_F_GUEST_CSUM
        | NET_F_GUEST_TSO4
        | NET_F_GUEST_TSO6;

    /// What a port offers: [`OFFERED`], plus [`OFFLOADS`] when `offloads` is on.
    pub const fn offered(offloads: bool) -> u64 {
        if offloads {
            OFFERED | OFFLOADS
        } else {
            OFFERED
        }
    }
}

/// Protocol feature bits.
pub mod pfeat {
    pub const MQ: u64 = 1 << 0;
    pub const LOG_SHMFD: u64 = 1 << 1;
    pub const RARP: u64 = 1 << 2;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const NET_MTU: u64 = 1 << 4;
    /// What this backend offers.
    pub const OFFERED: u64 = MQ | LOG_SHMFD | RARP | REPLY_ACK;
}

/// Header flags.
pub const VERSION: u32 = 0x1;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Size of the message header.
pub const HDR_SIZE: usize = 12;
/// Largest payload accepted (the largest standard message, the memory table, is 264 bytes).
pub const MAX_PAYLOAD: usize = 4096;
/// `SET_VRING_KICK/CALL/ERR`: no file descriptor comes with the message (polling mode).
pub const VRING_NOFD: u64 = 0x100;
/// `SET_VRING_ADDR` flags: log writes to the used ring.
pub const VRING_F_LOG: u32 = 0x1;
/// Most memory regions in a table (without CONFIGURE_MEM_SLOTS).
pub const MAX_REGIONS: usize = 8;

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn parse(b: &[u8; HDR_SIZE]) -> Header {
        Header { request: le32(b, 0), flags: le32(b, 4), size: le32(b, 8) }
    }

    pub fn bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..4].copy_from_slice(&self.request.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// A whole message: header fields and payload bytes.
pub fn message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Header { request, flags, size: payload.len() as u32 }.bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[inline]
pub fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

#[inline]
pub fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// `struct vhost_vring_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringState {
    pub index: u32,
    pub num: u32,
}

impl VringState {
    pub const SIZE: usize = 8;
    pub fn parse(p: &[u8]) -> Option<VringState> {
        (p.len() >= Self::SIZE).then(|| VringState { index: le32(p, 0), num: le32(p, 4) })
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.index.to_le_bytes().to_vec();
        v.extend_from_slice(&self.num.to_le_bytes());
        v
    }
}

/// `struct vhost_vring_addr` (note the field order: descriptors, used, available, log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VringAddr {
    pub index: u32,
    pub flags: u32,
    pub desc: u64,
    pub used: u64,
    pub avail: u64,
    pub log: u64,
}

impl VringAddr {
    pub const SIZE: usize = 40;
    pub fn parse(p: &[u8]) -> Option<VringAddr> {
        (p.len() >= Self::SIZE).then(|| VringAddr {
            index: le32(p, 0),
            flags: le32(p, 4),
            desc: le64(p, 8),
            used: le64(p, 16),
            avail: le64(p, 24),
            log: le64(p, 32),
        })
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.extend_from_slice(&self.index.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        for x in [self.desc, self.used, self.avail, self.log] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }
}

/// The memory table of `SET_MEM_TABLE`.
pub fn parse_mem_table(p: &[u8]) -> Option<Vec<super::mem::RegionDesc>> {
    if p.len() < 8 {
        return None;
    }
    let n = le32(p, 0) as usize;
    if n == 0 || n > MAX_REGIONS || p.len() < 8 + 32 * n {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let o = 8 + 32 * i;
                super::mem::RegionDesc {
                    gpa: le64(p, o),
                    size: le64(p, o + 8),
                    uva: le64(p, o + 16),
                    mmap_offset: le64(p, o + 24),
                }
            })
            .collect(),
    )
}

/// Encodes a memory table.
pub fn mem_table_bytes(regions: &[super::mem::RegionDesc]) -> Vec<u8> {
    let mut v = (regions.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&[0u8; 4]);
    for r in regions {
        for x in [r.gpa, r.size, r.uva, r.mmap_offset] {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v
}

/// The gratuitous RARP frame announcing `mac` (as QEMU's `qemu_announce_self` and DPDK's
/// vhost library build it): broadcast, EtherType 0x8035, a reverse request with `mac` as
/// sender and target hardware address, padded to 60 bytes.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; 60] {
    let mac = MacAddr(mac);
    let mut f = [0u8; 60];
    f[ETH_DST_OFFSET..ETH_SRC_OFFSET].copy_from_slice(&MacAddr::BROADCAST.0);
    f[ETH_SRC_OFFSET..ETH_TYPE_OFFSET].copy_from_slice(&mac.0);
    f[ETH_TYPE_OFFSET..ETH_HEADER_LEN].copy_from_slice(&EtherType::RARP.to_be_bytes());
    let unknown = Ipv4Addr::UNSPECIFIED;
    ArpRepr { operation: ArpRepr::RARP_REQUEST, sha: mac, spa: unknown, tha: mac, tpa: unknown }
        .emit_into(&mut f[ETH_HEADER_LEN..]);
    f
}

#[cfg(test)]
mod tests {
    use super::{rarp_frame, req};

    /// The bytes QEMU's `qemu_announce_self` sends (RFC 903 layout): broadcast, EtherType
    /// 0x8035, Ethernet/IPv4 sizes 6/4, operation 3, the MAC as sender and target, no addresses.
    #[test]
    fn rarp_frame_is_the_announcement_qemu_sends() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let mut want = [0u8; 60];
        want[..6].fill(0xff);
        want[6..12].copy_from_slice(&mac);
        want[12..22].copy_from_slice(&[0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3]);
        want[22..28].copy_from_slice(&mac);
        want[32..38].copy_from_slice(&mac);
        assert_eq!(rarp_frame(mac), want);
    }

    #[test]
    fn request_names() {
        assert_eq!(req::name(req::GET_FEATURES), "GET_FEATURES");
        assert_eq!(req::name(req::SET_BACKEND_REQ_FD), "SET_BACKEND_REQ_FD");
        assert_eq!(req::name(22), "IOTLB_MSG");
        assert_eq!(req::name(24), "GET_CONFIG");
        assert_eq!(req::name(40), "GET_STATUS");
        assert_eq!(req::name(0), "unknown");
        assert_eq!(req::name(41), "unknown");
    }
}
