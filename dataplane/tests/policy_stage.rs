//! The policy stage through the real `process_burst` (docs/policy.md): IP and ARP spoof
//! filters, egress and ingress policies, connection tracking (TCP replies, UDP replies, ICMP
//! errors related to a tracked flow, neighbour discovery), a full table failing closed, and
//! a policy change while a connection is open. Frames are built with etherparse; every drop
//! is checked by its counter on the sending port.
// Built only with debug assertions (the tests' profile): several cases check that the fast
// path ran, which the pipeline counts only there.
#![cfg(debug_assertions)]

#[path = "support/drops.rs"]
mod support;

use etherparse::PacketBuilder;
use std::collections::BTreeMap;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, FrameTrace, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::{Pool, SwitchConfig};

const MAC: [[u8; 6]; 3] = [[2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 0xc]];
const IP: [[u8; 4]; 3] = [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]];

/// a: ingress deny-all; egress to b on TCP 80, and anything to c.
/// b: ingress from a on TCP 80 (or `b_ingress` in its place); egress open.
/// c: no policy, an IP spoof filter.
/// Ports `a` and `c` have IP spoof filters without MAC spoof filters: their EUI-64 link-local
/// addresses are listed, as the plan lists them for such ports.
fn config(b_ingress: &str, ct_size: usize) -> Config {
    let yaml = format!(
        r#"
bridges:
- name: br0
  conntrack_size: {ct_size}
  ports:
  - name: a
    static_macs: ['02:00:00:00:00:0a']
    allowed_ips: [10.0.0.1, 'fd00::1', 'fe80::ff:fe00:a']
    policy:
      ingress: {{rules: []}}
      egress:
        rules:
        - {{name: p/a-to-b-web, peers: [{{cidr: 10.0.0.2/32}}], ports: [{{protocol: TCP, port: 80}}]}}
        - {{name: p/a-to-c, peers: [{{cidr: 10.0.0.3/32}}, {{cidr: 'fd00::3/128'}}]}}
  - name: b
    static_macs: ['02:00:00:00:00:0b']
    policy:
      ingress:
        rules:
        - {b_ingress}
  - name: c
    static_macs: ['02:00:00:00:00:0c']
    allowed_ips: [10.0.0.3, 'fd00::3', 'fe80::ff:fe00:c']
"#
    );
    Config::from_yaml_str(&yaml).expect("valid config")
}

const B_WEB: &str = "{name: q/b-web, peers: [{cidr: 10.0.0.1/32}], ports: [{protocol: TCP, port: 80}]}";

fn tcp(from: usize, to: usize, sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let b =
        PacketBuilder::ethernet2(MAC[from], MAC[to]).ipv4(IP[from], IP[to], 64).tcp(sport, dport, 1, 1000);
    let b = match flags {
        "syn" => b.syn(),
        "synack" => b.syn().ack(2),
        "ack" => b.ack(2),
        "rst" => b.rst(),
        _ => b,
    };
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("frame");
    v
}

fn udp_from(from: usize, src_ip: [u8; 4], to: usize, sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC[from], MAC[to])
        .ipv4(src_ip, IP[to], 64)
        .udp(sport, dport)
        .write(&mut v, b"q")
        .expect("frame");
    v
}

/// A UDP packet between any two MACs and IPv4 addresses.
fn udp_frame(
    src: [u8; 6],
    src_ip: [u8; 4],
    dst: [u8; 6],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4(src_ip, dst_ip, 64)
        .udp(sport, dport)
        .write(&mut v, b"q")
        .expect("frame");
    v
}

fn udp(from: usize, to: usize, sport: u16, dport: u16) -> Vec<u8> {
    udp_from(from, IP[from], to, sport, dport)
}

/// An ICMP port unreachable from `from` to `to` quoting `quoted` (a frame).
fn icmp_unreach(from: usize, to: usize, quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC[from], MAC[to])
        .ipv4(IP[from], IP[to], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut v, &quoted[14..14 + 28])
        .expect("frame");
    v
}

fn arp(from: usize, spa: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&MAC[from]);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&IP[0]);
    testkit::frame::Frame::new([0xff; 6], MAC[from]).ethertype(0x0806).payload(&p).build()
}

/// Runs one frame from port `from`: (ports it went to, drops counted on `from`, trace).
fn send(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frame: &[u8],
    now: u32,
) -> (Vec<String>, BTreeMap<String, u64>, FrameTrace) {
    let mut tr = Vec::new();
    let (out, drops) = run(sw, pool, from, frame, now, Some(&mut tr));
    (out, drops, tr.pop().expect("one trace"))
}

/// Runs one frame from port `from` (traced when `trace` is given): the ports it went to and
/// the drops counted on `from`.
fn run(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frame: &[u8],
    now: u32,
    trace: Option<&mut Vec<FrameTrace>>,
) -> (Vec<String>, BTreeMap<String, u64>) {
    let port = sw.port_by_name(from).expect("port");
    let before = port.stats.snapshot();
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut burst = Burst::new();
    burst.push(cache.alloc_copy(frame).expect("buffer"));
    process_burst(sw, port.id, &mut burst, now, &mut cache, &mut tx, trace);
    let mut out = Vec::new();
    tx.drain_with(|id, b| {
        out.push(sw.port(id).expect("port").name.clone());
        for buf in b.drain(..) {
            cache.free(buf);
        }
    });
    out.sort();
    (out, support::drops_since(&before, &port.stats.snapshot()))
}

/// Runs one untraced frame: (ports it went to, drops on `from`, whether it took the plain
/// stages, i.e. the policy stage's fast path).
fn run_fast(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frame: &[u8],
    now: u32,
) -> (Vec<String>, BTreeMap<String, u64>, bool) {
    let plain = switchyard_dataplane::pipeline::plain_bursts_on_this_thread();
    let (out, drops) = run(sw, pool, from, frame, now, None);
    (out, drops, switchyard_dataplane::pipeline::plain_bursts_on_this_thread() > plain)
}

/// One frame from port `from`, traced (the general stages alone: a trace uses no stored
/// verdicts) or not (the fast path first): (ports it went to, drops on `from`).
fn run_either(
    sw: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frame: &[u8],
    now: u32,
    traced: bool,
) -> (Vec<String>, BTreeMap<String, u64>) {
    if traced {
        let (out, drops, _) = send(sw, pool, from, frame, now);
        (out, drops)
    } else {
        run(sw, pool, from, frame, now, None)
    }
}

fn dropped(r: &str) -> BTreeMap<String, u64> {
    [(r.to_string(), 1)].into()
}

fn pool() -> Pool {
    Pool::new("policy-stage", 256).expect("pool")
}

#[test]
fn tcp_connect_reply_and_denials() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let (out, drops, tr) = send(&sw, &pool, "a", &tcp(0, 1, 40000, 80, "syn"), 10);
    assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "{}", tr.describe(&sw));
    let line = tr.describe(&sw);
    assert!(
        line.contains("egress-allowed-by=[p/a-to-b-web]") && line.contains("ingress-allowed-by=[q/b-web]"),
        "{line}"
    );
    // The reply passes a's deny-all ingress: it is a reply of a tracked connection.
    let (out, drops, tr) = send(&sw, &pool, "b", &tcp(1, 0, 80, 40000, "synack"), 11);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0));
    assert!(tr.describe(&sw).contains("policy=reply-of-tracked"));
    // Not port 80: a's egress refuses.
    let (out, drops, _) = send(&sw, &pool, "a", &tcp(0, 1, 40001, 81, "syn"), 12);
    assert_eq!((out.len(), drops), (0, dropped("policy_egress_denied")));
    // b opens a connection to a: a's ingress refuses (counted on b).
    let (out, drops, tr) = send(&sw, &pool, "b", &tcp(1, 0, 5555, 22, "syn"), 13);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "{}", tr.describe(&sw));
    // c to b:80: not a peer of b's rule.
    let (out, drops, _) = send(&sw, &pool, "c", &tcp(2, 1, 5555, 80, "syn"), 14);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")));
    // b to c: b's egress and c are open.
    let (out, drops, _) = send(&sw, &pool, "b", &tcp(1, 2, 5555, 443, "syn"), 15);
    assert_eq!((out, drops.len()), (vec!["c".to_string()], 0));
    // An RST from b closes the connection: 10 s later its replies are no longer let in.
    send(&sw, &pool, "b", &tcp(1, 0, 80, 40000, "rst"), 20);
    let (out, drops, _) = send(&sw, &pool, "b", &tcp(1, 0, 80, 40000, "ack"), 31);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")));
}

#[test]
fn udp_icmp_related_and_neighbor_discovery() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let query = udp(0, 2, 5353, 53);
    let (out, drops, _) = send(&sw, &pool, "a", &query, 10);
    assert_eq!((out, drops.len()), (vec!["c".to_string()], 0));
    let (out, drops, _) = send(&sw, &pool, "c", &udp(2, 0, 53, 5353), 11);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "UDP reply");
    let (out, drops, tr) = send(&sw, &pool, "c", &icmp_unreach(2, 0, &query), 12);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "{}", tr.describe(&sw));
    assert!(tr.describe(&sw).contains("related-to-tracked"));
    // An ICMP error about a flow never seen: a's ingress refuses it.
    let (out, drops, _) = send(&sw, &pool, "c", &icmp_unreach(2, 0, &udp(0, 2, 7777, 53)), 13);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")));
    // UDP without a reply expires after 30 s.
    let (_, drops, _) = send(&sw, &pool, "c", &udp(2, 0, 53, 5353), 11 + 121);
    assert_eq!(drops, dropped("policy_ingress_denied"), "replied UDP expires after 120 s");
    // Neighbour solicitation from a (egress isolated, to no allowed peer) passes.
    let mut ns = Vec::new();
    PacketBuilder::ethernet2(MAC[0], [0x33, 0x33, 0xff, 0, 0, 2])
        .ipv6(lla(MAC[0]), [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2], 255)
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut ns, &[0; 16])
        .expect("frame");
    let (out, drops, _) = send(&sw, &pool, "a", &ns, 14);
    assert_eq!((out.len(), drops.len()), (2, 0), "flooded to b and c");
}

#[test]
fn ip_and_arp_spoofing() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let (out, drops, _) = send(&sw, &pool, "c", &udp_from(2, [10, 0, 0, 99], 1, 1, 2), 1);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")));
    let (out, drops, _) = send(&sw, &pool, "c", &arp(2, [10, 0, 0, 99]), 1);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_arp_spa")));
    let (out, drops, _) = send(&sw, &pool, "c", &arp(2, IP[2]), 1);
    assert_eq!((out.len(), drops.len()), (2, 0), "its own address: flooded");
    let (_, drops, _) = send(&sw, &pool, "c", &udp_from(2, [0, 0, 0, 0], 1, 68, 68), 1);
    assert_eq!(drops, dropped("spoofed_src_ip"), "0.0.0.0 only for DHCP");
    // A cut IPv4 header on a filtering bridge.
    let cut = udp(2, 1, 1, 2)[..14 + 12].to_vec();
    let (out, drops, _) = send(&sw, &pool, "c", &cut, 1);
    assert_eq!((out.len(), drops), (0, dropped("malformed_ip")));
}

/// A table that cannot take more connections drops new ones (counted), and still passes the
/// replies of the ones it holds.
#[test]
fn full_table_fails_closed() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1), None).unwrap(), pool());
    let (out, _, _) = send(&sw, &pool, "a", &udp(0, 2, 1000, 53), 1);
    assert_eq!(out, vec!["c".to_string()]);
    let mut full = 0;
    for p in 1001..4000u16 {
        let (out, drops, _) = send(&sw, &pool, "a", &udp(0, 2, p, 53), 1);
        if out.is_empty() {
            assert_eq!(drops, dropped("conntrack_full"));
            full += 1;
        }
    }
    assert!(full > 0, "the table filled");
    let (out, _, _) = send(&sw, &pool, "c", &udp(2, 0, 53, 1000), 2);
    assert_eq!(out, vec!["a".to_string()], "a tracked connection's reply still passes");
}

