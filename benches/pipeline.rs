//! The L2 pipeline alone (no port I/O): bursts of 32 64-byte frames, unicast between two
//! access ports of one bridge.
//!
//! - `pipeline/512_macs`: 512 learned MACs (256 behind each port); each burst cycles through
//!   the source and destination MACs.
//! - `pipeline/1m_macs_random_dst`: 1,048,576 MACs learned behind the egress port and a
//!   different, pseudo-random destination on every frame (the table is ~64 MiB, far beyond the
//!   caches: this measures how well prefetching across the burst hides memory latency).
//! - `rewrite_only/*`: the same per-iteration work of writing the MACs into the buffers,
//!   without the pipeline, so it can be subtracted.
//!
//! Per-frame cost = criterion's time per iteration / 32, less the matching `rewrite_only`
//! figure; docs/benchmarks.md gives both cases and their ratio.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::{Pool, SwitchConfig};

#[path = "../dataplane/benches/support/frames.rs"]
mod frames;

const BURST: usize = 32;

fn mac(side: u8, n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, side, b[0], b[1], b[2], b[3]])
}

fn setup(table_size: usize) -> SwitchConfig {
    let cfg = Config::from_yaml_str(&format!(
        "bridges:\n- name: br0\n  mac_table_size: {table_size}\n  ports:\n  - {{name: p0, tag: 10}}\n  - {{name: p1, tag: 10}}\n"
    ))
    .expect("bench config");
    SwitchConfig::compile(&cfg, None).expect("compile")
}

fn bench_case(c: &mut Criterion, name: &str, table_size: usize, dst_macs: u32, random_dst: bool) {
    let sw = setup(table_size);
    let table = &sw.bridges[0].table;
    for i in 0..256 {
        table.learn(10, mac(0, i), 0, 0, u32::MAX);
    }
    for i in 0..dst_macs {
        table.learn(10, mac(1, i), 1, 0, u32::MAX);
    }
    let pool = Pool::new("bench", 4096).expect("pool");
    let mut cache = pool.cache();
    let mut burst = frames::ipv4_burst(&mut cache, BURST, 64);
    let mut tx = TxBatches::new(sw.port_slots());
    let mut seq = 0u32;
    let mut rng = 0x1234_5678u64;
    let mut write_macs = |burst: &mut Burst| {
        for b in burst.iter_mut() {
            let d = b.data_mut();
            let dst = if random_dst {
                (frames::splitmix(&mut rng) % u64::from(dst_macs)) as u32
            } else {
                seq % dst_macs
            };
            d[0..6].copy_from_slice(&mac(1, dst).0);
            d[6..12].copy_from_slice(&mac(0, seq % 256).0);
            seq = seq.wrapping_add(1);
        }
    };

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            write_macs(&mut burst);
            process_burst(&sw, 0, &mut burst, 1, &mut cache, &mut tx, None);
            tx.drain_with(|_, out| burst.extend(out.drain(..)));
        })
    });
    g.finish();
    assert_eq!(burst.len(), BURST, "every frame was unicast to p1");
    let s = sw.port(0).expect("p0").stats.snapshot();
    assert_eq!(s.drops.values().sum::<u64>(), 0, "no drops: {:?}", s.drops);
    assert_eq!(s.flooded, 0, "no floods");

    let mut g = c.benchmark_group("rewrite_only");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| b.iter(|| write_macs(&mut burst)));
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    bench_case(c, "512_macs", 65536, 256, false);
    bench_case(c, "1m_macs_random_dst", 1 << 21, 1 << 20, true);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = pipeline
}
criterion_main!(benches);
