//! The daemon's side of a verb: JSON requests on `switchyard run`'s control socket (protocol
//! v1, docs/cni.md), one request per connection.
//!
//! Invariant: every call is bounded by a timeout, and its failure says which of three things
//! happened: the daemon is not there ([`DaemonError::Unreachable`]: nothing was asked), the
//! conversation broke ([`DaemonError::Io`]: the request may or may not have been applied), or
//! the daemon answered and refused ([`DaemonError::Refused`]).

use crate::error::{code, CniError};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_control::cni::{Attachment, CniPort};

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the switchyard daemon at {socket} does not answer ({source}); try again when it runs")]
    Unreachable { socket: String, source: std::io::Error },
    #[error("talking to the switchyard daemon at {socket}: {source}")]
    Io { socket: String, source: std::io::Error },
    #[error("the switchyard daemon's answer is not understood: {0}")]
    Answer(String),
    #[error("the switchyard daemon refused ({code}): {error}")]
    Refused { code: String, error: String },
}

impl From<DaemonError> for CniError {
    fn from(e: DaemonError) -> CniError {
        let c = match &e {
            DaemonError::Unreachable { .. } | DaemonError::Io { .. } => code::TRY_AGAIN,
            DaemonError::Answer(_) => code::DAEMON,
            DaemonError::Refused { code, error } => {
                return match code.as_str() {
                    "exists" => CniError::new(crate::error::code::EXISTS, error.clone()),
                    "no_bridge" => CniError::new(
                        crate::error::code::INVALID_CONFIG,
                        format!("bridge: the running switch has no such bridge ({error})"),
                    ),
                    "invalid" => CniError::new(
                        crate::error::code::INVALID_CONFIG,
                        format!("the switchyard daemon refused the port: {error}"),
                    ),
                    _ => CniError::new(crate::error::code::DAEMON, e.to_string()),
                }
            }
        };
        CniError::new(c, e.to_string())
    }
}

/// One port as `cni_list` reports it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub cni: CniPort,
    pub link_up: bool,
}

/// The daemon at one control socket.
pub struct Daemon {
    socket: PathBuf,
    timeout: Duration,
}

/// Long enough for a daemon adding a port under load (it persists the port first), short
/// enough that a wedged daemon does not hold a runtime's ADD for minutes.
const TIMEOUT: Duration = Duration::from_secs(20);

impl Daemon {
    pub fn new(socket: &Path) -> Daemon {
        Daemon { socket: socket.to_path_buf(), timeout: TIMEOUT }
    }

    pub fn with_timeout(mut self, t: Duration) -> Daemon {
        self.timeout = t;
        self
    }

    fn shown(&self) -> String {
        self.socket.display().to_string()
    }