/// b's ingress changes from "a on TCP 80" to "a on TCP 443" while a connection to port 80 is
/// open: as in OVN-Kubernetes, the next packet a sends on it is refused, the connection is
/// marked blocked, and b's replies stop too.
#[test]
fn policy_change_cuts_an_open_connection() {
    let pool = pool();
    let first = SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap();
    send(&first, &pool, "a", &tcp(0, 1, 40000, 80, "syn"), 1);
    let (out, _, _) = send(&first, &pool, "b", &tcp(1, 0, 80, 40000, "synack"), 2);
    assert_eq!(out, vec!["a".to_string()]);
    let other = "{name: q/b-tls, peers: [{cidr: 10.0.0.1/32}], ports: [{protocol: TCP, port: 443}]}";
    let second = SwitchConfig::compile(&config(other, 1024), Some(&first)).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(
            second.bridges[0].conntrack.as_ref().unwrap(),
            first.bridges[0].conntrack.as_ref().unwrap()
        ),
        "the table survives the change"
    );
    // b's reply still passes until a sends again (a's own egress still allows port 80).
    let (out, _, _) = send(&second, &pool, "b", &tcp(1, 0, 80, 40000, "ack"), 3);
    assert_eq!(out, vec!["a".to_string()]);
    let (out, drops, _) = send(&second, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 4);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")));
    let (out, drops, _) = send(&second, &pool, "b", &tcp(1, 0, 80, 40000, "ack"), 5);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "blocked: replies stop");
}

/// The fast path for established connections (the entry's stored verdict stands for the
/// classifiers): it is taken once a connection's verdict is stored, for both directions, and
/// never across a policy change: the next packet after the change is checked against the new
/// policy (refused here), and then neither direction takes it.
#[test]
fn established_fast_path_follows_policy_changes() {
    let pool = pool();
    let first = SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap();
    let (out, _, fast) = run_fast(&first, &pool, "a", &tcp(0, 1, 40000, 80, "syn"), 1);
    assert_eq!((out, fast), (vec!["b".to_string()], false), "a new connection is checked");
    let (out, _, fast) = run_fast(&first, &pool, "b", &tcp(1, 0, 80, 40000, "synack"), 1);
    assert_eq!((out, fast), (vec!["a".to_string()], false), "the reply moves the state on");
    let (out, _, fast) = run_fast(&first, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 1);
    assert_eq!((out, fast), (vec!["b".to_string()], true), "established, verdict stored");
    let (out, _, fast) = run_fast(&first, &pool, "b", &tcp(1, 0, 80, 40000, "ack"), 1);
    assert_eq!((out, fast), (vec!["a".to_string()], true), "a reply needs no verdict");
    // A second later the expiry moves on: the fast path makes that write itself.
    let key = switchyard_dataplane::wire::ip::FlowKey {
        src: u128::from(u32::from_be_bytes(IP[0])),
        dst: u128::from(u32::from_be_bytes(IP[1])),
        sport: 40000,
        dport: 80,
        proto: 6,
        v4: true,
        vlan: 0,
    };
    let ct = first.bridges[0].conntrack.clone().expect("a table");
    assert_eq!(ct.lookup(&key, 1).map(|f| f.expires), Some(1 + 432_000));
    let (out, _, fast) = run_fast(&first, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 2);
    assert_eq!((out, fast), (vec!["b".to_string()], true), "the expiry moves on once a second");
    assert_eq!(ct.lookup(&key, 2).map(|f| f.expires), Some(2 + 432_000), "refreshed by the fast path");
    let (out, _, fast) = run_fast(&first, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 2);
    assert_eq!((out, fast), (vec!["b".to_string()], true));
    // c sending with a's address on a's established connection: the spoof filter drops it.
    let mut spoofed = Vec::new();
    PacketBuilder::ethernet2(MAC[2], MAC[1])
        .ipv4(IP[0], IP[1], 64)
        .tcp(40000, 80, 1, 1000)
        .ack(2)
        .write(&mut spoofed, &[])
        .expect("frame");
    let (out, drops, fast) = run_fast(&first, &pool, "c", &spoofed, 2);
    assert_eq!((out.len(), drops, fast), (0, dropped("spoofed_src_ip"), false));
    // The same policy compiled again (a new snapshot): checked once, then fast again.
    let same = SwitchConfig::compile(&config(B_WEB, 1024), Some(&first)).unwrap();
    let (out, _, fast) = run_fast(&same, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 2);
    assert_eq!((out, fast), (vec!["b".to_string()], false), "a new snapshot checks again");
    let (out, _, fast) = run_fast(&same, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 2);
    assert_eq!((out, fast), (vec!["b".to_string()], true));
    // b now takes only TCP 443 from a: the open connection is cut at its next packet.
    let other = "{name: q/b-tls, peers: [{cidr: 10.0.0.1/32}], ports: [{protocol: TCP, port: 443}]}";
    let second = SwitchConfig::compile(&config(other, 1024), Some(&same)).unwrap();
    let (out, drops, fast) = run_fast(&second, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 2);
    assert_eq!((out.len(), drops, fast), (0, dropped("policy_ingress_denied"), false));
    let (out, drops, fast) = run_fast(&second, &pool, "b", &tcp(1, 0, 80, 40000, "ack"), 2);
    assert_eq!((out.len(), drops, fast), (0, dropped("policy_ingress_denied"), false), "blocked");
    let (out, drops, fast) = run_fast(&second, &pool, "a", &tcp(0, 1, 40000, 80, "ack"), 2);
    assert_eq!((out.len(), drops, fast), (0, dropped("policy_ingress_denied"), false));
}

fn v6(i: u8) -> [u8; 16] {
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i]
}

/// The IPv6 link-local address SLAAC derives from `mac` (modified EUI-64).
fn lla(mac: [u8; 6]) -> [u8; 16] {
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
}

/// IPv6: TCP and ICMPv6 echo from a to c through a's egress rule and back as replies; c's
/// spoof filter refuses another global source and lets a link-local one through.
#[test]
fn ipv6_tracking_and_spoofing() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let tcp6 = |from: usize, src: [u8; 16], to: usize, dst: [u8; 16], sp: u16, dp: u16, synack: bool| {
        let b = PacketBuilder::ethernet2(MAC[from], MAC[to]).ipv6(src, dst, 64).tcp(sp, dp, 1, 1000);
        let b = if synack { b.syn().ack(2) } else { b.syn() };
        let mut v = Vec::new();
        b.write(&mut v, &[]).expect("frame");
        v
    };
    let (out, drops, _) = send(&sw, &pool, "a", &tcp6(0, v6(1), 2, v6(3), 40000, 22, false), 1);
    assert_eq!((out, drops.len()), (vec!["c".to_string()], 0));
    let (out, drops, tr) = send(&sw, &pool, "c", &tcp6(2, v6(3), 0, v6(1), 22, 40000, true), 2);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "{}", tr.describe(&sw));
    // A new connection from c to a: a's ingress refuses it.
    let (out, drops, _) = send(&sw, &pool, "c", &tcp6(2, v6(3), 0, v6(1), 23, 40000, false), 3);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")));
    let echo = |from: usize, src: [u8; 16], to: usize, dst: [u8; 16], reply: bool| {
        let b = PacketBuilder::ethernet2(MAC[from], MAC[to]).ipv6(src, dst, 64);
        let b = if reply { b.icmpv6_echo_reply(9, 1) } else { b.icmpv6_echo_request(9, 1) };
        let mut v = Vec::new();
        b.write(&mut v, &[1, 2, 3]).expect("frame");
        v
    };
    let (out, _, _) = send(&sw, &pool, "a", &echo(0, v6(1), 2, v6(3), false), 4);
    assert_eq!(out, vec!["c".to_string()]);
    let (out, drops, tr) = send(&sw, &pool, "c", &echo(2, v6(3), 0, v6(1), true), 5);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "{}", tr.describe(&sw));
    assert!(tr.describe(&sw).contains("reply-of-tracked"));
    // c's spoof filter: another global address is refused, its link-local passes (then b's
    // ingress policy refuses it, as anything not from a).
    let (_, drops, _) = send(&sw, &pool, "c", &tcp6(2, v6(0x99), 1, v6(2), 1, 80, false), 6);
    assert_eq!(drops, dropped("spoofed_src_ip"));
    let (_, drops, _) = send(&sw, &pool, "c", &tcp6(2, lla(MAC[2]), 1, v6(2), 1, 80, false), 6);
    assert_eq!(drops, dropped("policy_ingress_denied"));
}

/// A burst that passed the fast path's checks against its destinations' ports, whose own
/// learning then forgets a destination (a move refused at the sending port's `mac_limit`
/// removes the stale entry, so that the MAC floods): the flood's copies are checked against
/// every port's ingress policy, as the general stages check them. x is a MAC that port a may
/// send from (`allowed_macs`) but has not learned (a is at its limit of one), learned behind
/// p; q refuses everything.
#[test]
fn a_fast_burst_whose_learning_forgets_its_destination_floods_checked() {
    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const X: [u8; 6] = [2, 0, 0, 0, 0, 0x77];
    const Q: [u8; 6] = [2, 0, 0, 0, 0, 0x71];
    let yaml = r#"
bridges:
- name: br0
  conntrack_size: 64
  ports:
  - name: a
    allowed_macs: ['02:00:00:00:00:0a', '02:00:00:00:00:77']
    allowed_ips: [10.0.0.1]
    mac_limit: 1
  - name: p
    policy:
      ingress:
        rules:
        - {name: n/p-dns, peers: [{cidr: 10.0.0.1/32}], ports: [{protocol: UDP, port: 53}]}
  - name: q
    static_macs: ['02:00:00:00:00:71']
    policy:
      ingress: {rules: []}
"#;
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid config"), None).unwrap();
    let pool = pool();
    let frame = udp_frame;
    // x learned behind p (its flood copy to q refused, to a not checked: a has no policy).
    let (out, _) = run(&sw, &pool, "p", &frame(X, [10, 0, 0, 9], Q, [10, 0, 0, 7], 53, 9), 1, None);
    assert!(out.is_empty(), "q refuses it: {out:?}");
    // a learns its own MAC (its one), then opens a connection to x behind p, established.
    let dns = frame(A, [10, 0, 0, 1], X, [10, 0, 0, 9], 5000, 53);
    let (out, drops) = run(&sw, &pool, "a", &dns, 1, None);
    assert_eq!((out, drops.len()), (vec!["p".to_string()], 0));
    let (out, _, fast) = run_fast(&sw, &pool, "a", &dns, 1);
    assert_eq!((out, fast), (vec!["p".to_string()], true), "established: the fast path");
    // One burst: a frame of the connection from x's MAC (a refused move: x forgotten), then one
    // from a's. Both were checked against p; both now flood, q's copies refused.
    let port = sw.port_by_name("a").expect("port");
    let before = port.stats.snapshot();
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut burst = Burst::new();
    burst.push(cache.alloc_copy(&frame(X, [10, 0, 0, 1], X, [10, 0, 0, 9], 5000, 53)).expect("buffer"));
    burst.push(cache.alloc_copy(&dns).expect("buffer"));
    process_burst(&sw, port.id, &mut burst, 1, &mut cache, &mut tx, None);
    let mut out = Vec::new();
    tx.drain_with(|id, b| {
        for buf in b.drain(..) {
            out.push(sw.port(id).expect("port").name.clone());
            cache.free(buf);
        }
    });
    out.sort();
    let drops = support::drops_since(&before, &port.stats.snapshot());
    assert_eq!(
        sw.bridges[0].table.lookup(0, switchyard_dataplane::wire::MacAddr(X), 1).map(|h| h.port),
        None,
        "forgotten"
    );
    assert_eq!(out, vec!["p".to_string(), "p".to_string()], "q gets no copy");
    assert_eq!(drops, [("policy_ingress_denied".to_string(), 2)].into());
}

/// A connection's first packet flooded (its destination not learned yet): a port whose ingress
/// policy refuses it gets no copy, and that refusal does not cut the connection that the port
/// which took it may answer (each port's refusal is about that port, as OVN's per-port
/// connection zones keep it). Member order decides nothing: q refuses before and after p.
#[test]
fn a_flood_refused_by_one_port_keeps_the_connection_for_another() {
    for q_first in [false, true] {
        let (p, q) = (
            "  - name: p\n    policy:\n      ingress:\n        rules:\n        - {name: n/from-a, peers: [{cidr: 10.0.0.1/32}]}\n",
            "  - name: q\n    policy:\n      ingress: {rules: []}\n",
        );
        let yaml = format!(
            "bridges:\n- name: br0\n  conntrack_size: 64\n  ports:\n  - name: a\n    allowed_ips: [10.0.0.1]\n    policy:\n      ingress: {{rules: []}}\n{}{}",
            if q_first { q } else { p },
            if q_first { p } else { q },
        );
        let sw = SwitchConfig::compile(&Config::from_yaml_str(&yaml).expect("valid config"), None).unwrap();
        let pool = pool();
        let frame = udp_frame;
        const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
        const X: [u8; 6] = [2, 0, 0, 0, 0, 0x77];
        let (out, drops) =
            run(&sw, &pool, "a", &frame(A, [10, 0, 0, 1], X, [10, 0, 0, 9], 5000, 53), 1, None);
        assert_eq!(
            (out, drops),
            (vec!["p".to_string()], dropped("policy_ingress_denied")),
            "q first: {q_first}"
        );
        let (out, drops) =
            run(&sw, &pool, "p", &frame(X, [10, 0, 0, 9], A, [10, 0, 0, 1], 53, 5000), 1, None);
        assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "the reply passes (q first: {q_first})");
    }
}

