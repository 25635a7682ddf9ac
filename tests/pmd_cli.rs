//! `switchyard pmd` end to end: bad arguments refused before anything starts, a timed JSON run
//! on infinite pcap ports, switch mode on ring ports, RX queue placement, the interactive
//! commands from stdin, and a clean stop on SIGTERM. Every run is bounded (at most 2 s of
//! forwarding or until the counters show what a test waits for, at most 10 s; one worker, two
//! for the placement; no busy polling) and killed if it overruns. Nothing here times switchyard:
//! how fast it stops is measured in docs/benchmarks.md.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::frame::{Frame, ETHERTYPE_IPV4};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Waits for `child` at most `limit`, killing it after that (and failing the test).
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if t0.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "switchyard pmd ran past {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `switchyard pmd ARGS`, its stdout and stderr piped.
fn spawn_pmd(args: &[&str], stdin: Stdio) -> Child {
    Command::new(BIN)
        .arg("pmd")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard")
}

fn pmd(args: &[&str]) -> Output {
    wait_bounded(spawn_pmd(args, Stdio::null()), Duration::from_secs(20))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `switchyard pmd -i` driven command by command, its stdout read line by line by a thread, so
/// that a test can wait for what the counters show instead of for a time.
struct Interactive {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    /// Every stdout line read so far.
    seen: Vec<String>,
}

impl Interactive {
    fn start(args: &[&str]) -> Interactive {
        let mut child = spawn_pmd(&[&["-i"], args].concat(), Stdio::piped());
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive { child, stdin, lines, reader, seen: Vec::new() }
    }

    fn say(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write a command");
        self.stdin.flush().expect("flush");
    }

    /// The RX-packets of every port, from a `show port stats all` (blocks for its output; at
    /// most 10 s).
    fn rx_packets(&mut self, ports: usize) -> Vec<u64> {
        self.say("show port stats all");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rx = Vec::new();
        while rx.len() < ports {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no port statistics within 10 s; stdout so far:\n{}", self.seen.join("\n"))
            });
            if let Some(rest) = line.trim_start().strip_prefix("RX-packets:") {
                rx.push(rest.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a count"));
            }
            self.seen.push(line);
        }
        rx
    }

    /// Polls the port counters until `done` holds (at most 10 s).
    fn wait_for_counters(&mut self, ports: usize, what: &str, done: impl Fn(&[u64]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rx = self.rx_packets(ports);
            if done(&rx) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: RX-packets still {rx:?} after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `quit` and waits (bounded) for the exit; returns the exit status, the whole
    /// stdout and the stderr.
    fn quit(mut self) -> (std::process::ExitStatus, String, String) {
        self.say("quit");
        drop(self.stdin);
        let out = wait_bounded(self.child, Duration::from_secs(20));
        self.reader.join().expect("stdout reader");
        self.seen.extend(self.lines.try_iter());
        (out.status, self.seen.join("\n"), text(&out.stderr))
    }
}

/// A classic pcap of `n` 60-byte UDP frames (64 on the wire): source MACs 02:00:<src>:00:00:i,
/// each to 02:00:<dst>:00:00:i.
fn write_pcap(path: &Path, src: u8, dst: u8, n: u8) {
    let mut f = Vec::new();
    for v in [0xa1b2_c3d4u32.to_le_bytes().as_slice(), &2u16.to_le_bytes(), &4u16.to_le_bytes()] {
        f.extend_from_slice(v);
    }
    for v in [0u32, 0, 65535, 1] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    for i in 0..n {
        let frame = Frame::new([0x02, 0, dst, 0, 0, i], [0x02, 0, src, 0, 0, i])
            .ethertype(ETHERTYPE_IPV4)
            .payload(&[0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 19, 0, 1])
            .payload(&[0x04, 0x00, 0x04, 0x00, 0, 26, 0, 0])
            .pad(60, 0)
            .build();
        for v in [0u32, u32::from(i), 60, 60] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&frame);
    }
    std::fs::write(path, f).expect("write pcap");
}

/// Two captures, 4 MACs each way.
fn two_pcaps(dir: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a.pcap"), dir.join("b.pcap"));
    write_pcap(&a, 0x0a, 0x0b, 4);
    write_pcap(&b, 0x0b, 0x0a, 4);
    (a, b)
}

/// The last line of stdout as JSON.
fn last_json(out: &Output) -> serde_json::Value {
    last_json_of(&text(&out.stdout))
}

fn last_json_of(s: &str) -> serde_json::Value {
    let last = s.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last:?}\nstdout:\n{s}"))
}

