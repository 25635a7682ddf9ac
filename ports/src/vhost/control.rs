//! The control thread of a vhost-user port: owns the socket (listening or connecting), reads
//! the frontend's messages one at a time, and sets up the rings that the workers poll.
//!
//! A session ends when the socket closes, a read times out mid-message, a message is
//! malformed, or a request whose reply the frontend waits for whatever it asked
//! ([`req::awaits_reply`]: GET_VRING_BASE, SET_LOG_BASE under LOG_SHMFD, ...) has to be
//! refused: a frontend waiting for a reply that never comes would hang (QEMU with its global
//! lock held), one that finds the connection closed fails the operation. Then every ring is
//! stopped (the workers see `None` on their next burst), the guest's memory is unmapped once
//! the last ring lets go of it, and the link goes down. A server port then waits for the next
//! connection; a client port reconnects, backing off while nothing negotiates (see `run`).
//!
//! Invariants: a ring runs only with its size, addresses, a kick and a call (each an fd or
//! "no fd") set since it last stopped, the memory table, and (with protocol features) enabled;
//! a ring's configuration changing while it runs swaps a new ring in under the ring's lock
//! (a worker sees the old ring or the new one, and the new one finishes the old one's
//! super-frame in flight); rings and guest memory are dropped, and so unmapped, outside every
//! ring's lock.

use super::mem::{DirtyLog, GuestMemory};
use super::proto::{self, feat, pfeat, req, Header, VringAddr, VringState, HDR_SIZE};
use super::vring::{RingConfig, RxGso, Vring, MAX_QUEUE_SIZE};
use super::{sys, Mode, Shared};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the thread looks at the stop flag while waiting.
const POLL_MS: i32 = 50;
/// A message must arrive whole within this time once it started.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Client mode: the longest pause between connection attempts (see `run`).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Client mode: what an attempt came to when the session ended before features were agreed.
const UNNEGOTIATED: &str = "session ended before negotiating";

pub(super) fn run(sh: Arc<Shared>, listener: Option<UnixListener>) {
    match sh.opts.mode {
        Mode::Server => {
            let Some(l) = listener else { return };
            while !sh.stop.load(Ordering::Acquire) {
                match sys::poll_readable(l.as_fd(), POLL_MS) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(port = %sh.name, error = %e, "vhost: poll on listening socket");
                        std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                        continue;
                    }
                }
                match l.accept() {
                    Ok((s, _)) => {
                        serve(&sh, s, true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => tracing::warn!(port = %sh.name, error = %e, "vhost: accept"),
                }
            }
            sh.remove_own_socket();
        }
        Mode::Client => {
            // The pause before the next attempt: `reconnect_interval` after a failed connect
            // (cheap, and KubeVirt's QEMU may listen seconds after the port exists: a longer
            // pause would delay the VM's start) and after a session that negotiated; doubled
            // after each session that ended before the frontend agreed features, up to
            // MAX_BACKOFF, so that a frontend that accepts and hangs up at once costs a
            // connection every few seconds, not a busy loop.
            let first = sh.opts.reconnect_interval;
            let mut pause = first;
            // What the last attempt came to, logged only when it changes: a failure repeated
            // every turn is logged once.
            let mut last: Option<String> = None;
            while !sh.stop.load(Ordering::Acquire) {
                let (state, wait) = match UnixStream::connect(&sh.path) {
                    Ok(s) => {
                        let quiet = last.as_deref() == Some(UNNEGOTIATED);
                        if serve(&sh, s, !quiet) {
                            pause = first;
                            last = None;
                            sleep_unless_stopped(&sh, first);
                            continue;
                        }
                        let wait = pause;
                        pause = (pause * 2).min(MAX_BACKOFF.max(first));
                        (UNNEGOTIATED.to_string(), wait)
                    }
                    Err(e) => {
                        let state = format!("cannot connect: {e}");
                        if last.as_ref() != Some(&state) {
                            tracing::info!(port = %sh.name, path = %sh.path.display(), error = %e,
                                "vhost: cannot connect yet; retrying");
                        }
                        (state, first)
                    }
                };
                last = Some(state);
                sleep_unless_stopped(&sh, wait);
            }
        }
    }
}

