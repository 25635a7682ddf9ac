//! The kubelet device plugin (API v1beta1) that hands vhost-user socket directories to VM pods.
//!
//! The plugin advertises a pool of devices for one extended resource (the name a NAD gives in
//! its `k8s.v1.cni.cncf.io/resourceName` annotation). Device `id` is the host directory
//! `<vhost_dir>/dev-<id>` ([`switchyard_control::cni::device_dir`]), created by the plugin and
//! owned by QEMU's user. Allocate mounts a container's one device of the resource at
//! `<container_dir>/<name>-0`: the same path in every pod that asks for the resource, so a
//! live-migration target finds its socket where the source had it (virt-launcher on the target
//! runs the source's domain; the target's OnDefineDomain result is discarded,
//! pkg/virt-launcher/virtwrap/live-migration-target.go).
//!
//! One device per resource per container: with two, which network gets which device is
//! Multus's choice from the kubelet's unordered device list, neither the Allocate order nor
//! anything the plugin sees, so the target pod could mount the source's path of network A on
//! network B's device and cross-wire the NICs after a migration. Allocate refuses that request
//! ([`MAX_DEVICES_PER_CONTAINER`]); each network needs its own resource. It also writes the
//! Network Plumbing WG device-info of each device (`<devinfo_dir>/<resource>-<id>-device.json`,
//! resource with `/` as `-`) with the socket's path as the pod sees it; Multus passes the device
//! id to the CNI ADD (`deviceID`), which puts the attachment's socket in that directory, and
//! reports the device-info in the pod's network-status, where the binding sidecar finds it.
//!
//! The pool is `devices` long, or, with `spare`, as long as it takes to keep that many free
//! devices beyond those whose directory holds a socket (it grows and shrinks as attachments come
//! and go; directories are created before they are listed and never removed).
//!
//! Invariants: Allocate only hands out devices listed now (an unknown id is an error, never a
//! path); a device is healthy while its directory is a directory and the switch's
//! control socket answers; ListAndWatch sends the whole list at once and again at every change;
//! the plugin registers again whenever the kubelet restarts (its socket is replaced, or ours is
//! removed, as a starting kubelet does).

use crate::proto::deviceplugin::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::proto::deviceplugin::registration_client::RegistrationClient;
use crate::proto::deviceplugin::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse, ContainerPreferredAllocationResponse,
    Device, DevicePluginOptions, Empty, ListAndWatchResponse, Mount, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
};
use crate::uds;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use switchyard_control::cni::device_dir;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The API version the plugin registers with.
pub const API_VERSION: &str = "v1beta1";
/// The kubelet's device plugin directory.
pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's registration socket, in the plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Where device plugins leave device-info files for Multus.
pub const DEFAULT_DEVINFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo/dp";
/// Where the socket directories appear in a pod.
pub const DEFAULT_CONTAINER_DIR: &str = "/var/run/switchyard/kubevirt";
/// QEMU's uid and gid in virt-launcher.
pub const QEMU_ID: u32 = 107;
/// The most devices a pool grows to.
pub const MAX_DEVICES: usize = 1024;
/// The most devices of the resource one container may get (see the module doc).
pub const MAX_DEVICES_PER_CONTAINER: usize = 1;

/// What the plugin serves.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The extended resource, `<domain>/<name>`.
    pub resource: String,
    /// How many devices at least (VM interfaces at once on this node).
    pub devices: usize,
    /// Free devices to keep beyond those bound to an attachment (a socket in the directory):
    /// the pool grows as attachments come and shrinks back to `devices` as they go, never past
    /// [`MAX_DEVICES`]. 0 keeps the pool at `devices`.
    pub spare: usize,
    /// The switch's vhost-user directory (`run --vhost-dir`).
    pub vhost_dir: String,
    pub container_dir: String,
    pub plugin_dir: PathBuf,
    pub devinfo_dir: PathBuf,
    /// Owner and group of the device directories (QEMU's user).
    pub owner: u32,
    pub group: u32,
    /// The switch's control socket: devices are unhealthy while it does not answer.
    pub switch_socket: Option<PathBuf>,
    /// How often health and the kubelet are looked at.
    pub poll: Duration,
    /// QEMU listens on the socket and the switch connects (the NAD's `vhostMode: client`); by
    /// default the switch listens. The device-info says which, in the container's terms.
    pub qemu_listens: bool,
}

