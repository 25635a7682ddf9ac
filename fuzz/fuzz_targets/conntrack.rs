//! Arbitrary bytes as frames between the ports of a bridge with policies, IP spoof filters and
//! a tiny connection table (the policy stage's input: IPv4/IPv6/ARP headers, extension
//! headers, fragments, ICMP errors quoting anything). The pipeline must not panic, must
//! account for every frame (queued to a port at least once, or counted under a drop reason)
//! and must return every buffer; the table never lists more live entries than it has slots.
//!
//! Input format: repeated [port: u8][len: u8][now_delta: u8][len bytes of frame].
#![no_main]

mod common;

use common::Harness;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
bridges:
- name: br0
  mac_table_size: 64
  conntrack_size: 4
  ports:
  - name: a
    tag: 1
    static_macs: ["02:00:00:00:00:0a"]
    allowed_ips: [10.0.0.1, "fd00::1"]
    policy:
      ingress: {rules: []}
      egress:
        rules:
        - {name: web, peers: [{cidr: 10.0.0.0/24, except: [10.0.0.128/25]}], ports: [{protocol: TCP, port: 80, end_port: 90}]}
        - {name: v6, peers: [{cidr: "fd00::/64"}]}
  - name: b
    tag: 1
    static_macs: ["02:00:00:00:00:0b"]
    policy:
      ingress:
        rules:
        - {name: from-a, peers: [{cidr: 10.0.0.1/32}, {cidr: "fd00::1/128"}]}
        - {name: udp, ports: [{protocol: UDP}]}
  - name: c
    tag: 1
    allowed_ips: [10.0.0.3]
  - {name: d, tag: 5}
"#;

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new(CONFIG, "fuzz-ct");
    h.run(data, 4, 64, |h, o| {
        assert!(o.drops > 0 || o.queued > 0, "frame {}: neither queued nor counted", h.frames);
    });
    let ct = h.sw.bridges[0].conntrack.as_ref().expect("a bridge with policies has a table");
    let (entries, live) = ct.entries(h.now, usize::MAX);
    assert_eq!(entries.len(), live);
    assert!(live <= ct.slots(), "more entries than slots");
    h.finish();
});
