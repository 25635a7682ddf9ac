//! `run --kube` end to end: the real kube-rs client stack (kube-runtime watchers, hyper)
//! against an in-process API server double (tests/apiserver) serving the manifests of
//! examples/state, driving a running switch (ring VM ports) through the same plan and reconcile
//! code as a state directory. Frames flow between two VM ports that no change touches, and
//! every one is counted out, in order.

mod apiserver;

use apiserver::{example_objects, vmi, ApiServer};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_control::api_source::ApiOptions;
use switchyard_control::controller::{Controller, ControllerOptions};
use switchyard_control::runtime::{RunConfig, Runtime, RuntimeOptions, VmPorts};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::PortConfig;
use switchyard_dataplane::port::ring::RingPeer;
use switchyard_ports::factory::ring_peer;
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const NODE: &str = apiserver::NODE;
const VM_A: &str = "tenant-a/vm-a/data";
const VM_B: &str = "tenant-a/vm-b/data";
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0x0a, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];

/// A switch with ring VM ports and a ring uplink, and a controller on the double, running.
struct Agent {
    rt: Arc<Mutex<Runtime>>,
    /// The controller's counters, as `/readyz` reads them.
    stats: Arc<switchyard_control::metrics::ControlStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(server: &ApiServer) -> Agent {
        Agent::start_paged(server, 500)
    }

    /// An agent whose lists come in pages of `page_size` objects.
    fn start_paged(server: &ApiServer, page_size: u32) -> Agent {
        Agent::start_with(server, |api| api.page_size = page_size)
    }

    /// An agent with the test's backoffs (50 ms to 1 s), then `tune` applied to its options.
    fn start_with(server: &ApiServer, tune: impl FnOnce(&mut ApiOptions)) -> Agent {
        let overrides = RunConfig::from_yaml("ports: {eth1: {type: ring, ring: kube-eth1}}").unwrap();
        let opts = RuntimeOptions { vm_ports: VmPorts::Ring, overrides, ..Default::default() };
        let rt = Arc::new(Mutex::new(Runtime::start(opts).unwrap()));
        let mut api = ApiOptions::new(NODE);
        api.config = Some(server.kube_config());
        api.min_backoff = Duration::from_millis(50);
        api.max_backoff = Duration::from_secs(1);
        tune(&mut api);
        let mut ctl = Controller::new(ControllerOptions::kube(api), rt.clone());
        let stats = Arc::new(switchyard_control::metrics::ControlStats::default());
        ctl.stats = Some(stats.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || ctl.run(&s).unwrap());
        Agent { rt, stats, stop, thread: Some(thread) }
    }

    fn port(&self, name: &str) -> Option<PortConfig> {
        let rt = self.rt.lock().unwrap();
        rt.running().bridges.iter().flat_map(|b| &b.ports).find(|p| p.name == name).cloned()
    }

