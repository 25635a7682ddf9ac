#!/usr/bin/python3
"""Wraps every frame of a capture in VXLAN (RFC 7348) with scapy's layers, for the decap
direction of benches/tunnel-compare.sh: outer Ethernet SRC_MAC -> DST_MAC, IPv4 SRC -> DST
(TTL 64, DF clear), UDP from a source port per inner frame (49152 + index mod 16384, as a
sender hashes flows) to 4789 with a zero checksum (allowed over IPv4), VXLAN flags 0x08 and
VNI. Scapy computes the IPv4 header checksum and the lengths.

usage: gen_tunnel_pcap.py --vni 5001 --src-mac M --dst-mac M --src IP --dst IP IN.pcap OUT.pcap
"""
import argparse

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import PcapReader, PcapWriter


def main():
    ap = argparse.ArgumentParser()
    for opt in ("--src-mac", "--dst-mac", "--src", "--dst"):
        ap.add_argument(opt, required=True)
    ap.add_argument("--vni", type=int, required=True)
    ap.add_argument("inp")
    ap.add_argument("out")
    a = ap.parse_args()
    with PcapReader(a.inp) as r, PcapWriter(a.out, linktype=1, sync=False) as w:
        for i, inner in enumerate(r):
            p = (Ether(src=a.src_mac, dst=a.dst_mac) / IP(src=a.src, dst=a.dst, ttl=64, flags=0)
                 / UDP(sport=49152 + i % 16384, dport=4789, chksum=0) / VXLAN(flags=0x08, vni=a.vni)
                 / Ether(bytes(inner)))
            w.write(p)


if __name__ == "__main__":
    main()
