//! Ports that the CNI plugin (`switchyard-cni`) attaches to the running switch, and the
//! versioned JSON requests it sends over the control socket (docs/cni.md).
//!
//! A CNI port lives beside the ports planned from the switch's source (manifests or a switch
//! file): [`CniPorts::merge_into`] adds each to its bridge in every configuration the runtime
//! applies, so a reload of the source keeps them. The identity of an attachment is
//! `(container_id, ifname)`; its port name is unique among all ports of the node, and neither
//! is ever silently replaced: a collision is an error ([`CniError::Exists`]).
//!
//! Every CNI port is persisted in the CNI state directory, one file per attachment
//! (`<key>.json`, [`attachment_key`]), written to a temporary file (`.<key>.json.tmp`), flushed
//! to the disk, renamed into place and the directory flushed, before the ADD is answered: a
//! restarted daemon, even after a power loss, restores exactly the ports it had. A temporary
//! file found at start is a write cut short, removed. A DEL that found the daemon down
//! leaves a tombstone (`<key>.del`, the attachment as JSON) that the daemon applies when it
//! starts, before restoring.

use crate::cni_subject::CniSubject;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use switchyard_dataplane::config::{Config, PortConfig, PortType};

/// The protocol version this daemon speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The default CNI state directory.
pub const DEFAULT_CNI_STATE: &str = "/var/lib/switchyard/cni";

/// Longest Unix socket path (`sun_path` is 108 bytes, NUL included).
pub const SUN_PATH_MAX: usize = 107;

/// One CNI attachment: a container's interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// `K8S_POD_UID` of the ADD, when the runtime passes it: matched against the VMIs'
    /// `status.activePods` ([`crate::cni_subject`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

impl Attachment {
    /// Whether `other` is the same attachment (container and interface).
    pub fn same(&self, other: &Attachment) -> bool {
        self.container_id == other.container_id && self.ifname == other.ifname
    }

    pub fn key(&self) -> String {
        attachment_key(&self.container_id, &self.ifname)
    }
}

/// The file-name key of an attachment: FNV-1a 64 of `container_id/ifname`, 16 hex digits.
pub fn attachment_key(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain(std::iter::once(b'/')).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A port the CNI plugin attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniPort {
    pub bridge: String,
    pub attachment: Attachment,
    pub port: PortConfig,
    /// The interface's MAC (what CHECK compares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// vhostuser: the socket's owner and group (QEMU's uid/gid, 107 in virt-launcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// The CNI network (the plugin config's `name`) the port belongs to: the plugin's GC, which
    /// a runtime runs per network, removes only ports of its own network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// vhostuser: the device the kubelet allocated to the VM's pod from switchyard's device
    /// plugin (Multus passes it as `deviceID`); the socket then goes in that device's directory,
    /// which the pod already has mounted ([`device_dir`]), instead of one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Why a CNI request failed; `code()` is the protocol's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniError {
    #[error("{0}")]
    Exists(String),
    #[error("bridge {0:?} is not in the running switch")]
    NoBridge(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    BadRequest(String),
}

impl CniError {
    pub fn code(&self) -> &'static str {
        match self {
            CniError::Exists(_) => "exists",
            CniError::NoBridge(_) => "no_bridge",
            CniError::Invalid(_) => "invalid",
            CniError::Internal(_) => "internal",
            CniError::BadRequest(_) => "bad_request",
        }
    }
}

/// A request on the control socket (a line that starts with `{`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {
        v: u32,
    },
    CniAdd {
        v: u32,
        cni: Box<CniPort>,
    },
    CniDel {
        v: u32,
        attachment: Attachment,
    },
    /// `attachment`: only that attachment's port (none or one), so that a caller asking
    /// about one attachment does not get, and parse, every port of the node.
    CniList {
        v: u32,
        #[serde(default)]
        attachment: Option<Attachment>,
    },
    /// `network`: only that CNI network's ports are candidates (as a runtime's GC, which runs
    /// per network); without it every CNI port is.
    CniGc {
        v: u32,
        valid: Vec<Attachment>,
        #[serde(default)]
        network: Option<String>,
    },
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, CniError> {
        let r: Request = serde_json::from_str(line).map_err(|e| CniError::BadRequest(e.to_string()))?;
        let v = match &r {
            Request::Status { v }
            | Request::CniAdd { v, .. }
            | Request::CniDel { v, .. }
            | Request::CniList { v, .. }
            | Request::CniGc { v, .. } => *v,
        };
        if v != PROTOCOL_VERSION {
            return Err(CniError::BadRequest(format!(
                "protocol version {v} not spoken here (this daemon speaks {PROTOCOL_VERSION})"
            )));
        }
        Ok(r)
    }
}

