//! GC: remove the ports of this network whose attachments the runtime no longer knows.
//!
//! Invariant: GC removes only ports the plugin added for this network (the config's `name`,
//! stored with each port), never another network's ports on the same bridge, and never a
//! port listed in `cni.dev/valid-attachments`.

use crate::attach::{log, Ctx};
use crate::error::{code, CniError};
use crate::link::Netlink;
use std::collections::HashSet;
use switchyard_dataplane::config::PortType;

pub fn gc(ctx: &Ctx) -> Result<(), CniError> {
    let valid = ctx.conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "cni.dev/valid-attachments: missing (GC needs the list of attachments to keep)",
        )
    })?;
    let keep: HashSet<(&str, &str)> =
        valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let daemon = ctx.daemon();
    let listed = daemon.list()?;
    let mut nl = None;
    for l in &listed {
        let a = &l.cni.attachment;
        if l.cni.network.as_deref() != Some(ctx.conf.name.as_str())
            || keep.contains(&(a.container_id.as_str(), a.ifname.as_str()))
        {
            continue;
        }
        daemon.del(a)?;
        log(
            ctx,
            format!("removed port {} of stale attachment {}/{}", l.cni.port.name, a.container_id, a.ifname),
        );
        if let (Some(PortType::Afpacket), Some(iface)) = (l.cni.port.kind, &l.cni.port.iface) {
            let nl = match &mut nl {
                Some(nl) => nl,
                None => nl.insert(Netlink::open()?),
            };
            nl.del_link(iface)?;
        }
    }
    Ok(())
}
