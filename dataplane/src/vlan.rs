//! VLAN policy of a port: the four Open vSwitch VLAN modes (ovs-vswitchd.conf.db(5), Port
//! table, `vlan_mode`, `tag`, `trunks`), compiled so that ingress and egress checks are a
//! compare (an access port's one VLAN) or a shift and a mask (the other modes' sets, a bitmap
//! held in a box: 512 bytes that 20,000 access ports need not carry each).

use crate::config::VlanModeName;
use crate::wire::VlanTci;

/// A set of VLAN IDs 0-4094 (4095 is reserved and never a member).
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl std::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            return write!(f, "all");
        }
        f.debug_list().entries((0..4095u16).filter(|v| self.contains(*v))).finish()
    }
}

impl VlanSet {
    pub fn empty() -> VlanSet {
        VlanSet([0; 64])
    }

    pub fn all() -> VlanSet {
        let mut s = VlanSet([u64::MAX; 64]);
        s.0[63] &= !(1 << 63); // VLAN 4095
        s
    }

    pub fn from_list(list: &[u16]) -> VlanSet {
        let mut s = VlanSet::empty();
        for v in list {
            s.insert(*v);
        }
        s
    }

    pub fn insert(&mut self, v: u16) {
        if v < 4095 {
            self.0[usize::from(v >> 6)] |= 1 << (v & 63);
        }
    }

    #[inline]
    pub fn contains(&self, v: u16) -> bool {
        v < 4095 && self.0[usize::from(v >> 6)] & (1 << (v & 63)) != 0
    }

    pub fn is_all(&self) -> bool {
        *self == VlanSet::all()
    }

    /// The VLANs in the set, ascending. Word by word: most words of a port's set are empty (an
    /// access port carries one VLAN), and compiling a switch iterates every port's set.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| {
                let mut bits = word;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let b = bits.trailing_zeros() as u16;
                    bits &= bits - 1;
                    Some(((w as u16) << 6) | b)
                })
            })
            .filter(|v| *v < 4095)
    }
}

/// The VLAN mode of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanMode {
    /// One VLAN, untagged on the wire.
    Access,
    /// Tagged VLANs from the trunk list; untagged frames are VLAN 0.
    Trunk,
    /// Untagged frames enter the native VLAN; it leaves tagged.
    NativeTagged,
    /// Untagged frames enter the native VLAN; it leaves untagged.
    NativeUntagged,
}

impl From<VlanModeName> for VlanMode {
    fn from(n: VlanModeName) -> VlanMode {
        match n {
            VlanModeName::Access => VlanMode::Access,
            VlanModeName::Trunk => VlanMode::Trunk,
            VlanModeName::NativeTagged => VlanMode::NativeTagged,
            VlanModeName::NativeUntagged => VlanMode::NativeUntagged,
        }
    }
}

/// How a port maps frames to VLANs and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPolicy {
    pub mode: VlanMode,
    /// Access VLAN or native VLAN (unused for trunks).
    pub tag: u16,
    /// Ingress: VLANs accepted tagged (trunk: also VLAN 0 for untagged frames).
    /// Egress: every VLAN the port carries, native VLAN included.
    /// `None` for an access port: it carries its `tag` alone.
    carried: Option<Box<VlanSet>>,
}

impl VlanPolicy {
    /// `trunks` empty or absent means every VLAN, as in OVS.
    pub fn new(mode: VlanMode, tag: u16, trunks: Option<&[u16]>) -> VlanPolicy {
        let list = match trunks {
            Some(t) if !t.is_empty() => VlanSet::from_list(t),
            _ => VlanSet::all(),
        };
        let carried = match mode {
            VlanMode::Access => None,
            VlanMode::Trunk => Some(Box::new(list)),
            VlanMode::NativeTagged | VlanMode::NativeUntagged => {
                let mut s = list;
                s.insert(tag);
                Some(Box::new(s))
            }
        };
        VlanPolicy { mode, tag, carried }
    }

    pub fn access(tag: u16) -> VlanPolicy {
        VlanPolicy::new(VlanMode::Access, tag, None)
    }

    pub fn trunk_all() -> VlanPolicy {
        VlanPolicy::new(VlanMode::Trunk, 0, None)
    }

    /// The VLAN a received frame belongs to, or `None` when the port does not accept it.
    /// `tci` is the frame's 802.1Q tag (a VID of 0 is a priority tag).
    #[inline]
    pub fn ingress(&self, tci: Option<VlanTci>) -> Option<u16> {
        let vid = tci.map_or(0, |t| t.vid());
        match self.mode {
            VlanMode::Access => (vid == 0).then_some(self.tag),
            VlanMode::Trunk => self.carries(vid).then_some(vid),
            VlanMode::NativeTagged | VlanMode::NativeUntagged => {
                if vid == 0 {
                    Some(self.tag)
                } else {
                    self.carries(vid).then_some(vid)
                }
            }
        }
    }

