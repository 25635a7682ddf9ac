//! `switchyard replay --expect` is the oracle of every case under tests/replay, so it is tested
//! itself: a real case is copied, its expected output damaged in one way, and the real binary
//! must exit 1 and name the difference (the port, the frame number, the byte offset, the
//! times, the counter's path) and nothing else. The undamaged copy must pass, so that every
//! failure below is the damage's.

mod replay_spec;

use replay_spec::{pcap_file, Record};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The case every test damages: frames on three ports (p1: 2, p2: 2, p3: 1), learning, counters.
const CASE: &str = "learn_then_unicast";

/// A fresh copy of `CASE` for one test.
fn copy_case(test: &str) -> PathBuf {
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("replay-oracle-{}", std::process::id()))
        .join(test);
    let _ = std::fs::remove_dir_all(&dst);
    let src = replay_spec::replay_dir().join(CASE);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        std::fs::create_dir_all(dst.join(&rel)).unwrap();
        for e in std::fs::read_dir(src.join(&rel)).unwrap().flatten() {
            let r = rel.join(e.file_name());
            if e.path().is_dir() {
                stack.push(r);
            } else {
                std::fs::copy(e.path(), dst.join(&r)).unwrap();
            }
        }
    }
    dst
}

fn read_records(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        out.push(Record {
            time_us: p.timestamp.as_micros() as u64,
            data: p.data.to_vec(),
            orig_len: p.orig_len,
        });
    }
    out
}

/// Rewrites the expected capture of `port` through `damage`.
fn damage_pcap(case: &Path, port: &str, damage: impl FnOnce(&mut Vec<Record>)) -> Vec<Record> {
    let path = case.join("expected").join(format!("{port}.pcap"));
    let mut recs = read_records(&path);
    damage(&mut recs);
    std::fs::write(&path, pcap_file(&recs)).unwrap();
    recs
}

