//! Property tests: the MAC table against a plain model,
//! and the pipeline on arbitrary frames (never a panic, every frame accounted for, every
//! buffer returned).

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::HashMap;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::fdb::{FdbHit, LearnOutcome, MacTable};
use switchyard_dataplane::pipeline::{process_burst, TxBatches, Verdict};
use switchyard_dataplane::port::{burst_of, Burst};
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::{Pool, SwitchConfig};
use testkit::frame::{Frame, ETHERTYPE_IPV4};

/// A tag's TCI: the VID mostly one that `pipeline_config` carries (0, the priority tag, 10 or
/// 20), else one next to them, the ends of the range or anything; PCP and DEI now and then.
fn tci_strategy() -> impl Strategy<Value = u16> {
    let vid = prop_oneof![
        6 => prop::sample::select(vec![0u16, 10, 20]),
        1 => prop::sample::select(vec![1u16, 9, 11, 19, 21, 4094, 4095]),
        1 => 0u16..4096,
    ];
    let pcp = prop_oneof![3 => Just(0u16), 1 => 1u16..8];
    (pcp, prop::bool::weighted(0.25), vid)
        .prop_map(|(pcp, dei, vid)| (pcp << 13) | (u16::from(dei) << 12) | vid)
}

/// Frames that are mostly well-formed Ethernet, with random lengths, tags and bytes.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        prop::sample::select(vec![
            [0xffu8; 6],
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            [1, 0x80, 0xc2, 0, 0, 0],
            [1, 0, 0x5e, 0, 0, 1],
            [0; 6],
        ]),
        prop::sample::select(vec![
            [2u8, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 3],
            [1, 2, 3, 4, 5, 6],
            [0; 6],
        ]),
        prop::option::of(tci_strategy()),
        prop::sample::select(vec![0x0800u16, 0x0806, 0x8035, 0x86dd, 0x8100, 0x88a8]),
        prop::collection::vec(any::<u8>(), 0..80),
        0usize..100,
    )
        .prop_map(|(dst, src, tag, et, payload, cut)| {
            let mut f = Vec::new();
            f.extend_from_slice(&dst);
            f.extend_from_slice(&src);
            if let Some(tci) = tag {
                f.extend_from_slice(&[0x81, 0x00]);
                f.extend_from_slice(&tci.to_be_bytes());
            }
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&payload);
            // Sometimes cut the frame anywhere, to hit every short-input path.
            if cut < 20 {
                f.truncate(cut);
            }
            f
        });
    prop_oneof![3 => structured, 1 => prop::collection::vec(any::<u8>(), 0..100)]
}

