//! ADD: attach an interface of the pod (veth) or VM (vhost-user) to a bridge of the running
//! switch.
//!
//! Invariant: an ADD that fails leaves nothing behind: every step that created something (the
//! IPAM lease, the veth pair, the daemon's port, the device-info file) is undone, newest first,
//! before the error goes back to the runtime.

use crate::attach::{log, Ctx};
use crate::config::Mode;
use crate::daemon::{Daemon, DaemonError};
use crate::error::{code, CniError};
use crate::ipam;
use crate::link::{disable_ipv6, random_mac, Netlink};
use crate::result::{CniResult, Interface, Route};
use crate::state;
use std::fs::File;
use switchyard_control::cni::CniPort;

/// Refuses early, before anything is created, when the daemon cannot take the port now.
fn ready(d: &Daemon) -> Result<(), CniError> {
    match d.status() {
        Ok(true) => Ok(()),
        Ok(false) => {
            Err(CniError::new(code::TRY_AGAIN, "the switchyard daemon is starting (not ready); try again"))
        }
        Err(e) => Err(e.into()),
    }
}

/// What an ADD has created so far, undone by [`Undo::run`] when a later step fails.
#[derive(Default)]
struct Undo {
    ipam: bool,
    veth: Option<String>,
    port: bool,
    device_info: bool,
}

impl Undo {
    fn run(self, ctx: &Ctx, daemon: &Daemon) {
        if self.device_info {
            if let Some(f) = &ctx.conf.device_info_file {
                if let Err(e) = state::remove(f) {
                    log(ctx, format!("undo: {e}"));
                }
            }
        }
        if self.port {
            if let Err(e) = daemon.del(&ctx.attachment()) {
                log(ctx, format!("undo: removing the port: {e}"));
            }
        }
        if let Some(host) = &self.veth {
            if let Err(e) = Netlink::open().and_then(|mut nl| nl.del_link(host)) {
                log(ctx, format!("undo: deleting {host}: {e}"));
            }
        }
        if self.ipam {
            if let (Some(t), Ok(path)) = (&ctx.conf.ipam, ctx.ipam_path()) {
                if let Err(e) = ipam::exec(t, "DEL", ctx.stdin, path) {
                    log(ctx, format!("undo: releasing the IPAM lease: {e}"));
                }
            }
        }
    }
}

/// `cni_add`. A conversation that broke may have added the port: undo removes it then too,
/// but never after a refusal (an "exists" names someone else's port).
fn add_port(daemon: &Daemon, port: &CniPort, undo: &mut Undo) -> Result<CniPort, CniError> {
    match daemon.add(port) {
        Ok(stored) => {
            undo.port = true;
            Ok(stored)
        }
        Err(e) => {
            undo.port = matches!(e, DaemonError::Io { .. });
            Err(e.into())
        }
    }
}

pub fn add(ctx: &Ctx) -> Result<CniResult, CniError> {
    let daemon = ctx.daemon();
    let mut undo = Undo::default();
    let r = match ctx.conf.mode {
        Mode::Veth => add_veth(ctx, &daemon, &mut undo),
        Mode::Vhostuser => add_vhost(ctx, &daemon, &mut undo),
    };
    if r.is_err() {
        std::mem::take(&mut undo).run(ctx, &daemon);
    }
    r
}

/// The IPAM plugin's result, when the config has one.
fn lease(ctx: &Ctx, undo: &mut Undo) -> Result<CniResult, CniError> {
    match &ctx.conf.ipam {
        None => Ok(CniResult::default()),
        Some(t) => {
            let path = ctx.ipam_path()?;
            // From here on a failed ADD runs the IPAM plugin's DEL, whatever happened: the
            // plugin may hold a lease although its result is unusable (no address, bad JSON),
            // and the spec asks the same after the plugin's own failure.
            undo.ipam = true;
            Ok(ipam::add(t, ctx.stdin, path)?)
        }
    }
}

fn add_veth(ctx: &Ctx, daemon: &Daemon, undo: &mut Undo) -> Result<CniResult, CniError> {
    let conf = ctx.conf;
    let ifname = &ctx.env.ifname;
    let netns = ctx.env.netns.as_deref().unwrap_or_default();
    let ns = File::open(netns)
        .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {netns}: {e}")))?;
    let mut cnl = Netlink::open_in(&ns, netns)?;
    if cnl.link(ifname)?.is_some() {
        return Err(CniError::new(code::EXISTS, format!("interface {ifname} already exists in {netns}")));
    }
    ready(daemon)?;
    let mac = match ctx.requested_mac() {
        Some(m) => m,
        None => random_mac()?,
    };
    let host = ctx.host_ifname();
    let mut hnl = Netlink::open()?;
    let mut res = lease(ctx, undo)?;

    match hnl.add_veth(&host, ifname, &ns, mac, conf.mtu) {
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            return Err(CniError::new(
                code::EXISTS,
                format!(
                    "host interface {host} exists already: attachment {}/{ifname} is being added twice",
                    ctx.env.container_id
                ),
            ))
        }
        r => r?,
    }
    undo.veth = Some(host.clone());
    disable_ipv6(&host);
    let c = cnl
        .link(ifname)?
        .ok_or_else(|| CniError::new(code::LINK, format!("{ifname} vanished from {netns}")))?;
    cnl.set_up(c.index, ifname)?;
    for ip in &res.ips {
        cnl.add_addr(c.index, &ip.address)?;
    }
    for r in &res.routes {
        // A route without `gw` goes through the `gateway` of the result's first address of
        // its family (the spec: "If unset, a value in `gateway` in the `ips` array may be
        // used"), as the Go plugins apply it: host-local's `"routes": [{"dst": "0.0.0.0/0"}]`
        // is a default route through the subnet's gateway, not one that is on-link. A route
        // whose `scope` says link or host has no next hop by definition.
        let gw = r.gw.or_else(|| {
            let scoped = r.scope().is_some_and(|s| s != 0);
            let same_family = |g: &std::net::IpAddr| g.is_ipv4() == r.dst.addr.is_ipv4();
            res.ips.iter().filter_map(|ip| ip.gateway).find(same_family).filter(|_| !scoped)
        });
        cnl.add_route(c.index, &Route { gw, ..r.clone() })?;
    }
    let h = hnl.link(&host)?.ok_or_else(|| CniError::new(code::LINK, format!("{host} vanished")))?;
    hnl.set_up(h.index, &host)?;

    let port = CniPort {
        bridge: conf.bridge.clone(),
        attachment: ctx.attachment(),
        port: ctx.port_config(Some(host.clone()), Some(mac)),
        mac: Some(mac.to_string()),
        owner: None,
        group: None,
        network: Some(conf.name.clone()),
        device: None,
    };
    add_port(daemon, &port, undo)?;

    res.interfaces = vec![
        Interface { name: host, mac: h.mac.map(|m| m.to_string()), ..Interface::default() },
        Interface {
            name: ifname.clone(),
            mac: Some(mac.to_string()),
            mtu: c.mtu,
            sandbox: Some(netns.to_string()),
            socket_path: None,
        },
    ];
    for ip in &mut res.ips {
        ip.interface = Some(1);
    }
    if res.dns.is_empty() {
        res.dns = conf.dns.clone();
    }
    Ok(res)
}

