//! The skip log (`$SWITCHYARD_SKIP_LOG`, one `<test id>\t<why>` line per skip) and the
//! expected-skips file (one `<test id>  # <reason>` line per test), and the summary of a run's
//! skips that `scripts/test.sh` prints (through the `skip-summary` binary).
//!
//! Invariant: the summary counts each test that logged a skip once (a retried test logs
//! again), and marks every one that the expected-skips file does not list.

/// One skipped test, from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub id: String,
    pub why: String,
}

/// One entry of the expected-skips file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub id: String,
    /// The reason after `#` (empty when the line gives none).
    pub reason: String,
}

/// `text` on one line (line breaks become ` | `), as the log stores a reason.
pub fn one_line(text: &str) -> String {
    text.trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// The skips a log holds, each test once (its first line), in the order they were logged.
/// Lines without a tab (not written by [`crate::skip`]) count as a test with no reason.
pub fn parse_log(text: &str) -> Vec<Skipped> {
    let mut out: Vec<Skipped> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (id, why) = line.split_once('\t').unwrap_or((line, ""));
        let id = normalise(id);
        if !out.iter().any(|s| s.id == id) {
            out.push(Skipped { id, why: why.trim().to_string() });
        }
    }
    out
}

/// The entries of an expected-skips file: `<binary id> <test path>  # <reason>` per line;
/// blank lines and lines that start with `#` are comments.
pub fn expected(text: &str) -> Vec<Expected> {
    text.lines()
        .filter_map(|line| {
            let (id, reason) = line.split_once('#').unwrap_or((line, ""));
            let id = normalise(id);
            (!id.is_empty()).then(|| Expected { id, reason: reason.trim().to_string() })
        })
        .collect()
}

/// The summary of a run's skips: a count line, then one line per skipped test.
pub fn render(skips: &[Skipped], expected: &[Expected]) -> String {
    let listed = |s: &Skipped| expected.iter().any(|e| e.id == s.id);
    let unlisted = skips.iter().filter(|s| !listed(s)).count();
    let mut out = format!(
        "== skips: {} test(s) skipped ({} expected, {unlisted} not in the expected-skips list)\n",
        skips.len(),
        skips.len() - unlisted
    );
    for s in skips {
        let mark = if listed(s) { "expected" } else { "NOT LISTED" };
        out.push_str(&format!("  SKIP [{mark}] {}: {}\n", s.id, s.why));
    }
    out
}

/// Runs of whitespace in a test id become one space.
fn normalise(id: &str) -> String {
    id.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_counts_each_test_once() {
        let log = "a::b t1\tno root\na::b t2\tno testpmd | exit 1\na::b t1\tno root\n\n";
        let s = parse_log(log);
        assert_eq!(
            s,
            vec![
                Skipped { id: "a::b t1".into(), why: "no root".into() },
                Skipped { id: "a::b t2".into(), why: "no testpmd | exit 1".into() },
            ]
        );
    }

    #[test]
    fn expected_entries_and_comments() {
        let text = "# a comment\n\na::b  t1   # no KVM here\nc t2\n";
        assert_eq!(
            expected(text),
            vec![
                Expected { id: "a::b t1".into(), reason: "no KVM here".into() },
                Expected { id: "c t2".into(), reason: String::new() },
            ]
        );
    }

    #[test]
    fn the_summary_marks_what_is_not_listed() {
        let skips = parse_log("x t1\twhy one\ny t2\twhy two\n");
        let exp = expected("x t1 # listed\n");
        let r = render(&skips, &exp);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "== skips: 2 test(s) skipped (1 expected, 1 not in the expected-skips list)");
        assert_eq!(lines[1], "  SKIP [expected] x t1: why one");
        assert_eq!(lines[2], "  SKIP [NOT LISTED] y t2: why two");
        assert_eq!(lines.len(), 3);
        assert_eq!(
            render(&[], &exp),
            "== skips: 0 test(s) skipped (0 expected, 0 not in the expected-skips list)\n"
        );
    }

    #[test]
    fn reasons_are_kept_on_one_line() {
        assert_eq!(one_line("  first\n\n second \nthird\n"), "first | second | third");
    }
}