/// `Again`: the last `Learn` again, in the same second (the next frame of a burst).
#[derive(Debug, Clone)]
enum Op {
    Learn { vlan: u16, mac: u8, port: u16, dt: u32 },
    Again,
    Lookup { vlan: u16, mac: u8 },
    Age,
    Static { vlan: u16, mac: u8, port: u16 },
    Remove { vlan: u16, mac: u8 },
    FlushPort { port: u16 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Keys mostly from a few (so that a MAC is learned again soon, often in the same second),
    // sometimes from thirty (a full table); a MAC mostly learned behind its own port (a
    // refresh), sometimes behind any (a move); the clock mostly standing still, sometimes
    // moving a little, a lot or to either side of the aging time.
    let key = || (prop_oneof![3 => Just(0u16), 1 => 0u16..3], prop_oneof![3 => 0u8..3, 1 => 0u8..10]);
    let port = prop_oneof![3 => Just(None), 1 => (0u16..3).prop_map(Some)];
    let dt = prop_oneof![8 => Just(0u32), 4 => 1u32..3, 2 => 3u32..150, 1 => AGING - 3..AGING + 3];
    prop_oneof![
        6 => (key(), port, dt).prop_map(|((vlan, mac), port, dt)| {
            Op::Learn { vlan, mac, port: port.unwrap_or(u16::from(mac) % 3), dt }
        }),
        3 => Just(Op::Again),
        4 => key().prop_map(|(vlan, mac)| Op::Lookup { vlan, mac }),
        1 => Just(Op::Age),
        1 => (key(), 0u16..3).prop_map(|((vlan, mac), port)| Op::Static { vlan, mac, port }),
        1 => key().prop_map(|(vlan, mac)| Op::Remove { vlan, mac }),
        1 => (0u16..3).prop_map(|port| Op::FlushPort { port }),
    ]
}

/// The documented semantics of `MacTable`, written as plainly as possible.
#[derive(Default)]
struct Model {
    e: HashMap<(u16, u8), (u16, bool, u32)>,
}

const CAP: usize = 8;
const AGING: u32 = 300;
const LIMIT: u32 = 4;

impl Model {
    fn expired(v: &(u16, bool, u32), now: u32) -> bool {
        !v.1 && now - v.2 >= AGING
    }
    fn learned_on(&self, port: u16) -> u32 {
        self.e.values().filter(|v| !v.1 && v.0 == port).count() as u32
    }
    fn learn(&mut self, k: (u16, u8), port: u16, now: u32) -> LearnOutcome {
        match self.e.get(&k).copied() {
            Some((p, true, _)) => {
                if p == port {
                    LearnOutcome::Refreshed
                } else {
                    LearnOutcome::StaticConflict { owner: p }
                }
            }
            Some(v @ (p, false, _)) => {
                let expired = Self::expired(&v, now);
                if p == port {
                    self.e.insert(k, (port, false, now));
                    return if expired { LearnOutcome::Learned } else { LearnOutcome::Refreshed };
                }
                if self.learned_on(port) >= LIMIT {
                    self.e.remove(&k);
                    return LearnOutcome::PortLimit;
                }
                self.e.insert(k, (port, false, now));
                if expired {
                    LearnOutcome::Learned
                } else {
                    LearnOutcome::Moved { from: p }
                }
            }
            None => {
                if self.learned_on(port) >= LIMIT {
                    return LearnOutcome::PortLimit;
                }
                if self.e.len() >= CAP {
                    return LearnOutcome::TableFull;
                }
                self.e.insert(k, (port, false, now));
                LearnOutcome::Learned
            }
        }
    }
    /// The learned entries a static entry may evict from a full table: the least recently
    /// seen ones of the port with the most learned entries (the lowest such port); none when
    /// every entry is static.
    fn eviction_candidates(&self) -> Vec<(u16, u8)> {
        let Some(most) = (0..3).map(|p| self.learned_on(p)).max().filter(|n| *n > 0) else {
            return Vec::new();
        };
        let Some(port) = (0..3).find(|p| self.learned_on(*p) == most) else { return Vec::new() };
        let of = |v: &(u16, bool, u32)| !v.1 && v.0 == port;
        let Some(oldest) = self.e.values().filter(|v| of(v)).map(|v| v.2).min() else { return Vec::new() };
        self.e.iter().filter(|(_, v)| of(v) && v.2 == oldest).map(|(k, _)| *k).collect()
    }
}

fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn mac_table_matches_model(ops in prop::collection::vec(op_strategy(), 1..120)) {
        let t = MacTable::new(CAP, AGING).unwrap();
        let mut m = Model::default();
        let mut now = 1000u32;
        let mut last = None;
        for op in ops {
            let op = match (op, last) {
                (Op::Again, Some((vlan, mac, port))) => Op::Learn { vlan, mac, port, dt: 0 },
                (Op::Again, None) => continue,
                (op, _) => op,
            };
            match op {
                Op::Again => unreachable!("replaced above"),
                Op::Learn { vlan, mac: k, port, dt } => {
                    now += dt;
                    last = Some((vlan, k, port));
                    prop_assert_eq!(t.learn(vlan, mac(k), port, now, LIMIT), m.learn((vlan, k), port, now), "{:?}", op);
                }
                Op::Lookup { vlan, mac: k } => {
                    let want = m.e.get(&(vlan, k)).filter(|v| !Model::expired(v, now)).map(|v| FdbHit { port: v.0, is_static: v.1 });
                    prop_assert_eq!(t.lookup(vlan, mac(k), now), want);
                }
                Op::Age => {
                    let before = m.e.len();
                    m.e.retain(|_, v| !Model::expired(v, now));
                    prop_assert_eq!(t.age(now), before - m.e.len());
                }
                Op::Static { vlan, mac: k, port } => {
                    let exists = m.e.contains_key(&(vlan, k));
                    let r = t.insert_static(vlan, mac(k), port);
                    let victims = m.eviction_candidates();
                    if exists || m.e.len() < CAP {
                        prop_assert!(r.is_ok());
                        m.e.insert((vlan, k), (port, true, 0));
                    } else if !victims.is_empty() {
                        // Full: one of the candidates made room (which one of those seen at
                        // the same second depends on slot order).
                        prop_assert!(r.is_ok());
                        let mut held = std::collections::HashSet::new();
                        t.remove_where(|v, mc, _, _| {
                            held.insert((v, mc));
                            false
                        });
                        let gone: Vec<(u16, u8)> =
                            m.e.keys().filter(|(v, mc)| !held.contains(&(*v, mac(*mc)))).copied().collect();
                        prop_assert_eq!(gone.len(), 1);
                        prop_assert!(victims.contains(&gone[0]), "{:?} not in {:?}", gone, victims);
                        m.e.remove(&gone[0]);
                        m.e.insert((vlan, k), (port, true, 0));
                    } else {
                        prop_assert!(r.is_err());
                    }
                }
                Op::Remove { vlan, mac: k } => {
                    prop_assert_eq!(t.remove(vlan, mac(k)), m.e.remove(&(vlan, k)).is_some());
                }
                Op::FlushPort { port } => {
                    let before = m.e.len();
                    m.e.retain(|_, v| v.0 != port);
                    prop_assert_eq!(t.flush_port(port), before - m.e.len());
                }
            }
            prop_assert_eq!(t.len(), m.e.len());
            prop_assert_eq!(t.statics(), m.e.values().filter(|v| v.1).count());
            for p in 0..3 {
                prop_assert_eq!(t.learned_on(p), m.learned_on(p));
            }
        }
    }
}

