//! Connection tracking for the policy stage: which connections were allowed, so that their
//! replies pass both ways (OVN-Kubernetes' `allow-related`).
//!
//! One table per bridge (kept across snapshots while its size stays), shared by the workers:
//! the two directions of a connection arrive on different ports, which different workers may
//! poll, so a per-worker table would miss replies. It is cut into [`SHARDS`] shards, each a
//! fixed array of slots under its own mutex (held for one probe of at most [`MAX_PROBE`]
//! slots); nothing is allocated after creation.
//!
//! Invariants:
//! - An entry is found from either direction (keys are stored in the direction the
//!   connection was opened, and looked up both ways).
//! - Aging: an entry is live until its `expires` (seconds); an expired slot is free for reuse.
//!   Timeouts follow Linux conntrack's defaults (see [`timeout`]).
//! - Full: when no free or expired slot is within [`MAX_PROBE`] of a new key's home, the
//!   connection is not tracked and [`Conntrack::commit`] says so: the caller drops the packet
//!   (fails closed) and counts it.

use crate::wire::ip::{
    FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use std::sync::Mutex;

/// Connections a bridge tracks unless its `conntrack_size` says otherwise.
pub const DEFAULT_CAPACITY: usize = 65536;
/// The largest `conntrack_size`.
pub const MAX_CAPACITY: usize = 1 << 24;
pub const SHARDS: usize = 64;
/// The longest probe from a key's home slot.
pub const MAX_PROBE: usize = 32;

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
pub fn timeout(proto: u8, state: CtState) -> u32 {
    match (proto, state) {
        (PROTO_TCP, CtState::SynSent) => 120,
        (PROTO_TCP, CtState::Established) => 432_000,
        (PROTO_TCP, CtState::Closing) => 120,
        (PROTO_TCP, _) => 10,
        (PROTO_UDP, CtState::Unreplied) => 30,
        (PROTO_UDP, _) => 120,
        (PROTO_ICMP | PROTO_ICMPV6, _) => 30,
        _ => 600,
    }
}

/// The state after a reply-direction packet with TCP flags `flags`.
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

#[derive(Clone, Copy)]
struct Slot {
    /// In the connection's original direction. Unused while `expires` is 0.
    key: FlowKey,
    expires: u32,
    state: CtState,
    blocked: bool,
}

const EMPTY: Slot = Slot {
    key: FlowKey { src: 0, dst: 0, sport: 0, dport: 0, proto: 0, v4: false },
    expires: 0,
    state: CtState::Unreplied,
    blocked: false,
};

struct Shard {
    slots: Box<[Slot]>,
}

/// A bridge's connection table.
pub struct Conntrack {
    shards: Box<[Mutex<Shard>]>,
    /// The address of each shard's slots (which never move), for prefetching without the lock.
    bases: Box<[usize]>,
    per_shard: usize,
    capacity: usize,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conntrack({})", self.capacity)
    }
}

/// The same hash for both directions: the two endpoints combined in order.
fn hash(k: &FlowKey) -> u64 {
    let a = (k.src, k.sport);
    let b = (k.dst, k.dport);
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(k.proto) ^ (u64::from(k.v4) << 8);
    for w in [
        x.0 as u64,
        (x.0 >> 64) as u64,
        y.0 as u64,
        (y.0 >> 64) as u64,
        u64::from(x.1) << 16 | u64::from(y.1),
    ] {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    }
    h
}

impl Conntrack {
    /// A table for `capacity` connections: twice as many slots, spread over the shards, so
    /// that at capacity half the slots are free and probes stay short.
    pub fn new(capacity: usize) -> Conntrack {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let per_shard = (2 * capacity).div_ceil(SHARDS).max(MAX_PROBE);
        let shards: Box<[Mutex<Shard>]> = (0..SHARDS)
            .map(|_| Mutex::new(Shard { slots: vec![EMPTY; per_shard].into_boxed_slice() }))
            .collect();
        Conntrack { bases: Self::bases(&shards), shards, per_shard, capacity }
    }

