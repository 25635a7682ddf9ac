//! `switchyard pmd`: the testpmd-style benchmark CLI (docs/semantics.md, "switchyard pmd").
//!
//! Every argument is checked before anything starts (no port is opened, no file written, no
//! thread started): a bad argument is refused with a message that names it, exit code 2. Then
//! the ports are opened with the port factory (named p0, p1, ... in order), all put on one
//! bridge that trunks every VLAN, and the [`Engine`] runs them in the chosen forwarding mode.
//!
//! Stop is clean: `stop`, `quit`, EOF on stdin, SIGINT and SIGTERM stop every worker (the time
//! it took is printed), the ports are closed, and the buffers still out of the pools are
//! counted and printed (0 when nothing leaked). A second SIGINT/SIGTERM exits at once.

use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use switchyard_dataplane::buffer::{Pool, DATA_ROOM};
use switchyard_dataplane::config::{AfPacketRxMode, BridgeConfig, Config, PortConfig, PortType};
use switchyard_dataplane::fdb::MacTable;
use switchyard_dataplane::port::{PortBackend, DEFAULT_BURST, MAX_BURST};
use switchyard_dataplane::switch::{DropReason, PortStatsSnapshot, SwitchConfig};
use switchyard_dataplane::worker::{
    available_cores, Engine, EngineOptions, ForwardingPlan, FwdMode, TxGen, WorkerStatsSnapshot,
};
use switchyard_ports::factory::{open_port, ring_peer, PortContext};

/// Bytes a frame costs on the wire beyond what is counted: preamble and SFD (8), inter-frame
/// gap (12) and FCS (4); counted frames exclude the FCS.
const WIRE_OVERHEAD: u64 = 24;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Port specs (repeat --port; the ports are named p0, p1, ... in that order):
  ring:NAME                      an in-process ring (its far end is not connected here)
  pcap:FILE[,infinite]           receive FILE (once, or forever from memory); sent frames are counted and discarded
  pcap:rx=FILE,tx=FILE[,infinite]  receive rx=, write what is sent to tx= (either may be left out)
  afpacket:IFACE[,recvmmsg]      a kernel interface over AF_PACKET (RX: TPACKET_V3 ring, or
                                 recvmmsg(2) without a ring)
  tap:NAME                       a TAP interface (created if needed)
  vhost:PATH[,client]            vhost-user socket (switchyard listens; ,client: it connects)
  dpdk:DEVARGS                   a DPDK ethdev, e.g. dpdk:net_pcap0,rx_pcap=a.pcap,infinite_rx=1 (needs --features dpdk)

