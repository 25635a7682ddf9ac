//! `switchyard replay` (being written).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReplayArgs {
    pub scenario: std::path::PathBuf,
}

pub fn main(_a: ReplayArgs) -> ExitCode {
    ExitCode::FAILURE
}
