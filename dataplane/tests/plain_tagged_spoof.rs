//! The plain path of a trunk with a MAC spoof filter (`plain_probes_tagged_spoof`: a router
//! VM tagging its own frames on a `vlanTrunk` network with `macspoofchk`, on a bridge without
//! policies or IP spoof filters) against the general stages, on tagged bursts from trunks with
//! random `allowed_macs`: sources allowed (the first or another) and not, ARP and RARP with an
//! allowed or a foreign sender (and malformed), IPv6 neighbour discovery with an allowed or a
//! foreign link-layer option (or none), tags stacked inside the port's (802.1Q and 802.1ad,
//! with ARP or IPv4 behind), priority tags, other VIDs, untagged frames, short frames, unknown
//! and broadcast destinations. Frames out, port counters (every drop reason), queued frames
//! and MAC tables must be the same both ways, and the plain path must have taken a good share
//! of the bursts, ARP and neighbour discovery with allowed addresses among them.

use proptest::prelude::*;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::{Pool, SwitchConfig};

#[path = "support/collect.rs"]
mod collect;
#[path = "support/twin.rs"]
mod twin;
use twin::Twin;

/// The VM's candidate source MACs: `allowed_macs` is a subset of them, the rest are foreign.
const VM_MACS: u8 = 6;
/// Ports 1.. (port 0 is the VM's trunk).
const OTHERS: u8 = 4;

fn vm_mac(j: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0x10, j % VM_MACS]
}

/// Host `j` behind port `p` (1..=OTHERS).
fn host(p: u8, j: u8) -> [u8; 6] {
    [2, 0, 0, 0, p, j % 2]
}

/// The switch: port 0 the VM's trunk (`mode`: how it carries VLANs) with `allowed_macs` of
/// the VM's MACs `allowed`, port 1 an access port of VLAN 10, port 2 of VLAN 20, port 3 an
/// uplink trunk of both, port 4 a second MAC-filtered trunk (of host(4, 0) alone).
fn yaml(mode: u8, allowed: &[u8]) -> String {
    let macs: Vec<String> = allowed.iter().map(|&j| format!("'{}'", MacAddr(vm_mac(j)))).collect::<Vec<_>>();
    let vlans = match mode % 4 {
        0 => "vlan_mode: trunk".to_string(),
        1 => "trunks: [10, 20]".to_string(),
        2 => "vlan_mode: native-tagged, tag: 10, trunks: [10, 20]".to_string(),
        _ => "vlan_mode: native-untagged, tag: 20, trunks: [10, 20]".to_string(),
    };
    format!(
        "bridges:\n- name: br0\n  ports:\n  - {{name: vm, {vlans}, allowed_macs: [{}]}}\n  \
         - {{name: a10, tag: 10}}\n  - {{name: a20, tag: 20}}\n  - {{name: up, trunks: [10, 20]}}\n  \
         - {{name: vm2, vlan_mode: trunk, allowed_macs: ['{}']}}\n",
        macs.join(", "),
        MacAddr(host(4, 0)),
    )
}

/// One frame's choices (interpreted in `build`): destination, source, tag, payload kind,
/// link-layer address (ARP sender, ND option), length cut, random bytes.
type FrameSel = (u8, u8, u8, u8, u8, u8, Vec<u8>);

/// What a frame carries behind its tag(s), for the coverage counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ipv4,
    Arp,
    Nd,
    Ipv6,
    Stacked,
    Other,
}

/// An ARP request (hardware type Ethernet, IPv4) whose sender is `sha`.
fn arp(sha: [u8; 6]) -> Vec<u8> {
    [&[0u8, 1, 8, 0, 6, 4, 0, 1][..], &sha, &[10, 0, 0, 1], &[0; 6], &[10, 0, 0, 2]].concat()
}

/// An IPv6 neighbour solicitation (`na`: advertisement) with a link-layer address option
/// naming `ll`, or none.
fn nd(ll: Option<[u8; 6]>, na: bool) -> Vec<u8> {
    let opt_len = if ll.is_some() { 8 } else { 0 };
    let mut ip = vec![0x60, 0, 0, 0, 0, 24 + opt_len, 58, 255];
    ip.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]);
    ip.extend_from_slice(&[if na { 136 } else { 135 }, 0, 0, 0, 0, 0, 0, 0]);
    ip.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    if let Some(ll) = ll {
        ip.extend_from_slice(&[if na { 2 } else { 1 }, 1]);
        ip.extend_from_slice(&ll);
    }
    ip
}

