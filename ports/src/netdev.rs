//! Network-device helpers the AF_PACKET, AF_XDP and TAP ports share: `struct ifreq`, the
//! interface ioctls on it, the link state of an interface by index, the mark of an interface
//! that is gone, and the port errors they build.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use switchyard_dataplane::port::PortError;

/// `struct ifreq`: the name and 24 bytes of union (flags, index, MTU are at its start).
#[repr(C)]
pub(crate) struct IfReq {
    pub(crate) name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    pub(crate) fn new(name: &str) -> Option<IfReq> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) || b.contains(&b'/') {
            return None;
        }
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        for (d, s) in r.name.iter_mut().zip(b) {
            *d = *s as libc::c_char;
        }
        Some(r)
    }

    pub(crate) fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub(crate) fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    pub(crate) fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    pub(crate) fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
}

/// The current `errno`.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Whether an errno says the interface is gone or down for good or for now.
pub(crate) fn is_link_error(e: i32) -> bool {
    matches!(e, libc::ENXIO | libc::ENODEV | libc::ENETDOWN | libc::EBADFD | libc::EIO)
}

/// An ioctl on an `ifreq`.
pub(crate) fn ifr_ioctl(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> std::io::Result<()> {
    // SAFETY: `ifr` is a valid, writable ifreq of the kernel's size (16 + 24 bytes) for the
    // whole call; the interface ioctls used here read and write only within it.
    let rc = unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The name the interface with index `ifindex` has now, written into `ifr`; `false` when no
/// interface has that index any more.
pub(crate) fn ifr_by_index(ifindex: i32, ifr: &mut IfReq) -> bool {
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: if_indextoname writes at most IFNAMSIZ bytes (NUL included) into `name`.
    let p = unsafe { libc::if_indextoname(ifindex as libc::c_uint, name.as_mut_ptr()) };
    if p.is_null() {
        return false;
    }
    ifr.name = name;
    ifr.data = [0; 24];
    true
}

/// `(up and running, mtu)` of the interface with index `ifindex`; `None` when it is gone.
pub(crate) fn link_state(ctl: RawFd, ifindex: i32) -> Option<(bool, u32)> {
    let mut ifr = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
    if !ifr_by_index(ifindex, &mut ifr) {
        return None;
    }
    ifr_ioctl(ctl, libc::SIOCGIFFLAGS, &mut ifr).ok()?;
    let flags = ifr.short() as i32;
    let up = flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0;
    ifr.data = [0; 24];
    let mtu = match ifr_ioctl(ctl, libc::SIOCGIFMTU, &mut ifr) {
        Ok(()) => ifr.int().max(0) as u32,
        Err(_) => 0,
    };
    Some((up, mtu))
}

/// Whether the interface under a port is gone (deleted): set once, for good, and logged once.
#[derive(Debug, Default)]
pub(crate) struct Gone(AtomicBool);

impl Gone {
    #[inline]
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Marks the interface gone; the first time, logs it with the port's and interface's names.
    #[cold]
    pub(crate) fn mark(&self, port: &str, iface: &str) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::warn!(port, iface, "interface is gone; port down");
        }
    }

    /// The interface's state as [`link_state`] reads it (up, MTU), `None` once it is gone (and
    /// marked so here when the kernel no longer knows its index).
    pub(crate) fn link_state(
        &self,
        ctl: RawFd,
        ifindex: i32,
        port: &str,
        iface: &str,
    ) -> Option<(bool, u32)> {
        if self.get() {
            return None;
        }
        let state = link_state(ctl, ifindex);
        if state.is_none() {
            self.mark(port, iface);
        }
        state
    }
}

/// A port error that says what went wrong in words.
pub(crate) fn backend(port: &str, msg: impl Into<String>) -> PortError {
    PortError::Backend { port: port.to_string(), msg: msg.into() }
}

/// A port error from a failed system call, `what` saying which.
pub(crate) fn io(port: &str, what: &str, e: std::io::Error) -> PortError {
    PortError::Io { port: port.to_string(), source: std::io::Error::new(e.kind(), format!("{what}: {e}")) }
}

/// `setsockopt(2)` with the value `val`.
pub(crate) fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: &T) -> std::io::Result<()> {
    // SAFETY: `val` points to a live, initialised T and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
