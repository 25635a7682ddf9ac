//! `switchyard run --metrics` end to end: a `run --switch` process with frames flowing
//! (a pcap port replaying a capture forever), its `/metrics` checked by Prometheus's own
//! `promtool` while under load and compared with `ctl show stats` once the traffic stopped;
//! `/healthz` failing while a worker thread, then the control thread, is really stopped
//! (ptrace stops that one thread of the running process; the others, the HTTP server's among
//! them, go on); `--log-format json`. Every wait is bounded.

use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::frame::Frame;
use testkit::http::get;
use testkit::run::RunProcess;

#[path = "../control/tests/apiserver/mod.rs"]
mod apiserver;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WAIT: Duration = Duration::from_secs(10);

struct Run {
    /// Declared first: the process is killed before its directory goes.
    p: RunProcess,
    dir: tempfile::TempDir,
    metrics: SocketAddr,
}

impl std::ops::Deref for Run {
    type Target = RunProcess;
    fn deref(&self) -> &RunProcess {
        &self.p
    }
}

impl Run {
    /// `run --switch DIR/switch.yaml --metrics 127.0.0.1:0` (the bound address read from the
    /// log), with `extra` arguments.
    fn start(yaml: &str, extra: &[&str]) -> Run {
        Run::start_under(&[], yaml, extra)
    }

    /// [`Run::start`] with the command run by `wrapper` (e.g. `taskset -c 1`).
    fn start_under(wrapper: &[&str], yaml: &str, extra: &[&str]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let switch = dir.path().join("switch.yaml");
        std::fs::write(&switch, yaml).unwrap();
        Run::start_with(wrapper, dir, vec!["--switch".into(), switch.into()], extra)
    }

    /// `run` with the source arguments `source` (files in `dir`) and `extra`, as [`Run::start`].
    fn start_with(wrapper: &[&str], dir: tempfile::TempDir, mut args: Vec<OsString>, extra: &[&str]) -> Run {
        args.extend(
            ["--metrics", "127.0.0.1:0", "--log-format", "json"].iter().chain(extra).map(OsString::from),
        );
        let p = RunProcess::spawn_under(wrapper, BIN, dir.path(), args, WAIT);
        let mut r = Run { p, dir, metrics: "127.0.0.1:1".parse().unwrap() };
        let mut addr = None;
        r.wait_for("the metrics address in the log", || {
            addr = r.json_log().iter().find_map(|l| l["fields"]["addr"].as_str().map(str::to_string));
            addr.is_some()
        });
        r.metrics = addr.unwrap().parse().unwrap();
        r
    }

    /// Every log line, each of which must be one JSON object.
    fn json_log(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }

    fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        self.p.wait_for(what, WAIT, cond);
    }

    fn get(&self, path: &str) -> (u16, String) {
        get(self.metrics, path).unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    /// The thread of the running process named `comm`.
    fn thread(&self, comm: &str) -> Pid {
        let task = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        for e in std::fs::read_dir(&task).unwrap() {
            let e = e.unwrap();
            if std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim() == comm {
                return Pid::from_raw(e.file_name().to_str().unwrap().parse().unwrap());
            }
        }
        panic!("no thread {comm} in {}", task.display());
    }
}

/// One thread of another process held stopped (ptrace); released when dropped.
struct Stopped(Pid);

impl Stopped {
    fn stop(tid: Pid) -> Stopped {
        ptrace::seize(tid, ptrace::Options::empty()).unwrap();
        ptrace::interrupt(tid).unwrap();
        // The thread is in its ptrace stop once waitpid reports it.
        waitpid(tid, Some(WaitPidFlag::__WALL)).unwrap();
        Stopped(tid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = ptrace::detach(self.0, None);
    }
}

/// Metric samples: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn promtool_check(scrape: &str, dir: &Path) {
    let f = dir.join("scrape.txt");
    std::fs::write(&f, scrape).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&f).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A capture of three frames from 02:..:01: to an unknown unicast MAC (flooded), broadcast
/// (flooded), and one with a multicast source (dropped: invalid_src_mac).
fn write_input(path: &Path) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let a = [2, 0, 0, 0, 0, 1];
    let frames = [
        Frame::new([2, 0, 0, 0, 0, 9], a).ethertype(0x0800).pad(60, 0).build(),
        Frame::new([0xff; 6], a).ethertype(0x0800).pad(100, 0).build(),
        Frame::new([2, 0, 0, 0, 0, 9], [1, 0, 0, 0, 0, 1]).ethertype(0x0800).pad(60, 0).build(),
    ];
    let mut w = PcapWriter::with_header(std::fs::File::create(path).unwrap(), PcapHeader::default()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(Duration::from_micros(i as u64), f.len() as u32, f)).unwrap();
    }
}

