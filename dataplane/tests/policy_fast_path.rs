//! The policy stage's fast path for established connections (`filter::fast_burst`, taken by
//! untraced bursts) against the general stages (which traced bursts always take, storing no
//! verdicts), on ports with MAC spoof filters (`allowed_macs`, as the plan sets on every VM
//! port) and IP spoof filters (`allowed_ips`): random policies on two ports (none at all in a
//! quarter of the cases: spoof filters alone, no connection table), random bursts of
//! TCP and UDP packets of a few connections both ways (opened, replied, closed), some of them
//! with a source MAC or IP that the sending port does not own, and DHCP requests from
//! `0.0.0.0` (to the broadcast address: allowed; to a peer: spoofed). Both runs must queue the same
//! frames to the same ports in the same order, count the same drops and leave the same live
//! connections in the table (state, blocked, expiry); independently of
//! either, a frame with a source its port does not own is never delivered and is counted under
//! `spoofed_src_mac` or `spoofed_src_ip`. The fast path must have run for a good share of the
//! bursts (the pipeline counts them in builds with debug assertions, as tests are), so that
//! the comparison is not of the general stages with themselves.
// Built only with debug assertions (the tests' profile): the pipeline counts the fast path's
// bursts and the directory's answers only there, and without them the test would compare one
// path with itself unseen.
#![cfg(debug_assertions)]

#[path = "support/drops.rs"]
mod support;

use proptest::prelude::*;
use std::collections::BTreeMap;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::{Pool, SwitchConfig};

/// Port i's host: its MAC and IPv4 address. Ports 0 and 1 have both spoof filters and
/// policies; port 2 only an IP spoof filter (`ipspoofchk` by itself).
const MAC: [[u8; 6]; 3] = [[2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 0xc]];
const IP: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]];
const NAMES: [&str; 3] = ["a", "b", "c"];
/// A MAC no port owns, and an address no port owns.
const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xee];
const OTHER_IP: [u8; 4] = [10, 0, 0, 99];

/// The policy shapes a direction of ports a and b gets (`None`: open).
const RULES: [Option<&str>; 7] = [
    None,
    Some("rules: []"),
    Some("rules: [{name: r/any}]"),
    Some("rules: [{name: r/tcp80, ports: [{protocol: TCP, port: 80}]}]"),
    Some("rules: [{name: r/udp, ports: [{protocol: UDP, port: 50, end_port: 60}]}]"),
    Some("rules: [{name: r/net, peers: [{cidr: 10.0.0.0/24, except: [10.0.0.3/32]}]}]"),
    Some("rules: [{name: r/c, peers: [{cidr: 10.0.0.3/32}]}, {name: r/b, peers: [{cidr: 10.0.0.2/32}], ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 53}]}]"),
];

fn config(shapes: [usize; 4]) -> Config {
    let dir = |name: &str, s: usize| {
        RULES[s % RULES.len()].map_or(String::new(), |r| format!("        {name}: {{{r}}}\n"))
    };
    let pol = |i: usize, o: usize| {
        let body = dir("ingress", i) + &dir("egress", o);
        if body.is_empty() {
            String::new()
        } else {
            format!("    policy:\n{body}")
        }
    };
    let yaml = format!(
        "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
         \x20 - name: a\n    static_macs: ['02:00:00:00:00:0a']\n    allowed_macs: ['02:00:00:00:00:0a']\n    allowed_ips: [10.0.0.1]\n{}\
         \x20 - name: b\n    static_macs: ['02:00:00:00:00:0b']\n    allowed_macs: ['02:00:00:00:00:0b']\n    allowed_ips: [10.0.0.2]\n{}\
         \x20 - name: c\n    static_macs: ['02:00:00:00:00:0c']\n    allowed_ips: [10.0.0.3]\n",
        pol(shapes[0], shapes[1]),
        pol(shapes[2], shapes[3]),
    );
    Config::from_yaml_str(&yaml).expect("valid config")
}

/// One packet between the sender and the port `peer` (1 or 2) places on: of connection `conn`
/// (0-3: to TCP port 80, TCP 22, UDP 53, UDP 55), from the client end when `orig`, else from
/// the service end; TCP flags `flags` (0 ack, 1 syn, 2 syn+ack, 3 fin, 4 rst); `spoof` 0-9:
/// 6 a foreign source MAC, 7 a foreign source IP, 8 a DHCP request (UDP 68 -> 67) from
/// `0.0.0.0` to the peer's address (spoofed: only 255.255.255.255 is a DHCP client's), 9 the
/// same to 255.255.255.255 (allowed), else none.
#[derive(Debug, Clone, Copy)]
struct Pkt {
    peer: usize,
    conn: usize,
    orig: bool,
    flags: u8,
    spoof: u8,
}