/// The error answer line.
pub fn error_answer(e: &CniError) -> String {
    serde_json::json!({"ok": false, "code": e.code(), "error": e.to_string()}).to_string()
}

/// The persisted CNI ports, in a directory (or nowhere, for tests without one).
#[derive(Debug, Default)]
pub struct CniPorts {
    /// By port name.
    ports: BTreeMap<String, CniPort>,
    dir: Option<PathBuf>,
    /// The ports that tombstones removed when the directory was opened, until the runtime
    /// takes them ([`CniPorts::take_deleted`]) to remove what they left outside it (a
    /// vhost-user port's socket directory).
    deleted: Vec<CniPort>,
    /// By port name: the policy and allowed addresses each port got when it last matched a
    /// subject. A port that matches none later (its NAD deleted or edited, its VMI gone while
    /// the pod lives) keeps them rather than run open: a change of the cluster objects never
    /// lifts a running VM's filter before its port is deleted. In memory only.
    last: BTreeMap<String, Decoration>,
}

/// What [`crate::cni_subject::decorate`] set on a port.
type Decoration = (Option<switchyard_dataplane::policy::PortPolicy>, Option<Vec<std::net::IpAddr>>);

fn io_err(what: &Path, e: std::io::Error) -> CniError {
    CniError::Internal(format!("{}: {e}", what.display()))
}

impl CniPorts {
    /// Ports kept in memory only.
    pub fn in_memory() -> CniPorts {
        CniPorts::default()
    }

