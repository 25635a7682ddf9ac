//! The Kubernetes objects switchyard reads, as plain serde structs (only the fields it uses;
//! every other field is ignored), and [`ClusterState`]: a directory of manifests loaded and
//! indexed.
//!
//! Loading never fails as a whole: a file that cannot be read, a document that does not parse,
//! an object whose fields have the wrong types, each becomes a [`Problem`] and the rest is kept.

use crate::nad::{self, NadNetwork};
use crate::{ObjRef, Problem};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, as the API server writes it (`2026-12-06T16:00:00Z`: whole seconds, UTC), so
    /// that the strings sort as the times do. Absent in files that leave it out.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

// ---- Namespace (v1) ----

#[derive(Debug, Clone, Deserialize)]
pub struct Namespace {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

// ---- Node (v1) ----

#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    /// The node's addresses as the kubelet reports them (`InternalIP`, `ExternalIP`,
    /// `Hostname`, ...).
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeAddress {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub address: String,
}

// ---- NetworkAttachmentDefinition (k8s.cni.cncf.io/v1) ----

#[derive(Debug, Clone, Deserialize)]
pub struct NetworkAttachmentDefinition {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NadSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NadSpec {
    #[serde(default)]
    pub config: Option<String>,
}

// ---- VirtualMachineInstance (kubevirt.io/v1) ----

#[derive(Debug, Clone, Deserialize)]
pub struct VirtualMachineInstance {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VmiSpec,
    #[serde(default)]
    pub status: VmiStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct VmiSpec {
    #[serde(default)]
    pub domain: Domain,
    #[serde(default)]
    pub networks: Vec<Network>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Domain {
    #[serde(default)]
    pub devices: Devices,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Devices {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
}

/// A field whose presence alone matters (a binding's settings, which switchyard does not
/// read): any value but `null` is present. Holds nothing, so a stored VMI keeps no copy of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present;

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Present, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present)
    }
}

/// A VMI interface. The binding is whichever of the binding fields is set (KubeVirt allows
/// one); with none set KubeVirt defaults to `bridge`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub bridge: Option<Present>,
    #[serde(default)]
    pub masquerade: Option<Present>,
    #[serde(default)]
    pub sriov: Option<Present>,
    #[serde(default)]
    pub slirp: Option<Present>,
    #[serde(default)]
    pub passt: Option<Present>,
    #[serde(default)]
    pub macvtap: Option<Present>,
    #[serde(default)]
    pub binding: Option<PluginBinding>,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PluginBinding {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Network {
    pub name: String,
    #[serde(default)]
    pub pod: Option<Present>,
    #[serde(default)]
    pub multus: Option<MultusNetwork>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultusNetwork {
    pub network_name: String,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiStatus {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<VmiStatusInterface>,
    /// A live migration's state (KubeVirt's `status.migrationState`).
    #[serde(default)]
    pub migration_state: Option<MigrationState>,
    /// `status.activePods`: the UIDs of the VMI's virt-launcher pods, each with its node.
    #[serde(default)]
    pub active_pods: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    #[serde(default)]
    pub target_node: Option<String>,
    #[serde(default)]
    pub completed: bool,
    #[serde(default)]
    pub failed: bool,
}

impl VmiStatus {
    /// The node a migration in progress (neither completed nor failed) moves the VMI to.
    pub fn migration_target(&self) -> Option<&str> {
        let m = self.migration_state.as_ref().filter(|m| !m.completed && !m.failed)?;
        m.target_node.as_deref().filter(|t| !t.is_empty() && Some(*t) != self.node_name.as_deref())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiStatusInterface {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// The interface's first address, as the guest agent reports it.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// Every address of the interface.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// The interface's name in the virt-launcher pod (newer KubeVirt reports it).
    #[serde(default)]
    pub pod_interface_name: Option<String>,
}

// ---- NodeNetworkConfigurationPolicy (nmstate.io/v1) ----

#[derive(Debug, Clone, Deserialize)]
pub struct NodeNetworkConfigurationPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NncpSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NncpSpec {
    /// Absent or empty: every node.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub desired_state: DesiredState,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DesiredState {
    #[serde(default)]
    pub interfaces: Vec<NmInterface>,
    #[serde(default)]
    pub ovn: Option<NmOvn>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NmInterface {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub bridge: Option<NmBridge>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NmBridge {
    #[serde(default)]
    pub port: Vec<NmPort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NmPort {
    pub name: String,
    #[serde(default)]
    pub vlan: Option<NmVlan>,
    /// OVS bonds (`link-aggregation`) are not uplinks switchyard can open.
    #[serde(default)]
    pub link_aggregation: Option<Present>,
}

/// nmstate takes its VLAN numbers and `enable-native` as YAML numbers or booleans, or as
/// strings of them (`tag: "100"`, `enable-native: "true"`: its `u16_or_string` and
/// `bool_or_string` readers); so does this. A string that is neither is a type error.
mod nm_lenient {
    use serde::{de::Error, Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(i64),
        S(String),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        B(bool),
        S(String),
    }

    fn num<E: Error>(n: Num) -> Result<i64, E> {
        match n {
            Num::N(v) => Ok(v),
            Num::S(s) => s.trim().parse().map_err(|_| E::custom(format!("{s:?} is not a number"))),
        }
    }

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        num(Num::deserialize(d)?)
    }

    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<Num>::deserialize(d)?.map(num).transpose()
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match Option::<Flag>::deserialize(d)? {
            None => Ok(None),
            Some(Flag::B(b)) => Ok(Some(b)),
            Some(Flag::S(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(D::Error::custom(format!("{s:?} is not true or false"))),
            },
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NmVlan {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "nm_lenient::opt_int")]
    pub tag: Option<i64>,
    #[serde(default, deserialize_with = "nm_lenient::opt_bool")]
    pub enable_native: Option<bool>,
    #[serde(default)]
    pub trunk_tags: Vec<NmTrunkTag>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NmTrunkTag {
    #[serde(default, deserialize_with = "nm_lenient::opt_int")]
    pub id: Option<i64>,
    #[serde(default)]
    pub id_range: Option<NmIdRange>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NmIdRange {
    #[serde(deserialize_with = "nm_lenient::int")]
    pub min: i64,
    #[serde(deserialize_with = "nm_lenient::int")]
    pub max: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NmOvn {
    #[serde(default)]
    pub bridge_mappings: Vec<NmBridgeMapping>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NmBridgeMapping {
    pub localnet: String,
    #[serde(default)]
    pub bridge: String,
    #[serde(default)]
    pub state: Option<String>,
}

// ---- the loaded state ----

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: Arc<str>,
    /// 0-based index of the YAML document in the file.
    pub doc: usize,
}

/// An object and where it came from. The object is shared: a state is cloned (last good
/// versions, the API source's snapshots) without copying its objects.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub src: Source,
    pub obj: Arc<T>,
}

/// A NAD with its CNI config already parsed (`Err`: the reason it is unusable, also reported
/// as a problem when the state was loaded).
#[derive(Debug, Clone)]
pub struct LoadedNad {
    pub src: Source,
    pub obj: Arc<NetworkAttachmentDefinition>,
    pub net: Result<NadNetwork, InvalidNad>,
}

/// Why a NAD is unusable (also reported as a problem when the state was loaded).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{nad} is invalid: {error}")]
pub struct InvalidNad {
    pub nad: ObjRef,
    pub error: nad::FieldError,
}

/// Every object of the kinds switchyard reads, from one directory, indexed for the plan.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Loaded<Node>>,
    /// NADs by (namespace, name).
    pub nads: HashMap<(String, String), LoadedNad>,
    /// NNCPs by name (cluster-scoped), so iteration is in name order.
    pub nncps: BTreeMap<String, Loaded<NodeNetworkConfigurationPolicy>>,
    /// VMIs by (namespace, name), in order.
    pub vmis: BTreeMap<(String, String), Loaded<VirtualMachineInstance>>,
    /// MultiNetworkPolicies by (namespace, name), in order.
    pub policies: BTreeMap<(String, String), Loaded<crate::policy::MultiNetworkPolicy>>,
    /// Namespaces by name (for namespaceSelector).
    pub namespaces: BTreeMap<String, Loaded<Namespace>>,
    /// Objects of other kinds (VirtualMachine, Pod, ...): (kind, namespace/name), not used.
    pub ignored: Vec<ObjRef>,
    /// Everything wrong found while loading.
    pub problems: Vec<Problem>,
}

/// The files of a state directory as last loaded: a hash and the length of each one's text.
#[derive(Debug, Clone, Default)]
pub struct DirTexts(HashMap<String, (u64, usize)>);

/// An object with where it came from.
trait Sourced: Clone {
    fn src(&self) -> &Source;
}

impl<T: Clone> Sourced for Loaded<T> {
    fn src(&self) -> &Source {
        &self.src
    }
}

impl Sourced for LoadedNad {
    fn src(&self) -> &Source {
        &self.src
    }
}

/// Takes the earlier version (`old`) of every object that comes from the same document of a
/// file whose text is the `same` as then: parsed from the same text, it is the same object.
fn reuse<'a, K: 'a, V: Sourced + 'a>(
    new: impl Iterator<Item = (&'a K, &'a mut V)>,
    old: impl Fn(&K) -> Option<&'a V>,
    same: &dyn Fn(&str) -> bool,
) {
    for (k, v) in new {
        if !same(&v.src().file) {
            continue;
        }
        if let Some(o) = old(k).filter(|o| o.src().file == v.src().file && o.src().doc == v.src().doc) {
            *v = o.clone();
        }
    }
}

fn is_hidden(e: &walkdir::DirEntry) -> bool {
    e.depth() > 0 && e.file_name().to_str().is_some_and(|s| s.starts_with('.'))
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((g, _)) => g,
        None => "",
    }
}

impl ClusterState {
    /// Loads every `*.yaml` / `*.yml` file under `dir`, recursively, in path order. Files and
    /// directories whose names start with `.` are skipped (a mounted ConfigMap keeps a second
    /// copy of every file under `..data`); symbolic links are followed. A directory that cannot
    /// be listed is an error (nothing is planned from a partial view); a file that cannot be
    /// read or parsed is a problem in the result, and its objects keep their last good version.
    pub fn load_dir(dir: &Path) -> Result<ClusterState, std::io::Error> {
        ClusterState::load_dir_texts(dir, &mut |_, _| {})
    }

    /// [`ClusterState::load_dir`], taking from `prev` (what the last load gave, and the texts
    /// of its files) every object of a file whose text did not change: the same `Arc`, so that
    /// what is memoised per object ([`crate::plan::PlanMemo`]) is found again. `prev` becomes
    /// this load's.
    pub fn load_dir_reusing(
        dir: &Path,
        prev: &mut Option<(ClusterState, DirTexts)>,
    ) -> Result<ClusterState, std::io::Error> {
        let mut texts = DirTexts::default();
        let mut st = ClusterState::load_dir_texts(dir, &mut |file, text| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(text, &mut h);
            texts.0.insert(file.to_string(), (std::hash::Hasher::finish(&h), text.len()));
        })?;
        if let Some((old, old_texts)) = prev.as_ref() {
            let same = |f: &str| old_texts.0.get(f).is_some_and(|t| texts.0.get(f) == Some(t));
            reuse(st.nodes.iter_mut(), |k| old.nodes.get(k), &same);
            reuse(st.nads.iter_mut(), |k| old.nads.get(k), &same);
            reuse(st.nncps.iter_mut(), |k| old.nncps.get(k), &same);
            reuse(st.vmis.iter_mut(), |k| old.vmis.get(k), &same);
            reuse(st.policies.iter_mut(), |k| old.policies.get(k), &same);
            reuse(st.namespaces.iter_mut(), |k| old.namespaces.get(k), &same);
        }
        *prev = Some((st.clone(), texts));
        Ok(st)
    }

    /// The walk of [`ClusterState::load_dir`], giving `text` each file's path and text.
    fn load_dir_texts(dir: &Path, text: &mut dyn FnMut(&str, &str)) -> Result<ClusterState, std::io::Error> {
        let meta = std::fs::metadata(dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let mut st = ClusterState::default();
        let walk = walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name().into_iter();
        for entry in walk.filter_entry(|e| !is_hidden(e)) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // A directory we cannot list (or no file descriptors left) hides objects
                    // we cannot name: planning without them would remove their ports. Fail
                    // the whole load so that the running configuration stays.
                    let file = e
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| dir.display().to_string());
                    return Err(std::io::Error::other(format!("{file}: cannot read: {e}")));
                }
            };
            if !entry.file_type().is_file() || !is_yaml(entry.path()) {
                continue;
            }
            let file = entry.path().display().to_string();
            match std::fs::read_to_string(entry.path()) {
                Ok(t) => {
                    text(&file, &t);
                    st.add_yaml(&file, &t);
                }
                Err(e) => st.problems.push(Problem::file(&file, format!("cannot read: {e}"))),
            }
        }
        Ok(st)
    }

    /// Adds the objects of one (multi-document) YAML text, naming `file` in problems.
    pub fn add_yaml(&mut self, file: &str, text: &str) {
        let file: Arc<str> = Arc::from(file);
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let src = Source { file: file.clone(), doc: i };
            match serde_yaml_ng::Value::deserialize(doc) {
                Ok(v) => self.add_value(src, v),
                Err(e) => {
                    // A syntax error ends the stream: the documents before it are kept.
                    self.problems
                        .push(Problem::file(&file, format!("document {}: YAML does not parse: {e}", i + 1)));
                    break;
                }
            }
        }
    }

    /// Adds one object (or a `List` of them) given as a parsed value, naming `src` in problems.
    pub fn add_value(&mut self, src: Source, v: serde_yaml_ng::Value) {
        let mut map = match v {
            serde_yaml_ng::Value::Null => return, // an empty document
            serde_yaml_ng::Value::Mapping(m) => m,
            _ => {
                self.problems.push(Problem::file(
                    &src.file,
                    format!("document {}: not a Kubernetes object (not a mapping)", src.doc + 1),
                ));
                return;
            }
        };
        let kind = map.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
        let api = map.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("").to_string();
        if kind.is_empty() {
            self.problems.push(Problem::file(
                &src.file,
                format!("document {}: not a Kubernetes object (no kind)", src.doc + 1),
            ));
            return;
        }
        let meta = map.get("metadata").and_then(|m| m.as_mapping());
        let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("").to_string();
        let ns = meta.and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).map(str::to_string);
        if kind.ends_with("List") {
            if let Some(serde_yaml_ng::Value::Sequence(items)) = map.remove("items") {
                for it in items {
                    self.add_value(src.clone(), it);
                }
            }
            return;
        }
        self.add_object(src, &kind, &api, name, ns, serde_yaml_ng::Value::Mapping(map));
    }

    /// Adds one object of `kind` (`api` its apiVersion) named `ns/name`, whose document `v`
    /// (a manifest's, or the API's JSON) is deserialized once, straight into the kind's type.
    pub(crate) fn add_object(
        &mut self,
        src: Source,
        kind: &str,
        api: &str,
        name: String,
        ns: Option<String>,
        v: impl Doc,
    ) {
        match (kind, group_of(api)) {
            ("Node", "") => {
                if let Some(n) = self.typed::<Node>(&src, kind, None, &name, v) {
                    self.insert_unique_node(src, n);
                }
            }
            ("NetworkAttachmentDefinition", "k8s.cni.cncf.io") => {
                let ns = ns.unwrap_or_else(|| "default".into());
                if let Some(mut n) =
                    self.typed::<NetworkAttachmentDefinition>(&src, kind, Some(&ns), &name, v)
                {
                    n.metadata.namespace = Some(ns.clone());
                    let oref = ObjRef::new(kind, Some(&ns), &name);
                    let net = match &n.spec.config {
                        None => Err(nad::FieldError { field: "spec.config".into(), msg: "missing".into() }),
                        Some(c) => nad::parse(c, &ns, &name),
                    };
                    let net = net.map_err(|error| {
                        self.problems.push(Problem::object(&src, &oref, &error.field, &error.msg));
                        InvalidNad { nad: oref.clone(), error }
                    });
                    let key = (ns, name);
                    if let Some(prev) = self.nads.get(&key) {
                        self.problems.push(Problem::duplicate(&src, &oref, &prev.src));
                    } else {
                        self.nads.insert(key, LoadedNad { src, obj: Arc::new(n), net });
                    }
                }
            }
            ("VirtualMachineInstance", "kubevirt.io") => {
                let ns = ns.unwrap_or_else(|| "default".into());
                if let Some(mut o) = self.typed::<VirtualMachineInstance>(&src, kind, Some(&ns), &name, v) {
                    o.metadata.namespace = Some(ns.clone());
                    let key = (ns.clone(), name.clone());
                    if let Some(prev) = self.vmis.get(&key) {
                        self.problems.push(Problem::duplicate(
                            &src,
                            &ObjRef::new(kind, Some(&ns), &name),
                            &prev.src,
                        ));
                    } else {
                        self.vmis.insert(key, Loaded { src, obj: Arc::new(o) });
                    }
                }
            }
            ("MultiNetworkPolicy", "k8s.cni.cncf.io") => {
                let ns = ns.unwrap_or_else(|| "default".into());
                if let Some(mut o) =
                    self.typed::<crate::policy::MultiNetworkPolicy>(&src, kind, Some(&ns), &name, v)
                {
                    o.metadata.namespace = Some(ns.clone());
                    let key = (ns.clone(), name.clone());
                    if let Some(prev) = self.policies.get(&key) {
                        self.problems.push(Problem::duplicate(
                            &src,
                            &ObjRef::new(kind, Some(&ns), &name),
                            &prev.src,
                        ));
                    } else {
                        self.policies.insert(key, Loaded { src, obj: Arc::new(o) });
                    }
                }
            }
            ("Namespace", "") => {
                if let Some(o) = self.typed::<Namespace>(&src, kind, None, &name, v) {
                    if let Some(prev) = self.namespaces.get(&name) {
                        self.problems.push(Problem::duplicate(
                            &src,
                            &ObjRef::new(kind, None, &name),
                            &prev.src,
                        ));
                    } else {
                        self.namespaces.insert(name, Loaded { src, obj: Arc::new(o) });
                    }
                }
            }
            ("NodeNetworkConfigurationPolicy", "nmstate.io") => {
                if let Some(o) = self.typed::<NodeNetworkConfigurationPolicy>(&src, kind, None, &name, v) {
                    if let Some(prev) = self.nncps.get(&name) {
                        self.problems.push(Problem::duplicate(
                            &src,
                            &ObjRef::new(kind, None, &name),
                            &prev.src,
                        ));
                    } else {
                        self.nncps.insert(name, Loaded { src, obj: Arc::new(o) });
                    }
                }
            }
            _ => self.ignored.push(ObjRef::new(kind, ns.as_deref(), &name)),
        }
    }

    fn insert_unique_node(&mut self, src: Source, n: Node) {
        let name = n.metadata.name.clone();
        if let Some(prev) = self.nodes.get(&name) {
            self.problems.push(Problem::duplicate(&src, &ObjRef::new("Node", None, &name), &prev.src));
        } else {
            self.nodes.insert(name, Loaded { src, obj: Arc::new(n) });
        }
    }

    /// Deserializes an object, turning a type error into a problem that names the field.
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        src: &Source,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        v: impl Doc,
    ) -> Option<T> {
        if name.is_empty() {
            let oref = ObjRef::new(kind, ns, name);
            self.problems.push(Problem::object(src, &oref, "metadata.name", "missing"));
            return None;
        }
        match v.typed::<T>() {
            Ok(t) => Some(t),
            Err((field, msg)) => {
                let oref = ObjRef::new(kind, ns, name);
                self.problems.push(Problem::object(src, &oref, &field, &msg));
                None
            }
        }
    }
}

/// An object's document as a value of some format: deserialized into a kind's type, a type
/// error named by its field path (`spec.domain.devices.interfaces[1].macAddress`).
pub(crate) trait Doc {
    fn typed<T: serde::de::DeserializeOwned>(self) -> Result<T, (String, String)>;
}

/// In both formats a field whose value is `null` reads as one left out (Kubernetes' reading):
/// a MultiNetworkPolicy with `ingress: null` (its CRD keeps unknown and null fields) isolates
/// its ports with no rule allowed, from the API as from a manifest (serde_json alone refuses a
/// null list, so the policy failed to parse and isolated nothing), and an unknown field set to
/// null is no unknown field in either.
impl Doc for serde_yaml_ng::Value {
    fn typed<T: serde::de::DeserializeOwned>(mut self) -> Result<T, (String, String)> {
        drop_yaml_nulls(&mut self);
        serde_path_to_error::deserialize(self).map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
    }
}

/// The fields that are maps of strings (labels, annotations, a selector's labels): a `null`
/// value in them is no field left out but a wrong value (Go reads it as `""`, which would
/// make `matchLabels: {role: null}` match pods labelled `role: ""`, where dropping it would
/// widen the selector to every pod), so it stays, to be reported.
const STRING_MAPS: [&str; 3] = ["labels", "annotations", "matchLabels"];

/// Removes every mapping entry whose value is `null`, at any depth (in place, no copies),
/// except inside [`STRING_MAPS`].
fn drop_yaml_nulls(v: &mut serde_yaml_ng::Value) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            m.retain(|_, x| !x.is_null());
            for (k, x) in m.iter_mut() {
                if !k.as_str().is_some_and(|k| STRING_MAPS.contains(&k)) {
                    drop_yaml_nulls(x);
                }
            }
        }
        serde_yaml_ng::Value::Sequence(a) => a.iter_mut().for_each(drop_yaml_nulls),
        serde_yaml_ng::Value::Tagged(t) => drop_yaml_nulls(&mut t.value),
        _ => {}
    }
}