Forwarding modes: switch (the full L2 pipeline: all ports on one bridge, trunking every VLAN),
  io, mac, macswap, rxonly, txonly, flowgen (testpmd's; ports paired 0<->1, 2<->3, ...).

--lcores takes a list of cores and ranges (1,2 or 0-3 or 0,2-3) or a hex mask (0x6): one
  worker per core, pinned. Without it: one unpinned worker.

Rates: Mpps counts frames; Gbps is shown twice: L2 = frame bytes (no FCS) * 8 / s, and
  wire = (frame bytes + 24 per frame for preamble, inter-frame gap and FCS) * 8 / s, the line
  rate that a 64-byte frame at 14.88 Mpps fills to 10 Gbps.

Interactive commands (-i): start, stop, set fwd MODE, show port stats all, clear port stats all,
  show fwd stats all, help, quit (EOF on stdin quits too).")]
pub struct PmdArgs {
    /// A port (see the help text for the SPEC forms).
    #[arg(
        long = "port",
        value_name = "SPEC",
        required = true,
        help = "A port: ring:NAME, pcap:FILE[,infinite], afpacket:IFACE[,recvmmsg], tap:NAME, vhost:PATH[,client],\ndpdk:DEVARGS (see below)."
    )]
    pub ports: Vec<String>,
    /// Forwarding mode: switch, io, mac, macswap, rxonly, txonly, flowgen.
    #[arg(long, value_name = "MODE", default_value = "io")]
    pub fwd: String,
    /// Cores to run workers on, one pinned worker each: a list with ranges (1,2 / 0-3) or a hex
    /// mask (0x6).
    #[arg(long, value_name = "LIST")]
    pub lcores: Option<String>,
    /// Frames per burst (1 to 64).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BURST)]
    pub burst: usize,
    /// Run this many seconds, then stop and print the summary (default: until SIGINT/SIGTERM).
    #[arg(long, value_name = "S")]
    pub seconds: Option<f64>,
    /// End with one line of JSON: {"seconds","rx_pps","tx_pps","ports":[...],...}.
    #[arg(long)]
    pub json: bool,
    /// Interactive: read testpmd's commands from stdin.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Print per-port Mpps and Gbps every S seconds while forwarding.
    #[arg(long, value_name = "S")]
    pub stats_period: Option<f64>,
    /// Poll without backing off when idle (for benchmarks).
    #[arg(long)]
    pub busy_poll: bool,
    /// txonly/flowgen: frame length in bytes, without FCS (60 to 2048).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub txpkt_len: usize,
    /// flowgen: MAC pairs to cycle over.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tx_macs: u32,
    /// flowgen: UDP flows to cycle over.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tx_flows: u32,
    /// txonly/flowgen: put an 802.1Q tag with this VLAN on generated frames (0 to 4095).
    #[arg(long, value_name = "V")]
    pub tx_vlan: Option<u16>,
    /// switch: capacity of the bridge's MAC table.
    #[arg(long, value_name = "N", default_value_t = MacTable::DEFAULT_CAPACITY)]
    pub mac_table_size: usize,
    /// Buffers in the workers' pool.
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub pool_buffers: usize,
    /// Explicit RX queue placement, `PORT:QUEUE@WORKER[,...]` (port and worker indices from 0,
    /// workers in --lcores order); queues not listed are dealt round-robin, as OVS does with
    /// pmd-rxq-affinity.
    #[arg(long, value_name = "P:Q@W,...")]
    pub rxq_affinity: Option<String>,
    /// dpdk ports: mbufs in the process-wide DPDK pool (default: sized for the rings; a
    /// net_pcap port with infinite_rx needs one per frame of its capture).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub mbufs: u32,
    /// dpdk ports: run EAL without hugepages (`--no-huge`) even when free ones are mounted
    /// (default: hugepages when the machine has free ones), for a comparison with contenders
    /// that cannot have them.
    #[arg(long)]
    pub no_huge: bool,
}

/// Parses `--rxq-affinity`.
fn parse_rxq_affinity(s: &str, ports: usize, workers: usize) -> Result<Vec<(u16, u16, usize)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let bad = || format!("{item:?} is not PORT:QUEUE@WORKER");
        let (pq, w) = item.split_once('@').ok_or_else(bad)?;
        let (p, q) = pq.split_once(':').ok_or_else(bad)?;
        let p: u16 = p.parse().map_err(|_| bad())?;
        let q: u16 = q.parse().map_err(|_| bad())?;
        let w: usize = w.parse().map_err(|_| bad())?;
        if usize::from(p) >= ports {
            return Err(format!("{item}: there are {ports} port(s)"));
        }
        if w >= workers {
            return Err(format!("{item}: there are {workers} worker(s)"));
        }
        out.push((p, q, w));
    }
    Ok(out)
}

/// Everything checked and ready to start.
#[derive(Debug)]
struct Setup {
    specs: Vec<String>,
    ports: Vec<PortConfig>,
    mode: FwdMode,
    opts: EngineOptions,
    gen: TxGen,
    mac_table_size: usize,
    rxq_affinity: Vec<(u16, u16, usize)>,
    mbufs: u32,
    no_huge: bool,
}

fn mode_names() -> String {
    FwdMode::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn parse_mode(s: &str) -> Result<FwdMode, String> {
    FwdMode::parse(s).ok_or_else(|| format!("unknown forwarding mode {s:?} (one of: {})", mode_names()))
}

/// Parses `--lcores`: a list of cores and ranges (`1,2`, `0-3`, `0,2-3`) or a hex mask
/// (`0x6`), and checks every core against `avail`. Order is kept; duplicates are refused.
pub fn parse_lcores(s: &str, avail: &[usize]) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let mut cores = Vec::new();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let mask = u128::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not a hex mask"))?;
        for c in 0..128 {
            if mask & (1u128 << c) != 0 {
                cores.push(c);
            }
        }
        if cores.is_empty() {
            return Err("the mask selects no core".into());
        }
    } else {
        for part in s.split(',') {
            let num = |t: &str| {
                t.trim().parse::<usize>().map_err(|_| format!("{t:?} is not a core number (in {s:?})"))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("range {part:?} runs backwards"));
                    }
                    if b - a > 4096 {
                        return Err(format!("range {part:?} is too long"));
                    }
                    cores.extend(a..=b);
                }
                None => cores.push(num(part)?),
            }
        }
    }
    for (i, c) in cores.iter().enumerate() {
        if cores[..i].contains(c) {
            return Err(format!("core {c} is listed twice"));
        }
        if !avail.contains(c) {
            return Err(format!(
                "core {c} does not exist or is not available to this process (available: {avail:?})"
            ));
        }
    }
    Ok(cores)
}

