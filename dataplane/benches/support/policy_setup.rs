//! The policy benchmark's setup, shared by benches/policy.rs (criterion) and
//! examples/policy_profile.rs (per-stage TSC spans, callgrind): a bridge with ports p0 and p1
//! (static MACs) carrying 64-byte IPv4/UDP frames from p0 to p1, with or without a policy.
//!
//! With the policy: p1 is isolated for ingress by 1,000 rules (a /32 peer and a port each; the
//! frames' source matches rule 500), p0 has an IP spoof filter, and [`CONNS`] UDP connections
//! are tracked and replied (established: `replied`). The frames cycle through those
//! connections, [`BURST`] a burst, the same frames for both cases.
//!
//! With `POLICY_TAG=VID` in the environment ([`tag`]), p0 is a trunk of VLAN VID without spoof
//! filters (an uplink; see `POLICY_TRUNK_SPOOF` below) and p1 an access port of that VLAN: p0's frames arrive tagged (their
//! includer tags them) and leave p1 untagged, and the replies the other way get the tag pushed.
//! With `POLICY_BESIDE=1` ([`beside`]), the 1,000 rules go to a third port p2 instead of p1,
//! and the connections between p0 and p1 (two ports without policies on a bridge with them,
//! as VMs without a policy beside one with) are not tracked: the general stages track none.
//! With `POLICY_SPOOF=1` ([`spoof_only`]), the switch without policy gives p1 an IP spoof
//! filter of its connections' addresses (a bridge of VM ports with port security and no
//! policies: the policy stage without a connection table). With `POLICY_TRUNK_SPOOF=1`
//! ([`trunk_spoof`]) beside `POLICY_TAG`, the trunk p0 has both spoof filters, its MAC in
//! `allowed_macs` and its address in `allowed_ips` (a VM's trunk with port security: a router
//! VM tagging its own frames), with the policy or without (then its IP spoof filter alone puts
//! the bridge on the policy stage, without a connection table).

// Each includer uses a part.
#![allow(dead_code)]

use std::fmt::Write;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::conntrack::Conntrack;
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::wire::ip::FlowKey;
use switchyard_dataplane::SwitchConfig;

pub const BURST: usize = 32;
pub const CONNS: u32 = 100_000;
const SRC: u32 = 0x0a00_0001;

#[path = "frames.rs"]
mod frames;
pub use frames::splitmix;

/// Whether `POLICY_SPOOF` is set (see the module's docs).
pub fn spoof_only() -> bool {
    std::env::var_os("POLICY_SPOOF").is_some_and(|v| v == "1")
}

/// Whether `POLICY_TRUNK_SPOOF` is set (see the module's docs).
pub fn trunk_spoof() -> bool {
    std::env::var_os("POLICY_TRUNK_SPOOF").is_some_and(|v| v == "1")
}

/// Whether `POLICY_BESIDE` is set (see the module's docs).
pub fn beside() -> bool {
    std::env::var_os("POLICY_BESIDE").is_some_and(|v| v == "1")
}

/// The VLAN of `POLICY_TAG` (see the module's docs), none when it is unset or not a VID.
pub fn tag() -> Option<u16> {
    std::env::var("POLICY_TAG").ok().and_then(|s| s.parse().ok()).filter(|v| (1..4095).contains(v))
}

/// Connection `i`: 10.0.0.1:(1024 + i % 60000) -> 10.(1 + i / 60000).0.2:53 over UDP (in
/// VLAN [`tag`] when set).
pub fn conn(i: u32) -> FlowKey {
    FlowKey {
        src: u128::from(SRC),
        dst: u128::from(0x0a01_0002 + ((i / 60_000) << 16)),
        sport: 1024 + (i % 60_000) as u16,
        dport: 53,
        proto: 17,
        v4: true,
        // The ports' VLAN (untagged, no tag: 0).
        vlan: tag().unwrap_or(0),
    }
}

