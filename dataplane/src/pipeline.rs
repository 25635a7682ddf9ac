//! The L2 pipeline: a burst of frames from one port goes through small stages, each a loop
//! over the burst (parse -> ingress VLAN -> spoof check -> learn -> lookup -> egress VLAN ->
//! per-port TX batches), in the manner of VPP's graph nodes.
//!
//! A plain burst (every frame untagged, unicast to unicast, on a port that admits untagged
//! frames and has no spoof filter, or whose MAC spoof filter, on a bridge without policies or
//! IP spoof filters, passes every frame unchanged; or every frame tagged with the one VLAN the
//! port admits it into, on a port without a spoof filter; not traced) runs the same stages
//! keeping nothing but each frame's two probes, and when every destination is a known port
//! that carries the VLAN, queues them a run of frames per egress port at a time, pushing or
//! popping the tags of a run to a port that takes the VLAN the other way. On a bridge with policies,
//! a plain burst of established connections, or of untracked ones between two ports without
//! policies (see `filter::fast_burst`), whose sources are all learned and destinations all
//! known takes a short form of the same stages (`policy_fast`:
//! nothing learned, each frame checked against the port it is queued to), on ports with MAC or
//! IP spoof filters too (both checked for every frame), and on a trunk (an uplink, or a VM's
//! trunk with spoof filters, checked behind the tag) for a burst tagged with one VLAN, the tags
//! of runs to access ports popped (and an access port's pushed for runs to a trunk). It decides exactly
//! what the general stages decide: property tests (dataplane/tests/properties.rs,
//! dataplane/tests/policy_fast_path.rs) run both on the same bursts and compare frames,
//! counters, MAC tables and connection tables (and, from [`plain_bursts_on_this_thread`], that
//! the plain path ran).
//!
//! Invariants:
//! - Nothing here allocates, locks or makes a system call on the forwarding path (learning a
//!   MAC that was never seen before takes the MAC table's writer mutex; see `fdb`). The frame
//!   metadata lives in a fixed array on the stack; egress batches are slots kept from burst
//!   to burst ([`TxBatches`]), added to only when a flush has more egress ports than any
//!   before it (a warm-up, as a new MAC's learning is).
//! - Every frame that enters either leaves through at least one TX batch or is counted under
//!   exactly one [`DropReason`] on its ingress port; buffers always go back to the pool.
//! - A frame dropped at ingress (runt, bad VLAN, invalid or spoofed source, reserved
//!   destination) teaches the MAC table nothing.
//! - No input can make this code panic: every header read is behind a length check done once
//!   in the parse stage, and every buffer operation that can fail returns an error that is
//!   counted.
//!
//! The semantics are those of docs/semantics.md "Forwarding" (Open vSwitch's NORMAL
//! action, plus MAC spoof filtering, static entries and per-port MAC limits).

use crate::buffer::{PacketBuf, PoolCache};
use crate::fdb::{FdbHit, FdbView, LearnOutcome, Probe};
use crate::port::{Burst, DropTally, TxQueue, MAX_BURST};
use crate::switch::{DropReason, PortId, PortSpec, SwitchConfig};
use crate::wire::{
    ArpPacket, EtherType, MacAddr, VlanTci, ETH_HEADER_LEN, ETH_VLAN_HEADER_LEN, VLAN_TAG_LEN,
    VLAN_TCI_OFFSET,
};
use arrayvec::ArrayVec;
use std::sync::atomic::Ordering;

/// What the pipeline decided for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    Unicast(PortId),
    Flood,
}

/// What the stages know about one frame. `verdict` is `None` while the frame is still going:
/// after learning, such a frame is looked up (stage 4).
#[derive(Clone, Copy)]
struct FrameMeta {
    /// The addresses as [`MacAddr::to_u64`] holds them (one compare instead of six).
    dst: u64,
    src: u64,
    /// The frame carries an 802.1Q tag (a priority tag included).
    tagged: bool,
    tci: u16,
    vlan: u16,
    verdict: Option<Verdict>,
    learn: Option<LearnOutcome>,
    /// The source key's probe.
    probe: Probe,
    /// The destination key's probe (unicast destinations).
    dprobe: Probe,
    /// A multicast destination: flooded, but still to be learned from.
    flood_pending: bool,
}

/// One frame's path through the pipeline, for `replay --trace` and `ctl trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTrace {
    pub in_port: PortId,
    pub len: usize,
    pub src: MacAddr,
    pub dst: MacAddr,
    /// The VLAN the frame was assigned (None when dropped before that).
    pub vlan: Option<u16>,
    pub learn: Option<LearnOutcome>,
    pub verdict: Verdict,
    /// Ports the frame was queued to.
    pub out_ports: Vec<PortId>,
    /// What the policy stage decided (bridges with policies or IP spoof filters only).
    pub filter: Option<String>,
}

impl FrameTrace {
    /// One line, as `replay --trace` and `ctl trace` print it (ports by name):
    /// `IN len=N SRC > DST vlan=V learn=WHAT -> unicast OUT | flood OUT,OUT | drop REASON`.
    pub fn describe(&self, cfg: &SwitchConfig) -> String {
        let name = |p: PortId| cfg.port(p).map_or_else(|| format!("#{p}"), |s| s.name.clone());
        let mut s = format!("{} len={} {} > {}", name(self.in_port), self.len, self.src, self.dst);
        if let Some(v) = self.vlan {
            s.push_str(&format!(" vlan={v}"));
        }
        if let Some(l) = self.learn {
            let what = match l {
                LearnOutcome::Refreshed => "refreshed".to_string(),
                LearnOutcome::Learned => "learned".to_string(),
                LearnOutcome::Moved { from } => format!("moved-from:{}", name(from)),
                LearnOutcome::StaticConflict { owner } => format!("static-on:{}", name(owner)),
                LearnOutcome::PortLimit => "mac-limit".to_string(),
                LearnOutcome::TableFull => "table-full".to_string(),
            };
            s.push_str(&format!(" learn={what}"));
        }
        if let Some(f) = &self.filter {
            s.push_str(&format!(" policy={f}"));
        }
        match self.verdict {
            Verdict::Drop(r) => s.push_str(&format!(" -> drop {}", r.name())),
            Verdict::Unicast(_) | Verdict::Flood => {
                let kind = if matches!(self.verdict, Verdict::Flood) { "flood" } else { "unicast" };
                let outs: Vec<String> = self.out_ports.iter().map(|p| name(*p)).collect();
                s.push_str(&format!(" -> {kind} {}", outs.join(",")));
            }
        }
        s
    }
}

/// Frames waiting to be sent, one batch per egress port that has frames, filled by
/// [`process_burst`] and emptied by [`TxBatches::flush`].
///
/// The batches are slots handed out in the order their ports get a first frame (as VPP's next
/// frames), found through a port -> slot index of two bytes a port: a worker holds as many
/// batches as the most egress ports one flush ever had (at most [`MAX_BURST`] for unicast
/// bursts; a flood over N ports needs N), not one per port of the node. Slots are kept from
/// flush to flush, so after the first bursts queueing allocates nothing.
pub struct TxBatches {
    /// Per port id: its batch's index in `slots`, or [`NO_SLOT`] while it has none.
    slot_of: Vec<u16>,
    /// The batches: the first `used` are in use (each non-empty, its port's `slot_of` naming
    /// it), in the order of their ports' first frames; the rest are empty, kept for reuse.
    slots: Vec<PortBatch>,
    used: usize,
    /// The plain path's probes, one per frame of the burst in process: scratch space kept from
    /// burst to burst (a fixed array, so that filling it needs no length or capacity kept),
    /// never cleared: only the first `burst.len()` entries are the burst's.
    plain: Box<[PlainFrame; MAX_BURST]>,
    /// The drops of the burst in process (of its ingress port in [`process_burst`], of each
    /// egress port in turn in [`TxBatches::flush`]): kept from burst to burst and empty
    /// between them (every user flushes it into a port's counters, which empties it), so that
    /// no burst zeroes a count for every reason.
    drops: DropTally,
}

/// `TxBatches::slot_of` of a port without a batch (port ids are below
/// [`crate::switch::MAX_PORTS_PER_NODE`], so a slot index never is this).
const NO_SLOT: u16 = u16::MAX;

/// One port's batch and what flushing it counts.
struct PortBatch {
    /// The port the batch is for (while in use).
    port: PortId,
    frames: Burst,
    /// The bytes of `frames` (kept as they are queued, so that a flush need not add them up).
    bytes: u64,
    /// Egress drops found while queueing (a full batch), counted at flush.
    drops: u32,
}

impl PortBatch {
    fn new() -> PortBatch {
        PortBatch { port: 0, frames: Burst::new(), bytes: 0, drops: 0 }
    }

    /// Frames that found the batch full: freed, counted as `tx_full` at the next flush.
    #[inline(always)]
    fn overflow(&mut self, bufs: impl Iterator<Item = PacketBuf>, cache: &mut PoolCache) {
        for f in bufs {
            self.drops += 1;
            cache.free(f);
        }
    }
}

/// One more batch slot: a flush with more egress ports than any before it.
#[cold]
#[inline(never)]
fn grow(slots: &mut Vec<PortBatch>) {
    slots.push(PortBatch::new());
}

impl TxBatches {
    pub fn new(port_slots: usize) -> TxBatches {
        let mut t = TxBatches {
            slot_of: Vec::new(),
            slots: Vec::new(),
            used: 0,
            plain: Box::new([PlainFrame::default(); MAX_BURST]),
            drops: DropTally::default(),
        };
        t.resize(port_slots);
        t
    }

    /// Makes room for a snapshot with `port_slots` port ids: the index, and the batches a
    /// unicast burst can need. Only called between bursts.
    pub fn resize(&mut self, port_slots: usize) {
        if self.slot_of.len() < port_slots {
            self.slot_of.resize(port_slots, NO_SLOT);
        }
        let want = port_slots.min(MAX_BURST);
        if self.slots.len() < want {
            self.slots.resize_with(want, PortBatch::new);
        }
    }

