//! Wire formats, written the way smoltcp writes them: a zero-copy view (`XxxPacket<T>`) over a
//! byte buffer, plus a plain `XxxRepr` for building frames.
//!
//! The promise every view in this module keeps: once `new_checked` has returned `Ok`, no
//! accessor panics, whatever the bytes say. Checks happen once, up front; accessors then index
//! within the checked length. Malformed input is an [`WireError`], never a panic.

pub mod arp;
pub mod ethernet;
pub mod ip;
pub mod mac;
pub mod offload;

pub use arp::{ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, L2Header, VlanTci};
pub use ip::{Ipv4Packet, Ipv6Packet};
pub use mac::MacAddr;

/// Why bytes are not a valid header of some format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame shorter than an Ethernet header ({0} bytes)")]
    Runt(usize),
    #[error("802.1Q tag cut short ({0} bytes)")]
    TruncatedVlanTag(usize),
    #[error("ARP packet cut short ({0} bytes)")]
    TruncatedArp(usize),
    #[error("ARP with hardware address length {0}, not 6")]
    ArpNotEthernet(u8),
    #[error("IPv4 header cut short or malformed ({0} bytes)")]
    TruncatedIpv4(usize),
    #[error("not IPv{0}")]
    WrongIpVersion(u8),
    #[error("IPv6 header cut short ({0} bytes)")]
    TruncatedIpv6(usize),
}
