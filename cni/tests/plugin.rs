//! switchyard-cni against real components: a `switchyard run` daemon, network namespaces as
//! pods, libcni (the runtime library of Multus, containerd and CRI-O) for ADD, CHECK and DEL,
//! the spec's environment variables and stdin for STATUS and GC (as a CNI 1.1 runtime runs
//! them; Debian's libcni predates them), and Debian's host-local IPAM plugin.
//!
//! Needs root, `ip`, Go and libcni's source, and the IPAM plugins (scripts/setup.sh installs
//! them); skips with a message elsewhere.

mod common;
#[path = "../../ports/tests/kports_common/mod.rs"]
mod kports_common;
#[path = "../../tests/traffic/mod.rs"]
mod traffic;

use common::{host_link_exists, tcp_reachable, wait_until, Node, Pod};
use kports_common::{skip, RawSock};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use switchyard_cni::attach::host_ifname_of;
use switchyard_control::cni::attachment_key;

macro_rules! need_env {
    ($name:literal) => {
        if let Some(why) = common::skip_reason() {
            return skip($name, &why);
        }
    };
}

/// The host end the plugin gives `pod`'s `ifname`.
fn host_end(pod: &Pod, ifname: &str) -> String {
    host_ifname_of(&attachment_key(&pod.id, ifname))
}

/// The interface of `result` named `name`.
fn iface<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no interface {name} in {result}"))
}

#[test]
fn vlan_10_pods_reach_each_other_a_vlan_20_pod_does_not_and_spoofing_is_dropped() {
    need_env!("vlan_10_pods_reach_each_other_a_vlan_20_pod_does_not_and_spoofing_is_dropped");
    let node = Node::start();
    // One IP subnet on both VLANs: only the switch's VLAN separation keeps C from A and B.
    let v10 = node.conf(
        "1.0.0",
        "v10",
        json!({"vlan": 10, "macspoofchk": true,
               "ipam": node.host_local("v10", "10.210.0.0/24", "10.210.0.10", "10.210.0.19")}),
    );
    let v20 = node.conf(
        "1.0.0",
        "v20",
        json!({"vlan": 20, "ipam": node.host_local("v20", "10.210.0.0/24", "10.210.0.20", "10.210.0.29")}),
    );
    let (a, b, c) = (Pod::new("a"), Pod::new("b"), Pod::new("c"));
    let ra = node.libcni("add", &v10, &a, "net1", json!({})).ok();
    node.libcni("add", &v10, &b, "net1", json!({})).ok();
    node.libcni("add", &v20, &c, "net1", json!({})).ok();

    // The result as the bridge plugin's: host end, container end in its sandbox, the IP on it.
    let host = host_end(&a, "net1");
    assert!(iface(&ra, &host)["sandbox"].is_null(), "{ra}");
    let cont = iface(&ra, "net1");
    assert_eq!(cont["sandbox"], a.path.as_str(), "{ra}");
    let ip0 = &ra["ips"][0];
    assert_eq!(ra["interfaces"][ip0["interface"].as_u64().unwrap() as usize]["name"], "net1", "{ra}");
    let a_ip = a.ipv4("net1");
    assert_eq!(ip0["address"], format!("{a_ip}/24"));
    assert!(host_link_exists(&host));

    // The daemon has the three ports with the config's VLANs; v10 asks for `macspoofchk`: the
    // pods' MACs as allowed. v20 does not (the default, false as in the bridge plugin): no filter.
    let ports = node.cni_ports();
    assert_eq!(node.cni_port_names(), [a.port("net1"), b.port("net1"), c.port("net1")]);
    let pa = ports.iter().find(|p| p["port"]["name"] == a.port("net1").as_str()).unwrap();
    assert_eq!(pa["port"]["tag"], 10, "{pa}");
    assert_eq!(pa["port"]["iface"], host.as_str(), "{pa}");
    assert_eq!(pa["port"]["allowed_macs"], json!([cont["mac"]]), "{pa}");
    let pc = ports.iter().find(|p| p["port"]["name"] == c.port("net1").as_str()).unwrap();
    assert!(pc["port"]["allowed_macs"].is_null(), "{pc}");

    let (b_ip, c_ip) = (b.ipv4("net1"), c.ipv4("net1"));
    assert!(tcp_reachable(&a, &b, &b_ip, Duration::from_secs(10)), "A cannot reach B in VLAN 10");
    assert!(tcp_reachable(&b, &a, &a_ip, Duration::from_secs(10)), "B cannot reach A in VLAN 10");
    assert!(!tcp_reachable(&a, &c, &c_ip, Duration::from_millis(1500)), "A reached C across VLANs");

    // A frame from A with a source MAC that is not A's: dropped at A's port, and counted.
    let spoofed = kports_common::frame([0xff; 6], [0x02, 0x66, 0, 0, 0, 1], &[], "spoof", 64);
    let raw = RawSock::open(Some(&a.ns), "net1").expect("raw socket in A");
    for _ in 0..3 {
        raw.send(&spoofed);
    }
    let port = a.port("net1");
    wait_until("three spoofed_src_mac drops on A's port", || {
        node.drops_of(&port).split_whitespace().any(|w| w == "spoofed_src_mac=3")
    });
}

#[test]
fn check_passes_after_add_and_fails_once_the_port_is_gone() {
    need_env!("check_passes_after_add_and_fails_once_the_port_is_gone");
    let node = Node::start();
    let conf = node.conf(
        "0.4.0",
        "chk",
        json!({"vlan": 30, "ipam": node.host_local("chk", "10.211.0.0/24", "10.211.0.10", "10.211.0.19")}),
    );
    let pod = Pod::new("chk");
    let r = node.libcni("add", &conf, &pod, "net1", json!({})).ok();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4", "a 0.4.0 result names the IP version: {r}");
    node.libcni("check", &conf, &pod, "net1", json!({})).ok();

    // CHECK against a config whose VLAN differs from the port's: refused, naming the VLANs.
    let other = node.conf("0.4.0", "chk", json!({"vlan": 31, "ipam": conf["ipam"].clone()}));
    node.libcni("check", &other, &pod, "net1", json!({}))
        .err(104, "access VLAN 30, the config says access VLAN 31");

    // The port removed behind the plugin's back.
    let gone = node
        .request(&json!({"v": 1, "op": "cni_del", "attachment": {"container_id": pod.id, "ifname": "net1"}}));
    assert_eq!(gone["removed"], json!([pod.port("net1")]), "{gone}");
    node.libcni("check", &conf, &pod, "net1", json!({})).err(104, "no port");
    node.libcni("del", &conf, &pod, "net1", json!({})).ok();
    assert!(!host_link_exists(&host_end(&pod, "net1")));
    assert!(node.leases("chk").is_empty(), "the IPAM lease stayed: {:?}", node.leases("chk"));
}

#[test]
fn del_is_idempotent_and_works_with_the_daemon_down() {
    need_env!("del_is_idempotent_and_works_with_the_daemon_down");
    let mut node = Node::start();
    let conf = node.conf("0.3.1", "del", json!({"vlan": 40}));
    let (a, b) = (Pod::new("a"), Pod::new("b"));
    let r = node.libcni("add", &conf, &a, "net1", json!({})).ok();
    assert_eq!(r["cniVersion"], "0.3.1");
    node.libcni("del", &conf, &a, "net1", json!({})).ok();
    node.libcni("del", &conf, &a, "net1", json!({})).ok();
    assert!(node.cni_port_names().is_empty());
    assert!(!host_link_exists(&host_end(&a, "net1")));
    assert!(a.links().is_empty(), "{:?}", a.links());

    node.libcni("add", &conf, &b, "net1", json!({})).ok();
    assert_eq!(node.cni_port_names(), [b.port("net1")]);
    node.stop_daemon();
    node.libcni("del", &conf, &b, "net1", json!({})).ok();
    assert!(!host_link_exists(&host_end(&b, "net1")), "DEL left the veth with the daemon down");
    let key = attachment_key(&b.id, "net1");
    assert_eq!(node.state_files(), [format!("{key}.del"), format!("{key}.json")]);
    // DEL again while it is still down: still fine, still one tombstone.
    node.libcni("del", &conf, &b, "net1", json!({})).ok();
    node.start_daemon();
    assert!(node.cni_port_names().is_empty(), "the tombstone was not applied: {:?}", node.cni_port_names());
    assert!(node.state_files().is_empty(), "{:?}", node.state_files());
    assert!(node.ctl(&["show", "ports"]).lines().count() <= 1, "{}", node.ctl(&["show", "ports"]));
}

