//! The split virtqueue, device side: taking the guest's transmitted frames out of its TX
//! rings and copying the switch's frames into the buffers of its RX rings (mergeable RX
//! buffers), with notification suppression and event-idx. With offloads agreed, TX super-frames
//! are segmented on the way in, and towards a guest that takes them ([`RxGso`]) runs of TCP
//! segments are merged into super-frames on the way out; either way every guest buffer is
//! written through the same checked placement, never past a descriptor's length.
//!
//! Every value read from guest memory is untrusted. The checks, and what a failure costs:
//! - a descriptor whose range is not inside the memory table, whose address + length
//!   overflows, whose direction is wrong (a writable descriptor in a TX chain, a read-only one
//!   in an RX chain), that is INDIRECT (not offered), or a chain of more than [`MAX_CHAIN`]
//!   descriptors (or than the queue holds: a loop) or that names a descriptor beyond the
//!   table: the frame is dropped and counted as `vhost_invalid_desc`, and the chain is
//!   returned to the guest with length 0;
//! - towards the guest, a frame that walks more than [`MAX_EMPTY_DESCS`] zero-length
//!   descriptors across the RX chains it takes (they hold no buffer, so [`MAX_CHAIN`] and
//!   [`MAX_SEGS`] alone let a frame walk 64 chains of 256; with the budget an attempt to place
//!   it reads at most `MAX_EMPTY_DESCS + MAX_SEGS + 1`, and a burst at most about 104 such
//!   attempts: 64 frames, 32 merged runs tried whole before segment by segment, 8 retries
//!   when the ring runs out): dropped as `vhost_invalid_desc`, every chain it took returned
//!   with length 0, and the next attempt has a budget of its own;
//! - an available index more than the queue size ahead of ours, or a head index beyond the
//!   table: the ring's state cannot be trusted, so the queue is marked broken (counted once as
//!   `vhost_ring_broken`, then every frame sent to it) until the frontend sets it up again.
//!
//! All guest memory is touched through [`super::mem`], which checks every access again.

use super::mem::{Area, DirtyLog, GuestMemory, MemError, Span};
use super::sys;
use arrayvec::ArrayVec;
use std::fs::File;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use switchyard_dataplane::buffer::{PacketBuf, PoolCache, DATA_ROOM};
use switchyard_dataplane::port::{Burst, DropTally, RxCtx, MAX_BURST};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::offload::{complete_checksum, Segmenter, VnetGso, VnetHdrRepr, VNET_HDR_LEN};
use switchyard_dataplane::wire::tcp_merge::{merge_verified_tcp_run, TcpMerge};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
pub const USED_F_NO_NOTIFY: u16 = 1;
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Largest queue a frontend may set up (SET_VRING_NUM refuses more). The split ring allows
/// 32768, but a descriptor chain may be as long as the queue and every entry is a guest-chosen
/// chain walked by a worker, so the queue size bounds the work one burst may take; QEMU's
/// virtio-net never sets more than 1024 (`VIRTQUEUE_MAX_SIZE`, the largest `rx_queue_size`
/// and `tx_queue_size` it accepts, which KubeVirt does not exceed).
pub const MAX_QUEUE_SIZE: u32 = 1024;
/// The most descriptors one chain may have; a longer chain is invalid (`vhost_invalid_desc`,
/// returned to the guest with length 0). Zero-length descriptors pass every other limit, so
/// without this bound a chain could walk the whole queue. Real chains are far shorter: Linux
/// virtio-net sends a TX frame in at most `MAX_SKB_FRAGS + 2` descriptors (19 by default, 47
/// with `CONFIG_MAX_SKB_FRAGS` at its largest, 45), posts mergeable RX buffers one descriptor
/// each and "big packet" RX buffers in `MAX_SKB_FRAGS + 2`; DPDK's vhost library refuses a
/// chain of more than 256 buffers (`BUF_VECTOR_MAX`), so no guest that works behind OVS-DPDK
/// sends longer. 256: DPDK's bound, more than five times Linux's longest.
pub const MAX_CHAIN: u16 = 256;
/// Most guest buffer segments one frame may be copied into.
pub const MAX_SEGS: usize = 64;
/// The most zero-length descriptors one frame towards a guest may walk across the RX chains
/// it takes; at one more the frame is dropped as `vhost_invalid_desc`, every chain it took
/// returned with length 0. [`MAX_CHAIN`] bounds one chain and [`MAX_SEGS`] the descriptors
/// that hold a buffer, but a zero-length descriptor holds nothing: without this budget a guest
/// whose chains are 255 zero-length descriptors and a 1-byte buffer makes every frame walk 64
/// chains of 256 (16,384 descriptor reads). With it an attempt to place a frame reads at most
/// `MAX_EMPTY_DESCS + MAX_SEGS + 1` descriptors (the last one ends it); a frame is tried again
/// when the guest's ring runs out (at most [`TX_RETRIES`] a burst), and a merged run that
/// does not fit goes again segment by segment, each attempt with a budget of its own. Real guests never come
/// near it: Linux virtio-net and DPDK virtio-user post no zero-length RX descriptors (Linux:
/// mergeable buffers one descriptor each, a 64 KiB super-frame over 4 KiB buffers taking 17
/// chains of 1; "big packet" buffers one chain of at most `MAX_SKB_FRAGS + 2`, 47). 256: as
/// many as the longest chain allowed. Only zero-length descriptors are counted, in the branch
/// that meets them, so that a real guest's chains are walked with no extra work.
pub const MAX_EMPTY_DESCS: u32 = MAX_CHAIN as u32;
/// The largest frame a guest may hand over for segmentation: an IP packet of 64 KiB behind an
/// Ethernet header and two VLAN tags, rounded up. A longer chain is dropped as `oversize`.
pub const GSO_MAX_FRAME: usize = 65536 + 64;
/// How many times a burst towards a guest whose RX ring filled up re-reads the ring before
/// dropping the rest (OVS's `tx-retries` default).
pub const TX_RETRIES: u32 = 8;

/// How a ring is set up (from the frontend's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    pub num: u16,
    /// Frontend virtual addresses of the three parts.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Guest physical address of the used ring, when its writes must be logged.
    pub used_log_gpa: Option<u64>,
    /// Where the device starts (SET_VRING_BASE).
    pub base: u16,
    pub event_idx: bool,
    /// 12 (VERSION_1 or MRG_RXBUF) or 10 bytes.
    pub hdr_len: usize,
    pub mrg_rxbuf: bool,
    /// VIRTIO_F_IN_ORDER was agreed: the driver's descriptors are used (and so posted) in
    /// ring order, which lets us fetch them before we have read the available ring.
    pub in_order: bool,
    /// A guest TX ring whose headers may ask for offloads (VIRTIO_NET_F_CSUM and the HOST_TSO
    /// features were agreed): checksums are finished and super-frames segmented on the way in.
    pub tx_offload: bool,
    /// A guest RX ring that takes TCP super-frames ([`RxGso`]); none without mergeable RX
    /// buffers and GUEST_CSUM.
    pub rx_gso: RxGso,
}

/// Which TCP super-frames a guest RX ring takes: GUEST_TSO4 and GUEST_TSO6 agreed, with
/// GUEST_CSUM (which they require) and mergeable RX buffers (without them a guest that agreed
/// to TSO posts 64 KiB buffers, and this device writes no super-frames there: delivering
/// segments is always allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxGso {
    pub tcpv4: bool,
    pub tcpv6: bool,
}

impl RxGso {
    /// Whether any super-frame may be written.
    pub fn any(self) -> bool {
        self.tcpv4 || self.tcpv6
    }

    /// Whether a merge of this type may be written.
    fn takes(self, m: &TcpMerge) -> bool {
        match VnetHdrRepr::parse(m.vnet_hdr()).gso_type {
            VnetGso::TCPV4 => self.tcpv4,
            VnetGso::TCPV6 => self.tcpv6,
            _ => false,
        }
    }
}

/// Super-frames written into guest RX buffers: how many, and of how many segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMerges {
    pub frames: u64,
    pub segments: u64,
}

#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: u64,
    len: u32,
}

enum ChainError {
    Invalid,
    TooLong,
}

enum Place {
    Done,
    NoRoom,
    Invalid,
    TooBig,
    Broken,
    /// A super-frame needs more guest buffers than one frame may take ([`MAX_SEGS`]): nothing
    /// was consumed; its segments go one by one.
    Split,
}

/// One guest RX burst's progress: the guest's available index as last read, frames delivered,
/// why the rest is dropped (once the guest stopped taking frames), retries spent.
struct Delivery {
    avail: u16,
    sent: usize,
    give_up: Option<DropReason>,
    retries: u32,
}

/// The virtio-net header of a frame that asks for nothing (flags 0: the frame is finished).
const PLAIN_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// One running split ring.
pub struct Vring {
    mem: Arc<GuestMemory>,
    desc: Area,
    avail: Area,
    used: Area,
    num: u16,
    last_avail: u16,
    last_used: u16,
    event_idx: bool,
    hdr_len: usize,
    mrg: bool,
    in_order: bool,
    log: Option<Arc<DirtyLog>>,
    used_log_gpa: Option<u64>,
    call: Option<Arc<File>>,
    /// The guest's kick eventfd (SET_VRING_KICK): an idle worker sleeps on it. Only ever
    /// read: the frontend (QEMU) reads it too when it stops the ring, and handles the queue
    /// itself if it finds it signalled, so we must never signal it.
    kick: Option<Arc<File>>,
    /// Whether we asked the guest to kick (a worker sleeps on `kick`).
    kicks_requested: bool,
    signalled_used: u16,
    signalled_valid: bool,
    broken: Option<&'static str>,
    /// Offload requests in the guest's headers are carried out (see [`RingConfig::tx_offload`]).
    tx_offload: bool,
    /// With `tx_offload`: room for one super-frame ([`GSO_MAX_FRAME`]), allocated with the
    /// ring. The frame is copied out of guest memory once, so that the guest cannot change
    /// the headers between their check and their use; empty otherwise.
    scratch: Box<[u8]>,
    /// The super-frame in `scratch` (its length) being cut into segments; it may take several
    /// bursts. Its descriptor chain went back to the guest when it was copied.
    pending: Option<(Segmenter, usize)>,
    /// Guest RX: which super-frames runs of TCP segments are merged into.
    rx_gso: RxGso,
    /// Super-frames written since [`Vring::take_merges`] last asked.
    merges: RxMerges,
}

impl std::fmt::Debug for Vring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vring")
            .field("num", &self.num)
            .field("last_avail", &self.last_avail)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish()
    }
}

