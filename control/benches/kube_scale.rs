//! The node agent's numbers on the Kubernetes API (issue 14): with 10,000 VMIs of 2 secondary
//! interfaces each on this node (20,000 VM ports, ring backends, on 4 bridges from 20 NADs),
//! served by the API server double of control/tests/apiserver in a child process (so this
//! process is the agent alone):
//!
//! - initial sync: from the controller's start to the 20,000 ports live in the switch (the
//!   workers applied the snapshot), and the agent's resident memory (VmRSS, VmHWM) then;
//! - watch event to live: the time from the double taking a change (a VMI added, then deleted
//!   again; the double answers the bench once the change is stored) to the reconcile that made
//!   it live in the switch, `SY_EVENTS` times (default 200): median, p90, p99, max.
//!
//! - the control thread's CPU time per event (its thread CPU clock between two reconciles),
//!   which the machine's load does not stretch as it does the wall time;
//! - the resident memory of the 20,000 ring backends alone (a child process opens them from a
//!   switch configuration, no control plane): the test backend's share of the agent's RSS. A
//!   ring port allocates its queues on its first frame (as a vhost-user port maps guest
//!   memory only once a guest connects), so these idle ports hold no frame slots;
//! - where a reconcile's time goes: the phases of the initial sync's reconcile, and each
//!   phase's median over the events' reconciles.
//!
//! Asserts nothing about time. Run: `cargo bench -p switchyard-control --bench kube_scale`
//! (`SY_VMIS=N` for another size).

#[path = "../tests/apiserver/mod.rs"]
#[allow(dead_code, clippy::all)]
mod apiserver;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_control::api_source::ApiOptions;
use switchyard_control::controller::{Controller, ControllerOptions};
use switchyard_control::runtime::{Runtime, RuntimeOptions, VmPorts};

const NODE: &str = "n0";

fn nad(i: u32) -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": format!("net{i}"), "namespace": "ns"},
        "spec": {"config": format!(r#"{{"cniVersion":"0.3.1","name":"net{i}","type":"bridge","bridge":"br{}","vlan":{}}}"#, i % 4, 100 + i)}})
}

fn vmi(i: u32) -> Value {
    let mac = |k: u32| format!("02:{:02x}:{:02x}:{:02x}:00:{k:02x}", i >> 16, (i >> 8) & 0xff, i & 0xff);
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": format!("vm{i}"), "namespace": "ns", "labels": {"kubevirt.io/nodeName": NODE}},
        "spec": {"domain": {"devices": {"interfaces": [
                    {"name": "default", "masquerade": {}},
                    {"name": "a", "bridge": {}, "macAddress": mac(1)},
                    {"name": "b", "bridge": {}, "macAddress": mac(2)}]}},
                 "networks": [{"name": "default", "pod": {}},
                    {"name": "a", "multus": {"networkName": format!("net{}", i % 20)}},
                    {"name": "b", "multus": {"networkName": format!("net{}", (i + 7) % 20)}}]},
        "status": {"nodeName": NODE}})
}

/// The child: serves the objects, prints its URL, then takes `put <json>` / `delete <ns>
/// <name>` lines on stdin, answering `ok` once each is stored.
fn serve(vmis: u32) {
    let mut objs: Vec<Value> = (0..20).map(nad).collect();
    objs.extend((0..vmis).map(vmi));
    objs.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}));
    let server = apiserver::ApiServer::start(objs, Duration::from_secs(1));
    println!("{}", server.url());
    let mut out = std::io::stdout();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        match line.split_once(' ') {
            Some(("put", j)) => {
                server.put(serde_json::from_str(j).unwrap());
            }
            Some(("delete", rest)) => {
                let (ns, name) = rest.split_once(' ').unwrap();
                server.delete("VirtualMachineInstance", ns, name);
            }
            _ => return,
        }
        writeln!(out, "ok").unwrap();
        out.flush().unwrap();
    }
}

