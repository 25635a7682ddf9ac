//! `Mbuf::data` builds a slice from the mbuf's `data_off`/`data_len` as a driver
//! left them; a window past the buffer must not become a slice past it.
#![cfg(feature = "dpdk")]

mod common;

use switchyard_bindings::Mempool;

#[test]
fn data_stays_inside_the_buffer_whatever_the_mbuf_says() {
    let Some(eal) = common::eal() else { return };
    let pool = Mempool::new(eal, "s15x", 255, 0, Mempool::DEFAULT_DATA_ROOM).unwrap();
    let m = pool.alloc().unwrap();
    // What a driver with a bug could hand over (an mbuf from rx_burst that no adopt check
    // looked at): a data length past the end of the buffer.
    // SAFETY: the mbuf is ours; a plain field write.
    unsafe { (*m.as_ptr()).data_len = u16::MAX };
    let end = m.headroom() + m.data().len();
    assert!(end <= usize::from(m.buf_len()), "data() reaches byte {end} of a {}-byte buffer", m.buf_len());
    assert!(!m.window_fits());
    assert_eq!(m.tailroom(), 0);
}
