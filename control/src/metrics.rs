//! What `switchyard run --metrics` exports, in the Prometheus text exposition format (0.0.4),
//! and the control loop's own counters ([`ControlStats`]).
//!
//! Invariant: a scrape only reads. It loads the forwarding plan the workers run (one `ArcSwap`
//! load, through [`EngineView`]) and reads atomic counters; it takes no lock that a worker or
//! the control thread takes, so neither forwarding nor a reconcile ever waits for it, and a
//! reconcile that takes seconds does not delay it.
//!
//! Every metric is named once in `METRICS` (name, type, help); the port counters are the
//! ones `switchyard ctl show stats` prints, read from the same atomics.

use crate::controller::ControllerError;
use crate::runtime::Applied;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchyard_dataplane::config::PortType;
use switchyard_dataplane::switch::{DropReason, PortStats};
use switchyard_dataplane::worker::EngineView;

/// Upper bounds (seconds) of the reconcile latency histogram's buckets (`+Inf` follows).
pub const RECONCILE_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The drop reasons that are a guest's fault on a vhost-user port, summed in
/// `switchyard_vhost_guest_faults_total`.
pub const VHOST_GUEST_FAULTS: [DropReason; 4] = [
    DropReason::VhostInvalidDesc,
    DropReason::VhostRingBroken,
    DropReason::VhostNoRxDesc,
    DropReason::VhostTxRetries,
];

