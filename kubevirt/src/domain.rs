//! The rewrite of a libvirt domain for switchyard's vhost-user interfaces.
//!
//! For every [`VhostIface`], the domain gets one `<interface type='vhostuser'>` with the user
//! alias `ua-<name>` (KubeVirt's alias of the VMI interface `name`): an interface with that
//! alias is replaced in place (its `<mac>`, `<address>`, `<boot>` and `<rom>` kept), else one is
//! added to `<devices>`. vhost-user needs the guest's memory shared with the switch: a domain
//! without `<memoryBacking>` gets memfd shared memory; hugepages or a memfd/file source without
//! an access mode get `<access mode='shared'/>`; an explicit private access or an anonymous
//! source is refused ([`DomainError::NotShared`]), never silently changed.
//!
//! Invariant: the rewrite is idempotent (`rewrite(rewrite(x)) == rewrite(x)`), as virt-launcher
//! may call OnDefineDomain more than once, and it touches nothing but those interfaces and the
//! memory backing.

use xmltree::{Element, EmitterConfig, ParserConfig, XMLNode};

/// One interface to put on switchyard's vhost-user port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostIface {
    /// The VMI interface (and network) name.
    pub name: String,
    /// The socket as QEMU sees it.
    pub socket: String,
    /// QEMU's role on the socket: `client` when the switch listens.
    pub mode: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Multiqueue: one queue pair per vCPU.
    pub multiqueue: bool,
}

/// Why a domain cannot be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("the domain XML does not parse: {0}")]
    Parse(#[from] xmltree::ParseError),
    #[error("the domain XML cannot be written: {0}")]
    Write(#[from] xmltree::Error),
    #[error("the domain has no <devices>")]
    NoDevices,
    #[error(
        "the domain's memory backing is not shared ({0}): vhost-user needs the guest's memory shared \
         with the switch; remove the setting or make it <access mode='shared'/>"
    )]
    NotShared(String),
}

fn child<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    e.get_child(name)
}

fn elem(name: &str, attrs: &[(&str, &str)]) -> Element {
    let mut e = Element::new(name);
    for (k, v) in attrs {
        e.attributes.insert((*k).into(), (*v).into());
    }
    e
}

fn attr<'a>(e: &'a Element, k: &str) -> Option<&'a str> {
    e.attributes.get(k).map(String::as_str)
}

/// The user alias KubeVirt gives the domain interface of VMI interface `name`.
pub fn alias(name: &str) -> String {
    format!("ua-{name}")
}

/// The domain's vCPU count (`<vcpu>`), 1 when absent.
fn vcpus(dom: &Element) -> u32 {
    child(dom, "vcpu").and_then(|v| v.get_text()).and_then(|t| t.trim().parse().ok()).unwrap_or(1)
}

fn interface(want: &VhostIface, old: Option<&Element>, queues: u32) -> Element {
    let mut i = elem("interface", &[("type", "vhostuser")]);
    let kids = &mut i.children;
    let old_mac = old.and_then(|o| child(o, "mac")).and_then(|m| attr(m, "address"));
    if let Some(mac) = want.mac.as_deref().or(old_mac) {
        kids.push(XMLNode::Element(elem("mac", &[("address", mac)])));
    }
    let mut source = elem("source", &[("type", "unix"), ("path", &want.socket), ("mode", &want.mode)]);
    if want.mode == "client" {
        // QEMU connects again a second after the switch restarts: the guest keeps its NIC.
        source.children.push(XMLNode::Element(elem("reconnect", &[("enabled", "yes"), ("timeout", "1")])));
    }
    kids.push(XMLNode::Element(source));
    kids.push(XMLNode::Element(elem("model", &[("type", "virtio")])));
    if want.multiqueue && queues > 1 {
        kids.push(XMLNode::Element(elem("driver", &[("queues", &queues.to_string())])));
    }
    if let Some(m) = want.mtu {
        kids.push(XMLNode::Element(elem("mtu", &[("size", &m.to_string())])));
    }
    kids.push(XMLNode::Element(elem("alias", &[("name", &alias(&want.name))])));
    for keep in ["address", "boot", "rom"] {
        if let Some(k) = old.and_then(|o| child(o, keep)) {
            kids.push(XMLNode::Element(k.clone()));
        }
    }
    i
}

fn has_alias(e: &Element, a: &str) -> bool {
    e.name == "interface" && child(e, "alias").and_then(|x| attr(x, "name")) == Some(a)
}

