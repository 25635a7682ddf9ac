//! Wire formats: the header constants and fields the pipeline reads, and, written the way
//! smoltcp writes them, zero-copy views (`XxxPacket<T>`) over a byte buffer with a plain
//! `XxxRepr` for building frames.
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
pub use ethernet::{
    EtherType, VlanTci, ETH_HEADER_LEN, ETH_VLAN_HEADER_LEN, MAC_ADDRS_LEN, VLAN_TAG_LEN, VLAN_TCI_OFFSET,
};
pub use mac::MacAddr;

/// Why bytes are not a valid header of some format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("ARP packet cut short ({0} bytes)")]
    TruncatedArp(usize),
    #[error("ARP with hardware address length {0}, not 6")]
    ArpNotEthernet(u8),
}
