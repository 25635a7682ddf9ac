//! Idle vhost-user ports: a worker with nothing to do sleeps on the guest's kick eventfd
//! instead of waking on a timer. The guest is asked to kick only while the worker sleeps
//! (USED_F_NO_NOTIFY, or avail_event with event-idx), a frame posted while the worker arms
//! its sleep is never lost, and through the whole engine an idle VM port costs (almost) no
//! CPU while a frame from the guest still goes out at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::ring::{RingPeer, RingPort};
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx, RxQueue};
use switchyard_dataplane::worker::{Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen};
use switchyard_dataplane::SwitchConfig;
use switchyard_ports::vhost::frontend::Frontend;
use switchyard_ports::vhost::proto::{feat, req, VringState};
use switchyard_ports::vhost::vring::USED_F_NO_NOTIFY;
use switchyard_ports::vhost::{sys, VhostOptions, VhostUserPort};
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const WAIT: Duration = Duration::from_secs(5);
const WITH_EVENT_IDX: u64 = feat::OFFERED;
const NO_EVENT_IDX: u64 = feat::OFFERED & !feat::RING_F_EVENT_IDX;

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sy-vidle-{}-{name}.sock", std::process::id()))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn frame(i: u32) -> Vec<u8> {
    Frame::new([0xff; 6], [0x02, 0, 0, 0, 0, 0x01])
        .ethertype(ETHERTYPE_IPV4)
        .payload(&i.to_be_bytes())
        .pad(64, 0)
        .build()
}

/// Whether `rx`'s wake fd is readable within `ms`.
fn woken(rx: &dyn RxQueue, ms: i32) -> bool {
    let fd = rx.wake_fd().expect("a wake fd");
    sys::poll_readable(fd, ms).unwrap()
}

struct Rig {
    port: VhostUserPort,
    fe: Frontend,
    pool: Pool,
    rx: Box<dyn RxQueue>,
}

impl Rig {
    fn new(name: &str, features: u64) -> Rig {
        let path = sock(name);
        let port = VhostUserPort::open(name, &path, VhostOptions::default()).unwrap();
        let mut fe = Frontend::connect(&path, WAIT).unwrap();
        fe.setup(1, 64, features).unwrap();
        wait_for("link up", || port.link_up());
        let pool = Pool::with_hugepages(name, 1024, false).unwrap();
        let rx = port.open_rx(0).unwrap();
        let mut r = Rig { port, fe, pool, rx };
        assert!(r.burst().is_empty());
        r
    }

    /// One RX burst.
    fn burst(&mut self) -> Vec<Vec<u8>> {
        let mut c = self.pool.cache();
        let mut out = Burst::new();
        let mut d = DropTally::default();
        self.rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
        assert!(d.is_zero(), "{d:?}");
        out.drain(..)
            .map(|b| {
                let v = b.data().to_vec();
                c.free(b);
                v
            })
            .collect()
    }
}

