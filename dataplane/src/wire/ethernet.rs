//! Ethernet II and 802.1Q constants and the tag's fields. The pipeline reads the header itself
//! (`pipeline::classify`), with these offsets; `dataplane/tests/classify_oracle.rs` checks its
//! reads against etherparse.

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

/// The two MAC addresses (destination, then source) that start every frame; the EtherType,
/// or an 802.1Q tag's TPID, follows them.
pub const MAC_ADDRS_LEN: usize = 12;
/// Offsets in an Ethernet header: destination MAC, source MAC, EtherType (or TPID).
pub const ETH_DST_OFFSET: usize = 0;
pub const ETH_SRC_OFFSET: usize = 6;
pub const ETH_TYPE_OFFSET: usize = MAC_ADDRS_LEN;
pub const ETH_HEADER_LEN: usize = MAC_ADDRS_LEN + 2;
pub const VLAN_TAG_LEN: usize = 4;
/// An Ethernet header with one 802.1Q tag.
pub const ETH_VLAN_HEADER_LEN: usize = ETH_HEADER_LEN + VLAN_TAG_LEN;
/// Where a tagged frame's TCI is (after the addresses and the TPID).
pub const VLAN_TCI_OFFSET: usize = MAC_ADDRS_LEN + 2;

/// What frame `d` carries behind its VLAN tags: its EtherType and where its payload starts,
/// given `off`, where the payload behind the tag the port read starts (the EtherType is the two
/// bytes before it). Tags stacked inside that one (802.1Q or 802.1ad: a priority tag over a
/// tag, an 802.1ad tag on an untagged frame) are skipped, every one of them: a Linux guest
/// strips priority tags (VID 0), however many, and reads what is inside as untagged, so a
/// filter that stopped at the first inner tag would let any packet past it. `None`: the frame
/// ends first. Bounded by the frame's length; never panics.
#[inline]
pub fn inner_ethertype(d: &[u8], mut off: usize) -> Option<(u16, usize)> {
    loop {
        let et = u16::from_be_bytes(*d.get(off.checked_sub(2)?..off)?.first_chunk::<2>()?);
        if et != EtherType::VLAN && et != EtherType::QINQ {
            return Some((et, off));
        }
        off += VLAN_TAG_LEN;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tci_fields_round_trip() {
        for (pcp, dei, vid) in [(0, false, 0), (5, false, 100), (7, true, 4095), (3, true, 1)] {
            let t = VlanTci::new(pcp, dei, vid);
            assert_eq!((t.pcp(), t.dei(), t.vid()), (pcp, dei, vid));
        }
        assert_eq!(VlanTci::new(7, true, 0x1fff).0, 0xffff, "VID masked to 12 bits");
    }
}
