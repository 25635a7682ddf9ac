//! What a CNI caller sends the plugin: its `CNI_*` environment and the network configuration
//! on stdin (with `prevResult`, `runtimeConfig`, `args`, ...). Input: the environment as
//! `KEY=VALUE` lines, a blank line, then the stdin bytes.
//!
//! Besides never panicking: the verb, the environment and the configuration are each read
//! into their type or refused with their typed error, whose CNI error object is one line of
//! JSON naming a supported `cniVersion`, with a non-zero exit status; a configuration that
//! parses keeps its invariants (trunk sorted and without duplicates, VLANs 1..4094, MTU 68..65535
//! or none), and its `prevResult` written in the configuration's version reads back as what
//! was written (as what was read, in the current version).
//! Only what parses is exercised: ADD, DEL, CHECK, STATUS and GC act on the system, VERSION does not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use switchyard_cni::config::{peek_version, NetConf};
use switchyard_cni::env::{command, CniEnv, Command};
use switchyard_cni::error::CniError;
use switchyard_cni::result::CniResult;
use switchyard_cni::version::Version;

/// The error object the plugin would print for `e`, checked as the runtime reads it.
fn check_error(e: CniError, shown: &str) {
    let status = e.exit_status();
    assert!((1..=255).contains(&status), "exit status {status}");
    let out = e.to_json(shown);
    assert!(!out.contains('\n'), "error object on more than one line: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("the error object is JSON");
    assert_eq!(v["cniVersion"], shown);
    assert!(v["code"].is_u64(), "no code in {out}");
}

fuzz_target!(|data: &[u8]| {
    let (env_part, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| vars.get(k).cloned();
    // As `switchyard_cni::run` does: errors in the config's own version when it names one.
    let shown = peek_version(stdin).and_then(|v| Version::parse(&v)).unwrap_or(Version::CURRENT).as_str();
    match command(&get) {
        Ok(c) => {
            assert_eq!(Command::parse(c.name()), Some(c), "verb {:?}", c.name());
            if c == Command::Version {
                let out = switchyard_cni::run(&get, stdin);
                assert_eq!(out.status, 0);
                let _: serde_json::Value = serde_json::from_str(&out.stdout).expect("VERSION is JSON");
            }
            for verb in [Command::Add, Command::Del, Command::Check, Command::Status, Command::Gc] {
                match CniEnv::read(verb, &get) {
                    Ok(env) => {
                        if matches!(verb, Command::Add | Command::Del | Command::Check) {
                            assert!(!env.container_id.is_empty() && !env.ifname.is_empty());
                            assert!(env.ifname.len() <= 15);
                        }
                        if matches!(verb, Command::Add | Command::Check) {
                            assert!(env.netns.is_some());
                        }
                    }
                    Err(e) => check_error(e.into(), shown),
                }
            }
        }
        Err(e) => check_error(e.into(), shown),
    }
    match NetConf::parse(stdin) {
        Ok(c) => {
            assert!(!c.bridge.is_empty());
            assert!(c.vlan.is_none_or(|v| (1..=4094).contains(&v)), "vlan {:?}", c.vlan);
            assert!(c.trunk.windows(2).all(|w| w[0] < w[1]), "trunk {:?}", c.trunk);
            assert!(c.trunk.iter().all(|&t| (1..=4094).contains(&t)), "trunk {:?}", c.trunk);
            assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)), "mtu {:?}", c.mtu);
            if let Some(r) = &c.prev_result {
                // Written in an older version, a result loses what that version lacks (route
                // attributes before 1.1.0): what is written then reads back and writes the same.
                let j = r.to_json(c.version);
                let back = CniResult::parse(&j).expect("a result written reads back");
                assert_eq!(back.to_json(c.version), j);
                if c.version == Version::CURRENT {
                    assert_eq!(&back, r);
                }
            }
        }
        Err(e) => check_error(e.into(), shown),
    }
});
