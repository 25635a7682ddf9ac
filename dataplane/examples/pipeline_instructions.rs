//! The L2 pipeline alone, a fixed number of bursts, for repeatable instruction counts under
//! callgrind (this machine has no hardware counters and its timings are noisy):
//!
//! ```text
//! cargo build --release --example pipeline_instructions -p switchyard-dataplane
//! valgrind --tool=callgrind --toggle-collect='*process_burst*' \
//!     target/release/examples/pipeline_instructions 10000
//! ```
//!
//! "I refs" / (bursts x 32) is the pipeline's instructions per frame. The frames: 60 bytes,
//! unicast between two access ports of one bridge (the default configuration of `switchyard
//! pmd`), 256 source MACs each way, all learned, one burst of 32 per call as `pmd` polls.
//! Without valgrind it also prints ns per frame (noisy; `benches/pipeline.rs` is the timed
//! benchmark). `CFG` may hold another switch configuration (YAML) with ports p0 and p1;
//! `SOURCES` (default 256) is how many source MACs each side sends from (1: a VM's port, whose
//! MAC spoof filter `CFG` may set to 02:00:00:00:00:00, p0's one source); `TAG_IN` (a VID,
//! default none) sends p0's frames tagged with it, as a trunk uplink receives them (the
//! frames are re-tagged or untagged outside the counted calls after each burst).

use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::{Pool, SwitchConfig};

#[path = "../benches/support/frames.rs"]
mod frames;

const BURST: usize = 32;

fn mac(side: u8, n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, side, b[0], b[1], b[2], b[3]])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bursts: u32 = std::env::args().nth(1).map_or(Ok(100_000), |s| s.parse())?;
    let sources: u32 = std::env::var("SOURCES").map_or(Ok(256), |s| s.parse())?;
    if sources == 0 {
        return Err("SOURCES must be at least 1".into());
    }
    let yaml = std::env::var("CFG")
        .unwrap_or_else(|_| "bridges:\n- name: br0\n  ports:\n  - {name: p0}\n  - {name: p1}\n".into());
    let sw = SwitchConfig::compile(&Config::from_yaml_str(&yaml)?, None)?;
    let tag_in: Option<u16> = std::env::var("TAG_IN").ok().map(|s| s.parse()).transpose()?;
    let table = &sw.bridges[0].table;
    let vlan = sw
        .port(0)
        .and_then(|p| p.vlan.ingress(tag_in.map(switchyard_dataplane::wire::VlanTci)))
        .ok_or("p0 does not admit the frames sent")?;
    for i in 0..256 {
        table.learn(vlan, mac(0, i), 0, 1, u32::MAX);
        table.learn(vlan, mac(1, i), 1, 1, u32::MAX);
    }
    let pool = Pool::new("bench", 4096)?;
    let mut cache = pool.cache();
    let mut burst = frames::ipv4_burst(&mut cache, BURST, 60);
    if let Some(vid) = tag_in {
        for b in burst.iter_mut() {
            b.push_vlan(vid)?;
        }
    }
    let mut tx = TxBatches::new(sw.port_slots());
    let mut seq = 0u32;
    let start = std::time::Instant::now();
    for _ in 0..bursts {
        for b in burst.iter_mut() {
            let d = b.data_mut();
            d[0..6].copy_from_slice(&mac(1, seq % sources).0);
            d[6..12].copy_from_slice(&mac(0, seq % sources).0);
            seq = seq.wrapping_add(1);
        }
        process_burst(&sw, 0, &mut burst, 1, &mut cache, &mut tx, None);
        tx.drain_with(|_, out| burst.extend(out.drain(..)));
        for b in burst.iter_mut() {
            let tagged = b.data().get(12..14) == Some(&[0x81, 0x00]);
            match (tagged, tag_in) {
                (true, None) => b.pop_vlan()?,
                (false, Some(vid)) => b.push_vlan(vid)?,
                _ => {}
            }
        }
    }
    let elapsed = start.elapsed();
    let stats = sw.port(0).ok_or("no p0")?.stats.snapshot();
    if burst.len() != BURST || stats.drops.values().sum::<u64>() != 0 || stats.flooded != 0 {
        return Err(
            format!("not every frame was unicast: {} back, drops {:?}", burst.len(), stats.drops).into()
        );
    }
    println!("{:.2} ns/frame", elapsed.as_nanos() as f64 / (f64::from(bursts) * BURST as f64));
    Ok(())
}
