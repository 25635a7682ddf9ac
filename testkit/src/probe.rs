//! Probes of the machine, each independent of switchyard's code: what they find decides
//! whether a test may skip, so none of them may fail because of a bug of ours.
//!
//! Invariant: a probe that says the environment is there is a promise that the test's own
//! use of it must work; each returns `Err(why)` (why the machine cannot) otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// DPDK's test application (Debian: package `dpdk`).
pub const TESTPMD: &str = "dpdk-testpmd";

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            // "Uid: real effective saved fs"
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Root, or why not.
pub fn root() -> Result<(), String> {
    if is_root() {
        Ok(())
    } else {
        Err("not running as root".into())
    }
}

/// Whether DPDK runs here at all, judged by DPDK's own `dpdk-testpmd` on a bare null device
/// (`--no-huge --vdev net_null0`, two lcores, no PCI): it must start, forward and exit by
/// itself (stdin closed ends its run). Done once per process. When this passes, an EAL that
/// switchyard starts with `--no-huge` must start too, and a testpmd that a test starts must
/// reach its link.
pub fn testpmd() -> Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(testpmd_self_check).clone()
}

fn testpmd_self_check() -> Result<(), String> {
    const LIMIT: Duration = Duration::from_secs(60);
    let prefix = format!("sy-check-{}", std::process::id());
    let log = std::env::temp_dir().join(format!("{prefix}.log"));
    let out = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
    let spawned = Command::new(TESTPMD)
        .args(["--no-huge", "--no-shconf", "-m", "64", "--no-pci", "--no-telemetry", "-l", "0-1"])
        .args(["--vdev", "net_null0"])
        .arg(format!("--file-prefix={prefix}"))
        .args(["--", "--total-num-mbufs=2048"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&log);
            return Err(if e.kind() == std::io::ErrorKind::NotFound {
                format!("{TESTPMD} not found (Debian: apt install dpdk)")
            } else {
                format!("cannot run {TESTPMD}: {e}")
            });
        }
    };
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t0.elapsed() < LIMIT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    for dir in runtime_dirs(&prefix) {
        let _ = std::fs::remove_dir_all(dir);
    }
    let tail =
        || text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    match status {
        Some(st) if st.success() && text.contains("Bye") => Ok(()),
        Some(st) => {
            Err(format!("{TESTPMD}'s self-check (--no-huge --vdev net_null0) fails here ({st}):\n{}", tail()))
        }
        None => Err(format!("{TESTPMD}'s self-check did not finish in {LIMIT:?}:\n{}", tail())),
    }
}

/// Where EAL may have put the runtime directory of file prefix `prefix`.
fn runtime_dirs(prefix: &str) -> Vec<PathBuf> {
    let mut dirs = vec![Path::new("/var/run/dpdk").join(prefix), Path::new("/tmp/dpdk").join(prefix)];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        dirs.push(Path::new(&x).join("dpdk").join(prefix));
    }
    dirs
}

/// The default-size hugepages the machine has for a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hugepages {
    /// Size of one page in bytes (`Hugepagesize`).
    pub page_bytes: u64,
    /// Pages free and not reserved by a mapping already (`HugePages_Free - HugePages_Rsvd`).
    pub free: u64,
}

/// The hugepages a mapping of the default hugepage size can get, when a hugetlbfs is mounted
/// and at least `want` of them are free; why not otherwise.
pub fn hugepages(want: u64) -> Result<Hugepages, String> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs")) {
        return Err("no hugetlbfs is mounted".into());
    }
    let info = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
    };
    let (Some(size_kb), Some(free), Some(rsvd)) =
        (field("Hugepagesize"), field("HugePages_Free"), field("HugePages_Rsvd"))
    else {
        return Err("/proc/meminfo has no hugepage counters".into());
    };
    let h = Hugepages { page_bytes: size_kb * 1024, free: free.saturating_sub(rsvd) };
    if h.free < want {
        return Err(format!("{} free hugepages of {size_kb} kB, fewer than {want}", h.free));
    }
    Ok(h)
}

/// The kernel's page size (`KernelPageSize` in /proc/self/smaps, in bytes) of the mapping of
/// this process that holds `addr`, and whether that mapping is hugetlb memory.
pub fn page_size_at(addr: usize) -> Result<(u64, bool), String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").map_err(|e| format!("/proc/self/smaps: {e}"))?;
    let mut inside = false;
    let mut hugetlb = false;
    for line in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]".
        let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
        if let Some((a, b)) = range {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a <= addr && addr < b;
                hugetlb = line.contains("anon_hugepage") || line.contains("hugetlb");
                continue;
            }
        }
        if inside {
            if let Some(kb) = line.strip_prefix("KernelPageSize:") {
                let kb: u64 =
                    kb.trim().trim_end_matches("kB").trim().parse().map_err(|_| line.to_string())?;
                return Ok((kb * 1024, hugetlb));
            }
        }
    }
    Err(format!("no mapping of this process holds {addr:#x}"))
}

/// Debian's python3 with scapy: the independent implementation tunnel tests build and
/// dissect VXLAN and Geneve with.
pub const SCAPY_PYTHON: &str = "/usr/bin/python3";

/// [`SCAPY_PYTHON`] imports scapy's VXLAN and Geneve layers, or why not.
pub fn scapy() -> Result<(), String> {
    let ok = Command::new(SCAPY_PYTHON)
        .args(["-c", "import scapy.contrib.geneve, scapy.layers.vxlan"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("{SCAPY_PYTHON} with scapy (Debian's python3-scapy) is not installed"))
    }
}

/// Prometheus's `promtool` (Debian: package `prometheus`) runs, or why not.
pub fn promtool() -> Result<(), String> {
    match Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("promtool --version: {s}")),
        Err(e) => Err(format!("promtool: {e} (apt install prometheus)")),
    }
}

/// Whether this process may ptrace its children's threads: root, and Yama's `ptrace_scope`
/// not 3 (no ptrace at all).
pub fn ptrace() -> Result<(), String> {
    root()?;
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(s) if s.trim() == "3" => Err("kernel.yama.ptrace_scope is 3: ptrace is disabled".into()),
        _ => Ok(()),
    }
}
