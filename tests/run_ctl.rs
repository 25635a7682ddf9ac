//! `switchyard run` and `switchyard ctl` end to end: a `run` process on a temporary copy of
//! examples/state, changed under it while `ctl` watches. Every wait is bounded.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_control::cni::attachment_key;
use testkit::run::RunProcess;

#[path = "../control/tests/apiserver/mod.rs"]
mod apiserver;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WAIT: Duration = Duration::from_secs(5);

struct Run {
    /// Declared first: the process is killed before its directory goes.
    p: RunProcess,
    /// The run's files (socket, log, state, switch file, CNI state); `_tmp` removes it.
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Run {
    type Target = RunProcess;
    fn deref(&self) -> &RunProcess {
        &self.p
    }
}

impl Run {
    /// `run --state` on a copy of examples/state, with `eth1` a ring port and `overrides`.
    fn start(extra: &[&str], overrides: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        testkit::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/state"), &state);
        let over = dir.path().join("run.yaml");
        std::fs::write(&over, format!("ports:\n  eth1: {{type: ring}}\n{overrides}")).unwrap();
        let mut args: Vec<std::ffi::OsString> = vec!["--state".into(), state.into()];
        args.extend(["--node".into(), "worker-1".into(), "--config".into(), over.into()]);
        args.extend(extra.iter().map(Into::into));
        Run::spawn(dir.path().to_path_buf(), Some(dir), args)
    }

    /// `run --switch FILE` with FILE holding `yaml`.
    fn start_switch(yaml: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("switch.yaml"), yaml).unwrap();
        Run::switch_in(dir.path().to_path_buf(), Some(dir))
    }

