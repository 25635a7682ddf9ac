//! `switchyard replay SCENARIO --out DIR [--expect DIR] [--trace]`: the deterministic
//! pcap-replay harness (docs/semantics.md, "switchyard replay").
//!
//! All input frames are merged by timestamp (ties: the order of `inputs`, then file order) and
//! go one at a time through the same pipeline code the workers run. The clock is the pcap
//! timestamp, so learning and aging are deterministic. Every input is checked before any frame
//! is processed: a bad scenario, an unknown port or a damaged pcap writes nothing.
//!
//! Every port is pcap-backed, its `type` ignored, except a tunnel port (`type: vxlan |
//! geneve`) that the scenario gives an uplink (`uplinks: {PORT: {mac, mtu}}`, what a node
//! reads from the interface): it runs as the fast path does (ports/src/uplink_tunnel.rs)
//! with the capture as its uplink's, outer headers and ARP/ND included, whatever its
//! `underlay` says. Its seconds (neighbour probes, remote MAC
//! aging) are the capture's too, and its RX queue is polled before every input frame, as a
//! worker polls it between frames: probes leave at the first frame's time.
//!
//! `--expect` is the oracle of every case under tests/replay: any difference in a frame's bytes,
//! timestamp or presence, in a counter the expected `stats.json` lists, or a buffer not back in
//! the pool at the end (`buffers_leaked`, 0 unless the expected file says otherwise) fails the
//! run and is named (port, frame number, byte offset, counter path).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use switchyard_dataplane::backend::Backend;
use switchyard_dataplane::buffer::{Pool, DATA_ROOM};
use switchyard_dataplane::config::{from_yaml, BridgeConfig, Config};
use switchyard_dataplane::pipeline::{process_burst, FrameTrace, TxBatches};
use switchyard_dataplane::port::pcap::{read_pcap, resolve, PcapFrame, PcapPort, TxClock};
use switchyard_dataplane::port::ring::{RingPeer, RingPort};
use switchyard_dataplane::port::{
    Burst, DropTally, PortBackend, PortError, RxCtx, RxQueue, TxQueue, MAX_BURST,
};
use switchyard_dataplane::switch::{DropReason, PortId, SwitchConfig};
use switchyard_dataplane::wire::MacAddr;
use switchyard_ports::udp_tunnel::TunnelOptions;
use switchyard_ports::uplink_tunnel::{NextHops, TunnelClock, UplinkTunnelPort};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The scenario: a configuration file plus `inputs: {PORT: FILE.pcap}`.
    pub scenario: PathBuf,
    /// Where to write `<port>.pcap` for every port and `stats.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Compare the output with the pcaps (and optional stats.json subset) in this directory;
    /// buffers still out of the pool at the end are a difference too.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Print one line per frame with the decision taken.
    #[arg(long)]
    pub trace: bool,
}