/// Why the plugin cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("resource {0:?}: want <domain>/<name>, the name of [A-Za-z0-9_.-]")]
    Resource(String),
    #[error("{0}")]
    Device(#[from] switchyard_control::cni::CniError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the container path {0:?} is too long for a socket path")]
    ContainerPath(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PluginError + '_ {
    move |source| PluginError::Io { path: path.display().to_string(), source }
}

impl PluginConfig {
    /// The name part of the resource (after the `/`).
    fn short(&self) -> &str {
        self.resource.rsplit('/').next().unwrap_or(&self.resource)
    }

    /// What [`PluginConfig::prepare`] checks before creating anything: a valid resource name,
    /// and every device directory and socket path, on the host and in the pod, within
    /// `sun_path`.
    pub fn check(&self) -> Result<(), PluginError> {
        let ok = match self.resource.split_once('/') {
            Some((d, n)) => {
                !d.is_empty()
                    && !n.is_empty()
                    && !n.starts_with('.')
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            }
            None => false,
        };
        if !ok {
            return Err(PluginError::Resource(self.resource.clone()));
        }
        let most = if self.spare == 0 { self.devices } else { MAX_DEVICES.max(self.devices) };
        device_dir(&self.vhost_dir, &self.device_id(most.max(1) - 1))?;
        let longest = self.container_path(most.max(1) - 1);
        if longest.len() + "/sock".len() > switchyard_control::cni::SUN_PATH_MAX {
            return Err(PluginError::ContainerPath(longest));
        }
        Ok(())
    }

    /// Device `i`'s id: `<name>-<i>`, unique in the vhost-user directory as resource names are
    /// unique on the node.
    pub fn device_id(&self, i: usize) -> String {
        format!("{}-{i}", self.short())
    }

    /// Where the `i`-th device of a container's request appears in the container.
    pub fn container_path(&self, i: usize) -> String {
        format!("{}/{}-{i}", self.container_dir.trim_end_matches('/'), self.short())
    }

    /// The device-info file of device `id`, named as Multus looks for it.
    pub fn devinfo_path(&self, id: &str) -> PathBuf {
        self.devinfo_dir.join(format!(
            "{}-{}-device.json",
            self.resource.replace('/', "-"),
            id.replace('/', "-")
        ))
    }

    /// The plugin's own socket in the kubelet's directory.
    pub fn endpoint(&self) -> String {
        format!("switchyard-{}.sock", self.short())
    }

    /// Creates the device directories (mode 0750, owned by QEMU's user): a pod's mount of one
    /// must exist before the CNI ADD puts a socket in it.
    pub fn prepare(&self) -> Result<(), PluginError> {
        self.check()?;
        self.create(0..self.devices)
    }

    fn create(&self, ids: std::ops::Range<usize>) -> Result<(), PluginError> {
        use std::os::unix::fs::DirBuilderExt;
        for i in ids {
            let d = PathBuf::from(device_dir(&self.vhost_dir, &self.device_id(i))?);
            std::fs::DirBuilder::new().recursive(true).mode(0o750).create(&d).map_err(io(&d))?;
            std::os::unix::fs::chown(&d, Some(self.owner), Some(self.group)).map_err(io(&d))?;
        }
        Ok(())
    }

    /// The indices of the devices whose directory holds a socket (an attachment's).
    fn bound(&self) -> Vec<usize> {
        let prefix = format!("dev-{}-", self.short());
        let Ok(rd) = std::fs::read_dir(&self.vhost_dir) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| {
                let i = e.file_name().to_str()?.strip_prefix(&prefix)?.parse::<usize>().ok()?;
                Some((i, e.path()))
            })
            .filter(|(_, p)| std::fs::symlink_metadata(p.join("sock")).is_ok())
            .map(|(i, _)| i)
            .collect()
    }

    /// How many devices to advertise now.
    pub fn pool_size(&self) -> usize {
        if self.spare == 0 {
            return self.devices;
        }
        let bound = self.bound();
        let highest = bound.iter().max().map_or(0, |i| i + 1);
        self.devices.max(bound.len() + self.spare).max(highest).min(MAX_DEVICES.max(self.devices))
    }

    /// The devices and their health now (`before` of them were listed): a pool that grows gets
    /// its new directories first.
    pub fn devices_now(&self, before: usize) -> Vec<Device> {
        let n = self.pool_size();
        if let Err(e) = self.create(before.min(n)..n) {
            tracing::warn!("growing the pool: {e}");
        }
        let switch_up = match &self.switch_socket {
            Some(s) => std::os::unix::net::UnixStream::connect(s).is_ok(),
            None => true,
        };
        (0..n)
            .map(|i| {
                let id = self.device_id(i);
                let dir_ok = device_dir(&self.vhost_dir, &id).is_ok_and(|d| Path::new(&d).is_dir());
                let health = if switch_up && dir_ok { "Healthy" } else { "Unhealthy" };
                Device { id, health: health.into(), topology: None }
            })
            .collect()
    }
}

