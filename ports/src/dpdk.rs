//! DPDK ethdev ports (`type: dpdk` with `devargs:`, `dpdk:DEVARGS` in `switchyard pmd`):
//! SR-IOV VFs bound to vfio-pci and every DPDK vdev (net_pcap, net_ring, net_null,
//! net_vhost, net_virtio_user, net_tap, net_af_packet), over `switchyard-bindings`.
//!
//! Zero copy: every DPDK port of the process shares one mbuf pool whose data buffers are
//! pinned external buffers laid out exactly as switchyard's slots (128 bytes of headroom and
//! 2048 of data room, [`SLOT_SIZE`]), and the same region is a switchyard [`Pool`] of the
//! external kind ([`Pool::external`]): slot `i` is the buffer of mbuf `table[i]`, for good.
//! - RX: an mbuf becomes a [`PacketBuf`] of that pool (its slot, window `data_off`,
//!   `data_len`) without touching the bytes; the mbuf stays allocated while the buffer lives.
//!   Dropping the buffer, or freeing it into any worker's cache, frees the mbuf.
//! - TX: a buffer of that pool goes back into its own mbuf (window set from the buffer) and to
//!   the device, without a copy. A buffer of any other pool (flood copies, frames from other
//!   port types) is copied into a fresh mbuf of the shared pool, and counted
//!   ([`DpdkPort::copies`]).
//! - Mbufs of other pools received (none today: every RX queue is set up with the shared
//!   pool), and mbufs of ours whose buffer is not their own slot, are copied into the worker's
//!   pool, and counted too. The driver options known to attach such buffers (vhost's
//!   `ext-buffer`, mlx5's `mprq_en`) are refused at open: DPDK keeps a pinned pool's buffers in
//!   place, so the attached buffer would never be given back. A buffer is adopted only when `table[idx]` is the very mbuf and its
//!   `buf_addr` the start of slot `idx`.
//!
//! Plain mbufs (invariant): every mbuf of the shared pool whose slot switchyard holds as a
//! buffer has one segment and a buffer of exactly [`SLOT_SIZE`] bytes, its slot. RX adopts
//! only single-segment mbufs whose `buf_addr` is the start of their own slot; an mbuf
//! switchyard allocates is reset to one segment; `buf_len` is not checked per mbuf but set
//! once, to SLOT_SIZE, when the pool is made (`shared_bufs` checks the size), and only an
//! attach or detach would change it, which would change `buf_addr` too (see below). So TX's
//! fast loop sets a buffer's window in its mbuf without checking either again
//! (`Mbuf::set_window_unchecked`); the general loop keeps the checked `set_window`.
//!
//! Direct-looking mbufs (invariant): the shared pool's mbufs do not carry
//! `RTE_MBUF_F_EXTERNAL` ([`Mempool::make_pinned_direct`], right after the pool is made), so
//! DPDK frees them on its direct-mbuf fast path instead of the pinned-extbuf one (an
//! out-of-line `rte_pktmbuf_detach` and a reference count in a third cache line per mbuf);
//! their buffers stay where they are, since nothing on DPDK's free path moves a direct mbuf's
//! buffer. The price is that DPDK must never clone or attach them (`rte_pktmbuf_clone` /
//! `rte_pktmbuf_attach` would take the buffer for one that lies inside the mbuf's own
//! memory). Nothing does: switchyard has no such call, the TX path clears every offload
//! request so that net_tap never runs GSO (its only use of attach) on our mbufs, and no driver
//! supported here clones or attaches on TX (net_pcap, net_ring, net_null, net_vhost,
//! net_virtio_user, net_tap, net_af_packet, iavf, mlx5; virtio reads `RTE_MBUF_DIRECT` only to
//! write its header into the headroom, which is ours to give). Intel's vector RX paths clear
//! the flag on every mbuf they receive anyway; mlx5 sets it back for pinned pools, and such an
//! mbuf takes DPDK's pinned path again, which is as correct. Revisit this before adding a
//! GSO, IP fragmentation or packet capture (pdump) path over these mbufs.
//!
//! One device, one port (invariant): a device (the ethdev name its devargs give, a PCI address
//! in DPDK's spelling whatever the spelling given) is open as at most one [`DpdkPort`] of the
//! process (`OPEN`). A second open of it fails with
//! [`PortError::DeviceInUse`] before anything touches the device: it would find the running
//! port's ethdev, fail to configure it (started), and its error path would stop and close that
//! port under its workers' bursts, DPDK's refusal to close a started device being all that
//! kept it running.
//!
//! Queues: one RX queue per worker where the device has them (each RX queue is taken by one
//! handle); TX handles map onto the device's TX queues (`q % tx_queues`) and each TX queue is
//! serialised by an uncontended mutex, so any number of workers can transmit. The device is
//! stopped and closed when the port and every queue handle are gone, so no burst can race a
//! stop.

use std::mem::ManuallyDrop;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use switchyard_bindings::{mbuf::free_bulk, sys::rte_mbuf, Eal, EthDev, EthStats, Mbuf, Mempool};
use switchyard_dataplane::backend::canonical_devargs;
use switchyard_dataplane::buffer::{Adopter, ExternalSlots, PacketBuf, Pool, PoolCache, SLOT_SIZE};
use switchyard_dataplane::port::{
    Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue, MAX_BURST,
};
use switchyard_dataplane::switch::DropReason;

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
    /// Mbufs in the process's shared pool, used by the first DPDK port opened (later ports
    /// share that pool); 0 = [`DEFAULT_POOL_SIZE`] or, when more, four times what this port's
    /// rings, bursts and caches need.
    pub pool_size: u32,
}

impl Default for DpdkPortConfig {
    fn default() -> Self {
        DpdkPortConfig { rx_queues: 1, tx_queues: 1, rx_desc: 1024, tx_desc: 1024, pool_size: 0 }
    }
}

/// Mbufs in the shared pool by default: every ring of several ports (1024-descriptor rings,
/// a queue each way) plus bursts and per-lcore caches; 36 MiB of buffers.
pub const DEFAULT_POOL_SIZE: u32 = 16 * 1024 - 1;

/// The slot -> mbuf side of the shared pool: switchyard's [`ExternalSlots`] owner.
struct MbufSlots {
    mempool: Arc<Mempool>,
    /// `table[i]`: the mbuf whose pinned buffer is slot `i` (fixed for the pool's life).
    table: Box<[*mut rte_mbuf]>,
    base: usize,
}

// SAFETY: the table only holds addresses of the pool's mbufs, which live as long as the
// mempool (kept by the Arc); freeing an mbuf to its thread-safe pool is allowed from any thread.
unsafe impl Send for MbufSlots {}
// SAFETY: as above; every method only reads the table and calls thread-safe mempool functions.
unsafe impl Sync for MbufSlots {}