    /// The batch of `port`, given a slot (and so put on the flush list) if it has none and
    /// `adding` frames to it; `None` for a port id beyond the index (not in the snapshot it
    /// was sized for), or for a port without a batch when not `adding`.
    #[inline(always)]
    fn batch(&mut self, port: PortId, adding: bool) -> Option<&mut PortBatch> {
        let TxBatches { slot_of, slots, used, .. } = self;
        let slot = slot_of.get_mut(usize::from(port))?;
        let s = if *slot != NO_SLOT {
            usize::from(*slot)
        } else if adding {
            let s = *used;
            if s == slots.len() {
                grow(slots);
            }
            *used = s + 1;
            // At most one slot per port id, so `s` < MAX_PORTS_PER_NODE < NO_SLOT.
            *slot = s as u16;
            s
        } else {
            return None;
        };
        let b = slots.get_mut(s)?;
        b.port = port;
        Some(b)
    }

    #[inline(always)]
    fn push(&mut self, port: PortId, buf: PacketBuf, cache: &mut PoolCache) {
        let Some(b) = self.batch(port, true) else {
            cache.free(buf);
            return;
        };
        let len = buf.len() as u64;
        match b.frames.try_push(buf) {
            Ok(()) => b.bytes += len,
            Err(e) => b.overflow(std::iter::once(e.element()), cache),
        }
    }

    /// Queues the next `n` frames of `bufs` for `port`, as `n` calls of `push` would.
    #[inline(always)]
    fn push_run(
        &mut self,
        port: PortId,
        bufs: &mut impl Iterator<Item = PacketBuf>,
        n: usize,
        cache: &mut PoolCache,
    ) {
        let Some(b) = self.batch(port, n != 0) else {
            bufs.take(n).for_each(|b| cache.free(b));
            return;
        };
        let fit = n.min(b.frames.remaining_capacity());
        let mut bytes = 0;
        // Within capacity (fit), so extend cannot overflow the batch.
        b.frames.extend(bufs.take(fit).inspect(|f| bytes += f.len() as u64));
        b.bytes += bytes;
        b.overflow(bufs.take(n - fit), cache);
    }

    /// Queues every frame of `burst`, `bytes` in all, for `port`, as `push` of each in turn
    /// would, and leaves `burst` empty.
    #[inline(always)]
    fn push_burst(&mut self, port: PortId, burst: &mut Burst, bytes: u64, cache: &mut PoolCache) {
        let Some(b) = self.batch(port, !burst.is_empty()) else {
            burst.drain(..).for_each(|f| cache.free(f));
            return;
        };
        let fit = burst.len().min(b.frames.remaining_capacity());
        b.bytes += if fit == burst.len() { bytes } else { burst[..fit].iter().map(|f| f.len() as u64).sum() };
        crate::buffer::move_front(burst, &mut b.frames, fit);
        if !burst.is_empty() {
            b.overflow(burst.drain(..), cache);
        }
    }

    /// Whether anything is waiting.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Frames queued for `port` (for tests and the replay harness).
    pub fn queued(&self, port: PortId) -> usize {
        match self.slot_of.get(usize::from(port)) {
            Some(&s) if s != NO_SLOT => self.slots[usize::from(s)].frames.len(),
            _ => 0,
        }
    }

    /// The batches in use, in the order their ports got a first frame, each taken off the
    /// flush list (its port given no slot) and handed to `f`, which must empty it; then no
    /// slot is in use.
    #[inline(always)]
    fn take_each(&mut self, mut f: impl FnMut(&mut PortBatch, &mut DropTally)) {
        let TxBatches { slot_of, slots, used, drops, .. } = self;
        for b in &mut slots[..*used] {
            slot_of[usize::from(b.port)] = NO_SLOT;
            f(b, drops);
        }
        *used = 0;
    }

    /// Sends every batch through `queues[port]` and counts what was sent and dropped on the
    /// egress ports. A port without a queue (or whose link is down) counts `port_down`.
    pub fn flush(
        &mut self,
        cfg: &SwitchConfig,
        queues: &mut [Option<Box<dyn TxQueue>>],
        cache: &mut PoolCache,
    ) {
        self.take_each(|b, tally| {
            let i = usize::from(b.port);
            let spec = cfg.port(b.port);
            tally.add(DropReason::TxFull, std::mem::take(&mut b.drops));
            let n = b.frames.len();
            let bytes = std::mem::take(&mut b.bytes);
            let sent = match queues.get_mut(i).and_then(|q| q.as_mut()) {
                Some(q) => q.tx_burst(&mut b.frames, cache, tally),
                None => {
                    tally.add(DropReason::PortDown, n as u32);
                    for f in b.frames.drain(..) {
                        cache.free(f);
                    }
                    0
                }
            };
            // The TxQueue contract: a slot not in use holds an empty batch.
            debug_assert!(b.frames.is_empty(), "tx_burst must drain its batch");
            if let Some(spec) = spec {
                let st = &spec.stats;
                let sent_bytes = if sent == n { bytes } else { bytes * sent as u64 / n.max(1) as u64 };
                st.add_tx(sent as u64, sent_bytes);
                tally.flush_into(st);
            } else {
                *tally = DropTally::default();
            }
        });
    }

    /// Hands every non-empty batch to `f` (which must empty it: a slot not in use must hold an
    /// empty batch), without counting anything:
    /// for benchmarks and tests that measure the pipeline without port I/O.
    pub fn drain_with(&mut self, mut f: impl FnMut(PortId, &mut Burst)) {
        self.take_each(|b, _| {
            (b.drops, b.bytes) = (0, 0);
            f(b.port, &mut b.frames);
            debug_assert!(b.frames.is_empty(), "drain_with's closure must empty the batch");
        });
    }

    /// Frees everything queued without sending it (used when a snapshot drops ports).
    pub fn discard(&mut self, cache: &mut PoolCache) {
        self.take_each(|b, _| {
            (b.drops, b.bytes) = (0, 0);
            for f in b.frames.drain(..) {
                cache.free(f);
            }
        });
    }
}

/// Per-burst counters of the ingress port, added to its stats once per burst.
#[derive(Default)]
struct IngressTally {
    rx_packets: u64,
    rx_bytes: u64,
    flooded: u64,
    learned: u64,
    moved_in: u64,
    static_conflicts: u64,
    mac_limit_hits: u64,
    fdb_full: u64,
}

impl IngressTally {
    #[inline(always)]
    fn count_learn(&mut self, out: LearnOutcome) {
        match out {
            LearnOutcome::Refreshed => {}
            LearnOutcome::Learned => self.learned += 1,
            LearnOutcome::Moved { .. } => self.moved_in += 1,
            LearnOutcome::StaticConflict { .. } => self.static_conflicts += 1,
            LearnOutcome::PortLimit => self.mac_limit_hits += 1,
            LearnOutcome::TableFull => self.fdb_full += 1,
        }
    }

    /// Adds the burst's counts to port `p`'s, with `drops`, the burst's drops (which it
    /// empties).
    fn flush_into(&mut self, p: &PortSpec, drops: &mut DropTally) {
        let s = &p.stats;
        let add = |a: &std::sync::atomic::AtomicU64, n: u64| {
            if n != 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        if self.rx_packets != 0 {
            s.add_rx(self.rx_packets, self.rx_bytes);
        }
        // Most bursts flood nothing and learn nothing new: one test for all six.
        let rare = [
            self.flooded,
            self.learned,
            self.moved_in,
            self.static_conflicts,
            self.mac_limit_hits,
            self.fdb_full,
        ];
        if rare.iter().any(|&n| n != 0) {
            add(&s.flooded, self.flooded);
            add(&s.learned, self.learned);
            add(&s.moved_in, self.moved_in);
            add(&s.static_conflicts, self.static_conflicts);
            add(&s.mac_limit_hits, self.mac_limit_hits);
            add(&s.fdb_full, self.fdb_full);
        }
        drops.flush_into(s);
    }
}

/// Whether port `o` takes frames of VLAN `vlan` from a port of bridge `bridge`, and whether
/// they leave it tagged; remembered for the last egress port of a burst, because the frames
/// of one burst mostly share their VLAN and egress port.
#[derive(Clone, Copy)]
struct EgressMemo {
    port: PortId,
    vlan: u16,
    /// `None`: the port is not in the snapshot, not in the bridge or does not carry the VLAN.
    tag_out: Option<bool>,
}

impl EgressMemo {
    const NONE: EgressMemo = EgressMemo { port: PortId::MAX, vlan: u16::MAX, tag_out: None };