/// An ICMP error is related to a tracked connection only when it goes to the source of the
/// packet it quotes, as Linux conntrack (which OVN uses) checks (`nf_conntrack_inet_error`:
/// the outer destination must be the quoted packet's source). c quoting a's query to c, sent
/// to b (whose ingress takes only a on TCP 80), is c's own ICMP packet: b refuses it.
#[test]
fn an_icmp_error_to_another_host_than_the_quoted_sender_is_not_related() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let query = udp(0, 2, 5353, 53);
    let (out, _, _) = send(&sw, &pool, "a", &query, 10);
    assert_eq!(out, vec!["c".to_string()]);
    let (out, drops, tr) = send(&sw, &pool, "c", &icmp_unreach(2, 1, &query), 11);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "{}", tr.describe(&sw));
    let (out, drops) = run(&sw, &pool, "c", &icmp_unreach(2, 1, &query), 11, None);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "untraced");
    // To the quoted packet's source: related, as before.
    let (out, drops, tr) = send(&sw, &pool, "c", &icmp_unreach(2, 0, &query), 12);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0));
    assert!(tr.describe(&sw).contains("related-to-tracked"));
}

/// ARP with hardware type 6 (IEEE 802), which Linux accepts on Ethernet as type 1 (it
/// updates its neighbour table from it), is checked by the ARP spoof filter as Ethernet ARP;
/// any other ARP that is not Ethernet/IPv4 is refused on a port with `allowed_ips`, as OVN's
/// port security refuses every ARP whose sender it cannot read.
#[test]
fn arp_of_another_hardware_type_is_spoof_checked() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let with_htype = |spa: [u8; 4], htype: u8, ptype: [u8; 2]| {
        let mut f = arp(2, spa);
        f[14 + 1] = htype;
        f[14 + 2..14 + 4].copy_from_slice(&ptype);
        f
    };
    let (out, drops, _) = send(&sw, &pool, "c", &with_htype([10, 0, 0, 99], 6, [8, 0]), 1);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_arp_spa")), "IEEE 802 ARP, spoofed");
    let (out, drops, _) = send(&sw, &pool, "c", &with_htype(IP[2], 6, [8, 0]), 1);
    assert_eq!((out.len(), drops.len()), (2, 0), "IEEE 802 ARP of its own address: flooded");
    let (out, drops, _) = send(&sw, &pool, "c", &with_htype([10, 0, 0, 99], 7, [8, 0]), 1);
    assert_eq!((out.len(), drops), (0, dropped("malformed_arp")), "another hardware type");
    let (out, drops, _) = send(&sw, &pool, "c", &with_htype([10, 0, 0, 99], 1, [0x86, 0xdd]), 1);
    assert_eq!((out.len(), drops), (0, dropped("malformed_arp")), "another protocol type");
    // b has no IP spoof filter: its ARP is not read.
    let mut other = arp(1, [10, 0, 0, 99]);
    other[14 + 1] = 7;
    let (out, drops, _) = send(&sw, &pool, "b", &other, 1);
    assert_eq!((out.len(), drops.len()), (2, 0));
}

/// An IPv6 neighbour discovery message passes every policy only as OVN lets it (`nd`,
/// `nd_rs`, `nd_ra`: ICMPv6 133-136, code 0, hop limit 255, which a receiver requires too);
/// a redirect (137) or a message of another hop limit is checked against the policies as any
/// ICMPv6 packet. a's egress takes only TCP 80 to b.
#[test]
fn only_genuine_neighbor_discovery_passes_every_policy() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let (ll, b_ll) = (lla(MAC[0]), lla(MAC[1]));
    let nd = |ty: u8, code: u8, hops: u8| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC[0], MAC[1])
            .ipv6(ll, b_ll, hops)
            .icmpv6_raw(ty, code, [0; 4])
            // A target address (a's own: an advertisement claims it) and room for options.
            .write(&mut v, &[&v6(1)[..], &[0; 16]].concat())
            .expect("frame");
        v
    };
    for ty in 133..=136 {
        let (out, drops, tr) = send(&sw, &pool, "a", &nd(ty, 0, 255), 1);
        assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "type {ty}");
        assert!(tr.describe(&sw).contains("neighbor-discovery"));
    }
    for (ty, code, hops) in [(137, 0, 255), (135, 0, 64), (136, 1, 255), (134, 0, 1)] {
        let (out, drops, _) = send(&sw, &pool, "a", &nd(ty, code, hops), 1);
        assert_eq!(
            (out.len(), drops),
            (0, dropped("policy_egress_denied")),
            "type {ty} code {code} hops {hops}"
        );
    }
}

/// A frame with a VLAN tag inside the tag the port reads (a priority tag, VID 0, over an
/// 802.1Q tag, or an 802.1ad tag on an untagged frame): a Linux guest strips priority tags and
/// reads the packet inside as untagged, so the policy stage reads what is behind the tags, and
/// the spoof filters and policies apply to it as to the same packet untagged.
#[test]
fn a_packet_behind_stacked_vlan_tags_is_checked() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    // Tags inserted after the MAC addresses.
    let stack = |f: &[u8], tpids: &[[u8; 2]]| {
        let mut v = f[..12].to_vec();
        for t in tpids {
            v.extend_from_slice(t);
            v.extend_from_slice(&[0, 0]);
        }
        v.extend_from_slice(&f[12..]);
        v
    };
    const Q: [u8; 2] = [0x81, 0x00];
    const AD: [u8; 2] = [0x88, 0xa8];
    for tags in [&[Q, Q][..], &[AD][..], &[Q, AD, Q][..]] {
        // Spoofed source from c (allowed_ips).
        let (out, drops, _) = send(&sw, &pool, "c", &stack(&udp_from(2, [10, 0, 0, 99], 1, 1, 2), tags), 1);
        assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "{tags:?}");
        // a's egress takes only TCP 80 to b.
        let (out, drops, _) = send(&sw, &pool, "a", &stack(&tcp(0, 1, 40000, 22, "syn"), tags), 1);
        assert_eq!((out.len(), drops), (0, dropped("policy_egress_denied")), "{tags:?}");
        // b (no filter of its own) to a, whose ingress takes nothing.
        let (out, drops, _) = send(&sw, &pool, "b", &stack(&tcp(1, 0, 5555, 22, "syn"), tags), 1);
        assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "{tags:?}");
        let (out, drops) = run(&sw, &pool, "b", &stack(&tcp(1, 0, 5555, 22, "syn"), tags), 1, None);
        assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "untraced {tags:?}");
        // A spoofed ARP behind the tags.
        let (out, drops, _) = send(&sw, &pool, "c", &stack(&arp(2, [10, 0, 0, 99]), tags), 1);
        assert_eq!((out.len(), drops), (0, dropped("spoofed_arp_spa")), "{tags:?}");
    }
    // What is allowed untagged is allowed behind the tags.
    let (out, drops, _) = send(&sw, &pool, "a", &stack(&tcp(0, 1, 40000, 80, "syn"), &[Q, Q]), 2);
    assert_eq!((out, drops.len()), (vec!["b".to_string()], 0));
    // A frame that ends inside its tags: nothing in it to check, refused.
    let (out, drops, _) = send(&sw, &pool, "c", &stack(&udp(2, 1, 1, 2), &[Q, Q])[..20], 2);
    assert_eq!((out.len(), drops), (0, dropped("malformed_ip")));
    // The MAC spoof filter reads an ARP sender behind the tags too (a port with allowed_macs
    // on a bridge without policies).
    let yaml = "bridges:\n- name: br0\n  ports:\n  - name: x\n    allowed_macs: ['02:00:00:00:00:0c']\n  - name: y\n";
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid config"), None).unwrap();
    let mut forged = arp(2, IP[2]);
    forged[14 + 8..14 + 14].copy_from_slice(&MAC[0]);
    for tags in [&[Q, Q][..], &[AD][..]] {
        let (out, drops, _) = send(&sw, &pool, "x", &stack(&forged, tags), 1);
        assert_eq!((out.len(), drops), (0, dropped("spoofed_arp_sha")), "{tags:?}");
    }
}

/// A SYN in the reply direction of a connection that was closed (RST) or is closing (FIN)
/// opens a new connection the other way, as Linux conntrack re-reads it (the old entry is
/// dropped and the SYN looked up again as new, `nf_conntrack_proto_tcp.c`): it is checked
/// against the policies, not let through as a reply. c answers a's connection from c:22,
/// a closes it, then c opens c:22 -> a:40000: a's ingress refuses it, on the general stages
/// and on the fast path. A SYN in the reply direction of a connection still opening
/// (simultaneous open) stays a reply.
#[test]
fn a_reply_direction_syn_on_a_closed_connection_is_a_new_connection() {
    // Traced: the general stages alone (a trace uses no stored verdicts); untraced: the fast
    // path first.
    for (close, traced) in [("rst", true), ("rst", false), ("fin", true), ("fin", false)] {
        let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
        let go = |from: &str, f: &[u8], now: u32| run_either(&sw, &pool, from, f, now, traced);
        let (out, _) = go("a", &tcp(0, 2, 40000, 22, "syn"), 1);
        assert_eq!(out, vec!["c".to_string()]);
        let (out, _) = go("c", &tcp(2, 0, 22, 40000, "synack"), 1);
        assert_eq!(out, vec!["a".to_string()]);
        let (out, _) = go("a", &tcp(0, 2, 40000, 22, "ack"), 1);
        assert_eq!(out, vec!["c".to_string()]);
        let mut closing = tcp(0, 2, 40000, 22, "ack");
        closing[14 + 20 + 13] = if close == "rst" { 0x04 } else { 0x11 };
        // The checksum is not read.
        let (out, _) = go("a", &closing, 2);
        assert_eq!(out, vec!["c".to_string()], "{close}");
        let (out, drops) = go("c", &tcp(2, 0, 22, 40000, "syn"), 3);
        assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "{close} traced {traced}");
    }
    // Simultaneous open: a's SYN, then c's SYN the other way on the same ports.
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let (out, _) = run(&sw, &pool, "a", &tcp(0, 2, 40001, 22, "syn"), 1, None);
    assert_eq!(out, vec!["c".to_string()]);
    let (out, drops) = run(&sw, &pool, "c", &tcp(2, 0, 22, 40001, "syn"), 1, None);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "simultaneous open: a reply");
}

/// A non-first IPv4 fragment has no transport header: the stage sees port 0, so it matches
/// only rules without ports (or whose ports take every port of its protocol), and it is tracked
/// under that key like any packet, so the other direction's non-first fragments pass as its
/// replies. (OVN reassembles in conntrack: there a fragmented reply passes whole; here a
/// reply's later fragments pass only where a rule without ports allows them.)
#[test]
fn non_first_fragments_are_checked_with_port_0() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    // The fragment at offset 8 (in units of 8 bytes) of a UDP datagram.
    let frag = |from: usize, to: usize, proto: u8| {
        let mut f = udp(from, to, 5000, 53);
        f[14 + 6] = 0;
        f[14 + 7] = 8;
        f[14 + 9] = proto;
        f
    };
    // a -> c: a's rule to c has no ports: allowed, and tracked.
    let (out, drops, _) = send(&sw, &pool, "a", &frag(0, 2, 17), 1);
    assert_eq!((out, drops.len()), (vec!["c".to_string()], 0));
    let (out, drops, tr) = send(&sw, &pool, "c", &frag(2, 0, 17), 2);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "the other direction: a reply");
    assert!(tr.describe(&sw).contains("reply-of-tracked"));
    // c -> a of another protocol: not tracked, a's ingress refuses it.
    let (out, drops, _) = send(&sw, &pool, "c", &frag(2, 0, 6), 3);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")));
    // a -> b: a's rule to b is TCP 80 only, which port 0 is not.
    let (out, drops, _) = send(&sw, &pool, "a", &frag(0, 1, 6), 4);
    assert_eq!((out.len(), drops), (0, dropped("policy_egress_denied")));
}

