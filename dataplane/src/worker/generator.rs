//! The frame generator of testpmd's `txonly` and `flowgen` modes: each poll, a burst of UDP
//! frames per owned port, sent out of that port. Invariant: every generated frame is
//! `frame_len` bytes (clamped to 60..=DATA_ROOM) and a well-formed IPv4/UDP frame.

use super::modes::port_mac;
use super::thread::Worker;
use super::FwdMode;
use crate::buffer::DATA_ROOM;
use crate::switch::PortId;
use crate::wire::ip::{
    IPV4_HEADER_LEN, PROTO_UDP, V4_CSUM, V4_DST, V4_PROTO, V4_SRC, V4_TOTAL_LEN, V4_TTL, V4_VER_IHL,
};
use crate::wire::{EtherType, MacAddr, ETH_SRC_OFFSET, MAC_ADDRS_LEN, VLAN_TAG_LEN, VLAN_TCI_OFFSET};

/// The frames `txonly` and `flowgen` send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxGen {
    /// Frame length without FCS (at least 60).
    pub frame_len: usize,
    /// Source/destination MAC pairs to cycle over (flowgen).
    pub macs: u32,
    /// UDP flows (source ports) to cycle over (flowgen).
    pub flows: u32,
    /// An 802.1Q tag to put on generated frames.
    pub vlan: Option<u16>,
}

impl Default for TxGen {
    fn default() -> Self {
        TxGen { frame_len: 64, macs: 1, flows: 1, vlan: None }
    }
}

impl Worker {
    /// One generated burst of `burst_size` frames per owned port, sent out of that port.
    /// Returns the frames generated and the frames sent.
    pub(super) fn poll_generate(&mut self, mode: FwdMode, burst_size: usize) -> (usize, usize) {
        let (mut got, mut sent) = (0, 0);
        for k in 0..self.rx.len() {
            let port = self.rx[k].port;
            got += self.generate(port, burst_size, mode);
            sent += self.send_direct(port);
        }
        (got, sent)
    }

    /// Fills the burst with generated frames for `port`.
    fn generate(&mut self, port: PortId, n: usize, mode: FwdMode) -> usize {
        let g = &self.plan.gen;
        let len = g.frame_len.clamp(60, DATA_ROOM);
        let egress = self.plan.egress.get(usize::from(port)).copied().unwrap_or(port);
        let mut made = 0;
        for _ in 0..n {
            let Some(mut b) = self.cache.alloc() else { break };
            let seq = self.flow_seq;
            self.flow_seq = self.flow_seq.wrapping_add(1);
            let (mac_i, flow_i) = if mode == FwdMode::FlowGen {
                ((seq % u64::from(g.macs.max(1))) as u32, (seq % u64::from(g.flows.max(1))) as u32)
            } else {
                (0, 0)
            };
            let frame = build_udp_frame(port_mac(port), port_mac(egress), mac_i, flow_i, g.vlan, len);
            // Cannot fail: len <= DATA_ROOM.
            let _ = b.extend_from_slice(&frame[..len]);
            self.burst.push(b);
            made += 1;
        }
        made
    }
}

/// A UDP/IPv4 frame of `len` bytes: MACs varied by `mac_i`, UDP source port by `flow_i`.
fn build_udp_frame(
    src: MacAddr,
    dst: MacAddr,
    mac_i: u32,
    flow_i: u32,
    vlan: Option<u16>,
    len: usize,
) -> [u8; 2048] {
    let mut f = [0u8; 2048];
    let mut s = src.0;
    let mut d = dst.0;
    let vary = |m: &mut [u8; 6]| {
        let v = u32::from_be_bytes([m[2], m[3], m[4], m[5]]) ^ (mac_i << 16);
        m[2..6].copy_from_slice(&v.to_be_bytes());
    };
    vary(&mut s);
    vary(&mut d);
    f[..ETH_SRC_OFFSET].copy_from_slice(&d);
    f[ETH_SRC_OFFSET..MAC_ADDRS_LEN].copy_from_slice(&s);
    let mut o = MAC_ADDRS_LEN;
    if let Some(v) = vlan {
        f[o..o + 2].copy_from_slice(&EtherType::VLAN.to_be_bytes());
        f[VLAN_TCI_OFFSET..VLAN_TCI_OFFSET + 2].copy_from_slice(&(v & 0x0fff).to_be_bytes());
        o += VLAN_TAG_LEN;
    }
    f[o..o + 2].copy_from_slice(&EtherType::IPV4.to_be_bytes());
    let ip = o + 2;
    let ip_len = (len.saturating_sub(ip)).max(28) as u16;
    f[ip + V4_VER_IHL] = 0x45;
    f[ip + V4_TOTAL_LEN..ip + V4_TOTAL_LEN + 2].copy_from_slice(&ip_len.to_be_bytes());
    f[ip + V4_TTL] = 64;
    f[ip + V4_PROTO] = PROTO_UDP;
    f[ip + V4_SRC..ip + V4_DST].copy_from_slice(&[198, 18, 0, 1]);
    f[ip + V4_DST..ip + IPV4_HEADER_LEN].copy_from_slice(&[198, 19, 0, 1]);
    let mut sum = 0u32;
    for i in (ip..ip + IPV4_HEADER_LEN).step_by(2) {
        sum += u32::from(u16::from_be_bytes([f[i], f[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[ip + V4_CSUM..ip + V4_CSUM + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = ip + IPV4_HEADER_LEN;
    f[udp..udp + 2].copy_from_slice(&(1024u16.wrapping_add(flow_i as u16)).to_be_bytes());
    f[udp + 2..udp + 4].copy_from_slice(&1024u16.to_be_bytes());
    f[udp + 4..udp + 6].copy_from_slice(&(ip_len - IPV4_HEADER_LEN as u16).to_be_bytes());
    f
}
