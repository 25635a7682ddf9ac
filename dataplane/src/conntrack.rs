//! Connection tracking for the policy stage: which connections were allowed, so that their
//! replies pass both ways (OVN-Kubernetes' `allow-related`).
//!
//! One table per bridge (kept across snapshots while its size stays), shared by the workers:
//! the two directions of a connection arrive on different ports, which different workers may
//! poll, so a per-worker table would miss replies. The table is one open-addressed array of
//! 64-byte slots (one cache line each; [`SLOTS_PER_100`] slots for every 100 connections of
//! its capacity), probed linearly from a key's home slot for at most [`MAX_PROBE`] slots;
//! nothing is allocated after creation. Beside it, a directory of 16-bit lanes, one a slot
//! (`dir_value`: 0 empty, else the key's tag), 32 slots a cache line: the burst lookups
//! ([`FastView::locate`], [`Conntrack::lookup_burst`]) find the one slot to read in it, so
//! that a table larger than the cache costs one slot line from memory a lookup, not one per
//! slot probed.
//!
//! Concurrency (seqlock per slot): a slot's first word is its sequence number, odd while a
//! writer holds it. Readers take no lock: they read the slot's words and retry when the number
//! was odd or changed. Writers lock the one slot they change (a compare-and-swap on the
//! number); a new entry is placed under a striped mutex of its home slot, so that two workers
//! never add the same connection twice. A packet of a known connection whose state and expiry
//! would not change (the common case: expiry is kept in seconds) writes nothing.
//!
//! Invariants:
//! - An entry is found from either direction: the hash is symmetric and keys are stored in the
//!   direction the connection was opened, looked up both ways.
//! - A live slot's word 1 carries 16 bits of its key's hash (its tag): a probe reads a slot's
//!   key only when the tag is the one it looks for, so a slot of another key costs one load.
//! - A slot's directory lane is its word 1's `dir_value` whenever the slot's lock is free:
//!   every write of a slot (`Conntrack::put`) writes its lane under the lock. Readers take
//!   lanes as hints only: the slot a lane names is read under its sequence number and its key
//!   compared; a lane that misleads sends the lookup the general way, which reads the slots.
//! - No live entry is separated from its home slot by an empty slot (a probe stops at the
//!   first empty slot). Expired slots are reused by new entries; the incremental sweep
//!   ([`Conntrack::sweep`], a few slots a burst, walking the table downwards) empties an expired
//!   slot only when the next slot is empty, which keeps the invariant and shortens probes.
//! - Aging: an entry is live until its `expires` (seconds); timeouts follow Linux
//!   conntrack's defaults (see [`timeout`]).
//! - Full: when no free or expired slot is within [`MAX_PROBE`] of a new key's home, the
//!   connection is not tracked and [`Conntrack::commit`] says so: the caller drops the packet
//!   (fails closed) and counts it.
//! - An entry may carry a verdict ([`verdict`]): "its original direction from port A to port
//!   B was allowed by the policies of snapshot E". The pipeline skips the classifiers for a
//!   packet whose entry holds the verdict of the running snapshot for the same ports.

use crate::fdb::AtomicPairs;
use crate::wire::ip::{
    FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Connections a bridge tracks unless its `conntrack_size` says otherwise.
pub const DEFAULT_CAPACITY: usize = 65536;
/// The largest `conntrack_size`.
pub const MAX_CAPACITY: usize = 1 << 24;
/// Slots for every 100 connections of the capacity (load factor 2/3 when full).
pub const SLOTS_PER_100: usize = 150;
/// The longest probe from a key's home slot (linear probing at a load of 2/3 makes runs of
/// 100 taken slots rare but not absent in a large table; a probe of a known key averages 2).
pub const MAX_PROBE: usize = 256;
/// Slots per insert mutex.
const STRIPE: usize = 64;
/// The size of one slot (one cache line: 4 pairs of [`AtomicPairs`]).
pub const SLOT_BYTES: usize = 64;

/// The table could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot map the connection table: {0}")]
    NoMemory(String),
}

/// A connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CtState {
    /// A TCP SYN went out, nothing came back yet.
    SynSent,
    /// TCP: the responder answered (or the connection was picked up mid-stream).
    Established,
    /// TCP: a FIN was seen.
    Closing,
    /// TCP: an RST was seen.
    Closed,
    /// Not TCP: nothing came back yet.
    Unreplied,
    /// Not TCP: the responder answered.
    Replied,
}

impl CtState {
    fn from_u8(v: u8) -> CtState {
        match v {
            0 => CtState::SynSent,
            1 => CtState::Established,
            2 => CtState::Closing,
            3 => CtState::Closed,
            4 => CtState::Unreplied,
            _ => CtState::Replied,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CtState::SynSent => "syn_sent",
            CtState::Established => "established",
            CtState::Closing => "closing",
            CtState::Closed => "closed",
            CtState::Unreplied => "unreplied",
            CtState::Replied => "replied",
        }
    }
}

/// How long a connection in `state` of protocol `proto` lives without a packet (seconds):
/// Linux's nf_conntrack defaults (tcp_timeout_syn_sent 120, _established 432000, _fin_wait
/// 120, _close 10; udp_timeout 30, udp_timeout_stream 120; icmp_timeout 30; generic 600).
#[inline]
pub fn timeout(proto: u8, state: CtState) -> u32 {
    // By state (in CtState's order): a table read, not a chain of compares, per packet.
    const TCP: [u32; 6] = [120, 432_000, 120, 10, 10, 10];
    const UDP: [u32; 6] = [120, 120, 120, 120, 30, 120];
    match proto {
        PROTO_TCP => TCP[state as usize],
        PROTO_UDP => UDP[state as usize],
        PROTO_ICMP | PROTO_ICMPV6 => 30,
        _ => 600,
    }
}

/// The state after a reply-direction packet with TCP flags `flags`.
#[inline]
fn reply_state(proto: u8, state: CtState, flags: u8) -> CtState {
    match (proto, state) {
        (PROTO_TCP, _) if flags & TCP_RST != 0 => CtState::Closed,
        (PROTO_TCP, CtState::Closed) => CtState::Closed,
        (PROTO_TCP, _) if flags & TCP_FIN != 0 => CtState::Closing,
        (PROTO_TCP, CtState::SynSent) if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
            CtState::Established
        }
        (PROTO_TCP, st) => st,
        (_, _) => CtState::Replied,
    }
}

/// A TCP connection's state after an original-direction packet with flags `flags` (`prev`:
/// its state before, `None` for a new one).
#[inline]
fn original_tcp_state(flags: u8, prev: Option<CtState>) -> CtState {
    if flags & TCP_RST != 0 {
        CtState::Closed
    } else if flags & TCP_FIN != 0 {
        CtState::Closing
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new SYN: a (re)opened connection.
        CtState::SynSent
    } else {
        // Picked up mid-stream, or going on.
        match prev {
            Some(CtState::SynSent) | None => CtState::Established,
            Some(st) => st,
        }
    }
}

/// Whether a packet (`dir`, protocol `proto`, TCP flags `flags`) opens a new connection the
/// other way on a connection in `state`: a SYN without ACK in the reply direction of a TCP
/// connection that is closing or closed. Linux conntrack, which OVN uses, never lets it
/// through as a reply: from TIME_WAIT it drops the old entry and takes the SYN as a new
/// connection, in the other states it calls it invalid (which OVN drops). Here it is a new
/// connection: checked against the policies ([`Conntrack::turn_round`]).
/// In any other state (a SYN answering a SYN: simultaneous open) it is a reply.
#[inline(always)]
fn reopens(dir: Dir, proto: u8, state: CtState, flags: u8) -> bool {
    dir == Dir::Reply
        && proto == PROTO_TCP
        && flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && matches!(state, CtState::Closing | CtState::Closed)
}

/// Which way a packet goes relative to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

/// A live entry as a lookup sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub dir: Dir,
    pub state: CtState,
    /// The connection's original direction was denied by the policy since it was allowed:
    /// its replies are dropped too (OVN's `ct_mark.blocked`).
    pub blocked: bool,
    /// When it expires (seconds).
    pub expires: u32,
    /// The verdict it carries ([`verdict`]; 0: none).
    pub verdict: u64,
}

impl Found {
    /// Whether a packet of protocol `proto` with TCP flags `flags`, in this entry's direction,
    /// opens a new connection the other way: a SYN without ACK in the reply direction of a TCP
    /// connection that is closing or closed. Then it is no reply (see
    /// [`Conntrack::turn_round`]).
    #[inline]
    pub fn reopened_by(&self, proto: u8, flags: u8) -> bool {
        reopens(self.dir, proto, self.state, flags)
    }

    /// The state and expiry a packet with TCP flags `flags` of protocol `proto` at `now` moves
    /// the entry to ([`Conntrack::track`]'s update), or `None` when nothing changes (blocked,
    /// or same state and same expiry).
    #[inline]
    pub fn next(&self, proto: u8, flags: u8, now: u32) -> Option<(CtState, u32)> {
        if self.blocked {
            return None;
        }
        let state = moved(self.dir, proto, self.state, flags);
        let expires = now.saturating_add(timeout(proto, state)).max(1);
        (state != self.state || expires != self.expires).then_some((state, expires))
    }
}

/// The state a packet of protocol `proto` with TCP flags `flags`, in direction `dir`, moves a
/// connection in `state` to.
#[inline(always)]
fn moved(dir: Dir, proto: u8, state: CtState, flags: u8) -> CtState {
    match dir {
        Dir::Reply => reply_state(proto, state, flags),
        Dir::Original if proto == PROTO_TCP => original_tcp_state(flags, Some(state)),
        Dir::Original => state,
    }
}

/// What [`Conntrack::lookup_fast`] found for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fast {
    /// Not for the fast path: blocked, a change of state, or not known here.
    Slow,
    /// Not tracked: an empty slot (or its directory lane) came before any live entry of the
    /// key's tag. The general stages' lookup finds nothing either and writes nothing.
    Absent,
    /// A reply of a tracked connection.
    Reply,
    /// The original direction, with the verdict its entry carries ([`verdict`]).
    Original(u64),
}

