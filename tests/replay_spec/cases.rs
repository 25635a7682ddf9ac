//! The replay cases. Each expectation is written from the rules (docs/semantics.md: the VLAN
//! modes, forwarding and the replay contract), with the reasoning next to the frame it explains.
//!
//! Conventions: A, B, C ... are hosts 02:00:00:00:00:0a, 0b, 0c ...; X, Y, Z are other hosts
//! (02:..:01, 02, 03); S is a static MAC. Frames are 1 ms apart from t = 1 s unless a case sets
//! the time. `pkt(dst, src, tag, text)` is a 60-byte test frame (64 when tagged); the same call
//! with another tag gives the same frame re-tagged, so an expected frame reads as "this frame,
//! with that tag".

use super::*;

const A: Mac = m(0x0a);
const B: Mac = m(0x0b);
const C: Mac = m(0x0c);
const D: Mac = m(0x0d);
const E: Mac = m(0x0e);
const F: Mac = m(0x0f);
const X: Mac = m(0x01);
const Y: Mac = m(0x02);
const Z: Mac = m(0x03);
const S: Mac = m(0x55);
const UNKNOWN: Mac = m(0x99);

pub fn all() -> Vec<Case> {
    vec![
        access_untagged_in(),
        access_priority_tagged_in(),
        access_drops_tagged(),
        access_egress(),
        trunk_list_ingress(),
        trunk_list_egress(),
        trunk_all_vlans(),
        trunk_vlan0_priority_tag(),
        native_tagged_ingress(),
        native_tagged_egress(),
        native_untagged_ingress(),
        native_untagged_egress(),
        native_modes_all_vlans(),
        pcp_dei_preserved(),
        vid_4095_rejected(),
        default_vlan_modes(),
        qinq_ethertype_and_double_tag(),
        learn_then_unicast(),
        flood_bcast_mcast_unknown(),
        dst_is_ingress(),
        no_egress_port(),
        mac_move(),
        aging_expires(),
        aging_default_300s(),
        static_mac_every_vlan(),
        static_mac_conflict(),
        static_mac_never_ages(),
        mac_limit(),
        mac_limit_move(),
        fdb_table_full(),
        spoof_src_mac(),
        spoof_arp_sha(),
        spoof_nd_lladdr(),
        spoof_arp_in_vlan(),
        spoof_malformed_arp(),
        reserved_dst_mac(),
        invalid_src_mac(),
        runt_frames(),
        truncated_vlan_tag(),
        oversize_frames(),
        max_frame_tag_push(),
        truncated_capture(),
        two_bridges_isolated(),
        vlan_isolation_one_bridge(),
        merge_order_and_ties(),
        port_names_with_slash(),
        mixed_node(),
        policy_stateful_udp(),
    ]
}

