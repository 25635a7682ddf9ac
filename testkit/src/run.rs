//! A `switchyard run` process for end-to-end tests: its control socket, vhost-user directory
//! and CNI state in one directory of the test's, its log in `run.log` there; killed (and
//! reaped) when dropped, so that a failing test leaves no process behind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `switchyard run`.
pub struct RunProcess {
    /// The `switchyard` binary (`ctl` runs it too).
    pub bin: PathBuf,
    pub child: Child,
    /// Its control socket (`DIR/ctl.sock`).
    pub sock: PathBuf,
    /// Its stderr (`DIR/run.log`).
    pub log: PathBuf,
}

impl RunProcess {
    /// `BIN run ARGS --socket DIR/ctl.sock --vhost-dir DIR/vhost --cni-state DIR/cni`, logging
    /// at `info` without colour; returns once the control socket exists (panics with the log
    /// after `wait`).
    pub fn spawn<I, S>(bin: &str, dir: &Path, args: I, wait: Duration) -> RunProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_under(&[], bin, dir, args, wait)
    }

    /// [`RunProcess::spawn`] with the command run by `wrapper` (e.g. `taskset -c 1`); `child`
    /// is then the wrapper's process, which `exec`s switchyard.
    pub fn spawn_under<I, S>(wrapper: &[&str], bin: &str, dir: &Path, args: I, wait: Duration) -> RunProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let sock = dir.join("ctl.sock");
        let log = dir.join("run.log");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("run")
            .args(args)
            .arg("--socket")
            .arg(&sock)
            .arg("--vhost-dir")
            .arg(dir.join("vhost"))
            .arg("--cni-state")
            .arg(dir.join("cni"))
            .env("SWITCHYARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("run.log"))
            .spawn()
            .expect("spawn switchyard run");
        let r = RunProcess { bin: bin.into(), child, sock, log };
        r.wait_for("the control socket", wait, || r.sock.exists());
        r
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `cond` every 20 ms until it holds; panics with the log after `wait`.
    pub fn wait_for(&self, what: &str, wait: Duration, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while t.elapsed() < wait {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}; log:\n{}", self.log());
    }

    /// `switchyard ctl --socket SOCK ARGS`, which must succeed; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin).arg("ctl").arg("--socket").arg(&self.sock).args(args).output();
        let out = out.expect("run switchyard ctl");
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("ctl prints UTF-8")
    }

    /// Runs `ctl ARGS` until `cond` holds on its output (bounded by `wait`); the last output.
    pub fn wait_ctl(&self, args: &[&str], what: &str, wait: Duration, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        self.wait_for(what, wait, || {
            last = self.ctl(args);
            cond(&last)
        });
        last
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
