//! The `switchyard-cni` binary (installed in the CNI bin directory as `switchyard`): reads the
//! configuration from stdin, the environment from the process, and prints one answer.
#![forbid(unsafe_code)]

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("switchyard-cni: reading stdin: {e}");
    }
    let out = switchyard_cni::run(&|k| std::env::var(k).ok(), &stdin);
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    if !out.stdout.is_empty() {
        let _ = so.write_all(b"\n");
    }
    let _ = so.flush();
    std::process::exit(out.status);
}
