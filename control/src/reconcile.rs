//! The reconciler's diff: what changed between the configuration that runs and the one wanted,
//! port by port.
//!
//! A port is identified by its name (unique on the node). Each port of the wanted configuration
//! is one of:
//! - **added**: no port of that name runs;
//! - **reopened**: its backend (`type` or a type option: `iface`, `ring`, `socket`, ...)
//!   changed, so the backend is closed and opened again. Compared as the backend opens
//!   (`Backend::opened_form`), not as spelled, since a reopen drops the port's frames and
//!   kernel state: an option left out or written at its default is no change (`type` left
//!   out and `type: ring`, `afpacket:eth1` and `afpacket:eth1,ring`, an afxdp port's `queues`
//!   left out and `queues: 1`, an `iface` left out and the port's name, a DPDK port's
//!   `03:00.0` and `0000:03:00.0`);
//! - **updated**: a tunnel port on the same transport (`TunnelBackend::same_transport`) whose
//!   flood list, static remote MACs or learning (or an uplink's `routes`) changed: the backend
//!   stays open and takes the change in place (`PortBackend::update`; a backend that refuses
//!   is reopened instead), L2 settings as for a changed port. What is compared is what the
//!   port holds (`TunnelBackend::opened_form`), so a tunnel port only respelled is not
//!   updated but changed or unchanged: its `dstport` or `underlay: kernel` written out or left
//!   out, `learn: true` written out, an uplink spelled another way (`eth1`,
//!   `afpacket:eth1,ring`), its flood list in another order or with an address twice, its
//!   remote MACs, or its routes of different prefix lengths, in another order;
//! - **changed**: only L2 settings changed (bridge, VLAN mode, tag, trunks, allowed/static MACs,
//!   MAC limit): the same backend object stays, only a new snapshot is published;
//! - **unchanged**: keeps the same backend object (the same `Arc`), so it loses no frame.
//!
//! and ports that run but are no longer wanted are **removed**.

use std::collections::BTreeMap;
use switchyard_dataplane::backend::Backend;
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, VlanModeName};

/// What to do with each port, by name (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// L2 settings (or the bridge) changed; same backend.
    pub changed: Vec<String>,
    /// Backend type or options changed: close, then open again.
    pub reopened: Vec<String>,
    /// A tunnel port's remote table changed: updated in place, same backend.
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// Bridges whose own settings (aging, table size) changed, were added or removed.
    pub bridges_changed: Vec<String>,
}

impl Diff {
    /// Whether anything differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.reopened.is_empty()
            && self.updated.is_empty()
            && self.bridges_changed.is_empty()
    }
}

/// Whether two ports have the same backend: the same type and the same type options,
/// compared as the backend opens (`PortConfig::opened_backend`), not as spelled: every option
/// of the type counts, an option left out is its default (`type` left out is `type: ring`,
/// `afpacket:eth1` is `afpacket:eth1,ring`, an afxdp port's `queues` left out is 1, an
/// `iface` left out is the port's name, a tunnel's `dstport` left out is the encapsulation's),
/// a DPDK port's PCI device is one however written, and a tunnel's remote table is compared
/// as the port holds it (`TunnelBackend::opened_form`). The opened form names the type, so
/// `type` itself is not compared as spelled. Ports whose backend does not convert (which the
/// configuration check refuses) are compared as spelled.
fn same_backend(a: &PortConfig, b: &PortConfig) -> bool {
    match (a.opened_backend(), b.opened_backend()) {
        (Ok(x), Ok(y)) => x == y,
        (x, y) => a.kind == b.kind && x == y,
    }
}

/// Whether two ports with different backends are tunnel ports on one transport, so that the
/// running one can take the other's remote table in place.
fn updatable_in_place(a: &PortConfig, b: &PortConfig) -> bool {
    match (a.backend(), b.backend()) {
        (Ok(Backend::Tunnel(x)), Ok(Backend::Tunnel(y))) => x.same_transport(&y),
        _ => false,
    }
}

