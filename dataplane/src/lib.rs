//! switchyard's dataplane: packet buffers, wire formats, ports, the MAC table and the L2
//! pipeline. It compiles and is tested without DPDK; DPDK ports live behind the `dpdk`
//! feature.
#![deny(unsafe_code)]

// The modules allowed `unsafe` (each block with a SAFETY comment): the buffer pool's memory,
// the TSC read, the MAC table's prefetch, and the ports below that touch raw sockets, rings,
// mbufs and guest memory.
#[allow(unsafe_code)]
pub mod buffer;
pub mod config;
pub mod conntrack;
#[allow(unsafe_code)]
pub mod cpu;
#[allow(unsafe_code)]
pub mod fdb;
pub mod filter;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod switch;
pub mod vlan;
pub mod wire;
pub mod worker;

pub use buffer::{PacketBuf, Pool, PoolCache};
pub use config::Config;
pub use fdb::MacTable;
pub use switch::{DropReason, PortId, SwitchConfig};
