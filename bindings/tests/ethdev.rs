#![cfg(feature = "dpdk")]
//! Ethdev ports on DPDK's virtual devices: net_ring (loopback), net_pcap
//! (bytes in and out of files), net_null; restarts give every mbuf back; bad
//! devargs are errors naming the device.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_bindings::{sys, Error, EthDev, Mbuf, Mempool};

const BURST: usize = 32;

fn pool(eal: &switchyard_bindings::Eal, name: &str, n: u32) -> Arc<Mempool> {
    Arc::new(Mempool::new(eal, name, n, 32, Mempool::DEFAULT_DATA_ROOM).expect("mempool"))
}

fn up(eal: &switchyard_bindings::Eal, devargs: &str, pool: &Arc<Mempool>) -> EthDev {
    let mut dev = EthDev::probe(eal, devargs).expect("probe");
    dev.configure(1, 1).expect("configure");
    dev.setup_rx_queue(0, 512, pool).expect("rx queue");
    dev.setup_tx_queue(0, 512).expect("tx queue");
    dev.promiscuous_enable().expect("promiscuous");
    dev.start().expect("start");
    dev
}

/// Sends `frames` on queue 0, all of them (retrying a full queue briefly).
fn send(dev: &mut EthDev, pool: &Mempool, frames: &[Vec<u8>]) {
    let mut burst: Vec<Mbuf> = frames
        .iter()
        .map(|f| {
            let mut m = pool.alloc().expect("alloc");
            assert!(m.set_data(f));
            m
        })
        .collect();
    tx_all(dev, &mut burst);
}

/// Transmits every mbuf of `burst` on queue 0, within 5 s.
fn tx_all(dev: &mut EthDev, burst: &mut Vec<Mbuf>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !burst.is_empty() {
        dev.tx_mbufs(0, burst);
        assert!(Instant::now() < deadline, "tx stuck");
    }
}

/// Receives until `n` mbufs came or a deadline passed.
fn receive_mbufs(dev: &mut EthDev, n: usize) -> Vec<Mbuf> {
    let mut got = Vec::new();
    let mut out = Vec::with_capacity(BURST);
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < n && Instant::now() < deadline {
        dev.rx_mbufs(0, &mut out, BURST);
        got.append(&mut out);
    }
    got
}

/// Receives until `n` frames came or a deadline passed: their bytes.
fn receive(dev: &mut EthDev, n: usize) -> Vec<Vec<u8>> {
    receive_mbufs(dev, n).iter().map(|m| m.data().to_vec()).collect()
}

#[test]
fn ring_loopback_moves_known_bytes_and_counts_them() {
    let Some(eal) = common::eal() else { return };
    let pool = pool(eal, "loop", 1024);
    let mut dev = up(eal, "net_ring_loop0", &pool);
    assert_eq!(dev.name(), "net_ring_loop0");
    assert_eq!(dev.info().unwrap().driver_name, "net_ring");
    let link = dev.link().unwrap();
    assert!(link.up, "{link:?}");
    let _mac = dev.mac_addr().unwrap();

    let frames: Vec<Vec<u8>> = (0..BURST as u32).map(|i| common::frame(i, 60 + i as usize)).collect();
    send(&mut dev, &pool, &frames);
    let got = receive(&mut dev, frames.len());
    assert_eq!(got, frames);

    let s = dev.stats().unwrap();
    assert_eq!(s.opackets, BURST as u64);
    assert_eq!(s.ipackets, BURST as u64);
    // net_ring counts packets only (its byte counters stay 0); the pcap test
    // checks bytes.
    dev.reset_stats().unwrap();
    assert_eq!(dev.stats().unwrap().ipackets, 0);

    dev.close().unwrap();
    assert_eq!(pool.in_use(), 0, "every mbuf is back in the pool");
}

#[test]
fn vdev_given_to_eal_at_init_is_found() {
    let Some(eal) = common::eal() else { return };
    let pool = pool(eal, "ealvdev", 512);
    let mut dev = up(eal, common::EAL_VDEV, &pool);
    let frames = vec![common::frame(7, 64)];
    send(&mut dev, &pool, &frames);
    assert_eq!(receive(&mut dev, 1), frames);
    dev.stop().unwrap();
    drop(dev);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn restart_100_times_and_every_mbuf_comes_back() {
    let Some(eal) = common::eal() else { return };
    let pool = pool(eal, "restart", 2048);
    let mut dev = up(eal, "net_ring_restart0", &pool);
    let baseline = pool.in_use();
    for round in 0..100u32 {
        dev.start().expect("start");
        let frames: Vec<Vec<u8>> = (0..BURST as u32).map(|i| common::frame(round * 100 + i, 64)).collect();
        send(&mut dev, &pool, &frames);
        // Take half back and leave the rest in the device: stop must drain it.
        let mut some = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST / 2];
        let n = dev.rx_burst(0, &mut some);
        // SAFETY: rx_burst handed us the first n mbufs.
        unsafe { switchyard_bindings::mbuf::free_bulk(&mut some[..n]) };
        dev.stop().expect("stop");
        assert_eq!(pool.in_use(), baseline, "round {round}: mbufs missing after stop");
    }
    // Bursts on a stopped port do nothing (and do not crash).
    let mut none = [std::ptr::null_mut::<sys::rte_mbuf>(); 4];
    assert_eq!(dev.rx_burst(0, &mut none), 0);
    dev.close().unwrap();
    assert_eq!(pool.in_use(), 0, "the pool is whole");
}

