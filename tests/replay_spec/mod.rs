//! The replay cases as a specification: for each case the scenario, the input frames and the
//! frames and counters that the switch must produce, written down from the L2 semantics of
//! docs/semantics.md (not from the switch's output). `tests/replay_gen.rs` turns them into the
//! files under `tests/replay/<case>/` and checks that the committed files never drift from this
//! specification; `tests/replay_cases.rs` runs `switchyard replay --expect` on every case.
//!
//! This module is shared by several test crates, so not every item is used by each of them.
#![allow(dead_code)]

pub mod cases;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------------
// Classic pcap files (little-endian, v2.4, snaplen 65535, linktype 1 = Ethernet, microseconds).

/// One pcap record: timestamp in microseconds, the captured bytes and the original length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time_us: u64,
    pub data: Vec<u8>,
    pub orig_len: u32,
}

pub fn pcap_header() -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    v.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    v.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    v.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    v
}

pub fn pcap_record(r: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + r.data.len());
    v.extend_from_slice(&((r.time_us / 1_000_000) as u32).to_le_bytes());
    v.extend_from_slice(&((r.time_us % 1_000_000) as u32).to_le_bytes());
    v.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
    v.extend_from_slice(&r.orig_len.to_le_bytes());
    v.extend_from_slice(&r.data);
    v
}

pub fn pcap_file(records: &[Record]) -> Vec<u8> {
    let mut v = pcap_header();
    for r in records {
        v.extend(pcap_record(r));
    }
    v
}

/// A pcap of whole frames (captured length == original length).
pub fn pcap_of(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let recs: Vec<Record> = frames
        .iter()
        .map(|(t, d)| Record { time_us: *t, data: d.clone(), orig_len: d.len() as u32 })
        .collect();
    pcap_file(&recs)
}

// ---------------------------------------------------------------------------------------------
// Frame builder.

pub type Mac = [u8; 6];

/// A locally administered unicast MAC 02:00:00:00:00:NN.
pub const fn m(last: u8) -> Mac {
    [0x02, 0, 0, 0, 0, last]
}
pub const BCAST: Mac = [0xff; 6];
pub const ZERO: Mac = [0; 6];
pub const IPV4_MCAST: Mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
pub const IPV6_MCAST: Mac = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
/// 01:80:c2:00:00:NN, the IEEE 802.1 reserved range when NN <= 0x0f.
pub const fn ieee(last: u8) -> Mac {
    [0x01, 0x80, 0xc2, 0x00, 0x00, last]
}

pub fn mac_str(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The generic EtherType of test frames (IEEE 802 local experimental 1).
pub const ET_TEST: u16 = 0x88b5;
pub const ET_ARP: u16 = 0x0806;
pub const ET_RARP: u16 = 0x8035;
pub const ET_IPV6: u16 = 0x86dd;
pub const ET_VLAN: u16 = 0x8100;
pub const ET_QINQ: u16 = 0x88a8;

/// An 802.1Q tag (TPID 0x8100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
}

impl Tag {
    pub fn tci(self) -> u16 {
        ((self.pcp as u16) << 13) | ((self.dei as u16) << 12) | (self.vid & 0x0fff)
    }
}

/// Tag with VID `vid`, PCP 0, DEI 0.
pub fn v(vid: u16) -> Option<Tag> {
    Some(Tag { pcp: 0, dei: false, vid })
}
/// Tag with PCP `pcp` and VID `vid` (`pv(p, 0)` is a priority tag).
pub fn pv(pcp: u8, vid: u16) -> Option<Tag> {
    Some(Tag { pcp, dei: false, vid })
}
/// Tag with PCP, DEI and VID.
pub fn pdv(pcp: u8, dei: bool, vid: u16) -> Option<Tag> {
    Some(Tag { pcp, dei, vid })
}

/// Destination, source, EtherType and payload, with no padding.
pub fn raw(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    testkit::frame::Frame::new(dst, src).ethertype(ethertype).payload(payload).build()
}

