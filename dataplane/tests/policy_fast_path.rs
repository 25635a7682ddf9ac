//! The policy stage's fast path for established connections (`filter::fast_burst`, taken by
//! untraced bursts) against the general stages (which traced bursts always take, storing no
//! verdicts), on ports with MAC spoof filters (`allowed_macs`, as the plan sets on every VM
//! port) and IP spoof filters (`allowed_ips`): random policies on two ports (none at all in a
//! quarter of the cases: spoof filters alone, no connection table), random bursts of
//! TCP and UDP packets of a few connections both ways (opened, replied, closed), some of them
//! with a source MAC or IP that the sending port does not own, and DHCP requests from
//! `0.0.0.0` (to the broadcast address: allowed; to a peer: spoofed). Both runs must queue the same
//! frames to the same ports in the same order and count the same drops, and end each stream
//! with the same port counters (bytes sent included), MAC table and connection table (its
//! entries without their verdicts, which a trace's run does not store); independently of
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

/// A port's `policy:` block (YAML, under a port of the bridge) with [`RULES`] shapes `i` for
/// ingress and `o` for egress; none when both are open.
fn policy_yaml(i: usize, o: usize) -> String {
    let dir = |name: &str, s: usize| {
        RULES[s % RULES.len()].map_or(String::new(), |r| format!("        {name}: {{{r}}}\n"))
    };
    let body = dir("ingress", i) + &dir("egress", o);
    if body.is_empty() {
        String::new()
    } else {
        format!("    policy:\n{body}")
    }
}

fn config(shapes: [usize; 4]) -> Config {
    let yaml = format!(
        "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
         \x20 - name: a\n    static_macs: ['02:00:00:00:00:0a']\n    allowed_macs: ['02:00:00:00:00:0a']\n    allowed_ips: [10.0.0.1]\n{}\
         \x20 - name: b\n    static_macs: ['02:00:00:00:00:0b']\n    allowed_macs: ['02:00:00:00:00:0b']\n    allowed_ips: [10.0.0.2]\n{}\
         \x20 - name: c\n    static_macs: ['02:00:00:00:00:0c']\n    allowed_ips: [10.0.0.3]\n",
        policy_yaml(shapes[0], shapes[1]),
        policy_yaml(shapes[2], shapes[3]),
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
    } else {
        write_conn(b, p.conn, p.flags, sport, dport, &mut v);
    }
    (v, matches!(p.spoof, 6..=8))
}

/// Writes into `v` the packet of connection `conn` (0-1 TCP with flags `flags` as [`Pkt`]'s,
/// else UDP) that `b` addresses, between ports `sport` and `dport`.
fn write_conn(
    b: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    conn: usize,
    flags: u8,
    sport: u16,
    dport: u16,
    v: &mut Vec<u8>,
) {
    if conn < 2 {
        let b = b.tcp(sport, dport, 1, 1000);
        let b = match flags {
            1 => b.syn(),
            2 => b.syn().ack(2),
            3 => b.fin().ack(2),
            4 => b.rst(),
            _ => b.ack(2),
        };
        b.write(v, &[]).expect("frame");
    } else {
        b.udp(sport, dport).write(v, b"q").expect("frame");
    }
}

/// Frames queued (egress port name, bytes), in order.
type Out = Vec<(String, Vec<u8>)>;

#[path = "support/collect.rs"]
mod collect;
use collect::{queues, Sent};

/// Runs one burst from `from` (the frames at the indices in `no_headroom` in buffers without
/// headroom) and sends what it queued (so that the egress ports count what they sent): the
/// frames sent, and the drops counted on `from` by reason.
fn run_with(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frames: &[Vec<u8>],
    no_headroom: &[usize],
    now: u32,
    traced: bool,
) -> (Out, BTreeMap<String, u64>) {
    let port = sw.port_by_name(from).expect("port");
    let before = port.stats.snapshot();
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut burst = Burst::new();
    for (i, f) in frames.iter().enumerate() {
        let mut b = cache.alloc_copy(f).expect("buffer");
        if no_headroom.contains(&i) {
            let h = b.headroom();
            b.prepend(h).expect("headroom");
            b.data_mut()[..f.len()].copy_from_slice(f);
            b.set_len(f.len()).expect("length");
            assert_eq!((b.headroom(), b.data()), (0, &f[..]));
        }
        burst.push(b);
    }
    let mut traces = Vec::new();
    process_burst(sw, port.id, &mut burst, now, &mut cache, &mut tx, traced.then_some(&mut traces));
    let sent = Sent::default();
    tx.flush(sw, &mut queues(sw.port_slots(), &sent), &mut cache);
    let out = std::mem::take(&mut *sent.lock().expect("lock"))
        .into_iter()
        .map(|(p, f)| (sw.port(p).expect("port").name.clone(), f))
        .collect();
    (out, support::drops_since(&before, &port.stats.snapshot()))
}

/// [`run_with`], every buffer with its headroom.
fn run(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frames: &[Vec<u8>],
    now: u32,
    traced: bool,
) -> (Out, BTreeMap<String, u64>) {
    run_with(sw, pool, from, frames, &[], now, traced)
}

/// What a switch's bursts left behind: every port's counters (bytes received and sent
/// included), the MAC table and the connection table at `now`, whose entries are compared
/// without their verdicts (which a trace's run does not store).
type State = (
    Vec<switchyard_dataplane::switch::PortStatsSnapshot>,
    Vec<switchyard_dataplane::fdb::FdbEntry>,
    Vec<switchyard_dataplane::conntrack::Entry>,
);

