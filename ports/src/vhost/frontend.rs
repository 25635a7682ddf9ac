//! A small vhost-user frontend that plays the guest (what QEMU and a virtio-net driver do
//! together) over memfd memory: it speaks the protocol, lays out split rings, transmits and
//! receives frames, and gives raw access to every ring field so that tests can misbehave
//! on purpose. Used by the tests and the benchmarks; not part of the switch's data path.
//!
//! Layout of the guest memory (one region, guest physical address 0, frontend virtual
//! address [`UVA_OFFSET`]): vring `i`'s descriptor table at `i * 0x4000`, its available ring
//! 0x1000 and its used ring 0x2000 further; from [`BUF_BASE`] a [`BUF_SIZE`]-byte buffer for
//! every descriptor of every vring.

use super::mem::{Area, GuestMemory, RegionDesc};
use super::proto::{self, feat, pfeat, req, Header, VringAddr, VringState, HDR_SIZE};
use super::sys;
use super::vring::{DESC_F_WRITE, USED_F_NO_NOTIFY};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The frontend's virtual address of guest physical address 0.
pub const UVA_OFFSET: u64 = 0x7f00_0000_0000;
/// Where the buffers start.
pub const BUF_BASE: u64 = 0x10_0000;
/// One buffer per descriptor.
pub const BUF_SIZE: u64 = 2048;
/// Largest queue this frontend lays out.
pub const MAX_NUM: u16 = 256;
const RING_SPACE: u64 = 0x4000;
/// Most vrings (8 queue pairs).
pub const MAX_VRINGS: usize = 16;
/// Guest memory size.
pub const MEM_SIZE: u64 = BUF_BASE + MAX_VRINGS as u64 * MAX_NUM as u64 * BUF_SIZE;

/// One vring as the guest driver sees it.
pub struct FrontendQueue {
    pub num: u16,
    /// Guest physical addresses.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub used_seen: u16,
    free: Vec<u16>,
    avail_area: Area,
    used_area: Area,
    pub call: File,
    pub kick: File,
}

