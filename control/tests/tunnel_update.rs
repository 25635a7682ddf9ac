//! A running tunnel port takes a new flood list and new remote MACs in place: the reconcile
//! names it `updated`, the runtime keeps the same backend object (the socket stays bound), and
//! the next frame goes to the new endpoints. A change of its transport (the VNI) reopens it.
//! Real UDP sockets on the loopback: the endpoints are sockets that count what arrives.

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use switchyard_control::runtime::{Runtime, RuntimeOptions};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType, RemoteMac};
use switchyard_dataplane::wire::MacAddr;
use switchyard_ports::factory::ring_peer;
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const VM: [u8; 6] = [2, 0, 0, 0, 0x0a, 1];
const FAR: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(vni: u32, port: u16, flood: &[&str], remote: Option<&str>) -> Config {
    let tunnel = PortConfig {
        name: "tu-tun".into(),
        kind: Some(PortType::Vxlan),
        vni: Some(vni),
        local: Some(ip("127.0.0.1")),
        dstport: Some(port),
        flood: Some(flood.iter().map(|s| ip(s)).collect()),
        remote_macs: remote.map(|r| vec![RemoteMac { mac: MacAddr(FAR), remote: ip(r) }]).unwrap_or_default(),
        learn: Some(false),
        ..Default::default()
    };
    let vm = PortConfig { name: "tu-vm".into(), kind: Some(PortType::Ring), ..Default::default() };
    Config { bridges: vec![BridgeConfig::new("br", vec![vm, tunnel])] }
}

/// An endpoint: a socket on `addr` and the tunnel's port, reading with a short timeout.
fn endpoint(addr: &str, port: u16) -> UdpSocket {
    let s = UdpSocket::bind((ip(addr), port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// The VNI and inner destination MAC of each datagram `s` gets within its timeout.
fn arrivals(s: &UdpSocket) -> Vec<(u32, [u8; 6])> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        assert!(n >= 8 + 14, "a short datagram");
        out.push((u32::from_be_bytes([0, buf[4], buf[5], buf[6]]), buf[8..14].try_into().unwrap()));
    }
    out
}

#[test]
fn a_tunnel_port_takes_new_endpoints_in_place() {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (e2, e3) = (endpoint("127.0.0.2", port), endpoint("127.0.0.3", port));
    let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let none = |_: &str| None;
    rt.apply(&config(5001, port, &["127.0.0.2"], None), &none).unwrap();
    let tun = rt.backend("tu-tun").unwrap();
    let vm = ring_peer("tu-vm").unwrap();
    let pool = Pool::new("tu", 64).unwrap();
    let mut cache = pool.cache();
    let mut send = |dst: [u8; 6]| {
        let f = Frame::new(dst, VM).ethertype(ETHERTYPE_IPV4).pad(64, 0).build();
        vm.inject(cache.alloc_copy(&f).unwrap()).map_err(|_| "ring full").unwrap();
    };

    // FAR is unknown: flooded to 127.0.0.2 only.
    send(FAR);
    assert_eq!(arrivals(&e2), [(5001, FAR)]);
    assert_eq!(arrivals(&e3), []);

    // Flood list to .3 and FAR static at .3: updated in place, the same backend.
    let a = rt.apply(&config(5001, port, &["127.0.0.3"], Some("127.0.0.3")), &none).unwrap();
    assert_eq!(
        (a.diff.updated.as_slice(), a.diff.reopened.len()),
        (&["tu-tun".to_string()][..], 0),
        "{:?}",
        a.diff
    );
    assert!(
        a.lines.iter().any(|l| l.starts_with("port tu-tun updated in place: flood [127.0.0.2]")),
        "{:?}",
        a.lines
    );
    assert!(Arc::ptr_eq(&tun, &rt.backend("tu-tun").unwrap()), "the tunnel port was reopened");
    send(FAR);
    send([0xff; 6]);
    assert_eq!(arrivals(&e3), [(5001, FAR), (5001, [0xff; 6])]);
    assert_eq!(arrivals(&e2), []);

    // FAR moves to .2 (static, not flooded): one store, the next frame follows it.
    rt.apply(&config(5001, port, &["127.0.0.3"], Some("127.0.0.2")), &none).unwrap();
    assert!(Arc::ptr_eq(&tun, &rt.backend("tu-tun").unwrap()));
    send(FAR);
    assert_eq!(arrivals(&e2), [(5001, FAR)]);
    assert_eq!(arrivals(&e3), []);

    // Another VNI is another transport: reopened, a new backend.
    let a = rt.apply(&config(5002, port, &["127.0.0.3"], Some("127.0.0.2")), &none).unwrap();
    assert_eq!(a.diff.reopened, ["tu-tun"]);
    assert!(!Arc::ptr_eq(&tun, &rt.backend("tu-tun").unwrap()));
    send(FAR);
    assert_eq!(arrivals(&e2), [(5002, FAR)]);
    drop(tun);
}