fn state(sw: &SwitchConfig, now: u32) -> State {
    let stats = sw.port_ids().map(|p| sw.port(p).expect("port").stats.snapshot()).collect();
    let mut macs = sw.bridges[0].table.entries(now);
    macs.sort_by_key(|e| (e.vlan, e.mac.0));
    let mut conns = sw.bridges[0].conntrack.as_ref().map_or(Vec::new(), |ct| ct.entries(now, 4096).0);
    conns.sort_by_key(|e| (e.key.vlan, e.key.src, e.key.dst, e.key.sport, e.key.dport, e.key.proto));
    (stats, macs, conns)
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
        // Every port's counters (bytes sent included) and the tables, once the stream ran.
        let end = 1 + (stream.len() as u32 - 1) / 16;
        prop_assert_eq!(state(&fast_sw, end), state(&general_sw, end), "counters and tables");
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
/// trunk of VLAN 10 with random spoof filters `ff` (a VM's trunk: a router VM tagging its own
/// frames, with port security).
fn trunk_config(shapes: [usize; 4], ff: &TrunkFilters) -> Config {
    let list = |l: Vec<String>| format!("[{}]", l.join(", "));
    let mut f = String::from("\x20 - name: f\n    trunks: [10]\n");
    if let Some(macs) = &ff.macs {
        let l = macs.iter().map(|m| format!("'{}'", switchyard_dataplane::wire::MacAddr(*m))).collect();
        f += &format!("    allowed_macs: {}\n", list(l));
    }
    if let Some(ips) = &ff.ips {
        f += &format!("    allowed_ips: {}\n", list(ips.iter().map(|a| format!("'{a}'")).collect()));
    }
    let yaml = format!(
        "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
         \x20 - {{name: u, trunks: [10, 20]}}\n\
         \x20 - {{name: n, vlan_mode: native-untagged, tag: 10, trunks: [10, 20]}}\n\
         \x20 - name: a\n    tag: 10\n    allowed_macs: ['02:00:00:00:01:0a']\n    allowed_ips: [10.0.0.10]\n{}\
         \x20 - name: b\n    tag: 10\n{}\
         \x20 - {{name: c, tag: 20}}\n{f}",
        policy_yaml(shapes[0], shapes[1]),
        policy_yaml(shapes[2], shapes[3]),
    );
    Config::from_yaml_str(&yaml).expect("valid config")
}

/// The spoof filters of the trunk `f` ([`trunk_config`]): its `allowed_macs` (`None`: no MAC
/// spoof filter) and `allowed_ips` (`None`: no IP spoof filter).
#[derive(Debug, Clone)]
struct TrunkFilters {
    macs: Option<Vec<[u8; 6]>>,
    ips: Option<Vec<std::net::IpAddr>>,
}

/// f's host (index into [`HOSTS`]), its IPv6 address, and the sources it sends from that it
/// does not own: a MAC (learned on f all the same, as a MAC the VM used before its filter was
/// set, so that only the fast path's MAC check can refuse it there), an IPv4 and an IPv6
/// address, and its router's link-local address.
const F_HOST: usize = 7;
const F_V6: u128 = 0xfd00 << 112 | 0x50;
const F_OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 5, 0xee];
const F_OTHER_V4: [u8; 4] = [10, 0, 0, 99];
const F_OTHER_V6: u128 = 0xfd00 << 112 | 0x99;
const ROUTER_LLA: u128 = 0xfe80 << 112 | 1;

/// The IPv6 link-local address SLAAC derives from `mac` (modified EUI-64, RFC 4291 appendix A),
/// written out here rather than taken from the crate.
fn eui64(mac: [u8; 6]) -> u128 {
    let b = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]];
    u128::from_be_bytes(b)
}

/// Random spoof filters for `f`: the MAC list absent three times in ten, the address list one
/// time in five (with the MAC list absent, the link-local address derived from the MAC is not
/// allowed unless listed: some cases for each side of that rule); its own MAC, IPv4 and IPv6
/// addresses in them most of the time, at any place among up to 5 MACs or 7 addresses of
/// other hosts (so that lists longer than the 4 the fast path keeps as words come up); the
/// IPv6 address derived from its MAC listed now and then (as the plan lists it on a port
/// without a MAC spoof filter).
fn arb_trunk_filters() -> impl Strategy<Value = TrunkFilters> {
    let macs = (prop::collection::vec(0u8..200, 0..6), any::<usize>(), prop::bool::weighted(0.85)).prop_map(
        |(others, at, own)| {
            let mut l: Vec<[u8; 6]> = others.iter().map(|&x| [2, 0, 0, 0, 9, x]).collect();
            if own || l.is_empty() {
                // An empty list is no filter: a list without f's MAC names another.
                let m = if own { HOSTS[F_HOST].2 } else { [2, 0, 0, 0, 9, 250] };
                l.insert(at % (l.len() + 1), m);
            }
            l
        },
    );
    let ips = (
        prop::collection::vec((any::<bool>(), 0u8..200), 0..8),
        (any::<usize>(), any::<usize>()),
        (prop::bool::weighted(0.85), prop::bool::weighted(0.75), prop::bool::weighted(0.2)),
    )
        .prop_map(|(others, (at4, at6), (own4, own6, lla))| {
            use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
            let mut l: Vec<IpAddr> = others
                .iter()
                .map(|&(v6, x)| {
                    if v6 {
                        IpAddr::V6(Ipv6Addr::from(0xfd00_0009u128 << 96 | u128::from(x)))
                    } else {
                        IpAddr::V4(Ipv4Addr::new(10, 0, 9, x))
                    }
                })
                .collect();
            if own4 {
                l.insert(at4 % (l.len() + 1), IpAddr::V4(Ipv4Addr::from(HOSTS[F_HOST].3)));
            }
            if own6 {
                l.insert(at6 % (l.len() + 1), IpAddr::V6(Ipv6Addr::from(F_V6)));
            }
            if lla {
                l.push(IpAddr::V6(Ipv6Addr::from(eui64(HOSTS[F_HOST].2))));
            }
            l
        });
    (prop::option::weighted(0.7, macs), prop::option::weighted(0.8, ips))
        .prop_map(|(macs, ips)| TrunkFilters { macs, ips })
}

