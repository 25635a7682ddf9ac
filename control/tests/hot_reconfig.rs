//! Ports that do not change lose no frame while others are added, changed, reopened and
//! removed: two unchanged ring ports forward to each other through the running switch while
//! 60 reconciles change other ports (and respell the two ports' backends, which is no change),
//! and every frame is counted out, once, in order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_control::runtime::{Runtime, RuntimeOptions};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType, VlanModeName};
use switchyard_dataplane::port::ring::RingPeer;
use switchyard_dataplane::worker::EngineOptions;
use switchyard_ports::factory::ring_peer;
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

fn port(name: &str, tag: u16, mac: Option<[u8; 6]>) -> PortConfig {
    PortConfig {
        name: name.into(),
        kind: Some(PortType::Ring),
        vlan_mode: Some(VlanModeName::Access),
        tag: Some(tag),
        static_macs: mac.map(|m| vec![switchyard_dataplane::wire::MacAddr(m)]).unwrap_or_default(),
        ..Default::default()
    }
}

/// The switch: the two kept ports, their backend spelled in one of three ways by `spelling`
/// (`type: ring`, `type` left out, the ring named like the port: one backend), and `churn`.
fn config(churn: &[PortConfig], spelling: usize) -> Config {
    let keep = |name: &str, mac| {
        let mut p = port(name, 10, Some(mac));
        match spelling % 3 {
            0 => {}
            1 => p.kind = None,
            _ => p.ring = Some(name.into()),
        }
        p
    };
    let mut ports = vec![keep("hr-keep-a", A), keep("hr-keep-b", B)];
    ports.extend(churn.iter().cloned());
    let mut bridges = vec![BridgeConfig::new("br", ports)];
    // A second bridge that comes and goes with the churn.
    if churn.len() % 2 == 1 {
        bridges.push(BridgeConfig::new("br-extra", vec![port("hr-extra", 5, None)]));
    }
    Config { bridges }
}

fn frame(src: [u8; 6], dst: [u8; 6], seq: u64) -> Vec<u8> {
    Frame::new(dst, src).ethertype(ETHERTYPE_IPV4).payload(&seq.to_be_bytes()).pad(64, 0).build()
}

/// Frames in flight per direction: well under a ring's depth, so a slow collector (a busy test
/// machine) can never make the switch's TX ring overflow; any loss is the switch's.
const WINDOW: u64 = 512;