/// A frame from the VM (port 0, or `from` another port) in a burst whose base VID is `vid`
/// (the tag most frames carry; `clean`: every choice one the plain path may take, bar the
/// ARP sender's or ND option's MAC, which `lsel` still picks), and what it carries.
fn build(from: u8, vid: u16, clean: bool, allowed: &[u8], sel: &FrameSel) -> (Vec<u8>, Kind) {
    let (dsel, ssel, tsel, ksel, lsel, csel, payload) = sel;
    let first_allowed = vm_mac(allowed[0]);
    let src = match (from, clean, ssel % 8) {
        (1.., _, _) => host(from, *ssel),
        (0, true, 0..=4) | (0, false, 0..=2) => first_allowed,
        (0, true, _) | (0, false, 3 | 4) => vm_mac(allowed[usize::from(*ssel) % allowed.len()]),
        (0, false, 5) => [0; 6],
        (0, false, 6) => [3, 0, 0, 0, 0x10, 0],
        (0, false, _) => vm_mac(*ssel / 8),
    };
    // Destinations in the burst's VLAN: 10 on ports 1 and 3, 20 on ports 2 and 3, the second
    // trunk's host in both (it sends in both); the VM's own MACs (a hairpin).
    let dst = match (clean, dsel % 16) {
        (false, 0) => [0xff; 6],
        (false, 1) => [2, 0, 0, 0, 0xee, 1],
        (false, 2) => vm_mac(*dsel / 16),
        (false, 3) => [1, 0x80, 0xc2, 0, 0, 0],
        (_, 4..=6) => host(3, *dsel / 16),
        (_, 7) => host(4, 0),
        _ if from != 0 => vm_mac(*dsel / 16),
        _ => host(if vid == 20 { 2 } else { 1 }, *dsel / 16),
    };
    let pcp = u16::from(*tsel / 16) << 12;
    let tag = |v: u16| [&[0x81u8, 0x00][..], &(v | pcp).to_be_bytes()].concat();
    let tags: Vec<u8> = match (clean, tsel % 16) {
        (false, 0) => Vec::new(),
        (false, 1) => tag(0),
        (false, 2) => tag(if vid == 10 { 20 } else { 10 }),
        (false, 3) => tag(30),
        _ => tag(vid),
    };
    let other = [2, 0, 0, 0, 0x20, *lsel % 3];
    let ll = match lsel % 4 {
        0 => other,
        1 => src,
        _ => vm_mac(allowed[usize::from(*lsel / 4) % allowed.len()]),
    };
    let kinds = if clean { 6 } else { 12 };
    let (kind, et, body): (Kind, [u8; 2], Vec<u8>) = match ksel % kinds {
        0 => (Kind::Arp, [0x08, 0x06], arp(ll)),
        1 => (Kind::Arp, [0x80, 0x35], arp(ll)),
        2 => (Kind::Nd, [0x86, 0xdd], nd(Some(ll), ksel / 16 % 2 == 0)),
        3 => (Kind::Nd, [0x86, 0xdd], nd(None, ksel / 16 % 2 == 0)),
        4 => (Kind::Ipv6, [0x86, 0xdd], payload.clone()),
        // Cut below, after the padding: a malformed ARP.
        6 => (Kind::Arp, [0x08, 0x06], arp(ll)),
        7 => (Kind::Stacked, [0x81, 0x00], [&[0x00, 10, 0x08, 0x06][..], &arp(ll)].concat()),
        8 => (Kind::Stacked, [0x88, 0xa8], [&[0x00, 20, 0x08, 0x06][..], &arp(ll)].concat()),
        9 => (Kind::Stacked, [0x81, 0x00], [&[0x00, 10, 0x08, 0x00][..], payload].concat()),
        10 => (Kind::Other, [0x88, 0xcc], payload.clone()),
        _ => (Kind::Ipv4, [0x08, 0x00], payload.clone()),
    };
    let mut f = [&dst[..], &src, &tags, &et, &body].concat();
    if f.len() < 60 {
        f.extend_from_slice(&payload[..(60 - f.len()).min(payload.len())]);
    }
    if ksel % kinds == 6 {
        f.truncate(14 + tags.len() + 20);
    }
    if !clean && csel % 16 == 0 {
        f.truncate(14 + usize::from(csel / 16 % 8));
    }
    (f, kind)
}

#[derive(Debug, Clone)]
struct BurstSel {
    /// Sent from port 0 (the VM) mostly; from another port now and then (its hosts learned,
    /// the VM's MACs as destinations).
    from: u8,
    vid: u16,
    clean: bool,
    frames: Vec<FrameSel>,
}