    #[inline(always)]
    fn get(&mut self, cfg: &SwitchConfig, bridge: usize, op: PortId, vlan: u16) -> Option<bool> {
        if self.port != op || self.vlan != vlan {
            let tag_out = cfg
                .port(op)
                .filter(|o| o.bridge == bridge && o.vlan.carries(vlan))
                .map(|o| o.vlan.egress_tagged(vlan));
            *self = EgressMemo { port: op, vlan, tag_out };
        }
        self.tag_out
    }
}

#[cfg(debug_assertions)]
thread_local! {
    static PLAIN_BURSTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many bursts took the plain path on this thread: for the property test that compares it
/// with the general stages, which must know that it ran. Counted only in builds with debug
/// assertions (the tests'), so that a release build spends nothing on it.
#[cfg(debug_assertions)]
pub fn plain_bursts_on_this_thread() -> u64 {
    PLAIN_BURSTS.with(|c| c.get())
}

/// Connection-table slots the incremental sweep looks at per burst on a bridge with policies,
/// until the table's allowance of one pass a second is spent (`Conntrack::sweep`): a
/// 1,000,000-connection table, 1,500,000 slots, takes 94,000 bursts a pass.
const SWEEP_SLOTS: usize = 16;

/// Runs one burst received on `in_port` through the pipeline. The burst is left empty: every
/// frame is queued in `tx` or dropped (counted) and freed to `cache`. `now` is the clock in
/// seconds for learning and aging. With `trace`, one [`FrameTrace`] per frame is appended.
pub fn process_burst(
    cfg: &SwitchConfig,
    in_port: PortId,
    burst: &mut Burst,
    now: u32,
    cache: &mut PoolCache,
    tx: &mut TxBatches,
    trace: Option<&mut Vec<FrameTrace>>,
) {
    let n = burst.len();
    let Some(port) = cfg.port(in_port) else {
        // Not in this snapshot (removed while the frames were in flight): nothing to count on.
        for b in burst.drain(..) {
            cache.free(b);
        }
        return;
    };
    let Some(bridge) = cfg.bridges.get(port.bridge) else {
        for b in burst.drain(..) {
            cache.free(b);
        }
        return;
    };
    let mut eg = Egress {
        cfg,
        table: bridge.table.view(),
        now,
        in_port,
        from: port,
        filter: bridge.filter,
        ct: bridge.conntrack.as_deref(),
        cur: None,
        bridge_idx: port.bridge,
        members: &bridge.ports,
        memo: EgressMemo::NONE,
        cache,
        tx,
        t: IngressTally { rx_packets: n as u64, ..Default::default() },
    };
    // The VLAN of untagged frames on this port, once per burst.
    let untagged_vlan = port.vlan.ingress(None);

    // A plain burst (see `plain_probes`) on a port without a spoof filter, untraced, goes
    // through the same stages with nothing but each frame's two probes: no per-frame verdict
    // or metadata to write and read back. Any other burst but those below takes the general
    // stages.
    // On a bridge with policies, a plain burst whose every frame the policy stage would pass
    // unchanged (replies and connections with the snapshot's stored verdict, and untracked
    // connections between two ports without policies, see `filter::fast_burst`) and the MAC
    // spoof filter would pass (every source allowed; the
    // fast path takes IP frames only, so no ARP sender is left to check) takes a short form of
    // the same stages (`policy_fast`).
    // A port with a MAC spoof filter alone (a bridge without policies) takes the same path
    // when the filter passes every frame of the burst unchanged (`plain_probes_spoof`).
    // A burst whose first frame carries an 802.1Q tag (a trunk, an uplink) takes it too when
    // every frame carries the same VLAN's tag (`plain_probes_tagged`), on a port without a
    // spoof filter, or with a MAC spoof filter that passes every frame of the burst unchanged
    // behind its tag (`plain_probes_tagged_spoof`: a router VM on a `vlanTrunk` network with
    // `macspoofchk`); on a bridge with policies or IP spoof filters, a trunk with spoof
    // filters too (`policy_fast`).
    let first_tagged = burst.first().is_some_and(|b| b.data().get(12..14) == Some(&[0x81, 0x00]));
    let plain = match (&trace, &port.allowed_macs, untagged_vlan, bridge.filter) {
        (None, None, _, false) if first_tagged => {
            plain_probes_tagged(burst, port, &eg.table, &mut eg.tx.plain)
                .map(|(vlan, bytes)| (vlan, bytes, true))
        }
        (None, Some(macs), _, false) if first_tagged => {
            plain_probes_tagged_spoof(burst, port, &eg.table, &mut eg.tx.plain, macs)
                .map(|(vlan, bytes)| (vlan, bytes, true))
        }
        (None, None, Some(vlan), false) => {
            plain_probes(burst, vlan, &eg.table, &mut eg.tx.plain).map(|bytes| (vlan, bytes, false))
        }
        (None, Some(macs), Some(vlan), false) => {
            plain_probes_spoof(burst, vlan, &eg.table, &mut eg.tx.plain, macs)
                .map(|bytes| (vlan, bytes, false))
        }
        _ => None,
    };
    match plain {
        Some((vlan, bytes, tagged)) => {
            plain_burst(&mut eg, port, burst, vlan, tagged, bytes);
            #[cfg(debug_assertions)]
            PLAIN_BURSTS.with(|c| c.set(c.get() + 1));
        }
        None => match (&trace, bridge.filter) {
            (None, true) if policy_fast(&mut eg, port, burst, untagged_vlan, first_tagged) => {
                #[cfg(debug_assertions)]
                PLAIN_BURSTS.with(|c| c.set(c.get() + 1));
            }
            _ => general_burst(&mut eg, port, burst, untagged_vlan, trace),
        },
    }
    eg.t.flush_into(port, &mut eg.tx.drops);
}

/// On a bridge with policies: the plain stages for a plain burst (see [`plain_burst`]) whose
/// every source is learned already (learning would write and count nothing), whose every
/// frame goes to a known unicast destination on another port that carries the VLAN, and
/// whose every frame the spoof filters and the policy stage pass unchanged for the port it
/// goes to (replies and connections with the snapshot's stored verdict for the two ports, and
/// untracked connections between two ports without policies, see `filter::FastKeys::check`):
/// then true, the burst queued. Otherwise false, the burst
/// untouched for the general stages, which decide and write everything themselves (the writes
/// made here, a connection entry's expiry moved on and the incremental sweep of the table,
/// are theirs too). The policy is checked against the ports the frames are queued to, after
/// they are looked up, and nothing is learned: a frame never goes elsewhere than where it was
/// checked. Out of line, so that the plain path of bridges without policies stays as it was.
///
/// The burst is untagged (`untagged_vlan`: the VLAN the port admits untagged frames into) or,
/// with `tagged` (its first frame is), a trunk's: every frame tagged with one VLAN's tag, the
/// VLAN the port admits it into ([`tagged_vlan`]): an uplink's, or a VM's trunk with spoof
/// filters, which decide as the general stages' do for a tagged frame: the source MAC, then
/// the source address of an IP packet of a connection directly behind the tag (the one the
/// port read), with the link-local address derived from the source MAC where `allowed_macs`
/// checked it ([`crate::filter::FastKeys::push`]); ARP, neighbour discovery, MLD, ICMP errors,
/// malformed IP and frames with a tag stacked inside (whose payload the general stages read
/// behind every tag) are left to the general stages, so that no ARP sender, link-layer option
/// or inner tag is left unchecked. Runs to a port that takes the VLAN the other way get their
/// tags pushed or popped ([`Runs::retag_runs`]) once every check passed.
#[inline(never)]
fn policy_fast(
    eg: &mut Egress,
    port: &PortSpec,
    burst: &mut Burst,
    untagged_vlan: Option<u16>,
    tagged: bool,
) -> bool {
    let cx = eg.ctx(false);
    let vlan = if tagged {
        // A trunk with spoof filters too (a router VM tagging its own frames, a `vlanTrunk`
        // network with port security): `FastKeys::push` checks them behind the one tag, and
        // `spoof_filtered_tagged_burst` behind every tag, as the general stages do.
        tagged_vlan(burst, port)
    } else {
        untagged_vlan
    };
    let Some(vlan) = vlan else { return false };
    if let Some(ct) = cx.ct {
        ct.sweep(cx.now, SWEEP_SLOTS);
    }
    let mut keys = crate::filter::FastKeys::new(port, cx, vlan);
    // Stage 1: the frame's MAC probes and its connection key, in one read.
    let bytes = match (&mut keys, tagged) {
        (Some(keys), false) => plain_probes_with(burst, vlan, &eg.table, &mut eg.tx.plain, |d, src, et| {
            keys.push(port, d, ETH_HEADER_LEN, src, et)
        }),
        (Some(keys), true) => {
            plain_probes_tagged_with(burst, vlan, &eg.table, &mut eg.tx.plain, |d, src, et| {
                keys.push(port, d, ETH_VLAN_HEADER_LEN, src, et)
            })
        }
        // No connection table (spoof filters alone, on other ports: an OVN localnet's VM ports
        // beside its uplink), or no verdicts to trust.
        (None, false) if cx.ct.is_none() && crate::filter::spoof_filtered_burst(burst, port) => {
            plain_probes(burst, vlan, &eg.table, &mut eg.tx.plain)
        }
        (None, true) if cx.ct.is_none() && crate::filter::spoof_filtered_tagged_burst(burst, port) => {
            plain_probes_tagged_with(burst, vlan, &eg.table, &mut eg.tx.plain, |_, _, _| true)
        }
        (None, _) => None,
    };
    let Some(bytes) = bytes else { return false };
    // The connection table's directory read, the frames' slots prefetched: their misses
    // overlap stage 2.
    if let Some(keys) = &mut keys {
        keys.locate();
    }
    // Stage 2: every source learned, every destination looked up, the burst cut into runs to
    // one port each.
    let (cfg, table, in_port, now) = (eg.cfg, eg.table, eg.in_port, eg.now);
    let mut route = Runs { runs: ArrayVec::new(), ok_port: u32::MAX, in_port, vlan, tagged, retagged: 0 };
    // Frame i's port, as its run has it (written here for every frame of the burst, read by
    // stage 3 only when all of them were).
    let mut to = [0 as PortId; MAX_BURST];
    for ((i, f), o) in eg.tx.plain[..burst.len()].iter().enumerate().zip(to.iter_mut()) {
        let Some(hit) = table.lookup_probe(&f.dst, now) else { return false };
        if !table.learn_is_noop(&f.src, in_port, now)
            || !route.add(i, Some(hit), &mut eg.memo, cfg, port.bridge)
        {
            return false;
        }
        *o = hit.port;
    }
    // Stage 3: the connection table, each frame's verdict against its run's port.
    if let Some(keys) = &keys {
        let open = |op: PortId| cfg.port(op).is_some_and(|p| p.policy.is_none());
        if !keys.check(port, cx, |i| to.get(i).copied(), open) {
            return false;
        }
    }
    // Then the tags, the burst changed only now that it is queued.
    let mut bytes_out = bytes;
    if route.retagged != 0 {
        match route.retag_runs(burst, bytes) {
            Some(b) => bytes_out = b,
            None => return false,
        }
    }
    eg.t.rx_bytes = bytes;
    route.queue(eg, burst, bytes_out);
    true
}

/// The stages for a plain burst of VLAN `vlan` (its frames untagged, or `tagged` with the
/// VLAN's tag) whose probes [`plain_probes`], [`plain_probes_spoof`], [`plain_probes_tagged`]
/// or [`plain_probes_tagged_spoof`] left in `eg.tx.plain` (`bytes`: the burst's bytes): learn
/// every source and look every destination up (as if all learning came first: see below),
/// then, when every frame is a known unicast destination on another port that carries the
/// VLAN, queue the frames a run to the same port at a time (a batch's length is updated once
/// per run, not once per frame; the whole burst at once when it all goes to one port), the
/// tags of a run to a port that takes the VLAN the other way pushed or popped first
/// ([`Runs::retag_runs`]); otherwise frame by frame, as the general stages do.
#[inline(always)]
fn plain_burst(eg: &mut Egress, port: &PortSpec, burst: &mut Burst, vlan: u16, tagged: bool, bytes: u64) {
    let (cfg, table, in_port, now, mac_limit) = (eg.cfg, eg.table, eg.in_port, eg.now, port.mac_limit);
    let n = burst.len();
    eg.t.rx_bytes = bytes;
    let plain = &eg.tx.plain[..n];
    let mut route = Runs { runs: ArrayVec::new(), ok_port: u32::MAX, in_port, vlan, tagged, retagged: 0 };
    // Learning and lookups in one pass as long as every source is learned already (a learn
    // that writes and counts nothing, see `FdbView::learn_is_noop`): the table is then, for
    // every lookup, what it is after all the burst's learning, as the stages' order demands.
    // From the first source that learning may change on, the rest is learned first and every
    // lookup done again after it. (The table's other writers, workers polling other queues of
    // this port, may move a source between a lookup and its check: one frame may then go to
    // the old port during a move, as it may in a frame-by-frame switch.)
    // The frames whose sources are learned.
    let mut learned = 0;
    let mut all_plain = true;
    while let Some(f) = plain.get(learned) {
        if !table.learn_is_noop(&f.src, in_port, now) {
            break;
        }
        learned += 1;
        if !route.add(learned - 1, table.lookup_probe(&f.dst, now), &mut eg.memo, cfg, port.bridge) {
            all_plain = false;
            break;
        }
    }
    let rest = &plain[learned..];
    for f in rest {
        eg.t.count_learn(table.learn_probe(&f.src, in_port, now, mac_limit));
    }
    if all_plain && !rest.is_empty() {
        route.runs.clear();
        route.ok_port = u32::MAX;
        route.retagged = 0;
        for (i, f) in plain.iter().enumerate() {
            if !route.add(i, table.lookup_probe(&f.dst, now), &mut eg.memo, cfg, port.bridge) {
                all_plain = false;
                break;
            }
        }
    }
    let mut bytes_out = bytes;
    if all_plain && route.retagged != 0 {
        match route.retag_runs(burst, bytes) {
            Some(b) => bytes_out = b,
            None => all_plain = false,
        }
    }
    let runs = &route.runs;
    if let (true, [(_, op)]) = (all_plain, runs.as_slice()) {
        eg.tx.push_burst(*op, burst, bytes_out, eg.cache);
    } else if all_plain {
        let mut bufs = burst.drain(..);
        for (k, &(start, op)) in runs.iter().enumerate() {
            let end = runs.get(k + 1).map_or(n, |r| r.0);
            eg.tx.push_run(op, &mut bufs, end - start, eg.cache);
        }
    } else {
        if !tagged {
            for (i, buf) in burst.drain(..).enumerate() {
                let f = eg.tx.plain[i];
                let hit = table.lookup_probe(&f.dst, now);
                eg.forward(hit, vlan, false, buf, None, || f.meta(vlan));
            }
        } else {
            for (i, buf) in burst.drain(..).enumerate() {
                let f = eg.tx.plain[i];
                let hit = table.lookup_probe(&f.dst, now);
                // The frame's own TCI (plain_probes_tagged checked that the tag is there).
                let tci = buf
                    .data()
                    .get(VLAN_TCI_OFFSET..VLAN_TCI_OFFSET + 2)
                    .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
                eg.forward(hit, vlan, true, buf, None, || FrameMeta { tagged: true, tci, ..f.meta(vlan) });
            }
        }
    }
}

/// Where each run of frames to one port of a plain burst starts (frame index, port): a run
/// starts where the destination changes. Each port is checked once per run: a known unicast
/// destination on another port than `in_port` that carries `vlan`. A run to a port that takes
/// the VLAN the other way than the frames carry it (untagged when they are tagged, tagged when
/// they are not) is marked in `retagged`: its frames' tags are popped or pushed
/// ([`Runs::retag_runs`]) before they are queued.
struct Runs {
    runs: ArrayVec<(usize, PortId), MAX_BURST>,
    /// The port of the run in progress (never the ingress port; u32::MAX: none yet).
    ok_port: u32,
    in_port: PortId,
    vlan: u16,
    /// The frames carry VLAN `vlan`'s tag (`plain_probes_tagged`).
    tagged: bool,
    /// Bit k: run k goes to a port that takes the VLAN the other way.
    retagged: u64,
}

impl Runs {
    /// The tags of the frames of the runs to ports that take the VLAN the other way than the
    /// frames carry it (`retagged`) pushed or popped, as `egress_rewrite` does, and the burst's
    /// bytes after (`bytes` before). `None`, nothing changed, when a frame to be tagged has no
    /// headroom for it: then frame by frame, where that one is counted.
    #[cold]
    #[inline(never)]
    fn retag_runs(&self, burst: &mut Burst, bytes: u64) -> Option<u64> {
        let n = burst.len();
        let frames = |k: usize| self.runs.get(k).map_or(0, |r| r.0)..self.runs.get(k + 1).map_or(n, |r| r.0);
        let retagged = || (0..self.runs.len()).filter(|&k| self.retagged >> k & 1 != 0);
        let room = retagged().all(|k| {
            self.tagged
                || burst.get(frames(k)).is_some_and(|r| r.iter().all(|b| b.headroom() >= VLAN_TAG_LEN))
        });
        if !room {
            return None;
        }
        let mut bytes = bytes;
        for k in retagged() {
            for b in burst.get_mut(frames(k)).into_iter().flatten() {
                // Cannot fail: a popped frame has its tag (plain_probes_tagged), a pushed one its
                // headroom (above) and its addresses (plain_probes).
                let done = if self.tagged { b.pop_vlan() } else { b.push_vlan(self.vlan) };
                debug_assert!(done.is_ok(), "a checked retag failed: {done:?}");
                match (done.is_ok(), self.tagged) {
                    (false, _) => {}
                    (true, true) => bytes -= VLAN_TAG_LEN as u64,
                    (true, false) => bytes += VLAN_TAG_LEN as u64,
                }
            }
        }
        Some(bytes)
    }

    /// Queues the burst (`bytes`: its bytes) whose every frame was added: a batch's length is
    /// updated once per run, the whole burst at once when it all goes to one port.
    #[inline(always)]
    fn queue(&self, eg: &mut Egress, burst: &mut Burst, bytes: u64) {
        let n = burst.len();
        if let [(_, op)] = self.runs.as_slice() {
            eg.tx.push_burst(*op, burst, bytes, eg.cache);
        } else {
            let mut bufs = burst.drain(..);
            for (k, &(start, op)) in self.runs.iter().enumerate() {
                let end = self.runs.get(k + 1).map_or(n, |r| r.0);
                eg.tx.push_run(op, &mut bufs, end - start, eg.cache);
            }
        }
    }

    /// Adds frame `i`, whose destination's lookup found `hit` (a bridge `bridge` port, through
    /// `memo`); false when the frame cannot take the run path (unknown destination, or a port
    /// that is the ingress port, is not in the bridge or does not carry the VLAN).
    #[inline(always)]
    fn add(
        &mut self,
        i: usize,
        hit: Option<FdbHit>,
        memo: &mut EgressMemo,
        cfg: &SwitchConfig,
        bridge: usize,
    ) -> bool {
        let Some(hit) = hit else { return false };
        if u32::from(hit.port) == self.ok_port {
            return true;
        }
        // A run per frame at most, so try_push never fails (were it to, the frames would take
        // the frame-by-frame path, which decides the same).
        let k = self.runs.len();
        let Some(tag_out) = memo.get(cfg, bridge, hit.port, self.vlan) else { return false };
        let retag = tag_out != self.tagged;
        if hit.port == self.in_port || self.runs.try_push((i, hit.port)).is_err() {
            return false;
        }
        // k < MAX_BURST = 64 (a run per frame at most).
        self.retagged |= u64::from(retag) << k;
        self.ok_port = u32::from(hit.port);
        true
    }
}

/// The general stages, for any burst (`untagged_vlan`: `port.vlan.ingress(None)`); with
/// `trace`, one [`FrameTrace`] per frame is appended. Out of line: its per-frame metadata
/// arrays would otherwise size (and probe) the stack frame of every plain burst too.
#[inline(never)]
fn general_burst(
    eg: &mut Egress,
    port: &PortSpec,
    burst: &mut Burst,
    untagged_vlan: Option<u16>,
    trace: Option<&mut Vec<FrameTrace>>,
) {
    let (table, in_port, now, mac_limit) = (eg.table, eg.in_port, eg.now, port.mac_limit);
    let mut meta: ArrayVec<FrameMeta, MAX_BURST> = ArrayVec::new();

    // Stage 1: parse, ingress VLAN, and the hash of the source and destination keys, whose
    // slots are prefetched for the whole burst so that with a large table the cache misses of
    // every frame overlap. Every read below is within the length checked here.
    for b in burst.iter() {
        let d = b.data();
        eg.t.rx_bytes += d.len() as u64;
        meta.push(classify(d, port, untagged_vlan, &table));
    }

    // Stage 2: spoof check (only on ports with a filter). A spoofed multicast frame is not
    // flooded, and not learned from.
    if port.allowed_macs.is_some() {
        for (m, b) in meta.iter_mut().zip(burst.iter()) {
            if m.verdict.is_none() || m.flood_pending {
                if let Some(v) = spoof_check(b.data(), m, port) {
                    m.verdict = Some(v);
                    m.flood_pending = false;
                }
            }
        }
    }

    // Stage 2b: the policy stage (bridges with policies or IP spoof filters only): a frame it
    // refuses is not learned from; what it found out goes to the last stage with the frame.
    let mut filt: ArrayVec<crate::filter::FilterMeta, MAX_BURST> = ArrayVec::new();
    if eg.filter {
        let cx = eg.ctx(trace.is_some());
        if let Some(ct) = cx.ct {
            ct.sweep(now, SWEEP_SLOTS);
        }
        // Read every frame, hash its flow key and prefetch its connection's slot first, so
        // that the table's cache misses overlap across the burst.
        let mut l3: ArrayVec<((u16, crate::wire::ip::L3), u64), MAX_BURST> = ArrayVec::new();
        for (m, b) in meta.iter().zip(burst.iter()) {
            let mut r = if m.verdict.is_none() || m.flood_pending {
                crate::filter::parse(b.data(), m.tagged)
            } else {
                (0, crate::wire::ip::L3::Other)
            };
            // A connection is its VLAN's (two VLANs may hold the same addresses).
            if let crate::wire::ip::L3::Ip(f) = &mut r.1 {
                f.key.vlan = m.vlan;
            }
            let mut h = 0;
            if let (Some(ct), crate::wire::ip::L3::Ip(f)) = (cx.ct, &r.1) {
                h = crate::conntrack::hash(&f.key);
                ct.prefetch(h);
            }
            l3.push((r, h));
        }
        for (m, (r, h)) in meta.iter_mut().zip(l3.iter().copied()) {
            let mut fm = crate::filter::FilterMeta::default();
            if m.verdict.is_none() || m.flood_pending {
                match crate::filter::ingress(r, h, (m.src, m.dst), port, cx) {
                    Ok(f) => fm = f,
                    Err(r) => {
                        m.verdict = Some(Verdict::Drop(r));
                        m.flood_pending = false;
                    }
                }
            }
            filt.push(fm);
        }
    }

    // Stage 3: learn (the source of every frame that passed the ingress checks), for the whole
    // burst before any lookup: a frame's destination may be learned from a later frame.
    for m in meta.iter_mut() {
        if m.verdict.is_some() && !m.flood_pending {
            continue;
        }
        let out = table.learn_probe(&m.probe, in_port, now, mac_limit);
        eg.t.count_learn(out);
        m.learn = Some(out);
    }

    // Stage 4: destination lookup (after every frame's learning), egress VLAN and TX batches;
    // traced or not: two loops, so that the untraced one carries nothing of the trace.
    match trace {
        None if !eg.filter => {
            for (m, buf) in meta.iter().zip(burst.drain(..)) {
                eg.emit(m, buf, None);
            }
        }
        None => {
            for (i, (m, buf)) in meta.iter().zip(burst.drain(..)).enumerate() {
                eg.cur = filt.get(i).copied();
                eg.emit(m, buf, None);
            }
        }
        Some(tr) => {
            for (i, (m, buf)) in meta.iter().zip(burst.drain(..)).enumerate() {
                let len = buf.len();
                let mut out_ports = Vec::new();
                eg.cur = filt.get(i).copied();
                let verdict = eg.emit(m, buf, Some(&mut out_ports));
                let filter = eg.cur.as_ref().filter(|_| eg.filter).map(|f| {
                    crate::filter::describe(f, port, out_ports.last().and_then(|&p| eg.cfg.port(p)))
                });
                let reached_vlan = !matches!(
                    verdict,
                    Verdict::Drop(
                        DropReason::Runt
                            | DropReason::TruncatedVlanTag
                            | DropReason::InvalidSrcMac
                            | DropReason::ReservedDstMac
                            | DropReason::VlanNotAllowed
                    )
                );
                tr.push(FrameTrace {
                    in_port,
                    len,
                    src: MacAddr::from_u64(m.src),
                    dst: MacAddr::from_u64(m.dst),
                    vlan: reached_vlan.then_some(m.vlan),
                    learn: m.learn,
                    verdict,
                    out_ports,
                    filter,
                });
            }
        }
    }
}

/// The last stage's view of the burst: where frames go out and what is counted.
struct Egress<'a> {
    cfg: &'a SwitchConfig,
    table: FdbView<'a>,
    now: u32,
    in_port: PortId,
    /// The ingress port.
    from: &'a PortSpec,
    /// The bridge has a port with a policy or an IP spoof filter: the policy stage runs.
    filter: bool,
    /// The bridge's connection table, when it has one.
    ct: Option<&'a crate::conntrack::Conntrack>,
    /// The policy stage's findings for the frame being emitted (`None`: no policy stage).
    cur: Option<crate::filter::FilterMeta>,
    bridge_idx: usize,
    /// The bridge's member ports, in flood order.
    members: &'a [PortId],
    memo: EgressMemo,
    cache: &'a mut PoolCache,
    tx: &'a mut TxBatches,
    /// The ingress port's counters for this burst (all stages add to them; its drops are
    /// counted in `tx.drops`).
    t: IngressTally,
}

impl<'a> Egress<'a> {
    /// What the policy stage needs; `traced`: for a traced burst, which must name the rules
    /// and so uses no stored verdicts (epoch 0).
    fn ctx(&self, traced: bool) -> crate::filter::Ctx<'a> {
        policy_ctx(self.cfg, self.bridge_idx, self.ct, self.now, traced)
    }
}