/// Refuses a second ADD of an attachment that is live (a runtime retrying an ADD that
/// succeeded), before anything is leased: vhost-user mode's counterpart of veth mode's check
/// for CNI_IFNAME in the namespace, which the spec asks for and the bridge plugin makes before
/// its IPAM call. Past this point the IPAM plugin would hold the first ADD's lease under the same
/// (container ID, ifname) (host-local refuses the second one), and the undo of the failed ADD
/// would release that live lease. The attachment's lock (lock.rs), held since before this
/// check, keeps an ADD running at the same moment from passing it too.
///
/// The daemon, the authority on its ports, is asked (`cni_list` of the attachment), not its
/// state directory: a config whose `stateDir` is another directory would find no file there
/// and take every repeat for a first ADD. A listed port with a tombstone beside its file is no repeat: a DEL
/// that found the daemon down came first, and `cni_add` applies the tombstone before adding.
fn refuse_live(ctx: &Ctx, daemon: &Daemon) -> Result<(), CniError> {
    let att = ctx.attachment();
    let listed = daemon.list_attachment(&att)?;
    let Some(l) = listed.iter().find(|l| l.cni.attachment.same(&att)) else {
        return Ok(());
    };
    if state::tombstone_path(&ctx.conf.state_dir, &att).exists() {
        return Ok(());
    }
    Err(CniError::new(
        code::EXISTS,
        format!(
            "attachment {}/{} is attached already (port {} on bridge {}): an ADD again without a \
             DEL; the attachment and its IPAM lease are left as they are",
            att.container_id, att.ifname, l.cni.port.name, l.cni.bridge
        ),
    ))
}

fn add_vhost(ctx: &Ctx, daemon: &Daemon, undo: &mut Undo) -> Result<CniResult, CniError> {
    let conf = ctx.conf;
    ready(daemon)?;
    refuse_live(ctx, daemon)?;
    let mac = ctx.requested_mac();
    if mac.is_none() && conf.macspoofchk {
        log(ctx, "no MAC in runtimeConfig.mac: the port gets no MAC spoof filter");
    }
    let mut res = lease(ctx, undo)?;
    let port = CniPort {
        bridge: conf.bridge.clone(),
        attachment: ctx.attachment(),
        port: ctx.port_config(None, mac),
        mac: mac.map(|m| m.to_string()),
        owner: conf.socket_owner,
        group: conf.socket_group,
        network: Some(conf.name.clone()),
        device: conf.device_id.clone(),
    };
    let stored = add_port(daemon, &port, undo)?;
    let socket = stored
        .port
        .socket
        .ok_or_else(|| CniError::new(code::DAEMON, "the daemon's answer has no vhost-user socket path"))?;
    // With a device, the device plugin wrote the device-info at Allocate, with the socket's
    // path as the pod sees it: the host path here would be wrong in the pod, and Multus takes
    // the plugin's when the CNI writes none.
    if let (Some(f), None) = (&conf.device_info_file, &conf.device_id) {
        // The device-info spec names the container application's role: QEMU is the client
        // when the switch listens, the server when the switch connects.
        let qemu_role = match conf.vhost_mode {
            crate::config::VhostMode::Server => "client",
            crate::config::VhostMode::Client => "server",
        };
        undo.device_info = true;
        state::write_device_info(f, qemu_role, &socket)?;
    }
    // The interface is the pod's (its socket is in the pod's device directory, and the guest's
    // NIC in its VM): named with the pod's sandbox, as Multus needs to fill the network-status'
    // `interface`, `mac` and `mtu` (it takes them only from interfaces with a sandbox), and
    // KubeVirt finds a network's status, and so its network-info, by that interface name.
    let sandbox = ctx.env.netns.clone().filter(|n| !n.is_empty());
    res.interfaces = vec![Interface {
        name: ctx.env.ifname.clone(),
        mac: mac.map(|m| m.to_string()),
        mtu: conf.mtu,
        sandbox,
        socket_path: Some(socket),
    }];
    for ip in &mut res.ips {
        ip.interface = Some(0);
    }
    if res.dns.is_empty() {
        res.dns = conf.dns.clone();
    }
    Ok(res)
}
