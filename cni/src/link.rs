//! Kernel network work over rtnetlink, synchronously: veth pairs, link state, addresses,
//! routes, in the host's namespace or in a container's.
//!
//! A [`Netlink`] socket lives in the network namespace it was created in, whatever thread uses
//! it later; [`Netlink::open_in`] creates one on a short-lived thread that entered the target
//! namespace, so no thread of the plugin ever changes namespace for more than that moment.
//!
//! Invariant: every request waits for the kernel's acknowledgement (or its error, returned as
//! [`LinkError::Kernel`] with the operation and the errno), so when a call returns Ok the
//! kernel has done it.

use crate::error::{code, CniError};
use crate::result::{IpNet, Route};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use switchyard_dataplane::wire::MacAddr;

/// A failed kernel operation.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel { op: String, errno: i32 },
    #[error("netlink answer: {0}")]
    Decode(String),
    /// A route to the destination is in the namespace already, with the same metric in the
    /// same table, and it is not the one asked for (another gateway or device).
    #[error("add route {route}: the namespace has {have} already, another route to that destination")]
    RouteTaken { route: String, have: String },
}

impl LinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl From<LinkError> for CniError {
    fn from(e: LinkError) -> CniError {
        match e {
            LinkError::Netns { .. } => CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}")),
            LinkError::RouteTaken { .. } => CniError::new(code::EXISTS, e.to_string()),
            e => CniError::new(code::LINK, e.to_string()),
        }
    }
}

/// What the plugin reads of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub is_veth: bool,
}

/// An rtnetlink socket in one network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn ifname_msg(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

