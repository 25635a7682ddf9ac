//! The buffer layer's tests: pools, caches, buffers and external pools.

use super::*;
use arrayvec::ArrayVec;
use std::ptr::NonNull;
use std::sync::Arc;

/// Where the machine has hugepages (a hugetlbfs mounted and enough of them free), a pool
/// made as the dataplane makes its pools ([`Pool::new`]) is on them: by its own report,
/// and by the kernel's page size for the mapping that holds its buffers. A silent fallback
/// to ordinary pages fails.
#[test]
fn pools_are_on_hugepages_when_the_machine_has_them() {
    let test = "pools_are_on_hugepages_when_the_machine_has_them";
    let count = 1024;
    let bytes = (count * SLOT_SIZE) as u64;
    let huge = match testkit::probe::hugepages(1) {
        Ok(h) if h.free >= bytes.div_ceil(h.page_bytes) => h,
        Ok(h) => {
            let need = bytes.div_ceil(h.page_bytes);
            return testkit::skip(test, &format!("{} free hugepages, fewer than the {need} needed", h.free));
        }
        Err(why) => return testkit::skip(test, &why),
    };
    let pool = Pool::new("huge-check", count).unwrap();
    assert!(pool.on_hugepages(), "the pool fell back to ordinary pages with {huge:?} free");
    let b = pool.alloc().unwrap();
    let (page, hugetlb) = testkit::probe::page_size_at(b.data().as_ptr() as usize).unwrap();
    assert_eq!(page, huge.page_bytes, "the kernel's page size for the pool's mapping");
    assert!(hugetlb, "the pool's mapping is not hugetlb memory");
    // A pool asked for ordinary pages gets them (the probe tells the two apart).
    let plain = Pool::with_hugepages("plain-check", count, false).unwrap();
    let c = plain.alloc().unwrap();
    assert!(!plain.on_hugepages());
    assert_ne!(testkit::probe::page_size_at(c.data().as_ptr() as usize).unwrap().0, huge.page_bytes);
}

#[test]
fn move_front_moves_handles_in_order_and_loses_none() {
    let pool = Pool::new("mv", 256).unwrap();
    let mut cache = pool.cache();
    let frame = |c: &mut PoolCache, i: u8| c.alloc_copy(&[i; 20]).unwrap();
    let firsts = |v: &ArrayVec<PacketBuf, 8>| v.iter().map(|b| b.data()[0]).collect::<Vec<_>>();
    for (from_len, to_len, n) in [(5, 0, 5), (5, 2, 3), (5, 6, 5), (3, 0, 7), (0, 4, 2), (8, 8, 1)] {
        let mut from: ArrayVec<PacketBuf, 8> = (0..from_len).map(|i| frame(&mut cache, i)).collect();
        let mut to: ArrayVec<PacketBuf, 8> = (0..to_len).map(|i| frame(&mut cache, 100 + i)).collect();
        move_front(&mut from, &mut to, n);
        let moved = n.min(usize::from(from_len)).min(8 - usize::from(to_len));
        let want_to: Vec<u8> = (0..to_len).map(|i| 100 + i).chain(0..moved as u8).collect();
        assert_eq!(firsts(&to), want_to, "{from_len} {to_len} {n}");
        assert_eq!(firsts(&from), (moved as u8..from_len).collect::<Vec<_>>(), "{from_len} {to_len} {n}");
        assert_eq!(pool.in_use(), usize::from(from_len) + usize::from(to_len));
        from.drain(..).chain(to.drain(..)).for_each(|b| cache.free(b));
        assert_eq!(pool.in_use(), 0);
    }
}

#[test]
fn handle_is_16_bytes() {
    assert_eq!(std::mem::size_of::<PacketBuf>(), 16);
}