fn arm_and_disarm(name: &str, features: u64) {
    let mut r = Rig::new(name, features);
    let event_idx = features & feat::RING_F_EVENT_IDX != 0;
    assert_eq!(r.port.negotiated_features() & feat::RING_F_EVENT_IDX != 0, event_idx);
    assert!(r.rx.wake_fd().is_some(), "the running ring lends its kick fd");
    // Polling: the guest is told not to kick.
    assert!(r.fe.backend_polls(1));
    if event_idx {
        assert_eq!(r.fe.used_flags(1), 0, "with event-idx the used flags must stay 0");
    } else {
        assert_ne!(r.fe.used_flags(1) & USED_F_NO_NOTIFY, 0);
    }
    // Armed: the guest must kick for its next frame.
    assert!(r.rx.arm_wakeup());
    assert!(!r.fe.backend_polls(1));
    if event_idx {
        assert_eq!(r.fe.avail_event(1), 0, "avail_event = the next entry we consume");
        assert_eq!(r.fe.used_flags(1), 0);
    } else {
        assert_eq!(r.fe.used_flags(1) & USED_F_NO_NOTIFY, 0);
    }
    assert!(!woken(&*r.rx, 0), "nothing to wake for yet");
    assert_eq!(r.fe.transmit_notify(0, &frame(1)), Some(true), "the guest kicks");
    assert!(woken(&*r.rx, 1000), "the kick wakes the sleeper");
    r.rx.disarm_wakeup();
    assert!(r.fe.backend_polls(1), "disarmed: no kicks again");
    assert!(!woken(&*r.rx, 0), "disarm drained the kick");
    assert_eq!(r.burst(), vec![frame(1)]);

    // While the worker polls, the guest never kicks, however many frames it sends (more than
    // the ring holds, so that the indices move well past where they were at the disarm).
    let mut kicks = 0;
    for i in 0..300u32 {
        match r.fe.transmit_notify(0, &frame(i)) {
            Some(k) => kicks += u32::from(k),
            None => panic!("ring full"),
        }
        assert_eq!(r.burst(), vec![frame(i)]);
        r.fe.reclaim(1);
    }
    assert_eq!(kicks, 0, "no kick while polling");
    assert!(!woken(&*r.rx, 0));

    // Armed again after those 300 frames: the next one kicks; pending entries forbid arming.
    assert!(r.rx.arm_wakeup());
    if event_idx {
        assert_eq!(r.fe.avail_event(1), 301);
    }
    assert_eq!(r.fe.transmit_notify(0, &frame(7)), Some(true));
    assert!(!r.rx.arm_wakeup(), "a frame is waiting: arm refuses");
    assert!(r.fe.backend_polls(1), "a refused arm leaves kicks suppressed");
    r.rx.disarm_wakeup();
    assert_eq!(r.burst(), vec![frame(7)]);

    // A stopped ring has no wake fd (the worker falls back to timed sleeps) and arm refuses.
    r.fe.get_vring_base(1).unwrap();
    assert!(r.burst().is_empty());
    assert!(r.rx.wake_fd().is_none(), "no ring, no wake fd");
    assert!(!r.rx.arm_wakeup());
    r.rx.disarm_wakeup();
}

#[test]
fn arm_and_disarm_with_event_idx() {
    arm_and_disarm("ei", WITH_EVENT_IDX);
}

#[test]
fn arm_and_disarm_with_used_flags() {
    arm_and_disarm("flags", NO_EVENT_IDX);
}

/// The frontend goes away and comes back (with new kick fds) while the worker sleeps: the
/// worker lets go of the old fd and sleeps on the new one. And a ring rebuilt under a sleeper
/// with the same kick fd (here: SET_VRING_ENABLE again) keeps asking the guest to kick.
#[test]
fn sleeper_follows_reconnects_and_rebuilds() {
    let path = sock("reconnect");
    let port = VhostUserPort::open("reconnect", &path, VhostOptions::default()).unwrap();
    let pool = Pool::with_hugepages("reconnect", 256, false).unwrap();
    let mut rx = port.open_rx(0).unwrap();
    // A guest's kick costs it a VM exit: a worker with a vhost-user queue spins when idle.
    assert!(rx.spin_when_idle());
    let mut c = pool.cache();
    let mut d = DropTally::default();
    let mut burst = |rx: &mut Box<dyn RxQueue>| {
        let mut out = Burst::new();
        let n = rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32);
        for b in out.drain(..) {
            c.free(b);
        }
        n
    };
    burst(&mut rx);
    assert!(rx.wake_fd().is_none(), "no frontend yet");
    for round in 0..3u32 {
        let mut fe = Frontend::connect(&path, WAIT).unwrap();
        fe.setup(1, 64, if round % 2 == 0 { WITH_EVENT_IDX } else { NO_EVENT_IDX }).unwrap();
        wait_for("link up", || port.link_up());
        assert_eq!(burst(&mut rx), 0);
        assert!(rx.wake_fd().is_some());
        assert!(rx.arm_wakeup());
        // Rebuilt while armed.
        fe.must(req::SET_VRING_ENABLE, &VringState { index: 1, num: 1 }.bytes(), &[]).unwrap();
        fe.get_u64(req::GET_FEATURES).unwrap();
        assert!(!fe.backend_polls(1), "the rebuilt ring still asks for kicks");
        assert_eq!(fe.transmit_notify(0, &frame(round)), Some(true));
        assert!(woken(&*rx, 1000));
        rx.disarm_wakeup();
        assert!(fe.backend_polls(1));
        assert_eq!(burst(&mut rx), 1);
        // Gone while armed: we do not signal the guest's fd; the worker's poll times out.
        assert!(rx.arm_wakeup());
        drop(fe);
        wait_for("link down", || !port.link_up());
        assert!(!woken(&*rx, 0), "the backend never signals the guest's kick fd");
        rx.disarm_wakeup();
        assert_eq!(burst(&mut rx), 0);
        assert!(rx.wake_fd().is_none(), "the old kick fd is let go");
    }
}

