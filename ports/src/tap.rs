//! TAP port: a kernel TAP interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`) created or
//! attached to by name. The switch reads the frames the kernel sends out of the interface and
//! writes frames the kernel receives on it, one system call per frame, on a non-blocking fd.
//!
//! Frames longer than a buffer's data room are counted `oversize`; a deleted interface (the fd
//! then answers `EBADFD`) or one that is down marks the port down: TX counts `port_down`, RX
//! returns nothing, nothing panics. Without `persist`, the interface goes away with the port.

use crate::netdev::{backend, errno, ifr_ioctl, io, is_link_error, Gone, IfReq};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use switchyard_dataplane::buffer::{PacketBuf, PoolCache};
use switchyard_dataplane::port::{
    Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue,
};
use switchyard_dataplane::switch::DropReason;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
use switchyard_dataplane::wire::ETH_HEADER_LEN;

/// Options of a TAP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Set the interface administratively up after opening it. Default true.
    pub bring_up: bool,
    /// Keep the interface when the port closes (`TUNSETPERSIST`). Default false: an interface
    /// this port created goes away with it.
    pub persist: bool,
    /// Set this MTU on the interface. Default: leave it.
    pub mtu: Option<u32>,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions { bring_up: true, persist: false, mtu: None }
    }
}

struct Shared {
    name: String,
    ifname: String,
    ifindex: i32,
    fd: OwnedFd,
    /// For interface ioctls.
    ctl: OwnedFd,
    /// The interface is gone (deleted): permanent.
    gone: Gone,
    rx_claims: RxClaims,
}

/// A TAP port. Cheap to clone; every clone uses the same fd.
#[derive(Clone)]
pub struct TapPort {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TapPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapPort")
            .field("name", &self.shared.name)
            .field("ifname", &self.shared.ifname)
            .field("ifindex", &self.shared.ifindex)
            .finish()
    }
}

impl TapPort {
    /// Opens port `name` on TAP interface `ifname`, creating the interface when it does not
    /// exist (needs CAP_NET_ADMIN) or attaching to it when it does.
    pub fn open(name: &str, ifname: &str, opts: TapOptions) -> Result<TapPort, PortError> {
        let mut ifr =
            IfReq::new(ifname).ok_or_else(|| backend(name, format!("bad interface name {ifname:?}")))?;
        // SAFETY: open(2) of a constant NUL-terminated path.
        let raw = unsafe {
            libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)
        };
        if raw < 0 {
            return Err(io(name, "/dev/net/tun", std::io::Error::last_os_error()));
        }
        // SAFETY: raw was just returned by open(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        ifr.set_short((libc::IFF_TAP | libc::IFF_NO_PI) as i16);
        ifr_ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr)
            .map_err(|e| io(name, &format!("TUNSETIFF {ifname}"), e))?;
        let len = ifr.name.iter().position(|c| *c == 0).unwrap_or(ifr.name.len());
        let real: String = ifr.name[..len].iter().map(|c| *c as u8 as char).collect();
        if opts.persist {
            // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) };
            if rc < 0 {
                return Err(io(name, "TUNSETPERSIST", std::io::Error::last_os_error()));
            }
        }
        // SAFETY: plain socket(2) call; no pointers.
        let craw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if craw < 0 {
            return Err(io(name, "control socket", std::io::Error::last_os_error()));
        }
        // SAFETY: craw was just returned by socket(2) and is owned by nobody else.
        let ctl = unsafe { OwnedFd::from_raw_fd(craw) };
        let mut q = IfReq::new(&real).ok_or_else(|| backend(name, "bad interface name from the kernel"))?;
        ifr_ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX, &mut q)
            .map_err(|e| io(name, &format!("interface {real}"), e))?;
        let ifindex = q.int();
        if let Some(mtu) = opts.mtu {
            let mut q = IfReq::new(&real).ok_or_else(|| backend(name, "bad interface name"))?;
            q.set_int(mtu as i32);
            ifr_ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &mut q)
                .map_err(|e| io(name, &format!("set MTU {mtu} on {real}"), e))?;
        }
        if opts.bring_up {
            let mut q = IfReq::new(&real).ok_or_else(|| backend(name, "bad interface name"))?;
            ifr_ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut q)
                .map_err(|e| io(name, &format!("flags of {real}"), e))?;
            let flags = q.short() | libc::IFF_UP as i16;
            q.set_short(flags);
            ifr_ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut q)
                .map_err(|e| io(name, &format!("bring {real} up"), e))?;
        }
        tracing::debug!(port = name, iface = %real, ifindex, "TAP port open");
        Ok(TapPort {
            shared: Arc::new(Shared {
                name: name.to_string(),
                ifname: real,
                ifindex,
                fd,
                ctl,
                gone: Gone::default(),
                rx_claims: RxClaims::new(name, 1),
            }),
        })
    }

    /// Opens with default options (create or attach, bring up, not persistent).
    pub fn open_default(name: &str, ifname: &str) -> Result<TapPort, PortError> {
        Self::open(name, ifname, TapOptions::default())
    }

    /// The interface's name (as the kernel gave it, when `ifname` was a pattern like `tap%d`).
    pub fn ifname(&self) -> &str {
        &self.shared.ifname
    }

    pub fn ifindex(&self) -> i32 {
        self.shared.ifindex
    }
}

