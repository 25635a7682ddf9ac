//! vhost-user mode end to end: libcni ADDs a VM's interface in vhostuser mode (the socket
//! reported in the device-info file, as Multus hands it to KubeVirt) and a pod's in veth mode
//! to a running `switchyard run`; a real QEMU guest on the reported socket pings the pod
//! through the switch; then libcni DELs the VM's attachment while the guest runs: its port and
//! socket go (the backend closes QEMU's connection, the guest's next pings get no answer), the
//! daemon stays ready, and the pods' veth ports are as they were and still forward.
//!
//! Needs what cni/tests/plugin.rs needs (root, `ip`, Go and libcni's source, the IPAM plugins)
//! and QEMU with the guest of `scripts/qemu-guest-assets.sh` (tests/qemu_common); skips with a
//! message elsewhere.

mod common;
#[path = "../../ports/tests/kports_common/mod.rs"]
mod kports_common;
#[path = "../../tests/qemu_common/mod.rs"]
mod qemu_common;

use common::{tcp_reachable, Node, Pod};
use kports_common::skip;
use qemu_common::{Guest, Qemu, GUEST_WAIT, SHORT_WAIT};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const GUEST_MAC: &str = "52:54:00:12:34:57";
/// Outside the pods' host-local range, in their subnet.
const GUEST_IP: &str = "10.216.0.2/24";

#[test]
fn a_guest_on_a_cni_vhostuser_port_pings_a_veth_pod_and_survives_its_del() {
    const NAME: &str = "a_guest_on_a_cni_vhostuser_port_pings_a_veth_pod_and_survives_its_del";
    if let Some(why) = common::skip_reason() {
        return skip(NAME, &why);
    }
    let assets = match qemu_common::assets() {
        Ok(a) => a,
        Err(why) => return skip(NAME, &why),
    };
    let node = Node::start();
    let veth = node.conf(
        "1.0.0",
        "e2e",
        json!({"vlan": 100, "ipam": node.host_local("e2e", "10.216.0.0/24", "10.216.0.10", "10.216.0.19")}),
    );
    let (a, b) = (Pod::new("ea"), Pod::new("eb"));
    node.libcni("add", &veth, &a, "net1", json!({})).ok();
    node.libcni("add", &veth, &b, "net1", json!({})).ok();
    let a_ip = a.ipv4("net1");

    // The VM: virt-launcher's pod, its interface a vhost-user socket with KubeVirt's MAC.
    let vm = Pod::new("evm");
    let info = node.dir.path().join("devinfo/net1.json");
    let vh = node.conf(
        "1.0.0",
        "e2e-vh",
        json!({"mode": "vhostuser", "vlan": 100, "capabilities": {"mac": true, "CNIDeviceInfoFile": true}}),
    );
    let cap = json!({"mac": GUEST_MAC, "CNIDeviceInfoFile": info});
    let r = node.libcni("add", &vh, &vm, "net1", cap.clone()).ok();
    assert_eq!(r["interfaces"][0]["mac"], GUEST_MAC, "{r}");
    let dev: Value = serde_json::from_slice(&std::fs::read(&info).expect("the device-info file")).unwrap();
    assert_eq!(dev["vhost-user"]["mode"], "client", "QEMU connects: {dev}");
    let sock = dev["vhost-user"]["path"].as_str().unwrap_or_else(|| panic!("no path: {dev}")).to_string();
    let vm_port = vm.port("net1");
    let before = node.cni_ports();
    let p = before.iter().find(|p| p["port"]["name"] == vm_port.as_str()).expect("the VM's port");
    assert_eq!(p["port"]["socket"], sock.as_str(), "{p}");
    let pods_before: Vec<&Value> = before.iter().filter(|p| p["port"]["name"] != vm_port.as_str()).collect();
    assert_eq!(pods_before.len(), 2, "{before:?}");

    let dir = tempfile::tempdir().unwrap();
    let mut q = Qemu::start(&Guest {
        assets: &assets,
        dir: dir.path(),
        socket: Path::new(&sock),
        chardev: "",
        mac: GUEST_MAC,
        ip: GUEST_IP,
        peer: &a_ip,
        pings: 3,
        // Round 1, then it waits for a "go": the guest runs on during the DEL, then tries again.
        rounds: 2,
        between: "wait",
        extra: &[],
        queues: 1,
    });
    let log = || node.daemon_log();
    q.wait_marker(&["up"], GUEST_WAIT, log);
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, log);
    q.wait_marker(&["waiting"], SHORT_WAIT, log);
    assert!(
        node.daemon_log().contains(&format!("vhost: link port={vm_port} up=true")),
        "{}",
        node.daemon_log()
    );

    // DEL under the running guest.
    assert!(q.running(), "QEMU exited before the DEL\n{}", q.dump());
    node.libcni("del", &vh, &vm, "net1", cap).ok();
    assert!(!Path::new(&sock).exists(), "the socket stayed: {sock}");
    assert!(!info.exists(), "the device-info file stayed");
    let st = node.request(&json!({"v": 1, "op": "status"}));
    assert_eq!(st["ready"], true, "{st}");
    let after = node.cni_ports();
    assert_eq!(after.iter().collect::<Vec<_>>(), pods_before, "the pods' ports changed with the VM's DEL");
    let shown = node.ctl(&["show", "ports"]);
    assert!(!shown.lines().any(|l| l.split_whitespace().next() == Some(vm_port.as_str())), "{shown}");
    // The port is gone from the running switch, not only from the lists: its backend closed
    // QEMU's connection, and the guest's next round of pings gets no answer.
    let closed = format!("vhost: frontend gone; port down port={vm_port} reason=port closed");
    common::wait_until("the VM's port to close its vhost-user connection", || {
        node.daemon_log().contains(&closed)
    });
    q.go();
    q.wait_marker(&["round 2 FAIL"], GUEST_WAIT, log);
    let b_ip = b.ipv4("net1");
    assert!(tcp_reachable(&a, &b, &b_ip, Duration::from_secs(10)), "the pods lost each other after the DEL");
    assert!(tcp_reachable(&b, &a, &a_ip, Duration::from_secs(10)), "the pods lost each other after the DEL");
    let daemon = node.daemon_log();
    let bad: Vec<&str> = daemon.lines().filter(|l| l.contains(" ERROR ") || l.contains("panicked")).collect();
    assert!(bad.is_empty(), "errors in the daemon's log:\n{}\n\nfull log:\n{daemon}", bad.join("\n"));
}
