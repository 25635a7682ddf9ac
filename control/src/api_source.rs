//! The Kubernetes API as the source of cluster state (`run --kube`): watches, a store of the
//! objects they deliver, and the Events that tell the cluster what was found wrong.
//!
//! Invariant: [`ApiStore::snapshot`] is a [`ClusterState`] made by the same per-kind code
//! the directory source's [`ClusterState::add_value`] runs (`ClusterState::add_object`), one
//! object at a time, so both sources plan through the same code. Each object is deserialized
//! once, from the watch's JSON straight into its kind's type (no intermediate YAML value), as
//! it arrives. A kind's objects enter the store only from a complete list (kube-runtime's
//! `Init` .. `InitDone`, buffered here already parsed): a relist removes the objects it no
//! longer finds only once the list is complete, never from a partial one. Nothing is planned
//! before every required kind has been listed once ([`ApiStore::ready`]).
//!
//! What is watched (see [`Kind`]): NADs in all namespaces, the VMIs with the label
//! `kubevirt.io/nodeName=<node>` (every VMI, and every Node, when [`ApiOptions::all_vmis`] is
//! set: overlay networks need the other nodes' VMIs and endpoints), NNCPs, this node's Node,
//! Namespaces and MultiNetworkPolicies; nothing is planned before every kind has been listed
//! once (the policies included: a port never runs without the policy that selects it). Each
//! watch is kube-runtime's watcher: it resumes a watch that ends from the last
//! resourceVersion (bookmarks asked for), relists on a 410 ERROR event, and its errors are
//! retried with an exponential backoff ([`ApiOptions::min_backoff`] ..
//! [`ApiOptions::max_backoff`]). Where it falls short of the protocol as client-go's reflector
//! and pager read it, `watch_version` replaces it with a new watcher (a watch answered HTTP
//! 410 or 404; a paged list whose `continue` token expired, made again once whole), and the
//! client's `ShortWatchLayer` spaces watches that the server ends at once. Those relists, and
//! the rounds of a kind found not served, wait a delay that is the kind's (`Retry`: one for
//! all its versions), reset only after [`ApiOptions::backoff_reset`] without one.
//! MultiNetworkPolicies are watched at `v1beta2` where the API server serves it, else at
//! `v1beta1` ([`Kind::watch_versions`]). A kind the API server does not serve at any of its
//! versions (404: its CRD is not installed, or was removed with its objects) counts as listed
//! and empty, and is retried; a retry that finds it still not served changes nothing, and
//! signals no change (nothing is planned for it).
//!
//! The watches run on a tokio runtime of their own thread; the control thread only locks the
//! store to take a snapshot, so an unreachable API server never blocks it: the dataplane keeps
//! the last configuration applied.

use crate::k8s::{ClusterState, Source};
use crate::{ObjRef, Problem};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The kinds switchyard watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Nad,
    Vmi,
    Nncp,
    Namespace,
    MultiNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Node, Kind::Nad, Kind::Vmi, Kind::Nncp, Kind::Namespace, Kind::MultiNetworkPolicy];

    /// (group, version, kind, plural).
    pub fn gvk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Node => ("", "v1", "Node", "nodes"),
            Kind::Nad => {
                ("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition", "network-attachment-definitions")
            }
            Kind::Vmi => ("kubevirt.io", "v1", "VirtualMachineInstance", "virtualmachineinstances"),
            Kind::Nncp => {
                ("nmstate.io", "v1", "NodeNetworkConfigurationPolicy", "nodenetworkconfigurationpolicies")
            }
            Kind::Namespace => ("", "v1", "Namespace", "namespaces"),
            Kind::MultiNetworkPolicy => {
                ("k8s.cni.cncf.io", "v1beta1", "MultiNetworkPolicy", "multi-networkpolicies")
            }
        }
    }

    /// The versions the kind is watched at, preferred first. MultiNetworkPolicy: `v1beta2`
    /// (the version with `endPort`: read at `v1beta1`, whose schema lacks it, the API server
    /// prunes it), else `v1beta1`, which is what clusters served first (and some serve
    /// alone). Objects of either version are read alike (by group and kind).
    pub fn watch_versions(self) -> &'static [&'static str] {
        match self {
            Kind::MultiNetworkPolicy => &["v1beta2", "v1beta1"],
            Kind::Node | Kind::Namespace => &["v1"],
            Kind::Nad | Kind::Vmi | Kind::Nncp => &["v1"],
        }
    }

    fn resource_at(self, version: &str) -> ApiResource {
        let (g, _, k, plural) = self.gvk();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, version, k), plural)
    }

    fn api_version(self) -> String {
        match self.gvk() {
            ("", v, ..) => v.to_string(),
            (g, v, ..) => format!("{g}/{v}"),
        }
    }
}