/// docs/policy.md: a port isolated both ways whose egress allows UDP 53 to one peer.
fn policy_stateful_udp() -> Case {
    let ip = |n: u8| [10, 0, 0, n];
    let udp = |dst: Mac, src: Mac, s: u8, d: u8, sp: u16, dp: u16, text: &str| {
        eth(dst, src, None, 0x0800, &ipv4_udp(ip(s), ip(d), sp, dp, text))
    };
    let mut c = Case::new(
        "policy_stateful_udp",
        "vm-a (10.0.0.1, IP spoof filter) is isolated both ways; its egress allows UDP 53 to          10.0.0.2 (vm-b, no policy). Its query to vm-b passes and starts a tracked connection, so          vm-b's answer passes a's deny-all ingress; a datagram vm-b sends to another of a's ports          is refused by that ingress (counted on vm-b); a's datagram to port 80 is refused by its          egress; one from a source address not its own is spoofed. ARP always passes the policy.",
        vec![bridge(
            "br0",
            vec![
                access("vm-a", 10)
                    .statics(&[A])
                    .with_yaml("allowed_ips: [10.0.0.1]")
                    .with_yaml(
                        "policy: {ingress: {rules: []}, egress: {rules: [{name: dns, peers: [{cidr: 10.0.0.2/32}], ports: [{protocol: UDP, port: 53}]}]}}",
                    ),
                access("vm-b", 10).statics(&[B]),
            ],
        )],
    );
    c.send("vm-a", udp(B, A, 1, 2, 5000, 53, "query"));
    c.out("vm-b", udp(B, A, 1, 2, 5000, 53, "query"));
    c.send("vm-b", udp(A, B, 2, 1, 53, 5000, "answer"));
    c.out("vm-a", udp(A, B, 2, 1, 53, 5000, "answer"));
    c.send("vm-b", udp(A, B, 2, 1, 53, 6000, "unsolicited")).drop("vm-b", "policy_ingress_denied");
    c.send("vm-a", udp(B, A, 1, 2, 5000, 80, "not dns")).drop("vm-a", "policy_egress_denied");
    c.send("vm-a", udp(B, A, 9, 2, 5000, 53, "spoofed")).drop("vm-a", "spoofed_src_ip");
    c.send("vm-a", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c.out("vm-b", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c
}

fn access_untagged_in() -> Case {
    let mut c = Case::new(
        "access_untagged_in",
        "An untagged frame entering an access port (VLAN 10) belongs to VLAN 10: it leaves the other \
         access port of VLAN 10 untagged and both trunks carrying VLAN 10 with a pushed tag \
         (81 00 00 0a: PCP 0, VID 10), and never reaches the access port of VLAN 20. Broadcast and \
         unknown unicast flood alike.",
        vec![bridge(
            "br0",
            vec![
                access("a1", 10),
                access("a2", 10),
                access("a3", 20),
                trunk("t1", &[10, 20]),
                trunk("t2", &[]),
            ],
        )],
    );
    c.send("a1", pkt(BCAST, A, None, "bcast"));
    c.out("a2", pkt(BCAST, A, None, "bcast"))
        .out("t1", pkt(BCAST, A, v(10), "bcast"))
        .out("t2", pkt(BCAST, A, v(10), "bcast"));
    c.send("a1", pkt(UNKNOWN, A, None, "unknown unicast"));
    c.out("a2", pkt(UNKNOWN, A, None, "unknown unicast"))
        .out("t1", pkt(UNKNOWN, A, v(10), "unknown unicast"))
        .out("t2", pkt(UNKNOWN, A, v(10), "unknown unicast"));
    c.count("a1", "flooded", 2);
    c
}

fn access_priority_tagged_in() -> Case {
    let mut c = Case::new(
        "access_priority_tagged_in",
        "A priority-tagged frame (VID 0) on an access port counts as untagged and enters the port's \
         VLAN 10. Leaving an access port it is untagged (the priority tag removed); leaving a trunk the \
         tag stays with its PCP and DEI and gets VID 10.",
        vec![bridge("br0", vec![access("a1", 10), access("a2", 10), trunk("t1", &[])])],
    );
    c.send("a1", pkt(BCAST, A, pv(5, 0), "prio 5"));
    c.out("a2", pkt(BCAST, A, None, "prio 5")).out("t1", pkt(BCAST, A, pv(5, 10), "prio 5"));
    c.send("a1", pkt(BCAST, A, pdv(3, true, 0), "prio 3 dei"));
    c.out("a2", pkt(BCAST, A, None, "prio 3 dei")).out("t1", pkt(BCAST, A, pdv(3, true, 10), "prio 3 dei"));
    c
}

fn access_drops_tagged() -> Case {
    let mut c = Case::new(
        "access_drops_tagged",
        "An access port (VLAN 10) drops every frame tagged with a VID other than 0, even VID 10 \
         (vlan_not_allowed), and learns nothing from them: a later frame to their source MAC is \
         unknown unicast and floods.",
        vec![bridge("br0", vec![access("a1", 10), access("a2", 10)])],
    );
    c.send("a1", pkt(BCAST, A, v(10), "tagged 10")).drop("a1", "vlan_not_allowed");
    c.send("a1", pkt(BCAST, A, pv(2, 20), "tagged 20")).drop("a1", "vlan_not_allowed");
    c.send("a2", pkt(A, B, None, "to A"));
    c.out("a1", pkt(A, B, None, "to A"));
    c.count("a2", "flooded", 1);
    c.bridge_count("br0", "fdb_entries", 1);
    c
}

fn access_egress() -> Case {
    let mut c = Case::new(
        "access_egress",
        "Frames from a trunk reach an access port only in the port's own VLAN, and leave it \
         untagged (PCP dropped with the tag). Untagged frames on the trunk are VLAN 0 and a frame \
         in VLAN 30 has no other port carrying its VLAN: both are dropped as no_egress_port.",
        vec![bridge("br0", vec![trunk("t0", &[]), access("a10", 10), access("a20", 20), access("a10b", 10)])],
    );
    c.send("t0", pkt(BCAST, A, v(10), "vlan 10"));
    c.out("a10", pkt(BCAST, A, None, "vlan 10")).out("a10b", pkt(BCAST, A, None, "vlan 10"));
    c.send("t0", pkt(BCAST, A, pv(6, 20), "vlan 20 pcp 6"));
    c.out("a20", pkt(BCAST, A, None, "vlan 20 pcp 6"));
    c.send("t0", pkt(BCAST, A, None, "untagged")).drop("t0", "no_egress_port");
    c.send("t0", pkt(BCAST, A, v(30), "vlan 30")).drop("t0", "no_egress_port");
    c.count("t0", "flooded", 2);
    c
}

fn trunk_list_ingress() -> Case {
    let mut c = Case::new(
        "trunk_list_ingress",
        "A trunk of VLANs [10, 20] accepts frames tagged 10 or 20 and drops frames tagged with any \
         other VID, and untagged or priority-tagged frames (VLAN 0 is not in its list), as \
         vlan_not_allowed.",
        vec![bridge("br0", vec![trunk("t1", &[10, 20]), trunk("t2", &[]), access("a10", 10)])],
    );
    c.send("t1", pkt(BCAST, A, v(10), "vlan 10"));
    c.out("t2", pkt(BCAST, A, v(10), "vlan 10")).out("a10", pkt(BCAST, A, None, "vlan 10"));
    c.send("t1", pkt(BCAST, A, pv(4, 20), "vlan 20"));
    c.out("t2", pkt(BCAST, A, pv(4, 20), "vlan 20"));
    c.send("t1", pkt(BCAST, A, v(30), "vlan 30")).drop("t1", "vlan_not_allowed");
    c.send("t1", pkt(BCAST, A, None, "untagged")).drop("t1", "vlan_not_allowed");
    c.send("t1", pkt(BCAST, A, pv(3, 0), "priority")).drop("t1", "vlan_not_allowed");
    c.send("t1", pkt(BCAST, A, v(4094), "vlan 4094")).drop("t1", "vlan_not_allowed");
    c
}

fn trunk_list_egress() -> Case {
    let mut c = Case::new(
        "trunk_list_egress",
        "Frames from a trunk of all VLANs leave a trunk only in the VLANs it lists, tagged and \
         unchanged; a trunk listing VLAN 0 gets untagged frames (VLAN 0) untagged. VLAN 40 is \
         carried by no other port: no_egress_port.",
        vec![bridge("br0", vec![trunk("t0", &[]), trunk("t1", &[10, 20]), trunk("t2", &[0, 30])])],
    );
    c.send("t0", pkt(BCAST, A, v(10), "vlan 10"));
    c.out("t1", pkt(BCAST, A, v(10), "vlan 10"));
    c.send("t0", pkt(BCAST, A, pv(7, 20), "vlan 20"));
    c.out("t1", pkt(BCAST, A, pv(7, 20), "vlan 20"));
    c.send("t0", pkt(BCAST, A, v(30), "vlan 30"));
    c.out("t2", pkt(BCAST, A, v(30), "vlan 30"));
    c.send("t0", pkt(BCAST, A, None, "untagged"));
    c.out("t2", pkt(BCAST, A, None, "untagged"));
    c.send("t0", pkt(BCAST, A, v(40), "vlan 40")).drop("t0", "no_egress_port");
    c.count("t0", "flooded", 4);
    c
}

fn trunk_all_vlans() -> Case {
    let mut c = Case::new(
        "trunk_all_vlans",
        "A trunk without `trunks` and one with `trunks: []` both carry every VLAN, 0 included: \
         tagged frames of VLANs 1, 100 and 4094 pass unchanged in both directions, and an untagged \
         frame (VLAN 0) leaves untagged.",
        vec![bridge("br0", vec![trunk("t1", &[]), trunk("t2", &[]).with_trunks(&[])])],
    );
    for vid in [1u16, 100, 4094] {
        let text = format!("vlan {vid}");
        c.send("t1", pkt(BCAST, A, pv(1, vid), &text));
        c.out("t2", pkt(BCAST, A, pv(1, vid), &text));
    }
    c.send("t1", pkt(BCAST, A, None, "untagged"));
    c.out("t2", pkt(BCAST, A, None, "untagged"));
    c.send("t2", pkt(BCAST, B, v(2), "vlan 2 back"));
    c.out("t1", pkt(BCAST, B, v(2), "vlan 2 back"));
    c
}

fn trunk_vlan0_priority_tag() -> Case {
    let mut c = Case::new(
        "trunk_vlan0_priority_tag",
        "On a trunk, untagged and priority-tagged frames are in VLAN 0. VLAN 0 leaves every trunk \
         untagged, so the priority tag is removed; a trunk whose list lacks 0 drops them \
         (vlan_not_allowed), and access ports never carry VLAN 0.",
        vec![bridge(
            "br0",
            vec![trunk("t0", &[]), trunk("t1", &[0, 10]), access("a10", 10), trunk("t2", &[10])],
        )],
    );
    c.send("t0", pkt(BCAST, A, pv(3, 0), "prio from t0"));
    c.out("t1", pkt(BCAST, A, None, "prio from t0"));
    c.send("t1", pkt(BCAST, B, pdv(5, true, 0), "prio from t1"));
    c.out("t0", pkt(BCAST, B, None, "prio from t1"));
    c.send("t1", pkt(BCAST, B, None, "untagged from t1"));
    c.out("t0", pkt(BCAST, B, None, "untagged from t1"));
    c.send("t2", pkt(BCAST, C, pv(1, 0), "prio from t2")).drop("t2", "vlan_not_allowed");
    c
}

fn native_ingress(name: &'static str, mode: &str) -> Case {
    let n1 = if mode == "native-tagged" {
        native_tagged("n1", 10, &[20])
    } else {
        native_untagged("n1", 10, &[20])
    };
    let mut c = Case::new(
        name,
        &format!(
            "Ingress of a {mode} port (tag 10, trunks [20]): untagged and priority-tagged frames \
             enter VLAN 10 (the priority tag keeps its PCP when it leaves a trunk, now with VID 10), \
             frames tagged 10 or 20 are accepted, VLAN 30 is dropped (vlan_not_allowed)."
        ),
        vec![bridge("br0", vec![n1, trunk("t2", &[]), access("a10", 10)])],
    );
    c.send("n1", pkt(BCAST, A, None, "untagged"));
    c.out("t2", pkt(BCAST, A, v(10), "untagged")).out("a10", pkt(BCAST, A, None, "untagged"));
    c.send("n1", pkt(BCAST, A, pv(6, 0), "priority"));
    c.out("t2", pkt(BCAST, A, pv(6, 10), "priority")).out("a10", pkt(BCAST, A, None, "priority"));
    c.send("n1", pkt(BCAST, A, pv(1, 10), "tagged 10"));
    c.out("t2", pkt(BCAST, A, pv(1, 10), "tagged 10")).out("a10", pkt(BCAST, A, None, "tagged 10"));
    c.send("n1", pkt(BCAST, A, pv(2, 20), "tagged 20"));
    c.out("t2", pkt(BCAST, A, pv(2, 20), "tagged 20"));
    c.send("n1", pkt(BCAST, A, v(30), "tagged 30")).drop("n1", "vlan_not_allowed");
    c
}

fn native_tagged_ingress() -> Case {
    native_ingress("native_tagged_ingress", "native-tagged")
}

fn native_untagged_ingress() -> Case {
    native_ingress("native_untagged_ingress", "native-untagged")
}

fn native_tagged_egress() -> Case {
    let mut c = Case::new(
        "native_tagged_egress",
        "Egress of a native-tagged port (tag 10, trunks [20]): VLANs 10 and 20 leave it tagged (an \
         existing tag unchanged, an untagged frame from an access port gets 81 00 00 0a); VLAN 30 \
         and VLAN 0 are not carried by it, and with no other port carrying them they are dropped \
         as no_egress_port.",
        vec![bridge("br0", vec![trunk("t0", &[]), native_tagged("n1", 10, &[20]), access("a10", 10)])],
    );
    c.send("t0", pkt(BCAST, A, pv(4, 10), "vlan 10"));
    c.out("n1", pkt(BCAST, A, pv(4, 10), "vlan 10")).out("a10", pkt(BCAST, A, None, "vlan 10"));
    c.send("t0", pkt(BCAST, A, v(20), "vlan 20"));
    c.out("n1", pkt(BCAST, A, v(20), "vlan 20"));
    c.send("t0", pkt(BCAST, A, v(30), "vlan 30")).drop("t0", "no_egress_port");
    c.send("t0", pkt(BCAST, A, None, "vlan 0")).drop("t0", "no_egress_port");
    c.send("a10", pkt(BCAST, B, None, "from access"));
    c.out("t0", pkt(BCAST, B, v(10), "from access")).out("n1", pkt(BCAST, B, v(10), "from access"));
    c
}

fn native_untagged_egress() -> Case {
    let mut c = Case::new(
        "native_untagged_egress",
        "Egress of a native-untagged port (tag 10, trunks [20]): its native VLAN 10 leaves untagged \
         (the tag removed, whatever its PCP), VLAN 20 leaves tagged and unchanged, VLANs 30 and 0 \
         are not carried (no other port carries them: no_egress_port).",
        vec![bridge("br0", vec![trunk("t0", &[]), native_untagged("n1", 10, &[20]), access("a10", 10)])],
    );
    c.send("t0", pkt(BCAST, A, pv(4, 10), "vlan 10"));
    c.out("n1", pkt(BCAST, A, None, "vlan 10")).out("a10", pkt(BCAST, A, None, "vlan 10"));
    c.send("t0", pkt(BCAST, A, pv(3, 20), "vlan 20"));
    c.out("n1", pkt(BCAST, A, pv(3, 20), "vlan 20"));
    c.send("t0", pkt(BCAST, A, v(30), "vlan 30")).drop("t0", "no_egress_port");
    c.send("t0", pkt(BCAST, A, None, "vlan 0")).drop("t0", "no_egress_port");
    c.send("a10", pkt(BCAST, B, None, "from access"));
    c.out("t0", pkt(BCAST, B, v(10), "from access")).out("n1", pkt(BCAST, B, None, "from access"));
    c
}

fn native_modes_all_vlans() -> Case {
    let mut c = Case::new(
        "native_modes_all_vlans",
        "Native ports without `trunks` trunk every VLAN (as in OVS): VLAN 30 enters and leaves them \
         tagged. The native VLAN 10 leaves the native-untagged port untagged and the native-tagged \
         port tagged; an untagged frame entering the native-untagged port is in VLAN 10.",
        vec![bridge(
            "br0",
            vec![native_untagged("n1", 10, &[]), trunk("t0", &[]), native_tagged("n2", 10, &[])],
        )],
    );
    c.send("n1", pkt(BCAST, A, v(30), "vlan 30 from n1"));
    c.out("t0", pkt(BCAST, A, v(30), "vlan 30 from n1")).out("n2", pkt(BCAST, A, v(30), "vlan 30 from n1"));
    c.send("t0", pkt(BCAST, B, pv(2, 30), "vlan 30 from t0"));
    c.out("n1", pkt(BCAST, B, pv(2, 30), "vlan 30 from t0"))
        .out("n2", pkt(BCAST, B, pv(2, 30), "vlan 30 from t0"));
    c.send("t0", pkt(BCAST, B, pv(5, 10), "vlan 10 from t0"));
    c.out("n1", pkt(BCAST, B, None, "vlan 10 from t0"))
        .out("n2", pkt(BCAST, B, pv(5, 10), "vlan 10 from t0"));
    c.send("n1", pkt(BCAST, A, None, "untagged from n1"));
    c.out("t0", pkt(BCAST, A, v(10), "untagged from n1")).out("n2", pkt(BCAST, A, v(10), "untagged from n1"));
    c
}

fn pcp_dei_preserved() -> Case {
    let mut c = Case::new(
        "pcp_dei_preserved",
        "A tag that stays keeps its PCP and DEI and gets the new VID: priority tags entering an \
         access port (VLAN 10) or a native-tagged port (VLAN 20) leave tagged ports with their \
         PCP/DEI and the port's VLAN. A tag pushed on an untagged frame has PCP 0 and DEI 0; a tag \
         leaving an access port is removed along with its PCP.",
        vec![bridge("br0", vec![access("a1", 10), native_tagged("n1", 20, &[10]), trunk("t0", &[])])],
    );
    c.send("a1", pkt(BCAST, A, pdv(7, true, 0), "p7 dei from a1"));
    c.out("n1", pkt(BCAST, A, pdv(7, true, 10), "p7 dei from a1"))
        .out("t0", pkt(BCAST, A, pdv(7, true, 10), "p7 dei from a1"));
    c.send("n1", pkt(BCAST, B, pdv(5, true, 0), "p5 dei from n1"));
    c.out("t0", pkt(BCAST, B, pdv(5, true, 20), "p5 dei from n1"));
    c.send("t0", pkt(BCAST, C, pdv(2, true, 10), "p2 dei from t0"));
    c.out("a1", pkt(BCAST, C, None, "p2 dei from t0"))
        .out("n1", pkt(BCAST, C, pdv(2, true, 10), "p2 dei from t0"));
    c.send("a1", pkt(BCAST, A, None, "untagged from a1"));
    c.out("n1", pkt(BCAST, A, v(10), "untagged from a1")).out("t0", pkt(BCAST, A, v(10), "untagged from a1"));
    c
}

fn vid_4095_rejected() -> Case {
    let mut c = Case::new(
        "vid_4095_rejected",
        "VID 4095 is reserved and never accepted, not even by trunks of all VLANs or native ports \
         trunking every VLAN (vlan_not_allowed); VID 4094 passes.",
        vec![bridge(
            "br0",
            vec![
                trunk("t0", &[]),
                native_tagged("n1", 10, &[]),
                native_untagged("n2", 20, &[]),
                access("a1", 10),
            ],
        )],
    );
    c.send("t0", pkt(BCAST, A, v(4095), "4095 t0")).drop("t0", "vlan_not_allowed");
    c.send("n1", pkt(BCAST, B, v(4095), "4095 n1")).drop("n1", "vlan_not_allowed");
    c.send("n2", pkt(BCAST, C, pv(5, 4095), "4095 n2")).drop("n2", "vlan_not_allowed");
    c.send("a1", pkt(BCAST, D, v(4095), "4095 a1")).drop("a1", "vlan_not_allowed");
    c.send("t0", pkt(BCAST, A, v(4094), "4094 t0"));
    c.out("n1", pkt(BCAST, A, v(4094), "4094 t0")).out("n2", pkt(BCAST, A, v(4094), "4094 t0"));
    c
}

fn default_vlan_modes() -> Case {
    let mut c = Case::new(
        "default_vlan_modes",
        "Without `vlan_mode`, a port with a `tag` is an access port and a port without one is a \
         trunk of `trunks` (all VLANs when absent): p1 {tag: 10} drops tagged frames and pushes \
         VLAN 10 onto p2; p3 {trunks: [20]} only carries VLAN 20; untagged frames from p2 are VLAN \
         0, which no other port carries.",
        vec![bridge("br0", vec![bare("p1").with_tag(10), bare("p2"), bare("p3").with_trunks(&[20])])],
    );
    c.send("p1", pkt(BCAST, A, None, "untagged p1"));
    c.out("p2", pkt(BCAST, A, v(10), "untagged p1"));
    c.send("p1", pkt(BCAST, A, v(10), "tagged p1")).drop("p1", "vlan_not_allowed");
    c.send("p2", pkt(BCAST, B, v(20), "vlan 20 p2"));
    c.out("p3", pkt(BCAST, B, v(20), "vlan 20 p2"));
    c.send("p2", pkt(BCAST, B, None, "untagged p2")).drop("p2", "no_egress_port");
    c.send("p3", pkt(BCAST, C, v(20), "vlan 20 p3"));
    c.out("p2", pkt(BCAST, C, v(20), "vlan 20 p3"));
    c.send("p3", pkt(BCAST, C, v(10), "vlan 10 p3")).drop("p3", "vlan_not_allowed");
    c
}

fn qinq_ethertype_and_double_tag() -> Case {
    // A frame with an 802.1ad S-tag: EtherType 0x88a8, then TCI (VID 20), then the inner type.
    let s_tagged = |src: Mac, text: &str| {
        let mut p = vec![0x00, 0x14, 0x88, 0xb5];
        p.extend_from_slice(text.as_bytes());
        eth(BCAST, src, None, ET_QINQ, &p)
    };
    let inner = pkt(BCAST, D, v(20), "double");
    let double = push_tag(&inner, v(10).unwrap());
    let mut c = Case::new(
        "qinq_ethertype_and_double_tag",
        "Only TPID 0x8100 is a VLAN tag: a 0x88a8 frame is untagged, so on an access port it enters \
         VLAN 10 and gets an 81 00 00 0a tag pushed in front of the 88 a8, on a trunk of all VLANs it \
         is VLAN 0 (to other such trunks, unchanged), and a trunk of [10] drops it. Of a double \
         0x8100 tag only the outer one (VID 10) counts, and only it is removed towards the access port.",
        vec![bridge("br0", vec![trunk("t0", &[]), trunk("t1", &[]), access("a10", 10), trunk("tl", &[10])])],
    );
    c.send("a10", s_tagged(A, "88a8 from access"));
    c.out("t0", push_tag(&s_tagged(A, "88a8 from access"), v(10).unwrap()))
        .out("t1", push_tag(&s_tagged(A, "88a8 from access"), v(10).unwrap()))
        .out("tl", push_tag(&s_tagged(A, "88a8 from access"), v(10).unwrap()));
    c.send("t0", s_tagged(B, "88a8 from trunk"));
    c.out("t1", s_tagged(B, "88a8 from trunk"));
    c.send("tl", s_tagged(C, "88a8 from trunk 10")).drop("tl", "vlan_not_allowed");
    c.send("t0", double.clone());
    c.out("t1", double.clone()).out("a10", inner).out("tl", double);
    c
}

fn learn_then_unicast() -> Case {
    let mut c = Case::new(
        "learn_then_unicast",
        "Learning: A's frame to the unknown B floods and teaches (10, A) -> p1; B's reply goes to \
         p1 only and teaches (10, B) -> p2; after that A to B goes to p2 only, and C to A to p1 only.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)])],
    );
    c.send("p1", pkt(B, A, None, "A to B unknown"));
    c.out("p2", pkt(B, A, None, "A to B unknown")).out("p3", pkt(B, A, None, "A to B unknown"));
    c.send("p2", pkt(A, B, None, "B to A"));
    c.out("p1", pkt(A, B, None, "B to A"));
    c.send("p1", pkt(B, A, None, "A to B known"));
    c.out("p2", pkt(B, A, None, "A to B known"));
    c.send("p3", pkt(A, C, None, "C to A"));
    c.out("p1", pkt(A, C, None, "C to A"));
    c.count("p1", "flooded", 1).count("p2", "flooded", 0).count("p3", "flooded", 0);
    c.count("p1", "learned", 1).count("p2", "learned", 1).count("p3", "learned", 1);
    c.bridge_count("br0", "fdb_entries", 3);
    c
}

fn flood_bcast_mcast_unknown() -> Case {
    let mut c = Case::new(
        "flood_bcast_mcast_unknown",
        "Broadcast, IPv4 and IPv6 multicast and unknown unicast all flood to every other port \
         carrying the VLAN (untagged to the access port, tagged to the trunk) and to nothing in \
         VLAN 20; a known unicast destination is not flooded.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), trunk("p3", &[10]), access("p4", 20)])],
    );
    for (dst, text) in
        [(BCAST, "broadcast"), (IPV4_MCAST, "ipv4 mcast"), (IPV6_MCAST, "ipv6 mcast"), (UNKNOWN, "unknown")]
    {
        c.send("p1", pkt(dst, A, None, text));
        c.out("p2", pkt(dst, A, None, text)).out("p3", pkt(dst, A, v(10), text));
    }
    c.send("p3", pkt(A, X, v(10), "known"));
    c.out("p1", pkt(A, X, None, "known"));
    c.count("p1", "flooded", 4).count("p3", "flooded", 0).count("p1", "learned", 1);
    c
}

fn dst_is_ingress() -> Case {
    let mut c = Case::new(
        "dst_is_ingress",
        "A and B are both learned on p1; a frame from A to B comes in on the very port B was learned \
         on, so it is dropped (dst_is_ingress), not flooded or sent back.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)])],
    );
    c.send("p1", pkt(BCAST, A, None, "A hello"));
    c.out("p2", pkt(BCAST, A, None, "A hello")).out("p3", pkt(BCAST, A, None, "A hello"));
    c.send("p1", pkt(BCAST, B, None, "B hello"));
    c.out("p2", pkt(BCAST, B, None, "B hello")).out("p3", pkt(BCAST, B, None, "B hello"));
    c.send("p1", pkt(B, A, None, "A to B")).drop("p1", "dst_is_ingress");
    c.send("p2", pkt(B, C, None, "C to B"));
    c.out("p1", pkt(B, C, None, "C to B"));
    c.count("p1", "flooded", 2);
    c
}

fn no_egress_port() -> Case {
    let mut c = Case::new(
        "no_egress_port",
        "p1 is the only port in VLAN 10, so its broadcast and unknown unicast have nowhere to go: \
         dropped as no_egress_port on p1 and not counted as flooded. Learning happens before the \
         lookup, so A is still learned (2 FDB entries at the end).",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 20), trunk("t1", &[20])])],
    );
    c.send("p1", pkt(BCAST, A, None, "bcast")).drop("p1", "no_egress_port");
    c.send("p1", pkt(UNKNOWN, A, None, "unknown")).drop("p1", "no_egress_port");
    c.send("p2", pkt(BCAST, B, None, "vlan 20"));
    c.out("t1", pkt(BCAST, B, v(20), "vlan 20"));
    c.count("p1", "flooded", 0).count("p2", "flooded", 1);
    c.count("p1", "learned", 1);
    c.bridge_count("br0", "fdb_entries", 2);
    c
}

