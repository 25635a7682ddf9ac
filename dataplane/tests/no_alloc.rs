//! Proves the forwarding path allocates nothing: a counting global allocator wraps the system
//! allocator, and after a warm-up the count must not move while bursts are switched (learning
//! refreshes, unicast, floods with copies, VLAN push/pop, drops) and sent through ring ports.
//! Only the allocations of the thread that runs the path count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::ring::{RingPeer, RingPort};
use switchyard_dataplane::port::{Burst, PortBackend, TxQueue};
use switchyard_dataplane::{Pool, PoolCache, SwitchConfig};
use testkit::frame::{Frame, ETHERTYPE_IPV4};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations count: only the thread running the forwarding path
    /// sets it (the test harness's own threads allocate too, e.g. while the test is slow).
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTED.with(|c| c.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator unchanged; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn frame(dst: [u8; 6], src: [u8; 6], vid: Option<u16>) -> Vec<u8> {
    let f = Frame::new(dst, src);
    let f = match vid {
        Some(v) => f.vlan(v),
        None => f,
    };
    f.ethertype(ETHERTYPE_IPV4).pad(64, 0xab).build()
}

/// Rounds of `inputs` (8 copies of each frame, one burst a frame, `drain` after each burst):
/// 3 to warm up (learn every MAC, which takes the writer path once, and fill the caches), then
/// 200 counted; returns the allocations of the counted rounds.
fn allocations_in_steady_state(
    sw: &SwitchConfig,
    inputs: &[(u16, Vec<u8>)],
    cache: &mut PoolCache,
    tx: &mut TxBatches,
    mut drain: impl FnMut(&mut PoolCache, &mut TxBatches),
) -> u64 {
    let mut burst = Burst::new();
    let mut round = |cache: &mut PoolCache, tx: &mut TxBatches| {
        for (port, f) in inputs {
            for _ in 0..8 {
                burst.push(cache.alloc_copy(f).unwrap());
            }
            process_burst(sw, *port, &mut burst, 5, cache, tx, None);
            drain(cache, tx);
        }
    };
    for _ in 0..3 {
        round(cache, tx);
    }
    COUNTED.with(|c| c.set(true));
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..200 {
        round(cache, tx);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    COUNTED.with(|c| c.set(false));
    allocs
}

#[test]
fn forwarding_path_does_not_allocate() {
    let cfg = Config::from_yaml_str(
        "bridges:\n- name: br0\n  ports:\n  - {name: a, tag: 10}\n  - {name: t, trunks: [10, 20]}\n  - {name: b, tag: 10}\n  - {name: c, tag: 20}\n",
    )
    .unwrap();
    let sw = SwitchConfig::compile(&cfg, None).unwrap();
    let pool = Pool::new("noalloc", 2048).unwrap();
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let mut peers: Vec<RingPeer> = Vec::new();
    let mut queues: Vec<Option<Box<dyn TxQueue>>> = Vec::new();
    for id in 0..sw.port_slots() {
        let name = &sw.port(id as u16).unwrap().name;
        let (p, peer) = RingPort::new(name, 1024);
        queues.push(Some(p.open_tx(0).unwrap()));
        peers.push(peer);
    }
    let ma = [2, 0, 0, 0, 0, 0xa];
    let mb = [2, 0, 0, 0, 0, 0xb];
    let mt = [2, 0, 0, 0, 0, 0x7];
    // Untagged from a (VLAN 10), tagged from t, a broadcast, a runt, a bad VLAN.
    let inputs: Vec<(u16, Vec<u8>)> = vec![
        (0, frame(mb, ma, None)),
        (1, frame(ma, mt, Some(10))),
        (2, frame(ma, mb, None)),
        (0, frame([0xff; 6], ma, None)),
        (1, frame([0xff; 6], mt, Some(20))),
        (0, vec![1, 2, 3]),
        (0, frame(mb, ma, Some(10))),
        (1, frame(ma, mt, Some(30))),
    ];
    let allocs = allocations_in_steady_state(&sw, &inputs, &mut cache, &mut tx, |cache, tx| {
        tx.flush(&sw, &mut queues, cache);
        for p in &peers {
            while let Some(b) = p.collect() {
                cache.free(b);
            }
        }
    });
    assert_eq!(allocs, 0, "the forwarding path allocated {allocs} times");

    // It did real work: tagged and untagged output, floods, drops.
    let a = sw.port_by_name("a").unwrap().stats.snapshot();
    let t = sw.port_by_name("t").unwrap().stats.snapshot();
    let c = sw.port_by_name("c").unwrap().stats.snapshot();
    assert!(a.tx_packets > 0 && t.tx_packets > 0 && c.tx_packets > 0);
    assert_eq!(a.drops["runt"], 8 * 203);
    assert_eq!(a.drops["vlan_not_allowed"], 8 * 203);
    assert_eq!(t.drops["vlan_not_allowed"], 8 * 203);
    drop(cache);
    drop(queues);
    drop(peers);
    assert_eq!(pool.in_use(), 0, "every buffer came back");
}

/// IPv4/UDP from `src` (MAC index, address) to `dst`, ports `sp` -> `dp`.
fn udp(src: (u8, [u8; 4]), dst: (u8, [u8; 4]), sp: u16, dp: u16) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, src.0], [2, 0, 0, 0, 0, dst.0])
        .ipv4(src.1, dst.1, 64)
        .udp(sp, dp)
        .write(&mut v, &[0; 18])
        .unwrap();
    v
}

