//! CHECK: the attachment is still as ADD made it.
//!
//! Invariant: CHECK changes nothing; it fails (error 104, naming what differs) unless the
//! daemon has the attachment's port on the config's bridge with the config's VLAN settings,
//! MAC and spoof filter, and the interface in the container (veth) or the socket (vhost-user)
//! is what the previous result says.

use crate::attach::{describe_vlans, same_vlans, Ctx};
use crate::config::Mode;
use crate::error::{code, CniError};
use crate::ipam;
use crate::link::Netlink;
use crate::result::CniResult;
use std::fs::File;
use switchyard_dataplane::config::PortType;
use switchyard_dataplane::wire::MacAddr;

fn differs(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

/// The MAC of the attachment's interface in the previous result.
fn prev_mac(ctx: &Ctx, prev: &CniResult) -> Option<MacAddr> {
    // veth: the container's end (the host's has no sandbox and may share no name). vhost-user:
    // its one interface, with the pod's sandbox, or none in results of older plugins.
    let veth = ctx.conf.mode == Mode::Veth;
    prev.interfaces
        .iter()
        .find(|i| i.name == ctx.env.ifname && (!veth || i.sandbox.is_some()))
        .and_then(|i| i.mac.as_deref())
        .and_then(|m| m.parse().ok())
}

pub fn check(ctx: &Ctx) -> Result<(), CniError> {
    let conf = ctx.conf;
    if !conf.version.has_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {}", conf.version.as_str()),
        ));
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "prevResult: missing (CHECK needs the ADD's result)")
    })?;
    if let Some(t) = &conf.ipam {
        ipam::exec(t, "CHECK", ctx.stdin, ctx.ipam_path()?)?;
    }
    let (cid, ifname) = (&ctx.env.container_id, &ctx.env.ifname);
    let listed = ctx.daemon().list_attachment(&ctx.attachment())?;
    let got = listed
        .iter()
        .find(|l| l.cni.attachment.container_id == *cid && l.cni.attachment.ifname == *ifname)
        .ok_or_else(|| differs(format!("the switchyard daemon has no port for attachment {cid}/{ifname}")))?;
    let mac = prev_mac(ctx, prev).or(ctx.requested_mac());
    let want = ctx.port_config(None, mac);
    let port = &got.cni.port;
    if got.cni.bridge != conf.bridge {
        return Err(differs(format!(
            "port {} is on bridge {}, the config says {}",
            port.name, got.cni.bridge, conf.bridge
        )));
    }
    if port.kind != want.kind {
        // The names of the daemon's port schema (`afpacket`, `afxdp`, `vhostuser`), which are
        // also `vethPort`'s values.
        let name = |k: Option<PortType>| {
            k.and_then(|k| serde_json::to_value(k).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "none".into())
        };
        return Err(differs(format!(
            "port {} has type {}, the config says {} ({})",
            port.name,
            name(port.kind),
            name(want.kind),
            match conf.mode {
                Mode::Veth => "vethPort",
                Mode::Vhostuser => "mode",
            }
        )));
    }
    if !same_vlans(port, &want) {
        return Err(differs(format!(
            "port {} is {}, the config says {}",
            port.name,
            describe_vlans(port),
            describe_vlans(&want)
        )));
    }
    let stored_mac: Option<MacAddr> = got.cni.mac.as_deref().and_then(|m| m.parse().ok());
    if mac.is_some() && stored_mac != mac {
        return Err(differs(format!(
            "port {} has MAC {:?}, the previous result says {:?}",
            port.name, stored_mac, mac
        )));
    }
    let filter = port.allowed_macs.clone().unwrap_or_default();
    if filter != want.allowed_macs.clone().unwrap_or_default() {
        return Err(differs(format!(
            "port {} allows source MACs {filter:?}, macspoofchk {} wants {:?}",
            port.name, conf.macspoofchk, want.allowed_macs
        )));
    }
    match conf.mode {
        Mode::Veth => check_veth(ctx, prev, port.iface.as_deref(), mac),
        Mode::Vhostuser => {
            let want_sock = prev.interfaces.iter().find_map(|i| i.socket_path.as_deref());
            match (&port.socket, want_sock) {
                (Some(s), Some(w)) if s != w => {
                    Err(differs(format!("port {} has socket {s}, the previous result says {w}", port.name)))
                }
                (None, _) => Err(differs(format!("port {} has no socket", port.name))),
                _ => Ok(()),
            }
        }
    }
}

fn check_veth(
    ctx: &Ctx,
    prev: &CniResult,
    iface: Option<&str>,
    mac: Option<MacAddr>,
) -> Result<(), CniError> {
    let host = ctx.host_ifname();
    if iface != Some(host.as_str()) {
        return Err(differs(format!("the port's interface is {iface:?}, not {host}")));
    }
    let h = Netlink::open()?.link(&host)?.ok_or_else(|| differs(format!("host interface {host} is gone")))?;
    if !h.is_veth || !h.up {
        return Err(differs(format!("host interface {host} is not an up veth")));
    }
    let netns = ctx.env.netns.as_deref().unwrap_or_default();
    let ns = File::open(netns)
        .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {netns}: {e}")))?;
    let mut cnl = Netlink::open_in(&ns, netns)?;
    let ifname = &ctx.env.ifname;
    let c = cnl.link(ifname)?.ok_or_else(|| differs(format!("{ifname} is gone from {netns}")))?;
    if mac.is_some() && c.mac != mac {
        return Err(differs(format!("{ifname} has MAC {:?}, the previous result says {:?}", c.mac, mac)));
    }
    let have = cnl.addrs(c.index)?;
    for ip in &prev.ips {
        if !have.contains(&ip.address) {
            return Err(differs(format!("{ifname} lacks the address {}", ip.address)));
        }
    }
    Ok(())
}
