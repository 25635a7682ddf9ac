//! The vhost-user frontend's messages to a port's control session (`Loopback`: the session
//! code that serves the socket, without the socket): arbitrary headers, payload sizes, memory
//! tables with memfds of arbitrary sizes, vring numbers, addresses and bases, kick and call
//! descriptors, feature bits.
//!
//! Input: `[queues and offloads: u8]` then messages, each `[request: u8][ctl: u8][len: u16 LE]
//! [len bytes of payload]` (ctl: bit 0 NEED_REPLY, bits 1-2 how many descriptors come with it,
//! bit 3 eventfds rather than memfds, bits 4-7 the memfds' size in 64 KiB), or, for request
//! byte 0xff, `[0xff][ctl][12 header bytes][payload]`, the header as sent.
//!
//! Besides never panicking or touching memory outside what was mapped: every message is
//! handled (with the reply its request has, or the REPLY_ACK asked for), refused (with a
//! REPLY_ACK of 1 when one was asked for) or ends the session with a reason, as the session on
//! the socket would; replies carry the request's code, the reply flag and their own size; the
//! link is up exactly when vrings 0 and 1 run; negotiated features are among those offered;
//! a vring whose base was asked for is stopped; an ended session leaves no vring running.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::fd::OwnedFd;
use switchyard_ports::vhost::proto::{self, feat, pfeat, req, HDR_SIZE};
use switchyard_ports::vhost::{sys, Answer, Loopback, VhostOptions};

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// The payload sizes of the requests answered with a reply of their own.
fn reply_size(request: u32) -> Option<usize> {
    match request {
        req::GET_FEATURES | req::GET_PROTOCOL_FEATURES | req::GET_QUEUE_NUM | req::GET_VRING_BASE => Some(8),
        req::SET_LOG_BASE => Some(0),
        _ => None,
    }
}

fn check_reply(m: &[u8], request: u32) -> Vec<u8> {
    assert!(m.len() >= HDR_SIZE, "reply of {} bytes", m.len());
    let h = proto::Header::parse(m[..HDR_SIZE].try_into().unwrap());
    assert_eq!(h.request, request);
    assert_eq!(h.flags, proto::VERSION | proto::FLAG_REPLY);
    assert_eq!(h.size as usize, m.len() - HDR_SIZE);
    m[HDR_SIZE..].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some(b) = inp.u8() else { return };
    let offloads = b & 8 != 0;
    let opts = VhostOptions { queues: 1 + u16::from(b & 7), offloads, ..VhostOptions::default() };
    let mut s = Loopback::new(opts).expect("loopback");
    let mut proto_features = 0u64;
    while let (Some(r), Some(ctl)) = (inp.u8(), inp.u8()) {
        let need_reply = ctl & 1 != 0;
        let (request, msg) = if r == 0xff {
            let h = inp.take(HDR_SIZE);
            let Ok(hb) = <[u8; HDR_SIZE]>::try_from(h) else { break };
            let hdr = proto::Header::parse(&hb);
            let mut m = hb.to_vec();
            m.extend_from_slice(inp.take(hdr.size as usize));
            (hdr.request, m)
        } else {
            let len = inp.take(2);
            let len = usize::from(u16::from_le_bytes([
                len.first().copied().unwrap_or(0),
                len.get(1).copied().unwrap_or(0),
            ]));
            let request = u32::from(r % 24);
            let flags = proto::VERSION | if need_reply { proto::FLAG_NEED_REPLY } else { 0 };
            (request, proto::message(request, flags, inp.take(len)))
        };
        let need_reply =
            proto::Header::parse(msg[..HDR_SIZE.min(msg.len())].try_into().unwrap_or(&[0; HDR_SIZE]))
                .need_reply();
        let fds: Vec<OwnedFd> = (0..(ctl >> 1) & 3)
            .map(|_| {
                let f = if ctl & 8 != 0 {
                    sys::eventfd().expect("eventfd")
                } else {
                    sys::memfd("guest", u64::from(ctl >> 4) << 16).expect("memfd")
                };
                OwnedFd::from(f)
            })
            .collect();
        let payload = msg.get(HDR_SIZE..).unwrap_or(&[]).to_vec();
        let answer = s.message(&msg, fds);
        // A REPLY_ACK is owed under the protocol features in force after the message (those
        // it sets, for SET_PROTOCOL_FEATURES; RESET_OWNER keeps them, vhost-user.rst).
        if matches!(answer, Answer::Handled(_)) && request == req::SET_PROTOCOL_FEATURES {
            proto_features = proto::le64(&payload, 0) & pfeat::OFFERED;
        }
        let ack = need_reply && proto_features & pfeat::REPLY_ACK != 0;
        match answer {
            Answer::Handled(sent) => {
                match (reply_size(request), ack) {
                    (Some(n), _) => {
                        assert_eq!(sent.len(), 1, "request {request}: {} replies", sent.len());
                        assert_eq!(check_reply(&sent[0], request).len(), n, "request {request}");
                    }
                    (None, true) => {
                        assert_eq!(sent.len(), 1, "request {request}: {} acks", sent.len());
                        assert_eq!(check_reply(&sent[0], request), 0u64.to_le_bytes());
                    }
                    (None, false) => assert!(sent.is_empty(), "request {request}: unasked replies"),
                }
                if request == req::GET_VRING_BASE {
                    let i = proto::le32(&payload, 0) as usize;
                    assert!(!s.vring_running(i), "vring {i} still runs after GET_VRING_BASE");
                }
            }
            Answer::Refused(sent) => {
                // A refusal the frontend would wait for a reply to ends the session instead.
                assert!(!req::awaits_reply(request, proto_features), "request {request} refused, no reply");
                if ack {
                    assert_eq!(sent.len(), 1, "request {request}: {} acks", sent.len());
                    assert_eq!(check_reply(&sent[0], request), 1u64.to_le_bytes());
                } else {
                    assert!(sent.is_empty(), "request {request}: unasked replies to a refusal");
                }
            }
            Answer::Ended(why) => {
                assert!(!why.is_empty());
                assert!((0..s.vrings()).all(|i| !s.vring_running(i)), "a vring runs after the session ended");
                assert!(!s.link_up());
                break;
            }
        }
        assert_eq!(s.link_up(), s.vring_running(0) && s.vring_running(1));
        assert_eq!(s.negotiated_features() & !feat::offered(offloads), 0);
    }
});