fn plain_arg<'a>(rest: &'a str, what: &str) -> Result<&'a str, String> {
    if rest.is_empty() {
        return Err(format!("needs {what}"));
    }
    if rest.contains(',') {
        return Err(format!("takes only {what}, no options"));
    }
    Ok(rest)
}

/// Parses one `--port` SPEC into the configuration of a port named `name`.
pub fn parse_port_spec(spec: &str, name: &str) -> Result<PortConfig, String> {
    let (kind, rest) = spec
        .split_once(':')
        .ok_or("expected TYPE:ARGS with TYPE one of ring, pcap, afpacket, tap, vhost, dpdk")?;
    let mut c = PortConfig { name: name.into(), ..Default::default() };
    match kind {
        "ring" => {
            c.kind = Some(PortType::Ring);
            c.ring = Some(plain_arg(rest, "a ring name")?.into());
        }
        "pcap" => {
            c.kind = Some(PortType::Pcap);
            let mut infinite = false;
            for (i, p) in rest.split(',').enumerate() {
                if p == "infinite" {
                    infinite = true;
                } else if let Some(f) = p.strip_prefix("rx=") {
                    c.rx_pcap = Some(f.into());
                } else if let Some(f) = p.strip_prefix("tx=") {
                    c.tx_pcap = Some(f.into());
                } else if p.contains('=') {
                    return Err(format!("unknown pcap option {p:?} (rx=FILE, tx=FILE, infinite)"));
                } else if i == 0 && !p.is_empty() {
                    c.rx_pcap = Some(p.into());
                } else {
                    return Err(format!(
                        "unexpected {p:?} (expected pcap:FILE[,infinite] or pcap:rx=FILE,tx=FILE[,infinite])"
                    ));
                }
            }
            for f in [&c.rx_pcap, &c.tx_pcap].into_iter().flatten() {
                if f.is_empty() {
                    return Err("empty file name".into());
                }
            }
            match &c.rx_pcap {
                Some(f) if !Path::new(f).is_file() => return Err(format!("{f}: no such file")),
                None if c.tx_pcap.is_none() => return Err("needs a capture file".into()),
                None if infinite => return Err("infinite needs a capture to receive (rx=FILE)".into()),
                _ => {}
            }
            if let Some(t) = &c.tx_pcap {
                let dir = Path::new(t).parent().filter(|d| !d.as_os_str().is_empty());
                if dir.is_some_and(|d| !d.is_dir()) {
                    return Err(format!("{t}: its directory does not exist"));
                }
            }
            c.infinite = Some(infinite);
        }
        "afpacket" | "tap" => {
            c.kind = Some(if kind == "tap" { PortType::Tap } else { PortType::Afpacket });
            let (iface, mode) = match rest.split_once(',') {
                Some((i, m)) if kind == "afpacket" => (i, Some(m)),
                _ => (rest, None),
            };
            c.rx_mode = match mode {
                None => None,
                Some("ring") => Some(AfPacketRxMode::Ring),
                Some("recvmmsg") => Some(AfPacketRxMode::Recvmmsg),
                Some(m) => return Err(format!("unknown afpacket option {m:?} (ring or recvmmsg)")),
            };
            let iface = plain_arg(iface, "an interface name")?;
            if iface.len() > 15 {
                return Err(format!("interface name {iface:?} is longer than 15 bytes"));
            }
            c.iface = Some(iface.into());
        }
        "vhost" | "vhostuser" => {
            c.kind = Some(PortType::Vhostuser);
            let mut parts = rest.split(',');
            let path = parts.next().unwrap_or_default();
            if path.is_empty() {
                return Err("needs a socket path".into());
            }
            c.socket = Some(path.into());
            c.mode = Some("server".into());
            for p in parts {
                match p {
                    "client" | "server" => c.mode = Some(p.into()),
                    _ => return Err(format!("unknown vhost option {p:?} (client or server)")),
                }
            }
        }
        "dpdk" => {
            if rest.is_empty() {
                return Err("needs DEVARGS (a PCI address or a vdev such as net_pcap0,rx_pcap=a.pcap)".into());
            }
            c.kind = Some(PortType::Dpdk);
            c.devargs = Some(rest.into());
        }
        _ => return Err(format!("unknown port type {kind:?} (ring, pcap, afpacket, tap, vhost, dpdk)")),
    }
    Ok(c)
}

