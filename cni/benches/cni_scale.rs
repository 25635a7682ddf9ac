//! The CNI plugin at scale, against a real `switchyard run` (release build), the plugin run as
//! Multus runs it (a process per verb, the spec's environment variables, the config on stdin;
//! veth mode, no IPAM), one network namespace per pod. Run: benches/cni-scale.sh
//!
//! 1. ADD and DEL latency with `SY_CNI_PORTS` (500) ports attached: that many pods are added
//!    (their latencies are printed per hundred, the "ramp"), then `SY_CNI_SAMPLES` (200) times a
//!    new pod is added and deleted again, each verb timed from the plugin's spawn to its exit.
//!    The issue's goal: median <= 20 ms, p99 <= 50 ms, for each.
//! 2. Daemon restart with `SY_CNI_RESTART_PORTS` (1000) CNI ports, on a node of its own: one pod
//!    is added through the plugin; its state file is the template of the others, whose veths
//!    (container end in a pod of its own, with the MAC its state file allows) and state files
//!    this bench makes itself with the daemon stopped, since ADD through the daemon is too slow
//!    at that scale to set 1000 up in reasonable time (part 1's figures). Then `SY_CNI_RESTARTS`
//!    (3) times the daemon is started (stopped first, with SIGTERM, after the first time).
//!    Timed from the spawn: the control socket answering, `status` ready, `cni_list`
//!    listing every port, and "forwarding": every 20 ms a broadcast probe frame is sent from
//!    the first pod's interface (inside the pod) and one from the last pod's; the time is when
//!    every other pod has received one of the first pod's probes (each restored port transmits)
//!    and the first pod one of the last pod's (a restored port receives). The issue's goal: 2 s.
//!    Probes that never all arrive (in 120 s) print as "never", not as a time.
//!
//! Prints the machine's state, every figure and one JSON line. `SY_CNI_BENCH=latency` or
//! `restart` runs only that part.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(unused_imports)]
#[path = "../../ports/tests/kports_common/mod.rs"]
mod kports_common;

