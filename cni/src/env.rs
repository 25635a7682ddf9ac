//! The CNI environment variables of one invocation, checked as the spec asks per verb.
//!
//! Invariant: a [`CniEnv`] holds every variable its verb requires, each valid (a container ID
//! and an interface name as the spec defines them); a missing or invalid one is an
//! [`EnvError`] naming the variable, which the runtime receives as error 4.

use crate::error::{code, CniError};
use std::path::PathBuf;
use switchyard_dataplane::wire::MacAddr;

/// The verbs of CNI 1.1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// Why the environment is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{0} is not set (required for this verb)")]
    Missing(&'static str),
    #[error("{var}: {msg}")]
    Invalid { var: &'static str, msg: String },
}

impl From<EnvError> for CniError {
    fn from(e: EnvError) -> CniError {
        CniError::new(code::INVALID_ENV, e.to_string())
    }
}

/// `CNI_ARGS` keys this plugin reads (others are ignored, as `IgnoreUnknown` asks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// `K8S_POD_UID` (containerd and CRI-O pass it): what tells a VMI's pod for sure.
    pub pod_uid: Option<String>,
    /// `MAC=...`, as the bridge plugin takes it (runtimeConfig.mac wins over it).
    pub mac: Option<MacAddr>,
}

/// The environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Empty for STATUS, GC and VERSION.
    pub container_id: String,
    pub netns: Option<String>,
    /// Empty for STATUS, GC and VERSION.
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// Reads `CNI_COMMAND` alone (an unknown verb is error 4 too).
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, EnvError> {
    let c = get("CNI_COMMAND").filter(|c| !c.is_empty()).ok_or(EnvError::Missing("CNI_COMMAND"))?;
    Command::parse(&c).ok_or_else(|| EnvError::Invalid {
        var: "CNI_COMMAND",
        msg: format!("unknown verb {c:?} (want ADD, DEL, CHECK, STATUS, GC or VERSION)"),
    })
}

impl CniEnv {
    /// Reads and checks the variables `command` needs, through `get` (the process
    /// environment in the binary).
    pub fn read(command: Command, get: &dyn Fn(&str) -> Option<String>) -> Result<CniEnv, EnvError> {
        let var = |k: &'static str| get(k).filter(|v| !v.is_empty());
        let need = |k: &'static str| var(k).ok_or(EnvError::Missing(k));
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let (container_id, ifname) = if per_attachment {
            let id = need("CNI_CONTAINERID")?;
            check_container_id(&id)?;
            let ifname = need("CNI_IFNAME")?;
            check_ifname(&ifname)?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = match command {
            Command::Add | Command::Check => Some(need("CNI_NETNS")?),
            _ => var("CNI_NETNS"),
        };
        let path = var("CNI_PATH")
            .map(|p| p.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();
        let args = match var("CNI_ARGS") {
            Some(a) => parse_args(&a)?,
            None => CniArgs::default(),
        };
        Ok(CniEnv { command, container_id, netns, ifname, args, path })
    }
}

/// `K=V;K=V`: every pair needs its `=`.
fn parse_args(s: &str) -> Result<CniArgs, EnvError> {
    let mut a = CniArgs::default();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| EnvError::Invalid {
            var: "CNI_ARGS",
            msg: format!("{pair:?} is not a KEY=VALUE pair"),
        })?;
        let v = (!v.is_empty()).then(|| v.to_string());
        match k {
            "K8S_POD_NAMESPACE" => a.pod_namespace = v,
            "K8S_POD_NAME" => a.pod_name = v,
            "K8S_POD_UID" => a.pod_uid = v,
            "MAC" => {
                a.mac = match v {
                    None => None,
                    Some(m) => Some(
                        m.parse()
                            .map_err(|e| EnvError::Invalid { var: "CNI_ARGS", msg: format!("MAC: {e}") })?,
                    ),
                }
            }
            _ => {}
        }
    }
    Ok(a)
}

/// The spec: at least one character, alphanumerics first, then alphanumerics, `_`, `.`, `-`.
fn check_container_id(id: &str) -> Result<(), EnvError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EnvError::Invalid {
            var: "CNI_CONTAINERID",
            msg: format!("{id:?}: want letters, digits, '_', '.' or '-', starting with a letter or digit"),
        })
    }
}

/// A Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or white space.
fn check_ifname(name: &str) -> Result<(), EnvError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(EnvError::Invalid {
            var: "CNI_IFNAME",
            msg: format!("{name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or space)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn add_needs_netns_and_names_it() {
        let e = env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "net1")]);
        assert_eq!(CniEnv::read(Command::Add, &e), Err(EnvError::Missing("CNI_NETNS")));
        // DEL does not.
        let d = CniEnv::read(Command::Del, &e).unwrap();
        assert_eq!(d.netns, None);
        assert_eq!(d.ifname, "net1");
    }

    #[test]
    fn bad_names_and_args_are_named() {
        let e = env(&[("CNI_CONTAINERID", "-x"), ("CNI_IFNAME", "net1"), ("CNI_NETNS", "/n")]);
        assert!(matches!(
            CniEnv::read(Command::Add, &e),
            Err(EnvError::Invalid { var: "CNI_CONTAINERID", .. })
        ));
        let e = env(&[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "a-very-long-name0"), ("CNI_NETNS", "/n")]);
        assert!(matches!(CniEnv::read(Command::Add, &e), Err(EnvError::Invalid { var: "CNI_IFNAME", .. })));
        let e =
            env(&[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "n"), ("CNI_NETNS", "/n"), ("CNI_ARGS", "A=1;B")]);
        assert!(matches!(CniEnv::read(Command::Add, &e), Err(EnvError::Invalid { var: "CNI_ARGS", .. })));
    }

    #[test]
    fn args_and_path() {
        let e = env(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=vm-a;K8S_POD_UID="),
        ]);
        let r = CniEnv::read(Command::Check, &e).unwrap();
        assert_eq!(r.args.pod_uid, None, "an empty value is none");
        let with_uid = env(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_NETNS", "/n"),
            ("CNI_ARGS", "K8S_POD_UID=8d2f-01;K8S_POD_NAME=vm-a"),
        ]);
        assert_eq!(CniEnv::read(Command::Add, &with_uid).unwrap().args.pod_uid.as_deref(), Some("8d2f-01"));
        assert_eq!(r.path, vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
        assert_eq!(r.args.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(r.args.pod_name.as_deref(), Some("vm-a"));
        assert!(command(&env(&[("CNI_COMMAND", "FOO")])).unwrap_err().to_string().contains("FOO"));
    }
}