    /// `run --switch DIR/switch.yaml` with its files in `dir` (which outlives the run when
    /// `tmp` is `None`: a restart finds its state there).
    fn switch_in(dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Run {
        let file = dir.join("switch.yaml");
        Run::spawn(dir, tmp, vec!["--switch".into(), file.into()])
    }

    fn spawn(dir: PathBuf, tmp: Option<tempfile::TempDir>, args: Vec<std::ffi::OsString>) -> Run {
        Run { p: RunProcess::spawn(BIN, &dir, args, WAIT), dir, _tmp: tmp }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        self.p.wait_for(what, WAIT, cond)
    }

    fn wait_ctl(&self, args: &[&str], what: &str, cond: impl Fn(&str) -> bool) -> String {
        self.p.wait_ctl(args, what, WAIT, cond)
    }

    /// SIGTERM, then the exit status (bounded).
    fn terminate(mut self) -> (std::process::ExitStatus, Run) {
        let ok = Command::new("kill").arg("-TERM").arg(self.p.child.id().to_string()).status().unwrap();
        assert!(ok.success());
        let t = Instant::now();
        loop {
            if let Some(st) = self.p.child.try_wait().unwrap() {
                return (st, self);
            }
            assert!(t.elapsed() < WAIT, "run did not stop on SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const VM_C: &str = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vm-c, namespace: tenant-a}
spec:
  domain: {devices: {interfaces: [{name: data, bridge: {}, macAddress: "02:00:00:00:0c:01"}]}}
  networks: [{name: data, multus: {networkName: vlan100}}]
status: {nodeName: worker-1}
"#;

fn frame(dst: &str, src: &str) -> String {
    format!("{dst}{src}0800{}", "00".repeat(46))
}

#[test]
fn run_follows_the_state_directory_and_ctl_shows_it() {
    let r = Run::start(&["--vm-ports", "ring"], "");
    let ports = r.ctl(&["show", "ports"]);
    for p in ["eth1", "tenant-a/vm-a/data", "tenant-a/vm-a/ext", "tenant-a/vm-b/data"] {
        assert!(ports.contains(p), "{p} missing:\n{ports}");
    }
    assert!(ports.contains("access VLAN 100"), "{ports}");
    let mode = std::fs::metadata(&r.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // A new VMI: its port appears.
    std::fs::write(r.state().join("vms/vm-c.yaml"), VM_C).unwrap();
    r.wait_ctl(&["show", "ports"], "vm-c's port", |s| s.contains("tenant-a/vm-c/data"));
    assert!(r.log().contains("port tenant-a/vm-c/data added: access VLAN 100 on br1"), "{}", r.log());

    // The NAD's VLAN changes: every port on it follows.
    let nads = r.state().join("network/nads.yaml");
    let text = std::fs::read_to_string(&nads).unwrap();
    std::fs::write(&nads, text.replace("\"vlan\": 100", "\"vlan\": 101")).unwrap();
    let cfg = r.wait_ctl(&["show", "config"], "VLAN 101", |s| s.matches("tag: 101").count() == 3);
    assert!(!cfg.contains("tag: 100"), "{cfg}");

    // The VMI goes away: so does its port.
    std::fs::remove_file(r.state().join("vms/vm-c.yaml")).unwrap();
    r.wait_ctl(&["show", "ports"], "vm-c's port to go", |s| !s.contains("tenant-a/vm-c/data"));

    // An editor that writes a temporary file and renames it into place.
    let tmp = r.state().join("vms/.vm-d.yaml.swp");
    std::fs::write(&tmp, VM_C.replace("vm-c", "vm-d").replace("0c:01", "0d:01")).unwrap();
    std::fs::rename(&tmp, r.state().join("vms/vm-d.yaml")).unwrap();
    r.wait_ctl(&["show", "ports"], "vm-d's port", |s| s.contains("tenant-a/vm-d/data"));

    // A broken manifest: reported with its file, and every port stays.
    std::fs::write(r.state().join("vms/vm-b.yaml"), "garbage: [\n").unwrap();
    r.wait_for("the problem in the log", || r.log().contains("vm-b.yaml: document 1: YAML does not parse"));
    let problems = r.ctl(&["show", "problems"]);
    assert!(problems.contains("kept: VirtualMachineInstance tenant-a/vm-b: file broken"), "{problems}");
    let ports = r.ctl(&["show", "ports"]);
    for p in ["eth1", "tenant-a/vm-a/data", "tenant-a/vm-a/ext", "tenant-a/vm-b/data", "tenant-a/vm-d/data"] {
        assert!(ports.contains(p), "{p} missing after a broken file:\n{ports}");
    }
    // A broken NAD (VLAN out of range) keeps its last good version too.
    let text = std::fs::read_to_string(&nads).unwrap();
    std::fs::write(&nads, text.replace("\"vlan\": 101", "\"vlan\": 5000")).unwrap();
    r.wait_for("the NAD problem", || r.log().contains("invalid VLAN ID 5000"));
    let cfg = r.ctl(&["show", "config"]);
    assert_eq!(cfg.matches("tag: 101").count(), 3, "{cfg}");

    // trace: a unicast to a static MAC, and a flood; the running table does not learn.
    let t = r.ctl(&["trace", "tenant-a/vm-a/data", &frame("020000000b01", "020000000a01")]);
    assert!(t.contains("-> unicast tenant-a/vm-b/data"), "{t}");
    let t = r.ctl(&["trace", "eth1", &format!("ffffffffffff02aabbccddee8100006508{}", "00".repeat(46))]);
    assert!(t.contains("vlan=101") && t.contains("-> flood"), "{t}");
    let fdb = r.ctl(&["show", "fdb", "br1"]);
    assert!(!fdb.contains("02:aa:bb:cc:dd:ee"), "trace changed the running table:\n{fdb}");
    assert!(fdb.contains("02:00:00:00:0b:01"), "{fdb}");
    let flushed = r.ctl(&["fdb", "flush"]);
    assert!(flushed.starts_with("flushed"), "{flushed}");
    let stats = r.ctl(&["show", "stats"]);
    assert!(stats.contains("worker 0") && stats.contains("cycles/packet"), "{stats}");
    let bad = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&r.sock)
        .args(["show", "fdb", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let sock = r.sock.clone();
    let (st, _r) = r.terminate();
    assert!(st.success(), "exit status {st:?}");
    assert!(!sock.exists(), "the socket is removed on exit");
}

#[test]
fn ports_whose_backend_cannot_open_are_present_but_down() {
    // An interface that does not exist: AF_PACKET cannot open it.
    let r = Run::start(&[], "  tenant-a/vm-a/data: {type: afpacket, iface: sy-no-such0}\n");
    let ports = r.ctl(&["show", "ports"]);
    let line =
        ports.lines().find(|l| l.starts_with("tenant-a/vm-a/data")).unwrap_or_else(|| panic!("{ports}"));
    assert!(line.contains("down (no backend)"), "{ports}");
    assert!(ports.lines().find(|l| l.starts_with("eth1")).is_some_and(|l| l.contains(" up ")), "{ports}");
    assert!(r.ctl(&["show", "fdb"]).contains("02:00:00:00:0a:01"));
    assert!(r.log().contains("port tenant-a/vm-a/data is down"), "{}", r.log());
    let (st, _r) = r.terminate();
    assert!(st.success());
}

/// A state directory that cannot be read is `ctl show problems`' too (not only the log's), with
/// the running configuration kept and serving, until it reads again.
#[test]
fn an_unreadable_state_directory_is_in_ctl_show_problems() {
    let r = Run::start(&["--vm-ports", "ring"], "");
    // The first reconcile follows the directory's watch: once its ports are up, the watch is.
    r.wait_ctl(&["show", "ports"], "the state's ports", |s| s.contains("tenant-a/vm-a/data"));
    let (state, away) = (r.state(), r.dir.join("state.away"));
    std::fs::rename(&state, &away).unwrap();
    let probs = r.wait_ctl(&["show", "problems"], "the state directory's error", |s| {
        s.contains("cannot read the state directory")
    });
    assert!(probs.contains("kept") && probs.contains("the running configuration"), "{probs}");
    let ports = r.ctl(&["show", "ports"]);
    assert!(ports.contains("tenant-a/vm-a/data"), "the running ports stay:\n{ports}");
    std::fs::rename(&away, &state).unwrap();
    r.wait_ctl(&["show", "problems"], "the error to go", |s| !s.contains("cannot read the state directory"));
    let (st, _r) = r.terminate();
    assert!(st.success(), "exit status {st:?}");
}

const SWITCH: &str = "bridges:
  - name: br0
    ports:
      - {name: p1, type: ring, tag: 10}
      - {name: p2, type: ring, trunks: [10, 20]}
";

#[test]
fn run_switch_applies_a_configuration_file_and_follows_it() {
    let r = Run::start_switch(SWITCH);
    let ports = r.ctl(&["show", "ports"]);
    assert!(ports.lines().any(|l| l.starts_with("p1") && l.contains("access VLAN 10")), "{ports}");
    assert!(ports.lines().any(|l| l.starts_with("p2")), "{ports}");
    let file = r.dir.join("switch.yaml");

    // Edited through a rename: a new port, p1 to VLAN 30; p2 untouched.
    let tmp = r.dir.join(".switch.yaml.tmp");
    let edited = SWITCH.replace("tag: 10}", "tag: 30}") + "      - {name: p3, type: ring, tag: 20}\n";
    std::fs::write(&tmp, &edited).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let ports = r.wait_ctl(&["show", "ports"], "p3", |s| s.contains("p3"));
    assert!(ports.lines().any(|l| l.starts_with("p1") && l.contains("access VLAN 30")), "{ports}");
    assert!(r.log().contains("port p3 added"), "{}", r.log());

    // A bad edit names the field; the running switch stays as it was.
    std::fs::write(&file, edited.replace("tag: 20}", "tag: 5000}")).unwrap();
    r.wait_for("the error naming the field", || r.log().contains("the running configuration stays"));
    assert!(r.log().contains("tag"), "{}", r.log());
    // The error names the file once (not `switch.yaml: switch.yaml: ...`).
    let named_once = |log: &str| {
        log.lines()
            .filter(|l| l.contains("the running configuration stays"))
            .all(|l| l.matches("switch.yaml").count() == 1)
    };
    assert!(named_once(&r.log()), "{}", r.log());
    // A key serde does not know (the parse error), likewise.
    std::fs::write(&file, edited.replace("ports:", "portz:")).unwrap();
    r.wait_for("the parse error", || r.log().contains("portz"));
    assert!(named_once(&r.log()), "{}", r.log());
    let ports = r.ctl(&["show", "ports"]);
    assert!(ports.lines().any(|l| l.starts_with("p3") && l.contains("access VLAN 20")), "{ports}");
    // ... and `ctl show problems` says so (the last bad edit) until a good edit.
    let probs = r.ctl(&["show", "problems"]);
    assert!(probs.contains("problem") && probs.contains("portz") && probs.contains("kept"), "{probs}");

    // Removed from the file: the port goes.
    std::fs::write(&file, SWITCH).unwrap();
    r.wait_ctl(&["show", "ports"], "p3 to go", |s| !s.contains("p3"));
    let probs = r.ctl(&["show", "problems"]);
    assert!(!probs.contains("portz"), "{probs}");
    let (st, _r) = r.terminate();
    assert!(st.success(), "exit status {st:?}");
}

/// Each thread of process `pid`: (name, the CPUs it may run on as /proc lists them).
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default()
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out
}

/// `0,2-3` as CPU numbers.
fn cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

#[test]
fn metrics_threads_stay_off_a_pinned_workers_core() {
    let cpus = switchyard_dataplane::worker::available_cores();
    if cpus.len() < 2 {
        testkit::skip("metrics_threads_stay_off_a_pinned_workers_core", "needs two CPUs to split");
        return;
    }
    let worker = cpus[cpus.len() - 1];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switch.yaml");
    std::fs::write(&file, SWITCH).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--switch".into(),
        file.into(),
        "--lcores".into(),
        worker.to_string().into(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
    ];
    let r = Run::spawn(dir.path().to_path_buf(), Some(dir), args);
    r.wait_ctl(&["show", "ports"], "p1", |s| s.contains("p1"));
    let threads = thread_cpus(r.child.id());
    let want: Vec<usize> = cpus.iter().copied().filter(|&c| c != worker).collect();
    let mut metrics = 0;
    for (name, allowed) in &threads {
        let set = cpu_list(allowed);
        match name.as_str() {
            "sy-worker-0" => assert_eq!(set, vec![worker], "{threads:?}"),
            // The metrics server's threads: a scrape takes no CPU of the worker's.
            "sy-metrics" | "sy-http" => {
                metrics += 1;
                assert_eq!(set, want, "{name} may run on the worker's core: {threads:?}");
            }
            // The thread that started it has its cores back.
            "switchyard" => assert_eq!(set, cpus, "{threads:?}"),
            _ => {}
        }
    }
    assert!(metrics >= 1, "no metrics thread: {threads:?}");
    assert!(r.log().contains("metrics server kept off the workers' cores"), "{}", r.log());
    let (st, _r) = r.terminate();
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn run_switch_refuses_a_bad_file_and_mixed_sources_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switch.yaml");
    std::fs::write(&file, SWITCH.replace("ports:", "portz:")).unwrap();
    let out = Command::new(BIN).arg("run").arg("--switch").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--switch") && err.contains("portz"), "{err}");
    assert_eq!(err.matches("switch.yaml").count(), 1, "the file named once: {err}");
    // A port no backend could open (0 vhost-user queue pairs) is a bad file too, refused
    // with its field rather than started with the port down for good.
    let vm = format!(
        "      - {{name: vm, type: vhostuser, socket: {}, queues: 0}}\n",
        dir.path().join("vm.sock").display()
    );
    std::fs::write(&file, format!("{SWITCH}{vm}")).unwrap();
    // Bounded: a run that accepted the file would not exit.
    let out = Command::new("timeout").args(["10", BIN, "run", "--switch"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bridges[0].ports[2].queues"), "{err}");
    assert_eq!(err.matches("switch.yaml").count(), 1, "the file named once: {err}");
    let missing = dir.path().join("nope.yaml");
    let out = Command::new(BIN).arg("run").arg("--switch").arg(&missing).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nope.yaml"));
    std::fs::write(&file, SWITCH).unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--switch")
        .arg(&file)
        .args(["--node", "worker-1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--switch with --node was accepted");
    let out = Command::new(BIN)
        .arg("run")
        .arg("--switch")
        .arg(&file)
        .arg("--state")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "--switch with --state was accepted");
    let out = Command::new(BIN).arg("run").output().unwrap();
    assert!(!out.status.success(), "run without a source was accepted");
}

/// Sends one JSON request line to the control socket; the answer as JSON.
fn json_req(sock: &Path, req: &serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.lines().count(), 1, "one answer line: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {out}"))
}

fn cni_port(container: &str, name: &str, tag: u16) -> serde_json::Value {
    serde_json::json!({
        "bridge": "br0",
        "attachment": {"container_id": container, "ifname": "net1", "pod_namespace": "ns", "pod_name": "p"},
        "port": {"name": name, "type": "afpacket", "iface": "sy-no-such9", "tag": tag,
                 "allowed_macs": ["02:00:00:00:aa:01"]},
        "mac": "02:00:00:00:aa:01"
    })
}

fn add(sock: &Path, cni: serde_json::Value) -> serde_json::Value {
    json_req(sock, &serde_json::json!({"v": 1, "op": "cni_add", "cni": cni}))
}

#[test]
fn cni_ports_are_added_refused_persisted_and_removed_over_the_control_socket() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("switch.yaml"), SWITCH).unwrap();
    let r = Run::switch_in(dir.clone(), None);
    let st = json_req(&r.sock, &json!({"v": 1, "op": "status"}));
    assert_eq!(st, json!({"ok": true, "ready": true, "version": 1}));

    // Added: present but down (no such interface), persisted.
    let a = add(&r.sock, cni_port("c1", "ns/p/net1", 10));
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["link"], "down", "{a}");
    let ports = r.ctl(&["show", "ports"]);
    assert!(ports.lines().any(|l| l.starts_with("ns/p/net1") && l.contains("access VLAN 10")), "{ports}");
    let key = "ns/p/net1";
    assert_eq!(std::fs::read_dir(dir.join("cni")).unwrap().count(), 1);

    // Refused, and nothing replaced.
    let code = |v: serde_json::Value| {
        (v["ok"].clone(), v["code"].as_str().unwrap_or("").to_string(), v["error"].to_string())
    };
    let (ok, c, _) = code(add(&r.sock, cni_port("c1", "ns/q/net1", 10)));
    assert_eq!((ok, c.as_str()), (json!(false), "exists"), "same attachment");
    let (_, c, _) = code(add(&r.sock, cni_port("c2", key, 10)));
    assert_eq!(c, "exists", "same name");
    let (_, c, _) = code(add(&r.sock, cni_port("c3", "p1", 10)));
    assert_eq!(c, "exists", "a port of the switch file");
    let mut other = cni_port("c4", "ns/r/net1", 10);
    other["bridge"] = json!("br9");
    assert_eq!(code(add(&r.sock, other)).1, "no_bridge");
    let (_, c, e) = code(add(&r.sock, cni_port("c5", "ns/s/net1", 4095)));
    assert!(c == "invalid" && e.contains("port.tag"), "{c} {e}");
    let mut ring = cni_port("c6", "ns/t/net1", 10);
    ring["port"]["type"] = json!("ring");
    assert_eq!(code(add(&r.sock, ring)).1, "invalid");
    for bad in ["{", r#"{"v":1,"op":"reboot"}"#, r#"{"v":9,"op":"status"}"#] {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&r.sock).unwrap();
        s.write_all(format!("{bad}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], "bad_request", "{bad}: {out}");
    }
    let list = json_req(&r.sock, &json!({"v": 1, "op": "cni_list"}));
    assert_eq!(list["ports"].as_array().map(Vec::len), Some(1), "{list}");
    // Asked about one attachment: that one's port, or none.
    let listed = list["ports"][0]["cni"]["attachment"].clone();
    let one = json_req(&r.sock, &json!({"v": 1, "op": "cni_list", "attachment": listed}));
    assert_eq!(one["ports"], list["ports"], "{one}");
    let other = json!({"container_id": "elsewhere", "ifname": listed["ifname"]});
    let none = json_req(&r.sock, &json!({"v": 1, "op": "cni_list", "attachment": other}));
    assert_eq!(none["ports"], json!([]), "{none}");

    // vhost-user: the daemon gives it a socket of its own, which exists once the port runs.
    let mut vh = cni_port("c7", "ns/vm/net1", 20);
    vh["port"] = json!({"name": "ns/vm/net1", "type": "vhostuser", "tag": 20});
    let v = add(&r.sock, vh);
    assert_eq!(v["ok"], true, "{v}");
    let sock = v["cni"]["port"]["socket"].as_str().unwrap().to_string();
    assert!(sock.starts_with(dir.join("vhost").to_str().unwrap()) && sock.len() <= 107, "{sock}");
    assert!(Path::new(&sock).exists(), "{sock}");

    // A reload of the switch file keeps the CNI ports.
    std::fs::write(dir.join("switch.yaml"), SWITCH.to_string() + "      - {name: p3, type: ring}\n").unwrap();
    let ports = r.wait_ctl(&["show", "ports"], "p3", |s| s.contains("p3"));
    assert!(ports.contains("ns/p/net1") && ports.contains("ns/vm/net1"), "{ports}");

    // A restart restores both; a tombstone left while it was down removes one.
    let (st, r) = r.terminate();
    assert!(st.success());
    drop(r);
    let tomb = dir.join("cni").join(format!("{}.del", attachment_key("c7", "net1")));
    std::fs::write(&tomb, json!({"container_id": "c7", "ifname": "net1"}).to_string()).unwrap();
    let r = Run::switch_in(dir.clone(), None);
    let ports = r.ctl(&["show", "ports"]);
    assert!(ports.contains("ns/p/net1") && !ports.contains("ns/vm/net1"), "{ports}");
    assert!(!tomb.exists());
    assert!(r.log().contains("deleted while the daemon was down"), "{}", r.log());
    // Its socket directory went with it, as a DEL would have removed it.
    let sock_dir = Path::new(&sock).parent().unwrap();
    assert!(!sock_dir.exists(), "{} outlived its tombstoned port", sock_dir.display());

    // DEL is idempotent; GC removes what is not valid.
    assert!(add(&r.sock, cni_port("c8", "ns/u/net1", 10))["ok"] == true);
    let del = |c: &str| {
        json_req(
            &r.sock,
            &json!({"v": 1, "op": "cni_del", "attachment": {"container_id": c, "ifname": "net1"}}),
        )
    };
    assert_eq!(del("c1")["removed"], json!(["ns/p/net1"]));
    assert_eq!(del("c1")["removed"], json!([]));
    // GC for one network leaves another network's ports alone.
    let mut other = cni_port("c9", "ns/o/net1", 10);
    other["network"] = json!("other-net");
    assert!(add(&r.sock, other)["ok"] == true);
    let gc_other = json!({"v": 1, "op": "cni_gc", "valid": [], "network": "no-such-net"});
    assert_eq!(json_req(&r.sock, &gc_other)["removed"], json!([]));
    let gc_other = json!({"v": 1, "op": "cni_gc", "valid": [], "network": "other-net"});
    assert_eq!(json_req(&r.sock, &gc_other)["removed"], json!(["ns/o/net1"]));
    let gc = json_req(&r.sock, &json!({"v": 1, "op": "cni_gc", "valid": []}));
    assert_eq!(gc["removed"], json!(["ns/u/net1"]), "{gc}");
    let ports = r.ctl(&["show", "ports"]);
    assert!(!ports.contains("ns/"), "{ports}");
    assert_eq!(std::fs::read_dir(dir.join("cni")).unwrap().count(), 0);
    let (st, _r) = r.terminate();
    assert!(st.success());
}

#[test]
fn a_tombstone_left_while_the_daemon_runs_is_applied() {
    use serde_json::json;
    // A DEL that found the socket not answering (the daemon starting) leaves a tombstone; the
    // running daemon applies it on its next look (every few seconds), not only at a restart.
    let r = Run::start_switch(SWITCH);
    assert_eq!(add(&r.sock, cni_port("c1", "ns/p/net1", 10))["ok"], true);
    assert!(r.ctl(&["show", "ports"]).contains("ns/p/net1"));
    let tomb = r.dir.join("cni").join(format!("{}.del", attachment_key("c1", "net1")));
    std::fs::write(&tomb, json!({"container_id": "c1", "ifname": "net1"}).to_string()).unwrap();
    let t = Instant::now();
    while r.ctl(&["show", "ports"]).contains("ns/p/net1") {
        assert!(t.elapsed() < Duration::from_secs(30), "tombstone not applied; log:\n{}", r.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tomb.exists());
    assert!(r.log().contains("deleted while the daemon was starting"), "{}", r.log());
    let list = json_req(&r.sock, &json!({"v": 1, "op": "cni_list"}));
    assert_eq!(list["ports"], json!([]), "{list}");
}

#[test]
fn an_add_after_a_tombstoned_del_of_the_same_attachment_keeps_its_port() {
    use serde_json::json;
    // A DEL that found the socket not answering left a tombstone the daemon has not applied
    // yet; then the runtime adds the same attachment again (it runs one container's DEL and
    // ADD in order). The tombstone is older than the ADD: it must not remove the new port.
    let r = Run::start_switch(SWITCH);
    let tomb = |c: &str| r.dir.join("cni").join(format!("{}.del", attachment_key(c, "net1")));
    let write_tomb =
        |c: &str| std::fs::write(tomb(c), json!({"container_id": c, "ifname": "net1"}).to_string()).unwrap();
    write_tomb("c1");
    assert_eq!(add(&r.sock, cni_port("c1", "ns/p/net1", 10))["ok"], true);
    // The daemon's next look at the state directory (every 5 s) finds nothing to apply.
    std::thread::sleep(Duration::from_secs(6));
    let ports = r.ctl(&["show", "ports"]);
    assert!(
        ports.contains("ns/p/net1"),
        "the older tombstone removed the new port: {ports}\nlog:\n{}",
        r.log()
    );
    assert!(!tomb("c1").exists());
    // The port the tombstoned DEL did not reach is removed before its attachment's new ADD
    // (rather than the ADD refused as "exists" until the daemon's next look).
    assert_eq!(add(&r.sock, cni_port("c2", "ns/q/net1", 10))["ok"], true);
    write_tomb("c2");
    let again = add(&r.sock, cni_port("c2", "ns/q/net1", 10));
    assert_eq!(again["ok"], true, "{again}");
    assert!(r.ctl(&["show", "ports"]).contains("ns/q/net1"));
}

#[test]
fn run_kube_takes_the_state_from_the_api_server() {
    let server = apiserver::ApiServer::start(apiserver::example_objects(), Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, server.kubeconfig_yaml()).unwrap();
    let over = dir.path().join("run.yaml");
    std::fs::write(&over, "ports:\n  eth1: {type: ring}\n").unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["--kube".into(), "--node".into(), "worker-1".into()];
    args.extend(["--kubeconfig".into(), kc.into_os_string(), "--config".into(), over.into_os_string()]);
    args.extend(["--vm-ports".into(), "ring".into()]);
    let r = Run::spawn(dir.path().to_path_buf(), Some(dir), args);
    r.wait_ctl(&["show", "ports"], "the example's ports", |s| {
        ["eth1", "tenant-a/vm-a/data", "tenant-a/vm-a/ext", "tenant-a/vm-b/data"]
            .iter()
            .all(|p| s.contains(p))
    });
    server.put(apiserver::vmi("vm-c", "vlan100", "02:00:00:00:0c:01"));
    r.wait_ctl(&["show", "ports"], "vm-c's port", |s| s.contains("tenant-a/vm-c/data"));
    assert!(r.log().contains("port tenant-a/vm-c/data added: access VLAN 100 on br1"), "{}", r.log());
    let (st, _r) = r.terminate();
    assert!(st.success(), "{st:?}");

    // A kubeconfig that does not exist: an error at start, naming it.
    let out = Command::new(BIN)
        .args(["run", "--kube", "--node", "n", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kubeconfig /nonexistent/kubeconfig"), "{err}");
}

/// A raw request on the control socket: the answer, read to the end.
fn raw_request(sock: &Path, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Bad requests on the control socket are answered with an error and leave it serving: a
/// frame with a non-ASCII character (it used to panic the socket's thread: every later `ctl`
/// and CNI call refused while `/healthz` stayed 200, and `ctl` printed nothing and exited 0),
/// a request that is not UTF-8 (it used to get no answer). A client that trickles its request
/// a byte a second holds the socket at most 5 s (it used to hold it for as long as it kept
/// sending, and shutdown waited for it).
#[test]
fn the_control_socket_survives_bad_and_slow_clients() {
    use std::io::Write;
    let r = Run::start_switch(SWITCH);
    r.wait_ctl(&["show", "ports"], "the ports", |s| s.contains("p1"));
    let out =
        Command::new(BIN).args(["ctl", "--socket"]).arg(&r.sock).args(["trace", "p1", "a\u{e9}1"]).output();
    let out = out.unwrap();
    assert!(!out.status.success(), "ctl trace with a non-hex character succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not hex"), "{out:?}");
    assert_eq!(raw_request(&r.sock, b"show \xff ports\n"), "error: the request is not UTF-8\n");
    assert!(r.ctl(&["show", "ports"]).contains("p1"), "the socket stopped serving; log:\n{}", r.log());

    // A client that sends a byte a second and never ends its line.
    let sock = r.sock.clone();
    let trickler = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        for _ in 0..20 {
            if s.write_all(b"s").is_err() {
                return true; // closed by the daemon
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert!(r.ctl(&["help"]).contains("show ports"));
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(7), "a trickling client held the socket for {waited:?}");
    assert!(trickler.join().unwrap(), "the trickling client was never cut off");
}

/// A second `run` on the socket of a running one is refused before it opens a port: it used to
/// reconcile first, so its vhost-user server port replaced the running one's socket file, and
/// removed it on the way out; QEMU could never reconnect to the running switch.
#[test]
fn a_second_run_on_the_same_socket_leaves_the_first_alone() {
    let dir = tempfile::tempdir().unwrap();
    let vsock = dir.path().join("v0.sock");
    let yaml = format!(
        "bridges:\n  - name: br0\n    ports:\n      - {{name: v0, type: vhostuser, socket: {}, mode: server}}\n",
        vsock.display()
    );
    std::fs::write(dir.path().join("switch.yaml"), &yaml).unwrap();
    let first = Run::switch_in(dir.path().to_path_buf(), None);
    first.wait_ctl(&["show", "ports"], "v0", |s| s.contains("v0"));
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = ino(&vsock);
    // The second: same socket (RunProcess puts it in its directory), same switch file.
    let out = Command::new(BIN)
        .arg("run")
        .arg("--switch")
        .arg(dir.path().join("switch.yaml"))
        .arg("--socket")
        .arg(&first.sock)
        .arg("--cni-state")
        .arg(dir.path().join("cni2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another switchyard is listening there"), "{err}");
    assert!(vsock.exists(), "the running switch's vhost-user socket is gone");
    assert_eq!(ino(&vsock), before, "the running switch's vhost-user socket was replaced");
    assert!(first.ctl(&["show", "ports"]).contains("v0"));
    drop(first);
}

/// A `--vhost-dir` too long for a VM port's socket address is refused at start, naming the
/// option: it used to start and then fail every plan as a whole (a VM port's socket path no
/// configuration accepts), leaving the node with no port at all, its uplinks included.
#[test]
fn a_vhost_dir_too_long_for_a_socket_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("/tmp/{}", "d".repeat(90));
    let sock = dir.path().join("ctl.sock");
    let run = ["run", "--switch", "/nonexistent.yaml", "--socket", sock.to_str().unwrap()];
    let plan = ["plan", "--state", "/nonexistent", "--node", "n"];
    for cmd in [&run[..], &plan[..]] {
        let out = Command::new(BIN).args(cmd).args(["--vhost-dir", &long]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd:?} started");
        assert!(err.contains("--vhost-dir") && err.contains("too long"), "{cmd:?}: {err}");
    }
}

/// The port of `name` in the running configuration (`ctl show config`).
fn running_port(r: &Run, name: &str) -> Option<switchyard_dataplane::config::PortConfig> {
    let cfg = switchyard_dataplane::config::Config::from_yaml_str(&r.ctl(&["show", "config"])).unwrap();
    cfg.bridges.into_iter().flat_map(|b| b.ports).find(|p| p.name == name)
}

/// An untagged IPv4 TCP SYN to port 8080, as `ctl trace` takes it (hex).
fn syn(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> String {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(40000, 8080, 1, 1000)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// The KubeVirt hand-off under `run --kube`: a VMI on a NAD of switchyard's CNI plugin,
/// selected by a MultiNetworkPolicy; the CNI ADD of its virt-launcher pod (pod name from
/// `generateName`, interface by KubeVirt's hashed scheme) gets a port that runs with the
/// policy and the IP spoof filter of the VMI's interface. Ports of pods that are no VMI's run
/// as before (docs/policy.md, "Ports attached by switchyard's CNI plugin").
#[test]
fn run_kube_gives_a_vms_cni_port_its_policy_and_spoof_filter() {
    use serde_json::json;
    let mut objects = apiserver::example_objects();
    let mut more = apiserver::objects_of_yaml(
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: sy, namespace: tenant-a}
spec:
  config: '{"cniVersion":"1.0.0","name":"sy","type":"switchyard","bridge":"br1","vlan":300,"mode":"vhostuser"}'
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vm-s, namespace: tenant-a, labels: {app: web}}
spec:
  domain: {devices: {interfaces: [{name: blue, binding: {name: switchyard}, macAddress: "02:00:00:00:5e:01"}]}}
  networks: [{name: blue, multus: {networkName: sy}}]
status:
  nodeName: worker-1
  interfaces: [{name: blue, ipAddress: 10.9.0.5}]
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vm-p, namespace: tenant-a, labels: {role: client}}
spec:
  domain: {devices: {interfaces: [{name: blue, binding: {name: switchyard}}]}}
  networks: [{name: blue, multus: {networkName: sy}}]
status:
  nodeName: worker-1
  interfaces: [{name: blue, ipAddress: 10.9.0.6}]
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: web-in
  namespace: tenant-a
  annotations: {k8s.v1.cni.cncf.io/policy-for: tenant-a/sy}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
      ports: [{protocol: TCP, port: 8080}]
"#,
    );
    // The node agent watches the VMIs labelled with a node name (as virt-controller labels them).
    more.iter_mut().for_each(apiserver::label_vmi);
    objects.extend(more);
    let server = apiserver::ApiServer::start(objects, Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, server.kubeconfig_yaml()).unwrap();
    let over = dir.path().join("run.yaml");
    std::fs::write(&over, "ports:\n  eth1: {type: ring}\n").unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["--kube".into(), "--node".into(), "worker-1".into()];
    args.extend(["--kubeconfig".into(), kc.into_os_string(), "--config".into(), over.into_os_string()]);
    args.extend(["--vm-ports".into(), "ring".into()]);
    let r = Run::spawn(dir.path().to_path_buf(), Some(dir), args);
    r.wait_ctl(&["show", "problems"], "vm-s's subject", |s| s.contains("virt-launcher-vm-s-"));

    // KubeVirt's hashed pod interface name of network `blue`: "pod" + sha256("blue")[..11].
    let ifname = "pod16477688c0e";
    let cni = |container: &str, pod: Option<&str>, ifname: &str, mac: &str| {
        let mut a = json!({"container_id": container, "ifname": ifname});
        if let Some(pod) = pod {
            a["pod_namespace"] = json!("tenant-a");
            a["pod_name"] = json!(pod);
        }
        let name = format!("tenant-a/{}/{ifname}", pod.unwrap_or(container));
        json!({
            "bridge": "br1", "attachment": a, "mac": mac,
            "port": {"name": name, "type": "vhostuser", "tag": 300, "allowed_macs": [mac]},
        })
    };
    let vm_port = format!("tenant-a/virt-launcher-vm-s-abcde/{ifname}");
    let a = add(&r.sock, cni("c-vm", Some("virt-launcher-vm-s-abcde"), ifname, "02:00:00:00:5e:01"));
    assert_eq!(a["ok"], true, "{a}");
    // Bad input: a pod that is no virt-launcher, an interface no scheme gives, no pod
    // arguments. Each runs as before: no policy, no IP spoof filter.
    for (c, pod, ifn) in [
        ("c-pod", Some("web-7d4f9"), ifname),
        ("c-if", Some("virt-launcher-vm-s-fghij"), "eth7"),
        ("c-anon", None, ifname),
    ] {
        let a = add(&r.sock, cni(c, pod, ifn, "02:00:00:00:5e:02"));
        assert_eq!(a["ok"], true, "{a}");
    }

    // From its first apply the VM's port runs with the policy and its address.
    let p = running_port(&r, &vm_port).expect("the VM's CNI port runs");
    let pol = p
        .policy
        .as_ref()
        .unwrap_or_else(|| panic!("no policy on {vm_port}:\n{}", r.ctl(&["show", "config"])));
    let ingress = pol.ingress.as_ref().expect("ingress isolated");
    assert_eq!(ingress.rules.len(), 1, "{pol:?}");
    assert_eq!(ingress.rules[0].name, "tenant-a/web-in ingress[0]");
    let peers = ingress.rules[0].peers.as_ref().expect("peers");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].cidr.to_string(), "10.9.0.6/32");
    assert_eq!(p.allowed_ips, Some(vec!["10.9.0.5".parse().unwrap()]), "MAC checked: no link-local listed");
    for other in [
        format!("tenant-a/web-7d4f9/{ifname}"),
        "tenant-a/virt-launcher-vm-s-fghij/eth7".to_string(),
        format!("tenant-a/c-anon/{ifname}"),
    ] {
        let q = running_port(&r, &other).unwrap_or_else(|| panic!("{other} runs"));
        assert!(q.policy.is_none() && q.allowed_ips.is_none(), "{other}: {q:?}");
    }

    // A spoofed source is dropped under its counter; its own address passes the filter.
    let (vm_mac, other_mac) = ([2, 0, 0, 0, 0x5e, 1], [2, 0, 0, 0, 0x5e, 2]);
    let t = r.ctl(&["trace", &vm_port, &syn(vm_mac, other_mac, [10, 9, 0, 99], [10, 9, 0, 7])]);
    assert!(t.contains("-> drop spoofed_src_ip"), "{t}");
    let t = r.ctl(&["trace", &vm_port, &syn(vm_mac, other_mac, [10, 9, 0, 5], [10, 9, 0, 7])]);
    assert!(!t.contains("spoofed_src_ip"), "{t}");
    // Ingress (the VM's MAC is not learned yet: the SYN floods): the policy leaves the VM's
    // port out of a flood from a pod that is no peer, and lets the peer VM's SYN to 8080 in.
    let t = r.ctl(&[
        "trace",
        &format!("tenant-a/web-7d4f9/{ifname}"),
        &syn(other_mac, vm_mac, [10, 9, 0, 7], [10, 9, 0, 5]),
    ]);
    assert!(t.contains("-> flood ") && !t.contains(&vm_port), "{t}");
    let a = add(&r.sock, cni("c-peer", Some("virt-launcher-vm-p-qwert"), ifname, "02:00:00:00:5e:03"));
    assert_eq!(a["ok"], true, "{a}");
    let peer_port = format!("tenant-a/virt-launcher-vm-p-qwert/{ifname}");
    let peer = running_port(&r, &peer_port).expect("the peer VM's port runs");
    assert_eq!(
        peer.allowed_ips,
        Some(vec!["10.9.0.6".parse().unwrap()]),
        "on the policy's network: filtered"
    );
    let peer_mac = [2, 0, 0, 0, 0x5e, 3];
    let t = r.ctl(&["trace", &peer_port, &syn(peer_mac, vm_mac, [10, 9, 0, 6], [10, 9, 0, 5])]);
    // (A flood names no one rule: `[?]`.)
    assert!(t.contains("policy=new ingress-allowed-by=") && t.contains(&vm_port), "{t}");

    // An ADD before its VMI is seen: the port runs unfiltered until the reconcile that sees
    // the VMI, which applies in full and gives it the policy.
    let late_port = format!("tenant-a/virt-launcher-vm-l-zzzzz/{ifname}");
    let a = add(&r.sock, cni("c-late", Some("virt-launcher-vm-l-zzzzz"), ifname, "02:00:00:00:5e:04"));
    assert_eq!(a["ok"], true, "{a}");
    assert!(running_port(&r, &late_port).is_some_and(|p| p.policy.is_none()));
    let mut late = apiserver::objects_of_yaml(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vm-l, namespace: tenant-a, labels: {app: web}}
spec:
  domain: {devices: {interfaces: [{name: blue, binding: {name: switchyard}}]}}
  networks: [{name: blue, multus: {networkName: sy}}]
status:
  nodeName: worker-1
  interfaces: [{name: blue, ipAddress: 10.9.0.8}]
"#,
    );
    apiserver::label_vmi(&mut late[0]);
    server.put(late.remove(0));
    r.wait_for("vm-l's policy on its CNI port", || {
        running_port(&r, &late_port).is_some_and(|p| p.policy.is_some() && p.allowed_ips.is_some())
    });

    // The policy goes: the next reconcile re-applies the CNI port without it.
    assert!(server.delete("MultiNetworkPolicy", "tenant-a", "web-in"));
    r.wait_for("the policy gone from the CNI port", || {
        running_port(&r, &vm_port).is_some_and(|p| p.policy.is_none())
    });
    let (st, _r) = r.terminate();
    assert!(st.success(), "{st:?}");
}

/// Frames flooded to a ring port whose far end never takes them are given back to their pool
/// when `run` stops (SIGTERM): no pool outlives its buffers, none is leaked, and the log says
/// how many were freed.
#[test]
fn run_frees_what_a_ring_held_for_its_far_end_on_sigterm() {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let mut w =
        PcapWriter::with_header(std::fs::File::create(&input).unwrap(), PcapHeader::default()).unwrap();
    let f = testkit::frame::Frame::new([0xff; 6], [2, 0, 0, 0, 0, 1]).ethertype(0x0800).pad(60, 0).build();
    for i in 0..3u64 {
        w.write_packet(&PcapPacket::new(Duration::from_micros(i), f.len() as u32, &f)).unwrap();
    }
    drop(w);
    let yaml = format!(
        "bridges:\n  - name: br0\n    ports:\n      - {{name: p0, type: pcap, rx_pcap: {}}}\n      - {{name: p2, type: ring}}\n",
        input.display()
    );
    std::fs::write(dir.path().join("switch.yaml"), yaml).unwrap();
    let r = Run::switch_in(dir.path().to_path_buf(), Some(dir));
    r.wait_ctl(&["show", "stats"], "the three frames flooded to p2", |s| {
        s.lines().any(|l| l.starts_with("port p2 ") && l.contains("tx 3 pkts"))
    });
    let (st, r) = r.terminate();
    assert!(st.success(), "exit status {st:?}");
    let log = r.log();
    assert!(!log.contains("buffers still out"), "a pool outlived its buffers:\n{log}");
    assert!(log.contains("freed 3 frame(s) that ring ports held"), "{log}");
}
