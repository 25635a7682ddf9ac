//! Wire formats: the header constants and fields the pipeline reads, and, written the way
//! smoltcp writes them, zero-copy views (`XxxPacket<T>`) over a byte buffer with a plain
//! `XxxRepr` for building frames.
//!
//! The promise every view in this module keeps: once `new_checked` has returned `Ok`, no
//! accessor panics, whatever the bytes say. Checks happen once, up front; accessors then index
//! within the checked length. Malformed input is an [`WireError`], never a panic.

pub mod arp;
pub mod ethernet;
pub mod geneve;
pub mod ip;
pub mod mac;
pub mod offload;
pub mod outer;
pub mod tcp_merge;
pub mod vxlan;

pub use arp::{ArpPacket, ArpRepr};
pub use ethernet::{
    inner_ethertype, EtherType, VlanTci, ETH_DST_OFFSET, ETH_HEADER_LEN, ETH_SRC_OFFSET, ETH_TYPE_OFFSET,
    ETH_VLAN_HEADER_LEN, MAC_ADDRS_LEN, VLAN_TAG_LEN, VLAN_TCI_OFFSET,
};
pub use geneve::{GenevePacket, GeneveRepr};
pub use mac::MacAddr;
pub use vxlan::{VxlanPacket, VxlanRepr};

/// Why bytes are not a valid header of some format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("ARP packet cut short ({0} bytes)")]
    TruncatedArp(usize),
    #[error("ARP with hardware address length {0}, not 6")]
    ArpNotEthernet(u8),
    #[error("tunnel header cut short ({0} bytes)")]
    TruncatedTunnel(usize),
    #[error("VXLAN header without the I flag (no valid VNI)")]
    VxlanNoVni,
    #[error("Geneve version {0}, not 0")]
    GeneveVersion(u8),
    #[error("Geneve options of {options} bytes past the end of a {len}-byte packet")]
    GeneveOptionsPastEnd { options: usize, len: usize },
    #[error("Geneve option overruns the option list")]
    GeneveBadOption,
    #[error("outer headers cut short ({0} bytes)")]
    TruncatedOuter(usize),
    #[error("outer IP header invalid (version, header length, or length past the frame)")]
    BadOuterIp,
    #[error("outer UDP length invalid")]
    BadOuterUdp,
    #[error("outer IPv4 header or UDP checksum wrong (or a zero UDP checksum over IPv6)")]
    OuterChecksum,
    #[error("outer IP packet is a fragment")]
    OuterFragment,
    #[error("not IPv4/IPv6 with UDP")]
    NotUdp,
    #[error("Geneve critical option class {class:#06x} type {kind:#04x} not understood")]
    GeneveCriticalOption { class: u16, kind: u8 },
}