/// Two VLANs of one bridge (two NADs on one bridge, each with its own VLAN) may hold the same
/// addresses: a connection is one VLAN's, as OVN keeps it in the zone of its own ports. a1 on
/// VLAN 10 connects to b1:80; on VLAN 20, b2 (b1's address) sending "the reply" to a2 (a1's
/// address, ingress closed) is no reply of it: a2 refuses it. And a2 refusing a packet of the
/// same addresses and ports does not cut a1's connection.
#[test]
fn a_connection_is_one_vlans() {
    let yaml = r#"
bridges:
- name: br0
  conntrack_size: 64
  ports:
  - name: a1
    tag: 10
    static_macs: ['02:00:00:00:00:0a']
    allowed_ips: [10.0.0.1]
    policy:
      egress: {rules: [{name: p/a1-out}]}
  - name: b1
    tag: 10
    static_macs: ['02:00:00:00:00:0b']
    policy:
      ingress: {rules: [{name: p/b1-web, peers: [{cidr: 10.0.0.1/32}], ports: [{protocol: TCP, port: 80}]}]}
  - name: a2
    tag: 20
    static_macs: ['02:00:00:00:00:1a']
    policy:
      ingress: {rules: []}
  - name: b2
    tag: 20
    static_macs: ['02:00:00:00:00:1b']
"#;
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid config"), None).unwrap();
    let pool = pool();
    const A2: [u8; 6] = [2, 0, 0, 0, 0, 0x1a];
    const B2: [u8; 6] = [2, 0, 0, 0, 0, 0x1b];
    let seg = |src: [u8; 6], src_ip: [u8; 4], dst: [u8; 6], dst_ip: [u8; 4], sp: u16, dp: u16, syn: bool| {
        let b = PacketBuilder::ethernet2(src, dst).ipv4(src_ip, dst_ip, 64).tcp(sp, dp, 1, 1000);
        let b = if syn { b.syn() } else { b.ack(2) };
        let mut v = Vec::new();
        b.write(&mut v, &[]).expect("frame");
        v
    };
    for traced in [true, false] {
        let go = |from: &str, f: &[u8], now: u32| run_either(&sw, &pool, from, f, now, traced);
        let sport = if traced { 40000 } else { 40001 };
        let (out, _) = go("a1", &seg(MAC[0], IP[0], MAC[1], IP[1], sport, 80, true), 1);
        assert_eq!(out, vec!["b1".to_string()]);
        let (out, _) = go("b1", &seg(MAC[1], IP[1], MAC[0], IP[0], 80, sport, false), 1);
        assert_eq!(out, vec!["a1".to_string()], "the reply on VLAN 10");
        let (out, drops) = go("b2", &seg(B2, IP[1], A2, IP[0], 80, sport, false), 2);
        assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "VLAN 20 (traced {traced})");
        let (out, _) = go("b1", &seg(MAC[1], IP[1], MAC[0], IP[0], 80, sport, false), 3);
        assert_eq!(out, vec!["a1".to_string()], "VLAN 10's connection stands (traced {traced})");
    }
    // The fast path makes the same key as the general stages: an established connection on
    // VLAN 10 takes it (its first packet of the second stores the verdict).
    let mut synack = seg(MAC[1], IP[1], MAC[0], IP[0], 80, 40002, true);
    synack[14 + 20 + 13] = 0x12;
    run(&sw, &pool, "a1", &seg(MAC[0], IP[0], MAC[1], IP[1], 40002, 80, true), 4, None);
    run(&sw, &pool, "b1", &synack, 4, None);
    run(&sw, &pool, "a1", &seg(MAC[0], IP[0], MAC[1], IP[1], 40002, 80, false), 4, None);
    let (out, _, fast) = run_fast(&sw, &pool, "a1", &seg(MAC[0], IP[0], MAC[1], IP[1], 40002, 80, false), 4);
    assert_eq!((out, fast), (vec!["b1".to_string()], true));
    let (out, _, fast) = run_fast(&sw, &pool, "b1", &seg(MAC[1], IP[1], MAC[0], IP[0], 80, 40002, false), 4);
    assert_eq!((out, fast), (vec!["a1".to_string()], true), "a reply, fast");
}

/// An ICMP message that is no request opens no connection (Linux conntrack calls it invalid
/// when it comes first, and OVN drops it): a's unsolicited echo reply to c (a's egress takes
/// anything to c) passes, but c's echo request of that identifier is then no reply: a's closed
/// ingress refuses it. Likewise any other ICMP type a sends: c's ICMP back is refused. An echo
/// request and a timestamp request are tracked: their replies pass.
#[test]
fn an_icmp_message_that_is_no_request_opens_nothing() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let icmp = |from: usize, to: usize, ty: u8, id: u16| {
        let mut v = Vec::new();
        let [a, b] = id.to_be_bytes();
        PacketBuilder::ethernet2(MAC[from], MAC[to])
            .ipv4(IP[from], IP[to], 64)
            .icmpv4_raw(ty, 0, [a, b, 0, 1])
            .write(&mut v, &[0; 12])
            .expect("frame");
        v
    };
    let (out, drops, _) = send(&sw, &pool, "a", &icmp(0, 2, 0, 77), 1);
    assert_eq!((out, drops.len()), (vec!["c".to_string()], 0), "a's unsolicited echo reply");
    let (out, drops, _) = send(&sw, &pool, "c", &icmp(2, 0, 8, 77), 2);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "c's echo request");
    let (out, _, _) = send(&sw, &pool, "a", &icmp(0, 2, 9, 0), 3);
    assert_eq!(out, vec!["c".to_string()], "a router advertisement");
    let (out, drops, _) = send(&sw, &pool, "c", &icmp(2, 0, 9, 0), 4);
    assert_eq!((out.len(), drops), (0, dropped("policy_ingress_denied")), "c's, back");
    // Requests are tracked.
    for (req, rep) in [(8, 0), (13, 14)] {
        let (out, _, _) = send(&sw, &pool, "a", &icmp(0, 2, req, 5), 5);
        assert_eq!(out, vec!["c".to_string()]);
        let (out, drops, tr) = send(&sw, &pool, "c", &icmp(2, 0, rep, 5), 6);
        assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "reply {rep}");
        assert!(tr.describe(&sw).contains("reply-of-tracked"));
    }
}

/// A neighbour advertisement claims its target address: on a port with an IP spoof filter it
/// must be one of the port's addresses (or link-local), as ARP's sender address must, and as
/// OVN's port security checks `nd.target`; otherwise a VM could take another's IPv6 address
/// in its neighbours' caches. A solicitation's target (the address asked about) is anyone's.
#[test]
fn a_neighbor_advertisement_claims_only_the_ports_addresses() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let ll = |i: u8| [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i];
    let nd = |from: usize, ty: u8, target: [u8; 16]| {
        let mut body = target.to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&MAC[from]);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC[from], [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(lla(MAC[from]), [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 255)
            .icmpv6_raw(ty, 0, [0x20, 0, 0, 0])
            .write(&mut v, &body)
            .expect("frame");
        v
    };
    let (out, drops, _) = send(&sw, &pool, "c", &nd(2, 136, v6(1)), 1);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "c claims a's address");
    // A link-local target other than the one derived from c's MAC (the router's fe80::1,
    // a's EUI-64 address): refused as well.
    for target in [ll(1), ll(3), lla(MAC[0])] {
        let (out, drops, _) = send(&sw, &pool, "c", &nd(2, 136, target), 1);
        assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "c claims {target:?}");
    }
    for target in [v6(3), lla(MAC[2])] {
        let (out, drops, _) = send(&sw, &pool, "c", &nd(2, 136, target), 1);
        assert_eq!((out.len(), drops.len()), (2, 0), "its own address {target:?}");
    }
    let (out, drops, _) = send(&sw, &pool, "c", &nd(2, 135, v6(1)), 1);
    assert_eq!((out.len(), drops.len()), (2, 0), "a solicitation for a's address");
    let (out, drops, _) = send(&sw, &pool, "b", &nd(1, 136, v6(1)), 1);
    assert_eq!((out.len(), drops.len()), (2, 0), "b has no IP spoof filter");
}

/// On a bridge with IP spoof filters and no policy (`ipspoofchk` alone), a plain burst (a
/// unicast neighbour advertisement to a known MAC, a unicast ARP the stage cannot read) gets
/// the same checks as in the general stages: the advertisement's target is the sender's own
/// address or link-local, the ARP is `malformed_arp` (s15y's review: the fast path checked the
/// source address alone, so a VM could claim another's IPv6 address in a neighbour's cache).
#[test]
fn a_plain_burst_on_a_spoof_filtered_bridge_checks_neighbor_discovery_and_arp() {
    let yaml = r#"
bridges:
- name: br0
  ports:
  - name: a
    static_macs: ['02:00:00:00:00:0a']
    allowed_ips: [10.0.0.1, 'fd00::1', 'fe80::ff:fe00:a']
  - name: c
    static_macs: ['02:00:00:00:00:0c']
    allowed_ips: [10.0.0.3, 'fd00::3', 'fe80::ff:fe00:c']
"#;
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid config"), None).unwrap();
    let pool = pool();
    let ll = |i: u8| [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i];
    // A solicited advertisement from c to a's MAC (unicast: a plain burst).
    let na = |target: [u8; 16]| {
        let mut body = target.to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&MAC[2]);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC[2], MAC[0])
            .ipv6(lla(MAC[2]), lla(MAC[0]), 255)
            .icmpv6_raw(136, 0, [0x60, 0, 0, 0])
            .write(&mut v, &body)
            .expect("frame");
        v
    };
    let (out, drops) = run(&sw, &pool, "c", &na(v6(1)), 1, None);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "c claims a's address");
    let (out, drops) = run(&sw, &pool, "c", &na(ll(1)), 1, None);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "c claims fe80::1");
    for target in [v6(3), lla(MAC[2])] {
        let (out, drops) = run(&sw, &pool, "c", &na(target), 1, None);
        assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "its own address {target:?}");
    }
    // ARP of hardware type 2 (not Ethernet), unicast to a.
    let mut p = vec![0, 2, 8, 0, 6, 4, 0, 2];
    p.extend_from_slice(&MAC[2]);
    p.extend_from_slice(&IP[2]);
    p.extend_from_slice(&MAC[0]);
    p.extend_from_slice(&IP[0]);
    let arp2 = testkit::frame::Frame::new(MAC[0], MAC[2]).ethertype(0x0806).payload(&p).build();
    let (out, drops) = run(&sw, &pool, "c", &arp2, 1, None);
    assert_eq!((out.len(), drops), (0, dropped("malformed_arp")));
}

/// A raw IPv6 frame (`tag`: a VLAN TCI pushed, when given): `hbh` puts a hop-by-hop header
/// with a router alert (as MLD carries) before the ICMPv6 message `icmp`.
#[allow(clippy::too_many_arguments)]
fn icmp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hops: u8,
    hbh: bool,
    icmp: &[u8],
    tag: Option<u16>,
) -> Vec<u8> {
    let mut l4 = Vec::new();
    if hbh {
        l4.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
    }
    l4.extend_from_slice(icmp);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[if hbh { 0 } else { 58 }, hops]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&l4);
    let f = testkit::frame::Frame::new(dst_mac, src_mac);
    let f = match tag {
        Some(tci) => f.vlan(tci),
        None => f,
    };
    f.ethertype(0x86dd).payload(&p).build()
}

