//! The `--metrics` endpoint in process: `/readyz` says what is missing until the CNI ports are
//! restored and a full plan is applied, the reconcile counters and histogram follow the
//! controller's reconciles (a bad file counts as an error and leaves the switch ready), the
//! scrape names the ports the workers run, and a client that sends nothing does not hold up a
//! probe. Real HTTP over TCP (testkit's client).

use std::sync::{Arc, Mutex};
use switchyard_control::controller::{Controller, ControllerOptions};
use switchyard_control::health::{HealthOptions, HealthServer, Observed};
use switchyard_control::metrics::ControlStats;
use switchyard_control::runtime::{Runtime, RuntimeOptions};
use testkit::http::get;

const SWITCH: &str = "bridges:\n  - name: br0\n    ports:\n      - {name: he-a, type: ring}\n      - {name: he-b, type: ring, vlan_mode: access, tag: 7}\n";

fn value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in:\n{scrape}"))
        .parse()
        .unwrap()
}

#[test]
fn readyz_follows_the_plan_and_cni_and_metrics_follow_the_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switch.yaml");
    std::fs::write(&file, SWITCH).unwrap();
    let rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let control = Arc::new(ControlStats::default());
    let obs =
        Observed { engine: rt.engine().view(), control: control.clone(), opts: HealthOptions::default() };
    let rt = Arc::new(Mutex::new(rt));
    let server = HealthServer::start("127.0.0.1:0", obs).unwrap();
    let addr = server.addr();

    assert_eq!(
        get(addr, "/readyz").unwrap(),
        (503, "no full plan applied yet\nCNI ports not restored yet\n".to_string())
    );
    // Under `--kube`, what the first plan waits for is named.
    control.set_api_unlisted(1 << 5);
    assert_eq!(
        get(addr, "/readyz").unwrap(),
        (
            503,
            "no full plan applied yet\nwaiting for the first complete list of multi-networkpolicies from the \
             Kubernetes API\nCNI ports not restored yet\n"
                .to_string()
        )
    );
    control.set_api_unlisted(0);
    // Live from the start: the workers poll, the control loop has not started yet.
    assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".to_string()));
    control.set_cni_restored();
    assert_eq!(get(addr, "/readyz").unwrap(), (503, "no full plan applied yet\n".to_string()));
    let (code, scrape) = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(value(&scrape, "switchyard_ready"), 0.0);
    assert!(!scrape.contains("he-a"), "no port before the plan:\n{scrape}");

    let mut ctl = Controller::new(ControllerOptions::switch_file(&file), rt.clone());
    ctl.stats = Some(control.clone());
    ctl.reconcile().unwrap();
    assert_eq!(get(addr, "/readyz").unwrap(), (200, "ok\n".to_string()));
    let scrape = get(addr, "/metrics").unwrap().1;
    assert_eq!(value(&scrape, "switchyard_ready"), 1.0);
    assert_eq!(value(&scrape, "switchyard_reconciles_total"), 1.0);
    assert_eq!(value(&scrape, "switchyard_reconcile_duration_seconds_count"), 1.0);
    assert_eq!(value(&scrape, r#"switchyard_reconcile_duration_seconds_bucket{le="+Inf"}"#), 1.0);
    assert_eq!(value(&scrape, r#"switchyard_port_rx_packets_total{bridge="br0",port="he-b"}"#), 0.0);
    assert_eq!(value(&scrape, r#"switchyard_bridge_mac_entries{bridge="br0"}"#), 0.0);
    assert_eq!(value(&scrape, r#"switchyard_bridge_mac_evicted_total{bridge="br0"}"#), 0.0);

    // A bad edit: an error counted, the running configuration and readiness stay.
    std::fs::write(&file, "bridges: [{name: br0, ports: [{name: he-a, type: nosuch}]}]\n").unwrap();
    assert!(ctl.reconcile().is_err());
    let scrape = get(addr, "/metrics").unwrap().1;
    assert_eq!(value(&scrape, "switchyard_reconciles_total"), 2.0);
    assert_eq!(value(&scrape, "switchyard_reconcile_errors_total"), 1.0);
    assert_eq!(value(&scrape, "switchyard_ready"), 1.0);
    assert!(scrape.contains(r#"port="he-b""#));
    assert_eq!(get(addr, "/readyz").unwrap().0, 200);

    // A client that connects and sends nothing does not hold up the others: /healthz answers
    // while that connection is still open (not closed by the server's read timeout).
    let idle = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(get(addr, "/healthz").unwrap().0, 200);
    idle.set_nonblocking(true).unwrap();
    let open = matches!(idle.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(open, "the idle connection was closed before /healthz was answered");
    drop(idle);

    // Not a route.
    assert_eq!(get(addr, "/metrics/x").unwrap().0, 404);
    drop(server);
    assert!(get(addr, "/healthz").is_err(), "the server stops when dropped");
    drop(ctl);
    Arc::try_unwrap(rt).ok().unwrap().into_inner().unwrap().stop();
}

/// Clients that trickle their request head a byte at a time (slowloris), more of them than the
/// server serves at once, do not keep the kubelet's probes from being answered within the
/// probe's 3 s (deploy/daemonset.yaml's `timeoutSeconds`), and a trickling client is cut off
/// at the head's deadline though each of its bytes comes well within a socket timeout.
#[test]
fn trickling_clients_do_not_starve_the_probes() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    use switchyard_control::health::{MAX_CONNECTIONS, READ_TIMEOUT};

    let rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let obs = Observed {
        engine: rt.engine().view(),
        control: Arc::new(ControlStats::default()),
        opts: HealthOptions::default(),
    };
    let server = HealthServer::start("127.0.0.1:0", obs).unwrap();
    let addr = server.addr();
    let byte_every = Duration::from_millis(300);

    // One trickler alone: closed by the server by the head's deadline (plus slack for a loaded
    // machine), while it still sends.
    let mut one = TcpStream::connect(addr).unwrap();
    one.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
    let t0 = Instant::now();
    let cut = loop {
        std::thread::sleep(byte_every);
        if one.write_all(b"a").is_err() {
            break t0.elapsed();
        }
        one.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        match one.read(&mut [0u8; 64]) {
            Ok(_) => break t0.elapsed(), // EOF, or an answer: the server ended it
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break t0.elapsed(), // reset
        }
        assert!(t0.elapsed() < READ_TIMEOUT * 4, "a trickling client is kept past its deadline");
    };
    assert!(cut >= READ_TIMEOUT - byte_every, "cut off before its deadline: {cut:?}");

    // Twice the connection limit of tricklers, each sending a byte every 300 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tricklers = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut conns: Vec<TcpStream> = (0..2 * MAX_CONNECTIONS)
                .filter_map(|_| {
                    let mut c = TcpStream::connect(addr).ok()?;
                    c.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").ok()?;
                    Some(c)
                })
                .collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(byte_every);
                // Reconnect any the server closed: the pressure stays at twice the limit.
                for c in conns.iter_mut() {
                    if c.write_all(b"a").is_err() {
                        if let Ok(n) = TcpStream::connect(addr) {
                            *c = n;
                            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
                        }
                    }
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let mut probes = 0;
    while t0.elapsed() < READ_TIMEOUT * 2 {
        let t = Instant::now();
        let answer = testkit::http::get(addr, "/healthz");
        assert!(
            matches!(answer, Ok((200, _))) && t.elapsed() < Duration::from_secs(3),
            "probe {probes} under trickling clients: {answer:?} after {:?}",
            t.elapsed()
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tricklers.join().unwrap();
    drop(server);
    rt.stop();
}

/// Drops counted where no port is left to count them on (a tunnel port's inbox when the last
/// port on its uplink went) are in the scrape by reason once non-zero, and on `ctl show
/// stats`'s `portless drops` line (a process of its own under nextest: nothing else adds).
#[test]
fn portless_drops_are_in_the_scrape_and_the_stats_once_counted() {
    use switchyard_dataplane::switch::{add_portless_drops, DropReason};
    let rt = Runtime::start(RuntimeOptions::default()).unwrap();
    let control = ControlStats::default();
    let scrape = switchyard_control::metrics::render(&rt.engine().view(), &control, true);
    assert!(!scrape.contains("switchyard_portless_drops_total{"), "{scrape}");
    assert!(!switchyard_control::ctl::show::stats(&rt).contains("portless"));
    add_portless_drops(DropReason::TunnelWrongVni, 3);
    let scrape = switchyard_control::metrics::render(&rt.engine().view(), &control, true);
    assert_eq!(value(&scrape, r#"switchyard_portless_drops_total{reason="tunnel_wrong_vni"}"#), 3.0);
    let stats = switchyard_control::ctl::show::stats(&rt);
    assert!(stats.contains("portless drops (ports gone): tunnel_wrong_vni=3\n"), "{stats}");
}
