//! Just enough IPv4 and IPv6 to read addresses and the next protocol.

use super::WireError;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;

/// A view of an IPv4 header. `new_checked` verifies the version, that the IHL is at least 5,
/// and that the whole header (options included) is inside the buffer.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < IPV4_MIN_HEADER_LEN {
            return Err(WireError::TruncatedIpv4(b.len()));
        }
        let version = b[0] >> 4;
        if version != 4 {
            return Err(WireError::WrongIpVersion(version));
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if ihl < IPV4_MIN_HEADER_LEN || ihl > b.len() {
            return Err(WireError::TruncatedIpv4(b.len()));
        }
        Ok(Ipv4Packet { buffer })
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }
    pub fn total_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[12..16];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[16..20];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

/// A view of the fixed IPv6 header.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < IPV6_HEADER_LEN {
            return Err(WireError::TruncatedIpv6(b.len()));
        }
        let version = b[0] >> 4;
        if version != 6 {
            return Err(WireError::WrongIpVersion(version));
        }
        Ok(Ipv6Packet { buffer })
    }
    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }
    fn addr(&self, at: usize) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[at..at + 16]);
        Ipv6Addr::from(a)
    }
    pub fn src(&self) -> Ipv6Addr {
        self.addr(8)
    }
    pub fn dst(&self) -> Ipv6Addr {
        self.addr(24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checks() {
        let mut h = [0u8; 24];
        h[0] = 0x46; // IHL 6 = 24 bytes
        h[9] = 17;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert_eq!(
            (p.src(), p.dst(), p.protocol()),
            (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17)
        );
        assert!(Ipv4Packet::new_checked(&h[..23]).is_err());
        h[0] = 0x44;
        assert!(Ipv4Packet::new_checked(&h[..]).is_err());
        h[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&h[..]).unwrap_err(), WireError::WrongIpVersion(6));
    }

    #[test]
    fn ipv6_checks() {
        let mut h = [0u8; 40];
        h[0] = 0x60;
        h[6] = 58;
        h[23] = 1;
        let p = Ipv6Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.next_header(), 58);
        assert_eq!(p.src(), Ipv6Addr::LOCALHOST);
        assert!(Ipv6Packet::new_checked(&h[..39]).is_err());
    }
}
