//! The running switch as the control thread sees it: the [`Engine`] (the workers), the port
//! backends it opened, and the configuration that runs. [`Runtime::apply`] takes the wanted
//! configuration, diffs it against what runs ([`crate::reconcile::diff`]) and applies only the
//! difference:
//!
//! - added ports: the backend is opened through the port factory, the port joins the snapshot
//!   and its RX queues go to the least loaded worker;
//! - removed ports: they leave the snapshot; once every worker has applied it (and so dropped
//!   its queue handles) the runtime drops its `Arc`, which closes the backend. Before any port
//!   opens, each gives up what a new port may need (`PortBackend::retire`: a tunnel port's
//!   VNI on a shared socket or uplink), so a renamed port opens in the same reconcile;
//! - ports whose L2 settings changed: same backend, new snapshot;
//! - ports whose backend changed: the old backend is closed first (one extra snapshot without
//!   it, since old and new may want the same device or socket), then the new one is opened;
//! - unchanged ports keep the same `Arc<dyn PortBackend>` and the same worker, so the workers
//!   keep their queue handles and lose no frame.
//!
//! One worker plan is published per reconcile (two when a backend is reopened), and `apply`
//! returns once every worker has applied it. [`Runtime::apply_delta`] does the same for a
//! change given port by port, touching only those ports (and their bridges).
//!
//! A port whose backend cannot be opened (an AF_PACKET port whose interface is missing, a
//! vhost-user server port whose socket cannot be bound, a DPDK device that fails to probe) is
//! present but down: it stays in the configuration (its static MACs are installed, `ctl`
//! shows it), the error is logged once, it is left out of flooding, nothing is received on it,
//! and opening is tried again on every later reconcile.

use crate::cni::{check_port, port_socket_path, Attachment, CniError, CniPort, CniPorts};
pub use crate::phases::Phases;
use crate::reconcile::{self, describe_backend, describe_l2_change, describe_remotes, describe_vlan, Diff};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::backend::{Backend, TYPE_OPTIONS};
use switchyard_dataplane::buffer::Pool;
use switchyard_dataplane::config::{BridgeConfig, Config, ConfigError, PortConfig, PortType};
use switchyard_dataplane::pipeline::{process_burst, FrameTrace, TxBatches};
use switchyard_dataplane::port::{Burst, PortBackend};
use switchyard_dataplane::switch::{PortId, SwitchConfig};
use switchyard_dataplane::worker::placement::{deal_all, place_rx, Deal};
use switchyard_dataplane::worker::{Engine, EngineError, EngineOptions, ForwardingPlan, FwdMode, TxGen};
use switchyard_ports::factory::{open_port, PortContext};

/// Backend overrides by port name (`run --config FILE`).
///
/// ```yaml
/// ports:
///   eth1:                 # a port name: an uplink (NNCP bridge port) or a VM port ns/vmi/iface
///     type: afpacket      # ring | pcap | afpacket | tap | vhostuser | dpdk
///     iface: ens2f0       # and that type's options, as a port of the configuration file has them
///   eth2: {type: dpdk, devargs: "0000:3b:00.1"}
/// ```
///
/// A listed port gets exactly this backend (type and options replace the planned ones); its L2
/// settings still come from the cluster state. Unlisted uplinks are AF_PACKET on the interface
/// of the same name; unlisted VM ports are vhost-user on their planned socket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunConfig {
    pub ports: BTreeMap<String, Backend>,
}

/// The file as written: each override is a port entry of the configuration file without its
/// name and L2 settings, converted by the configuration's own rules ([`PortConfig::backend`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunConfigFile {
    #[serde(default)]
    ports: BTreeMap<String, serde_yaml_ng::Mapping>,
}

impl RunConfig {
    /// Parses and checks the file: each override must be a valid backend for its type.
    pub fn load(path: &Path) -> Result<RunConfig, RuntimeError> {
        let in_file =
            |e: RuntimeError| RuntimeError::RunConfigFile { path: path.to_path_buf(), source: Box::new(e) };
        let text = std::fs::read_to_string(path).map_err(|e| in_file(RuntimeError::RunConfigRead(e)))?;
        RunConfig::from_yaml(&text).map_err(in_file)
    }

    pub fn from_yaml(text: &str) -> Result<RunConfig, RuntimeError> {
        if text.trim().is_empty() {
            return Ok(RunConfig::default());
        }
        let f: RunConfigFile = serde_yaml_ng::from_str(text).map_err(RuntimeError::RunConfigYaml)?;
        let ports = f
            .ports
            .into_iter()
            .map(|(name, entry)| Ok((name.clone(), override_backend(&name, entry)?)))
            .collect::<Result<_, RuntimeError>>()?;
        Ok(RunConfig { ports })
    }
}

/// One override entry (`type` and that type's options) as a [`Backend`].
fn override_backend(port: &str, mut entry: serde_yaml_ng::Mapping) -> Result<Backend, RuntimeError> {
    let bad = |reason: String| RuntimeError::RunConfigPort { port: port.to_string(), reason };
    for k in entry.keys() {
        let k = k.as_str().unwrap_or_default();
        if k != "type" && !TYPE_OPTIONS.contains(&k) {
            return Err(bad(format!("unknown field `{k}` (an override is `type` and that type's options)")));
        }
    }
    if !entry.contains_key("type") {
        return Err(bad("missing field `type`".into()));
    }
    entry.insert("name".into(), port.into());
    let p: PortConfig =
        serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(entry)).map_err(|e| bad(e.to_string()))?;
    p.backend().map_err(|e| bad(e.to_string()))
}

/// Frees what the rings of `ports` (those that are ring ports) hold for a far end that did not
/// take it: at stop, and for ports just removed (a ring's far end is registered for the life
/// of the process, its queue with it, so frames left there would outlive their pool).
fn drain_rings<'a>(ports: impl Iterator<Item = &'a PortConfig>) {
    let rings = ports.filter_map(|p| match p.backend() {
        Ok(Backend::Ring { ring }) => Some(ring.unwrap_or_else(|| p.name.clone())),
        _ => None,
    });
    let freed: usize = rings.map(|r| switchyard_ports::factory::drain_ring(&r)).sum();
    if freed > 0 {
        tracing::info!("freed {freed} frame(s) that ring ports held for a far end that did not take them");
    }
}

/// What VM ports (planned as vhost-user) become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmPorts {
    /// As planned: vhost-user on the planned socket.
    #[default]
    Vhostuser,
    /// In-memory ring ports (tests): reachable through `factory::ring_peer(port name)`.
    Ring,
}

/// How the runtime runs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub engine: EngineOptions,
    pub overrides: RunConfig,
    pub vm_ports: VmPorts,
    /// How long `apply` waits for the workers to take a new plan.
    pub apply_timeout: Duration,
    /// Where vhost-user CNI ports get their sockets (a directory per attachment below it).
    pub vhost_dir: String,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            engine: EngineOptions::default(),
            overrides: RunConfig::default(),
            vm_ports: VmPorts::Vhostuser,
            apply_timeout: Duration::from_secs(5),
            vhost_dir: crate::plan::DEFAULT_VHOST_DIR.into(),
        }
    }
}