/// Word 1 of a *steady* entry, per class of protocol, at one clock second: the entry a packet
/// leaves exactly as it is (not blocked, its state unchanged by the packet, its expiry already
/// the one the packet would set). Made once per burst ([`Steady::at`]); a packet's
/// [`FastProbe`] holds its class's word with its tag, so that the fast path tells a steady
/// entry of the packet's tag by one compare of the slot's word 1 (see
/// [`FastView::lookup_steady`]).
///
/// Steady: TCP in `established` for a packet without SYN, FIN or RST (either direction
/// leaves it there); any other protocol in `replied` (either direction leaves it there).
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    tcp: u64,
    udp: u64,
    icmp: u64,
    other: u64,
}

/// Bits 0-47 of a word 1 that no slot holds (its state byte is no [`CtState`]; bits 41-47
/// are never set): a packet that no steady entry can answer. Bits 48-63 stay free for the
/// probe's tag, which the probe still needs to tell the key's slots from others.
const NEVER: u64 = (1 << TAG_SHIFT) - 1;

impl Steady {
    /// The steady words at clock `now` (none of them a word any slot holds when an expiry
    /// would pass the clock's end, where the general rules saturate).
    pub fn at(now: u32) -> Steady {
        let word = |proto, state| {
            now.checked_add(timeout(proto, state)).map_or(NEVER, |exp| meta(exp, state, false))
        };
        Steady {
            tcp: word(PROTO_TCP, CtState::Established),
            udp: word(PROTO_UDP, CtState::Replied),
            icmp: word(PROTO_ICMP, CtState::Replied),
            other: word(0, CtState::Replied),
        }
    }

    /// The steady word for a packet of protocol `proto` with TCP flags `flags`.
    #[inline(always)]
    fn word(&self, proto: u8, flags: u8) -> u64 {
        match proto {
            PROTO_TCP if flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 => self.tcp,
            PROTO_TCP => NEVER,
            PROTO_UDP => self.udp,
            PROTO_ICMP | PROTO_ICMPV6 => self.icmp,
            _ => self.other,
        }
    }
}

/// A packet's lookup as the fast path's stages make it ([`FastView::probe`], then
/// [`FastView::locate`]) and read it ([`FastView::lookup_steady`]): the key, its home slot (its
/// directory line prefetched), where the directory placed it (its slot prefetched), the word 1
/// its entry holds when steady ([`Steady`], with the key's tag), and the TCP flags for the
/// general rules.
#[derive(Debug, Clone, Copy)]
pub struct FastProbe {
    key: PackedKey,
    want: u64,
    home: u32,
    at: Located,
    flags: u8,
}

/// The table as the fast path reads it over one burst ([`Conntrack::fast_view`]): its slots as
/// lines, its directory and the probe limit, taken once per burst rather than once per packet.
#[derive(Clone, Copy)]
pub struct FastView<'a> {
    ct: &'a Conntrack,
    lines: &'a [[[AtomicU64; 2]; 4]],
    dir: &'a [AtomicU64],
    probe: usize,
}

impl FastView<'_> {
    /// The fast path's first stage for one packet: hashes `key` (TCP flags `flags`), prefetches
    /// its home slot's directory line, and returns the probe for [`FastView::locate`]
    /// (`steady`: [`Steady::at`] the burst's clock).
    #[inline(always)]
    pub fn probe(&self, key: PackedKey, flags: u8, steady: &Steady) -> FastProbe {
        self.probe_hashed(key, hash_packed(&key), flags, steady)
    }

    /// [`FastView::probe`] for a key whose hash `h` ([`hash_packed`]'s) the caller made, as
    /// [`hash_v4`] makes it from an IPv4 header's words.
    #[inline(always)]
    pub fn probe_hashed(&self, key: PackedKey, h: u64, flags: u8, steady: &Steady) -> FastProbe {
        let home = ((u128::from(h) * self.lines.len() as u128) >> 64) as usize;
        // No bounds check: a prefetch never faults (past the last lane it is wasted).
        Conntrack::prefetch_dir(self.dir, home);
        // home < n <= 1.5 * MAX_CAPACITY < 2^32.
        FastProbe {
            key,
            want: steady.word(key.proto(), flags) | tag(h) << TAG_SHIFT,
            home: home as u32,
            at: Located::UNKNOWN,
            flags,
        }
    }

    /// The fast path's second stage for one packet, once the burst's directory lines were
    /// prefetched: the first slot from its home whose directory lane is the key's tag (an
    /// empty lane first: not tracked), that slot prefetched for [`FastView::lookup_steady`].
    #[inline(always)]
    pub fn locate(&self, p: &mut FastProbe) {
        p.at = Conntrack::locate(
            self.dir,
            self.lines.len(),
            self.probe,
            p.home as usize,
            dir_tag(p.want >> TAG_SHIFT),
        );
        if p.at.0 < Located::UNKNOWN.0 {
            let at = self.lines.as_ptr() as usize + (p.at.0 as usize).wrapping_mul(SLOT_BYTES);
            crate::cpu::prefetch_addr(at);
        }
    }

    /// [`Conntrack::lookup_fast`] for a probe from [`FastView::probe`] and
    /// [`FastView::locate`], the same answer and the same write, by a shorter road for the
    /// common case: when the slot the directory placed the key at has the probe's steady word
    /// as its word 1, it holds a live, unblocked entry of the key's tag that the packet leaves
    /// as it is, so when its key is the packet's (read under the slot's sequence number, word 1
    /// read again with it), the answer is its direction and verdict, with no state, expiry or
    /// timeout to work out and nothing to write. An empty lane before any of the key's tag:
    /// not tracked. Anything else (a slot of the key's tag that is not steady: the key's own
    /// needing its expiry moved on or its state changed, an expired one, or another key's; a
    /// steady slot of another key of the same tag, one in 65,536; a writer holding the slot;
    /// no lane of the tag within the probe) hands the packet to [`Conntrack::lookup_fast`],
    /// out of line, which reads the slots themselves.
    #[inline(always)]
    pub fn lookup(&self, p: &FastProbe, now: u32) -> Fast {
        match self.lookup_steady(p) {
            Some(f) => {
                #[cfg(debug_assertions)]
                if f != Fast::Slow {
                    STEADY_ANSWERS.with(|c| c.set(c.get() + 1));
                }
                f
            }
            None => self.ct.lookup_unsteady(p, now),
        }
    }

    /// [`FastView::lookup`]'s short road alone, which writes nothing: `None` where it would
    /// hand the packet to [`Conntrack::lookup_fast`] (see [`FastView::unsteady`]).
    #[inline(always)]
    pub fn lookup_steady(&self, p: &FastProbe) -> Option<Fast> {
        // A steady word is an expiry past the burst's clock: no clock to compare here.
        // No slot index is either of the two values that say the directory placed nothing:
        // the bounds check tells them apart from a slot.
        let Some(line) = self.lines.get(p.at.0 as usize) else {
            return (p.at == Located::ABSENT).then_some(Fast::Absent);
        };
        let slot = Slot(line);
        let s1 = slot.w(0).load(Ordering::Acquire);
        let (m, v) = (slot.w(1).load(Ordering::Relaxed), slot.w(7).load(Ordering::Relaxed));
        let key = [2, 3, 4, 5, 6].map(|i| slot.w(i).load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        if s1 & 1 != 0 || slot.w(0).load(Ordering::Relaxed) != s1 || m != p.want {
            return None;
        }
        if same(&key, &p.key.0) {
            Some(Fast::Original(v))
        } else if same(&PackedKey(key).reversed(), &p.key.0) {
            Some(Fast::Reply)
        } else {
            None
        }
    }

    /// [`FastView::lookup`] where [`FastView::lookup_steady`] said `None`: the general fast
    /// lookup, out of line (about once a second per connection, when its expiry moves on).
    pub fn unsteady(&self, p: &FastProbe, now: u32) -> Fast {
        self.ct.lookup_unsteady(p, now)
    }
}

#[cfg(debug_assertions)]
thread_local! {
    static STEADY_ANSWERS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many fast-path lookups on this thread the directory's short road answered with a
/// tracked connection ([`FastView::lookup`] without the general lookup): for the property test
/// of the fast path, which must know that the directory was used, not only that the answers
/// agree. Counted only in builds with debug assertions (the tests').
#[cfg(debug_assertions)]
pub fn steady_answers_on_this_thread() -> u64 {
    STEADY_ANSWERS.with(|c| c.get())
}

/// The verdict word for "allowed from port `from` to port `to` under policy epoch `epoch`"
/// (epochs start at 1, so no verdict is 0).
#[inline]
pub fn verdict(epoch: u32, from: u16, to: u16) -> u64 {
    (u64::from(epoch) << 32) | (u64::from(from) << 16) | u64::from(to)
}

/// One entry as `ctl show conntrack` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: FlowKey,
    pub state: CtState,
    pub blocked: bool,
    /// Seconds left.
    pub ttl: u32,
}

/// One slot: 8 words, one cache line (4 pairs of the table's [`AtomicPairs`], whose start is
/// page aligned). Word 0: the sequence number (odd: a writer holds the slot); word 1: expires
/// (low 32 bits; 0: empty, never used or emptied by the sweep), state (bits 32-39), blocked
/// (bit 40), the key's tag (bits 48-63, [`tag`]); words 2-6: the key in the connection's
/// original direction ([`KeyWords`]); word 7: the verdict.
#[derive(Clone, Copy)]
struct Slot<'a>(&'a [[AtomicU64; 2]; 4]);

/// A key as the slot stores it: source (2 words), destination (2 words), then the ports
/// (source in bits 16-31, destination in bits 0-15: the order of a TCP/UDP header's first
/// word), protocol (bits 32-39), family (bit 40, IPv4) and VLAN (bits 44-55, [`VLAN_SHIFT`]).
type KeyWords = [u64; 5];

/// A flow key in the five words a slot stores (source, destination, then ports, protocol and
/// family): made once per packet, straight from an IPv4 header ([`PackedKey::v4`]) or from a
/// [`FlowKey`], then hashed ([`hash_packed`]) and compared against slots with no further
/// conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackedKey(KeyWords);

impl PackedKey {
    /// An IPv4 key: source and destination addresses, the transport header's first word
    /// (source port << 16 | destination port), protocol, and `fam`: [`PackedKey::v4_family`]
    /// of the VLAN (made once per burst).
    #[inline(always)]
    pub fn v4(src: u32, dst: u32, ports: u32, proto: u8, fam: u64) -> PackedKey {
        PackedKey([u64::from(src), 0, u64::from(dst), 0, u64::from(ports) | u64::from(proto) << 32 | fam])
    }

