//! Ethernet devices (ethdev ports): probe, configure, queues, start/stop,
//! counters, link, and burst RX/TX.

use crate::eal::Eal;
use crate::error::{check, Error, Result};
use crate::mbuf::Mbuf;
use crate::mempool::Mempool;
use crate::sys;
use std::ffi::{CStr, CString};
use std::sync::Arc;

/// Port counters (`rte_eth_stats`, totals only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// RX frames the hardware dropped (no free descriptor).
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// Link state (`rte_eth_link`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    /// Mbit/s; `None` when unknown.
    pub speed_mbps: Option<u32>,
    pub full_duplex: bool,
    pub autoneg: bool,
}

/// What the driver says it can do (a few fields of `rte_eth_dev_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    pub driver_name: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub rx_desc_max: u16,
    pub tx_desc_max: u16,
    pub flow_type_rss_offloads: u64,
    pub min_mtu: u16,
    pub max_mtu: u16,
}

/// An ethdev port owned by switchyard.
///
/// Control operations take `&mut self`, and so do the safe burst functions:
/// with one owner no queue is polled while the port is stopped or
/// reconfigured. Workers that share a started port use the `unsafe`
/// `*_shared` burst functions, whose contract is one thread per queue and
/// no concurrent control operation.
///
/// Dropping it stops and closes the port, and removes the device when it was
/// probed by [`EthDev::probe`] (not one given to EAL at init).
#[derive(Debug)]
pub struct EthDev {
    port_id: u16,
    name: String,
    probed: bool,
    device: *mut sys::rte_device,
    nb_rxq: u16,
    nb_txq: u16,
    rxq_ready: Vec<bool>,
    txq_ready: Vec<bool>,
    started: bool,
    closed: bool,
    /// The pools the RX queues allocate from, kept alive with the port.
    pools: Vec<Arc<Mempool>>,
}

// SAFETY: the port id and device pointer may be used from any thread; DPDK's
// ethdev control functions are not tied to the thread that probed the port.
unsafe impl Send for EthDev {}
// SAFETY: the &self methods are the counters/link/MAC queries, stats reset and
// promiscuous mode, which DPDK allows concurrently with the data path, and the
// `unsafe` shared bursts, whose callers take on the per-queue exclusivity. An
// assumption beyond DPDK's word: two of those control calls at once (a stats
// read from the metrics thread while the control thread reads the link) are
// safe; DPDK documents no such promise, and the PMDs switchyard runs read
// counters there.
unsafe impl Sync for EthDev {}

/// The ethdev name that devargs give: everything before the first comma
/// (`net_pcap0,rx_pcap=a.pcap` -> `net_pcap0`, `0000:3b:02.1` as is).
pub fn devargs_name(devargs: &str) -> &str {
    devargs.split(',').next().unwrap_or("").trim()
}

impl EthDev {
    /// Finds the port that `devargs` name, probing the device first when no
    /// port of that name exists (a vdev such as `net_ring0` or
    /// `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`, or a PCI address).
    pub fn probe(_eal: &Eal, devargs: &str) -> Result<EthDev> {
        let name = devargs_name(devargs).to_string();
        if name.is_empty() {
            return Err(Error::InvalidArgument {
                what: "device".into(),
                reason: format!("devargs {devargs:?} name no device"),
            });
        }
        let cname = CString::new(name.as_str()).map_err(|_| Error::InvalidArgument {
            what: format!("device {name}"),
            reason: "name contains a NUL byte".into(),
        })?;
        let mut probed = false;
        let port_id = match port_by_name(&cname) {
            Some(p) => p,
            None => {
                let cargs = CString::new(devargs).map_err(|_| Error::InvalidArgument {
                    what: format!("device {name}"),
                    reason: "devargs contain a NUL byte".into(),
                })?;
                // SAFETY: EAL is up; cargs is a valid C string DPDK copies.
                let ret = unsafe { sys::rte_dev_probe(cargs.as_ptr()) };
                check(ret, |errno, message| Error::Probe {
                    device: name.clone(),
                    devargs: devargs.to_string(),
                    errno,
                    message,
                })?;
                probed = true;
                port_by_name(&cname)
                    .ok_or_else(|| Error::NoSuchPort { device: name.clone(), devargs: devargs.to_string() })?
            }
        };
        let mut dev = EthDev {
            port_id,
            name,
            probed,
            device: std::ptr::null_mut(),
            nb_rxq: 0,
            nb_txq: 0,
            rxq_ready: Vec::new(),
            txq_ready: Vec::new(),
            started: false,
            closed: false,
            pools: Vec::new(),
        };
        let raw = dev.raw_info()?;
        dev.device = raw.device;
        Ok(dev)
    }