fn sleep_unless_stopped(sh: &Shared, d: Duration) {
    let step = Duration::from_millis(POLL_MS as u64);
    let mut left = d;
    while !left.is_zero() && !sh.stop.load(Ordering::Acquire) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// Serves one connection until the session ends. Returns whether the frontend agreed features
/// (SET_FEATURES). `log`: the connection and its end are logged at `info` (a client port
/// that keeps reaching a frontend that hangs up logs them at `debug` after the first time).
fn serve(sh: &Arc<Shared>, stream: UnixStream, log: bool) -> bool {
    if let Err(e) = stream.set_nonblocking(false).and_then(|_| stream.set_read_timeout(Some(READ_TIMEOUT))) {
        tracing::warn!(port = %sh.name, error = %e, "vhost: socket setup");
        return false;
    }
    sh.sessions.fetch_add(1, Ordering::AcqRel);
    sh.connected.store(true, Ordering::Release);
    if log {
        tracing::info!(port = %sh.name, "vhost: frontend connected");
    } else {
        tracing::debug!(port = %sh.name, "vhost: frontend connected");
    }
    let mut s = Session::new(sh.clone());
    let why = loop {
        if sh.stop.load(Ordering::Acquire) {
            break "port closed".to_string();
        }
        match sys::poll_readable(stream.as_fd(), POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => break format!("poll: {e}"),
        }
        let mut fds = Vec::new();
        match read_message(&stream, &mut fds) {
            Ok(None) => break "frontend closed the connection".to_string(),
            Ok(Some((hdr, payload))) => {
                let mut send =
                    |m: &[u8]| sys::send_with_fds(&stream, m, &[]).map_err(|e| format!("write: {e}"));
                if let Err(e) = s.dispatch(&mut send, hdr, &payload, fds) {
                    break e;
                }
            }
            Err(e) => break format!("read: {e}"),
        }
    };
    s.teardown();
    sh.connected.store(false, Ordering::Release);
    if log || s.negotiated {
        tracing::info!(port = %sh.name, reason = %why, "vhost: frontend gone; port down");
    } else {
        tracing::debug!(port = %sh.name, reason = %why, "vhost: frontend gone; port down");
    }
    s.negotiated
}

/// Reads one message. `None` at end of stream.
fn read_message(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> io::Result<Option<(Header, Vec<u8>)>> {
    let mut hb = [0u8; HDR_SIZE];
    let n = sys::recv_with_fds(stream, &mut hb, fds)?;
    if n == 0 {
        return Ok(None);
    }
    if n < HDR_SIZE {
        (&*stream).read_exact(&mut hb[n..])?;
    }
    let hdr = Header::parse(&hb);
    let size = payload_size(&hdr).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut payload = vec![0u8; size];
    (&*stream).read_exact(&mut payload)?;
    Ok(Some((hdr, payload)))
}

/// The size of the payload that follows `hdr`, or why the message is malformed (which ends the
/// session: nothing after it can be framed).
fn payload_size(hdr: &Header) -> Result<usize, String> {
    if hdr.flags & 0x3 != proto::VERSION {
        return Err(format!("bad version in flags {:#x}", hdr.flags));
    }
    let size = hdr.size as usize;
    if size > proto::MAX_PAYLOAD {
        return Err(format!("payload of {size} bytes"));
    }
    Ok(size)
}

/// Where a session's replies go: the socket, or (for [`Loopback`]) a list.
type Send<'a> = dyn FnMut(&[u8]) -> Result<(), String> + 'a;

fn send_reply(send: &mut Send<'_>, request: u32, payload: &[u8]) -> Result<(), String> {
    send(&proto::message(request, proto::VERSION | proto::FLAG_REPLY, payload))
}

#[derive(Default)]
struct VringCfg {
    num: u16,
    addr: Option<VringAddr>,
    base: u16,
    /// A kick fd (or "no fd") arrived since the ring was last stopped.
    kicked: bool,
    /// The kick eventfd itself (non-blocking), when the frontend sent one: the ring's worker
    /// sleeps on it when idle.
    kick: Option<Arc<File>>,
    /// A call fd (or "no fd": the frontend polls the used ring) arrived since the ring was
    /// last stopped. As DPDK does, a ring waits for it: after a device reset the old fd may
    /// belong to an interrupt the frontend has torn down.
    called: bool,
    call: Option<Arc<File>>,
    enabled: Option<bool>,
}

enum Outcome {
    /// Handled; no reply of its own (REPLY_ACK may send one).
    Ok,
    /// Handled with this reply payload.
    Reply(Vec<u8>),
    /// Refused; the session goes on (a REPLY_ACK says so when asked).
    Nack(String),
}

struct Session {
    sh: Arc<Shared>,
    /// The frontend sent SET_FEATURES (a client port's backoff starts over).
    negotiated: bool,
    features: u64,
    proto: u64,
    mem: Option<Arc<GuestMemory>>,
    log: Option<Arc<DirtyLog>>,
    vrings: Vec<VringCfg>,
}

impl Session {
    fn new(sh: Arc<Shared>) -> Session {
        let n = sh.vqs.len();
        Session {
            sh,
            negotiated: false,
            features: 0,
            proto: 0,
            mem: None,
            log: None,
            vrings: (0..n).map(|_| VringCfg::default()).collect(),
        }
    }

    /// Handles one message and sends its reply, if any. `Ok(true)`: refused (the session goes
    /// on); `Err`: malformed, or refused when the frontend waits for a reply whatever it asked
    /// ([`req::awaits_reply`]): the session ends.
    fn dispatch(
        &mut self,
        send: &mut Send<'_>,
        hdr: Header,
        p: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<bool, String> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            // The first word: a vring's index for the vring requests, the value of a u64.
            let first = match p.len() {
                8.. => format!("{:#x}", proto::le64(p, 0)),
                4..=7 => format!("{:#x}", proto::le32(p, 0)),
                _ => "-".into(),
            };
            tracing::debug!(port = %self.sh.name, request = hdr.request, name = proto::req::name(hdr.request),
                size = p.len(), first = %first, fds = fds.len(), need_reply = hdr.need_reply(), "vhost: message");
        }
        let out = self.handle(hdr.request, p, fds)?;
        // REPLY_ACK as negotiated once the message is handled (SET_PROTOCOL_FEATURES may just
        // have turned it on; RESET_OWNER keeps it).
        let proto = self.proto;
        let ack = hdr.need_reply() && proto & pfeat::REPLY_ACK != 0;
        let refused = matches!(out, Outcome::Nack(_));
        match out {
            Outcome::Reply(payload) => send_reply(send, hdr.request, &payload)?,
            Outcome::Ok if ack => send_reply(send, hdr.request, &0u64.to_le_bytes())?,
            Outcome::Ok => {}
            Outcome::Nack(msg) => {
                if req::awaits_reply(hdr.request, proto) {
                    // The frontend waits for this reply whatever it asked (QEMU blocked, its
                    // global lock held), and no reply could say "refused": end the session,
                    // as DPDK does; the frontend sees the connection close and fails the
                    // operation (a migration, a device start) instead of hanging.
                    return Err(format!(
                        "refused {}, whose reply the frontend waits for: {msg}",
                        proto::req::name(hdr.request)
                    ));
                }
                tracing::warn!(port = %self.sh.name, request = hdr.request, name = proto::req::name(hdr.request),
                    "vhost: refused: {msg}");
                if ack {
                    send_reply(send, hdr.request, &1u64.to_le_bytes())?;
                }
            }
        }
        self.update_link();
        Ok(refused)
    }

    fn vring_index(&self, raw: u32) -> Result<usize, Outcome> {
        let i = raw as usize;
        if i < self.vrings.len() {
            Ok(i)
        } else {
            Err(Outcome::Nack(format!("vring {i} does not exist ({} vrings)", self.vrings.len())))
        }
    }

    /// Handles one request. `Err` ends the session (malformed message).
    fn handle(&mut self, request: u32, p: &[u8], fds: Vec<OwnedFd>) -> Result<Outcome, String> {
        let short =
            |what: &str| format!("request {request}: payload too short for {what} ({} bytes)", p.len());
        let u64_arg = || if p.len() >= 8 { Ok(proto::le64(p, 0)) } else { Err(short("u64")) };
        Ok(match request {
            req::GET_FEATURES => Outcome::Reply(feat::offered(self.sh.opts.offloads).to_le_bytes().to_vec()),
            req::SET_FEATURES => {
                let f = u64_arg()?;
                let offered = feat::offered(self.sh.opts.offloads);
                if f & !offered != 0 {
                    tracing::debug!(port = %self.sh.name, extra = f & !offered, "vhost: ignoring features not offered");
                }
                self.features = f & offered;
                self.negotiated = true;
                self.sh.features.store(self.features, Ordering::Release);
                self.rebuild_all();
                Outcome::Ok
            }
            req::GET_PROTOCOL_FEATURES => Outcome::Reply(pfeat::OFFERED.to_le_bytes().to_vec()),
            req::SET_PROTOCOL_FEATURES => {
                self.proto = u64_arg()? & pfeat::OFFERED;
                Outcome::Ok
            }
            req::SET_OWNER => Outcome::Ok,
            req::RESET_OWNER => {
                // Deprecated (vhost-user.rst): a back-end ignores it or disables every ring;
                // discarding the connection's negotiation "would lead to bugs" (a frontend
                // that sets its rings up again without sending SET_PROTOCOL_FEATURES again,
                // as older cloud-hypervisor did, would wait for acks forever). The rings stop
                // and the memory table goes; the features and protocol features stay agreed.
                self.teardown();
                let n = self.vrings.len();
                self.vrings = (0..n).map(|_| VringCfg::default()).collect();
                self.sh.features.store(self.features, Ordering::Release);
                Outcome::Ok
            }
            req::GET_QUEUE_NUM => Outcome::Reply(u64::from(self.sh.opts.queues).to_le_bytes().to_vec()),
            req::SET_MEM_TABLE => {
                let regions = proto::parse_mem_table(p).ok_or_else(|| short("a memory table"))?;
                // The new table is mapped first and each running ring then swapped onto it
                // under its lock (a worker sees the old ring or the new one, never none: no
                // frame drops for a memory hotplug). The old table is unmapped when the last
                // ring and this session let go of it, outside every ring's lock (`old` dropped
                // here, the old rings in `rebuild`). A table that cannot be mapped stops the
                // rings: the frontend's memory changed, the old table no longer describes it.
                let (new, out) = match GuestMemory::map(&regions, &fds) {
                    Ok(m) => {
                        tracing::debug!(port = %self.sh.name, memory = ?m, "vhost: memory table");
                        (Some(Arc::new(m)), Outcome::Ok)
                    }
                    Err(e) => (None, Outcome::Nack(format!("memory table: {e}"))),
                };
                let old = std::mem::replace(&mut self.mem, new);
                self.rebuild_all();
                drop(old);
                out
            }
            req::SET_LOG_BASE => {
                if p.len() < 16 {
                    return Err(short("a log area"));
                }
                let (size, offset) = (proto::le64(p, 0), proto::le64(p, 8));
                let Some(fd) = fds.first() else {
                    return Ok(Outcome::Nack("SET_LOG_BASE without a file descriptor".into()));
                };
                match DirtyLog::map(fd, size, offset) {
                    Ok(l) => {
                        self.log = Some(Arc::new(l));
                        self.rebuild_all();
                        // QEMU waits for an empty reply.
                        Outcome::Reply(Vec::new())
                    }
                    Err(e) => Outcome::Nack(format!("log: {e}")),
                }
            }
            req::SET_LOG_FD | req::SET_VRING_ERR | req::SET_BACKEND_REQ_FD => Outcome::Ok,
            req::SET_VRING_NUM => {
                let st = VringState::parse(p).ok_or_else(|| short("a vring state"))?;
                let i = match self.vring_index(st.index) {
                    Ok(i) => i,
                    Err(o) => return Ok(o),
                };
                if st.num == 0 || !st.num.is_power_of_two() || st.num > MAX_QUEUE_SIZE {
                    self.vrings[i].num = 0;
                    self.rebuild(i);
                    return Ok(Outcome::Nack(format!("vring {i}: bad size {}", st.num)));
                }
                self.vrings[i].num = st.num as u16;
                self.rebuild(i);
                Outcome::Ok
            }
            req::SET_VRING_ADDR => {
                let a = VringAddr::parse(p).ok_or_else(|| short("a vring address"))?;
                let i = match self.vring_index(a.index) {
                    Ok(i) => i,
                    Err(o) => return Ok(o),
                };
                self.vrings[i].addr = Some(a);
                self.rebuild(i);
                Outcome::Ok
            }
            req::SET_VRING_BASE => {
                let st = VringState::parse(p).ok_or_else(|| short("a vring state"))?;
                let i = match self.vring_index(st.index) {
                    Ok(i) => i,
                    Err(o) => return Ok(o),
                };
                // The ring (if it runs) stops first, so that the rebuild starts from the new base,
                // not from where the old ring was.
                drop(self.take_ring(i));
                self.vrings[i].base = st.num as u16;
                self.rebuild(i);
                Outcome::Ok
            }
            req::GET_VRING_BASE => {
                let st = VringState::parse(p).ok_or_else(|| short("a vring state"))?;
                let i = match self.vring_index(st.index) {
                    Ok(i) => i,
                    Err(o) => return Ok(o),
                };
                let base = self.stop_ring(i);
                // Both fds go with the stop (vhost-user.rst: the ring starts again on the next
                // SET_VRING_KICK; DPDK closes the call fd too): a ring restarted after a device
                // reset waits for the frontend's new call fd, never signals the old one.
                let c = &mut self.vrings[i];
                (c.kicked, c.kick, c.called, c.call) = (false, None, false, None);
                Outcome::Reply(VringState { index: st.index, num: u32::from(base) }.bytes())
            }
            req::SET_VRING_KICK | req::SET_VRING_CALL => {
                let v = u64_arg()?;
                let i = match self.vring_index((v & 0xff) as u32) {
                    Ok(i) => i,
                    Err(o) => return Ok(o),
                };
                let fd = if v & proto::VRING_NOFD != 0 { None } else { fds.into_iter().next() };
                // Neither fd may ever block a worker, so both are made non-blocking; one that
                // cannot be is not used. The kick fd: workers poll while busy and sleep on it
                // when idle, draining it with a read (a frontend may hand over a blocking
                // eventfd, or something else); without it the worker backs off with timed
                // sleeps. The call fd: the worker signals it on every burst the guest wants a
                // call for, and a frontend's fd that never drains (a pipe nobody reads) must not
                // block it. The old fd, if any, is closed once the ring and the worker let go.
                let kick = request == req::SET_VRING_KICK;
                let name = &self.sh.name;
                let fd = fd.and_then(|f| match sys::set_nonblocking(f.as_fd()) {
                    Ok(()) => Some(Arc::new(File::from(f))),
                    Err(e) => {
                        let which = if kick { "kick" } else { "call" };
                        tracing::warn!(port = %name, vring = i, error = %e,
                            "vhost: {which} fd cannot be made non-blocking; not using it");
                        None
                    }
                });
                if kick {
                    self.vrings[i].kicked = true;
                    self.vrings[i].kick = fd;
                } else {
                    self.vrings[i].called = true;
                    self.vrings[i].call = fd;
                }
                self.rebuild(i);
                Outcome::Ok
            }
            req::SET_VRING_ENABLE => {
                let st = VringState::parse(p).ok_or_else(|| short("a vring state"))?;
                let i = match self.vring_index(st.index) {
                    Ok(i) => i,
                    Err(o) => return Ok(o),
                };
                self.vrings[i].enabled = Some(st.num != 0);
                self.rebuild(i);
                Outcome::Ok
            }
            req::SEND_RARP => {
                if p.len() < 6 {
                    return Err(short("a MAC address"));
                }
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&p[..6]);
                tracing::info!(port = %self.sh.name, mac = ?mac, "vhost: SEND_RARP; announcing the guest");
                // (A worker asleep on vring 1's kick fd takes it when its poll times out: we
                // must not signal the guest's kick fd ourselves; see `Vring::kick`.)
                let _ = self.sh.rarp.force_push(proto::rarp_frame(mac));
                Outcome::Ok
            }
            req::NET_SET_MTU => {
                let mtu = u64_arg()?;
                tracing::info!(port = %self.sh.name, mtu, "vhost: guest MTU");
                Outcome::Ok
            }
            other => Outcome::Nack(format!("unsupported request {other}")),
        })
    }

    /// Takes ring `i` out of the workers' reach; a super-frame it was cutting into segments is
    /// counted lost (`VqState::lost`). The caller drops the ring after the lock is released:
    /// the last ring to let go of a memory table unmaps it, which must not hold up a worker.
    fn take_ring(&self, i: usize) -> Option<Vring> {
        let mut st = self.sh.vq(i);
        let r = st.ring.take();
        if r.as_ref().is_some_and(Vring::mid_frame) {
            st.lost += 1;
        }
        r
    }

    /// Stops ring `i` and returns where the device stopped.
    fn stop_ring(&mut self, i: usize) -> u16 {
        if let Some(r) = self.take_ring(i) {
            self.vrings[i].base = r.indices().0;
        }
        self.vrings[i].base
    }

    /// Sets ring `i` up again from its configuration (after any change), keeping the
    /// device's position when it was running.
    /// The old ring, swapped out under the ring's lock, is dropped after the lock is released
    /// (see [`Session::take_ring`]); a super-frame it was cutting into segments goes on in the
    /// new ring, or is counted lost when the ring stops.
    fn rebuild(&mut self, i: usize) {
        let mut st = self.sh.vq(i);
        // A worker asleep on the ring's kick fd keeps getting kicks from the new ring when the
        // fd stays the same (a new fd: it finds the new ring when its poll times out).
        let mut rearm = false;
        let mut old = st.ring.take();
        if let Some(r) = &old {
            self.vrings[i].base = r.indices().0;
            rearm = r.kicks_requested()
                && matches!((r.kick(), &self.vrings[i].kick), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        }
        match (self.build(i, rearm), old.as_mut()) {
            (Some(mut r), o) => {
                if let Some(o) = o {
                    r.adopt_pending(o);
                }
                st.ring = Some(r);
            }
            (None, Some(o)) if o.mid_frame() => st.lost += 1,
            (None, _) => {}
        }
        drop(st);
        drop(old);
    }

    /// A ring for vring `i` from its configuration, when it is complete and enabled.
    fn build(&self, i: usize, rearm: bool) -> Option<Vring> {
        let proto_features = self.features & feat::USER_F_PROTOCOL_FEATURES != 0;
        let c = &self.vrings[i];
        let enabled = c.enabled.unwrap_or(!proto_features);
        let (Some(mem), Some(addr)) = (&self.mem, c.addr) else { return None };
        if c.num == 0 || !c.kicked || !c.called || !enabled {
            return None;
        }
        let log_on = self.features & feat::LOG_ALL != 0;
        let cfg = RingConfig {
            num: c.num,
            desc: addr.desc,
            avail: addr.avail,
            used: addr.used,
            used_log_gpa: (addr.flags & proto::VRING_F_LOG != 0).then_some(addr.log),
            base: c.base,
            event_idx: self.features & feat::RING_F_EVENT_IDX != 0,
            hdr_len: if self.features & (feat::F_VERSION_1 | feat::NET_F_MRG_RXBUF) != 0 { 12 } else { 10 },
            mrg_rxbuf: self.features & feat::NET_F_MRG_RXBUF != 0,
            in_order: self.features & feat::F_IN_ORDER != 0,
            // The guest's TX rings are the odd ones; only they take requests from headers.
            tx_offload: i % 2 == 1 && self.features & feat::NET_F_CSUM != 0,
            // The guest's RX rings are the even ones (see RxGso for the features it needs).
            rx_gso: {
                let f = self.features;
                let base =
                    i.is_multiple_of(2) && f & feat::NET_F_MRG_RXBUF != 0 && f & feat::NET_F_GUEST_CSUM != 0;
                RxGso {
                    tcpv4: base && f & feat::NET_F_GUEST_TSO4 != 0,
                    tcpv6: base && f & feat::NET_F_GUEST_TSO6 != 0,
                }
            },
        };
        let log = if log_on { self.log.clone() } else { None };
        match Vring::new(mem.clone(), &cfg, log, c.call.clone()) {
            Ok(r) => {
                let mut r = r.with_kick(c.kick.clone());
                if rearm {
                    r.request_kicks();
                }
                Some(r)
            }
            Err(e) => {
                tracing::warn!(port = %self.sh.name, vring = i, error = %e, "vhost: cannot start ring");
                None
            }
        }
    }

    fn rebuild_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.rebuild(i);
        }
    }

    fn update_link(&self) {
        let up = self.sh.vq(0).ring.is_some() && self.sh.vq(1).ring.is_some();
        if self.sh.link.swap(up, Ordering::AcqRel) != up {
            tracing::info!(port = %self.sh.name, up, "vhost: link");
        }
    }

    /// Stops every ring and lets go of the guest's memory.
    fn teardown(&mut self) {
        // The rings stop before the link reads down: whoever sees the link down (the
        // runtime, a test) finds no ring and no kick fd left behind it.
        for i in 0..self.vrings.len() {
            drop(self.take_ring(i));
        }
        self.sh.link.store(false, Ordering::Release);
        self.mem = None;
        self.log = None;
        self.sh.features.store(0, Ordering::Release);
    }
}

