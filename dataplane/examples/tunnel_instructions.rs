//! Tunnel encapsulation plus decapsulation alone, as `benches/tunnel.rs` runs it
//! (`encap_decap/*`: bursts of 32 64-byte frames, the header written into the headroom, then
//! checked and stripped), a fixed number of bursts, for repeatable instruction counts under
//! callgrind:
//!
//! ```text
//! cargo build --release --example tunnel_instructions -p switchyard-dataplane
//! valgrind --tool=callgrind --toggle-collect='*encap_decap_burst*' \
//!     target/release/examples/tunnel_instructions geneve 10000
//! ```
//!
//! "Collected" / (bursts x 32) is the instructions a frame of encapsulation plus
//! decapsulation; KIND is vxlan or geneve.

use switchyard_dataplane::port::Burst;
use switchyard_dataplane::tunnel::{TunnelCodec, TunnelKind};
use switchyard_dataplane::Pool;

#[path = "../benches/support/frames.rs"]
mod frames;

const BURST: usize = 32;

#[inline(never)]
fn encap_decap_burst(codec: &TunnelCodec, burst: &mut Burst) {
    for f in burst.iter_mut() {
        codec.encap_buf(f).expect("headroom");
    }
    for f in burst.iter_mut() {
        codec.decap_buf(f).expect("decap");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind = match args.next().as_deref() {
        Some("vxlan") => TunnelKind::Vxlan,
        Some("geneve") => TunnelKind::Geneve,
        _ => return Err("usage: tunnel_instructions vxlan|geneve [BURSTS]".into()),
    };
    let bursts: u32 = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let codec = TunnelCodec { kind, vni: 5001 };
    let pool = Pool::new("insns", 256)?;
    let mut cache = pool.cache();
    let mut burst = frames::ipv4_burst(&mut cache, BURST, 64);
    let t = std::time::Instant::now();
    for _ in 0..bursts {
        encap_decap_burst(&codec, std::hint::black_box(&mut burst));
    }
    let ns = t.elapsed().as_nanos() as f64 / (f64::from(bursts) * BURST as f64);
    println!("{}: {bursts} bursts of {BURST}, {ns:.1} ns a frame (noisy)", kind.name());
    for b in burst.drain(..) {
        cache.free(b);
    }
    Ok(())
}
