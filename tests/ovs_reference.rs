//! The replay cases of tests/replay checked against a real Open vSwitch, the reference of the L2
//! semantics (docs/semantics.md: "The reference is Open vSwitch's `NORMAL` action"). The
//! expected pcaps are written by hand from those semantics (tests/replay_spec/cases.rs); this
//! test runs each case's input frames through OVS's own `NORMAL` action and requires OVS to send
//! exactly the expected frames out of every port, each stamped with the time of the input frame
//! that caused it. A reasoning error in a case shows up here as a difference.
//!
//! How, as OVS's own testsuite does it (tests/ofproto-macros.at): a private `ovsdb-server` and
//! `ovs-vswitchd --enable-dummy` in a temporary directory (OVS_RUNDIR and friends point there,
//! nothing is written under /run or /var), one bridge per scenario bridge on the userspace
//! `dummy` datapath in standalone mode (the default flow: `NORMAL`), one `dummy` port per scenario
//! port with its `vlan_mode`, `tag` and `trunks`, and `options:tx_pcap` capturing what leaves it;
//! a port's `static_macs` are OVS static entries (`fdb/add`) in each VLAN the port carries.
//! Frames go in one at a time in the scenario's merged order (timestamp, then the order of
//! `inputs`, then file order) with `netdev-dummy/receive`; before each, the datapath's flows are
//! deleted, so that every frame is translated afresh against the current MAC table (a cached
//! megaflow would repeat a decision taken before the table changed until OVS's revalidator
//! threads get to it: no frame may depend on their timing); after each, the test waits until the
//! ingress port's RX counter shows the frame (ovs-vswitchd's main thread counts a frame and
//! forwards it in one go), then collects what each port's capture gained. OVS's clock is stopped
//! and warped by the gaps between the frames' timestamps, so MAC aging follows the pcap clock as
//! in `switchyard replay`.
//!
//! Invariant: a case is compared unless it is in [`EXCLUDED`] (each with its reason). Within a
//! compared case, an input frame is held back only for a reason of [`held_back`] (each a frame
//! switchyard drops and learns nothing from, so the other frames compare unchanged), the frames
//! an input causes go uncompared only for a reason of [`not_compared`] (differences of OVS's
//! this test found), and two frames differ only in the DEI bit ([`same_but_dei`]), which OVS
//! cannot keep; the test prints every frame each of these touches. The daemons are children of
//! the test thread, killed when the test ends or panics, or by the kernel when the test process
//! is killed (`PR_SET_PDEATHSIG`). The statistics (stats.json) are switchyard's counters, not
//! compared.
//!
//! Needs root and `ovsdb-tool`, `ovsdb-server`, `ovs-vswitchd`, `ovs-vsctl` (Debian:
//! openvswitch-switch); skips through `testkit::skip` without them.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

/// Cases not compared, each with why: features switchyard has on top of OVS or deliberately does
/// otherwise (../DESIGN.md, docs/semantics.md), and cases that are not L2 `NORMAL` forwarding.
const EXCLUDED: &[(&str, &str)] = &[
    ("aging_expires", "mac_aging_s 10, and OVS clamps mac-aging-time to at least 15 s"),
    ("fdb_table_full", "a full MAC table: switchyard stops learning (fdb_full), OVS evicts an entry"),
    ("mac_limit", "a per-port learned-MAC limit: switchyard's own"),
    ("mac_limit_move", "a per-port learned-MAC limit: switchyard's own"),
    ("mixed_node", "ports with a spoof filter and a MAC limit: switchyard's own"),
    ("policy_stateful_udp", "the IP spoof filter and connection-tracked policy: switchyard's own"),
    ("spoof_arp_in_vlan", "the MAC spoof filter (allowed_macs): switchyard's own"),
    ("spoof_arp_sha", "the MAC spoof filter (allowed_macs): switchyard's own"),
    ("spoof_malformed_arp", "the MAC spoof filter (allowed_macs): switchyard's own"),
    ("spoof_nd_lladdr", "the MAC spoof filter (allowed_macs): switchyard's own"),
    ("spoof_src_mac", "the MAC spoof filter (allowed_macs): switchyard's own"),
    ("static_mac_never_ages", "mac_aging_s 10, and OVS clamps mac-aging-time to at least 15 s"),
    ("tunnel_geneve_ipv6", "a tunnel port on an uplink (outer headers): not NORMAL's L2 forwarding"),
    ("tunnel_vxlan_decap_ipv4", "a tunnel port on an uplink (outer headers): not NORMAL's L2 forwarding"),
    ("tunnel_vxlan_encap_ipv4", "a tunnel port on an uplink (outer headers): not NORMAL's L2 forwarding"),
];

