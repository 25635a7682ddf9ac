//! `switchyard plan` (placeholder: being written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Directory of Kubernetes manifests.
    #[arg(long)]
    pub state: std::path::PathBuf,
    /// The node whose configuration to print.
    #[arg(long)]
    pub node: String,
}

pub fn main(_a: PlanArgs) -> ExitCode {
    eprintln!("switchyard plan: not implemented yet");
    ExitCode::FAILURE
}