fn pipeline_config() -> SwitchConfig {
    let cfg = Config::from_yaml_str(
        r#"
bridges:
- name: br0
  mac_table_size: 4
  ports:
  - {name: acc, tag: 10, allowed_macs: ["02:00:00:00:00:01"], mac_limit: 1}
  - {name: trk, trunks: [0, 10, 20]}
  - {name: nu, vlan_mode: native-untagged, tag: 20}
  - {name: nt, vlan_mode: native-tagged, tag: 10, trunks: [20], static_macs: ["02:00:00:00:00:02"]}
- name: br1
  ports:
  - {name: x}
"#,
    )
    .unwrap();
    SwitchConfig::compile(&cfg, None).unwrap()
}

/// Runs `test` on `cases` values of `strategy` (proptest's runner, failures shrunk and kept in
/// properties.proptest-regressions), for properties that also check something over the
/// whole run afterwards (that the generator reached the paths the property is about).
fn run_cases<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// A frame as it should leave a port that takes VLAN `vlan` tagged (`tag_out`) or untagged:
/// the frame's own tag (classify reads only 0x8100 as one) replaced, removed or pushed, a
/// kept tag's PCP and DEI with it, a pushed one with PCP 0 (the semantics of
/// `egress_rewrite`, written out here).
fn egress_frame(input: &[u8], vlan: u16, tag_out: bool) -> Vec<u8> {
    let tagged = input.len() >= 18 && input[12..14] == [0x81, 0x00];
    let (prio, rest) = if tagged {
        (u16::from_be_bytes([input[14], input[15]]) & 0xf000, &input[16..])
    } else {
        (0, &input[12..])
    };
    let mut out = input[..12].to_vec();
    if tag_out {
        out.extend_from_slice(&[0x81, 0x00]);
        out.extend_from_slice(&(prio | vlan).to_be_bytes());
    }
    out.extend_from_slice(rest);
    out
}

/// What `pipeline_accounts_for_every_frame` saw over its whole run, per frame that came in
/// tagged, and per copy queued (`popped`: tagged in, untagged out; `rewritten`: tagged out
/// with another VID; `pushed`: untagged in, tagged out).
#[derive(Debug, Default)]
struct TagPaths {
    tagged: u64,
    tagged_queued: u64,
    tagged_floods: u64,
    /// Copies that left tagged, with the DEI bit they came in with.
    dei_kept: u64,
    popped: u64,
    rewritten: u64,
    pushed: u64,
}