fn config(policy: bool) -> Config {
    let mut y = String::from("bridges:\n- name: br0\n  conntrack_size: 131072\n  ports:\n");
    y.push_str("  - name: p0\n    static_macs: ['02:00:00:00:00:01']\n");
    match tag() {
        Some(vid) => {
            let _ = writeln!(y, "    trunks: [{vid}]");
            if trunk_spoof() {
                y.push_str("    allowed_macs: ['02:00:00:00:00:01']\n    allowed_ips: [10.0.0.1]\n");
            }
        }
        None if policy => y.push_str("    allowed_ips: [10.0.0.1]\n"),
        None => {}
    }
    y.push_str("  - name: p1\n    static_macs: ['02:00:00:00:00:02']\n");
    if let Some(vid) = tag() {
        let _ = writeln!(y, "    vlan_mode: access\n    tag: {vid}");
    }
    if !policy && spoof_only() {
        y.push_str("    allowed_ips: [10.1.0.2, 10.2.0.2]\n");
    }
    if policy && beside() {
        y.push_str("  - name: p2\n    static_macs: ['02:00:00:00:00:03']\n");
    }
    if policy {
        y.push_str("    policy:\n      ingress:\n        rules:\n");
        for r in 0..1000u32 {
            // Rule 500's peer is the frames' source; the others are hosts elsewhere.
            let peer = if r == 500 { SRC } else { 0x0b00_0000 + r };
            let a = peer.to_be_bytes();
            let _ = writeln!(
                y,
                "        - {{name: r{r}, peers: [{{cidr: {}.{}.{}.{}/32}}], ports: [{{protocol: UDP, port: {}}}]}}",
                a[0],
                a[1],
                a[2],
                a[3],
                if r == 500 { 53 } else { 1000 + r }
            );
        }
    }
    Config::from_yaml_str(&y).expect("bench config")
}

/// The compiled switch; with `policy`, its table holds the [`CONNS`] connections, replied.
pub fn switch(policy: bool) -> SwitchConfig {
    let sw = SwitchConfig::compile(&config(policy), None).expect("compile");
    if let Some(ct) = sw.bridges[0].conntrack.as_ref().filter(|_| !beside()) {
        for i in 0..CONNS {
            ct.commit(&conn(i), 0, 1).expect("room for 100,000");
            ct.reply(&conn(i).reversed(), 0, 1);
        }
        assert_eq!(ct.entries(1, 0).1, CONNS as usize);
    }
    sw
}

/// A frame of connection 0 from p0's MAC to p1's.
pub fn frame() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&30u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&SRC.to_be_bytes());
    f[34 + 4..34 + 6].copy_from_slice(&10u16.to_be_bytes());
    f
}

/// A reply of connection 0: [`frame`] the other way, from p1's MAC to p0's.
pub fn reply_frame() -> [u8; 64] {
    let mut f = frame();
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[30..34].copy_from_slice(&SRC.to_be_bytes());
    f
}

/// [`next_frames`] for [`reply_frame`]s: the next connections' replies.
#[inline]
pub fn next_replies(burst: &mut Burst, seq: &mut u32) {
    for buf in burst.iter_mut() {
        let k = conn(*seq % CONNS);
        let d = buf.data_mut();
        d[26..30].copy_from_slice(&(k.dst as u32).to_be_bytes());
        d[34..36].copy_from_slice(&k.dport.to_be_bytes());
        d[36..38].copy_from_slice(&k.sport.to_be_bytes());
        *seq = seq.wrapping_add(1);
    }
}

/// Rewrites the burst's frames into the next connections' (`seq`: where the stream is).
#[inline]
pub fn next_frames(burst: &mut Burst, seq: &mut u32) {
    for buf in burst.iter_mut() {
        let k = conn(*seq % CONNS);
        let d = buf.data_mut();
        d[30..34].copy_from_slice(&(k.dst as u32).to_be_bytes());
        d[34..36].copy_from_slice(&k.sport.to_be_bytes());
        d[36..38].copy_from_slice(&k.dport.to_be_bytes());
        *seq = seq.wrapping_add(1);
    }
}

/// Connection `i` of [`lookup_table`]'s.
pub fn lookup_key(i: u32) -> FlowKey {
    FlowKey {
        src: u128::from(0x0a00_0000 + (i >> 16)),
        dst: 0x0b00_0001,
        sport: i as u16,
        dport: 80,
        proto: 6,
        v4: true,
        vlan: 0,
    }
}

/// A table of capacity `n` holding `n` TCP connections ([`lookup_key`]), and the key function.
pub fn lookup_table(n: u32) -> (Conntrack, fn(u32) -> FlowKey) {
    let ct = Conntrack::new(n as usize).expect("table");
    for i in 0..n {
        ct.commit(&lookup_key(i), 0x02, 1).expect("room");
    }
    (ct, lookup_key)
}
