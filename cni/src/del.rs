//! DEL: detach, idempotently.
//!
//! Invariant: DEL succeeds when everything of the attachment is gone, whatever was gone
//! before; with the daemon down it still removes what is local (the veth, the IPAM lease, the
//! device-info file) and leaves a tombstone in the daemon's state directory, which the daemon
//! applies (removing the port) when it starts.

use crate::attach::{log, Ctx};
use crate::config::Mode;
use crate::daemon::DaemonError;
use crate::error::CniError;
use crate::ipam;
use crate::link::Netlink;
use crate::state;

pub fn del(ctx: &Ctx) -> Result<(), CniError> {
    let att = ctx.attachment();
    match ctx.daemon().del(&att) {
        Ok(_) => {}
        Err(e @ DaemonError::Unreachable { .. }) => {
            let p = state::write_tombstone(&ctx.conf.state_dir, &att)?;
            log(ctx, format!("{e}: left the tombstone {}", p.display()));
        }
        Err(e) => return Err(e.into()),
    }
    if ctx.conf.mode == Mode::Veth {
        Netlink::open()?.del_link(&ctx.host_ifname())?;
    }
    if let Some(t) = &ctx.conf.ipam {
        ipam::exec(t, "DEL", ctx.stdin, ctx.ipam_path()?)?;
    }
    if let Some(f) = &ctx.conf.device_info_file {
        state::remove(f)?;
    }
    Ok(())
}
