//! The plain path against the general stages on the bursts that
//! `properties::plain_path_matches_the_general_stages` does not make (written by a review of
//! the tagged plain path): priority tags and several VIDs, PCP/DEI bits,
//! native-tagged and native-untagged trunks, 802.1ad outer tags, 14..19-byte frames,
//! MAC-filtered ports sending ARP/RARP/ND (also behind inner tags), frames without headroom,
//! 64-run bursts (retag bit 63), mid-burst moves.

use proptest::prelude::*;
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::{Pool, SwitchConfig};

#[path = "support/collect.rs"]
mod collect;
use collect::{queues, Frames, Sent};
#[path = "support/twin.rs"]
mod twin;
use twin::Twin;

const YAML: &str = r#"
bridges:
- name: br0
  ports:
  - {name: acc, tag: 10}
  - {name: acc2, tag: 10, mac_limit: 4}
  - {name: trk, vlan_mode: trunk}
  - {name: trk2, trunks: [10, 20]}
  - {name: nt, vlan_mode: native-tagged, tag: 10, trunks: [10, 20]}
  - {name: nu, vlan_mode: native-untagged, tag: 10, trunks: [10, 20]}
  - {name: mf, tag: 10, allowed_macs: ["02:00:00:00:06:00", "02:00:00:00:06:01"]}
  - {name: acc20, tag: 20}
  - {name: nu20, vlan_mode: native-untagged, tag: 20, trunks: [10]}
  - {name: mft, vlan_mode: trunk, allowed_macs: ["02:00:00:00:09:00", "02:00:00:00:09:01"]}
"#;
const PORTS: u8 = 10;

fn host(p: u8, j: u8) -> [u8; 6] {
    [2, 0, 0, 0, p, j]
}

/// One frame's choices (all bytes, interpreted in `build`).
type FrameSel = (u8, u8, u8, u8, u8, u8, Vec<u8>);

/// A frame from port `p` in a burst whose base tag is `base` (None: untagged; Some(tci)).
fn build(p: u8, base: Option<u16>, sel: &FrameSel) -> (Vec<u8>, bool) {
    let (dsel, ssel, tsel, pcp, esel, lsel, payload) = sel;
    let dst = match dsel % 16 {
        0 => [0xff; 6],
        1 => host(p, dsel / 16 % 2),
        2 => [2, 0, 0, 0, 0xee, 1],
        _ => host(dsel % PORTS, dsel / 16 % 2),
    };
    let src = match ssel % 32 {
        0 => host((p + 1) % PORTS, 0),
        1 => [0; 6],
        _ => host(p, ssel % 2),
    };
    let prio = (u16::from(*pcp % 16) << 12) & 0xf000;
    let tag: Option<Vec<u8>> = match (tsel % 16, base) {
        (0, None) => Some([0x81, 0x00, 0x00, 10].to_vec()),
        (0, Some(_)) => None,
        (1, Some(t)) => Some([&[0x81u8, 0x00][..], &(((t & 0xfff) + 10) | prio).to_be_bytes()].concat()),
        (2, _) => Some([0x88, 0xa8, 0x00, 10, 0x81, 0x00, 0x00, 10].to_vec()),
        (_, Some(t)) => Some([&[0x81u8, 0x00][..], &((t & 0xfff) | prio).to_be_bytes()].concat()),
        (_, None) => None,
    };
    let other = host((p + 2) % PORTS, 0);
    let lladdr = if esel / 8 % 4 == 0 { other } else { src };
    let (et, body): ([u8; 2], Vec<u8>) = match esel % 8 {
        0 | 1 => {
            let et = if esel % 8 == 0 { [0x08, 0x06] } else { [0x80, 0x35] };
            let arp = [&[0u8, 1, 8, 0, 6, 4, 0, 1][..], &lladdr[..], &[10, 0, 0, 1], &[0; 6], &[10, 0, 0, 2]]
                .concat();
            (et, arp)
        }
        2 => {
            // IPv6 neighbour solicitation with a source link-layer address option.
            let mut ip = vec![0x60, 0, 0, 0, 0, 32, 58, 255];
            ip.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            ip.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            ip.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
            ip.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            ip.extend_from_slice(&[1, 1]);
            ip.extend_from_slice(&lladdr);
            ([0x86, 0xdd], ip)
        }
        3 => ([0x86, 0xdd], payload.clone()),
        // An inner 802.1Q tag then ARP (spoof_check reads through it).
        4 => {
            let arp = [
                &[0x08u8, 0x06, 0, 1, 8, 0, 6, 4, 0, 1][..],
                &lladdr[..],
                &[10, 0, 0, 1],
                &[0; 6],
                &[10, 0, 0, 2],
            ]
            .concat();
            ([0x81, 0x00], [&[0x00u8, 0x00][..], &arp].concat())
        }
        5 => {
            let arp = [
                &[0x08u8, 0x06, 0, 1, 8, 0, 6, 4, 0, 1][..],
                &lladdr[..],
                &[10, 0, 0, 1],
                &[0; 6],
                &[10, 0, 0, 2],
            ]
            .concat();
            ([0x88, 0xa8], [&[0x00u8, 20][..], &arp].concat())
        }
        _ => ([0x08, 0x00], payload.clone()),
    };
    let mut f = [&dst[..], &src[..]].concat();
    if let Some(t) = tag {
        f.extend_from_slice(&t);
    }
    f.extend_from_slice(&et);
    f.extend_from_slice(&body);
    if f.len() < 60 {
        f.extend_from_slice(&payload[..(60 - f.len()).min(payload.len())]);
    }
    if lsel % 16 == 0 {
        f.truncate(14 + usize::from(lsel / 16 % 6));
    }
    (f, lsel % 32 == 1)
}

