#![cfg(feature = "dpdk")]
//! The pinned-extbuf pool on hugepages that are not physically adjacent, with IOVA as physical
//! addresses (a VM, or a host without an IOMMU): the pool must start and every buffer's IOVA
//! must be the physical address of its bytes.
//!
//! How the pages are made non-adjacent: the kernel hands out free hugepages last freed, first
//! taken (its free list is a stack). The test maps 24 hugepages of a hugetlbfs file, reads
//! their physical frames (/proc/self/pagemap), and frees every other one in frame order
//! while holding the rest, so that no two freed pages are adjacent; the pool's memzone,
//! reserved right after, gets those pages. The test checks that this worked (the region's
//! pages, read again from pagemap, include non-adjacent neighbours) before it checks the pool:
//! what it shows is the pool over a region known to be physically split, every buffer's
//! `buf_iova` equal to the physical address of its first byte and its last byte at
//! `buf_iova + len - 1`, independently of DPDK's own translation, and frames through a
//! port. (net_ring does not DMA: that the addresses are right is checked against pagemap, not
//! by a device.)

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_bindings::{sys, Eal, EalOptions, EthDev, Mbuf, Mempool};

const PAGE: usize = 2 << 20;
/// Hugepages taken to fragment the free list; half are given back.
const TAKEN: usize = 24;
/// Slot size as switchyard's (128 bytes of headroom, 2048 of data room).
const ELT: u16 = 2176;
/// 4095 slots of 2176 bytes: about 4.3 pages, so the region spans at least five pages.
const MBUFS: u32 = 4095;

/// Physical address of the byte at `va` of this process (root: pagemap shows frame numbers).
fn phys(pagemap: &mut File, va: usize) -> Option<u64> {
    let mut e = [0u8; 8];
    pagemap.seek(SeekFrom::Start((va / 4096 * 8) as u64)).ok()?;
    pagemap.read_exact(&mut e).ok()?;
    let e = u64::from_le_bytes(e);
    let pfn = e & ((1 << 55) - 1);
    (e >> 63 == 1 && pfn != 0).then_some(pfn * 4096 + (va % 4096) as u64)
}

/// A hugetlbfs file holding every other page (in physical order) of `TAKEN` it took; the
/// others are back on the kernel's free list. Dropping it gives the held pages back.
struct Fragmenter {
    _file: File,
}

impl Fragmenter {
    fn new(dir: &str) -> Result<Fragmenter, String> {
        let path = format!("{dir}/switchyard-frag-{}", std::process::id());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        // The pages live as long as the descriptor: nothing to clean up on any exit path.
        std::fs::remove_file(&path).map_err(|e| format!("{path}: {e}"))?;
        let len = TAKEN * PAGE;
        let fd = file.as_raw_fd();
        // SAFETY: a fresh shared mapping of our own file; nothing else refers to it.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of {TAKEN} hugepages: {}", std::io::Error::last_os_error()));
        }
        let mut pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        let mut frames = Vec::new();
        for i in 0..TAKEN {
            let va = p as usize + i * PAGE;
            // SAFETY: va is inside the mapping made above; the write faults the page in.
            unsafe { std::ptr::write_volatile(va as *mut u8, 1) };
            frames.push((phys(&mut pagemap, va).ok_or("pagemap shows no frame (not root?)")?, i));
        }
        // SAFETY: the mapping made above, used no more.
        unsafe { libc::munmap(p, len) };
        frames.sort();
        // Free the 1st, 3rd, 5th... in physical order: a held page lies between any two freed.
        for &(_, i) in frames.iter().step_by(2) {
            // SAFETY: fallocate on our own descriptor; punching a hole frees that page.
            let r = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (i * PAGE) as libc::off_t,
                    PAGE as libc::off_t,
                )
            };
            if r != 0 {
                return Err(format!("punching page {i}: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(Fragmenter { _file: file })
    }
}

fn hugetlbfs_2m() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let two_mb = !f.get(3)?.contains("pagesize=") || f[3].contains("pagesize=2M");
        (f.get(2) == Some(&"hugetlbfs") && two_mb).then(|| f[1].to_string())
    })
}