/// The policy stage's context for bridge `bridge_idx` of `cfg` (see [`Egress::ctx`]).
#[inline(always)]
fn policy_ctx<'a>(
    cfg: &'a SwitchConfig,
    bridge_idx: usize,
    ct: Option<&'a crate::conntrack::Conntrack>,
    now: u32,
    traced: bool,
) -> crate::filter::Ctx<'a> {
    let epoch = match cfg.bridges.get(bridge_idx) {
        Some(b) if !traced => b.policy_epoch,
        _ => 0,
    };
    crate::filter::Ctx { ct, now, epoch }
}

impl Egress<'_> {
    /// Queues (or drops, counted) one frame as its verdict says (a frame still going: as
    /// its destination's lookup says); with `outs`, notes the ports it was queued to. Returns
    /// what happened to it.
    #[inline(always)]
    fn emit(&mut self, m: &FrameMeta, buf: PacketBuf, outs: Option<&mut Vec<PortId>>) -> Verdict {
        match m.verdict {
            None => {
                let hit = self.table.lookup_probe(&m.dprobe, self.now);
                self.forward(hit, m.vlan, m.tagged, buf, outs, || *m)
            }
            Some(Verdict::Drop(r)) => self.drop(r, buf),
            Some(Verdict::Unicast(op)) => {
                if let Err(r) = self.admits(op, outs.is_some(), true) {
                    return self.drop(r, buf);
                }
                let tag_out = self.memo.get(self.cfg, self.bridge_idx, op, m.vlan);
                self.send(op, tag_out, buf, m, outs);
                Verdict::Unicast(op)
            }
            Some(Verdict::Flood) => self.flood(m, buf, outs),
        }
    }

    /// Queues a frame of VLAN `vlan` that passed the ingress stages (`tagged`: it came in
    /// with a tag), given its destination's lookup: a known unicast destination on another
    /// port, an unknown one floods. `meta` is called only off the common path (known unicast,
    /// untagged in and out, untraced), which needs nothing more than the port.
    #[inline(always)]
    fn forward(
        &mut self,
        hit: Option<FdbHit>,
        vlan: u16,
        tagged: bool,
        buf: PacketBuf,
        outs: Option<&mut Vec<PortId>>,
        meta: impl FnOnce() -> FrameMeta,
    ) -> Verdict {
        match hit {
            Some(hit) if hit.port != self.in_port => {
                let op = hit.port;
                let tag_out = self.memo.get(self.cfg, self.bridge_idx, op, vlan);
                if tag_out.is_some() {
                    if let Err(r) = self.admits(op, outs.is_some(), true) {
                        return self.drop(r, buf);
                    }
                }
                match tag_out {
                    Some(false) if !tagged && outs.is_none() => {
                        self.tx.push(op, buf, self.cache);
                        Verdict::Unicast(op)
                    }
                    tag_out @ Some(_) => {
                        self.send(op, tag_out, buf, &meta(), outs);
                        Verdict::Unicast(op)
                    }
                    None => self.drop(DropReason::NoEgressPort, buf),
                }
            }
            Some(_) => self.drop(DropReason::DstIsIngress, buf),
            None => self.flood(&meta(), buf, outs),
        }
    }

    /// The policy stage's second half for egress port `op` (nothing to check without one;
    /// `block`: see [`crate::filter::admit`]: a unicast frame's refusal cuts its connection,
    /// a flood copy's does not).
    #[inline(always)]
    fn admits(&mut self, op: PortId, traced: bool, block: bool) -> Result<(), DropReason> {
        let (Some(m), Some(to)) = (self.cur.as_mut(), self.cfg.port(op)) else { return Ok(()) };
        let cx = policy_ctx(self.cfg, self.bridge_idx, self.ct, self.now, traced);
        crate::filter::admit(m, self.from, to, cx, block)
    }

    #[inline(always)]
    fn drop(&mut self, r: DropReason, buf: PacketBuf) -> Verdict {
        self.tx.drops.add(r, 1);
        self.cache.free(buf);
        Verdict::Drop(r)
    }

    /// Copies the frame to every other member port that carries its VLAN (the frame itself
    /// goes to the last one).
    #[inline(never)]
    fn flood(&mut self, m: &FrameMeta, buf: PacketBuf, mut outs: Option<&mut Vec<PortId>>) -> Verdict {
        let (cfg, in_port, members) = (self.cfg, self.in_port, self.members);
        let carries = |p: PortId| p != in_port && cfg.port(p).is_some_and(|o| o.vlan.carries(m.vlan));
        let Some(last) = members.iter().rposition(|&p| carries(p)) else {
            self.tx.drops.add(DropReason::NoEgressPort, 1);
            self.cache.free(buf);
            return Verdict::Drop(DropReason::NoEgressPort);
        };
        self.t.flooded += 1;
        let tag_out = |p: PortId| cfg.port(p).map(|o| o.vlan.egress_tagged(m.vlan));
        // A port the policy refuses gets no copy (counted once per port refused); the
        // connection is cut only when no port took it.
        let (mut taken, mut denied) = (false, false);
        for &op in members[..last].iter().filter(|&&p| carries(p)) {
            if let Err(r) = self.admits(op, outs.is_some(), false) {
                self.tx.drops.add(r, 1);
                denied |= r == DropReason::PolicyIngressDenied;
                continue;
            }
            taken = true;
            match self.cache.alloc_copy(buf.data()) {
                Some(copy) => self.send(op, tag_out(op), copy, m, outs.as_deref_mut()),
                None => self.tx.drops.add(DropReason::NoBuffer, 1),
            }
        }
        let op = members[last];
        if let Err(r) = self.admits(op, outs.is_some(), false) {
            if !taken && (denied || r == DropReason::PolicyIngressDenied) {
                if let Some(m) = &self.cur {
                    crate::filter::refused(
                        m,
                        policy_ctx(self.cfg, self.bridge_idx, self.ct, self.now, outs.is_some()),
                    );
                }
            }
            return self.drop(r, buf);
        }
        self.send(op, tag_out(op), buf, m, outs);
        Verdict::Flood
    }

    /// Rewrites the VLAN tag of `buf` for egress port `op` (`tag_out`: whether the frame
    /// leaves it tagged; `None` when the port is gone) and queues it; counts `no_buffer` if the
    /// rewrite is impossible (no headroom left).
    #[inline(always)]
    fn send(
        &mut self,
        op: PortId,
        tag_out: Option<bool>,
        mut buf: PacketBuf,
        m: &FrameMeta,
        outs: Option<&mut Vec<PortId>>,
    ) {
        if tag_out.is_some_and(|want_tag| egress_rewrite(&mut buf, m, want_tag).is_ok()) {
            self.tx.push(op, buf, self.cache);
            if let Some(v) = outs {
                v.push(op);
            }
        } else {
            self.tx.drops.add(DropReason::NoBuffer, 1);
            self.cache.free(buf);
        }
    }
}

