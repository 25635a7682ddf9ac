//! The AF_XDP hot path for callgrind: frames from a veth peer into port A's RX ring (256 at a
//! time, then a pause so they land), forwarded by `rx_burst` on A and `tx_burst` on B in one
//! thread, so that instruction counts of the two depend on the frames only, not on timing.
//! Ignored (not a test of behaviour); run it as root:
//!
//! ```text
//! cargo test --release -p switchyard-ports --features dpdk --test afxdp_profile --no-run
//! FRAMES=4096 valgrind --tool=callgrind --toggle-collect='*AfXdpRx*rx_burst*' \
//!     --toggle-collect='*AfXdpTx*tx_burst*' target/release/deps/afxdp_profile-<hash> --ignored
//! ```
//!
//! Instructions a frame: the total collected over FRAMES (docs/perf-log.md, 2026-12-07).

mod kports_common;
use kports_common::*;
use std::time::{Duration, Instant};
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_dataplane::Pool;
use switchyard_ports::afxdp::AfXdpPort;

#[test]
#[ignore]
fn afxdp_forward_profile() {
    if let Some(why) = afxdp_skip_reason() {
        return skip("afxdp_forward_profile", &why);
    }
    let n: usize = std::env::var("FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let a = VethNs::create().unwrap();
    let b = VethNs::create().unwrap();
    let pa = AfXdpPort::open("a", &a.host, 1).unwrap();
    let pb = AfXdpPort::open("b", &b.host, 1).unwrap();
    let mut rx = pa.open_rx(0).unwrap();
    let mut tx = pb.open_tx(0).unwrap();
    let pool = Pool::new("p", 256).unwrap();
    let mut cache = pool.cache();
    let mut drops = DropTally::default();
    let peer = RawSock::open(Some(&a.ns), &a.peer).unwrap();
    let f = frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], &[], "p", 300);
    let (mut got, mut sent, mut empty) = (0, 0, 0);
    let mut burst = Burst::new();
    let t0 = Instant::now();
    // Rounds of 256 frames: sent, landed in the RX ring (sleep), then forwarded A -> B.
    while got < n && t0.elapsed() < Duration::from_secs(300) {
        for _ in 0..256 {
            peer.send(&f);
        }
        std::thread::sleep(Duration::from_millis(20));
        let want = got + 256;
        let t1 = Instant::now();
        while got < want && t1.elapsed() < Duration::from_secs(5) {
            let k = rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
            if k == 0 {
                empty += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            got += k;
            sent += tx.tx_burst(&mut burst, &mut cache, &mut drops);
        }
    }
    eprintln!("PROFILE got={got} sent={sent} empty={empty} drops={drops:?}");
    assert!(got >= n, "{got} of {n} frames received");
    assert_eq!(sent, got, "every frame received was sent");
}
