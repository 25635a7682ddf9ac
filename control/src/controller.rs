//! The control thread of `switchyard run`: loads its [`Source`] (a state directory, planned
//! for this node keeping last good versions of bad objects, see [`crate::lastgood`]; or a
//! switch configuration file taken as it is), applies the result to the [`Runtime`], and does
//! it again on every change of the source.
//!
//! Watching: inotify through the `notify` crate, recursive, on the directory itself, so files
//! created, written, deleted or renamed into place (editors that save through a temporary file,
//! a ConfigMap's `..data` symlink swap) are all seen. Events are debounced: after the first one,
//! the reload waits until no event came for `debounce` (10 ms by default), or at most
//! `max_batch` (100 ms), so a burst of writes is one reconcile. Opening the workers' own reads
//! of the files (access events) does not count.
//!
//! The API source's changes come object by object: when only VMIs changed since the last
//! reconcile, they are planned and applied alone ([`crate::delta`]); anything else plans the
//! whole state.
//!
//! Logging (tracing): one line per object decision that is new since the last reconcile
//! (`problem:`, `kept:`, `skipped:`, `note:`) and one line per port change (by the runtime).

use crate::api_source::{self, ApiError, ApiOptions, ApiSource, ApiStore, Kind};
use crate::delta;
use crate::k8s::ClusterState;
use crate::lastgood::LastGood;
use crate::plan::PlanOptions;
use crate::runtime::{Applied, InputStatus, Phases, Runtime, RuntimeError};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use switchyard_dataplane::config::{Config, ConfigError};

/// Where the switch's configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Kubernetes manifests under a directory, planned for one node (`run --state`).
    State(StateSource),
    /// A switch configuration file in the dataplane's schema, with no cluster state
    /// (`run --switch`): applied as it is, watched and reloaded.
    Switch(PathBuf),
    /// The Kubernetes API, planned for one node (`run --kube`): the same objects as a state
    /// directory, watched (see [`crate::api_source`]).
    Kube(Box<KubeSource>),
}

/// The API server to watch and the node it is planned for.
#[derive(Debug, Clone)]
pub struct KubeSource {
    pub api: ApiOptions,
    /// Node labels given on the command line (over the Node object's).
    pub labels: BTreeMap<String, String>,
    pub plan: PlanOptions,
}

/// A state directory and the node it is planned for.
#[derive(Debug, Clone)]
pub struct StateSource {
    pub dir: PathBuf,
    pub node: String,
    /// Node labels given on the command line (over the Node object's).
    pub labels: BTreeMap<String, String>,
    pub plan: PlanOptions,
}

impl Source {
    /// The path to watch: the state directory, or the directory holding the switch file (so
    /// that a file replaced by a rename is seen).
    fn watch_dir(&self) -> PathBuf {
        match self {
            Source::State(s) => s.dir.clone(),
            Source::Switch(f) => match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            },
            Source::Kube(_) => PathBuf::new(),
        }
    }

    /// Whether a change of `path` can change the configuration.
    fn concerns(&self, path: &std::path::Path) -> bool {
        match self {
            Source::State(_) | Source::Kube(_) => true,
            Source::Switch(f) => path.file_name() == f.file_name(),
        }
    }
}

/// What the controller reads and how often it looks.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub source: Source,
    /// Quiet time after the last event before reloading.
    pub debounce: Duration,
    /// The longest a burst of events delays a reload.
    pub max_batch: Duration,
    /// How often ports that are down, and a reconcile that failed to apply, are retried when
    /// nothing changes.
    pub retry: Duration,
    /// Reconcile a change of a few VMIs of the API source alone ([`crate::delta`]); off, every
    /// change plans the whole state (the reference the differential test compares with).
    pub delta: bool,
}

impl ControllerOptions {
    pub fn new(state_dir: impl Into<PathBuf>, node: &str) -> ControllerOptions {
        ControllerOptions::with_source(Source::State(StateSource {
            dir: state_dir.into(),
            node: node.into(),
            labels: BTreeMap::new(),
            plan: PlanOptions::default(),
        }))
    }

