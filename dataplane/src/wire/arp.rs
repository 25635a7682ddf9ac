//! ARP (RFC 826) over Ethernet.

use super::{MacAddr, WireError};
use std::net::Ipv4Addr;

/// A view of an ARP packet (the Ethernet payload). After `new_checked`, the sender and target
/// hardware addresses are known to be 6 bytes and inside the buffer.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

pub const ARP_HEADER_LEN: usize = 8;
/// The size of an Ethernet/IPv4 ARP packet.
pub const ARP_ETH_IPV4_LEN: usize = 28;

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Checks the fixed header, a hardware address length of 6, and that both address pairs
    /// (whatever the protocol address length) fit in the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < ARP_HEADER_LEN {
            return Err(WireError::TruncatedArp(b.len()));
        }
        let hlen = b[4];
        let plen = usize::from(b[5]);
        if hlen != 6 {
            return Err(WireError::ArpNotEthernet(hlen));
        }
        if b.len() < ARP_HEADER_LEN + 2 * 6 + 2 * plen {
            return Err(WireError::TruncatedArp(b.len()));
        }
        Ok(ArpPacket { buffer })
    }

    fn be16(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    pub fn hardware_type(&self) -> u16 {
        self.be16(0)
    }
    pub fn protocol_type(&self) -> u16 {
        self.be16(2)
    }
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[5]
    }
    pub fn operation(&self) -> u16 {
        self.be16(6)
    }
    /// Sender hardware address.
    pub fn sha(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[8..14])
    }
    /// Sender protocol address (IPv4 when the protocol length is 4).
    pub fn spa(&self) -> Option<Ipv4Addr> {
        (self.protocol_len() == 4).then(|| {
            let b = &self.buffer.as_ref()[14..18];
            Ipv4Addr::new(b[0], b[1], b[2], b[3])
        })
    }
    /// Target hardware address.
    pub fn tha(&self) -> MacAddr {
        let off = 14 + usize::from(self.protocol_len());
        MacAddr::from_bytes(&self.buffer.as_ref()[off..off + 6])
    }
    pub fn tpa(&self) -> Option<Ipv4Addr> {
        (self.protocol_len() == 4).then(|| {
            let b = &self.buffer.as_ref()[24..28];
            Ipv4Addr::new(b[0], b[1], b[2], b[3])
        })
    }
}

/// An Ethernet/IPv4 ARP packet, for building and comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sha: MacAddr,
    pub spa: Ipv4Addr,
    pub tha: MacAddr,
    pub tpa: Ipv4Addr,
}

impl ArpRepr {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
    /// RARP "request reverse", as QEMU and DPDK send on live migration.
    pub const RARP_REQUEST: u16 = 3;

    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Option<ArpRepr> {
        if p.hardware_type() != 1 || p.protocol_type() != 0x0800 {
            return None;
        }
        Some(ArpRepr { operation: p.operation(), sha: p.sha(), spa: p.spa()?, tha: p.tha(), tpa: p.tpa()? })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + ARP_ETH_IPV4_LEN, 0);
        self.emit_into(&mut out[at..]);
    }

    /// Writes the packet into `out[..ARP_ETH_IPV4_LEN]`; `out` must be at least that long.
    pub fn emit_into(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 0]);
        out[6..8].copy_from_slice(&self.operation.to_be_bytes());
        out[8..14].copy_from_slice(&self.sha.0);
        out[14..18].copy_from_slice(&self.spa.octets());
        out[18..24].copy_from_slice(&self.tha.0);
        out[24..28].copy_from_slice(&self.tpa.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let r = ArpRepr {
            operation: ArpRepr::REQUEST,
            sha: MacAddr([2, 0, 0, 0, 0, 1]),
            spa: Ipv4Addr::new(10, 0, 0, 1),
            tha: MacAddr::ZERO,
            tpa: Ipv4Addr::new(10, 0, 0, 2),
        };
        let mut v = Vec::new();
        r.emit(&mut v);
        assert_eq!(v.len(), ARP_ETH_IPV4_LEN);
        let p = ArpPacket::new_checked(&v[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p), Some(r));
        for n in 0..ARP_ETH_IPV4_LEN {
            assert!(ArpPacket::new_checked(&v[..n]).is_err(), "len {n}");
        }
        let mut bad = v.clone();
        bad[4] = 8;
        assert_eq!(ArpPacket::new_checked(&bad[..]).unwrap_err(), WireError::ArpNotEthernet(8));
    }
}