    /// Waits (bounded) until `cond` holds of the running switch.
    fn until(&self, what: &str, secs: u64, cond: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn problems(&self) -> Vec<String> {
        self.rt.lock().unwrap().input.problems.clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn frame(src: [u8; 6], dst: [u8; 6], seq: u64) -> Vec<u8> {
    Frame::new(dst, src).ethertype(ETHERTYPE_IPV4).payload(&seq.to_be_bytes()).pad(64, 0).build()
}

/// Numbered frames from one port to another, about one a millisecond, while it runs; checks
/// each arrives once and in order.
struct Flow {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
    bad: Arc<AtomicBool>,
}

impl Flow {
    fn start(from: RingPeer, to: RingPeer, src: [u8; 6], dst: [u8; 6]) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let bad = Arc::new(AtomicBool::new(false));
        let pool = Pool::new("kube-flow", 1024).unwrap();
        let inj = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut cache = pool.cache();
                let mut seq = 0u64;
                while !stop.load(Ordering::Acquire) {
                    if let Some(b) = cache.alloc_copy(&frame(src, dst, seq)) {
                        match from.inject(b) {
                            Ok(()) => {
                                seq += 1;
                                sent.store(seq, Ordering::Release);
                            }
                            Err(b) => cache.free(b),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let col = {
            let (stop, sent, got, bad) = (stop.clone(), sent.clone(), got.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut deadline = None;
                loop {
                    match to.collect() {
                        Some(b) => {
                            let d = b.data();
                            let seq = u64::from_be_bytes(d[14..22].try_into().unwrap());
                            if d[6..12] != src || seq != n {
                                bad.store(true, Ordering::Release);
                            }
                            n += 1;
                            got.store(n, Ordering::Release);
                        }
                        None => {
                            if stop.load(Ordering::Acquire) {
                                if n >= sent.load(Ordering::Acquire) {
                                    return;
                                }
                                let dl =
                                    *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
                                if Instant::now() > dl {
                                    return;
                                }
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }
            })
        };
        Flow { stop, sent, got, threads: vec![inj, col], bad }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    fn got(&self) -> u64 {
        self.got.load(Ordering::Acquire)
    }

    /// Stops; returns (sent, received) and asserts nothing came out of order or twice.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        assert!(!self.bad.load(Ordering::Acquire), "a frame came twice, out of order or from elsewhere");
        (self.sent(), self.got())
    }
}

fn start_flow(agent: &Agent) -> Flow {
    agent.until("the two VM ports run", 20, |a| a.port(VM_A).is_some() && a.port(VM_B).is_some());
    Flow::start(ring_peer(VM_A).unwrap(), ring_peer(VM_B).unwrap(), MAC_A, MAC_B)
}

/// The number of list (not watch) requests for a collection path.
fn lists(server: &ApiServer, plural: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&format!("/{plural}")) && !r.contains("watch=true"))
        .count()
}

#[test]
fn initial_list_programs_the_switch_and_watch_events_reconfigure_it() {
    let server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start(&server);
    agent.until("the example's ports run", 20, |a| {
        ["eth1", VM_A, VM_B, "tenant-a/vm-a/ext"].iter().all(|p| a.port(p).is_some())
    });
    assert!(agent.problems().is_empty(), "{:?}", agent.problems());
    assert_eq!(agent.port("tenant-a/vm-a/ext").unwrap().tag, Some(200));
    // The VMIs were asked for by label, the Node by name.
    let reqs = server.requests();
    assert!(reqs.iter().any(|r| r.contains("virtualmachineinstances") && r.contains("kubevirt.io%2FnodeName%3Dworker-1")), "{reqs:?}");
    assert!(reqs.iter().any(|r| r.contains("/nodes") && r.contains("metadata.name%3Dworker-1")), "{reqs:?}");

    let flow = start_flow(&agent);
    // Add a VMI, change a NAD (VLAN 200 -> 201 for vm-a/ext), delete the VMI.
    server.put(vmi("vm-c", "vlan100", "02:00:00:00:0c:01"));
    agent.until("vm-c's port runs", 10, |a| a.port("tenant-a/vm-c/data").is_some());
    let mut nad = server.get("NetworkAttachmentDefinition", "tenant-a", "localnet200").unwrap();
    let cfg = nad["spec"]["config"].as_str().unwrap().replace("\"vlanID\": 200", "\"vlanID\": 201");
    nad["spec"]["config"] = json!(cfg);
    server.put(nad);
    agent.until("vm-a/ext is on VLAN 201", 10, |a| {
        a.port("tenant-a/vm-a/ext").and_then(|p| p.tag) == Some(201)
    });
    assert!(server.delete("VirtualMachineInstance", "tenant-a", "vm-c"));
    agent.until("vm-c's port is gone", 10, |a| a.port("tenant-a/vm-c/data").is_none());
    // A VMI moved to another node leaves this one (its label no longer matches the watch).
    let mut b = server.get("VirtualMachineInstance", "tenant-a", "vm-b").unwrap();
    let before = flow.got();
    std::thread::sleep(Duration::from_millis(100));
    assert!(flow.got() > before, "frames flow between the unchanged ports");
    let (sent, got) = flow.finish();
    assert!(sent > 20, "too little traffic: {sent}");
    assert_eq!(got, sent, "frames lost between unchanged ports while others changed");
    b["metadata"]["labels"]["kubevirt.io/nodeName"] = json!("worker-2");
    b["status"]["nodeName"] = json!("worker-2");
    server.put(b);
    agent.until("vm-b's port is gone", 10, |a| a.port(VM_B).is_none());
    let rt = agent.rt.lock().unwrap();
    let s = rt.switch().port_by_name(VM_A).unwrap().stats.snapshot();
    assert_eq!(s.drops.values().sum::<u64>(), 0, "{:?}", s.drops);
}

#[test]
fn a_dropped_watch_and_a_410_lose_no_update_and_bookmarks_are_used() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(100));
    let agent = Agent::start(&server);
    let flow = start_flow(&agent);
    let vmi_lists = lists(&server, "virtualmachineinstances");
    assert_eq!(vmi_lists, 1);

    // Every connection drops; a change made before the watches are back is not lost.
    server.drop_connections();
    server.put(vmi("vm-d", "vlan100", "02:00:00:00:0d:01"));
    agent.until("vm-d's port runs", 10, |a| a.port("tenant-a/vm-d/data").is_some());
    assert_eq!(lists(&server, "virtualmachineinstances"), 1, "a dropped watch resumes, it does not relist");

    // Bookmarks: NAD changes move the resourceVersion on; the VMI watch hears it through
    // bookmarks, so after a compaction it resumes without a 410 and a relist.
    let mut nad = server.get("NetworkAttachmentDefinition", "tenant-a", "sriov-net").unwrap();
    nad["metadata"]["annotations"]["touched"] = json!("1");
    server.put(nad);
    std::thread::sleep(Duration::from_millis(600));
    server.compact();
    server.drop_connections();
    server.put(vmi("vm-e", "vlan100", "02:00:00:00:0e:01"));
    agent.until("vm-e's port runs", 10, |a| a.port("tenant-a/vm-e/data").is_some());
    assert_eq!(lists(&server, "virtualmachineinstances"), 1, "the VMI watch resumed from a bookmark");
    let nad_lists = lists(&server, "network-attachment-definitions");

    // A 410: the server goes down (so no watch can resume before the compaction), a VMI is
    // added and another deleted meanwhile, the history is compacted: the watches get 410
    // Gone, relist, and the relist removes the deleted VMI's port and adds the new one.
    server.set_down(true);
    server.put(vmi("vm-f", "vlan100", "02:00:00:00:0f:01"));
    assert!(server.delete("VirtualMachineInstance", "tenant-a", "vm-d"));
    let mut nad = server.get("NetworkAttachmentDefinition", "tenant-a", "sriov-net").unwrap();
    nad["metadata"]["annotations"]["touched"] = json!("2");
    server.put(nad);
    server.compact();
    server.set_down(false);
    agent.until("vm-f's port runs and vm-d's is gone", 10, |a| {
        a.port("tenant-a/vm-f/data").is_some() && a.port("tenant-a/vm-d/data").is_none()
    });
    // The NAD watch reconnects on its own schedule: wait for its relist, bounded.
    let t0 = std::time::Instant::now();
    while lists(&server, "network-attachment-definitions") <= nad_lists {
        assert!(t0.elapsed() < Duration::from_secs(10), "the NAD watch relisted after 410");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.port("tenant-a/vm-e/data").is_some());
    let (sent, got) = flow.finish();
    assert!(sent > 20, "too little traffic: {sent}");
    assert_eq!(got, sent);
}

#[test]
fn forwarding_continues_while_the_api_server_is_gone_and_a_change_applies_on_return() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(500));
    let agent = Agent::start(&server);
    let flow = start_flow(&agent);
    server.set_down(true);
    // The change made meanwhile (the double's store is the cluster's).
    server.put(vmi("vm-g", "vlan100", "02:00:00:00:10:01"));
    let outage = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut last = flow.got();
    while t0.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(2));
        let now = flow.got();
        assert!(now > last, "forwarding stopped while the API server is gone");
        last = now;
        assert!(agent.port(VM_A).is_some() && agent.port("tenant-a/vm-g/data").is_none());
    }
    server.set_down(false);
    agent.until("the change made meanwhile applies", 15, |a| a.port("tenant-a/vm-g/data").is_some());
    assert!(agent.port(VM_B).is_some() && agent.port("eth1").is_some());
    let (sent, got) = flow.finish();
    assert!(sent > 1000, "too little traffic: {sent}");
    assert_eq!(got, sent, "frames lost while the API server was gone");
}