    /// For the Kubernetes API: a change is planned 1 ms after the last event (at most
    /// `max_batch` after the first), as watch events come one object at a time.
    pub fn kube(api: ApiOptions) -> ControllerOptions {
        let mut o = ControllerOptions::with_source(Source::Kube(Box::new(KubeSource {
            api,
            labels: BTreeMap::new(),
            plan: PlanOptions::default(),
        })));
        o.debounce = Duration::from_millis(1);
        o
    }

    /// With node labels (over the Node object's) and plan options, for a source planned for
    /// a node (a state directory or the API); a switch file has neither.
    pub fn planned_with(mut self, labels: BTreeMap<String, String>, plan: PlanOptions) -> ControllerOptions {
        match &mut self.source {
            Source::State(s) => (s.labels, s.plan) = (labels, plan),
            Source::Kube(k) => (k.labels, k.plan) = (labels, plan),
            Source::Switch(_) => {}
        }
        self
    }

    /// For a switch configuration file alone.
    pub fn switch_file(file: impl Into<PathBuf>) -> ControllerOptions {
        ControllerOptions::with_source(Source::Switch(file.into()))
    }

    fn with_source(source: Source) -> ControllerOptions {
        ControllerOptions {
            source,
            debounce: Duration::from_millis(10),
            max_batch: Duration::from_millis(100),
            retry: Duration::from_secs(5),
            delta: true,
        }
    }
}

