//! A port renamed in one plan, keeping what it opens (a vhost-user socket path, a TAP
//! interface), is up and reachable when that plan's reconcile returns.
//!
//! The new name opens before the old one closes. A vhost-user server takes the socket path
//! over (unlinks the old socket, binds its own); the old port, closed after, must leave the
//! path alone, or QEMU finds no socket to reconnect to while the new port listens on an
//! unlinked inode. A TAP interface is attached by one port at a time: the new name opens
//! once the old one has let it go, within the same reconcile.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use switchyard_control::runtime::{Runtime, RuntimeOptions};
use switchyard_dataplane::config::{BridgeConfig, Config, PortConfig, PortType};

/// A bridge of a ring port and `port`.
fn config(port: PortConfig) -> Config {
    let vm = PortConfig { name: "rr-vm".into(), kind: Some(PortType::Ring), ..Default::default() };
    Config { bridges: vec![BridgeConfig::new("br", vec![vm, port])] }
}

fn vhost(name: &str, socket: &Path) -> PortConfig {
    PortConfig {
        name: name.into(),
        kind: Some(PortType::Vhostuser),
        socket: Some(socket.display().to_string()),
        mode: Some("server".into()),
        ..Default::default()
    }
}

#[test]
fn a_renamed_vhost_server_keeps_its_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let none = |_: &str| None;
    rt.apply(&config(vhost("vr-a", &sock)), &none).unwrap();
    assert_eq!(rt.port_error("vr-a"), None);
    assert!(UnixStream::connect(&sock).is_ok(), "vr-a does not listen at {}", sock.display());

    let a = rt.apply(&config(vhost("vr-b", &sock)), &none).unwrap();
    assert_eq!(
        (a.diff.added.as_slice(), a.diff.removed.as_slice()),
        (&["vr-b".to_string()][..], &["vr-a".to_string()][..])
    );
    assert!(a.in_time, "the workers did not take the plan in time");
    assert_eq!(rt.port_error("vr-b"), None, "the renamed port is down: {:?}", a.lines);
    assert!(rt.backend("vr-a").is_none() && rt.backend("vr-b").is_some());
    // The path is a socket, and the one vr-b listens on: vr-a's is closed, so a connection
    // there reaches vr-b (QEMU reconnecting finds the renamed port).
    let md = std::fs::symlink_metadata(&sock).expect("the socket path is gone after the rename");
    assert!(md.file_type().is_socket(), "{} is no socket: {md:?}", sock.display());
    UnixStream::connect(&sock).expect("nobody listens at the socket path after the rename");

    // Removing the port at last removes its socket.
    rt.apply(&Config { bridges: vec![BridgeConfig::new("br", vec![])] }, &none).unwrap();
    assert!(!sock.exists(), "{} left behind by the removed port", sock.display());
}

/// A TAP port renamed onto the same interface (root and /dev/net/tun; skips without them).
#[test]
fn a_renamed_tap_port_is_up_after_one_reconcile() {
    if let Err(why) = testkit::probe::root() {
        return testkit::skip(&testkit::current_test(), &why);
    }
    let iface = format!("sytr{}", std::process::id() % 100_000);
    let tap = |name: &str| PortConfig {
        name: name.into(),
        kind: Some(PortType::Tap),
        iface: Some(iface.clone()),
        ..Default::default()
    };
    let mut rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let none = |_: &str| None;
    rt.apply(&config(tap("tr-a")), &none).unwrap();
    if let Some(e) = rt.port_error("tr-a") {
        let probe =
            if Path::new("/dev/net/tun").exists() { Ok(()) } else { Err("no /dev/net/tun".to_string()) };
        return testkit::fail_or_skip(&testkit::current_test(), "opening a TAP port", &e, probe);
    }
    let a = rt.apply(&config(tap("tr-b")), &none).unwrap();
    assert!(a.in_time, "the workers did not take the plan in time");
    assert_eq!(rt.port_error("tr-b"), None, "the renamed port is down: {:?}", a.lines);
    assert!(rt.backend("tr-a").is_none() && rt.backend("tr-b").is_some());
    assert!(Path::new("/sys/class/net").join(&iface).exists(), "{iface} is gone");
    rt.apply(&Config { bridges: vec![BridgeConfig::new("br", vec![])] }, &none).unwrap();
}
