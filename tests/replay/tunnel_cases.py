#!/usr/bin/python3
"""Writes the replay cases with outer headers (tests/replay/tunnel_*): a tunnel port on an
uplink whose capture holds the outer Ethernet/IP/UDP/VXLAN headers and the ARP exchange.

Every frame, input and expected, is built here with scapy from the RFC fields (RFC 7348
VXLAN, RFC 8926 Geneve, RFC 791/8200/768 outer IPv4/IPv6/UDP, RFC 826 ARP, RFC 4861
Neighbour Discovery) and the documented choices of
docs/overlay.md (IPv4 DF, identification 0, TTL 64, UDP checksum 0; IPv6 hop limit 64, UDP checksum
computed; source port from the
inner flow's hash in 49152-65535, copies of a flood in flood-list order), never from
switchyard's output. The UDP source port is `flow_hash` below, written from the description
in docs/overlay.md ("The UDP source port") and dataplane/src/tunnel.rs's documentation of its
mixing, independently of the Rust code path that runs.

    /usr/bin/python3 tests/replay/tunnel_cases.py [OUTDIR]

writes every case under OUTDIR (default: the directory of this script);
tests/replay_tunnel_cases.rs runs it into a temporary directory and compares byte for byte
with the committed files.
"""

import ipaddress
import json
import os
import struct
import sys

from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

LOCAL_IP = "192.0.2.1"
UPLINK_MAC = "02:00:00:00:01:01"
EP2 = ("192.0.2.2", "02:00:00:00:02:02")
EP3 = ("192.0.2.3", "02:00:00:00:03:03")
VNI = 5001
VXLAN_PORT = 4789
MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
MAC_C = "02:00:00:00:00:0c"
TAG = 10

M64 = (1 << 64) - 1
# The constants of the hash's steps (fractional digits of pi).
K0, K1, K2 = 0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0


def fold(a, b):
    """One step: the 128-bit product of two 64-bit words, its halves xored."""
    p = (a & M64) * (b & M64)
    return (p & M64) ^ (p >> 64)


def flow_hash(f):
    """The inner flow's hash: the bytes taken 8 at a time, little-endian, two words a step;
    the MACs + EtherType first, then (behind at most one tag) the IPv6 addresses two steps,
    and last the IPv4 addresses (nothing for other protocols) with the protocol word:
    EtherType << 8 | protocol, and for TCP/UDP/SCTP (IPv4: not a fragment) the 4 port bytes
    as they lie (little-endian) << 32 with bit 24 set. The top 32 bits of the last step
    times 0x9e3779b97f4a7c15 are the hash."""

    def word(off):
        return int.from_bytes(f[off:off + 8], "little") if off + 8 <= len(f) else 0

    def be16(off):
        return int.from_bytes(f[off:off + 2], "big") if off + 2 <= len(f) else 0

    h = fold(word(0) ^ K0, word(6) ^ K1)
    l3 = 14
    et = be16(12)
    if et in (0x8100, 0x88A8):
        et = be16(16)
        l3 += 4
    last, proto, ports_at = 0, 0, None
    if et == 0x0800 and len(f) >= l3 + 20:
        ihl = (f[l3] & 0x0F) * 4
        last, proto = word(l3 + 12), f[l3 + 9]
        ports_at = l3 + ihl if be16(l3 + 6) & 0x3FFF == 0 else None
    elif et == 0x86DD and len(f) >= l3 + 40:
        for at in (l3 + 8, l3 + 24):
            h = fold(word(at) ^ K2, word(at + 8) ^ h)
        proto, ports_at = f[l3 + 6], l3 + 40
    key = (et << 8) | proto
    if proto in (6, 17, 132) and ports_at is not None:
        ports = int.from_bytes(f[ports_at:ports_at + 4], "little") if ports_at + 4 <= len(f) else 0
        key |= (ports << 32) | (1 << 24)
    h = fold(last ^ K2, key ^ h)
    return ((h * 0x9E3779B97F4A7C15) & M64) >> 32


def source_port(inner):
    """49152 + the hash scaled into the 16384 ports of the dynamic range."""
    return 49152 + ((flow_hash(inner) * 16384) >> 32)


