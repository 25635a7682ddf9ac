//! Arbitrary bytes as a received tunnel datagram. Decapsulation (VXLAN and Geneve, the
//! tunnel port's VNI equal to the datagram's or not) must not panic; when it accepts, the inner
//! frame lies inside the datagram and is at least an Ethernet header long, and the buffer
//! holds exactly those bytes; when it refuses, the reason is one of the tunnel's. Every buffer
//! goes back to the pool.
//!
//! Input format: [selector: u8][datagram bytes]; selector bit 0: Geneve (else VXLAN), bit 1:
//! the port's VNI is the datagram's (else 5001).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::tunnel::{TunnelCodec, TunnelKind};
use switchyard_dataplane::wire::geneve::GenevePacket;
use switchyard_dataplane::wire::vxlan::VxlanPacket;
use switchyard_dataplane::{DropReason, Pool};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, dgram)) = data.split_first() else { return };
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
