//! A DPDK port renamed in one plan (the same device under a new name) is up when that plan's
//! reconcile returns. One device is one port (`PortError::DeviceInUse`), so the new name
//! cannot open the device while the old port holds it; the runtime opens it again once the
//! workers have let the old one go and it is closed, instead of leaving it down until the
//! next reconcile. Frames then flow through the renamed port: a frame from a ring port goes
//! out of the DPDK port (a `net_ring` vdev, whose TX ring is its RX ring) and comes back in.
//! Runs on the EAL `switchyard run` starts (hugepages); skips with a message without them.
#![cfg(feature = "dpdk")]

use std::time::{Duration, Instant};
use switchyard_control::runtime::{Runtime, RuntimeOptions};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType};
use switchyard_ports::factory::ring_peer;
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const DEVICE: &str = "net_ring_rename0";

/// A bridge of a ring port and the DPDK port `name` on [`DEVICE`].
fn config(name: &str) -> Config {
    let dpdk = PortConfig {
        name: name.into(),
        kind: Some(PortType::Dpdk),
        devargs: Some(DEVICE.into()),
        ..Default::default()
    };
    let vm = PortConfig { name: "rn-vm".into(), kind: Some(PortType::Ring), ..Default::default() };
    Config { bridges: vec![BridgeConfig::new("br", vec![vm, dpdk])] }
}

#[test]
fn a_renamed_dpdk_port_is_up_after_one_reconcile() {
    let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let none = |_: &str| None;
    rt.apply(&config("rn-a"), &none).unwrap();
    if let Some(e) = rt.port_error("rn-a") {
        // Without hugepages (or DPDK) the EAL cannot start; with them the port must open.
        let probe = testkit::probe::root().and_then(|()| testkit::probe::hugepages(64)).map(|_| ());
        return testkit::fail_or_skip(
            &testkit::current_test(),
            "opening a DPDK port under the runtime",
            &e,
            probe,
        );
    }
    let a = rt.apply(&config("rn-b"), &none).unwrap();
    assert_eq!(
        (a.diff.added.as_slice(), a.diff.removed.as_slice()),
        (&["rn-b".to_string()][..], &["rn-a".to_string()][..])
    );
    assert!(a.in_time, "the workers did not take the plan in time");
    assert_eq!(rt.port_error("rn-b"), None, "the renamed port is down: {:?}", a.lines);
    assert!(rt.backend("rn-a").is_none());
    assert!(rt.backend("rn-b").is_some());

    // A frame from the VM to an unknown MAC is flooded out of rn-b; net_ring hands it back as
    // received on rn-b (and the bridge floods it to the VM's ring, which nobody reads).
    let vm = ring_peer("rn-vm").unwrap();
    let pool = Pool::new("rn", 64).unwrap();
    let mut cache = pool.cache();
    let f =
        Frame::new([2, 0, 0, 0, 0x0b, 1], [2, 0, 0, 0, 0x0a, 1]).ethertype(ETHERTYPE_IPV4).pad(64, 0).build();
    vm.inject(cache.alloc_copy(&f).unwrap()).map_err(|_| "ring full").unwrap();
    let st = rt.switch().port_by_name("rn-b").unwrap().stats.clone();
    let t = Instant::now();
    while (st.tx_packets() < 1 || st.rx_packets() < 1) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(st.tx_packets() >= 1 && st.rx_packets() >= 1, "rn-b: {:?}", st.snapshot());
}
