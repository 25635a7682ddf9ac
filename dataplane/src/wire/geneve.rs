//! Geneve (RFC 8926): the 8-byte base header, a list of variable-length options, then the
//! payload (here always an Ethernet frame, protocol type 0x6558).
//!
//! ```text
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |                    Variable-Length Options                    |
//! option: | Option Class (16) | Type (8) |R|R|R| Length (5) | data (Length * 4 bytes) |
//! ```
//!
//! Receive rules kept here (RFC 8926 section 3.4): a version other than 0 is refused; the
//! reserved fields are ignored; the options are skipped by `Opt Len`, and when the C bit says
//! critical options are present the list is walked and any critical option (the type's high
//! bit) is refused, since switchyard understands none. The O bit (a control message that a
//! tunnel endpoint must not forward) and a protocol other than Ethernet are for the caller to
//! judge (`oam()`, `protocol()`).

use super::WireError;

/// The base header's length (without options).
pub const GENEVE_HEADER_LEN: usize = 8;
/// The IANA port (RFC 8926, section 3.3).
pub const GENEVE_PORT: u16 = 6081;
/// Protocol type of an Ethernet payload ("Transparent Ethernet Bridging").
pub const GENEVE_PROTO_ETHERNET: u16 = 0x6558;
/// An option's header length (class, type, length).
pub const GENEVE_OPTION_HEADER_LEN: usize = 4;
/// An option type's critical bit.
pub const GENEVE_OPTION_CRITICAL: u8 = 0x80;

/// Where the base header's fields lie (RFC 8926, section 3.4).
mod field {
    use core::ops::Range;
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    pub const VER_OPTLEN: usize = 0;
    /// O and C bits, then reserved.
    pub const FLAGS: usize = 1;
    pub const PROTO: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
}
use field::{FLAGS, PROTO, VER_OPTLEN, VNI};
/// The O bit of `FLAGS`.
const FLAG_O: u8 = 0x80;
/// The C bit of `FLAGS`.
const FLAG_C: u8 = 0x40;

/// A view of a Geneve header. After `new_checked` the whole option list lies inside the
/// buffer, so `payload()` cannot fail.
#[derive(Debug, Clone)]
pub struct GenevePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GenevePacket<T> {
    /// Checks the base header, the version, that the options fit in the buffer and, when the
    /// C bit is set, that no option is critical or overruns the option list.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < GENEVE_HEADER_LEN {
            return Err(WireError::TruncatedTunnel(b.len()));
        }
        let version = b[VER_OPTLEN] >> 6;
        if version != 0 {
            return Err(WireError::GeneveVersion(version));
        }
        let opt_len = usize::from(b[VER_OPTLEN] & 0x3f) * 4;
        if GENEVE_HEADER_LEN + opt_len > b.len() {
            return Err(WireError::GeneveOptionsPastEnd { options: opt_len, len: b.len() });
        }
        if b[FLAGS] & FLAG_C != 0 {
            let mut opts = &b[GENEVE_HEADER_LEN..GENEVE_HEADER_LEN + opt_len];
            while !opts.is_empty() {
                if opts.len() < GENEVE_OPTION_HEADER_LEN {
                    return Err(WireError::GeneveBadOption);
                }
                let class = u16::from_be_bytes([opts[0], opts[1]]);
                let kind = opts[2];
                let len = GENEVE_OPTION_HEADER_LEN + usize::from(opts[3] & 0x1f) * 4;
                if len > opts.len() {
                    return Err(WireError::GeneveBadOption);
                }
                if kind & GENEVE_OPTION_CRITICAL != 0 {
                    return Err(WireError::GeneveCriticalOption { class, kind });
                }
                opts = &opts[len..];
            }
        }
        Ok(GenevePacket { buffer })
    }

    /// Length of the options in bytes.
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[VER_OPTLEN] & 0x3f) * 4
    }

    /// The O bit: a control message, not to be forwarded.
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[FLAGS] & FLAG_O != 0
    }

    /// The C bit: critical options are present.
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[FLAGS] & FLAG_C != 0
    }

    pub fn protocol(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[PROTO.start], b[PROTO.start + 1]])
    }

    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[VNI.start], b[VNI.start + 1], b[VNI.start + 2]])
    }

    /// Header plus options: where the payload starts.
    pub fn header_len(&self) -> usize {
        GENEVE_HEADER_LEN + self.options_len()
    }

    /// What follows the options.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