    /// Opens (creating it, mode 0700) the state directory: applies and removes the tombstones,
    /// then loads every port file. A file that does not parse is renamed `<file>.bad` and
    /// reported, never silently dropped.
    pub fn open(dir: &Path) -> Result<(CniPorts, Vec<String>), CniError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io_err(dir, e))?;
        let mut report = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        // A temporary file is what an insert cut short left (the daemon died between writing
        // and renaming it): its port was never answered as added, so it is dropped.
        files.retain(|f| {
            let stale = f
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".json.tmp"));
            if stale {
                match std::fs::remove_file(f) {
                    Ok(()) => report.push(format!("{}: a write cut short; removed", f.display())),
                    Err(e) => report.push(format!("{}: a write cut short; cannot remove: {e}", f.display())),
                }
            }
            !stale
        });
        let tombstones = take_tombstones(&files, &mut report);
        let mut ports = BTreeMap::new();
        let mut deleted = Vec::new();
        for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "json")) {
            let parsed = std::fs::read_to_string(f)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<CniPort>(&t).map_err(|e| e.to_string()));
            match parsed {
                Ok(p) if tombstones.iter().any(|t| t.same(&p.attachment)) => {
                    report.push(format!("port {} removed: deleted while the daemon was down", p.port.name));
                    let _ = std::fs::remove_file(f);
                    deleted.push(p);
                }
                Ok(p) => {
                    ports.insert(p.port.name.clone(), p);
                }
                Err(e) => {
                    report.push(format!("{}: {e}; kept aside as .bad", f.display()));
                    let _ = std::fs::rename(f, f.with_extension("json.bad"));
                }
            }
        }
        Ok((CniPorts { ports, dir: Some(dir.to_path_buf()), deleted, last: BTreeMap::new() }, report))
    }

    /// The ports that tombstones removed at [`CniPorts::open`] (once).
    pub fn take_deleted(&mut self) -> Vec<CniPort> {
        std::mem::take(&mut self.deleted)
    }

    /// Reads and removes the tombstones that DELs left in the state directory since it was
    /// opened (a DEL that found the socket not yet answering while the daemon started).
    pub fn new_tombstones(&self, report: &mut Vec<String>) -> Vec<Attachment> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        take_tombstones(&files, report)
    }

    /// Whether a tombstone of `a` waits in the state directory (one `stat`).
    pub fn has_tombstone(&self, a: &Attachment) -> bool {
        self.dir.as_ref().is_some_and(|d| d.join(format!("{}.del", a.key())).exists())
    }

    pub fn iter(&self) -> impl Iterator<Item = &CniPort> {
        self.ports.values()
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&CniPort> {
        self.ports.get(name)
    }

    pub fn find(&self, a: &Attachment) -> Option<&CniPort> {
        self.ports.values().find(|p| p.attachment.same(a))
    }

    /// Adds a port, persisting it first. The caller has checked for collisions.
    pub fn insert(&mut self, p: CniPort) -> Result<(), CniError> {
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{}.json", p.attachment.key()));
            let tmp = dir.join(format!(".{}.json.tmp", p.attachment.key()));
            let text = serde_json::to_string_pretty(&p).map_err(|e| CniError::Internal(e.to_string()))?;
            write_synced(&tmp, text.as_bytes()).map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            if let Err(e) = sync_dir(dir) {
                // The ADD fails: no file may stay to restore a port nobody added.
                let _ = std::fs::remove_file(&path);
                return Err(io_err(dir, e));
            }
        }
        self.ports.insert(p.port.name.clone(), p);
        Ok(())
    }

    /// Removes the port of an attachment (and its file); its name if there was one.
    pub fn remove(&mut self, a: &Attachment) -> Result<Option<CniPort>, CniError> {
        let Some(name) = self.find(a).map(|p| p.port.name.clone()) else {
            return Ok(None);
        };
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{}.json", a.key()));
            match std::fs::remove_file(&path) {
                // The removal reaches the disk before the DEL is answered: a port deleted does
                // not come back with a restart after a power loss.
                Ok(()) => sync_dir(dir).map_err(|e| io_err(dir, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        self.last.remove(&name);
        Ok(self.ports.remove(&name))
    }

    /// `base` with every CNI port added to its bridge, with the policy and IP spoof filter of
    /// the VMI interface among `subjects` it is ([`crate::cni_subject::decorate`]). A CNI port
    /// whose bridge is missing, or whose name a planned port now has, is left out and named in
    /// the second value (it stays registered and comes back when the bridge does); so is one
    /// that matches several subjects (it runs isolated).
    /// A port that matches no subject keeps what it last got from one (see the `last` field).
    pub fn merge_into(&mut self, base: &Config, subjects: &[CniSubject]) -> (Config, Vec<String>) {
        let mut cfg = base.clone();
        let mut left_out = Vec::new();
        for p in self.ports.values() {
            let taken = base.bridges.iter().flat_map(|b| &b.ports).any(|q| q.name == p.port.name);
            match cfg.bridges.iter_mut().find(|b| b.name == p.bridge) {
                Some(_) if taken => left_out.push(format!(
                    "CNI port {}: a port planned from the source now has its name; left out",
                    p.port.name
                )),
                Some(b) => {
                    let mut port = p.port.clone();
                    if crate::cni_subject::matches(subjects, p).is_empty() {
                        if let Some((policy, ips)) = self.last.get(&p.port.name) {
                            port.policy.clone_from(policy);
                            port.allowed_ips.clone_from(ips);
                        }
                    } else {
                        left_out.extend(crate::cni_subject::decorate(subjects, p, &mut port));
                        self.last
                            .insert(p.port.name.clone(), (port.policy.clone(), port.allowed_ips.clone()));
                    }
                    b.ports.push(port);
                }
                None => left_out.push(format!(
                    "CNI port {}: bridge {} is not configured; left out",
                    p.port.name, p.bridge
                )),
            }
        }
        (cfg, left_out)
    }
}

/// Writes `path` (created or truncated) with `data`, and flushes it to the disk: renamed into
/// place after, it is whole after a crash, not an empty or partial file.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Flushes directory `dir`'s entries to the disk: a file renamed into it is there after a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The attachments named by the `.del` files among `files`, which are removed.
fn take_tombstones(files: &[PathBuf], report: &mut Vec<String>) -> Vec<Attachment> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "del")) {
        match std::fs::read_to_string(f).ok().and_then(|t| serde_json::from_str::<Attachment>(&t).ok()) {
            Some(a) => out.push(a),
            None => report.push(format!("{}: tombstone does not parse; ignored", f.display())),
        }
        let _ = std::fs::remove_file(f);
    }
    out
}