#[test]
fn a_bad_nad_becomes_one_event_naming_the_field_and_the_other_interfaces_stay_up() {
    let mut objs = example_objects();
    for o in &mut objs {
        if o["metadata"]["name"] == "vlan100" {
            let c = o["spec"]["config"].as_str().unwrap().replace("\"vlan\": 100", "\"vlan\": 5000");
            o["spec"]["config"] = json!(c);
        }
    }
    let server = ApiServer::start(objs, Duration::from_millis(200));
    let agent = Agent::start(&server);
    agent.until("vm-a's other interface runs", 20, |a| a.port("tenant-a/vm-a/ext").is_some());
    assert!(agent.port(VM_A).is_none() && agent.port(VM_B).is_none());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.events().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another change: the problem is planned again, and not posted twice.
    server.put(vmi("vm-h", "localnet200", "02:00:00:00:11:01"));
    agent.until("vm-h's port runs", 10, |a| a.port("tenant-a/vm-h/data").is_some());
    std::thread::sleep(Duration::from_millis(300));
    let events = server.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["kind"], "Event");
    assert_eq!(e["metadata"]["namespace"], "tenant-a");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "InvalidField");
    assert_eq!(e["reportingController"], "switchyard");
    assert_eq!(e["reportingInstance"], NODE);
    assert_eq!(e["regarding"]["kind"], "NetworkAttachmentDefinition");
    assert_eq!(e["regarding"]["name"], "vlan100");
    assert_eq!(e["regarding"]["uid"], "uid-NetworkAttachmentDefinition-tenant-a-vlan100");
    let note = e["note"].as_str().unwrap();
    assert!(note.starts_with("spec.config.vlan: "), "{note}");
    assert!(note.contains("5000"), "{note}");
}

