//! `switchyard plan --state DIR --node NODE [--node-labels k=v,...] [--tunnel-ip IP] [--json | --report]`:
//! prints the configuration NODE gets from the manifests under DIR (docs/cluster-state.md): as
//! YAML (skipped interfaces, notes and overlays as comments), as JSON with `--json` (the same
//! configuration, nothing else), or with `--report` the whole plan as one JSON object.

use crate::args::{parse_labels, parse_mode_arg};
use std::process::ExitCode;
use switchyard_control::{plan, ClusterState, PlanOptions};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Directory of Kubernetes manifests (YAML, multi-document, any depth).
    #[arg(long)]
    pub state: std::path::PathBuf,
    /// The node whose configuration to print.
    #[arg(long)]
    pub node: String,
    /// Node labels, `k=v,k2=v2`, over those of the Node object in DIR (for NNCP nodeSelectors).
    #[arg(long, value_name = "K=V,...")]
    pub node_labels: Option<String>,
    /// Print the configuration as JSON instead of YAML (the same content, without the comments).
    #[arg(long, conflicts_with = "report")]
    pub json: bool,
    /// Print the whole plan as one JSON object {node, config, skipped, notes, problems, ...}
    /// instead of the configuration alone.
    #[arg(long)]
    pub report: bool,
    /// Directory of the VM ports' vhost-user sockets.
    #[arg(long, default_value = switchyard_control::plan::DEFAULT_VHOST_DIR)]
    pub vhost_dir: String,
    /// Permissions of the VM ports' vhost-user sockets, octal (e.g. 0660), for a QEMU that
    /// runs as another user; default: left to the umask.
    #[arg(long, value_name = "MODE", value_parser = parse_mode_arg)]
    pub vhost_socket_mode: Option<String>,
    /// This node's tunnel endpoint for overlay networks; default: its Node's
    /// `switchyard.io/tunnel-ip` annotation, else its InternalIP.
    #[arg(long, value_name = "IP")]
    pub tunnel_ip: Option<std::net::IpAddr>,
    /// The underlay MTU the overlay networks' MTU is planned from (default 1500).
    #[arg(long, value_name = "BYTES")]
    pub underlay_mtu: Option<u32>,
    /// Exit with status 2 when the input has problems (the plan is printed all the same).
    #[arg(long)]
    pub strict: bool,
}

pub fn main(a: PlanArgs) -> ExitCode {
    if let Err(e) = switchyard_control::plan::vhost_dir_fits(&a.vhost_dir) {
        eprintln!("switchyard plan: {e}");
        return ExitCode::FAILURE;
    }
    let labels = match a.node_labels.as_deref().map(parse_labels).transpose() {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => {
            eprintln!("switchyard plan: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = match ClusterState::load_dir(&a.state) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard plan: {}: {e}", a.state.display());
            return ExitCode::FAILURE;
        }
    };
    let p = plan(
        &state,
        &a.node,
        &labels,
        &PlanOptions {
            vhost_dir: a.vhost_dir,
            vhost_socket_mode: a.vhost_socket_mode,
            tunnel_ip: a.tunnel_ip,
            underlay_mtu: a.underlay_mtu,
        },
    );
    for pr in &p.problems {
        eprintln!("problem: {pr}");
    }
    let out = if a.report {
        p.to_json() + "\n"
    } else if a.json {
        serde_json::to_string_pretty(&p.config).unwrap_or_default() + "\n"
    } else {
        p.to_yaml()
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    if a.strict && !p.problems.is_empty() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
