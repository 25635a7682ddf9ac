//! The control socket of `switchyard run`, and its client (`switchyard ctl`), as `ovs-appctl`.
//!
//! Protocol: a Unix stream socket, created with mode 0600 (only the owner, root on a node,
//! may connect). The client sends one request line; the server answers with text and closes
//! the connection. An answer that starts with `error: ` is a failed request.
//!
//! Requests:
//! - `show ports`: name, bridge, type, VLAN mode, link, rx/tx/drops
//! - `show fdb [BRIDGE]`: VLAN, MAC, port, age, static
//! - `show conntrack [BRIDGE]`: tracked connections (bridges with policies)
//! - `show stats`: per-port counters with drop reasons, per-worker cycles
//! - `show config`: the running configuration as YAML
//! - `show problems`: problems in the input, objects kept at their last good version, skips,
//!   ports that are down with their error
//! - `fdb flush [BRIDGE]`: removes learned MAC entries (static ones stay)
//! - `trace PORT HEXFRAME`: how that frame, received on PORT, would be forwarded now, with
//!   the policy rule that allowed it or the reason it was dropped (the running state is not
//!   changed)
//! - `help`
//!
//! A request line that starts with `{` is a versioned JSON request of a program (the CNI
//! plugin, [`crate::cni::Request`]); its answer is one JSON line, `{"ok": true, ...}` or
//! `{"ok": false, "code": ..., "error": ...}` (docs/cni.md).

pub mod show;

use crate::runtime::{Runtime, RuntimeError};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/switchyard/ctl.sock";

const HELP: &str = "commands:
  show ports                 ports: bridge, type, VLAN mode, link, rx/tx/drops
  show fdb [BRIDGE]          MAC table entries: VLAN, MAC, port, age, static
  show conntrack [BRIDGE]    tracked connections: VLAN, protocol, addresses, ports, state, TTL
  show stats                 per-port counters and drop reasons, per-worker cycles
  show config                the running configuration (YAML)
  show problems              problems in the input, objects kept at their last good version,
                             ports that are down
  fdb flush [BRIDGE]         remove learned MAC entries (static ones stay)
  trace PORT HEXFRAME        how a frame received on PORT would be forwarded
";

/// Why a request failed, on the server (what it answers after `error: `) or in the client.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("unknown command {0:?}; try `help`")]
    UnknownCommand(String),
    #[error("{dir}: {source}")]
    SocketDir { dir: PathBuf, source: std::io::Error },
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{0}: another switchyard is listening there")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("cannot start the control socket thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("{path}: {source} (is `switchyard run` running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("odd number of hex digits")]
    OddHexDigits,
    #[error("{0:?} is not hex")]
    NotHex(String),
    #[error("the request is longer than {0} bytes")]
    RequestTooLong(usize),
    #[error("the request is not UTF-8")]
    NotUtf8,
    #[error("{0}: the daemon closed the connection without an answer")]
    NoAnswer(PathBuf),
    /// The server's answer to a failed request (without the `error: ` prefix).
    #[error("{0}")]
    Refused(String),
}

/// Answers one JSON request (one line, without the newline).
pub fn handle_json(rt: &mut Runtime, line: &str) -> String {
    use crate::cni::{error_answer, Request};
    use serde_json::json;
    let link = |rt: &Runtime, name: &str| if rt.link_up(name) { "up" } else { "down" };
    let r = Request::parse(line).and_then(|req| match req {
        Request::Status { .. } => {
            Ok(json!({"ok": true, "ready": true, "version": crate::cni::PROTOCOL_VERSION}))
        }
        Request::CniAdd { cni, .. } => {
            let p = rt.cni_add(*cni)?;
            let l = link(rt, &p.port.name);
            Ok(json!({"ok": true, "cni": p, "link": l}))
        }
        Request::CniDel { attachment, .. } => {
            let removed: Vec<String> = rt.cni_del(&attachment)?.into_iter().collect();
            Ok(json!({"ok": true, "removed": removed}))
        }
        Request::CniList { attachment, .. } => {
            let ports: Vec<_> = rt
                .cni_ports()
                .iter()
                .filter(|p| attachment.as_ref().is_none_or(|a| p.attachment.same(a)))
                .map(|p| json!({"cni": p, "link": link(rt, &p.port.name)}))
                .collect();
            Ok(json!({"ok": true, "ports": ports}))
        }
        Request::CniGc { valid, network, .. } => {
            Ok(json!({"ok": true, "removed": rt.cni_gc(&valid, network.as_deref())?}))
        }
    });
    match r {
        Ok(v) => v.to_string(),
        Err(e) => error_answer(&e),
    }
}

