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
//!
//! The second test live-migrates the guest with QEMU's own migration between two local QEMU
//! processes over a Unix socket: the target pod has its own device, port and socket, mounted at
//! the same container path in its own mount namespace; the pod pings the guest throughout; the
//! source pod's DEL removes its port (not the device directory) and the guest pings on from the
//! target.

mod common;
#[path = "../../ports/tests/kports_common/mod.rs"]
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

/// The node of these tests: a running switch, a veth pod `a` on VLAN 100, the device plugin
/// and the binding sidecar (both in this process).
struct Kv {
    node: Node,
    rt: tokio::runtime::Runtime,
    cfg: PluginConfig,
    a: Pod,
    a_ip: String,
    stop_plugin: Option<tokio::sync::oneshot::Sender<()>>,
    plugin: Option<tokio::task::JoinHandle<Result<(), device_plugin::PluginError>>>,
    sidecar: tokio::task::JoinHandle<std::io::Result<()>>,
    hook_sock: std::path::PathBuf,
    net_info: std::path::PathBuf,
    /// QEMU listens, the switch connects (`vhostMode: client`).
    qemu_listens: bool,
}

/// One VM pod's allocation and attachment.
struct Vm {
    pod: Pod,
    conf: Value,
    mount: switchyard_kubevirt::proto::deviceplugin::Mount,
}

