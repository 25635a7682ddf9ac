//! The world of the plugin's tests: a real `switchyard run` daemon per test (a static switch
//! with bridge `br1` and no ports), network namespaces as pods, the plugin run as a runtime
//! runs it, either through libcni (the Go library Multus, containerd and CRI-O use, driven by
//! tests/driver/main.go) or by the spec's environment variables and stdin directly, and the
//! IPAM plugins of Debian's containernetworking-plugins.
//!
//! The daemon binary is the workspace's `switchyard`, next to this crate's plugin binary in
//! the target directory: build the workspace (`cargo build --workspace`, as scripts/test.sh
//! does) before running these tests alone.
//!
//! Every wait is bounded; every namespace, daemon and temporary directory goes away on drop.
#![allow(dead_code)]

use crate::kports_common;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_switchyard-cni");
/// Debian's containernetworking-plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";
/// Debian's golang-github-appc-cni-dev: libcni's source, for a GOPATH-mode build.
pub const GOPATH: &str = "/usr/share/gocode";
const LIBCNI: &str = "/usr/share/gocode/src/github.com/containernetworking/cni/libcni";
const WAIT: Duration = Duration::from_secs(10);

/// Why these tests cannot run here: not root, no `ip`, no Go, no libcni source, no IPAM
/// plugins (scripts/setup.sh installs the last three).
pub fn skip_reason() -> Option<String> {
    if let Some(why) = kports_common::skip_reason() {
        return Some(why);
    }
    match Command::new("go").arg("version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("no Go toolchain (Debian: golang-go)".into()),
    }
    if !Path::new(LIBCNI).is_dir() {
        return Some(format!("no libcni source at {LIBCNI} (Debian: golang-github-appc-cni-dev)"));
    }
    if !Path::new(SYSTEM_CNI_DIR).join("host-local").is_file() {
        return Some(format!(
            "no host-local IPAM plugin in {SYSTEM_CNI_DIR} (Debian: containernetworking-plugins)"
        ));
    }
    None
}

/// The target directory's profile folder (where both binaries are).
fn bin_dir() -> PathBuf {
    Path::new(PLUGIN).parent().expect("the plugin binary's directory").to_path_buf()
}

/// The daemon binary, built by the workspace next to the plugin.
pub fn daemon_bin() -> PathBuf {
    let p = bin_dir().join("switchyard");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (cargo build --workspace) before the plugin's tests",
        p.display()
    );
    p
}

