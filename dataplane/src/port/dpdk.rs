//! DPDK ethdev ports (`type: dpdk` with `devargs:`, `dpdk:DEVARGS` in `switchyard pmd`):
//! SR-IOV VFs bound to vfio-pci and every DPDK vdev (net_pcap, net_ring, net_null,
//! net_vhost, net_virtio_user, net_tap, net_af_packet), over `switchyard-bindings`.
//!
//! First version: frames are copied between DPDK mbufs and switchyard's [`PacketBuf`]s
//! (one memcpy of the frame each way). The device keeps its own mbuf pool.
//!
//! Queues: one RX queue per worker where the device has them (each RX queue is taken by one
//! handle); TX handles map onto the device's TX queues (`q % tx_queues`) and each TX queue is
//! serialised by an uncontended mutex, so any number of workers can transmit. The device is
//! stopped and closed when the port and every queue handle are gone, so no burst can race a
//! stop.

use super::{Burst, DropTally, PortBackend, PortError, RxQueue, TxQueue, MAX_BURST};
use crate::buffer::PoolCache;
use crate::switch::DropReason;
use std::mem::ManuallyDrop;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use switchyard_bindings::{mbuf::free_bulk, sys::rte_mbuf, Eal, EthDev, EthStats, Mbuf, Mempool};

/// How a DPDK port is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkPortConfig {
    /// RX queues wanted (one per worker); clamped to what the device has.
    pub rx_queues: u16,
    /// TX queues wanted (one per worker); clamped to what the device has.
    pub tx_queues: u16,
    /// Descriptors per RX queue (adjusted to the device's limits).
    pub rx_desc: u16,
    /// Descriptors per TX queue.
    pub tx_desc: u16,
    /// Mbufs in the port's pool; 0 = enough for every ring plus bursts in flight.
    pub pool_size: u32,
}

impl Default for DpdkPortConfig {
    fn default() -> Self {
        DpdkPortConfig { rx_queues: 1, tx_queues: 1, rx_desc: 1024, tx_desc: 1024, pool_size: 0 }
    }
}

struct Shared {
    name: String,
    dev: EthDev,
    pool: Arc<Mempool>,
    rx_taken: Vec<AtomicBool>,
    tx_locks: Vec<Mutex<()>>,
}

/// A DPDK ethdev port.
#[derive(Clone)]
pub struct DpdkPort {
    shared: Arc<Shared>,
}

fn backend(port: &str) -> impl Fn(switchyard_bindings::Error) -> PortError + '_ {
    move |e| PortError::Backend { port: port.to_string(), msg: e.to_string() }
}

static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

impl DpdkPort {
    /// Probes `devargs` (a PCI address such as `0000:3b:02.1`, or a vdev string such as
    /// `net_pcap0,rx_pcap=in.pcap,infinite_rx=1`), configures and starts it. EAL must be up
    /// ([`Eal::init`]); a PCI device must be in its allow list.
    pub fn open(eal: &Eal, name: &str, devargs: &str, cfg: &DpdkPortConfig) -> Result<DpdkPort, PortError> {
        let err = backend(name);
        let mut dev = EthDev::probe(eal, devargs).map_err(&err)?;
        let info = dev.info().map_err(&err)?;
        let nrx = cfg.rx_queues.clamp(1, info.max_rx_queues.max(1));
        let ntx = cfg.tx_queues.clamp(1, info.max_tx_queues.max(1));
        let size = if cfg.pool_size != 0 {
            cfg.pool_size
        } else {
            let rings = u32::from(nrx) * u32::from(cfg.rx_desc) + u32::from(ntx) * u32::from(cfg.tx_desc);
            // Rings, plus a burst in flight per queue, plus the per-lcore caches.
            (rings + (u32::from(nrx) + u32::from(ntx)) * MAX_BURST as u32 + 2048).max(4095)
        };
        let seq = POOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let pool_name = format!("sy_port{seq}");
        let pool =
            Arc::new(Mempool::new(eal, &pool_name, size, 256, Mempool::DEFAULT_DATA_ROOM).map_err(&err)?);
        dev.configure(nrx, ntx).map_err(&err)?;
        for q in 0..nrx {
            dev.setup_rx_queue(q, cfg.rx_desc, &pool).map_err(&err)?;
        }
        for q in 0..ntx {
            dev.setup_tx_queue(q, cfg.tx_desc).map_err(&err)?;
        }
        dev.promiscuous_enable().map_err(&err)?;
        dev.start().map_err(&err)?;
        Ok(DpdkPort {
            shared: Arc::new(Shared {
                name: name.to_string(),
                dev,
                pool,
                rx_taken: (0..nrx).map(|_| AtomicBool::new(false)).collect(),
                tx_locks: (0..ntx).map(|_| Mutex::new(())).collect(),
            }),
        })
    }

    /// The device's own counters.
    pub fn device_stats(&self) -> Result<EthStats, PortError> {
        self.shared.dev.stats().map_err(backend(&self.shared.name))
    }