/// Inserts `81 00 TCI` right after the two MACs (the frame must hold at least 12 bytes).
pub fn push_tag(frame: &[u8], tag: Tag) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12]);
    f.extend_from_slice(&ET_VLAN.to_be_bytes());
    f.extend_from_slice(&tag.tci().to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An Ethernet frame: the untagged frame is zero-padded to 60 bytes, then the tag (if any) is
/// inserted after the MACs. So a tagged frame is 64 bytes (for a short payload) and removing
/// its tag gives exactly the untagged frame built with the same arguments, and pushing a tag on
/// the untagged frame gives the tagged one: no padding question ever arises on egress.
pub fn eth(dst: Mac, src: Mac, tag: Option<Tag>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = raw(dst, src, ethertype, payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    match tag {
        Some(t) => push_tag(&f, t),
        None => f,
    }
}

/// A test frame (EtherType 0x88b5) whose payload is `text`.
pub fn pkt(dst: Mac, src: Mac, tag: Option<Tag>, text: &str) -> Vec<u8> {
    eth(dst, src, tag, ET_TEST, text.as_bytes())
}

/// A test frame of exactly `len` bytes (untagged part `len - 4` when tagged), payload filled
/// with a counting pattern.
pub fn sized(dst: Mac, src: Mac, tag: Option<Tag>, len: usize) -> Vec<u8> {
    let untagged = if tag.is_some() { len - 4 } else { len };
    let payload: Vec<u8> = (0..untagged - 14).map(|i| (i % 251) as u8).collect();
    let f = eth(dst, src, tag, ET_TEST, &payload);
    assert_eq!(f.len(), len);
    f
}

/// An ARP (or RARP) body: Ethernet/IPv4, hlen 6, plen 4.
pub fn arp_body(op: u16, sha: Mac, spa: [u8; 4], tha: Mac, tpa: [u8; 4]) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    b.extend_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    b.push(6);
    b.push(4);
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa);
    b.extend_from_slice(&tha);
    b.extend_from_slice(&tpa);
    b
}

/// An ARP request (op 1) from `sha`/`spa` for `tpa`, in a frame from `src` to `dst`.
pub fn arp_req(dst: Mac, src: Mac, tag: Option<Tag>, sha: Mac, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    eth(dst, src, tag, ET_ARP, &arp_body(1, sha, spa, ZERO, tpa))
}

/// An ARP reply (op 2).
pub fn arp_reply(
    dst: Mac,
    src: Mac,
    tag: Option<Tag>,
    sha: Mac,
    spa: [u8; 4],
    tha: Mac,
    tpa: [u8; 4],
) -> Vec<u8> {
    eth(dst, src, tag, ET_ARP, &arp_body(2, sha, spa, tha, tpa))
}

/// An IPv4 packet (RFC 791: version 4, 20-byte header, TTL 64, checksum left 0) carrying a UDP
/// datagram (RFC 768: checksum 0, none) from `src:sp` to `dst:dp` with `text` as its payload.
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, text: &str) -> Vec<u8> {
    let udp_len = 8 + text.len();
    let total = (20 + udp_len) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sp.to_be_bytes());
    p.extend_from_slice(&dp.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(text.as_bytes());
    p
}

/// An IPv6 neighbour discovery message (RFC 4861: hop limit 255, ICMPv6 code 0, checksum left
/// 0) of type `ty` (133 RS, 135 NS, 136 NA) from `src` to `dst`, with `target` (NS, NA) and
/// one link-layer address option (`opt`: 1 source, 2 target) naming `ll`.
pub fn ipv6_nd(ty: u8, src: [u8; 16], dst: [u8; 16], target: [u8; 16], opt: u8, ll: Mac) -> Vec<u8> {
    let mut icmp = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    if ty != 133 {
        icmp.extend_from_slice(&target);
    }
    icmp.extend_from_slice(&[opt, 1]);
    icmp.extend_from_slice(&ll);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&icmp);
    p
}