    /// The family and VLAN bits of an IPv4 key in VLAN `vlan`.
    #[inline(always)]
    pub fn v4_family(vlan: u16) -> u64 {
        1 << 40 | u64::from(vlan & 0x0fff) << VLAN_SHIFT
    }

    #[inline]
    pub fn new(k: &FlowKey) -> PackedKey {
        PackedKey([
            k.src as u64,
            (k.src >> 64) as u64,
            k.dst as u64,
            (k.dst >> 64) as u64,
            u64::from(k.sport) << 16
                | u64::from(k.dport)
                | u64::from(k.proto) << 32
                | u64::from(k.v4) << 40
                | u64::from(k.vlan & 0x0fff) << VLAN_SHIFT,
        ])
    }

    /// The protocol.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        (self.0[4] >> 32) as u8
    }

    /// The other direction: addresses swapped, ports swapped, protocol, family and VLAN kept.
    #[inline(always)]
    fn reversed(&self) -> KeyWords {
        let [s0, s1, d0, d1, p] = self.0;
        [d0, d1, s0, s1, (p & !0xffff_ffff) | (p & 0xffff) << 16 | (p >> 16 & 0xffff)]
    }

    pub fn flow_key(&self) -> FlowKey {
        let w = &self.0;
        FlowKey {
            src: u128::from(w[0]) | u128::from(w[1]) << 64,
            dst: u128::from(w[2]) | u128::from(w[3]) << 64,
            sport: (w[4] >> 16) as u16,
            dport: w[4] as u16,
            proto: (w[4] >> 32) as u8,
            v4: (w[4] >> 40) & 1 == 1,
            vlan: (w[4] >> VLAN_SHIFT) as u16 & 0x0fff,
        }
    }
}

/// Where a key's fifth word keeps its VLAN.
const VLAN_SHIFT: u32 = 44;

fn key_words(k: &FlowKey) -> KeyWords {
    PackedKey::new(k).0
}

/// Key equality without a call to `memcmp`.
#[inline(always)]
fn same(a: &KeyWords, b: &KeyWords) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

fn words_key(w: &KeyWords) -> FlowKey {
    PackedKey(*w).flow_key()
}

/// A consistent copy of a slot's words 1-7.
#[derive(Clone, Copy)]
struct Snap {
    meta: u64,
    key: KeyWords,
    verdict: u64,
}

impl Snap {
    fn expires(&self) -> u32 {
        self.meta as u32
    }
    fn state(&self) -> CtState {
        CtState::from_u8((self.meta >> 32) as u8)
    }
    fn blocked(&self) -> bool {
        (self.meta >> 40) & 1 == 1
    }
    /// Sets expiry, state and blocked, keeping the tag.
    fn set(&mut self, expires: u32, state: CtState, blocked: bool) {
        self.meta = meta(expires, state, blocked) | self.meta & !0 << TAG_SHIFT;
    }
    fn found(&self, dir: Dir) -> Found {
        Found {
            dir,
            state: self.state(),
            blocked: self.blocked(),
            expires: self.expires(),
            verdict: self.verdict,
        }
    }
}

/// Where a slot's word 1 keeps its key's tag ([`tag`]).
const TAG_SHIFT: u32 = 48;

/// A key's tag: 16 bits of its hash (the same for both directions), kept in the top bits of
/// its slot's word 1 and in its directory lane, so that a probe passes over a slot holding
/// another key after one load and one compare, without reading or comparing the key (one slot
/// in 65,536 holding another key has the same tag, and is then compared in full). The low
/// bits: in an IPv4 hash ([`hash_v4`]) they see the endpoints but not the protocol, family or
/// VLAN (bits 0-47 of its products depend on the endpoints alone), so one pair of endpoints in
/// two VLANs or protocols shares a tag, though not a home slot; where such a key lies between
/// the other's home and its slot, that lookup takes the general road. Bits 16-31 would see
/// them, at 8 more instructions a frame on the policy fast path (callgrind, 323.8 against
/// 315.8): not taken, since the two keys' probes meet only where their homes are a few slots
/// apart.
#[inline(always)]
fn tag(h: u64) -> u64 {
    h & 0xffff
}

/// A slot's directory lane for its word 1 `meta`: 0 when the slot is empty, else its key's
/// tag (a tag of 0 stored as 1: the lane only points a lookup at slots to read, and the slot's
/// own word 1 then has the exact tag).
#[inline(always)]
fn dir_value(meta: u64) -> u64 {
    if meta as u32 == 0 {
        0
    } else {
        dir_tag(meta >> TAG_SHIFT)
    }
}

/// The lane of a live or expired slot holding a key of tag `t` ([`tag`]).
#[inline(always)]
fn dir_tag(t: u64) -> u64 {
    t.max(1)
}

/// Slot `j`'s lane in the directory's words: the word holding it and its shift (4 lanes a
/// word, the lowest slot in the low bits).
#[inline(always)]
fn dir_lane(dir: &[AtomicU64], j: usize) -> Option<(&AtomicU64, u32)> {
    Some((dir.get(j >> 2)?, (j as u32 & 3) << 4))
}

/// Where the directory places a key ([`Conntrack::locate`]): the first slot whose lane is the
/// key's tag (still to be read and compared), or one of the two values no slot index takes
/// (there are fewer than 2^32 - 2 slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Located(u32);

impl Located {
    /// An empty lane came first: not tracked.
    const ABSENT: Located = Located(u32::MAX);
    /// No lane of the key's tag nor an empty one within the probe (or not looked yet).
    const UNKNOWN: Located = Located(u32::MAX - 1);
}

fn meta(expires: u32, state: CtState, blocked: bool) -> u64 {
    u64::from(expires) | u64::from(state as u8) << 32 | u64::from(blocked) << 40
}

impl Slot<'_> {
    #[inline(always)]
    fn w(&self, i: usize) -> &AtomicU64 {
        &self.0[i >> 1][i & 1]
    }

    /// Reads the slot without a lock: retries while a writer holds it.
    #[inline(always)]
    fn read(&self) -> Snap {
        let s1 = self.w(0).load(Ordering::Acquire);
        let snap = self.words();
        fence(Ordering::Acquire);
        if s1 & 1 == 0 && self.w(0).load(Ordering::Relaxed) == s1 {
            return snap;
        }
        self.read_contended()
    }

    /// Words 1-7 as they are (consistent only under the lock, or when the sequence number
    /// was even and unchanged around the reads).
    #[inline(always)]
    fn words(&self) -> Snap {
        Snap {
            meta: self.w(1).load(Ordering::Relaxed),
            key: [
                self.w(2).load(Ordering::Relaxed),
                self.w(3).load(Ordering::Relaxed),
                self.w(4).load(Ordering::Relaxed),
                self.w(5).load(Ordering::Relaxed),
                self.w(6).load(Ordering::Relaxed),
            ],
            verdict: self.w(7).load(Ordering::Relaxed),
        }
    }

    /// [`Slot::read`] when a writer held the slot: waits for a consistent view.
    #[cold]
    #[inline(never)]
    fn read_contended(&self) -> Snap {
        let mut spins = 0u32;
        loop {
            let s1 = self.w(0).load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let snap = self.words();
                fence(Ordering::Acquire);
                if self.w(0).load(Ordering::Relaxed) == s1 {
                    return snap;
                }
            }
            backoff(&mut spins);
        }
    }

    /// Takes the slot's write lock (waits while another writer holds it): the number to pass
    /// to [`Slot::unlock`].
    fn lock(&self) -> u64 {
        let mut spins = 0u32;
        loop {
            if let Some(s) = self.try_lock() {
                return s;
            }
            backoff(&mut spins);
        }
    }

    fn try_lock(&self) -> Option<u64> {
        let s = self.w(0).load(Ordering::Relaxed);
        if s & 1 == 0 && self.w(0).compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            // Readers that see the new words must also see the odd number.
            fence(Ordering::Release);
            return Some(s);
        }
        None
    }

    fn unlock(&self, s: u64) {
        self.w(0).store(s + 2, Ordering::Release);
    }

    /// Under the lock: reads words 1-7.
    fn snap_locked(&self) -> Snap {
        self.words()
    }

    /// Under the lock: writes words 1-7.
    fn write(&self, s: &Snap) {
        self.w(1).store(s.meta, Ordering::Relaxed);
        for (i, v) in s.key.into_iter().enumerate() {
            self.w(2 + i).store(v, Ordering::Relaxed);
        }
        self.w(7).store(s.verdict, Ordering::Relaxed);
    }
}

/// Waits a little: spins, then yields (a writer holds a slot for a few stores, but may be
/// descheduled on a busy core).
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A bridge's connection table.
pub struct Conntrack {
    /// The slots' words, [`SLOT_BYTES`] a slot, on transparent huge pages when large.
    mem: AtomicPairs,
    /// The directory: each slot's [`dir_value`] in a 16-bit lane, 32 slots a cache line (see
    /// [`Conntrack::locate`]).
    dir: AtomicPairs,
    /// How many slots.
    n: usize,
    /// Insert locks, one per [`STRIPE`] home slots.
    stripes: Box<[Mutex<()>]>,
    capacity: usize,
    /// The incremental sweep's state, on a cache line of its own: the fields above are read
    /// by every lookup on every worker, and this is written by the sweep.
    sweep: SweepState,
}

/// Where the incremental sweep goes on, and how far it may go ([`Conntrack::sweep`]).
#[repr(align(64))]
struct SweepState {
    /// The next slot's index above the one to look at (it walks downwards).
    at: AtomicUsize,
    /// The allowance: the clock second (high 32 bits) and how many slots the sweep may still
    /// look at in that second (low 32 bits).
    quota: AtomicU64,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conntrack({})", self.capacity)
    }
}

/// The hash of a key, the same for both directions: computed once per packet and handed to
/// [`Conntrack::prefetch`] and the lookups ([`hash_packed`] of its [`PackedKey`]).
#[inline]
pub fn hash(k: &FlowKey) -> u64 {
    hash_packed(&PackedKey::new(k))
}

