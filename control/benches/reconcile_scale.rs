//! The scale numbers: `plan` for 10,000 VMIs with 2 secondary interfaces each (goal
//! under 1 s), and a full reconcile of that state into a running switch (goal under 2 s).
//!
//! One node gets all 20,000 VM ports (ring backends, so no sockets or devices are needed) on
//! bridges from 20 bridge-CNI NADs. Prints the times of: loading the manifests, planning, and
//! the first reconcile of an empty running switch (opening 20,000 ports, compiling the
//! snapshot, installing 20,000 static MACs, publishing to the workers and waiting until they
//! applied it). Asserts nothing about time. Run: `cargo bench -p switchyard-control --bench
//! reconcile_scale`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchyard_control::controller::{Controller, ControllerOptions};
use switchyard_control::runtime::{Runtime, RuntimeOptions, VmPorts};
use switchyard_control::{plan, ClusterState, PlanOptions};

fn main() {
    let vmis: u32 = std::env::var("SY_VMIS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let text = testkit::manifest::scale_state(vmis, 1);
    std::fs::write(dir.path().join("state.yaml"), &text).unwrap();

    let t0 = Instant::now();
    let st = ClusterState::load_dir(dir.path()).unwrap();
    let t1 = Instant::now();
    let p = plan(&st, "n0", &BTreeMap::new(), &PlanOptions::default());
    let t2 = Instant::now();
    let ports: usize = p.config.bridges.iter().map(|b| b.ports.len()).sum();
    assert!(p.problems.is_empty(), "{:?}", &p.problems[..p.problems.len().min(3)]);
    println!(
        "plan: {vmis} VMIs, {ports} ports: load {:.0} ms + plan {:.0} ms = {:.0} ms",
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        (t2 - t0).as_secs_f64() * 1e3
    );

    let opts = RuntimeOptions { vm_ports: VmPorts::Ring, ..Default::default() };
    let rt = Arc::new(Mutex::new(Runtime::start(opts).unwrap()));
    let mut ctl = Controller::new(ControllerOptions::new(dir.path(), "n0"), rt.clone());
    let t3 = Instant::now();
    let applied = ctl.reconcile().unwrap();
    let t4 = Instant::now();
    let running: usize = rt.lock().unwrap().running().bridges.iter().map(|b| b.ports.len()).sum();
    assert_eq!(running, ports);
    println!(
        "full reconcile into a running switch (load + plan + open {running} ports + compile + publish + applied): {:.0} ms (generation {:?})",
        (t4 - t3).as_secs_f64() * 1e3,
        applied.generation
    );
    let t5 = Instant::now();
    let again = ctl.reconcile().unwrap();
    println!(
        "a reconcile with nothing changed: {:.0} ms ({} change lines)",
        t5.elapsed().as_secs_f64() * 1e3,
        again.lines.len()
    );
    for l in again.lines.iter().take(3) {
        println!("  {l}");
    }
    let problems = rt.lock().unwrap().input.problems.clone();
    assert!(problems.is_empty(), "{:?}", &problems[..problems.len().min(3)]);
    if let Ok(rt) = Arc::try_unwrap(rt) {
        rt.into_inner().unwrap().stop();
    }
}
