//! a frontend that hands over a call "eventfd" that never drains (a pipe nobody
//! reads) must not block the worker polling the guest's TX ring.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_ports::vhost::frontend::Frontend;
use switchyard_ports::vhost::proto::{feat, req};
use switchyard_ports::vhost::{VhostOptions, VhostUserPort};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn a_call_fd_that_never_drains_does_not_block_the_worker() {
    let path: PathBuf = std::env::temp_dir().join(format!("sy-vhost-{}-s15x.sock", std::process::id()));
    let port = VhostUserPort::open("s15x", &path, VhostOptions::default()).unwrap();
    let mut fe = Frontend::connect(&path, WAIT).unwrap();
    fe.setup(1, 64, feat::OFFERED & !feat::F_IN_ORDER).unwrap();
    let end = Instant::now() + WAIT;
    while !port.link_up() {
        assert!(Instant::now() < end, "link up");
        std::thread::sleep(Duration::from_millis(2));
    }
    // A blocking pipe, filled to its capacity (64 KiB) and never read: the next 8-byte
    // "signal" written into it blocks.
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(&[0u8; 65536]).unwrap();
    fe.must(req::SET_VRING_CALL, &1u64.to_le_bytes(), &[writer.as_fd()]).unwrap();
    fe.get_u64(req::GET_FEATURES).unwrap();
    let frame = vec![0x02u8; 60];
    assert!(fe.transmit(0, &frame));
    let mut rx = port.open_rx(0).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let pool = Pool::new("s15x", 64).unwrap();
        let mut c = pool.cache();
        let mut d = DropTally::default();
        let mut got = 0;
        let end = Instant::now() + WAIT;
        while got == 0 && Instant::now() < end {
            let mut out = Burst::new();
            got += rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
            for b in out.drain(..) {
                c.free(b);
            }
        }
        let _ = done_tx.send(got);
    });
    let res = done_rx.recv_timeout(Duration::from_secs(3));
    // Unblock a stuck worker before asserting, so the test process can end.
    drop(reader);
    let _ = worker.join();
    assert_eq!(res.ok(), Some(1), "the worker blocked writing the guest's call fd");
    drop(fe);
    drop(port);
}