impl Kv {
    fn start(qemu_listens: bool) -> Kv {
        let node = Node::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let veth = node.conf(
            "1.0.0",
            "kv-pods",
            json!({"vlan": 100, "ipam": node.host_local("kv-pods", "10.217.0.0/24", "10.217.0.10", "10.217.0.19")}),
        );
        let a = Pod::new("ka");
        node.libcni("add", &veth, &a, "net1", json!({})).ok();
        let a_ip = a.ipv4("net1");
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
            qemu_listens,
            spare: 0,
        };
        let (stop_plugin, stopped) = tokio::sync::oneshot::channel::<()>();
        let plugin = rt.spawn(device_plugin::run(cfg.clone(), async {
            let _ = stopped.await;
        }));
        let net_info = d.join("podinfo/network-info");
        std::fs::create_dir_all(net_info.parent().unwrap()).unwrap();
        let hook_sock = d.join("kubevirt-hooks/switchyard.sock");
        let sidecar = rt.spawn(hook::run(
            SidecarConfig {
                binding: "switchyard".into(),
                socket: hook_sock.clone(),
                network_info: net_info.clone(),
                mtu: None,
            },
            std::future::pending(),
        ));
        Kv {
            node,
            rt,
            cfg,
            a,
            a_ip,
            stop_plugin: Some(stop_plugin),
            plugin: Some(plugin),
            sidecar,
            hook_sock,
            net_info,
            qemu_listens,
        }
    }

    /// The kubelet's Allocate of device `id` for a VM pod's compute container, then Multus's
    /// ADD for the NAD with the resource: the plugin config gets the device id.
    fn vm(&self, name: &str, id: &str) -> Vm {
        let alloc = self.rt.block_on(async {
            let mut c = DevicePluginClient::new(dial(&self.cfg.plugin_dir.join(self.cfg.endpoint())).await);
            c.allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest { devices_ids: vec![id.into()] }],
            })
            .await
            .expect("Allocate")
            .into_inner()
        });
        let mount = alloc.container_responses[0].mounts[0].clone();
        assert_eq!(mount.host_path, format!("{}/dev-{id}", self.node.vhost.display()));
        assert_eq!(mount.container_path, self.cfg.container_path(0), "not the same path in every pod");

        let conf = self.node.conf(
            "1.0.0",
            "kv-vh",
            json!({"mode": "vhostuser", "vhostMode": if self.qemu_listens { "client" } else { "server" },
                   "vlan": 100, "deviceID": id, "socketOwner": QEMU_ID, "socketGroup": QEMU_ID,
                   "capabilities": {"mac": true, "CNIDeviceInfoFile": true}}),
        );
        let pod = Pod::new(name);
        let cni_info = self.node.dir.path().join(format!("devinfo/cni/kv-vh-{name}.json"));
        let r = self
            .node
            .libcni("add", &conf, &pod, "net1", json!({"mac": GUEST_MAC, "CNIDeviceInfoFile": cni_info}))
            .ok();
        assert_eq!(r["interfaces"][0]["mac"], GUEST_MAC, "{r}");
        let host_sock = format!("{}/sock", mount.host_path);
        let ports = self.node.cni_ports();
        let p = ports.iter().find(|p| p["port"]["name"] == pod.port("net1").as_str()).expect("the VM's port");
        assert_eq!(p["port"]["socket"], host_sock.as_str(), "{p}");
        assert_eq!(p["device"], id, "{p}");
        if !self.qemu_listens {
            let m = std::fs::metadata(&host_sock).expect("the socket in the allocated directory");
            assert_eq!((m.uid(), m.gid()), (QEMU_ID, QEMU_ID), "the socket is not QEMU's");
        }
        let m = std::fs::metadata(&mount.host_path).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (QEMU_ID, QEMU_ID, 0o750));
        assert!(!cni_info.exists(), "the CNI wrote a device-info with the host's path");
        Vm { pod, conf, mount }
    }

    /// Multus reports the plugin's device-info of `id`; KubeVirt's downward API hands it to the
    /// sidecar, which rewrites the domain; libvirt's schema accepts the result.
    fn domain(&self, id: &str) -> Vec<u8> {
        self.domain_mq(id, false)
    }

    /// As [`Kv::domain`]; with `multiqueue`, the VMI asks for a queue pair per vCPU and the
    /// domain has 4 vCPUs.
    fn domain_mq(&self, id: &str, multiqueue: bool) -> Vec<u8> {
        let dp_info: Value =
            serde_json::from_slice(&std::fs::read(self.cfg.devinfo_path(id)).unwrap()).unwrap();
        std::fs::write(
            &self.net_info,
            json!({"interfaces": [{"network": "blue", "deviceInfo": dp_info}]}).to_string(),
        )
        .unwrap();
        let mut dom = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../kubevirt/tests/domains/plain.xml"
        ))
        .unwrap();
        if multiqueue {
            dom = dom.replace(r#"<vcpu placement="static">1</vcpu>"#, r#"<vcpu placement="static">4</vcpu>"#);
        }
        let dom = dom.into_bytes();
        let vmi = json!({"spec": {"domain": {"devices": {"networkInterfaceMultiqueue": multiqueue, "interfaces": [
            {"name": "default", "masquerade": {}},
            {"name": "blue", "binding": {"name": "switchyard"}, "macAddress": GUEST_MAC}]}},
            "networks": [{"name": "default", "pod": {}}, {"name": "blue", "multus": {"networkName": "kv-vh"}}]}});
        let xml = self.rt.block_on(async {
            let mut c = CallbacksClient::new(dial(&self.hook_sock).await);
            c.on_define_domain(OnDefineDomainParams { domain_xml: dom, vmi: vmi.to_string().into_bytes() })
                .await
                .expect("OnDefineDomain")
                .into_inner()
                .domain_xml
        });
        let xml_file = self.node.dir.path().join(format!("domain-{id}.xml"));
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
        xml
    }

    /// QEMU in the VM pod's mount namespace (the allocated directory bind-mounted at the
    /// container path, as the runtime does with the allocation's mount), its vhost-user chardev
    /// and NIC from the domain's interface.
    fn boot(&self, assets: &qemu_common::Assets, dir: &Path, vm: &Vm, xml: &[u8], extra: &[&str]) -> Qemu {
        let ifs = vhost_interfaces(xml).unwrap();
        assert_eq!(ifs.len(), 1, "{}", String::from_utf8_lossy(xml));
        let nic = &ifs[0];
        assert_eq!(nic.socket, format!("{}/sock", vm.mount.container_path));
        // As libvirt turns the interface's source into QEMU's chardev.
        let chardev = match nic.mode.as_str() {
            "server" => ",server=on".to_string(),
            _ => nic.reconnect.map(|s| format!(",reconnect={s}")).unwrap_or_default(),
        };
        assert_eq!(nic.mode, if self.qemu_listens { "server" } else { "client" }, "QEMU's role");
        let mac = nic.mac.clone().expect("the domain's MAC");
        Qemu::start_in(
            &Guest {
                assets,
                dir,
                socket: Path::new(&nic.socket),
                chardev: &chardev,
                mac: &mac,
                ip: &format!("{GUEST_ADDR}/24"),
                peer: &self.a_ip,
                pings: 3,
                rounds: 2,
                between: "wait",
                extra,
                queues: nic.queues,
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
                &vm.mount.container_path,
                &vm.mount.host_path,
            ],
        )
    }

    /// Stops the plugin and the sidecar; the daemon's log must hold no error.
    fn finish(mut self) {
        let _ = self.stop_plugin.take().unwrap().send(());
        self.rt.block_on(self.plugin.take().unwrap()).unwrap().expect("the device plugin");
        self.sidecar.abort();
        let daemon = self.node.daemon_log();
        let bad: Vec<&str> =
            daemon.lines().filter(|l| l.contains(" ERROR ") || l.contains("panicked")).collect();
        assert!(bad.is_empty(), "errors in the daemon's log:\n{}", bad.join("\n"));
    }
}

