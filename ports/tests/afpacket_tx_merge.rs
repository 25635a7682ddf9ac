//! TX merging on the AF_PACKET port (`tx_merge`): runs of segments of one TCP flow in a TX
//! burst leave as one GSO super-frame, which a veth hands to its peer whole; everything else
//! leaves as before, in the burst's order. Real veth pairs in network namespaces (root and
//! iproute2, else each test prints why and passes).

#[macro_use]
mod kports_common;

use kports_common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::port::{Burst, DropTally, PortBackend, RxCtx};
use switchyard_dataplane::{DropReason, Pool};
use switchyard_ports::afpacket::{AfPacketOptions, AfPacketPort};

const SPORT: u16 = 40000;
const DPORT: u16 = 5201;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const TCP_FIN: u8 = 0x01;

/// The ones' complement sum of `b` (big-endian 16-bit words), folded.
fn csum(b: &[u8], mut acc: u32) -> u16 {
    for w in b.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A finished TCP/IPv4 segment from 10.9.0.1:`sport` to 10.9.0.2:5201: `ihl` 5 (or 6: a
/// 4-byte IP option), IP ID `id`, TCP `flags`, a payload of `len` bytes that depends on `seq`
/// (so the payloads of a stream are one pattern whatever the cut). Checksums written here.
fn seg(sport: u16, seq: u32, id: u16, flags: u8, ihl: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let ip_len = usize::from(ihl) * 4;
    let total = ip_len + 20 + len;
    let mut ip = vec![0x40 | ihl, 0];
    ip.extend_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 64, 6, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2]);
    ip.resize(ip_len, 1); // an option of NOPs
    let c = !csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&DPORT.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&77u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0x01, 0xf5, 0, 0, 0, 0]);
    tcp.extend((0..len).map(|k| pattern(seq.wrapping_add(k as u32))));
    let pseudo = u32::from(csum(&[10, 9, 0, 1, 10, 9, 0, 2], 0)) + 6 + tcp.len() as u32;
    let c = !csum(&tcp, pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

fn pattern(at: u32) -> u8 {
    (at.wrapping_mul(2654435761) >> 24) as u8
}

/// Checks that `f` is one TCP/IPv4 frame (no options) carrying stream bytes `seq..seq+len`
/// with `flags`: lengths, the IP checksum, the TCP checksum left partial, the payload.
fn check_tcp(f: &[u8], sport: u16, seq: u32, flags: u8, len: usize, what: &str) {
    assert_eq!(f.len(), 14 + 20 + 20 + len, "{what}: length");
    let ip = &f[14..34];
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), 40 + len, "{what}: IP total length");
    assert_eq!(csum(ip, 0), 0xffff, "{what}: IP header checksum");
    let tcp = &f[34..];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), sport, "{what}: source port");
    assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), seq, "{what}: sequence number");
    assert_eq!(tcp[13], flags, "{what}: flags");
    // Left to the receiver (NEEDS_CSUM): the field holds the pseudo-header sum, which a
    // receiver of the super-frame trusts; the payload is checked byte by byte below.
    let pseudo = u32::from(csum(&[10, 9, 0, 1, 10, 9, 0, 2], 0)) + 6 + tcp.len() as u32;
    assert_eq!(u16::from_be_bytes([tcp[16], tcp[17]]), csum(&[], pseudo), "{what}: partial TCP checksum");
    for (k, &b) in tcp[20..].iter().enumerate() {
        assert_eq!(b, pattern(seq.wrapping_add(k as u32)), "{what}: payload byte {k}");
    }
}

fn setup(test: &str) -> Option<VethNs> {
    if let Some(why) = skip_reason() {
        skip(test, &why);
        return None;
    }
    match VethNs::create() {
        Ok(v) => Some(v),
        Err(e) => {
            skip(test, &format!("cannot create a network namespace and veth pair: {e}"));
            None
        }
    }
}

