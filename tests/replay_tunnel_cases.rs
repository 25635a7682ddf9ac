//! The replay cases with outer headers (tests/replay/tunnel_*) are written by
//! tests/replay/tunnel_cases.py with scapy, from the RFC fields, not from the switch: this
//! runs the script into a temporary directory and checks that the committed files are exactly
//! what it writes (tests/replay_cases.rs replays them, as every case).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out
}

#[test]
fn tunnel_cases_are_what_the_scapy_script_writes() {
    if let Err(why) = testkit::probe::scapy() {
        testkit::skip(&testkit::current_test(), &why);
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("replay");
    let tmp = tempfile::tempdir().expect("tempdir");
    let res = Command::new(testkit::probe::SCAPY_PYTHON)
        .arg(root.join("tunnel_cases.py"))
        .arg(tmp.path())
        .output()
        .expect("run tunnel_cases.py");
    assert!(res.status.success(), "tunnel_cases.py: {}", String::from_utf8_lossy(&res.stderr));
    let cases: Vec<PathBuf> =
        std::fs::read_dir(tmp.path()).expect("out").flatten().map(|e| e.path()).collect();
    assert!(cases.len() >= 2, "the script wrote {} cases", cases.len());
    let mut problems = Vec::new();
    for case in &cases {
        let name = case.file_name().expect("name").to_string_lossy().to_string();
        let committed = root.join(&name);
        let (want, have) = (files_under(case), files_under(&committed));
        for rel in want.union(&have) {
            match (std::fs::read(case.join(rel)), std::fs::read(committed.join(rel))) {
                (Ok(w), Ok(h)) if w == h => {}
                (Ok(_), Ok(_)) => problems.push(format!("{name}/{}: differs", rel.display())),
                (Ok(_), Err(e)) => problems.push(format!("{name}/{}: not committed ({e})", rel.display())),
                (Err(_), _) => problems.push(format!("{name}/{}: not written by the script", rel.display())),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "tests/replay/tunnel_* differ from what tests/replay/tunnel_cases.py writes (run it):\n  {}",
        problems.join("\n  ")
    );
}
