//! The KubeVirt network binding sidecar: hook API v1alpha3 on a Unix socket in
//! `/var/run/kubevirt-hooks`, serving `Info` and `Callbacks.OnDefineDomain`.
//!
//! For every VMI interface whose binding is this plugin's name (KubeVirt passes the name it
//! registered the binding under in `NETWORK_BINDING_PLUGIN_NAME`, [`binding_name`]),
//! OnDefineDomain finds the device-info, MAC and MTU of its network in the pod's network
//! information (the file KubeVirt's `downwardAPI: device-info` mounts, or a Multus
//! network-status list) and rewrites the domain ([`crate::domain::rewrite`]). A missing
//! device-info, a device-info that is not vhost-user, memory that cannot be shared or a domain
//! too deep to parse fails the call with a message saying which and why: virt-launcher then
//! refuses to start the VM rather than start it without its NIC.
//!
//! Invariant: the network information is read at every call (never cached), and a call
//! changes nothing outside the domain it returns.

use crate::domain::{rewrite, DomainError, VhostIface};
use crate::proto::hooks_info::info_server::{Info, InfoServer};
use crate::proto::hooks_info::{HookPoint, InfoParams, InfoResult};
use crate::proto::hooks_v1alpha3::callbacks_server::{Callbacks, CallbacksServer};
use crate::proto::hooks_v1alpha3::{
    OnDefineDomainParams, OnDefineDomainResult, PreCloudInitIsoParams, PreCloudInitIsoResult, ShutdownParams,
    ShutdownResult,
};
use crate::uds;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// The hook API version served.
pub const HOOK_VERSION: &str = "v1alpha3";
/// The hook point served.
pub const ON_DEFINE_DOMAIN: &str = "OnDefineDomain";
/// Where virt-launcher looks for hook sockets.
pub const DEFAULT_HOOK_DIR: &str = "/var/run/kubevirt-hooks";
/// Where KubeVirt mounts the network information of `downwardAPI: device-info`.
pub const DEFAULT_NETWORK_INFO: &str = "/etc/podinfo/network-info";
/// The environment variable in which virt-controller passes a binding sidecar the name the
/// binding is registered under (KubeVirt's pkg/hooks `NetworkBindingPluginNameEnvVar`).
pub const BINDING_NAME_ENV: &str = "NETWORK_BINDING_PLUGIN_NAME";
/// The queue pairs a port the CNI plugin creates offers (the port's default, ports/src/vhost:
/// the NAD has no queue count, and the CNI ADD does not see the VM).
pub const CNI_PORT_QUEUE_PAIRS: u32 = 1;

/// The binding name to serve: the one KubeVirt registered (`env`, [`BINDING_NAME_ENV`]) when
/// set, else `flag` (`--binding` or its default). KubeVirt matches VMI interfaces by the
/// registered name, so a sidecar registered under another name than its flag must follow it.
pub fn binding_name(env: Option<String>, flag: String) -> String {
    env.filter(|e| !e.is_empty()).unwrap_or(flag)
}

/// What the sidecar serves.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The binding name VMI interfaces use (`binding: {name: ...}`).
    pub binding: String,
    pub socket: PathBuf,
    pub network_info: PathBuf,
    /// `<mtu>` of interfaces whose network information carries none.
    pub mtu: Option<u32>,
}

/// Why OnDefineDomain refuses.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the VMI is not valid JSON: {0}")]
    Vmi(serde_json::Error),
    #[error("{path}: {msg}")]
    NetworkInfo { path: String, msg: String },
    #[error(
        "interface {0:?}: no device-info for its network (does the NAD name switchyard's resource in \
         k8s.v1.cni.cncf.io/resourceName, and is the binding registered with downwardAPI: device-info?)"
    )]
    NoDeviceInfo(String),
    #[error("interface {0:?}: the device-info is not a vhost-user socket: {1}")]
    NotVhost(String, String),
    #[error("{0}")]
    Domain(#[from] DomainError),
}

/// One network's device-info, MAC and MTU, from the network information.
#[derive(Debug, Clone, Default)]
struct NetInfo {
    device_info: Option<Value>,
    mac: Option<String>,
    mtu: Option<u32>,
}