/// DEL succeeds where it can: with the daemon answering, a `stateDir` the plugin cannot
/// create or write (read-only, full) costs DEL the attachment's lock, not the delete (it used to
/// fail with error 5 on every retry, and the pod never finished terminating).
#[test]
fn del_with_an_unwritable_state_dir_still_detaches() {
    need_env!("del_with_an_unwritable_state_dir_still_detaches");
    let node = Node::start();
    let conf = node.conf("0.3.1", "delro", json!({"vlan": 42}));
    let pod = Pod::new("delro");
    node.libcni("add", &conf, &pod, "net1", json!({})).ok();
    assert_eq!(node.cni_port_names(), [pod.port("net1")]);
    let mut ro = conf.clone();
    ro["stateDir"] = json!("/proc/switchyard-no-such-dir");
    node.libcni("del", &ro, &pod, "net1", json!({})).ok();
    assert!(node.cni_port_names().is_empty(), "{:?}", node.cni_port_names());
    assert!(!host_link_exists(&host_end(&pod, "net1")));
}

/// `cniVersion` 0.3.0, as in Multus's examples and many NADs written for the Go plugins:
/// attached and detached through libcni, the result in 0.3.0's format.
#[test]
fn a_0_3_0_config_attaches_and_detaches_through_libcni() {
    need_env!("a_0_3_0_config_attaches_and_detaches_through_libcni");
    let node = Node::start();
    let conf = node.conf(
        "0.3.0",
        "v030",
        json!({"vlan": 41, "ipam": node.host_local("v030", "10.220.0.0/24", "10.220.0.10", "10.220.0.19")}),
    );
    let pod = Pod::new("v030");
    let r = node.libcni("add", &conf, &pod, "net1", json!({})).ok();
    assert_eq!(r["cniVersion"], "0.3.0", "{r}");
    assert_eq!(r["ips"][0]["version"], "4", "a 0.3.0 result names the IP version: {r}");
    assert_eq!(node.cni_port_names(), [pod.port("net1")]);
    assert_eq!(pod.links(), ["net1"]);
    node.libcni("del", &conf, &pod, "net1", json!({})).ok();
    assert!(node.cni_port_names().is_empty());
    assert!(!host_link_exists(&host_end(&pod, "net1")));
    assert!(node.leases("v030").is_empty(), "{:?}", node.leases("v030"));
}

/// host-local's routes as the Multus examples write them: a route without `gw` goes through
/// the gateway of the address (host-local's default, the subnet's `.1`), one with `gw` through
/// its own; neither is on-link.
#[test]
fn routes_without_gw_go_through_the_ipam_gateway() {
    need_env!("routes_without_gw_go_through_the_ipam_gateway");
    let node = Node::start();
    let mut ipam = node.host_local("gw", "10.222.0.0/24", "10.222.0.10", "10.222.0.19");
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.222.0.254"}]);
    let conf = node.conf("1.0.0", "gw", json!({"vlan": 42, "ipam": ipam}));
    let pod = Pod::new("gw");
    let r = node.libcni("add", &conf, &pod, "net1", json!({})).ok();
    assert_eq!(r["ips"][0]["gateway"], "10.222.0.1", "{r}");
    let o = std::process::Command::new("ip").args(["-n", &pod.ns, "-4", "route", "show"]).output().unwrap();
    let routes = String::from_utf8_lossy(&o.stdout).into_owned();
    let has = |prefix: &str| routes.lines().any(|l| l.starts_with(prefix));
    assert!(has("default via 10.222.0.1 dev net1"), "{routes}");
    assert!(has("192.0.2.0/24 via 10.222.0.254 dev net1"), "{routes}");
    node.libcni("check", &conf, &pod, "net1", json!({})).ok();
    node.libcni("del", &conf, &pod, "net1", json!({})).ok();
}

/// A 1.1.0 IPAM result's route attributes are applied: `table` (one that fits the header and
/// one that does not), `scope`, `mtu` and `advmss`, `priority`.
#[test]
fn the_route_attributes_of_1_1_0_are_applied() {
    need_env!("the_route_attributes_of_1_1_0_are_applied");
    use std::os::unix::fs::PermissionsExt;
    let node = Node::start();
    let result = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.223.0.5/24", "gateway": "10.223.0.1"}],
        "routes": [
            {"dst": "198.51.100.0/24", "table": 100},
            {"dst": "198.51.101.0/24", "gw": "10.223.0.2", "table": 1000, "priority": 7},
            {"dst": "203.0.113.0/24", "scope": 253},
            {"dst": "192.0.2.0/24", "mtu": 1400, "advmss": 1360}]});
    let p = node.cni_bin.join("routes-ipam");
    std::fs::write(
        &p,
        format!("#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && echo '{result}'\nexit 0\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = node.conf("1.1.0", "rattr", json!({"ipam": {"type": "routes-ipam"}}));
    let pod = Pod::new("rattr");
    let r = node.plugin_for("ADD", &pod, "net1", &conf).ok();
    assert_eq!(r["routes"][1]["table"], 1000, "{r}");
    let show = |args: &[&str]| {
        let o =
            std::process::Command::new("ip").args(["-n", &pod.ns, "-4", "route", "show"]).args(args).output();
        String::from_utf8_lossy(&o.unwrap().stdout).into_owned()
    };
    let (t100, t1000, main) = (show(&["table", "100"]), show(&["table", "1000"]), show(&[]));
    assert!(t100.starts_with("198.51.100.0/24 via 10.223.0.1 dev net1"), "table 100: {t100}");
    assert!(
        t1000.starts_with("198.51.101.0/24 via 10.223.0.2 dev net1") && t1000.contains("metric 7"),
        "{t1000}"
    );
    assert!(!main.contains("198.51.10"), "a route of another table is in main: {main}");
    let link_scope = main.lines().find(|l| l.starts_with("203.0.113.0/24")).unwrap_or_default();
    assert!(link_scope.contains("scope link") && !link_scope.contains("via"), "{main}");
    let m = main.lines().find(|l| l.starts_with("192.0.2.0/24")).unwrap_or_default();
    assert!(m.contains("via 10.223.0.1") && m.contains("mtu 1400") && m.contains("advmss 1360"), "{main}");
    node.plugin_for("DEL", &pod, "net1", &conf).ok();
}

#[test]
fn gc_removes_only_its_networks_stale_attachments() {
    need_env!("gc_removes_only_its_networks_stale_attachments");
    let node = Node::start();
    let gc_a = node.conf("1.0.0", "gc-a", json!({"vlan": 50}));
    let gc_b = node.conf("1.0.0", "gc-b", json!({"vlan": 51}));
    let (p1, p2, p3) = (Pod::new("p1"), Pod::new("p2"), Pod::new("p3"));
    node.libcni("add", &gc_a, &p1, "net1", json!({})).ok();
    node.libcni("add", &gc_a, &p2, "net1", json!({})).ok();
    node.libcni("add", &gc_b, &p3, "net1", json!({})).ok();

    // The list as libcni 1.2.3 and later inject it: under the spec's name and the name spec
    // 1.1.0 was first published with.
    let mut gc = node.conf("1.1.0", "gc-a", json!({"vlan": 50}));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": p1.id, "ifname": "net1"}]);
    gc["cni.dev/attachments"] = gc["cni.dev/valid-attachments"].clone();
    node.plugin("GC", &[], gc.to_string().as_bytes()).ok();
    assert_eq!(node.cni_port_names(), [p1.port("net1"), p3.port("net1")]);
    assert!(!host_link_exists(&host_end(&p2, "net1")), "GC left p2's veth");
    assert!(host_link_exists(&host_end(&p1, "net1")) && host_link_exists(&host_end(&p3, "net1")));

    // Without the list GC refuses rather than guessing.
    let bare = node.conf("1.1.0", "gc-a", json!({}));
    node.plugin("GC", &[], bare.to_string().as_bytes()).err(7, "cni.dev/valid-attachments");
    assert_eq!(node.cni_port_names().len(), 2);
}

/// An IPAM plugin that logs each call (`VERB stdin`) and fails STATUS and GC while the file
/// `fail` exists next to its log; ADD hands out one IPv4 address (none while `fail` exists).
fn logging_ipam(node: &Node) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = node.dir.path().join("ipam.log");
    let fail = node.dir.path().join("fail");
    let script = format!(
        r#"#!/bin/sh
in=$(cat)
echo "$CNI_COMMAND $in" >> {log}
case "$CNI_COMMAND" in
ADD) [ -e {fail} ] && {{ echo '{{"cniVersion": "1.1.0", "ips": []}}'; exit 0; }}
    echo '{{"cniVersion": "1.1.0", "ips": [{{"address": "10.221.0.5/24"}}]}}' ;;
STATUS) [ -e {fail} ] && {{ echo '{{"cniVersion": "1.1.0", "code": 50, "msg": "pool exhausted"}}'; exit 1; }} ;;
GC) [ -e {fail} ] && {{ echo '{{"cniVersion": "1.1.0", "code": 5, "msg": "leases unreadable"}}'; exit 1; }} ;;
esac
exit 0
"#,
        log = log.display(),
        fail = fail.display()
    );
    let p = node.cni_bin.join("logging-ipam");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    (log, fail)
}