/// How the API source connects and what it watches.
#[derive(Clone)]
pub struct ApiOptions {
    /// This node's name: its Node object, and the label selector of its VMIs.
    pub node: String,
    /// Watch every VMI and every Node of the cluster, not only this node's: overlay networks
    /// need the other nodes' VMIs (their MACs) and Nodes (their tunnel endpoints). Ports are
    /// still planned for this node's VMIs only (by status.nodeName).
    pub all_vmis: bool,
    /// First retry delay after an error of a watch; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A kind's retry delay starts from `min_backoff` again once it has needed no retry for
    /// this long (client-go's reflector and kube-rs's default backoff: 2 minutes).
    pub backoff_reset: Duration,
    /// Objects a list page holds (`limit`); a larger list is fetched in pages with `continue`.
    pub page_size: u32,
    /// Where to connect: `None` infers it (kubeconfig, then the in-cluster service account).
    pub config: Option<kube::Config>,
    /// Post problems as Events on the objects they concern.
    pub events: bool,
}

impl ApiOptions {
    pub fn new(node: &str) -> ApiOptions {
        ApiOptions {
            node: node.into(),
            all_vmis: false,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            backoff_reset: Duration::from_secs(120),
            page_size: 500,
            config: None,
            events: true,
        }
    }
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("node", &self.node)
            .field("all_vmis", &self.all_vmis)
            .field("cluster_url", &self.config.as_ref().map(|c| c.cluster_url.to_string()))
            .finish()
    }
}

/// Why the API source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot start the API watch thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("no Kubernetes configuration (neither a kubeconfig nor in-cluster): {0}")]
    Config(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

type Key = (Kind, Option<String>, String);

/// What the store keeps of an object besides its parsed form: its resourceVersion (a relist
/// skips what did not change) and uid (an Event's reference names it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    rv: String,
    uid: Option<String>,
}

/// One object as a watch delivered it, parsed (or found unchanged), ready to store.
struct Parsed {
    key: Key,
    version: Version,
    /// The object parsed into a one-object state, with the problems parsing found; `None`
    /// when the store has this very version already.
    one: Option<ClusterState>,
}

/// The objects the watches delivered, by kind, and what parsing them found wrong.
#[derive(Default)]
pub struct ApiStore {
    state: ClusterState,
    problems: BTreeMap<Key, Vec<Problem>>,
    /// Every object stored, by key.
    versions: HashMap<Key, Version>,
    ignored: BTreeSet<ObjRef>,
    /// Kinds listed completely at least once.
    synced: BTreeSet<Kind>,
    /// Objects of a list in progress, by kind, parsed as they came.
    listing: BTreeMap<Kind, Vec<Parsed>>,
    /// Counts changes (stored, replaced or removed objects).
    pub changes: u64,
    /// The objects changed since [`ApiStore::take_dirty`] last took them; `None` once a change
    /// is not one of objects (a kind found not served) or too many piled up.
    dirty: Option<BTreeSet<Key>>,
}

/// The most changed objects [`ApiStore::take_dirty`] names before it says "everything".
const MAX_DIRTY: usize = 256;

fn key_of(kind: Kind, o: &DynamicObject) -> Key {
    (kind, o.metadata.namespace.clone(), o.metadata.name.clone().unwrap_or_default())
}

/// The API path of VMI `ns/name` (the file its problems name).
pub(crate) fn vmi_path(ns: &str, name: &str) -> String {
    path_of(Kind::Vmi, Some(ns), name)
}

/// The API path of an object, which names it in problems (as a file does for the directory).
fn path_of(kind: Kind, ns: Option<&str>, name: &str) -> String {
    let (g, v, _, plural) = kind.gvk();
    let base = if g.is_empty() { format!("/api/{v}") } else { format!("/apis/{g}/{v}") };
    match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{base}/{plural}/{name}"),
    }
}

impl ApiStore {
    /// The objects changed since the last call, as (kind, namespace, name): `None` when that
    /// is not known (the first call, a kind found not served, a large relist), and the whole
    /// state is to be planned.
    pub fn take_dirty(&mut self) -> Option<BTreeSet<(Kind, Option<String>, String)>> {
        self.dirty.replace(BTreeSet::new())
    }

    fn mark(&mut self, k: &Key) {
        self.changes += 1;
        if let Some(d) = &mut self.dirty {
            d.insert(k.clone());
            if d.len() > MAX_DIRTY {
                self.dirty = None;
            }
        }
    }

    /// VMI `ns/name` as stored, and whether storing it found no problem.
    pub fn vmi(
        &self,
        ns: &str,
        name: &str,
    ) -> (Option<&crate::k8s::Loaded<crate::k8s::VirtualMachineInstance>>, bool) {
        let k = (Kind::Vmi, Some(ns.to_string()), name.to_string());
        (self.state.vmis.get(&(ns.to_string(), name.to_string())), !self.problems.contains_key(&k))
    }

    /// Whether every kind has been listed completely once: the first plan waits for that.
    /// MultiNetworkPolicies are enforced and Namespaces feed their selectors, so a plan made
    /// before them would run VM ports without the policies that select them (open) while
    /// their list is slow or refused (403). A kind not served (404) counts as listed.
    pub fn ready(&self) -> bool {
        self.unlisted() == 0
    }