def pad60(p):
    """An Ethernet frame padded to the 60-byte minimum (no FCS)."""
    b = bytes(p)
    return b + bytes(max(0, 60 - len(b)))


def tagged(frame, vid):
    """The frame with an 802.1Q tag (PCP 0) after the MAC addresses."""
    return frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]


def vxlan(inner, ep, vni=VNI, sport=None, flags=0x08, dport=VXLAN_PORT, src=None, dst=None):
    """`inner` in VXLAN in UDP in IPv4 in Ethernet. Default: from us to endpoint `ep`."""
    src = src or (UPLINK_MAC, LOCAL_IP)
    dst = dst or ep
    sport = source_port(inner) if sport is None else sport
    p = (Ether(src=src[0], dst=dst[1], type=0x0800)
         / IP(src=src[1], dst=dst[0], id=0, flags="DF", ttl=64, tos=0)
         / UDP(sport=sport, dport=dport, chksum=0)
         / VXLAN(flags=flags, vni=vni)
         / Raw(inner))
    return bytes(p)


def from_ep(inner, ep, **kw):
    """A VXLAN packet endpoint `ep` sends to us."""
    return vxlan(inner, ep, src=(ep[1], ep[0]), dst=(LOCAL_IP, UPLINK_MAC), **kw)


LOCAL6 = "fd00::1"
EP6_2 = ("fd00::2", "02:00:00:00:02:02")
EP6_3 = ("fd00::3", "02:00:00:00:03:03")
GENEVE_PORT = 6081


def geneve6(inner, src, dst, sport=None, version=0, chksum=None):
    """`inner` in Geneve (no options) in UDP in IPv6 in Ethernet, `src`/`dst` = (MAC, IP);
    the UDP checksum is computed (scapy sends a computed 0 as 0xffff) unless given."""
    sport = source_port(inner) if sport is None else sport
    return bytes(Ether(src=src[0], dst=dst[0], type=0x86DD)
                 / IPv6(src=src[1], dst=dst[1], hlim=64, tc=0, fl=0)
                 / UDP(sport=sport, dport=GENEVE_PORT, chksum=chksum)
                 / GENEVE(version=version, proto=0x6558, vni=VNI)
                 / Raw(inner))


def solicitation_from_us(ep):
    """A Neighbour Solicitation for `ep` to its solicited-node multicast address."""
    low = ipaddress.IPv6Address(ep[0]).packed[13:]
    snm = str(ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low))
    mac = "33:33:ff:" + ":".join(f"{b:02x}" for b in low)
    return bytes(Ether(dst=mac, src=UPLINK_MAC)
                 / IPv6(src=LOCAL6, dst=snm, hlim=255)
                 / ICMPv6ND_NS(tgt=ep[0])
                 / ICMPv6NDOptSrcLLAddr(lladdr=UPLINK_MAC))


def advertisement_from(ep):
    """A solicited Neighbour Advertisement of `ep` (Override), to us."""
    return bytes(Ether(dst=UPLINK_MAC, src=ep[1])
                 / IPv6(src=ep[0], dst=LOCAL6, hlim=255)
                 / ICMPv6ND_NA(tgt=ep[0], R=0, S=1, O=1)
                 / ICMPv6NDOptDstLLAddr(lladdr=ep[1]))


def arp_request_from_us(ep):
    return pad60(Ether(dst="ff:ff:ff:ff:ff:ff", src=UPLINK_MAC)
                 / ARP(op=1, hwsrc=UPLINK_MAC, psrc=LOCAL_IP, hwdst="00:00:00:00:00:00", pdst=ep[0]))


def arp_reply_from(ep):
    return pad60(Ether(dst=UPLINK_MAC, src=ep[1])
                 / ARP(op=2, hwsrc=ep[1], psrc=ep[0], hwdst=UPLINK_MAC, pdst=LOCAL_IP))


def arp_request_from(ep):
    return pad60(Ether(dst="ff:ff:ff:ff:ff:ff", src=ep[1])
                 / ARP(op=1, hwsrc=ep[1], psrc=ep[0], hwdst="00:00:00:00:00:00", pdst=LOCAL_IP))


def arp_reply_to(ep):
    return pad60(Ether(dst=ep[1], src=UPLINK_MAC)
                 / ARP(op=2, hwsrc=UPLINK_MAC, psrc=LOCAL_IP, hwdst=ep[1], pdst=ep[0]))


