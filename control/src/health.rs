//! The HTTP endpoint of `switchyard run --metrics ADDR`: `GET /metrics` (the Prometheus text
//! exposition of [`crate::metrics::render`]), `GET /healthz` (liveness) and `GET /readyz`
//! (readiness), for Prometheus and the kubelet's probes.
//!
//! Rules: `/healthz` answers 200 while every worker has polled within
//! [`HealthOptions::worker_stall`] (1 s) and the control loop has turned within
//! [`HealthOptions::control_stall`]; 503 otherwise, naming what is stuck. `/readyz` answers
//! 200 once a full plan was applied (taken by every worker) and the CNI ports were restored,
//! 503 before. Neither takes a lock that a worker or the control thread takes (see
//! [`crate::metrics`]), so a stuck control loop cannot hang its own probe.
//!
//! The server is std's `TcpListener`, HTTP/1.1 with `Connection: close`, a thread per
//! connection: three GET routes for a scraper and a kubelet need no framework and no async
//! runtime, and keeping it apart from any runtime the control side uses means it still answers
//! when that one is stuck.
//!
//! The port is on the node's network (the DaemonSet runs with `hostNetwork`), so any pod may
//! connect; a failed liveness probe restarts the switch, and with it every VM's network. So no
//! client may keep a probe from being answered:
//! - a request head must arrive within [`READ_TIMEOUT`] of the accept, all of it (a client
//!   that sends a byte now and then is cut off at that deadline, not kept while it trickles),
//!   and an answer must be taken within [`WRITE_TIMEOUT`], all of it;
//! - at most [`MAX_CONNECTIONS`] are served at once; a connection beyond that closes the
//!   *oldest* one open, not itself. A probe's request arrives with its connection, so it is
//!   answered unless that many newer connections arrive while its thread reads it, where a
//!   limit that refused the newest would let a handful of idle connections refuse every probe.

use crate::metrics::{render, ControlStats};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use switchyard_dataplane::worker::EngineView;

/// The routes.
pub const METRICS_PATH: &str = "/metrics";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

/// How long a client may take to send its whole request head, from the accept.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the whole answer (Prometheus' default scrape timeout).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; one more closes the oldest.
pub const MAX_CONNECTIONS: usize = 16;
/// The request head's size limit.
const MAX_HEAD: u64 = 16 * 1024;

/// When `/healthz` fails.
#[derive(Debug, Clone, Copy)]
pub struct HealthOptions {
    /// A worker that has not polled for longer is stalled.
    pub worker_stall: Duration,
    /// A control loop that has not turned for longer is stuck. Generous: one reconcile of a
    /// large state takes seconds, and a failed liveness probe restarts the whole switch.
    pub control_stall: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions { worker_stall: Duration::from_secs(1), control_stall: Duration::from_secs(30) }
    }
}

/// Failures of starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("--metrics {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the endpoint reads.
#[derive(Clone)]
pub struct Observed {
    pub engine: EngineView,
    pub control: Arc<ControlStats>,
    pub opts: HealthOptions,
}

impl Observed {
    /// `/healthz`: None when healthy, else what is stuck.
    pub fn unhealthy(&self) -> Option<String> {
        let mut bad = Vec::new();
        for (w, age) in self.engine.poll_ages().iter().enumerate() {
            if *age > self.opts.worker_stall {
                bad.push(format!("worker {w} has not polled for {:.1} s", age.as_secs_f64()));
            }
        }
        let c = self.control.since_beat();
        if c > self.opts.control_stall {
            bad.push(format!("the control loop has not turned for {:.1} s", c.as_secs_f64()));
        }
        (!bad.is_empty()).then(|| bad.join("\n"))
    }

    /// `/readyz`: None when ready, else what is missing.
    pub fn not_ready(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.control.applied() {
            missing.push("no full plan applied yet".to_string());
            // A kind whose list is refused (403: RBAC) keeps the first plan back for good.
            let unlisted = self.control.api_unlisted();
            if !unlisted.is_empty() {
                missing.push(format!(
                    "waiting for the first complete list of {} from the Kubernetes API",
                    unlisted.join(", ")
                ));
            }
        }
        if !self.control.cni_restored() {
            missing.push("CNI ports not restored yet".to_string());
        }
        (!missing.is_empty()).then(|| missing.join("\n"))
    }