/// The guest side of one vhost-user connection.
pub struct Frontend {
    sock: UnixStream,
    mem: Arc<GuestMemory>,
    memfd: File,
    pub features: u64,
    pub proto: u64,
    pub queues: Vec<Option<FrontendQueue>>,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Frontend {
    /// Connects to a backend listening at `path`, retrying until `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Frontend> {
        let end = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Frontend::new(s),
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// A frontend on a connected socket, with fresh guest memory.
    pub fn new(sock: UnixStream) -> io::Result<Frontend> {
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let memfd = sys::memfd("switchyard-guest", MEM_SIZE)?;
        let fd = OwnedFd::from(memfd.try_clone()?);
        let mem = GuestMemory::map(&[Self::region()], &[fd]).map_err(|e| bad(e.to_string()))?;
        Ok(Frontend {
            sock,
            mem: Arc::new(mem),
            memfd,
            features: 0,
            proto: 0,
            queues: (0..MAX_VRINGS).map(|_| None).collect(),
        })
    }

    /// The one memory region.
    pub fn region() -> RegionDesc {
        RegionDesc { gpa: 0, size: MEM_SIZE, uva: UVA_OFFSET, mmap_offset: 0 }
    }

    /// The guest memory (the frontend's own mapping of it).
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Sends one message.
    pub fn send(&self, request: u32, flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        sys::send_with_fds(&self.sock, &proto::message(request, proto::VERSION | flags, payload), fds)
    }

    /// Reads one reply.
    pub fn recv_reply(&self) -> io::Result<(Header, Vec<u8>)> {
        let mut hb = [0u8; HDR_SIZE];
        (&self.sock).read_exact(&mut hb)?;
        let h = Header::parse(&hb);
        let mut p = vec![0u8; h.size as usize];
        (&self.sock).read_exact(&mut p)?;
        Ok((h, p))
    }

    /// A request that always has a reply (GET_*): returns the payload.
    pub fn get(&self, request: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
        self.send(request, 0, payload, &[])?;
        let (h, p) = self.recv_reply()?;
        if h.request != request || h.flags & proto::FLAG_REPLY == 0 {
            return Err(bad(format!("reply {h:?} to request {request}")));
        }
        Ok(p)
    }

    pub fn get_u64(&self, request: u32) -> io::Result<u64> {
        let p = self.get(request, &[])?;
        if p.len() < 8 {
            return Err(bad("short reply".into()));
        }
        Ok(proto::le64(&p, 0))
    }

    /// A request without its own reply: with REPLY_ACK negotiated, asks for one and returns
    /// its status (0 = done); otherwise returns 0 once sent.
    pub fn request(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
        if self.proto & pfeat::REPLY_ACK == 0 {
            self.send(request, 0, payload, fds)?;
            return Ok(0);
        }
        self.send(request, proto::FLAG_NEED_REPLY, payload, fds)?;
        let (h, p) = self.recv_reply()?;
        if h.request != request || p.len() < 8 {
            return Err(bad(format!("ack {h:?} to request {request}")));
        }
        Ok(proto::le64(&p, 0))
    }

    /// As [`Frontend::request`], failing on a refusal.
    pub fn must(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        match self.request(request, payload, fds)? {
            0 => Ok(()),
            n => Err(bad(format!("request {request} refused ({n})"))),
        }
    }

    /// Negotiates `features` (masked with what the backend offers) and the protocol features
    /// this frontend knows, and sends the memory table. Returns the negotiated features.
    pub fn handshake(&mut self, features: u64) -> io::Result<u64> {
        let offered = self.get_u64(req::GET_FEATURES)?;
        // Never IN_ORDER: this driver recycles its descriptors from a free list, in whatever
        // order they come back, which an in-order driver must not do (and it reads every used
        // entry, where an in-order device may write one per batch).
        self.features = features & offered & !feat::F_IN_ORDER;
        if self.features & feat::USER_F_PROTOCOL_FEATURES != 0 {
            let pf = self.get_u64(req::GET_PROTOCOL_FEATURES)?;
            let want = pf & (pfeat::MQ | pfeat::REPLY_ACK | pfeat::LOG_SHMFD | pfeat::RARP);
            self.send(req::SET_PROTOCOL_FEATURES, 0, &want.to_le_bytes(), &[])?;
            self.proto = want;
        }
        self.must(req::SET_OWNER, &[], &[])?;
        self.must(req::SET_FEATURES, &self.features.to_le_bytes(), &[])?;
        let table = proto::mem_table_bytes(&[Self::region()]);
        self.must(req::SET_MEM_TABLE, &table, &[self.memfd.as_fd()])?;
        Ok(self.features)
    }

    /// Where vring `i`'s parts are (guest physical).
    pub fn ring_addrs(i: usize) -> (u64, u64, u64) {
        let base = i as u64 * RING_SPACE;
        (base, base + 0x1000, base + 0x2000)
    }

    /// Guest physical address of the buffer of descriptor `slot` of vring `i`.
    pub fn buf_addr(i: usize, slot: u16) -> u64 {
        BUF_BASE + (i as u64 * u64::from(MAX_NUM) + u64::from(slot)) * BUF_SIZE
    }

    /// Lays out vring `i` with `num` descriptors and sets it up in the backend (num, base 0,
    /// addresses, call and kick eventfds, enabled).
    pub fn setup_vring(&mut self, i: usize, num: u16) -> io::Result<()> {
        if i >= MAX_VRINGS || num == 0 || num > MAX_NUM || !num.is_power_of_two() {
            return Err(bad(format!("vring {i} of {num}")));
        }
        let (desc, avail, used) = Self::ring_addrs(i);
        self.mem.write(desc, &vec![0u8; RING_SPACE as usize]).map_err(|e| bad(e.to_string()))?;
        let avail_area =
            self.mem.area_gpa(avail, 6 + 2 * u64::from(num), 2).map_err(|e| bad(e.to_string()))?;
        let used_area = self.mem.area_gpa(used, 6 + 8 * u64::from(num), 4).map_err(|e| bad(e.to_string()))?;
        let q = FrontendQueue {
            num,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            free: (0..num).rev().collect(),
            avail_area,
            used_area,
            call: sys::eventfd()?,
            kick: sys::eventfd()?,
        };
        let idx = i as u32;
        self.must(req::SET_VRING_NUM, &VringState { index: idx, num: u32::from(num) }.bytes(), &[])?;
        self.must(req::SET_VRING_BASE, &VringState { index: idx, num: 0 }.bytes(), &[])?;
        let addr = VringAddr {
            index: idx,
            flags: 0,
            desc: desc + UVA_OFFSET,
            used: used + UVA_OFFSET,
            avail: avail + UVA_OFFSET,
            log: used,
        };
        self.must(req::SET_VRING_ADDR, &addr.bytes(), &[])?;
        self.must(req::SET_VRING_CALL, &(i as u64).to_le_bytes(), &[q.call.as_fd()])?;
        self.must(req::SET_VRING_KICK, &(i as u64).to_le_bytes(), &[q.kick.as_fd()])?;
        if self.features & feat::USER_F_PROTOCOL_FEATURES != 0 {
            self.must(req::SET_VRING_ENABLE, &VringState { index: idx, num: 1 }.bytes(), &[])?;
        }
        self.queues[i] = Some(q);
        Ok(())
    }

    /// The whole setup of a virtio-net device with `pairs` queue pairs of `num` descriptors.
    pub fn setup(&mut self, pairs: u16, num: u16, features: u64) -> io::Result<u64> {
        let f = self.handshake(features)?;
        for i in 0..usize::from(pairs) * 2 {
            self.setup_vring(i, num)?;
        }
        // A round trip, so everything above has been handled even without REPLY_ACK.
        self.get_u64(req::GET_FEATURES)?;
        Ok(f)
    }

    fn q(&self, i: usize) -> &FrontendQueue {
        self.queues[i].as_ref().expect("vring set up")
    }

    fn qm(&mut self, i: usize) -> &mut FrontendQueue {
        self.queues[i].as_mut().expect("vring set up")
    }

    /// Writes descriptor `slot` of vring `i` as given (any values: tests misbehave with it).
    pub fn write_desc(&self, i: usize, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        let q = self.q(i);
        let _ = self.mem.write(q.desc + 16 * u64::from(slot % q.num), &b);
    }

    /// Puts `head` in the available ring and publishes it.
    pub fn push_avail(&mut self, i: usize, head: u16) {
        let mem = self.mem.clone();
        let q = self.qm(i);
        let pos = q.avail + 4 + 2 * u64::from(q.avail_idx % q.num);
        let _ = mem.write(pos, &head.to_le_bytes());
        q.avail_idx = q.avail_idx.wrapping_add(1);
        q.avail_area.store_u16(2, q.avail_idx, Ordering::Release);
    }

    /// Sets the available index to anything (a misbehaving guest).
    pub fn set_avail_idx(&mut self, i: usize, idx: u16) {
        let q = self.qm(i);
        q.avail_idx = idx;
        q.avail_area.store_u16(2, idx, Ordering::Release);
    }

    /// Sets the available ring's flags (AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, i: usize, flags: u16) {
        self.q(i).avail_area.store_u16(0, flags, Ordering::Release);
    }

