//! The protocol types the daemon and the plugin exchange (docs/cni.md, "Daemon protocol").
//!
//! Invariant: an attachment is identified by (container ID, interface name) alone; its key, the
//! name of its files in the state directory, is [`attachment_key`] of that pair.

use serde::{Deserialize, Serialize};
use switchyard_dataplane::config::PortConfig;

/// A CNI attachment: the pair that identifies it, and what is known about its pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// A port the plugin asks the daemon for, as the daemon stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniPort {
    pub bridge: String,
    pub attachment: Attachment,
    pub port: PortConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// The CNI network (the config's `name`): GC removes only its own network's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// 16 lowercase hex digits of FNV-1a 64 over `container_id + "/" + ifname`.
pub fn attachment_key(container_id: &str, ifname: &str) -> String {
    format!("{:016x}", fnv1a64(format!("{container_id}/{ifname}").as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_fnv1a_64() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(attachment_key("c1", "net1"), format!("{:016x}", fnv1a64(b"c1/net1")));
        assert_eq!(attachment_key("c1", "net1").len(), 16);
    }
}