fn no_headroom(cache: &mut PoolCache, f: &[u8]) -> switchyard_dataplane::buffer::PacketBuf {
    let mut b = cache.alloc_copy(f).unwrap();
    let h = b.headroom();
    b.prepend(h).unwrap();
    b.data_mut()[..f.len()].copy_from_slice(f);
    b.set_len(f.len()).unwrap();
    b
}

#[derive(Debug)]
enum BurstKind {
    Frames(Vec<FrameSel>),
    /// 64 frames to two destination ports in turn (64 runs), IPv4: frames 0..32 alternate
    /// the first and second, 32..64 the first and third; now and then one without headroom.
    Alternate(u8, u8, u8),
}

fn burst_strategy() -> impl Strategy<Value = (u8, Option<u16>, BurstKind)> {
    let sel = (
        any::<u8>(),
        2u8..=255,
        3u8..=255,
        any::<u8>(),
        6u8..=255,
        2u8..=255,
        prop::collection::vec(any::<u8>(), 46..60),
    );
    let rare = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 46..60),
    );
    let fsel = prop_oneof![12 => sel, 1 => rare];
    let base = prop_oneof![
        3 => Just(None),
        2 => Just(Some(10u16)),
        1 => Just(Some(20u16)),
        1 => Just(Some(0u16)),
        1 => (0u16..16).prop_map(|p| Some((p << 12) | 10)),
        1 => Just(Some(30u16)),
    ];
    let kind = prop_oneof![
        8 => prop::collection::vec(fsel, 1..24).prop_map(BurstKind::Frames),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| BurstKind::Alternate(a, b, c)),
    ];
    (0u8..PORTS, base, kind)
}

#[derive(Default, Debug)]
struct Seen {
    plain: u64,
    untraced: u64,
    plain_tagged: u64,
    plain_mf: u64,
    plain_alt64: u64,
}