/// Arbitrary frames on arbitrary ports, with the clock running (now and then past the aging
/// time): no panic; each frame is either dropped under one reason or queued to at least one
/// port, and leaves each port with its tag as that port wants it (kept, rewritten, removed or
/// pushed); drop counters add up; no buffer is lost. Over the run, tagged frames reach egress
/// in every way (popped, rewritten, flooded) and frames are pushed a tag.
#[test]
fn pipeline_accounts_for_every_frame() {
    let seen = std::cell::RefCell::new(TagPaths::default());
    let frames = prop::collection::vec((0u16..5, frame_strategy()), 1..60);
    // Seconds the clock moves between chunks: mostly none or one, now and then past the
    // aging time (300 s), so that entries expire and are learned again.
    let steps = prop::collection::vec(prop_oneof![6 => 0u32..2, 1 => 280u32..320], 1..8);
    run_cases(300, (frames, 1usize..40, steps), |(frames, burst_size, steps)| {
        let mut seen = seen.borrow_mut();
        let sw = pipeline_config();
        let pool = Pool::with_hugepages("prop", 4096, false).unwrap();
        let mut cache = pool.cache();
        let mut tx = TxBatches::new(sw.port_slots());
        let mut traces = Vec::new();
        let mut expected_drops = 0u64;
        let mut now = 7u32;
        for (chunk, step) in frames.chunks(burst_size).zip(steps.iter().cycle()) {
            now += step;
            // One burst per ingress port run, as a worker would receive them.
            for port in 0..5u16 {
                let sent: Vec<&Vec<u8>> = chunk.iter().filter(|(p, _)| *p == port).map(|(_, f)| f).collect();
                if sent.is_empty() {
                    continue;
                }
                let mut burst = burst_of(&mut cache, &sent).unwrap();
                traces.clear();
                process_burst(&sw, port, &mut burst, now, &mut cache, &mut tx, Some(&mut traces));
                prop_assert!(burst.is_empty());
                prop_assert_eq!(traces.len(), sent.len());
                // What each egress port should get, in order.
                let mut want: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
                for (t, f) in traces.iter().zip(&sent) {
                    match t.verdict {
                        Verdict::Drop(_) => {
                            expected_drops += 1;
                            prop_assert!(t.out_ports.is_empty());
                        }
                        Verdict::Unicast(p) => prop_assert_eq!(&t.out_ports, &vec![p]),
                        Verdict::Flood => prop_assert!(!t.out_ports.is_empty()),
                    }
                    prop_assert!(!t.out_ports.contains(&port), "never back out of the ingress port");
                    let tagged = f.len() >= 18 && f[12..14] == [0x81, 0x00];
                    if tagged {
                        seen.tagged += 1;
                        seen.tagged_queued += u64::from(!t.out_ports.is_empty());
                        seen.tagged_floods += u64::from(t.verdict == Verdict::Flood);
                    }
                    for &o in &t.out_ports {
                        let vlan = t.vlan.expect("a queued frame has a VLAN");
                        let tag_out = sw.port(o).unwrap().vlan.egress_tagged(vlan);
                        let vid_in = if tagged { u16::from_be_bytes([f[14], f[15]]) & 0x0fff } else { 0 };
                        seen.popped += u64::from(tagged && !tag_out);
                        seen.rewritten += u64::from(tagged && tag_out && vid_in != vlan);
                        seen.pushed += u64::from(!tagged && tag_out);
                        seen.dei_kept += u64::from(tagged && tag_out && f[14] & 0x10 != 0);
                        want.entry(o).or_default().push(egress_frame(f, vlan, tag_out));
                    }
                }
                let mut got: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
                tx.drain_with(|p, b| {
                    for x in b.drain(..) {
                        got.entry(p).or_default().push(x.data().to_vec());
                        cache.free(x);
                    }
                });
                prop_assert_eq!(got, want);
            }
        }
        let total: u64 = sw.port_ids().map(|p| sw.port(p).unwrap().stats.total_drops()).sum();
        prop_assert_eq!(total, expected_drops);
        let rx: u64 = sw.port_ids().map(|p| sw.port(p).unwrap().stats.rx_packets()).sum();
        prop_assert_eq!(rx as usize, frames.len());
        drop(cache);
        prop_assert_eq!(pool.in_use(), 0);
        Ok(())
    });
    // About 18% of the tagged frames reach egress (the rest: a bad source or destination, a
    // cut, a VLAN the port does not take; with VIDs uniform over 0..4096, none did), with
    // hundreds of each kind of rewrite in 300 cases.
    let s = seen.into_inner();
    assert!(s.tagged_queued * 10 >= s.tagged, "too few tagged frames reached egress: {s:?}");
    for (what, n) in [
        ("popped", s.popped),
        ("rewritten", s.rewritten),
        ("pushed", s.pushed),
        ("tagged floods", s.tagged_floods),
        ("DEI kept", s.dei_kept),
    ] {
        assert!(n >= 30, "only {n} {what}: {s:?}");
    }
}