/// Checks the contract's JSON shape; returns (rx_pps, tx_pps).
fn check_shape(j: &serde_json::Value, ports: usize) -> (f64, f64) {
    assert!(j["seconds"].is_number(), "{j}");
    let rx = j["rx_pps"].as_f64().expect("rx_pps");
    let tx = j["tx_pps"].as_f64().expect("tx_pps");
    let p = j["ports"].as_array().expect("ports");
    assert_eq!(p.len(), ports, "{j}");
    for (i, port) in p.iter().enumerate() {
        assert_eq!(port["name"], format!("p{i}"), "{j}");
        for k in ["rx", "tx", "drops"] {
            assert!(port[k].is_u64(), "ports[{i}].{k} in {j}");
        }
    }
    (rx, tx)
}

#[test]
fn timed_json_run_on_two_infinite_pcap_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:{},infinite", b.display());
    let out = pmd(&["--port", &pa, "--port", &pb, "--fwd", "switch", "--seconds", "1", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let j = last_json(&out);
    let (rx, tx) = check_shape(&j, 2);
    assert_eq!(j["seconds"].as_f64(), Some(1.0));
    assert!(rx > 0.0 && tx > 0.0, "{j}");
    for p in j["ports"].as_array().unwrap() {
        assert!(p["rx"].as_u64().unwrap() > 0 && p["tx"].as_u64().unwrap() > 0, "{j}");
    }
    // Four MACs learned on each port, every buffer back.
    assert_eq!(j["ports"][0]["learned"], 4, "{j}");
    assert_eq!(j["ports"][1]["learned"], 4, "{j}");
    assert_eq!(j["pool_in_use"], 0, "{j}");
    let s = text(&out.stdout);
    assert!(s.contains("pmd thread worker 0"), "{s}");
    assert!(s.contains("avg processing cycles per packet"), "{s}");
}

/// `--stage-cycles` splits the busy cycles by stage: each of RX, pipeline and TX got some, and
/// together they are no more than the busy cycles; the worker's CPU time per frame is there
/// with or without the flag, and without it the stages are all zero.
#[test]
fn stage_cycles_and_cpu_time_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:{},infinite", b.display());
    for (mode, staged) in [("switch", true), ("io", true), ("switch", false)] {
        let mut args = vec!["--port", &pa, "--port", &pb, "--fwd", mode, "--seconds", "0.5", "--json"];
        args.extend(staged.then_some("--stage-cycles"));
        args.push("--busy-poll");
        let out = pmd(&args);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        let j = last_json(&out);
        let w = &j["workers"][0];
        let busy = w["busy_cycles"].as_u64().expect("busy_cycles");
        let st = &w["stage_cycles"];
        let stage = |k: &str| st[k].as_u64().unwrap_or_else(|| panic!("stage_cycles.{k} in {j}"));
        let (rx, pipe, tx) = (stage("rx"), stage("pipeline"), stage("tx"));
        let s = text(&out.stdout);
        if staged {
            assert!(rx > 0 && pipe > 0 && tx > 0, "{mode}: {j}");
            assert!(rx + pipe + tx <= busy, "{mode}: stages {rx} + {pipe} + {tx} > busy {busy}");
            assert!(s.contains("processing cycles per packet by stage: rx "), "{s}");
        } else {
            assert_eq!((rx, pipe, tx), (0, 0, 0), "{j}");
            assert!(!s.contains("by stage"), "{s}");
        }
        // Busy polling used CPU time, and one thread cannot use more than the run's wall time
        // (however little of a core a loaded machine gave it).
        let cpu_us = w["cpu_us"].as_u64().expect("cpu_us");
        let wall_us = j["elapsed_s"].as_f64().expect("elapsed_s") * 1e6;
        assert!(cpu_us > 0 && cpu_us as f64 <= wall_us + 10_000.0, "{cpu_us} us of CPU in {wall_us} us: {j}");
        let per = j["cpu_ns_per_frame"].as_f64().expect("cpu_ns_per_frame");
        let want = w["cpu_us"].as_u64().unwrap() as f64 * 1e3 / w["rx"].as_u64().expect("rx") as f64;
        assert!((per - want).abs() <= want * 1e-9 + 1e-9, "{per} vs {want}: {j}");
        assert!(s.contains("ns per packet received"), "{s}");
    }
}