/// Answers one request line.
pub fn handle(rt: &Mutex<Runtime>, line: &str) -> Result<String, CtlError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut rt = rt.lock().unwrap_or_else(|e| e.into_inner());
    if line.starts_with('{') {
        return Ok(handle_json(&mut rt, line) + "\n");
    }
    match words.as_slice() {
        ["help"] | [] => Ok(HELP.to_string()),
        ["show", "ports"] => Ok(show::ports(&rt)),
        ["show", "fdb"] => Ok(show::fdb(&rt, None)?),
        ["show", "fdb", b] => Ok(show::fdb(&rt, Some(b))?),
        ["show", "conntrack"] => Ok(show::conntrack(&rt, None)?),
        ["show", "conntrack", b] => Ok(show::conntrack(&rt, Some(b))?),
        ["show", "stats"] => Ok(show::stats(&rt)),
        ["show", "config"] => Ok(show::config(&rt)),
        ["show", "problems"] => Ok(show::problems(&rt)),
        ["fdb", "flush"] => Ok(show::fdb_flush(&rt, None)?),
        ["fdb", "flush", b] => Ok(show::fdb_flush(&rt, Some(b))?),
        ["trace", port, hex @ ..] if !hex.is_empty() => show::trace(&rt, port, &hex.join("")),
        _ => Err(CtlError::UnknownCommand(line.to_string())),
    }
}

/// The listening socket and its thread.
pub struct CtlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A listening socket at `path`, mode 0600. It is bound and listening under a name of its own
/// (`<path>.new`) and renamed to `path` only then: a client that finds `path` can connect (a
/// bind makes the name before the listen, and a CNI call or a test that came in between was
/// refused). The caller holds the path's claim ([`CtlClaim`]), so no other `run` uses the
/// temporary name.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    // Left by a `run` that ended between its bind and its rename.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // The creation mask is restored right after the bind, so the socket is never created with
    // wider permissions than 0600.
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o177));
    let r = UnixListener::bind(&tmp);
    umask(old);
    let l = r?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

/// Whether `path` can be the control socket: `Ok(true)` when a stale socket file is there (to
/// replace), `Ok(false)` when nothing is; an error when another `run` answers there or the
/// path is not a socket. `run` asks before it starts anything, so that a second `run` on the
/// socket of a running one is refused before it opens a port (it used to reconcile first,
/// replacing the running one's vhost-user socket files, and fail only at the bind).
pub fn free(path: &Path) -> Result<bool, CtlError> {
    let Ok(m) = std::fs::symlink_metadata(path) else { return Ok(false) };
    if !m.file_type().is_socket() {
        return Err(CtlError::NotASocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(CtlError::InUse(path.to_path_buf()));
    }
    Ok(true)
}

/// The claim of one `run` on a control socket path: an exclusive `flock` on `<path>.lock`,
/// held while the value lives (the kernel drops it when the process ends, however it ends).
/// [`free`] alone leaves a window: two `run`s starting together both find nothing listening
/// and both go on to open ports; the lock closes it, as `ovs-vswitchd`'s pidfile lock does.
/// The lock file is never removed (removing it would let a third `run` lock a new file while
/// the second holds the old one).
#[derive(Debug)]
pub struct CtlClaim {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Creates the directory of socket `path` (mode 0700) when it is missing.
fn socket_dir(path: &Path) -> Result<(), CtlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CtlError::SocketDir { dir: dir.to_path_buf(), source })?;
    }
    Ok(())
}

/// Claims the control socket `path` for this process ([`CtlClaim`]), then checks it as
/// [`free`] does: [`CtlError::InUse`] when another `run` holds the claim or answers there.
/// Creates the socket's directory (mode 0700) when it is missing.
pub fn claim(path: &Path) -> Result<CtlClaim, CtlError> {
    use std::os::unix::fs::OpenOptionsExt;
    socket_dir(path)?;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| CtlError::Socket { path: lock_path.clone(), source })?;
    let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(CtlError::InUse(path.to_path_buf())),
        Err((_, e)) => return Err(CtlError::Socket { path: lock_path, source: std::io::Error::from(e) }),
    };
    free(path)?;
    Ok(CtlClaim { _lock: lock })
}