impl MbufSlots {
    /// The slot <-> mbuf map, copied out for a burst (see [`SlotMap`]).
    #[inline]
    fn map(&self) -> SlotMap<'_> {
        SlotMap { base: self.base, table: &self.table }
    }

    /// [`MbufSlots::map`] cut to the first `count` slots: an RX burst passes its adopter's
    /// count (the same number as the table's length), so that the slot index checked against
    /// the table is known to be below the adopter's bound too (one check instead of two).
    #[inline]
    fn map_upto(&self, count: usize) -> SlotMap<'_> {
        SlotMap { base: self.base, table: &self.table[..count.min(self.table.len())] }
    }

    /// [`SlotMap::own_slot`].
    #[inline]
    fn own_slot(&self, p: *mut rte_mbuf, buf_addr: usize) -> Option<u32> {
        self.map().own_slot(p, buf_addr)
    }
}

/// [`MbufSlots`]' region base and table, in locals for a burst: the loops over a burst write
/// mbuf fields through raw pointers, after which the compiler would read the table's address
/// and length again from the heap for every frame.
#[derive(Clone, Copy)]
struct SlotMap<'a> {
    base: usize,
    table: &'a [*mut rte_mbuf],
}

impl SlotMap<'_> {
    /// The slot of mbuf `p`, whose buffer starts at `buf_addr`, when `p` is an mbuf of the
    /// shared pool and that buffer is its own pinned slot: `table[idx] == p` and
    /// `buf_addr == base + idx * SLOT_SIZE`. `None` for an mbuf of another pool, and for one
    /// of ours that a driver gave another buffer (`rte_pktmbuf_attach_extbuf`, as vhost's
    /// `ext-buffer` and mlx5's multi-packet RX queues do): never adopt a buffer that is not
    /// the mbuf's own slot.
    #[inline]
    fn own_slot(&self, p: *mut rte_mbuf, buf_addr: usize) -> Option<u32> {
        let idx = slot_of_offset(buf_addr.wrapping_sub(self.base) as u64);
        // Below the table's length only when the offset is a multiple of SLOT_SIZE
        // (slot_of_offset), so the buffer starts exactly at slot idx.
        let idx = u32::try_from(idx).ok()?;
        (self.table.get(idx as usize)? == &p).then_some(idx)
    }

    /// The mbuf that owns slot `idx`.
    #[inline]
    fn mbuf(&self, idx: u32) -> Option<*mut rte_mbuf> {
        self.table.get(idx as usize).copied()
    }
}

/// The odd factor of [`SLOT_SIZE`] (2176 = 2^7 x 17) and its inverse modulo 2^64 (Newton's
/// iteration x <- x(2 - dx), from x = d, which is right in the low 3 bits for any odd d, doubling
/// the right bits each time: 3, 6, 12, 24, 48, 96).
const SLOT_ODD: u64 = (SLOT_SIZE >> SLOT_SIZE.trailing_zeros()) as u64;
const SLOT_ODD_INV: u64 = {
    let mut x = SLOT_ODD;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(SLOT_ODD.wrapping_mul(x)));
        i += 1;
    }
    x
};
const _: () = assert!(SLOT_ODD.wrapping_mul(SLOT_ODD_INV) == 1);

/// `off / SLOT_SIZE` when `off` is a multiple of SLOT_SIZE; otherwise a number above
/// `u64::MAX / SLOT_SIZE`, so above any slot index. This is the exact-division test of Granlund
/// and Montgomery (Hacker's Delight 10-17): multiplying by the inverse of the odd factor
/// divides exactly the multiples of it and sends the rest above `u64::MAX / odd`; rotating
/// right by the power of two divides by it and moves any bit below it to the top. One result
/// decides both whether `off` is a multiple of SLOT_SIZE and the index, where `off / SLOT_SIZE`
/// would need a second computation to check that it divides.
#[inline(always)]
fn slot_of_offset(off: u64) -> u64 {
    off.wrapping_mul(SLOT_ODD_INV).rotate_right(SLOT_SIZE.trailing_zeros())
}

// SAFETY: slot i is mbuf table[i]'s pinned buffer (SLOT_SIZE bytes at base + i * SLOT_SIZE, in
// a memzone that lives as long as the mempool, which this owner keeps); a slot whose entry is
// null has no mbuf and is never handed out (own_slot matches only a live mbuf pointer). A slot is handed out
// only with its mbuf allocated (alloc, or an RX mbuf adopted by DpdkRx), so DPDK gives the
// buffer to nobody else until `free` frees the mbuf.
unsafe impl ExternalSlots for MbufSlots {
    fn alloc(&self) -> Option<u32> {
        let m = self.mempool.alloc().ok()?;
        // An mbuf without its own buffer (see own_slot) is dropped, which frees it.
        let idx = self.own_slot(m.as_ptr(), m.buf_addr() as usize)?;
        // The mbuf stays allocated; it is freed when the slot comes back (free).
        let _ = m.into_raw();
        Some(idx)
    }

    #[inline]
    fn free(&self, idx: u32) {
        let m = self.table[idx as usize];
        // SAFETY: slot idx was handed to switchyard with its mbuf allocated, and comes back
        // exactly once (ExternalSlots contract); the mbuf is ours to free.
        drop(unsafe { Mbuf::from_raw(m) });
    }

    fn in_use(&self) -> usize {
        self.mempool.in_use() as usize
    }
}

/// The process's shared zero-copy pool: the DPDK side and the switchyard side of one region.
struct DpdkBufs {
    mempool: Arc<Mempool>,
    slots: Arc<MbufSlots>,
    pool: Pool,
}

static BUFS: OnceLock<DpdkBufs> = OnceLock::new();
static BUFS_INIT: Mutex<()> = Mutex::new(());

/// The shared pool, created on the first call with `size` mbufs.
fn shared_bufs(eal: &Eal, size: u32) -> Result<&'static DpdkBufs, String> {
    let _init = BUFS_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = BUFS.get() {
        return Ok(b);
    }
    let mempool =
        Mempool::pinned_extbuf(eal, "sy_zc", size, 256, SLOT_SIZE as u16).map_err(|e| e.to_string())?;
    let (base, elt) = mempool.pinned_region().ok_or("extbuf pool without a region")?;
    let table = mempool.slot_table().ok_or("extbuf pool: mbufs and buffers do not pair up")?;
    // The region may hold a few slots more than the pool has mbufs: those straddling two
    // physically separate pages have none (Mempool::pinned_extbuf), their table entry is null,
    // so own_slot never matches them and the external pool never hands them out.
    let slots_in_region = table.len();
    if usize::from(elt) != SLOT_SIZE {
        return Err(format!("extbuf pool buffers are {elt} bytes, not {SLOT_SIZE}"));
    }
    // The pool was just created and nothing else knows it yet. No mbuf of it is ever
    // cloned or attached to: switchyard has no such call (the bindings offer none), the TX
    // path clears every offload request (set_window, set_window_unchecked), so net_tap never
    // runs GSO on them, and
    // the devargs that make a driver attach its own buffers on RX are refused at open, and
    // none of the drivers switchyard supports clones or attaches on TX (net_pcap, net_ring,
    // net_null, net_vhost, net_virtio_user, net_tap, net_af_packet, iavf, mlx5: checked in
    // DPDK 22.11's sources; virtio only reads RTE_MBUF_DIRECT to write its header into the
    // headroom, which is ours to give). See the module documentation.
    // SAFETY: a fresh pool nobody else uses, whose mbufs are never cloned or attached (above).
    unsafe { mempool.make_pinned_direct() }.map_err(|e| e.to_string())?;
    let mempool = Arc::new(mempool);
    let slots =
        Arc::new(MbufSlots { mempool: mempool.clone(), table: table.into(), base: base.as_ptr() as usize });
    // The region is slots_in_region * SLOT_SIZE bytes from base (one memzone), valid while
    // the mempool lives, which `slots` keeps.
    // SAFETY: that region is the pool's for its life; MbufSlots keeps the ExternalSlots contract.
    let pool = unsafe { Pool::external("dpdk", base, slots_in_region, slots.clone()) };
    let pool = pool.map_err(|e| e.to_string())?;
    Ok(BUFS.get_or_init(|| DpdkBufs { mempool, slots, pool }))
}