/// Checks every argument. The error names the argument it is about.
fn check(a: &PmdArgs) -> Result<Setup, String> {
    let mode = parse_mode(&a.fwd).map_err(|e| format!("--fwd: {e}"))?;
    if a.burst == 0 || a.burst > MAX_BURST {
        return Err(format!("--burst: must be between 1 and {MAX_BURST}, not {}", a.burst));
    }
    let cores = match &a.lcores {
        Some(l) => parse_lcores(l, &available_cores()).map_err(|e| format!("--lcores: {e}"))?,
        None => Vec::new(),
    };
    for (flag, v) in [("--seconds", a.seconds), ("--stats-period", a.stats_period)] {
        if let Some(v) = v {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return Err(format!("{flag}: must be a positive number of seconds, not {v}"));
            }
        }
    }
    if a.interactive && a.seconds.is_some() {
        return Err("--seconds: not with -i (use start and stop)".into());
    }
    if a.txpkt_len < 60 || a.txpkt_len > DATA_ROOM {
        return Err(format!("--txpkt-len: must be between 60 and {DATA_ROOM}, not {}", a.txpkt_len));
    }
    if a.tx_macs == 0 {
        return Err("--tx-macs: must be at least 1".into());
    }
    if a.tx_flows == 0 {
        return Err("--tx-flows: must be at least 1".into());
    }
    if let Some(v) = a.tx_vlan {
        if v > 4095 {
            return Err(format!("--tx-vlan: VLAN {v} out of range 0-4095"));
        }
    }
    if a.mac_table_size == 0 || a.mac_table_size > MacTable::MAX_CAPACITY {
        return Err(format!("--mac-table-size: must be between 1 and {}", MacTable::MAX_CAPACITY));
    }
    if a.pool_buffers < 1024 {
        return Err("--pool-buffers: must be at least 1024".into());
    }
    if a.ports.len() > switchyard_dataplane::switch::MAX_PORTS_PER_NODE {
        return Err(format!("--port: at most {} ports", switchyard_dataplane::switch::MAX_PORTS_PER_NODE));
    }
    let mut ports = Vec::new();
    for (i, spec) in a.ports.iter().enumerate() {
        let c = parse_port_spec(spec, &format!("p{i}")).map_err(|e| format!("--port {spec}: {e}"))?;
        if let Some(r) = &c.ring {
            if ports.iter().any(|p: &PortConfig| p.ring.as_ref() == Some(r)) {
                return Err(format!("--port {spec}: ring {r:?} is used by an earlier port"));
            }
        }
        ports.push(c);
    }
    let opts = EngineOptions {
        cores: if cores.is_empty() { vec![None] } else { cores.into_iter().map(Some).collect() },
        burst: a.burst,
        busy_poll: a.busy_poll,
        pool_buffers: a.pool_buffers,
        on_worker_start: Some(switchyard_ports::factory::worker_hook()),
        ..EngineOptions::default()
    };
    let gen = TxGen { frame_len: a.txpkt_len, macs: a.tx_macs, flows: a.tx_flows, vlan: a.tx_vlan };
    let rxq_affinity = match &a.rxq_affinity {
        Some(s) => parse_rxq_affinity(s, ports.len(), opts.cores.len())
            .map_err(|e| format!("--rxq-affinity: {e}"))?,
        None => Vec::new(),
    };
    Ok(Setup {
        specs: a.ports.clone(),
        ports,
        mode,
        opts,
        gen,
        mac_table_size: a.mac_table_size,
        rxq_affinity,
        mbufs: a.mbufs,
        no_huge: a.no_huge,
    })
}

/// Counters of one port at one moment, for rates.
#[derive(Clone, Copy, Default)]
struct Mark {
    rx: u64,
    tx: u64,
    rx_bytes: u64,
    tx_bytes: u64,
}

impl Mark {
    fn of(s: &PortStatsSnapshot) -> Mark {
        Mark { rx: s.rx_packets, tx: s.tx_packets, rx_bytes: s.rx_bytes, tx_bytes: s.tx_bytes }
    }
}

fn mpps(pkts: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        pkts as f64 / secs / 1e6
    } else {
        0.0
    }
}

fn gbps(bytes: u64, pkts: u64, secs: f64) -> (f64, f64) {
    if secs > 0.0 {
        (bytes as f64 * 8.0 / secs / 1e9, (bytes + pkts * WIRE_OVERHEAD) as f64 * 8.0 / secs / 1e9)
    } else {
        (0.0, 0.0)
    }
}