/// Frames that are mostly what the pipeline's plain path takes (untagged, unicast source and
/// destination), with now and then one that is not (a broadcast, a tag, a bad source, a runt).
/// A plain frame comes as `(Some(d), payload)`: from the ingress port's own host to the host of
/// its `d`th peer (see `peer`).
fn mostly_plain_frame() -> impl Strategy<Value = (Option<u8>, Vec<u8>)> {
    prop_oneof![
        80 => (0u8..40, prop::collection::vec(any::<u8>(), 46..60)).prop_map(|(d, p)| (Some(d), p)),
        1 => frame_strategy().prop_map(|f| (None, f)),
    ]
}

/// The MAC of the host behind port `p` in `plain_path_matches_the_general_stages`.
fn host_mac(p: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0x10, p]
}

/// The trunk (port 3) of `plain_path_matches_the_general_stages`: its host sends in VLAN 10.
const TRUNK: u8 = 3;

/// A port that frames from port `p` are sent to (the `d`th choice, `d` below 40): one in the
/// same bridge and VLAN for the access ports and for x and y, so that most bursts are all
/// known unicast to a port that takes them untagged; now and then (`d` 39) the trunk's host,
/// which the frame reaches tagged. The native-untagged port sends to hosts that are elsewhere
/// (flooded).
fn peer(p: u8, d: u8) -> u8 {
    match p {
        0 | 1 | 2 | 5 if d == 39 => TRUNK,
        0 | 1 | 2 | 5 => [0, 1, 2, 5].into_iter().filter(|&q| q != p).nth(usize::from(d % 3)).unwrap_or(0),
        TRUNK => [0, 1, 2, 5][usize::from(d % 4)],
        6 => 7,
        7 => 6,
        _ => d % 8,
    }
}

#[path = "support/collect.rs"]
mod collect;
use collect::{queues, Sent};

/// Bursts that took the pipeline's plain path on this thread so far; `None` in a build without
/// debug assertions, where the pipeline does not count them.
fn plain_bursts() -> Option<u64> {
    #[cfg(debug_assertions)]
    return Some(switchyard_dataplane::pipeline::plain_bursts_on_this_thread());
    #[cfg(not(debug_assertions))]
    None
}

