//! The CNI result: interfaces, IP configurations, routes and DNS, read from an IPAM plugin or a
//! `prevResult` in any supported format and written in the format of the config's version.
//!
//! Invariant: a parsed [`CniResult`] holds only well-formed addresses (an address with a prefix
//! length that fits its family), so applying it to an interface cannot fail on syntax.

use crate::error::{code, CniError};
use crate::version::Version;
use serde_json::{json, Map, Value};
use std::fmt;
use std::net::IpAddr;

/// Why a result cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
}

impl From<ResultError> for CniError {
    fn from(e: ResultError) -> CniError {
        CniError::new(code::DECODE, format!("unusable CNI result: {e}"))
    }
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> ResultError {
    ResultError::Field { field: field.into(), msg: msg.into() }
}

/// An address with its prefix length (`10.1.0.2/24`, `fd00::2/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = s.split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// The network: the address with the host bits cleared (what a route's destination is).
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpNet { addr, prefix: self.prefix }
    }

    /// IPv4's directed broadcast address of the subnet (None for IPv6 and /31, /32).
    pub fn broadcast(&self) -> Option<std::net::Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) if self.prefix < 31 => {
                let host = u32::MAX >> self.prefix;
                Some((u32::from(a) | host).into())
            }
            _ => None,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The network namespace path, for an interface inside the container.
    pub sandbox: Option<String>,
    /// vhost-user: the socket the guest's VMM connects to (or listens on).
    pub socket_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// The 1.1.0 route attributes (`mtu`, `advmss`, `priority`, `table`, `scope`) as given,
    /// all applied (`priority` as the route's metric).
    pub extra: Map<String, Value>,
}

impl Route {
    fn uint(&self, k: &str) -> Option<u32> {
        self.extra.get(k).and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok())
    }

    pub fn priority(&self) -> Option<u32> {
        self.uint("priority")
    }

    /// The routing table (the main table when unset).
    pub fn table(&self) -> Option<u32> {
        self.uint("table")
    }

    /// The scope (0 global, 253 link, 254 host).
    pub fn scope(&self) -> Option<u8> {
        self.uint("scope").and_then(|s| u8::try_from(s).ok())
    }

    pub fn mtu(&self) -> Option<u32> {
        self.uint("mtu")
    }

    pub fn advmss(&self) -> Option<u32> {
        self.uint("advmss")
    }
}

/// A CNI result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// The `dns` object as given (`{}` when none).
    pub dns: Map<String, Value>,
}

fn opt_str(o: &Map<String, Value>, k: &str, field: &str) -> Result<Option<String>, ResultError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{field}.{k}"), "must be a string")),
    }
}

fn opt_ip(o: &Map<String, Value>, k: &str, field: &str) -> Result<Option<IpAddr>, ResultError> {
    match opt_str(o, k, field)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => {
            s.parse().map(Some).map_err(|_| bad(format!("{field}.{k}"), format!("{s:?} is not an IP")))
        }
    }
}

fn net(o: &Map<String, Value>, k: &str, field: &str) -> Result<IpNet, ResultError> {
    let s = opt_str(o, k, field)?.ok_or_else(|| bad(format!("{field}.{k}"), "missing"))?;
    IpNet::parse(&s).ok_or_else(|| bad(format!("{field}.{k}"), format!("{s:?} is not ADDRESS/PREFIX")))
}

/// The 1.1.0 route attributes and their largest values (`scope`: a `rtm_scope` byte).
const ROUTE_ATTRIBUTES: [(&str, u64); 5] = [
    ("mtu", 0xffff_ffff),
    ("advmss", 0xffff_ffff),
    ("priority", 0xffff_ffff),
    ("table", 0xffff_ffff),
    ("scope", 255),
];

fn objects<'a>(v: &'a Value, k: &str) -> Result<Vec<&'a Map<String, Value>>, ResultError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, e)| e.as_object().ok_or_else(|| bad(format!("{k}[{i}]"), "must be an object")))
            .collect(),
        Some(_) => Err(bad(k, "must be an array")),
    }
}

