//! Opens a port backend from its configuration (`type` and the type's options, checked and
//! typed as a [`Backend`]), the one place that maps backends to the ports that implement them.

use crate::afpacket::AfPacketPort;
use crate::tap::TapPort;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use switchyard_dataplane::backend::{Backend, TunnelBackend};
use switchyard_dataplane::config::PortConfig;
use switchyard_dataplane::port::pcap::{PcapPort, TxClock};
use switchyard_dataplane::port::ring::{RingPeer, RingPort};
use switchyard_dataplane::port::{PortBackend, PortError};

/// What opening a port needs beyond its own configuration.
#[derive(Debug, Clone, Default)]
pub struct PortContext {
    /// Workers that will poll the port (TX and, where the device has them, RX queues).
    pub workers: u16,
    /// Mbufs in the process-wide DPDK pool (made when the first DPDK port opens); 0: sized
    /// for the first port's rings. net_pcap's `infinite_rx` keeps its whole capture in mbufs.
    pub dpdk_mbufs: u32,
    /// EAL options for the first DPDK port (EAL starts once per process).
    #[cfg(feature = "dpdk")]
    pub eal: switchyard_bindings::EalOptions,
}

/// Depth of an in-memory ring port's queues.
pub const RING_DEPTH: usize = 1024;

fn ring_registry() -> &'static Mutex<HashMap<String, RingPeer>> {
    static R: OnceLock<Mutex<HashMap<String, RingPeer>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The far end of the ring port created under `ring` (the ring's name, by default the port's),
/// for a test or an in-process peer to inject and collect frames.
pub fn ring_peer(ring: &str) -> Option<RingPeer> {
    ring_registry().lock().unwrap_or_else(|e| e.into_inner()).get(ring).cloned()
}

/// Frees what the ring `ring`'s far end has not taken (the frames the switch sent it): called
/// once the workers stopped, so that no buffer outlives its pool in a queue nobody reads (a
/// pool dropped with buffers out leaks its memory, and says so). Returns how many it freed.
pub fn drain_ring(ring: &str) -> usize {
    let Some(peer) = ring_peer(ring) else { return 0 };
    let mut n = 0;
    while peer.collect().is_some() {
        n += 1;
    }
    n
}

/// Opens the backend a port's configuration describes. A port without `type` is a ring.
pub fn open_port(cfg: &PortConfig, ctx: &PortContext) -> Result<Arc<dyn PortBackend>, PortError> {
    let backend =
        cfg.backend().map_err(|e| PortError::Backend { port: cfg.name.clone(), msg: e.to_string() })?;
    open_backend(&cfg.name, &backend, ctx)
}