/// The control loop's counters, shared with the metrics and health endpoints.
#[derive(Debug)]
pub struct ControlStats {
    start: Instant,
    reconciles: AtomicU64,
    reconcile_errors: AtomicU64,
    /// Cumulative counts per bucket of [`RECONCILE_BUCKETS`], then `+Inf`.
    buckets: [AtomicU64; RECONCILE_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    /// Milliseconds since `start` at the control loop's last turn.
    heartbeat_ms: AtomicU64,
    /// A full plan was applied (and taken by every worker) at least once.
    applied: AtomicBool,
    /// The CNI ports were restored from their state directory (or there is none to restore).
    cni_restored: AtomicBool,
    /// The kinds of the Kubernetes API not listed completely yet, a bit each by their index
    /// in [`crate::api_source::Kind::ALL`] (`--kube` only): what the first plan waits for.
    api_unlisted: AtomicU32,
}

impl Default for ControlStats {
    fn default() -> Self {
        ControlStats {
            start: Instant::now(),
            reconciles: AtomicU64::new(0),
            reconcile_errors: AtomicU64::new(0),
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            applied: AtomicBool::new(false),
            cni_restored: AtomicBool::new(false),
            api_unlisted: AtomicU32::new(0),
        }
    }
}

impl ControlStats {
    /// Counts one reconcile that took `took`. An `Ok` whose plan every worker took in time
    /// makes the switch ready.
    pub fn reconcile_done(&self, took: Duration, r: &Result<Applied, ControllerError>) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let s = took.as_secs_f64();
        for (i, le) in RECONCILE_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buckets[RECONCILE_BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        match r {
            Ok(a) if a.in_time || a.generation.is_none() => self.applied.store(true, Ordering::Release),
            Ok(_) => {}
            Err(_) => {
                self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.beat();
    }

    /// The control loop is alive (called on every turn of its loop).
    pub fn beat(&self) {
        self.heartbeat_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the control loop last turned.
    pub fn since_beat(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// The CNI ports are back (or there are none to restore).
    pub fn set_cni_restored(&self) {
        self.cni_restored.store(true, Ordering::Release);
    }

    pub fn applied(&self) -> bool {
        self.applied.load(Ordering::Acquire)
    }

    pub fn cni_restored(&self) -> bool {
        self.cni_restored.load(Ordering::Acquire)
    }

    /// The kinds not listed yet ([`crate::api_source::ApiStore::unlisted`]).
    pub fn set_api_unlisted(&self, mask: u32) {
        self.api_unlisted.store(mask, Ordering::Relaxed);
    }

    /// The plural names of the kinds not listed yet, e.g. `["multi-networkpolicies"]`.
    pub fn api_unlisted(&self) -> Vec<&'static str> {
        let mask = self.api_unlisted.load(Ordering::Relaxed);
        let all = crate::api_source::Kind::ALL;
        (0..all.len()).filter(|i| mask & (1 << i) != 0).map(|i| all[i].gvk().3).collect()
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    pub fn reconcile_errors(&self) -> u64 {
        self.reconcile_errors.load(Ordering::Relaxed)
    }
}

/// Name, type and help of every exported metric, in the order of the exposition.
#[rustfmt::skip]
const METRICS: &[(&str, &str, &str)] = &[
    ("switchyard_build_info", "gauge", "Always 1; the labels name the build."),
    ("switchyard_ready", "gauge", "1 once the first full plan is applied and the CNI ports are restored."),
    ("switchyard_port_up", "gauge", "1 while the port's backend is open, 0 while it is down (it did not open; `switchyard ctl show problems` says why; opening is retried on every reconcile)."),
    ("switchyard_port_rx_packets_total", "counter", "Frames received on the port."),
    ("switchyard_port_rx_bytes_total", "counter", "Bytes received on the port."),
    ("switchyard_port_tx_packets_total", "counter", "Frames sent out of the port."),
    ("switchyard_port_tx_bytes_total", "counter", "Bytes sent out of the port."),
    ("switchyard_port_flooded_total", "counter", "Frames received on the port that were flooded."),
    ("switchyard_port_learned_total", "counter", "New MAC addresses learned on the port."),
    ("switchyard_port_moved_in_total", "counter", "MAC addresses that moved to the port from another."),
    ("switchyard_port_static_conflicts_total", "counter", "Frames whose source is another port's static MAC entry (forwarded, not learned)."),
    ("switchyard_port_mac_limit_hits_total", "counter", "New MACs not learned because of the port's mac_limit."),
    ("switchyard_port_fdb_full_total", "counter", "New MACs not learned because the bridge's table was full."),
    ("switchyard_port_drops_total", "counter", "Frames dropped, by reason (docs/semantics.md); written once non-zero."),
    ("switchyard_portless_drops_total", "counter", "Frames dropped with no port left to count them on (a tunnel port's inbox when the last port on its socket or uplink went), by reason; written once non-zero."),
    ("switchyard_vhost_guest_faults_total", "counter", "Frames dropped on a vhost-user port because of the guest (vhost_* drop reasons)."),
    ("switchyard_bridge_mac_entries", "gauge", "Entries in the bridge's MAC table (static and learned)."),
    ("switchyard_bridge_mac_capacity", "gauge", "Entries the bridge's MAC table can hold."),
    ("switchyard_bridge_mac_evicted_total", "counter", "Learned entries evicted from the bridge's full MAC table to make room for a static entry."),
    ("switchyard_worker_busy_cycles_total", "counter", "TSC cycles the worker spent on polls that received frames."),
    ("switchyard_worker_idle_cycles_total", "counter", "TSC cycles the worker spent on empty polls and backing off."),
    ("switchyard_worker_rx_packets_total", "counter", "Frames the worker received."),
    ("switchyard_worker_last_poll_age_seconds", "gauge", "Time since the worker's last poll."),
    ("switchyard_tsc_hz", "gauge", "TSC cycles per second (to turn worker cycles into time)."),
    ("switchyard_reconciles_total", "counter", "Reconciles of the source's state into the switch."),
    ("switchyard_reconcile_errors_total", "counter", "Reconciles that failed (the running configuration stayed)."),
    ("switchyard_reconcile_duration_seconds", "histogram", "Time from reading the source to the workers running the plan."),
];

/// Appends a label value with `\`, `"` and newlines escaped as the format requires.
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A label set as the exposition writes it, `{k="v",...}` (escaped), or "" for none.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    if pairs.is_empty() {
        return s;
    }
    s.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        escape(&mut s, v);
        s.push('"');
    }
    s.push('}');
    s
}

/// `set` (from [`labels`], not empty) with one more label.
fn with_label(set: &str, k: &str, v: &str) -> String {
    let mut s = set.strip_suffix('}').unwrap_or(set).to_string();
    s.push_str(if s.is_empty() { "{" } else { "," });
    s.push_str(k);
    s.push_str("=\"");
    escape(&mut s, v);
    s.push_str("\"}");
    s
}

/// One exposition being written: a section per metric, in [`METRICS`] order.
struct Expo {
    sections: Vec<String>,
}

impl Expo {
    /// One sample of metric `section` (+ `suffix`, for a histogram's series) with the label set
    /// `labels` as [`labels`] wrote it.
    fn sample(&mut self, section: usize, suffix: &str, labels: &str, value: impl std::fmt::Display) {
        let s = &mut self.sections[section];
        s.push_str(METRICS[section].0);
        s.push_str(suffix);
        s.push_str(labels);
        let _ = writeln!(s, " {value}");
    }

    fn finish(self) -> String {
        let mut out = String::with_capacity(self.sections.iter().map(String::len).sum::<usize>() + 8192);
        for (i, (name, kind, help)) in METRICS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(&self.sections[i]);
        }
        out
    }
}

fn idx(name: &str) -> usize {
    // The names are literals of this module; a miss is caught by the tests.
    METRICS.iter().position(|m| m.0 == name).unwrap_or(0)
}

/// A port counter: its metric name and how to read it from [`PortStats`].
type PortCounter = (&'static str, fn(&PortStats) -> u64);

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Port counters written for every port.
const PORT_ALWAYS: [PortCounter; 6] = [
    ("switchyard_port_rx_packets_total", PortStats::rx_packets),
    ("switchyard_port_rx_bytes_total", PortStats::rx_bytes),
    ("switchyard_port_tx_packets_total", PortStats::tx_packets),
    ("switchyard_port_tx_bytes_total", PortStats::tx_bytes),
    ("switchyard_port_flooded_total", |s| load(&s.flooded)),
    ("switchyard_port_learned_total", |s| load(&s.learned)),
];

/// Port counters that are zero on a healthy port: written only once they are not (as the drop
/// reasons), which keeps a scrape of 20,000 ports at seven samples a port (with `port_up`).
const PORT_IF_NONZERO: [PortCounter; 4] = [
    ("switchyard_port_moved_in_total", |s| load(&s.moved_in)),
    ("switchyard_port_static_conflicts_total", |s| load(&s.static_conflicts)),
    ("switchyard_port_mac_limit_hits_total", |s| load(&s.mac_limit_hits)),
    ("switchyard_port_fdb_full_total", |s| load(&s.fdb_full)),
];

/// The whole exposition: ports and bridges of the plan the workers run, the workers, the
/// control loop. Per port: whether it is up, the six `PORT_ALWAYS` counters (rx/tx packets and bytes, flooded, learned), the others and each drop reason
/// only once non-zero (as `ctl show stats` lists drops), and for a vhost-user port the sum of
/// its guest faults ([`VHOST_GUEST_FAULTS`]; the drop reasons say which).
pub fn render(view: &EngineView, ctl: &ControlStats, ready: bool) -> String {
    let mut e = Expo { sections: vec![String::new(); METRICS.len()] };
    e.sample(idx("switchyard_build_info"), "", &labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1);
    e.sample(idx("switchyard_ready"), "", "", u8::from(ready));
    let plan = view.plan();
    let sw = &plan.switch;
    let always = PORT_ALWAYS.map(|(n, f)| (idx(n), f));
    let if_nonzero = PORT_IF_NONZERO.map(|(n, f)| (idx(n), f));
    let (drops, faults) = (idx("switchyard_port_drops_total"), idx("switchyard_vhost_guest_faults_total"));
    let up = idx("switchyard_port_up");
    for id in sw.port_ids() {
        let Some(p) = sw.port(id) else { continue };
        let bridge = sw.bridges.get(p.bridge).map_or("", |b| b.name.as_str());
        let set = labels(&[("bridge", bridge), ("port", p.name.as_str())]);
        // The plan the workers run holds the backend of every port that is open, none of one
        // that is down.
        let open = plan.ports.get(usize::from(id)).is_some_and(Option::is_some);
        e.sample(up, "", &set, u8::from(open));
        for (section, field) in &always {
            e.sample(*section, "", &set, field(&p.stats));
        }
        for (section, field) in &if_nonzero {
            let v = field(&p.stats);
            if v != 0 {
                e.sample(*section, "", &set, v);
            }
        }
        for r in DropReason::ALL {
            let v = p.stats.drop_count(*r);
            if v != 0 {
                e.sample(drops, "", &with_label(&set, "reason", r.name()), v);
            }
        }
        if p.kind == Some(PortType::Vhostuser) {
            let v: u64 = VHOST_GUEST_FAULTS.iter().map(|r| p.stats.drop_count(*r)).sum();
            e.sample(faults, "", &set, v);
        }
    }
    let portless = idx("switchyard_portless_drops_total");
    for r in DropReason::ALL {
        let v = switchyard_dataplane::switch::portless_drops(*r);
        if v != 0 {
            e.sample(portless, "", &labels(&[("reason", r.name())]), v);
        }
    }
    for b in &sw.bridges {
        let set = labels(&[("bridge", &b.name)]);
        e.sample(idx("switchyard_bridge_mac_entries"), "", &set, b.table.len());
        e.sample(idx("switchyard_bridge_mac_capacity"), "", &set, b.table.capacity());
        e.sample(idx("switchyard_bridge_mac_evicted_total"), "", &set, b.table.evicted());
    }
    let ages = view.poll_ages();
    for w in view.worker_stats() {
        let (worker, core) =
            (w.worker.to_string(), w.core.map_or_else(|| "none".to_string(), |c| c.to_string()));
        let set = labels(&[("worker", worker.as_str()), ("core", core.as_str())]);
        e.sample(idx("switchyard_worker_busy_cycles_total"), "", &set, w.busy_cycles);
        e.sample(idx("switchyard_worker_idle_cycles_total"), "", &set, w.idle_cycles);
        e.sample(idx("switchyard_worker_rx_packets_total"), "", &set, w.rx_packets);
        let age = ages.get(w.worker).map_or(0.0, Duration::as_secs_f64);
        e.sample(idx("switchyard_worker_last_poll_age_seconds"), "", &set, age);
    }
    e.sample(idx("switchyard_tsc_hz"), "", "", view.tsc_hz());
    e.sample(idx("switchyard_reconciles_total"), "", "", ctl.reconciles());
    e.sample(idx("switchyard_reconcile_errors_total"), "", "", ctl.reconcile_errors());
    let h = idx("switchyard_reconcile_duration_seconds");
    for (i, le) in RECONCILE_BUCKETS.iter().enumerate() {
        e.sample(h, "_bucket", &labels(&[("le", &le.to_string())]), ctl.buckets[i].load(Ordering::Relaxed));
    }
    let count = ctl.buckets[RECONCILE_BUCKETS.len()].load(Ordering::Relaxed);
    e.sample(h, "_bucket", &labels(&[("le", "+Inf")]), count);
    e.sample(h, "_sum", "", ctl.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
    e.sample(h, "_count", "", count);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_with_prometheus_conventions() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for (name, kind, _) in METRICS {
            assert!(name.starts_with("switchyard_"), "{name}");
            assert_eq!(
                *kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only they end in _total"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape(&mut s, "a\"b\\c\nd");
        assert_eq!(s, r#"a\"b\\c\nd"#);
        let set = labels(&[("port", "ns/vm\"x")]);
        assert_eq!(set, r#"{port="ns/vm\"x"}"#);
        assert_eq!(with_label(&set, "reason", "runt"), r#"{port="ns/vm\"x",reason="runt"}"#);
        assert_eq!(with_label("", "le", "1"), r#"{le="1"}"#);
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let c = ControlStats::default();
        let err = Err(ControllerError::WatcherStopped);
        c.reconcile_done(Duration::from_millis(3), &err);
        c.reconcile_done(Duration::from_secs(20), &Ok(Applied { in_time: true, ..Default::default() }));
        let b: Vec<u64> = c.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        // 3 ms is in every bucket from 0.005 up; 20 s only in +Inf.
        assert_eq!(b, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]);
        assert_eq!((c.reconciles(), c.reconcile_errors(), c.applied()), (2, 1, true));
    }
}