/// Checks the parts of a CNI port that the configuration schema does not: the backend types a
/// CNI port may have (afpacket and afxdp on the host end of a veth, which they must name;
/// vhostuser), and for vhostuser the socket path the daemon gives it.
pub fn check_port(p: &CniPort) -> Result<(), CniError> {
    if p.port.name.is_empty() || p.attachment.container_id.is_empty() || p.attachment.ifname.is_empty() {
        return Err(CniError::Invalid(
            "port.name, attachment.container_id and attachment.ifname are required".into(),
        ));
    }
    match p.port.kind {
        // veth mode: the host end of the plugin's veth, read over AF_PACKET or AF_XDP.
        Some(k @ (PortType::Afpacket | PortType::Afxdp)) => {
            if p.port.iface.as_deref().is_none_or(str::is_empty) {
                let k = if k == PortType::Afpacket { "afpacket" } else { "afxdp" };
                return Err(CniError::Invalid(format!("port.iface: required for an {k} CNI port")));
            }
        }
        Some(PortType::Vhostuser) => {}
        other => {
            return Err(CniError::Invalid(format!(
                "port.type: {other:?}: a CNI port is afpacket or afxdp (veth mode) or vhostuser"
            )))
        }
    }
    Ok(())
}

/// The socket of a vhostuser CNI port: `<vhost_dir>/cni-<key>/sock`, a directory of its own per
/// attachment (so that it can be mounted into the VM's pod alone), within `sun_path`.
pub fn vhost_socket_path(vhost_dir: &str, a: &Attachment) -> Result<String, CniError> {
    fits_sun_path(vhost_dir, format!("{}/cni-{}/sock", vhost_dir.trim_end_matches('/'), a.key()))
}

/// Longest device id of the device plugin's devices.
pub const DEVICE_ID_MAX: usize = 32;

/// The directory of the device plugin's device `id`: `<vhost_dir>/dev-<id>`. The plugin creates
/// it and the kubelet mounts it into the pod the device is allocated to; the CNI ADD that names
/// the device puts the attachment's socket in it. An id is 1 to [`DEVICE_ID_MAX`] of
/// `[A-Za-z0-9_.-]`, not starting with a dot: it can never leave `vhost_dir`.
pub fn device_dir(vhost_dir: &str, id: &str) -> Result<String, CniError> {
    let ok = !id.is_empty()
        && id.len() <= DEVICE_ID_MAX
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        return Err(CniError::Invalid(format!(
            "device id {id:?}: want 1 to {DEVICE_ID_MAX} of [A-Za-z0-9_.-], not starting with a dot"
        )));
    }
    let d = format!("{}/dev-{id}", vhost_dir.trim_end_matches('/'));
    fits_sun_path(vhost_dir, format!("{d}/sock"))?;
    Ok(d)
}

/// The socket of a vhostuser CNI port: in its allocated device's directory when it has one,
/// else in a directory of its own.
pub fn port_socket_path(vhost_dir: &str, p: &CniPort) -> Result<String, CniError> {
    match &p.device {
        Some(id) => Ok(format!("{}/sock", device_dir(vhost_dir, id)?)),
        None => vhost_socket_path(vhost_dir, &p.attachment),
    }
}

