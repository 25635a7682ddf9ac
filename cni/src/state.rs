//! Files the plugin writes for others: the tombstone a DEL leaves in the daemon's CNI state
//! directory while the daemon is down, and the Network Plumbing WG device-info file of a
//! vhost-user attachment.
//!
//! Invariant: both files appear whole or not at all (written to a temporary name in the same
//! directory, then renamed), so a daemon starting at that moment never reads half a tombstone.

use crate::error::{code, CniError};
use std::io::Write;
use std::path::{Path, PathBuf};
use switchyard_control::cni::{attachment_key, Attachment};

/// A file could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StateError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl From<StateError> for CniError {
    fn from(e: StateError) -> CniError {
        CniError::new(code::IO, e.to_string())
    }
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError { path: path.display().to_string(), source }
}

/// Writes `bytes` to `path` atomically (creating its directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path)(e)
    })
}

/// The tombstone path of `att` in `state_dir`: `<key>.del`.
pub fn tombstone_path(state_dir: &Path, att: &Attachment) -> PathBuf {
    state_dir.join(format!("{}.del", attachment_key(&att.container_id, &att.ifname)))
}

/// Leaves a tombstone for `att`: the daemon removes the attachment's port when it starts.
pub fn write_tombstone(state_dir: &Path, att: &Attachment) -> Result<PathBuf, StateError> {
    let p = tombstone_path(state_dir, att);
    let body = serde_json::to_vec(att).map_err(|e| err(&p)(std::io::Error::other(e)))?;
    write_atomic(&p, &body)?;
    Ok(p)
}

/// The device-info file (Device Information Specification 1.1.0) of a vhost-user socket.
/// `mode` is the container application's role, as that spec defines it: "client" when the
/// switch creates the socket and QEMU attaches to it, "server" when QEMU creates it.
pub fn write_device_info(path: &Path, mode: &str, socket: &str) -> Result<(), StateError> {
    let v = serde_json::json!({
        "type": "vhost-user",
        "version": "1.1.0",
        "vhost-user": {"mode": mode, "path": socket},
    });
    write_atomic(path, v.to_string().as_bytes())
}

/// Removes a file the plugin wrote; one already gone is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstone_is_the_attachment_under_its_key() {
        let d = tempfile::tempdir().unwrap();
        let att = Attachment {
            container_id: "c1".into(),
            ifname: "net1".into(),
            netns: None,
            pod_namespace: Some("ns".into()),
            pod_name: Some("p".into()),
            pod_uid: None,
        };
        let p = write_tombstone(&d.path().join("sub"), &att).unwrap();
        assert_eq!(p.file_name().unwrap().to_str().unwrap(), format!("{}.del", attachment_key("c1", "net1")));
        let back: Attachment = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, att);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "a temporary file stayed");
        remove(&p).unwrap();
        remove(&p).unwrap();
    }

    #[test]
    fn device_info_has_the_spec_shape() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("devinfo/net1.json");
        write_device_info(&p, "client", "/run/x/sock").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "vhost-user", "version": "1.1.0",
                "vhost-user": {"mode": "client", "path": "/run/x/sock"}})
        );
    }
}