fn add_worker(total: &mut WorkerStatsSnapshot, w: &WorkerStatsSnapshot) {
    total.busy_cycles += w.busy_cycles;
    total.idle_cycles += w.idle_cycles;
    total.rx_packets += w.rx_packets;
    total.forwarded_packets += w.forwarded_packets;
    total.busy_polls += w.busy_polls;
    total.idle_polls += w.idle_polls;
}

/// The ports, the engine when it runs, and the counters kept across runs.
struct Session {
    setup_opts: EngineOptions,
    /// RX queue placement (explicit entries first, then round-robin), fixed at open.
    rx: Vec<Vec<(u16, u16)>>,
    specs: Vec<String>,
    switch: Arc<SwitchConfig>,
    ports: Vec<Option<Arc<dyn PortBackend>>>,
    ring_names: Vec<String>,
    mode: FwdMode,
    gen: TxGen,
    engine: Option<Engine>,
    /// Every pool an engine ran with (one per `start`).
    pools: Vec<Pool>,
    tsc_hz: u64,
    /// Running time since the port counters were last cleared.
    run_time: Duration,
    started: Option<Instant>,
    /// Port counters at the last `start` (for `show fwd stats`).
    fwd_base: Vec<PortStatsSnapshot>,
    /// Port counters and time of the last periodic print / `show port stats`.
    period_mark: (Instant, Vec<Mark>),
    show_mark: (Instant, Vec<Mark>),
    /// Worker counters at the last periodic print (of the running engine).
    period_workers: Vec<WorkerStatsSnapshot>,
    /// Worker counters of finished runs (per worker), since the last clear.
    worker_totals: Vec<WorkerStatsSnapshot>,
    /// How long the last stop took.
    last_stop: Option<Duration>,
}

impl Session {
    fn open(setup: &Setup) -> Result<Session, String> {
        let cfg = Config {
            bridges: vec![BridgeConfig {
                name: "pmd".into(),
                mac_aging_s: None,
                mac_table_size: Some(setup.mac_table_size),
                ports: setup.ports.clone(),
            }],
        };
        let switch = SwitchConfig::compile(&cfg, None).map_err(|e| format!("configuration: {e}"))?;
        // With `--features dpdk` the context has EAL options too (their defaults).
        #[allow(clippy::needless_update)]
        let ctx = PortContext {
            workers: setup.opts.cores.len() as u16,
            dpdk_mbufs: setup.mbufs,
            ..Default::default()
        };
        #[cfg(feature = "dpdk")]
        let ctx = {
            let mut ctx = ctx;
            ctx.eal.no_huge = setup.no_huge.then_some(true);
            ctx
        };
        // Without DPDK there is no EAL to tell.
        #[cfg(not(feature = "dpdk"))]
        let _ = setup.no_huge;
        let mut ports: Vec<Option<Arc<dyn PortBackend>>> = vec![None; switch.port_slots()];
        for (pc, spec) in setup.ports.iter().zip(&setup.specs) {
            let id = switch.by_name[&pc.name];
            let p = open_port(pc, &ctx).map_err(|e| format!("cannot open port {} ({spec}): {e}", pc.name))?;
            ports[usize::from(id)] = Some(p);
        }
        let n = setup.ports.len();
        // Port indices in --rxq-affinity are positions on the command line; map to port ids.
        let pinned: Vec<(u16, u16, usize)> = setup
            .rxq_affinity
            .iter()
            .map(|&(p, q, w)| (switch.by_name[&setup.ports[usize::from(p)].name], q, w))
            .collect();
        let rx = ForwardingPlan::placement(&ports, setup.opts.cores.len(), &pinned)
            .map_err(|e| format!("--rxq-affinity: {e}"))?;
        let now = Instant::now();
        let s = Session {
            rx,
            setup_opts: setup.opts.clone(),
            specs: setup.specs.clone(),
            ring_names: setup.ports.iter().filter_map(|p| p.ring.clone()).collect(),
            switch: Arc::new(switch),
            ports,
            mode: setup.mode,
            gen: setup.gen.clone(),
            engine: None,
            pools: Vec::new(),
            tsc_hz: switchyard_dataplane::cpu::hz(),
            run_time: Duration::ZERO,
            started: None,
            fwd_base: Vec::new(),
            period_mark: (now, vec![Mark::default(); n]),
            show_mark: (now, vec![Mark::default(); n]),
            period_workers: Vec::new(),
            worker_totals: Vec::new(),
            last_stop: None,
        };
        Ok(s)
    }