    fn bases(shards: &[Mutex<Shard>]) -> Box<[usize]> {
        shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).slots.as_ptr() as usize).collect()
    }

    /// Brings the home slot of `k`'s connection towards the cache (for a burst, before its
    /// lookups, so that their cache misses overlap).
    #[inline]
    pub fn prefetch(&self, k: &FlowKey) {
        let (s, home) = self.home(hash(k));
        if let Some(b) = self.bases.get(s) {
            crate::cpu::prefetch_addr(b + home * std::mem::size_of::<Slot>());
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy of the table (for `ctl trace`, which must not change the running one).
    pub fn copy(&self) -> Conntrack {
        let shards = self
            .shards
            .iter()
            .map(|sh| {
                let g = sh.lock().unwrap_or_else(|e| e.into_inner());
                Mutex::new(Shard { slots: g.slots.clone() })
            })
            .collect::<Box<[_]>>();
        Conntrack { bases: Self::bases(&shards), shards, per_shard: self.per_shard, capacity: self.capacity }
    }

    /// The slots in all (the most entries it can hold).
    pub fn slots(&self) -> usize {
        SHARDS * self.per_shard
    }

    /// The table's memory in bytes.
    pub fn memory(&self) -> usize {
        SHARDS * self.per_shard * std::mem::size_of::<Slot>()
    }

    fn home(&self, h: u64) -> (usize, usize) {
        let shard = (h >> 58) as usize % SHARDS;
        let slot = ((u128::from(h & ((1 << 58) - 1)) * self.per_shard as u128) >> 58) as usize;
        (shard, slot)
    }

    fn with<R>(&self, k: &FlowKey, f: impl FnOnce(&mut [Slot], usize) -> R) -> R {
        let (s, home) = self.home(hash(k));
        // A worker that panicked while holding the lock left the slots consistent (each
        // write is one slot assignment): keep going.
        let mut g = self.shards[s].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g.slots, home)
    }

    /// Finds the live entry of `k` (either direction) at `now`, by its slot index.
    fn find(slots: &[Slot], home: usize, k: &FlowKey, now: u32) -> Option<(usize, Dir)> {
        let r = k.reversed();
        for i in 0..MAX_PROBE {
            let j = (home + i) % slots.len();
            let s = &slots[j];
            if s.expires == 0 {
                return None;
            }
            if s.expires > now {
                if s.key == *k {
                    return Some((j, Dir::Original));
                }
                if s.key == r {
                    return Some((j, Dir::Reply));
                }
            }
        }
        None
    }

    /// The live entry of the connection `k` belongs to, at `now`.
    pub fn lookup(&self, k: &FlowKey, now: u32) -> Option<Found> {
        self.with(k, |slots, home| {
            Self::find(slots, home, k, now).map(|(j, dir)| Found {
                dir,
                state: slots[j].state,
                blocked: slots[j].blocked,
            })
        })
    }

    /// A reply-direction packet with TCP flags `flags` passed: moves the state on.
    pub fn reply(&self, k: &FlowKey, flags: u8, now: u32) {
        self.with(k, |slots, home| {
            if let Some((j, Dir::Reply)) = Self::find(slots, home, k, now) {
                let s = &mut slots[j];
                s.state = reply_state(k.proto, s.state, flags);
                s.expires = now.saturating_add(timeout(k.proto, s.state)).max(1);
            }
        })
    }

    /// One probe for a packet (TCP flags `flags`) of a tracked connection: the entry as found
    /// (`None`: not tracked), moved on as [`Conntrack::reply`] or [`Conntrack::commit`] would
    /// (for its direction) unless it is blocked.
    pub fn track(&self, k: &FlowKey, flags: u8, now: u32) -> Option<Found> {
        self.with(k, |slots, home| {
            let (j, dir) = Self::find(slots, home, k, now)?;
            let s = &mut slots[j];
            let found = Found { dir, state: s.state, blocked: s.blocked };
            if !s.blocked {
                s.state = match dir {
                    Dir::Reply => reply_state(k.proto, s.state, flags),
                    Dir::Original if k.proto == PROTO_TCP => original_tcp_state(flags, Some(s.state)),
                    Dir::Original => s.state,
                };
                s.expires = now.saturating_add(timeout(k.proto, s.state)).max(1);
            }
            Some(found)
        })
    }

    /// An original-direction packet (`flags`: its TCP flags) was allowed: creates the entry
    /// or moves it on (and clears `blocked`). `Err(())`: the table is full, not tracked.
    #[allow(clippy::result_unit_err)]
    pub fn commit(&self, k: &FlowKey, flags: u8, now: u32) -> Result<(), ()> {
        self.with(k, |slots, home| {
            let tcp_state = |prev| original_tcp_state(flags, prev);
            if let Some((j, dir)) = Self::find(slots, home, k, now) {
                let s = &mut slots[j];
                s.blocked = false;
                if dir == Dir::Original && k.proto == PROTO_TCP {
                    s.state = tcp_state(Some(s.state));
                }
                s.expires = now.saturating_add(timeout(k.proto, s.state)).max(1);
                return Ok(());
            }
            let state = if k.proto == PROTO_TCP { tcp_state(None) } else { CtState::Unreplied };
            for i in 0..MAX_PROBE {
                let j = (home + i) % slots.len();
                if slots[j].expires <= now {
                    slots[j] = Slot {
                        key: *k,
                        expires: now.saturating_add(timeout(k.proto, state)).max(1),
                        state,
                        blocked: false,
                    };
                    return Ok(());
                }
            }
            Err(())
        })
    }

    /// The original direction of `k`'s connection was denied: its replies stop passing.
    pub fn block(&self, k: &FlowKey, now: u32) {
        self.with(k, |slots, home| {
            if let Some((j, _)) = Self::find(slots, home, k, now) {
                slots[j].blocked = true;
            }
        })
    }

    /// Every live entry at `now` (for `ctl show conntrack`), at most `limit`; and how many
    /// live entries there are in all.
    pub fn entries(&self, now: u32, limit: usize) -> (Vec<Entry>, usize) {
        let mut out = Vec::new();
        let mut n = 0;
        for sh in self.shards.iter() {
            let g = sh.lock().unwrap_or_else(|e| e.into_inner());
            for s in g.slots.iter().filter(|s| s.expires > now) {
                n += 1;
                if out.len() < limit {
                    out.push(Entry { key: s.key, state: s.state, blocked: s.blocked, ttl: s.expires - now });
                }
            }
        }
        (out, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey { src: 0x0a00_0001, dst: 0x0a00_0002, sport, dport, proto, v4: true }
    }

    /// A TCP connection through its states, found from both directions; RST closes it, and
    /// it expires after the close timeout.
    #[test]
    fn tcp_states_and_aging() {
        let ct = Conntrack::new(1024);
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
        let ct = Conntrack::new(1024);
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
        let ct = Conntrack::new(64);
        let mut refused = 0;
        for p in 0..10_000u16 {
            if ct.commit(&key(p, 53, PROTO_UDP), 0, 1).is_err() {
                refused += 1;
            }
        }
        let (_, live) = ct.entries(1, 0);
        assert!(refused > 0 && live >= 64 && live <= SHARDS * ct.per_shard, "live {live}, refused {refused}");
        assert!(ct.commit(&key(60000, 53, PROTO_UDP), 0, 1 + 30).is_ok(), "expired slots are reused");
    }
}
