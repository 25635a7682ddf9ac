//! The MAC table (forwarding database) of one bridge, keyed by (VLAN, MAC).
//!
//! Invariants this module keeps:
//! - Reads are lock-free: a lookup is a few atomic loads along a linear probe sequence, and it
//!   returns either nothing or a (port, flags) pair that was current for that key at some point
//!   during the call (key/value/key re-check, like a seqlock).
//! - Refreshing an entry's timestamp or moving a MAC to another port is a single compare-and-
//!   swap on the value; no lock. Only inserting a new key and deleting keys (aging, flushes,
//!   limits) take the writer mutex, so there is one structural writer at a time.
//! - A key lives in at most one slot. Inserts go to the first free or deleted slot of the key's
//!   probe sequence, chosen under the writer mutex after re-checking that the key is absent.
//! - `len` (live entries, static ones included) never exceeds `capacity`: a new MAC that
//!   would exceed it is counted in `full_drops` and not learned. Static entries count too.
//! - A static entry always gets in while the table holds a learned entry: when the table is
//!   full, [`MacTable::insert_static`] evicts one learned entry first (the least recently seen
//!   of the port with the most learned entries, as Open vSwitch's `evict_mac_entry_fairly`
//!   does), counted in `evicted`. Only a table full of static entries refuses one.
//! - `learned_per_port[p]` counts the dynamic entries that point at port `p`; `statics` counts
//!   the static entries.
//! - An entry whose age reaches `aging` seconds is treated as absent by lookups at once (lazy
//!   expiry, so results do not depend on when the sweeper runs); [`MacTable::age`] reclaims it.
//!   Forwarding reads the table through an [`FdbView`] taken once per burst, which holds the
//!   aging time of that moment: a change of the aging time applies from the next burst.

mod memory;

use crate::wire::MacAddr;
pub use memory::AtomicPairs;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// How many distinct port ids there are (ids are u16): the size of the per-port count array,
/// which covers every id so that indexing it by a `PortId` cannot go out of bounds.
pub const PORT_IDS: usize = 1 << 16;

const EMPTY: u64 = 0;
const TOMBSTONE: u64 = u64::MAX;
const OCCUPIED: u64 = 1 << 63;
const STATIC_FLAG: u64 = 1 << 16;

/// Failures of the table's control operations (the forwarding path never fails; it counts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdbError {
    #[error("MAC table capacity must be between 1 and {max}, not {asked}")]
    BadCapacity { asked: usize, max: usize },
    #[error("MAC table full ({0} entries): cannot add a static entry")]
    Full(usize),
    #[error("cannot allocate the MAC table: {0}")]
    NoMemory(String),
    #[error("VLAN {0} out of range 0-4095")]
    BadVlan(u16),
    #[error("{mac} in VLAN {vlan} is a multicast address and cannot be a static entry")]
    Multicast { mac: MacAddr, vlan: u16 },
}

/// A slot: the key (`KEY`) and the value (`VAL`), 16 bytes, four to a cache line.
type Slot = [AtomicU64; 2];
const KEY: usize = 0;
const VAL: usize = 1;

/// What one slot says about a key (see [`read_slot`]).
enum SlotRead {
    /// The key, with this value, read consistently.
    Holds(u64),
    /// No key: the probe sequence ends here.
    Empty,
    /// Another key, or a tombstone: the sequence goes on.
    Other,
    /// The key, but the slot changed while its value was read.
    Changed,
}

/// Reads slot `s` for `key`: key, value, key again (a value read between two equal keys
/// belongs to that key).
#[inline(always)]
fn read_slot(s: &Slot, key: u64) -> SlotRead {
    let k = s[KEY].load(Ordering::Acquire);
    if k == key {
        let v = s[VAL].load(Ordering::Acquire);
        if s[KEY].load(Ordering::Relaxed) == key {
            SlotRead::Holds(v)
        } else {
            SlotRead::Changed
        }
    } else if k == EMPTY {
        SlotRead::Empty
    } else {
        SlotRead::Other
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbHit {
    pub port: u16,
    pub is_static: bool,
}

/// What learning did with a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnOutcome {
    /// Already known on this port.
    Refreshed,
    /// New entry.
    Learned,
    /// Was on another port (or had expired there); now on this one.
    Moved { from: u16 },
    /// A static entry holds this MAC on another port; learning never moves it.
    StaticConflict { owner: u16 },
    /// The port already has its maximum of learned MACs.
    PortLimit,
    /// The table is at capacity.
    TableFull,
}

/// One entry, for `show fdb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub vlan: u16,
    pub mac: MacAddr,
    pub port: u16,
    pub is_static: bool,
    /// Seconds since last seen (0 for static entries).
    pub age: u32,
}