/// Frames copied by the DPDK ports of the process (see [`DpdkPort::copies`]).
static RX_COPIES: AtomicU64 = AtomicU64::new(0);
static TX_COPIES: AtomicU64 = AtomicU64::new(0);

struct Shared {
    name: String,
    dev: EthDev,
    bufs: &'static DpdkBufs,
    rx_claims: RxClaims,
    tx_locks: Vec<TxLock>,
    /// After `dev` (fields drop in order): the device is free again once it is closed.
    _claim: DeviceClaim,
}

/// The devices open as a [`DpdkPort`] of this process: (device name, port name).
static OPEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// A device's place in [`OPEN`], given back when dropped (a failed open, or the port's last
/// handle gone and its device closed).
struct DeviceClaim(String);

impl DeviceClaim {
    /// Claims `device` for port `port`, unless a port of the process has it already.
    fn take(device: &str, port: &str) -> Result<DeviceClaim, PortError> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, owner)) = open.iter().find(|(d, _)| d == device) {
            return Err(PortError::DeviceInUse {
                port: port.to_string(),
                device: device.to_string(),
                owner: owner.clone(),
            });
        }
        open.push((device.to_string(), port.to_string()));
        Ok(DeviceClaim(device.to_string()))
    }
}

impl Drop for DeviceClaim {
    fn drop(&mut self) {
        OPEN.lock().unwrap_or_else(|e| e.into_inner()).retain(|(d, _)| *d != self.0);
    }
}

/// `devargs` with a PCI device named as DPDK names it ([`canonical_devargs`]), and the claim
/// of its device for port `port`: `03:00.1` and `0000:03:00.1` are one device, so the second
/// of them is refused as in use rather than probed again beside the running port.
fn claim_device(devargs: &str, port: &str) -> Result<(String, DeviceClaim), PortError> {
    let devargs = canonical_devargs(devargs)
        .map_err(|msg| PortError::Backend { port: port.to_string(), msg: format!("devargs: {msg}") })?;
    let claim = DeviceClaim::take(switchyard_bindings::ethdev::devargs_name(&devargs), port)?;
    Ok((devargs, claim))
}

/// A TX queue's lock, alone on its cache line: workers sending on different queues of one
/// port take their locks every burst, and must not pass one line between their cores.
#[derive(Default)]
#[repr(align(64))]
struct TxLock(Mutex<()>);

/// A DPDK ethdev port.
#[derive(Clone)]
pub struct DpdkPort {
    shared: Arc<Shared>,
}

/// A devarg that makes a driver attach external buffers to the mbufs it receives into
/// (`rte_pktmbuf_attach_extbuf`: net_vhost's `ext-buffer`, mlx5's multi-packet RX queues). Such
/// an mbuf of the pinned pool could never give that buffer back (DPDK keeps a pinned pool's
/// buffers in place), so these options are refused.
fn attaching_devarg(devargs: &str) -> Option<&str> {
    devargs.split(',').map(str::trim).find(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        matches!(k.trim(), "ext-buffer" | "mprq_en") && v.trim() != "0"
    })
}

fn backend(port: &str) -> impl Fn(switchyard_bindings::Error) -> PortError + '_ {
    move |e| PortError::Backend { port: port.to_string(), msg: e.to_string() }
}

impl DpdkPort {
    /// Probes `devargs` (a PCI address such as `0000:3b:02.1`, or a vdev string such as
    /// `net_pcap0,rx_pcap=in.pcap,infinite_rx=1`), configures and starts it. EAL must be up
    /// ([`Eal::init`]); a PCI device must be in its allow list.
    pub fn open(eal: &Eal, name: &str, devargs: &str, cfg: &DpdkPortConfig) -> Result<DpdkPort, PortError> {
        let err = backend(name);
        if let Some(arg) = attaching_devarg(devargs) {
            return Err(PortError::Backend {
                port: name.to_string(),
                msg: format!(
                    "{devargs}: `{arg}` makes the driver attach its own buffers to received mbufs, \
                     which the shared zero-copy pool cannot take (they would leak); leave it out"
                ),
            });
        }
        let (devargs, claim) = claim_device(devargs, name)?;
        let mut dev = EthDev::probe(eal, &devargs).map_err(&err)?;
        let info = dev.info().map_err(&err)?;
        let nrx = cfg.rx_queues.clamp(1, info.max_rx_queues.max(1));
        let ntx = cfg.tx_queues.clamp(1, info.max_tx_queues.max(1));
        let size = if cfg.pool_size != 0 {
            cfg.pool_size
        } else {
            let rings = u32::from(nrx) * u32::from(cfg.rx_desc) + u32::from(ntx) * u32::from(cfg.tx_desc);
            // Rings, plus a burst in flight per queue, plus the per-lcore caches, for several
            // ports: the pool is shared by all of them.
            let one = rings + (u32::from(nrx) + u32::from(ntx)) * MAX_BURST as u32 + 2048;
            one.saturating_mul(4).max(DEFAULT_POOL_SIZE)
        };
        let bufs =
            shared_bufs(eal, size).map_err(|msg| PortError::Backend { port: name.to_string(), msg })?;
        dev.configure(nrx, ntx).map_err(&err)?;
        for q in 0..nrx {
            dev.setup_rx_queue(q, cfg.rx_desc, &bufs.mempool).map_err(&err)?;
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
                bufs,
                rx_claims: RxClaims::new(name, nrx),
                tx_locks: (0..ntx).map(|_| TxLock::default()).collect(),
                _claim: claim,
            }),
        })
    }

    /// The device's own counters.
    pub fn device_stats(&self) -> Result<EthStats, PortError> {
        self.shared.dev.stats().map_err(backend(&self.shared.name))
    }

    /// Mbufs of the shared pool (all DPDK ports of the process) that are out: in the
    /// devices' rings, in flight, or held as [`PacketBuf`]s.
    pub fn mbufs_in_use(&self) -> u32 {
        self.shared.bufs.mempool.in_use()
    }

    /// The switchyard side of the shared zero-copy pool: the pool of every buffer received on
    /// a DPDK port.
    pub fn zero_copy_pool(&self) -> &Pool {
        &self.shared.bufs.pool
    }

    /// Frames copied so far by all DPDK ports of the process: `(rx, tx)`. RX copies only
    /// mbufs of foreign pools; TX copies buffers of pools other than the shared one.
    pub fn copies() -> (u64, u64) {
        (RX_COPIES.load(Ordering::Relaxed), TX_COPIES.load(Ordering::Relaxed))
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
        self.shared.rx_claims.release(self.q);
    }
}