    /// Mbufs of the port's pool that are out (in the device's rings or in flight).
    pub fn mbufs_in_use(&self) -> u32 {
        self.shared.pool.in_use()
    }

    /// The device's MAC address.
    pub fn mac_addr(&self) -> Result<[u8; 6], PortError> {
        self.shared.dev.mac_addr().map_err(backend(&self.shared.name))
    }
}

struct DpdkRx {
    shared: Arc<Shared>,
    q: u16,
    mbufs: [*mut rte_mbuf; MAX_BURST],
}

// SAFETY: `mbufs` is scratch space that holds no mbuf between calls; the device may be
// polled from any thread, and the queue belongs to this handle alone.
unsafe impl Send for DpdkRx {}

impl Drop for DpdkRx {
    fn drop(&mut self) {
        self.shared.rx_taken[usize::from(self.q)].store(false, Ordering::Release);
    }
}

impl RxQueue for DpdkRx {
    fn rx_burst(
        &mut self,
        cache: &mut PoolCache,
        out: &mut Burst,
        max: usize,
        drops: &mut DropTally,
    ) -> usize {
        let room = max.min(out.remaining_capacity()).min(MAX_BURST);
        if room == 0 {
            return 0;
        }
        // SAFETY: this handle is the only user of RX queue q (rx_taken), and the device is
        // stopped only when the last Arc<Shared>, ours included, is gone.
        let n = unsafe { self.shared.dev.rx_burst_shared(self.q, &mut self.mbufs[..room]) };
        let mut got = 0;
        for &p in &self.mbufs[..n] {
            // SAFETY: rx_burst handed us this mbuf; ManuallyDrop: all are freed in bulk below.
            let m = ManuallyDrop::new(unsafe { Mbuf::from_raw(p) });
            if m.nb_segs() != 1 {
                drops.add(DropReason::Oversize, 1);
                continue;
            }
            let Some(mut b) = cache.alloc() else {
                drops.add(DropReason::NoBuffer, 1);
                continue;
            };
            if b.extend_from_slice(m.data()).is_err() {
                drops.add(DropReason::Oversize, 1);
                cache.free(b);
                continue;
            }
            out.push(b);
            got += 1;
        }
        // SAFETY: the first n pointers are the mbufs we received; none is used after this.
        unsafe { free_bulk(&mut self.mbufs[..n]) };
        got
    }
}

struct DpdkTx {
    shared: Arc<Shared>,
    q: u16,
    mbufs: [*mut rte_mbuf; MAX_BURST],
}

// SAFETY: as DpdkRx; TX queue access is serialised by tx_locks[q].
unsafe impl Send for DpdkTx {}

impl TxQueue for DpdkTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        let n = pkts.len();
        if n == 0 {
            return 0;
        }
        if self.shared.pool.alloc_bulk_raw(&mut self.mbufs[..n]).is_err() {
            drops.add(DropReason::TxFull, n as u32);
            for b in pkts.drain(..) {
                cache.free(b);
            }
            return 0;
        }
        let mut k = 0;
        for (i, b) in pkts.drain(..).enumerate() {
            // SAFETY: alloc_bulk_raw gave us n fresh mbufs, this one is ours.
            let mut m = unsafe { Mbuf::from_raw(self.mbufs[i]) };
            if m.set_data(b.data()) {
                self.mbufs[k] = m.into_raw();
                k += 1;
            } else {
                drops.add(DropReason::Oversize, 1);
                drop(m);
            }
            cache.free(b);
        }
        let sent = {
            let _guard = self.shared.tx_locks[usize::from(self.q)].lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the first k pointers are valid mbufs we own; the lock serialises TX queue
            // q; the device is not stopped while we hold an Arc<Shared>.
            unsafe { self.shared.dev.tx_burst_shared(self.q, &mut self.mbufs[..k]) }
        };
        if sent < k {
            drops.add(DropReason::TxFull, (k - sent) as u32);
            // SAFETY: the device did not take these; they are still ours, used no more.
            unsafe { free_bulk(&mut self.mbufs[sent..k]) };
        }
        sent
    }
}