/// A RARP request (EtherType 0x8035, op 3): "who am I", sender and target hw address `sha`.
pub fn rarp_req(dst: Mac, src: Mac, tag: Option<Tag>, sha: Mac) -> Vec<u8> {
    eth(dst, src, tag, ET_RARP, &arp_body(3, sha, [0; 4], sha, [0; 4]))
}

// ---------------------------------------------------------------------------------------------
// Scenario (the configuration schema of docs/semantics.md, without `type`).

#[derive(Clone, Debug, Default)]
pub struct Port {
    pub name: String,
    pub vlan_mode: Option<&'static str>,
    pub tag: Option<u16>,
    pub trunks: Option<Vec<u16>>,
    pub allowed_macs: Option<Vec<Mac>>,
    pub static_macs: Vec<Mac>,
    pub mac_limit: Option<u32>,
    /// Further keys, as YAML lines written under the port (`allowed_ips`, `policy`).
    pub yaml: Vec<String>,
}

pub fn access(name: &str, tag: u16) -> Port {
    Port { name: name.into(), vlan_mode: Some("access"), tag: Some(tag), ..Default::default() }
}
/// A trunk of `trunks`; an empty slice writes no `trunks` key (all VLANs).
pub fn trunk(name: &str, trunks: &[u16]) -> Port {
    Port {
        name: name.into(),
        vlan_mode: Some("trunk"),
        trunks: if trunks.is_empty() { None } else { Some(trunks.to_vec()) },
        ..Default::default()
    }
}
pub fn native_tagged(name: &str, tag: u16, trunks: &[u16]) -> Port {
    Port {
        name: name.into(),
        vlan_mode: Some("native-tagged"),
        tag: Some(tag),
        trunks: if trunks.is_empty() { None } else { Some(trunks.to_vec()) },
        ..Default::default()
    }
}
pub fn native_untagged(name: &str, tag: u16, trunks: &[u16]) -> Port {
    Port { vlan_mode: Some("native-untagged"), ..native_tagged(name, tag, trunks) }
}
/// A port with only a name and whatever the caller sets (to test the defaults).
pub fn bare(name: &str) -> Port {
    Port { name: name.into(), ..Default::default() }
}

impl Port {
    pub fn allowed(mut self, macs: &[Mac]) -> Self {
        self.allowed_macs = Some(macs.to_vec());
        self
    }
    pub fn statics(mut self, macs: &[Mac]) -> Self {
        self.static_macs = macs.to_vec();
        self
    }
    /// Adds a YAML line to the port (docs/policy.md's `allowed_ips` and `policy`).
    pub fn with_yaml(mut self, line: &str) -> Self {
        self.yaml.push(line.to_string());
        self
    }
    pub fn limit(mut self, n: u32) -> Self {
        self.mac_limit = Some(n);
        self
    }
    pub fn with_tag(mut self, t: u16) -> Self {
        self.tag = Some(t);
        self
    }
    pub fn with_trunks(mut self, t: &[u16]) -> Self {
        self.trunks = Some(t.to_vec());
        self
    }
}

#[derive(Clone, Debug, Default)]
pub struct Bridge {
    pub name: String,
    pub mac_aging_s: Option<u32>,
    pub mac_table_size: Option<usize>,
    pub ports: Vec<Port>,
}

pub fn bridge(name: &str, ports: Vec<Port>) -> Bridge {
    Bridge { name: name.into(), ports, ..Default::default() }
}

impl Bridge {
    pub fn aging(mut self, s: u32) -> Self {
        self.mac_aging_s = Some(s);
        self
    }
    pub fn table_size(mut self, n: usize) -> Self {
        self.mac_table_size = Some(n);
        self
    }
}

/// A port name as a YAML scalar (quoted unless plainly safe).
fn yname(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        s.to_string()
    } else {
        format!("\"{s}\"")
    }
}

fn ylist<T, F: Fn(&T) -> String>(items: &[T], f: F) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
}

/// The file name a port's pcap gets: `/` becomes `_`.
pub fn file_name(port: &str) -> String {
    format!("{}.pcap", port.replace('/', "_"))
}

