//! Which worker polls which RX queue. One function places them for every caller: `pmd`
//! (explicit `--rxq-affinity` entries, then round-robin, as testpmd) and `run` (each queue
//! stays on the worker it had, new queues go to the least loaded worker).
//!
//! Invariant: every RX queue of every port is placed on exactly one worker; entries placed
//! explicitly come first in their worker's list, in the order given, then the others in port
//! and queue order.

use crate::port::PortBackend;
use crate::switch::PortId;
use std::collections::HashSet;
use std::sync::Arc;

/// How the RX queues that are not placed explicitly are dealt to the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deal {
    /// The k-th such queue goes to worker k mod n (testpmd's default).
    RoundRobin,
    /// Each goes to the worker that has the fewest queues so far, the first of them on a tie.
    /// With nothing placed explicitly this deals exactly as [`Deal::RoundRobin`].
    LeastLoaded,
}

/// An explicit placement that cannot be honoured; the message names the entry as
/// `PORT:QUEUE@WORKER`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{port}:{queue}@{worker}: no port {port}")]
    NoPort { port: PortId, queue: u16, worker: usize },
    #[error("{port}:{queue}@{worker}: port {port} has {queues} RX queue(s)")]
    NoQueue { port: PortId, queue: u16, worker: usize, queues: u16 },
    #[error("{port}:{queue}@{worker}: there are {workers} worker(s)")]
    NoWorker { port: PortId, queue: u16, worker: usize, workers: usize },
    #[error("{port}:{queue}@{worker}: queue placed twice")]
    Twice { port: PortId, queue: u16, worker: usize },
}

/// Per worker (`workers`, at least one), the (port, RX queue) pairs it polls: the `pinned`
/// entries (port, RX queue, worker) first, then every other RX queue of every port (`ports`
/// by [`PortId`]) dealt as `deal` says.
pub fn place_rx(
    ports: &[Option<Arc<dyn PortBackend>>],
    workers: usize,
    pinned: &[(PortId, u16, usize)],
    deal: Deal,
) -> Result<Vec<Vec<(PortId, u16)>>, PlacementError> {
    let w = workers.max(1);
    let mut rx = vec![Vec::new(); w];
    let mut placed = HashSet::with_capacity(pinned.len());
    for &(port, queue, worker) in pinned {
        let Some(Some(b)) = ports.get(usize::from(port)) else {
            return Err(PlacementError::NoPort { port, queue, worker });
        };
        let queues = b.rx_queue_count();
        if queue >= queues {
            return Err(PlacementError::NoQueue { port, queue, worker, queues });
        }
        if worker >= w {
            return Err(PlacementError::NoWorker { port, queue, worker, workers: w });
        }
        if !placed.insert((port, queue)) {
            return Err(PlacementError::Twice { port, queue, worker });
        }
        rx[worker].push((port, queue));
    }
    deal_rest(ports, &placed, &mut rx, deal);
    Ok(rx)
}

/// [`place_rx`] with nothing placed explicitly (which cannot fail).
pub fn deal_all(
    ports: &[Option<Arc<dyn PortBackend>>],
    workers: usize,
    deal: Deal,
) -> Vec<Vec<(PortId, u16)>> {
    let mut rx = vec![Vec::new(); workers.max(1)];
    deal_rest(ports, &HashSet::new(), &mut rx, deal);
    rx
}

/// Deals every RX queue of `ports` that is not in `placed` onto `rx` (one list per worker).
fn deal_rest(
    ports: &[Option<Arc<dyn PortBackend>>],
    placed: &HashSet<(PortId, u16)>,
    rx: &mut [Vec<(PortId, u16)>],
    deal: Deal,
) {
    let w = rx.len();
    let mut k = 0;
    for (id, b) in ports.iter().enumerate() {
        let Some(b) = b else { continue };
        for q in 0..b.rx_queue_count() {
            let pq = (id as PortId, q);
            if placed.contains(&pq) {
                continue;
            }
            let wi = match deal {
                Deal::RoundRobin => k % w,
                Deal::LeastLoaded => (0..w).min_by_key(|&i| rx[i].len()).unwrap_or(0),
            };
            rx[wi].push(pq);
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::{PortError, RxQueue, TxQueue};

    /// A port with a number of RX queues: placement reads nothing else.
    struct Queues(u16);

    impl PortBackend for Queues {
        fn name(&self) -> &str {
            "queues"
        }
        fn rx_queue_count(&self) -> u16 {
            self.0
        }
        fn open_rx(&self, queue: u16) -> Result<Box<dyn RxQueue>, PortError> {
            Err(PortError::NoSuchQueue { port: "queues".into(), queue, count: 0 })
        }
        fn open_tx(&self, queue: u16) -> Result<Box<dyn TxQueue>, PortError> {
            Err(PortError::NoSuchQueue { port: "queues".into(), queue, count: 0 })
        }
    }

    fn ports(queues: &[Option<u16>]) -> Vec<Option<Arc<dyn PortBackend>>> {
        queues.iter().map(|q| q.map(|q| Arc::new(Queues(q)) as Arc<dyn PortBackend>)).collect()
    }

    #[test]
    fn round_robin_and_least_loaded_deal_alike_without_pins() {
        let p = ports(&[Some(3), None, Some(1), Some(2)]);
        let rr = deal_all(&p, 2, Deal::RoundRobin);
        assert_eq!(rr, vec![vec![(0, 0), (0, 2), (3, 0)], vec![(0, 1), (2, 0), (3, 1)]]);
        assert_eq!(deal_all(&p, 2, Deal::LeastLoaded), rr);
        // No worker asked for: one.
        assert_eq!(
            deal_all(&p, 0, Deal::RoundRobin),
            vec![vec![(0, 0), (0, 1), (0, 2), (2, 0), (3, 0), (3, 1)]]
        );
    }

    #[test]
    fn pinned_first_then_dealt() {
        let p = ports(&[Some(2), Some(1)]);
        let pinned = [(1, 0, 0)];
        // Round-robin counts only the queues it deals; least loaded counts the pinned one.
        assert_eq!(
            place_rx(&p, 2, &pinned, Deal::RoundRobin).unwrap(),
            vec![vec![(1, 0), (0, 0)], vec![(0, 1)]]
        );
        assert_eq!(
            place_rx(&p, 2, &pinned, Deal::LeastLoaded).unwrap(),
            vec![vec![(1, 0), (0, 1)], vec![(0, 0)]]
        );
    }

    #[test]
    fn errors_name_the_entry() {
        let p = ports(&[Some(1), None]);
        let e = |pinned: &[(PortId, u16, usize)]| {
            place_rx(&p, 2, pinned, Deal::RoundRobin).unwrap_err().to_string()
        };
        assert_eq!(e(&[(1, 0, 0)]), "1:0@0: no port 1");
        assert_eq!(e(&[(5, 0, 0)]), "5:0@0: no port 5");
        assert_eq!(e(&[(0, 1, 0)]), "0:1@0: port 0 has 1 RX queue(s)");
        assert_eq!(e(&[(0, 0, 2)]), "0:0@2: there are 2 worker(s)");
        assert_eq!(e(&[(0, 0, 0), (0, 0, 1)]), "0:0@1: queue placed twice");
    }
}