/// One burst holding two runs and everything that must not merge: a run of 5 (1000-byte
/// segments, the last 400 with PSH) arrives at the peer as ONE frame of 4,400 payload bytes
/// (the TCP checksum left to the receiver); then 2 merged, a sequence gap, 2 merged, another flow, IP options, a
/// FIN, a pure ACK, a non-IP frame: each alone, byte for byte, all in the burst's order. The
/// port's counters say 4 super-frames of 11 segments; with `tx_merge` off the same burst
/// arrives as its 17 frames.
#[test]
fn tcp_runs_leave_as_one_frame_and_the_rest_as_before() {
    let Some(veth) = setup("tcp_runs_leave_as_one_frame_and_the_rest_as_before") else { return };
    let pool = Pool::with_hugepages("afp-merge", 256, false).unwrap();
    let mut cache = pool.cache();
    let mut peer = RawSock::open(Some(&veth.ns), &veth.peer).expect("peer socket");
    let a = SPORT;
    let b = SPORT + 1;
    let mut frames = Vec::new();
    for i in 0..4 {
        frames.push(seg(a, i * 1000, 10 + i as u16, TCP_ACK, 5, 1000));
    }
    frames.push(seg(a, 4000, 14, TCP_ACK | TCP_PSH, 5, 400));
    frames.push(seg(b, 0, 1, TCP_ACK, 5, 1000));
    frames.push(seg(b, 1000, 2, TCP_ACK, 5, 1000));
    frames.push(seg(b, 2500, 3, TCP_ACK, 5, 1000)); // gap of 500
    frames.push(seg(b, 3500, 4, TCP_ACK, 5, 1000));
    frames.push(seg(a, 9000, 20, TCP_ACK, 5, 1000)); // another flow (source port a) between
    frames.push(seg(b, 4500, 5, TCP_ACK, 6, 1000)); // IP options
    frames.push(seg(b, 5500, 6, TCP_ACK, 5, 1000));
    frames.push(seg(b, 6500, 7, TCP_ACK | TCP_FIN, 5, 1000)); // FIN
    frames.push(seg(b, 7500, 8, TCP_ACK, 5, 0)); // pure ACK
    frames.push(frame(DST, SRC, &[], "MERGE-END.", 100));
    // 15 frames so far; two more that merge with each other only.
    frames.push(seg(b, 20000, 30, TCP_ACK, 5, 1000));
    frames.push(seg(b, 21000, 31, TCP_ACK, 5, 1000));

    // (frame, or merged stream bytes: (sport, seq, flags, len))
    let expect: Vec<Result<usize, (u16, u32, u8, usize)>> = vec![
        Err((a, 0, TCP_ACK | TCP_PSH, 4400)),
        Err((b, 0, TCP_ACK, 2000)),
        Err((b, 2500, TCP_ACK, 2000)),
        Ok(9),
        Ok(10),
        Ok(11),
        Ok(12),
        Ok(13),
        Ok(14),
        Err((b, 20000, TCP_ACK, 2000)),
    ];
    for merge in [true, false] {
        let port = AfPacketPort::open(
            "p0",
            &veth.host,
            AfPacketOptions { tx_merge: merge, ..AfPacketOptions::light() },
        )
        .expect("open AF_PACKET port");
        let mut tx = port.open_tx(0).unwrap();
        let mut burst = Burst::new();
        for f in &frames {
            burst.push(cache.alloc_copy(f).unwrap());
        }
        let mut drops = DropTally::default();
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut drops), frames.len(), "merge {merge}");
        assert_eq!(drops.total(), 0, "merge {merge}: drops");
        let ours = |g: &[u8]| g.len() >= 14 && g[6..12] == SRC;
        if merge {
            assert_eq!(port.tx_merges(), (4, 11), "super-frames and their segments");
            for (k, e) in expect.iter().enumerate() {
                let got = peer.recv_matching(WAIT, ours).unwrap_or_else(|| panic!("frame {k} never came"));
                match *e {
                    Ok(i) => assert_eq!(got, frames[i], "frame {k}: frame {i} alone, unchanged"),
                    Err((sport, seq, flags, len)) => {
                        check_tcp(&got, sport, seq, flags, len, &format!("frame {k}"))
                    }
                }
            }
        } else {
            assert_eq!(port.tx_merges(), (0, 0));
            for (i, f) in frames.iter().enumerate() {
                let got = peer.recv_matching(WAIT, ours).unwrap_or_else(|| panic!("frame {i} never came"));
                assert_eq!(&got, f, "merge off: frame {i}");
            }
        }
        assert!(
            peer.recv_matching(Duration::from_millis(100), ours).is_none(),
            "merge {merge}: extra frames"
        );
    }
}