/// A Node of the double with an InternalIP.
fn node_obj(name: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

/// A VMI of the layer2 network `blue` on `node` (labelled as virt-controller does).
fn blue_vmi(name: &str, mac: &str, node: &str) -> serde_json::Value {
    let mut o = vmi(name, "blue", mac);
    o["status"]["nodeName"] = json!(node);
    o["metadata"]["labels"]["kubevirt.io/nodeName"] = json!(node);
    o
}

/// The tunnel port NODE's plan gives network `blue` from the API source's current state.
fn blue_tunnel(src: &switchyard_control::api_source::ApiSource) -> Option<PortConfig> {
    let st = switchyard_control::api_source::lock(src.store()).snapshot();
    let p = switchyard_control::plan(&st, NODE, &Default::default(), &Default::default());
    p.config.bridges.iter().flat_map(|b| &b.ports).find(|q| q.name == "tunnel/blue").cloned()
}

/// With `all_vmis` the API source watches every VMI and every Node (no label or field
/// selector), so NODE's plan has the overlay's tunnel port with the other node's endpoint and
/// VMI MACs; its own ports are still only its own VMIs'. A migration (status.nodeName and the
/// label change) moves the MAC into NODE's remote entries. Without `all_vmis`, the watches
/// keep their selectors and no other node's VMI is seen.
#[test]
fn all_vmis_watches_other_nodes_for_overlays() {
    let objects = vec![
        apiserver::objects_of_yaml(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: blue, namespace: tenant-a}\n\
             spec:\n  config: '{\"name\":\"blue\",\"type\":\"ovn-k8s-cni-overlay\",\"topology\":\"layer2\",\"vni\":4242}'\n",
        )
        .remove(0),
        node_obj(NODE, "192.0.2.1"),
        node_obj("worker-2", "192.0.2.2"),
        blue_vmi("here", "02:00:00:00:0e:01", NODE),
        blue_vmi("there", "02:00:00:00:0e:02", "worker-2"),
        blue_vmi("moving", "02:00:00:00:0e:03", NODE),
    ];
    let server = ApiServer::start(objects, Duration::from_millis(200));
    let start = |all: bool| {
        let mut api = ApiOptions::new(NODE);
        api.config = Some(server.kube_config());
        api.all_vmis = all;
        api.events = false;
        api.min_backoff = Duration::from_millis(50);
        switchyard_control::api_source::ApiSource::start(api).unwrap()
    };
    let until = |src: &switchyard_control::api_source::ApiSource,
                 what: &str,
                 cond: &dyn Fn(Option<PortConfig>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = switchyard_control::api_source::lock(src.store()).ready();
            if ready && cond(blue_tunnel(src)) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}: {:?}", blue_tunnel(src));
            src.wait(Duration::from_millis(50));
        }
    };
    let macs = |t: &PortConfig| -> Vec<String> {
        let mut v: Vec<String> = t.remote_macs.iter().map(|r| format!("{}@{}", r.mac, r.remote)).collect();
        v.sort();
        v
    };

    let local_only = start(false);
    until(&local_only, "listed", &|t| t.is_none());
    let st = switchyard_control::api_source::lock(local_only.store()).snapshot();
    assert_eq!(st.vmis.len(), 2, "only this node's VMIs: {:?}", st.vmis.keys());
    assert_eq!(st.nodes.keys().collect::<Vec<_>>(), [NODE]);
    drop(local_only);

    let all = start(true);
    until(&all, "the tunnel port knows worker-2's VMI", &|t| {
        t.is_some_and(|t| macs(&t) == ["02:00:00:00:0e:02@192.0.2.2"])
    });
    let t = blue_tunnel(&all).unwrap();
    assert_eq!((t.vni, t.local, t.learn), (Some(4242), Some("192.0.2.1".parse().unwrap()), Some(false)));
    assert_eq!(t.flood, Some(vec!["192.0.2.2".parse().unwrap()]));
    let st = switchyard_control::api_source::lock(all.store()).snapshot();
    let p = switchyard_control::plan(&st, NODE, &Default::default(), &Default::default());
    let vm_ports: Vec<&str> = p
        .config
        .bridges
        .iter()
        .flat_map(|b| &b.ports)
        .filter(|q| q.vni.is_none())
        .map(|q| q.name.as_str())
        .collect();
    assert_eq!(vm_ports, ["tenant-a/here/data", "tenant-a/moving/data"], "ports only for this node's VMIs");
    let reqs = server.requests();
    let unselected = |plural: &str| {
        reqs.iter()
            .any(|r| r.contains(plural) && !r.contains("labelSelector") && !r.contains("fieldSelector"))
    };
    assert!(unselected("/virtualmachineinstances") && unselected("/nodes"), "{reqs:?}");

    // Migration of `moving` to worker-2: remote now, at worker-2's endpoint.
    server.put(blue_vmi("moving", "02:00:00:00:0e:03", "worker-2"));
    until(&all, "the migrated MAC is remote", &|t| {
        t.is_some_and(|t| macs(&t) == ["02:00:00:00:0e:02@192.0.2.2", "02:00:00:00:0e:03@192.0.2.2"])
    });
    // worker-2's endpoint changes (the annotation overrides its InternalIP).
    let mut n2 = node_obj("worker-2", "192.0.2.2");
    n2["metadata"]["annotations"] = json!({"switchyard.io/tunnel-ip": "198.51.100.2"});
    server.put(n2);
    until(&all, "worker-2's annotation is its endpoint", &|t| {
        t.is_some_and(|t| t.flood == Some(vec!["198.51.100.2".parse().unwrap()]))
    });
}

/// MultiNetworkPolicies are read at `v1beta2` where the API server serves it (the version with
/// `endPort`), else at `v1beta1`: a cluster whose CRD serves one of them alone gets its
/// policies enforced either way, and the port range of a rule with `endPort` arrives whole.
#[test]
fn multi_network_policies_are_watched_at_a_version_the_server_serves() {
    let spec = "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{protocol: TCP, port: 8000, endPort: 8080}]\n";
    let mnp = testkit::manifest::policy("tenant-a", "web", "tenant-a/vlan100", spec);
    for (unserved, watched) in [(None, "v1beta2"), (Some("v1beta1"), "v1beta2"), (Some("v1beta2"), "v1beta1")]
    {
        let mut objects = example_objects();
        objects.extend(apiserver::objects_of_yaml(&mnp));
        let server = ApiServer::start(objects, Duration::from_millis(200));
        if let Some(v) = unserved {
            server.set_served(&format!("k8s.cni.cncf.io/{v}"), false);
        }
        let agent = Agent::start(&server);
        agent.until(&format!("vm-a's port has the policy ({watched})"), 20, |a| {
            a.port(VM_A).is_some_and(|p| p.policy.is_some())
        });
        let policy = agent.port(VM_A).and_then(|p| p.policy).unwrap();
        let rules = policy.ingress.expect("ingress isolated").rules;
        let ports: Vec<_> =
            rules.iter().flat_map(|r| r.ports.iter().flatten()).map(|p| (p.port, p.end_port)).collect();
        assert_eq!(ports, vec![(Some(8000), Some(8080))], "{watched}: {rules:?}");
        let path = format!("/apis/k8s.cni.cncf.io/{watched}/multi-networkpolicies");
        let reqs = server.requests();
        assert!(reqs.iter().any(|r| r.contains(&path) && r.contains("watch=true")), "{watched}: {reqs:?}");
    }
}

