//! switchyard's OS and guest ports: the backends that move frames between the dataplane's
//! buffers and the outside world (AF_PACKET and TAP sockets, vhost-user guest memory, DPDK
//! ethdevs), and the factory that opens one from a port's configuration.
//!
//! Each backend implements the dataplane's port interface ([`switchyard_dataplane::port`]);
//! the dataplane itself needs no raw sockets, ioctls or guest memory. DPDK ports are built
//! only with the `dpdk` feature.
#![deny(unsafe_code)]

// The modules allowed `unsafe` (each block with a SAFETY comment): they call the kernel's
// socket, ring and ioctl interfaces, read and write guest memory, or call DPDK.
#[allow(unsafe_code)]
pub mod afpacket;
#[allow(unsafe_code)]
pub mod afxdp;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
pub mod factory;
#[allow(unsafe_code)]
mod netdev;
#[allow(unsafe_code)]
pub mod tap;
#[allow(unsafe_code)]
pub mod udp_tunnel;
pub mod uplink_tunnel;
pub mod vhost;