fn mac_move() -> Case {
    let mut c = Case::new(
        "mac_move",
        "A is learned on p1, then sends from p2: its entry moves to p2 (moved_in on p2) and frames to \
         A go to p2; it moves back to p1 (moved_in on p1) and frames to A follow it.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)])],
    );
    c.send("p1", pkt(BCAST, A, None, "A on p1"));
    c.out("p2", pkt(BCAST, A, None, "A on p1")).out("p3", pkt(BCAST, A, None, "A on p1"));
    c.send("p3", pkt(A, B, None, "B to A 1"));
    c.out("p1", pkt(A, B, None, "B to A 1"));
    c.send("p2", pkt(BCAST, A, None, "A on p2"));
    c.out("p1", pkt(BCAST, A, None, "A on p2")).out("p3", pkt(BCAST, A, None, "A on p2"));
    c.send("p3", pkt(A, B, None, "B to A 2"));
    c.out("p2", pkt(A, B, None, "B to A 2"));
    c.send("p1", pkt(B, A, None, "A back on p1"));
    c.out("p3", pkt(B, A, None, "A back on p1"));
    c.send("p3", pkt(A, B, None, "B to A 3"));
    c.out("p1", pkt(A, B, None, "B to A 3"));
    c.count("p1", "moved_in", 1).count("p2", "moved_in", 1);
    c.bridge_count("br0", "fdb_entries", 2);
    c
}