/// The two probes of a plain frame (see [`plain_probes`]).
#[derive(Clone, Copy, Default)]
struct PlainFrame {
    src: Probe,
    dst: Probe,
}

impl PlainFrame {
    /// What [`classify`] makes of the frame, for the stages off the common path.
    fn meta(&self, vlan: u16) -> FrameMeta {
        FrameMeta {
            dst: self.dst.mac_u64(),
            src: self.src.mac_u64(),
            tagged: false,
            tci: 0,
            vlan,
            verdict: None,
            learn: None,
            probe: self.src,
            dprobe: self.dst,
            flood_pending: false,
        }
    }
}

/// Stage 1 of a plain burst: every frame untagged, with an Ethernet header, a unicast source
/// other than zero and a unicast destination (so not a reserved one), i.e. a frame that
/// [`classify`] passes on with VLAN `vlan` (the port admits untagged frames) and no verdict.
/// Hashes and prefetches both keys of every frame into `out` (frame i's in `out[i]`), and
/// returns the bytes. `None` as soon as a frame is not plain: the general stages then take the
/// whole burst. Out of line, so that the loop has the registers to itself: inlined into
/// `process_burst`, beside the policy and general stages' state, it kept per-burst values
/// (the hash seed and shift) on the stack and read them back for every frame.
#[inline(never)]
fn plain_probes(burst: &Burst, vlan: u16, table: &FdbView, out: &mut [PlainFrame; MAX_BURST]) -> Option<u64> {
    plain_probes_with(burst, vlan, table, out, |_, _, _| true)
}

