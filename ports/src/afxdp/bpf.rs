//! The XDP program switchyard attaches to an AF_XDP port's interface: five BPF instructions,
//! built here (no clang, no libbpf), that redirect every frame of RX queue `q` to the socket
//! in slot `q` of an XSKMAP, and pass it to the kernel's stack when the slot is empty.
//!
//! Invariant: the program is attached through a BPF link that this value owns; dropping the
//! value closes the link and so detaches the program (nothing is pinned, so a crashed
//! switchyard leaves no program behind either).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// `union bpf_attr`, as bytes (the kernel's size on 6.x is 144; a larger zeroed tail is fine).
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable bpf_attr of the size passed; every pointer stored in
    // it (instructions, license, key, value) points to memory live for the whole call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the command returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// The program: `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`
fn program(map_fd: RawFd) -> [Insn; 6] {
    [
        // r2 = *(u32 *)(r1 + rx_queue_index)
        insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = the map (a 64-bit immediate over two instructions)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when the slot holds no socket
        insn(0xb7, 3, 0, 0, XDP_PASS),
        // call bpf_redirect_map
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        // exit
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// Failures of setting up the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpProgError {
    #[error("creating the XSKMAP: {0}")]
    Map(io::Error),
    #[error("loading the XDP program: {0}: {1}")]
    Load(io::Error, String),
    #[error("putting the socket of queue {0} into the XSKMAP: {1}")]
    Update(u32, io::Error),
    #[error("attaching the XDP program (native: {0}; generic: {1})")]
    Attach(io::Error, io::Error),
}

/// The XSKMAP, the program and its link on one interface.
pub(super) struct XdpProgram {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: Option<OwnedFd>,
    /// Attached in the driver (native XDP), not the generic skb path.
    pub native: bool,
}

impl XdpProgram {
    /// Creates the map with a slot per queue and loads the program; not attached yet.
    pub(super) fn load(queues: u32) -> Result<XdpProgram, XdpProgError> {
        let mut a = Attr::new();
        a.u32(0, BPF_MAP_TYPE_XSKMAP).u32(4, 4).u32(8, 4).u32(12, queues);
        let map = bpf_fd(BPF_MAP_CREATE, &mut a).map_err(XdpProgError::Map)?;
        let insns = program(map.as_raw_fd());
        let license = b"GPL\0";
        let mut log = vec![0u8; 4096];
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .u32(68, BPF_XDP);
        a.0[48..48 + 10].copy_from_slice(b"switchyard");
        let prog = bpf_fd(BPF_PROG_LOAD, &mut a).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            XdpProgError::Load(e, String::from_utf8_lossy(&log[..end]).trim().to_string())
        })?;
        Ok(XdpProgram { map, _prog: prog, _link: None, native: false })
    }

    /// Puts socket `sock` into slot `queue`.
    pub(super) fn set(&self, queue: u32, sock: RawFd) -> Result<(), XdpProgError> {
        let key = queue;
        let val = sock as u32;
        let mut a = Attr::new();
        a.u32(0, self.map.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &val as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop).map_err(|e| XdpProgError::Update(queue, e))
    }

    /// Attaches the program to interface `ifindex`: in the driver where it has native XDP,
    /// on the generic path otherwise.
    pub(super) fn attach(&mut self, ifindex: u32) -> Result<(), XdpProgError> {
        let link = |flags: u32| {
            let mut a = Attr::new();
            a.u32(0, self._prog.as_raw_fd() as u32).u32(4, ifindex).u32(8, BPF_XDP).u32(12, flags);
            bpf_fd(BPF_LINK_CREATE, &mut a)
        };
        match link(XDP_FLAGS_DRV_MODE) {
            Ok(l) => {
                self._link = Some(l);
                self.native = true;
            }
            Err(native) => {
                let l = link(XDP_FLAGS_SKB_MODE).map_err(|generic| XdpProgError::Attach(native, generic))?;
                self._link = Some(l);
            }
        }
        Ok(())
    }
}