    /// Sets `used_event` (event-idx).
    pub fn set_used_event(&self, i: usize, v: u16) {
        let q = self.q(i);
        q.avail_area.store_u16(4 + 2 * usize::from(q.num), v, Ordering::Release);
    }

    /// The used index the backend published.
    pub fn used_idx(&self, i: usize) -> u16 {
        self.q(i).used_area.load_u16(2, Ordering::Acquire).unwrap_or(0)
    }

    /// Whether the backend asks not to be kicked on vring `i` (it polls): the opposite of
    /// [`Frontend::wants_kick`] for the next entry.
    pub fn backend_polls(&self, i: usize) -> bool {
        let idx = self.q(i).avail_idx;
        !self.wants_kick(i, idx, idx.wrapping_add(1))
    }

    /// The used ring's flags (USED_F_NO_NOTIFY).
    pub fn used_flags(&self, i: usize) -> u16 {
        self.q(i).used_area.load_u16(0, Ordering::Acquire).unwrap_or(0)
    }

    /// `avail_event` (event-idx): the u16 after the used ring's entries.
    pub fn avail_event(&self, i: usize) -> u16 {
        let q = self.q(i);
        q.used_area.load_u16(4 + 8 * usize::from(q.num), Ordering::Acquire).unwrap_or(0)
    }