/// The source a frame from f's host sends from (`src` of [`trunk_frame`]): 0 its own MAC and
/// IPv4 address, 1 [`F_OTHER_MAC`], 2 [`F_OTHER_V4`], IPv6: 3 its own address, 4 the one
/// derived from its MAC, 5 [`F_OTHER_V6`], 6 [`ROUTER_LLA`].
fn arb_f_src() -> impl Strategy<Value = u8> {
    prop_oneof![16 => Just(0u8), 4 => Just(3u8), 3 => Just(4u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(5u8), 1 => Just(6u8)]
}

/// The drop reason (as the port counts it) that f's spoof filters `ff` give the frame its host
/// sends from source `src` ([`arb_f_src`]) as `how` ([`trunk_frame`]), worked out from the
/// lists alone: `None` when they pass it.
fn f_refusal(ff: &TrunkFilters, src: u8, how: u8) -> Option<&'static str> {
    use std::net::IpAddr;
    let (_, _, own_mac, own_v4) = HOSTS[F_HOST];
    // A priority tag takes the native VLAN, which the trunk has none of: refused before the
    // spoof filters; a malformed IP header names no source.
    if how == 13 {
        return None;
    }
    let smac = if src == 1 { F_OTHER_MAC } else { own_mac };
    if ff.macs.as_ref().is_some_and(|l| !l.contains(&smac)) {
        return Some("spoofed_src_mac");
    }
    if how == 16 {
        return None;
    }
    let v4 = if src == 2 { F_OTHER_V4 } else { own_v4 };
    let listed = |a: IpAddr| ff.ips.as_ref().is_none_or(|l| l.contains(&a));
    if how == 14 {
        return (!listed(IpAddr::from(v4))).then_some("spoofed_arp_spa");
    }
    let ok = match f_v6_src(src) {
        None => listed(IpAddr::from(v4)),
        // The link-local address derived from the source MAC passes where the MAC was checked.
        Some(a) => listed(IpAddr::from(a.to_be_bytes())) || (ff.macs.is_some() && a == eui64(smac)),
    };
    (!ok).then_some("spoofed_src_ip")
}

