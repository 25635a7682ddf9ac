//! switchyard-cni: the CNI plugin that attaches pods and VMs to a running `switchyard`.
//!
//! A runtime (Multus, containerd, CRI-O, podman through libcni) runs the binary with the CNI
//! environment variables and the network configuration on stdin; [`run`] answers with the
//! result (ADD), nothing (DEL, CHECK, STATUS, GC) or the VERSION object on stdout, or with the
//! spec's error object and a non-zero exit status. docs/cni.md describes the configuration
//! keys, the verbs, the error codes and the protocol spoken with the daemon.
//!
//! Invariants: stdout carries exactly one answer (logs go to stderr); a failed ADD leaves
//! nothing behind; DEL is idempotent and works with the daemon down (tombstones); ADD, DEL and
//! CHECK of one attachment run one at a time (lock.rs), from their first look at it to their
//! answer.
#![deny(unsafe_code)]

mod add;
pub mod attach;
mod check;
pub mod config;
pub mod daemon;
mod del;
pub mod env;
pub mod error;
mod gc;
pub mod ipam;
// The one module allowed `unsafe`: setns(2) for a netlink socket in the pod's namespace.
#[allow(unsafe_code)]
pub mod link;
pub mod lock;
pub mod result;
pub mod state;
pub mod version;

use attach::Ctx;
use config::NetConf;
use env::{CniEnv, Command};
use error::{code, CniError};
use std::time::Duration;
use version::Version;

/// What the process prints on stdout and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub status: i32,
}

/// How long STATUS waits for the daemon's answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one invocation: `get` reads the environment, `stdin` is the configuration.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    // Errors are written in the config's own version when it names a supported one.
    let shown =
        config::peek_version(stdin).and_then(|v| Version::parse(&v)).unwrap_or(Version::CURRENT).as_str();
    let fail = |e: CniError| Outcome { stdout: e.to_json(shown), status: e.exit_status() };
    let command = match env::command(get) {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    if command == Command::Version {
        return Outcome { stdout: version::version_info(), status: 0 };
    }
    let env = match CniEnv::read(command, get) {
        Ok(e) => e,
        Err(e) => return fail(e.into()),
    };
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    let ctx = Ctx { conf: &conf, env: &env, stdin };
    // Held until this function returns: the verb's every step, its undo included.
    let _held = match command {
        Command::Add | Command::Del | Command::Check => match hold(&ctx, command) {
            Ok(l) => Some(l),
            // DEL must succeed where it can (the spec): a stateDir it cannot write (read-only,
            // full) costs it the lock, not the delete, or the pod would never terminate.
            Err(e) if command == Command::Del => {
                attach::log(&ctx, format!("DEL without the attachment's lock: {e}"));
                None
            }
            Err(e) => {
                attach::log(&ctx, &e);
                return fail(e);
            }
        },
        Command::Status | Command::Gc | Command::Version => None,
    };
    let r = match command {
        Command::Add => add::add(&ctx).map(|r| r.to_json(conf.version).to_string()),
        Command::Del => del::del(&ctx).map(|()| String::new()),
        Command::Check => check::check(&ctx).map(|()| String::new()),
        Command::Status => status(&ctx).map(|()| String::new()),
        Command::Gc => gc::gc(&ctx).map(|()| String::new()),
        Command::Version => Ok(version::version_info()),
    };
    match r {
        Ok(stdout) => Outcome { stdout, status: 0 },
        Err(e) => {
            attach::log(&ctx, &e);
            fail(e)
        }
    }
}

/// The attachment's lock (lock.rs) in the config's `stateDir`. DEL creates the directory: it
/// may have to leave a tombstone there before the daemon ever ran. ADD and CHECK need a running
/// daemon, which created its directory at start: a `stateDir` missing then is not the
/// daemon's, and refused (error 7), or error 11 while the daemon does not answer.
fn hold(ctx: &Ctx, command: Command) -> Result<lock::AttachmentLock, CniError> {
    let dir = &ctx.conf.state_dir;
    if command == Command::Del {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CniError::new(code::IO, format!("stateDir: {}: {e}", dir.display())))?;
    } else if !dir.is_dir() {
        ctx.daemon().status()?;
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "stateDir: {} does not exist, so it is not the running daemon's CNI state directory \
                 (`switchyard run --cni-state`, default {})",
                dir.display(),
                config::DEFAULT_STATE_DIR
            ),
        ));
    }
    lock::lock(dir, &ctx.key(), lock::WAIT)
}

/// STATUS: the plugin can serve ADDs when its daemon answers and is ready, and the IPAM
/// plugin, when the config delegates to one, answers its own STATUS with success (the spec:
/// a plugin that relies on a delegated plugin for ADD asks it; its error is passed on).
fn status(ctx: &Ctx) -> Result<(), CniError> {
    if !ctx.conf.version.has_status_and_gc() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("STATUS is not defined for cniVersion {}", ctx.conf.version.as_str()),
        ));
    }
    let d = daemon::Daemon::new(&ctx.conf.socket).with_timeout(STATUS_TIMEOUT);
    match d.status() {
        Ok(true) => {}
        Ok(false) => {
            return Err(CniError::new(code::NOT_AVAILABLE, "the switchyard daemon is starting (not ready)"))
        }
        Err(e) => return Err(CniError::new(code::NOT_AVAILABLE, e.to_string())),
    }
    if let Some(t) = &ctx.conf.ipam {
        match ipam::exec(t, "STATUS", ctx.stdin, ctx.ipam_path()?) {
            Ok(_) => {}
            Err(ipam::IpamError::Plugin(e)) => return Err(e),
            // An IPAM plugin that cannot be run cannot serve an ADD either.
            Err(e) => return Err(CniError::new(code::NOT_AVAILABLE, e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// STATUS and GC came with spec 1.1.0: an older config is refused as the Go plugins'
    /// skel refuses it (error 1), before any daemon is asked.
    #[test]
    fn status_and_gc_need_a_1_1_0_config() {
        let get = |k: &str| match k {
            "CNI_PATH" => Some("/nonexistent".to_string()),
            _ => None,
        };
        for verb in ["STATUS", "GC"] {
            let getv = |k: &str| if k == "CNI_COMMAND" { Some(verb.to_string()) } else { get(k) };
            let conf = br#"{"cniVersion": "1.0.0", "name": "n", "type": "switchyard", "bridge": "br1",
                "socket": "/nonexistent/sock", "cni.dev/valid-attachments": []}"#;
            let out = run(&getv, conf);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!((out.status, v["code"].as_u64()), (1, Some(1)), "{verb}: {out:?}");
            assert!(v["msg"].as_str().unwrap().contains("1.0.0"), "{verb}: {out:?}");
        }
    }
}