// ---------------------------------------------------------------------------------------------
// Cases.

pub const DROP_REASONS: &[&str] = &[
    "runt",
    "truncated_vlan_tag",
    "oversize",
    "truncated_capture",
    "invalid_src_mac",
    "reserved_dst_mac",
    "vlan_not_allowed",
    "spoofed_src_mac",
    "spoofed_arp_sha",
    "spoofed_nd_lladdr",
    "malformed_arp",
    "dst_is_ingress",
    "no_egress_port",
    "no_buffer",
    "tx_full",
    "port_down",
];

/// The policy stage's reasons (docs/policy.md), in the stats of cases with a port that has
/// `allowed_ips` or a `policy`.
pub const POLICY_DROP_REASONS: &[&str] = &[
    "spoofed_src_ip",
    "spoofed_arp_spa",
    "malformed_ip",
    "policy_egress_denied",
    "policy_ingress_denied",
    "conntrack_full",
];

/// Reasons for which the frame never enters the pipeline (not counted in rx_*).
const REFUSED: &[&str] = &["oversize", "truncated_capture"];

/// Per-port counters that are 0 unless a case says otherwise.
const ZERO_COUNTERS: &[&str] = &["moved_in", "static_conflicts", "mac_limit_hits", "fdb_full"];
/// Counters a case may set (then they are checked), besides the above.
const OPTIONAL_COUNTERS: &[&str] = &["flooded", "learned"];

#[derive(Clone, Debug)]
pub struct Input {
    pub time_us: u64,
    pub port: String,
    pub data: Vec<u8>,
    pub orig_len: u32,
    pub refused: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Case {
    pub name: &'static str,
    pub about: String,
    pub bridges: Vec<Bridge>,
    /// The order of `inputs` in the scenario (ports with input frames not listed here follow
    /// in order of their first frame).
    pub input_order: Vec<String>,
    pub inputs: Vec<Input>,
    /// Per port, in processing order.
    pub outputs: BTreeMap<String, Vec<(u64, Vec<u8>)>>,
    pub drops: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub counters: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub bridge_counters: BTreeMap<String, BTreeMap<&'static str, u64>>,
    next_time: u64,
    last_time: u64,
}

impl Case {
    pub fn new(name: &'static str, about: &str, bridges: Vec<Bridge>) -> Case {
        Case { name, about: about.trim().to_string(), bridges, next_time: 1_000_000, ..Default::default() }
    }

    pub fn ports(&self) -> Vec<&Port> {
        self.bridges.iter().flat_map(|b| b.ports.iter()).collect()
    }

    /// Some port has policy keys (then the policy stage's reasons are in the stats).
    fn has_policy(&self) -> bool {
        self.ports().iter().any(|p| !p.yaml.is_empty())
    }

    fn has_port(&self, p: &str) -> bool {
        self.ports().iter().any(|x| x.name == p)
    }

    /// Sets the time of the next frame (microseconds); later frames follow 1 ms apart.
    pub fn at_us(&mut self, t: u64) -> &mut Self {
        self.next_time = t;
        self
    }
    pub fn at_s(&mut self, s: u64) -> &mut Self {
        self.at_us(s * 1_000_000)
    }