/// Injects numbered frames src -> dst on `peer` until `stop`, keeping at most [`WINDOW`] not
/// yet collected (`got`); returns how many went in.
fn inject(
    peer: RingPeer,
    pool: Pool,
    src: [u8; 6],
    dst: [u8; 6],
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut cache = pool.cache();
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        if seq - got.load(Ordering::Acquire) >= WINDOW {
            std::thread::yield_now();
            continue;
        }
        let Some(b) = cache.alloc_copy(&frame(src, dst, seq)) else {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        };
        match peer.inject(b) {
            Ok(()) => seq += 1,
            Err(b) => {
                cache.free(b);
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
    seq
}

/// Collects frames from `peer` until `stop` and `want` (once known) frames came; checks each
/// is from `src` and numbered in order. Returns the count.
fn collect(
    peer: RingPeer,
    src: [u8; 6],
    got: Arc<AtomicU64>,
    want: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut n = 0u64;
    let mut deadline: Option<Instant> = None;
    loop {
        match peer.collect() {
            Some(b) => {
                let d = b.data();
                assert_eq!(&d[6..12], &src, "a frame from elsewhere");
                let seq = u64::from_be_bytes(d[14..22].try_into().unwrap());
                if seq != n {
                    eprintln!("frame {n} lost, duplicated or reordered: got {seq}");
                    return u64::MAX;
                }
                n += 1;
                got.store(n, Ordering::Release);
            }
            None => {
                if stop.load(Ordering::Acquire) {
                    let w = want.load(Ordering::Acquire);
                    if w != u64::MAX && n >= w {
                        return n;
                    }
                    let dl = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
                    if Instant::now() > dl {
                        return n;
                    }
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

#[test]
fn unchanged_ports_lose_no_frame_during_a_burst_of_changes() {
    let opts = RuntimeOptions {
        engine: EngineOptions { cores: vec![None, None], ..Default::default() },
        ..Default::default()
    };
    let mut rt = Runtime::start(opts).unwrap();
    let none = |_: &str| None;
    rt.apply(&config(&[], 0), &none).unwrap();
    let (ba, bb) = (rt.backend("hr-keep-a").unwrap(), rt.backend("hr-keep-b").unwrap());
    let (pa, pb) = (ring_peer("hr-keep-a").unwrap(), ring_peer("hr-keep-b").unwrap());

    let stop_in = Arc::new(AtomicBool::new(false));
    let stop_out = Arc::new(AtomicBool::new(false));
    let (want_a, want_b) = (Arc::new(AtomicU64::new(u64::MAX)), Arc::new(AtomicU64::new(u64::MAX)));
    let (got_at_a, got_at_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pool = Pool::new("hr-inject", 8192).unwrap();
    let inj_ab = {
        let (p, pool, g, s) = (pa.clone(), pool.clone(), got_at_b.clone(), stop_in.clone());
        std::thread::spawn(move || inject(p, pool, A, B, g, s))
    };
    let inj_ba = {
        let (p, pool, g, s) = (pb.clone(), pool.clone(), got_at_a.clone(), stop_in.clone());
        std::thread::spawn(move || inject(p, pool, B, A, g, s))
    };
    let out_b = {
        let (p, g, w, s) = (pb.clone(), got_at_b.clone(), want_b.clone(), stop_out.clone());
        std::thread::spawn(move || collect(p, A, g, w, s))
    };
    let out_a = {
        let (p, g, w, s) = (pa.clone(), got_at_a.clone(), want_a.clone(), stop_out.clone());
        std::thread::spawn(move || collect(p, B, g, w, s))
    };

    // 60 reconciles: add, change (VLAN, and bridge), reopen and remove other ports, while the
    // kept ports' backends are respelled (`type: ring` left out, written out, its ring named).
    let mut churn: Vec<PortConfig> = Vec::new();
    let mut changes = 0;
    for i in 0..60 {
        match i % 4 {
            0 => churn.push(port(&format!("hr-churn-{i}"), 10, Some([2, 0, 0, 1, 0, i as u8]))),
            1 => {
                for p in &mut churn {
                    p.tag = Some(if p.tag == Some(10) { 20 } else { 10 });
                }
            }
            2 if churn.len() > 3 => {
                churn.remove(0);
            }
            _ => {
                if let Some(p) = churn.last_mut() {
                    p.ring = Some(format!("hr-ring-{i}"));
                }
            }
        }
        let a = rt.apply(&config(&churn, i / 2), &none).unwrap();
        assert!(a.in_time, "workers did not apply change {i}");
        assert!(
            a.diff.unchanged.contains(&"hr-keep-a".to_string())
                && a.diff.unchanged.contains(&"hr-keep-b".to_string())
        );
        if !a.diff.is_empty() {
            changes += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(changes >= 50, "only {changes} reconciles changed something");
    assert!(Arc::ptr_eq(&ba, &rt.backend("hr-keep-a").unwrap()));
    assert!(Arc::ptr_eq(&bb, &rt.backend("hr-keep-b").unwrap()));

    stop_in.store(true, Ordering::Release);
    let sent_ab = inj_ab.join().unwrap();
    let sent_ba = inj_ba.join().unwrap();
    want_b.store(sent_ab, Ordering::Release);
    want_a.store(sent_ba, Ordering::Release);
    stop_out.store(true, Ordering::Release);
    let got_b = out_b.join().unwrap();
    let got_a = out_a.join().unwrap();
    assert!(sent_ab > 1000 && sent_ba > 1000, "too little traffic: {sent_ab} {sent_ba}");
    assert_eq!(got_b, sent_ab, "frames a -> b");
    assert_eq!(got_a, sent_ba, "frames b -> a");
    for n in ["hr-keep-a", "hr-keep-b"] {
        let s = rt.switch().port_by_name(n).unwrap().stats.snapshot();
        let drops: u64 = s.drops.values().sum();
        assert_eq!(drops, 0, "{n}: {:?}", s.drops);
    }
    rt.stop();
}

/// Frames the switch queued to a ring port whose far end never took them go back to their pool
/// when the port is removed, not when the process ends (the ring's far end stays registered,
/// so its queue would hold them past the runtime and its pool).
#[test]
fn a_removed_ring_ports_frames_go_back_to_their_pool() {
    let opts = RuntimeOptions {
        engine: EngineOptions { cores: vec![None], ..Default::default() },
        ..Default::default()
    };
    let mut rt = Runtime::start(opts).unwrap();
    let none = |_: &str| None;
    let cfg = |sink: bool| {
        let mut ports = vec![port("rr-src", 10, None)];
        if sink {
            ports.push(port("rr-sink", 10, None));
        }
        Config { bridges: vec![BridgeConfig::new("br", ports)] }
    };
    rt.apply(&cfg(true), &none).unwrap();
    let (src, sink) = (ring_peer("rr-src").unwrap(), ring_peer("rr-sink").unwrap());
    let pool = Pool::new("rr-inject", 64).unwrap();
    let mut cache = pool.cache();
    for seq in 0..3 {
        let b = cache.alloc_copy(&frame([2, 0, 0, 0, 0, 1], [0xff; 6], seq)).unwrap();
        assert!(src.inject(b).is_ok());
    }
    // The three broadcasts reach the sink's queue (flooded: the only other port).
    let sent =
        |rt: &Runtime| rt.switch().port_by_name("rr-sink").map_or(0, |p| p.stats.snapshot().tx_packets);
    let t = Instant::now();
    while sent(&rt) < 3 {
        assert!(t.elapsed() < Duration::from_secs(5), "the sink got {} of 3", sent(&rt));
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.apply(&cfg(false), &none).unwrap();
    assert!(sink.collect().is_none(), "the removed port's queue was emptied when it went");
    rt.stop();
    drop(cache);
    assert_eq!(pool.in_use(), 0);
}