/// A Geneve header to write (without options: switchyard sends none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveRepr {
    pub vni: u32,
    pub protocol: u16,
    pub oam: bool,
}

impl GeneveRepr {
    /// An Ethernet payload in `vni`.
    pub fn ethernet(vni: u32) -> GeneveRepr {
        GeneveRepr { vni, protocol: GENEVE_PROTO_ETHERNET, oam: false }
    }

    pub fn parse<T: AsRef<[u8]>>(p: &GenevePacket<T>) -> GeneveRepr {
        GeneveRepr { vni: p.vni(), protocol: p.protocol(), oam: p.oam() }
    }

    /// Writes the base header into `out[..GENEVE_HEADER_LEN]` (version 0, no options,
    /// reserved fields zero); `out` must be at least that long.
    pub fn emit(&self, out: &mut [u8]) {
        // One 64-bit word: version/length 0, flags, protocol, VNI, reserved 0.
        let flags = if self.oam { FLAG_O } else { 0 };
        let w =
            u64::from(flags) << 48 | u64::from(self.protocol) << 32 | u64::from(self.vni & 0xff_ffff) << 8;
        out[..GENEVE_HEADER_LEN].copy_from_slice(&w.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_options(flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(opts.len() % 4, 0);
        let mut v = vec![(opts.len() / 4) as u8, flags, 0x65, 0x58, 0, 0x13, 0x89, 0];
        v.extend_from_slice(opts);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn round_trip() {
        let mut h = [0u8; GENEVE_HEADER_LEN];
        GeneveRepr::ethernet(5001).emit(&mut h);
        assert_eq!(h, [0, 0, 0x65, 0x58, 0, 0x13, 0x89, 0]);
        let p = GenevePacket::new_checked(&h[..]).unwrap();
        assert_eq!(GeneveRepr::parse(&p), GeneveRepr::ethernet(5001));
        assert!(p.payload().is_empty());
        for n in 0..GENEVE_HEADER_LEN {
            assert_eq!(GenevePacket::new_checked(&h[..n]).unwrap_err(), WireError::TruncatedTunnel(n));
        }
    }

    #[test]
    fn options_are_skipped_and_checked() {
        // Two non-critical options: class 0x0102 type 3 with 4 data bytes, then one with none.
        let opts = [1, 2, 3, 1, 0xaa, 0xbb, 0xcc, 0xdd, 0xff, 0xff, 0x01, 0];
        for flags in [0, FLAG_C] {
            let v = with_options(flags, &opts, b"inner");
            let p = GenevePacket::new_checked(&v[..]).unwrap();
            assert_eq!((p.vni(), p.header_len(), p.payload()), (5001, 20, &b"inner"[..]));
        }
        // Reserved bits and fields set are ignored.
        let mut r = with_options(0x3f, &opts, b"x");
        r[7] = 0xff;
        assert_eq!(GenevePacket::new_checked(&r[..]).unwrap().payload(), b"x");
        // Opt Len past the end of the packet.
        let mut past = with_options(0, &opts, b"");
        past[0] = 4;
        assert_eq!(
            GenevePacket::new_checked(&past[..]).unwrap_err(),
            WireError::GeneveOptionsPastEnd { options: 16, len: 20 }
        );
        // With C: an option whose own length overruns the list, and a critical option.
        let over = [1, 2, 3, 2, 0xaa, 0xbb, 0xcc, 0xdd];
        assert_eq!(
            GenevePacket::new_checked(&with_options(FLAG_C, &over, b"")[..]).unwrap_err(),
            WireError::GeneveBadOption
        );
        let crit = [1, 2, 0x83, 0];
        assert_eq!(
            GenevePacket::new_checked(&with_options(FLAG_C, &crit, b"")[..]).unwrap_err(),
            WireError::GeneveCriticalOption { class: 0x0102, kind: 0x83 }
        );
        let mut v1 = with_options(0, &[], b"");
        v1[0] |= 0x40;
        assert_eq!(GenevePacket::new_checked(&v1[..]).unwrap_err(), WireError::GeneveVersion(1));
    }
}
