//! What `switchyard pmd` prints: rates, port and forwarding statistics (testpmd's and
//! `pmd-stats-show`'s layout), and the final summary (text, or JSON with `--json`).

use super::session::Session;
use serde_json::json;
use std::io::Write;
use std::time::Instant;
use switchyard_dataplane::switch::{DropReason, PortStatsSnapshot};
use switchyard_dataplane::worker::{FwdMode, WorkerStatsSnapshot};
use switchyard_ports::factory::drain_ring;

/// Bytes a frame costs on the wire beyond what is counted: preamble and SFD (8), inter-frame
/// gap (12) and FCS (4); counted frames exclude the FCS.
pub(super) const WIRE_OVERHEAD: u64 = 24;

/// Counters of one port at one moment, for rates.
#[derive(Clone, Copy, Default)]
pub(super) struct Mark {
    pub(super) rx: u64,
    pub(super) tx: u64,
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
}

impl Mark {
    pub(super) fn of(s: &PortStatsSnapshot) -> Mark {
        Mark { rx: s.rx_packets, tx: s.tx_packets, rx_bytes: s.rx_bytes, tx_bytes: s.tx_bytes }
    }
}

pub(super) fn mpps(pkts: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        pkts as f64 / secs / 1e6
    } else {
        0.0
    }
}

pub(super) fn gbps(bytes: u64, pkts: u64, secs: f64) -> (f64, f64) {
    if secs > 0.0 {
        (bytes as f64 * 8.0 / secs / 1e9, (bytes + pkts * WIRE_OVERHEAD) as f64 * 8.0 / secs / 1e9)
    } else {
        (0.0, 0.0)
    }
}

pub(super) fn add_worker(total: &mut WorkerStatsSnapshot, w: &WorkerStatsSnapshot) {
    total.busy_cycles += w.busy_cycles;
    total.idle_cycles += w.idle_cycles;
    total.rx_packets += w.rx_packets;
    total.forwarded_packets += w.forwarded_packets;
    total.busy_polls += w.busy_polls;
    total.idle_polls += w.idle_polls;
    total.cpu_us += w.cpu_us;
    total.stages.rx += w.stages.rx;
    total.stages.pipeline += w.stages.pipeline;
    total.stages.tx += w.stages.tx;
}

impl Session {
    /// The per-port rate lines since `mark`, which becomes now.
    pub(super) fn rates_since(&self, mark: &mut (Instant, Vec<Mark>)) -> String {
        let secs = mark.0.elapsed().as_secs_f64();
        let now = self.marks();
        let mut out = String::new();
        let (mut trx, mut ttx) = (0, 0);
        for (i, (m, old)) in now.iter().zip(&mark.1).enumerate() {
            let (rx, tx) = (m.rx.saturating_sub(old.rx), m.tx.saturating_sub(old.tx));
            let (rl2, rw) = gbps(m.rx_bytes.saturating_sub(old.rx_bytes), rx, secs);
            let (tl2, tw) = gbps(m.tx_bytes.saturating_sub(old.tx_bytes), tx, secs);
            trx += rx;
            ttx += tx;
            out += &format!(
                "  p{i}: rx {:8.3} Mpps {:7.3} Gbps L2 {:7.3} Gbps wire | tx {:8.3} Mpps {:7.3} Gbps L2 {:7.3} Gbps wire\n",
                mpps(rx, secs),
                rl2,
                rw,
                mpps(tx, secs),
                tl2,
                tw
            );
        }
        out += &format!(
            "  all: rx {:8.3} Mpps, tx {:8.3} Mpps over {secs:.3} s\n",
            mpps(trx, secs),
            mpps(ttx, secs)
        );
        *mark = (Instant::now(), now);
        out
    }

    pub(super) fn print_period(&mut self) {
        let mut mark = std::mem::replace(&mut self.period_mark, (Instant::now(), Vec::new()));
        let text = self.rates_since(&mut mark);
        self.period_mark = mark;
        print!("Port rates ({}):\n{text}", self.mode.name());
        if let Some(e) = &self.engine {
            // What each worker did in the interval: its busy share says whether it is the
            // bottleneck, its busy cycles per frame what a frame costs it.
            let now = e.worker_stats();
            for w in &now {
                let old = self.period_workers.get(w.worker).cloned().unwrap_or_default();
                let d = WorkerStatsSnapshot {
                    busy_cycles: w.busy_cycles.saturating_sub(old.busy_cycles),
                    idle_cycles: w.idle_cycles.saturating_sub(old.idle_cycles),
                    rx_packets: w.rx_packets.saturating_sub(old.rx_packets),
                    busy_polls: w.busy_polls.saturating_sub(old.busy_polls),
                    ..w.clone()
                };
                println!(
                    "  worker {}: busy {:5.1}%, {:.1} busy cycles per frame received, {:.1} frames per busy poll",
                    w.worker,
                    d.busy_ratio() * 100.0,
                    d.cycles_per_packet(),
                    if d.busy_polls == 0 { 0.0 } else { d.rx_packets as f64 / d.busy_polls as f64 }
                );
            }
            self.period_workers = now;
        }
        let _ = std::io::stdout().flush();
    }

