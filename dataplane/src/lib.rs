//! switchyard's dataplane: packet buffers, wire formats, the port interface (with the
//! in-memory ring and pcap ports), the MAC table and the L2 pipeline. It needs no raw sockets,
//! ioctls or guest memory: the OS and guest ports live in the `switchyard-ports` crate.
#![deny(unsafe_code)]

// The modules allowed `unsafe` (each block with a SAFETY comment): the buffer pool's memory,
// the TSC read and the MAC table's prefetch.
pub mod backend;
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
pub mod tunnel;
pub mod underlay;
pub mod vlan;
pub mod wire;
pub mod worker;

pub use backend::Backend;
pub use buffer::{PacketBuf, Pool, PoolCache};
pub use config::Config;
pub use fdb::MacTable;
pub use switch::{DropReason, PortId, SwitchConfig};
