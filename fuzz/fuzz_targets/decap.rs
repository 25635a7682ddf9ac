//! Arbitrary bytes as a received tunnel datagram. Decapsulation (VXLAN and Geneve, the
//! tunnel port's VNI equal to the datagram's or not) must not panic; when it accepts, the inner
//! frame lies inside the datagram and is at least an Ethernet header long, and the buffer
//! holds exactly those bytes; when it refuses, the reason is one of the tunnel's. Every buffer
//! goes back to the pool.
//!
//! The same bytes as an uplink frame of the fast path: sorting it (`underlay::classify`, for
//! an IPv4 and an IPv6 tunnel address) and the outer-header view must not panic, and a tunnel
//! packet's payload lies inside the frame. And the flow hash reads any frame.
//!
//! Input format: [selector: u8][datagram bytes]; selector bit 0: Geneve (else VXLAN), bit 1:
//! the port's VNI is the datagram's (else 5001).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use switchyard_dataplane::tunnel::{flow_hash, source_port, TunnelCodec, TunnelKind};
use switchyard_dataplane::underlay::{classify, UplinkFrame};
use switchyard_dataplane::wire::outer::OuterPacket;
use switchyard_dataplane::wire::geneve::GenevePacket;
use switchyard_dataplane::wire::vxlan::VxlanPacket;
use switchyard_dataplane::{DropReason, Pool};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, dgram)) = data.split_first() else { return };
    assert!(source_port(flow_hash(dgram)) >= 49152);
    if let Ok(p) = OuterPacket::new_checked(dgram) {
        assert!(p.payload_offset() + p.payload_len() <= dgram.len());
        let _ = (p.src_mac(), p.dst_mac(), p.src_ip(), p.dst_ip(), p.src_port(), p.dst_port());
    }
    for local in [IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)), IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1))] {
        if let UplinkFrame::Tunnel { payload, len, .. } = classify(dgram, local, 4789) {
            assert!(payload + len <= dgram.len());
        }
    }
    let kind = if sel & 1 != 0 { TunnelKind::Geneve } else { TunnelKind::Vxlan };
    // The views' accessors, whatever they accepted.
    let wire_vni = match kind {
        TunnelKind::Vxlan => VxlanPacket::new_checked(dgram).ok().map(|p| (p.vni(), p.flags(), p.payload().len()).0),
        TunnelKind::Geneve => GenevePacket::new_checked(dgram)
            .ok()
            .map(|p| (p.vni(), p.oam(), p.critical(), p.protocol(), p.payload().len(), p.options_len()).0),
    };
    let vni = if sel & 2 != 0 { wire_vni.unwrap_or(5001) } else { 5001 };
    let codec = TunnelCodec { kind, vni };
    let pool = Pool::with_hugepages("fuzz", 4, false).expect("pool");
    let mut cache = pool.cache();
    let Some(mut buf) = cache.alloc_copy(dgram) else { return };
    match codec.decap(dgram) {
        Ok(off) => {
            assert!(off <= dgram.len() && dgram.len() - off >= 14);
            assert_eq!(wire_vni, Some(vni));
            codec.decap_buf(&mut buf).expect("decap_buf agrees with decap");
            assert_eq!(buf.data(), &dgram[off..]);
        }
        Err(r) => {
            assert!(matches!(
                r,
                DropReason::TunnelTruncated
                    | DropReason::TunnelBadHeader
                    | DropReason::TunnelWrongVni
                    | DropReason::TunnelInnerRunt
                    | DropReason::GeneveBadOptions
            ));
            assert_eq!(codec.decap_buf(&mut buf), Err(r));
        }
    }
    cache.free(buf);
    drop(cache);
    assert_eq!(pool.in_use(), 0);
});
