//! The policy stage's cost (docs/policy.md), the pipeline alone on one core (no port I/O):
//! bursts of 32 64-byte IPv4/UDP frames from p0 to p1 (static MACs), side by side:
//!
//! - `policy/none`: the same bridge without policy or spoof filter (the plain-burst path);
//! - `policy/1000_rules_100k_conns`: p1 isolated for ingress by 1,000 rules (a /32 peer and a
//!   port each; the frames' source matches rule 500), p0 with an IP spoof filter, 100,000
//!   connections tracked; the frames cycle through those 100,000 connections (each frame: spoof
//!   check, a conntrack lookup, the classifier, the commit that refreshes the entry).
//!
//! And the connection table alone, `conntrack/lookup_1k` and `conntrack/lookup_1m`: a lookup of
//! a pseudo-random tracked connection in a table holding 1,000 and 1,000,000 (its memory is
//! printed). Run: cargo bench -p switchyard-dataplane --bench policy

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::fmt::Write;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::conntrack::Conntrack;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::wire::ip::FlowKey;
use switchyard_dataplane::{Pool, SwitchConfig};

const BURST: usize = 32;
const CONNS: u32 = 100_000;
const SRC: u32 = 0x0a00_0001;

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Connection `i`: 10.0.0.1:(1024 + i % 60000) -> 10.(1 + i / 60000).0.2:53 over UDP.
fn conn(i: u32) -> (u32, u16) {
    (0x0a01_0002 + ((i / 60_000) << 16), 1024 + (i % 60_000) as u16)
}

fn config(policy: bool) -> Config {
    let mut y = String::from("bridges:\n- name: br0\n  conntrack_size: 131072\n  ports:\n");
    y.push_str("  - name: p0\n    static_macs: ['02:00:00:00:00:01']\n");
    if policy {
        y.push_str("    allowed_ips: [10.0.0.1]\n");
    }
    y.push_str("  - name: p1\n    static_macs: ['02:00:00:00:00:02']\n");
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

fn frame() -> [u8; 64] {
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

fn pipeline_case(c: &mut Criterion, name: &str, policy: bool) {
    let sw = SwitchConfig::compile(&config(policy), None).expect("compile");
    if let Some(ct) = &sw.bridges[0].conntrack {
        for i in 0..CONNS {
            let (dst, sport) = conn(i);
            let k =
                FlowKey { src: u128::from(SRC), dst: u128::from(dst), sport, dport: 53, proto: 17, v4: true };
            ct.commit(&k, 0, 1).expect("room for 100,000");
        }
        assert_eq!(ct.entries(1, 0).1, CONNS as usize);
    }
    let pool = Pool::new("bench-policy", 4096).expect("pool");
    let mut cache = pool.cache();
    let mut burst = Burst::new();
    let f = frame();
    for _ in 0..BURST {
        burst.push(cache.alloc_copy(&f).expect("buffer"));
    }
    let mut tx = TxBatches::new(sw.port_slots());
    let mut seq = 0u32;
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            for buf in burst.iter_mut() {
                let (dst, sport) = conn(seq % CONNS);
                let d = buf.data_mut();
                d[30..34].copy_from_slice(&dst.to_be_bytes());
                d[34..36].copy_from_slice(&sport.to_be_bytes());
                d[36..38].copy_from_slice(&53u16.to_be_bytes());
                seq = seq.wrapping_add(1);
            }
            process_burst(&sw, 0, &mut burst, 1, &mut cache, &mut tx, None);
            tx.drain_with(|_, out| burst.extend(out.drain(..)));
        })
    });
    g.finish();
    assert_eq!(burst.len(), BURST, "every frame reached p1");
    let s = sw.port(0).expect("p0").stats.snapshot();
    assert_eq!(s.drops.values().sum::<u64>(), 0, "no drops: {:?}", s.drops);
}

fn lookup_case(c: &mut Criterion, name: &str, n: u32) {
    let ct = Conntrack::new(n as usize);
    let key = |i: u32| FlowKey {
        src: u128::from(0x0a00_0000 + (i >> 16)),
        dst: 0x0b00_0001,
        sport: i as u16,
        dport: 80,
        proto: 6,
        v4: true,
    };
    for i in 0..n {
        ct.commit(&key(i), 0x02, 1).expect("room");
    }
    println!("conntrack {name}: {n} connections in {} MiB", ct.memory() >> 20);
    let mut rng = 7u64;
    let mut g = c.benchmark_group("conntrack");
    g.bench_function(name, |b| {
        b.iter(|| {
            let k = key((splitmix(&mut rng) % u64::from(n)) as u32);
            assert!(ct.lookup(&k, 2).is_some());
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
