//! VXLAN (RFC 7348): the 8-byte header between the outer UDP header and the inner Ethernet
//! frame.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! The I flag must be set for the VNI to be valid (a header without it is refused); the other
//! flag bits and the reserved fields are written as zero and ignored on receipt, as the RFC
//! says.

use super::WireError;

/// The header's length; the inner Ethernet frame follows it.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The IANA port (RFC 7348, section 5).
pub const VXLAN_PORT: u16 = 4789;
/// The flags byte's I bit: the VNI field is valid.
pub const VXLAN_FLAG_I: u8 = 0x08;
/// The largest 24-bit VNI.
pub const VNI_MAX: u32 = (1 << 24) - 1;

const FLAGS: usize = 0;
const VNI: usize = 4;

/// A view of a VXLAN header and what follows it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Checks the length and the I flag.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < VXLAN_HEADER_LEN {
            return Err(WireError::TruncatedTunnel(b.len()));
        }
        if b[FLAGS] & VXLAN_FLAG_I == 0 {
            return Err(WireError::VxlanNoVni);
        }
        Ok(VxlanPacket { buffer })
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[FLAGS]
    }

    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[VNI], b[VNI + 1], b[VNI + 2]])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VXLAN_HEADER_LEN..]
    }
}

/// A VXLAN header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> VxlanRepr {
        VxlanRepr { vni: p.vni() }
    }

    /// Writes the header into `out[..VXLAN_HEADER_LEN]` (reserved fields zero); `out` must be
    /// at least that long. The VNI's bits above 24 are not written.
    pub fn emit(&self, out: &mut [u8]) {
        let v = self.vni.to_be_bytes();
        out[..VXLAN_HEADER_LEN].copy_from_slice(&[VXLAN_FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_reserved_ignored_and_truncation() {
        let mut h = [0u8; VXLAN_HEADER_LEN + 2];
        VxlanRepr { vni: 0x12_3456 }.emit(&mut h);
        assert_eq!(&h[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), VxlanRepr { vni: 0x12_3456 });
        assert_eq!(p.payload().len(), 2);
        // Reserved bits and fields set: ignored on receipt (RFC 7348 section 5).
        let mut r = h;
        r[0] |= 0xf7;
        r[1] = 0xff;
        r[7] = 0xff;
        assert_eq!(VxlanPacket::new_checked(&r[..]).unwrap().vni(), 0x12_3456);
        let mut no_i = h;
        no_i[0] = 0;
        assert_eq!(VxlanPacket::new_checked(&no_i[..]).unwrap_err(), WireError::VxlanNoVni);
        for n in 0..VXLAN_HEADER_LEN {
            assert_eq!(VxlanPacket::new_checked(&h[..n]).unwrap_err(), WireError::TruncatedTunnel(n));
        }
    }
}