/// Failures of the replay harness.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Config(#[from] switchyard_dataplane::config::ConfigError),
    #[error("{file}: inputs: {msg}")]
    Inputs { file: String, msg: String },
    #[error("{file}: uplinks: {msg}")]
    Uplinks { file: String, msg: String },
    #[error(
        "{file}: ports {a:?} and {b:?} would both write {name} in the output directory (a port's \
         output file is its name with every `/` turned into `_`): rename one of them"
    )]
    SameOutputFile { file: String, a: String, b: String, name: String },
    #[error("{0}")]
    Port(#[from] switchyard_dataplane::port::PortError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("buffer pool: {0}")]
    Buffer(#[from] switchyard_dataplane::buffer::BufferError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    bridges: Vec<BridgeConfig>,
    #[serde(default)]
    inputs: serde_yaml_ng::Mapping,
    #[serde(default)]
    uplinks: BTreeMap<String, UplinkFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkFile {
    mac: String,
    mtu: Option<u32>,
}

/// The uplink of a tunnel port in a scenario: what a node reads from the interface.
pub struct Uplink {
    pub mac: MacAddr,
    /// The underlay MTU (default 1500).
    pub mtu: u32,
}

/// A loaded, checked scenario.
pub struct Scenario {
    pub config: Config,
    /// (port name, frames), in the order of `inputs`.
    pub inputs: Vec<(String, Vec<PcapFrame>)>,
    /// The uplink of each tunnel port that runs on one, by port name.
    pub uplinks: BTreeMap<String, Uplink>,
}

/// The file name a port's capture gets: `/` (as in `ns/vmi/iface`) becomes `_`. Two ports
/// whose names map to one file (`a/b`, `a_b`) are refused by [`Scenario::load`].
pub fn port_file_name(port: &str) -> String {
    format!("{}.pcap", port.replace('/', "_"))
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ReplayError> {
        let file = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ReplayError::Io { path: file.clone(), source: e })?;
        let s: ScenarioFile = from_yaml(&text, &file)?;
        let config = Config { bridges: s.bridges };
        config.validate().map_err(|e| match e {
            switchyard_dataplane::config::ConfigError::Invalid { field, msg } => {
                switchyard_dataplane::config::ConfigError::Invalid { field: format!("{file}: {field}"), msg }
            }
            other => other,
        })?;
        let ports: Vec<&str> =
            config.bridges.iter().flat_map(|b| b.ports.iter().map(|p| p.name.as_str())).collect();
        // One output file a port: a second port writing the same file would overwrite the first.
        let mut files: BTreeMap<String, &str> = BTreeMap::new();
        for &p in &ports {
            let name = port_file_name(p);
            if let Some(&a) = files.get(&name) {
                return Err(ReplayError::SameOutputFile { file, a: a.into(), b: p.into(), name });
            }
            files.insert(name, p);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut inputs = Vec::new();
        let inputs_err = |msg: String| ReplayError::Inputs { file: file.clone(), msg };
        // Check every name before reading any capture.
        let mut named = Vec::new();
        for (k, v) in &s.inputs {
            let (Some(port), Some(pcap)) = (k.as_str(), v.as_str()) else {
                return Err(inputs_err(format!("entry {k:?}: {v:?} is not PORT: FILE")));
            };
            if !ports.contains(&port) {
                return Err(inputs_err(format!("unknown port {port:?} (not in any bridge)")));
            }
            named.push((port.to_string(), resolve(base, pcap)));
        }
        let uplinks_err = |msg: String| ReplayError::Uplinks { file: file.clone(), msg };
        let mut uplinks = BTreeMap::new();
        for (name, u) in &s.uplinks {
            let port = config.bridges.iter().flat_map(|b| &b.ports).find(|p| &p.name == name);
            if !matches!(port.map(|p| p.backend()), Some(Ok(Backend::Tunnel(_)))) {
                return Err(uplinks_err(format!("{name:?} is not a tunnel port (vxlan, geneve)")));
            }
            let mac = u.mac.parse::<MacAddr>().map_err(|e| uplinks_err(format!("{name}: mac: {e}")))?;
            uplinks.insert(name.clone(), Uplink { mac, mtu: u.mtu.unwrap_or(1500) });
        }
        for (port, pcap) in named {
            inputs.push((port, read_pcap(&pcap)?));
        }
        Ok(Scenario { config, inputs, uplinks })
    }
}

/// The key of `stats.json` that counts the buffers still out of the pool when the run ended;
/// anything but 0 is a bug of the pipeline or a port, and `compare` always checks it.
const LEAKED: &str = "buffers_leaked";

/// The result of a replay run.
pub struct ReplayOutcome {
    pub trace: Vec<String>,
}

fn fmt_time(ts_ns: u64) -> String {
    format!("{}.{:06}", ts_ns / 1_000_000_000, (ts_ns % 1_000_000_000) / 1000)
}

fn trace_line(cfg: &SwitchConfig, ts: u64, t: &FrameTrace) -> String {
    format!("{} {}", fmt_time(ts), t.describe(cfg))
}

/// A tunnel port's uplink in replay: its capture's frames come in through a ring, the frames
/// it sends go to its pcap.
struct ReplayUplink {
    name: String,
    ring: RingPort,
    pcap: PcapPort,
}

impl PortBackend for ReplayUplink {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.ring.open_rx(q)
    }

    fn open_tx(&self, q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        self.pcap.open_tx(q)
    }
}

/// The receive side of a tunnel port in replay.
struct TunnelRx {
    port: PortId,
    peer: RingPeer,
    rx: Box<dyn RxQueue>,
}

/// Opens port `spec` of the scenario: a pcap writer, or a tunnel port on an uplink whose
/// frames go to that writer.
fn open_port(
    sc: &Scenario,
    spec: &switchyard_dataplane::switch::PortSpec,
    path: &Path,
    clock: &Arc<AtomicU64>,
) -> Result<(Box<dyn TxQueue>, Option<TunnelRx>), ReplayError> {
    let pcap = PcapPort::open(&spec.name, None, Some(path), false, TxClock::Shared(clock.clone()))?;
    let configured = sc.config.bridges.iter().flat_map(|b| &b.ports).find(|p| p.name == spec.name);
    let (Some(u), Some(Ok(Backend::Tunnel(t)))) =
        (sc.uplinks.get(&spec.name), configured.map(|p| p.backend()))
    else {
        return Ok((pcap.open_tx(0)?, None));
    };
    let name = format!("{}-uplink", spec.name);
    let (ring, peer) = RingPort::new(&name, 64);
    let uplink = Arc::new(ReplayUplink { name, ring, pcap });
    let opts = TunnelOptions::from_backend(&t);
    // The port's own `routes` only: replay never reads the kernel's.
    let hops = NextHops { routes: NextHops::routes_of(&t.routes), kernel_iface: None };
    let port = UplinkTunnelPort::new(&spec.name, &opts, uplink, u.mac, u.mtu, hops)?
        .with_clock(TunnelClock::Shared(clock.clone()))
        .ok_or_else(|| PortError::Backend { port: spec.name.clone(), msg: "clock not set".into() })?;
    let rx = port.open_rx(0)?;
    Ok((port.open_tx(0)?, Some(TunnelRx { port: spec.id, peer, rx })))
}

/// Runs the scenario, writing `<port>.pcap` and `stats.json` into `out`.
pub fn run(sc: &Scenario, out: &Path, want_trace: bool) -> Result<ReplayOutcome, ReplayError> {
    let cfg = SwitchConfig::compile(&sc.config, None)?;
    std::fs::create_dir_all(out)
        .map_err(|e| ReplayError::Io { path: out.display().to_string(), source: e })?;
    let clock = Arc::new(AtomicU64::new(0));
    let mut queues: Vec<Option<Box<dyn TxQueue>>> = (0..cfg.port_slots()).map(|_| None).collect();
    let mut tunnels = Vec::new();
    for id in cfg.port_ids().collect::<Vec<_>>() {
        let spec = cfg.port(id).expect("id from port_ids");
        let (q, rx) = open_port(sc, spec, &out.join(port_file_name(&spec.name)), &clock)?;
        queues[usize::from(id)] = Some(q);
        tunnels.extend(rx);
    }

    // Merge: a stable sort by time keeps the order of `inputs`, then file order, on ties.
    let mut frames: Vec<(u64, PortId, &PcapFrame)> = Vec::new();
    for (port, list) in &sc.inputs {
        let id = cfg.by_name[port];
        frames.extend(list.iter().map(|f| (f.ts_ns, id, f)));
    }
    frames.sort_by_key(|f| f.0);

    let pool = Pool::new("replay", 8192)?;
    let mut cache = pool.cache();
    let mut outputs = Outputs { tx: TxBatches::new(cfg.port_slots()), queues, lines: Vec::new(), want_trace };
    let mut burst = Burst::new();
    let mut last_sweep: Option<u32> = None;
    for (ts, port, f) in frames {
        clock.store(ts, std::sync::atomic::Ordering::Relaxed);
        let now = (ts / 1_000_000_000) as u32;
        if last_sweep != Some(now) {
            for b in &cfg.bridges {
                b.table.age(now);
            }
            last_sweep = Some(now);
        }
        let spec = cfg.port(port).expect("input ports checked at load");
        let to_tunnel = tunnels.iter().position(|t| t.port == port);
        let refused = if (f.data.len() as u64) < u64::from(f.orig_len) {
            Some(DropReason::TruncatedCapture)
        } else if f.data.len() > DATA_ROOM {
            Some(DropReason::Oversize)
        } else {
            None
        };
        let buf = match refused {
            None => cache.alloc_copy(&f.data),
            Some(_) => None,
        };
        let Some(buf) = buf else {
            let r = refused.unwrap_or(DropReason::NoBuffer);
            spec.stats.add_drop(r, 1);
            if want_trace {
                outputs.lines.push(format!(
                    "{} {} len={} -> drop {}",
                    fmt_time(ts),
                    spec.name,
                    f.data.len(),
                    r.name()
                ));
            }
            continue;
        };
        let mut buf = Some(buf);
        // Every tunnel port's RX is polled (its probes are due at this time), the one the
        // frame is for with the frame in its ring.
        for (k, t) in tunnels.iter_mut().enumerate() {
            if to_tunnel == Some(k) {
                if let Some(b) = buf.take().and_then(|b| t.peer.inject(b).err()) {
                    cache.free(b);
                    spec.stats.add_drop(DropReason::NoBuffer, 1);
                }
            }
            let mut drops = DropTally::default();
            t.rx.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, MAX_BURST);
            if let Some(s) = cfg.port(t.port) {
                drops.flush_into(&s.stats);
            }
            outputs.switch(&cfg, t.port, &mut burst, (ts, now), &mut cache);
        }
        if let Some(b) = buf {
            burst.push(b);
            outputs.switch(&cfg, port, &mut burst, (ts, now), &mut cache);
        }
    }
    let Outputs { mut queues, lines, .. } = outputs;
    for q in queues.iter_mut().flatten() {
        q.flush()?;
    }
    drop(queues);
    drop(cache);
    let leaked = pool.in_use();
    if leaked != 0 {
        tracing::error!(leaked, "replay finished with buffers still out");
    }

    let mut ports = serde_json::Map::new();
    for id in cfg.port_ids() {
        let spec = cfg.port(id).expect("id from port_ids");
        ports.insert(spec.name.clone(), serde_json::to_value(spec.stats.snapshot()).unwrap_or_default());
    }
    let mut bridges = serde_json::Map::new();
    for b in &cfg.bridges {
        bridges.insert(
            b.name.clone(),
            serde_json::json!({"fdb_entries": b.table.len(), "fdb_full_drops": b.table.full_drops()}),
        );
    }
    let stats = serde_json::json!({"ports": ports, "bridges": bridges, LEAKED: leaked});
    let text = serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n";
    let sp = out.join("stats.json");
    std::fs::write(&sp, text).map_err(|e| ReplayError::Io { path: sp.display().to_string(), source: e })?;
    Ok(ReplayOutcome { trace: lines })
}

