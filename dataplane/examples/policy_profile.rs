//! Where the policy stage's time goes: the setup of the policy benchmark
//! (benches/support/policy_setup.rs: 64-byte UDP frames from p0 to p1, 1,000 ingress rules on
//! p1, 100,000 established connections) run a fixed number of bursts, for TSC spans and for
//! instruction counts under callgrind:
//!
//! ```text
//! cargo build --release --example policy_profile -p switchyard-dataplane
//! target/release/examples/policy_profile 20000            # TSC: pipeline and stages
//! valgrind --tool=callgrind --toggle-collect='*process_burst*' \
//!     target/release/examples/policy_profile 2000 policy   # or none, or reply
//! ```
//!
//! `reply`: the same with the connections' replies (p1 to p0, the table's entries answering
//! as the other direction) instead of their packets from p0 to p1. With `POLICY_TAG=VID`, p0
//! is a trunk (an uplink) and p1 an access port of VLAN VID (benches/support/policy_setup.rs):
//! p0's frames are tagged before each counted call and the frames that come back untagged
//! after it, outside the calls callgrind counts. With `POLICY_TRUNK_SPOOF=1` beside
//! `POLICY_TAG`, that trunk has both spoof filters (its MAC and its address: a VM's trunk with
//! port security); in the `none` mode its IP spoof filter alone puts the bridge on the policy
//! stage (no connection table). With `POLICY_BESIDE=1`, the rules are on a third port and p0
//! and p1 have no policy: their connections are not tracked.
//!
//! Without a mode it prints, in TSC cycles per frame (median of 7 alternating rounds), the
//! pipeline without policy, with policy, their ratio, and each piece of the policy stage run
//! alone over the same frames: L3 parse, hash + prefetch, connection lookups, the 1,000-rule
//! classifier, then the `lookup` mode's output. TSC spans count the time the thread was
//! preempted too; on a loaded machine the thread's CPU time (`getrusage(RUSAGE_THREAD)`) is the
//! measure, printed next to them for the two pipelines.
//!
//! `policy_profile N lookup [ROUNDS]`: connection lookups alone, bursts of 32 random tracked
//! keys hashed and prefetched first, 1,000 against 1,000,000 connections, ROUNDS (default 7)
//! alternating rounds of N bursts each, in CPU time per lookup: every round, the medians, the
//! ratio and the large table's memory.

#[path = "../benches/support/policy_setup.rs"]
mod setup;

use setup::{next_frames, next_replies, switch, BURST, CONNS};
use switchyard_dataplane::conntrack::{hash, Conntrack};
use switchyard_dataplane::cpu::{hz, rdtsc};
use switchyard_dataplane::filter::parse;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::wire::ip::{FlowKey, L3};
use switchyard_dataplane::{Pool, SwitchConfig};

struct Case {
    sw: SwitchConfig,
    burst: Burst,
    tx: TxBatches,
    seq: u32,
    /// The connections' replies, from p1 to p0, rather than their packets from p0 to p1.
    reply: bool,
    /// p0's VLAN when it is a trunk ([`setup::tag`]).
    tag: Option<u16>,
}

impl Case {
    fn new(policy: bool, reply: bool, cache: &mut switchyard_dataplane::buffer::PoolCache) -> Case {
        let sw = switch(policy);
        let mut burst = Burst::new();
        let frame = if reply { setup::reply_frame() } else { setup::frame() };
        for _ in 0..BURST {
            burst.push(cache.alloc_copy(&frame).expect("buffer"));
        }
        let tx = TxBatches::new(sw.port_slots());
        let mut c = Case { sw, burst, tx, seq: 0, reply, tag: setup::tag() };
        // The first packet of each connection under this snapshot checks the policies.
        for _ in 0..CONNS as usize / BURST {
            c.run(cache);
        }
        c
    }

