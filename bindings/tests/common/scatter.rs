//! Hugepages whose physical addresses are not adjacent, for the tests of the pinned-extbuf
//! pool (bindings/tests/fragmented.rs, and ports/tests/dpdk_scattered.rs, which includes this
//! file by path). The kernel hands out free hugepages last freed, first taken (its free list is
//! a stack): [`Fragmenter`] maps [`TAKEN`] hugepages of a hugetlbfs file, reads their physical
//! frames (/proc/self/pagemap, root), and frees every other one in frame order while holding
//! the rest, so that no two freed pages are adjacent; what DPDK reserves right after gets them.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use switchyard_bindings::{sys, Eal, EalOptions};

/// The hugepage size these helpers work with.
pub const PAGE: usize = 2 << 20;
/// Hugepages taken to fragment the free list; half are given back.
pub const TAKEN: usize = 24;

/// Physical address of the byte at `va` of this process (root: pagemap shows frame numbers).
pub fn phys(pagemap: &mut File, va: usize) -> Option<u64> {
    let mut e = [0u8; 8];
    pagemap.seek(SeekFrom::Start((va / 4096 * 8) as u64)).ok()?;
    pagemap.read_exact(&mut e).ok()?;
    let e = u64::from_le_bytes(e);
    let pfn = e & ((1 << 55) - 1);
    (e >> 63 == 1 && pfn != 0).then_some(pfn * 4096 + (va % 4096) as u64)
}

/// A hugetlbfs file holding every other page (in physical order) of `TAKEN` it took; the
/// others are back on the kernel's free list. Dropping it gives the held pages back.
pub struct Fragmenter {
    _file: File,
}

impl Fragmenter {
    pub fn new(dir: &str) -> Result<Fragmenter, String> {
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

/// The mount point of a 2 MiB hugetlbfs.
pub fn hugetlbfs_2m() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let two_mb = !f.get(3)?.contains("pagesize=") || f[3].contains("pagesize=2M");
        (f.get(2) == Some(&"hugetlbfs") && two_mb).then(|| f[1].to_string())
    })
}

/// This test process's EAL on 2 MiB hugepages with IOVA as physical addresses, and the
/// hugetlbfs to scatter pages in; `None` (the skip reported) without root or free hugepages.
/// An EAL failure where DPDK runs fails the test.
pub fn pa_eal_on_hugepages() -> Option<(&'static Eal, String)> {
    let test = testkit::current_test();
    let env = testkit::probe::root().and_then(|()| testkit::probe::hugepages(TAKEN as u64 + 16));
    let (Ok(hp), Some(dir)) = (env.clone(), hugetlbfs_2m()) else {
        testkit::skip(&test, &format!("needs root and free 2 MiB hugepages: {env:?}"));
        return None;
    };
    assert_eq!(hp.page_bytes as usize, PAGE, "the default hugepage size is 2 MiB here");
    let options = EalOptions {
        no_huge: Some(false),
        extra_args: vec!["--iova-mode=pa".into()],
        log_level: std::env::var("SWITCHYARD_DPDK_LOG").ok(),
        ..EalOptions::default()
    };
    let eal = match Eal::init(options) {
        Ok(eal) => eal,
        Err(e) => {
            testkit::fail_or_skip(&test, "Eal::init", &e, testkit::probe::testpmd());
            return None;
        }
    };
    // SAFETY: a plain query of EAL's mode, after init.
    assert_eq!(unsafe { sys::shim::sy_rte_eal_iova_is_pa() }, 1, "EAL runs with IOVA as PA");
    Some((eal, dir))
}