/// Port keys of a scenario that are switchyard's own: a compared case may have `allowed_macs`
/// only on ports no fed frame enters (the filter then touches nothing compared), the others not
/// at all (the case belongs in [`EXCLUDED`]). `static_macs` become OVS's static entries
/// (`fdb/add`, which learning never moves either), one per VLAN the port carries.
const OWN_PORT_KEYS: &[&str] = &["mac_limit", "allowed_ips", "policy"];

/// The largest frame switchyard takes in (a buffer's data room, docs/semantics.md).
const DATA_ROOM: usize = 2048;

/// Why an input frame is not fed to OVS, if it is not: each is a frame switchyard drops at
/// ingress and learns nothing from (docs/semantics.md, "Forwarding").
fn held_back(data: &[u8], orig_len: u32) -> Option<&'static str> {
    if (data.len() as u64) < u64::from(orig_len) {
        return Some("a capture record cut short (truncated_capture): no whole frame to hand OVS");
    }
    if data.len() < 14 {
        return Some("shorter than an Ethernet header (runt): netdev-dummy/receive refuses it");
    }
    if data.len() > DATA_ROOM {
        return Some("longer than the 2048-byte data room (oversize): a limit of switchyard's buffers");
    }
    let src = &data[6..12];
    if src[0] & 1 == 1 || src.iter().all(|&b| b == 0) {
        return Some("a multicast or all-zero source MAC: switchyard drops it, OVS forwards it (DESIGN.md)");
    }
    if outer_tci(data).is_some_and(|tci| tci & 0x0fff == 0x0fff) {
        return Some("VID 4095: switchyard drops it as reserved, OVS's NORMAL forwards it as VLAN 4095");
    }
    None
}

/// Why the frames an input frame causes are not compared, if they are not: differences of OVS's
/// that this test has shown, each reported, not decided here. The frame is still fed (both
/// switches forward it and learn from it), and the expected frames stamped with its time are
/// left out with OVS's.
fn not_compared(data: &[u8], ingress_trunk_vlan0: bool) -> Option<&'static str> {
    if ethertype(data) == 0x88a8 {
        return Some("TPID 0x88a8: OVS takes it as a VLAN tag (802.1ad), switchyard as untagged");
    }
    if ingress_trunk_vlan0 && outer_tci(data).is_some_and(|tci| tci & 0x0fff == 0 && tci & 0xe000 != 0) {
        return Some(
            "a priority tag (PCP > 0) in VLAN 0 from a trunk: OVS 3.1 forwards it to trunks with \
             the tag (xvlan_put writes one for a nonzero PCP), switchyard removes it",
        );
    }
    None
}

/// The EtherType at offset 12 (0 for a frame too short to have one).
fn ethertype(data: &[u8]) -> u16 {
    data.get(12..14).map_or(0, |t| u16::from_be_bytes([t[0], t[1]]))
}

/// The TCI of an outer 0x8100 tag.
fn outer_tci(data: &[u8]) -> Option<u16> {
    (ethertype(data) == 0x8100).then(|| data.get(14..16).map(|t| u16::from_be_bytes([t[0], t[1]]))).flatten()
}