/// A guest thread transmits with the driver's kick rule at random moments while this thread
/// polls, arms, sleeps and disarms as the worker does: entries posted between the arm's
/// request and its re-check must make the arm fail or be kicked; a sleep that runs into its
/// (long) timeout with frames outstanding is a lost wake-up.
fn no_lost_wakeups(name: &str, features: u64) {
    const N: u32 = 3000;
    let mut r = Rig::new(name, features);
    // Deterministic half first: an entry the guest posted (without kicking) before the re-check.
    assert!(r.fe.transmit(0, &frame(0)));
    assert!(!r.rx.arm_wakeup(), "pending entry: arm must fail");
    assert!(r.fe.backend_polls(1), "and undo its request");
    assert_eq!(r.burst(), vec![frame(0)]);
    r.fe.reclaim(1);

    let Rig { port, mut fe, pool, mut rx } = r;
    let guest = std::thread::spawn(move || {
        let mut kicks = 0u32;
        let mut seed = 0x2545_f491_u32;
        for i in 1..=N {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            // Pauses of up to 255 µs, or a yield, between bursts of back-to-back frames.
            match seed % 16 {
                0..=2 => std::thread::sleep(Duration::from_micros(u64::from(seed >> 24))),
                3 => std::thread::yield_now(),
                4..=5 => std::hint::spin_loop(),
                _ => {}
            }
            let end = Instant::now() + WAIT;
            loop {
                if let Some(k) = fe.transmit_notify(0, &frame(i)) {
                    kicks += u32::from(k);
                    break;
                }
                assert!(Instant::now() < end, "guest ring stayed full");
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        (fe, kicks)
    });
    let mut c = pool.cache();
    let mut d = DropTally::default();
    let mut next = 1u32;
    let (mut sleeps, mut refused) = (0u32, 0u32);
    let end = Instant::now() + Duration::from_secs(30);
    while next <= N {
        assert!(Instant::now() < end, "timed out at frame {next}");
        let mut out = Burst::new();
        if rx.rx_burst(RxCtx::new(&mut c, &mut d), &mut out, 32) > 0 {
            for b in out.drain(..) {
                assert_eq!(b.data(), &frame(next)[..]);
                next += 1;
                c.free(b);
            }
            continue;
        }
        if !rx.arm_wakeup() {
            refused += 1;
            continue;
        }
        sleeps += 1;
        let t0 = Instant::now();
        let fd = rx.wake_fd().expect("wake fd");
        let ready = sys::poll_readable(fd, 2000).unwrap();
        assert!(ready, "lost wake-up: slept {:?} with frame {next} of {N} not yet received", t0.elapsed());
        rx.disarm_wakeup();
    }
    assert!(d.is_zero(), "{d:?}");
    let (_fe, kicks) = guest.join().unwrap();
    eprintln!("{name}: {N} frames, {sleeps} sleeps, {kicks} kicks, {refused} refused arms");
    assert!(sleeps > 0, "the receiver never slept: the test proved nothing");
    drop(port);
}

#[test]
fn no_lost_wakeups_with_event_idx() {
    no_lost_wakeups("race-ei", WITH_EVENT_IDX);
}

#[test]
fn no_lost_wakeups_with_used_flags() {
    no_lost_wakeups("race-flags", NO_EVENT_IDX);
}

/// utime + stime of a thread, in clock ticks.
fn thread_cpu_ticks(task: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{task}/stat")).unwrap();
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 of `rest`.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn collect_one(peer: &RingPeer, deadline: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(b) = peer.collect() {
            return Some(b.data().to_vec());
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The whole engine: a VM port and a ring port on one bridge. Idle, the worker sleeps on the
/// kick fd (no polls, no CPU, however long the idle time really lasts); a frame the guest
/// transmits and kicks comes out of the ring port, woken for by the kick: the worker's timed
/// wake-up (`idle_wait`) is set far beyond every wait of the test, so that no frame can come
/// out by a timed poll. How fast the kick wakes it is measured (printed), not asserted: a
/// loaded machine decides that.
#[test]
fn idle_engine_sleeps_and_wakes_on_a_kick() {
    let path = sock("engine");
    let vm = Arc::new(VhostUserPort::open("vm", &path, VhostOptions::default()).unwrap());
    let (ring, peer) = RingPort::new("r", 1024);
    let backends: Vec<Option<Arc<dyn PortBackend>>> = vec![Some(vm.clone()), Some(Arc::new(ring))];
    let yaml = "bridges:\n- name: br\n  ports:\n  - {name: vm}\n  - {name: r}\n";
    let sw = Arc::new(SwitchConfig::compile(&Config::from_yaml_str(yaml).unwrap(), None).unwrap());
    let rx = ForwardingPlan::round_robin(&backends, 1);
    let plan = ForwardingPlan {
        egress: ForwardingPlan::paired_egress(backends.len()),
        switch: sw,
        ports: backends,
        rx,
        mode: FwdMode::Switch,
        gen: TxGen::default(),
    };
    let task = Arc::new(Mutex::new(String::new()));
    let t = task.clone();
    let opts = EngineOptions {
        pool_buffers: 4096,
        idle_wait: Duration::from_secs(60),
        on_worker_plan: Some(Arc::new(move |_| {
            // "<pid>/task/<tid>"
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            *t.lock().unwrap() = me.to_string_lossy().into_owned();
        })),
        ..Default::default()
    };
    let eng = Engine::start(opts, plan).unwrap();
    let mut fe = Frontend::connect(&path, WAIT).unwrap();
    fe.setup(1, 256, WITH_EVENT_IDX).unwrap();
    wait_for("link up", || vm.link_up());
    // Warm up: the first frame (the worker may still be in its timed back-off).
    assert!(fe.transmit_notify(0, &frame(0)).is_some());
    assert_eq!(collect_one(&peer, WAIT), Some(frame(0)));
    let task = task.lock().unwrap().clone();
    assert!(!task.is_empty(), "worker thread id");

    // Once the worker sleeps (it asks the guest to kick), watch it idle for a second.
    wait_for("the worker to sleep on the kick fd", || !fe.backend_polls(1));
    let s0 = eng.worker_stats()[0].clone();
    let cpu0 = thread_cpu_ticks(&task);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let s1 = eng.worker_stats()[0].clone();
    let cpu1 = thread_cpu_ticks(&task);
    let idle_s = t0.elapsed().as_secs_f64();
    let idle_polls = s1.idle_polls - s0.idle_polls;
    let busy_polls = s1.busy_polls - s0.busy_polls;
    let ticks = cpu1 - cpu0;
    eprintln!(
        "idle {idle_s:.2} s: {idle_polls} idle polls, {busy_polls} busy polls, {ticks} CPU ticks (1/100 s)"
    );
    // Asleep all along: neither figure grows with the length of the second (on a loaded
    // machine, longer), only a worker that polls instead of sleeping would trip them.
    assert!(
        idle_polls < 300,
        "an idle worker should sleep on the kick fd: {idle_polls} polls in {idle_s:.2} s"
    );
    assert!(ticks <= 5, "idle worker used {ticks} CPU ticks in {idle_s:.2} s");

    // Asleep each time (the worker asks for kicks): the guest kicks, and only the kick can
    // have woken the worker for its frame.
    let mut lats = Vec::new();
    for i in 1..=5u32 {
        wait_for("the worker to sleep on the kick fd", || !fe.backend_polls(1));
        let t = Instant::now();
        assert_eq!(fe.transmit_notify(0, &frame(i)), Some(true), "a sleeping worker asks for a kick");
        assert_eq!(collect_one(&peer, WAIT), Some(frame(i)), "the kick did not wake the worker");
        lats.push(t.elapsed());
    }
    eprintln!("kick to frame out (measured, not asserted): {lats:?}");
    let ws = eng.stop();
    assert!(ws[0].rx_packets >= 6);
    drop(fe);
}
