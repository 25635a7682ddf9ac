//! The switchyard binary: `run`, `pmd`, `replay`, `plan`, `ctl`.

#![forbid(unsafe_code)]

mod args;
mod ctl;
mod plan_cmd;
mod pmd;
mod replay;
mod run;

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
    /// testpmd-style benchmark: forwards between ports in one mode (io, switch, txonly, ...).
    Pmd(pmd::PmdArgs),
    /// The sidecar: watches a directory of manifests and reprograms the running switch.
    Run(run::RunArgs),
    /// Asks a running `switchyard run` over its control socket (show ports, trace, ...).
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` says what it changes (info); the other commands only warn.
    let default_log = if matches!(cli.cmd, Cmd::Run(_)) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match &cli.cmd {
        // One JSON object a line: timestamp, level, target, fields (the message among them).
        Cmd::Run(a) if a.log_format == run::LogFormat::Json => log.json().init(),
        _ => log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    match cli.cmd {
        Cmd::Replay(a) => replay::main(a),
        Cmd::Plan(a) => plan_cmd::main(a),
        Cmd::Pmd(a) => pmd::main(a),
        Cmd::Run(a) => run::main(a),
        Cmd::Ctl(a) => ctl::main(a),
    }
}