#[test]
fn alloc_free_accounting() {
    let pool = Pool::with_hugepages("t", 300, false).unwrap();
    let mut cache = pool.cache();
    let mut held: Vec<_> = (0..300).map(|_| cache.alloc().unwrap()).collect();
    assert_eq!(pool.in_use(), 300);
    assert!(cache.alloc().is_none());
    for b in held.drain(..150) {
        cache.free(b);
    }
    assert_eq!(pool.in_use(), 150);
    drop(held); // Drop path returns to the shared queue.
    assert_eq!(pool.in_use(), 0);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
    assert!(pool.alloc().is_some());
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn vlan_push_pop_round_trip() {
    let pool = Pool::with_hugepages("t", 4, false).unwrap();
    let mut b = pool.alloc().unwrap();
    let frame: Vec<u8> = (0..60u8).collect();
    b.extend_from_slice(&frame).unwrap();
    b.push_vlan(0x2064).unwrap();
    assert_eq!(b.len(), 64);
    assert_eq!(&b.data()[..12], &frame[..12]);
    assert_eq!(&b.data()[12..16], &[0x81, 0x00, 0x20, 0x64]);
    assert_eq!(&b.data()[16..], &frame[12..]);
    b.pop_vlan().unwrap();
    assert_eq!(b.data(), &frame[..]);
}

#[test]
fn bounds_are_errors() {
    let pool = Pool::with_hugepages("t", 2, false).unwrap();
    let mut b = pool.alloc().unwrap();
    assert!(b.extend_from_slice(&vec![0u8; DATA_ROOM + 1]).is_err());
    assert!(b.extend_from_slice(&vec![0u8; DATA_ROOM]).is_ok());
    assert!(b.extend_from_slice(&[0u8]).is_err());
    b.reset();
    assert!(b.pop_vlan().is_err());
    assert!(b.push_vlan(1).is_err());
    assert!(b.prepend(HEADROOM + 1).is_err());
    assert!(b.prepend(HEADROOM).is_ok());
    assert!(b.trim_front(HEADROOM + 1).is_err());
}

/// prepend_split: the new front and the frame behind it, apart; the frame grown by N; too
/// little headroom an error that changes nothing; at the end of the slot too.
#[test]
fn prepend_split_gives_the_front_and_the_frame() {
    let pool = Pool::with_hugepages("t", 2, false).unwrap();
    let mut b = pool.alloc().unwrap();
    b.extend_from_slice(b"frame").unwrap();
    let (front, rest) = b.prepend_split::<4>().unwrap();
    assert_eq!(rest, b"frame");
    front.copy_from_slice(b"head");
    rest[0] = b'F';
    assert_eq!(b.data(), b"headFrame");
    assert_eq!(b.headroom(), HEADROOM - 4);
    assert!(b.prepend_split::<{ HEADROOM - 3 }>().is_err());
    assert_eq!((b.data(), b.headroom()), (&b"headFrame"[..], HEADROOM - 4));
    let (front, rest) = b.prepend_split::<{ HEADROOM - 4 }>().unwrap();
    assert_eq!((front.len(), &rest[..]), (HEADROOM - 4, &b"headFrame"[..]));
    assert_eq!((b.headroom(), b.len()), (0, HEADROOM + 5));
    // A frame that ends at the slot's end.
    let mut c = pool.alloc().unwrap();
    c.set_len(DATA_ROOM).unwrap();
    let (_, rest) = c.prepend_split::<HEADROOM>().unwrap();
    assert_eq!(rest.len(), DATA_ROOM);
    assert_eq!(c.len(), HEADROOM + DATA_ROOM);
}

/// A toy owner: a Vec of slots and a free list.
struct Toy {
    mem: Box<[u8]>,
    free: std::sync::Mutex<Vec<u32>>,
    count: usize,
}

// SAFETY: the region is the Box, alive as long as Toy; the free list hands out each slot once.
unsafe impl ExternalSlots for Toy {
    fn alloc(&self) -> Option<u32> {
        self.free.lock().unwrap().pop()
    }
    fn free(&self, idx: u32) {
        let mut f = self.free.lock().unwrap();
        assert!(!f.contains(&idx), "slot {idx} freed twice");
        f.push(idx);
    }
    fn in_use(&self) -> usize {
        self.count - self.free.lock().unwrap().len()
    }
}

/// A toy owner of `count` slots, all free, and the external pool over them; the region's
/// base too.
fn toy_pool(name: &str, count: usize) -> (Arc<Toy>, NonNull<u8>, Pool) {
    let mut toy =
        Toy { mem: vec![0u8; count * SLOT_SIZE].into_boxed_slice(), free: Default::default(), count };
    toy.free.get_mut().unwrap().extend((0..count as u32).rev());
    let base = NonNull::new(toy.mem.as_mut_ptr()).unwrap();
    let toy = Arc::new(toy);
    // SAFETY: the region is toy.mem, count slots, kept alive by the Arc the pool holds.
    let ext = unsafe { Pool::external(name, base, count, toy.clone()) }.unwrap();
    (toy, base, ext)
}

#[test]
fn external_pool_gives_slots_back_to_their_owner() {
    let count = 300;
    let (toy, base, ext) = toy_pool("ext", count);
    assert!(ext.is_external());
    let regular = Pool::with_hugepages("reg", 16, false).unwrap();
    let mut worker = regular.cache();
    // The owner hands a slot over with a frame in it (as an RX path would).
    let idx = toy.alloc().unwrap();
    // SAFETY: slot idx is out of the owner's hands and nobody else holds it.
    let mut b = unsafe { ext.adopt(idx, 100, 60) }.unwrap();
    assert_eq!(ext.in_use(), 1);
    assert_eq!((b.headroom(), b.len()), (100, 60));
    b.push_vlan(7).unwrap();
    // SAFETY: the offset stays inside toy.mem (slot idx, below count).
    assert_eq!(b.data().as_ptr(), unsafe { base.as_ptr().add(idx as usize * SLOT_SIZE + 96) });
    // Out-of-range windows and indices are refused.
    // SAFETY: nothing is taken when adopt refuses.
    assert!(unsafe { ext.adopt(0, 2000, 177) }.is_none());
    // SAFETY: as above: an index past the pool is refused, nothing taken.
    assert!(unsafe { ext.adopt(count as u32, 0, 0) }.is_none());
    // SAFETY: a pool that is not external refuses every adoption.
    assert!(unsafe { regular.adopt(0, 0, 0) }.is_none());
    // Freed into a worker cache of another pool: back to the owner.
    worker.free(b);
    assert_eq!(ext.in_use(), 0);
    // release_to hands the slot to the caller; a buffer of another pool comes back.
    let idx = toy.alloc().unwrap();
    // SAFETY: as above.
    let b = unsafe { ext.adopt(idx, 128, 10) }.unwrap();
    assert_eq!(b.release_to(&ext).unwrap(), (idx, 128, 10));
    assert_eq!(ext.in_use(), 1, "the caller holds it now");
    toy.free(idx);
    let r = worker.alloc().unwrap();
    let r = r.release_to(&ext).unwrap_err();
    worker.free(r);
    // Allocation through the pool and a cache of it takes from the owner and gives back.
    let mut c = ext.cache();
    let held: Vec<_> = (0..count).map(|_| c.alloc().unwrap()).collect();
    assert!(c.alloc().is_none() && ext.alloc().is_none());
    assert_eq!(ext.in_use(), count);
    for b in held {
        c.free(b);
    }
    assert_eq!(ext.in_use(), 0, "cached slots are not in use");
    drop(c);
    assert_eq!(toy.in_use(), 0, "a dropped cache gives its slots back to the owner");
    drop(ext);
    assert_eq!(Arc::strong_count(&toy), 1, "the pool let go of its owner");
    drop(worker);
    assert_eq!(regular.in_use(), 0);
}

#[test]
fn adopt_while_stops_at_the_first_refusal_and_at_capacity() {
    // Room for a worker cache's bulk (CACHE_BULK) and the slots handed over.
    let count = 200;
    let (toy, base, ext) = toy_pool("aw", count);
    let adopter = ext.adopter().unwrap();
    assert_eq!(adopter.count(), count);
    // Items: (slot or none, head, len); the window of an item is taken as is.
    type Item = (Option<u32>, u16, u16);
    let window = |(idx, head, len): Item| idx.map(|i| (i, head, len));
    // Slots the owner hands over for the items that are to be adopted.
    let take = |n: usize| (0..n).map(|_| toy.alloc().unwrap()).collect::<Vec<u32>>();
    let cases: [(&[Item], usize, usize); 5] = [
        // (items, buffers already in `out`, how many are adopted)
        (&[(Some(0), 128, 60), (Some(1), 0, 2176), (Some(2), 1, 1)], 0, 3),
        // No window: stops there.
        (&[(Some(0), 128, 60), (None, 0, 0), (Some(2), 1, 1)], 1, 1),
        // A window past the slot's end, an index past the pool: refused, stops there.
        (&[(Some(0), 2000, 177), (Some(1), 0, 1)], 0, 0),
        (&[(Some(0), 0, 1), (Some(count as u32), 0, 1)], 2, 1),
        // Room for two only.
        (&[(Some(0), 0, 1), (Some(1), 0, 2), (Some(2), 0, 3)], 6, 2),
    ];
    for (items, already, adopted) in cases {
        let mut out: ArrayVec<PacketBuf, 8> = ArrayVec::new();
        let mut c = ext.cache();
        out.extend((0..already).map(|_| c.alloc().unwrap()));
        // The items' slots, as the owner hands them over, for those that will be adopted.
        let slots = take(adopted);
        let items: Vec<Item> = items
            .iter()
            .enumerate()
            .map(|(i, &(idx, h, l))| (idx.map(|x| if i < adopted { slots[i] } else { x }), h, l))
            .collect();
        // SAFETY: the slots of the items adopted (the first `adopted`) were taken from the
        // owner above; the others are not taken (adopt_while stops before them).
        let n = unsafe { adopter.adopt_while(&items, &mut out, window) };
        assert_eq!(n, adopted, "{items:?}");
        assert_eq!(out.len(), already + adopted);
        for (b, &(idx, head, len)) in out[already..].iter().zip(&items) {
            let at = b.data().as_ptr() as usize - base.as_ptr() as usize;
            let want = idx.unwrap() as usize * SLOT_SIZE + usize::from(head);
            assert_eq!((at, b.len()), (want, usize::from(len)));
        }
        assert_eq!(ext.in_use(), already + adopted);
        out.drain(..).for_each(|b| c.free(b));
        drop(c);
        assert_eq!(toy.in_use(), 0, "every slot back with its owner");
    }
}

#[test]
fn dropping_the_pool_with_buffers_out_keeps_them_valid() {
    let pool = Pool::with_hugepages("t", 2, false).unwrap();
    let mut b = pool.alloc().unwrap();
    drop(pool);
    b.extend_from_slice(&[1, 2, 3]).unwrap();
    assert_eq!(b.data(), &[1, 2, 3]);
}