fn fits_sun_path(vhost_dir: &str, p: String) -> Result<String, CniError> {
    if p.len() > SUN_PATH_MAX {
        return Err(CniError::Invalid(format!(
            "the vhost-user directory {vhost_dir:?} is too long for a socket path ({} > {SUN_PATH_MAX} bytes)",
            p.len()
        )));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str, i: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: i.into(),
            netns: None,
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
        }
    }

    fn port(name: &str, c: &str) -> CniPort {
        CniPort {
            bridge: "br1".into(),
            attachment: att(c, "net1"),
            port: PortConfig {
                name: name.into(),
                kind: Some(PortType::Afpacket),
                iface: Some("syabc".into()),
                tag: Some(10),
                ..Default::default()
            },
            mac: None,
            owner: None,
            group: None,
            network: None,
            device: None,
        }
    }

    #[test]
    fn the_key_is_fnv1a_of_container_and_ifname() {
        // FNV-1a 64 of "" is the offset basis; of "a" a published test vector.
        assert_eq!(attachment_key("", ""), {
            let mut h: u64 = 0xcbf29ce484222325;
            h ^= u64::from(b'/');
            format!("{:016x}", h.wrapping_mul(0x100000001b3))
        });
        assert_eq!(
            format!("{:016x}", {
                let mut h: u64 = 0xcbf29ce484222325;
                h ^= u64::from(b'a');
                h.wrapping_mul(0x100000001b3)
            }),
            "af63dc4c8601ec8c"
        );
        assert_ne!(attachment_key("c1", "net1"), attachment_key("c1", "net2"));
        assert_eq!(attachment_key("c1", "net1").len(), 16);
    }

    #[test]
    fn ports_survive_a_reopen_and_tombstones_remove_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, report) = CniPorts::open(dir.path()).unwrap();
        assert!(report.is_empty() && s.is_empty());
        s.insert(port("ns/a/net1", "ca")).unwrap();
        s.insert(port("ns/b/net1", "cb")).unwrap();
        s.insert(port("ns/c/net1", "cc")).unwrap();
        assert_eq!(s.remove(&att("cc", "net1")).unwrap().map(|p| p.port.name), Some("ns/c/net1".into()));
        assert_eq!(s.remove(&att("cc", "net1")).unwrap(), None);
        // A tombstone for b, one that names nothing, and a broken port file.
        std::fs::write(
            dir.path().join(format!("{}.del", attachment_key("cb", "net1"))),
            serde_json::to_string(&att("cb", "net1")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("0000000000000000.del"),
            serde_json::to_string(&att("zz", "net1")).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("1111111111111111.json"), "{").unwrap();
        let (s2, report) = CniPorts::open(dir.path()).unwrap();
        let names: Vec<_> = s2.iter().map(|p| p.port.name.clone()).collect();
        assert_eq!(names, ["ns/a/net1"]);
        assert!(report.iter().any(|r| r.contains("ns/b/net1") && r.contains("deleted while")), "{report:?}");
        assert!(report.iter().any(|r| r.contains("1111111111111111.json")), "{report:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!left.iter().any(|f| f.ends_with(".del")), "{left:?}");
        assert!(left.iter().any(|f| f == "1111111111111111.json.bad"), "{left:?}");
        assert_eq!(left.iter().filter(|f| f.ends_with(".json")).count(), 1, "{left:?}");
    }

    #[test]
    fn a_temporary_file_left_by_an_insert_cut_short_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = CniPorts::open(dir.path()).unwrap();
        s.insert(port("ns/a/net1", "ca")).unwrap();
        // What a daemon killed between writing and renaming leaves: a whole or a cut file.
        let key = attachment_key("cb", "net1");
        let tmp = dir.path().join(format!(".{key}.json.tmp"));
        std::fs::write(&tmp, "{\"attachment\":").unwrap();
        let (s2, report) = CniPorts::open(dir.path()).unwrap();
        let names: Vec<_> = s2.iter().map(|p| p.port.name.clone()).collect();
        assert_eq!(names, ["ns/a/net1"]);
        assert!(!tmp.exists(), "{} left in place", tmp.display());
        assert!(
            report.iter().any(|r| r.contains(&format!(".{key}.json.tmp")) && r.contains("removed")),
            "{report:?}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [format!("{}.json", attachment_key("ca", "net1"))]);
    }

    #[test]
    fn merging_places_ports_on_their_bridges_and_reports_the_rest() {
        let base =
            Config::from_yaml_str("bridges:\n- name: br1\n  ports:\n  - {name: up, type: ring}\n").unwrap();
        let mut s = CniPorts::in_memory();
        s.insert(port("ns/a/net1", "ca")).unwrap();
        let mut other = port("ns/b/net1", "cb");
        other.bridge = "br9".into();
        s.insert(other).unwrap();
        s.insert(port("up", "cc")).unwrap();
        let (cfg, left) = s.merge_into(&base, &[]);
        let names: Vec<_> = cfg.bridges[0].ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["up", "ns/a/net1"]);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn requests_parse_by_op_and_version() {
        assert!(matches!(Request::parse(r#"{"v":1,"op":"status"}"#), Ok(Request::Status { .. })));
        assert!(matches!(Request::parse(r#"{"v":2,"op":"status"}"#), Err(CniError::BadRequest(_))));
        assert!(matches!(Request::parse(r#"{"v":1,"op":"reboot"}"#), Err(CniError::BadRequest(_))));
        assert!(matches!(Request::parse(r#"{"v":1,"op":"status","x":1}"#), Err(CniError::BadRequest(_))));
        assert!(matches!(Request::parse("{"), Err(CniError::BadRequest(_))));
        assert!(matches!(
            Request::parse(r#"{"v":1,"op":"cni_list"}"#),
            Ok(Request::CniList { attachment: None, .. })
        ));
        let one = r#"{"v":1,"op":"cni_list","attachment":{"container_id":"c","ifname":"net1"}}"#;
        let Ok(Request::CniList { attachment: Some(a), .. }) = Request::parse(one) else { panic!() };
        assert_eq!((a.container_id.as_str(), a.ifname.as_str()), ("c", "net1"));
        let add = r#"{"v":1,"op":"cni_add","cni":{"bridge":"br1","attachment":{"container_id":"c","ifname":"net1"},"port":{"name":"ns/p/net1","type":"afpacket","iface":"sy1","tag":10}}}"#;
        let Ok(Request::CniAdd { cni, .. }) = Request::parse(add) else { panic!() };
        assert_eq!(cni.port.tag, Some(10));
        assert!(check_port(&cni).is_ok());
    }

    /// A CNI port is an AF_PACKET or AF_XDP port on an interface (the host end of a veth), or a
    /// vhost-user port; other types, and an interface-less AF_PACKET or AF_XDP port, are refused
    /// naming the field.
    #[test]
    fn cni_ports_are_afpacket_or_afxdp_on_an_interface_or_vhostuser() {
        let of = |kind: PortType, iface: Option<&str>| {
            let mut p = port("ns/a/net1", "ca");
            p.port.kind = Some(kind);
            p.port.iface = iface.map(str::to_string);
            check_port(&p)
        };
        assert_eq!(of(PortType::Afpacket, Some("sy1")), Ok(()));
        assert_eq!(of(PortType::Afxdp, Some("sy1")), Ok(()));
        assert_eq!(of(PortType::Vhostuser, None), Ok(()));
        for k in [PortType::Afpacket, PortType::Afxdp] {
            for iface in [None, Some("")] {
                let e = of(k, iface).unwrap_err();
                assert!(matches!(e, CniError::Invalid(_)), "{e:?}");
                assert!(e.to_string().starts_with("port.iface: required"), "{e}");
            }
        }
        for k in [PortType::Ring, PortType::Tap, PortType::Dpdk, PortType::Vxlan] {
            let e = of(k, Some("sy1")).unwrap_err();
            assert!(e.to_string().starts_with("port.type: "), "{e}");
        }
        let afxdp = r#"{"v":1,"op":"cni_add","cni":{"bridge":"br1","attachment":{"container_id":"c","ifname":"net1"},"port":{"name":"ns/p/net1","type":"afxdp","iface":"sy1"}}}"#;
        let Ok(Request::CniAdd { cni, .. }) = Request::parse(afxdp) else { panic!() };
        assert_eq!(check_port(&cni), Ok(()));
    }

    #[test]
    fn vhost_socket_paths_fit_sun_path_whatever_the_names() {
        let a = att(&"c".repeat(500), &"i".repeat(300));
        let p = vhost_socket_path("/var/run/switchyard/vhost", &a).unwrap();
        assert!(p.len() <= SUN_PATH_MAX && p.starts_with("/var/run/switchyard/vhost/cni-"), "{p}");
        assert!(vhost_socket_path(&"/x".repeat(50), &a).is_err());
        assert_eq!(device_dir("/v/", "sy-0a-1").unwrap(), "/v/dev-sy-0a-1");
        for bad in ["", "../x", ".x", "a/b", &"a".repeat(DEVICE_ID_MAX + 1)] {
            assert!(device_dir("/v", bad).is_err(), "{bad:?} accepted");
        }
        assert!(device_dir(&"/x".repeat(50), "a").is_err());
    }
}