/// An ND message of type `ty` (133-136) with `opts` (link-layer options: (type, MAC)) after
/// its fixed part; NS and NA carry `target`.
fn nd_msg(ty: u8, target: [u8; 16], opts: &[(u8, [u8; 6])]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    match ty {
        133 => m.extend_from_slice(&[0; 4]),
        134 => m.extend_from_slice(&[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        _ => {
            m.extend_from_slice(&[if ty == 136 { 0x60 } else { 0 }, 0, 0, 0]);
            m.extend_from_slice(&target);
        }
    }
    for (t, mac) in opts {
        m.extend_from_slice(&[*t, 1]);
        m.extend_from_slice(mac);
    }
    m
}

/// The link-layer address options of neighbour discovery (a solicitation's or router
/// message's source, an advertisement's target) go into the receivers' neighbour caches, as
/// ARP's sender hardware address does: on a port with `allowed_macs` they must name one of its
/// MACs (all-zero passes: OVN reads an absent option as zero and accepts it), however many
/// options come before, behind a priority tag too, on a bridge without IP filters (the MAC
/// spoof filter alone) as on one with policies. `spoofed_nd_lladdr`. (s16's review: a VM could
/// name another MAC and poison its neighbours' caches.)
#[test]
fn neighbor_discovery_link_layer_options_name_only_the_ports_macs() {
    const M: [u8; 6] = [2, 0, 0, 0, 0, 0x1a];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 0x99];
    let yaml = |policy: bool| {
        let extra =
            if policy { "    allowed_ips: ['fd00::1a']\n    policy: {ingress: {rules: []}}\n" } else { "" };
        format!(
            "bridges:\n- name: br0\n  ports:\n  - name: m\n    static_macs: ['02:00:00:00:00:1a']\n    \
             allowed_macs: ['02:00:00:00:00:1a']\n{extra}  - name: o\n    static_macs: ['02:00:00:00:00:0b']\n"
        )
    };
    let pool = pool();
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let snm = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0x0b];
    for policy in [false, true] {
        let sw = SwitchConfig::compile(&Config::from_yaml_str(&yaml(policy)).unwrap(), None).unwrap();
        let nd = |ty: u8, opts: &[(u8, [u8; 6])], hops: u8, tag: Option<u16>| {
            let target = if ty == 136 { lla(M) } else { v6(0x0b) };
            let dst = if ty == 135 { snm } else { all_nodes };
            icmp6_frame(M, [0x33, 0x33, 0, 0, 0, 1], lla(M), dst, hops, false, &nd_msg(ty, target, opts), tag)
        };
        let what = if policy { "policy bridge" } else { "MAC filter alone" };
        // Its own MAC, or all-zero, or no option: passes.
        for (ty, opt) in [(133, 1), (134, 1), (135, 1), (136, 2)] {
            for opts in [&[(opt, M)][..], &[(opt, [0; 6])], &[]] {
                let (out, drops) = run(&sw, &pool, "m", &nd(ty, opts, 255, None), 1, None);
                assert_eq!((out, drops.len()), (vec!["o".to_string()], 0), "{what}: type {ty} {opts:?}");
            }
            // Another MAC, in either option.
            for o in [1, 2] {
                let (out, drops) = run(&sw, &pool, "m", &nd(ty, &[(o, OTHER)], 255, None), 1, None);
                assert_eq!(
                    (out.len(), drops),
                    (0, dropped("spoofed_nd_lladdr")),
                    "{what}: type {ty} option {o}"
                );
            }
        }
        // Behind other options (a nonce), after an option naming its own MAC, behind a
        // priority tag: still read.
        for (opts, tag) in
            [(&[(14, [0; 6]), (1, OTHER)][..], None), (&[(1, M), (1, OTHER)], None), (&[(1, OTHER)], Some(0))]
        {
            let (out, drops) = run(&sw, &pool, "m", &nd(135, opts, 255, tag), 1, None);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_nd_lladdr")), "{what}: {opts:?} tag {tag:?}");
        }
        // An option longer than what is left still names its MAC (a lenient receiver may
        // read it).
        let mut cut = nd(135, &[(1, OTHER)], 255, None);
        let len_at = cut.len() - 7;
        cut[len_at] = 2;
        let (out, drops) = run(&sw, &pool, "m", &cut, 1, None);
        assert_eq!((out.len(), drops), (0, dropped("spoofed_nd_lladdr")), "{what}: cut option");
        if !policy {
            // Not neighbour discovery as a receiver takes it (hop limit 64: RFC 4861 has it
            // ignored): its options are not read.
            let (out, drops) = run(&sw, &pool, "m", &nd(135, &[(1, OTHER)], 64, None), 1, None);
            assert_eq!((out, drops.len()), (vec!["o".to_string()], 0), "{what}: hop limit 64");
        }
    }
}

/// A link-local IPv6 source, or a neighbour advertisement's link-local target, on a port with
/// `allowed_ips`: only the address derived from the frame's source MAC (EUI-64, as OVN's port
/// security allows) or one of the port's addresses (a guest's RFC 7217 address, when its VMI
/// status reports it). Another (the router's `fe80::1`, a neighbour's EUI-64 address) is
/// `spoofed_src_ip`: a solicitation from the router's address would put the VM's MAC in its
/// neighbours' caches as the router's. The same on the fast paths (a bridge with IP spoof
/// filters alone; a tracked connection on a bridge with policies).
#[test]
fn a_link_local_source_or_target_is_the_ports_own() {
    let yaml = r#"
bridges:
- name: br0
  ports:
  - name: a
    static_macs: ['02:00:00:00:00:0a']
    allowed_macs: ['02:00:00:00:00:0a']
    allowed_ips: [10.0.0.1, 'fd00::1', 'fe80::1234:5678:9abc:def0']
  - name: b
    static_macs: ['02:00:00:00:00:0b']
"#;
    // The helper against a known pair (RFC 4291 appendix A): 52:54:00:12:34:56 ->
    // fe80::5054:ff:fe12:3456.
    let known: std::net::Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
    assert_eq!(lla([0x52, 0x54, 0, 0x12, 0x34, 0x56]), known.octets());
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap();
    let pool = pool();
    let router = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let stable = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
    let udp6 = |src: [u8; 16]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC[0], MAC[1])
            .ipv6(src, lla(MAC[1]), 64)
            .udp(1000, 2000)
            .write(&mut v, b"x")
            .unwrap();
        v
    };
    let ns_from = |src: [u8; 16]| {
        let m = nd_msg(135, lla(MAC[1]), &[(1, MAC[0])]);
        icmp6_frame(MAC[0], MAC[1], src, lla(MAC[1]), 255, false, &m, None)
    };
    let na_of = |target: [u8; 16]| {
        let m = nd_msg(136, target, &[(2, MAC[0])]);
        icmp6_frame(MAC[0], MAC[1], lla(MAC[0]), lla(MAC[1]), 255, false, &m, None)
    };
    for bad in [router, lla(MAC[1])] {
        for (f, what) in [(udp6(bad), "UDP from"), (ns_from(bad), "NS from"), (na_of(bad), "NA claiming")] {
            for traced in [false, true] {
                let (out, drops) = run_either(&sw, &pool, "a", &f, 1, traced);
                assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "{what} {bad:?}");
            }
        }
    }
    for good in [lla(MAC[0]), stable] {
        for (f, what) in [(udp6(good), "UDP from"), (ns_from(good), "NS from"), (na_of(good), "NA claiming")]
        {
            let (out, drops) = run(&sw, &pool, "a", &f, 1, None);
            assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "{what} {good:?}");
        }
    }
    // The bridge's fast path (spoof filters alone) takes the port's own link-local source.
    let (out, drops, fast) = run_fast(&sw, &pool, "a", &udp6(lla(MAC[0])), 1);
    assert_eq!((out, drops.len(), fast), (vec!["b".to_string()], 0, true));

    // A port without a MAC spoof filter chooses its frames' source MACs: the address derived
    // from one is no longer its own. Sent with the router's MAC and the router's EUI-64
    // address, its own MAC in the option, a solicitation would poison the neighbours' caches;
    // only what `allowed_ips` lists passes (the plan lists the VM's own EUI-64 address there).
    let unchecked = |listed: &str| {
        let yaml = format!(
            "bridges:\n- name: br0\n  ports:\n  - name: a\n    allowed_ips: [10.0.0.1{listed}]\n  \
             - name: b\n    static_macs: ['02:00:00:00:00:0b']\n"
        );
        SwitchConfig::compile(&Config::from_yaml_str(&yaml).unwrap(), None).unwrap()
    };
    let router_mac = [2, 0, 0, 0, 0, 0x77];
    let as_router = {
        let m = nd_msg(135, lla(MAC[1]), &[(1, MAC[0])]);
        icmp6_frame(router_mac, MAC[1], lla(router_mac), lla(MAC[1]), 255, false, &m, None)
    };
    let sw = unchecked("");
    for f in [&as_router, &udp6(lla(MAC[0]))] {
        for traced in [false, true] {
            let (out, drops) = run_either(&sw, &pool, "a", f, 1, traced);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "traced {traced}");
        }
    }
    let sw = unchecked(", 'fe80::ff:fe00:a'");
    for traced in [false, true] {
        let (out, drops) = run_either(&sw, &pool, "a", &udp6(lla(MAC[0])), 1, traced);
        assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "listed, traced {traced}");
        let (out, drops) = run_either(&sw, &pool, "a", &as_router, 1, traced);
        assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "as the router, traced {traced}");
    }

    // A bridge with policies: an established connection from a link-local source takes the
    // fast path (the port's own address), a neighbour's never does.
    let mut cfg = config(B_WEB, 1024);
    cfg.bridges[0].ports[0].allowed_macs = Some(vec![switchyard_dataplane::wire::MacAddr(MAC[0])]);
    let (sw, pool) = (SwitchConfig::compile(&cfg, None).unwrap(), pool);
    let tcp6 = |src: [u8; 16], flags: &str| {
        let b = PacketBuilder::ethernet2(MAC[0], MAC[2]).ipv6(src, v6(3), 64).tcp(40000, 22, 1, 1000);
        let b = if flags == "syn" { b.syn() } else { b.ack(2) };
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    let (out, drops) = run(&sw, &pool, "a", &tcp6(lla(MAC[0]), "syn"), 1, None);
    assert_eq!((out, drops.len()), (vec!["c".to_string()], 0));
    let mut synack = Vec::new();
    PacketBuilder::ethernet2(MAC[2], MAC[0])
        .ipv6(v6(3), lla(MAC[0]), 64)
        .tcp(22, 40000, 1, 1000)
        .syn()
        .ack(2)
        .write(&mut synack, &[])
        .unwrap();
    let (out, drops) = run(&sw, &pool, "c", &synack, 1, None);
    assert_eq!((out, drops.len()), (vec!["a".to_string()], 0), "the reply");
    let (out, drops, fast) = run_fast(&sw, &pool, "a", &tcp6(lla(MAC[0]), "ack"), 1);
    assert_eq!((out, drops.len(), fast), (vec!["c".to_string()], 0, true), "established, fast path");
    let (out, drops, fast) = run_fast(&sw, &pool, "a", &tcp6(lla(MAC[2]), "ack"), 1);
    assert_eq!((out.len(), drops, fast), (0, dropped("spoofed_src_ip"), false), "c's link-local address");
}

/// MLD (ICMPv6 130-132 from a link-local source, 143 to ff02::16; hop limit 1; to a multicast
/// MAC) passes every policy, as OVN's ACLs let `mldv1 || mldv2` past: a's egress allows
/// nothing to ff02::16 and its ingress nothing at all, and its reports and c's query get
/// through. Another hop limit, or a unicast MAC, is an ICMPv6 packet like any (checked).
#[test]
fn mld_passes_every_policy() {
    let (sw, pool) = (SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap(), pool());
    let mld2_dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mcast = |ip: [u8; 16]| [0x33, 0x33, ip[12], ip[13], ip[14], ip[15]];
    // An MLDv2 report (no group records) and an MLDv1 report, from a.
    let report2 = |src: [u8; 16], hops: u8, dst_mac: [u8; 6]| {
        icmp6_frame(MAC[0], dst_mac, src, mld2_dst, hops, true, &[143, 0, 0, 0, 0, 0, 0, 0], None)
    };
    let group = [0xff, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];
    let mut rep1 = vec![131, 0, 0, 0, 0, 0, 0, 0];
    rep1.extend_from_slice(&group);
    for (f, what) in [
        (report2(lla(MAC[0]), 1, mcast(mld2_dst)), "MLDv2 report"),
        (report2([0; 16], 1, mcast(mld2_dst)), "MLDv2 report from ::"),
        (icmp6_frame(MAC[0], mcast(group), lla(MAC[0]), group, 1, true, &rep1, None), "MLDv1 report"),
    ] {
        let (out, drops, tr) = send(&sw, &pool, "a", &f, 1);
        assert_eq!((out.len(), drops.len()), (2, 0), "{what}: flooded to b and c");
        assert!(tr.describe(&sw).contains("policy=mld"), "{what}: {}", tr.describe(&sw));
        let (out, drops) = run(&sw, &pool, "a", &f, 1, None);
        assert_eq!((out.len(), drops.len()), (2, 0), "{what}, untraced");
    }
    // A general query from c: a's ingress (deny-all) lets it in.
    let mut query = vec![130, 0, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(&[0; 16]);
    let q = icmp6_frame(MAC[2], mcast(all_nodes), lla(MAC[2]), all_nodes, 1, true, &query, None);
    let (out, drops) = run(&sw, &pool, "c", &q, 1, None);
    assert_eq!((out, drops.len()), (vec!["a".to_string(), "b".to_string()], 0), "query");
    // Not MLD as OVN matches it: a's egress policy decides (and refuses).
    for (f, what) in [
        (report2(lla(MAC[0]), 64, mcast(mld2_dst)), "hop limit 64"),
        (report2(lla(MAC[0]), 1, MAC[1]), "to b's MAC"),
        (
            icmp6_frame(MAC[0], mcast(group), v6(1), group, 1, true, &rep1, None),
            "MLDv1 from a global address",
        ),
    ] {
        let (out, drops) = run(&sw, &pool, "a", &f, 1, None);
        assert_eq!((out.len(), drops), (0, dropped("policy_egress_denied")), "{what}");
    }
}

/// A spoof-filtered port (`allowed_macs`, `allowed_ips`, no policy) of `b`'s bridge.
const SPOOF_FILTERED: &str = r#"
bridges:
- name: br0
  ports:
  - name: a
    static_macs: ['02:00:00:00:00:0a']
    allowed_macs: ['02:00:00:00:00:0a']
    allowed_ips: [10.0.0.1, 'fd00::1']
  - name: b
    static_macs: ['02:00:00:00:00:0b']
"#;

/// A neighbour advertisement behind `n` destination-options headers (the kernel takes any
/// number), claiming fe80::1 with another MAC in its target link-layer option.
fn na_behind_options(n: usize) -> Vec<u8> {
    let router = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut l4 = Vec::new();
    for i in 0..n {
        let next = if i + 1 == n { 58 } else { 60 };
        l4.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]); // a PadN option, 8 bytes
    }
    l4.extend_from_slice(&nd_msg(136, router, &[(2, [2, 0, 0, 0, 0, 0x99])]));
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[if n == 0 { 58 } else { 60 }, 255]);
    p.extend_from_slice(&lla(MAC[0]));
    p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&l4);
    testkit::frame::Frame::new([0x33, 0x33, 0, 0, 0, 1], MAC[0]).ethertype(0x86dd).payload(&p).build()
}