fn arb_pkt() -> impl Strategy<Value = Pkt> {
    (1usize..3, 0usize..4, any::<bool>(), prop_oneof![6 => Just(0u8), 1 => 1u8..5], 0u8..10)
        .prop_map(|(peer, conn, orig, flags, spoof)| Pkt { peer, conn, orig, flags, spoof })
}

/// The frame port `from` sends for `p`; and whether its source is one `from` does not own.
fn frame(from: usize, p: Pkt) -> (Vec<u8>, bool) {
    let to = (from + p.peer) % 3;
    let (mut smac, mut sip, mut dip) = (MAC[from], IP[from], IP[to]);
    match p.spoof {
        6 => smac = OTHER_MAC,
        7 => sip = OTHER_IP,
        8 => sip = [0; 4],
        9 => (sip, dip) = ([0; 4], [255; 4]),
        _ => {}
    }
    // The client's port is fixed per connection and pair, so that both ends name it alike.
    let client = 40000 + (from.min(to) * 3 + from.max(to)) as u16 * 4 + p.conn as u16;
    let service = [80u16, 22, 53, 55][p.conn];
    let (sport, dport) = if p.orig { (client, service) } else { (service, client) };
    let b = etherparse::PacketBuilder::ethernet2(smac, MAC[to]).ipv4(sip, dip, 64);
    let mut v = Vec::new();
    if p.spoof >= 8 {
        b.udp(68, 67).write(&mut v, b"dhcp").expect("frame");
    } else if p.conn < 2 {
        let b = b.tcp(sport, dport, 1, 1000);
        let b = match p.flags {
            1 => b.syn(),
            2 => b.syn().ack(2),
            3 => b.fin().ack(2),
            4 => b.rst(),
            _ => b.ack(2),
        };
        b.write(&mut v, &[]).expect("frame");
    } else {
        b.udp(sport, dport).write(&mut v, b"q").expect("frame");
    }
    (v, matches!(p.spoof, 6..=8))
}

/// Frames queued (egress port name, bytes), in order.
type Out = Vec<(String, Vec<u8>)>;

/// The live connections of `sw`'s first bridge's table at `now` (none without a table),
/// sorted: key, state, blocked, seconds left. The fast path must make the general stages'
/// writes (an entry's expiry moved on) and no others (nothing committed for a connection the
/// general stages leave untracked), which the frames alone would show only once an entry's
/// expiry decided a later packet.
fn table(sw: &SwitchConfig, now: u32) -> Vec<String> {
    let Some(ct) = sw.bridges[0].conntrack.as_ref() else { return Vec::new() };
    let mut v: Vec<String> = ct
        .entries(now, usize::MAX)
        .0
        .iter()
        .map(|e| format!("{:?} {} blocked={} ttl={}", e.key, e.state.name(), e.blocked, e.ttl))
        .collect();
    v.sort();
    v
}

/// Runs one burst from `from`: what was queued, and the drops counted on `from` by reason.
fn run(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frames: &[Vec<u8>],
    now: u32,
    traced: bool,
) -> (Out, BTreeMap<String, u64>) {
    let port = sw.port_by_name(from).expect("port");
    let before = port.stats.snapshot();
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut burst = Burst::new();
    for f in frames {
        burst.push(cache.alloc_copy(f).expect("buffer"));
    }
    let mut traces = Vec::new();
    process_burst(sw, port.id, &mut burst, now, &mut cache, &mut tx, traced.then_some(&mut traces));
    let mut out = Vec::new();
    tx.drain_with(|id, b| {
        let name = sw.port(id).expect("port").name.clone();
        for buf in b.drain(..) {
            out.push((name.clone(), buf.data().to_vec()));
            cache.free(buf);
        }
    });
    (out, support::drops_since(&before, &port.stats.snapshot()))
}

