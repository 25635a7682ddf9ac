//! `skip-summary LOG [EXPECTED]`: the summary of the skips a test run logged (see
//! `switchyard_testkit::summary`), against the expected-skips file (default: `.ci/expected-skips`, or
//! `$SWITCHYARD_EXPECTED_SKIPS`). Exits 0 whatever it finds: the run's own status stands.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(log) = args.next() else {
        eprintln!("usage: skip-summary LOG [EXPECTED]");
        std::process::exit(2);
    };
    let expected_path =
        args.next().map(std::path::PathBuf::from).unwrap_or_else(switchyard_testkit::expected_skips_path);
    // No log file: nothing skipped (the file is created by the first skip).
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    let skips = switchyard_testkit::summary::parse_log(&log);
    print!(
        "{}",
        switchyard_testkit::summary::render(&skips, &switchyard_testkit::summary::expected(&expected))
    );
}
