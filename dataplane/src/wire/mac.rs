//! The 48-bit IEEE MAC address.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address. A plain value: comparing, hashing and formatting never fail.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (want six hex octets like 02:00:00:00:00:01): {0:?}")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Reads a MAC from the first six bytes of `b`. The caller has checked the length.
    #[inline]
    pub fn from_bytes(b: &[u8]) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        MacAddr(m)
    }

    /// Group (multicast or broadcast) address: the I/G bit of the first octet.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    #[inline]
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }

    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// 01:80:C2:00:00:00 - 01:80:C2:00:00:0F, the IEEE 802.1D reserved range that a bridge
    /// must not forward (STP, LACP, 802.1X, LLDP, ...).
    #[inline]
    pub fn is_ieee_reserved(&self) -> bool {
        Self::u64_is_ieee_reserved(self.to_u64())
    }

    /// The group (I/G) bit of an address held as [`MacAddr::to_u64`] returns it.
    pub const GROUP_BIT_U64: u64 = 1 << 40;

    /// [`MacAddr::is_ieee_reserved`] for an address held as [`MacAddr::to_u64`] returns it (the
    /// forwarding path keeps addresses that way: one compare instead of six).
    #[inline]
    pub fn u64_is_ieee_reserved(v: u64) -> bool {
        v & !0xf == 0x0180_c200_0000
    }

    /// The address as the low 48 bits of a u64 (big-endian octet order).
    #[inline]
    pub fn to_u64(&self) -> u64 {
        let b = self.0;
        (u64::from(b[0]) << 40)
            | (u64::from(b[1]) << 32)
            | (u64::from(b[2]) << 24)
            | (u64::from(b[3]) << 16)
            | (u64::from(b[4]) << 8)
            | u64::from(b[5])
    }

    #[inline]
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let m: MacAddr = "02:AB:cd:00:00:01".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xab, 0xcd, 0, 0, 1]);
        assert_eq!(m.to_string(), "02:ab:cd:00:00:01");
        assert_eq!("02-ab-cd-00-00-01".parse::<MacAddr>().unwrap(), m);
        for bad in ["", "02:ab", "02:ab:cd:00:00:01:02", "0g:00:00:00:00:00", "2:ab:cd:0:0:1"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn classes() {
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e]).is_ieee_reserved());
        assert!(!MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x10]).is_ieee_reserved());
        assert!(MacAddr::ZERO.is_zero());
        let m = MacAddr([1, 2, 3, 4, 5, 6]);
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
    }
}
