//! switchyard's dataplane: packet buffers, wire formats, ports, the MAC table and the L2
//! pipeline. It compiles and is tested without DPDK; DPDK ports live behind the `dpdk`
//! feature.

pub mod buffer;
pub mod config;
pub mod cpu;
pub mod fdb;
pub mod pipeline;
pub mod port;
pub mod switch;
pub mod vlan;
pub mod wire;
pub mod worker;

pub use buffer::{PacketBuf, Pool, PoolCache};
pub use config::Config;
pub use fdb::MacTable;
pub use switch::{DropReason, PortId, SwitchConfig};
