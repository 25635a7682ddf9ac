//! `switchyard-kubevirt device-plugin | hook-sidecar`: see docs/kubevirt.md.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use switchyard_kubevirt::cli::{Cli, Cmd};
use switchyard_kubevirt::{device_plugin, hook};

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            tokio::select! {
                _ = s.recv() => {}
                _ = ctrl_c() => {}
            }
        }
        Err(_) => ctrl_c().await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let r = match Cli::parse().cmd {
        Cmd::DevicePlugin(a) => device_plugin::run(a.into(), terminated()).await.map_err(|e| e.to_string()),
        Cmd::HookSidecar { binding, socket, network_info, mtu } => {
            let binding = hook::binding_name(std::env::var(hook::BINDING_NAME_ENV).ok(), binding);
            let cfg = hook::SidecarConfig { binding, socket, network_info, mtu };
            hook::run(cfg, terminated()).await.map_err(|e| e.to_string())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-kubevirt: {e}");
            ExitCode::FAILURE
        }
    }
}