#[test]
fn fast_path_matches_the_general_stages_on_filtered_ports() {
    let pool = Pool::new("policy-fast-path", 1024).expect("pool");
    let (bursts_run, fast_run) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let answers_before = switchyard_dataplane::conntrack::steady_answers_on_this_thread();
    // Each burst: the sending port, then its packets; a stream of bursts mostly repeating a
    // few connections, so that most of them are established.
    let stream = prop::collection::vec((0usize..3, prop::collection::vec(arb_pkt(), 1..12)), 1..80);
    // One case in four without any policy: spoof filters alone, no connection table.
    let shapes = prop_oneof![1 => Just([0usize; 4]), 3 => prop::array::uniform4(0usize..RULES.len())];
    let strategy = (shapes, stream);
    // 64 cases a run; PROPTEST_CASES=N for a longer hunt.
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let cases = ProptestConfig { cases: n, source_file: Some(file!()), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(cases);
    let result = runner.run(&strategy, |(shapes, stream)| {
        let cfg = config(shapes);
        let (fast_sw, general_sw) = (
            SwitchConfig::compile(&cfg, None).expect("compile"),
            SwitchConfig::compile(&cfg, None).expect("compile"),
        );
        for (i, (from, pkts)) in stream.iter().enumerate() {
            let now = 1 + i as u32 / 16;
            let made: Vec<(Vec<u8>, bool)> = pkts.iter().map(|p| frame(*from, *p)).collect();
            let frames: Vec<Vec<u8>> = made.iter().map(|(f, _)| f.clone()).collect();
            let spoofed = made.iter().filter(|(_, s)| *s).count() as u64;
            let before = switchyard_dataplane::pipeline::plain_bursts_on_this_thread();
            let fast = run(&fast_sw, &pool, NAMES[*from], &frames, now, false);
            let took_fast = switchyard_dataplane::pipeline::plain_bursts_on_this_thread() > before;
            let general = run(&general_sw, &pool, NAMES[*from], &frames, now, true);
            prop_assert_eq!(
                &fast,
                &general,
                "burst {} from {} (fast path taken: {})",
                i,
                NAMES[*from],
                took_fast
            );
            prop_assert_eq!(
                table(&fast_sw, now),
                table(&general_sw, now),
                "burst {} from {}: the connection tables (fast path taken: {})",
                i,
                NAMES[*from],
                took_fast
            );
            // The spoof filters, written out: no frame with a foreign source leaves, each is
            // counted (a foreign MAC only on a and b, which filter MACs; c learns it).
            let (out, drops) = &fast;
            for (f, s) in &made {
                if *s && (*from != 2 || f[6..12] != OTHER_MAC) {
                    prop_assert!(
                        !out.iter().any(|(_, o)| o == f),
                        "a spoofed frame from {} left",
                        NAMES[*from]
                    );
                }
            }
            let counted = drops.get("spoofed_src_mac").copied().unwrap_or(0)
                + drops.get("spoofed_src_ip").copied().unwrap_or(0);
            let expected =
                made.iter().filter(|(f, s)| *s && (*from != 2 || f[6..12] != OTHER_MAC)).count() as u64;
            prop_assert_eq!(
                counted,
                expected,
                "spoofed frames from {} counted ({} foreign sources)",
                NAMES[*from],
                spoofed
            );
            bursts_run.set(bursts_run.get() + 1);
            fast_run.set(fast_run.get() + u64::from(took_fast));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (n, f) = (bursts_run.get(), fast_run.get());
    assert!(
        f * 20 >= n,
        "the fast path ran for {f} of {n} bursts: the comparison would be of one path with itself"
    );
    // ... and on bridges with policies it answered from the connection table's directory
    // (its short road), not only through the general lookup behind it.
    let answers = switchyard_dataplane::conntrack::steady_answers_on_this_thread() - answers_before;
    assert!(answers * 10 >= f, "{answers} lookups answered by the directory in {f} fast bursts");
}

/// The trunk bridge of [`tagged_fast_path_matches_the_general_stages_on_trunks`]: `u` an
/// uplink (a trunk of VLANs 10 and 20, no spoof filter), `n` a native-untagged trunk (VLAN 10
/// untagged, 20 tagged), `a` and `b` access ports of VLAN 10 with random policies (`a` with
/// both spoof filters, as a VM port), `c` an access port of VLAN 20 without policy, and `f` a
/// trunk of VLAN 10 with a MAC spoof filter (whose tagged bursts the fast path leaves alone).
fn trunk_config(shapes: [usize; 4]) -> Config {
    let dir = |name: &str, s: usize| {
        RULES[s % RULES.len()].map_or(String::new(), |r| format!("        {name}: {{{r}}}\n"))
    };
    let pol = |i: usize, o: usize| {
        let body = dir("ingress", i) + &dir("egress", o);
        if body.is_empty() {
            String::new()
        } else {
            format!("    policy:\n{body}")
        }
    };
    let yaml = format!(
        "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
         \x20 - {{name: u, trunks: [10, 20]}}\n\
         \x20 - {{name: n, vlan_mode: native-untagged, tag: 10, trunks: [10, 20]}}\n\
         \x20 - name: a\n    tag: 10\n    allowed_macs: ['02:00:00:00:01:0a']\n    allowed_ips: [10.0.0.10]\n{}\
         \x20 - name: b\n    tag: 10\n{}\
         \x20 - {{name: c, tag: 20}}\n\
         \x20 - {{name: f, trunks: [10], allowed_macs: ['02:00:00:00:05:0a']}}\n",
        pol(shapes[0], shapes[1]),
        pol(shapes[2], shapes[3]),
    );
    Config::from_yaml_str(&yaml).expect("valid config")
}

/// Port names of [`trunk_config`] by id, and each port's host: (VLAN it is in, MAC, IPv4
/// address); `u` and `n` have a host in each VLAN.
const TRUNK_PORTS: [&str; 6] = ["u", "n", "a", "b", "c", "f"];
const HOSTS: [(usize, u16, [u8; 6], [u8; 4]); 8] = [
    (0, 10, [2, 0, 0, 0, 0, 0x10], [10, 0, 0, 100]),
    (0, 20, [2, 0, 0, 0, 0, 0x20], [10, 0, 0, 200]),
    (1, 10, [2, 0, 0, 0, 1, 0x10], [10, 0, 0, 101]),
    (1, 20, [2, 0, 0, 0, 1, 0x20], [10, 0, 0, 201]),
    (2, 10, [2, 0, 0, 0, 1, 0x0a], [10, 0, 0, 10]),
    (3, 10, [2, 0, 0, 0, 1, 0x0b], [10, 0, 0, 11]),
    (4, 20, [2, 0, 0, 0, 1, 0x0c], [10, 0, 0, 20]),
    (5, 10, [2, 0, 0, 0, 5, 0x0a], [10, 0, 0, 50]),
];

/// One frame of a trunk burst: from host `from` to host `to` (indices into [`HOSTS`], the
/// same VLAN or not), connection `conn` (0-3 as [`Pkt`]'s), direction `orig`, TCP flags
/// `flags`; `how` 0-15: as the sending port would send it (tagged on a trunk, untagged on an
/// access port or in a native-untagged VLAN), and now and then otherwise: 12 PCP and DEI bits
/// in the tag, 13 a priority tag (VID 0), 14 an ARP request, 15 a stacked (QinQ) inner tag.
fn trunk_frame(from: usize, to: usize, conn: usize, orig: bool, flags: u8, how: u8) -> Vec<u8> {
    let ((fp, vlan, smac, sip), (tp, _, dmac, dip)) = (HOSTS[from], HOSTS[to]);
    let client = 40000 + (fp.min(tp) * 8 + fp.max(tp)) as u16 * 4 + conn as u16;
    let service = [80u16, 22, 53, 55][conn];
    let (sport, dport) = if orig { (client, service) } else { (service, client) };
    let mut v = Vec::new();
    if how == 14 {
        v.extend_from_slice(&[255; 6]);
        v.extend_from_slice(&smac);
        v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        v.extend_from_slice(&smac);
        v.extend_from_slice(&sip);
        v.extend_from_slice(&[0; 6]);
        v.extend_from_slice(&dip);
    } else {
        let b = etherparse::PacketBuilder::ethernet2(smac, dmac).ipv4(sip, dip, 64);
        if conn < 2 {
            let b = b.tcp(sport, dport, 1, 1000);
            let b = match flags {
                1 => b.syn(),
                2 => b.syn().ack(2),
                3 => b.fin().ack(2),
                4 => b.rst(),
                _ => b.ack(2),
            };
            b.write(&mut v, &[]).expect("frame");
        } else {
            b.udp(sport, dport).write(&mut v, b"q").expect("frame");
        }
    }
    // Tagged as the port sends the VLAN: every VLAN on `u` and `f`, VLAN 20 on `n`.
    let tagged = matches!((fp, vlan), (0, _) | (5, _) | (1, 20));
    let tci = match how {
        12 => 0xb000 | vlan,
        13 => 0,
        _ => vlan,
    };
    if tagged || how == 13 {
        let mut tag = vec![0x81, 0x00, (tci >> 8) as u8, tci as u8];
        if how == 15 {
            tag.extend_from_slice(&[0x81, 0x00, 0, 30]);
        }
        v.splice(12..12, tag);
    }
    v
}

/// The policy fast path on trunks: tagged bursts from an uplink into policy-guarded access
/// ports (the tags popped) and the replies back (the tags pushed), against the general stages,
/// with the odd frames mixed in (PCP bits, priority tags, ARP, stacked tags, other VLANs, a
/// filtered trunk). Both runs must queue the same frames to the same ports in the same order
/// and count the same drops; and the fast path must have taken a good share of the tagged
/// bursts, so that the comparison is not of the general stages with themselves.
#[test]
fn tagged_fast_path_matches_the_general_stages_on_trunks() {
    let pool = Pool::new("policy-fast-path-vlan", 1024).expect("pool");
    let (tagged_run, tagged_fast, retag_fast) =
        (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    // A burst: its sending host, then its frames (peer host, connection, direction, flags,
    // how); mostly a few connections between the uplinks' hosts and a and b, so that most are
    // established; frames of one burst come from one host's port.
    let pkt = (0usize..HOSTS.len(), 0usize..4, any::<bool>(), prop_oneof![12 => Just(0u8), 1 => 1u8..5]);
    let how = prop_oneof![40 => Just(0u8), 1 => 12u8..16];
    let burst = (
        prop_oneof![4 => Just(0usize), 4 => 4usize..6, 1 => 1usize..4, 1 => 6usize..8],
        prop::collection::vec((pkt, how), 1..8),
    );
    let stream = prop::collection::vec(burst, 1..80);
    let strategy = (prop::array::uniform4(0usize..RULES.len()), stream);
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let cases = ProptestConfig { cases: n, source_file: Some(file!()), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(cases);
    let result = runner.run(&strategy, |(shapes, stream)| {
        let cfg = trunk_config(shapes);
        let sws = [
            SwitchConfig::compile(&cfg, None).expect("compile"),
            SwitchConfig::compile(&cfg, None).expect("compile"),
        ];
        for sw in &sws {
            for (port, vlan, mac, _) in HOSTS {
                sw.bridges[0].table.learn(
                    vlan,
                    switchyard_dataplane::wire::MacAddr(mac),
                    port as u16,
                    1,
                    u32::MAX,
                );
            }
        }
        for (i, (from, pkts)) in stream.iter().enumerate() {
            let now = 1 + i as u32 / 16;
            // The peers: four in five of a trunk's VLAN-10 hosts' frames go to a or b, of a's
            // and b's to the trunks' VLAN-10 hosts, of the VLAN-20 hosts' to each other (those
            // of connections the policies track), the rest to any host.
            let frames: Vec<Vec<u8>> = pkts
                .iter()
                .map(|((to, conn, orig, flags), how)| {
                    let near: [usize; 2] = match *from {
                        0 | 2 | 7 => [4, 5],
                        4 | 5 => [0, 2],
                        1 => [6, 3],
                        _ => [1, 1],
                    };
                    let to = if to % 5 == 0 { *to } else { near[to % 2] };
                    trunk_frame(*from, to, *conn, *orig, *flags, *how)
                })
                .collect();
            let name = TRUNK_PORTS[HOSTS[*from].0];
            let before = switchyard_dataplane::pipeline::plain_bursts_on_this_thread();
            let fast = run(&sws[0], &pool, name, &frames, now, false);
            let took_fast = switchyard_dataplane::pipeline::plain_bursts_on_this_thread() > before;
            let general = run(&sws[1], &pool, name, &frames, now, true);
            prop_assert_eq!(&fast, &general, "burst {} from {} (fast path taken: {})", i, name, took_fast);
            prop_assert_eq!(
                table(&sws[0], now),
                table(&sws[1], now),
                "burst {} from {}: the connection tables (fast path taken: {})",
                i,
                name,
                took_fast
            );
            let tagged = frames[0].get(12..14) == Some(&[0x81, 0x00]);
            if tagged {
                tagged_run.set(tagged_run.get() + 1);
                tagged_fast.set(tagged_fast.get() + u64::from(took_fast));
            } else if took_fast && fast.0.iter().any(|(p, _)| p == "u") {
                retag_fast.set(retag_fast.get() + 1);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (t, f, r) = (tagged_run.get(), tagged_fast.get(), retag_fast.get());
    assert!(f * 20 >= t, "the fast path took {f} of {t} tagged bursts");
    assert!(r > 0, "no untagged burst to the uplink took the fast path (its tags pushed)");
}
