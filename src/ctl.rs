//! `switchyard ctl [--socket PATH] COMMAND...`: asks a running `switchyard run` (as
//! `ovs-appctl`). Commands: `show ports`, `show fdb [BRIDGE]`, `show stats`, `show config`,
//! `show problems`, `fdb flush [BRIDGE]`, `trace PORT HEXFRAME`, `help`.

use std::path::PathBuf;
use std::process::ExitCode;
use switchyard_control::ctl::{request, DEFAULT_SOCKET};

#[derive(clap::Args)]
pub struct CtlArgs {
    /// The control socket of `switchyard run`.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The command and its arguments (`help` lists them).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
    pub command: Vec<String>,
}

pub fn main(a: CtlArgs) -> ExitCode {
    match request(&a.socket, &a.command.join(" ")) {
        Ok(out) => {
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
