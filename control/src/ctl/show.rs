//! The text answers of `ctl`'s requests, rendered from what the [`Runtime`] holds. Nothing
//! here changes the running state; tables are left-aligned columns, one row a line.

use crate::reconcile::{describe_backend, describe_vlan, ranges};
use crate::runtime::{Runtime, RuntimeError};
use std::collections::BTreeMap;
use switchyard_dataplane::fdb::FdbEntry;
use switchyard_dataplane::switch::{DropReason, PortId};
use switchyard_dataplane::wire::MacAddr;

use super::CtlError;

/// `show ports`: name, bridge, type, VLAN mode, link, rx/tx/drops, then why ports are down.
pub fn ports(rt: &Runtime) -> String {
    let switch = rt.switch();
    let mut rows =
        vec![["PORT", "BRIDGE", "TYPE", "VLAN", "LINK", "RX", "TX", "DROPS"].map(String::from).to_vec()];
    for b in &rt.running().bridges {
        for p in &b.ports {
            let link = match rt.backend(&p.name) {
                Some(be) if be.link_up() => "up".to_string(),
                Some(_) => "down".to_string(),
                None => "down (no backend)".to_string(),
            };
            let stats = switch.port_by_name(&p.name).map(|s| s.stats.snapshot()).unwrap_or_default();
            let drops: u64 = stats.drops.values().sum();
            rows.push(vec![
                p.name.clone(),
                b.name.clone(),
                describe_backend(p),
                describe_vlan(p),
                link,
                stats.rx_packets.to_string(),
                stats.tx_packets.to_string(),
                drops.to_string(),
            ]);
        }
    }
    let mut s = table(&rows);
    for (name, e) in rt.port_errors() {
        s.push_str(&format!("# {name}: {e}\n"));
    }
    for (name, i) in rt.port_infos() {
        s.push_str(&format!("# {name}: {i}\n"));
    }
    s
}

/// `show fdb [BRIDGE]`: every bridge's MAC table (or one bridge's).
pub fn fdb(rt: &Runtime, bridge: Option<&str>) -> Result<String, RuntimeError> {
    let now = rt.engine().now();
    let switch = rt.switch();
    let port_name = |id: PortId| switch.port(id).map_or_else(|| format!("#{id}"), |s| s.name.clone());
    let mut rows = vec![["BRIDGE", "VLAN", "MAC", "PORT", "AGE", "STATIC"].map(String::from).to_vec()];
    let mut found = false;
    for b in &switch.bridges {
        if bridge.is_some_and(|n| n != b.name) {
            continue;
        }
        found = true;
        rows.extend(fdb_rows(&b.name, &b.table.entries(now), &port_name));
    }
    match bridge {
        Some(n) if !found => Err(RuntimeError::NoBridge(n.to_string())),
        _ => Ok(table(&rows)),
    }
}

/// One bridge's rows of `show fdb`: a static MAC once per port with the VLANs it is installed
/// on as ranges (a trunk port's static MAC stands in every VLAN of the trunk: one row, not
/// 4,094), ordered by port and MAC; then each learned entry, one a VLAN.
fn fdb_rows(bridge: &str, entries: &[FdbEntry], port_name: &dyn Fn(PortId) -> String) -> Vec<Vec<String>> {
    let mut statics: BTreeMap<(PortId, [u8; 6]), Vec<u16>> = BTreeMap::new();
    let mut learned = Vec::new();
    for e in entries {
        if e.is_static {
            statics.entry((e.port, e.mac.0)).or_default().push(e.vlan);
        } else {
            let row =
                [e.vlan.to_string(), e.mac.to_string(), port_name(e.port), e.age.to_string(), "no".into()];
            learned.push(row);
        }
    }
    let statics = statics.into_iter().map(|((port, mac), vlans)| {
        [ranges(&vlans), MacAddr(mac).to_string(), port_name(port), "-".into(), "yes".into()]
    });
    statics.chain(learned).map(|r| std::iter::once(bridge.to_string()).chain(r).collect()).collect()
}

/// `show conntrack [BRIDGE]`: the tracked connections (the first 1,000 of each bridge), then
/// how many each bridge tracks.
pub fn conntrack(rt: &Runtime, bridge: Option<&str>) -> Result<String, RuntimeError> {
    const LIMIT: usize = 1000;
    let now = rt.engine().now();
    let switch = rt.switch();
    let mut rows =
        vec![["BRIDGE", "VLAN", "PROTO", "SRC", "SPORT", "DST", "DPORT", "STATE", "TTL", "BLOCKED"]
            .map(String::from)
            .to_vec()];
    let mut found = false;
    let mut totals = String::new();
    for b in &switch.bridges {
        if bridge.is_some_and(|n| n != b.name) {
            continue;
        }
        found = true;
        let Some(ct) = &b.conntrack else {
            totals.push_str(&format!("bridge {}: no connection table (no port has a policy)\n", b.name));
            continue;
        };
        let (entries, live) = ct.entries(now, LIMIT);
        rows.extend(entries.iter().map(|e| conntrack_row(&b.name, e)));
        totals.push_str(&format!(
            "bridge {}: {live} connections tracked, capacity {}\n",
            b.name,
            ct.capacity()
        ));
    }
    match bridge {
        Some(n) if !found => Err(RuntimeError::NoBridge(n.to_string())),
        _ => Ok(table(&rows) + &totals),
    }
}

