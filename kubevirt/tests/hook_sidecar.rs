//! The binding sidecar against a stand-in for virt-launcher's hook client: it dials the hook
//! socket, calls `kubevirt.hooks.info.Info/Info` offering the versions virt-launcher offers, then
//! `kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain` with a domain and the VMI, and finally
//! `Shutdown`. The domains (tests/domains/) are modelled on virt-launcher's output for a
//! containerdisk VMI with masquerade on the pod network; every domain the sidecar returns must
//! pass libvirt's schema (`virt-xml-validate`).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use switchyard_kubevirt::domain::vhost_interfaces;
use switchyard_kubevirt::hook::{self, SidecarConfig};
use switchyard_kubevirt::proto::hooks_info::info_client::InfoClient;
use switchyard_kubevirt::proto::hooks_info::InfoParams;
use switchyard_kubevirt::proto::hooks_v1alpha3::callbacks_client::CallbacksClient;
use switchyard_kubevirt::proto::hooks_v1alpha3::{OnDefineDomainParams, ShutdownParams};
use switchyard_kubevirt::uds;
use xmltree::Element;

const SOCK: &str = "/var/run/switchyard/kubevirt/blue-0/sock";

fn domain(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/domains").join(name)).unwrap()
}

/// A VMI as virt-launcher passes it: pod network masquerade, `blue` on switchyard, and the
/// interfaces named in `more` with a bridge binding.
fn vmi(multiqueue: bool, more: &[&str]) -> Vec<u8> {
    let mut ifaces = vec![
        json!({"name": "default", "masquerade": {}}),
        json!({"name": "blue", "binding": {"name": "switchyard"}, "macAddress": "02:5a:00:00:00:0b"}),
    ];
    let mut nets = vec![
        json!({"name": "default", "pod": {}}),
        json!({"name": "blue", "multus": {"networkName": "blue-net"}}),
    ];
    for m in more {
        ifaces.push(json!({"name": m, "bridge": {}}));
        nets.push(json!({"name": m, "multus": {"networkName": format!("{m}-net")}}));
    }
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi-blue", "namespace": "default"},
        "spec": {"domain": {"devices": {"interfaces": ifaces, "networkInterfaceMultiqueue": multiqueue}}, "networks": nets}
    })
    .to_string()
    .into_bytes()
}

/// KubeVirt's network information (downwardAPI: device-info) with blue's device-info.
fn network_info() -> Value {
    json!({"interfaces": [{"network": "blue", "deviceInfo": {"type": "vhost-user", "version": "1.1.0",
        "vhost-user": {"mode": "client", "path": SOCK}}}]})
}

fn validate(xml: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("domain.xml");
    std::fs::write(&f, xml).unwrap();
    let out =
        Command::new("virt-xml-validate").arg(&f).arg("domain").output().expect("virt-xml-validate runs");
    assert!(
        out.status.success(),
        "libvirt's schema refuses the domain:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(xml)
    );
}

fn validator_missing() -> Option<String> {
    let ok = Command::new("sh").arg("-c").arg("command -v virt-xml-validate && command -v xmllint").output();
    match ok {
        Ok(o) if o.status.success() => None,
        _ => Some("virt-xml-validate or xmllint missing (libvirt-clients, libxml2-utils)".into()),
    }
}

/// The domain as text, for readable assertion failures.
fn text(xml: &[u8]) -> String {
    String::from_utf8_lossy(xml).into_owned()
}

fn parse(xml: &[u8]) -> Element {
    Element::parse(xml).unwrap()
}

fn interfaces(d: &Element) -> Vec<Element> {
    d.get_child("devices")
        .unwrap()
        .children
        .iter()
        .filter_map(|c| c.as_element())
        .filter(|e| e.name == "interface")
        .cloned()
        .collect()
}

fn alias_of(e: &Element) -> String {
    e.get_child("alias").unwrap().attributes["name"].clone()
}

fn attr_of(e: &Element, child: &str, a: &str) -> Option<String> {
    e.get_child(child).and_then(|c| c.attributes.get(a).cloned())
}