/// What became of one message given to a [`Loopback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Handled; the reply messages sent (none, or one: a reply or a REPLY_ACK).
    Handled(Vec<Vec<u8>>),
    /// Refused, the session going on; the REPLY_ACK sent when the frontend asked for one.
    Refused(Vec<Vec<u8>>),
    /// Malformed, or refused where the frontend waits for a reply whatever it asked
    /// (`req::awaits_reply`): the session ended (as it does on the socket), with this reason.
    Ended(String),
}

/// A port's control session without a socket or a thread: the messages (header and payload)
/// and their file descriptors are handed over one at a time, and the replies come back, from
/// the very code that serves the socket (framing checks, request handling, ring setup, link
/// state). For tests and the `vhost_msg` fuzz target.
pub struct Loopback {
    sh: Arc<Shared>,
    session: Option<Session>,
}

impl Loopback {
    /// A session of a port opened with `opts` (its `mode` and `socket_mode` do not matter).
    pub fn new(opts: super::VhostOptions) -> Result<Loopback, super::PortError> {
        let sh = Arc::new(Shared::new("loopback", std::path::Path::new(""), None, opts)?);
        sh.connected.store(true, Ordering::Release);
        Ok(Loopback { session: Some(Session::new(sh.clone())), sh })
    }

    /// Gives the session one whole message. After [`Answer::Ended`], every message is refused
    /// with `Ended` too (the connection is gone).
    pub fn message(&mut self, msg: &[u8], fds: Vec<OwnedFd>) -> Answer {
        let Some(s) = self.session.as_mut() else {
            return Answer::Ended("the session has ended".into());
        };
        let mut sent = Vec::new();
        let r = match msg.first_chunk::<HDR_SIZE>() {
            None => Err(format!("a message of {} bytes has no header", msg.len())),
            Some(h) => {
                let hdr = Header::parse(h);
                payload_size(&hdr)
                    .and_then(|size| match msg.len() - HDR_SIZE {
                        n if n == size => Ok(()),
                        n => Err(format!("header says {size} payload bytes, {n} came")),
                    })
                    .and_then(|()| {
                        let mut send = |m: &[u8]| {
                            sent.push(m.to_vec());
                            Ok(())
                        };
                        s.dispatch(&mut send, hdr, &msg[HDR_SIZE..], fds)
                    })
            }
        };
        match r {
            Ok(false) => Answer::Handled(sent),
            Ok(true) => Answer::Refused(sent),
            Err(e) => {
                self.end();
                Answer::Ended(e)
            }
        }
    }