impl CtlServer {
    /// Creates the socket at `path` (its directory too, mode 0700, when missing) and serves
    /// requests on a thread. A stale socket file is replaced; a live one (another `run`) is an
    /// error.
    pub fn start(path: &Path, rt: Arc<Mutex<Runtime>>) -> Result<CtlServer, CtlError> {
        let socket = |source| CtlError::Socket { path: path.to_path_buf(), source };
        socket_dir(path)?;
        if free(path)? {
            std::fs::remove_file(path).map_err(socket)?;
        }
        let listener = bind_private(path).map_err(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sy-ctl".into())
            .spawn(move || serve(listener, rt, st))
            .map_err(CtlError::Thread)?;
        Ok(CtlServer { path: path.to_path_buf(), stop, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            // Wake the blocking accept.
            let _ = UnixStream::connect(&self.path);
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long a client has to send its whole request line: one deadline for the line, not a
/// timeout per read, so that a client trickling a byte at a time cannot hold the socket (one
/// client is served at a time) or delay shutdown for longer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The longest request line taken.
const MAX_REQUEST: usize = 1 << 20;

fn serve(listener: UnixListener, rt: Arc<Mutex<Runtime>>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(mut s) = conn else { continue };
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let answer = match read_request(&s) {
            Ok(Some(line)) => answer(&rt, &line),
            Ok(None) => continue,
            Err(e) => format!("error: {e}\n"),
        };
        let _ = s.write_all(answer.as_bytes());
    }
}

/// The answer to request `line`. A handler that panics (a defect) answers an error instead of
/// ending the socket's thread, which would leave `ctl` and the CNI plugin without a daemon
/// while `/healthz` still says it is fine.
fn answer(rt: &Mutex<Runtime>, line: &str) -> String {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(rt, line.trim())));
    match r {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => format!("error: {e}\n"),
        Err(_) => {
            tracing::error!(request = %line.trim(), "the control socket's handler panicked");
            if line.trim_start().starts_with('{') {
                let e = crate::cni::CniError::Internal("the daemon's handler failed (logged)".into());
                crate::cni::error_answer(&e) + "\n"
            } else {
                "error: internal error in the daemon (logged)\n".to_string()
            }
        }
    }
}

/// Reads one request line from `s` within [`REQUEST_DEADLINE`]: `Ok(None)` when the client
/// went away or ran out of time without a whole line (nothing to answer), an error to answer
/// for a line that is too long or not UTF-8.
fn read_request(mut s: &UnixStream) -> Result<Option<String>, CtlError> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let _ = s.set_read_timeout(Some(left));
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(None),
        };
        let end = buf[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&buf[..end.unwrap_or(n)]);
        if line.len() > MAX_REQUEST {
            return Err(CtlError::RequestTooLong(MAX_REQUEST));
        }
        if end.is_some() {
            break;
        }
    }
    String::from_utf8(line).map(Some).map_err(|_| CtlError::NotUtf8)
}

/// Sends one request to the server at `path`; the answer, or the error it gave.
pub fn request(path: &Path, line: &str) -> Result<String, CtlError> {
    let mut s =
        UnixStream::connect(path).map_err(|source| CtlError::Connect { path: path.to_path_buf(), source })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{}\n", line.trim()).as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(CtlError::NoAnswer(path.to_path_buf()));
    }
    match out.strip_prefix("error: ") {
        Some(e) => Err(CtlError::Refused(e.trim_end().to_string())),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two `run`s starting together both find no one listening on the socket: the claim lets
    /// one through, refuses the other while the first lives, and is free again after it.
    #[test]
    fn one_claim_per_socket_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("ctl.sock");
        let first = claim(&path).expect("the first claim");
        assert!(path.parent().unwrap().is_dir(), "the socket's directory is made");
        // Nothing listens yet: `free` alone would let the second one through.
        assert!(!free(&path).unwrap());
        assert!(matches!(claim(&path), Err(CtlError::InUse(p)) if p == path));
        drop(first);
        let again = claim(&path).expect("claimed again once the first is gone");
        drop(again);
        // A live socket is still refused with the claim free (a `run` of an older version).
        let _l = UnixListener::bind(&path).unwrap();
        assert!(matches!(claim(&path), Err(CtlError::InUse(_))));
    }

    /// The socket appears at its path already listening, mode 0600, under a name of its own
    /// first (a stale one, left by a `run` killed between its bind and its rename, replaced),
    /// and nothing is left under that name.
    #[test]
    fn the_socket_appears_listening_at_its_path() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let tmp = dir.path().join("ctl.sock.new");
        drop(UnixListener::bind(&tmp).unwrap());
        let l = bind_private(&path).expect("bound");
        assert!(!tmp.exists(), "the temporary name is left");
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let _c = UnixStream::connect(&path).expect("connects at its path");
        l.set_nonblocking(true).unwrap();
        assert!(l.accept().is_ok(), "the connection reached the listener");
    }
}