/// Counter `key` (`rx`, `moved_in`...) of `port` in the switch's `show stats`.
fn port_stat(node: &Node, port: &str, key: &str) -> u64 {
    let stats = node.ctl(&["show", "stats"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with(&format!("port {port} (")))
        .unwrap_or_else(|| panic!("no port {port} in\n{stats}"));
    let after = line.split(&format!(" {key} ")).nth(1).unwrap_or_else(|| panic!("no {key} in {line}"));
    after.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap()
}

/// The guest to boot, or `None` after skipping `test` where this machine cannot run it.
fn guest_or_skip(test: &str) -> Option<qemu_common::Assets> {
    let why = match common::skip_reason().or_else(tools_missing) {
        Some(why) => why,
        None => match qemu_common::assets() {
            Ok(a) => return Some(a),
            Err(why) => why,
        },
    };
    skip(test, &why);
    None
}

/// Boot, then a switch restart under the running guest.
fn boot_and_restart(test: &str, qemu_listens: bool) {
    let Some(assets) = guest_or_skip(test) else { return };
    let mut kv = Kv::start(qemu_listens);
    let vm = kv.vm("kvm", "kv-1");
    let xml = kv.domain("kv-1");
    let qdir = tempfile::tempdir().unwrap();
    let mut q = kv.boot(&assets, qdir.path(), &vm, &xml, &[]);
    let node = &mut kv.node;
    q.wait_marker(&["up"], GUEST_WAIT, || node.daemon_log());
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, || node.daemon_log());
    q.wait_marker(&["waiting"], SHORT_WAIT, || node.daemon_log());

    // The switch restarts under the running guest, the pod pinging it all along.
    let ping = Pinger::start(&kv.a);
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
        "switch restart ({}): stopped in {:.0} ms, ready {:.0} ms after its start; pings resumed {:.0} ms after it \
         was ready ({:.0} ms without replies)",
        if qemu_listens { "QEMU listens" } else { "the switch listens" },
        (t_spawn - t_stop) * 1e3,
        (t_ready - t_spawn) * 1e3,
        (first - t_ready) * 1e3,
        (first - last_before) * 1e3
    );
    drop(ping);
    q.go();
    q.wait_marker(&["round 2 PASS"], GUEST_WAIT, || node.daemon_log());
    drop(q);
    kv.finish();
}

#[test]
fn a_kubevirt_vm_boots_on_its_allocated_socket_and_survives_a_switch_restart() {
    boot_and_restart("a_kubevirt_vm_boots_on_its_allocated_socket_and_survives_a_switch_restart", false);
}

