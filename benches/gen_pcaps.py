#!/usr/bin/env python3
"""Writes the two captures of the side-by-side benchmark (benches/pmd-compare.sh).

Port A's capture holds N frames with N distinct source MACs (02:00:0a:xx:xx:xx), each sent to
a MAC that is a source on port B's capture (02:00:0b:xx:xx:xx), and B's the reverse, so a
learning switch between A and B sees N MACs each way and learns all of them. Frames are
UDP/IPv4, LEN bytes as captured (default 60: a 64-byte frame on the wire with its 4-byte FCS,
the usual "64-byte" benchmark frame). Classic pcap, little-endian, Ethernet link type.

With --flows N instead (benches/policy-compare.sh): one host on each side (A 02:00:0a:00:00:01,
10.0.0.1; B 02:00:0b:00:00:01, 10.1.0.0-10.1.0.3), A's capture holds N frames of N distinct UDP
connections to B (flow i: 10.0.0.1:(10000 + i % 32768) -> 10.1.0.(i // 32768):53) and B's
capture the replies, frame i answering A's frame i. With --vlan VID, A's frames carry an
802.1Q tag of VLAN VID (A on a trunk, an uplink; the frame 4 bytes longer, LEN + 4), B's
do not (B on an access port of that VLAN).

usage: gen_pcaps.py (--macs N | --flows N) [--len 60] [--vlan VID] A.pcap B.pcap
"""
import argparse
import struct


def mac(prefix, i):
    return bytes([0x02, 0x00, prefix]) + (i & 0xFFFFFF).to_bytes(3, "big")


def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def frames(src_prefix, dst_prefix, n, length):
    ip_len = length - 14
    for i in range(n):
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, i & 0xFFFF, 0, 64, 17, 0,
                                   bytes([198, 18, (i >> 8) & 0xFF, i & 0xFF]),
                                   bytes([198, 19, (i >> 8) & 0xFF, i & 0xFF])))
        ip[10:12] = struct.pack("!H", csum(bytes(ip)))
        udp = struct.pack("!HHHH", 1024 + (i & 0x3FF), 1024, ip_len - 20, 0)
        f = mac(dst_prefix, i) + mac(src_prefix, i) + b"\x08\x00" + bytes(ip) + udp
        yield f + bytes(length - len(f))


def tagged(it, vid):
    for f in it:
        yield f[:12] + struct.pack("!HH", 0x8100, vid) + f[12:]


def flow_frames(n, length, reply):
    ip_len = length - 14
    a_mac, b_mac = mac(0x0A, 1), mac(0x0B, 1)
    for i in range(n):
        a_ip, b_ip = bytes([10, 0, 0, 1]), bytes([10, 1, 0, i >> 15])
        a_port, b_port = 10000 + (i & 0x7FFF), 53
        src, dst = (b_ip, a_ip) if reply else (a_ip, b_ip)
        sport, dport = (b_port, a_port) if reply else (a_port, b_port)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, i & 0xFFFF, 0, 64, 17, 0, src, dst))
        ip[10:12] = struct.pack("!H", csum(bytes(ip)))
        udp = struct.pack("!HHHH", sport, dport, ip_len - 20, 0)
        f = (a_mac + b_mac if reply else b_mac + a_mac) + b"\x08\x00" + bytes(ip) + udp
        yield f + bytes(length - len(f))


def write(path, it, length):
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        rec = struct.Struct("<IIII")
        buf = []
        for k, f in enumerate(it):
            buf.append(rec.pack(k // 1000000, k % 1000000, length, length))
            buf.append(f)
            if len(buf) >= 65536:
                out.write(b"".join(buf))
                buf.clear()
        out.write(b"".join(buf))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--macs", type=int, help="distinct MACs each way (frames per capture)")
    mode.add_argument("--flows", type=int, help="distinct UDP connections from A to B (frames per capture)")
    ap.add_argument("--len", type=int, default=60, help="captured frame length (60 to 1514)")
    ap.add_argument("--vlan", type=int, help="tag A's frames with this VID (1 to 4094)")
    ap.add_argument("a")
    ap.add_argument("b")
    o = ap.parse_args()
    if not 60 <= o.len <= 1514:
        ap.error("--len must be between 60 and 1514")
    if o.vlan is not None and not 1 <= o.vlan <= 4094:
        ap.error("--vlan must be between 1 and 4094")
    if o.flows is not None:
        if not 1 <= o.flows <= 4 << 15:
            ap.error("--flows must be between 1 and 131072")
        a = flow_frames(o.flows, o.len, False)
        write(o.a, tagged(a, o.vlan) if o.vlan else a, o.len + (4 if o.vlan else 0))
        write(o.b, flow_frames(o.flows, o.len, True), o.len)
        return
    if not 1 <= o.macs <= 1 << 24:
        ap.error("--macs must be between 1 and 16777216")
    a = frames(0x0A, 0x0B, o.macs, o.len)
    write(o.a, tagged(a, o.vlan) if o.vlan else a, o.len + (4 if o.vlan else 0))
    write(o.b, frames(0x0B, 0x0A, o.macs, o.len), o.len)


if __name__ == "__main__":
    main()