/// The child of `SY_KUBE_RINGS`: the same 20,000 ring ports opened from a configuration,
/// without the control plane; prints its VmRSS in KiB.
fn rings_alone(vmis: u32) {
    use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType};
    let mut bridges: Vec<BridgeConfig> =
        (0..4).map(|b| BridgeConfig::new(format!("br{b}"), vec![])).collect();
    for i in 0..vmis {
        for (k, net) in [(1, i % 20), (2, (i + 7) % 20)] {
            let name = format!("ns/vm{i}/{}", if k == 1 { "a" } else { "b" });
            bridges[(net % 4) as usize].ports.push(PortConfig {
                name,
                kind: Some(PortType::Ring),
                ..Default::default()
            });
        }
    }
    let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
    rt.apply(&Config { bridges }, &|_| None).unwrap();
    println!("{}", rss().0);
    rt.stop();
}

/// A reconcile's phases in words: `plan 1.2 ms, compile 3.4 ms, ...`.
fn words(phases: &[(&'static str, Duration)]) -> String {
    let w: Vec<String> = phases.iter().map(|(n, d)| format!("{n} {:.1} ms", d.as_secs_f64() * 1e3)).collect();
    w.join(", ")
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) of this process's threads named `name`, from /proc.
fn threads_cpu(name: &str) -> Duration {
    let tick = 1.0 / 100.0; // USER_HZ
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ...`: fields after the comm's closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        if !head.ends_with(&format!("({name}")) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (t(11) + t(12)) * tick;
    }
    Duration::from_secs_f64(total)
}

/// What malloc hands out now and what it holds from the system (arena and mmapped chunks), in
/// KiB: the part of the RSS that is freed memory kept by the allocator.
fn malloc_kib() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's statistics and returns them by value.
    let m = unsafe { libc::mallinfo2() };
    ((m.uordblks + m.hblkhd) as u64 / 1024, (m.arena + m.hblkhd) as u64 / 1024)
}

fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (kb("VmRSS:").unwrap_or(0), kb("VmHWM:").unwrap_or(0))
}

fn main() {
    let vmis: u32 = std::env::var("SY_VMIS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    if std::env::var("SY_KUBE_DOUBLE").is_ok() {
        return serve(vmis);
    }
    if std::env::var("SY_KUBE_RINGS").is_ok() {
        return rings_alone(vmis);
    }
    let rings = Command::new(std::env::current_exe().unwrap())
        .env("SY_KUBE_RINGS", "1")
        .env("SY_VMIS", vmis.to_string())
        .output()
        .unwrap();
    let rings_kib: u64 = String::from_utf8_lossy(&rings.stdout).trim().parse().unwrap_or(0);
    let events: usize = std::env::var("SY_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("SY_KUBE_DOUBLE", "1")
        .env("SY_VMIS", vmis.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_double = child.stdin.take().unwrap();
    let mut from_double = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    from_double.read_line(&mut url).unwrap();
    let (rss0, _) = rss();

    let opts = RuntimeOptions { vm_ports: VmPorts::Ring, ..Default::default() };
    let rt = Arc::new(Mutex::new(Runtime::start(opts).unwrap()));
    let mut api = ApiOptions::new(NODE);
    api.config = Some(kube::Config::new(url.trim().parse().unwrap()));
    let mut ctl = Controller::new(ControllerOptions::kube(api), rt.clone());
    // Each reconcile's end, with the ports it added and removed.
    type Done = (Instant, Vec<String>, Vec<String>, usize, Duration, Vec<(&'static str, Duration)>);
    let (tx, rx) = mpsc::channel::<Done>();
    ctl.on_reconcile = Some(Box::new(move |r| {
        if let Ok(a) = r {
            let n = a.diff.added.len()
                + a.diff.unchanged.len()
                + a.diff.changed.len()
                + a.diff.reopened.len()
                + a.diff.updated.len();
            let _ = tx.send((
                Instant::now(),
                a.diff.added.clone(),
                a.diff.removed.clone(),
                n,
                thread_cpu(),
                a.phases.spans.clone(),
            ));
        }
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let s = stop.clone();
    let thread =
        std::thread::Builder::new().name("control".into()).spawn(move || ctl.run(&s).unwrap()).unwrap();
    let want = 2 * vmis as usize;
    let (synced, mut cpu_last) = loop {
        let (t, _, _, n, cpu, phases) =
            rx.recv_timeout(Duration::from_secs(120)).expect("initial sync within 120 s");
        if n >= want {
            let planned: Duration = phases.iter().map(|(_, d)| *d).sum();
            println!(
                "initial sync: {:.0} ms before the reconcile (watches listing, objects parsed and stored), then reconcile phases: {}",
                ((t - t0).saturating_sub(planned)).as_secs_f64() * 1e3,
                words(&phases)
            );
            break (t, cpu);
        }
    };
    let (rss1, hwm1) = rss();
    let (used, held) = malloc_kib();
    println!(
        "initial sync CPU time: control thread {:.0} ms, API watch thread {:.0} ms (the workers' polling not counted); malloc in use {:.0} MiB of {:.0} MiB held",
        threads_cpu("control").as_secs_f64() * 1e3,
        threads_cpu("kube-watch").as_secs_f64() * 1e3,
        used as f64 / 1024.0,
        held as f64 / 1024.0
    );
    println!(
        "initial sync of {vmis} VMIs ({want} ports) from the API: {:.0} ms; agent VmRSS {:.0} MiB (VmHWM {:.0} MiB; {:.0} MiB before the agent started); the {want} ring backends alone: {:.0} MiB; the agent less them: {:.0} MiB",
        (synced - t0).as_secs_f64() * 1e3,
        rss1 as f64 / 1024.0,
        hwm1 as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        rings_kib as f64 / 1024.0,
        rss1.saturating_sub(rings_kib) as f64 / 1024.0
    );

    let mut lat = Vec::with_capacity(events);
    let mut phase_ms: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut cpu = Vec::with_capacity(events);
    let mut ok = String::new();
    for k in 0..events {
        let i = 1_000_000 + (k / 2) as u32;
        let port = format!("ns/vm{i}/a");
        let add = k % 2 == 0;
        let t = Instant::now();
        if add {
            writeln!(to_double, "put {}", vmi(i)).unwrap();
        } else {
            writeln!(to_double, "delete ns vm{i}").unwrap();
        }
        to_double.flush().unwrap();
        ok.clear();
        from_double.read_line(&mut ok).unwrap();
        loop {
            let (at, added, removed, _, c, phases) =
                rx.recv_timeout(Duration::from_secs(30)).expect("the change went live");
            for (k, (name, d)) in phases.iter().enumerate() {
                if phase_ms.len() <= k {
                    phase_ms.push((name, Vec::new()));
                }
                phase_ms[k].1.push(d.as_secs_f64() * 1e3);
            }
            cpu.push((c - cpu_last).as_secs_f64() * 1e3);
            cpu_last = c;
            if (add && added.contains(&port)) || (!add && removed.contains(&port)) {
                lat.push((at - t).as_secs_f64() * 1e3);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |f: f64| v[((v.len() as f64 * f) as usize).min(v.len() - 1)];
        format!(
            "median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            q(0.5),
            q(0.9),
            q(0.99),
            v[v.len() - 1]
        )
    };
    println!(
        "watch event to live with {vmis} VMIs present ({events} events, add/delete a VMI): {}",
        stats(&mut lat)
    );
    println!("control thread CPU per reconcile ({} reconciles): {}", cpu.len(), stats(&mut cpu));
    for (name, v) in &mut phase_ms {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "  reconcile phase {name:>16}: median {:.2} ms, max {:.2} ms",
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
    let mut load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.truncate(load.trim_end().len());
    println!("load average at the end: {load}");
    let (rss2, hwm2) = rss();
    let (used2, held2) = malloc_kib();
    println!(
        "agent VmRSS after the events {:.0} MiB (VmHWM {:.0} MiB; malloc in use {:.0} MiB of {:.0} MiB held)",
        rss2 as f64 / 1024.0,
        hwm2 as f64 / 1024.0,
        used2 as f64 / 1024.0,
        held2 as f64 / 1024.0
    );
    drop(to_double);
    let _ = child.wait();
    stop.store(true, Ordering::Release);
    thread.join().unwrap();
    if let Ok(rt) = Arc::try_unwrap(rt) {
        rt.into_inner().unwrap().stop();
    }
}