/// The same with QEMU listening (`vhostMode: client`): the restarted switch connects at once
/// instead of waiting for QEMU's next reconnection attempt.
#[test]
fn a_listening_kubevirt_vm_survives_a_switch_restart() {
    boot_and_restart("a_listening_kubevirt_vm_survives_a_switch_restart", true);
}

/// A VMI with `networkInterfaceMultiqueue` and 4 vCPUs: its NIC comes up and passes traffic.
/// QEMU gets the queues the rewritten domain asks for, as libvirt would pass them; the CNI's
/// port offers one pair, and QEMU 7.2 refuses a NIC that asks for more ("you are asking more
/// queues than supported: 1").
#[test]
fn a_multiqueue_kubevirt_vm_gets_its_nic() {
    let test = "a_multiqueue_kubevirt_vm_gets_its_nic";
    let Some(assets) = guest_or_skip(test) else { return };
    let mut kv = Kv::start(false);
    let vm = kv.vm("kvm", "kv-1");
    let xml = kv.domain_mq("kv-1", true);
    let qdir = tempfile::tempdir().unwrap();
    let mut q = kv.boot(&assets, qdir.path(), &vm, &xml, &[]);
    let node = &mut kv.node;
    q.wait_marker(&["round 1 PASS"], GUEST_WAIT, || node.daemon_log());
    q.wait_marker(&["waiting"], SHORT_WAIT, || node.daemon_log());
    q.go();
    q.wait_marker(&["round 2 PASS"], GUEST_WAIT, || node.daemon_log());
    drop(q);
    kv.finish();
}

/// QEMU's monitor (QMP) on a Unix socket.
struct Qmp {
    r: BufReader<std::os::unix::net::UnixStream>,
    w: std::os::unix::net::UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let t0 = Instant::now();
        let s = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(t0.elapsed() < SHORT_WAIT, "QMP at {}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        s.set_read_timeout(Some(SHORT_WAIT)).unwrap();
        let mut q = Qmp { r: BufReader::new(s.try_clone().unwrap()), w: s };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).unwrap();
        q.call(json!({"execute": "qmp_capabilities"}));
        q
    }

    /// Runs a command; its `return` (events in between are skipped).
    fn call(&mut self, cmd: Value) -> Value {
        use std::io::Write;
        writeln!(self.w, "{cmd}").unwrap();
        loop {
            let mut line = String::new();
            assert!(self.r.read_line(&mut line).unwrap() > 0, "QMP closed");
            let v: Value = serde_json::from_str(&line).unwrap();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "QMP {cmd}: {v}");
        }
    }
}