    /// The kinds not listed completely yet, a bit each by their index in
    /// [`Kind::ALL`] (for `/readyz`, [`crate::metrics::ControlStats::set_api_unlisted`]).
    pub fn unlisted(&self) -> u32 {
        Kind::ALL.iter().enumerate().filter(|(_, k)| !self.synced.contains(k)).fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The state to plan: every object stored, with the problems found parsing them.
    pub fn snapshot(&self) -> ClusterState {
        let mut st = self.state.clone();
        st.problems = self.problems.values().flatten().cloned().collect();
        st.ignored = self.ignored.iter().cloned().collect();
        st
    }

    /// The reference of an object stored (for an Event about it), made when asked.
    pub fn reference(&self, o: &ObjRef) -> Option<ObjectReference> {
        let kind = Kind::ALL.into_iter().find(|k| k.gvk().2 == o.kind)?;
        let v = self.versions.get(&(kind, o.namespace.clone(), o.name.clone()))?;
        Some(ObjectReference {
            api_version: Some(kind.api_version()),
            kind: Some(o.kind.clone()),
            name: Some(o.name.clone()),
            namespace: o.namespace.clone(),
            uid: v.uid.clone(),
            resource_version: Some(v.rv.clone()).filter(|rv| !rv.is_empty()),
            ..Default::default()
        })
    }

    /// Takes one watcher event of `kind`.
    pub fn event(&mut self, kind: Kind, ev: Event<DynamicObject>) {
        match ev {
            Event::Init => {
                self.listing.insert(kind, Vec::new());
            }
            Event::InitApply(o) => {
                let p = self.parse(kind, o);
                self.listing.entry(kind).or_default().push(p);
            }
            Event::InitDone => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                self.replace_parsed(kind, listed);
            }
            Event::Apply(o) => self.put(kind, o),
            Event::Delete(o) => {
                let k = key_of(kind, &o);
                self.remove(&k);
            }
        }
    }

    /// A complete list of `kind`: what it lacks is gone, the rest is stored.
    pub fn replace_all(&mut self, kind: Kind, listed: Vec<DynamicObject>) {
        let parsed = listed.into_iter().map(|o| self.parse(kind, o)).collect();
        self.replace_parsed(kind, parsed);
    }

    fn replace_parsed(&mut self, kind: Kind, listed: Vec<Parsed>) {
        let keep: BTreeSet<&Key> = listed.iter().map(|p| &p.key).collect();
        let gone: Vec<Key> =
            self.versions.keys().filter(|k| k.0 == kind && !keep.contains(*k)).cloned().collect();
        drop(keep);
        for k in gone {
            self.remove(&k);
        }
        for p in listed {
            self.store(p);
        }
        self.synced.insert(kind);
    }

    /// Marks `kind` as listed when the API server does not serve it (its CRD is not installed,
    /// or was removed with its objects); with `gone`, what was stored of it is dropped too.
    /// Returns whether that changed what the store holds (a retry that finds the kind still
    /// not served changes nothing, and is no reason to plan).
    pub fn not_served(&mut self, kind: Kind, gone: bool) -> bool {
        let before = self.changes;
        if gone {
            let gone: Vec<Key> = self.versions.keys().filter(|k| k.0 == kind).cloned().collect();
            for k in gone {
                self.remove(&k);
            }
        }
        self.listing.remove(&kind);
        if self.synced.insert(kind) {
            self.changes += 1;
            self.dirty = None;
        }
        self.changes != before
    }

    fn remove(&mut self, k: &Key) {
        let (kind, ns, name) = k;
        if self.versions.remove(k).is_none() {
            return;
        }
        let pair = || (ns.clone().unwrap_or_default(), name.clone());
        match kind {
            Kind::Node => drop(self.state.nodes.remove(name)),
            Kind::Nad => drop(self.state.nads.remove(&pair())),
            Kind::Vmi => drop(self.state.vmis.remove(&pair())),
            Kind::Nncp => drop(self.state.nncps.remove(name)),
            Kind::Namespace => drop(self.state.namespaces.remove(name)),
            Kind::MultiNetworkPolicy => drop(self.state.policies.remove(&pair())),
        }
        self.ignored.remove(&ObjRef::new(kind.gvk().2, ns.as_deref(), name));
        self.problems.remove(k);
        self.mark(k);
    }

    /// Stores (or replaces) one object, parsed as the directory source parses a document.
    pub fn put(&mut self, kind: Kind, o: DynamicObject) {
        let p = self.parse(kind, o);
        self.store(p);
    }

    /// Parses one object of `kind` (unless the store has this version of it already): its
    /// JSON, with its metadata put back in, deserialized once into the kind's type by the
    /// directory source's per-kind code.
    fn parse(&self, kind: Kind, mut o: DynamicObject) -> Parsed {
        let key = key_of(kind, &o);
        let version = Version {
            rv: o.metadata.resource_version.take().unwrap_or_default(),
            uid: o.metadata.uid.take(),
        };
        if !version.rv.is_empty() && self.versions.get(&key).is_some_and(|v| v.rv == version.rv) {
            return Parsed { key, version, one: None };
        }
        let src = Source { file: Arc::from(path_of(kind, key.1.as_deref(), &key.2)), doc: 0 };
        // What the types read of metadata (`DynamicObject` holds it apart from the rest).
        let m = &mut o.metadata;
        let mut meta = serde_json::Map::new();
        let string = serde_json::Value::String;
        let labels = |l: BTreeMap<String, String>| l.into_iter().map(|(k, v)| (k, string(v))).collect();
        meta.extend(m.name.take().map(|v| ("name".to_string(), string(v))));
        meta.extend(m.namespace.take().map(|v| ("namespace".to_string(), string(v))));
        meta.extend(m.labels.take().map(|l| ("labels".to_string(), serde_json::Value::Object(labels(l)))));
        meta.extend(
            m.annotations.take().map(|l| ("annotations".to_string(), serde_json::Value::Object(labels(l)))),
        );
        // As the API serializes it (RFC 3339): which NAD of a network came first, which VMI of
        // two claiming one MAC.
        meta.extend(
            m.creation_timestamp
                .take()
                .and_then(|t| serde_json::to_value(t).ok())
                .map(|v| ("creationTimestamp".to_string(), v)),
        );
        let mut doc = std::mem::take(&mut o.data);
        if let serde_json::Value::Object(map) = &mut doc {
            map.insert("metadata".into(), serde_json::Value::Object(meta));
        }
        let mut one = ClusterState::default();
        one.add_object(src, kind.gvk().2, &kind.api_version(), key.2.clone(), key.1.clone(), doc);
        Parsed { key, version, one: Some(one) }
    }