def vm_arp_request(src_mac, src_ip, dst_ip):
    return pad60(Ether(dst="ff:ff:ff:ff:ff:ff", src=src_mac)
                 / ARP(op=1, hwsrc=src_mac, psrc=src_ip, pdst=dst_ip))


def vm_udp(src_mac, dst_mac, src_ip, dst_ip, sport, dport, payload=b"switchyard"):
    return pad60(Ether(src=src_mac, dst=dst_mac)
                 / IP(src=src_ip, dst=dst_ip, id=1, ttl=64)
                 / UDP(sport=sport, dport=dport)
                 / Raw(payload))


def write_pcap(path, frames):
    """A classic pcap file (microseconds, Ethernet): `frames` = [(seconds as a decimal
    string, bytes)]. Times are given as strings so that no float rounding enters."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, data in frames:
            sec, _, frac = ts.partition(".")
            usec = int((frac + "000000")[:6])
            f.write(struct.pack("<IIII", int(sec), usec, len(data), len(data)))
            f.write(data)


# The drop counters every tunnel case lists (all others are not asserted).
TUNNEL_DROPS = [
    "tunnel_unresolved", "tunnel_no_endpoint", "tunnel_wrong_vni", "tunnel_bad_header",
    "tunnel_truncated", "tunnel_inner_runt", "tunnel_outer_malformed", "uplink_not_tunnel",
    "tunnel_mtu", "tunnel_unknown_source",
]

SCENARIO = """\
# Replay case {name}: see README.md. Written by ../tunnel_cases.py (scapy).
bridges:
  - name: br0
    ports:
      - name: vm-a
        vlan_mode: access
        tag: {tag}
      - name: tun0
        type: {kind}
        vni: {vni}
        local: "{local}"
        underlay: uplink0
        flood: ["{ep2}", "{ep3}"]
        remote_macs:
          - {{mac: "{mac_b}", remote: "{ep2}"}}
        learn: false
uplinks:
  tun0: {{mac: "{uplink_mac}", mtu: 1500}}
