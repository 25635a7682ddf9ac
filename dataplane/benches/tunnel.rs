//! What a tunnel port adds to a frame besides the socket calls, over bursts of 32 64-byte
//! frames. `encap_decap/*`: writing the VXLAN or Geneve header into the headroom, then checking
//! and stripping it (the frame ends as it started). `encap_decap_remotes/vxlan`: the same plus
//! the remote-MAC lookup of TX and the learning of RX. `rewrite_only`: the per-iteration MAC
//! rewrite all of them do, so that it can be subtracted.
//!
//! Per-frame cost = time per iteration / 32, less `rewrite_only`'s; docs/benchmarks.md has
//! the figures.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::tunnel::{Remotes, TunnelCodec, TunnelKind};
use switchyard_dataplane::wire::MacAddr;
use switchyard_dataplane::Pool;

#[path = "support/frames.rs"]
mod frames;

const BURST: usize = 32;

fn bench(c: &mut Criterion) {
    let ep = |i: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
    let statics: Vec<(MacAddr, IpAddr)> =
        (0..256u32).map(|i| (MacAddr([2, 1, 0, 0, 0, i as u8]), ep(2))).collect();
    let remotes = Remotes::new(&[ep(2), ep(3)], &statics, true, 300).expect("remotes");
    let pool = Pool::new("bench", 256).expect("pool");
    let mut cache = pool.cache();
    let mut burst = frames::ipv4_burst(&mut cache, BURST, 64);
    let mut seq = 0u32;
    let mut rewrite = |burst: &mut Burst| {
        for b in burst.iter_mut() {
            let d = b.data_mut();
            d[0..6].copy_from_slice(&[2, 1, 0, 0, 0, seq as u8]);
            d[6..12].copy_from_slice(&[2, 2, 0, 0, 0, (seq >> 3) as u8]);
            seq = seq.wrapping_add(1);
        }
    };
    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(BURST as u64));
    for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
        let codec = TunnelCodec { kind, vni: 5001 };
        // The headers alone: written into the headroom, then checked and stripped.
        g.bench_function(format!("encap_decap/{}", kind.name()), |b| {
            b.iter(|| {
                rewrite(&mut burst);
                for f in burst.iter_mut() {
                    codec.encap_buf(f).expect("headroom");
                }
                for f in burst.iter_mut() {
                    codec.decap_buf(f).expect("decap");
                }
            })
        });
    }
    // What the port does besides: the remote-MAC lookup on TX, learning on RX.
    let codec = TunnelCodec { kind: TunnelKind::Vxlan, vni: 5001 };
    g.bench_function("encap_decap_remotes/vxlan", |b| {
        b.iter(|| {
            rewrite(&mut burst);
            for f in burst.iter_mut() {
                let dst = MacAddr::from_bytes(&f.data()[..6]);
                black_box(remotes.lookup(dst, 1));
                codec.encap_buf(f).expect("headroom");
            }
            // As the port's RX: the sender's index once a run, then one learn a frame.
            let from = remotes.learning_index(ep(3)).expect("endpoint");
            for f in burst.iter_mut() {
                codec.decap_buf(f).expect("decap");
                remotes.learn_at(MacAddr::from_bytes(&f.data()[6..12]), from, 1);
            }
        })
    });
    g.bench_function("rewrite_only", |b| b.iter(|| rewrite(black_box(&mut burst))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
