//! What switchyard's tests share: the probes that decide whether a machine can run an
//! environment-dependent test, the one way such a test skips, and the one builder of test
//! frames ([`frame`]), and a `switchyard run` process for end-to-end tests ([`run`]), the
//! Kubernetes manifests they load ([`manifest`]).
//!
//! Invariant: a test skips only through [`skip`], and only for a missing environment (not
//! root, no `dpdk-testpmd`, no `/dev/net/tun`, no free hugepages, no QEMU guest...), decided by
//! a probe that does not go through switchyard's own code ([`probe`]). Once the probe says the
//! environment is there, an error of switchyard's code fails the test.
//!
//! Every skip is loud: `SKIP <binary> <test>: <why>` on stderr, a line appended to the file
//! named by `$SWITCHYARD_SKIP_LOG` (which `scripts/test.sh` summarises at the end of the run,
//! see [`summary`]), and, in strict mode (`SWITCHYARD_STRICT_SKIPS=1`, which CI runs), a panic
//! unless the test is listed in the expected-skips file (`.ci/expected-skips` at the workspace
//! root, or `$SWITCHYARD_EXPECTED_SKIPS`).
//!
//! A test is named as nextest names it: its binary id and its path, e.g.
//! `switchyard-dataplane::tap frames_cross_between_switch_and_kernel`.

pub mod frame;
pub mod http;
pub mod manifest;
pub mod probe;
pub mod run;
pub mod summary;

use std::io::Write;
use std::path::PathBuf;

/// `1` turns strict mode on.
pub const STRICT_ENV: &str = "SWITCHYARD_STRICT_SKIPS";
/// The file each skip appends one line to (`<test id>\t<why>`).
pub const LOG_ENV: &str = "SWITCHYARD_SKIP_LOG";
/// The expected-skips file, instead of `.ci/expected-skips` at the workspace root.
pub const EXPECTED_ENV: &str = "SWITCHYARD_EXPECTED_SKIPS";

/// Skips the calling test (the caller returns right after): prints why, logs it, and in strict
/// mode panics unless the test is an expected skip. `test` is the test function's name (its
/// full path is taken from the test harness's thread when it runs on it).
pub fn skip(test: &str, why: &str) {
    let id = test_id(test);
    let _ = writeln!(std::io::stderr(), "SKIP {id}: {why}");
    if let Some(path) = std::env::var_os(LOG_ENV) {
        // One write of one line on an O_APPEND file: lines of concurrent tests do not mix.
        let line = format!("{id}\t{}\n", summary::one_line(why));
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = logged {
            panic!("cannot append the skip of {id} to {}: {e}", PathBuf::from(path).display());
        }
    }
    if !strict() {
        return;
    }
    let file = expected_skips_path();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "strict skips: {id} skips ({why}) and the expected-skips file {} is unreadable: {e}",
            file.display()
        )
    });
    if !summary::expected(&text).iter().any(|e| e.id == id) {
        panic!(
            "strict skips: {id} skipped ({why}), and it is not listed in {}: give the test its \
             environment, or list it there with the reason CI cannot give it",
            file.display()
        );
    }
}

/// A start of something a test needs (`what`) failed with `err`: a skip when `probe` (which
/// must not go through the code under test) says this machine lacks the environment, a test
/// failure otherwise, for then the error is ours.
pub fn fail_or_skip(test: &str, what: &str, err: &dyn std::fmt::Display, probe: Result<(), String>) {
    match probe {
        Err(why) => skip(test, &format!("{why} (and {what} failed: {err})")),
        Ok(()) => panic!("{what} failed, although this machine has what it needs: {err}"),
    }
}

/// The running test's path, as the test harness names its thread (`unnamed` off it).
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("unnamed").to_string()
}

/// Whether strict mode is on (`SWITCHYARD_STRICT_SKIPS=1`).
pub fn strict() -> bool {
    std::env::var_os(STRICT_ENV).is_some_and(|v| v == "1")
}

/// `$SWITCHYARD_EXPECTED_SKIPS`, else `.ci/expected-skips` at the workspace root (the parent
/// of this crate's directory).
pub fn expected_skips_path() -> PathBuf {
    match std::env::var_os(EXPECTED_ENV) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".ci").join("expected-skips"),
    }
}

/// The workspace's root directory (this crate lives in `<root>/testkit`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `<binary id> <test path>`, as nextest shows a test.
fn test_id(test: &str) -> String {
    let thread = std::thread::current();
    let path = match thread.name() {
        // The test harness runs each test on a thread named after the test's full path.
        Some(n) if n == test || n.ends_with(&format!("::{test}")) => n.to_string(),
        _ => test.to_string(),
    };
    format!("{} {path}", binary_id())
}

/// nextest's id of the running test binary: `$NEXTEST_BINARY_ID` under nextest; under
/// `cargo test`, the same shape rebuilt from the package name and the binary's file name.
fn binary_id() -> String {
    if let Ok(id) = std::env::var("NEXTEST_BINARY_ID") {
        return id;
    }
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned());
    // Cargo names test binaries `<target>-<16 hex digits>`.
    let target = match stem {
        Some(s) => match s.rsplit_once('-') {
            Some((t, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                t.to_string()
            }
            _ => s,
        },
        None => "unknown".into(),
    };
    match std::env::var("CARGO_PKG_NAME") {
        Ok(pkg) if pkg.replace('-', "_") == target => pkg,
        Ok(pkg) => format!("{pkg}::{target}"),
        Err(_) => target,
    }
}

/// Copies the directory tree `from` into `to` (created), files and subdirectories.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Runs `f` and returns its result with how much the process's peak resident set (VmHWM) grew
/// meanwhile, in bytes: the peak is reset first (`/proc/self/clear_refs`). Other threads'
/// allocations count too, so a test gives its bound room for them.
pub fn peak_rss_growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    fn hwm() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib = s
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/self/status");
        kib * 1024
    }
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS (/proc/self/clear_refs)");
    let before = hwm();
    let r = f();
    (r, hwm().saturating_sub(before))
}

#[cfg(test)]
mod tests {
    /// Under nextest and under `cargo test` alike, a test is named `<binary id> <test path>`
    /// (the lib's unit tests: the package name), its path taken from the harness's thread.
    #[test]
    fn a_test_is_named_as_nextest_names_it() {
        assert_eq!(
            super::test_id("a_test_is_named_as_nextest_names_it"),
            "switchyard-testkit tests::a_test_is_named_as_nextest_names_it"
        );
        // Off the harness's thread, the name given is all there is.
        let id = std::thread::spawn(|| super::test_id("helper")).join().unwrap();
        assert_eq!(id, "switchyard-testkit helper");
    }
}