fn burst_strategy() -> impl Strategy<Value = BurstSel> {
    let sel = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop_oneof![3 => Just(11u8), 2 => any::<u8>()],
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 46..60),
    );
    (
        prop_oneof![6 => Just(0u8), 1 => 1..=OTHERS],
        prop_oneof![4 => Just(10u16), 3 => Just(20u16), 1 => Just(0u16), 1 => Just(30u16)],
        prop::bool::weighted(0.6),
        prop::collection::vec(sel, 1..20),
    )
        .prop_map(|(from, vid, clean, frames)| BurstSel { from, vid, clean, frames })
}

#[derive(Default, Debug)]
struct Seen {
    /// Bursts from the VM's trunk whose first frame is 802.1Q-tagged.
    tagged: u64,
    /// Those the plain path took.
    plain: u64,
    /// Plain bursts carrying ARP/RARP, neighbour discovery, a source other than the first
    /// allowed MAC.
    plain_arp: u64,
    plain_nd: u64,
    plain_second_mac: u64,
}

#[test]
fn tagged_plain_path_with_mac_filter_matches_the_general_stages() {
    let seen = std::cell::RefCell::new(Seen::default());
    let cases = std::env::var("PLAIN_TAGGED_SPOOF_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let config = ProptestConfig { cases, source_file: Some(file!()), ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let allowed = prop::sample::subsequence((0..VM_MACS).collect::<Vec<_>>(), 1..4).prop_shuffle();
    let strategy = (any::<u8>(), allowed, prop::collection::vec(burst_strategy(), 10..50), 1usize..5);
    let r = runner.run(&strategy, |(mode, allowed, bursts, drain_every)| {
        let yaml = yaml(mode, &allowed);
        let plain_sw = SwitchConfig::compile(&Config::from_yaml_str(&yaml).unwrap(), None).unwrap();
        let general_sw = SwitchConfig::compile(&Config::from_yaml_str(&yaml).unwrap(), None).unwrap();
        for sw in [&plain_sw, &general_sw] {
            let t = &sw.bridges[0].table;
            for j in 0..2 {
                t.learn(10, MacAddr(host(1, j)), 1, 1, u32::MAX);
                t.learn(20, MacAddr(host(2, j)), 2, 1, u32::MAX);
                t.learn(10, MacAddr(host(3, j)), 3, 1, u32::MAX);
                t.learn(20, MacAddr(host(3, j)), 3, 1, u32::MAX);
            }
            t.learn(10, MacAddr(host(4, 0)), 4, 1, u32::MAX);
            t.learn(20, MacAddr(host(4, 0)), 4, 1, u32::MAX);
        }
        let pool = Pool::with_hugepages("pts", 4096, false).unwrap();
        let mut cache = pool.cache();
        let mut twin = Twin::new(&plain_sw, &general_sw);
        for (i, b) in bursts.iter().enumerate() {
            let now = 1 + i as u32 / 8;
            // The other trunk sends tagged frames; the access ports untagged ones.
            let vid = if b.from == 0 || b.from >= 3 { b.vid } else { 10 * u16::from(b.from) };
            let frames: Vec<(Vec<u8>, Kind)> =
                b.frames.iter().map(|s| build(b.from, vid, b.clean, &allowed, s)).collect();
            let frames: Vec<(Vec<u8>, Kind)> = match b.from {
                1 | 2 => frames
                    .into_iter()
                    .map(|(f, k)| match f.get(12..14) {
                        Some(&[0x81, 0]) => ([&f[..12], f.get(16..).unwrap_or_default()].concat(), k),
                        _ => (f, k),
                    })
                    .collect(),
                _ => frames,
            };
            let took = twin.run(u16::from(b.from), now, &mut cache, |cache| {
                let mut burst = Burst::new();
                for (f, _) in &frames {
                    burst.push(cache.alloc_copy(f).unwrap());
                }
                burst
            })?;
            if b.from == 0 && frames.first().is_some_and(|(f, _)| f.get(12..14) == Some(&[0x81, 0][..])) {
                let mut s = seen.borrow_mut();
                s.tagged += 1;
                if took {
                    s.plain += 1;
                    let has = |k| frames.iter().any(|(_, fk)| *fk == k);
                    s.plain_arp += u64::from(has(Kind::Arp));
                    s.plain_nd += u64::from(has(Kind::Nd));
                    let first = vm_mac(allowed[0]);
                    s.plain_second_mac += u64::from(frames.iter().any(|(f, _)| f[6..12] != first));
                }
            }
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
    // The plain path must have been compared, not only the general stages against themselves:
    // a good share of the tagged bursts, with ARP, neighbour discovery and the other allowed
    // MACs among them.
    assert!(s.plain * 5 >= s.tagged, "{s:?}");
    assert!(s.plain_arp > 0 && s.plain_nd > 0 && s.plain_second_mac > 0, "{s:?}");
}