/// Where switched frames go: the ports' TX queues, and the trace.
struct Outputs {
    tx: TxBatches,
    queues: Vec<Option<Box<dyn TxQueue>>>,
    lines: Vec<String>,
    want_trace: bool,
}

impl Outputs {
    /// Switches `burst` (received on `port` at `ts` ns, `now` s) and sends what it makes.
    fn switch(
        &mut self,
        cfg: &SwitchConfig,
        port: PortId,
        burst: &mut Burst,
        (ts, now): (u64, u32),
        cache: &mut switchyard_dataplane::buffer::PoolCache,
    ) {
        if burst.is_empty() {
            return;
        }
        let mut traces = Vec::new();
        process_burst(cfg, port, burst, now, cache, &mut self.tx, self.want_trace.then_some(&mut traces));
        self.tx.flush(cfg, &mut self.queues, cache);
        self.lines.extend(traces.iter().map(|t| trace_line(cfg, ts, t)));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Describes how two frames differ, byte ranges included.
fn frame_diff(exp: &[u8], got: &[u8]) -> String {
    let mut s = String::new();
    if exp.len() != got.len() {
        s.push_str(&format!("      length: expected {}, got {}\n", exp.len(), got.len()));
    }
    let first = exp.iter().zip(got.iter()).position(|(a, b)| a != b);
    if let Some(i) = first {
        s.push_str(&format!("      first differing byte at offset {i}\n"));
    }
    s.push_str(&format!("      expected: {}\n", hex(exp)));
    s.push_str(&format!("      got:      {}\n", hex(got)));
    s
}

/// Compares the output of a run with the expected directory. Returns the readable
/// differences (empty when everything matches).
pub fn compare(cfg: &Config, out: &Path, expect: &Path) -> Result<Vec<String>, ReplayError> {
    let mut diffs = Vec::new();
    for b in &cfg.bridges {
        for p in &b.ports {
            let f = port_file_name(&p.name);
            let ep = expect.join(&f);
            if !ep.exists() {
                diffs.push(format!("port {}: expected file {} is missing", p.name, ep.display()));
                continue;
            }
            let exp = read_pcap(&ep)?;
            let got = read_pcap(&out.join(&f))?;
            let mut port_diffs = Vec::new();
            for (i, (e, g)) in exp.iter().zip(got.iter()).enumerate() {
                let (et, gt) = (e.ts_ns / 1000, g.ts_ns / 1000);
                if e.data != g.data || et != gt {
                    let mut d = format!("    frame {}:", i + 1);
                    if et != gt {
                        d.push_str(&format!(
                            " time expected {} got {}",
                            fmt_time(e.ts_ns),
                            fmt_time(g.ts_ns)
                        ));
                    }
                    d.push('\n');
                    if e.data != g.data {
                        d.push_str(&frame_diff(&e.data, &g.data));
                    }
                    port_diffs.push(d);
                }
            }
            if exp.len() != got.len() {
                port_diffs.push(format!("    expected {} frames, got {}\n", exp.len(), got.len()));
                for (i, g) in got.iter().enumerate().skip(exp.len()) {
                    port_diffs.push(format!(
                        "    unexpected frame {} at {}: {}\n",
                        i + 1,
                        fmt_time(g.ts_ns),
                        hex(&g.data)
                    ));
                }
                for (i, e) in exp.iter().enumerate().skip(got.len()) {
                    port_diffs.push(format!(
                        "    missing frame {} at {}: {}\n",
                        i + 1,
                        fmt_time(e.ts_ns),
                        hex(&e.data)
                    ));
                }
            }
            if !port_diffs.is_empty() {
                diffs.push(format!("port {} ({f}):\n{}", p.name, port_diffs.concat().trim_end()));
            }
        }
    }
    let read = |p: &Path| -> Result<serde_json::Value, ReplayError> {
        let t = std::fs::read_to_string(p)
            .map_err(|e| ReplayError::Io { path: p.display().to_string(), source: e })?;
        serde_json::from_str(&t).map_err(|e| ReplayError::Io {
            path: p.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    };
    let got = read(&out.join("stats.json"))?;
    let es = expect.join("stats.json");
    let exp = if es.exists() { read(&es)? } else { serde_json::json!({}) };
    subset_diff("", &exp, &got, &mut diffs);
    // A leak fails the comparison even where the expected stats.json does not list it.
    if exp.get(LEAKED).is_none() {
        subset_diff(LEAKED, &serde_json::json!(0), &got[LEAKED], &mut diffs);
    }
    Ok(diffs)
}

fn subset_diff(path: &str, exp: &serde_json::Value, got: &serde_json::Value, out: &mut Vec<String>) {
    match (exp, got) {
        (serde_json::Value::Object(e), serde_json::Value::Object(g)) => {
            for (k, ev) in e {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match g.get(k) {
                    Some(gv) => subset_diff(&p, ev, gv, out),
                    None => out.push(format!("stats {p}: expected {ev}, missing in output")),
                }
            }
        }
        _ if exp != got => out.push(format!("stats {path}: expected {exp}, got {got}")),
        _ => {}
    }
}

pub fn main(a: ReplayArgs) -> ExitCode {
    let sc = match Scenario::load(&a.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard replay: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match run(&sc, &a.out, a.trace) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("switchyard replay: {e}");
            return ExitCode::from(2);
        }
    };
    for l in &outcome.trace {
        println!("{l}");
    }
    let Some(exp) = a.expect else {
        return ExitCode::SUCCESS;
    };
    match compare(&sc.config, &a.out, &exp) {
        Ok(d) if d.is_empty() => ExitCode::SUCCESS,
        Ok(d) => {
            eprintln!("switchyard replay: output differs from {}:", exp.display());
            let per: BTreeMap<usize, &String> = d.iter().enumerate().collect();
            for l in per.values() {
                eprintln!("{l}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard replay: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `compare` with no ports on an output stats.json and, when given, an expected one.
    fn stats_diffs(got: &str, expected: Option<&str>) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out, exp) = (dir.path().join("out"), dir.path().join("expected"));
        std::fs::create_dir_all(&out).expect("out");
        std::fs::create_dir_all(&exp).expect("expected");
        std::fs::write(out.join("stats.json"), got).expect("write");
        if let Some(e) = expected {
            std::fs::write(exp.join("stats.json"), e).expect("write");
        }
        compare(&Config { bridges: Vec::new() }, &out, &exp).expect("compare")
    }

    #[test]
    fn a_leak_is_a_difference_even_when_the_expected_stats_omit_it() {
        let leak = r#"{"ports": {}, "buffers_leaked": 3}"#;
        let want = vec!["stats buffers_leaked: expected 0, got 3".to_string()];
        assert_eq!(stats_diffs(leak, None), want, "no expected stats.json");
        assert_eq!(stats_diffs(leak, Some(r#"{"ports": {}}"#)), want, "stats.json without the field");
        assert_eq!(stats_diffs(leak, Some(r#"{"buffers_leaked": 0}"#)), want, "stats.json with 0");
        assert_eq!(stats_diffs(leak, Some(r#"{"buffers_leaked": 3}"#)), Vec::<String>::new());
    }

    /// Loads a scenario of a VM port and a VXLAN port with `uplinks` as given.
    fn load_with_uplinks(uplinks: &str) -> Result<Scenario, ReplayError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scenario.yaml");
        let text = format!(
            "bridges:\n  - name: br0\n    ports:\n      - {{name: vm-a}}\n      - {{name: tun0, type: vxlan, vni: 1, local: 192.0.2.1, flood: [192.0.2.2]}}\nuplinks: {uplinks}\n"
        );
        std::fs::write(&path, text).expect("write");
        Scenario::load(&path)
    }

    #[test]
    fn uplinks_name_tunnel_ports_with_a_mac() {
        let ok = load_with_uplinks(r#"{tun0: {mac: "02:00:00:00:01:01"}}"#).expect("load");
        let u = &ok.uplinks["tun0"];
        assert_eq!((u.mac, u.mtu), (MacAddr([2, 0, 0, 0, 1, 1]), 1500));
        for (bad, why) in [
            (r#"{vm-a: {mac: "02:00:00:00:01:01"}}"#, "\"vm-a\" is not a tunnel port"),
            (r#"{tun9: {mac: "02:00:00:00:01:01"}}"#, "\"tun9\" is not a tunnel port"),
            (r#"{tun0: {mac: "02:00:00:00:01"}}"#, "tun0: mac:"),
        ] {
            match load_with_uplinks(bad) {
                Err(e @ ReplayError::Uplinks { .. }) => assert!(e.to_string().contains(why), "{bad}: {e}"),
                Err(e) => panic!("{bad}: {e}"),
                Ok(_) => panic!("{bad}: accepted"),
            }
        }
    }

    #[test]
    fn no_leak_and_no_expected_stats_is_no_difference() {
        assert_eq!(stats_diffs(r#"{"ports": {}, "buffers_leaked": 0}"#, None), Vec::<String>::new());
        assert_eq!(
            stats_diffs(r#"{"ports": {}}"#, None),
            vec!["stats buffers_leaked: expected 0, got null".to_string()],
            "an output without the field is not taken for a clean one"
        );
    }
}