    fn port_stats(&self) -> Vec<PortStatsSnapshot> {
        self.switch.ports.iter().flatten().map(|p| p.stats.snapshot()).collect()
    }

    fn marks(&self) -> Vec<Mark> {
        self.port_stats().iter().map(Mark::of).collect()
    }

    fn plan(&self) -> ForwardingPlan {
        let workers = self.setup_opts.cores.len();
        ForwardingPlan {
            switch: self.switch.clone(),
            ports: self.ports.clone(),
            rx: if self.rx.len() == workers {
                self.rx.clone()
            } else {
                ForwardingPlan::round_robin(&self.ports, workers)
            },
            mode: self.mode,
            egress: ForwardingPlan::paired_egress(self.ports.len()),
            gen: self.gen.clone(),
        }
    }

    fn running(&self) -> bool {
        self.engine.is_some()
    }

    fn start(&mut self) -> Result<(), String> {
        if self.running() {
            return Ok(());
        }
        let engine =
            Engine::start(self.setup_opts.clone(), self.plan()).map_err(|e| format!("cannot start: {e}"))?;
        self.tsc_hz = engine.tsc_hz();
        self.pools.push(engine.pool().clone());
        self.engine = Some(engine);
        let now = Instant::now();
        self.started = Some(now);
        self.fwd_base = self.port_stats();
        self.period_mark = (now, self.marks());
        self.period_workers = Vec::new();
        Ok(())
    }

    /// Stops the workers (if running) and returns what they counted in this run.
    fn stop(&mut self) -> Option<Vec<WorkerStatsSnapshot>> {
        let engine = self.engine.take()?;
        let t0 = Instant::now();
        if let Some(s) = self.started.take() {
            self.run_time += t0 - s;
        }
        let ws = engine.stop();
        self.last_stop = Some(t0.elapsed());
        if self.worker_totals.len() < ws.len() {
            self.worker_totals.resize_with(ws.len(), Default::default);
        }
        for (t, w) in self.worker_totals.iter_mut().zip(&ws) {
            t.worker = w.worker;
            t.core = w.core;
            add_worker(t, w);
        }
        Some(ws)
    }

    fn set_fwd(&mut self, mode: FwdMode) -> Result<(), String> {
        self.mode = mode;
        if let Some(e) = &self.engine {
            let g = e.publish(self.plan());
            if !e.wait_applied(g, Duration::from_secs(1)) {
                return Err("the workers did not take the new mode within 1 s".into());
            }
        }
        Ok(())
    }

    fn clear(&mut self) {
        for p in self.switch.ports.iter().flatten() {
            p.stats.clear();
        }
        if let Some(e) = &self.engine {
            e.clear_worker_stats();
        }
        self.period_workers.clear();
        self.worker_totals.clear();
        self.run_time = Duration::ZERO;
        let now = Instant::now();
        if self.started.is_some() {
            self.started = Some(now);
        }
        let zero = vec![Mark::default(); self.specs.len()];
        self.fwd_base = self.port_stats();
        self.period_mark = (now, zero.clone());
        self.show_mark = (now, zero);
    }

    /// The per-port rate lines since `mark`, which becomes now.
    fn rates_since(&self, mark: &mut (Instant, Vec<Mark>)) -> String {
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

    fn print_period(&mut self) {
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

    fn show_port_stats(&mut self) {
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
    fn show_fwd_stats(&self, workers: Option<&[WorkerStatsSnapshot]>) {
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
    fn finish(&mut self, requested: Option<f64>) -> (String, serde_json::Value) {
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
        let mut drained = 0usize;
        for r in &self.ring_names {
            if let Some(peer) = ring_peer(r) {
                while peer.collect().is_some() {
                    drained += 1;
                }
            }
        }
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
                })
            })
            .collect();
        let j = json!({
            "seconds": requested.unwrap_or(secs),
            "elapsed_s": secs,
            "mode": self.mode.name(),
            "rx_pps": rx_pps,
            "tx_pps": tx_pps,
            "ports": jports,
            "workers": workers,
            "stop_ms": stop_ms,
            "pool_in_use": in_use,
        });
        (out, j)
    }
}

fn total_drops(s: &PortStatsSnapshot) -> u64 {
    s.drops.values().sum()
}

fn is_egress(name: &str) -> bool {
    name.starts_with("tx_") || name == DropReason::PortDown.name()
}