/// A positive MTU (KubeVirt leaves out a zero one; 0 would not be an MTU anyway).
fn mtu_of(v: &Value) -> Option<u32> {
    v.get("mtu").and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok()).filter(|m| *m > 0)
}

fn mac_of(v: &Value) -> Option<String> {
    v.get("mac").and_then(Value::as_str).filter(|m| !m.is_empty()).map(str::to_string)
}

/// Looks up VMI network `net` (with its Multus `networkName`, if any) in the network
/// information: KubeVirt's `{"interfaces": [{"network", "deviceInfo", "mac", "mtu"}]}` (`mac`
/// since KubeVirt 1.8, `mtu` since 1.9: pkg/network/downwardapi, taken from the network-status)
/// or Multus's network-status list (`[{"name": "ns/nad", "device-info", "mac", "mtu"}]`).
fn lookup(info: &Value, net: &str, nad: Option<&str>) -> NetInfo {
    if let Some(ifs) = info.get("interfaces").and_then(Value::as_array) {
        let Some(hit) = ifs.iter().find(|i| i.get("network").and_then(Value::as_str) == Some(net)) else {
            return NetInfo::default();
        };
        return NetInfo { device_info: hit.get("deviceInfo").cloned(), mac: mac_of(hit), mtu: mtu_of(hit) };
    }
    let Some(list) = info.as_array() else { return NetInfo::default() };
    let Some(nad) = nad else { return NetInfo::default() };
    // A NAD named without its namespace is in the VMI's; network-status always names both.
    let same = |name: &str| name == nad || (!nad.contains('/') && name.rsplit('/').next() == Some(nad));
    let Some(hit) = list.iter().find(|s| s.get("name").and_then(Value::as_str).is_some_and(same)) else {
        return NetInfo::default();
    };
    NetInfo { device_info: hit.get("device-info").cloned(), mac: mac_of(hit), mtu: mtu_of(hit) }
}

/// The VMI's interfaces bound to a binding plugin other than `binding`, as (interface,
/// binding): when none is bound to `binding`, a sidecar registered under another name than
/// the one it serves would leave them all as they are.
pub fn other_bindings(vmi: &Value, binding: &str) -> Vec<(String, String)> {
    vmi["spec"]["domain"]["devices"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let b = i["binding"]["name"].as_str()?;
            (b != binding).then(|| (i["name"].as_str().unwrap_or_default().to_string(), b.to_string()))
        })
        .collect()
}

