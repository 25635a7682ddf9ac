//! MultiNetworkPolicy with real traffic, in the manner of Cyclonus: four network-namespace
//! "VMs" in two namespaces, on veth pairs whose host ends are AF_PACKET ports of
//! `switchyard run --state DIR`, two policies (a podSelector and a namespaceSelector ingress
//! rule with ports; an ingress ipBlock with except and an egress rule to a pod in another
//! namespace), and the whole matrix of TCP connect, UDP request/reply and ICMP echo between
//! every pair, compared with a truth table written out below from the semantics of
//! docs/policy.md (not computed by switchyard's code). Then: a TCP connect to a closed port
//! (the RST comes back only where the connection is allowed), and a VM's labels changing
//! under the running switch.
//!
//! Needs root (netns, veth); skips with a message elsewhere.

#[path = "../ports/tests/kports_common/mod.rs"]
mod kports_common;

use kports_common::{in_netns, ip, skip, skip_reason, VethNs};
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::manifest::{policy, Vmi};
use testkit::run::RunProcess;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const CLOSED_PORT: u16 = 9090;
const PROBE: Duration = Duration::from_millis(700);

/// The VMs: (namespace, name, labels, address).
const VMS: [(&str, &str, &str, &str); 4] = [
    ("red", "web", "app: web", "10.77.0.1"),
    ("red", "client", "role: client", "10.77.0.2"),
    ("blue", "db", "app: db", "10.77.0.3"),
    ("blue", "tester", "role: client", "10.77.0.4"),
];

/// red/web-in: web takes TCP 8080 from red's clients and UDP 5353 from namespace blue.
/// blue/db-lock: db takes anything from 10.77.0.0/24 except tester, and may only open TCP
/// 8080 to red's web.
fn policies() -> String {
    let web_in = r#"  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
      ports: [{protocol: TCP, port: 8080}]
    - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
      ports: [{protocol: UDP, port: 5353}]
"#;
    let db_lock = r#"  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{ipBlock: {cidr: 10.77.0.0/24, except: [10.77.0.4/32]}}]
  egress:
    - to: [{namespaceSelector: {matchLabels: {team: red}}, podSelector: {matchLabels: {app: web}}}]
      ports: [{protocol: TCP, port: 8000, endPort: 8080}]
"#;
    [policy("red", "web-in", "infra/polnet", web_in), policy("blue", "db-lock", "infra/polnet", db_lock)]
        .join("---\n")
}

/// Rows: from web, client, db, tester; columns: to web, client, db, tester. `.` self, `Y`
/// allowed, `-` refused.
///
/// TCP 8080: web's ingress takes only red clients on TCP; db's ingress takes all but tester;
/// db's egress reaches only web, which refuses db on TCP.
const TCP: [&str; 4] = [".YYY", "Y.YY", "--.-", "-Y-."];
/// UDP 5353: web takes UDP from blue only; db sends nothing but TCP.
const UDP: [&str; 4] = [".YYY", "-.YY", "--.-", "YY-."];
/// ICMP echo: web's rules all name ports (no ICMP); db's ingress rule names none.
const ICMP: [&str; 4] = [".YYY", "-.YY", "--.-", "-Y-."];

fn vmi(i: usize, labels: &str) -> String {
    let (ns, name, _, addr) = VMS[i];
    let mac = format!("          macAddress: \"02:77:00:00:00:0{}\"", i + 1);
    let status = format!("  interfaces:\n    - name: net1\n      ipAddress: {addr}\n");
    Vmi::new(ns, name, "infra/polnet", "n1").labels(labels).iface(&mac).status(&status).yaml()
}

const NAD: &str = r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: polnet, namespace: infra}
spec:
  config: '{"cniVersion":"0.3.1","name":"polnet","type":"cnv-bridge","bridge":"br-pol"}'
---
apiVersion: v1
kind: Namespace
metadata: {name: red, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: blue, labels: {team: blue}}
"#;

/// The switch under test; `ctl` and its waits are [`RunProcess`]'s.
type Run = RunProcess;

const WAIT: Duration = Duration::from_secs(10);

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Connected / a reply came back.
    Reply,
    /// TCP: the connection was refused (an RST came back).
    Reset,
    /// Nothing came back in time.
    Nothing,
}

fn tcp_probe(ns: &str, to: &str, port: u16) -> Seen {
    let addr: SocketAddr = format!("{to}:{port}").parse().unwrap();
    in_netns(ns, || {
        Ok(match TcpStream::connect_timeout(&addr, PROBE) {
            Ok(_) => Seen::Reply,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Seen::Reset,
            Err(_) => Seen::Nothing,
        })
    })
    .unwrap()
}