/// Opens `backend` as the port `name` (whose name is the default of a ring's or an
/// interface's name).
pub fn open_backend(
    name: &str,
    backend: &Backend,
    ctx: &PortContext,
) -> Result<Arc<dyn PortBackend>, PortError> {
    match backend {
        Backend::Ring { ring } => {
            let ring = ring.as_deref().unwrap_or(name);
            let (port, peer) = RingPort::new(name, RING_DEPTH);
            ring_registry().lock().unwrap_or_else(|e| e.into_inner()).insert(ring.to_string(), peer);
            Ok(Arc::new(port))
        }
        Backend::Pcap { rx, tx, infinite } => {
            let p = PcapPort::open(
                name,
                rx.as_deref().map(Path::new),
                tx.as_deref().map(Path::new),
                infinite.unwrap_or(false),
                TxClock::Wall,
            )?;
            Ok(Arc::new(p))
        }
        Backend::Afpacket { iface, rx_mode } => {
            use crate::afpacket::{AfPacketOptions, AfPacketRxMode};
            let opts = match rx_mode.unwrap_or_default() {
                AfPacketRxMode::Ring => AfPacketOptions::default(),
                AfPacketRxMode::Recvmmsg => AfPacketOptions::light(),
            };
            Ok(Arc::new(AfPacketPort::open(name, iface.as_deref().unwrap_or(name), opts)?))
        }
        Backend::Afxdp { iface, queues } => Ok(Arc::new(crate::afxdp::AfXdpPort::open(
            name,
            iface.as_deref().unwrap_or(name),
            queues.unwrap_or(switchyard_dataplane::backend::AFXDP_DEFAULT_QUEUES),
        )?)),
        Backend::Tap { iface } => {
            Ok(Arc::new(TapPort::open_default(name, iface.as_deref().unwrap_or(name))?))
        }
        Backend::Vhostuser { socket, mode, socket_mode, queues, offloads } => {
            use crate::vhost::{VhostOptions, VhostUserPort};
            let opts = VhostOptions {
                mode: mode.unwrap_or_default(),
                offloads: offloads.unwrap_or(false),
                queues: queues.unwrap_or(switchyard_dataplane::backend::VHOST_DEFAULT_QUEUE_PAIRS),
                socket_mode: socket_mode.map(|m| m.bits()),
                ..Default::default()
            };
            Ok(Arc::new(VhostUserPort::open(name, Path::new(socket), opts)?))
        }
        Backend::Dpdk { devargs, queues } => open_dpdk(name, devargs, *queues, ctx),
        Backend::Tunnel(t) => open_tunnel(name, t, ctx),
    }
}

fn open_tunnel(name: &str, t: &TunnelBackend, ctx: &PortContext) -> Result<Arc<dyn PortBackend>, PortError> {
    use crate::udp_tunnel::{TunnelOptions, UdpTunnelPort};
    let opts = TunnelOptions::from_backend(t);
    match t.underlay.as_deref() {
        None | Some("kernel") => Ok(Arc::new(UdpTunnelPort::open(name, &opts)?)),
        Some(spec) => open_uplink_tunnel(name, spec, &opts, &t.routes, ctx),
    }
}

/// The underlay MTU of a DPDK uplink (the ethdev default).
const DPDK_UPLINK_MTU: u32 = 1500;