struct Sidecar {
    socket: PathBuf,
    info: PathBuf,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

fn start(mtu: Option<u32>) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubevirt-hooks/switchyard.sock");
    let info = dir.path().join("podinfo/network-info");
    std::fs::create_dir_all(info.parent().unwrap()).unwrap();
    std::fs::write(&info, network_info().to_string()).unwrap();
    let cfg = SidecarConfig {
        binding: "switchyard".into(),
        socket: socket.clone(),
        network_info: info.clone(),
        mtu,
    };
    let task = tokio::spawn(hook::run(cfg, std::future::pending()));
    Sidecar { socket, info, task, _dir: dir }
}

async fn client(
    s: &Sidecar,
) -> (InfoClient<tonic::transport::Channel>, CallbacksClient<tonic::transport::Channel>) {
    client_at(&s.socket).await
}

async fn client_at(
    socket: &Path,
) -> (InfoClient<tonic::transport::Channel>, CallbacksClient<tonic::transport::Channel>) {
    for _ in 0..100 {
        if let Ok(ch) = uds::connect(socket).await {
            return (InfoClient::new(ch.clone()), CallbacksClient::new(ch));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the sidecar does not listen on {}", socket.display());
}

async fn define(
    c: &mut CallbacksClient<tonic::transport::Channel>,
    dom: &[u8],
    vmi: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    c.on_define_domain(OnDefineDomainParams { domain_xml: dom.to_vec(), vmi: vmi.to_vec() })
        .await
        .map(|r| r.into_inner().domain_xml)
}

#[tokio::test]
async fn rewrites_kubevirt_domains_for_vhost_user() {
    if let Some(why) = validator_missing() {
        return testkit::skip("rewrites_kubevirt_domains_for_vhost_user", &why);
    }
    let s = start(None);
    let (mut info, mut cb) = client(&s).await;

    let i = info.info(InfoParams {}).await.unwrap().into_inner();
    assert_eq!(i.name, "switchyard");
    assert_eq!(i.versions, ["v1alpha3"]);
    assert_eq!(i.hook_points.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["OnDefineDomain"]);

    // No hugepages, one vCPU: the interface is added, memfd shared memory too.
    let plain = domain("plain.xml");
    let out = define(&mut cb, &plain, &vmi(false, &[])).await.unwrap();
    validate(&out);
    let d = parse(&out);
    let ifs = interfaces(&d);
    assert_eq!(ifs.iter().map(alias_of).collect::<Vec<_>>(), ["ua-default", "ua-blue"]);
    assert_eq!(ifs[0], interfaces(&parse(&plain))[0], "the pod network's interface changed");
    let blue = &ifs[1];
    assert_eq!(blue.attributes["type"], "vhostuser");
    assert_eq!(attr_of(blue, "source", "path").as_deref(), Some(SOCK));
    assert_eq!(attr_of(blue, "source", "mode").as_deref(), Some("client"));
    assert_eq!(attr_of(blue, "source", "type").as_deref(), Some("unix"));
    let rc = blue.get_child("source").unwrap().get_child("reconnect").expect("QEMU would not reconnect");
    assert_eq!((rc.attributes["enabled"].as_str(), rc.attributes["timeout"].as_str()), ("yes", "1"));
    assert_eq!(attr_of(blue, "mac", "address").as_deref(), Some("02:5a:00:00:00:0b"));
    assert_eq!(attr_of(blue, "model", "type").as_deref(), Some("virtio"));
    assert!(blue.get_child("driver").is_none(), "queues without multiqueue");
    assert!(blue.get_child("mtu").is_none(), "an MTU nobody asked for");
    let mb = d.get_child("memoryBacking").expect("no memory backing added");
    assert_eq!(attr_of(mb, "source", "type").as_deref(), Some("memfd"));
    assert_eq!(attr_of(mb, "access", "mode").as_deref(), Some("shared"));
    // virt-launcher may call again with what it got: nothing changes.
    assert_eq!(
        text(&define(&mut cb, &out, &vmi(false, &[])).await.unwrap()),
        text(&out),
        "the rewrite is not idempotent"
    );

    // Hugepages: kept, shared access added, no memfd.
    let out = define(&mut cb, &domain("hugepages.xml"), &vmi(false, &[])).await.unwrap();
    validate(&out);
    let mb = parse(&out).get_child("memoryBacking").unwrap().clone();
    assert_eq!(attr_of(&mb, "hugepages", "page").as_deref(), None);
    assert_eq!(attr_of(mb.get_child("hugepages").unwrap(), "page", "size").as_deref(), Some("2048"));
    assert!(mb.get_child("source").is_none());
    assert_eq!(attr_of(&mb, "access", "mode").as_deref(), Some("shared"));
    assert_eq!(text(&define(&mut cb, &out, &vmi(false, &[])).await.unwrap()), text(&out));

    // Multiqueue with 4 vCPUs: the CNI's port offers one queue pair, and QEMU refuses to
    // start a NIC that asks for more than the backend offers ("you are asking more queues than
    // supported: 1"): one pair, no <driver queues>.
    let out = define(&mut cb, &domain("multiqueue.xml"), &vmi(true, &[])).await.unwrap();
    validate(&out);
    let vi = vhost_interfaces(&out).unwrap();
    assert_eq!(vi.len(), 1);
    assert_eq!((vi[0].alias.as_str(), vi[0].socket.as_str(), vi[0].queues), ("ua-blue", SOCK, 1));
    let blue = interfaces(&parse(&out)).into_iter().find(|i| alias_of(i) == "ua-blue").unwrap();
    assert!(blue.get_child("driver").is_none(), "{}", text(&out));
    let out1 = define(&mut cb, &domain("multiqueue.xml"), &vmi(false, &[])).await.unwrap();
    assert_eq!(vhost_interfaces(&out1).unwrap()[0].queues, 1, "queues although the VMI has no multiqueue");

    // A private memory backing: refused, saying why.
    let e = define(&mut cb, &domain("private.xml"), &vmi(false, &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("not shared") && e.message().contains("private"), "{}", e.message());

    // Several interfaces; switchyard's already in the domain (a tap attachment): replaced in
    // place, keeping its PCI address and boot order; the others untouched.
    let several = domain("several.xml");
    let out = define(&mut cb, &several, &vmi(false, &["red", "green"])).await.unwrap();
    validate(&out);
    let before = interfaces(&parse(&several));
    let after = interfaces(&parse(&out));
    assert_eq!(
        after.iter().map(alias_of).collect::<Vec<_>>(),
        ["ua-default", "ua-red", "ua-blue", "ua-green"]
    );
    for k in [0, 1, 3] {
        assert_eq!(after[k], before[k], "interface {} changed", alias_of(&before[k]));
    }
    assert_eq!(after[2].attributes["type"], "vhostuser");
    assert_eq!(attr_of(&after[2], "address", "bus").as_deref(), Some("0x02"));
    assert_eq!(attr_of(&after[2], "boot", "order").as_deref(), Some("2"));
    assert_eq!(attr_of(&after[2], "mac", "address").as_deref(), Some("02:5a:00:00:00:0b"));
    assert!(after[2].get_child("target").is_none(), "the tap target stayed");
    assert_eq!(text(&define(&mut cb, &out, &vmi(false, &["red", "green"])).await.unwrap()), text(&out));

    // A VMI without a switchyard interface: the domain comes back byte for byte.
    let no_sy =
        json!({"spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}}}});
    assert_eq!(text(&define(&mut cb, &plain, no_sy.to_string().as_bytes()).await.unwrap()), text(&plain));

    // No device-info for blue (the NAD names no resource): refused, saying what to fix.
    std::fs::write(&s.info, json!({"interfaces": []}).to_string()).unwrap();
    let e = define(&mut cb, &plain, &vmi(false, &[])).await.unwrap_err();
    assert!(
        e.message().contains("no device-info") && e.message().contains("resourceName"),
        "{}",
        e.message()
    );
    // A device-info that is not vhost-user (a PCI device): refused.
    std::fs::write(
        &s.info,
        json!({"interfaces": [{"network": "blue", "deviceInfo": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:00.1"}}}]})
            .to_string(),
    )
    .unwrap();
    let e = define(&mut cb, &plain, &vmi(false, &[])).await.unwrap_err();
    assert!(e.message().contains("not a vhost-user socket"), "{}", e.message());

    // Multus's network-status (with the MTU it reports) works as well.
    std::fs::write(
        &s.info,
        json!([{"name": "kindnet", "interface": "eth0", "default": true},
               {"name": "default/blue-net", "interface": "pod0123", "mtu": 2000, "device-info":
                {"type": "vhost-user", "version": "1.1.0", "vhost-user": {"mode": "server", "path": SOCK}}}])
        .to_string(),
    )
    .unwrap();
    let out = define(&mut cb, &plain, &vmi(false, &[])).await.unwrap();
    validate(&out);
    let blue = interfaces(&parse(&out))[1].clone();
    assert_eq!(attr_of(&blue, "mtu", "size").as_deref(), Some("2000"));
    assert_eq!(attr_of(&blue, "source", "mode").as_deref(), Some("server"));
    assert!(
        blue.get_child("source").unwrap().get_child("reconnect").is_none(),
        "reconnect on a listening QEMU"
    );

    // Shutdown ends the sidecar and removes its socket.
    cb.shutdown(ShutdownParams {}).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.task).await.unwrap().unwrap().unwrap();
    assert!(!s.socket.exists());
}

#[tokio::test]
async fn mtu_comes_from_the_sidecar_when_the_network_has_none() {
    if let Some(why) = validator_missing() {
        return testkit::skip("mtu_comes_from_the_sidecar_when_the_network_has_none", &why);
    }
    let s = start(Some(1400));
    let (_, mut cb) = client(&s).await;
    let out = define(&mut cb, &domain("plain.xml"), &vmi(false, &[])).await.unwrap();
    validate(&out);
    assert_eq!(attr_of(&interfaces(&parse(&out))[1], "mtu", "size").as_deref(), Some("1400"));
    s.task.abort();
}

/// KubeVirt 1.9's network-info carries the network-status's `mac` (since 1.8) and `mtu`: the
/// interface gets that MTU (over `--mtu`), and that MAC when the VMI names none.
#[tokio::test]
async fn mtu_and_mac_come_from_kubevirts_network_info() {
    if let Some(why) = validator_missing() {
        return testkit::skip("mtu_and_mac_come_from_kubevirts_network_info", &why);
    }
    let s = start(Some(1400));
    let mut info = network_info();
    info["interfaces"][0]["mtu"] = json!(2000);
    info["interfaces"][0]["mac"] = json!("02:5a:00:00:00:0c");
    std::fs::write(&s.info, info.to_string()).unwrap();
    let (_, mut cb) = client(&s).await;
    let out = define(&mut cb, &domain("plain.xml"), &vmi(false, &[])).await.unwrap();
    validate(&out);
    let blue = interfaces(&parse(&out))[1].clone();
    assert_eq!(attr_of(&blue, "mtu", "size").as_deref(), Some("2000"), "{}", text(&out));
    // The VMI's macAddress wins over the reported one.
    assert_eq!(attr_of(&blue, "mac", "address").as_deref(), Some("02:5a:00:00:00:0b"));
    let mut no_mac: Value = serde_json::from_slice(&vmi(false, &[])).unwrap();
    no_mac["spec"]["domain"]["devices"]["interfaces"][1].as_object_mut().unwrap().remove("macAddress");
    let out = define(&mut cb, &domain("plain.xml"), no_mac.to_string().as_bytes()).await.unwrap();
    validate(&out);
    let blue = interfaces(&parse(&out))[1].clone();
    assert_eq!(attr_of(&blue, "mac", "address").as_deref(), Some("02:5a:00:00:00:0c"), "{}", text(&out));
    assert_eq!(text(&define(&mut cb, &out, no_mac.to_string().as_bytes()).await.unwrap()), text(&out));
    // A jumbo MTU the switch's buffers cannot carry: the domain is refused with the reason, not
    // defined with a guest whose every full-size frame would be dropped as `oversize`.
    let mut jumbo = info.clone();
    jumbo["interfaces"][0]["mtu"] = json!(9000);
    std::fs::write(&s.info, jumbo.to_string()).unwrap();
    let e = define(&mut cb, &domain("plain.xml"), &vmi(false, &[])).await.unwrap_err();
    assert!(
        e.message().contains("MTU 9000 is larger than a switchyard vhost-user port carries"),
        "{}",
        e.message()
    );
    // An older KubeVirt (no mtu, or KubeVirt's omitted zero): the sidecar's --mtu.
    info["interfaces"][0]["mtu"] = json!(0);
    std::fs::write(&s.info, info.to_string()).unwrap();
    let out = define(&mut cb, &domain("plain.xml"), &vmi(false, &[])).await.unwrap();
    assert_eq!(attr_of(&interfaces(&parse(&out))[1], "mtu", "size").as_deref(), Some("1400"));
    s.task.abort();
}

/// A domain nested deeper than the parser's stack allows is refused with FailedPrecondition,
/// and the sidecar serves on (the recursive parse overflowed the stack and aborted it).
#[tokio::test]
async fn a_too_deep_domain_is_refused_and_the_sidecar_serves_on() {
    if let Some(why) = validator_missing() {
        return testkit::skip("a_too_deep_domain_is_refused_and_the_sidecar_serves_on", &why);
    }
    let s = start(None);
    let (_, mut cb) = client(&s).await;
    let plain = text(&domain("plain.xml"));
    let nest = "<metadata>".to_string() + &"<x>".repeat(600) + &"</x>".repeat(600) + "</metadata>";
    let deep = plain.replacen("<devices>", &format!("{nest}<devices>"), 1);
    let e = define(&mut cb, deep.as_bytes(), &vmi(false, &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("deeper than"), "{}", e.message());
    let out = define(&mut cb, plain.as_bytes(), &vmi(false, &[])).await.unwrap();
    validate(&out);
    s.task.abort();
}

/// `<memoryBacking>` with an `<access/>` that names no mode: the mode is set on it, not a
/// second `<access>` added (libvirt's schema takes one), and a second pass changes nothing.
#[tokio::test]
async fn an_access_without_a_mode_gets_shared_once() {
    if let Some(why) = validator_missing() {
        return testkit::skip("an_access_without_a_mode_gets_shared_once", &why);
    }
    let s = start(None);
    let (_, mut cb) = client(&s).await;
    let dom = text(&domain("hugepages.xml")).replacen("</hugepages>", "</hugepages>\n    <access/>", 1);
    let out = define(&mut cb, dom.as_bytes(), &vmi(false, &[])).await.unwrap();
    validate(&out);
    let mb = parse(&out).get_child("memoryBacking").unwrap().clone();
    let access: Vec<_> =
        mb.children.iter().filter_map(|c| c.as_element()).filter(|e| e.name == "access").collect();
    assert_eq!(access.len(), 1, "{}", text(&out));
    assert_eq!(access[0].attributes["mode"], "shared");
    assert_eq!(text(&define(&mut cb, &out, &vmi(false, &[])).await.unwrap()), text(&out));
    s.task.abort();
}

/// The binary serves the binding name KubeVirt passes in NETWORK_BINDING_PLUGIN_NAME (the
/// name the binding is registered under), over `--binding`'s default.
#[tokio::test]
async fn the_binary_serves_the_binding_name_kubevirt_passes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sy.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-kubevirt"))
        .args(["hook-sidecar", "--socket"])
        .arg(&socket)
        .env(hook::BINDING_NAME_ENV, "sy-blue")
        .spawn()
        .unwrap();
    let (mut info, mut cb) = client_at(&socket).await;
    let name = info.info(InfoParams {}).await.map(|r| r.into_inner().name);
    let _ = cb.shutdown(ShutdownParams {}).await;
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(name.unwrap(), "sy-blue");
}
