//! Runs every replay case under tests/replay/: `switchyard replay <case>/scenario.yaml --out
//! <tmp> --expect <case>/expected` must succeed. All failing cases are reported together.

use std::path::{Path, PathBuf};
use std::process::Command;

fn replay_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("replay")
}

/// Every directory under tests/replay holding a scenario.yaml, sorted.
fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(replay_root())
        .expect("tests/replay")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("scenario.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("replay-cases-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_replay_case_passes() {
    let mut failures = Vec::new();
    let dirs = case_dirs();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = fresh_dir(&name);
        let res = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("replay")
            .arg(dir.join("scenario.yaml"))
            .arg("--out")
            .arg(&out)
            .arg("--expect")
            .arg(dir.join("expected"))
            .output()
            .expect("run switchyard replay");
        if res.status.success() {
            let _ = std::fs::remove_dir_all(&out);
        } else {
            failures.push(format!(
                "=== case {name}: {}\n--- stdout\n{}--- stderr\n{}(output kept in {})",
                res.status,
                String::from_utf8_lossy(&res.stdout),
                String::from_utf8_lossy(&res.stderr),
                out.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} replay cases failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn at_least_30_replay_cases() {
    let n = case_dirs().len();
    assert!(n >= 30, "only {n} replay cases under tests/replay");
}