inputs:
{inputs}"""


def case(out, name, readme, inputs, expected, stats, kind="vxlan", addrs=(LOCAL_IP, EP2[0], EP3[0])):
    d = os.path.join(out, name)
    for sub in ("in", "expected"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for port, frames in inputs.items():
        write_pcap(os.path.join(d, "in", port + ".pcap"), frames)
    for port in ("vm-a", "tun0"):
        write_pcap(os.path.join(d, "expected", port + ".pcap"), expected.get(port, []))
    drops_of = lambda p: {r: stats[p].get(r, 0) for r in TUNNEL_DROPS} if p == "tun0" else {}
    js = {"buffers_leaked": 0, "ports": {}}
    for port in ("vm-a", "tun0"):
        s = {k: v for k, v in stats[port].items() if k in ("rx_packets", "tx_packets")}
        if port == "tun0":
            s["drops"] = drops_of(port)
        js["ports"][port] = s
    with open(os.path.join(d, "expected", "stats.json"), "w") as f:
        f.write(json.dumps(js, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(d, "scenario.yaml"), "w") as f:
        f.write(SCENARIO.format(
            name=name, tag=TAG, vni=VNI, kind=kind, local=addrs[0], ep2=addrs[1], ep3=addrs[2],
            mac_b=MAC_B,
            uplink_mac=UPLINK_MAC,
            inputs="".join(f"  {p}: in/{p}.pcap\n" for p in inputs)))
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(f"# Replay case `{name}`\n\n{readme}\n\nThe files here are written by "
                "`../tunnel_cases.py` (scapy, from the RFC fields; not from the switch); "
                "`tests/replay_tunnel_cases.rs` checks that they match it byte for byte.\n")


COMMON = ("vm-a is an access port of VLAN 10; tun0 is a VXLAN port (VNI 5001, 192.0.2.1) on an "
          "uplink (MAC 02:00:00:00:01:01) whose capture is tun0's, outer headers included; flood "
          "list 192.0.2.2 and 192.0.2.3, MAC 02:00:00:00:00:0b static at 192.0.2.2, learning off. "
          "Inner frames cross the tunnel tagged 10.")


def encap(out):
    # 1.0: the first frame: tun0's RX is polled first and probes both endpoints (ARP
    # requests, in endpoint order); a's broadcast then finds neither resolved.
    arp_a = vm_arp_request(MAC_A, "10.0.0.1", "10.0.0.2")
    udp_ab = vm_udp(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1234, 5678)
    udp_ac = vm_udp(MAC_A, MAC_C, "10.0.0.1", "10.0.0.3", 4321, 53)
    inputs = {
        "vm-a": [("1.0", arp_a), ("2.0", arp_a), ("3.0", udp_ab), ("4.0", udp_ac)],
        "tun0": [("1.5", arp_reply_from(EP2)), ("1.6", arp_reply_from(EP3))],
    }
    t_arp, t_ab, t_ac = (tagged(f, TAG) for f in (arp_a, udp_ab, udp_ac))
    expected = {
        "tun0": [
            ("1.0", arp_request_from_us(EP2)),
            ("1.0", arp_request_from_us(EP3)),
            # A broadcast: one copy per flood endpoint, in flood-list order.
            ("2.0", vxlan(t_arp, EP2)),
            ("2.0", vxlan(t_arp, EP3)),
            # A static remote MAC: its endpoint only.
            ("3.0", vxlan(t_ab, EP2)),
            # Unknown unicast: flooded.
            ("4.0", vxlan(t_ac, EP2)),
            ("4.0", vxlan(t_ac, EP3)),
        ],
    }
    stats = {"vm-a": {"rx_packets": 4, "tx_packets": 0},
             "tun0": {"tx_packets": 5, "tunnel_unresolved": 2}}
    readme = (COMMON + " At 1.0 tun0 probes both endpoints (ARP requests) and a's broadcast "
              "finds neither resolved (`tunnel_unresolved`, one per endpoint); the endpoints "
              "answer at 1.5 and 1.6; then a's broadcast is copied to both endpoints, a frame "
              "to the static remote MAC goes to 192.0.2.2 only, and one to an unknown MAC is "
              "flooded to both. Outer headers: IPv4 DF, id 0, TTL 64, UDP checksum 0, the source "
              "port from the inner flow's hash.")
    case(out, "tunnel_vxlan_encap_ipv4", readme, inputs, expected, stats)


def decap(out):
    # b (behind 192.0.2.2) to a, tagged 10 inside the tunnel: a gets it untagged.
    udp_ba = vm_udp(MAC_B, MAC_A, "10.0.0.2", "10.0.0.1", 5678, 1234, b"over the tunnel")
    inner = tagged(udp_ba, TAG)
    good = from_ep(inner, EP2, sport=50000)
    bad_csum = bytearray(good)
    bad_csum[24] ^= 0xFF  # the outer IPv4 header checksum
    inputs = {
        "tun0": [
            ("1.0", arp_request_from(EP2)),
            ("1.1", good),
            ("2.0", from_ep(inner, EP2, sport=50000, vni=VNI + 1)),
            ("2.1", good[:50]),
            ("2.2", from_ep(inner, EP2, sport=50000, flags=0x00)),
            ("2.3", from_ep(inner[:10], EP2, sport=50000)),
            ("2.4", bytes(bad_csum)),
            ("2.5", from_ep(inner, EP2, sport=50000, dport=4790)),
            # From an address that is no endpoint of the port (learning off): not taken.
            ("2.6", from_ep(inner, ("192.0.2.99", "02:00:00:00:09:09"), sport=50000)),
        ],
    }
    expected = {
        "vm-a": [("1.1", udp_ba)],
        "tun0": [
            # The first poll probes both endpoints; then 192.0.2.2's request for us is
            # answered (and binds it).
            ("1.0", arp_request_from_us(EP2)),
            ("1.0", arp_request_from_us(EP3)),
            ("1.0", arp_reply_to(EP2)),
            # 192.0.2.3 never answers: probed again once a second, at the next poll (2.0).
            ("2.0", arp_request_from_us(EP3)),
        ],
    }
    stats = {"vm-a": {"rx_packets": 0, "tx_packets": 1},
             "tun0": {"rx_packets": 1, "tx_packets": 0, "tunnel_wrong_vni": 1,
                      "tunnel_outer_malformed": 2, "tunnel_bad_header": 1,
                      "tunnel_inner_runt": 1, "uplink_not_tunnel": 1,
                      "tunnel_unknown_source": 1}}
    readme = (COMMON + " 192.0.2.2 asks for our address (answered, after tun0's first probes; 192.0.2.3, "
              "silent, is probed again at 2.0); a "
              "VXLAN packet from it carrying b's frame to a, tagged 10, reaches a untagged, the "
              "inner frame otherwise byte for byte. Then each bad packet is dropped under its "
              "counter: VNI 5002 (`tunnel_wrong_vni`), the outer headers cut at 50 bytes and a "
              "wrong IPv4 header checksum (`tunnel_outer_malformed`), VXLAN without the I flag "
              "(`tunnel_bad_header`), a 10-byte inner frame (`tunnel_inner_runt`), UDP to port "
              "4790 (`uplink_not_tunnel`), a good packet from 192.0.2.99, no endpoint of the port, "
              "which has learning off (`tunnel_unknown_source`).")
    case(out, "tunnel_vxlan_decap_ipv4", readme, inputs, expected, stats)


def geneve_ipv6(out):
    us = (UPLINK_MAC, LOCAL6)
    udp_ab = vm_udp(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1234, 5678)
    arp_a = vm_arp_request(MAC_A, "10.0.0.1", "10.0.0.2")
    udp_ba = vm_udp(MAC_B, MAC_A, "10.0.0.2", "10.0.0.1", 5678, 1234, b"over geneve")
    t_ab, t_arp, t_ba = (tagged(f, TAG) for f in (udp_ab, arp_a, udp_ba))
    from2 = lambda **kw: geneve6(t_ba, (EP6_2[1], EP6_2[0]), us, sport=50001, **kw)
    inputs = {
        "vm-a": [("1.0", udp_ab), ("2.0", arp_a), ("2.5", udp_ab)],
        "tun0": [("1.5", advertisement_from(EP6_2)), ("1.6", advertisement_from(EP6_3)),
                 ("3.0", from2()), ("3.1", from2(chksum=0)), ("3.2", from2(version=1))],
    }
    to = lambda ep, f: geneve6(f, us, (ep[1], ep[0]))
    expected = {
        "tun0": [
            ("1.0", solicitation_from_us(EP6_2)),
            ("1.0", solicitation_from_us(EP6_3)),
            ("2.0", to(EP6_2, t_arp)),
            ("2.0", to(EP6_3, t_arp)),
            ("2.5", to(EP6_2, t_ab)),
        ],
        "vm-a": [("3.0", udp_ba)],
    }
    stats = {"vm-a": {"rx_packets": 3, "tx_packets": 1},
             "tun0": {"rx_packets": 1, "tx_packets": 3, "tunnel_unresolved": 1,
                      "tunnel_outer_malformed": 1, "tunnel_bad_header": 1}}
    readme = ("vm-a is an access port of VLAN 10; tun0 is a Geneve port (VNI 5001, fd00::1) on an "
              "uplink (MAC 02:00:00:00:01:01) whose capture is tun0's; flood list fd00::2 and "
              "fd00::3, MAC 02:00:00:00:00:0b static at fd00::2, learning off. At 1.0 tun0 "
              "solicits both endpoints (Neighbour Solicitations to their solicited-node "
              "addresses) and a's frame to b finds fd00::2 unresolved (`tunnel_unresolved`); "
              "both advertise; a's broadcast goes to both, its frame to b to fd00::2 only "
              "(Geneve without options, protocol 0x6558, outer IPv6 hop limit 64, UDP checksum "
              "computed). A Geneve packet from fd00::2 with b's frame to a (tagged 10) reaches "
              "a untagged; the same with a zero UDP checksum (required over IPv6: "
              "`tunnel_outer_malformed`) or Geneve version 1 (`tunnel_bad_header`) is dropped.")
    case(out, "tunnel_geneve_ipv6", readme, inputs, expected, stats, kind="geneve",
         addrs=(LOCAL6, EP6_2[0], EP6_3[0]))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    encap(out)
    decap(out)
    geneve_ipv6(out)


if __name__ == "__main__":
    main()