fn ingress_drops(s: &PortStatsSnapshot) -> u64 {
    s.drops.iter().filter(|(k, _)| !is_egress(k)).map(|(_, n)| n).sum()
}

fn egress_drops(s: &PortStatsSnapshot) -> u64 {
    s.drops.iter().filter(|(k, _)| is_egress(k)).map(|(_, n)| n).sum()
}

fn drop_reasons(s: &PortStatsSnapshot) -> String {
    s.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// Worker counters as `ovs-appctl dpif-netdev/pmd-stats-show` prints them.
fn pmd_stats(ws: &[WorkerStatsSnapshot], tsc_hz: u64) -> String {
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
        if tsc_hz > 0 {
            out += &format!("  (TSC at {:.3} GHz)\n", tsc_hz as f64 / 1e9);
        }
    }
    out
}

const HELP: &str = "\
Commands:
  start                  start forwarding
  stop                   stop forwarding and show the forward statistics
  set fwd MODE           switch, io, mac, macswap, rxonly, txonly, flowgen (also while forwarding)
  show port stats all    per-port counters and rates since the last show
  clear port stats all   zero the port and worker counters
  show fwd stats all     counters since the last start, and the workers' cycles
  help                   this text
  quit                   stop, close the ports and exit (EOF does the same)";

enum Next {
    Go,
    Quit,
}

fn command(s: &mut Session, line: &str) -> Next {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["start"] => {
            if s.running() {
                println!("Packet forwarding already started");
            } else {
                match s.start() {
                    Ok(()) => println!(
                        "Start {} packet forwarding on {} worker(s)",
                        s.mode.name(),
                        s.setup_opts.cores.len()
                    ),
                    Err(e) => println!("{e}"),
                }
            }
        }
        ["stop"] => match s.stop() {
            Some(ws) => {
                println!(
                    "Telling workers to stop... done in {:.3} ms",
                    s.last_stop.unwrap_or_default().as_secs_f64() * 1e3
                );
                s.show_fwd_stats(Some(&ws));
                println!("Done.");
            }
            None => println!("Packet forwarding not started"),
        },
        ["set", "fwd", m] => match parse_mode(m) {
            Ok(mode) => match s.set_fwd(mode) {
                Ok(()) => println!("Set {} packet forwarding mode", mode.name()),
                Err(e) => println!("{e}"),
            },
            Err(e) => println!("{e}"),
        },
        ["show", "port", "stats", "all"] => s.show_port_stats(),
        ["clear", "port", "stats", "all"] => {
            s.clear();
            println!("  NIC statistics for all ports cleared");
        }
        ["show", "fwd", "stats", "all"] => s.show_fwd_stats(None),
        ["help"] => println!("{HELP}"),
        ["quit"] | ["exit"] => return Next::Quit,
        _ => println!("Unknown or bad command: {line:?} (type help)"),
    }
    let _ = std::io::stdout().flush();
    Next::Go
}

/// Reads stdin on its own thread so that the main loop can watch signals and timers; EOF (or
/// an unreadable stdin) ends the channel.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("sy-pmd-stdin".into()).spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot read stdin");
    }
    rx
}