fn udp_probe(ns: &str, to: &str) -> Seen {
    let s = in_netns(ns, || UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())).unwrap();
    s.set_read_timeout(Some(PROBE)).unwrap();
    s.send_to(b"ping", (to, UDP_PORT)).unwrap();
    let mut b = [0u8; 16];
    match s.recv_from(&mut b) {
        Ok((4, _)) if &b[..4] == b"pong" => Seen::Reply,
        _ => Seen::Nothing,
    }
}

fn icmp_probe(ns: &str, to: &str) -> Seen {
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-q", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Seen::Reply
    } else {
        Seen::Nothing
    }
}

/// Every pair, every protocol, all at once (each probe waits at most about a second):
/// `(proto, from, to) -> seen`.
fn matrix(ns: &[String]) -> Vec<(&'static str, usize, usize, Seen)> {
    let mut th = Vec::new();
    for (from, from_ns) in ns.iter().enumerate() {
        for (to, vm) in VMS.iter().enumerate().filter(|&(t, _)| t != from) {
            for proto in ["tcp", "udp", "icmp"] {
                let n = from_ns.clone();
                let addr = vm.3;
                th.push(std::thread::spawn(move || {
                    let seen = match proto {
                        "tcp" => tcp_probe(&n, addr, TCP_PORT),
                        "udp" => udp_probe(&n, addr),
                        _ => icmp_probe(&n, addr),
                    };
                    (proto, from, to, seen)
                }));
            }
        }
    }
    th.into_iter().map(|t| t.join().unwrap()).collect()
}

/// A TCP listener on 8080 and a UDP echo on 5353 in each namespace, until `stop`.
fn servers(ns: &[String], stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let mut th = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let addr = VMS[i].3;
        let l = in_netns(n, || TcpListener::bind((addr, TCP_PORT)).map_err(|e| e.to_string())).unwrap();
        l.set_nonblocking(true).unwrap();
        let u = in_netns(n, || UdpSocket::bind((addr, UDP_PORT)).map_err(|e| e.to_string())).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let (s1, s2) = (stop.clone(), stop.clone());
        th.push(std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        th.push(std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = u.recv_from(&mut b) {
                    let _ = u.send_to(b"pong", from);
                }
            }
        }));
    }
    th
}

fn expected(proto: &str, from: usize, to: usize) -> Seen {
    let table = match proto {
        "tcp" => TCP,
        "udp" => UDP,
        _ => ICMP,
    };
    if table[from].as_bytes()[to] == b'Y' {
        Seen::Reply
    } else {
        Seen::Nothing
    }
}

