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
//! Queues: `<driver queues='N'/>` asks QEMU for N queue pairs, and QEMU refuses to start the NIC
//! when the vhost-user backend offers fewer ("you are asking more queues than supported"), so N
//! is the smaller of the domain's vCPUs and the pairs the port offers
//! ([`VhostIface::port_queues`]), and no `<driver>` is written when that is 1.
//!
//! A document nested deeper than [`MAX_DEPTH`] elements is refused before it is parsed: the
//! parser and the tree it builds recurse once per level, and a deep enough document would
//! overflow the stack and abort the sidecar.
//!
//! MTU: `<mtu size>` is what QEMU tells the guest, and the guest then sends frames that large;
//! the switch's buffers hold at most [`VHOST_MAX_MTU`] + 18 bytes (header and one VLAN tag), so
//! a larger MTU is refused ([`DomainError::MtuTooLarge`]: the VM does not start, with the reason)
//! rather than written, which would have every full-size frame dropped as `oversize`.
//!
//! Invariant: the rewrite is idempotent (`rewrite(rewrite(x)) == rewrite(x)`), as virt-launcher
//! may call OnDefineDomain more than once, and it touches nothing but those interfaces and the
//! memory backing.

pub use switchyard_cni::config::VHOST_MAX_MTU;
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
    /// Multiqueue asked for (the VMI's `networkInterfaceMultiqueue`): one queue pair per vCPU,
    /// at most [`VhostIface::port_queues`].
    pub multiqueue: bool,
    /// The queue pairs the switch's port offers on the socket.
    pub port_queues: u32,
}

/// The deepest element nesting a domain may have; libvirt's own domain XML is under 20 deep.
pub const MAX_DEPTH: usize = 256;

/// Why a domain cannot be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("the domain XML does not parse: {0}")]
    Parse(#[from] xmltree::ParseError),
    #[error("the domain XML cannot be written: {0}")]
    Write(#[from] xmltree::Error),
    #[error("the domain has no <devices>")]
    NoDevices,
    #[error("the domain XML nests elements deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error(
        "the domain's memory backing is not shared ({0}): vhost-user needs the guest's memory shared \
         with the switch; remove the setting or make it <access mode='shared'/>"
    )]
    NotShared(String),
    #[error(
        "interface {name:?}: MTU {mtu} is larger than a switchyard vhost-user port carries (at most \
         {VHOST_MAX_MTU}: the switch's buffers hold the frame, its header and a VLAN tag); lower the \
         network's mtu (the NAD's) or the sidecar's --mtu"
    )]
    MtuTooLarge { name: String, mtu: u32 },
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
    let queues = if want.multiqueue { queues.min(want.port_queues) } else { 1 };
    if queues > 1 {
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
            match mb.get_mut_child("access") {
                // `<access/>` without a mode: libvirt's schema allows one `<access>` only.
                Some(a) => {
                    a.attributes.insert("mode".into(), "shared".into());
                }
                None => mb.children.push(XMLNode::Element(elem("access", &[("mode", "shared")]))),
            }
            Ok(())
        }
    }
}

/// Refuses `xml` when its elements nest deeper than [`MAX_DEPTH`], with the streaming parser,
/// whose memory grows with the depth but whose stack does not.
fn check_depth(xml: &[u8]) -> Result<(), DomainError> {
    use xml::reader::XmlEvent;
    let mut r = ParserConfig::new().create_reader(xml);
    let mut depth = 0usize;
    loop {
        match r.next().map_err(xmltree::ParseError::MalformedXml)? {
            XmlEvent::StartElement { .. } => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DomainError::TooDeep);
                }
            }
            XmlEvent::EndElement { .. } => depth = depth.saturating_sub(1),
            XmlEvent::EndDocument => return Ok(()),
            _ => {}
        }
    }
}

/// Parses a domain, refusing one too deep to parse recursively.
fn parse(xml: &[u8], config: ParserConfig) -> Result<Element, DomainError> {
    check_depth(xml)?;
    Ok(Element::parse_with_config(xml, config)?)
}