#[test]
fn stats_period_prints_rates() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:rx={},infinite", b.display());
    let out =
        pmd(&["--port", &pa, "--port", &pb, "--fwd", "io", "--seconds", "0.5", "--stats-period", "0.2"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.matches("Port rates (io)").count() >= 2, "{s}");
    assert!(s.contains("Gbps wire"), "{s}");
    assert!(s.contains("buffers still in use: 0"), "{s}");
}

/// Switch mode with ring ports: 8 frames from a capture to unknown destinations are flooded to
/// both rings (whose far ends are not connected: the frames wait there and are freed at the
/// end), every source is learned, nothing is dropped.
#[test]
fn switch_mode_on_ring_ports() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.pcap");
    write_pcap(&a, 0x0a, 0x0b, 8);
    let pa = format!("pcap:rx={}", a.display());
    let mut session = Interactive::start(&[
        "--json", "--fwd", "switch", "--port", &pa, "--port", "ring:r1", "--port", "ring:r2",
    ]);
    session.say("start");
    session.wait_for_counters(3, "the capture's 8 frames received", |rx| rx[0] == 8);
    let (status, out, err) = session.quit();
    assert!(status.success(), "stdout {out}\nstderr {err}");
    let j = last_json_of(&out);
    check_shape(&j, 3);
    assert_eq!(j["mode"], "switch");
    let port =
        |i: usize, k: &str| j["ports"][i][k].as_u64().unwrap_or_else(|| panic!("ports[{i}].{k} in {j}"));
    assert_eq!((port(0, "rx"), port(0, "learned"), port(0, "flooded"), port(0, "tx")), (8, 8, 8, 0), "{j}");
    for i in [1, 2] {
        assert_eq!((port(i, "rx"), port(i, "tx"), port(i, "tx_bytes")), (0, 8, 8 * 60), "{j}");
    }
    for i in 0..3 {
        assert_eq!(port(i, "drops"), 0, "{j}");
    }
    assert!(out.contains("Freed 16 frame(s) that rings held"), "{out}");
    assert_eq!(j["pool_in_use"], 0, "{j}");
    assert!(j["stop_ms"].is_number(), "{j}");
}