fn route_addr(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Netlink {
    /// A socket in this thread's network namespace.
    pub fn open() -> Result<Netlink, LinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0, buf: vec![0; 1 << 16] })
    }

    /// A socket in the network namespace `ns` (an open namespace file, such as CNI_NETNS).
    pub fn open_in(ns: &File, shown: &str) -> Result<Netlink, LinkError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) with a namespace fd that `ns` keeps open; it moves only
                // this short-lived thread, which ends right after creating the socket.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(LinkError::Netns {
                        path: shown.to_string(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(LinkError::Decode("the namespace thread panicked".into())))
        })
    }

    /// Sends one request and collects the kernel's answers until its acknowledgement (or the
    /// end of a dump).
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out[..]);
        self.sock.send(&out, 0)?;
        let mut answers = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| LinkError::Decode(format!("{op}: {e}")))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(LinkError::Decode(format!("{op}: a zero-length message")));
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(c) => Err(LinkError::Kernel { op: op.to_string(), errno: -c.get() }),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(i) => answers.push(i),
                    _ => {}
                }
            }
        }
    }

    /// The link named `name`, or None when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkState>, LinkError> {
        let op = format!("look up link {name}");
        let answers = match self.exchange(RouteNetlinkMessage::GetLink(ifname_msg(name)), NLM_F_ACK, &op) {
            Err(LinkError::Kernel { errno: libc::ENODEV, .. }) => return Ok(None),
            r => r?,
        };
        let Some(RouteNetlinkMessage::NewLink(m)) = answers.into_iter().next() else {
            return Err(LinkError::Decode(format!("{op}: no link in the answer")));
        };
        let mut st = LinkState {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            mac: None,
            mtu: None,
            is_veth: false,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::Address(b) if b.len() == 6 => st.mac = Some(MacAddr::from_bytes(&b)),
                LinkAttribute::Mtu(v) => st.mtu = Some(v),
                LinkAttribute::LinkInfo(infos) => {
                    st.is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        Ok(Some(st))
    }

    /// Creates the veth pair `host` (here) and `peer`, the peer created directly in the
    /// namespace `peer_ns` with `mac` and both ends with `mtu`.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: &File,
        mac: MacAddr,
        mtu: Option<u32>,
    ) -> Result<(), LinkError> {
        let mut p = ifname_msg(peer);
        p.attributes.push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        p.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        let mut m = ifname_msg(host);
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        let op = format!("create veth {host} (peer {peer})");
        self.exchange(RouteNetlinkMessage::NewLink(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &op)?;
        Ok(())
    }

    /// Sets the link `index` up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.exchange(RouteNetlinkMessage::SetLink(m), NLM_F_ACK, &format!("set {name} up"))?;
        Ok(())
    }

    /// Deletes the link `name` (a veth takes its peer with it). Ok(false) when there was none.
    pub fn del_link(&mut self, name: &str) -> Result<bool, LinkError> {
        match self.exchange(
            RouteNetlinkMessage::DelLink(ifname_msg(name)),
            NLM_F_ACK,
            &format!("delete link {name}"),
        ) {
            Ok(_) => Ok(true),
            Err(LinkError::Kernel { errno: libc::ENODEV, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr` to link `index` (IPv6 without duplicate address detection, as the bridge
    /// plugin does by default: the address is usable at once).
    pub fn add_addr(&mut self, index: u32, addr: &IpNet) -> Result<(), LinkError> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr);
        m.header.prefix_len = addr.prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(addr.addr));
        m.attributes.push(AddressAttribute::Address(addr.addr));
        if let Some(b) = addr.broadcast() {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
        if addr.addr.is_ipv6() {
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let op = format!("add address {addr}");
        self.exchange(RouteNetlinkMessage::NewAddress(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &op)?;
        Ok(())
    }

    /// The addresses of link `index`.
    pub fn addrs(&mut self, index: u32) -> Result<Vec<IpNet>, LinkError> {
        let answers = self.exchange(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "list addresses",
        )?;
        let mut out = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewAddress(m) = a else { continue };
            if m.header.index != index {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(addr) = addr {
                out.push(IpNet { addr, prefix: m.header.prefix_len });
            }
        }
        Ok(out)
    }

    /// Adds `route` through link `index`, never beside or over another: the request is
    /// exclusive (`NLM_F_EXCL`, as `ip route add`), so that a route to the same destination
    /// and metric already in the table (the primary network's default route, say) is neither
    /// replaced nor joined into a multipath route. The kernel's "exists" is fine only when that
    /// route is this one (same destination, table, metric, gateway and device: the subnet route
    /// of an address, given again as a link-scope route), and [`LinkError::RouteTaken`]
    /// otherwise, naming both: the result must not report a route that is not the
    /// attachment's. (The Go plugins add routes non-exclusively and fail on any "exists":
    /// their IPv4 route goes in front of the other one and their IPv6 one joins it as a next
    /// hop.)
    pub fn add_route(&mut self, index: u32, route: &Route) -> Result<(), LinkError> {
        let dst = route.dst.network();
        let table = route.table().filter(|&t| t != 0).unwrap_or(u32::from(RouteHeader::RT_TABLE_MAIN));
        // The kernel's metric of a route without one: 0 for IPv4, 1024 for IPv6 (0 too).
        let metric = match route.priority() {
            Some(p) if p != 0 || dst.addr.is_ipv4() => p,
            _ if dst.addr.is_ipv4() => 0,
            _ => 1024,
        };
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst.addr);
        m.header.destination_prefix_length = dst.prefix;
        // A table above 255 does not fit the header: the attribute carries it then.
        match route.table() {
            None => m.header.table = RouteHeader::RT_TABLE_MAIN,
            Some(t) => match u8::try_from(t) {
                Ok(t) => m.header.table = t,
                Err(_) => {
                    m.header.table = RouteHeader::RT_TABLE_UNSPEC;
                    m.attributes.push(RouteAttribute::Table(t));
                }
            },
        }
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = match route.scope() {
            Some(s) => RouteScope::from(s),
            None if route.gw.is_some() => RouteScope::Universe,
            None => RouteScope::Link,
        };
        m.header.kind = RouteType::Unicast;
        if dst.prefix > 0 {
            m.attributes.push(RouteAttribute::Destination(route_addr(dst.addr)));
        }
        if let Some(gw) = route.gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        if let Some(p) = route.priority() {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        let metrics: Vec<RouteMetric> =
            [route.mtu().map(RouteMetric::Mtu), route.advmss().map(RouteMetric::Advmss)]
                .into_iter()
                .flatten()
                .collect();
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        let op = format!("add route {dst}");
        match self.exchange(RouteNetlinkMessage::NewRoute(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &op) {
            Err(LinkError::Kernel { errno: libc::EEXIST, .. }) => {
                let have = self.routes(dst, table)?.into_iter().find(|r| r.metric == metric);
                match have {
                    Some(h) if h.oif == Some(index) && (h.gw == route.gw || h.gw.is_none()) => Ok(()),
                    h => Err(LinkError::RouteTaken {
                        route: shown_route(dst, route.gw, Some(index), table, metric),
                        have: h.map_or_else(
                            || format!("a route to {dst} in table {table}"),
                            |h| shown_route(dst, h.gw, h.oif, table, h.metric),
                        ),
                    }),
                }
            }
            r => r.map(|_| ()),
        }
    }

    /// The routes to exactly `dst` in `table`.
    fn routes(&mut self, dst: IpNet, table: u32) -> Result<Vec<RouteState>, LinkError> {
        let mut q = RouteMessage::default();
        q.header.address_family = family(dst.addr);
        let answers = self.exchange(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP, "list routes")?;
        let mut out = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewRoute(m) = a else { continue };
            let mut r =
                RouteState { dst: None, gw: None, oif: None, metric: 0, table: u32::from(m.header.table) };
            for at in &m.attributes {
                match at {
                    RouteAttribute::Destination(d) => r.dst = ip_of(d),
                    RouteAttribute::Gateway(g) => r.gw = ip_of(g),
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    RouteAttribute::Priority(p) => r.metric = *p,
                    RouteAttribute::Table(t) => r.table = *t,
                    _ => {}
                }
            }
            // A default route carries no destination attribute.
            let addr = r.dst.unwrap_or(match dst.addr {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            });
            let here = IpNet { addr, prefix: m.header.destination_prefix_length };
            if here == dst && r.table == table && m.header.kind == RouteType::Unicast {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// One route as [`Netlink::add_route`] compares it.
#[derive(Debug)]
struct RouteState {
    dst: Option<IpAddr>,
    gw: Option<IpAddr>,
    oif: Option<u32>,
    metric: u32,
    table: u32,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A route in `ip route`'s words (the device by index: the namespace's names are not at hand).
fn shown_route(dst: IpNet, gw: Option<IpAddr>, oif: Option<u32>, table: u32, metric: u32) -> String {
    let mut s = dst.to_string();
    if let Some(g) = gw {
        s.push_str(&format!(" via {g}"));
    }
    match oif {
        Some(i) => s.push_str(&format!(" dev #{i}")),
        None => s.push_str(" (multipath or no device)"),
    }
    s.push_str(&format!(" table {table} metric {metric}"));
    s
}

/// A random locally administered unicast MAC (the kernel's choice for a veth is random too,
/// but the plugin must know the MAC before the port exists: it is the port's allowed MAC).
pub fn random_mac() -> Result<MacAddr, LinkError> {
    use std::io::Read;
    let mut b = [0u8; 6];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b))?;
    b[0] = (b[0] & 0xfe) | 0x02;
    Ok(MacAddr(b))
}

/// Turns IPv6 off on a host-side interface: the port's end carries the pod's frames only, and
/// an IPv6 link-local address there would send router solicitations and MLD reports into the
/// pod's network. Best effort: a kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6(ifname: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..50 {
            let m = random_mac().unwrap();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
        assert_ne!(random_mac().unwrap(), random_mac().unwrap());
    }
}