#[test]
fn a_kubevirt_vm_live_migrates_to_its_target_pods_port() {
    let Some(assets) = guest_or_skip("a_kubevirt_vm_live_migrates_to_its_target_pods_port") else { return };
    let kv = Kv::start(false);
    // The source pod and the target pod: each its own device and port, the same container path.
    let src = kv.vm("kvsrc", "kv-0");
    let src_xml = kv.domain("kv-0");
    let dst = kv.vm("kvdst", "kv-1");
    let dst_xml = kv.domain("kv-1");
    assert_eq!(src_xml, dst_xml, "the target's domain differs from the source's");
    let (sdir, ddir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let qmp_path = sdir.path().join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp_path.display());
    let mig = ddir.path().join("migrate.sock");
    let incoming = format!("unix:{}", mig.display());
    let log = || kv.node.daemon_log();
    let mut s = kv.boot(&assets, sdir.path(), &src, &src_xml, &["-qmp", &qmp_arg]);
    s.wait_marker(&["up"], GUEST_WAIT, log);
    s.wait_marker(&["round 1 PASS"], GUEST_WAIT, log);
    s.wait_marker(&["waiting"], SHORT_WAIT, log);
    let mut d = kv.boot(&assets, ddir.path(), &dst, &dst_xml, &["-incoming", &incoming]);

    // The pod pings the guest through the migration.
    let ping = Pinger::start(&kv.a);
    assert!(ping.reply_after(0.0, SHORT_WAIT).is_some(), "the guest does not answer the pod");
    let t0 = Instant::now();
    while !mig.exists() {
        assert!(t0.elapsed() < SHORT_WAIT, "the target QEMU does not listen for the migration\n{}", d.dump());
        std::thread::sleep(Duration::from_millis(20));
    }
    let dst_port = dst.pod.port("net1");
    assert_eq!(port_stat(&kv.node, &dst_port, "moved_in"), 0);
    let dst_rx = port_stat(&kv.node, &dst_port, "rx");
    let mut qmp = Qmp::connect(&qmp_path);
    let t_mig = now_s();
    qmp.call(json!({"execute": "migrate", "arguments": {"uri": incoming}}));
    let t0 = Instant::now();
    let status = loop {
        let st = qmp.call(json!({"execute": "query-migrate"}));
        match st["status"].as_str() {
            Some("completed") | Some("failed") | Some("cancelled") => break st,
            _ => {}
        }
        assert!(t0.elapsed() < GUEST_WAIT, "the migration did not end: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let t_done = now_s();
    assert_eq!(status["status"], "completed", "{status}\nsource:\n{}\ntarget:\n{}", s.dump(), d.dump());
    // The source is paused for good now: replies can only come from the target's port.
    let first = ping.reply_after(t_done, SHORT_WAIT * 3).unwrap_or_else(|| {
        panic!(
            "no reply from the migrated guest\nsource:\n{}\ntarget:\n{}\nlog:\n{}",
            s.dump(),
            d.dump(),
            log()
        )
    });
    let last_before =
        ping.replies.lock().unwrap().iter().copied().filter(|r| *r < t_done).fold(0.0, f64::max);
    eprintln!(
        "migration: {:.0} ms from migrate to completed (downtime {} ms by QEMU); first reply {:.0} ms after \
         completion, {:.0} ms without replies",
        (t_done - t_mig) * 1e3,
        status["downtime"],
        (first - t_done) * 1e3,
        (first - last_before) * 1e3
    );
    drop(ping);
    // The guest's MAC moved to the target's port (its announce on arrival, or its first frame).
    assert!(port_stat(&kv.node, &dst_port, "rx") > dst_rx, "{}", kv.node.ctl(&["show", "stats"]));
    assert!(port_stat(&kv.node, &dst_port, "moved_in") >= 1, "{}", kv.node.ctl(&["show", "stats"]));
    // The target QEMU asked the target's port to announce the guest's MAC (the log shows the
    // MAC as its bytes).
    let mac_bytes: Vec<String> =
        GUEST_MAC.split(':').map(|b| u8::from_str_radix(b, 16).unwrap().to_string()).collect();
    let announce = format!("port={dst_port} mac=[{}]", mac_bytes.join(", "));
    assert!(
        log().lines().any(|l| l.contains("SEND_RARP") && l.contains(&announce)),
        "QEMU did not ask the target's port to announce the guest ({announce}):\n{}",
        log()
    );

    // The source pod goes: its QEMU ends, Multus DELs its attachment.
    drop(s);
    kv.node.libcni("del", &src.conf, &src.pod, "net1", json!({"mac": GUEST_MAC})).ok();
    let left: Vec<String> = kv.node.cni_port_names();
    assert!(!left.contains(&src.pod.port("net1")) && left.contains(&dst.pod.port("net1")), "{left:?}");
    assert!(Path::new(&src.mount.host_path).is_dir(), "the DEL removed the device's directory");
    assert!(!Path::new(&format!("{}/sock", src.mount.host_path)).exists(), "the source's socket stayed");
    // The guest, on the target, pings on.
    d.go();
    d.wait_marker(&["round 2 PASS"], GUEST_WAIT, log);
    drop(d);
    kv.finish();
}
