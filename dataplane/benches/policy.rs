//! The policy stage's cost (docs/policy.md), the pipeline alone on one core (no port I/O),
//! side by side in one run (setup: benches/support/policy_setup.rs):
//!
//! - `policy/none`: bursts of 32 64-byte IPv4/UDP frames from p0 to p1 on a bridge without
//!   policy or spoof filter (the plain-burst path);
//! - `policy/1000_rules_100k_conns`: the same frames through p1 isolated by 1,000 ingress
//!   rules, p0 with an IP spoof filter, cycling through 100,000 established (replied)
//!   connections, after one pass over all of them (which stores their verdicts): the steady
//!   state of established traffic.
//!
//! And the connection table alone, `conntrack/lookup_1k` and `conntrack/lookup_1m`: bursts of
//! 32 lookups of pseudo-random tracked connections (hashed and prefetched first, as the
//! pipeline does) in a table holding 1,000 and 1,000,000 (its memory is printed); the time is
//! per lookup. Run: cargo bench -p switchyard-dataplane --bench policy

#[path = "support/policy_setup.rs"]
mod setup;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use setup::{lookup_table, next_frames, splitmix, switch, BURST, CONNS};
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::Pool;

fn pipeline_case(c: &mut Criterion, name: &str, policy: bool) {
    let sw = switch(policy);
    let pool = Pool::new("bench-policy", 4096).expect("pool");
    let mut cache = pool.cache();
    let mut burst = Burst::new();
    let f = setup::frame();
    for _ in 0..BURST {
        burst.push(cache.alloc_copy(&f).expect("buffer"));
    }
    let mut tx = TxBatches::new(sw.port_slots());
    let mut seq = 0u32;
    let mut run = |burst: &mut Burst, seq: &mut u32| {
        next_frames(burst, seq);
        process_burst(&sw, 0, burst, 1, &mut cache, &mut tx, None);
        tx.drain_with(|_, out| burst.extend(out.drain(..)));
    };
    // The first packet of each connection under this snapshot checks the policies.
    for _ in 0..CONNS as usize / BURST {
        run(&mut burst, &mut seq);
    }
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| b.iter(|| run(&mut burst, &mut seq)));
    g.finish();
    assert_eq!(burst.len(), BURST, "every frame reached p1");
    let s = sw.port(0).expect("p0").stats.snapshot();
    assert_eq!(s.drops.values().sum::<u64>(), 0, "no drops: {:?}", s.drops);
}

fn lookup_case(c: &mut Criterion, name: &str, n: u32) {
    let (ct, key) = lookup_table(n);
    println!("conntrack {name}: {n} connections in {} MiB", ct.memory() >> 20);
    let mut rng = 7u64;
    let mut keys = [key(0); BURST];
    let mut out = [None; BURST];
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            for k in keys.iter_mut() {
                *k = key((splitmix(&mut rng) % u64::from(n)) as u32);
            }
            ct.lookup_burst(&keys, 2, &mut out);
            assert!(out.iter().all(Option::is_some));
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    pipeline_case(c, "none", false);
    pipeline_case(c, "1000_rules_100k_conns", true);
    lookup_case(c, "lookup_1k", 1000);
    lookup_case(c, "lookup_1m", 1_000_000);
}

criterion_group! {
    name = policy;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(policy);