/// Whether the L2 part of two ports' configurations (everything that is not the backend's)
/// is the same. Compared field by field, without copying: a reconcile compares every port.
fn same_l2(a: &PortConfig, b: &PortConfig) -> bool {
    a.name == b.name
        && a.vlan_mode == b.vlan_mode
        && a.tag == b.tag
        && a.trunks == b.trunks
        && a.allowed_macs == b.allowed_macs
        && a.static_macs == b.static_macs
        && a.mac_limit == b.mac_limit
        && a.allowed_ips == b.allowed_ips
        && a.policy == b.policy
}

impl Diff {
    /// Files port `name` under what happened to it, from its (bridge, configuration) before
    /// and after (`None`: not there).
    pub fn note(&mut self, name: &str, old: Option<(&str, &PortConfig)>, new: Option<(&str, &PortConfig)>) {
        let list = match (old, new) {
            (None, None) => return,
            (None, Some(_)) => &mut self.added,
            (Some(_), None) => &mut self.removed,
            // The usual case first, without building the typed backends.
            (Some((ob, op)), Some((nb, np))) if ob == nb && op == np => &mut self.unchanged,
            (Some((_, op)), Some((_, np))) if !same_backend(op, np) && updatable_in_place(op, np) => {
                &mut self.updated
            }
            (Some((_, op)), Some((_, np))) if !same_backend(op, np) => &mut self.reopened,
            (Some((ob, op)), Some((nb, np))) if ob != nb || !same_l2(op, np) => &mut self.changed,
            _ => &mut self.unchanged,
        };
        list.push(name.to_string());
    }
}

/// Ports by name, with their bridge.
pub fn ports_by_name(c: &Config) -> BTreeMap<&str, (&BridgeConfig, &PortConfig)> {
    c.bridges.iter().flat_map(|b| b.ports.iter().map(move |p| (p.name.as_str(), (b, p)))).collect()
}

/// Compares the running configuration with the wanted one.
pub fn diff(running: &Config, wanted: &Config) -> Diff {
    let old = ports_by_name(running);
    let new = ports_by_name(wanted);
    let mut d = Diff::default();
    for (name, (nb, np)) in &new {
        let old = old.get(name).map(|(ob, op)| (ob.name.as_str(), *op));
        d.note(name, old, Some((nb.name.as_str(), np)));
    }
    d.removed = old.keys().filter(|n| !new.contains_key(*n)).map(|n| n.to_string()).collect();
    let settings = |b: &BridgeConfig| (b.mac_aging_s, b.mac_table_size, b.conntrack_size);
    for b in &wanted.bridges {
        match running.bridges.iter().find(|o| o.name == b.name) {
            Some(o) if settings(o) == settings(b) => {}
            _ => d.bridges_changed.push(b.name.clone()),
        }
    }
    for o in &running.bridges {
        if !wanted.bridges.iter().any(|b| b.name == o.name) {
            d.bridges_changed.push(o.name.clone());
        }
    }
    d.bridges_changed.sort();
    d
}

/// A port's VLAN settings in words: `access VLAN 100`, `trunk (all VLANs)`,
/// `native-untagged VLAN 1, trunks 100-110,200`.
pub fn describe_vlan(p: &PortConfig) -> String {
    let trunks = match p.trunks.as_deref() {
        None | Some([]) => "all VLANs".to_string(),
        Some(t) => format!("VLANs {}", ranges(t)),
    };
    let tag = p.tag.unwrap_or(0);
    match p.effective_vlan_mode() {
        VlanModeName::Access => format!("access VLAN {tag}"),
        VlanModeName::Trunk => format!("trunk ({trunks})"),
        VlanModeName::NativeTagged => format!("native-tagged VLAN {tag}, trunk ({trunks})"),
        VlanModeName::NativeUntagged => format!("native-untagged VLAN {tag}, trunk ({trunks})"),
    }
}