/// One row of `show conntrack` for entry `e` of bridge `bridge`. The VLAN is part of the
/// connection's key (two VLANs of a bridge may hold the same addresses, and their connections
/// are two), so it is a column: without it two such rows would look the same.
fn conntrack_row(bridge: &str, e: &switchyard_dataplane::conntrack::Entry) -> Vec<String> {
    vec![
        bridge.to_string(),
        e.key.vlan.to_string(),
        e.key.proto.to_string(),
        e.key.src_ip().to_string(),
        e.key.sport.to_string(),
        e.key.dst_ip().to_string(),
        e.key.dport.to_string(),
        e.state.name().to_string(),
        e.ttl.to_string(),
        if e.blocked { "yes".into() } else { "no".into() },
    ]
}

/// `fdb flush [BRIDGE]`: removes learned entries (static ones stay) and says how many.
pub fn fdb_flush(rt: &Runtime, bridge: Option<&str>) -> Result<String, RuntimeError> {
    let n = rt.fdb_flush(bridge)?;
    Ok(format!("flushed {n} learned entr{}\n", if n == 1 { "y" } else { "ies" }))
}

/// `show stats`: every port's counters with drop reasons, every worker's cycles.
pub fn stats(rt: &Runtime) -> String {
    let switch = rt.switch();
    let mut s = String::new();
    for b in &rt.running().bridges {
        for p in &b.ports {
            let Some(spec) = switch.port_by_name(&p.name) else { continue };
            let st = spec.stats.snapshot();
            s.push_str(&format!(
                "port {} (bridge {}): rx {} pkts {} bytes, tx {} pkts {} bytes, flooded {}, learned {}, moved_in {}, \
                 static_conflicts {}, mac_limit_hits {}, fdb_full {}\n",
                p.name,
                b.name,
                st.rx_packets,
                st.rx_bytes,
                st.tx_packets,
                st.tx_bytes,
                st.flooded,
                st.learned,
                st.moved_in,
                st.static_conflicts,
                st.mac_limit_hits,
                st.fdb_full
            ));
            let drops: Vec<String> =
                st.drops.iter().filter(|(_, n)| **n != 0).map(|(r, n)| format!("{r}={n}")).collect();
            let total: u64 = st.drops.values().sum();
            s.push_str(&format!(
                "  drops {total}{}{}\n",
                if drops.is_empty() { "" } else { ": " },
                drops.join(" ")
            ));
        }
    }
    // Drops no port is left to count (counted by the process, never reset): shown once there
    // are some.
    let portless: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| (r.name(), switchyard_dataplane::switch::portless_drops(*r)))
        .filter(|(_, n)| *n != 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !portless.is_empty() {
        s.push_str(&format!("portless drops (ports gone): {}\n", portless.join(" ")));
    }
    let engine = rt.engine();
    let hz = engine.tsc_hz().max(1) as f64;
    for w in engine.worker_stats() {
        s.push_str(&format!(
            "worker {} (core {}): busy {} cycles, idle {} cycles ({:.1}% busy, {:.3} s busy), rx {} forwarded {}, {:.0} \
             cycles/packet\n",
            w.worker,
            w.core.map_or("-".to_string(), |c| c.to_string()),
            w.busy_cycles,
            w.idle_cycles,
            w.busy_ratio() * 100.0,
            w.busy_cycles as f64 / hz,
            w.rx_packets,
            w.forwarded_packets,
            w.cycles_per_packet()
        ));
    }
    s
}

/// `show config`: the running configuration as YAML.
pub fn config(rt: &Runtime) -> String {
    rt.running().to_yaml()
}

/// `show problems`: what is wrong in the input, what was kept, skipped, noted, and each port
/// that is down with the error it did not open with.
pub fn problems(rt: &Runtime) -> String {
    let i = &rt.input;
    let mut s = format!("reconciles: {}\n", i.reconciles);
    for (what, list) in
        [("problem", &i.problems), ("kept", &i.kept), ("skipped", &i.skipped), ("note", &i.notes)]
    {
        for l in list {
            s.push_str(&format!("{what}: {l}\n"));
        }
    }
    for (port, e) in rt.port_errors() {
        s.push_str(&format!("down: port {port}: {e}\n"));
    }
    s
}