/// [`plain_probes`] on a port whose MAC spoof filter allows `macs` (not empty): also `None`
/// as soon as a frame is one that [`spoof_check`] would not pass unchanged, so that the
/// general stages take the burst and count the drop. The common frame, IPv4 from the port's
/// first MAC, costs two compares in the loop; any other goes to [`spoof_passes`].
#[inline(never)]
fn plain_probes_spoof(
    burst: &Burst,
    vlan: u16,
    table: &FdbView,
    out: &mut [PlainFrame; MAX_BURST],
    macs: &[MacAddr],
) -> Option<u64> {
    let first = macs.first().map_or(0, |m| m.to_u64());
    plain_probes_with(burst, vlan, table, out, |d, src, et| {
        (src == first && et == EtherType::IPV4) || spoof_passes(d, ETH_HEADER_LEN, src, et, macs)
    })
}

/// Whether the MAC spoof filter allowing `macs` passes the frame `d` (source `src`, EtherType
/// `et` at `l3 - 2`: behind the Ethernet header, or behind the one 802.1Q tag the port read)
/// unchanged, as [`spoof_check`] would: its source allowed, and an ARP or RARP sender or a
/// neighbour discovery link-layer address too (a malformed ARP: false). False also for a tag
/// inside (802.1ad, or an 802.1Q one stacked inside the tag the port read), whose inner tags
/// `spoof_check` reads: the general stages take those.
#[cold]
#[inline(never)]
fn spoof_passes(d: &[u8], l3: usize, src: u64, et: u16, macs: &[MacAddr]) -> bool {
    let allowed = |m: u64| macs.iter().any(|a| a.to_u64() == m);
    if !allowed(src) {
        return false;
    }
    let l3 = d.get(l3..).unwrap_or_default();
    match et {
        EtherType::ARP | EtherType::RARP => {
            ArpPacket::new_checked(l3).is_ok_and(|a| allowed(a.sha().to_u64()))
        }
        EtherType::IPV6 => match crate::wire::ip::nd_link_addr(l3) {
            crate::wire::ip::LinkAddr::None => true,
            crate::wire::ip::LinkAddr::One(mac) => allowed(mac),
            crate::wire::ip::LinkAddr::Several => false,
        },
        EtherType::QINQ | EtherType::VLAN => false,
        _ => true,
    }
}

/// [`plain_probes`] for a burst of 802.1Q-tagged frames on `port` (no spoof filter): every
/// frame at least [`ETH_VLAN_HEADER_LEN`] bytes, tagged with the first frame's VID, which must
/// be the VLAN the port admits it into (not a priority tag, which takes a native VLAN), from a
/// unicast source other than zero to a unicast destination: what [`classify`] passes on with
/// that VLAN and no verdict. The VLAN and the bytes; `None` as soon as a frame is not such a
/// frame (the general stages then take the burst). A frame left tagged in that VLAN leaves as
/// it came (`egress_rewrite` rewrites a tag's VID only).
#[inline(never)]
fn plain_probes_tagged(
    burst: &Burst,
    port: &PortSpec,
    table: &FdbView,
    out: &mut [PlainFrame; MAX_BURST],
) -> Option<(u16, u64)> {
    let vlan = tagged_vlan(burst, port)?;
    plain_probes_tagged_with(burst, vlan, table, out, |_, _, _| true).map(|bytes| (vlan, bytes))
}

/// [`plain_probes_tagged`] on a trunk whose MAC spoof filter allows `macs` (not empty): also
/// `None` as soon as a frame is one that [`spoof_check`] would not pass unchanged, read behind
/// its tag as `spoof_check` reads a tagged frame: a source not allowed, an ARP or RARP sender
/// or a neighbour discovery link-layer address not allowed, a malformed ARP, or a tag stacked
/// inside (whose payload `spoof_check` reads behind every tag), so that the general stages take
/// the burst and count the drop. The common frame, IPv4 from the port's first MAC, costs two
/// compares in the loop; any other goes to [`spoof_passes`]. Its own loop (not a flag of
/// [`plain_probes_tagged`]'s), so that the trunk without a filter keeps its instructions.
#[inline(never)]
fn plain_probes_tagged_spoof(
    burst: &Burst,
    port: &PortSpec,
    table: &FdbView,
    out: &mut [PlainFrame; MAX_BURST],
    macs: &[MacAddr],
) -> Option<(u16, u64)> {
    let vlan = tagged_vlan(burst, port)?;
    let first = macs.first().map_or(0, |m| m.to_u64());
    plain_probes_tagged_with(burst, vlan, table, out, |d, src, et| {
        (src == first && et == EtherType::IPV4) || spoof_passes(d, ETH_VLAN_HEADER_LEN, src, et, macs)
    })
    .map(|bytes| (vlan, bytes))
}

/// The TCI of a frame whose whole tagged header is there (classify's length checks), when its
/// outer tag is 802.1Q.
#[inline(always)]
fn tci(d: &[u8]) -> Option<u16> {
    match d.get(ETH_HEADER_LEN - 2..ETH_VLAN_HEADER_LEN) {
        Some(&[0x81, 0x00, t0, t1, _, _]) => Some(u16::from_be_bytes([t0, t1])),
        _ => None,
    }
}

/// The VLAN of a burst of tagged frames on `port` as its first frame's tag names it: its VID,
/// when `port` admits the tagged frame into that VLAN (not a priority tag, which takes a
/// native VLAN).
#[inline(always)]
fn tagged_vlan(burst: &Burst, port: &PortSpec) -> Option<u16> {
    let vid = tci(burst.first()?.data())? & 0x0fff;
    port.vlan.ingress(Some(VlanTci(vid))).filter(|&v| v == vid)
}

/// [`plain_probes_tagged`]'s loop for the burst's VLAN `vlan` ([`tagged_vlan`]), also calling
/// `each(frame, source MAC, EtherType behind the tag)` for every plain frame as it is read
/// (the policy fast path's first stage on a trunk): `None` as soon as it returns false.
#[inline(always)]
fn plain_probes_tagged_with(
    burst: &Burst,
    vlan: u16,
    table: &FdbView,
    out: &mut [PlainFrame; MAX_BURST],
    mut each: impl FnMut(&[u8], u64, u16) -> bool,
) -> Option<u64> {
    let mut bytes = 0u64;
    for (b, f) in burst.iter().zip(out.iter_mut()) {
        let d = b.data();
        bytes += d.len() as u64;
        let (dst, src, _) = eth_header(d)?;
        if tci(d).is_none_or(|t| t & 0x0fff != vlan) || (dst | src) & MacAddr::GROUP_BIT_U64 != 0 || src == 0
        {
            return None;
        }
        *f = PlainFrame { src: table.probe_u64(vlan, src), dst: table.probe_u64(vlan, dst) };
        table.prefetch(&f.src);
        table.prefetch(&f.dst);
        let inner = d
            .get(ETH_VLAN_HEADER_LEN - 2..ETH_VLAN_HEADER_LEN)
            .map_or(0, |e| u16::from_be_bytes([e[0], e[1]]));
        if !each(d, src, inner) {
            return None;
        }
    }
    Some(bytes)
}

/// [`plain_probes`], also calling `each(frame, source MAC, EtherType)` for every plain frame
/// as it is read (the policy fast path's first stage, so that a frame is read once for both):
/// `None` as soon as it returns false.
#[inline(always)]
fn plain_probes_with(
    burst: &Burst,
    vlan: u16,
    table: &FdbView,
    out: &mut [PlainFrame; MAX_BURST],
    mut each: impl FnMut(&[u8], u64, u16) -> bool,
) -> Option<u64> {
    let mut bytes = 0u64;
    for (b, f) in burst.iter().zip(out.iter_mut()) {
        let d = b.data();
        bytes += d.len() as u64;
        let (dst, src, ethertype) = eth_header(d)?;
        if ethertype == EtherType::VLAN || (dst | src) & MacAddr::GROUP_BIT_U64 != 0 || src == 0 {
            return None;
        }
        *f = PlainFrame { src: table.probe_u64(vlan, src), dst: table.probe_u64(vlan, dst) };
        table.prefetch(&f.src);
        table.prefetch(&f.dst);
        if !each(d, src, ethertype) {
            return None;
        }
    }
    Some(bytes)
}

