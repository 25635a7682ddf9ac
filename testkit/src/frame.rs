//! The one builder of test Ethernet frames: addresses, any tags, an EtherType, a payload, and
//! padding to a length, in that order. Each test keeps its own choice of bytes; this module
//! only lays them out, so that no test file carries its own copy of the header layout.
//!
//! ```
//! use switchyard_testkit::frame::Frame;
//! let f = Frame::new([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).vlan(10).ethertype(0x0800).pad(60, 0).build();
//! assert_eq!((f.len(), &f[12..16]), (60, &[0x81, 0x00, 0x00, 10][..]));
//! ```

/// The 802.1Q TPID.
pub const TPID_8021Q: u16 = 0x8100;
/// IPv4's EtherType.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// The EtherType for local experiments (IEEE 802 "local experimental 1").
pub const ETHERTYPE_LOCAL_EXPERIMENTAL: u16 = 0x88b5;

/// A frame under construction; [`Frame::build`] gives its bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    bytes: Vec<u8>,
}

impl Frame {
    /// Destination, then source.
    pub fn new(dst: [u8; 6], src: [u8; 6]) -> Frame {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&src);
        Frame { bytes }
    }

    /// Appends a tag: TPID, then TCI.
    pub fn tag(mut self, tpid: u16, tci: u16) -> Frame {
        self.bytes.extend_from_slice(&tpid.to_be_bytes());
        self.bytes.extend_from_slice(&tci.to_be_bytes());
        self
    }

    /// Appends an 802.1Q tag with this TCI (PCP and DEI zero when `tci` is a bare VID).
    pub fn vlan(self, tci: u16) -> Frame {
        self.tag(TPID_8021Q, tci)
    }

    pub fn ethertype(mut self, et: u16) -> Frame {
        self.bytes.extend_from_slice(&et.to_be_bytes());
        self
    }

    pub fn payload(mut self, p: &[u8]) -> Frame {
        self.bytes.extend_from_slice(p);
        self
    }

    /// Pads with `byte` up to `len` bytes in all (nothing when it is already that long).
    pub fn pad(self, len: usize, byte: u8) -> Frame {
        self.fill(len, |_| byte)
    }

    /// Pads up to `len` bytes in all, the byte at offset `k` of the frame being `f(k)`.
    pub fn fill(mut self, len: usize, mut f: impl FnMut(usize) -> u8) -> Frame {
        while self.bytes.len() < len {
            let k = self.bytes.len();
            self.bytes.push(f(k));
        }
        self
    }

    /// How long the frame is so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is in it (never, after [`Frame::new`]).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn build(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_at_their_offsets() {
        let f = Frame::new([1; 6], [2; 6]).tag(0x88a8, 5).vlan(7).ethertype(0x0806).payload(&[9, 9]).build();
        assert_eq!(&f[0..12], &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
        assert_eq!(&f[12..20], &[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]);
        assert_eq!(&f[20..], &[0x08, 0x06, 9, 9]);
    }

    #[test]
    fn fill_sees_absolute_offsets_and_stops_at_len() {
        let f = Frame::new([0; 6], [0; 6]).ethertype(0).fill(17, |k| k as u8).build();
        assert_eq!(&f[14..], &[14, 15, 16]);
        assert_eq!(Frame::new([0; 6], [0; 6]).pad(4, 1).len(), 12, "never shortened");
    }
}
