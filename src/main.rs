//! The switchyard binary: `run`, `pmd`, `replay`, `plan`, `ctl`.

mod plan_cmd;
mod replay;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A userspace L2 dataplane for VM secondary networks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replays pcap inputs through the pipeline, deterministically, and writes what leaves.
    Replay(replay::ReplayArgs),
    /// Prints the configuration a node gets from a directory of cluster manifests.
    Plan(plan_cmd::PlanArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Replay(a) => replay::main(a),
        Cmd::Plan(a) => plan_cmd::main(a),
    }
}