/// The policy stage allocates nothing either: the IP spoof filter, connection tracking
/// (new connections, replies, refreshes), both policies, and their drops.
#[test]
fn policy_stage_does_not_allocate() {
    let cfg = Config::from_yaml_str(
        r#"
bridges:
- name: br0
  ports:
  - name: a
    static_macs: ['02:00:00:00:00:0a']
    allowed_ips: [10.0.0.1]
    policy: {ingress: {rules: []}, egress: {rules: [{name: r, peers: [{cidr: 10.0.0.0/24}], ports: [{protocol: UDP, port: 53, end_port: 60}]}]}}
  - name: b
    static_macs: ['02:00:00:00:00:0b']
    policy: {ingress: {rules: [{name: s, peers: [{cidr: 10.0.0.1/32}]}]}}
"#,
    )
    .unwrap();
    let sw = SwitchConfig::compile(&cfg, None).unwrap();
    let pool = Pool::new("noalloc-policy", 2048).unwrap();
    let mut cache = pool.cache();
    let mut tx = TxBatches::new(sw.port_slots());
    let (a, b) = ((0xa, [10, 0, 0, 1]), (0xb, [10, 0, 0, 2]));
    let inputs: Vec<(u16, Vec<u8>)> = vec![
        (0, udp(a, b, 5000, 53)),                    // new, allowed both ways
        (1, udp(b, a, 53, 5000)),                    // its reply
        (0, udp(a, b, 5000, 80)),                    // a's egress refuses
        (1, udp(b, a, 7, 7)),                        // a's ingress refuses
        (0, udp((0xa, [10, 0, 0, 9]), b, 5000, 53)), // spoofed
    ];
    let allocs = allocations_in_steady_state(&sw, &inputs, &mut cache, &mut tx, |cache, tx| {
        tx.drain_with(|_, out| {
            for x in out.drain(..) {
                cache.free(x);
            }
        });
    });
    assert_eq!(allocs, 0, "the policy stage allocated {allocs} times");
    let sa = sw.port_by_name("a").unwrap().stats.snapshot();
    let sb = sw.port_by_name("b").unwrap().stats.snapshot();
    assert_eq!((sa.drops["policy_egress_denied"], sa.drops["spoofed_src_ip"]), (8 * 203, 8 * 203));
    assert_eq!(sb.drops["policy_ingress_denied"], 8 * 203);
    assert_eq!(
        sa.drops.values().sum::<u64>() + sb.drops.values().sum::<u64>(),
        3 * 8 * 203,
        "the rest passed"
    );
    drop(cache);
    assert_eq!(pool.in_use(), 0, "every buffer came back");
}
