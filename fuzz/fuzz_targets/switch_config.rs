//! The files `switchyard run --switch` and `switchyard replay` read: arbitrary bytes as the
//! switch's YAML configuration, or, when they start with a pcap magic number, as a pcap file
//! of frames to replay.
//!
//! Besides never panicking: a configuration that parses and validates compiles into a switch
//! (or is refused with a typed error), and recompiles against its own compiled self (the
//! reload path); its YAML, written back, loads as the same configuration. A pcap file reads
//! into frames or a typed error, each frame no longer than the bytes that carried it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use switchyard_dataplane::config::Config;
use switchyard_dataplane::port::pcap::read_pcap;
use switchyard_dataplane::SwitchConfig;

/// Table sizes up to which a configuration is compiled: a valid configuration may ask for
/// 2^24 MAC or connection entries, a size chosen by the operator, which allocates up front.
const MAX_TABLE: usize = 1 << 12;

fuzz_target!(|data: &[u8]| {
    const MAGICS: [[u8; 4]; 5] = [
        [0xd4, 0xc3, 0xb2, 0xa1],
        [0xa1, 0xb2, 0xc3, 0xd4],
        [0x4d, 0x3c, 0xb2, 0xa1],
        [0xa1, 0xb2, 0x3c, 0x4d],
        [0x0a, 0x0d, 0x0d, 0x0a],
    ];
    if data.len() >= 4 && MAGICS.contains(&[data[0], data[1], data[2], data[3]]) {
        let mut f = tempfile();
        f.write_all(data).unwrap();
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f)));
        if let Ok(frames) = read_pcap(&path) {
            let total: usize = frames.iter().map(|f| f.data.len()).sum();
            assert!(total <= data.len(), "{total} bytes of frames from a file of {}", data.len());
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = Config::from_yaml_str(text) else { return };
    let yaml = cfg.to_yaml();
    let back = Config::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("written back, refused: {e}\n{yaml}"));
    assert_eq!(back, cfg, "written back as\n{yaml}");
    let small = cfg.bridges.iter().all(|b| {
        b.mac_table_size.is_none_or(|n| n <= MAX_TABLE) && b.conntrack_size.is_none_or(|n| n <= MAX_TABLE)
    });
    if small {
        if let Ok(sw) = SwitchConfig::compile(&cfg, None) {
            SwitchConfig::compile(&cfg, Some(&sw)).expect("recompiles against itself");
        }
    }
});

/// An unnamed file in memory.
fn tempfile() -> std::fs::File {
    switchyard_ports::vhost::sys::memfd("pcap", 0).expect("memfd")
}