/// The number of watch requests served so far.
fn watches(server: &ApiServer) -> usize {
    server.requests().iter().filter(|r| r.contains("watch=true")).count()
}

/// Deletes vm-b and adds `new` while the server is down, compacts the history, and brings the
/// server back: every watch resumes from a resourceVersion the server no longer has.
fn change_while_down_and_compact(server: &mut ApiServer, new: &str, mac: &str) {
    server.set_down(true);
    assert!(server.delete("VirtualMachineInstance", "tenant-a", "vm-b"));
    server.put(vmi(new, "vlan100", mac));
    server.compact();
    server.set_down(false);
}

/// A watch from a resourceVersion the server no longer has may be answered with an HTTP 410
/// Gone Status instead of 200 and an ERROR event (API concepts, "410 Gone responses": clients
/// must tolerate 410; client-go's reflector relists on either). The agent relists: the VMI
/// deleted meanwhile loses its port, the one added gets one. (kube-runtime's watcher, left
/// alone, retries the watch from the same resourceVersion for ever.)
#[test]
fn an_http_410_to_a_watch_relists() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(200));
    server.set_watch_gone_http(true);
    let agent = Agent::start(&server);
    agent.until("vm-b's port runs", 20, |a| a.port(VM_B).is_some());
    let vmi_lists = lists(&server, "virtualmachineinstances");
    change_while_down_and_compact(&mut server, "vm-i", "02:00:00:00:12:01");
    agent.until("vm-b's port is gone and vm-i's runs", 10, |a| {
        a.port(VM_B).is_none() && a.port("tenant-a/vm-i/data").is_some()
    });
    assert!(lists(&server, "virtualmachineinstances") > vmi_lists);
    assert!(agent.port(VM_A).is_some());
}

/// The relist after a 410 asks for the most recent state (no resourceVersion: a quorum read),
/// as client-go's reflector does once the last resourceVersion is unavailable, not for
/// `resourceVersion=0` ("Any"), which a lagging API server may answer from its cache with a
/// state older than the one the agent had: objects deleted meanwhile would come back.
#[test]
fn the_relist_after_a_410_is_not_served_from_a_lagging_cache() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start(&server);
    agent.until("vm-b's port runs", 20, |a| a.port(VM_B).is_some());
    server.freeze_cache();
    change_while_down_and_compact(&mut server, "vm-j", "02:00:00:00:13:01");
    agent.until("vm-b's port is gone and vm-j's runs", 10, |a| {
        a.port(VM_B).is_none() && a.port("tenant-a/vm-j/data").is_some()
    });
    let reqs = server.requests();
    let relists: Vec<&String> =
        reqs.iter().filter(|r| r.contains("/virtualmachineinstances") && !r.contains("watch=true")).collect();
    assert!(relists.len() >= 2 && relists.iter().all(|r| !r.contains("resourceVersion=")), "{relists:?}");
}

/// A CRD removed while the agent could not watch (its objects deleted with it): the watch
/// answers 404, the agent relists, the list answers 404, and the kind counts as listed and
/// empty, its objects gone from the plan, not kept as they were.
#[test]
fn a_crd_removed_while_disconnected_empties_its_kind() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start(&server);
    agent.until("vm-a's ports run", 20, |a| a.port(VM_A).is_some() && a.port("tenant-a/vm-a/ext").is_some());
    server.set_down(true);
    for o in example_objects().into_iter().filter(|o| o["kind"] == "NetworkAttachmentDefinition") {
        let (ns, name) =
            (o["metadata"]["namespace"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap());
        assert!(server.delete("NetworkAttachmentDefinition", ns, name));
    }
    server.set_served("k8s.cni.cncf.io/v1", false);
    server.set_down(false);
    agent.until("no port of a NAD is left", 10, |a| {
        a.port(VM_A).is_none() && a.port("tenant-a/vm-a/ext").is_none()
    });
}