/// The IPv6 source of f's host's frames from source `src` ([`arb_f_src`]), `None`: IPv4.
fn f_v6_src(src: u8) -> Option<u128> {
    match src {
        3 => Some(F_V6),
        4 => Some(eui64(HOSTS[F_HOST].2)),
        5 => Some(F_OTHER_V6),
        6 => Some(ROUTER_LLA),
        _ => None,
    }
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
/// `flags`; `how` 0-16: as the sending port would send it (tagged on a trunk, untagged on an
/// access port or in a native-untagged VLAN), and now and then otherwise: 12 PCP and DEI bits
/// in the tag, 13 a priority tag (VID 0), 14 an ARP request, 15 a stacked (QinQ) inner tag,
/// 16 a malformed IP header (IPv4 with a header length of 4 words). From f's host, `src`
/// ([`arb_f_src`]) picks the source (other hosts ignore it); an IPv6 packet goes to the
/// IPv6 address `fd00::` and the last byte of the peer's IPv4 address.
fn trunk_frame(from: usize, to: usize, conn: usize, orig: bool, flags: u8, how: u8, src: u8) -> Vec<u8> {
    let ((fp, vlan, mut smac, mut sip), (tp, _, dmac, dip)) = (HOSTS[from], HOSTS[to]);
    let mut v6 = None;
    if from == F_HOST {
        match src {
            1 => smac = F_OTHER_MAC,
            2 => sip = F_OTHER_V4,
            _ => v6 = f_v6_src(src),
        }
    }
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
        let b = etherparse::PacketBuilder::ethernet2(smac, dmac);
        let b = match v6 {
            Some(a) => b.ipv6(a.to_be_bytes(), (0xfd00 << 112 | u128::from(dip[3])).to_be_bytes(), 64),
            None => b.ipv4(sip, dip, 64),
        };
        write_conn(b, conn, flags, sport, dport, &mut v);
        if how == 16 {
            v[14] = 0x44;
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
/// with the odd frames mixed in (PCP bits, priority tags, ARP, stacked tags, malformed IP,
/// other VLANs); a VM's trunk `f` with random spoof filters (MAC and IPv4/IPv6 address lists,
/// some longer than the fast path's words, some without its own addresses) sending IPv4 and
/// IPv6 from its own and from foreign sources (its MAC-derived link-local address, its
/// router's); and on the same bridge without policies, where the spoof filters alone put the
/// bridge on the policy stage (no connection table). Both runs must queue the same frames to
/// the same ports in the same order and count the same drops; independently of either, a
/// frame from `f` whose source its lists do not allow is never delivered and is counted under
/// the reason the lists give ([`f_refusal`]); and the fast path must have taken a good share
/// of the tagged bursts, `f`'s among them with a connection table and without, so that the
/// comparison is not of the general stages with themselves.
#[test]
fn tagged_fast_path_matches_the_general_stages_on_trunks() {
    let pool = Pool::new("policy-fast-path-vlan", 1024).expect("pool");
    let (tagged_run, tagged_fast, retag_fast) =
        (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    // f's tagged bursts (with a connection table, without) and how many took the fast path.
    let f_runs = [std::cell::Cell::new((0u64, 0u64)), std::cell::Cell::new((0u64, 0u64))];
    // A burst: its sending host, then its frames (peer host, connection, direction, flags,
    // how, f's source); mostly a few connections between the uplinks' hosts and f's and a and
    // b, so that most are established; frames of one burst come from one host's port.
    let pkt = (0usize..HOSTS.len(), 0usize..4, any::<bool>(), prop_oneof![12 => Just(0u8), 1 => 1u8..5]);
    let how = prop_oneof![40 => Just(0u8), 1 => 12u8..17];
    let burst = (
        prop_oneof![4 => Just(0usize), 4 => 4usize..6, 1 => 1usize..4, 1 => Just(6usize), 3 => Just(F_HOST)],
        prop::collection::vec((pkt, how, arb_f_src()), 1..8),
    );
    let stream = prop::collection::vec(burst, 1..80);
    // One case in four without any policy: the spoof filters alone, no connection table (an
    // OVN localnet's VM ports beside its uplink).
    let shapes = prop_oneof![1 => Just([0usize; 4]), 3 => prop::array::uniform4(0usize..RULES.len())];
    let strategy = (shapes, arb_trunk_filters(), stream);
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let cases = ProptestConfig { cases: n, source_file: Some(file!()), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(cases);
    let (spoof_only_run, spoof_only_fast) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let result = runner.run(&strategy, |(shapes, ff, stream)| {
        let cfg = trunk_config(shapes, &ff);
        let sws = [
            SwitchConfig::compile(&cfg, None).expect("compile"),
            SwitchConfig::compile(&cfg, None).expect("compile"),
        ];
        let learned = HOSTS.map(|(port, vlan, mac, _)| (port, vlan, mac));
        for sw in &sws {
            for (port, vlan, mac) in learned.into_iter().chain([(HOSTS[F_HOST].0, 10, F_OTHER_MAC)]) {
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
            // The peers: four in five of the uplinks' VLAN-10 hosts' frames go to a or b, of
            // f's host's to u's (a router's uplink, no policy on either) or a, of a's and b's to
            // the uplinks' VLAN-10 hosts (f's host when they pick it), of the VLAN-20 hosts' to
            // each other (those of connections the policies track), the rest to any host.
            let made: Vec<(Vec<u8>, u8, u8)> = pkts
                .iter()
                .map(|((to, conn, orig, flags), how, src)| {
                    let near: [usize; 2] = match *from {
                        0 | 2 => [4, 5],
                        F_HOST => [0, 4],
                        4 | 5 => [0, 2],
                        1 => [6, 3],
                        _ => [1, 1],
                    };
                    let to = if to % 5 == 0 || (matches!(*from, 4 | 5) && *to == F_HOST) {
                        *to
                    } else {
                        near[to % 2]
                    };
                    (trunk_frame(*from, to, *conn, *orig, *flags, *how, *src), *how, *src)
                })
                .collect();
            let frames: Vec<Vec<u8>> = made.iter().map(|(f, _, _)| f.clone()).collect();
            let name = TRUNK_PORTS[HOSTS[*from].0];
            let before = switchyard_dataplane::pipeline::plain_bursts_on_this_thread();
            let fast = run(&sws[0], &pool, name, &frames, now, false);
            let took_fast = switchyard_dataplane::pipeline::plain_bursts_on_this_thread() > before;
            let general = run(&sws[1], &pool, name, &frames, now, true);
            prop_assert_eq!(&fast, &general, "burst {} from {} (fast path taken: {})", i, name, took_fast);
            let tagged = frames[0].get(12..14) == Some(&[0x81, 0x00]);
            let no_ct = sws[0].bridges[0].conntrack.is_none();
            if tagged {
                tagged_run.set(tagged_run.get() + 1);
                tagged_fast.set(tagged_fast.get() + u64::from(took_fast));
                if no_ct {
                    spoof_only_run.set(spoof_only_run.get() + 1);
                    spoof_only_fast.set(spoof_only_fast.get() + u64::from(took_fast));
                }
            } else if took_fast && fast.0.iter().any(|(p, _)| p == "u") {
                retag_fast.set(retag_fast.get() + 1);
            }
            if *from == F_HOST {
                // f's spoof filters, written out from its lists: a refused frame does not
                // leave (tagged, or popped to an access port), and is counted.
                let (out, drops) = &fast;
                let mut expected: BTreeMap<String, u64> = BTreeMap::new();
                for (f, how, src) in &made {
                    if let Some(r) = f_refusal(&ff, *src, *how) {
                        *expected.entry(r.to_string()).or_default() += 1;
                        let popped = [&f[..12], &f[16..]].concat();
                        prop_assert!(
                            !out.iter().any(|(_, o)| *o == *f || *o == popped),
                            "a frame from f's host refused for {} left (source {}, how {})",
                            r,
                            src,
                            how
                        );
                    }
                }
                let counted: BTreeMap<String, u64> = drops
                    .iter()
                    .filter(|(r, _)| r.starts_with("spoofed_"))
                    .map(|(r, n)| (r.clone(), *n))
                    .collect();
                prop_assert_eq!(counted, expected, "spoofed frames from f's host, filters {:?}", &ff);
                if tagged {
                    let c = &f_runs[usize::from(no_ct)];
                    let (r, t) = c.get();
                    c.set((r + 1, t + u64::from(took_fast)));
                }
            }
        }
        // Every port's counters (bytes sent included) and the tables, once the stream ran.
        let end = 1 + (stream.len() as u32 - 1) / 16;
        prop_assert_eq!(state(&sws[0], end), state(&sws[1], end), "counters and tables");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (t, f, r) = (tagged_run.get(), tagged_fast.get(), retag_fast.get());
    assert!(f * 20 >= t, "the fast path took {f} of {t} tagged bursts");
    let (st, sf) = (spoof_only_run.get(), spoof_only_fast.get());
    assert!(
        sf * 20 >= st && sf > 0,
        "the fast path took {sf} of {st} tagged bursts without a connection table"
    );
    assert!(r > 0, "no untagged burst to the uplink took the fast path (its tags pushed)");
    for (c, table) in f_runs.iter().zip(["with", "without"]) {
        let (fr, ft) = c.get();
        assert!(
            ft * 20 >= fr && ft > 0,
            "the fast path took {ft} of {fr} tagged bursts from the spoof-filtered trunk f {table} a connection table"
        );
    }
}

// The fast path on trunks, case by case (what the random streams above leave to chance or do
// not look at): each burst runs through two switches of one config, untraced (the fast path
// where it applies) and traced (the general stages alone), which must send the same frames and
// end with the same port counters (bytes sent included), MAC tables and connection tables.

/// What one burst did on the untraced switch: frames sent (egress port name, bytes), the
/// drops counted on the sending port, and whether the fast path took it.
struct Done {
    out: Out,
    drops: BTreeMap<String, u64>,
    fast: bool,
}

/// Two switches of one config whose MAC tables were taught the same hosts, for [`Twins::burst`].
struct Twins {
    sws: [SwitchConfig; 2],
    pool: Pool,
}

impl Twins {
    /// `learn`: (VLAN, MAC, port name), learned at second 1.
    fn new(yaml: &str, learn: &[(u16, [u8; 6], &str)]) -> Twins {
        let cfg = Config::from_yaml_str(yaml).expect("valid config");
        let sws = [
            SwitchConfig::compile(&cfg, None).expect("compile"),
            SwitchConfig::compile(&cfg, None).expect("compile"),
        ];
        for sw in &sws {
            for &(vlan, mac, port) in learn {
                let id = sw.port_by_name(port).expect("port").id;
                sw.bridges[0].table.learn(vlan, switchyard_dataplane::wire::MacAddr(mac), id, 1, u32::MAX);
            }
        }
        Twins { sws, pool: Pool::new("policy-fast-path-twins", 512).expect("pool") }
    }

    /// Runs `frames` from port `from` at second `now` through both switches (the frames at
    /// the indices in `no_headroom` in buffers without headroom), sends what they queued, and
    /// checks that both sent the same frames and have the same port counters, MAC table and
    /// connection table (whose entries a trace's run stores without verdicts: compared
    /// without them).
    fn burst(&self, from: &str, frames: &[Vec<u8>], no_headroom: &[usize], now: u32) -> Done {
        let plain = switchyard_dataplane::pipeline::plain_bursts_on_this_thread();
        let (out, drops) = run_with(&self.sws[0], &self.pool, from, frames, no_headroom, now, false);
        let fast = switchyard_dataplane::pipeline::plain_bursts_on_this_thread() > plain;
        let general = run_with(&self.sws[1], &self.pool, from, frames, no_headroom, now, true);
        let what = format!("burst from {from} at {now} (fast path taken: {fast})");
        assert_eq!((&out, &drops), (&general.0, &general.1), "frames and drops, {what}");
        let (a, b) = (state(&self.sws[0], now), state(&self.sws[1], now));
        assert_eq!(a.0, b.0, "port counters, {what}");
        assert_eq!(a.1, b.1, "MAC tables, {what}");
        assert_eq!(a.2, b.2, "connection tables, {what}");
        Done { out, drops, fast }
    }
}

/// A TCP segment `flags` ("syn", "synack", "ack") between two hosts, IPv4 when the addresses
/// are, else IPv6 (`payload`: its data, to tell frames apart).
fn seg(
    smac: [u8; 6],
    dmac: [u8; 6],
    sip: &[u8],
    dip: &[u8],
    ports: (u16, u16),
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac);
    let b = match (<[u8; 4]>::try_from(sip), <[u8; 4]>::try_from(dip)) {
        (Ok(s), Ok(d)) => b.ipv4(s, d, 64),
        _ => b.ipv6(sip.try_into().expect("IPv6"), dip.try_into().expect("IPv6"), 64),
    };
    let b = b.tcp(ports.0, ports.1, 1, 1000);
    let b = match flags {
        "syn" => b.syn(),
        "synack" => b.syn().ack(2),
        _ => b.ack(2),
    };
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("frame");
    v
}

/// A UDP datagram between two IPv4 hosts.
fn dgram(
    smac: [u8; 6],
    dmac: [u8; 6],
    sip: [u8; 4],
    dip: [u8; 4],
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(sip, dip, 64)
        .udp(ports.0, ports.1)
        .write(&mut v, payload)
        .expect("frame");
    v
}

/// `f` with an 802.1Q tag of TCI `tci` behind its addresses.
fn tagged(f: &[u8], tci: u16) -> Vec<u8> {
    [&f[..12], &[0x81, 0x00], &tci.to_be_bytes()[..], &f[12..]].concat()
}

fn sent(port: &str, f: Vec<u8>) -> (String, Vec<u8>) {
    (port.to_string(), f)
}

/// Two VLANs of an uplink hold the same addresses (two VM networks on one trunk): a
/// connection is one VLAN's on the fast path too, whose key takes the VLAN of the burst's tag.
/// `n` is a native-untagged trunk (VLAN 10 untagged, 20 tagged): a's connection to n's VLAN-10
/// host; then n's VLAN-20 host, with the same addresses and ports, sends "the reply" tagged 20
/// to c (a's address on VLAN 20, ingress closed): no reply of any connection of VLAN 20, so c
/// refuses it. The same connection opened on VLAN 20 passes its tagged replies on the fast
/// path (their tags popped), and a tagged frame of n's native VLAN is popped to a. IPv4 (the
/// key read straight from the header) and IPv6 (through the general parser at the tag's end).
/// Fails with the fast path's keys made in the VLAN the port admits untagged frames into
/// (`FastKeys::new(port, cx, untagged_vlan.unwrap_or(vlan))` in `policy_fast`).
#[test]
fn a_connection_is_one_vlans_on_an_uplink() {
    let yaml = "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
                \x20 - {name: n, vlan_mode: native-untagged, tag: 10, trunks: [10, 20]}\n\
                \x20 - {name: a, tag: 10, policy: {ingress: {rules: []}}}\n\
                \x20 - {name: c, tag: 20, policy: {ingress: {rules: []}}}\n";
    const N10: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const N20: [u8; 6] = [2, 0, 0, 0, 0, 0x20];
    const A: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
    const C: [u8; 6] = [2, 0, 0, 0, 1, 0x0c];
    let tw = Twins::new(yaml, &[(10, N10, "n"), (20, N20, "n"), (10, A, "a"), (20, C, "c")]);
    let v6 = |last: u8| [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last];
    let families: [(Vec<u8>, Vec<u8>); 2] =
        [(vec![10, 0, 0, 1], vec![10, 0, 0, 100]), (v6(1).to_vec(), v6(100).to_vec())];
    for (k, (near, far)) in families.iter().enumerate() {
        // a (and c, on VLAN 20) at `near`, n's two hosts at `far`; one connection's ports.
        let cl = (40000 + k as u16, 80);
        let sv = (cl.1, cl.0);
        let out = |from: [u8; 6], to: [u8; 6], flags: &str| seg(from, to, near, far, cl, flags, b"");
        let back = |from: [u8; 6], to: [u8; 6], flags: &str| seg(from, to, far, near, sv, flags, b"");
        // VLAN 10: a connects to n's host; untagged both ways.
        for (from, f, to) in [
            ("a", out(A, N10, "syn"), "n"),
            ("n", back(N10, A, "synack"), "a"),
            ("a", out(A, N10, "ack"), "n"),
        ] {
            let d = tw.burst(from, std::slice::from_ref(&f), &[], 1);
            assert_eq!((d.out, d.drops.len()), (vec![sent(to, f)], 0), "family {k}");
        }
        let f = back(N10, A, "ack");
        let d = tw.burst("n", &[f.clone(), f.clone()], &[], 1);
        assert_eq!((d.out, d.fast), (vec![sent("a", f.clone()), sent("a", f.clone())], true), "family {k}");
        // VLAN 20: the same addresses and ports, no connection of its own yet.
        let d = tw.burst("n", &[tagged(&back(N20, C, "ack"), 20)], &[], 1);
        assert_eq!(
            (d.out.len(), d.drops),
            (0, BTreeMap::from([("policy_ingress_denied".to_string(), 1)])),
            "family {k}"
        );
        // The native VLAN tagged: popped to a, on the fast path.
        let d = tw.burst("n", &[tagged(&f, 10), tagged(&f, 0x6000 | 10)], &[], 1);
        assert_eq!((d.out, d.fast), (vec![sent("a", f.clone()), sent("a", f)], true), "family {k}");
        // c opens the same connection on VLAN 20: its replies pass, popped, on the fast path.
        for (from, f, to) in [
            ("c", out(C, N20, "syn"), ("n", tagged(&out(C, N20, "syn"), 20))),
            ("n", tagged(&back(N20, C, "synack"), 20), ("c", back(N20, C, "synack"))),
            ("c", out(C, N20, "ack"), ("n", tagged(&out(C, N20, "ack"), 20))),
        ] {
            let d = tw.burst(from, &[f], &[], 1);
            assert_eq!((d.out, d.drops.len()), (vec![sent(to.0, to.1)], 0), "family {k}");
        }
        let f = back(N20, C, "ack");
        let d = tw.burst("n", &[tagged(&f, 20), tagged(&f, 0xa000 | 20)], &[], 1);
        assert_eq!((d.out, d.fast), (vec![sent("c", f.clone()), sent("c", f)], true), "family {k}");
        // And c's packets to n's VLAN-20 host get their tags pushed, on the fast path.
        let f = out(C, N20, "ack");
        let d = tw.burst("c", std::slice::from_ref(&f), &[], 1);
        assert_eq!((d.out, d.fast), (vec![sent("n", tagged(&f, 20))], true), "family {k}");
    }
}

/// A VM's burst to an uplink's host on the fast path has its tags pushed only once every
/// frame passed; a frame without headroom for the tag leaves the whole burst to the general
/// stages, which send the others and count it `no_buffer`. In a new second, so that the fast
/// path's connection lookups (stage 3, before the tags) moved the entries' expiries on before
/// it gave up: the general stages must then find and leave the table as they would alone.
/// Fails with the burst queued untagged when the push is refused (`None => {}` for
/// `route.retag_runs`'s `None` in `policy_fast`), or with the bytes sent counted before the
/// push (`route.queue(eg, burst, bytes)`).
#[test]
fn a_push_without_headroom_leaves_the_burst_to_the_general_stages() {
    let yaml = "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
                \x20 - {name: u, trunks: [10]}\n\
                \x20 - name: a\n    tag: 10\n    static_macs: ['02:00:00:00:01:0a']\n\
                \x20   allowed_macs: ['02:00:00:00:01:0a']\n    allowed_ips: [10.0.0.1]\n\
                \x20   policy: {ingress: {rules: []}}\n";
    const U: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const A: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
    let tw = Twins::new(yaml, &[(10, U, "u")]);
    let (a, u) = ([10, 0, 0, 1], [10, 0, 0, 100]);
    let out = |flags: &str, data: &[u8]| seg(A, U, &a, &u, (40000, 80), flags, data);
    let d = tw.burst("a", &[out("syn", b"")], &[], 1);
    assert_eq!(d.out, vec![sent("u", tagged(&out("syn", b""), 10))]);
    let synack = seg(U, A, &u, &a, (80, 40000), "synack", b"");
    let d = tw.burst("u", &[tagged(&synack, 10)], &[], 1);
    assert_eq!(d.out, vec![sent("a", synack)]);
    let d = tw.burst("a", &[out("ack", b"")], &[], 1);
    assert_eq!(d.out.len(), 1);
    let frames: Vec<Vec<u8>> = (0..3u8).map(|i| out("ack", &[i; 8])).collect();
    let pushed: Out = frames.iter().map(|f| sent("u", tagged(f, 10))).collect();
    let d = tw.burst("a", &frames, &[], 1);
    assert_eq!((&d.out, d.fast), (&pushed, true));
    for now in [2, 3] {
        let d = tw.burst("a", &frames, &[1], now);
        let want: Out = vec![pushed[0].clone(), pushed[2].clone()];
        assert_eq!(
            (d.out, d.drops, d.fast),
            (want, BTreeMap::from([("no_buffer".to_string(), 1)]), false),
            "at {now}"
        );
        let d = tw.burst("a", &frames, &[], now);
        assert_eq!((&d.out, d.fast), (&pushed, true), "at {now}");
    }
}

/// An uplink's burst of 64 frames to three ports in turn, 64 runs: runs 0-31 alternate an
/// access port (tags popped) and a trunk (tags kept), runs 32-63 two access ports (all
/// popped), so that run k's retag bit differs from run k - 32's. On the fast path (the
/// connections established), the same frames as the general stages. Fails with the bits kept
/// in 32 (`<< (k % 32)` in `Runs::add`).
#[test]
fn an_uplinks_64_runs_keep_their_own_retag_bits() {
    let open = "policy: {ingress: {rules: [{name: r/any}]}}";
    let yaml = format!(
        "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
         \x20 - {{name: u, trunks: [10]}}\n\
         \x20 - {{name: a, tag: 10, {open}}}\n\
         \x20 - {{name: b, tag: 10, {open}}}\n\
         \x20 - {{name: t, trunks: [10], {open}}}\n"
    );
    const U: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const HOST: [([u8; 6], [u8; 4], &str, bool); 3] = [
        ([2, 0, 0, 0, 1, 0x0a], [10, 0, 0, 1], "a", false),
        ([2, 0, 0, 0, 1, 0x0b], [10, 0, 0, 2], "b", false),
        ([2, 0, 0, 0, 1, 0x0c], [10, 0, 0, 3], "t", true),
    ];
    let learn: Vec<(u16, [u8; 6], &str)> =
        [(10, U, "u")].into_iter().chain(HOST.iter().map(|h| (10, h.0, h.2))).collect();
    let tw = Twins::new(&yaml, &learn);
    let uip = [10, 0, 0, 100];
    let to = |h: usize, data: &[u8]| tagged(&dgram(U, HOST[h].0, uip, HOST[h].1, (5000, 53), data), 10);
    // The three connections, and their replies.
    let d = tw.burst("u", &[to(0, b"q"), to(1, b"q"), to(2, b"q")], &[], 1);
    assert_eq!(d.out.len(), 3);
    for (mac, ip, port, trunk) in HOST {
        let r = dgram(mac, U, ip, uip, (53, 5000), b"r");
        let r = if trunk { tagged(&r, 10) } else { r };
        assert_eq!(
            tw.burst(port, &[r], &[], 1).out,
            vec![sent("u", tagged(&dgram(mac, U, ip, uip, (53, 5000), b"r"), 10))]
        );
    }
    let dest = |k: usize| match (k < 32, k % 2) {
        (true, 0) => 0,
        (true, _) => 2,
        (false, 0) => 1,
        (false, _) => 0,
    };
    let frames: Vec<Vec<u8>> = (0..64).map(|k| to(dest(k), &[k as u8; 4])).collect();
    let d = tw.burst("u", &frames, &[], 1);
    assert!(d.fast, "the 64-run burst took the general stages");
    // Each port's frames in order: a's and b's popped, t's as they came.
    for (h, (_, _, port, trunk)) in HOST.iter().enumerate() {
        let want: Vec<Vec<u8>> = (0..64)
            .filter(|&k| dest(k) == h)
            .map(|k| if *trunk { frames[k].clone() } else { [&frames[k][..12], &frames[k][16..]].concat() })
            .collect();
        let got: Vec<Vec<u8>> = d.out.iter().filter(|(p, _)| p == port).map(|(_, f)| f.clone()).collect();
        assert_eq!(got, want, "to {port}");
    }
}

/// An uplink's tagged packets that are not simple IPv4 (the fast path reads them with the
/// general parser, at the tag's end): ICMP echo, IPv4 with options, non-first fragments, of
/// established connections, take the fast path and its tags are popped; a tagged runt, ARP
/// or a stacked tag among them leaves the burst to the general stages. The same frames,
/// counters and tables as the general stages' either way. Fails with the general parser read
/// at the untagged offset (`other_ip(port, d, crate::wire::ETH_HEADER_LEN, ..)` in
/// `FastKeys::push`).
#[test]
fn an_uplinks_tagged_icmp_options_and_fragments_take_the_fast_path() {
    let yaml = "bridges:\n- name: br0\n  conntrack_size: 1024\n  ports:\n\
                \x20 - {name: u, trunks: [10]}\n\
                \x20 - {name: a, tag: 10, policy: {ingress: {rules: [{name: r/any}]}}}\n";
    const U: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const A: [u8; 6] = [2, 0, 0, 0, 1, 0x0a];
    let (uip, aip) = ([10, 0, 0, 100], [10, 0, 0, 1]);
    let tw = Twins::new(yaml, &[(10, U, "u"), (10, A, "a")]);
    let icmp = |request: bool, seq: u16| {
        let b =
            etherparse::PacketBuilder::ethernet2(if request { U } else { A }, if request { A } else { U });
        let b = if request { b.ipv4(uip, aip, 64) } else { b.ipv4(aip, uip, 64) };
        let b = if request { b.icmpv4_echo_request(7, seq) } else { b.icmpv4_echo_reply(7, seq) };
        let mut v = Vec::new();
        b.write(&mut v, b"ping").expect("frame");
        v
    };
    // A UDP datagram with four bytes of IPv4 options (no-ops), and a non-first fragment.
    let options = |from_u: bool| {
        let f = if from_u {
            dgram(U, A, uip, aip, (5000, 53), b"q")
        } else {
            dgram(A, U, aip, uip, (53, 5000), b"r")
        };
        let mut v = [&f[..34], &[1, 1, 1, 1], &f[34..]].concat();
        v[14] = 0x46;
        let len = u16::from_be_bytes([v[16], v[17]]) + 4;
        v[16..18].copy_from_slice(&len.to_be_bytes());
        v
    };
    let fragment = |from_u: bool| {
        let mut f = if from_u {
            dgram(U, A, uip, aip, (6000, 69), b"q")
        } else {
            dgram(A, U, aip, uip, (69, 6000), b"r")
        };
        f[20..22].copy_from_slice(&[0, 8]);
        f
    };
    // Each: the uplink's packet and the VM's answer.
    let cases = [
        ("icmp echo", icmp(true, 1), icmp(false, 1)),
        ("ip options", options(true), options(false)),
        ("fragment", fragment(true), fragment(false)),
    ];
    for (what, req, rep) in &cases {
        // The connection: the uplink's packet (checked), the VM's answer (a reply, pushed).
        let d = tw.burst("u", &[tagged(req, 10)], &[], 1);
        assert_eq!((d.out, d.drops.len()), (vec![sent("a", req.clone())], 0), "{what}");
        let d = tw.burst("a", std::slice::from_ref(rep), &[], 1);
        assert_eq!((d.out, d.drops.len()), (vec![sent("u", tagged(rep, 10))], 0), "{what}");
        // Established: popped on the fast path.
        let d = tw.burst("u", &[tagged(req, 10), tagged(req, 0x2000 | 10)], &[], 1);
        assert_eq!((d.out, d.fast), (vec![sent("a", req.clone()), sent("a", req.clone())], true), "{what}");
    }
    // Each with a frame the fast path does not take: a tagged runt (the tag and an IPv4
    // EtherType, nothing behind), an ARP request, an IPv4 packet behind a second tag.
    let req = &cases[0].1;
    let runt = tagged(req, 10)[..20].to_vec();
    let mut arp =
        [&[0xff; 6][..], &U, &[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1], &U, &uip, &[0; 6], &aip].concat();
    arp = tagged(&arp, 10);
    let stacked = tagged(&tagged(req, 10), 10);
    for odd in [runt, arp, stacked] {
        let d = tw.burst("u", &[tagged(req, 10), odd.clone(), tagged(req, 10)], &[], 1);
        assert!(!d.fast, "{odd:?}");
    }
}
