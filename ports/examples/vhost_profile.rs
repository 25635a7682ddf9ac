//! What the vhost-user port path costs a frame, for instruction counts under callgrind: a VM
//! port whose guest is the in-process frontend (`vhost::frontend`), driven in lock step on
//! one thread. Each round the guest transmits a burst of 64-byte frames and posts as many
//! receive buffers; the switch's RX queue takes the burst from the guest's TX ring
//! (`rx_burst`: descriptors read, frames copied out of guest memory into pool buffers) and
//! its TX queue hands the same frames back into the guest's RX ring (`tx_burst`: copied
//! into guest buffers, used ring written). The guest's own work happens outside the
//! collected functions.
//!
//! ```text
//! cargo build --release --example vhost_profile -p switchyard-ports
//! valgrind --tool=callgrind --toggle-collect='*VhostRx*rx_burst*' \
//!     --toggle-collect='*VhostTx*tx_burst*' target/release/examples/vhost_profile 2000
//! ```
//!
//! Run it twice (N rounds and 0 rounds) and divide the difference by N x the burst: the
//! instructions a frame of one RX and one TX, which is what a frame crossing the switch
//! between two VMs costs in vhost-user port work. Options after N: `burst=B` (default 32),
//! `len=L` (frame bytes, default 60), `no-in-order` (the guest does not take
//! VIRTIO_F_IN_ORDER), `no-mrg` (nor mergeable RX buffers).
//!
//! Without valgrind it prints the TSC cycles a frame of the two calls (medians of rounds):
//! a shape, not a figure for a machine with a guest on another core, whose cache lines the
//! rings bounce between the cores.

use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::cpu::rdtsc;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_ports::vhost::frontend::Frontend;
use switchyard_ports::vhost::proto::feat;
use switchyard_ports::vhost::{VhostOptions, VhostUserPort};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let opt = |k: &str| args.iter().find_map(|a| a.strip_prefix(k).and_then(|v| v.parse::<usize>().ok()));
    let burst = opt("burst=").unwrap_or(32).clamp(1, 64);
    let len = opt("len=").unwrap_or(60).clamp(14, 1500);
    let mut features = feat::OFFERED;
    if args.iter().any(|a| a == "no-in-order") {
        features &= !feat::F_IN_ORDER;
    }
    if args.iter().any(|a| a == "no-mrg") {
        features &= !feat::NET_F_MRG_RXBUF;
    }

    let path = std::env::temp_dir().join(format!("sy-vhost-profile-{}.sock", std::process::id()));
    let port = VhostUserPort::open("vm", &path, VhostOptions::default()).expect("vhost-user port");
    let mut fe = Frontend::connect(&path, Duration::from_secs(5)).expect("frontend");
    fe.setup(1, 256, features).expect("frontend setup");
    let end = Instant::now() + Duration::from_secs(5);
    while !port.link_up() {
        assert!(Instant::now() < end, "the port's link never came up");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut rx = port.open_rx(0).expect("rx queue");
    let mut tx = port.open_tx(0).expect("tx queue");
    let pool = Pool::new("vhost-profile", 4096).expect("pool");
    let mut cache = pool.cache();
    let mut drops = DropTally::default();

    let mut frame = vec![0u8; len];
    frame[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);

    let (mut moved, mut spans) = (0usize, Vec::with_capacity(rounds));
    let mut out = Burst::new();
    for _ in 0..rounds {
        for _ in 0..burst {
            assert!(fe.transmit(0, &frame), "the guest's TX ring is full");
        }
        fe.post_rx(0, burst, 2048);
        let t0 = rdtsc();
        let got = rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut out, burst);
        let sent = tx.tx_burst(&mut out, &mut cache, &mut drops);
        let t1 = rdtsc();
        for b in out.drain(..) {
            cache.free(b);
        }
        assert_eq!((got, sent), (burst, burst), "a burst did not cross whole");
        spans.push((t1 - t0) as f64 / burst as f64);
        moved += sent;
        let back = fe.receive(0);
        assert_eq!(back.len(), burst, "the guest did not get the burst back");
        assert!(back.iter().all(|f| f[..] == frame[..]), "a frame changed on the way");
        fe.reclaim(1);
    }
    spans.sort_by(f64::total_cmp);
    let median = spans.get(spans.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{moved} frames in {rounds} rounds of {burst} ({len} bytes, features {features:#x}): \
         median {median:.1} TSC cycles a frame (rx_burst + tx_burst); drops {:?}",
        drops
    );
}