    fn end(&mut self) {
        if let Some(mut s) = self.session.take() {
            s.teardown();
            self.sh.connected.store(false, Ordering::Release);
        }
    }

    /// Whether vring `i` is running (set up and enabled by the frontend).
    pub fn vring_running(&self, i: usize) -> bool {
        i < self.sh.vqs.len() && self.sh.vq(i).ring.is_some()
    }

    /// How many vrings the port has.
    pub fn vrings(&self) -> usize {
        self.sh.vqs.len()
    }

    /// Whether the link is up (vrings 0 and 1 running).
    pub fn link_up(&self) -> bool {
        self.sh.link.load(Ordering::Acquire)
    }

    /// The virtio features the frontend negotiated.
    pub fn negotiated_features(&self) -> u64 {
        self.sh.features.load(Ordering::Acquire)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::VhostOptions;
    use switchyard_dataplane::port::{Burst, DropTally, RxCtx, RxQueue};
    use switchyard_dataplane::switch::DropReason;

    fn msg(request: u32, need_reply: bool, payload: &[u8]) -> Vec<u8> {
        let flags = proto::VERSION | if need_reply { proto::FLAG_NEED_REPLY } else { 0 };
        proto::message(request, flags, payload)
    }

    fn ack(request: u32, v: u64) -> Vec<Vec<u8>> {
        vec![proto::message(request, proto::VERSION | proto::FLAG_REPLY, &v.to_le_bytes())]
    }

    /// A frontend that negotiated REPLY_ACK and asks for one on RESET_OWNER gets it (it waited
    /// forever for it before), and the negotiation stays: the next message asking for an ack
    /// gets one (vhost-user.rst: a back-end only disables its rings on RESET_OWNER).
    #[test]
    fn reset_owner_is_acked_under_reply_ack() {
        let mut s = Loopback::new(VhostOptions::default()).unwrap();
        let on = s.message(&msg(req::SET_PROTOCOL_FEATURES, false, &pfeat::REPLY_ACK.to_le_bytes()), vec![]);
        assert_eq!(on, Answer::Handled(vec![]));
        assert_eq!(
            s.message(&msg(req::RESET_OWNER, true, &[]), vec![]),
            Answer::Handled(ack(req::RESET_OWNER, 0))
        );
        // Still negotiated: an ack asked for is owed.
        assert_eq!(
            s.message(&msg(req::SET_OWNER, true, &[]), vec![]),
            Answer::Handled(ack(req::SET_OWNER, 0))
        );
    }

    /// The messages of a QEMU start (the fuzz target's seed fuzz/seeds/vhost_msg/qemu-start.hex)
    /// bring both vrings and the link up; GET_VRING_BASE stops a ring and the link goes down.
    #[test]
    fn loopback_brings_the_link_up() {
        let mut s = Loopback::new(VhostOptions::default()).unwrap();
        let ok = |a: Answer| assert!(matches!(a, Answer::Handled(_)), "{a:?}");
        let f = feat::F_VERSION_1 | feat::USER_F_PROTOCOL_FEATURES;
        ok(s.message(&msg(req::SET_FEATURES, false, &f.to_le_bytes()), vec![]));
        let uva = 0x7f00_0000_0000u64;
        let table = proto::mem_table_bytes(&[crate::vhost::mem::RegionDesc {
            gpa: 0,
            size: 0x10000,
            uva,
            mmap_offset: 0,
        }]);
        let fd = OwnedFd::from(sys::memfd("guest", 0x10000).unwrap());
        ok(s.message(&msg(req::SET_MEM_TABLE, false, &table), vec![fd]));
        for i in 0..2u32 {
            let base = uva + 0x4000 * u64::from(i);
            ok(s.message(
                &msg(req::SET_VRING_NUM, false, &VringState { index: i, num: 256 }.bytes()),
                vec![],
            ));
            let a = VringAddr {
                index: i,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                ..VringAddr::default()
            };
            ok(s.message(&msg(req::SET_VRING_ADDR, false, &a.bytes()), vec![]));
            ok(s.message(&msg(req::SET_VRING_BASE, false, &VringState { index: i, num: 0 }.bytes()), vec![]));
            let kick = OwnedFd::from(sys::eventfd().unwrap());
            ok(s.message(&msg(req::SET_VRING_KICK, false, &u64::from(i).to_le_bytes()), vec![kick]));
            ok(s.message(
                &msg(req::SET_VRING_ENABLE, false, &VringState { index: i, num: 1 }.bytes()),
                vec![],
            ));
            assert!(!s.vring_running(i as usize), "no call fd yet");
            call(&mut s, i);
            assert!(s.vring_running(i as usize));
        }
        assert!(s.link_up());
        ok(s.message(&msg(req::GET_VRING_BASE, false, &VringState { index: 0, num: 0 }.bytes()), vec![]));
        assert!(!s.vring_running(0) && !s.link_up());
        // After the stop (a device reset) the ring waits for a new kick fd and a new call fd:
        // the old call fd may be an interrupt the frontend has torn down.
        let kick = OwnedFd::from(sys::eventfd().unwrap());
        ok(s.message(&msg(req::SET_VRING_KICK, false, &0u64.to_le_bytes()), vec![kick]));
        assert!(!s.vring_running(0), "restarted before its new call fd came");
        call(&mut s, 0);
        assert!(s.vring_running(0) && s.link_up());
    }

    fn call(s: &mut Loopback, i: u32) {
        let call = OwnedFd::from(sys::eventfd().unwrap());
        let a = s.message(&msg(req::SET_VRING_CALL, false, &u64::from(i).to_le_bytes()), vec![call]);
        assert!(matches!(a, Answer::Handled(_)), "{a:?}");
    }

    const UVA: u64 = 0x7f00_0000_0000;
    const MEM: u64 = 0x40000;

    /// A session with `features` agreed (and `proto` protocol features), a memory table of
    /// MEM bytes (a memfd at guest address 0) and vrings 0 and 1 running, 256 entries each,
    /// vring i's tables at 0x4000 * i. Returns the guest's view of its memory, and its memfd.
    fn running(opts: VhostOptions, features: u64, proto_features: u64) -> (Loopback, GuestMemory, OwnedFd) {
        let mut s = Loopback::new(opts).unwrap();
        let ok = |s: &mut Loopback, r: u32, p: &[u8], fds: Vec<OwnedFd>| {
            let a = s.message(&msg(r, false, p), fds);
            assert!(matches!(a, Answer::Handled(_)), "request {r}: {a:?}");
        };
        ok(&mut s, req::SET_PROTOCOL_FEATURES, &proto_features.to_le_bytes(), vec![]);
        ok(&mut s, req::SET_FEATURES, &features.to_le_bytes(), vec![]);
        let region = crate::vhost::mem::RegionDesc { gpa: 0, size: MEM, uva: UVA, mmap_offset: 0 };
        let fd = OwnedFd::from(sys::memfd("guest", MEM).unwrap());
        let guest = GuestMemory::map(&[region], &[fd.try_clone().unwrap()]).unwrap();
        ok(&mut s, req::SET_MEM_TABLE, &proto::mem_table_bytes(&[region]), vec![fd.try_clone().unwrap()]);
        for i in 0..2u32 {
            let base = UVA + 0x4000 * u64::from(i);
            ok(&mut s, req::SET_VRING_NUM, &VringState { index: i, num: 256 }.bytes(), vec![]);
            let a = VringAddr {
                index: i,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                ..VringAddr::default()
            };
            ok(&mut s, req::SET_VRING_ADDR, &a.bytes(), vec![]);
            ok(&mut s, req::SET_VRING_BASE, &VringState { index: i, num: 0 }.bytes(), vec![]);
            let kick = OwnedFd::from(sys::eventfd().unwrap());
            ok(&mut s, req::SET_VRING_KICK, &u64::from(i).to_le_bytes(), vec![kick]);
            call(&mut s, i);
            ok(&mut s, req::SET_VRING_ENABLE, &VringState { index: i, num: 1 }.bytes(), vec![]);
        }
        assert!(s.link_up());
        (s, guest, fd)
    }

    /// Once LOG_SHMFD is agreed QEMU waits for SET_LOG_BASE's reply whatever the message
    /// asked, holding its global lock: a log that cannot be mapped (or no fd) ends the session,
    /// so that the frontend sees the connection close. So does GET_VRING_BASE of a vring that
    /// does not exist (its reply is its answer). Without LOG_SHMFD, a refusal is a refusal.
    #[test]
    fn refusals_the_frontend_would_wait_for_end_the_session() {
        let f = feat::F_VERSION_1 | feat::USER_F_PROTOCOL_FEATURES;
        let area = |size: u64| [size.to_le_bytes(), 0u64.to_le_bytes()].concat();
        let log_fd = || OwnedFd::from(sys::memfd("log", 0x1000).unwrap());
        let (mut s, _g, _) = running(VhostOptions::default(), f, 0);
        assert_eq!(s.message(&msg(req::SET_LOG_BASE, false, &area(0x1000)), vec![]), Answer::Refused(vec![]));
        assert!(s.link_up());
        for (what, fds, size) in [("no fd", false, 0x1000), ("log past the file's end", true, 0x2000)] {
            let (mut s, _g, _) = running(VhostOptions::default(), f, pfeat::LOG_SHMFD);
            let fds = if fds { vec![log_fd()] } else { vec![] };
            let a = s.message(&msg(req::SET_LOG_BASE, false, &area(size)), fds);
            assert!(matches!(&a, Answer::Ended(why) if why.contains("SET_LOG_BASE")), "{what}: {a:?}");
            assert!(!s.link_up() && !s.vring_running(0) && !s.vring_running(1), "{what}");
        }
        // A good log is answered (empty reply), and the session goes on.
        let (mut s, _g, _) = running(VhostOptions::default(), f, pfeat::LOG_SHMFD);
        let a = s.message(&msg(req::SET_LOG_BASE, false, &area(0x1000)), vec![log_fd()]);
        assert_eq!(
            a,
            Answer::Handled(vec![proto::message(req::SET_LOG_BASE, proto::VERSION | proto::FLAG_REPLY, &[])])
        );
        assert!(s.link_up());
        let a = s.message(&msg(req::GET_VRING_BASE, false, &VringState { index: 7, num: 0 }.bytes()), vec![]);
        assert!(matches!(&a, Answer::Ended(why) if why.contains("GET_VRING_BASE")), "{a:?}");
        assert!(!s.link_up());
    }

    /// SET_VRING_NUM refuses a queue larger than MAX_QUEUE_SIZE (acked 1 when a reply is asked
    /// for, which QEMU does not do for this request; either way the ring stays down and
    /// nothing waits), and takes the largest.
    #[test]
    fn queue_sizes_over_the_cap_are_refused() {
        let mut s = Loopback::new(VhostOptions::default()).unwrap();
        let num = |n: u32| msg(req::SET_VRING_NUM, true, &VringState { index: 0, num: n }.bytes());
        assert_eq!(s.message(&num(2 * MAX_QUEUE_SIZE), vec![]), Answer::Refused(vec![]));
        s.message(&msg(req::SET_PROTOCOL_FEATURES, false, &pfeat::REPLY_ACK.to_le_bytes()), vec![]);
        for n in [2 * MAX_QUEUE_SIZE, 32768] {
            assert_eq!(s.message(&num(n), vec![]), Answer::Refused(ack(req::SET_VRING_NUM, 1)), "{n}");
        }
        assert_eq!(s.message(&num(MAX_QUEUE_SIZE), vec![]), Answer::Handled(ack(req::SET_VRING_NUM, 0)));
    }

    /// Polls vring 1 (the guest's TX ring) once as a worker does: frames and drops.
    fn poll(s: &Loopback, c: &mut switchyard_dataplane::buffer::PoolCache, max: usize) -> (usize, DropTally) {
        s.sh.rx_claims.claim(0).unwrap();
        let mut rx = crate::vhost::VhostRx { shared: s.sh.clone(), q: 0, kick: None };
        let mut out = Burst::new();
        let mut d = DropTally::default();
        let n = rx.rx_burst(RxCtx::new(c, &mut d), &mut out, max);
        for b in out.drain(..) {
            c.free(b);
        }
        (n, d)
    }

    /// The guest posts a TSO super-frame of 20 segments on vring 1 at slot `head`.
    fn post_super_frame(g: &GuestMemory, head: u16) {
        let (bytes, _) = crate::vhost::vring::tests::offload_frame(20 * 1000, 1000, true);
        let addr = 0x10000 + 0x8000 * u64::from(head);
        g.write(addr, &bytes).unwrap();
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        g.write(0x4000 + 16 * u64::from(head), &d).unwrap();
        g.write(0x5000 + 4 + 2 * u64::from(head), &head.to_le_bytes()).unwrap();
        g.write(0x5000 + 2, &(head + 1).to_le_bytes()).unwrap();
    }

    /// A TX ring rebuilt while it cuts a super-frame into segments (a new call fd, a new
    /// memory table) sends the rest of it; a ring stopped then (GET_VRING_BASE) loses the rest,
    /// counted once as `vhost_ring_stopped` on the queue's next poll.
    #[test]
    fn a_super_frame_in_flight_survives_a_rebuild_and_is_counted_when_stopped() {
        let f = feat::F_VERSION_1 | feat::USER_F_PROTOCOL_FEATURES | feat::NET_F_CSUM | feat::NET_F_HOST_TSO4;
        let (mut s, g, memfd) = running(VhostOptions { offloads: true, ..VhostOptions::default() }, f, 0);
        let pool = switchyard_dataplane::buffer::Pool::with_hugepages("sf", 256, false).unwrap();
        let mut c = pool.cache();
        post_super_frame(&g, 0);
        let (n, d) = poll(&s, &mut c, 4);
        assert_eq!((n, d.is_zero()), (4, true), "{d:?}");
        // Rebuilt twice: a new call fd, then the memory table again (mapped anew, as after a
        // hotplug), the old mapping gone once the rings let go of it.
        call(&mut s, 1);
        let before = s.sh.vq(1).ring.as_ref().map(|r| Arc::as_ptr(r.memory()));
        let region = crate::vhost::mem::RegionDesc { gpa: 0, size: MEM, uva: UVA, mmap_offset: 0 };
        let a = s.message(&msg(req::SET_MEM_TABLE, false, &proto::mem_table_bytes(&[region])), vec![memfd]);
        assert!(matches!(a, Answer::Handled(_)), "{a:?}");
        assert!(s.vring_running(1));
        let after = s.sh.vq(1).ring.as_ref().map(|r| Arc::as_ptr(r.memory()));
        assert_ne!(before, after, "the ring runs on the new table");
        let (n, d) = poll(&s, &mut c, 32);
        assert_eq!((n, d.is_zero()), (16, true), "the rest of the super-frame: {d:?}");
        post_super_frame(&g, 1);
        let (n, d) = poll(&s, &mut c, 4);
        assert_eq!((n, d.is_zero()), (4, true), "{d:?}");
        let a = s.message(&msg(req::GET_VRING_BASE, false, &VringState { index: 1, num: 0 }.bytes()), vec![]);
        assert!(matches!(a, Answer::Handled(_)), "{a:?}");
        let (n, d) = poll(&s, &mut c, 32);
        assert_eq!((n, d.get(DropReason::VhostRingStopped)), (0, 1), "{d:?}");
        let (_, d) = poll(&s, &mut c, 32);
        assert!(d.is_zero(), "counted once: {d:?}");
        drop(c);
        assert_eq!(pool.in_use(), 0);
    }

    /// Handled, refused (acked 1 under REPLY_ACK) or ended, as on the socket.
    #[test]
    fn loopback_answers_refuses_and_ends() {
        let mut s = Loopback::new(VhostOptions::default()).unwrap();
        assert_eq!(
            s.message(&msg(req::GET_QUEUE_NUM, false, &[]), vec![]),
            Answer::Handled(vec![proto::message(
                req::GET_QUEUE_NUM,
                proto::VERSION | proto::FLAG_REPLY,
                &1u64.to_le_bytes()
            )])
        );
        assert_eq!(
            s.message(&msg(req::SET_VRING_NUM, true, &[5, 0, 0, 0, 0, 1, 0, 0]), vec![]),
            Answer::Refused(vec![])
        );
        s.message(&msg(req::SET_PROTOCOL_FEATURES, false, &pfeat::REPLY_ACK.to_le_bytes()), vec![]);
        assert_eq!(
            s.message(&msg(req::SET_VRING_NUM, true, &[0, 0, 0, 0, 3, 0, 0, 0]), vec![]),
            Answer::Refused(ack(req::SET_VRING_NUM, 1))
        );
        assert!(matches!(s.message(&msg(req::SET_FEATURES, false, &[1]), vec![]), Answer::Ended(_)));
        assert!(matches!(s.message(&msg(req::GET_FEATURES, false, &[]), vec![]), Answer::Ended(_)));
        assert!(!s.link_up());
    }
}