pub fn main(a: PmdArgs) -> ExitCode {
    switchyard_dataplane::worker::raise_fd_limit();
    let setup = match check(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard pmd: {e}");
            return ExitCode::from(2);
        }
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once (status 1).
        let r = signal_hook::flag::register_conditional_shutdown(sig, 1, term.clone())
            .and_then(|_| signal_hook::flag::register(sig, term.clone()));
        if let Err(e) = r {
            eprintln!("switchyard pmd: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut s = match Session::open(&setup) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard pmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = setup.opts.cores.iter().map(|c| c.map_or("unpinned".into(), |c| format!("core {c}")));
    println!(
        "switchyard pmd: {} port(s), {} mode, burst {}, workers: {}{}",
        setup.specs.len(),
        setup.mode.name(),
        setup.opts.burst,
        workers.collect::<Vec<_>>().join(", "),
        if setup.opts.busy_poll { ", busy polling" } else { "" }
    );
    for (i, spec) in setup.specs.iter().enumerate() {
        println!("  p{i}: {spec}");
    }
    let period = a.stats_period.map(Duration::from_secs_f64);
    let input = if a.interactive {
        print!("switchyard> ");
        let _ = std::io::stdout().flush();
        Some(stdin_lines())
    } else {
        if let Err(e) = s.start() {
            eprintln!("switchyard pmd: {e}");
            return ExitCode::FAILURE;
        }
        match a.seconds {
            Some(secs) => println!("Forwarding for {secs} s ..."),
            None => println!("Forwarding; stop with Ctrl-C (SIGINT) or SIGTERM ..."),
        }
        None
    };
    let _ = std::io::stdout().flush();
    let deadline = a.seconds.map(|secs| Instant::now() + Duration::from_secs_f64(secs));
    let tick = Duration::from_millis(5);
    loop {
        if term.load(Ordering::Acquire) {
            println!("\nSignal received, stopping.");
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(p) = period {
            if s.running() && s.period_mark.0.elapsed() >= p {
                s.print_period();
            }
        }
        match &input {
            Some(rx) => match rx.recv_timeout(tick) {
                Ok(line) => {
                    if let Next::Quit = command(&mut s, line.trim()) {
                        break;
                    }
                    print!("switchyard> ");
                    let _ = std::io::stdout().flush();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    println!();
                    break;
                }
            },
            None => {
                let left = deadline.map_or(tick, |d| d.saturating_duration_since(Instant::now()));
                std::thread::sleep(left.min(tick));
            }
        }
    }
    let (text, j) = s.finish(a.seconds);
    print!("{text}");
    if a.json {
        println!("{j}");
    }
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcores_lists_ranges_and_masks() {
        let avail = [0, 1, 2, 3];
        assert_eq!(parse_lcores("1,2", &avail), Ok(vec![1, 2]));
        assert_eq!(parse_lcores("0-3", &avail), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_lcores("0,2-3", &avail), Ok(vec![0, 2, 3]));
        assert_eq!(parse_lcores("0x6", &avail), Ok(vec![1, 2]));
        assert!(parse_lcores("7", &avail).unwrap_err().contains("core 7 does not exist"));
        assert!(parse_lcores("1,1", &avail).unwrap_err().contains("twice"));
        assert!(parse_lcores("3-1", &avail).is_err());
        assert!(parse_lcores("0x0", &avail).is_err());
        assert!(parse_lcores("a", &avail).is_err());
        assert!(parse_lcores("", &avail).is_err());
    }

    #[test]
    fn port_specs() {
        let c = parse_port_spec("ring:r0", "p0").unwrap();
        assert_eq!((c.kind, c.ring.as_deref()), (Some(PortType::Ring), Some("r0")));
        let c = parse_port_spec("tap:sy0", "p0").unwrap();
        assert_eq!((c.kind, c.iface.as_deref()), (Some(PortType::Tap), Some("sy0")));
        let c = parse_port_spec("vhost:/tmp/v.sock,client", "p0").unwrap();
        assert_eq!((c.kind, c.mode.as_deref()), (Some(PortType::Vhostuser), Some("client")));
        let c = parse_port_spec("dpdk:net_pcap0,rx_pcap=a.pcap,infinite_rx=1", "p0").unwrap();
        assert_eq!(c.devargs.as_deref(), Some("net_pcap0,rx_pcap=a.pcap,infinite_rx=1"));
        let c = parse_port_spec("pcap:tx=/tmp/out.pcap", "p0").unwrap();
        assert_eq!((c.rx_pcap, c.tx_pcap.as_deref()), (None, Some("/tmp/out.pcap")));
        assert!(parse_port_spec("pcap:/nonexistent.pcap", "p0").unwrap_err().contains("no such file"));
        assert!(parse_port_spec("pcap:tx=/tmp/o.pcap,infinite", "p0").is_err());
        assert!(parse_port_spec("pcap:", "p0").is_err());
        assert!(parse_port_spec("ring:", "p0").is_err());
        assert!(parse_port_spec("bogus:x", "p0").unwrap_err().contains("unknown port type"));
        assert!(parse_port_spec("nocolon", "p0").is_err());
        assert!(parse_port_spec("tap:waytoolonginterfacename", "p0").is_err());
        let c = parse_port_spec("afpacket:eth1", "p0").unwrap();
        assert_eq!((c.kind, c.iface.as_deref(), c.rx_mode), (Some(PortType::Afpacket), Some("eth1"), None));
        let c = parse_port_spec("afpacket:eth1,recvmmsg", "p0").unwrap();
        assert_eq!((c.iface.as_deref(), c.rx_mode), (Some("eth1"), Some(AfPacketRxMode::Recvmmsg)));
        assert!(parse_port_spec("afpacket:eth1,v2", "p0").unwrap_err().contains("ring or recvmmsg"));
        assert!(parse_port_spec("tap:sy0,recvmmsg", "p0").is_err());
    }
}
