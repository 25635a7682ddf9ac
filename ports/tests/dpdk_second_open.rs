//! a second DPDK port opened on the devargs of a running one fails, and its
//! failure (dropping its EthDev: stop + close + remove) must leave the running port alone.
#![cfg(feature = "dpdk")]

use switchyard_bindings::{Eal, EalOptions};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_ports::dpdk::{DpdkPort, DpdkPortConfig};

#[test]
fn a_refused_second_open_leaves_the_running_port_alone() {
    let eal = Eal::init(EalOptions { no_huge: Some(true), memory_mb: Some(256), ..EalOptions::default() })
        .expect("EAL");
    let cfg = DpdkPortConfig { rx_desc: 256, tx_desc: 256, ..Default::default() };
    let port = DpdkPort::open(eal, "p0", "net_ring_s15x", &cfg).expect("open");
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let dup = DpdkPort::open(eal, "p1", "net_ring_s15x", &cfg);
    assert!(dup.is_err(), "a second port on a running device");
    drop(dup);
    assert!(port.link_up(), "the running port was closed under its workers");
    let pool = Pool::new("s15x", 64).unwrap();
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
}
