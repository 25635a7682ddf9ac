//! The TAP port for real: frames written by the switch arrive on the kernel side of the
//! interface (an AF_PACKET socket bound to it sees them) and frames the kernel sends out of it
//! reach the switch. Needs root, iproute2 and TAP interfaces from the kernel; otherwise every
//! test skips (testkit), saying why.

mod kports_common;

/// A test frame: marker, tags (TPID, TCI), length.
type Case = (&'static str, Vec<(u16, u16)>, usize);

use kports_common::*;
use std::time::Duration;
use switchyard_dataplane::port::{burst_of, Burst, DropTally, PortBackend, RxCtx};
use switchyard_dataplane::{DropReason, Pool};
use switchyard_ports::tap::{TapOptions, TapPort};

fn tap_name() -> String {
    let (pid, n) = unique();
    format!("syt{pid}n{n}")
}

/// Why TAP tests cannot run here: not root, no iproute2, or no TAP interfaces from the
/// kernel (a probe of its own, not through the port under test).
fn tap_env() -> Result<(), String> {
    if let Some(why) = skip_reason() {
        return Err(why);
    }
    tap_probe()
}

/// A fresh TAP port (the interface removed on drop of the guard too), or `None` with the
/// skip reported when the machine gives no TAP interfaces. Once it does, the port must open.
fn setup(test: &str, opts: TapOptions) -> Option<(LinkGuard, TapPort)> {
    if let Err(why) = tap_env() {
        skip(test, &why);
        return None;
    }
    let name = tap_name();
    let guard = LinkGuard(name.clone());
    let port = TapPort::open("t0", &name, opts).unwrap_or_else(|e| {
        panic!("TapPort::open {name} failed although the kernel gives TAP interfaces: {e}")
    });
    let _ = std::process::Command::new("sysctl")
        .args(["-qw", &format!("net.ipv6.conf.{name}.disable_ipv6=1")])
        .output();
    Some((guard, port))
}

#[test]
fn frames_cross_between_switch_and_kernel() {
    let Some((_g, port)) = setup("frames_cross_between_switch_and_kernel", TapOptions::default()) else {
        return;
    };
    assert!(port.link_up());
    let mut kernel = RawSock::open(None, port.ifname()).expect("socket on the tap");
    let pool = Pool::with_hugepages("tap", 128, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    assert!(port.open_rx(0).is_err(), "an RX queue can be taken once");
    assert!(!rx.spin_when_idle(), "a TAP fd wakes an idle worker for free: no spin");
    let mut tx = port.open_tx(0).unwrap();
    let mut drops = DropTally::default();

    // Switch -> kernel.
    let frames: Vec<Vec<u8>> = [60usize, 64, 1000, 1514]
        .iter()
        .enumerate()
        .map(|(i, n)| frame(DST, SRC, &[], &format!("TX{i}."), *n))
        .collect();
    let mut burst = burst_of(&mut cache, &frames).unwrap();
    burst.push(cache.alloc_copy(&[1u8; 8]).unwrap()); // runt
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len());
    assert_eq!(drops.get(DropReason::Runt), 1);
    for (i, f) in frames.iter().enumerate() {
        let m = format!("TX{i}.");
        let got =
            kernel.recv_matching(WAIT, |g| has_marker(g, &m)).unwrap_or_else(|| panic!("frame {i} not seen"));
        assert_eq!(&got, f, "frame {i} changed on the way");
    }

    // Kernel -> switch, untagged and tagged.
    let cases: [Case; 4] = [
        ("RX0.", vec![], 60),
        ("RX1.", vec![], 1514),
        ("RX2.", vec![(0x8100, 0x2064)], 64),
        ("RX3.", vec![(0x88a8, 0x00c8), (0x8100, 0x0064)], 300),
    ];
    for (m, tags, len) in &cases {
        let f = frame(DST, SRC, tags, m, *len);
        kernel.send(&f);
        let got =
            rx_wait(&mut *rx, &mut cache, &mut drops, m, WAIT).unwrap_or_else(|| panic!("{m} not received"));
        assert_eq!(got.data(), &f[..], "{m} changed on the way");
        cache.free(got);
    }
    assert_eq!(drops.get(DropReason::Runt), 1);
    assert_eq!(drops.total(), 1, "{drops:?}");
    drop((rx, tx));
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn oversize_frames_are_counted() {
    let opts = TapOptions { mtu: Some(4000), ..TapOptions::default() };
    let Some((_g, port)) = setup("oversize_frames_are_counted", opts) else {
        return;
    };
    let kernel = RawSock::open(None, port.ifname()).expect("socket on the tap");
    let pool = Pool::with_hugepages("tap-big", 64, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut drops = DropTally::default();
    kernel.send(&frame(DST, SRC, &[], "BIG.", 2500));
    kernel.send(&frame(DST, SRC, &[], "BIG2.", 2049));
    let ok = frame(DST, SRC, &[], "OK.", 2048);
    kernel.send(&ok);
    let got = rx_wait(&mut *rx, &mut cache, &mut drops, "OK.", WAIT).expect("the 2048-byte frame");
    assert_eq!(got.data(), &ok[..]);
    cache.free(got);
    assert_eq!(drops.get(DropReason::Oversize), 2, "{drops:?}");
}

#[test]
fn deleting_the_interface_marks_the_port_down() {
    let Some((g, port)) = setup("deleting_the_interface_marks_the_port_down", TapOptions::default()) else {
        return;
    };
    let pool = Pool::with_hugepages("tap-del", 64, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut tx = port.open_tx(0).unwrap();
    let mut drops = DropTally::default();
    assert!(port.link_up());
    ip(&["link", "del", &g.0]).expect("delete the tap");

    let mut burst = Burst::new();
    for i in 0..5 {
        burst.push(cache.alloc_copy(&frame(DST, SRC, &[], &format!("D{i}."), 100)).unwrap());
    }
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 0);
    assert_eq!(drops.get(DropReason::PortDown), 5, "{drops:?}");
    assert!(!port.link_up());
    let mut out = Burst::new();
    assert_eq!(rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut out, 32), 0);
    burst.push(cache.alloc_copy(&frame(DST, SRC, &[], "E.", 100)).unwrap());
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 0);
    assert_eq!(drops.get(DropReason::PortDown), 6);
    drop((rx, tx));
    drop(port);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn attaches_to_an_existing_tap_and_counts_while_down() {
    let test = "attaches_to_an_existing_tap_and_counts_while_down";
    if let Err(why) = tap_env() {
        skip(test, &why);
        return;
    }
    let name = tap_name();
    let g = LinkGuard(name.clone());
    ip(&["tuntap", "add", "dev", &name, "mode", "tap"]).expect("create a persistent TAP interface");
    let port = TapPort::open("t1", &name, TapOptions { bring_up: false, ..TapOptions::default() })
        .expect("attach to the existing tap");
    assert_eq!(port.ifname(), name);
    assert!(!port.link_up(), "not brought up");
    let pool = Pool::with_hugepages("tap-att", 16, false).unwrap();
    let mut cache = pool.cache();
    let mut rx = port.open_rx(0).unwrap();
    let mut drops = DropTally::default();
    let mut out = Burst::new();
    assert_eq!(rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut out, 32), 0);
    let mut tx = port.open_tx(0).unwrap();
    let mut burst = Burst::new();
    burst.push(cache.alloc_copy(&frame(DST, SRC, &[], "DOWN.", 100)).unwrap());
    let sent = tx.tx_burst(&mut burst, &mut cache, &mut drops);
    assert_eq!(sent, 0);
    assert_eq!(drops.get(DropReason::PortDown), 1, "{drops:?}");
    ip(&["link", "set", &name, "up"]).unwrap();
    assert!(port.link_up());
    burst.push(cache.alloc_copy(&frame(DST, SRC, &[], "UP.", 100)).unwrap());
    assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), 1, "{drops:?}");
    drop((rx, tx, port));
    // The interface was persistent before the port came; it stays after.
    ip(&["link", "show", &name]).expect("the persistent tap is still there");
    drop(g);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
    std::thread::sleep(Duration::from_millis(1));
}