    /// Stores a parsed object in place of what the store had under its key.
    fn store(&mut self, p: Parsed) {
        let Parsed { key: k, version, one } = p;
        let Some(one) = one else { return };
        self.remove(&k);
        // One object each: inserted (`BTreeMap::append` would rebuild the whole map).
        self.state.nodes.extend(one.nodes);
        self.state.nads.extend(one.nads);
        self.state.vmis.extend(one.vmis);
        self.state.nncps.extend(one.nncps);
        self.state.namespaces.extend(one.namespaces);
        self.state.policies.extend(one.policies);
        self.ignored.extend(one.ignored);
        if !one.problems.is_empty() {
            self.problems.insert(k.clone(), one.problems);
        }
        self.versions.insert(k.clone(), version);
        self.mark(&k);
    }
}

/// A retry delay that doubles from `min` to `max`, reset when a watch works again.
struct Expo {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Iterator for Expo {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

impl Backoff for Expo {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The delay before a kind is listed again after its watch or its list failed: one for the
/// kind, whatever version it is watched at. It doubles from [`ApiOptions::min_backoff`] to
/// [`ApiOptions::max_backoff`] and starts from `min_backoff` again once no delay was taken
/// for [`ApiOptions::backoff_reset`] (the kind worked meanwhile), as kube-rs's
/// `ResetTimerBackoff` and the intent of client-go's reflector backoff ("if we don't backoff
/// for 2min, assume API server is healthy").
struct Retry {
    delays: Expo,
    quiet: Duration,
    last: Option<tokio::time::Instant>,
}

impl Retry {
    fn new(opts: &ApiOptions) -> Retry {
        Retry {
            delays: Expo { min: opts.min_backoff, max: opts.max_backoff, next: opts.min_backoff },
            quiet: opts.backoff_reset,
            last: None,
        }
    }

    /// The next delay, counted as taken now.
    fn delay(&mut self) -> Duration {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) > self.quiet) {
            self.delays.reset();
        }
        self.last = Some(now);
        self.delays.next().unwrap_or(self.delays.max)
    }
}

/// A watch that ends sooner than this after it began, as the one before it of the same path,
/// is "very short" (client-go's reflector: "watch lasted less than a second and no items
/// received"), and the next is delayed.
const SHORT_WATCH: Duration = Duration::from_secs(1);

/// Spaces the watch requests of each resource path with a growing delay while they follow
/// one another within [`SHORT_WATCH`]: kube-runtime's watcher re-watches at once, with no
/// error for a backoff to act on, when a server (or a proxy) ends watches cleanly right away,
/// and would otherwise ask again in a loop. A delay loses nothing: the next watch starts from
/// the last resourceVersion. Lists and other requests pass undelayed.
#[derive(Clone)]
struct ShortWatchLayer {
    starts: Arc<Mutex<HashMap<String, WatchStart>>>,
    min: Duration,
    max: Duration,
}

/// When the last watch of a path began, and the delay for the next if it is short.
struct WatchStart {
    at: std::time::Instant,
    delay: Duration,
}

impl ShortWatchLayer {
    fn new(min: Duration, max: Duration) -> ShortWatchLayer {
        ShortWatchLayer { starts: Arc::default(), min, max }
    }

    /// The delay before sending `req` (zero for anything but a watch soon after another).
    fn delay<B>(&self, req: &http::Request<B>) -> Duration {
        let uri = req.uri();
        if !uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1")) {
            return Duration::ZERO;
        }
        let now = std::time::Instant::now();
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        let (d, next) = match starts.get(uri.path()) {
            Some(s) if now.saturating_duration_since(s.at) < SHORT_WATCH => {
                (s.delay, (s.delay * 2).min(self.max))
            }
            _ => (Duration::ZERO, self.min),
        };
        starts.insert(uri.path().to_string(), WatchStart { at: now + d, delay: next });
        d
    }
}

impl<S> tower_layer::Layer<S> for ShortWatchLayer {
    type Service = ShortWatch<S>;
    fn layer(&self, inner: S) -> ShortWatch<S> {
        ShortWatch { inner, starts: self.clone() }
    }
}

/// The service of [`ShortWatchLayer`].
struct ShortWatch<S> {
    inner: S,
    starts: ShortWatchLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for ShortWatch<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let d = self.starts.delay(&req);
        // The inner future sends nothing until polled: the delay comes before the request.
        let f = self.inner.call(req);
        Box::pin(async move {
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
            f.await
        })
    }
}