impl CniResult {
    /// Reads a result of any supported version (0.3.0 to 1.1.0).
    pub fn parse(v: &Value) -> Result<CniResult, ResultError> {
        if !v.is_object() {
            return Err(bad("result", "must be a JSON object"));
        }
        let mut r = CniResult::default();
        for (i, o) in objects(v, "interfaces")?.into_iter().enumerate() {
            let f = format!("interfaces[{i}]");
            r.interfaces.push(Interface {
                name: opt_str(o, "name", &f)?.ok_or_else(|| bad(format!("{f}.name"), "missing"))?,
                mac: opt_str(o, "mac", &f)?,
                mtu: o.get("mtu").and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok()),
                sandbox: opt_str(o, "sandbox", &f)?,
                socket_path: opt_str(o, "socketPath", &f)?,
            });
        }
        for (i, o) in objects(v, "ips")?.into_iter().enumerate() {
            let f = format!("ips[{i}]");
            let interface = match o.get("interface") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    x.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(format!("{f}.interface"), "must be an index"))?,
                ),
            };
            r.ips.push(IpConfig {
                address: net(o, "address", &f)?,
                gateway: opt_ip(o, "gateway", &f)?,
                interface,
            });
        }
        for (i, o) in objects(v, "routes")?.into_iter().enumerate() {
            let f = format!("routes[{i}]");
            let mut extra = o.clone();
            extra.remove("dst");
            extra.remove("gw");
            // The 1.1.0 attributes are numbers in range, or the ADD would do other than the
            // result says (Go's types.Route refuses them as well).
            for (k, max) in ROUTE_ATTRIBUTES {
                match extra.get(k) {
                    None | Some(Value::Null) => {}
                    Some(x) if x.as_u64().is_some_and(|n| n <= max) => {}
                    Some(_) => {
                        return Err(bad(format!("{f}.{k}"), format!("must be an integer up to {max}")))
                    }
                }
            }
            r.routes.push(Route { dst: net(o, "dst", &f)?, gw: opt_ip(o, "gw", &f)?, extra });
        }
        match v.get("dns") {
            None | Some(Value::Null) => {}
            Some(Value::Object(d)) => r.dns = d.clone(),
            Some(_) => return Err(bad("dns", "must be an object")),
        }
        Ok(r)
    }

    /// The result in `version`'s format.
    pub fn to_json(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    if let Some(m) = &i.mac {
                        o.insert("mac".into(), json!(m));
                    }
                    if let Some(m) = i.mtu {
                        o.insert("mtu".into(), json!(m));
                    }
                    if let Some(s) = &i.sandbox {
                        o.insert("sandbox".into(), json!(s));
                    }
                    if let Some(s) = &i.socket_path {
                        o.insert("socketPath".into(), json!(s));
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if version.ips_have_version() {
                        o.insert("version".into(), json!(if ip.address.addr.is_ipv4() { "4" } else { "6" }));
                    }
                    if let Some(i) = ip.interface {
                        o.insert("interface".into(), json!(i));
                    }
                    o.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(g) = ip.gateway {
                        o.insert("gateway".into(), json!(g.to_string()));
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("dst".into(), json!(r.dst.to_string()));
                    if let Some(g) = r.gw {
                        o.insert("gw".into(), json!(g.to_string()));
                    }
                    if version >= Version::V1_1_0 {
                        o.extend(r.extra.clone());
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), Value::Object(self.dns.clone()));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_parse_network_broadcast() {
        let n = IpNet::parse("10.1.2.3/24").unwrap();
        assert_eq!(n.network().to_string(), "10.1.2.0/24");
        assert_eq!(n.broadcast(), Some("10.1.2.255".parse().unwrap()));
        assert_eq!(IpNet::parse("0.0.0.0/0").unwrap().network().to_string(), "0.0.0.0/0");
        assert_eq!(IpNet::parse("fd00::5/64").unwrap().network().to_string(), "fd00::/64");
        assert!(IpNet::parse("10.0.0.1/33").is_none());
        assert!(IpNet::parse("10.0.0.1").is_none());
    }

    #[test]
    fn reads_old_and_writes_each_format() {
        // A host-local 0.4.0 result.
        let old = json!({"cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
        let r = CniResult::parse(&old).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        let v1 = r.to_json(Version::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none(), "{v1}");
        assert_eq!(v1["cniVersion"], "1.0.0");
        let v031 = r.to_json(Version::V0_3_1);
        assert_eq!(v031["ips"][0]["version"], "4");
        assert_eq!(v031["routes"][0], json!({"dst": "0.0.0.0/0"}));
        assert_eq!(CniResult::parse(&v1).unwrap(), r);
    }

    #[test]
    fn bad_results_name_the_field() {
        let e = CniResult::parse(&json!({"ips": [{"address": "10.1.0.5"}]})).unwrap_err();
        assert!(e.to_string().starts_with("ips[0].address"), "{e}");
        let e = CniResult::parse(&json!({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]})).unwrap_err();
        assert!(e.to_string().starts_with("routes[0].gw"), "{e}");
        // Route attributes of another type or out of range (s15w's review: they were dropped,
        // the route going to the main table while the result said otherwise).
        for (k, v) in [
            ("table", json!("100")),
            ("table", json!(-1)),
            ("table", json!(4294967296u64)),
            ("scope", json!(300)),
            ("mtu", json!(1.5)),
        ] {
            let e =
                CniResult::parse(&json!({"cniVersion": "1.1.0", "routes": [{"dst": "10.0.0.0/8", k: v}]}))
                    .unwrap_err();
            assert!(e.to_string().starts_with(&format!("routes[0].{k}")), "{k}={v}: {e}");
        }
        let ok = CniResult::parse(
            &json!({"routes": [{"dst": "10.0.0.0/8", "table": 4294967295u64, "scope": 253}]}),
        );
        assert_eq!(
            ok.map(|r| (r.routes[0].table(), r.routes[0].scope())).ok(),
            Some((Some(u32::MAX), Some(253)))
        );
    }
}
