//! `testkit-skip TEST WHY`: skips as a test named TEST would ([`switchyard_testkit::skip`]): prints it,
//! logs it to `$SWITCHYARD_SKIP_LOG`, and in strict mode fails (exit 101, a panic) unless TEST
//! is listed in the expected-skips file. For the tests of strict mode itself, and for scripts.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [test, why] = args.as_slice() else {
        eprintln!("usage: testkit-skip TEST WHY");
        std::process::exit(2);
    };
    switchyard_testkit::skip(test, why);
}
