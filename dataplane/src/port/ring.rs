//! The in-memory ring port: two bounded lock-free queues, one towards the switch and one
//! from it. A [`RingPeer`] is the other end (a test, a load generator, or another ring port
//! with the queues crossed), like DPDK's net_ring. Each queue's slots are allocated by its
//! first frame, so an idle ring port holds no frame slots.

use super::{Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue};
use crate::buffer::{PacketBuf, PoolCache};
use crate::switch::DropReason;
use crossbeam_queue::ArrayQueue;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A bounded queue whose slots are allocated by the first push: a ring port that never
/// carries a frame (a node agent's VM port before its guest sends) costs a few words, not
/// `depth` slots. The queue is boxed: its head and tail sit on cache lines of their own (256
/// bytes with the rest), which an idle port need not hold.
struct LazyQueue {
    depth: usize,
    q: std::sync::OnceLock<Box<ArrayQueue<PacketBuf>>>,
}

impl LazyQueue {
    fn new(depth: usize) -> LazyQueue {
        LazyQueue { depth: depth.max(1), q: std::sync::OnceLock::new() }
    }

    fn push(&self, b: PacketBuf) -> Result<(), PacketBuf> {
        self.q.get_or_init(|| Box::new(ArrayQueue::new(self.depth))).push(b)
    }

    fn pop(&self) -> Option<PacketBuf> {
        self.q.get()?.pop()
    }

    fn len(&self) -> usize {
        self.q.get().map_or(0, |q| q.len())
    }

    fn is_empty(&self) -> bool {
        self.q.get().is_none_or(|q| q.is_empty())
    }
}

struct RingShared {
    name: String,
    to_switch: LazyQueue,
    from_switch: LazyQueue,
    link_up: AtomicBool,
    rx_claims: RxClaims,
    /// Set by an idle worker before it sleeps on `wake`; the peer signals `wake` once.
    armed: AtomicBool,
    /// Made on first use, so that ports no worker sleeps on hold no descriptor.
    wake: std::sync::OnceLock<Option<EventFd>>,
}

/// The switch's side of a ring port.
#[derive(Clone)]
pub struct RingPort {
    shared: Arc<RingShared>,
}

/// The far side of a ring port.
#[derive(Clone)]
pub struct RingPeer {
    shared: Arc<RingShared>,
}

impl RingPort {
    /// A ring port whose queues each hold `depth` frames.
    pub fn new(name: &str, depth: usize) -> (RingPort, RingPeer) {
        let shared = Arc::new(RingShared {
            name: name.to_string(),
            to_switch: LazyQueue::new(depth),
            from_switch: LazyQueue::new(depth),
            link_up: AtomicBool::new(true),
            rx_claims: RxClaims::new(name, 1),
            armed: AtomicBool::new(false),
            wake: std::sync::OnceLock::new(),
        });
        (RingPort { shared: shared.clone() }, RingPeer { shared })
    }
}

impl RingPeer {
    /// Hands a frame to the switch; gives it back when the ring is full.
    pub fn inject(&self, buf: PacketBuf) -> Result<(), PacketBuf> {
        self.shared.to_switch.push(buf)?;
        if self.shared.armed.swap(false, Ordering::SeqCst) {
            if let Some(Some(w)) = self.shared.wake.get() {
                let _ = w.write(1);
            }
        }
        Ok(())
    }

    /// Takes a frame the switch sent.
    pub fn collect(&self) -> Option<PacketBuf> {
        self.shared.from_switch.pop()
    }

    /// Frames waiting for the switch to receive.
    pub fn pending_to_switch(&self) -> usize {
        self.shared.to_switch.len()
    }

    pub fn set_link(&self, up: bool) {
        self.shared.link_up.store(up, Ordering::Relaxed);
    }
}

struct RingRx {
    shared: Arc<RingShared>,
}

impl Drop for RingRx {
    fn drop(&mut self) {
        self.shared.rx_claims.release(0);
    }
}

impl RxQueue for RingRx {
    fn rx_burst(&mut self, _rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let room = max.min(out.remaining_capacity());
        let mut n = 0;
        while n < room {
            match self.shared.to_switch.pop() {
                Some(b) => {
                    out.push(b);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.shared
            .wake
            .get_or_init(|| EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).ok())
            .as_ref()
            .map(|w| w.as_fd())
    }

    fn arm_wakeup(&mut self) -> bool {
        self.shared.armed.store(true, Ordering::SeqCst);
        if self.shared.to_switch.is_empty() {
            return true;
        }
        self.shared.armed.store(false, Ordering::SeqCst);
        false
    }

    fn disarm_wakeup(&mut self) {
        self.shared.armed.store(false, Ordering::SeqCst);
        if let Some(Some(w)) = self.shared.wake.get() {
            let _ = w.read();
        }
    }
}

struct RingTx {
    shared: Arc<RingShared>,
}

impl TxQueue for RingTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        if !self.shared.link_up.load(Ordering::Relaxed) {
            drops.add(DropReason::PortDown, pkts.len() as u32);
            for b in pkts.drain(..) {
                cache.free(b);
            }
            return 0;
        }
        let mut sent = 0;
        for b in pkts.drain(..) {
            match self.shared.from_switch.push(b) {
                Ok(()) => sent += 1,
                Err(b) => {
                    drops.add(DropReason::TxFull, 1);
                    cache.free(b);
                }
            }
        }
        sent
    }
}

impl PortBackend for RingPort {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.shared.rx_claims.claim(q)?;
        Ok(Box::new(RingRx { shared: self.shared.clone() }))
    }

    fn open_tx(&self, _q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        Ok(Box::new(RingTx { shared: self.shared.clone() }))
    }

    fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Pool;

    /// Frames cross in both directions in order; a full ring drops the overflow as `tx_full`,
    /// a link set down drops everything as `port_down`, and an RX queue can be opened once.
    #[test]
    fn frames_cross_in_order_and_overflow_is_counted() {
        let pool = Pool::new("ring-test", 64).expect("pool");
        let mut cache = pool.cache();
        let (port, peer) = RingPort::new("r", 2);
        let mut rx = port.open_rx(0).expect("first RX queue");
        assert!(port.open_rx(0).is_err(), "queue 0 is taken");
        let mut tx = port.open_tx(0).expect("TX queue");
        let mut tally = DropTally::default();

        for i in 1..=2u8 {
            peer.inject(cache.alloc_copy(&[i; 60]).expect("buffer")).expect("room");
        }
        let mut burst = Burst::new();
        assert_eq!(rx.rx_burst(RxCtx::new(&mut cache, &mut tally), &mut burst, 32), 2);
        assert_eq!(burst.iter().map(|b| b.data()[0]).collect::<Vec<_>>(), [1, 2]);

        burst.push(cache.alloc_copy(&[3; 60]).expect("buffer"));
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut tally), 2, "depth 2: the third does not fit");
        assert_eq!(tally.get(DropReason::TxFull), 1);
        assert_eq!(peer.collect().map(|b| b.data()[0]), Some(1));
        assert_eq!(peer.collect().map(|b| b.data()[0]), Some(2));
        assert!(peer.collect().is_none());

        peer.set_link(false);
        assert!(!port.link_up());
        burst.push(cache.alloc_copy(&[4; 60]).expect("buffer"));
        assert_eq!(tx.tx_burst(&mut burst, &mut cache, &mut tally), 0);
        assert_eq!(tally.get(DropReason::PortDown), 1);
        drop(rx);
        assert!(port.open_rx(0).is_ok(), "a dropped queue frees its claim");
        assert_eq!(pool.in_use(), 0, "every buffer returned");
    }
}
