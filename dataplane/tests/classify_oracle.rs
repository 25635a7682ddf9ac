//! The pipeline's own header reads (`classify`, and the plain path's `plain_probes`) against
//! etherparse: arbitrary frames, truncated ones and 802.1Q, 802.1ad, double and priority tags
//! with every PCP and DEI value among them, go through the real `process_burst`, traced and
//! untraced, on ports of every VLAN mode. What etherparse reads from each frame, together with
//! the ports' VLAN rules written out here from the table of docs/semantics.md (not taken from the
//! dataplane's `VlanPolicy`), says what must happen to it:
//!
//! - the drop reason of the ingress checks, in their order: runt (no Ethernet header), truncated
//!   802.1Q tag, multicast or zero source, reserved destination (01:80:C2:00:00:0X), VLAN not
//!   admitted; only TPID 0x8100 is a tag (an 802.1ad or 0x9100 outer header is payload);
//! - otherwise the VLAN, and, since no destination is ever learned here, a flood to every
//!   other port carrying that VLAN (or `no_egress_port`), each copy tagged or not as the
//!   egress port wants, its PCP and DEI kept from the incoming tag (0 when none came).
//!
//! Checked: each frame's trace (verdict, VLAN, ports), every byte of what each port is given,
//! and the ingress port's counters (per drop reason, received, flooded), on both paths.

use etherparse::err::Layer;
use etherparse::{EtherType, LaxSlicedPacket, LinkSlice, SingleVlanHeader, VlanSlice};
use proptest::prelude::*;
use std::collections::BTreeMap;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, FrameTrace, TxBatches, Verdict};
use switchyard_dataplane::port::burst_of;
use switchyard_dataplane::switch::{DropReason, PortId};
use switchyard_dataplane::{Pool, SwitchConfig};

const BRIDGE: &str = r#"
bridges:
- name: br0
  ports:
  - {name: a10, tag: 10}
  - {name: a20, vlan_mode: access, tag: 20}
  - {name: t, trunks: [0, 10, 20]}
  - {name: tall}
  - {name: nu, vlan_mode: native-untagged, tag: 20, trunks: [10, 30]}
  - {name: nt, vlan_mode: native-tagged, tag: 10, trunks: [20, 4094]}
"#;