#[test]
fn pinned_pool_starts_on_physically_scattered_hugepages() {
    let test = testkit::current_test();
    let env = testkit::probe::root().and_then(|()| testkit::probe::hugepages(TAKEN as u64 + 16));
    let (Ok(hp), Some(dir)) = (env.clone(), hugetlbfs_2m()) else {
        testkit::skip(&test, &format!("needs root and free 2 MiB hugepages: {env:?}"));
        return;
    };
    assert_eq!(hp.page_bytes as usize, PAGE, "the default hugepage size is 2 MiB here");
    let options = EalOptions {
        no_huge: Some(false),
        extra_args: vec!["--iova-mode=pa".into()],
        log_level: std::env::var("SWITCHYARD_DPDK_LOG").ok(),
        ..EalOptions::default()
    };
    let eal: &Eal = match Eal::init(options) {
        Ok(eal) => eal,
        Err(e) => return testkit::fail_or_skip(&test, "Eal::init", &e, testkit::probe::testpmd()),
    };
    // SAFETY: a plain query of EAL's mode, after init.
    assert_eq!(unsafe { sys::shim::sy_rte_eal_iova_is_pa() }, 1, "EAL runs with IOVA as PA");

    let _held = Fragmenter::new(&dir).expect("fragment the hugepage free list");
    let pool =
        Arc::new(Mempool::pinned_extbuf(eal, "frag", MBUFS, 32, ELT).expect("pool on scattered pages"));
    let (base, elt) = pool.pinned_region().unwrap();
    let slots = pool.region_slots().unwrap() as usize;
    let pieces = pool.iova_pieces().unwrap();
    let base = base.as_ptr() as usize;
    let end = base + slots * usize::from(elt);

    // The region is physically split: some page is not followed by its physical neighbour.
    let mut pagemap = File::open("/proc/self/pagemap").unwrap();
    let mut splits = 0;
    let mut page = base & !(PAGE - 1);
    while page + PAGE < end {
        let (a, b) = (phys(&mut pagemap, page).unwrap(), phys(&mut pagemap, page + PAGE).unwrap());
        splits += usize::from(b != a + PAGE as u64);
        page += PAGE;
    }
    eprintln!("region {base:#x}+{slots} slots: {splits} physical splits, {pieces} pieces registered");
    assert!(splits > 0, "the setup failed to scatter the pool's pages (another process took them?)");
    // One piece per physically contiguous run (a run too short for a whole slot has none).
    assert!((splits..=splits + 1).contains(&(pieces as usize)), "{pieces} pieces for {splits} splits");

    // Every mbuf's buffer: its slot, IOVA = physical address, physically contiguous.
    let table = pool.slot_table().expect("every mbuf has its slot");
    assert_eq!(table.len(), slots);
    let mut with_mbuf = 0;
    let last_used = table.iter().rposition(|m| !m.is_null()).unwrap();
    for (i, &m) in table.iter().enumerate() {
        let addr = base + i * usize::from(ELT);
        if m.is_null() {
            // Only a slot across a physical split goes without an mbuf (or the spare ones
            // after the last used slot, reserved when a first try lost slots to splits).
            let straddles = phys(&mut pagemap, addr + usize::from(ELT) - 1).unwrap()
                != phys(&mut pagemap, addr).unwrap() + u64::from(ELT) - 1;
            assert!(straddles || i > last_used, "slot {i} is whole and has no mbuf");
            continue;
        }
        with_mbuf += 1;
        // SAFETY: reading a free mbuf's header fields; nobody holds it (the pool is unused).
        let (buf, iova, len) = unsafe { ((*m).buf_addr as usize, (*m).buf_iova, (*m).buf_len) };
        assert_eq!(buf, addr);
        assert_eq!(len, ELT);
        let first = phys(&mut pagemap, addr).unwrap();
        let last = phys(&mut pagemap, addr + usize::from(ELT) - 1).unwrap();
        assert_eq!(iova, first, "slot {i}: buf_iova is the physical address of its first byte");
        assert_eq!(last, first + u64::from(ELT) - 1, "slot {i}: the buffer is physically contiguous");
    }
    assert_eq!(with_mbuf, MBUFS as usize);

    // A port on the pool moves frames through buffers on the scattered pages.
    let mut dev = EthDev::probe(eal, "net_ring_frag0").expect("probe");
    dev.configure(1, 1).unwrap();
    dev.setup_rx_queue(0, 512, &pool).unwrap();
    dev.setup_tx_queue(0, 512).unwrap();
    dev.start().unwrap();
    let frames: Vec<Vec<u8>> = (0..32u32).map(|i| common::frame(i, 60 + i as usize * 40)).collect();
    let mut burst: Vec<Mbuf> = frames
        .iter()
        .map(|f| {
            let mut m = pool.alloc().unwrap();
            assert!(m.set_data(f));
            m
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !burst.is_empty() {
        dev.tx_mbufs(0, &mut burst);
        assert!(Instant::now() < deadline, "tx stuck");
    }
    let mut got = Vec::new();
    let mut out = Vec::new();
    while got.len() < frames.len() && Instant::now() < deadline {
        dev.rx_mbufs(0, &mut out, 32);
        got.extend(out.drain(..).map(|m| m.data().to_vec()));
    }
    assert_eq!(got, frames);
    dev.close().unwrap();
    assert_eq!(pool.in_use(), 0);
}