/// `[1,2,3,5]` as `1-3,5`.
pub fn ranges(v: &[u16]) -> String {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// A port's backend in words: `afpacket iface eth1`, `ring`, `vhostuser socket /x.sock`.
pub fn describe_backend(p: &PortConfig) -> String {
    use std::fmt::Write;
    let mut s = p.kind.map_or("ring", |k| k.name()).to_string();
    let opts: [(&str, Option<&dyn std::fmt::Display>); 10] = [
        ("iface", p.iface.as_ref().map(|v| v as _)),
        ("ring", p.ring.as_ref().map(|v| v as _)),
        ("socket", p.socket.as_ref().map(|v| v as _)),
        ("mode", p.mode.as_ref().map(|v| v as _)),
        ("rx_pcap", p.rx_pcap.as_ref().map(|v| v as _)),
        ("tx_pcap", p.tx_pcap.as_ref().map(|v| v as _)),
        ("queues", p.queues.as_ref().map(|v| v as _)),
        ("devargs", p.devargs.as_ref().map(|v| v as _)),
        ("vni", p.vni.as_ref().map(|v| v as _)),
        ("local", p.local.as_ref().map(|v| v as _)),
    ];
    for (k, v) in opts {
        if let Some(v) = v {
            let _ = write!(s, " {k} {v}");
        }
    }
    s
}

/// A tunnel port's remote table in words: `flood [192.0.2.2], 1 remote MAC(s), learning off`.
pub fn describe_remotes(p: &PortConfig) -> String {
    let flood: Vec<String> = p.flood.iter().flatten().map(|ip| ip.to_string()).collect();
    format!(
        "flood [{}], {} remote MAC(s), learning {}",
        flood.join(", "),
        p.remote_macs.len(),
        if p.learn.unwrap_or(true) { "on" } else { "off" }
    )
}

/// What differs in the L2 settings of a port, in words (for the log).
pub fn describe_l2_change(ob: &str, op: &PortConfig, nb: &str, np: &PortConfig) -> String {
    let mut parts = Vec::new();
    if ob != nb {
        parts.push(format!("bridge {ob} -> {nb}"));
    }
    let (ov, nv) = (describe_vlan(op), describe_vlan(np));
    if ov != nv {
        parts.push(format!("{ov} -> {nv}"));
    }
    let macs = |m: &Option<Vec<_>>| match m {
        None => "none".to_string(),
        Some(v) => format!("{v:?}"),
    };
    if op.allowed_macs != np.allowed_macs {
        parts.push(format!("allowed_macs {} -> {}", macs(&op.allowed_macs), macs(&np.allowed_macs)));
    }
    if op.static_macs != np.static_macs {
        parts.push(format!("static_macs {:?} -> {:?}", op.static_macs, np.static_macs));
    }
    if op.mac_limit != np.mac_limit {
        parts.push(format!("mac_limit {:?} -> {:?}", op.mac_limit, np.mac_limit));
    }
    if op.allowed_ips != np.allowed_ips {
        parts.push(format!("allowed_ips {:?} -> {:?}", op.allowed_ips, np.allowed_ips));
    }
    if op.policy != np.policy {
        let rules = |p: &Option<switchyard_dataplane::policy::PortPolicy>| match p {
            None => "none".to_string(),
            Some(p) => {
                let n = |d: &Option<switchyard_dataplane::policy::DirectionPolicy>| {
                    d.as_ref().map_or("open".to_string(), |d| format!("{} rules", d.rules.len()))
                };
                format!("ingress {}, egress {}", n(&p.ingress), n(&p.egress))
            }
        };
        parts.push(format!("policy {} -> {}", rules(&op.policy), rules(&np.policy)));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dataplane::config::{AfPacketRxMode, PortType};

    fn port(name: &str, tag: Option<u16>) -> PortConfig {
        PortConfig { name: name.into(), kind: Some(PortType::Ring), tag, ..Default::default() }
    }

    fn cfg(bridges: &[(&str, Vec<PortConfig>)]) -> Config {
        Config {
            bridges: bridges
                .iter()
                .map(|(n, p)| BridgeConfig {
                    name: n.to_string(),
                    mac_aging_s: None,
                    mac_table_size: None,
                    conntrack_size: None,
                    ports: p.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn classifies_every_port() {
        let old = cfg(&[(
            "br1",
            vec![port("a", Some(10)), port("b", None), port("c", None), port("d", None), port("m", None)],
        )]);
        let mut reopened = port("d", None);
        reopened.ring = Some("other".into());
        let new = cfg(&[
            ("br1", vec![port("a", Some(20)), port("b", None), reopened, port("e", None)]),
            ("br2", vec![port("m", None)]),
        ]);
        let d = diff(&old, &new);
        assert_eq!(d.added, ["e"]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!(d.changed, ["a", "m"]);
        assert_eq!(d.reopened, ["d"]);
        assert_eq!(d.unchanged, ["b"]);
        assert_eq!(d.bridges_changed, ["br2"]);
        assert!(!d.is_empty());
        let same = diff(&new, &new);
        assert!(same.is_empty(), "{same:?}");
        assert_eq!(same.unchanged.len(), 5);
    }

    #[test]
    fn every_type_option_reopens_the_backend() {
        let afp = |rx_mode| PortConfig {
            name: "u".into(),
            kind: Some(PortType::Afpacket),
            iface: Some("eth1".into()),
            rx_mode,
            ..Default::default()
        };
        let old = cfg(&[("br1", vec![afp(None)])]);
        let new = cfg(&[("br1", vec![afp(Some(AfPacketRxMode::Recvmmsg))])]);
        assert_eq!(diff(&old, &new).reopened, ["u"]);
        let vhost = |socket_mode: &str| PortConfig {
            name: "v".into(),
            kind: Some(PortType::Vhostuser),
            socket: Some("/s".into()),
            socket_mode: Some(socket_mode.into()),
            ..Default::default()
        };
        let old = cfg(&[("br1", vec![vhost("0600")])]);
        let new = cfg(&[("br1", vec![vhost("0660")])]);
        assert_eq!(diff(&old, &new).reopened, ["v"]);
        assert!(diff(&new, &new).is_empty());
    }

    /// A switch file reloaded with a port's backend respelled (a default written out or left
    /// out, in YAML or JSON) does not reopen the port; a real change of its backend does.
    #[test]
    fn a_respelled_backend_is_not_reopened_a_changed_one_is() {
        let file = |a: &str, b: &str, c: &str, d: &str| {
            let text = format!(
                "bridges:\n- name: br1\n  ports:\n\
                 \x20 - {{name: a, type: afpacket, iface: eth1{a}}}\n\
                 \x20 - {{name: b, type: afxdp, iface: eth2{b}}}\n\
                 \x20 - {{name: eth3, type: afpacket{c}}}\n\
                 \x20 - {{name: d, type: dpdk, {d}}}\n"
            );
            Config::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        let old = file("", "", "", "devargs: \"03:00.0\"");
        let respelled = file(", rx_mode: ring", ", queues: 1", ", iface: eth3", "devargs: \"0000:03:00.0\"");
        // The JSON form of the switch file, with the defaults written out on the other ports.
        let json = Config::from_yaml_str(
            r#"{"bridges": [{"name": "br1", "ports": [
                {"name": "a", "type": "afpacket", "iface": "eth1", "rx_mode": "ring"},
                {"name": "b", "type": "afxdp", "iface": "eth2", "queues": 1},
                {"name": "eth3", "type": "afpacket", "rx_mode": "ring"},
                {"name": "d", "type": "dpdk", "devargs": "0:3:0.0"}]}]}"#,
        )
        .unwrap();
        let all = ["a", "b", "d", "eth3"];
        for (what, x, y) in
            [("respelled", &old, &respelled), ("back", &respelled, &old), ("JSON", &old, &json)]
        {
            assert_ne!(x, y, "{what}: the files differ");
            let d = diff(x, y);
            assert_eq!(d.unchanged, all, "{what}: {d:?}");
            assert!(d.reopened.is_empty() && d.is_empty(), "{what}: {d:?}");
        }
        // Another receive mode, queue count, interface or device is a change: reopened, from
        // either spelling.
        let changed =
            file(", rx_mode: recvmmsg", ", queues: 2", ", iface: eth4", "devargs: \"0000:03:00.1\"");
        for (what, x) in [("unspelled", &old), ("respelled", &respelled), ("JSON", &json)] {
            let d = diff(x, &changed);
            assert_eq!(d.reopened, all, "{what}: {d:?}");
            assert!(d.unchanged.is_empty(), "{what}: {d:?}");
        }
        // One at a time: each port's change reopens that port alone.
        for (i, f) in [
            file(", rx_mode: recvmmsg", "", "", "devargs: \"03:00.0\""),
            file("", ", queues: 2", "", "devargs: \"03:00.0\""),
            file("", "", ", iface: eth4", "devargs: \"03:00.0\""),
            file("", "", "", "devargs: \"03:00.1\""),
        ]
        .iter()
        .enumerate()
        {
            let name = ["a", "b", "eth3", "d"][i];
            assert_eq!(diff(&respelled, f).reopened, [name], "{f:?}");
        }
    }

    #[test]
    fn a_tunnels_remote_table_is_updated_in_place_its_transport_reopens() {
        use switchyard_dataplane::config::RemoteMac;
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let tun = |f: &dyn Fn(&mut PortConfig)| {
            let mut p = PortConfig {
                name: "t".into(),
                kind: Some(PortType::Vxlan),
                vni: Some(5001),
                local: Some(ip("192.0.2.1")),
                flood: Some(vec![ip("192.0.2.2")]),
                ..Default::default()
            };
            f(&mut p);
            cfg(&[("br1", vec![p])])
        };
        let old = tun(&|_| {});
        let updates: [&dyn Fn(&mut PortConfig); 3] = [
            &|p| p.flood = Some(vec![ip("192.0.2.3")]),
            &|p| {
                p.remote_macs =
                    vec![RemoteMac { mac: "02:00:00:00:0b:01".parse().unwrap(), remote: ip("192.0.2.2") }]
            },
            &|p| p.learn = Some(false),
        ];
        for f in updates {
            let d = diff(&old, &tun(f));
            assert_eq!((d.updated.as_slice(), d.reopened.len()), (&["t".to_string()][..], 0), "{d:?}");
            assert!(!d.is_empty());
        }
        let reopens: [&dyn Fn(&mut PortConfig); 5] = [
            &|p| p.vni = Some(5002),
            &|p| p.local = Some(ip("192.0.2.9")),
            &|p| p.dstport = Some(4790),
            &|p| p.underlay = Some("eth1".into()),
            &|p| p.kind = Some(PortType::Geneve),
        ];
        for f in reopens {
            let d = diff(&old, &tun(f));
            assert_eq!((d.reopened.as_slice(), d.updated.len()), (&["t".to_string()][..], 0), "{d:?}");
        }
        // The default port and an explicit 4789 are one transport, as are no underlay and
        // `kernel`: written differently, nothing to do.
        assert_eq!(diff(&old, &tun(&|p| p.dstport = Some(4789))).unchanged, ["t"]);
        assert_eq!(diff(&old, &tun(&|p| p.underlay = Some("kernel".into()))).unchanged, ["t"]);
        // One uplink spelled another way (the default queue count or receive mode written
        // out, or left out) is the same uplink, in either direction: the port is unchanged,
        // and with a new flood list taken in place. Another queue count or receive mode
        // reopens the port.
        let on = |u: &'static str| tun(&move |p| p.underlay = Some(u.into()));
        let on_with_flood = |u: &'static str| {
            tun(&move |p| {
                p.underlay = Some(u.into());
                p.flood = Some(vec![ip("192.0.2.3")]);
            })
        };
        for (a, b) in [
            ("afxdp:eth1", "afxdp:eth1,queues=1"),
            ("afxdp:eth1,queues=1", "afxdp:eth1"),
            ("eth1", "afpacket:eth1,ring"),
            ("afpacket:eth1", "eth1"),
        ] {
            let d = diff(&on(a), &on(b));
            assert_eq!(d.unchanged, ["t"], "{a} -> {b}: {d:?}");
            assert!(d.is_empty(), "{a} -> {b}: {d:?}");
            let d = diff(&on(a), &on_with_flood(b));
            assert_eq!(
                (d.updated.as_slice(), d.reopened.len()),
                (&["t".to_string()][..], 0),
                "{a} -> {b}: {d:?}"
            );
        }
        for (a, b) in
            [("afxdp:eth1", "afxdp:eth1,queues=2"), ("afpacket:eth1,ring", "afpacket:eth1,recvmmsg")]
        {
            let d = diff(&on(a), &on(b));
            assert_eq!(
                (d.reopened.as_slice(), d.updated.len()),
                (&["t".to_string()][..], 0),
                "{a} -> {b}: {d:?}"
            );
        }
    }

    /// A port without `type` is a ring port: `type: ring` (and its ring named like the port)
    /// written out or left out is the same backend, unchanged, or changed when its L2
    /// settings change too; another ring or type reopens it.
    #[test]
    fn a_port_without_type_is_the_same_ring_port() {
        let file = |ports: &str| {
            let text = format!("bridges:\n- name: br1\n  ports:\n{ports}");
            Config::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        let bare = file("  - {name: r, tag: 10}\n");
        let spelled = [
            file("  - {name: r, type: ring, tag: 10}\n"),
            file("  - {name: r, type: ring, ring: r, tag: 10}\n"),
            Config::from_yaml_str(
                r#"{"bridges": [{"name": "br1", "ports": [{"name": "r", "type": "ring", "tag": 10}]}]}"#,
            )
            .unwrap(),
        ];
        for s in &spelled {
            assert_ne!(&bare, s, "the files differ");
            for (x, y) in [(&bare, s), (s, &bare)] {
                let d = diff(x, y);
                assert_eq!(d.unchanged, ["r"], "{d:?}");
                assert!(d.is_empty(), "{d:?}");
            }
        }
        // An L2 change with the type respelled: changed, the backend kept.
        let d = diff(&bare, &file("  - {name: r, type: ring, tag: 20}\n"));
        assert_eq!((d.changed.as_slice(), d.reopened.len()), (&["r".to_string()][..], 0), "{d:?}");
        let d = diff(&file("  - {name: r, type: ring, ring: r, tag: 20}\n"), &bare);
        assert_eq!((d.changed.as_slice(), d.reopened.len()), (&["r".to_string()][..], 0), "{d:?}");
        // Another ring, or another type: reopened.
        for other in ["  - {name: r, type: ring, ring: r2, tag: 10}\n", "  - {name: r, type: tap, tag: 10}\n"]
        {
            let d = diff(&bare, &file(other));
            assert_eq!(d.reopened, ["r"], "{other}: {d:?}");
        }
    }

    /// A tunnel port only respelled (defaults written out, its flood list, remote MACs and
    /// routes in another order the table does not depend on, its uplink spelled another way) is
    /// unchanged, or changed with an L2 change: nothing is handed to the running port. A change
    /// of what it holds -- the flood list, a remote MAC, learning, a route -- is updated.
    #[test]
    fn a_respelled_tunnel_is_unchanged_a_changed_remote_table_is_updated() {
        let file = |extra: &str, tag: u16| {
            let text = format!(
                "bridges:\n- name: br1\n  ports:\n\
                 \x20 - {{name: t, type: vxlan, vni: 5001, local: 192.0.2.1, tag: {tag}{extra}}}\n\
                 \x20 - {{name: u, type: geneve, vni: 7, local: 192.0.2.1, underlay: eth1, \
                 routes: [{{dst: 10.0.0.0/8, via: 192.0.2.9}}, {{dst: 10.1.0.0/16, via: 192.0.2.8}}]}}\n"
            );
            Config::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        let table = ", flood: [192.0.2.2, 192.0.2.3], \
                     remote_macs: [{mac: \"02:00:00:00:0b:01\", remote: 192.0.2.2}, \
                     {mac: \"02:00:00:00:0b:02\", remote: 192.0.2.3}]";
        let old = file(table, 10);
        let respelled_table = ", flood: [192.0.2.3, 192.0.2.2, 192.0.2.3], \
                     remote_macs: [{mac: \"02:00:00:00:0b:02\", remote: 192.0.2.3}, \
                     {mac: \"02:00:00:00:0b:01\", remote: 192.0.2.2}], \
                     learn: true, dstport: 4789, underlay: kernel";
        let mut respelled = file(respelled_table, 10);
        // The uplink port: its underlay with the default receive mode written out, its routes
        // of two lengths in the other order.
        let u = &mut respelled.bridges[0].ports[1];
        u.underlay = Some("afpacket:eth1,ring".into());
        u.routes.reverse();
        assert_ne!(old, respelled);
        for (what, x, y) in [("respelled", &old, &respelled), ("back", &respelled, &old)] {
            let d = diff(x, y);
            assert_eq!(d.unchanged, ["t", "u"], "{what}: {d:?}");
            assert!(d.is_empty(), "{what}: {d:?}");
        }
        // Respelled with an L2 change: changed, not updated.
        let d = diff(&old, &file(respelled_table, 20));
        assert_eq!((d.changed.as_slice(), d.updated.len()), (&["t".to_string()][..], 0), "{d:?}");
        // What the port holds changed: updated in place, from either spelling.
        for change in [
            ", flood: [192.0.2.2], remote_macs: [{mac: \"02:00:00:00:0b:01\", remote: 192.0.2.2}]",
            ", flood: [192.0.2.2, 192.0.2.3, 192.0.2.4], \
               remote_macs: [{mac: \"02:00:00:00:0b:01\", remote: 192.0.2.2}]",
            ", flood: [192.0.2.2, 192.0.2.3], \
               remote_macs: [{mac: \"02:00:00:00:0b:01\", remote: 192.0.2.3}, \
               {mac: \"02:00:00:00:0b:02\", remote: 192.0.2.3}]",
        ] {
            for (what, x) in [("unspelled", &old), ("respelled", &respelled)] {
                let d = diff(x, &file(change, 10));
                assert_eq!(d.updated, ["t"], "{what} -> {change}: {d:?}");
                assert_eq!(d.unchanged, ["u"], "{what} -> {change}: {d:?}");
            }
        }
        let d = diff(&respelled, &file(&format!("{table}, learn: false"), 10));
        assert_eq!(d.updated, ["t"], "{d:?}");
        let mut rerouted = old.clone();
        rerouted.bridges[0].ports[1].routes[0].via = "192.0.2.7".parse().unwrap();
        let d = diff(&respelled, &rerouted);
        assert_eq!(
            (d.updated.as_slice(), d.unchanged.as_slice()),
            (&["u".to_string()][..], &["t".to_string()][..])
        );
    }

    #[test]
    fn words() {
        assert_eq!(ranges(&[200, 100, 101, 102, 5]), "5,100-102,200");
        assert_eq!(describe_vlan(&port("a", Some(100))), "access VLAN 100");
        assert_eq!(describe_vlan(&port("a", None)), "trunk (all VLANs)");
        let mut p = port("a", Some(1));
        p.vlan_mode = Some(VlanModeName::NativeUntagged);
        p.trunks = Some(vec![100, 101, 200]);
        assert_eq!(describe_vlan(&p), "native-untagged VLAN 1, trunk (VLANs 100-101,200)");
        p.iface = None;
        assert_eq!(describe_backend(&p), "ring");
    }
}