/// The one difference the comparison tolerates: the DEI bit of the outer tag, which the expected
/// frame has and OVS's has not. OVS cannot keep DEI (ovs-fields(7): "OpenFlow and Open vSwitch
/// don't provide any way to match or set this bit"): every tag it writes has DEI 0, while
/// switchyard keeps the bit (docs/semantics.md). Everything else, PCP included, must match.
fn same_but_dei(ovs: &[u8], want: &[u8]) -> bool {
    ovs.len() == want.len()
        && outer_tci(want).is_some_and(|t| t & 0x1000 != 0)
        && outer_tci(ovs).is_some_and(|t| t & 0x1000 == 0)
        && ovs.iter().zip(want).enumerate().all(|(i, (a, b))| a == b || (i == 14 && a | 0x10 == *b))
}

fn replay_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("replay")
}

// ---------------------------------------------------------------------------------------------
// The OVS instance.

const OVS_TOOLS: &[&str] = &["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"];

/// Root and the OVS programs, or why not. Does not go through switchyard's code.
fn probe() -> Result<(), String> {
    testkit::probe::root()?;
    for tool in OVS_TOOLS {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("{tool} is not installed (Debian: openvswitch-switch)"));
        }
    }
    Ok(())
}

/// A daemon started by the test: killed and reaped when dropped.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn spawn(name: &'static str, dir: &Path, args: &[String]) -> Daemon {
        let log = std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
        let mut cmd = Command::new(name);
        cmd.args(args).envs(ovs_env(dir)).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // The kernel kills the daemon when the test thread that spawned it ends, so a test
        // killed by a timeout (or a panic that skips Drop) leaves no daemon behind.
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon { name, child }
    }

    /// Panics with the daemon's stderr if it has exited.
    fn check_alive(&mut self, dir: &Path) {
        if let Ok(Some(st)) = self.child.try_wait() {
            let err = std::fs::read_to_string(dir.join(format!("{}.stderr", self.name))).unwrap_or_default();
            panic!("{} exited ({st}):\n{err}", self.name);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every directory OVS would use, pointed at the test's own.
fn ovs_env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"]
        .iter()
        .map(|k| (*k, dir.to_path_buf()))
        .collect()
}

/// A private OVS. Fields drop in order: ovs-vswitchd, then its database, then their directory.
struct Ovs {
    vswitchd: Daemon,
    _db: Daemon,
    dir: tempfile::TempDir,
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Ovs {
    fn start() -> Ovs {
        let dir = tempfile::Builder::new().prefix("sy-ovs-").tempdir().unwrap();
        let d = dir.path();
        // Without a schema argument, the schema installed with OVS (its pkgdatadir).
        let st = Command::new("ovsdb-tool").arg("create").arg(d.join("conf.db")).status().unwrap();
        assert!(st.success(), "ovsdb-tool create: {st}");
        let s = |p: &str| d.join(p).to_string_lossy().into_owned();
        let mut db = Daemon::spawn(
            "ovsdb-server",
            d,
            &[
                "--no-chdir".into(),
                format!("--pidfile={}", s("ovsdb-server.pid")),
                format!("--log-file={}", s("ovsdb-server.log")),
                format!("--remote=punix:{}", s("db.sock")),
                format!("--unixctl={}", s("ovsdb-server.ctl")),
                s("conf.db"),
            ],
        );
        wait_until("ovsdb-server's socket", Duration::from_secs(20), || {
            db.check_alive(d);
            UnixStream::connect(d.join("db.sock")).is_ok()
        });
        let mut vswitchd = Daemon::spawn(
            "ovs-vswitchd",
            d,
            &[
                "--enable-dummy".into(),
                "--disable-system".into(),
                "--disable-system-route".into(),
                "--no-chdir".into(),
                format!("--pidfile={}", s("ovs-vswitchd.pid")),
                format!("--log-file={}", s("ovs-vswitchd.log")),
                format!("--unixctl={}", s("ovs-vswitchd.ctl")),
                format!("unix:{}", s("db.sock")),
            ],
        );
        wait_until("ovs-vswitchd's control socket", Duration::from_secs(20), || {
            vswitchd.check_alive(d);
            d.join("ovs-vswitchd.ctl").exists()
        });
        let ovs = Ovs { vswitchd, _db: db, dir };
        ovs.vsctl(&["--no-wait".into(), "init".into()]);
        wait_until("ovs-vswitchd to answer", Duration::from_secs(20), || {
            ovs.appctl_try("version", &[]).is_ok()
        });
        // The test's clock: frozen, then warped by the gaps between frames.
        ovs.appctl("time/stop", &[]);
        ovs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The last lines of ovs-vswitchd's log (its directory goes when the test ends).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.path("ovs-vswitchd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `ovs-vsctl ARGS`, which (without --no-wait) returns once ovs-vswitchd has applied it.
    fn vsctl(&self, args: &[String]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.path("db.sock").display()))
            .arg("--timeout=30")
            .args(args)
            .envs(ovs_env(self.dir.path()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovs-vsctl {}: {}\n{}\n--- the end of ovs-vswitchd's log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One command on ovs-vswitchd's control socket (JSON-RPC, as `ovs-appctl` speaks it, on a
    /// connection of its own as `ovs-appctl` makes one), and its reply's text.
    fn appctl_try(&self, method: &str, params: &[&str]) -> Result<String, String> {
        let mut s = UnixStream::connect(self.path("ovs-vswitchd.ctl")).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = serde_json::json!({"method": method, "params": params, "id": 0});
        s.write_all(req.to_string().as_bytes()).map_err(|e| e.to_string())?;
        let mut it =
            serde_json::Deserializer::from_reader(BufReader::new(&s)).into_iter::<serde_json::Value>();
        let reply =
            it.next().ok_or_else(|| format!("{method}: no reply"))?.map_err(|e| format!("{method}: {e}"))?;
        if !reply["error"].is_null() {
            return Err(format!("{method} {}: {}", params.join(" "), reply["error"]));
        }
        Ok(reply["result"].as_str().unwrap_or_default().to_string())
    }

    fn appctl(&self, method: &str, params: &[&str]) -> String {
        self.appctl_try(method, params).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The datapath's RX counter of port NAME (`dpctl/show -s`).
    fn rx_packets(&self, name: &str) -> u64 {
        let show = self.appctl("dpctl/show", &["-s"]);
        let needle = format!(": {name} (");
        let mut lines = show.lines();
        while let Some(l) = lines.next() {
            if l.contains(&needle) {
                let rx = lines.next().unwrap_or_default().trim();
                let n = rx.strip_prefix("RX packets:").and_then(|r| r.split_whitespace().next());
                return n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("dpctl/show: {rx:?}"));
            }
        }
        panic!("port {name} not in dpctl/show:\n{show}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// A pcap record: time, bytes, original length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    time: Duration,
    data: Vec<u8>,
    orig_len: u32,
}

/// The records of a classic pcap file (microsecond or nanosecond, either byte order). Read here
/// rather than with pcap-file, which refuses the records OVS writes above the snaplen of 1518
/// it puts in its files' header (the 2048-byte frames of the oversize cases).
fn read_pcap(path: &Path) -> Vec<Rec> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() >= 24, "{}: no pcap header", path.display());
    let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let (le, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        m => panic!("{}: not a pcap file (magic {m:#x})", path.display()),
    };
    let u32_at = |o: usize| {
        let w: [u8; 4] = b[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let mut v = Vec::new();
    let mut o = 24;
    while o < b.len() {
        assert!(o + 16 <= b.len(), "{}: a record header cut short at {o}", path.display());
        let (sec, frac, incl, orig) = (u32_at(o), u32_at(o + 4), u32_at(o + 8) as usize, u32_at(o + 12));
        assert!(o + 16 + incl <= b.len(), "{}: a record cut short at {o}", path.display());
        let frac = if nanos { Duration::from_nanos(frac.into()) } else { Duration::from_micros(frac.into()) };
        v.push(Rec {
            time: Duration::from_secs(sec.into()) + frac,
            data: b[o + 16..o + 16 + incl].to_vec(),
            orig_len: orig,
        });
        o += 16 + incl;
    }
    v
}

struct Port {
    bridge: String,
    name: String,
    /// `key=value` settings of the OVS Port row.
    settings: Vec<String>,
    /// Has `allowed_macs` (switchyard's spoof filter): no fed frame may enter it.
    filtered: bool,
    /// `static_macs`, and the VLANs the port carries (where each is installed).
    statics: Vec<String>,
    vlans: Vec<u64>,
    /// A trunk carrying VLAN 0 (`vlan_mode: trunk`, or neither `vlan_mode` nor `tag`; `trunks`
    /// empty or listing 0).
    trunk_vlan0: bool,
}

struct Scenario {
    /// (bridge, its other_config settings)
    bridges: Vec<(String, Vec<String>)>,
    ports: Vec<Port>,
    /// Port names in the order of `inputs`, with their files.
    inputs: Vec<(String, PathBuf)>,
}

fn load(case: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(case.join("scenario.yaml")).unwrap();
    let v: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut sc = Scenario { bridges: Vec::new(), ports: Vec::new(), inputs: Vec::new() };
    for b in v["bridges"].as_sequence().expect("bridges") {
        let bname = b["name"].as_str().unwrap().to_string();
        let mut other = Vec::new();
        if let Some(a) = b.get("mac_aging_s") {
            let a = a.as_u64().unwrap();
            if a < 15 {
                return Err(format!("bridge {bname}: mac_aging_s {a} is below OVS's minimum of 15 s"));
            }
            other.push(format!("other_config:mac-aging-time={a}"));
        }
        if b.get("mac_table_size").is_some() {
            return Err(format!("bridge {bname}: mac_table_size (a full table differs by design)"));
        }
        for p in b["ports"].as_sequence().expect("ports") {
            let name = p["name"].as_str().unwrap().to_string();
            if p.get("type").is_some_and(|t| t.as_str() != Some("pcap")) {
                return Err(format!("port {name}: type {:?}", p["type"]));
            }
            for k in OWN_PORT_KEYS {
                if p.get(k).is_some() {
                    return Err(format!("port {name}: {k} is switchyard's own"));
                }
            }
            let mut settings = Vec::new();
            let mut trunks_vlan0 = true;
            let mut vlans: Vec<u64> = Vec::new();
            if let Some(m) = p.get("vlan_mode") {
                settings.push(format!("vlan_mode={}", m.as_str().unwrap()));
            }
            if let Some(t) = p.get("tag") {
                settings.push(format!("tag={}", t.as_u64().unwrap()));
                vlans.push(t.as_u64().unwrap());
            }
            if let Some(t) = p.get("trunks") {
                let l: Vec<String> =
                    t.as_sequence().unwrap().iter().map(|x| x.as_u64().unwrap().to_string()).collect();
                if !l.is_empty() {
                    trunks_vlan0 = l.iter().any(|v| v == "0");
                    vlans.extend(l.iter().map(|v| v.parse::<u64>().unwrap()));
                    settings.push(format!("trunks={}", l.join(",")));
                }
            }
            let filtered = p.get("allowed_macs").is_some();
            let mode = p.get("vlan_mode").and_then(|m| m.as_str());
            let trunk = mode == Some("trunk") || (mode.is_none() && p.get("tag").is_none());
            let trunk_vlan0 = trunk && trunks_vlan0;
            let statics: Vec<String> = p.get("static_macs").map_or(Vec::new(), |l| {
                l.as_sequence().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect()
            });
            if mode == Some("access") || (mode.is_none() && !trunk) {
                vlans.truncate(1);
            } else if !statics.is_empty()
                && p.get("trunks").is_none_or(|t| t.as_sequence().unwrap().is_empty())
            {
                return Err(format!("port {name}: static MACs in every VLAN cannot be listed to fdb/add"));
            }
            sc.ports.push(Port {
                bridge: bname.clone(),
                name,
                settings,
                filtered,
                statics,
                vlans,
                trunk_vlan0,
            });
        }
        sc.bridges.push((bname, other));
    }
    for (k, f) in v["inputs"].as_mapping().expect("inputs") {
        sc.inputs.push((k.as_str().unwrap().to_string(), case.join(f.as_str().unwrap())));
    }
    Ok(sc)
}

/// What one run of a case gave: per port, the frames in order, stamped with their input's time.
type Outputs = BTreeMap<String, Vec<Rec>>;

struct Fed {
    frames: usize,
    held: Vec<String>,
    not_compared: Vec<String>,
    /// The times of the frames whose outputs are not compared.
    skip_times: Vec<Duration>,
    /// The times of the frames that came in with DEI set in their outer tag: only their
    /// outputs may differ from the expected in DEI alone ([`same_but_dei`]).
    dei_times: Vec<Duration>,
}

/// Runs case `idx` (directory `case`) through OVS.
fn run_case(ovs: &Ovs, idx: usize, case: &Path, sc: &Scenario) -> (Outputs, Fed) {
    let ovs_port = |i: usize| format!("c{idx}p{i}");
    let ovs_br = |i: usize| format!("c{idx}b{i}");
    let tx = |i: usize| ovs.path(&format!("c{idx}p{i}.pcap"));
    let mut args: Vec<String> = Vec::new();
    for (bi, (b, other)) in sc.bridges.iter().enumerate() {
        args.extend(["--".into(), "add-br".into(), ovs_br(bi)]);
        args.extend(["--".into(), "set".into(), "bridge".into(), ovs_br(bi), "datapath_type=dummy".into()]);
        args.extend(other.iter().cloned());
        for (pi, p) in sc.ports.iter().enumerate().filter(|(_, p)| &p.bridge == b) {
            args.extend(["--".into(), "add-port".into(), ovs_br(bi), ovs_port(pi)]);
            args.extend(["--".into(), "set".into(), "interface".into(), ovs_port(pi), "type=dummy".into()]);
            args.push(format!("options:tx_pcap={}", tx(pi).display()));
            // The MTU is not what the cases test: switchyard's limit is its 2048-byte data
            // room, and frames up to that (2052 with a pushed tag) must leave whole.
            args.push("mtu_request=9000".into());
            if !p.settings.is_empty() {
                args.extend(["--".into(), "set".into(), "port".into(), ovs_port(pi)]);
                args.extend(p.settings.iter().cloned());
            }
        }
    }
    ovs.vsctl(&args);
    for (pi, p) in sc.ports.iter().enumerate() {
        let bi = sc.bridges.iter().position(|(b, _)| b == &p.bridge).unwrap();
        for mac in &p.statics {
            for vlan in &p.vlans {
                ovs.appctl("fdb/add", &[&ovs_br(bi), &ovs_port(pi), &vlan.to_string(), mac]);
            }
        }
    }

    // The merged input: timestamp, then the order of `inputs`, then file order (a stable sort).
    let mut frames: Vec<(usize, Rec)> = Vec::new();
    for (name, file) in &sc.inputs {
        let pi = sc
            .ports
            .iter()
            .position(|p| &p.name == name)
            .unwrap_or_else(|| panic!("input {name}: no such port"));
        frames.extend(read_pcap(file).into_iter().map(|r| (pi, r)));
    }
    frames.sort_by_key(|(_, r)| r.time);

    let mut out: Outputs = sc.ports.iter().map(|p| (p.name.clone(), Vec::new())).collect();
    let mut seen = vec![0usize; sc.ports.len()];
    let mut rx = vec![0u64; sc.ports.len()];
    let mut fed = Fed {
        frames: 0,
        held: Vec::new(),
        not_compared: Vec::new(),
        skip_times: Vec::new(),
        dei_times: Vec::new(),
    };
    let mut compared_times = Vec::new();
    let mut warped_ms: u128 = 0;
    let t0 = frames.first().map(|(_, r)| r.time).unwrap_or_default();
    for (pi, r) in &frames {
        let port = &sc.ports[*pi];
        if let Some(why) = held_back(&r.data, r.orig_len) {
            fed.held.push(format!("{} byte(s) at {:?} on {}: {why}", r.data.len(), r.time, port.name));
            continue;
        }
        assert!(
            !port.filtered,
            "{}: a frame enters {}, which has allowed_macs (switchyard's spoof filter): exclude the case",
            case.display(),
            port.name
        );
        let due_ms = (r.time - t0).as_millis();
        if due_ms > warped_ms {
            ovs.appctl("time/warp", &[&(due_ms - warped_ms).to_string()]);
            warped_ms = due_ms;
        }
        ovs.appctl("dpctl/del-flows", &[]);
        let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
        ovs.appctl("netdev-dummy/receive", &[&ovs_port(*pi), &hex]);
        rx[*pi] += 1;
        let want = rx[*pi];
        wait_until(
            &format!("{} to take in frame {}", port.name, fed.frames),
            Duration::from_secs(10),
            || ovs.rx_packets(&ovs_port(*pi)) >= want,
        );
        assert_eq!(ovs.rx_packets(&ovs_port(*pi)), want, "{}: RX of {}", case.display(), port.name);
        fed.frames += 1;
        if outer_tci(&r.data).is_some_and(|t| t & 0x1000 != 0) {
            fed.dei_times.push(r.time);
        }
        let skip = not_compared(&r.data, port.trunk_vlan0);
        if let Some(why) = skip {
            fed.not_compared.push(format!(
                "{} byte(s) at {:?} on {}: {why}",
                r.data.len(),
                r.time,
                port.name
            ));
            fed.skip_times.push(r.time);
        } else {
            compared_times.push(r.time);
        }
        for (qi, q) in sc.ports.iter().enumerate() {
            let got = read_pcap(&tx(qi));
            for g in &got[seen[qi]..] {
                if skip.is_none() {
                    out.get_mut(&q.name).unwrap().push(Rec {
                        time: r.time,
                        data: g.data.clone(),
                        orig_len: g.orig_len,
                    });
                }
            }
            seen[qi] = got.len();
        }
    }
    for t in &fed.skip_times {
        assert!(
            !compared_times.contains(t),
            "{}: a frame not compared shares its time {t:?} with a compared one: its expected outputs cannot be told apart",
            case.display()
        );
    }
    let mut del = Vec::new();
    for bi in 0..sc.bridges.len() {
        del.extend(["--".into(), "del-br".into(), ovs_br(bi)]);
    }
    ovs.vsctl(&del);
    (out, fed)
}

/// The expected pcaps, less the frames stamped with the time of an input whose outputs are not
/// compared.
fn expected(case: &Path, sc: &Scenario, skip_times: &[Duration]) -> Outputs {
    sc.ports
        .iter()
        .map(|p| {
            let mut recs =
                read_pcap(&case.join("expected").join(format!("{}.pcap", p.name.replace('/', "_"))));
            recs.retain(|r| !skip_times.contains(&r.time));
            (p.name.clone(), recs)
        })
        .collect()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The differences between OVS's output and the expected, port by port, frame by frame, and how
/// many frames matched only by [`same_but_dei`], which is allowed only for the outputs of an
/// input that had DEI set (`dei_times`: a DEI bit the expectation invents is a difference).
fn compare(got: &Outputs, want: &Outputs, dei_times: &[Duration]) -> (Vec<String>, usize) {
    let mut diffs = Vec::new();
    let mut dei = 0;
    let same = |g: &Rec, w: &Rec| {
        g.time == w.time
            && g.orig_len == w.orig_len
            && dei_times.contains(&w.time)
            && same_but_dei(&g.data, &w.data)
    };
    for (port, w) in want {
        let g = &got[port];
        if g == w {
            continue;
        }
        if g.len() == w.len() && g.iter().zip(w).all(|(g, w)| g == w || same(g, w)) {
            dei += g.iter().zip(w).filter(|(g, w)| g != w).count();
            continue;
        }
        let mut d = format!("port {port}: OVS sent {} frame(s), expected {}", g.len(), w.len());
        for i in 0..g.len().max(w.len()) {
            let (gi, wi) = (g.get(i), w.get(i));
            if gi == wi || gi.zip(wi).is_some_and(|(g, w)| same(g, w)) {
                continue;
            }
            let show = |r: Option<&Rec>| match r {
                Some(r) => format!("{:?} {}B {}", r.time, r.data.len(), hex(&r.data)),
                None => "-".into(),
            };
            d.push_str(&format!("\n    #{i} OVS:      {}\n    #{i} expected: {}", show(gi), show(wi)));
        }
        diffs.push(d);
    }
    (diffs, dei)
}

#[test]
fn replay_cases_match_open_vswitch() {
    if let Err(why) = probe() {
        testkit::skip("replay_cases_match_open_vswitch", &why);
        return;
    }
    let t_start = Instant::now();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(replay_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("scenario.yaml").is_file())
        .collect();
    cases.sort();
    for (name, _) in EXCLUDED {
        assert!(replay_root().join(name).is_dir(), "EXCLUDED names {name}, which is not a case");
    }

    let mut ovs = Ovs::start();
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut checked_the_check = false;
    for (idx, case) in cases.iter().enumerate() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        if let Some((_, why)) = EXCLUDED.iter().find(|(n, _)| *n == name) {
            eprintln!("{name}: left out: {why}");
            continue;
        }
        let sc = load(case).unwrap_or_else(|e| panic!("{name}: {e}: list it in EXCLUDED with the reason"));
        let t = Instant::now();
        let (got, fed) = run_case(&ovs, idx, case, &sc);
        ovs.vswitchd.check_alive(ovs.dir.path());
        let want = expected(case, &sc, &fed.skip_times);
        eprintln!("{name}: {} frame(s) fed in {:?}", fed.frames, t.elapsed());
        for h in &fed.held {
            eprintln!("{name}: held back {h}");
        }
        for h in &fed.not_compared {
            eprintln!("{name}: outputs not compared: {h}");
        }
        assert!(fed.frames > fed.not_compared.len(), "{name}: no frame compared");
        let (diffs, dei) = compare(&got, &want, &fed.dei_times);
        if dei > 0 {
            eprintln!("{name}: {dei} frame(s) match but for DEI, which OVS cannot keep");
        }
        if diffs.is_empty() {
            // The comparison itself must see a changed byte: flip one in an expected frame.
            if !checked_the_check {
                if let Some((port, recs)) = want.iter().find(|(_, r)| !r.is_empty()) {
                    let mut bad = want.clone();
                    bad.get_mut(port).unwrap()[0].data[recs[0].data.len() - 1] ^= 1;
                    assert!(
                        !compare(&got, &bad, &fed.dei_times).0.is_empty(),
                        "the comparison misses a changed byte"
                    );
                    checked_the_check = true;
                }
            }
        } else {
            failures
                .push(format!("=== {name}: OVS differs from the expected pcaps\n  {}", diffs.join("\n  ")));
        }
        compared += 1;
    }
    eprintln!(
        "{compared} case(s) compared with OVS, {} left out, in {:?}",
        EXCLUDED.len(),
        t_start.elapsed()
    );
    assert!(checked_the_check, "no compared case has an expected frame");
    assert!(compared >= 25, "only {compared} cases compared");
    if !failures.is_empty() {
        // The daemons' directory goes with the test: keep ovs-vswitchd's log for the reader.
        let kept =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ovs-reference-{}.log", std::process::id()));
        let _ = std::fs::copy(ovs.path("ovs-vswitchd.log"), &kept);
        panic!(
            "{} case(s) differ from Open vSwitch (its log: {}):\n{}",
            failures.len(),
            kept.display(),
            failures.join("\n")
        );
    }
}