/// The destination, the source (as [`MacAddr::to_u64`] holds them) and the EtherType (or
/// TPID) of a frame, `None` when it is shorter than an Ethernet header: two 8-byte big-endian
/// reads, the destination in the top 48 bits of the first, the source and the EtherType in
/// the second.
#[inline(always)]
fn eth_header(d: &[u8]) -> Option<(u64, u64, u16)> {
    let h = d.first_chunk::<ETH_HEADER_LEN>()?;
    let w0 = u64::from_be_bytes(h[0..8].try_into().unwrap_or_default());
    let w1 = u64::from_be_bytes(h[6..ETH_HEADER_LEN].try_into().unwrap_or_default());
    Some((w0 >> 16, w1 >> 16, w1 as u16))
}

/// Reads the Ethernet header, assigns the VLAN and hashes the source and destination keys:
/// the ingress checks up to VLAN admission. `untagged_vlan` is `port.vlan.ingress(None)`.
/// A frame the checks drop has its `verdict` set; a multicast destination is `Flood` with
/// `flood_pending` (still to be learned from).
#[inline(always)]
fn classify(d: &[u8], port: &PortSpec, untagged_vlan: Option<u16>, table: &FdbView) -> FrameMeta {
    let mut m = FrameMeta {
        dst: 0,
        src: 0,
        tagged: false,
        tci: 0,
        vlan: 0,
        verdict: None,
        learn: None,
        probe: Probe::default(),
        dprobe: Probe::default(),
        flood_pending: false,
    };
    let drop = |mut m: FrameMeta, r| {
        m.verdict = Some(Verdict::Drop(r));
        m
    };
    let Some((dst, src, ethertype)) = eth_header(d) else {
        return drop(m, DropReason::Runt);
    };
    (m.dst, m.src) = (dst, src);
    let vlan = if ethertype == EtherType::VLAN {
        let Some(&[.., t0, t1, _, _]) = d.first_chunk::<ETH_VLAN_HEADER_LEN>() else {
            return drop(m, DropReason::TruncatedVlanTag);
        };
        m.tagged = true;
        m.tci = u16::from_be_bytes([t0, t1]);
        port.vlan.ingress(Some(VlanTci(m.tci)))
    } else {
        untagged_vlan
    };
    if m.src & MacAddr::GROUP_BIT_U64 != 0 || m.src == 0 {
        return drop(m, DropReason::InvalidSrcMac);
    }
    if MacAddr::u64_is_ieee_reserved(m.dst) {
        return drop(m, DropReason::ReservedDstMac);
    }
    let Some(vlan) = vlan else {
        return drop(m, DropReason::VlanNotAllowed);
    };
    m.vlan = vlan;
    m.probe = table.probe_u64(vlan, m.src);
    table.prefetch(&m.probe);
    if m.dst & MacAddr::GROUP_BIT_U64 != 0 {
        m.verdict = Some(Verdict::Flood);
        m.flood_pending = true;
    } else {
        m.dprobe = table.probe_u64(vlan, m.dst);
        table.prefetch(&m.dprobe);
    }
    m
}

/// MAC spoof filtering: the Ethernet source, the sender hardware address of ARP and RARP
/// frames and the link-layer address options of IPv6 neighbour discovery (also behind VLAN
/// tags stacked inside the one the port reads, which a guest strips when they are priority
/// tags), must be in the port's `allowed_macs`.
fn spoof_check(d: &[u8], m: &FrameMeta, port: &PortSpec) -> Option<Verdict> {
    if !port.allows_src(MacAddr::from_u64(m.src)) {
        return Some(Verdict::Drop(DropReason::SpoofedSrcMac));
    }
    // classify() checked that the header (and the tag, when there is one) is inside `d`.
    let mut off = if m.tagged { ETH_VLAN_HEADER_LEN } else { ETH_HEADER_LEN };
    let mut et = u16::from_be_bytes([d[off - 2], d[off - 1]]);
    if et == EtherType::VLAN || et == EtherType::QINQ {
        // A frame that ends inside its tags carries nothing to check.
        (et, off) = crate::wire::inner_ethertype(d, off)?;
    }
    if et == EtherType::ARP || et == EtherType::RARP {
        return match ArpPacket::new_checked(d.get(off..).unwrap_or_default()) {
            Err(_) => Some(Verdict::Drop(DropReason::MalformedArp)),
            Ok(a) if !port.allows_src(a.sha()) => Some(Verdict::Drop(DropReason::SpoofedArpSha)),
            Ok(_) => None,
        };
    }
    if et == EtherType::IPV6 {
        // The link-layer address a neighbour discovery message names in its options goes into
        // its receivers' neighbour caches, as ARP's sender does: one of the port's MACs, as
        // OVN's port security checks `nd.sll` and `nd.tll` (all-zero: none named, accepted).
        use crate::wire::ip::LinkAddr;
        return match crate::wire::ip::nd_link_addr(d.get(off..).unwrap_or_default()) {
            LinkAddr::None => None,
            LinkAddr::One(mac) if port.allows_src(MacAddr::from_u64(mac)) => None,
            LinkAddr::One(_) | LinkAddr::Several => Some(Verdict::Drop(DropReason::SpoofedNdLladdr)),
        };
    }
    None
}

