//! Arbitrary bytes as frames between the ports of a bridge with policies, IP spoof filters and
//! a tiny connection table (the policy stage's input: IPv4/IPv6/ARP headers, extension
//! headers, fragments, ICMP errors quoting anything). The pipeline must not panic, must
//! account for every frame (queued to a port at least once, or counted under a drop reason)
//! and must return every buffer; the table never lists more live entries than it has slots.
//!
//! Input format: repeated [port: u8][len: u8][now_delta: u8][len bytes of frame].
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::{Pool, SwitchConfig};

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
    let cfg = Config::from_yaml_str(CONFIG).expect("fuzz config");
    let sw = SwitchConfig::compile(&cfg, None).expect("compile");
    let pool = Pool::with_hugepages("fuzz-ct", 512, false).expect("pool");
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut now = 0u32;
    let mut rest = data;
    let mut frames = 0u64;
    let drops = |sw: &SwitchConfig| -> u64 {
        sw.port_ids().filter_map(|p| sw.port(p)).map(|p| p.stats.total_drops()).sum()
    };
    while rest.len() >= 3 {
        let port = u16::from(rest[0] % 4);
        let len = usize::from(rest[1]).min(rest.len() - 3);
        now += u32::from(rest[2] % 64);
        let frame = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let mut burst = Burst::new();
        burst.push(cache.alloc_copy(frame).expect("buffer"));
        frames += 1;
        let before = drops(&sw);
        process_burst(&sw, port, &mut burst, now, &mut cache, &mut tx, None);
        assert!(burst.is_empty());
        let mut out = 0u64;
        tx.drain_with(|_, b| {
            out += b.len() as u64;
            for x in b.drain(..) {
                cache.free(x);
            }
        });
        let d = drops(&sw) - before;
        assert!(d > 0 || out > 0, "frame {frames}: neither queued nor counted");
    }
    let ct = sw.bridges[0].conntrack.as_ref().expect("a bridge with policies has a table");
    let (entries, live) = ct.entries(now, usize::MAX);
    assert_eq!(entries.len(), live);
    assert!(live <= ct.slots(), "more entries than slots");
    let rx: u64 = sw
        .port_ids()
        .map(|p| sw.port(p).unwrap().stats.rx_packets())
        .sum();
    assert_eq!(rx, frames);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
});