#[test]
fn status_gc_and_a_failed_add_are_passed_on_to_the_ipam_plugin() {
    need_env!("status_gc_and_a_failed_add_are_passed_on_to_the_ipam_plugin");
    let mut node = Node::start();
    let (log, fail) = logging_ipam(&node);
    let calls = |verb: &str| -> Vec<String> {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().filter(|l| l.split(' ').next() == Some(verb)).map(str::to_string).collect()
    };
    let conf = node.conf("1.1.0", "gcipam", json!({"mode": "vhostuser", "ipam": {"type": "logging-ipam"}}));
    let (p1, p2) = (Pod::new("gi1"), Pod::new("gi2"));
    node.plugin_for("ADD", &p1, "net1", &conf).ok();
    node.plugin_for("ADD", &p2, "net1", &conf).ok();

    node.plugin("STATUS", &[], conf.to_string().as_bytes()).ok();
    assert_eq!(calls("STATUS").len(), 1, "STATUS did not reach the IPAM plugin");
    std::fs::write(&fail, "").unwrap();
    node.plugin("STATUS", &[], conf.to_string().as_bytes()).err(50, "pool exhausted");

    // GC as libcni sends it; the IPAM plugin fails it, yet the stale port is removed and the
    // IPAM plugin got the list to release the stale leases from.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": p1.id, "ifname": "net1"}]);
    gc["cni.dev/attachments"] = gc["cni.dev/valid-attachments"].clone();
    node.plugin("GC", &[], gc.to_string().as_bytes()).err(5, "leases unreadable");
    assert_eq!(node.cni_port_names(), [p1.port("net1")]);
    let got = calls("GC");
    assert_eq!(got.len(), 1, "{got:?}");
    let sent: Value = serde_json::from_str(got[0].split_once(' ').unwrap().1).unwrap();
    assert_eq!(sent, gc, "the IPAM plugin did not get the configuration unchanged");
    // An ADD whose IPAM result is unusable (no address): refused, and the IPAM plugin's DEL
    // releases whatever it may hold.
    let p3 = Pod::new("gi3");
    node.plugin_for("ADD", &p3, "net1", &conf).err(103, "no IP addresses");
    let dels = calls("DEL");
    assert_eq!(dels.len(), 1, "the failed ADD did not release the IPAM plugin's lease: {dels:?}");
    std::fs::remove_file(&fail).unwrap();
    node.plugin("GC", &[], gc.to_string().as_bytes()).ok();
    assert_eq!(calls("GC").len(), 2);
    assert_eq!(node.cni_port_names(), [p1.port("net1")]);
    // With the daemon down the ports cannot be listed; the IPAM plugin still gets its GC.
    node.stop_daemon();
    node.plugin("GC", &[], gc.to_string().as_bytes()).err(11, "does not answer");
    assert_eq!(calls("GC").len(), 3, "a failed port listing stopped the GC");
}

#[test]
fn status_is_50_while_the_daemon_is_down() {
    need_env!("status_is_50_while_the_daemon_is_down");
    let mut node = Node::stopped();
    let conf = node.conf("1.1.0", "st", json!({}));
    let down = node.plugin("STATUS", &[], conf.to_string().as_bytes());
    assert_eq!(down.status, 50, "{down:?}");
    down.err(50, "does not answer");
    node.start_daemon();
    node.plugin("STATUS", &[], conf.to_string().as_bytes()).ok();
    node.stop_daemon();
    assert_eq!(node.plugin("STATUS", &[], conf.to_string().as_bytes()).status, 50);
}