#[test]
fn txonly_writes_generated_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_pcaps(dir.path());
    let outp = dir.path().join("out.pcap");
    let pa = format!("pcap:rx={},tx={}", a.display(), outp.display());
    let out = pmd(&[
        "--port",
        &pa,
        "--fwd",
        "txonly",
        "--txpkt-len",
        "128",
        "--tx-vlan",
        "5",
        "--seconds",
        "0.2",
        "--json",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let j = last_json(&out);
    check_shape(&j, 1);
    assert!(j["ports"][0]["tx"].as_u64().unwrap() > 0, "{j}");
    // The capture holds 128-byte frames tagged with VLAN 5.
    let bytes = std::fs::read(&outp).unwrap();
    assert!(bytes.len() > 24 + 16 + 128);
    assert_eq!(u32::from_le_bytes(bytes[32..36].try_into().unwrap()), 128);
    assert_eq!(&bytes[40 + 12..40 + 16], &[0x81, 0x00, 0x00, 0x05]);
}

/// Bad arguments: exit 2, a message naming the argument, and nothing started (no banner, the
/// tx capture of a valid port not created).
#[test]
fn bad_arguments_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_pcaps(dir.path());
    let outp = dir.path().join("never.pcap");
    let good = format!("pcap:rx={},tx={}", a.display(), outp.display());
    let missing = format!("pcap:{}", dir.path().join("missing.pcap").display());
    let (bad_port, bad_field) = (dir.path().join("p7.yaml"), dir.path().join("field.yaml"));
    std::fs::write(&bad_port, "ports: {p7: {allowed_ips: [10.0.0.1]}}\n").unwrap();
    std::fs::write(&bad_field, "ports: {p0: {allowed_ip: [10.0.0.1]}}\n").unwrap();
    let (bad_port, bad_field) = (bad_port.display().to_string(), bad_field.display().to_string());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--fwd", "switch", "--policy", &bad_port], "ports.p7: no such port"),
        (vec!["--fwd", "switch", "--policy", &bad_field], "unknown field `allowed_ip`"),
        (vec!["--fwd", "io", "--policy", &bad_port], "--policy: only with --fwd switch"),
        (vec!["--fwd", "bogus"], "--fwd"),
        (vec!["--fwd", "io", "--port", "bogus:x"], "--port bogus:x"),
        (vec!["--fwd", "io", "--port", "pcap:"], "--port pcap:"),
        (vec!["--fwd", "io", "--port", &missing], "no such file"),
        (vec!["--fwd", "io", "--lcores", "4096"], "--lcores"),
        (vec!["--fwd", "io", "--lcores", "0x0"], "--lcores"),
        (vec!["--fwd", "io", "--lcores", "1-0"], "--lcores"),
        (vec!["--fwd", "io", "--burst", "0"], "--burst"),
        (vec!["--fwd", "io", "--burst", "65"], "--burst"),
        (vec!["--fwd", "txonly", "--txpkt-len", "20"], "--txpkt-len"),
        (vec!["--fwd", "io", "--seconds", "0"], "--seconds"),
        (vec!["--fwd", "io", "--tx-vlan", "5000"], "--tx-vlan"),
        (vec!["--fwd", "io", "--rxq-affinity", "5:0@0"], "--rxq-affinity"),
        (vec!["--fwd", "io", "--rxq-affinity", "0:0@3"], "--rxq-affinity"),
        (vec!["--fwd", "io", "--rxq-affinity", "0-0"], "--rxq-affinity"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--port", good.as_str()];
        args.extend(extra.iter().copied());
        args.extend(["--seconds", "0.1"]);
        // A later --seconds would override a bad one; keep the bad one last.
        if extra.contains(&"--seconds") {
            args.truncate(args.len() - 2);
        }
        let out = pmd(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {err}");
        assert!(err.contains(needle), "{args:?}: stderr does not name {needle:?}: {err}");
        assert!(!text(&out.stdout).contains("Forwarding"), "{args:?} started: {}", text(&out.stdout));
        assert!(!outp.exists(), "{args:?} opened the ports");
    }
}

#[test]
fn backends_that_cannot_open_are_refused_with_the_factorys_message() {
    // An AF_PACKET port on an interface that does not exist (or no CAP_NET_RAW): the factory
    // refuses it, naming the port.
    let out = pmd(&["--port", "afpacket:sy-no-such-if0", "--fwd", "io", "--seconds", "0.1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("p0") || err.contains("sy-no-such-if0"), "{err}");
    assert!(!text(&out.stdout).contains("Forwarding"));
}

#[test]
fn interactive_commands_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:{},infinite", b.display());
    let mut child = Command::new(BIN)
        .args(["pmd", "-i", "--json", "--fwd", "io", "--port", &pa, "--port", &pb])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let mut say = |s: &str, pause_ms: u64| {
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(pause_ms));
    };
    say("help\nfrobnicate the ports\nshow fwd stats all\nstop\n", 50);
    say("start\n", 200);
    say("start\nset fwd switch\n", 200);
    say("show port stats all\nshow fwd stats all\n", 0);
    say("set fwd nonsense\nstop\nclear port stats all\nshow port stats all\n", 50);
    say("start\n", 200);
    say("quit\n", 0);
    drop(stdin);
    let out = wait_bounded(child, Duration::from_secs(20));
    let s = text(&out.stdout);
    assert!(out.status.success(), "stdout {s}\nstderr {}", text(&out.stderr));
    for needle in [
        "set fwd MODE",
        "Unknown or bad command: \"frobnicate the ports\"",
        "Packet forwarding not started",
        "Start io packet forwarding",
        "Packet forwarding already started",
        "Set switch packet forwarding mode",
        "NIC statistics for port 0",
        "NIC statistics for port 1",
        "Forward statistics (switch mode)",
        "unknown forwarding mode \"nonsense\"",
        "NIC statistics for all ports cleared",
        "buffers still in use: 0",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
    let j = last_json(&out);
    let (rx, tx) = check_shape(&j, 2);
    assert!(rx > 0.0 && tx > 0.0, "{j}");
    assert_eq!(j["mode"], "switch");
    assert_eq!(j["pool_in_use"], 0);
}

#[test]
fn interactive_eof_quits() {
    let mut child = Command::new(BIN)
        .args(["pmd", "-i", "--port", "ring:eof0", "--port", "ring:eof1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(b"start\n").unwrap();
    let out = wait_bounded(child, Duration::from_secs(10));
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("Workers stopped in"), "{s}");
    assert!(s.contains("buffers still in use: 0"), "{s}");
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:{},infinite", b.display());
    let child = Command::new(BIN)
        .args(["pmd", "--json", "--fwd", "switch", "--port", &pa, "--port", &pb])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(400));
    let t0 = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let out = wait_bounded(child, Duration::from_secs(10));
    let took = t0.elapsed();
    let s = text(&out.stdout);
    assert!(out.status.success(), "{s}\n{}", text(&out.stderr));
    assert!(s.contains("Signal received"), "{s}");
    let j = last_json(&out);
    let (rx, _) = check_shape(&j, 2);
    assert!(rx > 0.0, "{j}");
    assert_eq!(j["pool_in_use"], 0, "{j}");
    // How quickly is measured, not asserted (docs/benchmarks.md): a loaded machine decides
    // it; a stop that hangs is caught by wait_bounded.
    assert!(j["stop_ms"].is_number(), "{j}");
    eprintln!("exit {took:?} after SIGTERM, workers stopped in {} ms", j["stop_ms"]);
}

/// `--rxq-affinity` puts each RX queue on the worker it names: with two workers (on two
/// cores), p1's queue on worker 0 and p0's on worker 1, each worker received exactly what its
/// port did, and each worker ran on its core; with one core, both on worker 0.
#[test]
fn explicit_rx_queue_placement() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:{},infinite", b.display());
    let cores = switchyard_dataplane::worker::available_cores();
    let (lcores, affinity) = match cores[..] {
        [c0, c1, ..] => (vec![c0, c1], "1:0@0,0:0@1"),
        [c0] => (vec![c0], "1:0@0,0:0@0"),
        [] => panic!("no core available to this process"),
    };
    let list = lcores.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut session = Interactive::start(&[
        "--json",
        "--fwd",
        "io",
        "--port",
        &pa,
        "--port",
        &pb,
        "--lcores",
        &list,
        "--rxq-affinity",
        affinity,
    ]);
    session.say("start");
    session.wait_for_counters(2, "both ports receiving", |rx| rx.iter().all(|&n| n > 0));
    let (status, out, err) = session.quit();
    assert!(status.success(), "stdout {out}\nstderr {err}");
    let j = last_json_of(&out);
    let port_rx = |i: usize| j["ports"][i]["rx"].as_u64().unwrap();
    let workers = j["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), lcores.len(), "{j}");
    for (w, &core) in workers.iter().zip(&lcores) {
        assert_eq!(w["core"].as_u64(), Some(core as u64), "{j}");
    }
    let worker_rx = |i: usize| workers[i]["rx"].as_u64().unwrap();
    if lcores.len() == 2 {
        assert_eq!((worker_rx(0), worker_rx(1)), (port_rx(1), port_rx(0)), "{j}");
    } else {
        assert_eq!(worker_rx(0), port_rx(0) + port_rx(1), "{j}");
    }
    assert!(port_rx(0) > 0 && port_rx(1) > 0, "{j}");

    // A queue the port does not have is refused once the ports are open.
    let out =
        pmd(&["--port", &pa, "--port", &pb, "--fwd", "io", "--rxq-affinity", "0:3@0", "--seconds", "0.3"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("--rxq-affinity"), "{}", text(&out.stderr));
}

/// `--policy FILE` puts filters and policies on pmd's ports: p0 lets two of its four source
/// MACs through (the others `spoofed_src_mac`), and those go to p1, whose ingress policy allows
/// them (UDP 1024); p1's every frame has a source address it does not own (`spoofed_src_ip`).
#[test]
fn policy_file_filters_the_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_pcaps(dir.path());
    let pol = dir.path().join("policy.yaml");
    std::fs::write(
        &pol,
        "conntrack_size: 1024
ports:
  p0:
    allowed_macs: ['02:00:0a:00:00:00', '02:00:0a:00:00:01']
    allowed_ips: [198.18.0.1]
  p1:
    allowed_ips: [10.9.9.9]
    policy: {ingress: {rules: [{name: t/udp, ports: [{protocol: UDP, port: 1024}]}]}}
",
    )
    .unwrap();
    let pa = format!("pcap:{},infinite", a.display());
    let pb = format!("pcap:{},infinite", b.display());
    let polf = pol.display().to_string();
    let out = pmd(&[
        "--port",
        &pa,
        "--port",
        &pb,
        "--fwd",
        "switch",
        "--seconds",
        "0.5",
        "--json",
        "--policy",
        &polf,
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let j = last_json(&out);
    let (p0, p1) = (&j["ports"][0], &j["ports"][1]);
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (rx0, rx1) = (n(&p0["rx"]), n(&p1["rx"]));
    assert!(rx0 > 0 && rx1 > 0, "{j}");
    let mac = n(&p0["drop_reasons"]["spoofed_src_mac"]);
    assert!(mac > 0 && n(&p0["drops"]) == mac, "{j}");
    // The rest of p0's frames reach p1 (flooded: p1 never taught its MACs), one copy each.
    assert_eq!(n(&p1["tx"]), rx0 - mac, "{j}");
    assert_eq!(
        (n(&p1["drop_reasons"]["spoofed_src_ip"]), n(&p1["drops"]), n(&p0["tx"])),
        (rx1, rx1, 0),
        "{j}"
    );
}

/// examples/pmd/policy.yaml runs as its header says (from the repository root): p1's frame
/// from a MAC that is not its VM's is dropped as `spoofed_src_mac`, every other frame forwarded.
#[test]
fn the_pmd_example_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/examples/pmd/policy.yaml")).unwrap();
    let line = example
        .lines()
        .find_map(|l| l.strip_prefix("#   switchyard pmd "))
        .expect("the example's command line");
    let args: Vec<&str> = line.split_whitespace().collect();
    assert!(args.contains(&"--json") && args.contains(&"--seconds"), "{line}");
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(root)
        .arg("pmd")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(20));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let j = last_json(&out);
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (p0, p1) = (&j["ports"][0], &j["ports"][1]);
    let (rx0, rx1) = (n(&p0["rx"]), n(&p1["rx"]));
    let spoofed = n(&p1["drop_reasons"]["spoofed_src_mac"]);
    assert!(rx0 > 0 && rx1 > 0 && spoofed > 0, "{j}");
    // vm-b's capture alternates its reply and the spoofed frame: half of p1's frames.
    assert!(spoofed.abs_diff(rx1 / 2) <= 1 && n(&p1["drops"]) == spoofed, "{j}");
    assert_eq!(n(&p0["drops"]), 0, "{j}");
    // Each of vm-a's ARP broadcasts reaches p1, each of vm-b's replies p0.
    assert_eq!((n(&p1["tx"]), n(&p0["tx"])), (rx0, rx1 - spoofed), "{j}");
}