struct Plugin {
    cfg: Arc<PluginConfig>,
    devices: watch::Receiver<Vec<Device>>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<DeviceStream>, Status> {
        let s = tokio_stream::wrappers::WatchStream::new(self.devices.clone())
            .map(|devices| Ok(ListAndWatchResponse { devices }));
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_preferred_allocation(
        &self,
        r: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        // The lowest ids first: the same pods get the same directories across restarts of a
        // node, which makes reading a node's state easier; any choice is correct.
        let container_responses = r
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let mut ids = c.must_include_device_i_ds.clone();
                let mut rest: Vec<String> =
                    c.available_device_i_ds.into_iter().filter(|d| !ids.contains(d)).collect();
                rest.sort_by_key(|d| (d.len(), d.clone()));
                let want = usize::try_from(c.allocation_size).unwrap_or(0);
                ids.extend(rest.into_iter().take(want.saturating_sub(ids.len())));
                ContainerPreferredAllocationResponse { device_i_ds: ids }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, r: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in r.into_inner().container_requests {
            let listed: Vec<String> = self.devices.borrow().iter().map(|d| d.id.clone()).collect();
            container_responses.push(allocate(&self.cfg, &listed, &c.devices_ids).map_err(|e| {
                tracing::warn!("allocate {:?}: {e}", c.devices_ids);
                e
            })?);
        }
        Ok(Response::new(AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

fn options() -> DevicePluginOptions {
    DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }
}

/// One container's allocation: a mount and a device-info file per device, and
/// `SWITCHYARD_DEVICES_<NAME>` listing the ids; more than [`MAX_DEVICES_PER_CONTAINER`] devices
/// are refused (see the module doc).
fn allocate(
    cfg: &PluginConfig,
    listed: &[String],
    ids: &[String],
) -> Result<ContainerAllocateResponse, Status> {
    if let Some(id) = ids.iter().find(|id| !listed.contains(id)) {
        return Err(Status::invalid_argument(format!("device {id:?} is not one of {}", cfg.resource)));
    }
    if ids.len() > MAX_DEVICES_PER_CONTAINER {
        return Err(Status::failed_precondition(format!(
            "{} devices of {} in one container: a VM gets at most {MAX_DEVICES_PER_CONTAINER} per \
             resource, as which of its networks gets which device is not stable across a live \
             migration; give each network of the VM its own resource (NAD k8s.v1.cni.cncf.io/resourceName)",
            ids.len(),
            cfg.resource
        )));
    }
    let mut mounts = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let host = device_dir(&cfg.vhost_dir, id).map_err(|e| Status::internal(e.to_string()))?;
        if !Path::new(&host).is_dir() {
            return Err(Status::unavailable(format!("{host} is not a directory")));
        }
        let container_path = cfg.container_path(i);
        let sock = format!("{container_path}/sock");
        let role = if cfg.qemu_listens { "server" } else { "client" };
        switchyard_cni::state::write_device_info(&cfg.devinfo_path(id), role, &sock)
            .map_err(|e| Status::internal(e.to_string()))?;
        mounts.push(Mount { container_path, host_path: host, read_only: false });
    }
    let env = format!("SWITCHYARD_DEVICES_{}", cfg.short().to_ascii_uppercase().replace(['.', '-'], "_"));
    Ok(ContainerAllocateResponse {
        envs: HashMap::from([(env, ids.join(","))]),
        mounts,
        ..Default::default()
    })
}

/// The identity of a socket file (device, inode), to notice a replaced one.
fn socket_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Serves until `stop` resolves: registers with the kubelet, and again after every kubelet
/// restart; keeps the device list current.
pub async fn run(cfg: PluginConfig, stop: impl std::future::Future<Output = ()>) -> Result<(), PluginError> {
    cfg.prepare()?;
    let cfg = Arc::new(cfg);
    let (tx, rx) = watch::channel(cfg.devices_now(cfg.devices));
    let poll_cfg = cfg.clone();
    let health = tokio::spawn(async move {
        loop {
            tokio::time::sleep(poll_cfg.poll).await;
            let now = poll_cfg.devices_now(tx.borrow().len());
            tx.send_if_modified(|d| {
                let changed = *d != now;
                if changed {
                    tracing::info!(
                        healthy = now.iter().filter(|d| d.health == "Healthy").count(),
                        "devices changed"
                    );
                    *d = now;
                }
                changed
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio::pin!(stop);
    let ours = cfg.plugin_dir.join(cfg.endpoint());
    let kubelet = cfg.plugin_dir.join(KUBELET_SOCKET);
    let result = loop {
        let incoming = match uds::bind(&ours) {
            Ok(i) => i,
            Err(e) => break Err(io(&ours)(e)),
        };
        let (down_tx, down_rx) = tokio::sync::oneshot::channel::<()>();
        let svc = DevicePluginServer::new(Plugin { cfg: cfg.clone(), devices: rx.clone() });
        let server =
            tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(
                incoming,
                async move {
                    let _ = down_rx.await;
                },
            ));
        let ours_id = socket_id(&ours);
        // Register (retrying while the kubelet is not there), then watch both sockets.
        let mut registered_with = None;
        // The last refusal warned about: a kubelet that keeps refusing for one reason is
        // retried every poll but warned about once, not every second.
        let mut refused: Option<(tonic::Code, String)> = None;
        let restart = loop {
            if registered_with.is_none() {
                match register(&cfg, &kubelet).await {
                    Ok(()) => {
                        tracing::info!(resource = %cfg.resource, "registered with the kubelet");
                        registered_with = socket_id(&kubelet);
                        refused = None;
                    }
                    // The kubelet not there yet is routine (retried every poll); a refusal is
                    // not, and says why.
                    Err(Register::Unreachable(e)) => tracing::debug!("registration: {e}"),
                    Err(Register::Refused(s)) => {
                        let why = (s.code(), s.message().to_string());
                        if refused.as_ref() == Some(&why) {
                            tracing::debug!("the kubelet refused the registration again: {}", why.1);
                        } else {
                            tracing::warn!(
                                resource = %cfg.resource,
                                "the kubelet refused the registration ({:?}): {}; retrying",
                                why.0,
                                why.1
                            );
                            refused = Some(why);
                        }
                    }
                }
            } else if socket_id(&kubelet) != registered_with {
                tracing::info!("the kubelet's socket changed: registering again");
                registered_with = None;
                if socket_id(&ours) != ours_id {
                    break true;
                }
                continue;
            }
            if socket_id(&ours) != ours_id {
                tracing::info!("our socket was removed (kubelet restart): serving again");
                break true;
            }
            tokio::select! {
                _ = &mut stop => break false,
                _ = tokio::time::sleep(cfg.poll) => {}
            }
        };
        // A graceful stop would wait for the kubelet to close its ListAndWatch stream, which it
        // never does: give calls in flight a moment, then drop the connections.
        let _ = down_tx.send(());
        let mut server = server;
        if tokio::time::timeout(Duration::from_millis(500), &mut server).await.is_err() {
            server.abort();
        }
        if !restart {
            let _ = std::fs::remove_file(&ours);
            break Ok(());
        }
    };
    health.abort();
    result
}

/// Why a registration did not happen.
enum Register {
    /// The kubelet's socket does not answer (not started yet, restarting).
    Unreachable(String),
    /// Register failed on a connection made: the kubelet's answer (or, rarely, a kubelet
    /// that went away during the call).
    Refused(Status),
}

async fn register(cfg: &PluginConfig, kubelet: &Path) -> Result<(), Register> {
    let ch = uds::connect(kubelet)
        .await
        .map_err(|e| Register::Unreachable(format!("{}: {e}", kubelet.display())))?;
    RegistrationClient::new(ch)
        .register(RegisterRequest {
            version: API_VERSION.into(),
            endpoint: cfg.endpoint(),
            resource_name: cfg.resource.clone(),
            options: Some(options()),
        })
        .await
        .map_err(Register::Refused)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> PluginConfig {
        PluginConfig {
            resource: "switchyard.io/blue".into(),
            devices: 3,
            vhost_dir: dir.join("vhost").display().to_string(),
            container_dir: DEFAULT_CONTAINER_DIR.into(),
            plugin_dir: dir.join("dp"),
            devinfo_dir: dir.join("devinfo"),
            owner: 0,
            group: 0,
            switch_socket: None,
            poll: Duration::from_millis(50),
            qemu_listens: false,
            spare: 0,
        }
    }

    #[test]
    fn names_are_fixed_by_resource_and_position() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        assert_eq!(c.device_id(2), "blue-2");
        assert_eq!(c.container_path(0), "/var/run/switchyard/kubevirt/blue-0");
        assert_eq!(c.endpoint(), "switchyard-blue.sock");
        assert_eq!(c.devinfo_path("blue-1"), d.path().join("devinfo/switchyard.io-blue-blue-1-device.json"));
        for bad in ["blue", "/blue", "x/", "x/../y", "x/a b"] {
            assert!(PluginConfig { resource: bad.into(), ..c.clone() }.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn allocate_refuses_foreign_devices() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        c.prepare().unwrap();
        let listed: Vec<String> = c.devices_now(3).into_iter().map(|d| d.id).collect();
        let e = allocate(&c, &listed, &["blue-0".into(), "red-0".into()]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = allocate(&c, &listed, &["blue-3".into()]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let ok = allocate(&c, &listed, &["blue-2".into()]).unwrap();
        assert_eq!(ok.mounts.len(), 1);
        assert_eq!(ok.mounts[0].container_path, "/var/run/switchyard/kubevirt/blue-0");
        assert_eq!(ok.mounts[0].host_path, format!("{}/dev-blue-2", c.vhost_dir));
        assert_eq!(ok.envs["SWITCHYARD_DEVICES_BLUE"], "blue-2");
        let role = |c: &PluginConfig| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(c.devinfo_path("blue-2")).unwrap()).unwrap();
            (v["vhost-user"]["mode"].clone(), v["vhost-user"]["path"].clone())
        };
        let sock = serde_json::json!("/var/run/switchyard/kubevirt/blue-0/sock");
        assert_eq!(role(&c), (serde_json::json!("client"), sock.clone()));
        let listens = PluginConfig { qemu_listens: true, ..c };
        allocate(&listens, &listed, &["blue-2".into()]).unwrap();
        assert_eq!(role(&listens), (serde_json::json!("server"), sock));
    }

    /// Two devices of one resource in a container: the kubelet lists them in random order
    /// (`UnsortedList`), and so does Multus when it gives them to the networks, so the path of
    /// each network's socket would depend on that order, and a migration target (which runs
    /// the source's domain) could get network A's path on network B's device. Refused, and no
    /// device-info written.
    #[test]
    fn allocate_refuses_two_devices_of_the_resource_in_a_container() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        c.prepare().unwrap();
        let listed: Vec<String> = c.devices_now(3).into_iter().map(|d| d.id).collect();
        for ids in [["blue-0", "blue-1"], ["blue-1", "blue-0"]] {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            let e = allocate(&c, &listed, &ids).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert!(e.message().contains("its own resource"), "{}", e.message());
        }
        assert!(!c.devinfo_path("blue-0").exists() && !c.devinfo_path("blue-1").exists());
    }
}
