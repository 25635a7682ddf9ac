//! GC: remove the ports of this network whose attachments the runtime no longer knows, and
//! pass the GC on to the IPAM plugin.
//!
//! Invariant: GC removes only ports the plugin added for this network (the config's `name`,
//! stored with each port), never another network's ports on the same bridge, and never a
//! port listed in `cni.dev/valid-attachments`. A failure does not stop it: every other stale
//! port is still removed and the IPAM plugin still gets its GC (the spec: remove as much as
//! possible, report the errors); the first error is the answer, the others its details.

use crate::attach::{log, Ctx};
use crate::error::{code, CniError};
use crate::ipam;
use crate::link::Netlink;
use std::collections::HashSet;
use switchyard_dataplane::config::PortType;

pub fn gc(ctx: &Ctx) -> Result<(), CniError> {
    let conf = ctx.conf;
    if !conf.version.has_status_and_gc() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("GC is not defined for cniVersion {}", conf.version.as_str()),
        ));
    }
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "cni.dev/valid-attachments: missing (GC needs the list of attachments to keep)",
        )
    })?;
    let mut errors: Vec<CniError> = Vec::new();
    remove_stale_ports(ctx, valid, &mut errors);
    // The IPAM plugin releases the stale attachments' leases itself, from the same list.
    if let Some(t) = &conf.ipam {
        match ctx.ipam_path() {
            Ok(path) => {
                if let Err(e) = ipam::exec(t, "GC", ctx.stdin, path) {
                    errors.push(e.into());
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            let rest: Vec<String> = errors.map(|e| e.to_string()).collect();
            if rest.is_empty() {
                Err(first)
            } else {
                let details = match first.details.as_str() {
                    "" => rest.join("; "),
                    d => format!("{d}; {}", rest.join("; ")),
                };
                Err(first.with_details(details))
            }
        }
    }
}

/// Removes this network's ports that `valid` does not list, and their host veths; each
/// failure is pushed to `errors` and the next port is tried.
fn remove_stale_ports(ctx: &Ctx, valid: &[crate::config::ValidAttachment], errors: &mut Vec<CniError>) {
    let keep: HashSet<(&str, &str)> =
        valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let daemon = ctx.daemon();
    let listed = match daemon.list() {
        Ok(l) => l,
        Err(e) => return errors.push(e.into()),
    };
    let mut nl = None;
    for l in &listed {
        let a = &l.cni.attachment;
        if l.cni.network.as_deref() != Some(ctx.conf.name.as_str())
            || keep.contains(&(a.container_id.as_str(), a.ifname.as_str()))
        {
            continue;
        }
        if let Err(e) = daemon.del(a) {
            errors.push(e.into());
            continue;
        }
        log(
            ctx,
            format!("removed port {} of stale attachment {}/{}", l.cni.port.name, a.container_id, a.ifname),
        );
        // A veth attachment's host end (an AF_PACKET or AF_XDP port's interface; vhost-user
        // ports have none).
        if let (Some(PortType::Afpacket | PortType::Afxdp), Some(iface)) =
            (l.cni.port.kind, &l.cni.port.iface)
        {
            let nl = match &mut nl {
                Some(nl) => nl,
                None => match Netlink::open() {
                    Ok(n) => nl.insert(n),
                    Err(e) => {
                        errors.push(e.into());
                        continue;
                    }
                },
            };
            if let Err(e) = nl.del_link(iface) {
                errors.push(e.into());
            }
        }
    }
}
