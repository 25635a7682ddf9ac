//! `switchyard plan` on examples/state, through the real binary.

use std::process::Command;
use switchyard_dataplane::config::{Config, VlanModeName};

fn plan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("plan")
        .args(["--state", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/state"), "--node", "worker-1"])
        .args(args)
        .output()
        .expect("runs switchyard")
}

#[test]
fn plan_of_the_example_state() {
    let out = plan(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let c = Config::from_yaml_str(&yaml).expect("the plan loads as a configuration");
    assert_eq!(c.bridges.len(), 1);
    let br = &c.bridges[0];
    assert_eq!(br.name, "br1");
    let names: Vec<&str> = br.ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["eth1", "tenant-a/vm-a/data", "tenant-a/vm-a/ext", "tenant-a/vm-b/data"]);
    let ext = &br.ports[2];
    assert_eq!((ext.vlan_mode, ext.tag), (Some(VlanModeName::Access), Some(200)));
    assert!(yaml.contains("# skipped: VirtualMachineInstance tenant-a/vm-b interface fast"), "{yaml}");
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "no problems expected");

    // `--json`: the configuration itself, the same as the YAML (what `jq .bridges` reads).
    let out = plan(&["--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["bridges"][0]["name"], "br1", "{j}");
    let c2: Config = serde_json::from_value(j).unwrap();
    assert_eq!(c2, c);
    // `--report`: the whole plan, the configuration under `config`.
    let out = plan(&["--report"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c3: Config = serde_json::from_value(j["config"].clone()).unwrap();
    assert_eq!(c3, c);
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);
    assert!(j["skipped"].as_array().unwrap().iter().any(|k| k["item"] == "interface fast"), "{j}");
    assert!(!plan(&["--json", "--report"]).status.success(), "one output format at a time");

    // A node the NNCP does not select (and with no VMIs) gets nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "plan",
            "--state",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/state"),
            "--node",
            "worker-2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let c4 = Config::from_yaml_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert!(c4.bridges.is_empty());
}

#[test]
fn plan_reports_problems_and_strict_fails() {
    let d = std::env::temp_dir().join(format!("switchyard-plan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("nad.yaml"),
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: n, namespace: ns}\nspec:\n  config: '{oops'\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["plan", "--state", d.to_str().unwrap(), "--node", "x"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NetworkAttachmentDefinition ns/n: spec.config: not JSON"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("# problem: "));
    // With `--json` too the problems go to stderr; stdout is the configuration alone.
    let out = run(&["--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.config: not JSON"));
    let c: Config = serde_json::from_slice(&out.stdout).expect("--json prints a configuration");
    assert!(c.bridges.is_empty());
    assert_eq!(run(&["--strict"]).status.code(), Some(2));
    assert!(!run(&["--node-labels", "novalue"]).status.success());
    std::fs::remove_dir_all(&d).ok();
}

/// An OVN layer2 NAD whose VMIs are on two nodes: `plan` prints the overlay (VNI, endpoints,
/// remote MACs, the VM's MTU) as a comment and under `overlays` with `--report`, `--tunnel-ip` and
/// `--underlay-mtu` change it, and a node without an address is a problem naming its field.
#[test]
fn plan_shows_overlays_and_their_problems() {
    let dir = tempfile::tempdir().unwrap();
    let vmi = |name: &str, mac: &str, node: &str| {
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: {name}, namespace: t}}\n\
             spec:\n  domain: {{devices: {{interfaces: [{{name: n, bridge: {{}}, macAddress: \"{mac}\"}}]}}}}\n  \
             networks: [{{name: n, multus: {{networkName: blue}}}}]\nstatus: {{nodeName: {node}}}\n"
        )
    };
    let state = [
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: blue, namespace: t}\n\
         spec:\n  config: '{\"name\":\"blue\",\"type\":\"ovn-k8s-cni-overlay\",\"topology\":\"layer2\",\"vni\":7001,\"mtu\":1400}'\n"
            .to_string(),
        "apiVersion: v1\nkind: Node\nmetadata: {name: w1}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.1}]}\n".into(),
        "apiVersion: v1\nkind: Node\nmetadata: {name: w2}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.2}]}\n".into(),
        "apiVersion: v1\nkind: Node\nmetadata: {name: w3}\n".into(),
        vmi("a", "02:00:00:00:00:0a", "w1"),
        vmi("b", "02:00:00:00:00:0b", "w2"),
        vmi("c", "02:00:00:00:00:0c", "w3"),
    ];
    std::fs::write(dir.path().join("all.yaml"), state.join("---\n")).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("plan")
            .arg("--state")
            .arg(dir.path())
            .args(["--node", "w1"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains(
            "# overlay: ovn-layer2/blue vni 7001 vxlan mtu 1450 port tunnel/blue local 192.0.2.1 \
             endpoints [w2=192.0.2.2] remote_macs [02:00:00:00:00:0b@w2]"
        ),
        "{yaml}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Node w3: status.addresses: no usable InternalIP"), "{err}");
    Config::from_yaml_str(&yaml).expect("the plan with its tunnel port loads as a configuration");

    let out = run(&["--report", "--tunnel-ip", "198.51.100.1", "--underlay-mtu", "9000"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &j["overlays"][0];
    assert_eq!((o["vni"].as_u64(), o["mtu"].as_u64()), (Some(7001), Some(8950)));
    assert_eq!(o["local"], "198.51.100.1");
    assert_eq!(o["endpoints"], serde_json::json!([{"node": "w2", "ip": "192.0.2.2"}]));
    assert_eq!(o["remote_macs"][0]["mac"], "02:00:00:00:00:0b");
    let t = j["config"]["bridges"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tunnel/blue")
        .unwrap();
    assert_eq!((t["local"].as_str(), t["learn"].as_bool()), (Some("198.51.100.1"), Some(false)));
    // The NAD's MTU 1400 fits a 1450-byte overlay, not a 1350-byte one (1400-byte underlay).
    let out = run(&["--underlay-mtu", "1400", "--strict"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("spec.config.mtu: MTU 1400 is larger than the overlay's 1350"));
}
