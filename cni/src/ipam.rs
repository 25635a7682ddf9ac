//! Delegation to the IPAM plugin the config names, as the bridge plugin does it: the plugin
//! binary is looked up on CNI_PATH and run with this process's environment (CNI_COMMAND
//! replaced where the verb differs) and the network configuration, unchanged, on stdin.
//!
//! Invariant: an IPAM plugin's own error reaches the runtime unchanged (its code, message and
//! details); only failures to run it or to read its answer are this plugin's error 103.

use crate::error::{code, CniError};
use crate::result::CniResult;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a delegation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM plugin {plugin:?} not found on CNI_PATH ({path})")]
    NotFound { plugin: String, path: String },
    #[error("running IPAM plugin {plugin}: {source}")]
    Exec { plugin: String, source: std::io::Error },
    #[error("IPAM plugin {plugin} failed with {status} and no error JSON: {stdout}")]
    Failed { plugin: String, status: String, stdout: String },
    /// The plugin's own error, passed on as it is.
    #[error("IPAM plugin: {0}")]
    Plugin(CniError),
    #[error("IPAM plugin {plugin}'s result: {msg}")]
    Result { plugin: String, msg: String },
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        match e {
            IpamError::Plugin(inner) => inner,
            e => CniError::new(code::IPAM, e.to_string()),
        }
    }
}

/// The plugin file `kind` in the first CNI_PATH directory that has it.
fn find(kind: &str, path: &[PathBuf]) -> Result<PathBuf, IpamError> {
    path.iter().map(|d| d.join(kind)).find(|p| p.is_file()).ok_or_else(|| IpamError::NotFound {
        plugin: kind.to_string(),
        path: path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
    })
}

/// Runs the IPAM plugin `kind` for `verb` with `conf` on stdin; its stdout on success.
pub fn exec(kind: &str, verb: &str, conf: &[u8], path: &[PathBuf]) -> Result<Vec<u8>, IpamError> {
    let bin = find(kind, path)?;
    run(&bin, verb, conf)
}

fn run(bin: &Path, verb: &str, conf: &[u8]) -> Result<Vec<u8>, IpamError> {
    let plugin = bin.display().to_string();
    let exec_err = |source| IpamError::Exec { plugin: plugin.clone(), source };
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(exec_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe: its exit status tells.
        let _ = stdin.write_all(conf);
    }
    let out = child.wait_with_output().map_err(exec_err)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    match v.as_ref().and_then(|v| Some((v.get("code")?.as_u64()?, v))) {
        Some((c, v)) => {
            let s = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
            Err(IpamError::Plugin(
                CniError::new(u32::try_from(c).unwrap_or(u32::MAX), s("msg")).with_details(s("details")),
            ))
        }
        None => Err(IpamError::Failed {
            plugin,
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).chars().take(500).collect(),
        }),
    }
}

/// ADD: the addresses, routes and DNS the IPAM plugin hands out.
pub fn add(kind: &str, conf: &[u8], path: &[PathBuf]) -> Result<CniResult, IpamError> {
    let out = exec(kind, "ADD", conf, path)?;
    let bad = |msg: String| IpamError::Result { plugin: kind.to_string(), msg };
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
    let r = CniResult::parse(&v).map_err(|e| bad(e.to_string()))?;
    if r.ips.is_empty() {
        return Err(bad("no IP addresses in the result".into()));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_first_directory_with_the_plugin_wins_and_its_error_passes_through() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        script(
            b.path(),
            "fake",
            r#"cat >/dev/null; echo '{"code": 11, "msg": "busy", "details": "d"}'; exit 1"#,
        );
        let path = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        match exec("fake", "ADD", b"{}", &path) {
            Err(IpamError::Plugin(e)) => assert_eq!(e, CniError::new(11, "busy").with_details("d")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(exec("nope", "ADD", b"{}", &path), Err(IpamError::NotFound { .. })));
        script(
            a.path(),
            "fake",
            r#"test "$CNI_COMMAND" = ADD || exit 3; cat >/dev/null; echo '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.2/24"}]}'"#,
        );
        let r = add("fake", b"{}", &path).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.2/24");
        script(a.path(), "fake", "exit 3");
        assert!(matches!(exec("fake", "DEL", b"{}", &path), Err(IpamError::Failed { .. })));
    }
}
