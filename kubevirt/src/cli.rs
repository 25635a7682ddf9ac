//! The command line of `switchyard-kubevirt`, in the library so that a check of a manifest
//! (tests/deploy_manifests.rs) parses a container's arguments with the parser the binary runs.

use crate::{device_plugin, hook};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `switchyard-kubevirt`'s command line.
#[derive(Parser)]
#[command(version, about = "KubeVirt hand-off of switchyard's vhost-user sockets")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The two services.
#[derive(Subcommand)]
pub enum Cmd {
    /// The kubelet device plugin: socket directories as devices of one resource.
    DevicePlugin(DevicePluginArgs),
    /// The network binding sidecar (KubeVirt hook API v1alpha3).
    HookSidecar {
        /// The binding name of the VMI interfaces to rewrite, when KubeVirt passes none in
        /// NETWORK_BINDING_PLUGIN_NAME (which wins).
        #[arg(long, default_value = "switchyard")]
        binding: String,
        /// The hook socket.
        #[arg(long, default_value = "/var/run/kubevirt-hooks/switchyard.sock")]
        socket: PathBuf,
        /// The pod's network information (KubeVirt's device-info, or Multus network-status).
        #[arg(long, default_value = hook::DEFAULT_NETWORK_INFO)]
        network_info: PathBuf,
        /// `<mtu>` for interfaces whose network information has none: 68 to 2030 (a larger
        /// MTU's frames do not fit the switch's buffers).
        #[arg(long, value_parser = clap::value_parser!(u32).range(68..=i64::from(crate::domain::VHOST_MAX_MTU)))]
        mtu: Option<u32>,
    },
}

/// `device-plugin`'s options; [`device_plugin::PluginConfig`] is what they configure.
#[derive(Args)]
pub struct DevicePluginArgs {
    /// The extended resource (the NAD's k8s.v1.cni.cncf.io/resourceName).
    #[arg(long, default_value = "switchyard.io/vhost")]
    resource: String,
    /// How many devices at least (VM interfaces at once on this node).
    #[arg(long, default_value_t = 64)]
    devices: usize,
    /// Free devices to keep beyond the bound ones (the pool grows and shrinks); 0: a fixed pool.
    #[arg(long, default_value_t = 0)]
    spare: usize,
    /// The switch's vhost-user directory (`run --vhost-dir`).
    #[arg(long, default_value = "/var/run/switchyard/vhost")]
    vhost_dir: String,
    /// Where the directories appear in the pod.
    #[arg(long, default_value = device_plugin::DEFAULT_CONTAINER_DIR)]
    container_dir: String,
    #[arg(long, default_value = device_plugin::DEFAULT_PLUGIN_DIR)]
    plugin_dir: PathBuf,
    #[arg(long, default_value = device_plugin::DEFAULT_DEVINFO_DIR)]
    devinfo_dir: PathBuf,
    /// Owner of the directories (QEMU's uid in virt-launcher).
    #[arg(long, default_value_t = device_plugin::QEMU_ID)]
    owner: u32,
    #[arg(long, default_value_t = device_plugin::QEMU_ID)]
    group: u32,
    /// The switch's control socket: devices are unhealthy while it does not answer.
    #[arg(long)]
    switch_socket: Option<PathBuf>,
    /// Health and kubelet poll interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// QEMU listens and the switch connects (NADs with `vhostMode: client`).
    #[arg(long)]
    qemu_listens: bool,
}

impl From<DevicePluginArgs> for device_plugin::PluginConfig {
    fn from(a: DevicePluginArgs) -> Self {
        device_plugin::PluginConfig {
            resource: a.resource,
            devices: a.devices,
            spare: a.spare,
            vhost_dir: a.vhost_dir,
            container_dir: a.container_dir,
            plugin_dir: a.plugin_dir,
            devinfo_dir: a.devinfo_dir,
            owner: a.owner,
            group: a.group,
            switch_socket: a.switch_socket,
            poll: Duration::from_millis(a.poll_ms.max(10)),
            qemu_listens: a.qemu_listens,
        }
    }
}