/// The interfaces of `vmi` bound to `cfg.binding`, with their sockets.
pub fn plan(cfg: &SidecarConfig, vmi: &Value, info: &Value) -> Result<Vec<VhostIface>, HookError> {
    let spec = &vmi["spec"];
    let multiqueue = spec["domain"]["devices"]["networkInterfaceMultiqueue"].as_bool().unwrap_or(false);
    let networks = spec["networks"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for i in spec["domain"]["devices"]["interfaces"].as_array().into_iter().flatten() {
        if i["binding"]["name"].as_str() != Some(cfg.binding.as_str()) {
            continue;
        }
        let name = i["name"].as_str().unwrap_or_default().to_string();
        let nad = networks
            .iter()
            .find(|n| n["name"].as_str() == Some(name.as_str()))
            .and_then(|n| n["multus"]["networkName"].as_str());
        let ni = lookup(info, &name, nad);
        let di = ni.device_info.ok_or_else(|| HookError::NoDeviceInfo(name.clone()))?;
        if di["type"].as_str() != Some("vhost-user") {
            return Err(HookError::NotVhost(name, di.to_string()));
        }
        let socket = di["vhost-user"]["path"].as_str().filter(|p| p.starts_with('/'));
        let mode = di["vhost-user"]["mode"].as_str().filter(|m| *m == "client" || *m == "server");
        let (Some(socket), Some(mode)) = (socket, mode) else {
            return Err(HookError::NotVhost(name, di.to_string()));
        };
        if multiqueue {
            tracing::warn!(
                "interface {name:?}: networkInterfaceMultiqueue asks for a queue pair per vCPU, but \
                 switchyard's CNI ports offer {CNI_PORT_QUEUE_PAIRS}: the NIC gets at most that many"
            );
        }
        out.push(VhostIface {
            socket: socket.into(),
            mode: mode.into(),
            // The VMI's, else the one the CNI reported (the port's spoof filter's).
            mac: i["macAddress"].as_str().map(str::to_string).or(ni.mac),
            mtu: ni.mtu.or(cfg.mtu),
            multiqueue,
            port_queues: CNI_PORT_QUEUE_PAIRS,
            name,
        });
    }
    Ok(out)
}

/// OnDefineDomain's work: the rewritten domain.
pub fn on_define_domain(cfg: &SidecarConfig, domain: &[u8], vmi: &[u8]) -> Result<Vec<u8>, HookError> {
    let vmi: Value = serde_json::from_slice(vmi).map_err(HookError::Vmi)?;
    let bound = vmi["spec"]["domain"]["devices"]["interfaces"]
        .as_array()
        .is_some_and(|is| is.iter().any(|i| i["binding"]["name"].as_str() == Some(cfg.binding.as_str())));
    if !bound {
        let others = other_bindings(&vmi, &cfg.binding);
        if !others.is_empty() {
            tracing::warn!(
                "no VMI interface uses binding {:?}, but {others:?} (interface, binding) use others: \
                 left as they are (is this sidecar registered under another name?)",
                cfg.binding
            );
        }
        return Ok(domain.to_vec());
    }
    let path = cfg.network_info.display().to_string();
    let text = std::fs::read(&cfg.network_info)
        .map_err(|e| HookError::NetworkInfo { path: path.clone(), msg: e.to_string() })?;
    let info: Value =
        serde_json::from_slice(&text).map_err(|e| HookError::NetworkInfo { path, msg: e.to_string() })?;
    Ok(rewrite(domain, &plan(cfg, &vmi, &info)?)?)
}

/// The answer to virt-launcher's `Info` call: the binding's name, the one hook point and the
/// one hook API version this sidecar implements.
fn info_result(binding: &str) -> InfoResult {
    InfoResult {
        name: binding.to_string(),
        versions: vec![HOOK_VERSION.into()],
        hook_points: vec![HookPoint { name: ON_DEFINE_DOMAIN.into(), priority: 0 }],
    }
}

struct Sidecar {
    cfg: Arc<SidecarConfig>,
    shutdown: Arc<Notify>,
}

#[tonic::async_trait]
impl Info for Sidecar {
    async fn info(&self, _: Request<InfoParams>) -> Result<Response<InfoResult>, Status> {
        Ok(Response::new(info_result(&self.cfg.binding)))
    }
}

#[tonic::async_trait]
impl Callbacks for Sidecar {
    async fn on_define_domain(
        &self,
        r: Request<OnDefineDomainParams>,
    ) -> Result<Response<OnDefineDomainResult>, Status> {
        let p = r.into_inner();
        match on_define_domain(&self.cfg, &p.domain_xml, &p.vmi) {
            Ok(domain_xml) => Ok(Response::new(OnDefineDomainResult { domain_xml })),
            Err(e) => {
                tracing::error!("OnDefineDomain: {e}");
                Err(Status::failed_precondition(format!("switchyard binding: {e}")))
            }
        }
    }

    async fn pre_cloud_init_iso(
        &self,
        r: Request<PreCloudInitIsoParams>,
    ) -> Result<Response<PreCloudInitIsoResult>, Status> {
        // Not a hook point of this sidecar: what comes goes back unchanged.
        let p = r.into_inner();
        Ok(Response::new(PreCloudInitIsoResult {
            cloud_init_no_cloud_source: p.cloud_init_no_cloud_source,
            cloud_init_data: p.cloud_init_data,
        }))
    }

    async fn shutdown(&self, _: Request<ShutdownParams>) -> Result<Response<ShutdownResult>, Status> {
        self.shutdown.notify_one();
        Ok(Response::new(ShutdownResult {}))
    }
}

/// Serves until `stop` resolves or virt-launcher calls Shutdown; removes the socket then.
pub async fn run(cfg: SidecarConfig, stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    let incoming = uds::bind(&cfg.socket)?;
    let shutdown = Arc::new(Notify::new());
    let socket = cfg.socket.clone();
    let cfg = Arc::new(cfg);
    let info = InfoServer::new(Sidecar { cfg: cfg.clone(), shutdown: shutdown.clone() });
    let callbacks = CallbacksServer::new(Sidecar { cfg, shutdown: shutdown.clone() });
    let r = tonic::transport::Server::builder()
        .add_service(info)
        .add_service(callbacks)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = stop => {}
                _ = shutdown.notified() => {}
            }
        })
        .await;
    let _ = std::fs::remove_file(&socket);
    r.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The protobuf fields of message `b` as (field number, length-delimited bytes); varint
    /// fields as their value's bytes. A reader independent of the generated code, so that the
    /// test checks the field numbers virt-launcher reads, not ours against ours.
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0;
            for i in 0..10 {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let tag = varint(&mut b);
            match tag & 7 {
                0 => out.push((tag >> 3, varint(&mut b).to_le_bytes().to_vec())),
                2 => {
                    let n = varint(&mut b) as usize;
                    out.push((tag >> 3, b[..n].to_vec()));
                    b = &b[n..];
                }
                t => panic!("wire type {t}"),
            }
        }
        out
    }

    /// virt-controller sets NETWORK_BINDING_PLUGIN_NAME to the name the binding is registered
    /// under (pkg/virt-controller/services/template.go); it wins over the flag.
    #[test]
    fn the_registered_binding_name_wins_over_the_flag() {
        assert_eq!(binding_name(Some("sy-blue".into()), "switchyard".into()), "sy-blue");
        assert_eq!(binding_name(Some(String::new()), "switchyard".into()), "switchyard");
        assert_eq!(binding_name(None, "mine".into()), "mine");
        let cfg = SidecarConfig {
            binding: binding_name(Some("sy-blue".into()), "switchyard".into()),
            socket: "/x".into(),
            network_info: "/nonexistent".into(),
            mtu: None,
        };
        let vmi = serde_json::json!({"spec": {"domain": {"devices": {"interfaces": [
            {"name": "default", "masquerade": {}},
            {"name": "blue", "binding": {"name": "sy-blue"}}]}},
            "networks": [{"name": "blue", "multus": {"networkName": "blue"}}]}});
        let info = serde_json::json!({"interfaces": [{"network": "blue", "deviceInfo": {"type": "vhost-user",
            "vhost-user": {"mode": "client", "path": "/s/sock"}}}]});
        let p = plan(&cfg, &vmi, &info).unwrap();
        assert_eq!(p.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["blue"]);
        // Under the flag's name, the interface is another binding's: reported, not rewritten.
        let flag = SidecarConfig { binding: "switchyard".into(), ..cfg };
        assert!(plan(&flag, &vmi, &info).unwrap().is_empty());
        assert_eq!(other_bindings(&vmi, "switchyard"), [("blue".to_string(), "sy-blue".to_string())]);
        assert!(other_bindings(&vmi, "sy-blue").is_empty());
    }

    /// KubeVirt's pkg/hooks/info/api_info.proto: `InfoResult { string name = 1; repeated
    /// HookPoint hookPoints = 3; repeated string versions = 4; }`, `HookPoint { string name = 1;
    /// int32 priority = 2; }`.
    #[test]
    fn info_uses_kubevirts_field_numbers() {
        let f = fields(&info_result("switchyard").encode_to_vec());
        let of = |n: u64| f.iter().filter(|(k, _)| *k == n).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(of(1), [b"switchyard".to_vec()]);
        assert_eq!(of(4), [b"v1alpha3".to_vec()], "the versions are not in field 4: {f:?}");
        let points = of(3);
        assert_eq!(points.len(), 1, "{f:?}");
        assert_eq!(fields(&points[0]).first(), Some(&(1, b"OnDefineDomain".to_vec())));
        assert!(f.iter().all(|(k, _)| [1, 3, 4].contains(k)), "a field KubeVirt does not have: {f:?}");
    }
}