fn switch_yaml(dir: &Path, p0: &str) -> String {
    format!(
        "bridges:\n  - name: br0\n    ports:\n      - {p0}\n      - {{name: p1, type: pcap, tx_pcap: {}}}\n      - {{name: p2, type: ring}}\n",
        dir.join("p1.pcap").display()
    )
}

/// `ctl show stats` as samples named like the scrape's.
fn ctl_samples(stats: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut port = String::new();
    for l in stats.lines() {
        let w: Vec<&str> =
            l.split(|c: char| c.is_whitespace() || c == ',' || c == ':').filter(|w| !w.is_empty()).collect();
        if w.first() == Some(&"port") {
            // port NAME (bridge BR): rx N pkts N bytes, tx N pkts N bytes, flooded N, learned N, ...
            port = format!("{{bridge=\"{}\",port=\"{}\"}}", w[3].trim_end_matches(')'), w[1]);
            let num = |i: usize| w[i].parse::<f64>().unwrap();
            m.insert(format!("switchyard_port_rx_packets_total{port}"), num(5));
            m.insert(format!("switchyard_port_rx_bytes_total{port}"), num(7));
            m.insert(format!("switchyard_port_tx_packets_total{port}"), num(10));
            m.insert(format!("switchyard_port_tx_bytes_total{port}"), num(12));
            for pair in w[14..].chunks(2) {
                m.insert(format!("switchyard_port_{}_total{port}", pair[0]), pair[1].parse().unwrap());
            }
        } else if w.first() == Some(&"drops") {
            for kv in &w[2..] {
                let (r, n) = kv.split_once('=').unwrap();
                let labels = port.trim_end_matches('}');
                m.insert(format!("switchyard_port_drops_total{labels},reason=\"{r}\"}}"), n.parse().unwrap());
            }
        } else if w.first() == Some(&"worker") {
            // worker N (core C): busy N cycles, idle N cycles (...), rx N forwarded N, ...
            let core = w[3].trim_end_matches(')');
            let core = if core == "-" { "none" } else { core };
            let labels = format!("{{worker=\"{}\",core=\"{core}\"}}", w[1]);
            m.insert(format!("switchyard_worker_busy_cycles_total{labels}"), w[5].parse().unwrap());
            let rx = w.iter().position(|x| *x == "rx").unwrap();
            m.insert(format!("switchyard_worker_rx_packets_total{labels}"), w[rx + 1].parse().unwrap());
        }
    }
    m
}