/// A precomputed probe position, so a burst can hash and prefetch every key before reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    key: u64,
    idx: usize,
}

impl Probe {
    /// The probed MAC, as [`MacAddr::to_u64`] holds it.
    #[inline]
    pub fn mac_u64(&self) -> u64 {
        self.key & 0xffff_ffff_ffff
    }
}

/// The MAC table of one bridge.
pub struct MacTable {
    /// The slots, on transparent huge pages where the kernel has them.
    slots: AtomicPairs,
    mask: usize,
    shift: u32,
    seed: u64,
    capacity: usize,
    aging: AtomicU32,
    len: AtomicUsize,
    writer: Mutex<()>,
    learned_per_port: Box<[AtomicU32]>,
    statics: AtomicUsize,
    full_drops: AtomicU64,
    evicted: AtomicU64,
}

impl std::fmt::Debug for MacTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacTable").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

#[inline]
fn decode_key(k: u64) -> (u16, MacAddr) {
    (((k >> 48) & 0x0fff) as u16, MacAddr::from_u64(k & 0xffff_ffff_ffff))
}

#[inline]
fn encode_val(port: u16, is_static: bool, now: u32) -> u64 {
    u64::from(port) | if is_static { STATIC_FLAG } else { 0 } | (u64::from(now) << 32)
}

#[inline]
fn val_port(v: u64) -> u16 {
    v as u16
}

#[inline]
fn val_static(v: u64) -> bool {
    v & STATIC_FLAG != 0
}

#[inline]
fn val_time(v: u64) -> u32 {
    (v >> 32) as u32
}

impl MacTable {
    pub const DEFAULT_CAPACITY: usize = 65536;
    pub const MAX_CAPACITY: usize = 1 << 24;
    pub const DEFAULT_AGING_S: u32 = 300;