/// Neighbour discovery is checked behind any number of extension headers: the walk used to
/// stop after eight and read the ninth header as the transport, so such an advertisement
/// passed every check (and Linux neighbours took it).
#[test]
fn neighbor_discovery_behind_many_extension_headers_is_checked() {
    let sw = SwitchConfig::compile(&Config::from_yaml_str(SPOOF_FILTERED).unwrap(), None).unwrap();
    let pool = pool();
    for n in [0, 1, 8, 9, 12, 40] {
        for traced in [false, true] {
            let (out, drops) = run_either(&sw, &pool, "a", &na_behind_options(n), 1, traced);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_nd_lladdr")), "{n} headers, traced {traced}");
        }
    }
}

/// A RARP frame on a spoof-filtered port without policies takes the general stages, which
/// check its sender address, as an ARP frame does: the plain stages forwarded a spoofed one.
#[test]
fn a_rarp_on_a_spoof_filtered_port_is_checked() {
    let sw = SwitchConfig::compile(&Config::from_yaml_str(SPOOF_FILTERED).unwrap(), None).unwrap();
    let pool = pool();
    // A RARP reply (op 4) to b, naming b's MAC as its sender.
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 4];
    for _ in 0..2 {
        p.extend_from_slice(&MAC[1]);
        p.extend_from_slice(&IP[1]);
    }
    let f = testkit::frame::Frame::new(MAC[1], MAC[0]).ethertype(0x8035).payload(&p).build();
    let (out, drops, fast) = run_fast(&sw, &pool, "a", &f, 1);
    assert_eq!((out, drops, fast), (vec![], dropped("spoofed_arp_sha"), false));
    // The guest's own announcement (QEMU's on live migration) passes.
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 3];
    for _ in 0..2 {
        p.extend_from_slice(&MAC[0]);
        p.extend_from_slice(&[0; 4]);
    }
    let f = testkit::frame::Frame::new([0xff; 6], MAC[0]).ethertype(0x8035).payload(&p).build();
    let (out, drops, _) = run_fast(&sw, &pool, "a", &f, 1);
    assert_eq!((out, drops), (vec!["b".to_string()], BTreeMap::new()));
}

/// From `0.0.0.0` a port may send only a DHCP client's broadcast (UDP 68 -> 67 to
/// 255.255.255.255), as OVN's port security allows it (`ip4.src == 0.0.0.0 && ip4.dst ==
/// 255.255.255.255 && udp.src == 68 && udp.dst == 67`): the same ports to any other
/// destination (a unicast address, a subnet broadcast, a multicast group) are `spoofed_src_ip`,
/// on a bridge with spoof filters alone and on one with policies, through the fast path and
/// the general stages. (s17's review: any destination passed, so a VM could reach a peer's
/// UDP port 67 from an address that names no one.)
#[test]
fn dhcp_from_0_0_0_0_goes_only_to_the_broadcast_address() {
    const BCAST: [u8; 4] = [255, 255, 255, 255];
    let dhcp = |src: [u8; 6], dst_mac: [u8; 6], dst: [u8; 4]| udp_frame(src, [0; 4], dst_mac, dst, 68, 67);
    let filtered = SwitchConfig::compile(&Config::from_yaml_str(SPOOF_FILTERED).unwrap(), None).unwrap();
    let policed = SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap();
    let pool = pool();
    for traced in [false, true] {
        let (out, drops) = run_either(&filtered, &pool, "a", &dhcp(MAC[0], [0xff; 6], BCAST), 1, traced);
        assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "a DHCP discover, traced {traced}");
        // On the policy bridge c's broadcast passes the spoof filter and is refused by every
        // receiver's ingress policy (a: deny-all; b: from a to TCP 80 only): not spoofed.
        let (out, drops) = run_either(&policed, &pool, "c", &dhcp(MAC[2], [0xff; 6], BCAST), 1, traced);
        assert_eq!(out.len(), 0);
        assert!(!drops.contains_key("spoofed_src_ip"), "c's discover, traced {traced}: {drops:?}");
        for (dst_mac, dst, what) in [
            (MAC[1], IP[1], "b's address"),
            ([0xff; 6], [10, 0, 0, 255], "the subnet's broadcast"),
            ([1, 0, 0x5e, 0, 0, 1], [224, 0, 0, 1], "a multicast group"),
        ] {
            let (out, drops) = run_either(&filtered, &pool, "a", &dhcp(MAC[0], dst_mac, dst), 1, traced);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "a to {what}, traced {traced}");
            let (out, drops) = run_either(&policed, &pool, "c", &dhcp(MAC[2], dst_mac, dst), 1, traced);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "c to {what}, traced {traced}");
        }
    }
    // A unicast one to a known MAC is a plain burst: the fast path refuses it too.
    let (out, drops, fast) = run_fast(&filtered, &pool, "a", &dhcp(MAC[0], MAC[1], IP[1]), 1);
    assert_eq!((out.len(), drops, fast), (0, dropped("spoofed_src_ip"), false));
}

/// From `::` a port may send only what duplicate address detection needs, as OVN's port
/// security allows it (`ip6.src == :: && ip6.dst == ff02::/16 && icmp6.code == 0 &&
/// icmp6.type == {131, 135, 143}`): a neighbour solicitation and MLDv1 and MLDv2 reports to a
/// link-local multicast group. Anything else from `::` (UDP, an echo request, a solicitation
/// to a unicast or a wider-scope address, a router solicitation, an MLD query, a report of
/// another code) is `spoofed_src_ip`, on a bridge with spoof filters alone (a, with
/// `allowed_macs`) and on one with policies (c, without), through the fast path and the
/// general stages. (s17's review: every packet from `::` passed.)
#[test]
fn the_unspecified_source_sends_only_duplicate_address_detection() {
    const ANY: [u8; 16] = [0; 16];
    let ff02 = |last: [u8; 4]| [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, last[0], last[1], last[2], last[3]];
    // The solicited-node group of fd00::5 (an address being tested), ff02::16, ff02::1.
    let solicited = ff02([0xff, 0, 0, 5]);
    let mld2_dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mcast = |ip: [u8; 16]| [0x33, 0x33, ip[12], ip[13], ip[14], ip[15]];
    let from = |mac: [u8; 6], dst: [u8; 16], hops: u8, hbh: bool, icmp: &[u8]| {
        icmp6_frame(mac, mcast(dst), ANY, dst, hops, hbh, icmp, None)
    };
    let mut rep1 = vec![131, 0, 0, 0, 0, 0, 0, 0];
    rep1.extend_from_slice(&solicited);
    let report2 = [143, 0, 0, 0, 0, 0, 0, 0];
    let allowed = |mac: [u8; 6]| {
        [
            (from(mac, solicited, 255, false, &nd_msg(135, v6(5), &[])), "DAD solicitation"),
            (from(mac, mld2_dst, 1, true, &report2), "MLDv2 report"),
            (from(mac, solicited, 1, true, &rep1), "MLDv1 report"),
        ]
    };
    let refused = |mac: [u8; 6]| {
        let udp = |dst: [u8; 16], dst_mac: [u8; 6]| {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(mac, dst_mac)
                .ipv6(ANY, dst, 64)
                .udp(546, 547)
                .write(&mut v, b"x")
                .unwrap();
            v
        };
        let echo = {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(mac, mcast(all_nodes))
                .ipv6(ANY, all_nodes, 64)
                .icmpv6_echo_request(7, 1)
                .write(&mut v, b"x")
                .unwrap();
            v
        };
        let site = [0xff, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 5];
        let mut query = vec![130, 0, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(&[0; 16]);
        let mut report2_code1 = report2;
        report2_code1[1] = 1;
        [
            (udp(all_nodes, mcast(all_nodes)), "UDP to ff02::1"),
            (udp(lla(MAC[1]), MAC[1]), "UDP to b's link-local address"),
            (echo, "an echo request to ff02::1"),
            (
                icmp6_frame(mac, MAC[1], ANY, lla(MAC[1]), 255, false, &nd_msg(135, v6(5), &[]), None),
                "a solicitation to b's link-local address",
            ),
            (from(mac, site, 255, false, &nd_msg(135, v6(5), &[])), "a solicitation to ff05::1:ff00:5"),
            (
                from(
                    mac,
                    [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    255,
                    false,
                    &nd_msg(133, ANY, &[]),
                ),
                "a router solicitation",
            ),
            (from(mac, all_nodes, 1, true, &query), "an MLD query"),
            (from(mac, mld2_dst, 1, true, &report2_code1), "an MLDv2 report of code 1"),
        ]
    };
    let filtered = SwitchConfig::compile(&Config::from_yaml_str(SPOOF_FILTERED).unwrap(), None).unwrap();
    let policed = SwitchConfig::compile(&config(B_WEB, 1024), None).unwrap();
    let pool = pool();
    for traced in [false, true] {
        for (f, what) in allowed(MAC[0]) {
            let (out, drops) = run_either(&filtered, &pool, "a", &f, 1, traced);
            assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "a: {what}, traced {traced}");
        }
        // On the policy bridge the solicitation and the MLDv2 report pass every policy too
        // (the MLDv1 report from `::` is no MLD as OVN's ACLs match it: the policies decide).
        for (f, what) in allowed(MAC[2]).into_iter().take(2) {
            let (out, drops) = run_either(&policed, &pool, "c", &f, 1, traced);
            assert_eq!((out.len(), drops.len()), (2, 0), "c: {what}, traced {traced}");
        }
        for (f, what) in refused(MAC[0]) {
            let (out, drops) = run_either(&filtered, &pool, "a", &f, 1, traced);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "a: {what}, traced {traced}");
        }
        for (f, what) in refused(MAC[2]) {
            let (out, drops) = run_either(&policed, &pool, "c", &f, 1, traced);
            assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")), "c: {what}, traced {traced}");
        }
    }
    // UDP from `::` to a known MAC is a plain burst: the fast path refuses it as well.
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC[0], MAC[1])
        .ipv6(ANY, lla(MAC[1]), 64)
        .udp(1, 2)
        .write(&mut v, b"x")
        .unwrap();
    let (out, drops, fast) = run_fast(&filtered, &pool, "a", &v, 1);
    assert_eq!((out.len(), drops, fast), (0, dropped("spoofed_src_ip"), false));
}

/// An ICMPv6 Redirect (137) is checked as OVN's port security checks it: by its source address
/// alone (docs/policy.md: a receiver takes a redirect only from its first-hop router's
/// link-local address, which the spoof filter refuses a VM). From the router's `fe80::1` or a
/// neighbour's link-local address it is `spoofed_src_ip`, whatever its option names; from the
/// VM's own, its Target Link-Layer Address option is not checked against `allowed_macs` (as
/// under OVN, whose ND checks are for 135 and 136) and it is delivered.
#[test]
fn a_redirect_is_checked_by_its_source_alone() {
    let sw = SwitchConfig::compile(&Config::from_yaml_str(SPOOF_FILTERED).unwrap(), None).unwrap();
    let pool = pool();
    let router = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let foreign_mac = [2, 0, 0, 0, 0, 0x77];
    // Redirect: reserved, target (the better first hop), destination, then the option.
    let redirect = |src: [u8; 16], tll: [u8; 6]| {
        let mut m = vec![137, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&lla(foreign_mac));
        m.extend_from_slice(&v6(9));
        m.extend_from_slice(&[2, 1]);
        m.extend_from_slice(&tll);
        icmp6_frame(MAC[0], MAC[1], src, lla(MAC[1]), 255, false, &m, None)
    };
    for traced in [false, true] {
        for src in [router, lla(MAC[1])] {
            for tll in [MAC[0], foreign_mac] {
                let (out, drops) = run_either(&sw, &pool, "a", &redirect(src, tll), 1, traced);
                assert_eq!(
                    (out.len(), drops),
                    (0, dropped("spoofed_src_ip")),
                    "from {src:?}, traced {traced}"
                );
            }
        }
        for tll in [MAC[0], foreign_mac] {
            let (out, drops) = run_either(&sw, &pool, "a", &redirect(lla(MAC[0]), tll), 1, traced);
            assert_eq!((out, drops.len()), (vec!["b".to_string()], 0), "option {tll:?}, traced {traced}");
        }
    }
}