impl PortBackend for DpdkPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn rx_queue_count(&self) -> u16 {
        self.shared.rx_taken.len() as u16
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        let count = self.rx_queue_count();
        let Some(taken) = self.shared.rx_taken.get(usize::from(q)) else {
            return Err(PortError::NoSuchQueue { port: self.shared.name.clone(), queue: q, count });
        };
        if taken.swap(true, Ordering::AcqRel) {
            return Err(PortError::QueueTaken { port: self.shared.name.clone(), queue: q });
        }
        Ok(Box::new(DpdkRx { shared: self.shared.clone(), q, mbufs: [null_mut(); MAX_BURST] }))
    }

    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        let q = q % self.shared.tx_locks.len() as u16;
        Ok(Box::new(DpdkTx { shared: self.shared.clone(), q, mbufs: [null_mut(); MAX_BURST] }))
    }

    fn link_up(&self) -> bool {
        self.shared.dev.link().map(|l| l.up).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Pool;
    use switchyard_bindings::EalOptions;

    fn eal() -> Option<&'static Eal> {
        let opts = EalOptions { no_huge: Some(true), memory_mb: Some(256), ..EalOptions::default() };
        match Eal::init(opts) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("SKIPPED: DPDK EAL cannot initialise on this machine: {e}");
                None
            }
        }
    }

    #[test]
    fn ring_loopback_through_the_port_trait() {
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
        let port = DpdkPort::open(eal, "p0", "net_ring_dp0", &cfg).expect("open");
        assert!(port.link_up());
        let pool = Pool::new("dpdk-test", 256).unwrap();
        let mut cache = pool.cache();
        let mut rx = port.open_rx(0).unwrap();
        assert!(matches!(port.open_rx(0), Err(PortError::QueueTaken { .. })));
        assert!(matches!(port.open_rx(1), Err(PortError::NoSuchQueue { .. })));
        let mut tx = port.open_tx(3).unwrap();
        let frames: Vec<Vec<u8>> =
            (0..20u8).map(|i| (0..60 + usize::from(i)).map(|j| (j as u8) ^ i).collect()).collect();
        let mut burst = Burst::new();
        for f in &frames {
            burst.push(cache.alloc_copy(f).unwrap());
        }
        let mut drops = DropTally::default();
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
        assert!(drops.is_zero());
        let mut out = Burst::new();
        let mut tries = 0;
        while out.len() < frames.len() && tries < 1000 {
            rx.rx_burst(&mut cache, &mut out, MAX_BURST, &mut drops);
            tries += 1;
        }
        let got: Vec<Vec<u8>> = out.iter().map(|b| b.data().to_vec()).collect();
        assert_eq!(got, frames);
        assert_eq!(port.device_stats().unwrap().opackets, frames.len() as u64);
        assert_eq!(port.mbufs_in_use(), 0, "every mbuf came back");
        for b in out.drain(..) {
            cache.free(b);
        }
        drop((rx, tx, cache));
        assert_eq!(pool.in_use(), 0);
    }

    /// What the copy costs: net_null RX -> TX on one thread, through the port trait (two
    /// copies a frame) and straight mbuf-to-mbuf. `cargo test --release -p
    /// switchyard-dataplane --features dpdk copy_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn copy_cost() {
        let Some(eal) = eal() else { return };
        const N: usize = 5_000_000;
        let cfg = DpdkPortConfig { rx_desc: 512, tx_desc: 512, ..Default::default() };
        let port = DpdkPort::open(eal, "n0", "net_null_cc0,size=64,copy=0", &cfg).unwrap();
        let pool = Pool::new("copy-cost", 4096).unwrap();
        let mut cache = pool.cache();
        let (mut rx, mut tx) = (port.open_rx(0).unwrap(), port.open_tx(0).unwrap());
        let mut drops = DropTally::default();
        let mut burst = Burst::new();
        let t = std::time::Instant::now();
        let mut done = 0;
        while done < N {
            rx.rx_burst(&mut cache, &mut burst, 32, &mut drops);
            done += tx.tx_burst(&mut burst, &mut cache, &mut drops);
        }
        let copied = t.elapsed().as_secs_f64();
        drop((rx, tx));

        let mut dev = EthDev::probe(eal, "net_null_cc1,size=64,copy=0").unwrap();
        let mp = Arc::new(Mempool::new(eal, "cc_raw", 4095, 256, Mempool::DEFAULT_DATA_ROOM).unwrap());
        dev.configure(1, 1).unwrap();
        dev.setup_rx_queue(0, 512, &mp).unwrap();
        dev.setup_tx_queue(0, 512).unwrap();
        dev.start().unwrap();
        let mut m = [null_mut(); 32];
        let t = std::time::Instant::now();
        let mut done = 0;
        while done < N {
            let n = dev.rx_burst(0, &mut m);
            // SAFETY: the n mbufs came from rx_burst.
            let s = unsafe { dev.tx_burst(0, &mut m[..n]) };
            // SAFETY: what TX did not take is still ours.
            unsafe { free_bulk(&mut m[s..n]) };
            done += s;
        }
        let raw = t.elapsed().as_secs_f64();
        let ns = |secs: f64| secs * 1e9 / N as f64;
        eprintln!(
            "net_null 64B rx->tx, one thread: via PacketBuf copy {:.1} ns/frame ({:.2} Mpps), \
             mbuf passthrough {:.1} ns/frame ({:.2} Mpps): the copies cost {:.1} ns/frame",
            ns(copied),
            N as f64 / copied / 1e6,
            ns(raw),
            N as f64 / raw / 1e6,
            ns(copied) - ns(raw)
        );
    }

    #[test]
    fn bad_devargs_name_the_device() {
        let Some(eal) = eal() else { return };
        let e = DpdkPort::open(eal, "up0", "net_bogus7", &DpdkPortConfig::default()).err().unwrap();
        assert!(e.to_string().contains("net_bogus7"), "{e}");
    }
}