/// The libcni driver, built once per version of its source (GOPATH mode, offline), cached in
/// the target directory. Concurrent test processes each build to a temporary name and rename.
pub fn driver() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/driver");
    let text = std::fs::read(src.join("main.go")).expect("tests/driver/main.go");
    let hash =
        text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let out = bin_dir().join(format!("cni-test-driver-{hash:016x}"));
    if out.is_file() {
        return out;
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let o = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOFLAGS", "")
        // Go's build cache in the target directory: no dependence on $HOME.
        .env("GOCACHE", bin_dir().join("go-build-cache"))
        .output()
        .expect("run go build");
    assert!(o.status.success(), "building the libcni driver failed:\n{}", String::from_utf8_lossy(&o.stderr));
    std::fs::rename(&tmp, &out).expect("install the driver");
    out
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique on this machine for this process: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Polls `cond` every 20 ms until it holds or `WAIT` passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pod: a network namespace (`ip netns`), removed on drop with whatever is left in it.
pub struct Pod {
    pub ns: String,
    pub path: String,
    pub id: String,
    /// Its Kubernetes name (CNI_ARGS K8S_POD_NAME); the namespace is always `test`.
    pub name: String,
}

impl Pod {
    pub fn new(name: &str) -> Pod {
        let ns = unique("sycni");
        kports_common::ip(&["netns", "add", &ns]).expect("ip netns add");
        Pod {
            path: format!("/run/netns/{ns}"),
            id: unique("ctr"),
            name: format!("{name}-{}", std::process::id()),
            ns,
        }
    }

    /// CNI_ARGS as Multus passes them.
    pub fn cni_args(&self) -> String {
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={}", self.name)
    }

    /// The switch port name of this pod's interface `ifname`.
    pub fn port(&self, ifname: &str) -> String {
        format!("test/{}/{ifname}", self.name)
    }

    /// Names of the links in the pod (lo left out).
    pub fn links(&self) -> Vec<String> {
        let o = Command::new("ip").args(["-n", &self.ns, "-o", "link", "show"]).output().expect("ip link");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo")
            .collect()
    }

    /// The IPv4 address (without prefix) of `ifname`.
    pub fn ipv4(&self, ifname: &str) -> String {
        let o = Command::new("ip")
            .args(["-n", &self.ns, "-o", "-4", "addr", "show", "dev", ifname])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        s.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on {ifname} in {}: {s}", self.ns))
            .to_string()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = kports_common::ip(&["netns", "del", &self.ns]);
    }
}

/// Whether a host interface exists.
pub fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// What a plugin run printed and its exit status.
#[derive(Debug)]
pub struct Run {
    /// The plugin's own output (not libcni's rendering of it).
    pub direct: bool,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts success; the stdout as JSON (null when empty).
    pub fn ok(&self) -> Value {
        assert_eq!(self.status, 0, "the plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a failure with the spec's error object of `code` whose message contains
    /// `needle`; that object.
    pub fn err(&self, code: u64, needle: &str) -> Value {
        assert_ne!(self.status, 0, "expected error {code}: {self:?}");
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "{self:?}");
        if self.direct {
            assert!(v["cniVersion"].is_string(), "{self:?}");
        }
        let msg = v["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "the message does not name {needle:?}: {self:?}");
        v
    }
}

/// One node: the daemon (`switchyard run --switch`), its socket, CNI state and vhost
/// directories, a CNI bin directory (the plugin installed as `switchyard`, the IPAM plugins),
/// libcni's cache and the IPAM data.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub state: PathBuf,
    pub vhost: PathBuf,
    pub cni_bin: PathBuf,
    pub cache: PathBuf,
    pub ipam_data: PathBuf,
    daemon: Option<Child>,
    starts: u32,
    /// A command the daemon runs under (`setpriv ...`), empty for none.
    pub daemon_wrap: Vec<String>,
}

impl Node {
    /// A node whose daemon runs.
    pub fn start() -> Node {
        let mut n = Node::stopped();
        n.start_daemon();
        n
    }

    /// A node whose daemon runs under `wrap` (a command that execs the rest of its arguments,
    /// as `setpriv` does).
    pub fn start_wrapped(wrap: &[&str]) -> Node {
        let mut n = Node::stopped();
        n.daemon_wrap = wrap.iter().map(|s| s.to_string()).collect();
        n.start_daemon();
        n
    }

    /// A node whose daemon does not run (yet).
    pub fn stopped() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        std::fs::write(d.join("switch.yaml"), "bridges:\n  - name: br1\n    ports: []\n").unwrap();
        let cni_bin = d.join("bin");
        std::fs::create_dir(&cni_bin).unwrap();
        std::os::unix::fs::symlink(PLUGIN, cni_bin.join("switchyard")).unwrap();
        for p in ["host-local", "static"] {
            std::os::unix::fs::symlink(Path::new(SYSTEM_CNI_DIR).join(p), cni_bin.join(p)).unwrap();
        }
        Node {
            sock: d.join("ctl.sock"),
            state: d.join("cni-state"),
            vhost: d.join("vhost"),
            cache: d.join("libcni-cache"),
            ipam_data: d.join("ipam"),
            cni_bin,
            dir,
            daemon: None,
            starts: 0,
            daemon_wrap: Vec::new(),
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("run{}.log", self.starts))
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts the daemon and waits until it answers `status` ready.
    pub fn start_daemon(&mut self) {
        self.spawn_daemon();
        self.wait_ready(WAIT);
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn_daemon(&mut self) {
        assert!(self.daemon.is_none(), "the daemon runs already");
        self.starts += 1;
        let mut cmd = match self.daemon_wrap.split_first() {
            None => Command::new(daemon_bin()),
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(daemon_bin());
                c
            }
        };
        let child = cmd
            .arg("run")
            .arg("--switch")
            .arg(self.dir.path().join("switch.yaml"))
            .arg("--socket")
            .arg(&self.sock)
            .arg("--cni-state")
            .arg(&self.state)
            .arg("--vhost-dir")
            .arg(&self.vhost)
            .env("SWITCHYARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap())
            .spawn()
            .expect("spawn switchyard run");
        self.daemon = Some(child);
    }

    /// Waits (polling every 20 ms, at most `limit`) until the daemon answers `status` ready.
    pub fn wait_ready(&self, limit: Duration) {
        let t = Instant::now();
        loop {
            if let Ok(v) = self.try_request(&json!({"v": 1, "op": "status"})) {
                if v["ready"] == true {
                    return;
                }
            }
            assert!(t.elapsed() < limit, "the daemon did not get ready; log:\n{}", self.daemon_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Stops the daemon (SIGTERM, bounded wait).
    pub fn stop_daemon(&mut self) {
        self.stop_daemon_within(WAIT);
    }

    /// Stops the daemon: SIGTERM, then at most `limit` for it to exit.
    pub fn stop_daemon_within(&mut self, limit: Duration) {
        let mut c = self.daemon.take().expect("the daemon runs");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while c.try_wait().expect("wait").is_none() {
            if t.elapsed() > limit {
                // Not left behind: killed before the failure is reported.
                let _ = c.kill();
                let _ = c.wait();
                panic!("the daemon did not stop on SIGTERM in {limit:?}; log:\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One JSON request to the daemon: its answer, or why there is none (not answering yet).
    pub fn try_request(&self, req: &Value) -> std::io::Result<Value> {
        let mut s = UnixStream::connect(&self.sock)?;
        s.set_read_timeout(Some(WAIT))?;
        s.write_all(format!("{req}\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    /// One JSON request to the daemon; its answer.
    pub fn request(&self, req: &Value) -> Value {
        self.try_request(req).unwrap_or_else(|e| panic!("request {req}: {e}; log:\n{}", self.daemon_log()))
    }

    /// The CNI ports the daemon has, by name (sorted).
    pub fn cni_ports(&self) -> Vec<Value> {
        let a = self.request(&json!({"v": 1, "op": "cni_list"}));
        assert_eq!(a["ok"], true, "{a}");
        let mut ports: Vec<Value> =
            a["ports"].as_array().expect("ports").iter().map(|p| p["cni"].clone()).collect();
        ports.sort_by_key(|p| p["port"]["name"].as_str().unwrap_or_default().to_string());
        ports
    }

    pub fn cni_port_names(&self) -> Vec<String> {
        self.cni_ports().iter().map(|p| p["port"]["name"].as_str().unwrap().to_string()).collect()
    }

    /// `switchyard ctl ARGS` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> String {
        let o = Command::new(daemon_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A plugin configuration for network `name` on br1 of this node: `extra` keys added
    /// (a `null` value removes a key).
    pub fn conf(&self, version: &str, name: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version, "name": name, "type": "switchyard", "bridge": "br1",
            "socket": self.sock, "stateDir": self.state,
        });
        let o = c.as_object_mut().unwrap();
        for (k, v) in extra.as_object().expect("extra keys").clone() {
            if v.is_null() {
                o.remove(&k);
            } else {
                o.insert(k, v);
            }
        }
        c
    }

    /// host-local IPAM over `subnet`, handing out `first`..`last`, its data kept per network.
    pub fn host_local(&self, network: &str, subnet: &str, first: &str, last: &str) -> Value {
        json!({"type": "host-local", "dataDir": self.ipam_data.join(network),
               "ranges": [[{"subnet": subnet, "rangeStart": first, "rangeEnd": last}]]})
    }

    /// The IPAM leases host-local holds for `network` (its files other than its bookkeeping).
    pub fn leases(&self, network: &str) -> Vec<String> {
        let d = self.ipam_data.join(network);
        let Ok(rd) = std::fs::read_dir(&d) else { return Vec::new() };
        let mut v = Vec::new();
        for sub in rd.flatten() {
            for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n != "lock" && !n.starts_with("last_reserved_ip") {
                    v.push(n);
                }
            }
        }
        v
    }

    /// Writes `conf` as a file for libcni (`<name>.conf`).
    pub fn conf_file(&self, conf: &Value) -> PathBuf {
        let p = self.dir.path().join(format!("{}.conf", conf["name"].as_str().unwrap()));
        std::fs::write(&p, conf.to_string()).unwrap();
        p
    }

    /// libcni runs `op` (add, check, del) for `pod`'s `ifname` on network `conf`, with
    /// capability arguments `cap` (`{}` for none).
    pub fn libcni(&self, op: &str, conf: &Value, pod: &Pod, ifname: &str, cap: Value) -> Run {
        let file = self.conf_file(conf);
        let o = Command::new(driver())
            .args(["-op", op, "-conf"])
            .arg(&file)
            .arg("-path")
            .arg(&self.cni_bin)
            .arg("-cache")
            .arg(&self.cache)
            .args(["-id", &pod.id, "-netns", &pod.path, "-ifname", ifname, "-args", &pod.cni_args()])
            .args(["-cap", &cap.to_string()])
            .output()
            .expect("run the libcni driver");
        run_of(o, false)
    }

    /// The plugin run directly, as a CNI 1.1 runtime runs it: `CNI_COMMAND=command`, the
    /// variables `env`, `stdin` on stdin.
    pub fn plugin(&self, command: &str, env: &[(&str, &str)], stdin: &[u8]) -> Run {
        let mut cmd = Command::new(PLUGIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CNI_COMMAND", command).env("CNI_PATH", &self.cni_bin);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the plugin");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        run_of(child.wait_with_output().unwrap(), true)
    }

    /// The plugin run directly for `pod`'s `ifname`.
    pub fn plugin_for(&self, command: &str, pod: &Pod, ifname: &str, conf: &Value) -> Run {
        let args = pod.cni_args();
        let env = [
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_NETNS", pod.path.as_str()),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args.as_str()),
        ];
        self.plugin(command, &env, conf.to_string().as_bytes())
    }

    /// The state directory's file names (sorted).
    pub fn state_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.state)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The per-port drop counters line of `port` in `ctl show stats`.
    pub fn drops_of(&self, port: &str) -> String {
        let stats = self.ctl(&["show", "stats"]);
        let mut lines = stats.lines();
        while let Some(l) = lines.next() {
            if l.starts_with(&format!("port {port} ")) {
                return lines.next().unwrap_or_default().trim().to_string();
            }
        }
        panic!("no port {port} in show stats:\n{stats}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_of(o: std::process::Output, direct: bool) -> Run {
    Run {
        direct,
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Whether a TCP connection from `from` reaches `to_ip` (a listener in `to`) within `within`.
pub fn tcp_reachable(from: &Pod, to: &Pod, to_ip: &str, within: Duration) -> bool {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let port = 7000;
    let listener =
        kports_common::in_netns(&to.ns, || TcpListener::bind((to_ip, port)).map_err(|e| e.to_string()))
            .expect("listen in the target pod");
    let addr: SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
    let t = Instant::now();
    let reached = kports_common::in_netns(&from.ns, || loop {
        let left = within.saturating_sub(t.elapsed());
        if left.is_zero() {
            return Ok(false);
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_millis(500))) {
            Ok(_) => return Ok(true),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    });
    // The listener lives until the attempts are over (the kernel completes the handshake).
    drop(listener);
    reached.unwrap()
}