#[test]
fn bad_devargs_are_errors_naming_the_device() {
    let Some(eal) = common::eal() else { return };
    let e = EthDev::probe(eal, "net_nosuchdriver0,foo=bar").unwrap_err();
    assert!(matches!(&e, Error::Probe { device, .. } if device == "net_nosuchdriver0"), "{e:?}");
    assert!(e.to_string().contains("net_nosuchdriver0"), "{e}");

    let e = EthDev::probe(eal, "net_pcap_bad0,rx_pcap=/nonexistent/dir/in.pcap").unwrap_err();
    assert!(e.to_string().contains("net_pcap_bad0"), "{e}");

    let e = EthDev::probe(eal, ",x=1").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}

#[test]
fn misuse_is_an_error_not_a_crash() {
    let Some(eal) = common::eal() else { return };
    let pool = pool(eal, "misuse", 256);
    let mut dev = EthDev::probe(eal, "net_ring_misuse0").unwrap();
    assert!(dev.start().is_err(), "start before configure");
    dev.configure(1, 1).unwrap();
    assert!(matches!(dev.setup_rx_queue(3, 64, &pool), Err(Error::BadQueue { .. })));
    assert!(matches!(dev.start(), Err(Error::BadQueue { .. })), "queues not set up");
    let mut none = [std::ptr::null_mut::<sys::rte_mbuf>(); 4];
    assert_eq!(dev.rx_burst(7, &mut none), 0);
    dev.close().unwrap();
    assert!(
        matches!(Mempool::new(eal, "misuse", 16, 0, 2176), Err(Error::MempoolCreate { .. })),
        "a second pool of the same name fails"
    );
    assert!(Mempool::new(eal, "x", 16, 100_000, 2176).is_err());
}

fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [i as u32, 0, f.len() as u32, f.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).unwrap();
}