    /// Whether frames of VLAN `v` leave through this port.
    #[inline]
    pub fn carries(&self, v: u16) -> bool {
        match &self.carried {
            // As `VlanSet::from_list(&[tag])` would answer.
            None => v == self.tag && v < 4095,
            Some(s) => s.contains(v),
        }
    }

    /// Whether frames of VLAN `v` leave this port tagged.
    #[inline]
    pub fn egress_tagged(&self, v: u16) -> bool {
        match self.mode {
            VlanMode::Access => false,
            VlanMode::Trunk | VlanMode::NativeTagged => v != 0,
            VlanMode::NativeUntagged => v != 0 && v != self.tag,
        }
    }

    /// The VLANs the port carries, ascending, for installing static entries and for display.
    pub fn carried(&self) -> impl Iterator<Item = u16> + '_ {
        let access = (self.carried.is_none() && self.tag < 4095).then_some(self.tag);
        self.carried.iter().flat_map(|s| s.iter()).chain(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_iterates_its_vlans_in_order() {
        let by_contains = |s: &VlanSet| (0..4095u16).filter(|v| s.contains(*v)).collect::<Vec<_>>();
        let sets = [
            VlanSet::empty(),
            VlanSet::all(),
            VlanSet::from_list(&[0, 1, 63, 64, 65, 100, 4093, 4094]),
            VlanSet::from_list(&[4094]),
        ];
        for s in &sets {
            assert_eq!(s.iter().collect::<Vec<_>>(), by_contains(s));
        }
        assert_eq!(VlanSet::all().iter().count(), 4095);
        assert_eq!(VlanSet::from_list(&[7]).iter().collect::<Vec<_>>(), [7]);
    }

    /// An access port keeps no bitmap; every mode answers `carries` and `carried` as the
    /// bitmap of its VLANs (access: `{tag}`) would, for every VID, 4095 included.
    #[test]
    fn carried_vlans_are_the_sets_of_the_modes() {
        let trunks: &[u16] = &[1, 10, 4094];
        let cases = [
            (VlanMode::Access, 0, None, VlanSet::from_list(&[0])),
            (VlanMode::Access, 10, None, VlanSet::from_list(&[10])),
            (VlanMode::Access, 4094, None, VlanSet::from_list(&[4094])),
            (VlanMode::Access, 4095, None, VlanSet::empty()),
            (VlanMode::Trunk, 0, None, VlanSet::all()),
            (VlanMode::Trunk, 0, Some(trunks), VlanSet::from_list(trunks)),
            (VlanMode::NativeTagged, 20, Some(trunks), VlanSet::from_list(&[1, 10, 20, 4094])),
            (VlanMode::NativeUntagged, 20, Some(trunks), VlanSet::from_list(&[1, 10, 20, 4094])),
        ];
        for (mode, tag, list, want) in cases {
            let p = VlanPolicy::new(mode, tag, list);
            assert_eq!(p.carried.is_none(), mode == VlanMode::Access);
            for v in 0..=4095u16 {
                assert_eq!(p.carries(v), want.contains(v), "{mode:?} {tag} carries {v}");
            }
            assert_eq!(p.carried().collect::<Vec<_>>(), want.iter().collect::<Vec<_>>(), "{mode:?} {tag}");
        }
    }

    fn t(vid: u16) -> Option<VlanTci> {
        Some(VlanTci::new(0, false, vid))
    }

    #[test]
    fn access() {
        let p = VlanPolicy::access(10);
        assert_eq!(p.ingress(None), Some(10));
        assert_eq!(p.ingress(t(0)), Some(10));
        assert_eq!(p.ingress(t(10)), None, "tagged frames are dropped, even with the port's VID");
        assert!(p.carries(10) && !p.carries(11) && !p.egress_tagged(10));
    }

    #[test]
    fn trunk() {
        let p = VlanPolicy::new(VlanMode::Trunk, 0, Some(&[10, 20]));
        assert_eq!(p.ingress(t(10)), Some(10));
        assert_eq!(p.ingress(t(30)), None);
        assert_eq!(p.ingress(None), None, "VLAN 0 not trunked");
        let all = VlanPolicy::trunk_all();
        assert_eq!(all.ingress(None), Some(0));
        assert_eq!(all.ingress(t(0)), Some(0));
        assert_eq!(all.ingress(t(4095)), None);
        assert!(all.egress_tagged(5) && !all.egress_tagged(0));
        let with0 = VlanPolicy::new(VlanMode::Trunk, 0, Some(&[0, 10]));
        assert_eq!(with0.ingress(None), Some(0));
    }

    #[test]
    fn native() {
        let p = VlanPolicy::new(VlanMode::NativeUntagged, 5, Some(&[7]));
        assert_eq!(p.ingress(None), Some(5));
        assert_eq!(p.ingress(t(5)), Some(5));
        assert_eq!(p.ingress(t(7)), Some(7));
        assert_eq!(p.ingress(t(8)), None);
        assert!(!p.egress_tagged(5) && p.egress_tagged(7));
        let q = VlanPolicy::new(VlanMode::NativeTagged, 5, Some(&[7]));
        assert!(q.egress_tagged(5) && q.carries(5) && !q.carries(0));
    }
}
