//! Arbitrary bytes as a sequence of frames on arbitrary ports of a bridge with every VLAN
//! mode, a spoof filter, a MAC limit, static entries and a tiny MAC table. The pipeline must
//! not panic, must account for every frame (each one either dropped under exactly one reason,
//! nothing queued, or queued to one port or more, nothing dropped: drops + queued == frames)
//! and must return every buffer.
//!
//! Input format: repeated [port: u8][len: u8][now_delta: u8][len bytes of frame].
#![no_main]

mod common;

use common::Harness;
use libfuzzer_sys::fuzz_target;

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
    let mut h = Harness::new(CONFIG, "fuzz");
    let (mut dropped, mut queued) = (0u64, 0u64);
    h.run(data, 5, 8, |h, o| {
        // One frame at a time from a pool of 512: a flood never runs out of buffers for its
        // copies, so no frame is both queued and counted as `no_buffer`.
        let (d, out) = (o.drops, o.queued);
        assert!(matches!((d, out), (1, 0) | (0, 1..)), "frame {}: {d} drops, queued {out} times", h.frames);
        dropped += d;
        queued += u64::from(out > 0);
        for b in &h.sw.bridges {
            b.table.age(h.now);
        }
    });
    assert_eq!(dropped + queued, h.frames);
    h.finish();
});