    /// Sends `req`, returns the answer object of an `"ok": true` answer.
    fn call(&self, req: &Value) -> Result<Value, DaemonError> {
        let io = |source| DaemonError::Io { socket: self.shown(), source };
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|source| DaemonError::Unreachable { socket: self.shown(), source })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line = req.to_string();
        line.push('\n');
        s.write_all(line.as_bytes()).map_err(io)?;
        // The answer is one line; the daemon closes the connection after it, but the line is
        // all that is needed.
        let mut out = String::new();
        BufReader::new(s.take(64 << 20)).read_line(&mut out).map_err(io)?;
        if out.trim().is_empty() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed without an answer",
            )));
        }
        let v: Value = serde_json::from_str(out.trim()).map_err(|e| {
            DaemonError::Answer(format!("{e}: {:?}", out.chars().take(200).collect::<String>()))
        })?;
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(v),
            Some(false) => Err(DaemonError::Refused {
                code: v.get("code").and_then(Value::as_str).unwrap_or("unknown").to_string(),
                error: v.get("error").and_then(Value::as_str).unwrap_or("(no message)").to_string(),
            }),
            None => Err(DaemonError::Answer(format!("no \"ok\" in {v}"))),
        }
    }

    /// `status`: Ok(ready) when the daemon answers.
    pub fn status(&self) -> Result<bool, DaemonError> {
        let a = self.call(&json!({"v": 1, "op": "status"}))?;
        Ok(a.get("ready").and_then(Value::as_bool).unwrap_or(false))
    }

    /// `cni_add`: the port as the daemon stored it (a vhost-user port with its socket).
    pub fn add(&self, port: &CniPort) -> Result<CniPort, DaemonError> {
        let a = self.call(&json!({"v": 1, "op": "cni_add", "cni": port}))?;
        let cni = a.get("cni").cloned().ok_or_else(|| DaemonError::Answer(format!("no \"cni\" in {a}")))?;
        serde_json::from_value(cni).map_err(|e| DaemonError::Answer(format!("cni: {e}")))
    }

    /// `cni_del`: the names of the ports removed (none when the attachment was not there).
    pub fn del(&self, att: &Attachment) -> Result<Vec<String>, DaemonError> {
        let id = json!({"container_id": att.container_id, "ifname": att.ifname});
        let a = self.call(&json!({"v": 1, "op": "cni_del", "attachment": id}))?;
        serde_json::from_value(a.get("removed").cloned().unwrap_or(json!([])))
            .map_err(|e| DaemonError::Answer(format!("removed: {e}")))
    }

    /// `cni_list`: every CNI port of the daemon.
    pub fn list(&self) -> Result<Vec<Listed>, DaemonError> {
        self.list_req(&json!({"v": 1, "op": "cni_list"}))
    }

    /// `cni_list` of one attachment: its port, if the daemon has one. A daemon older than the
    /// request's `attachment` key refuses it (`bad_request`): then the whole list, filtered here.
    pub fn list_attachment(&self, att: &Attachment) -> Result<Vec<Listed>, DaemonError> {
        let id = json!({"container_id": att.container_id, "ifname": att.ifname});
        match self.list_req(&json!({"v": 1, "op": "cni_list", "attachment": id})) {
            Err(DaemonError::Refused { code, .. }) if code == "bad_request" => {
                Ok(self.list()?.into_iter().filter(|l| l.cni.attachment.same(att)).collect())
            }
            r => r,
        }
    }

    fn list_req(&self, req: &Value) -> Result<Vec<Listed>, DaemonError> {
        let a = self.call(req)?;
        let ports = a
            .get("ports")
            .and_then(Value::as_array)
            .ok_or_else(|| DaemonError::Answer(format!("no ports in {a}")))?;
        ports
            .iter()
            .map(|p| {
                let cni = serde_json::from_value(p.get("cni").cloned().unwrap_or(Value::Null))
                    .map_err(|e| DaemonError::Answer(format!("ports[].cni: {e}")))?;
                Ok(Listed { cni, link_up: p.get("link").and_then(Value::as_str) == Some("up") })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A daemon older than `cni_list`'s `attachment` key refuses it as a bad request: the
    /// plugin then asks for the whole list and keeps the attachment's port.
    #[test]
    fn an_older_daemon_gets_the_whole_list_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("ctl.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let port = |cid: &str| {
            json!({"cni": {"bridge": "br1", "attachment": {"container_id": cid, "ifname": "net1"},
                           "port": {"name": format!("{cid}/net1"), "type": "vhostuser"}}, "link": "up"})
        };
        let answers = [
            json!({"ok": false, "code": "bad_request", "error": "unknown field `attachment`"}),
            json!({"ok": true, "ports": [port("a"), port("b")]}),
        ];
        let server = std::thread::spawn(move || {
            let mut asked = Vec::new();
            for a in answers {
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                asked.push(serde_json::from_str::<Value>(&line).unwrap());
                (&s).write_all(format!("{a}\n").as_bytes()).unwrap();
            }
            asked
        });
        let att = Attachment {
            container_id: "b".into(),
            ifname: "net1".into(),
            netns: None,
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
        };
        let got = Daemon::new(&sock).list_attachment(&att).unwrap();
        let asked = server.join().unwrap();
        assert_eq!(asked[0]["attachment"], json!({"container_id": "b", "ifname": "net1"}));
        assert!(asked[1].get("attachment").is_none(), "{}", asked[1]);
        assert_eq!(got.iter().map(|l| l.cni.port.name.as_str()).collect::<Vec<_>>(), ["b/net1"]);
    }
}
