//! A running tunnel port takes a new flood list and new remote MACs in place: the reconcile
//! names it `updated`, the runtime keeps the same backend object (the socket stays bound), and
//! the next frame goes to the new endpoints. A change of its transport (the VNI) reopens it;
//! its options only respelled are no change (`unchanged`: nothing is handed to the port).
//! Real UDP sockets on the loopback: the endpoints are sockets that count what arrives.

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use switchyard_control::runtime::{Runtime, RuntimeOptions};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType, RemoteMac};
use switchyard_dataplane::switch::DropReason;
use switchyard_dataplane::wire::MacAddr;
use switchyard_ports::factory::ring_peer;
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const VM: [u8; 6] = [2, 0, 0, 0, 0x0a, 1];
const FAR: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(vni: u32, port: u16, flood: &[&str], remote: Option<&str>) -> Config {
    named("tu-tun", "tu-vm", vni, port, flood, remote)
}

/// A bridge of a ring port `vm` and a tunnel port `name`. Ring ports are named process-wide,
/// and `cargo test` runs a file's tests as threads of one process: each test has its own ring.
fn named(name: &str, vm: &str, vni: u32, port: u16, flood: &[&str], remote: Option<&str>) -> Config {
    let tunnel = PortConfig {
        name: name.into(),
        kind: Some(PortType::Vxlan),
        vni: Some(vni),
        local: Some(ip("127.0.0.1")),
        dstport: Some(port),
        flood: Some(flood.iter().map(|s| ip(s)).collect()),
        remote_macs: remote.map(|r| vec![RemoteMac { mac: MacAddr(FAR), remote: ip(r) }]).unwrap_or_default(),
        learn: Some(false),
        ..Default::default()
    };
    let vm = PortConfig { name: vm.into(), kind: Some(PortType::Ring), ..Default::default() };
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

    // Respelled (the flood list with its endpoint twice, `underlay: kernel` written out, the
    // ring port's `type: ring` left out): unchanged, nothing handed to the port.
    let mut respelled = config(5001, port, &["127.0.0.2", "127.0.0.2"], None);
    respelled.bridges[0].ports[1].underlay = Some("kernel".into());
    respelled.bridges[0].ports[0].kind = None;
    let a = rt.apply(&respelled, &none).unwrap();
    assert_eq!(a.diff.unchanged, ["tu-tun", "tu-vm"], "{:?}", a.diff);
    assert!(a.diff.is_empty() && a.lines.is_empty(), "{:?} {:?}", a.diff, a.lines);
    assert!(Arc::ptr_eq(&tun, &rt.backend("tu-tun").unwrap()), "the tunnel port was reopened");
    send(FAR);
    assert_eq!(arrivals(&e2), [(5001, FAR)]);
    assert_eq!(arrivals(&e3), []);
    // And back to the first spelling: unchanged too.
    let a = rt.apply(&config(5001, port, &["127.0.0.2"], None), &none).unwrap();
    assert_eq!(a.diff.unchanged, ["tu-tun", "tu-vm"], "{:?}", a.diff);
    assert!(a.diff.is_empty(), "{:?}", a.diff);
    assert!(Arc::ptr_eq(&tun, &rt.backend("tu-tun").unwrap()), "the tunnel port was reopened");

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

/// A tunnel port renamed (its VNI moved to a new port on the same socket) works after one
/// reconcile: the removed port gives its VNI up before the new one joins the socket, which
/// stays bound. The new port sends and receives at once, and its counters count exactly
/// that; nothing is counted as another VNI's.
#[test]
fn a_renamed_tunnel_port_serves_its_vni_at_once() {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e2 = endpoint("127.0.0.2", port);
    let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let none = |_: &str| None;
    rt.apply(&named("tr-a", "tr-vm", 5001, port, &["127.0.0.2"], None), &none).unwrap();
    let a = rt.apply(&named("tr-b", "tr-vm", 5001, port, &["127.0.0.2"], None), &none).unwrap();
    assert_eq!(
        (a.diff.added.as_slice(), a.diff.removed.as_slice()),
        (&["tr-b".to_string()][..], &["tr-a".to_string()][..])
    );
    assert_eq!(rt.port_error("tr-b"), None, "the renamed port is down: {:?}", a.lines);
    assert!(rt.backend("tr-a").is_none());

    // Out: a frame from the VM reaches the endpoint in VNI 5001.
    let vm = ring_peer("tr-vm").unwrap();
    let pool = Pool::new("tr", 64).unwrap();
    let mut cache = pool.cache();
    let f = Frame::new(FAR, VM).ethertype(ETHERTYPE_IPV4).pad(64, 0).build();
    vm.inject(cache.alloc_copy(&f).unwrap()).map_err(|_| "ring full").unwrap();
    assert_eq!(arrivals(&e2), [(5001, FAR)]);
    // In: a datagram of VNI 5001 from the endpoint reaches the VM.
    let inner = Frame::new(VM, FAR).ethertype(ETHERTYPE_IPV4).pad(64, 0).build();
    let dgram = [&[0x08, 0, 0, 0, 0, 0x13, 0x89, 0][..], &inner].concat();
    e2.send_to(&dgram, ("127.0.0.1", port)).unwrap();
    let t = std::time::Instant::now();
    let got = loop {
        if let Some(b) = vm.collect() {
            break b.data().to_vec();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "nothing at the VM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(got, inner);
    let st = rt.switch().port_by_name("tr-b").unwrap().stats.clone();
    // Counted after the burst that carried the frame: a moment after it arrived.
    let t = std::time::Instant::now();
    while (st.rx_packets(), st.tx_packets()) != (1, 1) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((st.rx_packets(), st.tx_packets()), (1, 1));
    assert_eq!(st.total_drops(), 0, "{:?}", st.snapshot());
    assert_eq!(st.drop_count(DropReason::TunnelWrongVni), 0);
}
