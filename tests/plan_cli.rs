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

    let out = plan(&["--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c2: Config = serde_json::from_value(j["config"].clone()).unwrap();
    assert_eq!(c2, c);
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);

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
    let c3 = Config::from_yaml_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert!(c3.bridges.is_empty());
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
    assert_eq!(run(&["--strict"]).status.code(), Some(2));
    assert!(!run(&["--node-labels", "novalue"]).status.success());
    std::fs::remove_dir_all(&d).ok();
}
