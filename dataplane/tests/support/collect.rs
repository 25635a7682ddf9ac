//! A TX queue that keeps what the pipeline gives it (shared by the tests that run the plain
//! or fast paths against the general stages and compare the frames out).

use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::port::{Burst, DropTally, TxQueue};

/// Frames sent, as (egress port, bytes), in order.
pub type Frames = Vec<(u16, Vec<u8>)>;
/// The frames every port's [`Collect`] was given, shared.
pub type Sent = std::sync::Arc<std::sync::Mutex<Frames>>;

/// Port `port`'s TX queue: every frame it is given is appended to `out` and its buffer freed.
pub struct Collect {
    pub port: u16,
    pub out: Sent,
}

impl TxQueue for Collect {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, _drops: &mut DropTally) -> usize {
        let n = pkts.len();
        let mut out = self.out.lock().expect("lock");
        for b in pkts.drain(..) {
            out.push((self.port, b.data().to_vec()));
            cache.free(b);
        }
        n
    }
}

/// One [`Collect`] per port slot (`slots`: the switch's `port_slots()`), all keeping into
/// `out`: the TX queues `TxBatches::flush` takes.
pub fn queues(slots: usize, out: &Sent) -> Vec<Option<Box<dyn TxQueue>>> {
    (0..slots as u16)
        .map(|port| Some(Box::new(Collect { port, out: out.clone() }) as Box<dyn TxQueue>))
        .collect()
}