/// The used-event test of the virtio spec: whether moving the used index from `old` to `new`
/// crossed the guest's `event`.
#[inline]
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Vring {
    /// Translates a ring's addresses and starts it. `log` is the dirty log when logging is on.
    pub fn new(
        mem: Arc<GuestMemory>,
        cfg: &RingConfig,
        log: Option<Arc<DirtyLog>>,
        call: Option<Arc<File>>,
    ) -> Result<Vring, MemError> {
        let num = u32::from(cfg.num);
        if num == 0 || !num.is_power_of_two() || num > MAX_QUEUE_SIZE {
            return Err(MemError::BadRegion { index: 0, msg: format!("bad queue size {num}") });
        }
        // The virtio-net header is 10 or 12 bytes; the RX paths write it from a 12-byte array.
        if cfg.hdr_len != 10 && cfg.hdr_len != 12 {
            return Err(MemError::BadRegion {
                index: 0,
                msg: format!("bad virtio-net header length {}", cfg.hdr_len),
            });
        }
        let n = u64::from(num);
        let desc = mem.area_uva(cfg.desc, 16 * n, 16)?;
        let avail = mem.area_uva(cfg.avail, 6 + 2 * n, 2)?;
        let used = mem.area_uva(cfg.used, 6 + 8 * n, 4)?;
        let mut r = Vring {
            mem,
            desc,
            avail,
            used,
            num: cfg.num,
            last_avail: cfg.base,
            last_used: cfg.base,
            event_idx: cfg.event_idx,
            hdr_len: cfg.hdr_len,
            mrg: cfg.mrg_rxbuf,
            in_order: cfg.in_order,
            used_log_gpa: if log.is_some() { cfg.used_log_gpa } else { None },
            log,
            call,
            kick: None,
            kicks_requested: false,
            signalled_used: 0,
            signalled_valid: false,
            broken: None,
            tx_offload: cfg.tx_offload,
            scratch: if cfg.tx_offload {
                vec![0u8; GSO_MAX_FRAME].into_boxed_slice()
            } else {
                Box::default()
            },
            pending: None,
            rx_gso: if cfg.mrg_rxbuf { cfg.rx_gso } else { RxGso::default() },
            merges: RxMerges::default(),
        };
        // As DPDK: when the used index in memory disagrees with the base we were given (the
        // frontend restarted and lost track), trust the ring.
        if let Some(u) = r.used.load_u16(2, Ordering::Acquire) {
            if u != cfg.base {
                tracing::debug!(
                    base = cfg.base,
                    used = u,
                    "vring base and used index differ; using the used index"
                );
                r.last_used = u;
                r.last_avail = u;
            }
        }
        // We poll: ask the guest not to kick us (until a worker goes to sleep on the ring).
        r.disable_notify();
        Ok(r)
    }

    /// The ring with the guest's kick eventfd, which [`Vring::enable_notify`] makes the guest
    /// signal.
    pub fn with_kick(mut self, kick: Option<Arc<File>>) -> Vring {
        self.kick = kick;
        self
    }

    /// The guest's kick eventfd, if it gave one. To be read (drained) only, never signalled:
    /// when the frontend (QEMU) stops the ring it reads the fd and, finding it signalled,
    /// processes the queue itself.
    pub fn kick(&self) -> Option<&Arc<File>> {
        self.kick.as_ref()
    }

    /// Whether the guest is asked to kick (between a successful [`Vring::enable_notify`] and
    /// the next [`Vring::disable_notify`]).
    pub fn kicks_requested(&self) -> bool {
        self.kicks_requested
    }

    /// Asks the guest to kick, without the re-check of [`Vring::enable_notify`]: for a ring
    /// that replaces one whose worker sleeps on the same kick fd (the control thread rebuilt
    /// it), so that the sleeper keeps getting kicks.
    pub fn request_kicks(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.kicks_requested = self.write_kick_request();
        self.kicks_requested
    }

    /// Writes the guest's kick request: clears USED_F_NO_NOTIFY, or with event-idx sets
    /// avail_event to the next entry we consume (the guest kicks when its available index
    /// moves past it). Returns whether the store succeeded.
    fn write_kick_request(&self) -> bool {
        if self.event_idx {
            let off = self.avail_event_off();
            let ok = self.used.store_u16(off, self.last_avail, Ordering::Relaxed);
            self.log_used(off as u64, 2);
            ok
        } else {
            let ok = self.used.store_u16(0, 0, Ordering::Relaxed);
            self.log_used(0, 2);
            ok
        }
    }

    /// Offset of `avail_event` (event-idx) in the used ring: after its `num` entries.
    #[inline]
    fn avail_event_off(&self) -> usize {
        4 + 8 * usize::from(self.num)
    }

    /// Asks the guest to kick for the next frame it posts, before a worker sleeps on the kick
    /// fd. Returns `false` when frames are already waiting (the request is withdrawn again:
    /// the caller must poll, not sleep). A ring that is broken answers `true` untouched: it
    /// yields nothing until the frontend sets it up again (the sleeper sees the new ring when
    /// its poll times out).
    pub fn enable_notify(&mut self) -> bool {
        self.enable_notify_with(|| {})
    }

    /// [`Vring::enable_notify`], running `between` after the request is visible and before
    /// the re-check (tests put the guest's racing entry there).
    #[inline]
    fn enable_notify_with(&mut self, between: impl FnOnce()) -> bool {
        if self.broken.is_some() {
            return true;
        }
        let stored = self.write_kick_request();
        // Our store must be visible before we look at the available index, as the guest's
        // index store is before its look at our flags (the other half of the handshake): then
        // either we see its new entry below, or it sees our request and kicks.
        fence(Ordering::SeqCst);
        between();
        // Any other index (a new entry, or garbage that the next dequeue will judge and count)
        // means: poll.
        let idle = self.avail.load_u16(2, Ordering::Acquire) == Some(self.last_avail);
        if !stored || !idle {
            self.disable_notify();
            return false;
        }
        self.kicks_requested = true;
        true
    }

    /// Asks the guest not to kick (the worker polls the ring again).
    ///
    /// Without event-idx that is USED_F_NO_NOTIFY. With event-idx the flags must stay 0 and
    /// the guest kicks when its available index moves from `old` to `new` past avail_event,
    /// i.e. when `avail_event` lies in `[old, new)` (mod 2^16). We store `last_avail - 1`, the
    /// entry just *behind* the oldest one we have not consumed: the guest's index never runs
    /// more than `num` (at most 2^15) ahead of `last_avail` (or the ring is broken), so its
    /// index is past that value, and it has to move all the way around the 16-bit space
    /// (at least 2^16 - num entries) to reach it again. So no kick comes while we poll, for at
    /// least 2^16 - num frames after this call; should the worker poll without ever sleeping
    /// for that long, the guest kicks once per 2^16 frames, which costs nothing but the kick
    /// (the next `enable_notify` drains it). Storing `last_avail` instead (what "no kick
    /// needed yet" might suggest) would ask for a kick on the very next frame.
    pub fn disable_notify(&mut self) {
        self.kicks_requested = false;
        if self.event_idx {
            let off = self.avail_event_off();
            self.used.store_u16(off, self.last_avail.wrapping_sub(1), Ordering::Relaxed);
            self.log_used(off as u64, 2);
            self.used.store_u16(0, 0, Ordering::Relaxed);
        } else {
            self.used.store_u16(0, USED_F_NO_NOTIFY, Ordering::Relaxed);
        }
        self.log_used(0, 2);
    }

    /// `(last_avail, last_used)`: where the device is.
    pub fn indices(&self) -> (u16, u16) {
        (self.last_avail, self.last_used)
    }

    /// Why the ring was given up, if it was.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The super-frames written into the guest's buffers since the last call (then zero).
    pub fn take_merges(&mut self) -> RxMerges {
        std::mem::take(&mut self.merges)
    }

    fn set_broken(&mut self, why: &'static str) {
        if self.broken.is_none() {
            tracing::warn!(
                reason = why,
                "vhost: guest ring state is invalid; queue stopped until it is set up again"
            );
        }
        self.broken = Some(why);
    }

    #[inline]
    fn mask(&self) -> u16 {
        self.num - 1
    }

    #[inline]
    fn read_desc(&self, i: u16) -> Option<Desc> {
        let (a, b) = self.desc.load_u64_pair(usize::from(i) * 16, Ordering::Relaxed)?;
        Some(Desc { addr: a, len: b as u32, flags: (b >> 32) as u16, next: (b >> 48) as u16 })
    }

    /// The guest's available index, checked against ours. `None`: broken.
    #[inline]
    fn fresh_avail(&mut self) -> Option<u16> {
        let Some(a) = self.avail.load_u16(2, Ordering::Acquire) else {
            self.set_broken("available ring unreadable");
            return None;
        };
        if a.wrapping_sub(self.last_avail) > self.num {
            self.set_broken("available index ran more than the queue size ahead");
            return None;
        }
        Some(a)
    }

    /// The head at position `pos` of the available ring. `None`: broken.
    #[inline]
    fn avail_head(&mut self, pos: u16) -> Option<u16> {
        let off = 4 + 2 * usize::from(pos & self.mask());
        match self.avail.load_u16(off, Ordering::Relaxed) {
            Some(h) if h < self.num => Some(h),
            _ => {
                self.set_broken("head descriptor index out of range");
                None
            }
        }
    }

    #[inline]
    fn log_used(&self, off: u64, len: u64) {
        if let (Some(log), Some(g)) = (&self.log, self.used_log_gpa) {
            if let Some(a) = g.checked_add(off) {
                log.mark(a, len);
            }
        }
    }

    /// Prefetches the next `n` available entries and, when the driver works in order (its
    /// heads are then the ring positions themselves), their descriptors too: both fetches
    /// overlap instead of the descriptors waiting for the heads. A wrong guess costs a line
    /// fetched for nothing; the heads are read and checked as always.
    #[inline]
    fn prefetch_ahead(&self, n: usize) {
        let mask = usize::from(self.mask());
        let first = usize::from(self.last_avail);
        for i in (0..n).step_by(32).chain(n.checked_sub(1)) {
            self.avail.prefetch(4 + 2 * ((first + i) & mask), false);
        }
        if self.in_order {
            for i in (0..n).step_by(4).chain(n.checked_sub(1)) {
                self.desc.prefetch(16 * ((first + i) & mask), false);
            }
        }
    }

    /// Prefetches, for writing, the used entries of the next `n` completions.
    #[inline]
    fn prefetch_used(&self, n: usize) {
        let first = usize::from(self.last_used & self.mask());
        // 8-byte entries: one line per 8 (the last entry of the batch covers a partial line).
        for i in (0..n).step_by(8).chain(n.checked_sub(1)) {
            let slot = (first + i) & usize::from(self.mask());
            self.used.prefetch(4 + 8 * slot, true);
        }
    }

    #[inline]
    fn put_used(&mut self, id: u16, len: u32) {
        let off = 4 + 8 * usize::from(self.last_used & self.mask());
        self.used.store_u32_pair(off, u32::from(id), len, Ordering::Relaxed);
        self.log_used(off as u64, 8);
        self.last_used = self.last_used.wrapping_add(1);
    }

    /// Makes the used entries visible (release: the entries and the data before the index),
    /// then calls the guest if it asked to be called.
    fn publish_and_notify(&mut self) {
        self.used.store_u16(2, self.last_used, Ordering::Release);
        self.log_used(2, 2);
        let Some(call) = &self.call else { return };
        // The guest's suppression fields must be read after our index store is visible.
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let ev = self.avail.load_u16(4 + 2 * usize::from(self.num), Ordering::Relaxed).unwrap_or(0);
            let (new, old, valid) = (self.last_used, self.signalled_used, self.signalled_valid);
            self.signalled_used = new;
            self.signalled_valid = true;
            !valid || need_event(ev, new, old)
        } else {
            self.avail.load_u16(0, Ordering::Relaxed).unwrap_or(0) & AVAIL_F_NO_INTERRUPT == 0
        };
        if need {
            sys::eventfd_signal(call);
        }
    }

    /// Guest TX: takes up to `max` frames into `out` (skipping the virtio-net header).
    pub fn dequeue(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        if self.broken.is_some() {
            return 0;
        }
        // The rest of a super-frame goes first (ring order); only then is the ring read again.
        let mut got = if self.pending.is_some() { self.drain_segments(cache, out, max, drops) } else { 0 };
        if self.pending.is_some() {
            return got;
        }
        let Some(avail) = self.fresh_avail() else {
            drops.add(DropReason::VhostRingBroken, 1);
            return got;
        };
        let pending = usize::from(avail.wrapping_sub(self.last_avail));
        let n = pending.min(max - got).min(out.remaining_capacity()).min(MAX_BURST);
        if n == 0 {
            return got;
        }
        let start_used = self.last_used;
        // Stages over the burst, so that the cache misses of many frames overlap (the guest's
        // core wrote every one of these lines): the heads, then their descriptors (frame data
        // prefetched), then the copies. Reading ahead has no side effect: only the last stage
        // consumes entries, and it may stop early (no buffer) with the rest left in the ring.
        self.prefetch_ahead(n);
        let mut heads = [0u16; MAX_BURST];
        let mut n_heads = 0;
        while n_heads < n {
            let Some(h) = self.avail_head(self.last_avail.wrapping_add(n_heads as u16)) else { break };
            heads[n_heads] = h;
            n_heads += 1;
        }
        for &h in &heads[..n_heads] {
            self.desc.prefetch(usize::from(h) * 16, false);
        }
        self.prefetch_used(n_heads);
        let mem = Arc::clone(&self.mem);
        // A frame in one readable descriptor (what DPDK and Linux guests send) is copied from
        // its span; any other chain takes the general walk, which judges it.
        let mut spans: [Option<Span<'_>>; MAX_BURST] = [None; MAX_BURST];
        if self.log.is_none() {
            for (head, span) in heads[..n_heads].iter().zip(spans.iter_mut()) {
                let Some(d) = self.read_desc(*head) else { continue };
                if d.flags != 0 {
                    continue;
                }
                *span = mem.span(d.addr, u64::from(d.len)).and_then(|s| s.skip(self.hdr_len));
                if let Some(s) = span {
                    s.prefetch(s.len(), false);
                }
            }
        }
        for (head, span) in heads[..n_heads].iter().copied().zip(spans) {
            // (csum_start, csum_offset) of a checksum the guest left partial.
            let mut csum = None;
            if self.tx_offload {
                // Segments may have filled the burst: the rest stays in the ring.
                if got >= max || out.is_full() {
                    break;
                }
                let mut h = [0u8; VNET_HDR_LEN];
                if !self.read_chain_prefix(head, &mut h) {
                    drops.add(DropReason::VhostInvalidDesc, 1);
                    self.put_used(head, 0);
                    self.last_avail = self.last_avail.wrapping_add(1);
                    continue;
                } else {
                    let vh = VnetHdrRepr::parse(&h);
                    if vh.is_gso() {
                        self.take_super_frame(head, &vh, drops);
                        self.put_used(head, 0);
                        self.last_avail = self.last_avail.wrapping_add(1);
                        got += self.drain_segments(cache, out, max - got, drops);
                        continue;
                    }
                    csum =
                        vh.needs_csum().then_some((usize::from(vh.csum_start), usize::from(vh.csum_offset)));
                }
            }
            // No buffer: leave the frame in the ring for the next poll.
            let Some(mut buf) = cache.alloc() else { break };
            let copied = match span {
                Some(s) if s.read_into(buf.tail_mut()) => Ok(s.len()),
                Some(_) => Err(ChainError::TooLong),
                None => self.copy_chain_out(head, buf.tail_mut()),
            };
            match copied {
                Ok(len) if buf.set_len(len).is_ok() => {
                    if let Some((start, offset)) = csum {
                        if complete_checksum(buf.data_mut(), start, offset).is_err() {
                            drops.add(DropReason::BadOffload, 1);
                            cache.free(buf);
                            self.put_used(head, 0);
                            self.last_avail = self.last_avail.wrapping_add(1);
                            continue;
                        }
                    }
                    out.push(buf);
                    got += 1;
                }
                Ok(_) | Err(ChainError::TooLong) => {
                    drops.add(DropReason::Oversize, 1);
                    cache.free(buf);
                }
                Err(ChainError::Invalid) => {
                    drops.add(DropReason::VhostInvalidDesc, 1);
                    cache.free(buf);
                }
            }
            self.put_used(head, 0);
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        if self.last_used != start_used {
            self.publish_and_notify();
        }
        if self.broken.is_some() {
            // The frames the guest queued on a ring it corrupted are lost; count the event.
            drops.add(DropReason::VhostRingBroken, 1);
        }
        got
    }

    /// Reads the first `out.len()` bytes of the chain at `head` (the virtio-net header, which
    /// a guest may split over descriptors). `false` when the chain is invalid or shorter.
    fn read_chain_prefix(&self, head: u16, out: &mut [u8]) -> bool {
        let mut idx = head;
        let mut got = 0;
        for _ in 0..self.num.min(MAX_CHAIN) {
            let Some(d) = self.read_desc(idx) else { return false };
            if d.flags & (DESC_F_INDIRECT | DESC_F_WRITE) != 0 {
                return false;
            }
            // l <= out.len() - got.
            let l = (out.len() - got).min(d.len as usize);
            if l > 0 && self.mem.read(d.addr, &mut out[got..got + l]).is_err() {
                return false;
            }
            got += l;
            if got == out.len() {
                return true;
            }
            if d.flags & DESC_F_NEXT == 0 || d.next >= self.num {
                return false;
            }
            idx = d.next;
        }
        false
    }

    /// Copies the super-frame at `head` into `scratch` and sets it up for segmentation, or
    /// counts why it cannot be: `bad_offload` (an unknown GSO type, a segment size of 0,
    /// headers that do not parse or lie past the frame), `oversize` (longer than
    /// [`GSO_MAX_FRAME`], or segments that would not fit a buffer), `vhost_invalid_desc`.
    fn take_super_frame(&mut self, head: u16, vh: &VnetHdrRepr, drops: &mut DropTally) {
        let mut scratch = std::mem::take(&mut self.scratch);
        match self.copy_chain_out(head, &mut scratch) {
            Ok(len) => match Segmenter::new(&scratch[..len], vh) {
                Ok(seg) if seg.max_segment_len() <= DATA_ROOM => self.pending = Some((seg, len)),
                Ok(_) => drops.add(DropReason::Oversize, 1),
                Err(_) => drops.add(DropReason::BadOffload, 1),
            },
            Err(ChainError::TooLong) => drops.add(DropReason::Oversize, 1),
            Err(ChainError::Invalid) => drops.add(DropReason::VhostInvalidDesc, 1),
        }
        self.scratch = scratch;
    }

    /// Whether a super-frame is part-way through segmentation (its chain went back to the
    /// guest already: stopping the ring now loses the rest of its segments).
    pub fn mid_frame(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes over the super-frame `old` (the ring this one replaces) was cutting into
    /// segments, with its scratch area: its descriptor chain went back to the guest when it
    /// was copied, so a ring rebuilt in place (new fds, features or memory table) sends the
    /// rest of it before reading the guest's ring again, as `old` would have.
    pub fn adopt_pending(&mut self, old: &mut Vring) {
        if let Some(p) = old.pending.take() {
            std::mem::swap(&mut self.scratch, &mut old.scratch);
            self.pending = Some(p);
        }
    }

    /// Moves up to `room` segments of the pending super-frame into `out`. With no buffer left
    /// the rest waits in `scratch` for the next poll, as a frame waits in the ring.
    fn drain_segments(
        &mut self,
        cache: &mut PoolCache,
        out: &mut Burst,
        room: usize,
        drops: &mut DropTally,
    ) -> usize {
        let Some((seg, len)) = self.pending.as_mut() else { return 0 };
        let frame = &self.scratch[..*len];
        let mut n = 0;
        let mut failed = false;
        while n < room && !out.is_full() && !seg.finished() {
            let Some(mut buf) = cache.alloc() else { break };
            let tail = buf.tail_mut();
            let lim = tail.len().min(DATA_ROOM);
            match seg.next_into(frame, &mut tail[..lim]) {
                Ok(Some(l)) if buf.set_len(l).is_ok() => {
                    out.push(buf);
                    n += 1;
                }
                // Segmenter::new checked the headers and max_segment_len the room, so no
                // segment should fail; if one does, the rest of the frame is dropped.
                _ => {
                    cache.free(buf);
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            drops.add(DropReason::BadOffload, 1);
        }
        if failed || seg.finished() {
            self.pending = None;
        }
        n
    }

    /// Copies the chain at `head` (device-readable descriptors) into `tail`, without the
    /// header. Returns the frame length.
    fn copy_chain_out(&self, head: u16, tail: &mut [u8]) -> Result<usize, ChainError> {
        let cap = tail.len();
        let mut idx = head;
        let mut skip = self.hdr_len as u64;
        let mut total = 0usize;
        let mut too_long = false;
        for _ in 0..self.num.min(MAX_CHAIN) {
            let d = self.read_desc(idx).ok_or(ChainError::Invalid)?;
            if d.flags & (DESC_F_INDIRECT | DESC_F_WRITE) != 0 {
                return Err(ChainError::Invalid);
            }
            let (mut addr, mut len) = (d.addr, u64::from(d.len));
            if !self.mem.contains(addr, len) {
                return Err(ChainError::Invalid);
            }
            if skip > 0 {
                let s = skip.min(len);
                addr += s;
                len -= s;
                skip -= s;
            }
            if len > 0 && !too_long {
                // len <= u32::MAX, total <= cap.
                if total as u64 + len > cap as u64 {
                    too_long = true;
                } else {
                    let l = len as usize;
                    self.mem.read(addr, &mut tail[total..total + l]).map_err(|_| ChainError::Invalid)?;
                    total += l;
                }
            }
            if d.flags & DESC_F_NEXT == 0 {
                return match (skip > 0, too_long) {
                    (true, _) => Err(ChainError::Invalid),
                    (_, true) => Err(ChainError::TooLong),
                    _ => Ok(total),
                };
            }
            if d.next >= self.num {
                return Err(ChainError::Invalid);
            }
            idx = d.next;
        }
        // More than MAX_CHAIN descriptors, or than the queue holds (the chain loops).
        Err(ChainError::Invalid)
    }

    /// Collects the device-writable segments of the chain at `head` into `segs` until they
    /// hold `want` bytes or the chain ends. Returns the capacity collected. Every zero-length
    /// descriptor takes one from `empty_left` (the frame's, [`MAX_EMPTY_DESCS`]); a zero-length
    /// descriptor with none left is invalid.
    fn gather_in(
        &self,
        head: u16,
        segs: &mut ArrayVec<Seg, MAX_SEGS>,
        want: u64,
        empty_left: &mut u32,
    ) -> Result<u64, ChainError> {
        let mut idx = head;
        let mut cap = 0u64;
        for _ in 0..self.num.min(MAX_CHAIN) {
            let d = self.read_desc(idx).ok_or(ChainError::Invalid)?;
            if d.flags & DESC_F_INDIRECT != 0 || d.flags & DESC_F_WRITE == 0 {
                return Err(ChainError::Invalid);
            }
            if d.len > 0 {
                if !self.mem.contains(d.addr, u64::from(d.len)) {
                    return Err(ChainError::Invalid);
                }
                // Out of room for segments: the frame needs more than one frame may take.
                segs.try_push(Seg { addr: d.addr, len: d.len }).map_err(|_| ChainError::TooLong)?;
                cap += u64::from(d.len);
            } else {
                // Holds no buffer, so MAX_SEGS does not bound these: the frame's budget does.
                *empty_left = empty_left.checked_sub(1).ok_or(ChainError::Invalid)?;
            }
            if d.flags & DESC_F_NEXT == 0 || cap >= want {
                return if cap == 0 { Err(ChainError::Invalid) } else { Ok(cap) };
            }
            if d.next >= self.num {
                return Err(ChainError::Invalid);
            }
            idx = d.next;
        }
        // More than MAX_CHAIN descriptors, or than the queue holds (the chain loops).
        Err(ChainError::Invalid)
    }

    /// Copies one frame into the guest's RX buffers: the virtio-net header `vnet` (with
    /// `num_buffers` added), then `pieces` one after the other (a frame, or a super-frame's
    /// headers and its segments' payloads). `avail` caches the guest's available index.
    /// Commits (moves `last_avail`, adds used entries) only on success or when a chain was
    /// invalid or the frame met more than [`MAX_EMPTY_DESCS`] zero-length descriptors (then
    /// every chain taken for the frame goes back with length 0: [`Place::Invalid`], merged or
    /// not, so a super-frame that spends the budget is dropped once, not split and walked again
    /// segment by segment). A `merged` frame that would need more buffers than [`MAX_SEGS`] is
    /// [`Place::Split`], nothing consumed.
    fn place(&mut self, vnet: &[u8; VNET_HDR_LEN], pieces: &[&[u8]], avail: &mut u16, merged: bool) -> Place {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let need = (self.hdr_len + len) as u64;
        let mut cursor = self.last_avail;
        let mut segs: ArrayVec<Seg, MAX_SEGS> = ArrayVec::new();
        // (head, first segment, end segment)
        let mut chains: ArrayVec<(u16, u8, u8), MAX_SEGS> = ArrayVec::new();
        let mut have = 0u64;
        let mut empty_left = MAX_EMPTY_DESCS;
        while have < need {
            if cursor == *avail {
                match self.fresh_avail() {
                    Some(a) => *avail = a,
                    None => return Place::Broken,
                }
                if cursor == *avail {
                    return Place::NoRoom;
                }
            }
            let Some(head) = self.avail_head(cursor) else { return Place::Broken };
            cursor = cursor.wrapping_add(1);
            let first = segs.len() as u8;
            // Whether this position's chain joined `chains` (by position, not by head: a guest
            // may post one head twice, and each position must get its own used entry).
            let pushed = match self.gather_in(head, &mut segs, need - have, &mut empty_left) {
                Ok(cap) => {
                    have += cap;
                    chains.try_push((head, first, segs.len() as u8)).is_ok()
                }
                Err(ChainError::TooLong) if merged => return Place::Split,
                Err(_) => false,
            };
            let out_of_room = have < need && (segs.is_full() || chains.is_full());
            if merged && pushed && out_of_room {
                return Place::Split;
            }
            if !pushed || out_of_room {
                for (h, _, _) in chains.iter().copied() {
                    self.put_used(h, 0);
                }
                if !pushed {
                    self.put_used(head, 0);
                }
                self.last_avail = cursor;
                return Place::Invalid;
            }
            if !self.mrg && have < need {
                // Without mergeable buffers one chain must hold the whole frame.
                return Place::TooBig;
            }
        }
        // Write the header and the frame across the segments.
        let mut hdr = [0u8; 12];
        hdr[..VNET_HDR_LEN].copy_from_slice(vnet);
        if self.hdr_len >= 12 {
            hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        }
        let hdr = &hdr[..self.hdr_len.min(12)];
        let mut sources = std::iter::once(hdr).chain(pieces.iter().copied());
        let mut cur: &[u8] = &[];
        let mut lens: ArrayVec<u32, MAX_SEGS> = ArrayVec::new();
        let mut failed = false;
        for &(_, s, e) in &chains {
            let mut written = 0u32;
            for seg in &segs[usize::from(s)..usize::from(e)] {
                let mut off = 0usize;
                while off < seg.len as usize {
                    if cur.is_empty() {
                        match sources.find(|p| !p.is_empty()) {
                            Some(p) => cur = p,
                            None => break,
                        }
                    }
                    let n = (seg.len as usize - off).min(cur.len());
                    let gpa = seg.addr + off as u64;
                    if self.mem.write(gpa, &cur[..n]).is_err() {
                        failed = true;
                    }
                    if let Some(log) = &self.log {
                        log.mark(gpa, n as u64);
                    }
                    cur = &cur[n..];
                    off += n;
                    written += n as u32;
                }
            }
            lens.push(written);
        }
        for (i, &(h, _, _)) in chains.iter().enumerate() {
            self.put_used(h, if failed { 0 } else { lens[i] });
        }
        self.last_avail = cursor;
        if failed {
            Place::Invalid
        } else {
            Place::Done
        }
    }

    /// The fast path of [`Vring::enqueue`]: the leading frames of `pkts` that each fit one
    /// writable descriptor (what DPDK and Linux guests post: a buffer of 1.5 to 2 KiB per
    /// entry) are written in two stages, descriptors first (destinations prefetched for
    /// writing, so the misses of the burst overlap), then the copies. Stops at the first frame
    /// that needs anything else (a chain, several buffers, a bad descriptor, an empty ring),
    /// which the general path then judges. Returns how many leading frames it delivered;
    /// `avail` is the guest's available index, already checked.
    fn enqueue_simple(&mut self, pkts: &[PacketBuf], avail: u16) -> usize {
        let room = usize::from(avail.wrapping_sub(self.last_avail)).min(pkts.len()).min(MAX_BURST);
        let mem = Arc::clone(&self.mem);
        let hdr_len = self.hdr_len;
        let mut heads = [0u16; MAX_BURST];
        let mut spans: [Option<Span<'_>>; MAX_BURST] = [None; MAX_BURST];
        self.prefetch_ahead(room);
        let mut n_heads = 0;
        while n_heads < room {
            // A bad head is left to the general path (which marks the ring broken).
            let pos = self.last_avail.wrapping_add(n_heads as u16);
            let off = 4 + 2 * usize::from(pos & self.mask());
            let Some(head) = self.avail.load_u16(off, Ordering::Relaxed).filter(|&h| h < self.num) else {
                break;
            };
            self.desc.prefetch(usize::from(head) * 16, false);
            heads[n_heads] = head;
            n_heads += 1;
        }
        self.prefetch_used(n_heads);
        let mut k = 0;
        while k < n_heads {
            let head = heads[k];
            let Some(d) = self.read_desc(head) else { break };
            if d.flags != DESC_F_WRITE {
                break;
            }
            let need = hdr_len + pkts[k].len();
            let Some(span) = mem.span(d.addr, u64::from(d.len)).filter(|s| s.len() >= need) else { break };
            span.prefetch(need, true);
            spans[k] = Some(span);
            k += 1;
        }
        // One buffer per frame: num_buffers (VERSION_1 / mergeable header) is 1; flags 0.
        let mut hdr = [0u8; 12];
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        let hdr = &hdr[..hdr_len];
        for (i, b) in pkts[..k].iter().enumerate() {
            let (head, span) = (heads[i], spans[i]);
            let frame = b.data();
            // Both fit: the span holds hdr_len + frame bytes (checked above).
            let ok = span.is_some_and(|s| s.write_at(0, hdr) && s.write_at(hdr_len, frame));
            debug_assert!(ok);
            self.put_used(head, (hdr_len + frame.len()) as u32);
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        k
    }

    /// Places one frame (`pieces`: see [`Vring::place`]) of `segments` segments, waiting for
    /// the guest's buffers as the burst allows, and counts the outcome in `q` and `drops`.
    /// Returns `false`, with nothing consumed or counted, when a `merged` frame does not fit
    /// the buffers the guest has posted or may take: its segments must then go one by one.
    fn deliver(
        &mut self,
        vnet: &[u8; VNET_HDR_LEN],
        pieces: &[&[u8]],
        segments: usize,
        merged: bool,
        q: &mut Delivery,
        drops: &mut DropTally,
    ) -> bool {
        let count = segments as u32;
        if let Some(r) = q.give_up {
            drops.add(r, count);
            return true;
        }
        loop {
            match self.place(vnet, pieces, &mut q.avail, merged) {
                Place::Done => {
                    q.sent += segments;
                    if merged {
                        self.merges.frames += 1;
                        self.merges.segments += segments as u64;
                    }
                }
                Place::Split | Place::NoRoom if merged => return false,
                Place::Split | Place::Invalid => drops.add(DropReason::VhostInvalidDesc, count),
                Place::TooBig => drops.add(DropReason::Oversize, count),
                Place::Broken => {
                    q.give_up = Some(DropReason::VhostRingBroken);
                    drops.add(DropReason::VhostRingBroken, count);
                }
                Place::NoRoom if q.sent == 0 => {
                    // The guest posted no buffers: it is not reading. Do not wait for it.
                    q.give_up = Some(DropReason::VhostNoRxDesc);
                    drops.add(DropReason::VhostNoRxDesc, count);
                }
                Place::NoRoom if q.retries >= TX_RETRIES => {
                    q.give_up = Some(DropReason::VhostTxRetries);
                    drops.add(DropReason::VhostTxRetries, count);
                }
                Place::NoRoom => {
                    // Show the guest what we placed so far and give it a moment to refill.
                    q.retries += 1;
                    self.publish_and_notify();
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                    continue;
                }
            }
            return true;
        }
    }

    /// The leading run of `pkts` that merges into a super-frame this guest takes, if any.
    fn run_at(&self, pkts: &[PacketBuf]) -> Option<TcpMerge> {
        if pkts.len() < 2 {
            return None;
        }
        merge_verified_tcp_run(pkts.iter().map(PacketBuf::data), MAX_BURST).filter(|m| self.rx_gso.takes(m))
    }

    /// Writes a merged run (`segs`, the segments `m` was made of) as one super-frame; where it
    /// does not fit (more buffers than one frame may take, or the guest's ring cannot hold it
    /// now) its segments go one by one.
    fn deliver_run(&mut self, m: &TcpMerge, segs: &[PacketBuf], q: &mut Delivery, drops: &mut DropTally) {
        let mut pieces: ArrayVec<&[u8], { MAX_BURST + 1 }> = ArrayVec::new();
        pieces.push(m.headers());
        for b in segs {
            // The merge checked that each segment is longer than its headers.
            if pieces.try_push(b.data().get(m.hdrs..).unwrap_or_default()).is_err() {
                break;
            }
        }
        if pieces.len() == segs.len() + 1 && self.deliver(m.vnet_hdr(), &pieces, segs.len(), true, q, drops) {
            return;
        }
        for b in segs {
            self.deliver(&PLAIN_HDR, &[b.data()], 1, false, q, drops);
        }
    }

    /// Guest RX: copies every frame of `pkts` into the guest (draining it; buffers go back to
    /// `cache`). Returns how many were delivered; the rest are counted in `drops`. Where the
    /// guest takes super-frames ([`RxGso`]), each run of consecutive segments of one TCP flow
    /// ([`merge_verified_tcp_run`]) is written as one, with a header asking for GSO
    /// (`NEEDS_CSUM`, the checksum field holding the pseudo-header sum: the segments' checksums
    /// were verified); every other frame goes as without (flags 0: a finished frame).
    pub fn enqueue(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        if self.broken.is_some() {
            drops.add(DropReason::VhostRingBroken, pkts.len() as u32);
            for b in pkts.drain(..) {
                cache.free(b);
            }
            return 0;
        }
        let start_used = self.last_used;
        let mut q = Delivery { avail: self.last_avail, sent: 0, give_up: None, retries: 0 };
        let fast = self.log.is_none() && !pkts.is_empty();
        if fast {
            if let Some(a) = self.fresh_avail() {
                q.avail = a;
            }
        }
        let n = pkts.len();
        let mut i = 0;
        while i < n {
            // The frames up to the next run (all of them, without super-frames), fast path first.
            let mut j = i;
            let mut run = None;
            if self.rx_gso.any() {
                while j < n {
                    run = self.run_at(&pkts[j..]);
                    if run.is_some() {
                        break;
                    }
                    j += 1;
                }
            } else {
                j = n;
            }
            if fast && self.broken.is_none() && q.give_up.is_none() && j > i {
                let k = self.enqueue_simple(&pkts[i..j], q.avail);
                q.sent += k;
                i += k;
            }
            for b in &pkts[i..j] {
                self.deliver(&PLAIN_HDR, &[b.data()], 1, false, &mut q, drops);
            }
            i = j;
            if let Some(m) = run {
                let end = (i + m.segments).min(n);
                self.deliver_run(&m, &pkts[i..end], &mut q, drops);
                i = end;
            }
        }
        for b in pkts.drain(..) {
            cache.free(b);
        }
        if self.last_used != start_used {
            self.publish_and_notify();
        }
        q.sent
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use switchyard_dataplane::buffer::Pool;

    const UVA: u64 = 0x7f00_0000_0000;

    /// A minimal driver over anonymous guest memory: rings at fixed guest addresses, the
    /// frontend's view (uva) offset by UVA.
    struct Fake {
        mem: Arc<GuestMemory>,
        num: u16,
        desc: u64,
        avail: u64,
        used: u64,
        avail_idx: u16,
    }

    impl Fake {
        fn new(num: u16) -> Fake {
            let mem = Arc::new(GuestMemory::anonymous(&[(0, 1 << 20, UVA)]).unwrap());
            Fake { mem, num, desc: 0x1000, avail: 0x2_0000, used: 0x3_0000, avail_idx: 0 }
        }
        fn cfg(&self) -> RingConfig {
            RingConfig {
                num: self.num,
                desc: self.desc + UVA,
                avail: self.avail + UVA,
                used: self.used + UVA,
                used_log_gpa: Some(self.used),
                base: 0,
                event_idx: false,
                hdr_len: 12,
                mrg_rxbuf: true,
                in_order: false,
                tx_offload: false,
                rx_gso: RxGso::default(),
            }
        }
        fn ring(&self) -> Vring {
            Vring::new(self.mem.clone(), &self.cfg(), None, None).unwrap()
        }
        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..14].copy_from_slice(&flags.to_le_bytes());
            b[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write(self.desc + 16 * u64::from(i), &b).unwrap();
        }
        fn post(&mut self, head: u16) {
            let pos = self.avail + 4 + 2 * u64::from(self.avail_idx % self.num);
            self.mem.write(pos, &head.to_le_bytes()).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem.write(self.avail + 2, &self.avail_idx.to_le_bytes()).unwrap();
        }
        fn used_idx(&self) -> u16 {
            let mut b = [0u8; 2];
            self.mem.read(self.used + 2, &mut b).unwrap();
            u16::from_le_bytes(b)
        }
        fn used_elem(&self, i: u16) -> (u32, u32) {
            let mut b = [0u8; 8];
            self.mem.read(self.used + 4 + 8 * u64::from(i % self.num), &mut b).unwrap();
            (u32::from_le_bytes(b[0..4].try_into().unwrap()), u32::from_le_bytes(b[4..8].try_into().unwrap()))
        }
    }

    fn pool() -> Pool {
        Pool::with_hugepages("vring-test", 512, false).unwrap()
    }

    #[test]
    fn tx_chain_with_header_split_is_copied() {
        let mut f = Fake::new(8);
        let frame: Vec<u8> = (0..100u8).collect();
        f.mem.write(0x8000, &[0u8; 12]).unwrap();
        f.mem.write(0x9000, &frame[..30]).unwrap();
        f.mem.write(0xa000, &frame[30..]).unwrap();
        f.desc(0, 0x8000, 12, DESC_F_NEXT, 1);
        f.desc(1, 0x9000, 30, DESC_F_NEXT, 2);
        f.desc(2, 0xa000, 70, 0, 0);
        f.post(0);
        let mut r = f.ring();
        let p = pool();
        let mut c = p.cache();
        let mut out = Burst::new();
        let mut d = DropTally::default();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 1);
        assert_eq!(out[0].data(), &frame[..]);
        assert_eq!(f.used_idx(), 1);
        assert_eq!(f.used_elem(0), (0, 0));
        assert!(d.is_zero());
    }

    /// A TCP/IPv4 frame of `payload` bytes from a sender with offloads on: with `gso`, one
    /// super-frame of MSS `mss` (the IP lengths cover it all), otherwise one frame; either way
    /// the TCP checksum field holds only the pseudo-header sum. Returns the virtio-net header
    /// (12 bytes) followed by the frame, and the payload.
    pub(in crate::vhost) fn offload_frame(payload: usize, mss: u16, gso: bool) -> (Vec<u8>, Vec<u8>) {
        use switchyard_dataplane::wire::offload::{fold, ones_sum, VnetGso, VNET_F_NEEDS_CSUM};
        let data: Vec<u8> = (0..payload).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 5201, 1_000_000, 512)
            .write(&mut f, &data)
            .unwrap();
        let l4 = 34;
        let mut pseudo = ones_sum(&f[26..34], 0) + 6 + (f.len() - l4) as u64;
        pseudo = u64::from(fold(pseudo));
        f[l4 + 16..l4 + 18].copy_from_slice(&(pseudo as u16).to_be_bytes());
        let h = VnetHdrRepr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: if gso { VnetGso::TCPV4 } else { 0 },
            hdr_len: 54,
            gso_size: if gso { mss } else { 0 },
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        let mut out = vec![0u8; 12];
        h.emit((&mut out[..VNET_HDR_LEN]).try_into().unwrap());
        out.extend_from_slice(&f);
        (out, data)
    }

    /// Checks one segment's IPv4 and TCP checksums and returns (sequence number, payload).
    fn checked_segment(frame: &[u8]) -> (u32, Vec<u8>) {
        let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
        let iph = ip.header().to_header();
        assert_eq!(iph.header_checksum, iph.calc_header_checksum(), "IPv4 header checksum");
        let Some(etherparse::TransportSlice::Tcp(tcp)) = &p.transport else { panic!("not TCP") };
        let th = tcp.to_header();
        assert_eq!(th.checksum, th.calc_checksum_ipv4(&iph, tcp.payload()).unwrap(), "TCP checksum");
        (tcp.sequence_number(), tcp.payload().to_vec())
    }

    fn offload_ring(f: &Fake) -> Vring {
        Vring::new(f.mem.clone(), &RingConfig { tx_offload: true, ..f.cfg() }, None, None).unwrap()
    }

    /// Posts `bytes` (header and frame) as a one-descriptor chain.
    fn post_chain(f: &mut Fake, i: u16, bytes: &[u8]) {
        let addr = 0x4_0000 + 0x1_0000 * u64::from(i);
        f.mem.write(addr, bytes).unwrap();
        f.desc(i, addr, bytes.len() as u32, 0, 0);
        f.post(i);
    }

    #[test]
    fn tx_offload_segments_super_frames_and_finishes_checksums() {
        let mut f = Fake::new(8);
        let (sup, data) = offload_frame(5000, 1448, true);
        let (one, one_data) = offload_frame(700, 0, false);
        post_chain(&mut f, 0, &sup);
        // The same super-frame with its header split from the frame over two descriptors.
        f.mem.write(0x6_0000, &sup[..12]).unwrap();
        f.mem.write(0x6_1000, &sup[12..]).unwrap();
        f.desc(1, 0x6_0000, 12, DESC_F_NEXT, 2);
        f.desc(2, 0x6_1000, (sup.len() - 12) as u32, 0, 0);
        f.post(1);
        post_chain(&mut f, 3, &one);
        let mut r = offload_ring(&f);
        let p = pool();
        let mut c = p.cache();
        let mut d = DropTally::default();
        let mut frames = Vec::new();
        // Three segments a poll: the super-frames are cut across polls, in ring order.
        for _ in 0..8 {
            let mut out = Burst::new();
            r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 3);
            assert!(out.len() <= 3);
            frames.extend(out.drain(..).map(|b| b.data().to_vec()));
        }
        assert!(d.is_zero(), "{d:?}");
        assert_eq!(frames.len(), 4 + 4 + 1);
        for sup_frames in [&frames[0..4], &frames[4..8]] {
            let mut seq = 1_000_000u32;
            let mut got = Vec::new();
            for fr in sup_frames {
                assert!(fr.len() <= 14 + 40 + 1448);
                let (s, pl) = checked_segment(fr);
                assert_eq!(s, seq);
                seq += pl.len() as u32;
                got.extend(pl);
            }
            assert_eq!(got, data);
        }
        let (_, pl) = checked_segment(&frames[8]);
        assert_eq!(pl, one_data);
        assert_eq!(f.used_idx(), 3);
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn malformed_offload_headers_are_dropped_as_bad_offload() {
        use switchyard_dataplane::wire::offload::VnetGso;
        let mut f = Fake::new(16);
        let (sup, _) = offload_frame(3000, 1448, true);
        let (one, _) = offload_frame(100, 0, false);
        let with = |base: &[u8], edit: &dyn Fn(&mut VnetHdrRepr)| {
            let mut b = base.to_vec();
            let mut h = VnetHdrRepr::parse(b[..VNET_HDR_LEN].try_into().unwrap());
            edit(&mut h);
            h.emit((&mut b[..VNET_HDR_LEN]).try_into().unwrap());
            b
        };
        let bad = [
            with(&sup, &|h| h.gso_size = 0),
            with(&sup, &|h| h.gso_type = 2),
            with(&sup, &|h| h.gso_type = 3),
            with(&sup, &|h| h.gso_type = VnetGso::TCPV6),
            with(&sup, &|h| h.csum_start = 60000),
            with(&sup, &|h| h.csum_start = 20),
            with(&one, &|h| h.csum_start = (one.len() - 12) as u16),
            with(&one, &|h| h.csum_offset = u16::MAX),
        ];
        for (i, b) in bad.iter().enumerate() {
            post_chain(&mut f, i as u16, b);
        }
        // A frame after them still arrives, and one whose segments would not fit a buffer is
        // oversize.
        post_chain(&mut f, 8, &one);
        post_chain(&mut f, 9, &with(&sup, &|h| h.gso_size = 4000));
        let mut r = offload_ring(&f);
        let p = pool();
        let mut c = p.cache();
        let mut d = DropTally::default();
        let mut out = Burst::new();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 1);
        assert_eq!(d.get(DropReason::BadOffload), 8, "{d:?}");
        assert_eq!(d.get(DropReason::Oversize), 1, "{d:?}");
        assert_eq!(d.total(), 9);
        checked_segment(out[0].data());
        assert_eq!(f.used_idx(), 10);
        drop(out);
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn without_offloads_agreed_headers_are_ignored() {
        // A ring without tx_offload copies frames as they are: the partial checksum stays.
        let mut f = Fake::new(8);
        let (one, _) = offload_frame(100, 0, false);
        post_chain(&mut f, 0, &one);
        let mut r = f.ring();
        let p = pool();
        let mut c = p.cache();
        let mut d = DropTally::default();
        let mut out = Burst::new();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 1);
        assert_eq!(out[0].data(), &one[12..]);
    }

    #[test]
    fn rx_mergeable_spans_chains_and_sets_num_buffers() {
        let mut f = Fake::new(8);
        for i in 0..4u16 {
            f.desc(i, 0x10000 + 0x1000 * u64::from(i), 512, DESC_F_WRITE, 0);
            f.post(i);
        }
        let mut r = f.ring();
        let p = pool();
        let mut c = p.cache();
        let frame: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
        let mut burst = Burst::new();
        burst.push(c.alloc_copy(&frame).unwrap());
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 1);
        assert!(d.is_zero());
        assert_eq!(f.used_idx(), 3);
        assert_eq!(f.used_elem(0), (0, 512));
        assert_eq!(f.used_elem(1), (1, 512));
        assert_eq!(f.used_elem(2), (2, 1212 - 1024));
        let mut got = vec![0u8; 1212];
        for i in 0..3u64 {
            let n = [512, 512, 188][i as usize];
            f.mem.read(0x10000 + 0x1000 * i, &mut got[512 * i as usize..512 * i as usize + n]).unwrap();
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
        assert_eq!(&got[12..], &frame[..]);
        assert_eq!(p.in_use(), 0);
    }

    /// Simple chains (one descriptor, taken by the staged fast paths) and everything else
    /// (taken by the general walk) mixed in one burst: every entry comes back once, in ring
    /// order (the IN_ORDER promise), every frame byte for byte, of every copy length class.
    #[test]
    fn fast_and_general_paths_keep_ring_order() {
        let mut f = Fake::new(16);
        let frames: Vec<Vec<u8>> = [9usize, 20, 40, 100, 200, 60]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        // head 0: frame 0, one descriptor (fast)
        // head 1: frame 1, header and data split over two descriptors (general)
        // head 3: a writable descriptor in a TX chain (invalid: dropped, returned)
        // heads 4..8: frames 2..5, one descriptor each (fast)
        let put = |f: &mut Fake, i: u16, frame: &[u8]| {
            let at = 0x10000 + 0x1000 * u64::from(i);
            f.mem.write(at, &[0u8; 12]).unwrap();
            f.mem.write(at + 12, frame).unwrap();
            f.desc(i, at, 12 + frame.len() as u32, 0, 0);
        };
        put(&mut f, 0, &frames[0]);
        f.mem.write(0x11000, &[0u8; 12]).unwrap();
        f.mem.write(0x11800, &frames[1]).unwrap();
        f.desc(1, 0x11000, 12, DESC_F_NEXT, 2);
        f.desc(2, 0x11800, frames[1].len() as u32, 0, 0);
        f.desc(3, 0x13000, 100, DESC_F_WRITE, 0);
        for (k, frame) in frames.iter().enumerate().skip(2) {
            put(&mut f, 2 + k as u16, frame);
        }
        for head in [0, 1, 3, 4, 5, 6, 7] {
            f.post(head);
        }
        let mut r = f.ring();
        let p = pool();
        let mut c = p.cache();
        let mut out = Burst::new();
        let mut d = DropTally::default();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 6);
        for (b, want) in out.iter().zip(&frames) {
            assert_eq!(b.data(), &want[..]);
        }
        assert_eq!(d.get(DropReason::VhostInvalidDesc), 1);
        assert_eq!(f.used_idx(), 7);
        for (i, head) in [0u32, 1, 3, 4, 5, 6, 7].into_iter().enumerate() {
            assert_eq!(f.used_elem(i as u16), (head, 0));
        }
        for b in out.drain(..) {
            c.free(b);
        }

        // Guest RX: buffers 0 (2 KiB), 1 (100 bytes: frame 4 of 200 bytes needs it and the
        // next one, mergeable: the general path), 2 and 3 (2 KiB).
        let mut g = Fake::new(16);
        for (i, len) in [2048u32, 100, 2048, 2048].into_iter().enumerate() {
            g.desc(i as u16, 0x10000 + 0x1000 * i as u64, len, DESC_F_WRITE, 0);
            g.post(i as u16);
        }
        let mut r = g.ring();
        let mut burst = Burst::new();
        for k in [0usize, 4, 2] {
            burst.push(c.alloc_copy(&frames[k]).unwrap());
        }
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 3);
        assert_eq!(g.used_idx(), 4);
        assert_eq!(g.used_elem(0), (0, 12 + 9));
        assert_eq!(g.used_elem(1), (1, 100));
        assert_eq!(g.used_elem(2), (2, 12 + 200 - 100));
        assert_eq!(g.used_elem(3), (3, 12 + 40));
        let read = |g: &Fake, i: u64, n: usize| {
            let mut v = vec![0u8; n];
            g.mem.read(0x10000 + 0x1000 * i, &mut v).unwrap();
            v
        };
        let b0 = read(&g, 0, 21);
        assert_eq!(u16::from_le_bytes([b0[10], b0[11]]), 1);
        assert_eq!(&b0[12..], &frames[0][..]);
        let mut b1 = read(&g, 1, 100);
        assert_eq!(u16::from_le_bytes([b1[10], b1[11]]), 2);
        b1.extend(read(&g, 2, 112));
        assert_eq!(&b1[12..], &frames[4][..]);
        let b3 = read(&g, 3, 52);
        assert_eq!(u16::from_le_bytes([b3[10], b3[11]]), 1);
        assert_eq!(&b3[12..], &frames[2][..]);
        assert_eq!(d.get(DropReason::VhostInvalidDesc), 1);
        assert_eq!(p.in_use(), 0);
    }

    /// The finished segments a sender's TSO super-frame of `payload` bytes is cut into (MSS
    /// `mss`), as the guest TX path cuts it: checksums and IPv4 IDs written.
    fn tcp_segments(payload: usize, mss: u16) -> Vec<Vec<u8>> {
        let (mut bytes, _) = offload_frame(payload, mss, true);
        // ACK set, as in a connection's data (the checksum is left partial: nothing to redo).
        bytes[12 + 34 + 13] |= 0x10;
        let vh = VnetHdrRepr::parse(bytes[..VNET_HDR_LEN].try_into().unwrap());
        let frame = &bytes[12..];
        let mut seg = Segmenter::new(frame, &vh).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        while let Some(n) = seg.next_into(frame, &mut buf).unwrap() {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// Finished TCP/IPv6 segments of one flow, `mss` bytes each.
    fn tcp6_segments(count: usize, mss: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let data: Vec<u8> = (0..mss).map(|k| (k * 3 + i) as u8).collect();
                let mut f = Vec::new();
                etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                    .ipv6(
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                        64,
                    )
                    .tcp(40000, 5201, 7 + (i * mss) as u32, 512)
                    .ack(1)
                    .write(&mut f, &data)
                    .unwrap();
                f
            })
            .collect()
    }

    /// A ring whose guest takes TCP super-frames (`rx_gso`), with `count` one-descriptor RX
    /// buffers of `len` bytes posted (buffer `i` at `rx_buf_addr(i, len)`).
    fn gso_rx_ring(f: &mut Fake, count: u16, len: u32, rx_gso: RxGso) -> Vring {
        for i in 0..count {
            f.desc(i, rx_buf_addr(i, len), len, DESC_F_WRITE, 0);
            f.post(i);
        }
        Vring::new(f.mem.clone(), &RingConfig { rx_gso, ..f.cfg() }, None, None).unwrap()
    }

    fn rx_buf_addr(i: u16, len: u32) -> u64 {
        0x4_0000 + u64::from(i) * u64::from(len)
    }

    /// The frames the guest finds in its RX buffers from used entry `from` to `to`: for each,
    /// its virtio-net header (the first 12 bytes) and the frame, put together from as many
    /// buffers as `num_buffers` says (each read with the length of its used entry).
    fn guest_frames(f: &Fake, len: u32, from: u16, to: u16) -> Vec<(VnetHdrRepr, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut k = from;
        while k != to {
            let mut bytes = Vec::new();
            let mut nbuf = 1u16;
            let mut i = 0;
            while i < nbuf {
                let (id, l) = f.used_elem(k.wrapping_add(i));
                let mut b = vec![0u8; l as usize];
                f.mem.read(rx_buf_addr(id as u16, len), &mut b).unwrap();
                bytes.extend_from_slice(&b);
                if i == 0 {
                    nbuf = u16::from_le_bytes([bytes[10], bytes[11]]);
                    assert!(nbuf >= 1);
                }
                i += 1;
            }
            k = k.wrapping_add(nbuf);
            let vh = VnetHdrRepr::parse(bytes[..VNET_HDR_LEN].try_into().unwrap());
            out.push((vh, nbuf, bytes[12..].to_vec()));
        }
        out
    }

    fn burst_of(c: &mut PoolCache, frames: &[Vec<u8>]) -> Burst {
        let mut burst = Burst::new();
        for fr in frames {
            burst.push(c.alloc_copy(fr).unwrap());
        }
        burst
    }

    /// What the guest's stack does with a super-frame: checks the header as Linux's
    /// `virtio_net_hdr_to_skb` does for TCP GSO (NEEDS_CSUM at the TCP checksum field, the
    /// headers' length), then cuts it with the checksum finished, as its software GSO would
    /// when it forwards it: the very segments it was made of, checksums and all.
    fn cuts_back_into(vh: &VnetHdrRepr, frame: &[u8], segs: &[Vec<u8>], v6: bool) {
        let l4 = 14 + if v6 { 40 } else { 20 };
        assert_eq!(vh.gso_type, if v6 { VnetGso::TCPV6 } else { VnetGso::TCPV4 });
        assert!(vh.needs_csum(), "NEEDS_CSUM");
        assert_eq!((usize::from(vh.csum_start), usize::from(vh.csum_offset)), (l4, 16), "csum_start/offset");
        assert_eq!(usize::from(vh.hdr_len), l4 + 20, "hdr_len: the headers through TCP");
        assert_eq!(usize::from(vh.gso_size), segs[0].len() - (l4 + 20), "gso_size: the MSS");
        // Finished where the header says, the super-frame's checksum verifies.
        let mut finished = frame.to_vec();
        complete_checksum(&mut finished, usize::from(vh.csum_start), usize::from(vh.csum_offset)).unwrap();
        let sp = etherparse::SlicedPacket::from_ethernet(&finished).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = &sp.transport else { panic!("not TCP") };
        let th = tcp.to_header();
        let want_csum = match &sp.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                th.calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                th.calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
            }
            None => panic!("no IP"),
        };
        assert_eq!(th.checksum, want_csum.unwrap(), "the finished super-frame's TCP checksum");
        let mut seg = Segmenter::new(frame, vh).unwrap();
        for (i, want) in segs.iter().enumerate() {
            let mut out = vec![0u8; 2048];
            let n = seg.next_into(frame, &mut out).unwrap().expect("a segment");
            assert_eq!(&out[..n], &want[..], "segment {i}");
            if !v6 {
                checked_segment(&out[..n]);
            }
        }
        assert!(seg.finished());
    }

    /// A guest that takes super-frames gets a burst's run of one TCP flow as one, across
    /// mergeable buffers (num_buffers), between frames that go as they are (flags 0); the
    /// header is what Linux expects and the super-frame cuts back into the segments. IPv4
    /// and IPv6 each only where agreed.
    #[test]
    fn rx_runs_of_tcp_segments_become_one_super_frame() {
        let p = pool();
        let mut c = p.cache();
        let segs = tcp_segments(10_000, 1000);
        assert_eq!(segs.len(), 10);
        let udp = {
            let mut v = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(1, 2)
                .write(&mut v, &[9u8; 100])
                .unwrap();
            v
        };
        let mut frames = vec![udp.clone()];
        frames.extend(segs.iter().cloned());
        frames.push(udp.clone());
        let both = RxGso { tcpv4: true, tcpv6: true };
        let mut f = Fake::new(32);
        let mut r = gso_rx_ring(&mut f, 32, 2048, both);
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst_of(&mut c, &frames), &mut c, &mut d), 12, "segments count as frames");
        assert!(d.is_zero());
        assert_eq!(r.take_merges(), RxMerges { frames: 1, segments: 10 });
        assert_eq!(r.take_merges(), RxMerges::default());
        let got = guest_frames(&f, 2048, 0, f.used_idx());
        assert_eq!(got.len(), 3);
        for k in [0, 2] {
            assert_eq!((got[k].0, got[k].1), (VnetHdrRepr::default(), 1), "a plain frame: flags 0");
            assert_eq!(got[k].2, udp);
        }
        // 12 + 54 + 10,000 bytes in 2 KiB buffers.
        assert_eq!(got[1].1, 5, "num_buffers");
        assert_eq!(got[1].2.len(), 54 + 10_000);
        cuts_back_into(&got[1].0, &got[1].2, &segs, false);

        // IPv6 the same; an IPv6 run towards a guest that agreed to TCPV4 only goes as it is.
        let segs6 = tcp6_segments(6, 1200);
        for (agreed, merged) in [(both, true), (RxGso { tcpv4: true, tcpv6: false }, false)] {
            let mut f = Fake::new(32);
            let mut r = gso_rx_ring(&mut f, 32, 2048, agreed);
            assert_eq!(r.enqueue(&mut burst_of(&mut c, &segs6), &mut c, &mut d), 6);
            let got = guest_frames(&f, 2048, 0, f.used_idx());
            if merged {
                assert_eq!(got.len(), 1);
                cuts_back_into(&got[0].0, &got[0].2, &segs6, true);
            } else {
                let plain: Vec<Vec<u8>> = got.iter().map(|g| g.2.clone()).collect();
                assert_eq!(plain, segs6);
                assert!(got.iter().all(|g| g.0 == VnetHdrRepr::default()));
            }
        }
        assert!(d.is_zero());

        // Without the features (or without mergeable buffers) every frame goes as it is.
        for cfg_gso in [RxGso::default(), both] {
            let mut f = Fake::new(32);
            for i in 0..32 {
                f.desc(i, rx_buf_addr(i, 2048), 2048, DESC_F_WRITE, 0);
                f.post(i);
            }
            let mrg = cfg_gso == RxGso::default();
            let cfg = RingConfig { rx_gso: cfg_gso, mrg_rxbuf: mrg, ..f.cfg() };
            let mut r = Vring::new(f.mem.clone(), &cfg, None, None).unwrap();
            assert_eq!(r.enqueue(&mut burst_of(&mut c, &frames), &mut c, &mut d), 12);
            assert_eq!(r.take_merges(), RxMerges::default());
            let got = guest_frames(&f, 2048, 0, f.used_idx());
            assert_eq!(got.iter().map(|g| g.2.clone()).collect::<Vec<_>>(), frames);
        }
        assert!(d.is_zero());
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    /// A segment whose checksum fails ends a run (virtio: a device marking a packet
    /// NEEDS_CSUM has validated it): it goes alone, as it came, and the guest finds the error.
    #[test]
    fn rx_a_bad_checksum_ends_the_run() {
        let p = pool();
        let mut c = p.cache();
        let mut segs = tcp_segments(10_000, 1000);
        segs[5][100] ^= 0x20;
        let mut f = Fake::new(32);
        let mut r = gso_rx_ring(&mut f, 32, 2048, RxGso { tcpv4: true, tcpv6: true });
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst_of(&mut c, &segs), &mut c, &mut d), 10);
        assert!(d.is_zero());
        assert_eq!(r.take_merges(), RxMerges { frames: 2, segments: 9 });
        let got = guest_frames(&f, 2048, 0, f.used_idx());
        assert_eq!(got.len(), 3);
        cuts_back_into(&got[0].0, &got[0].2, &segs[..5], false);
        assert_eq!(
            (got[1].0, &got[1].2),
            (VnetHdrRepr::default(), &segs[5]),
            "the bad one, untouched, flags 0"
        );
        cuts_back_into(&got[2].0, &got[2].2, &segs[6..], false);
    }

    /// Where a run's super-frame cannot be written as one, its segments go one by one: when it
    /// would need more buffers than one frame may take (small buffers), and when the guest's
    /// ring holds fewer buffers than it needs (then, as for any frame, what fits is delivered
    /// and the rest counted as `vhost_tx_retries` once the ring stays full). Nothing is
    /// written past a buffer.
    #[test]
    fn rx_runs_that_do_not_fit_go_segment_by_segment() {
        let p = pool();
        let mut c = p.cache();
        let segs = tcp_segments(10_000, 1000);
        let both = RxGso { tcpv4: true, tcpv6: true };
        // 128-byte buffers: the super-frame would take 79 (> MAX_SEGS), each segment takes 9.
        let mut f = Fake::new(128);
        // A canary after the last buffer.
        f.mem.write(rx_buf_addr(128, 128), &[0xa5; 64]).unwrap();
        let mut r = gso_rx_ring(&mut f, 128, 128, both);
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst_of(&mut c, &segs), &mut c, &mut d), 10);
        assert!(d.is_zero());
        assert_eq!(r.take_merges(), RxMerges::default());
        let got = guest_frames(&f, 128, 0, f.used_idx());
        assert_eq!(got.iter().map(|g| g.2.clone()).collect::<Vec<_>>(), segs);
        assert!(got.iter().all(|g| g.0 == VnetHdrRepr::default() && g.1 == 9));
        let mut canary = [0u8; 64];
        f.mem.read(rx_buf_addr(128, 128), &mut canary).unwrap();
        assert_eq!(canary, [0xa5; 64]);

        // Three 2 KiB buffers for a super-frame that needs five.
        let mut f = Fake::new(32);
        let mut r = gso_rx_ring(&mut f, 3, 2048, both);
        assert_eq!(r.enqueue(&mut burst_of(&mut c, &segs), &mut c, &mut d), 3);
        assert_eq!(d.get(DropReason::VhostTxRetries), 7);
        assert_eq!(r.take_merges(), RxMerges::default());
        let got = guest_frames(&f, 2048, 0, f.used_idx());
        assert_eq!(got.iter().map(|g| g.2.clone()).collect::<Vec<_>>(), segs[..3].to_vec());

        // No buffers at all: counted as for any frame.
        let mut f = Fake::new(32);
        let mut r = gso_rx_ring(&mut f, 0, 2048, both);
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst_of(&mut c, &segs), &mut c, &mut d), 0);
        assert_eq!(d.get(DropReason::VhostNoRxDesc), 10);
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn rx_without_buffers_counts_no_rx_desc() {
        let f = Fake::new(8);
        let mut r = f.ring();
        let p = pool();
        let mut c = p.cache();
        let mut burst = Burst::new();
        for _ in 0..3 {
            burst.push(c.alloc_copy(&[1u8; 60]).unwrap());
        }
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 0);
        assert_eq!(d.get(DropReason::VhostNoRxDesc), 3);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn rx_ring_filling_up_counts_tx_retries() {
        let mut f = Fake::new(8);
        for i in 0..2u16 {
            f.desc(i, 0x10000 + 0x1000 * u64::from(i), 2048, DESC_F_WRITE, 0);
            f.post(i);
        }
        let mut r = f.ring();
        let p = pool();
        let mut c = p.cache();
        let mut burst = Burst::new();
        for _ in 0..5 {
            burst.push(c.alloc_copy(&[1u8; 60]).unwrap());
        }
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 2);
        assert_eq!(d.get(DropReason::VhostTxRetries), 3);
    }

    #[test]
    fn malicious_tx_chains_are_dropped_not_followed() {
        let p = pool();
        let mut c = p.cache();
        // (setup, expected drop reason)
        type Setup = fn(&Fake);
        let cases: Vec<(&str, Setup, DropReason)> = vec![
            ("address outside memory", |f| f.desc(0, 1 << 40, 100, 0, 0), DropReason::VhostInvalidDesc),
            (
                "address + len overflows",
                |f| f.desc(0, u64::MAX - 10, 100, 0, 0),
                DropReason::VhostInvalidDesc,
            ),
            (
                "runs past the end of memory",
                |f| f.desc(0, (1 << 20) - 50, 100, 0, 0),
                DropReason::VhostInvalidDesc,
            ),
            (
                "loop",
                |f| {
                    f.desc(0, 0x8000, 12, DESC_F_NEXT, 1);
                    f.desc(1, 0x9000, 10, DESC_F_NEXT, 0);
                },
                DropReason::VhostInvalidDesc,
            ),
            ("next out of range", |f| f.desc(0, 0x8000, 100, DESC_F_NEXT, 999), DropReason::VhostInvalidDesc),
            ("indirect", |f| f.desc(0, 0x8000, 64, DESC_F_INDIRECT, 0), DropReason::VhostInvalidDesc),
            ("writable in TX", |f| f.desc(0, 0x8000, 64, DESC_F_WRITE, 0), DropReason::VhostInvalidDesc),
            ("shorter than the header", |f| f.desc(0, 0x8000, 8, 0, 0), DropReason::VhostInvalidDesc),
            ("huge length", |f| f.desc(0, 0x8000, u32::MAX, 0, 0), DropReason::VhostInvalidDesc),
            ("larger than a buffer", |f| f.desc(0, 0x8000, 12 + 4000, 0, 0), DropReason::Oversize),
        ];
        for (name, setup, reason) in cases {
            let mut f = Fake::new(8);
            setup(&f);
            f.post(0);
            let mut r = f.ring();
            let mut out = Burst::new();
            let mut d = DropTally::default();
            assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 0, "{name}");
            assert_eq!(d.get(reason), 1, "{name}");
            assert_eq!(f.used_idx(), 1, "{name}: chain returned");
            assert!(r.broken().is_none(), "{name}");
        }
        assert_eq!(p.in_use(), 0);
    }

    /// Writes a chain of `k` descriptors from `first` on (`first`, `first + 1`, ...): with
    /// `lead` zero-length descriptors before `bytes` (one descriptor at `addr`), the rest
    /// zero-length after it; `flags` added to every descriptor.
    fn long_chain(f: &Fake, first: u16, k: u16, lead: u16, addr: u64, bytes: &[u8], flags: u16) {
        f.mem.write(addr, bytes).unwrap();
        for j in 0..k {
            let i = first + j;
            let next = if j + 1 < k { DESC_F_NEXT } else { 0 };
            let (a, len) = if j == lead { (addr, bytes.len() as u32) } else { (addr, 0) };
            f.desc(i, a, len, flags | next, i + 1);
        }
    }

    /// A chain of more than MAX_CHAIN descriptors (zero-length ones, which pass every other
    /// limit) is dropped as an invalid descriptor and returned, on TX (plain and with
    /// offloads, the header behind the empty descriptors) and on RX; one of exactly
    /// MAX_CHAIN passes, and the ring goes on: the next frame passes too.
    #[test]
    fn chains_longer_than_max_chain_are_invalid() {
        let p = pool();
        let mut c = p.cache();
        let frame: Vec<u8> = (0..100u8).collect();
        let mut bytes = vec![0u8; 12];
        bytes.extend_from_slice(&frame);
        // (offloads, empty descriptors before the data)
        for (offload, lead) in [(false, 0), (true, MAX_CHAIN - 1)] {
            let mut f = Fake::new(1024);
            long_chain(&f, 0, MAX_CHAIN, lead.min(MAX_CHAIN - 1), 0x8000, &bytes, 0);
            long_chain(&f, 300, MAX_CHAIN + 1, lead.min(MAX_CHAIN), 0x9000, &bytes, 0);
            long_chain(&f, 600, 1, 0, 0xa000, &bytes, 0);
            for h in [0, 300, 600] {
                f.post(h);
            }
            let mut r = if offload { offload_ring(&f) } else { f.ring() };
            let mut out = Burst::new();
            let mut d = DropTally::default();
            assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 2, "offload {offload}");
            assert_eq!(d.get(DropReason::VhostInvalidDesc), 1, "offload {offload}");
            assert!(out.iter().all(|b| b.data() == &frame[..]), "offload {offload}");
            assert_eq!(f.used_idx(), 3);
            assert_eq!(f.used_elem(1), (300, 0), "the long chain went back empty");
            assert!(r.broken().is_none());
            for b in out.drain(..) {
                c.free(b);
            }
        }
        // RX: the guest's first chain is too long (empty writable descriptors before its
        // buffer), the next is one buffer; the first frame is dropped, the second delivered.
        let mut f = Fake::new(1024);
        long_chain(&f, 0, MAX_CHAIN + 1, MAX_CHAIN, 0x8000, &[0u8; 2048], DESC_F_WRITE);
        long_chain(&f, 600, 1, 0, 0xa000, &[0u8; 2048], DESC_F_WRITE);
        f.post(0);
        f.post(600);
        let mut r = f.ring();
        let mut burst = Burst::new();
        burst.push(c.alloc_copy(&frame).unwrap());
        burst.push(c.alloc_copy(&frame).unwrap());
        let mut d = DropTally::default();
        r.enqueue(&mut burst, &mut c, &mut d);
        assert_eq!(d.get(DropReason::VhostInvalidDesc), 1, "{d:?}");
        assert_eq!(f.used_idx(), 2);
        assert_eq!(f.used_elem(0), (0, 0));
        assert_eq!(f.used_elem(1), (600, 112));
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    /// A guest RX ring of hostile chains: `chains` chains of `chain_len` descriptors (from
    /// descriptor 0 on), each zero-length descriptors and then a 1-byte buffer at its end, so
    /// that every chain is valid and holds one byte. Returns their heads.
    fn hostile_rx_chains(f: &Fake, chains: u16, chain_len: u16) -> Vec<u16> {
        (0..chains)
            .map(|j| {
                let head = j * chain_len;
                long_chain(f, head, chain_len, chain_len - 1, 0x8000 + u64::from(j), &[0u8], DESC_F_WRITE);
                head
            })
            .collect()
    }

    /// The budget's value, from both sides: a frame whose chains hold exactly 256 zero-length
    /// descriptors (16 chains of 16 and a 1-byte buffer, then a chain with room for the rest)
    /// is delivered; one more zero-length descriptor (before the last chain's buffer) and it
    /// is dropped as an invalid descriptor, every chain it took returned with length 0. The
    /// counts are written out, not derived from MAX_EMPTY_DESCS, so that a budget of 255 or
    /// 257 fails here.
    #[test]
    fn rx_the_budget_is_exactly_256_zero_length_descriptors() {
        let p = pool();
        let mut c = p.cache();
        let frame: Vec<u8> = (0..100u8).collect();
        for extra in [false, true] {
            let mut f = Fake::new(1024);
            let heads: Vec<u16> = (0..16u16)
                .map(|j| {
                    long_chain(&f, j * 17, 17, 16, 0x8000 + u64::from(j), &[0u8], DESC_F_WRITE);
                    j * 17
                })
                .collect();
            if extra {
                f.desc(300, 0x10000, 0, DESC_F_WRITE | DESC_F_NEXT, 301);
                f.desc(301, 0x10000, 2048, DESC_F_WRITE, 0);
            } else {
                f.desc(300, 0x10000, 2048, DESC_F_WRITE, 0);
            }
            for &h in heads.iter().chain([300].iter()) {
                f.post(h);
            }
            let mut r = f.ring();
            let mut burst = Burst::new();
            burst.push(c.alloc_copy(&frame).unwrap());
            let mut d = DropTally::default();
            let sent = r.enqueue(&mut burst, &mut c, &mut d);
            assert_eq!(f.used_idx(), 17, "extra {extra}: every chain used");
            if extra {
                assert_eq!((sent, d.get(DropReason::VhostInvalidDesc)), (0, 1), "257: dropped");
                for (k, &h) in heads.iter().chain([300].iter()).enumerate() {
                    assert_eq!(f.used_elem(k as u16), (u32::from(h), 0), "used entry {k}");
                }
            } else {
                assert_eq!((sent, d.get(DropReason::VhostInvalidDesc)), (1, 0), "256: delivered {d:?}");
                // 12 bytes of header and 100 of frame: one byte in each of the 16 small
                // buffers, the other 96 in the last one.
                assert_eq!(f.used_elem(16), (300, 96));
            }
        }
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    /// A guest whose RX chains are zero-length descriptors and a 1-byte buffer: each frame
    /// meets at most MAX_EMPTY_DESCS zero-length descriptors across the chains it takes (a
    /// frame of 112 bytes would otherwise take 64 of them, MAX_SEGS), is dropped as an invalid
    /// descriptor, and every chain it took goes back with length 0; the ring goes on, and a
    /// frame behind them that finds a real buffer is delivered. Counted by the chains each
    /// frame consumed: whole ones, then the one whose zero-length descriptor found the budget
    /// spent, so a frame read (per_frame - 1) chains and the rest of the budget and one more.
    #[test]
    fn rx_frames_walk_at_most_the_descriptor_budget() {
        let p = pool();
        let mut c = p.cache();
        let frame: Vec<u8> = (0..100u8).collect();
        for chain_len in [MAX_CHAIN, 8] {
            let whole = MAX_EMPTY_DESCS / u32::from(chain_len - 1);
            let per_frame = usize::try_from(whole + 1).unwrap();
            let read = (whole * u32::from(chain_len)) + MAX_EMPTY_DESCS % u32::from(chain_len - 1) + 1;
            assert!(read <= MAX_EMPTY_DESCS + MAX_SEGS as u32 + 1, "{read}");
            assert!(per_frame < MAX_SEGS, "the budget, not MAX_SEGS, ends the walk");
            let mut f = Fake::new(1024);
            let heads = hostile_rx_chains(&f, 3, chain_len);
            let frames = 4;
            let posted: Vec<u16> = (0..frames * per_frame).map(|k| heads[k % heads.len()]).collect();
            for &h in &posted {
                f.post(h);
            }
            f.desc(800, 0x10000, 2048, DESC_F_WRITE, 0);
            f.post(800);
            let mut r = f.ring();
            let mut burst = Burst::new();
            for _ in 0..=frames {
                burst.push(c.alloc_copy(&frame).unwrap());
            }
            let mut d = DropTally::default();
            assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 1, "chain_len {chain_len}");
            assert_eq!(d.get(DropReason::VhostInvalidDesc), frames as u32, "chain_len {chain_len}: {d:?}");
            assert_eq!(d.get(DropReason::VhostNoRxDesc) + d.get(DropReason::VhostTxRetries), 0);
            assert_eq!(
                usize::from(f.used_idx()),
                posted.len() + 1,
                "chain_len {chain_len}: {per_frame} chains a frame"
            );
            for (k, &h) in posted.iter().enumerate() {
                assert_eq!(f.used_elem(k as u16), (u32::from(h), 0), "chain_len {chain_len}, used entry {k}");
            }
            assert_eq!(f.used_elem(posted.len() as u16), (800, 112));
            let mut got = vec![0u8; 100];
            f.mem.read(0x10000 + 12, &mut got).unwrap();
            assert_eq!(got, frame);
            assert!(r.broken().is_none());
        }
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    /// A run of TCP segments towards a guest that takes super-frames, over the hostile chains:
    /// the super-frame meets the budget and is dropped once (each segment counted once as an
    /// invalid descriptor; not split and tried again segment by segment), its chains returned;
    /// the frame after it is delivered.
    #[test]
    fn rx_a_super_frame_that_meets_the_budget_is_dropped_once() {
        let p = pool();
        let mut c = p.cache();
        let segs = tcp_segments(10_000, 1000);
        let mut f = Fake::new(1024);
        let heads = hostile_rx_chains(&f, 2, MAX_CHAIN);
        for &h in &heads {
            f.post(h);
        }
        f.desc(800, 0x10000, 2048, DESC_F_WRITE, 0);
        f.post(800);
        let both = RxGso { tcpv4: true, tcpv6: true };
        let mut r = Vring::new(f.mem.clone(), &RingConfig { rx_gso: both, ..f.cfg() }, None, None).unwrap();
        let mut frames = segs.clone();
        frames.push(segs[0].clone());
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst_of(&mut c, &frames), &mut c, &mut d), 1);
        assert_eq!(d.get(DropReason::VhostInvalidDesc), segs.len() as u32, "{d:?}");
        assert_eq!(d.get(DropReason::VhostNoRxDesc) + d.get(DropReason::VhostTxRetries), 0);
        assert_eq!(r.take_merges(), RxMerges::default());
        assert_eq!(f.used_idx(), 3);
        assert_eq!(f.used_elem(0), (u32::from(heads[0]), 0));
        assert_eq!(f.used_elem(1), (u32::from(heads[1]), 0));
        assert_eq!(f.used_elem(2), (800, 12 + segs[0].len() as u32));
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    /// What real guests post is still delivered with the budget in the walk: a mergeable
    /// frame over 64 one-descriptor chains (MAX_SEGS, the most a frame may take), and a "big
    /// packets" chain of 47 descriptors (Linux's `MAX_SKB_FRAGS + 2` at its largest, without
    /// mergeable buffers) filled to its last descriptor. (Real guests post no zero-length
    /// descriptors, so this guards the ordinary walk, not the budget's value.)
    #[test]
    fn rx_real_guests_frames_stay_within_the_budget() {
        let p = pool();
        let mut c = p.cache();
        // 64 buffers of 32 bytes: the header and 2,036 bytes of frame.
        let mut f = Fake::new(128);
        for i in 0..64u16 {
            f.desc(i, 0x10000 + 32 * u64::from(i), 32, DESC_F_WRITE, 0);
            f.post(i);
        }
        let mut r = f.ring();
        let frame: Vec<u8> = (0..2036u32).map(|i| (i * 7) as u8).collect();
        let mut burst = Burst::new();
        burst.push(c.alloc_copy(&frame).unwrap());
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 1);
        assert!(d.is_zero(), "{d:?}");
        assert_eq!(f.used_idx(), 64);
        assert!((0..64u16).all(|i| f.used_elem(i) == (u32::from(i), 32)));
        let mut got = vec![0u8; 2048];
        f.mem.read(0x10000, &mut got).unwrap();
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 64);
        assert_eq!(&got[12..], &frame[..]);

        // Big packets: one chain, a 12-byte header buffer then 46 of 44 bytes (2,024 bytes).
        let mut f = Fake::new(128);
        for i in 0..47u16 {
            let (addr, len) = if i == 0 { (0x10000, 12) } else { (0x10000 + 12 + 44 * u64::from(i - 1), 44) };
            let next = if i < 46 { DESC_F_NEXT } else { 0 };
            f.desc(i, addr, len, DESC_F_WRITE | next, i + 1);
        }
        f.post(0);
        let mut r =
            Vring::new(f.mem.clone(), &RingConfig { mrg_rxbuf: false, ..f.cfg() }, None, None).unwrap();
        let frame: Vec<u8> = (0..2024u32).map(|i| (i * 3) as u8).collect();
        let mut burst = Burst::new();
        burst.push(c.alloc_copy(&frame).unwrap());
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 1);
        assert!(d.is_zero(), "{d:?}");
        assert_eq!(f.used_idx(), 1);
        assert_eq!(f.used_elem(0), (0, 12 + 2024));
        let mut got = vec![0u8; 12 + 2024];
        f.mem.read(0x10000, &mut got).unwrap();
        assert_eq!(&got[12..], &frame[..]);
        drop(c);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn avail_index_jump_and_bad_head_break_the_queue() {
        let p = pool();
        let mut c = p.cache();
        let f = Fake::new(8);
        f.mem.write(f.avail + 2, &100u16.to_le_bytes()).unwrap();
        let mut r = f.ring();
        let mut out = Burst::new();
        let mut d = DropTally::default();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 0);
        assert!(r.broken().is_some());
        assert_eq!(d.get(DropReason::VhostRingBroken), 1);
        let mut burst = Burst::new();
        burst.push(c.alloc_copy(&[0u8; 60]).unwrap());
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 0);
        assert_eq!(d.get(DropReason::VhostRingBroken), 2);

        let mut f = Fake::new(8);
        f.post(77);
        let mut r = f.ring();
        let mut d = DropTally::default();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 0);
        assert!(r.broken().is_some());
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn bad_ring_addresses_are_refused() {
        let f = Fake::new(8);
        let mut cfg = f.cfg();
        cfg.desc = 5; // Not in the table.
        assert!(Vring::new(f.mem.clone(), &cfg, None, None).is_err());
        let mut cfg = f.cfg();
        cfg.used = UVA + (1 << 20) - 8; // Runs off the end.
        assert!(Vring::new(f.mem.clone(), &cfg, None, None).is_err());
        let mut cfg = f.cfg();
        cfg.desc = UVA + 8; // Misaligned.
        assert!(Vring::new(f.mem.clone(), &cfg, None, None).is_err());
        let mut cfg = f.cfg();
        cfg.num = 100; // Not a power of two.
        assert!(Vring::new(f.mem.clone(), &cfg, None, None).is_err());
    }

    #[test]
    fn rx_writes_are_logged() {
        let mut f = Fake::new(8);
        f.desc(0, 0x10000, 2048, DESC_F_WRITE, 0);
        f.post(0);
        let log = Arc::new(DirtyLog::anonymous(64).unwrap());
        let mut r = Vring::new(f.mem.clone(), &f.cfg(), Some(log.clone()), None).unwrap();
        let p = pool();
        let mut c = p.cache();
        let mut burst = Burst::new();
        burst.push(c.alloc_copy(&[1u8; 60]).unwrap());
        let mut d = DropTally::default();
        assert_eq!(r.enqueue(&mut burst, &mut c, &mut d), 1);
        assert!(log.is_marked(0x10000));
        assert!(log.is_marked(f.used));
        assert!(!log.is_marked(0x50000));
    }

    #[test]
    fn event_idx_calls_only_when_asked() {
        let mut f = Fake::new(8);
        for i in 0..4u16 {
            f.desc(i, 0x10000 + 0x1000 * u64::from(i), 2048, DESC_F_WRITE, 0);
            f.post(i);
        }
        let call = Arc::new(sys::eventfd().unwrap());
        let mut cfg = f.cfg();
        cfg.event_idx = true;
        // used_event = 1: call when the used index passes 1.
        f.mem.write(f.avail + 4 + 2 * 8, &1u16.to_le_bytes()).unwrap();
        let mut r = Vring::new(f.mem.clone(), &cfg, None, Some(call.clone())).unwrap();
        let p = pool();
        let mut c = p.cache();
        let mut d = DropTally::default();
        let mut send = |r: &mut Vring, c: &mut PoolCache| {
            let mut b = Burst::new();
            b.push(c.alloc_copy(&[1u8; 60]).unwrap());
            r.enqueue(&mut b, c, &mut d)
        };
        send(&mut r, &mut c); // first call always (no signalled state yet)
        assert_eq!(sys::eventfd_take(&call), 1);
        send(&mut r, &mut c); // used 1 -> 2 crosses event 1
        assert_eq!(sys::eventfd_take(&call), 1);
        send(&mut r, &mut c); // 2 -> 3: not asked
        assert_eq!(sys::eventfd_take(&call), 0);
    }

    /// Whether the guest, moving its available index from `old` to `new`, must kick (the
    /// driver's rule).
    fn guest_kicks(f: &Fake, event_idx: bool, old: u16, new: u16) -> bool {
        let mut b = [0u8; 2];
        if event_idx {
            f.mem.read(f.used + 4 + 8 * u64::from(f.num), &mut b).unwrap();
            need_event(u16::from_le_bytes(b), new, old)
        } else {
            f.mem.read(f.used, &mut b).unwrap();
            u16::from_le_bytes(b) & USED_F_NO_NOTIFY == 0
        }
    }

    #[test]
    fn notify_enable_disable_and_the_race() {
        for event_idx in [false, true] {
            let mut f = Fake::new(8);
            f.desc(0, 0x8000, 12 + 60, 0, 0);
            let mut cfg = f.cfg();
            cfg.event_idx = event_idx;
            let mut r = Vring::new(f.mem.clone(), &cfg, None, None).unwrap();
            let p = pool();
            let mut c = p.cache();
            let mut d = DropTally::default();
            assert!(!guest_kicks(&f, event_idx, 0, 1), "polling: no kicks");
            assert!(r.enable_notify());
            assert!(guest_kicks(&f, event_idx, 0, 1), "armed: kick for the next entry");
            r.disable_notify();
            assert!(!guest_kicks(&f, event_idx, 0, 1));
            // The guest posts between our request and our re-check; it saw the request (so it
            // kicks), and the re-check sees its entry: the arm fails and is withdrawn.
            let mut kicked = false;
            let ok = r.enable_notify_with(|| {
                f.post(0);
                fence(Ordering::SeqCst);
                kicked = guest_kicks(&f, event_idx, 0, 1);
            });
            assert!(!ok, "event_idx {event_idx}: entry posted during the arm must fail it");
            assert!(kicked);
            assert!(!guest_kicks(&f, event_idx, 1, 2), "a failed arm leaves kicks suppressed");
            let mut out = Burst::new();
            assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 1);
            c.free(out.pop().unwrap());
            // Polled far past the index of the disarm (more than the queue size, as a busy
            // worker does): still no kick.
            r.disable_notify();
            for k in 1..200u16 {
                f.desc(0, 0x8000, 12 + 60, 0, 0);
                f.post(0);
                assert!(!guest_kicks(&f, event_idx, k, k + 1), "event_idx {event_idx}: kick at {k}");
                assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 1);
                c.free(out.pop().unwrap());
            }
            assert!(r.enable_notify());
            assert!(guest_kicks(&f, event_idx, 200, 201));
            assert!(d.is_zero());
        }
    }

    #[test]
    fn broken_or_unwritable_rings_never_panic_on_notify() {
        let p = pool();
        let mut c = p.cache();
        let f = Fake::new(8);
        f.mem.write(f.avail + 2, &100u16.to_le_bytes()).unwrap();
        let mut r = f.ring();
        // Garbage index: not idle (the next dequeue judges it).
        assert!(!r.enable_notify());
        let mut out = Burst::new();
        let mut d = DropTally::default();
        assert_eq!(r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 32), 0);
        assert!(r.broken().is_some());
        assert_eq!(d.get(DropReason::VhostRingBroken), 1, "counted once, by the dequeue");
        // Broken: nothing will come until the frontend sets the ring up again.
        assert!(r.enable_notify());
        r.disable_notify();
    }

    #[test]
    fn a_rebuilt_ring_keeps_asking_for_kicks() {
        for event_idx in [false, true] {
            let mut f = Fake::new(8);
            let mut cfg = f.cfg();
            cfg.event_idx = event_idx;
            let mut r = Vring::new(f.mem.clone(), &cfg, None, None).unwrap();
            assert!(r.enable_notify() && r.kicks_requested());
            drop(r);
            // A new ring starts suppressed; request_kicks restores the request.
            let mut r = Vring::new(f.mem.clone(), &cfg, None, None).unwrap();
            assert!(!r.kicks_requested() && !guest_kicks(&f, event_idx, 0, 1));
            assert!(r.request_kicks());
            assert!(guest_kicks(&f, event_idx, 0, 1));
            f.post(0);
            r.disable_notify();
            assert!(!r.kicks_requested() && !guest_kicks(&f, event_idx, 1, 2));
        }
    }

    /// A value that is mostly within what the ring allows (`Fit`: taken modulo it), one time
    /// in `one_in` anything.
    #[derive(Debug, Clone, Copy)]
    enum Aim {
        Fit(u16),
        Wild(u16),
    }

    fn aim(one_in: u32) -> impl Strategy<Value = Aim> {
        prop_oneof![one_in - 1 => any::<u16>().prop_map(Aim::Fit), 1 => any::<u16>().prop_map(Aim::Wild)]
    }

    impl Aim {
        fn within(self, n: u16) -> u16 {
            match self {
                Aim::Fit(v) => v % n.max(1),
                Aim::Wild(v) => v,
            }
        }
    }

    /// One descriptor a hostile guest wrote: `addr` mostly inside one of the regions
    /// (`region`, `offset` taken modulo what there is), else anything; flags mostly what the
    /// ring's direction wants (`None`: read-only for a TX ring, writable for an RX ring, with
    /// NEXT as `chain` says), else any mix; `next` mostly inside the table.
    #[derive(Debug, Clone)]
    struct RandomDesc {
        region: usize,
        offset: u64,
        wild_addr: Option<u64>,
        len: u32,
        flags: Option<u16>,
        chain: bool,
        next: Aim,
    }

    fn random_desc() -> impl Strategy<Value = RandomDesc> {
        let addr = prop_oneof![9 => Just(None), 1 => any::<u64>().prop_map(Some)];
        let len = prop_oneof![9 => 0u32..2200, 1 => any::<u32>()];
        let flags = prop_oneof![
            8 => Just(None),
            1 => proptest::sample::select(vec![
                0,
                DESC_F_NEXT,
                DESC_F_WRITE,
                DESC_F_NEXT | DESC_F_WRITE,
                DESC_F_INDIRECT,
            ])
            .prop_map(Some),
            1 => any::<u16>().prop_map(Some),
        ];
        (0usize..3, any::<u64>(), addr, len, flags, proptest::bool::weighted(0.25), aim(10)).prop_map(
            |(region, offset, wild_addr, len, flags, chain, next)| RandomDesc {
                region,
                offset,
                wild_addr,
                len,
                flags,
                chain,
                next,
            },
        )
    }

    /// A hostile guest's ring: the memory layout, where the three parts lie, what the
    /// descriptor table and available ring hold, and how the indices stand.
    #[derive(Debug, Clone)]
    struct RandomRing {
        regions: Vec<(u64, u64)>,
        num_log: u32,
        /// Whether the parts are placed so that they fit inside the first region (as a guest
        /// does), or anywhere in and past it (set-up refused, mostly).
        fit: bool,
        ring_at: Vec<u64>,
        /// Words sprayed anywhere over the first region before the ring is written.
        garbage: Vec<(u64, u64)>,
        descs: Vec<RandomDesc>,
        /// The guest receives on the ring (the switch enqueues), or transmits (it dequeues).
        rx: bool,
        /// The available ring's entries: mostly heads inside the table.
        heads: Vec<Aim>,
        avail_flags: u16,
        /// The used index in memory: mostly `base`, else anything (the ring then starts from
        /// it, as after a frontend restart).
        used_idx: Option<u16>,
        base: u16,
        /// How far the guest's available index runs ahead of the used one at first, and moves
        /// on at each later round: mostly within the queue size, else anything.
        ahead: Vec<Aim>,
        frames: Vec<usize>,
        event_idx: bool,
        mrg: bool,
    }

    fn random_ring() -> impl Strategy<Value = RandomRing> {
        (
            (
                proptest::collection::vec((0u64..64, 1u64..4), 1..4),
                0u32..6,
                proptest::bool::weighted(0.9),
                proptest::collection::vec(any::<u64>(), 3),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..64),
                proptest::collection::vec(random_desc(), 32),
                any::<bool>(),
            ),
            (
                proptest::collection::vec(aim(100), 32),
                any::<u16>(),
                prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)],
                any::<u16>(),
                proptest::collection::vec(aim(40), 4),
                proptest::collection::vec(0usize..3000, 0..40),
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(|((regions, num_log, fit, ring_at, garbage, descs, rx), rest)| {
                let (heads, avail_flags, used_idx, base, ahead, frames, event_idx, mrg) = rest;
                RandomRing {
                    regions,
                    num_log,
                    fit,
                    ring_at,
                    garbage,
                    descs,
                    rx,
                    heads,
                    avail_flags,
                    used_idx,
                    base,
                    ahead,
                    frames,
                    event_idx,
                    mrg,
                }
            })
    }

    /// Random memory tables, ring placements, descriptor tables, available rings and
    /// indices, aimed as a guest would lay them out (as fuzz/fuzz_targets/vring.rs learns to),
    /// with now and then a value that is anything: the queue code must never panic, never
    /// touch memory outside the regions (each region sits between guard pages, so a stray
    /// access would fault), and every buffer comes back. Over the run, most rings are
    /// accepted and frames move both ways.
    #[test]
    fn random_rings_never_escape() {
        use proptest::test_runner::{Config, TestRunner};
        use std::cell::Cell;
        let (cases, accepted, dequeued, enqueued) =
            (256u32, Cell::new(0u32), Cell::new(0u64), Cell::new(0u64));
        let mut runner = TestRunner::new(Config { cases, source_file: Some(file!()), ..Config::default() });
        let outcome = runner.run(&random_ring(), |g| {
            // Regions of 16, 32 or 48 KiB at distinct 256 KiB-aligned guest addresses.
            let mut layout: Vec<(u64, u64, u64)> = Vec::new();
            for &(slot, pages) in &g.regions {
                if !layout.iter().any(|&(gpa, _, _)| gpa == slot << 18) {
                    layout.push((slot << 18, pages * 16384, (slot << 18) + UVA));
                }
            }
            let mem = Arc::new(GuestMemory::anonymous(&layout).unwrap());
            let (g0, size0, _) = layout[0];
            for &(off, w) in &g.garbage {
                let _ = mem.write(g0 + off % size0, &w.to_le_bytes());
            }
            let num = 1u16 << g.num_log;
            let n = u64::from(num);
            // Offsets in the first region where a part of `len` bytes fits (or anywhere in
            // and past it), aligned as the part must be.
            let place = |r: u64, len: u64, align: u64| {
                let room = if g.fit { size0 - len + 1 } else { size0 + 4096 };
                g0 + ((r % room) & !(align - 1))
            };
            let (desc, avail, used) = (
                place(g.ring_at[0], 16 * n, 16),
                place(g.ring_at[1], 6 + 2 * n, 2),
                place(g.ring_at[2], 6 + 8 * n, 4),
            );
            let u16_at = |gpa: u64, v: u16| {
                let _ = mem.write(gpa, &v.to_le_bytes());
            };
            for (i, d) in g.descs.iter().take(usize::from(num)).enumerate() {
                let (rg, size, _) = layout[d.region % layout.len()];
                let addr = d.wild_addr.unwrap_or(rg + d.offset % size);
                let mut b = [0u8; 16];
                b[0..8].copy_from_slice(&addr.to_le_bytes());
                b[8..12].copy_from_slice(&d.len.to_le_bytes());
                let want = if g.rx { DESC_F_WRITE } else { 0 } | if d.chain { DESC_F_NEXT } else { 0 };
                b[12..14].copy_from_slice(&d.flags.unwrap_or(want).to_le_bytes());
                b[14..16].copy_from_slice(&d.next.within(num).to_le_bytes());
                let _ = mem.write(desc + 16 * i as u64, &b);
            }
            let start = g.used_idx.unwrap_or(g.base);
            u16_at(used + 2, start);
            u16_at(avail, g.avail_flags);
            for (i, &h) in g.heads.iter().take(usize::from(num)).enumerate() {
                u16_at(avail + 4 + 2 * i as u64, h.within(num));
            }
            let mut avail_idx = start.wrapping_add(g.ahead[0].within(num + 1));
            u16_at(avail + 2, avail_idx);
            let cfg = RingConfig {
                num,
                desc: UVA + desc,
                avail: UVA + avail,
                used: UVA + used,
                used_log_gpa: Some(used),
                base: g.base,
                event_idx: g.event_idx,
                hdr_len: if g.mrg { 12 } else { 10 },
                mrg_rxbuf: g.mrg,
                in_order: g.mrg,
                tx_offload: g.event_idx,
                rx_gso: RxGso { tcpv4: g.event_idx, tcpv6: g.event_idx },
            };
            let log = Arc::new(DirtyLog::anonymous(8).unwrap());
            let call = Arc::new(sys::eventfd().unwrap());
            let p = Pool::with_hugepages("fuzz", 256, false).unwrap();
            let mut c = p.cache();
            if let Ok(mut r) = Vring::new(mem.clone(), &cfg, Some(log), Some(call)) {
                accepted.set(accepted.get() + 1);
                let mut d = DropTally::default();
                for round in 0..4 {
                    if round > 0 {
                        // The guest offers more (the same heads again: the ring wraps).
                        avail_idx = avail_idx.wrapping_add(g.ahead[round].within(num + 1));
                        u16_at(avail + 2, avail_idx);
                    }
                    if r.enable_notify() {
                        r.disable_notify();
                    }
                    if g.rx {
                        let mut burst = Burst::new();
                        if g.event_idx && round % 2 == 0 {
                            // A run of TCP segments (merged where the ring takes super-frames).
                            let mss = 200 + g.frames.get(round).map_or(0, |l| l % 1200) as u16;
                            for s in tcp_segments(usize::from(mss) * 10 - 7, mss) {
                                burst.push(c.alloc_copy(&s).unwrap());
                            }
                        }
                        for &len in g.frames.iter().skip(round * 10).take(10 - burst.len()) {
                            let mut b = c.alloc().unwrap();
                            b.set_len(len.min(switchyard_dataplane::buffer::DATA_ROOM)).unwrap();
                            burst.push(b);
                        }
                        let n = burst.len();
                        let sent = r.enqueue(&mut burst, &mut c, &mut d);
                        prop_assert!(sent <= n);
                        prop_assert!(burst.is_empty());
                        enqueued.set(enqueued.get() + sent as u64);
                        continue;
                    }
                    let mut out = Burst::new();
                    let got = r.dequeue(RxCtx::new(&mut c, &mut d), &mut out, 64);
                    prop_assert!(got <= 64);
                    dequeued.set(dequeued.get() + got as u64);
                    for b in out.drain(..) {
                        prop_assert!(b.len() <= switchyard_dataplane::buffer::DATA_ROOM);
                        c.free(b);
                    }
                }
            }
            drop(c);
            prop_assert_eq!(p.in_use(), 0);
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
        let (accepted, dequeued, enqueued) = (accepted.get(), dequeued.get(), enqueued.get());
        assert!(accepted * 4 >= cases * 3, "only {accepted} of {cases} rings were accepted");
        // Measured: about 97% accepted, ~900 frames out of TX rings and ~200 into RX rings
        // (before the generator was aimed: 12% accepted, no frame either way).
        assert!(
            dequeued >= 50 && enqueued >= 50,
            "frames moved: {dequeued} out of rings, {enqueued} into them"
        );
    }
}