#[test]
fn a_restarted_daemon_restores_ten_pods() {
    need_env!("a_restarted_daemon_restores_ten_pods");
    let mut node = Node::start();
    let conf = node.conf(
        "1.0.0",
        "ten",
        json!({"vlan": 60, "ipam": node.host_local("ten", "10.212.0.0/24", "10.212.0.10", "10.212.0.99")}),
    );
    let pods: Vec<Pod> = (0..10).map(|i| Pod::new(&format!("r{i}"))).collect();
    for p in &pods {
        node.libcni("add", &conf, p, "net1", json!({})).ok();
    }
    let ips: Vec<String> = pods.iter().map(|p| p.ipv4("net1")).collect();
    let want: BTreeSet<String> = pods.iter().map(|p| p.port("net1")).collect();
    node.stop_daemon();
    node.start_daemon();
    let names = node.cni_port_names();
    assert_eq!(names.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(names.len(), 10, "a port is duplicated: {names:?}");
    let shown = node.ctl(&["show", "ports"]);
    for n in &want {
        assert_eq!(shown.lines().filter(|l| l.split_whitespace().next() == Some(n)).count(), 1, "{shown}");
    }
    for i in 1..10 {
        assert!(
            tcp_reachable(&pods[0], &pods[i], &ips[i], Duration::from_secs(10)),
            "pod 0 cannot reach pod {i} after the restart; log:\n{}",
            node.daemon_log()
        );
    }
    for p in &pods {
        assert!(host_link_exists(&host_end(p, "net1")));
        assert_eq!(p.links(), ["net1"]);
    }
    for p in &pods {
        node.libcni("del", &conf, p, "net1", json!({})).ok();
        assert!(!host_link_exists(&host_end(p, "net1")), "veth of {} leaked", p.name);
    }
    assert!(node.cni_port_names().is_empty());
    assert!(node.leases("ten").is_empty(), "{:?}", node.leases("ten"));
}

#[test]
fn parallel_adds_and_dels_end_in_exactly_the_expected_ports() {
    need_env!("parallel_adds_and_dels_end_in_exactly_the_expected_ports");
    const N: usize = 120;
    const CHURN: usize = 80; // attachments 0..80 are added then deleted, 80..120 stay
    const PER_POD: usize = 30;
    let node = Node::start();
    // 1.0.0 for the veth network: Debian's host-local (1.1.1) refuses 1.1.0 configs.
    let veth = node.conf(
        "1.0.0",
        "par",
        json!({"vlan": 70, "ipam": node.host_local("par", "10.213.0.0/24", "10.213.0.2", "10.213.0.254")}),
    );
    let vhost = node.conf("1.1.0", "par-vh", json!({"mode": "vhostuser", "vlan": 70}));
    let pods: Vec<Pod> = (0..N.div_ceil(PER_POD)).map(|i| Pod::new(&format!("par{i}"))).collect();
    // Attachment i: pod i / PER_POD, interface n<i % PER_POD>, every fourth one vhost-user.
    let att = |i: usize| (&pods[i / PER_POD], format!("n{}", i % PER_POD), i % 4 == 3);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= N {
                    return;
                }
                let (pod, ifname, vh) = att(i);
                let conf = if vh { &vhost } else { &veth };
                let mut ops = vec!["ADD"];
                if i < CHURN {
                    ops.push("DEL");
                }
                for op in ops {
                    let r = node.plugin_for(op, pod, &ifname, conf);
                    if r.status != 0 {
                        failures.lock().unwrap().push(format!("{op} {i}: {r:?}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 200 operations failed, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    let kept = CHURN..N;
    let want: BTreeSet<String> = kept.clone().map(|i| att(i).0.port(&att(i).1)).collect();
    assert_eq!(node.cni_port_names().into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(node.cni_ports().len(), N - CHURN);
    // The daemon's state: one file per kept attachment, nothing else.
    let files: BTreeSet<String> = node.state_files().into_iter().collect();
    let want_files: BTreeSet<String> =
        kept.clone().map(|i| format!("{}.json", attachment_key(&att(i).0.id, &att(i).1))).collect();
    assert_eq!(files, want_files);
    // Veths: a host end exactly for the kept veth attachments, their peers in the pods.
    for i in 0..N {
        let (pod, ifname, vh) = att(i);
        let exists = host_link_exists(&host_end(pod, &ifname));
        assert_eq!(exists, !vh && i >= CHURN, "attachment {i}: host end exists = {exists}");
    }
    for (k, pod) in pods.iter().enumerate() {
        let got: BTreeSet<String> = pod.links().into_iter().collect();
        let want: BTreeSet<String> = (k * PER_POD..((k + 1) * PER_POD).min(N))
            .filter(|&i| i >= CHURN && !att(i).2)
            .map(|i| att(i).1)
            .collect();
        assert_eq!(got, want, "links in pod {k}");
    }
    // vhost-user sockets: a directory per kept vhost attachment, nothing else.
    let socks: BTreeSet<String> = std::fs::read_dir(&node.vhost)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let want_socks: BTreeSet<String> = kept
        .clone()
        .filter(|&i| att(i).2)
        .map(|i| format!("cni-{}", attachment_key(&att(i).0.id, &att(i).1)))
        .collect();
    assert_eq!(socks, want_socks);
    // IPAM: a lease per kept veth attachment.
    assert_eq!(node.leases("par").len(), kept.filter(|&i| !att(i).2).count());
}

#[test]
fn bad_configs_and_environments_are_refused_naming_the_problem_and_create_nothing() {
    need_env!("bad_configs_and_environments_are_refused_naming_the_problem_and_create_nothing");
    let node = Node::start();
    let pod = Pod::new("bad");
    let ipam = node.host_local("bad", "10.214.0.0/24", "10.214.0.10", "10.214.0.19");
    let good = node.conf("1.0.0", "bad", json!({"vlan": 10, "ipam": ipam}));
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    node.plugin_for("ADD", &pod, "net1", &with("colour", json!("blue"))).err(7, "colour");
    node.plugin_for("ADD", &pod, "net1", &with("vlan", json!(4095))).err(7, "vlan");
    node.plugin_for("ADD", &pod, "net1", &with("trunk", json!([{"minID": 9, "maxID": 3}])))
        .err(7, "trunk[0].minID");
    node.plugin_for("ADD", &pod, "net1", &with("cniVersion", json!("0.2.0"))).err(1, "0.2.0");
    node.plugin_for("ADD", &pod, "net1", &with("vethPort", json!("xdp"))).err(7, "vethPort");
    let mut vh = with("mode", json!("vhostuser"));
    vh["vethPort"] = json!("afxdp");
    node.plugin_for("ADD", &pod, "net1", &vh).err(7, "vethPort: applies only to \"mode\": \"veth\"");
    let mut no_bridge = good.clone();
    no_bridge.as_object_mut().unwrap().remove("bridge");
    node.plugin_for("ADD", &pod, "net1", &no_bridge).err(7, "bridge");
    // A bridge the running switch lacks: refused by the daemon after the veth and the IPAM
    // lease were made, so those are undone.
    node.plugin_for("ADD", &pod, "net1", &with("bridge", json!("br9"))).err(7, "br9");
    let broken = node.plugin(
        "ADD",
        &[("CNI_CONTAINERID", &pod.id), ("CNI_NETNS", &pod.path), ("CNI_IFNAME", "net1")],
        b"{\"cniVersion\": \"1.0.0\", \"name\": ",
    );
    broken.err(6, "JSON");
    let no_netns = node.plugin(
        "ADD",
        &[("CNI_CONTAINERID", &pod.id), ("CNI_IFNAME", "net1")],
        good.to_string().as_bytes(),
    );
    no_netns.err(4, "CNI_NETNS");
    node.plugin(
        "ADD",
        &[("CNI_CONTAINERID", &pod.id), ("CNI_NETNS", "/run/netns/no-such-ns"), ("CNI_IFNAME", "net1")],
        good.to_string().as_bytes(),
    )
    .err(4, "CNI_NETNS");
    // An interface of that name in the pod already.
    kports_common::ip(&["-n", &pod.ns, "link", "add", "net1", "type", "veth", "peer", "name", "other1"])
        .unwrap();
    node.plugin_for("ADD", &pod, "net1", &good).err(100, "net1");
    kports_common::ip(&["-n", &pod.ns, "link", "del", "net1"]).unwrap();

    assert!(node.cni_port_names().is_empty(), "{:?}", node.cni_port_names());
    assert!(!host_link_exists(&host_end(&pod, "net1")), "a refused ADD left its veth");
    assert!(pod.links().is_empty(), "{:?}", pod.links());
    assert!(node.leases("bad").is_empty(), "a refused ADD kept its IPAM lease: {:?}", node.leases("bad"));
    assert!(node.state_files().is_empty(), "{:?}", node.state_files());
    // And the good config works in that same pod.
    node.plugin_for("ADD", &pod, "net1", &good).ok();
    assert_eq!(node.cni_port_names(), [pod.port("net1")]);
}

#[test]
fn version_is_what_libcni_expects() {
    need_env!("version_is_what_libcni_expects");
    let node = Node::stopped();
    let v = node.plugin("VERSION", &[], b"{\"cniVersion\": \"1.1.0\"}").ok();
    assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]), "{v}");
    // libcni asks VERSION and checks the config's version against the answer.
    let pod = Pod::new("ver");
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let conf = node.conf(version, &format!("ver{}", version.replace('.', "")), json!({}));
        node.libcni("validate", &conf, &pod, "net1", json!({})).ok();
    }
}

/// TCP (16 MiB, every byte checked) and UDP (every datagram size, a UDP GSO send) between two
/// pods the plugin attached, their veths with the default offloads, on ports of the given VLAN
/// settings; no frame of the transfers dropped.
fn transfers_between_plugin_attached_pods(net: &str, subnet: u8, vlan: Value, mode: &str) {
    let node = Node::start();
    let pool = format!("10.{subnet}.0");
    let mut extra = vlan;
    extra["ipam"] =
        node.host_local(net, &format!("{pool}.0/24"), &format!("{pool}.10"), &format!("{pool}.19"));
    let conf = node.conf("1.0.0", net, extra);
    let (a, b) = (Pod::new(&format!("{net}a")), Pod::new(&format!("{net}b")));
    node.libcni("add", &conf, &a, "net1", json!({})).ok();
    node.libcni("add", &conf, &b, "net1", json!({})).ok();
    let port = node.cni_ports();
    assert_eq!(port[0]["port"]["vlan_mode"], mode, "{}", port[0]);
    let (a_ip, b_ip) = (a.ipv4("net1"), b.ipv4("net1"));
    // Frames flooded while a pod was alone on the VLAN (its IPv6 start-up) had nowhere to go;
    // none of the transfers' may be dropped.
    let before: Vec<String> = [&a, &b].iter().map(|p| node.drops_of(&p.port("net1"))).collect();
    traffic::tcp_transfer(Some(&a.ns), Some(&b.ns), &b_ip, 16 << 20);
    traffic::udp_exchange(Some(&b.ns), &b_ip, Some(&a.ns), &a_ip);
    let after: Vec<String> = [&a, &b].iter().map(|p| node.drops_of(&p.port("net1"))).collect();
    assert_eq!(before, after, "frames were dropped during the transfers:\n{}", node.ctl(&["show", "stats"]));
}

#[test]
fn tcp_and_udp_between_plugin_attached_pods_on_access_ports() {
    need_env!("tcp_and_udp_between_plugin_attached_pods_on_access_ports");
    transfers_between_plugin_attached_pods("acc", 214, json!({"vlan": 70}), "access");
}

/// Skips where AF_XDP cannot run (the plugin's environment, then a kernel with AF_XDP sockets).
macro_rules! need_afxdp {
    ($name:literal) => {
        need_env!($name);
        if let Some(why) = kports_common::afxdp_skip_reason() {
            return skip($name, &why);
        }
    };
}

/// Whether `ip -d link show` shows an XDP program on host interface `iface` (`prog/xdp id N`).
fn has_xdp(iface: &str) -> bool {
    let o = std::process::Command::new("ip").args(["-d", "link", "show", "dev", iface]).output().unwrap();
    assert!(o.status.success(), "ip -d link show {iface}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
}

/// `ping -c 3` from `from` to `ip`: whether every echo was answered.
fn ping(from: &Pod, ip: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", &from.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", ip])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `vethPort: afxdp`: the host end is an AF_XDP port (an XDP program attached to it), next to
/// a pod of an AF_PACKET network on the same bridge: ping both ways, and TCP (8 MiB each way,
/// every byte checked) from pods whose veths keep their default offloads (AF_XDP RX finishes
/// the partial checksums), with no frame dropped. CHECK passes, and fails against a config
/// whose `vethPort` differs; a restarted daemon attaches the program again; the daemon's
/// `cni_del` detaches it; DEL then removes the veth and the lease; GC removes a stale AF_XDP
/// attachment's port and host veth.
#[test]
fn an_afxdp_pod_and_an_afpacket_pod_carry_ping_and_tcp_both_ways() {
    need_afxdp!("an_afxdp_pod_and_an_afpacket_pod_carry_ping_and_tcp_both_ways");
    let mut node = Node::start();
    let xdp = node.conf(
        "1.0.0",
        "xdp",
        json!({"vethPort": "afxdp", "ipam": node.host_local("xdp", "10.216.0.0/24", "10.216.0.10", "10.216.0.19")}),
    );
    let pkt = node.conf(
        "1.0.0",
        "pkt",
        json!({"ipam": node.host_local("pkt", "10.216.0.0/24", "10.216.0.20", "10.216.0.29")}),
    );
    let (a, b) = (Pod::new("xa"), Pod::new("pb"));
    node.libcni("add", &xdp, &a, "net1", json!({})).ok();
    node.libcni("add", &pkt, &b, "net1", json!({})).ok();
    let (ha, hb) = (host_end(&a, "net1"), host_end(&b, "net1"));
    let ports = node.cni_ports();
    let pa = ports.iter().find(|p| p["port"]["name"] == a.port("net1").as_str()).unwrap();
    let pb = ports.iter().find(|p| p["port"]["name"] == b.port("net1").as_str()).unwrap();
    assert_eq!((&pa["port"]["type"], &pa["port"]["iface"]), (&json!("afxdp"), &json!(ha)), "{pa}");
    assert!(pa["port"]["rx_mode"].is_null(), "{pa}");
    assert_eq!(
        (&pb["port"]["type"], &pb["port"]["rx_mode"]),
        (&json!("afpacket"), &json!("recvmmsg")),
        "{pb}"
    );
    assert!(has_xdp(&ha), "no XDP program on {ha}");
    assert!(!has_xdp(&hb), "an XDP program on the AF_PACKET pod's {hb}");

    let (a_ip, b_ip) = (a.ipv4("net1"), b.ipv4("net1"));
    assert!(ping(&a, &b_ip), "the AF_XDP pod cannot ping the AF_PACKET pod");
    assert!(ping(&b, &a_ip), "the AF_PACKET pod cannot ping the AF_XDP pod");
    let before: Vec<String> = [&a, &b].iter().map(|p| node.drops_of(&p.port("net1"))).collect();
    traffic::tcp_transfer(Some(&a.ns), Some(&b.ns), &b_ip, 8 << 20);
    traffic::tcp_transfer(Some(&b.ns), Some(&a.ns), &a_ip, 8 << 20);
    let after: Vec<String> = [&a, &b].iter().map(|p| node.drops_of(&p.port("net1"))).collect();
    assert_eq!(before, after, "frames were dropped during the transfers:\n{}", node.ctl(&["show", "stats"]));

    node.libcni("check", &xdp, &a, "net1", json!({})).ok();
    node.libcni("check", &pkt, &b, "net1", json!({})).ok();
    let mut xdp_as_pkt = xdp.clone();
    xdp_as_pkt.as_object_mut().unwrap().remove("vethPort");
    node.libcni("check", &xdp_as_pkt, &a, "net1", json!({}))
        .err(104, "has type afxdp, the config says afpacket (vethPort)");
    let mut pkt_as_xdp = pkt.clone();
    pkt_as_xdp["vethPort"] = json!("afxdp");
    node.libcni("check", &pkt_as_xdp, &b, "net1", json!({}))
        .err(104, "has type afpacket, the config says afxdp (vethPort)");

    // The daemon's XDP program goes with the process (nothing pinned), and a restarted daemon
    // restores the port and attaches it again.
    node.stop_daemon();
    assert!(!has_xdp(&ha), "the stopped daemon's XDP program stayed on {ha}");
    node.start_daemon();
    wait_until("the restored AF_XDP port's XDP program", || has_xdp(&ha));
    assert!(ping(&a, &b_ip) && ping(&b, &a_ip), "the pods do not reach each other after a restart");

    // The port removed by the daemon takes its XDP program off the veth, which stays (the
    // plugin's DEL removes it).
    let gone = node
        .request(&json!({"v": 1, "op": "cni_del", "attachment": {"container_id": a.id, "ifname": "net1"}}));
    assert_eq!(gone["removed"], json!([a.port("net1")]), "{gone}");
    assert!(host_link_exists(&ha));
    wait_until("the XDP program to leave the AF_XDP pod's host veth", || !has_xdp(&ha));
    node.libcni("del", &xdp, &a, "net1", json!({})).ok();
    node.libcni("del", &pkt, &b, "net1", json!({})).ok();
    assert!(!host_link_exists(&ha) && !host_link_exists(&hb));
    assert!(node.cni_port_names().is_empty(), "{:?}", node.cni_port_names());
    assert!(node.leases("xdp").is_empty() && node.leases("pkt").is_empty());

    // GC of a stale AF_XDP attachment: its port and its host veth go, as an AF_PACKET one's.
    let gcx = node.conf("1.0.0", "gcx", json!({"vethPort": "afxdp"}));
    let (c, d) = (Pod::new("gc1"), Pod::new("gc2"));
    node.libcni("add", &gcx, &c, "net1", json!({})).ok();
    node.libcni("add", &gcx, &d, "net1", json!({})).ok();
    let (hc, hd) = (host_end(&c, "net1"), host_end(&d, "net1"));
    assert!(has_xdp(&hc) && has_xdp(&hd));
    let mut gc = node.conf("1.1.0", "gcx", json!({"vethPort": "afxdp"}));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": d.id, "ifname": "net1"}]);
    node.plugin("GC", &[], gc.to_string().as_bytes()).ok();
    assert_eq!(node.cni_port_names(), [d.port("net1")]);
    assert!(!host_link_exists(&hc), "GC left the stale AF_XDP attachment's veth");
    assert!(has_xdp(&hd), "GC touched the kept attachment");
}

/// An ADD of `vethPort: afxdp` whose port the daemon cannot open (a daemon without CAP_BPF and
/// CAP_SYS_ADMIN, as deploy/daemonset.yaml runs it: no BPF map or program can be made) fails
/// with the daemon's reason and undoes itself: no port, no veth, no IPAM lease, no state file.
/// The same pod then attaches over AF_PACKET, which that daemon can open.
#[test]
fn an_afxdp_add_the_daemon_cannot_open_undoes_itself() {
    need_afxdp!("an_afxdp_add_the_daemon_cannot_open_undoes_itself");
    if std::process::Command::new("setpriv").arg("--version").output().is_err() {
        return skip("an_afxdp_add_the_daemon_cannot_open_undoes_itself", "no setpriv (util-linux)");
    }
    let node = Node::start_wrapped(&["setpriv", "--bounding-set", "-bpf,-sys_admin,-perfmon"]);
    let ipam = node.host_local("nobpf", "10.217.0.0/24", "10.217.0.10", "10.217.0.19");
    let xdp = node.conf("1.0.0", "nobpf", json!({"vethPort": "afxdp", "ipam": ipam}));
    let pod = Pod::new("nobpf");
    let e = node.plugin_for("ADD", &pod, "net1", &xdp).err(101, "cannot open its AF_XDP backend");
    assert!(e["msg"].as_str().unwrap().contains("Operation not permitted"), "{e}");
    assert!(node.cni_port_names().is_empty(), "{:?}", node.cni_port_names());
    assert!(!host_link_exists(&host_end(&pod, "net1")), "the failed ADD left its veth");
    assert!(pod.links().is_empty(), "{:?}", pod.links());
    assert!(node.leases("nobpf").is_empty(), "the failed ADD kept its lease: {:?}", node.leases("nobpf"));
    assert!(node.state_files().is_empty(), "{:?}", node.state_files());
    let mut pkt = xdp.clone();
    pkt["vethPort"] = json!("afpacket");
    node.plugin_for("ADD", &pod, "net1", &pkt).ok();
    assert_eq!(node.cni_port_names(), [pod.port("net1")]);
    assert_eq!(node.leases("nobpf").len(), 1);
}

/// AF_XDP pods share the daemon's one UMEM. When every AF_XDP port's fill ring kept 1,024 of
/// its 16,384 buffers, the 16th `vethPort: afxdp` ADD was refused (error 101); now an idle
/// port's fill ring keeps 64 to 256, and 128 pods are attached, each reaching the next (the
/// last the first; pings in parallel, 3 each, so that every port carries frames both ways).
/// Not a hub: 127 pods pinging one pod at once lost 216 of its replies at its fill ring, whose
/// share is 125 buffers with 128 queues open (docs/cni.md).
#[test]
fn afxdp_pods_past_sixteen_are_attached_and_reach_each_other() {
    need_afxdp!("afxdp_pods_past_sixteen_are_attached_and_reach_each_other");
    const PODS: usize = 128;
    let node = Node::start();
    let ipam = node.host_local("many", "10.218.0.0/24", "10.218.0.10", "10.218.0.250");
    let conf = node.conf("1.0.0", "many", json!({"vethPort": "afxdp", "ipam": ipam}));
    let pods: Vec<Pod> = (0..PODS).map(|i| Pod::new(&format!("m{i}"))).collect();
    for p in &pods {
        node.plugin_for("ADD", p, "net1", &conf).ok();
    }
    assert_eq!(node.cni_port_names().len(), PODS);
    assert_eq!(node.leases("many").len(), PODS);
    let ips: Vec<String> = pods.iter().map(|p| p.ipv4("net1")).collect();
    let unanswered: Vec<usize> = std::thread::scope(|s| {
        let (pods, ips) = (&pods, &ips);
        let pings: Vec<_> =
            (0..PODS).map(|i| s.spawn(move || ping(&pods[i], &ips[(i + 1) % PODS]))).collect();
        pings.into_iter().enumerate().filter_map(|(i, h)| (!h.join().unwrap()).then_some(i)).collect()
    });
    let drops: Vec<String> =
        unanswered.iter().map(|&i| format!("{i}: {}", node.drops_of(&pods[i].port("net1")))).collect();
    assert!(
        unanswered.is_empty(),
        "pods whose pings to the next went unanswered: {unanswered:?}; drops: {drops:#?}"
    );
}

#[test]
fn tcp_and_udp_between_plugin_attached_pods_on_native_untagged_ports() {
    need_env!("tcp_and_udp_between_plugin_attached_pods_on_native_untagged_ports");
    transfers_between_plugin_attached_pods(
        "tcp",
        215,
        json!({"vlan": 80, "trunk": [{"id": 81}]}),
        "native-untagged",
    );
}

#[test]
fn vhostuser_ports_report_their_socket_and_device_info() {
    need_env!("vhostuser_ports_report_their_socket_and_device_info");
    let node = Node::start();
    let info = node.dir.path().join("devinfo/net1.json");
    let mut conf = node.conf(
        "1.1.0",
        "vh",
        json!({"mode": "vhostuser", "vlan": 90, "macspoofchk": true, "socketOwner": 107, "socketGroup": 107, "socketMode": "0660",
               "capabilities": {"mac": true, "CNIDeviceInfoFile": true}}),
    );
    conf["runtimeConfig"] = json!({"mac": "02:00:00:00:90:01", "CNIDeviceInfoFile": info});
    let vm = Pod::new("vm");
    let r = node.plugin_for("ADD", &vm, "net1", &conf).ok();
    let sock =
        r["interfaces"][0]["socketPath"].as_str().unwrap_or_else(|| panic!("no socketPath: {r}")).to_string();
    assert_eq!(r["interfaces"][0]["mac"], "02:00:00:00:90:01", "{r}");
    // With the pod's sandbox: Multus fills the network-status' interface, MAC and MTU only from
    // interfaces that have one, and KubeVirt finds the network's status by that interface.
    assert_eq!(r["interfaces"][0]["sandbox"], vm.path.as_str(), "{r}");
    assert!(sock.starts_with(node.vhost.to_str().unwrap()) && sock.len() <= 107, "{sock}");
    let dev: Value = serde_json::from_slice(&std::fs::read(&info).unwrap()).unwrap();
    assert_eq!(
        dev,
        json!({"type": "vhost-user", "version": "1.1.0", "vhost-user": {"mode": "client", "path": sock}})
    );
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        wait_until("the switch's socket", || std::path::Path::new(&sock).exists());
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!((m.uid(), m.gid(), m.permissions().mode() & 0o777), (107, 107, 0o660), "{sock}");
    }
    let p = &node.cni_ports()[0];
    assert_eq!((p["port"]["type"].as_str(), p["port"]["tag"].as_u64()), (Some("vhostuser"), Some(90)), "{p}");
    assert_eq!(p["port"]["allowed_macs"], json!(["02:00:00:00:90:01"]), "{p}");
    assert_eq!(vm.links(), Vec::<String>::new(), "vhost-user mode put an interface in the pod");
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    node.plugin_for("CHECK", &vm, "net1", &check).ok();
    node.plugin_for("DEL", &vm, "net1", &conf).ok();
    assert!(!info.exists() && !std::path::Path::new(&sock).exists());
    assert!(node.cni_port_names().is_empty());

    // QEMU listening, the switch connecting: QEMU is the device-info spec's "server".
    let mut client = conf.clone();
    client["vhostMode"] = json!("client");
    node.plugin_for("ADD", &vm, "net2", &client).err(7, "socketMode");
    client.as_object_mut().unwrap().remove("socketMode");
    node.plugin_for("ADD", &vm, "net2", &client).ok();
    let dev: Value = serde_json::from_slice(&std::fs::read(&info).unwrap()).unwrap();
    assert_eq!(dev["vhost-user"]["mode"], "server", "{dev}");
    assert_eq!(node.cni_ports()[0]["port"]["mode"], "client");
}

/// A runtime's second ADD of a live vhost-user attachment (a retry of an ADD that succeeded,
/// against the spec, as a Multus or CRI-O retry may do): refused as existing before the IPAM
/// plugin runs, so the first ADD's lease, port, socket and device-info file stay, and the
/// attachment passes CHECK; DEL then frees all of it and an ADD after the DEL succeeds.
#[test]
fn a_second_add_of_a_live_vhostuser_attachment_leaves_the_first_intact() {
    need_env!("a_second_add_of_a_live_vhostuser_attachment_leaves_the_first_intact");
    let node = Node::start();
    let info = node.dir.path().join("devinfo/again.json");
    let ipam = node.host_local("again", "10.224.0.0/24", "10.224.0.10", "10.224.0.19");
    // 1.0.0: Debian's host-local (1.1.1) refuses 1.1.0 configs.
    let mut conf = node.conf(
        "1.0.0",
        "again",
        json!({"mode": "vhostuser", "ipam": ipam, "capabilities": {"CNIDeviceInfoFile": true}}),
    );
    conf["runtimeConfig"] = json!({"CNIDeviceInfoFile": info});
    let vm = Pod::new("again");
    let r = node.plugin_for("ADD", &vm, "net1", &conf).ok();
    let sock = r["interfaces"][0]["socketPath"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let leases = node.leases("again");
    assert_eq!(leases, ["10.224.0.10"], "{r}");
    let state = node.state_files();

    node.plugin_for("ADD", &vm, "net1", &conf).err(100, "attached already");
    assert_eq!(node.leases("again"), leases, "the second ADD released the live attachment's lease");
    assert_eq!(node.cni_port_names(), [vm.port("net1")]);
    assert_eq!(node.state_files(), state);
    assert!(info.exists(), "the second ADD removed the live attachment's device-info file");
    wait_until("the switch's socket", || std::path::Path::new(&sock).exists());
    let mut check = conf.clone();
    check["prevResult"] = r;
    node.plugin_for("CHECK", &vm, "net1", &check).ok();

    node.plugin_for("DEL", &vm, "net1", &conf).ok();
    assert!(node.leases("again").is_empty() && node.cni_port_names().is_empty() && !info.exists());
    let r = node.plugin_for("ADD", &vm, "net1", &conf).ok();
    // host-local goes on from its last reservation: the next address.
    assert_eq!(
        (r["ips"][0]["address"].as_str(), node.leases("again").len()),
        (Some("10.224.0.11/24"), 1),
        "{r}"
    );

    // A DEL that found the daemon unreachable (here: its socket elsewhere) released the lease
    // and left a tombstone, which the daemon applies at its next look (every 5 s) or at the
    // next cni_add: the port is listed still, yet an ADD now is no repeat and goes through.
    let mut away = conf.clone();
    away["socket"] = json!(node.dir.path().join("elsewhere.sock"));
    node.plugin_for("DEL", &vm, "net1", &away).ok();
    assert!(node.state_files().iter().any(|f| f.ends_with(".del")), "{:?}", node.state_files());
    let r = node.plugin_for("ADD", &vm, "net1", &conf).ok();
    assert_eq!((node.cni_port_names(), node.leases("again").len()), (vec![vm.port("net1")], 1), "{r}");
    node.plugin_for("DEL", &vm, "net1", &conf).ok();
}

/// The repeated-ADD check asks the daemon, not the config's `stateDir`: with a `stateDir` that
/// is another directory, a second ADD of a live vhost-user attachment is still refused before
/// its IPAM call and the first lease stays (it used to find no port file there, go on to the
/// IPAM plugin and, refused there, release the live lease). A `stateDir` that does not exist is
/// not the running daemon's: ADD is refused naming the key (error 7) before anything is made;
/// DEL, which may need it for a tombstone, creates it and succeeds.
#[test]
fn a_state_dir_other_than_the_daemons_neither_hides_a_live_attachment_nor_goes_unnoticed() {
    need_env!("a_state_dir_other_than_the_daemons_neither_hides_a_live_attachment_nor_goes_unnoticed");
    let node = Node::start();
    let ipam = node.host_local("elsewhere", "10.227.0.0/24", "10.227.0.10", "10.227.0.19");
    let other = node.dir.path().join("other-state");
    std::fs::create_dir(&other).unwrap();
    // 1.0.0: Debian's host-local (1.1.1) refuses 1.1.0 configs.
    let conf = node.conf("1.0.0", "elsewhere", json!({"mode": "vhostuser", "ipam": ipam, "stateDir": other}));
    let vm = Pod::new("elsewhere");
    node.plugin_for("ADD", &vm, "net1", &conf).ok();
    node.plugin_for("ADD", &vm, "net1", &conf).err(100, "attached already");
    assert_eq!(node.leases("elsewhere"), ["10.227.0.10"], "the second ADD released the live lease");
    assert_eq!(node.cni_port_names(), [vm.port("net1")]);
    node.plugin_for("DEL", &vm, "net1", &conf).ok();
    assert!(node.leases("elsewhere").is_empty() && node.cni_port_names().is_empty());

    let missing = node.dir.path().join("missing-state");
    let conf =
        node.conf("1.0.0", "elsewhere", json!({"mode": "vhostuser", "ipam": ipam, "stateDir": missing}));
    node.plugin_for("ADD", &vm, "net1", &conf).err(7, "stateDir: ");
    assert!(node.leases("elsewhere").is_empty() && node.cni_port_names().is_empty());
    assert!(!missing.exists(), "the refused ADD made the directory");
    node.plugin_for("DEL", &vm, "net1", &conf).ok();
    assert!(missing.is_dir());
}

/// An IPAM plugin `slow-host-local` in the node's CNI_PATH: host-local, 0.3 s late for ADD, so
/// that two ADDs of one attachment started together both reach it before either registers.
fn slow_host_local(node: &Node) {
    use std::os::unix::fs::PermissionsExt;
    let p = node.cni_bin.join("slow-host-local");
    let host_local = node.cni_bin.join("host-local");
    std::fs::write(
        &p,
        format!("#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] && sleep 0.3\nexec {}\n", host_local.display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Two ADDs of one attachment at the same moment (a Multus retry overlapping the first try,
/// two runtimes restarting), in each mode: one attaches, the other waits for it (the
/// attachment's lock in `stateDir`) and is then refused as a repeat before its IPAM call, so
/// exactly one port and the lease of its result are left, and no lock file. Without the lock
/// both passed the checks during the slow IPAM call, host-local refused the second lease, and
/// that ADD's undo released the first one's: a port without its lease. DEL leaves nothing.
#[test]
fn two_adds_of_one_attachment_at_once_leave_one_port_and_one_lease() {
    need_env!("two_adds_of_one_attachment_at_once_leave_one_port_and_one_lease");
    let node = Node::start();
    slow_host_local(&node);
    for (mode, net, subnet, refusal) in [
        ("veth", "dup", "10.225.0", "already exists"),
        ("vhostuser", "dup-vh", "10.226.0", "attached already"),
    ] {
        let mut ipam =
            node.host_local(net, &format!("{subnet}.0/24"), &format!("{subnet}.10"), &format!("{subnet}.19"));
        ipam["type"] = json!("slow-host-local");
        // 1.0.0: Debian's host-local (1.1.1) refuses 1.1.0 configs.
        let conf = node.conf("1.0.0", net, json!({"mode": mode, "ipam": ipam}));
        let pod = Pod::new(net);
        let runs: Vec<_> = std::thread::scope(|s| {
            let both: Vec<_> =
                (0..2).map(|_| s.spawn(|| node.plugin_for("ADD", &pod, "net1", &conf))).collect();
            both.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (ok, refused): (Vec<_>, Vec<_>) = runs.iter().partition(|r| r.status == 0);
        assert_eq!((ok.len(), refused.len()), (1, 1), "{mode}: {runs:#?}");
        refused[0].err(100, refusal);
        let r = ok[0].ok();
        let addr = r["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("{mode}: {r}"));
        assert_eq!(node.leases(net), [addr.split('/').next().unwrap()], "{mode}: {r}");
        assert_eq!(node.cni_port_names(), [pod.port("net1")], "{mode}");
        assert_eq!(node.state_files(), [format!("{}.json", attachment_key(&pod.id, "net1"))], "{mode}");
        node.plugin_for("DEL", &pod, "net1", &conf).ok();
        assert!(node.leases(net).is_empty(), "{mode}: {:?}", node.leases(net));
        assert!(node.cni_port_names().is_empty() && node.state_files().is_empty(), "{mode}");
    }
}

/// An IPAM plugin `name` in the node's CNI_PATH whose ADD answers `result`.
fn fixed_ipam(node: &Node, name: &str, result: &Value) {
    use std::os::unix::fs::PermissionsExt;
    let p = node.cni_bin.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && echo '{result}'\nexit 0\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A route of the IPAM result whose destination the pod has a route to already, through
/// another gateway and device (the primary network's default route): the ADD fails with
/// error 100 naming both routes, leaves the other route alone and undoes itself, where it
/// used to succeed and report the other network's route as its own. A route that is the
/// kernel's own (the address's subnet route, given again as link-scoped) is fine.
#[test]
fn a_route_the_pod_has_through_another_gateway_fails_the_add() {
    need_env!("a_route_the_pod_has_through_another_gateway_fails_the_add");
    let node = Node::start();
    let pod = Pod::new("rtaken");
    // The primary network, as the cluster's CNI leaves it before Multus runs this one.
    for args in [
        // A veth pair, both ends in the pod (no dummy module on every kernel).
        &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"][..],
        &["link", "set", "eth0peer", "up"],
        &["link", "set", "eth0", "up"],
        &["addr", "add", "10.227.0.2/24", "dev", "eth0"],
        &["route", "add", "default", "via", "10.227.0.1", "dev", "eth0"],
        &["addr", "add", "2001:db8:27::2/64", "dev", "eth0", "nodad"],
        &["-6", "route", "add", "default", "via", "2001:db8:27::1", "dev", "eth0"],
    ] {
        let o = std::process::Command::new("ip").args(["-n", &pod.ns]).args(args).output().unwrap();
        assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let default_route = || {
        let o =
            std::process::Command::new("ip").args(["-n", &pod.ns, "-4", "route", "show", "default"]).output();
        String::from_utf8_lossy(&o.unwrap().stdout).trim().to_string()
    };
    let before = default_route();
    assert!(before.starts_with("default via 10.227.0.1 dev eth0"), "{before}");

    let ips = json!([{"address": "10.228.0.5/24", "gateway": "10.228.0.1"}]);
    fixed_ipam(
        &node,
        "taken-ipam",
        &json!({"cniVersion": "1.1.0", "ips": ips, "routes": [{"dst": "0.0.0.0/0"}]}),
    );
    let conf = node.conf("1.1.0", "rtaken", json!({"ipam": {"type": "taken-ipam"}}));
    let e = node.plugin_for("ADD", &pod, "net1", &conf).err(100, "add route 0.0.0.0/0 via 10.228.0.1");
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("0.0.0.0/0 via 10.227.0.1"), "the error does not name the route in the way: {msg}");
    assert_eq!(default_route(), before);
    assert_eq!(pod.links(), ["eth0peer", "eth0"], "the failed ADD left its interface");
    assert!(!host_link_exists(&host_end(&pod, "net1")));
    assert!(node.cni_port_names().is_empty());
    // IPv6 alike (the kernel's metric of a route without one there: 1024).
    let ips6 = json!([{"address": "2001:db8:28::5/64", "gateway": "2001:db8:28::1"}]);
    fixed_ipam(
        &node,
        "taken-ipam",
        &json!({"cniVersion": "1.1.0", "ips": ips6, "routes": [{"dst": "::/0"}]}),
    );
    let e = node.plugin_for("ADD", &pod, "net1", &conf).err(100, "add route ::/0 via 2001:db8:28::1");
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("::/0 via 2001:db8:27::1") && msg.contains("metric 1024"), "{msg}");
    assert_eq!(pod.links(), ["eth0peer", "eth0"], "the failed ADD left its interface");

    // The kernel's subnet route of 10.228.0.5/24 on net1, asked for again: the same route.
    fixed_ipam(
        &node,
        "taken-ipam",
        &json!({"cniVersion": "1.1.0", "ips": ips, "routes": [{"dst": "10.228.0.0/24", "scope": 253}]}),
    );
    let r = node.plugin_for("ADD", &pod, "net1", &conf).ok();
    assert_eq!(r["routes"][0]["dst"], "10.228.0.0/24", "{r}");
    assert_eq!(default_route(), before);
    node.plugin_for("DEL", &pod, "net1", &conf).ok();
}

/// The pod's own subnet listed as a route without `gw` or `scope` (host-local and static IPAM
/// configs do this): the plugin fills in the `gateway`, the kernel's subnet route of the
/// address is there already at metric 0 on the new interface, and the ADD succeeds (as the
/// Go bridge plugin's non-exclusive add does): a route on the plugin's own new device is no
/// other network's.
#[test]
fn the_pods_own_subnet_as_a_route_is_no_conflict() {
    need_env!("the_pods_own_subnet_as_a_route_is_no_conflict");
    let node = Node::start();
    let pod = Pod::new("r2sub");
    let ips = json!([{"address": "10.229.0.5/24", "gateway": "10.229.0.1"}]);
    fixed_ipam(
        &node,
        "r2-ipam",
        &json!({"cniVersion": "1.1.0", "ips": ips, "routes": [{"dst": "10.229.0.0/24"}]}),
    );
    let conf = node.conf("1.1.0", "r2sub", json!({"ipam": {"type": "r2-ipam"}}));
    node.plugin_for("ADD", &pod, "net1", &conf).ok();
    node.plugin_for("DEL", &pod, "net1", &conf).ok();
}

/// An IPv6 route with `"priority": 0` (the kernel makes it 1024) given twice is the same
/// route both times, not a taken one.
#[test]
fn an_ipv6_route_of_priority_zero_given_twice_is_one_route() {
    need_env!("an_ipv6_route_of_priority_zero_given_twice_is_one_route");
    let node = Node::start();
    let pod = Pod::new("r2p0");
    let ips = json!([{"address": "2001:db8:29::5/64", "gateway": "2001:db8:29::1"}]);
    let rt = json!({"dst": "2001:db8:99::/64", "gw": "2001:db8:29::1", "priority": 0});
    fixed_ipam(&node, "r2p-ipam", &json!({"cniVersion": "1.1.0", "ips": ips, "routes": [rt, rt]}));
    let conf = node.conf("1.1.0", "r2p0", json!({"ipam": {"type": "r2p-ipam"}}));
    node.plugin_for("ADD", &pod, "net1", &conf).ok();
    node.plugin_for("DEL", &pod, "net1", &conf).ok();
}