/// Rewrites `xml` for `ifaces`; with none, the domain is returned as it came.
pub fn rewrite(xml: &[u8], ifaces: &[VhostIface]) -> Result<Vec<u8>, DomainError> {
    if ifaces.is_empty() {
        return Ok(xml.to_vec());
    }
    if let Some(w) = ifaces.iter().find(|w| w.mtu.is_some_and(|m| m > VHOST_MAX_MTU)) {
        return Err(DomainError::MtuTooLarge { name: w.name.clone(), mtu: w.mtu.unwrap_or_default() });
    }
    let mut dom = parse(xml, ParserConfig::new().trim_whitespace(true))?;
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
    let dom = parse(xml, ParserConfig::new())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn blue(multiqueue: bool, port_queues: u32) -> VhostIface {
        VhostIface {
            name: "blue".into(),
            socket: "/var/run/switchyard/kubevirt/blue-0/sock".into(),
            mode: "client".into(),
            mac: None,
            mtu: None,
            multiqueue,
            port_queues,
        }
    }

    fn dom(vcpus: u32, memory_backing: &str) -> Vec<u8> {
        format!("<domain type='kvm'><name>d</name><memory>1</memory>{memory_backing}<vcpu>{vcpus}</vcpu><devices></devices></domain>")
            .into_bytes()
    }

    #[test]
    fn queues_are_at_most_what_the_port_offers() {
        let q = |vcpus, mq, offered| {
            let out = rewrite(&dom(vcpus, ""), &[blue(mq, offered)]).unwrap();
            vhost_interfaces(&out).unwrap()[0].queues
        };
        // The CNI's ports offer one pair: QEMU must not ask for 4.
        assert_eq!(q(4, true, 1), 1);
        assert_eq!(q(4, true, 2), 2);
        assert_eq!(q(2, true, 8), 2);
        assert_eq!(q(4, false, 8), 1);
        let out = String::from_utf8(rewrite(&dom(4, ""), &[blue(true, 1)]).unwrap()).unwrap();
        assert!(!out.contains("<driver"), "{out}");
    }

    /// An MTU whose frames fit the switch's buffers (with a VLAN tag) is written; a larger one
    /// is refused, naming the interface, rather than told to the guest.
    #[test]
    fn an_mtu_the_switch_cannot_carry_is_refused() {
        let with = |mtu| VhostIface { mtu: Some(mtu), ..blue(false, 1) };
        let out = String::from_utf8(rewrite(&dom(1, ""), &[with(VHOST_MAX_MTU)]).unwrap()).unwrap();
        assert!(out.contains("<mtu size=\"2030\" />") || out.contains("<mtu size=\"2030\"/>"), "{out}");
        for mtu in [VHOST_MAX_MTU + 1, 9000] {
            let e = rewrite(&dom(1, ""), &[blue(false, 1), with(mtu)]).unwrap_err();
            assert!(
                matches!(&e, DomainError::MtuTooLarge { name, mtu: m } if name == "blue" && *m == mtu),
                "{e}"
            );
            assert!(e.to_string().contains("at most 2030"), "{e}");
        }
    }

    #[test]
    fn an_access_without_mode_gets_the_mode_once() {
        let d = dom(1, "<memoryBacking><hugepages/><access/></memoryBacking>");
        let once = rewrite(&d, &[blue(false, 1)]).unwrap();
        let twice = rewrite(&once, &[blue(false, 1)]).unwrap();
        assert_eq!(String::from_utf8_lossy(&twice), String::from_utf8_lossy(&once));
        let mb = Element::parse(&once[..]).unwrap().get_child("memoryBacking").unwrap().clone();
        let access: Vec<&Element> =
            mb.children.iter().filter_map(XMLNode::as_element).filter(|e| e.name == "access").collect();
        assert_eq!(access.len(), 1, "{}", String::from_utf8_lossy(&once));
        assert_eq!(attr(access[0], "mode"), Some("shared"));
        assert!(child(&mb, "source").is_none(), "a memfd source beside hugepages");
    }

    #[test]
    fn a_document_too_deep_is_refused_before_it_is_parsed() {
        let nest = |n: usize| "<x>".repeat(n) + &"</x>".repeat(n);
        // 600 levels overflowed the stack of the recursive parser (SIGABRT); on a thread with
        // tokio's 2 MiB stack, as the sidecar's calls run.
        let deep = format!("<domain><devices/>{}</domain>", nest(600)).into_bytes();
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                (rewrite(&deep, &[blue(false, 1)]).map(|_| ()), vhost_interfaces(&deep).map(|_| ()))
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(r.0, Err(DomainError::TooDeep)), "{:?}", r.0);
        assert!(matches!(r.1, Err(DomainError::TooDeep)), "{:?}", r.1);
        // The bound, and not one level less, passes.
        let ok = format!("<domain><devices/>{}</domain>", nest(MAX_DEPTH - 1)).into_bytes();
        rewrite(&ok, &[blue(false, 1)]).unwrap();
        let over = format!("<domain><devices/>{}</domain>", nest(MAX_DEPTH)).into_bytes();
        assert!(matches!(rewrite(&over, &[blue(false, 1)]), Err(DomainError::TooDeep)));
        // Malformed XML is still a parse error.
        assert!(matches!(rewrite(b"<domain><devices>", &[blue(false, 1)]), Err(DomainError::Parse(_))));
    }
}