fn read_pcap(path: &std::path::Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap();
    assert!(b.len() >= 24, "{} is not a pcap", path.display());
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(b[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    out
}

#[test]
fn pcap_port_reads_and_writes_files() {
    let Some(eal) = common::eal() else { return };
    let dir = common::temp_dir("pcap");
    let input = dir.join("in.pcap");
    let output = dir.join("out.pcap");
    let frames: Vec<Vec<u8>> = (0..50u32).map(|i| common::frame(i, 60 + (i as usize * 7) % 1400)).collect();
    write_pcap(&input, &frames);
    let pool = pool(eal, "pcap", 1024);
    let devargs = format!("net_pcap_t0,rx_pcap={},tx_pcap={}", input.display(), output.display());
    let mut dev = up(eal, &devargs, &pool);
    let got = receive(&mut dev, frames.len());
    assert_eq!(got, frames, "frames read from the pcap");
    send(&mut dev, &pool, &frames[..10]);
    let s = dev.stats().unwrap();
    assert_eq!((s.ipackets, s.opackets), (50, 10));
    let bytes = |f: &[Vec<u8>]| f.iter().map(|f| f.len() as u64).sum::<u64>();
    assert_eq!((s.ibytes, s.obytes), (bytes(&frames), bytes(&frames[..10])));
    dev.close().unwrap();
    assert_eq!(read_pcap(&output), frames[..10].to_vec(), "frames written to the pcap");
    assert_eq!(pool.in_use(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn null_port_rx_allocates_and_tx_frees() {
    let Some(eal) = common::eal() else { return };
    let pool = pool(eal, "null", 1024);
    let mut dev = up(eal, "net_null_t0,size=128", &pool);
    let mut out = Vec::with_capacity(BURST);
    assert_eq!(dev.rx_mbufs(0, &mut out, BURST), BURST);
    assert!(out.iter().all(|m| m.len() == 128));
    assert_eq!(pool.in_use(), BURST as u32);
    let sent = dev.tx_mbufs(0, &mut out);
    assert_eq!(sent, BURST);
    assert!(out.is_empty());
    assert_eq!(pool.in_use(), 0, "net_null frees what it transmits");
    dev.close().unwrap();
}

#[test]
fn mbuf_accessors_agree_with_dpdk() {
    let Some(eal) = common::eal() else { return };
    let pool = pool(eal, "mbuf", 64);
    let mut m = pool.alloc().unwrap();
    assert!(m.is_empty());
    assert_eq!(m.headroom(), sys::RTE_PKTMBUF_HEADROOM as usize);
    m.append(100).unwrap().fill(0xab);
    m.prepend(4).unwrap().copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(m.len(), 104);
    assert_eq!(&m.data()[..5], &[1, 2, 3, 4, 0xab]);
    // SAFETY: m is a valid mbuf we own; these only read it.
    unsafe {
        assert_eq!(sys::shim::sy_rte_pktmbuf_data_len(m.as_ptr()) as usize, m.data_len());
        assert_eq!(sys::shim::sy_rte_pktmbuf_pkt_len(m.as_ptr()) as usize, m.len());
        assert_eq!(sys::shim::sy_rte_pktmbuf_headroom(m.as_ptr()) as usize, m.headroom());
        assert_eq!(sys::shim::sy_rte_pktmbuf_tailroom(m.as_ptr()) as usize, m.tailroom());
        assert_eq!(sys::shim::sy_rte_pktmbuf_mtod(m.as_ptr()) as *const u8, m.data().as_ptr());
        assert_eq!(sys::shim::sy_rte_mbuf_refcnt_read(m.as_ptr()), 1);
    }
    assert!(m.adj(4));
    assert!(m.trim(50));
    assert_eq!(m.data(), &[0xab; 50][..]);
    assert!(m.append(u16::MAX).is_none(), "no room is None, not a panic");
    m.data_mut()[0] = 9;
    assert_eq!(m.data()[0], 9);
    assert_eq!(pool.in_use(), 1);
    m.free();
    assert_eq!(pool.in_use(), 0);

    let mut bulk = [std::ptr::null_mut(); 16];
    pool.alloc_bulk_raw(&mut bulk).unwrap();
    assert_eq!(pool.in_use(), 16);
    // SAFETY: the 16 mbufs were just allocated for us.
    unsafe { switchyard_bindings::mbuf::free_bulk(&mut bulk) };
    assert_eq!(pool.in_use(), 0);
    let mut too_many = vec![std::ptr::null_mut(); 1000];
    assert!(matches!(pool.alloc_bulk_raw(&mut too_many), Err(Error::MbufAlloc { .. })));
}

/// A pinned-extbuf pool: buffer i of the region is mbuf i's for good, an mbuf received from
/// net_ring still has the buffer it was sent with, and the pool is whole afterwards.
#[test]
fn pinned_extbuf_pool_keeps_buffers_in_place() {
    let Some(eal) = common::eal() else { return };
    const ELT: u16 = 2176;
    let n = 1023;
    let pool = Arc::new(Mempool::pinned_extbuf(eal, "pinned", n, 32, ELT).expect("extbuf pool"));
    let (base, elt) = pool.pinned_region().expect("a pinned pool has a region");
    assert_eq!(elt, ELT);
    assert!(Mempool::new(eal, "plain_np", 64, 0, 2176).unwrap().pinned_region().is_none());
    let table = pool.slot_table().expect("every buffer has its mbuf");
    assert_eq!(table.len(), n as usize);
    for (i, &m) in table.iter().enumerate() {
        // SAFETY: reading a free mbuf's header fields; nobody holds it (the pool is unused).
        let (addr, len) = unsafe { ((*m).buf_addr as usize, (*m).buf_len) };
        assert_eq!(addr, base.as_ptr() as usize + i * usize::from(ELT));
        assert_eq!(len, ELT);
    }
    let mut dev = up(eal, "net_ring_pin0", &pool);
    let frames: Vec<Vec<u8>> = (0..BURST as u32).map(|i| common::frame(i, 60 + i as usize)).collect();
    let mut burst: Vec<Mbuf> = Vec::new();
    let mut addrs = Vec::new();
    for f in &frames {
        let mut m = pool.alloc().unwrap();
        assert_eq!(m.headroom(), 128);
        assert_eq!(m.buf_len(), ELT);
        assert!(table.contains(&m.as_ptr()));
        // Write the frame into the buffer in place and set the window around it.
        // SAFETY: we own the mbuf and its buffer of ELT bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(m.buf_addr(), usize::from(ELT)) };
        buf[100..100 + f.len()].copy_from_slice(f);
        assert!(m.set_window(100, f.len() as u16));
        assert!(!m.set_window(2000, 177));
        addrs.push(m.buf_addr() as usize);
        burst.push(m);
    }
    tx_all(&mut dev, &mut burst);
    let got = receive_mbufs(&mut dev, frames.len());
    let bytes: Vec<Vec<u8>> = got.iter().map(|m| m.data().to_vec()).collect();
    assert_eq!(bytes, frames);
    let back: Vec<usize> = got.iter().map(|m| m.buf_addr() as usize).collect();
    assert_eq!(back, addrs, "the same buffers came back: nothing was copied");
    drop(got);
    dev.close().unwrap();
    assert_eq!(pool.in_use(), 0, "every mbuf is back in the pool");
}

/// A pinned-extbuf pool made direct-looking (`make_pinned_direct`): no mbuf carries the
/// external flag any more, frames still travel in the same buffers, DPDK's direct free path
/// puts every mbuf back with its buffer unmoved, and the pool is whole afterwards. Refused on
/// a plain pool and on a pool with mbufs out.
#[test]
fn pinned_pool_made_direct_keeps_buffers_in_place() {
    let Some(eal) = common::eal() else { return };
    const ELT: u16 = 2176;
    let n = 511;
    let plain = Mempool::new(eal, "plain_md", 64, 0, 2176).unwrap();
    // SAFETY: nobody uses the plain pool; the call is refused anyway.
    assert!(unsafe { plain.make_pinned_direct() }.is_err());
    let pool = Arc::new(Mempool::pinned_extbuf(eal, "pinned_md", n, 32, ELT).expect("extbuf pool"));
    let held = pool.alloc().unwrap();
    assert_ne!(held.ol_flags() & sys::RTE_MBUF_F_EXTERNAL, 0, "a pinned pool's mbufs start external");
    // SAFETY: the pool is used by this thread only; nothing clones or attaches its mbufs.
    assert!(unsafe { pool.make_pinned_direct() }.is_err(), "refused with an mbuf out");
    drop(held);
    // SAFETY: as above, and no mbuf is out now.
    unsafe { pool.make_pinned_direct() }.expect("direct");
    let table = pool.slot_table().expect("every buffer has its mbuf");
    let (base, _) = pool.pinned_region().unwrap();
    for (i, &m) in table.iter().enumerate() {
        // SAFETY: reading a free mbuf's header fields; nobody holds it (the pool is unused).
        let (addr, flags) = unsafe { ((*m).buf_addr as usize, (*m).ol_flags) };
        assert_eq!(addr, base.as_ptr() as usize + i * usize::from(ELT));
        assert_eq!(flags & sys::RTE_MBUF_F_EXTERNAL, 0);
    }
    let mut dev = up(eal, "net_ring_pmd0", &pool);
    for round in 0..3u32 {
        let frames: Vec<Vec<u8>> =
            (0..BURST as u32).map(|i| common::frame(i + round * 100, 60 + i as usize)).collect();
        let mut burst: Vec<Mbuf> = Vec::new();
        let mut addrs = Vec::new();
        for f in &frames {
            let mut m = pool.alloc().unwrap();
            assert_eq!(m.ol_flags() & sys::RTE_MBUF_F_EXTERNAL, 0);
            assert!(m.set_data(f));
            addrs.push(m.buf_addr() as usize);
            burst.push(m);
        }
        tx_all(&mut dev, &mut burst);
        let mut got = receive_mbufs(&mut dev, frames.len());
        assert_eq!(got.iter().map(|m| m.data().to_vec()).collect::<Vec<_>>(), frames);
        let back: Vec<usize> = got.iter().map(|m| m.buf_addr() as usize).collect();
        assert_eq!(back, addrs, "the same buffers came back: nothing was copied");
        // Freed one by one and in bulk: DPDK's direct path.
        let mut raw: Vec<*mut sys::rte_mbuf> =
            got.split_off(BURST / 2).into_iter().map(Mbuf::into_raw).collect();
        drop(got);
        // SAFETY: the mbufs were received by us and are not used after this.
        unsafe { switchyard_bindings::mbuf::free_bulk(&mut raw) };
        assert_eq!(pool.in_use(), 0);
    }
    dev.close().unwrap();
    assert_eq!(pool.in_use(), 0, "every mbuf is back in the pool");
    for (i, &m) in table.iter().enumerate() {
        // SAFETY: as above (the device is closed, every mbuf is back).
        let (addr, len) = unsafe { ((*m).buf_addr as usize, (*m).buf_len) };
        assert_eq!(addr, base.as_ptr() as usize + i * usize::from(ELT), "buffer {i} stayed with its mbuf");
        assert_eq!(len, ELT);
    }
}