use common::{Node, Pod};
use kports_common::{frame, has_marker, RawSock};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_cni::attach::host_ifname_of;
use switchyard_control::cni::attachment_key;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, p99 and max of `v` (sorted here), in ms.
fn stats(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let pct =
        |p: f64| v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
    (ms(pct(0.5)), ms(pct(0.99)), ms(v.last().copied().unwrap_or_default()))
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine_state(when: &str) {
    println!(
        "machine ({when}): {} | {} cpus | load {} | MemAvailable {} | kernel {}",
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        sh("nproc"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh("grep MemAvailable /proc/meminfo | awk '{print $2/1024 \" MiB\"}'"),
        sh("uname -r"),
    );
}

/// The plugin's config: veth mode (the default), an access VLAN, no IPAM.
fn conf_of(node: &Node) -> Value {
    node.conf("1.0.0", "bench", json!({"vlan": 10}))
}

/// A pod attached through the plugin: its namespace and the container end's MAC.
struct Attached {
    pod: Pod,
    mac: [u8; 6],
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("a MAC");
    }
    m
}

/// ADD of `pod`'s net1, timed from the plugin's spawn to its exit; the container end's MAC.
fn add(node: &Node, conf: &Value, pod: &Pod) -> (Duration, [u8; 6]) {
    let t = Instant::now();
    let r = node.plugin_for("ADD", pod, "net1", conf);
    let took = t.elapsed();
    let res = r.ok();
    let mac = res["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "net1"))
        .and_then(|i| i["mac"].as_str())
        .unwrap_or_else(|| panic!("no net1 in {res}"));
    (took, parse_mac(mac))
}

fn del(node: &Node, conf: &Value, pod: &Pod) -> Duration {
    let t = Instant::now();
    let r = node.plugin_for("DEL", pod, "net1", conf);
    let took = t.elapsed();
    r.ok();
    took
}

/// Adds pods until `pods` has `n`; prints the latencies per hundred.
fn ramp(node: &Node, conf: &Value, pods: &mut Vec<Attached>, n: usize) -> Vec<Duration> {
    let mut all = Vec::new();
    let mut chunk = Vec::new();
    while pods.len() < n {
        let pod = Pod::new(&format!("b{}", pods.len()));
        let (took, mac) = add(node, conf, &pod);
        pods.push(Attached { pod, mac });
        chunk.push(took);
        all.push(took);
        if pods.len().is_multiple_of(100) || pods.len() == n {
            let (med, p99, max) = stats(&mut chunk);
            println!(
                "  ramp: ADD of ports {:>4}..{:>4}: median {med:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
                pods.len() - chunk.len(),
                pods.len() - 1
            );
            chunk.clear();
        }
    }
    all
}

/// The probe sockets: one in every pod, on net1.
fn open_probes(pods: &[Attached]) -> Vec<RawSock> {
    pods.iter().map(|a| RawSock::open(Some(&a.pod.ns), "net1").expect("a raw socket in the pod")).collect()
}

/// Drains every socket; marks the pods that got a probe of `first` (the first pod: one of
/// `last`).
fn drain(socks: &mut [RawSock], got: &mut [bool], first: &str, last: &str) {
    for (i, s) in socks.iter_mut().enumerate() {
        let want = if i == 0 { last } else { first };
        while let Some(f) = s.recv_matching(Duration::ZERO, |f| has_marker(f, "syprobe")) {
            if has_marker(&f, want) {
                got[i] = true;
            }
        }
    }
}

/// Sends probes every 20 ms from the first and the last pod until every pod got one (see the
/// module's docs) or `limit` passes: when that happened, from `t0`.
fn probe_all(
    pods: &[Attached],
    socks: &mut [RawSock],
    round: usize,
    t0: Instant,
    limit: Duration,
) -> Option<Duration> {
    let n = pods.len();
    let (first, last) = (format!("syprobe-{round}-f"), format!("syprobe-{round}-l"));
    let mut got = vec![false; n];
    let mut seq = 0u32;
    loop {
        for (who, tag) in [(0, &first), (n - 1, &last)] {
            let f = frame([0xff; 6], pods[who].mac, &[], &format!("{tag}-{seq}"), 64);
            socks[who].send(&f);
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(20));
        drain(socks, &mut got, &first, &last);
        if got.iter().all(|g| *g) {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            let missing = got.iter().filter(|g| !**g).count();
            println!("  probes: {missing} of {n} pods got none in {limit:?}");
            return None;
        }
    }
}

fn daemon_rss(node: &Node) -> String {
    let pid = node.daemon_pid().expect("the daemon runs");
    sh(&format!("grep VmRSS /proc/{pid}/status | awk '{{print $2/1024 \" MiB\"}}'"))
}

fn main() {
    if let Some(why) = kports_common::skip_reason() {
        eprintln!("cni_scale: cannot run here: {why}");
        std::process::exit(1);
    }
    let which = std::env::var("SY_CNI_BENCH").unwrap_or_else(|_| "all".into());
    let n_lat = env_or("SY_CNI_PORTS", 500);
    let samples = env_or("SY_CNI_SAMPLES", 200);
    let n_rst = env_or("SY_CNI_RESTART_PORTS", 1000);
    let restarts = env_or("SY_CNI_RESTARTS", 3);
    println!(
        "cni_scale: SY_CNI_BENCH={which} SY_CNI_PORTS={n_lat} SY_CNI_SAMPLES={samples} \
         SY_CNI_RESTART_PORTS={n_rst} SY_CNI_RESTARTS={restarts}; plugin {}; daemon {}; commit {}",
        common::PLUGIN,
        common::daemon_bin().display(),
        sh("git rev-parse --short HEAD"),
    );
    machine_state("start");
    let mut node = Node::start();
    let conf = conf_of(&node);
    println!("plugin config: {conf}");
    let mut pods: Vec<Attached> = Vec::new();
    let mut out = serde_json::Map::new();

    if which == "all" || which == "latency" {
        println!("ADD/DEL latency with {n_lat} ports attached ({samples} samples):");
        let mut r = ramp(&node, &conf, &mut pods, n_lat);
        let (med, p99, max) = stats(&mut r);
        println!("  ramp 0..{n_lat}: ADD median {med:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
        machine_state(&format!("{n_lat} ports"));
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let pod = Pod::new(&format!("s{i}"));
            adds.push(add(&node, &conf, &pod).0);
            dels.push(del(&node, &conf, &pod));
        }
        let ports = node.cni_ports().len();
        assert_eq!(ports, n_lat, "the samples left ports behind");
        let (am, ap, ax) = stats(&mut adds);
        let (dm, dp, dx) = stats(&mut dels);
        println!("  ADD with {n_lat} attached: median {am:.1} ms, p99 {ap:.1} ms, max {ax:.1} ms (goal: median <= 20, p99 <= 50)");
        println!("  DEL with {n_lat} attached: median {dm:.1} ms, p99 {dp:.1} ms, max {dx:.1} ms (goal: median <= 20, p99 <= 50)");
        println!("  daemon RSS: {}", daemon_rss(&node));
        out.insert(
            "latency".into(),
            json!({"ports": n_lat, "samples": samples,
                   "add_median_ms": am, "add_p99_ms": ap, "add_max_ms": ax,
                   "del_median_ms": dm, "del_p99_ms": dp, "del_max_ms": dx}),
        );
    }

    if which == "all" || which == "restart" {
        // A node of its own: part 1's daemon and pods go first.
        node.stop_daemon_within(Duration::from_secs(120));
        drop(std::mem::take(&mut pods));
        println!("daemon restart with {n_rst} CNI ports ({restarts} starts):");
        let mut node = Node::start();
        let first = Pod::new("r0");
        let (_, mac) = add(&node, &conf_of(&node), &first);
        pods.push(Attached { pod: first, mac });
        node.stop_daemon();
        let files = node.state_files();
        assert_eq!(files.len(), 1, "{files:?}");
        let template: Value =
            serde_json::from_slice(&std::fs::read(node.state.join(&files[0])).unwrap()).unwrap();
        let t = Instant::now();
        while pods.len() < n_rst {
            let i = pods.len();
            let pod = Pod::new(&format!("r{i}"));
            let mac = [0x02, 0x5b, 0, 0, (i >> 8) as u8, i as u8];
            let mac_s = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let key = attachment_key(&pod.id, "net1");
            let host = host_ifname_of(&key);
            for args in [
                vec![
                    "link", "add", &host, "type", "veth", "peer", "name", "net1", "address", &mac_s, "netns",
                    &pod.ns,
                ],
                vec!["link", "set", &host, "up"],
                vec!["-n", &pod.ns, "link", "set", "net1", "up"],
            ] {
                kports_common::ip(&args).expect("a pod's veth");
            }
            let mut f = template.clone();
            f["attachment"]["container_id"] = json!(pod.id);
            f["attachment"]["netns"] = json!(pod.path);
            f["attachment"]["pod_name"] = json!(pod.name);
            f["port"]["name"] = json!(pod.port("net1"));
            f["port"]["iface"] = json!(host);
            f["port"]["allowed_macs"] = json!([mac_s]);
            f["mac"] = json!(mac_s);
            std::fs::write(node.state.join(format!("{key}.json")), serde_json::to_vec_pretty(&f).unwrap())
                .unwrap();
            pods.push(Attached { pod, mac });
        }
        println!("  {} pods, veths and state files made in {:.1} s", n_rst - 1, t.elapsed().as_secs_f64());
        machine_state(&format!("{n_rst} ports, daemon stopped"));
        let mut socks = open_probes(&pods);
        let mut runs = Vec::new();
        for round in 1..=restarts {
            let mut stop = 0.0;
            if round > 1 {
                let t = Instant::now();
                node.stop_daemon_within(Duration::from_secs(120));
                stop = ms(t.elapsed());
            }
            let t0 = Instant::now();
            node.spawn_daemon();
            let (mut sock, mut ready, mut listed) = (None, None, None);
            let limit = Duration::from_secs(120);
            while listed.is_none() {
                assert!(t0.elapsed() < limit, "no full cni_list in {limit:?}; log:\n{}", node.daemon_log());
                if let Ok(v) = node.try_request(&json!({"v": 1, "op": "status"})) {
                    sock.get_or_insert(t0.elapsed());
                    if v["ready"] == true {
                        ready.get_or_insert(t0.elapsed());
                        let l = node.request(&json!({"v": 1, "op": "cni_list"}));
                        if l["ports"].as_array().map(Vec::len) == Some(n_rst) {
                            listed = Some(t0.elapsed());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Counted from the spawn, like the others.
            let fwd = probe_all(&pods, &mut socks, round, t0, limit);
            let (sock, ready, listed) = (sock.unwrap(), ready.unwrap(), listed.unwrap());
            let fwd_ms = fwd.map(ms);
            println!(
                "  start {round}: stop before it {stop:.0} ms; from the spawn: socket {:.0} ms, ready {:.0} ms, \
                 all {n_rst} listed {:.0} ms, all forwarding {} (goal 2000 ms); daemon RSS {}",
                ms(sock),
                ms(ready),
                ms(listed),
                fwd_ms.map_or("never".to_string(), |f| format!("{f:.0} ms")),
                daemon_rss(&node),
            );
            runs.push(json!({"stop_ms": stop, "socket_ms": ms(sock), "ready_ms": ms(ready),
                             "listed_ms": ms(listed), "forwarding_ms": fwd_ms}));
        }
        machine_state("end");
        out.insert("restart".into(), json!({"ports": n_rst, "runs": runs}));
        println!("{}", Value::Object(out));
        node.stop_daemon_within(Duration::from_secs(120));
        drop(socks);
        drop(pods);
        return;
    }
    println!("{}", Value::Object(out));
    // The daemon goes first (so that it does not watch its interfaces vanish), then the pods.
    node.stop_daemon_within(Duration::from_secs(120));
    drop(pods);
}
