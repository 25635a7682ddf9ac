#![cfg(feature = "dpdk")]
//! EAL init (under --no-huge), the once-per-process rule, and the layout of
//! the committed bindings against the installed headers.

mod common;

use switchyard_bindings::{eal, sys, Eal, EalOptions, Error};

#[test]
fn eal_inits_once_and_is_shared() {
    let Some(e) = common::eal() else { return };
    assert!(e.args().iter().any(|a| a == "--no-huge"), "{:?}", e.args());
    assert!(e.args().iter().any(|a| a == "--no-pci"), "{:?}", e.args());
    // Same options: the same EAL comes back.
    let again = Eal::init(common::options()).expect("second init with the same options");
    assert!(std::ptr::eq(e, again));
    assert!(Eal::get().is_some());
    // Other options: a clear error, not a second rte_eal_init.
    let other = EalOptions { memory_mb: Some(128), ..common::options() };
    match Eal::init(other) {
        Err(Error::EalOptionsDiffer { .. }) => {}
        r => panic!("expected EalOptionsDiffer, got {r:?}"),
    }
    assert!(eal::version().starts_with("DPDK 22.11"), "{}", eal::version());
}

#[test]
fn pmd_path_exists() {
    let p = eal::pmd_path();
    assert!(p.is_dir(), "EAL's driver directory {} is missing", p.display());
}

#[test]
fn default_options_are_private_and_quiet() {
    let a = EalOptions::default().to_args();
    assert!(a.iter().any(|x| x.starts_with("--file-prefix=switchyard-")));
    assert!(a.iter().any(|x| x == "--no-pci"));
    assert!(a.iter().any(|x| x.starts_with("--log-level=")));
    assert!(a.iter().any(|x| x.starts_with("--lcores=0@")));
    let b = EalOptions { no_huge: Some(false), allow_pci: vec!["0000:3b:02.1".into()], ..Default::default() }
        .to_args();
    assert!(b.iter().any(|x| x == "--in-memory"));
    assert!(b.iter().any(|x| x == "--allow=0000:3b:02.1"));
    assert!(!b.iter().any(|x| x == "--no-pci"));
}

#[test]
fn thread_registration_gives_an_lcore() {
    let Some(e) = common::eal() else { return };
    std::thread::spawn(move || {
        assert_eq!(eal::lcore_id(), u32::MAX, "a new thread is not an EAL thread");
        let id = e.register_thread().expect("register");
        assert_ne!(id, u32::MAX);
        e.unregister_thread();
    })
    .join()
    .unwrap();
}

/// The committed bindgen output against what the C compiler sees now.
#[test]
fn layout_matches_the_installed_headers() {
    use std::mem::{offset_of, size_of};
    let c = |i| {
        // SAFETY: sy_layout is a pure function of its argument.
        unsafe { sys::shim::sy_layout(i) }
    };
    let rust = [
        size_of::<sys::rte_mbuf>(),
        offset_of!(sys::rte_mbuf, buf_addr),
        offset_of!(sys::rte_mbuf, data_off),
        offset_of!(sys::rte_mbuf, refcnt),
        offset_of!(sys::rte_mbuf, nb_segs),
        offset_of!(sys::rte_mbuf, port),
        offset_of!(sys::rte_mbuf, pkt_len),
        offset_of!(sys::rte_mbuf, data_len),
        offset_of!(sys::rte_mbuf, buf_len),
        offset_of!(sys::rte_mbuf, pool),
        offset_of!(sys::rte_mbuf, next),
        size_of::<sys::rte_eth_stats>(),
        size_of::<sys::rte_eth_link>(),
        size_of::<sys::rte_eth_conf>(),
        size_of::<sys::rte_eth_dev_info>(),
        size_of::<sys::rte_eth_rxconf>(),
        size_of::<sys::rte_eth_txconf>(),
        size_of::<sys::rte_ether_addr>(),
        offset_of!(sys::rte_mbuf, ol_flags),
        offset_of!(sys::rte_mbuf, vlan_tci),
        sys::RTE_MBUF_F_EXTERNAL as usize,
    ];
    for (i, r) in rust.iter().enumerate() {
        assert_eq!(*r, c(i as u32), "layout item {i} differs between bindgen and C");
    }
}