    pub(super) fn show_port_stats(&mut self) {
        let stats = self.port_stats();
        for (i, s) in stats.iter().enumerate() {
            println!(
                "  ######################## NIC statistics for port {i} (p{i}: {}) ########################",
                self.specs[i]
            );
            println!(
                "  RX-packets: {:<14} RX-bytes: {:<16} RX-dropped: {}",
                s.rx_packets,
                s.rx_bytes,
                ingress_drops(s)
            );
            println!(
                "  TX-packets: {:<14} TX-bytes: {:<16} TX-dropped: {}",
                s.tx_packets,
                s.tx_bytes,
                egress_drops(s)
            );
            if self.mode == FwdMode::Switch {
                println!(
                    "  flooded: {}  learned: {}  moved in: {}  fdb full: {}",
                    s.flooded, s.learned, s.moved_in, s.fdb_full
                );
            }
            let reasons = drop_reasons(s);
            if !reasons.is_empty() {
                println!("  drops: {reasons}");
            }
        }
        let mut mark = std::mem::replace(&mut self.show_mark, (Instant::now(), Vec::new()));
        let text = self.rates_since(&mut mark);
        self.show_mark = mark;
        print!("  Throughput since the last show:\n{text}");
    }

    /// Per-port counters since the last `start`, and the workers' counters.
    pub(super) fn show_fwd_stats(&self, workers: Option<&[WorkerStatsSnapshot]>) {
        let now = self.port_stats();
        println!(
            "  ---------------------- Forward statistics ({} mode) ----------------------",
            self.mode.name()
        );
        let (mut trx, mut ttx, mut tdr) = (0, 0, 0);
        for (i, s) in now.iter().enumerate() {
            let b = self.fwd_base.get(i).cloned().unwrap_or_default();
            let rx = s.rx_packets.saturating_sub(b.rx_packets);
            let tx = s.tx_packets.saturating_sub(b.tx_packets);
            let dr = total_drops(s).saturating_sub(total_drops(&b));
            trx += rx;
            ttx += tx;
            tdr += dr;
            println!("  p{i}: RX-packets: {rx:<14} TX-packets: {tx:<14} dropped: {dr}");
        }
        println!("  all: RX-packets: {trx:<14} TX-packets: {ttx:<14} dropped: {tdr}");
        let live;
        let ws = match workers {
            Some(w) => w,
            None => {
                live = self.engine.as_ref().map(|e| e.worker_stats()).unwrap_or_default();
                &live
            }
        };
        print!("{}", pmd_stats(ws, self.tsc_hz));
    }

    /// Stops everything, closes the ports and counts the buffers still out. Returns the
    /// summary text and the JSON object.
    pub(super) fn finish(&mut self, requested: Option<f64>) -> (String, serde_json::Value) {
        self.stop();
        let secs = self.run_time.as_secs_f64();
        let stats = self.port_stats();
        let mut out = String::new();
        out += &format!(
            "---------------------- Summary: {} mode, {} worker(s), {secs:.3} s forwarding ----------------------\n",
            self.mode.name(),
            self.setup_opts.cores.len()
        );
        let (mut trx, mut ttx, mut tdr) = (0u64, 0u64, 0u64);
        let mut jports = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            let dr = total_drops(s);
            trx += s.rx_packets;
            ttx += s.tx_packets;
            tdr += dr;
            let (rl2, rw) = gbps(s.rx_bytes, s.rx_packets, secs);
            out += &format!(
                "  p{i} ({}): rx {} ({:.3} Mpps, {rl2:.2} Gbps L2, {rw:.2} Gbps wire)  tx {} ({:.3} Mpps)  drops {dr}\n",
                self.specs[i],
                s.rx_packets,
                mpps(s.rx_packets, secs),
                s.tx_packets,
                mpps(s.tx_packets, secs)
            );
            let reasons = drop_reasons(s);
            if !reasons.is_empty() {
                out += &format!("      drops: {reasons}\n");
            }
            let nonzero: serde_json::Map<String, serde_json::Value> =
                s.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.to_string(), json!(n))).collect();
            jports.push(json!({
                "name": format!("p{i}"),
                "spec": self.specs[i],
                "rx": s.rx_packets,
                "tx": s.tx_packets,
                "drops": dr,
                "rx_bytes": s.rx_bytes,
                "tx_bytes": s.tx_bytes,
                "drop_reasons": nonzero,
                "flooded": s.flooded,
                "learned": s.learned,
            }));
        }
        let (rx_pps, tx_pps) = if secs > 0.0 { (trx as f64 / secs, ttx as f64 / secs) } else { (0.0, 0.0) };
        out += &format!(
            "  total: rx {trx}  tx {ttx}  drops {tdr}  rx {:.3} Mpps  tx {:.3} Mpps\n",
            rx_pps / 1e6,
            tx_pps / 1e6
        );
        out += &pmd_stats(&self.worker_totals, self.tsc_hz);
        // Close the ports: drain what a ring's far end did not take, drop every handle.
        let drained: usize = self.ring_names.iter().map(|r| drain_ring(r)).sum();
        self.ports.clear();
        let in_use: usize = self.pools.iter().map(|p| p.in_use()).sum();
        let capacity: usize = self.pools.iter().map(|p| p.capacity()).sum();
        let stop_ms = self.last_stop.map(|d| d.as_secs_f64() * 1e3);
        if let Some(ms) = stop_ms {
            out += &format!("Workers stopped in {ms:.3} ms.\n");
        }
        if drained > 0 {
            out += &format!("Freed {drained} frame(s) that rings held for their (unconnected) far end.\n");
        }
        out += &format!(
            "Ports closed; buffers still in use: {in_use} (of {capacity} in {} pool(s)).\n",
            self.pools.len()
        );
        let workers: Vec<serde_json::Value> = self
            .worker_totals
            .iter()
            .map(|w| {
                json!({
                    "worker": w.worker,
                    "core": w.core,
                    "rx": w.rx_packets,
                    "tx": w.forwarded_packets,
                    "busy_cycles": w.busy_cycles,
                    "idle_cycles": w.idle_cycles,
                    "cycles_per_packet": w.cycles_per_packet(),
                    "busy_ratio": w.busy_ratio(),
                    "stage_cycles": w.stages,
                    "cpu_us": w.cpu_us,
                    "cpu_ns_per_packet": w.cpu_ns_per_packet(),
                })
            })
            .collect();
        // The workers' CPU time per frame received (all workers together).
        let mut all = WorkerStatsSnapshot::default();
        for w in &self.worker_totals {
            add_worker(&mut all, w);
        }
        let cpu_ns_per_frame = all.cpu_ns_per_packet();
        let j = json!({
            "seconds": requested.unwrap_or(secs),
            "elapsed_s": secs,
            "mode": self.mode.name(),
            "rx_pps": rx_pps,
            "cpu_ns_per_frame": cpu_ns_per_frame,
            "tx_pps": tx_pps,
            "ports": jports,
            "workers": workers,
            "stop_ms": stop_ms,
            "pool_in_use": in_use,
        });
        (out, j)
    }
}