/// On a bridge without policies or IP spoof filters, a port with a MAC spoof filter alone
/// (`macspoofchk`, OVN's port security) takes the plain stages for a burst that the filter
/// passes unchanged, and the general stages, which count the drop, for any frame it would not:
/// a source, an ARP sender or a neighbour discovery link-layer address not allowed.
#[test]
fn a_mac_filtered_port_takes_the_plain_path_only_for_frames_its_filter_passes() {
    let yaml = r#"
bridges:
- name: br0
  ports:
  - name: a
    static_macs: ['02:00:00:00:00:0a']
  - name: c
    allowed_macs: ['02:00:00:00:00:0c']
"#;
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).expect("valid config"), None).unwrap();
    let pool = pool();
    let udp4 = |src: [u8; 6]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(src, MAC[0])
            .ipv4(IP[2], IP[0], 64)
            .udp(1000, 53)
            .write(&mut v, &[0; 18])
            .expect("frame");
        v
    };
    let udp6 = |src: [u8; 6]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(src, MAC[0])
            .ipv6(v6(3), v6(1), 64)
            .udp(1000, 53)
            .write(&mut v, &[0; 18])
            .expect("frame");
        v
    };
    let arp = |sha: [u8; 6]| {
        let mut p = vec![0, 1, 8, 0, 6, 4, 0, 2];
        p.extend_from_slice(&sha);
        p.extend_from_slice(&IP[2]);
        p.extend_from_slice(&MAC[0]);
        p.extend_from_slice(&IP[0]);
        testkit::frame::Frame::new(MAC[0], MAC[2]).ethertype(0x0806).payload(&p).build()
    };
    // A neighbour advertisement from c to a naming `tll` as c's link-layer address.
    let na = |tll: [u8; 6]| {
        let mut body = v6(3).to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&tll);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC[2], MAC[0])
            .ipv6(lla(MAC[2]), lla(MAC[0]), 255)
            .icmpv6_raw(136, 0, [0x60, 0, 0, 0])
            .write(&mut v, &body)
            .expect("frame");
        v
    };
    let a = vec!["a".to_string()];
    for (what, frame) in
        [("IPv4", udp4(MAC[2])), ("IPv6", udp6(MAC[2])), ("ARP", arp(MAC[2])), ("NA", na(MAC[2]))]
    {
        let (out, drops, plain) = run_fast(&sw, &pool, "c", &frame, 1);
        assert_eq!((out, drops.len(), plain), (a.clone(), 0, true), "{what} from c's own MAC");
    }
    for (what, frame, counter) in [
        ("IPv4 from b's MAC", udp4(MAC[1]), "spoofed_src_mac"),
        ("ARP naming b's MAC", arp(MAC[1]), "spoofed_arp_sha"),
        ("NA naming b's MAC", na(MAC[1]), "spoofed_nd_lladdr"),
    ] {
        let (out, drops, plain) = run_fast(&sw, &pool, "c", &frame, 1);
        assert_eq!((out.len(), drops, plain), (0, dropped(counter), false), "{what}");
    }
    // An outer QinQ tag: the general stages read the tags inside.
    let mut qinq = udp4(MAC[2]);
    qinq.splice(12..12, [0x88, 0xa8, 0, 10]);
    let (_, _, plain) = run_fast(&sw, &pool, "c", &qinq, 1);
    assert!(!plain, "a QinQ frame took the plain path");
}

/// On a bridge with policies, two ports without one (VMs beside one that has a policy): their
/// connections are not tracked (a connection is committed only where one of its ports has a
/// policy), and their bursts take the fast path from the first packet on, tracking nothing;
/// a port with an ingress or an egress policy still has every new connection checked. Fails
/// with the sending port's policy not looked at for untracked connections
/// (`FastKeys::check`'s `Fast::Absent` arm without `from_open`), or with the receiving
/// port's not.
#[test]
fn ports_without_policies_beside_one_take_the_fast_path_untracked() {
    let yaml = r#"
bridges:
- name: br0
  conntrack_size: 1024
  ports:
  - name: x
    static_macs: ['02:00:00:00:00:0a']
  - name: y
    static_macs: ['02:00:00:00:00:0b']
    allowed_ips: [10.0.0.2]
  - name: p
    static_macs: ['02:00:00:00:00:0c']
    policy:
      ingress: {rules: []}
  - name: e
    static_macs: ['02:00:00:00:00:0d']
    policy:
      egress: {rules: [{name: e/only-nine, peers: [{cidr: 10.0.0.9/32}]}]}
"#;
    let sw = SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap();
    let pool = pool();
    let ct = sw.bridges[0].conntrack.clone().expect("a table: the bridge has policies");
    let e_mac = [2, 0, 0, 0, 0, 0xd];
    let (out, drops, fast) = run_fast(&sw, &pool, "x", &udp(0, 1, 5000, 53), 1);
    assert_eq!((out, drops, fast), (vec!["y".to_string()], BTreeMap::new(), true), "x -> y, untracked");
    let (out, _, fast) = run_fast(&sw, &pool, "y", &udp(1, 0, 53, 5000), 1);
    assert_eq!((out, fast), (vec!["x".to_string()], true), "the reply, untracked");
    let (out, _, fast) = run_fast(&sw, &pool, "x", &tcp(0, 1, 40000, 80, "syn"), 1);
    assert_eq!((out, fast), (vec!["y".to_string()], true), "a SYN opens nothing to track");
    assert_eq!(ct.entries(1, 0).1, 0, "nothing tracked between ports without policies");
    // y's IP spoof filter still holds on the fast path's way.
    let (out, drops, _) = run_fast(&sw, &pool, "y", &udp_from(1, [10, 0, 0, 7], 0, 53, 5000), 1);
    assert_eq!((out.len(), drops), (0, dropped("spoofed_src_ip")));
    // To p, whose ingress allows nothing: checked, dropped, every time.
    for _ in 0..2 {
        let (out, drops, fast) = run_fast(&sw, &pool, "x", &udp(0, 2, 5000, 53), 1);
        assert_eq!((out.len(), drops, fast), (0, dropped("policy_ingress_denied"), false), "x -> p");
    }
    // From e, whose egress allows 10.0.0.9 alone, to x: checked, dropped, every time.
    for _ in 0..2 {
        let f = udp_frame(e_mac, [10, 0, 0, 4], MAC[0], IP[0], 7000, 53);
        let (out, drops, fast) = run_fast(&sw, &pool, "e", &f, 1);
        assert_eq!((out.len(), drops, fast), (0, dropped("policy_egress_denied"), false), "e -> x");
    }
    assert_eq!(ct.entries(1, 0).1, 0, "refused connections are not tracked");
}

/// The bridge of the tests of ports without policies beside ports with one: `x` and `y` open
/// (`y` with both spoof filters, as a VM port), `i` with an ingress policy alone, `e` with an
/// egress policy alone (each allowing everything), `z` with a policy of neither direction
/// (`policy: {}`). Hosts: [`BESIDE`].
fn beside_config() -> Config {
    let yaml = r#"
bridges:
- name: br0
  conntrack_size: 1024
  ports:
  - name: x
    static_macs: ['02:00:00:00:00:0a']
  - name: y
    static_macs: ['02:00:00:00:00:0b']
    allowed_macs: ['02:00:00:00:00:0b']
    allowed_ips: [10.0.0.2, 'fd00::2']
  - name: i
    static_macs: ['02:00:00:00:00:0c']
    policy:
      ingress: {rules: [{name: i/any}]}
  - name: e
    static_macs: ['02:00:00:00:00:0d']
    policy:
      egress: {rules: [{name: e/any}]}
  - name: z
    static_macs: ['02:00:00:00:00:0e']
    policy: {}
"#;
    Config::from_yaml_str(yaml).expect("valid config")
}

/// [`beside_config`]'s ports and their hosts' MACs and IPv4 addresses.
const BESIDE: [(&str, [u8; 6], [u8; 4]); 5] = [
    ("x", [2, 0, 0, 0, 0, 0xa], [10, 0, 0, 1]),
    ("y", [2, 0, 0, 0, 0, 0xb], [10, 0, 0, 2]),
    ("i", [2, 0, 0, 0, 0, 0xc], [10, 0, 0, 3]),
    ("e", [2, 0, 0, 0, 0, 0xd], [10, 0, 0, 4]),
    ("z", [2, 0, 0, 0, 0, 0xe], [10, 0, 0, 5]),
];

/// A UDP packet between two of [`BESIDE`]'s hosts.
fn beside_udp(from: usize, to: usize, sport: u16, dport: u16) -> Vec<u8> {
    let ((_, sm, si), (_, dm, di)) = (BESIDE[from], BESIDE[to]);
    udp_frame(sm, si, dm, di, sport, dport)
}

/// The live connections of `sw`'s table at `now`, sorted: (key, state, blocked, seconds left).
fn live(sw: &SwitchConfig, now: u32) -> Vec<String> {
    let ct = sw.bridges[0].conntrack.as_ref().expect("a table");
    let mut v: Vec<String> = ct
        .entries(now, usize::MAX)
        .0
        .iter()
        .map(|e| format!("{:?} {} blocked={} ttl={}", e.key, e.state.name(), e.blocked, e.ttl))
        .collect();
    v.sort();
    v
}

/// One frame from `from` on `fast` untraced (the fast path first) and on `general` traced (the
/// general stages alone, storing no verdicts), two switches compiled from the same config
/// that saw the same frames: both must queue it to the same ports, count the same drops on
/// `from` and leave the same live connections. Returns (ports, drops, whether the fast path
/// took it).
fn both(
    fast: &SwitchConfig,
    general: &SwitchConfig,
    pool: &Pool,
    from: &str,
    frame: &[u8],
    now: u32,
    why: &str,
) -> (Vec<String>, BTreeMap<String, u64>, bool) {
    let (out, drops, took) = run_fast(fast, pool, from, frame, now);
    let (g_out, g_drops, _) = send(general, pool, from, frame, now);
    assert_eq!(
        (&out, &drops),
        (&g_out, &g_drops),
        "{why}: fast path (taken: {took}) against the general stages"
    );
    assert_eq!(live(fast, now), live(general, now), "{why}: the connection tables (fast path taken: {took})");
    (out, drops, took)
}

/// A new connection to or from a port with a policy of one direction, or of none (`{}`), is
/// committed by the general stages whichever direction that is (a receiving port's egress
/// policy or a sending port's ingress policy commits it too: the stage commits where either
/// port has a policy), so the fast path must not pass it as untracked; its reply then passes
/// as a tracked connection's. Between the two open ports nothing is tracked. Fails with the
/// fast path's "open" test of a port made per direction (the receiver's ingress policy, the
/// sender's egress policy) or with an empty policy taken as none.
#[test]
fn one_way_and_empty_policies_on_either_end_commit_new_connections() {
    let cfg = beside_config();
    let (fast, general) =
        (SwitchConfig::compile(&cfg, None).unwrap(), SwitchConfig::compile(&cfg, None).unwrap());
    assert!(fast.port_by_name("z").unwrap().policy.is_some(), "`policy: {{}}` is a policy");
    let pool = pool();
    let mut tracked = 0;
    // (sender, receiver) by index into BESIDE: x to e (a receiver's egress-only policy), x to
    // z, i to x (a sender's ingress-only policy), z to x, x to i, e to x.
    for (n, (a, b)) in [(0, 3), (0, 4), (2, 0), (4, 0), (0, 2), (3, 0)].into_iter().enumerate() {
        let (an, bn) = (BESIDE[a].0, BESIDE[b].0);
        let why = format!("{an} -> {bn}");
        let sport = 5000 + n as u16;
        let (out, drops, took) = both(&fast, &general, &pool, an, &beside_udp(a, b, sport, 53), 1, &why);
        assert_eq!((out, drops, took), (vec![bn.to_string()], BTreeMap::new(), false), "{why}: checked");
        tracked += 1;
        assert_eq!(live(&fast, 1).len(), tracked, "{why}: committed");
        let why = format!("{bn} -> {an}, the reply");
        let (out, _, took) = both(&fast, &general, &pool, bn, &beside_udp(b, a, 53, sport), 1, &why);
        assert_eq!((out, took), (vec![an.to_string()], false), "{why}: moves the state on");
        let (out, _, took) = both(&fast, &general, &pool, bn, &beside_udp(b, a, 53, sport), 1, &why);
        assert_eq!((out, took), (vec![an.to_string()], true), "{why}: replied, fast");
    }
    // x and y: untracked, both ways, from the first packet.
    let (out, _, took) = both(&fast, &general, &pool, "x", &beside_udp(0, 1, 6000, 53), 1, "x -> y");
    assert_eq!((out, took), (vec!["y".to_string()], true), "x -> y untracked");
    let (out, _, took) = both(&fast, &general, &pool, "y", &beside_udp(1, 0, 53, 6000), 1, "y -> x");
    assert_eq!((out, took), (vec!["x".to_string()], true), "y -> x untracked");
    assert_eq!(live(&fast, 1).len(), tracked, "nothing tracked between x and y");
}