fn aging_expires() -> Case {
    let mut c = Case::new(
        "aging_expires",
        "mac_aging_s 10 with pcap time as the clock: A, last seen at 1 s, is gone at 12 s (12 - 1 >= 10), \
         so a frame to A floods; C, refreshed at 9 s by its own frame, is still known at 17 s; B, \
         refreshed at 12 s, is known at 18 s. A frame to a MAC does not refresh it.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)]).aging(10)],
    );
    c.at_us(1_000_200).send("p1", pkt(BCAST, A, None, "A at 1s"));
    c.out("p2", pkt(BCAST, A, None, "A at 1s")).out("p3", pkt(BCAST, A, None, "A at 1s"));
    c.at_us(2_500_000).send("p3", pkt(BCAST, C, None, "C at 2s"));
    c.out("p1", pkt(BCAST, C, None, "C at 2s")).out("p2", pkt(BCAST, C, None, "C at 2s"));
    c.at_us(5_500_000).send("p2", pkt(A, B, None, "B to A at 5s"));
    c.out("p1", pkt(A, B, None, "B to A at 5s"));
    c.at_us(9_500_000).send("p3", pkt(B, C, None, "C to B at 9s"));
    c.out("p2", pkt(B, C, None, "C to B at 9s"));
    c.at_us(12_300_000).send("p2", pkt(A, B, None, "B to A at 12s"));
    c.out("p1", pkt(A, B, None, "B to A at 12s")).out("p3", pkt(A, B, None, "B to A at 12s"));
    c.at_us(17_700_000).send("p1", pkt(C, A, None, "A to C at 17s"));
    c.out("p3", pkt(C, A, None, "A to C at 17s"));
    c.at_us(18_400_000).send("p1", pkt(B, A, None, "A to B at 18s"));
    c.out("p2", pkt(B, A, None, "A to B at 18s"));
    c
}

fn aging_default_300s() -> Case {
    let mut c = Case::new(
        "aging_default_300s",
        "Without mac_aging_s entries live 300 s: A learned at 10 s is known at 250 s and gone at \
         400 s (frames to A do not refresh it); B learned at 250 s is still known at 500 s.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)])],
    );
    c.at_s(10).send("p1", pkt(BCAST, A, None, "A at 10s"));
    c.out("p2", pkt(BCAST, A, None, "A at 10s")).out("p3", pkt(BCAST, A, None, "A at 10s"));
    c.at_s(250).send("p2", pkt(A, B, None, "B to A at 250s"));
    c.out("p1", pkt(A, B, None, "B to A at 250s"));
    c.at_s(400).send("p3", pkt(A, C, None, "C to A at 400s"));
    c.out("p1", pkt(A, C, None, "C to A at 400s")).out("p2", pkt(A, C, None, "C to A at 400s"));
    c.at_s(500).send("p3", pkt(B, C, None, "C to B at 500s"));
    c.out("p2", pkt(B, C, None, "C to B at 500s"));
    c
}

fn static_mac_every_vlan() -> Case {
    let mut c = Case::new(
        "static_mac_every_vlan",
        "A static MAC on a trunk of [10, 20] is installed in both VLANs: frames to S from VLAN 10 and \
         from VLAN 20 go only to s1, tagged. VLAN 30 is not carried by s1, so S is unknown there and \
         the frame floods in VLAN 30.",
        vec![bridge(
            "br0",
            vec![
                trunk("s1", &[10, 20]).statics(&[S]),
                access("a10", 10),
                access("a20", 20),
                access("a30", 30),
                access("b30", 30),
            ],
        )],
    );
    c.send("a10", pkt(S, X, None, "X to S vlan 10"));
    c.out("s1", pkt(S, X, v(10), "X to S vlan 10"));
    c.send("a20", pkt(S, Y, None, "Y to S vlan 20"));
    c.out("s1", pkt(S, Y, v(20), "Y to S vlan 20"));
    c.send("a30", pkt(S, Z, None, "Z to S vlan 30"));
    c.out("b30", pkt(S, Z, None, "Z to S vlan 30"));
    c.count("a10", "flooded", 0).count("a20", "flooded", 0).count("a30", "flooded", 1);
    c
}

