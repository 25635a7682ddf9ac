//! `switchyard run --state DIR --node NODE [--config FILE] [--node-labels K=V,...]
//! [--lcores LIST] [--socket PATH] [--vhost-dir DIR]`: the sidecar.
//! `switchyard run --switch FILE [...]`: a static switch from a configuration file alone.
//! `switchyard run --kube --node NODE [--kubeconfig FILE] [...]`: the node agent, the same
//! objects taken from the Kubernetes API (kubeconfig: `--kubeconfig`, else `$KUBECONFIG` or
//! `~/.kube/config`, else the in-cluster service account), problems posted as Events.
//! Common: `--metrics ADDR` (HTTP: `/metrics`, `/healthz`, `/readyz`, switchyard_control::health),
//! `--log-format json`.
//!
//! Worker cores: `--lcores LIST`; without it, when this process may run only on some of the
//! online CPUs (a cpuset, as the kubelet's static CPU manager gives a Guaranteed pod its
//! exclusive CPUs), one worker pinned to each of them; otherwise one unpinned worker.
//!
//! Loads the manifests under DIR and plans the node's configuration (or reads FILE, the
//! dataplane's configuration schema, as it is), starts the workers, then watches DIR (or FILE)
//! and applies every change as a diff (switchyard_control::controller). A FILE that does not
//! load at start is an error; a bad edit later leaves the running configuration as it was.
//! `ctl` talks to it over `--socket` (mode 0600). SIGINT or SIGTERM stop it cleanly (exit 0).
//!
//! `--config FILE` overrides port backends by port name (default: an uplink is AF_PACKET on the
//! interface of its name, a VM port vhost-user on its planned socket):
//!
//! ```yaml
//! ports:
//!   eth1: {type: afpacket, iface: ens2f0}
//!   eth2: {type: dpdk, devargs: "0000:3b:00.1"}
//!   eth3: {type: ring}          # any port type with that type's options
//! ```