/// Failures of the runtime: loading its run configuration, starting, applying a
/// configuration, and the requests of `ctl` that name something that is not there.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("buffer pool: {0}")]
    Pool(#[from] switchyard_dataplane::buffer::BufferError),
    /// A run configuration file could not be used (the path, then why).
    #[error("{path}: {source}")]
    RunConfigFile { path: std::path::PathBuf, source: Box<RuntimeError> },
    #[error("{0}")]
    RunConfigRead(#[source] std::io::Error),
    #[error("{0}")]
    RunConfigYaml(#[source] serde_yaml_ng::Error),
    /// An override that is not a valid backend for its type (`reason` names the field).
    #[error("ports.{port}: {reason}")]
    RunConfigPort { port: String, reason: String },
    #[error("no bridge {0}")]
    NoBridge(String),
    #[error("no port {0}")]
    NoPort(String),
    #[error("frame of {0} bytes does not fit a buffer")]
    FrameTooLong(usize),
}

/// A port's backend, or why it has none.
pub struct PortState {
    pub backend: Option<Arc<dyn PortBackend>>,
    /// The error of the last attempt to open it (logged once per distinct error).
    pub error: Option<String>,
}

/// The outcome of one [`Runtime::apply`].
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub diff: Diff,
    /// The worker plan generation published and applied (None: nothing to publish).
    pub generation: Option<u64>,
    /// Whether every worker applied it in time.
    pub in_time: bool,
    /// One line per port change, as logged.
    pub lines: Vec<String>,
    /// Where the reconcile's wall time went, phase by phase (the benches print it).
    pub phases: Phases,
}

/// What the controller knows about the input, for `ctl show problems`.
#[derive(Debug, Clone, Default)]
pub struct InputStatus {
    pub problems: Vec<String>,
    pub kept: Vec<String>,
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
    pub reconciles: u64,
}

/// The running switch.
pub struct Runtime {
    engine: Engine,
    opts: RuntimeOptions,
    ctx: PortContext,
    /// Shared with `base` when no override, VM port mode or CNI port changes it (no copy).
    running: Arc<Config>,
    switch: Arc<SwitchConfig>,
    ports: BTreeMap<String, PortState>,
    /// Port name -> the worker of each RX queue (`usize::MAX`: none yet): sticky, so unchanged
    /// ports stay on their worker. Looked up by `&str`, so a publish copies no name.
    assign: HashMap<String, Vec<usize>>,
    trace_pool: Pool,
    pub input: InputStatus,
    /// The configuration last applied from the source (without the CNI ports).
    base: Arc<Config>,
    /// Ports attached by the CNI plugin, merged into every configuration applied.
    cni: CniPorts,
    /// Why CNI requests are refused (no state directory), if they are.
    cni_disabled: Option<String>,
    /// The VMI interfaces of the last plan whose ports the CNI plugin attaches: each CNI port
    /// is merged with the policy and IP spoof filter of the one it matches.
    cni_subjects: Vec<crate::cni_subject::CniSubject>,
}

/// Creates a vhost-user CNI port's directory (mode 0750), owned by QEMU's user when given.
fn prepare_socket_dir(d: &Path, owner: Option<u32>, group: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(d)
        .map_err(|e| format!("{}: {e}", d.display()))?;
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(d, owner, group).map_err(|e| format!("chown {}: {e}", d.display()))?;
    }
    Ok(())
}

fn empty_plan(workers: usize) -> ForwardingPlan {
    ForwardingPlan {
        switch: Arc::new(SwitchConfig::default()),
        ports: Vec::new(),
        rx: vec![Vec::new(); workers.max(1)],
        mode: FwdMode::Switch,
        egress: Vec::new(),
        gen: TxGen::default(),
    }
}

/// One line per port change of `d`: `old` and `new` give a port's (bridge, configuration)
/// before and after, `from` where it comes from (` (NAD ns/net1)`).
fn change_lines<'a>(
    d: &Diff,
    old: impl Fn(&str) -> Option<(&'a str, &'a PortConfig)>,
    new: impl Fn(&str) -> Option<(&'a str, &'a PortConfig)>,
    from: &dyn Fn(&str) -> String,
    lines: &mut Vec<String>,
) {
    for n in &d.added {
        let Some((b, p)) = new(n) else { continue };
        lines.push(format!(
            "port {n} added: {} on {b}, {}{}",
            describe_vlan(p),
            describe_backend(p),
            from(n)
        ));
    }
    for n in &d.removed {
        let Some((b, _)) = old(n) else { continue };
        lines.push(format!("port {n} removed from {b}"));
    }
    for n in &d.changed {
        let (Some((ob, op)), Some((nb, np))) = (old(n), new(n)) else { continue };
        lines.push(format!("port {n} changed: {}{}", describe_l2_change(ob, op, nb, np), from(n)));
    }
    for n in &d.updated {
        let (Some((ob, op)), Some((nb, np))) = (old(n), new(n)) else { continue };
        let l2 = describe_l2_change(ob, op, nb, np);
        lines.push(format!(
            "port {n} updated in place: {} -> {}{}{}",
            describe_remotes(op),
            describe_remotes(np),
            if l2.is_empty() { String::new() } else { format!("; {l2}") },
            from(n)
        ));
    }
    for n in &d.reopened {
        let (Some((_, op)), Some((nb, np))) = (old(n), new(n)) else { continue };
        lines.push(format!(
            "port {n} backend changed: {} -> {}, reopened; {} on {nb}{}",
            describe_backend(op),
            describe_backend(np),
            describe_vlan(np),
            from(n)
        ));
    }
}

/// Port `n` of a [`reconcile::ports_by_name`] map: (bridge name, port).
fn lookup<'a>(
    m: &BTreeMap<&str, (&'a BridgeConfig, &'a PortConfig)>,
    n: &str,
) -> Option<(&'a str, &'a PortConfig)> {
    m.get(n).map(|(b, p)| (b.name.as_str(), *p))
}

/// A change of the planned configuration port by port, for [`Runtime::apply_delta`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortDelta {
    /// Ports no longer planned, by name.
    pub removed: Vec<String>,
    /// Ports planned anew or again, each with its bridge: (bridge, port).
    pub upserted: Vec<(String, PortConfig)>,
}

impl PortDelta {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserted.is_empty()
    }
}

/// Where port `name` is in `cfg`: (bridge index, port index). Ports are in name order within
/// a bridge as planned (binary search), else found by a scan of the bridge.
fn locate(cfg: &Config, name: &str) -> Option<(usize, usize)> {
    cfg.bridges.iter().enumerate().find_map(|(bi, b)| {
        let pi = b.ports.binary_search_by(|p| p.name.as_str().cmp(name)).ok();
        pi.or_else(|| b.ports.iter().position(|p| p.name == name)).map(|pi| (bi, pi))
    })
}

/// `cfg` with the ports of `delta` taken out and its upserted ports (made into what runs by
/// `eff`) put in, in name order within their bridge; returns what was there before, by name:
/// (bridge, port). Every bridge of `delta` is in `cfg` (the caller checked).
fn patch_config(
    cfg: &mut Config,
    delta: &PortDelta,
    eff: impl Fn(&mut PortConfig),
) -> BTreeMap<String, (String, PortConfig)> {
    let mut before = BTreeMap::new();
    let names = delta.removed.iter().chain(delta.upserted.iter().map(|(_, p)| &p.name));
    for n in names {
        if let Some((bi, pi)) = locate(cfg, n) {
            let p = cfg.bridges[bi].ports.remove(pi);
            before.insert(n.clone(), (cfg.bridges[bi].name.clone(), p));
        }
    }
    for (b, p) in &delta.upserted {
        let Some(bc) = cfg.bridges.iter_mut().find(|x| &x.name == b) else { continue };
        let mut p = p.clone();
        eff(&mut p);
        let at = bc.ports.partition_point(|q| q.name < p.name);
        if bc.ports.len() == bc.ports.capacity() {
            // A sixteenth more room, not double: a bridge of 5,000 ports would otherwise hold
            // room for 5,000 more (a few MiB per bridge and per copy) after one added port.
            bc.ports.reserve_exact(bc.ports.len() / 16 + 1);
        }
        bc.ports.insert(at, p);
    }
    before
}

impl Runtime {
    /// Starts the workers with no port; [`Runtime::apply`] gives them some.
    pub fn start(opts: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let fds = switchyard_dataplane::worker::raise_fd_limit();
        tracing::debug!(open_files = fds, "open-file limit");
        let workers = opts.engine.cores.len();
        let engine = Engine::start(opts.engine.clone(), empty_plan(workers))?;
        // Other fields exist in `dpdk` builds.
        #[allow(clippy::needless_update)]
        let ctx = PortContext { workers: engine.worker_count() as u16, ..Default::default() };
        let engine_workers = engine.worker_count();
        Ok(Runtime {
            engine,
            opts,
            ctx,
            running: Arc::new(Config::default()),
            // Every later snapshot is compiled or patched from this one: its ports' counters
            // have a copy per worker.
            switch: Arc::new(SwitchConfig::with_counter_shards(engine_workers)),
            ports: BTreeMap::new(),
            assign: HashMap::new(),
            trace_pool: Pool::with_hugepages("trace", 256, false)?,
            input: InputStatus::default(),
            base: Arc::new(Config::default()),
            cni: CniPorts::in_memory(),
            cni_disabled: Some("no CNI state directory configured".into()),
            cni_subjects: Vec::new(),
        })
    }