/// [`hash_packed`] of [`PackedKey::v4`]`(src, dst, ports, proto, fam)` (`fam`:
/// [`PackedKey::v4_family`] of the VLAN), from the IPv4 header's words as the fast path reads
/// them: the same value, without the key's words unpacked again.
#[inline(always)]
pub fn hash_v4(src: u32, dst: u32, ports: u32, proto: u8, fam: u64) -> u64 {
    let (e1, e2) =
        (u64::from(src) << 16 | u64::from(ports >> 16), u64::from(dst) << 16 | u64::from(ports & 0xffff));
    // A v4 key's word 4 shifted right by 32 is the protocol, the family bit and the VLAN.
    mix_v4(e1, e2, (u64::from(proto) | fam >> 32) << 48)
}

/// The IPv4 hash of two endpoints (address << 16 | port) and `top`, the protocol, family and
/// VLAN bits in the top 16 bits: the endpoints in order (smaller first, so the order of the
/// packet does not count), `top` in the first one's free top bits.
#[inline(always)]
fn mix_v4(e1: u64, e2: u64, top: u64) -> u64 {
    let (a, b) = (e1.min(e2) | top, e1.max(e2));
    let h = (a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 32)
}

/// The hash of a packed key, the same for both directions, with every bit reaching the top
/// bits that pick the home slot. An IPv4 endpoint (address and port) fits one word: the two
/// are taken in order (smaller first) and hashed with two multiplications. An IPv6 endpoint
/// is mixed on its own (two multiplications), the two mixes added (so the order does not
/// count), then Murmur3's finalizer.
#[inline(always)]
pub fn hash_packed(k: &PackedKey) -> u64 {
    let [s0, s1, d0, d1, p] = k.0;
    let (sport, dport) = (p >> 16 & 0xffff, p & 0xffff);
    if (p >> 40) & 1 == 1 {
        return mix_v4(s0 << 16 | sport, d0 << 16 | dport, (p >> 32) << 48);
    }
    #[inline(always)]
    fn end(lo: u64, hi: u64, port: u64) -> u64 {
        (lo ^ port << 48).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hi.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
    }
    let mut h = end(s0, s1, sport).wrapping_add(end(d0, d1, dport)) ^ (p >> 32);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Where a probe found a key.
#[derive(Clone, Copy)]
struct Hit {
    slot: usize,
    dir: Dir,
    snap: Snap,
}

impl Conntrack {
    /// A table for `capacity` connections ([`SLOTS_PER_100`] slots for each 100).
    pub fn new(capacity: usize) -> Result<Conntrack, ConntrackError> {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let n = (capacity * SLOTS_PER_100).div_ceil(100).max(2);
        Ok(Conntrack {
            mem: AtomicPairs::zeroed(n * 4).map_err(|e| ConntrackError::NoMemory(e.to_string()))?,
            dir: AtomicPairs::zeroed(n.div_ceil(8)).map_err(|e| ConntrackError::NoMemory(e.to_string()))?,
            n,
            stripes: (0..n.div_ceil(STRIPE)).map(|_| Mutex::new(())).collect(),
            capacity,
            sweep: SweepState { at: AtomicUsize::new(0), quota: AtomicU64::new(u64::MAX) },
        })
    }

    /// Slot `j` (`None` past the end).
    #[inline(always)]
    fn slot(&self, j: usize) -> Option<Slot<'_>> {
        let pairs = self.mem.pairs().get(j.checked_mul(4)?..)?.first_chunk::<4>()?;
        Some(Slot(pairs))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy of the table (for `ctl trace`, which must not change the running one).
    pub fn copy(&self) -> Result<Conntrack, ConntrackError> {
        let t = Conntrack::new(self.capacity)?;
        for j in 0..self.n {
            if let (Some(a), Some(b)) = (self.slot(j), t.slot(j)) {
                // No lock: nothing else holds the new table yet.
                t.put(j, b, &a.read());
            }
        }
        Ok(t)
    }

    /// The slots in all (the most entries it can hold).
    pub fn slots(&self) -> usize {
        self.n
    }

    /// The table's memory in bytes (slots, directory and insert locks).
    pub fn memory(&self) -> usize {
        self.n * SLOT_BYTES
            + self.n.div_ceil(8) * std::mem::size_of::<[AtomicU64; 2]>()
            + self.stripes.len() * std::mem::size_of::<Mutex<()>>()
    }

    /// Writes `s` to slot `j` (`slot`) and its directory lane: under the slot's lock, or
    /// before anything else can see the table. Every write of a slot goes through here, so
    /// that a lane is always its slot's [`dir_value`] once the lock is let go.
    fn put(&self, j: usize, slot: Slot<'_>, s: &Snap) {
        slot.write(s);
        if let Some((w, shift)) = dir_lane(self.dir.pairs().as_flattened(), j) {
            // Only the holder of slot j's lock writes its lane; the other lanes of the word
            // belong to other slots, whose writers change only their own bits (an exclusive
            // or of the difference is one atomic step that leaves them as they are).
            let old = (w.load(Ordering::Relaxed) >> shift) & 0xffff;
            let new = dir_value(s.meta);
            if old != new {
                w.fetch_xor((old ^ new) << shift, Ordering::Relaxed);
            }
        }
    }

    /// The directory line of home slot `home` towards the cache, and the next line when the
    /// probe may run into it (`home` among its line's last 4 lanes).
    #[inline(always)]
    fn prefetch_dir(dir: &[AtomicU64], home: usize) {
        let at = dir.as_ptr() as usize + home.wrapping_mul(2);
        crate::cpu::prefetch_addr(at);
        crate::cpu::prefetch_addr(at.wrapping_add(8));
    }

    /// The directory's part of a lookup: from home slot `home`, the first slot whose lane is
    /// `want` (a [`dir_value`]), for at most `probe` slots ([`Located`]). The lanes are read
    /// one by one without a lock: a lane changed under the reader (a slot taken or emptied
    /// just then) at worst sends the lookup the general way, which reads the slots.
    #[inline(always)]
    fn locate(dir: &[AtomicU64], n: usize, probe: usize, home: usize, want: u64) -> Located {
        let (mut j, mut left) = (home, probe);
        loop {
            let Some((w, shift)) = dir_lane(dir, j) else { return Located::UNKNOWN };
            let v = (w.load(Ordering::Relaxed) >> shift) & 0xffff;
            if v == want {
                // j < n < 2^32 - 2 (MAX_CAPACITY).
                return Located(j as u32);
            }
            if v == 0 {
                return Located::ABSENT;
            }
            left -= 1;
            if left == 0 {
                return Located::UNKNOWN;
            }
            j += 1;
            if j == n {
                j = 0;
            }
        }
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        ((u128::from(h) * self.n as u128) >> 64) as usize
    }

    /// The longest probe in this table.
    #[inline]
    fn probe(&self) -> usize {
        MAX_PROBE.min(self.n)
    }

    #[inline]
    fn next(&self, j: usize) -> usize {
        if j + 1 == self.n {
            0
        } else {
            j + 1
        }
    }

    /// Brings the home slot of the key with hash `h` (from [`hash`]) and the slot after it
    /// towards the cache: for a burst, before its lookups, so that their cache misses overlap.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        self.prefetch_home(self.home(h));
    }

    /// [`Conntrack::prefetch`] for a home slot. Two lines: a known key's probe reads 1.5 slots
    /// on average at half load and 2 at the table's full load (2/3), and without the second
    /// line a lookup in a table larger than the cache whose key is not at home waits for a miss
    /// that starts only once the first line has come. No bounds check: a prefetch never faults (past the last slot it is wasted).
    #[inline(always)]
    fn prefetch_home(&self, home: usize) {
        let at = self.mem.pairs().as_ptr() as usize + home.wrapping_mul(SLOT_BYTES);
        crate::cpu::prefetch_addr(at);
        crate::cpu::prefetch_addr(at.wrapping_add(SLOT_BYTES));
    }

    /// Finds the live entry of `k` (hash `h`, either direction) at `now`, without a lock.
    #[inline(always)]
    fn find(&self, k: &FlowKey, h: u64, now: u32) -> Option<Hit> {
        self.find_packed(&PackedKey::new(k), h, now)
    }

    /// [`Conntrack::find`] for a packed key. A slot is first glanced at by its word 1 alone
    /// (one atomic load, so never torn): an empty one ends the probe, one holding another
    /// tag ([`tag`]) or an expired entry is passed over without reading or comparing its key;
    /// only a live slot of the key's tag is read in full (under its sequence number) and
    /// compared.
    #[inline(always)]
    fn find_packed(&self, k: &PackedKey, h: u64, now: u32) -> Option<Hit> {
        let t = tag(h);
        let mut j = self.home(h);
        for _ in 0..self.probe() {
            let slot = self.slot(j)?;
            let glance = slot.w(1).load(Ordering::Relaxed);
            if glance as u32 == 0 {
                return None;
            }
            if glance >> TAG_SHIFT == t && glance as u32 > now {
                let snap = slot.read();
                let exp = snap.expires();
                if exp == 0 {
                    return None;
                }
                if exp > now {
                    if same(&snap.key, &k.0) {
                        return Some(Hit { slot: j, dir: Dir::Original, snap });
                    }
                    if same(&snap.key, &k.reversed()) {
                        return Some(Hit { slot: j, dir: Dir::Reply, snap });
                    }
                }
            }
            j = self.next(j);
        }
        None
    }

    /// Changes the entry at `hit` under its slot's lock, if it still holds the same
    /// connection and is live at `now`; `f` gets the words and may change them.
    fn update(&self, hit: &Hit, now: u32, f: impl FnOnce(&mut Snap)) {
        let Some(slot) = self.slot(hit.slot) else { return };
        let s = slot.lock();
        let mut snap = slot.snap_locked();
        if snap.key == hit.snap.key && snap.expires() > now {
            f(&mut snap);
            self.put(hit.slot, slot, &snap);
        }
        slot.unlock(s);
    }

    /// The live entry of the connection `k` belongs to, at `now`.
    pub fn lookup(&self, k: &FlowKey, now: u32) -> Option<Found> {
        self.lookup_hashed(k, hash(k), now)
    }

    /// [`Conntrack::lookup`] with the key's hash already computed (inlined: the policy fast
    /// path's per-frame call).
    #[inline(always)]
    pub fn lookup_hashed(&self, k: &FlowKey, h: u64, now: u32) -> Option<Found> {
        self.find(k, h, now).map(|hit| hit.snap.found(hit.dir))
    }

    /// [`Conntrack::lookup_hashed`] for the pipeline's fast path, for a packed key (hash `h`
    /// from [`hash_packed`]), making the one write of [`Conntrack::track_hashed`] that leaves
    /// the entry's state as it is: a packet (TCP flags `flags`) that moves only the expiry on
    /// (once a second) refreshes it. [`Fast::Absent`] when an empty slot comes first (the key
    /// is not tracked); [`Fast::Slow`] when no empty slot ends the probe, the key's
    /// connection is blocked, the packet would change its state (not written: the caller's
    /// general stage tracks it), or a writer held the key's slot (the general stage waits for
    /// it). The probe glances at each slot's word 1 first, as every lookup does; the key's slot is
    /// read in place and compared as it is read, keeping only its words 1 and 7 (no copy of
    /// the slot or of the key).
    #[inline(always)]
    pub fn lookup_fast(&self, k: &PackedKey, h: u64, flags: u8, now: u32) -> Fast {
        let t = tag(h);
        let pairs = self.mem.pairs();
        let mut j = self.home(h);
        for _ in 0..self.probe() {
            let Some(slot) = pairs.get(j.wrapping_mul(4)..).and_then(|p| p.first_chunk::<4>()).map(Slot)
            else {
                return Fast::Slow;
            };
            let glance = slot.w(1).load(Ordering::Relaxed);
            if glance as u32 == 0 {
                return Fast::Absent;
            }
            if glance >> TAG_SHIFT == t && glance as u32 > now {
                let s1 = slot.w(0).load(Ordering::Acquire);
                let (meta, v) = (slot.w(1).load(Ordering::Relaxed), slot.w(7).load(Ordering::Relaxed));
                let key = [2, 3, 4, 5, 6].map(|i| slot.w(i).load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                if s1 & 1 != 0 || slot.w(0).load(Ordering::Relaxed) != s1 || meta as u32 <= now {
                    return Fast::Slow;
                }
                let dir = if same(&key, &k.0) {
                    Dir::Original
                } else if same(&PackedKey(key).reversed(), &k.0) {
                    // The stored key turned round (not the packet's, which the compiler would
                    // work out before the loop and keep on the stack).
                    Dir::Reply
                } else {
                    j = self.next(j);
                    continue;
                };
                // Blocked, a change of state or a reopened connection: the general stage's.
                // The same expiry: nothing to write (the common case, as expiry is in seconds).
                let (state, proto) = (CtState::from_u8((meta >> 32) as u8), k.proto());
                if (meta >> 40) & 1 == 1
                    || moved(dir, proto, state, flags) != state
                    || reopens(dir, proto, state, flags)
                {
                    return Fast::Slow;
                }
                let expires = now.saturating_add(timeout(proto, state)).max(1);
                if expires != meta as u32 {
                    let key = if dir == Dir::Original { k.0 } else { k.reversed() };
                    self.refresh(
                        &Hit { slot: j, dir, snap: Snap { meta, key, verdict: v } },
                        now,
                        state,
                        expires,
                    );
                }
                return match dir {
                    Dir::Reply => Fast::Reply,
                    Dir::Original => Fast::Original(v),
                };
            }
            j = self.next(j);
        }
        Fast::Slow
    }

    /// The table as the fast path reads it over a burst.
    #[inline(always)]
    pub fn fast_view(&self) -> FastView<'_> {
        FastView {
            ct: self,
            lines: self.mem.pairs().as_chunks::<4>().0,
            dir: self.dir.pairs().as_flattened(),
            probe: self.probe(),
        }
    }

    /// [`FastView::unsteady`]: [`Conntrack::lookup_fast`] for a probe.
    #[cold]
    #[inline(never)]
    fn lookup_unsteady(&self, p: &FastProbe, now: u32) -> Fast {
        self.lookup_fast(&p.key, hash_packed(&p.key), p.flags, now)
    }

    /// [`Conntrack::lookup_fast`]'s write: the entry at `hit` moves on to `expires` in the same
    /// `state` (once a second per connection: out of line).
    #[cold]
    #[inline(never)]
    fn refresh(&self, hit: &Hit, now: u32, state: CtState, expires: u32) {
        self.update(hit, now, |s| {
            if !s.blocked() {
                s.set(expires, state, false);
            }
        });
    }

    /// Looks up a burst of keys the way the pipeline's fast path does, in three passes: every
    /// key packed and hashed and its directory line prefetched; then each key's slot located
    /// in the directory and prefetched; then the slots read (`out[i]` for `keys[i]`, at most
    /// 32). A key the directory cannot place (a lane that changed under the reader, a slot
    /// of its tag holding another key or an expired entry) is looked up the general way.
    pub fn lookup_burst(&self, keys: &[FlowKey], now: u32, out: &mut [Option<Found>]) {
        let mut pk = [(PackedKey::default(), 0u64, Located::UNKNOWN); 32];
        let n = keys.len().min(pk.len());
        let (dir, lines) = (self.dir.pairs().as_flattened(), self.mem.pairs().as_chunks::<4>().0);
        for (k, p) in keys.iter().zip(pk.iter_mut()) {
            let key = PackedKey::new(k);
            *p = (key, hash_packed(&key), Located::UNKNOWN);
            Self::prefetch_dir(dir, self.home(p.1));
        }
        for p in pk[..n].iter_mut() {
            p.2 = Self::locate(dir, self.n, self.probe(), self.home(p.1), dir_tag(tag(p.1)));
            if p.2 .0 < Located::UNKNOWN.0 {
                crate::cpu::prefetch_addr(
                    lines.as_ptr() as usize + (p.2 .0 as usize).wrapping_mul(SLOT_BYTES),
                );
            }
        }
        for ((k, h, at), o) in pk[..n].iter().zip(out.iter_mut()) {
            let hit = match *at {
                Located::ABSENT | Located::UNKNOWN => None,
                Located(j) => self.slot(j as usize).and_then(|slot| {
                    let snap = slot.read();
                    let slot = j as usize;
                    if snap.expires() <= now || snap.meta >> TAG_SHIFT != tag(*h) {
                        None
                    } else if same(&snap.key, &k.0) {
                        Some(Hit { slot, dir: Dir::Original, snap })
                    } else if same(&snap.key, &k.reversed()) {
                        Some(Hit { slot, dir: Dir::Reply, snap })
                    } else {
                        None
                    }
                }),
            };
            let hit = match (hit, *at) {
                (Some(hit), _) => Some(hit),
                (None, Located::ABSENT) => None,
                (None, _) => self.find_packed(k, *h, now),
            };
            *o = hit.map(|hit| hit.snap.found(hit.dir));
        }
    }

    /// A reply-direction packet with TCP flags `flags` passed: moves the state on.
    pub fn reply(&self, k: &FlowKey, flags: u8, now: u32) {
        if let Some(hit) = self.find(k, hash(k), now).filter(|h| h.dir == Dir::Reply) {
            self.update(&hit, now, |s| {
                let state = reply_state(k.proto, s.state(), flags);
                let expires = now.saturating_add(timeout(k.proto, state)).max(1);
                s.set(expires, state, s.blocked());
            });
        }
    }

    /// One probe for a packet (TCP flags `flags`) of a tracked connection: the entry as found
    /// (`None`: not tracked), moved on as [`Conntrack::reply`] or [`Conntrack::commit`] would
    /// (for its direction) unless it is blocked. Writes only when the state or expiry changes.
    /// (A SYN that reopens the connection the other way, [`Found::reopened_by`], is the
    /// caller's to see: then [`Conntrack::turn_round`].)
    pub fn track(&self, k: &FlowKey, flags: u8, now: u32) -> Option<Found> {
        self.track_hashed(k, hash(k), flags, now)
    }

    /// [`Conntrack::track`] with the key's hash already computed.
    #[inline]
    pub fn track_hashed(&self, k: &FlowKey, h: u64, flags: u8, now: u32) -> Option<Found> {
        let hit = self.find(k, h, now)?;
        let found = hit.snap.found(hit.dir);
        if let Some((state, expires)) = found.next(k.proto, flags, now) {
            self.update(&hit, now, |s| {
                if !s.blocked() {
                    s.set(expires, state, false);
                }
            });
        }
        Some(found)
    }

    /// A SYN `k` (hash `h`) reopened its connection the other way ([`Found::reopened_by`]):
    /// when `k` is the reply direction of a live entry, the entry is turned round, keyed in
    /// `k`'s direction (the same hash and tag: the slot stays the key's), in `syn_sent`,
    /// blocked until a commit (the policies allowing the SYN) clears it, without a verdict.
    /// Out of line: rare.
    #[cold]
    #[inline(never)]
    pub fn turn_round(&self, k: &FlowKey, h: u64, now: u32) {
        let Some(hit) = self.find(k, h, now).filter(|h| h.dir == Dir::Reply) else { return };
        let state = CtState::SynSent;
        let expires = now.saturating_add(timeout(PROTO_TCP, state)).max(1);
        self.update(&hit, now, |s| {
            s.key = key_words(k);
            s.set(expires, state, true);
            s.verdict = 0;
        });
    }

    /// An original-direction packet (`flags`: its TCP flags) was allowed: creates the entry
    /// or moves it on (and clears `blocked`). `Err(())`: the table is full, not tracked.
    #[allow(clippy::result_unit_err)]
    pub fn commit(&self, k: &FlowKey, flags: u8, now: u32) -> Result<(), ()> {
        self.commit_verdict(k, flags, now, 0)
    }

    /// [`Conntrack::commit`], also storing the verdict `v` ([`verdict`]) on the entry.
    #[allow(clippy::result_unit_err)]
    pub fn commit_verdict(&self, k: &FlowKey, flags: u8, now: u32, v: u64) -> Result<(), ()> {
        let h = hash(k);
        let home = self.home(h);
        let stripe = &self.stripes[home / STRIPE];
        // A worker that panicked while holding it left nothing half done (the mutex guards
        // no data): keep going.
        let _g = stripe.lock().unwrap_or_else(|e| e.into_inner());
        let tcp_state = |prev| original_tcp_state(flags, prev);
        if let Some(hit) = self.find(k, h, now) {
            self.update(&hit, now, |s| {
                let mut state = s.state();
                if hit.dir == Dir::Original && k.proto == PROTO_TCP {
                    state = tcp_state(Some(state));
                }
                let expires = now.saturating_add(timeout(k.proto, state)).max(1);
                s.set(expires, state, false);
                // A verdict is about the original direction only.
                if v != 0 && hit.dir == Dir::Original {
                    s.verdict = v;
                }
            });
            return Ok(());
        }
        let state = if k.proto == PROTO_TCP { tcp_state(None) } else { CtState::Unreplied };
        let new = Snap {
            meta: meta(now.saturating_add(timeout(k.proto, state)).max(1), state, false)
                | tag(h) << TAG_SHIFT,
            key: key_words(k),
            verdict: v,
        };
        // Hand over hand: the slot passed over stays locked until the next one is locked. The
        // sweep empties an expired slot only when the slot after it is empty, holding both
        // locks; were the passed slot free while the next one is not yet written, a sweep whose
        // clock is a second ahead could empty it in between, and the entry written after it
        // would be cut off from its home (a probe ends at an empty slot).
        let mut j = home;
        let mut passed: Option<(Slot<'_>, u64)> = None;
        let mut done = Err(());
        for _ in 0..self.probe() {
            let Some(slot) = self.slot(j) else { break };
            let s = slot.lock();
            if let Some((p, ps)) = passed.take() {
                p.unlock(ps);
            }
            if slot.snap_locked().expires() <= now {
                self.put(j, slot, &new);
                slot.unlock(s);
                done = Ok(());
                break;
            }
            passed = Some((slot, s));
            j = self.next(j);
        }
        if let Some((p, ps)) = passed {
            p.unlock(ps);
        }
        done
    }

    /// Stores the verdict `v` ([`verdict`]) on the live entry of `k`'s connection.
    pub fn remember(&self, k: &FlowKey, now: u32, v: u64) {
        if let Some(hit) = self.find(k, hash(k), now).filter(|h| h.dir == Dir::Original) {
            self.update(&hit, now, |s| s.verdict = v);
        }
    }

    /// The original direction of `k`'s connection was denied: its replies stop passing.
    pub fn block(&self, k: &FlowKey, now: u32) {
        if let Some(hit) = self.find(k, hash(k), now) {
            self.update(&hit, now, |s| {
                s.meta |= 1 << 40;
                s.verdict = 0;
            });
        }
    }

    /// The incremental sweep: looks at the next `n` slots (walking the table downwards,
    /// shared by all callers) and empties each expired one whose next slot is empty, so that
    /// probes for unknown keys stay short. A slot a writer holds is left for the next pass.
    ///
    /// At most one pass over the table per second of the clock, all callers together: expiries
    /// are whole seconds, so a second pass in the same second finds nothing new to empty, and
    /// at line rate a per-burst sweep would otherwise walk a 200,000-slot table tens of times
    /// a second, its lines evicting the ones the lookups need. Nothing depends on the sweep
    /// for correctness (an insert takes an expired slot itself, a probe passes over one); it
    /// only keeps unknown keys' probes short. Once the second's allowance is spent a call
    /// reads one word and writes nothing. The allowance is kept without a lock: callers that
    /// race may look at a few more slots in a second than a pass, nothing else.
    #[inline(always)]
    pub fn sweep(&self, now: u32, n: usize) {
        let len = self.n;
        let q = self.sweep.quota.load(Ordering::Relaxed);
        let left = if (q >> 32) as u32 == now { q as u32 as usize } else { len };
        let n = n.min(left);
        if n == 0 {
            return;
        }
        self.sweep.quota.store(u64::from(now) << 32 | (left - n) as u64, Ordering::Relaxed);
        let end = self.sweep.at.fetch_add(n, Ordering::Relaxed) % len;
        // Slots end-1 down to end-n (wrapping), highest first: a run of expired slots before
        // an empty one empties in one pass. In at most two runs of slots (below `end`, then
        // from the table's end), so that a slot costs no wrap test.
        let wrapped = n.saturating_sub(end);
        self.sweep_run(end - (n - wrapped), end, now);
        if wrapped > 0 {
            self.sweep_run(len - wrapped, len, now);
        }
    }

    /// [`Conntrack::sweep`] over slots `hi - 1` down to `lo`.
    #[inline(always)]
    fn sweep_run(&self, lo: usize, hi: usize, now: u32) {
        let lines = self.mem.pairs().as_chunks::<4>().0;
        // A glance at a slot's expiry word (no write to a slot that stays as it is; a torn
        // view only decides whether to look again under the locks).
        let expires = |l: &[[AtomicU64; 2]; 4]| l[0][1].load(Ordering::Relaxed) as u32;
        let Some(run) = lines.get(lo..hi) else { return };
        for (k, line) in run.iter().enumerate().rev() {
            let exp = expires(line);
            if exp == 0 || exp > now {
                continue;
            }
            // The slot after it (the first slot after the last).
            let j = lo + k;
            let after = if j + 1 == self.n { 0 } else { j + 1 };
            if lines.get(after).map_or(0, expires) != 0 {
                continue;
            }
            self.sweep_slot(j, after, now);
        }
    }

    /// [`Conntrack::sweep`] for slot `j`, which looked expired with the empty slot `after`
    /// after it: empties it, if both still are so under their locks.
    #[cold]
    fn sweep_slot(&self, j: usize, after: usize, now: u32) {
        let (Some(a), Some(b)) = (self.slot(j), self.slot(after)) else { return };
        let Some(sa) = a.try_lock() else { return };
        let exp = a.snap_locked().expires();
        if exp != 0 && exp <= now && j != after {
            if let Some(sb) = b.try_lock() {
                if b.snap_locked().expires() == 0 {
                    self.put(j, a, &Snap { meta: 0, key: [0; 5], verdict: 0 });
                }
                b.unlock(sb);
            }
        }
        a.unlock(sa);
    }

    /// Every live entry at `now` (for `ctl show conntrack`), at most `limit`; and how many
    /// live entries there are in all.
    pub fn entries(&self, now: u32, limit: usize) -> (Vec<Entry>, usize) {
        let mut out = Vec::new();
        let mut n = 0;
        for snap in (0..self.n).filter_map(|j| self.slot(j)).map(|s| s.read()).filter(|s| s.expires() > now) {
            n += 1;
            if out.len() < limit {
                out.push(Entry {
                    key: words_key(&snap.key),
                    state: snap.state(),
                    blocked: snap.blocked(),
                    ttl: snap.expires() - now,
                });
            }
        }
        (out, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey { src: 0x0a00_0001, dst: 0x0a00_0002, sport, dport, proto, v4: true, vlan: 0 }
    }

    /// A TCP connection through its states, found from both directions; RST closes it, and
    /// it expires after the close timeout.
    #[test]
    fn tcp_states_and_aging() {
        let ct = Conntrack::new(1024).unwrap();
        let k = key(40000, 80, PROTO_TCP);
        ct.commit(&k, TCP_SYN, 100).unwrap();
        assert_eq!(ct.lookup(&k, 100).map(|f| (f.dir, f.state)), Some((Dir::Original, CtState::SynSent)));
        let r = k.reversed();
        assert_eq!(ct.lookup(&r, 100).map(|f| f.dir), Some(Dir::Reply));
        ct.reply(&r, TCP_SYN | TCP_ACK, 101);
        assert_eq!(ct.lookup(&k, 101).map(|f| f.state), Some(CtState::Established));
        ct.commit(&k, TCP_ACK, 102).unwrap();
        ct.reply(&r, TCP_RST, 103);
        assert_eq!(ct.lookup(&k, 103).map(|f| f.state), Some(CtState::Closed));
        assert!(ct.lookup(&k, 103 + 10).is_none(), "closed: gone after 10 s");
        assert!(ct.lookup(&key(40001, 80, PROTO_TCP), 100).is_none());
    }

    #[test]
    fn udp_timeouts_and_block() {
        let ct = Conntrack::new(1024).unwrap();
        let k = key(5000, 53, PROTO_UDP);
        ct.commit(&k, 0, 10).unwrap();
        assert!(ct.lookup(&k, 39).is_some() && ct.lookup(&k, 40).is_none(), "unreplied: 30 s");
        ct.commit(&k, 0, 50).unwrap();
        ct.reply(&k.reversed(), 0, 51);
        assert_eq!(ct.lookup(&k, 170).map(|f| f.state), Some(CtState::Replied), "replied: 120 s");
        ct.block(&k, 52);
        assert_eq!(ct.lookup(&k.reversed(), 53).map(|f| f.blocked), Some(true));
        ct.commit(&k, 0, 54).unwrap();
        assert_eq!(ct.lookup(&k.reversed(), 55).map(|f| f.blocked), Some(false), "allowed again");
    }

    /// A full table refuses new connections (the caller fails closed) and takes them again
    /// once entries have expired.
    #[test]
    fn full_table_refuses_then_ages() {
        let ct = Conntrack::new(64).unwrap();
        let mut refused = 0;
        for p in 0..10_000u16 {
            if ct.commit(&key(p, 53, PROTO_UDP), 0, 1).is_err() {
                refused += 1;
            }
        }
        let (_, live) = ct.entries(1, 0);
        assert!(refused > 0 && live >= 64 && live <= ct.slots(), "live {live}, refused {refused}");
        assert!(ct.commit(&key(60000, 53, PROTO_UDP), 0, 1 + 30).is_ok(), "expired slots are reused");
    }

    /// Directory edge cases the model test's 30 fixed keys do not reach, each answered by the
    /// fast path and the burst lookup as the general lookups answer: a tag-0 key (lane 1) next
    /// to a tag-1 key, both orders; a key behind a tag-0 key; an expired entry of the same tag
    /// before the live one; a steady slot of another key of the same tag first; probes that
    /// wrap (every key's home is the last slot); tables of 2 and 33 slots; a copy.
    #[test]
    fn directory_edge_cases_answer_as_the_slots_do() {
        let k = |s: u16, d: u16| FlowKey {
            src: 1,
            dst: 2,
            sport: s,
            dport: d,
            proto: PROTO_UDP,
            v4: true,
            vlan: 0,
        };
        for cap in [1usize, 22] {
            let ct0 = Conntrack::new(cap).unwrap();
            let n = ct0.slots();
            let home = n - 1;
            let find = |t: Option<u64>, not: Option<u64>, skip: &[FlowKey]| -> FlowKey {
                for s in 1..=u16::MAX {
                    for d in 1..=u16::MAX {
                        let x = k(s, d);
                        let h = hash(&x);
                        if ct0.home(h) == home
                            && t.is_none_or(|t| tag(h) == t)
                            && not.is_none_or(|t| tag(h) != t && tag(h) > 1)
                            && !skip.iter().any(|y| *y == x || *y == x.reversed())
                        {
                            return x;
                        }
                    }
                }
                unreachable!()
            };
            let t0 = find(Some(0), None, &[]);
            let t1 = find(Some(1), None, &[]);
            let c = find(None, Some(0), &[]);
            let tc = tag(hash(&c));
            let c2 = find(Some(tc), None, &[c]);
            let check = |ct: &Conntrack, keys: &[FlowKey], now: u32, why: &str| {
                assert_eq!(dir_mismatches(ct), [], "{why}");
                for x in keys.iter().flat_map(|x| [*x, x.reversed()]) {
                    let want = ct.lookup_fast(&PackedKey::new(&x), hash(&x), 0, now);
                    assert_ne!(want, Fast::Slow, "{why}: {x:?} tracked and steady");
                    let view = ct.fast_view();
                    let mut p = view.probe(PackedKey::new(&x), 0, &Steady::at(now));
                    view.locate(&mut p);
                    assert_eq!(view.lookup(&p, now), want, "{why}: {x:?} fast path");
                    let mut out = [None; 2];
                    ct.lookup_burst(&[c, x], now, &mut out);
                    assert_eq!(out[1], ct.lookup(&x, now), "{why}: {x:?} lookup_burst");
                    assert!(out[1].is_some(), "{why}: {x:?} lookup_burst found");
                }
            };
            let steady = |ct: &Conntrack, x: &FlowKey, now: u32| {
                assert!(ct.commit(x, 0, now).is_ok());
                ct.reply(&x.reversed(), 0, now);
            };
            // Tag 0 at home, then tag 1 (wrapping to slot 0); and the other order.
            for (a, b, why) in [(t0, t1, "tag 0 then 1"), (t1, t0, "tag 1 then 0"), (t0, c, "tag 0 then c")] {
                let ct = Conntrack::new(cap).unwrap();
                steady(&ct, &a, 1);
                steady(&ct, &b, 1);
                check(&ct, &[a, b], 1, &format!("{n} slots, {why}"));
                // The copy has the same directory.
                check(&ct.copy().unwrap(), &[a, b], 1, &format!("{n} slots, {why}, copy"));
            }
            // Same tag: c then c2, both steady (a steady slot of another key first).
            let ct = Conntrack::new(cap).unwrap();
            steady(&ct, &c, 1);
            steady(&ct, &c2, 1);
            check(&ct, &[c, c2], 1, &format!("{n} slots, same tag steady"));
            // c expired before c2, which is live (c committed at 1, c2 later).
            let ct = Conntrack::new(cap).unwrap();
            let un = timeout(PROTO_UDP, CtState::Unreplied);
            assert!(ct.commit(&c, 0, 1).is_ok());
            assert!(ct.commit(&c2, 0, un).is_ok());
            let now = 1 + un;
            ct.reply(&c2.reversed(), 0, now);
            assert!(ct.lookup(&c, now).is_none());
            check(&ct, &[c2], now, &format!("{n} slots, same tag expired first"));
        }
    }

    /// Steady connections are answered by the directory's short road
    /// ([`FastView::lookup_steady`] after [`FastView::locate`]), not handed to the general
    /// lookup: every key whose directory value no other key of the table has, both directions.
    #[test]
    fn steady_entries_are_answered_through_the_directory() {
        let ct = Conntrack::new(1000).unwrap();
        let keys: Vec<FlowKey> = (0..1000u16).map(|p| key(10_000 + p, 53, PROTO_UDP)).collect();
        for k in &keys {
            ct.commit(k, 0, 5).unwrap();
            ct.reply(&k.reversed(), 0, 5);
        }
        let dv = |k: &FlowKey| dir_tag(tag(hash(k)));
        let mut count = std::collections::HashMap::new();
        for k in &keys {
            *count.entry(dv(k)).or_insert(0) += 1;
        }
        let (view, steady) = (ct.fast_view(), Steady::at(5));
        let mut answered = 0;
        for k in keys.iter().filter(|k| count[&dv(k)] == 1) {
            for (x, want) in [(*k, Fast::Original(0)), (k.reversed(), Fast::Reply)] {
                let mut p = view.probe(PackedKey::new(&x), 0, &steady);
                view.locate(&mut p);
                assert_eq!(view.lookup_steady(&p), Some(want), "{x:?}");
                answered += 1;
            }
        }
        assert!(answered > 1900, "{answered} of 2000 lookups had a directory value of their own");
    }

    /// The slots whose directory lane is not their word 1's [`dir_value`]: (slot, lane, word 1).
    fn dir_mismatches(ct: &Conntrack) -> Vec<(usize, u64, u64)> {
        (0..ct.slots())
            .filter_map(|j| {
                let meta = ct.slot(j)?.read().meta;
                let (w, shift) = dir_lane(ct.dir.pairs().as_flattened(), j)?;
                let lane = (w.load(Ordering::Relaxed) >> shift) & 0xffff;
                (lane != dir_value(meta)).then_some((j, lane, meta))
            })
            .collect()
    }

    /// The slots that hold anything (live or expired, not yet emptied).
    fn occupied(ct: &Conntrack) -> usize {
        (0..ct.slots()).filter_map(|j| ct.slot(j)).filter(|s| s.read().expires() != 0).count()
    }

    /// The sweep empties expired slots and leaves live ones; it looks at one table's worth of
    /// slots a second of the clock, all calls together, and no more.
    #[test]
    fn sweep_empties_expired_slots_once_a_second() {
        let ct = Conntrack::new(1000).unwrap();
        let len = ct.slots();
        let udp_new = timeout(PROTO_UDP, CtState::Unreplied);
        for p in 0..300u16 {
            ct.commit(&key(p, 53, PROTO_UDP), 0, 10).unwrap();
        }
        // A second before the first 300 expire (so that none of their slots is taken again).
        for p in 300..400u16 {
            ct.commit(&key(p, 53, PROTO_UDP), 0, 9 + udp_new).unwrap();
        }
        assert_eq!(occupied(&ct), 400);
        // At 10 + udp_new the first 300 have expired, the last 100 have not.
        let now = 10 + udp_new;
        let pass = |now| {
            for _ in 0..len.div_ceil(16) {
                ct.sweep(now, 16);
            }
        };
        pass(now);
        assert_eq!(ct.sweep.at.load(Ordering::Relaxed), len, "one pass");
        // The second's allowance is spent: more calls look at nothing.
        pass(now);
        assert_eq!(ct.sweep.at.load(Ordering::Relaxed), len, "no second pass in the same second");
        // The next second has its own.
        pass(now + 1);
        assert_eq!(ct.sweep.at.load(Ordering::Relaxed), 2 * len);
        // What is left: the live 100, found as before, and expired slots only where emptying
        // one would cut a probe (the slot after it holds something).
        assert_eq!(ct.entries(now + 1, 0).1, 100);
        assert!((300..400).all(|p| ct.lookup(&key(p, 53, PROTO_UDP), now + 1).is_some()));
        let held = |j: usize| ct.slot(j % len).is_some_and(|s| s.read().expires() != 0);
        let expired = |j: usize| ct.slot(j).is_some_and(|s| (1..=now + 1).contains(&s.read().expires()));
        let left = (0..len).filter(|&j| expired(j)).count();
        assert!((0..len).filter(|&j| expired(j)).all(|j| held(j + 1)), "an expired slot before an empty one");
        assert_eq!(occupied(&ct), 100 + left);
        assert!(left < 100, "{left} of 300 expired slots left");
        // The directory followed every fill and every emptied slot, and a copy has its own.
        assert_eq!(dir_mismatches(&ct), []);
        assert_eq!(dir_mismatches(&ct.copy().unwrap()), []);
    }

    /// Workers whose clocks are a second apart commit and sweep at once: a commit passing over
    /// a slot that expires at the later second must not lose its entry to a sweep that empties
    /// that slot before the entry is written after it (every committed key is found after).
    #[test]
    fn commits_survive_sweeps_of_a_clock_a_second_ahead() {
        let udp_new = timeout(PROTO_UDP, CtState::Unreplied);
        for round in 0..20u16 {
            let ct = Conntrack::new(2000).unwrap();
            // Entries that expire at s + 1 = 10 + udp_new, half the table's slots.
            for p in 0..1400u16 {
                let _ = ct.commit(&key(p, 1, PROTO_UDP), 0, 10);
            }
            let s = 9 + udp_new;
            let mine = |t: u16| (0..400u16).map(move |i| key(10_000 + t * 1000 + i, 2 + round, PROTO_UDP));
            std::thread::scope(|sc| {
                for t in 0..2u16 {
                    let ct = &ct;
                    sc.spawn(move || {
                        for k in mine(t) {
                            ct.commit(&k, 0, s).unwrap();
                        }
                    });
                }
                let ct = &ct;
                sc.spawn(move || {
                    for _ in 0..2000 {
                        ct.sweep(s + 1, 16);
                        ct.sweep.quota.store(u64::MAX, Ordering::Relaxed);
                    }
                });
            });
            for t in 0..2u16 {
                let lost = mine(t).filter(|k| ct.lookup(k, s).is_none()).count();
                assert_eq!(lost, 0, "round {round}: {lost} committed keys not found");
            }
            // Writers of neighbouring slots, whose lanes share a word, left each other's alone.
            assert_eq!(dir_mismatches(&ct), [], "round {round}");
        }
    }

    /// What the model keeps per connection (keyed by its original direction).
    #[derive(Debug, Clone, Copy)]
    struct ModelEntry {
        state: CtState,
        blocked: bool,
        expires: u32,
        verdict: u64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Commit(usize, u8, u64),
        Track(usize, u8),
        Reply(usize, u8),
        Block(usize),
        Remember(usize, u64),
        /// [`Conntrack::turn_round`].
        TurnRound(usize),
        Lookup(usize),
        /// The fast path's two stages for one packet ([`FastView::probe`] and
        /// [`FastView::lookup`]).
        Fast(usize, u8),
        Advance(u32),
        Sweep(usize),
    }

    /// 30 keys (fewer connections than the table's 33 slots, so a commit always finds room) over
    /// few addresses and ports, so that some are each other's reverse.
    fn pool_key(i: usize) -> FlowKey {
        // Keys 24-29 are keys 18-23 in another VLAN: the same addresses and ports, other
        // connections.
        let (i, vlan) = match i % 30 {
            i @ 24.. => (i - 6, 5),
            i => (i, 0),
        };
        FlowKey {
            src: (i % 3) as u128 + 1,
            dst: ((i / 3) % 3) as u128 + 1,
            sport: (i / 9) as u16 % 2 + 1,
            dport: 1 + (i % 2) as u16,
            proto: if i < 18 { PROTO_TCP } else { PROTO_UDP },
            v4: true,
            vlan,
        }
    }

    proptest::proptest! {
        /// The fast path's IPv4 hash, made from the header's words, is the table's hash of the
        /// same key (the general stages insert and look up by `hash_packed`).
        #[test]
        fn hash_v4_is_hash_packed(src: u32, dst: u32, ports: u32, proto: u8, vlan: u16) {
            let fam = PackedKey::v4_family(vlan);
            let key = PackedKey::v4(src, dst, ports, proto, fam);
            proptest::prop_assert_eq!(hash_v4(src, dst, ports, proto, fam), hash_packed(&key));
            proptest::prop_assert_eq!(hash(&key.flow_key()), hash_packed(&key));
        }
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let flags =
            prop_oneof![Just(TCP_SYN), Just(TCP_SYN | TCP_ACK), Just(TCP_ACK), Just(TCP_FIN), Just(TCP_RST)];
        // The fast path also sees segments without SYN, FIN or RST, which leave an established
        // connection as it is.
        let flags2 = prop_oneof![flags.clone(), Just(TCP_ACK | crate::wire::ip::TCP_PSH), Just(0)];
        prop_oneof![
            (0..30usize, flags.clone(), 0..3u64).prop_map(|(k, f, v)| Op::Commit(k, f, v)),
            (0..30usize, flags.clone()).prop_map(|(k, f)| Op::Track(k, f)),
            (0..30usize, flags.clone()).prop_map(|(k, f)| Op::Reply(k, f)),
            (0..30usize).prop_map(Op::Block),
            (0..30usize, 1..3u64).prop_map(|(k, v)| Op::Remember(k, v)),
            (0..30usize).prop_map(Op::TurnRound),
            (0..30usize).prop_map(Op::Lookup),
            (0..30usize, flags2).prop_map(|(k, f)| Op::Fast(k, f)),
            prop_oneof![0..3u32, 8..40u32, Just(200u32)].prop_map(Op::Advance),
            (1..40usize).prop_map(Op::Sweep),
        ]
    }

    /// The model's live entry of `k`'s connection at `now`, and `k`'s direction.
    fn model_find(
        m: &std::collections::HashMap<FlowKey, ModelEntry>,
        k: &FlowKey,
        now: u32,
    ) -> Option<(FlowKey, Dir)> {
        let live = |x: &FlowKey| m.get(x).is_some_and(|e| e.expires > now);
        if live(k) {
            Some((*k, Dir::Original))
        } else if live(&k.reversed()) {
            Some((k.reversed(), Dir::Reply))
        } else {
            None
        }
    }

    proptest::proptest! {
        // 256 cases a run; PROPTEST_CASES=N for a longer hunt.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]
        /// The open-addressed table agrees with a HashMap over random sequences of commits,
        /// tracks, replies, blocks, verdicts, lookups, time passing (expiry) and sweeps, in a
        /// table of 33 slots for 30 keys (long probes, wrap-around, reuse of expired slots).
        #[test]
        fn table_agrees_with_hashmap_model(ops in proptest::collection::vec(op(), 1..200)) {
            let ct = Conntrack::new(22).unwrap();
            assert_eq!(ct.slots(), 33);
            let mut m: std::collections::HashMap<FlowKey, ModelEntry> = std::collections::HashMap::new();
            let mut now = 1u32;
            for op in ops {
                match op {
                    Op::Commit(i, flags, v) => {
                        let k = pool_key(i);
                        let flags = if k.proto == PROTO_TCP { flags } else { 0 };
                        proptest::prop_assert!(ct.commit_verdict(&k, flags, now, v).is_ok());
                        match model_find(&m, &k, now) {
                            Some((ok, dir)) => {
                                let e = m.get_mut(&ok).unwrap();
                                if dir == Dir::Original && k.proto == PROTO_TCP {
                                    e.state = original_tcp_state(flags, Some(e.state));
                                }
                                e.expires = now + timeout(k.proto, e.state);
                                e.blocked = false;
                                if v != 0 && dir == Dir::Original {
                                    e.verdict = v;
                                }
                            }
                            None => {
                                let state = if k.proto == PROTO_TCP { original_tcp_state(flags, None) } else { CtState::Unreplied };
                                m.remove(&k.reversed());
                                m.insert(k, ModelEntry { state, blocked: false, expires: now + timeout(k.proto, state), verdict: v });
                            }
                        }
                    }
                    Op::Track(i, flags) => {
                        let k = pool_key(i);
                        let got = ct.track(&k, flags, now);
                        let want = model_find(&m, &k, now).map(|(ok, dir)| {
                            let e = m.get_mut(&ok).unwrap();
                            let f = Found { dir, state: e.state, blocked: e.blocked, expires: e.expires, verdict: e.verdict };
                            if let Some((st, exp)) = f.next(k.proto, flags, now) {
                                e.state = st;
                                e.expires = exp;
                            }
                            f
                        });
                        proptest::prop_assert_eq!(got, want);
                    }
                    Op::Reply(i, flags) => {
                        let k = pool_key(i);
                        ct.reply(&k, flags, now);
                        if let Some((ok, Dir::Reply)) = model_find(&m, &k, now) {
                            let e = m.get_mut(&ok).unwrap();
                            e.state = reply_state(k.proto, e.state, flags);
                            e.expires = now + timeout(k.proto, e.state);
                        }
                    }
                    Op::Block(i) => {
                        let k = pool_key(i);
                        ct.block(&k, now);
                        if let Some((ok, _)) = model_find(&m, &k, now) {
                            let e = m.get_mut(&ok).unwrap();
                            e.blocked = true;
                            e.verdict = 0;
                        }
                    }
                    Op::TurnRound(i) => {
                        let k = pool_key(i);
                        ct.turn_round(&k, hash(&k), now);
                        if let Some((ok, Dir::Reply)) = model_find(&m, &k, now) {
                            // Keyed in k's direction, blocked, no verdict.
                            let e = ModelEntry {
                                state: CtState::SynSent,
                                blocked: true,
                                expires: now + timeout(PROTO_TCP, CtState::SynSent),
                                verdict: 0,
                            };
                            m.remove(&ok);
                            m.insert(k, e);
                        }
                    }
                    Op::Remember(i, v) => {
                        let k = pool_key(i);
                        ct.remember(&k, now, v);
                        if let Some((ok, Dir::Original)) = model_find(&m, &k, now) {
                            m.get_mut(&ok).unwrap().verdict = v;
                        }
                    }
                    Op::Lookup(i) => {
                        let k = pool_key(i);
                        let want = model_find(&m, &k, now).map(|(ok, dir)| {
                            let e = m[&ok];
                            Found { dir, state: e.state, blocked: e.blocked, expires: e.expires, verdict: e.verdict }
                        });
                        proptest::prop_assert_eq!(ct.lookup(&k, now), want);
                        // The burst lookup (through the directory), the key among others and
                        // its other direction.
                        let burst = [pool_key(i.wrapping_add(1)), k, k.reversed()];
                        let mut out = [None; 3];
                        ct.lookup_burst(&burst, now, &mut out);
                        proptest::prop_assert_eq!(out[0], ct.lookup(&burst[0], now));
                        proptest::prop_assert_eq!(out[1], want);
                        proptest::prop_assert_eq!(out[2], ct.lookup(&burst[2], now));
                    }
                    Op::Fast(i, flags) => {
                        let k = pool_key(i);
                        let flags = if k.proto == PROTO_TCP { flags } else { 0 };
                        let view = ct.fast_view();
                        let mut p = view.probe(PackedKey::new(&k), flags, &Steady::at(now));
                        view.locate(&mut p);
                        let got = view.lookup(&p, now);
                        // lookup_fast's answer: not tracked, blocked or a change of state is
                        // for the general stage (nothing written); otherwise the expiry moves on.
                        let want = match model_find(&m, &k, now) {
                            // Not tracked: `Absent`, or `Slow` where no empty slot ends the
                            // probe (a full table); never an answer of a connection.
                            None if matches!(got, Fast::Absent | Fast::Slow) => got,
                            None => Fast::Absent,
                            Some((ok, dir)) => {
                                let e = m.get_mut(&ok).unwrap();
                                if e.blocked
                                    || moved(dir, k.proto, e.state, flags) != e.state
                                    || reopens(dir, k.proto, e.state, flags)
                                {
                                    Fast::Slow
                                } else {
                                    e.expires = now + timeout(k.proto, e.state);
                                    match dir {
                                        Dir::Reply => Fast::Reply,
                                        Dir::Original => Fast::Original(e.verdict),
                                    }
                                }
                            }
                        };
                        proptest::prop_assert_eq!(got, want);
                    }
                    Op::Advance(dt) => now += dt,
                    Op::Sweep(n) => ct.sweep(now, n),
                }
                // Every directory lane is its slot's.
                let lanes = dir_mismatches(&ct);
                proptest::prop_assert!(lanes.is_empty(), "lanes unlike their slots: {lanes:?}");
                // The live entries are the model's.
                let (entries, live) = ct.entries(now, usize::MAX);
                let mut got: Vec<_> = entries.iter().map(|e| (e.key, e.state, e.blocked, e.ttl)).collect();
                let mut want: Vec<_> = m
                    .iter()
                    .filter(|(_, e)| e.expires > now)
                    .map(|(k, e)| (*k, e.state, e.blocked, e.expires - now))
                    .collect();
                got.sort_by_key(|e| format!("{e:?}"));
                want.sort_by_key(|e| format!("{e:?}"));
                proptest::prop_assert_eq!(live, want.len());
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