/// A tunnel port on the uplink `spec`: an interface name (AF_PACKET), or a port SPEC as
/// `pmd --port` takes them, `afpacket:IFACE`, `afxdp:IFACE[,queues=N]` or `dpdk:DEVARGS`. An
/// AF_PACKET or AF_XDP uplink is a kernel interface: its MAC and MTU are the interface's, and
/// the kernel's routes through it give next hops.
fn open_uplink_tunnel(
    name: &str,
    spec: &str,
    opts: &crate::udp_tunnel::TunnelOptions,
    routes: &[switchyard_dataplane::config::UnderlayRoute],
    ctx: &PortContext,
) -> Result<Arc<dyn PortBackend>, PortError> {
    use crate::uplink_tunnel::{NextHops, OpenedUplink, UplinkTunnelPort};
    use switchyard_dataplane::backend::uplink_key;
    use switchyard_dataplane::wire::MacAddr;
    let bad =
        |msg: String| PortError::Backend { port: name.into(), msg: format!("underlay {spec:?}: {msg}") };
    let backend = if spec.contains(':') {
        spec.parse::<Backend>().map_err(bad)?
    } else {
        Backend::Afpacket { iface: Some(spec.into()), rx_mode: None }
    };
    let uplink_name = format!("{name}-uplink");
    let mut hops = NextHops { routes: NextHops::routes_of(routes), kernel_iface: None };
    // The kernel interface of an AF_PACKET or AF_XDP uplink (its MAC, MTU and routes).
    let kernel_iface = match &backend {
        Backend::Afpacket { iface, .. } | Backend::Afxdp { iface, .. } => {
            Some(iface.as_deref().unwrap_or(spec).to_string())
        }
        _ => None,
    };
    hops.kernel_iface = kernel_iface.clone();
    let key = uplink_key(Some(spec)).unwrap_or_else(|| spec.to_string());
    // The first port on the uplink opens it; the others join it (one per VNI).
    let open = || -> Result<OpenedUplink, PortError> {
        Ok(match (&backend, kernel_iface.as_deref()) {
            (Backend::Afpacket { .. } | Backend::Afxdp { .. }, Some(iface)) => {
                if !Path::new(&format!("/sys/class/net/{iface}")).exists() {
                    return Err(bad(format!("no interface {iface:?} in this network namespace")));
                }
                let sys = |f: &str| {
                    std::fs::read_to_string(format!("/sys/class/net/{iface}/{f}"))
                        .map(|s| s.trim().to_string())
                        .map_err(|e| bad(format!("{iface}: {f}: {e}")))
                };
                let mac =
                    sys("address")?.parse::<MacAddr>().map_err(|e| bad(format!("{iface}: address: {e}")))?;
                let mtu = sys("mtu")?.parse::<u32>().map_err(|e| bad(format!("{iface}: mtu: {e}")))?;
                let port: Arc<dyn PortBackend> = match &backend {
                    // Its RX finishes the inner checksums a veth peer's kernel tunnel left
                    // partial (an AF_PACKET uplink has the virtio-net header for that).
                    Backend::Afxdp { queues, .. } => Arc::new(crate::afxdp::AfXdpPort::open_uplink(
                        &uplink_name,
                        iface,
                        queues.unwrap_or(switchyard_dataplane::backend::AFXDP_DEFAULT_QUEUES),
                    )?),
                    _ => open_backend(&uplink_name, &backend, ctx)?,
                };
                (port, mac, mtu)
            }
            #[cfg(feature = "dpdk")]
            (Backend::Dpdk { devargs, queues }, _) => {
                let port = dpdk_port(&uplink_name, devargs, *queues, ctx)?;
                let mac = MacAddr(port.mac_addr()?);
                (Arc::new(port), mac, DPDK_UPLINK_MTU)
            }
            (other, _) => {
                return Err(PortError::Unsupported {
                    port: name.into(),
                    kind: format!("tunnel uplink {}", other.port_type().name()),
                    hint: format!(
                        "an uplink is an AF_PACKET or AF_XDP interface or a DPDK port (mtu \
                         {DPDK_UPLINK_MTU})"
                    ),
                })
            }
        })
    };
    Ok(Arc::new(UplinkTunnelPort::join(name, opts, &key, hops, open)?))
}

/// Closes what workers dropped last and left to the control thread (a tunnel uplink whose
/// last port went on a worker: a device's close may wait on another device's probe).
pub fn close_retired() {
    crate::uplink_tunnel::close_retired();
}

/// EAL's options for this context: room for the requested mbuf pool when the memory size is
/// left to us (EAL's default under `--no-huge` is 256 MiB).
#[cfg(feature = "dpdk")]
fn eal_options(ctx: &PortContext) -> switchyard_bindings::EalOptions {
    let mut o = ctx.eal.clone();
    if o.memory_mb.is_none() && ctx.dpdk_mbufs > 0 {
        let pool_mb = (u64::from(ctx.dpdk_mbufs) * 2560).div_ceil(1 << 20);
        o.memory_mb = Some(256 + pool_mb as u32);
    }
    o
}

#[cfg(feature = "dpdk")]
fn open_dpdk(
    name: &str,
    devargs: &str,
    queues: Option<u16>,
    ctx: &PortContext,
) -> Result<Arc<dyn PortBackend>, PortError> {
    Ok(Arc::new(dpdk_port(name, devargs, queues, ctx)?))
}