/// The plain path (untraced bursts of plain frames on ports without a spoof filter or whose
/// MAC spoof filter passes them all, untagged or all tagged with one VLAN, their tags pushed
/// or popped for the ports they go to) and the general stages (a traced run takes them for every burst) do the same: the same frames
/// queued to the same ports in the same order, the same counters, the same MAC table. The
/// untraced runs take the plain path for a good share of their bursts (the pipeline counts
/// them in builds with debug assertions, as the tests are), so that the comparison is not of
/// the general stages with themselves.
#[test]
fn plain_path_matches_the_general_stages() {
    // Untraced bursts, and those of them that took the plain path.
    let (untraced, plain) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    // Bursts of the MAC-filtered port that took the plain path.
    let filtered = std::cell::Cell::new(0u64);
    // Bursts of the trunk (tagged frames) that took the plain path.
    let trunk = std::cell::Cell::new(0u64);
    let bursts = prop::collection::vec((0u16..8, prop::collection::vec(mostly_plain_frame(), 1..64)), 1..60);
    run_cases(300, (bursts, 1usize..10), |(bursts, drain_every)| {
        let yaml = r#"
bridges:
- name: br0
  ports:
  - {name: acc, tag: 10, mac_limit: 3}
  - {name: acc2, tag: 10}
  - {name: acc3, tag: 10}
  - {name: trk, trunks: [0, 10, 20]}
  - {name: nu, vlan_mode: native-untagged, tag: 20}
  - {name: filtered, tag: 10, allowed_macs: ["02:00:00:00:10:05", "02:00:00:10:00:05"]}
- name: br1
  ports:
  - {name: x}
  - {name: y}
"#;
        let (plain_sw, general_sw) = (
            SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap(),
            SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap(),
        );
        let pool = Pool::with_hugepages("plain", 8192, false).unwrap();
        let mut cache = pool.cache();
        let (mut plain_tx, mut general_tx) =
            (TxBatches::new(plain_sw.port_slots()), TxBatches::new(general_sw.port_slots()));
        let mut traces = Vec::new();
        let (plain_out, general_out) = (Sent::default(), Sent::default());
        let queues = |out: &Sent| queues(plain_sw.port_slots(), out);
        let (mut plain_queues, mut general_queues) = (queues(&plain_out), queues(&general_out));
        for (i, (port, frames)) in bursts.iter().enumerate() {
            let now = 1 + i as u32 / 8;
            for (sw, tx, trace) in [(&plain_sw, &mut plain_tx, false), (&general_sw, &mut general_tx, true)] {
                let mut burst = Burst::new();
                for (k, (to, payload)) in frames.iter().enumerate() {
                    let f = match to {
                        // The trunk's host, in VLAN 10, tagged (popped for the access ports).
                        Some(d) if *port == u16::from(TRUNK) => {
                            let (dst, src) = (host_mac(peer(TRUNK, *d)), host_mac(TRUNK));
                            [&dst[..], &src[..], &[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00], payload].concat()
                        }
                        Some(d) => {
                            // One frame in 50 from another port's host: a move, then back
                            // (on the MAC-filtered port, a spoofed source).
                            let p = *port as u8;
                            let src = if (i + k) % 50 == 0 { host_mac((p + 1) % 8) } else { host_mac(p) };
                            // Mostly IPv4; now and then ARP (its sender now and then not
                            // the source) or IPv6 (random: neighbour discovery by chance),
                            // which the MAC spoof filter reads further.
                            let (et, body) = match d % 8 {
                                5 => {
                                    let sha = if d % 16 == 13 { host_mac(7) } else { src };
                                    let arp = [&[0u8, 1, 8, 0, 6, 4, 0, 1][..], &sha[..]].concat();
                                    (
                                        [0x08, 0x06],
                                        [&arp[..], &payload[arp.len().min(payload.len())..]].concat(),
                                    )
                                }
                                6 => ([0x86, 0xdd], payload.clone()),
                                _ => ([0x08, 0x00], payload.clone()),
                            };
                            [&host_mac(peer(p, *d))[..], &src[..], &et[..], &body[..]].concat()
                        }
                        None => payload.clone(),
                    };
                    burst.push(cache.alloc_copy(&f).unwrap());
                }
                traces.clear();
                let before = plain_bursts();
                process_burst(sw, *port, &mut burst, now, &mut cache, tx, trace.then_some(&mut traces));
                let took_plain = plain_bursts() != before;
                if trace {
                    prop_assert!(!took_plain, "a traced burst takes the general stages");
                } else {
                    untraced.set(untraced.get() + 1);
                    plain.set(plain.get() + u64::from(took_plain));
                    if *port == 5 {
                        filtered.set(filtered.get() + u64::from(took_plain));
                    }
                    if *port == u16::from(TRUNK) {
                        trunk.set(trunk.get() + u64::from(took_plain));
                    }
                }
                prop_assert!(burst.is_empty());
            }
            // Batches left full now and then, so that later frames find no room (tx_full);
            // flushed through queues that take everything (tx_packets, tx_bytes counted).
            if i % drain_every == 0 {
                plain_tx.flush(&plain_sw, &mut plain_queues, &mut cache);
                general_tx.flush(&general_sw, &mut general_queues, &mut cache);
            }
        }
        prop_assert_eq!(&*plain_out.lock().unwrap(), &*general_out.lock().unwrap());
        let mut queued = Vec::new();
        for (tx, sw) in [(&mut plain_tx, &plain_sw), (&mut general_tx, &general_sw)] {
            queued.push(sw.port_ids().map(|p| tx.queued(p)).collect::<Vec<_>>());
            // Without queues: what is queued counts as port_down, what found no room as tx_full.
            tx.flush(sw, &mut [], &mut cache);
        }
        prop_assert_eq!(&queued[0], &queued[1]);
        for p in plain_sw.port_ids() {
            prop_assert_eq!(
                plain_sw.port(p).unwrap().stats.snapshot(),
                general_sw.port(p).unwrap().stats.snapshot()
            );
        }
        for (a, b) in plain_sw.bridges.iter().zip(general_sw.bridges.iter()) {
            let sorted = |t: &MacTable| {
                let mut e = t.entries(99);
                e.sort_by_key(|e| (e.vlan, e.mac.0));
                e
            };
            prop_assert_eq!(sorted(&a.table), sorted(&b.table));
        }
        drop(cache);
        prop_assert_eq!(pool.in_use(), 0);
        Ok(())
    });
    let (untraced, plain) = (untraced.get(), plain.get());
    if plain_bursts().is_some() {
        assert!(plain * 4 >= untraced, "only {plain} of {untraced} untraced bursts took the plain path");
        assert!(filtered.get() > 0, "no burst of the MAC-filtered port took the plain path");
        assert!(trunk.get() > 0, "no tagged burst of the trunk took the plain path");
    } else {
        eprintln!("not checked that the plain path ran: a build without debug assertions does not count it");
    }
}