/// Two namespaces' TCP stacks joined by two AF_PACKET ports and a forwarding loop (each RX
/// burst of one port to the other's TX, as a bridge of two ports does): 8 MiB across arrive
/// intact, the receiving side's port merged the sender's segments (which the RX side cut from
/// the sender's TSO super-frames), and nothing was dropped.
#[test]
fn tcp_across_two_ports_with_merging() {
    let test = "tcp_across_two_ports_with_merging";
    let Some(va) = setup(test) else { return };
    let Some(vb) = setup(test) else { return };
    for (v, addr) in [(&va, "10.9.1.1/24"), (&vb, "10.9.1.2/24")] {
        ip(&["-n", &v.ns, "addr", "add", addr, "dev", &v.peer]).unwrap();
    }
    let pa = AfPacketPort::open("a", &va.host, AfPacketOptions::light()).unwrap();
    let pb = AfPacketPort::open("b", &vb.host, AfPacketOptions::light()).unwrap();
    const TOTAL: usize = 8 << 20;
    let (nsa, nsb) = (va.ns.clone(), vb.ns.clone());
    let listener = in_netns(&nsb, || TcpListener::bind("10.9.1.2:0").map_err(|e| e.to_string())).unwrap();
    let dport = listener.local_addr().unwrap().port();
    let done = Arc::new(AtomicBool::new(false));
    let done_r = done.clone();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = 0usize;
        let mut bad = None;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for (k, &b) in buf[..n].iter().enumerate() {
                if bad.is_none() && b != pattern((got + k) as u32) {
                    bad = Some(got + k);
                }
            }
            got += n;
        }
        done_r.store(true, Ordering::Release);
        (got, bad)
    });
    let sender = std::thread::spawn(move || {
        in_netns(&nsa, || {
            let mut s = TcpStream::connect(("10.9.1.2", dport)).map_err(|e| e.to_string())?;
            let data: Vec<u8> = (0..TOTAL).map(|k| pattern(k as u32)).collect();
            s.write_all(&data).map_err(|e| e.to_string())
        })
    });
    let pool = Pool::with_hugepages("afp-merge-tcp", 4096, false).unwrap();
    let mut cache = pool.cache();
    let mut drops = DropTally::default();
    let (mut rxa, mut rxb) = (pa.open_rx(0).unwrap(), pb.open_rx(0).unwrap());
    assert!(!rxa.spin_when_idle(), "a packet socket wakes an idle worker for free: no spin");
    let (mut txa, mut txb) = (pa.open_tx(0).unwrap(), pb.open_tx(0).unwrap());
    let mut burst = Burst::new();
    let end = Instant::now() + Duration::from_secs(30);
    while !done.load(Ordering::Acquire) && Instant::now() < end {
        let n = rxa.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
        txb.tx_burst(&mut burst, &mut cache, &mut drops);
        let m = rxb.rx_burst(RxCtx::new(&mut cache, &mut drops), &mut burst, 32);
        txa.tx_burst(&mut burst, &mut cache, &mut drops);
        if n + m == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let sent = sender.join().unwrap();
    let (got, bad) = receiver.join().unwrap();
    assert_eq!(sent, Ok(()));
    assert_eq!(got, TOTAL, "bytes across");
    assert_eq!(bad, None, "first wrong byte");
    let (frames, segs) = pb.tx_merges();
    eprintln!("{test}: port b merged {segs} segments into {frames} frames");
    assert!(frames > 0 && segs >= 2 * frames, "merges on the receiving side: {frames} / {segs}");
    assert_eq!(drops.get(DropReason::BadOffload), 0);
    assert_eq!(drops.get(DropReason::Oversize), 0);
}