/// `trace PORT HEXFRAME`: one line per frame traced ([`Runtime::trace`]), as `replay --trace`
/// prints them (without the timestamp).
pub fn trace(rt: &Runtime, port: &str, hex: &str) -> Result<String, CtlError> {
    let frame = parse_hex(hex)?;
    let (cfg, traces) = rt.trace(port, &frame)?;
    let mut s = String::new();
    for t in &traces {
        s.push_str(&t.describe(&cfg));
        s.push('\n');
    }
    if traces.is_empty() {
        // Counted at ingress before the pipeline's trace (cannot happen for one frame).
        s.push_str(&format!("{port} len={} -> drop {}\n", frame.len(), DropReason::Runt.name()));
    }
    Ok(s)
}

/// Rows as left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().map(|r| r.get(c).map_or(0, |x| x.len())).max().unwrap_or(0)).collect();
    let mut s = String::new();
    for r in rows {
        let line: Vec<String> =
            r.iter().enumerate().map(|(c, x)| format!("{x:<w$}", w = widths[c])).collect();
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    s
}

/// Parses a frame given as hex digits (spaces, `:` and `-` between bytes are ignored).
pub fn parse_hex(s: &str) -> Result<Vec<u8>, CtlError> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace() && *c != ':' && *c != '-').collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    // Characters, not bytes: a non-ASCII character is refused by name, never sliced through.
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(CtlError::NotHex(c.to_string()));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(CtlError::OddHexDigits);
    }
    let nibble = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    Ok(digits.as_bytes().chunks_exact(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_frames() {
        assert_eq!(parse_hex("ff:00 0a").unwrap(), [0xff, 0, 10]);
        assert_eq!(parse_hex("0x0102-03").unwrap(), [1, 2, 3]);
        assert_eq!(parse_hex("abc").unwrap_err().to_string(), "odd number of hex digits");
        assert_eq!(parse_hex("zz").unwrap_err().to_string(), "\"z\" is not hex");
        // Refused by character, never sliced through one (a panic of the socket's thread).
        assert_eq!(parse_hex("a\u{e9}1").unwrap_err().to_string(), "\"\u{e9}\" is not hex");
        assert_eq!(parse_hex("\u{e9}").unwrap_err().to_string(), "\"\u{e9}\" is not hex");
        // from_str_radix would take a sign.
        assert_eq!(parse_hex("+1").unwrap_err().to_string(), "\"+\" is not hex");
        assert_eq!(parse_hex("").unwrap(), [] as [u8; 0]);
    }

    /// A trunk port's static MAC, installed in every VLAN, is one row with the VLAN range; a
    /// MAC static on two ports is a row each; learned entries stay one a VLAN.
    #[test]
    fn fdb_prints_a_static_mac_once_with_its_vlans() {
        let (m1, m2) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
        let st = |vlan, mac, port| FdbEntry { vlan, mac, port, is_static: true, age: 0 };
        let mut entries: Vec<FdbEntry> = (1..=4094).map(|v| st(v, m1, 1)).collect();
        entries.extend([7, 5, 6, 9].map(|v| st(v, m1, 0)));
        entries.push(FdbEntry { vlan: 5, mac: m2, port: 0, is_static: false, age: 3 });
        entries.push(FdbEntry { vlan: 6, mac: m2, port: 0, is_static: false, age: 4 });
        let name = |p: PortId| ["p0", "trunk"][usize::from(p)].to_string();
        let rows: Vec<String> = fdb_rows("br0", &entries, &name).into_iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            rows,
            [
                "br0 5-7,9 02:00:00:00:00:01 p0 - yes",
                "br0 1-4094 02:00:00:00:00:01 trunk - yes",
                "br0 5 02:00:00:00:00:02 p0 3 no",
                "br0 6 02:00:00:00:00:02 p0 4 no",
            ]
        );
    }

    /// Two connections with the same addresses, ports and protocol in two VLANs of one bridge
    /// are two entries of the table: `show conntrack` tells them apart by the VLAN column.
    #[test]
    fn conntrack_rows_name_the_vlan() {
        use switchyard_dataplane::conntrack::Conntrack;
        use switchyard_dataplane::wire::ip::{FlowKey, PROTO_UDP};
        let ct = Conntrack::new(64).expect("table");
        let key = |vlan| FlowKey {
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            sport: 5000,
            dport: 53,
            proto: PROTO_UDP,
            v4: true,
            vlan,
        };
        for vlan in [10, 20] {
            ct.commit(&key(vlan), 0, 1).expect("room");
        }
        let (entries, live) = ct.entries(1, 10);
        let mut rows: Vec<String> = entries.iter().map(|e| conntrack_row("br0", e).join(" ")).collect();
        rows.sort();
        assert_eq!(live, 2);
        assert_eq!(
            rows,
            [
                "br0 10 17 10.0.0.1 5000 10.0.0.2 53 unreplied 30 no",
                "br0 20 17 10.0.0.1 5000 10.0.0.2 53 unreplied 30 no"
            ]
        );
    }
}