    /// The answer to `GET path`: status, content type, body.
    pub fn answer(&self, path: &str) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        let check = |r: Option<String>| match r {
            None => (200, TEXT, "ok\n".to_string()),
            Some(why) => (503, TEXT, why + "\n"),
        };
        match path {
            METRICS_PATH => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                render(&self.engine, &self.control, self.not_ready().is_none()),
            ),
            HEALTHZ_PATH => check(self.unhealthy()),
            READYZ_PATH => check(self.not_ready()),
            _ => (404, TEXT, "not found: /metrics, /healthz, /readyz\n".to_string()),
        }
    }
}

/// The listening endpoint and its thread; dropping it stops it.
pub struct HealthServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthServer {
    /// Listens on `addr` (`HOST:PORT`; port 0 picks one, see [`HealthServer::addr`]).
    pub fn start(addr: &str, obs: Observed) -> Result<HealthServer, HealthError> {
        let l = TcpListener::bind(addr).map_err(|source| HealthError::Bind { addr: addr.into(), source })?;
        let bound = l.local_addr().map_err(|source| HealthError::Bind { addr: addr.into(), source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sy-metrics".into())
            .spawn(move || accept_loop(l, obs, st))
            .map_err(HealthError::Thread)?;
        Ok(HealthServer { addr: bound, stop, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            // Wake the blocking accept.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
    }
}

/// The connections being served, oldest first: an id and a handle to shut each one down.
#[derive(Default)]
struct Open {
    next: u64,
    conns: VecDeque<(u64, TcpStream)>,
}

fn accept_loop(l: TcpListener, obs: Observed, stop: Arc<AtomicBool>) {
    let open = Arc::new(Mutex::new(Open::default()));
    for conn in l.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(s) = conn else { continue };
        let Ok(handle) = s.try_clone() else { continue };
        let id = {
            let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
            if o.conns.len() >= MAX_CONNECTIONS {
                // The oldest has had the longest to send its head or take its answer; its
                // thread sees the shutdown at its next read or write and ends.
                if let Some((_, oldest)) = o.conns.pop_front() {
                    let _ = oldest.shutdown(Shutdown::Both);
                }
            }
            o.next += 1;
            let id = o.next;
            o.conns.push_back((id, handle));
            id
        };
        let (obs, done) = (obs.clone(), open.clone());
        let forget = move |done: &Mutex<Open>| {
            let mut o = done.lock().unwrap_or_else(|p| p.into_inner());
            o.conns.retain(|(i, _)| *i != id);
        };
        let spawned = std::thread::Builder::new().name("sy-http".into()).spawn({
            let done = done.clone();
            move || {
                serve_one(s, &obs);
                forget(&done);
            }
        });
        if spawned.is_err() {
            forget(&done);
        }
    }
}

/// A stream read under one deadline for all its reads (a socket's own timeout bounds each
/// read alone).
struct Deadline<'a> {
    s: &'a TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    /// The time left, as a socket timeout; an error once it has passed.
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }

    /// Writes all of `buf` before the deadline.
    fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            self.s.set_write_timeout(Some(self.left()?))?;
            match (&mut &*self.s).write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.s.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.s).read(buf)
    }
}

/// Reads one request head and answers it; the connection is closed after the answer.
fn serve_one(s: TcpStream, obs: &Observed) {
    let mut r = BufReader::new(Deadline { s: &s, until: Instant::now() + READ_TIMEOUT }.take(MAX_HEAD));
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    // The headers carry nothing these routes use; read them so the client is not reset.
    let mut h = String::new();
    loop {
        h.clear();
        match r.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h.trim_end().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match method {
        "GET" | "HEAD" => obs.answer(path),
        _ => (405, "text/plain; charset=utf-8", "only GET\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let w = Deadline { s: &s, until: Instant::now() + WRITE_TIMEOUT };
    if w.write_all(head.as_bytes()).is_ok() && method != "HEAD" {
        let _ = w.write_all(body.as_bytes());
    }
}