    #[inline]
    fn run(&mut self, cache: &mut switchyard_dataplane::buffer::PoolCache) {
        let tag = self.tag;
        if tag.is_some() {
            for b in self.burst.iter_mut() {
                if b.data().get(12..14) == Some(&[0x81, 0x00]) {
                    b.pop_vlan().expect("a tagged frame");
                }
            }
        }
        if self.reply {
            next_replies(&mut self.burst, &mut self.seq);
        } else {
            next_frames(&mut self.burst, &mut self.seq);
            if let Some(vid) = tag {
                for b in self.burst.iter_mut() {
                    b.push_vlan(vid).expect("headroom for the tag");
                }
            }
        }
        process_burst(&self.sw, u16::from(self.reply), &mut self.burst, 1, cache, &mut self.tx, None);
        let burst = &mut self.burst;
        self.tx.drain_with(|_, out| burst.extend(out.drain(..)));
    }
}

/// Cycles per frame of `bursts` calls of `f`.
fn span(bursts: u32, mut f: impl FnMut()) -> f64 {
    let t0 = rdtsc();
    for _ in 0..bursts {
        f();
    }
    rdtsc().wrapping_sub(t0) as f64 / f64::from(bursts) / BURST as f64
}

/// The calling thread's CPU time in nanoseconds (microsecond resolution).
fn cpu_ns() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0.0, |u| {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
        (us(u.user_time()) + us(u.system_time())) * 1e3
    })
}

/// TSC cycles and CPU nanoseconds per frame of `bursts` calls of `f`.
fn span_cpu(bursts: u32, mut f: impl FnMut()) -> (f64, f64) {
    let (c0, t0) = (cpu_ns(), rdtsc());
    for _ in 0..bursts {
        f();
    }
    let frames = f64::from(bursts) * BURST as f64;
    (rdtsc().wrapping_sub(t0) as f64 / frames, (cpu_ns() - c0) / frames)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bursts: u32 = std::env::args().nth(1).map_or(Ok(20_000), |s| s.parse())?;
    let mode = std::env::args().nth(2);
    let pool = Pool::new("policy-profile", 4096)?;
    let mut cache = pool.cache();
    if mode.as_deref() == Some("lookup") {
        let rounds: usize = std::env::args().nth(3).map_or(Ok(7), |s| s.parse())?;
        return lookups(bursts, rounds);
    }
    if let Some(mode) = mode {
        let mut c = Case::new(mode != "none", mode == "reply", &mut cache);
        for _ in 0..bursts {
            c.run(&mut cache);
        }
        let drops = c.sw.port(u16::from(c.reply)).map(|p| p.stats.total_drops()).unwrap_or(0);
        println!("{mode}: {bursts} bursts of {BURST}, {drops} drops");
        return Ok(());
    }
    let mut none = Case::new(false, false, &mut cache);
    let mut pol = Case::new(true, false, &mut cache);
    let (mut tn, mut tp, mut cn, mut cp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        let (t, c) = span_cpu(bursts, || none.run(&mut cache));
        tn.push(t);
        cn.push(c);
        let (t, c) = span_cpu(bursts, || pol.run(&mut cache));
        tp.push(t);
        cp.push(c);
    }
    let (tn, tp, cn, cp) = (median(tn), median(tp), median(cn), median(cp));
    let ghz = hz() as f64 / 1e9;
    println!("TSC {ghz:.2} GHz; per frame, median of 7 rounds of {bursts} bursts of {BURST}:");
    println!("pipeline, no policy          {tn:8.1} cycles  ({:.1} ns)  CPU {cn:.1} ns", tn / ghz);
    println!(
        "pipeline, 1000 rules, 100k   {tp:8.1} cycles  ({:.1} ns)  CPU {cp:.1} ns  rate ratio {:.3} (TSC), {:.3} (CPU)",
        tp / ghz,
        tn / tp,
        cn / cp
    );

    // The pieces alone, over the same frame stream.
    let ct = pol.sw.bridges[0].conntrack.clone().ok_or("no table")?;
    let ing = pol.sw.port(1).and_then(|p| p.policy.clone()).ok_or("no policy")?;
    let ing = ing.ingress.as_ref().ok_or("no ingress")?;
    let mut keys = [(FlowKey::default(), 0u64); BURST];
    let mut seq = 0u32;
    let mut sink = 0u64;
    let parse_c = span(bursts, || {
        next_frames(&mut pol.burst, &mut seq);
        for (b, k) in pol.burst.iter().zip(keys.iter_mut()) {
            if let L3::Ip(f) = parse(b.data(), false).1 {
                k.0 = f.key;
            }
        }
    });
    let rewrite_c = span(bursts, || next_frames(&mut pol.burst, &mut seq));
    let hash_c = span(bursts, || next_keys(&mut keys, &mut seq, Some(&ct)));
    let key_c = span(bursts, || next_keys(&mut keys, &mut seq, None));
    let lookup_c = span(bursts, || {
        next_keys(&mut keys, &mut seq, Some(&ct));
        for k in keys.iter() {
            sink += u64::from(ct.lookup_hashed(&k.0, k.1, 1).is_some());
        }
    });
    let class_c = span(bursts, || {
        for k in keys.iter() {
            sink += u64::from(ing.matches(k.0.src_ip(), k.0.proto, k.0.dport).is_some());
        }
    });
    println!("stages alone (cycles per frame):");
    println!("  L3 parse (less the frame rewrite)   {:8.1}", parse_c - rewrite_c);
    println!("  hash + prefetch (less key making)   {:8.1}", hash_c - key_c);
    println!("  conntrack lookup (less hash+pf)     {:8.1}", lookup_c - hash_c);
    println!("  classifier, 1000 rules              {:8.1}", class_c);
    println!("({sink} hits)");

    // Lookups alone, 1,000 against 1,000,000 connections.
    lookups(bursts, 7)
}