use crate::args::{parse_labels, parse_mode_arg};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use switchyard_control::api_source::ApiOptions;
use switchyard_control::cni::{CniPorts, DEFAULT_CNI_STATE};
use switchyard_control::controller::{Controller, ControllerOptions, Source};
use switchyard_control::ctl::{CtlServer, DEFAULT_SOCKET};
use switchyard_control::health::{HealthOptions, HealthServer, Observed};
use switchyard_control::metrics::ControlStats;
use switchyard_control::plan::DEFAULT_VHOST_DIR;
use switchyard_control::runtime::{RunConfig, Runtime, RuntimeOptions, VmPorts};
use switchyard_control::Config;
use switchyard_control::PlanOptions;
use switchyard_dataplane::worker::EngineOptions;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["state", "switch", "kube"])))]
pub struct RunArgs {
    /// Directory of Kubernetes manifests to watch (YAML, multi-document, any depth).
    #[arg(long, requires = "node")]
    pub state: Option<PathBuf>,
    /// A switch configuration file (bridges and ports, the schema of docs/semantics.md) to run
    /// as it is, watched and reloaded; no cluster state.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["node", "node_labels"])]
    pub switch: Option<PathBuf>,
    /// Watch the Kubernetes API (NADs, this node's VMIs, NNCPs, this Node) instead of a
    /// directory.
    #[arg(long, requires = "node")]
    pub kube: bool,
    /// The kubeconfig to use with `--kube` (default: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (VMIs are placed by status.nodeName).
    #[arg(long)]
    pub node: Option<String>,
    /// Port backend overrides by port name: `ports: {NAME: {type: TYPE, OPTION: VALUE}}`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node labels, `k=v,k2=v2`, over those of the Node object in DIR (for NNCP nodeSelectors).
    #[arg(long, value_name = "K=V,...")]
    pub node_labels: Option<String>,
    /// Cores to pin one worker each to (`2,3` or `2-5`); unset: one worker pinned to each CPU
    /// of this process's cpuset when that is not all online CPUs (the static CPU manager's
    /// exclusive CPUs), else one unpinned worker.
    #[arg(long, value_name = "LIST")]
    pub lcores: Option<String>,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` over HTTP on ADDR
    /// (`HOST:PORT`, e.g. `0.0.0.0:9477`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// `/healthz` fails when the control loop has not turned for this long (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub control_stall_s: u64,
    /// Log lines as text (default) or one JSON object a line (for cluster log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Keep the workers polling when idle instead of sleeping after 2 ms without a frame: for
    /// cores given to the switch alone (--lcores, or a DaemonSet's exclusive CPUs under the
    /// kubelet's static CPU manager policy), where a sleeping worker only adds wake-up latency.
    #[arg(long)]
    pub busy_poll: bool,
    /// Microseconds with nothing received before an idle worker stops spinning and backs off
    /// (yields, then sleeps until a queue wakes it). Default: per worker, 2000 when one of its
    /// RX queues cannot wake it cheaply (vhost-user, DPDK), 0 when all are kernel sockets
    /// (AF_PACKET, UDP tunnel, TAP, AF_XDP), which wake it on readiness for free. On cores
    /// shared with the VMs' own work, a shorter spin leaves them the CPU that spinning between
    /// a stream's frames would take, at the cost of a wake-up after each gap.
    #[arg(long, value_name = "US")]
    pub idle_spin_us: Option<u64>,
    /// The control socket (`switchyard ctl --socket`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory of the VM ports' vhost-user sockets.
    #[arg(long, default_value = DEFAULT_VHOST_DIR)]
    pub vhost_dir: String,
    /// Permissions of the VM ports' vhost-user sockets, octal (e.g. 0660), for a QEMU that
    /// runs as another user; default: left to the umask.
    #[arg(long, value_name = "MODE", value_parser = parse_mode_arg)]
    pub vhost_socket_mode: Option<String>,
    /// Where the ports that the CNI plugin attaches are kept (restored at start; DEL
    /// tombstones applied). Default /var/lib/switchyard/cni; when that cannot be created,
    /// CNI requests are refused (an explicit DIR that cannot be is an error).
    #[arg(long, value_name = "DIR")]
    pub cni_state: Option<PathBuf>,
    /// This node's tunnel endpoint for overlay networks (the address the tunnel sockets bind);
    /// default: the Node's `switchyard.io/tunnel-ip` annotation, else its InternalIP.
    #[arg(long, value_name = "IP")]
    pub tunnel_ip: Option<std::net::IpAddr>,
    /// The underlay MTU the overlay networks' MTU is planned from (default 1500).
    #[arg(long, value_name = "BYTES")]
    pub underlay_mtu: Option<u32>,
    /// With `--kube`: watch the VMIs and Nodes of every node, not only this node's, so that
    /// overlay networks (OVN-Kubernetes layer2 NADs) know the other nodes' VMs and endpoints.
    #[arg(long, requires = "kube")]
    pub all_vmis: bool,
    /// Testing: make VM ports `ring` (in-memory) or leave them `vhostuser`.
    #[arg(long, hide = true, value_name = "ring|vhostuser")]
    pub vm_ports: Option<String>,
}

/// How `run` writes its log lines.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a worker runs when `--lcores` is absent: one per CPU of `allowed` (this process's
/// affinity) when that is a strict subset of `online` (a cpuset was imposed), else one unpinned.
pub fn default_cores(allowed: &[usize], online: &[usize]) -> Vec<Option<usize>> {
    let imposed =
        !allowed.is_empty() && allowed.iter().all(|c| online.contains(c)) && allowed.len() < online.len();
    if imposed {
        allowed.iter().copied().map(Some).collect()
    } else {
        vec![None]
    }
}

/// The online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_lcores(s.trim()).ok())
        .unwrap_or_default()
}

/// `1,3,5-7` as core numbers.
pub fn parse_lcores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num =
            |x: &str| x.trim().parse::<usize>().map_err(|_| format!("--lcores: {x:?} is not a core number"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("--lcores: {part:?} is an empty range"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        return Err("--lcores: no core".into());
    }
    Ok(out)
}

fn setup(a: &RunArgs) -> Result<(RuntimeOptions, ControllerOptions), String> {
    let labels = a.node_labels.as_deref().map(parse_labels).transpose()?.unwrap_or_default();
    let cores = match &a.lcores {
        Some(l) => parse_lcores(l)?.into_iter().map(Some).collect(),
        None => {
            let cores = default_cores(&switchyard_dataplane::worker::available_cores(), &online_cpus());
            if cores[0].is_some() {
                tracing::info!(?cores, "no --lcores: one worker on each CPU of this process's cpuset");
            }
            cores
        }
    };
    let overrides = match &a.config {
        Some(p) => RunConfig::load(p).map_err(|e| e.to_string())?,
        None => RunConfig::default(),
    };
    let vm_ports = match a.vm_ports.as_deref() {
        None | Some("vhostuser") => VmPorts::Vhostuser,
        Some("ring") => VmPorts::Ring,
        Some(x) => return Err(format!("--vm-ports: {x:?} is neither ring nor vhostuser")),
    };
    switchyard_control::plan::vhost_dir_fits(&a.vhost_dir)?;
    let ropts = RuntimeOptions {
        engine: EngineOptions {
            cores,
            busy_poll: a.busy_poll,
            idle_spin: a.idle_spin_us.map(std::time::Duration::from_micros),
            on_worker_plan: Some(switchyard_ports::factory::worker_hook()),
            ..Default::default()
        },
        overrides,
        vm_ports,
        vhost_dir: a.vhost_dir.clone(),
        ..Default::default()
    };
    let plan = PlanOptions {
        vhost_dir: a.vhost_dir.clone(),
        vhost_socket_mode: a.vhost_socket_mode.clone(),
        tunnel_ip: a.tunnel_ip,
        underlay_mtu: a.underlay_mtu,
    };
    let copts = match (&a.state, &a.switch, &a.node) {
        (Some(dir), None, Some(node)) => {
            if let Err(e) = std::fs::read_dir(dir) {
                return Err(format!("{}: {e}", dir.display()));
            }
            ControllerOptions::new(dir, node).planned_with(labels, plan)
        }
        (None, None, Some(node)) if a.kube => {
            let mut api = ApiOptions::new(node);
            api.all_vmis = a.all_vmis;
            if let Some(path) = &a.kubeconfig {
                api.config = Some(kubeconfig(path)?);
            }
            ControllerOptions::kube(api).planned_with(labels, plan)
        }
        (None, Some(file), None) => {
            Config::load(file).map_err(|e| format!("--switch {e}"))?;
            ControllerOptions::switch_file(file)
        }
        // clap's argument groups allow nothing else.
        _ => return Err("give --state DIR --node NODE, --kube --node NODE, or --switch FILE".into()),
    };
    Ok((ropts, copts))
}

/// The client configuration of a kubeconfig file (its current context).
fn kubeconfig(path: &std::path::Path) -> Result<kube::Config, String> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
    let opts = kube::config::KubeConfigOptions::default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(kube::Config::from_custom_kubeconfig(kc, &opts))
        .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))
}

pub fn main(a: RunArgs) -> ExitCode {
    let (ropts, copts) = match setup(&a) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("switchyard run: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("switchyard run: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Before anything opens: another `run` on the control socket keeps its ports. The claim
    // is held until `run` returns.
    let _claim = match switchyard_control::ctl::claim(&a.socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard run: control socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pinned: Vec<usize> = ropts.engine.cores.iter().flatten().copied().collect();
    let mut rt = match Runtime::start(ropts) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard run: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Probes answer from here on (not ready until the first plan is applied).
    let control = Arc::new(ControlStats::default());
    let _metrics = match &a.metrics {
        None => None,
        Some(addr) => {
            let obs = Observed {
                engine: rt.engine().view(),
                control: control.clone(),
                opts: HealthOptions {
                    control_stall: std::time::Duration::from_secs(a.control_stall_s),
                    ..Default::default()
                },
            };
            // The server's threads stay off the pinned workers' cores when other cores are
            // allowed: a scrape's formatting then takes no worker's CPU.
            let (started, placed) = switchyard_dataplane::worker::spawn_off_worker_cores(&pinned, || {
                HealthServer::start(addr, obs)
            });
            match placed {
                Ok(Some(cores)) => tracing::info!(?cores, "metrics server kept off the workers' cores"),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}; the metrics server shares the workers' cores"),
            }
            match started {
                Ok(s) => {
                    tracing::info!(addr = %s.addr(), "metrics and probes listening");
                    Some(s)
                }
                Err(e) => {
                    eprintln!("switchyard run: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    // CNI ports come back before the first reconcile, so that the first configuration the
    // workers run already has them, and before the control socket answers.
    let cni_dir = a.cni_state.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_STATE));
    match CniPorts::open(&cni_dir) {
        Ok((ports, report)) => {
            for r in report {
                tracing::warn!("CNI state: {r}");
            }
            tracing::info!(dir = %cni_dir.display(), ports = ports.len(), "CNI ports restored");
            rt.set_cni(ports);
            control.set_cni_restored();
        }
        Err(e) if a.cni_state.is_some() => {
            eprintln!("switchyard run: --cni-state: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            tracing::warn!("CNI state directory: {e}; CNI requests will be refused");
            rt.disable_cni(e.to_string());
            // Nothing to restore: CNI requests are refused.
            control.set_cni_restored();
        }
    }
    let rt = Arc::new(Mutex::new(rt));
    match &copts.source {
        Source::State(s) => {
            tracing::info!(state = %s.dir.display(), node = %s.node, "switchyard run starting")
        }
        Source::Switch(f) => tracing::info!(switch = %f.display(), "switchyard run starting"),
        Source::Kube(k) => {
            tracing::info!(node = %k.api.node, "switchyard run starting on the Kubernetes API")
        }
    }
    let mut ctl = Controller::new(copts, rt.clone());
    if let Err(e) = ctl.start_api() {
        eprintln!("switchyard run: {e}");
        return ExitCode::FAILURE;
    }
    ctl.stats = Some(control.clone());
    let _ = ctl.reconcile();
    let server = match CtlServer::start(&a.socket, rt.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard run: control socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %a.socket.display(), "control socket ready");
    // A DEL that ran between the start-up scan of the CNI state and the socket's binding left
    // a tombstone: apply it now (the controller also looks again every few seconds).
    rt.lock().unwrap_or_else(|e| e.into_inner()).cni_apply_tombstones();
    let res = ctl.run(&stop);
    server.stop();
    drop(ctl);
    let code = match res {
        Ok(()) => {
            tracing::info!("stopping");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("switchyard run: {e}");
            ExitCode::FAILURE
        }
    };
    match Arc::try_unwrap(rt) {
        Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()).stop(),
        Err(_) => stop.store(true, Ordering::Release),
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_follow_an_imposed_cpuset_only() {
        // The static CPU manager's exclusive CPUs: one pinned worker each.
        assert_eq!(default_cores(&[2, 3], &[0, 1, 2, 3]), vec![Some(2), Some(3)]);
        // Every online CPU (no cpuset imposed): one unpinned worker, as before.
        assert_eq!(default_cores(&[0, 1, 2, 3], &[0, 1, 2, 3]), vec![None]);
        // Nothing known: one unpinned worker.
        assert_eq!(default_cores(&[], &[0, 1]), vec![None]);
        assert_eq!(default_cores(&[1], &[]), vec![None]);
    }
}