    /// The driver's rule: whether moving vring `i`'s available index from `old` to `new`
    /// must be followed by a kick (event-idx: `avail_event` in `[old, new)`; otherwise: the
    /// backend did not set USED_F_NO_NOTIFY).
    pub fn wants_kick(&self, i: usize, old: u16, new: u16) -> bool {
        if self.features & feat::RING_F_EVENT_IDX != 0 {
            let ev = self.avail_event(i);
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.used_flags(i) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Kicks vring `i` (signals its kick eventfd), whatever the backend asked.
    pub fn kick(&self, i: usize) {
        sys::eventfd_signal(&self.q(i).kick);
    }

    /// As a virtio driver after publishing entries: a full fence (our index store before our
    /// look at the backend's suppression fields), then a kick if the backend asked for one
    /// for the move of the available index from `old`. Returns whether it kicked.
    pub fn notify(&self, i: usize, old: u16) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        let new = self.q(i).avail_idx;
        let kick = self.wants_kick(i, old, new);
        if kick {
            self.kick(i);
        }
        kick
    }

    /// [`Frontend::transmit`] and then [`Frontend::notify`], as a driver does. `None` when
    /// the frame was not queued, else whether the backend was kicked.
    pub fn transmit_notify(&mut self, pair: u16, frame: &[u8]) -> Option<bool> {
        let i = 2 * usize::from(pair) + 1;
        let old = self.q(i).avail_idx;
        if !self.transmit(pair, frame) {
            return None;
        }
        Some(self.notify(i, old))
    }

    /// Used entries the backend returned since the last look: `(id, len)`.
    pub fn take_used(&mut self, i: usize) -> Vec<(u32, u32)> {
        let end = self.used_idx(i);
        let q = self.qm(i);
        let mut v = Vec::new();
        while q.used_seen != end {
            let off = 4 + 8 * usize::from(q.used_seen % q.num);
            let id = q.used_area.load_u32(off, Ordering::Relaxed).unwrap_or(0);
            let len = q.used_area.load_u32(off + 4, Ordering::Relaxed).unwrap_or(0);
            v.push((id, len));
            q.used_seen = q.used_seen.wrapping_add(1);
        }
        v
    }

    fn header_len(&self) -> usize {
        if self.features & (feat::F_VERSION_1 | feat::NET_F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    /// Takes back the TX descriptors the backend consumed on vring `i`.
    pub fn reclaim(&mut self, i: usize) -> usize {
        let used = self.take_used(i);
        let q = self.qm(i);
        for (id, _) in &used {
            if (*id as u16) < q.num && !q.free.contains(&(*id as u16)) {
                q.free.push(*id as u16);
            }
        }
        used.len()
    }

    /// Transmits `frame` on queue pair `pair` (vring `2 * pair + 1`), one descriptor holding
    /// the header and the frame. False when the ring is full or the frame does not fit.
    pub fn transmit(&mut self, pair: u16, frame: &[u8]) -> bool {
        let i = 2 * usize::from(pair) + 1;
        let hl = self.header_len();
        if hl + frame.len() > BUF_SIZE as usize {
            return false;
        }
        if self.q(i).free.is_empty() {
            self.reclaim(i);
        }
        let Some(slot) = self.qm(i).free.pop() else { return false };
        let addr = Self::buf_addr(i, slot);
        let mut b = vec![0u8; hl];
        b.extend_from_slice(frame);
        let _ = self.mem.write(addr, &b);
        self.write_desc(i, slot, addr, b.len() as u32, 0, 0);
        self.push_avail(i, slot);
        true
    }

    /// Posts up to `count` RX buffers of `len` bytes (at most [`BUF_SIZE`]) on queue pair
    /// `pair` (vring `2 * pair`). Returns how many were posted.
    pub fn post_rx(&mut self, pair: u16, count: usize, len: u32) -> usize {
        let i = 2 * usize::from(pair);
        let len = len.min(BUF_SIZE as u32);
        let mut n = 0;
        while n < count {
            let Some(slot) = self.qm(i).free.pop() else { break };
            self.write_desc(i, slot, Self::buf_addr(i, slot), len, DESC_F_WRITE, 0);
            self.push_avail(i, slot);
            n += 1;
        }
        n
    }

    /// Frames the backend delivered on queue pair `pair`, reassembled from mergeable buffers
    /// (header removed). The buffers go back to the free list.
    pub fn receive(&mut self, pair: u16) -> Vec<Vec<u8>> {
        let i = 2 * usize::from(pair);
        let hl = self.header_len();
        let mrg = self.features & feat::NET_F_MRG_RXBUF != 0;
        let used = self.take_used(i);
        let mut frames = Vec::new();
        let mut k = 0;
        while k < used.len() {
            let (id, len) = used[k];
            let first = self.read_buf(i, id, len);
            let nb = if mrg && first.len() >= 12 {
                usize::from(u16::from_le_bytes([first[10], first[11]]))
            } else {
                1
            };
            let mut f = first.get(hl..).map(<[u8]>::to_vec).unwrap_or_default();
            for &(id2, len2) in used.iter().skip(k + 1).take(nb.saturating_sub(1)) {
                f.extend_from_slice(&self.read_buf(i, id2, len2));
            }
            frames.push(f);
            k += nb.max(1);
        }
        let q = self.qm(i);
        for (id, _) in used {
            let id = id as u16;
            if id < q.num && !q.free.contains(&id) {
                q.free.push(id);
            }
        }
        frames
    }

    fn read_buf(&self, i: usize, id: u32, len: u32) -> Vec<u8> {
        let len = len.min(BUF_SIZE as u32) as usize;
        let mut v = vec![0u8; len];
        let _ = self.mem.read(Self::buf_addr(i, id as u16), &mut v);
        v
    }

    /// Free descriptors of vring `i` (taken by tests that build their own chains).
    pub fn take_free(&mut self, i: usize) -> Option<u16> {
        self.qm(i).free.pop()
    }

    /// How many times the backend called (interrupted) vring `i` since the last look.
    pub fn calls(&self, i: usize) -> u64 {
        sys::eventfd_take(&self.q(i).call)
    }

    /// Asks the backend to announce `mac` (VHOST_USER_SEND_RARP).
    pub fn send_rarp(&self, mac: [u8; 6]) -> io::Result<()> {
        let mut p = [0u8; 8];
        p[..6].copy_from_slice(&mac);
        self.must(req::SEND_RARP, &p, &[])
    }

    /// Stops vring `i` and returns the backend's position.
    pub fn get_vring_base(&mut self, i: usize) -> io::Result<u16> {
        let p = self.get(req::GET_VRING_BASE, &VringState { index: i as u32, num: 0 }.bytes())?;
        VringState::parse(&p).map(|s| s.num as u16).ok_or_else(|| bad("short reply".into()))
    }
}