    pub fn inputs_order(&mut self, ports: &[&str]) -> &mut Self {
        self.input_order = ports.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sends a frame into `port` at the current time.
    pub fn send(&mut self, port: &str, data: Vec<u8>) -> &mut Self {
        let orig = data.len() as u32;
        self.send_record(port, data, orig)
    }

    /// Sends a capture record whose original length may exceed what was captured.
    pub fn send_record(&mut self, port: &str, data: Vec<u8>, orig_len: u32) -> &mut Self {
        assert!(self.has_port(port), "{}: no port {port}", self.name);
        let t = self.next_time;
        self.inputs.push(Input { time_us: t, port: port.into(), data, orig_len, refused: false });
        self.last_time = t;
        self.next_time = t + 1000;
        self
    }

    /// Expects `data` out of `port`, stamped with the last input frame's time.
    pub fn out(&mut self, port: &str, data: Vec<u8>) -> &mut Self {
        let t = self.last_time;
        self.out_at(port, t, data)
    }

    pub fn out_at(&mut self, port: &str, t: u64, data: Vec<u8>) -> &mut Self {
        assert!(self.has_port(port), "{}: no port {port}", self.name);
        self.outputs.entry(port.into()).or_default().push((t, data));
        self
    }

    /// Expects the last input frame to be dropped with `reason`, counted on `port`.
    pub fn drop(&mut self, port: &str, reason: &'static str) -> &mut Self {
        assert!(
            DROP_REASONS.contains(&reason) || (self.has_policy() && POLICY_DROP_REASONS.contains(&reason)),
            "{}: unknown reason {reason}",
            self.name
        );
        assert!(self.has_port(port), "{}: no port {port}", self.name);
        *self.drops.entry(port.into()).or_default().entry(reason).or_default() += 1;
        if REFUSED.contains(&reason) {
            self.inputs.last_mut().expect("a frame to drop").refused = true;
        }
        self
    }

    /// Sets a per-port counter (flooded, learned, moved_in, ...).
    pub fn count(&mut self, port: &str, name: &'static str, n: u64) -> &mut Self {
        assert!(ZERO_COUNTERS.contains(&name) || OPTIONAL_COUNTERS.contains(&name), "{name}");
        assert!(self.has_port(port), "{}: no port {port}", self.name);
        self.counters.entry(port.into()).or_default().insert(name, n);
        self
    }

    pub fn bridge_count(&mut self, br: &str, name: &'static str, n: u64) -> &mut Self {
        assert!(self.bridges.iter().any(|b| b.name == br), "{}: no bridge {br}", self.name);
        self.bridge_counters.entry(br.into()).or_default().insert(name, n);
        self
    }

    fn input_ports(&self) -> Vec<String> {
        let mut order = self.input_order.clone();
        for i in &self.inputs {
            if !order.contains(&i.port) {
                order.push(i.port.clone());
            }
        }
        order
    }

    pub fn scenario_yaml(&self) -> String {
        let mut y = String::new();
        writeln!(y, "# Replay case {}: see README.md. Generated from tests/replay_spec/.", self.name)
            .unwrap();
        writeln!(y, "bridges:").unwrap();
        for b in &self.bridges {
            writeln!(y, "  - name: {}", yname(&b.name)).unwrap();
            if let Some(a) = b.mac_aging_s {
                writeln!(y, "    mac_aging_s: {a}").unwrap();
            }
            if let Some(s) = b.mac_table_size {
                writeln!(y, "    mac_table_size: {s}").unwrap();
            }
            writeln!(y, "    ports:").unwrap();
            for p in &b.ports {
                writeln!(y, "      - name: {}", yname(&p.name)).unwrap();
                if let Some(mo) = p.vlan_mode {
                    writeln!(y, "        vlan_mode: {mo}").unwrap();
                }
                if let Some(t) = p.tag {
                    writeln!(y, "        tag: {t}").unwrap();
                }
                if let Some(t) = &p.trunks {
                    writeln!(y, "        trunks: {}", ylist(t, |v| v.to_string())).unwrap();
                }
                if let Some(a) = &p.allowed_macs {
                    writeln!(y, "        allowed_macs: {}", ylist(a, |m| format!("\"{}\"", mac_str(m))))
                        .unwrap();
                }
                if !p.static_macs.is_empty() {
                    writeln!(
                        y,
                        "        static_macs: {}",
                        ylist(&p.static_macs, |m| format!("\"{}\"", mac_str(m)))
                    )
                    .unwrap();
                }
                if let Some(l) = p.mac_limit {
                    writeln!(y, "        mac_limit: {l}").unwrap();
                }
                for l in &p.yaml {
                    writeln!(y, "        {l}").unwrap();
                }
            }
        }
        writeln!(y, "inputs:").unwrap();
        for p in self.input_ports() {
            writeln!(y, "  {}: in/{}", yname(&p), file_name(&p)).unwrap();
        }
        y
    }

    pub fn stats_json(&self) -> String {
        use serde_json::{json, Map};
        let mut ports = Map::new();
        for p in self.ports() {
            let name = &p.name;
            let rx: Vec<&Input> = self.inputs.iter().filter(|i| &i.port == name && !i.refused).collect();
            let tx = self.outputs.get(name).map(|v| v.as_slice()).unwrap_or(&[]);
            let mut o = Map::new();
            o.insert("rx_packets".into(), json!(rx.len()));
            o.insert("rx_bytes".into(), json!(rx.iter().map(|i| i.data.len()).sum::<usize>()));
            o.insert("tx_packets".into(), json!(tx.len()));
            o.insert("tx_bytes".into(), json!(tx.iter().map(|(_, d)| d.len()).sum::<usize>()));
            let set = self.counters.get(name);
            for c in ZERO_COUNTERS {
                o.insert((*c).into(), json!(set.and_then(|s| s.get(c)).copied().unwrap_or(0)));
            }
            for c in OPTIONAL_COUNTERS {
                if let Some(n) = set.and_then(|s| s.get(c)) {
                    o.insert((*c).into(), json!(n));
                }
            }
            let mut d = Map::new();
            let policy: &[&str] = if self.has_policy() { POLICY_DROP_REASONS } else { &[] };
            for r in DROP_REASONS.iter().chain(policy) {
                let n = self.drops.get(name).and_then(|s| s.get(r)).copied().unwrap_or(0);
                d.insert((*r).into(), json!(n));
            }
            o.insert("drops".into(), sorted(d));
            ports.insert(name.clone(), sorted(o));
        }
        let mut top = Map::new();
        if !self.bridge_counters.is_empty() {
            let mut b = Map::new();
            for (br, cs) in &self.bridge_counters {
                let mut o = Map::new();
                for (k, n) in cs {
                    o.insert((*k).into(), json!(n));
                }
                b.insert(br.clone(), sorted(o));
            }
            top.insert("bridges".into(), sorted(b));
        }
        top.insert("ports".into(), sorted(ports));
        // Every buffer is back in the pool when a replay ends, whatever the case.
        top.insert("buffers_leaked".into(), json!(0));
        let mut s = serde_json::to_string_pretty(&sorted(top)).unwrap();
        s.push('\n');
        s
    }

    pub fn readme(&self) -> String {
        format!(
            "# Replay case `{}`\n\n{}\n\nThe files here are generated from `tests/replay_spec/cases.rs` (expected output written \
             from the semantics in docs/semantics.md, not from the switch); regenerate with \
             `REGENERATE=1 cargo test --test replay_gen -- --ignored`.\n",
            self.name, self.about
        )
    }

    /// Checks the case against itself (catches slips in the specification).
    pub fn self_check(&self) {
        let n = self.name;
        let names: Vec<&str> = self.ports().iter().map(|p| p.name.as_str()).collect();
        let mut uniq = names.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), names.len(), "{n}: duplicate port names");
        // Files per port must not collide.
        let mut files: Vec<String> = names.iter().map(|p| file_name(p)).collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), names.len(), "{n}: port file names collide");
        // Inputs of one port are in time order (that is the file order).
        for p in &names {
            let ts: Vec<u64> = self.inputs.iter().filter(|i| &i.port == p).map(|i| i.time_us).collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{n}: inputs of {p} out of time order");
        }
        // Every input frame is either forwarded somewhere or dropped once.
        let mut times: BTreeMap<u64, usize> = BTreeMap::new();
        for i in &self.inputs {
            *times.entry(i.time_us).or_default() += 1;
        }
        let forwarded: usize = times
            .iter()
            .filter(|(t, _)| self.outputs.values().flatten().any(|(ot, _)| ot == *t))
            .map(|(_, k)| k)
            .sum();
        let dropped: u64 = self.drops.values().flat_map(|m| m.values()).sum();
        assert_eq!(
            forwarded as u64 + dropped,
            self.inputs.len() as u64,
            "{n}: forwarded + dropped != inputs"
        );
        // Nothing goes back out of the port it came in on; output times belong to inputs.
        for (port, outs) in &self.outputs {
            for (t, _) in outs {
                let ins: Vec<&Input> = self.inputs.iter().filter(|i| i.time_us == *t).collect();
                assert!(!ins.is_empty(), "{n}: output on {port} at {t} has no input");
                if ins.len() == 1 {
                    assert_ne!(&ins[0].port, port, "{n}: output on the ingress port {port} at {t}");
                }
            }
            assert!(outs.windows(2).all(|w| w[0].0 <= w[1].0), "{n}: outputs of {port} out of time order");
        }
    }

    /// Every file of the case, relative to tests/replay/<case>/.
    pub fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.self_check();
        let mut f = BTreeMap::new();
        f.insert(PathBuf::from("scenario.yaml"), self.scenario_yaml().into_bytes());
        f.insert(PathBuf::from("README.md"), self.readme().into_bytes());
        for p in self.input_ports() {
            let recs: Vec<Record> = self
                .inputs
                .iter()
                .filter(|i| i.port == p)
                .map(|i| Record { time_us: i.time_us, data: i.data.clone(), orig_len: i.orig_len })
                .collect();
            f.insert(PathBuf::from("in").join(file_name(&p)), pcap_file(&recs));
        }
        for p in self.ports() {
            let outs = self.outputs.get(&p.name).cloned().unwrap_or_default();
            f.insert(PathBuf::from("expected").join(file_name(&p.name)), pcap_of(&outs));
        }
        f.insert(PathBuf::from("expected/stats.json"), self.stats_json().into_bytes());
        f
    }
}