/// A kind answered 404 for a moment (an API server restarting) keeps what was stored of it:
/// the NADs' ports stay up throughout, where dropping them at the first 404 took every port
/// of them down (and, for MultiNetworkPolicies, would run the ports open) until the next list.
#[test]
fn a_404_for_a_moment_drops_nothing() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start(&server);
    agent.until("vm-a's ports run", 20, |a| a.port(VM_A).is_some() && a.port("tenant-a/vm-a/ext").is_some());
    let nad_lists = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.contains("/network-attachment-definitions") && !r.contains("watch=true"))
            .count()
    };
    server.set_down(true);
    let before = nad_lists(&server);
    server.set_served("k8s.cni.cncf.io/v1", false);
    server.set_down(false);
    let up = |a: &Agent| a.port(VM_A).is_some() && a.port("tenant-a/vm-a/ext").is_some();
    let t0 = Instant::now();
    while nad_lists(&server) == before {
        assert!(up(&agent), "a NAD's port went before any 404");
        assert!(t0.elapsed() < Duration::from_secs(15), "the agent never listed the NADs again");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Answered 404: the ports stay while it lasts (under the 1 s of the agent's max_backoff)
    // and after the kind is served again.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_millis(300) {
        assert!(up(&agent), "a NAD's port went at a 404 of a moment");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.set_served("k8s.cni.cncf.io/v1", true);
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(2) {
        assert!(up(&agent), "a NAD's port went after the 404");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A server (or a proxy in front of it) that ends every watch at once, cleanly and with no
/// event: the agent backs off between watches (client-go: "very short watch", then its
/// backoff) instead of re-watching in a hot loop, and changes still arrive.
#[test]
fn watches_ended_at_once_are_not_retried_in_a_hot_loop() {
    let server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start(&server);
    agent.until("vm-b's port runs", 20, |a| a.port(VM_B).is_some());
    server.set_watch_limit(Some(Duration::ZERO));
    std::thread::sleep(Duration::from_millis(200));
    let before = watches(&server);
    std::thread::sleep(Duration::from_secs(2));
    let n = watches(&server) - before;
    // Six watches, each at most ~every max_backoff (1 s) once backed off: a hot loop makes
    // thousands in 2 s.
    assert!(n <= 6 * 8, "{n} watch requests in 2 s");
    server.put(vmi("vm-k", "vlan100", "02:00:00:00:14:01"));
    agent.until("vm-k's port runs", 10, |a| a.port("tenant-a/vm-k/data").is_some());
}

/// The example objects and a policy isolating every port of tenant-a/vlan100 (ingress).
fn objects_with_a_deny_policy() -> Vec<serde_json::Value> {
    let spec = "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: []\n";
    let mut objects = example_objects();
    objects.extend(apiserver::objects_of_yaml(&testkit::manifest::policy(
        "tenant-a",
        "deny",
        "tenant-a/vlan100",
        spec,
    )));
    objects
}

/// MultiNetworkPolicies (and the Namespaces their selectors read) are enforced, so the first
/// plan waits for their first complete list too: a VM port is never run without the policy
/// that selects it, not even while its list is slow or refused (403: the RBAC lacks it; a
/// kind not served, 404, still counts as listed and empty).
#[test]
fn no_port_runs_before_the_policies_are_listed() {
    let objects = objects_with_a_deny_policy();
    let server = ApiServer::start(objects, Duration::from_millis(200));
    server.set_forbidden("multi-networkpolicies", true);
    let agent = Agent::start(&server);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        assert!(agent.port(VM_A).is_none_or(|p| p.policy.is_some()), "vm-a's port runs without its policy");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Readiness says what the first plan waits for.
    assert_eq!(agent.stats.api_unlisted(), ["multi-networkpolicies"]);
    server.set_forbidden("multi-networkpolicies", false);
    agent.until("vm-a's port runs with its policy", 10, |a| a.port(VM_A).is_some_and(|p| p.policy.is_some()));
    assert!(agent.stats.api_unlisted().is_empty());
}

/// Lists in pages of one object: a relist (after a 410) whose `continue` token expires after
/// its first page is made again at once as one full list (no `limit`), as client-go's pager
/// does (`FullListIfExpired`), not paged again from its first page (which, on a busy cluster,
/// may expire again and again). The page it had is not taken for the whole list: vm-b, on the
/// second page, keeps its port throughout (no frame between vm-a and vm-b is lost), and the
/// VMI added meanwhile gets one once the list completes. The relists after it are paged.
#[test]
fn an_expired_continue_token_falls_back_to_one_full_list() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start_paged(&server, 1);
    let flow = start_flow(&agent);
    let vmi_list = |r: &str| r.contains("/virtualmachineinstances") && !r.contains("watch=true");
    assert!(server.requests().iter().any(|r| vmi_list(r) && r.contains("continue=")));
    server.set_down(true);
    server.put(vmi("vm-l", "vlan100", "02:00:00:00:15:01"));
    server.compact();
    server.expire_continues("VirtualMachineInstance", 4);
    let from = server.requests().len();
    server.set_down(false);
    let t0 = Instant::now();
    while agent.port("tenant-a/vm-l/data").is_none() {
        assert!(agent.port(VM_B).is_some(), "vm-b's port went with a partial list");
        assert!(t0.elapsed() < Duration::from_secs(15), "vm-l's port never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    // One token expired; the list after it is the full one, which completed.
    assert_eq!(server.expired_continues("VirtualMachineInstance"), 1);
    let reqs = server.requests();
    let expired = (from..reqs.len()).find(|i| vmi_list(&reqs[*i]) && reqs[*i].contains("continue=")).unwrap();
    let full = (expired + 1..reqs.len()).find(|i| vmi_list(&reqs[*i])).unwrap();
    assert!(!reqs[full].contains("limit=") && !reqs[full].contains("continue="), "{}", reqs[full]);
    // The next relist is paged again.
    server.expire_continues("VirtualMachineInstance", 0);
    let from = server.requests().len();
    server.set_down(true);
    server.put(vmi("vm-m", "vlan100", "02:00:00:00:16:01"));
    server.compact();
    server.set_down(false);
    next_request(&server, from, 10, |r| vmi_list(r) && r.contains("limit=1") && r.contains("continue="));
    let (sent, got) = flow.finish();
    assert!(sent > 20, "too little traffic: {sent}");
    assert_eq!(got, sent, "frames lost while a list was made again");
}

/// An overloaded server: every `continue` token of the VMI lists expires, and every whole list
/// (the fallback) fails. The agent goes between a paged list and a whole one, and the back-off
/// of the failures grows across those switches (it used to start again at `min_backoff` with
/// each new watcher: a review counted 222 VMI lists in 4 s, 74 of them failing whole ones).
#[test]
fn failing_whole_lists_after_expired_tokens_back_off() {
    let mut server = ApiServer::start(example_objects(), Duration::from_millis(200));
    let agent = Agent::start_paged(&server, 1);
    let vmi_list = |r: &String| r.contains("/virtualmachineinstances") && !r.contains("watch=true");
    server.set_down(true);
    server.put(vmi("vm-l", "vlan100", "02:00:00:00:15:01"));
    server.compact();
    server.expire_continues("VirtualMachineInstance", usize::MAX);
    server.fail_whole_lists(Some("VirtualMachineInstance"));
    server.set_down(false);
    std::thread::sleep(Duration::from_secs(1));
    let from = server.requests().len();
    std::thread::sleep(Duration::from_secs(4));
    let lists = server.requests()[from..].iter().filter(|r| vmi_list(r)).count();
    // 50 ms doubling to 1 s: a dozen or so lists in 4 s once grown; at 50 ms, hundreds.
    assert!(lists <= 24, "{lists} VMI lists in 4 s");
    // The server recovers: the list completes and vm-l gets its port.
    server.expire_continues("VirtualMachineInstance", 0);
    server.fail_whole_lists(None);
    let t0 = Instant::now();
    while agent.port("tenant-a/vm-l/data").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "vm-l's port never came");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MultiNetworkPolicy CRD's served versions change under a running agent (v1beta1 alone,
/// then v1beta2 alone): the watch at v1beta1 is answered 404, the agent moves to v1beta2, and
/// the policy stays on vm-a's port throughout: one version gone while another is served is not
/// the kind gone.
#[test]
fn policies_follow_the_crd_to_its_other_version_without_a_gap() {
    let objects = objects_with_a_deny_policy();
    let mut server = ApiServer::start(objects, Duration::from_millis(200));
    server.set_served("k8s.cni.cncf.io/v1beta2", false);
    let agent = Agent::start(&server);
    agent.until("vm-a's port runs with its policy", 20, |a| a.port(VM_A).is_some_and(|p| p.policy.is_some()));
    server.set_down(true);
    server.set_served("k8s.cni.cncf.io/v1beta2", true);
    server.set_served("k8s.cni.cncf.io/v1beta1", false);
    server.set_down(false);
    let watched_v1beta2 = |s: &ApiServer| {
        s.requests().iter().any(|r| r.contains("/v1beta2/multi-networkpolicies") && r.contains("watch=true"))
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) || !watched_v1beta2(&server) {
        assert!(agent.port(VM_A).is_some_and(|p| p.policy.is_some()), "vm-a's port lost its policy");
        assert!(t0.elapsed() < Duration::from_secs(15), "the policies were never watched at v1beta2");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A CRD installed after the agent started: its kind counted as listed and empty meanwhile
/// (the plan went ahead without it), and its objects are picked up once it is served (the
/// list is retried with the backoff).
#[test]
fn a_crd_installed_later_is_picked_up() {
    let server = ApiServer::start(example_objects(), Duration::from_millis(200));
    server.set_served("k8s.cni.cncf.io/v1", false);
    let agent = Agent::start(&server);
    agent.until("the uplink runs (planned without NADs)", 20, |a| a.port("eth1").is_some());
    assert!(agent.port(VM_A).is_none());
    server.set_served("k8s.cni.cncf.io/v1", true);
    agent.until("vm-a's port runs", 10, |a| a.port(VM_A).is_some());
}

/// Whether request line `r` is a list (not a watch) of MultiNetworkPolicies at `version`.
fn mnp_list(r: &str, version: &str) -> bool {
    r.contains(&format!("/{version}/multi-networkpolicies")) && !r.contains("watch=true")
}

/// Waits (bounded, polling) for a request from index `from` on that `pred` holds of; returns
/// its index and when it was seen.
fn next_request(server: &ApiServer, from: usize, secs: u64, pred: impl Fn(&str) -> bool) -> (usize, Instant) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let reqs = server.requests();
        if let Some(i) = (from..reqs.len()).find(|i| pred(&reqs[*i])) {
            return (i, Instant::now());
        }
        assert!(Instant::now() < deadline, "no such request in {secs} s after {:?}", reqs.get(from..));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// MultiNetworkPolicies not served at either version: the agent retries them with a delay
/// growing to its longest (2 s here). Once they are served and watched for longer than the
/// quiet period (3 s), the delay starts again from the shortest (50 ms) when they go: the
/// retry after the first round of 404s comes within a second, not 2 s later (client-go's
/// backoff manager resets after 2 minutes without a backoff).
#[test]
fn the_back_off_of_a_kind_not_served_restarts_once_it_came_back() {
    let server = ApiServer::start(objects_with_a_deny_policy(), Duration::from_millis(200));
    for v in ["v1beta2", "v1beta1"] {
        server.set_served(&format!("k8s.cni.cncf.io/{v}"), false);
    }
    let agent = Agent::start_with(&server, |api| {
        api.max_backoff = Duration::from_secs(2);
        api.backoff_reset = Duration::from_secs(3);
    });
    agent.until("vm-a's port runs (no policy served)", 20, |a| a.port(VM_A).is_some());
    // 50 + 100 + ... + 1600 ms: the delay is at its longest after ~3.2 s of 404s.
    std::thread::sleep(Duration::from_secs(4));
    server.set_served("k8s.cni.cncf.io/v1beta2", true);
    agent.until("vm-a's port has its policy", 10, |a| a.port(VM_A).is_some_and(|p| p.policy.is_some()));
    std::thread::sleep(Duration::from_millis(3500));
    for v in ["v1beta2", "v1beta1"] {
        server.set_served(&format!("k8s.cni.cncf.io/{v}"), false);
    }
    let from = server.requests().len();
    server.drop_connections();
    // The watch resumed, answered 404: a relist at v1beta2, then at v1beta1 (both 404), then
    // a delay, then v1beta2 again.
    let (i, _) = next_request(&server, from, 10, |r| mnp_list(r, "v1beta2"));
    let (i, failed) = next_request(&server, i + 1, 10, |r| mnp_list(r, "v1beta1"));
    let (_, again) = next_request(&server, i + 1, 10, |r| mnp_list(r, "v1beta2"));
    let gap = again - failed;
    assert!(gap < Duration::from_secs(1), "the first retry came {gap:?} after the kind went");
}

/// Two API servers behind one load balancer disagree on the MultiNetworkPolicy CRD's served
/// versions (one serves v1beta2 alone, the other v1beta1 alone): each watch lands on the server
/// that does not serve the version just listed, and the agent switches versions at every
/// relist. The delay between relists is the kind's, and keeps growing across the switches
/// (from 0.5 s to 2 s here): in 4 s, once grown, at most three rounds of lists, not one every
/// 0.5 s (the first delay of each version's own); the policy stays on vm-a's port throughout.
#[test]
fn the_restart_back_off_grows_across_a_version_switch() {
    let server = ApiServer::start(objects_with_a_deny_policy(), Duration::from_millis(200));
    let agent = Agent::start_with(&server, |api| {
        api.min_backoff = Duration::from_millis(500);
        api.max_backoff = Duration::from_secs(2);
    });
    agent.until("vm-a's port has its policy", 20, |a| a.port(VM_A).is_some_and(|p| p.policy.is_some()));
    server.split_versions("k8s.cni.cncf.io/v1beta2", "k8s.cni.cncf.io/v1beta1");
    server.drop_connections();
    let mnp_lists = |s: &ApiServer| {
        s.requests().iter().filter(|r| mnp_list(r, "v1beta2") || mnp_list(r, "v1beta1")).count()
    };
    // 0.5 + 1 + 2 s: the delay is at its longest after 3.5 s of relists.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        assert!(agent.port(VM_A).is_some_and(|p| p.policy.is_some()), "vm-a's port lost its policy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = mnp_lists(&server);
    assert!(before >= 4, "the versions were not switched: {:?}", server.requests());
    std::thread::sleep(Duration::from_secs(4));
    let n = mnp_lists(&server) - before;
    // A round: the list answered 404, then the list at the other version.
    assert!(n <= 6, "{n} lists of the policies in 4 s");
    assert!(agent.port(VM_A).is_some_and(|p| p.policy.is_some()), "vm-a's port lost its policy");
}

/// Kinds the API server does not serve (the NADs at their one version, the policies at both
/// of theirs) are retried, but a retry that finds them still not served changes nothing the
/// agent knows: no plan is made for it, where each retry used to plan the whole state again.
/// A change still plans: the NADs served, vm-a's port runs.
#[test]
fn a_kind_not_served_is_not_planned_again_at_every_retry() {
    let server = ApiServer::start(example_objects(), Duration::from_millis(200));
    for gv in ["k8s.cni.cncf.io/v1", "k8s.cni.cncf.io/v1beta2", "k8s.cni.cncf.io/v1beta1"] {
        server.set_served(gv, false);
    }
    let agent = Agent::start(&server);
    agent.until("the uplink runs (planned without NADs)", 20, |a| a.port("eth1").is_some());
    // Past the longest delay (1 s): the kinds' objects are taken as gone by now.
    std::thread::sleep(Duration::from_millis(1500));
    let plans = agent.stats.reconciles();
    let nad_lists = lists(&server, "network-attachment-definitions");
    let mnp_lists = lists(&server, "multi-networkpolicies");
    std::thread::sleep(Duration::from_secs(3));
    assert!(lists(&server, "network-attachment-definitions") > nad_lists, "the NADs were not retried");
    assert!(lists(&server, "multi-networkpolicies") > mnp_lists, "the policies were not retried");
    assert_eq!(agent.stats.reconciles(), plans, "plans made for retries that changed nothing");
    server.set_served("k8s.cni.cncf.io/v1", true);
    agent.until("vm-a's port runs", 10, |a| a.port(VM_A).is_some());
}

/// A list refused every time (403: the RBAC lacks the NADs) is retried with a delay growing to
/// the longest (1 s here): in 3 s, once grown, a few lists, where each retry used to start
/// from the shortest delay again (kube-runtime's backoff resets on the `Init` that begins
/// every list), a list every 50 ms for ever. Granted, the NADs are listed within that delay.
#[test]
fn a_list_refused_every_time_backs_off() {
    let server = ApiServer::start(example_objects(), Duration::from_millis(200));
    server.set_forbidden("network-attachment-definitions", true);
    let agent = Agent::start(&server);
    // 50 + 100 + ... + 800 ms: the delay is at its longest after ~1.6 s of refusals.
    std::thread::sleep(Duration::from_secs(2));
    let before = lists(&server, "network-attachment-definitions");
    assert!(before >= 3, "the NADs were not retried: {before} lists");
    std::thread::sleep(Duration::from_secs(3));
    let n = lists(&server, "network-attachment-definitions") - before;
    assert!(n <= 5, "{n} lists of the NADs in 3 s");
    server.set_forbidden("network-attachment-definitions", false);
    agent.until("vm-a's port runs", 10, |a| a.port(VM_A).is_some());
}
