//! Arbitrary bytes as a sequence of frames on arbitrary ports of a bridge with every VLAN
//! mode, a spoof filter, a MAC limit, static entries and a tiny MAC table. The pipeline must
//! not panic, must account for every frame (each one either dropped under exactly one reason,
//! nothing queued, or queued to one port or more, nothing dropped: drops + queued == frames)
//! and must return every buffer.
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
  mac_table_size: 8
  mac_aging_s: 5
  ports:
  - {name: acc, tag: 10, allowed_macs: ["02:00:00:00:00:01"], mac_limit: 2}
  - {name: trk, trunks: [0, 10, 20]}
  - {name: all}
  - {name: nu, vlan_mode: native-untagged, tag: 20, trunks: [30]}
  - {name: nt, vlan_mode: native-tagged, tag: 10, trunks: [20], static_macs: ["02:00:00:00:00:02"]}
"#;

fuzz_target!(|data: &[u8]| {
    let cfg = Config::from_yaml_str(CONFIG).expect("fuzz config");
    let sw = SwitchConfig::compile(&cfg, None).expect("compile");
    let pool = Pool::with_hugepages("fuzz", 512, false).expect("pool");
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut now = 0u32;
    let mut rest = data;
    let mut frames = 0u64;
    let (mut dropped, mut queued) = (0u64, 0u64);
    let drops = |sw: &SwitchConfig| -> u64 {
        sw.port_ids().filter_map(|p| sw.port(p)).map(|p| p.stats.total_drops()).sum()
    };
    while rest.len() >= 3 {
        let port = u16::from(rest[0] % 5);
        let len = usize::from(rest[1]).min(rest.len() - 3);
        now += u32::from(rest[2] % 8);
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
        // One frame at a time from a pool of 512: a flood never runs out of buffers for its
        // copies, so no frame is both queued and counted as `no_buffer`.
        let d = drops(&sw) - before;
        assert!(matches!((d, out), (1, 0) | (0, 1..)), "frame {frames}: {d} drops, queued {out} times");
        dropped += d;
        queued += u64::from(out > 0);
        for b in &sw.bridges {
            b.table.age(now);
        }
    }
    let rx: u64 = sw
        .port_ids()
        .map(|p| sw.port(p).unwrap().stats.rx_packets())
        .sum();
    assert_eq!(rx, frames);
    assert_eq!(dropped + queued, frames);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
});
