//! Strict mode and the summary, end to end: child processes skip as tests would (through the
//! `testkit-skip` binary, i.e. `switchyard_testkit::skip`) with a skip log and an expected-skips file of
//! this test's own; an unlisted skip must fail in strict mode, a listed one must not, and the
//! summary must count what the children logged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use switchyard_testkit::{EXPECTED_ENV, LOG_ENV, STRICT_ENV};

const SKIP: &str = env!("CARGO_BIN_EXE_testkit-skip");
const SUMMARY: &str = env!("CARGO_BIN_EXE_skip-summary");
/// The binary id the children report (nextest's variable, set for them).
const BIN_ID: &str = "planted::strict";

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sy-testkit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("expected-skips"), format!("# planted\n{BIN_ID} listed_test  # the reason\n"))
            .unwrap();
        Dir(d)
    }

    fn log(&self) -> PathBuf {
        self.0.join("skips.log")
    }

    fn expected(&self) -> PathBuf {
        self.0.join("expected-skips")
    }

    /// A child that skips as test `test`, strict or not.
    fn skip(&self, test: &str, strict: bool) -> Output {
        Command::new(SKIP)
            .args([test, "a planted missing environment"])
            .env("NEXTEST_BINARY_ID", BIN_ID)
            .env(STRICT_ENV, if strict { "1" } else { "0" })
            .env(EXPECTED_ENV, self.expected())
            .env(LOG_ENV, self.log())
            .output()
            .expect("run testkit-skip")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn log_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(String::from).collect()
}

#[test]
fn strict_mode_fails_an_unlisted_skip_and_lets_a_listed_one_pass() {
    let d = Dir::new("strict");
    let o = d.skip("unlisted_test", true);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "an unlisted skip passed in strict mode:\n{err}");
    assert!(err.contains(&format!("SKIP {BIN_ID} unlisted_test: a planted missing environment")), "{err}");
    assert!(err.contains("not listed in"), "{err}");

    let o = d.skip("listed_test", true);
    assert!(o.status.success(), "a listed skip failed in strict mode:\n{}", text(&o.stderr));

    // Outside strict mode an unlisted skip is loud but passes.
    let o = d.skip("unlisted_test", false);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("SKIP {BIN_ID} unlisted_test")));

    // Every skip was logged, the refused one too.
    let want = |t: &str| format!("{BIN_ID} {t}\ta planted missing environment");
    assert_eq!(log_lines(&d.log()), vec![want("unlisted_test"), want("listed_test"), want("unlisted_test")]);
}

#[test]
fn the_summary_counts_what_was_logged() {
    let d = Dir::new("summary");
    for (t, strict) in
        [("listed_test", true), ("other_test", false), ("third_test", false), ("other_test", false)]
    {
        d.skip(t, strict);
    }
    assert_eq!(log_lines(&d.log()).len(), 4);
    let o = Command::new(SUMMARY).arg(d.log()).arg(d.expected()).output().expect("run skip-summary");
    assert!(o.status.success());
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "== skips: 3 test(s) skipped (1 expected, 2 not in the expected-skips list)",
            "  SKIP [expected] planted::strict listed_test: a planted missing environment",
            "  SKIP [NOT LISTED] planted::strict other_test: a planted missing environment",
            "  SKIP [NOT LISTED] planted::strict third_test: a planted missing environment",
        ],
        "{out}"
    );
    // An empty run: nothing logged (the log may not even exist).
    let o = Command::new(SUMMARY).arg(d.0.join("absent.log")).arg(d.expected()).output().unwrap();
    assert_eq!(
        text(&o.stdout),
        "== skips: 0 test(s) skipped (0 expected, 0 not in the expected-skips list)\n"
    );
}

/// The workspace's expected-skips file parses, and every entry gives its reason.
#[test]
fn every_expected_skip_has_a_reason() {
    let path = switchyard_testkit::workspace_root().join(".ci").join("expected-skips");
    let t = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for e in switchyard_testkit::summary::expected(&t) {
        assert!(!e.reason.is_empty(), "{}: {} gives no reason", path.display(), e.id);
        assert!(e.id.contains(' '), "{}: {:?} is not `<binary id> <test>`", path.display(), e.id);
    }
}
