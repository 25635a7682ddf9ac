//! The underlay MTU of a tunnel port on the kernel transport (`switchyard_ports::udp_tunnel`):
//! the smallest route MTU towards the endpoints that have a route; an endpoint without one is
//! left out of it (a warning), and neither the opening nor an update of the port fails for it.
//! From 127.0.0.1 the kernel routes only to local addresses: a connect to 192.0.2.x fails
//! (EINVAL), as it would towards an endpoint the underlay has no route to.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use switchyard_dataplane::config::{PortConfig, PortType};
use switchyard_dataplane::port::PortBackend;
use switchyard_dataplane::tunnel::TunnelKind;
use switchyard_ports::udp_tunnel::{route_mtu, TunnelOptions, UdpTunnelPort};

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const NO_ROUTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

fn opts(port: u16, flood: &[Ipv4Addr]) -> TunnelOptions {
    TunnelOptions {
        kind: TunnelKind::Vxlan,
        vni: 5001,
        local: IpAddr::V4(LOCAL),
        dstport: port,
        flood: flood.iter().map(|a| IpAddr::V4(*a)).collect(),
        remote_macs: vec![],
        learn: false,
        aging_s: 300,
    }
}

#[test]
fn an_endpoint_without_a_route_leaves_the_port_up() {
    let port = UdpSocket::bind((LOCAL, 0)).unwrap().local_addr().unwrap().port();
    assert!(route_mtu(IpAddr::V4(LOCAL), IpAddr::V4(NO_ROUTE), port).is_err(), "the test needs no route");
    let lo = route_mtu(IpAddr::V4(LOCAL), IpAddr::V4(PEER), port).unwrap();
    let p = UdpTunnelPort::open("tun", &opts(port, &[PEER, NO_ROUTE])).expect("open despite one endpoint");
    assert_eq!(p.underlay_mtu(), lo, "the routed endpoint's MTU");
    assert_eq!(p.remotes().flood().len(), 2, "the unroutable endpoint stays in the flood list");
    // An update that adds another unroutable endpoint is taken in place.
    let wanted = PortConfig {
        name: "tun".into(),
        kind: Some(PortType::Vxlan),
        vni: Some(5001),
        local: Some(IpAddr::V4(LOCAL)),
        dstport: Some(port),
        flood: Some(vec![IpAddr::V4(PEER), IpAddr::V4(NO_ROUTE), "192.0.2.78".parse().unwrap()]),
        learn: Some(false),
        ..Default::default()
    };
    assert!(p.update(&wanted.backend().unwrap()).expect("updated"), "in place");
    assert_eq!(p.remotes().flood().len(), 3);
    assert_eq!(p.underlay_mtu(), lo);
    drop(p);
    // Only unroutable endpoints: the default underlay MTU.
    let p = UdpTunnelPort::open("tun2", &opts(port, &[NO_ROUTE])).expect("open");
    assert_eq!(p.underlay_mtu(), 1500);
}