impl PortBackend for TapPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.shared.rx_claims.claim(q)?;
        Ok(Box::new(TapRx { shared: self.shared.clone() }))
    }

    fn open_tx(&self, _q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        Ok(Box::new(TapTx { shared: self.shared.clone() }))
    }

    fn link_up(&self) -> bool {
        let s = &self.shared;
        s.gone.link_state(s.ctl.as_raw_fd(), s.ifindex, &s.name, &s.ifname).is_some_and(|(up, _)| up)
    }
}

struct TapRx {
    shared: Arc<Shared>,
}

impl Drop for TapRx {
    fn drop(&mut self) {
        self.shared.rx_claims.release(0);
    }
}

impl RxQueue for TapRx {
    /// A kernel socket: readiness wakes the worker at no cost to the sender.
    fn spin_when_idle(&self) -> bool {
        false
    }

    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.shared.fd.as_fd())
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        if self.shared.gone.get() {
            return 0;
        }
        let room = max.min(out.remaining_capacity());
        let mut n = 0;
        let mut spare: Option<PacketBuf> = None;
        while n < room {
            let mut buf = match spare.take() {
                Some(b) => b,
                // Pool empty: leave the frames in the kernel's queue (it counts what it drops).
                None => match cache.alloc() {
                    Some(b) => b,
                    None => break,
                },
            };
            let tail = buf.tail_mut();
            let cap = tail.len();
            // The kernel cuts a frame longer than what it is given to the room there is and
            // returns the length it copied: one byte more room than a buffer holds tells an
            // oversize frame from one that just fits.
            let mut extra = [0u8; 1];
            let iov = [
                libc::iovec { iov_base: tail.as_mut_ptr() as *mut libc::c_void, iov_len: cap },
                libc::iovec { iov_base: extra.as_mut_ptr() as *mut libc::c_void, iov_len: 1 },
            ];
            // SAFETY: readv(2) writes at most `cap` bytes into the buffer's tail (memory this
            // PacketBuf owns exclusively) and at most 1 byte into `extra`; both outlive the call.
            let rc = unsafe { libc::readv(self.shared.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if rc <= 0 {
                cache.free(buf);
                if rc < 0 {
                    match errno() {
                        libc::EAGAIN | libc::EINTR => {}
                        libc::EBADFD | libc::ENODEV | libc::ENXIO => {
                            self.shared.gone.mark(&self.shared.name, &self.shared.ifname)
                        }
                        e => tracing::debug!(port = %self.shared.name, errno = e, "TAP read error"),
                    }
                }
                break;
            }
            let len = rc as usize;
            if len > cap {
                drops.add(DropReason::Oversize, 1);
                spare = Some(buf);
                continue;
            }
            // Cannot fail: len <= the tail's length.
            let _ = buf.set_len(len);
            out.push(buf);
            n += 1;
        }
        if let Some(b) = spare {
            cache.free(b);
        }
        n
    }
}

struct TapTx {
    shared: Arc<Shared>,
}

impl TxQueue for TapTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        let mut sent = 0;
        let mut down = self.shared.gone.get();
        for b in pkts.drain(..) {
            if down {
                drops.add(DropReason::PortDown, 1);
                cache.free(b);
                continue;
            }
            if b.len() < ETH_HEADER_LEN {
                drops.add(DropReason::Runt, 1);
                cache.free(b);
                continue;
            }
            let d = b.data();
            // SAFETY: write(2) reads `d.len()` bytes from the buffer's frame, which lives for
            // the call.
            let rc = unsafe {
                libc::write(self.shared.fd.as_raw_fd(), d.as_ptr() as *const libc::c_void, d.len())
            };
            if rc >= 0 {
                sent += 1;
            } else {
                match errno() {
                    libc::EAGAIN | libc::ENOBUFS | libc::EINTR => drops.add(DropReason::TxFull, 1),
                    libc::EINVAL | libc::EMSGSIZE => drops.add(DropReason::Oversize, 1),
                    e => {
                        if matches!(e, libc::EBADFD | libc::ENODEV | libc::ENXIO) {
                            self.shared.gone.mark(&self.shared.name, &self.shared.ifname);
                        } else if !is_link_error(e) {
                            tracing::debug!(port = %self.shared.name, errno = e, "TAP write error");
                        }
                        // Down (or failing): the rest of the burst goes the same way.
                        down = true;
                        drops.add(DropReason::PortDown, 1);
                    }
                }
            }
            cache.free(b);
        }
        sent
    }
}
