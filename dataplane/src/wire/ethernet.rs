//! Ethernet II frames and 802.1Q tags.

use super::{MacAddr, WireError};

/// EtherType values switchyard cares about.
pub struct EtherType;

impl EtherType {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const RARP: u16 = 0x8035;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

pub const ETH_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;

/// An 802.1Q Tag Control Information field: PCP (3 bits), DEI (1 bit), VID (12 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTci(pub u16);

impl VlanTci {
    #[inline]
    pub fn new(pcp: u8, dei: bool, vid: u16) -> VlanTci {
        VlanTci((u16::from(pcp & 7) << 13) | (u16::from(dei) << 12) | (vid & 0x0fff))
    }
    #[inline]
    pub fn vid(self) -> u16 {
        self.0 & 0x0fff
    }
    #[inline]
    pub fn pcp(self) -> u8 {
        (self.0 >> 13) as u8
    }
    #[inline]
    pub fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }
}

/// A read/write view of an Ethernet II frame, optionally 802.1Q-tagged.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const TCI: Range<usize> = 14..16;
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps without checking; accessors may panic on a short buffer. Prefer `new_checked`.
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps after checking that the Ethernet header, and the 802.1Q tag when the EtherType
    /// says there is one, are all there.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let len = buffer.as_ref().len();
        if len < ETH_HEADER_LEN {
            return Err(WireError::Runt(len));
        }
        let f = EthernetFrame { buffer };
        if f.ethertype() == EtherType::VLAN && len < ETH_HEADER_LEN + VLAN_TAG_LEN {
            return Err(WireError::TruncatedVlanTag(len));
        }
        Ok(f)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DST])
    }

    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SRC])
    }

    /// The outer EtherType (0x8100 for a tagged frame).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The 802.1Q tag, when the outer EtherType is 0x8100.
    #[inline]
    pub fn vlan_tci(&self) -> Option<VlanTci> {
        if self.ethertype() == EtherType::VLAN {
            let b = &self.buffer.as_ref()[field::TCI];
            Some(VlanTci(u16::from_be_bytes([b[0], b[1]])))
        } else {
            None
        }
    }

    /// The EtherType of the payload: after the tag when there is one.
    #[inline]
    pub fn inner_ethertype(&self) -> u16 {
        if self.ethertype() == EtherType::VLAN {
            let b = &self.buffer.as_ref()[field::INNER_ETHERTYPE];
            u16::from_be_bytes([b[0], b[1]])
        } else {
            self.ethertype()
        }
    }

    /// Offset of the payload (14, or 18 behind a tag).
    #[inline]
    pub fn payload_offset(&self) -> usize {
        if self.ethertype() == EtherType::VLAN {
            ETH_HEADER_LEN + VLAN_TAG_LEN
        } else {
            ETH_HEADER_LEN
        }
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_offset()..]
    }

    /// The header summary the pipeline works from.
    #[inline]
    pub fn header(&self) -> L2Header {
        L2Header { dst: self.dst(), src: self.src(), tci: self.vlan_tci(), ethertype: self.inner_ethertype() }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&m.0);
    }
    /// Rewrites the TCI of a tagged frame; does nothing to an untagged one.
    pub fn set_vlan_tci(&mut self, tci: VlanTci) {
        if self.ethertype() == EtherType::VLAN {
            self.buffer.as_mut()[field::TCI].copy_from_slice(&tci.0.to_be_bytes());
        }
    }
}

/// What the pipeline needs from the L2 header, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The 802.1Q tag, when present.
    pub tci: Option<VlanTci>,
    /// The payload's EtherType (inside the tag when there is one).
    pub ethertype: u16,
}

/// A plain description of an Ethernet header, for building frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub tci: Option<VlanTci>,
    pub ethertype: u16,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(f: &EthernetFrame<T>) -> EthernetRepr {
        let h = f.header();
        EthernetRepr { dst: h.dst, src: h.src, tci: h.tci, ethertype: h.ethertype }
    }

    pub fn header_len(&self) -> usize {
        if self.tci.is_some() {
            ETH_HEADER_LEN + VLAN_TAG_LEN
        } else {
            ETH_HEADER_LEN
        }
    }

    /// Appends the header to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dst.0);
        out.extend_from_slice(&self.src.0);
        if let Some(tci) = self.tci {
            out.extend_from_slice(&EtherType::VLAN.to_be_bytes());
            out.extend_from_slice(&tci.0.to_be_bytes());
        }
        out.extend_from_slice(&self.ethertype.to_be_bytes());
    }

    /// A whole frame: header, payload, then zero padding up to `min_len` bytes.
    pub fn frame(&self, payload: &[u8], min_len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.header_len() + payload.len());
        self.emit(&mut v);
        v.extend_from_slice(payload);
        if v.len() < min_len {
            v.resize(min_len, 0);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_frames_are_errors() {
        assert_eq!(EthernetFrame::new_checked(&[0u8; 13][..]).unwrap_err(), WireError::Runt(13));
        let mut f = [0u8; 16];
        f[12] = 0x81;
        assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap_err(), WireError::TruncatedVlanTag(16));
    }

    #[test]
    fn tagged_round_trip() {
        let r = EthernetRepr {
            dst: MacAddr::BROADCAST,
            src: MacAddr([2, 0, 0, 0, 0, 1]),
            tci: Some(VlanTci::new(5, false, 100)),
            ethertype: EtherType::ARP,
        };
        let bytes = r.frame(&[1, 2, 3], 60);
        assert_eq!(bytes.len(), 60);
        let f = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&f), r);
        assert_eq!(f.vlan_tci().unwrap().pcp(), 5);
        assert_eq!(f.vlan_tci().unwrap().vid(), 100);
        assert_eq!(&f.payload()[..3], &[1, 2, 3]);
    }
}