/// Rewrites the expected stats.json through `damage`.
fn damage_stats(case: &Path, damage: impl FnOnce(&mut serde_json::Value)) {
    let path = case.join("expected").join("stats.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    damage(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The exit code and stderr of `switchyard replay CASE/scenario.yaml --out CASE/out --expect
/// CASE/expected`.
fn replay_expect(case: &Path) -> (Option<i32>, String) {
    let res = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("replay")
        .arg(case.join("scenario.yaml"))
        .arg("--out")
        .arg(case.join("out"))
        .arg("--expect")
        .arg(case.join("expected"))
        .output()
        .expect("run switchyard replay");
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    eprintln!("exit: {}\nstderr:\n{stderr}", res.status);
    (res.status.code(), stderr)
}

/// The run fails with exit code 1, and its report is exactly the header plus `want` (lines).
fn assert_reported(case: &Path, want: &[String]) {
    let (code, stderr) = replay_expect(case);
    assert_eq!(code, Some(1), "a damaged expectation must fail the run with exit code 1");
    let lines: Vec<&str> = stderr.lines().collect();
    let header = format!("switchyard replay: output differs from {}:", case.join("expected").display());
    assert_eq!(lines.first().copied(), Some(header.as_str()));
    assert_eq!(lines[1..].to_vec(), want.iter().map(String::as_str).collect::<Vec<_>>());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// A pcap time as the report prints it: seconds and microseconds.
fn time(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

#[test]
fn the_undamaged_copy_passes() {
    let case = copy_case("undamaged");
    let (code, stderr) = replay_expect(&case);
    assert_eq!(code, Some(0), "the copied case must pass as it is: {stderr}");
    assert_eq!(read_records(&case.join("expected/p1.pcap")).len(), 2);
    assert_eq!(read_records(&case.join("expected/p2.pcap")).len(), 2);
    assert_eq!(read_records(&case.join("expected/p3.pcap")).len(), 1);
}

#[test]
fn a_changed_byte_is_named_by_port_frame_and_offset() {
    let case = copy_case("changed_byte");
    let mut original = Vec::new();
    let recs = damage_pcap(&case, "p2", |r| {
        original = r[1].data.clone();
        r[1].data[20] ^= 0x40;
    });
    assert_reported(
        &case,
        &[
            "port p2 (p2.pcap):".into(),
            "    frame 2:".into(),
            "      first differing byte at offset 20".into(),
            format!("      expected: {}", hex(&recs[1].data)),
            format!("      got:      {}", hex(&original)),
        ],
    );
}

#[test]
fn a_changed_length_is_named() {
    let case = copy_case("changed_length");
    let mut original = Vec::new();
    let recs = damage_pcap(&case, "p1", |r| {
        original = r[0].data.clone();
        r[0].data.push(0);
        r[0].orig_len += 1;
    });
    let n = original.len();
    assert_reported(
        &case,
        &[
            "port p1 (p1.pcap):".into(),
            "    frame 1:".into(),
            format!("      length: expected {}, got {n}", n + 1),
            format!("      expected: {}", hex(&recs[0].data)),
            format!("      got:      {}", hex(&original)),
        ],
    );
}

#[test]
fn a_frame_the_run_sent_but_not_expected_is_named() {
    let case = copy_case("extra_frame");
    let mut removed = None;
    damage_pcap(&case, "p1", |r| removed = r.pop());
    let removed = removed.unwrap();
    assert_reported(
        &case,
        &[
            "port p1 (p1.pcap):".into(),
            "    expected 1 frames, got 2".into(),
            format!("    unexpected frame 2 at {}: {}", time(removed.time_us), hex(&removed.data)),
        ],
    );
}

#[test]
fn an_expected_frame_the_run_did_not_send_is_named() {
    let case = copy_case("missing_frame");
    let mut added = None;
    damage_pcap(&case, "p3", |r| {
        let mut f = r[0].clone();
        f.time_us += 5_000;
        f.data[30] ^= 1;
        r.push(f.clone());
        added = Some(f);
    });
    let added = added.unwrap();
    assert_reported(
        &case,
        &[
            "port p3 (p3.pcap):".into(),
            "    expected 2 frames, got 1".into(),
            format!("    missing frame 2 at {}: {}", time(added.time_us), hex(&added.data)),
        ],
    );
}

#[test]
fn a_missing_expected_file_is_named() {
    let case = copy_case("missing_file");
    let path = case.join("expected").join("p3.pcap");
    std::fs::remove_file(&path).unwrap();
    assert_reported(&case, &[format!("port p3: expected file {} is missing", path.display())]);
}

#[test]
fn a_wrong_timestamp_is_named_with_both_times() {
    let case = copy_case("timestamp");
    let mut was = 0;
    let recs = damage_pcap(&case, "p2", |r| {
        was = r[0].time_us;
        r[0].time_us += 1;
    });
    assert_reported(
        &case,
        &[
            "port p2 (p2.pcap):".into(),
            format!("    frame 1: time expected {} got {}", time(recs[0].time_us), time(was)),
        ],
    );
}

#[test]
fn a_wrong_counter_is_named_by_its_path() {
    let case = copy_case("counters");
    damage_stats(&case, |v| {
        let p2 = &mut v["ports"]["p2"];
        p2["tx_packets"] = serde_json::json!(p2["tx_packets"].as_u64().unwrap() + 1);
        v["ports"]["p1"]["drops"]["dst_is_ingress"] = serde_json::json!(1);
        v["bridges"]["br0"]["fdb_entries"] = serde_json::json!(4);
    });
    // The case's own numbers (tests/replay_spec/cases.rs): p2 sends 2 frames, nothing is
    // dropped, and A, B and C are learned.
    assert_reported(
        &case,
        &[
            "stats bridges.br0.fdb_entries: expected 4, got 3".into(),
            "stats ports.p1.drops.dst_is_ingress: expected 1, got 0".into(),
            "stats ports.p2.tx_packets: expected 3, got 2".into(),
        ],
    );
}

#[test]
fn a_counter_missing_from_the_output_is_named() {
    let case = copy_case("unknown_counter");
    damage_stats(&case, |v| v["ports"]["p3"]["no_such_counter"] = serde_json::json!(0));
    assert_reported(&case, &["stats ports.p3.no_such_counter: expected 0, missing in output".into()]);
}

#[test]
fn buffers_leaked_is_compared() {
    let case = copy_case("leaked");
    damage_stats(&case, |v| {
        assert_eq!(v["buffers_leaked"], serde_json::json!(0), "every case expects no leak");
        v["buffers_leaked"] = serde_json::json!(1);
    });
    assert_reported(&case, &["stats buffers_leaked: expected 1, got 0".into()]);
}