/// The API source's objects read exactly as a manifest's: moved into the manifest's value
/// (strings and containers moved, not copied) and read from there. Read from serde_json's
/// own value, an array where an object belongs would give a struct's fields in order
/// (`bridge: [[{name: eth1}]]` an NNCP bridge with a port, where the manifest's reader and the
/// Go decoders of the API server and nmstate refuse it), so the same object would plan
/// differently from the two sources.
impl Doc for serde_json::Value {
    fn typed<T: serde::de::DeserializeOwned>(self) -> Result<T, (String, String)> {
        yaml_of(self).typed()
    }
}

/// `v` as the manifest reader's value, moved.
fn yaml_of(v: serde_json::Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::{Number, Value as Y};
    match v {
        serde_json::Value::Null => Y::Null,
        serde_json::Value::Bool(b) => Y::Bool(b),
        serde_json::Value::Number(n) => Y::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::from(u),
            (None, Some(i)) => Number::from(i),
            // serde_json's numbers are integers or finite floats.
            (None, None) => Number::from(n.as_f64().unwrap_or(f64::NAN)),
        }),
        serde_json::Value::String(s) => Y::String(s),
        serde_json::Value::Array(a) => Y::Sequence(a.into_iter().map(yaml_of).collect()),
        serde_json::Value::Object(m) => {
            Y::Mapping(m.into_iter().map(|(k, v)| (Y::String(k), yaml_of(v))).collect())
        }
    }
}
