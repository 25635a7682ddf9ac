#!/usr/bin/env python3
"""Builds the example replay: inputs/*.pcap and expected/*.pcap for scenario.yaml.

The expected outputs are written from the reasoning in the comments below (VLAN rules of
../../../shared/DESIGN.md), not from running switchyard. Run: python3 make.py
"""
import os, struct

def pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, d in frames:
            f.write(struct.pack("<IIII", t, 0, len(d), len(d)))
            f.write(d)

def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))

def eth(dst, src, et, payload, vid=None):
    h = mac(dst) + mac(src)
    if vid is not None:
        h += struct.pack(">HH", 0x8100, vid)
    f = h + struct.pack(">H", et) + payload
    return f + b"\0" * max(0, 60 + (4 if vid is not None else 0) - len(f))

def arp(op, sha, spa, tha, tpa):
    return struct.pack(">HHBBH", 1, 0x0800, 6, 4, op) + mac(sha) + bytes(spa) + mac(tha) + bytes(tpa)

def tag(frame, vid):
    """The same frame with an 802.1Q tag (PCP 0) inserted after the MACs."""
    return frame[:12] + struct.pack(">HH", 0x8100, vid) + frame[12:]

def untag(frame):
    return frame[:12] + frame[16:]

VMA, VMA2, VMB, EXT = "02:00:00:00:0a:01", "02:00:00:00:0a:02", "02:00:00:00:0b:01", "02:00:00:00:ee:01"
BC = "ff:ff:ff:ff:ff:ff"
a_arp = eth(BC, VMA, 0x0806, arp(1, VMA, [10, 0, 100, 1], "00:00:00:00:00:00", [10, 0, 100, 2]))
b_reply = eth(VMA, VMB, 0x0806, arp(2, VMB, [10, 0, 100, 2], VMA, [10, 0, 100, 1]))
ext_to_b = eth(VMB, EXT, 0x0800, b"\x45" + b"\0" * 19, vid=100)
b_spoof = eth(EXT, "02:00:00:00:0b:99", 0x0800, b"\x45" + b"\0" * 19)
a2_to_ext = eth(EXT, VMA2, 0x0800, b"\x45" + b"\0" * 19)
ext_native_bc = eth(BC, EXT, 0x0800, b"\x45" + b"\0" * 19)

os.makedirs("inputs", exist_ok=True)
os.makedirs("expected", exist_ok=True)
pcap("inputs/vm-a-data.pcap", [(1, a_arp)])
pcap("inputs/vm-b-data.pcap", [(2, b_reply), (4, b_spoof)])
pcap("inputs/vm-a-ext.pcap", [(5, a2_to_ext)])
pcap("inputs/eth1.pcap", [(3, ext_to_b), (6, ext_native_bc)])

# t=1 vm-a's ARP broadcast (VLAN 100) floods: tagged 100 on the uplink, untagged to vm-b.
# t=2 vm-b's reply goes to vm-a only (vm-a's MAC is a static entry on its port).
# t=3 the external host (tagged 100 on eth1) reaches vm-b untagged; ext is learned on eth1.
# t=4 vm-b sends with a source not in its allowed_macs: dropped (spoofed_src_mac).
# t=5 vm-a/ext (VLAN 200) sends to ext, unknown in VLAN 200: flooded, tagged 200, to eth1.
# t=6 an untagged broadcast on eth1 is in native VLAN 1, which no other port carries: dropped.
pcap("expected/eth1.pcap", [(1, tag(a_arp, 100)), (5, tag(a2_to_ext, 200))])
pcap("expected/tenant-a_vm-b_data.pcap", [(1, a_arp), (3, untag(ext_to_b))])
pcap("expected/tenant-a_vm-a_data.pcap", [(2, b_reply)])
pcap("expected/tenant-a_vm-a_ext.pcap", [])