/// The `lookup` mode: 1,000 against 1,000,000 connections in CPU time per lookup.
fn lookups(bursts: u32, rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    let small = setup::lookup_table(1000);
    let large = setup::lookup_table(1_000_000);
    let mut rng = 7u64;
    let mut out = [None; BURST];
    let mut hits = 0u64;
    let mut lk = |t: &(Conntrack, fn(u32) -> FlowKey), n: u64| {
        let mut ks = [FlowKey::default(); BURST];
        for k in ks.iter_mut() {
            *k = (t.1)((setup::splitmix(&mut rng) % n) as u32);
        }
        t.0.lookup_burst(&ks, 2, &mut out);
        hits += out.iter().flatten().count() as u64;
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let (_, s) = span_cpu(bursts, || lk(&small, 1000));
        let (_, l) = span_cpu(bursts, || lk(&large, 1_000_000));
        println!(
            "round {r}: 1,000 connections {s:6.1} ns, 1,000,000 {l:6.1} ns a lookup (CPU time), ratio {:.2}",
            l / s
        );
        a.push(s);
        b.push(l);
    }
    let (s, l) = (median(a), median(b));
    println!(
        "median of {rounds}: 1,000 connections {s:.1} ns, 1,000,000 connections {l:.1} ns ({:.1} MiB), ratio {:.2}",
        large.0.memory() as f64 / 1048576.0,
        l / s
    );
    println!("({hits} hits of {})", u64::from(bursts) * BURST as u64 * 2 * rounds as u64);
    Ok(())
}

/// The next burst's connection keys; with a table, each hashed and its slot prefetched (the
/// conntrack stage's first half).
fn next_keys(keys: &mut [(FlowKey, u64); BURST], seq: &mut u32, ct: Option<&Conntrack>) {
    for (i, k) in keys.iter_mut().enumerate() {
        k.0 = setup::conn((seq.wrapping_add(i as u32)) % CONNS);
        if let Some(ct) = ct {
            k.1 = hash(&k.0);
            ct.prefetch(k.1);
        }
    }
    *seq = seq.wrapping_add(BURST as u32);
}
