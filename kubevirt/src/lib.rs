//! switchyard-kubevirt: what KubeVirt needs to put a VM's NIC on a switchyard vhost-user port.
//!
//! Two services, each a subcommand of the `switchyard-kubevirt` binary (docs/kubevirt.md):
//! - [`device_plugin`]: a kubelet device plugin whose devices are socket directories; the
//!   kubelet mounts the allocated one into virt-launcher's compute container, and the CNI ADD
//!   (Multus passes it the device id) puts the attachment's socket in it.
//! - [`hook`]: the network binding sidecar; virt-launcher calls it before defining the domain,
//!   and it turns each interface bound to switchyard into a vhost-user interface on that socket.
//!
//! The gRPC code comes from the published APIs' .proto files (proto/), compiled by build.rs.
#![forbid(unsafe_code)]

pub mod cli;
pub mod device_plugin;
pub mod domain;
pub mod hook;
pub mod uds;

/// The generated gRPC messages and services.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    /// The kubelet device plugin API v1beta1.
    pub mod deviceplugin {
        tonic::include_proto!("v1beta1");
    }
    /// KubeVirt's hook sidecar discovery API.
    pub mod hooks_info {
        tonic::include_proto!("kubevirt.hooks.info");
    }
    /// KubeVirt's hook callbacks v1alpha3.
    pub mod hooks_v1alpha3 {
        tonic::include_proto!("kubevirt.hooks.v1alpha3");
    }
}
