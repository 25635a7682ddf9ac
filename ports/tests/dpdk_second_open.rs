//! A second DPDK port opened on the device of a running one fails with
//! `PortError::DeviceInUse` before it touches the device (it used to find the running port's
//! ethdev, fail to configure it, and on its error path stop and close it: only DPDK's
//! refusal to close a started device kept the running port up). The running port keeps
//! carrying frames, and once it is gone the device opens again. Skips with a message where
//! DPDK cannot run at all, as the other DPDK tests.
#![cfg(feature = "dpdk")]

use switchyard_bindings::{Eal, EalOptions};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, PortError, RxCtx};
use switchyard_ports::dpdk::{DpdkPort, DpdkPortConfig};

#[test]
fn a_second_open_of_a_running_device_fails_cleanly_before_touching_it() {
    let opts = EalOptions { no_huge: Some(true), memory_mb: Some(256), ..EalOptions::default() };
    let eal = match Eal::init(opts) {
        Ok(e) => e,
        Err(e) => {
            return testkit::fail_or_skip(
                &testkit::current_test(),
                "Eal::init",
                &e,
                testkit::probe::testpmd(),
            )
        }
    };
    let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
    let port = DpdkPort::open(eal, "p0", "net_ring_s16x", &cfg).expect("open");
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let stats = port.device_stats().unwrap();
    // The same device, spelled with other options too: one device is one port.
    for devargs in ["net_ring_s16x", "net_ring_s16x,nodeaction=x:0:CREATE"] {
        match DpdkPort::open(eal, "p1", devargs, &cfg) {
            Err(PortError::DeviceInUse { port, device, owner }) => {
                assert_eq!((port.as_str(), device.as_str(), owner.as_str()), ("p1", "net_ring_s16x", "p0"))
            }
            Err(e) => panic!("{devargs}: not DeviceInUse: {e}"),
            Ok(_) => panic!("{devargs}: a second port on a running device"),
        }
    }
    assert!(port.link_up(), "the running port was closed under its workers");
    assert_eq!(port.device_stats().unwrap(), stats, "the refused open touched the device");
    let pool = Pool::new("s16x", 64).unwrap();
    let mut c = pool.cache();
    let mut d = DropTally::default();
    let mut b = Burst::new();
    b.push(c.alloc_copy(&[0x02u8; 60]).unwrap());
    assert_eq!(tx.tx_burst(&mut b, &mut c, &mut d), 1);
    let mut out = Burst::new();
    assert_eq!(rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32), 1);
    for b in out.drain(..) {
        c.free(b);
    }
    drop((rx, tx, port));
    let again =
        DpdkPort::open(eal, "p1", "net_ring_s16x", &cfg).expect("the device is free once its port is gone");
    assert!(again.link_up());
}

/// An open that fails after the claim (here the probe: bad devargs) gives the
/// device back, so a correct open of it succeeds next.
#[test]
fn a_failed_open_releases_its_claim() {
    let opts = EalOptions { no_huge: Some(true), memory_mb: Some(256), ..EalOptions::default() };
    let eal = Eal::init(opts).expect("EAL");
    let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
    let bad = DpdkPort::open(eal, "p0", "net_ring_r2x,nodeaction=bogus", &cfg);
    assert!(
        matches!(bad, Err(ref e) if !matches!(e, PortError::DeviceInUse { .. })),
        "{:?}",
        bad.as_ref().err()
    );
    let good = DpdkPort::open(eal, "p1", "net_ring_r2x", &cfg).expect("the failed open left its claim");
    assert!(good.link_up());
}
