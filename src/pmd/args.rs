//! The arguments of `switchyard pmd`, and the check of all of them before anything starts:
//! a bad one is refused with a message that names it.

use std::path::Path;
use switchyard_dataplane::backend::Backend;
use switchyard_dataplane::buffer::DATA_ROOM;
use switchyard_dataplane::config::PortConfig;
use switchyard_dataplane::fdb::MacTable;
use switchyard_dataplane::port::{DEFAULT_BURST, MAX_BURST};
use switchyard_dataplane::worker::{available_cores, EngineOptions, FwdMode, TxGen};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Port specs (repeat --port; the ports are named p0, p1, ... in that order):
  ring:NAME                      an in-process ring (its far end is not connected here)
  pcap:FILE[,infinite]           receive FILE (once, or forever from memory); sent frames are counted and discarded
  pcap:rx=FILE,tx=FILE[,infinite]  receive rx=, write what is sent to tx= (either may be left out)
  afpacket:IFACE[,recvmmsg]      a kernel interface over AF_PACKET (RX: TPACKET_V3 ring, or
                                 recvmmsg(2) without a ring)
  afxdp:IFACE[,queues=N]         a kernel interface over AF_XDP (RX queues 0..N, default 1; an XDP
                                 program redirects them; frames between afxdp ports are not copied)
  tap:NAME                       a TAP interface (created if needed)
  vhost:PATH[,client][,offloads][,queues=N]
                                 vhost-user socket (switchyard listens; ,client: it connects;
                                 ,offloads: offer the guest checksum + TSO both ways;
                                 N queue pairs offered, default 1)
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
        help = "A port: ring:NAME, pcap:FILE[,infinite], afpacket:IFACE[,recvmmsg], afxdp:IFACE[,queues=N], tap:NAME, vhost:PATH[,client][,offloads][,queues=N],\ndpdk:DEVARGS (see below)."
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
    /// Microseconds with nothing received before an idle worker stops spinning and backs
    /// off (yields, then sleeps until a queue wakes it). Default: per worker, 2000 when one of
    /// its RX queues cannot wake it cheaply (vhost-user, DPDK, ring), 0 when all are kernel
    /// sockets (AF_PACKET, UDP tunnel, TAP, AF_XDP). Shorter spends less CPU between sparse
    /// bursts, at the cost of a wake-up for the frame after each gap.
    #[arg(long, value_name = "US")]
    pub idle_spin_us: Option<u64>,
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
    /// Count each worker's busy cycles by stage (RX, pipeline, TX) and print them per frame
    /// in the summary (four TSC reads a burst; without the flag the loop has none).
    #[arg(long)]
    pub stage_cycles: bool,
    /// switch: a policy file (YAML) putting the configuration file's filtering and VLAN fields
    /// on the ports: `{conntrack_size: N, ports: {p0: {policy: .., allowed_ips: [..],
    /// allowed_macs: [..], static_macs: [..], vlan_mode: .., tag: N, trunks: [..]}, ...}}`
    /// (ports named p0, p1, ... in --port order).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
}

/// A `--policy` file: the filtering fields of the configuration file (docs/semantics.md,
/// docs/policy.md) for the bridge and for each port, by the name pmd gives it.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    #[serde(default)]
    pub(super) conntrack_size: Option<usize>,
    #[serde(default)]
    pub(super) ports: std::collections::BTreeMap<String, PortFilters>,
}

/// One port's entry of a [`PolicyFile`].
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PortFilters {
    #[serde(default)]
    policy: Option<switchyard_dataplane::policy::PortPolicy>,
    #[serde(default)]
    allowed_ips: Option<Vec<std::net::IpAddr>>,
    #[serde(default)]
    allowed_macs: Option<Vec<switchyard_dataplane::wire::MacAddr>>,
    #[serde(default)]
    static_macs: Vec<switchyard_dataplane::wire::MacAddr>,
    /// The port's VLAN as the configuration file has it (`vlan_mode`, `tag`, `trunks`): a
    /// trunk (an uplink) and access ports, for benchmarks of a VLAN network.
    #[serde(default)]
    vlan_mode: Option<switchyard_dataplane::config::VlanModeName>,
    #[serde(default)]
    tag: Option<u16>,
    #[serde(default)]
    trunks: Option<Vec<u16>>,
}

/// Reads the `--policy` file `text` onto `ports` (named p0, p1, ...): the bridge's
/// `conntrack_size`. The error names the field or the port (the configuration's own checks
/// run when the switch is compiled).
pub(super) fn apply_policy(text: &str, ports: &mut [PortConfig]) -> Result<Option<usize>, String> {
    let f: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    for (name, pf) in f.ports {
        let Some(c) = ports.iter_mut().find(|p| p.name == name) else {
            return Err(format!(
                "ports.{name}: no such port (they are p0..p{})",
                ports.len().saturating_sub(1)
            ));
        };
        c.policy = pf.policy;
        c.allowed_ips = pf.allowed_ips;
        c.allowed_macs = pf.allowed_macs;
        c.static_macs = pf.static_macs;
        c.vlan_mode = pf.vlan_mode;
        c.tag = pf.tag;
        c.trunks = pf.trunks;
    }
    Ok(f.conntrack_size)
}