/// The IPv6 and ICMP packets between two open ports on a bridge with policies (`x`, and `y`
/// with both spoof filters): echo requests and replies, IPv6 UDP, TCP with SYN, FIN or RST, a
/// later fragment, an ICMP error: none is tracked, and each passes as the general stages pass
/// it (the fast path takes the connections' packets, untracked, from the first one on). What
/// the general stages check beyond the policies still holds on the fast path's way: `y`'s IPv6
/// source, and a unicast neighbour advertisement's claim (its target must be `y`'s), which the
/// fast path must leave to the general stages. Fails with the fast path's key read taking
/// neighbour discovery (any IP kind, not only a connection's packets), or without the IPv6
/// source check.
#[test]
fn untracked_ipv6_icmp_and_neighbour_discovery_between_open_ports() {
    let cfg = beside_config();
    let (fast, general) =
        (SwitchConfig::compile(&cfg, None).unwrap(), SwitchConfig::compile(&cfg, None).unwrap());
    let pool = pool();
    let (xm, ym) = (BESIDE[0].1, BESIDE[1].1);
    let (xi, yi) = (BESIDE[0].2, BESIDE[1].2);
    let ip6 = |i: u8| [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i];
    // Each builder step is a type of its own.
    macro_rules! built {
        ($b:expr, $payload:expr) => {{
            let mut v = Vec::new();
            $b.write(&mut v, $payload).expect("frame");
            v
        }};
    }
    let v4 = |from: [u8; 6], fi: [u8; 4], to: [u8; 6], ti: [u8; 4]| {
        PacketBuilder::ethernet2(from, to).ipv4(fi, ti, 64)
    };
    let v6 = |from: [u8; 6], fi: [u8; 16], to: [u8; 6], ti: [u8; 16]| {
        PacketBuilder::ethernet2(from, to).ipv6(fi, ti, 64)
    };
    let tcp = |flags: &str| {
        let b = v4(xm, xi, ym, yi).tcp(41000, 22, 1, 1000);
        let b = match flags {
            "syn" => b.syn(),
            "fin" => b.fin().ack(2),
            _ => b.rst(),
        };
        built!(b, &[])
    };
    let mut frag = built!(v4(xm, xi, ym, yi).udp(5000, 53), b"later");
    frag[14 + 6] = 0;
    frag[14 + 7] = 8;
    // Each passes on the fast path, untracked.
    let fast_ones: [(&str, &str, Vec<u8>); 9] = [
        ("x", "echo request", built!(v4(xm, xi, ym, yi).icmpv4_echo_request(7, 1), b"ping")),
        ("y", "echo reply", built!(v4(ym, yi, xm, xi).icmpv4_echo_reply(7, 1), b"ping")),
        ("y", "ICMPv6 echo request", built!(v6(ym, ip6(2), xm, ip6(1)).icmpv6_echo_request(8, 1), b"p")),
        ("x", "ICMPv6 echo reply", built!(v6(xm, ip6(1), ym, ip6(2)).icmpv6_echo_reply(8, 1), b"p")),
        ("y", "IPv6 UDP", built!(v6(ym, ip6(2), xm, ip6(1)).udp(5353, 53), b"q")),
        ("x", "TCP SYN", tcp("syn")),
        ("x", "TCP FIN", tcp("fin")),
        ("x", "TCP RST", tcp("rst")),
        ("x", "a later fragment", frag),
    ];
    for (from, why, f) in &fast_ones {
        let to = if *from == "x" { "y" } else { "x" };
        let (out, drops, took) = both(&fast, &general, &pool, from, f, 1, why);
        assert_eq!((out, drops, took), (vec![to.to_string()], BTreeMap::new(), true), "{why}");
    }
    assert_eq!(live(&fast, 1), Vec::<String>::new(), "nothing tracked");
    // y's IPv6 source: another address is refused.
    let spoofed = built!(v6(ym, ip6(9), xm, ip6(1)).udp(5353, 53), b"q");
    let (out, drops, took) = both(&fast, &general, &pool, "y", &spoofed, 1, "IPv6 spoofed source");
    assert_eq!((out.len(), drops, took), (0, dropped("spoofed_src_ip"), false), "IPv6 spoofed source");
    // A unicast neighbour advertisement from y to x (as an answer to x's solicitation): its
    // target must be y's own address; x's is refused.
    let na = |target: [u8; 16]| {
        let mut body = target.to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&ym);
        let mut v = Vec::new();
        PacketBuilder::ethernet2(ym, xm)
            .ipv6(ip6(2), ip6(1), 255)
            .icmpv6_raw(136, 0, [0x60, 0, 0, 0])
            .write(&mut v, &body)
            .expect("frame");
        v
    };
    let (out, drops, took) = both(&fast, &general, &pool, "y", &na(ip6(1)), 1, "y claims x's address");
    assert_eq!((out.len(), drops, took), (0, dropped("spoofed_src_ip"), false), "y claims x's address");
    let (out, drops, took) = both(&fast, &general, &pool, "y", &na(ip6(2)), 1, "y's own address");
    assert_eq!((out, drops, took), (vec!["x".to_string()], BTreeMap::new(), false), "y's own address");
    // An ICMP error (x's port unreachable for a y -> x datagram): the general stages' own.
    let quoted = built!(v4(ym, yi, xm, xi).udp(5000, 53), b"q");
    let mut err = Vec::new();
    v4(xm, xi, ym, yi).icmpv4_raw(3, 3, [0; 4]).write(&mut err, &quoted[14..14 + 28]).expect("frame");
    let (out, drops, took) = both(&fast, &general, &pool, "x", &err, 1, "ICMP error");
    assert_eq!((out, drops, took), (vec!["y".to_string()], BTreeMap::new(), false), "ICMP error");
    assert_eq!(live(&fast, 1), Vec::<String>::new(), "nothing tracked");
}

/// The flow key of a UDP packet between two of [`BESIDE`]'s hosts.
fn beside_key(from: usize, to: usize, sport: u16, dport: u16) -> switchyard_dataplane::wire::ip::FlowKey {
    switchyard_dataplane::wire::ip::FlowKey {
        src: u128::from(u32::from_be_bytes(BESIDE[from].2)),
        dst: u128::from(u32::from_be_bytes(BESIDE[to].2)),
        sport,
        dport,
        proto: 17,
        v4: true,
        vlan: 0,
    }
}

/// Connections between the open ports x and y that a policy once tracked (committed here by
/// hand, as under an earlier snapshot where one of them had a policy): one that expired
/// without the sweep emptying its slot (the directory still shows its tag, and a probe reads
/// past it), and one live but blocked. The expired one is not tracked: its packets pass, both
/// ways, on the fast path, writing nothing (the entry is not revived); the blocked one's pass
/// through the general stages (nothing to check), and it stays blocked. Fails with the fast
/// path's lookup taking an expired entry of the key for a live one (the original direction
/// then leaves the fast path; with its refresh not refused either, the entry is revived).
#[test]
fn expired_and_blocked_connections_between_open_ports() {
    let cfg = beside_config();
    let (fast, general) =
        (SwitchConfig::compile(&cfg, None).unwrap(), SwitchConfig::compile(&cfg, None).unwrap());
    let pool = pool();
    let (expired, blocked) = (beside_key(0, 1, 7000, 53), beside_key(0, 1, 7001, 53));
    for sw in [&fast, &general] {
        let ct = sw.bridges[0].conntrack.as_ref().expect("a table");
        // Replied at 1: live until 121 (UDP, a stream).
        ct.commit(&expired, 0, 1).expect("room");
        ct.reply(&expired.reversed(), 0, 1);
        ct.commit(&blocked, 0, 200).expect("room");
        ct.reply(&blocked.reversed(), 0, 200);
        ct.block(&blocked, 200);
    }
    let before = live(&fast, 1);
    assert_eq!(before.len(), 2, "{before:?}");
    let now = 200;
    for (from, a, b, sport, dport) in [("y", 1, 0, 53, 7000), ("x", 0, 1, 7000, 53)] {
        let why = format!("{from}: the expired connection");
        let (out, drops, took) =
            both(&fast, &general, &pool, from, &beside_udp(a, b, sport, dport), now, &why);
        assert_eq!((out, drops, took), (vec![BESIDE[b].0.to_string()], BTreeMap::new(), true), "{why}");
    }
    for (from, a, b, sport, dport) in [("x", 0, 1, 7001, 53), ("y", 1, 0, 53, 7001)] {
        let why = format!("{from}: the blocked connection");
        let (out, drops, _) = both(&fast, &general, &pool, from, &beside_udp(a, b, sport, dport), now, &why);
        assert_eq!((out, drops), (vec![BESIDE[b].0.to_string()], BTreeMap::new()), "{why}");
    }
    // Still in their slots, as they were (the expired one neither revived nor swept).
    assert_eq!(live(&fast, 1), before, "the fast path wrote nothing");
    assert_eq!(live(&general, 1), before, "the general stages wrote nothing");
}

/// Snapshots changing between bursts: x has an egress policy (its connection to y tracked),
/// then none (x and y open: the tracked connection goes on, a new one is not tracked and takes
/// the fast path from its first packet), then one refusing everything (the untracked
/// connection's next packet is checked and refused; the tracked one's too). The untraced and
/// traced switch chains must agree at every step. Fails with the sending port's policy not
/// looked at for untracked connections.
#[test]
fn untracked_connections_across_policy_changes() {
    let yaml = |x_policy: &str| {
        format!(
            r#"
bridges:
- name: br0
  conntrack_size: 1024
  ports:
  - name: x
    static_macs: ['02:00:00:00:00:0a']
{x_policy}
  - name: y
    static_macs: ['02:00:00:00:00:0b']
  - name: i
    static_macs: ['02:00:00:00:00:0c']
    policy:
      ingress: {{rules: [{{name: i/any}}]}}
"#
        )
    };
    let allow = "    policy:\n      egress: {rules: [{name: x/any}]}";
    let deny = "    policy:\n      egress: {rules: []}";
    let pool = pool();
    let compile = |p: &str, prev: Option<&SwitchConfig>| {
        SwitchConfig::compile(&Config::from_yaml_str(&yaml(p)).expect("valid config"), prev).expect("compile")
    };
    let (f1, g1) = (compile(allow, None), compile(allow, None));
    let (out, _, took) = both(&f1, &g1, &pool, "x", &beside_udp(0, 1, 8000, 53), 1, "allowed, tracked");
    assert_eq!((out, took), (vec!["y".to_string()], false));
    both(&f1, &g1, &pool, "y", &beside_udp(1, 0, 53, 8000), 1, "its reply");
    assert_eq!(live(&f1, 1).len(), 1);
    // x open: the tracked connection's verdict no longer stands (checked once, then fast),
    // a new connection is untracked.
    let (f2, g2) = (compile("", Some(&f1)), compile("", Some(&g1)));
    for (n, want_fast) in [(0, false), (1, true)] {
        let why = format!("open: the tracked connection, packet {n}");
        let (out, _, took) = both(&f2, &g2, &pool, "x", &beside_udp(0, 1, 8000, 53), 2, &why);
        assert_eq!((out, took), (vec!["y".to_string()], want_fast), "{why}");
    }
    let (out, _, took) = both(&f2, &g2, &pool, "x", &beside_udp(0, 1, 8001, 53), 2, "open: a new connection");
    assert_eq!((out, took), (vec!["y".to_string()], true), "open: a new connection, untracked");
    let (out, _, took) = both(&f2, &g2, &pool, "y", &beside_udp(1, 0, 53, 8001), 2, "open: its reply");
    assert_eq!((out, took), (vec!["x".to_string()], true), "open: its reply, untracked");
    assert_eq!(live(&f2, 2).len(), 1, "the new connection is not tracked");
    // x refuses everything: both connections' next packets are checked and refused.
    let (f3, g3) = (compile(deny, Some(&f2)), compile(deny, Some(&g2)));
    for sport in [8001, 8000] {
        let why = format!("refused: from port {sport}");
        let (out, drops, took) = both(&f3, &g3, &pool, "x", &beside_udp(0, 1, sport, 53), 3, &why);
        assert_eq!((out.len(), drops, took), (0, dropped("policy_egress_denied"), false), "{why}");
    }
}