#[test]
fn a_scrape_under_load_passes_promtool_and_equals_ctl_show_stats() {
    if let Err(why) = testkit::probe::promtool() {
        return testkit::skip("a_scrape_under_load_passes_promtool_and_equals_ctl_show_stats", &why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.pcap");
    write_input(&input);
    let p0 = format!("{{name: p0, type: pcap, rx_pcap: {}, infinite: true}}", input.display());
    let r = Run::start(&switch_yaml(tmp.path(), &p0), &[]);
    r.wait_for("/readyz", || r.get("/readyz").0 == 200);
    assert_eq!(r.get("/healthz"), (200, "ok\n".to_string()));
    // Under load: p0's counter moves between two scrapes.
    let rx = "switchyard_port_rx_packets_total{bridge=\"br0\",port=\"p0\"}";
    let first = samples(&r.get("/metrics").1)[rx];
    let mut scrape = String::new();
    r.wait_for("frames flowing", || {
        scrape = r.get("/metrics").1;
        samples(&scrape)[rx] > first + 1000.0
    });
    promtool_check(&scrape, tmp.path());
    let s = samples(&scrape);
    for name in [
        "switchyard_port_flooded_total{bridge=\"br0\",port=\"p0\"}",
        "switchyard_port_tx_packets_total{bridge=\"br0\",port=\"p2\"}",
        "switchyard_port_drops_total{bridge=\"br0\",port=\"p0\",reason=\"invalid_src_mac\"}",
        "switchyard_port_learned_total{bridge=\"br0\",port=\"p0\"}",
        "switchyard_bridge_mac_entries{bridge=\"br0\"}",
        "switchyard_reconciles_total",
        "switchyard_reconcile_duration_seconds_count",
    ] {
        assert!(s.get(name).is_some_and(|v| *v >= 1.0), "{name} missing or 0 in:\n{scrape}");
    }
    assert_eq!(s["switchyard_ready"], 1.0);
    assert_eq!(s["switchyard_reconcile_errors_total"], 0.0);

    // Stop the traffic: p0 becomes a ring port (its counters stay, no frame comes in).
    std::fs::write(r.dir.path().join("switch.yaml.new"), switch_yaml(tmp.path(), "{name: p0, type: ring}"))
        .unwrap();
    std::fs::rename(r.dir.path().join("switch.yaml.new"), r.dir.path().join("switch.yaml")).unwrap();
    r.wait_for("p0 to become a ring port", || {
        r.ctl(&["show", "ports"]).lines().any(|l| l.starts_with("p0") && l.contains("ring"))
    });
    let mut prev = -1.0;
    r.wait_for("the counters to settle", || {
        std::thread::sleep(Duration::from_millis(200));
        let now = samples(&r.get("/metrics").1)[rx];
        std::mem::replace(&mut prev, now) == now
    });
    let stats = r.ctl(&["show", "stats"]);
    let scrape = r.get("/metrics").1;
    promtool_check(&scrape, tmp.path());
    let (want, got) = (ctl_samples(&stats), samples(&scrape));
    // Every port counter of `show stats` (zeros are not listed for drops), the workers' busy
    // cycles and received frames.
    assert!(want.len() > 30, "parsed too little of:\n{stats}");
    // The scrape leaves out the counters that are zero on a healthy port until they are not.
    let conditional =
        ["_moved_in_total", "_static_conflicts_total", "_mac_limit_hits_total", "_fdb_full_total"];
    for (k, v) in &want {
        match got.get(k) {
            Some(g) => assert_eq!(g, v, "{k}: ctl says {v}\nctl:\n{stats}\nscrape:\n{scrape}"),
            None => {
                assert!(*v == 0.0 && conditional.iter().any(|c| k.contains(c)), "{k} ({v}) not in:\n{scrape}")
            }
        }
    }
    // And every drop counter of the scrape is one that `show stats` lists.
    for (k, v) in got.iter().filter(|(k, _)| k.starts_with("switchyard_port_drops_total")) {
        assert_eq!(want.get(k), Some(v), "{k}");
    }
    assert!(want[rx] > 1000.0);
}

/// A port that cannot open (its capture is missing) is in the scrape as down, and in
/// `ctl show problems` with its error; once the capture exists, the next reconcile's retry
/// opens it and the gauge says so.
#[test]
fn a_down_port_is_a_zero_in_port_up_and_a_line_in_show_problems() {
    if let Err(why) = testkit::probe::promtool() {
        return testkit::skip("a_down_port_is_a_zero_in_port_up_and_a_line_in_show_problems", &why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("later.pcap");
    let p0 = format!("{{name: p0, type: pcap, rx_pcap: {}}}", input.display());
    let r = Run::start(&switch_yaml(tmp.path(), &p0), &[]);
    let up = |p: &str| format!("switchyard_port_up{{bridge=\"br0\",port=\"{p}\"}}");
    let mut scrape = String::new();
    r.wait_for("a scrape with p0", || {
        scrape = r.get("/metrics").1;
        samples(&scrape).contains_key(&up("p0"))
    });
    promtool_check(&scrape, tmp.path());
    let s = samples(&scrape);
    assert_eq!((s[&up("p0")], s[&up("p1")], s[&up("p2")]), (0.0, 1.0, 1.0), "{scrape}");
    let problems = r.ctl(&["show", "problems"]);
    let line =
        problems.lines().find(|l| l.starts_with("down: port p0: ")).unwrap_or_else(|| panic!("{problems}"));
    assert!(line.contains("later.pcap"), "{line}");
    assert!(!problems.contains("down: port p1") && !problems.contains("down: port p2"), "{problems}");

    write_input(&input);
    r.wait_for("p0 up once its capture exists", || samples(&r.get("/metrics").1)[&up("p0")] == 1.0);
    let problems = r.ctl(&["show", "problems"]);
    assert!(!problems.contains("down:"), "{problems}");
}

#[test]
fn healthz_fails_while_a_worker_or_the_control_loop_is_stopped() {
    if let Err(why) = testkit::probe::ptrace() {
        return testkit::skip("healthz_fails_while_a_worker_or_the_control_loop_is_stopped", &why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let r = Run::start(&switch_yaml(tmp.path(), "{name: p0, type: ring}"), &["--control-stall-s", "2"]);
    r.wait_for("/readyz", || r.get("/readyz").0 == 200);
    assert_eq!(r.get("/healthz").0, 200);

    let worker = Stopped::stop(r.thread("sy-worker-0"));
    let t = Instant::now();
    let mut body = String::new();
    r.wait_for("/healthz to fail", || {
        let (code, b) = r.get("/healthz");
        body = b;
        code == 503
    });
    // Not before the 1 s bound (the worker wakes every 100 ms when idle).
    assert!(t.elapsed() >= Duration::from_millis(900), "failed after {:?}: {body}", t.elapsed());
    assert!(body.contains("worker 0 has not polled"), "{body}");
    assert!(r.get("/metrics").1.contains("switchyard_worker_last_poll_age_seconds"));
    drop(worker);
    r.wait_for("/healthz to recover", || r.get("/healthz").0 == 200);

    // The control thread is the process's main thread.
    let main = Stopped::stop(Pid::from_raw(r.child.id() as i32));
    r.wait_for("/healthz to fail", || {
        let (code, b) = r.get("/healthz");
        body = b;
        code == 503
    });
    assert!(body.contains("control loop has not turned"), "{body}");
    assert!(!body.contains("worker"), "{body}");
    drop(main);
    r.wait_for("/healthz to recover", || r.get("/healthz").0 == 200);
    assert_eq!(r.get("/nope").0, 404);
}

/// Under `--kube` the control loop waits on the API's watches; a cluster where nothing changes
/// is no stalled loop: `/healthz` stays 200 well past the stall bound (it used to fail after
/// it, and the DaemonSet's liveness probe restarted the switch on every quiet node).
#[test]
fn healthz_stays_up_while_the_api_is_quiet() {
    let server = apiserver::ApiServer::start(apiserver::example_objects(), Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, server.kubeconfig_yaml()).unwrap();
    let args = vec!["--kube".into(), "--node".into(), "worker-1".into(), "--kubeconfig".into(), kc.into()];
    let r = Run::start_with(&[], dir, args, &["--control-stall-s", "2", "--vm-ports", "ring"]);
    r.wait_for("/readyz", || r.get("/readyz").0 == 200);
    // Three stall bounds without a change from the API.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        let (code, body) = r.get("/healthz");
        assert_eq!(code, 200, "after {:?} of a quiet API: {body}", t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Run::start(&switch_yaml(tmp.path(), "{name: p0, type: ring}"), &[]);
    r.wait_for("/readyz", || r.get("/readyz").0 == 200);
    let lines = r.json_log();
    assert!(lines.iter().any(|l| l["level"] == "INFO"
        && l["fields"]["message"].as_str().is_some_and(|m| m.contains("switchyard run starting"))));
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["target"].is_string()), "{lines:?}");
}

#[test]
fn without_lcores_one_worker_is_pinned_to_each_cpu_of_an_imposed_cpuset() {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    // The last CPU this test may run on (so taskset may give it), when more than one is online.
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or_default();
    let last = allowed.trim().rsplit(['-', ',']).next().and_then(|c| c.parse::<usize>().ok());
    let Some(last) = last.filter(|_| online.trim() != "0") else {
        return testkit::skip(
            "without_lcores_one_worker_is_pinned_to_each_cpu_of_an_imposed_cpuset",
            "one online CPU: no cpuset can be a strict subset",
        );
    };
    // As the static CPU manager does it: the process may run on one CPU only (util-linux's
    // taskset sets the affinity before exec).
    let tmp = tempfile::tempdir().unwrap();
    let core = last.to_string();
    let r =
        Run::start_under(&["taskset", "-c", &core], &switch_yaml(tmp.path(), "{name: p0, type: ring}"), &[]);
    r.wait_for("/readyz", || r.get("/readyz").0 == 200);
    let scrape = r.get("/metrics").1;
    let workers: Vec<&str> =
        scrape.lines().filter(|l| l.starts_with("switchyard_worker_busy_cycles_total")).collect();
    assert_eq!(workers.len(), 1, "{scrape}");
    assert!(workers[0].contains(&format!("{{worker=\"0\",core=\"{core}\"}}")), "{}", workers[0]);
    assert!(r.ctl(&["show", "stats"]).contains(&format!("worker 0 (core {core})")));
}