/// Parses `--rxq-affinity`.
pub(super) fn parse_rxq_affinity(
    s: &str,
    ports: usize,
    workers: usize,
) -> Result<Vec<(u16, u16, usize)>, String> {
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
pub(super) struct Setup {
    pub(super) specs: Vec<String>,
    pub(super) ports: Vec<PortConfig>,
    pub(super) mode: FwdMode,
    pub(super) opts: EngineOptions,
    pub(super) gen: TxGen,
    pub(super) mac_table_size: usize,
    pub(super) rxq_affinity: Vec<(u16, u16, usize)>,
    pub(super) mbufs: u32,
    pub(super) no_huge: bool,
    /// The bridge's `conntrack_size` from `--policy`.
    pub(super) conntrack_size: Option<usize>,
}

pub(super) fn mode_names() -> String {
    FwdMode::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

pub(super) fn parse_mode(s: &str) -> Result<FwdMode, String> {
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

/// Parses one `--port` SPEC ([`Backend`]'s `FromStr`) into the configuration of a port named
/// `name`, and checks what the syntax cannot: the capture to read exists, and so does the
/// directory of the one to write.
pub fn parse_port_spec(spec: &str, name: &str) -> Result<PortConfig, String> {
    let backend: Backend = spec.parse()?;
    if let Backend::Pcap { rx, tx, .. } = &backend {
        if let Some(f) = rx.as_deref().filter(|f| !Path::new(f).is_file()) {
            return Err(format!("{f}: no such file"));
        }
        if let Some(t) = tx {
            let dir = Path::new(t).parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(format!("{t}: its directory does not exist"));
            }
        }
    }
    let mut c = PortConfig { name: name.into(), ..Default::default() };
    c.set_backend(&backend);
    Ok(c)
}

/// Checks every argument. The error names the argument it is about.
pub(super) fn check(a: &PmdArgs) -> Result<Setup, String> {
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
    let mut conntrack_size = None;
    if let Some(path) = &a.policy {
        if mode != FwdMode::Switch {
            return Err("--policy: only with --fwd switch".into());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("--policy {}: {e}", path.display()))?;
        conntrack_size =
            apply_policy(&text, &mut ports).map_err(|e| format!("--policy {}: {e}", path.display()))?;
    }
    let defaults = EngineOptions::default();
    let opts = EngineOptions {
        cores: if cores.is_empty() { vec![None] } else { cores.into_iter().map(Some).collect() },
        burst: a.burst,
        busy_poll: a.busy_poll,
        idle_spin: a.idle_spin_us.map(std::time::Duration::from_micros),
        pool_buffers: a.pool_buffers,
        on_worker_plan: Some(switchyard_ports::factory::worker_hook()),
        stage_cycles: a.stage_cycles,
        ..defaults
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
        conntrack_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dataplane::config::{AfPacketRxMode, PortType};

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
        assert_eq!(c.offloads, None);
        let c = parse_port_spec("vhost:/tmp/v.sock,client,offloads", "p0").unwrap();
        assert_eq!((c.mode.as_deref(), c.offloads), (Some("client"), Some(true)));
        assert!(parse_port_spec("vhost:/tmp/v.sock,tso", "p0").unwrap_err().contains("offloads"));
        let c = parse_port_spec("vhost:/tmp/v.sock,client,queues=2", "p0").unwrap();
        assert_eq!((c.mode.as_deref(), c.queues), (Some("client"), Some(2)));
        assert_eq!(parse_port_spec("vhost:/tmp/v.sock", "p0").unwrap().queues, None);
        assert!(parse_port_spec("vhost:/tmp/v.sock,queues=0", "p0").unwrap_err().contains("queues=N"));
        assert!(parse_port_spec("vhost:/tmp/v.sock,queues=x", "p0").is_err());
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
        let c = parse_port_spec("afxdp:eth1", "p0").unwrap();
        assert_eq!((c.kind, c.iface.as_deref(), c.queues), (Some(PortType::Afxdp), Some("eth1"), None));
        let c = parse_port_spec("afxdp:eth1,queues=4", "p0").unwrap();
        assert_eq!((c.kind, c.iface.as_deref(), c.queues), (Some(PortType::Afxdp), Some("eth1"), Some(4)));
        assert!(parse_port_spec("afxdp:eth1,queues=0", "p0").unwrap_err().contains("queues=N"));
        assert!(parse_port_spec("afxdp:", "p0").unwrap_err().contains("1 to 15"));
        assert!(parse_port_spec("tap:sy0,recvmmsg", "p0").is_err());
    }
}
