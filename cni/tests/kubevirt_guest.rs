//! KubeVirt's vhost-user hand-off end to end, every piece real except the kubelet, Multus and
//! virt-launcher, whose parts here are played by the test in their protocols:
//! 1. switchyard's device plugin (in process) serves its devices; the test, as the kubelet,
//!    calls Allocate over the plugin's gRPC socket for virt-launcher's compute container;
//! 2. libcni, as Multus does for a NAD naming the resource, ADDs the VM's interface with the
//!    allocated `deviceID` to a running `switchyard run`: the socket appears in that device's
//!    directory, owned by QEMU's uid/gid 107;
//! 3. the plugin's device-info becomes KubeVirt's network information, and the binding sidecar
//!    (in process) rewrites a KubeVirt domain over the hook API; libvirt's schema accepts it;
//! 4. QEMU runs in a mount namespace of its own where, as the container runtime does with the
//!    allocation's mount, the device directory is bind-mounted at the container path; its
//!    vhost-user chardev and NIC come from the rewritten domain's interface (libvirtd does not
//!    run here, so the arguments are derived from the XML by the test, as libvirt would: socket
//!    path, QEMU's role, reconnect, MAC; the memfd shared memory the domain asks for is the
//!    guest's memory in tests/qemu_common). The guest pings a veth pod through the switch;
//! 5. switchyard is restarted under the running guest while the pod pings the guest every
//!    50 ms: the test measures when the replies resume and the guest pings again.

mod common;
#[path = "../../dataplane/tests/kports_common/mod.rs"]
mod kports_common;
#[path = "../../tests/qemu_common/mod.rs"]
mod qemu_common;

use common::{Node, Pod};
use kports_common::skip;
use qemu_common::{Guest, Qemu, GUEST_WAIT, SHORT_WAIT};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_kubevirt::device_plugin::{self, PluginConfig};
use switchyard_kubevirt::domain::vhost_interfaces;
use switchyard_kubevirt::hook::{self, SidecarConfig};
use switchyard_kubevirt::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use switchyard_kubevirt::proto::deviceplugin::{AllocateRequest, ContainerAllocateRequest};
use switchyard_kubevirt::proto::hooks_v1alpha3::callbacks_client::CallbacksClient;
use switchyard_kubevirt::proto::hooks_v1alpha3::OnDefineDomainParams;
use switchyard_kubevirt::uds;

const GUEST_MAC: &str = "52:54:00:12:34:59";
const GUEST_ADDR: &str = "10.217.0.2";
const QEMU_ID: u32 = 107;

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn tools_missing() -> Option<String> {
    for (tool, pkg) in
        [("virt-xml-validate", "libvirt-clients"), ("xmllint", "libxml2-utils"), ("ping", "iputils-ping")]
    {
        let ok =
            Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status();
        if !ok.is_ok_and(|s| s.success()) {
            return Some(format!("{tool} missing (Debian: {pkg})"));
        }
    }
    None
}