    /// The port id.
    pub fn port_id(&self) -> u16 {
        self.port_id
    }

    /// The device name (`net_ring0`, `0000:3b:02.1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the port is started.
    pub fn is_started(&self) -> bool {
        self.started
    }

    fn err(&self, op: &'static str) -> impl FnOnce(i32, String) -> Error + '_ {
        move |errno, message| Error::EthDev { device: self.name.clone(), op, errno, message }
    }

    fn raw_info(&self) -> Result<sys::rte_eth_dev_info> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: info is a valid out-parameter of the right type.
        let ret = unsafe { sys::rte_eth_dev_info_get(self.port_id, &mut info) };
        check(ret, self.err("dev_info_get"))?;
        Ok(info)
    }

    /// Driver capabilities.
    pub fn info(&self) -> Result<DevInfo> {
        let i = self.raw_info()?;
        let driver_name = if i.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null driver_name points to the driver's static, NUL-terminated name,
            // which lives as long as the driver is loaded (the whole process).
            unsafe { CStr::from_ptr(i.driver_name) }.to_string_lossy().into_owned()
        };
        Ok(DevInfo {
            driver_name,
            max_rx_queues: i.max_rx_queues,
            max_tx_queues: i.max_tx_queues,
            rx_desc_max: i.rx_desc_lim.nb_max,
            tx_desc_max: i.tx_desc_lim.nb_max,
            flow_type_rss_offloads: i.flow_type_rss_offloads,
            min_mtu: i.min_mtu,
            max_mtu: i.max_mtu,
        })
    }

    /// Configures `nb_rxq` RX and `nb_txq` TX queues (RSS over the RX queues
    /// when there are several and the device hashes). Stops the port first
    /// when it is running; every queue must then be set up again.
    pub fn configure(&mut self, nb_rxq: u16, nb_txq: u16) -> Result<()> {
        if self.started {
            self.stop()?;
        }
        let info = self.raw_info()?;
        let mut conf = sys::rte_eth_conf::default();
        if nb_rxq > 1 && info.flow_type_rss_offloads != 0 {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads;
        }
        // SAFETY: conf is a valid, zero-initialised-plus-RSS configuration
        // that DPDK copies; the port is stopped.
        let ret = unsafe { sys::rte_eth_dev_configure(self.port_id, nb_rxq, nb_txq, &conf) };
        check(ret, self.err("configure"))?;
        self.nb_rxq = nb_rxq;
        self.nb_txq = nb_txq;
        self.rxq_ready = vec![false; usize::from(nb_rxq)];
        self.txq_ready = vec![false; usize::from(nb_txq)];
        self.pools.clear();
        Ok(())
    }

    /// Sets up RX queue `q` with about `nb_desc` descriptors (adjusted to
    /// the device's limits), filling it from `pool`.
    pub fn setup_rx_queue(&mut self, q: u16, nb_desc: u16, pool: &Arc<Mempool>) -> Result<()> {
        self.check_queue("rx", q, self.nb_rxq)?;
        let mut rx = nb_desc;
        let mut tx = 0u16;
        // SAFETY: rx and tx are valid in/out parameters.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.port_id, &mut rx, &mut tx) };
        check(ret, self.err("adjust_nb_rx_tx_desc"))?;
        // SAFETY: the port is configured with q < nb_rxq; a null rxconf means
        // the driver's defaults; pool is a live packet mbuf pool kept alive in
        // self.pools for as long as the port can use it.
        let ret = unsafe {
            sys::rte_eth_rx_queue_setup(
                self.port_id,
                q,
                rx,
                self.socket_id(),
                std::ptr::null(),
                pool.as_ptr(),
            )
        };
        check(ret, self.err("rx_queue_setup"))?;
        self.rxq_ready[usize::from(q)] = true;
        if !self.pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
            self.pools.push(pool.clone());
        }
        Ok(())
    }

    /// Sets up TX queue `q` with about `nb_desc` descriptors.
    pub fn setup_tx_queue(&mut self, q: u16, nb_desc: u16) -> Result<()> {
        self.check_queue("tx", q, self.nb_txq)?;
        let mut rx = 0u16;
        let mut tx = nb_desc;
        // SAFETY: rx and tx are valid in/out parameters.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.port_id, &mut rx, &mut tx) };
        check(ret, self.err("adjust_nb_rx_tx_desc"))?;
        let ret =
            // SAFETY: the port is configured and q < nb_txq (checked above); a null txconf
            // asks for the driver's defaults.
            unsafe { sys::rte_eth_tx_queue_setup(self.port_id, q, tx, self.socket_id(), std::ptr::null()) };
        check(ret, self.err("tx_queue_setup"))?;
        self.txq_ready[usize::from(q)] = true;
        Ok(())
    }

    fn socket_id(&self) -> u32 {
        // SAFETY: plain query on a valid port id.
        let s = unsafe { sys::rte_eth_dev_socket_id(self.port_id) };
        // SOCKET_ID_ANY (-1) becomes u32::MAX, which DPDK reads back as -1.
        s as u32
    }

    fn check_queue(&self, what: &'static str, q: u16, configured: u16) -> Result<()> {
        if q < configured {
            Ok(())
        } else {
            Err(Error::BadQueue { device: self.name.clone(), what, queue: q, configured })
        }
    }

    /// Starts the port. Every configured queue must be set up.
    pub fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        if let Some(q) = self.rxq_ready.iter().position(|r| !r) {
            return self.check_queue("rx", q as u16, 0);
        }
        if let Some(q) = self.txq_ready.iter().position(|r| !r) {
            return self.check_queue("tx", q as u16, 0);
        }
        if self.nb_rxq == 0 && self.nb_txq == 0 {
            return Err(Error::EthDev {
                device: self.name.clone(),
                op: "start",
                errno: libc::EINVAL,
                message: "port is not configured".into(),
            });
        }
        // SAFETY: the port is configured and all its queues are set up.
        let ret = unsafe { sys::rte_eth_dev_start(self.port_id) };
        check(ret, self.err("start"))?;
        self.started = true;
        Ok(())
    }

    /// Stops the port. First drains what its RX queues still hold (a
    /// bounded number of polls, the frames are freed) so that software
    /// devices such as net_ring do not keep mbufs across a stop.
    pub fn stop(&mut self) -> Result<()> {
        if !self.started {
            return Ok(());
        }
        self.drain_rx();
        // SAFETY: valid port id; &mut self means no burst runs through a
        // safe method, and the shared-burst contract excludes the rest.
        let ret = unsafe { sys::rte_eth_dev_stop(self.port_id) };
        check(ret, self.err("stop"))?;
        self.started = false;
        Ok(())
    }

    fn drain_rx(&mut self) {
        let mut burst = [std::ptr::null_mut::<sys::rte_mbuf>(); 32];
        for q in 0..self.nb_rxq {
            for _ in 0..1024 {
                let n = self.rx_burst(q, &mut burst);
                if n == 0 {
                    break;
                }
                // SAFETY: the first n pointers are mbufs rx_burst handed us.
                unsafe { crate::mbuf::free_bulk(&mut burst[..n]) };
            }
        }
    }

    /// Stops (if needed) and closes the port, releasing its queues and the
    /// mbufs in them, and removes the device if [`EthDev::probe`] probed it.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let stopped = self.stop();
        // SAFETY: valid port id, stopped (or stop failed, which close handles).
        let ret = unsafe { sys::rte_eth_dev_close(self.port_id) };
        let closed = check(ret, self.err("close")).map(|_| ());
        if self.probed && !self.device.is_null() {
            // SAFETY: device is the rte_device this port was probed from; it
            // stays on its bus until removed, which happens only here, once.
            let ret = unsafe { sys::rte_dev_remove(self.device) };
            // Some drivers remove the device on close already (-ENOENT).
            if ret != -libc::ENOENT {
                check(ret, self.err("remove"))?;
            }
        }
        self.pools.clear();
        stopped.and(closed)
    }

    /// Port counters.
    pub fn stats(&self) -> Result<EthStats> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-parameter.
        let ret = unsafe { sys::rte_eth_stats_get(self.port_id, &mut s) };
        check(ret, self.err("stats_get"))?;
        Ok(EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Clears the port counters.
    pub fn reset_stats(&self) -> Result<()> {
        // SAFETY: valid port id.
        let ret = unsafe { sys::rte_eth_stats_reset(self.port_id) };
        check(ret, self.err("stats_reset")).map(|_| ())
    }

    /// Link state, without waiting.
    pub fn link(&self) -> Result<Link> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: l is a valid out-parameter.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.port_id, &mut l) };
        check(ret, self.err("link_get"))?;
        let speed = l.link_speed;
        Ok(Link {
            up: u32::from(l.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: (speed != sys::RTE_ETH_SPEED_NUM_UNKNOWN && speed != sys::RTE_ETH_SPEED_NUM_NONE)
                .then_some(speed),
            full_duplex: u32::from(l.link_duplex()) == sys::RTE_ETH_LINK_FULL_DUPLEX,
            autoneg: l.link_autoneg() != 0,
        })
    }

    /// The port's MAC address.
    pub fn mac_addr(&self) -> Result<[u8; 6]> {
        let mut a = sys::rte_ether_addr::default();
        // SAFETY: a is a valid out-parameter.
        let ret = unsafe { sys::rte_eth_macaddr_get(self.port_id, &mut a) };
        check(ret, self.err("macaddr_get"))?;
        Ok(a.addr_bytes)
    }

    /// Receives every frame whatever its destination MAC.
    pub fn promiscuous_enable(&self) -> Result<()> {
        // SAFETY: valid port id.
        let ret = unsafe { sys::rte_eth_promiscuous_enable(self.port_id) };
        // Software devices without the op say -ENOTSUP; they see everything.
        if ret == -libc::ENOTSUP {
            return Ok(());
        }
        check(ret, self.err("promiscuous_enable")).map(|_| ())
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, mtu: u16) -> Result<()> {
        // SAFETY: valid port id.
        let ret = unsafe { sys::rte_eth_dev_set_mtu(self.port_id, mtu) };
        check(ret, self.err("set_mtu")).map(|_| ())
    }

    /// Receives up to `pkts.len()` frames from RX queue `q` into `pkts`;
    /// returns how many. The caller owns the mbufs written (wrap them with
    /// [`Mbuf::from_raw`] or free them with [`crate::mbuf::free_bulk`]).
    /// A queue that is not set up, or a stopped port, gives 0.
    #[inline]
    pub fn rx_burst(&mut self, q: u16, pkts: &mut [*mut sys::rte_mbuf]) -> usize {
        // SAFETY: &mut self: no other thread polls this port through us.
        unsafe { self.rx_burst_shared(q, pkts) }
    }

    /// As [`EthDev::rx_burst`], for workers sharing the port.
    ///
    /// # Safety
    /// No other thread may use RX queue `q` of this port at the same time,
    /// and no control operation (stop, configure, close) may run meanwhile.
    #[inline]
    pub unsafe fn rx_burst_shared(&self, q: u16, pkts: &mut [*mut sys::rte_mbuf]) -> usize {
        if !self.started || !self.rxq_ready.get(usize::from(q)).copied().unwrap_or(false) {
            return 0;
        }
        let n = pkts.len().min(usize::from(u16::MAX)) as u16;
        // SAFETY: the queue is set up and the port started (checked above); pkts has room for
        // n pointers; that no other thread polls this queue is the caller's contract.
        usize::from(unsafe { sys::shim::sy_rte_eth_rx_burst(self.port_id, q, pkts.as_mut_ptr(), n) })
    }

    /// Hands the mbufs of `pkts` to TX queue `q`; returns how many the
    /// device took. Those (the first n) now belong to the device; the rest
    /// still belong to the caller. A queue that is not set up, or a
    /// stopped port, takes none.
    ///
    /// # Safety
    /// Every pointer in `pkts` must be a valid mbuf owned by the caller.
    #[inline]
    pub unsafe fn tx_burst(&mut self, q: u16, pkts: &mut [*mut sys::rte_mbuf]) -> usize {
        // SAFETY: &mut self gives queue exclusivity; mbuf validity is ours
        // to pass on from the caller.
        unsafe { self.tx_burst_shared(q, pkts) }
    }

    /// As [`EthDev::tx_burst`], for workers sharing the port.
    ///
    /// # Safety
    /// As [`EthDev::tx_burst`]; and no other thread may use TX queue `q`
    /// at the same time, nor a control operation run meanwhile.
    #[inline]
    pub unsafe fn tx_burst_shared(&self, q: u16, pkts: &mut [*mut sys::rte_mbuf]) -> usize {
        if !self.started || !self.txq_ready.get(usize::from(q)).copied().unwrap_or(false) {
            return 0;
        }
        let n = pkts.len().min(usize::from(u16::MAX)) as u16;
        // SAFETY: the queue is set up and the port started (checked above); the caller passes
        // n valid mbufs it owns and gives up those the driver takes.
        usize::from(unsafe { sys::shim::sy_rte_eth_tx_burst(self.port_id, q, pkts.as_mut_ptr(), n) })
    }

    /// Safe RX into owned mbufs: appends up to `max` frames to `out`
    /// (no allocation when `out` has the capacity); returns how many.
    pub fn rx_mbufs(&mut self, q: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        out.reserve(max);
        let len = out.len();
        let spare = out.spare_capacity_mut();
        let max = max.min(spare.len());
        let raw =
            // SAFETY: Mbuf is repr(transparent) over a non-null mbuf pointer and
            // MaybeUninit<Mbuf> has its layout; rx_burst only writes pointers into it.
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr() as *mut *mut sys::rte_mbuf, max) };
        let n = self.rx_burst(q, raw);
        // SAFETY: the first n slots now hold non-null mbufs DPDK gave us.
        unsafe { out.set_len(len + n) };
        n
    }

    /// Safe TX of owned mbufs: sends from the front of `pkts` and removes
    /// what was sent; the rest stays in `pkts`. Returns how many were sent.
    pub fn tx_mbufs(&mut self, q: u16, pkts: &mut Vec<Mbuf>) -> usize {
        let len = pkts.len();
        let raw =
            // SAFETY: Mbuf is repr(transparent) over a valid owned mbuf pointer, so the vector
            // is a slice of len mbuf pointers.
            unsafe { std::slice::from_raw_parts_mut(pkts.as_mut_ptr() as *mut *mut sys::rte_mbuf, len) };
        // SAFETY: every pointer is a valid mbuf we own (Mbuf invariant).
        let n = unsafe { self.tx_burst(q, raw) };
        // The first n now belong to the device: shift the rest down over
        // them without dropping them, then shorten.
        // SAFETY: n <= len; the moved range stays inside the buffer; after
        // set_len the first len - n elements are exactly the unsent mbufs.
        unsafe {
            let p = pkts.as_mut_ptr();
            std::ptr::copy(p.add(n), p, len - n);
            pkts.set_len(len - n);
        }
        n
    }
}

impl Drop for EthDev {
    fn drop(&mut self) {
        if let Err(e) = self.close_inner() {
            tracing::warn!(error = %e, "closing DPDK port");
        }
    }
}

fn port_by_name(name: &CStr) -> Option<u16> {
    let mut port = 0u16;
    // SAFETY: name is a valid C string; port is a valid out-parameter.
    let ret = unsafe { sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut port) };
    (ret == 0).then_some(port)
}

/// Number of usable ethdev ports.
pub fn count_avail() -> u16 {
    // SAFETY: plain query.
    unsafe { sys::rte_eth_dev_count_avail() }
}