impl RxQueue for DpdkRx {
    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let room = max.min(out.remaining_capacity()).min(MAX_BURST);
        if room == 0 {
            return 0;
        }
        // This handle is the only user of RX queue q (rx_claims), and the device is stopped
        // only when the last Arc<Shared>, ours included, is gone.
        // SAFETY: sole user of RX queue q on a device that outlives this call (above).
        let n = unsafe { self.shared.dev.rx_burst_shared(self.q, &mut self.mbufs[..room]) };
        if n == 0 {
            return 0;
        }
        // SAFETY: rx_burst handed us these n mbufs, and nothing else holds them.
        unsafe { take_mbufs::<true>(self.shared.bufs, &mut self.mbufs[..n], cache, out, drops) }
    }
}

/// Turns a burst of received mbufs into buffers on `out` (room for them all, as rx_burst asks
/// the device for no more): each mbuf of the shared pool, in one segment, with its own buffer
/// is adopted as is; any other is copied ([`rx_other`]) or dropped, and freed. Returns the
/// frames pushed.
///
/// With `PLAIN_FIRST` (what RX runs) the common case goes first, as one pass that sets the
/// burst's length once at its end ([`adopt_while_own`]), and the general loop takes over from
/// the first mbuf it leaves; without it the general loop takes every mbuf. Both decide every
/// mbuf alike (the property test `plain_first_decides_as_the_general_loop`).
///
/// # Safety
/// The mbufs are valid mbufs that the caller holds; all are handed over (adopted or freed).
#[inline(always)]
unsafe fn take_mbufs<const PLAIN_FIRST: bool>(
    bufs: &DpdkBufs,
    mbufs: &mut [*mut rte_mbuf],
    cache: &mut PoolCache,
    out: &mut Burst,
    drops: &mut DropTally,
) -> usize {
    // The shared pool is external (shared_bufs made it so).
    let Some(adopter) = bufs.pool.adopter() else { unreachable!("the shared DPDK pool is an external pool") };
    let slots = bufs.slots.map();
    let adopted = if PLAIN_FIRST {
        // SAFETY: the caller's mbufs; each is adopted here or left to the loop below.
        unsafe { adopt_while_own(&bufs.slots, adopter, mbufs, out) }
    } else {
        0
    };
    let mut got = adopted;
    // Mbufs not adopted as buffers are gathered at the front and freed in bulk below.
    let mut unused = 0;
    for i in adopted..mbufs.len() {
        let p = mbufs[i];
        // SAFETY: the caller handed us this mbuf, and nothing else holds it.
        if let Some(b) = unsafe { adopt_own(&slots, &adopter, p) } {
            out.push(b);
            got += 1;
            continue;
        }
        // SAFETY: as above; ManuallyDrop: it is freed in bulk below.
        let m = ManuallyDrop::new(unsafe { Mbuf::from_raw(p) });
        mbufs[unused] = p;
        unused += 1;
        got += rx_other(&m, cache, out, drops);
    }
    if unused != 0 {
        // SAFETY: these are mbufs we received and did not adopt; none is used after this.
        unsafe { free_bulk(&mut mbufs[..unused]) };
    }
    got
}

/// Adopts the mbufs at the front of `mbufs` as long as each is one of the shared pool's with
/// its own buffer ([`adopt_own`]), onto `out`; returns how many. It stops when `out` is full:
/// the caller gives it room for them all (rx_burst asks the device for no more).
/// Out of line, and with no call in its loop, so that no state of the loop has to outlive a call.
///
/// # Safety
/// The mbufs are valid mbufs that the caller holds; those adopted are handed over.
#[inline(never)]
unsafe fn adopt_while_own(
    slots: &MbufSlots,
    adopter: Adopter<'_>,
    mbufs: &[*mut rte_mbuf],
    out: &mut Burst,
) -> usize {
    // Made here, next to the loop, so that the compiler sees that an index below the map's
    // length is below the adopter's count as well (one check instead of two).
    let map = slots.map_upto(adopter.count());
    // SAFETY: valid mbufs the caller holds; the slot of each adopted is its own (own_slot)
    // and is handed over with it (contract).
    unsafe { adopter.adopt_while(mbufs, out, |p| own_window(&map, p)) }
}

/// What mbuf `p` holds, `(slot, data offset, data length)`, when it is one of the shared pool's,
/// in one segment, with its own buffer (see [`SlotMap::own_slot`]).
///
/// # Safety
/// `p` is a valid mbuf.
#[inline(always)]
unsafe fn own_window(slots: &SlotMap<'_>, p: *mut rte_mbuf) -> Option<(u32, u16, u16)> {
    // ManuallyDrop: only looked at.
    // SAFETY: a valid mbuf (contract).
    let m = ManuallyDrop::new(unsafe { Mbuf::from_raw(p) });
    if m.nb_segs() != 1 {
        return None;
    }
    let idx = slots.own_slot(p, m.buf_addr() as usize)?;
    // data_off and data_len are u16 (adopt checks that the window fits the slot).
    Some((idx, m.headroom() as u16, m.data_len() as u16))
}

/// Mbuf `p` as a buffer of the shared pool, when it is one of the pool's, in one segment, with
/// its own buffer (see [`SlotMap::own_slot`]); `None` (and `p` untouched) otherwise.
///
/// # Safety
/// `p` is a valid mbuf that the caller holds (just received) and hands over when this returns a
/// buffer.
#[inline(always)]
unsafe fn adopt_own(slots: &SlotMap<'_>, adopter: &Adopter<'_>, p: *mut rte_mbuf) -> Option<PacketBuf> {
    // SAFETY: a valid mbuf (contract).
    let (idx, head, len) = unsafe { own_window(slots, p) }?;
    // The mbuf is the caller's, handed over with the buffer (contract), and its buffer is slot
    // idx (own_slot); it stays allocated as the slot's owner until the buffer gives it back
    // (MbufSlots::free) or TX passes it on; nobody else holds slot idx, since only its mbuf's
    // holder can. adopt checks that the window fits the slot (it does: the mbuf's buffer is
    // the slot, buf_len == SLOT_SIZE).
    // SAFETY: slot idx is owned by this mbuf, which is handed over (above).
    unsafe { adopter.adopt(idx, head, len) }
}