#[cfg(feature = "dpdk")]
fn dpdk_port(
    name: &str,
    devargs: &str,
    queues: Option<u16>,
    ctx: &PortContext,
) -> Result<crate::dpdk::DpdkPort, PortError> {
    use crate::dpdk::{DpdkPort, DpdkPortConfig};
    let eal = switchyard_bindings::Eal::init(eal_options(ctx))
        .map_err(|e| PortError::Backend { port: name.into(), msg: format!("EAL: {e}") })?;
    let workers = ctx.workers.max(1);
    let pc = DpdkPortConfig {
        rx_queues: queues.unwrap_or(workers),
        tx_queues: workers,
        pool_size: ctx.dpdk_mbufs,
        ..Default::default()
    };
    DpdkPort::open(eal, name, devargs, &pc)
}

#[cfg(not(feature = "dpdk"))]
fn open_dpdk(
    name: &str,
    _devargs: &str,
    _queues: Option<u16>,
    _ctx: &PortContext,
) -> Result<Arc<dyn PortBackend>, PortError> {
    Err(PortError::Unsupported {
        port: name.into(),
        kind: "dpdk".into(),
        hint: "build with `--features dpdk` (needs Debian's libdpdk-dev)".into(),
    })
}

/// A worker hook that registers each worker thread with DPDK's EAL once EAL is up, so that
/// the mempool's per-lcore cache serves the thread's allocations and frees (without one,
/// every mbuf a driver frees is a locked enqueue on the pool's ring). EAL comes up with the
/// first DPDK port, which `run` opens after its workers started: the engine calls the hook
/// again with every new plan, and a thread already registered is left as it is (each
/// registration would take another lcore id). The id goes back to EAL when the thread ends
/// (DPDK has 128; an engine stopped and started again, as `pmd -i` does, would use them up).
/// Does nothing without EAL.
pub fn worker_hook() -> switchyard_dataplane::worker::WorkerHook {
    Arc::new(|_idx| {
        #[cfg(feature = "dpdk")]
        if let Some(eal) = switchyard_bindings::Eal::get() {
            if switchyard_bindings::eal::lcore_id() != switchyard_bindings::eal::LCORE_ID_ANY {
                return;
            }
            /// Unregisters the thread it lives on when that thread ends.
            struct Registered(&'static switchyard_bindings::Eal);
            impl Drop for Registered {
                fn drop(&mut self) {
                    self.0.unregister_thread();
                }
            }
            thread_local!(static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            thread_local!(static REGISTERED: std::cell::RefCell<Option<Registered>> =
                const { std::cell::RefCell::new(None) });
            match eal.register_thread() {
                Ok(lcore) => {
                    REGISTERED.with(|r| *r.borrow_mut() = Some(Registered(eal)));
                    tracing::debug!(worker = _idx, lcore, "worker thread registered with EAL")
                }
                // Tried again with each plan, said once.
                Err(e) if !WARNED.replace(true) => {
                    tracing::warn!(worker = _idx, error = %e, "cannot register worker thread with EAL")
                }
                Err(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dataplane::tunnel::TunnelKind;

    /// An uplink underlay on an interface that does not exist is refused before anything
    /// opens, naming the port, the underlay and the interface, in every spelling of an
    /// interface uplink (no root needed: the check is the interface's sysfs directory).
    #[test]
    fn an_uplink_on_no_interface_is_refused_naming_port_and_interface() {
        for underlay in ["afxdp:sy-no-if0,queues=2", "afpacket:sy-no-if0", "sy-no-if0"] {
            let t = TunnelBackend {
                kind: TunnelKind::Vxlan,
                vni: 5001,
                local: "192.0.2.1".parse().unwrap(),
                dstport: None,
                underlay: Some(underlay.into()),
                flood: None,
                remote_macs: Vec::new(),
                learn: None,
                routes: Vec::new(),
            };
            let Err(e) = open_backend("tun0", &Backend::Tunnel(t), &PortContext::default()) else {
                panic!("{underlay:?} opened")
            };
            let PortError::Backend { port, msg } = &e else { panic!("{e:?}") };
            assert_eq!(port, "tun0");
            assert_eq!(
                msg,
                &format!("underlay {underlay:?}: no interface \"sy-no-if0\" in this network namespace"),
                "{e}"
            );
        }
    }
}
