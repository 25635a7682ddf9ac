//! The CNI spec versions this plugin speaks, and its VERSION answer.
//!
//! Invariant: a result is always written in the format of the version the configuration
//! names; [`Version`] is the only way a version enters the plugin.

/// A spec version of the result and configuration formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// The result format of 0.3.1 (which only clarified the spec's text); accepted because
    /// configurations written for the Go plugins use it (Multus's own examples do).
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version accepted, oldest first (what VERSION lists).
pub const SUPPORTED: [Version; 5] =
    [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

impl Version {
    /// The newest: what the plugin implements.
    pub const CURRENT: Version = Version::V1_1_0;

    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// 0.3.x and 0.4.0 results carry `"version": "4"|"6"` in each IP entry.
    pub fn ips_have_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

/// The VERSION answer.
pub fn version_info() -> String {
    let list: Vec<&str> = SUPPORTED.iter().map(|v| v.as_str()).collect();
    serde_json::json!({"cniVersion": Version::CURRENT.as_str(), "supportedVersions": list}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_order() {
        for v in SUPPORTED {
            assert_eq!(Version::parse(v.as_str()), Some(v));
        }
        assert_eq!(Version::parse("0.2.0"), None);
        assert!(Version::V0_3_0.ips_have_version() && !Version::V0_3_0.has_check());
        assert!(Version::V0_3_1.ips_have_version() && !Version::V1_0_0.ips_have_version());
        assert!(!Version::V1_0_0.has_status_and_gc() && Version::V1_1_0.has_status_and_gc());
        let info: serde_json::Value = serde_json::from_str(&version_info()).unwrap();
        assert_eq!(
            info["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