    /// A table that holds up to `capacity` entries (at most half its slots are ever live, which
    /// keeps probe sequences short) and ages dynamic entries after `aging_s` seconds.
    pub fn new(capacity: usize, aging_s: u32) -> Result<MacTable, FdbError> {
        if capacity == 0 || capacity > Self::MAX_CAPACITY {
            return Err(FdbError::BadCapacity { asked: capacity, max: Self::MAX_CAPACITY });
        }
        let nslots = (capacity * 2).next_power_of_two().max(64);
        // Zeroed: every key EMPTY.
        let slots = AtomicPairs::zeroed(nslots)?;
        let learned_per_port = (0..PORT_IDS).map(|_| AtomicU32::new(0)).collect();
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(nslots);
            h.finish()
        };
        Ok(MacTable {
            slots,
            mask: nslots - 1,
            shift: 64 - nslots.trailing_zeros(),
            seed,
            capacity,
            aging: AtomicU32::new(aging_s.max(1)),
            len: AtomicUsize::new(0),
            writer: Mutex::new(()),
            learned_per_port,
            statics: AtomicUsize::new(0),
            full_drops: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn aging_s(&self) -> u32 {
        self.aging.load(Ordering::Relaxed)
    }

    pub fn set_aging_s(&self, s: u32) {
        self.aging.store(s.max(1), Ordering::Relaxed);
    }

    /// New MACs not learned because the table was full.
    pub fn full_drops(&self) -> u64 {
        self.full_drops.load(Ordering::Relaxed)
    }

    /// Learned entries evicted to make room for a static entry in a full table.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Static entries in the table.
    pub fn statics(&self) -> usize {
        self.statics.load(Ordering::Relaxed)
    }

    /// Dynamic entries currently pointing at `port`.
    pub fn learned_on(&self, port: u16) -> u32 {
        self.learned_per_port[usize::from(port)].load(Ordering::Relaxed)
    }

    #[inline]
    fn slots(&self) -> &[Slot] {
        self.slots.pairs()
    }

    /// The table's read-only parameters for one burst (see [`FdbView`]).
    #[inline]
    pub fn view(&self) -> FdbView<'_> {
        FdbView {
            table: self,
            slots: self.slots.pairs(),
            mask: self.mask,
            shift: self.shift,
            seed: self.seed,
            aging: self.aging.load(Ordering::Relaxed),
        }
    }

    /// Hashes the key; cheap, and lets a burst prefetch before it reads.
    #[inline]
    pub fn probe(&self, vlan: u16, mac: MacAddr) -> Probe {
        self.view().probe_u64(vlan, mac.to_u64())
    }

    /// Finds the slot holding `p.key`, with its value read consistently.
    #[inline]
    fn find(&self, p: &Probe) -> Option<(usize, u64)> {
        self.view().find(p)
    }

    #[inline]
    fn expired(&self, v: u64, now: u32) -> bool {
        self.view().expired(v, now)
    }

    /// Where frames to (VLAN, MAC) go, if known and not expired at `now` (seconds).
    #[inline]
    pub fn lookup(&self, vlan: u16, mac: MacAddr, now: u32) -> Option<FdbHit> {
        let v = self.view();
        v.lookup_probe(&v.probe_u64(vlan, mac.to_u64()), now)
    }

    /// Learns that (VLAN, MAC) lives behind `port` at time `now`, within the port's `limit`
    /// of learned MACs.
    #[inline]
    pub fn learn(&self, vlan: u16, mac: MacAddr, port: u16, now: u32, limit: u32) -> LearnOutcome {
        let v = self.view();
        v.learn_probe(&v.probe_u64(vlan, mac.to_u64()), port, now, limit)
    }

    #[cold]
    #[inline(never)]
    fn learn_slow(&self, p: &Probe, port: u16, now: u32, limit: u32) -> LearnOutcome {
        loop {
            let Some((i, v)) = self.find(p) else {
                return self.insert_new(p, port, now, limit);
            };
            if val_static(v) {
                return if val_port(v) == port {
                    LearnOutcome::Refreshed
                } else {
                    LearnOutcome::StaticConflict { owner: val_port(v) }
                };
            }
            let old_port = val_port(v);
            if old_port == port {
                let expired = self.expired(v, now);
                if val_time(v) != now {
                    // A lost race only means another worker refreshed it at the same time.
                    let _ = self.slots()[i][VAL].compare_exchange(
                        v,
                        encode_val(port, false, now),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                }
                return if expired { LearnOutcome::Learned } else { LearnOutcome::Refreshed };
            }
            // A move. Refuse it if the new port is at its limit, and forget the stale
            // location so that traffic for the MAC floods rather than going to the old port.
            if self.learned_on(port) >= limit {
                let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                if self.slots()[i][KEY].load(Ordering::Relaxed) == p.key
                    && self.slots()[i][VAL].load(Ordering::Relaxed) == v
                {
                    self.remove_slot(i, v);
                }
                return LearnOutcome::PortLimit;
            }
            let expired = self.expired(v, now);
            if self.slots()[i][VAL]
                .compare_exchange(v, encode_val(port, false, now), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.learned_per_port[usize::from(old_port)].fetch_sub(1, Ordering::Relaxed);
                self.learned_per_port[usize::from(port)].fetch_add(1, Ordering::Relaxed);
                return if expired { LearnOutcome::Learned } else { LearnOutcome::Moved { from: old_port } };
            }
            // Someone else changed the entry: look again.
        }
    }

    #[cold]
    fn insert_new(&self, p: &Probe, port: u16, now: u32, limit: u32) -> LearnOutcome {
        if self.learned_on(port) >= limit {
            return LearnOutcome::PortLimit;
        }
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if self.find(p).is_some() {
            // Learned by another worker meanwhile; the next frame refreshes it.
            return LearnOutcome::Refreshed;
        }
        if self.len() >= self.capacity {
            self.full_drops.fetch_add(1, Ordering::Relaxed);
            return LearnOutcome::TableFull;
        }
        match self.place(p, encode_val(port, false, now)) {
            Some(()) => {
                self.learned_per_port[usize::from(port)].fetch_add(1, Ordering::Relaxed);
                LearnOutcome::Learned
            }
            None => {
                self.full_drops.fetch_add(1, Ordering::Relaxed);
                LearnOutcome::TableFull
            }
        }
    }

    /// Writes a new key into the first free or deleted slot of its probe sequence. Caller holds
    /// the writer mutex and has checked that the key is absent.
    fn place(&self, p: &Probe, val: u64) -> Option<()> {
        let mut i = p.idx & self.mask;
        for _ in 0..=self.mask {
            let s = &self.slots()[i];
            let k = s[KEY].load(Ordering::Relaxed);
            if k == EMPTY || k == TOMBSTONE {
                s[VAL].store(val, Ordering::Relaxed);
                s[KEY].store(p.key, Ordering::Release);
                self.len.fetch_add(1, Ordering::Relaxed);
                return Some(());
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Deletes the entry in slot `i` whose value is `v`. Caller holds the writer mutex.
    fn remove_slot(&self, i: usize, v: u64) {
        self.slots()[i][KEY].store(TOMBSTONE, Ordering::Release);
        self.len.fetch_sub(1, Ordering::Relaxed);
        if val_static(v) {
            self.statics.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.learned_per_port[usize::from(val_port(v))].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Makes room in a full table by removing one learned entry: the least recently seen of
    /// the port with the most learned entries (Open vSwitch's `evict_mac_entry_fairly`: a
    /// port flooding the table with source MACs loses its own entries first). Whether one
    /// went (none: every entry is static). Caller holds the writer mutex. Control path only:
    /// a walk of the per-port counts and one of the slots.
    #[cold]
    fn evict_learned(&self) -> bool {
        let mut most = (0u32, 0usize);
        for (p, n) in self.learned_per_port.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > most.0 {
                most = (n, p);
            }
        }
        // The oldest learned entry of that port; of any port if a move took them all since
        // (moves change the counts without the mutex).
        let oldest = |of: Option<usize>| {
            let mut best: Option<(usize, u64)> = None;
            for (i, s) in self.slots().iter().enumerate() {
                let k = s[KEY].load(Ordering::Relaxed);
                if k == EMPTY || k == TOMBSTONE {
                    continue;
                }
                let v = s[VAL].load(Ordering::Relaxed);
                if val_static(v) || of.is_some_and(|p| usize::from(val_port(v)) != p) {
                    continue;
                }
                if best.is_none_or(|(_, b)| val_time(v) < val_time(b)) {
                    best = Some((i, v));
                }
            }
            best
        };
        // A worker may move the victim to another port (a CAS on its value, without the
        // mutex) between the walk and its removal; removing it by the value found would count
        // it off its old port a second time, and leave the new port counting an entry that is
        // gone. So the value is first made static, as found, in one CAS (no move touches a
        // static entry), and a victim that moved meanwhile is chosen again.
        for _ in 0..8 {
            let victim =
                if most.0 > 0 { oldest(Some(most.1)).or_else(|| oldest(None)) } else { oldest(None) };
            let Some((i, v)) = victim else { return false };
            let slot = &self.slots()[i];
            let frozen = encode_val(val_port(v), true, val_time(v));
            if slot[VAL].compare_exchange(v, frozen, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            slot[KEY].store(TOMBSTONE, Ordering::Release);
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.learned_per_port[usize::from(val_port(v))].fetch_sub(1, Ordering::Relaxed);
            self.evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Adds or replaces a static entry: learning never moves it and aging never removes it.
    /// In a full table it takes the place of a learned entry ([`MacTable::evicted`]); it
    /// fails for capacity only when every entry is static.
    pub fn insert_static(&self, vlan: u16, mac: MacAddr, port: u16) -> Result<(), FdbError> {
        if vlan > 4095 {
            return Err(FdbError::BadVlan(vlan));
        }
        if mac.is_multicast() {
            return Err(FdbError::Multicast { mac, vlan });
        }
        let p = self.probe(vlan, mac);
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let val = encode_val(port, true, 0);
        if let Some((i, v)) = self.find(&p) {
            if !val_static(v) {
                self.learned_per_port[usize::from(val_port(v))].fetch_sub(1, Ordering::Relaxed);
                self.statics.fetch_add(1, Ordering::Relaxed);
            }
            self.slots()[i][VAL].store(val, Ordering::Release);
            return Ok(());
        }
        if self.len() >= self.capacity && !self.evict_learned() {
            return Err(FdbError::Full(self.capacity));
        }
        self.place(&p, val).ok_or(FdbError::Full(self.capacity))?;
        self.statics.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the entry for (VLAN, MAC), static or not. Returns whether there was one.
    pub fn remove(&self, vlan: u16, mac: MacAddr) -> bool {
        let p = self.probe(vlan, mac);
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match self.find(&p) {
            Some((i, v)) => {
                self.remove_slot(i, v);
                true
            }
            None => false,
        }
    }

    fn retain(&self, mut keep: impl FnMut(u64, u64) -> bool) -> usize {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        for (i, s) in self.slots().iter().enumerate() {
            let k = s[KEY].load(Ordering::Relaxed);
            if k == EMPTY || k == TOMBSTONE {
                continue;
            }
            let v = s[VAL].load(Ordering::Relaxed);
            if !keep(k, v) {
                self.remove_slot(i, v);
                removed += 1;
            }
        }
        if self.is_empty() {
            // Nothing live: clear tombstones so probe sequences are short again. No reader can
            // be relying on a tombstone to continue a probe towards a live key.
            for s in self.slots().iter() {
                s[KEY].store(EMPTY, Ordering::Release);
            }
        }
        removed
    }

    /// Removes dynamic entries that have aged out at `now`; returns how many.
    pub fn age(&self, now: u32) -> usize {
        self.retain(|_, v| !self.expired(v, now))
    }

    /// Removes every dynamic entry (static entries stay); returns how many.
    pub fn flush_dynamic(&self) -> usize {
        self.retain(|_, v| val_static(v))
    }

    /// Removes every entry, static ones included, that points at `port`.
    pub fn flush_port(&self, port: u16) -> usize {
        self.retain(|_, v| val_port(v) != port)
    }

    /// Removes, in one pass over the table, every entry for which `remove(vlan, mac, port,
    /// is_static)` is true; returns how many.
    pub fn remove_where(&self, mut remove: impl FnMut(u16, MacAddr, u16, bool) -> bool) -> usize {
        self.retain(|k, v| {
            let (vlan, mac) = decode_key(k);
            !remove(vlan, mac, val_port(v), val_static(v))
        })
    }

    /// Removes the static entries that point at `port`.
    pub fn remove_statics_of(&self, port: u16) -> usize {
        self.retain(|_, v| !(val_static(v) && val_port(v) == port))
    }

    /// A copy of the live entries at `now`, sorted by VLAN then MAC.
    /// Calls `f` with the port of every entry live at `now` (once per entry, in slot order):
    /// a walk of the table with no allocation.
    pub fn each_live_port(&self, now: u32, mut f: impl FnMut(u16)) {
        for s in self.slots().iter() {
            let k = s[KEY].load(Ordering::Acquire);
            if k == EMPTY || k == TOMBSTONE {
                continue;
            }
            let v = s[VAL].load(Ordering::Acquire);
            if !self.expired(v, now) {
                f(val_port(v));
            }
        }
    }

    pub fn entries(&self, now: u32) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        for s in self.slots().iter() {
            let k = s[KEY].load(Ordering::Acquire);
            if k == EMPTY || k == TOMBSTONE {
                continue;
            }
            let v = s[VAL].load(Ordering::Acquire);
            if self.expired(v, now) {
                continue;
            }
            let (vlan, mac) = decode_key(k);
            let is_static = val_static(v);
            out.push(FdbEntry {
                vlan,
                mac,
                port: val_port(v),
                is_static,
                age: if is_static { 0 } else { now.wrapping_sub(val_time(v)) },
            });
        }
        out.sort_by_key(|e| (e.vlan, e.mac));
        out
    }
}

/// A burst's copy of a table's read-only parameters (slot array, mask, hash seed, aging), as
/// plain values because the table itself holds atomics, which must be assumed to change under
/// every store and so be read again after each. Lookups and learning through a view behave
/// exactly as through the table, except that they use the aging time of when the view was
/// taken (one burst).
#[derive(Clone, Copy)]
pub struct FdbView<'a> {
    table: &'a MacTable,
    slots: &'a [Slot],
    mask: usize,
    shift: u32,
    seed: u64,
    aging: u32,
}

impl FdbView<'_> {
    /// [`MacTable::probe`] for a MAC held as [`MacAddr::to_u64`] returns it.
    #[inline]
    pub fn probe_u64(&self, vlan: u16, mac: u64) -> Probe {
        let key = OCCUPIED | (u64::from(vlan & 0x0fff) << 48) | (mac & 0xffff_ffff_ffff);
        let idx = ((key ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize;
        Probe { key, idx }
    }

    /// Brings the probe's first slot towards the cache.
    #[inline]
    pub fn prefetch(&self, p: &Probe) {
        #[cfg(target_arch = "x86_64")]
        {
            // In bounds (probe_u64 makes idx < 2^(64 - shift) == slots.len()), though a
            // prefetch would not need it to be.
            let ptr = self.slots.as_ptr().wrapping_add(p.idx) as *const i8;
            // SAFETY: a prefetch is a hint with no memory effect, and never faults.
            unsafe { core::arch::x86_64::_mm_prefetch(ptr, core::arch::x86_64::_MM_HINT_T0) };
        }
    }

    /// Finds the slot holding `p.key`, with its value read consistently. The key's first
    /// slot (where nearly every key sits, the table being at most half full) is read here,
    /// inline; the rest of the probe sequence in [`FdbView::find_further`].
    #[inline(always)]
    fn find(&self, p: &Probe) -> Option<(usize, u64)> {
        // probe_u64 makes idx < slots.len(); `get` keeps a bad Probe from reading elsewhere.
        match read_slot(self.slots.get(p.idx)?, p.key) {
            SlotRead::Holds(v) => Some((p.idx, v)),
            SlotRead::Empty => None,
            SlotRead::Other | SlotRead::Changed => self.find_further(p),
        }
    }

    /// [`FdbView::find`] along the whole probe sequence.
    #[cold]
    #[inline(never)]
    fn find_further(&self, p: &Probe) -> Option<(usize, u64)> {
        let mut i = p.idx & self.mask;
        let mut probes = 0;
        loop {
            match read_slot(self.slots.get(i)?, p.key) {
                SlotRead::Holds(v) => return Some((i, v)),
                SlotRead::Empty => return None,
                SlotRead::Other => {}
                SlotRead::Changed => {
                    // The slot changed under us (deleted and reused): start again.
                    i = p.idx & self.mask;
                    probes = 0;
                    continue;
                }
            }
            probes += 1;
            if probes > self.mask {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    fn expired(&self, v: u64, now: u32) -> bool {
        !val_static(v) && now.wrapping_sub(val_time(v)) >= self.aging
    }

    /// Where frames to the probe's key go, if known and not expired at `now` (seconds).
    #[inline]
    pub fn lookup_probe(&self, p: &Probe, now: u32) -> Option<FdbHit> {
        let (_, v) = self.find(p)?;
        if self.expired(v, now) {
            return None;
        }
        Some(FdbHit { port: val_port(v), is_static: val_static(v) })
    }

    /// [`MacTable::learn`] for a probe.
    #[inline]
    pub fn learn_probe(&self, p: &Probe, port: u16, now: u32, limit: u32) -> LearnOutcome {
        // The common cases, inlined: a dynamic entry on this port, already refreshed this
        // second, or a static entry of this port (a VM's own MAC, which the cluster plan makes
        // static: every frame of the VM learns it); one compare each, the value holding nothing
        // else. Nothing to write for either. learn_slow does the rest.
        if self.learn_is_noop(p, port, now) {
            return LearnOutcome::Refreshed;
        }
        self.table.learn_slow(p, port, now, limit)
    }

    /// Whether [`FdbView::learn_probe`] of the probe's key on `port` at `now` would find it
    /// learned already, writing nothing and answering [`LearnOutcome::Refreshed`]: a dynamic
    /// entry on `port` refreshed at `now`, or a static entry of `port`.
    #[inline(always)]
    pub fn learn_is_noop(&self, p: &Probe, port: u16, now: u32) -> bool {
        matches!(self.find(p), Some((_, v)) if v == encode_val(port, false, now) || v == encode_val(port, true, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learn_lookup_move_age() {
        let t = MacTable::new(16, 300).unwrap();
        assert_eq!(t.learn(10, mac(1), 1, 0, u32::MAX), LearnOutcome::Learned);
        assert_eq!(t.lookup(10, mac(1), 5), Some(FdbHit { port: 1, is_static: false }));
        assert_eq!(t.lookup(11, mac(1), 5), None, "VLANs are separate");
        assert_eq!(t.learn(10, mac(1), 1, 5, u32::MAX), LearnOutcome::Refreshed);
        assert_eq!(t.learn(10, mac(1), 2, 6, u32::MAX), LearnOutcome::Moved { from: 1 });
        assert_eq!((t.learned_on(1), t.learned_on(2)), (0, 1));
        assert_eq!(t.lookup(10, mac(1), 305), Some(FdbHit { port: 2, is_static: false }));
        assert_eq!(t.lookup(10, mac(1), 306), None, "aged out at 300 s");
        assert_eq!(t.age(306), 1);
        assert_eq!((t.len(), t.learned_on(2)), (0, 0));
    }

    #[test]
    fn statics_never_move_and_never_age() {
        let t = MacTable::new(16, 10).unwrap();
        t.insert_static(5, mac(7), 3).unwrap();
        assert_eq!(t.learn(5, mac(7), 4, 1, u32::MAX), LearnOutcome::StaticConflict { owner: 3 });
        // Learning it on its own port (the inlined path, as every frame of a VM does) changes
        // nothing, at any time.
        let view = t.view();
        for now in [0, 1, 1_000_000] {
            assert_eq!(view.learn_probe(&t.probe(5, mac(7)), 3, now, u32::MAX), LearnOutcome::Refreshed);
            assert_eq!(t.learn(5, mac(7), 3, now, u32::MAX), LearnOutcome::Refreshed);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(5, mac(7), 1_000_000), Some(FdbHit { port: 3, is_static: true }));
        assert_eq!(t.age(1_000_000), 0);
        assert!(t.insert_static(5, MacAddr::BROADCAST, 3).is_err());
    }

    #[test]
    fn full_table_counts_and_does_not_learn() {
        let t = MacTable::new(4, 300).unwrap();
        for i in 0..4 {
            assert_eq!(t.learn(1, mac(i), 1, 0, u32::MAX), LearnOutcome::Learned);
        }
        assert_eq!(t.learn(1, mac(99), 1, 0, u32::MAX), LearnOutcome::TableFull);
        assert_eq!(t.full_drops(), 1);
        assert_eq!(t.lookup(1, mac(99), 0), None);
        assert_eq!(t.len(), 4);
    }

    /// A full table of learned entries still takes a static entry: the least recently seen
    /// entry of the port with the most learned entries makes room, counted; the counts stay
    /// right. Only a table full of static entries refuses one.
    #[test]
    fn a_static_entry_evicts_a_learned_one_from_a_full_table() {
        let t = MacTable::new(4, 300).unwrap();
        assert_eq!(t.learn(1, mac(1), 1, 5, u32::MAX), LearnOutcome::Learned);
        assert_eq!(t.learn(1, mac(2), 2, 3, u32::MAX), LearnOutcome::Learned);
        assert_eq!(t.learn(1, mac(3), 2, 1, u32::MAX), LearnOutcome::Learned);
        assert_eq!(t.learn(1, mac(4), 2, 2, u32::MAX), LearnOutcome::Learned);
        assert_eq!(t.learn(1, mac(5), 3, 6, u32::MAX), LearnOutcome::TableFull);

        t.insert_static(1, mac(9), 7).expect("a static entry gets into a full table");
        assert_eq!(t.lookup(1, mac(9), 6), Some(FdbHit { port: 7, is_static: true }));
        assert_eq!(t.lookup(1, mac(3), 6), None, "port 2's oldest entry went");
        assert!(t.lookup(1, mac(1), 6).is_some() && t.lookup(1, mac(2), 6).is_some());
        assert_eq!((t.len(), t.statics(), t.evicted()), (4, 1, 1));
        assert_eq!((t.learned_on(1), t.learned_on(2)), (1, 2));
        // A learned entry made static is not a new entry: nothing evicted.
        t.insert_static(1, mac(1), 1).unwrap();
        assert_eq!((t.len(), t.statics(), t.evicted(), t.learned_on(1)), (4, 2, 1, 0));

        for i in 10..12 {
            t.insert_static(1, mac(i), 7).unwrap();
        }
        assert_eq!((t.len(), t.statics(), t.evicted()), (4, 4, 3));
        assert_eq!(t.insert_static(1, mac(20), 7), Err(FdbError::Full(4)));
        assert_eq!(t.remove_statics_of(7), 3);
        assert_eq!((t.len(), t.statics()), (1, 1));
    }

    #[test]
    fn port_limit() {
        let t = MacTable::new(64, 300).unwrap();
        assert_eq!(t.learn(1, mac(1), 1, 0, 2), LearnOutcome::Learned);
        assert_eq!(t.learn(1, mac(2), 1, 0, 2), LearnOutcome::Learned);
        assert_eq!(t.learn(1, mac(3), 1, 0, 2), LearnOutcome::PortLimit);
        assert_eq!(t.learn(1, mac(3), 2, 0, 2), LearnOutcome::Learned);
        // A move onto a full port is refused and the stale entry forgotten.
        assert_eq!(t.learn(1, mac(3), 1, 1, 2), LearnOutcome::PortLimit);
        assert_eq!(t.lookup(1, mac(3), 1), None);
        assert_eq!(t.learned_on(2), 0);
    }

    #[test]
    fn holds_a_million() {
        let t = MacTable::new(1 << 20, 300).unwrap();
        for i in 0..(1u32 << 20) {
            assert_eq!(
                t.learn((i % 4000) as u16, mac(i), (i % 7) as u16, 0, u32::MAX),
                LearnOutcome::Learned
            );
        }
        assert_eq!(t.len(), 1 << 20);
        for i in (0..(1u32 << 20)).step_by(997) {
            assert_eq!(t.lookup((i % 4000) as u16, mac(i), 1).map(|h| h.port), Some((i % 7) as u16));
        }
        assert_eq!(t.learn(0, mac(u32::MAX), 0, 0, u32::MAX), LearnOutcome::TableFull);
    }

    /// An eviction whose victim a worker moves to another port meanwhile (a CAS on its value,
    /// without the mutex) keeps the per-port counts right: it used to count the victim off its
    /// old port a second time, so a flushed port's count wrapped and it could never learn again.
    #[test]
    fn an_eviction_racing_a_move_of_its_victim_keeps_the_counts() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        for trial in 0..10u32 {
            let t = Arc::new(MacTable::new(4096, 300).unwrap());
            let x = mac(0);
            assert_eq!(t.learn(1, x, 1, 1, u32::MAX), LearnOutcome::Learned);
            for i in 1..3000 {
                t.learn(1, mac(i), 1, 5, u32::MAX);
            }
            for i in 3000..4096 {
                t.learn(1, mac(i), 2, 5, u32::MAX);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (t2, s2) = (t.clone(), stop.clone());
            // Bounded: stops as soon as the static entry is in.
            let mover = std::thread::spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    t2.learn(1, x, 3, 1, u32::MAX);
                    t2.learn(1, x, 1, 1, u32::MAX);
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(1));
            t.insert_static(1, mac(1_000_000 + trial), 7).unwrap();
            stop.store(true, Ordering::Relaxed);
            mover.join().unwrap();
            let mut real = [0u32; 8];
            t.remove_where(|_, _, p, st| {
                if !st {
                    real[usize::from(p)] += 1;
                }
                false
            });
            let counted: Vec<u32> = (0..8).map(|p| t.learned_on(p)).collect();
            assert_eq!(counted, real, "trial {trial}");
        }
    }
}
