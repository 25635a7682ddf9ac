//! Two switches compiled from one configuration, run side by side: every burst untraced
//! through the first (where the plain path takes it, when it applies) and traced through the
//! second (a traced burst always takes the general stages), then everything the two did
//! compared. Shared by the tests that check the plain path against the general stages; it
//! needs the test's crate root to have `mod collect` (support/collect.rs).

use crate::collect::{queues, Sent};
use proptest::prelude::*;
use switchyard_dataplane::buffer::PoolCache;
use switchyard_dataplane::fdb::MacTable;
use switchyard_dataplane::pipeline::{plain_bursts_on_this_thread, process_burst, TxBatches};
use switchyard_dataplane::port::{Burst, TxQueue};
use switchyard_dataplane::SwitchConfig;

type Queues = Vec<Option<Box<dyn TxQueue>>>;

pub struct Twin<'a> {
    plain: &'a SwitchConfig,
    general: &'a SwitchConfig,
    ptx: TxBatches,
    gtx: TxBatches,
    pout: Sent,
    gout: Sent,
    pq: Queues,
    gq: Queues,
    traces: Vec<switchyard_dataplane::pipeline::FrameTrace>,
}

impl<'a> Twin<'a> {
    /// `plain` and `general`: the same configuration compiled twice (and taught the same MACs).
    pub fn new(plain: &'a SwitchConfig, general: &'a SwitchConfig) -> Twin<'a> {
        let (pout, gout) = (Sent::default(), Sent::default());
        Twin {
            plain,
            general,
            ptx: TxBatches::new(plain.port_slots()),
            gtx: TxBatches::new(general.port_slots()),
            pq: queues(plain.port_slots(), &pout),
            gq: queues(general.port_slots(), &gout),
            pout,
            gout,
            traces: Vec::new(),
        }
    }

    /// One burst from `port` at `now` through both switches, `make` building it for each (the
    /// same frames twice): whether the untraced run took the plain path. A traced run that
    /// took it fails the case (the general stages would not have been compared).
    pub fn run(
        &mut self,
        port: u16,
        now: u32,
        cache: &mut PoolCache,
        mut make: impl FnMut(&mut PoolCache) -> Burst,
    ) -> Result<bool, TestCaseError> {
        let mut took = false;
        for (sw, tx, trace) in [(self.plain, &mut self.ptx, false), (self.general, &mut self.gtx, true)] {
            let mut burst = make(cache);
            self.traces.clear();
            let before = plain_bursts_on_this_thread();
            process_burst(sw, port, &mut burst, now, cache, tx, trace.then_some(&mut self.traces));
            let plain = plain_bursts_on_this_thread() != before;
            if trace {
                prop_assert!(!plain, "a traced burst took the plain path");
            } else {
                took = plain;
            }
        }
        Ok(took)
    }

    /// Sends what both switches queued.
    pub fn drain(&mut self, cache: &mut PoolCache) {
        self.ptx.flush(self.plain, &mut self.pq, cache);
        self.gtx.flush(self.general, &mut self.gq, cache);
    }

    /// The end of a case: the frames queued on each port, then (all sent) the frames every
    /// port sent in order, every port's counters and every bridge's MAC table must be the same
    /// both ways.
    pub fn finish(mut self, cache: &mut PoolCache) -> Result<(), TestCaseError> {
        let queued =
            |sw: &SwitchConfig, tx: &TxBatches| sw.port_ids().map(|p| tx.queued(p)).collect::<Vec<_>>();
        prop_assert_eq!(queued(self.plain, &self.ptx), queued(self.general, &self.gtx));
        self.drain(cache);
        prop_assert_eq!(&*self.pout.lock().unwrap(), &*self.gout.lock().unwrap());
        for p in self.plain.port_ids() {
            prop_assert_eq!(
                self.plain.port(p).unwrap().stats.snapshot(),
                self.general.port(p).unwrap().stats.snapshot(),
                "port {}",
                p
            );
        }
        let sorted = |t: &MacTable| {
            let mut e = t.entries(999);
            e.sort_by_key(|e| (e.vlan, e.mac.0));
            e
        };
        for (a, b) in self.plain.bridges.iter().zip(self.general.bridges.iter()) {
            prop_assert_eq!(sorted(&a.table), sorted(&b.table));
        }
        Ok(())
    }
}