/// A port's VLAN mode as the table of docs/semantics.md defines it; `None` trunks: every VLAN.
#[derive(Clone, Copy)]
enum Mode {
    Access(u16),
    Trunk(Option<&'static [u16]>),
    NativeTagged(u16, &'static [u16]),
    NativeUntagged(u16, &'static [u16]),
}

/// `BRIDGE`'s ports, in its order (the flood order).
const PORTS: &[(&str, Mode)] = &[
    ("a10", Mode::Access(10)),
    ("a20", Mode::Access(20)),
    ("t", Mode::Trunk(Some(&[0, 10, 20]))),
    ("tall", Mode::Trunk(None)),
    ("nu", Mode::NativeUntagged(20, &[10, 30])),
    ("nt", Mode::NativeTagged(10, &[20, 4094])),
];

impl Mode {
    /// VID 4095 is reserved: never trunked, whatever the list says.
    fn trunked(list: Option<&[u16]>, v: u16) -> bool {
        v != 4095 && list.is_none_or(|l| l.contains(&v))
    }

    /// The VLAN a frame with this VID (0: untagged or a priority tag) enters, if any.
    fn ingress(self, vid: u16) -> Option<u16> {
        match self {
            Mode::Access(t) => (vid == 0).then_some(t),
            Mode::Trunk(l) => Mode::trunked(l, vid).then_some(vid),
            Mode::NativeTagged(t, l) | Mode::NativeUntagged(t, l) => match vid {
                0 => Some(t),
                v if v == t || Mode::trunked(Some(l), v) => Some(v),
                _ => None,
            },
        }
    }

    fn carries(self, v: u16) -> bool {
        match self {
            Mode::Access(t) => v == t,
            Mode::Trunk(l) => Mode::trunked(l, v),
            Mode::NativeTagged(t, l) | Mode::NativeUntagged(t, l) => v == t || Mode::trunked(Some(l), v),
        }
    }

    fn egress_tagged(self, v: u16) -> bool {
        match self {
            Mode::Access(_) => false,
            Mode::Trunk(_) | Mode::NativeTagged(..) => v != 0,
            Mode::NativeUntagged(t, _) => v != 0 && v != t,
        }
    }
}

/// What must happen to one frame received on port `PORTS[in_port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Dropped by the ingress checks (no VLAN assigned).
    Ingress(DropReason),
    /// In VLAN `vlan`, no other port carries it.
    NoEgress { vlan: u16 },
    /// In VLAN `vlan`, flooded: each egress port with the bytes it must get.
    Flood { vlan: u16, out: Vec<(usize, Vec<u8>)> },
}

fn is_reserved(mac: [u8; 6]) -> bool {
    mac[..5] == [0x01, 0x80, 0xc2, 0, 0] && mac[5] <= 0x0f
}

/// The expectation for `frame` on port `in_port`, from etherparse's reading of it.
fn expect(frame: &[u8], in_port: usize) -> Expect {
    let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
        return Expect::Ingress(DropReason::Runt);
    };
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else { panic!("etherparse: no Ethernet II link") };
    let (dst, src) = (eth.destination(), eth.source());
    // Only an outer 0x8100 is an 802.1Q tag; etherparse also reads 0x88a8 and 0x9100 as tags.
    let tag: Option<SingleVlanHeader> = if eth.ether_type() == EtherType::VLAN_TAGGED_FRAME {
        match &p.vlan {
            Some(VlanSlice::SingleVlan(s)) => Some(s.to_header()),
            Some(VlanSlice::DoubleVlan(d)) => Some(d.outer().to_header()),
            None => {
                assert!(matches!(p.stop_err, Some((_, Layer::VlanHeader))), "{:?}", p.stop_err);
                return Expect::Ingress(DropReason::TruncatedVlanTag);
            }
        }
    } else {
        None
    };
    if src[0] & 1 == 1 || src == [0; 6] {
        return Expect::Ingress(DropReason::InvalidSrcMac);
    }
    if is_reserved(dst) {
        return Expect::Ingress(DropReason::ReservedDstMac);
    }
    let vid = tag.as_ref().map_or(0, |t| t.vlan_id.value());
    let Some(vlan) = PORTS[in_port].1.ingress(vid) else {
        return Expect::Ingress(DropReason::VlanNotAllowed);
    };
    // The frame without its tag, and the PCP and DEI bits a tag it leaves with carries.
    let (untagged, pcp, dei) = match &tag {
        Some(t) => ([&frame[..12], &frame[16..]].concat(), t.pcp.value(), t.drop_eligible_indicator),
        None => (frame.to_vec(), 0, false),
    };
    let out: Vec<(usize, Vec<u8>)> = PORTS
        .iter()
        .enumerate()
        .filter(|&(i, (_, mode))| i != in_port && mode.carries(vlan))
        .map(|(i, (_, mode))| {
            if !mode.egress_tagged(vlan) {
                return (i, untagged.clone());
            }
            let tci = (u16::from(pcp) << 13) | (u16::from(dei) << 12) | vlan;
            (i, [&untagged[..12], &[0x81, 0x00], &tci.to_be_bytes()[..], &untagged[12..]].concat())
        })
        .collect();
    if out.is_empty() {
        Expect::NoEgress { vlan }
    } else {
        Expect::Flood { vlan, out }
    }
}

/// Unicast sources and destinations come from two disjoint sets, so that no destination is
/// ever learned and every frame that passes the ingress checks floods.
fn src_strategy() -> impl Strategy<Value = [u8; 6]> {
    prop_oneof![
        8 => (0u8..12).prop_map(|k| [0x02, 0x5c, 0, 0, 0, k]),
        1 => Just([0u8; 6]),
        1 => Just([0xffu8; 6]),
        1 => any::<[u8; 6]>().prop_map(|mut m| { m[0] |= 1; m }),
    ]
}

fn dst_strategy() -> impl Strategy<Value = [u8; 6]> {
    prop_oneof![
        4 => (0u8..12).prop_map(|k| [0x02, 0xd5, 0, 0, 0, k]),
        2 => Just([0xffu8; 6]),
        1 => Just([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
        1 => Just([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
        2 => (0u8..=0x0f).prop_map(|k| [0x01, 0x80, 0xc2, 0, 0, k]),
        1 => prop::sample::select(vec![0x10u8, 0x21, 0xff]).prop_map(|k| [0x01, 0x80, 0xc2, 0, 0, k]),
    ]
}

/// A tag: its TPID (mostly 802.1Q), PCP, DEI and a VID mostly among the VLANs the ports use.
fn tag_strategy() -> impl Strategy<Value = [u8; 4]> {
    let vid = prop_oneof![
        6 => prop::sample::select(vec![0u16, 10, 20, 30, 4094]),
        1 => Just(4095u16),
        1 => 0u16..4096,
    ];
    let tpid = prop_oneof![6 => Just(0x8100u16), 1 => Just(0x88a8u16), 1 => Just(0x9100u16)];
    (tpid, 0u16..8, any::<bool>(), vid).prop_map(|(tpid, pcp, dei, vid)| {
        let tci = (pcp << 13) | (u16::from(dei) << 12) | vid;
        let [a, b] = tpid.to_be_bytes();
        let [c, d] = tci.to_be_bytes();
        [a, b, c, d]
    })
}

/// Ethernet frames with zero to two tags, a payload of some EtherType, now and then cut short
/// anywhere in their first 24 bytes.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        dst_strategy(),
        src_strategy(),
        prop::collection::vec(tag_strategy(), 0..=2),
        prop::sample::select(vec![0x0800u16, 0x86dd, 0x0806, 0x88b5]),
        prop::collection::vec(any::<u8>(), 0..60),
        prop::option::weighted(0.15, 0usize..24),
    )
        .prop_map(|(dst, src, tags, et, payload, cut)| {
            let mut f = [&dst[..], &src[..]].concat();
            tags.iter().for_each(|t| f.extend_from_slice(t));
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&payload);
            if let Some(n) = cut {
                f.truncate(n);
            }
            f
        })
}

/// One switch under test, traced or not.
struct Run {
    sw: SwitchConfig,
    ids: Vec<PortId>,
    traced: bool,
}

/// What one burst did.
struct Seen {
    traces: Vec<FrameTrace>,
    /// What each port (index into `PORTS`) was given, in order.
    out: BTreeMap<usize, Vec<Vec<u8>>>,
    /// The ingress port's counters that moved: drops by reason (name), rx_packets, flooded.
    drops: BTreeMap<&'static str, u64>,
    rx: u64,
    flooded: u64,
}

impl Run {
    fn new(traced: bool) -> Run {
        let sw = SwitchConfig::compile(&Config::from_yaml_str(BRIDGE).unwrap(), None).unwrap();
        let ids = PORTS.iter().map(|(name, _)| sw.by_name[*name]).collect();
        Run { sw, ids, traced }
    }

    fn burst(&self, in_port: usize, frames: &[Vec<u8>], pool: &Pool) -> Seen {
        let st = &self.sw.port(self.ids[in_port]).unwrap().stats;
        let before = st.snapshot();
        let mut cache = pool.cache();
        let mut tx = TxBatches::new(self.sw.port_slots());
        let mut burst = burst_of(&mut cache, frames).unwrap();
        let mut traces = Vec::new();
        let trace = self.traced.then_some(&mut traces);
        process_burst(&self.sw, self.ids[in_port], &mut burst, 5, &mut cache, &mut tx, trace);
        assert!(burst.is_empty());
        let mut out: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        tx.drain_with(|id, b| {
            let i = self.ids.iter().position(|&x| x == id).expect("a port of the bridge");
            for buf in b.drain(..) {
                out.entry(i).or_default().push(buf.data().to_vec());
                cache.free(buf);
            }
        });
        let after = st.snapshot();
        let drops =
            after.drops.iter().map(|(&r, &n)| (r, n - before.drops[r])).filter(|&(_, n)| n != 0).collect();
        Seen {
            traces,
            out,
            drops,
            rx: after.rx_packets - before.rx_packets,
            flooded: after.flooded - before.flooded,
        }
    }
}

/// Checks one burst's observations against the expectations of its frames.
fn check(seen: &Seen, exp: &[Expect], traced: bool, ids: &[PortId]) -> Result<(), TestCaseError> {
    let mut want_out: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    let mut want_drops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut want_flooded = 0;
    for e in exp {
        match e {
            Expect::Ingress(r) => *want_drops.entry(r.name()).or_default() += 1,
            Expect::NoEgress { .. } => *want_drops.entry(DropReason::NoEgressPort.name()).or_default() += 1,
            Expect::Flood { out, .. } => {
                want_flooded += 1;
                for (p, bytes) in out {
                    want_out.entry(*p).or_default().push(bytes.clone());
                }
            }
        }
    }
    if traced {
        prop_assert_eq!(seen.traces.len(), exp.len());
        for (i, (t, e)) in seen.traces.iter().zip(exp).enumerate() {
            let (verdict, vlan, outs) = match e {
                Expect::Ingress(r) => (Verdict::Drop(*r), None, vec![]),
                Expect::NoEgress { vlan } => (Verdict::Drop(DropReason::NoEgressPort), Some(*vlan), vec![]),
                Expect::Flood { vlan, out } => {
                    (Verdict::Flood, Some(*vlan), out.iter().map(|(p, _)| ids[*p]).collect())
                }
            };
            prop_assert_eq!(t.verdict, verdict, "frame {} of the burst", i);
            prop_assert_eq!(t.vlan, vlan, "frame {} of the burst", i);
            prop_assert_eq!(&t.out_ports, &outs, "frame {} of the burst", i);
        }
    }
    prop_assert_eq!(&seen.out, &want_out);
    prop_assert_eq!(&seen.drops, &want_drops);
    prop_assert_eq!(seen.rx, exp.len() as u64);
    prop_assert_eq!(seen.flooded, want_flooded);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Bursts of one to eight frames on random ports of a fresh bridge, traced on one copy of
    /// it and untraced (where untagged unicast bursts take the plain path) on the other.
    #[test]
    fn classification_matches_etherparse(
        bursts in prop::collection::vec((0..PORTS.len(), prop::collection::vec(frame_strategy(), 1..=8)), 1..12),
    ) {
        let pool = Pool::with_hugepages("classify", 1024, false).unwrap();
        let runs = [Run::new(true), Run::new(false)];
        for (in_port, frames) in &bursts {
            let exp: Vec<Expect> = frames.iter().map(|f| expect(f, *in_port)).collect();
            for run in &runs {
                let seen = run.burst(*in_port, frames, &pool);
                check(&seen, &exp, run.traced, &run.ids)?;
            }
        }
        prop_assert_eq!(pool.in_use(), 0);
    }
}

/// The strategies reach what they are for: in 4000 frames drawn as the property draws them,
/// on each port in turn, every ingress drop reason, VLAN 0 and tagged VLANs admitted, floods
/// that pop, push and keep tags (with DEI and PCP set), and 802.1ad frames taken as untagged.
#[test]
fn the_frames_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut reasons = BTreeMap::new();
    let (mut vlan0, mut tagged_in, mut popped, mut pushed, mut kept_dei_pcp, mut qinq_in) =
        (0, 0, 0, 0, 0, 0);
    for n in 0..4000 {
        let f = frame_strategy().new_tree(&mut runner).unwrap().current();
        let in_port = n % PORTS.len();
        let e = expect(&f, in_port);
        match &e {
            Expect::Ingress(r) => *reasons.entry(r.name()).or_insert(0) += 1,
            Expect::NoEgress { .. } => *reasons.entry(DropReason::NoEgressPort.name()).or_insert(0) += 1,
            Expect::Flood { vlan, out } => {
                let tagged = f[12..14] == [0x81, 0x00];
                vlan0 += usize::from(*vlan == 0);
                tagged_in += usize::from(tagged && f[14..16] != [0, 0]);
                qinq_in += usize::from(f[12..14] == [0x88, 0xa8]);
                for (_, o) in out {
                    let tagged_out = o.len() >= 16 && o[12..14] == [0x81, 0x00];
                    popped += usize::from(tagged && !tagged_out);
                    pushed += usize::from(!tagged && tagged_out);
                    kept_dei_pcp +=
                        usize::from(tagged && tagged_out && f[14] & 0xe0 != 0 && f[14] & 0x10 != 0);
                }
            }
        }
    }
    eprintln!(
        "{reasons:?}, VLAN 0 {vlan0}, tagged in {tagged_in}, popped {popped}, pushed {pushed}, \
         kept with DEI and PCP {kept_dei_pcp}, 802.1ad in {qinq_in}"
    );
    let all = [
        DropReason::Runt,
        DropReason::TruncatedVlanTag,
        DropReason::InvalidSrcMac,
        DropReason::ReservedDstMac,
        DropReason::VlanNotAllowed,
        DropReason::NoEgressPort,
    ];
    for r in all {
        let n = reasons.get(r.name()).copied().unwrap_or(0);
        assert!(n >= 20, "{} reached {n} times in 4000 frames", r.name());
    }
    for (what, n) in [
        ("VLAN 0", vlan0),
        ("tagged in", tagged_in),
        ("tag popped", popped),
        ("tag pushed", pushed),
        ("tag kept with DEI and PCP", kept_dei_pcp),
        ("802.1ad in", qinq_in),
    ] {
        assert!(n >= 20, "{what}: {n} times in 4000 frames");
    }
}