#[test]
fn plain_path_matches_general_on_tagged_and_filtered_bursts() {
    let seen = std::cell::RefCell::new(Seen::default());
    let cases = std::env::var("PLAIN_VLAN_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let config = ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = (prop::collection::vec(burst_strategy(), 20..80), 1usize..6);
    let r = runner.run(&strategy, |(bursts, drain_every)| {
        let plain_sw = SwitchConfig::compile(&Config::from_yaml_str(YAML).unwrap(), None).unwrap();
        let general_sw = SwitchConfig::compile(&Config::from_yaml_str(YAML).unwrap(), None).unwrap();
        let pool = Pool::with_hugepages("r1", 8192, false).unwrap();
        let mut cache = pool.cache();
        let mut twin = Twin::new(&plain_sw, &general_sw);
        for (i, (port, base, kind)) in bursts.iter().enumerate() {
            let now = 1 + i as u32 / 8;
            let frames: Vec<(Vec<u8>, bool)> = match kind {
                BurstKind::Frames(sels) => sels.iter().map(|s| build(*port, *base, s)).collect(),
                BurstKind::Alternate(a, b, c) => (0..64u8)
                    .map(|k| {
                        // Runs 0..32 alternate a, b; runs 32..64 alternate a, c (so that a
                        // retag bit of run k >= 32 differs from run k - 32's).
                        let d = if k % 2 == 0 {
                            *a
                        } else if k < 32 {
                            *b
                        } else {
                            *c
                        };
                        // One frame (at c % 64) now and then without headroom.
                        let lsel = if c % 4 == 0 && k == c % 64 { 33 } else { 2 };
                        let sel: FrameSel = (d | 3, 2 + (c % 2), 3, 0, 7, lsel, vec![0x55; 46]);
                        let sel = (
                            if d % 16 < 3 { 3 + d % PORTS } else { d },
                            sel.1,
                            sel.2,
                            sel.3,
                            sel.4,
                            sel.5,
                            sel.6,
                        );
                        build(*port, *base, &sel)
                    })
                    .collect(),
            };
            let took = twin.run(u16::from(*port), now, &mut cache, |cache| {
                let mut burst = Burst::new();
                for (f, nohead) in &frames {
                    burst.push(if *nohead { no_headroom(cache, f) } else { cache.alloc_copy(f).unwrap() });
                }
                burst
            })?;
            let mut s = seen.borrow_mut();
            s.untraced += 1;
            if took {
                s.plain += 1;
                if frames.first().is_some_and(|(f, _)| f.get(12..14) == Some(&[0x81, 0][..])) {
                    s.plain_tagged += 1;
                }
                if *port == 6 || *port == 9 {
                    s.plain_mf += 1;
                }
                if frames.len() == 64 {
                    s.plain_alt64 += 1;
                }
            }
            drop(s);
            if i % drain_every == 0 {
                twin.drain(&mut cache);
            }
        }
        twin.finish(&mut cache)?;
        drop(cache);
        prop_assert_eq!(pool.in_use(), 0);
        Ok(())
    });
    let s = seen.into_inner();
    eprintln!("plain path coverage: {s:?}");
    if let Err(e) = r {
        panic!("{e}");
    }
    assert!(s.plain_tagged > 0 && s.plain_mf > 0 && s.plain_alt64 > 0, "{s:?}");
}

/// Runs `frames` from port `in_port` through a fresh switch of `yaml` twice, untraced (the
/// plain path when it applies) and traced (the general stages), after teaching both tables
/// `learn` (vlan, mac, port): the frames each sent, whether both switches' port stats agree,
/// and whether the untraced run took the plain path.
fn both_ways(
    yaml: &str,
    learn: &[(u16, [u8; 6], u16)],
    in_port: u16,
    frames: &[Vec<u8>],
) -> (Frames, Frames, bool, bool) {
    let pool = Pool::with_hugepages("r1b", 512, false).unwrap();
    let mut cache = pool.cache();
    let mut outs = Vec::new();
    let mut took = false;
    let mut snaps = Vec::new();
    for trace in [false, true] {
        let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap();
        for (vlan, mac, port) in learn {
            sw.bridges[0].table.learn(*vlan, switchyard_dataplane::wire::MacAddr(*mac), *port, 1, u32::MAX);
        }
        let mut tx = TxBatches::new(sw.port_slots());
        let mut burst = Burst::new();
        for f in frames {
            burst.push(cache.alloc_copy(f).unwrap());
        }
        let mut traces = Vec::new();
        let before = switchyard_dataplane::pipeline::plain_bursts_on_this_thread();
        process_burst(&sw, in_port, &mut burst, 1, &mut cache, &mut tx, trace.then_some(&mut traces));
        if !trace {
            took = switchyard_dataplane::pipeline::plain_bursts_on_this_thread() != before;
        }
        let out = Sent::default();
        let mut q = queues(sw.port_slots(), &out);
        tx.flush(&sw, &mut q, &mut cache);
        outs.push(std::mem::take(&mut *out.lock().unwrap()));
        snaps.push(sw.port_ids().map(|p| sw.port(p).unwrap().stats.snapshot()).collect::<Vec<_>>());
    }
    let stats_eq = snaps[0] == snaps[1];
    let general = outs.pop().unwrap();
    let plain = outs.pop().unwrap();
    (plain, general, stats_eq, took)
}

/// A priority-tagged (VID 0) burst on a native-tagged port belongs to the native VLAN; to a
/// trunk it must leave with the native VID written into the tag (egress_rewrite), not VID 0.
/// Fails with `.filter(|&v| v == vid)` removed from `plain_probes_tagged` (which the property
/// test `plain_path_matches_the_general_stages` does not notice: it sends no priority tags).
#[test]
fn priority_tagged_burst_on_a_native_port_to_a_trunk() {
    let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: nt, vlan_mode: native-tagged, tag: 10}\n  \
                - {name: t, vlan_mode: trunk, trunks: [10]}\n";
    let (a, b) = (host(0, 0), host(1, 0));
    let f = [&b[..], &a, &[0x81, 0x00, 0xa0, 0x00, 0x08, 0x00], &[7; 46]].concat();
    let (plain, general, stats_eq, _) = both_ways(yaml, &[(10, a, 0), (10, b, 1)], 0, &[f.clone(), f]);
    let want = [&b[..], &a, &[0x81, 0x00, 0xa0, 10, 0x08, 0x00], &[7; 46]].concat();
    assert_eq!(general, vec![(1, want.clone()), (1, want)], "the general stages");
    assert_eq!(plain, general);
    assert!(stats_eq);
}

/// On a bridge with an IP spoof filter (the policy fast path), an access port's burst to a
/// trunk's host must leave the trunk tagged: the fast path pushes the tag of a run to a port
/// that takes the VLAN tagged (`Runs::retag_runs`, once the burst's checks passed). Fails with
/// the retagging skipped in `policy_fast`.
#[test]
fn policy_fast_path_never_sends_an_untagged_run_to_a_trunk() {
    let yaml = "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10, allowed_ips: [10.0.0.1]}\n  \
                - {name: t, vlan_mode: trunk, trunks: [10]}\n";
    let (a, b) = (host(0, 0), host(1, 0));
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(a, b)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1000, 53)
        .write(&mut f, &[0; 18])
        .unwrap();
    let (plain, general, stats_eq, _) =
        both_ways(yaml, &[(10, a, 0), (10, b, 1)], 0, &[f.clone(), f.clone()]);
    let want = [&f[..12], &[0x81, 0x00, 0x00, 10], &f[12..]].concat();
    assert_eq!(general, vec![(1, want.clone()), (1, want)], "the general stages");
    assert_eq!(plain, general);
    assert!(stats_eq);
}