/// Calls `f` with a fresh channel to the socket at `path`, retrying while nobody listens.
async fn dial(path: &Path) -> uds::Channel {
    for _ in 0..200 {
        if let Ok(ch) = uds::connect(path).await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {}", path.display());
}

/// `ping` from `pod` to the guest every 50 ms; the reply times (Unix seconds) come in `replies`.
struct Pinger {
    child: std::process::Child,
    replies: Arc<Mutex<Vec<f64>>>,
}

impl Pinger {
    fn start(pod: &Pod) -> Pinger {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pod.ns, "ping", "-D", "-n", "-i", "0.05", "-W", "1", GUEST_ADDR])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        let out = child.stdout.take().unwrap();
        let replies = Arc::new(Mutex::new(Vec::new()));
        let r = replies.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // "[1733390000.123456] 64 bytes from 10.217.0.2: icmp_seq=1 ttl=64 time=0.5 ms"
                if line.contains("bytes from") {
                    if let Some(t) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
                        if let Ok(t) = t.parse::<f64>() {
                            r.lock().unwrap().push(t);
                        }
                    }
                }
            }
        });
        Pinger { child, replies }
    }

    /// Waits (bounded) for a reply after `t` (Unix seconds); its time.
    fn reply_after(&self, t: f64, limit: Duration) -> Option<f64> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(r) = self.replies.lock().unwrap().iter().copied().find(|r| *r > t) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_kubevirt_vm_boots_on_its_allocated_socket_and_survives_a_switch_restart() {
    const NAME: &str = "a_kubevirt_vm_boots_on_its_allocated_socket_and_survives_a_switch_restart";
    if let Some(why) = common::skip_reason().or_else(tools_missing) {
        return skip(NAME, &why);
    }
    let assets = match qemu_common::assets() {
        Ok(a) => a,
        Err(why) => return skip(NAME, &why),
    };
    let mut node = Node::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let veth = node.conf(
        "1.0.0",
        "kv-pods",
        json!({"vlan": 100, "ipam": node.host_local("kv-pods", "10.217.0.0/24", "10.217.0.10", "10.217.0.19")}),
    );
    let a = Pod::new("ka");
    node.libcni("add", &veth, &a, "net1", json!({})).ok();
    let a_ip = a.ipv4("net1");

    // 1. The device plugin, and the kubelet's Allocate for virt-launcher's compute container.
    let d = node.dir.path().to_path_buf();
    let cfg = PluginConfig {
        resource: "switchyard.io/kv".into(),
        devices: 2,
        vhost_dir: node.vhost.display().to_string(),
        // The container's root is a directory of the test: QEMU sees it through a mount.
        container_dir: d.join("pod-root/var/run/switchyard/kubevirt").display().to_string(),
        plugin_dir: d.join("device-plugins"),
        devinfo_dir: d.join("devinfo/dp"),
        owner: QEMU_ID,
        group: QEMU_ID,
        switch_socket: Some(node.sock.clone()),
        poll: Duration::from_millis(200),
    };
    let (stop_plugin, stopped) = tokio::sync::oneshot::channel::<()>();
    let plugin = rt.spawn(device_plugin::run(cfg.clone(), async {
        let _ = stopped.await;
    }));
    let alloc = rt.block_on(async {
        let mut c = DevicePluginClient::new(dial(&cfg.plugin_dir.join(cfg.endpoint())).await);
        c.allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["kv-1".into()] }],
        })
        .await
        .expect("Allocate")
        .into_inner()
    });
    let mount = alloc.container_responses[0].mounts[0].clone();
    assert_eq!(mount.host_path, format!("{}/dev-kv-1", node.vhost.display()));
    assert_eq!(mount.container_path, cfg.container_path(0));

    // 2. Multus's ADD for the NAD with the resource: the plugin config gets the device id.
    let vh = node.conf(
        "1.0.0",
        "kv-vh",
        json!({"mode": "vhostuser", "vlan": 100, "deviceID": "kv-1", "socketOwner": QEMU_ID, "socketGroup": QEMU_ID,
               "capabilities": {"mac": true, "CNIDeviceInfoFile": true}}),
    );
    let vm = Pod::new("kvm");
    let cni_info = d.join("devinfo/cni/kv-vh-net1.json");
    let r =
        node.libcni("add", &vh, &vm, "net1", json!({"mac": GUEST_MAC, "CNIDeviceInfoFile": cni_info})).ok();
    let host_sock = format!("{}/sock", mount.host_path);
    assert_eq!(r["interfaces"][0]["mac"], GUEST_MAC, "{r}");
    let ports = node.cni_ports();
    let p = ports.iter().find(|p| p["port"]["name"] == vm.port("net1").as_str()).expect("the VM's port");
    assert_eq!(p["port"]["socket"], host_sock.as_str(), "{p}");
    assert_eq!(p["device"], "kv-1", "{p}");
    let m = std::fs::metadata(&host_sock).expect("the socket in the allocated directory");
    assert_eq!((m.uid(), m.gid()), (QEMU_ID, QEMU_ID), "the socket is not QEMU's");
    let m = std::fs::metadata(&mount.host_path).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (QEMU_ID, QEMU_ID, 0o750));
    assert!(!cni_info.exists(), "the CNI wrote a device-info with the host's path");

    // 3. Multus reports the plugin's device-info; KubeVirt's downward API hands it to the sidecar.
    let dp_info: Value = serde_json::from_slice(&std::fs::read(cfg.devinfo_path("kv-1")).unwrap()).unwrap();
    let net_info = d.join("podinfo/network-info");
    std::fs::create_dir_all(net_info.parent().unwrap()).unwrap();
    std::fs::write(
        &net_info,
        json!({"interfaces": [{"network": "blue", "deviceInfo": dp_info}]}).to_string(),
    )
    .unwrap();
    let hook_sock = d.join("kubevirt-hooks/switchyard.sock");
    let sidecar = rt.spawn(hook::run(
        SidecarConfig {
            binding: "switchyard".into(),
            socket: hook_sock.clone(),
            network_info: net_info,
            mtu: None,
        },
        std::future::pending(),
    ));
    let dom =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../kubevirt/tests/domains/plain.xml")).unwrap();
    let vmi = json!({"spec": {"domain": {"devices": {"interfaces": [
        {"name": "default", "masquerade": {}},
        {"name": "blue", "binding": {"name": "switchyard"}, "macAddress": GUEST_MAC}]}},
        "networks": [{"name": "default", "pod": {}}, {"name": "blue", "multus": {"networkName": "kv-vh"}}]}});
    let xml = rt.block_on(async {
        let mut c = CallbacksClient::new(dial(&hook_sock).await);
        c.on_define_domain(OnDefineDomainParams { domain_xml: dom, vmi: vmi.to_string().into_bytes() })
            .await
            .expect("OnDefineDomain")
            .into_inner()
            .domain_xml
    });
    let xml_file = d.join("domain.xml");
    std::fs::write(&xml_file, &xml).unwrap();
    let v = Command::new("virt-xml-validate").arg(&xml_file).arg("domain").output().unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let text = String::from_utf8_lossy(&xml);
    assert!(
        text.contains(r#"<source type="memfd" />"#) && text.contains(r#"<access mode="shared" />"#),
        "{text}"
    );
    let ifs = vhost_interfaces(&xml).unwrap();
    assert_eq!(ifs.len(), 1, "{text}");
    let nic = &ifs[0];
    assert_eq!(nic.socket, format!("{}/sock", mount.container_path));
    assert_eq!(nic.mode, "client", "the switch listens, QEMU connects");

    // 4. QEMU in the container's mount namespace, from the domain's interface.
    let chardev = nic.reconnect.map(|s| format!(",reconnect={s}")).unwrap_or_default();
    let qdir = tempfile::tempdir().unwrap();
    let mac = nic.mac.clone().expect("the domain's MAC");
    let mut q = Qemu::start_in(
        &Guest {
            assets: &assets,
            dir: qdir.path(),
            socket: Path::new(&nic.socket),
            chardev: &chardev,
            mac: &mac,
            ip: &format!("{GUEST_ADDR}/24"),
            peer: &a_ip,
            pings: 3,
            rounds: 2,
            between: "wait",
            extra: &[],
        },
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mkdir -p "$1" && mount --bind "$2" "$1" && shift 2 && exec "$@""#,
            "sh",
            &mount.container_path,
            &mount.host_path,
        ],
    );
    q.wait_marker(&["up"], GUEST_WAIT, || node.daemon_log());
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, || node.daemon_log());
    q.wait_marker(&["waiting"], SHORT_WAIT, || node.daemon_log());

    // 5. The switch restarts under the running guest, the pod pinging it all along.
    let ping = Pinger::start(&a);
    assert!(ping.reply_after(0.0, SHORT_WAIT).is_some(), "the guest does not answer the pod");
    let t_stop = now_s();
    node.stop_daemon();
    let t_spawn = now_s();
    node.start_daemon();
    let t_ready = now_s();
    let first = ping.reply_after(t_spawn, SHORT_WAIT * 3).unwrap_or_else(|| {
        panic!(
            "no reply from the guest 30 s after the restart\n{}\nswitchyard log:\n{}",
            q.dump(),
            node.daemon_log()
        )
    });
    let last_before =
        ping.replies.lock().unwrap().iter().copied().filter(|r| *r < t_spawn).fold(0.0, f64::max);
    eprintln!(
        "switch restart: stopped in {:.0} ms, ready {:.0} ms after its start; pings resumed {:.0} ms after it \
         was ready ({:.0} ms without replies)",
        (t_spawn - t_stop) * 1e3,
        (t_ready - t_spawn) * 1e3,
        (first - t_ready) * 1e3,
        (first - last_before) * 1e3
    );
    drop(ping);
    q.go();
    q.wait_marker(&["round 2 PASS"], GUEST_WAIT, || node.daemon_log());

    let _ = stop_plugin.send(());
    rt.block_on(plugin).unwrap().expect("the device plugin");
    sidecar.abort();
    let daemon = node.daemon_log();
    let bad: Vec<&str> = daemon.lines().filter(|l| l.contains(" ERROR ") || l.contains("panicked")).collect();
    assert!(bad.is_empty(), "errors in the daemon's log:\n{}", bad.join("\n"));
}