/// A problem to post as an Event.
#[derive(Debug, Clone)]
pub struct EventRequest {
    pub regarding: ObjectReference,
    pub reason: String,
    pub note: String,
}

/// The running API source: the store the watches fill, and the way to post Events.
pub struct ApiSource {
    store: Arc<Mutex<ApiStore>>,
    changed: Receiver<()>,
    events: Option<tokio::sync::mpsc::UnboundedSender<EventRequest>>,
    /// Problems already posted (each once while it lasts).
    posted: BTreeSet<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Locks the store (a panicked holder leaves it usable: every update is one map operation).
pub fn lock(s: &Mutex<ApiStore>) -> MutexGuard<'_, ApiStore> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl ApiSource {
    /// Starts the watches on their own thread. Fails only when no configuration can be found
    /// or no client built; an unreachable API server is retried.
    pub fn start(opts: ApiOptions) -> Result<ApiSource, ApiError> {
        let store = Arc::new(Mutex::new(ApiStore::default()));
        let (tx, changed) = std::sync::mpsc::channel();
        let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ApiError::Thread)?;
        let st = store.clone();
        let events = opts.events;
        let thread = std::thread::Builder::new()
            .name("kube-watch".into())
            .spawn(move || {
                rt.block_on(async move {
                    let config = match opts.config.clone() {
                        Some(c) => c,
                        None => match kube::Config::infer().await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = ok_tx.send(Err(ApiError::Config(e.to_string())));
                                return;
                            }
                        },
                    };
                    let spacing = ShortWatchLayer::new(opts.min_backoff, opts.max_backoff);
                    let client = match kube::client::ClientBuilder::try_from(config) {
                        Ok(b) => b.with_layer(&spacing).build(),
                        Err(e) => {
                            let _ = ok_tx.send(Err(ApiError::Client(e)));
                            return;
                        }
                    };
                    let _ = ok_tx.send(Ok(()));
                    let mut tasks = tokio::task::JoinSet::new();
                    for kind in Kind::ALL {
                        tasks.spawn(watch_kind(client.clone(), kind, opts.clone(), st.clone(), tx.clone()));
                    }
                    if events {
                        tasks.spawn(post_events(client.clone(), opts.node.clone(), ev_rx));
                    }
                    let _ = stop_rx.await;
                    tasks.abort_all();
                });
            })
            .map_err(ApiError::Thread)?;
        match ok_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ApiError::Config("the watch thread ended".into()));
            }
        }
        Ok(ApiSource {
            store,
            changed,
            events: events.then_some(ev_tx),
            posted: BTreeSet::new(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn store(&self) -> &Arc<Mutex<ApiStore>> {
        &self.store
    }

    /// Waits up to `d` for a change of the store; true if one came.
    pub fn wait(&self, d: Duration) -> bool {
        self.changed.recv_timeout(d).is_ok()
    }

    /// Takes the changes signalled so far without waiting.
    pub fn drain(&self) {
        while self.changed.try_recv().is_ok() {}
    }

    /// Posts an Event for each problem about an object that was not posted yet (a problem
    /// that goes away and comes back is posted again).
    pub fn report(&mut self, problems: &[Problem]) {
        let Some(tx) = &self.events else { return };
        let store = lock(&self.store);
        let mut now = BTreeSet::new();
        for p in problems {
            let Some(o) = &p.object else { continue };
            let id = format!("{o}|{}|{}", p.field.as_deref().unwrap_or(""), p.message);
            if !self.posted.contains(&id) {
                if let Some(r) = store.reference(o) {
                    let note = match &p.field {
                        Some(f) => format!("{f}: {}", p.message),
                        None => p.message.clone(),
                    };
                    let reason = if p.field.is_some() { "InvalidField" } else { "Invalid" };
                    let _ = tx.send(EventRequest { regarding: r, reason: reason.into(), note });
                }
            }
            now.insert(id);
        }
        self.posted = now;
    }
}

impl Drop for ApiSource {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one kind's watcher for ever, feeding the store. A kind watched at several versions
/// ([`Kind::watch_versions`]) is watched at the first the API server serves: a version it
/// answers 404 for passes the watch on to the next, and only when none is served does the
/// kind count as listed and empty (then the versions are tried again after a backoff).
async fn watch_kind(
    client: kube::Client,
    kind: Kind,
    opts: ApiOptions,
    store: Arc<Mutex<ApiStore>>,
    changed: Sender<()>,
) {
    let versions = kind.watch_versions();
    let mut retry = Retry::new(&opts);
    let mut at = 0;
    // Versions answered 404 in a row with no list in between: the kind counts as not served
    // (its objects dropped) only when every version is, not when the one it was watched at
    // goes while another is served (a CRD's versions changed).
    let mut missing = 0;
    // When every version was first found not served, since a list last succeeded. The
    // objects stored are dropped only once that has lasted `max_backoff`: a 404 that a
    // restarting or lagging API server gives for a moment would otherwise drop every
    // MultiNetworkPolicy and run the ports open until the next list (a CRD removed while the
    // agent was away stays gone, and its objects go then; one removed while watched deletes
    // its objects by watch events first).
    let mut unserved_since: Option<std::time::Instant> = None;
    loop {
        let version = versions.get(at).copied().unwrap_or(kind.gvk().1);
        match watch_version(&client, kind, version, &opts, &store, &changed, &mut retry).await {
            Watched::Ended => return,
            Watched::NotServed { listed } => {
                if listed {
                    unserved_since = None;
                }
                missing = if listed { 1 } else { missing + 1 };
                if missing < versions.len() {
                    tracing::info!("{} not served at {version}: watching another version", kind.gvk().3);
                    at = (at + 1) % versions.len();
                    continue;
                }
                let since = *unserved_since.get_or_insert_with(std::time::Instant::now);
                let gone = since.elapsed() >= opts.max_backoff;
                if lock(&store).not_served(kind, gone) {
                    let _ = changed.send(());
                }
                tracing::warn!(
                    "{} not served at {versions:?}: taken as none{}; retrying",
                    kind.gvk().3,
                    if gone { ", its objects dropped" } else { "" }
                );
                at = 0;
                missing = 0;
                tokio::time::sleep(retry.delay()).await;
            }
        }
    }
}

/// How [`watch_version`] ended.
enum Watched {
    /// The stream ended (the runtime is shutting down).
    Ended,
    /// The API server answered 404 to the list: it does not serve the kind at that version;
    /// `listed`: a list at that version had completed before.
    NotServed { listed: bool },
}

/// Whether a watcher is dropped for a new one (its list made again) after this error:
/// kube-runtime's watcher retries a watch whose start is answered HTTP 410 or 404 from the
/// same resourceVersion for ever (kube-rs issue 1042); client-go's reflector relists. Its
/// lists ask for the most recent state (`ListSemantic::MostRecent`, the default: no
/// resourceVersion, a quorum read), as client-go's relist after a 410 does.
fn relists_after(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            // 410: the resourceVersion is gone. 404: the kind stopped being served (its CRD,
            // or this version of it, removed); the list tells which (404 there: the next
            // version, or the kind taken as empty).
            s.code == 410 || s.code == 404
        }
        _ => false,
    }
}

/// How a watcher of [`watch_version`] is followed.
enum Next {
    /// By a new one after the kind's retry delay (its watch answered 410 or 404).
    Relist,
    /// At once, by one whose list is not paged: a paged list's `continue` token expired
    /// (410), as client-go's pager falls back to one full list (`FullListIfExpired`).
    FullList,
    /// At once, by a paged one: the full list is done (or failed) and this watcher would list
    /// unpaged again.
    Paged,
}

/// Watches one kind at one version until the stream ends, or its list is answered 404 while
/// the kind has other versions to try (with one version, 404 is retried as any error, the
/// kind counting as listed and empty meanwhile). A watcher whose watch is answered 410 or 404
/// is replaced by a new one ([`relists_after`]) after the kind's `retry` delay (shared by its
/// versions: a watch switching versions at every relist still backs off), so that a server
/// answering so every time is not asked in a loop. A paged list whose `continue` token
/// expires is made again at once, whole (no `limit`), once; the lists after it are paged.
async fn watch_version(
    client: &kube::Client,
    kind: Kind,
    version: &str,
    opts: &ApiOptions,
    store: &Arc<Mutex<ApiStore>>,
    changed: &Sender<()>,
    retry: &mut Retry,
) -> Watched {
    let ar = kind.resource_at(version);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut cfg = watcher::Config::default().page_size(opts.page_size);
    match kind {
        Kind::Vmi if !opts.all_vmis => cfg = cfg.labels(&format!("kubevirt.io/nodeName={}", opts.node)),
        Kind::Node if !opts.all_vmis => cfg = cfg.fields(&format!("metadata.name={}", opts.node)),
        _ => {}
    }
    let mut whole = cfg.clone();
    whole.page_size = None;
    let several = kind.watch_versions().len() > 1;
    let mut listed = false;
    // A single-version kind answered 404 since (as `watch_kind`'s: objects dropped only once
    // the 404 has lasted `max_backoff`); a complete list ends it.
    let mut unserved_since: Option<std::time::Instant> = None;
    let mut full_list = false;
    // The watcher's own errors wait this, reset by what shows it works: a list completed or a
    // watch event. Not kube-runtime's `StreamBackoff`, which resets on any event, the `Init`
    // before each list included, and so retries a list failing every time (404, 403) at
    // `min_backoff` for ever. Kept across the watchers of this function, so that switching
    // between paged and full lists (an expired token, then a full list that fails: an
    // overloaded server) does not start it again from `min_backoff` each time.
    let mut backoff = Expo { min: opts.min_backoff, max: opts.max_backoff, next: opts.min_backoff };
    loop {
        let c = if full_list { whole.clone() } else { cfg.clone() };
        let mut stream = watcher::watcher(api.clone(), c).boxed();
        let mut failing = false;
        let mut lists = 0;
        let next = loop {
            let Some(ev) = stream.next().await else { return Watched::Ended };
            match ev {
                Ok(ev) => {
                    if failing {
                        tracing::info!("watch of {} works again", kind.gvk().3);
                        failing = false;
                    }
                    // `Init` comes before its list is asked for: a full list's watcher is
                    // dropped before it lists a second time.
                    if matches!(ev, Event::Init) {
                        lists += 1;
                        if full_list && lists > 1 {
                            break Next::Paged;
                        }
                    }
                    let relevant = !matches!(ev, Event::Init | Event::InitApply(_));
                    if relevant {
                        backoff.reset();
                    }
                    if matches!(ev, Event::InitDone) {
                        listed = true;
                        unserved_since = None;
                    }
                    let mut st = lock(store);
                    let before = st.changes;
                    let was_synced = st.synced.contains(&kind);
                    st.event(kind, ev);
                    let signal =
                        relevant && (st.changes != before || st.synced.contains(&kind) != was_synced);
                    drop(st);
                    if signal {
                        let _ = changed.send(());
                    }
                }
                Err(e) => {
                    if let watcher::Error::InitialListFailed(kube::Error::Api(s)) = &e {
                        if s.code == 404 && several {
                            return Watched::NotServed { listed };
                        }
                        if s.code == 404 {
                            let since = *unserved_since.get_or_insert_with(std::time::Instant::now);
                            if lock(store).not_served(kind, since.elapsed() >= opts.max_backoff) {
                                let _ = changed.send(());
                            }
                        }
                        // A list without resourceVersion answered 410 was asked with a
                        // `continue` token (the first page cannot expire).
                        if s.code == 410 && !full_list {
                            tracing::info!("list of {}: {e}; listing it whole", kind.gvk().3);
                            break Next::FullList;
                        }
                    }
                    if relists_after(&e) {
                        tracing::info!("watch of {}: {e}; listing again", kind.gvk().3);
                        break Next::Relist;
                    }
                    if !failing {
                        tracing::warn!("watch of {}: {e}; retrying with backoff", kind.gvk().3);
                        failing = true;
                    } else {
                        tracing::debug!("watch of {}: {e}", kind.gvk().3);
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(opts.max_backoff)).await;
                }
            }
        };
        drop(stream);
        full_list = matches!(next, Next::FullList);
        if matches!(next, Next::Relist) {
            tokio::time::sleep(retry.delay()).await;
        }
    }
}

/// Posts Events (events.k8s.io/v1) as the control thread asks; a failed post is retried a few
/// times with a growing delay, then logged and dropped.
async fn post_events(
    client: kube::Client,
    node: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<EventRequest>,
) {
    let rec = Recorder::new(client, Reporter { controller: "switchyard".into(), instance: Some(node) });
    while let Some(r) = rx.recv().await {
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: r.reason.clone(),
            note: Some(truncate(&r.note, 1024)),
            action: "Plan".into(),
            secondary: None,
        };
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=4 {
            match rec.publish(&ev, &r.regarding).await {
                Ok(()) => break,
                Err(e) if attempt == 4 => {
                    tracing::warn!("cannot post an Event on {:?}: {e}", r.regarding.name);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nad(name: &str, rv: &str, vlan: u32) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "uid": format!("u-{name}")},
            "spec": {"config": format!(r#"{{"cniVersion":"0.3.1","name":"{name}","type":"bridge","bridge":"br","vlan":{vlan}}}"#)}
        }))
        .unwrap()
    }

    fn names(st: &ApiStore) -> Vec<String> {
        let mut v: Vec<String> = st.snapshot().nads.keys().map(|k| k.1.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_relist_removes_objects_only_once_it_is_complete() {
        let mut st = ApiStore::default();
        st.event(Kind::Nad, Event::Init);
        st.event(Kind::Nad, Event::InitApply(nad("a", "1", 10)));
        assert!(names(&st).is_empty(), "a list in progress is not stored");
        st.event(Kind::Nad, Event::InitApply(nad("b", "2", 20)));
        st.event(Kind::Nad, Event::InitDone);
        assert_eq!(names(&st), ["a", "b"]);
        assert!(!st.ready(), "the other required kinds are not listed yet");
        // A relist that breaks off after its first page (b not seen yet) removes nothing; the
        // complete one that follows removes b and stores c.
        st.event(Kind::Nad, Event::Init);
        st.event(Kind::Nad, Event::InitApply(nad("a", "1", 10)));
        assert_eq!(names(&st), ["a", "b"]);
        st.event(Kind::Nad, Event::Init);
        st.event(Kind::Nad, Event::InitApply(nad("a", "1", 10)));
        st.event(Kind::Nad, Event::InitApply(nad("c", "5", 30)));
        assert_eq!(names(&st), ["a", "b"]);
        st.event(Kind::Nad, Event::InitDone);
        assert_eq!(names(&st), ["a", "c"]);
        for k in [Kind::Node, Kind::Vmi, Kind::Nncp, Kind::Namespace] {
            st.replace_all(k, Vec::new());
        }
        assert!(!st.ready(), "the policies are not listed yet");
        st.replace_all(Kind::MultiNetworkPolicy, Vec::new());
        assert!(st.ready());
    }

    /// A NAD's creationTimestamp reaches the state as the API server writes it (RFC 3339),
    /// so that the overlay plan can tell which NAD of a network came first.
    #[test]
    fn the_creation_timestamp_is_kept() {
        let mut o = nad("blue", "1", 10);
        o.metadata.creation_timestamp =
            serde_json::from_value(serde_json::json!("2026-12-06T16:00:00Z")).ok();
        assert!(o.metadata.creation_timestamp.is_some());
        let mut st = ApiStore::default();
        st.put(Kind::Nad, o);
        let s = st.snapshot();
        let n = &s.nads[&("ns".to_string(), "blue".to_string())].obj;
        assert_eq!(n.metadata.creation_timestamp.as_deref(), Some("2026-12-06T16:00:00Z"));
    }

    /// `ingress: null` is no ingress rule (Kubernetes' reading, and the directory source's):
    /// the policy is stored and isolates its port, where it used to fail to parse and leave
    /// the port open; an unknown field set to null is left out, from a manifest as from the API.
    #[test]
    fn a_null_field_reads_as_left_out() {
        let mut st = ApiStore::default();
        let mnp: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny-in", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"podSelector": {"matchLabels": null}, "policyTypes": ["Ingress"], "ingress": null}
        }))
        .unwrap();
        st.put(Kind::MultiNetworkPolicy, mnp);
        let s = st.snapshot();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let p = &s.policies[&("ns".to_string(), "deny-in".to_string())].obj;
        assert!(p.spec.ingress.is_empty());
        let mut dir = ClusterState::default();
        dir.add_yaml(
            "p.yaml",
            "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata: {name: deny-in, namespace: ns}\n\
             spec: {podSelector: {matchLabels: null}, policyTypes: [Ingress], ingress: null}\n",
        );
        assert!(dir.problems.is_empty() && dir.policies.len() == 1, "{:?}", dir.problems);
        // An unknown field set to null is left out both ways too.
        let mut dir = ClusterState::default();
        dir.add_yaml(
            "p.yaml",
            "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata: {name: p, namespace: ns}\n\
             spec: {podSelector: {}, ingress: [], apiVersion: null}\n",
        );
        assert!(dir.problems.is_empty() && dir.policies.len() == 1, "{:?}", dir.problems);
        // A null label value is no label left out (that would widen the selector to every
        // pod): a problem both ways, as before nulls were dropped.
        let mnp: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": null}}}]}]}
        }))
        .unwrap();
        let mut st = ApiStore::default();
        st.put(Kind::MultiNetworkPolicy, mnp);
        let s = st.snapshot();
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        let mut dir = ClusterState::default();
        dir.add_yaml(
            "p.yaml",
            "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata: {name: p, namespace: ns}\n\
             spec: {podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {role: null}}}]}]}\n",
        );
        assert_eq!(dir.problems.len(), 1, "{:?}", dir.problems);
    }

    /// Watch events as the protocol allows them: a DELETED event for an object never seen (it
    /// was created and deleted between a list and the watch) changes nothing; a MODIFIED
    /// event replaces the object whatever its resourceVersion (they are opaque: equality
    /// only); the kind's objects go when the kind is found not served (its CRD removed).
    #[test]
    fn deletes_of_unseen_objects_and_opaque_resource_versions() {
        let mut st = ApiStore::default();
        st.event(Kind::Nad, Event::Apply(nad("a", "10", 10)));
        let _ = st.take_dirty();
        let before = st.changes;
        st.event(Kind::Nad, Event::Delete(nad("never", "11", 10)));
        assert_eq!(st.changes, before);
        assert_eq!(st.take_dirty(), Some(BTreeSet::new()));
        st.event(Kind::Nad, Event::Apply(nad("a", "9", 20)));
        let cfg = st.snapshot().nads[&("ns".to_string(), "a".to_string())].obj.spec.config.clone().unwrap();
        assert!(cfg.contains("\"vlan\":20"), "{cfg}");
        assert!(st.not_served(Kind::Nad, false), "the kind counts as listed now");
        assert_eq!(st.snapshot().nads.len(), 1, "a 404 alone keeps the objects");
        assert!(!st.not_served(Kind::Nad, false), "a retry still 404 changes nothing");
        assert!(st.not_served(Kind::Nad, true));
        assert!(!st.not_served(Kind::Nad, true));
        assert!(
            st.snapshot().nads.is_empty()
                && st.reference(&ObjRef::new("NetworkAttachmentDefinition", Some("ns"), "a")).is_none()
        );
    }

    #[test]
    fn a_bad_object_is_a_problem_naming_its_path_and_field_until_it_is_fixed() {
        let mut st = ApiStore::default();
        st.event(Kind::Nad, Event::Apply(nad("a", "1", 5000)));
        let s = st.snapshot();
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        let p = &s.problems[0];
        assert_eq!(p.file, "/apis/k8s.cni.cncf.io/v1/namespaces/ns/network-attachment-definitions/a");
        assert_eq!(p.field.as_deref(), Some("spec.config.vlan"));
        let r = st.reference(p.object.as_ref().unwrap()).unwrap();
        assert_eq!(r.uid.as_deref(), Some("u-a"));
        assert_eq!(r.api_version.as_deref(), Some("k8s.cni.cncf.io/v1"));
        st.event(Kind::Nad, Event::Apply(nad("a", "2", 50)));
        assert!(st.snapshot().problems.is_empty());
        st.event(Kind::Nad, Event::Delete(nad("a", "3", 50)));
        assert!(st.snapshot().nads.is_empty() && st.reference(p.object.as_ref().unwrap()).is_none());
    }
}