/// Makes the frame's tag what the egress port wants for VLAN `m.vlan` (`want_tag`: it leaves
/// tagged): a tag that stays keeps its PCP and DEI bits and gets the new VID; a pushed tag
/// carries PCP 0 (no priority tag came in) or the PCP of the priority tag that did; an
/// untagged egress removes the tag.
#[inline(always)]
fn egress_rewrite(
    buf: &mut PacketBuf,
    m: &FrameMeta,
    want_tag: bool,
) -> Result<(), crate::buffer::BufferError> {
    match (m.tagged, want_tag) {
        (true, true) => {
            let tci = (m.tci & 0xf000) | m.vlan;
            if tci != m.tci {
                let d = buf.data_mut();
                d[VLAN_TCI_OFFSET..VLAN_TCI_OFFSET + 2].copy_from_slice(&tci.to_be_bytes());
            }
            Ok(())
        }
        (false, true) => buf.push_vlan(m.vlan),
        (true, false) => buf.pop_vlan(),
        (false, false) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// An access port `a` (VLAN 10) and a trunk `t` (VLANs 10 and 20) on one bridge.
    fn switch() -> SwitchConfig {
        let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  \
                    - {name: t, vlan_mode: trunk, trunks: [10, 20]}\n";
        SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid YAML"), None).expect("compiles")
    }

    /// Runs `classify` for `frame` arriving on port `name`.
    fn classify_on(sw: &SwitchConfig, name: &str, frame: &[u8]) -> FrameMeta {
        let port = sw.port_by_name(name).expect("port exists");
        let table = sw.bridges[port.bridge].table.view();
        classify(frame, port, port.vlan.ingress(None), &table)
    }

    /// Destination, source, then what follows the addresses.
    fn frame(dst: [u8; 6], rest: &[u8]) -> Vec<u8> {
        [&dst[..], &[2, 0, 0, 0, 0, 1], rest].concat()
    }

    const UCAST: [u8; 6] = [2, 0, 0, 0, 0, 2];

    /// The length checks sit exactly at the header sizes: 13 bytes is a runt and 14 is not;
    /// a TPID with 3 bytes of the tag is a truncated tag and with all 4 it is not.
    #[test]
    fn header_length_edges() {
        let sw = switch();
        let full = frame(UCAST, &[0x08, 0x00]);
        assert_eq!(full.len(), ETH_HEADER_LEN);
        assert_eq!(
            classify_on(&sw, "a", &full[..ETH_HEADER_LEN - 1]).verdict,
            Some(Verdict::Drop(DropReason::Runt))
        );
        let m = classify_on(&sw, "a", &full);
        assert_eq!((m.verdict, m.vlan, m.tagged), (None, 10, false), "a bare header goes on, on VLAN 10");

        let tagged = frame(UCAST, &[0x81, 0x00, 0x00, 20, 0x08, 0x00]);
        assert_eq!(
            classify_on(&sw, "t", &tagged[..ETH_VLAN_HEADER_LEN - 1]).verdict,
            Some(Verdict::Drop(DropReason::TruncatedVlanTag))
        );
        let m = classify_on(&sw, "t", &tagged[..ETH_VLAN_HEADER_LEN]);
        assert_eq!((m.verdict, m.vlan, m.tagged), (None, 20, true));
    }

    /// A tag keeps its PCP and DEI bits when its VID is rewritten; a multicast or zero source
    /// is refused before any VLAN decision.
    #[test]
    fn tag_bits_and_bad_sources() {
        let sw = switch();
        let m = classify_on(&sw, "t", &frame(UCAST, &[0x81, 0x00, 0xb0, 20, 0x08, 0x00]));
        assert_eq!((m.tci >> 13, m.tci & 0x1000 != 0, m.vlan), (5, true, 20));
        let group_src = [&UCAST[..], &[1, 0, 0, 0, 0, 1], &[0x08, 0x00]].concat();
        assert_eq!(classify_on(&sw, "a", &group_src).verdict, Some(Verdict::Drop(DropReason::InvalidSrcMac)));
        let zero_src = [&UCAST[..], &[0; 6], &[0x08, 0x00]].concat();
        assert_eq!(classify_on(&sw, "a", &zero_src).verdict, Some(Verdict::Drop(DropReason::InvalidSrcMac)));
        // A VLAN the trunk does not carry.
        let other = frame(UCAST, &[0x81, 0x00, 0x00, 30, 0x08, 0x00]);
        assert_eq!(classify_on(&sw, "t", &other).verdict, Some(Verdict::Drop(DropReason::VlanNotAllowed)));
        // Broadcast floods, still to be learned from.
        let m = classify_on(&sw, "a", &frame([0xff; 6], &[0x08, 0x00]));
        assert_eq!((m.verdict, m.flood_pending), (Some(Verdict::Flood), true));
    }

    /// `allowed_macs` of the all-zero MAC alone (the plan's closed port: enforcement, MAC not
    /// known yet) lets nothing through: every source, and ARP's sender, is refused; an empty
    /// list is no filter.
    #[test]
    fn the_all_zero_mac_alone_allows_nothing() {
        let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: z, allowed_macs: ['00:00:00:00:00:00']}\n  \
                    - {name: e, allowed_macs: []}\n  - {name: o}\n";
        let sw =
            SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid YAML"), None).expect("compiles");
        let ip = frame(UCAST, &[0x08, 0x00]);
        let arp = frame(
            [0xff; 6],
            &[
                [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1].as_slice(),
                &[0; 6],
                &[10, 0, 0, 1],
                &[0; 6],
                &[10, 0, 0, 2],
            ]
            .concat(),
        );
        for f in [&ip, &arp] {
            let z = sw.port_by_name("z").unwrap();
            let m = classify_on(&sw, "z", f);
            assert_eq!(spoof_check(f, &m, z), Some(Verdict::Drop(DropReason::SpoofedSrcMac)));
            let e = sw.port_by_name("e").unwrap();
            assert_eq!(spoof_check(f, &classify_on(&sw, "e", f), e), None);
        }
    }

    /// A plain burst looks its destinations up in the table that all of its learning leaves,
    /// even when its first frames are looked up before a later source is learned (the plain
    /// path does both in one pass while learning changes nothing): A on `a` sends to B, then B
    /// itself sends from `a` (a move). The first frame's destination is then on its ingress
    /// port: dropped as `dst_is_ingress`, not sent to `b`, where B was when it was looked up.
    #[test]
    fn a_source_moved_later_in_the_burst_redirects_earlier_frames() {
        let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: a}\n  - {name: b}\n  - {name: c}\n";
        let sw =
            SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid YAML"), None).expect("compiles");
        let (a, b, c) = (sw.by_name["a"], sw.by_name["b"], sw.by_name["c"]);
        let mac = |i: u8| MacAddr([2, 0, 0, 0, 0, i]);
        let table = &sw.bridges[0].table;
        let vlan = sw.port(a).and_then(|p| p.vlan.ingress(None)).expect("untagged VLAN");
        let now = 7;
        for (m, p) in [(1, a), (2, b), (3, c)] {
            assert_eq!(table.learn(vlan, mac(m), p, now, u32::MAX), LearnOutcome::Learned);
        }
        let pool = crate::Pool::new("moved", 64).expect("pool");
        let mut cache = pool.cache();
        let mut tx = TxBatches::new(sw.port_slots());
        let f = |dst: u8, src: u8| [&mac(dst).0[..], &mac(src).0, &[0x08, 0x00], &[0; 46]].concat();
        let mut burst = Burst::new();
        for frame in [f(2, 1), f(3, 2)] {
            burst.push(cache.alloc_copy(&frame).expect("buffer"));
        }
        process_burst(&sw, a, &mut burst, now, &mut cache, &mut tx, None);
        assert_eq!(table.lookup(vlan, mac(2), now), Some(crate::fdb::FdbHit { port: a, is_static: false }));
        assert_eq!((tx.queued(b), tx.queued(c)), (0, 1), "A's frame to B is not sent to b");
        let st = sw.port(a).expect("port a").stats.snapshot();
        assert_eq!((st.moved_in, st.drops["dst_is_ingress"]), (1, 1));
        tx.discard(&mut cache);
        drop(cache);
        assert_eq!(pool.in_use(), 0);
    }

    /// Batches are slots of the ports that got frames, not one per port: a broadcast over 99
    /// ports takes 99 slots (more than a unicast burst's 64 kept from the start), flushed in
    /// flood order; then a unicast burst reuses the first slot, and nothing stays queued.
    #[test]
    fn batch_slots_follow_the_ports_that_got_frames() {
        let mut yaml = "bridges:\n- name: br0\n  ports:\n".to_string();
        for i in 0..100 {
            yaml.push_str(&format!("  - {{name: p{i}}}\n"));
        }
        let sw = SwitchConfig::compile(&Config::from_yaml_str(&yaml).expect("valid YAML"), None)
            .expect("compiles");
        let pool = crate::Pool::new("slots", 1024).expect("pool");
        let mut cache = pool.cache();
        let mut tx = TxBatches::new(sw.port_slots());
        assert_eq!((tx.slot_of.len(), tx.slots.len(), tx.used), (100, MAX_BURST, 0));
        let (p0, p5) = (sw.by_name["p0"], sw.by_name["p5"]);
        let mac = |i: u8| [2, 0, 0, 0, 0, i];
        let send = |tx: &mut TxBatches, cache: &mut PoolCache, port: PortId, frames: &[Vec<u8>]| {
            let mut burst = Burst::new();
            for f in frames {
                burst.push(cache.alloc_copy(f).expect("buffer"));
            }
            process_burst(&sw, port, &mut burst, 1, cache, tx, None);
        };
        let bcast = [&[0xff; 6][..], &mac(0xa), &[0x08, 0x00], &[0; 50]].concat();
        send(&mut tx, &mut cache, p0, &[bcast.clone(), bcast]);
        assert_eq!(tx.used, 99);
        assert!(tx.slots.len() >= 99);
        let others: Vec<PortId> = sw.bridges[0].ports.iter().copied().filter(|&p| p != p0).collect();
        assert!(others.iter().all(|&p| tx.queued(p) == 2) && tx.queued(p0) == 0);
        let mut order = Vec::new();
        tx.drain_with(|port, out| {
            order.push(port);
            out.drain(..).for_each(|f| cache.free(f));
        });
        assert_eq!(order, others, "flushed in the order the ports got their first frame");
        assert!(tx.is_empty() && others.iter().all(|&p| tx.queued(p) == 0));

        // p0's MAC is learned: a unicast burst to it from p5 takes one slot, the first.
        let ucast = [&mac(0xa)[..], &mac(0xb), &[0x08, 0x00], &[0; 50]].concat();
        send(&mut tx, &mut cache, p5, &[ucast.clone(), ucast.clone(), ucast]);
        assert_eq!((tx.used, tx.slot_of[usize::from(p0)], tx.queued(p0)), (1, 0, 3));
        tx.discard(&mut cache);
        assert!(tx.is_empty() && tx.slot_of.iter().all(|&s| s == NO_SLOT));
        drop(cache);
        assert_eq!(pool.in_use(), 0, "every buffer came back");
    }

    /// Frames sent, as (egress port, bytes), in order.
    type Sent = std::sync::Arc<std::sync::Mutex<Vec<(PortId, Vec<u8>)>>>;

    /// A TX queue that takes every frame, noting (port, bytes) in `out`.
    struct Collect {
        port: PortId,
        out: Sent,
    }

    impl crate::port::TxQueue for Collect {
        fn tx_burst(
            &mut self,
            pkts: &mut Burst,
            cache: &mut PoolCache,
            _: &mut crate::port::DropTally,
        ) -> usize {
            let n = pkts.len();
            let mut out = self.out.lock().expect("lock");
            for b in pkts.drain(..) {
                out.push((self.port, b.data().to_vec()));
                cache.free(b);
            }
            n
        }
    }

    /// Between an access port and a trunk, a burst's tags are pushed (access to trunk) and
    /// popped (trunk to access) on the plain path, with the tx bytes of the frames as they
    /// leave; a frame with no headroom for its tag sends the burst frame by frame, where it is
    /// `no_buffer` on the egress port, as in the general stages.
    #[test]
    fn tags_pushed_and_popped_on_the_plain_path() {
        let sw = switch();
        let (a, t) = (sw.by_name["a"], sw.by_name["t"]);
        let pool = crate::Pool::new("retag", 64).expect("pool");
        let mut cache = pool.cache();
        let mut tx = TxBatches::new(sw.port_slots());
        let (ma, mt) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        sw.bridges[0].table.learn(10, MacAddr(ma), a, 1, u32::MAX);
        sw.bridges[0].table.learn(10, MacAddr(mt), t, 1, u32::MAX);
        let untagged = [&mt[..], &ma, &[0x08, 0x00], &[7; 46]].concat();
        let tagged = [&ma[..], &mt, &[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00], &[7; 46]].concat();
        // Runs one burst of `frames` from `port` (`no_headroom`: the first frame's buffer has
        // none): the frames queued, whether the plain path took it, and the two ports' stats.
        let mut run = |port: PortId, frames: &[&[u8]], no_headroom: bool| {
            let mut burst = Burst::new();
            for (i, f) in frames.iter().enumerate() {
                let mut b = cache.alloc_copy(f).expect("buffer");
                if no_headroom && i == 0 {
                    let h = b.headroom();
                    b.prepend(h).expect("headroom");
                    b.data_mut()[..f.len()].copy_from_slice(f);
                    b.set_len(f.len()).expect("length");
                    assert_eq!(b.headroom(), 0);
                }
                burst.push(b);
            }
            let plain = plain_bursts_on_this_thread();
            process_burst(&sw, port, &mut burst, 1, &mut cache, &mut tx, None);
            let took_plain = plain_bursts_on_this_thread() > plain;
            let sent = Sent::default();
            let mut queues: Vec<Option<Box<dyn crate::port::TxQueue>>> = (0..sw.port_slots() as PortId)
                .map(|port| {
                    Some(Box::new(Collect { port, out: sent.clone() }) as Box<dyn crate::port::TxQueue>)
                })
                .collect();
            tx.flush(&sw, &mut queues, &mut cache);
            let out = std::mem::take(&mut *sent.lock().expect("lock"));
            (out, took_plain)
        };
        let (out, plain) = run(a, &[&untagged, &untagged], false);
        assert!(plain, "access to trunk took the general stages");
        assert_eq!(
            out,
            vec![(t, [&mt[..], &ma, &[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00], &[7; 46]].concat()); 2]
        );
        let (out, plain) = run(t, &[&tagged, &tagged, &tagged], false);
        assert!(plain, "trunk to access took the general stages");
        assert_eq!(out, vec![(a, [&ma[..], &mt, &[0x08, 0x00], &[7; 46]].concat()); 3]);
        let (t_before, a_before) =
            (sw.port(t).unwrap().stats.snapshot(), sw.port(a).unwrap().stats.snapshot());
        let (out, _) = run(a, &[&untagged, &untagged], true);
        assert_eq!(out.len(), 1, "the frame with no headroom was queued");
        let (t_after, a_after) = (sw.port(t).unwrap().stats.snapshot(), sw.port(a).unwrap().stats.snapshot());
        let drops = |s: &crate::switch::PortStatsSnapshot| s.drops.get("no_buffer").copied().unwrap_or(0);
        assert_eq!(drops(&t_after) + drops(&a_after) - drops(&t_before) - drops(&a_before), 1);
        assert_eq!(t_after.tx_bytes - t_before.tx_bytes, 64);
        drop(cache);
        assert_eq!(pool.in_use(), 0, "every buffer came back");
    }
}