#[test]
fn reachability_truth_table() {
    if let Some(why) = skip_reason() {
        return skip("reachability_truth_table", &why);
    }
    let vms: Vec<VethNs> = (0..4).map(|_| VethNs::create().expect("netns and veth")).collect();
    for (i, v) in vms.iter().enumerate() {
        ip(&["-n", &v.ns, "link", "set", &v.peer, "address", &format!("02:77:00:00:00:0{}", i + 1)]).unwrap();
        ip(&["-n", &v.ns, "addr", "add", &format!("{}/24", VMS[i].3), "dev", &v.peer]).unwrap();
        ip(&["-n", &v.ns, "link", "set", "lo", "up"]).unwrap();
    }
    let ns: Vec<String> = vms.iter().map(|v| v.ns.clone()).collect();

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("net.yaml"), NAD).unwrap();
    for (i, vm) in VMS.iter().enumerate() {
        std::fs::write(state.join(format!("vm-{i}.yaml")), vmi(i, vm.2)).unwrap();
    }
    std::fs::write(state.join("policies.yaml"), policies()).unwrap();
    let mut over = String::from("ports:\n");
    for (i, v) in vms.iter().enumerate() {
        over += &format!("  {}/{}/net1: {{type: afpacket, iface: {}}}\n", VMS[i].0, VMS[i].1, v.host);
    }
    std::fs::write(dir.path().join("run.yaml"), over).unwrap();
    let run = start(dir.path(), &state);
    run.wait_ctl(&["show", "ports"], "four ports up", WAIT, |s| s.matches(" up").count() >= 4);
    run.wait_ctl(&["show", "config"], "the policies", WAIT, |s| s.matches("policy:").count() == 2);

    let stop = Arc::new(AtomicBool::new(false));
    let srv = servers(&ns, &stop);
    let got = matrix(&ns);
    let mut wrong = Vec::new();
    for (proto, from, to, seen) in &got {
        let want = expected(proto, *from, *to);
        if *seen != want {
            wrong.push(format!("{proto} {} -> {}: saw {seen:?}, want {want:?}", VMS[*from].1, VMS[*to].1));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} probes differ:\n{}\nstats:\n{}",
        wrong.len(),
        got.len(),
        wrong.join("\n"),
        run.ctl(&["show", "stats"])
    );

    // A closed port: the RST comes back where the connection is allowed (web -> db), nothing
    // where it is refused (tester -> db).
    assert_eq!(
        tcp_probe(&ns[0], VMS[2].3, CLOSED_PORT),
        Seen::Reset,
        "the RST of an allowed connection passes"
    );
    assert_eq!(tcp_probe(&ns[3], VMS[2].3, CLOSED_PORT), Seen::Nothing);
    let stats = run.ctl(&["show", "stats"]);
    assert!(stats.contains("policy_ingress_denied=") && stats.contains("policy_egress_denied="), "{stats}");
    let ct = run.ctl(&["show", "conntrack"]);
    assert!(ct.contains("10.77.0.1") && ct.contains("connections tracked"), "{ct}");

    // ctl trace names the rule that allowed a new connection, and the drop of a refused one
    // (on copies of the tables: nothing is committed to the running one).
    let t = run.ctl(&["trace", "red/web/net1", &syn_hex(0, 2, 40999)]);
    assert!(t.contains("policy=new ingress-allowed-by=[blue/db-lock") && t.contains("-> unicast"), "{t}");
    let t = run.ctl(&["trace", "blue/tester/net1", &syn_hex(3, 0, 40998)]);
    assert!(t.contains("-> drop policy_ingress_denied"), "{t}");
    let ct = run.ctl(&["show", "conntrack"]);
    assert!(!ct.contains("40999") && !ct.contains("40998"), "a trace committed a connection:\n{ct}");

    // web's labels change: no policy selects it any more, client's UDP gets through.
    std::fs::write(state.join("vm-0.yaml"), vmi(0, "app: retired")).unwrap();
    run.wait_ctl(&["show", "config"], "web's policy gone", WAIT, |s| s.matches("policy:").count() == 1);
    assert_eq!(udp_probe(&ns[1], VMS[0].3), Seen::Reply, "web is open now");

    stop.store(true, Ordering::Relaxed);
    for t in srv {
        t.join().unwrap();
    }
}

/// A TCP SYN from VM `from` to VM `to`'s port 8080 (source port `sport`), as `ctl trace`
/// takes it: hex.
fn syn_hex(from: usize, to: usize, sport: u16) -> String {
    let ip = |i: usize| VMS[i].3.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let mac = |i: usize| [2, 0x77, 0, 0, 0, i as u8 + 1];
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(from), mac(to))
        .ipv4(ip(from), ip(to), 64)
        .tcp(sport, TCP_PORT, 1, 1000)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn start(dir: &Path, state: &Path) -> Run {
    let config = dir.join("run.yaml");
    let args: [&OsStr; 6] = [
        "--state".as_ref(),
        state.as_ref(),
        "--node".as_ref(),
        "n1".as_ref(),
        "--config".as_ref(),
        config.as_ref(),
    ];
    RunProcess::spawn(BIN, dir, args, WAIT)
}