/// Makes the memory backing shared (see the module doc).
fn share_memory(dom: &mut Element) -> Result<(), DomainError> {
    let Some(mb) = dom.get_mut_child("memoryBacking") else {
        let mut mb = Element::new("memoryBacking");
        mb.children.push(XMLNode::Element(elem("source", &[("type", "memfd")])));
        mb.children.push(XMLNode::Element(elem("access", &[("mode", "shared")])));
        // Beside the memory size, where libvirt writes it.
        let at = dom
            .children
            .iter()
            .rposition(|c| c.as_element().is_some_and(|e| e.name == "memory" || e.name == "currentMemory"))
            .map_or(dom.children.len(), |p| p + 1);
        dom.children.insert(at, XMLNode::Element(mb));
        return Ok(());
    };
    let source = child(mb, "source").and_then(|s| attr(s, "type")).map(str::to_string);
    if source.as_deref() == Some("anonymous") {
        return Err(DomainError::NotShared("<source type='anonymous'/>".into()));
    }
    match child(mb, "access").and_then(|a| attr(a, "mode")) {
        Some("shared") => Ok(()),
        Some(m) => Err(DomainError::NotShared(format!("<access mode='{m}'/>"))),
        None => {
            if source.is_none() && child(mb, "hugepages").is_none() {
                // Neither hugepages nor a file: libvirt would back it with anonymous memory.
                mb.children.insert(0, XMLNode::Element(elem("source", &[("type", "memfd")])));
            }
            mb.children.push(XMLNode::Element(elem("access", &[("mode", "shared")])));
            Ok(())
        }
    }
}

/// Rewrites `xml` for `ifaces`; with none, the domain is returned as it came.
pub fn rewrite(xml: &[u8], ifaces: &[VhostIface]) -> Result<Vec<u8>, DomainError> {
    if ifaces.is_empty() {
        return Ok(xml.to_vec());
    }
    let mut dom = Element::parse_with_config(xml, ParserConfig::new().trim_whitespace(true))?;
    share_memory(&mut dom)?;
    let queues = vcpus(&dom);
    let devices = dom.get_mut_child("devices").ok_or(DomainError::NoDevices)?;
    for want in ifaces {
        let a = alias(&want.name);
        let at = devices.children.iter().position(|c| c.as_element().is_some_and(|e| has_alias(e, &a)));
        match at {
            Some(p) => {
                let new = interface(want, devices.children[p].as_element(), queues);
                devices.children[p] = XMLNode::Element(new);
            }
            None => {
                let after = devices
                    .children
                    .iter()
                    .rposition(|c| c.as_element().is_some_and(|e| e.name == "interface"))
                    .map_or(devices.children.len(), |p| p + 1);
                devices.children.insert(after, XMLNode::Element(interface(want, None, queues)));
            }
        }
    }
    let mut out = Vec::new();
    dom.write_with_config(
        &mut out,
        EmitterConfig::new().perform_indent(true).write_document_declaration(false),
    )?;
    out.push(b'\n');
    Ok(out)
}

/// A vhost-user interface of a domain, as QEMU's arguments need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostInterface {
    pub alias: String,
    pub socket: String,
    /// QEMU's role: `client` or `server`.
    pub mode: String,
    /// Seconds between reconnection attempts (client mode), when enabled.
    pub reconnect: Option<u32>,
    pub mac: Option<String>,
    pub queues: u32,
}

/// The vhost-user interfaces of a domain (what the end-to-end test derives QEMU's arguments
/// from, as libvirt would).
pub fn vhost_interfaces(xml: &[u8]) -> Result<Vec<VhostInterface>, DomainError> {
    let dom = Element::parse(xml)?;
    let devices = child(&dom, "devices").ok_or(DomainError::NoDevices)?;
    Ok(devices
        .children
        .iter()
        .filter_map(XMLNode::as_element)
        .filter(|e| e.name == "interface" && attr(e, "type") == Some("vhostuser"))
        .map(|e| {
            let s = child(e, "source");
            let get = |k| s.and_then(|s| attr(s, k)).unwrap_or_default().to_string();
            let rc = s.and_then(|s| child(s, "reconnect")).filter(|r| attr(r, "enabled") == Some("yes"));
            VhostInterface {
                alias: child(e, "alias").and_then(|a| attr(a, "name")).unwrap_or_default().to_string(),
                socket: get("path"),
                mode: get("mode"),
                reconnect: rc.map(|r| attr(r, "timeout").and_then(|t| t.parse().ok()).unwrap_or(1)),
                mac: child(e, "mac").and_then(|m| attr(m, "address")).map(str::to_string),
                queues: child(e, "driver")
                    .and_then(|d| attr(d, "queues"))
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(1),
            }
        })
        .collect())
}