/// An mbuf received that is not one of the shared pool's with its own buffer (another pool's,
/// a chain of segments, or a buffer a driver attached): its bytes are copied into a buffer of
/// the worker's pool (and counted), or it is dropped. Returns the frames pushed on `out` (0 or
/// 1); the caller frees the mbuf.
#[cold]
#[inline(never)]
fn rx_other(m: &Mbuf, cache: &mut PoolCache, out: &mut Burst, drops: &mut DropTally) -> usize {
    // A data window past the buffer (a driver's bug: DPDK promises otherwise) is no frame to
    // copy.
    if m.nb_segs() != 1 || !m.window_fits() {
        drops.add(DropReason::Oversize, 1);
        return 0;
    }
    let Some(mut b) = cache.alloc() else {
        drops.add(DropReason::NoBuffer, 1);
        return 0;
    };
    if b.extend_from_slice(m.data()).is_err() {
        drops.add(DropReason::Oversize, 1);
        cache.free(b);
        return 0;
    }
    RX_COPIES.fetch_add(1, Ordering::Relaxed);
    out.push(b);
    1
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
        if pkts.is_empty() {
            return 0;
        }
        let bufs = self.shared.bufs;
        let (slots, releaser) = (bufs.slots.map(), bufs.pool.releaser());
        // The common case first, in place: every buffer one of the shared pool's, whose mbuf
        // takes the frame's window; then those buffers give their slots over to the mbufs.
        let mut k = 0;
        for (b, slot) in pkts.iter().zip(self.mbufs.iter_mut()) {
            let Some((idx, head, len)) = releaser.window(b) else { break };
            let Some(p) = slots.mbuf(idx) else { break };
            // Slot idx is b's, so its owner, mbuf p, is allocated (MbufSlots contract) and
            // nobody else's; it is only written here, and passed on (below) or left to b.
            // SAFETY: mbuf p is allocated and ours (above); ManuallyDrop: b still owns it.
            let mut m = ManuallyDrop::new(unsafe { Mbuf::from_raw(p) });
            // The window is inside slot idx (head + len <= SLOT_SIZE, a buffer's invariant),
            // which is all of p's buffer, and p has one segment (the shared pool's invariant,
            // see the module documentation).
            // SAFETY: one segment, and the window within buf_len (above).
            unsafe { m.set_window_unchecked(head, len) };
            *slot = p;
            k += 1;
        }
        // The first k are the shared pool's (window above); their mbufs now hold the frames.
        releaser.release_front(pkts, k);
        let table = slots.table;
        for b in pkts.drain(..) {
            let m = match b.release_to(&bufs.pool) {
                Ok((idx, head, len)) => {
                    // release_to handed us slot idx, whose owner is mbuf table[idx], allocated
                    // (MbufSlots contract).
                    // SAFETY: mbuf table[idx] is allocated and ours alone now (above).
                    let mut m = unsafe { Mbuf::from_raw(table[idx as usize]) };
                    // Cannot fail: head + len <= SLOT_SIZE == buf_len and the mbuf has one
                    // segment (multi-segment mbufs are never adopted).
                    if !m.set_window(head, len) {
                        drops.add(DropReason::Oversize, 1);
                        continue;
                    }
                    m
                }
                Err(b) => match tx_copy(bufs, b, cache, drops) {
                    Some(m) => m,
                    None => continue,
                },
            };
            self.mbufs[k] = m.into_raw();
            k += 1;
        }
        if k == 0 {
            return 0;
        }
        let sent = {
            let _guard =
                self.shared.tx_locks[usize::from(self.q)].0.lock().unwrap_or_else(|e| e.into_inner());
            // The first k pointers are valid mbufs we own; the lock serialises TX queue q; the
            // device is not stopped while we hold an Arc<Shared>.
            // SAFETY: owned mbufs, TX queue q serialised by the lock, device alive (above).
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

/// A buffer of another pool leaving through a DPDK port: copied into a fresh mbuf of the
/// shared pool (and counted), then freed; `None` (counted as a drop) when no mbuf is free or
/// the frame does not fit.
#[cold]
#[inline(never)]
fn tx_copy(bufs: &DpdkBufs, b: PacketBuf, cache: &mut PoolCache, drops: &mut DropTally) -> Option<Mbuf> {
    let Ok(mut m) = bufs.mempool.alloc() else {
        drops.add(DropReason::TxFull, 1);
        cache.free(b);
        return None;
    };
    let copied = m.set_data(b.data());
    cache.free(b);
    if copied {
        TX_COPIES.fetch_add(1, Ordering::Relaxed);
        Some(m)
    } else {
        drops.add(DropReason::Oversize, 1);
        None
    }
}

impl PortBackend for DpdkPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn rx_queue_count(&self) -> u16 {
        self.shared.rx_claims.count()
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.shared.rx_claims.claim(q)?;
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
    use switchyard_bindings::EalOptions;
    use switchyard_dataplane::buffer::{Pool, DATA_ROOM, HEADROOM};
    use switchyard_dataplane::port::burst_of;

    /// The DPDK tests of this module share the process's mbuf pool and copy counters; they
    /// run one at a time so that the counts they check are theirs.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static L: Mutex<()> = Mutex::new(());
        L.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process's EAL, or `None` (the skip reported) when DPDK cannot run here at all
    /// (`dpdk-testpmd`'s bare self-check fails too); an EAL failure where DPDK runs fails.
    fn eal() -> Option<&'static Eal> {
        let opts = EalOptions { no_huge: Some(true), memory_mb: Some(256), ..EalOptions::default() };
        match Eal::init(opts) {
            Ok(e) => Some(e),
            Err(e) => {
                testkit::fail_or_skip(&testkit::current_test(), "Eal::init", &e, testkit::probe::testpmd());
                None
            }
        }
    }

    #[test]
    fn ring_loopback_through_the_port_trait() {
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
        let port = DpdkPort::open(eal, "p0", "net_ring_dp0", &cfg).expect("open");
        let start = port.mbufs_in_use();
        let (_, tx_copies) = DpdkPort::copies();
        assert!(port.link_up());
        let pool = Pool::new("dpdk-test", 256).unwrap();
        let mut cache = pool.cache();
        let mut rx = port.open_rx(0).unwrap();
        assert!(matches!(port.open_rx(0), Err(PortError::QueueTaken { .. })));
        assert!(matches!(port.open_rx(1), Err(PortError::NoSuchQueue { .. })));
        let mut tx = port.open_tx(3).unwrap();
        let frames: Vec<Vec<u8>> =
            (0..20u8).map(|i| (0..60 + usize::from(i)).map(|j| (j as u8) ^ i).collect()).collect();
        let mut burst = burst_of(&mut cache, &frames).unwrap();
        let mut drops = DropTally::default();
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
        assert!(drops.is_zero());
        let mut out = Burst::new();
        let mut tries = 0;
        while out.len() < frames.len() && tries < 1000 {
            rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut out, MAX_BURST);
            tries += 1;
        }
        let got: Vec<Vec<u8>> = out.iter().map(|b| b.data().to_vec()).collect();
        assert_eq!(got, frames);
        assert_eq!(port.device_stats().unwrap().opackets, frames.len() as u64);
        // Buffers of another pool are copied on TX; what RX gives is the mbufs' own buffers.
        assert_eq!(DpdkPort::copies().1 - tx_copies, frames.len() as u64);
        assert!(out.iter().all(|b| port.zero_copy_pool().owns(b)));
        assert_eq!(port.mbufs_in_use(), start + frames.len() as u32, "held by the buffers");
        assert_eq!(pool.in_use(), 0, "the copies' sources went back to their pool");
        for b in out.drain(..) {
            cache.free(b);
        }
        assert_eq!(port.mbufs_in_use(), start, "every mbuf came back");
        drop((rx, tx, cache));
        assert_eq!(pool.in_use(), 0);
    }

    fn receive(rx: &mut Box<dyn RxQueue>, cache: &mut PoolCache, n: usize) -> Burst {
        let mut out = Burst::new();
        let mut drops = DropTally::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while out.len() < n && std::time::Instant::now() < deadline {
            rx.rx_burst(RxCtx::new(cache, &mut drops), &mut out, MAX_BURST);
        }
        assert!(drops.is_zero());
        out
    }

    /// Frames received on one DPDK port and sent on another (and edited in place on the way)
    /// travel in the same buffers: no copy, byte for byte, and every mbuf comes back.
    #[test]
    fn zero_copy_between_dpdk_ports() {
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
        let a = DpdkPort::open(eal, "za", "net_ring_za", &cfg).expect("open a");
        let b = DpdkPort::open(eal, "zb", "net_ring_zb", &cfg).expect("open b");
        let start = a.mbufs_in_use();
        let pool = Pool::new("zc-test", 256).unwrap();
        let mut cache = pool.cache();
        let (mut arx, mut atx) = (a.open_rx(0).unwrap(), a.open_tx(0).unwrap());
        let (mut brx, mut btx) = (b.open_rx(0).unwrap(), b.open_tx(0).unwrap());
        let frames: Vec<Vec<u8>> =
            (0..32u8).map(|i| (0..60 + usize::from(i) * 40).map(|j| (j as u8) ^ i).collect()).collect();
        let mut burst = burst_of(&mut cache, &frames).unwrap();
        let mut drops = DropTally::default();
        assert_eq!(atx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
        let mut got = receive(&mut arx, &mut cache, frames.len());
        let addrs: Vec<usize> = got.iter().map(|x| x.data().as_ptr() as usize).collect();
        assert!(got.iter().all(|x| a.zero_copy_pool().owns(x)));
        let copies = DpdkPort::copies();
        // a -> b, tagged on the way (in place, in the headroom).
        for x in got.iter_mut() {
            x.push_vlan(0x0123).unwrap();
        }
        assert_eq!(btx.tx_burst(&mut got, &mut cache, &mut drops), frames.len());
        assert!(drops.is_zero());
        let mut back = receive(&mut brx, &mut cache, frames.len());
        assert_eq!(DpdkPort::copies(), copies, "nothing was copied");
        let tagged: Vec<Vec<u8>> =
            frames.iter().map(|f| [&f[..12], &[0x81, 0x00, 0x01, 0x23][..], &f[12..]].concat()).collect();
        assert_eq!(back.iter().map(|x| x.data().to_vec()).collect::<Vec<_>>(), tagged);
        let moved: Vec<usize> = back.iter().map(|x| x.data().as_ptr() as usize + 4).collect();
        assert_eq!(moved, addrs, "the same buffers came back (4 bytes earlier for the tag)");
        // b -> a untagged, then dropped in a worker cache of another pool.
        for x in back.iter_mut() {
            x.pop_vlan().unwrap();
        }
        assert_eq!(atx.tx_burst(&mut back, &mut cache, &mut drops), frames.len());
        let again = receive(&mut arx, &mut cache, frames.len());
        assert_eq!(again.iter().map(|x| x.data().to_vec()).collect::<Vec<_>>(), frames);
        assert_eq!(again.iter().map(|x| x.data().as_ptr() as usize).collect::<Vec<_>>(), addrs);
        assert_eq!(DpdkPort::copies(), copies, "nothing was copied");
        assert_eq!(a.mbufs_in_use(), start + frames.len() as u32);
        for x in again {
            cache.free(x);
        }
        assert_eq!(a.mbufs_in_use(), start, "every mbuf came back");
        drop((arx, atx, brx, btx, a, b, cache));
        assert_eq!(pool.in_use(), 0);
    }

    /// DPDK <-> other port types: an in-memory ring port's frames go out of a DPDK port
    /// (copied: they are not in mbufs) and a DPDK port's frames out of the ring port
    /// (moved), byte for byte; dropped or freed anywhere, every mbuf comes back.
    #[test]
    fn mixing_with_other_port_types() {
        use switchyard_dataplane::port::ring::RingPort;
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
        let d = DpdkPort::open(eal, "mx", "net_ring_mx", &cfg).expect("open");
        let start = d.mbufs_in_use();
        let (ring, peer) = RingPort::new("r", 256);
        let pool = Pool::new("mix-test", 256).unwrap();
        let mut cache = pool.cache();
        let (mut drx, mut dtx) = (d.open_rx(0).unwrap(), d.open_tx(0).unwrap());
        let (mut rrx, mut rtx) = (ring.open_rx(0).unwrap(), ring.open_tx(0).unwrap());
        let frames: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 64 + usize::from(i)]).collect();
        for f in &frames {
            peer.inject(cache.alloc_copy(f).unwrap()).unwrap();
        }
        // ring -> dpdk
        let mut drops = DropTally::default();
        let mut burst = Burst::new();
        rrx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, MAX_BURST);
        assert_eq!(burst.len(), frames.len());
        let (_, tx0) = DpdkPort::copies();
        assert_eq!(dtx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
        assert_eq!(DpdkPort::copies().1 - tx0, frames.len() as u64);
        // dpdk -> ring
        let mut got = receive(&mut drx, &mut cache, frames.len());
        assert!(got.iter().all(|x| d.zero_copy_pool().owns(x)));
        let addrs: Vec<usize> = got.iter().map(|x| x.data().as_ptr() as usize).collect();
        assert_eq!(rtx.tx_burst(&mut got, &mut cache, &mut drops), frames.len());
        let mut out = Vec::new();
        while let Some(x) = peer.collect() {
            out.push(x);
        }
        assert_eq!(out.iter().map(|x| x.data().to_vec()).collect::<Vec<_>>(), frames);
        assert_eq!(out.iter().map(|x| x.data().as_ptr() as usize).collect::<Vec<_>>(), addrs);
        assert_eq!(d.mbufs_in_use(), start + frames.len() as u32);
        // Half dropped (slow path), half freed into the worker's cache of another pool.
        let half = out.split_off(frames.len() / 2);
        drop(out);
        for x in half {
            cache.free(x);
        }
        assert_eq!(d.mbufs_in_use(), start, "every mbuf came back");
        assert!(drops.is_zero());
        drop((drx, dtx, rrx, rtx, cache));
        assert_eq!(pool.in_use(), 0);
    }

    /// A port stopped and reopened many times, with buffers of it still held across the
    /// restarts, leaves the shared pool as it found it.
    #[test]
    fn restarts_leave_the_shared_pool_whole() {
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 128, tx_desc: 128, ..Default::default() };
        let pool = Pool::new("restart-test", 64).unwrap();
        let mut cache = pool.cache();
        let first = DpdkPort::open(eal, "rs", "net_ring_rs", &cfg).expect("open");
        let start = first.mbufs_in_use();
        drop(first);
        let mut held = Vec::new();
        for i in 0..20u8 {
            let p = DpdkPort::open(eal, "rs", "net_ring_rs", &cfg).expect("reopen");
            let (mut rx, mut tx) = (p.open_rx(0).unwrap(), p.open_tx(0).unwrap());
            let mut burst = Burst::new();
            burst.push(cache.alloc_copy(&[i; 60]).unwrap());
            let mut drops = DropTally::default();
            assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 1);
            let mut got = receive(&mut rx, &mut cache, 1);
            held.push(got.pop().unwrap());
        }
        // The buffers outlive the ports that received them.
        assert_eq!(held.iter().map(|b| b.data()[0]).collect::<Vec<_>>(), (0..20).collect::<Vec<u8>>());
        let p = DpdkPort::open(eal, "rs", "net_ring_rs", &cfg).expect("reopen");
        assert_eq!(p.mbufs_in_use(), start + 20);
        held.clear();
        assert_eq!(p.mbufs_in_use(), start, "every mbuf came back");
    }

    /// What the PacketBuf layer costs: net_null RX -> TX on one thread, through the port trait
    /// (zero copy: mbufs of the shared pool wrapped as PacketBufs and back; the copy counters
    /// must not move) and straight mbuf-to-mbuf on a plain pool. `cargo test --release -p
    /// switchyard-dataplane --features dpdk copy_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn copy_cost() {
        let _serial = serial();
        let Some(eal) = eal() else { return };
        const N: usize = 5_000_000;
        let cfg = DpdkPortConfig { rx_desc: 512, tx_desc: 512, ..Default::default() };
        let port = DpdkPort::open(eal, "n0", "net_null_cc0,size=64,copy=0", &cfg).unwrap();
        let pool = Pool::new("copy-cost", 4096).unwrap();
        let mut cache = pool.cache();
        let (mut rx, mut tx) = (port.open_rx(0).unwrap(), port.open_tx(0).unwrap());
        let mut drops = DropTally::default();
        let mut burst = Burst::new();
        let copies = DpdkPort::copies();
        let t = std::time::Instant::now();
        let mut done = 0;
        while done < N {
            rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
            done += tx.tx_burst(&mut burst, &mut cache, &mut drops);
        }
        let copied = t.elapsed().as_secs_f64();
        drop((rx, tx));
        assert_eq!(DpdkPort::copies(), copies, "net_null -> net_null copies nothing");

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
            "net_null 64B rx->tx, one thread: via PacketBuf (zero copy) {:.1} ns/frame ({:.2} Mpps), \
             mbuf passthrough {:.1} ns/frame ({:.2} Mpps): the PacketBuf layer costs {:.1} ns/frame",
            ns(copied),
            N as f64 / copied / 1e6,
            ns(raw),
            N as f64 / raw / 1e6,
            ns(copied) - ns(raw)
        );
    }

    #[test]
    fn slot_of_offset_divides_exactly_the_multiples_of_the_slot_size() {
        let s = SLOT_SIZE as u64;
        let above = u64::MAX / s;
        let check = |off: u64| {
            let got = slot_of_offset(off);
            if off.is_multiple_of(s) {
                assert_eq!(got, off / s, "{off:#x}");
            } else {
                assert!(got > above, "{off:#x} is not a multiple of {s}, got {got}");
            }
        };
        // Every offset of the first slots, the last multiples below 2^64 and their neighbours,
        // offsets "below" the region (a buffer address under the base wraps around), and a
        // spread of others.
        (0..64 * s + 1).for_each(check);
        for k in [above - 2, above - 1, above] {
            (k * s - 200..=(k * s).saturating_add(200)).for_each(check);
        }
        (1..20_000u64).map(|d| 0u64.wrapping_sub(d)).for_each(check);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x);
            check(x - x % s);
        }
    }

    /// RX adopts a buffer only when it is the mbuf's own slot: the right mbuf at the start of
    /// its slot, nothing else (another mbuf's slot, an offset inside a slot, memory outside
    /// the region, as a driver-attached buffer would be).
    #[test]
    fn only_an_mbufs_own_slot_is_adopted() {
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 128, tx_desc: 128, ..Default::default() };
        let port = DpdkPort::open(eal, "os", "net_ring_os", &cfg).expect("open");
        let slots = &*port.shared.bufs.slots;
        let (base, n) = (slots.base, slots.table.len());
        for i in [0, 1, n / 2, n - 1] {
            let p = slots.table[i];
            assert_eq!(slots.own_slot(p, base + i * SLOT_SIZE), Some(i as u32));
            assert_eq!(slots.own_slot(p, base + i * SLOT_SIZE + 64), None, "inside the slot");
            assert_eq!(slots.own_slot(p, base + ((i + 1) % n) * SLOT_SIZE), None, "another slot");
            assert_eq!(slots.own_slot(p, base + n * SLOT_SIZE), None, "past the region");
            assert_eq!(slots.own_slot(p, base.wrapping_sub(SLOT_SIZE)), None, "before the region");
            assert_eq!(slots.own_slot(p, 0x1000), None, "elsewhere");
            let other = slots.table[(i + 1) % n];
            assert_eq!(slots.own_slot(other, base + i * SLOT_SIZE), None, "another mbuf");
        }
    }

    /// One mbuf of a random RX burst: which pool it is from, whether a second segment is
    /// chained to it, and its window and bytes.
    #[derive(Debug, Clone)]
    struct MbufSpec {
        own: bool,
        chained: bool,
        head: u16,
        len: u16,
        fill: u8,
    }

    fn mbuf_spec() -> impl proptest::strategy::Strategy<Value = MbufSpec> {
        use proptest::prelude::*;
        let slot = SLOT_SIZE as u16;
        // Mostly what drivers give (the default headroom, a frame), and any window at all.
        let window = prop_oneof![
            3 => (Just(128u16), 0..=2048u16),
            1 => (0..=slot).prop_flat_map(move |h| (Just(h), 0..=slot - h)),
        ];
        (prop::bool::weighted(0.7), prop::bool::weighted(0.15), window, any::<u8>())
            .prop_map(|(own, chained, (head, len), fill)| MbufSpec { own, chained, head, len, fill })
    }

    /// An mbuf as `spec` says, from the shared pool (`own`) or the other one, its bytes a
    /// pattern of `fill`; the second segment of a chain is a plain 60-byte one.
    fn make_mbuf(spec: &MbufSpec, own: &Mempool, other: &Mempool) -> *mut rte_mbuf {
        let pool = if spec.own { own } else { other };
        let mut m = pool.alloc().expect("an mbuf");
        assert!(m.set_window(spec.head, spec.len));
        for (i, b) in m.data_mut().iter_mut().enumerate() {
            *b = spec.fill ^ (i as u8);
        }
        let head = m.into_raw();
        if spec.chained {
            let mut t = pool.alloc().expect("an mbuf");
            assert!(t.set_window(128, 60));
            let tail = t.into_raw();
            // SAFETY: both mbufs are ours and valid; this is rte_pktmbuf_chain's bookkeeping
            // (next, nb_segs, pkt_len), which rte_pktmbuf_free_bulk walks to free both.
            unsafe {
                (*head).next = tail;
                (*head).nb_segs = 2;
                (*head).pkt_len += 60;
            }
        }
        head
    }

    /// The DPDK RX path's two loops decide alike: over random bursts mixing mbufs of the
    /// shared pool and of another pool, single and chained, with any window, RX as it runs
    /// (the plain loop, then the general one from the first mbuf it leaves) and the general
    /// loop alone give the same frames in the same order, the same drops and the same copies,
    /// and both match what each mbuf should become: one of the shared pool in one segment is
    /// adopted as is (its window kept), one of another pool is copied while the worker's pool
    /// has a buffer (else `no_buffer`) and the frame fits one (else `oversize`), a chain is
    /// dropped as `oversize`. No mbuf is left allocated.
    #[test]
    fn plain_first_decides_as_the_general_loop() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestCaseError, TestRunner};
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let cfg = DpdkPortConfig { rx_desc: 128, tx_desc: 128, ..Default::default() };
        let port = DpdkPort::open(eal, "rxp", "net_ring_rxp", &cfg).expect("open");
        let bufs = port.shared.bufs;
        let other = Mempool::new(eal, "sy_rxprop", 1024, 0, Mempool::DEFAULT_DATA_ROOM).expect("a mempool");
        // The workers' pools the copies go to, one per run.
        let pools = [Pool::new("rxprop-a", 64).unwrap(), Pool::new("rxprop-b", 64).unwrap()];
        let strategy = (prop::collection::vec(mbuf_spec(), 1..=MAX_BURST), 0..=8usize);
        let mut runner =
            TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        runner
            .run(&strategy, |(specs, spare)| {
                let own_before = bufs.mempool.in_use();
                // What each mbuf must become: Some((zero copy, headroom, bytes)), or a drop.
                let mut want = Vec::new();
                let (mut oversize, mut no_buffer, mut copies, mut left) = (0u32, 0u32, 0u64, spare);
                for s in &specs {
                    let bytes: Vec<u8> = (0..s.len).map(|i| s.fill ^ (i as u8)).collect();
                    // rx_other's order: a chain, then a buffer to copy into, then its room.
                    if s.chained {
                        oversize += 1;
                    } else if s.own {
                        want.push((true, usize::from(s.head), bytes));
                    } else if left == 0 {
                        no_buffer += 1;
                    } else if usize::from(s.len) > DATA_ROOM {
                        oversize += 1;
                    } else {
                        left -= 1;
                        copies += 1;
                        want.push((false, HEADROOM, bytes));
                    }
                }
                let mut results = Vec::new();
                for (run, pool) in pools.iter().enumerate() {
                    let mut cache = pool.cache();
                    // Exactly `spare` buffers left to copy into.
                    let mut held: Vec<PacketBuf> = std::iter::from_fn(|| cache.alloc()).collect();
                    for b in held.drain(..spare) {
                        cache.free(b);
                    }
                    let mut mbufs: Vec<*mut rte_mbuf> =
                        specs.iter().map(|s| make_mbuf(s, &bufs.mempool, &other)).collect();
                    let mut out = Burst::new();
                    let mut drops = DropTally::default();
                    let (rx_copies, _) = DpdkPort::copies();
                    // SAFETY: the mbufs were just made and are handed over.
                    let n = unsafe {
                        if run == 0 {
                            take_mbufs::<true>(bufs, &mut mbufs, &mut cache, &mut out, &mut drops)
                        } else {
                            take_mbufs::<false>(bufs, &mut mbufs, &mut cache, &mut out, &mut drops)
                        }
                    };
                    let got: Vec<(bool, usize, Vec<u8>)> =
                        out.iter().map(|b| (bufs.pool.owns(b), b.headroom(), b.data().to_vec())).collect();
                    let copied = DpdkPort::copies().0 - rx_copies;
                    let tally =
                        (drops.get(DropReason::Oversize), drops.get(DropReason::NoBuffer), drops.total());
                    for b in out.drain(..).chain(held) {
                        cache.free(b);
                    }
                    drop(cache);
                    prop_assert_eq!(n, got.len());
                    prop_assert_eq!(pool.in_use(), 0);
                    prop_assert_eq!(bufs.mempool.in_use(), own_before, "an mbuf left allocated");
                    results.push((got, tally, copied));
                }
                let want = (want, (oversize, no_buffer, oversize + no_buffer), copies);
                prop_assert_eq!(&results[0], &want, "plain loop first");
                prop_assert_eq!(&results[1], &want, "general loop alone");
                Ok::<(), TestCaseError>(())
            })
            .unwrap();
        drop(port);
    }

    #[test]
    fn buffer_attaching_devargs_are_refused() {
        assert_eq!(attaching_devarg("net_vhost0,iface=/tmp/s,ext-buffer=1"), Some("ext-buffer=1"));
        assert_eq!(attaching_devarg("0000:3b:00.0,mprq_en=1,rxqs_min_mprq=1"), Some("mprq_en=1"));
        assert_eq!(attaching_devarg("net_vhost0,iface=/tmp/s,ext-buffer=0"), None);
        assert_eq!(attaching_devarg("net_pcap0,rx_pcap=a.pcap,infinite_rx=1"), None);
        let Some(eal) = eal() else { return };
        let _g = serial();
        let e = DpdkPort::open(
            eal,
            "vm",
            "net_vhost9,iface=/tmp/sy-never.sock,ext-buffer=1",
            &DpdkPortConfig::default(),
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains("ext-buffer=1"), "{e}");
    }

    /// One PCI device spelled two ways (with and without the domain, upper- and lower-case
    /// hex) is one claim: the second spelling is refused as in use, naming the first port,
    /// before anything could probe it; a malformed address is refused naming `devargs`. No
    /// EAL needed: the claim comes before the device is touched.
    #[test]
    fn a_pci_device_spelled_two_ways_is_claimed_once() {
        let _serial = serial();
        let (devargs, held) = claim_device("3B:02.1,txq_inline=0", "up0").expect("first claim");
        assert_eq!(devargs, "0000:3b:02.1,txq_inline=0");
        for other in ["0000:3b:02.1", "0000:3B:02.1", "3b:02.1,n_rxq=2"] {
            match claim_device(other, "up1") {
                Err(PortError::DeviceInUse { device, owner, .. }) => {
                    assert_eq!((device.as_str(), owner.as_str()), ("0000:3b:02.1", "up0"), "{other}")
                }
                r => panic!("{other}: {:?}", r.map(|(d, _)| d)),
            }
        }
        drop(held);
        drop(claim_device("3b:02.1", "up1").expect("free again once the first claim is gone"));
        match claim_device("3b:02.9", "up2") {
            Err(e) => assert!(e.to_string().contains("devargs: \"3b:02.9\" is not a PCI address"), "{e}"),
            Ok((d, _)) => panic!("accepted as {d}"),
        }
    }

    #[test]
    fn bad_devargs_name_the_device() {
        let _serial = serial();
        let Some(eal) = eal() else { return };
        let e = DpdkPort::open(eal, "up0", "net_bogus7", &DpdkPortConfig::default()).err().unwrap();
        assert!(e.to_string().contains("net_bogus7"), "{e}");
    }
}