    /// The planned configuration with the backend overrides and the VM port mode applied:
    /// what `apply` runs.
    pub fn effective(&self, planned: &Config) -> Config {
        let mut c = planned.clone();
        for b in &mut c.bridges {
            for p in &mut b.ports {
                self.effective_port(p);
            }
        }
        c
    }

    /// One port of [`Runtime::effective`].
    fn effective_port(&self, p: &mut PortConfig) {
        if let Some(b) = self.opts.overrides.ports.get(&p.name) {
            p.set_backend(b);
        } else if p.kind == Some(PortType::Vhostuser) && self.opts.vm_ports == VmPorts::Ring {
            p.set_backend(&Backend::Ring { ring: None });
        }
    }

    /// Whether what runs is the planned configuration itself (no override, VM ports as
    /// planned): then `running` and `base` are one `Arc`.
    fn as_planned(&self) -> bool {
        self.opts.overrides.ports.is_empty() && self.opts.vm_ports == VmPorts::Vhostuser
    }

    /// The configuration that runs (after overrides).
    pub fn running(&self) -> &Config {
        &self.running
    }

    /// The snapshot the workers run.
    pub fn switch(&self) -> &Arc<SwitchConfig> {
        &self.switch
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The backend of a port (None: no such port, or it is down).
    pub fn backend(&self, port: &str) -> Option<Arc<dyn PortBackend>> {
        self.ports.get(port).and_then(|s| s.backend.clone())
    }

    /// Whether some configured port has no backend (its opening is retried).
    pub fn has_down_ports(&self) -> bool {
        self.ports.values().any(|s| s.backend.is_none())
    }

    /// Why a port is down (None: it is up or does not exist).
    pub fn port_error(&self, port: &str) -> Option<&str> {
        self.ports.get(port).and_then(|s| s.error.as_deref())
    }

    /// Applies the planned configuration `planned` (see the module doc) with the CNI ports
    /// merged in. `origin` names where a port comes from, for the log (`NAD ns/net1`, `NNCP
    /// br1-eth1`). On error nothing changed except that backends being reopened may be closed
    /// (they are opened on the next apply).
    pub fn apply(
        &mut self,
        planned: &Config,
        origin: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Applied, RuntimeError> {
        self.apply_shared(Arc::new(planned.clone()), origin)
    }

    /// [`Runtime::apply`] of a configuration the runtime may keep as it is (no copy).
    pub fn apply_shared(
        &mut self,
        planned: Arc<Config>,
        origin: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Applied, RuntimeError> {
        // With no CNI port (the usual node agent) the plan is taken as it is, not copied.
        let (merged, left_out) = if self.cni.is_empty() {
            (planned.clone(), Vec::new())
        } else {
            let (m, l) = self.cni.merge_into(&planned, &self.cni_subjects);
            (Arc::new(m), l)
        };
        let cni_origin: HashMap<String, String> = self
            .cni
            .iter()
            .map(|p| {
                let a = &p.attachment;
                (p.port.name.clone(), format!("CNI {}/{}", a.container_id, a.ifname))
            })
            .collect();
        let r = self.apply_config(merged, &|n| origin(n).or_else(|| cni_origin.get(n).cloned()))?;
        for l in &left_out {
            tracing::warn!("{l}");
        }
        self.base = planned;
        Ok(r)
    }

    /// Applies a change of the planned configuration given port by port, in work proportional
    /// to the ports it names (and one pass over each bridge they are on): the planned and the
    /// running configurations are patched in place, only the named ports are diffed, opened,
    /// closed and compiled ([`SwitchConfig::patch`]), and the snapshot is published as
    /// [`Runtime::apply`] publishes it. The result is what `apply` of the patched planned
    /// configuration gives, except that its diff lists only the named ports (`unchanged`
    /// included) and ports down since an earlier apply are not retried. `Ok(None)`: nothing
    /// was done, as the change is not one a patch can take (a CNI port runs, or a bridge of
    /// `delta` is not in the configuration): apply the whole configuration instead. On error
    /// the configurations are as they were.
    pub fn apply_delta(
        &mut self,
        delta: &PortDelta,
        origin: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Applied>, RuntimeError> {
        let mut ph = Phases::start();
        let known = |b: &String| self.base.bridges.iter().any(|x| &x.name == b);
        if !self.cni.is_empty() || !delta.upserted.iter().all(|(b, _)| known(b)) {
            return Ok(None);
        }
        // Patched in place: `running` lets go of `base` first when they are one `Arc`.
        let mut running = std::mem::take(&mut self.running);
        let (base_before, before) = if self.as_planned() {
            drop(running);
            let b = patch_config(Arc::make_mut(&mut self.base), delta, |_| {});
            running = self.base.clone();
            (None, b)
        } else {
            let bb = patch_config(Arc::make_mut(&mut self.base), delta, |_| {});
            (Some(bb), patch_config(Arc::make_mut(&mut running), delta, |p| self.effective_port(p)))
        };
        ph.mark("patch config");
        let r = self.apply_patched(&running, delta, &before, ph, origin);
        if r.is_err() {
            // Back as it was: the touched ports out, their earlier versions in.
            let undo = |b: &BTreeMap<String, (String, PortConfig)>| PortDelta {
                removed: delta.upserted.iter().map(|(_, p)| p.name.clone()).collect(),
                upserted: b.values().cloned().collect(),
            };
            if let Some(bb) = &base_before {
                patch_config(Arc::make_mut(&mut self.base), &undo(bb), |_| {});
                patch_config(Arc::make_mut(&mut running), &undo(&before), |_| {});
            } else {
                drop(running);
                patch_config(Arc::make_mut(&mut self.base), &undo(&before), |_| {});
                running = self.base.clone();
            }
        }
        self.running = running;
        r.map(Some)
    }

    /// [`Runtime::apply_delta`] once the configurations are patched: `running` is what runs
    /// from now on, `before` the touched ports as they ran.
    fn apply_patched(
        &mut self,
        running: &Config,
        delta: &PortDelta,
        before: &BTreeMap<String, (String, PortConfig)>,
        mut ph: Phases,
        origin: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Applied, RuntimeError> {
        switchyard_ports::factory::close_retired();
        let mut names: Vec<&str> = before
            .keys()
            .map(String::as_str)
            .chain(delta.upserted.iter().map(|(_, p)| p.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let now: BTreeMap<&str, (&str, &PortConfig)> = names
            .iter()
            .filter_map(|n| {
                let (bi, pi) = locate(running, n)?;
                Some((*n, (running.bridges[bi].name.as_str(), &running.bridges[bi].ports[pi])))
            })
            .collect();
        let old = |n: &str| before.get(n).map(|(b, p)| (b.as_str(), p));
        let old = &old;
        let mut d = Diff::default();
        for n in &names {
            d.note(n, old(n), now.get(n).copied());
        }
        ph.mark("diff");
        let mut lines = Vec::new();
        if !d.updated.is_empty() {
            self.update_in_place(&mut d, running);
        }
        // As in `apply_config`: compiled before a removed port gives up its VNI.
        let early = if d.removed.is_empty() { None } else { Some(self.compile_patch(running, &names)?) };
        self.close_reopened(&d);
        self.retire_removed(&d);
        let mut came_up = false;
        for n in d.added.iter().chain(&d.reopened) {
            came_up |= self.open_one(n, now[n.as_str()].1, &mut lines);
        }
        ph.mark("open backends");
        if d.is_empty() && !came_up {
            return Ok(Applied { diff: d, generation: None, in_time: true, lines, phases: ph });
        }
        let (mut sw, whole) = match early.map_or_else(|| self.compile_patch(running, &names), Ok) {
            Ok(c) => c,
            Err(e) => {
                for n in &d.added {
                    self.ports.remove(n);
                }
                return Err(e.into());
            }
        };
        // The bridges the touched ports are on or left (the same indexes in a patch).
        let touched: std::collections::HashSet<usize> = names
            .iter()
            .flat_map(|n| [sw.port_by_name(n), self.switch.port_by_name(n)])
            .flatten()
            .map(|s| s.bridge)
            .collect();
        self.drop_down(&mut sw, |bi| whole || touched.contains(&bi));
        ph.mark("compile");
        Self::static_error_lines(&self.switch, &sw, &mut lines);
        let (gen, in_time) = self.publish(Arc::new(sw));
        ph.mark("publish");
        for n in &d.removed {
            self.ports.remove(n);
            self.assign.remove(n);
        }
        drain_rings(d.removed.iter().filter_map(|n| before.get(n).map(|(_, p)| p)));
        let logged = lines.len();
        let from = |n: &str| origin(n).map(|o| format!(" ({o})")).unwrap_or_default();
        change_lines(&d, old, |n| now.get(n).copied(), &from, &mut lines);
        for l in &lines[logged..] {
            tracing::info!("{l}");
        }
        if !in_time {
            tracing::warn!(generation = gen, "the workers did not apply the new configuration in time");
        }
        ph.mark("close and log");
        Ok(Applied { diff: d, generation: Some(gen), in_time, lines, phases: ph })
    }

    /// The snapshot of `running` with the ports `names` patched in (whether it was compiled
    /// whole instead: a patch that cannot be made).
    fn compile_patch(&self, running: &Config, names: &[&str]) -> Result<(SwitchConfig, bool), ConfigError> {
        match self.switch.patch(running, names) {
            Ok(Some(sw)) => Ok((sw, false)),
            Ok(None) => SwitchConfig::compile(running, Some(&self.switch)).map(|sw| (sw, true)),
            Err(e) => Err(e),
        }
    }

    /// A line for each port of `after` whose static MAC entries its bridge's table cannot
    /// hold (a configuration error of that port; the snapshot runs without them), logged: once,
    /// when it starts or its count changes from `before`.
    fn static_error_lines(before: &SwitchConfig, after: &SwitchConfig, lines: &mut Vec<String>) {
        let known = before.static_errors();
        for (port, msg) in after.static_errors() {
            if !known.iter().any(|(p, m)| *p == port && *m == msg) {
                let l = format!("port {port}: {msg}");
                tracing::warn!("{l}");
                lines.push(l);
            }
        }
    }

    /// Closes the backends of the ports `d` reopens (publishing the running snapshot without
    /// them first, since old and new may want the same device or socket).
    fn close_reopened(&mut self, d: &Diff) {
        if d.reopened.is_empty() {
            return;
        }
        let mut closing = Vec::new();
        for n in &d.reopened {
            if let Some(st) = self.ports.get_mut(n) {
                closing.extend(st.backend.take());
                st.error = None;
            }
        }
        self.publish(self.switch.clone());
        drop(closing);
    }

    /// Has the backends of the ports `d` removes give up now what a port opened in this
    /// reconcile may need ([`PortBackend::retire`]): a port renamed, or a VNI moved to a new
    /// port, on a shared tunnel socket or uplink opens at once. Their queues run on until
    /// the publish without them, as before.
    fn retire_removed(&self, d: &Diff) {
        for n in &d.removed {
            if let Some(b) = self.ports.get(n).and_then(|st| st.backend.as_ref()) {
                b.retire();
            }
        }
    }

    /// Opens port `name`'s backend unless it has one; whether a port that was down came up.
    fn open_one(&mut self, name: &str, p: &PortConfig, lines: &mut Vec<String>) -> bool {
        if self.ports.get(name).is_some_and(|st| st.backend.is_some()) {
            return false;
        }
        let st = self.ports.entry(name.to_string()).or_insert(PortState { backend: None, error: None });
        match open_port(p, &self.ctx) {
            Ok(b) => {
                st.backend = Some(b);
                if st.error.take().is_some() {
                    let l = format!("port {name} is up: backend {} opened", describe_backend(p));
                    tracing::info!("{l}");
                    lines.push(l);
                    return true;
                }
                false
            }
            Err(e) => {
                let msg = e.to_string();
                if st.error.as_deref() != Some(msg.as_str()) {
                    let l = format!(
                        "port {name} is down: cannot open its backend ({msg}); it stays configured and opening is \
                         retried on every reconcile"
                    );
                    tracing::warn!("{l}");
                    lines.push(l);
                }
                st.error = Some(msg);
                false
            }
        }
    }

    /// Leaves the ports that are down out of the member lists (flooding) of the bridges `which`
    /// selects, as a port whose link is down.
    fn drop_down(&self, sw: &mut SwitchConfig, which: impl Fn(usize) -> bool) {
        let up = |sw: &SwitchConfig, id: PortId| {
            sw.port(id).is_some_and(|s| self.ports.get(&s.name).is_some_and(|st| st.backend.is_some()))
        };
        for bi in 0..sw.bridges.len() {
            if which(bi) {
                let keep: Vec<PortId> =
                    sw.bridges[bi].ports.iter().copied().filter(|id| up(sw, *id)).collect();
                sw.bridges[bi].ports = keep;
            }
        }
    }

    fn apply_config(
        &mut self,
        planned: Arc<Config>,
        origin: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Applied, RuntimeError> {
        let mut ph = Phases::start();
        // A tunnel uplink a worker let go of since the last publish: closed before anything
        // opens (a plain port may want its device), even when nothing changes.
        switchyard_ports::factory::close_retired();
        let wanted = if self.as_planned() { planned } else { Arc::new(self.effective(&planned)) };
        wanted.validate()?;
        ph.mark("effective config");
        let mut d = reconcile::diff(&self.running, &wanted);
        ph.mark("diff");
        let mut lines = Vec::new();
        let from = |n: &str| origin(n).map(|o| format!(" ({o})")).unwrap_or_default();
        // 0. Tunnel ports take their new remote table in place; one that cannot is reopened.
        if !d.updated.is_empty() {
            self.update_in_place(&mut d, &wanted);
            ph.mark("update in place");
        }
        // A removed port gives up its VNI before the new ports open (below), and cannot take it
        // back: compile first, so that a configuration that does not compile leaves it serving.
        let early = if d.removed.is_empty() {
            None
        } else {
            Some(SwitchConfig::compile(&wanted, Some(&self.switch))?)
        };
        // 1. Backends to reopen are closed first; removed ones give up what a port opened
        // now may need (a tunnel port's VNI on a shared socket or uplink).
        self.close_reopened(&d);
        self.retire_removed(&d);
        // 2. Open what has no backend: new ports, reopened ones, and down ones (a retry).
        let wanted_ports = reconcile::ports_by_name(&wanted);
        let mut came_up = false;
        for (name, (_, p)) in &wanted_ports {
            came_up |= self.open_one(name, p, &mut lines);
        }
        ph.mark("open backends");
        if d.is_empty() && !came_up {
            // Nothing to publish, but the configuration as now written is the one running (a
            // port respelled, `Backend::opened_form`, means what it meant): `ctl` shows it.
            drop(wanted_ports);
            self.running = wanted;
            return Ok(Applied { diff: d, generation: None, in_time: true, lines, phases: ph });
        }
        // 3. The new snapshot (ports keep ids, counters and MAC tables), published.
        let mut sw = match early.map_or_else(|| SwitchConfig::compile(&wanted, Some(&self.switch)), Ok) {
            Ok(sw) => sw,
            Err(e) => {
                for n in &d.added {
                    self.ports.remove(n);
                }
                return Err(e.into());
            }
        };
        // Down ports are not flooded to (as a port whose link is down).
        self.drop_down(&mut sw, |_| true);
        ph.mark("compile");
        Self::static_error_lines(&self.switch, &sw, &mut lines);
        let (gen, in_time) = self.publish(Arc::new(sw));
        ph.mark("publish");
        // 4. Every worker has dropped its handles of removed ports: close them.
        for n in &d.removed {
            self.ports.remove(n);
        }
        let old_ports = reconcile::ports_by_name(&self.running);
        drain_rings(d.removed.iter().filter_map(|n| old_ports.get(n.as_str()).map(|(_, p)| *p)));
        // 4b. A port that could not open because a removed port still held its device (a DPDK
        // port renamed: one device, one port) opens now that the removed one is closed, and is
        // published at once rather than on the next reconcile, seconds later. Only when the
        // workers let go in time: otherwise the device is still held and nothing would open.
        let (gen, in_time) = if d.removed.is_empty() || !in_time {
            (gen, in_time)
        } else {
            let mut reopened = false;
            for (name, (_, p)) in &wanted_ports {
                if self.ports.get(*name).is_some_and(|st| st.backend.is_none()) {
                    reopened |= self.open_one(name, p, &mut lines);
                }
            }
            if reopened {
                let mut sw = SwitchConfig::compile(&wanted, Some(&self.switch))?;
                self.drop_down(&mut sw, |_| true);
                self.publish(Arc::new(sw))
            } else {
                (gen, in_time)
            }
        };
        self.assign.retain(|n, _| wanted_ports.contains_key(n.as_str()));
        // 5. Say what changed.
        let logged = lines.len();
        let old = reconcile::ports_by_name(&self.running);
        change_lines(&d, |n| lookup(&old, n), |n| lookup(&wanted_ports, n), &from, &mut lines);
        for b in &d.bridges_changed {
            match wanted.bridges.iter().find(|x| &x.name == b) {
                Some(x) if !self.running.bridges.iter().any(|o| &o.name == b) => {
                    lines.push(format!("bridge {b} added ({} port(s))", x.ports.len()))
                }
                Some(x) => lines.push(format!(
                    "bridge {b} changed: mac_aging_s {:?}, mac_table_size {:?}",
                    x.mac_aging_s, x.mac_table_size
                )),
                None => lines.push(format!("bridge {b} removed")),
            }
        }
        for l in &lines[logged..] {
            tracing::info!("{l}");
        }
        if !in_time {
            tracing::warn!(generation = gen, "the workers did not apply the new configuration in time");
        }
        self.running = wanted;
        ph.mark("close and log");
        Ok(Applied { diff: d, generation: Some(gen), in_time, lines, phases: ph })
    }

    /// Hands each port of `d.updated` its wanted backend (`PortBackend::update`); a port whose
    /// backend is down, refuses or cannot take the change in place moves to `d.reopened`.
    fn update_in_place(&mut self, d: &mut Diff, wanted: &Config) {
        let wanted_ports = reconcile::ports_by_name(wanted);
        let mut reopen = Vec::new();
        d.updated.retain(|n| {
            let backend = self.ports.get(n).and_then(|st| st.backend.as_ref());
            let new = wanted_ports.get(n.as_str()).map(|(_, p)| p.backend());
            let done = match (backend, new) {
                (Some(b), Some(Ok(new))) => match b.update(&new) {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::warn!(port = %n, "cannot update the port in place ({e}): reopening it");
                        false
                    }
                },
                _ => false,
            };
            if !done {
                reopen.push(n.clone());
            }
            done
        });
        d.reopened.extend(reopen);
        d.reopened.sort();
    }

    /// Takes the CNI ports restored from their state directory (before the first apply), and
    /// accepts CNI requests from then on. Ports that tombstones removed while the daemon was
    /// down lose their socket directories here, as a DEL would have removed them.
    pub fn set_cni(&mut self, mut ports: CniPorts) {
        for p in ports.take_deleted() {
            self.remove_socket_dir(&p);
        }
        self.cni = ports;
        self.cni_disabled = None;
    }

    /// Sets the VMI interfaces whose CNI ports get a policy and IP spoof filter from the next
    /// apply on (the plan's [`crate::Plan::cni_subjects`]; none for a switch file). A CNI ADD
    /// applies with them: a VM's port is filtered from its first frame when its VMI was
    /// planned before the ADD.
    pub fn set_cni_subjects(&mut self, subjects: Vec<crate::cni_subject::CniSubject>) {
        self.cni_subjects = subjects;
    }

    /// Refuses CNI requests, saying why.
    pub fn disable_cni(&mut self, why: String) {
        self.cni_disabled = Some(why);
    }

    pub fn cni_ports(&self) -> &CniPorts {
        &self.cni
    }

    /// Whether a port has an open backend whose link is up.
    pub fn link_up(&self, port: &str) -> bool {
        self.backend(port).is_some_and(|b| b.link_up())
    }

    fn cni_enabled(&self) -> Result<(), CniError> {
        match &self.cni_disabled {
            Some(why) => Err(CniError::Internal(format!("CNI ports are not available: {why}"))),
            None => Ok(()),
        }
    }

    /// Re-applies the source's configuration with the CNI ports as they are now.
    fn reapply(&mut self) -> Result<Applied, CniError> {
        let base = self.base.clone();
        self.apply_shared(base, &|_| None).map_err(|e| CniError::Internal(e.to_string()))
    }

    /// Attaches a CNI port: checked against the running switch, persisted, applied. Nothing is
    /// replaced: an attachment or a port name already present is [`CniError::Exists`]. An
    /// afxdp port that the UMEM has no room for, or whose backend does not open, is refused
    /// ([`CniError::Internal`]; in the second case removed again); other ports that do not
    /// open are kept down and retried.
    ///
    /// A tombstone of the attachment not applied yet is applied first: a runtime runs one
    /// container's DEL and ADD in order, so it is from a DEL older than this ADD, and applied
    /// later it would remove the port being added.
    pub fn cni_add(&mut self, mut p: CniPort) -> Result<CniPort, CniError> {
        self.cni_enabled()?;
        if self.cni.has_tombstone(&p.attachment) {
            self.cni_apply_tombstones();
        }
        check_port(&p)?;
        if let Some(q) = self.cni.find(&p.attachment) {
            return Err(CniError::Exists(format!(
                "attachment {}/{} already has port {}",
                p.attachment.container_id, p.attachment.ifname, q.port.name
            )));
        }
        let name = p.port.name.clone();
        let planned = self.base.bridges.iter().flat_map(|b| &b.ports).any(|q| q.name == name);
        if planned || self.cni.get(&name).is_some() {
            return Err(CniError::Exists(format!("port name {name:?} is taken")));
        }
        let Some(bi) = self.base.bridges.iter().position(|b| b.name == p.bridge) else {
            return Err(CniError::NoBridge(p.bridge.clone()));
        };
        let mut vhost_dir = None;
        if p.port.kind == Some(PortType::Vhostuser) {
            let sock = port_socket_path(&self.opts.vhost_dir, &p)?;
            vhost_dir = Path::new(&sock).parent().map(Path::to_path_buf);
            p.port.socket = Some(sock);
            p.port.mode.get_or_insert_with(|| "server".into());
        }
        // The schema's checks, on the port as it will run, naming the field as `port.X`.
        let mut trial = (*self.base).clone();
        let at = trial.bridges[bi].ports.len();
        trial.bridges[bi].ports.push(p.port.clone());
        trial.validate().map_err(|e| {
            CniError::Invalid(e.to_string().replace(&format!("bridges[{bi}].ports[{at}]."), "port."))
        })?;
        if p.port.kind == Some(PortType::Afxdp) {
            afxdp_room(&p.port)?;
        }
        if let Some(d) = &vhost_dir {
            prepare_socket_dir(d, p.owner, p.group).map_err(CniError::Internal)?;
        }
        self.cni.insert(p.clone())?;
        if let Err(e) = self.reapply() {
            let _ = self.cni.remove(&p.attachment);
            let _ = self.reapply();
            return Err(e);
        }
        // An AF_XDP port that does not open is refused, not kept down and retried as other
        // ports are: the plugin created and raised its interface just before, so what fails is
        // the daemon's own setup (no CAP_BPF, a kernel without AF_XDP sockets), which no retry
        // mends; the ADD must fail and undo itself rather than leave the pod an interface that
        // carries nothing. (An AF_PACKET port opens wherever its interface exists.)
        if p.port.kind == Some(PortType::Afxdp) {
            if let Some(why) = self.ports.get(&name).and_then(|st| st.error.clone()) {
                let _ = self.cni.remove(&p.attachment);
                let _ = self.reapply();
                return Err(CniError::Internal(format!(
                    "port {name}: cannot open its AF_XDP backend: {why}"
                )));
            }
        }
        if let (Some(sock), true) = (&p.port.socket, p.owner.is_some() || p.group.is_some()) {
            // The backend made the socket (server mode) during the apply: give it to QEMU's user.
            if Path::new(sock).exists() {
                std::os::unix::fs::chown(sock, p.owner, p.group)
                    .map_err(|e| CniError::Internal(format!("chown {sock}: {e}")))?;
            }
        }
        Ok(p)
    }

    /// Detaches the port of an attachment; its name, or `None` when there was none.
    pub fn cni_del(&mut self, a: &Attachment) -> Result<Option<String>, CniError> {
        self.cni_enabled()?;
        let Some(p) = self.cni.remove(a)? else { return Ok(None) };
        self.reapply()?;
        self.remove_socket_dir(&p);
        Ok(Some(p.port.name))
    }

    /// Applies the DEL tombstones written since the state directory was opened: a DEL that
    /// found the daemon not answering yet (it had started but its socket was not bound).
    /// Returns the names of the ports removed.
    pub fn cni_apply_tombstones(&mut self) -> Vec<String> {
        if self.cni_disabled.is_some() {
            return Vec::new();
        }
        let mut report = Vec::new();
        let mut gone = Vec::new();
        for a in self.cni.new_tombstones(&mut report) {
            match self.cni_del(&a) {
                Ok(Some(name)) => {
                    tracing::info!("CNI port {name} removed: deleted while the daemon was starting");
                    gone.push(name);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("CNI tombstone of {}/{}: {e}", a.container_id, a.ifname),
            }
        }
        for r in report {
            tracing::warn!("CNI state: {r}");
        }
        gone
    }

    /// Detaches every CNI port (of the CNI network `network`, when given) whose attachment is
    /// not in `valid`; their names.
    pub fn cni_gc(&mut self, valid: &[Attachment], network: Option<&str>) -> Result<Vec<String>, CniError> {
        self.cni_enabled()?;
        let stale: Vec<Attachment> = self
            .cni
            .iter()
            .filter(|p| network.is_none_or(|n| p.network.as_deref() == Some(n)))
            .filter(|p| !valid.iter().any(|v| v.same(&p.attachment)))
            .map(|p| p.attachment.clone())
            .collect();
        let mut gone = Vec::new();
        for a in &stale {
            if let Some(p) = self.cni.remove(a)? {
                gone.push(p);
            }
        }
        if !gone.is_empty() {
            self.reapply()?;
        }
        for p in &gone {
            self.remove_socket_dir(p);
        }
        Ok(gone.into_iter().map(|p| p.port.name).collect())
    }

    /// A vhost-user CNI port's own socket directory goes with it; in a device plugin's
    /// directory, which stays mounted in the pod and is allocated again, only the socket goes.
    fn remove_socket_dir(&self, p: &CniPort) {
        if let Ok(sock) = port_socket_path(&self.opts.vhost_dir, p) {
            if p.port.socket.as_deref() == Some(sock.as_str()) {
                if p.device.is_some() {
                    let _ = std::fs::remove_file(&sock);
                } else if let Some(d) = Path::new(&sock).parent() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
    }

    /// Publishes `sw` with the current backends, RX queues dealt to workers (sticky; new
    /// queues to the least loaded worker), and waits until every worker applied it.
    fn publish(&mut self, sw: Arc<SwitchConfig>) -> (u64, bool) {
        // What a worker let go of last (a tunnel uplink) is closed here, off the workers.
        switchyard_ports::factory::close_retired();
        let slots = sw.port_slots();
        let mut ports: Vec<Option<Arc<dyn PortBackend>>> = vec![None; slots];
        let w = self.engine.worker_count().max(1);
        // Queues keep the worker they had (while it exists); the others are dealt.
        let mut sticky = Vec::new();
        for spec in sw.ports.iter().flatten() {
            let Some(b) = self.ports.get(&spec.name).and_then(|s| s.backend.clone()) else { continue };
            if let Some(ws) = self.assign.get(spec.name.as_str()) {
                for q in 0..b.rx_queue_count() {
                    if let Some(&wi) = ws.get(usize::from(q)).filter(|&&wi| wi < w) {
                        sticky.push((spec.id, q, wi));
                    }
                }
            }
            ports[usize::from(spec.id)] = Some(b);
        }
        // Cannot fail: the sticky entries name existing ports, queues and workers, once each.
        let rx = place_rx(&ports, w, &sticky, Deal::LeastLoaded).unwrap_or_else(|e| {
            tracing::error!(error = %e, "RX placement");
            deal_all(&ports, w, Deal::LeastLoaded)
        });
        for (wi, queues) in rx.iter().enumerate() {
            for &(id, q) in queues {
                let Some(spec) = sw.port(id) else { continue };
                let q = usize::from(q);
                let ws = match self.assign.get_mut(spec.name.as_str()) {
                    Some(ws) => ws,
                    None => self.assign.entry(spec.name.clone()).or_default(),
                };
                if ws.len() <= q {
                    ws.resize(q + 1, usize::MAX);
                }
                ws[q] = wi;
            }
        }
        let plan = ForwardingPlan {
            switch: sw.clone(),
            ports,
            rx,
            mode: FwdMode::Switch,
            egress: Vec::new(),
            gen: TxGen::default(),
        };
        let gen = self.engine.publish(plan);
        let ok = self.engine.wait_applied(gen, self.opts.apply_timeout);
        if ok {
            // No worker runs an older snapshot: what they learned on ports it removed goes
            // (otherwise the next snapshot carries the flush and keeps the ids unused).
            sw.settle();
        }
        self.switch = sw;
        (gen, ok)
    }

    /// Stops the workers.
    pub fn stop(mut self) {
        self.engine.halt();
        // Frames the switch sent to rings whose far end never took them go back to their
        // pool before it goes (this runtime's rings only: others may share the process).
        drain_rings(self.running.bridges.iter().flat_map(|b| &b.ports));
        drop(self.engine);
        // What the workers let go of last (a tunnel uplink) is closed here, off the workers.
        switchyard_ports::factory::close_retired();
    }

    /// Every port that is down with the error of its last opening: (name, error).
    pub fn port_errors(&self) -> impl Iterator<Item = (&str, &str)> {
        self.ports.iter().filter_map(|(n, st)| st.error.as_deref().map(|e| (n.as_str(), e)))
    }

    /// What each open backend has to say about itself (`PortBackend::info`): (name, info).
    pub fn port_infos(&self) -> impl Iterator<Item = (&str, String)> {
        self.ports.iter().filter_map(|(n, st)| st.backend.as_ref()?.info().map(|i| (n.as_str(), i)))
    }

    /// Removes the learned entries of every bridge's MAC table (or of bridge `bridge`; static
    /// entries stay). Returns how many went.
    pub fn fdb_flush(&self, bridge: Option<&str>) -> Result<usize, RuntimeError> {
        let mut n = 0;
        let mut found = false;
        for b in &self.switch.bridges {
            if bridge.is_none_or(|x| x == b.name) {
                found = true;
                n += b.table.flush_dynamic();
            }
        }
        match bridge {
            Some(x) if !found => Err(RuntimeError::NoBridge(x.to_string())),
            _ => Ok(n),
        }
    }

    /// How `frame`, received on `port`, would be forwarded now (`ctl trace`), one
    /// [`FrameTrace`] per frame, with the snapshot that names its ports. It runs through the
    /// pipeline on a throwaway snapshot compiled from the running configuration, whose MAC
    /// tables are copies of the running ones: tracing never changes the running state.
    pub fn trace(&self, port: &str, frame: &[u8]) -> Result<(SwitchConfig, Vec<FrameTrace>), RuntimeError> {
        let running = &self.switch;
        if running.port_by_name(port).is_none() {
            return Err(RuntimeError::NoPort(port.to_string()));
        }
        let mut cfg = SwitchConfig::compile(&self.running, None)?;
        let now = self.engine.now();
        // The connection tables too, copied: the trace sees the tracked connections.
        for tb in &mut cfg.bridges {
            if let Some(ct) =
                running.bridges.iter().find(|b| b.name == tb.name).and_then(|b| b.conntrack.as_ref())
            {
                let copy = ct.copy().map_err(|e| ConfigError::Invalid {
                    field: format!("bridges.{}.conntrack_size", tb.name),
                    msg: e.to_string(),
                })?;
                tb.conntrack = Some(std::sync::Arc::new(copy));
            }
        }
        // Copy the learned entries (static ones came with the compile), mapping port ids.
        for b in &running.bridges {
            let Some(tb) = cfg.bridges.iter().find(|x| x.name == b.name) else { continue };
            for e in b.table.entries(now).into_iter().filter(|e| !e.is_static) {
                let Some(name) = running.port(e.port).map(|s| s.name.as_str()) else { continue };
                let Some(&id) = cfg.by_name.get(name) else { continue };
                tb.table.learn(e.vlan, e.mac, id, now.saturating_sub(e.age), u32::MAX);
            }
        }
        let in_port = cfg.by_name[port];
        let mut cache = self.trace_pool.cache();
        let buf = cache.alloc_copy(frame).ok_or(RuntimeError::FrameTooLong(frame.len()))?;
        let mut burst = Burst::new();
        burst.push(buf);
        let mut tx = TxBatches::new(cfg.port_slots());
        let mut traces: Vec<FrameTrace> = Vec::new();
        process_burst(&cfg, in_port, &mut burst, now, &mut cache, &mut tx, Some(&mut traces));
        tx.discard(&mut cache);
        Ok((cfg, traces))
    }
}

/// Refuses an AF_XDP CNI port the process's UMEM cannot serve: each of its queues' fill rings
/// keeps at least [`FILL_FLOOR`](switchyard_ports::afxdp::FILL_FLOOR) slots while idle (more
/// while busy), and [`IN_FLIGHT_RESERVE`](switchyard_ports::afxdp::IN_FLIGHT_RESERVE) more
/// must stay free for the frames in flight (with every slot in a fill ring, frames between
/// AF_XDP ports find no buffer; docs/cni.md). Opened anyway, such a port would come up and
/// carry nothing. The rule is the port's own at open
/// ([`slots_needed`](switchyard_ports::afxdp::slots_needed)), checked here first so that the
/// ADD fails before anything is attached.
fn afxdp_room(p: &PortConfig) -> Result<(), CniError> {
    use switchyard_ports::afxdp::{slots_needed, umem::UMEM_SLOTS, FILL_FLOOR};
    let need = slots_needed(p.queues.unwrap_or(1));
    match switchyard_ports::afxdp::umem::free_slots() {
        Some(free) if free < need => Err(CniError::Internal(format!(
            "port {}: the AF_XDP buffer area (UMEM) has {free} of {UMEM_SLOTS} buffers free, the port \
             needs {need}: every AF_XDP queue keeps at least {FILL_FLOOR} in its fill ring, more \
             while busy (docs/cni.md, vethPort)",
            p.name
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dataplane::config::{BridgeConfig, VlanModeName};
    use switchyard_dataplane::wire::MacAddr;

    fn ring_port(name: &str, tag: u16) -> PortConfig {
        PortConfig {
            name: name.into(),
            kind: Some(PortType::Ring),
            vlan_mode: Some(VlanModeName::Access),
            tag: Some(tag),
            ..Default::default()
        }
    }

    fn cfg(ports: Vec<PortConfig>) -> Config {
        Config {
            bridges: vec![BridgeConfig {
                name: "br".into(),
                mac_aging_s: None,
                mac_table_size: None,
                conntrack_size: None,
                ports,
            }],
        }
    }

    #[test]
    fn apply_keeps_unchanged_backends() {
        let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
        let none = |_: &str| None;
        let a = rt
            .apply(&cfg(vec![ring_port("rt-a", 10), ring_port("rt-b", 10), ring_port("rt-c", 10)]), &none)
            .unwrap();
        assert_eq!(a.diff.added.len(), 3);
        assert!(a.in_time);
        let (ba, bb, bc) =
            (rt.backend("rt-a").unwrap(), rt.backend("rt-b").unwrap(), rt.backend("rt-c").unwrap());
        let id_b = rt.switch().by_name["rt-b"];
        // a unchanged, b changed (VLAN), c removed, d added, and a's ring renamed on e.
        let mut e = ring_port("rt-e", 10);
        e.ring = Some("rt-e-ring".into());
        let a2 = rt
            .apply(
                &cfg(vec![ring_port("rt-a", 10), ring_port("rt-b", 20), ring_port("rt-d", 10), e.clone()]),
                &none,
            )
            .unwrap();
        assert_eq!(a2.diff.unchanged, ["rt-a"]);
        assert_eq!(a2.diff.changed, ["rt-b"]);
        assert_eq!(a2.diff.removed, ["rt-c"]);
        assert_eq!(a2.diff.added, ["rt-d", "rt-e"]);
        assert!(Arc::ptr_eq(&ba, &rt.backend("rt-a").unwrap()), "unchanged keeps the same Arc");
        assert!(Arc::ptr_eq(&bb, &rt.backend("rt-b").unwrap()), "an L2 change keeps the backend");
        assert_eq!(rt.switch().by_name["rt-b"], id_b, "and the port id");
        assert!(rt.backend("rt-c").is_none());
        // The removed port's backend is closed: only the test holds it now.
        assert_eq!(Arc::strong_count(&bc), 1);
        // Backend options changed: reopened (a new Arc).
        e.ring = Some("rt-e-ring2".into());
        let be = rt.backend("rt-e").unwrap();
        let a3 = rt
            .apply(&cfg(vec![ring_port("rt-a", 10), ring_port("rt-b", 20), ring_port("rt-d", 10), e]), &none)
            .unwrap();
        assert_eq!(a3.diff.reopened, ["rt-e"]);
        assert!(!Arc::ptr_eq(&be, &rt.backend("rt-e").unwrap()));
        assert_eq!(Arc::strong_count(&be), 1);
        assert!(Arc::ptr_eq(&ba, &rt.backend("rt-a").unwrap()));
        // Nothing changed: nothing published.
        let same = rt.running().clone();
        let a4 = rt.apply(&same, &none).unwrap();
        assert!(a4.generation.is_none());
        rt.stop();
    }

    /// A reload that only respells a port's backend (a default written out) keeps the very
    /// backend object: nothing is closed or reopened. A real change still reopens it.
    #[test]
    fn a_respelled_backend_keeps_its_backend_object() {
        let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
        let none = |_: &str| None;
        rt.apply(&cfg(vec![ring_port("rt-s", 10)]), &none).unwrap();
        let before = rt.backend("rt-s").unwrap();
        // The ring a ring port opens is named like the port when `ring` is left out.
        let mut spelled = ring_port("rt-s", 10);
        spelled.ring = Some("rt-s".into());
        let a = rt.apply(&cfg(vec![spelled.clone()]), &none).unwrap();
        assert!(a.diff.reopened.is_empty() && a.diff.is_empty(), "{:?}", a.diff);
        assert!(Arc::ptr_eq(&before, &rt.backend("rt-s").unwrap()), "respelled keeps the same Arc");
        let running = rt.running().bridges[0].ports.iter().find(|p| p.name == "rt-s").map(|p| p.ring.clone());
        assert_eq!(running, Some(Some("rt-s".into())), "the running configuration is as now written");
        // `type` left out is `type: ring`: unchanged, and with another port added (a compile),
        // the port keeps its compiled spec too; with its tag changed, changed, the same Arc.
        let spec =
            |rt: &Runtime| rt.switch().ports.iter().flatten().find(|p| p.name == "rt-s").cloned().unwrap();
        let spec_before = spec(&rt);
        let mut untyped = ring_port("rt-s", 10);
        untyped.kind = None;
        let a = rt.apply(&cfg(vec![untyped.clone()]), &none).unwrap();
        assert_eq!(a.diff.unchanged, ["rt-s"], "{:?}", a.diff);
        assert!(a.diff.is_empty(), "{:?}", a.diff);
        assert!(Arc::ptr_eq(&before, &rt.backend("rt-s").unwrap()), "type left out keeps the same Arc");
        let a = rt.apply(&cfg(vec![untyped.clone(), ring_port("rt-s2", 10)]), &none).unwrap();
        assert_eq!(
            (a.diff.unchanged.as_slice(), a.diff.added.as_slice()),
            (&["rt-s".to_string()][..], &["rt-s2".to_string()][..])
        );
        assert!(Arc::ptr_eq(&before, &rt.backend("rt-s").unwrap()));
        assert!(Arc::ptr_eq(&spec_before, &spec(&rt)), "type: ring left out keeps the compiled spec");
        untyped.tag = Some(11);
        let a = rt.apply(&cfg(vec![untyped]), &none).unwrap();
        assert_eq!(
            (a.diff.changed.as_slice(), a.diff.reopened.len()),
            (&["rt-s".to_string()][..], 0),
            "{:?}",
            a.diff
        );
        assert!(Arc::ptr_eq(&before, &rt.backend("rt-s").unwrap()), "an L2 change keeps the same Arc");
        spelled.ring = Some("rt-s-other".into());
        let a = rt.apply(&cfg(vec![spelled]), &none).unwrap();
        assert_eq!(a.diff.reopened, ["rt-s"]);
        assert!(!Arc::ptr_eq(&before, &rt.backend("rt-s").unwrap()));
        rt.stop();
    }

    /// A MAC table full of learned entries takes a new port's static MAC (before: the whole
    /// apply failed with "MAC table full"); static MACs past the table's size are an error of
    /// the port that names them, said in the apply's lines, and the apply goes through.
    #[test]
    fn a_full_mac_table_does_not_fail_an_apply() {
        let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
        let none = |_: &str| None;
        let small = |ports| {
            let mut c = cfg(ports);
            c.bridges[0].mac_table_size = Some(64);
            c
        };
        rt.apply(&small(vec![ring_port("rt-up", 10)]), &none).unwrap();
        let table = rt.switch().bridges[0].table.clone();
        let up = rt.switch().by_name["rt-up"];
        for i in 0..64u8 {
            table.learn(10, MacAddr([2, 0xee, 0, 0, 0, i]), up, 1, u32::MAX);
        }
        assert_eq!(table.len(), 64);
        let mut vm = ring_port("rt-vm", 10);
        vm.static_macs = vec!["02:00:00:00:00:01".parse().unwrap()];
        let a = rt.apply(&small(vec![ring_port("rt-up", 10), vm.clone()]), &none).expect("applied");
        assert!(a.lines.iter().all(|l| !l.contains("not installed")), "{:?}", a.lines);
        let hit = table.lookup(10, "02:00:00:00:00:01".parse().unwrap(), 1).expect("installed");
        assert_eq!((hit.port, hit.is_static), (rt.switch().by_name["rt-vm"], true));
        assert_eq!(table.evicted(), 1);

        let mut big = ring_port("rt-big", 10);
        big.static_macs = (0..64u8).map(|i| MacAddr([2, 0xbb, 0, 0, 0, i])).collect();
        let a = rt.apply(&small(vec![big, ring_port("rt-up", 10), vm]), &none).expect("applied");
        assert!(
            a.lines.iter().any(|l| l == "port rt-vm: 1 static MAC entry not installed: bridge br's MAC table (64 entries) is full of static entries of ports before it"),
            "{:?}",
            a.lines
        );
        assert!(rt.switch().port_by_name("rt-big").is_some() && rt.backend("rt-big").is_some());
        assert_eq!(table.statics(), 64);
        rt.stop();
    }

    /// A removed port's id is not given to a port added in the same apply (workers on the
    /// old snapshot may still learn on it), and is free again once the workers applied the
    /// snapshot without it (the publish settles it).
    #[test]
    fn a_removed_ports_id_waits_for_the_workers() {
        let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
        let none = |_: &str| None;
        rt.apply(&cfg(vec![ring_port("rt-a", 10), ring_port("rt-b", 10)]), &none).unwrap();
        let b = rt.switch().by_name["rt-b"];
        let a = rt.apply(&cfg(vec![ring_port("rt-a", 10), ring_port("rt-c", 10)]), &none).unwrap();
        assert!(a.in_time);
        assert_ne!(rt.switch().by_name["rt-c"], b);
        rt.apply(&cfg(vec![ring_port("rt-a", 10), ring_port("rt-c", 10), ring_port("rt-d", 10)]), &none)
            .unwrap();
        assert_eq!(rt.switch().by_name["rt-d"], b, "settled at the publish: the id is free");
        rt.stop();
    }

    #[test]
    fn unopenable_ports_are_present_but_down() {
        let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
        // An interface that does not exist: AF_PACKET cannot open it.
        let mut vm = ring_port("ns/vm/eth1", 10);
        vm.kind = Some(PortType::Afpacket);
        vm.iface = Some("sy-no-such0".into());
        vm.static_macs = vec!["02:00:00:00:00:01".parse().unwrap()];
        let a = rt.apply(&cfg(vec![ring_port("rt-up", 10), vm.clone()]), &|_| None).unwrap();
        assert!(a.lines.iter().any(|l| l.contains("ns/vm/eth1 is down")), "{:?}", a.lines);
        assert!(rt.port_error("ns/vm/eth1").is_some());
        assert!(crate::ctl::show::ports(&rt).contains("down (no backend)"));
        assert!(crate::ctl::show::fdb(&rt, None).unwrap().contains("02:00:00:00:00:01"));
        // Not flooded to.
        let br = &rt.switch().bridges[0];
        assert_eq!(br.ports.len(), 1);
        // The second apply logs nothing new about it.
        let a = rt.apply(&cfg(vec![ring_port("rt-up", 10), vm]), &|_| None).unwrap();
        assert!(a.lines.is_empty(), "{:?}", a.lines);
        rt.stop();
    }

    #[test]
    fn run_config_schema() {
        let c = RunConfig::from_yaml("ports:\n  eth1: {type: ring}\n  eth2: {type: afpacket, iface: ens1}\n")
            .unwrap();
        assert_eq!(c.ports["eth1"].port_type(), PortType::Ring);
        let e = RunConfig::from_yaml("ports:\n  eth1: {type: ring, devargs: x}\n").unwrap_err();
        assert!(e.to_string().contains("ports.eth1: devargs"), "{e}");
        assert!(RunConfig::from_yaml("ports:\n  eth1: {typ: ring}\n").is_err());
        // Every option of the configuration file's ports, typed; nothing else.
        let c = RunConfig::from_yaml("ports:\n  eth1: {type: afpacket, rx_mode: recvmmsg}\n").unwrap();
        assert_eq!(
            c.ports["eth1"],
            Backend::Afpacket {
                iface: None,
                rx_mode: Some(switchyard_dataplane::config::AfPacketRxMode::Recvmmsg)
            }
        );
        let e = RunConfig::from_yaml("ports:\n  eth1: {type: ring, tag: 5}\n").unwrap_err();
        assert!(e.to_string().contains("ports.eth1: unknown field `tag`"), "{e}");
        let e =
            RunConfig::from_yaml("ports:\n  eth1: {type: vhostuser, socket: /s, mode: both}\n").unwrap_err();
        assert!(e.to_string().contains("ports.eth1: mode: \"both\" is neither server nor client"), "{e}");
        let e = RunConfig::from_yaml("ports:\n  eth1: {iface: x}\n").unwrap_err();
        assert!(e.to_string().contains("ports.eth1: missing field `type`"), "{e}");
    }
}
