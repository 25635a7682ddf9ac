//! Latency from a manifest write to the change being live in the running dataplane (every
//! worker has applied the new snapshot), over many changes: the target is 50 ms median,
//! 200 ms at the 99th percentile over 1000 changes.
//!
//! In-process: a `Controller` watches a temporary copy of examples/state (uplink and VM ports
//! as ring ports); each change flips a NAD's VLAN (two VM ports change), and the controller's
//! reconcile hook reports when the new configuration was applied. `SY_LAT_CHANGES` sets the
//! number of changes (default 1000). With `SY_LAT_POLICY=1` each change instead rewrites a
//! MultiNetworkPolicy on the NAD's network (its allowed TCP port flips between 80 and 443):
//! the time from the write to every worker running the snapshot with the new classifier
//! (docs/policy.md). Run: benches/reconcile-latency.sh

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_control::controller::{Controller, ControllerOptions};
use switchyard_control::runtime::{RunConfig, Runtime, RuntimeOptions, VmPorts};

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let n: usize = std::env::var("SY_LAT_CHANGES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    testkit::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/state"), &state);
    let opts = RuntimeOptions {
        overrides: RunConfig::from_yaml("ports: {eth1: {type: ring, ring: lat-eth1}}").unwrap(),
        vm_ports: VmPorts::Ring,
        ..Default::default()
    };
    let rt = Arc::new(Mutex::new(Runtime::start(opts).unwrap()));
    let mut ctl = Controller::new(ControllerOptions::new(&state, "worker-1"), rt.clone());
    ctl.reconcile().unwrap();
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    ctl.on_reconcile = Some(Box::new(move |r| {
        if let Ok(a) = r {
            if a.generation.is_some() {
                let _ = tx.send((Instant::now(), a.lines.join("\n")));
            }
        }
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let th = std::thread::spawn(move || ctl.run(&st));
    std::thread::sleep(Duration::from_millis(200));
    while rx.try_recv().is_ok() {}

    let policy_mode = std::env::var("SY_LAT_POLICY").is_ok_and(|v| v == "1");
    let nads = state.join("network/nads.yaml");
    let base = std::fs::read_to_string(&nads).unwrap();
    let policy_file = state.join("network/policy.yaml");
    let policy = |port: u16| {
        format!(
            "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata:\n  name: web\n  namespace: tenant-a\n  \
             annotations:\n    k8s.v1.cni.cncf.io/policy-for: tenant-a/vlan100\nspec:\n  podSelector: {{}}\n  ingress:\n  \
             - from: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    ports: [{{protocol: TCP, port: {port}}}]\n"
        )
    };
    let mut lat = Vec::with_capacity(n);
    let mut missed = 0;
    for i in 0..n {
        let vlan = if i % 2 == 0 { 101 } else { 100 };
        let (file, text, want) = if policy_mode {
            // The first write adds the policy (none -> ...), later ones change its port.
            (&policy_file, policy(if i % 2 == 0 { 443 } else { 80 }), "policy ".to_string())
        } else {
            (
                &nads,
                base.replace("\"vlan\": 100", &format!("\"vlan\": {vlan}")),
                format!("-> access VLAN {vlan}"),
            )
        };
        let t0 = Instant::now();
        std::fs::write(file, text).unwrap();
        let deadline = t0 + Duration::from_secs(2);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((t, lines)) if lines.contains(&want) => {
                    lat.push(t.duration_since(t0));
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    missed += 1;
                    break;
                }
            }
        }
        // Let the watcher settle (stray events of this write) before the next one.
        std::thread::sleep(Duration::from_millis(5));
        while rx.try_recv().is_ok() {}
    }
    stop.store(true, Ordering::Release);
    let _ = th.join();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = lat.len();
    let (median, p90, p99) = (ms(pct(0.5)), ms(pct(0.9)), ms(pct(0.99)));
    let max = ms(lat.last().copied().unwrap_or_default());
    println!(
        "reconcile latency over {n} changes ({missed} missed): median {median:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, \
         max {max:.2} ms"
    );
    println!(
        "{{\"changes\":{n},\"missed\":{missed},\"median_ms\":{median:.3},\"p90_ms\":{p90:.3},\"p99_ms\":{p99:.3},\"max_ms\":{max:.3}}}"
    );
}