/// A batch that fills up across bursts counts what found no room as `tx_full` on the egress
/// port, and sends (and counts the bytes of) the rest: on the plain path (untraced, a burst all
/// bound for one port) and through the general stages (traced), with the same figures.
#[test]
fn a_full_batch_counts_tx_full_on_the_egress_port() {
    let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: b, tag: 10}\n";
    for traced in [false, true] {
        let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap();
        let pool = Pool::with_hugepages("full", 1024, false).unwrap();
        let mut cache = pool.cache();
        let mut tx = TxBatches::new(sw.port_slots());
        let mut traces = Vec::new();
        let frame = |dst: u8, src: u8| {
            Frame::new([2, 0, 0, 0, 0, dst], [2, 0, 0, 0, 0, src])
                .ethertype(ETHERTYPE_IPV4)
                .pad(60, 0xab)
                .build()
        };
        // b's host speaks first (flooded to a), so that a's frames to it are known unicast.
        let mut burst = Burst::new();
        burst.push(cache.alloc_copy(&frame(1, 2)).unwrap());
        process_burst(&sw, 1, &mut burst, 1, &mut cache, &mut tx, traced.then_some(&mut traces));
        tx.discard(&mut cache);
        // Three bursts of 30 from a to b, no flush between them: 64 fit, 26 do not.
        for _ in 0..3 {
            let mut burst = Burst::new();
            for _ in 0..30 {
                burst.push(cache.alloc_copy(&frame(2, 1)).unwrap());
            }
            process_burst(&sw, 0, &mut burst, 1, &mut cache, &mut tx, traced.then_some(&mut traces));
        }
        assert_eq!(tx.queued(1), 64);
        let sent = Sent::default();
        tx.flush(&sw, &mut queues(sw.port_slots(), &sent), &mut cache);
        let b = sw.port(1).unwrap().stats.snapshot();
        assert_eq!(sent.lock().unwrap().len(), 64, "traced {traced}");
        assert_eq!((b.tx_packets, b.tx_bytes, b.drops["tx_full"]), (64, 64 * 60, 26), "traced {traced}");
        let a = sw.port(0).unwrap().stats.snapshot();
        assert_eq!(
            (a.rx_packets, a.rx_bytes, a.drops.values().sum::<u64>()),
            (90, 90 * 60, 0),
            "traced {traced}"
        );
        drop(cache);
        assert_eq!(pool.in_use(), 0);
    }
}