/// Why a reconcile or the watch failed. A failed reconcile leaves the running configuration
/// as it was, which the messages say.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// `source` names the file already ([`Config::load`]).
    #[error("{source}; the running configuration stays")]
    SwitchFile { path: PathBuf, source: ConfigError },
    #[error("{dir}: cannot read the state directory ({source}); the running configuration stays")]
    StateDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot apply the new configuration ({0}); the running configuration stays")]
    Apply(#[source] RuntimeError),
    #[error("cannot watch: {0}")]
    Watcher(#[source] notify::Error),
    #[error("cannot watch {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("the watcher stopped")]
    WatcherStopped,
    #[error("cannot watch the Kubernetes API: {0}")]
    Api(#[source] ApiError),
    #[error("not every kind has been listed from the Kubernetes API yet; nothing is planned")]
    NotSynced,
}

/// Type of the hook called after every reconcile.
pub type ReconcileHook = Box<dyn FnMut(&Result<Applied, ControllerError>) + Send>;

/// The control loop's state.
pub struct Controller {
    opts: ControllerOptions,
    lastgood: LastGood,
    runtime: Arc<Mutex<Runtime>>,
    logged: HashSet<String>,
    reconciles: u64,
    /// The last reconcile could not apply its plan (or read the state directory): the retry
    /// timer reconciles again, as it does while a port is down.
    failed: bool,
    /// The problems of the last plan (for the API source's Events).
    problems: Option<Vec<crate::Problem>>,
    /// The running API watches (a `Kube` source), started by [`Controller::start_api`].
    api: Option<ApiSource>,
    /// What the last reconcile planned, for a delta (None: the next one plans in full).
    cur: Option<delta::Current>,
    /// The state directory's last load (objects of files that did not change are reused).
    dir_prev: Option<(ClusterState, crate::k8s::DirTexts)>,
    /// Called after each reconcile (tests and benchmarks use it to see a change go live).
    pub on_reconcile: Option<ReconcileHook>,
    /// Reconcile counts and latencies, readiness and the loop's heartbeat, for `--metrics`.
    pub stats: Option<Arc<crate::metrics::ControlStats>>,
}

/// Logs a reconcile's failure where it happens (the caller may drop it).
fn logged(e: ControllerError) -> ControllerError {
    tracing::error!("{e}");
    e
}

fn lock(rt: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    rt.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where port `name` comes from, for the log: `NAD ns/name` for a VM port, `NNCP name` for an
/// uplink. Asked only for the ports a reconcile changes.
pub fn origin(state: &ClusterState, name: &str) -> Option<String> {
    let mut parts = name.splitn(3, '/');
    if let (Some(ns), Some(vmi), Some(iface)) = (parts.next(), parts.next(), parts.next()) {
        let v = state.vmis.get(&(ns.to_string(), vmi.to_string()))?;
        let net = v.obj.spec.networks.iter().find(|n| n.name == iface)?;
        let m = net.multus.as_ref()?;
        Some(match m.network_name.split_once('/') {
            Some((a, b)) => format!("NAD {a}/{b}"),
            None => format!("NAD {ns}/{}", m.network_name),
        })
    } else {
        state
            .nncps
            .values()
            .find(|n| {
                n.obj
                    .spec
                    .desired_state
                    .interfaces
                    .iter()
                    .any(|i| i.bridge.as_ref().is_some_and(|b| b.port.iter().any(|bp| bp.name == name)))
            })
            .map(|n| format!("NNCP {}", n.obj.metadata.name))
    }
}

impl Controller {
    pub fn new(opts: ControllerOptions, runtime: Arc<Mutex<Runtime>>) -> Controller {
        Controller {
            opts,
            lastgood: LastGood::new(),
            runtime,
            logged: HashSet::new(),
            reconciles: 0,
            failed: false,
            problems: None,
            api: None,
            cur: None,
            dir_prev: None,
            on_reconcile: None,
            stats: None,
        }
    }

    pub fn runtime(&self) -> &Arc<Mutex<Runtime>> {
        &self.runtime
    }

    /// Loads, plans and applies once. An error leaves the running configuration as it was.
    pub fn reconcile(&mut self) -> Result<Applied, ControllerError> {
        let t0 = Instant::now();
        let r = self.reconcile_inner();
        // A configuration that does not validate fails the same way until its input changes,
        // which is an event: retrying it on the timer would only log the error every 5 s.
        self.failed = match &r {
            Err(ControllerError::Apply(RuntimeError::Config(_))) => false,
            Err(ControllerError::Apply(_) | ControllerError::StateDir { .. }) => true,
            _ => false,
        };
        if let Some(s) = &self.stats {
            s.reconcile_done(t0.elapsed(), &r);
        }
        if let Some(h) = self.on_reconcile.as_mut() {
            h(&r);
        }
        r
    }

    /// Whether the retry timer (every [`ControllerOptions::retry`]) should reconcile: the last
    /// reconcile failed to apply (a transient failure heals without a new event), or a port
    /// is down (its opening is retried).
    pub fn wants_retry(&self) -> bool {
        self.failed || lock(&self.runtime).has_down_ports()
    }

    fn reconcile_inner(&mut self) -> Result<Applied, ControllerError> {
        self.reconciles += 1;
        match self.opts.source.clone() {
            Source::State(src) => {
                let ph = Phases::start();
                let state = match ClusterState::load_dir_reusing(&src.dir, &mut self.dir_prev) {
                    Ok(state) => state,
                    Err(source) => {
                        // `ctl show problems`' too, as a switch file that does not load: the
                        // running configuration stays until the directory reads again.
                        let e = ControllerError::StateDir { dir: src.dir.clone(), source };
                        let mut rt = lock(&self.runtime);
                        rt.input = InputStatus {
                            reconciles: self.reconciles,
                            problems: vec![e.to_string()],
                            kept: vec![format!("the running configuration, not {}'s", src.dir.display())],
                            ..Default::default()
                        };
                        return Err(logged(e));
                    }
                };
                self.reconcile_state(state, &src.node, &src.labels, &src.plan, ph)
            }
            Source::Switch(file) => self.reconcile_switch(&file),
            Source::Kube(_) => {
                let store = self.api.as_ref().ok_or(ControllerError::NotSynced)?.store().clone();
                let r = self.reconcile_store(&store);
                if let (Some(api), Some(problems)) = (self.api.as_mut(), self.problems.take()) {
                    api.report(&problems);
                }
                r
            }
        }
    }

    /// The reconcile of a `Kube` source from the objects of `store` (its watches' store, or one
    /// a test fills): the VMIs changed since the last one alone when that is all that changed
    /// ([`crate::delta`]), else the whole state.
    pub fn reconcile_store(&mut self, store: &Mutex<ApiStore>) -> Result<Applied, ControllerError> {
        let Source::Kube(src) = self.opts.source.clone() else { return Err(ControllerError::NotSynced) };
        let mut ph = Phases::start();
        let changed = {
            let mut st = api_source::lock(store);
            if !st.ready() {
                return Err(ControllerError::NotSynced);
            }
            // The VMIs changed as they are now (and whether they are good), when only VMIs
            // changed.
            let d = st
                .take_dirty()
                .filter(|d| self.opts.delta && !d.is_empty() && d.iter().all(|k| k.0 == Kind::Vmi));
            d.map(|d| {
                d.into_iter()
                    .map(|(_, ns, name)| {
                        let key = (ns.unwrap_or_default(), name);
                        let (l, good) = st.vmi(&key.0, &key.1);
                        ((key, l.cloned()), good)
                    })
                    .collect::<Vec<_>>()
            })
        };
        ph.mark("load changes");
        if let Some(r) = changed.and_then(|c| self.reconcile_delta(c, &src, ph.clone())) {
            return r;
        }
        let state = api_source::lock(store).snapshot();
        self.reconcile_state(state, &src.api.node, &src.labels, &src.plan, ph)
    }

    /// A reconcile of the VMIs `changed` alone (see [`crate::delta`]); `None` when the change
    /// is not one the delta path takes, and the full plan is to run.
    fn reconcile_delta(
        &mut self,
        changed: Vec<(delta::VmiNow, bool)>,
        src: &KubeSource,
        mut ph: Phases,
    ) -> Option<Result<Applied, ControllerError>> {
        let mut cur = self.cur.take()?;
        if changed.iter().any(|c| !c.1) {
            return None;
        }
        let changed = changed.into_iter().map(|(c, _)| c).collect();
        let (delta, changes) =
            delta::plan_delta(&mut cur, &self.lastgood, changed, &src.api.node, &src.plan)?;
        for c in &changes {
            match &c.now {
                Some(l) => drop(cur.state.vmis.insert(c.key.clone(), l.clone())),
                None => drop(cur.state.vmis.remove(&c.key)),
            }
        }
        ph.mark("plan delta");
        let mut rt = lock(&self.runtime);
        rt.input.reconciles = self.reconciles;
        let mut a = match rt.apply_delta(&delta, &|n| origin(&cur.state, n)) {
            Ok(Some(a)) => a,
            Ok(None) => return None,
            Err(e) => {
                // `ctl show problems`' too, as a full plan that does not apply: until the next
                // reconcile (a full one: this change is not what runs).
                let e = ControllerError::Apply(e);
                rt.input.problems.push(e.to_string());
                rt.input.kept.push("the running configuration, not this change".into());
                return Some(Err(logged(e)));
            }
        };
        for c in changes {
            let (at, old, new) = delta::splice_skipped(&mut cur.skipped, &c.key, &c.skipped);
            rt.input.skipped.splice(at..at + old.len(), new.iter().map(|s| s.to_string()));
            let gone: HashSet<String> = old.iter().map(|s| format!("skipped: {s}")).collect();
            for l in &gone {
                self.logged.remove(l);
            }
            for s in &new {
                let l = format!("skipped: {s}");
                if !gone.contains(&l) && !self.logged.contains(&l) {
                    tracing::info!("{l}");
                }
                self.logged.insert(l);
            }
            self.lastgood.set_vmi(&c.key, c.now, c.memo);
        }
        drop(rt);
        self.cur = Some(cur);
        a.phases = std::mem::take(&mut a.phases).after(ph);
        Some(Ok(a))
    }

    /// Starts the API watches of a `Kube` source (once; `run` does it).
    pub fn start_api(&mut self) -> Result<(), ControllerError> {
        if let (Source::Kube(k), None) = (&self.opts.source, &self.api) {
            self.api = Some(ApiSource::start(k.api.clone()).map_err(ControllerError::Api)?);
        }
        Ok(())
    }

    /// The running API source, if any.
    pub fn api(&self) -> Option<&ApiSource> {
        self.api.as_ref()
    }

    fn reconcile_switch(&mut self, file: &std::path::Path) -> Result<Applied, ControllerError> {
        // A file that does not load or apply is `ctl show problems`' too (not only the log's),
        // with the running configuration kept, until an edit that does.
        let refused = |rt: &mut Runtime, e: ControllerError| {
            rt.input = InputStatus {
                reconciles: self.reconciles,
                problems: vec![e.to_string()],
                kept: vec![format!("the running configuration, not {}", file.display())],
                ..Default::default()
            };
            logged(e)
        };
        let cfg = match Config::load(file) {
            Ok(c) => c,
            Err(source) => {
                let e = ControllerError::SwitchFile { path: file.to_path_buf(), source };
                return Err(refused(&mut lock(&self.runtime), e));
            }
        };
        let mut rt = lock(&self.runtime);
        rt.set_cni_subjects(Vec::new());
        match rt.apply(&cfg, &|_| None) {
            Ok(a) => {
                rt.input = InputStatus { reconciles: self.reconciles, ..Default::default() };
                Ok(a)
            }
            Err(e) => Err(refused(&mut rt, ControllerError::Apply(e))),
        }
    }

    fn reconcile_state(
        &mut self,
        state: ClusterState,
        node: &str,
        labels: &BTreeMap<String, String>,
        plan: &PlanOptions,
        mut ph: Phases,
    ) -> Result<Applied, ControllerError> {
        ph.mark("load state");
        let mut r = self.lastgood.resolve(state, node, labels, plan);
        ph = self.lastgood.take_phases().after(ph);
        self.problems = Some(r.plan.problems.clone());
        let mut input = InputStatus { reconciles: self.reconciles, ..Default::default() };
        let mut now = HashSet::with_capacity(self.logged.len());
        let mut say = |line: String, warn: bool, logged: &HashSet<String>| {
            if !logged.contains(&line) {
                if warn {
                    tracing::warn!("{line}");
                } else {
                    tracing::info!("{line}");
                }
            }
            now.insert(line);
        };
        for p in &r.plan.problems {
            say(format!("problem: {p}"), true, &self.logged);
            input.problems.push(p.to_string());
        }
        for k in &r.kept {
            say(format!("kept: {k}"), true, &self.logged);
            input.kept.push(k.to_string());
        }
        for s in &r.plan.skipped {
            let s = s.to_string();
            say(format!("skipped: {s}"), false, &self.logged);
            input.skipped.push(s);
        }
        for n in &r.plan.notes {
            say(format!("note: {n}"), false, &self.logged);
            input.notes.push(n.clone());
        }
        self.logged = now;
        ph.mark("log decisions");
        let mut rt = lock(&self.runtime);
        rt.input = input;
        rt.set_cni_subjects(std::mem::take(&mut r.plan.cni_subjects));
        let config = Arc::new(std::mem::take(&mut r.plan.config));
        self.cur = None;
        let mut a = match rt.apply_shared(config, &|n| origin(&r.state, n)) {
            Ok(a) => a,
            Err(e) => {
                // Beside the plan's own problems: the plan did not apply, and what runs is
                // the configuration before it.
                let e = ControllerError::Apply(e);
                rt.input.problems.push(e.to_string());
                rt.input.kept.push("the running configuration, not this plan".into());
                return Err(logged(e));
            }
        };
        drop(rt);
        // The API source's changes come object by object: what a delta starts from.
        if matches!(self.opts.source, Source::Kube(_)) {
            self.cur = delta::Current::new(r.state, &mut r.plan, &r.kept, self.lastgood.memo());
            a.phases.mark("index for deltas");
        }
        a.phases = std::mem::take(&mut a.phases).after(ph);
        Ok(a)
    }

    /// Watches the source and reconciles on every change until `stop` is set. Does one
    /// reconcile once the watch is in place (so no change is missed).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), ControllerError> {
        if matches!(self.opts.source, Source::Kube(_)) {
            return self.run_kube(stop);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res| {
            let _ = tx.send(res);
        })
        .map_err(ControllerError::Watcher)?;
        let dir = self.opts.source.watch_dir();
        let mode = match self.opts.source {
            Source::State(_) => RecursiveMode::Recursive,
            Source::Switch(_) | Source::Kube(_) => RecursiveMode::NonRecursive,
        };
        watcher.watch(&dir, mode).map_err(|source| ControllerError::Watch { dir: dir.clone(), source })?;
        let _ = self.reconcile();
        let source = self.opts.source.clone();
        let relevant = move |r: &notify::Result<notify::Event>| match r {
            Ok(e) if !e.paths.is_empty() && !e.paths.iter().any(|p| source.concerns(p)) => false,
            Ok(e) => match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            Err(e) => {
                tracing::warn!("watching {}: {e}", dir.display());
                true
            }
        };
        let mut last = Instant::now();
        while !stop.load(Ordering::Acquire) {
            if let Some(s) = &self.stats {
                s.beat();
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => {
                    if !relevant(&ev) {
                        continue;
                    }
                    let deadline = Instant::now() + self.opts.max_batch;
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        match rx.recv_timeout(self.opts.debounce.min(left)) {
                            Ok(_) => continue,
                            Err(_) => break,
                        }
                    }
                    let _ = self.reconcile();
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {
                    if last.elapsed() >= self.opts.retry {
                        last = Instant::now();
                        lock(&self.runtime).cni_apply_tombstones();
                        if self.wants_retry() {
                            let _ = self.reconcile();
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(ControllerError::WatcherStopped),
            }
        }
        Ok(())
    }

    /// [`Controller::run`] for the Kubernetes API: plans once every required kind is listed,
    /// then after every change of the store (debounced as the directory's events are).
    fn run_kube(&mut self, stop: &AtomicBool) -> Result<(), ControllerError> {
        self.start_api()?;
        let mut last = Instant::now();
        let mut waiting = true;
        while !stop.load(Ordering::Acquire) {
            // The loop turns every 100 ms whether the API has news or not: a quiet cluster is
            // no stalled control loop (`/healthz`).
            if let Some(s) = &self.stats {
                s.beat();
            }
            let Some(api) = self.api.as_ref() else { return Err(ControllerError::NotSynced) };
            if api.wait(Duration::from_millis(100)) {
                let deadline = Instant::now() + self.opts.max_batch;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !api.wait(self.opts.debounce.min(left)) {
                        break;
                    }
                }
                let unlisted = api_source::lock(api.store()).unlisted();
                if let Some(st) = &self.stats {
                    st.set_api_unlisted(unlisted);
                }
                if unlisted != 0 {
                    continue;
                }
                if waiting {
                    tracing::info!("every kind listed from the Kubernetes API: planning");
                    waiting = false;
                }
                let _ = self.reconcile();
                last = Instant::now();
            } else if last.elapsed() >= self.opts.retry {
                last = Instant::now();
                lock(&self.runtime).cni_apply_tombstones();
                if !waiting && self.wants_retry() {
                    let _ = self.reconcile();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeOptions;

    /// A reconcile that fails for a reason that can pass (here the state directory cannot be
    /// read) is retried by the timer though no port is down and no event comes; once one
    /// succeeds, the timer goes back to retrying down ports alone.
    #[test]
    fn a_failed_reconcile_is_retried_by_the_timer() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let rt = Arc::new(Mutex::new(Runtime::start(RuntimeOptions::default()).unwrap()));
        let mut ctl = Controller::new(ControllerOptions::new(&state, "node-1"), rt.clone());
        assert!(!ctl.wants_retry());
        assert!(matches!(ctl.reconcile(), Err(ControllerError::StateDir { .. })));
        assert!(!lock(&rt).has_down_ports());
        assert!(ctl.wants_retry(), "a failed reconcile is retried");
        std::fs::create_dir(&state).unwrap();
        ctl.reconcile().expect("the retry applies");
        assert!(!ctl.wants_retry());
        drop(ctl);
        Arc::try_unwrap(rt).ok().unwrap().into_inner().unwrap().stop();
    }
}