/// A VM whose port switchyard's CNI plugin attached (the KubeVirt hand-off), with real
/// traffic: `web` is a VMI on a NAD of type `switchyard`, its netns' veth added over the
/// control socket as the CNI ADD of pod `virt-launcher-web-abcde` would add it; `client` a
/// planned VM on a bridge NAD of the same bridge (the policy is for both NADs, so client is a
/// peer); `pod` a veth pod that is no VMI's (CNI ADD too). web-in lets only role=client reach web's TCP 8080: client connects, pod does not,
/// and web sending from an address that is not its own is dropped as `spoofed_src_ip`.
#[test]
fn a_cni_attached_vm_is_filtered_with_real_traffic() {
    if let Some(why) = skip_reason() {
        return skip("a_cni_attached_vm_is_filtered_with_real_traffic", &why);
    }
    // web, client, pod.
    let addrs = ["10.78.0.1", "10.78.0.2", "10.78.0.3"];
    let vms: Vec<VethNs> = (0..3).map(|_| VethNs::create().expect("netns and veth")).collect();
    for (i, v) in vms.iter().enumerate() {
        ip(&["-n", &v.ns, "link", "set", &v.peer, "address", &format!("02:78:00:00:00:0{}", i + 1)]).unwrap();
        ip(&["-n", &v.ns, "addr", "add", &format!("{}/24", addrs[i]), "dev", &v.peer]).unwrap();
        ip(&["-n", &v.ns, "link", "set", "lo", "up"]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let nads = r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: sy, namespace: infra}
spec:
  config: '{"cniVersion":"1.0.0","name":"sy","type":"switchyard","bridge":"br-cni"}'
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: plain, namespace: infra}
spec:
  config: '{"cniVersion":"0.3.1","name":"plain","type":"cnv-bridge","bridge":"br-cni"}'
"#;
    std::fs::write(state.join("net.yaml"), nads).unwrap();
    let status = |a: &str| format!("  interfaces:\n    - name: net1\n      ipAddress: {a}\n");
    let (s0, s1) = (status(addrs[0]), status(addrs[1]));
    let web = Vmi::new("red", "web", "infra/sy", "n1").labels("app: web").status(&s0).yaml();
    let mac = "          macAddress: \"02:78:00:00:00:02\"";
    let client =
        Vmi::new("red", "client", "infra/plain", "n1").labels("role: client").iface(mac).status(&s1).yaml();
    std::fs::write(state.join("web.yaml"), web).unwrap();
    std::fs::write(state.join("client.yaml"), client).unwrap();
    let web_in = "  podSelector: {matchLabels: {app: web}}\n  ingress:\n    - from: [{podSelector: {matchLabels: {role: client}}}]\n      ports: [{protocol: TCP, port: 8080}]\n";
    std::fs::write(state.join("policy.yaml"), policy("red", "web-in", "infra/sy,infra/plain", web_in))
        .unwrap();
    let over = format!("ports:\n  red/client/net1: {{type: afpacket, iface: {}}}\n", vms[1].host);
    std::fs::write(dir.path().join("run.yaml"), over).unwrap();
    let run = start(dir.path(), &state);
    run.wait_ctl(&["show", "ports"], "client's port", WAIT, |s| s.contains("red/client/net1"));

    // The CNI ADDs, as switchyard-cni sends them (veth mode: an afpacket port on the host end).
    let hashed = "pod6c270ef2f25"; // KubeVirt's pod interface name of network net1
    for (i, (pod, ifname)) in [(0, ("virt-launcher-web-abcde", hashed)), (2, ("pod-x", "net1"))] {
        let mac = format!("02:78:00:00:00:0{}", i + 1);
        let req = serde_json::json!({"v": 1, "op": "cni_add", "cni": {
            "bridge": "br-cni",
            "attachment": {"container_id": format!("c{i}"), "ifname": ifname, "pod_namespace": "red", "pod_name": pod},
            "port": {"name": format!("red/{pod}/{ifname}"), "type": "afpacket", "iface": vms[i].host, "allowed_macs": [mac]},
            "mac": mac,
        }});
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&run.sock).unwrap();
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.contains("\"ok\":true"), "{out}");
    }
    run.wait_ctl(&["show", "ports"], "three ports up", WAIT, |s| s.matches(" up").count() >= 3);
    let cfg = run.ctl(&["show", "config"]);
    assert_eq!(cfg.matches("policy:").count(), 1, "web's CNI port alone has a policy:\n{cfg}");

    let ns: Vec<String> = vms.iter().map(|v| v.ns.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let l = in_netns(&ns[0], || TcpListener::bind((addrs[0], TCP_PORT)).map_err(|e| e.to_string())).unwrap();
    l.set_nonblocking(true).unwrap();
    let s1 = stop.clone();
    let srv = std::thread::spawn(move || {
        while !s1.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    assert_eq!(tcp_probe(&ns[1], addrs[0], TCP_PORT), Seen::Reply, "client -> web: a peer");
    assert_eq!(tcp_probe(&ns[2], addrs[0], TCP_PORT), Seen::Nothing, "pod -> web: no peer");
    // web sends from an address that is not its own: dropped at its port.
    ip(&["-n", &ns[0], "addr", "add", "10.78.0.99/24", "dev", &vms[0].peer]).unwrap();
    let spoofed = in_netns(&ns[0], || {
        let u = UdpSocket::bind(("10.78.0.99", 0)).map_err(|e| e.to_string())?;
        for _ in 0..5 {
            u.send_to(b"x", (addrs[2], 9)).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    spoofed.unwrap();
    let stats = run.wait_ctl(&["show", "stats"], "spoofed_src_ip", WAIT, |s| s.contains("spoofed_src_ip="));
    assert!(stats.contains("spoofed_src_ip="), "{stats}");
    stop.store(true, Ordering::Relaxed);
    srv.join().unwrap();
}