fn static_mac_conflict() -> Case {
    let mut c = Case::new(
        "static_mac_conflict",
        "S is static on s1. Frames with source S from p2 are forwarded normally (flooded, or unicast \
         to a learned X) but never move S (static_conflicts on p2 for each); frames to S keep going \
         to s1. S sending from s1 itself is no conflict.",
        vec![bridge("br0", vec![access("s1", 10).statics(&[S]), access("p2", 10), access("p3", 10)])],
    );
    c.send("p2", pkt(BCAST, S, None, "S from p2"));
    c.out("s1", pkt(BCAST, S, None, "S from p2")).out("p3", pkt(BCAST, S, None, "S from p2"));
    c.send("p3", pkt(S, X, None, "X to S"));
    c.out("s1", pkt(S, X, None, "X to S"));
    c.send("p2", pkt(X, S, None, "S from p2 to X"));
    c.out("p3", pkt(X, S, None, "S from p2 to X"));
    c.send("s1", pkt(BCAST, S, None, "S from s1"));
    c.out("p2", pkt(BCAST, S, None, "S from s1")).out("p3", pkt(BCAST, S, None, "S from s1"));
    c.send("p3", pkt(S, X, None, "X to S again"));
    c.out("s1", pkt(S, X, None, "X to S again"));
    c.count("p2", "static_conflicts", 2).count("p2", "learned", 0);
    c
}

fn static_mac_never_ages() -> Case {
    let mut c = Case::new(
        "static_mac_never_ages",
        "With mac_aging_s 10, the learned X is gone after 99 s (the frame to it floods) while the \
         static S still takes frames straight to s1 at 100 s and at 5000 s.",
        vec![
            bridge("br0", vec![access("s1", 10).statics(&[S]), access("p2", 10), access("p3", 10)]).aging(10)
        ],
    );
    c.at_s(1).send("p2", pkt(BCAST, X, None, "X at 1s"));
    c.out("s1", pkt(BCAST, X, None, "X at 1s")).out("p3", pkt(BCAST, X, None, "X at 1s"));
    c.at_s(100).send("p3", pkt(S, Y, None, "Y to S at 100s"));
    c.out("s1", pkt(S, Y, None, "Y to S at 100s"));
    c.at_us(100_500_000).send("p3", pkt(X, Y, None, "Y to X at 100s"));
    c.out("s1", pkt(X, Y, None, "Y to X at 100s")).out("p2", pkt(X, Y, None, "Y to X at 100s"));
    c.at_s(5000).send("p3", pkt(S, Y, None, "Y to S at 5000s"));
    c.out("s1", pkt(S, Y, None, "Y to S at 5000s"));
    c
}

fn mac_limit() -> Case {
    let mut c = Case::new(
        "mac_limit",
        "p1 has mac_limit 2: A and B are learned, C is not (mac_limit_hits 1) but its frame is still \
         flooded; A sending again is a refresh, not a new MAC. Frames to C then flood while frames \
         to A and B go to p1 only.",
        vec![bridge("br0", vec![access("p1", 10).limit(2), access("p2", 10), access("p3", 10)])],
    );
    for (src, text) in [(A, "A"), (B, "B"), (C, "C over limit"), (A, "A again")] {
        c.send("p1", pkt(BCAST, src, None, text));
        c.out("p2", pkt(BCAST, src, None, text)).out("p3", pkt(BCAST, src, None, text));
    }
    c.send("p2", pkt(C, X, None, "X to C"));
    c.out("p1", pkt(C, X, None, "X to C")).out("p3", pkt(C, X, None, "X to C"));
    c.send("p2", pkt(A, X, None, "X to A"));
    c.out("p1", pkt(A, X, None, "X to A"));
    c.send("p2", pkt(B, X, None, "X to B"));
    c.out("p1", pkt(B, X, None, "X to B"));
    c.count("p1", "mac_limit_hits", 1)
        .count("p1", "learned", 2)
        .count("p1", "flooded", 4)
        .count("p2", "flooded", 1);
    c.bridge_count("br0", "fdb_entries", 3);
    c
}

fn mac_limit_move() -> Case {
    let mut c = Case::new(
        "mac_limit_move",
        "p2 (mac_limit 1) already holds B when A, learned on p1, sends from p2: A is not learned on \
         p2 and its old entry on p1 is removed (mac_limit_hits on p2, no move counted), the frame is \
         flooded; afterwards frames to A flood, frames to B still go to p2.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10).limit(1), access("p3", 10)])],
    );
    c.send("p2", pkt(BCAST, B, None, "B on p2"));
    c.out("p1", pkt(BCAST, B, None, "B on p2")).out("p3", pkt(BCAST, B, None, "B on p2"));
    c.send("p1", pkt(BCAST, A, None, "A on p1"));
    c.out("p2", pkt(BCAST, A, None, "A on p1")).out("p3", pkt(BCAST, A, None, "A on p1"));
    c.send("p3", pkt(A, Y, None, "Y to A on p1"));
    c.out("p1", pkt(A, Y, None, "Y to A on p1"));
    c.send("p2", pkt(BCAST, A, None, "A on p2"));
    c.out("p1", pkt(BCAST, A, None, "A on p2")).out("p3", pkt(BCAST, A, None, "A on p2"));
    c.send("p3", pkt(A, Y, None, "Y to A gone"));
    c.out("p1", pkt(A, Y, None, "Y to A gone")).out("p2", pkt(A, Y, None, "Y to A gone"));
    c.send("p3", pkt(B, Y, None, "Y to B"));
    c.out("p2", pkt(B, Y, None, "Y to B"));
    c.count("p2", "mac_limit_hits", 1);
    c.bridge_count("br0", "fdb_entries", 2);
    c
}

fn fdb_table_full() -> Case {
    let mut c = Case::new(
        "fdb_table_full",
        "mac_table_size 2: A and B fill the table, so C is not learned (fdb_full on p3, each time it \
         sends) but its frames are forwarded; frames to C flood, frames to B go to p2, and refreshing \
         A needs no new entry.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)]).table_size(2)],
    );
    c.send("p1", pkt(BCAST, A, None, "A"));
    c.out("p2", pkt(BCAST, A, None, "A")).out("p3", pkt(BCAST, A, None, "A"));
    c.send("p2", pkt(BCAST, B, None, "B"));
    c.out("p1", pkt(BCAST, B, None, "B")).out("p3", pkt(BCAST, B, None, "B"));
    c.send("p3", pkt(BCAST, C, None, "C table full"));
    c.out("p1", pkt(BCAST, C, None, "C table full")).out("p2", pkt(BCAST, C, None, "C table full"));
    c.send("p1", pkt(C, A, None, "A to C"));
    c.out("p2", pkt(C, A, None, "A to C")).out("p3", pkt(C, A, None, "A to C"));
    c.send("p1", pkt(B, A, None, "A to B"));
    c.out("p2", pkt(B, A, None, "A to B"));
    c.send("p3", pkt(A, C, None, "C to A"));
    c.out("p1", pkt(A, C, None, "C to A"));
    c.count("p3", "fdb_full", 2).count("p1", "fdb_full", 0);
    c.bridge_count("br0", "fdb_entries", 2).bridge_count("br0", "fdb_full_drops", 2);
    c
}

fn spoof_src_mac() -> Case {
    let mut c = Case::new(
        "spoof_src_mac",
        "p1 allows only A: frames from other sources are dropped (spoofed_src_mac) and not learned, so \
         a frame to B later floods. p2 has `allowed_macs: []`, which filters nothing.",
        vec![bridge(
            "br0",
            vec![access("p1", 10).allowed(&[A]), access("p2", 10).allowed(&[]), access("p3", 10)],
        )],
    );
    c.send("p1", pkt(BCAST, A, None, "A ok"));
    c.out("p2", pkt(BCAST, A, None, "A ok")).out("p3", pkt(BCAST, A, None, "A ok"));
    c.send("p1", pkt(BCAST, B, None, "B spoofed")).drop("p1", "spoofed_src_mac");
    c.send("p2", pkt(B, X, None, "X to B"));
    c.out("p1", pkt(B, X, None, "X to B")).out("p3", pkt(B, X, None, "X to B"));
    c.send("p3", pkt(A, Y, None, "Y to A"));
    c.out("p1", pkt(A, Y, None, "Y to A"));
    c.send("p1", pkt(Y, C, None, "C spoofed to Y")).drop("p1", "spoofed_src_mac");
    c
}