pub(super) fn total_drops(s: &PortStatsSnapshot) -> u64 {
    s.drops.values().sum()
}

pub(super) fn is_egress(name: &str) -> bool {
    name.starts_with("tx_") || name == DropReason::PortDown.name()
}

pub(super) fn ingress_drops(s: &PortStatsSnapshot) -> u64 {
    s.drops.iter().filter(|(k, _)| !is_egress(k)).map(|(_, n)| n).sum()
}

pub(super) fn egress_drops(s: &PortStatsSnapshot) -> u64 {
    s.drops.iter().filter(|(k, _)| is_egress(k)).map(|(_, n)| n).sum()
}

pub(super) fn drop_reasons(s: &PortStatsSnapshot) -> String {
    s.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// Worker counters as `ovs-appctl dpif-netdev/pmd-stats-show` prints them.
pub(super) fn pmd_stats(ws: &[WorkerStatsSnapshot], tsc_hz: u64) -> String {
    let mut out = String::new();
    for w in ws {
        let core = w.core.map_or("unpinned".to_string(), |c| format!("core_id {c}"));
        let total = w.busy_cycles + w.idle_cycles;
        let pct = |c: u64| if total == 0 { 0.0 } else { c as f64 * 100.0 / total as f64 };
        let per = |c: u64| if w.rx_packets == 0 { 0.0 } else { c as f64 / w.rx_packets as f64 };
        out += &format!("pmd thread worker {} {core}:\n", w.worker);
        out += &format!("  packets received: {}\n", w.rx_packets);
        out += &format!("  packets forwarded: {}\n", w.forwarded_packets);
        out += &format!("  polls: {} busy, {} idle\n", w.busy_polls, w.idle_polls);
        out += &format!("  idle cycles: {} ({:.2}%)\n", w.idle_cycles, pct(w.idle_cycles));
        out += &format!("  processing cycles: {} ({:.2}%)\n", w.busy_cycles, pct(w.busy_cycles));
        out += &format!("  avg cycles per packet: {:.2} ({total}/{})\n", per(total), w.rx_packets);
        out += &format!(
            "  avg processing cycles per packet: {:.2} ({}/{})\n",
            per(w.busy_cycles),
            w.busy_cycles,
            w.rx_packets
        );
        if w.cpu_us > 0 {
            out += &format!(
                "  CPU time: {:.3} s, {:.2} ns per packet received\n",
                w.cpu_us as f64 / 1e6,
                w.cpu_ns_per_packet()
            );
        }
        let st = &w.stages;
        if st.total() > 0 {
            let other = w.busy_cycles.saturating_sub(st.total());
            out += &format!(
                "  processing cycles per packet by stage: rx {:.2}, pipeline {:.2}, tx {:.2}, loop {:.2}\n",
                per(st.rx),
                per(st.pipeline),
                per(st.tx),
                per(other)
            );
        }
        if tsc_hz > 0 {
            out += &format!("  (TSC at {:.3} GHz)\n", tsc_hz as f64 / 1e9);
        }
    }
    out
}
