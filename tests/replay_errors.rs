//! Bad input to `switchyard replay` gets a clear error: a malformed scenario names the field, a
//! damaged pcap names the file and the frame, an unknown port in `inputs` is refused before
//! anything is written, a file that is not a pcap is named, and two ports whose output files
//! would be one (`a/b` and `a_b`) are refused, naming both.

mod replay_spec;

use replay_spec::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    ok: bool,
    stderr: String,
    out: PathBuf,
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("replay-errors-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("in")).unwrap();
    d
}

const GOOD_BRIDGES: &str = "bridges:
  - name: br0
    ports:
      - name: p1
        vlan_mode: access
        tag: 10
      - name: p2
        vlan_mode: access
        tag: 10
";

fn good_pcap() -> Vec<u8> {
    pcap_of(&[
        (1_000_000, pkt(BCAST, m(0x0a), None, "one")),
        (1_001_000, pkt(BCAST, m(0x0a), None, "two")),
        (1_002_000, pkt(BCAST, m(0x0a), None, "three")),
    ])
}

/// Writes the scenario and the input files, runs replay with `--out DIR/out` (not created).
fn run(dir: &Path, scenario: &str, files: &[(&str, Vec<u8>)]) -> Run {
    std::fs::write(dir.join("scenario.yaml"), scenario).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let out = dir.join("out");
    let res = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("replay")
        .arg(dir.join("scenario.yaml"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run switchyard replay");
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    eprintln!("exit: {}\nstdout:\n{}stderr:\n{stderr}", res.status, String::from_utf8_lossy(&res.stdout));
    Run { ok: res.status.success(), stderr, out }
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect(),
        Err(_) => vec![],
    }
}

#[test]
fn sanity_the_good_scenario_runs() {
    let d = scratch("good");
    let r = run(&d, &format!("{GOOD_BRIDGES}inputs:\n  p1: in/p1.pcap\n"), &[("in/p1.pcap", good_pcap())]);
    assert!(r.ok, "the unbroken scenario must run: {}", r.stderr);
    assert!(r.out.join("p2.pcap").is_file());
}

#[test]
fn malformed_tag_names_the_field() {
    let d = scratch("bad_tag");
    let scenario = GOOD_BRIDGES.replacen("tag: 10", "tag: \"abc\"", 1) + "inputs:\n  p1: in/p1.pcap\n";
    let r = run(&d, &scenario, &[("in/p1.pcap", good_pcap())]);
    assert!(!r.ok, "a tag of \"abc\" must be refused");
    assert!(r.stderr.contains("tag"), "stderr must name the field `tag`: {}", r.stderr);
    assert!(files_in(&r.out).is_empty(), "nothing may be written: {:?}", files_in(&r.out));
}

/// `a/b` and `a_b` both map to `a_b.pcap`: refused before anything is written, naming both.
#[test]
fn ports_sharing_an_output_file_are_refused() {
    let d = scratch("same_file");
    let scenario = GOOD_BRIDGES.replacen("name: p1", "name: a/b", 1).replacen("name: p2", "name: a_b", 1)
        + "inputs:\n  a/b: in/p1.pcap\n";
    let r = run(&d, &scenario, &[("in/p1.pcap", good_pcap())]);
    assert!(!r.ok, "two ports writing one file must be refused");
    assert!(
        r.stderr.contains("ports \"a/b\" and \"a_b\" would both write a_b.pcap"),
        "stderr must name both ports and the file: {}",
        r.stderr
    );
    assert!(files_in(&r.out).is_empty(), "nothing may be written: {:?}", files_in(&r.out));
}

#[test]
fn unknown_key_names_the_key() {
    let d = scratch("bad_key");
    let scenario =
        GOOD_BRIDGES.replacen("vlan_mode: access", "vlanmode: access", 1) + "inputs:\n  p1: in/p1.pcap\n";
    let r = run(&d, &scenario, &[("in/p1.pcap", good_pcap())]);
    assert!(!r.ok, "an unknown key must be refused");
    assert!(r.stderr.contains("vlanmode"), "stderr must name the key `vlanmode`: {}", r.stderr);
}

#[test]
fn out_of_range_vlan_names_the_field() {
    let d = scratch("bad_vlan");
    let scenario = GOOD_BRIDGES.replacen("tag: 10", "tag: 4095", 1) + "inputs:\n  p1: in/p1.pcap\n";
    let r = run(&d, &scenario, &[("in/p1.pcap", good_pcap())]);
    assert!(!r.ok, "tag 4095 must be refused");
    assert!(r.stderr.contains("tag"), "stderr must name the field `tag`: {}", r.stderr);
}

/// Cuts the good pcap at `cut` bytes and expects "frame N".
fn check_cut(name: &str, cut: usize, frame: usize) {
    let d = scratch(name);
    let mut bytes = good_pcap();
    bytes.truncate(cut);
    let r = run(&d, &format!("{GOOD_BRIDGES}inputs:\n  p1: in/cut.pcap\n"), &[("in/cut.pcap", bytes)]);
    assert!(!r.ok, "a pcap cut at byte {cut} must be refused");
    assert!(r.stderr.contains("cut.pcap"), "stderr must name the file: {}", r.stderr);
    assert!(r.stderr.contains(&format!("frame {frame}")), "stderr must say `frame {frame}`: {}", r.stderr);
}

// Layout of good_pcap(): 24-byte file header, then records of 16 + 60 bytes:
// record 1 at 24..100, record 2 at 100..176, record 3 at 176..252.

#[test]
fn pcap_cut_inside_the_data_of_frame_2() {
    check_cut("cut_data", 100 + 16 + 30, 2);
}

#[test]
fn pcap_cut_inside_the_header_of_frame_3() {
    check_cut("cut_header", 176 + 8, 3);
}

#[test]
fn pcap_cut_inside_the_data_of_frame_1() {
    check_cut("cut_first", 24 + 16 + 1, 1);
}

#[test]
fn unknown_input_port_is_refused_before_anything_runs() {
    let d = scratch("unknown_port");
    let scenario = format!("{GOOD_BRIDGES}inputs:\n  p1: in/p1.pcap\n  nosuchport: in/p1.pcap\n");
    let r = run(&d, &scenario, &[("in/p1.pcap", good_pcap())]);
    assert!(!r.ok, "an unknown port in inputs must be refused");
    assert!(r.stderr.contains("nosuchport"), "stderr must name the port: {}", r.stderr);
    assert!(files_in(&r.out).is_empty(), "no output may be written: {:?}", files_in(&r.out));
}

#[test]
fn a_text_file_is_not_a_pcap() {
    let d = scratch("not_pcap");
    let r = run(
        &d,
        &format!("{GOOD_BRIDGES}inputs:\n  p1: in/notes.pcap\n"),
        &[("in/notes.pcap", b"these are notes, not a packet capture\n".to_vec())],
    );
    assert!(!r.ok, "a text file must be refused");
    assert!(r.stderr.contains("notes.pcap"), "stderr must name the file: {}", r.stderr);
}

#[test]
fn an_empty_file_is_not_a_pcap() {
    let d = scratch("empty_pcap");
    let r = run(&d, &format!("{GOOD_BRIDGES}inputs:\n  p1: in/empty.pcap\n"), &[("in/empty.pcap", vec![])]);
    assert!(!r.ok, "an empty file must be refused");
    assert!(r.stderr.contains("empty.pcap"), "stderr must name the file: {}", r.stderr);
}

#[test]
fn a_missing_input_file_is_named() {
    let d = scratch("missing_pcap");
    let r = run(&d, &format!("{GOOD_BRIDGES}inputs:\n  p1: in/absent.pcap\n"), &[]);
    assert!(!r.ok, "a missing file must be refused");
    assert!(r.stderr.contains("absent.pcap"), "stderr must name the file: {}", r.stderr);
}