fn spoof_arp_sha() -> Case {
    let ip = |n: u8| [10, 0, 0, n];
    let mut c = Case::new(
        "spoof_arp_sha",
        "p1 allows only A: ARP (0x0806) and RARP (0x8035) frames with Ethernet source A but another \
         sender hardware address are dropped (spoofed_arp_sha); with sender A they are forwarded. \
         p2 has no filter, so its ARP with any sender passes.",
        vec![bridge("br0", vec![access("p1", 10).allowed(&[A]), access("p2", 10)])],
    );
    c.send("p1", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c.out("p2", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c.send("p1", arp_req(BCAST, A, None, B, ip(1), ip(2))).drop("p1", "spoofed_arp_sha");
    c.send("p1", arp_reply(X, A, None, C, ip(1), X, ip(3))).drop("p1", "spoofed_arp_sha");
    c.send("p1", rarp_req(BCAST, A, None, B)).drop("p1", "spoofed_arp_sha");
    c.send("p1", rarp_req(BCAST, A, None, A));
    c.out("p2", rarp_req(BCAST, A, None, A));
    c.send("p2", arp_req(BCAST, X, None, B, ip(9), ip(1)));
    c.out("p1", arp_req(BCAST, X, None, B, ip(9), ip(1)));
    c
}

fn spoof_nd_lladdr() -> Case {
    // fe80::/64 with an interface identifier n; the solicited-node group of fe80::2.
    let ll = |n: u8| [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n];
    let snm = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2];
    let snm_mac = [0x33, 0x33, 0xff, 0, 0, 2];
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let nd = |src: Mac, ty: u8, dst: [u8; 16], opt: u8, lladdr: Mac| {
        let dst_mac = if dst == snm { snm_mac } else { [0x33, 0x33, 0, 0, 0, 1] };
        eth(dst_mac, src, None, ET_IPV6, &ipv6_nd(ty, ll(1), dst, ll(2), opt, lladdr))
    };
    let mut c = Case::new(
        "spoof_nd_lladdr",
        "p1 allows only A: IPv6 neighbour discovery (hop limit 255, code 0) with Ethernet source A          whose source or target link-layer address option names another MAC (a neighbour          solicitation's or router solicitation's source, an advertisement's target) is dropped          (spoofed_nd_lladdr), as ARP with another sender is; naming A or 00:00:00:00:00:00 it is          forwarded. p2 has no filter, so its advertisement naming any MAC passes.",
        vec![bridge("br0", vec![access("p1", 10).allowed(&[A]), access("p2", 10)])],
    );
    c.send("p1", nd(A, 135, snm, 1, A));
    c.out("p2", nd(A, 135, snm, 1, A));
    c.send("p1", nd(A, 135, snm, 1, ZERO));
    c.out("p2", nd(A, 135, snm, 1, ZERO));
    c.send("p1", nd(A, 135, snm, 1, B)).drop("p1", "spoofed_nd_lladdr");
    c.send("p1", nd(A, 136, all_nodes, 2, B)).drop("p1", "spoofed_nd_lladdr");
    c.send("p1", nd(A, 133, all_nodes, 1, B)).drop("p1", "spoofed_nd_lladdr");
    c.send("p1", nd(A, 136, all_nodes, 2, A));
    c.out("p2", nd(A, 136, all_nodes, 2, A));
    c.send("p2", nd(X, 136, all_nodes, 2, B));
    c.out("p1", nd(X, 136, all_nodes, 2, B));
    c
}

fn spoof_arp_in_vlan() -> Case {
    let ip = |n: u8| [10, 0, 0, n];
    let mut c = Case::new(
        "spoof_arp_in_vlan",
        "The ARP sender check also applies to ARP and RARP inside an 802.1Q tag on a filtering trunk \
         ([10, 20], allowed A). An untagged ARP is VLAN 0, not trunked: vlan_not_allowed comes \
         before the spoof checks. A valid tagged ARP floods in its VLAN.",
        vec![bridge("br0", vec![trunk("p1", &[10, 20]).allowed(&[A]), trunk("p2", &[]), access("p3", 20)])],
    );
    c.send("p1", arp_req(BCAST, A, v(10), B, ip(1), ip(2))).drop("p1", "spoofed_arp_sha");
    c.send("p1", arp_req(BCAST, A, pv(3, 20), A, ip(1), ip(2)));
    c.out("p2", arp_req(BCAST, A, pv(3, 20), A, ip(1), ip(2)))
        .out("p3", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c.send("p1", rarp_req(BCAST, A, v(10), B)).drop("p1", "spoofed_arp_sha");
    c.send("p1", pkt(BCAST, B, v(20), "B spoofed")).drop("p1", "spoofed_src_mac");
    c.send("p1", arp_req(BCAST, A, None, B, ip(1), ip(2))).drop("p1", "vlan_not_allowed");
    c
}

fn spoof_malformed_arp() -> Case {
    let ip = |n: u8| [10, 0, 0, n];
    // ARP cut after 10 bytes of its body (htype, ptype, hlen, plen, oper, 2 bytes of sha):
    // a 24-byte frame, long enough for Ethernet, too short for ARP.
    let short_arp = |src: Mac, et: u16| raw(BCAST, src, et, &arp_body(1, src, ip(1), ZERO, ip(2))[..10]);
    // ARP claiming 8-byte hardware addresses.
    let hlen8 = |src: Mac| {
        let mut b = vec![0x00, 0x01, 0x08, 0x00, 8, 4, 0x00, 0x01];
        b.extend_from_slice(&src);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&ip(1));
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&ip(2));
        eth(BCAST, src, None, ET_ARP, &b)
    };
    let mut c = Case::new(
        "spoof_malformed_arp",
        "On a filtering port (allowed A) an ARP/RARP too short to read its sender, or with hlen 8, \
         is dropped as malformed_arp (the source check comes first: a short ARP from B is \
         spoofed_src_mac). On a port without allowed_macs the same frames are simply forwarded, \
         unchanged (the 24-byte frame stays 24 bytes).",
        vec![bridge("br0", vec![access("p1", 10).allowed(&[A]), access("p2", 10), access("p3", 10)])],
    );
    c.send("p1", short_arp(A, ET_ARP)).drop("p1", "malformed_arp");
    c.send("p1", hlen8(A)).drop("p1", "malformed_arp");
    c.send("p1", short_arp(B, ET_ARP)).drop("p1", "spoofed_src_mac");
    c.send("p1", short_arp(A, ET_RARP)).drop("p1", "malformed_arp");
    c.send("p2", short_arp(X, ET_ARP));
    c.out("p1", short_arp(X, ET_ARP)).out("p3", short_arp(X, ET_ARP));
    c.send("p2", hlen8(X));
    c.out("p1", hlen8(X)).out("p3", hlen8(X));
    c.send("p1", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c.out("p2", arp_req(BCAST, A, None, A, ip(1), ip(2))).out("p3", arp_req(BCAST, A, None, A, ip(1), ip(2)));
    c
}

fn reserved_dst_mac() -> Case {
    let mut c = Case::new(
        "reserved_dst_mac",
        "Destinations 01:80:c2:00:00:00 to 0f (STP, LACP, LLDP, ...) are dropped (reserved_dst_mac), \
         before the VLAN check (a tagged one on an access port counts as reserved), and teach \
         nothing; 01:80:c2:00:00:10 is ordinary multicast and floods, and that frame does teach A.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10)])],
    );
    c.send("p1", pkt(ieee(0x00), A, None, "stp")).drop("p1", "reserved_dst_mac");
    c.send("p1", pkt(ieee(0x0e), A, None, "lldp")).drop("p1", "reserved_dst_mac");
    c.send("p1", pkt(ieee(0x0f), A, None, "0f")).drop("p1", "reserved_dst_mac");
    c.send("p1", pkt(ieee(0x02), A, v(20), "lacp tagged")).drop("p1", "reserved_dst_mac");
    c.send("p2", pkt(A, X, None, "X to A unknown"));
    c.out("p1", pkt(A, X, None, "X to A unknown"));
    c.send("p1", pkt(ieee(0x10), A, None, "10"));
    c.out("p2", pkt(ieee(0x10), A, None, "10"));
    c.send("p2", pkt(A, X, None, "X to A known"));
    c.out("p1", pkt(A, X, None, "X to A known"));
    c
}

fn invalid_src_mac() -> Case {
    let mut c = Case::new(
        "invalid_src_mac",
        "Broadcast, multicast (any with the group bit) and all-zero source MACs are dropped \
         (invalid_src_mac), before the reserved-destination, VLAN and spoof checks. An all-zero \
         destination is just unknown unicast; a valid source floods normally.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10).allowed(&[A])])],
    );
    c.send("p1", pkt(BCAST, BCAST, None, "src bcast")).drop("p1", "invalid_src_mac");
    c.send("p1", pkt(BCAST, IPV4_MCAST, None, "src mcast")).drop("p1", "invalid_src_mac");
    c.send("p1", pkt(BCAST, ZERO, None, "src zero")).drop("p1", "invalid_src_mac");
    c.send("p1", pkt(BCAST, [0x03, 0, 0, 0, 0, 1], None, "src 03")).drop("p1", "invalid_src_mac");
    c.send("p1", pkt(ieee(0), ZERO, None, "zero to stp")).drop("p1", "invalid_src_mac");
    c.send("p1", pkt(BCAST, IPV4_MCAST, v(20), "mcast tagged")).drop("p1", "invalid_src_mac");
    c.send("p3", pkt(BCAST, IPV6_MCAST, None, "mcast on filter")).drop("p3", "invalid_src_mac");
    c.send("p2", pkt(ZERO, X, None, "X to zero"));
    c.out("p1", pkt(ZERO, X, None, "X to zero")).out("p3", pkt(ZERO, X, None, "X to zero"));
    c.send("p1", pkt(BCAST, A, None, "valid"));
    c.out("p2", pkt(BCAST, A, None, "valid")).out("p3", pkt(BCAST, A, None, "valid"));
    c
}

fn runt_frames() -> Case {
    let mut c = Case::new(
        "runt_frames",
        "Frames shorter than an Ethernet header (0, 1 and 13 bytes) are runts: dropped, counted in \
         rx (they entered the pipeline) and teaching nothing (a frame to C later floods). A 14-byte \
         frame is valid and is forwarded as is (no padding added), and teaches A.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10)])],
    );
    c.send("p1", vec![]).drop("p1", "runt");
    c.send("p1", vec![0xff]).drop("p1", "runt");
    c.send("p1", raw(BCAST, C, ET_TEST, &[])[..13].to_vec()).drop("p1", "runt");
    c.send("p1", raw(BCAST, A, ET_TEST, &[]));
    c.out("p2", raw(BCAST, A, ET_TEST, &[]));
    c.send("p2", pkt(C, X, None, "X to C"));
    c.out("p1", pkt(C, X, None, "X to C"));
    c.send("p2", pkt(A, X, None, "X to A"));
    c.out("p1", pkt(A, X, None, "X to A"));
    c
}

fn truncated_vlan_tag() -> Case {
    let tagged_raw = |src: Mac, rest: &[u8]| raw(BCAST, src, ET_VLAN, rest);
    let mut c = Case::new(
        "truncated_vlan_tag",
        "EtherType 0x8100 with fewer than 18 bytes (14, 15, 17) is truncated_vlan_tag, a check that \
         comes before the source check and teaches nothing. Exactly 18 bytes is a complete tagged \
         header: it passes unchanged to a trunk and loses its tag (14 bytes) to the access port.",
        vec![bridge("br0", vec![trunk("t1", &[]), trunk("t2", &[]), access("a10", 10)])],
    );
    c.send("t1", tagged_raw(A, &[])).drop("t1", "truncated_vlan_tag");
    c.send("t1", tagged_raw(A, &[0x00])).drop("t1", "truncated_vlan_tag");
    c.send("t1", tagged_raw(C, &[0x00, 0x0a, 0x88])).drop("t1", "truncated_vlan_tag");
    c.send("t1", tagged_raw(IPV4_MCAST, &[0x00, 0x0a, 0x88])).drop("t1", "truncated_vlan_tag");
    c.send("t1", tagged_raw(A, &[0x00, 0x0a, 0x88, 0xb5]));
    c.out("t2", tagged_raw(A, &[0x00, 0x0a, 0x88, 0xb5])).out("a10", raw(BCAST, A, ET_TEST, &[]));
    c.send("a10", tagged_raw(D, &[0x00, 0x0a, 0x88])).drop("a10", "truncated_vlan_tag");
    c.send("a10", pkt(C, X, None, "X to C"));
    c.out("t1", pkt(C, X, v(10), "X to C")).out("t2", pkt(C, X, v(10), "X to C"));
    c
}

fn oversize_frames() -> Case {
    let mut c = Case::new(
        "oversize_frames",
        "Frames longer than the 2048-byte data room (2049 and 9000 bytes) are refused before the \
         pipeline: counted only as oversize (not in rx) and teaching nothing. A frame of exactly \
         2048 bytes passes and is forwarded whole.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10)])],
    );
    c.send("p1", sized(BCAST, C, None, 2049)).drop("p1", "oversize");
    c.send("p1", sized(BCAST, A, None, 2048));
    c.out("p2", sized(BCAST, A, None, 2048));
    c.send("p1", sized(BCAST, C, None, 9000)).drop("p1", "oversize");
    c.send("p2", pkt(C, X, None, "X to C"));
    c.out("p1", pkt(C, X, None, "X to C"));
    c.send("p2", pkt(A, X, None, "X to A"));
    c.out("p1", pkt(A, X, None, "X to A"));
    c
}

fn max_frame_tag_push() -> Case {
    let mut c = Case::new(
        "max_frame_tag_push",
        "A 2048-byte tagged frame from a trunk leaves the access port as 2044 bytes; a 2048-byte \
         untagged frame from the access port gets a tag pushed and leaves the trunks as 2052 bytes \
         (the buffer's headroom takes the tag; the 2048 limit is on what is received). A 2049-byte \
         tagged frame is oversize.",
        vec![bridge("br0", vec![trunk("t1", &[]), access("a10", 10), trunk("t2", &[10])])],
    );
    c.send("t1", sized(BCAST, A, v(10), 2048));
    c.out("a10", sized(BCAST, A, None, 2044)).out("t2", sized(BCAST, A, v(10), 2048));
    c.send("a10", sized(BCAST, B, None, 2048));
    c.out("t1", sized(BCAST, B, v(10), 2052)).out("t2", sized(BCAST, B, v(10), 2052));
    c.send("t1", sized(BCAST, C, v(10), 2049)).drop("t1", "oversize");
    c
}

fn truncated_capture() -> Case {
    let mut c = Case::new(
        "truncated_capture",
        "A capture record holding 60 of the frame's 100 bytes (incl_len < orig_len) cannot be \
         forwarded faithfully: it is refused as truncated_capture (not counted in rx) and teaches \
         nothing, so a frame to its source C later floods; whole records are forwarded.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)])],
    );
    c.send_record("p1", pkt(BCAST, C, None, "cut"), 100).drop("p1", "truncated_capture");
    c.send("p1", pkt(BCAST, A, None, "whole"));
    c.out("p2", pkt(BCAST, A, None, "whole")).out("p3", pkt(BCAST, A, None, "whole"));
    c.send("p2", pkt(C, X, None, "X to C"));
    c.out("p1", pkt(C, X, None, "X to C")).out("p3", pkt(C, X, None, "X to C"));
    c
}

fn two_bridges_isolated() -> Case {
    let mut c = Case::new(
        "two_bridges_isolated",
        "Two bridges share nothing: a broadcast stays in its bridge, and the same MAC A learned in \
         both bridges (same VLAN number) is two entries that never move each other; X, learned in \
         br0 only, is unknown in br1.",
        vec![
            bridge("br0", vec![access("a1", 10), access("a2", 10), trunk("t0", &[])]),
            bridge("br1", vec![access("b1", 10), access("b2", 10)]),
        ],
    );
    c.send("a1", pkt(BCAST, A, None, "A in br0"));
    c.out("a2", pkt(BCAST, A, None, "A in br0")).out("t0", pkt(BCAST, A, v(10), "A in br0"));
    c.send("b1", pkt(BCAST, A, None, "A in br1"));
    c.out("b2", pkt(BCAST, A, None, "A in br1"));
    c.send("a2", pkt(A, X, None, "X to A br0"));
    c.out("a1", pkt(A, X, None, "X to A br0"));
    c.send("b2", pkt(A, Y, None, "Y to A br1"));
    c.out("b1", pkt(A, Y, None, "Y to A br1"));
    c.send("b2", pkt(X, Y, None, "Y to X br1"));
    c.out("b1", pkt(X, Y, None, "Y to X br1"));
    c.bridge_count("br0", "fdb_entries", 2).bridge_count("br1", "fdb_entries", 2);
    c
}

fn vlan_isolation_one_bridge() -> Case {
    let mut c = Case::new(
        "vlan_isolation_one_bridge",
        "VLANs 10 and 20 on one bridge are separate: floods stay in their VLAN, and A in VLAN 10 (p1) \
         and A in VLAN 20 (p3) are two entries, not a move. Frames to A go to p1 from VLAN 10 and to \
         p3 from VLAN 20, and in VLAN 30 nothing carries the frame (no_egress_port).",
        vec![bridge(
            "br0",
            vec![access("p1", 10), access("p2", 10), access("p3", 20), access("p4", 20), trunk("t", &[])],
        )],
    );
    c.send("p1", pkt(BCAST, A, None, "A vlan 10"));
    c.out("p2", pkt(BCAST, A, None, "A vlan 10")).out("t", pkt(BCAST, A, v(10), "A vlan 10"));
    c.send("p3", pkt(BCAST, A, None, "A vlan 20"));
    c.out("p4", pkt(BCAST, A, None, "A vlan 20")).out("t", pkt(BCAST, A, v(20), "A vlan 20"));
    c.send("p2", pkt(A, X, None, "X to A"));
    c.out("p1", pkt(A, X, None, "X to A"));
    c.send("p4", pkt(A, Y, None, "Y to A"));
    c.out("p3", pkt(A, Y, None, "Y to A"));
    c.send("t", pkt(A, Z, v(10), "Z to A vlan 10"));
    c.out("p1", pkt(A, Z, None, "Z to A vlan 10"));
    c.send("t", pkt(A, Z, v(20), "Z to A vlan 20"));
    c.out("p3", pkt(A, Z, None, "Z to A vlan 20"));
    c.send("t", pkt(A, Z, v(30), "Z to A vlan 30")).drop("t", "no_egress_port");
    c.bridge_count("br0", "fdb_entries", 7);
    c
}

fn merge_order_and_ties() -> Case {
    let mut c = Case::new(
        "merge_order_and_ties",
        "Frames of all input files are merged by timestamp (microseconds kept on the output stamps). \
         At t = 4 s p1 and p2 both send: `inputs` lists p2 first, so C to D (unknown, floods, C \
         learned on p2) goes before D to C (then unicast to p2). Two frames of one file with the \
         same time keep their file order.",
        vec![bridge("br0", vec![access("p1", 10), access("p2", 10), access("p3", 10)])],
    );
    c.inputs_order(&["p2", "p1", "p3"]);
    // Written per file (p1, then p2, then p3); the outputs are listed in processing order below.
    c.at_us(1_000_001).send("p1", pkt(B, A, None, "A to B 1"));
    c.at_us(3_999_999).send("p1", pkt(B, A, None, "A to B 2"));
    c.at_us(4_000_000).send("p1", pkt(C, D, None, "D to C"));
    c.at_us(5_000_000).send("p1", pkt(BCAST, E, None, "E first"));
    c.at_us(5_000_000).send("p1", pkt(BCAST, E, None, "E second"));
    c.at_us(2_500_000).send("p2", pkt(A, B, None, "B to A"));
    c.at_us(4_000_000).send("p2", pkt(D, C, None, "C to D"));
    c.at_us(3_000_000).send("p3", pkt(A, F, None, "F to A"));
    // 1.000001 p1 A->B: B unknown, flood.
    c.out_at("p2", 1_000_001, pkt(B, A, None, "A to B 1")).out_at(
        "p3",
        1_000_001,
        pkt(B, A, None, "A to B 1"),
    );
    // 2.5 p2 B->A: A on p1.
    c.out_at("p1", 2_500_000, pkt(A, B, None, "B to A"));
    // 3.0 p3 F->A: A on p1.
    c.out_at("p1", 3_000_000, pkt(A, F, None, "F to A"));
    // 3.999999 p1 A->B: B on p2.
    c.out_at("p2", 3_999_999, pkt(B, A, None, "A to B 2"));
    // 4.0 p2 first (inputs order): C->D floods; then p1 D->C goes to p2 where C was just learned.
    c.out_at("p1", 4_000_000, pkt(D, C, None, "C to D")).out_at("p3", 4_000_000, pkt(D, C, None, "C to D"));
    c.out_at("p2", 4_000_000, pkt(C, D, None, "D to C"));
    // 5.0 p1 twice, file order.
    c.out_at("p2", 5_000_000, pkt(BCAST, E, None, "E first")).out_at(
        "p3",
        5_000_000,
        pkt(BCAST, E, None, "E first"),
    );
    c.out_at("p2", 5_000_000, pkt(BCAST, E, None, "E second")).out_at(
        "p3",
        5_000_000,
        pkt(BCAST, E, None, "E second"),
    );
    c.count("p1", "flooded", 3).count("p2", "flooded", 1).count("p3", "flooded", 0);
    c
}

fn port_names_with_slash() -> Case {
    let (vm1, vm2) = ("default/vm1/net1", "default/vm2/net1");
    let mut c = Case::new(
        "port_names_with_slash",
        "KubeVirt-style port names `<namespace>/<vmi>/<interface>`: their pcaps are named with `_` \
         for `/` (default_vm1_net1.pcap), while stats.json keeps the real names. Forwarding is \
         plain VLAN 10 learning between two VM ports and a trunk uplink.",
        vec![bridge("br0", vec![access(vm1, 10), access(vm2, 10), trunk("uplink", &[10])])],
    );
    c.send(vm1, pkt(BCAST, A, None, "vm1 hello"));
    c.out(vm2, pkt(BCAST, A, None, "vm1 hello")).out("uplink", pkt(BCAST, A, v(10), "vm1 hello"));
    c.send("uplink", pkt(A, X, v(10), "router to vm1"));
    c.out(vm1, pkt(A, X, None, "router to vm1"));
    c.send(vm2, pkt(X, B, None, "vm2 to router"));
    c.out("uplink", pkt(X, B, v(10), "vm2 to router"));
    c
}

fn mixed_node() -> Case {
    let ip = |a: u8, b: u8| [10, 0, a, b];
    let (r, v1, v3, v4, h, h2) = (m(0x21), m(0x31), m(0x33), m(0x34), m(0x41), m(0x42));
    let (m1, m2, m3) = (m(0x51), m(0x52), m(0x53));
    let mut c = Case::new(
        "mixed_node",
        "A node with a VM bridge (trunk uplink [10, 20]; vm1 access 10 with a spoof filter; vm2 \
         access 10 with mac_limit 2; vm3 native-untagged 20 trunking 10; vm4 access 20 with a static \
         MAC) and a separate management bridge: ARP and replies, VLAN pushing and popping, a \
         spoofed frame, the MAC limit, a static entry, a reserved destination, a VLAN the uplink \
         does not trunk, and default aging (vm1's MAC, last seen at 3 s, is gone at 400 s).",
        vec![
            bridge(
                "br-vm",
                vec![
                    trunk("uplink", &[10, 20]),
                    access("vm1", 10).allowed(&[v1]),
                    access("vm2", 10).limit(2),
                    native_untagged("vm3", 20, &[10]),
                    access("vm4", 20).statics(&[v4]),
                ],
            ),
            bridge("br-mgmt", vec![access("mgmt", 5), access("host", 5)]),
        ],
    );
    // 1: vm1 ARPs for the router in VLAN 10: to the uplink tagged, vm2 untagged, vm3 tagged
    //    (VLAN 10 is trunked on vm3, not its native VLAN).
    c.at_s(1).send("vm1", arp_req(BCAST, v1, None, v1, ip(10, 11), ip(10, 1)));
    c.out("uplink", arp_req(BCAST, v1, v(10), v1, ip(10, 11), ip(10, 1)))
        .out("vm2", arp_req(BCAST, v1, None, v1, ip(10, 11), ip(10, 1)))
        .out("vm3", arp_req(BCAST, v1, v(10), v1, ip(10, 11), ip(10, 1)));
    // 2: the router replies through the uplink: v1 is known on vm1.
    c.at_s(2).send("uplink", arp_reply(v1, r, v(10), r, ip(10, 1), v1, ip(10, 11)));
    c.out("vm1", arp_reply(v1, r, None, r, ip(10, 1), v1, ip(10, 11)));
    // 3: vm1 to the router: known on the uplink in VLAN 10.
    c.at_s(3).send("vm1", pkt(r, v1, None, "vm1 to router"));
    c.out("uplink", pkt(r, v1, v(10), "vm1 to router"));
    // 4: vm1 spoofs.
    c.at_s(4).send("vm1", pkt(r, m(0x32), None, "spoofed")).drop("vm1", "spoofed_src_mac");
    // 5: vm3 untagged is VLAN 20; v4 is static on vm4.
    c.at_s(5).send("vm3", pkt(v4, v3, None, "vm3 to vm4"));
    c.out("vm4", pkt(v4, v3, None, "vm3 to vm4"));
    // 6: a VLAN 20 broadcast from the router: vm3 (native, untagged) and vm4.
    c.at_s(6).send("uplink", pkt(BCAST, r, pv(5, 20), "router bcast 20"));
    c.out("vm3", pkt(BCAST, r, None, "router bcast 20")).out("vm4", pkt(BCAST, r, None, "router bcast 20"));
    // 7: vm4 to the router in VLAN 20 (learned there at 6).
    c.at_s(7).send("vm4", pkt(r, v4, None, "vm4 to router"));
    c.out("uplink", pkt(r, v4, v(20), "vm4 to router"));
    // 8-10: vm2 (limit 2) sends from three MACs: the third is not learned, all flood in VLAN 10.
    for (i, mac) in [m1, m2, m3].into_iter().enumerate() {
        let text = format!("vm2 mac {}", i + 1);
        c.at_s(8 + i as u64).send("vm2", pkt(BCAST, mac, None, &text));
        c.out("uplink", pkt(BCAST, mac, v(10), &text))
            .out("vm1", pkt(BCAST, mac, None, &text))
            .out("vm3", pkt(BCAST, mac, v(10), &text));
    }
    // 11: to the unlearned m3: floods.
    c.at_s(11).send("uplink", pkt(m3, r, v(10), "router to m3"));
    c.out("vm1", pkt(m3, r, None, "router to m3"))
        .out("vm2", pkt(m3, r, None, "router to m3"))
        .out("vm3", pkt(m3, r, v(10), "router to m3"));
    // 12: to m1: vm2.
    c.at_s(12).send("uplink", pkt(m1, r, v(10), "router to m1"));
    c.out("vm2", pkt(m1, r, None, "router to m1"));
    // 13: vm3 tagged 10 to v1.
    c.at_s(13).send("vm3", pkt(v1, v3, pv(2, 10), "vm3 to vm1"));
    c.out("vm1", pkt(v1, v3, None, "vm3 to vm1"));
    // 14-15: the management bridge is separate; the router is unknown there.
    c.at_s(14).send("mgmt", pkt(BCAST, h, None, "mgmt bcast"));
    c.out("host", pkt(BCAST, h, None, "mgmt bcast"));
    c.at_s(15).send("host", pkt(r, h2, None, "host to router"));
    c.out("mgmt", pkt(r, h2, None, "host to router"));
    // 16: VLAN 30 is not trunked on the uplink.
    c.at_s(16).send("uplink", pkt(BCAST, r, v(30), "vlan 30")).drop("uplink", "vlan_not_allowed");
    // 17: LLDP from vm4.
    c.at_s(17).send("vm4", pkt(ieee(0x0e), v4, None, "lldp")).drop("vm4", "reserved_dst_mac");
    // 18: at 400 s, v1 (last seen at 3 s) has aged out: floods in VLAN 10.
    c.at_s(400).send("uplink", pkt(v1, r, v(10), "router to vm1 late"));
    c.out("vm1", pkt(v1, r, None, "router to vm1 late"))
        .out("vm2", pkt(v1, r, None, "router to vm1 late"))
        .out("vm3", pkt(v1, r, v(10), "router to vm1 late"));
    // 19: the static v4 never ages.
    c.at_s(401).send("vm3", pkt(v4, v3, None, "vm3 to vm4 late"));
    c.out("vm4", pkt(v4, v3, None, "vm3 to vm4 late"));
    c.count("vm2", "mac_limit_hits", 1);
    c
}
