//! The plugin's answer when a verb fails: the CNI spec's error object, printed on stdout.
//!
//! Every module has its own error enum; each converts into [`CniError`] here, which fixes the
//! code the runtime sees. Codes below 100 are the spec's; 100 and up are this plugin's own
//! (docs/cni.md lists them). The process exits with the code as its status, so a shell sees
//! 50 from a STATUS whose daemon does not answer.

use serde::Serialize;

/// The spec's well-known error codes, and this plugin's (100 and up).
pub mod code {
    /// The config's `cniVersion` is not one this plugin speaks (or the verb does not exist in it).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// An environment variable is missing or invalid; the message names it.
    pub const INVALID_ENV: u32 = 4;
    /// An I/O failure (the state directory, the device-info file).
    pub const IO: u32 = 5;
    /// The configuration (or the IPAM plugin's answer) is not valid JSON.
    pub const DECODE: u32 = 6;
    /// The network configuration is invalid; the message names the key.
    pub const INVALID_CONFIG: u32 = 7;
    /// The daemon is not answering yet (starting or restarting): try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs now (the daemon does not answer).
    pub const NOT_AVAILABLE: u32 = 50;
    /// ADD: the interface, the attachment or the port name exists already, or another route
    /// to a destination of the IPAM result.
    pub const EXISTS: u32 = 100;
    /// The daemon refused the request for a reason the config does not explain, or its
    /// answer was not understood.
    pub const DAEMON: u32 = 101;
    /// A kernel network operation (netlink) failed.
    pub const LINK: u32 = 102;
    /// The IPAM plugin could not be run, or its result is unusable.
    pub const IPAM: u32 = 103;
    /// CHECK: the attachment is not as the configuration says.
    pub const CHECK_FAILED: u32 = 104;
}

/// A failed verb, as the runtime receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object of spec version `version`, one line of JSON.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Out { cni_version: version, err: self })
            .unwrap_or_else(|_| format!("{{\"cniVersion\":\"{version}\",\"code\":{}}}", self.code))
    }

    /// The exit status that goes with the error (never 0).
    pub fn exit_status(&self) -> i32 {
        match self.code {
            c @ 1..=255 => c as i32,
            _ => 1,
        }
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_keys() {
        let e = CniError::new(code::INVALID_CONFIG, "vlan: out of range").with_details("4095");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "vlan: out of range", "details": "4095"})
        );
        let v: serde_json::Value = serde_json::from_str(&CniError::new(50, "down").to_json("1.1.0")).unwrap();
        assert!(v.get("details").is_none(), "{v}");
        assert_eq!(CniError::new(50, "x").exit_status(), 50);
        assert_eq!(CniError::new(999, "x").exit_status(), 1);
    }
}