/// A JSON object with its keys in sorted order whatever serde_json's map type is.
fn sorted(m: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let b: BTreeMap<String, serde_json::Value> = m.into_iter().collect();
    serde_json::Value::Object(b.into_iter().collect())
}

/// tests/replay in the source tree.
pub fn replay_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("replay")
}

pub const TOP_README: &str = "# Replay cases\n\n\
Each directory holds one case for `switchyard replay`: `scenario.yaml` (bridges and ports, plus \
`inputs`), the input captures under `in/`, and under `expected/` one pcap per port (empty when \
nothing leaves it; named after the port, every `/` turned into `_`: `tenant-a/vm-a/data` is \
`tenant-a_vm-a_data.pcap`, and two ports that would share a file are refused) and `stats.json` (a subset of the counters, and `buffers_leaked`: 0, every \
buffer back in the pool at the end). `tests/replay_cases.rs` runs \
`switchyard replay <case>/scenario.yaml --out <tmp> --expect <case>/expected` on every case.\n\n\
The cases are specified in `tests/replay_spec/cases.rs`: input frames and expected frames are \
built by a small frame builder from reasoning about the L2 semantics of docs/semantics.md, never \
from the switch's own output. Regenerate the files with \
`REGENERATE=1 cargo test --test replay_gen -- --ignored`; `cargo test --test replay_gen` checks \
that the committed files match the specification byte for byte.\n\n\
The cases with outer headers (`tunnel_*`: a tunnel port on an uplink, `uplinks` in the \
scenario) are written by `tunnel_cases.py` with scapy, from the RFC fields; run \
`/usr/bin/python3 tests/replay/tunnel_cases.py` to rewrite them; `cargo test --test \
replay_tunnel_cases` checks that the committed files are what it writes.\n\n\
`tests/ovs_reference.rs` runs the cases of plain L2 forwarding through a private Open vSwitch \
(its `NORMAL` action on the userspace datapath) and requires it to send the expected frames: the \
check that the hand-written expectations are OVS's semantics. The cases and frames it leaves \
out, and the differences of OVS's it tolerates, are listed in it with their reasons \
(docs/semantics.md: where Open vSwitch's `NORMAL` differs).\n";
