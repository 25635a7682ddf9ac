//! testpmd's forwarding modes that pass received frames on (`io`, `mac`, `macswap`) or count
//! and free them (`rxonly`). Invariant: a frame shorter than two MAC addresses is forwarded
//! unchanged; nothing here reads past a frame's length.

use super::thread::{stage_mark, Worker};
use super::FwdMode;
use crate::buffer::PoolCache;
use crate::cpu;
use crate::port::Burst;
use crate::switch::PortId;
use crate::wire::{MacAddr, ETH_SRC_OFFSET, MAC_ADDRS_LEN};

/// The MAC address the `mac` mode and generators give port `p` (as testpmd's defaults).
pub fn port_mac(p: PortId) -> MacAddr {
    let b = p.to_be_bytes();
    MacAddr([0x02, 0, 0, 0, b[0], b[1]])
}

impl Worker {
    /// One poll of every RX queue in a testpmd mode other than the generators: each burst is
    /// counted on its port, rewritten as `mode` says and sent to the port's egress port.
    /// Returns the frames received and the frames sent.
    pub(super) fn poll_testpmd<const STAGES: bool>(
        &mut self,
        mode: FwdMode,
        burst_size: usize,
    ) -> (usize, usize) {
        let (mut got, mut sent) = (0, 0);
        for k in 0..self.rx.len() {
            let Some((port, n, t0, t1)) = self.rx_timed::<STAGES>(k, burst_size) else { continue };
            got += n;
            if let Some(spec) = self.plan.switch.port(port) {
                let bytes: usize = self.burst.iter().map(|b| b.len()).sum();
                spec.stats.add_rx(n as u64, bytes as u64);
            }
            let egress = self.plan.egress.get(usize::from(port)).copied().unwrap_or(port);
            let to_send = rewrite(mode, &mut self.burst, &mut self.cache, port, egress);
            let t2 = stage_mark::<STAGES>();
            if to_send {
                sent += self.send_direct(egress);
            }
            if STAGES {
                self.stages.add_marks([t0, t1, t2, cpu::rdtsc()]);
            }
        }
        (got, sent)
    }
}

/// Applies `mode` to a burst received on `port` whose frames go to `egress`. False when the
/// mode consumed the burst (`rxonly` frees it), true when it is to be sent.
fn rewrite(mode: FwdMode, burst: &mut Burst, cache: &mut PoolCache, port: PortId, egress: PortId) -> bool {
    match mode {
        FwdMode::RxOnly => {
            for b in burst.drain(..) {
                cache.free(b);
            }
            return false;
        }
        FwdMode::Mac => {
            let (src, dst) = (port_mac(egress), port_mac(port));
            for b in burst.iter_mut() {
                let d = b.data_mut();
                if d.len() >= MAC_ADDRS_LEN {
                    d[..ETH_SRC_OFFSET].copy_from_slice(&dst.0);
                    d[ETH_SRC_OFFSET..MAC_ADDRS_LEN].copy_from_slice(&src.0);
                }
            }
        }
        FwdMode::MacSwap => {
            for b in burst.iter_mut() {
                let d = b.data_mut();
                if d.len() >= MAC_ADDRS_LEN {
                    let mut a = [0u8; 6];
                    a.copy_from_slice(&d[..ETH_SRC_OFFSET]);
                    d.copy_within(ETH_SRC_OFFSET..MAC_ADDRS_LEN, 0);
                    d[ETH_SRC_OFFSET..MAC_ADDRS_LEN].copy_from_slice(&a);
                }
            }
        }
        FwdMode::Io | FwdMode::Switch | FwdMode::TxOnly | FwdMode::FlowGen => {}
    }
    true
}
